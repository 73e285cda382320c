//! SIGTERM mid-hour, then a restart with the same config: every row
//! received before the stop ends up in the sealed file exactly once. The
//! stop leaves a file for the unfinished hour (`stopped_at`, covering up to
//! the stop); the next run finishes the hour and seals it again. So does
//! an hour kline running at the stop (a file vouching for nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use binance_recorder::binance::decode::{decode_frame, Decoded};
use binance_recorder::domain::{Hour, KlineInterval, Market, Row, StreamKind, MICROS_PER_MINUTE};
use binance_recorder::parquet_out;
use binance_recorder::wal::{read_segments, ReadItem, RecordKind};
use fake_binance::FakeExchange;

use crate::support::*;

/// The keys of every row in the WAL, per stream kind: what was received.
fn rows_in_wal(wal_dir: &Path) -> BTreeMap<StreamKind, BTreeSet<i64>> {
    let mut received: BTreeMap<StreamKind, BTreeSet<i64>> = BTreeMap::new();
    for item in read_segments(wal_dir).expect("WAL readable") {
        let ReadItem::Record { record, .. } = item.expect("WAL item") else {
            continue;
        };
        if record.kind != RecordKind::WsFrame {
            continue;
        }
        let (tag, frame) = record.payload.split_first().expect("market tag");
        assert_eq!(Market::from_wal_tag(*tag), Some(Market::Spot));
        if let Ok(Decoded::Row { key, row, .. }) =
            decode_frame(Market::Spot, frame, record.recv_time_us)
        {
            received.entry(key.kind).or_default().insert(row.key());
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_hour_then_restart_loses_and_duplicates_nothing() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config_path = root.join("config.toml");
    std::fs::write(
        &config_path,
        recorder_toml_patient(
            &fake,
            root,
            &["BTCUSDT"],
            &["trade", "aggTrade", "kline_1m", "kline_1h"],
        ),
    )
    .expect("write config");
    let first_hour = Hour::containing(SIM_START_US);
    let hour = first_hour.next();

    let recorder = RecorderProcess::start(&config_path, root);
    wait_until(
        Duration::from_secs(60),
        "twenty minutes into the hour",
        || fake.sim_now_us() >= hour.start() + 20 * MICROS_PER_MINUTE,
    )
    .await;
    recorder.terminate().await;
    let received = rows_in_wal(&root.join("wal"));
    assert!(
        received
            .get(&StreamKind::Trade)
            .is_some_and(|ids| ids.len() > 100),
        "trades were received: {received:?}"
    );
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let truth_at_stop = fake.ground_truth("BTCUSDT", hour.end());
    for kind in kinds {
        // Every hour watched has a file while the recorder is stopped: the
        // unfinished one says so, and vouches only up to the stop.
        let path = file_path(root, &key("BTCUSDT", kind), hour);
        let footer = metadata(&path);
        let stopped_at: i64 = footer["stopped_at"].parse().expect("stopped_at");
        let coverage_to: i64 = footer["coverage_to"].parse().expect("coverage_to");
        assert!(
            // The exchange's clock as the last frames told it.
            hour.start() + 19 * MICROS_PER_MINUTE <= stopped_at && stopped_at < hour.end(),
            "{kind}: stopped at {stopped_at}"
        );
        assert!(
            coverage_to <= stopped_at + 1 && coverage_to > hour.start(),
            "{kind}: coverage to {coverage_to}, stopped at {stopped_at}"
        );
        let rows = parquet_out::read_hour_file(&path, kind).expect("readable");
        assert!(rows.len() > 5, "{kind}: {} rows", rows.len());
        assert_rows_are_true(&rows, &truth_at_stop, kind);
        let received_keys = received.get(&kind).cloned().unwrap_or_default();
        assert!(
            rows.iter().all(|row| received_keys.contains(&row.key())),
            "{kind}: only rows the stream delivered"
        );
    }

    // The hour kline running at the stop: a file too, vouching for nothing.
    let hour_klines = key("BTCUSDT", StreamKind::Kline(KlineInterval::Hour1));
    let path = file_path(root, &hour_klines, hour);
    let footer = metadata(&path);
    assert!(footer.contains_key("stopped_at"), "{footer:?}");
    assert_eq!(footer["coverage_to"], footer["coverage_from"], "{footer:?}");
    let rows = parquet_out::read_hour_file(&path, hour_klines.kind).expect("readable");
    assert!(rows.is_empty(), "{} rows", rows.len());

    // `verify` tells them apart: unfinished, not partial nor holes.
    let (clean, table, report) = verify_json(&config_path).await;
    assert!(
        clean && report["unfinished_hours"] == 4 && report["undeclared_problems"] == 0,
        "{table}"
    );

    let recorder = RecorderProcess::start(&config_path, root);
    wait_until(
        Duration::from_secs(90),
        "the hour sealed after the restart",
        || {
            kinds.iter().chain([&hour_klines.kind]).all(|kind| {
                let path = file_path(root, &key("BTCUSDT", *kind), hour);
                path.exists() && !metadata(&path).contains_key("stopped_at")
            })
        },
    )
    .await;
    recorder.terminate().await;

    let truth = fake.ground_truth("BTCUSDT", hour.end());
    for kind in kinds {
        let mut sealed_keys = Vec::new();
        for sealed_hour in [first_hour, hour] {
            let path = file_path(root, &key("BTCUSDT", kind), sealed_hour);
            let rows = parquet_out::read_hour_file(&path, kind).expect("sealed file readable");
            assert_rows_are_true(&rows, &truth, kind);
            sealed_keys.extend(rows.iter().map(Row::key));
        }
        // With the gap fill, the downtime came back from REST: both
        // hours are the whole truth.
        let until = hour.end() + MICROS_PER_MINUTE;
        for sealed_hour in [first_hour, hour] {
            let path = file_path(root, &key("BTCUSDT", kind), sealed_hour);
            assert_file_matches_truth_with_rest(
                &path,
                kind,
                &fake.ground_truth("BTCUSDT", until),
                sealed_hour,
            );
        }
        let footer = metadata(&file_path(root, &key("BTCUSDT", kind), hour));
        assert_eq!(
            (
                footer["coverage_from"].clone(),
                footer["coverage_to"].clone()
            ),
            (hour.start().to_string(), hour.end().to_string()),
            "{kind}: the finished hour vouches for all of it"
        );
        let unique: BTreeSet<i64> = sealed_keys.iter().copied().collect();
        assert_eq!(unique.len(), sealed_keys.len(), "{kind}: no row twice");
        let before_stop = received.get(&kind).cloned().unwrap_or_default();
        let lost: Vec<_> = before_stop.difference(&unique).collect();
        assert!(
            lost.is_empty(),
            "{kind}: rows received before the stop are missing: {lost:?}"
        );
    }
    // The hour kline's file, sealed again once its kline closed: the kline.
    let until = hour.end() + MICROS_PER_MINUTE;
    assert_file_matches_truth_with_rest(
        &file_path(root, &hour_klines, hour),
        hour_klines.kind,
        &fake.ground_truth("BTCUSDT", until),
        hour,
    );
    let leftovers: Vec<_> = walk_files(&root.join("data"))
        .into_iter()
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy().starts_with('.')
                    && name != binance_recorder::lock::LOCK_FILE_NAME
            })
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
    fake.shutdown().await;
}

