//! REST market-data endpoints (reference sections 5.1 and 6): weights, the
//! fixed weight window, 429 then 418, Binance's error bodies, and only data
//! whose simulated time has passed.

use std::sync::Arc;

use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::config::Market;
use crate::faults::RestFailure;
use crate::http::{Delivery, HttpRequest, HttpResponse};
use crate::interval::KlineInterval;
use crate::market::SymbolBook;
use crate::model::{PrintType, Trade};
use crate::shared::{lock, Shared};
use crate::wire::{self, TimeUnit};

/// Fixed-window request weight accounting and the ban state (one client IP: loopback).
#[derive(Debug)]
pub(crate) struct WeightState {
    window_start: Instant,
    window_index: u64,
    used: u32,
    /// After a 429, calls before this instant are answered 429 again, and
    /// past `Limits::calls_in_backoff_before_ban` of them earn a ban.
    backoff_until: Option<Instant>,
    calls_in_backoff: u32,
    banned_until: Option<Instant>,
    bans_so_far: u32,
    /// The most weight ever used in one window.
    pub used_max: u32,
}

impl WeightState {
    pub fn new(window_start: Instant) -> WeightState {
        WeightState {
            window_start,
            window_index: 0,
            used: 0,
            backoff_until: None,
            calls_in_backoff: 0,
            banned_until: None,
            bans_so_far: 0,
            used_max: 0,
        }
    }

    fn roll_window(&mut self, now: Instant, window: Duration) {
        let index = (now.saturating_duration_since(self.window_start).as_nanos()
            / window.as_nanos().max(1)) as u64;
        if index != self.window_index {
            self.window_index = index;
            self.used = 0;
        }
    }

    fn window_end(&self, window: Duration) -> Instant {
        self.window_start + window * (self.window_index as u32 + 1)
    }

    pub fn used(&mut self, now: Instant, window: Duration) -> u32 {
        self.roll_window(now, window);
        self.used
    }

    /// A 429 was answered (by the weight check or an injected fault): calls
    /// before `until` are calls inside its back-off.
    fn start_backoff(&mut self, until: Instant) {
        if self.backoff_until.is_none_or(|current| current < until) {
            self.backoff_until = Some(until);
        }
    }

    /// Ends any back-off and ban in force (the ban history stays, so the
    /// next ban is still longer).
    pub fn forgive(&mut self) {
        self.backoff_until = None;
        self.calls_in_backoff = 0;
        self.banned_until = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    TooMuchWeight {
        retry_after_secs: u64,
    },
    Banned {
        retry_after_secs: u64,
        until_ms_hint: u64,
    },
}

fn seconds_until(now: Instant, later: Instant) -> u64 {
    // Whole seconds, rounded up and at least one, as in a Retry-After header.
    let remaining = later.saturating_duration_since(now);
    (remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0)).max(1)
}

fn admit(shared: &Shared, weight: u32) -> (Admission, u32) {
    let limits = &shared.config.limits;
    let now = Instant::now();
    let mut state = lock(&shared.weight);
    state.roll_window(now, limits.weight_window);
    if let Some(banned_until) = state.banned_until {
        if now < banned_until {
            let retry_after_secs = seconds_until(now, banned_until);
            return (
                Admission::Banned {
                    retry_after_secs,
                    until_ms_hint: retry_after_secs * 1000,
                },
                state.used,
            );
        }
        state.banned_until = None;
    }
    if let Some(backoff_until) = state.backoff_until {
        if now < backoff_until {
            if state.calls_in_backoff < limits.calls_in_backoff_before_ban {
                // A request that was on the wire when the 429 went out, or a
                // client that did not listen yet: told again.
                state.calls_in_backoff += 1;
                return (
                    Admission::TooMuchWeight {
                        retry_after_secs: seconds_until(now, backoff_until),
                    },
                    state.used,
                );
            }
            // Calling again while told to back off earns an IP ban, longer each time.
            state.bans_so_far += 1;
            let doubling = 2u32.saturating_pow(state.bans_so_far - 1);
            let ban = limits
                .ban_duration
                .saturating_mul(doubling)
                .min(limits.max_ban_duration);
            state.banned_until = Some(now + ban);
            state.backoff_until = None;
            state.calls_in_backoff = 0;
            let retry_after_secs = seconds_until(now, now + ban);
            warn!(
                ban_secs = ban.as_secs_f64(),
                "rest client banned for calling during back-off"
            );
            return (
                Admission::Banned {
                    retry_after_secs,
                    until_ms_hint: retry_after_secs * 1000,
                },
                state.used,
            );
        }
        state.backoff_until = None;
        state.calls_in_backoff = 0;
    }
    if state.used.saturating_add(weight) > limits.weight_limit_per_minute {
        let window_end = state.window_end(limits.weight_window);
        state.start_backoff(window_end);
        return (
            Admission::TooMuchWeight {
                retry_after_secs: seconds_until(now, window_end),
            },
            state.used,
        );
    }
    state.used += weight;
    state.used_max = state.used_max.max(state.used);
    (Admission::Admitted, state.used)
}

