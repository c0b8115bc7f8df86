//! The external-component front (XEP-0114) in front of a real Prosody: a real
//! component (slixmpp's ComponentXMPP) exchanges stanzas through xmppwall with rules
//! dropping one kind of stanza in each direction; a raw component that spoofs its
//! `from`, gets the secret wrong or names an unknown domain gets the stream error of
//! RFC 6120 §4.9.3 on the wire. The admin API lists component streams, kicks one
//! with a chosen stream error and records its traffic in the audit trail.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::client::{exchange, flood_until_closed, quiet_connection, TestClient};
use support::http::request;
use support::ports::free_loopback_addr;
use support::process::wait_until;
use support::slixmpp::{Slixmpp, COMPONENT_READY_LINE};
use support::sqlite::rows;
use support::xml;
use support::{Prosody, ProsodyOptions, Xmppwall, ALICE, IO_TIMEOUT};

const COMPONENT: &str = "bot.example.test";
const SECRET: &str = "component-secret-9";
const TOKEN: &str = "component-admin-token-0123456789";

struct Setup {
    wall: Xmppwall,
    front: SocketAddr,
    prosody: Prosody,
    admin: SocketAddr,
    /// The store file (the audit trail).
    db: std::path::PathBuf,
    _state: tempfile::TempDir,
}

impl Setup {
    /// Prosody with the component `bot.example.test`; xmppwall's component front in
    /// front of Prosody's component port, knowing the secret, with `rules`.
    fn start(rules: &str) -> Setup {
        let prosody = Prosody::start_with(ProsodyOptions {
            components: vec![(COMPONENT.into(), SECRET.into())],
            ..ProsodyOptions::default()
        });
        let front = free_loopback_addr();
        let admin = free_loopback_addr();
        let state = tempfile::Builder::new()
            .prefix("xmppwall-test-state-")
            .tempdir()
            .expect("a state directory");
        let db = state.path().join("xmppwall.db");
        let config = format!(
            r#"
domains = ["example.test"]

[admin]
listen = "{admin}"
token = "{TOKEN}"

[store]
path = "{db}"

[upstream]
address = "{c2s}"
connect_timeout = "2s"

[[listen]]
front = "component"
tls = "none"
address = "{front}"
upstream = "{component}"

[[component]]
domain = "{COMPONENT}"
secret = "{SECRET}"

{rules}
"#,
            c2s = prosody.c2s,
            component = prosody.component,
            db = db.display(),
        );
        let wall = Xmppwall::start(&config);
        Setup {
            wall,
            front,
            prosody,
            admin,
            db,
            _state: state,
        }
    }

    /// A GET on the admin API, as JSON.
    fn get(&self, path: &str) -> Value {
        let a = request(self.admin, "GET", path, Some(TOKEN), None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.json()
    }

    fn sessions(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/v1/sessions{query}"))["sessions"]
            .as_array()
            .expect("sessions")
            .clone()
    }

    fn scrape(&self) -> String {
        request(self.admin, "GET", "/metrics", Some(TOKEN), None).body
    }

    /// A raw component stream through xmppwall: header sent, the server's header read.
    fn raw_component(&self, domain: &str) -> TestClient {
        let mut c = TestClient::connect(self.front);
        c.send_raw(component_header(domain));
        c
    }

    /// A component that completed the handshake on a [`quiet_connection`]: a peer
    /// about to stop reading.
    fn quiet_authenticated_component(&self) -> std::net::TcpStream {
        let mut tcp = quiet_connection("127.0.0.1".parse().expect("address"), self.front);
        let header = exchange(&mut tcp, &component_header(COMPONENT), "id=");
        let header = &header[header.find("<stream:stream").expect("a header")..];
        let id = xml::root_attr(&format!("{header}</stream:stream>"), "id").expect("an id");
        exchange(
            &mut tcp,
            &format!(
                "<handshake>{}</handshake>",
                sha1_hex(&format!("{id}{SECRET}"))
            ),
            "<handshake",
        );
        tcp
    }

    /// A raw component that completed the handshake.
    fn authenticated_component(&self) -> TestClient {
        let mut c = self.raw_component(COMPONENT);
        let header = c.read_stream_header();
        let id = xml::root_attr(&header, "id").expect("the server's header has an id");
        c.send_raw(format!(
            "<handshake>{}</handshake>",
            sha1_hex(&format!("{id}{SECRET}"))
        ));
        let answer = c.read_element();
        assert_eq!(xml::root_name(&answer), "handshake", "{answer}");
        c
    }
}

/// A component's stream header for `domain` (XEP-0114).
fn component_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    )
}

