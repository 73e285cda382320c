//! JSON as Binance writes it, field by field in Binance's order.
//!
//! Written by hand rather than through serde so the key order and number
//! formats are exactly those of the real streams (`e,E,s,t,p,q,T,m,M`).

use std::fmt::Write;

use serde::Serialize;

use crate::config::Market;
use crate::decimal::{
    base_product_wide, push_decimals, quote_atoms, significant_decimals, wide_to_atoms,
};
use crate::interval::KlineInterval;
use crate::market::KlineState;
use crate::model::{AggTrade, SymbolSpec, Trade};

/// Unit of times on the wire: milliseconds by default, microseconds on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    Millisecond,
    Microsecond,
}

impl TimeUnit {
    /// Accepts the spellings Binance documents (`MICROSECOND`, `microsecond`, ...).
    pub fn parse(text: &str) -> Option<TimeUnit> {
        match text {
            "MILLISECOND" | "millisecond" => Some(TimeUnit::Millisecond),
            "MICROSECOND" | "microsecond" => Some(TimeUnit::Microsecond),
            _ => None,
        }
    }

    /// Converts an internal µs time; milliseconds are truncated.
    pub fn convert(self, time_us: i64) -> i64 {
        match self {
            TimeUnit::Millisecond => time_us.div_euclid(1000),
            TimeUnit::Microsecond => time_us,
        }
    }

    /// A kline's close time: next open minus one unit.
    pub fn kline_close(self, next_open_us: i64) -> i64 {
        self.convert(next_open_us) - 1
    }
}

/// The event and REST row shapes of a market (reference 4 and 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Spot and Binance.US: trades and aggTrades carry `M`.
    Spot,
    /// USD-M: trades carry `X` and no `M`; aggTrades carry `nq` and no
    /// `M`; REST trades carry `isRPITrade`, no `isBestMatch`.
    Futures,
    /// COIN-M: USD-M's shapes without `nq` (the reference's COIN-M
    /// `aggTrades` sample and the real dstream capture have none).
    CoinM,
}

impl Shape {
    /// USD-M or COIN-M.
    pub fn is_futures(self) -> bool {
        matches!(self, Shape::Futures | Shape::CoinM)
    }
}

/// The decimals a market writes one symbol's amounts with. Spot and
/// Binance.US print eight everywhere (`"61685.99000000"`, the real spot
/// captures); futures print a symbol's own precision (`"27785.00"`,
/// `"0.014"`, COIN-M `"3"`: reference 4.4 and the real fstream, dstream
/// and exchangeInfo answers in the shared data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Prices (`p`, kline `o h l c`): the tick size's decimals on futures
    /// (`pricePrecision`).
    pub price: u32,
    /// Quantities (`q`, `nq`, kline `v V`): the step size's decimals on
    /// futures (`quantityPrecision`).
    pub quantity: u32,
    /// Sums of price x quantity (kline `q Q`, REST `quoteQty`); on COIN-M
    /// base-asset amounts (below).
    pub quote: u32,
    /// COIN-M: the contract's size in USD. Its kline `q`/`Q` are then
    /// base-asset volumes (contracts x size / price, summed by
    /// [`KlineState::add`]) and REST trades carry `baseQty` in place of
    /// `quoteQty` (reference 9's COIN-M trade columns: "base qty").
    pub contract_size: Option<i64>,
}

impl Precision {
    /// Eight decimals for every amount.
    pub const SPOT: Precision = Precision {
        price: 8,
        quantity: 8,
        quote: 8,
        contract_size: None,
    };

    /// The precision `market` writes `spec`'s amounts with. The model's
    /// prices are multiples of the tick and its quantities of the step, so
    /// these decimals hold them exactly; replayed values that need more get
    /// more ([`push_decimals`] never rounds).
    pub fn of(market: Market, spec: &SymbolSpec) -> Precision {
        let price = significant_decimals(spec.tick_atoms);
        let quantity = significant_decimals(spec.step_atoms);
        match market {
            Market::Spot | Market::Us => Precision::SPOT,
            // A USD-M quote volume has the price's decimals plus the
            // quantity's (the real `"3715253.19494"` is 2 + 3,
            // `"3957.89900"` 5 + 0): a sum of products of a tick multiple
            // and a step multiple is exact there. Every symbol the model
            // knows has at most 8 of them.
            Market::UsdM => Precision {
                price,
                quantity,
                quote: (price + quantity).min(8),
                contract_size: None,
            },
            // COIN-M's kline `q`/`Q` have eight decimals in the real
            // dstream capture (`"9.49653573"`, `"0.00000000"`): base-asset
            // volumes (contracts x size / price), printed truncated.
            Market::CoinM => Precision {
                price,
                quantity,
                quote: 8,
                contract_size: spec.contract_size,
            },
        }
    }
}

