use std::time::Instant;

use super::*;
use crate::config::Limits;
use xmppwall_policy::{GateDecision, LimitsConfig};

fn session_with(limits: LimitsConfig) -> C2sSession {
    let limiter = Limiter::new(limits);
    let GateDecision::Admit(ticket) = limiter.admit("192.0.2.1".parse().unwrap(), Instant::now())
    else {
        panic!("admitted");
    };
    let conn = limiter.connection(&ticket);
    C2sSession::new(
        Limits::default(),
        ListenerTls::Starttls,
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(limiter)),
        conn,
        Some("example.test".into()),
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
            xmppwall_policy::rules::Policy::default(),
        )),
        "192.0.2.1".parse().unwrap(),
    )
}

fn session() -> C2sSession {
    session_with(LimitsConfig::default())
}

fn client(s: &mut C2sSession, xml: &str) -> ClientAction {
    s.on_client_frame(Token::Element, xml.as_bytes(), Instant::now())
}

fn server(s: &mut C2sSession, xml: &str) -> ServerAction {
    s.on_server_frame(Token::Element, xml.as_bytes(), Instant::now())
}

const SERVER_HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x' from='example.test' version='1.0'>";

/// A session that has passed SASL and bound `alice@example.test/phone`.
fn bound_session() -> C2sSession {
    let mut s = session();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    client(&mut s, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>");
    server(
        &mut s,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    );
    assert!(s.take_client_restart());
    assert!(s.take_server_restart());
    s.on_client_frame(Token::StreamOpen, b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>", Instant::now());
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    client(&mut s, "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>");
    server(&mut s, "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/phone</jid></bind></iq>");
    s
}

#[test]
fn an_error_after_the_servers_declaration_does_not_declare_again() {
    let mut s = session();
    let error = StreamError::new(StreamCondition::SystemShutdown);
    let text = |s: &C2sSession| {
        String::from_utf8(s.stream_error_bytes(&error, Some("example.test"))).unwrap()
    };
    assert!(text(&s).starts_with("<?xml version='1.0'?><stream:stream "));
    // The server's declaration went to the client; its header did not yet.
    s.on_server_frame(
        Token::XmlDeclaration,
        b"<?xml version='1.0'?>",
        Instant::now(),
    );
    let after = text(&s);
    assert!(after.starts_with("<stream:stream "), "{after}");
    assert_eq!(after.matches("<?xml").count(), 0, "{after}");
}

#[test]
fn an_error_between_sasl_success_and_the_new_header_comes_in_a_new_stream() {
    let mut s = session();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    client(&mut s, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>");
    let error = StreamError::new(StreamCondition::SystemShutdown);
    let bare = "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";
    let text = |s: &C2sSession| {
        String::from_utf8(s.stream_error_bytes(&error, Some("example.test"))).unwrap()
    };
    assert_eq!(text(&s), bare, "inside the first stream");
    server(
        &mut s,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    );
    let after_success = text(&s);
    assert!(
        after_success.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='example.test' id='"),
        "{after_success}"
    );
    assert!(
        after_success.ends_with(&format!("'>{bare}")),
        "{after_success}"
    );
    s.on_client_frame(Token::StreamOpen, b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>", Instant::now());
    assert!(
        text(&s).starts_with("<?xml"),
        "the client's new header is not the server's"
    );
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    assert_eq!(text(&s), bare, "inside the server's new stream");
}

#[test]
fn a_roster_push_from_anyone_but_the_account_is_ignored() {
    let mut s = bound_session();
    let roster = |from: &str, jid: &str| {
        format!("<iq type='set' id='p1'{from}><query xmlns='jabber:iq:roster'><item jid='{jid}'/></query></iq>")
    };
    let contact = |s: &C2sSession, jid: &str| {
        s.limiter
            .load()
            .state
            .contacts
            .contains("alice@example.test", jid)
    };
    server(&mut s, &roster("", "bob@example.test"));
    assert_eq!(contact(&s, "bob@example.test"), Some(true));
    // RFC 6121 §2.1.6: only the account itself (no 'from', or its bare JID).
    server(
        &mut s,
        &roster(" from='Alice@example.test'", "carol@example.test"),
    );
    assert_eq!(contact(&s, "carol@example.test"), Some(true));
    for from in [
        "evil@remote.test",
        "alice@example.test/phone",
        "example.test",
    ] {
        server(
            &mut s,
            &roster(&format!(" from='{from}'"), "evil@remote.test"),
        );
        assert_eq!(contact(&s, "evil@remote.test"), Some(false), "{from}");
    }
}

#[test]
fn message_before_authentication_closes_with_not_authorized() {
    let mut s = session();
    let action = client(
        &mut s,
        "<message to='bob@example.test'><body>hi</body></message>",
    );
    match action {
        ClientAction::Close(e) => assert_eq!(e.condition, StreamCondition::NotAuthorized),
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[test]
fn in_band_registration_passes_before_authentication() {
    let mut s = session();
    let action = client(
        &mut s,
        "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>",
    );
    assert_eq!(action, ClientAction::Forward);
}

#[test]
fn sasl_nonzas_pass_before_authentication_and_record_the_mechanism() {
    let mut s = session();
    let action = client(
        &mut s,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>biws</auth>",
    );
    assert_eq!(action, ClientAction::Forward);
    assert_eq!(
        s.auth(),
        &Auth::InProgress {
            mechanism: "SCRAM-SHA-1".into()
        }
    );
    assert_eq!(
        client(
            &mut s,
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>abc</response>"
        ),
        ClientAction::Forward
    );
}

#[test]
fn sasl_failure_is_counted_and_leaves_the_stream_unauthenticated() {
    let mut s = session();
    client(
        &mut s,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>x</auth>",
    );
    server(
        &mut s,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
    );
    assert_eq!(s.take_sasl_outcome(), Some(SaslOutcome::Failure));
    assert!(!s.is_authenticated());
    assert!(!s.take_client_restart());
}

#[test]
fn sasl_success_authenticates_and_restarts_both_streams_once() {
    let s = &mut bound_session();
    assert!(s.is_authenticated());
    assert_eq!(
        s.auth(),
        &Auth::Authenticated {
            mechanism: "PLAIN".into()
        }
    );
    // bound_session took each restart once already.
    assert!(!s.take_client_restart(), "restart is reported once");
    assert!(!s.take_server_restart(), "restart is reported once");
}

#[test]
fn bind_result_records_the_full_jid() {
    let s = bound_session();
    assert_eq!(s.bound_jid(), Some("alice@example.test/phone"));
}

#[test]
fn stanzas_pass_after_authentication() {
    let mut s = bound_session();
    let action = client(
        &mut s,
        "<message to='bob@example.test' type='chat'><body>hi</body></message>",
    );
    assert_eq!(action, ClientAction::Forward);
}

#[test]
fn oversized_message_gets_stanza_too_big_without_payload() {
    let mut s = bound_session();
    let body = "x".repeat(300 * 1024);
    let stanza =
        format!("<message to='bob@example.test' id='m1' type='chat'><body>{body}</body></message>");
    let ClientAction::Reply(reply) = client(&mut s, &stanza) else {
        panic!("expected an error reply");
    };
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(
        reply,
        "<message type='error' id='m1' from='bob@example.test' to='alice@example.test/phone'>\
         <error type='modify'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>stanza larger than 262144 bytes</text>\
         <stanza-too-big xmlns='urn:xmpp:errors'/></error></message>"
    );
    assert!(!reply.contains("xxxx"));
}

#[test]
fn oversized_error_stanza_is_dropped_not_answered() {
    let mut s = bound_session();
    let body = "x".repeat(300 * 1024);
    let stanza =
        format!("<message to='bob@example.test' type='error'><body>{body}</body></message>");
    assert_eq!(client(&mut s, &stanza), ClientAction::Drop);
    let iq = format!("<iq to='bob@example.test' type='result' id='q'><x>{body}</x></iq>");
    assert_eq!(client(&mut s, &iq), ClientAction::Drop);
}

#[test]
fn oversized_nonza_closes_with_policy_violation() {
    let mut s = bound_session();
    let body = "x".repeat(300 * 1024);
    let nonza = format!("<r xmlns='urn:xmpp:sm:3'>{body}</r>");
    match client(&mut s, &nonza) {
        ClientAction::Close(e) => {
            assert_eq!(e.condition, StreamCondition::PolicyViolation);
            assert_eq!(e.app_condition, Some("stanza-too-big"));
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[test]
fn second_starttls_fails_and_closes() {
    let mut s = bound_session();
    let action = client(
        &mut s,
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    );
    assert_eq!(
        action,
        ClientAction::CloseWith(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>".to_vec()
        )
    );
}

#[test]
fn compression_request_is_answered_with_setup_failed() {
    let mut s = bound_session();
    let action = client(
        &mut s,
        "<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>",
    );
    assert!(
        matches!(action, ClientAction::Reply(r) if r.starts_with(b"<failure xmlns='http://jabber.org/protocol/compress'><setup-failed/>"))
    );
}

#[test]
fn stream_management_nonzas_pass_untouched() {
    let mut s = bound_session();
    for nonza in [
        "<enable xmlns='urn:xmpp:sm:3' resume='true'/>",
        "<r xmlns='urn:xmpp:sm:3'/>",
        "<a xmlns='urn:xmpp:sm:3' h='3'/>",
    ] {
        assert_eq!(client(&mut s, nonza), ClientAction::Forward, "{nonza}");
    }
}

#[test]
fn features_lose_plus_mechanisms_starttls_and_compression() {
    let features = "<stream:features>\
        <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
        <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
        <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>\
        <register xmlns='http://jabber.org/features/iq-register'/>\
        </stream:features>";
    let mut s = session();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    let ServerAction::Rewrite(out) = server(&mut s, features) else {
        panic!("features should be rewritten");
    };
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<stream:features>\
         <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
         <register xmlns='http://jabber.org/features/iq-register'/>\
         </stream:features>"
    );
}

#[test]
fn features_without_anything_to_remove_are_forwarded_as_they_are() {
    let mut s = session();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    let features =
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>";
    assert_eq!(server(&mut s, features), ServerAction::Forward);
}

#[test]
fn error_before_server_header_is_preceded_by_a_stream_header() {
    let s = session();
    let bytes = s.stream_error_bytes(
        &StreamError::new(StreamCondition::RemoteConnectionFailed),
        Some("example.test"),
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='example.test' id='"), "{text}");
    assert!(text.ends_with("<stream:error><remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"), "{text}");
}

#[test]
fn error_after_server_header_uses_the_servers_prefix_without_a_header() {
    let mut s = session();
    s.on_server_frame(Token::StreamOpen, b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' id='x' version='1.0'>", Instant::now());
    let bytes = s.stream_error_bytes(&StreamError::new(StreamCondition::SystemShutdown), None);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "<s:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></s:error></s:stream>"
    );
}

#[test]
fn client_header_checks_namespace_version_and_host() {
    let domains = vec!["example.test".to_owned()];
    let ok = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='Example.Test' version='1.0' xml:lang='en'>";
    let h = ClientHeader::parse(ok, &domains).unwrap();
    assert_eq!(h.to.as_deref(), Some("example.test"));
    assert_eq!(h.lang.as_deref(), Some("en"));

    let condition = |xml: &str| {
        ClientHeader::parse(xml.as_bytes(), &domains)
            .unwrap_err()
            .condition
    };
    assert_eq!(
        condition("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"),
        StreamCondition::InvalidNamespace
    );
    assert_eq!(
        condition("<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='example.test' version='1.0'>"),
        StreamCondition::InvalidNamespace
    );
    assert_eq!(
        condition("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test'>"),
        StreamCondition::UnsupportedVersion
    );
    assert_eq!(
        condition("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.test' version='1.0'>"),
        StreamCondition::HostUnknown
    );
    // A prefix on the header would hide payload namespaces from the stanzas.
    assert_eq!(
        condition("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xmlns:av='jabber:iq:avatar' to='example.test' version='1.0'>"),
        StreamCondition::PolicyViolation
    );
    // The streams namespace under another prefix is still the streams namespace.
    let other = b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";
    assert!(ClientHeader::parse(other, &domains).is_ok());
}

/// Two sessions of one instance, sharing its limiter.
fn sessions_sharing(limits: LimitsConfig) -> (C2sSession, C2sSession) {
    let limiter = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(Limiter::new(limits)));
    let policy = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
        xmppwall_policy::rules::Policy::default(),
    ));
    let make = |ip: &str| {
        let l = limiter.load();
        let GateDecision::Admit(ticket) = l.admit(ip.parse().unwrap(), Instant::now()) else {
            panic!("admitted");
        };
        C2sSession::new(
            Limits::default(),
            ListenerTls::Starttls,
            limiter.clone(),
            l.connection(&ticket),
            Some("example.test".into()),
            policy.clone(),
            ip.parse().unwrap(),
        )
    };
    (make("192.0.2.1"), make("192.0.2.2"))
}

fn external_login(s: &mut C2sSession, bind_id: &str) -> ServerAction {
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    client(
        s,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
    );
    server(s, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    s.take_client_restart();
    s.take_server_restart();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER.as_bytes(), Instant::now());
    let bind = format!(
        "<iq type='set' id='{bind_id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
    );
    assert_eq!(client(s, &bind), ClientAction::Forward);
    server(
        s,
        &format!("<iq type='result' id='{bind_id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/{bind_id}</jid></bind></iq>"),
    )
}

#[test]
fn resource_limit_holds_for_mechanisms_that_name_no_user_at_the_bind_result() {
    let mut limits = LimitsConfig::default();
    limits.registered.resources_per_account = Some(1);
    let (mut first, mut second) = sessions_sharing(limits);
    assert_eq!(external_login(&mut first, "b1"), ServerAction::Forward);
    match external_login(&mut second, "b2") {
        ServerAction::ReplaceThenClose(reply, error) => {
            assert_eq!(
                String::from_utf8(reply).unwrap(),
                "<iq type='error' id='b2'><error type='cancel'>\
                 <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                 <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>at most 1 resources may be bound to one account</text>\
                 <resource-limit-exceeded xmlns='urn:xmpp:errors'/></error></iq>"
            );
            assert_eq!(error.condition, StreamCondition::PolicyViolation);
        }
        other => panic!("expected the bind to be refused, got {other:?}"),
    }
}
