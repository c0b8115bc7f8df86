//! Per-stanza policy cost with every XEP-0205 limit enabled, on realistic c2s traffic.
//!
//! 1,000 authenticated connections (one account each, SCRAM, a bound resource), each
//! with 30 contacts and 3 joined rooms, replay a fixed, shuffled trace of what such
//! users send and receive: chats and receipts to contacts, replies from them
//! (`check_to_client`), groupchat, presence broadcasts and room presence, pings, IQ
//! results, roster gets and PEP publishes; ten accounts (1%) only write to strangers. Each
//! stanza costs `Stanza::parse` plus `Limiter::check_to_server` (or `check_to_client`
//! for what the server sends), which is what the session runs per stanza once the
//! framer has cut it. Throughput counts stanzas of both directions.
//!
//! Variants:
//! - `every_limit_high`: every limit on, set high enough that the traffic passes (the
//!   cost of the Pass path);
//! - `every_limit_high+bytes_read`: the same plus one `bytes_read` per client stanza
//!   (the bandwidth buckets, as if every stanza arrived in its own read: worst case);
//! - `defaults`: `LimitsConfig::default()`, with each account sending at flood rate
//!   (about 50 stanzas/s) so that some limits refuse (the mix is printed);
//! - `parse_only`: `Stanza::parse` and the attribute reads alone, for comparison.
//!
//! Before each criterion run the benchmark prints what the variant refused and its rate
//! in stanzas per CPU-second (the thread's on-CPU time, from Linux's schedstat), which,
//! unlike criterion's wall-clock figures, does not count time spent waiting for a CPU
//! on a shared machine.
//!
//! Run with `cargo bench -p xmppwall-policy --bench limits`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xmppwall_policy::limits::{Bandwidth, LimitsConfig, PerPeriod, StanzaLimits};
use xmppwall_policy::stanza::Stanza;
use xmppwall_policy::{ConnectionLimits, ConnectionTicket, GateDecision, Limiter, Verdict};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_rate;

const ACCOUNTS: usize = 1_000;
const CONTACTS: usize = 30;
const ROOMS: usize = 50;
const ROOMS_PER_ACCOUNT: usize = 3;
const SPAMMERS: usize = 10;
const TRACE_LEN: usize = 100_000;

/// A small deterministic generator (xorshift64*), so every run replays the same trace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn account(i: usize) -> String {
    format!("user{i}@example.org")
}

/// Contact `k` of account `i`: mostly local accounts, some on other servers.
fn contact(i: usize, k: usize) -> String {
    if k % 5 == 4 {
        format!("friend{}@remote{}.example.net", (i * 7 + k) % 5000, k % 7)
    } else {
        account((i + 1 + k * 37) % ACCOUNTS)
    }
}

fn room(i: usize, r: usize) -> String {
    format!("room{}@conference.example.org", (i * 13 + r * 17) % ROOMS)
}

/// One stanza of the trace, as the framer would hand it over.
struct Event {
    conn: usize,
    to_client: bool,
    bytes: Vec<u8>,
}

const BODY: &str = "Sounds good, see you at the station at half past six &amp; bring the tickets";

fn to_server(conn: usize, bytes: String) -> Event {
    Event {
        conn,
        to_client: false,
        bytes: bytes.into_bytes(),
    }
}

fn to_client(conn: usize, bytes: String) -> Event {
    Event {
        conn,
        to_client: true,
        bytes: bytes.into_bytes(),
    }
}

/// The stanza with which account `i` joins its room `r` (XEP-0045 §7.2).
fn join(i: usize, r: usize) -> String {
    format!(
        "<presence to='{}/user{i}' id='join{r}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='20'/></x><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>",
        room(i, r)
    )
}

