//! Bad input from the exchange never stops the recorder and loses nothing
//! already recorded: undecodable frames go to the quarantine, unknown events
//! and symbols are counted, and the sealed files still equal the truth.

use std::time::Duration;

use binance_recorder::config::Config;
use binance_recorder::domain::{Hour, StreamKind};
use binance_recorder::recorder;
use fake_binance::{FakeExchange, Fault};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_quarantined_and_the_hour_is_still_complete() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let recorder = RunningRecorder::start(&recorder_toml_patient(
        &fake,
        root,
        &["BTCUSDT"],
        &["trade", "aggTrade", "kline_1m"],
    ));
    let hour = Hour::containing(SIM_START_US).next();
    wait_until(Duration::from_secs(30), "the whole hour started", || {
        fake.sim_now_us() > hour.start() + 60_000_000
    })
    .await;
    for fault in [
        Fault::GarbageText { count: 3 },
        Fault::BrokenJson { count: 3 },
        Fault::BinaryFrames { count: 2 },
        Fault::UnknownEventType { count: 2 },
        Fault::UnsubscribedSymbolEvent { count: 2 },
    ] {
        fake.inject(fault);
    }
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    wait_until(Duration::from_secs(60), "the hour sealed", || {
        kinds
            .iter()
            .all(|kind| file_path(root, &key("BTCUSDT", *kind), hour).exists())
    })
    .await;
    let counters = recorder.stop().await;
    assert_eq!(
        counters.frames_quarantined, 8,
        "garbage, broken JSON and binary frames: {counters:?}"
    );
    assert_eq!(
        counters.events_ignored, 2,
        "unknown event types: {counters:?}"
    );
    assert_eq!(
        counters.rows_unexpected, 2,
        "events of a symbol nobody subscribed: {counters:?}"
    );
    let quarantine = walk_files(&root.join("quarantine"));
    let lines: usize = quarantine
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .expect("readable")
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 8, "every quarantined frame kept raw: {quarantine:?}");
    let truth = fake.ground_truth("BTCUSDT", hour.end() + 60_000_000);
    for kind in kinds {
        assert_file_matches_truth(
            &file_path(root, &key("BTCUSDT", kind), hour),
            kind,
            &truth,
            hour,
        );
    }
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbol_unknown_to_the_exchange_is_a_clear_error() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let text = recorder_toml_patient(
        &fake,
        scratch.path(),
        &["BTCUSDT", "NOSUCHCOIN"],
        &["trade"],
    );
    let config = Config::from_toml(&text).expect("valid config");
    let result = recorder::run(config, Default::default(), CancellationToken::new()).await;
    let message = format!(
        "{:#}",
        result.expect_err("an unknown symbol stops the start")
    );
    assert!(
        message.contains("NOSUCHCOIN") && message.contains("markets.spot.symbols"),
        "{message}"
    );
    assert!(
        !message.contains("BTCUSDT"),
        "only the unknown symbol is named: {message}"
    );
    fake.shutdown().await;
}
