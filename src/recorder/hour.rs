//! One stream's hours, with no I/O: the life of each stream-hour
//! ([`HourState`]) and a stream's part of a planning walk
//! ([`StreamState::plan`], in `hour/plan.rs`): failed seals run again,
//! sealed hours resealed with late rows or a changed `unfilled` list,
//! declared holes retried and then given up, the due hours judged in order
//! ([`judge_hour`](crate::recorder::judge::judge_hour)), and when
//! the stream's verdicts next change by themselves. The state (`state.rs`)
//! owns the streams, feeds them rows and reports, and walks them.
//!
//! `HourState` is a struct of optional parts, not an enum of phases,
//! because an hour's phases overlap: a sealed hour can at once be written
//! again, hold late rows that wait for that write, have declared holes
//! being retried, and carry a changed `unfilled` list for its next reseal.
//! An enum would need a variant for each mix, or would lose one. Nor is
//! "sealed" the hour's own fact: it is the stream's, whose cursor
//! `next_hour_to_seal` moves past many hours at once (hours nobody
//! watched, a resume after the files on disk). Stored in each entry it
//! could disagree with the cursor; derived from it, it cannot. So each
//! part is present only while the hour needs it, and an entry with no part
//! left is removed ([`HourState::is_empty`]): after months of recording a
//! stream holds its unsealed hours and the few sealed ones still being
//! written or retried, nothing more.

mod plan;
mod stop;

use std::collections::BTreeMap;

use crate::domain::{Hour, Market, Row, StreamKey, StreamKind, Symbol, TimeUs, UnfilledRange};
use crate::gaps::IdAt;
use crate::recorder::budget::AggSpan;
use crate::recorder::clock::MarketState;
use crate::recorder::declared::Declared;
use crate::recorder::jobs::SealJob;
use crate::recorder::judge::FillStatus;
use crate::recorder::spill::HourRows;
use crate::seal::{coverage, Inserted};
use crate::wal::SegmentId;

pub(super) use plan::{StreamTurn, Walk};

/// Rows of an hour not in a file yet, and the WAL segment they pin.
#[derive(Debug)]
pub(super) struct OpenRows {
    /// In memory, and the runs spilled past the memory budget.
    pub(super) rows: HourRows,
    /// The oldest WAL segment holding one of these rows.
    pub(super) first_segment: SegmentId,
}

/// A file of the hour being written (its seal, or a reseal).
#[derive(Debug)]
pub(super) struct Writing {
    /// The oldest WAL segment the rows being written came from: kept
    /// until the file is on disk (`None`: the job holds no row).
    pub(super) pinned_segment: Option<SegmentId>,
    /// Heap the rows being written hold until the file is on disk (the
    /// job's rows in memory, runs on disk aside): still counted against
    /// the memory budget (`State::take_spills`).
    pub(super) held_bytes: usize,
    /// The write failed: the same job (rows, holes, coverage) runs again,
    /// and the hour stays in flight, pinning its segment, until it does.
    pub(super) failed_job: Option<SealJob>,
}

/// What one stream-hour still needs. Whether the hour is sealed is the
/// stream's to say (it is before `next_hour_to_seal`); each part here is
/// present only while needed (see the module doc).
#[derive(Debug, Default)]
pub(super) struct HourState {
    /// Rows not in a file yet: an unsealed hour's rows, or late rows (from
    /// the stream or REST) of a sealed hour, waiting for its reseal.
    pub(super) rows: Option<OpenRows>,
    /// Fill progress of an unsealed hour, from its first verdict until it
    /// seals, or until the stream's cursor passes it unsealed (a resume
    /// after the files on disk, a delivery): no verdict reads it then, and
    /// a report of it is ignored ([`StreamState::forget_fills_before`]).
    pub(super) fill: Option<FillStatus>,
    /// A file of the hour is being written.
    pub(super) writing: Option<Writing>,
    /// The holes its sealed file declares, retried now and then.
    pub(super) declared: Option<Declared>,
    /// A retry changed the sealed file's `unfilled` list: it is resealed
    /// with this one.
    pub(super) unfilled_changed: Option<Vec<UnfilledRange>>,
}

