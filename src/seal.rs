//! Pure sealing decisions, with time passed in: when an hour's file may be
//! sealed, which part of the hour the recorder watched, and how rows merge.
//! No I/O here; the recorder acts on the answers.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Hour, Row, Source, StreamKind, TimeUs};

/// The exchange time from which the file of `(kind, hour)` is complete,
/// before the grace period: the hour's end for trades and aggTrades; for
/// klines, the close of the last kline that opens in the hour (a `1d`
/// kline's file waits for the day's end).
pub fn complete_at(kind: StreamKind, hour: Hour) -> TimeUs {
    match kind {
        StreamKind::Trade | StreamKind::AggTrade => hour.end(),
        StreamKind::Kline(interval) => {
            let last_open = interval.open_time_containing(hour.end() - 1);
            if last_open >= hour.start() {
                hour.end().max(interval.next_open_time(last_open))
            } else {
                hour.end()
            }
        }
    }
}

/// Whether the file of `(kind, hour)` may be sealed at `exchange_time`.
pub fn is_sealable(kind: StreamKind, hour: Hour, exchange_time: TimeUs, grace_us: i64) -> bool {
    exchange_time >= complete_at(kind, hour).saturating_add(grace_us)
}

/// One stretch of time during which a recorder process was receiving a
/// market: from its first event to its last (`end` is `None` while it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpan {
    pub start: TimeUs,
    pub end: Option<TimeUs>,
}

/// The part of `hour` that the spans vouch for, as `[from, to)` in epoch µs,
/// or `None` when no span touches the hour (then no file is written: a
/// missing file means "not recorded"). A stretch of downtime inside the
/// hour is not visible here; gap detection reports it.
pub fn coverage(spans: &[WatchSpan], hour: Hour) -> Option<(TimeUs, TimeUs)> {
    let mut covered: Option<(TimeUs, TimeUs)> = None;
    for span in spans {
        let from = span.start.max(hour.start());
        let to = span.end.map_or(hour.end(), |end| (end + 1).min(hour.end()));
        if from >= to {
            continue;
        }
        covered = Some(match covered {
            None => (from, to),
            Some((earliest, latest)) => (earliest.min(from), latest.max(to)),
        });
    }
    covered
}

/// What inserting a row into a set of rows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The key was already held; the held row stays (first arrival wins,
    /// and a stream row always wins over a REST row).
    Duplicate,
    /// A REST row was held for the key and the stream row replaced it.
    ReplacedRest,
}

/// Inserts `row` into `rows` (keyed by [`Row::key`]) under the merge rule.
pub fn insert_row(rows: &mut BTreeMap<i64, Row>, row: Row) -> Inserted {
    match rows.entry(row.key()) {
        Entry::Vacant(vacant) => {
            vacant.insert(row);
            Inserted::New
        }
        Entry::Occupied(mut occupied) => {
            if occupied.get().source() == Source::Rest && row.source() == Source::Ws {
                occupied.insert(row);
                Inserted::ReplacedRest
            } else {
                Inserted::Duplicate
            }
        }
    }
}

