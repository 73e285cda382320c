//! The Parquet side of the dataset contract (`docs/DATASET.md`): the Arrow
//! schema of each stream kind, rows to record batches and back, the file
//! metadata, and the atomic write (temporary name, fsync, rename, directory
//! fsync). This module and the WAL are the only ones that touch data files.
//!
//! Encodings are chosen for size: ids and times are delta-encoded (they
//! mostly grow by small steps); decimals, `symbol`, `source` and
//! `trade_type` are dictionary-encoded (an hour holds few distinct prices;
//! byte-stream-split would be smaller but DuckDB cannot read it on
//! decimals); every page is zstd-compressed.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::domain::{
    AggTradeRow, Decimal8, Hour, KlineRow, Row, Source, StreamKey, StreamKind, TimeUs, TradeRow,
    UnfilledRange, DECIMAL_PRECISION, DECIMAL_SCALE, MAX_EXCHANGE_TIME_US, MIN_EXCHANGE_ID,
};

/// The dataset contract's version, written as `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ParquetOutError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot encode {path}: {source}")]
    Encode {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build the record batch for {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("{path} does not hold a valid {kind} file: {reason}")]
    Invalid {
        path: PathBuf,
        kind: String,
        reason: String,
    },
}

/// Everything that goes into one sealed file.
#[derive(Debug, Clone)]
pub struct HourFile {
    pub key: StreamKey,
    pub hour: Hour,
    /// Sorted by key and unique; `seal` guarantees it.
    pub rows: Vec<Row>,
    pub unfilled: Vec<UnfilledRange>,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    pub clock_offset_us: Option<i64>,
}

/// `<root>/market=<m>/stream=<s>/symbol=<S>/date=<YYYY-MM-DD>/<S>-<s>-<YYYY-MM-DD>-<HH>.parquet`
pub fn hour_file_path(root: &Path, key: &StreamKey, hour: Hour) -> PathBuf {
    let stream = key.kind.path_name();
    let date = hour.date_text();
    root.join(format!("market={}", key.market))
        .join(format!("stream={stream}"))
        .join(format!("symbol={}", key.symbol))
        .join(format!("date={date}"))
        .join(format!(
            "{}-{stream}-{date}-{}.parquet",
            key.symbol,
            hour.hour_of_day_text()
        ))
}

/// The hours of `key` that have a sealed file under `root`, ascending.
/// Names that do not parse are skipped (they are not ours).
pub fn sealed_hours(root: &Path, key: &StreamKey) -> Vec<Hour> {
    let stream_dir = hour_file_path(root, key, Hour::containing(0))
        .parent()
        .and_then(Path::parent)
        .expect("hour file paths have a date and a symbol directory")
        .to_path_buf();
    let Ok(dates) = std::fs::read_dir(&stream_dir) else {
        return Vec::new();
    };
    let mut hours = Vec::new();
    for date_entry in dates.flatten() {
        let Ok(files) = std::fs::read_dir(date_entry.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".parquet") else {
                continue;
            };
            // <S>-<s>-<YYYY-MM-DD>-<HH>: the last 13 characters are the hour.
            let Some(hour_text) = stem
                .len()
                .checked_sub(13)
                .and_then(|start| stem.get(start..))
            else {
                continue;
            };
            let Ok(time) = chrono::NaiveDateTime::parse_from_str(
                &format!("{hour_text}:00:00"),
                "%Y-%m-%d-%H:%M:%S",
            ) else {
                continue;
            };
            let hour = Hour::containing(time.and_utc().timestamp_micros());
            if hour_file_path(root, key, hour) == file.path() {
                hours.push(hour);
            }
        }
    }
    hours.sort();
    hours
}

/// Removes the temporary files an interrupted seal left under `root`
/// (`.<name>.parquet.tmp`: never complete, never visible to readers) and
/// returns their paths. Run at start, under the directory lock.
pub fn remove_temporary_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        let entries = match fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".parquet.tmp") {
                fs::remove_file(&path)?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// Moves an unreadable sealed file aside (`<name>.parquet.corrupt`, kept
/// for inspection) and returns where it went.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let aside = path.with_extension("parquet.corrupt");
    fs::rename(path, &aside)?;
    if let Some(directory) = path.parent() {
        sync_directory(directory)?;
    }
    Ok(aside)
}

/// What a restart needs to know of a sealed file: its last key and the
/// holes it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSummary {
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
    pub row_count: u64,
    pub unfilled: Vec<UnfilledRange>,
}

/// Why a footer's key-value metadata is not a valid [`SealedSummary`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("{key} {text:?} is not an integer")]
    NotAnInteger { key: &'static str, text: String },
    #[error("{key} {value} is out of range (from -1 to the end of year 9999)")]
    KeyOutOfRange { key: &'static str, value: i64 },
    #[error("unfilled is not a list of holes: {0}")]
    UnfilledSyntax(String),
    #[error(
        "unfilled hole {index} has {field} {value}, out of range (from -1 to the end of year 9999)"
    )]
    UnfilledOutOfRange {
        index: usize,
        field: &'static str,
        value: i64,
    },
}

