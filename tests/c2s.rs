//! The client-to-server front against a real Prosody: logins over STARTTLS and direct
//! TLS, messages both ways, and every stream-level refusal asserted on the wire.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::certs::TestCert;
use support::client::{flood_without_reading, tls_client_config, TestClient, TlsVersions};
use support::ports::free_loopback_addr;
use support::slixmpp::{Slixmpp, SlixmppLogin, SlixmppTls};
use support::tap::Tap;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Ejabberd, Prosody, ProsodyOptions, ALICE, BOB, DOMAIN};

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// A server with xmppwall in front of it (STARTTLS, direct TLS and plaintext
/// listeners); derefs to the [`Wall`].
struct Setup<S = Prosody> {
    wall: Wall,
    // Dropped last: xmppwall goes first.
    server: S,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with("", ProsodyOptions::default())
    }

    /// `extra` is appended to the generated config (e.g. a `[limits]` table).
    fn start_with(extra: &str, options: ProsodyOptions) -> Setup {
        let prosody = Prosody::start_with(options);
        let upstream = prosody.c2s;
        Setup::in_front_of(prosody, upstream, "", extra)
    }
}

impl<S> Setup<S> {
    /// xmppwall in front of `server` listening at `upstream`; `upstream_extra` goes
    /// inside `[upstream]`, `extra` at the end of the config.
    fn in_front_of(server: S, upstream: SocketAddr, upstream_extra: &str, extra: &str) -> Setup<S> {
        let wall = Wall::start(
            upstream,
            WallConfig {
                upstream: upstream_extra.to_owned(),
                tables: extra.to_owned(),
                ..WallConfig::default()
            },
        );
        Setup { wall, server }
    }
}

impl<S> std::ops::Deref for Setup<S> {
    type Target = Wall;
    fn deref(&self) -> &Wall {
        &self.wall
    }
}

/// The bytes a stream error ends with, as xmppwall writes them after the server's header.
fn stream_error(condition: &str, text: Option<&str>, app: Option<&str>) -> String {
    let mut s = format!("<stream:error><{condition} xmlns='{STREAMS}'/>");
    if let Some(text) = text {
        s.push_str(&format!(
            "<text xmlns='{STREAMS}' xml:lang='en'>{text}</text>"
        ));
    }
    if let Some(app) = app {
        s.push_str(&format!("<{app} xmlns='urn:xmpp:errors'/>"));
    }
    s.push_str("</stream:error></stream:stream>");
    s
}

/// Asserts that `received` ends with a stream error with `condition` and a text (whatever
/// it says), then the stream's end, and nothing else after it.
fn assert_ends_with_stream_error(received: &str, condition: &str) {
    let start = received
        .rfind("<stream:error>")
        .unwrap_or_else(|| panic!("no stream error in {received:?}"));
    let tail = &received[start..];
    let head = format!(
        "<stream:error><{condition} xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>"
    );
    assert!(tail.starts_with(&head), "{tail}");
    assert!(
        tail.ends_with("</text></stream:error></stream:stream>"),
        "{tail}"
    );
    assert_eq!(tail.matches("<text").count(), 1, "{tail}");
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>{body}</body></message>")
}

fn wait_for_message(c: &mut TestClient, id: &str) -> String {
    c.read_element_matching(|e| {
        xml::root_name(e) == "message" && xml::root_attr(e, "id").as_deref() == Some(id)
    })
}

#[test]
fn two_users_log_in_over_starttls_and_exchange_messages_both_ways() {
    let s = Setup::start();
    let (mut alice, alice_jid) = s.login(ALICE, "phone");
    let (mut bob, bob_jid) = s.login(BOB, "laptop");
    assert_eq!(alice_jid, "alice@example.test/phone");
    assert!(alice.tls_info().is_some());

    alice.send_raw(chat(&bob_jid, "a1", "hello bob"));
    let got = wait_for_message(&mut bob, "a1");
    assert_eq!(xml::text(&got, "body").as_deref(), Some("hello bob"));
    assert_eq!(
        xml::root_attr(&got, "from").as_deref(),
        Some(alice_jid.as_str())
    );

    bob.send_raw(chat(&alice_jid, "b1", "hello alice"));
    let got = wait_for_message(&mut alice, "b1");
    assert_eq!(xml::text(&got, "body").as_deref(), Some("hello alice"));
}

