//! Spam reports and reputation changes written to the durable store (`[store]`).
//!
//! The policy crate records reports and scores in memory and hands each change to a
//! sink; these sinks pass them to the store's writer without holding up the stanza
//! (each write is a task of its own; the store commits it before the task ends).
//! At start, [`restore_reputation`] puts the stored scores back in memory.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use tracing::{info, warn};
use xmppwall_policy::reports::{ReportRecord, ReportSink};
use xmppwall_policy::reputation::ReputationSink;
use xmppwall_policy::Limiter;
use xmppwall_store::{Cluster, Report, Store};

/// Scores restored at start at most (the most recently changed first).
const RESTORED_SCORES: usize = 100_000;

/// Reports go to the store, and to the other instances once shared state is on.
#[derive(Debug)]
pub struct StoreReports(pub Store, pub Arc<OnceLock<Cluster>>);

impl ReportSink for StoreReports {
    fn report(&self, report: ReportRecord) {
        let store = self.0.clone();
        let shared = self.1.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("no runtime to store a report; it is kept in memory only");
            return;
        };
        runtime.spawn(async move {
            let record = Report {
                id: 0,
                at: report.at,
                reporter: report.reporter,
                subject: report.offender,
                reason: report.reason,
                text: report.text,
                stanza_ids: report.stanza_ids,
            };
            if let Some(cluster) = shared.get() {
                cluster.share_report(&record);
            }
            if let Err(e) = store.add_report(record).await {
                warn!(error = %e, "cannot store a spam report");
            }
        });
    }
}

/// Score changes go to the store, and (the raises made here) to the other
/// instances once shared state is on.
#[derive(Debug)]
pub struct StoreReputation(pub Store, pub Arc<OnceLock<Cluster>>);

impl ReputationSink for StoreReputation {
    fn adjusted(&self, subject: &str, stored_delta: f64, _score: f64) {
        let store = self.0.clone();
        let subject = subject.to_owned();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = store
                .adjust_reputation(subject, stored_delta, SystemTime::now())
                .await
            {
                warn!(error = %e, "cannot store a reputation change");
            }
        });
    }

    fn bumped(&self, subject: &str, delta: f64) {
        if let Some(cluster) = self.1.get() {
            cluster.share_reputation(subject, delta);
        }
    }
}

/// Sends the limiter's reports and reputation changes to `store` from now on (and
/// to the other instances through `cluster` once it is set).
pub fn attach(limiter: &Limiter, store: &Store, cluster: &Arc<OnceLock<Cluster>>) {
    let antispam = &limiter.state.antispam;
    antispam.set_report_sink(Arc::new(StoreReports(store.clone(), cluster.clone())));
    antispam
        .reputation
        .set_sink(Arc::new(StoreReputation(store.clone(), cluster.clone())));
}

/// Puts the stored scores back in memory (at start: reputation outlives restarts).
pub async fn restore_reputation(limiter: &Limiter, store: &Store) {
    match store.reputations(RESTORED_SCORES).await {
        Ok(scores) => {
            let (now, wall) = (Instant::now(), SystemTime::now());
            for r in &scores {
                let age = r
                    .updated
                    .and_then(|u| wall.duration_since(u).ok())
                    .unwrap_or_default();
                let at = now.checked_sub(age).unwrap_or(now);
                limiter
                    .state
                    .antispam
                    .reputation
                    .restore(&r.subject, r.score, at);
            }
            if !scores.is_empty() {
                info!(scores = scores.len(), "reputation restored from the store");
            }
        }
        Err(e) => warn!(error = %e, "cannot read the stored reputation; starting without it"),
    }
}
