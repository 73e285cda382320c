//! Shared helpers: a fake exchange and a recorder config pointing at it,
//! the recorder run in-process, waiting on conditions with deadlines, and
//! comparing sealed files with the fake's ground truth.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use binance_recorder::config::Config;
use binance_recorder::domain::{
    Hour, KlineInterval, Market, Row, Source, StreamKey, StreamKind, Symbol,
};
use binance_recorder::metrics::{Counters, CountersSnapshot};
use binance_recorder::parquet_out;
use binance_recorder::recorder;
use binance_recorder::wal::{RealFs, WalFile, WalFs};
use fake_binance::{FakeConfig, FakeExchange, GroundTruth, Limits};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "BNBUSDT"];

/// The hour every file of the committed 0.1.0 fixture
/// (`tests/fixtures/dataset-v1`) holds: 2024-08-09 00:00 UTC. Its ETHUSDT
/// trade file declares the first ten minutes as a hole.
pub const FIXTURE_HOUR_START: i64 = 1_723_161_600_000_000;

/// Copies the fixture's `*.parquet` files into `data`.
pub fn copy_fixture(data: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dataset-v1");
    for path in parquet_files(&fixture) {
        let target = data.join(path.strip_prefix(&fixture).expect("inside the fixture"));
        std::fs::create_dir_all(target.parent().expect("folder")).expect("folder");
        std::fs::copy(&path, &target).expect("copied");
    }
}

/// The fake at 240x for BTCUSDT and ETHUSDT, starting half an hour into the
/// fixture's hour with an hour of history, so REST covers the whole hour.
pub fn fixture_hour_fake_config() -> FakeConfig {
    FakeConfig {
        sim_start_us: Hour::containing(FIXTURE_HOUR_START).start()
            + 30 * binance_recorder::domain::MICROS_PER_MINUTE,
        history: Duration::from_secs(3600),
        symbols: vec!["BTCUSDT".to_owned(), "ETHUSDT".to_owned()],
        ..fake_config(240.0)
    }
}

