//! Reputation: a score per JID and per domain, raised by spam reports from distinct
//! users, by rules that report, and by limit hits, decaying by half every
//! `half_life`. Thresholds put a sender under throttling, quarantine (its messages
//! to people outside its contacts are held back) or a ban.
//!
//! Sans-IO and in memory, bounded; every change is also handed to a
//! [`ReputationSink`] (a durable store, where one is configured). The lookups on the
//! stanza path only read this table.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::antispam::DomainPatterns;
use crate::limits::PerPeriod;
use crate::rate::TokenBucket;
use crate::table::BoundedTable;

/// The longest bare JID (or domain) scored: what RFC 7622 allows. A longer one is
/// no address anybody can use, and would only cost memory in the tables.
const MAX_SUBJECT_BYTES: usize = crate::contacts::ContactBook::MAX_JID_BYTES;

/// How reputation is scored and what the scores do.
#[derive(Debug, Clone)]
pub struct ReputationConfig {
    /// A score halves in this time.
    pub half_life: Duration,
    /// Added per report from a user who had not reported the same JID before.
    pub report_weight: f64,
    /// Added per match of a rule with a `report` effect.
    pub rule_weight: f64,
    /// Added per limit hit (too many subscription requests or recipients).
    pub limit_weight: f64,
    /// The share of a JID's increase its domain gets too.
    pub domain_share: f64,
    /// At this score, the sender's messages and subscription requests are limited
    /// to this rate.
    pub throttle: Option<(f64, PerPeriod)>,
    /// At this score, the sender's messages to non-contacts are held back.
    pub quarantine: Option<f64>,
    /// At this score, nothing from the sender passes (a local account's stream ends).
    pub ban: Option<f64>,
    /// Never scored: bare JIDs (lowercased) and domains (`*.` for subdomains).
    pub exempt_jids: HashSet<String>,
    pub exempt_domains: DomainPatterns,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            half_life: Duration::from_secs(24 * 3600),
            report_weight: 10.0,
            rule_weight: 5.0,
            limit_weight: 1.0,
            domain_share: 0.25,
            throttle: Some((10.0, PerPeriod::new(6, Duration::from_secs(60)))),
            quarantine: Some(20.0),
            ban: Some(50.0),
            exempt_jids: HashSet::new(),
            exempt_domains: DomainPatterns::default(),
        }
    }
}

/// Where a sender stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Good,
    Throttled,
    Quarantined,
    Banned,
}

impl Standing {
    pub fn name(self) -> &'static str {
        match self {
            Standing::Good => "good",
            Standing::Throttled => "throttled",
            Standing::Quarantined => "quarantined",
            Standing::Banned => "banned",
        }
    }
}

/// Where score changes go besides memory.
pub trait ReputationSink: Send + Sync + std::fmt::Debug {
    /// `subject` (`jid:...` or `domain:...`) has `score` now, as of this change;
    /// `stored_delta` takes the score as of its previous change to it (decay is
    /// applied when read: a stored score is the one at its change time).
    fn adjusted(&self, subject: &str, stored_delta: f64, score: f64);

    /// `subject`'s score was raised by `delta` here (not by another instance): for
    /// sharing the change with other instances. Nothing by default.
    fn bumped(&self, _subject: &str, _delta: f64) {}
}

#[derive(Debug)]
struct Entry {
    score: f64,
    at: Instant,
    throttle: TokenBucket,
}

impl Entry {
    fn decayed(&self, now: Instant, half_life: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.score * 0.5f64.powf(elapsed / half_life.as_secs_f64().max(1.0))
    }
}

/// Scores, shared by every connection; kept across reloads.
#[derive(Debug)]
pub struct ReputationState {
    entries: Mutex<BoundedTable<String, Entry>>,
    /// (reporter, offender) pairs already counted.
    reporters: Mutex<BoundedTable<(String, String), ()>>,
    sink: Mutex<Option<Arc<dyn ReputationSink>>>,
}

