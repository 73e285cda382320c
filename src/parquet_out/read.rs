//! Reading sealed files back: the footer's metadata and summary, and the
//! rows, so that a late row can be merged into its hour's file. Files of
//! every [`SchemaVersion`] this release knows are read; the caller that
//! writes them again writes the current version.

use std::fs::File;
use std::path::Path;

use arrow_array::{
    Array, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::domain::{
    AggTradeRow, Decimal8, KlineRow, Row, Source, StreamKind, TimeUs, TradeRow, UnfilledRange,
    MAX_EXCHANGE_TIME_US, MIN_EXCHANGE_ID,
};

use super::schema::{schema_of_version, SchemaVersion};
use super::ParquetOutError;

/// What a restart, a late reseal, `backfill` and `verify` need to know of
/// a sealed file from its footer alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSummary {
    /// The file's `schema_version`: a file older than
    /// [`SchemaVersion::CURRENT`] is rewritten when its hour is resealed.
    pub schema_version: SchemaVersion,
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
    pub row_count: u64,
    pub unfilled: Vec<UnfilledRange>,
    /// `delivered_at`: the file is a delivered contract's last hour.
    pub delivered_at: Option<TimeUs>,
    /// `clock_offset_us`, when the file has one: a reseal keeps it.
    pub clock_offset_us: Option<i64>,
    /// `stopped_at`: written at an orderly stop before its hour was
    /// finished; the next run finishes the hour.
    pub stopped_at: Option<TimeUs>,
}

/// Why a footer's key-value metadata is not a valid [`SealedSummary`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("no schema_version in the metadata: not a file of this recorder")]
    NoSchemaVersion,
    #[error(
        "schema_version {text:?} is not one this release reads (1 or 2); a newer release may have written it"
    )]
    UnknownSchemaVersion { text: String },
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

/// Reads a sealed file's [`SealedSummary`] from its footer. A file of a
/// schema version this release does not know is an error that names it.
pub fn read_summary(path: &Path) -> Result<SealedSummary, ParquetOutError> {
    let metadata = read_metadata(path)?;
    parse_summary(&metadata).map_err(|error| ParquetOutError::Invalid {
        path: path.to_path_buf(),
        kind: "metadata".into(),
        reason: error.to_string(),
    })
}

fn metadata_value<'a>(metadata: &'a [(String, String)], key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The [`SchemaVersion`] a footer's `schema_version` names.
pub fn parse_schema_version(metadata: &[(String, String)]) -> Result<SchemaVersion, SummaryError> {
    let text = metadata_value(metadata, "schema_version").ok_or(SummaryError::NoSchemaVersion)?;
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(SchemaVersion::from_number)
        .ok_or_else(|| SummaryError::UnknownSchemaVersion {
            text: text.chars().take(100).collect(),
        })
}

/// The [`SealedSummary`] of a footer's key-value metadata. Pure, so that
/// property tests can feed it anything a damaged disk could hold.
///
/// Keys and hole bounds are ids (klines: open times, µs) or times, so each
/// must lie between -1 and [`MAX_EXCHANGE_TIME_US`]: a corrupt value is
/// refused here rather than overflowing hour arithmetic at restart.
pub fn parse_summary(metadata: &[(String, String)]) -> Result<SealedSummary, SummaryError> {
    let schema_version = parse_schema_version(metadata)?;
    let value = |key: &str| metadata_value(metadata, key);
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
    // Optional: a value that does not parse is as good as none (the rows
    // are fine; only a later hour would be judged owed again).
    let delivered_at = ranged_key_of("delivered_at").ok().flatten();
    let clock_offset_us = key_of("clock_offset_us").ok().flatten();
    let stopped_at = ranged_key_of("stopped_at").ok().flatten();
    Ok(SealedSummary {
        schema_version,
        first_key,
        last_key,
        row_count,
        unfilled,
        delivered_at,
        clock_offset_us,
        stopped_at,
    })
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, ParquetOutError> {
    let input = File::open(path).map_err(|source| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(input).map_err(|source| ParquetOutError::Encode {
        path: path.to_path_buf(),
        source,
    })
}

fn key_value_pairs<T: parquet::file::reader::ChunkReader + 'static>(
    builder: &ParquetRecordBatchReaderBuilder<T>,
) -> Vec<(String, String)> {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|pair| (pair.key, pair.value.unwrap_or_default()))
        .collect()
}

