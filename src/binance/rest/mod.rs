//! The REST client: the only code that speaks HTTP to Binance. It checks
//! symbols against `exchangeInfo` (and adopts the `REQUEST_WEIGHT` limit it
//! reports), reads the server time, and fetches trades, aggTrades and klines
//! to fill gaps.
//!
//! Every call goes through one [`Limiter`] shared by all clones of the
//! client: it waits for the weight budget, for any `Retry-After`, for the
//! probe after a back-off and for a free in-flight slot; it records
//! `X-MBX-USED-WEIGHT-1M` from every answer, and a 429 or 418 seen by one
//! caller holds back all of them (each back-off logged once, every 429 and
//! 418 counted). Every wait is cancellable: dropping a call's future frees
//! what it held (the in-flight slot is an RAII [`SendPermit`]), so callers
//! may `select!` on shutdown.
//!
//! An answer of 451 (a restricted location) is [`RestError::Refused`]:
//! never retried, and [`RestError::is_fatal`] for the runtime to stop with
//! its message. A 403 (Binance's firewall, which blocks for rate too) backs
//! off like a 429. Bodies are read up to
//! `max_body_bytes` ([`RestError::BodyTooLarge`] past it), and at most the
//! `limit` rows asked for are used from a page (extra rows are counted and
//! dropped).
//!
//! Rows come back as domain rows with `source: Rest` and no event or receive
//! time; times are normalised to µs and decimals parsed exactly (a value that
//! does not fit `Decimal8` is a [`RestError::Body`], never rounded).
//!//! This file is the client, its API key and options, and one paced call;
//! `error.rs` holds [`RestError`], `pacing.rs` the limiter's wait and the
//! in-flight slot, `endpoints.rs` one page per endpoint, `wire.rs` the wire
//! structs and the pure `parse_*` functions, and `paging.rs` the
//! `fetch_*_range` helpers, which page (up to 1000 rows a call) until a
//! range is covered, retrying what may succeed later with capped, jittered
//! back-off, and say honestly how far they got ([`FetchOutcome`]).

mod endpoints;
pub use endpoints::ServerTimeSample;
mod error;
mod pacing;
mod paging;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tracing::warn;

use crate::binance::limiter::{
    holds_back, parse_retry_after, Endpoint, Limiter, WeightLimit, WeightShare,
    DEFAULT_MAX_IN_FLIGHT,
};
use crate::binance::markets::MarketProfile;
use crate::binance::streams::market_times_in_micros;
use crate::domain::{Market, TimeUs};
use crate::metrics::Counters;
pub use error::RestError;
use pacing::Pacer;
pub use pacing::Pacing;
pub use paging::{FetchOutcome, Fetched, IdRangeEnd, RetryPolicy};
use wire::BinanceErrorBody;

/// The most rows one call may ask for.
pub const MAX_PAGE_ROWS: u16 = 1000;

/// An API key, sent as `X-MBX-APIKEY` where an endpoint needs one (USD-M
/// `historicalTrades`, security `MARKET_DATA`: the key, no signature). Its
/// `Debug` never shows it, and nothing logs or stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// `None` unless the trimmed text is printable ASCII without spaces
    /// (what a header carries unchanged).
    pub fn new(text: &str) -> Option<ApiKey> {
        let text = text.trim();
        let printable = text.bytes().all(|byte| byte.is_ascii_graphic());
        (!text.is_empty() && printable).then(|| ApiKey(text.to_owned()))
    }
}

impl ApiKey {
    /// The header value, marked sensitive so that the HTTP stack never
    /// shows it, whatever its log level.
    fn header_value(&self) -> reqwest::header::HeaderValue {
        let mut value = reqwest::header::HeaderValue::from_str(&self.0)
            .expect("an ApiKey is printable ASCII, always a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiKey(<redacted>)")
    }
}

