//! The server-to-server fronts: two real Prosody servers federating through
//! xmppwall on loopback (the Prosody servers' outgoing connections routed by the
//! test route module, never by DNS), a dialback-only peer and a
//! certificate-authenticated one, a denied domain, a raw remote server that
//! spoofs its `from` after authenticating with a real dialback key, and the egress
//! finding the remote server by static route, by SRV records from a real DNS server
//! (dnsmasq), or through a SOCKS5 proxy, each asserted on the wire; and ejabberd
//! federating with Prosody, both behind xmppwall in both directions. The admin API
//! lists s2s streams by their authenticated domain and kicks them.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::client::{tls_client_config, TestClient, TlsVersions};
use support::ejabberd::EjabberdOptions;
use support::http::request;
use support::ports::free_loopback_addr;
use support::xml;
use support::{Ejabberd, Prosody, ProsodyOptions, TestCert, Xmppwall, ALICE, BOB, DOMAIN};

/// The remote server's domain.
const REMOTE: &str = "remote.test";
/// A domain the local server's egress is routed for but xmppwall refuses.
const BLOCKED: &str = "blocked.test";
/// The remote Prosody's dialback secret, so a test can compute a key it accepts.
const DIALBACK_SECRET: &str = "remote-dialback-secret-7";

struct Federation {
    wall: Xmppwall,
    /// xmppwall's s2s front: where the remote server connects for [`DOMAIN`].
    front: SocketAddr,
    /// The same front with direct TLS (XEP-0368).
    direct: SocketAddr,
    cert: TestCert,
    local: Prosody,
    remote: Prosody,
}

/// How the remote server is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// No certificate: it can only authenticate by dialback.
    DialbackOnly,
    /// A certificate for remote.test from a CA xmppwall trusts.
    Certificate,
}

impl Federation {
    /// Remote Prosody (remote.test) → xmppwall (s2s front) → local Prosody
    /// (example.test); the local server's own outgoing connections go straight to
    /// the remote one. `s2s` is the body of xmppwall's `[s2s]` section.
    fn start(peer: Peer, s2s: &str, rules: &str) -> Federation {
        Federation::start_with(peer, s2s, rules, false)
    }

    /// With `egress`, the local server's outgoing connections go through xmppwall's
    /// s2s-egress front too (for remote.test and for blocked.test, which `[s2s]
    /// routes` may leave unrouted), so both directions pass xmppwall.
    fn start_with(peer: Peer, s2s: &str, rules: &str, egress: bool) -> Federation {
        Federation::start_routed(peer, |_| s2s.to_owned(), rules, egress, true)
    }

    /// With `static_route` false, xmppwall has no `[s2s] routes` entry for the
    /// remote server: the egress finds it by DNS (`s2s`, given the remote server
    /// once it runs, names the resolver).
    fn start_routed(
        peer: Peer,
        s2s: impl FnOnce(&Prosody) -> String,
        rules: &str,
        egress: bool,
        static_route: bool,
    ) -> Federation {
        let front = free_loopback_addr();
        let direct = free_loopback_addr();
        let egress_addr = free_loopback_addr();
        let remote = Prosody::start_with(ProsodyOptions {
            domain: Some(REMOTE.into()),
            tls: peer == Peer::Certificate,
            s2s_routes: vec![(DOMAIN.into(), front)],
            extra_global_config: format!("dialback_secret = {DIALBACK_SECRET:?}"),
            ..ProsodyOptions::default()
        });
        // Behind xmppwall the local server speaks plaintext on loopback: it offers no
        // STARTTLS of its own (xmppwall does TLS), and its direct connection to the
        // remote server stays plaintext too.
        let local_routes = if egress {
            vec![(REMOTE.into(), egress_addr), (BLOCKED.into(), egress_addr)]
        } else {
            vec![(REMOTE.into(), remote.s2s)]
        };
        let local = Prosody::start_with(ProsodyOptions {
            s2s_routes: local_routes,
            extra_global_config: "s2s_allow_encryption = false".into(),
            ..ProsodyOptions::default()
        });
        let cert = TestCert::generate(&[DOMAIN]);
        let ca = match &remote.cert {
            Some(c) => format!("ca = {:?}", c.ca_path.display().to_string()),
            None => String::new(),
        };
        let s2s = s2s(&remote);
        let routes = if static_route {
            format!("routes = {{ \"{REMOTE}\" = \"{}\" }}", remote.s2s)
        } else {
            String::new()
        };
        let config = format!(
            r#"
domains = ["{DOMAIN}"]

[upstream]
address = "{c2s}"
connect_timeout = "2s"

[[listen]]
front = "s2s"
tls = "starttls"
address = "{front}"
upstream = "{s2s_port}"

[[listen]]
front = "s2s"
tls = "direct"
address = "{direct}"
upstream = "{s2s_port}"

[[listen]]
front = "s2s-egress"
tls = "none"
address = "{egress_addr}"

[tls]
default = {{ cert = "{cert}", key = "{key}" }}

[s2s]
{ca}
{s2s}
{routes}

{rules}
"#,
            c2s = local.c2s,
            s2s_port = local.s2s,
            cert = cert.chain_path.display(),
            key = cert.key_path.display(),
        );
        let wall = Xmppwall::start(&config);
        Federation {
            wall,
            front,
            direct,
            cert,
            local,
            remote,
        }
    }

    /// Runs `check`; if it panics, the three logs are printed first.
    fn explain_on_failure(&self, check: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            eprintln!(
                "--- xmppwall ---\n{}\n--- local prosody ---\n{}\n--- remote prosody ---\n{}",
                support::tail(&self.wall.log(), 12000),
                support::tail(&self.local.log(), 12000),
                support::tail(&self.remote.log(), 12000)
            );
            std::panic::resume_unwind(panic);
        }
    }

    /// A raw remote server on the s2s front, past STARTTLS, with the features
    /// relayed from the local server; returns it and the stream id to sign.
    fn raw_peer(&self, from: &str) -> (TestClient, String) {
        self.raw_peer_on(TestClient::connect(self.front), from)
    }

    /// [`Self::raw_peer`] on a connection the caller made (e.g. from a chosen address).
    fn raw_peer_on(&self, mut c: TestClient, from: &str) -> (TestClient, String) {
        c.send_raw(s2s_header(from));
        let header = c.read_stream_header();
        assert!(
            header.contains("xmlns:db='jabber:server:dialback'"),
            "{header}"
        );
        let features = c.read_element();
        assert!(features.contains("<starttls"), "{features}");
        c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let proceed = c.read_element();
        assert_eq!(xml::root_name(&proceed), "proceed", "{proceed}");
        c.upgrade_to_tls(tls_client_config(&self.cert.ca_der, TlsVersions::Any));
        c.send_raw(s2s_header(from));
        let header = c.read_stream_header();
        let id = xml::root_attr(&header, "id").expect("the server's header has an id");
        let features = c.read_element();
        assert!(features.contains("dialback"), "{features}");
        assert!(!features.contains("starttls"), "{features}");
        (c, id)
    }
}

fn s2s_header(from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='{DOMAIN}' version='1.0'>"
    )
}