impl HourState {
    /// Nothing is left to do for the hour: its entry can go.
    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_none()
            && self.fill.is_none()
            && self.writing.is_none()
            && self.declared.is_none()
            && self.unfilled_changed.is_none()
    }

    pub(super) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// A run of its rows is being written to disk: the hour is neither
    /// judged nor sealed until it is (`spill_done` wakes the plan).
    pub(super) fn is_spilling(&self) -> bool {
        self.rows
            .as_ref()
            .is_some_and(|open| open.rows.is_spilling())
    }

    /// The oldest WAL segment the hour still needs: its rows' and the
    /// write's, whichever is older.
    pub(super) fn pinned_segment(&self) -> Option<SegmentId> {
        let rows = self.rows.as_ref().map(|open| open.first_segment);
        let writing = self
            .writing
            .as_ref()
            .and_then(|writing| writing.pinned_segment);
        rows.into_iter().chain(writing).min()
    }

    /// A seal of the hour, running or to come, will read its market's
    /// watch spans and clock offsets: they are kept while this holds.
    pub(super) fn needs_market_history(&self) -> bool {
        self.rows.is_some() || self.writing.is_some()
    }

    /// A sealed hour with late rows or a changed `unfilled` list, not
    /// being written and with no run being spilled: reseal it now.
    pub(super) fn wants_reseal(&self) -> bool {
        (self.rows.is_some() || self.unfilled_changed.is_some())
            && !self.is_writing()
            && !self.is_spilling()
    }

    /// Files `row`, met in WAL segment `segment`, with the hour's rows.
    pub(super) fn insert_row(
        &mut self,
        kind: StreamKind,
        row: Row,
        segment: SegmentId,
    ) -> Inserted {
        let open = self.rows.get_or_insert_with(|| OpenRows {
            rows: HourRows::new(kind),
            first_segment: segment,
        });
        open.first_segment = open.first_segment.min(segment);
        open.rows.insert(row)
    }

    /// A write of the hour starts, pinning `pinned_segment` until it ends.
    pub(super) fn start_writing(&mut self, pinned_segment: Option<SegmentId>, held_bytes: usize) {
        self.writing = Some(Writing {
            pinned_segment,
            held_bytes,
            failed_job: None,
        });
    }

    /// Heap the rows of a write in flight hold (0 when none is).
    pub(super) fn writing_held_bytes(&self) -> usize {
        self.writing
            .as_ref()
            .map_or(0, |writing| writing.held_bytes)
    }

    /// The write failed: `job` runs again as it was. The hour stays in
    /// flight; were it somehow not (only a planned job can fail), the
    /// job's own segment is pinned until it runs, the safe side.
    pub(super) fn write_failed(&mut self, job: SealJob) {
        let writing = self.writing.get_or_insert(Writing {
            pinned_segment: job.first_segment,
            held_bytes: job.rows.heap_bytes(),
            failed_job: None,
        });
        writing.failed_job = Some(job);
    }

    /// A failed write waiting to run again, taken out to run.
    fn take_failed_job(&mut self) -> Option<SealJob> {
        self.writing.as_mut()?.failed_job.take()
    }

    fn has_failed_job(&self) -> bool {
        self.writing
            .as_ref()
            .is_some_and(|writing| writing.failed_job.is_some())
    }
}

/// What one symbol's trade and aggTrade streams wait for each other on
/// (the aggTrade evidence for trade holes, see `budget`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SymbolGates {
    /// The next hour the aggTrade stream will seal, unless a fill round of
    /// that hour failed: its trade hours then ask REST themselves rather
    /// than wait out the deadline.
    pub(super) agg_next: Option<Hour>,
    /// The next hour the trade stream will seal.
    pub(super) trade_next: Option<Hour>,
}