/// A fault injected into the WAL's segment files, for [`FaultyFs`].
pub trait FileFault: std::fmt::Debug + Send + Sync {
    /// Runs before a segment file is created; an error fails the creation
    /// before the file exists.
    fn before_create(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Wraps a segment file just created on the real filesystem.
    fn wrap(&self, file: Box<dyn WalFile>) -> Box<dyn WalFile>;
}

/// The real filesystem as the WAL's seam, with the fault `F` in the
/// segment files it creates; every other operation passes straight through.
#[derive(Debug, Clone)]
pub struct FaultyFs<F>(pub F);

impl<F: FileFault> WalFs for FaultyFs<F> {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn WalFile>> {
        self.0.before_create()?;
        Ok(self.0.wrap(RealFs.create_new(path)?))
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        RealFs.open_read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        RealFs.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// 2026-01-01 00:59:00 UTC: one simulated minute before the first hour
/// ends, the latest the fake's clock starts ([`sim_start_us`]).
pub const SIM_START_US: i64 = 1_767_229_140_000_000;

/// Real time the fake's first hour lasts at least: a recorder started on a
/// loaded 2-core machine has taken close to a second to link, and an hour it
/// never watched is not owed, so a test expecting its file would wait in vain.
const FIRST_HOUR_REAL_SECS: f64 = 3.0;

/// Where the fake's clock starts at `speed`: [`SIM_START_US`], or earlier in
/// the same hour (whole minutes) so the first hour lasts
/// [`FIRST_HOUR_REAL_SECS`] of real time.
pub fn sim_start_us(speed: f64) -> i64 {
    let minute_secs = 60.0;
    let lead_minutes = (FIRST_HOUR_REAL_SECS * speed / minute_secs)
        .ceil()
        .clamp(1.0, 59.0) as i64;
    SIM_START_US - (lead_minutes - 1) * binance_recorder::domain::MICROS_PER_MINUTE
}

pub fn fake_config(speed: f64) -> FakeConfig {
    FakeConfig {
        seed: 42,
        speed,
        sim_start_us: sim_start_us(speed),
        history: Duration::from_secs(3600),
        symbols: SYMBOLS.iter().map(|symbol| symbol.to_string()).collect(),
        mean_orders_per_sec: 0.5,
        limits: Limits {
            ping_interval: Duration::from_secs(2),
            ..Limits::default()
        },
        ..FakeConfig::default()
    }
}

/// A recorder config for `fake`, with every directory under `root`.
pub fn recorder_toml(
    fake: &FakeExchange,
    root: &Path,
    symbols: &[&str],
    streams: &[&str],
) -> String {
    market_recorder_toml(fake, root, "spot", symbols, streams, "", "")
}

/// A recorder config for `fake` as the one market table
/// `[markets.{market}]`, last, with `symbols`, `streams` and the
/// `market_keys` lines in it; `tables` go before it. Every directory is
/// under `root`.
pub fn market_recorder_toml(
    fake: &FakeExchange,
    root: &Path,
    market: &str,
    symbols: &[&str],
    streams: &[&str],
    tables: &str,
    market_keys: &str,
) -> String {
    let quoted = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("\"{item}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[storage]
data_dir = "{root}/data"
wal_dir = "{root}/wal"
quarantine_dir = "{root}/quarantine"

[wal]
fsync = "interval"
fsync_interval_ms = 20
segment_max_bytes = 1048576

[seal]
grace_ms = 5000
max_concurrent = 2

[shutdown]
deadline_ms = 20000

[metrics]
listen = ""
{tables}
[markets.{market}]
ws_url = "{ws}"
rest_url = "{rest}"
symbols = [{symbols}]
streams = [{streams}]
time_check_interval_secs = 1
{market_keys}"#,
        root = root.display(),
        ws = fake.ws_base_url(),
        rest = fake.rest_base_url(),
        symbols = quoted(symbols),
        streams = quoted(streams),
    )
}

/// `fill.deadline_secs` for tests that expect every hole filled: the
/// deadline binds running fill rounds, and the default 300 s of exchange
/// time is only 1.25 s of real time at 240x. Four simulated hours are a
/// real minute at 240x: backfilling an hour of trades fits even on a
/// loaded 2-core machine (an hour, 15 s real, did not always).
pub const PATIENT_DEADLINE_SECS: u64 = 14_400;

/// [`recorder_toml`] with `fill.deadline_secs` of [`PATIENT_DEADLINE_SECS`],
/// for tests that expect every hole filled. Tests of the deadline set their
/// own `[fill]` table instead.
pub fn recorder_toml_patient(
    fake: &FakeExchange,
    root: &Path,
    symbols: &[&str],
    streams: &[&str],
) -> String {
    format!(
        "{}
[fill]
deadline_secs = {PATIENT_DEADLINE_SECS}
",
        recorder_toml(fake, root, symbols, streams)
    )
}

/// A recorder running in this process.
pub struct RunningRecorder {
    pub counters: Arc<Counters>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningRecorder {
    pub fn start(config_text: &str) -> RunningRecorder {
        Self::start_with_seams(config_text, recorder::Seams::default())
    }

    /// [`RunningRecorder::start`] with test seams (faults injected into
    /// seals, connection task panics, the WAL filesystem).
    pub fn start_with_seams(config_text: &str, seams: recorder::Seams) -> RunningRecorder {
        // Warnings and errors show in a failing test's output (RUST_LOG for more).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let config = Config::from_toml(config_text).expect("test config is valid");
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(recorder::run_with_seams(
            config,
            seams,
            counters.clone(),
            shutdown.clone(),
        ));
        RunningRecorder {
            counters,
            shutdown,
            task,
        }
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// The same path as SIGTERM, which must end cleanly within `within`;
    /// returns how long the stop took and the final counters.
    pub async fn stop_within(self, within: Duration) -> (Duration, CountersSnapshot) {
        let stopping = std::time::Instant::now();
        self.shutdown.cancel();
        let result = tokio::time::timeout(within, self.task)
            .await
            .expect("stopped within the deadline")
            .expect("recorder task did not panic");
        assert!(result.is_ok(), "clean stop: {result:?}");
        (stopping.elapsed(), self.counters.snapshot())
    }

    /// What the recorder ended with when it stops by itself within
    /// `within` (a refused start), without being told to.
    pub async fn ended_by_itself(self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, self.task)
            .await
            .expect("the recorder ended by itself within the deadline")
            .expect("recorder task did not panic")
    }

    /// The same path as SIGTERM: cancel, then wait for the orderly stop.
    pub async fn stop(self) -> CountersSnapshot {
        self.shutdown.cancel();
        self.task
            .await
            .expect("recorder task did not panic")
            .expect("recorder stopped cleanly");
        self.counters.snapshot()
    }
}

/// The in-process recorder's log lines at `info`, kept for a test to
/// read. Installed before [`RunningRecorder::start`], whose own subscriber
/// then stays out. nextest runs each test in its own process, so this is
/// the process's first subscriber; where it is not (tests sharing a
/// process), it panics rather than let the test check nothing.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn install() -> LogCapture {
        let capture = LogCapture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,binance_recorder=info",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the first subscriber of this process (run the test under nextest)");
        capture
    }