/// A REST error with Binance's body.
struct ApiError {
    status: u16,
    code: i64,
    message: String,
}

impl ApiError {
    fn bad_request(code: i64, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code,
            message: message.into(),
        }
    }

    fn mandatory(parameter: &str) -> ApiError {
        ApiError::bad_request(
            -1102,
            format!(
                "Mandatory parameter '{parameter}' was not sent, was empty/null, or malformed."
            ),
        )
    }
}

type ApiResult = Result<String, ApiError>;

/// Endpoint weights as documented (reference 5.1 spot, 5.2 USD-M, where
/// klines cost by the `limit` asked for: 1 / 2 / 5 / 10 for [1,100) /
/// [100,500) / [500,1000] / more). `None`: no such endpoint.
fn endpoint_weight(market: Market, endpoint: &str, limit: Option<i64>) -> Option<u32> {
    if !market.is_futures() {
        return Some(match endpoint {
            "ping" | "time" => 1,
            "exchangeInfo" => 20,
            "trades" | "historicalTrades" => 25,
            "aggTrades" => 4,
            "klines" | "uiKlines" => 2,
            _ => return None,
        });
    }
    Some(match endpoint {
        "ping" | "time" | "exchangeInfo" => 1,
        "trades" => 5,
        "historicalTrades" | "aggTrades" => 20,
        "klines" => match limit.unwrap_or(500) {
            ..100 => 1,
            100..500 => 2,
            500..=1000 => 5,
            _ => 10,
        },
        _ => return None,
    })
}

/// The `limit` an endpoint takes: (default, most) (reference 5).
fn limit_bounds(market: Market, endpoint: &str) -> (usize, usize) {
    match (market.is_futures(), endpoint) {
        (true, "historicalTrades") => (100, 500),
        (true, "klines") => (500, 1500),
        _ => (500, 1000),
    }
}

/// Handles one REST request (called by the HTTP loop).
pub(crate) async fn handle_rest(shared: Arc<Shared>, request: HttpRequest) -> HttpResponse {
    let latency = shared.config.limits.rest_latency;
    let mut response = decide_rest(shared, request).await;
    response.delay += latency;
    response
}

