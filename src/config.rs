//! Configuration: serde structs in ([`RawConfig`], every field documented,
//! defaults defined once, unknown keys refused), validated types out
//! ([`Config`]). A bad value is a [`ConfigError`] naming the key and the reason.
//!
//! The shipped `config.toml` is this module's twin: every key present,
//! commented, with its default.
//!
//! This file holds the validated types, reading the file and probing the
//! directories; `config/raw.rs` the serde structs (the file as written),
//! `config/validate.rs` the bounds of every key and the `validate_*`
//! functions from one to the other.

mod raw;
mod validate;
pub(crate) use validate::is_dated_contract;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binance::limiter::WeightShare;
use crate::binance::markets::MarketProfile;
use crate::binance::rest::ApiKey;
use crate::binance::ws::ConnectionSettings;
use crate::domain::{Market, StreamKey, StreamKind, Symbol};
use crate::wal::FsyncPolicy;
pub use raw::{
    RawClock, RawConfig, RawConnection, RawFill, RawLog, RawMarket, RawMetrics, RawSeal,
    RawShutdown, RawStorage, RawWal,
};
use validate::validate_clock;

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

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
    pub health: crate::metrics::health::HealthBounds,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// `memory.max_held_mb` in bytes: rows held past it are spilled.
    pub max_held_bytes: u64,
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
    /// How often `exchangeInfo` is read again (weight limit, contracts).
    pub exchange_info_interval: Duration,
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

    /// Every configured stream: each market's symbols times its stream
    /// kinds, in the order the config lists them. The one place the
    /// recorder's streams are made from the config.
    pub fn stream_keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        self.markets.iter().flat_map(|market_config| {
            market_config.symbols.iter().flat_map(move |symbol| {
                market_config.streams.iter().map(move |kind| StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                })
            })
        })
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

/// A config for unit tests: `sections` (TOML tables), then one spot
/// market on unreachable local ports recording BTCUSDT's `streams`.
#[cfg(test)]
pub(crate) fn test_config(sections: &str, streams: &[&str]) -> Config {
    Config::from_toml(&format!(
        r#"{sections}
[markets.spot]
ws_url = "ws://127.0.0.1:1"
rest_url = "http://127.0.0.1:1"
symbols = ["BTCUSDT"]
streams = {streams:?}
"#
    ))
    .expect("valid test config")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each market's symbols times its kinds, markets in the config's order.
    #[test]
    fn stream_keys_are_every_market_symbol_and_kind() {
        let config = Config::from_toml(
            r#"
[markets.spot]
ws_url = "ws://127.0.0.1:1"
rest_url = "http://127.0.0.1:1"
symbols = ["BTCUSDT", "ETHUSDT"]
streams = ["trade", "aggTrade"]
[markets.usdm]
ws_url = "ws://127.0.0.1:1"
rest_url = "http://127.0.0.1:1"
symbols = ["BTCUSDT"]
streams = ["kline_1m"]
"#,
        )
        .expect("valid");
        let keys: Vec<String> = config.stream_keys().map(|key| key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "spot/trade/BTCUSDT",
                "spot/aggTrade/BTCUSDT",
                "spot/trade/ETHUSDT",
                "spot/aggTrade/ETHUSDT",
                "usdm/kline_1m/BTCUSDT",
            ]
        );
    }

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
            FsyncPolicy::Interval {
                max_wait: Duration::from_millis(50),
                enough_bytes: 64 * 1024,
            }
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
            ("wal", "fsync_batch_bytes", "67108865", "67108864"),
            (
                "wal",
                "segment_max_bytes",
                "18446744073709551615",
                "1073741824",
            ),
            ("seal", "grace_ms", "3600001", "3600000"),
            ("seal", "max_concurrent", "65", "64"),
            ("memory", "max_held_mb", "1048577", "1048576"),
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
        for name in ["time_check_interval_secs", "exchange_info_interval_secs"] {
            for value in [0, 86401] {
                let message = error_of(&format!("{MINIMAL}{name} = {value}\n"));
                assert!(
                    message.contains(&format!("markets.spot.{name}")) && message.contains("86400"),
                    "{message}"
                );
            }
        }
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