    /// Every line logged so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`wait_until`] for a condition that must await (an HTTP request).
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        ticker.tick().await;
    }
}

/// Waits until `condition` holds, polling every 10 ms, failing after `within`.
pub async fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        ticker.tick().await;
    }
}

pub fn key(symbol: &str, kind: StreamKind) -> StreamKey {
    StreamKey {
        market: Market::Spot,
        symbol: Symbol::new(symbol).expect("valid symbol"),
        kind,
    }
}

pub fn minute_klines() -> StreamKind {
    StreamKind::Kline(KlineInterval::Minute1)
}

pub fn file_path(root: &Path, key: &StreamKey, hour: Hour) -> PathBuf {
    parquet_out::hour_file_path(&root.join("data"), key, hour)
}

/// Whether `path` holds a finished hour's file: there, and not one written
/// at an orderly stop before its hour was finished (`stopped_at`), which
/// the next run seals again. What a test waiting for "the hour sealed"
/// after a restart waits for.
pub fn is_sealed(path: &Path) -> bool {
    parquet_out::read_summary(path).is_ok_and(|summary| summary.stopped_at.is_none())
}

pub fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    parquet_out::read_metadata(path)
        .expect("metadata readable")
        .into_iter()
        .collect()
}

/// Every `*.parquet` under `directory`.
pub fn parquet_files(directory: &Path) -> Vec<PathBuf> {
    walk_files(directory)
        .into_iter()
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "parquet")
        })
        .collect()
}

