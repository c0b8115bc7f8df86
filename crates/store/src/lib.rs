//! xmppwall's durable records: bans, spam reports, reputation, and the audit trail of
//! connections and non-pass verdicts, in an embedded SQLite database.
//!
//! # What this crate owns
//!
//! One [`Store`] per process: a SQLite file in WAL mode with **one writer thread**,
//! fed by a bounded channel. The per-stanza path never touches it: a connection's
//! task only hands records to the channel (a non-blocking send) and, where a
//! guarantee is promised, awaits the writer's acknowledgement.
//!
//! # Durability per record kind
//!
//! | record | when it is on disk |
//! |---|---|
//! | ban, unban ([`Store::ban`], [`Store::unban`], [`Store::submit_ban`]) | committed (fsynced, `synchronous=FULL`) before the call's future resolves, or before [`Store::flush`] resolves after a [`Store::submit_ban`] (unless [`BAN_OVERFLOW`] bans were already waiting for a stalled writer: then logged and counted, [`Store::bans_not_saved`]) |
//! | operator's ban ([`Store::put_operator_ban`], [`Store::remove_operator_ban`]) | committed before the call returns |
//! | report ([`Store::add_report`]) | committed before the call returns |
//! | reputation ([`Store::adjust_reputation`]) | committed before the call returns |
//! | connection and verdict audit ([`Store::record_connection`], [`Store::record_verdict`]) | batched: queued without waiting, committed with whatever else the writer holds; a crash loses what was still queued (at most [`AUDIT_QUEUE`] records); a full queue drops the record and counts it ([`Store::audit_dropped`]) |
//!
//! Every write the writer takes from the channel in one go is committed in one
//! transaction (group commit); replies are sent only after that commit, so a
//! `kill -9` after a reply loses nothing that was acknowledged.
//!
//! # Schema and retention
//!
//! The schema's version is `PRAGMA user_version`; [`Store::open`] applies the missing
//! migrations in order, in one transaction each, and refuses a file written by a
//! newer xmppwall. [`Retention`] says how long each kind is kept; the writer prunes
//! every [`Retention::prune_interval`], and [`Store::prune`] prunes at a given time
//! (the clock is the caller's, for tests).
//!
//! # Using it from async code
//!
//! ```no_run
//! # async fn demo() -> Result<(), xmppwall_store::StoreError> {
//! use std::time::{Duration, SystemTime};
//! use xmppwall_store::{Ban, Store, StoreConfig};
//! let store = Store::open(&StoreConfig::in_memory())?;
//! let now = SystemTime::now();
//! store
//!     .ban(Ban::new("203.0.113.0/24".parse().unwrap(), now, now + Duration::from_secs(600), "admin", "spam wave"))
//!     .await?;
//! assert_eq!(store.active_bans(now).await?.len(), 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod cluster;
mod records;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use cluster::{Cluster, ClusterEvent, ClusterTicket, RedisConfig, SharedRefusal};
pub use ipnet::IpNet;
pub use records::{
    Ban, ConnectionRecord, OperatorBan, Report, Reputation, StanzaSummary, VerdictRecord,
    VerdictSource,
};
pub use schema::SCHEMA_VERSION;

use writer::{Command, Reply};

/// Commands and records waiting for the writer, at most.
pub const AUDIT_QUEUE: usize = 8192;

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Connection audit records, by their end time.
    pub connections: Duration,
    /// Verdict audit records.
    pub verdicts: Duration,
    /// Spam reports.
    pub reports: Duration,
    /// Bans, counted from their expiry (an expired ban stays visible this long).
    pub expired_bans: Duration,
    /// Reputation entries not changed for this long.
    pub reputation: Duration,
    /// How often the writer prunes.
    pub prune_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Retention {
            connections: Duration::from_secs(30 * DAY),
            verdicts: Duration::from_secs(30 * DAY),
            reports: Duration::from_secs(365 * DAY),
            expired_bans: Duration::from_secs(30 * DAY),
            reputation: Duration::from_secs(180 * DAY),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// Where the database lives and how long records are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The SQLite file; `None`: an in-memory database (nothing survives a restart).
    pub path: Option<PathBuf>,
    pub retention: Retention,
}

