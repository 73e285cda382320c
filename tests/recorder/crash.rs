//! Crash safety end to end: the real binary killed with SIGKILL at many
//! moments (mid-hour, while sealing, while filling after a restart) and
//! restarted after a pause; leftovers of an interrupted seal and a corrupt
//! sealed file found at start. Whatever happens, the sealed files equal
//! the ground truth, with nothing missing and nothing twice.

use std::path::Path;
use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind, MICROS_PER_MINUTE};
use binance_recorder::parquet_out;
use fake_binance::FakeExchange;

use crate::support::*;

const STREAMS: [&str; 3] = ["trade", "aggTrade", "kline_1m"];

fn kinds() -> [StreamKind; 3] {
    [StreamKind::Trade, StreamKind::AggTrade, minute_klines()]
}

/// Asserts every `*.parquet` under `data` reads back, no temporary file is
/// left, and nothing was moved aside as corrupt.
fn assert_only_complete_files(data: &Path) {
    for path in walk_files(data) {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            !name.ends_with(".tmp"),
            "temporary file left: {}",
            path.display()
        );
        assert!(
            !name.ends_with(".corrupt"),
            "a sealed file was corrupt: {}",
            path.display()
        );
        if name.ends_with(".parquet") {
            let kind = StreamKind::from_name(&metadata(&path)["stream"]).expect("stream metadata");
            assert!(
                parquet_out::read_hour_file(&path, kind).is_ok(),
                "{} is not a complete file",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_a_dozen_moments_loses_and_duplicates_nothing() {
    let speed = 240.0;
    // A dozen restarts at 240x backfill more in a real minute than a real
    // recorder ever would: a bigger weight limit keeps the test short
    // (pacing within the share is tested in gap_fill and rest_fill).
    let mut fake_settings = fake_config(speed);
    fake_settings.limits.weight_limit_per_minute = 60_000;
    let fake = FakeExchange::start(fake_settings)
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config_path = root.join("config.toml");
    let config = format!(
        "[connection]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n[fill]\nretry_initial_ms = 100\nretry_max_ms = 1000\n# The deadline binds running rounds; 300 s is 1.25 s real at 240x,\n# 14,400 s a minute: room for the fills of a dozen restarts on a busy machine.\ndeadline_secs = 14400\n{}",
        recorder_toml(&fake, root, &SYMBOLS, &STREAMS)
    );
    std::fs::write(&config_path, config).expect("config written");
    let first_hour = Hour::containing(SIM_START_US);
    let hours = [first_hour, first_hour.next(), first_hour.next().next()];
    let last_hour_end = hours[2].end();
    let sim_us_per_real_ms = (speed * 1000.0) as i64;

    let mut random = fastrand::Rng::with_seed(20_261_123);
    let test_start = std::time::Instant::now();
    let mut n_kills = 0;
    let mut moments = Vec::new();
    // The first hour lasts 3 s of real time (`sim_start_us`): a first
    // start slower than that (a loaded machine) never watched it, and an
    // hour never watched is not owed.
    let mut first_link_at = None;
    while fake.sim_now_us() < last_hour_end - 5 * MICROS_PER_MINUTE {
        let recorder = RecorderProcess::start(&config_path, root);
        if first_link_at.is_none() {
            wait_until(Duration::from_secs(60), "the first link", || {
                fake.counters().ws_handshakes_accepted > 0
            })
            .await;
            first_link_at = Some(fake.sim_now_us());
        }
        let started_at = fake.sim_now_us();
        let moment = n_kills % 3;
        match moment {
            // Mid-hour, a few simulated minutes in.
            0 => {
                let at = started_at + random.i64(1..6) * MICROS_PER_MINUTE;
                wait_until(Duration::from_secs(60), "a random moment", || {
                    fake.sim_now_us() >= at
                })
                .await;
            }
            // While sealing: the moment the next file of an hour appears.
            1 => {
                let n_files = parquet_files(&root.join("data")).len();
                let limit = started_at + 10 * MICROS_PER_MINUTE;
                wait_until(Duration::from_secs(60), "a file sealed", || {
                    parquet_files(&root.join("data")).len() > n_files || fake.sim_now_us() >= limit
                })
                .await;
            }
            // Right after the start, while the downtime is filled from REST.
            _ => {
                let at = started_at + random.i64(100..600) * sim_us_per_real_ms;
                wait_until(Duration::from_secs(60), "just after the start", || {
                    fake.sim_now_us() >= at
                })
                .await;
            }
        }
        recorder.kill();
        eprintln!(
            "kill {n_kills} moment {moment} at {:?} real, sim +{} s since start, files {}",
            test_start.elapsed(),
            (fake.sim_now_us() - started_at) / 1_000_000,
            parquet_files(&root.join("data")).len()
        );
        n_kills += 1;
        moments.push(moment);
        // Down for 0.2 to 2 s of real time, counted on the simulated clock.
        let restart_at = fake.sim_now_us() + random.i64(200..2000) * sim_us_per_real_ms;
        wait_until(
            Duration::from_secs(60),
            "the pause before the restart",
            || fake.sim_now_us() >= restart_at,
        )
        .await;
    }
    assert!(n_kills >= 10, "killed {n_kills} times");
    for moment in 0..3 {
        assert!(
            moments.contains(&moment),
            "every kind of moment was hit: {moments:?}"
        );
    }

    let recorder = RecorderProcess::start(&config_path, root);
    // Seen a few seconds before its end, the first hour has trades, and
    // its minute's kline closes after.
    let first_hour_watched = first_link_at.is_some_and(|at| at < hours[0].end() - 5_000_000);
    eprintln!("first link at sim {first_link_at:?}; first hour watched: {first_hour_watched}");
    let mut expected = Vec::new();
    for symbol in SYMBOLS {
        for kind in kinds() {
            for hour in hours {
                if hour == hours[0] && !first_hour_watched {
                    continue;
                }
                expected.push((
                    symbol,
                    kind,
                    hour,
                    file_path(root, &key(symbol, kind), hour),
                ));
            }
        }
    }
    wait_until(
        Duration::from_secs(120),
        "every file of the three hours sealed",
        || expected.iter().all(|(_, _, _, path)| is_sealed(path)),
    )
    .await;
    eprintln!("final files at {:?}", test_start.elapsed());
    recorder.terminate().await;

    assert_only_complete_files(&root.join("data"));
    assert_verify_clean(&config_path).await;
    for (symbol, kind, hour, path) in &expected {
        let truth = fake.ground_truth(symbol, hours[2].end() + MICROS_PER_MINUTE);
        assert_file_matches_truth_with_rest(path, *kind, &truth, *hour);
        assert_complete_hour(path, *hour);
    }
    eprintln!(
        "killed {n_kills} times at moments {moments:?}; {:?}",
        fake.counters()
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_interrupted_seal_and_a_corrupt_file_are_handled_at_start() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = recorder_toml_patient(&fake, root, &["BTCUSDT"], &STREAMS);
    let hour = Hour::containing(SIM_START_US).next();
    let trade_key = key("BTCUSDT", StreamKind::Trade);
    let sealed = file_path(root, &trade_key, hour);

    let first_run = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(60), "the hour sealed", || {
        sealed.exists()
    })
    .await;
    let stop_at = hour.end() + 5 * MICROS_PER_MINUTE;
    wait_until(Duration::from_secs(60), "into the next hour", || {
        fake.sim_now_us() >= stop_at
    })
    .await;
    first_run.stop().await;

    // A bad footer; the temporary file of a seal that never finished, in
    // .staging/ and where releases before schema version 2 wrote it (inside
    // the tree); and a file such a release moved aside inside the tree.
    let data = root.join("data");
    std::fs::write(&sealed, b"PAR1 this is not a parquet file").expect("corrupt the file");
    let leftover = sealed.with_file_name(".BTCUSDT-trade-2026-01-01-02.parquet.tmp");
    std::fs::write(&leftover, b"half a file").expect("leftover written");
    let staged =
        parquet_out::staging_dir(&data).join("spot-BTCUSDT-trade-2026-01-01-02.parquet.tmp");
    std::fs::write(&staged, b"half a file").expect("staged leftover written");
    let legacy_aside = sealed.with_file_name("BTCUSDT-trade-2026-01-01-00.parquet.corrupt");
    std::fs::write(&legacy_aside, b"moved aside by 0.1.0").expect("legacy file written");

    let second_run = RunningRecorder::start(&config);
    let next_hour = file_path(root, &trade_key, hour.next());
    wait_until(
        Duration::from_secs(60),
        "the file rebuilt and the next hour sealed",
        || next_hour.exists() && parquet_out::read_hour_file(&sealed, StreamKind::Trade).is_ok(),
    )
    .await;
    let counters = second_run.stop().await;
    assert_eq!(
        (counters.files_corrupt, counters.temporary_files_removed),
        (1, 2),
        "{counters:?}"
    );
    assert!(!leftover.exists(), "the temporary file was removed");
    assert!(!staged.exists(), "the staged temporary file was removed");
    let corrupt = parquet_out::corrupt_dir(&data);
    let in_corrupt = |path: &Path| corrupt.join(path.strip_prefix(&data).expect("under data"));
    assert_eq!(
        std::fs::read(in_corrupt(&legacy_aside)).expect("the older release's file moved out"),
        b"moved aside by 0.1.0"
    );
    assert_eq!(
        std::fs::read(in_corrupt(&sealed).with_extension("parquet.corrupt"))
            .expect("the corrupt file is kept aside, outside the tree"),
        b"PAR1 this is not a parquet file"
    );
    for path in walk_files(&data.join("market=spot")) {
        let name = path.file_name().expect("a name").to_string_lossy();
        assert!(
            name.ends_with(".parquet") && !name.starts_with('.'),
            "only sealed files in the tree: {}",
            path.display()
        );
    }
    let truth = fake.ground_truth("BTCUSDT", hour.next().end() + MICROS_PER_MINUTE);
    assert_file_matches_truth_with_rest(&sealed, StreamKind::Trade, &truth, hour);
    assert_eq!(metadata(&sealed)["unfilled"], "[]");
    fake.shutdown().await;
}

/// The real filesystem, except that while `failing` holds an errno,
/// creating files, writing and syncing fail with it: ENOSPC for a full
/// disk, EROFS for a filesystem remounted read-only.
#[derive(Debug, Clone, Default)]
struct FullableDisk {
    failing: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;

impl FullableDisk {
    fn check(&self) -> std::io::Result<()> {
        match self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            0 => {}
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FullableFile {
    inner: Box<dyn binance_recorder::wal::WalFile>,
    disk: FullableDisk,
}

impl binance_recorder::wal::WalFile for FullableFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.disk.check()?;
        self.inner.write(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.disk.check()?;
        self.inner.sync_data()
    }
}

impl FileFault for FullableDisk {
    fn before_create(&self) -> std::io::Result<()> {
        self.check()
    }

    fn wrap(
        &self,
        inner: Box<dyn binance_recorder::wal::WalFile>,
    ) -> Box<dyn binance_recorder::wal::WalFile> {
        Box::new(FullableFile {
            inner,
            disk: self.clone(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_then_a_read_only_one_stop_acknowledging_then_recover_losing_nothing() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = binance_recorder::config::Config::from_toml(&format!(
        "[connection]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_backpressure_wait_ms = 1000\n{}",
        recorder_toml_patient(&fake, root, &SYMBOLS, &STREAMS)
    ))
    .expect("valid config");
    let disk = FullableDisk::default();
    let counters = std::sync::Arc::new(binance_recorder::metrics::Counters::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(binance_recorder::recorder::run_with_wal_fs(
        config,
        std::sync::Arc::new(FaultyFs(disk.clone())),
        counters.clone(),
        shutdown.clone(),
    ));
    let hour = Hour::containing(SIM_START_US).next();
    wait_until(Duration::from_secs(60), "ten minutes into the hour", || {
        fake.sim_now_us() >= hour.start() + 10 * MICROS_PER_MINUTE
    })
    .await;
    for (errno, minute) in [(ENOSPC, 10), (EROFS, 35)] {
        wait_until(Duration::from_secs(60), "the fault's moment", || {
            fake.sim_now_us() >= hour.start() + minute * MICROS_PER_MINUTE
        })
        .await;
        let failures_before = counters.snapshot().wal_write_failures;
        disk.failing
            .store(errno, std::sync::atomic::Ordering::SeqCst);
        wait_until(
            Duration::from_secs(30),
            "the first failed WAL batch",
            || counters.snapshot().wal_write_failures > failures_before,
        )
        .await;
        let durable_when_failing = counters.snapshot().frames_durable;
        // Failing through two more batches (after 1 s, then 2 s of back-off).
        wait_until(Duration::from_secs(30), "WAL writes failing", || {
            counters.snapshot().wal_write_failures >= failures_before + 3
        })
        .await;
        let during = counters.snapshot();
        assert!(
            !task.is_finished(),
            "errno {errno}: the recorder keeps running"
        );
        assert_eq!(
            during.frames_durable, durable_when_failing,
            "errno {errno}: nothing acknowledged: {during:?}"
        );
        disk.failing.store(0, std::sync::atomic::Ordering::SeqCst);
        wait_until(Duration::from_secs(30), "writing resumed", || {
            counters.snapshot().frames_durable > durable_when_failing
        })
        .await;
    }

    let mut files = Vec::new();
    for symbol in SYMBOLS {
        for kind in kinds() {
            files.push((symbol, kind, file_path(root, &key(symbol, kind), hour)));
        }
    }
    wait_until(
        Duration::from_secs(90),
        "the hour sealed after the disk recovered",
        || files.iter().all(|(_, _, path)| is_sealed(path)),
    )
    .await;
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
    let counters = counters.snapshot();
    assert!(counters.wal_write_failures >= 6, "{counters:?}");
    for (symbol, kind, path) in &files {
        let truth = fake.ground_truth(symbol, hour.end() + MICROS_PER_MINUTE);
        assert_file_matches_truth_with_rest(path, *kind, &truth, hour);
        assert_eq!(metadata(path)["unfilled"], "[]", "{}", path.display());
    }
    fake.shutdown().await;
}
