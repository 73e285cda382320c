//! From the file as written to the types the recorder runs with: the
//! bounds of every numeric key with the reason for them ([`Bounds`]), and
//! one `validate_*` per table, each error naming the key and the reason.
//! Defaults that differ per market come from its `MarketProfile` here.

use super::*;

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
const FSYNC_BATCH_BYTES: Bounds = Bounds::new(
    4096,
    64 * 1024 * 1024,
    "an fsync writes whole pages, so a smaller batch costs as much as a page, and a bigger one waits for the interval anyway",
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
const MAX_HELD_MB: Bounds = Bounds::new(
    1,
    1024 * 1024,
    "held rows past the budget are spilled beside the WAL; the budget is what the unit's MemoryHigh is set from",
);
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
const EXCHANGE_INFO_INTERVAL_SECS: Bounds = Bounds::new(
    1,
    SECONDS_PER_DAY,
    "the weight limit and contract statuses are read at least daily",
);

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

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let fsync = match self.wal.fsync.as_str() {
            "immediate" => FsyncPolicy::EveryRecord,
            "interval" => {
                FSYNC_INTERVAL_MS.check("wal.fsync_interval_ms", self.wal.fsync_interval_ms)?;
                FSYNC_BATCH_BYTES.check("wal.fsync_batch_bytes", self.wal.fsync_batch_bytes)?;
                FsyncPolicy::Interval {
                    max_wait: Duration::from_millis(self.wal.fsync_interval_ms),
                    enough_bytes: self.wal.fsync_batch_bytes,
                }
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
        MAX_HELD_MB.check("memory.max_held_mb", self.memory.max_held_mb)?;
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
            max_held_bytes: self.memory.max_held_mb.saturating_mul(1024 * 1024),
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

pub(super) fn validate_clock(raw: &RawClock) -> Result<ClockBounds, ConfigError> {
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

pub(super) fn validate_fill(raw: &RawFill) -> Result<FillConfig, ConfigError> {
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
pub(crate) fn is_dated_contract(symbol: &str) -> bool {
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
    EXCHANGE_INFO_INTERVAL_SECS.check(
        format!("{key}.exchange_info_interval_secs"),
        raw.exchange_info_interval_secs,
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
        exchange_info_interval: Duration::from_secs(raw.exchange_info_interval_secs),
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