/// The [`SealedSummary`] of a sealed file held in memory, such as an
/// object read back from a bucket; `name` says in errors where it came from.
pub fn summary_from_bytes(
    name: &Path,
    bytes: bytes::Bytes,
) -> Result<SealedSummary, ParquetOutError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|source| {
        ParquetOutError::Encode {
            path: name.to_path_buf(),
            source,
        }
    })?;
    parse_summary(&key_value_pairs(&builder)).map_err(|error| ParquetOutError::Invalid {
        path: name.to_path_buf(),
        kind: "metadata".into(),
        reason: error.to_string(),
    })
}

/// The key-value metadata of a sealed file.
pub fn read_metadata(path: &Path) -> Result<Vec<(String, String)>, ParquetOutError> {
    Ok(key_value_pairs(&open_reader(path)?))
}

/// Reads a sealed file of any schema version this release knows back into
/// rows. The columns must be exactly those of the version its footer names
/// (a version-2 file with a `symbol` column is refused).
pub fn read_hour_file(path: &Path, kind: StreamKind) -> Result<Vec<Row>, ParquetOutError> {
    let mut reader = HourFileReader::open(path, kind)?;
    let mut rows = Vec::new();
    while let Some(batch) = reader.next_rows() {
        rows.extend(batch?);
    }
    Ok(rows)
}

/// A sealed file read back a batch of rows at a time (the Arrow reader's
/// 1,024), each batch checked as [`read_hour_file`] checks the file: what
/// a reseal merges late rows into without holding the hour in memory.
pub struct HourFileReader {
    path: std::path::PathBuf,
    kind: StreamKind,
    version: SchemaVersion,
    expected: arrow_schema::SchemaRef,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    n_rows: u64,
}

impl HourFileReader {
    pub fn open(path: &Path, kind: StreamKind) -> Result<HourFileReader, ParquetOutError> {
        let builder = open_reader(path)?;
        let version = parse_schema_version(&key_value_pairs(&builder)).map_err(|error| {
            ParquetOutError::Invalid {
                path: path.to_path_buf(),
                kind: kind.path_name(),
                reason: error.to_string(),
            }
        })?;
        let n_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder.build().map_err(|source| ParquetOutError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(HourFileReader {
            path: path.to_path_buf(),
            kind,
            version,
            expected: schema_of_version(kind, version),
            reader,
            n_rows,
        })
    }

    /// The rows the footer counts.
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// The next batch's rows, in the file's order; `None` at the end.
    pub fn next_rows(&mut self) -> Option<Result<Vec<Row>, ParquetOutError>> {
        let batch = self.reader.next()?;
        Some(
            batch
                .map_err(|error| error.to_string())
                .and_then(|batch| {
                    if batch.schema().fields() != self.expected.fields() {
                        return Err(format!(
                            "schema {:?} is not the contract's for schema version {}",
                            batch.schema(),
                            self.version
                        ));
                    }
                    rows_from_batch(&batch, self.kind)
                })
                .map_err(|reason| self.invalid(reason)),
        )
    }

    /// This file breaks the contract, for `reason`.
    pub fn invalid(&self, reason: String) -> ParquetOutError {
        ParquetOutError::Invalid {
            path: self.path.clone(),
            kind: self.kind.path_name(),
            reason,
        }
    }
}

/// The column `name` of `batch` as an array of type `T`. Columns are
/// looked up by name, so versions that add or drop a column (version 1's
/// `symbol`) read alike.
fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| format!("column {name} is missing"))?;
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column {name} has type {}", array.data_type()))
}