/// Complete spot aggTrade hours kept as evidence for the same
/// symbol-hour's trade holes (see `budget`), until that trade hour seals.
pub(super) type AggEvidence = BTreeMap<(Market, Symbol, Hour), Vec<AggSpan>>;

/// Per-(market, stream, symbol) state.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// Hours before this one are sealed (or were never watched).
    pub(super) next_hour_to_seal: Option<Hour>,
    /// The last row of the sealed hours (carried over empty hours): the
    /// `before` of the next hour's gap detection.
    pub(super) last_sealed: Option<IdAt>,
    /// An hour of this stream was sealed (by this process or, read from
    /// disk, by an earlier one): the following hours are owed in full.
    pub(super) sealed_any: bool,
    /// The hours that still need something; none is empty.
    pub(super) hours: BTreeMap<Hour, HourState>,
    /// Rows and the newest event time seen since the runtime last took
    /// them ([`State::take_seen`](super::State::take_seen)): the stream's
    /// metrics and `/health`.
    pub(super) seen: Option<(u64, TimeUs)>,
}

impl StreamState {
    /// Counts a frame of the stream (`n_rows`: 0 for a kline update);
    /// whether it is the first since the runtime last took the counts.
    pub(super) fn note_seen(&mut self, n_rows: u64, event_time: TimeUs) -> bool {
        match &mut self.seen {
            Some((rows, newest)) => {
                *rows += n_rows;
                *newest = (*newest).max(event_time);
                false
            }
            None => {
                self.seen = Some((n_rows, event_time));
                true
            }
        }
    }

    /// The newest key held in memory (rows not in a file yet).
    pub(super) fn newest_key(&self) -> Option<i64> {
        self.hours
            .values()
            .rev()
            .find_map(|state| state.rows.as_ref()?.rows.last_key())
    }

    /// The hour's state, made when the stream holds none. A caller that
    /// may leave it empty calls [`StreamState::drop_if_empty`] after.
    pub(super) fn hour_mut(&mut self, hour: Hour) -> &mut HourState {
        self.hours.entry(hour).or_default()
    }

    /// Drops the fill status of every hour before `cursor`, which the
    /// stream's cursor is about to pass: no verdict reads one again, and
    /// one left in flight would count among the hours waiting on a fill
    /// for good.
    pub(super) fn forget_fills_before(&mut self, cursor: Hour) {
        let passed: Vec<Hour> = self
            .hours
            .range(..cursor)
            .filter(|(_, state)| state.fill.is_some())
            .map(|(hour, _)| *hour)
            .collect();
        for hour in passed {
            self.hour_mut(hour).fill = None;
            self.drop_if_empty(hour);
        }
    }

    /// Removes the hour's entry once nothing is left of it.
    pub(super) fn drop_if_empty(&mut self, hour: Hour) {
        if self.hours.get(&hour).is_some_and(HourState::is_empty) {
            self.hours.remove(&hour);
        }
    }

    pub(super) fn fill_of(&self, hour: Hour) -> Option<&FillStatus> {
        self.hours.get(&hour)?.fill.as_ref()
    }

    pub(super) fn rows_of(&self, hour: Hour) -> Option<&OpenRows> {
        self.hours.get(&hour)?.rows.as_ref()
    }

    pub(super) fn rows_mut(&mut self, hour: Hour) -> Option<&mut OpenRows> {
        self.hours.get_mut(&hour)?.rows.as_mut()
    }

    /// Heap the rows of the stream's writes in flight hold.
    pub(super) fn writing_held_bytes(&self) -> usize {
        self.hours.values().map(HourState::writing_held_bytes).sum()
    }

    /// The hours holding rows not in a file yet, oldest first.
    pub(super) fn open_rows(&self) -> impl Iterator<Item = (Hour, &OpenRows)> {
        self.hours
            .iter()
            .filter_map(|(hour, state)| Some((*hour, state.rows.as_ref()?)))
    }

    fn is_writing(&self, hour: Hour) -> bool {
        self.hours.get(&hour).is_some_and(HourState::is_writing)
    }

