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
//! An answer of 403 (Binance's firewall) or 451 (a restricted location) is
//! [`RestError::Refused`]: never retried, and [`RestError::is_fatal`] for
//! the runtime to stop with its message. Bodies are read up to
//! `max_body_bytes` ([`RestError::BodyTooLarge`] past it), and at most the
//! `limit` rows asked for are used from a page (extra rows are counted and
//! dropped).
//!
//! Rows come back as domain rows with `source: Rest` and no event or receive
//! time; times are normalised to µs and decimals parsed exactly (a value that
//! does not fit `Decimal8` is a [`RestError::Body`], never rounded).
//!
//! This file is the client, its errors and its pacing (one page per call);
//! `wire.rs` holds the wire structs and the pure `parse_*` functions, and
//! `paging.rs` the `fetch_*_range` helpers, which page (up to 1000 rows a
//! call) until a range is covered, retrying what may succeed later with
//! capped, jittered back-off, and say honestly how far they got
//! ([`FetchOutcome`]).

mod paging;
mod wire;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::binance::limiter::{
    parse_retry_after, BackoffStarted, Endpoint, Limiter, LimiterStats, SendId, Wait, WeightLimit,
    WeightShare, DEFAULT_MAX_IN_FLIGHT,
};
use crate::binance::markets::MarketProfile;
use crate::binance::streams::market_times_in_micros;
use crate::domain::{AggTradeRow, KlineInterval, KlineRow, Market, Symbol, TimeUs, TradeRow};
use crate::metrics::Counters;
pub use paging::{FetchOutcome, Fetched, IdRangeEnd, RetryPolicy};
use wire::{
    parse_agg_trades, parse_exchange_info, parse_klines, parse_server_time, request_weight_limit,
    BinanceErrorBody, IdPaged,
};

/// The most rows one call may ask for.
pub const MAX_PAGE_ROWS: u16 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("request to {url} failed: {source} (retrying may help)")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status} with Binance code {code:?}: {message}")]
    Status {
        url: String,
        status: u16,
        code: Option<i64>,
        message: String,
    },
    /// 429 (too much weight) or 418 (IP banned): every caller of this client
    /// waits until `retry_after` has passed.
    #[error("{url} answered HTTP {status} (rate limited, retry after {retry_after:?}) with Binance code {code:?}")]
    RateLimited {
        url: String,
        status: u16,
        code: Option<i64>,
        retry_after: Option<Duration>,
    },
    #[error("{url} answered a body that is not the expected JSON: {reason}")]
    Body { url: String, reason: String },
    /// The caller's deadline would pass while waiting for the weight budget,
    /// a rate-limit back-off or a free in-flight slot, so the request was
    /// not sent.
    #[error("{url} not called: waiting {wait:?} for the weight budget, a back-off or a request in flight would pass the deadline")]
    OutOfTime { url: String, wait: Duration },
    /// HTTP 403 (Binance's web application firewall) or 451 (a restricted
    /// location): Binance refuses this host or region. Never retried, and
    /// fatal ([`RestError::is_fatal`]): nothing will fill a gap from here.
    #[error("{url} answered HTTP {status}: Binance refuses requests from this host or region ({}); retrying will not help: {message}", refusal(.status))]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer was larger than the client's body cap: a broken or
    /// hostile server. Not read, not retried.
    #[error("{url} answered a body larger than {limit_bytes} bytes; not read")]
    BodyTooLarge { url: String, limit_bytes: usize },
    /// The caller's [`RetryPolicy::cancel`] fired (its deadline passed):
    /// the call in progress was dropped. Not retried by the helpers.
    #[error("the caller stopped waiting for REST (its deadline passed)")]
    Cancelled,
}

/// What a refusing status means, for [`RestError::Refused`]'s message.
fn refusal(status: &u16) -> &'static str {
    match status {
        451 => "451: service unavailable from a restricted location",
        403 => "403: blocked by its web application firewall",
        _ => "refused",
    }
}

