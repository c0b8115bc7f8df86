//! The three measurements: relay throughput, round-trip latency, idle memory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::procfs;
use crate::record::Record;
use crate::workload::{self, Workload};
use crate::xmpp::{self, Framed, DOMAIN};

/// The seed of the stanza mix every throughput case sends.
pub const WORKLOAD_SEED: u64 = 0x786d_7070;

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;
pub type Conn = Framed<BoxIo>;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    None,
    /// Direct TLS (XEP-0368) from the first byte.
    Direct,
}

/// Where to connect and how.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// The front under test (or the sink itself, for the baseline).
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum, default_value = "none")]
    pub tls: TlsMode,
    /// The PEM certificate the TLS front must present (pinned).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Spread client source addresses over 127.0.0.1 ..= 127.0.0.N, for when one
    /// address runs out of ephemeral ports. 1: let the kernel choose.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// A label for the results table (e.g. "xmppwall", "haproxy").
    #[arg(long)]
    pub label: String,
    /// Append the result line to this file.
    #[arg(long)]
    pub results: Option<PathBuf>,
}

pub struct Target {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    sources: u8,
}

impl Target {
    pub fn new(args: &TargetArgs) -> anyhow::Result<Target> {
        let tls = match args.tls {
            TlsMode::None => None,
            TlsMode::Direct => {
                let cert = args.cert.as_ref().context("--tls direct needs --cert")?;
                Some(TlsConnector::from(crate::tls::client_config(cert)?))
            }
        };
        Ok(Target {
            addr: args.target,
            tls,
            sources: args.sources.max(1),
        })
    }

    /// Opens connection number `i` and logs in.
    pub async fn connect(&self, i: usize) -> anyhow::Result<Conn> {
        let tcp = if self.sources > 1 {
            let last = 1 + (i % usize::from(self.sources)) as u8;
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))?;
            socket.connect(self.addr).await
        } else {
            TcpStream::connect(self.addr).await
        }
        .with_context(|| format!("cannot connect to {}", self.addr))?;
        // Stanzas are written whole; waiting for more (Nagle) would only add latency.
        tcp.set_nodelay(true)?;
        let io: BoxIo = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(DOMAIN)?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .context("TLS handshake")?,
                )
            }
        };
        xmpp::login(io, i).await
    }

    /// Opens `count` connections (numbered from `first`), at most `concurrency` at a time.
    pub async fn connect_many(
        self: &Arc<Self>,
        first: usize,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<Conn>> {
        let mut out = Vec::with_capacity(count);
        let mut pending = JoinSet::new();
        let mut next = first;
        let end = first + count;
        loop {
            while next < end && pending.len() < concurrency.max(1) {
                let target = self.clone();
                let i = next;
                pending.spawn(async move {
                    target
                        .connect(i)
                        .await
                        .with_context(|| format!("connection {i}"))
                });
                next += 1;
            }
            match pending.join_next().await {
                None => break,
                Some(joined) => {
                    let mut conn = joined.context("a connection task panicked")??;
                    conn.shrink();
                    out.push(conn);
                }
            }
        }
        Ok(out)
    }
}

/// CPU time used by the processes around a measurement.
struct CpuSample {
    proxy: Option<u64>,
    sink: Option<u64>,
    me: u64,
}

fn sample(proxy: Option<u32>, sink: Option<u32>) -> CpuSample {
    CpuSample {
        proxy: proxy.map(procfs::cpu_ns),
        sink: sink.map(procfs::cpu_ns),
        me: procfs::cpu_ns(std::process::id()),
    }
}

#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long the clients send.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Bytes per write: whole stanzas up to about this much (at least one).
    #[arg(long, default_value_t = 16384)]
    pub batch_bytes: usize,
    /// The proxy's process id, for its CPU time (its children are counted too).
    #[arg(long)]
    pub proxy_pid: Option<u32>,
    /// The sink's process id, for its CPU time.
    #[arg(long)]
    pub sink_pid: Option<u32>,
}

/// What one connection sent and when the sink confirmed all of it.
struct Sent {
    stanzas: u64,
    bytes: u64,
    confirmed: Instant,
    /// Kept open until the CPU sample after the run.
    _conn: Conn,
}

