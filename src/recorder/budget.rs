//! Pure fill planning: how a round's holes are asked for with the fewest
//! REST calls. The weight of a call does not depend on how many of its
//! rows are wanted (`historicalTrades` costs 25 for one trade or for 1,000),
//! so holes a single page can answer share one call.
//!
//! A *batch* is one range fetched (`fetch`) for one or more holes of a
//! stream-hour (`parts`): the rows REST returns between the parts are rows
//! the stream already holds and are dropped, and each part is settled on
//! its own, exactly as if it had been fetched alone.
//!
//! On spot, an aggregate trade names the trade ids it covers (`f..l`), and
//! an hour's aggregates tile its trade ids: once the aggTrade stream of a
//! symbol holds an hour complete, the trade ids a trade hole of that hour
//! lacks are known exactly ([`resolve_trade_holes`]). An aggregate of one
//! fill (`f == l`) *is* that trade (same price, quantity, time and side),
//! so it needs no call; a part no aggregate covers is proven empty; only
//! the ids of aggregates of several fills are asked of `historicalTrades`.

use crate::binance::rest::MAX_PAGE_ROWS;
use crate::domain::{Decimal8, Row, Source, StreamKind, TimeUs, TradeRow};
use crate::gaps::{Hole, IdHole, KlineHole, Settled};

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

/// Most aggregates kept as evidence for one symbol-hour: a busier hour
/// is filled from REST as before (its trade holes are rarely empty).
pub const MAX_EVIDENCE_AGGS: usize = 5_000;

/// One aggregate trade as evidence of the trade ids it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggSpan {
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub time: TimeUs,
    pub price: Decimal8,
    pub quantity: Decimal8,
    pub is_buyer_maker: bool,
    pub is_best_match: Option<bool>,
}

impl AggSpan {
    /// The span of an aggTrade row; `None` for other rows and for the
    /// voided duplicates of 2022 (`f = l = -1`), which cover no trade.
    pub fn of(row: &Row) -> Option<AggSpan> {
        let Row::AggTrade(agg) = row else {
            return None;
        };
        (agg.first_trade_id >= 0 && agg.last_trade_id >= agg.first_trade_id).then_some(AggSpan {
            first_trade_id: agg.first_trade_id,
            last_trade_id: agg.last_trade_id,
            time: agg.trade_time,
            price: agg.price,
            quantity: agg.quantity,
            is_buyer_maker: agg.is_buyer_maker,
            is_best_match: agg.is_best_match,
        })
    }

    /// The one trade of an aggregate of one fill.
    fn only_trade(&self) -> Option<Row> {
        (self.first_trade_id == self.last_trade_id).then_some({
            Row::Trade(TradeRow {
                trade_id: self.first_trade_id,
                price: self.price,
                quantity: self.quantity,
                trade_time: self.time,
                is_buyer_maker: self.is_buyer_maker,
                is_best_match: self.is_best_match,
                trade_type: None,
                event_time: None,
                recv_time: None,
                source: Source::Rest,
            })
        })
    }
}

/// What the aggTrade evidence answers for a stream-hour's trade holes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Trades of one-fill aggregates, in id order.
    pub rows: Vec<Row>,
    /// Trade ids answered for: the rows above, and open ends no aggregate
    /// reaches (nothing there in this hour).
    pub settled: Vec<Settled>,
    /// What only REST can fill: ids of aggregates of several fills, and
    /// ids of closed holes no aggregate covers (not claimed empty).
    pub holes: Vec<Hole>,
}

