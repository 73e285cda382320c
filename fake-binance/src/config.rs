//! Configuration of the fake exchange: market model, clock, protocol limits, replay, chaos.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::faults::Fault;
pub use crate::wire::JsonStyle;

/// Which Binance market the fake imitates; one fake serves one market (run
/// one per market to serve several). The paths, routes, event shapes and
/// limits are taken from here rather than written into the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Market {
    #[default]
    Spot,
    /// USD-M futures (`fstream`, `/fapi/v1`): routed WebSocket paths,
    /// futures event shapes, milliseconds only, `historicalTrades` behind
    /// an API key (reference 1.3, 3, 4.4, 5.2).
    UsdM,
    /// Binance.US: spot-shaped events and REST under `/api/v3`, its own
    /// hosts. Milliseconds only: its (stale) docs predate `timeUnit`.
    Us,
    /// COIN-M futures (`dstream`, `/dapi/v1`): USD-M's shapes (without
    /// `nq`) and limits without routes, symbols like `BTCUSD_PERP`, quantities in contracts,
    /// a weight limit of 1,200 (reference 3, 4.4, 5.2, 6).
    CoinM,
}

impl Market {
    /// REST path prefix: `/api/v3` for spot, `/fapi/v1` for USD-M.
    pub fn rest_prefix(self) -> &'static str {
        match self {
            Market::Spot | Market::Us => "/api/v3",
            Market::UsdM => "/fapi/v1",
            Market::CoinM => "/dapi/v1",
        }
    }

    /// Name used in logs and the control endpoint.
    pub fn name(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::UsdM => "usdm",
            Market::Us => "us",
            Market::CoinM => "coinm",
        }
    }

    /// Futures-shaped events and REST rows (`X`, no `M`; `nq` on USD-M), times in ms only.
    pub fn is_futures(self) -> bool {
        matches!(self, Market::UsdM | Market::CoinM)
    }

    /// Whether `timeUnit=MICROSECOND` (and `X-MBX-TIME-UNIT`) is honoured:
    /// spot only (reference 1.1); the others always send milliseconds.
    pub fn speaks_micros(self) -> bool {
        matches!(self, Market::Spot)
    }

    /// The shape of its events and REST rows.
    pub(crate) fn shape(self) -> crate::wire::Shape {
        match self {
            Market::UsdM => crate::wire::Shape::Futures,
            Market::CoinM => crate::wire::Shape::CoinM,
            Market::Spot | Market::Us => crate::wire::Shape::Spot,
        }
    }

    /// Whether its streams announce maintenance with `serverShutdown`:
    /// spot only. The event was added to spot streams and the spot WS API
    /// on 2026-05-08 (reference 3 and 11, from binance.com's spot
    /// changelog); no futures document has it. Binance.US is spot-shaped
    /// but its own exchange, and its docs (reference 1.1, stale since
    /// 2023-09) predate the event, so it gets none, as it gets no
    /// `timeUnit` for the same reason.
    pub fn sends_server_shutdown(self) -> bool {
        matches!(self, Market::Spot)
    }

    /// Whether the market has routed WebSocket paths (`/public`, `/market`).
    pub fn has_routes(self) -> bool {
        matches!(self, Market::UsdM)
    }
}

