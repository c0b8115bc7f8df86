//! Process-wide counters of what the proxy did.
//!
//! Owns plain atomic counters; exposition (Prometheus, the admin API) reads them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub sasl_successes: AtomicU64,
    pub sasl_failures: AtomicU64,
    pub stanzas_to_server: AtomicU64,
    pub stanzas_to_client: AtomicU64,
    pub stanzas_bounced: AtomicU64,
    pub streams_closed_by_error: AtomicU64,
    pub upstream_connect_failures: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn open_connections(&self) -> u64 {
        self.connections_accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.connections_closed.load(Ordering::Relaxed))
    }
}
