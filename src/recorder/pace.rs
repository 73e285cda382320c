//! Pure: how fast a market's exchange clock runs against the host's, so a
//! fill round can tell early that REST cannot answer before its hour's
//! deadline (which is in exchange time) and give up at once instead of
//! holding the hour until the deadline and then sealing every such hour in
//! one burst.
//!
//! On Binance the two clocks run at the same speed; a simulated exchange
//! runs faster. The rate is measured, never assumed: samples of (host
//! time, exchange time) at least [`SAMPLE_SPACING_MS`] apart, the newest
//! [`WINDOW`] kept, and no rate until they span [`MIN_SPAN_MS`]. A clock
//! that does not move (no frames) has no rate, so nothing is given up
//! early on a guess.

use std::collections::VecDeque;
use std::time::Duration;

use crate::domain::TimeUs;
use crate::recorder::state::MonoMs;

/// Host milliseconds between two samples kept.
pub const SAMPLE_SPACING_MS: MonoMs = 1_000;
/// Samples kept: the rate is measured over about the last half minute.
pub const WINDOW: usize = 30;
/// Host milliseconds the samples must span before a rate is given.
pub const MIN_SPAN_MS: MonoMs = 5_000;

/// The exchange clock's pace against the host clock, for one market.
#[derive(Debug, Default, Clone)]
pub struct ClockPace {
    samples: VecDeque<(MonoMs, TimeUs)>,
}

impl ClockPace {
    /// Records the exchange clock `exchange` read at host time `now`.
    pub fn observe(&mut self, now: MonoMs, exchange: TimeUs) {
        if self
            .samples
            .back()
            .is_some_and(|(at, _)| now.saturating_sub(*at) < SAMPLE_SPACING_MS)
        {
            return;
        }
        self.samples.push_back((now, exchange));
        while self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
    }

    /// Exchange microseconds per host microsecond over the window, once it
    /// spans [`MIN_SPAN_MS`] and the exchange clock moved.
    pub fn rate(&self) -> Option<f64> {
        let (first_at, first) = *self.samples.front()?;
        let (last_at, last) = *self.samples.back()?;
        let span_ms = last_at.checked_sub(first_at)?;
        if span_ms < MIN_SPAN_MS || last <= first {
            return None;
        }
        Some((last - first) as f64 / (span_ms as f64 * 1_000.0))
    }

    /// Host time until the exchange clock, now at `exchange_now`, reaches
    /// `exchange_then` at the measured pace (zero when it is reached);
    /// `None` without a rate.
    pub fn host_time_until(&self, exchange_now: TimeUs, exchange_then: TimeUs) -> Option<Duration> {
        let rate = self.rate()?;
        let ahead_us = exchange_then.saturating_sub(exchange_now).max(0) as f64;
        Some(Duration::from_secs_f64(ahead_us / rate / 1_000_000.0))
    }
}

impl ClockPace {
    /// Exchange microseconds that pass in `host` at the measured pace;
    /// `None` without a rate.
    pub fn exchange_time_in(&self, host: Duration) -> Option<TimeUs> {
        let rate = self.rate()?;
        Some((host.as_secs_f64() * 1_000_000.0 * rate) as TimeUs)
    }
}

/// How long the runtime takes to get one more hour written, as its loop
/// sees it (from handing the seal out to hearing it finished, divided by
/// the seals that run at once): the time to keep before a fill deadline
/// so that hours cut together there are all written by it. A moving
/// average, so a loaded machine's slower seals count soon.
#[derive(Debug, Default, Clone)]
pub struct SealPace {
    host_ms_per_file: Option<f64>,
}

/// Weight of the newest seal in [`SealPace`]'s moving average.
const SEAL_PACE_WEIGHT: f64 = 0.2;

impl SealPace {
    /// One seal took `elapsed` from hand-out to finish, with up to
    /// `concurrency` seals running at once.
    pub fn observe(&mut self, elapsed: Duration, concurrency: usize) {
        let ms = elapsed.as_secs_f64() * 1_000.0 / concurrency.max(1) as f64;
        self.host_ms_per_file = Some(match self.host_ms_per_file {
            Some(mean) => mean + SEAL_PACE_WEIGHT * (ms - mean),
            None => ms,
        });
    }

    /// Host time to write `n_hours` more hours at the pace seen; zero
    /// before any seal was seen.
    pub fn time_for(&self, n_hours: usize) -> Duration {
        Duration::from_secs_f64(self.host_ms_per_file.unwrap_or(0.0) * n_hours as f64 / 1_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_until_the_samples_span_enough_host_time() {
        let mut pace = ClockPace::default();
        pace.observe(0, 1_000_000);
        pace.observe(4_000, 5_000_000);
        assert_eq!(pace.rate(), None);
        assert_eq!(pace.host_time_until(5_000_000, 9_000_000), None);
        pace.observe(5_000, 6_000_000);
        assert_eq!(pace.rate(), Some(1.0));
    }

    #[test]
    fn a_simulated_clock_four_times_faster_gives_a_quarter_of_the_host_time() {
        let mut pace = ClockPace::default();
        for second in 0..10u64 {
            pace.observe(second * 1_000, second as i64 * 4_000_000);
        }
        assert_eq!(pace.rate(), Some(4.0));
        assert_eq!(
            pace.host_time_until(0, 120_000_000),
            Some(Duration::from_secs(30))
        );
        // A deadline already passed is reached now.
        assert_eq!(pace.host_time_until(10, 5), Some(Duration::ZERO));
    }

    #[test]
    fn samples_closer_than_the_spacing_are_skipped_and_the_window_is_bounded() {
        let mut pace = ClockPace::default();
        for ms in (0..200_000u64).step_by(100) {
            pace.observe(ms, ms as i64 * 1_000);
        }
        assert_eq!(pace.samples.len(), WINDOW);
        assert_eq!(pace.rate(), Some(1.0));
    }

    #[test]
    fn seal_pace_is_a_moving_average_per_file_of_the_seals_that_run_at_once() {
        let mut seals = SealPace::default();
        assert_eq!(seals.time_for(100), Duration::ZERO, "nothing seen yet");
        seals.observe(Duration::from_millis(40), 2);
        assert_eq!(seals.time_for(100), Duration::from_secs(2));
        // A slower seal moves the mean a fifth of the way towards it.
        seals.observe(Duration::from_millis(240), 2);
        assert_eq!(seals.time_for(10), Duration::from_millis(400));
        let mut pace = ClockPace::default();
        assert_eq!(pace.exchange_time_in(Duration::from_secs(1)), None);
        for second in 0..10u64 {
            pace.observe(second * 1_000, second as i64 * 3_000_000);
        }
        assert_eq!(
            pace.exchange_time_in(Duration::from_secs(2)),
            Some(6_000_000),
            "two host seconds at 3x are six exchange seconds"
        );
    }

    #[test]
    fn a_clock_that_does_not_move_has_no_rate() {
        let mut pace = ClockPace::default();
        for second in 0..10u64 {
            pace.observe(second * 1_000, 7_000_000);
        }
        assert_eq!(pace.rate(), None);
    }
}
