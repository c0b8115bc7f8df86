//! One attack against an XMPP front while legitimate users keep talking.
//!
//! Legitimate traffic: `pairs` pairs of accounts (`legit0`/`legit1`, ...) logged in
//! before the attack from their own addresses (127.200.0.x), each sender writing to
//! its partner at a steady rate, each message stamped with the time it was written;
//! plus a prober that logs a fresh session in every half second (accounts `fresh0` ..
//! `fresh9`), as a user opening
//! their client would. What counts is what happens during the attack window: messages
//! written, delivered, bounced back and lost, their latency, and how many fresh logins
//! succeeded.
//!
//! The attacks (bounded by `--seconds` and by the caps below, loopback only, source
//! addresses spread over 127.10.0.0 - 127.99.255.255) are the ones XEP-0205 and the
//! anti-spam talks name: connection floods, slow-loris streams, a stanza flood from
//! one account, spim to many recipients, a presence-subscription flood, oversized
//! stanzas, deep nesting, entity expansion ("billion laughs"), a registration flood
//! and a password brute force.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::procfs;
use crate::record::Record;
use crate::scan::{self, Token};
use crate::xmpp::{self, Framed, DOMAIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// No attack: the baseline for the legitimate traffic.
    None,
    /// New connections from 64 addresses as fast as they are accepted, each sending a
    /// stream header and then nothing (at most 4,000 open at once).
    ConnectionFlood,
    /// 1,000 connections that send their stream header one byte a second.
    Slowloris,
    /// One account, 4 resources, writing messages to one user as fast as it can.
    StanzaFlood,
    /// One account writing to a new recipient with every message.
    Spim,
    /// One account asking a new contact for a presence subscription every time.
    SubscriptionFlood,
    /// Logged-in connections sending 2 MiB messages, reconnecting when closed.
    Oversized,
    /// Streams nesting 100,000 elements deep before authentication.
    DeepNesting,
    /// Streams with a DOCTYPE declaring nested entities, and entity references.
    BillionLaughs,
    /// In-band registration (XEP-0077) of a new account per connection.
    RegistrationFlood,
    /// SASL PLAIN with wrong passwords for real accounts, from 16 addresses.
    AuthBruteForce,
}

#[derive(clap::Args)]
pub struct AttackArgs {
    /// The c2s front under test: the server itself, or xmppwall in front of it.
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// How long the attack runs.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Legitimate sender/receiver pairs (accounts legit0 .. legit{2*pairs-1}).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second each legitimate sender writes.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Words of ordinary text added to each legitimate message's body after its time
    /// stamp (for policies that read bodies: bench/policy).
    #[arg(long, default_value_t = 0)]
    pub body_words: usize,
    /// The password of every account the run logs in with.
    #[arg(long, default_value = "secret")]
    pub password: String,
    /// Processes to measure, as NAME=PID (e.g. prosody=1234 xmppwall=1240).
    #[arg(long = "process", value_parser = parse_process)]
    pub processes: Vec<(String, u32)>,
    /// A label for the results (e.g. "prosody" or "xmppwall+prosody").
    #[arg(long)]
    pub label: String,
    /// Append the result line to this file.
    #[arg(long)]
    pub results: Option<std::path::PathBuf>,
}

fn parse_process(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_owned(), pid.parse().map_err(|e| format!("{e}"))?))
}

/// A time past which legitimate messages are not waited for any more.
const DELIVERY_GRACE: Duration = Duration::from_secs(3);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects from `source` (port chosen by the kernel).
async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Attacker address number `i`: 127.10.0.1 and up, never a legitimate one.
fn attacker(i: usize) -> Ipv4Addr {
    let i = i % (90 * 65536);
    Ipv4Addr::new(
        127,
        10 + (i / 65536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256).max(1) as u8,
    )
}

fn legit_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 200, (i / 250) as u8, 1 + (i % 250) as u8)
}

#[derive(Default)]
struct Legit {
    sent: AtomicU64,
    delivered: AtomicU64,
    bounced: AtomicU64,
    disconnected: AtomicU64,
    logins: AtomicU64,
    logins_ok: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
    login_us: Mutex<Option<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &Mutex<Option<Histogram<u64>>>, value: u64) {
    let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
    let _ = h.get_or_insert_with(histogram).record(value.max(1));
}

