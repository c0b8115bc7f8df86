//! State shared by several xmppwall instances through Redis: bans and operator's bans
//! (propagated with pub/sub), connections per address group, connection attempts per
//! address group, resources bound per account, rule rate limits, spam reports and
//! reputation changes.
//!
//! # What goes through Redis, and when
//!
//! - **At connection accept**, after the local gate admitted it: one script call (one
//!   round trip, bounded by `timeout`) counts the attempt in a per-period window and
//!   the connection in the address group's hash of per-instance counts, and refuses
//!   when the shared cap or rate is exceeded. A timeout or error admits on the local
//!   decision alone.
//! - **At a resource bind request** (once per session), after the local limit
//!   admitted it: one script call, bounded by `timeout` in the same way, counts the
//!   resource in the account's hash of per-instance counts and refuses when the
//!   account holds `resources_per_account` across instances.
//! - **Never per stanza.** Counts this instance holds are written as absolute values
//!   (`HSET`) in batches once a second, so a lost or duplicated update heals itself.
//! - **Bans**: each ban this instance makes is stored as a key with the ban's
//!   remaining time as expiry and published on a channel; every instance subscribed
//!   applies it locally at once. At (re)connection an instance reads every stored
//!   ban, and publishes the bans it made while Redis was away. The operator's bans
//!   (admin API: address or prefix, account, domain) go the same way, as keys
//!   `PREFIX:operator-ban:KIND:TARGET` (no expiry for a ban until lifted) and
//!   `operator-ban` / `operator-unban` messages on the same channel.
//! - **Rule rate limits**: the proxy hands over, once a second, what each rule's
//!   buckets admitted per key; once a second one pipeline adds it to a counter per
//!   rule and key (`INCRBY`, expiring one period after its last use) and reads the
//!   totals back; what the others added since is handed to the proxy
//!   ([`ClusterEvent::RatesUsed`]), which takes it from its own buckets.
//! - **Reports and reputation changes** made here are queued and appended, once a
//!   second, to a shared stream; every instance reads what the others appended once
//!   a second and hands it to the proxy ([`ClusterEvent::Report`],
//!   [`ClusterEvent::Reputation`]), which stores the reports and adds the score
//!   changes to its own scores. Thresholds are checked against local scores only.
//! - **Instances** refresh a heartbeat key every second; counts of an instance whose
//!   heartbeat expired are ignored and removed, so a crashed instance's connections
//!   stop counting within a few seconds.
//!
//! # When Redis goes away
//!
//! Every instance goes on enforcing its own limits with local state. The change is
//! logged once (and once again when Redis is back), [`Cluster::redis_up`] turns
//! false and [`Cluster::redis_outages`] counts it. On reconnection the instance
//! re-subscribes, reads the stored bans, publishes its pending bans, rewrites its
//! counts, appends its queued reports and reputation changes and reads the stream
//! from where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::writer::{ms, time};
use crate::{OperatorBan, Report};

/// Bans waiting to be published while Redis is away, at most.
const PENDING_BANS: usize = 10_000;
/// How often the heartbeat and the count batch go out.
const TICK: Duration = Duration::from_secs(1);
/// A heartbeat key outlives this many missed ticks.
const HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// Events waiting for the proxy to apply, at most (a full queue drops and logs).
const EVENT_QUEUE: usize = 4096;
/// Reports and reputation changes waiting for the next batch, at most.
const PENDING_SHARED: usize = 10_000;
/// Entries the shared stream of reports and reputation changes keeps (about).
const STREAM_LENGTH: usize = 100_000;
/// Entries read from that stream per tick, at most.
const STREAM_READ: usize = 1000;
/// Rule rate-limit keys this instance follows in Redis at once, at most.
const RATE_KEYS: usize = 100_000;

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The longest xmppwall waits for Redis at a connection's accept.
    pub timeout: Duration,
    /// Prefix of every key and channel (several deployments on one Redis).
    pub prefix: String,
}

/// What another instance (or the stored state) asks this instance to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    Ban {
        network: IpNet,
        until: SystemTime,
        source: String,
        reason: String,
    },
    Unban {
        network: IpNet,
    },
    /// An operator's ban (address or prefix, account, domain) made through another
    /// instance's admin API; `kick`: end the live streams it covers.
    OperatorBan {
        ban: OperatorBan,
        kick: bool,
    },
    /// An operator's ban lifted through another instance.
    OperatorUnban {
        kind: String,
        target: String,
    },
    /// What the other instances consumed of rule rate limits since the last batch:
    /// (rule, key, events).
    RatesUsed(Vec<(String, String, u64)>),
    /// A spam or abuse report made through another instance.
    Report(Report),
    /// Another instance raised `subject`'s reputation score by `delta` at `at`.
    Reputation {
        subject: String,
        delta: f64,
        at: SystemTime,
    },
}

