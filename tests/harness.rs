//! Proves the test harness against the real servers directly, without xmppwall in between:
//! if these fail, a failing proxy test says nothing about the proxy.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::slixmpp::{Slixmpp, SlixmppLogin, SlixmppTls};
use support::xml::{self, ItemKind};
use support::{
    proxy_protocol, tls_client_config, Account, Ejabberd, Prosody, ProsodyOptions, TestClient,
    TlsVersions, ALICE, BOB,
};

// --- the harness's own pieces ---------------------------------------------------------

#[test]
fn xml_reader_cuts_stream_into_header_elements_and_close() {
    let stream = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams'> <a><b/>x</a><c/>\n</stream:stream>";
    let (kind, range) = xml::next_item(stream).expect("a header");
    assert_eq!(kind, ItemKind::StreamHeader);
    let rest = &stream[range.end..];
    let (kind, range) = xml::next_item(rest).expect("an element");
    assert_eq!(
        (kind, &rest[range.clone()]),
        (ItemKind::Element, &b"<a><b/>x</a>"[..])
    );
    let rest = &rest[range.end..];
    let (kind, range) = xml::next_item(rest).expect("an empty element");
    assert_eq!(
        (kind, &rest[range.clone()]),
        (ItemKind::Element, &b"<c/>"[..])
    );
    let rest = &rest[range.end..];
    let (kind, _) = xml::next_item(rest).expect("the stream close");
    assert_eq!(kind, ItemKind::StreamClose);
}

#[test]
fn xml_reader_waits_for_incomplete_elements() {
    assert_eq!(xml::next_item(b"<message><body>hi</bo"), None);
    assert_eq!(xml::next_item(b"<message"), None);
    assert_eq!(xml::next_item(b"  "), None);
}

#[test]
fn xml_helpers_read_names_attributes_and_texts() {
    let features = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>\
        </stream:features>";
    assert_eq!(xml::root_name(features), "stream:features");
    assert_eq!(xml::texts(features, "mechanism"), ["PLAIN", "SCRAM-SHA-1"]);
    assert!(xml::has_element(features, "mechanisms"));
    let message = "<message to='b@x' type='chat'><body>a &amp; b &#x263A;</body></message>";
    assert_eq!(xml::root_attr(message, "type").as_deref(), Some("chat"));
    assert_eq!(
        xml::text(message, "body").as_deref(),
        Some("a & b \u{263A}")
    );
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in vectors {
        assert_eq!(support::client::base64(plain.as_bytes()), encoded);
    }
}

#[test]
fn proxy_protocol_headers_follow_the_spec() {
    let src: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let dst: SocketAddr = "127.0.0.1:5222".parse().expect("address");
    assert_eq!(
        proxy_protocol::v1(src, dst),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5222\r\n"
    );
    let v2 = proxy_protocol::v2(src, dst);
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1]);
    expected.extend_from_slice(&[0x9c, 0x40, 0x14, 0x66]);
    assert_eq!(v2, expected);
}

// --- Prosody ------------------------------------------------------------------------

#[test]
fn prosody_lets_alice_log_in_over_plaintext_loopback_and_bind() {
    let prosody = Prosody::start();
    let mut client = TestClient::connect(prosody.c2s);
    let features = client.open_stream();
    let mechanisms = xml::texts(&features, "mechanism");
    // xmppwall relays the client's SASL exchange over plaintext: PLAIN must be offered
    // there, which Prosody 0.12 only does with allow_unencrypted_plain_auth.
    assert!(
        mechanisms.iter().any(|m| m == "PLAIN"),
        "PLAIN not offered over plaintext: {features}"
    );
    client.auth_plain(ALICE);
    let jid = client.bind(Some("harness"));
    assert_eq!(jid, format!("{}/harness", ALICE.jid()));
}

#[test]
fn prosody_rejects_a_wrong_password() {
    let prosody = Prosody::start();
    let mut client = TestClient::connect(prosody.c2s);
    client.open_stream();
    let answer = client
        .try_auth_plain(ALICE.user, "not-the-password")
        .expect_err("a wrong password must not authenticate");
    assert_eq!(xml::root_name(&answer), "failure");
    assert!(xml::has_element(&answer, "not-authorized"), "{answer}");
}