/// The dialback key the remote Prosody accepts for a stream with `id` (its
/// mod_dialback: HMAC-SHA256 keyed with the hex SHA-256 of its secret, over
/// "to from id"), computed by Python's hmac, independent of xmppwall.
fn dialback_key(id: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; \
             k = hashlib.sha256(sys.argv[1].encode()).hexdigest().encode(); \
             print(hmac.new(k, sys.argv[2].encode(), hashlib.sha256).hexdigest())",
            DIALBACK_SECRET,
            &format!("{DOMAIN} {REMOTE} {id}"),
        ])
        .output()
        .expect("running python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn login(server: &Prosody, host: &str, account: support::Account) -> TestClient {
    let mut c = TestClient::connect(server.c2s);
    c.domain = host.to_owned();
    c.open_stream();
    c.auth_plain(account);
    c.bind(Some("desk"));
    c.send_raw("<presence/>");
    c
}

/// alice@remote.test writes to bob@example.test through xmppwall, and gets an
/// answer back (which goes straight from the local server to the remote one).
fn exchange(f: &Federation) {
    let mut bob = login(&f.local, DOMAIN, BOB);
    let mut alice = login(&f.remote, REMOTE, ALICE);
    let bob_jid = format!("bob@{DOMAIN}");
    alice.send_raw(format!("<presence to='{bob_jid}'/>"));
    alice.send_raw(format!(
        "<message type='chat' to='{bob_jid}' id='m1'><body>hello across</body></message>"
    ));
    let presence = bob.read_element_matching(|e| {
        xml::root_name(e) == "presence" && e.contains(&format!("alice@{REMOTE}"))
    });
    assert!(
        presence.contains("from='alice@remote.test/desk'"),
        "{presence}"
    );
    let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&message, "body").as_deref(),
        Some("hello across"),
        "{message}"
    );
    assert!(message.contains("alice@remote.test"), "{message}");
    bob.send_raw(format!(
        "<message type='chat' to='alice@{REMOTE}' id='r1'><body>hello back</body></message>"
    ));
    let reply = alice.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&reply, "body").as_deref(),
        Some("hello back"),
        "{reply}"
    );
}

#[test]
fn dialback_only_peer_federates_through_the_s2s_front() {
    let f = Federation::start(Peer::DialbackOnly, "", "");
    f.explain_on_failure(|| exchange(&f));
    let log = f.wall.log();
    assert!(
        log.contains(
            "remote server authenticated remote=remote.test local=example.test how=\"dialback\""
        ) || log.contains(
            "remote server authenticated remote=remote.test local=example.test how=dialback"
        ),
        "{log}"
    );
}

#[test]
fn certificate_authenticated_peer_is_recorded_as_such() {
    let f = Federation::start(Peer::Certificate, "require_certificate = true", "");
    exchange(&f);
    let log = f.wall.log();
    assert!(
        log.lines()
            .any(|l| l.contains("remote server authenticated")
                && l.contains("remote=remote.test")
                && l.contains("certificate")),
        "{log}"
    );
}

#[test]
fn dialback_only_peer_is_refused_when_certificates_are_required() {
    let f = Federation::start(Peer::DialbackOnly, "require_certificate = true", "");
    let mut alice = login(&f.remote, REMOTE, ALICE);
    alice.send_raw(format!(
        "<message type='chat' to='bob@{DOMAIN}' id='m1'><body>no cert</body></message>"
    ));
    // The remote server gives up on the domain and bounces the message.
    assert_bounced_by_the_remote_server(&mut alice);
}

/// The next message `sender` (on the remote server) gets is its own message bounced
/// because the remote server could not reach the local domain: not the local
/// server's `<service-unavailable/>` for an offline recipient, which would mean the
/// message got through.
fn assert_bounced_by_the_remote_server(sender: &mut TestClient) {
    let bounced = sender.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::root_attr(&bounced, "type").as_deref(),
        Some("error"),
        "{bounced}"
    );
    assert!(
        ["remote-server-not-found", "remote-server-timeout"]
            .iter()
            .any(|c| xml::has_element(&bounced, c)),
        "{bounced}"
    );
}

/// A raw peer sends `header` to the s2s front and gets, on the wire, xmppwall's
/// header and then a `<policy-violation/>` stream error (RFC 6120 §4.9.3.15).
fn assert_header_refused_with_policy_violation(f: &Federation, header: &str) {
    let mut raw = TestClient::connect(f.front);
    raw.send_raw(header);
    raw.read_stream_header();
    let rest = raw.read_until_closed();
    assert!(
        rest.contains(
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        ),
        "{rest}"
    );
}

#[test]
fn denied_domain_cannot_connect() {
    let f = Federation::start(
        Peer::DialbackOnly,
        "",
        "[federation]\nmode = \"deny\"\ndomains = [\"remote.test\", \"*.remote.test\"]",
    );
    assert_header_refused_with_policy_violation(&f, &s2s_header("x.remote.test"));
    // And the real remote server cannot deliver: its user gets an error back.
    let mut alice = login(&f.remote, REMOTE, ALICE);
    alice.send_raw(format!(
        "<message type='chat' to='bob@{DOMAIN}' id='m1'><body>denied</body></message>"
    ));
    assert_bounced_by_the_remote_server(&mut alice);
}

#[test]
fn a_peer_header_declaring_a_payload_prefix_is_a_policy_violation() {
    let f = Federation::start(Peer::DialbackOnly, "", "");
    // `db:` (dialback) stays allowed: every other test here declares it. A prefix
    // for a payload namespace would be in scope in every stanza of the stream.
    let header = s2s_header(REMOTE).replace("xmlns:db=", "xmlns:av='jabber:iq:avatar' xmlns:db=");
    assert_header_refused_with_policy_violation(&f, &header);
}

#[test]
fn spoofed_from_after_dialback_is_invalid_from() {
    let f = Federation::start(Peer::DialbackOnly, "", "");
    let mut bob = login(&f.local, DOMAIN, BOB);
    // The local server verifies the key with the real remote server.
    let mut raw = authenticated_raw_peer(&f);
    raw.send_raw(format!(
        "<message from='carol@{REMOTE}/x' to='bob@{DOMAIN}' type='chat'><body>legit</body></message>"
    ));
    raw.send_raw(format!(
        "<message from='mallory@victim.test' to='bob@{DOMAIN}' type='chat'><body>spoofed</body></message>"
    ));
    let rest = raw.read_until_closed();
    assert!(
        rest.contains("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{rest}"
    );
    let legit = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&legit, "body").as_deref(),
        Some("legit"),
        "{legit}"
    );
    // Prosody logs the start tag of every stanza it receives.
    let log = f.local.log();
    assert!(log.contains("carol@remote.test"), "{log}");
    assert!(
        !log.contains("mallory@victim.test"),
        "the spoofed stanza reached the server"
    );
}

#[test]
fn stanza_before_authentication_is_not_authorized() {
    let f = Federation::start(Peer::DialbackOnly, "", "");
    let (mut raw, _) = f.raw_peer(REMOTE);
    raw.send_raw(format!(
        "<message from='carol@{REMOTE}' to='bob@{DOMAIN}'><body>early</body></message>"
    ));
    let rest = raw.read_until_closed();
    assert!(
        rest.contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{rest}"
    );
}