/// SHA-1 in hex, by `sha1sum`: an implementation independent of xmppwall's.
fn sha1_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running sha1sum");
    child
        .stdin
        .take()
        .expect("sha1sum's stdin")
        .write_all(text.as_bytes())
        .expect("writing to sha1sum");
    let out = child.wait_with_output().expect("sha1sum's output");
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(40)
        .collect()
}

const RULES: &str = r#"
# What the component sends: its headlines ("ads") never reach users.
[[rule]]
name = "no-component-headlines"
chain = "to-server"
action = "drop"
[rule.match]
front = ["component"]
peer_domain = "bot.example.test"
type = ["headline"]

# What users send the component: nothing that mentions the secret plan.
[[rule]]
name = "no-secrets-to-components"
chain = "to-client"
action = "drop"
[rule.match]
front = ["component"]
kind = ["message"]
keywords = ["secret-plan"]
"#;

#[test]
fn real_component_exchanges_stanzas_with_one_kind_dropped_each_way() {
    let setup = Setup::start(RULES);
    let mut component = Slixmpp::component(COMPONENT, SECRET, setup.front, 2);
    component.wait_for_line(COMPONENT_READY_LINE, Duration::from_secs(20));

    let (mut alice, _) = TestClient::login(setup.prosody.c2s, ALICE, "desk");
    alice.send_raw("<presence/>");
    let to = COMPONENT;
    alice.send_raw(format!(
        "<message type='chat' to='{to}' id='m1'><body>hello</body></message>"
    ));
    alice.send_raw(format!(
        "<message type='chat' to='{to}' id='m2'><body>the secret-plan</body></message>"
    ));
    alice.send_raw(format!(
        "<message type='chat' to='{to}' id='m3'><body>after</body></message>"
    ));

    // The component answers each message it gets with a headline, then an echo, on
    // one stream, in order: by the echo of "after", everything it sent before has
    // arrived or was dropped.
    let mut received = Vec::new();
    loop {
        let item = alice.read_element_matching(|e| xml::root_name(e) == "message");
        let body = xml::text(&item, "body").unwrap_or_default();
        received.push(item.clone());
        if body == "after" {
            break;
        }
    }
    let bodies: Vec<String> = received
        .iter()
        .map(|m| xml::text(m, "body").unwrap_or_default())
        .collect();
    assert_eq!(bodies, ["hello", "after"], "{received:#?}");
    assert!(
        received
            .iter()
            .all(|m| xml::root_attr(m, "type").as_deref() == Some("chat")),
        "a headline from the component passed: {received:#?}"
    );
    // The real component's stream is in the session registry under its front and
    // domain, with what it relayed counted.
    let listed = setup.sessions(&format!("?domain={COMPONENT}"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["front"], json!("component"), "{listed:?}");
    assert_eq!(listed[0]["domains"], json!([COMPONENT]), "{listed:?}");
    assert!(
        listed[0]["stanzas_from_client"].as_u64() >= Some(2),
        "{listed:?}"
    );
    component.assert_success(Duration::from_secs(30));
    let log = setup.wall.log();
    assert!(log.contains("component authenticated"), "{log}");
}

#[test]
fn spoofed_from_closes_the_stream_with_invalid_from() {
    let setup = Setup::start("");
    let mut c = setup.authenticated_component();
    c.send_raw(
        "<message from='admin@example.test' to='alice@example.test'><body>I am admin</body></message>",
    );
    // xmppwall's refusal, with its text: Prosody refuses such a stanza with the
    // same condition, so the condition alone would not tell who refused.
    let rest = c.read_until_closed();
    assert!(
        rest.ends_with(&format!(
            "<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>example.test is not the component's domain {COMPONENT}</text>\
             </stream:error></stream:stream>"
        )),
        "{rest}"
    );
}

#[test]
fn wrong_secret_is_not_authorized_before_the_server_sees_it() {
    let setup = Setup::start("");
    let mut c = setup.raw_component(COMPONENT);
    let header = c.read_stream_header();
    let id = xml::root_attr(&header, "id").expect("the server's header has an id");
    c.send_raw(format!(
        "<handshake>{}</handshake>",
        sha1_hex(&format!("{id}not-the-secret"))
    ));
    // xmppwall's refusal, with its text (Prosody would answer not-authorized too).
    let rest = c.read_until_closed();
    assert!(
        rest.ends_with(
            "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>the handshake does not match the shared secret</text>\
             </stream:error></stream:stream>"
        ),
        "{rest}"
    );
    assert!(
        !setup
            .prosody
            .log()
            .contains("Component authentication failed"),
        "the handshake reached the server"
    );
}

#[test]
fn stanza_before_the_handshake_is_not_authorized() {
    let setup = Setup::start("");
    let mut c = setup.raw_component(COMPONENT);
    c.read_stream_header();
    c.send_raw(
        "<message from='bot.example.test' to='alice@example.test'><body>early</body></message>",
    );
    let rest = c.read_until_closed();
    assert!(
        rest.contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{rest}"
    );
}

#[test]
fn unknown_component_domain_is_host_unknown() {
    let setup = Setup::start("");
    let mut c = setup.raw_component("evil.example.test");
    let header = c.read_stream_header();
    assert!(header.contains("jabber:component:accept"), "{header}");
    let rest = c.read_until_closed();
    assert!(
        rest.contains("<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{rest}"
    );
}

#[test]
fn component_over_its_domain_rate_and_recipient_limit_gets_xep_0205_errors() {
    let setup = Setup::start(
        "[limits.peers]\nstanzas_per_domain = \"4/1h\"\ndistinct_recipients = \"2/1m\"",
    );
    let (mut alice, _) = TestClient::login(setup.prosody.c2s, ALICE, "desk");
    alice.send_raw("<presence/>");
    let mut c = setup.authenticated_component();
    let send = |c: &mut TestClient, id: &str, to: &str| {
        c.send_raw(format!(
            "<message from='gw-user@{COMPONENT}/x' to='{to}@example.test' type='chat' id='{id}'><body>{id}</body></message>"
        ))
    };
    send(&mut c, "m1", "alice");
    send(&mut c, "m2", "bob");
    // A third distinct recipient of one sender within the minute (XEP-0205 §2.6).
    send(&mut c, "m3", "carol");
    let bounce = c.read_element();
    assert_eq!(
        bounce,
        format!(
            "<message type='error' id='m3' from='carol@example.test' to='gw-user@{COMPONENT}/x'>\
             <error type='wait'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>too many distinct recipients: at most 2 per 1m</text>\
             <too-many-stanzas xmlns='urn:xmpp:errors'/></error></message>"
        )
    );
    // The fourth stanza of the component's domain within the hour passes; the
    // fifth is over the domain's rate.
    send(&mut c, "m4", "alice");
    send(&mut c, "m5", "alice");
    let bounce = c.read_element();
    assert_eq!(
        bounce,
        format!(
            "<message type='error' id='m5' from='alice@example.test' to='gw-user@{COMPONENT}/x'>\
             <error type='wait'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>too many stanzas from {COMPONENT}: at most 4 per 1h</text>\
             </error></message>"
        )
    );
    for id in ["m1", "m4"] {
        let delivered = alice.read_element_matching(|e| xml::root_name(e) == "message");
        assert_eq!(
            xml::text(&delivered, "body").as_deref(),
            Some(id),
            "{delivered}"
        );
    }
    let log = setup.prosody.log();
    assert!(
        !log.contains("id='m3'") && !log.contains("id='m5'"),
        "a refused stanza reached the server"
    );
}

#[test]
fn a_component_that_reads_nothing_is_closed_after_the_send_timeout() {
    // Every message past the first is bounced by xmppwall itself, and the component
    // never reads a bounce.
    let setup =
        Setup::start("[timeouts]\nsend = \"2s\"\n\n[limits.peers]\nstanzas_per_domain = \"1/1h\"");
    let tcp = setup.quiet_authenticated_component();
    let message = format!(
        "<message from='gw-user@{COMPONENT}/x' to='alice@example.test' type='chat'><body>{}</body></message>",
        "x".repeat(200)
    );
    let closed = flood_until_closed(tcp, &message, Duration::from_secs(60));
    let after = closed.expect("a component that reads nothing is still connected after 60 s");
    assert!(after < Duration::from_secs(60), "{after:?}");
    support::process::wait_until(Duration::from_secs(10), "the close to be logged", || {
        setup
            .wall
            .log()
            .contains("the peer read nothing for 2s")
            .then_some(())
    });
    // Its place is given back: the registry no longer lists it.
    support::process::wait_until(
        Duration::from_secs(10),
        "the stream to leave the registry",
        || setup.sessions("").is_empty().then_some(()),
    );
}

#[test]
fn a_component_that_half_closes_while_not_reading_is_closed_within_the_grace() {
    // The send deadline (60 s) is far longer than the grace (1 s): what ends this
    // stream is the close of the component's side, not a write that timed out.
    let setup = Setup::start("[timeouts]\nsend = \"60s\"\nshutdown_grace = \"1s\"");
    let tcp = setup.quiet_authenticated_component();
    // The server sends the component far more than the socket buffers hold: the
    // direction towards it stalls in a write, holding the component's writer.
    let (mut alice, _) = TestClient::login(setup.prosody.c2s, ALICE, "desk");
    let body = "y".repeat(2000);
    for i in 0..4000 {
        alice.send_raw(format!(
            "<message to='user@{COMPONENT}' type='chat' id='s{i}'><body>{body}</body></message>"
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    tcp.shutdown(std::net::Shutdown::Write)
        .expect("half-closing the component's side");
    support::process::wait_until(
        Duration::from_secs(20),
        "the stream to leave the registry",
        || setup.sessions("").is_empty().then_some(()),
    );
    assert!(
        setup.wall.log().contains("connection closed"),
        "{}",
        setup.wall.log()
    );
    drop(tcp);
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
fn admin_lists_a_component_stream_kicks_it_with_the_chosen_error_and_audits_its_traffic() {
    let setup = Setup::start("");
    let mut c = setup.authenticated_component();
    // A stanza each way: a version query to the server, its answer back.
    c.send_raw(format!(
        "<iq type='get' id='v1' from='{COMPONENT}' to='example.test'>\
         <query xmlns='jabber:iq:version'/></iq>"
    ));
    let answer = c.read_element();
    assert_eq!(
        xml::root_attr(&answer, "id").as_deref(),
        Some("v1"),
        "{answer}"
    );

    let listed = setup.sessions("");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let s = &listed[0];
    assert_eq!(s["front"], json!("component"), "{s}");
    assert_eq!(s["domains"], json!([COMPONENT]), "{s}");
    assert_eq!(s["to"], json!(COMPONENT), "{s}");
    assert_eq!(s["jid"], Value::Null, "{s}");
    // The handshake and the query each way.
    assert!(s["stanzas_from_client"].as_u64() >= Some(2), "{s}");
    assert!(s["stanzas_to_client"].as_u64() >= Some(2), "{s}");
    assert!(s["bytes_from_client"].as_u64() > Some(0), "{s}");
    let id = s["id"].as_u64().expect("id");
    // Every filter that applies finds it; one that does not, nothing.
    assert_eq!(setup.sessions(&format!("?domain={COMPONENT}")).len(), 1);
    assert_eq!(setup.sessions(&format!("?jid={COMPONENT}")).len(), 1);
    assert_eq!(setup.sessions("?ip=127.0.0.0/8").len(), 1);
    assert_eq!(setup.sessions("?domain=other.example.test").len(), 0);
    assert_eq!(setup.sessions("?ip=192.0.2.1").len(), 0);

    let scrape = setup.scrape();
    assert_eq!(
        metric(&scrape, r#"xmppwall_sessions_live{front="component"}"#),
        1.0
    );
    assert_eq!(
        metric(&scrape, r#"xmppwall_connections_open{front="component"}"#),
        1.0
    );
    assert_eq!(
        metric(&scrape, r#"xmppwall_sessions_live{front="c2s"}"#),
        0.0
    );
    assert_eq!(
        metric(&scrape, r#"xmppwall_connections_open{front="c2s"}"#),
        0.0
    );

    let kicked = request(
        setup.admin,
        "POST",
        &format!("/v1/sessions/{id}/kick"),
        Some(TOKEN),
        Some(r#"{"condition":"conflict","text":"replaced by the operator"}"#),
    );
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    // RFC 6120 §4.9.1.1: the stream error, then the closing tag, and nothing after.
    let rest = c.read_until_closed();
    assert_eq!(
        rest,
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>replaced by the operator</text>\
         </stream:error></stream:stream>"
    );

    // Counted once the connection has ended (after it left the registry).
    let series = r#"xmppwall_connections_total{front="component",outcome="stream_error"}"#;
    let scrape = wait_until(IO_TIMEOUT, "the kicked stream counted as ended", || {
        let scrape = setup.scrape();
        (metric(&scrape, series) == 1.0).then_some(scrape)
    });
    assert!(setup.sessions("").is_empty());
    assert_eq!(
        metric(&scrape, r#"xmppwall_sessions_live{front="component"}"#),
        0.0
    );
    assert_eq!(
        metric(&scrape, r#"xmppwall_connections_open{front="component"}"#),
        0.0
    );

    // (The harness's readiness probe left a row of its own, without a domain.)
    let audit = wait_until(IO_TIMEOUT, "the connection's audit row", || {
        let r = rows(
            &setup.db,
            "SELECT jid, front, bytes_from_client > 0, bytes_to_client > 0, \
             stanzas_to_server >= 2, stanzas_to_client >= 2, end_reason FROM connections \
             WHERE jid IS NOT NULL",
        );
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        audit,
        [[COMPONENT, "component", "1", "1", "1", "1", "conflict"]]
    );
}
