//! The columns and the footer of a file: the Arrow schema of each stream
//! kind in each schema version this release reads, the encodings, and the
//! key-value metadata of `docs/DATASET.md`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{
    DeltaBinaryPackedEncoderOptions, EnabledStatistics, WriterProperties, WriterVersion,
};
use parquet::schema::types::ColumnPath;

use crate::domain::{StreamKind, DECIMAL_PRECISION, DECIMAL_SCALE};

use super::{HourFile, RowCounts, SortedRows};

/// The dataset contract's version this release writes, as `schema_version`.
pub const SCHEMA_VERSION: u32 = SchemaVersion::CURRENT.number();

/// The schema versions this release reads. A file of another version is
/// refused with an error that names it, never guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaVersion {
    /// Releases up to 0.1.0: `symbol` was also the first column of every
    /// file, which made pandas and pyarrow fail to merge it with the Hive
    /// partition key of the same name.
    V1,
    /// The partition keys (`market`, `stream`, `symbol`, `date`) live only
    /// in the path, the file name and the key-value metadata.
    V2,
}

impl SchemaVersion {
    /// The version this release writes.
    pub const CURRENT: SchemaVersion = SchemaVersion::V2;

    /// The number written in `schema_version`.
    pub const fn number(self) -> u32 {
        match self {
            SchemaVersion::V1 => 1,
            SchemaVersion::V2 => 2,
        }
    }

    /// The version of a `schema_version` number, if this release reads it.
    pub fn from_number(number: u32) -> Option<SchemaVersion> {
        match number {
            1 => Some(SchemaVersion::V1),
            2 => Some(SchemaVersion::V2),
            _ => None,
        }
    }
}

impl std::fmt::Display for SchemaVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.number())
    }
}

pub(super) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(super) fn decimal_type() -> DataType {
    DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
}

/// The Arrow schema this release writes for a stream kind, in the
/// contract's column order.
pub fn schema_for(kind: StreamKind) -> SchemaRef {
    schema_of_version(kind, SchemaVersion::CURRENT)
}