fn event(rng: &mut Rng, n: usize) -> Event {
    let i = rng.below(ACCOUNTS);
    let me = account(i);
    let k = rng.below(CONTACTS);
    let peer = if i < SPAMMERS {
        format!("stranger{}@example.org", rng.below(1_000_000))
    } else {
        contact(i, k)
    };
    let r = room(i, rng.below(ROOMS_PER_ACCOUNT));
    // Weights out of 100: what one user's client sends (63) and receives (37). The
    // spammers only send chats, each to a new stranger (about 100 per account in the
    // trace, which repeats: more than the default limit, less than the high one).
    let kind = if i < SPAMMERS { 0 } else { rng.below(100) };
    match kind {
        0..=21 => to_server(
            i,
            format!(
                "<message type='chat' to='{peer}' id='m{n}'><body>{BODY}</body><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='m{n}'/></message>"
            ),
        ),
        22..=29 => to_server(
            i,
            format!(
                "<message to='{peer}/phone' id='r{n}'><received xmlns='urn:xmpp:receipts' id='x{n}'/><store xmlns='urn:xmpp:hints'/></message>"
            ),
        ),
        30..=39 => to_server(
            i,
            format!(
                "<message type='groupchat' to='{r}' id='g{n}'><body>{BODY}</body><origin-id xmlns='urn:xmpp:sid:0' id='g{n}'/></message>"
            ),
        ),
        40..=43 => to_server(
            i,
            format!(
                "<presence id='p{n}'><show>away</show><status>In a meeting</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>"
            ),
        ),
        44..=45 => to_server(
            i,
            format!("<presence to='{r}/user{i}' id='mp{n}'><show>away</show></presence>"),
        ),
        46..=53 => to_server(
            i,
            format!("<iq type='get' id='ping{n}' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>"),
        ),
        54 => to_server(
            i,
            format!("<iq type='get' id='roster{n}'><query xmlns='jabber:iq:roster' ver='ver{n}'/></iq>"),
        ),
        55..=58 => to_server(
            i,
            format!(
                "<iq type='set' id='pub{n}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='{n}'/><device id='1234567'/></list></item></publish></pubsub></iq>"
            ),
        ),
        59..=62 => to_server(
            i,
            format!(
                "<iq type='result' id='disco{n}' to='{peer}/laptop'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='phone' name='Conversations'/><feature var='urn:xmpp:ping'/><feature var='urn:xmpp:receipts'/></query></iq>"
            ),
        ),
        63..=82 => to_client(
            i,
            format!(
                "<message xmlns='jabber:client' type='chat' from='{peer}/phone' to='{me}/laptop' id='in{n}'><body>{BODY}</body><active xmlns='http://jabber.org/protocol/chatstates'/><stanza-id xmlns='urn:xmpp:sid:0' by='{me}' id='s{n}'/></message>"
            ),
        ),
        83..=92 => to_client(
            i,
            format!(
                "<message xmlns='jabber:client' type='groupchat' from='{r}/someone' to='{me}/laptop' id='gin{n}'><body>{BODY}</body><stanza-id xmlns='urn:xmpp:sid:0' by='{r}' id='s{n}'/></message>"
            ),
        ),
        _ => to_client(
            i,
            format!(
                "<presence xmlns='jabber:client' from='{peer}/phone' to='{me}/laptop'><show>chat</show><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' ver='abcdefghijklmnopqrstuvwxyz0='/></presence>"
            ),
        ),
    }
}

fn trace() -> Vec<Event> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..TRACE_LEN).map(|n| event(&mut rng, n)).collect()
}

/// Every limit on, high enough that the benchmark traffic passes.
fn high_limits() -> LimitsConfig {
    let high = |count| Some(PerPeriod::new(count, Duration::from_secs(60)));
    let fast = Some(Bandwidth {
        bytes_per_second: 1 << 30,
        burst_bytes: 1 << 30,
    });
    let registered = StanzaLimits {
        resources_per_account: Some(1_000),
        distinct_recipients: high(1_000),
        bandwidth: fast,
        account_bandwidth: fast,
        roster_requests: high(1_000_000),
        subscription_requests: high(1_000_000),
        presence_broadcasts: high(1_000_000),
        muc_messages: high(1_000_000),
        muc_presences: high(1_000_000),
        rooms_joined: Some(1_000),
        pubsub_publishes: high(1_000_000),
        // The default avatar rule plus the anonymous tier's two: three namespaces
        // compared with every first-level payload.
        payloads: StanzaLimits::anonymous_default().payloads,
        ..StanzaLimits::default()
    };
    LimitsConfig {
        registered,
        trusted_jids: vec!["admin@example.org".into(), "bot@example.org".into()],
        ..LimitsConfig::default()
    }
}

/// The limiter with `ACCOUNTS` connections admitted, authenticated, bound, and joined
/// to their rooms.
struct World {
    limiter: Limiter,
    conns: Vec<ConnectionLimits>,
    _tickets: Vec<ConnectionTicket>,
    now: Instant,
    step: Duration,
}