impl Default for ReputationState {
    fn default() -> Self {
        ReputationState::new(100_000)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn jid_key(bare: &str) -> String {
    format!("jid:{bare}")
}

fn domain_key(domain: &str) -> String {
    format!("domain:{domain}")
}

impl ReputationState {
    pub fn new(cap: usize) -> ReputationState {
        ReputationState {
            entries: Mutex::new(BoundedTable::new("reputation", cap)),
            reporters: Mutex::new(BoundedTable::new("reputation-reporters", cap)),
            sink: Mutex::new(None),
        }
    }

    pub fn set_sink(&self, sink: Arc<dyn ReputationSink>) {
        *lock(&self.sink) = Some(sink);
    }

    fn exempt(config: &ReputationConfig, bare: &str) -> bool {
        let domain = crate::stanza::domain_of(bare);
        config.exempt_jids.contains(bare) || config.exempt_domains.matches(domain)
    }

    /// Raises the score of `jid` (a bare JID, or a domain) by `delta`, and its
    /// domain's by the configured share. Returns the JID's new score.
    pub fn add(&self, config: &ReputationConfig, jid: &str, delta: f64, now: Instant) -> f64 {
        let bare = crate::stanza::bare_jid(jid);
        if bare.is_empty() || bare.len() > MAX_SUBJECT_BYTES || Self::exempt(config, &bare) {
            return 0.0;
        }
        let mut changes = Vec::with_capacity(2);
        {
            let mut t = lock(&self.entries);
            let mut bump = |key: String, delta: f64| {
                let e = t.entry(key.clone(), || Entry {
                    score: 0.0,
                    at: now,
                    throttle: TokenBucket::new(),
                });
                let previous = e.score;
                e.score = e.decayed(now, config.half_life) + delta;
                e.at = now;
                changes.push((key, e.score - previous, e.score, delta));
            };
            if bare.contains('@') {
                bump(jid_key(&bare), delta);
                let share = delta * config.domain_share;
                if share > 0.0 {
                    bump(domain_key(crate::stanza::domain_of(&bare)), share);
                }
            } else {
                bump(domain_key(&bare), delta);
            }
        }
        if let Some(sink) = lock(&self.sink).clone() {
            for (key, stored_delta, score, delta) in &changes {
                sink.adjusted(key, *stored_delta, *score);
                sink.bumped(key, *delta);
            }
        }
        changes.first().map_or(0.0, |c| c.2)
    }

    /// Another instance raised `subject`'s score (`jid:...` or `domain:...`, as the
    /// sink names it) by `delta`, `age` ago: the change is applied here, decayed
    /// by its age, and handed to the sink's [`ReputationSink::adjusted`] only (it is
    /// not shared again).
    pub fn apply_shared(
        &self,
        config: &ReputationConfig,
        subject: &str,
        delta: f64,
        age: Duration,
        now: Instant,
    ) {
        if !(subject.starts_with("jid:") || subject.starts_with("domain:")) || !delta.is_finite() {
            return;
        }
        let delta =
            delta * 0.5f64.powf(age.as_secs_f64() / config.half_life.as_secs_f64().max(1.0));
        let (stored_delta, score) = {
            let mut t = lock(&self.entries);
            let e = t.entry(subject.to_owned(), || Entry {
                score: 0.0,
                at: now,
                throttle: TokenBucket::new(),
            });
            let previous = e.score;
            e.score = e.decayed(now, config.half_life) + delta;
            e.at = now;
            (e.score - previous, e.score)
        };
        if let Some(sink) = lock(&self.sink).clone() {
            sink.adjusted(subject, stored_delta, score);
        }
    }

    /// Puts back a score kept elsewhere (`subject` as the sink names it), as of `at`.
    pub fn restore(&self, subject: &str, score: f64, at: Instant) {
        if !(subject.starts_with("jid:") || subject.starts_with("domain:")) || !score.is_finite() {
            return;
        }
        lock(&self.entries).entry(subject.to_owned(), || Entry {
            score,
            at,
            throttle: TokenBucket::new(),
        });
    }

    /// A user reported `offender`: counts once per reporter and offender.
    pub fn reported(
        &self,
        config: &ReputationConfig,
        reporter: &str,
        offender: &str,
        now: Instant,
    ) -> bool {
        let pair = (reporter.to_owned(), crate::stanza::bare_jid(offender));
        if pair.1.len() > MAX_SUBJECT_BYTES {
            return false;
        }
        {
            let mut r = lock(&self.reporters);
            if r.peek(&pair).is_some() {
                return false;
            }
            r.entry(pair, || ());
        }
        self.add(config, offender, config.report_weight, now);
        true
    }

    /// The score of a bare JID or a domain now.
    pub fn score(&self, config: &ReputationConfig, jid: &str, now: Instant) -> f64 {
        let bare = crate::stanza::bare_jid(jid);
        let key = if bare.contains('@') {
            jid_key(&bare)
        } else {
            domain_key(&bare)
        };
        lock(&self.entries)
            .peek(&key)
            .map_or(0.0, |e| e.decayed(now, config.half_life))
    }

    /// Where `jid` stands: the worse of its own score and its domain's.
    pub fn standing(&self, config: &ReputationConfig, jid: &str, now: Instant) -> Standing {
        let bare = crate::stanza::bare_jid(jid);
        if Self::exempt(config, &bare) {
            return Standing::Good;
        }
        let t = lock(&self.entries);
        if t.is_empty() {
            return Standing::Good;
        }
        let own = t
            .peek(&jid_key(&bare))
            .map_or(0.0, |e| e.decayed(now, config.half_life));
        let domain = t
            .peek(&domain_key(crate::stanza::domain_of(&bare)))
            .map_or(0.0, |e| e.decayed(now, config.half_life));
        let score = own.max(domain);
        if config.ban.is_some_and(|b| score >= b) {
            Standing::Banned
        } else if config.quarantine.is_some_and(|q| score >= q) {
            Standing::Quarantined
        } else if config.throttle.is_some_and(|(t, _)| score >= t) {
            Standing::Throttled
        } else {
            Standing::Good
        }
    }

    /// For a throttled sender: whether this stanza is over its rate (and counts it).
    pub fn over_throttle(&self, config: &ReputationConfig, jid: &str, now: Instant) -> bool {
        let Some((_, rate)) = config.throttle else {
            return false;
        };
        let bare = crate::stanza::bare_jid(jid);
        if bare.len() > MAX_SUBJECT_BYTES {
            return false;
        }
        let mut t = lock(&self.entries);
        let key = jid_key(&bare);
        let e = t.entry(key, || Entry {
            score: 0.0,
            at: now,
            throttle: TokenBucket::new(),
        });
        e.throttle.try_take(&rate.rate(), 1.0, now).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Recorded {
        adjusted: Mutex<Vec<String>>,
        bumped: Mutex<Vec<(String, f64)>>,
    }

    impl ReputationSink for Recorded {
        fn adjusted(&self, subject: &str, _stored_delta: f64, _score: f64) {
            lock(&self.adjusted).push(subject.to_owned());
        }
        fn bumped(&self, subject: &str, delta: f64) {
            lock(&self.bumped).push((subject.to_owned(), delta));
        }
    }

    #[test]
    fn raises_made_here_are_shared_and_those_from_elsewhere_are_applied_decayed_and_not_again() {
        let config = ReputationConfig::default();
        let state = ReputationState::default();
        let sink = Arc::new(Recorded::default());
        state.set_sink(sink.clone());
        let now = Instant::now();
        state.add(&config, "spammer@spam.example", 8.0, now);
        assert_eq!(
            *lock(&sink.bumped),
            vec![
                ("jid:spammer@spam.example".to_owned(), 8.0),
                ("domain:spam.example".to_owned(), 8.0 * config.domain_share)
            ]
        );
        // Another instance's raise of 4, one half-life old: 2 is added.
        state.apply_shared(
            &config,
            "jid:spammer@spam.example",
            4.0,
            config.half_life,
            now,
        );
        assert_eq!(state.score(&config, "spammer@spam.example", now), 10.0);
        assert_eq!(lock(&sink.bumped).len(), 2, "not shared again");
        assert_eq!(lock(&sink.adjusted).len(), 3, "but stored");
        state.apply_shared(&config, "nonsense", 4.0, Duration::ZERO, now);
        assert_eq!(lock(&sink.adjusted).len(), 3);
    }

    #[test]
    fn what_is_longer_than_any_jid_is_not_scored() {
        let config = ReputationConfig::default();
        let state = ReputationState::default();
        let sink = Arc::new(Recorded::default());
        state.set_sink(sink.clone());
        let now = Instant::now();
        let long = format!("{}@spam.example", "x".repeat(4000));
        assert_eq!(state.add(&config, &long, 8.0, now), 0.0);
        assert!(!state.reported(&config, "alice@example.org", &long, now));
        assert!(!state.over_throttle(&config, &long, now));
        assert!(lock(&sink.bumped).is_empty());
        assert_eq!(state.score(&config, &long, now), 0.0);
    }

    #[test]
    fn reports_from_distinct_users_raise_the_score_and_it_decays() {
        let config = ReputationConfig::default();
        let state = ReputationState::default();
        let now = Instant::now();
        assert!(state.reported(&config, "a@x", "spammer@spam.example", now));
        assert!(
            !state.reported(&config, "a@x", "spammer@spam.example", now),
            "once per reporter"
        );
        assert!(state.reported(&config, "b@x", "Spammer@spam.example/r", now));
        assert_eq!(state.score(&config, "spammer@spam.example", now), 20.0);
        assert_eq!(state.score(&config, "spam.example", now), 5.0);
        assert_eq!(
            state.standing(&config, "spammer@spam.example", now),
            Standing::Quarantined
        );
        let later = now + config.half_life;
        assert_eq!(state.score(&config, "spammer@spam.example", later), 10.0);
        assert_eq!(
            state.standing(&config, "spammer@spam.example", later),
            Standing::Throttled
        );
        let much_later = now + config.half_life * 10;
        assert_eq!(
            state.standing(&config, "spammer@spam.example", much_later),
            Standing::Good
        );
    }

    #[test]
    fn a_bad_domain_drags_its_users_and_exemptions_hold() {
        let mut config = ReputationConfig::default();
        let state = ReputationState::default();
        let now = Instant::now();
        state.add(&config, "spam.example", 60.0, now);
        assert_eq!(
            state.standing(&config, "anyone@spam.example", now),
            Standing::Banned
        );
        config.exempt_domains = DomainPatterns::new(["spam.example"]);
        assert_eq!(
            state.standing(&config, "anyone@spam.example", now),
            Standing::Good
        );
        assert_eq!(state.add(&config, "x@spam.example", 60.0, now), 0.0);
    }

    #[test]
    fn throttled_senders_get_the_configured_rate() {
        let config = ReputationConfig::default();
        let state = ReputationState::default();
        let now = Instant::now();
        let over: Vec<bool> = (0..8)
            .map(|_| state.over_throttle(&config, "slow@x.example", now))
            .collect();
        assert_eq!(over, [false, false, false, false, false, false, true, true]);
    }
}