/// Reads a sealed file's [`SealedSummary`] from its footer.
pub fn read_summary(path: &Path) -> Result<SealedSummary, ParquetOutError> {
    let metadata = read_metadata(path)?;
    parse_summary(&metadata).map_err(|error| ParquetOutError::Invalid {
        path: path.to_path_buf(),
        kind: "metadata".into(),
        reason: error.to_string(),
    })
}

/// The [`SealedSummary`] of a footer's key-value metadata. Pure, so that
/// property tests can feed it anything a damaged disk could hold.
///
/// Keys and hole bounds are ids (klines: open times, µs) or times, so each
/// must lie between -1 and [`MAX_EXCHANGE_TIME_US`]: a corrupt value is
/// refused here rather than overflowing hour arithmetic at restart.
pub fn parse_summary(metadata: &[(String, String)]) -> Result<SealedSummary, SummaryError> {
    let value = |key: &str| {
        metadata
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    let key_of = |key: &'static str| match value(key) {
        None | Some("null") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| SummaryError::NotAnInteger {
                key,
                text: text.chars().take(100).collect(),
            }),
    };
    let in_range = |value: i64| (MIN_EXCHANGE_ID..=MAX_EXCHANGE_TIME_US).contains(&value);
    let ranged_key_of = |key: &'static str| match key_of(key)? {
        Some(value) if !in_range(value) => Err(SummaryError::KeyOutOfRange { key, value }),
        other => Ok(other),
    };
    let first_key = ranged_key_of("first_key")?;
    let last_key = ranged_key_of("last_key")?;
    let row_count = u64::try_from(key_of("row_count")?.unwrap_or(0)).unwrap_or(0);
    let unfilled: Vec<UnfilledRange> = match value("unfilled") {
        None => Vec::new(),
        Some(text) => serde_json::from_str(text)
            .map_err(|error| SummaryError::UnfilledSyntax(error.to_string()))?,
    };
    for (index, range) in unfilled.iter().enumerate() {
        for (field, value) in [
            ("from", range.from),
            ("to", range.to),
            ("from_time", Some(range.from_time)),
            ("to_time", Some(range.to_time)),
        ] {
            if let Some(value) = value.filter(|value| !in_range(*value)) {
                return Err(SummaryError::UnfilledOutOfRange {
                    index,
                    field,
                    value,
                });
            }
        }
    }
    Ok(SealedSummary {
        first_key,
        last_key,
        row_count,
        unfilled,
    })
}

/// The temporary name a file is written under before its rename. It starts
/// with a dot (pyarrow's dataset discovery skips it) and never ends in
/// `.parquet` (no glob of readers matches it).
fn temporary_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    final_path.with_file_name(format!(".{name}.tmp"))
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn decimal_type() -> DataType {
    DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
}

/// The Arrow schema of a stream kind, in the contract's column order.
pub fn schema_for(kind: StreamKind) -> SchemaRef {
    let symbol = Field::new("symbol", DataType::Utf8, false);
    let source = Field::new("source", DataType::Utf8, false);
    let middle = match kind {
        StreamKind::Trade => vec![
            Field::new("trade_id", DataType::Int64, false),
            Field::new("price", decimal_type(), false),
            Field::new("quantity", decimal_type(), false),
            Field::new("trade_time", timestamp_type(), false),
            Field::new("is_buyer_maker", DataType::Boolean, false),
            Field::new("is_best_match", DataType::Boolean, true),
            Field::new("trade_type", DataType::Utf8, true),
            Field::new("event_time", timestamp_type(), true),
            Field::new("recv_time", timestamp_type(), true),
        ],
        StreamKind::AggTrade => vec![
            Field::new("agg_trade_id", DataType::Int64, false),
            Field::new("price", decimal_type(), false),
            Field::new("quantity", decimal_type(), false),
            Field::new("first_trade_id", DataType::Int64, false),
            Field::new("last_trade_id", DataType::Int64, false),
            Field::new("trade_time", timestamp_type(), false),
            Field::new("is_buyer_maker", DataType::Boolean, false),
            Field::new("is_best_match", DataType::Boolean, true),
            Field::new("event_time", timestamp_type(), true),
            Field::new("recv_time", timestamp_type(), true),
        ],
        StreamKind::Kline(_) => vec![
            Field::new("open_time", timestamp_type(), false),
            Field::new("close_time", timestamp_type(), false),
            Field::new("open", decimal_type(), false),
            Field::new("high", decimal_type(), false),
            Field::new("low", decimal_type(), false),
            Field::new("close", decimal_type(), false),
            Field::new("volume", decimal_type(), false),
            Field::new("quote_volume", decimal_type(), false),
            Field::new("trade_count", DataType::Int64, false),
            Field::new("taker_buy_base_volume", decimal_type(), false),
            Field::new("taker_buy_quote_volume", decimal_type(), false),
            Field::new("first_trade_id", DataType::Int64, true),
            Field::new("last_trade_id", DataType::Int64, true),
            Field::new("event_time", timestamp_type(), true),
            Field::new("recv_time", timestamp_type(), true),
        ],
    };
    let mut fields = vec![symbol];
    fields.extend(middle);
    fields.push(source);
    Arc::new(Schema::new(fields))
}

