//! `verify` against one defect at a time: a good dataset (built through
//! `parquet_out`, see `verify_dataset.rs`) verifies clean, and each broken
//! copy is reported with exactly its problem and exit code 1. Files of an
//! unusual schema are written with arrow/parquet directly. The table is
//! compared with a committed snapshot; the binary is run for the exit
//! codes, the JSON and `backfill --holes`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Decimal128Array, Float64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use binance_recorder::domain::{Row, StreamKind};
use binance_recorder::verify::{self, ProblemKind, Report, Selection};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::support::run_binary;
use crate::verify_dataset::*;

fn verify_root(root: &Path) -> Report {
    verify::verify(root, &Selection::default()).expect("verify runs")
}

/// Asserts the report holds exactly one problem, of `kind`, and exits 1.
fn assert_only(report: &Report, kind: ProblemKind) {
    let kinds: Vec<(ProblemKind, &str)> = report
        .problems
        .iter()
        .map(|problem| (problem.kind, problem.detail.as_str()))
        .collect();
    assert_eq!(
        kinds.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
        vec![kind],
        "{kinds:#?}\n{}",
        report.render_table()
    );
    assert_eq!(report.exit_code(), 1);
}

fn good_dataset() -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let root = directory.path().join("data");
    write_good_dataset(&root);
    (directory, root)
}

/// The second hour: every defect is put there, between two good hours.
fn middle() -> binance_recorder::domain::Hour {
    hours()[1]
}

/// Reads a file into one batch and its key-value metadata.
fn read_batch(path: &Path) -> (RecordBatch, Vec<(String, String)>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).expect("open"))
        .expect("footer");
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|pair| (pair.key, pair.value.unwrap_or_default()))
        .collect();
    let batches: Vec<RecordBatch> = builder
        .build()
        .expect("reader")
        .map(|batch| batch.expect("batch"))
        .collect();
    let schema = batches[0].schema();
    (arrow_select_concat(&schema, &batches), metadata)
}

fn arrow_select_concat(schema: &Arc<Schema>, batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "test files are one batch");
    RecordBatch::try_new(schema.clone(), batches[0].columns().to_vec()).expect("batch")
}

/// Writes `batch` with `metadata` over `path`, as another tool would.
fn write_batch(path: &Path, batch: &RecordBatch, metadata: &[(String, String)]) {
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
                .collect(),
        ))
        .build();
    let output = fs::File::create(path).expect("create");
    let mut writer =
        ArrowWriter::try_new(output, batch.schema(), Some(properties)).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
}

/// Replaces column `name` by `array` under `field`.
fn replace_column(batch: &RecordBatch, name: &str, field: Field, array: ArrayRef) -> RecordBatch {
    let schema = batch.schema();
    let index = schema.index_of(name).expect("column present");
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    fields[index] = field;
    columns[index] = array;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

fn set(metadata: &mut Vec<(String, String)>, key: &str, value: &str) {
    metadata.retain(|(name, _)| name != key);
    metadata.push((key.to_owned(), value.to_owned()));
}

/// Rewrites the middle trade file through arrow with `change`.
fn rewrite_middle_trade_file(
    root: &Path,
    change: impl FnOnce(RecordBatch, &mut Vec<(String, String)>) -> RecordBatch,
) {
    let path = path_of(root, StreamKind::Trade, middle());
    let (batch, mut metadata) = read_batch(&path);
    let batch = change(batch, &mut metadata);
    write_batch(&path, &batch, &metadata);
}

/// Writes the middle trade file again through `parquet_out` with its rows changed.
fn rewrite_middle_trade_rows(root: &Path, change: impl FnOnce(&mut Vec<Row>)) {
    let mut file = good_file(StreamKind::Trade, middle());
    change(&mut file.rows);
    write(root, &file);
}

fn time_field(name: &str, unit: TimeUnit, zone: Option<&str>, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(unit, zone.map(Into::into)),
        nullable,
    )
}

#[test]
fn verify_finds_the_good_dataset_clean() {
    let (_directory, root) = good_dataset();
    let report = verify_root(&root);
    assert!(report.is_clean(), "{}", report.render_table());
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.n_files, 9);
    assert_eq!(report.n_declared(), 1, "the aggTrade hole is declared");
    assert_eq!(report.n_partial(), 1, "the first kline hour is partial");
}

