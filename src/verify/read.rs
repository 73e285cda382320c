//! What `verify` reads from one Parquet file, and nothing more: the footer
//! (key-value metadata, Arrow schema, row counts, column statistics), the
//! key column, the time column (trades, aggTrades; a kline's key is its
//! time) and the `source` column only where the statistics do not already
//! say every row has one source. Columns whose type is not the contract's
//! are not read (the schema check reports them), so a damaged file never
//! feeds wrong numbers to the row checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow_array::{Array, Int64Array, LargeStringArray, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::domain::StreamKind;

/// The column a stream kind is sorted and unique by.
pub fn key_column(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Trade => "trade_id",
        StreamKind::AggTrade => "agg_trade_id",
        StreamKind::Kline(_) => "open_time",
    }
}

/// The column that decides a row's hour, when it is not the key.
pub fn time_column(kind: StreamKind) -> Option<&'static str> {
    match kind {
        StreamKind::Trade | StreamKind::AggTrade => Some("trade_time"),
        StreamKind::Kline(_) => None,
    }
}

/// Rows by `source` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub n_ws: u64,
    pub n_rest: u64,
    /// Any other value (`null` for a null), with its count.
    pub others: BTreeMap<String, u64>,
}

impl SourceCounts {
    fn add(&mut self, value: Option<&str>, count: u64) {
        match value {
            Some("ws") => self.n_ws += count,
            Some("rest") => self.n_rest += count,
            Some(other) => *self.others.entry(other.to_owned()).or_default() += count,
            None => *self.others.entry("null".to_owned()).or_default() += count,
        }
    }
}

/// What was read from one file.
#[derive(Debug, Clone, Default)]
pub struct FileContents {
    /// The footer's key-value metadata, in file order.
    pub metadata: Vec<(String, String)>,
    /// Rows, from the footer.
    pub n_rows: u64,
    /// Column names and Arrow types, in file order.
    pub columns: Vec<(String, DataType)>,
    /// The key column as i64 (ids; kline open times in µs); `None` when
    /// the column is absent or not of the contract's type.
    pub keys: Option<Vec<i64>>,
    /// The trade time column in µs (trades, aggTrades), same rule.
    pub times: Option<Vec<i64>>,
    /// `None` when the column is absent or not a string column.
    pub sources: Option<SourceCounts>,
}

/// Why a file could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open: {0}")]
    Open(String),
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("footer unreadable: {0}")]
    Footer(String),
    #[error("column data unreadable: {0}")]
    Data(String),
}

fn is_micros_utc(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) if is_utc(zone))
}

/// The zone names that mean UTC.
pub fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "+00:00" | "Etc/UTC" | "Z")
}

