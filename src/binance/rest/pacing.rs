//! The pacing of REST calls: one [`Limiter`] shared by all clones of the
//! client, the wait for it before each call ([`RestClient::acquire`]), the
//! in-flight slot held until the answer is read ([`SendPermit`]), and what
//! callers may ask of it ([`Pacing`], the limit, the budget).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{RestClient, RestError};
use crate::binance::limiter::{BackoffStarted, Limiter, LimiterStats, SendId, Wait, WeightLimit};
use crate::domain::TimeUs;
use crate::metrics::Counters;

/// What a REST call would wait for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Nothing: it would go at once (or wait only for a free slot).
    Free,
    /// The weight budget of the current window is spent.
    BudgetSpent,
    /// A 429's or 418's back-off is in force.
    BackingOff,
}

/// The host clock as epoch µs, advancing with tokio's clock (monotonic, and
/// paused with it in tests).
#[derive(Debug, Clone, Copy)]
struct PacingClock {
    epoch_at_start: TimeUs,
    instant_at_start: Instant,
}

impl PacingClock {
    fn start() -> PacingClock {
        PacingClock {
            epoch_at_start: chrono::Utc::now().timestamp_micros(),
            instant_at_start: Instant::now(),
        }
    }

    fn now_us(&self) -> TimeUs {
        let elapsed =
            i64::try_from(self.instant_at_start.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.epoch_at_start.saturating_add(elapsed)
    }
}

#[derive(Debug)]
pub(super) struct Pacer {
    limiter: Mutex<Limiter>,
    clock: PacingClock,
    /// Woken when a request's answer arrives or it leaves the wire: callers
    /// waiting for a slot or for the probe ask the limiter again.
    answers: Notify,
}

impl Pacer {
    /// A pacer around `limiter`, its clock started now.
    pub(super) fn new(limiter: Limiter) -> Pacer {
        Pacer {
            limiter: Mutex::new(limiter),
            clock: PacingClock::start(),
            answers: Notify::new(),
        }
    }

    pub(super) fn limiter(&self) -> MutexGuard<'_, Limiter> {
        // The limiter holds plain counters; a panic elsewhere leaves them usable.
        self.limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A sent request's in-flight slot in the limiter. Dropping it (the answer
/// read, an error, or a cancelled future) frees the slot, so no state is
/// left claiming a request that is no longer on the wire.
pub(super) struct SendPermit {
    pacer: Arc<Pacer>,
    send: SendId,
}

impl SendPermit {
    /// The answer's headers: its status, `X-MBX-USED-WEIGHT-1M` and
    /// `Retry-After`. Returns the back-off a 429 or 418 started, if any.
    pub(super) fn headers(
        &self,
        status: u16,
        used_weight: Option<u32>,
        retry_after: Option<Duration>,
    ) -> Option<BackoffStarted> {
        let now = self.pacer.clock.now_us();
        let started =
            self.pacer
                .limiter()
                .on_headers(self.send, status, used_weight, retry_after, now);
        self.pacer.answers.notify_waiters();
        started
    }
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        let now = self.pacer.clock.now_us();
        self.pacer.limiter().on_done(self.send, now);
        self.pacer.answers.notify_waiters();
    }
}

impl RestClient {
    /// The weight limit in force (the default until `exchangeInfo` was read).
    pub fn weight_limit(&self) -> WeightLimit {
        self.pacer.limiter().limit()
    }

    /// The weight per window this client (and its clones) may use.
    pub fn weight_budget(&self) -> u32 {
        self.pacer.limiter().budget()
    }

    pub fn pacing_stats(&self) -> LimiterStats {
        self.pacer.limiter().stats()
    }

    /// Requests of this client and its clones on the wire now.
    pub fn n_in_flight(&self) -> usize {
        self.pacer.limiter().n_in_flight()
    }

    /// Why a call of `weight` would wait now, if it would (for the log that
    /// says why hours wait on REST).
    pub fn pacing_now(&self, weight: u32) -> Pacing {
        let now = self.pacer.clock.now_us();
        let limiter = self.pacer.limiter();
        if limiter.backoff_until(now).is_some() {
            Pacing::BackingOff
        } else if limiter.delay_before(weight, now).is_some() {
            Pacing::BudgetSpent
        } else {
            Pacing::Free
        }
    }

    /// Waits for the limiter to let a request of `weight` go: the weight
    /// budget, a back-off, the probe after one, a free in-flight slot.
    /// Cancellable: dropping the future leaves nothing behind.
    pub(super) async fn acquire(
        &self,
        weight: u32,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<SendPermit, RestError> {
        loop {
            // Registered before asking, so an answer in between is not missed.
            let answered = self.pacer.answers.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = self.pacer.clock.now_us();
            let attempt = self.pacer.limiter().try_send(weight, now);
            let out_of_time = |wait| RestError::OutOfTime {
                url: url.to_owned(),
                wait,
            };
            match attempt {
                Ok(send) => {
                    return Ok(SendPermit {
                        pacer: Arc::clone(&self.pacer),
                        send,
                    })
                }
                Err(Wait::For(wait)) => {
                    if deadline.is_some_and(|deadline| Instant::now() + wait > deadline) {
                        return Err(out_of_time(wait));
                    }
                    debug!(market = %self.market, wait_ms = wait.as_millis() as u64, weight, "rest call waits for the weight budget or a back-off");
                    tokio::time::sleep(wait).await;
                }
                Err(Wait::ForAnswer) => match deadline {
                    None => answered.await,
                    Some(deadline) => tokio::select! {
                        _ = &mut answered => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(out_of_time(Duration::ZERO));
                        }
                    },
                },
            }
        }
    }

    /// Logs a back-off once, when it starts, with its length.
    pub(super) fn log_backoff(&self, url: &str, started: BackoffStarted) {
        Counters::add(&self.counters.rest_backoffs, 1);
        let backoff_ms = u64::try_from(started.length.as_millis()).unwrap_or(u64::MAX);
        let retry_after_given = started.retry_after_given;
        if started.status == 418 {
            error!(market = %self.market, %url, status = started.status, backoff_ms, retry_after_given, "rest ip banned (418): no call until the ban ends");
        } else if started.status == 403 {
            warn!(market = %self.market, %url, status = started.status, backoff_ms, retry_after_given, "rest blocked by the firewall (403): no call until the back-off has passed");
        } else {
            warn!(market = %self.market, %url, status = started.status, backoff_ms, retry_after_given, "rest rate limited (429): no call until retry-after has passed");
        }
    }
}