#[test]
fn verify_reports_a_deleted_hour_file() {
    let (_directory, root) = good_dataset();
    fs::remove_file(path_of(&root, StreamKind::Trade, middle())).expect("remove");
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::MissingHour);
    assert_eq!(report.problems[0].hour, Some(middle()));
}

#[test]
fn verify_accepts_hours_missing_where_coverage_says_the_recorder_was_down() {
    let (_directory, root) = good_dataset();
    fs::remove_file(path_of(&root, StreamKind::Trade, middle())).expect("remove");
    let mut before = good_file(StreamKind::Trade, hours()[0]);
    before.coverage_to = before.hour.end() - 60_000_000;
    write(&root, &before);
    let report = verify_root(&root);
    assert!(report.is_clean(), "{}", report.render_table());
}

#[test]
fn verify_reports_a_truncated_file() {
    let (_directory, root) = good_dataset();
    let path = path_of(&root, StreamKind::Trade, middle());
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    assert_only(&verify_root(&root), ProblemKind::Unreadable);
}

#[test]
fn verify_reports_a_zero_byte_file() {
    let (_directory, root) = good_dataset();
    fs::write(path_of(&root, StreamKind::AggTrade, middle()), b"").expect("empty");
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Unreadable);
    assert!(
        report.problems[0].detail.contains("0 bytes"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_a_stray_file_in_the_tree() {
    let (_directory, root) = good_dataset();
    let directory = path_of(&root, StreamKind::Trade, middle());
    fs::write(directory.with_file_name("notes.txt"), b"hello").expect("stray");
    assert_only(&verify_root(&root), ProblemKind::StrayFile);
}

#[test]
fn verify_reports_a_temporary_file_in_the_tree() {
    let (_directory, root) = good_dataset();
    let path = path_of(&root, StreamKind::Trade, middle());
    fs::write(
        path.with_file_name(".BTCUSDT-trade-2026-11-23-23.parquet.tmp"),
        b"PAR1",
    )
    .expect("temporary");
    assert_only(&verify_root(&root), ProblemKind::TemporaryFile);
}

#[test]
fn verify_reports_a_wrong_name() {
    let (_directory, root) = good_dataset();
    let path = path_of(&root, StreamKind::Trade, middle());
    fs::rename(
        &path,
        path.with_file_name("BTCUSDT-trades-2026-11-23-23.parquet"),
    )
    .expect("rename");
    assert_only(&verify_root(&root), ProblemKind::WrongName);
}

#[test]
fn verify_reports_a_row_removed_inside_a_file() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_rows(&root, |rows| {
        rows.remove(10);
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::UndeclaredIdGap);
    assert!(
        report.problems[0].detail.contains("1 ids missing inside"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_the_first_row_of_an_hour_removed() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_rows(&root, |rows| {
        rows.remove(0);
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::UndeclaredIdGap);
    assert!(
        report.problems[0].detail.contains("between the files"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_a_kline_removed() {
    let (_directory, root) = good_dataset();
    let mut file = good_file(KLINE, middle());
    file.rows.remove(30);
    write(&root, &file);
    assert_only(&verify_root(&root), ProblemKind::UndeclaredMissingKlines);
}

#[test]
fn verify_reports_a_row_in_two_files() {
    let (_directory, root) = good_dataset();
    let last_hour = hours()[2];
    let mut file = good_file(StreamKind::Trade, last_hour);
    let mut copied = good_file(StreamKind::Trade, middle())
        .rows
        .pop()
        .expect("rows");
    if let Row::Trade(trade) = &mut copied {
        trade.trade_time = last_hour.start();
    }
    file.rows.insert(0, copied);
    write(&root, &file);
    assert_only(&verify_root(&root), ProblemKind::DuplicateKey);
}

/// A price changed in a file written by the recorder leaves every footer
/// value true: nothing in the file says what the price was. Only a
/// comparison with another source (`verify --against` with the exchange's
/// archives) finds it.
#[test]
fn verify_cannot_see_a_changed_price_without_against() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_rows(&root, |rows| {
        if let Row::Trade(trade) = &mut rows[7] {
            trade.price = binance_recorder::domain::Decimal8::from_scaled(1);
        }
    });
    assert!(verify_root(&root).is_clean());
}

#[test]
fn verify_reports_two_swapped_rows() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_rows(&root, |rows| rows.swap(5, 6));
    assert_only(&verify_root(&root), ProblemKind::NotSorted);
}

#[test]
fn verify_reports_a_row_in_the_wrong_hour() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_rows(&root, |rows| {
        if let Row::Trade(trade) = &mut rows[0] {
            trade.trade_time -= 60_000_000;
        }
    });
    assert_only(&verify_root(&root), ProblemKind::RowOutsideHour);
}

#[test]
fn verify_reports_float_prices() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, _| {
        let prices = batch
            .column_by_name("price")
            .expect("price")
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .expect("decimal")
            .iter()
            .map(|value| value.map(|value| value as f64 / 1e8))
            .collect::<Float64Array>();
        replace_column(
            &batch,
            "price",
            Field::new("price", DataType::Float64, false),
            Arc::new(prices),
        )
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Schema);
    assert!(
        report.problems[0].detail.contains("float"),
        "{:?}",
        report.problems
    );
}

fn retime_columns(batch: RecordBatch, unit: TimeUnit, zone: Option<&str>) -> RecordBatch {
    let mut batch = batch;
    for name in ["trade_time", "event_time", "recv_time"] {
        let column = batch.column_by_name(name).expect("time column").clone();
        let micros = column
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("µs");
        let nullable = name != "trade_time";
        let array: ArrayRef = match unit {
            TimeUnit::Millisecond => Arc::new(
                micros
                    .iter()
                    .map(|value| value.map(|value| value / 1_000))
                    .collect::<TimestampMillisecondArray>()
                    .with_timezone_opt(zone.map(str::to_owned)),
            ),
            _ => Arc::new(micros.clone().with_timezone_opt(zone.map(str::to_owned))),
        };
        batch = replace_column(&batch, name, time_field(name, unit, zone, nullable), array);
    }
    batch
}

#[test]
fn verify_reports_millisecond_timestamps() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, _| {
        retime_columns(batch, TimeUnit::Millisecond, Some("UTC"))
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Schema);
    assert!(
        report.problems[0].detail.contains("millisecond"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_naive_timestamps() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, _| {
        retime_columns(batch, TimeUnit::Microsecond, None)
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Schema);
    assert!(
        report.problems[0].detail.contains("naive"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_a_dropped_column() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, _| {
        let mut batch = batch;
        let index = batch.schema().index_of("quantity").expect("quantity");
        batch.remove_column(index);
        batch
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Schema);
    assert!(
        report.problems[0].detail.contains("quantity missing"),
        "{:?}",
        report.problems
    );
}

/// Adds a `symbol` column first when the file has none (schema version 2).
fn with_symbol_column(batch: RecordBatch) -> RecordBatch {
    if batch.schema().index_of("symbol").is_ok() {
        return batch;
    }
    let mut fields = vec![Field::new("symbol", DataType::Utf8, false)];
    fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![
        "BTCUSDT";
        batch.num_rows()
    ]))];
    columns.extend(batch.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

#[test]
fn verify_reports_a_symbol_column_in_a_version_2_file() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, metadata| {
        set(metadata, "schema_version", "2");
        with_symbol_column(batch)
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::Schema);
    assert!(
        report.problems[0].detail.contains("symbol"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_accepts_a_symbol_column_in_a_version_1_file() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, metadata| {
        set(metadata, "schema_version", "1");
        with_symbol_column(batch)
    });
    let report = verify_root(&root);
    assert!(report.is_clean(), "{}", report.render_table());
}

#[test]
fn verify_reports_missing_metadata() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, metadata| {
        metadata.clear();
        batch
    });
    assert_only(&verify_root(&root), ProblemKind::MissingMetadata);
}

#[test]
fn verify_reports_metadata_that_disagrees_with_the_rows() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, metadata| {
        set(metadata, "row_count", "41");
        batch
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::MetadataMismatch);
    assert!(
        report.problems[0].detail.contains("row_count 41"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_a_wrong_source() {
    let (_directory, root) = good_dataset();
    rewrite_middle_trade_file(&root, |batch, _| {
        let sources = batch
            .column_by_name("source")
            .expect("source")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings")
            .iter()
            .enumerate()
            .map(|(index, value)| if index == 9 { Some("wss") } else { value })
            .collect::<StringArray>();
        replace_column(
            &batch,
            "source",
            Field::new("source", DataType::Utf8, false),
            Arc::new(sources),
        )
    });
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::UnknownSource);
    assert!(
        report.problems[0].detail.contains("wss"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_reports_a_corrupt_file_beside_the_file() {
    let (_directory, root) = good_dataset();
    let path = path_of(&root, StreamKind::Trade, middle());
    fs::copy(&path, path.with_extension("parquet.corrupt")).expect("copy");
    assert_only(&verify_root(&root), ProblemKind::CorruptFile);
}

#[test]
fn verify_reports_a_corrupt_file_in_the_corrupt_folder() {
    let (_directory, root) = good_dataset();
    let path = path_of(&root, StreamKind::Trade, middle());
    let aside = root
        .join(verify::CORRUPT_DIR)
        .join(path.strip_prefix(&root).expect("under root"))
        .with_extension("parquet.corrupt");
    fs::create_dir_all(aside.parent().expect("parent")).expect("folder");
    // The recorder moves the file aside and rebuilds the hour: here the
    // hour is not rebuilt, and only the moved-aside file is reported.
    fs::rename(&path, &aside).expect("move aside");
    let report = verify_root(&root);
    assert_only(&report, ProblemKind::CorruptFile);
    assert_eq!(report.problems[0].hour, Some(middle()));
}

#[test]
fn verify_selects_by_stream_and_hour() {
    let (_directory, root) = good_dataset();
    fs::remove_file(path_of(&root, StreamKind::Trade, middle())).expect("remove");
    let selection = Selection {
        kind: Some(StreamKind::AggTrade),
        ..Selection::default()
    };
    let report = verify::verify(&root, &selection).expect("verify runs");
    assert!(report.is_clean());
    assert_eq!(report.streams.len(), 1);
    let selection = Selection {
        from: Some(hours()[2]),
        ..Selection::default()
    };
    let report = verify::verify(&root, &selection).expect("verify runs");
    assert!(report.is_clean(), "{}", report.render_table());
    assert_eq!(report.n_files, 3);
}

/// The table a person reads, for the good dataset with one hour deleted
/// and a stray file (set UPDATE_SNAPSHOTS=1 to rewrite the expected text).
#[test]
fn verify_table_snapshot() {
    let (_directory, root) = good_dataset();
    fs::remove_file(path_of(&root, StreamKind::Trade, middle())).expect("remove");
    let stray = path_of(&root, KLINE, hours()[2]).with_file_name("notes.txt");
    fs::write(stray, b"hello").expect("stray");
    let table = verify_root(&root).render_table();
    let expected_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recorder/verify_table.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        fs::write(&expected_path, &table).expect("snapshot written");
    }
    let expected = fs::read_to_string(&expected_path).expect("snapshot present");
    assert_eq!(table, expected, "\n{table}");
}

#[tokio::test]
async fn verify_binary_exit_codes_and_json() {
    let (directory, root) = good_dataset();
    let json_path = directory.path().join("report.json");
    let root_argument = root.display().to_string();
    let json_argument = json_path.display().to_string();
    let output = run_binary(vec![
        "verify".into(),
        "--root".into(),
        root_argument.clone(),
        "--json".into(),
        json_argument.clone(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("2026-11-23T22"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json_path).expect("json written"))
            .expect("json parses");
    assert_eq!(json["clean"], true);
    assert_eq!(json["holes"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["holes"][0]["from"], DECLARED_AGG_IDS.0);
    assert_eq!(json["holes"][0]["hour"], "2026-11-23T23");

    fs::remove_file(path_of(&root, StreamKind::Trade, middle())).expect("remove");
    let output = run_binary(vec![
        "verify".into(),
        "--root".into(),
        root_argument,
        "--json".into(),
        json_argument.clone(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json_path).expect("json written"))
            .expect("json parses");
    assert_eq!(json["problems"][0]["kind"], "missing_hour");
    assert_eq!(json["problems"][0]["stream"], "trade");
    assert_eq!(json["problems"][0]["hour"], "2026-11-23T23");

    let output = run_binary(vec![
        "verify".into(),
        "--root".into(),
        directory.path().join("absent").display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    let output = run_binary(vec![
        "verify".into(),
        "--config".into(),
        directory.path().join("absent.toml").display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
}

/// A config for the dataset under `directory/data` whose REST address
/// refuses connections (a port bound then released), one attempt per page.
fn config_with_rest_down(directory: &Path) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let root = directory.display();
    let text = format!(
        r#"
[storage]
data_dir = "{root}/data"
wal_dir = "{root}/wal"
quarantine_dir = "{root}/quarantine"

[fill]
max_attempts = 1

[markets.spot]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
symbols = ["BTCUSDT"]
streams = ["trade", "aggTrade", "kline_1m"]
"#
    );
    let path = directory.join("config.toml");
    fs::write(&path, text).expect("config written");
    path
}

/// REST down: the declared hole stays open, no file is replaced, and
/// backfill says so and exits 1 (it used to print "resealed: N" and exit 0).
#[tokio::test]
async fn verify_then_backfill_with_rest_down_leaves_the_holes_open_and_exits_1() {
    let (directory, root) = good_dataset();
    let config = config_with_rest_down(directory.path())
        .display()
        .to_string();
    let declared_path = path_of(&root, StreamKind::AggTrade, middle());
    let before = fs::read(&declared_path).expect("read");

    let output = run_binary(vec!["backfill".into(), "--config".into(), config.clone()]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("spot/aggTrade/BTCUSDT 2026-11-23T23: asked 1 holes, 0 rows from REST, 0 closed, 1 open")
            && stdout.contains("still open: ids 5050 ..= 5052, 2026-11-23T23:13:30.000017Z")
            && stdout.contains("resealed: 0, holes left: 1 (1 REST may still fill)"),
        "{stdout}"
    );
    assert_eq!(
        fs::read(&declared_path).expect("read"),
        before,
        "file untouched"
    );

    // The same through verify's hole list.
    let json_path = directory.path().join("report.json");
    let output = run_binary(vec![
        "verify".into(),
        "--root".into(),
        root.display().to_string(),
        "--json".into(),
        json_path.display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(0));
    let holes = json_path.display().to_string();
    let output = run_binary(vec![
        "backfill".into(),
        "--config".into(),
        config.clone(),
        "--holes".into(),
        holes,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("holes left: 1 (1 REST may still fill)"),
        "{stdout}"
    );

    // A hole list it cannot use, or no config: could not run.
    fs::write(&json_path, b"{\"holes\": 3}").expect("write");
    let output = run_binary(vec![
        "backfill".into(),
        "--config".into(),
        config,
        "--holes".into(),
        json_path.display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    let output = run_binary(vec![
        "backfill".into(),
        "--config".into(),
        directory.path().join("absent.toml").display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
}

/// A dataset of schema version 1 (a `symbol` column in every file), as the
/// release before issue 13 wrote it, committed under
/// `tests/fixtures/dataset-v1-hours/` (see its SOURCES.md): verify reads it clean
/// whatever version the writer is at now.
#[test]
fn verify_reads_the_committed_version_1_dataset() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dataset-v1-hours");
    if std::env::var_os("WRITE_V1_FIXTURE").is_some() {
        assert_eq!(
            binance_recorder::parquet_out::SCHEMA_VERSION,
            1,
            "the fixture is of version 1: write it with a version-1 writer only"
        );
        write_good_dataset(&fixture);
    }
    let report = verify_root(&fixture);
    assert!(report.is_clean(), "{}", report.render_table());
    assert_eq!(
        (report.n_files, report.n_declared(), report.n_partial()),
        (9, 1, 1)
    );
    let (_, metadata) = read_batch(&path_of(&fixture, StreamKind::Trade, middle()));
    assert!(metadata.contains(&("schema_version".to_owned(), "1".to_owned())));
}