/// Column builders for one file, filled row by row.
struct Columns {
    schema: SchemaRef,
    symbol: StringBuilder,
    source: StringBuilder,
    int64: Vec<Int64Builder>,
    decimals: Vec<Decimal128Builder>,
    times: Vec<TimestampMicrosecondBuilder>,
    booleans: Vec<BooleanBuilder>,
    strings: Vec<StringBuilder>,
}

impl Columns {
    fn new(kind: StreamKind) -> Columns {
        let schema = schema_for(kind);
        let count = |wanted: &DataType| {
            schema
                .fields()
                .iter()
                .filter(|field| field.data_type() == wanted)
                .count()
        };
        let decimal_builder = || Decimal128Builder::new().with_data_type(decimal_type());
        let time_builder = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        Columns {
            symbol: StringBuilder::new(),
            source: StringBuilder::new(),
            int64: (0..count(&DataType::Int64))
                .map(|_| Int64Builder::new())
                .collect(),
            decimals: (0..count(&decimal_type()))
                .map(|_| decimal_builder())
                .collect(),
            times: (0..count(&timestamp_type()))
                .map(|_| time_builder())
                .collect(),
            booleans: (0..count(&DataType::Boolean))
                .map(|_| BooleanBuilder::new())
                .collect(),
            // Utf8 columns other than symbol and source.
            strings: (0..count(&DataType::Utf8) - 2)
                .map(|_| StringBuilder::new())
                .collect(),
            schema,
        }
    }

    fn push(&mut self, symbol: &str, row: &Row) {
        self.symbol.append_value(symbol);
        self.source.append_value(row.source().name());
        let decimal =
            |builder: &mut Decimal128Builder, value: Decimal8| builder.append_value(value.scaled());
        match row {
            Row::Trade(trade) => {
                self.int64[0].append_value(trade.trade_id);
                decimal(&mut self.decimals[0], trade.price);
                decimal(&mut self.decimals[1], trade.quantity);
                self.times[0].append_value(trade.trade_time);
                self.booleans[0].append_value(trade.is_buyer_maker);
                self.booleans[1].append_option(trade.is_best_match);
                self.strings[0].append_option(trade.trade_type.as_deref());
                self.times[1].append_option(trade.event_time);
                self.times[2].append_option(trade.recv_time);
            }
            Row::AggTrade(agg) => {
                self.int64[0].append_value(agg.agg_trade_id);
                decimal(&mut self.decimals[0], agg.price);
                decimal(&mut self.decimals[1], agg.quantity);
                self.int64[1].append_value(agg.first_trade_id);
                self.int64[2].append_value(agg.last_trade_id);
                self.times[0].append_value(agg.trade_time);
                self.booleans[0].append_value(agg.is_buyer_maker);
                self.booleans[1].append_option(agg.is_best_match);
                self.times[1].append_option(agg.event_time);
                self.times[2].append_option(agg.recv_time);
            }
            Row::Kline(kline) => {
                self.times[0].append_value(kline.open_time);
                self.times[1].append_value(kline.close_time);
                for (builder, value) in self.decimals.iter_mut().zip([
                    kline.open,
                    kline.high,
                    kline.low,
                    kline.close,
                    kline.volume,
                    kline.quote_volume,
                    kline.taker_buy_base_volume,
                    kline.taker_buy_quote_volume,
                ]) {
                    decimal(builder, value);
                }
                self.int64[0].append_value(kline.trade_count);
                self.int64[1].append_option(kline.first_trade_id);
                self.int64[2].append_option(kline.last_trade_id);
                self.times[2].append_option(kline.event_time);
                self.times[3].append_option(kline.recv_time);
            }
        }
    }

