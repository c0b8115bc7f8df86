//! The XEP-0205 limits without I/O: every call gets an injected `Instant`, so window
//! edges and refills are exact. Each test switches on the one limit it is about (over
//! [`no_limits`]) unless it is about the defaults or the tiers.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::address::CidrList;
use crate::limits::{AuthLimits, Bandwidth, GateLimits, PayloadRule};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidrs(entries: &[&str]) -> CidrList {
    CidrList::new(entries.iter().map(|e| CidrList::parse_entry(e).unwrap()))
}

fn per(count: u32, period: Duration) -> Option<PerPeriod> {
    Some(PerPeriod::new(count, period))
}

/// Every limit off, in every tier.
fn no_limits() -> LimitsConfig {
    let off = StanzaLimits::trusted_default();
    LimitsConfig {
        gate: GateLimits {
            max_connections_per_address: None,
            connection_attempts: None,
            ..GateLimits::default()
        },
        auth: AuthLimits {
            max_failures: None,
            ..AuthLimits::default()
        },
        registered: off.clone(),
        anonymous: off.clone(),
        trusted: off,
        trusted_jids: Vec::new(),
        max_tracked_accounts: 1000,
        peers: crate::limits::PeerLimits {
            stanzas_per_domain: None,
            distinct_recipients: None,
            subscription_requests: None,
            ..crate::limits::PeerLimits::default()
        },
    }
}

fn with_gate(f: impl FnOnce(&mut GateLimits)) -> Limiter {
    let mut config = no_limits();
    f(&mut config.gate);
    Limiter::new(config)
}

fn with_auth(f: impl FnOnce(&mut AuthLimits)) -> Limiter {
    let mut config = no_limits();
    f(&mut config.auth);
    Limiter::new(config)
}

/// Only what `f` sets applies to registered users.
fn with_registered(f: impl FnOnce(&mut StanzaLimits)) -> Limiter {
    let mut config = no_limits();
    f(&mut config.registered);
    Limiter::new(config)
}

fn admitted(l: &Limiter, addr: &str, now: Instant) -> ConnectionTicket {
    match l.admit(ip(addr), now) {
        GateDecision::Admit(ticket) => ticket,
        other => panic!("{addr} was not admitted: {other:?}"),
    }
}

fn refused(l: &Limiter, addr: &str, now: Instant) -> LimitKind {
    match l.admit(ip(addr), now) {
        GateDecision::Refuse(kind) => kind,
        other => panic!("{addr} was not refused: {other:?}"),
    }
}

/// A connection from 192.0.2.1, authenticated as `account` with `mechanism`.
fn authenticated(l: &Limiter, account: &str, mechanism: &str, now: Instant) -> ConnectionLimits {
    let ticket = admitted(l, "192.0.2.1", now);
    let mut conn = l.connection(&ticket);
    l.authenticated(&mut conn, mechanism, Some(account));
    conn
}

/// An authenticated connection (SASL PLAIN) with its resource bound.
fn bound(l: &Limiter, account: &str, now: Instant) -> ConnectionLimits {
    let mut conn = authenticated(l, account, "PLAIN", now);
    l.bind_requested(&mut conn, now)
        .unwrap_or_else(|e| panic!("bind refused: {e:?}"));
    conn
}

fn to_server(l: &Limiter, conn: &mut ConnectionLimits, xml: &str, now: Instant) -> Verdict {
    let stanza = Stanza::parse(xml.as_bytes()).unwrap_or_else(|| panic!("not a stanza: {xml}"));
    l.check_to_server(conn, &stanza, now)
}

fn to_client(l: &Limiter, conn: &ConnectionLimits, xml: &str, now: Instant) -> Verdict {
    let stanza = Stanza::parse(xml.as_bytes()).unwrap_or_else(|| panic!("not a stanza: {xml}"));
    l.check_to_client(conn, &stanza, now)
}

fn chat(to: &str) -> String {
    format!("<message to='{to}' type='chat' id='m'><body>hi</body></message>")
}

fn subscribe(to: &str) -> String {
    format!("<presence to='{to}' type='subscribe' id='s'/>")
}

fn join(room: &str) -> String {
    format!("<presence to='{room}/nick'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
}

fn groupchat(room: &str) -> String {
    format!("<message to='{room}' type='groupchat' id='g'><body>hi all</body></message>")
}

const ROSTER_GET: &str = "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>";
const PUBLISH: &str = "<iq type='set' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item/></publish></pubsub></iq>";

/// The error a verdict bounces with, if it is a bounce for `kind`.
fn bounce(verdict: Verdict, kind: LimitKind) -> StanzaError {
    match verdict {
        Verdict::Bounce(k, error) if k == kind => error,
        other => panic!("expected a bounce for {kind:?}, got {other:?}"),
    }
}

fn wait_policy_violation(text: &str) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Wait,
        condition: "policy-violation",
        app_condition: None,
        text: Some(text.into()),
    }
}

// ---------------------------------------------------------------------------------
// The gate (XEP-0205 §2.1, §2.2)