#[test]
fn prosody_delivers_a_message_from_alice_to_bob() {
    let prosody = Prosody::start();
    let (mut bob, bob_jid) = TestClient::login(prosody.c2s, BOB, "phone");
    // Available presence, so a message to the bare JID is delivered rather than stored.
    bob.send_raw("<presence/>");
    bob.read_element_matching(|e| xml::root_name(e) == "presence");

    let (mut alice, alice_jid) = TestClient::login(prosody.c2s, ALICE, "laptop");
    alice.send_raw(format!(
        "<message to='{}' type='chat' id='m1'><body>hello bob</body></message>",
        BOB.jid()
    ));
    let message = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(
        xml::root_attr(&message, "from").as_deref(),
        Some(alice_jid.as_str())
    );
    // Prosody delivers to bob's resource but keeps the `to` alice wrote (the bare JID).
    assert_eq!(xml::root_attr(&message, "to"), Some(BOB.jid()));
    assert!(bob_jid.starts_with(&BOB.jid()), "{bob_jid}");
    assert_eq!(xml::text(&message, "body").as_deref(), Some("hello bob"));
}

#[test]
fn prosody_closing_the_stream_closes_the_connection() {
    let prosody = Prosody::start();
    let (mut alice, _) = TestClient::login(prosody.c2s, ALICE, "bye");
    alice.send_raw("</stream:stream>");
    let rest = alice.read_until_closed();
    assert!(rest.contains("</stream:stream>"), "{rest:?}");
}

/// STARTTLS and direct TLS against Prosody with a certificate from the test CA, and what it
/// offers over each TLS version (channel binding: see the assertions).
#[test]
fn prosody_with_tls_offers_starttls_and_direct_tls() {
    let prosody = Prosody::start_with(ProsodyOptions {
        tls: true,
        ..ProsodyOptions::default()
    });
    let cert = prosody
        .cert
        .as_ref()
        .expect("tls option generates a certificate");

    // TLS 1.3: Prosody 0.12 implements only `tls-unique` channel binding, which TLS 1.3
    // does not define, so no -PLUS mechanism is offered.
    let tls13 = tls_client_config(&cert.ca_der, TlsVersions::Tls13Only);
    let mut client = TestClient::connect(prosody.c2s);
    let plain_features = client.open_stream();
    assert!(
        xml::has_element(&plain_features, "starttls"),
        "{plain_features}"
    );
    let features = client.starttls(&tls13);
    let mechanisms = xml::texts(&features, "mechanism");
    assert!(
        !mechanisms.iter().any(|m| m.ends_with("-PLUS")),
        "unexpected -PLUS over TLS 1.3: {mechanisms:?}"
    );
    client.auth_plain(ALICE);
    assert!(client.bind(None).starts_with(&ALICE.jid()));

    // TLS 1.2: `tls-unique` exists, so Prosody offers SCRAM-SHA-1-PLUS.
    let tls12 = tls_client_config(&cert.ca_der, TlsVersions::Tls12Only);
    let mut client = TestClient::connect(prosody.c2s);
    client.open_stream();
    let features = client.starttls(&tls12);
    let mechanisms = xml::texts(&features, "mechanism");
    assert!(
        mechanisms.iter().any(|m| m == "SCRAM-SHA-1-PLUS"),
        "expected SCRAM-SHA-1-PLUS over TLS 1.2: {mechanisms:?}"
    );

    // Direct TLS (XEP-0368) with ALPN xmpp-client.
    let direct = prosody
        .c2s_direct_tls
        .expect("tls option opens a direct TLS port");
    let any = tls_client_config(&cert.ca_der, TlsVersions::Any);
    let mut client = TestClient::connect_direct_tls(direct, &any);
    let features = client.open_stream();
    assert!(!xml::has_element(&features, "starttls"), "{features}");
    client.auth_plain(BOB);
    assert!(client.bind(None).starts_with(&BOB.jid()));
}