/// The answer to one REST request, decided at once.
async fn decide_rest(shared: Arc<Shared>, request: HttpRequest) -> HttpResponse {
    shared
        .counters
        .update(|counters| counters.rest_requests += 1);
    let window = shared.config.limits.weight_window;
    let used_now = || lock(&shared.weight).used(Instant::now(), window);

    // Injected failures come first: they stand for the infrastructure in front of the API.
    let failure = lock(&shared.pending_faults).next_rest_failure();
    let mut delay = Duration::ZERO;
    if let Some(failure) = failure {
        shared
            .counters
            .update(|counters| counters.rest_failures_injected += 1);
        warn!(?failure, path = %request.path, "rest failure injected");
        let used = used_now();
        match failure {
            RestFailure::Status(status @ 403) => {
                // The WAF answers before the API: an HTML page, no weight header.
                let mut response = HttpResponse::json(status, WAF_PAGE.to_owned());
                response.headers = vec![("Content-Type".to_owned(), "text/html".to_owned())];
                return response;
            }
            RestFailure::Status(status @ 451) => {
                return HttpResponse::json(status, RESTRICTED_LOCATION_BODY.to_owned());
            }
            RestFailure::Status(status) => {
                return HttpResponse::json(status, format!(r#"{{"code":-1001,"msg":"Internal error; unable to process your request. Please try again. ({status})"}}"#))
                    .with_header("X-MBX-USED-WEIGHT-1M", used.to_string());
            }
            RestFailure::TooManyRequests { retry_after_secs } => {
                shared
                    .counters
                    .update(|counters| counters.rest_responses_429 += 1);
                // Like a real 429 it starts a back-off the client must respect.
                let now = Instant::now();
                {
                    let mut state = lock(&shared.weight);
                    let until = match retry_after_secs {
                        Some(secs) => now + Duration::from_secs(secs),
                        None => {
                            state.roll_window(now, window);
                            state.window_end(window)
                        }
                    };
                    state.start_backoff(until);
                }
                let mut response = HttpResponse::json(
                    429,
                    too_much_weight_body(shared.config.limits.weight_limit_per_minute),
                )
                .with_header("X-MBX-USED-WEIGHT-1M", used.to_string());
                if let Some(secs) = retry_after_secs {
                    response = response.with_header("Retry-After", secs.to_string());
                }
                return response;
            }
            RestFailure::OversizedBody { bytes } => {
                let length = usize::try_from(bytes).unwrap_or(usize::MAX).max(2);
                let mut body = String::with_capacity(length);
                body.push('[');
                body.extend(std::iter::repeat_n(' ', length - 2));
                body.push(']');
                return HttpResponse::json(200, body)
                    .with_header("X-MBX-USED-WEIGHT-1M", used.to_string());
            }
            RestFailure::ExtraRows(rows) => {
                let mut request = request;
                request.extra_rows = rows;
                return answer(&shared, &request);
            }
            RestFailure::ConnectionReset => {
                let mut response = HttpResponse::json(500, String::new());
                response.delivery = Delivery::ResetConnection;
                return response;
            }
            RestFailure::Slow(slow) => delay = slow,
            RestFailure::TruncatedBody => {
                let mut response = answer(&shared, &request);
                response.delivery = Delivery::TruncatedBody;
                return response;
            }
        }
    }
    let mut response = answer(&shared, &request);
    response.delay = delay;
    response
}

/// What Binance answers with HTTP 451 from a restricted location.
const RESTRICTED_LOCATION_BODY: &str = r#"{"code":0,"msg":"Service unavailable from a restricted location according to 'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer service if you believe you received this message in error."}"#;

/// What the web application firewall in front of the API answers with HTTP 403.
const WAF_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\"><HTML><HEAD><TITLE>ERROR: The request could not be satisfied</TITLE></HEAD><BODY><H1>403 ERROR</H1><H2>The request could not be satisfied.</H2>Request blocked.</BODY></HTML>";

fn too_much_weight_body(limit: u32) -> String {
    format!(
        r#"{{"code":-1003,"msg":"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."}}"#
    )
}

/// The normal answer: weight accounting, then the endpoint.
fn answer(shared: &Shared, request: &HttpRequest) -> HttpResponse {
    let prefix = shared.config.market.rest_prefix();
    let endpoint = request
        .path
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("");
    let market = shared.config.market;
    let limit_asked = request
        .query_value("limit")
        .and_then(|text| text.parse::<i64>().ok());
    let Some(weight) = endpoint_weight(market, endpoint, limit_asked) else {
        shared
            .counters
            .update(|counters| counters.rest_responses_404 += 1);
        let used = lock(&shared.weight).used(Instant::now(), shared.config.limits.weight_window);
        return HttpResponse::json(404, r#"{"code":-1000,"msg":"Not found."}"#.to_owned())
            .with_header("X-MBX-USED-WEIGHT-1M", used.to_string());
    };
    let (admission, used) = admit(shared, weight);
    let used_header = used.to_string();
    match admission {
        Admission::Banned {
            retry_after_secs,
            until_ms_hint,
        } => {
            shared
                .counters
                .update(|counters| counters.rest_responses_418 += 1);
            let banned_until_ms = shared.now_us() / 1000 + until_ms_hint as i64;
            return HttpResponse::json(
                418,
                format!(
                    r#"{{"code":-1003,"msg":"Way too much request weight used; IP banned until {banned_until_ms}. Please use WebSocket Streams for live updates to avoid bans."}}"#
                ),
            )
            .with_header("Retry-After", retry_after_secs.to_string())
            .with_header("X-MBX-USED-WEIGHT-1M", used_header);
        }
        Admission::TooMuchWeight { retry_after_secs } => {
            shared
                .counters
                .update(|counters| counters.rest_responses_429 += 1);
            return HttpResponse::json(
                429,
                too_much_weight_body(shared.config.limits.weight_limit_per_minute),
            )
            .with_header("Retry-After", retry_after_secs.to_string())
            .with_header("X-MBX-USED-WEIGHT-1M", used_header);
        }
        Admission::Admitted => {}
    }
    if request.method != "GET" {
        return HttpResponse::json(
            405,
            r#"{"code":-1000,"msg":"Method not allowed."}"#.to_owned(),
        )
        .with_header("X-MBX-USED-WEIGHT-1M", used_header);
    }
    let unit = if !market.speaks_micros() {
        // Off spot, milliseconds only; the header is not theirs.
        Ok(TimeUnit::Millisecond)
    } else {
        time_unit(request)
    };
    let result = unit.and_then(|unit| match endpoint {
        "ping" => Ok("{}".to_owned()),
        "time" => Ok(format!(
            r#"{{"serverTime":{}}}"#,
            unit.convert(shared.now_us())
        )),
        "exchangeInfo" => exchange_info(shared, request, unit),
        "trades" => recent_trades(shared, request, unit),
        "historicalTrades" => historical_trades(shared, request, unit),
        "aggTrades" => agg_trades(shared, request, unit),
        "klines" | "uiKlines" => klines(shared, request, unit),
        _ => Err(ApiError {
            status: 404,
            code: -1000,
            message: "Not found.".to_owned(),
        }),
    });
    match result {
        Ok(body) => HttpResponse::json(200, body).with_header("X-MBX-USED-WEIGHT-1M", used_header),
        Err(error) => {
            if error.status == 400 {
                shared
                    .counters
                    .update(|counters| counters.rest_responses_400 += 1);
            }
            HttpResponse::json(
                error.status,
                serde_json::json!({"code": error.code, "msg": error.message}).to_string(),
            )
            .with_header("X-MBX-USED-WEIGHT-1M", used_header)
        }
    }
}

fn time_unit(request: &HttpRequest) -> Result<TimeUnit, ApiError> {
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

/// Request times may be ms or µs (spot accepts both); anything below 10^14 is taken as ms.
/// An end time in ms covers its whole millisecond (it is inclusive), hence `end_of_unit`.
fn parse_time_us(
    request: &HttpRequest,
    name: &str,
    end_of_unit: bool,
) -> Result<Option<i64>, ApiError> {
    Ok(parse_integer(request, name)?.map(|value| {
        if value.abs() < 100_000_000_000_000 {
            value * 1000 + if end_of_unit { 999 } else { 0 }
        } else {
            value
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

fn exchange_info(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
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
    let symbols: Vec<serde_json::Value> = books
        .iter()
        .map(|book| {
            let spec = &book.spec;
            let mut symbol = serde_json::json!({
                "symbol": spec.symbol,
                "status": "TRADING",
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
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": crate::decimal::format_atoms(spec.tick_atoms),
                        "maxPrice": "1000000.00000000",
                        "tickSize": crate::decimal::format_atoms(spec.tick_atoms),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": crate::decimal::format_atoms(spec.step_atoms),
                        "maxQty": "9000.00000000",
                        "stepSize": crate::decimal::format_atoms(spec.step_atoms),
                    }
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            });
            if shared.config.market == Market::CoinM {
                add_contract_fields(&mut symbol, book, now_us);
            }
            symbol
        })
        .collect();
    let info = serde_json::json!({
        "timezone": "UTC",
        "serverTime": unit.convert(now_us),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limits.weight_limit_per_minute},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    });
    Ok(info.to_string())
}

/// Perpetuals' `deliveryDate` on Binance's futures `exchangeInfo`:
/// 2100-12-25 08:00 UTC, in ms.
const PERPETUAL_DELIVERY_MS: i64 = 4_133_404_800_000;

/// The COIN-M contract fields of a symbol of `exchangeInfo`, as Binance's
/// derivatives docs show them (the reference does not list them):
/// `contractStatus` instead of spot's `status`, `contractType`, `pair`,
/// `deliveryDate` and `onboardDate` (ms). A dated contract is `TRADING`
/// until its delivery and `DELIVERED` from then on (Binance passes through
/// `PRE_DELIVERING` and `DELIVERING` for a while; a recorder must not need
/// them).
fn add_contract_fields(symbol: &mut serde_json::Value, book: &SymbolBook, now_us: i64) {
    let spec = &book.spec;
    let (contract_type, delivery_ms, status) = match book.delivery_us {
        Some(delivery_us) => (
            "CURRENT_QUARTER",
            delivery_us.div_euclid(1_000),
            if now_us >= delivery_us {
                "DELIVERED"
            } else {
                "TRADING"
            },
        ),
        None => ("PERPETUAL", PERPETUAL_DELIVERY_MS, "TRADING"),
    };
    let pair = spec
        .symbol
        .split_once('_')
        .map_or(spec.symbol.as_str(), |(pair, _)| pair);
    if let Some(fields) = symbol.as_object_mut() {
        fields.remove("status");
        fields.insert("contractStatus".to_owned(), status.into());
        fields.insert("contractType".to_owned(), contract_type.into());
        fields.insert("pair".to_owned(), pair.into());
        fields.insert("deliveryDate".to_owned(), delivery_ms.into());
        // Futures times are in ms only.
        fields.insert(
            "onboardDate".to_owned(),
            book.data_start_us.div_euclid(1_000).into(),
        );
    }
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

fn recent_trades(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
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
    Ok(json_array(&trades, |out, trade| {
        wire::rest_trade(out, trade, unit, shared.config.market.shape())
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

fn historical_trades(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
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
    Ok(json_array(&trades, |out, trade| {
        wire::rest_trade(out, trade, unit, shared.config.market.shape())
    }))
}

fn agg_trades(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let limit = parse_limit(shared, request)?;
    let from_id = parse_integer(request, "fromId")?;
    let start_us = parse_time_us(request, "startTime", false)?;
    let end_us = parse_time_us(request, "endTime", true)?;
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
    Ok(json_array(selected, |out, agg| {
        wire::rest_agg_trade(out, agg, unit, shared.config.market.shape())
    }))
}

fn klines(shared: &Shared, request: &HttpRequest, unit: TimeUnit) -> ApiResult {
    let interval = match request.query_value("interval") {
        None | Some("") => return Err(ApiError::mandatory("interval")),
        Some(text) => KlineInterval::parse(text)
            .ok_or_else(|| ApiError::bad_request(-1120, "Invalid interval."))?,
    };
    let limit = parse_limit(shared, request)?;
    let start_us = parse_time_us(request, "startTime", false)?;
    let end_us = parse_time_us(request, "endTime", true)?;
    let (market, now_us) = shared.market_now();
    let book = symbol_book(&market, request)?;
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
    let mut count = 1;
    if start_us.is_some() {
        // From the start forwards, at most `limit`.
        let mut open = first_open;
        while count < limit && interval.next_open(open) <= last_open {
            open = interval.next_open(open);
            count += 1;
        }
        let rows = book.klines_between(interval, first_open, open, now_us, now_us + 1);
        return Ok(json_array(&rows, |out, kline| {
            wire::rest_kline(out, kline, unit)
        }));
    }
    // Newest up to the end, at most `limit`.
    let mut open = last_open;
    while count < limit && interval.previous_open(open) >= first_open {
        open = interval.previous_open(open);
        count += 1;
    }
    first_open = open;
    let rows = book.klines_between(interval, first_open, last_open, now_us, now_us + 1);
    Ok(json_array(&rows, |out, kline| {
        wire::rest_kline(out, kline, unit)
    }))
}