/// A price, the `","q":"` between, and a quantity: the middle of every
/// trade and aggTrade event, whose `"p":"` opens it.
fn push_price_and_quantity(out: &mut String, price: i64, quantity: i64, precision: Precision) {
    push_decimals(out, price, precision.price);
    out.push_str(r#"","q":""#);
    push_decimals(out, quantity, precision.quantity);
}

pub fn trade_event(
    symbol: &str,
    trade: &Trade,
    unit: TimeUnit,
    shape: Shape,
    precision: Precision,
) -> String {
    if shape.is_futures() {
        return futures_trade_event(symbol, trade, unit, precision);
    }
    let mut out = String::with_capacity(160);
    write!(
        out,
        r#"{{"e":"trade","E":{},"s":"{}","t":{},"p":""#,
        unit.convert(trade.event_time_us),
        symbol,
        trade.id
    )
    .expect("writing to a String cannot fail");
    push_price_and_quantity(&mut out, trade.price, trade.quantity, precision);
    write!(
        out,
        r#"","T":{},"m":{},"M":{}}}"#,
        unit.convert(trade.time_us),
        trade.is_buyer_maker,
        trade.is_best_match
    )
    .expect("writing to a String cannot fail");
    out
}

/// A USD-M `@trade` event in the key order of the captures
/// (`samples/futures-trade.jsonl`): `e,E,T,s,t,p,q,X,m`.
fn futures_trade_event(
    symbol: &str,
    trade: &Trade,
    unit: TimeUnit,
    precision: Precision,
) -> String {
    let mut out = String::with_capacity(160);
    write!(
        out,
        r#"{{"e":"trade","E":{},"T":{},"s":"{}","t":{},"p":""#,
        unit.convert(trade.event_time_us),
        unit.convert(trade.time_us),
        symbol,
        trade.id
    )
    .expect("writing to a String cannot fail");
    push_price_and_quantity(&mut out, trade.price, trade.quantity, precision);
    write!(
        out,
        r#"","X":"{}","m":{}}}"#,
        trade.print.as_str(),
        trade.is_buyer_maker
    )
    .expect("writing to a String cannot fail");
    out
}

pub fn agg_trade_event(
    symbol: &str,
    agg: &AggTrade,
    unit: TimeUnit,
    shape: Shape,
    precision: Precision,
) -> String {
    if shape.is_futures() {
        return futures_agg_trade_event(symbol, agg, unit, shape == Shape::Futures, precision);
    }
    let mut out = String::with_capacity(180);
    write!(
        out,
        r#"{{"e":"aggTrade","E":{},"s":"{}","a":{},"p":""#,
        unit.convert(agg.event_time_us),
        symbol,
        agg.id
    )
    .expect("writing to a String cannot fail");
    push_price_and_quantity(&mut out, agg.price, agg.quantity, precision);
    write!(
        out,
        r#"","f":{},"l":{},"T":{},"m":{},"M":{}}}"#,
        agg.first_trade_id,
        agg.last_trade_id,
        unit.convert(agg.time_us),
        agg.is_buyer_maker,
        agg.is_best_match
    )
    .expect("writing to a String cannot fail");
    out
}

/// A USD-M `@aggTrade` event as documented: `e,E,s,a,p,q,nq,f,l,T,m`, no `M`.
/// `nq` (quantity without RPI fills) equals `q`: the model has no RPI orders.
/// COIN-M's has no `nq` (`with_nq` false).
fn futures_agg_trade_event(
    symbol: &str,
    agg: &AggTrade,
    unit: TimeUnit,
    with_nq: bool,
    precision: Precision,
) -> String {
    let mut out = String::with_capacity(180);
    write!(
        out,
        r#"{{"e":"aggTrade","E":{},"s":"{}","a":{},"p":""#,
        unit.convert(agg.event_time_us),
        symbol,
        agg.id
    )
    .expect("writing to a String cannot fail");
    push_price_and_quantity(&mut out, agg.price, agg.quantity, precision);
    if with_nq {
        out.push_str(r#"","nq":""#);
        push_decimals(&mut out, agg.quantity, precision.quantity);
    }
    write!(
        out,
        r#"","f":{},"l":{},"T":{},"m":{}}}"#,
        agg.first_trade_id,
        agg.last_trade_id,
        unit.convert(agg.time_us),
        agg.is_buyer_maker
    )
    .expect("writing to a String cannot fail");
    out
}

pub fn kline_event(
    symbol: &str,
    interval: KlineInterval,
    kline: &KlineState,
    closed: bool,
    event_time_us: i64,
    unit: TimeUnit,
    precision: Precision,
) -> String {
    let mut out = String::with_capacity(400);
    write!(
        out,
        r#"{{"e":"kline","E":{},"s":"{}","k":{{"t":{},"T":{},"s":"{}","i":"{}","f":{},"L":{},"o":""#,
        unit.convert(event_time_us),
        symbol,
        unit.convert(kline.open_us),
        unit.kline_close(kline.next_open_us),
        symbol,
        interval.as_str(),
        kline.first_trade_id,
        kline.last_trade_id
    )
    .expect("writing to a String cannot fail");
    push_decimals(&mut out, kline.open, precision.price);
    out.push_str(r#"","c":""#);
    push_decimals(&mut out, kline.close, precision.price);
    out.push_str(r#"","h":""#);
    push_decimals(&mut out, kline.high, precision.price);
    out.push_str(r#"","l":""#);
    push_decimals(&mut out, kline.low, precision.price);
    out.push_str(r#"","v":""#);
    push_decimals(&mut out, kline.volume, precision.quantity);
    write!(out, r#"","n":{},"x":{},"q":""#, kline.trade_count, closed)
        .expect("writing to a String cannot fail");
    push_decimals(&mut out, kline.quote_volume(), precision.quote);
    out.push_str(r#"","V":""#);
    push_decimals(&mut out, kline.taker_buy_volume, precision.quantity);
    out.push_str(r#"","Q":""#);
    push_decimals(&mut out, kline.taker_buy_quote_volume(), precision.quote);
    out.push_str(r#"","B":"0"}}"#);
    out
}

pub fn server_shutdown_event(event_time_us: i64, unit: TimeUnit) -> String {
    format!(
        r#"{{"e":"serverShutdown","E":{}}}"#,
        unit.convert(event_time_us)
    )
}

/// How the fake writes the JSON of its WebSocket text frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonStyle {
    /// As Binance writes it: compact, keys in Binance's order.
    #[default]
    Compact,
    /// As Python's `json.dumps(value, sort_keys=True)` writes it: `", "`
    /// and `": "` between items and keys sorted, so the combined wrapper is
    /// `{"data": {...}, "stream": "..."}`. The reference gives the shapes,
    /// not the bytes: an exchange (or another fake) may write this.
    SpacedSortedKeys,
}

/// `text` written in `style`; text that is not JSON (an injected garbage
/// frame) is left as it is.
pub fn restyle(text: String, style: JsonStyle) -> String {
    if style == JsonStyle::Compact {
        return text;
    }
    // Without serde_json's `preserve_order` a `Value`'s objects are
    // `BTreeMap`s: serialising one writes its keys sorted.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return text;
    };
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    value
        .serialize(&mut serializer)
        .expect("writing a JSON value to a Vec cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Python's default separators.
struct Spaced;

/// `", "` before every item of an array or object but the first.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Wraps a payload for a combined stream: `{"stream":"<name>","data":<payload>}`.
pub fn combined(stream_name: &str, payload: &str) -> String {
    let mut out = String::with_capacity(payload.len() + stream_name.len() + 22);
    out.push_str(r#"{"stream":""#);
    out.push_str(stream_name);
    out.push_str(r#"","data":"#);
    out.push_str(payload);
    out.push('}');
    out
}

/// One row of `/api/v3/trades` and `/api/v3/historicalTrades` (futures:
/// `isRPITrade` in place of `isBestMatch`).
pub fn rest_trade(
    out: &mut String,
    trade: &Trade,
    unit: TimeUnit,
    shape: Shape,
    precision: Precision,
) {
    write!(out, r#"{{"id":{},"price":""#, trade.id).expect("writing to a String cannot fail");
    push_decimals(out, trade.price, precision.price);
    out.push_str(r#"","qty":""#);
    push_decimals(out, trade.quantity, precision.quantity);
    match precision.contract_size {
        Some(size) => {
            out.push_str(r#"","baseQty":""#);
            push_decimals(
                out,
                wide_to_atoms(base_product_wide(trade.price, trade.quantity, size)),
                precision.quote,
            );
        }
        None => {
            out.push_str(r#"","quoteQty":""#);
            push_decimals(
                out,
                quote_atoms(trade.price, trade.quantity),
                precision.quote,
            );
        }
    }
    if shape.is_futures() {
        write!(
            out,
            r#"","time":{},"isBuyerMaker":{},"isRPITrade":false}}"#,
            unit.convert(trade.time_us),
            trade.is_buyer_maker
        )
        .expect("writing to a String cannot fail");
        return;
    }
    write!(
        out,
        r#"","time":{},"isBuyerMaker":{},"isBestMatch":{}}}"#,
        unit.convert(trade.time_us),
        trade.is_buyer_maker,
        trade.is_best_match
    )
    .expect("writing to a String cannot fail");
}

/// One row of `/api/v3/aggTrades` (futures: `a,p,q,nq,f,l,T,m`, no `M`;
/// COIN-M without `nq`).
pub fn rest_agg_trade(
    out: &mut String,
    agg: &AggTrade,
    unit: TimeUnit,
    shape: Shape,
    precision: Precision,
) {
    write!(out, r#"{{"a":{},"p":""#, agg.id).expect("writing to a String cannot fail");
    push_price_and_quantity(out, agg.price, agg.quantity, precision);
    if shape.is_futures() {
        if shape == Shape::Futures {
            out.push_str(r#"","nq":""#);
            push_decimals(out, agg.quantity, precision.quantity);
        }
        write!(
            out,
            r#"","f":{},"l":{},"T":{},"m":{}}}"#,
            agg.first_trade_id,
            agg.last_trade_id,
            unit.convert(agg.time_us),
            agg.is_buyer_maker
        )
        .expect("writing to a String cannot fail");
        return;
    }
    write!(
        out,
        r#"","f":{},"l":{},"T":{},"m":{},"M":{}}}"#,
        agg.first_trade_id,
        agg.last_trade_id,
        unit.convert(agg.time_us),
        agg.is_buyer_maker,
        agg.is_best_match
    )
    .expect("writing to a String cannot fail");
}

/// One row of `/api/v3/klines`: a 12-element array.
pub fn rest_kline(out: &mut String, kline: &KlineState, unit: TimeUnit, precision: Precision) {
    write!(out, r#"[{},""#, unit.convert(kline.open_us)).expect("writing to a String cannot fail");
    push_decimals(out, kline.open, precision.price);
    out.push_str(r#"",""#);
    push_decimals(out, kline.high, precision.price);
    out.push_str(r#"",""#);
    push_decimals(out, kline.low, precision.price);
    out.push_str(r#"",""#);
    push_decimals(out, kline.close, precision.price);
    out.push_str(r#"",""#);
    push_decimals(out, kline.volume, precision.quantity);
    write!(out, r#"",{},""#, unit.kline_close(kline.next_open_us))
        .expect("writing to a String cannot fail");
    push_decimals(out, kline.quote_volume(), precision.quote);
    write!(out, r#"",{},""#, kline.trade_count).expect("writing to a String cannot fail");
    push_decimals(out, kline.taker_buy_volume, precision.quantity);
    out.push_str(r#"",""#);
    push_decimals(out, kline.taker_buy_quote_volume(), precision.quote);
    out.push_str(r#"","0"]"#);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_sorted_keys_write_what_pythons_json_dumps_writes() {
        let compact = combined(
            "btcusdt@trade",
            r#"{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","m":true,"k":[1,"a"]}"#,
        );
        assert_eq!(restyle(compact.clone(), JsonStyle::Compact), compact);
        assert_eq!(
            restyle(compact, JsonStyle::SpacedSortedKeys),
            r#"{"data": {"E": 1, "e": "trade", "k": [1, "a"], "m": true, "p": "1.5", "s": "BTCUSDT", "t": 7}, "stream": "btcusdt@trade"}"#
        );
        let garbage = "garbage: not JSON".to_owned();
        assert_eq!(
            restyle(garbage.clone(), JsonStyle::SpacedSortedKeys),
            garbage
        );
    }

    fn sample_trade() -> Trade {
        Trade {
            print: crate::model::PrintType::Market,
            id: 3_735_693_016,
            price: 6_168_599_000_000,
            quantity: 17_000,
            time_us: 1_723_161_601_437_123,
            event_time_us: 1_723_161_601_438_456,
            is_buyer_maker: true,
            is_best_match: true,
            dispatch_seq: 0,
            raw_payload: None,
        }
    }

    /// The real dstream capture's BCHUSD_PERP aggTrade: 3 contracts at 427.91.
    fn dstream_agg_trade() -> AggTrade {
        AggTrade {
            id: 11_285_749,
            price: 42_791_000_000,
            quantity: 300_000_000,
            first_trade_id: 16_034_449,
            last_trade_id: 16_034_449,
            time_us: 1_626_916_403_852_000,
            event_time_us: 1_626_916_404_006_000,
            is_buyer_maker: true,
            is_best_match: true,
            dispatch_seq: 0,
            raw_payload: None,
        }
    }

    /// USD-M aggTrades carry `nq`; COIN-M's do not, on the stream and in
    /// REST (the real dstream capture, the reference's COIN-M sample).
    #[test]
    fn coinm_agg_trades_carry_no_nq() {
        let agg = dstream_agg_trade();
        for (shape, with_nq) in [(Shape::Futures, true), (Shape::CoinM, false)] {
            let precision = Precision::SPOT;
            let event =
                agg_trade_event("BCHUSD_PERP", &agg, TimeUnit::Millisecond, shape, precision);
            let mut row = String::new();
            rest_agg_trade(&mut row, &agg, TimeUnit::Millisecond, shape, precision);
            for text in [&event, &row] {
                assert_eq!(text.contains(r#""nq":"#), with_nq, "{shape:?}: {text}");
                assert!(!text.contains(r#""M":"#), "{shape:?}: {text}");
            }
        }
    }

    #[test]
    fn trade_matches_the_real_capture_shape() {
        // From the hftbacktest capture (README of shared/data/real).
        assert_eq!(
            trade_event(
                "BTCUSDT",
                &sample_trade(),
                TimeUnit::Millisecond,
                Shape::Spot,
                Precision::SPOT
            ),
            r#"{"e":"trade","E":1723161601438,"s":"BTCUSDT","t":3735693016,"p":"61685.99000000","q":"0.00017000","T":1723161601437,"m":true,"M":true}"#
        );
        assert!(trade_event(
            "BTCUSDT",
            &sample_trade(),
            TimeUnit::Microsecond,
            Shape::Spot,
            Precision::SPOT
        )
        .contains(r#""T":1723161601437123"#));
    }

    #[test]
    fn futures_shapes_match_the_reference_samples() {
        // Key order and fields of samples/futures-trade.jsonl and the
        // documented futures aggTrade (no `M`, `X` and `nq` present), in
        // the precision of the model's BTCUSDT (tick 0.01, step 0.00001).
        let precision = Precision::of(Market::UsdM, &SymbolSpec::for_symbol("BTCUSDT"));
        assert_eq!(
            trade_event(
                "BTCUSDT",
                &sample_trade(),
                TimeUnit::Millisecond,
                Shape::Futures,
                precision
            ),
            r#"{"e":"trade","E":1723161601438,"T":1723161601437,"s":"BTCUSDT","t":3735693016,"p":"61685.99","q":"0.00017","X":"MARKET","m":true}"#
        );
        let mut row = String::new();
        rest_trade(
            &mut row,
            &sample_trade(),
            TimeUnit::Millisecond,
            Shape::Futures,
            precision,
        );
        assert_eq!(
            row,
            r#"{"id":3735693016,"price":"61685.99","qty":"0.00017","quoteQty":"10.4866183","time":1723161601437,"isBuyerMaker":true,"isRPITrade":false}"#
        );
        assert!(!row.contains("isBestMatch"), "{row}");
    }

    #[test]
    fn kline_close_time_is_next_open_minus_one_unit() {
        assert_eq!(TimeUnit::Millisecond.kline_close(60_000_000), 59_999);
        assert_eq!(TimeUnit::Microsecond.kline_close(60_000_000), 59_999_999);
    }

    #[test]
    fn kline_keys_in_binance_order() {
        let kline = KlineState::empty(0, 1_000_000, 187_076_000_000);
        let text = kline_event(
            "ETHUSDT",
            KlineInterval::OneSecond,
            &kline,
            true,
            1_002_000,
            TimeUnit::Millisecond,
            Precision::SPOT,
        );
        assert_eq!(
            text,
            r#"{"e":"kline","E":1002,"s":"ETHUSDT","k":{"t":0,"T":999,"s":"ETHUSDT","i":"1s","f":-1,"L":-1,"o":"1870.76000000","c":"1870.76000000","h":"1870.76000000","l":"1870.76000000","v":"0.00000000","n":0,"x":true,"q":"0.00000000","V":"0.00000000","Q":"0.00000000","B":"0"}}"#
        );
    }

    /// A symbol with the real BTCUSDT's precision (tick 0.01, step 0.001).
    fn btcusdt_like() -> SymbolSpec {
        SymbolSpec {
            tick_atoms: 1_000_000,
            step_atoms: 100_000,
            ..SymbolSpec::for_symbol("BTCUSDT")
        }
    }

    /// Futures amounts in the symbol's precision are the real strings: the
    /// `@trade` capture of reference 4.4 (byte for byte), the continuous
    /// kline of `samples/futures-kline.jsonl` (quote volumes with price
    /// plus quantity decimals) and a dstream aggTrade (whole contracts).
    /// Spot keeps eight decimals.
    #[test]
    fn futures_amounts_carry_the_symbols_precision() {
        let precision = Precision::of(Market::UsdM, &btcusdt_like());
        assert_eq!(
            precision,
            Precision {
                price: 2,
                quantity: 3,
                quote: 5,
                contract_size: None,
            }
        );
        let trade = Trade {
            id: 3_493_102_749,
            price: 2_778_500_000_000,
            quantity: 1_400_000,
            time_us: 1_679_851_564_486_000,
            event_time_us: 1_679_851_564_490_000,
            ..sample_trade()
        };
        assert_eq!(
            trade_event(
                "BTCUSDT",
                &trade,
                TimeUnit::Millisecond,
                Shape::Futures,
                precision
            ),
            r#"{"e":"trade","E":1679851564490,"T":1679851564486,"s":"BTCUSDT","t":3493102749,"p":"27785.00","q":"0.014","X":"MARKET","m":true}"#
        );
        assert!(trade_event(
            "BTCUSDT",
            &trade,
            TimeUnit::Millisecond,
            Shape::Spot,
            Precision::of(Market::Spot, &btcusdt_like())
        )
        .contains(r#""p":"27785.00000000","q":"0.01400000""#));

        let units = |text: &str| crate::decimal::parse_atoms(text).unwrap();
        let kline = KlineState {
            open: units("18787.00"),
            close: units("18804.04"),
            high: units("18804.04"),
            low: units("18786.54"),
            volume: units("197.664"),
            quote_volume_wide: i128::from(units("3715253.19494")) * 100_000_000,
            trade_count: 543,
            taker_buy_volume: units("184.769"),
            taker_buy_quote_volume_wide: i128::from(units("3472925.84746")) * 100_000_000,
            first_trade_id: 116_467_658_886,
            last_trade_id: 116_468_012_423,
            ..KlineState::empty(1_607_443_020_000_000, 1_607_443_080_000_000, 0)
        };
        let event = kline_event(
            "BTCUSDT",
            KlineInterval::OneMinute,
            &kline,
            false,
            1_607_443_058_651_000,
            TimeUnit::Millisecond,
            precision,
        );
        assert!(
            event.contains(r#""o":"18787.00","c":"18804.04","h":"18804.04","l":"18786.54","v":"197.664","n":543,"x":false,"q":"3715253.19494","V":"184.769","Q":"3472925.84746""#),
            "{event}"
        );
        let mut row = String::new();
        rest_kline(&mut row, &kline, TimeUnit::Millisecond, precision);
        assert_eq!(
            row,
            r#"[1607443020000,"18787.00","18804.04","18786.54","18804.04","197.664",1607443079999,"3715253.19494",543,"184.769","3472925.84746","0"]"#
        );
        // A kline without trades prints its zeros in the same precision.
        let quiet = kline_event(
            "BTCUSDT",
            KlineInterval::OneMinute,
            &KlineState::empty(0, 60_000_000, units("18804.04")),
            true,
            60_002_000,
            TimeUnit::Millisecond,
            precision,
        );
        assert!(
            quiet.contains(r#""v":"0.000","n":0,"x":true,"q":"0.00000","V":"0.000","Q":"0.00000""#),
            "{quiet}"
        );

        // COIN-M: the dstream capture's aggTrade, quantities in whole contracts.
        let coinm_spec = SymbolSpec {
            tick_atoms: 1_000_000,
            step_atoms: 100_000_000,
            ..SymbolSpec::for_symbol("BCHUSD_PERP")
        };
        let agg = dstream_agg_trade();
        let coinm = Precision::of(Market::CoinM, &coinm_spec);
        let event = agg_trade_event(
            "BCHUSD_PERP",
            &agg,
            TimeUnit::Millisecond,
            Shape::CoinM,
            coinm,
        );
        assert!(event.contains(r#""p":"427.91","q":"3","f":"#), "{event}");
        let mut row = String::new();
        rest_agg_trade(
            &mut row,
            &agg,
            TimeUnit::Millisecond,
            Shape::Futures,
            Precision::of(Market::UsdM, &coinm_spec),
        );
        assert!(
            row.starts_with(r#"{"a":11285749,"p":"427.91","q":"3","nq":"3","f":"#),
            "{row}"
        );
        // COIN-M's kline quote sums keep eight decimals, as its `q`/`Q`.
        assert_eq!(coinm.quote, 8);
        assert_eq!(coinm.contract_size, Some(10));
    }

    /// COIN-M amounts as reference 4.4 and 9 and the real dstream answers
    /// have them: whole contracts, `contractSize` USD each, kline `q`/`Q`
    /// and REST `baseQty` in the base asset (contracts x size / price).
    #[test]
    fn coinm_quantities_are_contracts_and_quote_columns_base_amounts() {
        let spec = SymbolSpec::for_symbol("BTCUSD_PERP");
        assert_eq!(
            (spec.base_asset.as_str(), spec.quote_asset.as_str()),
            ("BTC", "USD")
        );
        assert_eq!(spec.step_atoms, 100_000_000, "whole contracts");
        assert_eq!(spec.contract_size, Some(100));
        assert_eq!(
            SymbolSpec::for_symbol("ETHUSD_260327").contract_size,
            Some(10)
        );
        assert_eq!(SymbolSpec::for_symbol("BTCUSDT_260327").contract_size, None);
        assert_eq!(SymbolSpec::for_symbol("BTCUSDT").contract_size, None);
        let precision = Precision::of(Market::CoinM, &spec);
        assert_eq!((precision.price, precision.quantity), (1, 0));

        // 3 contracts of 100 USD at 60,000: 0.005 BTC.
        let trade = Trade {
            id: 7,
            price: 6_000_000_000_000,
            quantity: 300_000_000,
            time_us: 1_700_000_000_000_000,
            ..sample_trade()
        };
        let mut row = String::new();
        rest_trade(
            &mut row,
            &trade,
            TimeUnit::Millisecond,
            Shape::CoinM,
            precision,
        );
        assert!(
            row.starts_with(r#"{"id":7,"price":"60000.0","qty":"3","baseQty":"0.00500000","time":1700000000000,"#),
            "{row}"
        );

        // Plus 1 contract at 50,000 (0.002 BTC), a buyer's: q 0.007, Q 0.002.
        let mut kline = KlineState::empty(0, 60_000_000, 6_000_000_000_000);
        for (price, quantity, is_buyer_maker) in [
            (6_000_000_000_000, 300_000_000, true),
            (5_000_000_000_000, 100_000_000, false),
        ] {
            let fill = crate::market::Fill {
                time_us: 1,
                price,
                quantity,
                is_buyer_maker,
                first_trade_id: 1,
                last_trade_id: 1,
            };
            kline.add(&fill, spec.contract_size);
        }
        assert_eq!(kline.quote_volume(), 700_000);
        assert_eq!(kline.taker_buy_quote_volume(), 200_000);
        assert_eq!(kline.volume, 400_000_000);
    }
}