#[test]
fn direct_tls_login_negotiates_alpn_and_delivers_messages() {
    let s = Setup::start();
    let mut alice = TestClient::connect_direct_tls(s.direct, &s.tls());
    let info = alice.tls_info().expect("TLS");
    assert_eq!(info.alpn.as_deref(), Some(&b"xmpp-client"[..]));
    alice.open_stream();
    alice.auth_plain(ALICE);
    let alice_jid = alice.bind(Some("direct"));
    alice.send_raw("<presence/>");
    let (mut bob, bob_jid) = s.login(BOB, "laptop");

    bob.send_raw(chat(&alice_jid, "d1", "over direct tls"));
    let got = wait_for_message(&mut alice, "d1");
    assert_eq!(xml::text(&got, "body").as_deref(), Some("over direct tls"));
    alice.send_raw(chat(&bob_jid, "d2", "back"));
    wait_for_message(&mut bob, "d2");
}

#[test]
fn direct_tls_on_the_starttls_port_is_accepted() {
    // Clients that try direct TLS first (XEP-0368) send a ClientHello to 5222 too.
    let s = Setup::start();
    let mut alice = TestClient::connect_direct_tls(s.starttls, &s.tls());
    let info = alice.tls_info().expect("TLS");
    assert_eq!(info.alpn.as_deref(), Some(&b"xmpp-client"[..]));
    let features = alice.open_stream();
    assert!(!xml::has_element(&features, "starttls"), "{features}");
    alice.auth_plain(ALICE);
    let alice_jid = alice.bind(Some("sniffed"));
    alice.send_raw("<presence/>");
    let (mut bob, _) = s.login(BOB, "laptop");
    bob.send_raw(chat(&alice_jid, "t1", "direct tls on 5222"));
    let got = wait_for_message(&mut alice, "t1");
    assert_eq!(
        xml::text(&got, "body").as_deref(),
        Some("direct tls on 5222")
    );
}

#[test]
fn pre_tls_features_offer_only_required_starttls() {
    let s = Setup::start();
    let mut c = TestClient::connect(s.starttls);
    let features = c.open_stream();
    assert_eq!(
        features,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    );
    let header = c.stream_header.clone().expect("test set-up");
    assert_eq!(xml::root_attr(&header, "from").as_deref(), Some(DOMAIN));
}

#[test]
fn post_tls_features_are_the_servers_without_starttls() {
    let s = Setup::start();
    let (_c, features) = s.client_after_tls();
    assert!(xml::has_element(&features, "mechanisms"), "{features}");
    assert!(
        xml::texts(&features, "mechanism").contains(&"PLAIN".to_string()),
        "{features}"
    );
    assert!(!xml::has_element(&features, "starttls"), "{features}");
    assert!(
        !xml::texts(&features, "mechanism")
            .iter()
            .any(|m| m.ends_with("-PLUS")),
        "{features}"
    );
}

#[test]
fn scram_plus_is_removed_when_the_server_offers_it_over_upstream_tls() {
    // Prosody 0.12 offers SCRAM-SHA-1-PLUS only over TLS 1.2 (tls-unique), so xmppwall
    // connects to it with TLS and Prosody is limited to 1.2.
    let prosody = Prosody::start_with(ProsodyOptions {
        tls: true,
        tls12_only: true,
        ..ProsodyOptions::default()
    });
    let upstream = prosody.c2s_direct_tls.expect("direct TLS port");
    let server_cert = prosody.cert.as_ref().expect("cert");
    // First, the server itself offers -PLUS to a TLS client: otherwise this test proves nothing.
    let mut direct = TestClient::connect_direct_tls(
        upstream,
        &tls_client_config(&server_cert.ca_der, TlsVersions::Any),
    );
    let offered = xml::texts(&direct.open_stream(), "mechanism");
    assert!(offered.iter().any(|m| m.ends_with("-PLUS")), "{offered:?}");

    let upstream_tls = format!(
        "tls = {{ server_name = \"{DOMAIN}\", ca = \"{}\" }}",
        server_cert.ca_path.display()
    );
    let s = Setup::in_front_of(prosody, upstream, &upstream_tls, "");
    let (mut c, features) = s.client_after_tls();
    let mechanisms = xml::texts(&features, "mechanism");
    assert!(
        mechanisms.contains(&"SCRAM-SHA-1".to_string()),
        "{features}"
    );
    assert!(
        !mechanisms.iter().any(|m| m.ends_with("-PLUS")),
        "{features}"
    );
    // and logging in still works
    c.auth_plain(ALICE);
    assert_eq!(
        c.bind(Some("tls-upstream")),
        "alice@example.test/tls-upstream"
    );
}

