//! Pure fill planning: how a round's holes are asked for with the fewest
//! REST calls. The weight of a call does not depend on how many of its
//! rows are wanted (`historicalTrades` costs 25 for one trade or for 1,000),
//! so holes a single page can answer share one call.
//!
//! A *batch* is one range fetched (`fetch`) for one or more holes of a
//! stream-hour (`parts`): the rows REST returns between the parts are rows
//! the stream already holds and are dropped, and each part is settled on
//! its own, exactly as if it had been fetched alone.

use crate::binance::rest::MAX_PAGE_ROWS;
use crate::domain::{StreamKind, TimeUs};
use crate::gaps::{Hole, IdHole, KlineHole};

/// One range fetched for the holes it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The range asked for: spans every part.
    pub fetch: Hole,
    /// The holes the range answers, in key order.
    pub parts: Vec<Hole>,
}

impl Batch {
    fn alone(hole: Hole) -> Batch {
        Batch {
            fetch: hole,
            parts: vec![hole],
        }
    }

    /// Whether `key` lies in one of the batch's holes (a row REST returned
    /// between two holes is one the stream delivered: not kept).
    pub fn wants(&self, key: i64) -> bool {
        self.parts.iter().any(|part| {
            let (from, to) = part.key_bounds();
            from.is_none_or(|from| key >= from) && to.is_none_or(|to| key <= to)
        })
    }
}

/// Most ids (or 1 s klines) one page answers.
const PAGE_KEYS: i64 = MAX_PAGE_ROWS as i64;

/// Pure: the holes of one stream-hour grouped into the fewest calls.
/// Holes with both ids known are merged, in id order, while the merged
/// range still fits one page (`limit` 1,000); kline holes of the hour are
/// merged while the span holds at most 1,000 klines (for 1 m and longer,
/// always the whole hour). Holes with an open end (probed by time up to
/// the hour's end) stay alone.
pub fn batch_holes(kind: StreamKind, holes: &[Hole]) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut closed_ids: Vec<IdHole> = Vec::new();
    let mut klines: Vec<KlineHole> = Vec::new();
    for hole in holes {
        match hole {
            Hole::Ids(ids) if ids.is_closed() => closed_ids.push(*ids),
            Hole::Klines(kline) => klines.push(*kline),
            other => batches.push(Batch::alone(*other)),
        }
    }
    closed_ids.sort_by_key(|hole| hole.from_id);
    let mut current: Option<Batch> = None;
    for hole in closed_ids {
        let (Some(from_id), Some(to_id)) = (hole.from_id, hole.to_id) else {
            continue;
        };
        if let Some(Batch {
            fetch: Hole::Ids(fetch),
            parts,
        }) = current.as_mut()
        {
            let first = fetch.from_id.unwrap_or(from_id);
            if to_id.saturating_sub(first) < PAGE_KEYS {
                fetch.to_id = Some(to_id.max(fetch.to_id.unwrap_or(to_id)));
                fetch.to_time = fetch.to_time.max(hole.to_time);
                parts.push(Hole::Ids(hole));
                continue;
            }
        }
        batches.extend(current.replace(Batch::alone(Hole::Ids(hole))));
    }
    batches.extend(current);
    klines.sort_by_key(|hole| hole.first_open);
    let mut current: Option<Batch> = None;
    for hole in klines {
        if let Some(Batch {
            fetch: Hole::Klines(fetch),
            parts,
        }) = current.as_mut()
        {
            if kline_span_fits(kind, fetch.first_open, hole.last_open) {
                fetch.last_open = fetch.last_open.max(hole.last_open);
                parts.push(Hole::Klines(hole));
                continue;
            }
        }
        batches.extend(current.replace(Batch::alone(Hole::Klines(hole))));
    }
    batches.extend(current);
    batches
}

fn kline_span_fits(kind: StreamKind, first_open: TimeUs, last_open: TimeUs) -> bool {
    let StreamKind::Kline(interval) = kind else {
        return false;
    };
    let step = (interval.next_open_time(first_open) - first_open).max(1);
    (last_open - first_open) / step < PAGE_KEYS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KlineInterval, MICROS_PER_SECOND};

    fn ids(from: i64, to: i64) -> Hole {
        Hole::Ids(IdHole {
            from_id: Some(from),
            to_id: Some(to),
            from_time: from * 10,
            to_time: to * 10,
        })
    }

    fn open_start(to: i64) -> Hole {
        Hole::Ids(IdHole {
            from_id: None,
            to_id: Some(to),
            from_time: 0,
            to_time: to * 10,
        })
    }

    #[test]
    fn id_holes_one_page_apart_share_one_call_and_farther_ones_do_not() {
        let holes = [
            ids(1_500, 1_510),
            ids(100, 120),
            ids(700, 1_099),
            ids(1_100, 1_100),
        ];
        let batches = batch_holes(StreamKind::Trade, &holes);
        assert_eq!(
            batches.iter().map(|batch| batch.fetch).collect::<Vec<_>>(),
            vec![
                Hole::Ids(IdHole {
                    from_id: Some(100),
                    to_id: Some(1_099),
                    from_time: 1_000,
                    to_time: 10_990,
                }),
                Hole::Ids(IdHole {
                    from_id: Some(1_100),
                    to_id: Some(1_510),
                    from_time: 11_000,
                    to_time: 15_100,
                }),
            ],
            "100..=1099 is exactly one page; 1100 starts the next"
        );
        assert_eq!(batches[0].parts, vec![ids(100, 120), ids(700, 1_099)]);
        assert!(batches[0].wants(110) && !batches[0].wants(500));
        assert_eq!(
            batches.iter().map(|batch| batch.parts.len()).sum::<usize>(),
            holes.len(),
            "every hole in exactly one batch"
        );
    }

    #[test]
    fn open_holes_stay_alone_and_kline_holes_of_an_hour_share_one_call() {
        let minute = 60 * MICROS_PER_SECOND;
        let klines = |first: i64, last: i64| {
            Hole::Klines(KlineHole {
                first_open: first * minute,
                last_open: last * minute,
            })
        };
        let holes = [open_start(50), klines(40, 41), klines(3, 5), ids(60, 61)];
        let batches = batch_holes(StreamKind::Kline(KlineInterval::Minute1), &holes);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0], Batch::alone(open_start(50)));
        assert_eq!(batches[1], Batch::alone(ids(60, 61)));
        assert_eq!(batches[2].fetch, klines(3, 41));
        assert_eq!(batches[2].parts, vec![klines(3, 5), klines(40, 41)]);
        assert!(batches[2].wants(4 * minute) && !batches[2].wants(20 * minute));
    }
}