    /// Assembles the columns in schema order: builders of one type are
    /// consumed in the order their fields appear.
    fn finish(mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut int64 = self.int64.iter_mut();
        let mut decimals = self.decimals.iter_mut();
        let mut times = self.times.iter_mut();
        let mut booleans = self.booleans.iter_mut();
        let mut strings = self.strings.iter_mut();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let array: ArrayRef = match (field.name().as_str(), field.data_type()) {
                ("symbol", _) => Arc::new(self.symbol.finish()),
                ("source", _) => Arc::new(self.source.finish()),
                (_, DataType::Int64) => {
                    Arc::new(int64.next().expect("one builder per Int64 field").finish())
                }
                (_, DataType::Decimal128(..)) => Arc::new(
                    decimals
                        .next()
                        .expect("one builder per decimal field")
                        .finish(),
                ),
                (_, DataType::Timestamp(..)) => {
                    Arc::new(times.next().expect("one builder per time field").finish())
                }
                (_, DataType::Boolean) => Arc::new(
                    booleans
                        .next()
                        .expect("one builder per bool field")
                        .finish(),
                ),
                (_, DataType::Utf8) => Arc::new(
                    strings
                        .next()
                        .expect("one builder per string field")
                        .finish(),
                ),
                (_, other) => unreachable!("schema_for has no {other} field"),
            };
            arrays.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

fn writer_properties(kind: StreamKind, metadata: Vec<KeyValue>) -> WriterProperties {
    let schema = schema_for(kind);
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(9).expect("9 is a valid zstd level"),
        ))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(4 * 1024 * 1024))
        .set_key_value_metadata(Some(metadata));
    for field in schema.fields() {
        let column = ColumnPath::from(field.name().as_str());
        builder = match field.data_type() {
            DataType::Utf8 => builder.set_column_dictionary_enabled(column, true),
            DataType::Int64 | DataType::Timestamp(..) => {
                builder.set_column_encoding(column, Encoding::DELTA_BINARY_PACKED)
            }
            // Dictionary: an hour of prices has few distinct values. (Not
            // byte-stream-split: DuckDB cannot read it on decimals.)
            DataType::Decimal128(..) => builder.set_column_dictionary_enabled(column, true),
            _ => builder,
        };
    }
    builder.build()
}

fn file_metadata(file: &HourFile) -> Vec<KeyValue> {
    let n_rest = file
        .rows
        .iter()
        .filter(|row| row.source() == Source::Rest)
        .count();
    let n_ws = file.rows.len() - n_rest;
    let optional_key =
        |row: Option<&Row>| row.map_or("null".to_owned(), |row| row.key().to_string());
    let unfilled = serde_json::to_string(&file.unfilled).expect("unfilled ranges always serialise");
    let clock_offset = file
        .clock_offset_us
        .map_or("null".to_owned(), |offset| offset.to_string());
    [
        ("schema_version", SCHEMA_VERSION.to_string()),
        ("recorder_version", env!("CARGO_PKG_VERSION").to_owned()),
        ("market", file.key.market.name().to_owned()),
        ("stream", file.key.kind.path_name()),
        ("symbol", file.key.symbol.to_string()),
        ("hour", file.hour.hour_text()),
        ("row_count", file.rows.len().to_string()),
        (
            "rows_by_source",
            format!("{{\"ws\":{n_ws},\"rest\":{n_rest}}}"),
        ),
        ("first_key", optional_key(file.rows.first())),
        ("last_key", optional_key(file.rows.last())),
        ("unfilled", unfilled),
        ("coverage_from", file.coverage_from.to_string()),
        ("coverage_to", file.coverage_to.to_string()),
        ("clock_offset_us", clock_offset),
    ]
    .into_iter()
    .map(|(key, value)| KeyValue::new(key.to_owned(), value))
    .collect()
}

/// Writes `file` atomically under `root` and returns its final path.
///
/// Steps: encode to `.<name>.tmp` beside the final path, fsync the file,
/// rename it over the final name (replacing an older seal of the same hour),
/// fsync the directory. A crash at any step leaves either the old file or
/// the new one under the final name, never a partial one.
pub fn write_hour_file(root: &Path, file: &HourFile) -> Result<PathBuf, ParquetOutError> {
    write_hour_file_until(root, file, None)
}

/// The steps of writing a sealed file, in order; see ARCHITECTURE.md
/// ("Crash points") for what a crash after each one leaves and how a
/// restart handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealStep {
    /// `.<name>.parquet.tmp` written, not yet fsynced.
    Written,
    /// The temporary file fsynced.
    Synced,
    /// Renamed to its final name; the directory not yet fsynced.
    Renamed,
    /// The directory fsynced: the file is durable.
    DirectorySynced,
}

