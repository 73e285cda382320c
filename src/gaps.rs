//! Gap detection: where the rows of one stream-hour have holes. Pure
//! functions over ids, open times and times passed in; no I/O, no clock.
//!
//! # Trades and aggTrades
//!
//! Ids of one (market, symbol) stream normally increase by one (reference
//! section 7). A jump of more than one between two known ids `a < b` is a
//! hole `[a + 1, b - 1]`. The ids are a set: duplicates and rows that arrive
//! out of order are not holes, so the functions sort and deduplicate their
//! input themselves.
//!
//! A stream-hour is judged together with what is known around it: the last
//! id before the hour's rows (`before`, typically the previous hour's last
//! id) and the first id after them (`after`, the next hour's first id). When
//! one of them is unknown, the hole at that end is *open*: its id bound is
//! `None` and only its time bound is known (the hour's start or end). That is
//! how a disconnect at the end of an hour, or a first start in the middle of
//! one, becomes a hole the fill can probe REST for by time or by id.
//!
//! # Klines
//!
//! Every open time on the interval's grid in a span must have a closed
//! kline; missing open times are holes, consecutive ones merged into one
//! range. (A halted symbol legitimately has none: telling that apart is the
//! fill's job, from what REST answers.)

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::{Hour, KlineInterval, StreamKind, TimeUs, UnfilledRange};

/// An inclusive range of missing ids, `first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdRange {
    pub first: i64,
    pub last: i64,
}

impl IdRange {
    /// How many ids the range holds (saturating: the whole i64 range is
    /// one more than `u64::MAX`).
    pub fn n_ids(self) -> u64 {
        self.last.abs_diff(self.first).saturating_add(1)
    }

    pub fn contains(self, id: i64) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

/// The missing ids between `before` and `after` (both exclusive, each
/// `None` when unknown) given the ids held. `ids` may be in any order and
/// hold duplicates. Ids at or below `before`, or at or above `after`, are
/// outside the span and ignored. Only holes bounded by known ids on both
/// sides are returned; see [`id_holes_in_hour`] for the open ends.
pub fn id_holes(ids: &[i64], before: Option<i64>, after: Option<i64>) -> Vec<IdRange> {
    let mut known: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| {
            before.is_none_or(|before| *id > before) && after.is_none_or(|after| *id < after)
        })
        .collect();
    known.sort_unstable();
    known.dedup();
    let chain = before.into_iter().chain(known).chain(after);
    let mut holes = Vec::new();
    let mut previous: Option<i64> = None;
    for id in chain {
        if let Some(previous) = previous {
            // `before < after` is not guaranteed by the caller; a bound that
            // goes backwards closes nothing.
            if id > previous.saturating_add(1) {
                holes.push(IdRange {
                    first: previous + 1,
                    last: id - 1,
                });
            }
        }
        previous = Some(previous.map_or(id, |previous| previous.max(id)));
    }
    holes
}

/// A row's id with its trade time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdAt {
    pub id: i64,
    pub time: TimeUs,
}

/// A hole in a trade or aggTrade stream-hour.
///
/// `from_id` / `to_id` are inclusive; `None` means the exchange never told
/// us the id (an open end: nothing known before the hour's rows, or nothing
/// after them). `from_time` / `to_time` bound the missing rows' trade times,
/// inclusive, clamped to the hour: the time of the row before the hole and
/// of the row after it (ids are issued in time order, so every missing row
/// lies between them), or the hour's start / last µs at an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdHole {
    pub from_id: Option<i64>,
    pub to_id: Option<i64>,
    pub from_time: TimeUs,
    pub to_time: TimeUs,
}

impl IdHole {
    /// Both ends are known ids.
    pub fn is_closed(&self) -> bool {
        self.from_id.is_some() && self.to_id.is_some()
    }

    /// The hole as listed in a file's `unfilled` metadata.
    pub fn unfilled(&self, reason: &str) -> UnfilledRange {
        UnfilledRange {
            from: self.from_id,
            to: self.to_id,
            from_time: self.from_time,
            to_time: self.to_time,
            reason: reason.to_owned(),
        }
    }
}

/// Ids held without a gap: every id from `first.id` to `last.id` is
/// held, and `first` and `last` carry their rows' trade times (the only
/// times a hole next to the span is bounded by). An hour's rows are judged
/// as spans, so rows spilled to disk are judged by their spans alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpan {
    pub first: IdAt,
    pub last: IdAt,
}

impl IdSpan {
    pub fn of(at: IdAt) -> IdSpan {
        IdSpan {
            first: at,
            last: at,
        }
    }

    /// The part of the span from `lowest` to `highest` (inclusive ids),
    /// if any. A cut end keeps the time of the end it replaces: it lies next
    /// to the bound that cut it, so no hole is ever bounded by that time.
    fn clipped(self, lowest: i64, highest: i64) -> Option<IdSpan> {
        if self.last.id < lowest || self.first.id > highest || lowest > highest {
            return None;
        }
        let first = IdAt {
            id: self.first.id.max(lowest),
            time: self.first.time,
        };
        let last = IdAt {
            id: self.last.id.min(highest),
            time: self.last.time,
        };
        Some(IdSpan { first, last })
    }
}

/// Builds spans from keys, appending each to `spans` in order: a key next
/// to (or inside) the last span extends it. For a duplicated id the
/// earliest time is kept, as [`id_holes_in_hour`] does.
pub fn extend_spans(spans: &mut Vec<IdSpan>, at: IdAt) {
    match spans.last_mut() {
        Some(span) if at.id >= span.first.id && at.id <= span.last.id.saturating_add(1) => {
            if at.id == span.first.id {
                span.first.time = span.first.time.min(at.time);
            }
            if at.id > span.last.id {
                span.last = at;
            } else if at.id == span.last.id {
                span.last.time = span.last.time.min(at.time);
            }
        }
        _ => spans.push(IdSpan::of(at)),
    }
}

