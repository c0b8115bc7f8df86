//! Top talkers: who sent the most over the last N seconds.
//!
//! Owns a bounded ring of samples of every live session's counters, taken every
//! [`SAMPLE_EVERY`]. A question "over the last N seconds" compares the counters now
//! with the newest sample at least N seconds old (or the oldest kept): a session
//! younger than that sample counts from its start. Connections closed within the
//! window are not counted. It reads the session registry; it never locks a relay.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use xmppwall_proxy::sessions::{LiveSession, Registry};

/// How often the sessions' counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How many samples are kept: the longest window is `SAMPLES * SAMPLE_EVERY`.
pub const SAMPLES: usize = 61;
/// The most sessions one sample holds; sessions beyond it count from their start.
pub const MAX_SAMPLED_SESSIONS: usize = 50_000;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    stanzas: u64,
    bytes: u64,
}

struct Sample {
    at: Instant,
    counts: HashMap<u64, Counts>,
}

/// The sample ring.
#[derive(Default)]
pub struct Talkers {
    samples: Mutex<VecDeque<Sample>>,
}

/// How talkers are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Connection,
    Account,
    Address,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "connection" | "session" => Some(GroupBy::Connection),
            "account" | "jid" => Some(GroupBy::Account),
            "address" | "ip" => Some(GroupBy::Address),
            _ => None,
        }
    }
}

/// One talker: a connection, an account or an address.
#[derive(Debug, Clone, Serialize)]
pub struct Talker {
    /// The session id, the bare JID (a peer stream's domains), or the address.
    pub key: String,
    pub sessions: u64,
    /// Stanzas and bytes the client sent within the window.
    pub stanzas: u64,
    pub bytes: u64,
}

fn counts(s: &LiveSession) -> Counts {
    Counts {
        stanzas: LiveSession::count(&s.stanzas_from_client),
        bytes: LiveSession::count(&s.bytes_from_client),
    }
}

impl Talkers {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one sample of every live session.
    pub fn sample(&self, registry: &Registry) {
        let counts: HashMap<u64, Counts> = registry
            .list()
            .iter()
            .take(MAX_SAMPLED_SESSIONS)
            .map(|s| (s.id, counts(s)))
            .collect();
        let mut samples = self.lock();
        if samples.len() >= SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample {
            at: Instant::now(),
            counts,
        });
    }

    /// The `limit` top talkers over the last `window` (by stanzas, then bytes),
    /// and the window actually covered.
    pub fn top(
        &self,
        registry: &Registry,
        window: Duration,
        by: GroupBy,
        limit: usize,
    ) -> (Duration, Vec<Talker>) {
        let now = Instant::now();
        let samples = self.lock();
        let base = samples
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= window)
            .or(samples.front());
        let covered = base.map_or(Duration::ZERO, |b| now.saturating_duration_since(b.at));
        let mut groups: HashMap<String, Talker> = HashMap::new();
        for s in registry.list() {
            let now_counts = counts(&s);
            let before = base
                .and_then(|b| b.counts.get(&s.id))
                .copied()
                .unwrap_or_default();
            let stanzas = now_counts.stanzas.saturating_sub(before.stanzas);
            let bytes = now_counts.bytes.saturating_sub(before.bytes);
            let key = match by {
                GroupBy::Connection => s.id.to_string(),
                // A server-to-server or component stream speaks for its domains.
                GroupBy::Account => s
                    .jid()
                    .map(|j| xmppwall_policy::stanza::bare_jid(&j))
                    .or_else(|| Some(s.domains().join(" ")).filter(|d| !d.is_empty()))
                    .unwrap_or_else(|| "(not authenticated)".into()),
                GroupBy::Address => s.peer.ip().to_canonical().to_string(),
            };
            let t = groups.entry(key.clone()).or_insert(Talker {
                key,
                sessions: 0,
                stanzas: 0,
                bytes: 0,
            });
            t.sessions += 1;
            t.stanzas += stanzas;
            t.bytes += bytes;
        }
        let mut all: Vec<Talker> = groups.into_values().collect();
        all.sort_by(|a, b| (b.stanzas, b.bytes, &a.key).cmp(&(a.stanzas, a.bytes, &b.key)));
        all.truncate(limit);
        (covered, all)
    }
}