#[test]
fn rules_see_s2s_streams_and_drop_from_the_remote_side() {
    let rules = r#"
[[rule]]
name = "no-remote-headlines"
chain = "to-server"
action = "drop"
[rule.match]
front = ["s2s"]
peer_domain = "remote.test"
peer_auth = ["dialback"]
keywords = ["casino"]
"#;
    let f = Federation::start(Peer::DialbackOnly, "", rules);
    let mut bob = login(&f.local, DOMAIN, BOB);
    let mut alice = login(&f.remote, REMOTE, ALICE);
    for (id, body) in [("m1", "visit the casino"), ("m2", "see you at lunch")] {
        alice.send_raw(format!(
            "<message type='chat' to='bob@{DOMAIN}' id='{id}'><body>{body}</body></message>"
        ));
    }
    let first = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&first, "body").as_deref(),
        Some("see you at lunch"),
        "{first}"
    );
}

#[test]
fn both_directions_pass_xmppwall_with_the_egress_verifying_the_remote_certificate() {
    let f = Federation::start_with(Peer::Certificate, "", "", true);
    f.explain_on_failure(|| exchange(&f));
    let log = f.wall.log();
    assert!(
        log.lines().any(|l| l.contains("outgoing stream open")
            && l.contains("remote=remote.test")
            && l.contains("tls=true")
            && l.contains("certificate")),
        "{log}"
    );
    assert!(log.contains("accepted by the remote server"), "{log}");
}

const NO_CARDS_OUT: &str = r#"
[[rule]]
name = "no-card-numbers-leave"
chain = "to-client"
action = "drop"
[rule.match]
front = ["s2s-egress"]
data_leak = ["card"]
"#;

#[test]
fn outgoing_policy_drops_a_data_leak_and_lets_the_rest_leave() {
    let f = Federation::start_with(Peer::Certificate, "", NO_CARDS_OUT, true);
    f.explain_on_failure(|| leak_is_dropped(&f));
}

fn leak_is_dropped(f: &Federation) {
    let mut bob = login(&f.local, DOMAIN, BOB);
    let mut alice = login(&f.remote, REMOTE, ALICE);
    let alice_jid = format!("alice@{REMOTE}");
    bob.send_raw(format!(
        "<message type='chat' to='{alice_jid}' id='leak'><body>my card 4111 1111 1111 1111</body></message>"
    ));
    bob.send_raw(format!(
        "<message type='chat' to='{alice_jid}' id='ok'><body>lunch?</body></message>"
    ));
    // Sent in order on one stream: the first message alice gets is the second one.
    let received = alice.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&received, "body").as_deref(),
        Some("lunch?"),
        "{received}"
    );
    assert!(
        !f.remote.log().contains("id='leak'"),
        "the leak reached the remote server"
    );
    let _ = &mut bob;
}

#[test]
fn egress_to_a_denied_domain_is_refused_and_the_sender_told() {
    let f = Federation::start_with(
        Peer::Certificate,
        "",
        "[federation]\nmode = \"deny\"\ndomains = [\"blocked.test\"]",
        true,
    );
    let mut bob = login(&f.local, DOMAIN, BOB);
    bob.send_raw(format!(
        "<message type='chat' to='x@{BLOCKED}' id='b1'><body>hello?</body></message>"
    ));
    let bounced = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::root_attr(&bounced, "type").as_deref(),
        Some("error"),
        "{bounced}"
    );
    let log = f.wall.log();
    assert!(
        log.contains("outgoing stream to a denied domain refused"),
        "{log}"
    );
}

/// microsocks (Debian's package), a real SOCKS5 server, on a free loopback port.
struct Socks5Proxy {
    address: SocketAddr,
    child: std::process::Child,
}