/// Spans of any keys (any order, duplicates allowed), sorted and merged:
/// spans that overlap or touch become one.
pub fn id_spans(rows: &[IdAt]) -> Vec<IdSpan> {
    let mut sorted = rows.to_vec();
    sorted.sort_unstable_by_key(|row| (row.id, row.time));
    spans_of_sorted(sorted)
}

/// Spans of keys already in key order (duplicates allowed).
pub fn spans_of_sorted(keys: impl IntoIterator<Item = IdAt>) -> Vec<IdSpan> {
    let mut spans = Vec::new();
    for at in keys {
        extend_spans(&mut spans, at);
    }
    spans
}

/// Spans from several sources (the hour's rows in memory and each run
/// spilled to disk), sorted and merged.
pub fn merge_spans(mut spans: Vec<IdSpan>) -> Vec<IdSpan> {
    spans.sort_unstable_by_key(|span| (span.first.id, span.first.time));
    let mut merged: Vec<IdSpan> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.first.id <= last.last.id.saturating_add(1) => {
                if span.last.id > last.last.id
                    || (span.last.id == last.last.id && span.last.time < last.last.time)
                {
                    last.last = span.last;
                }
            }
            _ => merged.push(span),
        }
    }
    merged
}

/// The holes of one trade or aggTrade stream-hour.
///
/// `rows` are the ids held for the hour with their trade times (any order,
/// duplicates allowed; for a duplicated id the earliest time is used).
/// `before` is the last row known before them and `after` the first row known
/// after them; either may lie in another hour. An unknown `before` gives an
/// open hole from the hour's start to the first row, an unknown `after` one
/// from the last row to the hour's end: whether something is missing there
/// only REST can say. With no rows and neither bound the whole hour is one
/// open hole.
pub fn id_holes_in_hour(
    hour: Hour,
    rows: &[IdAt],
    before: Option<IdAt>,
    after: Option<IdAt>,
) -> Vec<IdHole> {
    id_holes_in_spans(hour, &id_spans(rows), before, after)
}

/// [`id_holes_in_hour`] of rows given as spans (any order; overlapping
/// spans are merged first).
pub fn id_holes_in_spans(
    hour: Hour,
    spans: &[IdSpan],
    before: Option<IdAt>,
    after: Option<IdAt>,
) -> Vec<IdHole> {
    let hour_last = hour.end() - 1;
    let clamp = |time: TimeUs| time.clamp(hour.start(), hour_last);
    let lowest = before.map_or(i64::MIN, |before| before.id.saturating_add(1));
    let highest = after.map_or(i64::MAX, |after| after.id.saturating_sub(1));
    let known: Vec<IdSpan> = merge_spans(spans.to_vec())
        .into_iter()
        .filter_map(|span| span.clipped(lowest, highest))
        .collect();

    let mut holes = Vec::new();
    let bounded_hole = |lower: IdAt, upper: IdAt| {
        let (early, late) = (lower.time.min(upper.time), lower.time.max(upper.time));
        IdHole {
            from_id: Some(lower.id + 1),
            to_id: Some(upper.id - 1),
            from_time: clamp(early),
            to_time: clamp(late),
        }
    };
    let mut previous = before;
    for span in known.iter().copied().chain(after.map(IdSpan::of)) {
        match previous {
            Some(lower) if span.first.id > lower.id.saturating_add(1) => {
                holes.push(bounded_hole(lower, span.first))
            }
            Some(_) => {}
            None => holes.push(IdHole {
                from_id: None,
                to_id: Some(span.first.id - 1),
                from_time: hour.start(),
                to_time: clamp(span.first.time),
            }),
        }
        previous = Some(span.last);
    }
    if after.is_none() {
        holes.push(match previous {
            Some(lower) => IdHole {
                from_id: Some(lower.id + 1),
                to_id: None,
                from_time: clamp(lower.time),
                to_time: hour_last,
            },
            None => IdHole {
                from_id: None,
                to_id: None,
                from_time: hour.start(),
                to_time: hour_last,
            },
        });
    }
    holes
}

/// An inclusive range of missing kline open times on an interval's grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KlineHole {
    pub first_open: TimeUs,
    pub last_open: TimeUs,
}

impl KlineHole {
    /// The hole as listed in the `unfilled` metadata of `hour`'s file: ids
    /// are open times; the time bounds run from the first missing open to
    /// the last missing kline's close, clamped to the hour.
    pub fn unfilled(&self, interval: KlineInterval, hour: Hour, reason: &str) -> UnfilledRange {
        let last_close = interval.next_open_time(self.last_open) - 1;
        let hour_last = hour.end() - 1;
        UnfilledRange {
            from: Some(self.first_open),
            to: Some(self.last_open),
            from_time: self.first_open.clamp(hour.start(), hour_last),
            to_time: last_close.clamp(hour.start(), hour_last),
            reason: reason.to_owned(),
        }
    }
}

/// The grid open times of `interval` in `[from, to)`, ascending.
pub fn kline_grid(interval: KlineInterval, from: TimeUs, to: TimeUs) -> Vec<TimeUs> {
    let mut open = interval.open_time_containing(from);
    if open < from {
        open = interval.next_open_time(open);
    }
    let mut grid = Vec::new();
    while open < to {
        grid.push(open);
        open = interval.next_open_time(open);
    }
    grid
}

