//! Configuration: serde structs in ([`RawConfig`], every field documented,
//! defaults defined once, unknown keys refused), validated types out
//! ([`Config`]). A bad value is a [`ConfigError`] naming the key and the reason.
//!
//! The shipped `config.toml` is this module's twin: every key present,
//! commented, with its default.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::binance::limiter::WeightShare;
use crate::binance::markets::MarketProfile;
use crate::binance::rest::ApiKey;
use crate::binance::ws::ConnectionSettings;
use crate::domain::{Market, StreamKind, Symbol};
use crate::wal::FsyncPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl From<crate::upload::config::ConfigError> for ConfigError {
    fn from(error: crate::upload::config::ConfigError) -> Self {
        ConfigError::Invalid {
            key: error.key,
            reason: error.reason,
        }
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// An inclusive range a numeric key must lie in, with the reason for its
/// bounds, said in the error. Every duration and count has an upper bound:
/// durations become `Instant`s and `Duration`s added to the clock, where a
/// huge value overflows and kills the task that adds it (a
/// `rotate_after_secs` of `u64::MAX` did), and counts size memory or
/// requests that Binance limits anyway.
struct Bounds {
    min: u64,
    max: u64,
    why: &'static str,
}

impl Bounds {
    const fn new(min: u64, max: u64, why: &'static str) -> Bounds {
        Bounds { min, max, why }
    }

    fn check(&self, key: impl Into<String>, value: u64) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&value) {
            return Ok(());
        }
        Err(invalid(
            key,
            format!(
                "{value} is out of range: must be between {} and {} ({})",
                self.min, self.max, self.why
            ),
        ))
    }
}

const SECONDS_PER_HOUR: u64 = 3600;
const SECONDS_PER_DAY: u64 = 24 * SECONDS_PER_HOUR;
const MILLIS_PER_MINUTE: u64 = 60_000;
const MILLIS_PER_HOUR: u64 = 60 * MILLIS_PER_MINUTE;
const SECS_PER_WEEK: u64 = 7 * 24 * 3600;
const MILLIS_PER_DAY: u64 = 24 * MILLIS_PER_HOUR;

// The bounds of each key, with why. Lower bounds of 1 are where zero would
// mean "never" or a busy loop; zero stays allowed where it has a meaning
// (no grace, no fill deadline, no lookback).
const FSYNC_INTERVAL_MS: Bounds = Bounds::new(
    1,
    10_000,
    "a received frame is not acknowledged before its fsync",
);
const SEGMENT_MAX_BYTES: Bounds = Bounds::new(
    crate::wal::MIN_SEGMENT_MAX_BYTES,
    1024 * 1024 * 1024,
    "a segment is deleted whole, so a huge one pins disk long after its hours are sealed",
);
const SEAL_GRACE_MS: Bounds = Bounds::new(
    0,
    MILLIS_PER_HOUR,
    "an unsealed hour is held in memory; late rows re-seal their hour anyway",
);
const SEAL_MAX_CONCURRENT: Bounds =
    Bounds::new(1, 64, "each encoder holds an hour of rows in memory");
const SUBSCRIBE_BATCH: Bounds = Bounds::new(1, 1024, "Binance's limit of streams per connection");
const DEAD_AFTER_MS: Bounds = Bounds::new(
    1,
    MILLIS_PER_HOUR,
    "Binance pings every 20 s on spot and every 3 minutes on futures; a silent link kept longer loses data unnoticed",
);
const BACKOFF_MS: Bounds = Bounds::new(
    1,
    MILLIS_PER_HOUR,
    "a recorder waiting longer than an hour to reconnect is as good as stopped",
);
const HEALTHY_AFTER_MS: Bounds = Bounds::new(
    1,
    MILLIS_PER_DAY,
    "Binance closes every link at 24 h, so no link lives longer",
);
const CONNECT_TIMEOUT_MS: Bounds = Bounds::new(
    1,
    10 * MILLIS_PER_MINUTE,
    "a handshake that takes longer has failed",
);
const ROTATE_AFTER_SECS: Bounds =
    Bounds::new(1, SECONDS_PER_DAY, "Binance closes connections at 24 h");
const ROTATION_OVERLAP_TIMEOUT_MS: Bounds = Bounds::new(
    1,
    MILLIS_PER_HOUR,
    "the old link is closed by Binance at 24 h whatever we wait",
);
const HANDSHAKE_LIMIT: Bounds = Bounds::new(1, 300, "Binance's limit per 5 minutes");
const HANDSHAKE_WINDOW_SECS: Bounds = Bounds::new(
    1,
    SECONDS_PER_DAY,
    "Binance counts per 5 minutes; a longer window only slows reconnects",
);
const MAX_BACKPRESSURE_WAIT_MS: Bounds = Bounds::new(
    1,
    10 * MILLIS_PER_MINUTE,
    "a link that answers no ping for a minute is closed by Binance",
);
const SILENT_AFTER_MIN_MS: Bounds = Bounds::new(
    100,
    MILLIS_PER_HOUR,
    "below a tenth of a second scheduling jitter alone replaces links; a link silent for an hour has lost an hour",
);
const SILENT_AFTER_MAX_MS: Bounds = Bounds::new(
    100,
    MILLIS_PER_DAY,
    "Binance closes every link at 24 h anyway",
);
const REQUEST_TIMEOUT_MS: Bounds = Bounds::new(
    1,
    10 * MILLIS_PER_MINUTE,
    "a REST answer that takes longer has failed",
);
const MAX_ATTEMPTS: Bounds = Bounds::new(
    1,
    100,
    "every attempt costs REST weight shared with other programs",
);
const FILL_RETRY_MS: Bounds = Bounds::new(1, MILLIS_PER_DAY, "holes are retried at least daily");
const FILL_DEADLINE_SECS: Bounds = Bounds::new(
    0,
    7 * SECONDS_PER_DAY,
    "an hour waiting for fills is held in memory and pins its WAL segments",
);
const DECLARED_RETRY_SECS: Bounds = Bounds::new(
    1,
    7 * SECONDS_PER_DAY,
    "declared holes are retried at least weekly",
);
const LOOKBACK_HOURS: Bounds = Bounds::new(
    0,
    90 * 24,
    "every file in the lookback is read at start; Binance's REST history is only useful this far",
);
const DECLARED_GIVE_UP_HOURS: Bounds = Bounds::new(
    1,
    90 * 24,
    "a hole REST could not fill for this long is left to `binance-recorder backfill`",
);
const MAX_CONCURRENT_ROUNDS: Bounds = Bounds::new(
    1,
    256,
    "each round holds its rows in memory; REST weight is the real limit",
);
const SHUTDOWN_DEADLINE_MS: Bounds = Bounds::new(
    1,
    10 * MILLIS_PER_MINUTE,
    "keep it below systemd's TimeoutStopSec",
);
const TIME_CHECK_INTERVAL_SECS: Bounds = Bounds::new(
    1,
    SECONDS_PER_DAY,
    "the clock offset is measured at least daily",
);

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub wal: RawWal,
    #[serde(default)]
    pub seal: RawSeal,
    #[serde(default)]
    pub connection: RawConnection,
    #[serde(default)]
    pub fill: RawFill,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub clock: RawClock,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// One table per market: `[markets.spot]`, `[markets.usdm]`,
    /// `[markets.coinm]` (perpetuals only in this release), `[markets.us]`.
    #[serde(default)]
    pub markets: BTreeMap<String, RawMarket>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// Root of the Parquet dataset.
    pub data_dir: PathBuf,
    /// Write-ahead log segments.
    pub wal_dir: PathBuf,
    /// Frames that could not be decoded, kept raw with the error.
    pub quarantine_dir: PathBuf,
    /// Where sealed files are uploaded (`s3://bucket/prefix`); unset keeps
    /// them in `data_dir` only. This and the keys below are validated by
    /// `crate::upload::config`, which documents them.
    pub destination: Option<String>,
    pub keep_local_hours: Option<u64>,
    pub backlog_warn_files: Option<u64>,
    pub multipart_threshold_bytes: Option<u64>,
    pub upload_retry_initial_ms: Option<u64>,
    pub upload_retry_max_ms: Option<u64>,
    /// `[storage.s3]`: the S3 client's options (never credentials).
    pub s3: crate::upload::RawS3,
}

