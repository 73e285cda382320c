//! An orderly stop's files, with no I/O: for each hour of a stream from
//! the next to seal up to the stop's, a job with the rows held, the holes
//! found so far declared ([`REASON_STOPPED`]), the coverage up to the stop
//! and the mark `stopped_at`. So every hour the recorder watched has a file
//! while it is stopped (docs/DATASET.md); the next run replays the hour's
//! rows from the WAL, records on, fills, and seals the hour again without
//! the mark (the resume skips marked files: `startup.rs`).

use crate::config::FillConfig;
use crate::domain::{Hour, StreamKind, TimeUs, UnfilledRange};
use crate::recorder::jobs::SealJob;
use crate::recorder::judge::{
    judge_hour, FillStatus, HourFacts, MonoMs, Verdict, REASON_FILL_DISABLED, REASON_STOPPED,
};
use crate::seal::coverage;

use super::{make_job, StreamState, StreamTurn};

impl StreamState {
    /// The jobs of an orderly stop at `turn.exchange_now`, in hour order.
    /// The rows are moved into them: the state is not used after.
    pub(in crate::recorder) fn stop_seals(
        &mut self,
        turn: &StreamTurn,
        now: MonoMs,
    ) -> Vec<SealJob> {
        let stop_at = turn.exchange_now;
        let last = Hour::containing(stop_at);
        let mut hour = self.next_hour_to_seal.unwrap_or(turn.first_watched_hour);
        // Judged as with fill off: an open hole is then only "maybe", and
        // the coverage says how far the file vouches.
        let no_fill = FillConfig {
            enabled: false,
            ..turn.fill.clone()
        };
        let mut jobs = Vec::new();
        while hour <= last {
            if !self.is_writing(hour) {
                jobs.extend(self.stop_seal(hour, stop_at, turn, &no_fill, now));
            }
            hour = hour.next();
        }
        jobs
    }

    fn stop_seal(
        &mut self,
        hour: Hour,
        stop_at: TimeUs,
        turn: &StreamTurn,
        no_fill: &FillConfig,
        now: MonoMs,
    ) -> Option<SealJob> {
        let watched = coverage(&turn.market.spans, hour);
        // What the file can vouch for: up to the stop; for klines, up to
        // the open of the one still running at the stop (it had not closed:
        // not a hole, and not vouched for).
        let vouched_until = match turn.key.kind {
            StreamKind::Kline(interval) => interval.open_time_containing(stop_at),
            StreamKind::Trade | StreamKind::AggTrade => stop_at.saturating_add(1),
        };
        // A kline of an hour or more still running leaves its hours with
        // nothing to vouch for: they get their file all the same (marked,
        // vouching for nothing), as docs/DATASET.md promises every hour
        // the recorder is stopped in.
        let owed_until = self
            .owed_until(hour, watched, turn)?
            .min(vouched_until)
            .max(hour.start());
        let (holes, owed_from_start) = self.holes_of(hour, watched, owed_until, turn);
        let idle = FillStatus::default();
        let verdict = judge_hour(HourFacts {
            kind: turn.key.kind,
            hour,
            exchange_now: stop_at,
            now,
            deadline: stop_at,
            watched,
            holes,
            owed_from_start,
            status: self.fill_of(hour).unwrap_or(&idle),
            fill: no_fill,
            agg_hour_pending: false,
            owed_until,
        });
        let Verdict::Seal(sealing) = verdict else {
            return None;
        };
        let rows = self
            .hours
            .get_mut(&hour)
            .and_then(|state| state.rows.take());
        let mut job = make_job(turn.key, hour, rows, turn.market, false);
        if watched.is_some() || owed_from_start || job.rows.is_empty() {
            job.coverage_from = sealing.coverage_from;
            job.coverage_to = sealing.coverage_to;
        }
        job.coverage_to = job.coverage_to.min(owed_until).max(job.coverage_from);
        let unfilled: Vec<UnfilledRange> = sealing
            .unfilled
            .into_iter()
            .map(|mut range| {
                if range.reason == REASON_FILL_DISABLED {
                    range.reason = REASON_STOPPED.to_owned();
                }
                range
            })
            .collect();
        job.unfilled = Some(unfilled);
        job.stopped_at = Some(stop_at);
        Some(job)
    }
}