/// Every row equals the exchange's row of the same key.
fn assert_rows_are_true(rows: &[Row], truth: &fake_binance::GroundTruth, kind: StreamKind) {
    for row in rows {
        match row {
            Row::Trade(trade) => {
                let want = truth
                    .trades
                    .iter()
                    .find(|want| want.id == trade.trade_id)
                    .expect("trade exists");
                assert_eq!(
                    (trade.price.to_string(), trade.trade_time),
                    (want.price.clone(), want.time_us)
                );
            }
            Row::AggTrade(agg) => {
                let want = truth
                    .agg_trades
                    .iter()
                    .find(|want| want.id == agg.agg_trade_id)
                    .expect("aggTrade exists");
                assert_eq!(
                    (agg.first_trade_id, agg.last_trade_id),
                    (want.first_trade_id, want.last_trade_id)
                );
            }
            Row::Kline(kline) => {
                let klines = &truth.klines[match kind {
                    StreamKind::Kline(interval) => interval.binance_name(),
                    _ => unreachable!("kline rows only in kline files"),
                }];
                let want = klines
                    .iter()
                    .find(|want| want.open_time_us == kline.open_time)
                    .expect("kline exists");
                assert_eq!(
                    (kline.close.to_string(), kline.trade_count),
                    (want.close.clone(), want.trade_count)
                );
            }
        }
    }
}
