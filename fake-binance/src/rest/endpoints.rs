//! The endpoints' answers (`exchangeInfo`, `trades`, `historicalTrades`,
//! `aggTrades`, `klines`) and the query parameters they read, serving only
//! data whose simulated time has passed.

use super::{limit_bounds, ApiError, ApiResult};
use crate::config::Market;
use crate::decimal::{format_decimals, ATOMS_PER_UNIT};
use crate::http::HttpRequest;
use crate::interval::KlineInterval;
use crate::market::SymbolBook;
use crate::model::{PrintType, Trade};
use crate::shared::Shared;
use crate::wire::{self, Precision, TimeUnit};

pub(super) fn time_unit(request: &HttpRequest) -> Result<TimeUnit, ApiError> {
    match request.header("X-MBX-TIME-UNIT") {
        None => Ok(TimeUnit::Millisecond),
        Some(value) => TimeUnit::parse(value.trim())
            .ok_or_else(|| ApiError::bad_request(-1194, "Invalid time unit.")),
    }
}

fn parse_integer(request: &HttpRequest, name: &str) -> Result<Option<i64>, ApiError> {
    match request.query_value(name) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(-1100, format!("Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."))
        }),
    }
}

/// Request times may be ms or µs on spot (reference 5: anything below
/// 10^14 is taken as ms); the other markets take ms only ("treat futures
/// times as ms", reference 1.1), so a µs time there is a time thousands of
/// years ahead. An end time in ms covers its whole millisecond (it is
/// inclusive), hence `end_of_unit`.
fn parse_time_us(
    shared: &Shared,
    request: &HttpRequest,
    name: &str,
    end_of_unit: bool,
) -> Result<Option<i64>, ApiError> {
    let micros_too = shared.config.market.speaks_micros();
    Ok(parse_integer(request, name)?.map(|value| {
        if micros_too && value.abs() >= 100_000_000_000_000 {
            value
        } else {
            value
                .saturating_mul(1000)
                .saturating_add(if end_of_unit { 999 } else { 0 })
        }
    }))
}

/// The rows to serve: the `limit` asked for (within the endpoint's bounds
/// on this market), plus injected extra rows.
fn parse_limit(shared: &Shared, request: &HttpRequest) -> Result<usize, ApiError> {
    let endpoint = request.path.rsplit('/').next().unwrap_or("");
    let (default, most) = limit_bounds(shared.config.market, endpoint);
    match parse_integer(request, "limit")? {
        None => Ok(default + request.extra_rows),
        Some(limit) if (1..=most as i64).contains(&limit) => {
            Ok(limit as usize + request.extra_rows)
        }
        Some(_) => Err(ApiError::bad_request(
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        )),
    }
}

fn symbol_book<'market>(
    market: &'market crate::market::MarketState,
    request: &HttpRequest,
) -> Result<&'market SymbolBook, ApiError> {
    let symbol = match request.query_value("symbol") {
        None | Some("") => return Err(ApiError::mandatory("symbol")),
        Some(symbol) => symbol,
    };
    market
        .book(symbol)
        .ok_or_else(|| ApiError::bad_request(-1121, "Invalid symbol."))
}

