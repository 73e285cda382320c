//! What Binance's REST answers look like and how they become domain rows:
//! the wire structs (private: nothing outside this file sees the JSON's
//! shape), and pure `parse_*` functions that normalise times to µs, parse
//! decimals exactly and refuse times and ids outside what an exchange
//! sends. [`IdPaged`] says which endpoint pages a row kind by `fromId`.

use std::time::Duration;

use serde::Deserialize;

use super::SymbolStatus;
use crate::binance::decode::{exchange_id, exchange_time};
use crate::binance::limiter::{Endpoint, WeightLimit};
use crate::domain::{AggTradeRow, Decimal8, KlineRow, Source, TimeUs, TradeRow};

#[derive(Deserialize)]
pub(super) struct BinanceErrorBody {
    pub(super) code: i64,
    pub(super) msg: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExchangeInfo {
    pub(super) symbols: Vec<SymbolStatus>,
    #[serde(default)]
    pub(super) rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RateLimit {
    rate_limit_type: String,
    interval: String,
    interval_num: u32,
    limit: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerTime {
    server_time: i64,
}

// The wire rows of the gap-fill endpoints, turned into domain rows by the
// `parse_*` functions below.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trade {
    id: i64,
    price: String,
    qty: String,
    time: i64,
    is_buyer_maker: bool,
    /// Absent on futures.
    #[serde(default)]
    is_best_match: Option<bool>,
}

#[allow(non_snake_case)] // the fields mirror the JSON keys
#[derive(Deserialize)]
struct AggTrade {
    a: i64,
    p: String,
    q: String,
    f: i64,
    l: i64,
    T: i64,
    m: bool,
    /// Absent on futures.
    #[serde(default)]
    M: Option<bool>,
}

/// open time, open, high, low, close, volume, close time, quote volume,
/// trade count, taker buy base volume, taker buy quote volume, unused.
type Kline = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
    String,
    serde::de::IgnoredAny,
);

fn decimal(field: &str, text: &str) -> Result<Decimal8, String> {
    text.parse().map_err(|error| format!("{field}: {error}"))
}

/// A time of a REST row in µs, refused outside the range an exchange sends
/// (see [`exchange_time`]): hour arithmetic on a forged time would overflow.
fn checked_time(field: &str, value: i64) -> Result<TimeUs, String> {
    exchange_time(value).ok_or_else(|| format!("{field}: time {value} is out of range"))
}

/// An id of a REST row, refused outside the range an exchange sends (see
/// [`exchange_id`]): gap detection adds and subtracts 1 from ids.
fn checked_id(field: &str, value: i64) -> Result<i64, String> {
    exchange_id(value).ok_or_else(|| format!("{field}: id {value} is out of range"))
}

/// The body of `exchangeInfo`.
pub(super) fn parse_exchange_info(body: &[u8]) -> Result<ExchangeInfo, String> {
    serde_json::from_slice(body).map_err(|error| error.to_string())
}

/// The body of `/api/v3/time`: the exchange's clock, epoch µs.
pub(super) fn parse_server_time(body: &[u8]) -> Result<TimeUs, String> {
    let time: ServerTime = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    checked_time("serverTime", time.server_time)
}

pub(super) fn parse_trades(body: &[u8]) -> Result<Vec<TradeRow>, String> {
    let trades: Vec<Trade> = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    trades
        .into_iter()
        .map(|trade| {
            Ok(TradeRow {
                trade_id: checked_id("id", trade.id)?,
                price: decimal("price", &trade.price)?,
                quantity: decimal("qty", &trade.qty)?,
                trade_time: checked_time("time", trade.time)?,
                is_buyer_maker: trade.is_buyer_maker,
                is_best_match: trade.is_best_match,
                trade_type: None,
                event_time: None,
                recv_time: None,
                source: Source::Rest,
            })
        })
        .collect()
}

pub(super) fn parse_agg_trades(body: &[u8]) -> Result<Vec<AggTradeRow>, String> {
    let agg_trades: Vec<AggTrade> =
        serde_json::from_slice(body).map_err(|error| error.to_string())?;
    agg_trades
        .into_iter()
        .map(|agg| {
            Ok(AggTradeRow {
                agg_trade_id: checked_id("a", agg.a)?,
                price: decimal("p", &agg.p)?,
                quantity: decimal("q", &agg.q)?,
                first_trade_id: checked_id("f", agg.f)?,
                last_trade_id: checked_id("l", agg.l)?,
                trade_time: checked_time("T", agg.T)?,
                is_buyer_maker: agg.m,
                is_best_match: agg.M,
                event_time: None,
                recv_time: None,
                source: Source::Rest,
            })
        })
        .collect()
}

/// Every kline of the answer, the still-open one included. REST klines carry
/// no first/last trade id (DATASET.md: null on rest rows).
pub(super) fn parse_klines(body: &[u8]) -> Result<Vec<KlineRow>, String> {
    let klines: Vec<Kline> = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    klines
        .into_iter()
        .map(|kline| {
            let (
                open_time,
                open,
                high,
                low,
                close,
                volume,
                close_time,
                quote_volume,
                trade_count,
                taker_base,
                taker_quote,
                _,
            ) = kline;
            Ok(KlineRow {
                open_time: checked_time("open time", open_time)?,
                close_time: checked_time("close time", close_time)?,
                open: decimal("open", &open)?,
                high: decimal("high", &high)?,
                low: decimal("low", &low)?,
                close: decimal("close", &close)?,
                volume: decimal("volume", &volume)?,
                quote_volume: decimal("quote volume", &quote_volume)?,
                trade_count,
                taker_buy_base_volume: decimal("taker buy base volume", &taker_base)?,
                taker_buy_quote_volume: decimal("taker buy quote volume", &taker_quote)?,
                first_trade_id: None,
                last_trade_id: None,
                event_time: None,
                recv_time: None,
                source: Source::Rest,
            })
        })
        .collect()
}

/// The `REQUEST_WEIGHT` limit of a `rateLimits` list: the one-minute entry
/// (the one `X-MBX-USED-WEIGHT-1M` reports on), else the first.
pub(super) fn request_weight_limit(rate_limits: &[RateLimit]) -> Option<WeightLimit> {
    let window_of = |rate_limit: &RateLimit| {
        let unit_secs = match rate_limit.interval.as_str() {
            "SECOND" => 1,
            "MINUTE" => 60,
            "HOUR" => 3600,
            "DAY" => 86_400,
            _ => return None,
        };
        Some(Duration::from_secs(
            unit_secs * u64::from(rate_limit.interval_num.max(1)),
        ))
    };
    let weights: Vec<WeightLimit> = rate_limits
        .iter()
        .filter(|rate_limit| rate_limit.rate_limit_type == "REQUEST_WEIGHT")
        .filter_map(|rate_limit| {
            Some(WeightLimit {
                limit: rate_limit.limit,
                window: window_of(rate_limit)?,
            })
        })
        .collect();
    weights
        .iter()
        .find(|weight| weight.window == Duration::from_secs(60))
        .or(weights.first())
        .copied()
}

/// Rows with ids and times, paged by `fromId`.
pub(super) trait IdPaged: Sized {
    const ENDPOINT: Endpoint;
    fn id(&self) -> i64;
    fn time(&self) -> TimeUs;
    fn parse(body: &[u8]) -> Result<Vec<Self>, String>;
}

impl IdPaged for TradeRow {
    const ENDPOINT: Endpoint = Endpoint::HistoricalTrades;

