//! Process-wide counters of what the proxy did.
//!
//! Owns plain atomic counters, the sampled stanza-processing histogram and the
//! bounded ring of recent refusals; exposition (Prometheus, the admin API, the
//! SIGUSR1 log line) reads them. Updating a counter is one relaxed atomic add.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::Front;

#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted, by front ([`Front::index`]).
    pub connections_accepted: [AtomicU64; Front::ALL.len()],
    /// Connections ended after being accepted, by front.
    pub connections_closed: [AtomicU64; Front::ALL.len()],
    pub sasl_successes: AtomicU64,
    pub sasl_failures: AtomicU64,
    /// Stanzas forwarded to the server (rewritten ones included).
    pub stanzas_to_server: AtomicU64,
    /// Stanzas forwarded to the client (rewritten ones included).
    pub stanzas_to_client: AtomicU64,
    pub stanzas_bounced: AtomicU64,
    pub streams_closed_by_error: AtomicU64,
    pub upstream_connect_failures: AtomicU64,
    /// Client streams answered with a stream header and features before any server
    /// connection existed (`[upstream] defer_connect`).
    pub streams_answered_before_connect: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// How connections ended, by front, then by [`Outcome`].
    pub outcomes: [[AtomicU64; Outcome::ALL.len()]; Front::ALL.len()],
    /// Stanzas from the client not forwarded: dropped, bounced, stream closed.
    pub to_server_dropped: AtomicU64,
    pub to_server_closed: AtomicU64,
    /// Stanzas from the server not forwarded to the client.
    pub to_client_dropped: AtomicU64,
    pub to_client_closed: AtomicU64,
    /// Bytes read from clients and from the server (relayed phase).
    pub bytes_from_client: AtomicU64,
    pub bytes_from_server: AtomicU64,
    /// Server I/O errors after the connection was made.
    pub upstream_io_errors: AtomicU64,
    /// Sampled time xmppwall spends deciding on one client frame.
    pub processing: Histogram,
    pub recent: RecentVerdicts,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Connections accepted on every front.
    pub fn accepted_total(&self) -> u64 {
        self.connections_accepted.iter().map(Self::get).sum()
    }

    /// Connections open on every front.
    pub fn open_connections(&self) -> u64 {
        Front::ALL.iter().map(|f| self.open_on(*f)).sum()
    }

    /// Connections accepted on `front` and not yet ended.
    pub fn open_on(&self, front: Front) -> u64 {
        Self::get(&self.connections_accepted[front.index()])
            .saturating_sub(Self::get(&self.connections_closed[front.index()]))
    }

    /// A connection was accepted on `front`.
    pub fn accepted(&self, front: Front) {
        Self::add(&self.connections_accepted[front.index()], 1);
    }

    /// An accepted connection on `front` ended with `outcome`.
    pub fn closed(&self, front: Front, outcome: Outcome) {
        Self::add(&self.connections_closed[front.index()], 1);
        self.ended(front, outcome);
    }

    /// A connection on `front` ended with `outcome` (refused at the gate: never
    /// counted as accepted).
    pub fn ended(&self, front: Front, outcome: Outcome) {
        self.outcomes[front.index()][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a connection ended (`xmppwall_connections_total{front=...,outcome=...}`).
/// On the peer fronts "client" is the far side xmppwall relays for: the remote
/// server (`s2s`, `s2s-egress`) or the component; "server" the server behind
/// xmppwall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused at the gate (deny list, limits) before a byte was read.
    GateRefused,
    /// Refused by the `connect` rules before a byte was read.
    RuleRefused,
    ClientClosed,
    ServerClosed,
    /// xmppwall ended the stream with a stream error (limits, rules, bans, kicks).
    StreamError,
    Shutdown,
    ClientIoError,
    ServerIoError,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::GateRefused,
        Outcome::RuleRefused,
        Outcome::ClientClosed,
        Outcome::ServerClosed,
        Outcome::StreamError,
        Outcome::Shutdown,
        Outcome::ClientIoError,
        Outcome::ServerIoError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::GateRefused => "gate_refused",
            Outcome::RuleRefused => "rule_refused",
            Outcome::ClientClosed => "client_closed",
            Outcome::ServerClosed => "server_closed",
            Outcome::StreamError => "stream_error",
            Outcome::Shutdown => "shutdown",
            Outcome::ClientIoError => "client_io_error",
            Outcome::ServerIoError => "server_io_error",
        }
    }
}

/// Upper bounds of the processing-time buckets, in nanoseconds.
pub const PROCESSING_BUCKETS_NS: [u64; 12] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000,
    20_000_000,
];

/// One client frame in this many is timed (two clock reads), so the histogram
/// costs next to nothing on the relay path.
pub const PROCESSING_SAMPLE_EVERY: u64 = 64;

/// A fixed-bucket histogram of durations, filled with relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`PROCESSING_BUCKETS_NS`], plus the overflow bucket.
    buckets: [AtomicU64; PROCESSING_BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = PROCESSING_BUCKETS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(PROCESSING_BUCKETS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and per-bucket (non-cumulative) counts.
    pub fn read(&self) -> (f64, u64, Vec<u64>) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, counts.iter().sum(), counts)
    }
}

/// The most recent refusals kept for the admin API.
pub const RECENT_VERDICTS: usize = 1000;

/// One refused stanza or stream, as the peer experienced it.
#[derive(Debug, Clone)]
pub struct RecentVerdict {
    pub at: SystemTime,
    pub session: u64,
    pub peer: std::net::IpAddr,
    pub jid: Option<String>,
    /// `to_server` or `to_client`.
    pub direction: &'static str,
    /// `drop`, `bounce` or `close`.
    pub verdict: &'static str,
    /// The stream error condition for `close`.
    pub condition: Option<&'static str>,
}

/// A bounded ring of [`RecentVerdict`]s (refusals are rare next to passes; the lock
/// is never taken for a stanza that passes).
#[derive(Debug, Default)]
pub struct RecentVerdicts {
    ring: Mutex<VecDeque<RecentVerdict>>,
}

impl RecentVerdicts {
    pub fn push(&self, v: RecentVerdict) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= RECENT_VERDICTS {
            ring.pop_front();
        }
        ring.push_back(v);
    }

    /// The most recent first, at most `limit`.
    pub fn latest(&self, limit: usize) -> Vec<RecentVerdict> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }
}
