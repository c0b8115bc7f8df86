use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xmppwall_policy::rules::{Marks, StreamFront};
use xmppwall_policy::Limiter;
use xmppwall_xml::Token;

use super::*;
use crate::config::{Config, Limits};

fn context(config: Config) -> PeerContext {
    let limiter = Limiter::new(config.policy_limits.clone()).with_antispam(config.antispam.clone());
    let policy = Arc::try_unwrap(config.policy).unwrap();
    PeerContext {
        front: StreamFront::S2s,
        limits: Limits::default(),
        limiter: Arc::new(ArcSwap::from_pointee(limiter)),
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        ip: "127.0.0.1".parse().unwrap(),
        marks: Marks::default(),
        recorder: None,
        audit: None,
    }
}

fn config(rules: &str) -> Config {
    let text = format!(
        "domains = [\"example.test\"]\n[upstream]\naddress = \"127.0.0.1:1\"\n[[listen]]\nfront = \"s2s\"\ntls = \"none\"\naddress = \"127.0.0.1:2\"\n{rules}"
    );
    Config::parse(std::path::Path::new("/nonexistent/x.toml"), &text).unwrap()
}

fn session(s2s: S2s, rules: &str) -> S2sInboundSession {
    let mut s = S2sInboundSession::new(
        context(config(rules)),
        s2s,
        vec!["example.test".into()],
        Some("example.test".into()),
        None,
    );
    let header = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>";
    assert_eq!(
        s.on_server_frame(Token::StreamOpen, header, Instant::now()),
        PeerAction::Forward
    );
    s
}

fn dialback(s: &mut S2sInboundSession, remote: &str, local: &str) {
    let now = Instant::now();
    let request = format!("<db:result from='{remote}' to='{local}'>key</db:result>");
    assert_eq!(
        s.on_peer_frame(Token::Element, request.as_bytes(), now),
        PeerAction::Forward
    );
    let valid = format!("<db:result from='{local}' to='{remote}' type='valid'/>");
    assert_eq!(
        s.on_server_frame(Token::Element, valid.as_bytes(), now),
        PeerAction::Forward
    );
}

fn closes_with(action: PeerAction, condition: StreamCondition) {
    match action {
        PeerAction::Close(e) => assert_eq!(e.condition, condition, "{e:?}"),
        other => panic!(
            "expected a {} stream error, got {other:?}",
            condition.name()
        ),
    }
}

#[test]
fn stanza_before_dialback_is_not_authorized() {
    let mut s = session(S2s::default(), "");
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message from='a@remote.test' to='b@example.test'/>",
            Instant::now(),
        ),
        StreamCondition::NotAuthorized,
    );
}

#[test]
fn dialback_valid_authenticates_the_pair_and_spoofing_another_domain_is_invalid_from() {
    let mut s = session(S2s::default(), "");
    dialback(&mut s, "remote.test", "example.test");
    assert_eq!(
        s.authenticated(),
        [AuthenticatedPair {
            remote: "remote.test".into(),
            local: "example.test".into(),
            how: PeerAuth::Dialback
        }]
    );
    let now = Instant::now();
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<message from='a@remote.test/r' to='b@example.test'><body>hi</body></message>",
            now
        ),
        PeerAction::Forward
    );
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message from='a@victim.test' to='b@example.test'/>",
            now,
        ),
        StreamCondition::InvalidFrom,
    );
}

#[test]
fn multiplexed_domains_are_each_authenticated_on_their_own() {
    let mut s = session(S2s::default(), "");
    dialback(&mut s, "remote.test", "example.test");
    let now = Instant::now();
    // A second domain asks (XEP-0220 §8); until the server says valid, it may not send.
    let request = b"<db:result from='muc.remote.test' to='example.test'>k2</db:result>";
    assert_eq!(
        s.on_peer_frame(Token::Element, request, now),
        PeerAction::Forward
    );
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<presence from='room@muc.remote.test/x' to='b@example.test'/>",
            now,
        ),
        StreamCondition::InvalidFrom,
    );
    let mut s = session(S2s::default(), "");
    dialback(&mut s, "remote.test", "example.test");
    dialback(&mut s, "muc.remote.test", "example.test");
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<presence from='room@muc.remote.test/x' to='b@example.test'/>",
            now
        ),
        PeerAction::Forward
    );
}