/// Every file under `directory`, sorted.
pub fn walk_files(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![directory.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Asserts that the file's rows are exactly the ground truth of its hour,
/// every one from the stream.
pub fn assert_file_matches_truth(path: &Path, kind: StreamKind, truth: &GroundTruth, hour: Hour) {
    let rest_keys = assert_file_matches_truth_with_rest(path, kind, truth, hour);
    assert!(
        rest_keys.is_empty(),
        "{}: rows from REST where none were expected: {rest_keys:?}",
        path.display()
    );
}

/// Asserts that the file's rows are exactly the ground truth of its hour
/// (0 missing, 0 extra, 0 duplicate), stream rows with their stream times
/// and REST rows with none, and returns the keys of the REST rows.
pub fn assert_file_matches_truth_with_rest(
    path: &Path,
    kind: StreamKind,
    truth: &GroundTruth,
    hour: Hour,
) -> Vec<i64> {
    let rows = parquet_out::read_hour_file(path, kind).expect("sealed file readable");
    let rest_keys: Vec<i64> = rows
        .iter()
        .filter(|row| row.source() == Source::Rest)
        .map(Row::key)
        .collect();
    let in_hour = |time: i64| Hour::containing(time) == hour;
    let label = path.display();
    match kind {
        StreamKind::Trade => {
            let expected: Vec<_> = truth
                .trades
                .iter()
                .filter(|trade| in_hour(trade.time_us))
                .collect();
            assert_eq!(rows.len(), expected.len(), "{label}: row count");
            for (row, want) in rows.iter().zip(expected) {
                let Row::Trade(trade) = row else {
                    panic!("{label}: not a trade row")
                };
                assert_eq!(trade.trade_id, want.id, "{label}");
                assert_eq!(
                    trade.price.to_string(),
                    want.price,
                    "{label}: price of {}",
                    want.id
                );
                assert_eq!(
                    trade.quantity.to_string(),
                    want.quantity,
                    "{label}: quantity of {}",
                    want.id
                );
                assert_eq!(
                    trade.trade_time, want.time_us,
                    "{label}: time of {}",
                    want.id
                );
                assert_eq!(trade.is_buyer_maker, want.is_buyer_maker, "{label}");
                assert_eq!(trade.is_best_match, want.is_best_match, "{label}");
                if trade.source == Source::Ws {
                    assert_eq!(
                        trade.trade_type, want.trade_type,
                        "{label}: type of {}",
                        want.id
                    );
                    assert_eq!(
                        trade.event_time,
                        Some(want.event_time_us),
                        "{label}: event time of {}",
                        want.id
                    );
                    assert!(trade.recv_time.is_some(), "{label}");
                } else {
                    assert_eq!(
                        (trade.event_time, trade.recv_time),
                        (None, None),
                        "{label}: REST row {}",
                        want.id
                    );
                }
            }
        }
        StreamKind::AggTrade => {
            let expected: Vec<_> = truth
                .agg_trades
                .iter()
                .filter(|agg| in_hour(agg.time_us))
                .collect();
            assert_eq!(rows.len(), expected.len(), "{label}: row count");
            for (row, want) in rows.iter().zip(expected) {
                let Row::AggTrade(agg) = row else {
                    panic!("{label}: not an aggTrade row")
                };
                assert_eq!(agg.agg_trade_id, want.id, "{label}");
                assert_eq!(agg.price.to_string(), want.price, "{label}");
                assert_eq!(agg.quantity.to_string(), want.quantity, "{label}");
                assert_eq!(
                    (agg.first_trade_id, agg.last_trade_id),
                    (want.first_trade_id, want.last_trade_id),
                    "{label}"
                );
                assert_eq!(agg.trade_time, want.time_us, "{label}");
                assert_eq!(agg.is_buyer_maker, want.is_buyer_maker, "{label}");
                assert_eq!(agg.is_best_match, want.is_best_match, "{label}");
                if agg.source == Source::Ws {
                    assert_eq!(agg.event_time, Some(want.event_time_us), "{label}");
                    assert!(agg.recv_time.is_some(), "{label}");
                } else {
                    assert_eq!(
                        (agg.event_time, agg.recv_time),
                        (None, None),
                        "{label}: REST row {}",
                        want.id
                    );
                }
            }
        }
        StreamKind::Kline(interval) => {
            let klines = truth
                .klines
                .get(interval.binance_name())
                .cloned()
                .unwrap_or_default();
            let expected: Vec<_> = klines
                .iter()
                .filter(|kline| in_hour(kline.open_time_us))
                .collect();
            assert_eq!(rows.len(), expected.len(), "{label}: row count");
            for (row, want) in rows.iter().zip(expected) {
                let Row::Kline(kline) = row else {
                    panic!("{label}: not a kline row")
                };
                assert_eq!(kline.open_time, want.open_time_us, "{label}");
                assert_eq!(kline.close_time, want.close_time_us, "{label}");
                let values = [
                    kline.open,
                    kline.high,
                    kline.low,
                    kline.close,
                    kline.volume,
                    kline.quote_volume,
                ];
                let wanted = [
                    &want.open,
                    &want.high,
                    &want.low,
                    &want.close,
                    &want.volume,
                    &want.quote_volume,
                ];
                for (value, wanted) in values.iter().zip(wanted) {
                    assert_eq!(
                        &value.to_string(),
                        wanted,
                        "{label}: kline {}",
                        want.open_time_us
                    );
                }
                assert_eq!(kline.trade_count, want.trade_count, "{label}");
                assert_eq!(
                    kline.taker_buy_base_volume.to_string(),
                    want.taker_buy_base_volume,
                    "{label}"
                );
                assert_eq!(
                    kline.taker_buy_quote_volume.to_string(),
                    want.taker_buy_quote_volume,
                    "{label}"
                );
                if kline.source == Source::Ws {
                    assert_eq!(kline.first_trade_id, Some(want.first_trade_id), "{label}");
                    assert_eq!(kline.last_trade_id, Some(want.last_trade_id), "{label}");
                    assert_eq!(kline.event_time, Some(want.close_event_time_us), "{label}");
                } else {
                    // REST klines carry no trade ids (DATASET.md).
                    let nulls = (
                        kline.first_trade_id,
                        kline.last_trade_id,
                        kline.event_time,
                        kline.recv_time,
                    );
                    assert_eq!(
                        nulls,
                        (None, None, None, None),
                        "{label}: REST kline {}",
                        want.open_time_us
                    );
                }
            }
        }
    }
    let metadata = metadata(path);
    assert_eq!(metadata["row_count"], rows.len().to_string(), "{label}");
    let n_rest = rest_keys.len();
    assert_eq!(
        metadata["rows_by_source"],
        format!("{{\"ws\":{},\"rest\":{n_rest}}}", rows.len() - n_rest),
        "{label}"
    );
    let first = rows
        .first()
        .map_or("null".to_owned(), |row| row.key().to_string());
    let last = rows
        .last()
        .map_or("null".to_owned(), |row| row.key().to_string());
    assert_eq!(
        (
            metadata["first_key"].as_str(),
            metadata["last_key"].as_str()
        ),
        (first.as_str(), last.as_str()),
        "{label}"
    );
    let keys: BTreeSet<i64> = rows.iter().map(Row::key).collect();
    assert_eq!(keys.len(), rows.len(), "{label}: keys unique");
    rest_keys
}

/// `../shared/data/real` beside the repository (as in CI). Its absence is a
/// failure, not a skip: the real-data tests are part of the suite.
pub fn real_data(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/real")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: the shared data must sit beside the repository",
        path.display()
    );
    path
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The recorder binary as a child process, killed if the test fails.
pub struct RecorderProcess {
    child: Option<Child>,
}

impl RecorderProcess {
    pub fn start(config: &Path, directory: &Path) -> RecorderProcess {
        Self::start_with_log(config, directory, "warn", Stdio::inherit())
    }

    /// Starts the binary with the log filter `log` and its log to `stderr`.
    pub fn start_with_log(
        config: &Path,
        directory: &Path,
        log: &str,
        stderr: impl Into<Stdio>,
    ) -> RecorderProcess {
        Self::start_with_env(config, directory, log, stderr, &[])
    }

    /// [`Self::start_with_log`] with more environment (e.g. systemd's
    /// `NOTIFY_SOCKET`).
    pub fn start_with_env(
        config: &Path,
        directory: &Path,
        log: &str,
        stderr: impl Into<Stdio>,
        env: &[(&str, &str)],
    ) -> RecorderProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
            .args(["run", "--config"])
            .arg(config)
            .current_dir(directory)
            .env("RUST_LOG", log)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("recorder binary starts");
        RecorderProcess { child: Some(child) }
    }

    /// Waits for the process to exit by itself, within `within`.
    pub async fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let mut exit = None;
        wait_until(within, "recorder exits by itself", || {
            exit = child.try_wait().expect("wait on child");
            exit.is_some()
        })
        .await;
        exit.expect("exited")
    }

    /// The process id, for reading `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as the OOM killer or a power cut would end it: no stop of any kind.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL sent");
        child.wait().expect("killed child reaped");
    }

    /// Sends SIGTERM and waits for the exit, which must be clean and quick.
    pub async fn terminate(self) {
        self.stop_with_signal("TERM").await;
    }

    /// Sends `signal` (a `kill` name: TERM, HUP, INT) and waits for the
    /// exit, which must be clean (status 0) and quick.
    pub async fn stop_with_signal(mut self, signal: &str) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut exit = None;
        wait_until(
            Duration::from_secs(25),
            &format!("recorder exits after SIG{signal}"),
            || {
                exit = child.try_wait().expect("wait on child");
                exit.is_some()
            },
        )
        .await;
        assert_eq!(
            exit.and_then(|status| status.code()),
            Some(0),
            "clean exit after SIG{signal}"
        );
    }
}

