//! The XEP-0205 limits over the wire: xmppwall in front of a real Prosody, each limit
//! configured low, driven by raw clients, and the exact bytes the limited client
//! receives asserted, together with legitimate traffic on other connections that
//! keeps flowing meanwhile.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use support::client::{stream_from, TestClient};
use support::process::wait_until;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Account, Prosody, ProsodyOptions, ALICE, BOB, CAROL, IO_TIMEOUT};

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const ERRORS: &str = "urn:xmpp:errors";
/// A second host on the same Prosody, with SASL ANONYMOUS only.
const ANON_DOMAIN: &str = "anon.example.test";
const MUC_DOMAIN: &str = "conference.example.test";

/// Prosody with a MUC service and an anonymous host, besides [`DOMAIN`]. Both go
/// before the harness's `VirtualHost` lines, which start sections of their own.
fn prosody_with_muc_and_anonymous() -> ProsodyOptions {
    ProsodyOptions {
        extra_global_config: format!(
            "Component {MUC_DOMAIN:?} \"muc\"\n    muc_room_locking = false\n\
             VirtualHost {ANON_DOMAIN:?}\n    authentication = \"anonymous\"\n"
        ),
        ..ProsodyOptions::default()
    }
}

/// Prosody with xmppwall in front of it; these tests use the plaintext listener.
struct Setup {
    wall: Wall,
    /// The plaintext listener.
    addr: SocketAddr,
    // Dropped last: xmppwall goes first.
    _prosody: Prosody,
}

impl Setup {
    /// `limits` is appended to the config: `[gate]`, `[auth]`, `[limits.*]` tables.
    fn start(limits: &str) -> Setup {
        Setup::start_with(limits, ProsodyOptions::default())
    }

    fn start_with(limits: &str, options: ProsodyOptions) -> Setup {
        let prosody = Prosody::start_with(options);
        let wall = Wall::start(
            prosody.c2s,
            WallConfig {
                domains: vec![ANON_DOMAIN.to_owned()],
                tables: limits.to_owned(),
                ..WallConfig::default()
            },
        );
        Setup {
            addr: wall.plain,
            wall,
            _prosody: prosody,
        }
    }

    /// Logs in from 127.0.0.1, binds `resource` and sends initial presence.
    fn login(&self, account: Account, resource: &str) -> (TestClient, String) {
        self.login_from(loopback(1), account, resource)
    }

    fn login_from(&self, source: IpAddr, account: Account, resource: &str) -> (TestClient, String) {
        self.wall.login_plain_from(source, account, resource)
    }

    fn stats(&mut self) -> String {
        self.wall.stats()
    }
}

/// `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// The value of `name=` in a stats line, up to the next space.
fn stat<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=");
    let start = line
        .match_indices(&key)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || matches!(line.as_bytes()[i - 1], b' ' | b'='))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[start..].split(' ').next().unwrap_or_default()
}

/// `(tracked, cap)` from `addresses=N/CAP`.
fn tracked_addresses(line: &str) -> (usize, usize) {
    let value = stat(line, "addresses");
    let number = |s: &str| -> usize {
        s.parse()
            .unwrap_or_else(|e| panic!("addresses={value} in {line}: {e}"))
    };
    let (n, cap) = value
        .split_once('/')
        .unwrap_or_else(|| panic!("addresses={value} is not N/CAP in {line}"));
    (number(n), number(cap))
}

/// The count of one limit in `limit_hits=name:count,...` (0 when absent).
fn hits(line: &str, limit: &str) -> u64 {
    stat(line, "limit_hits")
        .split(',')
        .filter_map(|h| h.split_once(':'))
        .find(|(name, _)| *name == limit)
        .map_or(0, |(_, n)| {
            n.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{limit}:{n} in {line}: {e}"))
        })
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>{body}</body></message>")
}

fn id_is(e: &str, id: &str) -> bool {
    xml::root_attr(e, "id").as_deref() == Some(id)
}

/// Reads until the message `id` arrives and returns it.
fn wait_for_message(c: &mut TestClient, id: &str) -> String {
    c.read_element_matching(|e| xml::root_name(e) == "message" && id_is(e, id))
}

