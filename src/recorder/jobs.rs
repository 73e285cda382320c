//! What the state asks the runtime to do, with no I/O: a [`Job`] seals an
//! hour ([`SealJob`]), runs a REST fill round ([`FillJob`], cut at its
//! deadline: [`past_deadline`]), or hands over a fill answered without
//! REST; and what a round answers ([`FillReport`]), written to the WAL
//! before the state applies it.

use serde::{Deserialize, Serialize};

use crate::binance::streams::{parse_stream_name, stream_name};
use crate::domain::{Hour, Market, Row, StreamKey, TimeUs, UnfilledRange};
use crate::gaps::{Hole, Settled};
use crate::recorder::judge::REASON_REST_BEHIND;
use crate::recorder::spill::HourRows;
use crate::wal::SegmentId;

/// One file to write: rows sorted and unique by key.
#[derive(Debug, Clone)]
pub struct SealJob {
    pub key: StreamKey,
    pub hour: Hour,
    /// Sorted and unique by key once merged; still packed, partly spilled
    /// to runs on disk (written a slice at a time).
    pub rows: HourRows,
    /// The segment the rows came from first, returned with a failure.
    pub first_segment: Option<SegmentId>,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    pub clock_offset_us: Option<i64>,
    /// The file's `unfilled` list; `None` keeps the list of the file on disk.
    pub unfilled: Option<Vec<UnfilledRange>>,
    /// The hour was sealed before: merge with the file on disk.
    pub late: bool,
    /// The delivery of a dated contract in this hour (its last), set by
    /// the runtime; `None` keeps what the file on disk says.
    pub delivered_at: Option<TimeUs>,
    /// A file written at an orderly stop for an hour not finished yet
    /// (exchange time of the stop): the next run finishes the hour and
    /// seals it again without this mark (`State::stop_seals`).
    pub stopped_at: Option<TimeUs>,
}

/// One REST fill round to run: the holes of a stream-hour.
#[derive(Debug, Clone)]
pub struct FillJob {
    pub key: StreamKey,
    pub hour: Hour,
    pub holes: Vec<Hole>,
    /// The exchange's clock as known now: klines closing before it are closed.
    pub closed_before: TimeUs,
    /// The holes are declared in a sealed file (a later retry).
    pub declared: bool,
    /// Exchange time at which the runtime cuts the round (running, or not
    /// started when queued) so that its hour seals with what is still open
    /// by its seal deadline ([`judge::round_cut_at`]: a reserve before
    /// it), and no REST wait holds a seal. `None` for declared retries,
    /// which hold no seal.
    ///
    /// [`judge::round_cut_at`]: crate::recorder::judge::round_cut_at
    pub deadline: Option<TimeUs>,
}

impl FillJob {
    /// Pure: whether the market's exchange clock has passed the round's
    /// deadline, so it must be cut (or, queued, not started).
    pub fn is_overdue(&self, exchange_now: Option<TimeUs>) -> bool {
        past_deadline(self.deadline, exchange_now)
    }
}

/// Pure: whether `exchange_now` has reached `deadline` (neither known: no).
pub fn past_deadline(deadline: Option<TimeUs>, exchange_now: Option<TimeUs>) -> bool {
    matches!((deadline, exchange_now), (Some(deadline), Some(now)) if now >= deadline)
}

/// What a fill round got. Written to the WAL before it is applied, so a
/// crash during a fill loses nothing, and replayed like frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillReport {
    pub market: String,
    pub stream: String,
    pub hour_start: TimeUs,
    pub declared: bool,
    /// Rows fetched, `source = rest`.
    pub rows: Vec<Row>,
    /// Key ranges REST answered for in full.
    pub settled: Vec<Settled>,
    /// Why a hole stayed open, when one did.
    pub failure: Option<String>,
    /// A leading part of a report too big for one WAL record: its rows and
    /// the settled ranges over their keys; the last part carries the
    /// failure and ends the round (see [`FillReport::into_parts`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rows_only: bool,
}

impl FillReport {
    pub fn new(
        job: &FillJob,
        rows: Vec<Row>,
        settled: Vec<Settled>,
        failure: Option<String>,
    ) -> FillReport {
        FillReport {
            market: job.key.market.name().to_owned(),
            stream: stream_name(&job.key.symbol, job.key.kind),
            hour_start: job.hour.start(),
            declared: job.declared,
            rows,
            settled,
            failure,
            rows_only: false,
        }
    }

    /// The report of a round that was still queued at its deadline: nothing
    /// fetched, the holes left to the seal as [`REASON_REST_BEHIND`]. It
    /// goes through the WAL like any report, so replay judges the same.
    pub fn not_started(job: &FillJob) -> FillReport {
        FillReport::new(
            job,
            Vec::new(),
            Vec::new(),
            Some(REASON_REST_BEHIND.to_owned()),
        )
    }

    /// The report cut into parts of at most `max_rows` rows, each small
    /// enough for one WAL record; only the last carries the failure and
    /// ends the round. The rows are cut in key order and each part carries
    /// the settled ranges over its own keys (from the key after the
    /// previous part's last row up to its own last row), so a part tells
    /// which keys REST did not serve from the rows it holds alone.
    pub fn into_parts(mut self, max_rows: usize) -> Vec<FillReport> {
        let max_rows = max_rows.max(1);
        if self.rows.len() <= max_rows {
            return vec![self];
        }
        self.rows.sort_by_key(Row::key);
        let mut settled = std::mem::take(&mut self.settled);
        let mut parts = Vec::new();
        while self.rows.len() > max_rows {
            let rest = self.rows.split_off(max_rows);
            let rows = std::mem::replace(&mut self.rows, rest);
            let last = rows.last().map(Row::key).unwrap_or(i64::MAX);
            parts.push(FillReport {
                market: self.market.clone(),
                stream: self.stream.clone(),
                hour_start: self.hour_start,
                declared: self.declared,
                rows,
                settled: take_through(&mut settled, last),
                failure: None,
                rows_only: true,
            });
        }
        self.settled = settled;
        parts.push(self);
        parts
    }

    pub fn key(&self) -> Option<StreamKey> {
        let market = Market::from_name(&self.market)?;
        let (symbol, kind) = parse_stream_name(&self.stream)?;
        Some(StreamKey {
            market,
            symbol,
            kind,
        })
    }
}

/// What the state asks the runtime to do.
#[derive(Debug)]
pub enum Job {
    Seal(SealJob),
    Fill(FillJob),
    /// A fill answered without REST (trade holes the aggTrade stream
    /// settles): written to the WAL and applied like a round's report.
    Answered(FillReport),
}

/// The parts of `settled` up to `last`, inclusive; `settled` keeps the rest.
fn take_through(settled: &mut Vec<Settled>, last: i64) -> Vec<Settled> {
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for range in settled.drain(..) {
        if range.from.is_some_and(|from| from > last) {
            kept.push(range);
            continue;
        }
        if range.to.is_none_or(|to| to > last) {
            kept.push(Settled {
                from: Some(last + 1),
                to: range.to,
            });
            taken.push(Settled {
                from: range.from,
                to: Some(last),
            });
        } else {
            taken.push(range);
        }
    }
    *settled = kept;
    taken
}