impl RawStorage {
    /// The upload's keys, for `crate::upload::config::validate`.
    fn upload_keys(&self) -> crate::upload::RawUpload {
        crate::upload::RawUpload {
            destination: self.destination.clone(),
            keep_local_hours: self.keep_local_hours,
            backlog_warn_files: self.backlog_warn_files,
            multipart_threshold_bytes: self.multipart_threshold_bytes,
            upload_retry_initial_ms: self.upload_retry_initial_ms,
            upload_retry_max_ms: self.upload_retry_max_ms,
            s3: self.s3.clone(),
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            data_dir: PathBuf::from("data/parquet"),
            wal_dir: PathBuf::from("data/wal"),
            quarantine_dir: PathBuf::from("data/quarantine"),
            destination: None,
            keep_local_hours: None,
            backlog_warn_files: None,
            multipart_threshold_bytes: None,
            upload_retry_initial_ms: None,
            upload_retry_max_ms: None,
            s3: crate::upload::RawS3::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWal {
    /// `"interval"`: group commit, one fsync per `fsync_interval_ms` at most;
    /// `"immediate"`: fsync as soon as anything is pending.
    pub fsync: String,
    /// Longest time a received frame waits for its fsync, in milliseconds.
    pub fsync_interval_ms: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_max_bytes: u64,
}

impl Default for RawWal {
    fn default() -> Self {
        RawWal {
            fsync: "interval".to_owned(),
            fsync_interval_ms: 50,
            segment_max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSeal {
    /// How long after an hour's end (in exchange time) rows may still
    /// arrive before the hour is sealed, in milliseconds.
    pub grace_ms: u64,
    /// Parquet files encoded at the same time at most.
    pub max_concurrent: usize,
}

impl Default for RawSeal {
    fn default() -> Self {
        RawSeal {
            grace_ms: 10_000,
            max_concurrent: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConnection {
    /// Streams per connection, for every market whose table does not set
    /// its own; unset, each market takes its own (200, within Binance's
    /// limit: 1024 on spot, 200 on futures).
    pub streams_per_connection: Option<usize>,
    /// Streams per SUBSCRIBE request.
    pub subscribe_batch: usize,
    /// Our control frames per second per connection, for every market
    /// whose table does not set its own; unset, half the market's limit
    /// (Binance closes past 5 incoming frames a second on spot, 10 on
    /// futures, pongs included).
    pub max_control_per_sec: Option<u32>,
    /// A connection that delivered no frame (data or ping) for this long is
    /// dead and replaced, in milliseconds, for every market whose table does
    /// not set its own; unset, one and a half of the market's ping
    /// intervals (spot pings every 20 s, futures every 3 minutes).
    pub dead_after_ms: Option<u64>,
    /// Reconnect backoff: first delay and cap (full jitter), in milliseconds.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A connection that lived this long resets the backoff, in milliseconds.
    pub healthy_after_ms: u64,
    pub connect_timeout_ms: u64,
    /// Rotate each connection make-before-break this long after it opened,
    /// in seconds (Binance closes connections at 24 h).
    pub rotate_after_secs: u64,
    /// How long an old connection waits for its replacement to overlap it.
    pub rotation_overlap_timeout_ms: u64,
    /// New connections across all of them: at most `handshake_limit` per
    /// `handshake_window_secs` (Binance: 300 per 5 minutes per IP).
    pub handshake_limit: u32,
    pub handshake_window_secs: u64,
    /// Longest wait on a full recorder channel before a connection is given
    /// up (it cannot answer pings while it waits), in milliseconds.
    pub max_backpressure_wait_ms: u64,
    /// A connection that answers pings but whose streams delivered no data
    /// for a bound learned from their usual rates (20 x the typical gap
    /// between data frames, 10 x a kline stream's push interval: 2 s on
    /// spot) is replaced make-before-break. The bound is never below
    /// `silent_after_min_ms`; past it a connection is judged only while the
    /// market's other connections deliver. In milliseconds.
    pub silent_after_min_ms: u64,
    /// The bound is never above this, and past it a connection is replaced
    /// even while the market's other connections are quiet too.
    pub silent_after_max_ms: u64,
}

impl Default for RawConnection {
    fn default() -> Self {
        RawConnection {
            streams_per_connection: None,
            subscribe_batch: 100,
            max_control_per_sec: None,
            dead_after_ms: None,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            healthy_after_ms: 60_000,
            connect_timeout_ms: 10_000,
            rotate_after_secs: 23 * 3600 + 30 * 60,
            rotation_overlap_timeout_ms: 30_000,
            handshake_limit: 250,
            handshake_window_secs: 300,
            max_backpressure_wait_ms: 10_000,
            silent_after_min_ms: 20_000,
            silent_after_max_ms: 600_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFill {
    /// Fill the holes found before sealing from REST. When false, hours are
    /// sealed with what the streams delivered and holes are only declared.
    pub enabled: bool,
    /// Fill an hour from its start even when nothing was recorded before it
    /// (the first start, or after downtime), so its file covers the whole hour.
    pub backfill_from_hour_start: bool,
    /// The share of Binance's REST weight limit this recorder may use (0 to
    /// 1); other programs on the host share the IP's limit.
    pub weight_share: f64,
    /// Limit on one REST request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Attempts per REST page within one fill round, the first included.
    pub max_attempts: u32,
    /// Pause between fill rounds of an hour whose holes REST did not fill:
    /// first pause and cap (doubling), in milliseconds.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How long sealing waits for fills, in seconds of exchange time after
    /// the hour could be sealed; a hole still open then is sealed as
    /// declared in the file's `unfilled` metadata. A fill round still
    /// running or queued then is cut, keeping the rows it fetched.
    pub deadline_secs: u64,
    /// How often declared holes of sealed files are tried again, in seconds
    /// of exchange time (like the hours they belong to).
    pub declared_retry_secs: u64,
    /// At start: how many hours back the sealed files are read for declared
    /// holes to retry, and for the last rows before the downtime.
    pub lookback_hours: u32,
    /// Declared holes of an hour that ended this many hours ago are no
    /// longer retried by the daemon: they stay declared in the file, and
    /// `binance-recorder backfill` retries them on demand.
    pub declared_give_up_hours: u32,
    /// Most fill rounds running at once; more wait their turn.
    pub max_concurrent_rounds: u32,
    /// On spot, a trade stream-hour's holes wait for the aggTrade stream of
    /// the same symbol to seal that hour, whose aggregates (`f..l`) name the
    /// missing trade ids: one-fill aggregates are the trades, a range no
    /// aggregate covers is empty, and only the rest is asked of REST.
    pub agg_trade_evidence: bool,
}

impl Default for RawFill {
    fn default() -> Self {
        RawFill {
            enabled: true,
            backfill_from_hour_start: true,
            weight_share: 0.3,
            request_timeout_ms: 10_000,
            max_attempts: 5,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            deadline_secs: 300,
            declared_retry_secs: 600,
            lookback_hours: 24,
            declared_give_up_hours: 24,
            max_concurrent_rounds: 16,
            agg_trade_evidence: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address of the `/metrics` and `/health` listener; `""` turns it off.
    pub listen: String,
    /// `/health` fails when a kline stream is silent this long, in seconds.
    pub stale_after_secs: u64,
    /// `/health` fails when a trade or aggTrade stream is silent this long.
    pub quiet_stale_after_secs: u64,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9464".to_owned(),
            stale_after_secs: 60,
            quiet_stale_after_secs: 3600,
        }
    }
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
    pub health: crate::metrics::health::HealthBounds,
}

const STALE_AFTER_SECS: Bounds = Bounds::new(
    1,
    SECS_PER_WEEK,
    "a stream silent longer than a week is not merely quiet",
);

fn validate_metrics(raw: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let listen = if raw.listen.is_empty() {
        None
    } else {
        Some(raw.listen.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9464\" (or \"\" for no listener)",
                    raw.listen
                ),
            )
        })?)
    };
    STALE_AFTER_SECS.check("metrics.stale_after_secs", raw.stale_after_secs)?;
    STALE_AFTER_SECS.check("metrics.quiet_stale_after_secs", raw.quiet_stale_after_secs)?;
    Ok(MetricsConfig {
        listen,
        health: crate::metrics::health::HealthBounds {
            stale_after: Duration::from_secs(raw.stale_after_secs),
            quiet_stale_after: Duration::from_secs(raw.quiet_stale_after_secs),
            wal_stuck_after: Duration::from_secs(10),
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// Time allowed for an orderly stop after SIGTERM, in milliseconds;
    /// keep it below systemd's TimeoutStopSec.
    pub deadline_ms: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            deadline_ms: 20_000,
        }
    }
}

/// How far a frame's times may stray before it is not believed: the
/// exchange clock moves only on times two sources agree on, and a frame
/// outside these bounds is quarantined with its reason, never filed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClock {
    /// Most seconds a frame's event time (`E`) may lead the newest time any
    /// other source of its market (another stream, `/api/v3/time`) has
    /// shown, and trail the market's exchange clock. An hour: far beyond
    /// Binance's own delays, yet a frame dated hours away (which would seal
    /// the current hour early or pin memory) is caught.
    pub max_lead_secs: u64,
    /// Most seconds between a row's own time (trade time, kline close time)
    /// and the event time of its frame. Binance stamps both within
    /// milliseconds; an hour allows for an exchange backlog and for a test
    /// exchange running hundreds of times faster than real time.
    pub max_event_delay_secs: u64,
    /// Most a trade or aggTrade id may jump past the newest id held for its
    /// stream. A billion is more than a year of the busiest symbol's trades;
    /// a bogus jump would otherwise start REST paging over ids that never were.
    pub max_id_jump: u64,
}

impl Default for RawClock {
    fn default() -> Self {
        RawClock {
            max_lead_secs: 3600,
            max_event_delay_secs: 3600,
            max_id_jump: 1_000_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing filter, e.g. `"info"` or `"binance_recorder=debug,info"`;
    /// the RUST_LOG environment variable overrides it.
    pub level: String,
    /// `"text"` (one readable line per event) or `"json"` (one JSON object
    /// per line, for log shippers).
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Checks `[log]`: the level must parse as a tracing filter (a typo would
/// otherwise silence the log), the format must be known.
fn validate_log(raw: &RawLog) -> Result<LogFormat, ConfigError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(&raw.level)
        .map_err(|error| {
            invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter ({error}); use a level such as \"info\" or \"debug\", or directives such as \"binance_recorder=debug,info\"",
                    raw.level
                ),
            )
        })?;
    match raw.format.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(invalid(
            "log.format",
            format!("{other:?} is neither \"text\" nor \"json\""),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMarket {
    /// Set to false to keep the table but record nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// WebSocket base URL, without a path; unset, the real exchange's
    /// (`binance::markets::MarketProfile`). USD-M adds its routes
    /// (`/public`, `/market`) itself.
    #[serde(default)]
    pub ws_url: Option<String>,
    /// REST base URL, without a path; unset, the real exchange's.
    #[serde(default)]
    pub rest_url: Option<String>,
    /// Upper-case symbols, e.g. `["BTCUSDT", "ETHUSDT"]`.
    pub symbols: Vec<String>,
    /// `trade`, `aggTrade`, `kline_<interval>` (`1s 1m 3m 5m 15m 30m 1h 2h
    /// 4h 6h 8h 12h 1d 3d 1w 1M`).
    pub streams: Vec<String>,
    /// Check every symbol against `exchangeInfo` at start: unknown is an
    /// error, not trading a warning (Binance accepts subscriptions to such
    /// symbols and silently sends nothing).
    #[serde(default = "default_true")]
    pub check_symbols: bool,
    /// How often `/api/v3/time` is asked, to measure the host clock's
    /// offset from the exchange's (`clock_offset_us`), in seconds.
    #[serde(default = "default_time_check_interval_secs")]
    pub time_check_interval_secs: u64,
    /// Allow cleartext `ws://` and `http://` URLs to a host other than the
    /// loopback (127.0.0.0/8, `localhost`, `::1`). Off by default: over
    /// cleartext anyone on the path can alter prices unnoticed, and the
    /// dataset would record the forgery as fact.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Streams per connection on this market (over `[connection]`).
    #[serde(default)]
    pub streams_per_connection: Option<usize>,
    /// Our control frames per second per connection on this market.
    #[serde(default)]
    pub max_control_per_sec: Option<u32>,
    /// A link of this market without any frame this long is dead, in ms.
    #[serde(default)]
    pub dead_after_ms: Option<u64>,
    /// The environment variable holding the API key sent as
    /// `X-MBX-APIKEY` where an endpoint needs one (USD-M
    /// `historicalTrades`). Never put the key itself in this file.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// A file holding the API key (read at start; over `api_key_env`).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

fn default_api_key_env() -> String {
    "BINANCE_API_KEY".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_time_check_interval_secs() -> u64 {
    60
}

/// The validated configuration the recorder runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub quarantine_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_max_bytes: u64,
    pub seal_grace: Duration,
    pub max_concurrent_seals: usize,
    pub connection: ConnectionConfig,
    pub fill: FillConfig,
    pub shutdown_deadline: Duration,
    pub clock: ClockBounds,
    pub log_level: String,
    pub log_format: LogFormat,
    pub metrics: MetricsConfig,
    /// `[storage] destination` and its keys; `None`: files stay local.
    pub upload: Option<crate::upload::UploadConfig>,
    pub markets: Vec<MarketConfig>,
}

/// Validated `[connection]` settings. `settings` carries the values every
/// market shares; each [`MarketConfig`] has its own copy with its control
/// rate and dead-link bound.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub handshake_limit: u32,
    pub handshake_window: Duration,
    pub settings: ConnectionSettings,
}

/// Validated `[clock]` settings, in µs and ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockBounds {
    pub max_lead_us: i64,
    pub max_event_delay_us: i64,
    pub max_id_jump: i64,
}

impl Default for ClockBounds {
    fn default() -> Self {
        validate_clock(&RawClock::default()).expect("the default clock bounds are valid")
    }
}

/// Validated `[fill]` settings.
#[derive(Debug, Clone)]
pub struct FillConfig {
    pub enabled: bool,
    pub backfill_from_hour_start: bool,
    pub weight_share: WeightShare,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Exchange time, µs.
    pub deadline_us: i64,
    pub declared_retry: Duration,
    pub lookback_hours: u32,
    /// Exchange time after an hour's end, µs.
    pub declared_give_up_us: i64,
    pub max_concurrent_rounds: usize,
    pub agg_trade_evidence: bool,
}

#[derive(Debug, Clone)]
pub struct MarketConfig {
    pub market: Market,
    pub ws_url: String,
    pub rest_url: String,
    pub symbols: Vec<Symbol>,
    pub streams: Vec<StreamKind>,
    pub check_symbols: bool,
    pub time_check_interval: Duration,
    /// Streams per connection on this market.
    pub streams_per_connection: usize,
    /// `[connection]` with this market's control rate and dead-link bound.
    pub connection: ConnectionSettings,
    /// Where the API key comes from (read at start, never stored here).
    pub api_key: ApiKeySource,
}

impl MarketConfig {
    /// The REST client options of this market: its own weight limit until
    /// `exchangeInfo` says otherwise, the `[fill]` timeouts and share, and
    /// its API key, read now (see [`ApiKeySource::resolve`]).
    pub fn rest_options(
        &self,
        fill: &FillConfig,
        counters: std::sync::Arc<crate::metrics::Counters>,
    ) -> Result<crate::binance::rest::RestOptions, ConfigError> {
        let profile = MarketProfile::of(self.market);
        Ok(crate::binance::rest::RestOptions {
            request_timeout: fill.request_timeout,
            weight_share: fill.weight_share,
            weight_limit: crate::binance::limiter::WeightLimit {
                limit: profile.default_weight_limit,
                window: Duration::from_secs(60),
            },
            counters,
            api_key: self.api_key.resolve()?,
            ..crate::binance::rest::RestOptions::default()
        })
    }
}

/// Where a market's optional API key is read from: the file if one is
/// named, else the environment variable. The key is read when the recorder
/// starts and lives only in the REST client, never in a log or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySource {
    /// The config key prefix (`markets.usdm`), for errors.
    pub key: String,
    pub env: String,
    pub file: Option<PathBuf>,
}

impl ApiKeySource {
    /// Reads the key: `Ok(None)` when neither the file nor the variable
    /// gives one. A named file that cannot be read, or a key that could not
    /// be sent as a header, is an error naming the config key (never the
    /// value).
    pub fn resolve(&self) -> Result<Option<ApiKey>, ConfigError> {
        let (key, text) = match &self.file {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|error| {
                    invalid(
                        format!("{}.api_key_file", self.key),
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?;
                (format!("{}.api_key_file", self.key), text)
            }
            None => match std::env::var(&self.env) {
                Ok(text) => (format!("{}.api_key_env", self.key), text),
                Err(_) => return Ok(None),
            },
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        ApiKey::new(&text).map(Some).ok_or_else(|| {
            invalid(
                key,
                "the API key holds characters a header cannot carry (printable ASCII without spaces only)",
            )
        })
    }
}
/// The REST host that serves only market data; it has no `historicalTrades`.
const MARKET_DATA_ONLY_REST_HOST: &str = "data-api.binance.vision";

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text (no file system checks).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: PathBuf::new(),
            message: error.to_string(),
        })?;
        raw.validate()
    }

    /// Checks that every directory can be created and written, so a bad
    /// path is reported at start rather than at the first seal.
    pub fn check_directories(&self) -> Result<(), ConfigError> {
        for (key, directory) in [
            ("storage.data_dir", &self.data_dir),
            ("storage.wal_dir", &self.wal_dir),
            ("storage.quarantine_dir", &self.quarantine_dir),
        ] {
            check_writable_directory(directory).map_err(|reason| invalid(key, reason))?;
        }
        Ok(())
    }
}

fn check_writable_directory(directory: &Path) -> Result<(), String> {
    fs::create_dir_all(directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let probe = directory.join(format!(".write-probe-{}", std::process::id()));
    fs::write(&probe, b"probe")
        .map_err(|error| format!("{} is not writable: {error}", directory.display()))?;
    fs::remove_file(&probe)
        .map_err(|error| format!("cannot clean up in {}: {error}", directory.display()))
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let fsync = match self.wal.fsync.as_str() {
            "immediate" => FsyncPolicy::EveryRecord,
            "interval" => {
                FSYNC_INTERVAL_MS.check("wal.fsync_interval_ms", self.wal.fsync_interval_ms)?;
                FsyncPolicy::Interval(Duration::from_millis(self.wal.fsync_interval_ms))
            }
            other => {
                return Err(invalid(
                    "wal.fsync",
                    format!("{other:?} is neither \"interval\" nor \"immediate\""),
                ))
            }
        };
        SEGMENT_MAX_BYTES.check("wal.segment_max_bytes", self.wal.segment_max_bytes)?;
        SEAL_GRACE_MS.check("seal.grace_ms", self.seal.grace_ms)?;
        SEAL_MAX_CONCURRENT.check("seal.max_concurrent", count(self.seal.max_concurrent))?;
        let connection = validate_connection(&self.connection)?;
        let fill = validate_fill(&self.fill)?;
        SHUTDOWN_DEADLINE_MS.check("shutdown.deadline_ms", self.shutdown.deadline_ms)?;
        for (key, path) in [
            ("storage.data_dir", &self.storage.data_dir),
            ("storage.wal_dir", &self.storage.wal_dir),
            ("storage.quarantine_dir", &self.storage.quarantine_dir),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if self.storage.data_dir == self.storage.wal_dir {
            return Err(invalid(
                "storage.wal_dir",
                "must differ from storage.data_dir",
            ));
        }
        let upload = crate::upload::config::validate(self.storage.upload_keys())?;
        // A declared hole is retried (and its hour resealed from the local
        // file) for declared_give_up_hours: the file must still be there.
        if let Some(keep) = upload.as_ref().and_then(|upload| upload.keep_local) {
            let give_up_us = u128::try_from(fill.declared_give_up_us).unwrap_or(0);
            if keep.as_micros() < give_up_us {
                return Err(invalid(
                    "storage.keep_local_hours",
                    format!(
                        "{} is below fill.declared_give_up_hours ({}): an hour whose declared holes are still retried must keep its local file",
                        keep.as_secs() / 3600,
                        give_up_us / 3_600_000_000
                    ),
                ));
            }
        }
        let mut markets = Vec::new();
        for (name, raw_market) in self.markets {
            let key = format!("markets.{name}");
            let market = Market::from_name(&name).ok_or_else(|| {
                invalid(
                    &key,
                    format!("unknown market {name:?}; known: spot, usdm, coinm, us"),
                )
            })?;
            if raw_market.enabled {
                markets.push(validate_market(
                    &key,
                    market,
                    raw_market,
                    &self.connection,
                    &connection,
                )?);
            }
        }
        if markets.is_empty() {
            return Err(invalid(
                "markets",
                "no enabled market: add a [markets.spot] table",
            ));
        }
        Ok(Config {
            data_dir: self.storage.data_dir,
            wal_dir: self.storage.wal_dir,
            quarantine_dir: self.storage.quarantine_dir,
            fsync,
            segment_max_bytes: self.wal.segment_max_bytes,
            seal_grace: Duration::from_millis(self.seal.grace_ms),
            max_concurrent_seals: self.seal.max_concurrent,
            connection,
            fill,
            shutdown_deadline: Duration::from_millis(self.shutdown.deadline_ms),
            clock: validate_clock(&self.clock)?,
            log_format: validate_log(&self.log)?,
            metrics: validate_metrics(&self.metrics)?,
            upload,
            log_level: self.log.level,
            markets,
        })
    }
}

const CLOCK_SECS: Bounds = Bounds::new(
    60,
    7 * SECONDS_PER_DAY,
    "below a minute honest frames are refused; past a week a lie can seal a week of hours",
);
const MAX_ID_JUMP: Bounds = Bounds::new(
    1_000,
    1_000_000_000_000,
    "ids past the newest by more are not believed",
);

fn validate_clock(raw: &RawClock) -> Result<ClockBounds, ConfigError> {
    CLOCK_SECS.check("clock.max_lead_secs", raw.max_lead_secs)?;
    CLOCK_SECS.check("clock.max_event_delay_secs", raw.max_event_delay_secs)?;
    MAX_ID_JUMP.check("clock.max_id_jump", raw.max_id_jump)?;
    let micros = |secs: u64| secs as i64 * crate::domain::MICROS_PER_SECOND;
    Ok(ClockBounds {
        max_lead_us: micros(raw.max_lead_secs),
        max_event_delay_us: micros(raw.max_event_delay_secs),
        max_id_jump: raw.max_id_jump as i64,
    })
}

/// A count as the `u64` the bounds are written in; `usize` is at most 64 bits
/// on every target Rust supports, so the conversion only saturates in theory.
fn count(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn validate_connection(raw: &RawConnection) -> Result<ConnectionConfig, ConfigError> {
    let key = |name: &str| format!("connection.{name}");
    SUBSCRIBE_BATCH.check(key("subscribe_batch"), count(raw.subscribe_batch))?;
    // The market-dependent keys are checked per market (validate_market),
    // against each market's own limits; the dead-link bound has one range.
    if let Some(dead_after_ms) = raw.dead_after_ms {
        DEAD_AFTER_MS.check(key("dead_after_ms"), dead_after_ms)?;
    }
    BACKOFF_MS.check(key("backoff_initial_ms"), raw.backoff_initial_ms)?;
    BACKOFF_MS.check(key("backoff_max_ms"), raw.backoff_max_ms)?;
    HEALTHY_AFTER_MS.check(key("healthy_after_ms"), raw.healthy_after_ms)?;
    CONNECT_TIMEOUT_MS.check(key("connect_timeout_ms"), raw.connect_timeout_ms)?;
    ROTATE_AFTER_SECS.check(key("rotate_after_secs"), raw.rotate_after_secs)?;
    ROTATION_OVERLAP_TIMEOUT_MS.check(
        key("rotation_overlap_timeout_ms"),
        raw.rotation_overlap_timeout_ms,
    )?;
    HANDSHAKE_LIMIT.check(key("handshake_limit"), u64::from(raw.handshake_limit))?;
    HANDSHAKE_WINDOW_SECS.check(key("handshake_window_secs"), raw.handshake_window_secs)?;
    MAX_BACKPRESSURE_WAIT_MS.check(
        key("max_backpressure_wait_ms"),
        raw.max_backpressure_wait_ms,
    )?;
    SILENT_AFTER_MIN_MS.check(key("silent_after_min_ms"), raw.silent_after_min_ms)?;
    SILENT_AFTER_MAX_MS.check(key("silent_after_max_ms"), raw.silent_after_max_ms)?;
    if raw.silent_after_max_ms < raw.silent_after_min_ms {
        return Err(invalid(
            key("silent_after_max_ms"),
            "must not be below silent_after_min_ms",
        ));
    }
    if raw.backoff_max_ms < raw.backoff_initial_ms {
        return Err(invalid(
            key("backoff_max_ms"),
            "must not be below backoff_initial_ms",
        ));
    }
    Ok(ConnectionConfig {
        handshake_limit: raw.handshake_limit,
        handshake_window: Duration::from_secs(raw.handshake_window_secs),
        settings: ConnectionSettings {
            backoff_initial: Duration::from_millis(raw.backoff_initial_ms),
            backoff_max: Duration::from_millis(raw.backoff_max_ms),
            healthy_after: Duration::from_millis(raw.healthy_after_ms),
            // Per market: see `validate_market`.
            dead_after: MarketProfile::of(Market::Spot).default_dead_after(),
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
            rotate_after: Duration::from_secs(raw.rotate_after_secs),
            rotation_overlap_timeout: Duration::from_millis(raw.rotation_overlap_timeout_ms),
            max_control_per_sec: MarketProfile::of(Market::Spot).default_control_per_sec(),
            subscribe_batch: raw.subscribe_batch,
            max_backpressure_wait: Duration::from_millis(raw.max_backpressure_wait_ms),
            silent_after_min: Duration::from_millis(raw.silent_after_min_ms),
            silent_after_max: Duration::from_millis(raw.silent_after_max_ms),
        },
    })
}

fn validate_fill(raw: &RawFill) -> Result<FillConfig, ConfigError> {
    let key = |name: &str| format!("fill.{name}");
    let weight_share = WeightShare::new(raw.weight_share).ok_or_else(|| {
        invalid(
            key("weight_share"),
            format!("{} is not above 0 and at most 1", raw.weight_share),
        )
    })?;
    REQUEST_TIMEOUT_MS.check(key("request_timeout_ms"), raw.request_timeout_ms)?;
    MAX_ATTEMPTS.check(key("max_attempts"), u64::from(raw.max_attempts))?;
    FILL_RETRY_MS.check(key("retry_initial_ms"), raw.retry_initial_ms)?;
    FILL_RETRY_MS.check(key("retry_max_ms"), raw.retry_max_ms)?;
    FILL_DEADLINE_SECS.check(key("deadline_secs"), raw.deadline_secs)?;
    DECLARED_RETRY_SECS.check(key("declared_retry_secs"), raw.declared_retry_secs)?;
    LOOKBACK_HOURS.check(key("lookback_hours"), u64::from(raw.lookback_hours))?;
    DECLARED_GIVE_UP_HOURS.check(
        key("declared_give_up_hours"),
        u64::from(raw.declared_give_up_hours),
    )?;
    MAX_CONCURRENT_ROUNDS.check(
        key("max_concurrent_rounds"),
        u64::from(raw.max_concurrent_rounds),
    )?;
    if raw.retry_max_ms < raw.retry_initial_ms {
        return Err(invalid(
            key("retry_max_ms"),
            "must not be below retry_initial_ms",
        ));
    }
    Ok(FillConfig {
        enabled: raw.enabled,
        backfill_from_hour_start: raw.backfill_from_hour_start,
        weight_share,
        request_timeout: Duration::from_millis(raw.request_timeout_ms),
        max_attempts: raw.max_attempts,
        retry_initial: Duration::from_millis(raw.retry_initial_ms),
        retry_max: Duration::from_millis(raw.retry_max_ms),
        deadline_us: i64::try_from(raw.deadline_secs).unwrap_or(i64::MAX)
            * crate::domain::MICROS_PER_SECOND,
        declared_retry: Duration::from_secs(raw.declared_retry_secs),
        lookback_hours: raw.lookback_hours,
        declared_give_up_us: i64::from(raw.declared_give_up_hours) * crate::domain::MICROS_PER_HOUR,
        max_concurrent_rounds: raw.max_concurrent_rounds as usize,
        agg_trade_evidence: raw.agg_trade_evidence,
    })
}

/// A market-dependent `[connection]` key: the market's table wins over
/// `[connection]`, which wins over the market's own default; the error
/// names the key the value came from.
fn market_value<T: Copy>(
    key: &str,
    name: &str,
    in_market: Option<T>,
    in_connection: Option<T>,
    default: T,
) -> (String, T) {
    match (in_market, in_connection) {
        (Some(value), _) => (format!("{key}.{name}"), value),
        (None, Some(value)) => (format!("connection.{name}"), value),
        (None, None) => (format!("{key}.{name}"), default),
    }
}

/// A COIN-M delivery contract (`BTCUSD_260327`): a name ending in `_`
/// and six digits (the delivery date), as opposed to `BTCUSD_PERP`.
fn is_dated_contract(symbol: &str) -> bool {
    symbol
        .rsplit_once('_')
        .is_some_and(|(_, suffix)| suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// The API key variable's name: what a shell accepts.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_market(
    key: &str,
    market: Market,
    raw: RawMarket,
    raw_connection: &RawConnection,
    connection: &ConnectionConfig,
) -> Result<MarketConfig, ConfigError> {
    let profile = MarketProfile::of(market);
    let (streams_key, streams_per_connection) = market_value(
        key,
        "streams_per_connection",
        raw.streams_per_connection,
        raw_connection.streams_per_connection,
        profile.default_streams_per_connection(),
    );
    Bounds::new(
        1,
        count(profile.max_streams_per_connection),
        "Binance's limit of streams per connection on this market (futures: the safe 200)",
    )
    .check(streams_key, count(streams_per_connection))?;
    let (control_key, max_control_per_sec) = market_value(
        key,
        "max_control_per_sec",
        raw.max_control_per_sec,
        raw_connection.max_control_per_sec,
        profile.default_control_per_sec(),
    );
    Bounds::new(
        1,
        u64::from(profile.max_control_per_sec()),
        "Binance closes a connection past 5 incoming frames a second on spot, 10 on futures, pongs included",
    )
    .check(control_key, u64::from(max_control_per_sec))?;
    let (dead_key, dead_after_ms) = market_value(
        key,
        "dead_after_ms",
        raw.dead_after_ms,
        raw_connection.dead_after_ms,
        u64::try_from(profile.default_dead_after().as_millis()).unwrap_or(u64::MAX),
    );
    DEAD_AFTER_MS.check(dead_key, dead_after_ms)?;
    if !is_env_name(&raw.api_key_env) {
        return Err(invalid(
            format!("{key}.api_key_env"),
            format!(
                "{:?} is not an environment variable name (letters, digits, _)",
                raw.api_key_env
            ),
        ));
    }
    let ws_url = raw.ws_url.unwrap_or_else(|| profile.ws_url.to_owned());
    let rest_url = raw.rest_url.unwrap_or_else(|| profile.rest_url.to_owned());
    let url_scheme_ok =
        |url: &str, schemes: &[&str]| schemes.iter().any(|scheme| url.starts_with(scheme));
    if !url_scheme_ok(&ws_url, &["ws://", "wss://"]) {
        return Err(invalid(
            format!("{key}.ws_url"),
            format!("{:?} is not a ws:// or wss:// URL", ws_url),
        ));
    }
    if !url_scheme_ok(&rest_url, &["http://", "https://"]) {
        return Err(invalid(
            format!("{key}.rest_url"),
            format!("{:?} is not an http:// or https:// URL", rest_url),
        ));
    }
    if raw.symbols.is_empty() {
        return Err(invalid(
            format!("{key}.symbols"),
            "is empty: name at least one symbol",
        ));
    }
    let mut symbols = Vec::new();
    for text in &raw.symbols {
        let symbol = Symbol::new(text)
            .map_err(|error| invalid(format!("{key}.symbols"), error.to_string()))?;
        if symbols.contains(&symbol) {
            return Err(invalid(
                format!("{key}.symbols"),
                format!("{text:?} is listed twice"),
            ));
        }
        if market == Market::CoinM && is_dated_contract(text) {
            return Err(invalid(
                format!("{key}.symbols"),
                format!(
                    "{text:?} is a dated contract: its delivery (streams silent for good) is not handled \
                     in this release (issue #15); perpetuals (`_PERP`) are"
                ),
            ));
        }
        symbols.push(symbol);
    }
    if raw.streams.is_empty() {
        return Err(invalid(
            format!("{key}.streams"),
            "is empty: name at least one stream",
        ));
    }
    let mut streams = Vec::new();
    for text in &raw.streams {
        let kind = StreamKind::from_name(text).ok_or_else(|| {
            invalid(
                format!("{key}.streams"),
                format!(
                    "{text:?} is not trade, aggTrade or kline_<interval> with a Binance interval"
                ),
            )
        })?;
        if streams.contains(&kind) {
            return Err(invalid(
                format!("{key}.streams"),
                format!("{text:?} is listed twice"),
            ));
        }
        if profile.is_futures() && kind == StreamKind::Kline(crate::domain::KlineInterval::Second1)
        {
            // Reference 4.4: futures klines are spot's intervals without 1s;
            // Binance would accept the subscription and send nothing.
            return Err(invalid(
                format!("{key}.streams"),
                format!("{text:?} does not exist on futures (no 1s klines)"),
            ));
        }
        streams.push(kind);
    }
    if streams.contains(&StreamKind::Trade) && rest_url.contains(MARKET_DATA_ONLY_REST_HOST) {
        return Err(invalid(
            format!("{key}.rest_url"),
            format!(
                "{MARKET_DATA_ONLY_REST_HOST} does not serve historicalTrades, which trade gap fill needs; \
                 use https://api.binance.com"
            ),
        ));
    }
    TIME_CHECK_INTERVAL_SECS.check(
        format!("{key}.time_check_interval_secs"),
        raw.time_check_interval_secs,
    )?;
    if !raw.allow_insecure {
        for (name, url) in [("ws_url", &ws_url), ("rest_url", &rest_url)] {
            check_encrypted_or_loopback(&format!("{key}.{name}"), url)?;
        }
    }
    let mut settings = connection.settings.clone();
    settings.max_control_per_sec = max_control_per_sec;
    settings.dead_after = Duration::from_millis(dead_after_ms);
    Ok(MarketConfig {
        market,
        ws_url: ws_url.trim_end_matches('/').to_owned(),
        rest_url: rest_url.trim_end_matches('/').to_owned(),
        symbols,
        streams,
        check_symbols: raw.check_symbols,
        time_check_interval: Duration::from_secs(raw.time_check_interval_secs),
        streams_per_connection,
        connection: settings,
        api_key: ApiKeySource {
            key: key.to_owned(),
            env: raw.api_key_env,
            file: raw.api_key_file,
        },
    })
}

/// Refuses a cleartext (`ws://`, `http://`) URL to a host other than the
/// loopback: market data read in clear over the internet can be altered on
/// the way, and the recorder would seal the forgery as fact. Tests and demos
/// run the fake exchange on 127.0.0.1, which stays allowed.
fn check_encrypted_or_loopback(key: &str, url: &str) -> Result<(), ConfigError> {
    let Some(after_scheme) = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Ok(());
    };
    let host = url_host(after_scheme);
    if is_loopback_host(host) {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "{url:?} is cleartext to {host:?}, which is not the loopback; use wss:// or \
             https://, or set allow_insecure = true in this market's table"
        ),
    ))
}

/// The host of a URL given without its scheme: what is between the
/// user-info and the port, brackets of an IPv6 literal removed.
fn url_host(after_scheme: &str) -> &str {
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(bracketed) = host_and_port.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or_default();
    }
    host_and_port
        .rsplit_once(':')
        .map_or(host_and_port, |(host, _port)| host)
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[markets.spot]
ws_url = "wss://stream.binance.com:9443"
rest_url = "https://api.binance.com"
symbols = ["BTCUSDT", "ETHUSDT"]
streams = ["trade", "aggTrade", "kline_1m", "kline_1M"]
"#;

    fn error_of(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.data_dir, PathBuf::from("data/parquet"));
        assert_eq!(
            config.fsync,
            FsyncPolicy::Interval(Duration::from_millis(50))
        );
        assert_eq!(config.markets.len(), 1);
        assert_eq!(config.markets[0].streams.len(), 4);
        assert!(config.markets[0].check_symbols);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config.toml");
        let config = Config::from_toml(text).expect("shipped config.toml is valid");
        assert_eq!(config.markets[0].market, Market::Spot);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                MINIMAL.replace("\"ETHUSDT\"", "\"ethusdt\""),
                "markets.spot.symbols",
            ),
            (
                MINIMAL.replace("\"ETHUSDT\"", "\"BTC/USDT\""),
                "markets.spot.symbols",
            ),
            (
                MINIMAL.replace("\"ETHUSDT\"", "\"BTCUSDT\""),
                "listed twice",
            ),
            (
                MINIMAL.replace("kline_1M", "kline_2m"),
                "markets.spot.streams",
            ),
            (
                MINIMAL.replace("\"kline_1m\"", "\"depth\""),
                "markets.spot.streams",
            ),
            (
                MINIMAL.replace(r#"["BTCUSDT", "ETHUSDT"]"#, "[]"),
                "markets.spot.symbols",
            ),
            (
                MINIMAL.replace(r#"["trade", "aggTrade", "kline_1m", "kline_1M"]"#, "[]"),
                "markets.spot.streams",
            ),
            (MINIMAL.replace("wss://", "https://"), "markets.spot.ws_url"),
            (
                MINIMAL.replace("https://api.binance.com", "https://data-api.binance.vision"),
                "historicalTrades",
            ),
            (
                MINIMAL.replace("[markets.spot]", "[markets.mars]"),
                "markets.mars",
            ),
            (
                format!("[wal]\nfsync = \"sometimes\"\n{MINIMAL}"),
                "wal.fsync",
            ),
            (
                format!("[wal]\nfsync_interval_ms = 0\n{MINIMAL}"),
                "wal.fsync_interval_ms",
            ),
            (
                format!("[seal]\nmax_concurrent = 0\n{MINIMAL}"),
                "seal.max_concurrent",
            ),
            (
                format!("[connection]\nstreams_per_connection = 2000\n{MINIMAL}"),
                "connection.streams_per_connection",
            ),
            (
                format!("[connection]\nmax_control_per_sec = 5\n{MINIMAL}"),
                "connection.max_control_per_sec",
            ),
            (
                format!("[connection]\nhandshake_limit = 301\n{MINIMAL}"),
                "connection.handshake_limit",
            ),
            (
                format!("[connection]\ndead_after_ms = 0\n{MINIMAL}"),
                "connection.dead_after_ms",
            ),
            (
                format!("[fill]\nweight_share = 1.5\n{MINIMAL}"),
                "fill.weight_share",
            ),
            (
                format!("[fill]\nweight_share = 0.0\n{MINIMAL}"),
                "fill.weight_share",
            ),
            (
                format!("[fill]\nmax_attempts = 0\n{MINIMAL}"),
                "fill.max_attempts",
            ),
            (
                format!("[fill]\nretry_max_ms = 10\n{MINIMAL}"),
                "fill.retry_max_ms",
            ),
            (
                format!("[storage]\ndata_dir = \"x\"\nwal_dir = \"x\"\n{MINIMAL}"),
                "storage.wal_dir",
            ),
            (String::new(), "markets"),
        ];
        for (text, expected) in cases {
            let message = error_of(&text);
            assert!(
                message.contains(expected),
                "error {message:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn every_duration_and_count_has_an_upper_bound_named_in_the_error() {
        // One value past each upper bound; u64::MAX used to overflow the
        // Instant a connection task adds rotate_after to.
        let cases = [
            ("wal", "fsync_interval_ms", "10001", "10000"),
            (
                "wal",
                "segment_max_bytes",
                "18446744073709551615",
                "1073741824",
            ),
            ("seal", "grace_ms", "3600001", "3600000"),
            ("seal", "max_concurrent", "65", "64"),
            ("connection", "subscribe_batch", "1025", "1024"),
            (
                "connection",
                "dead_after_ms",
                "18446744073709551615",
                "3600000",
            ),
            ("connection", "backoff_initial_ms", "3600001", "3600000"),
            ("connection", "backoff_max_ms", "3600001", "3600000"),
            ("connection", "healthy_after_ms", "86400001", "86400000"),
            ("connection", "connect_timeout_ms", "600001", "600000"),
            (
                "connection",
                "rotate_after_secs",
                "18446744073709551615",
                "86400",
            ),
            (
                "connection",
                "rotation_overlap_timeout_ms",
                "3600001",
                "3600000",
            ),
            ("connection", "handshake_window_secs", "86401", "86400"),
            ("connection", "max_backpressure_wait_ms", "600001", "600000"),
            ("connection", "silent_after_min_ms", "3600001", "3600000"),
            ("connection", "silent_after_max_ms", "86400001", "86400000"),
            ("fill", "request_timeout_ms", "600001", "600000"),
            ("fill", "max_attempts", "101", "100"),
            ("fill", "retry_initial_ms", "86400001", "86400000"),
            ("fill", "retry_max_ms", "86400001", "86400000"),
            ("fill", "deadline_secs", "604801", "604800"),
            ("fill", "declared_retry_secs", "604801", "604800"),
            ("fill", "lookback_hours", "2161", "2160"),
            ("shutdown", "deadline_ms", "600001", "600000"),
            ("metrics", "stale_after_secs", "604801", "604800"),
            ("metrics", "quiet_stale_after_secs", "604801", "604800"),
        ];
        for (table, name, value, bound) in cases {
            let message = error_of(&format!("[{table}]\n{name} = {value}\n{MINIMAL}"));
            let key = format!("{table}.{name}");
            assert!(message.contains(&key), "{message:?} names {key}");
            assert!(
                message.contains(bound),
                "{message:?} names the bound {bound}"
            );
        }
        let message = error_of(&format!("{MINIMAL}time_check_interval_secs = 86401\n"));
        assert!(
            message.contains("markets.spot.time_check_interval_secs") && message.contains("86400"),
            "{message}"
        );
    }

    #[test]
    fn zero_is_refused_where_it_makes_no_sense_and_kept_where_it_does() {
        for (table, name) in [
            ("connection", "healthy_after_ms"),
            ("connection", "subscribe_batch"),
            ("connection", "rotate_after_secs"),
            ("shutdown", "deadline_ms"),
        ] {
            let message = error_of(&format!("[{table}]\n{name} = 0\n{MINIMAL}"));
            assert!(message.contains(&format!("{table}.{name}")), "{message}");
        }
        let meaningful_zeros = format!(
            "[seal]\ngrace_ms = 0\n[fill]\ndeadline_secs = 0\nlookback_hours = 0\n{MINIMAL}"
        );
        assert!(Config::from_toml(&meaningful_zeros).is_ok());
        let upper_bounds = format!(
            "[connection]\nrotate_after_secs = 86400\nstreams_per_connection = 1024\n{MINIMAL}"
        );
        assert!(
            Config::from_toml(&upper_bounds).is_ok(),
            "bounds are inclusive"
        );
    }

    #[test]
    fn cleartext_urls_are_refused_unless_loopback_or_allowed() {
        let with_urls = |ws: &str, rest: &str| {
            MINIMAL
                .replace("wss://stream.binance.com:9443", ws)
                .replace("https://api.binance.com", rest)
        };
        for (ws, rest, key) in [
            (
                "ws://stream.binance.com:9443",
                "https://api.binance.com",
                "markets.spot.ws_url",
            ),
            (
                "wss://stream.binance.com:9443",
                "http://api.binance.com",
                "markets.spot.rest_url",
            ),
            (
                "ws://10.0.0.1:9443",
                "https://api.binance.com",
                "markets.spot.ws_url",
            ),
            (
                "ws://[2001:db8::1]:80",
                "https://api.binance.com",
                "markets.spot.ws_url",
            ),
            // A loopback name in the user-info does not make the host loopback.
            (
                "ws://127.0.0.1@evil.example:80",
                "https://api.binance.com",
                "markets.spot.ws_url",
            ),
            (
                "ws://localhost.evil.example",
                "https://api.binance.com",
                "markets.spot.ws_url",
            ),
        ] {
            let message = error_of(&with_urls(ws, rest));
            assert!(message.contains(key), "{message:?} names {key}");
            assert!(
                message.contains("allow_insecure"),
                "{message:?} says how to allow it"
            );
        }
        for (ws, rest) in [
            ("ws://127.0.0.1:9443", "http://127.0.0.1:8080"),
            ("ws://127.8.9.10", "http://localhost:8080/"),
            ("ws://LOCALHOST:1", "http://[::1]:8080"),
        ] {
            let text = with_urls(ws, rest);
            assert!(Config::from_toml(&text).is_ok(), "loopback {ws} {rest}");
        }
        let allowed = format!(
            "{}allow_insecure = true\n",
            with_urls("ws://stream.example:80", "http://api.example")
        );
        assert!(
            Config::from_toml(&allowed).is_ok(),
            "allow_insecure lets it through"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let message = error_of(&format!("[seal]\ngrace_seconds = 5\n{MINIMAL}"));
        assert!(message.contains("grace_seconds"), "{message}");
        let message = error_of(&MINIMAL.replace("symbols =", "symbol_list = [\"X\"]\nsymbols ="));
        assert!(message.contains("symbol_list"), "{message}");
    }

    #[test]
    fn market_data_only_host_is_fine_without_trades() {
        let text = MINIMAL
            .replace("https://api.binance.com", "https://data-api.binance.vision")
            .replace(r#""trade", "#, "");
        assert!(Config::from_toml(&text).is_ok());
    }

    #[test]
    fn unwritable_directory_is_reported_with_its_key() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let blocker = scratch.path().join("a-file");
        fs::write(&blocker, b"x").expect("write");
        let mut config = Config::from_toml(MINIMAL).expect("valid");
        config.data_dir = scratch.path().join("data");
        config.wal_dir = scratch.path().join("wal");
        config.quarantine_dir = blocker.join("quarantine");
        let message = config
            .check_directories()
            .expect_err("not a directory")
            .to_string();
        assert!(message.contains("storage.quarantine_dir"), "{message}");
    }
}

#[cfg(test)]
#[path = "config/markets_tests.rs"]
mod markets_tests;