/// The rows of a record batch of a file of `kind` (its schema's columns).
pub fn rows_from_batch(batch: &RecordBatch, kind: StreamKind) -> Result<Vec<Row>, String> {
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
    let times = |name: &str| column::<TimestampMicrosecondArray>(batch, name);
    let decimals = |name: &str| column::<Decimal128Array>(batch, name);
    let integers = |name: &str| column::<Int64Array>(batch, name);
    let booleans = |name: &str| column::<BooleanArray>(batch, name);
    let sources = column::<StringArray>(batch, "source")?;
    let source_of = |index: usize| match sources.value(index) {
        "rest" => Ok(Source::Rest),
        "ws" => Ok(Source::Ws),
        other => Err(format!("unknown source {other:?}")),
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    match kind {
        StreamKind::Trade => {
            let ids = integers("trade_id")?;
            let prices = decimals("price")?;
            let quantities = decimals("quantity")?;
            let trade_times = times("trade_time")?;
            let makers = booleans("is_buyer_maker")?;
            let best = booleans("is_best_match")?;
            let types = column::<StringArray>(batch, "trade_type")?;
            let events = times("event_time")?;
            let receives = times("recv_time")?;
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
            let ids = integers("agg_trade_id")?;
            let prices = decimals("price")?;
            let quantities = decimals("quantity")?;
            let firsts = integers("first_trade_id")?;
            let lasts = integers("last_trade_id")?;
            let trade_times = times("trade_time")?;
            let makers = booleans("is_buyer_maker")?;
            let best = booleans("is_best_match")?;
            let events = times("event_time")?;
            let receives = times("recv_time")?;
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
            let opens_at = times("open_time")?;
            let closes_at = times("close_time")?;
            let opens = decimals("open")?;
            let highs = decimals("high")?;
            let lows = decimals("low")?;
            let closes = decimals("close")?;
            let volumes = decimals("volume")?;
            let quote_volumes = decimals("quote_volume")?;
            let counts = integers("trade_count")?;
            let taker_base = decimals("taker_buy_base_volume")?;
            let taker_quote = decimals("taker_buy_quote_volume")?;
            let firsts = integers("first_trade_id")?;
            let lasts = integers("last_trade_id")?;
            let events = times("event_time")?;
            let receives = times("recv_time")?;
            for index in 0..batch.num_rows() {
                rows.push(Row::kline(KlineRow {
                    open_time: opens_at.value(index),
                    close_time: closes_at.value(index),
                    open: decimal(opens, index),
                    high: decimal(highs, index),
                    low: decimal(lows, index),
                    close: decimal(closes, index),
                    volume: decimal(volumes, index),
                    quote_volume: decimal(quote_volumes, index),
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
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Hour, KlineInterval, MICROS_PER_HOUR};
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

    fn version_seeds() -> Vec<Vec<u8>> {
        vec![b"2".to_vec(), b"1".to_vec()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn footer_metadata_never_panics_the_summary_or_verify(
            unfilled in fuzz_input(unfilled_seeds()),
            first_key in mutated(key_seeds()),
            row_count in mutated(key_seeds()),
            schema_version in mutated(version_seeds()),
        ) {
            let metadata: Vec<(String, String)> = [
                ("schema_version", schema_version),
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
        let pairs = |key: &str, value: &str| {
            vec![
                ("schema_version".to_owned(), "2".to_owned()),
                (key.to_owned(), value.to_owned()),
            ]
        };
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

    #[test]
    fn versions_one_and_two_are_read_and_any_other_is_refused_by_name() {
        let with_version = |text: &str| vec![("schema_version".to_owned(), text.to_owned())];
        for (text, version) in [("1", SchemaVersion::V1), ("2", SchemaVersion::V2)] {
            let summary = parse_summary(&with_version(text)).expect("known version");
            assert_eq!(summary.schema_version, version);
        }
        for text in ["3", "0", "two", ""] {
            let error = parse_summary(&with_version(text)).expect_err("unknown version");
            assert_eq!(
                error,
                SummaryError::UnknownSchemaVersion {
                    text: text.to_owned()
                }
            );
            assert!(
                error.to_string().contains("not one this release reads"),
                "{error}"
            );
        }
        assert_eq!(parse_summary(&[]), Err(SummaryError::NoSchemaVersion));
    }
}
