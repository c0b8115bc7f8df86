//! The c2s session state machine under arbitrary traffic from both sides.
//!
//! The input is a script of reads: each step's first byte picks the side (client or
//! server) and how far the clock moves, the second how many bytes follow. Both
//! sides are framed as the proxy frames them, and every frame goes through
//! `C2sSession` with every limit and a small policy on. Checked on every step:
//!
//! - nothing panics;
//! - before authentication no `<message/>` or `<presence/>` reaches the server
//!   (RFC 6120 §6.4; XEP-0205 §2.3);
//! - every reply xmppwall writes itself (stanza errors, SASL/compression failures)
//!   is one well-formed element, and none of them echoes a `<body/>`;
//! - every stream error xmppwall would send is well-formed XML.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use libfuzzer_sys::fuzz_target;
use xmppwall_policy::{GateDecision, Limiter};
use xmppwall_proxy::config::Config;
use xmppwall_proxy::session::{C2sSession, ClientAction, ClientHeader, ServerAction};
use xmppwall_xml::{Framer, Limits, Token};

/// Every limit small enough for the fuzzer to reach, and rules of every action.
const CONFIG: &str = r#"
domains = ["localhost"]
[upstream]
address = "127.0.0.1:1"
[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:1"
[limits]
stanza_bytes = 1024
stanza_bytes_close = 4096
preauth_stanza_bytes = 600
[limits.registered]
resources_per_account = 2
distinct_recipients = "3/1m"
bandwidth = { rate = 2000, burst = 4000 }
[[rule]]
name = "no spam"
chain = "to-server"
action = "bounce"
[rule.match]
kind = ["message"]
keywords = ["buy now"]
[[rule]]
name = "strip oob"
chain = "to-server"
action = "pass"
strip = ["jabber:x:oob x"]
[rule.match]
payload = ["jabber:x:oob"]
[[rule]]
name = "strangers"
chain = "to-client"
action = "drop"
[rule.match]
kind = ["message"]
stranger = true
"#;

/// Generous limits for checking what xmppwall itself writes.
const CHECK_LIMITS: Limits = Limits {
    max_element_bytes: 1 << 20,
    max_depth: 64,
    max_elements: 1 << 16,
    max_attributes: 64,
    max_name_bytes: 1024,
    max_attribute_value_bytes: 1 << 16,
};

struct Fixture {
    config: Config,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = Config::parse(Path::new("fuzz.toml"), CONFIG)
            .unwrap_or_else(|e| panic!("the fuzz configuration is invalid: {e}"));
        Fixture { config }
    })
}

/// One framed side of the connection.
struct Side {
    framer: Framer,
    buf: Vec<u8>,
}

impl Side {
    fn new(limits: Limits) -> Side {
        Side {
            framer: Framer::new(limits),
            buf: Vec::new(),
        }
    }
}

