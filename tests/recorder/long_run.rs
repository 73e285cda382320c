//! A day in two minutes: the real binary against the fake at 720x for more
//! than 24 simulated hours, with small WAL segments, link drops and one
//! restart. What a daemon that runs for months must show in a day: the WAL
//! holds only what unsealed hours need (sampled throughout), a restart
//! replays only that, memory does not creep, and every hour is the truth.

use std::path::Path;
use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind, MICROS_PER_HOUR};
use fake_binance::{FakeExchange, Fault};

use crate::support::*;

const STREAMS: [&str; 3] = ["trade", "aggTrade", "kline_1m"];
const SEGMENT_MAX_BYTES: u64 = 256 * 1024;

/// Bytes of the WAL directory's segment files (the lock file left out).
fn wal_bytes(wal: &Path) -> u64 {
    walk_files(wal)
        .iter()
        .filter(|path| !path.to_string_lossy().ends_with(".lock"))
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// The `n_records` of the "WAL replayed" log line.
fn replayed_records(log: &str) -> Option<u64> {
    let line = log.lines().find(|line| line.contains("WAL replayed"))?;
    let start = line.find("n_records=")? + "n_records=".len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What the sampler saw of one recorder process.
#[derive(Default)]
struct Samples {
    max_wal_bytes: u64,
    /// Each segment file's largest size seen: their sum is what was written.
    segment_sizes: std::collections::BTreeMap<String, u64>,
    rss_kib: Vec<(i64, u64)>,
}

impl Samples {
    fn take(&mut self, wal: &Path, pid: u32, sim_now: i64) {
        self.max_wal_bytes = self.max_wal_bytes.max(wal_bytes(wal));
        for path in walk_files(wal) {
            let name = path.to_string_lossy().into_owned();
            if let Ok(metadata) = std::fs::metadata(&path) {
                let size = self.segment_sizes.entry(name).or_default();
                *size = (*size).max(metadata.len());
            }
        }
        if let Some(rss) = rss_kib(pid) {
            self.rss_kib.push((sim_now, rss));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_with_drops_and_a_restart_keeps_the_wal_and_memory_bounded() {
    let speed = 720.0;
    let mut fake_settings = fake_config(speed);
    fake_settings.symbols = vec!["BTCUSDT".to_owned()];
    fake_settings.mean_orders_per_sec = 0.05;
    // Drops at 720x leave minutes of simulated time to fill each time; the
    // pacing against a small limit is tested elsewhere.
    fake_settings.limits.weight_limit_per_minute = 60_000;
    let fake = FakeExchange::start(fake_settings)
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let wal = root.join("wal");
    let config_path = root.join("config.toml");
    let config = format!(
        "[connection]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n[fill]\nretry_initial_ms = 100\nretry_max_ms = 1000\n# The deadline binds running rounds; 300 s is 1.25 s real at 240x.\ndeadline_secs = 3600\n{}",
        recorder_toml(&fake, root, &["BTCUSDT"], &STREAMS)
    )
    .replace(
        "segment_max_bytes = 1048576",
        &format!("segment_max_bytes = {SEGMENT_MAX_BYTES}"),
    );
    std::fs::write(&config_path, config).expect("config written");

    let first_hour = Hour::containing(SIM_START_US).next();
    let n_hours = 24;
    let hours: Vec<Hour> = (0..n_hours)
        .map(|n| Hour::containing(first_hour.start() + n * MICROS_PER_HOUR))
        .collect();
    let restart_at = first_hour.start() + 8 * MICROS_PER_HOUR;
    let last_end = hours[hours.len() - 1].end();
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let expected: Vec<_> = hours
        .iter()
        .flat_map(|hour| {
            kinds
                .iter()
                .map(move |kind| (*kind, *hour, file_path(root, &key("BTCUSDT", *kind), *hour)))
        })
        .collect();

    // Samples WAL size and memory every 50 ms, drops the links every 10 s
    // of real time, until `until` holds.
    async fn run_and_sample(
        fake: &FakeExchange,
        wal: &Path,
        recorder: &RecorderProcess,
        samples: &mut Samples,
        what: &str,
        mut until: impl FnMut() -> bool,
    ) {
        let mut n_ticks = 0u64;
        wait_until(Duration::from_secs(150), what, || {
            samples.take(wal, recorder.pid(), fake.sim_now_us());
            n_ticks += 1;
            // wait_until polls every 10 ms: every 1000th poll is 10 s.
            if n_ticks.is_multiple_of(1000) {
                fake.inject(Fault::DropConnections {
                    abort: n_ticks.is_multiple_of(2000),
                });
            }
            until()
        })
        .await;
    }

    let mut first = Samples::default();
    let recorder = RecorderProcess::start(&config_path, root);
    run_and_sample(
        &fake,
        &wal,
        &recorder,
        &mut first,
        "eight simulated hours",
        || fake.sim_now_us() >= restart_at,
    )
    .await;
    recorder.terminate().await;
    let frames_before_restart: u64 = fake.counters().ws_frames_sent.values().sum();

    let log_path = root.join("second.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let recorder = RecorderProcess::start_with_log(
        &config_path,
        root,
        "warn,binance_recorder::recorder=info",
        log_file,
    );
    let mut second = Samples::default();
    run_and_sample(
        &fake,
        &wal,
        &recorder,
        &mut second,
        "every file of the day sealed",
        || expected.iter().all(|(_, _, path)| is_sealed(path)),
    )
    .await;
    recorder.terminate().await;

    // The WAL: never more than the unsealed hours' share plus segments.
    let written: u64 = first
        .segment_sizes
        .values()
        .chain(second.segment_sizes.values())
        .sum();
    let sim_hours_run = ((fake.sim_now_us() - fake.sim_start_us()) / MICROS_PER_HOUR).max(1) as u64;
    let per_hour = written / sim_hours_run;
    let max_wal = first.max_wal_bytes.max(second.max_wal_bytes);
    eprintln!(
        "WAL written {written} B over {sim_hours_run} h ({per_hour} B/h), at most {max_wal} B on disk, {} segments",
        first.segment_sizes.len() + second.segment_sizes.len()
    );
    assert!(
        written > 8 * per_hour && per_hour > SEGMENT_MAX_BYTES,
        "the run wrote many segments: {written} B"
    );
    assert!(
        max_wal <= 3 * per_hour + 2 * SEGMENT_MAX_BYTES,
        "the WAL held {max_wal} B, more than the unsealed hours need ({per_hour} B an hour)"
    );

    // The restart replayed only what unsealed hours needed.
    let log = std::fs::read_to_string(&log_path).expect("log readable");
    let replayed = replayed_records(&log).expect("the replay is logged");
    eprintln!("replayed {replayed} records; {frames_before_restart} frames sent before");
    assert!(
        replayed * 3 < frames_before_restart,
        "a restart after 8 h replayed {replayed} of {frames_before_restart} records"
    );

    // Memory: the second half of the long process is not above its first half.
    let middle = restart_at + (last_end - restart_at) / 2;
    let max_rss = |samples: &[(i64, u64)], later: bool| {
        samples
            .iter()
            .filter(|(sim, _)| (*sim >= middle) == later)
            .map(|(_, rss)| *rss)
            .max()
            .unwrap_or(0)
    };
    let (early, late) = (
        max_rss(&second.rss_kib, false),
        max_rss(&second.rss_kib, true),
    );
    eprintln!("RSS max {early} KiB in the first half, {late} KiB in the second");
    assert!(early > 0 && late > 0, "RSS sampled");
    assert!(
        late <= early + early / 5 + 8 * 1024,
        "memory crept: {early} KiB then {late} KiB"
    );

    // Every hour equals the ground truth, and verify finds nothing.
    let truth = fake.ground_truth("BTCUSDT", last_end + MICROS_PER_HOUR);
    for (kind, hour, path) in &expected {
        assert_file_matches_truth_with_rest(path, *kind, &truth, *hour);
        assert_complete_hour(path, *hour);
    }
    assert_verify_clean(&config_path).await;
    fake.shutdown().await;
}
