use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xmppwall_policy::rules::{Marks, Policy, StreamFront};
use xmppwall_policy::{Limiter, LimitsConfig};
use xmppwall_xml::Token;

use super::*;
use crate::config::{Config, Limits};

fn context(policy: Policy) -> PeerContext {
    PeerContext {
        front: StreamFront::Component,
        limits: Limits::default(),
        limiter: Arc::new(ArcSwap::from_pointee(Limiter::new(LimitsConfig::default()))),
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        ip: "127.0.0.1".parse().unwrap(),
        marks: Marks::default(),
        recorder: None,
        audit: None,
    }
}

fn policy(rules: &str) -> Policy {
    let text = format!(
        "[upstream]\naddress = \"127.0.0.1:1\"\n[[listen]]\nfront = \"component\"\ntls = \"none\"\naddress = \"127.0.0.1:2\"\n{rules}"
    );
    let config = Config::parse(std::path::Path::new("/nonexistent/x.toml"), &text).unwrap();
    Arc::try_unwrap(config.policy).unwrap()
}

const SERVER_HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='abc123' from='bot.example.test'>";

fn authenticated(secret: Option<&str>, rules: &str) -> ComponentSession {
    let mut s = ComponentSession::new(
        context(policy(rules)),
        "bot.example.test".into(),
        secret.map(str::to_owned),
    );
    let now = Instant::now();
    assert_eq!(
        s.on_server_frame(Token::StreamOpen, SERVER_HEADER, now),
        PeerAction::Forward
    );
    let digest = handshake_digest("abc123", secret.unwrap_or("x"));
    let handshake = format!("<handshake>{digest}</handshake>");
    assert_eq!(
        s.on_peer_frame(Token::Element, handshake.as_bytes(), now),
        PeerAction::Forward
    );
    assert!(!s.is_authenticated());
    assert_eq!(
        s.on_server_frame(Token::Element, b"<handshake/>", now),
        PeerAction::Forward
    );
    assert!(s.is_authenticated());
    s
}

fn closes_with(action: PeerAction, condition: StreamCondition) {
    match action {
        PeerAction::Close(e) => assert_eq!(e.condition, condition),
        other => panic!(
            "expected a {} stream error, got {other:?}",
            condition.name()
        ),
    }
}

#[test]
fn handshake_digest_is_hex_sha1_of_id_and_secret() {
    // XEP-0114 §3 example: stream id 3BF96D32, secret "secret".
    // SHA-1("3BF96D32secret"), computed independently (Python's hashlib).
    assert_eq!(
        handshake_digest("3BF96D32", "secret"),
        "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
    );
    assert_eq!(handshake_digest("abc", "").len(), 40);
    assert!(handshake_matches(
        "id",
        "s",
        &handshake_digest("id", "s").to_uppercase()
    ));
    assert!(!handshake_matches("id", "s", &handshake_digest("id", "t")));
}

#[test]
fn wrong_handshake_is_refused_before_the_server_sees_it() {
    let mut s = ComponentSession::new(
        context(Policy::default()),
        "bot.example.test".into(),
        Some("right".into()),
    );
    let now = Instant::now();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER, now);
    let wrong = format!(
        "<handshake>{}</handshake>",
        handshake_digest("abc123", "wrong")
    );
    closes_with(
        s.on_peer_frame(Token::Element, wrong.as_bytes(), now),
        StreamCondition::NotAuthorized,
    );
}

#[test]
fn stanza_before_handshake_is_not_authorized() {
    let mut s = ComponentSession::new(context(Policy::default()), "bot.example.test".into(), None);
    let now = Instant::now();
    s.on_server_frame(Token::StreamOpen, SERVER_HEADER, now);
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message from='bot.example.test' to='alice@example.test'/>",
            now,
        ),
        StreamCondition::NotAuthorized,
    );
}

#[test]
fn from_outside_the_component_domain_is_invalid_from() {
    let mut s = authenticated(Some("sec"), "");
    let now = Instant::now();
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<message from='x@bot.example.test' to='alice@example.test'><body>hi</body></message>",
            now
        ),
        PeerAction::Forward
    );
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<presence from='sub.bot.example.test' to='alice@example.test'/>",
            now
        ),
        PeerAction::Forward
    );
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message from='admin@example.test' to='alice@example.test'/>",
            now,
        ),
        StreamCondition::InvalidFrom,
    );
}

#[test]
fn missing_from_is_invalid_from() {
    let mut s = authenticated(None, "");
    closes_with(
        s.on_peer_frame(
            Token::Element,
            b"<message to='alice@example.test'/>",
            Instant::now(),
        ),
        StreamCondition::InvalidFrom,
    );
}

#[test]
fn rules_apply_in_both_directions_with_front_and_peer_domain() {
    let rules = r#"
[[rule]]
name = "no-headlines-from-bots"
chain = "to-server"
action = "bounce"
match = { front = ["component"], peer_domain = "bot.example.test", peer_auth = ["handshake"], type = ["headline", "chat"] }

[[rule]]
name = "no-pings-to-bots"
chain = "to-client"
action = "drop"
match = { front = ["component"], kind = ["iq"] }
"#;
    let mut s = authenticated(None, rules);
    let now = Instant::now();
    match s.on_peer_frame(Token::Element, b"<message type='chat' id='m1' from='bot.example.test' to='alice@example.test'><body>buy</body></message>", now) {
        PeerAction::Reply(reply) => {
            let reply = String::from_utf8(reply).unwrap();
            assert!(reply.contains("type='error'") && reply.contains("to='bot.example.test'"), "{reply}");
            assert!(!reply.contains("buy"), "{reply}");
        }
        other => panic!("expected a bounce, got {other:?}"),
    }
    assert_eq!(
        s.on_server_frame(Token::Element, b"<iq type='get' id='p' from='alice@example.test/r' to='bot.example.test'><ping xmlns='urn:xmpp:ping'/></iq>", now),
        PeerAction::Drop
    );
    assert_eq!(
        s.on_server_frame(
            Token::Element,
            b"<message from='alice@example.test/r' to='bot.example.test'><body>hi</body></message>",
            now
        ),
        PeerAction::Forward
    );
}

#[test]
fn error_before_the_server_header_comes_with_a_header() {
    let s = ComponentSession::new(context(Policy::default()), "bot.example.test".into(), None);
    let bytes =
        String::from_utf8(s.peer_error_bytes(&StreamError::new(StreamCondition::SystemShutdown)))
            .unwrap();
    assert!(
        bytes.contains("<stream:stream xmlns='jabber:component:accept'"),
        "{bytes}"
    );
    assert!(bytes.ends_with("<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"), "{bytes}");
}