#[test]
fn fourth_connection_from_one_address_is_refused_at_the_gate() {
    let l = with_gate(|g| g.max_connections_per_address = Some(3));
    let t0 = Instant::now();
    let _held: Vec<_> = (0..3).map(|_| admitted(&l, "192.0.2.1", t0)).collect();
    assert_eq!(
        refused(&l, "192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
    assert_eq!(l.state.hits(LimitKind::ConnectionsPerAddress), 1);
    // Another address has its own count.
    let _other = admitted(&l, "192.0.2.2", t0);
}

#[test]
fn dropping_a_ticket_frees_its_slot_for_the_next_connection() {
    let l = with_gate(|g| g.max_connections_per_address = Some(2));
    let t0 = Instant::now();
    let first = admitted(&l, "192.0.2.1", t0);
    let _second = admitted(&l, "192.0.2.1", t0);
    assert_eq!(
        refused(&l, "192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
    drop(first);
    let _third = admitted(&l, "192.0.2.1", t0);
    assert_eq!(
        refused(&l, "192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
}

#[test]
fn connection_attempts_over_the_period_are_refused_until_a_token_refills() {
    // 5 per 10 s: a burst of 5, then one more every 2 s.
    let l = with_gate(|g| g.connection_attempts = per(5, secs(10)));
    let t0 = Instant::now();
    for _ in 0..5 {
        drop(admitted(&l, "192.0.2.1", t0));
    }
    assert_eq!(refused(&l, "192.0.2.1", t0), LimitKind::ConnectionAttempts);
    // One millisecond before the next token: still refused (and refusals cost nothing).
    assert_eq!(
        refused(&l, "192.0.2.1", t0 + ms(1999)),
        LimitKind::ConnectionAttempts
    );
    drop(admitted(&l, "192.0.2.1", t0 + secs(2)));
    assert_eq!(
        refused(&l, "192.0.2.1", t0 + secs(2)),
        LimitKind::ConnectionAttempts
    );
    // Another address was never limited.
    drop(admitted(&l, "192.0.2.2", t0 + secs(2)));
    // Idle for a whole period: the full burst again, and no more.
    let t1 = t0 + secs(12);
    for _ in 0..5 {
        drop(admitted(&l, "192.0.2.1", t1));
    }
    assert_eq!(refused(&l, "192.0.2.1", t1), LimitKind::ConnectionAttempts);
    assert_eq!(l.state.hits(LimitKind::ConnectionAttempts), 4);
}

#[test]
fn ipv6_addresses_in_one_64_share_the_connection_cap() {
    let l = with_gate(|g| g.max_connections_per_address = Some(2));
    let t0 = Instant::now();
    let _a = admitted(&l, "2001:db8:1:2::1", t0);
    let _b = admitted(&l, "2001:db8:1:2:ffff:ffff:ffff:ffff", t0);
    assert_eq!(
        refused(&l, "2001:db8:1:2:abcd::9", t0),
        LimitKind::ConnectionsPerAddress
    );
    // The neighbouring /64 is another host.
    let _c = admitted(&l, "2001:db8:1:3::1", t0);
}

#[test]
fn ipv6_prefix_128_counts_each_address_alone() {
    let l = with_gate(|g| {
        g.max_connections_per_address = Some(1);
        g.ipv6_prefix = 128;
    });
    let t0 = Instant::now();
    let _a = admitted(&l, "2001:db8:1:2::1", t0);
    let _b = admitted(&l, "2001:db8:1:2::2", t0);
    assert_eq!(
        refused(&l, "2001:db8:1:2::1", t0),
        LimitKind::ConnectionsPerAddress
    );
}

#[test]
fn ipv4_mapped_ipv6_addresses_count_as_their_ipv4_address() {
    let l = with_gate(|g| g.max_connections_per_address = Some(1));
    let t0 = Instant::now();
    let _a = admitted(&l, "192.0.2.1", t0);
    assert_eq!(
        refused(&l, "::ffff:192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
}

#[test]
fn allow_listed_addresses_are_exempt_from_the_gate_and_not_tracked() {
    let l = with_gate(|g| {
        g.max_connections_per_address = Some(1);
        g.connection_attempts = per(1, HOUR);
        g.allow = cidrs(&["10.0.0.0/8"]);
    });
    let t0 = Instant::now();
    let held: Vec<_> = (0..100).map(|_| admitted(&l, "10.1.2.3", t0)).collect();
    assert!(held.iter().all(|t| t.trusted_address));
    assert_eq!(l.state.snapshot().addresses, 0);
    // Outside the range the caps apply.
    let outside = admitted(&l, "11.0.0.1", t0);
    assert!(!outside.trusted_address);
    assert_eq!(refused(&l, "11.0.0.1", t0), LimitKind::ConnectionAttempts);
}

#[test]
fn deny_listed_addresses_are_refused_at_the_gate_and_counted() {
    let l = with_gate(|g| g.deny = cidrs(&["192.0.2.0/24", "2001:db8::/32"]));
    let t0 = Instant::now();
    assert_eq!(refused(&l, "192.0.2.200", t0), LimitKind::DeniedAddress);
    assert_eq!(
        refused(&l, "2001:db8:ffff::1", t0),
        LimitKind::DeniedAddress
    );
    assert_eq!(
        refused(&l, "::ffff:192.0.2.1", t0),
        LimitKind::DeniedAddress
    );
    let _ = admitted(&l, "192.0.3.1", t0);
    assert_eq!(l.state.hits(LimitKind::DeniedAddress), 3);
    // Refused addresses take no place in the table.
    assert_eq!(l.state.snapshot().addresses, 1);
}

#[test]
fn address_table_stays_within_its_cap_under_100k_random_addresses() {
    let mut config = no_limits();
    config.gate.max_tracked_addresses = 1000;
    // Every entry stays busy (its attempts bucket is not full), so nothing is idle
    // and every new address past the cap evicts one.
    config.gate.connection_attempts = per(30, MINUTE);
    config.gate.max_connections_per_address = Some(10);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let mut x: u32 = 0x9e37_79b9;
    let mut distinct = HashSet::new();
    for _ in 0..100_000 {
        // xorshift32
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let addr = IpAddr::V4(Ipv4Addr::from(x));
        distinct.insert(addr);
        match l.admit(addr, t0) {
            GateDecision::Admit(ticket) => drop(ticket),
            other => panic!("{addr} refused: {other:?}"),
        }
        assert!(l.state.snapshot().addresses <= 1000);
    }
    let snapshot = l.state.snapshot();
    assert_eq!(snapshot.addresses, 1000);
    assert_eq!(snapshot.address_cap, 1000);
    assert_eq!(snapshot.address_evictions, distinct.len() as u64 - 1000);
    assert!(
        snapshot.to_string().starts_with(&format!(
            "addresses=1000/1000 address_evictions={} ",
            snapshot.address_evictions
        )),
        "{snapshot}"
    );
}

#[test]
fn idle_entries_go_before_an_address_with_open_connections() {
    let mut config = no_limits();
    config.gate.max_tracked_addresses = 16;
    config.gate.max_connections_per_address = Some(2);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let _a = admitted(&l, "192.0.2.1", t0);
    let _b = admitted(&l, "192.0.2.1", t0);
    // Every other address comes and goes: its entry is idle as soon as it left.
    for i in 0..100 {
        drop(admitted(&l, &format!("198.51.100.{i}"), t0));
    }
    assert_eq!(
        refused(&l, "192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
}

#[test]
fn idle_entries_go_before_a_banned_address() {
    let mut config = no_limits();
    config.gate.max_tracked_addresses = 16;
    config.auth.max_failures = per(1, HOUR);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    l.auth_failed(ip("192.0.2.1"), t0);
    assert!(l.auth_failed(ip("192.0.2.1"), t0).banned_until.is_some());
    for i in 0..100 {
        drop(admitted(&l, &format!("198.51.100.{i}"), t0));
    }
    assert!(matches!(
        l.admit(ip("192.0.2.1"), t0 + secs(1)),
        GateDecision::Banned(..)
    ));
}

// ---------------------------------------------------------------------------------
// Authentication failures (XEP-0205 §2.3)

#[test]
fn the_maximum_failure_bans_the_address_and_says_until_when() {
    let l = with_auth(|a| {
        a.max_failures = per(3, HOUR);
        a.ban = secs(600);
    });
    let t0 = Instant::now();
    for _ in 0..2 {
        assert_eq!(l.auth_failed(ip("192.0.2.1"), t0).banned_until, None);
    }
    let before = SystemTime::now();
    let until = l
        .auth_failed(ip("192.0.2.1"), t0)
        .banned_until
        .expect("the third failure bans, as ejabberd's mod_fail2ban");
    let after = SystemTime::now();
    assert!(until >= before + secs(600) && until <= after + secs(600));
    assert_eq!(l.state.hits(LimitKind::AuthFailureBan), 1);
    // Another address is not banned.
    assert!(matches!(
        l.admit(ip("192.0.2.2"), t0),
        GateDecision::Admit(_)
    ));
    // A new connection from the banned address is let in only far enough to be told.
    let before = SystemTime::now();
    let decision = l.admit(ip("192.0.2.1"), t0 + secs(1));
    let after = SystemTime::now();
    match decision {
        GateDecision::Banned(ticket, told) => {
            assert_eq!(ticket.ip, ip("192.0.2.1"));
            // Converted from the injected clock: 599 s after the wall clock of the
            // call, whenever it ran.
            assert!(
                told >= before + secs(599) && told <= after + secs(599),
                "{told:?}"
            );
        }
        other => panic!("expected Banned, got {other:?}"),
    }
    assert_eq!(l.state.hits(LimitKind::BannedAddress), 1);
    let error = banned_error(until);
    assert_eq!(error.condition, StreamCondition::PolicyViolation);
    let text = error.text.unwrap();
    assert!(text.starts_with("this address is banned until "), "{text}");
    assert!(text.ends_with('Z'), "an RFC 3339 time in UTC: {text}");
}

#[test]
fn ban_ends_exactly_after_its_duration() {
    let l = with_auth(|a| {
        a.max_failures = per(1, HOUR);
        a.ban = secs(600);
    });
    let t0 = Instant::now();
    l.auth_failed(ip("192.0.2.1"), t0);
    assert!(l.auth_failed(ip("192.0.2.1"), t0).banned_until.is_some());
    assert!(matches!(
        l.admit(ip("192.0.2.1"), t0 + secs(600) - ms(1)),
        GateDecision::Banned(..)
    ));
    assert!(matches!(
        l.admit(ip("192.0.2.1"), t0 + secs(600)),
        GateDecision::Admit(_)
    ));
}

#[test]
fn failures_are_forgiven_at_the_configured_rate() {
    // 3 per hour: two pass at once, then one more every 20 minutes.
    let l = with_auth(|a| a.max_failures = per(3, HOUR));
    let t0 = Instant::now();
    for _ in 0..2 {
        assert_eq!(l.auth_failed(ip("192.0.2.1"), t0).banned_until, None);
    }
    let t1 = t0 + secs(1200);
    assert_eq!(l.auth_failed(ip("192.0.2.1"), t1).banned_until, None);
    assert!(l.auth_failed(ip("192.0.2.1"), t1).banned_until.is_some());
}

#[test]
fn ipv6_failures_of_one_64_ban_the_whole_64() {
    let l = with_auth(|a| a.max_failures = per(1, HOUR));
    let t0 = Instant::now();
    l.auth_failed(ip("2001:db8:1:2::1"), t0);
    assert!(l
        .auth_failed(ip("2001:db8:1:2::99"), t0)
        .banned_until
        .is_some());
    assert!(matches!(
        l.admit(ip("2001:db8:1:2:dead::beef"), t0),
        GateDecision::Banned(..)
    ));
    assert!(matches!(
        l.admit(ip("2001:db8:1:3::1"), t0),
        GateDecision::Admit(_)
    ));
}

#[test]
fn every_failure_is_tarpitted_by_the_configured_delay() {
    let l = with_auth(|a| {
        a.max_failures = per(20, HOUR);
        a.tarpit = ms(1500);
    });
    let t0 = Instant::now();
    assert_eq!(l.auth_failed(ip("192.0.2.1"), t0).tarpit, ms(1500));
    assert_eq!(
        with_auth(|_| {}).auth_failed(ip("192.0.2.1"), t0).tarpit,
        Duration::ZERO
    );
}

#[test]
fn allow_listed_addresses_are_never_banned() {
    let mut config = no_limits();
    config.auth.max_failures = per(1, HOUR);
    config.gate.allow = cidrs(&["10.0.0.0/8"]);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    for _ in 0..50 {
        assert_eq!(l.auth_failed(ip("10.0.0.1"), t0).banned_until, None);
    }
    assert!(matches!(
        l.admit(ip("10.0.0.1"), t0),
        GateDecision::Admit(_)
    ));
}

// ---------------------------------------------------------------------------------
// Resources per account (XEP-0205 §2.4)

#[test]
fn bind_over_the_resource_limit_is_refused_with_resource_limit_exceeded() {
    let l = with_registered(|r| r.resources_per_account = Some(2));
    let t0 = Instant::now();
    let _a = bound(&l, ALICE, t0);
    let _b = bound(&l, ALICE, t0);
    let mut c = authenticated(&l, ALICE, "PLAIN", t0);
    assert_eq!(
        l.bind_requested(&mut c, t0),
        Err(StanzaError {
            error_type: ErrorType::Cancel,
            condition: "resource-constraint",
            app_condition: Some("resource-limit-exceeded"),
            text: Some("at most 2 resources may be bound to one account".into()),
        })
    );
    assert_eq!(l.state.hits(LimitKind::Resources), 1);
    // Bob's account is counted apart.
    let _bob = bound(&l, BOB, t0);
}

#[test]
fn closing_a_connection_gives_its_resource_back() {
    let l = with_registered(|r| r.resources_per_account = Some(1));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let mut b = authenticated(&l, ALICE, "PLAIN", t0);
    assert!(l.bind_requested(&mut b, t0).is_err());
    l.connection_closed(&mut a);
    // Closing twice gives back only once.
    l.connection_closed(&mut a);
    assert_eq!(l.bind_requested(&mut b, t0 + secs(1)), Ok(()));
    let mut c = authenticated(&l, ALICE, "PLAIN", t0);
    assert!(l.bind_requested(&mut c, t0 + secs(1)).is_err());
}

#[test]
fn a_bind_the_server_refused_gives_its_slot_back() {
    let l = with_registered(|r| r.resources_per_account = Some(1));
    let t0 = Instant::now();
    let mut a = authenticated(&l, ALICE, "PLAIN", t0);
    l.bind_requested(&mut a, t0).unwrap();
    l.bind_refused(&mut a);
    let _b = bound(&l, ALICE, t0);
    // The refused connection may try again, and is refused by the limit now.
    assert!(l.bind_requested(&mut a, t0).is_err());
}

#[test]
fn a_second_bind_request_on_one_connection_holds_one_slot() {
    let l = with_registered(|r| r.resources_per_account = Some(2));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(l.bind_requested(&mut a, t0), Ok(()));
    assert_eq!(l.bind_requested(&mut a, t0), Ok(()));
    let _b = bound(&l, ALICE, t0);
}

#[test]
fn trusted_accounts_bind_without_limit() {
    let mut config = no_limits();
    config.registered.resources_per_account = Some(1);
    config.trusted_jids = vec![ALICE.into()];
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let held: Vec<_> = (0..20).map(|_| bound(&l, ALICE, t0)).collect();
    assert!(held.iter().all(|c| c.class == UserClass::Trusted));
}

#[test]
fn anonymous_users_may_bind_one_resource_by_default() {
    let l = Limiter::new(LimitsConfig::default());
    let t0 = Instant::now();
    let mut a = authenticated(&l, "x1@anon.example.test", "ANONYMOUS", t0);
    assert_eq!(l.bind_requested(&mut a, t0), Ok(()));
    let mut b = authenticated(&l, "x1@anon.example.test", "ANONYMOUS", t0);
    assert_eq!(
        l.bind_requested(&mut b, t0).unwrap_err().text.as_deref(),
        Some("at most 1 resources may be bound to one account")
    );
}

// ---------------------------------------------------------------------------------
// Distinct recipients (XEP-0205 §2.6)

fn recipients_limiter(count: u32) -> Limiter {
    with_registered(|r| r.distinct_recipients = per(count, MINUTE))
}

#[test]
fn third_distinct_recipient_is_refused_with_too_many_stanzas() {
    let l = recipients_limiter(2);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, &chat("b@x.test"), t0), Verdict::Pass);
    assert_eq!(
        to_server(&l, &mut a, &chat("c@x.test/r"), t0),
        Verdict::Pass
    );
    let error = bounce(
        to_server(&l, &mut a, &chat("d@x.test"), t0),
        LimitKind::DistinctRecipients,
    );
    assert_eq!(
        error,
        StanzaError {
            error_type: ErrorType::Wait,
            condition: "unexpected-request",
            app_condition: Some("too-many-stanzas"),
            text: Some("too many distinct recipients: at most 2 per 1m".into()),
        }
    );
    assert_eq!(l.state.hits(LimitKind::DistinctRecipients), 1);
    // Counted per account: Bob has his own.
    let mut b = bound(&l, BOB, t0);
    assert_eq!(to_server(&l, &mut b, &chat("d@x.test"), t0), Verdict::Pass);
}

#[test]
fn the_same_recipient_twice_counts_once() {
    let l = recipients_limiter(2);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    for to in ["b@x.test", "b@x.test/phone", "B@X.test/laptop", "c@x.test"] {
        assert_eq!(to_server(&l, &mut a, &chat(to), t0), Verdict::Pass, "{to}");
    }
    assert!(matches!(
        to_server(&l, &mut a, &chat("d@x.test"), t0),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

#[test]
fn a_recipient_stops_counting_a_period_after_the_last_stanza_to_it() {
    let l = recipients_limiter(2);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &chat("b@x.test"), t0);
    to_server(&l, &mut a, &chat("c@x.test"), t0 + secs(30));
    assert!(matches!(
        to_server(&l, &mut a, &chat("d@x.test"), t0 + MINUTE - ms(1)),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
    // b's window is over, c's is not.
    assert_eq!(
        to_server(&l, &mut a, &chat("d@x.test"), t0 + MINUTE),
        Verdict::Pass
    );
    assert!(matches!(
        to_server(&l, &mut a, &chat("e@x.test"), t0 + MINUTE),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

#[test]
fn replies_to_recent_correspondents_are_not_counted() {
    let l = recipients_limiter(1);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, &chat("b@x.test"), t0), Verdict::Pass);
    assert!(matches!(
        to_server(&l, &mut a, &chat("c@x.test"), t0),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
    // c writes to Alice (the server relays it to her connection)...
    let from_c = "<message from='c@x.test/home' to='alice@example.test/r' type='chat' id='c1'><body>hello</body></message>";
    assert_eq!(to_client(&l, &a, from_c, t0 + secs(1)), Verdict::Pass);
    // ...so Alice may answer, again and again, and c takes no recipient slot.
    for _ in 0..3 {
        assert_eq!(
            to_server(&l, &mut a, &chat("c@x.test/home"), t0 + secs(2)),
            Verdict::Pass
        );
    }
    assert!(matches!(
        to_server(&l, &mut a, &chat("d@x.test"), t0 + secs(2)),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

#[test]
fn errors_groupchat_and_headlines_from_others_do_not_make_correspondents() {
    let l = recipients_limiter(1);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &chat("b@x.test"), t0);
    for ty in ["error", "groupchat", "headline"] {
        let from_c = format!("<message from='c@x.test/r' to='alice@example.test/r' type='{ty}'/>");
        to_client(&l, &a, &from_c, t0);
    }
    assert!(matches!(
        to_server(&l, &mut a, &chat("c@x.test"), t0),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

#[test]
fn correspondents_older_than_the_period_count_again() {
    let l = recipients_limiter(1);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let from_c = "<message from='c@x.test/home' to='alice@example.test/r' type='chat'/>";
    to_client(&l, &a, from_c, t0);
    let later = t0 + MINUTE;
    assert_eq!(
        to_server(&l, &mut a, &chat("b@x.test"), later),
        Verdict::Pass
    );
    assert!(matches!(
        to_server(&l, &mut a, &chat("c@x.test"), later),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

#[test]
fn own_bare_jid_and_domain_jids_are_not_recipients() {
    let l = recipients_limiter(1);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    for to in [
        "alice@example.test",
        "alice@example.test/other",
        "Alice@Example.test/x",
        "example.test",
        "conference.example.test",
        "pubsub.example.test/resource",
    ] {
        assert_eq!(to_server(&l, &mut a, &chat(to), t0), Verdict::Pass, "{to}");
    }
    // The one slot is still free.
    assert_eq!(to_server(&l, &mut a, &chat("b@x.test"), t0), Verdict::Pass);
}

#[test]
fn subscription_requests_count_as_distinct_recipients() {
    let l = recipients_limiter(2);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(
        to_server(&l, &mut a, &subscribe("b@x.test"), t0),
        Verdict::Pass
    );
    assert_eq!(to_server(&l, &mut a, &chat("c@x.test"), t0), Verdict::Pass);
    let error = bounce(
        to_server(&l, &mut a, &subscribe("d@x.test"), t0),
        LimitKind::DistinctRecipients,
    );
    assert_eq!(error.app_condition, Some("too-many-stanzas"));
    // Answers to subscriptions are not requests to a new recipient.
    let subscribed = "<presence to='e@x.test' type='subscribed'/>";
    assert_eq!(to_server(&l, &mut a, subscribed, t0), Verdict::Pass);
}

#[test]
fn error_stanzas_from_the_client_are_never_limited() {
    let l = recipients_limiter(1);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &chat("b@x.test"), t0);
    let error = "<message to='c@x.test' type='error' id='e'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>";
    assert_eq!(to_server(&l, &mut a, error, t0), Verdict::Pass);
}

#[test]
fn raising_the_recipient_limit_on_reload_still_caps_distinct_recipients() {
    let l = recipients_limiter(2);
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &chat("b@x.test"), t0);
    to_server(&l, &mut a, &chat("c@x.test"), t0);
    let mut config = (*l.config).clone();
    config.registered.distinct_recipients = per(4, MINUTE);
    let reloaded = l.with_config(config);
    let passed = (0..10)
        .filter(|i| {
            to_server(&reloaded, &mut a, &chat(&format!("n{i}@x.test")), t0) == Verdict::Pass
        })
        .count();
    // b and c still count: two more of the ten may pass.
    assert_eq!(passed, 2);
}

#[test]
fn reconnecting_does_not_reset_the_distinct_recipient_window() {
    let l = with_registered(|r| {
        r.resources_per_account = Some(10);
        r.distinct_recipients = per(2, HOUR);
    });
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &chat("b@x.test"), t0);
    to_server(&l, &mut a, &chat("c@x.test"), t0);
    assert!(matches!(
        to_server(&l, &mut a, &chat("d@x.test"), t0),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
    l.connection_closed(&mut a);
    let mut again = bound(&l, ALICE, t0 + secs(1));
    assert!(matches!(
        to_server(&l, &mut again, &chat("d@x.test"), t0 + secs(1)),
        Verdict::Bounce(LimitKind::DistinctRecipients, _)
    ));
}

// ---------------------------------------------------------------------------------
// Bandwidth (XEP-0205 §2.7)

fn bandwidth_limiter(close_after: Duration) -> Limiter {
    with_registered(|r| {
        r.bandwidth = Some(Bandwidth {
            bytes_per_second: 1000,
            burst_bytes: 2000,
        });
        r.bandwidth_close_after = close_after;
    })
}

#[test]
fn reads_within_the_burst_continue() {
    let l = bandwidth_limiter(secs(60));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(l.bytes_read(&mut a, 1500, t0), Throttle::Continue);
    assert_eq!(l.bytes_read(&mut a, 500, t0), Throttle::Continue);
    // Refilled at 1000 B/s.
    assert_eq!(l.bytes_read(&mut a, 1000, t0 + secs(1)), Throttle::Continue);
    assert_eq!(l.state.hits(LimitKind::Bandwidth), 0);
}

#[test]
fn reads_over_the_burst_pause_for_the_excess_at_the_rate() {
    let l = bandwidth_limiter(secs(60));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(l.bytes_read(&mut a, 2000, t0), Throttle::Continue);
    assert_eq!(l.bytes_read(&mut a, 500, t0), Throttle::Pause(ms(500)));
    // After the pause, the next 250 bytes are paid for in 250 ms.
    assert_eq!(
        l.bytes_read(&mut a, 250, t0 + ms(500)),
        Throttle::Pause(ms(250))
    );
    assert_eq!(l.state.hits(LimitKind::Bandwidth), 2);
}

#[test]
fn throttling_longer_than_close_after_closes_with_policy_violation() {
    let l = bandwidth_limiter(secs(2));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(l.bytes_read(&mut a, 2000, t0), Throttle::Continue);
    let mut now = t0;
    // Four pauses of 500 ms: 2 s of throttling, not more than close_after.
    for _ in 0..4 {
        assert_eq!(l.bytes_read(&mut a, 500, now), Throttle::Pause(ms(500)));
        now += ms(500);
    }
    assert_eq!(
        l.bytes_read(&mut a, 500, now),
        Throttle::Close(
            StreamError::new(StreamCondition::PolicyViolation)
                .with_text("sustained traffic over the bandwidth limit")
        )
    );
    assert_eq!(l.state.hits(LimitKind::BandwidthClose), 1);
}

#[test]
fn a_read_within_the_rate_ends_the_throttled_run() {
    let l = bandwidth_limiter(secs(2));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    l.bytes_read(&mut a, 2000, t0);
    let mut now = t0;
    for _ in 0..3 {
        assert_eq!(l.bytes_read(&mut a, 500, now), Throttle::Pause(ms(500)));
        now += ms(500);
    }
    // The client waited for the bucket to refill: the run of throttling is over.
    now += secs(2);
    assert_eq!(l.bytes_read(&mut a, 250, now), Throttle::Continue);
    assert_eq!(l.bytes_read(&mut a, 1750, now), Throttle::Continue);
    for _ in 0..4 {
        assert_eq!(l.bytes_read(&mut a, 500, now), Throttle::Pause(ms(500)));
        now += ms(500);
    }
}

#[test]
fn the_account_bucket_is_shared_by_the_accounts_connections() {
    let l = with_registered(|r| {
        r.account_bandwidth = Some(Bandwidth {
            bytes_per_second: 1000,
            burst_bytes: 2000,
        })
    });
    let t0 = Instant::now();
    let mut a1 = bound(&l, ALICE, t0);
    let mut a2 = bound(&l, ALICE, t0);
    let mut b = bound(&l, BOB, t0);
    assert_eq!(l.bytes_read(&mut a1, 2000, t0), Throttle::Continue);
    assert_eq!(l.bytes_read(&mut a2, 500, t0), Throttle::Pause(ms(500)));
    assert_eq!(l.bytes_read(&mut b, 2000, t0), Throttle::Continue);
}

#[test]
fn before_authentication_only_the_connection_bucket_applies() {
    let l = with_registered(|r| {
        r.bandwidth = Some(Bandwidth {
            bytes_per_second: 1000,
            burst_bytes: 2000,
        });
        r.account_bandwidth = Some(Bandwidth {
            bytes_per_second: 10,
            burst_bytes: 10,
        });
    });
    let t0 = Instant::now();
    let ticket = admitted(&l, "192.0.2.1", t0);
    let mut conn = l.connection(&ticket);
    assert_eq!(l.bytes_read(&mut conn, 2000, t0), Throttle::Continue);
    assert_eq!(l.bytes_read(&mut conn, 100, t0), Throttle::Pause(ms(100)));
}

#[test]
fn a_stanza_of_the_default_maximum_size_is_slowed_down_not_closed() {
    let l = Limiter::new(LimitsConfig::default());
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    // 256 KiB (the proxy's default stanza_bytes, Prosody's and ejabberd's limit)
    // read 64 KiB at a time, each read after the pause the previous one asked for.
    let mut now = t0;
    let mut pauses = 0;
    for _ in 0..4 {
        match l.bytes_read(&mut a, 64 * 1024, now) {
            Throttle::Continue => {}
            Throttle::Pause(p) => {
                pauses += 1;
                now += p;
            }
            Throttle::Close(e) => panic!("closed: {e:?}"),
        }
    }
    assert!(
        pauses > 0,
        "256 KiB at once is over the bandwidth: it must be slowed"
    );
}

// ---------------------------------------------------------------------------------
// Payload types (XEP-0205 §2.8)

fn payload_limiter() -> Limiter {
    with_registered(|r| {
        r.payloads = vec![
            PayloadRule {
                namespace: "jabber:iq:avatar".into(),
                direction: PayloadDirection::Both,
                error: PayloadError::NotAllowed,
            },
            PayloadRule {
                namespace: "urn:test:up".into(),
                direction: PayloadDirection::ToServer,
                error: PayloadError::PolicyViolation,
            },
            PayloadRule {
                namespace: "urn:test:down".into(),
                direction: PayloadDirection::ToClient,
                error: PayloadError::NotAllowed,
            },
        ]
    })
}

#[test]
fn a_refused_namespace_to_the_server_is_bounced_with_not_allowed() {
    let l = payload_limiter();
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let avatar =
        "<iq type='get' id='a1' to='bob@example.test/r'><query xmlns='jabber:iq:avatar'/></iq>";
    let error = bounce(to_server(&l, &mut a, avatar, t0), LimitKind::Payload);
    assert_eq!(
        error,
        StanzaError {
            error_type: ErrorType::Cancel,
            condition: "not-allowed",
            app_condition: None,
            text: Some("payloads of jabber:iq:avatar are not allowed here".into()),
        }
    );
    // In any stanza, beside other payloads.
    let message = "<message to='bob@example.test'><body>x</body><x xmlns='urn:test:up'/></message>";
    assert_eq!(
        bounce(to_server(&l, &mut a, message, t0), LimitKind::Payload),
        StanzaError {
            error_type: ErrorType::Cancel,
            condition: "policy-violation",
            app_condition: None,
            text: Some("payloads of urn:test:up are not allowed here".into()),
        }
    );
    assert_eq!(l.state.hits(LimitKind::Payload), 2);
}

#[test]
fn refused_namespaces_to_the_client_are_dropped_silently() {
    let l = payload_limiter();
    let t0 = Instant::now();
    let a = bound(&l, ALICE, t0);
    let down = "<message from='bob@example.test/r' to='alice@example.test/r'><x xmlns='urn:test:down'/></message>";
    assert_eq!(
        to_client(&l, &a, down, t0),
        Verdict::Drop(LimitKind::Payload)
    );
    let avatar = "<iq type='result' id='a1' from='bob@example.test/r'><query xmlns='jabber:iq:avatar'/></iq>";
    assert_eq!(
        to_client(&l, &a, avatar, t0),
        Verdict::Drop(LimitKind::Payload)
    );
}

#[test]
fn a_rule_for_one_direction_lets_the_other_pass() {
    let l = payload_limiter();
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let down = "<message to='bob@example.test'><x xmlns='urn:test:down'/></message>";
    assert_eq!(to_server(&l, &mut a, down, t0), Verdict::Pass);
    let up = "<message from='bob@example.test/r'><x xmlns='urn:test:up'/></message>";
    assert_eq!(to_client(&l, &a, up, t0), Verdict::Pass);
    // Only first-level payloads are namespaces of the stanza.
    let nested = "<message to='bob@example.test'><x xmlns='urn:test:wrap'><query xmlns='jabber:iq:avatar'/></x></message>";
    assert_eq!(to_server(&l, &mut a, nested, t0), Verdict::Pass);
}

#[test]
fn registered_users_may_not_send_iq_avatars_by_default() {
    let l = Limiter::new(LimitsConfig::default());
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let avatar =
        "<iq type='set' id='a1'><query xmlns='jabber:iq:avatar'><data>AAAA</data></query></iq>";
    assert_eq!(
        bounce(to_server(&l, &mut a, avatar, t0), LimitKind::Payload).condition,
        "not-allowed"
    );
}

#[test]
fn anonymous_users_may_not_register_or_open_ibb_by_default() {
    let l = Limiter::new(LimitsConfig::default());
    let t0 = Instant::now();
    let mut a = authenticated(&l, "x@anon.example.test", "ANONYMOUS", t0);
    for ns in ["jabber:iq:register", "http://jabber.org/protocol/ibb"] {
        let iq = format!("<iq type='set' id='q'><query xmlns='{ns}'/></iq>");
        assert!(
            matches!(
                to_server(&l, &mut a, &iq, t0),
                Verdict::Bounce(LimitKind::Payload, _)
            ),
            "{ns}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Roster and subscription requests (XEP-0205 §2.8)

#[test]
fn roster_gets_beyond_the_rate_are_refused_per_connection() {
    let l = with_registered(|r| r.roster_requests = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, ROSTER_GET, t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, ROSTER_GET, t0), Verdict::Pass);
    assert_eq!(
        bounce(
            to_server(&l, &mut a, ROSTER_GET, t0),
            LimitKind::RosterRequests
        ),
        wait_policy_violation("too many roster requests: at most 2 per 1m")
    );
    // Roster sets are not requests for the roster.
    let set =
        "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='b@x.test'/></query></iq>";
    assert_eq!(to_server(&l, &mut a, set, t0), Verdict::Pass);
    // Another connection of the account has its own allowance.
    let mut a2 = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a2, ROSTER_GET, t0), Verdict::Pass);
    // One more every 30 s.
    assert!(matches!(
        to_server(&l, &mut a, ROSTER_GET, t0 + secs(30) - ms(1)),
        Verdict::Bounce(..)
    ));
    assert_eq!(
        to_server(&l, &mut a, ROSTER_GET, t0 + secs(30)),
        Verdict::Pass
    );
}

#[test]
fn subscription_requests_beyond_the_rate_are_refused_per_account() {
    let l = with_registered(|r| r.subscription_requests = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let mut a2 = bound(&l, ALICE, t0);
    assert_eq!(
        to_server(&l, &mut a, &subscribe("b@x.test"), t0),
        Verdict::Pass
    );
    assert_eq!(
        to_server(&l, &mut a2, &subscribe("c@x.test"), t0),
        Verdict::Pass
    );
    assert_eq!(
        bounce(
            to_server(&l, &mut a, &subscribe("d@x.test"), t0),
            LimitKind::SubscriptionRequests
        ),
        wait_policy_violation("too many subscription requests: at most 2 per 1m")
    );
    // Answers and cancellations are not requests.
    for ty in ["subscribed", "unsubscribe", "unsubscribed"] {
        let p = format!("<presence to='e@x.test' type='{ty}'/>");
        assert_eq!(to_server(&l, &mut a, &p, t0), Verdict::Pass, "{ty}");
    }
    assert_eq!(
        to_server(&l, &mut a, &subscribe("d@x.test"), t0 + secs(30)),
        Verdict::Pass
    );
    // Bob's allowance is his own.
    let mut b = bound(&l, BOB, t0);
    assert_eq!(
        to_server(&l, &mut b, &subscribe("d@x.test"), t0),
        Verdict::Pass
    );
}

// ---------------------------------------------------------------------------------
// Amplification (XEP-0205 §2.9)

#[test]
fn presence_broadcasts_beyond_the_rate_are_dropped_silently() {
    let l = with_registered(|r| r.presence_broadcasts = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, "<presence/>", t0), Verdict::Pass);
    assert_eq!(
        to_server(&l, &mut a, "<presence><show>away</show></presence>", t0),
        Verdict::Pass
    );
    assert_eq!(
        to_server(&l, &mut a, "<presence type='unavailable'/>", t0),
        Verdict::Drop(LimitKind::PresenceBroadcasts)
    );
    // Directed presence is not broadcast.
    assert_eq!(
        to_server(&l, &mut a, "<presence to='b@x.test/r'/>", t0),
        Verdict::Pass
    );
    assert_eq!(
        to_server(&l, &mut a, "<presence/>", t0 + secs(30)),
        Verdict::Pass
    );
    assert_eq!(l.state.hits(LimitKind::PresenceBroadcasts), 1);
}

const ROOM1: &str = "room1@conference.example.test";
const ROOM2: &str = "room2@conference.example.test";
const ROOM3: &str = "room3@conference.example.test";

#[test]
fn joining_more_rooms_than_allowed_is_refused_and_leaving_frees_a_place() {
    let l = with_registered(|r| r.rooms_joined = Some(2));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, &join(ROOM1), t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, &join(ROOM2), t0), Verdict::Pass);
    assert_eq!(
        bounce(
            to_server(&l, &mut a, &join(ROOM3), t0),
            LimitKind::RoomsJoined
        ),
        StanzaError {
            error_type: ErrorType::Cancel,
            condition: "policy-violation",
            app_condition: None,
            text: Some("at most 2 rooms may be joined at once".into()),
        }
    );
    // Presence to a joined room (rejoin, status) is no new room.
    assert_eq!(to_server(&l, &mut a, &join(ROOM1), t0), Verdict::Pass);
    let leave = format!("<presence to='{ROOM1}/nick' type='unavailable'/>");
    assert_eq!(to_server(&l, &mut a, &leave, t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, &join(ROOM3), t0), Verdict::Pass);
}

#[test]
fn rooms_joined_through_a_closed_connection_are_given_back() {
    let l = with_registered(|r| r.rooms_joined = Some(2));
    let t0 = Instant::now();
    let mut a1 = bound(&l, ALICE, t0);
    let mut a2 = bound(&l, ALICE, t0);
    to_server(&l, &mut a1, &join(ROOM1), t0);
    to_server(&l, &mut a1, &join(ROOM2), t0);
    // The server makes a1's occupant leave both rooms when a1's stream ends.
    l.connection_closed(&mut a1);
    assert_eq!(to_server(&l, &mut a2, &join(ROOM3), t0), Verdict::Pass);
}

#[test]
fn groupchat_messages_are_limited_per_room() {
    let l = with_registered(|r| r.muc_messages = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    to_server(&l, &mut a, &join(ROOM1), t0);
    to_server(&l, &mut a, &join(ROOM2), t0);
    assert_eq!(to_server(&l, &mut a, &groupchat(ROOM1), t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, &groupchat(ROOM1), t0), Verdict::Pass);
    assert_eq!(
        bounce(
            to_server(&l, &mut a, &groupchat(ROOM1), t0),
            LimitKind::MucMessages
        ),
        wait_policy_violation("too many groupchat messages: at most 2 per 1m")
    );
    // The other room has its own allowance.
    assert_eq!(to_server(&l, &mut a, &groupchat(ROOM2), t0), Verdict::Pass);
    // One more every 30 s.
    assert_eq!(
        to_server(&l, &mut a, &groupchat(ROOM1), t0 + secs(30)),
        Verdict::Pass
    );
    // Groupchat to a room not joined through xmppwall is the room's business.
    for _ in 0..5 {
        assert_eq!(to_server(&l, &mut a, &groupchat(ROOM3), t0), Verdict::Pass);
    }
}

#[test]
fn presence_to_a_room_is_limited_per_room_counting_the_join() {
    let l = with_registered(|r| r.muc_presences = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let away = |room: &str| format!("<presence to='{room}/nick'><show>away</show></presence>");
    assert_eq!(to_server(&l, &mut a, &join(ROOM1), t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, &away(ROOM1), t0), Verdict::Pass);
    assert_eq!(
        bounce(
            to_server(&l, &mut a, &away(ROOM1), t0),
            LimitKind::MucPresences
        ),
        wait_policy_violation("too many presence updates to a room: at most 2 per 1m")
    );
    assert_eq!(to_server(&l, &mut a, &join(ROOM2), t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, &away(ROOM2), t0), Verdict::Pass);
    assert_eq!(
        to_server(&l, &mut a, &away(ROOM1), t0 + secs(30)),
        Verdict::Pass
    );
    // Leaving is always allowed.
    let leave = format!("<presence to='{ROOM1}/nick' type='unavailable'/>");
    assert_eq!(to_server(&l, &mut a, &leave, t0 + secs(30)), Verdict::Pass);
}

#[test]
fn pubsub_publishes_beyond_the_rate_are_refused_per_account() {
    let l = with_registered(|r| r.pubsub_publishes = per(2, MINUTE));
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    let mut a2 = bound(&l, ALICE, t0);
    assert_eq!(to_server(&l, &mut a, PUBLISH, t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a2, PUBLISH, t0), Verdict::Pass);
    assert_eq!(
        bounce(
            to_server(&l, &mut a, PUBLISH, t0),
            LimitKind::PubsubPublishes
        ),
        wait_policy_violation("too many publish requests: at most 2 per 1m")
    );
    // Other pubsub requests are not publishes.
    let subscribe_node = "<iq type='set' id='s' to='pubsub.example.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='n' jid='alice@example.test'/></pubsub></iq>";
    assert_eq!(to_server(&l, &mut a, subscribe_node, t0), Verdict::Pass);
    let items = "<iq type='get' id='g'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'/></pubsub></iq>";
    assert_eq!(to_server(&l, &mut a, items, t0), Verdict::Pass);
    assert_eq!(to_server(&l, &mut a, PUBLISH, t0 + secs(30)), Verdict::Pass);
}

// ---------------------------------------------------------------------------------
// Tiers (XEP-0205 §3)

#[test]
fn the_anonymous_mechanism_puts_the_connection_in_the_anonymous_tier() {
    let l = Limiter::new(LimitsConfig::default());
    let t0 = Instant::now();
    assert_eq!(
        authenticated(&l, "x@anon.example.test", "ANONYMOUS", t0).class,
        UserClass::Anonymous
    );
    assert_eq!(
        authenticated(&l, "x@anon.example.test", "anonymous", t0).class,
        UserClass::Anonymous
    );
    for mechanism in ["PLAIN", "SCRAM-SHA-1", "EXTERNAL"] {
        assert_eq!(
            authenticated(&l, ALICE, mechanism, t0).class,
            UserClass::Registered
        );
    }
}

#[test]
fn anonymous_limits_apply_to_anonymous_users_and_registered_ones_to_the_rest() {
    let mut config = no_limits();
    config.registered.distinct_recipients = per(3, MINUTE);
    config.anonymous.distinct_recipients = per(1, MINUTE);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let mut anon = authenticated(&l, "x@anon.example.test", "ANONYMOUS", t0);
    let mut alice = bound(&l, ALICE, t0);
    let sent = |conn: &mut ConnectionLimits| {
        (0..5)
            .filter(|i| to_server(&l, conn, &chat(&format!("n{i}@x.test")), t0) == Verdict::Pass)
            .count()
    };
    assert_eq!(sent(&mut anon), 1);
    assert_eq!(sent(&mut alice), 3);
}

#[test]
fn trusted_jids_get_the_trusted_tier_whatever_the_mechanism() {
    let mut config = no_limits();
    config.registered.distinct_recipients = per(1, MINUTE);
    config.trusted_jids = vec![ALICE.into()];
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let mut a = authenticated(&l, "Alice@Example.TEST", "PLAIN", t0);
    assert_eq!(a.class, UserClass::Trusted);
    assert_eq!(a.account.as_deref(), Some(ALICE));
    for i in 0..10 {
        assert_eq!(
            to_server(&l, &mut a, &chat(&format!("n{i}@x.test")), t0),
            Verdict::Pass
        );
    }
    assert_eq!(
        authenticated(&l, BOB, "PLAIN", t0).class,
        UserClass::Registered
    );
}

#[test]
fn allow_listed_addresses_get_the_trusted_tier_before_and_after_authentication() {
    let mut config = no_limits();
    config.gate.allow = cidrs(&["10.0.0.0/8"]);
    let l = Limiter::new(config);
    let t0 = Instant::now();
    let ticket = admitted(&l, "10.9.9.9", t0);
    let mut conn = l.connection(&ticket);
    assert_eq!(conn.class, UserClass::Trusted);
    l.authenticated(&mut conn, "ANONYMOUS", Some("x@anon.example.test"));
    assert_eq!(conn.class, UserClass::Trusted);
    let other = admitted(&l, "11.0.0.1", t0);
    assert_eq!(l.connection(&other).class, UserClass::Registered);
}

#[test]
fn a_reload_keeps_the_counters_and_applies_the_new_limits() {
    let l = with_gate(|g| g.max_connections_per_address = Some(2));
    let t0 = Instant::now();
    let _a = admitted(&l, "192.0.2.1", t0);
    let _b = admitted(&l, "192.0.2.1", t0);
    let mut config = (*l.config).clone();
    config.gate.max_connections_per_address = Some(3);
    let reloaded = l.with_config(config);
    let _c = admitted(&reloaded, "192.0.2.1", t0);
    assert_eq!(
        refused(&reloaded, "192.0.2.1", t0),
        LimitKind::ConnectionsPerAddress
    );
}

#[test]
fn the_snapshot_names_every_limit_that_was_hit() {
    let l = with_gate(|g| {
        g.max_connections_per_address = Some(1);
        g.deny = cidrs(&["192.0.2.66"]);
    });
    let t0 = Instant::now();
    let _a = admitted(&l, "192.0.2.1", t0);
    refused(&l, "192.0.2.1", t0);
    refused(&l, "192.0.2.1", t0);
    refused(&l, "192.0.2.66", t0);
    let text = l.state.snapshot().to_string();
    assert!(
        text.ends_with("limit_hits=denied_address:1,connections_per_address:2"),
        "{text}"
    );
}

#[test]
fn xmlns_values_are_read_as_written_with_or_without_prefix() {
    let xml = b"<iq xmlns = \"jabber:client\"><a:query xmlns:a='jabber:iq:avatar'/><x>xmlns</x><y xmlnsz='n'/></iq>";
    let values: Vec<&[u8]> = super::xmlns_values(xml).collect();
    assert_eq!(
        values,
        vec![&b"jabber:client"[..], &b"jabber:iq:avatar"[..]]
    );
}

// ---------------------------------------------------------------------------------
// Bans kept beyond the process: the observer, restoring, lifting

#[test]
fn every_ban_is_told_to_the_observer_with_its_network_and_source() {
    let mut config = no_limits();
    config.auth.max_failures = per(2, HOUR);
    config.auth.ban = secs(600);
    config.gate.ipv4_prefix = 24;
    let l = Limiter::new(config);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    assert!(l.state.observe_bans(Box::new(move |b: &BanEvent| sink
        .lock()
        .unwrap()
        .push(b.clone()))));
    let t0 = Instant::now();
    l.auth_failed(ip("192.0.2.1"), t0);
    assert!(seen.lock().unwrap().is_empty(), "no ban yet");
    let before = SystemTime::now();
    l.auth_failed(ip("192.0.2.1"), t0);
    let after = SystemTime::now();
    l.ban(ip("198.51.100.7"), secs(60), t0, "spam");
    let seen = seen.lock().unwrap();
    let got: Vec<(String, &str)> = seen
        .iter()
        .map(|b| (b.network.to_string(), b.source.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("192.0.2.0/24".to_owned(), "auth_failures"),
            ("198.51.100.0/24".to_owned(), "rule:spam"),
        ]
    );
    let until = seen[0].until;
    assert!(
        until >= before + secs(600) && until <= after + secs(600),
        "{until:?}"
    );
}

#[test]
fn a_restored_ban_refuses_like_a_fresh_one_and_unban_lifts_it() {
    let l = with_gate(|_| {});
    let t0 = Instant::now();
    let net: ipnet::IpNet = "192.0.2.9/32".parse().unwrap();
    l.restore_ban(net, SystemTime::now() + secs(300), t0);
    assert!(matches!(
        l.admit(ip("192.0.2.9"), t0),
        GateDecision::Banned(..)
    ));
    // A ban that ended while xmppwall was down is not restored.
    l.restore_ban(
        "192.0.2.10/32".parse().unwrap(),
        SystemTime::now() - secs(1),
        t0,
    );
    assert!(matches!(
        l.admit(ip("192.0.2.10"), t0),
        GateDecision::Admit(..)
    ));
    assert!(l.unban(net, t0));
    assert!(!l.unban(net, t0));
    assert!(matches!(
        l.admit(ip("192.0.2.9"), t0),
        GateDecision::Admit(..)
    ));
}

#[test]
fn a_ban_restored_from_far_in_the_future_is_held_to_a_century_and_told() {
    // A time any store or other instance could hand over: past what the monotonic
    // clock can add, and past what RFC 3339 can write.
    let l = with_gate(|_| {});
    let t0 = Instant::now();
    let far = SystemTime::UNIX_EPOCH + secs(1_000_000 * 365 * 24 * 3600);
    l.restore_ban("192.0.2.9/32".parse().unwrap(), far, t0);
    let GateDecision::Banned(_, until) = l.admit(ip("192.0.2.9"), t0) else {
        panic!("banned");
    };
    assert!(until <= SystemTime::now() + crate::clock::MAX_BAN + secs(5));
    let text = banned_error(until).to_bytes(None);
    assert!(
        String::from_utf8_lossy(&text).contains("this address is banned until 2"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    // A duration from code, not configuration, is held to a century too.
    let until = l.ban_address(ip("192.0.2.10"), Duration::MAX, t0, "test", "test");
    assert!(until <= SystemTime::now() + crate::clock::MAX_BAN + secs(5));
}

/// The verdict on the stanza `xml` as the proxy sees it: framed in a stream, with
/// the head (and namespace declarations) the framer noted; and whether the
/// stanza had its declarations from the framer.
fn framed_to_server(
    l: &Limiter,
    conn: &mut ConnectionLimits,
    xml: &str,
    now: Instant,
) -> (Verdict, bool) {
    crate::stanza::with_framed(xml, |stanza| {
        (
            l.check_to_server(conn, stanza, now),
            stanza.declared_namespaces().is_some(),
        )
    })
}

#[test]
fn payload_verdicts_from_the_framers_declarations_are_those_of_a_search() {
    let l = payload_limiter();
    let t0 = Instant::now();
    let mut a = bound(&l, ALICE, t0);
    // (stanza, whether the framer noted all its declarations: at most two, each
    // written as its namespace name)
    let cases = [
        ("<message to='b@example.test'><body>x</body></message>", true),
        ("<message to='b@example.test'><x xmlns='urn:test:up'/></message>", true),
        ("<message to='b@example.test'><x xmlns='urn:test:down'/></message>", true),
        ("<iq type='get' id='a' xmlns='jabber:client'><query xmlns='jabber:iq:avatar'/></iq>", true),
        ("<iq type='get' id='a'><p:query xmlns:p='jabber:iq:avatar'/></iq>", true),
        ("<iq type='get' id='a'><query xmlns='jabber:iq:av&#x61;tar'/></iq>", false),
        ("<message to='b@example.test'><a xmlns='urn:a'/><b xmlns='urn:b'/><x xmlns='urn:test:up'/></message>", false),
        ("<message to='b@example.test'><x xmlns='urn:test:wrap'><q xmlns='jabber:iq:avatar'/></x></message>", true),
        ("<message to='b@example.test'><body>xmlns='jabber:iq:avatar'</body></message>", true),
    ];
    for (xml, noted) in cases {
        let searched = to_server(&l, &mut a, xml, t0);
        assert_eq!(
            framed_to_server(&l, &mut a, xml, t0),
            (searched, noted),
            "{xml}"
        );
    }
}