/// Protocol timers and limits. Timers run on real time read through
/// `tokio::time`, so tests can shorten them or drive them with paused time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Server sends a WebSocket Ping this often (spot: 20 s).
    pub ping_interval: Duration,
    /// Connection is closed when a ping stays unanswered this long (spot: 1 min).
    pub pong_timeout: Duration,
    /// Connection is closed this long after it opened (spot: 24 h).
    pub max_lifetime: Duration,
    /// More incoming frames than this within one second closes the connection (spot: 5).
    pub max_incoming_per_sec: u32,
    /// Asking for more streams than this on one connection closes it (spot: 1024).
    pub max_streams_per_connection: usize,
    /// WebSocket handshakes allowed per `handshake_window`; past it: HTTP 429 (spot: 300 / 5 min).
    pub handshake_limit: u32,
    pub handshake_window: Duration,
    /// REST request weight allowed per `weight_window` (spot: 6000 per minute).
    pub weight_limit_per_minute: u32,
    /// Length of the fixed weight window (spot: 1 minute). Header name stays `X-MBX-USED-WEIGHT-1M`.
    pub weight_window: Duration,
    /// First IP ban (HTTP 418) length; each further ban doubles it (spot: 2 minutes)...
    pub ban_duration: Duration,
    /// ...up to this (spot: 3 days).
    pub max_ban_duration: Duration,
    /// Calls inside a 429's back-off answered 429 again before the next one
    /// earns a 418 ban. Binance says "keep sending" earns a ban without a
    /// number; a few are tolerated here, as requests already on the wire
    /// when the 429 was sent cannot be held back by any client.
    pub calls_in_backoff_before_ban: u32,
    /// Every REST answer is sent this long after it was decided: the
    /// network between a client and Binance (tens of ms), during which a
    /// 429 already given is not known to the client yet. 0 by default.
    pub rest_latency: Duration,
    /// After a `serverShutdown` event the connection keeps serving this long
    /// before it closes ("shortly before closing"; Binance gives no number).
    pub server_shutdown_grace: Duration,
}