#[test]
fn stanza_before_authentication_gets_not_authorized() {
    let s = Setup::start();
    let (mut c, _) = s.client_after_tls();
    c.send_raw(chat("bob@example.test", "x", "spam"));
    let rest = c.read_until_closed();
    assert_eq!(
        rest,
        stream_error(
            "not-authorized",
            Some("stanzas are not accepted before authentication"),
            None
        )
    );
}

#[test]
fn stanza_before_tls_gets_not_authorized() {
    let s = Setup::start();
    let mut c = TestClient::connect(s.starttls);
    c.open_stream();
    c.send_raw(chat("bob@example.test", "x", "spam"));
    assert_eq!(
        c.read_until_closed(),
        stream_error(
            "not-authorized",
            Some("stanzas are not accepted before authentication"),
            None
        )
    );
}

#[test]
fn anything_but_starttls_before_tls_is_a_policy_violation() {
    let s = Setup::start();
    let mut c = TestClient::connect(s.starttls);
    c.open_stream();
    c.send_raw("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>");
    assert_eq!(
        c.read_until_closed(),
        stream_error(
            "policy-violation",
            Some("STARTTLS is required before anything else"),
            None
        )
    );
}

/// A client stream header with a prefix for a payload namespace: in scope in every
/// stanza, it would hide that namespace from the payload rules (XEP-0205 §2.8).
const HEADER_WITH_PREFIX: &str = "<?xml version='1.0'?><stream:stream to='example.test' \
    version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns:av='jabber:iq:avatar'>";

#[test]
fn a_stream_header_declaring_a_payload_prefix_is_a_policy_violation() {
    let s = Setup::start();
    // The first header, which xmppwall answers itself.
    let mut c = TestClient::connect(s.starttls);
    c.send_raw(HEADER_WITH_PREFIX);
    assert_ends_with_stream_error(&c.read_until_closed(), "policy-violation");
    // The header of the stream restarted after SASL success, on its way to Prosody.
    let (mut c, _) = s.client_after_tls();
    // SASL PLAIN as alice (RFC 4616: NUL, user, NUL, password, in base64).
    c.send_raw("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGFsaWNlLXNlY3JldC0x</auth>");
    let answer = c.read_element();
    assert_eq!(xml::root_name(&answer), "success", "{answer}");
    c.send_raw(HEADER_WITH_PREFIX);
    assert_ends_with_stream_error(&c.read_until_closed(), "policy-violation");
}

#[test]
fn in_band_registration_passes_before_authentication() {
    let s = Setup::start();
    let (mut c, features) = s.client_after_tls();
    assert!(xml::has_element(&features, "register"), "{features}");
    c.send_raw(
        "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>\
         <username>dave</username><password>dave-secret-4</password></query></iq>",
    );
    let answer = c.read_element();
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );
    // The new account can log in through xmppwall.
    let (mut dave, _) = s.client_after_tls();
    dave.auth_plain(support::Account {
        user: "dave",
        password: "dave-secret-4",
    });
}

#[test]
fn failed_authentication_is_relayed_and_the_stream_stays_usable() {
    let s = Setup::start();
    let (mut c, _) = s.client_after_tls();
    let answer = c.try_auth_plain("alice", "wrong").unwrap_err();
    assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    assert!(xml::has_element(&answer, "not-authorized"), "{answer}");
    c.auth_plain(ALICE);
    assert_eq!(c.bind(Some("retry")), "alice@example.test/retry");
}