impl Socks5Proxy {
    fn start() -> Socks5Proxy {
        let address = free_loopback_addr();
        let child = Command::new("microsocks")
            .args([
                "-i",
                &address.ip().to_string(),
                "-p",
                &address.port().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running microsocks (is it installed? scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "microsocks did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Socks5Proxy { address, child }
    }
}

impl Drop for Socks5Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn egress_through_a_socks5_proxy() {
    let proxy = Socks5Proxy::start();
    let f = Federation::start_with(
        Peer::Certificate,
        &format!("socks5 = \"{}\"", proxy.address),
        "",
        true,
    );
    f.explain_on_failure(|| exchange(&f));
}

#[test]
fn egress_with_an_unreachable_socks5_proxy_fails_and_the_sender_is_told() {
    let closed = free_loopback_addr();
    let f = Federation::start_with(
        Peer::Certificate,
        &format!("socks5 = \"{closed}\""),
        "",
        true,
    );
    let mut bob = login(&f.local, DOMAIN, BOB);
    bob.send_raw(format!(
        "<message type='chat' to='alice@{REMOTE}' id='s1'><body>via proxy</body></message>"
    ));
    let bounced = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::root_attr(&bounced, "type").as_deref(),
        Some("error"),
        "{bounced}"
    );
    let log = f.wall.log();
    assert!(log.contains("cannot reach the SOCKS5 proxy"), "{log}");
}

#[test]
fn direct_tls_peer_authenticates_by_dialback_and_delivers() {
    let f = Federation::start(Peer::DialbackOnly, "", "");
    let mut bob = login(&f.local, DOMAIN, BOB);
    // On the direct TLS front, and on the STARTTLS front, where a remote server
    // that tries direct TLS first (XEP-0368) gets it too.
    for (front, body) in [
        (f.direct, "direct"),
        (f.front, "direct on the starttls port"),
    ] {
        // XEP-0368: TLS from the first byte, ALPN xmpp-server, SNI the local domain.
        let mut raw = TestClient::connect(front);
        let mut tls =
            rustls::ClientConfig::clone(&tls_client_config(&f.cert.ca_der, TlsVersions::Any));
        tls.alpn_protocols = vec![b"xmpp-server".to_vec()];
        raw.upgrade_to_tls(std::sync::Arc::new(tls));
        raw.send_raw(s2s_header(REMOTE));
        let header = raw.read_stream_header();
        let id = xml::root_attr(&header, "id").expect("the server's header has an id");
        let features = raw.read_element();
        assert!(
            features.contains("dialback") && !features.contains("starttls"),
            "{features}"
        );
        pass_dialback(&mut raw, &id);
        raw.send_raw(format!(
            "<message from='carol@{REMOTE}/x' to='bob@{DOMAIN}' type='chat'><body>{body}</body></message>"
        ));
        let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
        assert_eq!(
            xml::text(&message, "body").as_deref(),
            Some(body),
            "{message}"
        );
    }
}

/// dnsmasq (Debian's dnsmasq-base), a real DNS server on a free loopback port,
/// answering from the records on its command line and NXDOMAIN for the rest of
/// `.test`; nothing is forwarded anywhere.
struct Dns {
    address: SocketAddr,
    child: std::process::Child,
}

/// The host name the test SRV records point at (127.0.0.1).
const REMOTE_HOST: &str = "xmpp.remote.test";

impl Dns {
    /// `records`: dnsmasq `--srv-host` values (name,target,port,priority,weight).
    fn start(records: &[String]) -> Dns {
        let address = free_loopback_addr();
        let mut args = vec![
            "--no-daemon".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            format!("--port={}", address.port()),
            format!("--listen-address={}", address.ip()),
            "--bind-interfaces".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--user=root".to_owned(),
            "--pid-file".to_owned(),
            "--local=/test/".to_owned(),
            format!("--host-record={REMOTE_HOST},127.0.0.1"),
        ];
        args.extend(records.iter().map(|r| format!("--srv-host={r}")));
        let child = Command::new("dnsmasq")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running dnsmasq (is it installed? scripts/test.sh installs it)");
        // dnsmasq answers over TCP on the same port once it is ready.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Dns { address, child }
    }

    /// The `[s2s]` line pointing xmppwall's egress at this server.
    fn resolver(&self) -> String {
        format!("resolver = \"{}\"", self.address)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The line of xmppwall's log saying the outgoing stream to the remote opened.
fn egress_open_line(f: &Federation) -> String {
    let log = f.wall.log();
    log.lines()
        .find(|l| l.contains("outgoing stream open") && l.contains("remote=remote.test"))
        .unwrap_or_else(|| panic!("no outgoing stream opened: {log}"))
        .to_owned()
}

/// The federation with the egress and no static route, and a DNS server with the
/// `--srv-host` records `records` gives for the running remote server.
fn federation_by_dns(
    peer: Peer,
    records: impl FnOnce(&Prosody) -> Vec<String>,
) -> (Federation, Dns) {
    let mut dns = None;
    let f = Federation::start_routed(
        peer,
        |remote| {
            let d = Dns::start(&records(remote));
            let line = d.resolver();
            dns = Some(d);
            line
        },
        "",
        true,
        false,
    );
    (f, dns.expect("the DNS server started"))
}

#[test]
fn egress_finds_the_remote_server_by_its_xmpp_server_srv_record() {
    // The remote server's s2s port is known only to DNS: no static route.
    let (f, _dns) = federation_by_dns(Peer::Certificate, |remote| {
        vec![format!(
            "_xmpp-server._tcp.{REMOTE},{REMOTE_HOST},{},10,0",
            remote.s2s.port()
        )]
    });
    f.explain_on_failure(|| exchange(&f));
    let line = egress_open_line(&f);
    assert!(
        line.contains("tls=true") && line.contains("certificate"),
        "{line}"
    );
    assert!(
        line.contains(&format!("{REMOTE_HOST}:{}", f.remote.s2s.port()))
            && !line.contains("direct TLS"),
        "{line}"
    );
}

#[test]
fn egress_uses_direct_tls_for_an_xmpps_server_srv_record() {
    // XEP-0368: the only record is `_xmpps-server`, pointing at the remote
    // server's direct TLS port, where a plaintext stream header would fail.
    let (f, _dns) = federation_by_dns(Peer::Certificate, |remote| {
        let direct = remote.s2s_direct_tls.expect("direct TLS s2s with tls");
        vec![format!(
            "_xmpps-server._tcp.{REMOTE},{REMOTE_HOST},{},10,0",
            direct.port()
        )]
    });
    f.explain_on_failure(|| exchange(&f));
    let line = egress_open_line(&f);
    let direct = f.remote.s2s_direct_tls.unwrap_or(f.remote.s2s);
    assert!(
        line.contains(&format!("{REMOTE_HOST}:{} (direct TLS)", direct.port()))
            && line.contains("tls=true")
            && line.contains("certificate"),
        "{line}"
    );
}

#[test]
fn egress_tries_srv_records_in_priority_order() {
    // The better priority (lower value) points at a closed port; the next one works.
    let closed = free_loopback_addr();
    let (f, _dns) = federation_by_dns(Peer::Certificate, |remote| {
        vec![
            format!(
                "_xmpp-server._tcp.{REMOTE},{REMOTE_HOST},{},20,0",
                remote.s2s.port()
            ),
            format!(
                "_xmpp-server._tcp.{REMOTE},{REMOTE_HOST},{},5,0",
                closed.port()
            ),
        ]
    });
    f.explain_on_failure(|| exchange(&f));
    let line = egress_open_line(&f);
    assert!(
        line.contains(&format!("{REMOTE_HOST}:{}", f.remote.s2s.port())),
        "{line}"
    );
    let log = f.wall.log();
    assert!(
        log.contains(&format!("{REMOTE_HOST}:{}", closed.port())),
        "the closed target was not tried first: {log}"
    );
}

#[test]
fn srv_target_dot_means_no_service_and_the_sender_is_told() {
    // RFC 2782: a target of "." says the service is decidedly not available;
    // blocked.test is routed to the egress by the local server.
    let (f, _dns) = federation_by_dns(Peer::Certificate, |_| {
        vec![format!("_xmpp-server._tcp.{BLOCKED}")]
    });
    let mut bob = login(&f.local, DOMAIN, BOB);
    bob.send_raw(format!(
        "<message type='chat' to='x@{BLOCKED}' id='d1'><body>anyone?</body></message>"
    ));
    let bounced = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::root_attr(&bounced, "type").as_deref(),
        Some("error"),
        "{bounced}"
    );
    let log = f.wall.log();
    assert!(
        log.contains("blocked.test has no server-to-server service"),
        "{log}"
    );
}

/// Remote Prosody (a certificate for remote.test from a CA xmppwall trusts) →
/// xmppwall → local Prosody with dialback disabled and `s2s_secure_auth`: the only
/// way in is SASL EXTERNAL (XEP-0178 §3), with the certificate xmppwall presents
/// for remote.test, minted by its upstream CA, which the local Prosody trusts
/// (`s2s_ssl` `cafile`; not with `trust_upstream_ca` false). Returns the
/// federation and the upstream CA's files.
fn start_external(trust_upstream_ca: bool) -> (Federation, TestCert) {
    let front = free_loopback_addr();
    let direct = free_loopback_addr();
    let remote = Prosody::start_with(ProsodyOptions {
        domain: Some(REMOTE.into()),
        tls: true,
        s2s_routes: vec![(DOMAIN.into(), front)],
        ..ProsodyOptions::default()
    });
    // Its key and certificate are given to xmppwall, so the local server can be
    // told to trust it before xmppwall runs (a CA xmppwall makes itself on first
    // start is covered by the proxy crate's tests).
    let upstream_ca = TestCert::generate(&["upstream-ca.invalid"]);
    let local = Prosody::start_with(ProsodyOptions {
        tls: true,
        ssl_cafile: trust_upstream_ca.then(|| upstream_ca.ca_path.clone()),
        s2s_routes: vec![(REMOTE.into(), remote.s2s)],
        extra_global_config: "s2s_secure_auth = true\nmodules_disabled = { \"dialback\" }".into(),
        ..ProsodyOptions::default()
    });
    let local_cert = local
        .cert
        .as_ref()
        .expect("the local server has a certificate");
    let remote_ca = &remote
        .cert
        .as_ref()
        .expect("the remote server has a certificate")
        .ca_path;
    let cert = TestCert::generate(&[DOMAIN]);
    let config = format!(
        r#"
domains = ["{DOMAIN}"]

[upstream]
address = "{c2s}"
connect_timeout = "2s"

[[listen]]
front = "s2s"
tls = "starttls"
address = "{front}"
upstream = "{s2s_port}"

[[listen]]
front = "s2s"
tls = "direct"
address = "{direct}"
upstream = "{s2s_port}"

[tls]
default = {{ cert = "{cert}", key = "{key}" }}

[s2s]
ca = "{remote_ca}"
upstream_certificates = true
upstream_ca_cert = "{ca_cert}"
upstream_ca_key = "{ca_key}"
upstream_server_ca = "{server_ca}"
"#,
        c2s = local.c2s,
        s2s_port = local.s2s,
        cert = cert.chain_path.display(),
        key = cert.key_path.display(),
        remote_ca = remote_ca.display(),
        ca_cert = upstream_ca.ca_path.display(),
        ca_key = upstream_ca.ca_key_path.display(),
        server_ca = local_cert.ca_path.display(),
    );
    let wall = Xmppwall::start(&config);
    (
        Federation {
            wall,
            front,
            direct,
            cert,
            local,
            remote,
        },
        upstream_ca,
    )
}

#[test]
fn certificate_peer_authenticates_by_sasl_external_at_a_server_without_dialback() {
    let (f, _ca) = start_external(true);
    f.explain_on_failure(|| {
        let mut bob = login(&f.local, DOMAIN, BOB);
        let mut alice = login(&f.remote, REMOTE, ALICE);
        let bob_jid = format!("bob@{DOMAIN}");
        alice.send_raw(format!("<presence to='{bob_jid}'/>"));
        alice.send_raw(format!(
            "<message type='chat' to='{bob_jid}' id='x1'><body>by certificate</body></message>"
        ));
        let presence = bob.read_element_matching(|e| {
            xml::root_name(e) == "presence" && e.contains(&format!("alice@{REMOTE}"))
        });
        assert!(
            presence.contains("from='alice@remote.test/desk'"),
            "{presence}"
        );
        let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
        assert_eq!(
            xml::text(&message, "body").as_deref(),
            Some("by certificate"),
            "{message}"
        );
        // The receiving server's own word (mod_saslauth): it authenticated the
        // incoming stream by SASL EXTERNAL, for remote.test.
        let log = f.local.log();
        assert!(
            log.contains("Accepting SASL EXTERNAL identity from remote.test"),
            "{log}"
        );
        let wall = f.wall.log();
        assert!(
            wall.lines()
                .any(|l| l.contains("remote server authenticated")
                    && l.contains("remote=remote.test")
                    && l.contains("EXTERNAL")),
            "{wall}"
        );
    });
}

/// A raw remote server claiming [`REMOTE`] on the s2s front, past STARTTLS with a
/// client certificate for `domains` from the remote server's CA (which xmppwall
/// trusts), its post-TLS header sent.
fn raw_peer_with_certificate(f: &Federation, domains: &[&str]) -> TestClient {
    let tls = certified_tls(f, domains);
    let mut c = TestClient::connect(f.front);
    c.send_raw(s2s_header(REMOTE));
    c.read_stream_header();
    let features = c.read_element();
    assert!(features.contains("<starttls"), "{features}");
    c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let proceed = c.read_element();
    assert_eq!(xml::root_name(&proceed), "proceed", "{proceed}");
    c.upgrade_to_tls(tls);
    c.send_raw(s2s_header(REMOTE));
    c
}

/// A TLS client configuration presenting a certificate for `domains` from the
/// remote server's CA (which xmppwall trusts) and trusting xmppwall's.
fn certified_tls(f: &Federation, domains: &[&str]) -> std::sync::Arc<rustls::ClientConfig> {
    let remote_cert = f.remote.cert.as_ref().expect("the remote server's CA");
    let (chain, key) = remote_cert.issue(domains);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.cert.ca_der.clone()).expect("the CA parses");
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client certificate"),
    )
}

/// A raw remote server over direct TLS (XEP-0368, ALPN `xmpp-server`) with a
/// certificate for [`REMOTE`]: the wire exchange of XEP-0178 §3 through xmppwall.
#[test]
fn sasl_external_on_the_wire_over_direct_tls() {
    let (f, _ca) = start_external(true);
    f.explain_on_failure(|| {
        let mut tls = rustls::ClientConfig::clone(&certified_tls(&f, &[REMOTE]));
        tls.alpn_protocols = vec![b"xmpp-server".to_vec()];
        let tls = std::sync::Arc::new(tls);
        // An authorization identity for another domain: refused by xmppwall
        // (RFC 6120 §6.5.6), and the peer may try again.
        let mut c = TestClient::connect(f.direct);
        c.upgrade_to_tls(tls.clone());
        c.send_raw(s2s_header(REMOTE));
        c.read_stream_header();
        let features = c.read_element();
        assert!(
            features.contains("<mechanism>EXTERNAL</mechanism>"),
            "{features}"
        );
        c.send_raw(format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
            support::client::base64(b"victim.test")
        ));
        assert_eq!(
            c.read_element(),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
        );
        // The domain itself: the server says <success/>; both streams restart.
        c.send_raw(format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
            support::client::base64(REMOTE.as_bytes())
        ));
        let success = c.read_element();
        assert_eq!(xml::root_name(&success), "success", "{success}");
        c.send_raw(s2s_header(REMOTE));
        let header = c.read_stream_header();
        assert!(header.contains("id="), "{header}");
        let features = c.read_element();
        assert!(!features.contains("mechanisms"), "{features}");
        let mut bob = login(&f.local, DOMAIN, BOB);
        c.send_raw(format!(
            "<message from='carol@{REMOTE}/x' to='bob@{DOMAIN}' type='chat'><body>over direct TLS</body></message>"
        ));
        let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
        assert_eq!(
            xml::text(&message, "body").as_deref(),
            Some("over direct TLS"),
            "{message}"
        );
        // A domain the stream is not authenticated for is still refused.
        c.send_raw(format!(
            "<message from='mallory@victim.test' to='bob@{DOMAIN}'><body>spoofed</body></message>"
        ));
        let rest = c.read_until_closed();
        assert!(
            rest.contains("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{rest}"
        );
        assert!(!f.local.log().contains("mallory@victim.test"));
    });
}

