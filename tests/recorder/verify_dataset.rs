//! A small dataset built straight through `parquet_out::write_hour_file`
//! (no recorder, no exchange), for the `verify` tests and benchmark: spot
//! BTCUSDT trade, aggTrade and kline_1m over three hours that cross a day
//! (2026-11-23T22 to 2026-11-24T00), ids consecutive across hours, some
//! rows from REST, one declared aggTrade hole and one partial kline hour.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use binance_recorder::domain::{
    AggTradeRow, Decimal8, Hour, KlineInterval, KlineRow, Market, Row, Source, StreamKey,
    StreamKind, Symbol, TradeRow, UnfilledRange, MICROS_PER_HOUR, MICROS_PER_MINUTE,
};
use binance_recorder::parquet_out::{self, HourFile};

/// 2026-11-23T22:00:00Z.
pub const FIRST_HOUR_US: i64 = 1_795_471_200_000_000;
pub const TRADES_PER_HOUR: i64 = 40;
/// The aggTrade ids the second hour declares (not filled).
pub const DECLARED_AGG_IDS: (i64, i64) = (5_050, 5_052);
/// Where the first kline hour's coverage starts (the recorder started then).
pub const KLINE_COVERAGE_FROM_US: i64 = FIRST_HOUR_US + 15 * MICROS_PER_MINUTE;

pub fn key(kind: StreamKind) -> StreamKey {
    StreamKey {
        market: Market::Spot,
        symbol: Symbol::new("BTCUSDT").expect("valid symbol"),
        kind,
    }
}

pub fn hours() -> [Hour; 3] {
    let first = Hour::containing(FIRST_HOUR_US);
    [first, first.next(), first.next().next()]
}

pub const KLINE: StreamKind = StreamKind::Kline(KlineInterval::Minute1);

fn decimal(scaled: i128) -> Decimal8 {
    Decimal8::from_scaled(scaled)
}

/// Trades with ids `first_id..first_id + n`, spread evenly over `hour`;
/// every seventh from REST.
pub fn trade_rows(hour: Hour, first_id: i64, n: i64) -> Vec<Row> {
    let step = MICROS_PER_HOUR / n.max(1);
    (0..n)
        .map(|index| {
            let time = hour.start() + index * step + 17;
            let rest = index % 7 == 3;
            Row::Trade(TradeRow {
                trade_id: first_id + index,
                price: decimal(9_123_456_000_000 + i128::from(index % 13) * 1_000_000),
                quantity: decimal(12_345_678 + i128::from(index)),
                trade_time: time,
                is_buyer_maker: index % 2 == 0,
                is_best_match: Some(true),
                trade_type: None,
                event_time: (!rest).then_some(time + 1_000),
                recv_time: (!rest).then_some(time + 23_000),
                source: if rest { Source::Rest } else { Source::Ws },
            })
        })
        .collect()
}

pub fn agg_trade_rows(hour: Hour, first_id: i64, n: i64) -> Vec<Row> {
    trade_rows(hour, first_id, n)
        .into_iter()
        .map(|row| match row {
            Row::Trade(trade) => Row::AggTrade(AggTradeRow {
                agg_trade_id: trade.trade_id,
                price: trade.price,
                quantity: trade.quantity,
                first_trade_id: trade.trade_id * 2,
                last_trade_id: trade.trade_id * 2 + 1,
                trade_time: trade.trade_time,
                is_buyer_maker: trade.is_buyer_maker,
                is_best_match: trade.is_best_match,
                event_time: trade.event_time,
                recv_time: trade.recv_time,
                source: trade.source,
            }),
            other => other,
        })
        .collect()
}

/// One-minute klines of `hour` opening at or after `from`.
pub fn kline_rows(hour: Hour, from: i64) -> Vec<Row> {
    (0..60)
        .map(|minute| hour.start() + minute * MICROS_PER_MINUTE)
        .filter(|open| *open >= from)
        .map(|open| {
            Row::kline(KlineRow {
                open_time: open,
                close_time: open + MICROS_PER_MINUTE - 1,
                open: decimal(9_100_000_000_000),
                high: decimal(9_110_000_000_000),
                low: decimal(9_090_000_000_000),
                close: decimal(9_105_000_000_000),
                volume: decimal(1_000_000_000),
                quote_volume: decimal(91_000_000_000_000),
                trade_count: 12,
                taker_buy_base_volume: decimal(500_000_000),
                taker_buy_quote_volume: decimal(45_500_000_000_000),
                first_trade_id: Some(1),
                last_trade_id: Some(12),
                event_time: Some(open + MICROS_PER_MINUTE),
                recv_time: Some(open + MICROS_PER_MINUTE + 5_000),
                source: Source::Ws,
            })
        })
        .collect()
}

/// A whole-hour file of `rows`.
pub fn hour_file(kind: StreamKind, hour: Hour, rows: Vec<Row>) -> HourFile {
    HourFile {
        key: key(kind),
        hour,
        rows,
        unfilled: vec![],
        coverage_from: hour.start(),
        coverage_to: hour.end(),
        clock_offset_us: Some(-1_234),
        delivered_at: None,
        stopped_at: None,
    }
}

pub fn write(root: &Path, file: &HourFile) -> PathBuf {
    parquet_out::write_hour_file(root, file)
        .expect("test file written")
        .0
}

/// The good dataset's files, as written (change one and write it again to
/// break the dataset in one place).
pub fn good_files() -> Vec<HourFile> {
    let mut files = Vec::new();
    for (index, hour) in hours().into_iter().enumerate() {
        let offset = index as i64 * TRADES_PER_HOUR;
        files.push(hour_file(
            StreamKind::Trade,
            hour,
            trade_rows(hour, 1_000 + offset, TRADES_PER_HOUR),
        ));
        let mut agg = hour_file(
            StreamKind::AggTrade,
            hour,
            agg_trade_rows(hour, 5_000 + offset, TRADES_PER_HOUR),
        );
        if index == 1 {
            let (from, to) = DECLARED_AGG_IDS;
            let times: Vec<i64> = agg
                .rows
                .iter()
                .filter(|row| (from - 1..=to + 1).contains(&row.key()))
                .map(Row::bucket_time)
                .collect();
            agg.rows.retain(|row| !(from..=to).contains(&row.key()));
            agg.unfilled = vec![UnfilledRange {
                from: Some(from),
                to: Some(to),
                from_time: times[0],
                to_time: times[times.len() - 1],
                reason: "REST unreachable: connection refused".into(),
            }];
        }
        files.push(agg);
        let from = if index == 0 {
            KLINE_COVERAGE_FROM_US
        } else {
            hour.start()
        };
        let mut kline = hour_file(KLINE, hour, kline_rows(hour, from));
        kline.coverage_from = from;
        files.push(kline);
    }
    files
}

/// Writes the good dataset under `root` and returns its files' paths.
pub fn write_good_dataset(root: &Path) -> Vec<PathBuf> {
    good_files().iter().map(|file| write(root, file)).collect()
}

/// The file of `kind` and `hour` in the good dataset.
pub fn good_file(kind: StreamKind, hour: Hour) -> HourFile {
    good_files()
        .into_iter()
        .find(|file| file.key.kind == kind && file.hour == hour)
        .expect("the good dataset has every stream-hour")
}

pub fn path_of(root: &Path, kind: StreamKind, hour: Hour) -> PathBuf {
    parquet_out::hour_file_path(root, &key(kind), hour)
}