    fn id(&self) -> i64 {
        self.trade_id
    }

    fn time(&self) -> TimeUs {
        self.trade_time
    }

    fn parse(body: &[u8]) -> Result<Vec<TradeRow>, String> {
        parse_trades(body)
    }
}

impl IdPaged for AggTradeRow {
    const ENDPOINT: Endpoint = Endpoint::AggTrades;

    fn id(&self) -> i64 {
        self.agg_trade_id
    }

    fn time(&self) -> TimeUs {
        self.trade_time
    }

    fn parse(body: &[u8]) -> Result<Vec<AggTradeRow>, String> {
        parse_agg_trades(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trades_parse_exactly_with_rest_source_and_no_stream_times() {
        let body = br#"[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]"#;
        let rows = parse_trades(body).expect("valid trades");
        assert_eq!(rows.len(), 1);
        let trade = &rows[0];
        assert_eq!(trade.trade_id, 28457);
        assert_eq!(trade.price.to_string(), "4.00000100");
        assert_eq!(trade.quantity.to_string(), "12.00000000");
        assert_eq!(
            trade.trade_time, 1_499_865_549_590_000,
            "ms normalised to µs"
        );
        assert!(trade.is_buyer_maker);
        assert_eq!(trade.is_best_match, Some(true));
        assert_eq!(
            (trade.event_time, trade.recv_time, trade.source),
            (None, None, Source::Rest)
        );
        assert_eq!(trade.trade_type, None);
    }

    #[test]
    fn futures_trades_have_no_best_match() {
        let body = br#"[{"id":1,"price":"1","qty":"2","quoteQty":"2","time":1499865549590123,"isBuyerMaker":false,"isRPITrade":false}]"#;
        let rows = parse_trades(body).expect("valid trades");
        assert_eq!(rows[0].is_best_match, None);
        assert_eq!(rows[0].trade_time, 1_499_865_549_590_123, "µs kept");
    }

    /// The USD-M and COIN-M entries of the reference's REST samples parse:
    /// `nq` and `isRPITrade` are read past, no best match.
    #[test]
    fn the_futures_rest_samples_parse() {
        let sample = |text: &str, name: &str| -> Vec<u8> {
            let all: serde_json::Value = serde_json::from_str(text).expect("sample JSON");
            serde_json::to_vec(&all[name]).expect("entry")
        };
        use crate::fuzz_input::samples;
        let aggs = parse_agg_trades(&sample(
            samples::REST_AGG_TRADES,
            "usdm_GET_fapi_v1_aggTrades_doc_example",
        ))
        .expect("USD-M aggTrades");
        assert_eq!((aggs[0].agg_trade_id, aggs[0].is_best_match), (26129, None));
        let aggs = parse_agg_trades(&sample(
            samples::REST_AGG_TRADES,
            "coinm_GET_dapi_v1_aggTrades_doc_example",
        ))
        .expect("COIN-M aggTrades");
        assert_eq!(aggs[0].quantity.to_string(), "3.00000000");
        let trades = parse_trades(&sample(
            samples::REST_TRADES,
            "usdm_GET_fapi_v1_historicalTrades_connector_fixture",
        ))
        .expect("USD-M trades");
        assert_eq!((trades[0].trade_id, trades[0].is_best_match), (28457, None));
        let klines = parse_klines(&sample(
            samples::REST_KLINES,
            "usdm_GET_fapi_v1_klines_doc_example",
        ))
        .expect("USD-M klines, a non-zero ignored last element");
        assert_eq!(klines[0].trade_count, 308);
    }

    #[test]
    fn agg_trades_parse_with_their_trade_id_range() {
        let body = br#"[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}]"#;
        let rows = parse_agg_trades(body).expect("valid aggTrades");
        let agg = &rows[0];
        assert_eq!(
            (agg.agg_trade_id, agg.first_trade_id, agg.last_trade_id),
            (26129, 27781, 27781)
        );
        assert_eq!(agg.price.to_string(), "0.01633102");
        assert_eq!(agg.trade_time, 1_498_793_709_153_000);
        assert_eq!((agg.is_buyer_maker, agg.is_best_match), (true, Some(true)));
        assert_eq!(
            (agg.event_time, agg.recv_time, agg.source),
            (None, None, Source::Rest)
        );
    }

    #[test]
    fn voided_agg_trades_parse() {
        // The 2022-04-12 repair kept duplicates voided with zeros and -1 (reference 7).
        let body =
            br#"[{"a":5,"p":"0","q":"0","f":-1,"l":-1,"T":1498793709153,"m":false,"M":true}]"#;
        let rows = parse_agg_trades(body).expect("valid aggTrades");
        assert_eq!(
            (rows[0].first_trade_id, rows[0].price),
            (-1, Decimal8::ZERO)
        );
    }

    #[test]
    fn klines_parse_twelve_element_arrays_without_trade_ids() {
        let body = br#"[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]"#;
        let rows = parse_klines(body).expect("valid klines");
        let kline = &rows[0];
        assert_eq!(kline.open_time, 1_499_040_000_000_000);
        assert_eq!(
            kline.close_time, 1_499_644_799_999_000,
            "a ms close time is multiplied by 1000, as the contract says"
        );
        assert_eq!(kline.high.to_string(), "0.80000000");
        assert_eq!(kline.quote_volume.to_string(), "2434.19055334");
        assert_eq!(kline.trade_count, 308);
        assert_eq!(kline.taker_buy_quote_volume.to_string(), "28.46694368");
        assert_eq!((kline.first_trade_id, kline.last_trade_id), (None, None));
        assert_eq!(
            (kline.event_time, kline.recv_time, kline.source),
            (None, None, Source::Rest)
        );
    }

    #[test]
    fn unrepresentable_values_are_errors_never_rounded() {
        let body = br#"[{"a":1,"p":"0.016331021","q":"1","f":1,"l":1,"T":1,"m":true,"M":true}]"#;
        let error = parse_agg_trades(body).expect_err("nine decimals");
        assert!(error.contains("0.016331021"), "{error}");
        let short_kline = br#"[[1499040000000,"1","1","1","1","1",1499644799999,"1",3,"1","1"]]"#;
        assert!(parse_klines(short_kline).is_err(), "eleven elements");
        assert!(
            parse_trades(br#"[{"id":1,"price":"1","#).is_err(),
            "truncated body"
        );
    }

    #[test]
    fn the_one_minute_request_weight_limit_is_read() {
        let info: ExchangeInfo = serde_json::from_str(
            r#"{"symbols":[],"rateLimits":[
                {"rateLimitType":"RAW_REQUESTS","interval":"MINUTE","intervalNum":5,"limit":300000},
                {"rateLimitType":"REQUEST_WEIGHT","interval":"SECOND","intervalNum":10,"limit":1000},
                {"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000}]}"#,
        )
        .expect("valid exchangeInfo");
        let limit = request_weight_limit(&info.rate_limits).expect("a weight limit");
        assert_eq!(
            limit,
            WeightLimit {
                limit: 6000,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(request_weight_limit(&[]), None);
    }
}

/// Fuzz-style property tests of the pure body parsers: arbitrary bytes and
/// mutated real bodies give rows or an error, never a panic.
#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{MAX_EXCHANGE_TIME_US, MIN_EXCHANGE_TIME_US};
    use crate::fuzz_input::{fuzz_input, labelled_bodies, samples};

    const EXCHANGE_INFO: &str = r#"{"timezone":"UTC","serverTime":1565246363776,"rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000},{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,"limit":100}],"exchangeFilters":[],"symbols":[{"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC"}]}"#;
    const SERVER_TIME: &str = r#"{"serverTime":1499827319559}"#;

    fn body_seeds() -> Vec<Vec<u8>> {
        let mut seeds: Vec<Vec<u8>> = [
            samples::REST_TRADES,
            samples::REST_AGG_TRADES,
            samples::REST_KLINES,
        ]
        .into_iter()
        .flat_map(labelled_bodies)
        .collect();
        seeds.push(EXCHANGE_INFO.as_bytes().to_vec());
        seeds.push(SERVER_TIME.as_bytes().to_vec());
        seeds
    }

    fn in_time_range(time: TimeUs) -> bool {
        (MIN_EXCHANGE_TIME_US..=MAX_EXCHANGE_TIME_US).contains(&time)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn body_parsers_never_panic(body in fuzz_input(body_seeds())) {
            if let Ok(rows) = parse_trades(&body) {
                prop_assert!(rows.iter().all(|row| in_time_range(row.trade_time)));
            }
            if let Ok(rows) = parse_agg_trades(&body) {
                prop_assert!(rows.iter().all(|row| in_time_range(row.trade_time)));
            }
            if let Ok(rows) = parse_klines(&body) {
                prop_assert!(rows.iter().all(|row| in_time_range(row.open_time)));
            }
            if let Ok(info) = parse_exchange_info(&body) {
                let _ = request_weight_limit(&info.rate_limits);
            }
            if let Ok(time) = parse_server_time(&body) {
                prop_assert!(in_time_range(time));
            }
        }
    }

    #[test]
    fn the_seed_bodies_parse() {
        let spot_trades = labelled_bodies(samples::REST_TRADES);
        assert!(spot_trades.iter().any(|body| parse_trades(body).is_ok()));
        let agg_trades = labelled_bodies(samples::REST_AGG_TRADES);
        assert!(agg_trades.iter().any(|body| parse_agg_trades(body).is_ok()));
        let klines = labelled_bodies(samples::REST_KLINES);
        assert!(klines.iter().any(|body| parse_klines(body).is_ok()));
        let info = parse_exchange_info(EXCHANGE_INFO.as_bytes()).expect("exchangeInfo");
        assert_eq!(info.symbols[0].symbol, "BTCUSDT");
        assert_eq!(
            parse_server_time(SERVER_TIME.as_bytes()),
            Ok(1_499_827_319_559_000)
        );
    }

    #[test]
    fn extreme_times_and_ids_in_bodies_are_errors() {
        assert!(parse_server_time(br#"{"serverTime":-9223372036854775808}"#).is_err());
        let far_trade =
            br#"[{"id":1,"price":"1","qty":"1","time":9223372036854775807,"isBuyerMaker":true}]"#;
        assert!(parse_trades(far_trade).is_err());
        let huge_id = br#"[{"a":9223372036854775807,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}]"#;
        assert!(parse_agg_trades(huge_id).is_err());
    }
}