#[test]
fn server_that_does_not_trust_the_upstream_ca_means_remote_connection_failed() {
    let (f, _ca) = start_external(false);
    f.explain_on_failure(|| {
        let mut c = raw_peer_with_certificate(&f, &[REMOTE]);
        // xmppwall's own header, then the error (RFC 6120 §4.9.3.18).
        c.read_stream_header();
        let rest = c.read_until_closed();
        assert!(
            rest.contains(
                "<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            ),
            "{rest}"
        );
        let log = f.wall.log();
        assert!(
            log.contains("cannot open the server stream with the peer's certificate"),
            "{log}"
        );
    });
}

#[test]
fn certificate_for_another_domain_gets_no_sasl_external_and_cannot_deliver() {
    let (f, _ca) = start_external(true);
    f.explain_on_failure(|| {
        // A valid certificate from the CA xmppwall trusts, but for another domain
        // than the stream's `from`.
        let mut c = raw_peer_with_certificate(&f, &["other.test"]);
        c.read_stream_header();
        // The server sees a plaintext stream: it offers no SASL EXTERNAL, and with
        // dialback disabled, nothing else either.
        let features = c.read_element();
        assert_eq!(xml::root_name(&features), "stream:features", "{features}");
        assert!(!features.contains("mechanisms"), "{features}");
        assert!(!features.contains("EXTERNAL"), "{features}");
        assert!(!features.contains("dialback"), "{features}");
        // Asking anyway: xmppwall answers, the server never sees it (RFC 6120 §6.5.7).
        c.send_raw(format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
            support::client::base64(REMOTE.as_bytes())
        ));
        let failure = c.read_element();
        assert_eq!(
            failure,
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
        );
        c.send_raw(format!(
            "<message from='carol@{REMOTE}' to='bob@{DOMAIN}'><body>not proven</body></message>"
        ));
        let rest = c.read_until_closed();
        assert!(
            rest.contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{rest}"
        );
        let log = f.local.log();
        assert!(!log.contains("SASL EXTERNAL identity"), "{log}");
    });
}