/// `bytes` parses as exactly one element inside a stream.
fn assert_one_element(bytes: &[u8], what: &str) {
    let mut framer = Framer::new(CHECK_LIMITS);
    let mut doc =
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
            .to_vec();
    let header = doc.len();
    doc.extend_from_slice(bytes);
    let open = framer.next(&doc).expect("header").expect("header frame");
    assert_eq!((open.token, open.len), (Token::StreamOpen, header));
    let element = framer
        .next(&doc[header..])
        .unwrap_or_else(|e| {
            panic!(
                "{what} is not well-formed ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        })
        .unwrap_or_else(|| panic!("{what} is incomplete: {}", String::from_utf8_lossy(bytes)));
    assert_eq!(element.token, Token::Element, "{what}");
    assert_eq!(element.len, bytes.len(), "{what} is more than one element");
}

fn assert_stream_error(bytes: &[u8]) {
    // A stream error is `<stream:error>...</stream:error></stream:stream>`,
    // possibly after a header of its own; check the element itself.
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("<stream:error").expect("a stream error element");
    let end = text
        .find("</stream:error>")
        .expect("the end of the stream error")
        + "</stream:error>".len();
    assert_one_element(&bytes[start..end], "the stream error");
}

/// A message or presence in the default namespace, by its first bytes.
fn is_plain_message_or_presence(element: &[u8]) -> bool {
    let name_end = element[1..]
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/'))
        .map_or(element.len(), |p| p + 1);
    let name = &element[1..name_end];
    let declares_namespace = element[..element
        .iter()
        .position(|&b| b == b'>')
        .unwrap_or(element.len())]
        .windows(6)
        .any(|w| w == b"xmlns=");
    !declares_namespace && (name == b"message" || name == b"presence")
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    // A limiter per input: counters from earlier inputs would make a crash
    // impossible to reproduce alone.
    let limiter = Arc::new(ArcSwap::from_pointee(Limiter::new(
        fx.config.policy_limits.clone(),
    )));
    let budgets = fx.config.limits.framer_budgets();
    let mut now = Instant::now();
    let ip = IpAddr::V4(Ipv4Addr::new(127, 9, data.len() as u8, 1));
    let ticket = match limiter.load().admit(ip, now) {
        GateDecision::Admit(t) | GateDecision::Banned(t, _) => t,
        GateDecision::Refuse(_) => return,
    };
    let mut client = Side::new(budgets.before);
    let mut server = Side::new(Limits {
        max_element_bytes: 1 << 16,
        ..budgets.after
    });
    let mut session: Option<C2sSession> = None;

    let mut rest = data;
    while rest.len() >= 2 {
        let (step, len) = (rest[0], rest[1] as usize);
        let chunk = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        now += Duration::from_millis(u64::from(step >> 1) * 50);
        let to_server = step & 1 == 0;

        if to_server {
            if session.as_mut().is_some_and(|s| s.take_client_restart()) {
                client.framer.reset();
                client.framer.set_limits(budgets.after);
            }
            client.buf.extend_from_slice(chunk);
            loop {
                let frame = match client.framer.next(&client.buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let bytes: Vec<u8> = client.buf.drain(..frame.len).collect();
                let Some(s) = session.as_mut() else {
                    // The driver reads the header before the session exists.
                    if frame.token != Token::StreamOpen {
                        continue;
                    }
                    let Ok(header) = ClientHeader::parse(&bytes, &fx.config.domains) else {
                        return;
                    };
                    session = Some(C2sSession::new(
                        fx.config.limits,
                        xmppwall_proxy::config::ListenerTls::None,
                        limiter.clone(),
                        limiter.load().connection(&ticket),
                        header.to,
                        Arc::new(ArcSwap::new(fx.config.policy.clone())),
                        ip,
                    ));
                    continue;
                };
                let authenticated = s.is_authenticated();
                let action =
                    s.on_client_frame_framed(frame.token, &bytes, Some(client.framer.head()), now);
                if frame.token == Token::Element
                    && !authenticated
                    && is_plain_message_or_presence(&bytes)
                {
                    assert_ne!(
                        action,
                        ClientAction::Forward,
                        "a stanza passed before authentication"
                    );
                }
                match action {
                    ClientAction::Reply(reply) => {
                        if reply.starts_with(b"<message")
                            || reply.starts_with(b"<iq")
                            || reply.starts_with(b"<presence")
                        {
                            assert_one_element(&reply, "a reply");
                            assert!(
                                !reply.windows(5).any(|w| w == b"<body"),
                                "a reply echoes a body"
                            );
                        }
                    }
                    ClientAction::Close(error) => {
                        assert_stream_error(&s.stream_error_bytes(&error, Some("localhost")));
                        return;
                    }
                    ClientAction::CloseWith(_) => return,
                    // Only with resources shared through Redis, which is off here.
                    ClientAction::ReserveResource { .. } => {
                        unreachable!("shared resources are off in this target")
                    }
                    ClientAction::Forward
                    | ClientAction::ForwardRewritten(_)
                    | ClientAction::Drop => {}
                }
            }
        } else {
            let Some(s) = session.as_mut() else { continue };
            server.buf.extend_from_slice(chunk);
            loop {
                let frame = match server.framer.next(&server.buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let bytes: Vec<u8> = server.buf.drain(..frame.len).collect();
                let action = s.on_server_frame(frame.token, &bytes, now);
                let _ = s.take_sasl_outcome();
                if s.take_server_restart() {
                    server.framer.reset();
                }
                match action {
                    ServerAction::Rewrite(bytes) => {
                        assert_one_element(&bytes, "rewritten features")
                    }
                    ServerAction::ForwardThenClose(error) => {
                        assert_stream_error(&s.stream_error_bytes(&error, Some("localhost")));
                        return;
                    }
                    ServerAction::ReplaceThenClose(_, error) => {
                        assert_stream_error(&s.stream_error_bytes(&error, Some("localhost")));
                        return;
                    }
                    ServerAction::Answer(bytes) => {
                        assert_one_element(&bytes, "an answer in the user's name");
                        assert!(
                            !bytes.windows(5).any(|w| w == b"<body"),
                            "an answer echoes a body"
                        );
                    }
                    ServerAction::Forward | ServerAction::Drop => {}
                }
            }
        }
    }
});