/// Reads what the checks need from `path` (see the module doc).
pub fn read_file(path: &Path, kind: StreamKind) -> Result<FileContents, ReadError> {
    let file = File::open(path).map_err(|error| ReadError::Open(error.to_string()))?;
    let length = file
        .metadata()
        .map_err(|error| ReadError::Open(error.to_string()))?
        .len();
    if length == 0 {
        return Err(ReadError::Empty);
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| ReadError::Footer(error.to_string()))?;
    let metadata = builder.metadata().clone();
    let file_metadata = metadata.file_metadata();
    let mut contents = FileContents {
        metadata: file_metadata
            .key_value_metadata()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|pair| (pair.key.clone(), pair.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        n_rows: u64::try_from(file_metadata.num_rows()).unwrap_or(0),
        columns: builder
            .schema()
            .fields()
            .iter()
            .map(|field| (field.name().clone(), field.data_type().clone()))
            .collect(),
        ..FileContents::default()
    };
    let index_of = |name: &str, wanted: &dyn Fn(&DataType) -> bool| {
        contents
            .columns
            .iter()
            .position(|(column, data_type)| column == name && wanted(data_type))
    };
    let key_index = index_of(key_column(kind), &|data_type| match kind {
        StreamKind::Kline(_) => is_micros_utc(data_type),
        _ => *data_type == DataType::Int64,
    });
    let time_index = time_column(kind).and_then(|name| index_of(name, &is_micros_utc));
    let source_index = index_of("source", &|data_type| {
        matches!(data_type, DataType::Utf8 | DataType::LargeUtf8)
    });

    // The source column is read only when the statistics leave a doubt:
    // a chunk whose min equals its max and has no null holds one value.
    // Flat schema (one leaf per field) only: then the Arrow field index is
    // the Parquet column index the statistics are kept under.
    let flat = metadata.file_metadata().schema_descr().num_columns() == contents.columns.len();
    let mut sources_from_statistics = source_index
        .filter(|_| flat)
        .map(|_| SourceCounts::default());
    if let (Some(index), Some(counts)) = (source_index, sources_from_statistics.as_mut()) {
        for row_group in metadata.row_groups() {
            let statistics = row_group.column(index).statistics();
            let single = statistics.and_then(|statistics| {
                let min = statistics.min_bytes_opt()?;
                let max = statistics.max_bytes_opt()?;
                (min == max && statistics.null_count_opt() == Some(0)).then_some(min)
            });
            match single {
                Some(value) => counts.add(
                    Some(&String::from_utf8_lossy(value)),
                    u64::try_from(row_group.num_rows()).unwrap_or(0),
                ),
                None if row_group.num_rows() == 0 => {}
                None => {
                    sources_from_statistics = None;
                    break;
                }
            }
        }
    }
    let read_sources = source_index.is_some() && sources_from_statistics.is_none();
    contents.sources = sources_from_statistics;

    let mut wanted: Vec<usize> = [key_index, time_index].into_iter().flatten().collect();
    if read_sources {
        wanted.extend(source_index);
    }
    if wanted.is_empty() {
        return Ok(contents);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|error| ReadError::Data(error.to_string()))?;
    let capacity = usize::try_from(contents.n_rows).unwrap_or(0);
    let mut keys = key_index.map(|_| Vec::with_capacity(capacity));
    let mut times = time_index.map(|_| Vec::with_capacity(capacity));
    let mut sources = read_sources.then(SourceCounts::default);
    for batch in reader {
        let batch = batch.map_err(|error| ReadError::Data(error.to_string()))?;
        let column_named = |name: &str| batch.column_by_name(name);
        if let Some(keys) = keys.as_mut() {
            let column = column_named(key_column(kind)).ok_or_else(|| missing(key_column(kind)))?;
            append_i64(keys, column.as_ref())?;
        }
        if let (Some(times), Some(name)) = (times.as_mut(), time_column(kind)) {
            let column = column_named(name).ok_or_else(|| missing(name))?;
            append_i64(times, column.as_ref())?;
        }
        if let Some(sources) = sources.as_mut() {
            let column = column_named("source").ok_or_else(|| missing("source"))?;
            count_sources(sources, column.as_ref())?;
        }
    }
    contents.keys = keys;
    contents.times = times;
    if sources.is_some() {
        contents.sources = sources;
    }
    Ok(contents)
}

fn missing(name: &str) -> ReadError {
    ReadError::Data(format!("column {name} projected but not returned"))
}

fn append_i64(into: &mut Vec<i64>, array: &dyn Array) -> Result<(), ReadError> {
    // A null key or time is a broken file: the contract's key and time
    // columns are not nullable.
    if array.null_count() > 0 {
        return Err(ReadError::Data("null in a key or time column".into()));
    }
    let any = array.as_any();
    if let Some(array) = any.downcast_ref::<Int64Array>() {
        into.extend_from_slice(array.values());
    } else if let Some(array) = any.downcast_ref::<TimestampMicrosecondArray>() {
        into.extend_from_slice(array.values());
    } else {
        return Err(ReadError::Data(format!(
            "unexpected array type {}",
            array.data_type()
        )));
    }
    Ok(())
}

fn count_sources(counts: &mut SourceCounts, array: &dyn Array) -> Result<(), ReadError> {
    let any = array.as_any();
    if let Some(array) = any.downcast_ref::<StringArray>() {
        array.iter().for_each(|value| counts.add(value, 1));
    } else if let Some(array) = any.downcast_ref::<LargeStringArray>() {
        array.iter().for_each(|value| counts.add(value, 1));
    } else {
        return Err(ReadError::Data(format!(
            "source has type {}",
            array.data_type()
        )));
    }
    Ok(())
}