/// A configuration with only a c2s listener and `[s2s] s2s`.
fn upstream_ca_config(s2s: &str) -> String {
    format!(
        "[upstream]\naddress = \"127.0.0.1:1\"\n\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"{}\"\n\n[s2s]\n{s2s}",
        free_loopback_addr()
    )
}

#[test]
fn upstream_ca_is_made_on_first_start_in_the_state_directory() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let store = format!(
        "[store]\npath = \"{}\"\n\n",
        state.path().join("xmppwall.db").display()
    );
    let config = format!(
        "{store}{}",
        upstream_ca_config("upstream_certificates = true\nupstream_insecure_skip_verify = true\n")
    );
    let (cert, key) = (
        state.path().join("upstream-ca.crt"),
        state.path().join("upstream-ca.key"),
    );
    // `check` announces the CA and writes nothing.
    let out = support::xmppwall::check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("will be made on first start"), "{stdout}");
    assert!(!cert.exists() && !key.exists(), "check wrote the CA");
    // `run` makes it; the key is for xmppwall's eyes only.
    let wall = Xmppwall::start(&config);
    let pem = std::fs::read_to_string(&cert).expect("the CA certificate was written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key)
            .expect("the CA key was written")
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "the CA key is readable by others: {mode:o}"
    );
    drop(wall);
    // A second start keeps it.
    let _wall = Xmppwall::start(&config);
    assert_eq!(std::fs::read_to_string(&cert).expect("still there"), pem);
}

#[test]
fn check_reports_a_missing_upstream_ca_file_with_its_position() {
    let out = support::xmppwall::check(&upstream_ca_config(
        "upstream_certificates = true\nupstream_ca_cert = \"/nonexistent/ca.crt\"\nupstream_ca_key = \"/nonexistent/ca.key\"\n",
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "xmppwall.toml:11:20: cannot read the upstream CA certificate /nonexistent/ca.crt"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("xmppwall.toml:12:19:"), "{stderr}");
}

/// ejabberd (example.test) and Prosody (remote.test) federating, every stream in
/// both directions through xmppwall: each server's s2s port behind an s2s front of
/// its own, and each server's outgoing connections into the s2s-egress front,
/// which reaches the other server's front by static route, over STARTTLS with the
/// certificate checked. ejabberd finds the egress by the `_xmpp-server._tcp` SRV
/// record of remote.test from a test DNS server (dnsmasq); Prosody by the test
/// route module.
struct EjabberdFederation {
    wall: Xmppwall,
    ejabberd: Ejabberd,
    prosody: Prosody,
    _dns: Dns,
    _cert: TestCert,
}

impl EjabberdFederation {
    fn start(extra: &str) -> EjabberdFederation {
        let ejabberd_front = free_loopback_addr();
        let prosody_front = free_loopback_addr();
        let egress = free_loopback_addr();
        // The SRV target is an address: ejabberd resolves SRV records with Erlang's
        // resolver (the test DNS) but targets with getaddrinfo (the system's).
        let dns = Dns::start(&[format!(
            "_xmpp-server._tcp.{REMOTE},{},{},10,0",
            egress.ip(),
            egress.port()
        )]);
        let ejabberd = Ejabberd::start_with(EjabberdOptions {
            s2s: Some(dns.address),
            ..EjabberdOptions::default()
        });
        let prosody = Prosody::start_with(ProsodyOptions {
            domain: Some(REMOTE.into()),
            s2s_routes: vec![(DOMAIN.into(), egress)],
            extra_global_config: "s2s_allow_encryption = false".into(),
            ..ProsodyOptions::default()
        });
        let cert = TestCert::generate(&[DOMAIN, REMOTE]);
        let ejabberd_s2s = ejabberd.s2s.expect("ejabberd started with s2s");
        let config = format!(
            r#"
domains = ["{DOMAIN}", "{REMOTE}"]

[upstream]
address = "{c2s}"
connect_timeout = "2s"

[[listen]]
front = "s2s"
tls = "starttls"
address = "{ejabberd_front}"
upstream = "{ejabberd_s2s}"

[[listen]]
front = "s2s"
tls = "starttls"
address = "{prosody_front}"
upstream = "{prosody_s2s}"

[[listen]]
front = "s2s-egress"
tls = "none"
address = "{egress}"

[tls]
default = {{ cert = "{chain}", key = "{key}" }}

[s2s]
ca = "{ca}"
routes = {{ "{DOMAIN}" = "{ejabberd_front}", "{REMOTE}" = "{prosody_front}" }}

{extra}
"#,
            c2s = ejabberd.c2s,
            prosody_s2s = prosody.s2s,
            chain = cert.chain_path.display(),
            key = cert.key_path.display(),
            ca = cert.ca_path.display(),
        );
        let wall = Xmppwall::start(&config);
        EjabberdFederation {
            wall,
            ejabberd,
            prosody,
            _dns: dns,
            _cert: cert,
        }
    }

    fn explain_on_failure(&self, check: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            eprintln!(
                "--- xmppwall ---\n{}\n--- ejabberd ---\n{}\n{}\n--- prosody ---\n{}",
                support::tail(&self.wall.log(), 16000),
                support::tail(&self.ejabberd.log(), 12000),
                support::tail(&self.ejabberd.output(), 4000),
                support::tail(&self.prosody.log(), 12000)
            );
            std::panic::resume_unwind(panic);
        }
    }
}

fn login_at(c2s: SocketAddr, host: &str, account: support::Account) -> TestClient {
    let mut c = TestClient::connect(c2s);
    c.domain = host.to_owned();
    c.open_stream();
    c.auth_plain(account);
    c.bind(Some("desk"));
    c.send_raw("<presence/>");
    c
}

/// A directed presence and a message each way, each asserted by the receiving client.
fn exchange_both_ways(bob: &mut TestClient, alice: &mut TestClient) {
    let bob_jid = format!("bob@{DOMAIN}");
    let alice_jid = format!("alice@{REMOTE}");
    // Prosody → xmppwall egress → xmppwall s2s front → ejabberd.
    alice.send_raw(format!("<presence to='{bob_jid}'/>"));
    alice.send_raw(format!(
        "<message type='chat' to='{bob_jid}' id='m1'><body>hello ejabberd</body></message>"
    ));
    let presence = bob.read_element_matching(|e| {
        xml::root_name(e) == "presence" && e.contains(&format!("{alice_jid}/desk"))
    });
    assert_eq!(xml::root_attr(&presence, "type"), None, "{presence}");
    let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&message, "body").as_deref(),
        Some("hello ejabberd"),
        "{message}"
    );
    assert!(message.contains(&format!("{alice_jid}/desk")), "{message}");
    // ejabberd → xmppwall egress → xmppwall s2s front → Prosody.
    bob.send_raw(format!("<presence to='{alice_jid}'/>"));
    bob.send_raw(format!(
        "<message type='chat' to='{alice_jid}' id='r1'><body>hello prosody</body></message>"
    ));
    let presence = alice.read_element_matching(|e| {
        xml::root_name(e) == "presence" && e.contains(&format!("{bob_jid}/desk"))
    });
    assert_eq!(xml::root_attr(&presence, "type"), None, "{presence}");
    let reply = alice.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::text(&reply, "body").as_deref(),
        Some("hello prosody"),
        "{reply}"
    );
    assert!(reply.contains(&format!("{bob_jid}/desk")), "{reply}");
}