    /// The hours whose seal, running or to come, reads the market's watch
    /// spans and clock offsets, with the next hour to seal.
    pub(super) fn hours_needing_market_history(&self) -> impl Iterator<Item = Hour> + '_ {
        self.next_hour_to_seal.into_iter().chain(
            self.hours
                .iter()
                .filter(|(_, state)| state.needs_market_history())
                .map(|(hour, _)| *hour),
        )
    }
}

/// A job that seals `hour` with `open`'s rows (none: an empty file), the
/// coverage its market's watch spans give and the hour's clock offset.
pub(super) fn make_job(
    key: &StreamKey,
    hour: Hour,
    open: Option<OpenRows>,
    market: &MarketState,
    late: bool,
) -> SealJob {
    let (rows, first_segment) = match open {
        Some(open) => (open.rows, Some(open.first_segment)),
        None => (HourRows::new(key.kind), None),
    };
    let (coverage_from, coverage_to) = coverage(&market.spans, hour).unwrap_or_else(|| {
        // Rows from before the first watched moment (a trade stamped in the
        // previous hour that arrived first): vouch only for what we hold.
        let first = rows.first_id_at().map_or(hour.start(), |at| at.time);
        let last = rows.time_bounds().map_or(hour.start(), |(_, last)| last);
        (first.max(hour.start()), (last + 1).min(hour.end()))
    });
    let clock_offset_us = median(market.clock_offsets.get(&hour)).or(market.last_clock_offset);
    SealJob {
        key: key.clone(),
        hour,
        rows,
        first_segment,
        coverage_from,
        coverage_to,
        clock_offset_us,
        unfilled: None,
        late,
        delivered_at: None,
        stopped_at: None,
    }
}