#[test]
fn comment_closes_the_stream_with_restricted_xml() {
    let s = Setup::start();
    let (mut c, _) = s.login(ALICE, "r");
    c.send_raw("<!-- hello -->");
    assert_ends_with_stream_error(&c.read_until_closed(), "restricted-xml");
}

#[test]
fn entity_declaration_and_processing_instruction_are_restricted_xml() {
    for payload in [
        "<!DOCTYPE lol [<!ENTITY lol 'lol'>]>",
        "<?php evil() ?>",
        "<message to='bob@example.test'><body>&lol;</body></message>",
    ] {
        let s = Setup::start();
        let (mut c, _) = s.login(ALICE, "r");
        c.send_raw(payload);
        let rest = c.read_until_closed();
        assert!(
            rest.contains(&format!(
                "<stream:error><restricted-xml xmlns='{STREAMS}'/>"
            )),
            "{payload}: {rest}"
        );
        assert!(
            rest.ends_with("</stream:error></stream:stream>"),
            "{payload}: {rest}"
        );
    }
}

#[test]
fn malformed_xml_closes_the_stream_with_not_well_formed() {
    let s = Setup::start();
    let (mut c, _) = s.login(ALICE, "r");
    c.send_raw("<message to='bob@example.test'><body>hi</bodx></message>");
    let rest = c.read_until_closed();
    assert!(
        rest.contains(&format!(
            "<stream:error><not-well-formed xmlns='{STREAMS}'/>"
        )),
        "{rest}"
    );
    assert!(rest.ends_with("</stream:error></stream:stream>"), "{rest}");
}

#[test]
fn oversized_message_gets_stanza_too_big_without_payload_and_the_stream_goes_on() {
    let s = Setup::start_with(
        "[limits]\nstanza_bytes = 4096\nstanza_bytes_close = 65536\n",
        ProsodyOptions::default(),
    );
    let (mut alice, alice_jid) = s.login(ALICE, "big");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let big = "x".repeat(8000);
    alice.send_raw(chat(&bob_jid, "big1", &big));
    let reply = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("big1"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='big1' from='{bob_jid}' to='{alice_jid}'>\
             <error type='modify'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>stanza larger than 4096 bytes</text>\
             <stanza-too-big xmlns='urn:xmpp:errors'/></error></message>"
        )
    );
    // The stream is still open and the next message is delivered; the big one never
    // was (it would have come first: one stream, in order).
    alice.send_raw(chat(&bob_jid, "small1", "small"));
    let got = bob.read_element_matching(|e| {
        assert_ne!(
            xml::root_attr(e, "id").as_deref(),
            Some("big1"),
            "delivered: {e}"
        );
        xml::root_name(e) == "message" && xml::root_attr(e, "id").as_deref() == Some("small1")
    });
    assert_eq!(xml::text(&got, "body").as_deref(), Some("small"));
}

#[test]
fn grossly_oversized_stanza_closes_with_policy_violation() {
    let s = Setup::start_with(
        "[limits]\nstanza_bytes = 4096\nstanza_bytes_close = 16384\n",
        ProsodyOptions::default(),
    );
    let (mut alice, _) = s.login(ALICE, "huge");
    let huge = "x".repeat(20000);
    alice.send_raw(chat("bob@example.test", "huge1", &huge));
    let rest = alice.read_until_closed();
    assert!(
        rest.ends_with(&stream_error(
            "policy-violation",
            Some("stanza too large"),
            Some("stanza-too-big")
        )),
        "{rest}"
    );
}

#[test]
fn unreachable_server_gets_remote_connection_failed() {
    // A port nothing listens on.
    let prosody = Prosody::start();
    let nowhere = free_loopback_addr();
    let s = Setup::in_front_of(prosody, nowhere, "", "");
    let mut c = TestClient::connect(s.starttls);
    c.open_stream();
    c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(xml::root_name(&c.read_element()), "proceed");
    // After TLS, xmppwall answers the new stream header itself with the error.
    c.upgrade_to_tls(s.tls());
    c.send_stream_header();
    let header = c.read_stream_header();
    assert_eq!(xml::root_attr(&header, "from").as_deref(), Some(DOMAIN));
    assert_eq!(
        c.read_until_closed(),
        stream_error(
            "remote-connection-failed",
            Some("the server is not reachable"),
            None
        )
    );
}