impl RestError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Transport { .. }
            | RestError::Body { .. }
            | RestError::RateLimited { .. }
            | RestError::OutOfTime { .. } => true,
            RestError::Status { status, .. } => *status >= 500,
            RestError::Refused { .. } | RestError::BodyTooLarge { .. } | RestError::Cancelled => {
                false
            }
        }
    }

    /// Whether the daemon cannot go on: Binance refuses this host or region
    /// (403, 451), so no REST call will ever succeed from here. The runtime
    /// stops with this error's message.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RestError::Refused { .. })
    }

    /// The Binance error code of the answer, if it carried one.
    pub fn binance_code(&self) -> Option<i64> {
        match self {
            RestError::Status { code, .. } | RestError::RateLimited { code, .. } => *code,
            _ => None,
        }
    }
}

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

/// What a REST call would wait for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Nothing: it would go at once (or wait only for a free slot).
    Free,
    /// The weight budget of the current window is spent.
    BudgetSpent,
    /// A 429's or 418's back-off is in force.
    BackingOff,
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

/// The host clock as epoch µs, advancing with tokio's clock (monotonic, and
/// paused with it in tests).
#[derive(Debug, Clone, Copy)]
struct PacingClock {
    epoch_at_start: TimeUs,
    instant_at_start: Instant,
}

impl PacingClock {
    fn start() -> PacingClock {
        PacingClock {
            epoch_at_start: chrono::Utc::now().timestamp_micros(),
            instant_at_start: Instant::now(),
        }
    }

    fn now_us(&self) -> TimeUs {
        let elapsed =
            i64::try_from(self.instant_at_start.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.epoch_at_start.saturating_add(elapsed)
    }
}

#[derive(Debug)]
struct Pacer {
    limiter: Mutex<Limiter>,
    clock: PacingClock,
    /// Woken when a request's answer arrives or it leaves the wire: callers
    /// waiting for a slot or for the probe ask the limiter again.
    answers: Notify,
}

impl Pacer {
    fn limiter(&self) -> MutexGuard<'_, Limiter> {
        // The limiter holds plain counters; a panic elsewhere leaves them usable.
        self.limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A sent request's in-flight slot in the limiter. Dropping it (the answer
/// read, an error, or a cancelled future) frees the slot, so no state is
/// left claiming a request that is no longer on the wire.
struct SendPermit {
    pacer: Arc<Pacer>,
    send: SendId,
}

impl SendPermit {
    /// The answer's headers: its status, `X-MBX-USED-WEIGHT-1M` and
    /// `Retry-After`. Returns the back-off a 429 or 418 started, if any.
    fn headers(
        &self,
        status: u16,
        used_weight: Option<u32>,
        retry_after: Option<Duration>,
    ) -> Option<BackoffStarted> {
        let now = self.pacer.clock.now_us();
        let started =
            self.pacer
                .limiter()
                .on_headers(self.send, status, used_weight, retry_after, now);
        self.pacer.answers.notify_waiters();
        started
    }
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        let now = self.pacer.clock.now_us();
        self.pacer.limiter().on_done(self.send, now);
        self.pacer.answers.notify_waiters();
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

/// The `endTime` of an aggTrades call by time: the caller's, if any, and
/// on a market where start and end must span less than `max_span`
/// (futures: an hour) never further than `start + max_span - 1 ms`, so
/// the call is never refused; a page that ends there is followed by id.
fn agg_trades_window_end(
    max_span: Option<Duration>,
    start: TimeUs,
    end: Option<TimeUs>,
) -> Option<TimeUs> {
    let Some(max_span) = max_span else {
        return end;
    };
    let span_us = i64::try_from(max_span.as_micros()).unwrap_or(i64::MAX);
    // Binance compares milliseconds: the last ms inside the span.
    let last = start
        .div_euclid(1000)
        .saturating_mul(1000)
        .saturating_add(span_us)
        .saturating_sub(1000);
    Some(end.map_or(last, |end| end.min(last)))
}

fn clamp_limit(limit: u16) -> String {
    limit.clamp(1, MAX_PAGE_ROWS).to_string()
}

/// A successful answer's body and the URL it came from (for errors).
struct Answer {
    url: String,
    bytes: Vec<u8>,
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
        let pacer = Pacer {
            limiter: Mutex::new(limiter),
            clock: PacingClock::start(),
            answers: Notify::new(),
        };
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

