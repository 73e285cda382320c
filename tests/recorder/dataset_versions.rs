//! A dataset of schema version 1 (written by 0.1.0, committed in
//! `tests/fixtures/dataset-v1`) under this release: `backfill` fills the
//! hole a version-1 file declares and rewrites that file as version 2,
//! with the rows REST returned; the files it had no reason to touch stay
//! version 1 and readable.

use std::sync::Arc;

use binance_recorder::config::Config;
use binance_recorder::domain::{Hour, Row, Source, StreamKind};
use binance_recorder::metrics::Counters;
use binance_recorder::parquet_out::{self, SchemaVersion};
use binance_recorder::recorder::backfill::backfill;
use fake_binance::FakeExchange;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_fills_a_version_one_files_hole_and_rewrites_it_as_version_two() {
    let hour = Hour::containing(FIXTURE_HOUR_START);
    // The fake's history covers the fixture's hour, whose first ten
    // minutes the ETHUSDT file declares as a hole.
    let fake = FakeExchange::start(fixture_hour_fake_config())
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let data = root.join("data");
    copy_fixture(&data);
    let config_text = recorder_toml(
        &fake,
        root,
        &["BTCUSDT", "ETHUSDT"],
        &["trade", "aggTrade", "kline_1m"],
    );
    let config = Config::from_toml(&config_text).expect("valid config");
    let declared_path = file_path(root, &key("ETHUSDT", StreamKind::Trade), hour);
    let before = parquet_out::read_summary(&declared_path).expect("version 1 summary");
    assert_eq!(before.schema_version, SchemaVersion::V1);
    let [hole] = before.unfilled.as_slice() else {
        panic!("the fixture declares one hole: {:?}", before.unfilled)
    };
    let hole = hole.clone();

    let summary = backfill(&config, None, None, None, Arc::new(Counters::default()))
        .await
        .expect("backfill runs");
    assert_eq!(
        (summary.n_files_with_holes, summary.n_files_resealed),
        (1, 1),
        "{summary:?}"
    );

    // Whether a hole with neither id known counts as closed is the fill
    // round's business (tested in gap_fill); here the file must be
    // version 2, with the rows REST returned for it.
    let after = parquet_out::read_summary(&declared_path).expect("version 2 summary");
    assert_eq!(after.schema_version, SchemaVersion::V2);
    let rows = parquet_out::read_hour_file(&declared_path, StreamKind::Trade).expect("rows");
    let truth = fake.ground_truth("ETHUSDT", hour.end());
    let truth_ids: Vec<i64> = truth
        .trades
        .iter()
        .filter(|trade| (hole.from_time..=hole.to_time).contains(&trade.time_us))
        .map(|trade| trade.id)
        .collect();
    assert!(!truth_ids.is_empty(), "the fake traded in the hole");
    let row_ids: Vec<i64> = rows
        .iter()
        .filter(|row| match row {
            Row::Trade(trade) => (hole.from_time..=hole.to_time).contains(&trade.trade_time),
            _ => false,
        })
        .map(Row::key)
        .collect();
    assert_eq!(
        row_ids, truth_ids,
        "the hole holds exactly the exchange's trades"
    );
    assert!(rows.iter().all(|row| row.source() == Source::Rest));
    assert!(rows.iter().all(|row| match row {
        Row::Trade(trade) => Hour::containing(trade.trade_time) == hour,
        _ => false,
    }));

    // Files without holes were not resealed: still version 1, still read.
    let untouched = file_path(root, &key("BTCUSDT", StreamKind::Trade), hour);
    let untouched_summary = parquet_out::read_summary(&untouched).expect("summary");
    assert_eq!(untouched_summary.schema_version, SchemaVersion::V1);
    assert_eq!(
        parquet_out::read_hour_file(&untouched, StreamKind::Trade)
            .expect("rows")
            .len(),
        3
    );
    fake.shutdown().await;
}