#[test]
fn preauth_deadline_closes_with_connection_timeout() {
    // Long enough for the TLS set-up on a loaded machine, which must finish first.
    let s = Setup::start_with("[timeouts]\npreauth = \"3s\"\n", ProsodyOptions::default());
    let (mut c, _) = s.client_after_tls();
    assert_eq!(
        c.read_until_closed(),
        stream_error(
            "connection-timeout",
            Some("authentication did not complete in time"),
            None
        )
    );
}

#[test]
fn idle_stream_closes_with_connection_timeout() {
    // Long enough that no answer of the server's during the login counts as idle.
    let s = Setup::start_with("[timeouts]\nidle = \"3s\"\n", ProsodyOptions::default());
    let (mut c, _) = s.login(ALICE, "idle");
    let rest = c.read_until_closed();
    assert!(
        rest.ends_with(&stream_error(
            "connection-timeout",
            Some("idle timeout"),
            None
        )),
        "{rest}"
    );
}

#[test]
fn whitespace_keepalives_and_stream_management_pass_through() {
    // A tap between xmppwall and Prosody shows what reaches the server, byte for byte.
    let prosody = Prosody::start_with(ProsodyOptions::default());
    let tap = Tap::start(prosody.c2s);
    let s = Setup::in_front_of(prosody, tap.addr, "", "");
    let (mut c, _) = s.login(ALICE, "sm");
    let enable = "<enable xmlns='urn:xmpp:sm:3' resume='true'/>";
    c.send_raw(" \n ");
    c.send_raw(enable);
    let enabled = c.read_element_matching(|e| xml::root_name(e) == "enabled");
    assert!(enabled.contains("urn:xmpp:sm:3"), "{enabled}");
    c.send_raw("\n");
    c.send_raw("<r xmlns='urn:xmpp:sm:3'/>");
    let ack = c.read_element_matching(|e| xml::root_name(e) == "a");
    assert!(xml::root_attr(&ack, "h").is_some(), "{ack}");
    // The keep-alives and the XEP-0198 elements went upstream as they were sent,
    // in their places between the stanzas.
    let expected = format!("<presence/> \n {enable}\n<r xmlns='urn:xmpp:sm:3'/>");
    tap.wait_upstream_containing(expected.as_bytes());
}

/// `<compress/>`, which xmppwall answers itself in any state (XEP-0138 cannot be
/// relayed through TLS termination): a reply per element, with nothing sent upstream.
const COMPRESS: &str =
    "<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>";

/// The client's stream header, for [`flood_without_reading`].
const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
                      xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// xmppwall with `[timeouts] send = "2s"`; 127.0.0.33 is allow-listed (no bandwidth
/// limit), so a flood fills the socket buffers in a moment.
fn send_timeout_setup() -> Setup {
    Setup::start_with(
        "[timeouts]\nsend = \"2s\"\n\n[gate]\nallow = [\"127.0.0.33\"]\n",
        ProsodyOptions::default(),
    )
}

/// The flood's connection ended because xmppwall's writes to it timed out, and the
/// log says so.
fn assert_closed_for_not_reading(s: &Setup, closed: Option<Duration>) {
    let after = closed.expect("a client that reads nothing is still connected after 60 s");
    support::process::wait_until(Duration::from_secs(10), "the close to be logged", || {
        s.wall
            .xmppwall
            .log()
            .contains("the peer read nothing for 2s")
            .then_some(())
    });
    // Not a timing assertion: the bound only shows the close came from the send
    // deadline and not from the ten-minute idle timeout or the 30 s pre-auth one.
    assert!(after < Duration::from_secs(60), "{after:?}");
}

