//! REST market-data endpoints (reference sections 5.1 and 6): weights, the
//! fixed weight window, 429 then 418, Binance's error bodies, and only data
//! whose simulated time has passed.
//!
//! Split by concern: [`weight`] keeps the weight window, back-off and bans,
//! [`endpoints`] answers each endpoint. This file takes a request through
//! injected faults and admission to its endpoint.

mod endpoints;
mod weight;

use std::sync::Arc;

use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::config::Market;
use crate::faults::RestFailure;
use crate::http::{Delivery, HttpRequest, HttpResponse};
use crate::shared::{lock, Shared};
use crate::wire::TimeUnit;
use endpoints::{agg_trades, exchange_info, historical_trades, klines, recent_trades, time_unit};
pub(crate) use weight::WeightState;
use weight::{admit, Admission};

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