impl Drop for RecorderProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the recorder binary with `arguments` to completion.
pub async fn run_binary(arguments: Vec<String>) -> std::process::Output {
    run_binary_logging(arguments, "warn").await
}

/// [`run_binary`] with `RUST_LOG` at `level`.
pub async fn run_binary_logging(arguments: Vec<String>, level: &str) -> std::process::Output {
    let level = level.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
            .args(&arguments)
            .env("RUST_LOG", level)
            .output()
            .expect("recorder binary runs")
    })
    .await
    .expect("binary task")
}

/// Runs `binance-recorder verify` on the dataset of `config_path` and
/// asserts it finds the dataset complete: no declared hole, nothing
/// undeclared, exit 0 (read from its `--json` report, so the table's
/// wording is free to change).
pub async fn assert_verify_clean(config_path: &Path) {
    let (success, stdout, report) = verify_json(config_path).await;
    assert!(
        success && report["undeclared_problems"] == 0 && report["declared_holes"] == 0,
        "verify: {stdout}"
    );
}

/// Runs `verify --json` over `config_path`'s dataset: whether it exited 0,
/// its table, and its JSON report.
pub async fn verify_json(config_path: &Path) -> (bool, String, serde_json::Value) {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let json_path = scratch.path().join("verify.json");
    let output = run_binary(vec![
        "verify".into(),
        "--config".into(),
        config_path.display().to_string(),
        "--json".into(),
        json_path.display().to_string(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report: serde_json::Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("verify wrote no JSON report: {stdout}"));
    (output.status.success(), stdout, report)
}

/// Asserts the file declares no hole and vouches for its whole hour.
pub fn assert_complete_hour(path: &Path, hour: Hour) {
    let metadata = metadata(path);
    assert_eq!(metadata["unfilled"], "[]", "{}", path.display());
    assert_eq!(
        metadata["coverage_from"],
        hour.start().to_string(),
        "{}",
        path.display()
    );
    assert_eq!(
        metadata["coverage_to"],
        hour.end().to_string(),
        "{}",
        path.display()
    );
}