#[test]
fn invalid_dialback_authenticates_nothing() {
    let mut s = session(S2s::default(), "");
    let now = Instant::now();
    s.on_peer_frame(
        Token::Element,
        b"<db:result from='remote.test' to='example.test'>bad</db:result>",
        now,
    );
    s.on_server_frame(
        Token::Element,
        b"<db:result from='example.test' to='remote.test' type='invalid'/>",
        now,
    );
    assert!(!s.is_authenticated());
    // A 'valid' the peer never asked for counts for nothing either.
    s.on_server_frame(
        Token::Element,
        b"<db:result from='example.test' to='other.test' type='valid'/>",
        now,
    );
    assert!(!s.is_authenticated());
}

#[test]
fn dialback_for_a_denied_domain_is_refused_before_the_server_sees_it() {
    let mut s = session(
        S2s::default(),
        "[federation]\nmode = \"deny\"\ndomains = [\"spam.test\", \"*.spam.test\"]",
    );
    match s.on_peer_frame(
        Token::Element,
        b"<db:result from='x.spam.test' to='example.test'>k</db:result>",
        Instant::now(),
    ) {
        PeerAction::Reply(reply) => {
            let reply = String::from_utf8(reply).unwrap();
            assert!(
                reply.contains("type='error'") && reply.contains("<policy-violation"),
                "{reply}"
            );
        }
        other => panic!("expected a db:result error, got {other:?}"),
    }
}

#[test]
fn dialback_without_a_certificate_is_refused_when_certificates_are_required() {
    let s2s = S2s {
        require_certificate: true,
        ..S2s::default()
    };
    let mut s = session(s2s, "");
    match s.on_peer_frame(
        Token::Element,
        b"<db:result from='remote.test' to='example.test'>k</db:result>",
        Instant::now(),
    ) {
        PeerAction::Reply(reply) => assert!(String::from_utf8(reply)
            .unwrap()
            .contains("<not-authorized")),
        other => panic!("expected a db:result error, got {other:?}"),
    }
}

#[test]
fn the_certificate_is_checked_for_a_bounded_number_of_domains_per_stream() {
    let s2s = S2s {
        require_certificate: true,
        ..S2s::default()
    };
    let mut s = session(s2s, "");
    let refusal = |s: &mut S2sInboundSession, from: &str| {
        let request = format!("<db:result from='{from}' to='example.test'>k</db:result>");
        match s.on_peer_frame(Token::Element, request.as_bytes(), Instant::now()) {
            PeerAction::Reply(reply) => String::from_utf8(reply).unwrap(),
            other => panic!("expected a db:result error, got {other:?}"),
        }
    };
    for n in 0..MAX_DOMAIN_PAIRS {
        assert!(refusal(&mut s, &format!("r{n}.test")).contains("<not-authorized"));
    }
    // A new domain: no further check on this stream; one already checked: its answer.
    assert!(refusal(&mut s, "one-more.test").contains("<resource-constraint"));
    assert!(refusal(&mut s, "r0.test").contains("<not-authorized"));
}

#[test]
fn missing_addresses_are_improper_addressing() {
    let mut s = session(S2s::default(), "");
    dialback(&mut s, "remote.test", "example.test");
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message to='b@example.test'/>",
            Instant::now(),
        ),
        StreamCondition::ImproperAddressing,
    );
}

