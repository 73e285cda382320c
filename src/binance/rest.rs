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
//! The `fetch_*_range` helpers page (up to 1000 rows a call) until a range is
//! covered, retrying what may succeed later with capped, jittered back-off,
//! and say honestly how far they got ([`FetchOutcome`]).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::binance::decode::{exchange_close_time, exchange_id, exchange_time};
use crate::binance::limiter::{
    parse_retry_after, BackoffStarted, Endpoint, Limiter, LimiterStats, SendId, Wait, WeightLimit,
    WeightShare, DEFAULT_MAX_IN_FLIGHT,
};
use crate::binance::markets::MarketProfile;
use crate::binance::streams::market_times_in_micros;
use crate::domain::{
    AggTradeRow, Decimal8, KlineInterval, KlineRow, Market, Source, Symbol, TimeUs, TradeRow,
};
use crate::metrics::Counters;

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

/// The trading status of one symbol, as `exchangeInfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SymbolStatus {
    pub symbol: String,
    pub status: String,
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

/// How hard a `fetch_*_range` helper tries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per page, the first included, before giving up.
    pub max_attempts: u32,
    /// No request is sent, and no back-off waited for, past this instant.
    pub deadline: Option<Instant>,
    /// Back-off after the first failure; doubled each time up to `max_backoff`,
    /// then a random 50-100 % of it is waited.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Fired by the caller when it stops waiting (a fill round's deadline
    /// passed in exchange time, which no `Instant` can stand for): the call
    /// or back-off in progress is dropped and [`RestError::Cancelled`]
    /// returned, so a `fetch_*_range` helper reports the rows it got.
    pub cancel: Option<CancellationToken>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            deadline: None,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            cancel: None,
        }
    }
}

impl RetryPolicy {
    /// Runs `work` until it ends or [`RetryPolicy::cancel`] fires.
    async fn unless_cancelled<T>(
        &self,
        work: impl Future<Output = Result<T, RestError>>,
    ) -> Result<T, RestError> {
        match &self.cancel {
            None => work.await,
            Some(cancel) => tokio::select! {
                // A cut that already happened wins over work that could still start.
                biased;
                _ = cancel.cancelled() => Err(RestError::Cancelled),
                result = work => result,
            },
        }
    }