#[test]
fn a_client_that_reads_nothing_before_login_is_closed_after_the_send_timeout() {
    let s = send_timeout_setup();
    let closed = flood_without_reading(
        "127.0.0.33".parse().expect("address"),
        s.plain,
        &[(HEADER, "</stream:features>")],
        COMPRESS,
        Duration::from_secs(60),
    );
    assert_closed_for_not_reading(&s, closed);
    // The listener is still serving.
    s.login_plain_from("127.0.0.34".parse().expect("address"), ALICE, "after");
}

#[test]
fn a_logged_in_client_that_reads_nothing_is_closed_after_the_send_timeout() {
    let s = send_timeout_setup();
    let credentials =
        support::client::base64(format!("\0{}\0{}", ALICE.user, ALICE.password).as_bytes());
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
    );
    let bind = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    // Each reply xmppwall queues for the client waits behind the ones the client
    // does not read: the queue fills, then the direction from the client stalls.
    let closed = flood_without_reading(
        "127.0.0.33".parse().expect("address"),
        s.plain,
        &[
            (HEADER, "</stream:features>"),
            (&auth, "<success"),
            (HEADER, "</stream:features>"),
            (bind, "</iq>"),
        ],
        COMPRESS,
        Duration::from_secs(60),
    );
    assert_closed_for_not_reading(&s, closed);
    s.login_plain_from("127.0.0.34".parse().expect("address"), BOB, "after");
}

#[test]
fn a_client_held_back_by_the_bandwidth_limit_still_meets_the_preauth_deadline() {
    // Keep-alives before login, without end: at the default 3000 B/s the reads pause,
    // and the socket always has bytes waiting. The pre-auth deadline (3 s) must end
    // the stream, long before the bandwidth limit's own close (after 120 s).
    let s = Setup::start_with("[timeouts]\npreauth = \"3s\"\n", ProsodyOptions::default());
    let mut tcp =
        support::client::quiet_connection("127.0.0.35".parse().expect("address"), s.plain);
    support::client::exchange(&mut tcp, HEADER, "</stream:features>");
    let mut writer = tcp.try_clone().expect("a second handle");
    let flood = std::thread::spawn(move || {
        let spaces = vec![b' '; 64 * 1024];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30)
            && std::io::Write::write_all(&mut writer, &spaces).is_ok()
        {}
    });
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.ends_with(&stream_error(
            "connection-timeout",
            Some("authentication did not complete in time"),
            None
        )),
        "{rest}"
    );
    drop(tcp);
    flood.join().expect("the flood thread");
}

#[test]
fn sigterm_sends_system_shutdown_to_open_streams() {
    let mut s = Setup::start();
    let (mut c, _) = s.login(ALICE, "bye");
    s.wall.xmppwall.send_signal("TERM");
    let rest = c.read_until_closed();
    assert!(
        rest.ends_with(&stream_error(
            "system-shutdown",
            Some("the server is shutting down"),
            None
        )),
        "{rest}"
    );
    let status = s
        .wall
        .xmppwall
        .wait_exit(Duration::from_secs(10))
        .expect("xmppwall exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_certificates_without_dropping_streams() {
    let mut s = Setup::start();
    let (mut alice, alice_jid) = s.login(ALICE, "stay");
    // Replace the certificate files with ones from a new CA, then SIGHUP.
    let fresh = TestCert::generate(&[DOMAIN]);
    std::fs::copy(&fresh.chain_path, &s.cert.chain_path).expect("test set-up");
    std::fs::copy(&fresh.key_path, &s.cert.key_path).expect("test set-up");
    s.wall.xmppwall.send_signal("HUP");
    support::process::wait_until(Duration::from_secs(10), "the reload to be logged", || {
        s.wall
            .xmppwall
            .log()
            .contains("configuration reloaded")
            .then_some(())
    });
    // A new client must trust the new CA ...
    let mut c = TestClient::connect(s.starttls);
    c.open_stream();
    c.starttls(&tls_client_config(&fresh.ca_der, TlsVersions::Any));
    // ... and the stream opened before the reload still works.
    let (mut bob, _) = s.login_with_ca(&fresh, BOB, "b");
    bob.send_raw(chat(&alice_jid, "after-reload", "still here"));
    wait_for_message(&mut alice, "after-reload");
}

#[test]
fn broken_config_on_sighup_keeps_the_running_one() {
    let mut s = Setup::start();
    let (mut alice, alice_jid) = s.login(ALICE, "stay");
    s.wall.xmppwall.rewrite_config("[upstream\naddress = ");
    s.wall.xmppwall.send_signal("HUP");
    support::process::wait_until(Duration::from_secs(10), "the refusal to be logged", || {
        s.wall
            .xmppwall
            .log()
            .contains("reload refused")
            .then_some(())
    });
    assert!(
        s.wall.xmppwall.log().contains("xmppwall.toml:1:"),
        "{}",
        s.wall.xmppwall.log()
    );
    let (mut bob, _) = s.login(BOB, "b");
    bob.send_raw(chat(&alice_jid, "still", "works"));
    wait_for_message(&mut alice, "still");
}

#[test]
fn check_reports_problems_with_file_line_and_column() {
    let out = support::xmppwall::check(
        "[upstream]\naddress = \"127.0.0.1:1\"\n\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"nowhere\"\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("xmppwall.toml:7:11: invalid socket address \"nowhere\""),
        "{stderr}"
    );
}