#[test]
fn rules_see_the_peer_domain_and_how_it_authenticated() {
    let rules = r#"
[[rule]]
name = "no-dialback-only-files"
chain = "to-server"
action = "bounce"
match = { front = ["s2s"], peer_auth = ["dialback"], peer_domain = "remote.test", payload = ["jabber:x:oob"] }
"#;
    let mut s = session(S2s::default(), rules);
    dialback(&mut s, "remote.test", "example.test");
    let oob = b"<message id='m' from='a@remote.test/r' to='b@example.test'><x xmlns='jabber:x:oob'><url>http://x/y</url></x></message>";
    // The rule matched: a bounce on an inbound server stream is a drop (the remote
    // server accepts no stanza on the stream it opened, XEP-0288 §1).
    assert_eq!(
        s.on_peer_frame(Token::Element, oob, Instant::now()),
        PeerAction::Drop
    );
    // Without the payload, the rule does not match and the stanza passes.
    let plain =
        b"<message id='n' from='a@remote.test/r' to='b@example.test'><body>hi</body></message>";
    assert_eq!(
        s.on_peer_frame(Token::Element, plain, Instant::now()),
        PeerAction::Forward
    );
}

#[test]
fn features_lose_starttls_sasl_and_bidi_and_keep_dialback() {
    let features = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><bidi xmlns='urn:xmpp:features:bidi'/><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
    let out = String::from_utf8(rewrite_s2s_features(features, false).unwrap()).unwrap();
    assert_eq!(out, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
    assert_eq!(
        rewrite_s2s_features(
            b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
            false
        ),
        None
    );
    // With a certificate minted for the peer on the server stream, SASL stays.
    let out = String::from_utf8(rewrite_s2s_features(features, true).unwrap()).unwrap();
    assert_eq!(out, "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
}

const EXTERNAL_FEATURES: &[u8] = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>";
const PEER_RESTART: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='remote.test' to='example.test' version='1.0'>";

fn external_session() -> S2sInboundSession {
    let mut s = session(S2s::default(), "").with_upstream_certificate("Remote.test");
    let now = Instant::now();
    match s.on_server_frame(Token::Element, EXTERNAL_FEATURES, now) {
        PeerAction::Forward => {}
        other => panic!("the EXTERNAL offer does not reach the peer: {other:?}"),
    }
    s
}

fn auth(authzid: &str) -> String {
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
}

/// The peer asks for SASL EXTERNAL and the server answers `<success/>`.
fn external_succeeds(s: &mut S2sInboundSession, now: Instant) {
    s.on_peer_frame(Token::Element, auth("=").as_bytes(), now);
    s.on_server_frame(
        Token::Element,
        b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        now,
    );
}

#[test]
fn sasl_external_passes_through_and_authenticates_the_stream_domains() {
    let now = Instant::now();
    // "cmVtb3RlLnRlc3Q=" is base64 of "remote.test".
    for authzid in ["cmVtb3RlLnRlc3Q=", "=", ""] {
        let mut s = external_session();
        assert_eq!(
            s.on_peer_frame(Token::Element, auth(authzid).as_bytes(), now),
            PeerAction::Forward,
            "{authzid}"
        );
        assert!(!s.is_authenticated());
        assert_eq!(
            s.on_server_frame(
                Token::Element,
                b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                now
            ),
            PeerAction::Forward
        );
        assert!(s.take_server_restart());
        assert!(!s.take_server_restart(), "the server framer reset twice");
        assert!(s.take_peer_restart());
        assert_eq!(
            s.authenticated(),
            &[AuthenticatedPair {
                remote: "remote.test".into(),
                local: "example.test".into(),
                how: PeerAuth::Certificate,
            }]
        );
        assert_eq!(
            s.on_peer_frame(Token::StreamOpen, PEER_RESTART, now),
            PeerAction::Forward
        );
        assert_eq!(
            s.on_peer_frame(
                Token::Element,
                b"<message from='a@remote.test' to='b@example.test'/>",
                now
            ),
            PeerAction::Forward
        );
        // A second restart is not expected.
        closes_with(
            s.on_peer_frame(Token::StreamOpen, PEER_RESTART, now),
            StreamCondition::PolicyViolation,
        );
    }
}

#[test]
fn sasl_external_for_another_domain_is_refused_by_xmppwall() {
    let now = Instant::now();
    let mut s = external_session();
    // base64 of "victim.test"
    assert_eq!(
        s.on_peer_frame(Token::Element, auth("dmljdGltLnRlc3Q=").as_bytes(), now),
        PeerAction::Reply(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
                .to_vec()
        )
    );
    assert_eq!(
        s.on_peer_frame(Token::Element, auth("%%%").as_bytes(), now),
        PeerAction::Reply(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><incorrect-encoding/></failure>"
                .to_vec()
        )
    );
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
            now
        ),
        PeerAction::Reply(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
                .to_vec()
        )
    );
    assert!(!s.is_authenticated());
}

