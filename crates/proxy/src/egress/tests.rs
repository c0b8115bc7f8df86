use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xmppwall_policy::rules::{Marks, StreamFront};
use xmppwall_policy::Limiter;
use xmppwall_xml::Token;

use super::*;
use crate::config::{Config, Limits};
use crate::s2s::MAX_DOMAIN_PAIRS;

fn session(extra: &str) -> EgressSession {
    let text = format!(
        "domains = [\"example.test\"]\n[upstream]\naddress = \"127.0.0.1:1\"\n[[listen]]\nfront = \"s2s-egress\"\ntls = \"none\"\naddress = \"127.0.0.1:2\"\n{extra}"
    );
    let config = Config::parse(std::path::Path::new("/nonexistent/x.toml"), &text).unwrap();
    let limiter = Limiter::new(config.policy_limits.clone()).with_antispam(config.antispam.clone());
    let ctx = PeerContext {
        front: StreamFront::S2sEgress,
        limits: Limits::default(),
        limiter: Arc::new(ArcSwap::from_pointee(limiter)),
        policy: Arc::new(ArcSwap::from_pointee(
            Arc::try_unwrap(config.policy).unwrap(),
        )),
        ip: "127.0.0.1".parse().unwrap(),
        marks: Marks::default(),
        recorder: None,
        audit: None,
    };
    EgressSession::new(
        ctx,
        "remote.test".into(),
        PeerAuth::Certificate,
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' id='r1' version='1.0'>",
        LOCAL_HEADER,
    )
}

const LOCAL_HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='example.test' to='remote.test' version='1.0'>";

#[test]
fn errors_to_the_remote_use_the_prefix_of_the_stream_sent_to_it() {
    // The remote names the streams namespace `ss` in its own stream; the stream
    // xmppwall writes to it is the local server's, with `stream`.
    let s = EgressSession::new(
        session("").ctx,
        "remote.test".into(),
        PeerAuth::Certificate,
        b"<ss:stream xmlns='jabber:server' xmlns:ss='http://etherx.jabber.org/streams' id='r1' version='1.0'>",
        LOCAL_HEADER,
    );
    let bytes = s.peer_error_bytes(&StreamError::new(StreamCondition::PolicyViolation));
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
}

#[test]
fn dialback_verdict_from_the_remote_authenticates_the_stream() {
    let mut s = session("");
    let now = Instant::now();
    assert_eq!(
        s.on_server_frame(
            Token::Element,
            b"<db:result from='example.test' to='remote.test'>k</db:result>",
            now
        ),
        PeerAction::Forward
    );
    assert!(!s.is_authenticated());
    assert_eq!(
        s.on_peer_frame(
            Token::Element,
            b"<db:result from='remote.test' to='example.test' type='valid'/>",
            now
        ),
        PeerAction::Forward
    );
    assert!(s.is_authenticated());
}

#[test]
fn only_the_pairs_the_local_server_asked_for_are_accepted() {
    let mut s = session("");
    let now = Instant::now();
    // The remote vouches for pairs nobody asked for: passed on, counted for nothing.
    for n in 0..1000 {
        let verdict = format!("<db:result from='r{n}.evil.test' to='example.test' type='valid'/>");
        assert_eq!(
            s.on_peer_frame(Token::Element, verdict.as_bytes(), now),
            PeerAction::Forward
        );
    }
    assert!(!s.is_authenticated());
    assert_eq!(s.peer_domain_count(), 0);
    // A verdict of `invalid` ends a request without authenticating it.
    s.on_server_frame(
        Token::Element,
        b"<db:result from='example.test' to='remote.test'>k</db:result>",
        now,
    );
    s.on_peer_frame(
        Token::Element,
        b"<db:result from='remote.test' to='example.test' type='invalid'/>",
        now,
    );
    s.on_peer_frame(
        Token::Element,
        b"<db:result from='remote.test' to='example.test' type='valid'/>",
        now,
    );
    assert!(!s.is_authenticated(), "a verdict after the verdict");
    // The local server's own requests are bounded too.
    for n in 0..MAX_DOMAIN_PAIRS {
        let request = format!("<db:result from='d{n}.example.test' to='remote.test'>k</db:result>");
        assert_eq!(
            s.on_server_frame(Token::Element, request.as_bytes(), now),
            PeerAction::Forward
        );
    }
    match s.on_server_frame(
        Token::Element,
        b"<db:result from='one-more.example.test' to='remote.test'>k</db:result>",
        now,
    ) {
        PeerAction::Reply(reply) => {
            let reply = String::from_utf8(reply).unwrap();
            assert!(
                reply.contains("type='error'") && reply.contains("<resource-constraint "),
                "{reply}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn outgoing_rules_see_the_egress_front_and_a_bounce_is_a_drop() {
    let mut s = session(
        r#"
[[rule]]
name = "no-cards-out"
chain = "to-client"
action = "bounce"
match = { front = ["s2s-egress"], peer_domain = "remote.test", peer_auth = ["certificate"], data_leak = ["card"] }
"#,
    );
    let now = Instant::now();
    assert_eq!(
        s.on_server_frame(Token::Element, b"<message from='bob@example.test/d' to='alice@remote.test'><body>4111 1111 1111 1111</body></message>", now),
        PeerAction::Drop
    );
    assert_eq!(
        s.on_server_frame(
            Token::Element,
            b"<message from='bob@example.test/d' to='alice@remote.test'><body>hi</body></message>",
            now
        ),
        PeerAction::Forward
    );
}

#[test]
fn denied_domains_are_refused_per_stanza_and_per_dialback_request() {
    let mut s = session("[federation]\nmode = \"deny\"\ndomains = [\"spam.test\"]");
    let now = Instant::now();
    assert_eq!(
        s.on_server_frame(
            Token::Element,
            b"<message from='bob@example.test' to='x@spam.test'><body>hi</body></message>",
            now
        ),
        PeerAction::Drop
    );
    match s.on_server_frame(
        Token::Element,
        b"<db:result from='example.test' to='spam.test'>k</db:result>",
        now,
    ) {
        PeerAction::Reply(r) => {
            let r = String::from_utf8(r).unwrap();
            assert!(
                r.contains("type='error'") && r.contains("from='spam.test'"),
                "{r}"
            );
        }
        other => panic!("expected a db:result error, got {other:?}"),
    }
}