impl<S> Setup<S> {
    fn login_with_ca(
        &self,
        cert: &TestCert,
        account: support::Account,
        resource: &str,
    ) -> (TestClient, String) {
        let mut c = TestClient::connect(self.starttls);
        c.open_stream();
        c.starttls(&tls_client_config(&cert.ca_der, TlsVersions::Any));
        c.auth_plain(account);
        let jid = c.bind(Some(resource));
        c.send_raw("<presence/>");
        (c, jid)
    }
}

#[test]
fn plaintext_listener_logs_in_where_configured() {
    let s = Setup::start();
    let (_alice, jid) = TestClient::login(s.plain, ALICE, "plain");
    assert_eq!(jid, "alice@example.test/plain");
}

/// ejabberd records the client's own address, not xmppwall's, from the PROXY header.
fn server_sees_the_client_address(proxy_protocol: &str) {
    let ejabberd = Ejabberd::start(true);
    let upstream = ejabberd.c2s;
    let s = Setup::in_front_of(
        ejabberd,
        upstream,
        &format!("proxy_protocol = \"{proxy_protocol}\""),
        "",
    );
    // xmppwall connects to the server from 127.0.0.1; the client comes from 127.0.0.2.
    let source: IpAddr = "127.0.0.2".parse().expect("address");
    let mut client = TestClient::connect_from(source, s.starttls);
    client.open_stream();
    client.starttls(&s.tls());
    client.auth_plain(ALICE);
    client.bind(Some("proxied"));
    assert_eq!(s.server.session_address(ALICE.user), source);
}

#[test]
fn ejabberd_records_the_client_address_from_a_proxy_v1_header() {
    server_sees_the_client_address("v1");
}

#[test]
fn ejabberd_records_the_client_address_from_a_proxy_v2_header() {
    server_sees_the_client_address("v2");
}

#[test]
fn slixmpp_logs_in_through_xmppwall_and_exchanges_messages() {
    let s = Setup::start();
    let (mut bob, _) = s.login(BOB, "echo");
    let login = SlixmppLogin {
        account: ALICE,
        server: s.starttls,
        tls: SlixmppTls::StartTls,
        ca: s.cert.ca_path.clone(),
    };
    let mut alice = Slixmpp::send(&login, &BOB.jid(), "ping", Some("pong"));
    bob.timeout = Duration::from_secs(30);
    let ping = bob.read_element_matching(|e| {
        xml::root_name(e) == "message" && xml::text(e, "body").is_some()
    });
    assert_eq!(xml::text(&ping, "body").as_deref(), Some("ping"));
    let from = xml::root_attr(&ping, "from").expect("a delivered message has a from");
    bob.send_raw(format!(
        "<message to='{}' type='chat'><body>pong</body></message>",
        xml::escape(&from)
    ));
    alice.assert_success(Duration::from_secs(30));
}