impl Limits {
    /// The market's documented limits (reference 3 and 6): spot's are
    /// [`Limits::default`]; USD-M pings every 3 minutes with a 10-minute
    /// pong deadline, takes 10 incoming messages a second and 200 streams a
    /// connection, and 2,400 request weight a minute.
    pub fn for_market(market: Market) -> Limits {
        match market {
            Market::Spot => Limits::default(),
            Market::UsdM => Limits {
                ping_interval: Duration::from_secs(180),
                pong_timeout: Duration::from_secs(600),
                max_incoming_per_sec: 10,
                max_streams_per_connection: 200,
                weight_limit_per_minute: 2400,
                ..Limits::default()
            },
            // Spot's, but for the weight limit, which the reference does
            // not give for Binance.US: the recorder's safe guess of 1,200.
            Market::Us => Limits {
                weight_limit_per_minute: 1200,
                ..Limits::default()
            },
            Market::CoinM => Limits {
                weight_limit_per_minute: 1200,
                ..Limits::for_market(Market::UsdM)
            },
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
            max_incoming_per_sec: 5,
            max_streams_per_connection: 1024,
            handshake_limit: 300,
            handshake_window: Duration::from_secs(300),
            weight_limit_per_minute: 6000,
            weight_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(120),
            max_ban_duration: Duration::from_secs(3 * 24 * 3600),
            calls_in_backoff_before_ban: 3,
            rest_latency: Duration::ZERO,
            server_shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Serve real recorded data instead of the random market.
#[derive(Debug, Clone, Default)]
pub struct ReplayConfig {
    /// Stream captures (`.gz` or text) and data.binance.vision CSVs, in the order to replay.
    pub files: Vec<PathBuf>,
    /// The simulated clock starts this long (simulated time) before the first event, so that
    /// clients can connect before the data begins. Zero: the clock starts at the first event.
    pub lead_in: Duration,
}

/// Firehose mode (benchmarks, see `firehose.rs`): pre-serialised
/// combined-stream aggTrade frames of the configured symbols, round robin,
/// sent to a connection subscribed to all of them as fast as it reads, or at
/// `rate_per_sec`, until `frames` are sent or `max_duration` (real time) has
/// passed since the first. The simulated market still runs for REST.
#[derive(Debug, Clone)]
pub struct FirehoseConfig {
    /// Frames to send at most.
    pub frames: u64,
    /// Real time the blast may last at most, from its first frame.
    pub max_duration: Duration,
    /// Frames per second; `None`: as fast as the client reads.
    pub rate_per_sec: Option<u64>,
    /// Exchange (trade) time between two consecutive frames, all symbols
    /// together, in µs; the first frame is at `sim_start_us`.
    pub step_us: i64,
}

impl Default for FirehoseConfig {
    fn default() -> FirehoseConfig {
        FirehoseConfig {
            frames: 1_000_000,
            max_duration: Duration::from_secs(60),
            rate_per_sec: None,
            step_us: 1_000,
        }
    }
}

/// Random faults at a mean rate, chosen from a list, reproducible from a seed.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// Mean number of faults per real minute (exponential gaps).
    pub mean_faults_per_minute: f64,
    /// Faults to pick from, uniformly. Empty means [`Fault::chaos_defaults`].
    pub faults: Vec<Fault>,
}

impl Default for ChaosConfig {
    fn default() -> ChaosConfig {
        ChaosConfig {
            seed: 1,
            mean_faults_per_minute: 6.0,
            faults: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Seed of the market model (and of every random choice the fake makes).
    pub seed: u64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Simulated clock at start, epoch µs. In replay mode the first event's time is used instead.
    pub sim_start_us: i64,
    /// How far before `sim_start_us` the market history is generated (REST serves it).
    pub history: Duration,
    /// Upper-case symbols, e.g. `BTCUSDT`. Ignored in replay mode (the files name their symbols).
    pub symbols: Vec<String>,
    pub market: Market,
    /// Taker orders per simulated second per symbol.
    pub mean_orders_per_sec: f64,
    pub limits: Limits,
    pub replay: Option<ReplayConfig>,
    pub chaos: Option<ChaosConfig>,
    /// API keys `historicalTrades` accepts in `X-MBX-APIKEY` on markets
    /// where it needs one (USD-M); any other key, or none, is refused.
    pub api_keys: Vec<String>,
    /// USD-M only: serve the undocumented `@trade` on `/market` instead of
    /// `/public`. The reference observed it on `/public` and flags the route
    /// as uncertain (4.4 ⚠: Binance's connector comment says `market`); this
    /// stands for the day it moves, to test a recorder's recovery.
    pub usdm_trade_on_market: bool,
    /// Firehose mode (benchmarks): WebSocket connections get pre-serialised
    /// aggTrade frames instead of the simulated market's events.
    pub firehose: Option<FirehoseConfig>,
    /// Futures contracts delivered at another time than their name says
    /// (`BTCUSD_260327`: 2026-03-27 08:00 UTC, Binance's delivery hour), or
    /// perpetuals delisted, as (symbol, epoch µs): tests deliver one
    /// mid-run. At delivery the contract stops trading: no trade after it,
    /// its streams go quiet, REST serves nothing later, `exchangeInfo` says
    /// `DELIVERED` (a dated contract) or `SETTLING` (a perpetual).
    pub deliveries: Vec<(String, i64)>,
    /// When `exchangeInfo` first names a `deliveries` entry, as (symbol,
    /// epoch µs of the simulated clock): before it the symbol shows a
    /// perpetual's placeholder date and `TRADING`. Binance announces a
    /// perpetual's delisting days ahead by giving it a `deliveryDate`;
    /// tests announce one mid-run. A symbol not listed here has its
    /// delivery known from the start.
    pub deliveries_announced: Vec<(String, i64)>,
    /// Trading halts, as (symbol, from, until) in epoch µs of the simulated
    /// clock: in `[from, until)` the symbol trades not at all and no kline
    /// opens (the reference: "No klines are produced while a symbol is
    /// `CANCEL_ONLY`"), on the streams and in REST alike; REST `klines`
    /// counts its `limit` over the klines that exist, as a database does;
    /// spot `exchangeInfo` says `HALT` meanwhile.
    pub halts: Vec<(String, i64, i64)>,
    /// How WebSocket text frames are written: Binance's compact layout, or
    /// with spaces and sorted keys (nothing in the reference promises the
    /// byte layout, so a recorder must read both).
    pub json_style: JsonStyle,
    /// When a kline stream sends an update of its open kline.
    pub kline_updates: KlineUpdates,
}

/// When a kline stream sends an update of its open kline (its closing
/// update is always sent, trades or not: reference 7). The reference gives
/// an update speed (4.3: 2 s, 1 s for `1s`; 4.4: 250 ms on futures), which
/// the real captures (`../shared/data/real/ws/cryptofeed`) show to be a
/// most, not a clock: quiet futures contracts went 10 to 23 s between
/// updates. Both readings are ones a recorder must live with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KlineUpdates {
    /// As captured: at most one update per period, and only when a trade
    /// changed the kline since the last.
    #[default]
    OnChange,
    /// One update every period, changed or not.
    EveryPeriod,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            seed: 1,
            speed: 1.0,
            sim_start_us: host_now_us(),
            history: Duration::from_secs(2 * 3600),
            symbols: vec![
                "BTCUSDT".to_owned(),
                "ETHUSDT".to_owned(),
                "BNBUSDT".to_owned(),
            ],
            market: Market::Spot,
            mean_orders_per_sec: 2.0,
            limits: Limits::default(),
            replay: None,
            chaos: None,
            api_keys: Vec::new(),
            usdm_trade_on_market: false,
            firehose: None,
            deliveries: Vec::new(),
            deliveries_announced: Vec::new(),
            halts: Vec::new(),
            json_style: JsonStyle::Compact,
            kline_updates: KlineUpdates::OnChange,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl FakeConfig {
    /// Checks the values a typo could make nonsensical, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return invalid(
                "speed",
                format!("must be a positive number, got {}", self.speed),
            );
        }
        if !(self.mean_orders_per_sec.is_finite() && self.mean_orders_per_sec > 0.0) {
            return invalid(
                "mean_orders_per_sec",
                format!("must be positive, got {}", self.mean_orders_per_sec),
            );
        }
        if self.replay.is_none() && self.symbols.is_empty() {
            return invalid("symbols", "at least one symbol is needed".to_owned());
        }
        for symbol in &self.symbols {
            if symbol.is_empty()
                || !symbol
                    .bytes()
                    .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_')
            {
                return invalid(
                    "symbols",
                    format!("{symbol:?} must be upper-case letters, digits and _"),
                );
            }
        }
        if self.limits.ping_interval.is_zero() || self.limits.pong_timeout.is_zero() {
            return invalid(
                "limits.ping_interval",
                "ping interval and pong timeout must be non-zero".to_owned(),
            );
        }
        if self.limits.weight_window.is_zero() || self.limits.handshake_window.is_zero() {
            return invalid(
                "limits.weight_window",
                "windows must be non-zero".to_owned(),
            );
        }
        if let Some(firehose) = &self.firehose {
            if firehose.step_us <= 0 {
                return invalid(
                    "firehose.step_us",
                    format!("must be positive, got {}", firehose.step_us),
                );
            }
            if firehose.max_duration.is_zero() {
                return invalid("firehose.max_duration", "must be non-zero".to_owned());
            }
            if firehose.rate_per_sec == Some(0) {
                return invalid(
                    "firehose.rate_per_sec",
                    "must be positive (None: as fast as the client reads)".to_owned(),
                );
            }
            if self.symbols.is_empty() {
                return invalid("symbols", "the firehose needs a symbol".to_owned());
            }
        }
        if let Some(chaos) = &self.chaos {
            if !(chaos.mean_faults_per_minute.is_finite() && chaos.mean_faults_per_minute > 0.0) {
                return invalid(
                    "chaos.mean_faults_per_minute",
                    "must be positive".to_owned(),
                );
            }
        }
        Ok(())
    }
}

/// The delivery time of a COIN-M dated contract (`BTCUSD_260327`): the
/// date its name ends with at 08:00 UTC, when Binance delivers quarterly
/// contracts. `None` for any other name (`BTCUSD_PERP`, spot symbols).
pub fn delivery_from_name(symbol: &str) -> Option<i64> {
    let (_, date) = symbol.rsplit_once('_')?;
    if date.len() != 6 || !date.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| date[range].parse::<u32>().ok();
    let (year, month, day) = (number(0..2)?, number(2..4)?, number(4..6)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = crate::interval::days_from_civil(2000 + i64::from(year), month, day);
    Some((days * 24 + 8) * 3_600_000_000)
}

/// The host's wall clock in epoch µs (only used for the default simulated start).
pub fn host_now_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dated_contract_is_delivered_at_eight_utc_on_its_date() {
        // 2026-03-27 08:00:00 UTC.
        assert_eq!(
            delivery_from_name("BTCUSD_260327"),
            Some(1_774_598_400_000_000)
        );
        for name in ["BTCUSD_PERP", "BTCUSDT", "BTCUSD_261327", "BTCUSD_2603270"] {
            assert_eq!(delivery_from_name(name), None, "{name}");
        }
    }
}
