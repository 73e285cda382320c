//! Tasks that never leave the recorder dark or stuck: a connection task
//! that panics is restarted; a REST outage neither delays recording at
//! start nor holds up a stop.

use std::sync::Arc;
use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind, MICROS_PER_MINUTE};
use binance_recorder::recorder::Seams;
use fake_binance::{FakeExchange, Fault};

use crate::support::*;

const STREAMS: [&str; 3] = ["trade", "aggTrade", "kline_1m"];

fn kinds() -> [StreamKind; 3] {
    [StreamKind::Trade, StreamKind::AggTrade, minute_klines()]
}

fn config_text(fake: &FakeExchange, root: &std::path::Path) -> String {
    format!(
        "[connection]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n[fill]\nretry_initial_ms = 100\nretry_max_ms = 1000\n# The deadline binds running rounds; 300 s is 1.25 s real at 240x.\ndeadline_secs = 3600\n{}",
        recorder_toml(fake, root, &["BTCUSDT"], &STREAMS)
    )
    .replace("deadline_ms = 20000", "deadline_ms = 5000")
}

/// Asserts every file of `hour` equals the truth and covers the hour.
fn assert_hour_is_the_truth(fake: &FakeExchange, root: &std::path::Path, hour: Hour) {
    let truth = fake.ground_truth("BTCUSDT", hour.end() + MICROS_PER_MINUTE);
    for kind in kinds() {
        let path = file_path(root, &key("BTCUSDT", kind), hour);
        assert_file_matches_truth_with_rest(&path, kind, &truth, hour);
        assert_complete_hour(&path, hour);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_task_is_restarted_and_its_streams_record_again() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let panics = Arc::new(tokio::sync::Notify::new());
    let seams = Seams {
        connection_panics: Some(panics.clone()),
        ..Seams::default()
    };
    let recorder = RunningRecorder::start_with_seams(&config_text(&fake, root), seams);
    let counters = recorder.counters.clone();
    let hour = Hour::containing(SIM_START_US).next();
    wait_until(Duration::from_secs(60), "frames recorded", || {
        counters.snapshot().frames_durable > 100
    })
    .await;
    wait_until(Duration::from_secs(60), "ten minutes into the hour", || {
        fake.sim_now_us() >= hour.start() + 10 * MICROS_PER_MINUTE
    })
    .await;
    panics.notify_one();
    wait_until(Duration::from_secs(30), "the task restarted", || {
        counters.snapshot().connection_task_restarts == 1
    })
    .await;
    let after_restart = counters.snapshot().frames_durable;
    wait_until(Duration::from_secs(30), "the streams record again", || {
        counters.snapshot().frames_durable > after_restart + 100
    })
    .await;
    let files: Vec<_> = kinds()
        .iter()
        .map(|kind| file_path(root, &key("BTCUSDT", *kind), hour))
        .collect();
    wait_until(Duration::from_secs(60), "the hour sealed", || {
        files.iter().all(|path| is_sealed(path))
    })
    .await;
    recorder.stop().await;
    assert_hour_is_the_truth(&fake, root, hour);
    assert_eq!(counters.snapshot().connection_task_restarts, 1);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_rest_neither_delays_recording_at_start_nor_holds_up_the_stop() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    // Every REST request hangs for ten minutes: exchangeInfo at start,
    // /api/v3/time, the backfill of the first hour.
    fake.inject(Fault::RestSlow {
        delay_ms: 600_000,
        count: 1_000_000,
    });
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config_text = config_text(&fake, root);
    let started = std::time::Instant::now();
    let recorder = RunningRecorder::start(&config_text);
    let counters = recorder.counters.clone();
    wait_until(
        Duration::from_secs(10),
        "frames recorded while REST hangs",
        || counters.snapshot().frames_durable > 0,
    )
    .await;
    let first_frame_after = started.elapsed();
    let stop_at = fake.sim_now_us() + 10 * MICROS_PER_MINUTE;
    wait_until(Duration::from_secs(60), "ten simulated minutes", || {
        fake.sim_now_us() >= stop_at
    })
    .await;

    // Within shutdown.deadline_ms although REST hangs.
    let (stop_took, snapshot) = recorder.stop_within(Duration::from_secs(5)).await;
    assert_eq!(
        snapshot.frames_durable, snapshot.frames_received,
        "the final WAL flush made every received frame durable"
    );
    eprintln!(
        "first frame durable {first_frame_after:?} after start, stop took {stop_took:?}, {} frames",
        snapshot.frames_durable
    );

    // REST answers again: a restart seals the hour from what was recorded
    // and fills the rest; nothing is lost.
    fake.inject(Fault::ClearRestFaults);
    let restarted = RunningRecorder::start(&config_text);
    let hour = Hour::containing(SIM_START_US).next();
    let files: Vec<_> = kinds()
        .iter()
        .map(|kind| file_path(root, &key("BTCUSDT", *kind), hour))
        .collect();
    wait_until(Duration::from_secs(90), "the hour sealed", || {
        files.iter().all(|path| is_sealed(path))
    })
    .await;
    restarted.stop().await;
    assert_hour_is_the_truth(&fake, root, hour);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_refusal_stops_the_daemon_with_a_message_at_start_and_while_running() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config_path = root.join("config.toml");
    std::fs::write(&config_path, config_text(&fake, root)).expect("config written");

    for while_running in [false, true] {
        let log_path = root.join(format!("refused-{while_running}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        if !while_running {
            fake.inject(Fault::RestStatus {
                status: 451,
                count: 1_000_000,
            });
        }
        let requests_before = fake.counters().rest_requests;
        let recorder = RecorderProcess::start_with_log(&config_path, root, "warn", log);
        if while_running {
            let data = root.join("data");
            wait_until(Duration::from_secs(60), "a file sealed", || {
                !parquet_files(&data).is_empty()
            })
            .await;
            fake.inject(Fault::RestStatus {
                status: 451,
                count: 1_000_000,
            });
        }
        let status = recorder.wait_exit(Duration::from_secs(30)).await;
        let stderr = std::fs::read_to_string(&log_path).expect("log readable");
        let n_requests = fake.counters().rest_requests - requests_before;
        eprintln!(
            "while running: {while_running}: {status}, {n_requests} REST requests; {}",
            stderr.lines().last().unwrap_or_default()
        );
        assert!(!status.success(), "{status}: {stderr}");
        assert!(
            stderr.contains("451") && stderr.contains("restricted location"),
            "the message names the refusal: {stderr}"
        );
        assert!(n_requests < 60, "no retry storm: {n_requests} requests");
        fake.inject(Fault::ClearRestFaults);
    }
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_ten_minute_rest_back_off_is_prompt_and_flushes_the_wal() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    // Every REST answer is a 429 asking for ten minutes of silence.
    fake.inject(Fault::RestTooManyRequests {
        retry_after_secs: 600,
        count: 1_000_000,
    });
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let recorder = RunningRecorder::start(&config_text(&fake, root));
    let counters = recorder.counters.clone();
    wait_until(
        Duration::from_secs(30),
        "in a REST back-off, recording",
        || {
            let snapshot = counters.snapshot();
            snapshot.rest_429 > 0 && snapshot.frames_durable > 100
        },
    )
    .await;
    // Within shutdown.deadline_ms during the back-off.
    let (stop_took, snapshot) = recorder.stop_within(Duration::from_secs(5)).await;
    assert_eq!(snapshot.frames_durable, snapshot.frames_received);
    eprintln!(
        "stop during a back-off took {:?}; {} frames durable",
        stop_took, snapshot.frames_durable
    );
    fake.shutdown().await;
}