/// Merges new rows into the rows of an already sealed file. Returns the
/// merged, sorted, unique rows and whether anything changed (when nothing
/// did, the file need not be rewritten). The rule in memory, as the tests'
/// model: a seal job streams the same merge (`recorder::seal_job`).
#[cfg(test)]
pub(crate) fn merge_into_sealed(
    sealed: Vec<Row>,
    new_rows: impl IntoIterator<Item = Row>,
) -> (Vec<Row>, bool) {
    let mut merged: BTreeMap<i64, Row> = sealed.into_iter().map(|row| (row.key(), row)).collect();
    let mut changed = false;
    for row in new_rows {
        changed |= insert_row(&mut merged, row) != Inserted::Duplicate;
    }
    (merged.into_values().collect(), changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Decimal8, KlineInterval, TradeRow, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE,
    };
    use proptest::prelude::*;

    const HOUR_START: TimeUs = 1_723_161_600_000_000; // 2024-08-09T00:00Z, a Friday

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn trade(id: i64, source: Source) -> Row {
        Row::Trade(TradeRow {
            trade_id: id,
            price: Decimal8::from_scaled(id as i128),
            quantity: Decimal8::ZERO,
            trade_time: HOUR_START + id,
            is_buyer_maker: false,
            is_best_match: Some(true),
            trade_type: None,
            event_time: (source == Source::Ws).then_some(HOUR_START),
            recv_time: (source == Source::Ws).then_some(HOUR_START),
            source,
        })
    }

    #[test]
    fn trades_seal_at_hour_end_plus_grace() {
        let grace = 10_000_000;
        let end = hour().end();
        assert!(!is_sealable(
            StreamKind::Trade,
            hour(),
            end + grace - 1,
            grace
        ));
        assert!(is_sealable(StreamKind::Trade, hour(), end + grace, grace));
    }

    #[test]
    fn kline_files_wait_for_their_last_kline_to_close() {
        let minute = StreamKind::Kline(KlineInterval::Minute1);
        assert_eq!(complete_at(minute, hour()), hour().end());
        let day = StreamKind::Kline(KlineInterval::Day1);
        assert_eq!(complete_at(day, hour()), HOUR_START + MICROS_PER_DAY);
        // Hour 01 has no 1d kline opening in it: it seals at its own end.
        assert_eq!(complete_at(day, hour().next()), hour().next().end());
        let four_hours = StreamKind::Kline(KlineInterval::Hour4);
        assert_eq!(
            complete_at(four_hours, hour()),
            HOUR_START + 4 * MICROS_PER_HOUR
        );
        let one_second = StreamKind::Kline(KlineInterval::Second1);
        assert_eq!(complete_at(one_second, hour()), hour().end());
        let week = StreamKind::Kline(KlineInterval::Week1);
        // Monday 2024-08-12T00 opens a week that closes on the 19th.
        let monday = Hour::containing(HOUR_START + 3 * MICROS_PER_DAY);
        assert_eq!(
            complete_at(week, monday),
            monday.start() + 7 * MICROS_PER_DAY
        );
    }

    #[test]
    fn coverage_is_the_watched_part_of_the_hour() {
        let start = HOUR_START + 20 * MICROS_PER_MINUTE;
        let running = [WatchSpan { start, end: None }];
        assert_eq!(coverage(&running, hour()), Some((start, hour().end())));
        assert_eq!(
            coverage(&running, hour().next()),
            Some((hour().end(), hour().next().end()))
        );
        let before = Hour::containing(HOUR_START - 1);
        assert_eq!(coverage(&running, before), None);
        let stopped = [WatchSpan {
            start: HOUR_START - 5,
            end: Some(start),
        }];
        assert_eq!(coverage(&stopped, hour()), Some((HOUR_START, start + 1)));
        assert_eq!(coverage(&stopped, hour().next()), None);
        let two = [
            stopped[0],
            WatchSpan {
                start: start + 1000,
                end: None,
            },
        ];
        assert_eq!(coverage(&two, hour()), Some((HOUR_START, hour().end())));
    }

    #[test]
    fn stream_rows_win_over_rest_and_first_arrival_wins() {
        let mut rows = BTreeMap::new();
        assert_eq!(insert_row(&mut rows, trade(1, Source::Rest)), Inserted::New);
        assert_eq!(
            insert_row(&mut rows, trade(1, Source::Ws)),
            Inserted::ReplacedRest
        );
        assert_eq!(
            insert_row(&mut rows, trade(1, Source::Rest)),
            Inserted::Duplicate
        );
        assert_eq!(
            insert_row(&mut rows, trade(1, Source::Ws)),
            Inserted::Duplicate
        );
        assert_eq!(rows[&1].source(), Source::Ws);
    }

    #[test]
    fn merging_nothing_new_changes_nothing() {
        let sealed = vec![trade(1, Source::Ws), trade(2, Source::Ws)];
        let (merged, changed) = merge_into_sealed(sealed.clone(), vec![trade(2, Source::Ws)]);
        assert!(!changed);
        assert_eq!(merged, sealed);
        let (merged, changed) = merge_into_sealed(sealed, vec![trade(0, Source::Ws)]);
        assert!(changed);
        assert_eq!(
            merged.iter().map(Row::key).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    proptest! {
        /// Any split of a sequence into a sealed part and late parts, with
        /// duplicates and any order, merges to the sequence once, sorted.
        #[test]
        fn merge_gives_each_key_once_sorted(
            keys in proptest::collection::btree_set(0i64..500, 0..60),
            split in proptest::collection::vec(any::<(bool, bool)>(), 60),
            shuffle_seed in any::<u64>(),
        ) {
            let keys: Vec<i64> = keys.into_iter().collect();
            let mut sealed = Vec::new();
            let mut late = Vec::new();
            for (index, key) in keys.iter().enumerate() {
                let (to_sealed, duplicate) = split[index];
                if to_sealed { sealed.push(trade(*key, Source::Ws)); } else { late.push(trade(*key, Source::Ws)); }
                if duplicate { late.push(trade(*key, Source::Rest)); }
            }
            // A cheap deterministic shuffle of the late rows.
            let length = late.len();
            for index in 0..length {
                let other = (shuffle_seed.wrapping_mul(index as u64 + 1) % length as u64) as usize;
                late.swap(index, other);
            }
            let (merged, _) = merge_into_sealed(sealed, late);
            prop_assert_eq!(merged.iter().map(Row::key).collect::<Vec<_>>(), keys);
            prop_assert!(merged.iter().all(|row| row.source() == Source::Ws));
        }
    }
}