impl World {
    fn new(config: LimitsConfig, step: Duration) -> World {
        let limiter = Limiter::new(config);
        let now = Instant::now();
        let mut conns = Vec::with_capacity(ACCOUNTS);
        let mut tickets = Vec::with_capacity(ACCOUNTS);
        for i in 0..ACCOUNTS {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8));
            let ticket = match limiter.admit(ip, now) {
                GateDecision::Admit(t) => t,
                other => panic!("connection {i} not admitted: {other:?}"),
            };
            let mut conn = limiter.connection(&ticket);
            limiter.authenticated(&mut conn, "SCRAM-SHA-1", Some(&account(i)));
            limiter
                .bind_requested(&mut conn, now)
                .expect("bind within the resource limit");
            for r in 0..ROOMS_PER_ACCOUNT {
                let bytes = join(i, r);
                let stanza = Stanza::parse(bytes.as_bytes()).expect("a stanza");
                assert_eq!(
                    limiter.check_to_server(&mut conn, &stanza, now),
                    Verdict::Pass
                );
            }
            conns.push(conn);
            tickets.push(ticket);
        }
        World {
            limiter,
            conns,
            _tickets: tickets,
            now,
            step,
        }
    }

    /// Replays the trace; returns how many stanzas passed, were dropped, bounced,
    /// or closed the stream. Time moves on by `step` per stanza, across calls.
    fn replay(&mut self, trace: &[Event], bytes_read: bool) -> [u64; 4] {
        let mut counts = [0u64; 4];
        for e in trace {
            self.now += self.step;
            let stanza = Stanza::parse(&e.bytes).expect("a stanza");
            let conn = &mut self.conns[e.conn];
            let verdict = if e.to_client {
                self.limiter.check_to_client(conn, &stanza, self.now)
            } else {
                if bytes_read {
                    black_box(self.limiter.bytes_read(conn, e.bytes.len(), self.now));
                }
                self.limiter.check_to_server(conn, &stanza, self.now)
            };
            counts[match verdict {
                Verdict::Pass => 0,
                Verdict::Drop(_) => 1,
                Verdict::Bounce(..) => 2,
                Verdict::Close(..) => 3,
            }] += 1;
        }
        counts
    }
}

fn parse_only(trace: &[Event]) -> usize {
    let mut n = 0;
    for e in trace {
        let stanza = Stanza::parse(&e.bytes).expect("a stanza");
        n += usize::from(stanza.stanza_type().is_some());
        n += usize::from(stanza.to().is_some());
        n += stanza.payloads().count();
    }
    n
}

/// Replays the trace `passes` times (time goes on across passes, so per-minute limits
/// reach their steady state) and prints what the last pass decided.
fn report(name: &str, world: &mut World, trace: &[Event], passes: usize) {
    let mut counts = [0u64; 4];
    for _ in 0..passes {
        counts = world.replay(trace, false);
    }
    let [pass, drop, bounce, close] = counts;
    let refused = drop + bounce + close;
    eprintln!(
        "{name}: {pass} passed, {drop} dropped, {bounce} bounced, {close} closed ({:.1}% refused); {}",
        100.0 * refused as f64 / trace.len() as f64,
        world.limiter.state.snapshot()
    );
}

fn limits(c: &mut Criterion) {
    let trace = trace();
    let to_client = trace.iter().filter(|e| e.to_client).count();
    eprintln!(
        "trace: {} stanzas ({} from clients, {to_client} from the server), {ACCOUNTS} connections",
        trace.len(),
        trace.len() - to_client
    );
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(trace.len() as u64));
    group.sample_size(20);

    // 1 µs per stanza: 1,000,000 stanzas/s across the instance, 1,000/s per account,
    // far under the high limits.
    let mut high = World::new(high_limits(), Duration::from_micros(1));
    report("every_limit_high", &mut high, &trace, 1);
    cpu_rate("every_limit_high", trace.len(), 20, || {
        black_box(high.replay(&trace, false));
    });
    cpu_rate("every_limit_high+bytes_read", trace.len(), 20, || {
        black_box(high.replay(&trace, true));
    });
    group.bench_function("every_limit_high", |b| {
        b.iter(|| high.replay(black_box(&trace), false))
    });
    group.bench_function("every_limit_high+bytes_read", |b| {
        b.iter(|| high.replay(black_box(&trace), true))
    });

    // 20 µs per stanza over 1,000 accounts: each account at about 50 stanzas/s, so
    // the per-minute defaults (presence broadcasts, groupchat per room, publishes,
    // roster gets, distinct recipients for the spammers) refuse part of the traffic
    // once the bursts are spent (30 passes: one simulated minute).
    let mut defaults = World::new(LimitsConfig::default(), Duration::from_micros(20));
    report("defaults", &mut defaults, &trace, 30);
    cpu_rate("defaults", trace.len(), 20, || {
        black_box(defaults.replay(&trace, false));
    });
    group.bench_function("defaults", |b| {
        b.iter(|| defaults.replay(black_box(&trace), false))
    });

    cpu_rate("parse_only", trace.len(), 20, || {
        black_box(parse_only(&trace));
    });
    group.bench_function("parse_only", |b| b.iter(|| parse_only(black_box(&trace))));
    group.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