/// The grid open times of `interval` in `[from, to)` that have no closed
/// kline in `open_times_present` (any order, duplicates allowed; times off
/// the grid are ignored), merged into ranges of consecutive open times.
pub fn kline_holes(
    interval: KlineInterval,
    open_times_present: &[TimeUs],
    from: TimeUs,
    to: TimeUs,
) -> Vec<KlineHole> {
    let present: BTreeSet<TimeUs> = open_times_present.iter().copied().collect();
    let mut holes: Vec<KlineHole> = Vec::new();
    let mut previous_open: Option<TimeUs> = None;
    for open in kline_grid(interval, from, to) {
        if !present.contains(&open) {
            match holes.last_mut() {
                // Extend the hole when the previous grid point was missing too.
                Some(hole) if previous_open == Some(hole.last_open) => hole.last_open = open,
                _ => holes.push(KlineHole {
                    first_open: open,
                    last_open: open,
                }),
            }
        }
        previous_open = Some(open);
    }
    holes
}

/// A hole of any stream kind: what detection reports and the fill takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    Ids(IdHole),
    Klines(KlineHole),
}

impl Hole {
    /// The hole's key bounds (ids, or kline open times), `None` where unknown.
    pub fn key_bounds(&self) -> (Option<i64>, Option<i64>) {
        match self {
            Hole::Ids(hole) => (hole.from_id, hole.to_id),
            Hole::Klines(hole) => (Some(hole.first_open), Some(hole.last_open)),
        }
    }

    /// Both key bounds are known: the missing keys are exactly named. An
    /// open hole only says "there may be rows here".
    pub fn is_closed(&self) -> bool {
        matches!(self.key_bounds(), (Some(_), Some(_)))
    }

    /// The hole as listed in the `unfilled` metadata of `hour`'s file.
    pub fn unfilled(&self, kind: StreamKind, hour: Hour, reason: &str) -> UnfilledRange {
        match (self, kind) {
            (Hole::Klines(hole), StreamKind::Kline(interval)) => {
                hole.unfilled(interval, hour, reason)
            }
            (Hole::Klines(hole), _) => UnfilledRange {
                from: Some(hole.first_open),
                to: Some(hole.last_open),
                from_time: hole.first_open,
                to_time: hole.last_open,
                reason: reason.to_owned(),
            },
            (Hole::Ids(hole), _) => hole.unfilled(reason),
        }
    }

    /// The hole an `unfilled` entry of a sealed file describes (to retry it).
    pub fn from_unfilled(kind: StreamKind, range: &UnfilledRange) -> Option<Hole> {
        match kind {
            StreamKind::Kline(_) => Some(Hole::Klines(KlineHole {
                first_open: range.from?,
                last_open: range.to?,
            })),
            StreamKind::Trade | StreamKind::AggTrade => Some(Hole::Ids(IdHole {
                from_id: range.from,
                to_id: range.to,
                from_time: range.from_time,
                to_time: range.to_time,
            })),
        }
    }
}

/// How much of a hole a [`Settled`] range answers, from the hole's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Whole,
    /// Keys up to this one, inclusive; the rest of the hole is open.
    Through(i64),
}

/// A key range REST has answered for in full: every row the exchange
/// serves there was fetched. `None` is unbounded at that end (an open hole
/// probed by time up to the hour's edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Settled {
    /// The ranges joined where they overlap or touch, in key order.
    pub fn joined(settled: &[Settled]) -> Vec<Settled> {
        let mut sorted = settled.to_vec();
        sorted.sort_by_key(|range| range.from.unwrap_or(i64::MIN));
        let mut joined: Vec<Settled> = Vec::with_capacity(sorted.len());
        for range in sorted {
            match joined.last_mut() {
                Some(last)
                    if last.to.is_none_or(|to| {
                        range.from.unwrap_or(i64::MIN) <= to.saturating_add(1)
                    }) =>
                {
                    last.to = match (last.to, range.to) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                _ => joined.push(range),
            }
        }
        joined
    }

    /// How much of `hole` this range answers from the hole's start (a
    /// round stopped at its row cap answers a prefix): `None` when it does
    /// not reach back to that start.
    pub fn prefix_of(&self, hole: &Hole) -> Option<Answered> {
        if !self.reaches_start_of(hole) {
            return None;
        }
        let (from, to) = hole.key_bounds();
        match (self.to, to) {
            (None, _) => Some(Answered::Whole),
            (Some(settled), Some(hole)) if hole <= settled => Some(Answered::Whole),
            (Some(settled), _) if from.is_none_or(|from| settled >= from) => {
                Some(Answered::Through(settled))
            }
            _ => None,
        }
    }

    /// Whether every key the hole may hold lies inside this range.
    pub fn covers(&self, hole: &Hole) -> bool {
        self.prefix_of(hole) == Some(Answered::Whole)
    }

    /// Whether the range starts at or before the hole's first key.
    fn reaches_start_of(&self, hole: &Hole) -> bool {
        match (self.from, hole.key_bounds().0) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(settled), Some(hole)) => hole >= settled,
        }
    }
}

/// What is known about one stream-hour when its holes are judged.
#[derive(Debug, Clone)]
pub struct StreamHour {
    pub kind: StreamKind,
    pub hour: Hour,
    /// The keys held, as spans of ids with their trade times, or of kline
    /// open times (twice). Any order; overlapping spans are merged.
    pub spans: Vec<IdSpan>,
    /// The last row known before the hour's rows, and the first after.
    pub before: Option<IdAt>,
    pub after: Option<IdAt>,
    /// Whether the hour must be complete from its start even when nothing
    /// is known before it (backfill on a first start or after downtime).
    /// When false and `before` is unknown, the hour is judged from
    /// `watched_from` on.
    pub from_hour_start: bool,
    pub watched_from: TimeUs,
}

