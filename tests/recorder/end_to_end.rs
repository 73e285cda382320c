//! The spine end to end: the fake exchange at 240x, 3 symbols x trade,
//! aggTrade, kline_1m and kline_2h, two whole simulated hours, every sealed
//! file compared with the fake's ground truth row by row, then read by
//! every call of docs/DATASET.md "How it is read" (DuckDB, pandas, pyarrow,
//! polars): on the dataset as sealed, while a reseal is in progress, and
//! after a crash left a temporary file and a file was moved aside.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use binance_recorder::domain::{Hour, KlineInterval, Market, Row, StreamKind, MICROS_PER_SECOND};
use binance_recorder::parquet_out::{self, HourFile, SealStep};
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
    // Two-hour klines open in every other hour: the hour between gets a
    // file with no rows (the reader matrix's empty hour).
    let two_hours = StreamKind::Kline(KlineInterval::Hour2);
    let config = recorder_toml_patient(
        &fake,
        root,
        &SYMBOLS,
        &["trade", "aggTrade", "kline_1m", "kline_2h"],
    );
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
        for hour in [first_hour, whole_hours[0]] {
            expected_files.push((
                key(symbol, two_hours),
                hour,
                file_path(root, &key(symbol, two_hours), hour),
            ));
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

    let data = root.join("data");
    let empty_hour = file_path(root, &key(SYMBOLS[0], two_hours), whole_hours[0]);
    assert_eq!(
        metadata(&empty_hour)["row_count"],
        "0",
        "no two-hour kline opens in an odd hour"
    );
    let all_kinds = [kinds[0], kinds[1], kinds[2], two_hours];
    let expected = expected_readings(&data, Market::Spot, &all_kinds);
    assert!(
        expected
            .as_object()
            .expect("by stream")
            .values()
            .any(|stream| stream["n_rest_rows"] != 0),
        "rows from REST are part of the dataset read"
    );
    assert_partition_tree_holds_only_sealed_files(&data);
    run_reader_matrix(&data, Market::Spot, &expected, "the dataset as sealed").await;

    // A reseal in progress: the new version of a sealed hour (one row
    // more) written and fsynced in .staging/, not yet renamed into place.
    let resealed_key = key(SYMBOLS[0], StreamKind::Trade);
    let resealed_path = file_path(root, &resealed_key, whole_hours[0]);
    let mut rows =
        parquet_out::read_hour_file(&resealed_path, StreamKind::Trade).expect("readable");
    let Some(Row::Trade(mut extra)) = rows.last().cloned() else {
        panic!("{} holds trades", resealed_path.display())
    };
    extra.trade_id += 1_000_000;
    rows.push(Row::Trade(extra));
    let reseal = HourFile {
        key: resealed_key.clone(),
        hour: whole_hours[0],
        rows,
        unfilled: Vec::new(),
        coverage_from: whole_hours[0].start(),
        coverage_to: whole_hours[0].end(),
        clock_offset_us: None,
        delivered_at: None,
        stopped_at: None,
    };
    parquet_out::write_hour_file_until(&data, &reseal, Some(SealStep::Synced))
        .expect("reseal stopped before its rename");
    assert_eq!(
        walk_files(&parquet_out::staging_dir(&data)).len(),
        1,
        "the seal in progress is staged"
    );
    assert_partition_tree_holds_only_sealed_files(&data);
    run_reader_matrix(&data, Market::Spot, &expected, "a reseal in progress").await;

    // After a crash: a torn temporary file of a seal of the next hour, and
    // an unreadable file moved aside as a start-up would.
    let next_hour = whole_hours[1].next();
    let torn = HourFile {
        key: key(SYMBOLS[1], StreamKind::Trade),
        hour: next_hour,
        ..reseal.clone()
    };
    parquet_out::write_hour_file_until(&data, &torn, Some(SealStep::Written))
        .expect("seal stopped after writing");
    for staged in walk_files(&parquet_out::staging_dir(&data)) {
        let length = std::fs::metadata(&staged).expect("staged").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&staged)
            .expect("staged file opens");
        file.set_len(length / 2).expect("torn in half");
    }
    // A day on: the hour of the stop has its own file (`stopped_at`).
    let unreadable_hour = Hour::containing(next_hour.start() + 24 * 3_600_000_000);
    let unreadable = file_path(root, &key(SYMBOLS[2], StreamKind::Trade), unreadable_hour);
    std::fs::create_dir_all(unreadable.parent().expect("folder")).expect("folder");
    std::fs::write(&unreadable, b"PAR1 not a parquet file").expect("unreadable file");
    let aside = parquet_out::move_aside(&data, &unreadable).expect("moved aside");
    assert!(
        aside.starts_with(parquet_out::corrupt_dir(&data)),
        "{}",
        aside.display()
    );
    assert_partition_tree_holds_only_sealed_files(&data);
    run_reader_matrix(
        &data,
        Market::Spot,
        &expected,
        "after a crash left a temporary file",
    )
    .await;
    fake.shutdown().await;
}