pub(super) fn exchange_info(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let (market, now_us) = shared.market_now();
    let mut wanted: Option<Vec<String>> = None;
    // Futures exchangeInfo takes no parameter: every symbol, always.
    let futures = shared.config.market.is_futures();
    if let Some(symbol) = request.query_value("symbol").filter(|_| !futures) {
        wanted = Some(vec![symbol.to_owned()]);
    }
    if let Some(list) = request.query_value("symbols").filter(|_| !futures) {
        let parsed: Vec<String> = serde_json::from_str(list).map_err(|_| {
            ApiError::bad_request(-1100, "Illegal characters found in parameter 'symbols'.")
        })?;
        wanted = Some(parsed);
    }
    let books: Vec<&SymbolBook> = match &wanted {
        None => market.books.iter().collect(),
        Some(symbols) => {
            let mut books = Vec::new();
            for symbol in symbols {
                books.push(
                    market
                        .book(symbol)
                        .ok_or_else(|| ApiError::bad_request(-1121, "Invalid symbol."))?,
                );
            }
            books
        }
    };
    let limits = &shared.config.limits;
    let market_kind = shared.config.market;
    let symbols: Vec<serde_json::Value> = books
        .iter()
        .map(|book| match market_kind.is_futures() {
            true => futures_symbol(book, now_us, market_kind),
            false => spot_symbol(book, now_us, market_kind),
        })
        .collect();
    let mut info = serde_json::json!({
        "timezone": "UTC",
        "serverTime": unit.convert(now_us),
        "rateLimits": rate_limits(market_kind, limits.weight_limit_per_minute),
        "exchangeFilters": [],
        "symbols": symbols,
    });
    // USD-M's answer also names its kind and its margin assets (the real
    // `BINANCE_FUTURES.0`); COIN-M's does not (`BINANCE_DELIVERY.0`).
    if market_kind == Market::UsdM {
        if let Some(fields) = info.as_object_mut() {
            fields.insert("futuresType".to_owned(), "U_MARGINED".into());
            fields.insert(
                "assets".to_owned(),
                serde_json::json!([
                    {"asset": "USDT", "marginAvailable": true, "autoAssetExchange": "-10000"},
                    {"asset": "BTC", "marginAvailable": true, "autoAssetExchange": "-0.00100000"},
                ]),
            );
        }
    }
    Ok(info.to_string())
}

/// The price and lot filters of a symbol, in its market's precision:
/// spot's eight decimals, futures' own (`"tickSize":"0.10"`,
/// `"stepSize":"0.001"`).
fn price_and_lot_filters(book: &SymbolBook, precision: Precision) -> [serde_json::Value; 2] {
    let spec = &book.spec;
    let amount = format_decimals;
    [
        serde_json::json!({
            "filterType": "PRICE_FILTER",
            "minPrice": amount(spec.tick_atoms, precision.price),
            "maxPrice": amount(1_000_000 * ATOMS_PER_UNIT, precision.price),
            "tickSize": amount(spec.tick_atoms, precision.price),
        }),
        serde_json::json!({
            "filterType": "LOT_SIZE",
            "minQty": amount(spec.step_atoms, precision.quantity),
            "maxQty": amount(9_000 * ATOMS_PER_UNIT, precision.quantity),
            "stepSize": amount(spec.step_atoms, precision.quantity),
        }),
    ]
}

/// A spot (or Binance.US) symbol of `exchangeInfo`, with the keys of the
/// reference (5.4) and of Binance's spot answers; `HALT` while a halt
/// lasts.
fn spot_symbol(book: &SymbolBook, now_us: i64, market: Market) -> serde_json::Value {
    let spec = &book.spec;
    let status = if book.halted_at(now_us) {
        "HALT"
    } else {
        "TRADING"
    };
    let [price_filter, lot_size] = price_and_lot_filters(book, Precision::of(market, spec));
    serde_json::json!({
        "symbol": spec.symbol,
        "status": status,
        "baseAsset": spec.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": true,
        "ocoAllowed": true,
        "isSpotTradingAllowed": true,
        "isMarginTradingAllowed": false,
        "filters": [price_filter, lot_size],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    })
}