/// The `unfilled` reason of a trade hole on a market whose
/// `historicalTrades` needs an API key, when none is configured.
pub const REASON_NO_API_KEY: &str =
    "historicalTrades needs an API key on this market and none is configured (api_key_env, api_key_file)";

/// The `unfilled` reason of a trade hole older than `historicalTrades`
/// reaches back on the market (futures: one month).
pub const REASON_BEYOND_REACH: &str =
    "older than historicalTrades reaches back on this market (one month on futures); data.binance.vision has it";

/// The `unfilled` reason of a futures aggTrade (or trade) hole older than
/// the 24 hours `aggTrades` is documented to serve, that REST answered
/// with nothing (or not all): maybe the exchange has no such data, maybe
/// it no longer serves it; not taken for "no trades".
pub const REASON_AGG_BEYOND_REACH: &str =
    "older than futures aggTrades is sure to serve (24 hours); an empty answer is not taken for no trades; data.binance.vision has it";

/// The trading status of one symbol, as `exchangeInfo` reports it.
///
/// Futures contracts carry more (not in the reference; Binance's
/// derivatives docs): `deliveryDate` (ms; a perpetual's is in 2100) and
/// `contractStatus`, which COIN-M sends in place of `status`. Every field
/// but the symbol may be missing; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymbolStatus {
    pub symbol: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub contract_status: Option<String>,
    /// Epoch ms, as sent.
    #[serde(default)]
    pub delivery_date: Option<i64>,
}

impl SymbolStatus {
    /// `status`, or COIN-M's `contractStatus` when there is no `status`.
    pub fn trading_status(&self) -> Option<&str> {
        self.status.as_deref().or(self.contract_status.as_deref())
    }
}

/// What the client needs besides the market and the URL.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Limit on one whole request (Binance's own API timeout is 10 s).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// The part of the weight limit this client may use.
    pub weight_share: WeightShare,
    /// The weight limit until `exchangeInfo` reports one.
    pub weight_limit: WeightLimit,
    /// Requests on the wire at once, across all clones. A 429 meets at
    /// most this many minus one requests the client can no longer hold
    /// back, and Binance bans for calls inside a back-off: keep it small.
    pub max_in_flight: u32,
    /// The largest answer body read (larger ones are refused unread). A
    /// page of 1000 trades or klines is about 200 KB.
    pub max_body_bytes: usize,
    /// Where 429s, 418s, back-offs, oversized answers and extra rows are counted.
    pub counters: Arc<Counters>,
    /// Sent as `X-MBX-APIKEY` on `historicalTrades`, and only there.
    pub api_key: Option<ApiKey>,
}

/// The default body cap: 8 MiB, forty times the largest gap-fill page and
/// room for `exchangeInfo` of a long symbol list.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;

impl Default for RestOptions {
    fn default() -> RestOptions {
        RestOptions {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            weight_share: WeightShare::DEFAULT,
            weight_limit: WeightLimit::SPOT_DEFAULT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            counters: Arc::new(Counters::default()),
            api_key: None,
        }
    }
}

#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base_url: String,
    market: Market,
    request_timeout: Duration,
    max_body_bytes: usize,
    counters: Arc<Counters>,
    pacer: Arc<Pacer>,
    api_key: Option<ApiKey>,
    profile: MarketProfile,
}

/// A successful answer's body and the URL it came from (for errors).
struct Answer {
    url: String,
    bytes: Vec<u8>,
    /// The local wall clock (epoch µs) when the request went out, after
    /// any wait for the weight budget, and when its answer's head came
    /// back: the HTTP exchange alone, for the clock offset.
    sent_us: TimeUs,
    answered_us: TimeUs,
}

/// The API path prefix of a market.
fn api_prefix(market: Market) -> &'static str {
    match market {
        Market::Spot | Market::Us => "/api/v3",
        Market::UsdM => "/fapi/v1",
        Market::CoinM => "/dapi/v1",
    }
}

impl RestClient {
    pub fn new(market: Market, base_url: &str) -> RestClient {
        RestClient::with_options(market, base_url, RestOptions::default())
    }