pub async fn throughput(args: ThroughputArgs) -> anyhow::Result<()> {
    let target = Arc::new(Target::new(&args.target)?);
    let workload = Arc::new(workload::generate(WORKLOAD_SEED, 4096));
    // Every connection is established before the clock starts: this measures the
    // relay, not logins.
    let conns = target
        .connect_many(0, args.connections, 64)
        .await
        .context("opening the connections")?;
    let before = sample(args.proxy_pid, args.sink_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let workload = workload.clone();
        // Connections start at different places in the mix, so they do not write in step.
        let first = i * workload.ends.len() / args.connections.max(1);
        let batch = args.batch_bytes;
        tasks.spawn(async move {
            send_until(conn, &workload, first, batch, deadline, i)
                .await
                .with_context(|| format!("connection {i}"))
        });
    }
    let mut sent = Vec::with_capacity(args.connections);
    while let Some(joined) = tasks.join_next().await {
        sent.push(joined.context("a sender panicked")??);
    }
    // Sampled while the connections are still open, so socat's per-connection
    // processes are still there to be counted.
    let after = sample(args.proxy_pid, args.sink_pid);
    let last = sent.iter().map(|s| s.confirmed).max().unwrap_or(start);
    let elapsed = (last - start).as_secs_f64();
    let stanzas: u64 = sent.iter().map(|s| s.stanzas).sum();
    let bytes: u64 = sent.iter().map(|s| s.bytes).sum();

    let mb = bytes as f64 / 1e6;
    let mut r = Record::new("throughput", &args.target.label);
    r.set("k", args.connections)
        .set("seconds", format!("{elapsed:.3}"))
        .set("stanzas", stanzas)
        .set("bytes", bytes)
        .set("mb_per_s", format!("{:.2}", mb / elapsed))
        .set("stanzas_per_s", format!("{:.0}", stanzas as f64 / elapsed))
        .set("batch_bytes", args.batch_bytes);
    let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / 1e9 / elapsed * 100.0),
        _ => None,
    };
    if let Some(p) = pct(before.proxy, after.proxy) {
        r.set("proxy_cpu_pct", format!("{p:.1}"));
        r.set(
            "proxy_cpu_us_per_mb",
            format!("{:.1}", p / 100.0 * elapsed * 1e6 / mb),
        );
    }
    if let Some(p) = pct(before.sink, after.sink) {
        r.set("sink_cpu_pct", format!("{p:.1}"));
    }
    if let Some(p) = pct(Some(before.me), Some(after.me)) {
        r.set("loadgen_cpu_pct", format!("{p:.1}"));
    }
    r.emit(args.target.results.as_deref())
}

async fn send_until(
    mut conn: Conn,
    workload: &Workload,
    first: usize,
    batch: usize,
    deadline: Instant,
    n: usize,
) -> anyhow::Result<Sent> {
    let ends = &workload.ends;
    let mut i = first % ends.len();
    let (mut stanzas, mut bytes) = (0u64, 0u64);
    while Instant::now() < deadline {
        let begin = if i == 0 { 0 } else { ends[i - 1] };
        let mut j = i;
        loop {
            j += 1;
            if j == ends.len() || ends[j - 1] - begin >= batch {
                break;
            }
        }
        let chunk = &workload.bytes[begin..ends[j - 1]];
        conn.send(chunk).await.context("sending stanzas")?;
        stanzas += (j - i) as u64;
        bytes += chunk.len() as u64;
        i = j % ends.len();
    }
    // The sink answers this ping only after everything before it, and says how much
    // that was: the clock stops when all of it has arrived.
    let id = format!("end-{n}");
    conn.send(&xmpp::ping(&id)).await?;
    let range = xmpp::await_result(&mut conn, id.as_bytes()).await?;
    let confirmed = Instant::now();
    let result = conn.bytes(range);
    // The counters are attributes of the result's <counts/> child.
    let counts = memchr::memmem::find(result, b"<counts")
        .map(|at| &result[at..])
        .with_context(|| format!("no counts in {}", xmpp::excerpt(result)))?;
    let (got_stanzas, got_bytes) = (
        xmpp::number(counts, "stanzas")?,
        xmpp::number(counts, "bytes")?,
    );
    if (got_stanzas, got_bytes) != (stanzas, bytes) {
        bail!(
            "the sink received {got_stanzas} stanzas / {got_bytes} bytes, \
             the client sent {stanzas} / {bytes}"
        );
    }
    Ok(Sent {
        stanzas,
        bytes,
        confirmed,
        _conn: conn,
    })
}

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Measured pings.
    #[arg(long, default_value_t = 20000)]
    pub count: u64,
    /// Pings sent first and not measured (caches, branch predictors, TCP windows).
    #[arg(long, default_value_t = 2000)]
    pub warmup: u64,
    /// Stop early after this long, whatever the count.
    #[arg(long, default_value_t = 20.0)]
    pub max_seconds: f64,
}

pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.target)?;
    let mut conn = target.connect(0).await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let give_up = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    for i in 0..args.warmup + args.count {
        let id = format!("p{i}");
        let ping = xmpp::ping(&id);
        // One ping in flight at a time: the round trip is the whole cost.
        let t0 = std::time::Instant::now();
        conn.send(&ping).await?;
        xmpp::await_result(&mut conn, id.as_bytes()).await?;
        let rtt = t0.elapsed();
        if i >= args.warmup {
            hist.record(rtt.as_nanos().max(1) as u64)?;
        }
        if Instant::now() > give_up {
            break;
        }
    }
    let us = |q: f64| format!("{:.1}", hist.value_at_quantile(q) as f64 / 1000.0);
    let mut r = Record::new("latency", &args.target.label);
    r.set("samples", hist.len())
        .set("p50_us", us(0.5))
        .set("p90_us", us(0.9))
        .set("p99_us", us(0.99))
        .set("p999_us", us(0.999))
        .set("max_us", format!("{:.1}", hist.max() as f64 / 1000.0))
        .set("mean_us", format!("{:.1}", hist.mean() / 1000.0));
    r.emit(args.target.results.as_deref())
}

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The process whose memory is measured.
    #[arg(long)]
    pub pid: u32,
    /// Open authenticated connections in these cumulative steps, measuring after
    /// each (e.g. 1000,10000): the slope between steps excludes fixed costs.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub stages: Vec<usize>,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Pause before each memory reading, so allocators and the kernel settle.
    #[arg(long, default_value_t = 2.0)]
    pub settle_seconds: f64,
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let target = Arc::new(Target::new(&args.target)?);
    let settle = Duration::from_secs_f64(args.settle_seconds);
    let fds_before = procfs::fds(args.pid)?;
    let before = procfs::mem(args.pid)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut readings = Vec::new();
    let started = Instant::now();
    for &n in &args.stages {
        if n <= conns.len() {
            bail!("--stages must increase");
        }
        let opened = target
            .connect_many(conns.len(), n - conns.len(), args.concurrency)
            .await
            .with_context(|| format!("opening connections up to {n}"))?;
        conns.extend(opened);
        tokio::time::sleep(settle).await;
        let m = procfs::mem(args.pid)?;
        let fds = procfs::fds(args.pid)?;
        eprintln!(
            "idle {}: {n} connections open ({fds} descriptors in the process), VmRSS {} KiB",
            args.target.label, m.rss
        );
        readings.push((n, m));
    }
    let open_seconds = started.elapsed().as_secs_f64();
    drop(conns);
    // Wait until the process under test has closed its sockets too.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while procfs::fds(args.pid)? > fds_before + 2 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    let closed = procfs::mem(args.pid)?;

    let Some(&(n, last)) = readings.last() else {
        bail!("no --stages given");
    };
    let per = |a: u64, b: u64, count: usize| (b as f64 - a as f64) / count as f64;
    let mut r = Record::new("idle", &args.target.label);
    r.set("connections", n)
        .set("open_seconds", format!("{open_seconds:.1}"))
        .set("rss_before_kib", before.rss)
        .set("rss_after_kib", last.rss)
        .set("rss_closed_kib", closed.rss)
        .set(
            "rss_per_conn_kib",
            format!("{:.2}", per(before.rss, last.rss, n)),
        )
        .set(
            "anon_per_conn_kib",
            format!("{:.2}", per(before.rss_anon, last.rss_anon, n)),
        )
        .set(
            "pss_per_conn_kib",
            format!("{:.2}", per(before.pss, last.pss, n)),
        )
        .set(
            "private_per_conn_kib",
            format!("{:.2}", per(before.private, last.private, n)),
        );
    if let [.., (n0, m0), (n1, m1)] = readings[..] {
        r.set(
            "rss_slope_kib",
            format!("{:.2}", per(m0.rss, m1.rss, n1 - n0)),
        );
    }
    r.emit(args.target.results.as_deref())
}