#[test]
fn ejabberd_and_prosody_federate_both_ways_through_xmppwall() {
    let f = EjabberdFederation::start("");
    f.explain_on_failure(|| {
        let mut bob = login_at(f.ejabberd.c2s, DOMAIN, BOB);
        let mut alice = login_at(f.prosody.c2s, REMOTE, ALICE);
        exchange_both_ways(&mut bob, &mut alice);
        let log = f.wall.log();
        for (remote, local) in [(REMOTE, DOMAIN), (DOMAIN, REMOTE)] {
            assert!(
                log.lines()
                    .any(|l| l.contains("remote server authenticated")
                        && l.contains(&format!("remote={remote}"))
                        && l.contains(&format!("local={local}"))),
                "{remote} was not authenticated towards {local} through the s2s front"
            );
            assert!(
                log.lines().any(|l| l.contains("outgoing stream open")
                    && l.contains(&format!("remote={local}"))
                    && l.contains("tls=true")),
                "no outgoing stream to {local} through the egress"
            );
        }
    });
}

/// Dialback on a raw remote server's stream with stream id `id`: a real key, which
/// the local server verifies with the real remote Prosody; the verdict must be valid.
fn pass_dialback(raw: &mut TestClient, id: &str) {
    raw.send_raw(format!(
        "<db:result from='{REMOTE}' to='{DOMAIN}'>{}</db:result>",
        dialback_key(id)
    ));
    let verdict = raw.read_element();
    assert_eq!(
        xml::root_attr(&verdict, "type").as_deref(),
        Some("valid"),
        "{verdict}"
    );
}

/// A raw remote server past dialback (a real key, verified by the real remote
/// Prosody) on the s2s front of `f`.
fn authenticated_raw_peer(f: &Federation) -> TestClient {
    let (mut raw, id) = f.raw_peer(REMOTE);
    pass_dialback(&mut raw, &id);
    raw
}

/// Asks the local server, through the s2s front, to verify a dialback key (XEP-0220
/// §2.2) and returns the first element that comes back: the answer, unless
/// xmppwall sent something else first.
fn next_from_front(raw: &mut TestClient) -> String {
    raw.send_raw(format!(
        "<db:verify from='{REMOTE}' to='{DOMAIN}' id='probe-1'>0123abcd</db:verify>"
    ));
    raw.read_element()
}

/// xmppwall's log says a peer limit refused a stanza.
fn assert_refused_by(f: &Federation, limit: &str) {
    let log = f.wall.log();
    assert!(
        log.lines()
            .any(|l| l.contains("peer stanza refused") && l.contains(limit)),
        "{log}"
    );
}

#[test]
fn remote_sender_over_distinct_recipients_is_dropped_and_the_stream_stays() {
    let f = Federation::start(
        Peer::DialbackOnly,
        "",
        "[limits.peers]\ndistinct_recipients = \"2/1m\"",
    );
    f.explain_on_failure(|| {
        let mut bob = login(&f.local, DOMAIN, BOB);
        let mut raw = authenticated_raw_peer(&f);
        for (id, to) in [("m1", "alice"), ("m2", "bob"), ("m3", "carol"), ("m4", "bob")] {
            raw.send_raw(format!(
                "<message from='mallory@{REMOTE}/x' to='{to}@{DOMAIN}' type='chat' id='{id}'><body>{id}</body></message>"
            ));
        }
        // Nothing is answered on the remote server's own stream (XEP-0288 §1).
        let next = next_from_front(&mut raw);
        assert_eq!(xml::root_name(&next), "db:verify", "{next}");
        // A recipient already written to is still allowed.
        for id in ["m2", "m4"] {
            let delivered = bob.read_element_matching(|e| xml::root_name(e) == "message");
            assert_eq!(xml::text(&delivered, "body").as_deref(), Some(id), "{delivered}");
        }
        assert!(
            !f.local.log().contains("id='m3'"),
            "the refused stanza reached the server"
        );
        assert_refused_by(&f, "peer_distinct_recipients");
    });
}

