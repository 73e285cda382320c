//! The control endpoint (HTTP, no weight, never faulted): inject faults, read
//! counters, ground truth and the simulated clock.
//!
//! * `POST /control/fault` with a [`crate::Fault`] as JSON
//! * `GET /control/counters`
//! * `GET /control/time` -> `{"sim_now_us":...}`
//! * `GET /control/ground_truth?symbol=BTCUSDT&until=<epoch µs>` (until defaults to now)
//! * `GET /control/klines?symbol=BTCUSDT&interval=1m&until=<epoch µs>`

use std::sync::Arc;

use crate::faults::Fault;
use crate::http::{HttpRequest, HttpResponse};
use crate::interval::KlineInterval;
use crate::shared::Shared;
use crate::{ground_truth_of, klines_of};

fn error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::json(status, serde_json::json!({"error": message}).to_string())
}

pub(crate) async fn handle_control(shared: Arc<Shared>, request: HttpRequest) -> HttpResponse {
    let until_us = |request: &HttpRequest| -> Result<i64, HttpResponse> {
        match request.query_value("until") {
            None => Ok(shared.now_us()),
            Some(text) => text
                .parse::<i64>()
                .map_err(|_| error(400, "until must be epoch microseconds")),
        }
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/control/fault") => match serde_json::from_slice::<Fault>(&request.body) {
            Ok(fault) => {
                shared.inject(fault);
                HttpResponse::json(200, r#"{"ok":true}"#.to_owned())
            }
            Err(parse_error) => error(400, &format!("bad fault: {parse_error}")),
        },
        ("GET", "/control/counters") => {
            let counters = crate::counters_of(&shared);
            HttpResponse::json(200, serde_json::to_string(&counters).unwrap_or_default())
        }
        ("GET", "/control/time") => {
            HttpResponse::json(200, format!(r#"{{"sim_now_us":{}}}"#, shared.now_us()))
        }
        ("GET", "/control/ground_truth") => {
            let Some(symbol) = request.query_value("symbol") else {
                return error(400, "symbol is required");
            };
            let until = match until_us(&request) {
                Ok(until) => until,
                Err(response) => return response,
            };
            match ground_truth_of(&shared, symbol, until) {
                Some(truth) => {
                    HttpResponse::json(200, serde_json::to_string(&truth).unwrap_or_default())
                }
                None => error(404, "unknown symbol"),
            }
        }
        ("GET", "/control/klines") => {
            let Some(symbol) = request.query_value("symbol") else {
                return error(400, "symbol is required");
            };
            let Some(interval) = request
                .query_value("interval")
                .and_then(KlineInterval::parse)
            else {
                return error(400, "interval is required (1s, 1m, ... 1M)");
            };
            let until = match until_us(&request) {
                Ok(until) => until,
                Err(response) => return response,
            };
            match klines_of(&shared, symbol, interval, until) {
                Some(klines) => {
                    HttpResponse::json(200, serde_json::to_string(&klines).unwrap_or_default())
                }
                None => error(404, "unknown symbol"),
            }
        }
        _ => error(404, "not found"),
    }
}
