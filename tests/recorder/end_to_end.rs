//! The spine end to end: the fake exchange at 240x, 3 symbols x trade,
//! aggTrade and kline_1m, two whole simulated hours, every sealed file
//! compared with the fake's ground truth row by row, then read by DuckDB,
//! pandas, polars and pyarrow.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use binance_recorder::domain::{Hour, Row, StreamKind, MICROS_PER_SECOND};
use binance_recorder::parquet_out;
use fake_binance::FakeExchange;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_symbols_two_whole_hours_match_ground_truth() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let config = recorder_toml_patient(&fake, root, &SYMBOLS, &["trade", "aggTrade", "kline_1m"]);
    let recorder = RunningRecorder::start(&config);

    let first_hour = Hour::containing(SIM_START_US);
    let whole_hours = [first_hour.next(), first_hour.next().next()];
    let mut expected_files = Vec::new();
    for symbol in SYMBOLS {
        for kind in kinds {
            for hour in [first_hour, whole_hours[0], whole_hours[1]] {
                expected_files.push((
                    key(symbol, kind),
                    hour,
                    file_path(root, &key(symbol, kind), hour),
                ));
            }
        }
    }

    // While the recorder runs, every *.parquet that is visible must be a
    // complete file, and must have appeared only after its hour was over
    // (plus the grace) on the exchange's clock.
    let grace_us = 5 * MICROS_PER_SECOND;
    let mut checked: HashMap<PathBuf, ()> = HashMap::new();
    wait_until(
        Duration::from_secs(150),
        "every file of the two whole hours sealed",
        || {
            let sim_now = fake.sim_now_us();
            for path in parquet_files(&root.join("data")) {
                if checked.contains_key(&path) {
                    continue;
                }
                let metadata = metadata(&path);
                let hour_start = chrono::NaiveDateTime::parse_from_str(
                    &format!("{}:00", metadata["hour"]),
                    "%Y-%m-%dT%H:%M",
                )
                .expect("hour metadata")
                .and_utc()
                .timestamp_micros();
                let kind = StreamKind::from_name(&metadata["stream"]).expect("stream metadata");
                assert!(
                    parquet_out::read_hour_file(&path, kind).is_ok(),
                    "{} visible but not complete",
                    path.display()
                );
                let complete_at =
                    binance_recorder::seal::complete_at(kind, Hour::containing(hour_start));
                assert!(
                    sim_now >= complete_at + grace_us,
                    "{} appeared before its hour was complete",
                    path.display()
                );
                checked.insert(path, ());
            }
            expected_files
                .iter()
                .all(|(_, _, path)| checked.contains_key(path))
        },
    )
    .await;
    let counters = recorder.stop().await;
    eprintln!("recorder counters: {counters:?}");
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    assert_eq!(counters.rows_unexpected, 0, "{counters:?}");
    assert!(
        counters.frames_durable >= counters.frames_received,
        "{counters:?}"
    );

    // A minute past the end, so the last kline's closing event is included.
    let until = whole_hours[1].end() + binance_recorder::domain::MICROS_PER_MINUTE;
    for symbol in SYMBOLS {
        let truth = fake.ground_truth(symbol, until);
        assert!(
            truth.trades.len() > 1000,
            "the model traded: {}",
            truth.trades.len()
        );
        for kind in kinds {
            for hour in whole_hours {
                let path = file_path(root, &key(symbol, kind), hour);
                assert_file_matches_truth(&path, kind, &truth, hour);
                let metadata = metadata(&path);
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
                assert_eq!(metadata["unfilled"], "[]");
                assert_ne!(metadata["clock_offset_us"], "null", "clock offset measured");
            }
            // The first hour was joined late and backfilled from REST: it
            // is complete from its start, and the REST rows are exactly
            // the ones before the first row the stream delivered.
            let first_path = file_path(root, &key(symbol, kind), first_hour);
            let rest_keys =
                assert_file_matches_truth_with_rest(&first_path, kind, &truth, first_hour);
            let rows = parquet_out::read_hour_file(&first_path, kind).expect("readable");
            let n_before_stream = rows
                .iter()
                .take_while(|row| row.source() == binance_recorder::domain::Source::Rest)
                .count();
            assert!(
                !rest_keys.is_empty(),
                "{}: backfilled",
                first_path.display()
            );
            assert_eq!(
                rest_keys.len(),
                n_before_stream,
                "{}: REST rows only before the stream's first",
                first_path.display()
            );
            let first = metadata(&first_path);
            assert_eq!(
                first["coverage_from"],
                first_hour.start().to_string(),
                "{first:?}"
            );
            assert_eq!(first["unfilled"], "[]");
        }
    }

    check_with_python_readers(root, &fake).await;
    fake.shutdown().await;
}

