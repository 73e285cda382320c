//! The fixed weight window, the back-off a 429 starts and the IP ban that
//! calling during it earns (reference 5.1): [`WeightState`] per client (one:
//! loopback) and [`admit`], which charges a request's weight or says why not.

use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::shared::{lock, Shared};

/// Fixed-window request weight accounting and the ban state (one client IP: loopback).
#[derive(Debug)]
pub(crate) struct WeightState {
    window_start: Instant,
    window_index: u64,
    used: u32,
    /// After a 429, calls before this instant are answered 429 again, and
    /// past `Limits::calls_in_backoff_before_ban` of them earn a ban.
    backoff_until: Option<Instant>,
    calls_in_backoff: u32,
    banned_until: Option<Instant>,
    bans_so_far: u32,
    /// The most weight ever used in one window.
    pub used_max: u32,
}

impl WeightState {
    /// Windows of `window` on the host clock from `now` (the host clock
    /// then reading `host_now_us`): fixed windows that start at whole
    /// multiples of their length since the epoch, as "a 1-minute bucket
    /// resets at each whole minute" (reference 6).
    pub fn on_the_clock(now: Instant, host_now_us: i64, window: Duration) -> WeightState {
        let window_us = window.as_micros().max(1);
        let into_window = u128::from(host_now_us.unsigned_abs()) % window_us;
        let into_window = Duration::from_micros(u64::try_from(into_window).unwrap_or(0));
        WeightState::new(now.checked_sub(into_window).unwrap_or(now))
    }

    pub fn new(window_start: Instant) -> WeightState {
        WeightState {
            window_start,
            window_index: 0,
            used: 0,
            backoff_until: None,
            calls_in_backoff: 0,
            banned_until: None,
            bans_so_far: 0,
            used_max: 0,
        }
    }

    pub(super) fn roll_window(&mut self, now: Instant, window: Duration) {
        let index = (now.saturating_duration_since(self.window_start).as_nanos()
            / window.as_nanos().max(1)) as u64;
        if index != self.window_index {
            self.window_index = index;
            self.used = 0;
        }
    }

    pub(super) fn window_end(&self, window: Duration) -> Instant {
        self.window_start + window * (self.window_index as u32 + 1)
    }

    pub fn used(&mut self, now: Instant, window: Duration) -> u32 {
        self.roll_window(now, window);
        self.used
    }

    /// A 429 was answered (by the weight check or an injected fault): calls
    /// before `until` are calls inside its back-off.
    pub(super) fn start_backoff(&mut self, until: Instant) {
        if self.backoff_until.is_none_or(|current| current < until) {
            self.backoff_until = Some(until);
        }
    }

    /// Ends any back-off and ban in force (the ban history stays, so the
    /// next ban is still longer).
    pub fn forgive(&mut self) {
        self.backoff_until = None;
        self.calls_in_backoff = 0;
        self.banned_until = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Admitted,
    TooMuchWeight {
        retry_after_secs: u64,
    },
    Banned {
        retry_after_secs: u64,
        until_ms_hint: u64,
    },
}

fn seconds_until(now: Instant, later: Instant) -> u64 {
    // Whole seconds, rounded up and at least one, as in a Retry-After header.
    let remaining = later.saturating_duration_since(now);
    (remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0)).max(1)
}

pub(super) fn admit(shared: &Shared, weight: u32) -> (Admission, u32) {
    let limits = &shared.config.limits;
    let now = Instant::now();
    let mut state = lock(&shared.weight);
    state.roll_window(now, limits.weight_window);
    if let Some(banned_until) = state.banned_until {
        if now < banned_until {
            let retry_after_secs = seconds_until(now, banned_until);
            return (
                Admission::Banned {
                    retry_after_secs,
                    until_ms_hint: retry_after_secs * 1000,
                },
                state.used,
            );
        }
        state.banned_until = None;
    }
    if let Some(backoff_until) = state.backoff_until {
        if now < backoff_until {
            if state.calls_in_backoff < limits.calls_in_backoff_before_ban {
                // A request that was on the wire when the 429 went out, or a
                // client that did not listen yet: told again.
                state.calls_in_backoff += 1;
                return (
                    Admission::TooMuchWeight {
                        retry_after_secs: seconds_until(now, backoff_until),
                    },
                    state.used,
                );
            }
            // Calling again while told to back off earns an IP ban, longer each time.
            state.bans_so_far += 1;
            let doubling = 2u32.saturating_pow(state.bans_so_far - 1);
            let ban = limits
                .ban_duration
                .saturating_mul(doubling)
                .min(limits.max_ban_duration);
            state.banned_until = Some(now + ban);
            state.backoff_until = None;
            state.calls_in_backoff = 0;
            let retry_after_secs = seconds_until(now, now + ban);
            warn!(
                ban_secs = ban.as_secs_f64(),
                "rest client banned for calling during back-off"
            );
            return (
                Admission::Banned {
                    retry_after_secs,
                    until_ms_hint: retry_after_secs * 1000,
                },
                state.used,
            );
        }
        state.backoff_until = None;
        state.calls_in_backoff = 0;
    }
    if state.used.saturating_add(weight) > limits.weight_limit_per_minute {
        let window_end = state.window_end(limits.weight_window);
        state.start_backoff(window_end);
        return (
            Admission::TooMuchWeight {
                retry_after_secs: seconds_until(now, window_end),
            },
            state.used,
        );
    }
    state.used += weight;
    state.used_max = state.used_max.max(state.used);
    (Admission::Admitted, state.used)
}