/// Why the shared gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedRefusal {
    /// The address group holds the maximum of connections across instances.
    Connections,
    /// The address group made too many attempts in this period across instances.
    Attempts,
}

/// One connection's place in a shared count (of an address group's connections or
/// of an account's resources); given back on drop.
pub struct ClusterTicket {
    inner: Arc<Inner>,
    /// The Redis hash of per-instance counts this place is counted in.
    key: String,
}

impl std::fmt::Debug for ClusterTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTicket")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for ClusterTicket {
    fn drop(&mut self) {
        let mut counts = self.inner.counts();
        if let Some(n) = counts.open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.open.remove(&self.key);
            }
        }
        counts.dirty.insert(std::mem::take(&mut self.key));
    }
}

#[derive(Default)]
struct Counts {
    /// Places this instance holds per shared count (the count's Redis key:
    /// connections of an address group, resources of an account).
    open: HashMap<String, u32>,
    /// Counts that changed since the last batch.
    dirty: HashSet<String>,
}

struct Inner {
    config: RedisConfig,
    instance: String,
    client: redis::Client,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    up: AtomicBool,
    outages: AtomicU64,
    errors: AtomicU64,
    counts: Mutex<Counts>,
    /// Messages to publish once Redis answers again.
    pending: Mutex<Vec<Outgoing>>,
    /// Reports and reputation changes for the next batch to the shared stream.
    shared_out: Mutex<Vec<Vec<(&'static str, String)>>>,
    /// The last entry of the shared stream read (`None` until the first connection).
    stream_position: Mutex<Option<String>>,
    /// Rule rate-limit keys in use here, by (rule, key).
    rates: Mutex<HashMap<(String, String), RateUse>>,
    /// Rule rate-limit events the other instances consumed, as received here.
    rate_uses_received: AtomicU64,
    events: mpsc::Sender<ClusterEvent>,
}

#[derive(Debug, Clone)]
enum Outgoing {
    Ban {
        network: IpNet,
        until: SystemTime,
        source: String,
        reason: String,
    },
    Unban(IpNet),
    OperatorBan {
        ban: OperatorBan,
        kick: bool,
    },
    OperatorUnban {
        kind: String,
        target: String,
    },
}

/// One rule rate-limit key this instance follows in Redis: its consumption not yet
/// sent, what it sent and what it saw of the others since the shared counter began.
#[derive(Debug, Default)]
struct RateUse {
    /// The limit's period: the shared counter expires after it unused.
    window: Duration,
    /// The limit's count: the most one batch hands over (more would only lengthen
    /// the wait beyond what one period of use explains).
    burst: u64,
    pending: u64,
    sent: u64,
    seen: u64,
    /// The last local consumption; the key is followed until a window after it.
    last_used: Option<std::time::Instant>,
}

/// The shared state of several instances; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.inner.instance)
            .field("redis_up", &self.redis_up())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid Redis address {url:?}: {source}")]
pub struct ClusterError {
    url: String,
    source: redis::RedisError,
}

/// The script run at accept: attempts in this period's window, then the connection
/// count over live instances. Returns 0 (admitted, counted), 1 (connections), 2
/// (attempts).
const ADMIT: &str = r"
local max_conns = tonumber(ARGV[2])
local max_attempts = tonumber(ARGV[3])
if max_attempts > 0 then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
  if n > max_attempts then return 2 end
end
if max_conns > 0 then
  local total = 0
  local h = redis.call('HGETALL', KEYS[1])
  for i = 1, #h, 2 do
    if h[i] == ARGV[1] or redis.call('EXISTS', ARGV[5] .. h[i]) == 1 then
      total = total + tonumber(h[i + 1])
    else
      redis.call('HDEL', KEYS[1], h[i])
    end
  end
  if total >= max_conns then return 1 end
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 0
";

/// The script run at a bind request: the account's resources over live instances.
/// Returns 0 (admitted, counted) or 1 (the account is at its maximum).
const RESERVE: &str = r"
local max = tonumber(ARGV[2])
local total = 0
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if h[i] == ARGV[1] or redis.call('EXISTS', ARGV[3] .. h[i]) == 1 then
    total = total + tonumber(h[i + 1])
  else
    redis.call('HDEL', KEYS[1], h[i])
  end
end
if total >= max then return 1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 0
";

impl Cluster {
    /// Starts the background task that keeps the connection to Redis (inside a tokio
    /// runtime). The receiver gets the bans and unbans to apply locally.
    pub fn start(
        config: RedisConfig,
    ) -> Result<(Cluster, mpsc::Receiver<ClusterEvent>), ClusterError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|source| ClusterError {
            url: config.url.clone(),
            source,
        })?;
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let inner = Arc::new(Inner {
            instance: format!("{}-{:08x}", std::process::id(), nanos),
            config,
            client,
            connection: Mutex::new(None),
            up: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
            pending: Mutex::new(Vec::new()),
            shared_out: Mutex::new(Vec::new()),
            stream_position: Mutex::new(None),
            rates: Mutex::new(HashMap::new()),
            rate_uses_received: AtomicU64::new(0),
            events,
        });
        tokio::spawn(supervise(inner.clone()));
        Ok((Cluster { inner }, rx))
    }

    /// This instance's name in Redis.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Whether Redis answers now (for metrics; `false` until the first connection).
    pub fn redis_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Times Redis went away since start.
    pub fn redis_outages(&self) -> u64 {
        self.inner.outages.load(Ordering::Relaxed)
    }

    /// Redis calls at accept or at a bind request that failed or timed out (the local
    /// decision stood).
    pub fn redis_errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// The shared gate for a connection the local gate admitted from `network` (the
    /// address group). At most one round trip, bounded by the configured timeout;
    /// without Redis, the connection is admitted and counted locally.
    pub async fn admit(
        &self,
        network: IpNet,
        max_connections: Option<u32>,
        attempts: Option<(u32, Duration)>,
    ) -> Result<ClusterTicket, SharedRefusal> {
        let inner = &self.inner;
        let connection = inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(mut connection) = connection {
            let prefix = &inner.config.prefix;
            let (max_attempts, window) = attempts.map_or((0, Duration::from_secs(1)), |(n, p)| {
                (n, p.max(Duration::from_millis(1)))
            });
            let window_ms = window.as_millis().max(1) as i64;
            let slot = ms(SystemTime::now()) / window_ms;
            let script = redis::Script::new(ADMIT);
            let mut call = script.prepare_invoke();
            call.key(format!("{prefix}:conns:{network}"))
                .key(format!("{prefix}:attempts:{network}:{slot}"))
                .arg(&inner.instance)
                .arg(max_connections.unwrap_or(0))
                .arg(max_attempts)
                .arg(window_ms)
                .arg(format!("{prefix}:instance:"));
            let answer: Result<Result<i64, _>, _> =
                tokio::time::timeout(inner.config.timeout, call.invoke_async(&mut connection))
                    .await;
            match answer {
                Ok(Ok(1)) => return Err(SharedRefusal::Connections),
                Ok(Ok(2)) => return Err(SharedRefusal::Attempts),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "Redis refused the shared gate call; local decision stands");
                }
                Err(_) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("Redis did not answer in time; local decision stands");
                }
            }
        }
        Ok(self.hold(format!("{}:conns:{network}", inner.config.prefix)))
    }

    /// XEP-0205 §2.4 across instances: reserves one of `account`'s resource places
    /// (at most `max` bound across every instance) at a bind request the local limit
    /// admitted. At most one round trip, bounded by the configured timeout; without
    /// Redis, the place is counted locally and the local decision stands. `Err(())`:
    /// the account holds `max` resources across the instances.
    pub async fn reserve_resource(&self, account: &str, max: u32) -> Result<ClusterTicket, ()> {
        let inner = &self.inner;
        let key = format!("{}:resources:{account}", inner.config.prefix);
        let connection = inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(mut connection) = connection {
            let script = redis::Script::new(RESERVE);
            let mut call = script.prepare_invoke();
            call.key(&key)
                .arg(&inner.instance)
                .arg(max)
                .arg(format!("{}:instance:", inner.config.prefix));
            let answer: Result<Result<i64, _>, _> =
                tokio::time::timeout(inner.config.timeout, call.invoke_async(&mut connection))
                    .await;
            match answer {
                Ok(Ok(1)) => return Err(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "Redis refused the shared resource call; local decision stands");
                }
                Err(_) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("Redis did not answer in time; local decision stands");
                }
            }
        }
        Ok(self.hold(key))
    }

    /// Counts one place in the shared count `key` as held by this instance.
    fn hold(&self, key: String) -> ClusterTicket {
        let mut counts = self.inner.counts();
        *counts.open.entry(key.clone()).or_insert(0) += 1;
        counts.dirty.insert(key.clone());
        drop(counts);
        ClusterTicket {
            inner: self.inner.clone(),
            key,
        }
    }

    /// Shares a ban this instance made: stored with its expiry and published to the
    /// other instances (now, or once Redis is back).
    pub fn ban(&self, network: IpNet, until: SystemTime, source: &str, reason: &str) {
        self.inner.publish(Outgoing::Ban {
            network,
            until,
            source: source.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// Shares the lifting of a ban.
    pub fn unban(&self, network: IpNet) {
        self.inner.publish(Outgoing::Unban(network));
    }

    /// Shares an operator's ban made here (admin API): stored with its expiry (none
    /// for a ban until lifted) and published on the ban channel, now or once Redis is
    /// back; `kick` asks the others to end the streams it covers, as here.
    pub fn operator_ban(&self, ban: &OperatorBan, kick: bool) {
        self.inner.publish(Outgoing::OperatorBan {
            ban: ban.clone(),
            kick,
        });
    }

    /// Shares the lifting of an operator's ban.
    pub fn operator_unban(&self, kind: &str, target: &str) {
        self.inner.publish(Outgoing::OperatorUnban {
            kind: kind.to_owned(),
            target: target.to_owned(),
        });
    }

    /// Adds what this instance consumed of the rule rate limit `rule` (`count` per
    /// `window`) per key since the last call; sent to Redis in the next batch (within
    /// a second; kept while Redis is away). Never waits.
    pub fn share_rate_use(
        &self,
        rule: &str,
        count: u32,
        window: Duration,
        uses: Vec<(String, u64)>,
    ) {
        if uses.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut rates = self.inner.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = false;
        for (key, n) in uses {
            let id = (rule.to_owned(), key);
            if rates.len() >= RATE_KEYS && !rates.contains_key(&id) {
                dropped = true;
                continue;
            }
            let entry = rates.entry(id).or_default();
            entry.window = window;
            entry.burst = u64::from(count.max(1));
            entry.pending += n;
            entry.last_used = Some(now);
        }
        if dropped {
            warn!(
                keys = RATE_KEYS,
                "too many rule rate-limit keys in use; the newest are enforced with this instance's counts only"
            );
        }
    }

    /// Rule rate-limit events the other instances consumed, as received here.
    pub fn rate_uses_received(&self) -> u64 {
        self.inner.rate_uses_received.load(Ordering::Relaxed)
    }

    /// Shares a report made here: appended to the shared stream in the next batch
    /// (within a second; kept while Redis is away).
    pub fn share_report(&self, report: &Report) {
        self.inner.queue_shared(vec![
            ("kind", "report".to_owned()),
            ("at", ms(report.at).to_string()),
            ("reporter", report.reporter.clone()),
            ("subject", report.subject.clone()),
            ("reason", report.reason.clone()),
            ("text", report.text.clone().unwrap_or_default()),
            ("has_text", u8::from(report.text.is_some()).to_string()),
            ("ids", report.stanza_ids.join("\n")),
        ]);
    }

    /// Shares a raise of `subject`'s reputation score made here, in the next batch.
    pub fn share_reputation(&self, subject: &str, delta: f64) {
        self.inner.queue_shared(vec![
            ("kind", "reputation".to_owned()),
            ("at", ms(SystemTime::now()).to_string()),
            ("subject", subject.to_owned()),
            ("delta", delta.to_string()),
        ]);
    }
}

impl Inner {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self) -> String {
        format!("{}:bans", self.config.prefix)
    }

    fn stream(&self) -> String {
        format!("{}:events", self.config.prefix)
    }

    fn queue_shared(&self, mut fields: Vec<(&'static str, String)>) {
        fields.insert(0, ("from", self.instance.clone()));
        let mut out = self.shared_out.lock().unwrap_or_else(|p| p.into_inner());
        if out.len() >= PENDING_SHARED {
            warn!("too many reports and reputation changes waiting for Redis; the oldest is shared no more");
            out.remove(0);
        }
        out.push(fields);
    }

    /// Appends the queued reports and reputation changes to the shared stream, in
    /// one pipeline; they stay queued if Redis fails.
    async fn flush_shared(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let batch = std::mem::take(&mut *self.shared_out.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let stream = self.stream();
        let mut pipe = redis::pipe();
        for fields in &batch {
            let cmd = pipe
                .cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*");
            for (name, value) in fields {
                cmd.arg(*name).arg(value);
            }
            cmd.ignore();
        }
        let result: redis::RedisResult<()> = pipe.query_async(c).await;
        if result.is_err() {
            requeue(&self.shared_out, batch, PENDING_SHARED);
        }
        result
    }

    /// Reads what other instances appended to the shared stream since the last read
    /// and hands it to the proxy. The first connection starts at the stream's end
    /// (what came before is in the instances' own stores); a reconnection goes on
    /// where the last read stopped, so nothing appended during an outage is missed
    /// (as long as the stream still holds it).
    async fn read_shared(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let stream = self.stream();
        let position = self
            .stream_position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut position = match position {
            Some(p) => p,
            None => {
                let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(c)
                    .await?;
                let p = last
                    .into_iter()
                    .next()
                    .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
                *self
                    .stream_position
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
                return Ok(());
            }
        };
        type Entries = Vec<(String, Vec<(String, Vec<String>)>)>;
        let read: Option<Entries> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(STREAM_READ)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&position)
            .query_async(c)
            .await?;
        for (_, entries) in read.unwrap_or_default() {
            for (id, flat) in entries {
                position = id;
                let fields: HashMap<&str, &str> = flat
                    .chunks_exact(2)
                    .map(|kv| (kv[0].as_str(), kv[1].as_str()))
                    .collect();
                if fields.get("from") == Some(&self.instance.as_str()) {
                    continue;
                }
                if let Some(event) = parse_shared(&fields) {
                    self.deliver(event);
                }
            }
        }
        *self
            .stream_position
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(position);
        Ok(())
    }

    /// Queues `message`; the supervisor sends it at its next tick (or at once).
    fn publish(self: &Arc<Self>, message: Outgoing) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= PENDING_BANS {
                warn!("too many bans waiting for Redis; the oldest is shared no more");
                pending.remove(0);
            }
            pending.push(message);
        }
        if self.up.load(Ordering::Relaxed) {
            let inner = self.clone();
            tokio::spawn(async move {
                let connection = inner
                    .connection
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(mut c) = connection {
                    let _ = inner.flush_pending(&mut c).await;
                }
            });
        }
    }

    /// Sends the queued bans and unbans; they stay queued if Redis fails.
    async fn flush_pending(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let batch: Vec<Outgoing> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let prefix = &self.config.prefix;
        let mut pipe = redis::pipe();
        let now = SystemTime::now();
        for message in &batch {
            match message {
                Outgoing::Ban {
                    network,
                    until,
                    source,
                    reason,
                } => {
                    let Ok(left) = until.duration_since(now) else {
                        continue;
                    };
                    let value = format!("{}\t{source}\t{reason}", ms(*until));
                    pipe.cmd("SET")
                        .arg(format!("{prefix}:ban:{network}"))
                        .arg(&value)
                        .arg("PX")
                        .arg(left.as_millis().max(1) as u64)
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(self.channel())
                        .arg(format!("{}\tban\t{network}\t{value}", self.instance))
                        .ignore();
                }
                Outgoing::Unban(network) => {
                    pipe.cmd("DEL")
                        .arg(format!("{prefix}:ban:{network}"))
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(self.channel())
                        .arg(format!("{}\tunban\t{network}", self.instance))
                        .ignore();
                }
                Outgoing::OperatorBan { ban, kick } => {
                    let left = match ban.until {
                        None => None,
                        Some(until) => match until.duration_since(now) {
                            Ok(left) => Some(left),
                            Err(_) => continue,
                        },
                    };
                    let value = operator_ban_value(ban, *kick);
                    let set = pipe
                        .cmd("SET")
                        .arg(self.operator_ban_key(&ban.kind, &ban.target))
                        .arg(&value);
                    if let Some(left) = left {
                        set.arg("PX").arg(left.as_millis().max(1) as u64);
                    }
                    set.ignore();
                    pipe.cmd("PUBLISH")
                        .arg(self.channel())
                        .arg(format!("{}\toperator-ban\t{value}", self.instance))
                        .ignore();
                }
                Outgoing::OperatorUnban { kind, target } => {
                    pipe.cmd("DEL")
                        .arg(self.operator_ban_key(kind, target))
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(self.channel())
                        .arg(format!(
                            "{}\toperator-unban\t{kind}\t{}",
                            self.instance,
                            escape(target)
                        ))
                        .ignore();
                }
            }
        }
        let result: redis::RedisResult<()> = pipe.query_async(c).await;
        if result.is_err() {
            requeue(&self.pending, batch, PENDING_BANS);
        }
        result
    }

    /// Writes this instance's heartbeat and the counts that changed (all of them with
    /// `all`), as absolute values.
    async fn sync(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        all: bool,
    ) -> redis::RedisResult<()> {
        let prefix = &self.config.prefix;
        let changes: Vec<(String, u32)> = {
            let mut counts = self.counts();
            // After a reconnection, every count this instance holds, and every one
            // that changed while Redis was away: one that fell to zero is no longer
            // in `open`, and Redis, if it kept its data, still holds the old value.
            let mut dirty: Vec<String> = counts.dirty.drain().collect();
            if all {
                dirty.extend(counts.open.keys().cloned());
                dirty.sort_unstable();
                dirty.dedup();
            }
            dirty
                .into_iter()
                .map(|n| {
                    let held = counts.open.get(&n).copied().unwrap_or(0);
                    (n, held)
                })
                .collect()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{prefix}:instance:{}", self.instance))
            .arg(1)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .ignore();
        for (key, n) in &changes {
            if *n == 0 {
                pipe.cmd("HDEL").arg(key).arg(&self.instance).ignore();
            } else {
                pipe.cmd("HSET")
                    .arg(key)
                    .arg(&self.instance)
                    .arg(*n)
                    .ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(86_400_000u64).ignore();
            }
        }
        let result: redis::RedisResult<()> = pipe.query_async(c).await;
        if result.is_err() {
            let mut counts = self.counts();
            counts.dirty.extend(changes.into_iter().map(|(n, _)| n));
        }
        result
    }

    /// Every ban stored in Redis, applied locally (at each (re)connection).
    async fn load_bans(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<usize> {
        let prefix = &self.config.prefix;
        let keys = scan_keys(c, &format!("{prefix}:ban:*")).await?;
        let mut n = 0;
        for value in self
            .scan_values(c, &format!("{prefix}:operator-ban:*"))
            .await?
        {
            if let Some(event) = parse_operator_ban(&value) {
                n += 1;
                self.deliver(event);
            }
        }
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(c).await?;
            for (key, value) in chunk.iter().zip(values) {
                let (Some(network), Some(value)) =
                    (key.strip_prefix(&format!("{prefix}:ban:")), value)
                else {
                    continue;
                };
                if let Some(event) = parse_ban(network, &value) {
                    n += 1;
                    self.deliver(event);
                }
            }
        }
        Ok(n)
    }

    /// The values of every key matching `pattern`.
    async fn scan_values(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        pattern: &str,
    ) -> redis::RedisResult<Vec<String>> {
        let keys = scan_keys(c, pattern).await?;
        let mut values = Vec::new();
        for chunk in keys.chunks(500) {
            let batch: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(c).await?;
            values.extend(batch.into_iter().flatten());
        }
        Ok(values)
    }

    fn operator_ban_key(&self, kind: &str, target: &str) -> String {
        format!("{}:operator-ban:{kind}:{target}", self.config.prefix)
    }

    /// Sends the rule rate-limit consumption of the keys in use here and reads the
    /// shared totals, in one pipeline: `INCRBY` per key (by zero when nothing was
    /// used here since the last batch, to read what the others added) with the key's
    /// expiry renewed to the limit's period. What the others added since the last
    /// batch goes to the proxy ([`ClusterEvent::RatesUsed`]). Keys unused here for a
    /// period are no longer followed. On failure the consumption stays queued.
    async fn sync_rates(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let now = std::time::Instant::now();
        let batch: Vec<((String, String), u64, Duration)> = {
            let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
            rates.retain(|_, r| {
                r.pending > 0
                    || r.last_used
                        .is_some_and(|t| now.duration_since(t) < r.window)
            });
            rates
                .iter()
                .map(|(id, r)| (id.clone(), r.pending, r.window))
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let prefix = &self.config.prefix;
        let mut pipe = redis::pipe();
        for ((rule, key), pending, window) in &batch {
            let name = format!("{prefix}:rate:{rule}:{key}");
            pipe.cmd("INCRBY").arg(&name).arg(*pending);
            pipe.cmd("PEXPIRE")
                .arg(&name)
                .arg(window.as_millis().max(1000) as u64)
                .ignore();
        }
        let totals: Vec<u64> = pipe.query_async(c).await?;
        let mut used = Vec::new();
        {
            let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
            for (((rule, key), pending, _), total) in batch.into_iter().zip(totals) {
                let id = (rule, key);
                let Some(r) = rates.get_mut(&id) else {
                    continue;
                };
                r.pending -= pending.min(r.pending);
                if total < r.sent + r.seen + pending {
                    // The shared counter expired and began again (the key was idle
                    // for a period): count from here.
                    r.sent = 0;
                    r.seen = 0;
                }
                r.sent += pending;
                let others = total.saturating_sub(r.sent);
                if others > r.seen {
                    used.push((id.0, id.1, (others - r.seen).min(r.burst)));
                    r.seen = others;
                }
            }
        }
        if !used.is_empty() {
            let n: u64 = used.iter().map(|(_, _, n)| n).sum();
            self.rate_uses_received.fetch_add(n, Ordering::Relaxed);
            self.deliver(ClusterEvent::RatesUsed(used));
        }
        Ok(())
    }

    fn deliver(&self, event: ClusterEvent) {
        if self.events.try_send(event).is_err() {
            warn!("shared ban events are arriving faster than they are applied; one was dropped");
        }
    }

    /// A message from the ban channel; those this instance sent are skipped.
    fn on_message(&self, payload: &str) {
        let mut fields = payload.splitn(3, '\t');
        let (Some(sender), Some(kind), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        if sender == self.instance {
            return;
        }
        match kind {
            "ban" => {
                let Some((network, value)) = rest.split_once('\t') else {
                    return;
                };
                if let Some(event) = parse_ban(network, value) {
                    self.deliver(event);
                }
            }
            "unban" => {
                if let Ok(network) = rest.parse() {
                    self.deliver(ClusterEvent::Unban { network });
                }
            }
            "operator-ban" => {
                if let Some(event) = parse_operator_ban(rest) {
                    self.deliver(event);
                }
            }
            "operator-unban" => {
                if let Some((kind, target)) = rest.split_once('\t') {
                    self.deliver(ClusterEvent::OperatorUnban {
                        kind: kind.to_owned(),
                        target: unescape(target),
                    });
                }
            }
            _ => {}
        }
    }

    fn went_down(&self, why: &str) {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.up.swap(false, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!(redis = %self.config.url, reason = why, "Redis is unreachable; enforcing with this instance's state only until it is back");
        }
    }
}

/// A report or reputation change from the shared stream.
/// Puts a batch that could not be sent back in front of whatever was queued meanwhile,
/// keeping at most `cap` entries (the oldest first, so the order of events holds).
fn requeue<T>(queue: &Mutex<Vec<T>>, batch: Vec<T>, cap: usize) {
    let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
    let newer = std::mem::replace(&mut *queue, batch);
    queue.extend(newer);
    queue.truncate(cap);
}

/// Every key matching `pattern` (at most about a million), by `SCAN`, which never
/// blocks Redis the way `KEYS` would.
async fn scan_keys(
    c: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if next == 0 || keys.len() > 1_000_000 {
            return Ok(keys);
        }
        cursor = next;
    }
}

fn parse_shared(fields: &HashMap<&str, &str>) -> Option<ClusterEvent> {
    let at = time(fields.get("at")?.parse().ok()?);
    match *fields.get("kind")? {
        "report" => Some(ClusterEvent::Report(Report {
            id: 0,
            at,
            reporter: (*fields.get("reporter")?).to_owned(),
            subject: (*fields.get("subject")?).to_owned(),
            reason: fields.get("reason").copied().unwrap_or("").to_owned(),
            text: (fields.get("has_text") == Some(&"1"))
                .then(|| fields.get("text").copied().unwrap_or("").to_owned()),
            stanza_ids: fields
                .get("ids")
                .filter(|ids| !ids.is_empty())
                .map(|ids| ids.split('\n').map(str::to_owned).collect())
                .unwrap_or_default(),
        })),
        "reputation" => Some(ClusterEvent::Reputation {
            subject: (*fields.get("subject")?).to_owned(),
            delta: fields.get("delta")?.parse().ok()?,
            at,
        }),
        _ => None,
    }
}

/// Tabs, newlines and backslashes of a field of a ban message, escaped.
fn escape(field: &str) -> String {
    field
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// An operator's ban as stored and published: `kind \t target \t until_ms (empty:
/// until lifted) \t created_ms \t kick (0/1) \t reason (empty: none; `-`
/// prefixed otherwise)`, fields escaped.
fn operator_ban_value(ban: &OperatorBan, kick: bool) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        escape(&ban.kind),
        escape(&ban.target),
        ban.until.map(|t| ms(t).to_string()).unwrap_or_default(),
        ms(ban.created),
        u8::from(kick),
        ban.reason
            .as_deref()
            .map(|r| format!("-{}", escape(r)))
            .unwrap_or_default(),
    )
}

fn parse_operator_ban(value: &str) -> Option<ClusterEvent> {
    let fields: Vec<&str> = value.split('\t').collect();
    let [kind, target, until, created, kick, reason] = fields.as_slice() else {
        return None;
    };
    let until = if until.is_empty() {
        None
    } else {
        Some(time(until.parse().ok()?))
    };
    Some(ClusterEvent::OperatorBan {
        ban: OperatorBan {
            kind: unescape(kind),
            target: unescape(target),
            created: time(created.parse().ok()?),
            until,
            reason: reason.strip_prefix('-').map(unescape),
        },
        kick: *kick == "1",
    })
}

/// `until_ms \t source \t reason` of a stored or published ban.
fn parse_ban(network: &str, value: &str) -> Option<ClusterEvent> {
    let network: IpNet = network.parse().ok()?;
    let mut parts = value.splitn(3, '\t');
    let until: i64 = parts.next()?.parse().ok()?;
    Some(ClusterEvent::Ban {
        network,
        until: time(until),
        source: parts.next().unwrap_or("").to_owned(),
        reason: parts.next().unwrap_or("").to_owned(),
    })
}

/// The longest one Redis command may wait for its answer.
const RESPONSE_WAIT: Duration = Duration::from_secs(10);
/// The longest the catch-up after a (re)connection may take, all commands together.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// Keeps a connection and a subscription to Redis; reconnects after a failure.
async fn supervise(inner: Arc<Inner>) {
    use futures_util::StreamExt;
    let mut first = true;
    loop {
        if inner.events.is_closed() {
            return;
        }
        let connected = async {
            let c = inner.client.get_multiplexed_async_connection().await?;
            let mut pubsub = inner.client.get_async_pubsub().await?;
            pubsub.subscribe(inner.channel()).await?;
            Ok::<_, redis::RedisError>((c, pubsub))
        };
        let (mut c, pubsub) = match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok((mut c, pubsub))) => {
                // Every command on it (and on its clones) fails rather than waits
                // for a Redis that stopped answering.
                c.set_response_timeout(RESPONSE_WAIT);
                (c, pubsub)
            }
            Ok(Err(e)) => {
                if first {
                    warn!(redis = %inner.config.url, error = %e, "cannot reach Redis; enforcing with this instance's state only until it answers");
                    first = false;
                }
                inner.went_down(&e.to_string());
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                inner.went_down("connect timed out");
                continue;
            }
        };
        first = false;
        // Catch up: what others banned meanwhile, what this instance banned, its counts.
        let catch_up = async {
            inner.sync(&mut c, true).await?;
            let n = inner.load_bans(&mut c).await?;
            inner.flush_pending(&mut c).await?;
            inner.flush_shared(&mut c).await?;
            inner.read_shared(&mut c).await?;
            inner.sync_rates(&mut c).await?;
            Ok::<_, redis::RedisError>(n)
        };
        let loaded = match tokio::time::timeout(CATCH_UP_WAIT, catch_up).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                inner.went_down(&e.to_string());
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                inner.went_down("Redis did not answer the catch-up in time");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        *inner.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        if !inner.up.swap(true, Ordering::Relaxed) {
            info!(redis = %inner.config.url, instance = %inner.instance, shared_bans = loaded, "Redis reachable; sharing bans and counts with the other instances");
        }
        let mut messages = pubsub.into_on_message();
        let mut tick = tokio::time::interval(TICK);
        let why = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => {
                        if let Ok(payload) = m.get_payload::<String>() {
                            inner.on_message(&payload);
                        }
                    }
                    None => break "the subscription ended".to_owned(),
                },
                _ = tick.tick() => {
                    if inner.events.is_closed() {
                        return;
                    }
                    let step = async {
                        inner.sync(&mut c, false).await?;
                        inner.flush_pending(&mut c).await?;
                        inner.flush_shared(&mut c).await?;
                        inner.read_shared(&mut c).await?;
                        inner.sync_rates(&mut c).await
                    };
                    match tokio::time::timeout(TICK * 2, step).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "Redis did not answer in time".to_owned(),
                    }
                }
            }
        };
        inner.went_down(&why);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_ban_survives_its_encoding_tabs_and_newlines_included() {
        let ban = OperatorBan {
            kind: "account".into(),
            target: "odd\tname@example.org".into(),
            created: time(1_700_000_000_000),
            until: Some(time(1_700_000_600_000)),
            reason: Some("spam\\wave\nsecond line".into()),
        };
        let value = operator_ban_value(&ban, true);
        assert_eq!(value.split('\t').count(), 6, "{value:?}");
        assert_eq!(
            parse_operator_ban(&value),
            Some(ClusterEvent::OperatorBan {
                ban: ban.clone(),
                kick: true
            })
        );
        let forever = OperatorBan {
            kind: "address".into(),
            target: "2001:db8::/48".into(),
            until: None,
            reason: None,
            ..ban
        };
        assert_eq!(
            parse_operator_ban(&operator_ban_value(&forever, false)),
            Some(ClusterEvent::OperatorBan {
                ban: forever,
                kick: false
            })
        );
        assert_eq!(parse_operator_ban("address\t192.0.2.1"), None);
    }
}