/// Reads until the stanza `id` arrives and returns it.
fn wait_for_id(c: &mut TestClient, id: &str) -> String {
    c.read_element_matching(|e| id_is(e, id))
}

/// Reads until stanza `until` arrives, asserting that no stanza `absent` came first.
fn wait_for_without(c: &mut TestClient, until: &str, absent: &str) -> String {
    c.read_element_matching(|e| {
        assert!(!id_is(e, absent), "{absent} was delivered: {e}");
        id_is(e, until)
    })
}

/// A stanza error as xmppwall writes it (RFC 6120 §8.3, XEP-0182 conditions).
fn stanza_error(
    open: &str,
    kind: &str,
    error_type: &str,
    condition: &str,
    text: &str,
    app: Option<&str>,
) -> String {
    let app = app
        .map(|a| format!("<{a} xmlns='{ERRORS}'/>"))
        .unwrap_or_default();
    format!(
        "{open}<error type='{error_type}'><{condition} xmlns='{STANZAS}'/>\
         <text xmlns='{STANZAS}' xml:lang='en'>{text}</text>{app}</error></{kind}>"
    )
}

/// `alice` writes to `bob` and `bob` reads it: traffic that must keep flowing.
fn delivered(from: &mut TestClient, to: &mut TestClient, to_jid: &str, id: &str) {
    from.send_raw(chat(to_jid, id, "still here"));
    let got = wait_for_message(to, id);
    assert_eq!(xml::text(&got, "body").as_deref(), Some("still here"));
}

// ---------------------------------------------------------------------------------
// The gate (XEP-0205 §2.1, §2.2): closed before any stream, no XMPP error.

#[test]
fn third_connection_from_one_address_is_closed_before_any_stream() {
    let s =
        Setup::start("[gate]\nmax_connections_per_address = 2\nconnection_attempts = \"off\"\n");
    let (mut alice, _) = s.login_from(loopback(2), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(2), BOB, "b");
    // xmppwall closes the third at once: EOF before a stream header.
    let mut third = TestClient::connect_from(loopback(2), s.addr);
    assert_eq!(third.read_until_closed(), "");
    assert!(stream_from(loopback(2), s.addr).is_none());
    // Another address is not limited, and the two open streams still work.
    let (mut carol, carol_jid) = s.login_from(loopback(3), CAROL, "c");
    delivered(&mut alice, &mut carol, &carol_jid, "a1");
    delivered(&mut carol, &mut bob, &bob_jid, "c1");
    // Closing one gives its place back (once xmppwall has seen the close).
    drop(alice);
    let again = wait_until(IO_TIMEOUT, "a free place for 127.0.0.2", || {
        stream_from(loopback(2), s.addr)
    });
    drop(again);
}

#[test]
fn a_reload_keeps_the_address_grouping_the_gate_counts_and_bans_by() {
    let mut s =
        Setup::start("[gate]\nmax_connections_per_address = 1\nconnection_attempts = \"off\"\n");
    let first = stream_from(loopback(60), s.addr).expect("the first connection");
    // A reload that groups IPv4 by /24: the open connection is counted under its
    // /32, and a /24 key would not see it.
    s.wall.reload(
        "[gate]\nmax_connections_per_address = 1\nconnection_attempts = \"off\"\nipv4_prefix = 24\n",
        "ipv4_prefix and ipv6_prefix changes take effect only after a restart",
    );
    assert!(
        stream_from(loopback(60), s.addr).is_none(),
        "a second connection from 127.0.0.60 got past the cap of one"
    );
    // And 127.0.0.61, in the same /24, is still a group of its own.
    let other = stream_from(loopback(61), s.addr).expect("127.0.0.61 is another group");
    drop((first, other));
}