/// What the attack did, for the table.
#[derive(Default)]
struct Attack {
    /// Connections opened (TCP established).
    connections: AtomicU64,
    /// Connections the front refused or closed before the attacker was done.
    cut: AtomicU64,
    /// Stanzas or attempts the attacker got out.
    units: AtomicU64,
    /// Attempts the front accepted (registrations created, logins guessed...).
    accepted: AtomicU64,
}

/// The window legitimate messages are counted in.
struct Window {
    base: Instant,
    start_us: u64,
    end_us: AtomicU64,
}

impl Window {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
    fn contains(&self, t: u64) -> bool {
        t >= self.start_us && t < self.end_us.load(Ordering::Relaxed)
    }
}

pub async fn run(args: AttackArgs) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let legit = Arc::new(Legit::default());
    let attack = Arc::new(Attack::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Log the legitimate users in before anything else happens.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in 0..args.pairs {
        let (s, r) = (2 * p, 2 * p + 1);
        for (i, list) in [(s, &mut senders), (r, &mut receivers)] {
            let tcp = connect_from(legit_address(i), args.target)
                .await
                .with_context(|| format!("legit{i} cannot connect"))?;
            let f = tokio::time::timeout(
                LOGIN_TIMEOUT,
                xmpp::login_as(tcp, &format!("legit{i}"), &args.password),
            )
            .await
            .with_context(|| format!("legit{i} timed out logging in"))??;
            let mut f = f;
            // Available, so that messages to the bare JID reach this session
            // (RFC 6121 §8.5.2.1.1).
            f.send(b"<presence/>").await?;
            list.push(f);
        }
    }

    // Warm up for a second, then attack.
    let base = Instant::now();
    let window = Arc::new(Window {
        base,
        start_us: 1_000_000,
        end_us: AtomicU64::new(u64::MAX),
    });
    let mut tasks = Vec::new();
    for (p, f) in receivers.into_iter().enumerate() {
        let (legit, window) = (legit.clone(), window.clone());
        tasks.push(tokio::spawn(receive(f, legit, window, 2 * p)));
    }
    let mut sender_tasks = Vec::new();
    for (p, f) in senders.into_iter().enumerate() {
        let (legit, window, stop, args) =
            (legit.clone(), window.clone(), stop.clone(), args.clone());
        sender_tasks.push(tokio::spawn(send(f, legit, window, stop, args, 2 * p + 1)));
    }
    tokio::time::sleep(Duration::from_micros(window.start_us)).await;

    // This process (the legitimate users and the attacker) is measured too: on a
    // shared machine its CPU and its wait for one explain latencies.
    let mut processes = args.processes.clone();
    processes.push(("loadgen".to_owned(), std::process::id()));
    let cpu_before: Vec<(u64, u64)> = processes
        .iter()
        .map(|(_, pid)| (procfs::cpu_ns(*pid), procfs::wait_ns(*pid)))
        .collect();
    let attack_end = Instant::now() + Duration::from_secs(args.seconds);
    let sampler = {
        let (processes, stop) = (args.processes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut peak = vec![0u64; processes.len()];
            while !stop.load(Ordering::Relaxed) {
                for (i, (_, pid)) in processes.iter().enumerate() {
                    if let Ok(m) = procfs::mem(*pid) {
                        peak[i] = peak[i].max(m.rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };
    let prober = {
        let (legit, args) = (legit.clone(), args.clone());
        tokio::spawn(probe_logins(legit, args, attack_end))
    };
    // The attack runs on a runtime and thread of its own, so that it competes with
    // the legitimate users for the CPU as another process would, not inside their
    // task queue: the latencies measured are the server's, not the generator's.
    let attacker_thread = {
        let (attack, args) = (attack.clone(), args.clone());
        std::thread::Builder::new()
            .name("attacker".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("attacker")
                    .enable_all()
                    .build()?;
                let before = procfs::threads_named("attacker");
                runtime.block_on(run_attack(attack, args, attack_end));
                let after = procfs::threads_named("attacker");
                runtime.shutdown_timeout(Duration::from_secs(2));
                anyhow::Ok((after.0 - before.0, after.1 - before.1))
            })?
    };
    tokio::time::sleep_until(attack_end.into()).await;
    window.end_us.store(window.now_us(), Ordering::Relaxed);
    let cpu_after: Vec<(u64, u64)> = processes
        .iter()
        .map(|(_, pid)| (procfs::cpu_ns(*pid), procfs::wait_ns(*pid)))
        .collect();
    // Attack tasks stop at the deadline.
    let (attacker_cpu, _) = tokio::task::spawn_blocking(move || attacker_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the attack thread panicked"))??;
    let _ = prober.await;

    // Let the last legitimate messages arrive.
    tokio::time::sleep(DELIVERY_GRACE).await;
    stop.store(true, Ordering::Relaxed);
    for t in sender_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    for t in tasks {
        t.abort();
    }
    let peaks = sampler.await.unwrap_or_default();

    let mut r = Record::new("attack", &args.label);
    r.set("attack", format!("{:?}", args.kind));
    r.set("seconds", args.seconds);
    r.set("pairs", args.pairs);
    r.set("rate", args.rate);
    let sent = legit.sent.load(Ordering::Relaxed);
    let delivered = legit.delivered.load(Ordering::Relaxed);
    r.set("sent", sent);
    r.set("delivered", delivered);
    r.set("bounced", legit.bounced.load(Ordering::Relaxed));
    r.set("lost", sent.saturating_sub(delivered));
    r.set("disconnected", legit.disconnected.load(Ordering::Relaxed));
    let percentile = |h: &Mutex<Option<Histogram<u64>>>, q: f64| {
        h.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(f64::NAN, |h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    r.set(
        "p50_ms",
        format!("{:.2}", percentile(&legit.latency_us, 0.5)),
    );
    r.set(
        "p99_ms",
        format!("{:.2}", percentile(&legit.latency_us, 0.99)),
    );
    r.set(
        "max_ms",
        format!("{:.2}", percentile(&legit.latency_us, 1.0)),
    );
    r.set("logins", legit.logins.load(Ordering::Relaxed));
    r.set("logins_ok", legit.logins_ok.load(Ordering::Relaxed));
    r.set(
        "login_p99_ms",
        format!("{:.1}", percentile(&legit.login_us, 0.99)),
    );
    r.set(
        "attack_connections",
        attack.connections.load(Ordering::Relaxed),
    );
    r.set("attack_cut", attack.cut.load(Ordering::Relaxed));
    r.set("attack_units", attack.units.load(Ordering::Relaxed));
    r.set("attack_accepted", attack.accepted.load(Ordering::Relaxed));
    let window_s = (window.end_us.load(Ordering::Relaxed) - window.start_us) as f64 / 1e6;
    for (i, (name, _)) in processes.iter().enumerate() {
        let cpu = cpu_after[i].0.saturating_sub(cpu_before[i].0) as f64 / 1e9;
        let wait = cpu_after[i].1.saturating_sub(cpu_before[i].1) as f64 / 1e9;
        r.set(
            &format!("{name}_cpu_pct"),
            format!("{:.1}", 100.0 * cpu / window_s),
        );
        // Time its threads were runnable but waited for a CPU, as % of the window
        // (summed over threads, so it may pass 100).
        r.set(
            &format!("{name}_wait_pct"),
            format!("{:.1}", 100.0 * wait / window_s),
        );
        if let Some(peak) = peaks.get(i) {
            r.set(&format!("{name}_rss_kib"), peak);
        }
    }
    r.set(
        "attacker_thread_cpu_pct",
        format!("{:.1}", 100.0 * attacker_cpu as f64 / 1e9 / window_s),
    );
    r.emit(args.results.as_deref())
}

/// Writes `legit{n} -> legit{n+1}` messages at the configured rate until told to stop.
async fn send(
    f: Framed<TcpStream>,
    legit: Arc<Legit>,
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
    args: Arc<AttackArgs>,
    to: usize,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Errors come back on this stream: read them in a task of their own.
    let (io, _) = f.into_parts();
    let (rd, mut wr) = tokio::io::split(io);
    let reader = {
        let (legit, window) = (legit.clone(), window.clone());
        tokio::spawn(async move {
            let mut f = Framed::new(rd);
            while let Ok(Some((Token::Element, range))) = f.next().await {
                let element = f.bytes(range);
                if scan::tag_name(element) == b"message"
                    && scan::attribute(element, "type") == Some(b"error")
                {
                    let stamped = scan::attribute(element, "id")
                        .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u64>().ok());
                    if stamped.is_some_and(|t| window.contains(t)) {
                        legit.bounced.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // Ordinary words (none of them a keyword of bench/policy's lists).
    const WORDS: &[&str] = &[
        "hello", "how", "are", "you", "today", "see", "the", "meeting", "at", "noon", "and",
        "bring", "coffee", "thanks", "for", "photos", "will", "call", "later", "tonight",
    ];
    let filler: String = (0..args.body_words)
        .map(|i| WORDS[(i * 7 + to) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ");
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = window.now_us();
        if t >= window.end_us.load(Ordering::Relaxed) {
            break;
        }
        let message = format!(
            "<message to='legit{to}@{DOMAIN}' type='chat' id='{t}'><body>{t} {filler}</body></message>"
        );
        if wr.write_all(message.as_bytes()).await.is_err() {
            legit.disconnected.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if window.contains(t) {
            legit.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = stop;
    let _ = tokio::time::timeout(DELIVERY_GRACE, reader).await;
}

/// Counts the messages a legitimate receiver gets and how long they took.
async fn receive(mut f: Framed<TcpStream>, legit: Arc<Legit>, window: Arc<Window>, _me: usize) {
    loop {
        match f.next().await {
            Ok(Some((Token::Element, range))) => {
                let element = f.bytes(range);
                if scan::tag_name(element) != b"message"
                    || scan::attribute(element, "type") != Some(b"chat")
                {
                    continue;
                }
                let Some(t) = scan::attribute(element, "id")
                    .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u64>().ok())
                else {
                    continue;
                };
                if window.contains(t) {
                    legit.delivered.fetch_add(1, Ordering::Relaxed);
                    record(&legit.latency_us, window.now_us().saturating_sub(t));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                legit.disconnected.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                eprintln!("xmppwall-bench: a legitimate receiver failed: {e:#}");
                legit.disconnected.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A user opening their client every half second: connect, log in, leave.
async fn probe_logins(legit: Arc<Legit>, args: Arc<AttackArgs>, end: Instant) {
    let mut n = 0usize;
    while Instant::now() < end {
        let started = Instant::now();
        // Accounts of their own: logging in as a user already online with the same
        // resource would replace that session (RFC 6120 §7.7.2.2).
        let user = format!("fresh{}", n % 10);
        let address = legit_address(1000 + n % 200);
        let attempt = async {
            let tcp = connect_from(address, args.target).await?;
            let f = xmpp::login_as(tcp, &user, &args.password).await?;
            let mut io = f.into_parts().0;
            let _ = io.write_all(b"</stream:stream>").await;
            anyhow::Ok(())
        };
        legit.logins.fetch_add(1, Ordering::Relaxed);
        if let Ok(Ok(())) = tokio::time::timeout(LOGIN_TIMEOUT, attempt).await {
            legit.logins_ok.fetch_add(1, Ordering::Relaxed);
            record(&legit.login_us, started.elapsed().as_micros() as u64);
        }
        n += 1;
        tokio::time::sleep_until((started + Duration::from_millis(500)).into()).await;
    }
}

/// Runs `tasks` copies of `body(task number, iteration)` until `end`.
async fn loop_tasks<F, Fut>(tasks: usize, end: Instant, body: F)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let body = Arc::new(body);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < end {
                let _ = tokio::time::timeout_at(end.into(), body(t, i)).await;
                i += 1;
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

/// Reads until the peer closes or `limit` passes; true when the peer closed.
async fn drain_until_closed(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Connects from `source`, sends a stream header and reads the features; counts the
/// connection, or the refusal (after a pause, so a refusing front is not spun on).
async fn open_stream(
    a: &Attack,
    source: Ipv4Addr,
    target: SocketAddr,
) -> Option<Framed<TcpStream>> {
    let Ok(tcp) = connect_from(source, target).await else {
        a.cut.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        return None;
    };
    a.connections.fetch_add(1, Ordering::Relaxed);
    let mut f = Framed::new(tcp);
    if f.send(&xmpp::client_header()).await.is_err()
        || xmpp::read_features(&mut f, "").await.is_err()
    {
        a.cut.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(f)
}

async fn run_attack(attack: Arc<Attack>, args: Arc<AttackArgs>, end: Instant) {
    let target = args.target;
    let password = args.password.clone();
    let a = attack.clone();
    match args.kind {
        Kind::None => tokio::time::sleep_until(end.into()).await,
        Kind::ConnectionFlood => {
            let open = Arc::new(Semaphore::new(4000));
            let mut i = 0usize;
            let mut held = Vec::new();
            while Instant::now() < end {
                let Ok(permit) = open.clone().acquire_owned().await else {
                    break;
                };
                let a = attack.clone();
                let source = attacker(i % 64);
                held.push(tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(Ok(mut tcp)) =
                        tokio::time::timeout(Duration::from_secs(2), connect_from(source, target))
                            .await
                    else {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    a.connections.fetch_add(1, Ordering::Relaxed);
                    if tcp.write_all(&xmpp::client_header()).await.is_err() {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    a.units.fetch_add(1, Ordering::Relaxed);
                    // Hold the stream open, saying nothing more, until the end.
                    if drain_until_closed(&mut tcp, end.saturating_duration_since(Instant::now()))
                        .await
                    {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                i += 1;
                // Yield now and then, so the accept side gets to run.
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for h in held {
                h.abort();
            }
        }
        Kind::Slowloris => {
            loop_tasks(1000, end, move |t, _| {
                let a = a.clone();
                async move {
                    let Ok(mut tcp) = connect_from(attacker(t % 64), target).await else {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return;
                    };
                    a.connections.fetch_add(1, Ordering::Relaxed);
                    for byte in xmpp::client_header() {
                        if tcp.write_all(&[byte]).await.is_err() {
                            a.cut.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        a.units.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    drain_until_closed(&mut tcp, Duration::from_secs(3600)).await;
                }
            })
            .await
        }
        Kind::StanzaFlood | Kind::Spim | Kind::SubscriptionFlood => {
            let kind = args.kind;
            let tasks = if kind == Kind::StanzaFlood { 4 } else { 1 };
            let next = Arc::new(AtomicU64::new(0));
            loop_tasks(tasks, end, move |t, _| {
                let (a, password, next) = (a.clone(), password.clone(), next.clone());
                async move {
                    let Ok(tcp) = connect_from(attacker(t), target).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    };
                    a.connections.fetch_add(1, Ordering::Relaxed);
                    let Ok(Ok(f)) =
                        tokio::time::timeout(LOGIN_TIMEOUT, xmpp::login_as(tcp, "mallory", &password)).await
                    else {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    };
                    let (io, _) = f.into_parts();
                    let (mut rd, mut wr) = tokio::io::split(io);
                    let drain = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                    let mut batch = Vec::with_capacity(64 * 128);
                    loop {
                        batch.clear();
                        for _ in 0..64 {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let stanza = match kind {
                                Kind::StanzaFlood => format!(
                                    "<message to='victim@{DOMAIN}' type='chat'><body>flood {n}</body></message>"
                                ),
                                Kind::Spim => format!(
                                    "<message to='user{n}@{DOMAIN}' type='chat'><body>cheap pills {n}</body></message>"
                                ),
                                _ => format!("<presence to='user{n}@{DOMAIN}' type='subscribe'/>"),
                            };
                            batch.extend_from_slice(stanza.as_bytes());
                        }
                        if wr.write_all(&batch).await.is_err() {
                            a.cut.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        a.units.fetch_add(64, Ordering::Relaxed);
                    }
                    drain.abort();
                }
            })
            .await
        }
        Kind::Oversized => {
            loop_tasks(4, end, move |t, _| {
                let (a, password) = (a.clone(), password.clone());
                async move {
                    let Ok(tcp) = connect_from(attacker(t), target).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    };
                    a.connections.fetch_add(1, Ordering::Relaxed);
                    let Ok(Ok(f)) = tokio::time::timeout(
                        LOGIN_TIMEOUT,
                        xmpp::login_as(tcp, "mallory", &password),
                    )
                    .await
                    else {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    };
                    let (mut tcp, _) = f.into_parts();
                    let body = "A".repeat(2 << 20);
                    let stanza =
                        format!("<message to='victim@{DOMAIN}'><body>{body}</body></message>");
                    a.units.fetch_add(1, Ordering::Relaxed);
                    if tcp.write_all(stanza.as_bytes()).await.is_err() {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if drain_until_closed(&mut tcp, Duration::from_secs(2)).await {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await
        }
        Kind::DeepNesting | Kind::BillionLaughs => {
            let payload: Arc<Vec<u8>> = Arc::new(match args.kind {
                Kind::DeepNesting => {
                    let mut p = xmpp::client_header();
                    p.extend(b"<a>".repeat(100_000));
                    p
                }
                _ => {
                    let mut p = b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY l0 'lol'>"
                        .to_vec();
                    for i in 1..10 {
                        let prev = format!("&l{};", i - 1);
                        p.extend(format!("<!ENTITY l{i} '{}'>", prev.repeat(10)).as_bytes());
                    }
                    p.extend(b"]>");
                    p.extend(&xmpp::client_header()[21..]);
                    p.extend(b"<message to='victim@localhost'><body>&l9;</body></message>");
                    p
                }
            });
            loop_tasks(16, end, move |t, i| {
                let (a, payload) = (a.clone(), payload.clone());
                async move {
                    let Ok(mut tcp) = connect_from(attacker(t * 4096 + i), target).await else {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return;
                    };
                    a.connections.fetch_add(1, Ordering::Relaxed);
                    a.units.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.write_all(&payload).await;
                    if drain_until_closed(&mut tcp, Duration::from_secs(2)).await {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await
        }
        Kind::RegistrationFlood => {
            let next = Arc::new(AtomicU64::new(0));
            loop_tasks(8, end, move |t, i| {
                let (a, next) = (a.clone(), next.clone());
                async move {
                    let Some(mut f) = open_stream(&a, attacker(t * 4096 + i), target).await else {
                        return;
                    };
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let iq = format!(
                        "<iq type='set' id='reg{n}'><query xmlns='jabber:iq:register'>\
                         <username>spammer{n}</username><password>x{n}</password></query></iq>"
                    );
                    a.units.fetch_add(1, Ordering::Relaxed);
                    if f.send(iq.as_bytes()).await.is_err() {
                        a.cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    match f.next().await {
                        Ok(Some((Token::Element, range))) => {
                            if scan::attribute(f.bytes(range), "type") == Some(b"result") {
                                a.accepted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            a.cut.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .await
        }
        Kind::AuthBruteForce => {
            loop_tasks(8, end, move |t, i| {
                let a = a.clone();
                async move {
                    let Some(mut f) = open_stream(&a, attacker((t * 31 + i) % 16), target).await
                    else {
                        return;
                    };
                    // RFC 6120 §6.4.5: a failed exchange may be retried on the stream.
                    for guess in 0..5 {
                        let auth = xmpp::auth_plain(
                            &format!("legit{}", (i + guess) % 4),
                            &format!("guess{i}-{guess}"),
                        );
                        a.units.fetch_add(1, Ordering::Relaxed);
                        if f.send(&auth).await.is_err() {
                            a.cut.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        match f.next().await {
                            Ok(Some((Token::Element, range))) => {
                                if scan::tag_name(f.bytes(range)) == b"success" {
                                    a.accepted.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                            _ => {
                                a.cut.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            })
            .await
        }
    }
}