/// With `tls12_only`, even a client that prefers TLS 1.3 gets 1.2, and with it
/// SCRAM-SHA-1-PLUS, on both STARTTLS and direct TLS.
#[test]
fn prosody_tls12_only_offers_scram_plus_to_any_client() {
    let prosody = Prosody::start_with(ProsodyOptions {
        tls: true,
        tls12_only: true,
        ..ProsodyOptions::default()
    });
    let cert = prosody
        .cert
        .as_ref()
        .expect("tls option generates a certificate");
    let any = tls_client_config(&cert.ca_der, TlsVersions::Any);

    let mut client = TestClient::connect(prosody.c2s);
    client.open_stream();
    let features = client.starttls(&any);
    let info = client.tls_info().expect("a TLS connection");
    assert_eq!(info.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert!(
        xml::texts(&features, "mechanism").contains(&"SCRAM-SHA-1-PLUS".to_string()),
        "{features}"
    );

    let direct = prosody
        .c2s_direct_tls
        .expect("tls option opens a direct TLS port");
    let mut client = TestClient::connect_direct_tls(direct, &any);
    let features = client.open_stream();
    assert!(
        xml::texts(&features, "mechanism").contains(&"SCRAM-SHA-1-PLUS".to_string()),
        "{features}"
    );
}

/// The optional listeners start and answer: encryption required on c2s, BOSH over HTTP,
/// an external component port.
#[test]
fn prosody_optional_listeners_answer() {
    let prosody = Prosody::start_with(ProsodyOptions {
        tls: true,
        require_encryption: true,
        http: true,
        components: vec![("component.example.test".into(), "component-secret".into())],
        ..ProsodyOptions::default()
    });

    let mut client = TestClient::connect(prosody.c2s);
    let features = client.open_stream();
    assert!(xml::has_element(&features, "required"), "{features}");
    assert!(!xml::has_element(&features, "mechanisms"), "{features}");

    let http = prosody.http.expect("http option opens an HTTP port");
    let mut tcp = std::net::TcpStream::connect(http).expect("connecting to Prosody's HTTP port");
    tcp.set_read_timeout(Some(support::IO_TIMEOUT))
        .expect("setting a read timeout");
    tcp.write_all(b"GET /http-bind HTTP/1.0\r\nHost: example.test\r\n\r\n")
        .expect("sending an HTTP request");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .expect("reading the HTTP answer");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");

    let mut component = TestClient::connect(prosody.component);
    component.domain = "component.example.test".into();
    component.send_raw(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='component.example.test'>",
    );
    let header = component.read_stream_header();
    assert!(xml::root_attr(&header, "id").is_some(), "{header}");
}

// --- ejabberd -----------------------------------------------------------------------

/// Logs in to ejabberd's PROXY-protocol c2s listener after sending `header`, and returns
/// the client (the session lasts while it is open).
fn login_behind_proxy_header(ejabberd: &Ejabberd, header: &[u8]) -> TestClient {
    let mut client = TestClient::connect(ejabberd.c2s);
    client.send_raw(header);
    client.open_stream();
    client.auth_plain(ALICE);
    let jid = client.bind(Some("proxied"));
    assert_eq!(jid, format!("{}/proxied", ALICE.jid()));
    client
}

#[test]
fn ejabberd_records_the_client_address_from_a_proxy_v1_header() {
    let ejabberd = Ejabberd::start(true);
    let source: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let header = proxy_protocol::v1(source, ejabberd.c2s);
    let _alice = login_behind_proxy_header(&ejabberd, &header);
    assert_eq!(ejabberd.session_address(ALICE.user), source.ip());
    assert_eq!(
        ejabberd.wait_logged_auth_addresses(ALICE.user, 1),
        ["203.0.113.7"]
    );
}

#[test]
fn ejabberd_records_the_client_address_from_a_proxy_v2_header() {
    let ejabberd = Ejabberd::start(true);
    let source: SocketAddr = "198.51.100.9:40001".parse().expect("address");
    let header = proxy_protocol::v2(source, ejabberd.c2s);
    let _alice = login_behind_proxy_header(&ejabberd, &header);
    assert_eq!(ejabberd.session_address(ALICE.user), source.ip());
    assert_eq!(
        ejabberd.wait_logged_auth_addresses(ALICE.user, 1),
        ["198.51.100.9"]
    );
}

#[test]
fn ejabberd_records_the_tcp_peer_without_proxy_protocol() {
    let ejabberd = Ejabberd::start(false);
    // A source other than 127.0.0.1, so the assertion cannot pass by accident.
    let source: IpAddr = "127.0.0.2".parse().expect("address");
    let mut client = TestClient::connect_from(source, ejabberd.c2s);
    assert_eq!(client.local_addr().ip(), source);
    client.open_stream();
    client.auth_plain(ALICE);
    assert!(client.bind(None).starts_with(&ALICE.jid()));
    assert_eq!(ejabberd.session_address(ALICE.user), source);
}

// --- slixmpp, an independent client ---------------------------------------------------

const SLIXMPP_TIMEOUT: Duration = Duration::from_secs(30);

fn tls_prosody() -> Prosody {
    Prosody::start_with(ProsodyOptions {
        tls: true,
        ..ProsodyOptions::default()
    })
}

fn slixmpp_login(prosody: &Prosody, account: Account, tls: SlixmppTls) -> SlixmppLogin {
    let server = match tls {
        SlixmppTls::StartTls => prosody.c2s,
        SlixmppTls::Direct => prosody.c2s_direct_tls.expect("Prosody started with tls"),
    };
    SlixmppLogin {
        account,
        server,
        tls,
        ca: prosody
            .cert
            .as_ref()
            .expect("Prosody started with tls")
            .ca_path
            .clone(),
    }
}

/// slixmpp logs in as alice and messages bob; bob (a TestClient) answers "pong".
fn slixmpp_exchanges_messages_with_a_test_client(tls: SlixmppTls) {
    let prosody = tls_prosody();
    let (mut bob, _) = TestClient::login(prosody.c2s, BOB, "echo");
    bob.send_raw("<presence/>");
    bob.read_element_matching(|e| xml::root_name(e) == "presence");

    let mut alice = Slixmpp::send(
        &slixmpp_login(&prosody, ALICE, tls),
        &BOB.jid(),
        "ping",
        Some("pong"),
    );
    bob.timeout = SLIXMPP_TIMEOUT;
    let ping = bob.read_element_matching(|e| {
        xml::root_name(e) == "message" && xml::text(e, "body").is_some()
    });
    assert_eq!(xml::text(&ping, "body").as_deref(), Some("ping"));
    let from = xml::root_attr(&ping, "from").expect("a delivered message has a from");
    assert!(from.starts_with(&ALICE.jid()), "{ping}");
    bob.send_raw(format!(
        "<message to='{}' type='chat'><body>pong</body></message>",
        xml::escape(&from)
    ));
    alice.assert_success(SLIXMPP_TIMEOUT);
}

#[test]
fn slixmpp_over_starttls_exchanges_messages_through_prosody() {
    slixmpp_exchanges_messages_with_a_test_client(SlixmppTls::StartTls);
}

#[test]
fn slixmpp_over_direct_tls_exchanges_messages_through_prosody() {
    slixmpp_exchanges_messages_with_a_test_client(SlixmppTls::Direct);
}

#[test]
fn slixmpp_echo_answers_slixmpp_send() {
    let prosody = tls_prosody();
    let mut bob = Slixmpp::echo(&slixmpp_login(&prosody, BOB, SlixmppTls::StartTls), 1);
    // Until bob is online a message to his bare JID would go to offline storage.
    bob.wait_ready(SLIXMPP_TIMEOUT);
    let mut alice = Slixmpp::send(
        &slixmpp_login(&prosody, ALICE, SlixmppTls::StartTls),
        &BOB.jid(),
        "echo me",
        Some("echo me"),
    );
    alice.assert_success(SLIXMPP_TIMEOUT);
    bob.assert_success(SLIXMPP_TIMEOUT);
}
