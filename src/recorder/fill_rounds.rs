//! The fill rounds the runtime runs: at most `fill.max_concurrent_rounds`
//! at once, the rest queued (hours waiting to seal before declared retries),
//! each held to its hour's deadline in exchange time (cut when running, not
//! started when queued), and every report written to the WAL before the
//! state sees it. One round itself is in `fill.rs`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::Runtime;
use crate::binance::rest::{Pacing, RestClient, RetryPolicy};
use crate::domain::{Hour, Market, StreamKey, StreamKind, TimeUs};
use crate::metrics::Counters;
use crate::recorder::fill;
use crate::recorder::records::{fill_record, FILL_RECORD_MAX_ROWS};
use crate::recorder::state::{self, FillJob, FillReport};

/// A fill round running: which stream-hour it serves, and how to cut it.
pub(super) struct RunningFill {
    key: StreamKey,
    hour: Hour,
    declared: bool,
    /// The hour's deadline in exchange time (see [`FillJob::deadline`]).
    deadline: Option<TimeUs>,
    /// Fired at the deadline: the round stops and reports what it has.
    cut: CancellationToken,
    started: Instant,
}

/// Hours waiting on REST are logged at most this often (real time), so a
/// long REST outage does not flood the log.
pub(super) const FILL_WAITS_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Runtime {
    /// The queued round to start next: the oldest one whose hour waits to
    /// seal (it has a deadline), else the oldest declared retry. Declared
    /// retries fill every free slot, but never hold one a seal needs first.
    pub(super) fn next_queued_fill(&mut self) -> Option<FillJob> {
        let index = self
            .fill_queue
            .iter()
            .position(|job| job.deadline.is_some())
            .unwrap_or(0);
        self.fill_queue.remove(index)
    }

    /// Starts a fill round, or queues it while `fill.max_concurrent_rounds`
    /// run (the queue holds at most one round per stream-hour: the state
    /// marks each in flight until its report comes back).
    pub(super) fn start_fill(&mut self, job: FillJob) {
        if self.fills.len() >= self.config.fill.max_concurrent_rounds {
            self.fill_queue.push_back(job);
            Counters::raise(
                &self.counters.fill_rounds_queued_max,
                self.fill_queue.len() as u64,
            );
            return;
        }
        let Some(rest) = self.rest_clients.get(&job.key.market).cloned() else {
            return;
        };
        let cut = CancellationToken::new();
        let retry = RetryPolicy {
            max_attempts: self.config.fill.max_attempts,
            deadline: self.host_deadline(&job),
            cancel: Some(cut.clone()),
            max_rows: Some(round_max_rows(self.config.max_held_bytes)),
            ..RetryPolicy::default()
        };
        let running = RunningFill {
            key: job.key.clone(),
            hour: job.hour,
            declared: job.declared,
            deadline: job.deadline,
            cut,
            started: Instant::now(),
        };
        let handle = self.fills.spawn(fill::run_fill(rest, job, retry));
        self.fill_tasks.insert(handle.id(), running);
    }

    /// Samples each market's exchange clock for [`ClockPace`](super::pace::ClockPace).
    pub(super) fn observe_paces(&mut self) {
        let now = self.now_ms();
        for market in self.rest_clients.keys() {
            if let Some(exchange_now) = self.state.exchange_time(*market) {
                self.paces
                    .entry(*market)
                    .or_default()
                    .observe(now, exchange_now);
            }
        }
    }

    /// The host instant the exchange clock reaches `job`'s deadline at its
    /// measured pace: a weight wait past it fails at once
    /// ([`RestError::OutOfTime`](crate::binance::rest::RestError::OutOfTime)) and the
    /// hour seals declared now, rather than all such hours at the deadline.
    /// `None` (no early give-up) for declared retries or before the pace is
    /// known; the deadline itself is held by [`Runtime::cut_overdue_fills`].
    fn host_deadline(&self, job: &FillJob) -> Option<Instant> {
        let deadline = job.deadline?;
        let exchange_now = self.state.exchange_time(job.key.market)?;
        let ahead = self
            .paces
            .get(&job.key.market)?
            .host_time_until(exchange_now, deadline)?;
        // A page sent just before the cut is wasted, and the hour still has
        // to be written: a tenth of the time left is kept for both. The
        // measured pace lags when the loop is busy, which errs late.
        Some(Instant::now() + ahead.mul_f64(0.9))
    }

    /// The market's exchange clock as the cuts read it: moved on by the
    /// time it takes to write every hour that waits on a round (at the
    /// pace seals were seen to go, [`SealPace`](super::pace::SealPace)),
    /// so that when many rounds meet their deadlines together, their hours
    /// are all written by the seal deadline rather than in one burst after
    /// it. Never more than a quarter of the fill window ahead.
    fn cut_clock(&self, market: Market) -> Option<TimeUs> {
        let exchange_now = self.state.exchange_time(market)?;
        let n_hours = self.fill_tasks.len() + self.fill_queue.len();
        let reserve = self
            .paces
            .get(&market)
            .and_then(|pace| pace.exchange_time_in(self.seal_pace.time_for(n_hours)))
            .unwrap_or(0)
            .min(self.config.fill.deadline_us / 4);
        Some(exchange_now.saturating_add(reserve))
    }

    /// Holds every round to its hour's deadline, checked against the
    /// market's exchange clock (the clock hours seal on, read by
    /// [`Runtime::cut_clock`]): a running round is cut and reports what it
    /// fetched; a queued one is not started and reports nothing, so its
    /// hour is judged again and sealed with its holes declared (then
    /// retried as declared holes, or by `backfill`).
    pub(super) fn cut_overdue_fills(&mut self) {
        let clocks: HashMap<Market, Option<TimeUs>> = self
            .rest_clients
            .keys()
            .map(|market| (*market, self.cut_clock(*market)))
            .collect();
        let clock = |market: Market| clocks.get(&market).copied().flatten();
        for running in self.fill_tasks.values_mut() {
            let exchange_now = clock(running.key.market);
            if state::past_deadline(running.deadline, exchange_now) && !running.cut.is_cancelled() {
                running.cut.cancel();
                Counters::add(&self.counters.fill_rounds_cut, 1);
                debug!(key = %running.key, hour = %running.hour, running_ms = running.started.elapsed().as_millis() as u64, "fill round cut at its deadline; its rows are kept, the rest declared");
            }
        }
        let (overdue, waiting): (std::collections::VecDeque<FillJob>, _) =
            std::mem::take(&mut self.fill_queue)
                .into_iter()
                .partition(|job| job.is_overdue(clock(job.key.market)));
        self.fill_queue = waiting;
        for job in overdue {
            Counters::add(&self.counters.fill_rounds_cut, 1);
            debug!(key = %job.key, hour = %job.hour, "fill round still queued at its deadline; not started");
            self.queue_fill_report(FillReport::not_started(&job));
        }
    }

    /// Says, at most every [`FILL_WAITS_LOG_INTERVAL`], how many hours wait
    /// on REST, for which streams (counted by kind, with a few names), and
    /// why: the queue is full (every `fill.max_concurrent_rounds` slot is
    /// busy), the weight budget of the window is spent, a 429's back-off is
    /// in force, or REST is slow to answer. One line, however many streams.
    pub(super) fn log_fill_waits(&mut self) {
        if self.fill_tasks.is_empty() && self.fill_queue.is_empty() {
            return;
        }
        if self
            .fill_waits_logged_at
            .is_some_and(|at| at.elapsed() < FILL_WAITS_LOG_INTERVAL)
        {
            return;
        }
        self.fill_waits_logged_at = Some(Instant::now());
        let n_rounds_running = self.fill_tasks.len();
        let n_rounds_queued = self.fill_queue.len();
        let waiting: Vec<(&StreamKey, bool)> = self
            .fill_tasks
            .values()
            .map(|running| (&running.key, running.declared))
            .chain(self.fill_queue.iter().map(|job| (&job.key, job.declared)))
            .collect();
        let n_declared_retries = waiting.iter().filter(|(_, declared)| *declared).count();
        let n_of_kind = |wanted: fn(StreamKind) -> bool| {
            waiting
                .iter()
                .filter(|(key, declared)| !declared && wanted(key.kind))
                .count()
        };
        let n_trade = n_of_kind(|kind| kind == StreamKind::Trade);
        let n_agg_trade = n_of_kind(|kind| kind == StreamKind::AggTrade);
        let n_kline = n_of_kind(|kind| matches!(kind, StreamKind::Kline(_)));
        let examples: Vec<String> = waiting
            .iter()
            .filter(|(_, declared)| !declared)
            .take(3)
            .map(|(key, _)| key.to_string())
            .collect();
        let oldest_round_ms = self
            .fill_tasks
            .values()
            .map(|running| running.started.elapsed().as_millis() as u64)
            .max()
            .unwrap_or(0);
        let n_rest_requests_in_flight: usize = self
            .rest_clients
            .values()
            .map(RestClient::n_in_flight)
            .sum();
        let pacing: Vec<Pacing> = self
            .rest_clients
            .values()
            .map(|rest| rest.pacing_now(1))
            .collect();
        let why = if pacing.contains(&Pacing::BackingOff) {
            "back-off: REST answered 429 or 418, no call until Retry-After has passed"
        } else if pacing.contains(&Pacing::BudgetSpent) && n_rounds_queued > 0 {
            "weight budget: fill.weight_share of this window's limit is spent, and the queue is full"
        } else if pacing.contains(&Pacing::BudgetSpent) {
            "weight budget: fill.weight_share of this window's limit is spent"
        } else if n_rounds_queued > 0 {
            "queue full: every fill.max_concurrent_rounds slot is busy with slow REST answers"
        } else {
            "REST answers: rounds wait for pages in flight"
        };
        info!(
            n_hours_waiting = self.state.n_hours_waiting_on_fill(),
            n_trade,
            n_agg_trade,
            n_kline,
            streams = %examples.join(","),
            n_rounds_running,
            n_rounds_queued,
            n_declared_retries,
            oldest_round_ms,
            n_rest_requests_in_flight,
            rest_calls = self.counters.rest_calls.get(),
            rest_weight_used = self.counters.rest_weight_used.get(),
            why,
            "hours wait on REST fill rounds; each is cut at its fill deadline"
        );
    }

    /// Queues a fill report for the WAL: the state sees it once durable.
    pub(super) fn queue_fill_report(&mut self, report: FillReport) {
        for part in report.into_parts(FILL_RECORD_MAX_ROWS) {
            self.pending.push(fill_record(&part));
        }
    }

    /// A fill round ended: its report goes through the WAL like a frame and
    /// reaches the state once durable.
    pub(super) fn finish_fill(
        &mut self,
        joined: Result<(tokio::task::Id, FillReport), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, report)) => {
                self.fill_tasks.remove(&id);
                if let Some(failure) = &report.failure {
                    debug!(stream = %report.stream, hour_start = report.hour_start, %failure, n_rows = report.rows.len(), "fill round left holes open");
                }
                self.queue_fill_report(report);
            }
            Err(error) => {
                error!(%error, "fill task failed; retried later");
                if let Some(running) = self.fill_tasks.remove(&error.id()) {
                    let now = self.now_ms();
                    self.state
                        .fill_lost(&running.key, running.hour, running.declared, now);
                }
            }
        }
    }
}

/// The rows one fill round may hold before its report takes them to the
/// WAL and the state, where the memory budget counts and spills them: an
/// eighth of the budget as `Row`s (the rows fetched, then made into
/// `Row`s, then the WAL records), and at least one WAL record's worth.
/// A whole hour missing from a busy stream is then fetched in several
/// rounds, each starting where the last one's rows end (the state's holes
/// are the gaps between the rows it holds; a declared hole is settled up
/// to the last row fetched, see `fill::run_fill`).
pub(crate) fn round_max_rows(max_held_bytes: u64) -> usize {
    let rows = max_held_bytes / 8 / std::mem::size_of::<crate::domain::Row>() as u64;
    usize::try_from(rows)
        .unwrap_or(usize::MAX)
        .max(FILL_RECORD_MAX_ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_rows_are_an_eighth_of_the_budget_and_at_least_one_record() {
        const MIB: u64 = 1 << 20;
        // 128-byte rows.
        assert_eq!(round_max_rows(16 * MIB), 16_384);
        assert_eq!(round_max_rows(256 * MIB), 262_144);
        assert_eq!(round_max_rows(MIB), FILL_RECORD_MAX_ROWS);
    }
}