    /// The weight limit in force (the default until `exchangeInfo` was read).
    pub fn weight_limit(&self) -> WeightLimit {
        self.pacer.limiter().limit()
    }

    /// The weight per window this client (and its clones) may use.
    pub fn weight_budget(&self) -> u32 {
        self.pacer.limiter().budget()
    }

    pub fn pacing_stats(&self) -> LimiterStats {
        self.pacer.limiter().stats()
    }

    /// Requests of this client and its clones on the wire now.
    pub fn n_in_flight(&self) -> usize {
        self.pacer.limiter().n_in_flight()
    }

    /// Why a call of `weight` would wait now, if it would (for the log that
    /// says why hours wait on REST).
    pub fn pacing_now(&self, weight: u32) -> Pacing {
        let now = self.pacer.clock.now_us();
        let limiter = self.pacer.limiter();
        if limiter.backoff_until(now).is_some() {
            Pacing::BackingOff
        } else if limiter.delay_before(weight, now).is_some() {
            Pacing::BudgetSpent
        } else {
            Pacing::Free
        }
    }

    /// Waits for the limiter to let a request of `weight` go: the weight
    /// budget, a back-off, the probe after one, a free in-flight slot.
    /// Cancellable: dropping the future leaves nothing behind.
    async fn acquire(
        &self,
        weight: u32,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<SendPermit, RestError> {
        loop {
            // Registered before asking, so an answer in between is not missed.
            let answered = self.pacer.answers.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = self.pacer.clock.now_us();
            let attempt = self.pacer.limiter().try_send(weight, now);
            let out_of_time = |wait| RestError::OutOfTime {
                url: url.to_owned(),
                wait,
            };
            match attempt {
                Ok(send) => {
                    return Ok(SendPermit {
                        pacer: Arc::clone(&self.pacer),
                        send,
                    })
                }
                Err(Wait::For(wait)) => {
                    if deadline.is_some_and(|deadline| Instant::now() + wait > deadline) {
                        return Err(out_of_time(wait));
                    }
                    debug!(market = %self.market, wait_ms = wait.as_millis() as u64, weight, "rest call waits for the weight budget or a back-off");
                    tokio::time::sleep(wait).await;
                }
                Err(Wait::ForAnswer) => match deadline {
                    None => answered.await,
                    Some(deadline) => tokio::select! {
                        _ = &mut answered => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(out_of_time(Duration::ZERO));
                        }
                    },
                },
            }
        }
    }