/// [`write_hour_file`] that returns right after `stop_after`, as if the
/// process died there (the crash-point tests' seam).
pub fn write_hour_file_until(
    root: &Path,
    file: &HourFile,
    stop_after: Option<SealStep>,
) -> Result<PathBuf, ParquetOutError> {
    let stop = |step: SealStep| stop_after == Some(step);
    let final_path = hour_file_path(root, &file.key, file.hour);
    let directory = final_path
        .parent()
        .expect("hour file paths always have a parent")
        .to_path_buf();
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ParquetOutError::Io { path, source }
    };
    fs::create_dir_all(&directory).map_err(io_error(&directory))?;
    let temporary = temporary_path(&final_path);

    let mut columns = Columns::new(file.key.kind);
    for row in &file.rows {
        columns.push(file.key.symbol.as_str(), row);
    }
    let batch = columns.finish().map_err(|source| ParquetOutError::Arrow {
        path: final_path.clone(),
        source,
    })?;
    let encode_error = |source| ParquetOutError::Encode {
        path: temporary.clone(),
        source,
    };
    let output = File::create(&temporary).map_err(io_error(&temporary))?;
    let properties = writer_properties(file.key.kind, file_metadata(file));
    let mut writer =
        ArrowWriter::try_new(output, batch.schema(), Some(properties)).map_err(encode_error)?;
    writer.write(&batch).map_err(encode_error)?;
    let output = writer.into_inner().map_err(encode_error)?;
    if stop(SealStep::Written) {
        return Ok(final_path);
    }
    output.sync_all().map_err(io_error(&temporary))?;
    drop(output);
    if stop(SealStep::Synced) {
        return Ok(final_path);
    }
    fs::rename(&temporary, &final_path).map_err(io_error(&final_path))?;
    if stop(SealStep::Renamed) {
        return Ok(final_path);
    }
    sync_directory(&directory).map_err(io_error(&directory))?;
    Ok(final_path)
}

/// Makes a rename or a delete in `directory` durable.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