fn median(samples: Option<&Vec<i64>>) -> Option<i64> {
    let mut sorted = samples?.clone();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_unstable();
    Some(sorted[sorted.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TimeUs;

    const HOUR_START: TimeUs = 1_723_161_600_000_000;

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn trade_key() -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::Trade,
        }
    }

    fn trade(id: i64) -> Row {
        Row::test_trade(id, HOUR_START + id)
    }

    /// An hour holding `ids`, met in WAL segment `segment`.
    fn hour_with_rows(ids: &[i64], segment: u64) -> HourState {
        let mut state = HourState::default();
        for id in ids {
            state.insert_row(StreamKind::Trade, trade(*id), SegmentId(segment));
        }
        state
    }

    /// A seal job of the hour with `ids`, as the walk makes one.
    fn seal_job(ids: &[i64], segment: u64) -> SealJob {
        let state = hour_with_rows(ids, segment);
        make_job(
            &trade_key(),
            hour(),
            state.rows,
            &MarketState::default(),
            false,
        )
    }

    fn declared() -> Declared {
        Declared::new(Vec::new(), 0)
    }

    #[test]
    fn an_hour_is_empty_only_with_no_part_left() {
        assert!(HourState::default().is_empty());
        let with_each_part = [
            hour_with_rows(&[1], 1),
            HourState {
                fill: Some(FillStatus::default()),
                ..HourState::default()
            },
            HourState {
                writing: Some(Writing {
                    pinned_segment: None,
                    held_bytes: 0,
                    failed_job: None,
                }),
                ..HourState::default()
            },
            HourState {
                declared: Some(declared()),
                ..HourState::default()
            },
            HourState {
                unfilled_changed: Some(Vec::new()),
                ..HourState::default()
            },
        ];
        for state in &with_each_part {
            assert!(!state.is_empty(), "{state:?}");
        }
    }

    #[test]
    fn rows_pin_their_oldest_segment_and_a_write_its_own() {
        let mut state = hour_with_rows(&[1, 2], 5);
        state.insert_row(StreamKind::Trade, trade(3), SegmentId(3));
        state.insert_row(StreamKind::Trade, trade(4), SegmentId(9));
        assert_eq!(state.pinned_segment(), Some(SegmentId(3)));
        assert!(state.needs_market_history());

        // Being written from segment 2, with late rows from segment 3.
        state.start_writing(Some(SegmentId(2)), 0);
        assert!(state.is_writing());
        assert_eq!(state.pinned_segment(), Some(SegmentId(2)));

        // A write that holds no row pins nothing; nor does an empty hour.
        let mut empty_file = HourState::default();
        empty_file.start_writing(None, 0);
        assert!(empty_file.needs_market_history());
        assert_eq!(empty_file.pinned_segment(), None);
        assert_eq!(HourState::default().pinned_segment(), None);
        assert!(!HourState::default().needs_market_history());
    }

    #[test]
    fn a_failed_write_stays_in_flight_and_runs_again_once() {
        let mut state = HourState::default();
        state.start_writing(Some(SegmentId(4)), 0);
        state.write_failed(seal_job(&[1], 7));
        assert!(state.has_failed_job());
        assert_eq!(
            state.pinned_segment(),
            Some(SegmentId(4)),
            "the running write's pin stays"
        );
        assert!(state.take_failed_job().is_some());
        assert!(state.take_failed_job().is_none(), "taken once");
        assert!(state.is_writing(), "in flight until it finishes");

        // Only a planned job can fail; were one not in flight, its rows'
        // segment is pinned until it runs.
        let mut not_writing = HourState::default();
        not_writing.write_failed(seal_job(&[1], 7));
        assert_eq!(not_writing.pinned_segment(), Some(SegmentId(7)));
    }

    #[test]
    fn a_sealed_hour_is_resealed_for_late_rows_or_a_new_list_when_not_being_written() {
        assert!(!HourState::default().wants_reseal());
        assert!(hour_with_rows(&[1], 1).wants_reseal());
        let changed = HourState {
            unfilled_changed: Some(Vec::new()),
            ..HourState::default()
        };
        assert!(changed.wants_reseal());
        let declared_only = HourState {
            declared: Some(declared()),
            ..HourState::default()
        };
        assert!(!declared_only.wants_reseal(), "its holes are retried first");
        let mut writing = hour_with_rows(&[1], 1);
        writing.start_writing(None, 0);
        assert!(!writing.wants_reseal(), "late rows wait for the write");
    }

    #[test]
    fn a_stream_drops_an_hour_only_when_nothing_is_left_of_it() {
        let mut stream = StreamState::default();
        stream.hour_mut(hour()).start_writing(None, 0);
        stream.hour_mut(hour()).declared = Some(declared());
        stream
            .hour_mut(hour().next())
            .insert_row(StreamKind::Trade, trade(1), SegmentId(1));

        stream.hours.get_mut(&hour()).expect("held").writing = None;
        stream.drop_if_empty(hour());
        assert!(
            stream.hours.contains_key(&hour()),
            "its declared holes remain"
        );
        stream.hours.get_mut(&hour()).expect("held").declared = None;
        stream.drop_if_empty(hour());
        stream.drop_if_empty(hour().next());
        assert_eq!(
            stream.hours.keys().copied().collect::<Vec<_>>(),
            vec![hour().next()]
        );

        // Looking at an hour makes no entry.
        assert!(stream.fill_of(hour()).is_none());
        assert!(stream.rows_mut(hour()).is_none());
        assert!(!stream.hours.contains_key(&hour()));
    }

    #[test]
    fn the_newest_key_and_the_next_rows_come_from_the_hours_holding_rows() {
        let mut stream = StreamState::default();
        stream
            .hour_mut(hour())
            .insert_row(StreamKind::Trade, trade(5), SegmentId(1));
        stream.hour_mut(hour().next()).start_writing(None, 0);
        assert_eq!(
            stream.newest_key(),
            Some(5),
            "an hour being written holds no row"
        );
        let open: Vec<Hour> = stream.open_rows().map(|(hour, _)| hour).collect();
        assert_eq!(open, vec![hour()]);
        stream.next_hour_to_seal = Some(hour());
        let needing: Vec<Hour> = stream.hours_needing_market_history().collect();
        assert_eq!(needing, vec![hour(), hour(), hour().next()]);
    }
}