    /// Logs a back-off once, when it starts, with its length.
    fn log_backoff(&self, url: &str, started: BackoffStarted) {
        Counters::add(&self.counters.rest_backoffs, 1);
        let backoff_ms = u64::try_from(started.length.as_millis()).unwrap_or(u64::MAX);
        let retry_after_given = started.retry_after_given;
        if started.status == 418 {
            error!(market = %self.market, %url, status = started.status, backoff_ms, retry_after_given, "rest ip banned (418): no call until the ban ends");
        } else {
            warn!(market = %self.market, %url, status = started.status, backoff_ms, retry_after_given, "rest rate limited (429): no call until retry-after has passed");
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
    /// kline weights depend on it). Any non-2xx answer is an error; 429 and
    /// 418 put every caller into back-off; 403 and 451 are
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
        let response = request
            .send()
            .await
            .map_err(|source| RestError::Transport {
                url: url.clone(),
                source,
            })?;
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
        let body = self.read_body(response, &url).await?;
        drop(permit);
        if (200..300).contains(&status) {
            return Ok(Answer { url, bytes: body });
        }
        let (code, message) = match serde_json::from_slice::<BinanceErrorBody>(&body) {
            Ok(error) => (Some(error.code), error.msg),
            Err(_) => (
                None,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        match status {
            429 | 418 => Err(RestError::RateLimited {
                url,
                status,
                code,
                retry_after,
            }),
            403 | 451 => Err(RestError::Refused {
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

    /// The status of each of `symbols` that the exchange knows; a symbol
    /// missing from the answer is unknown to the exchange. The answer's
    /// `REQUEST_WEIGHT` limit becomes this client's (read at every start).
    pub async fn symbol_statuses(
        &self,
        symbols: &[String],
    ) -> Result<Vec<SymbolStatus>, RestError> {
        let list = serde_json::to_string(symbols).expect("a list of strings always serialises");
        // Futures `exchangeInfo` takes no parameter (reference 5.2): all
        // symbols come back, and only the asked ones are kept.
        let query = if self.profile.is_futures() {
            Vec::new()
        } else {
            vec![("symbols", list)]
        };
        let mut info = self
            .get_parsed(Endpoint::ExchangeInfo, &query, parse_exchange_info)
            .await?;
        info.symbols
            .retain(|status| symbols.contains(&status.symbol));
        if let Some(limit) = request_weight_limit(&info.rate_limits) {
            debug!(market = %self.market, limit = limit.limit, window_secs = limit.window.as_secs(), "request weight limit");
            self.pacer.limiter().set_limit(limit);
        }
        Ok(info.symbols)
    }

    /// Reads the `REQUEST_WEIGHT` limit from `exchangeInfo` (asked for one
    /// symbol, to keep the answer small), adopts it and returns it; `None`
    /// when the answer lists none (the current limit stays).
    pub async fn refresh_weight_limit(
        &self,
        symbol: &Symbol,
    ) -> Result<Option<WeightLimit>, RestError> {
        let query = if self.profile.is_futures() {
            Vec::new()
        } else {
            vec![("symbol", symbol.to_string())]
        };
        let info = self
            .get_parsed(Endpoint::ExchangeInfo, &query, parse_exchange_info)
            .await?;
        let limit = request_weight_limit(&info.rate_limits);
        if let Some(limit) = limit {
            self.pacer.limiter().set_limit(limit);
        }
        Ok(limit)
    }

    /// The exchange's clock, epoch µs.
    pub async fn server_time(&self) -> Result<TimeUs, RestError> {
        self.get_parsed(Endpoint::Time, &[], parse_server_time)
            .await
    }

    /// Up to `limit` (at most 1000) trades from id `from_id` on, ascending
    /// (`historicalTrades`, weight 25 on spot).
    pub async fn historical_trades(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
    ) -> Result<Vec<TradeRow>, RestError> {
        self.id_page(symbol, from_id, limit, None).await
    }

    /// Up to `limit` aggregate trades from id `from_id` on, ascending
    /// (`aggTrades`, weight 4 on spot).
    pub async fn agg_trades_from_id(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        self.id_page(symbol, from_id, limit, None).await
    }

    /// Up to `limit` aggregate trades with trade times in `[start, end]`
    /// (both inclusive, as Binance takes them), oldest first.
    pub async fn agg_trades_by_time(
        &self,
        symbol: &Symbol,
        start: TimeUs,
        end: TimeUs,
        limit: u16,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        self.agg_trades_time_page(symbol, start, Some(end), limit, None)
            .await
    }

    async fn id_page<R: IdPaged>(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<R>, RestError> {
        let limit = limit.min(self.max_page_rows(R::ENDPOINT));
        let query = [
            ("symbol", symbol.to_string()),
            ("fromId", from_id.to_string()),
            ("limit", clamp_limit(limit)),
        ];
        let answer = self.call(R::ENDPOINT, &query, limit, deadline).await?;
        let rows = R::parse(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    async fn agg_trades_time_page(
        &self,
        symbol: &Symbol,
        start: TimeUs,
        end: Option<TimeUs>,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        let mut query = vec![
            ("symbol", symbol.to_string()),
            ("startTime", self.time_parameter(start)),
            ("limit", clamp_limit(limit)),
        ];
        if let Some(end) = agg_trades_window_end(self.profile.agg_trades_max_span, start, end) {
            query.push(("endTime", self.time_parameter(end)));
        }
        let answer = self
            .call(Endpoint::AggTrades, &query, limit, deadline)
            .await?;
        let rows = parse_agg_trades(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    /// The closed klines of `interval` opening in `[start, end]` (both
    /// inclusive, as Binance takes them), at most `limit`. A kline is taken
    /// as closed when a later one follows it in the answer or its close time
    /// is before `closed_before` (the exchange's clock as the caller knows
    /// it); the still-open kline Binance puts last is left out.
    pub async fn klines(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        start: TimeUs,
        end: TimeUs,
        closed_before: TimeUs,
        limit: u16,
    ) -> Result<Vec<KlineRow>, RestError> {
        let mut rows = self
            .klines_page(symbol, interval, start, end, limit, None)
            .await?;
        if rows
            .last()
            .is_some_and(|last| last.close_time >= closed_before)
        {
            rows.pop();
        }
        Ok(rows)
    }

    /// Every kline of the answer, the still-open one included.
    async fn klines_page(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        start: TimeUs,
        end: TimeUs,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<KlineRow>, RestError> {
        let query = [
            ("symbol", symbol.to_string()),
            ("interval", interval.binance_name().to_owned()),
            ("startTime", self.time_parameter(start)),
            ("endTime", self.time_parameter(end)),
            ("limit", clamp_limit(limit)),
        ];
        let answer = self.call(Endpoint::Klines, &query, limit, deadline).await?;
        let rows = parse_klines(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    /// A time parameter: µs where the market takes them, else ms (rounded
    /// down: a start then includes its whole ms, and Binance's inclusive ms
    /// end covers its whole ms).
    fn time_parameter(&self, time: TimeUs) -> String {
        if market_times_in_micros(self.market) {
            time.to_string()
        } else {
            time.div_euclid(1000).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let status = |status: u16, code: Option<i64>| RestError::Status {
            url: "u".into(),
            status,
            code,
            message: String::new(),
        };
        assert!(status(503, None).is_retryable());
        assert!(!status(400, Some(-1121)).is_retryable());
        assert_eq!(status(400, Some(-1121)).binance_code(), Some(-1121));
        assert!(!status(403, None).is_retryable());
        let limited = RestError::RateLimited {
            url: "u".into(),
            status: 429,
            code: Some(-1003),
            retry_after: None,
        };
        assert!(limited.is_retryable());
        assert!(RestError::Body {
            url: "u".into(),
            reason: "r".into()
        }
        .is_retryable());
    }

    #[test]
    fn futures_agg_trades_by_time_never_span_an_hour() {
        let hour = Duration::from_secs(3600);
        let start = 1_767_229_200_123_456; // µs, not on a whole ms
                                           // Spot: the caller's end, or none.
        assert_eq!(agg_trades_window_end(None, start, None), None);
        assert_eq!(
            agg_trades_window_end(None, start, Some(start + 5)),
            Some(start + 5)
        );
        // Futures: the last ms inside the hour from the start's ms.
        let last = 1_767_229_200_123_000 + 3_600_000_000 - 1000;
        assert_eq!(agg_trades_window_end(Some(hour), start, None), Some(last));
        assert_eq!(
            agg_trades_window_end(Some(hour), start, Some(start + 10 * 3_600_000_000)),
            Some(last)
        );
        assert_eq!(
            agg_trades_window_end(Some(hour), start, Some(start + 1000)),
            Some(start + 1000)
        );
        // In ms, as sent: end - start < 3,600,000.
        assert!(last / 1000 - start / 1000 < 3_600_000);
    }

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
