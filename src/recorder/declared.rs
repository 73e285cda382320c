//! Fill bookkeeping, with no I/O: the holes a sealed file declares and
//! their retries ([`Declared`], [`revise_declared`]), the back-off of a
//! stream-hour's failed fill rounds ([`round_retry_at`]), and the
//! conversions of configured durations into exchange and host time.

use crate::config::FillConfig;
use crate::domain::{Hour, Row, StreamKind, TimeUs, UnfilledRange};
use crate::gaps::{id_holes, kline_holes, Answered, Hole, Settled};
use crate::recorder::judge::{MonoMs, REASON_NOT_SERVED};

/// Holes declared in a sealed file, tried again now and then.
#[derive(Debug)]
pub(super) struct Declared {
    pub(super) unfilled: Vec<UnfilledRange>,
    /// Exchange time of the next retry: the hours it waits for pass on the
    /// exchange's clock, like the hours they serve (and a simulated clock
    /// moves them at its own speed).
    pub(super) retry_at: TimeUs,
    pub(super) in_flight: bool,
    /// The round in flight answered some of the list (a part of its report
    /// changed it): ended without a failure, it stopped at its row cap, and
    /// the next round goes at once.
    pub(super) answered: bool,
}

impl Declared {
    pub(super) fn new(unfilled: Vec<UnfilledRange>, retry_at: TimeUs) -> Declared {
        Declared {
            unfilled,
            retry_at,
            in_flight: false,
            answered: false,
        }
    }
}

/// A duration of exchange time, in µs.
pub(super) fn micros(duration: std::time::Duration) -> TimeUs {
    TimeUs::try_from(duration.as_micros()).unwrap_or(TimeUs::MAX)
}

/// A duration of host time, in ms.
pub(super) fn millis(duration: std::time::Duration) -> MonoMs {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Host time at which a stream-hour's fill round may be tried again after
/// its `n_rounds`-th round failed: `fill.retry_initial` doubled per round
/// after the first, at most `fill.retry_max`.
pub(super) fn round_retry_at(fill: &FillConfig, n_rounds: u32, now: MonoMs) -> MonoMs {
    let backoff = fill
        .retry_initial
        .saturating_mul(2u32.saturating_pow(n_rounds.saturating_sub(1)));
    now.saturating_add(millis(backoff.min(fill.retry_max)))
}

/// A declared hole list after a retry (or one part of its report, see
/// `FillReport::into_parts`): holes REST answered for in full are gone,
/// except keys it does not serve; a hole answered from its start up to a
/// key (a round stopped at its row cap) keeps only the rest, from the key
/// after; the others keep the new failure.
pub fn revise_declared(
    kind: StreamKind,
    hour: Hour,
    unfilled: &[UnfilledRange],
    settled: &[Settled],
    rows: &[Row],
    failure: Option<&str>,
) -> Vec<UnfilledRange> {
    let mut revised = Vec::new();
    let joined = Settled::joined(settled);
    for range in unfilled {
        let hole = match Hole::from_unfilled(kind, range) {
            Some(hole) if range.is_retryable() => hole,
            _ => {
                revised.push(range.clone());
                continue;
            }
        };
        // A hole open at an end is answered in two parts (nothing more in
        // the hour before the first row fetched; the fetched ids), which
        // answer it only together.
        let Some(answered) = joined.iter().find_map(|settled| settled.prefix_of(&hole)) else {
            let mut kept = range.clone();
            if let Some(failure) = failure {
                kept.reason = failure.to_owned();
            }
            revised.push(kept);
            continue;
        };
        let (from, to) = match answered {
            Answered::Whole => hole.key_bounds(),
            Answered::Through(last) => (hole.key_bounds().0, Some(last)),
        };
        revised.extend(not_served(kind, hour, range, settled, rows, from, to));
        if let Answered::Through(last) = answered {
            revised.push(rest_of(kind, hour, range, rows, last, failure));
        }
    }
    revised
}

/// The keys REST answered for from `from` to `to` (of `range`) and did not
/// serve. An open end reaches to where its fetch began.
fn not_served(
    kind: StreamKind,
    hour: Hour,
    range: &UnfilledRange,
    settled: &[Settled],
    rows: &[Row],
    from: Option<i64>,
    to: Option<i64>,
) -> Vec<UnfilledRange> {
    let first = from.or_else(|| {
        settled
            .iter()
            .filter_map(|range| range.from)
            .filter(|first| to.is_none_or(|to| *first <= to))
            .min()
    });
    let last = to.or_else(|| {
        settled
            .iter()
            .filter_map(|range| range.to)
            .filter(|last| first.is_none_or(|first| *last >= first))
            .max()
    });
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let present: Vec<i64> = rows
        .iter()
        .map(Row::key)
        .filter(|key| (first..=last).contains(key))
        .collect();
    match kind {
        StreamKind::Kline(interval) => {
            kline_holes(interval, &present, first, interval.next_open_time(last))
                .into_iter()
                .map(|missing| missing.unfilled(interval, hour, REASON_NOT_SERVED))
                .collect()
        }
        StreamKind::Trade | StreamKind::AggTrade => {
            id_holes(&present, first.checked_sub(1), last.checked_add(1))
                .into_iter()
                .map(|missing| UnfilledRange {
                    from: Some(missing.first),
                    to: Some(missing.last),
                    from_time: range.from_time,
                    to_time: range.to_time,
                    reason: REASON_NOT_SERVED.to_owned(),
                })
                .collect()
        }
    }
}

/// What is left of `range` once REST answered it up to `last`: the keys
/// after it, from the time of the last row fetched up to `last` (klines:
/// the next open time), with the round's failure if it had one.
fn rest_of(
    kind: StreamKind,
    hour: Hour,
    range: &UnfilledRange,
    rows: &[Row],
    last: i64,
    failure: Option<&str>,
) -> UnfilledRange {
    let (from, from_time) = match kind {
        StreamKind::Kline(interval) => {
            let next = interval.next_open_time(last);
            (next, next.clamp(hour.start(), hour.end() - 1))
        }
        StreamKind::Trade | StreamKind::AggTrade => {
            let at_last = rows
                .iter()
                .filter(|row| row.key() <= last)
                .max_by_key(|row| row.key())
                .map_or(range.from_time, Row::bucket_time);
            (last + 1, at_last.max(range.from_time))
        }
    };
    UnfilledRange {
        from: Some(from),
        to: range.to,
        from_time,
        to_time: range.to_time,
        reason: failure.unwrap_or(&range.reason).to_owned(),
    }
}
