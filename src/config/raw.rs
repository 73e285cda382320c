//! The config file as written: one serde struct per table, every key
//! documented, its default defined once (in the `Default` impls and the
//! `default_*` functions), unknown keys refused. `validate.rs` turns these
//! into the types of `config.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
    #[serde(default)]
    pub memory: RawMemory,
    /// One table per market: `[markets.spot]`, `[markets.usdm]`,
    /// `[markets.coinm]` (perpetuals and dated contracts), `[markets.us]`.
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
    /// Where sealed files are uploaded (`s3://bucket/prefix`,
    /// `az://container/prefix`); unset keeps
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
    /// `[storage.azure]`: the Azure Blob client's options (never credentials).
    pub azure: crate::upload::RawAzure,
}

impl RawStorage {
    /// The upload's keys, for `crate::upload::config::validate`.
    pub(super) fn upload_keys(&self) -> crate::upload::RawUpload {
        crate::upload::RawUpload {
            destination: self.destination.clone(),
            keep_local_hours: self.keep_local_hours,
            backlog_warn_files: self.backlog_warn_files,
            multipart_threshold_bytes: self.multipart_threshold_bytes,
            upload_retry_initial_ms: self.upload_retry_initial_ms,
            upload_retry_max_ms: self.upload_retry_max_ms,
            s3: self.s3.clone(),
            azure: self.azure.clone(),
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
            azure: crate::upload::RawAzure::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWal {
    /// `"interval"`: group commit, a batch fsynced once `fsync_batch_bytes`
    /// wait or its oldest frame has waited `fsync_interval_ms`;
    /// `"immediate"`: fsync as soon as anything is pending.
    pub fsync: String,
    /// Longest time a received frame waits for its fsync, in milliseconds.
    pub fsync_interval_ms: u64,
    /// Bytes of frames that make a group commit due at once, without
    /// waiting for `fsync_interval_ms` (`"interval"` only).
    pub fsync_batch_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_max_bytes: u64,
}

impl Default for RawWal {
    fn default() -> Self {
        RawWal {
            fsync: "interval".to_owned(),
            fsync_interval_ms: 50,
            fsync_batch_bytes: 64 * 1024,
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
    /// between data frames, 3 x a kline stream's interval, at whose end its
    /// closing update comes) is replaced make-before-break. The bound is never below
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
pub struct RawMemory {
    /// Rows of unsealed hours held in memory at most, in MiB; past it the
    /// biggest hours' rows are spilled to sorted runs beside the WAL and
    /// merged back when their hour seals.
    pub max_held_mb: u64,
}

impl Default for RawMemory {
    fn default() -> Self {
        RawMemory { max_held_mb: 256 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address of the `/metrics` and `/health` listener; `""` turns it off.
    pub listen: String,
    /// `/health` fails when a kline stream is silent this long past its
    /// interval (whose close it sends whatever the market does), in seconds.
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
    /// Most a trade or aggTrade id may jump past the newest id of its
    /// stream, per day between the two (at least one: the newest held id
    /// is recent; the last sealed one may be months old after a stop). A
    /// billion a day is about 200 times the busiest symbol's trades (spot
    /// BTCUSDT: about 4 million a day in 2024-2026); a bogus jump would
    /// otherwise start REST paging over ids that never were.
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
    /// How often `exchangeInfo` is read again, in seconds: the REST weight
    /// limit, every configured symbol's status (a change is logged) and, on
    /// futures, its delivery date (a delisted perpetual gets one).
    #[serde(default = "default_exchange_info_interval_secs")]
    pub exchange_info_interval_secs: u64,
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

fn default_exchange_info_interval_secs() -> u64 {
    3600
}
