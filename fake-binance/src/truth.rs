//! Ground truth: everything the exchange produced, as the recorder should have stored it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decimal::format_atoms;
use crate::interval::KlineInterval;
use crate::market::{kline_close_latency_us, KlineState, SymbolBook};
use crate::model::AggTrade;

/// All times are epoch microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroundTruth {
    pub trades: Vec<TruthTrade>,
    pub agg_trades: Vec<TruthAggTrade>,
    /// Closed klines per interval name (`1m`, `1M`, ...), for all 16 intervals, in open-time order.
    pub klines: BTreeMap<String, Vec<TruthKline>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthTrade {
    pub id: i64,
    pub price: String,
    pub quantity: String,
    pub time_us: i64,
    pub is_buyer_maker: bool,
    /// `None` on futures, whose trades carry no `M`.
    pub is_best_match: Option<bool>,
    /// Futures `X` (`MARKET` here); `None` on spot.
    pub trade_type: Option<String>,
    pub event_time_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthAggTrade {
    pub id: i64,
    pub price: String,
    pub quantity: String,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub time_us: i64,
    pub is_buyer_maker: bool,
    /// `None` on futures, whose aggTrades carry no `M`.
    pub is_best_match: Option<bool>,
    pub event_time_us: i64,
}

impl TruthAggTrade {
    /// The truth of an aggregate the fake made, with its `M` as sent.
    pub(crate) fn of(agg: &AggTrade, is_best_match: Option<bool>) -> TruthAggTrade {
        TruthAggTrade {
            id: agg.id,
            price: format_atoms(agg.price),
            quantity: format_atoms(agg.quantity),
            first_trade_id: agg.first_trade_id,
            last_trade_id: agg.last_trade_id,
            time_us: agg.time_us,
            is_buyer_maker: agg.is_buyer_maker,
            is_best_match,
            event_time_us: agg.event_time_us,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthKline {
    pub open_time_us: i64,
    /// Next open - 1 µs.
    pub close_time_us: i64,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub quote_volume: String,
    pub trade_count: i64,
    pub taker_buy_base_volume: String,
    pub taker_buy_quote_volume: String,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    /// `E` of the closing (`x: true`) event.
    pub close_event_time_us: i64,
}

impl TruthKline {
    pub(crate) fn from_state(kline: &KlineState, close_event_time_us: i64) -> TruthKline {
        TruthKline {
            open_time_us: kline.open_us,
            close_time_us: kline.next_open_us - 1,
            open: format_atoms(kline.open),
            high: format_atoms(kline.high),
            low: format_atoms(kline.low),
            close: format_atoms(kline.close),
            volume: format_atoms(kline.volume),
            quote_volume: format_atoms(kline.quote_volume()),
            trade_count: kline.trade_count,
            taker_buy_base_volume: format_atoms(kline.taker_buy_volume),
            taker_buy_quote_volume: format_atoms(kline.taker_buy_quote_volume()),
            first_trade_id: kline.first_trade_id,
            last_trade_id: kline.last_trade_id,
            close_event_time_us,
        }
    }
}

/// Trades and aggregate trades with trade time `T < until_us` whose event has been
/// published by `now_us` (`E <= now`). Both times never decrease along the vectors.
/// Every trade and aggregate trade with a time before `until_us`, published
/// by `now_us`; on futures each trade says its print type (`X`).
pub(crate) fn trades_until(
    book: &SymbolBook,
    until_us: i64,
    now_us: i64,
    futures: bool,
) -> (Vec<TruthTrade>, Vec<TruthAggTrade>) {
    let trades = book
        .trades
        .iter()
        .take_while(|trade| trade.time_us < until_us && trade.event_time_us <= now_us)
        .map(|trade| TruthTrade {
            id: trade.id,
            price: format_atoms(trade.price),
            quantity: format_atoms(trade.quantity),
            time_us: trade.time_us,
            is_buyer_maker: trade.is_buyer_maker,
            is_best_match: Some(trade.is_best_match),
            trade_type: futures.then(|| trade.print.as_str().to_owned()),
            event_time_us: trade.event_time_us,
        })
        .collect();
    let agg_trades = book
        .agg_trades
        .iter()
        .take_while(|agg| agg.time_us < until_us && agg.event_time_us <= now_us)
        .map(|agg| TruthAggTrade::of(agg, Some(agg.is_best_match)))
        .collect();
    (trades, agg_trades)
}

/// Klines with close time `< until_us` whose closing event has been published by `now_us`.
pub(crate) fn closed_klines_until(
    book: &SymbolBook,
    seed: u64,
    interval: KlineInterval,
    until_us: i64,
    now_us: i64,
) -> Vec<TruthKline> {
    let first_open = book.first_kline_open(interval);
    let last_open = interval.open_time_containing(until_us);
    if last_open < first_open {
        return Vec::new();
    }
    // Every generated fill counts (not only published ones), as the closing event
    // includes every trade of the kline, however late its own event is.
    book.klines_between(interval, first_open, last_open, i64::MAX, i64::MAX)
        .iter()
        .filter_map(|kline| {
            let close_event_time_us = kline.next_open_us
                + kline_close_latency_us(seed, book.index, interval, kline.open_us);
            let closed = kline.next_open_us <= until_us && close_event_time_us <= now_us;
            closed.then(|| TruthKline::from_state(kline, close_event_time_us))
        })
        .collect()
}

/// Whole milliseconds, as a market that speaks only ms sends a µs time.
fn in_whole_ms(time_us: i64) -> i64 {
    time_us.div_euclid(1000) * 1000
}

/// The truth as a market that speaks only milliseconds delivers it: times
/// in whole ms; on futures no best match flag.
pub(crate) fn in_milliseconds(mut truth: GroundTruth, futures: bool) -> GroundTruth {
    for trade in &mut truth.trades {
        trade.time_us = in_whole_ms(trade.time_us);
        trade.event_time_us = in_whole_ms(trade.event_time_us);
        if futures {
            trade.is_best_match = None;
        }
    }
    for agg in &mut truth.agg_trades {
        agg.time_us = in_whole_ms(agg.time_us);
        agg.event_time_us = in_whole_ms(agg.event_time_us);
        if futures {
            agg.is_best_match = None;
        }
    }
    for klines in truth.klines.values_mut() {
        klines_in_milliseconds(klines);
    }
    truth
}

/// Kline times as a market that speaks only ms delivers them (the open
/// times are whole ms already; the close time, one ms before the next open,
/// and the closing event's time are not).
pub(crate) fn klines_in_milliseconds(klines: &mut [TruthKline]) {
    for kline in klines {
        // `next open - 1 ms`, times 1000 (docs/DATASET.md, "Columns").
        kline.close_time_us = in_whole_ms(kline.close_time_us);
        kline.close_event_time_us = in_whole_ms(kline.close_event_time_us);
    }
}
