//! Reconcile on real data: the shared official BTCUSDT aggTrades CSV (the
//! first 5,000 rows of data.binance.vision's 2026-01-01 file) replayed by
//! the fake as spot aggTrade events, recorded, and reconciled with that
//! same CSV, plain and zipped.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use binance_recorder::domain::{Hour, Row, StreamKind};
use binance_recorder::parquet_out::{self, HourFile};
use binance_recorder::reconcile::{
    self, exit_code, reconcile_paths, reports_json, ReconcileReport, StreamOverride,
};
use fake_binance::{FakeConfig, FakeExchange, Limits, ReplayConfig};

use crate::support::*;

const ROWS_IN_FILE: u64 = 5_000;

/// Writes `csv` into a zip as data.binance.vision does: one deflated CSV
/// named like the zip.
fn zip_like_the_archive(csv: &Path, zip_path: &Path) {
    let inner_name = zip_path
        .with_extension("csv")
        .file_name()
        .expect("zip has a name")
        .to_string_lossy()
        .into_owned();
    let mut writer = zip::ZipWriter::new(std::fs::File::create(zip_path).expect("zip created"));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file(inner_name, options).expect("zip entry");
    writer
        .write_all(&std::fs::read(csv).expect("CSV readable"))
        .expect("zip written");
    writer.finish().expect("zip finished");
}

/// Exactly the two changes: `deleted` missing on our side, the price of
/// `changed` differing, nothing else.
fn assert_exactly_the_two_changes(report: &ReconcileReport, deleted: i64, changed: i64) {
    assert_eq!(report.n_differences_ours(), 2, "{report}");
    assert_eq!(report.missing_on_our_side.count, 1, "{report}");
    assert_eq!(report.missing_on_our_side.examples[0].key, deleted);
    assert_eq!(report.values_differ.count, 1, "{report}");
    let example = &report.values_differ.examples[0];
    assert_eq!(example.key, changed);
    assert_eq!(example.differing_fields, vec!["price"]);
    assert_eq!(report.only_on_our_side.count, 0, "{report}");
    assert_eq!(report.n_archive_defects(), 0, "{report}");
    assert_eq!(report.not_recorded.count, 0, "{report}");
    assert_eq!(report.n_identical, ROWS_IN_FILE - 2);
    assert!(!report.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_agg_trades_reconcile_with_their_recording_then_show_exactly_two_changes() {
    let csv = real_data("spot/aggTrades/BTCUSDT-aggTrades-2026-01-01.first5000rows.csv");
    let fake = FakeExchange::start(FakeConfig {
        speed: 600.0,
        limits: Limits {
            ping_interval: Duration::from_secs(2),
            ..Limits::default()
        },
        replay: Some(ReplayConfig {
            files: vec![csv.clone()],
            lead_in: Duration::from_secs(20 * 60),
        }),
        ..FakeConfig::default()
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let recorder = RunningRecorder::start(&recorder_toml_patient(
        &fake,
        root,
        &["BTCUSDT"],
        &["aggTrade", "kline_1m"],
    ));
    // 2026-01-01T00: the CSV's rows span 00:00:00.039409 .. 00:12:19.347397.
    let hour = Hour::containing(1_767_225_600_000_000);
    let agg_key = key("BTCUSDT", StreamKind::AggTrade);
    let path = file_path(root, &agg_key, hour);
    wait_until(
        Duration::from_secs(120),
        "hour 2026-01-01T00 of aggTrades sealed",
        || path.exists(),
    )
    .await;
    let counters = recorder.stop().await;
    fake.shutdown().await;
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    let data = root.join("data");

    let clean =
        reconcile::reconcile(&data, &agg_key, std::slice::from_ref(&csv)).expect("reconcile runs");
    assert_eq!(clean.n_archive_rows, ROWS_IN_FILE, "{clean}");
    assert_eq!(clean.n_our_rows, ROWS_IN_FILE, "{clean}");
    assert_eq!(clean.n_identical, ROWS_IN_FILE, "{clean}");
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(clean.n_archive_defects(), 0, "{clean}");
    assert_eq!(clean.archives[0].time_unit, "µs");
    let text = clean.to_string();
    assert!(
        text.contains("2026-01-01T00:12:19.347397Z") && text.contains("result: clean"),
        "{text}"
    );

    // Break our copy: one row deleted, one price changed, the hour rewritten.
    let mut rows = parquet_out::read_hour_file(&path, StreamKind::AggTrade).expect("readable");
    let deleted = rows.remove(1_234).key();
    let Row::AggTrade(changed_row) = &mut rows[2_345] else {
        panic!("aggTrade rows only")
    };
    changed_row.price = "1.23".parse().expect("price");
    let changed = changed_row.agg_trade_id;
    let footer = metadata(&path);
    let time_of = |name: &str| footer[name].parse::<i64>().expect("coverage is a time");
    parquet_out::write_hour_file(
        &data,
        &HourFile {
            key: agg_key.clone(),
            hour,
            rows,
            unfilled: Vec::new(),
            coverage_from: time_of("coverage_from"),
            coverage_to: time_of("coverage_to"),
            clock_offset_us: None,
            delivered_at: None,
            stopped_at: None,
        },
    )
    .expect("hour rewritten");
    let broken =
        reconcile::reconcile(&data, &agg_key, std::slice::from_ref(&csv)).expect("reconcile runs");
    assert_exactly_the_two_changes(&broken, deleted, changed);

    // The same rows zipped as data.binance.vision serves them, the stream
    // inferred from the name.
    let zipped = root.join("BTCUSDT-aggTrades-2026-01-01.zip");
    zip_like_the_archive(&csv, &zipped);
    let reports =
        reconcile_paths(&data, &[zipped], &StreamOverride::default()).expect("reconcile runs");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].stream, "spot/aggTrade/BTCUSDT");
    assert_exactly_the_two_changes(&reports[0], deleted, changed);
    assert_eq!(exit_code(&reports), 1);
    let json: serde_json::Value =
        serde_json::from_str(&reports_json(&reports)).expect("valid JSON");
    assert_eq!(json[0]["values_differ"]["count"], 1);
    assert_eq!(
        json[0]["missing_on_our_side"]["examples"][0]["key"],
        deleted
    );

    // The same through the command line: `verify --against` prints the
    // reconciliation after the table, puts it in --json, and exits 1.
    let json_path = root.join("verify.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
        .args(["verify", "--root"])
        .arg(&data)
        .args(["--stream", "aggTrade", "--json"])
        .arg(&json_path)
        .arg("--against")
        .arg(&csv)
        .output()
        .expect("verify runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("spot/aggTrade/BTCUSDT"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON written"))
            .expect("valid JSON");
    assert_eq!(json["against"][0]["values_differ"]["count"], 1, "{json}");
}
