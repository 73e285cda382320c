//! The simulated clock: `sim = sim_start + elapsed_real x speed`.
//!
//! Elapsed real time is read through `tokio::time::Instant`, so a test with
//! paused time moves the simulated clock by advancing tokio's clock.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    real_start: Instant,
    sim_start_us: i64,
    speed: f64,
}

impl SimClock {
    pub fn start(sim_start_us: i64, speed: f64) -> SimClock {
        SimClock {
            real_start: Instant::now(),
            sim_start_us,
            speed,
        }
    }

    pub fn sim_start_us(&self) -> i64 {
        self.sim_start_us
    }

    pub fn real_start(&self) -> Instant {
        self.real_start
    }

    /// Simulated now, epoch µs.
    pub fn now_us(&self) -> i64 {
        self.sim_at(Instant::now())
    }

    /// Simulated time at a real instant.
    pub fn sim_at(&self, instant: Instant) -> i64 {
        let elapsed = instant.saturating_duration_since(self.real_start);
        let simulated_elapsed_us = elapsed.as_nanos() as f64 * self.speed / 1000.0;
        self.sim_start_us + simulated_elapsed_us as i64
    }

    /// The real instant at which the simulated clock reaches `sim_us` (never before start).
    pub fn instant_of(&self, sim_us: i64) -> Instant {
        let simulated_ahead_us = (sim_us - self.sim_start_us).max(0) as f64;
        // Round up so that at the returned instant `now_us() >= sim_us` holds.
        let real_nanos = (simulated_ahead_us * 1000.0 / self.speed).ceil() + 1.0;
        self.real_start + Duration::from_nanos(real_nanos.min(u64::MAX as f64 / 2.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time_times_speed() {
        let clock = SimClock::start(1_000_000, 60.0);
        assert_eq!(clock.now_us(), 1_000_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_us(), 61_000_000);
        let target = 121_000_000;
        let instant = clock.instant_of(target);
        assert!(clock.sim_at(instant) >= target);
        assert!(clock.sim_at(instant) <= target + 1);
    }
}