#[test]
fn remote_domain_over_its_stanza_rate_is_dropped_errors_included() {
    let f = Federation::start(
        Peer::DialbackOnly,
        "",
        "[limits.peers]\nstanzas_per_domain = \"3/1h\"\ndistinct_recipients = \"off\"",
    );
    f.explain_on_failure(|| {
        let mut bob = login(&f.local, DOMAIN, BOB);
        let mut raw = authenticated_raw_peer(&f);
        for id in ["m1", "m2", "m3", "m4"] {
            raw.send_raw(format!(
                "<message from='carol@{REMOTE}/x' to='bob@{DOMAIN}' type='chat' id='{id}'><body>{id}</body></message>"
            ));
        }
        raw.send_raw(format!(
            "<message from='carol@{REMOTE}/x' to='bob@{DOMAIN}' type='error' id='e1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        ));
        let next = next_from_front(&mut raw);
        assert_eq!(xml::root_name(&next), "db:verify", "{next}");
        for id in ["m1", "m2", "m3"] {
            let delivered = bob.read_element_matching(|e| xml::root_name(e) == "message");
            assert_eq!(xml::text(&delivered, "body").as_deref(), Some(id), "{delivered}");
        }
        let log = f.local.log();
        assert!(
            !log.contains("id='m4'") && !log.contains("id='e1'"),
            "a refused stanza reached the server"
        );
        assert_refused_by(&f, "peer_stanzas");
    });
}

#[test]
fn real_remote_server_keeps_its_stream_when_a_stanza_is_refused() {
    let f = Federation::start(
        Peer::DialbackOnly,
        "",
        "[limits.peers]\ndistinct_recipients = \"1/1m\"",
    );
    f.explain_on_failure(|| {
        let mut bob = login(&f.local, DOMAIN, BOB);
        let mut alice = login(&f.remote, REMOTE, ALICE);
        for (id, to) in [("m1", "bob"), ("m2", "carol"), ("m3", "bob")] {
            alice.send_raw(format!(
                "<message type='chat' to='{to}@{DOMAIN}' id='{id}'><body>{id}</body></message>"
            ));
        }
        for id in ["m1", "m3"] {
            let delivered = bob.read_element_matching(|e| xml::root_name(e) == "message");
            assert_eq!(
                xml::text(&delivered, "body").as_deref(),
                Some(id),
                "{delivered}"
            );
        }
        // Prosody ends an outgoing stream on which a stanza arrives with
        // <not-authorized/>; nothing arrived, and its stream is the one it opened.
        let log = f.remote.log();
        assert!(!log.contains("Received[s2sout]: <message"), "{log}");
        assert!(!log.contains("not-authorized"), "{log}");
        assert_refused_by(&f, "peer_distinct_recipients");
    });
}

const ADMIN_TOKEN: &str = "s2s-admin-token-0123456789abcdef";

/// `[admin]` on a free loopback port, with [`ADMIN_TOKEN`].
fn admin_section() -> (SocketAddr, String) {
    let admin = free_loopback_addr();
    (
        admin,
        format!("[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
}

/// The live sessions the admin API lists for `query` (e.g. `?domain=x`).
fn sessions(admin: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let a = request(
        admin,
        "GET",
        &format!("/v1/sessions{query}"),
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["sessions"].as_array().expect("sessions").clone()
}

/// One series' value in a Prometheus scrape.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

#[test]
fn admin_lists_an_inbound_s2s_stream_by_its_authenticated_domain_and_kicks_it_on_the_wire() {
    let (admin, section) = admin_section();
    let f = Federation::start(Peer::DialbackOnly, "", &section);
    // From its own address, so the filters tell it from the real remote server's
    // streams (which dialback may open meanwhile).
    let source: std::net::IpAddr = "127.0.0.57".parse().expect("address");
    let (mut raw, id) = f.raw_peer_on(TestClient::connect_from(source, f.front), REMOTE);
    // Relayed but not yet authenticated: listed, with no domain.
    let before = sessions(admin, "?ip=127.0.0.57");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["front"], serde_json::json!("s2s"), "{before:?}");
    assert_eq!(before[0]["domains"], serde_json::json!([]), "{before:?}");
    assert!(sessions(admin, &format!("?ip=127.0.0.57&domain={REMOTE}")).is_empty());
    pass_dialback(&mut raw, &id);
    // Authenticated: the remote domain is the session's, and filters find it.
    let listed = sessions(admin, &format!("?ip=127.0.0.57&domain={REMOTE}"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["front"], serde_json::json!("s2s"), "{listed:?}");
    assert_eq!(
        listed[0]["domains"],
        serde_json::json!([REMOTE]),
        "{listed:?}"
    );
    assert_eq!(listed[0]["to"], serde_json::json!(DOMAIN), "{listed:?}");
    assert!(
        listed[0]["stanzas_to_client"].as_u64() >= Some(1),
        "{listed:?}"
    );
    assert_eq!(
        sessions(admin, &format!("?ip=127.0.0.57&jid={REMOTE}")).len(),
        1
    );
    assert!(sessions(admin, "?domain=elsewhere.test").is_empty());

    // A kick by address and domain: the remote server gets exactly the chosen
    // stream error, then the end of the stream (RFC 6120 §4.9.1.1).
    let kicked = request(
        admin,
        "POST",
        "/v1/sessions/kick",
        Some(ADMIN_TOKEN),
        Some(&format!(
            r#"{{"ip":"127.0.0.57","domain":"{REMOTE}","condition":"reset"}}"#
        )),
    );
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert_eq!(
        kicked.json()["kicked"],
        serde_json::json!([listed[0]["id"]]),
        "{}",
        kicked.body
    );
    let rest = raw.read_until_closed();
    assert_eq!(
        rest,
        "<stream:error><reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
         </stream:stream>"
    );
}

#[test]
fn kicked_s2s_stream_is_reopened_by_the_remote_server_and_counted_by_front() {
    let (admin, section) = admin_section();
    let state = tempfile::Builder::new()
        .prefix("xmppwall-test-state-")
        .tempdir()
        .expect("a state directory");
    let db = state.path().join("xmppwall.db");
    let tables = format!("{section}\n[store]\npath = \"{}\"\n", db.display());
    // Both directions through xmppwall: the remote server's stream on the s2s
    // front, the local server's own on the s2s-egress front.
    let f = Federation::start_with(Peer::Certificate, "", &tables, true);
    f.explain_on_failure(|| {
        let mut bob = login(&f.local, DOMAIN, BOB);
        let mut alice = login(&f.remote, REMOTE, ALICE);
        let say = |alice: &mut TestClient, bob: &mut TestClient, body: &str| {
            alice.send_raw(format!(
                "<message type='chat' to='bob@{DOMAIN}'><body>{body}</body></message>"
            ));
            let got =
                bob.read_element_matching(|e| xml::root_name(e) == "message" && e.contains(body));
            assert!(got.contains(&format!("alice@{REMOTE}")), "{got}");
        };
        say(&mut alice, &mut bob, "before the kick");

        let listed = sessions(admin, &format!("?domain={REMOTE}"));
        let inbound: Vec<_> = listed.iter().filter(|s| s["front"] == "s2s").collect();
        assert!(!inbound.is_empty(), "{listed:?}");
        assert!(
            inbound
                .iter()
                .all(|s| s["domains"] == serde_json::json!([REMOTE])),
            "{listed:?}"
        );
        let from_remote: u64 = inbound
            .iter()
            .map(|s| s["stanzas_from_client"].as_u64().unwrap_or(0))
            .sum();
        assert!(from_remote >= 1, "{listed:?}");
        let egress: Vec<_> = listed
            .iter()
            .filter(|s| s["front"] == "s2s-egress")
            .collect();
        assert!(!egress.is_empty(), "{listed:?}");
        assert!(
            egress
                .iter()
                .all(|s| s["domains"] == serde_json::json!([REMOTE])
                    && s["to"] == serde_json::json!(REMOTE)),
            "{listed:?}"
        );
        // The gauges by front agree with the registry.
        let all = sessions(admin, "");
        let scrape = request(admin, "GET", "/metrics", Some(ADMIN_TOKEN), None).body;
        for front in ["c2s", "s2s", "s2s-egress", "component"] {
            let live = all.iter().filter(|s| s["front"] == front).count() as f64;
            assert_eq!(
                metric(
                    &scrape,
                    &format!("xmppwall_sessions_live{{front=\"{front}\"}}")
                ),
                live,
                "{front}: {all:?}"
            );
        }
        assert_eq!(
            metric(&scrape, r#"xmppwall_connections_open{front="c2s"}"#),
            0.0
        );

        let ids: Vec<u64> = inbound.iter().filter_map(|s| s["id"].as_u64()).collect();
        for id in &ids {
            let kicked = request(
                admin,
                "POST",
                &format!("/v1/sessions/{id}/kick"),
                Some(ADMIN_TOKEN),
                Some(r#"{"condition":"reset"}"#),
            );
            assert_eq!(kicked.status, 200, "{}", kicked.body);
        }
        support::process::wait_until(support::IO_TIMEOUT, "the kicked streams end", || {
            let gone = sessions(admin, "")
                .iter()
                .all(|s| !ids.iter().any(|id| s["id"] == *id));
            gone.then_some(())
        });
        // What an operator expects: the remote server opens a new stream and
        // messages flow again.
        say(&mut alice, &mut bob, "after the kick");
        let again = sessions(admin, &format!("?domain={REMOTE}"));
        assert!(
            again.iter().any(|s| s["front"] == "s2s"
                && !ids.iter().any(|id| s["id"] == *id)
                && s["domains"] == serde_json::json!([REMOTE])),
            "{again:?}"
        );
        let scrape = request(admin, "GET", "/metrics", Some(ADMIN_TOKEN), None).body;
        assert!(
            metric(
                &scrape,
                r#"xmppwall_connections_total{front="s2s",outcome="stream_error"}"#
            ) >= 1.0,
            "{scrape}"
        );
        // The audit row of the kicked stream: its domain, traffic and why it ended.
        let audit = support::process::wait_until(support::IO_TIMEOUT, "the audit row", || {
            let r = support::sqlite::rows(
                &db,
                "SELECT jid, bytes_from_client > 0, bytes_to_client > 0, stanzas_to_server > 0, \
                 stanzas_to_client > 0, end_reason FROM connections \
                 WHERE front = 's2s' AND end_reason = 'reset'",
            );
            (!r.is_empty()).then_some(r)
        });
        // Every kicked stream is recorded with its domain and the reason; the one
        // that carried the messages with its traffic.
        assert!(
            audit.iter().all(|r| r[0] == REMOTE && r[5] == "reset"),
            "{audit:?}"
        );
        assert!(
            audit.iter().any(|r| r[1..5] == ["1", "1", "1", "1"]),
            "{audit:?}"
        );
    });
}