/// The holes of one stream-hour (see the module doc).
pub fn stream_hour_holes(facts: &StreamHour) -> Vec<Hole> {
    match facts.kind {
        StreamKind::Trade | StreamKind::AggTrade => {
            let judge_start = facts.from_hour_start || facts.before.is_some();
            id_holes_in_spans(facts.hour, &facts.spans, facts.before, facts.after)
                .into_iter()
                .filter(|hole| judge_start || hole.from_id.is_some())
                .map(Hole::Ids)
                .collect()
        }
        StreamKind::Kline(interval) => {
            let from = if facts.from_hour_start || facts.before.is_some() {
                facts.hour.start()
            } else {
                facts.watched_from.max(facts.hour.start())
            };
            let present: Vec<TimeUs> = facts
                .spans
                .iter()
                .flat_map(|span| [span.first.id, span.last.id])
                .collect();
            kline_holes(interval, &present, from, facts.hour.end())
                .into_iter()
                .map(Hole::Klines)
                .collect()
        }
    }
}

/// The holes of a stream-hour cut at `ends_at`, a dated contract's
/// delivery inside the hour: nothing trades at or after it, so no kline
/// opening then is owed, and an id hole reaches only to the delivery's
/// last µs. An open end is kept (only REST can say whether rows came just
/// before the delivery) and probed as before: REST answers nothing after
/// it, which settles the open part.
pub fn holes_before(kind: StreamKind, holes: Vec<Hole>, ends_at: TimeUs) -> Vec<Hole> {
    holes
        .into_iter()
        .filter_map(|hole| match (hole, kind) {
            (Hole::Klines(klines), StreamKind::Kline(interval)) => {
                // The last kline owed opens before the delivery.
                let last_owed = interval.open_time_containing(ends_at - 1);
                (klines.first_open <= last_owed).then(|| {
                    Hole::Klines(KlineHole {
                        first_open: klines.first_open,
                        last_open: klines.last_open.min(last_owed),
                    })
                })
            }
            (Hole::Ids(ids), _) => (ids.from_time < ends_at).then(|| {
                Hole::Ids(IdHole {
                    to_time: ids.to_time.min(ends_at - 1),
                    ..ids
                })
            }),
            (other, _) => Some(other),
        })
        .collect()
}

