//! Retry delays: exponential, capped, with full jitter.

use std::time::Duration;

use rand::Rng;

/// `base * 2^(attempt-1)` capped at `cap`, then drawn uniformly from `[0, that]`. Full
/// jitter spreads the retries of jobs that failed together (an outage) instead of
/// sending them back in waves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl Backoff {
    /// The ceiling for the retry after `attempt` (1-based) failed.
    pub(crate) fn ceiling(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 31).unsigned_abs();
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The delay before the attempt after `attempt`.
    pub(crate) fn delay(&self, attempt: i32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_and_stays_under_it() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(1000), Duration::from_secs(1));
        for attempt in 1..10 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
    }
}
