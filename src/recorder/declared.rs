//! Fill bookkeeping, with no I/O: the holes a sealed file declares and
//! their retries ([`Declared`], [`revise_declared`]), the back-off of a
//! stream-hour's failed fill rounds ([`round_retry_at`]), and the
//! conversions of configured durations into exchange and host time.

use crate::config::FillConfig;
use crate::domain::{Hour, Row, StreamKind, TimeUs, UnfilledRange};
use crate::gaps::{id_holes, kline_holes, Hole, Settled};
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

/// A declared hole list after a retry: holes REST answered for in full are
/// gone, except keys it does not serve; the others keep the new failure.
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
        // cover it only together.
        if !joined.iter().any(|settled| settled.covers(&hole)) {
            let mut kept = range.clone();
            if let Some(failure) = failure {
                kept.reason = failure.to_owned();
            }
            revised.push(kept);
            continue;
        }
        // Ids the exchange does not serve are looked for in the named part
        // of the answer: an open end reaches to where its fetch began.
        let (from, to) = hole.key_bounds();
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
            continue;
        };
        let present: Vec<i64> = rows
            .iter()
            .map(Row::key)
            .filter(|key| (first..=last).contains(key))
            .collect();
        match kind {
            StreamKind::Kline(interval) => {
                for missing in kline_holes(interval, &present, first, interval.next_open_time(last))
                {
                    revised.push(missing.unfilled(interval, hour, REASON_NOT_SERVED));
                }
            }
            StreamKind::Trade | StreamKind::AggTrade => {
                for missing in id_holes(&present, first.checked_sub(1), last.checked_add(1)) {
                    revised.push(UnfilledRange {
                        from: Some(missing.first),
                        to: Some(missing.last),
                        from_time: range.from_time,
                        to_time: range.to_time,
                        reason: REASON_NOT_SERVED.to_owned(),
                    });
                }
            }
        }
    }
    revised
}