/// What the Rust side reads from each stream folder of `market` under
/// `data`: the numbers and the sample rows `tests/python/check_dataset.py`
/// compares every reader's answer with.
pub(crate) fn expected_readings(
    data: &Path,
    market: Market,
    kinds: &[StreamKind],
) -> serde_json::Value {
    let mut expected = BTreeMap::new();
    for kind in kinds {
        let files = parquet_files(&data.join(format!(
            "market={}/stream={}",
            market.name(),
            kind.path_name()
        )));
        let mut n_rows = 0;
        let mut n_rest_rows = 0;
        let mut n_rows_by_symbol: BTreeMap<String, usize> = BTreeMap::new();
        for path in &files {
            let rows = parquet_out::read_hour_file(path, *kind).expect("readable");
            n_rows += rows.len();
            n_rest_rows += rows
                .iter()
                .filter(|row| row.source() == binance_recorder::domain::Source::Rest)
                .count();
            if !rows.is_empty() {
                *n_rows_by_symbol
                    .entry(metadata(path)["symbol"].clone())
                    .or_default() += rows.len();
            }
        }
        let sample_path = files
            .iter()
            .max_by_key(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
            .expect("files");
        let sample = parquet_out::read_hour_file(sample_path, *kind).expect("readable");
        let sample_rows: Vec<_> = sample.iter().take(50).map(row_json).collect();
        expected.insert(
            kind.path_name(),
            json!({
                "n_files": files.len(),
                "n_rows": n_rows,
                "n_rest_rows": n_rest_rows,
                "n_rows_by_symbol": n_rows_by_symbol,
                "sample_file": sample_path,
                "sample_symbol": metadata(sample_path)["symbol"],
                "n_sample_rows": sample.len(),
                "sample_rows": sample_rows,
            }),
        );
    }
    serde_json::to_value(expected).expect("json")
}

/// Every file under a `market=` folder is a sealed `*.parquet` (DATASET.md
/// "Layout"): no temporary file, lock or file moved aside, hidden or not.
fn assert_partition_tree_holds_only_sealed_files(data: &Path) {
    for path in walk_files(data) {
        let relative = path.strip_prefix(data).expect("under data");
        let in_tree = relative
            .components()
            .next()
            .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with("market="));
        let name = path.file_name().expect("a name").to_string_lossy();
        if in_tree {
            assert!(
                name.ends_with(".parquet") && !name.starts_with('.'),
                "not a sealed file in the partition tree: {}",
                path.display()
            );
        }
    }
    assert!(
        data.join(binance_recorder::lock::LOCK_FILE_NAME).exists(),
        "the lock file sits at the root, outside the tree"
    );
}

/// Runs `tests/python/check_dataset.py` (the reader matrix) on `market`'s
/// folders under `data` with the project's venv, giving it what Rust wrote
/// so it compares values, not just shapes.
pub(crate) async fn run_reader_matrix(
    data: &Path,
    market: Market,
    expected: &serde_json::Value,
    situation: &str,
) {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let expected_path = scratch.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(expected).expect("json"),
    )
    .expect("write expected");
    let python = python_interpreter();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_dataset.py");
    let data = data.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .arg(&data)
            .arg(&expected_path)
            .arg(market.name())
            .output()
    })
    .await
    .expect("python task")
    .expect("python runs");
    assert!(
        output.status.success(),
        "python readers disagree on {situation}:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "{situation}: {}",
        String::from_utf8_lossy(&output.stdout).trim()
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
            "is_best_match": trade.is_best_match, "trade_type": trade.trade_type,
            "event_time": trade.event_time, "recv_time": trade.recv_time, "source": trade.source.name(),
        }),
        Row::AggTrade(agg) => json!({
            "agg_trade_id": agg.agg_trade_id, "price": agg.price.to_string(), "quantity": agg.quantity.to_string(),
            "first_trade_id": agg.first_trade_id, "last_trade_id": agg.last_trade_id, "trade_time": agg.trade_time,
            "is_buyer_maker": agg.is_buyer_maker, "is_best_match": agg.is_best_match,
            "event_time": agg.event_time, "recv_time": agg.recv_time, "source": agg.source.name(),
        }),
        Row::Kline(kline) => json!({
            "open_time": kline.open_time, "close_time": kline.close_time, "open": kline.open.to_string(),
            "high": kline.high.to_string(), "low": kline.low.to_string(), "close": kline.close.to_string(),
            "volume": kline.volume.to_string(), "quote_volume": kline.quote_volume.to_string(),
            "trade_count": kline.trade_count, "taker_buy_base_volume": kline.taker_buy_base_volume.to_string(),
            "taker_buy_quote_volume": kline.taker_buy_quote_volume.to_string(),
            "first_trade_id": kline.first_trade_id, "last_trade_id": kline.last_trade_id,
            "event_time": kline.event_time, "recv_time": kline.recv_time, "source": kline.source.name(),
        }),
    }
}