impl StoreConfig {
    /// A database that lives as long as the process (for `check` and tests).
    pub fn in_memory() -> StoreConfig {
        StoreConfig {
            path: None,
            retention: Retention::default(),
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: Some(path.into()),
            retention: Retention::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the store database {path} has schema version {found}, newer than this xmppwall knows ({known}); use a newer xmppwall or another file")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("migrating the store database {path} to schema version {version}: {source}")]
    Migration {
        path: String,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store could not commit the change: {0}")]
    Commit(String),
    #[error("the store's writer has stopped; the change was not saved")]
    WriterGone,
}

/// Counters of the store, for metrics.
#[derive(Debug, Default)]
struct Counters {
    audit_dropped: AtomicU64,
    /// Durable writes handed to the writer, and those it has committed.
    durable_submitted: AtomicU64,
    durable_committed: AtomicU64,
    commit_failures: AtomicU64,
    /// Bans from [`Store::submit_ban`] that found the queue full: the writer takes
    /// them with its next batch (it has a full queue to work through, so it comes).
    overflow: std::sync::Mutex<Vec<Ban>>,
    overflow_dropped: AtomicU64,
}

/// At most this many submitted bans wait beside a full queue; past it a ban is
/// logged, counted ([`Store::bans_not_saved`]) and kept in memory only.
pub const BAN_OVERFLOW: usize = 65_536;

struct Inner {
    tx: SyncSender<Command>,
    counters: Arc<Counters>,
    path: Option<PathBuf>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(handle) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

/// The durable store; cheap to clone (every clone talks to the same writer).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the database, migrates its schema, and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let conn = schema::open(config.path.as_deref())?;
        let (tx, rx) = mpsc::sync_channel(AUDIT_QUEUE);
        let counters = Arc::new(Counters::default());
        let handle = writer::spawn(conn, rx, config.retention, counters.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                tx,
                counters,
                path: config.path.clone(),
                writer: std::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// The database file, `None` in memory.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.inner.path.as_deref()
    }

    /// Sends a command and waits for the writer's answer. A full queue makes the
    /// caller wait for room (durable writes are never dropped).
    async fn request(&self, make: impl FnOnce(Reply) -> Command) -> Result<Answer, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut command = make(reply);
        loop {
            match self.inner.tx.try_send(command) {
                Ok(()) => break,
                Err(TrySendError::Full(c)) => {
                    command = c;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::WriterGone),
            }
        }
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Records a ban; committed when this returns.
    pub async fn ban(&self, ban: Ban) -> Result<(), StoreError> {
        self.request(|r| Command::Ban(ban, Some(r))).await.map(drop)
    }

    /// Hands a ban to the writer without waiting (for code that cannot await, such as
    /// the limiter's ban hook, which runs on the async workers and may hold a
    /// session's lock: it must never block). A full queue puts the ban beside it,
    /// where the writer takes it with its next batch; only past [`BAN_OVERFLOW`] such
    /// bans, with the writer stalled, is one not saved (logged and counted; it stays
    /// in force in memory). [`Store::flush`] waits until the saved ones are committed.
    pub fn submit_ban(&self, ban: Ban) {
        let c = &self.inner.counters;
        c.durable_submitted.fetch_add(1, Ordering::SeqCst);
        match self.inner.tx.try_send(Command::Ban(ban, None)) {
            Ok(()) => {}
            Err(TrySendError::Full(Command::Ban(ban, None))) => {
                let mut overflow = c.overflow.lock().unwrap_or_else(|p| p.into_inner());
                if overflow.len() < BAN_OVERFLOW {
                    overflow.push(ban);
                } else {
                    drop(overflow);
                    c.durable_submitted.fetch_sub(1, Ordering::SeqCst);
                    c.overflow_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        network = %ban.network,
                        "the store is not keeping up; a ban was not saved (it is in force until restart)"
                    );
                }
            }
            Err(_) => {
                c.durable_submitted.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("the store's writer has stopped; a ban was not saved");
            }
        }
    }

    /// Bans [`Store::submit_ban`] could not save because the writer was stalled with
    /// [`BAN_OVERFLOW`] more waiting.
    pub fn bans_not_saved(&self) -> u64 {
        self.inner.counters.overflow_dropped.load(Ordering::Relaxed)
    }

    /// Waits until every ban handed to [`Store::submit_ban`] so far is committed.
    /// Returns at once when none is outstanding.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let c = &self.inner.counters;
        if c.durable_committed.load(Ordering::SeqCst) >= c.durable_submitted.load(Ordering::SeqCst)
        {
            return Ok(());
        }
        self.request(Command::Barrier).await.map(drop)
    }

    /// Lifts the bans on exactly `network` (as banned); returns how many were active.
    pub async fn unban(&self, network: IpNet, now: SystemTime) -> Result<u64, StoreError> {
        match self.request(|r| Command::Unban(network, now, r)).await? {
            Answer::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Bans in force at `now`, longest first.
    pub async fn active_bans(&self, now: SystemTime) -> Result<Vec<Ban>, StoreError> {
        match self.request(|r| Command::ActiveBans(now, r)).await? {
            Answer::Bans(b) => Ok(b),
            _ => Ok(Vec::new()),
        }
    }

    /// Bans in force at `now`, read directly (for start-up, before a runtime exists).
    pub fn active_bans_blocking(&self, now: SystemTime) -> Result<Vec<Ban>, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .tx
            .send(Command::ActiveBans(now, reply))
            .map_err(|_| StoreError::WriterGone)?;
        match answer
            .blocking_recv()
            .map_err(|_| StoreError::WriterGone)??
        {
            Answer::Bans(b) => Ok(b),
            _ => Ok(Vec::new()),
        }
    }

    /// Records (or replaces) an operator's ban; committed when this returns.
    pub async fn put_operator_ban(&self, ban: OperatorBan) -> Result<(), StoreError> {
        self.request(|r| Command::PutOperatorBan(ban, r))
            .await
            .map(drop)
    }

    /// Deletes an operator's ban; committed when this returns. `true` if there was one.
    pub async fn remove_operator_ban(
        &self,
        kind: String,
        target: String,
    ) -> Result<bool, StoreError> {
        match self
            .request(|r| Command::RemoveOperatorBan(kind, target, r))
            .await?
        {
            Answer::Count(n) => Ok(n > 0),
            _ => Ok(false),
        }
    }

    /// The operator's bans in force at `now`.
    pub async fn operator_bans(&self, now: SystemTime) -> Result<Vec<OperatorBan>, StoreError> {
        match self.request(|r| Command::OperatorBans(now, r)).await? {
            Answer::OperatorBans(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Stores a spam report (XEP-0377 or a rule's `report`); committed when this
    /// returns. Returns the report's id.
    pub async fn add_report(&self, report: Report) -> Result<i64, StoreError> {
        match self.request(|r| Command::AddReport(report, r)).await? {
            Answer::Id(id) => Ok(id),
            _ => Ok(0),
        }
    }

    /// Reports about `subject` (a JID or an address; `None`: all), newest first, at
    /// most `limit`.
    pub async fn reports(
        &self,
        subject: Option<String>,
        limit: usize,
    ) -> Result<Vec<Report>, StoreError> {
        match self
            .request(|r| Command::Reports(subject, limit, r))
            .await?
        {
            Answer::Reports(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// A subject's reputation score (0 when unknown).
    pub async fn reputation(&self, subject: String) -> Result<Reputation, StoreError> {
        match self.request(|r| Command::Reputation(subject, r)).await? {
            Answer::Reputation(v) => Ok(v),
            _ => Err(StoreError::WriterGone),
        }
    }

    /// Every subject with a score, most recently changed first, at most `limit` (to
    /// restore scores at start).
    pub async fn reputations(&self, limit: usize) -> Result<Vec<Reputation>, StoreError> {
        match self.request(|r| Command::Reputations(limit, r)).await? {
            Answer::Reputations(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Adds `delta` to a subject's score (committed when this returns); returns the new
    /// entry.
    pub async fn adjust_reputation(
        &self,
        subject: String,
        delta: f64,
        now: SystemTime,
    ) -> Result<Reputation, StoreError> {
        match self
            .request(|r| Command::AdjustReputation(subject, delta, now, r))
            .await?
        {
            Answer::Reputation(v) => Ok(v),
            _ => Err(StoreError::WriterGone),
        }
    }

    /// Queues a connection's audit record (batched; see the crate docs).
    pub fn record_connection(&self, record: ConnectionRecord) {
        self.audit(Command::Connection(record));
    }

    /// Queues a non-pass verdict's audit record (batched; see the crate docs).
    pub fn record_verdict(&self, record: VerdictRecord) {
        self.audit(Command::Verdict(record));
    }

    fn audit(&self, command: Command) {
        if self.inner.tx.try_send(command).is_err() {
            let n = self
                .inner
                .counters
                .audit_dropped
                .fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "the store's queue is full; audit records are being dropped"
                );
            }
        }
    }

    /// The latest connection audit records, newest first.
    pub async fn recent_connections(
        &self,
        limit: usize,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        match self
            .request(|r| Command::RecentConnections(limit, r))
            .await?
        {
            Answer::Connections(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// The latest verdict audit records, newest first.
    pub async fn recent_verdicts(&self, limit: usize) -> Result<Vec<VerdictRecord>, StoreError> {
        match self.request(|r| Command::RecentVerdicts(limit, r)).await? {
            Answer::Verdicts(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Deletes what the retention settings no longer keep, as of `now`; returns how
    /// many rows went. (The writer also does this every `prune_interval`.)
    pub async fn prune(&self, now: SystemTime) -> Result<u64, StoreError> {
        match self.request(|r| Command::Prune(now, r)).await? {
            Answer::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Audit records dropped because the queue was full.
    pub fn audit_dropped(&self) -> u64 {
        self.inner.counters.audit_dropped.load(Ordering::Relaxed)
    }

    /// Transactions that failed to commit (each is logged).
    pub fn commit_failures(&self) -> u64 {
        self.inner.counters.commit_failures.load(Ordering::Relaxed)
    }
}

/// What the writer answers.
#[derive(Debug)]
enum Answer {
    Done,
    Count(u64),
    Id(i64),
    Bans(Vec<Ban>),
    Reports(Vec<Report>),
    OperatorBans(Vec<OperatorBan>),
    Reputation(Reputation),
    Reputations(Vec<Reputation>),
    Connections(Vec<ConnectionRecord>),
    Verdicts(Vec<VerdictRecord>),
}

#[cfg(test)]
mod tests;
