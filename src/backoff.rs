//! The one exponential back-off rule of the crate's retry loops (the
//! stream reconnects, REST retries, the WAL after a failed batch, the
//! supervisors of connection and upload tasks): a first pause, doubled
//! after each further failure, capped, with the jitter the caller picks.
//! Pure: the random unit is passed in, so the tests need no randomness.

use std::time::Duration;

/// Most doublings of the first pause: past them the cap has long been
/// reached for any first pause worth waiting.
const MAX_DOUBLINGS: u32 = 16;

/// A first pause and a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The pause after `n_doublings` (the first failure waits with 0):
    /// `first * 2^n_doublings` (at most [`MAX_DOUBLINGS`] of them), never
    /// more than `max`.
    pub fn ceiling(&self, n_doublings: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << n_doublings.min(MAX_DOUBLINGS))
            .min(self.max)
    }

    /// Full jitter: uniform in `[0, ceiling]` for a `random_unit` in
    /// `[0, 1]` (out of it, clamped). Clients that retry at once spread out.
    pub fn full_jitter(&self, n_doublings: u32, random_unit: f64) -> Duration {
        self.ceiling(n_doublings)
            .mul_f64(random_unit.clamp(0.0, 1.0))
    }

    /// Equal jitter: uniform in `[ceiling / 2, ceiling]`, so the pause
    /// still grows with the failures.
    pub fn equal_jitter(&self, n_doublings: u32, random_unit: f64) -> Duration {
        self.ceiling(n_doublings)
            .mul_f64(0.5 + random_unit.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));

    #[test]
    fn the_pause_doubles_from_the_first_up_to_the_cap() {
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(250));
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(500));
        assert_eq!(BACKOFF.ceiling(3), Duration::from_secs(2));
        assert_eq!(BACKOFF.ceiling(7), Duration::from_secs(30));
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn doublings_stop_at_sixteen_even_below_the_cap() {
        let tiny = Backoff::new(Duration::from_millis(1), Duration::from_secs(3600));
        assert_eq!(tiny.ceiling(16), Duration::from_millis(65_536));
        assert_eq!(tiny.ceiling(40), Duration::from_millis(65_536));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        assert_eq!(BACKOFF.full_jitter(2, 0.0), Duration::ZERO);
        assert_eq!(BACKOFF.full_jitter(2, 0.5), Duration::from_millis(500));
        assert_eq!(BACKOFF.full_jitter(2, 7.0), Duration::from_secs(1));
        assert_eq!(BACKOFF.equal_jitter(2, 0.0), Duration::from_millis(500));
        assert_eq!(BACKOFF.equal_jitter(2, 1.0), Duration::from_secs(1));
    }
}
