use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xmppwall_policy::rules::{Marks, StreamFront};
use xmppwall_policy::Limiter;
use xmppwall_xml::Token;

use super::*;
use crate::config::{Config, Limits};

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