#[test]
fn check_loads_certificates_and_names_a_key_that_does_not_match() {
    let cert = TestCert::generate(&[DOMAIN]);
    let other = TestCert::generate(&[DOMAIN]);
    let out = support::xmppwall::check(&format!(
        "[upstream]\naddress = \"127.0.0.1:1\"\n\n[[listen]]\nfront = \"c2s\"\naddress = \"127.0.0.1:1\"\n\n\
         [tls]\ndefault = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.chain_path.display(),
        other.key_path.display()
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: the key does not match the certificate",
            other.key_path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn stanza_with_too_many_elements_closes_with_policy_violation() {
    let s = Setup::start_with("[limits]\nmax_elements = 50\n", ProsodyOptions::default());
    let (mut alice, _) = s.login(ALICE, "many");
    let many = "<x/>".repeat(60);
    alice.send_raw(format!("<message to='bob@example.test'>{many}</message>"));
    let rest = alice.read_until_closed();
    assert!(
        rest.ends_with(&stream_error(
            "policy-violation",
            Some("too many elements in one stanza"),
            None
        )),
        "{rest}"
    );
}

/// How many client connections Prosody accepted so far (its log says so for each).
fn server_connections(s: &Setup) -> usize {
    s.server.log().matches("Client connected").count()
}

/// `[upstream] defer_connect` (the default): once a stream has taught xmppwall the
/// server's features, a new stream is answered by xmppwall itself (RFC 6120 §4.3.2),
/// and the server only hears of it when the client sends an element that passes.
/// Streams that say nothing, or are refused while framing, never reach the server.
#[test]
fn streams_refused_before_their_first_element_never_reach_the_server() {
    let s = Setup::start();
    // The first stream is relayed as it is: xmppwall learns the server's features.
    let mut first = TestClient::connect(s.plain);
    let relayed = first.open_stream();
    first.auth_plain(ALICE);
    let connected = server_connections(&s);

    // Answered with the same features, while the server hears nothing.
    let mut idle = TestClient::connect(s.plain);
    let answered = idle.open_stream();
    assert_eq!(answered, relayed);

    // Nested too deeply before authentication: refused by xmppwall alone.
    let mut nested = TestClient::connect(s.plain);
    nested.open_stream();
    nested.send_raw("<a>".repeat(100));
    let rest = nested.read_until_closed();
    assert_eq!(
        rest,
        stream_error("policy-violation", Some("elements nested too deeply"), None)
    );

    // A stanza before authentication: <not-authorized/>, also without the server.
    let mut early = TestClient::connect(s.plain);
    early.open_stream();
    early.send_raw(chat("bob@example.test", "early", "hi"));
    assert_ends_with_stream_error(&early.read_until_closed(), "not-authorized");

    // The end of the stream is answered in kind.
    let mut quits = TestClient::connect(s.plain);
    quits.open_stream();
    quits.send_raw("</stream:stream>");
    assert_eq!(quits.read_until_closed(), "</stream:stream>");

    // A client that authenticates is connected then, and logs in as usual, over
    // every front.
    let (_bob, jid) = TestClient::login(s.plain, BOB, "deferred");
    assert_eq!(jid, "bob@example.test/deferred");
    let (_alice, jid) = s.login(ALICE, "starttls");
    assert_eq!(jid, "alice@example.test/starttls");
    drop(idle);
    // Only the two logins reached the server (its log is in order: the logins'
    // lines come after any the refused streams would have caused).
    assert_eq!(server_connections(&s), connected + 2);
}

/// With `defer_connect = false` every stream is relayed to the server from its header on.
#[test]
fn without_defer_connect_every_stream_reaches_the_server() {
    let prosody = Prosody::start();
    let upstream = prosody.c2s;
    let s = Setup::in_front_of(prosody, upstream, "defer_connect = false\n", "");
    let mut first = TestClient::connect(s.plain);
    first.open_stream();
    first.auth_plain(ALICE);
    let connected = server_connections(&s);
    let mut nested = TestClient::connect(s.plain);
    nested.open_stream();
    nested.send_raw("<a>".repeat(100));
    nested.read_until_closed();
    let (_bob, _) = TestClient::login(s.plain, BOB, "relayed");
    assert_eq!(server_connections(&s), connected + 2);
}