/// Pure: answers trade holes from the complete aggTrades (`aggs`, in any
/// order) of the same symbol-hour. Settles only what the evidence shows:
/// the trades of one-fill aggregates, and open ends past every aggregate
/// of the hour; closed ranges no aggregate covers stay holes for REST.
pub fn resolve_trade_holes(holes: &[Hole], aggs: &[AggSpan]) -> Resolved {
    let mut aggs: Vec<&AggSpan> = aggs.iter().collect();
    aggs.sort_by_key(|agg| agg.first_trade_id);
    let mut resolved = Resolved::default();
    for hole in holes {
        let Hole::Ids(ids) = hole else {
            resolved.holes.push(*hole);
            continue;
        };
        let low = ids.from_id.unwrap_or(i64::MIN);
        let high = ids.to_id.unwrap_or(i64::MAX);
        let covering: Vec<(i64, i64, &AggSpan)> = aggs
            .iter()
            .filter(|agg| agg.last_trade_id >= low && agg.first_trade_id <= high)
            .map(|agg| {
                (
                    agg.first_trade_id.max(low),
                    agg.last_trade_id.min(high),
                    *agg,
                )
            })
            .collect();
        let (Some(first), Some(last)) = (covering.first(), covering.last()) else {
            if ids.is_closed() {
                resolved.holes.push(*hole);
            } else {
                resolved.settled.push(Settled {
                    from: ids.from_id,
                    to: ids.to_id,
                });
            }
            continue;
        };
        if ids.from_id.is_none() {
            resolved.settled.push(Settled {
                from: None,
                to: Some(first.0 - 1),
            });
        }
        if ids.to_id.is_none() {
            resolved.settled.push(Settled {
                from: Some(last.1 + 1),
                to: None,
            });
        }
        // Inside a closed hole, ids between aggregates are not claimed.
        let mut next_id = ids.from_id.unwrap_or(first.0);
        for (start, end, agg) in &covering {
            if *start > next_id {
                resolved.holes.push(Hole::Ids(IdHole {
                    from_id: Some(next_id),
                    to_id: Some(start - 1),
                    ..*ids
                }));
            }
            next_id = end + 1;
            match agg.only_trade() {
                Some(row) => {
                    resolved.rows.push(row);
                    resolved.settled.push(Settled {
                        from: Some(*start),
                        to: Some(*end),
                    });
                }
                None => resolved.holes.push(Hole::Ids(IdHole {
                    from_id: Some(*start),
                    to_id: Some(*end),
                    from_time: agg.time,
                    to_time: agg.time,
                })),
            }
        }
        if let Some(to_id) = ids.to_id {
            if next_id <= to_id {
                resolved.holes.push(Hole::Ids(IdHole {
                    from_id: Some(next_id),
                    to_id: Some(to_id),
                    ..*ids
                }));
            }
        }
    }
    resolved
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

    trait WithTimes {
        fn with_times(self, from_time: TimeUs, to_time: TimeUs) -> Hole;
    }

    impl WithTimes for Hole {
        fn with_times(self, from_time: TimeUs, to_time: TimeUs) -> Hole {
            match self {
                Hole::Ids(hole) => Hole::Ids(IdHole {
                    from_time,
                    to_time,
                    ..hole
                }),
                other => other,
            }
        }
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

    fn agg(first: i64, last: i64, time: TimeUs) -> AggSpan {
        AggSpan {
            first_trade_id: first,
            last_trade_id: last,
            time,
            price: "1.5".parse().expect("decimal"),
            quantity: "2".parse().expect("decimal"),
            is_buyer_maker: true,
            is_best_match: Some(true),
        }
    }

    fn whole_hour() -> Hole {
        Hole::Ids(IdHole {
            from_id: None,
            to_id: None,
            from_time: 0,
            to_time: 3_599_999_999,
        })
    }

    #[test]
    fn an_hour_the_agg_trades_show_empty_needs_no_trade_call() {
        let resolved = resolve_trade_holes(&[whole_hour()], &[]);
        assert_eq!(
            resolved,
            Resolved {
                rows: vec![],
                settled: vec![Settled {
                    from: None,
                    to: None
                }],
                holes: vec![],
            }
        );
    }

    #[test]
    fn one_fill_aggregates_are_the_trades_and_only_several_fills_are_asked_for() {
        let aggs = [agg(10, 10, 100), agg(11, 13, 200), agg(14, 14, 300)];
        let resolved = resolve_trade_holes(&[whole_hour()], &aggs);
        assert_eq!(
            resolved.rows.iter().map(Row::key).collect::<Vec<_>>(),
            vec![10, 14]
        );
        let Row::Trade(trade) = &resolved.rows[0] else {
            panic!("a trade row");
        };
        assert_eq!(
            (trade.trade_time, trade.quantity.to_string(), trade.source),
            (100, "2.00000000".to_owned(), Source::Rest)
        );
        assert_eq!(
            resolved.settled,
            vec![
                Settled {
                    from: None,
                    to: Some(9)
                },
                Settled {
                    from: Some(15),
                    to: None
                },
                Settled {
                    from: Some(10),
                    to: Some(10)
                },
                Settled {
                    from: Some(14),
                    to: Some(14)
                },
            ]
        );
        assert_eq!(
            resolved.holes,
            vec![Hole::Ids(IdHole {
                from_id: Some(11),
                to_id: Some(13),
                from_time: 200,
                to_time: 200
            })]
        );
    }

    #[test]
    fn a_closed_hole_claims_only_the_ids_aggregates_cover() {
        // Ids 5..=9 are missing; aggregates cover 6 and 8..=9 only.
        let aggs = [agg(6, 6, 60), agg(8, 9, 80), agg(20, 20, 200)];
        let resolved = resolve_trade_holes(&[ids(5, 9)], &aggs);
        assert_eq!(
            resolved.rows.iter().map(Row::key).collect::<Vec<_>>(),
            vec![6]
        );
        assert_eq!(
            resolved.holes,
            vec![
                ids(5, 5).with_times(50, 90),
                ids(7, 7).with_times(50, 90),
                Hole::Ids(IdHole {
                    from_id: Some(8),
                    to_id: Some(9),
                    from_time: 80,
                    to_time: 80
                }),
            ],
            "REST is asked for the rest; nothing uncovered is claimed empty"
        );
        // A closed hole no aggregate reaches stays for REST.
        assert_eq!(
            resolve_trade_holes(&[ids(30, 31)], &aggs).holes,
            vec![ids(30, 31)]
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