/// The Arrow schema of a stream kind in `version`: version 1 had `symbol`
/// first, before the columns version 2 keeps.
pub fn schema_of_version(kind: StreamKind, version: SchemaVersion) -> SchemaRef {
    let mut fields = match version {
        SchemaVersion::V1 => vec![Field::new("symbol", DataType::Utf8, false)],
        SchemaVersion::V2 => Vec::new(),
    };
    fields.extend(match kind {
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
    });
    fields.push(Field::new("source", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Encodings and compression, chosen per column for size (docs/BENCHMARKS.md,
/// "File size", has the figures of each choice and of those not taken).
/// The decimal columns' statistics are not the writer's: `write.rs`
/// computes their bounds from the values (`DecimalBounds`), cheaper than
/// its comparisons of 16-byte values row by row.
/// zstd keeps one compression context per column writer, sized by level and
/// by the largest page it compressed, so the level is set per column too.
pub(super) fn writer_properties(kind: StreamKind, metadata: Vec<KeyValue>) -> WriterProperties {
    let zstd = |level: i32| {
        Compression::ZSTD(ZstdLevel::try_new(level).expect("1, 7 and 9 are valid zstd levels"))
    };
    let schema = schema_for(kind);
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        // Level 9 on ids and times: levels 14 to 19 take 1 to 5 % off
        // those columns but add 0.4 to 1.2 s to the seal of a million rows.
        .set_compression(zstd(9))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // No page locations: no reader of the contract uses them without
        // a column index (which is not written either), and they cost
        // about 20 bytes a column in every file.
        .set_offset_index_disabled(true)
        .set_max_row_group_row_count(Some(4 * 1024 * 1024))
        .set_key_value_metadata(Some(metadata));
    for field in schema.fields() {
        let column = ColumnPath::from(field.name().as_str());
        builder = match field.data_type() {
            // A few distinct values (`source`, `trade_type`): dictionary.
            // The pages are dictionary indices, a few bytes; level 1 makes
            // them no bigger and its context is the smallest. Every
            // dictionary column falls back to PLAIN if its dictionary
            // outgrows its page (1 MiB): the writer's own fallback for
            // version 2 files is delta byte array, which polars cannot
            // read on decimals.
            DataType::Utf8 => builder
                .set_column_dictionary_enabled(column.clone(), true)
                .set_column_encoding(column.clone(), Encoding::PLAIN)
                .set_column_compression(column, zstd(1)),
            // One bit a row, bit-packed rather than RLE: zstd finds the
            // runs itself, and more. `is_buyer_maker` 8 to 19 % smaller on
            // real trades and aggTrades (an all-true column: 13 bytes more).
            DataType::Boolean => builder.set_column_encoding(column, Encoding::PLAIN),
            DataType::Int64 | DataType::Timestamp(..) => {
                let builder =
                    builder.set_column_encoding(column.clone(), Encoding::DELTA_BINARY_PACKED);
                match delta_layout(kind, field.name()) {
                    Some(layout) => {
                        builder.set_column_delta_binary_packed_encoder_options(column, layout)
                    }
                    None => builder,
                }
            }
            // Quantities repeat across an hour (round lots): plain values
            // are 10 % bigger than dictionary indices. Level 7 is as small
            // as 9 on them and halves the context of a 1 MiB dictionary
            // page (5.49 MiB instead of 10.49).
            DataType::Decimal128(..) if field.name() == "quantity" => builder
                .set_column_statistics_enabled(column.clone(), EnabledStatistics::None)
                .set_column_dictionary_enabled(column.clone(), true)
                .set_column_encoding(column.clone(), Encoding::PLAIN)
                .set_column_compression(column, zstd(7)),
            // Prices (and kline values): plain. Neighbouring rows share
            // most of their 16 bytes, which zstd finds in plain values but
            // not in bit-packed dictionary indices: 22 and 24 % smaller
            // than dictionary on the two real BTCUSDT samples, 1.5 % on
            // ETHUSDT. (Not byte-stream-split or delta byte array: DuckDB
            // and polars cannot read either on decimals. Pages are not
            // capped below 20,480 rows: 16,384-row pages would shrink the
            // zstd context from 5.49 to 2.99 MiB but cost 3.5 % of the
            // prices of a real 21,313-trade hour.)
            DataType::Decimal128(..) => builder
                .set_column_statistics_enabled(column.clone(), EnabledStatistics::None)
                .set_column_encoding(column, Encoding::PLAIN),
            _ => builder,
        };
    }
    builder.build()
}

/// The delta encoding's block layout where it is not the writer's default
/// (blocks of 256 values in 4 miniblocks of 64; each block has one minimum
/// delta, each miniblock its own bit width). Measured on ten real samples
/// (docs/BENCHMARKS.md, "Delta blocks per column"): an aggTrade's trade
/// ids and receive time jump irregularly, and miniblocks of 32 values keep
/// one jump from widening 63 others; a trade's times move in small, even
/// steps, and miniblocks of 256 values spend fewer bytes on bit widths.
/// Blocks stay short (512 and 1,024 values; 2,048 saved a little more) so
/// that a step back, which lowers a block's minimum delta and widens all
/// of it, widens few values. Every other column is as small or smaller
/// with the default.
fn delta_layout(kind: StreamKind, column: &str) -> Option<DeltaBinaryPackedEncoderOptions> {
    let (block_size, miniblocks) = match (kind, column) {
        (StreamKind::AggTrade, "first_trade_id" | "last_trade_id" | "recv_time") => (512, 16),
        (StreamKind::Trade, "trade_time" | "event_time" | "recv_time") => (1024, 4),
        _ => return None,
    };
    Some(
        DeltaBinaryPackedEncoderOptions::try_new(block_size, miniblocks)
            .expect("blocks of a multiple of 128 values in miniblocks of a multiple of 32"),
    )
}

/// The Arrow writer's options: `properties`, and no `ARROW:schema` key.
/// That key (about 1 KB, base64 of the Arrow schema) only repeats what the
/// Parquet logical types already say: every reader of the contract reads
/// the same types without it (`timestamp[us, tz=UTC]` from a UTC-adjusted
/// microsecond timestamp, `decimal128(38, 8)`, `string`), and in a small
/// file it is the largest thing after the columns (a fifth of an hour of
/// 1m klines).
pub(super) fn writer_options(properties: WriterProperties) -> ArrowWriterOptions {
    ArrowWriterOptions::new()
        .with_properties(properties)
        .with_skip_arrow_metadata(true)
}

/// The footer's key-value metadata of a file but what its rows' count
/// gives ([`count_metadata`]); `market`, `stream` and `symbol` are here
/// (and in the path) rather than in columns.
pub(super) fn file_metadata<R: SortedRows>(file: &HourFile<R>) -> Vec<KeyValue> {
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
        ("unfilled", unfilled),
        ("coverage_from", file.coverage_from.to_string()),
        ("coverage_to", file.coverage_to.to_string()),
        ("clock_offset_us", clock_offset),
    ]
    .into_iter()
    .chain(file.delivered_at.map(|at| ("delivered_at", at.to_string())))
    .chain(file.stopped_at.map(|at| ("stopped_at", at.to_string())))
    .map(|(key, value)| KeyValue::new(key.to_owned(), value))
    .collect()
}

/// The footer's keys that say what the rows are, known once the writer
/// has counted them (they follow the others in the footer).
pub(super) fn count_metadata(counts: &RowCounts) -> Vec<KeyValue> {
    let n_ws = counts.n_rows - counts.n_rest;
    let optional_key = |key: Option<i64>| key.map_or("null".to_owned(), |key| key.to_string());
    [
        ("row_count", counts.n_rows.to_string()),
        (
            "rows_by_source",
            format!("{{\"ws\":{n_ws},\"rest\":{}}}", counts.n_rest),
        ),
        ("first_key", optional_key(counts.first_key)),
        ("last_key", optional_key(counts.last_key)),
    ]
    .into_iter()
    .map(|(key, value)| KeyValue::new(key.to_owned(), value))
    .collect()
}