/// Runs `tests/python/check_dataset.py` on the dataset with the project's
/// venv, giving it what Rust wrote so it compares values, not just shapes.
async fn check_with_python_readers(root: &Path, fake: &FakeExchange) {
    let data = root.join("data");
    let mut expected = BTreeMap::new();
    for kind in [StreamKind::Trade, StreamKind::AggTrade, minute_klines()] {
        let files = parquet_files(&data.join(format!("market=spot/stream={}", kind.path_name())));
        let mut n_rows = 0;
        for path in &files {
            n_rows += parquet_out::read_hour_file(path, kind)
                .expect("readable")
                .len();
        }
        let sample_path = files
            .iter()
            .max_by_key(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
            .expect("files");
        let sample_rows: Vec<_> = parquet_out::read_hour_file(sample_path, kind)
            .expect("readable")
            .iter()
            .take(50)
            .map(row_json)
            .collect();
        expected.insert(
            kind.path_name(),
            json!({"n_files": files.len(), "n_rows": n_rows, "sample_file": sample_path, "sample_rows": sample_rows}),
        );
    }
    let expected_path = root.join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).expect("json"),
    )
    .expect("write expected");
    let python = python_interpreter();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_dataset.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .arg(&data)
            .arg(&expected_path)
            .output()
    })
    .await
    .expect("python task")
    .expect("python runs");
    let _ = fake;
    assert!(
        output.status.success(),
        "python readers disagree:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The venv made by `scripts/setup.sh`, or `$RECORDER_TEST_PYTHON`.
fn python_interpreter() -> PathBuf {
    if let Ok(python) = std::env::var("RECORDER_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh (the README's test command does)",
        venv.display()
    );
    venv
}

fn row_json(row: &Row) -> serde_json::Value {
    match row {
        Row::Trade(trade) => json!({
            "trade_id": trade.trade_id, "price": trade.price.to_string(), "quantity": trade.quantity.to_string(),
            "trade_time": trade.trade_time, "is_buyer_maker": trade.is_buyer_maker,
            "is_best_match": trade.is_best_match, "event_time": trade.event_time, "recv_time": trade.recv_time,
            "source": trade.source.name(),
        }),
        Row::AggTrade(agg) => json!({
            "agg_trade_id": agg.agg_trade_id, "price": agg.price.to_string(), "quantity": agg.quantity.to_string(),
            "first_trade_id": agg.first_trade_id, "last_trade_id": agg.last_trade_id, "trade_time": agg.trade_time,
            "is_buyer_maker": agg.is_buyer_maker, "event_time": agg.event_time, "source": agg.source.name(),
        }),
        Row::Kline(kline) => json!({
            "open_time": kline.open_time, "close_time": kline.close_time, "open": kline.open.to_string(),
            "high": kline.high.to_string(), "low": kline.low.to_string(), "close": kline.close.to_string(),
            "volume": kline.volume.to_string(), "trade_count": kline.trade_count,
            "first_trade_id": kline.first_trade_id, "event_time": kline.event_time, "source": kline.source.name(),
        }),
    }
}