#[test]
fn connection_attempts_beyond_the_period_are_closed_before_any_stream() {
    let s = Setup::start("[gate]\nconnection_attempts = \"3/1h\"\n");
    for _ in 0..3 {
        let open = stream_from(loopback(4), s.addr);
        assert!(open.is_some(), "attempt within the limit refused");
    }
    assert!(stream_from(loopback(4), s.addr).is_none());
    let mut fourth = TestClient::connect_from(loopback(4), s.addr);
    assert_eq!(fourth.read_until_closed(), "");
    // Other addresses log in and talk.
    let (mut alice, _) = s.login_from(loopback(5), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(6), BOB, "b");
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

#[test]
fn deny_listed_addresses_are_closed_before_any_stream() {
    let s = Setup::start("[gate]\ndeny = [\"127.0.0.7\", \"127.0.9.0/24\"]\n");
    for source in [loopback(7), IpAddr::from([127, 0, 9, 200])] {
        let mut c = TestClient::connect_from(source, s.addr);
        assert_eq!(c.read_until_closed(), "", "{source}");
    }
    let (mut alice, _) = s.login_from(loopback(8), ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

#[test]
fn allow_listed_addresses_are_exempt_from_the_gate_caps() {
    // 127.0.0.1 is allow-listed too: the harness's readiness probes come from it.
    let mut s = Setup::start(
        "[gate]\nmax_connections_per_address = 1\nconnection_attempts = \"1/1h\"\nallow = [\"127.0.0.10\", \"127.0.0.1\"]\n",
    );
    let held: Vec<_> = (0..4)
        .map(|_| stream_from(loopback(10), s.addr).expect("allow-listed address refused"))
        .collect();
    assert!(stream_from(loopback(11), s.addr).is_some());
    assert!(stream_from(loopback(11), s.addr).is_none());
    drop(held);
    let line = s.stats();
    assert_eq!(hits(&line, "connection_attempts"), 1, "{line}");
}

// ---------------------------------------------------------------------------------
// Authentication failures (XEP-0205 §2.3)

/// `YYYY-MM-DDTHH:MM:SSZ` of `t`, as xmppwall writes times.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Checks the ban's stream error (the one ending the failing stream, or the one a
/// later connection gets): it names the end of a 10-minute ban made between
/// `before` and `after` (wall clock), to the second.
fn assert_banned_for_ten_minutes(received: &str, before: SystemTime, after: SystemTime) {
    let open = format!(
        "<stream:error><policy-violation xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>"
    );
    let tail = "</text></stream:error></stream:stream>";
    let rest = received
        .strip_prefix(&open)
        .and_then(|r| {
            r.strip_prefix(
                "too many failed authentication attempts from this address; banned until ",
            )
            .or_else(|| r.strip_prefix("this address is banned until "))
        })
        .unwrap_or_else(|| panic!("not the ban error: {received:?}"));
    let until = rest
        .strip_suffix(tail)
        .unwrap_or_else(|| panic!("not the ban error: {received:?}"));
    assert_eq!(until.len(), "2000-01-01T00:00:00Z".len(), "{until}");
    // RFC 3339 times of one length compare as text.
    let ten_minutes = Duration::from_secs(600);
    assert!(
        rfc3339(before + ten_minutes).as_str() <= until
            && until <= rfc3339(after + ten_minutes).as_str(),
        "{until}"
    );
}

#[test]
fn repeated_authentication_failures_ban_the_address_with_policy_violation() {
    let s = Setup::start("[auth]\nmax_failures = \"2/1h\"\nban = \"10m\"\n");
    let mut c = TestClient::connect_from(loopback(12), s.addr);
    c.open_stream();
    let answer = c.try_auth_plain("alice", "wrong").unwrap_err();
    assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    // The second failure (the maximum, as ejabberd's mod_fail2ban counts) still
    // reaches the client, then the ban ends the stream.
    let before = SystemTime::now();
    let answer = c.try_auth_plain("alice", "wrong").unwrap_err();
    assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    let received = c.read_until_closed();
    assert_banned_for_ten_minutes(&received, before, SystemTime::now());

    // A new connection from that address gets a stream header and the same error.
    let mut again = TestClient::connect_from(loopback(12), s.addr);
    again.send_stream_header();
    let header = again.read_stream_header();
    assert!(header.contains("from='example.test'"), "{header}");
    let received = again.read_until_closed();
    assert_banned_for_ten_minutes(&received, before, SystemTime::now());

    // Everyone else logs in and talks, even with the right password from elsewhere.
    let (mut alice, _) = s.login_from(loopback(13), ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

// ---------------------------------------------------------------------------------
// Resources per account (XEP-0205 §2.4)

#[test]
fn binding_more_resources_than_allowed_gets_resource_limit_exceeded() {
    let s = Setup::start("[limits.registered]\nresources_per_account = 1\n");
    let (mut alice, alice_jid) = s.login(ALICE, "first");
    let (mut bob, bob_jid) = s.login(BOB, "b");

    let mut second = TestClient::connect(s.addr);
    second.open_stream();
    second.auth_plain(ALICE);
    let bind = "<iq type='set' id='bind-2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>second</resource></bind></iq>";
    second.send_raw(bind);
    assert_eq!(
        second.read_element(),
        stanza_error(
            "<iq type='error' id='bind-2'>",
            "iq",
            "cancel",
            "resource-constraint",
            "at most 1 resources may be bound to one account",
            Some("resource-limit-exceeded"),
        )
    );

    // The earlier session is untouched: it sends and receives.
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
    delivered(&mut bob, &mut alice, &alice_jid, "b1");

    // Once it ends, its resource is free for the refused connection.
    drop(alice);
    let result = wait_until(IO_TIMEOUT, "the resource to be given back", || {
        second.send_raw(bind);
        let answer = wait_for_id(&mut second, "bind-2");
        (xml::root_attr(&answer, "type").as_deref() == Some("result")).then_some(answer)
    });
    assert_eq!(
        xml::text(&result, "jid").as_deref(),
        Some("alice@example.test/second")
    );
}

// ---------------------------------------------------------------------------------
// Distinct recipients (XEP-0205 §2.6)

#[test]
fn a_new_recipient_over_the_limit_gets_too_many_stanzas_and_replies_pass() {
    let s = Setup::start("[limits.registered]\ndistinct_recipients = \"1/1h\"\n");
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let (mut carol, carol_jid) = s.login(CAROL, "c");

    delivered(&mut alice, &mut bob, &bob_jid, "m1");
    alice.send_raw(chat("carol@example.test", "m2", "spam"));
    assert_eq!(
        wait_for_id(&mut alice, "m2"),
        stanza_error(
            &format!("<message type='error' id='m2' from='carol@example.test' to='{alice_jid}'>"),
            "message",
            "wait",
            "unexpected-request",
            "too many distinct recipients: at most 1 per 1h",
            Some("too-many-stanzas"),
        )
    );
    // Bob's traffic to Carol flows, and Carol never got m2.
    bob.send_raw(chat(&carol_jid, "b1", "hi carol"));
    wait_for_without(&mut carol, "b1", "m2");

    // Once Carol writes to Alice, Alice may answer her.
    delivered(&mut carol, &mut alice, &alice_jid, "c1");
    delivered(&mut alice, &mut carol, &carol_jid, "m3");
}

// ---------------------------------------------------------------------------------
// Bandwidth (XEP-0205 §2.7)

#[test]
fn a_client_far_over_the_rate_is_slowed_down_and_nothing_is_dropped() {
    let mut s = Setup::start(
        "[limits.registered]\nbandwidth = { rate = 8000, burst = 4000 }\naccount_bandwidth = \"off\"\n",
    );
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let (mut carol, carol_jid) = s.login(CAROL, "c");

    // 60 messages of ~600 bytes at once: 9 times the burst.
    let body = "x".repeat(500);
    let flood: String = (0..60)
        .map(|i| chat(&bob_jid, &format!("f{i}"), &body))
        .collect();
    alice.send_raw(&flood);
    // Meanwhile Bob talks to Carol as usual.
    delivered(&mut bob, &mut carol, &carol_jid, "b1");
    for i in 0..60 {
        let got = wait_for_message(&mut bob, &format!("f{i}"));
        assert_eq!(xml::text(&got, "body").as_deref(), Some(body.as_str()));
    }
    let line = s.stats();
    assert!(hits(&line, "bandwidth_throttled") > 0, "{line}");
    assert_eq!(hits(&line, "bandwidth_closed"), 0, "{line}");
}

#[test]
fn sustained_traffic_over_the_rate_closes_with_policy_violation() {
    let s = Setup::start(
        "[limits.registered]\nbandwidth = { rate = 1000, burst = 2000 }\nbandwidth_close_after = \"2s\"\naccount_bandwidth = \"off\"\n",
    );
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let (mut carol, carol_jid) = s.login(CAROL, "c");

    // 10 kB at once: 8 s of debt at 1000 B/s, more than 2 s of throttling.
    let body = "x".repeat(900);
    let flood: String = (0..10)
        .map(|i| chat(&bob_jid, &format!("f{i}"), &body))
        .collect();
    alice.send_raw(&flood);
    let received = alice.read_until_closed();
    let error = format!(
        "<stream:error><policy-violation xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>\
         sustained traffic over the bandwidth limit</text></stream:error></stream:stream>"
    );
    assert!(received.ends_with(&error), "{received:?}");
    delivered(&mut bob, &mut carol, &carol_jid, "b1");
}

// ---------------------------------------------------------------------------------
// Payload types, roster and subscription requests (XEP-0205 §2.8)

#[test]
fn refused_payloads_are_bounced_to_the_sender_and_dropped_towards_the_client() {
    let s = Setup::start(
        r#"
[[limits.registered.payload]]
namespace = "jabber:iq:avatar"

[[limits.registered.payload]]
namespace = "urn:test:upload"
direction = "to-server"
error = "policy-violation"

[[limits.registered.payload]]
namespace = "urn:test:secret"
direction = "to-client"
"#,
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");

    alice.send_raw(format!(
        "<iq type='get' id='av1' to='{bob_jid}'><query xmlns='jabber:iq:avatar'/></iq>"
    ));
    assert_eq!(
        wait_for_id(&mut alice, "av1"),
        stanza_error(
            &format!("<iq type='error' id='av1' from='{bob_jid}' to='{alice_jid}'>"),
            "iq",
            "cancel",
            "not-allowed",
            "payloads of jabber:iq:avatar are not allowed here",
            None,
        )
    );
    alice.send_raw(format!(
        "<message to='{bob_jid}' id='up1'><x xmlns='urn:test:upload'>blob</x></message>"
    ));
    assert_eq!(
        wait_for_id(&mut alice, "up1"),
        stanza_error(
            &format!("<message type='error' id='up1' from='{bob_jid}' to='{alice_jid}'>"),
            "message",
            "cancel",
            "policy-violation",
            "payloads of urn:test:upload are not allowed here",
            None,
        )
    );
    // Neither reached Bob; the next message does.
    alice.send_raw(chat(&bob_jid, "a1", "plain"));
    bob.read_element_matching(|e| {
        assert!(!id_is(e, "av1") && !id_is(e, "up1"), "delivered: {e}");
        id_is(e, "a1")
    });

    // A to-client rule: Bob may send it (it passes to the server), Alice never sees it.
    bob.send_raw(format!(
        "<message to='{alice_jid}' id='s1'><x xmlns='urn:test:secret'/></message>"
    ));
    bob.send_raw(chat(&alice_jid, "b2", "after"));
    wait_for_without(&mut alice, "b2", "s1");
}

#[test]
fn iq_avatars_are_refused_by_default() {
    let s = Setup::start("");
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    alice.send_raw(format!(
        "<iq type='set' id='av1' to='{bob_jid}'><query xmlns='jabber:iq:avatar'><data>QUFBQQ==</data></query></iq>"
    ));
    // The error never echoes the payload.
    assert_eq!(
        wait_for_id(&mut alice, "av1"),
        stanza_error(
            &format!("<iq type='error' id='av1' from='{bob_jid}' to='{alice_jid}'>"),
            "iq",
            "cancel",
            "not-allowed",
            "payloads of jabber:iq:avatar are not allowed here",
            None,
        )
    );
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

#[test]
fn roster_requests_beyond_the_rate_get_policy_violation() {
    let s = Setup::start("[limits.registered]\nroster_requests = \"1/1h\"\n");
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let get = |id: &str| format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>");
    alice.send_raw(get("r1"));
    let roster = wait_for_id(&mut alice, "r1");
    assert_eq!(xml::root_attr(&roster, "type").as_deref(), Some("result"));
    alice.send_raw(get("r2"));
    assert_eq!(
        wait_for_id(&mut alice, "r2"),
        stanza_error(
            &format!("<iq type='error' id='r2' to='{alice_jid}'>"),
            "iq",
            "wait",
            "policy-violation",
            "too many roster requests: at most 1 per 1h",
            None,
        )
    );
    // Bob's connection has its own allowance, and Alice still talks.
    bob.send_raw(get("r3"));
    let roster = wait_for_id(&mut bob, "r3");
    assert_eq!(xml::root_attr(&roster, "type").as_deref(), Some("result"));
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

#[test]
fn subscription_requests_beyond_the_rate_get_policy_violation() {
    let s = Setup::start(
        "[limits.registered]\nsubscription_requests = \"1/1h\"\ndistinct_recipients = \"off\"\n",
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, _) = s.login(BOB, "b");
    let (mut carol, carol_jid) = s.login(CAROL, "c");

    alice.send_raw("<presence to='bob@example.test' type='subscribe' id='s1'/>");
    let request = bob.read_element_matching(|e| {
        xml::root_name(e) == "presence" && xml::root_attr(e, "type").as_deref() == Some("subscribe")
    });
    assert_eq!(
        xml::root_attr(&request, "from").as_deref(),
        Some("alice@example.test")
    );

    alice.send_raw("<presence to='carol@example.test' type='subscribe' id='s2'/>");
    assert_eq!(
        wait_for_id(&mut alice, "s2"),
        stanza_error(
            &format!("<presence type='error' id='s2' from='carol@example.test' to='{alice_jid}'>"),
            "presence",
            "wait",
            "policy-violation",
            "too many subscription requests: at most 1 per 1h",
            None,
        )
    );
    bob.send_raw(chat(&carol_jid, "b1", "hi"));
    wait_for_without(&mut carol, "b1", "s2");
    delivered(&mut carol, &mut alice, &alice_jid, "c1");
}

// ---------------------------------------------------------------------------------
// Amplification (XEP-0205 §2.9)

fn join(room: &str, nick: &str, id: &str) -> String {
    format!(
        "<presence to='{room}@{MUC_DOMAIN}/{nick}' id='{id}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
}

/// Reads until the room's presence for our own occupant (status 110) arrives.
fn wait_for_self_presence(c: &mut TestClient, room: &str) -> String {
    let from = format!("{room}@{MUC_DOMAIN}/");
    c.read_element_matching(|e| {
        xml::root_name(e) == "presence"
            && xml::root_attr(e, "from").is_some_and(|f| f.starts_with(&from))
            && e.contains("code='110'")
    })
}

#[test]
fn joining_more_rooms_than_allowed_gets_policy_violation_and_leaving_frees_a_place() {
    let s = Setup::start_with(
        "[limits.registered]\nrooms_joined = 1\n",
        prosody_with_muc_and_anonymous(),
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");

    alice.send_raw(join("room1", "alice", "j1"));
    wait_for_self_presence(&mut alice, "room1");
    alice.send_raw(join("room2", "alice", "j2"));
    assert_eq!(
        wait_for_id(&mut alice, "j2"),
        stanza_error(
            &format!(
                "<presence type='error' id='j2' from='room2@{MUC_DOMAIN}/alice' to='{alice_jid}'>"
            ),
            "presence",
            "cancel",
            "policy-violation",
            "at most 1 rooms may be joined at once",
            None,
        )
    );
    delivered(&mut alice, &mut bob, &bob_jid, "a1");

    alice.send_raw(format!(
        "<presence to='room1@{MUC_DOMAIN}/alice' type='unavailable' id='l1'/>"
    ));
    alice.send_raw(join("room2", "alice", "j3"));
    wait_for_self_presence(&mut alice, "room2");
}

#[test]
fn groupchat_messages_beyond_the_rate_of_one_room_get_policy_violation() {
    let s = Setup::start_with(
        "[limits.registered]\nmuc_messages = \"2/1h\"\n",
        prosody_with_muc_and_anonymous(),
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, _) = s.login(BOB, "b");
    alice.send_raw(join("room1", "alice", "j1"));
    wait_for_self_presence(&mut alice, "room1");
    bob.send_raw(join("room1", "bob", "j2"));
    wait_for_self_presence(&mut bob, "room1");

    let groupchat = |id: &str| {
        format!("<message to='room1@{MUC_DOMAIN}' type='groupchat' id='{id}'><body>{id}</body></message>")
    };
    for id in ["g1", "g2"] {
        alice.send_raw(groupchat(id));
        wait_for_message(&mut bob, id);
    }
    alice.send_raw(groupchat("g3"));
    assert_eq!(
        alice.read_element_matching(|e| id_is(e, "g3") && e.contains("type='error'")),
        stanza_error(
            &format!("<message type='error' id='g3' from='room1@{MUC_DOMAIN}' to='{alice_jid}'>"),
            "message",
            "wait",
            "policy-violation",
            "too many groupchat messages: at most 2 per 1h",
            None,
        )
    );
    // Bob's messages to the room still reach Alice, and g3 never reached Bob.
    bob.send_raw(groupchat("b1"));
    wait_for_message(&mut alice, "b1");
    wait_for_without(&mut bob, "b1", "g3");
}

#[test]
fn pubsub_publishes_beyond_the_rate_get_policy_violation() {
    let s = Setup::start("[limits.registered]\npubsub_publishes = \"2/1h\"\n");
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let publish = |id: &str| {
        format!(
            "<iq type='set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='urn:test:node'><item id='{id}'><entry xmlns='urn:test'/></item></publish></pubsub></iq>"
        )
    };
    for id in ["p1", "p2"] {
        alice.send_raw(publish(id));
        let answer = wait_for_id(&mut alice, id);
        assert_eq!(
            xml::root_attr(&answer, "type").as_deref(),
            Some("result"),
            "{answer}"
        );
    }
    alice.send_raw(publish("p3"));
    assert_eq!(
        wait_for_id(&mut alice, "p3"),
        stanza_error(
            &format!("<iq type='error' id='p3' to='{alice_jid}'>"),
            "iq",
            "wait",
            "policy-violation",
            "too many publish requests: at most 2 per 1h",
            None,
        )
    );
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
}

// ---------------------------------------------------------------------------------
// Tiers (XEP-0205 §3)

#[test]
fn anonymous_users_get_the_stricter_anonymous_limits() {
    let s = Setup::start_with(
        "[limits.registered]\ndistinct_recipients = \"5/1h\"\n\n\
         [limits.anonymous]\ndistinct_recipients = \"1/1h\"\n",
        prosody_with_muc_and_anonymous(),
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let (mut carol, carol_jid) = s.login(CAROL, "c");

    let mut anon = TestClient::connect(s.addr);
    anon.domain = ANON_DOMAIN.to_owned();
    let features = anon.open_stream();
    assert!(features.contains(">ANONYMOUS<"), "{features}");
    anon.send_raw("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>");
    let success = anon.read_element();
    assert_eq!(xml::root_name(&success), "success", "{success}");
    anon.open_stream();
    let anon_jid = anon.bind(None);
    assert!(anon_jid.contains(&format!("@{ANON_DOMAIN}/")), "{anon_jid}");

    delivered(&mut anon, &mut alice, &alice_jid, "n1");
    anon.send_raw(chat(&bob_jid, "n2", "spam"));
    assert_eq!(
        wait_for_id(&mut anon, "n2"),
        stanza_error(
            &format!("<message type='error' id='n2' from='{bob_jid}' to='{anon_jid}'>"),
            "message",
            "wait",
            "unexpected-request",
            "too many distinct recipients: at most 1 per 1h",
            Some("too-many-stanzas"),
        )
    );
    // Alice, registered, writes to two people.
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
    delivered(&mut alice, &mut carol, &carol_jid, "a2");
}

// ---------------------------------------------------------------------------------
// A flood at the gate from many loopback addresses

/// Connections opened and closed at once from `127.1.x.y`, each address twice, by a few
/// threads, until `stop` or `max` connections. Returns how many were made (the TCP
/// handshake completed; xmppwall may refuse the stream at once after it).
fn flood(addr: SocketAddr, max: usize, stop: Arc<AtomicBool>, threads: usize) -> usize {
    let made = Arc::new(AtomicUsize::new(0));
    let workers = threads;
    let threads: Vec<_> = (0..workers)
        .map(|t| {
            let (made, stop) = (made.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) && made.load(Ordering::Relaxed) < max {
                    let n = i / 2;
                    let source = IpAddr::from([127, 1, (n / 250) as u8, (n % 250 + 1) as u8]);
                    i += workers;
                    let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                    else {
                        continue;
                    };
                    if socket.bind(&SocketAddr::new(source, 0).into()).is_err() {
                        continue;
                    }
                    if socket
                        .connect_timeout(&addr.into(), Duration::from_secs(2))
                        .is_ok()
                    {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a flood thread panicked");
    }
    made.load(Ordering::Relaxed)
}

#[test]
fn a_flood_from_many_addresses_keeps_the_caps_and_the_table_bounded() {
    let mut s =
        Setup::start("[gate]\nmax_tracked_addresses = 64\nmax_connections_per_address = 2\n");
    let (mut bob, bob_jid) = s.login_from(loopback(20), BOB, "b");

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (addr, stop) = (s.addr, stop.clone());
        std::thread::spawn(move || flood(addr, 3000, stop, 6))
    };
    // While the flood runs: the table never holds more than its cap...
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..5 {
        let line = s.stats();
        let (tracked, cap) = tracked_addresses(&line);
        assert_eq!(cap, 64, "{line}");
        assert!(tracked <= 64, "{line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...and a legitimate client logs in and talks.
    let (mut alice, _) = s.login_from(loopback(21), ALICE, "a");
    delivered(&mut alice, &mut bob, &bob_jid, "a1");
    // The flood ends by itself (3000 connections) or at the deadline.
    while !flooder.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let made = flooder.join().unwrap();
    assert!(made > 64 * 2, "only {made} flood connections");

    let line = s.stats();
    let (tracked, _) = tracked_addresses(&line);
    assert!(tracked <= 64, "{line}");
    let evictions: u64 = stat(&line, "address_evictions").parse().unwrap();
    assert!(evictions > 0, "{line}\nafter {made} connections");

    // After the flood the per-address cap holds: a third simultaneous connection is
    // refused, and the legitimate clients still talk.
    let first = stream_from(loopback(22), s.addr).expect("first connection refused");
    let second = stream_from(loopback(22), s.addr).expect("second connection refused");
    assert!(stream_from(loopback(22), s.addr).is_none());
    drop((first, second));
    delivered(&mut bob, &mut alice, "alice@example.test/a", "b1");
}

#[test]
fn the_stats_line_reports_the_address_table_and_the_hits() {
    let mut s = Setup::start("[gate]\nmax_tracked_addresses = 32\ndeny = [\"127.0.0.24\"]\n");
    let _ = stream_from(loopback(24), s.addr);
    let open = stream_from(loopback(25), s.addr).expect("refused");
    let line = s.stats();
    // 127.0.0.25, and 127.0.0.1 (xmppwall's start-up probe) until it is idle.
    let (tracked, cap) = tracked_addresses(&line);
    assert!((1..=2).contains(&tracked), "{line}");
    assert_eq!(cap, 32, "{line}");
    assert_eq!(stat(&line, "address_evictions"), "0", "{line}");
    assert_eq!(hits(&line, "denied_address"), 1, "{line}");
    drop(open);
}