    pub fn with_options(market: Market, base_url: &str, options: RestOptions) -> RestClient {
        crate::binance::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("binance-recorder/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with only timeouts set always builds");
        let limiter = Limiter::new(options.weight_limit, options.weight_share)
            .with_max_in_flight(options.max_in_flight);
        let pacer = Pacer::new(limiter);
        RestClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            market,
            request_timeout: options.request_timeout,
            max_body_bytes: options.max_body_bytes,
            counters: options.counters,
            pacer: Arc::new(pacer),
            api_key: options.api_key,
            profile: MarketProfile::of(market),
        }
    }

    /// Whether trades can be fetched (`historicalTrades`): on a market
    /// where it needs an API key, only with one.
    pub fn can_fetch_trades(&self) -> bool {
        !self.profile.historical_trades_needs_key || self.api_key.is_some()
    }

    /// Whether `historicalTrades` still serves trades of `time` at
    /// `exchange_now` (futures: the last month only).
    pub fn trades_reach_back_to(&self, time: TimeUs, exchange_now: TimeUs) -> bool {
        self.profile
            .historical_trades_reach_back_to(time, exchange_now)
    }

    /// Whether an `aggTrades` answer about `time` at `exchange_now` is
    /// trusted to say what is not there (futures: the last 24 hours).
    pub fn agg_trades_sure_back_to(&self, time: TimeUs, exchange_now: TimeUs) -> bool {
        self.profile.agg_trades_sure_back_to(time, exchange_now)
    }

    /// The most rows one page of `endpoint` may ask for on this market.
    fn max_page_rows(&self, endpoint: Endpoint) -> u16 {
        match endpoint {
            Endpoint::HistoricalTrades => self.profile.max_historical_trades_rows,
            _ => MAX_PAGE_ROWS,
        }
    }

    /// Reads the body of `response`, at most `max_body_bytes` of it.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        url: &str,
    ) -> Result<Vec<u8>, RestError> {
        let too_large = || {
            Counters::add(&self.counters.rest_bodies_too_large, 1);
            warn!(market = %self.market, %url, limit_bytes = self.max_body_bytes, "rest answer larger than the body cap; not read");
            RestError::BodyTooLarge {
                url: url.to_owned(),
                limit_bytes: self.max_body_bytes,
            }
        };
        let announced = response.content_length();
        if announced.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        let capacity = announced.map_or(0, |length| length as usize);
        let mut body = Vec::with_capacity(capacity);
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|source| RestError::Transport {
                    url: url.to_owned(),
                    source,
                })?;
            let Some(chunk) = chunk else {
                return Ok(body);
            };
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// At most `limit` rows of a page (Binance never sends more; a server
    /// that does is not trusted with the extra ones).
    fn at_most<R>(&self, mut rows: Vec<R>, limit: u16, url: &str) -> Vec<R> {
        let limit = usize::from(limit.clamp(1, MAX_PAGE_ROWS));
        if rows.len() > limit {
            let n_extra = rows.len() - limit;
            Counters::add(&self.counters.rest_rows_over_limit, n_extra as u64);
            warn!(market = %self.market, %url, limit, n_extra, "rest answer has more rows than asked for; the extra ones are ignored");
            rows.truncate(limit);
        }
        rows
    }

    /// One paced GET of `endpoint`; `limit` is the rows asked for (futures
    /// kline weights depend on it). Any non-2xx answer is an error; 429, 418
    /// and 403 put every caller into back-off; 451 is
    /// [`RestError::Refused`].
    async fn call(
        &self,
        endpoint: Endpoint,
        query: &[(&str, String)],
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Answer, RestError> {
        let url = format!(
            "{}{}/{}",
            self.base_url,
            api_prefix(self.market),
            endpoint.name()
        );
        let weight = endpoint.weight(self.market, u32::from(limit));
        // Held until the body is read; dropped on every return and on cancel.
        let permit = self.acquire(weight, &url, deadline).await?;
        Counters::add(&self.counters.rest_calls, 1);
        Counters::add(&self.counters.rest_weight_used, u64::from(weight));
        let mut timeout = self.request_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
        }
        // When the deadline set the timeout, a timeout means the answer
        // came too late for the caller, not that REST is unreachable.
        let timeout_is_the_deadline = timeout < self.request_timeout;
        let transport_error = |source: reqwest::Error| {
            if source.is_timeout() && timeout_is_the_deadline {
                RestError::PastDeadline { url: url.clone() }
            } else {
                RestError::Transport {
                    url: url.clone(),
                    source,
                }
            }
        };
        let mut request = self.http.get(&url).query(query).timeout(timeout);
        if market_times_in_micros(self.market) {
            request = request.header("X-MBX-TIME-UNIT", "MICROSECOND");
        }
        // The key goes on historicalTrades only, where a market needs it
        // (USD-M) or may (Binance.US, whose docs are stale): on any market
        // where one is configured. No other call carries it.
        if endpoint == Endpoint::HistoricalTrades {
            if let Some(key) = &self.api_key {
                request = request.header("X-MBX-APIKEY", key.header_value());
            }
        }
        let sent_us = crate::binance::ws::now_us();
        let response = request.send().await.map_err(transport_error)?;
        let answered_us = crate::binance::ws::now_us();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let used_weight =
            header("X-MBX-USED-WEIGHT-1M").and_then(|value| value.trim().parse::<u32>().ok());
        let retry_after = header("Retry-After").as_deref().and_then(parse_retry_after);
        match status {
            429 => Counters::add(&self.counters.rest_429, 1),
            418 => Counters::add(&self.counters.rest_418, 1),
            _ => {}
        }
        if let Some(started) = permit.headers(status, used_weight, retry_after) {
            self.log_backoff(&url, started);
        }
        let body = self
            .read_body(response, &url)
            .await
            .map_err(|error| match error {
                RestError::Transport { source, .. } => transport_error(source),
                other => other,
            })?;
        drop(permit);
        if (200..300).contains(&status) {
            return Ok(Answer {
                url,
                bytes: body,
                sent_us,
                answered_us,
            });
        }
        let (code, message) = match serde_json::from_slice::<BinanceErrorBody>(&body) {
            Ok(error) => (Some(error.code), error.msg),
            Err(_) => (
                None,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        match status {
            status if holds_back(status) => Err(RestError::RateLimited {
                url,
                status,
                code,
                retry_after,
            }),
            451 => Err(RestError::Refused {
                url,
                status,
                message,
            }),
            _ => Err(RestError::Status {
                url,
                status,
                code,
                message,
            }),
        }
    }

    /// One call whose body `parse` (a pure `parse_*` function) turns into `T`.
    async fn get_parsed<T>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, String)],
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, RestError> {
        let answer = self.call(endpoint, query, 0, None).await?;
        parse(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_header_safe_and_never_shown() {
        assert_eq!(ApiKey::new(""), None);
        assert_eq!(ApiKey::new("has space"), None);
        assert_eq!(ApiKey::new("tab\there"), None);
        let key = ApiKey::new(" test-key-0123456789 \n").expect("valid");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        let futures = RestClient::new(Market::UsdM, "http://127.0.0.1:1");
        assert!(
            !futures.can_fetch_trades(),
            "USD-M historicalTrades needs a key"
        );
        let with_key = RestClient::with_options(
            Market::UsdM,
            "http://127.0.0.1:1",
            RestOptions {
                api_key: Some(key),
                ..RestOptions::default()
            },
        );
        assert!(with_key.can_fetch_trades());
        assert!(RestClient::new(Market::Spot, "http://127.0.0.1:1").can_fetch_trades());
        assert_eq!(with_key.max_page_rows(Endpoint::HistoricalTrades), 500);
        assert_eq!(futures.max_page_rows(Endpoint::AggTrades), 1000);
    }
}