/// Splits holes by what REST already said about them: a hole inside a
/// settled range with named ends, that names its own keys, is data the
/// exchange does not have (returned second, to be declared); a hole inside
/// a range open at an end held nothing in this hour (an open range says
/// "nothing more up to the hour's edge"; later ids belong to later hours),
/// so it is dropped; the rest still need a fill (returned first).
pub fn sort_by_settled(holes: Vec<Hole>, settled: &[Settled]) -> (Vec<Hole>, Vec<Hole>) {
    let mut to_fill = Vec::new();
    let mut not_served = Vec::new();
    for hole in holes {
        let covering = |named: bool| {
            settled.iter().any(|range| {
                range.covers(&hole) && (range.from.is_some() && range.to.is_some()) == named
            })
        };
        if covering(false) {
            continue;
        }
        if !covering(true) {
            to_fill.push(hole);
        } else if hole.is_closed() {
            not_served.push(hole);
        }
    }
    (to_fill, not_served)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{MICROS_PER_HOUR, MICROS_PER_MINUTE, MICROS_PER_SECOND};

    /// 2026-01-01 01:00:00 UTC.
    const HOUR_START: TimeUs = 1_767_229_200_000_000;

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn at(id: i64, seconds: i64) -> IdAt {
        IdAt {
            id,
            time: HOUR_START + seconds * MICROS_PER_SECOND,
        }
    }

    fn range(first: i64, last: i64) -> IdRange {
        IdRange { first, last }
    }

    #[test]
    fn consecutive_ids_have_no_hole() {
        assert_eq!(id_holes(&[5, 6, 7, 8], Some(4), Some(9)), vec![]);
        assert_eq!(id_holes(&[5, 6, 7, 8], None, None), vec![]);
        assert_eq!(id_holes(&[], Some(4), Some(5)), vec![]);
    }

    #[test]
    fn a_jump_is_a_hole_between_the_ids() {
        assert_eq!(id_holes(&[10, 11, 15, 16], None, None), vec![range(12, 14)]);
        assert_eq!(
            id_holes(&[10, 12, 14], None, None),
            vec![range(11, 11), range(13, 13)]
        );
    }

    #[test]
    fn duplicates_and_reordering_are_not_holes() {
        assert_eq!(id_holes(&[8, 6, 7, 6, 5, 8], Some(4), Some(9)), vec![]);
        assert_eq!(
            id_holes(&[15, 10, 15, 11, 10], None, None),
            vec![range(12, 14)]
        );
    }

    #[test]
    fn bounds_from_neighbouring_hours_open_holes_at_the_edges() {
        assert_eq!(
            id_holes(&[7, 8], Some(4), Some(12)),
            vec![range(5, 6), range(9, 11)]
        );
        assert_eq!(id_holes(&[], Some(4), Some(9)), vec![range(5, 8)]);
    }

    #[test]
    fn ids_outside_the_bounds_are_ignored() {
        // A late duplicate of the previous hour's last rows is not a hole.
        assert_eq!(id_holes(&[2, 3, 5, 6], Some(4), Some(7)), vec![]);
        assert_eq!(id_holes(&[5, 9, 10], Some(4), Some(7)), vec![range(6, 6)]);
    }

    #[test]
    fn bounds_that_go_backwards_close_nothing() {
        assert_eq!(id_holes(&[], Some(9), Some(4)), vec![]);
    }

    #[test]
    fn extreme_ids_do_not_overflow() {
        assert_eq!(id_holes(&[i64::MAX - 1, i64::MAX], None, None), vec![]);
        assert_eq!(range(7, 9).n_ids(), 3);
        assert_eq!(
            id_holes(&[i64::MIN, i64::MAX], None, None),
            vec![range(i64::MIN + 1, i64::MAX - 1)]
        );
        assert_eq!(range(i64::MIN, i64::MAX).n_ids(), u64::MAX);
    }

    #[test]
    fn hour_holes_carry_the_times_of_their_neighbours() {
        let rows = [at(10, 1), at(11, 2), at(15, 30), at(16, 31)];
        let holes = id_holes_in_hour(hour(), &rows, Some(at(9, 0)), Some(at(17, 40)));
        assert_eq!(
            holes,
            vec![IdHole {
                from_id: Some(12),
                to_id: Some(14),
                from_time: at(0, 2).time,
                to_time: at(0, 30).time
            }]
        );
        assert!(holes[0].is_closed());
    }

    #[test]
    fn hour_holes_clamp_neighbours_in_other_hours_to_the_hour() {
        let previous_hour_row = IdAt {
            id: 4,
            time: HOUR_START - 5 * MICROS_PER_SECOND,
        };
        let next_hour_row = IdAt {
            id: 20,
            time: HOUR_START + MICROS_PER_HOUR + 3 * MICROS_PER_SECOND,
        };
        let holes = id_holes_in_hour(
            hour(),
            &[at(7, 10)],
            Some(previous_hour_row),
            Some(next_hour_row),
        );
        assert_eq!(
            holes,
            vec![
                IdHole {
                    from_id: Some(5),
                    to_id: Some(6),
                    from_time: HOUR_START,
                    to_time: at(0, 10).time
                },
                IdHole {
                    from_id: Some(8),
                    to_id: Some(19),
                    from_time: at(0, 10).time,
                    to_time: HOUR_START + MICROS_PER_HOUR - 1
                },
            ]
        );
    }

    #[test]
    fn nothing_known_after_the_last_row_is_an_open_hole_to_the_hour_end() {
        // The stream disconnected at 59:50 and nothing came after.
        let rows = [at(10, 3500), at(11, 3590)];
        let holes = id_holes_in_hour(hour(), &rows, Some(at(9, 3000)), None);
        assert_eq!(
            holes,
            vec![IdHole {
                from_id: Some(12),
                to_id: None,
                from_time: at(0, 3590).time,
                to_time: hour().end() - 1
            }]
        );
        assert!(!holes[0].is_closed());
    }

    #[test]
    fn nothing_known_before_the_first_row_is_an_open_hole_from_the_hour_start() {
        // First start at 20:00 into the hour.
        let holes = id_holes_in_hour(
            hour(),
            &[at(50, 1200), at(51, 1201)],
            None,
            Some(at(52, 3700)),
        );
        assert_eq!(
            holes,
            vec![IdHole {
                from_id: None,
                to_id: Some(49),
                from_time: HOUR_START,
                to_time: at(0, 1200).time
            }]
        );
    }

    #[test]
    fn an_hour_without_rows_is_one_hole() {
        let whole_hour = IdHole {
            from_id: None,
            to_id: None,
            from_time: HOUR_START,
            to_time: hour().end() - 1,
        };
        assert_eq!(id_holes_in_hour(hour(), &[], None, None), vec![whole_hour]);
        let after_known = IdHole {
            from_id: Some(10),
            to_id: None,
            from_time: HOUR_START,
            to_time: hour().end() - 1,
        };
        let previous_hour_row = IdAt {
            id: 9,
            time: HOUR_START - 1,
        };
        assert_eq!(
            id_holes_in_hour(hour(), &[], Some(previous_hour_row), None),
            vec![after_known]
        );
        // Consecutive neighbours: nothing was traded in this hour.
        let next_hour_row = IdAt {
            id: 10,
            time: hour().end() + 1,
        };
        assert_eq!(
            id_holes_in_hour(hour(), &[], Some(previous_hour_row), Some(next_hour_row)),
            vec![]
        );
    }

    #[test]
    fn hour_holes_ignore_duplicates_and_order() {
        let rows = [
            at(16, 31),
            at(10, 1),
            at(16, 31),
            at(11, 2),
            at(15, 30),
            at(10, 1),
        ];
        let holes = id_holes_in_hour(hour(), &rows, Some(at(9, 0)), Some(at(17, 40)));
        assert_eq!(holes.len(), 1);
        assert_eq!((holes[0].from_id, holes[0].to_id), (Some(12), Some(14)));
    }

    #[test]
    fn an_id_hole_becomes_unfilled_metadata() {
        let hole = IdHole {
            from_id: Some(12),
            to_id: None,
            from_time: 5,
            to_time: 9,
        };
        let unfilled = hole.unfilled("rest unreachable");
        assert_eq!(
            unfilled,
            UnfilledRange {
                from: Some(12),
                to: None,
                from_time: 5,
                to_time: 9,
                reason: "rest unreachable".to_owned()
            }
        );
    }

    #[test]
    fn missing_minute_klines_are_holes_merged_when_consecutive() {
        let minute = KlineInterval::Minute1;
        let present: Vec<TimeUs> = (0..60)
            .filter(|m| ![3, 4, 5, 59].contains(m))
            .map(|m| HOUR_START + m * MICROS_PER_MINUTE)
            .collect();
        let holes = kline_holes(minute, &present, HOUR_START, HOUR_START + MICROS_PER_HOUR);
        assert_eq!(
            holes,
            vec![
                KlineHole {
                    first_open: HOUR_START + 3 * MICROS_PER_MINUTE,
                    last_open: HOUR_START + 5 * MICROS_PER_MINUTE
                },
                KlineHole {
                    first_open: HOUR_START + 59 * MICROS_PER_MINUTE,
                    last_open: HOUR_START + 59 * MICROS_PER_MINUTE
                },
            ]
        );
    }

    #[test]
    fn a_complete_grid_has_no_kline_hole_and_off_grid_times_do_not_count() {
        let minute = KlineInterval::Minute1;
        let mut present: Vec<TimeUs> = (0..60)
            .map(|m| HOUR_START + m * MICROS_PER_MINUTE)
            .collect();
        assert_eq!(
            kline_holes(minute, &present, HOUR_START, HOUR_START + MICROS_PER_HOUR),
            vec![]
        );
        present[10] += 1;
        assert_eq!(
            kline_holes(minute, &present, HOUR_START, HOUR_START + MICROS_PER_HOUR),
            vec![KlineHole {
                first_open: HOUR_START + 10 * MICROS_PER_MINUTE,
                last_open: HOUR_START + 10 * MICROS_PER_MINUTE
            }]
        );
    }

    #[test]
    fn the_kline_span_starts_at_the_first_grid_point_inside_it() {
        let minute = KlineInterval::Minute1;
        // From 01:00:30: the 01:00 kline opened before the span.
        let from = HOUR_START + 30 * MICROS_PER_SECOND;
        let to = HOUR_START + 3 * MICROS_PER_MINUTE;
        assert_eq!(
            kline_grid(minute, from, to),
            vec![
                HOUR_START + MICROS_PER_MINUTE,
                HOUR_START + 2 * MICROS_PER_MINUTE
            ]
        );
        assert!(kline_grid(minute, to, to).is_empty());
    }

    #[test]
    fn long_intervals_have_at_most_one_open_time_in_an_hour() {
        // 2026-01-01 was a Thursday: no weekly kline opens in its hours; the month opens at 00:00.
        let midnight = HOUR_START - MICROS_PER_HOUR;
        assert_eq!(
            kline_holes(
                KlineInterval::Week1,
                &[],
                midnight,
                midnight + MICROS_PER_HOUR
            ),
            vec![]
        );
        assert_eq!(
            kline_holes(
                KlineInterval::Month1,
                &[],
                midnight,
                midnight + MICROS_PER_HOUR
            ),
            vec![KlineHole {
                first_open: midnight,
                last_open: midnight
            }]
        );
        assert_eq!(
            kline_holes(
                KlineInterval::Month1,
                &[midnight],
                midnight,
                midnight + MICROS_PER_HOUR
            ),
            vec![]
        );
    }

    #[test]
    fn a_kline_hole_becomes_unfilled_metadata_clamped_to_the_hour() {
        let hole = KlineHole {
            first_open: HOUR_START + 58 * MICROS_PER_MINUTE,
            last_open: HOUR_START + 59 * MICROS_PER_MINUTE,
        };
        let unfilled = hole.unfilled(KlineInterval::Minute1, hour(), "rest unreachable");
        assert_eq!(
            (unfilled.from, unfilled.to),
            (Some(hole.first_open), Some(hole.last_open))
        );
        assert_eq!(
            (unfilled.from_time, unfilled.to_time),
            (hole.first_open, hour().end() - 1)
        );
        let four_hours = KlineHole {
            first_open: HOUR_START,
            last_open: HOUR_START,
        };
        let unfilled = four_hours.unfilled(KlineInterval::Hour4, hour(), "halt");
        assert_eq!(unfilled.to_time, hour().end() - 1);
    }

    /// A sorted set of ids and a subset of it removed.
    fn ids_with_some_removed() -> impl Strategy<Value = (BTreeSet<i64>, BTreeSet<i64>)> {
        (0i64..1_000_000, 2usize..200).prop_flat_map(|(start, length)| {
            let all: Vec<i64> = (start..start + length as i64).collect();
            let keep = proptest::collection::vec(any::<bool>(), length);
            (Just(all), keep).prop_map(|(all, keep)| {
                let mut removed = BTreeSet::new();
                let mut present = BTreeSet::new();
                for (index, id) in all.iter().enumerate() {
                    // The ends stay so the removed ids are all between known ids.
                    if keep[index] || index == 0 || index == all.len() - 1 {
                        present.insert(*id);
                    } else {
                        removed.insert(*id);
                    }
                }
                (present, removed)
            })
        })
    }

    fn expand(holes: &[IdRange]) -> BTreeSet<i64> {
        holes
            .iter()
            .flat_map(|hole| hole.first..=hole.last)
            .collect()
    }

    /// The hour's holes judged row by row (the rule before rows were
    /// summarised as spans): the model the spans must agree with.
    fn reference_holes(
        hour: Hour,
        rows: &[IdAt],
        before: Option<IdAt>,
        after: Option<IdAt>,
    ) -> Vec<IdHole> {
        let hour_last = hour.end() - 1;
        let clamp = |time: TimeUs| time.clamp(hour.start(), hour_last);
        let mut known: Vec<IdAt> = rows
            .iter()
            .copied()
            .filter(|row| {
                before.is_none_or(|before| row.id > before.id)
                    && after.is_none_or(|after| row.id < after.id)
            })
            .collect();
        known.sort_unstable_by_key(|row| (row.id, row.time));
        known.dedup_by_key(|row| row.id);
        let mut holes = Vec::new();
        let mut previous = before;
        for row in known.iter().copied().chain(after) {
            match previous {
                Some(lower) if row.id > lower.id.saturating_add(1) => holes.push(IdHole {
                    from_id: Some(lower.id + 1),
                    to_id: Some(row.id - 1),
                    from_time: clamp(lower.time.min(row.time)),
                    to_time: clamp(lower.time.max(row.time)),
                }),
                Some(_) => {}
                None => holes.push(IdHole {
                    from_id: None,
                    to_id: Some(row.id - 1),
                    from_time: hour.start(),
                    to_time: clamp(row.time),
                }),
            }
            previous = Some(row);
        }
        if after.is_none() {
            holes.push(match previous {
                Some(lower) => IdHole {
                    from_id: Some(lower.id + 1),
                    to_id: None,
                    from_time: clamp(lower.time),
                    to_time: hour_last,
                },
                None => IdHole {
                    from_id: None,
                    to_id: None,
                    from_time: hour.start(),
                    to_time: hour_last,
                },
            });
        }
        holes
    }

    proptest! {
        #[test]
        fn holes_are_exactly_the_removed_ids((present, removed) in ids_with_some_removed(), shuffle_seed in any::<u64>(), n_duplicates in 0usize..20) {
            let mut ids: Vec<i64> = present.iter().copied().collect();
            let mut rng = fastrand::Rng::with_seed(shuffle_seed);
            for _ in 0..n_duplicates {
                ids.push(ids[rng.usize(..ids.len())]);
            }
            rng.shuffle(&mut ids);
            let holes = id_holes(&ids, None, None);
            prop_assert_eq!(expand(&holes), removed);
        }

        #[test]
        fn holes_are_sorted_disjoint_maximal_and_never_cover_a_present_id((present, _removed) in ids_with_some_removed()) {
            let ids: Vec<i64> = present.iter().copied().collect();
            let holes = id_holes(&ids, None, None);
            for hole in &holes {
                prop_assert!(hole.first <= hole.last);
                prop_assert!(!present.iter().any(|id| hole.contains(*id)));
                // Maximal: both neighbours are present ids.
                prop_assert!(present.contains(&(hole.first - 1)));
                prop_assert!(present.contains(&(hole.last + 1)));
            }
            for pair in holes.windows(2) {
                prop_assert!(pair[0].last + 1 < pair[1].first);
            }
        }

        #[test]
        fn bounds_count_as_present((present, removed) in ids_with_some_removed()) {
            // Taking the first and last ids out of the rows and passing them as
            // the neighbouring hours' ids finds the same holes.
            let first = *present.first().expect("at least two ids");
            let last = *present.last().expect("at least two ids");
            let inner: Vec<i64> = present.iter().copied().filter(|id| *id != first && *id != last).collect();
            prop_assert_eq!(expand(&id_holes(&inner, Some(first), Some(last))), removed);
        }

        #[test]
        fn hour_holes_match_id_holes_and_stay_in_the_hour((present, removed) in ids_with_some_removed(), step_ms in 1i64..20_000) {
            // Times rise with ids, some of them outside the hour.
            let first = *present.first().expect("at least two ids");
            let time_of = |id: i64| HOUR_START - 10 * MICROS_PER_SECOND + (id - first) * step_ms * 1000;
            let mut rows: Vec<IdAt> = present.iter().map(|id| IdAt { id: *id, time: time_of(*id) }).collect();
            let before = rows.remove(0);
            let after = rows.pop().expect("at least two ids");
            let holes = id_holes_in_hour(hour(), &rows, Some(before), Some(after));
            let ranges: Vec<IdRange> = holes
                .iter()
                .map(|hole| IdRange { first: hole.from_id.expect("closed"), last: hole.to_id.expect("closed") })
                .collect();
            prop_assert_eq!(expand(&ranges), removed);
            for hole in &holes {
                prop_assert!(hour().start() <= hole.from_time && hole.from_time <= hole.to_time && hole.to_time < hour().end());
            }
        }

        #[test]
        fn holes_of_spans_from_any_split_equal_holes_of_every_row(
            (present, _removed) in ids_with_some_removed(),
            times in proptest::collection::vec(0i64..MICROS_PER_HOUR, 1..40),
            cuts in proptest::collection::vec(any::<u16>(), 0..4),
            duplicates in proptest::collection::vec(any::<u16>(), 0..6),
            bounds in (any::<bool>(), any::<bool>()),
        ) {
            // Times need not rise with ids (a late trade), and ids repeat.
            let mut rows: Vec<IdAt> = present
                .iter()
                .enumerate()
                .map(|(index, id)| IdAt { id: *id, time: HOUR_START + times[index % times.len()] })
                .collect();
            for pick in &duplicates {
                let row = rows[usize::from(*pick) % rows.len()];
                rows.push(IdAt { id: row.id, time: row.time + i64::from(*pick) });
            }
            let before = bounds.0.then(|| IdAt { id: present.first().copied().unwrap_or(0) + 2, time: HOUR_START });
            let after = bounds.1.then(|| IdAt { id: present.last().copied().unwrap_or(0) - 2, time: HOUR_START + 5 });
            // The rows cut into parts as spills would cut them, each part
            // summarised by its spans.
            let mut points: Vec<usize> = cuts.iter().map(|cut| usize::from(*cut) % (rows.len() + 1)).collect();
            points.sort_unstable();
            let mut spans = Vec::new();
            let mut start = 0;
            for end in points.into_iter().chain([rows.len()]) {
                spans.extend(id_spans(&rows[start..end]));
                start = end;
            }
            prop_assert_eq!(
                id_holes_in_spans(hour(), &spans, before, after),
                reference_holes(hour(), &rows, before, after)
            );
        }

        #[test]
        fn kline_holes_and_present_opens_tile_the_grid(keep in proptest::collection::vec(any::<bool>(), 60)) {
            let minute = KlineInterval::Minute1;
            let grid = kline_grid(minute, HOUR_START, HOUR_START + MICROS_PER_HOUR);
            prop_assert_eq!(grid.len(), 60);
            let present: Vec<TimeUs> = grid.iter().zip(&keep).filter(|(_, keep)| **keep).map(|(open, _)| *open).collect();
            let holes = kline_holes(minute, &present, HOUR_START, HOUR_START + MICROS_PER_HOUR);
            let mut missing = BTreeSet::new();
            for hole in &holes {
                let mut open = hole.first_open;
                while open <= hole.last_open {
                    prop_assert!(!present.contains(&open));
                    missing.insert(open);
                    open = minute.next_open_time(open);
                }
            }
            let expected: BTreeSet<TimeUs> = grid.iter().zip(&keep).filter(|(_, keep)| !**keep).map(|(open, _)| *open).collect();
            prop_assert_eq!(missing, expected);
            for pair in holes.windows(2) {
                // Merged: two holes are separated by at least one present kline.
                prop_assert!(minute.next_open_time(pair[0].last_open) < pair[1].first_open);
            }
        }
    }

    #[test]
    fn a_first_hour_is_judged_from_its_start_only_when_backfilling() {
        let facts = StreamHour {
            kind: StreamKind::Trade,
            hour: hour(),
            spans: id_spans(&[at(10, 600), at(11, 601)]),
            before: None,
            after: Some(at(12, 3700)),
            from_hour_start: true,
            watched_from: HOUR_START + 600 * MICROS_PER_SECOND,
        };
        let holes = stream_hour_holes(&facts);
        assert_eq!(holes.len(), 1);
        assert_eq!(
            holes[0].key_bounds(),
            (None, Some(9)),
            "open start, probed by time"
        );
        assert!(!holes[0].is_closed());
        let watched_only = StreamHour {
            from_hour_start: false,
            ..facts
        };
        assert!(
            stream_hour_holes(&watched_only).is_empty(),
            "nothing before the watched part is owed"
        );
    }

    #[test]
    fn kline_hours_are_judged_on_the_grid_from_where_they_are_owed() {
        let minute = StreamKind::Kline(KlineInterval::Minute1);
        let opens: Vec<IdAt> = (30..60)
            .filter(|m| *m != 45)
            .map(|m| IdAt {
                id: HOUR_START + m * MICROS_PER_MINUTE,
                time: 0,
            })
            .collect();
        let facts = StreamHour {
            kind: minute,
            hour: hour(),
            spans: id_spans(&opens),
            before: None,
            after: None,
            from_hour_start: false,
            watched_from: HOUR_START + 30 * MICROS_PER_MINUTE,
        };
        let missing_45 = Hole::Klines(KlineHole {
            first_open: HOUR_START + 45 * MICROS_PER_MINUTE,
            last_open: HOUR_START + 45 * MICROS_PER_MINUTE,
        });
        assert_eq!(stream_hour_holes(&facts), vec![missing_45]);
        let backfilled = stream_hour_holes(&StreamHour {
            from_hour_start: true,
            ..facts
        });
        assert_eq!(backfilled.len(), 2);
        assert_eq!(
            backfilled[0].key_bounds(),
            (Some(HOUR_START), Some(HOUR_START + 29 * MICROS_PER_MINUTE))
        );
    }

    #[test]
    fn a_delivery_inside_the_hour_cuts_its_holes_there() {
        let minute = StreamKind::Kline(KlineInterval::Minute1);
        let delivery = HOUR_START + 40 * MICROS_PER_MINUTE;
        let klines = |first: i64, last: i64| {
            Hole::Klines(KlineHole {
                first_open: HOUR_START + first * MICROS_PER_MINUTE,
                last_open: HOUR_START + last * MICROS_PER_MINUTE,
            })
        };
        // Klines from 00:40 on are not owed; one opening before is.
        assert_eq!(
            holes_before(minute, vec![klines(10, 12), klines(38, 59)], delivery),
            vec![klines(10, 12), klines(38, 39)]
        );
        assert_eq!(holes_before(minute, vec![klines(40, 59)], delivery), vec![]);
        // A delivery mid-minute: the kline that opened before it is owed.
        assert_eq!(
            holes_before(
                minute,
                vec![klines(40, 59)],
                delivery + 30 * MICROS_PER_SECOND
            ),
            vec![klines(40, 40)]
        );
        // An open end after the last trade reaches to the delivery only.
        let open_end = IdHole {
            from_id: Some(12),
            to_id: None,
            from_time: HOUR_START + 30 * MICROS_PER_MINUTE,
            to_time: hour().end() - 1,
        };
        assert_eq!(
            holes_before(StreamKind::Trade, vec![Hole::Ids(open_end)], delivery),
            vec![Hole::Ids(IdHole {
                to_time: delivery - 1,
                ..open_end
            })]
        );
    }

    #[test]
    fn settled_ranges_are_joined_where_they_touch_or_overlap() {
        let range = |from, to| Settled { from, to };
        assert_eq!(
            Settled::joined(&[
                range(Some(10), Some(19)),
                range(Some(30), None),
                range(None, Some(9)),
                range(Some(21), Some(25)),
                range(Some(24), Some(29)),
            ]),
            vec![range(None, Some(19)), range(Some(21), None)]
        );
        assert_eq!(
            Settled::joined(&[range(None, None), range(Some(5), Some(6))]),
            vec![range(None, None)]
        );
        assert_eq!(Settled::joined(&[]), vec![]);
    }

    #[test]
    fn settled_ranges_turn_holes_into_declared_gaps_or_nothing() {
        let closed = Hole::Ids(IdHole {
            from_id: Some(5),
            to_id: Some(7),
            from_time: HOUR_START,
            to_time: HOUR_START,
        });
        let open_end = Hole::Ids(IdHole {
            from_id: Some(9),
            to_id: None,
            from_time: HOUR_START,
            to_time: HOUR_START,
        });
        let elsewhere = Hole::Ids(IdHole {
            from_id: Some(2),
            to_id: Some(3),
            from_time: HOUR_START,
            to_time: HOUR_START,
        });
        let settled = [
            Settled {
                from: Some(5),
                to: Some(7),
            },
            Settled {
                from: Some(8),
                to: None,
            },
        ];
        let (to_fill, not_served) = sort_by_settled(vec![closed, open_end, elsewhere], &settled);
        assert_eq!(to_fill, vec![elsewhere]);
        assert_eq!(
            not_served,
            vec![closed],
            "a named hole REST answered for is data the exchange lacks"
        );
        // An open probe found nothing more in the hour: a hole found later
        // past it (the next row arrived in a later hour) is not this hour's.
        let later = Hole::Ids(IdHole {
            from_id: Some(9),
            to_id: Some(40),
            from_time: HOUR_START,
            to_time: HOUR_START,
        });
        assert_eq!(sort_by_settled(vec![later], &settled), (vec![], vec![]));
        assert!(!Settled {
            from: Some(5),
            to: Some(7)
        }
        .covers(&open_end));
        assert!(Settled {
            from: None,
            to: None
        }
        .covers(&open_end));
    }
}
