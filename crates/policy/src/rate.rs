//! Rate limiters with an injected clock.
//!
//! [`TokenBucket`] is the one mechanism behind every "N per period" and "bytes per
//! second" limit: a bucket of `burst` tokens refilled at `rate` per second, kept as
//! a single "theoretical arrival time" (GCRA), so a bucket is 16 bytes and a check
//! is a few arithmetic instructions. Time only ever comes in as an argument.

use std::time::{Duration, Instant};

/// The longest a single take can move a bucket's clock, in seconds.
const MAX_INTERVAL_SECS: f64 = 1e9;

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Tokens a full bucket holds: the largest burst allowed at once.
    pub burst: f64,
}

impl Rate {
    /// `count` events per `period`, all of which may come at once.
    pub fn per_period(count: u32, period: Duration) -> Rate {
        let secs = period.as_secs_f64().max(1e-9);
        Rate {
            per_second: f64::from(count) / secs,
            burst: f64::from(count),
        }
    }

    /// `bytes_per_second` sustained with `burst` bytes at once.
    pub fn bytes(bytes_per_second: u64, burst: u64) -> Rate {
        Rate {
            per_second: bytes_per_second as f64,
            burst: burst as f64,
        }
    }

    /// How far `cost` tokens move the bucket's clock: at most 10^9 s (about 31
    /// years), so no sum of them with an `Instant` can overflow, and a rate of zero
    /// (which configuration refuses) only means "about never".
    fn emission_interval(&self, cost: f64) -> Duration {
        if self.per_second <= 0.0 {
            return if cost > 0.0 {
                Duration::from_secs(MAX_INTERVAL_SECS as u64)
            } else {
                Duration::ZERO
            };
        }
        Duration::from_secs_f64((cost / self.per_second).min(MAX_INTERVAL_SECS))
    }
}

/// A token bucket in GCRA form: the bucket is full when `tat <= now`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Theoretical arrival time: when the bucket would be full again.
    tat: Option<Instant>,
}

impl Default for TokenBucket {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenBucket {
    /// A full bucket.
    pub const fn new() -> TokenBucket {
        TokenBucket { tat: None }
    }

    /// Takes `cost` tokens if they are there. Returns `Ok(())` or, when refused, how
    /// long until they would be; a refused take changes nothing.
    pub fn try_take(&mut self, rate: &Rate, cost: f64, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let new_tat = tat + rate.emission_interval(cost);
        let allowed_until = now + rate.emission_interval(rate.burst);
        if new_tat > allowed_until {
            Err(new_tat - allowed_until)
        } else {
            self.tat = Some(new_tat);
            Ok(())
        }
    }

    /// Takes `cost` tokens even if that leaves the bucket in debt, and returns how long
    /// the caller should wait before the debt is paid (zero when there was no debt).
    /// This is backpressure for bytes already read: they cannot be refused, only paid for.
    pub fn take_with_debt(&mut self, rate: &Rate, cost: f64, now: Instant) -> Duration {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let new_tat = tat + rate.emission_interval(cost);
        self.tat = Some(new_tat);
        let allowed_until = now + rate.emission_interval(rate.burst);
        new_tat.saturating_duration_since(allowed_until)
    }

    /// Whether the bucket is full at `now`: an idle entry that may be forgotten.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn burst_passes_then_the_next_is_refused_with_the_wait() {
        let rate = Rate::per_period(3, Duration::from_secs(3));
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.try_take(&rate, 1.0, t0), Ok(()));
        }
        assert_eq!(b.try_take(&rate, 1.0, t0), Err(Duration::from_secs(1)));
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let rate = Rate::per_period(2, Duration::from_secs(2));
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        b.try_take(&rate, 1.0, t0).unwrap();
        b.try_take(&rate, 1.0, t0).unwrap();
        assert!(b.try_take(&rate, 1.0, at(t0, 999)).is_err());
        assert_eq!(b.try_take(&rate, 1.0, at(t0, 1000)), Ok(()));
        assert!(b.try_take(&rate, 1.0, at(t0, 1000)).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let rate = Rate::per_period(2, Duration::from_secs(1));
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        b.try_take(&rate, 1.0, t0).unwrap();
        let later = at(t0, 60_000);
        assert!(b.is_full(later));
        b.try_take(&rate, 1.0, later).unwrap();
        b.try_take(&rate, 1.0, later).unwrap();
        assert!(b.try_take(&rate, 1.0, later).is_err());
    }

    #[test]
    fn refused_take_does_not_consume() {
        let rate = Rate::per_period(1, Duration::from_secs(1));
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        b.try_take(&rate, 1.0, t0).unwrap();
        for _ in 0..100 {
            assert!(b.try_take(&rate, 1.0, at(t0, 500)).is_err());
        }
        assert_eq!(b.try_take(&rate, 1.0, at(t0, 1000)), Ok(()));
    }

    #[test]
    fn debt_turns_into_a_wait_proportional_to_the_excess() {
        let rate = Rate::bytes(1000, 2000);
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        assert_eq!(b.take_with_debt(&rate, 2000.0, t0), Duration::ZERO);
        assert_eq!(
            b.take_with_debt(&rate, 500.0, t0),
            Duration::from_millis(500)
        );
        // after waiting it out, the next 500 bytes again cost 500 ms of debt
        assert_eq!(
            b.take_with_debt(&rate, 500.0, at(t0, 500)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_rate_of_nothing_refuses_without_overflowing_the_clock() {
        let t0 = Instant::now();
        for rate in [
            Rate::per_period(0, Duration::from_secs(60)),
            Rate::bytes(0, 0),
        ] {
            let mut b = TokenBucket::new();
            assert!(b.try_take(&rate, 1.0, t0).is_err());
            assert!(b.take_with_debt(&rate, 1.0, t0) > Duration::ZERO);
            assert!(b.take_with_debt(&rate, 1.0, t0) > Duration::ZERO);
            assert!(b.try_take(&rate, 1.0, t0).is_err());
        }
    }
}