    fn backoff(&self, n_failures: u32) -> Duration {
        let doubling = 2u32.saturating_pow(n_failures.saturating_sub(1));
        let capped = self
            .first_backoff
            .saturating_mul(doubling)
            .min(self.max_backoff);
        capped.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Where an id range ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRangeEnd {
    /// At this id, inclusive.
    Id(i64),
    /// Before the first row with a trade time at or after this, e.g. the
    /// hour's end when the id after a hole is unknown.
    Time(TimeUs),
}

/// How far a `fetch_*_range` helper got.
#[derive(Debug)]
pub enum FetchOutcome {
    /// The exchange showed a row at or past the range's end, so every row it
    /// serves in the range was fetched. (Ids or klines it does not serve, as
    /// in a halt, stay missing: compare with the range.)
    Complete,
    /// The exchange has nothing more now and the range's end was not reached:
    /// the newest rows are not served yet, a kline has not closed yet, or
    /// there were no trades after the last row. Judge with the exchange's
    /// clock, or try again later.
    ExchangeHasNoMore,
    /// A call failed past the retry budget, or with an error retrying cannot help.
    GaveUp(RestError),
}

/// The rows a `fetch_*_range` helper got, in ascending key order, and how
/// far it got.
#[derive(Debug)]
pub struct Fetched<R> {
    pub rows: Vec<R>,
    pub outcome: FetchOutcome,
    /// Calls attempted, failed ones included.
    pub n_attempts: u32,
}

impl<R> Fetched<R> {
    pub fn is_complete(&self) -> bool {
        matches!(self.outcome, FetchOutcome::Complete)
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

#[derive(Deserialize)]
struct BinanceErrorBody {
    code: i64,
    msg: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExchangeInfo {
    symbols: Vec<SymbolStatus>,
    #[serde(default)]
    rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimit {
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

/// The wire rows of the gap-fill endpoints: private, turned into domain rows
/// by the `parse_*` functions below.
mod wire {
    #![allow(non_snake_case)]

    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Trade {
        pub id: i64,
        pub price: String,
        pub qty: String,
        pub time: i64,
        pub is_buyer_maker: bool,
        /// Absent on futures.
        #[serde(default)]
        pub is_best_match: Option<bool>,
    }

    #[derive(Deserialize)]
    pub struct AggTrade {
        pub a: i64,
        pub p: String,
        pub q: String,
        pub f: i64,
        pub l: i64,
        pub T: i64,
        pub m: bool,
        /// Absent on futures.
        #[serde(default)]
        pub M: Option<bool>,
    }

    /// open time, open, high, low, close, volume, close time, quote volume,
    /// trade count, taker buy base volume, taker buy quote volume, unused.
    pub type Kline = (
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
}

fn decimal(field: &str, text: &str) -> Result<Decimal8, String> {
    text.parse().map_err(|error| format!("{field}: {error}"))
}

/// A time of a REST row in µs, refused outside the range an exchange sends
/// (see [`exchange_time`]): hour arithmetic on a forged time would overflow.
fn checked_time(field: &str, value: i64) -> Result<TimeUs, String> {
    exchange_time(value).ok_or_else(|| format!("{field}: time {value} is out of range"))
}

fn checked_close_time(field: &str, value: i64) -> Result<TimeUs, String> {
    exchange_close_time(value).ok_or_else(|| format!("{field}: time {value} is out of range"))
}

/// An id of a REST row, refused outside the range an exchange sends (see
/// [`exchange_id`]): gap detection adds and subtracts 1 from ids.
fn checked_id(field: &str, value: i64) -> Result<i64, String> {
    exchange_id(value).ok_or_else(|| format!("{field}: id {value} is out of range"))
}

/// The body of `exchangeInfo`.
fn parse_exchange_info(body: &[u8]) -> Result<ExchangeInfo, String> {
    serde_json::from_slice(body).map_err(|error| error.to_string())
}

/// The body of `/api/v3/time`: the exchange's clock, epoch µs.
fn parse_server_time(body: &[u8]) -> Result<TimeUs, String> {
    let time: ServerTime = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    checked_time("serverTime", time.server_time)
}

fn parse_trades(body: &[u8]) -> Result<Vec<TradeRow>, String> {
    let trades: Vec<wire::Trade> =
        serde_json::from_slice(body).map_err(|error| error.to_string())?;
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

fn parse_agg_trades(body: &[u8]) -> Result<Vec<AggTradeRow>, String> {
    let agg_trades: Vec<wire::AggTrade> =
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
fn parse_klines(body: &[u8]) -> Result<Vec<KlineRow>, String> {
    let klines: Vec<wire::Kline> =
        serde_json::from_slice(body).map_err(|error| error.to_string())?;
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
                close_time: checked_close_time("close time", close_time)?,
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
fn request_weight_limit(rate_limits: &[RateLimit]) -> Option<WeightLimit> {
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
trait IdPaged: Sized {
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

    /// The first aggregate trade with a trade time in `[from, to]`, if any,
    /// retried like the `fetch_*` helpers. Its `first_trade_id` is where
    /// trades start at `from` (historicalTrades has no time parameter).
    pub async fn first_agg_trade_between(
        &self,
        symbol: &Symbol,
        from: TimeUs,
        to: TimeUs,
        retry: &RetryPolicy,
    ) -> Result<Option<AggTradeRow>, RestError> {
        let mut n_attempts = 0;
        let page = self
            .with_retries(retry, &mut n_attempts, |deadline| {
                self.agg_trades_time_page(symbol, from, Some(to), 1, deadline)
            })
            .await?;
        Ok(page.into_iter().next())
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

    /// Runs `call` until it succeeds, fails with an error retrying cannot
    /// help, or `retry` is spent; counts attempts in `n_attempts`.
    async fn with_retries<T, F, Fut>(
        &self,
        retry: &RetryPolicy,
        n_attempts: &mut u32,
        mut call: F,
    ) -> Result<T, RestError>
    where
        F: FnMut(Option<Instant>) -> Fut,
        Fut: Future<Output = Result<T, RestError>>,
    {
        let mut n_failures = 0;
        loop {
            *n_attempts += 1;
            let error = match retry.unless_cancelled(call(retry.deadline)).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            n_failures += 1;
            if !error.is_retryable()
                || matches!(error, RestError::OutOfTime { .. })
                || n_failures >= retry.max_attempts
            {
                return Err(error);
            }
            // After a 429/418 the limiter already holds every call back.
            let backoff = if matches!(error, RestError::RateLimited { .. }) {
                Duration::ZERO
            } else {
                retry.backoff(n_failures)
            };
            if retry
                .deadline
                .is_some_and(|deadline| Instant::now() + backoff >= deadline)
            {
                return Err(error);
            }
            debug!(market = %self.market, %error, n_failures, backoff_ms = backoff.as_millis() as u64, "rest call failed; retrying");
            let paused = retry
                .unless_cancelled(async {
                    tokio::time::sleep(backoff).await;
                    Ok(())
                })
                .await;
            if paused.is_err() {
                // Cut while pausing after a failure: that failure, not the
                // cut, is why the call did not succeed.
                return Err(error);
            }
        }
    }

    /// Pages `fromId` from `from_id` until `end`; rows past `end` are not kept.
    async fn fetch_id_range<R: IdPaged>(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
        mut fetched: Fetched<R>,
    ) -> Fetched<R> {
        let page_limit = page_limit.clamp(1, self.max_page_rows(R::ENDPOINT));
        let past_end = |row: &R| match end {
            IdRangeEnd::Id(last) => row.id() > last,
            IdRangeEnd::Time(until) => row.time() >= until,
        };
        if matches!(end, IdRangeEnd::Id(last) if last < from_id) {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        let mut cursor = from_id;
        loop {
            let page = self
                .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                    self.id_page::<R>(symbol, cursor, page_limit, deadline)
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    fetched.outcome = FetchOutcome::GaveUp(error);
                    return fetched;
                }
            };
            let page_was_full = page.len() >= usize::from(page_limit);
            let mut last_id = None;
            for row in page {
                if row.id() < cursor {
                    // Not asked for; the answer starts at fromId.
                    continue;
                }
                if past_end(&row) {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
                last_id = Some(row.id());
                fetched.rows.push(row);
            }
            let Some(last_id) = last_id else {
                fetched.outcome = FetchOutcome::ExchangeHasNoMore;
                return fetched;
            };
            if matches!(end, IdRangeEnd::Id(last) if last_id == last) {
                fetched.outcome = FetchOutcome::Complete;
                return fetched;
            }
            if !page_was_full {
                fetched.outcome = FetchOutcome::ExchangeHasNoMore;
                return fetched;
            }
            cursor = last_id + 1;
        }
    }

    /// Trades with ids from `from_id` to `end` (`historicalTrades`), paged
    /// `page_limit` rows a call.
    pub async fn fetch_trades_range(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<TradeRow> {
        let empty = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        self.fetch_id_range(symbol, from_id, end, page_limit, retry, empty)
            .await
    }

    /// Aggregate trades with ids from `from_id` to `end` (`aggTrades?fromId`).
    pub async fn fetch_agg_trades_range(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<AggTradeRow> {
        let empty = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        self.fetch_id_range(symbol, from_id, end, page_limit, retry, empty)
            .await
    }

    /// Aggregate trades with trade times in `[from, until)`: the first page
    /// by `startTime`, the next ones by `fromId` (Binance does not combine
    /// the two, and paging by time could stall on many trades in one µs).
    /// This is how an open hole (no id known at its start) is probed.
    pub async fn fetch_agg_trades_by_time(
        &self,
        symbol: &Symbol,
        from: TimeUs,
        until: TimeUs,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<AggTradeRow> {
        let page_limit = page_limit.clamp(1, MAX_PAGE_ROWS);
        let mut fetched = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        if until <= from {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        let first_page = self
            .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                self.agg_trades_time_page(symbol, from, None, page_limit, deadline)
            })
            .await;
        let first_page = match first_page {
            Ok(page) => page,
            Err(error) => {
                fetched.outcome = FetchOutcome::GaveUp(error);
                return fetched;
            }
        };
        let page_was_full = first_page.len() >= usize::from(page_limit);
        for row in first_page {
            if row.trade_time >= until {
                fetched.outcome = FetchOutcome::Complete;
                return fetched;
            }
            fetched.rows.push(row);
        }
        match fetched.rows.last() {
            Some(last) if page_was_full => {
                let next_id = last.agg_trade_id + 1;
                self.fetch_id_range(
                    symbol,
                    next_id,
                    IdRangeEnd::Time(until),
                    page_limit,
                    retry,
                    fetched,
                )
                .await
            }
            _ => fetched,
        }
    }

    /// Closed klines of `interval` opening in `[from, until)`, paged by
    /// start time. `closed_before` is the exchange's clock as the caller
    /// knows it (see [`RestClient::klines`]). Complete once a closed kline
    /// at or after the range's last grid open time was seen; open times the
    /// exchange has no kline for (a halt) are simply absent from the rows.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_klines_range(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        from: TimeUs,
        until: TimeUs,
        closed_before: TimeUs,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<KlineRow> {
        let page_limit = page_limit.clamp(1, MAX_PAGE_ROWS);
        let mut fetched = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        let last_open = interval.open_time_containing(until - 1);
        if until <= from || last_open < from {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        // One grid step past the range: a kline there proves the last one closed.
        let evidence_open = interval.next_open_time(last_open);
        let mut cursor = from;
        loop {
            let page = self
                .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                    self.klines_page(
                        symbol,
                        interval,
                        cursor,
                        evidence_open,
                        page_limit,
                        deadline,
                    )
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    fetched.outcome = FetchOutcome::GaveUp(error);
                    return fetched;
                }
            };
            let page_was_full = page.len() >= usize::from(page_limit);
            let n_rows = page.len();
            let mut last_kept = None;
            for (index, row) in page.into_iter().enumerate() {
                if row.open_time < cursor {
                    continue;
                }
                if row.open_time > last_open {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
                let closed = index + 1 < n_rows || row.close_time < closed_before;
                if !closed {
                    // Not closed yet: nothing after it can be either.
                    return fetched;
                }
                last_kept = Some(row.open_time);
                let is_last_of_range = row.open_time == last_open;
                fetched.rows.push(row);
                if is_last_of_range {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
            }
            match last_kept {
                Some(open) if page_was_full => cursor = interval.next_open_time(open),
                _ => return fetched,
            }
        }
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
            kline.close_time, 1_499_644_799_999_999,
            "ms close becomes next open - 1 µs"
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

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn fetch_futures_can_be_spawned() {
        let client = RestClient::new(Market::Spot, "http://127.0.0.1:9");
        let symbol = Symbol::new("BTCUSDT").expect("valid symbol");
        let retry = RetryPolicy::default();
        assert_send(&client.fetch_trades_range(&symbol, 1, IdRangeEnd::Id(2), 10, &retry));
        assert_send(&client.fetch_agg_trades_by_time(&symbol, 1, 2, 10, &retry));
        assert_send(&client.fetch_klines_range(
            &symbol,
            KlineInterval::Minute1,
            1,
            2,
            3,
            10,
            &retry,
        ));
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

    #[test]
    fn back_off_doubles_up_to_its_cap_with_jitter() {
        let retry = RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = retry.backoff(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = retry.backoff(3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            let capped = retry.backoff(30);
            assert!(
                capped >= Duration::from_millis(500) && capped <= Duration::from_millis(1000),
                "{capped:?}"
            );
        }
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
