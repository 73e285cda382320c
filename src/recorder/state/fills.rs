//! The state's side of the fill rounds, with no I/O: a round's report
//! given back to its hours ([`State::apply_fill`]: its rows joined, what
//! REST answered deciding the next step for the holes, a declared hole's
//! list revised) and a round lost to a panic ([`State::fill_lost`]). A
//! child of `state.rs`, so it reads `State`'s fields without making them
//! any less private.

use tracing::{debug, warn};

use crate::domain::{Hour, Row, StreamKey, UnfilledRange};
use crate::metrics::Counters;
use crate::recorder::declared::{micros, millis, revise_declared, round_retry_at};
use crate::recorder::jobs::FillReport;
use crate::recorder::judge::{FillStatus, REASON_REST_BEHIND};
use crate::wal::SegmentId;

use super::{MonoMs, State};

impl State {
    /// Applies a durable fill report: its rows join the hour (a stream row
    /// wins over a REST row of the same key), and what REST answered
    /// decides the next step for the holes.
    pub fn apply_fill(&mut self, segment: SegmentId, report: FillReport, now: MonoMs) {
        self.wake.dirty = true;
        let Some(key) = report.key() else {
            warn!(market = %report.market, stream = %report.stream, "fill report of an unknown stream; skipped");
            return;
        };
        let hour = Hour::containing(report.hour_start);
        debug!(%key, %hour, n_rows = report.rows.len(), settled = ?report.settled, failure = ?report.failure, declared = report.declared, "fill report applied");
        let declared_rows: Vec<Row> = if report.declared {
            report.rows.clone()
        } else {
            Vec::new()
        };
        // (The last part of a report cut into parts may hold no rows when
        // earlier parts did: then an earlier failure stays the reason too.)
        let answered_nothing = report.rows.is_empty() && report.settled.is_empty();
        for row in report.rows {
            self.insert(key.clone(), row, segment);
        }
        let fill = self.fill.clone();
        let counters = self.counters.clone();
        let exchange_now = self.exchange_time(key.market).unwrap_or(0);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if report.declared {
            let Some(state) = stream.hours.get_mut(&hour) else {
                return;
            };
            let Some(declared) = state.declared.as_mut() else {
                return;
            };
            // Each part of a report answers for its own keys.
            let revised = revise_declared(
                key.kind,
                hour,
                &declared.unfilled,
                &report.settled,
                &declared_rows,
                report.failure.as_deref(),
            );
            let n_retryable =
                |list: &[UnfilledRange]| list.iter().filter(|range| range.is_retryable()).count();
            let n_filled = n_retryable(&declared.unfilled).saturating_sub(n_retryable(&revised));
            Counters::add(&counters.holes_filled_late, n_filled as u64);
            if revised != declared.unfilled {
                state.unfilled_changed = Some(revised.clone());
                declared.unfilled = revised;
                declared.answered = true;
            }
            if !report.rows_only {
                declared.in_flight = false;
                // A round that answered some and failed nothing stopped at
                // its row cap: the rest is asked for at once.
                let at_once = declared.answered && report.failure.is_none();
                declared.retry_at = if at_once {
                    exchange_now
                } else {
                    exchange_now.saturating_add(micros(fill.declared_retry))
                };
            }
            if n_retryable(&declared.unfilled) == 0 {
                state.declared = None;
                stream.drop_if_empty(hour);
            }
            return;
        }
        if stream.next_hour_to_seal.is_some_and(|next| hour < next) {
            return;
        }
        let status = stream
            .hour_mut(hour)
            .fill
            .get_or_insert_with(FillStatus::default);
        if report.rows_only {
            status.settled.extend(report.settled);
            return;
        }
        status.in_flight = false;
        status.n_rounds += 1;
        status.settled.extend(report.settled);
        match report.failure {
            Some(reason) if reason == REASON_REST_BEHIND => {
                Counters::add(&counters.fill_failures, 1);
                status.rest_behind = true;
                status.retry_at = now;
                // A round cut before any answer tells nothing new: an
                // earlier round's failure (REST down, say) stays the reason.
                if !(answered_nothing && status.last_failure.is_some()) {
                    status.last_failure = Some(reason);
                }
            }
            Some(reason) => {
                Counters::add(&counters.fill_failures, 1);
                status.retry_at = round_retry_at(&fill, status.n_rounds, now);
                status.last_failure = Some(reason);
            }
            None => status.retry_at = now,
        }
    }

    /// A fill task ended without a report (it panicked): try again later.
    pub fn fill_lost(&mut self, key: &StreamKey, hour: Hour, declared: bool, now: MonoMs) {
        self.wake.dirty = true;
        let retry_at = now.saturating_add(millis(self.fill.retry_max));
        let declared_retry_at = self
            .exchange_time(key.market)
            .unwrap_or(0)
            .saturating_add(micros(self.fill.declared_retry));
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        if declared {
            let entry = stream
                .hours
                .get_mut(&hour)
                .and_then(|state| state.declared.as_mut());
            if let Some(entry) = entry {
                entry.in_flight = false;
                entry.retry_at = declared_retry_at;
            }
        } else if let Some(status) = stream
            .hours
            .get_mut(&hour)
            .and_then(|state| state.fill.as_mut())
        {
            status.in_flight = false;
            status.retry_at = retry_at;
            status.last_failure = Some("fill task failed".to_owned());
        }
    }
}