/// The key-value metadata of a sealed file.
pub fn read_metadata(path: &Path) -> Result<Vec<(String, String)>, ParquetOutError> {
    let input = File::open(path).map_err(|source| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(input).map_err(|source| {
        ParquetOutError::Encode {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let pairs = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    Ok(pairs
        .into_iter()
        .map(|pair| (pair.key, pair.value.unwrap_or_default()))
        .collect())
}

/// Reads a sealed file back into rows, so a late row can be merged into it.
pub fn read_hour_file(path: &Path, kind: StreamKind) -> Result<Vec<Row>, ParquetOutError> {
    let invalid = |reason: String| ParquetOutError::Invalid {
        path: path.to_path_buf(),
        kind: kind.path_name(),
        reason,
    };
    let input = File::open(path).map_err(|source| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(input)
        .and_then(|builder| builder.build())
        .map_err(|source| ParquetOutError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    let expected = schema_for(kind);
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| invalid(error.to_string()))?;
        if batch.schema().fields() != expected.fields() {
            return Err(invalid(format!(
                "schema {:?} is not the contract's",
                batch.schema()
            )));
        }
        rows.extend(rows_from_batch(&batch, kind).map_err(invalid)?);
    }
    Ok(rows)
}

fn rows_from_batch(batch: &RecordBatch, kind: StreamKind) -> Result<Vec<Row>, String> {
    let column = |index: usize| batch.column(index).clone();
    fn cast<T: 'static>(array: &ArrayRef) -> Result<&T, String> {
        array
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| format!("unexpected array type {}", array.data_type()))
    }
    fn optional_i64(array: &Int64Array, index: usize) -> Option<i64> {
        array.is_valid(index).then(|| array.value(index))
    }
    fn optional_time(array: &TimestampMicrosecondArray, index: usize) -> Option<i64> {
        array.is_valid(index).then(|| array.value(index))
    }
    fn optional_bool(array: &BooleanArray, index: usize) -> Option<bool> {
        array.is_valid(index).then(|| array.value(index))
    }
    let decimal = |array: &Decimal128Array, index: usize| Decimal8::from_scaled(array.value(index));
    let last = batch.num_columns() - 1;
    let sources = column(last);
    let sources = cast::<StringArray>(&sources)?;
    let source_of = |index: usize| match sources.value(index) {
        "rest" => Ok(Source::Rest),
        "ws" => Ok(Source::Ws),
        other => Err(format!("unknown source {other:?}")),
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    let columns: Vec<ArrayRef> = (1..last).map(column).collect();
    match kind {
        StreamKind::Trade => {
            let ids = cast::<Int64Array>(&columns[0])?;
            let prices = cast::<Decimal128Array>(&columns[1])?;
            let quantities = cast::<Decimal128Array>(&columns[2])?;
            let trade_times = cast::<TimestampMicrosecondArray>(&columns[3])?;
            let makers = cast::<BooleanArray>(&columns[4])?;
            let best = cast::<BooleanArray>(&columns[5])?;
            let types = cast::<StringArray>(&columns[6])?;
            let events = cast::<TimestampMicrosecondArray>(&columns[7])?;
            let receives = cast::<TimestampMicrosecondArray>(&columns[8])?;
            for index in 0..batch.num_rows() {
                rows.push(Row::Trade(TradeRow {
                    trade_id: ids.value(index),
                    price: decimal(prices, index),
                    quantity: decimal(quantities, index),
                    trade_time: trade_times.value(index),
                    is_buyer_maker: makers.value(index),
                    is_best_match: optional_bool(best, index),
                    trade_type: types.is_valid(index).then(|| types.value(index).to_owned()),
                    event_time: optional_time(events, index),
                    recv_time: optional_time(receives, index),
                    source: source_of(index)?,
                }));
            }
        }
        StreamKind::AggTrade => {
            let ids = cast::<Int64Array>(&columns[0])?;
            let prices = cast::<Decimal128Array>(&columns[1])?;
            let quantities = cast::<Decimal128Array>(&columns[2])?;
            let firsts = cast::<Int64Array>(&columns[3])?;
            let lasts = cast::<Int64Array>(&columns[4])?;
            let trade_times = cast::<TimestampMicrosecondArray>(&columns[5])?;
            let makers = cast::<BooleanArray>(&columns[6])?;
            let best = cast::<BooleanArray>(&columns[7])?;
            let events = cast::<TimestampMicrosecondArray>(&columns[8])?;
            let receives = cast::<TimestampMicrosecondArray>(&columns[9])?;
            for index in 0..batch.num_rows() {
                rows.push(Row::AggTrade(AggTradeRow {
                    agg_trade_id: ids.value(index),
                    price: decimal(prices, index),
                    quantity: decimal(quantities, index),
                    first_trade_id: firsts.value(index),
                    last_trade_id: lasts.value(index),
                    trade_time: trade_times.value(index),
                    is_buyer_maker: makers.value(index),
                    is_best_match: optional_bool(best, index),
                    event_time: optional_time(events, index),
                    recv_time: optional_time(receives, index),
                    source: source_of(index)?,
                }));
            }
        }
        StreamKind::Kline(_) => {
            let opens_at = cast::<TimestampMicrosecondArray>(&columns[0])?;
            let closes_at = cast::<TimestampMicrosecondArray>(&columns[1])?;
            let values: Vec<&Decimal128Array> = [2, 3, 4, 5, 6, 7]
                .iter()
                .map(|&index| cast::<Decimal128Array>(&columns[index]))
                .collect::<Result<_, _>>()?;
            let counts = cast::<Int64Array>(&columns[8])?;
            let taker_base = cast::<Decimal128Array>(&columns[9])?;
            let taker_quote = cast::<Decimal128Array>(&columns[10])?;
            let firsts = cast::<Int64Array>(&columns[11])?;
            let lasts = cast::<Int64Array>(&columns[12])?;
            let events = cast::<TimestampMicrosecondArray>(&columns[13])?;
            let receives = cast::<TimestampMicrosecondArray>(&columns[14])?;
            for index in 0..batch.num_rows() {
                rows.push(Row::Kline(KlineRow {
                    open_time: opens_at.value(index),
                    close_time: closes_at.value(index),
                    open: decimal(values[0], index),
                    high: decimal(values[1], index),
                    low: decimal(values[2], index),
                    close: decimal(values[3], index),
                    volume: decimal(values[4], index),
                    quote_volume: decimal(values[5], index),
                    trade_count: counts.value(index),
                    taker_buy_base_volume: decimal(taker_base, index),
                    taker_buy_quote_volume: decimal(taker_quote, index),
                    first_trade_id: optional_i64(firsts, index),
                    last_trade_id: optional_i64(lasts, index),
                    event_time: optional_time(events, index),
                    recv_time: optional_time(receives, index),
                    source: source_of(index)?,
                }));
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KlineInterval, Market, Symbol, MICROS_PER_HOUR};

    fn key(kind: StreamKind) -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind,
        }
    }

    fn decimal(text: &str) -> Decimal8 {
        text.parse().expect("valid decimal")
    }

    fn hour_file(kind: StreamKind, rows: Vec<Row>) -> HourFile {
        let hour = Hour::containing(1_723_161_600_000_000);
        HourFile {
            key: key(kind),
            hour,
            rows,
            unfilled: vec![],
            coverage_from: hour.start(),
            coverage_to: hour.end(),
            clock_offset_us: Some(-1234),
        }
    }

    fn sample_rows(kind: StreamKind) -> Vec<Row> {
        let base = 1_723_161_600_000_000;
        match kind {
            StreamKind::Trade => (0..3)
                .map(|index| {
                    Row::Trade(TradeRow {
                        trade_id: 3_735_693_016 + index,
                        price: decimal("61685.99000000"),
                        quantity: decimal("0.00017000"),
                        trade_time: base + index * 1000,
                        is_buyer_maker: index % 2 == 0,
                        is_best_match: Some(true),
                        trade_type: None,
                        event_time: if index == 2 {
                            None
                        } else {
                            Some(base + index * 1000 + 5)
                        },
                        recv_time: if index == 2 {
                            None
                        } else {
                            Some(base + index * 1000 + 9)
                        },
                        source: if index == 2 { Source::Rest } else { Source::Ws },
                    })
                })
                .collect(),
            StreamKind::AggTrade => vec![Row::AggTrade(AggTradeRow {
                agg_trade_id: 3_800_397_495,
                price: decimal("87648.23000000"),
                quantity: decimal("0.00119000"),
                first_trade_id: 5_723_703_861,
                last_trade_id: 5_723_703_862,
                trade_time: base + 39_409,
                is_buyer_maker: true,
                is_best_match: Some(true),
                event_time: Some(base + 40_000),
                recv_time: Some(base + 41_000),
                source: Source::Ws,
            })],
            StreamKind::Kline(_) => vec![Row::Kline(KlineRow {
                open_time: base,
                close_time: base + 59_999_999,
                open: decimal("1"),
                high: decimal("2"),
                low: decimal("0.5"),
                close: decimal("1.5"),
                volume: decimal("10"),
                quote_volume: decimal("15"),
                trade_count: 7,
                taker_buy_base_volume: decimal("4"),
                taker_buy_quote_volume: decimal("6"),
                first_trade_id: Some(1),
                last_trade_id: Some(7),
                event_time: Some(base + 60_000_100),
                recv_time: Some(base + 60_000_900),
                source: Source::Ws,
            })],
        }
    }

    #[test]
    fn every_kind_round_trips_with_metadata() {
        let root = tempfile::tempdir().expect("temporary directory");
        for kind in [
            StreamKind::Trade,
            StreamKind::AggTrade,
            StreamKind::Kline(KlineInterval::Minute1),
        ] {
            let file = hour_file(kind, sample_rows(kind));
            let path = write_hour_file(root.path(), &file).expect("writes");
            assert!(path.to_string_lossy().ends_with(&format!(
                "market=spot/stream={0}/symbol=BTCUSDT/date=2024-08-09/BTCUSDT-{0}-2024-08-09-00.parquet",
                kind.path_name()
            )));
            assert_eq!(read_hour_file(&path, kind).expect("reads"), file.rows);
            let metadata: std::collections::HashMap<_, _> = read_metadata(&path)
                .expect("metadata")
                .into_iter()
                .collect();
            assert_eq!(metadata["schema_version"], "1");
            assert_eq!(metadata["hour"], "2024-08-09T00");
            assert_eq!(metadata["row_count"], file.rows.len().to_string());
            assert_eq!(metadata["first_key"], file.rows[0].key().to_string());
            assert_eq!(metadata["unfilled"], "[]");
            assert_eq!(metadata["clock_offset_us"], "-1234");
            assert_eq!(
                metadata["coverage_to"],
                (file.hour.start() + MICROS_PER_HOUR).to_string()
            );
        }
        let trade_metadata: std::collections::HashMap<_, _> = read_metadata(&hour_file_path(
            root.path(),
            &key(StreamKind::Trade),
            hour_file(StreamKind::Trade, vec![]).hour,
        ))
        .expect("metadata")
        .into_iter()
        .collect();
        assert_eq!(trade_metadata["rows_by_source"], r#"{"ws":2,"rest":1}"#);
    }

    #[test]
    fn empty_hour_still_gets_a_file_and_no_temporary_is_left() {
        let root = tempfile::tempdir().expect("temporary directory");
        let file = hour_file(StreamKind::Trade, vec![]);
        let path = write_hour_file(root.path(), &file).expect("writes");
        assert_eq!(
            read_hour_file(&path, StreamKind::Trade).expect("reads"),
            vec![]
        );
        let metadata: std::collections::HashMap<_, _> = read_metadata(&path)
            .expect("metadata")
            .into_iter()
            .collect();
        assert_eq!(metadata["rows_by_source"], r#"{"ws":0,"rest":0}"#);
        assert_eq!(metadata["first_key"], "null");
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("lists")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the sealed file remains: {names:?}");
    }

    /// The real spot aggTrades of the shared data (data.binance.vision CSV,
    /// no header, µs times) with every contract column filled as a stream row
    /// would be; prints bytes per row (the issue's target: near 10).
    #[test]
    fn real_agg_trades_encode_compactly() {
        let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../shared/data/real/spot/aggTrades/BTCUSDT-aggTrades-2026-01-01.first5000rows.csv",
        );
        let text = fs::read_to_string(&csv).expect("the shared data sits beside the repository");
        let rows: Vec<Row> = text
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let time: i64 = fields[5].parse().expect("time");
                Row::AggTrade(AggTradeRow {
                    agg_trade_id: fields[0].parse().expect("id"),
                    price: decimal(fields[1]),
                    quantity: decimal(fields[2]),
                    first_trade_id: fields[3].parse().expect("first"),
                    last_trade_id: fields[4].parse().expect("last"),
                    trade_time: time,
                    is_buyer_maker: fields[6] == "True",
                    is_best_match: Some(fields[7] == "True"),
                    event_time: Some(time + 1_000),
                    recv_time: Some(time + 23_456),
                    source: Source::Ws,
                })
            })
            .collect();
        assert_eq!(rows.len(), 5000);
        let root = tempfile::tempdir().expect("temporary directory");
        let path = write_hour_file(root.path(), &hour_file(StreamKind::AggTrade, rows.clone()))
            .expect("writes");
        let bytes = fs::metadata(&path).expect("file").len();
        let bytes_per_row = bytes as f64 / rows.len() as f64;
        println!(
            "real aggTrades: {bytes} bytes for {} rows = {bytes_per_row:.2} B/row",
            rows.len()
        );
        assert_eq!(
            read_hour_file(&path, StreamKind::AggTrade).expect("reads"),
            rows
        );
        assert!(bytes_per_row < 16.0, "{bytes_per_row:.2} B/row");
    }

    #[test]
    fn temporary_name_never_matches_parquet_glob() {
        let temporary = temporary_path(Path::new("/x/BTCUSDT-trade-2024-08-09-00.parquet"));
        let name = temporary
            .file_name()
            .and_then(|name| name.to_str())
            .expect("name");
        assert!(
            name.starts_with('.') && !name.ends_with(".parquet"),
            "{name}"
        );
    }
}

/// Fuzz-style property tests of the footer metadata parser: whatever a
/// damaged disk holds in `first_key`, `row_count` or `unfilled`, the answer
/// is a summary or a [`SummaryError`], never a panic.
#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{KlineInterval, MICROS_PER_HOUR};
    use crate::fuzz_input::{fuzz_input, mutated};

    const HOUR_START: i64 = 1_767_229_200_000_000;

    fn unfilled_seeds() -> Vec<Vec<u8>> {
        let holes = vec![
            UnfilledRange {
                from: Some(6_329_162_611),
                to: Some(6_329_162_700),
                from_time: HOUR_START + 1_000_000,
                to_time: HOUR_START + 2_000_000,
                reason: "rest unreachable".into(),
            },
            UnfilledRange {
                from: None,
                to: Some(HOUR_START + 60_000_000),
                from_time: HOUR_START,
                to_time: HOUR_START + MICROS_PER_HOUR - 1,
                reason: "not served".into(),
            },
        ];
        vec![
            serde_json::to_vec(&holes).expect("holes serialise"),
            b"[]".to_vec(),
        ]
    }

    fn key_seeds() -> Vec<Vec<u8>> {
        ["6329162610", "null", "0", "-1", "3600"]
            .into_iter()
            .map(|text| text.as_bytes().to_vec())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn footer_metadata_never_panics_the_summary_or_verify(
            unfilled in fuzz_input(unfilled_seeds()),
            first_key in mutated(key_seeds()),
            row_count in mutated(key_seeds()),
        ) {
            let metadata: Vec<(String, String)> = [
                ("first_key", first_key),
                ("last_key", b"6329162700".to_vec()),
                ("row_count", row_count),
                ("unfilled", unfilled),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), String::from_utf8_lossy(&value).into_owned()))
            .collect();
            if let Ok(summary) = parse_summary(&metadata) {
                // What restart and verify do with a summary must not panic
                // either (verify builds kline grids from the holes).
                let hour = Hour::containing(HOUR_START);
                for kind in [
                    StreamKind::Trade,
                    StreamKind::Kline(KlineInterval::Second1),
                    StreamKind::Kline(KlineInterval::Month1),
                ] {
                    let _ = crate::verify::check_stream(kind, &[(hour, summary.clone())]);
                }
            }
        }
    }

    #[test]
    fn out_of_range_holes_and_keys_are_typed_errors() {
        let pairs = |key: &str, value: &str| vec![(key.to_owned(), value.to_owned())];
        assert!(matches!(
            parse_summary(&pairs("first_key", "-9223372036854775808")),
            Err(SummaryError::KeyOutOfRange { .. })
        ));
        assert!(matches!(
            parse_summary(&pairs("last_key", "1e5")),
            Err(SummaryError::NotAnInteger { .. })
        ));
        let far = r#"[{"from":1,"to":2,"from_time":0,"to_time":9223372036854775807,"reason":"x"}]"#;
        assert!(matches!(
            parse_summary(&pairs("unfilled", far)),
            Err(SummaryError::UnfilledOutOfRange {
                field: "to_time",
                ..
            })
        ));
        assert!(matches!(
            parse_summary(&pairs("unfilled", "[[[[")),
            Err(SummaryError::UnfilledSyntax(_))
        ));
        let summary = parse_summary(&pairs("row_count", "-5")).expect("valid");
        assert_eq!(summary.row_count, 0, "a negative count reads as none");
    }
}