/// `exchangeInfo`'s `rateLimits`: the configured weight limit, then the
/// order limits each market lists. Spot's as its docs show them (reference
/// 6: `RAW_REQUESTS` 300,000 per 5 minutes since 2026-04-02); USD-M's and
/// COIN-M's as the real answers in the shared data (`BINANCE_FUTURES.0`,
/// `BINANCE_DELIVERY.0`, nautilus' fapi capture): order limits only, no
/// `RAW_REQUESTS`.
fn rate_limits(market: Market, weight_limit_per_minute: u32) -> serde_json::Value {
    let weight = serde_json::json!({"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": weight_limit_per_minute});
    let orders_per_minute = serde_json::json!({"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200});
    match market {
        Market::Spot | Market::Us => serde_json::json!([
            weight,
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
        ]),
        Market::UsdM => serde_json::json!([
            weight,
            orders_per_minute,
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ]),
        Market::CoinM => serde_json::json!([weight, orders_per_minute]),
    }
}

/// Perpetuals' `deliveryDate` on Binance's futures `exchangeInfo`:
/// 2100-12-25 08:00 UTC, in ms.
const PERPETUAL_DELIVERY_MS: i64 = 4_133_404_800_000;

/// A futures symbol of `exchangeInfo`, with the keys of the real answers
/// in the shared data (`BINANCE_FUTURES.0`, `BINANCE_DELIVERY.0`; the
/// reference does not list them) and none of spot's: on COIN-M
/// `contractStatus` instead of `status` (USD-M keeps `status`) and
/// `contractSize`; `contractType`, `pair`, `deliveryDate` and
/// `onboardDate` (ms), `pricePrecision` and `quantityPrecision` (the
/// decimals its amounts are printed with). A contract with a delivery is
/// `TRADING` until it and then `DELIVERED` (a dated one) or `SETTLING` (a
/// delisted perpetual); Binance passes through other statuses
/// (`PRE_DELIVERING`, `DELIVERING`, `CLOSE`) a recorder must not need. A
/// delivery not yet announced shows the perpetual's placeholder.
fn futures_symbol(book: &SymbolBook, now_us: i64, market: Market) -> serde_json::Value {
    let spec = &book.spec;
    let precision = Precision::of(market, spec);
    let dated = crate::config::delivery_from_name(&spec.symbol).is_some();
    let contract_type = if dated {
        "CURRENT_QUARTER"
    } else {
        "PERPETUAL"
    };
    let announced = book
        .delivery_us
        .filter(|_| dated || now_us >= book.delivery_announced_us);
    let (delivery_ms, status) = match announced {
        Some(delivery_us) if now_us >= delivery_us => (
            delivery_us.div_euclid(1_000),
            if dated { "DELIVERED" } else { "SETTLING" },
        ),
        Some(delivery_us) => (delivery_us.div_euclid(1_000), "TRADING"),
        None => (PERPETUAL_DELIVERY_MS, "TRADING"),
    };
    let pair = spec
        .symbol
        .split_once('_')
        .map_or(spec.symbol.as_str(), |(pair, _)| pair);
    let [price_filter, lot_size] = price_and_lot_filters(book, precision);
    let mut market_lot_size = lot_size.clone();
    market_lot_size["filterType"] = "MARKET_LOT_SIZE".into();
    // USD-M margins in the quote asset, COIN-M in the base asset.
    let margin_asset = match market {
        Market::CoinM => &spec.base_asset,
        _ => &spec.quote_asset,
    };
    let mut symbol = serde_json::json!({
        "symbol": spec.symbol,
        "pair": pair,
        "contractType": contract_type,
        "deliveryDate": delivery_ms,
        // Futures times are in ms only.
        "onboardDate": book.data_start_us.div_euclid(1_000),
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "marginAsset": margin_asset,
        "pricePrecision": precision.price,
        "quantityPrecision": precision.quantity,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012000",
        "marketTakeBound": "0.30",
        "filters": [
            price_filter,
            lot_size,
            market_lot_size,
            {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
            {"limit": 10, "filterType": "MAX_NUM_ALGO_ORDERS"},
            {"multiplierDown": "0.8500", "multiplierUp": "1.1500", "multiplierDecimal": "4", "filterType": "PERCENT_PRICE"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    });
    if let Some(fields) = symbol.as_object_mut() {
        match market {
            Market::CoinM => {
                fields.insert("contractStatus".to_owned(), status.into());
                if let Some(size) = spec.contract_size {
                    fields.insert("contractSize".to_owned(), size.into());
                }
                fields.insert("equalQtyPrecision".to_owned(), 4.into());
                fields.insert("maxMoveOrderLimit".to_owned(), 10_000.into());
            }
            _ => {
                fields.insert("status".to_owned(), status.into());
                fields.insert("settlePlan".to_owned(), 0.into());
            }
        }
    }
    symbol
}

fn json_array<T>(items: &[T], mut write_item: impl FnMut(&mut String, &T)) -> String {
    let mut out = String::with_capacity(items.len() * 160 + 2);
    out.push('[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_item(&mut out, item);
    }
    out.push(']');
    out
}

pub(super) fn recent_trades(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let limit = parse_limit(shared, request)?;
    let (market, now_us) = shared.market_now();
    let book = symbol_book(&market, request)?;
    let published = book.published_trade_count(now_us);
    let market_only = shared.config.market.is_futures();
    let visible: Vec<&Trade> = book.trades[..published]
        .iter()
        .rev()
        .filter(|trade| !market_only || trade.print == PrintType::Market)
        .take(limit)
        .collect();
    let trades: Vec<&Trade> = visible.into_iter().rev().collect();
    let precision = Precision::of(shared.config.market, &book.spec);
    Ok(json_array(&trades, |out, trade| {
        wire::rest_trade(out, trade, unit, shared.config.market.shape(), precision)
    }))
}

/// Futures `historicalTrades` is `MARKET_DATA`: an API key in
/// `X-MBX-APIKEY`, no signature (reference 5.2). Missing: -2014; unknown:
/// -2015; both with HTTP 401.
fn check_api_key(shared: &Shared, request: &HttpRequest) -> Result<(), ApiError> {
    if !shared.config.market.is_futures() {
        return Ok(());
    }
    let refused = |code: i64, message: &str| {
        shared
            .counters
            .update(|counters| counters.rest_api_key_refusals += 1);
        Err(ApiError {
            status: 401,
            code,
            message: message.to_owned(),
        })
    };
    match request.header("X-MBX-APIKEY").map(str::trim) {
        None | Some("") => refused(-2014, "API-key format invalid."),
        Some(key) if shared.config.api_keys.iter().any(|known| known == key) => Ok(()),
        Some(_) => refused(-2015, "Invalid API-key, IP, or permissions for action."),
    }
}

pub(super) fn historical_trades(
    shared: &Shared,
    request: &HttpRequest,
    unit: TimeUnit,
) -> ApiResult {
    check_api_key(shared, request)?;
    let limit = parse_limit(shared, request)?;
    let from_id = parse_integer(request, "fromId")?;
    let (market, now_us) = shared.market_now();
    let book = symbol_book(&market, request)?;
    let published = book.published_trade_count(now_us);
    let visible = &book.trades[..published];
    // Futures REST serves market trades only (reference 7): the other
    // prints' ids are holes in its answers.
    let market_only = shared.config.market.is_futures();
    let served = |trade: &&Trade| !market_only || trade.print == PrintType::Market;
    let trades: Vec<&Trade> = match from_id {
        None => {
            let mut newest: Vec<&Trade> = visible.iter().rev().filter(served).take(limit).collect();
            newest.reverse();
            newest
        }
        Some(from_id) => {
            let start = visible.partition_point(|trade| trade.id < from_id);
            visible[start..].iter().filter(served).take(limit).collect()
        }
    };
    let precision = Precision::of(shared.config.market, &book.spec);
    Ok(json_array(&trades, |out, trade| {
        wire::rest_trade(out, trade, unit, shared.config.market.shape(), precision)
    }))
}

pub(super) fn agg_trades(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let limit = parse_limit(shared, request)?;
    let from_id = parse_integer(request, "fromId")?;
    let start_us = parse_time_us(shared, request, "startTime", false)?;
    let end_us = parse_time_us(shared, request, "endTime", true)?;
    if from_id.is_some() && (start_us.is_some() || end_us.is_some()) {
        return Err(ApiError::bad_request(
            -1128,
            "Combination of optional parameters invalid.",
        ));
    }
    if let (true, Some(start_us), Some(end_us)) =
        (shared.config.market.is_futures(), start_us, end_us)
    {
        // Futures: start and end together must span less than an hour
        // (compared in ms; end_us carries its ms's last µs).
        if end_us.div_euclid(1000) - start_us.div_euclid(1000) >= 3_600_000 {
            return Err(ApiError::bad_request(
                -1127,
                "More than 1 hours between startTime and endTime.",
            ));
        }
    }
    let (market, now_us) = shared.market_now();
    let book = symbol_book(&market, request)?;
    let published = book.published_agg_trade_count(now_us);
    let visible = &book.agg_trades[..published];
    let first_at_or_after = |time_us: i64| visible.partition_point(|agg| agg.time_us < time_us);
    let first_after = |time_us: i64| visible.partition_point(|agg| agg.time_us <= time_us);
    let selected = match (from_id, start_us, end_us) {
        (Some(from_id), _, _) => {
            let start = visible.partition_point(|agg| agg.id < from_id);
            &visible[start..(start + limit).min(published)]
        }
        (None, None, None) => &visible[published.saturating_sub(limit)..],
        (None, Some(start_us), None) => {
            let start = first_at_or_after(start_us);
            &visible[start..(start + limit).min(published)]
        }
        (None, None, Some(end_us)) => {
            let end = first_after(end_us);
            &visible[end.saturating_sub(limit)..end]
        }
        (None, Some(start_us), Some(end_us)) => {
            let start = first_at_or_after(start_us);
            let end = first_after(end_us).max(start);
            &visible[start..(start + limit).min(end)]
        }
    };
    let precision = Precision::of(shared.config.market, &book.spec);
    Ok(json_array(selected, |out, agg| {
        wire::rest_agg_trade(out, agg, unit, shared.config.market.shape(), precision)
    }))
}

pub(super) fn klines(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let interval = match request.query_value("interval") {
        None | Some("") => return Err(ApiError::mandatory("interval")),
        // `1s` is refused on futures like any unknown interval (-1120,
        // reference 6): futures klines come "without `1s`" (reference 4.4).
        Some(text) => KlineInterval::parse_on(text, shared.config.market)
            .ok_or_else(|| ApiError::bad_request(-1120, "Invalid interval."))?,
    };
    let limit = parse_limit(shared, request)?;
    let start_us = parse_time_us(shared, request, "startTime", false)?;
    let end_us = parse_time_us(shared, request, "endTime", true)?;
    let (market, now_us) = shared.market_now();
    let book = symbol_book(&market, request)?;
    let precision = Precision::of(shared.config.market, &book.spec);
    let grid_first = book.first_kline_open(interval);
    // The kline still open at `now` is the last row, as on Binance.
    let grid_last = interval.open_time_containing(now_us);
    // Klines are selected by open time: startTime <= open <= endTime.
    let mut first_open = match start_us {
        Some(start_us) if start_us > grid_first => {
            let containing = interval.open_time_containing(start_us);
            if containing < start_us {
                interval.next_open(containing)
            } else {
                containing
            }
        }
        _ => grid_first,
    };
    let last_open = match end_us {
        Some(end_us) => interval.open_time_containing(end_us).min(grid_last),
        None => grid_last,
    };
    if first_open > last_open {
        return Ok("[]".to_owned());
    }
    // `limit` counts the klines that exist (none inside a halt).
    let mut count = usize::from(book.has_kline_at(first_open));
    if start_us.is_some() {
        // From the start forwards, at most `limit`.
        let mut open = first_open;
        while count < limit
            && interval.next_open(open) <= last_open
            && !book.delivered_by(interval.next_open(open))
        {
            open = interval.next_open(open);
            count += usize::from(book.has_kline_at(open));
        }
        let rows = book.klines_between(interval, first_open, open, now_us, now_us + 1);
        return Ok(json_array(&rows, |out, kline| {
            wire::rest_kline(out, kline, unit, precision)
        }));
    }
    // Newest up to the end, at most `limit`.
    let mut open = last_open;
    let mut count = usize::from(book.has_kline_at(last_open));
    while count < limit && interval.previous_open(open) >= first_open {
        open = interval.previous_open(open);
        count += usize::from(book.has_kline_at(open));
    }
    first_open = open;
    let rows = book.klines_between(interval, first_open, last_open, now_us, now_us + 1);
    Ok(json_array(&rows, |out, kline| {
        wire::rest_kline(out, kline, unit, precision)
    }))
}