#[test]
fn sasl_failure_from_the_server_authenticates_nothing() {
    let now = Instant::now();
    let mut s = external_session();
    assert_eq!(
        s.on_peer_frame(Token::Element, auth("=").as_bytes(), now),
        PeerAction::Forward
    );
    assert_eq!(
        s.on_server_frame(
            Token::Element,
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
            now
        ),
        PeerAction::Forward
    );
    assert!(!s.is_authenticated());
    assert!(!s.take_peer_restart());
    closes_with(
        s.on_peer_frame(Token::StreamOpen, PEER_RESTART, now),
        StreamCondition::PolicyViolation,
    );
    // A <success/> nobody asked for authenticates nothing either.
    s.on_server_frame(
        Token::Element,
        b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        now,
    );
    assert!(!s.is_authenticated());
}

#[test]
fn without_a_minted_certificate_sasl_is_neither_offered_nor_relayed() {
    let now = Instant::now();
    let mut s = session(S2s::default(), "");
    match s.on_server_frame(Token::Element, EXTERNAL_FEATURES, now) {
        PeerAction::Rewrite(bytes) => assert_eq!(bytes, b"<stream:features></stream:features>"),
        other => panic!("the SASL offer reached the peer: {other:?}"),
    }
    assert_eq!(
        s.on_peer_frame(Token::Element, auth("=").as_bytes(), now),
        PeerAction::Reply(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
                .to_vec()
        )
    );
}

#[test]
fn an_error_after_the_servers_declaration_does_not_declare_again() {
    let now = Instant::now();
    let mut s = external_session();
    external_succeeds(&mut s, now);
    let error = StreamError::new(StreamCondition::SystemShutdown);
    assert!(String::from_utf8(s.peer_error_bytes(&error))
        .unwrap()
        .starts_with("<?xml version='1.0'?><stream:stream "));
    s.on_server_frame(Token::XmlDeclaration, b"<?xml version='1.0'?>", now);
    let after = String::from_utf8(s.peer_error_bytes(&error)).unwrap();
    assert!(after.starts_with("<stream:stream "), "{after}");
}

#[test]
fn an_error_after_sasl_external_success_comes_in_a_new_stream() {
    let now = Instant::now();
    let mut s = external_session();
    let error = StreamError::new(StreamCondition::SystemShutdown);
    let bare = "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";
    let text = |s: &S2sInboundSession| String::from_utf8(s.peer_error_bytes(&error)).unwrap();
    assert_eq!(text(&s), bare, "inside the first stream");
    external_succeeds(&mut s, now);
    let after_success = text(&s);
    assert!(
        after_success.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "),
        "{after_success}"
    );
    assert!(
        after_success.ends_with(&format!("'>{bare}")),
        "{after_success}"
    );
    s.on_peer_frame(Token::StreamOpen, PEER_RESTART, now);
    let header = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s2' version='1.0'>";
    s.on_server_frame(Token::StreamOpen, header, now);
    assert_eq!(text(&s), bare, "inside the server's new stream");
}

#[test]
fn restarted_header_must_name_the_same_domains() {
    let now = Instant::now();
    let mut s = external_session();
    external_succeeds(&mut s, now);
    closes_with(
        s.on_peer_frame(
            Token::StreamOpen,
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='victim.test' to='example.test' version='1.0'>",
            now,
        ),
        StreamCondition::InvalidFrom,
    );
}
