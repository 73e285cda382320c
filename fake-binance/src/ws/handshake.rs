//! The WebSocket upgrade: what the URL asks for (`/ws`, `/stream`, a
//! USD-M route, `timeUnit`), the handshake budget per window, and the
//! HTTP error answered when an upgrade is refused.

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;
use tokio_tungstenite::tungstenite::http;

use crate::config::Market;
use crate::shared::{lock, Shared};
use crate::streams::{Route, StreamName};
use crate::wire::TimeUnit;

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectRequest {
    pub streams: Vec<String>,
    pub combined: bool,
    pub unit: TimeUnit,
    /// USD-M: the route in the path; `Unrouted` elsewhere.
    pub route: Route,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandshakeRejection {
    NotFound,
    BadRequest(String),
}

/// Parses `/ws`, `/ws/<s1>/<s2>`, `/stream?streams=<s1>/<s2>` and `timeUnit`;
/// on a market with routes (`routed`, USD-M) each may follow `/public`,
/// `/market` or `/private`, and times are milliseconds whatever is asked.
pub(crate) fn parse_connect_request(
    path_and_query: &str,
    market: Market,
) -> Result<ConnectRequest, HandshakeRejection> {
    let routed = market.has_routes();
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = percent_decode(path);
    let (route, path) = Route::split(&path);
    if route != Route::Unrouted && !routed {
        return Err(HandshakeRejection::NotFound);
    }
    let path = path.to_owned();
    let mut unit = TimeUnit::Millisecond;
    let mut query_streams: Option<String> = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "timeUnit" => {
                unit = TimeUnit::parse(&percent_decode(value)).ok_or_else(|| {
                    HandshakeRejection::BadRequest(format!("Invalid timeUnit: {value}"))
                })?;
            }
            "streams" => query_streams = Some(percent_decode(value)),
            _ => {}
        }
    }
    let (combined, stream_list) = if path == "/ws" || path == "/ws/" {
        (false, String::new())
    } else if let Some(rest) = path.strip_prefix("/ws/") {
        (false, rest.to_owned())
    } else if path == "/stream" || path == "/stream/" {
        (true, query_streams.unwrap_or_default())
    } else {
        return Err(HandshakeRejection::NotFound);
    };
    let mut streams: Vec<String> = Vec::new();
    for name in stream_list.split('/').filter(|name| !name.is_empty()) {
        if StreamName::parse_on(name, market).is_none() {
            return Err(HandshakeRejection::BadRequest(format!(
                "Invalid request: invalid stream {name}"
            )));
        }
        if !streams.iter().any(|existing| existing == name) {
            streams.push(name.to_owned());
        }
    }
    Ok(ConnectRequest {
        streams,
        combined,
        // Nothing like timeUnit is documented off spot: ms only.
        unit: if market.speaks_micros() {
            unit
        } else {
            TimeUnit::Millisecond
        },
        route,
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(value) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                decoded.push(value);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

pub(super) fn error_response(status: u16, body: String) -> ErrorResponse {
    let mut response = http::Response::new(Some(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    response
}

/// Counts a handshake against the budget; false when the budget is spent.
pub(super) fn take_handshake_budget(shared: &Shared) -> bool {
    let now = Instant::now();
    let window = shared.config.limits.handshake_window;
    let mut handshakes = lock(&shared.handshakes);
    while handshakes
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        handshakes.pop_front();
    }
    if handshakes.len() >= shared.config.limits.handshake_limit as usize {
        return false;
    }
    handshakes.push_back(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn usdm_paths_carry_their_route_and_speak_milliseconds() {
        let market =
            parse_connect_request("/market/stream?timeUnit=MICROSECOND", Market::UsdM).unwrap();
        assert_eq!(
            (market.route, market.combined, market.unit),
            (Route::Market, true, TimeUnit::Millisecond)
        );
        let public = parse_connect_request("/public/ws/btcusdt@trade", Market::UsdM).unwrap();
        assert_eq!(public.route, Route::Public);
        assert_eq!(public.streams, streams(&["btcusdt@trade"]));
        assert_eq!(
            parse_connect_request("/stream", Market::UsdM)
                .unwrap()
                .route,
            Route::Unrouted
        );
        // Spot has no routes.
        assert_eq!(
            parse_connect_request("/market/stream", Market::Spot),
            Err(HandshakeRejection::NotFound)
        );
    }

    #[test]
    fn parses_connect_paths() {
        let raw =
            parse_connect_request("/ws/btcusdt@trade/ethusdt@kline_1m", Market::Spot).unwrap();
        assert_eq!(raw.streams, streams(&["btcusdt@trade", "ethusdt@kline_1m"]));
        assert!(!raw.combined);
        let combined = parse_connect_request(
            "/stream?streams=btcusdt@trade/btcusdt@aggTrade&timeUnit=MICROSECOND",
            Market::Spot,
        )
        .unwrap();
        assert!(combined.combined);
        assert_eq!(combined.unit, TimeUnit::Microsecond);
        assert_eq!(combined.streams.len(), 2);
        assert_eq!(
            parse_connect_request("/ws", Market::Spot)
                .unwrap()
                .streams
                .len(),
            0
        );
        assert_eq!(
            parse_connect_request("/ws?timeUnit=microsecond", Market::Spot)
                .unwrap()
                .unit,
            TimeUnit::Microsecond
        );
        assert_eq!(
            parse_connect_request("/stream?streams=btcusdt%40trade", Market::Spot)
                .unwrap()
                .streams,
            streams(&["btcusdt@trade"])
        );
        assert_eq!(
            parse_connect_request("/other", Market::Spot),
            Err(HandshakeRejection::NotFound)
        );
        assert!(matches!(
            parse_connect_request("/ws/BTCUSDT@trade", Market::Spot),
            Err(HandshakeRejection::BadRequest(_))
        ));
        assert!(matches!(
            parse_connect_request("/ws?timeUnit=SECOND", Market::Spot),
            Err(HandshakeRejection::BadRequest(_))
        ));
    }
}
