//! Writing a sealed file: rows to Arrow columns, encoded to a temporary
//! file in `<root>/.staging/`, fsynced, renamed into the partition tree,
//! and the folder fsynced. See ARCHITECTURE.md "Crash points".

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef, Decimal128Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, PageKey, PageStore, PageStoreArgs, PageStoreFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::domain::{Decimal8, Row, StreamKind, TimeUs};

use super::layout::{
    create_dir_durably, hour_file_path, staging_dir, staging_path, sync_directory,
};
use super::schema::{
    count_metadata, decimal_type, file_metadata, schema_for, writer_options, writer_properties,
};
use super::{HourFile, ParquetOutError, Piece, RowCounts, SortedRows};

/// Rows turned into Arrow columns at a time when a file is written: the
/// rows unpacked (224 bytes each) are what a seal holds beside the column
/// writers of a pass. Pages and row groups do not depend on it.
const ROWS_PER_BATCH: usize = 8_192;

/// One value of a row, as its column's builder takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell<'a> {
    Int64(Option<i64>),
    Decimal(Decimal8),
    Time(Option<TimeUs>),
    Boolean(Option<bool>),
    Text(Option<&'a str>),
}

/// The value of `row` in the column at `column` of its kind's schema
/// ([`schema_for`], whose order this follows).
fn cell(row: &Row, column: usize) -> Cell<'_> {
    use Cell::{Boolean, Decimal, Int64, Text, Time};
    let source = Text(Some(row.source().name()));
    match row {
        Row::Trade(trade) => match column {
            0 => Int64(Some(trade.trade_id)),
            1 => Decimal(trade.price),
            2 => Decimal(trade.quantity),
            3 => Time(Some(trade.trade_time)),
            4 => Boolean(Some(trade.is_buyer_maker)),
            5 => Boolean(trade.is_best_match),
            6 => Text(trade.trade_type.as_deref()),
            7 => Time(trade.event_time),
            8 => Time(trade.recv_time),
            9 => source,
            _ => unreachable!("a trade file has 10 columns, not {}", column + 1),
        },
        Row::AggTrade(agg) => match column {
            0 => Int64(Some(agg.agg_trade_id)),
            1 => Decimal(agg.price),
            2 => Decimal(agg.quantity),
            3 => Int64(Some(agg.first_trade_id)),
            4 => Int64(Some(agg.last_trade_id)),
            5 => Time(Some(agg.trade_time)),
            6 => Boolean(Some(agg.is_buyer_maker)),
            7 => Boolean(agg.is_best_match),
            8 => Time(agg.event_time),
            9 => Time(agg.recv_time),
            10 => source,
            _ => unreachable!("an aggTrade file has 11 columns, not {}", column + 1),
        },
        Row::Kline(kline) => match column {
            0 => Time(Some(kline.open_time)),
            1 => Time(Some(kline.close_time)),
            2 => Decimal(kline.open),
            3 => Decimal(kline.high),
            4 => Decimal(kline.low),
            5 => Decimal(kline.close),
            6 => Decimal(kline.volume),
            7 => Decimal(kline.quote_volume),
            8 => Int64(Some(kline.trade_count)),
            9 => Decimal(kline.taker_buy_base_volume),
            10 => Decimal(kline.taker_buy_quote_volume),
            11 => Int64(kline.first_trade_id),
            12 => Int64(kline.last_trade_id),
            13 => Time(kline.event_time),
            14 => Time(kline.recv_time),
            15 => source,
            _ => unreachable!("a kline file has 16 columns, not {}", column + 1),
        },
    }
}

/// The columns encoded together in each pass over an hour's rows, in
/// schema order: at most one decimal column in a pass. Decimals are the
/// columns with big pages (16 bytes a row, the quantity's dictionary up to
/// 1 MiB), so the big zstd contexts and page buffers: trades and aggTrades
/// are written in two passes (the id and the prices; the quantities and the
/// rest), klines in eight (a kline hour has 60 rows or fewer).
fn passes(schema: &SchemaRef) -> Vec<std::ops::Range<usize>> {
    let mut passes: Vec<std::ops::Range<usize>> = Vec::new();
    let mut has_decimal = false;
    for (column, field) in schema.fields().iter().enumerate() {
        let is_decimal = matches!(field.data_type(), DataType::Decimal128(..));
        match passes.last_mut() {
            Some(pass) if !(is_decimal && has_decimal) => {
                pass.end = column + 1;
                has_decimal |= is_decimal;
            }
            _ => {
                passes.push(column..column + 1);
                has_decimal = is_decimal;
            }
        }
    }
    passes
}

/// The Arrow builder of one column, filled a cell at a time.
enum ColumnBuilder {
    Int64(Int64Builder),
    Decimal(Decimal128Builder),
    Time(TimestampMicrosecondBuilder),
    Boolean(BooleanBuilder),
    Text(StringBuilder),
}

impl ColumnBuilder {
    fn new(data_type: &DataType) -> ColumnBuilder {
        match data_type {
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            DataType::Decimal128(..) => {
                ColumnBuilder::Decimal(Decimal128Builder::new().with_data_type(decimal_type()))
            }
            DataType::Timestamp(..) => {
                ColumnBuilder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            DataType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::new()),
            DataType::Utf8 => ColumnBuilder::Text(StringBuilder::new()),
            other => unreachable!("schema_for has no {other} field"),
        }
    }

    fn push(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (ColumnBuilder::Int64(builder), Cell::Int64(value)) => builder.append_option(value),
            (ColumnBuilder::Decimal(builder), Cell::Decimal(value)) => {
                builder.append_value(value.scaled())
            }
            (ColumnBuilder::Time(builder), Cell::Time(value)) => builder.append_option(value),
            (ColumnBuilder::Boolean(builder), Cell::Boolean(value)) => builder.append_option(value),
            (ColumnBuilder::Text(builder), Cell::Text(value)) => builder.append_option(value),
            (_, cell) => unreachable!("`cell` follows schema_for's types, not {cell:?}"),
        }
    }

    /// The column of the cells pushed since the last call; the builder is
    /// left empty.
    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int64(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Decimal(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Time(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Boolean(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Text(builder) => Arc::new(builder.finish()),
        }
    }
}

/// `rows` as one record batch of `kind`'s schema (a spilled run of rows
/// that are not all packed).
pub fn rows_batch(kind: StreamKind, rows: &[Row]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut columns = Columns::new(kind);
    for row in rows {
        columns.push(row);
    }
    columns.finish()
}

/// Column builders for every column of one file, filled row by row.
pub(super) struct Columns {
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
}

impl Columns {
    pub(super) fn new(kind: StreamKind) -> Columns {
        let schema = schema_for(kind);
        let builders = schema
            .fields()
            .iter()
            .map(|field| ColumnBuilder::new(field.data_type()))
            .collect();
        Columns { schema, builders }
    }

    pub(super) fn push(&mut self, row: &Row) {
        for (column, builder) in self.builders.iter_mut().enumerate() {
            builder.push(cell(row, column));
        }
    }

    /// The columns in schema order.
    pub(super) fn finish(mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let arrays = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        RecordBatch::try_new(self.schema, arrays)
    }
}

/// The unnamed temporary file (in `<root>/.staging/`, beside the file
/// being written) that holds a pass's compressed pages until their column
/// chunk goes into the file: the columns of a pass are encoded side by
/// side, a page at a time, but each chunk must be contiguous in the file.
/// On disk, the pages of a busy hour (5 MB for 600,000 aggTrades) take no
/// memory, so what a seal holds does not grow with the hour. Unnamed, it
/// is gone once closed, a crash included; emptied after each pass.
#[derive(Debug)]
struct PageFile {
    file: File,
    /// Bytes written since the last pass: where the next page goes.
    end: AtomicU64,
}

impl PageFile {
    /// The pass is in the file and every page of it taken: start over.
    fn clear(&self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.end.store(0, Ordering::Relaxed);
        Ok(())
    }
}

fn page_file_error(error: std::io::Error) -> ParquetError {
    ParquetError::General(format!("the temporary file of the pages: {error}"))
}

/// One column chunk's pages in the [`PageFile`]: where each one is.
#[derive(Debug)]
struct FilePages {
    file: Arc<PageFile>,
    /// Offset and length of each page, by key.
    pages: Vec<(u64, usize)>,
}

impl PageStore for FilePages {
    fn put(&mut self, page: Bytes) -> Result<PageKey, ParquetError> {
        let offset = self
            .file
            .end
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        self.file
            .file
            .write_all_at(&page, offset)
            .map_err(page_file_error)?;
        self.pages.push((offset, page.len()));
        Ok(PageKey::new(self.pages.len() as u64 - 1))
    }

    fn take(&mut self, key: PageKey) -> Result<Bytes, ParquetError> {
        let (offset, len) = usize::try_from(key.get())
            .ok()
            .and_then(|index| self.pages.get(index).copied())
            .ok_or_else(|| ParquetError::General(format!("no page {}", key.get())))?;
        let mut page = vec![0; len];
        self.file
            .file
            .read_exact_at(&mut page, offset)
            .map_err(page_file_error)?;
        Ok(Bytes::from(page))
    }
}

#[derive(Debug)]
struct FilePagesFactory(Arc<PageFile>);

impl PageStoreFactory for FilePagesFactory {
    fn create(&self, _column: &PageStoreArgs<'_>) -> Result<Box<dyn PageStore>, ParquetError> {
        Ok(Box::new(FilePages {
            file: self.0.clone(),
            pages: Vec::new(),
        }))
    }
}

/// Encodes `rows` as a Parquet file of `kind` into `output`, a few columns
/// at a time, and returns `output` with the footer written and what the
/// rows were (the footer's [`count_metadata`], counted on the first pass).
///
/// `ArrowWriter` encodes every column of a slice of rows at once, so it
/// holds every column's compressed pages (and a zstd context per column)
/// until the row group closes: with one row group per hour file, the whole
/// file. Here the rows are read once per pass ([`passes`]; `for_each_slice`
/// can be called again, and a spilled hour merges its runs again): the
/// pass's column writers take every slice, are closed, and their pages go
/// to `output` before the next pass starts. One column a pass would hold
/// less still, but the rows of a spilled hour are merged again at each
/// pass: a million rows sealed 2.2 times slower with 11 passes, no slower
/// with 2 (docs/BENCHMARKS.md). The bytes are `ArrowWriter`'s, for the
/// same slices and footer keys: the same column writers (made by its own
/// factory, with the same options) take the same arrays, and
/// row groups split at the same row (`max_row_group_row_count`).
fn encode_by_column<W: Write + Send, R: SortedRows>(
    output: W,
    page_file: File,
    kind: StreamKind,
    properties: WriterProperties,
    rows: &R,
    error_path: &Path,
) -> Result<(W, RowCounts), ParquetOutError> {
    let encode_error = |source: ParquetError| ParquetOutError::Encode {
        path: error_path.to_path_buf(),
        source,
    };
    let schema = schema_for(kind);
    let (mut file_writer, column_writers) =
        ArrowWriter::try_new_with_options(output, schema.clone(), writer_options(properties))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(encode_error)?;
    let page_file = Arc::new(PageFile {
        file: page_file,
        end: AtomicU64::new(0),
    });
    let column_writers =
        column_writers.with_page_store_factory(Arc::new(FilePagesFactory(page_file.clone())));
    let rows_per_group = file_writer
        .properties()
        .max_row_group_row_count()
        .unwrap_or(usize::MAX)
        .max(1);
    // Known after the first pass, which counts every row.
    let mut counted: Option<RowCounts> = None;
    // An empty hour has no row group, as with `ArrowWriter`.
    let mut group_start = 0;
    let mut group_index = 0;
    while !rows.is_empty() && counted.is_none_or(|counts| group_start < counts.n_rows) {
        let group_end = group_start.saturating_add(rows_per_group);
        let mut row_group = file_writer.next_row_group().map_err(encode_error)?;
        // Made together, but each is idle (no pages, no zstd workspace)
        // until its turn, and dropped once its chunk is in the file.
        let mut writers = column_writers
            .create_column_writers(group_index)
            .map_err(encode_error)?
            .into_iter();
        let fields = schema.fields();
        for columns in passes(&schema) {
            let mut pass: Vec<_> = columns
                .map(|column| {
                    let field = &fields[column];
                    let writer = writers.next().expect("one column writer per field");
                    let bounds = DecimalBounds::default();
                    (
                        column,
                        field,
                        ColumnBuilder::new(field.data_type()),
                        writer,
                        bounds,
                    )
                })
                .collect();
            let mut counting = counted.is_none().then(RowCounts::default);
            let mut n_seen = 0;
            rows.for_each_piece(ROWS_PER_BATCH, &mut |piece| {
                if let Some(counts) = counting.as_mut() {
                    counts
                        .add_piece(piece)
                        .map_err(|reason| ParquetOutError::Invalid {
                            path: error_path.to_path_buf(),
                            kind: kind.path_name(),
                            reason,
                        })?;
                }
                let slice_start = n_seen;
                n_seen += piece.len();
                let from = group_start.clamp(slice_start, n_seen) - slice_start;
                let to = group_end.clamp(slice_start, n_seen) - slice_start;
                if from == to {
                    return Ok(());
                }
                for (column, field, builder, writer, bounds) in &mut pass {
                    let array = match piece {
                        Piece::Rows(slice) => {
                            for row in &slice[from..to] {
                                builder.push(cell(row, *column));
                            }
                            builder.finish()
                        }
                        Piece::Columns(batch) if batch.schema().fields() == fields => {
                            batch.column(*column).slice(from, to - from)
                        }
                        Piece::Columns(_) => {
                            return Err(ParquetOutError::Invalid {
                                path: error_path.to_path_buf(),
                                kind: kind.path_name(),
                                reason: "columns not of this stream kind's schema".to_owned(),
                            })
                        }
                    };
                    bounds.add(&array);
                    for leaf in compute_leaves(field, &array).map_err(encode_error)? {
                        writer.write(&leaf).map_err(encode_error)?;
                    }
                }
                Ok(())
            })?;
            let counts = *counted.get_or_insert(counting.unwrap_or_default());
            if n_seen != counts.n_rows {
                return Err(ParquetOutError::Invalid {
                    path: error_path.to_path_buf(),
                    kind: kind.path_name(),
                    reason: format!(
                        "a pass over the rows gave {n_seen} rows, the first {}",
                        counts.n_rows
                    ),
                });
            }
            for (_, _, _, writer, bounds) in pass {
                writer
                    .close()
                    .map(|chunk| with_lean_metadata(chunk, &bounds))
                    .and_then(|chunk| chunk.append_to_row_group(&mut row_group))
                    .map_err(encode_error)?;
            }
            page_file
                .clear()
                .map_err(|error| encode_error(page_file_error(error)))?;
        }
        row_group.close().map_err(encode_error)?;
        group_start = group_end;
        group_index += 1;
    }
    let counts = counted.unwrap_or_default();
    for key_value in count_metadata(&counts) {
        file_writer.append_key_value_metadata(key_value);
    }
    let output = file_writer.into_inner().map_err(encode_error)?;
    Ok((output, counts))
}

/// The bounds of a decimal column's values in one column chunk, kept as
/// the values are written: the Parquet writer does not compute them
/// (`writer_properties` turns its statistics off on decimal columns),
/// whose row-by-row comparisons of 16-byte values were about 9 % of a
/// seal; [`with_lean_metadata`] puts them in the chunk's metadata.
#[derive(Debug, Default)]
struct DecimalBounds {
    /// Smallest and largest value, if any.
    bounds: Option<(i128, i128)>,
    nulls: u64,
}

impl DecimalBounds {
    /// Takes `array`'s values into the bounds if it is a decimal column.
    fn add(&mut self, array: &ArrayRef) {
        let Some(decimals) = array.as_any().downcast_ref::<Decimal128Array>() else {
            return;
        };
        let take = |bounds: Option<(i128, i128)>, value: i128| match bounds {
            Some((min, max)) => Some((min.min(value), max.max(value))),
            None => Some((value, value)),
        };
        self.bounds = match decimals.null_count() {
            0 => decimals.values().iter().copied().fold(self.bounds, take),
            nulls => {
                self.nulls += nulls as u64;
                decimals.iter().flatten().fold(self.bounds, take)
            }
        };
    }
}

/// `chunk` with its statistics as the contract's readers read them: each
/// bound once, in `min_value` and `max_value`, and a decimal column's
/// bounds from `decimal` (the writer computes none for it); and without
/// the metadata no reader of the contract reads.
///
/// The writer also copies the bounds into the deprecated `min` and `max`
/// fields of every column whose order is signed (integers, times,
/// decimals), for readers older than 2018; every reader of the contract
/// reads the new fields (and prunes by them), so the copies are footer
/// bytes that serve none: about 190 of them in a trade or aggTrade file,
/// 460 in a kline file (docs/BENCHMARKS.md, "File size"). Likewise the
/// count of pages per encoding (the chunk's `encodings` list says which
/// there are) and the size statistics (a string column's unencoded bytes,
/// level histograms): about 140 bytes of an aggTrade file's footer.
fn with_lean_metadata(mut chunk: ArrowColumnChunk, decimal: &DecimalBounds) -> ArrowColumnChunk {
    use parquet::data_type::FixedLenByteArray;
    use parquet::file::statistics::{Statistics, ValueStatistics};
    let metadata = &mut chunk.close_mut().metadata;
    let statistics = match (decimal.bounds, metadata.statistics().cloned()) {
        // A decimal column (16-byte big-endian two's complement values).
        (Some((min, max)), _) => {
            let bytes = |value: i128| FixedLenByteArray::from(value.to_be_bytes().to_vec());
            Some(Statistics::FixedLenByteArray(ValueStatistics::new(
                Some(bytes(min)),
                Some(bytes(max)),
                None,
                Some(decimal.nulls),
                false,
            )))
        }
        (None, None) => None,
        (None, Some(statistics)) => {
            // Every physical type's statistics, the same way.
            macro_rules! once {
                ($($kind:ident),*) => {
                    match statistics {
                        $(Statistics::$kind(values) => {
                            Statistics::$kind(values.with_backwards_compatible_min_max(false))
                        })*
                    }
                };
            }
            Some(once!(
                Boolean,
                Int32,
                Int64,
                Int96,
                Float,
                Double,
                ByteArray,
                FixedLenByteArray
            ))
        }
    };
    let lean = metadata
        .clone()
        .into_builder()
        .clear_page_encoding_stats()
        .set_unencoded_byte_array_data_bytes(None)
        .set_repetition_level_histogram(None)
        .set_definition_level_histogram(None);
    *metadata = match statistics {
        Some(statistics) => lean.set_statistics(statistics),
        None => lean,
    }
    .build()
    .expect("the same metadata with less of it");
    chunk
}

/// Writes `file` atomically under `root` and returns its final path and
/// what its rows were (as its footer says).
///
/// Steps: encode to `<root>/.staging/<market>-<name>.tmp` (outside the
/// partition tree, so readers of a folder never meet it; same filesystem,
/// so the rename is atomic), fsync the file, rename it over the final name
/// (replacing an older seal of the same hour), fsync the final name's
/// directory. A crash at any step leaves either the old file or the new one
/// under the final name, never a partial one.
pub fn write_hour_file<R: SortedRows>(
    root: &Path,
    file: &HourFile<R>,
) -> Result<(PathBuf, RowCounts), ParquetOutError> {
    write_hour_file_until(root, file, None)
}

/// The steps of writing a sealed file, in order; see ARCHITECTURE.md
/// ("Crash points") for what a crash after each one leaves and how a
/// restart handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealStep {
    /// The temporary file in `<root>/.staging/` written, not yet fsynced.
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
pub fn write_hour_file_until<R: SortedRows>(
    root: &Path,
    file: &HourFile<R>,
    stop_after: Option<SealStep>,
) -> Result<(PathBuf, RowCounts), ParquetOutError> {
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
    create_dir_durably(root, &directory).map_err(io_error(&directory))?;
    let staging = staging_dir(root);
    create_dir_durably(root, &staging).map_err(io_error(&staging))?;
    let temporary = staging_path(root, &file.key, file.hour);
    let output = File::create(&temporary).map_err(io_error(&temporary))?;
    let page_file = tempfile::tempfile_in(&staging).map_err(io_error(&staging))?;
    let properties = writer_properties(file.key.kind, file_metadata(file));
    let (output, counts) = encode_by_column(
        output,
        page_file,
        file.key.kind,
        properties,
        &file.rows,
        &temporary,
    )?;
    if stop(SealStep::Written) {
        return Ok((final_path, counts));
    }
    output.sync_all().map_err(io_error(&temporary))?;
    drop(output);
    if stop(SealStep::Synced) {
        return Ok((final_path, counts));
    }
    fs::rename(&temporary, &final_path).map_err(io_error(&final_path))?;
    if stop(SealStep::Renamed) {
        return Ok((final_path, counts));
    }
    sync_directory(&directory).map_err(io_error(&directory))?;
    Ok((final_path, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AggTradeRow, Hour, KlineInterval, KlineRow, Market, Source, StreamKey, Symbol, TradeRow,
    };
    use crate::parquet_out::HourFile;

    /// The row at `index` of an hour of `kind` whose values vary as real
    /// ones do: ids and times step, prices wander, quantities repeat, some
    /// options are null.
    fn varied_row(kind: StreamKind, index: i64, random: &mut fastrand::Rng) -> Row {
        let base = 1_723_161_600_000_000;
        let time = base + index * 7 + random.i64(0..5);
        let price = Decimal8::from_scaled(6_168_599_000_000 + i128::from(random.i64(0..40_000)));
        let quantity = Decimal8::from_scaled(i128::from(random.i64(1..400)) * 1_000);
        let source = if index % 97 == 0 {
            Source::Rest
        } else {
            Source::Ws
        };
        let optional = |value: i64| (index % 13 != 0).then_some(value);
        match kind {
            StreamKind::Trade => Row::Trade(TradeRow {
                trade_id: 3_735_693_016 + index,
                price,
                quantity,
                trade_time: time,
                is_buyer_maker: random.bool(),
                is_best_match: (index % 5 != 0).then_some(true),
                trade_type: (index % 3 == 0).then(|| "MARKET".to_owned()),
                event_time: optional(time + 1_000),
                recv_time: optional(time + random.i64(20_000..30_000)),
                source,
            }),
            StreamKind::AggTrade => Row::AggTrade(AggTradeRow {
                agg_trade_id: 3_800_397_495 + index,
                price,
                quantity,
                first_trade_id: 5_723_703_861 + 2 * index,
                last_trade_id: 5_723_703_862 + 2 * index,
                trade_time: time,
                is_buyer_maker: random.bool(),
                is_best_match: Some(true),
                event_time: optional(time + 1_000),
                recv_time: optional(time + random.i64(20_000..30_000)),
                source,
            }),
            StreamKind::Kline(_) => Row::kline(KlineRow {
                open_time: base + index * 60_000_000,
                close_time: base + index * 60_000_000 + 59_999_999,
                open: price,
                high: price,
                low: price,
                close: price,
                volume: quantity,
                quote_volume: quantity,
                trade_count: random.i64(0..1_000),
                taker_buy_base_volume: quantity,
                taker_buy_quote_volume: quantity,
                first_trade_id: optional(index * 1_000),
                last_trade_id: optional(index * 1_000 + 999),
                event_time: optional(time),
                recv_time: optional(time + 5),
                source,
            }),
        }
    }

    fn varied_rows(kind: StreamKind, n_rows: i64) -> Vec<Row> {
        let mut random = fastrand::Rng::with_seed(14);
        (0..n_rows)
            .map(|index| varied_row(kind, index, &mut random))
            .collect()
    }

    /// [`varied_rows`] made again a slice at a time at each pass, as
    /// `HeldRows` unpacks them: an hour of many rows that holds none.
    struct VariedRows {
        kind: StreamKind,
        n_rows: i64,
    }

    impl SortedRows for VariedRows {
        fn is_empty(&self) -> bool {
            self.n_rows == 0
        }
        fn for_each_slice(
            &self,
            max: usize,
            each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
        ) -> Result<(), ParquetOutError> {
            let mut random = fastrand::Rng::with_seed(14);
            let mut slice = Vec::with_capacity(max);
            for index in 0..self.n_rows {
                slice.push(varied_row(self.kind, index, &mut random));
                if slice.len() == max {
                    each(&slice)?;
                    slice.clear();
                }
            }
            if !slice.is_empty() {
                each(&slice)?;
            }
            Ok(())
        }
    }

    fn properties(kind: StreamKind, rows: &[Row]) -> WriterProperties {
        let hour = Hour::containing(1_723_161_600_000_000);
        let file = HourFile {
            key: StreamKey {
                market: Market::Spot,
                symbol: Symbol::new("BTCUSDT").expect("valid"),
                kind,
            },
            hour,
            rows: rows.to_vec(),
            unfilled: vec![],
            coverage_from: hour.start(),
            coverage_to: hour.end(),
            clock_offset_us: None,
            delivered_at: None,
            stopped_at: None,
        };
        writer_properties(kind, file_metadata(&file))
    }

    /// What the writer did before it went column by column: every column
    /// of a slice at once, through `ArrowWriter`, which buffers them all
    /// until the row group closes.
    fn encode_all_columns_at_once<W: Write + Send, R: SortedRows>(
        output: W,
        kind: StreamKind,
        properties: WriterProperties,
        rows: &R,
    ) -> W {
        // The Parquet writer's own statistics on the decimal columns too:
        // those `encode_by_column` computes must be the same.
        let mut properties = properties.into_builder();
        for field in schema_for(kind).fields() {
            if matches!(field.data_type(), DataType::Decimal128(..)) {
                properties = properties.set_column_statistics_enabled(
                    parquet::schema::types::ColumnPath::from(field.name().as_str()),
                    parquet::file::properties::EnabledStatistics::Chunk,
                );
            }
        }
        let options = writer_options(properties.build());
        let mut writer =
            ArrowWriter::try_new_with_options(output, schema_for(kind), options).expect("writer");
        let mut counts = RowCounts::default();
        rows.for_each_slice(ROWS_PER_BATCH, &mut |slice| {
            counts.add(slice);
            let mut columns = Columns::new(kind);
            for row in slice {
                columns.push(row);
            }
            writer
                .write(&columns.finish().expect("a batch"))
                .expect("writes");
            Ok(())
        })
        .expect("the rows");
        for key_value in count_metadata(&counts) {
            writer.append_key_value_metadata(key_value);
        }
        writer.into_inner().expect("closes")
    }

    fn page_file() -> File {
        tempfile::tempfile().expect("a temporary file")
    }

    fn encode<R: SortedRows>(kind: StreamKind, properties: WriterProperties, rows: &R) -> Vec<u8> {
        let (bytes, counts) = encode_by_column(
            Vec::new(),
            page_file(),
            kind,
            properties,
            rows,
            Path::new("test"),
        )
        .expect("encodes");
        let mut expected = RowCounts::default();
        rows.for_each_slice(ROWS_PER_BATCH, &mut |slice| {
            expected.add(slice);
            Ok(())
        })
        .expect("the rows");
        assert_eq!(counts, expected);
        bytes
    }

    /// A Parquet file's pages (everything before its footer) and footer.
    fn pages_and_footer(bytes: &[u8]) -> (&[u8], parquet::file::metadata::ParquetMetaData) {
        let end = bytes.len() - 8;
        let footer_len = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        let footer = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&Bytes::copy_from_slice(bytes))
            .expect("a footer");
        (&bytes[..end - footer_len as usize], footer)
    }

    /// What a footer says of each column chunk, its statistics' bounds by
    /// value (not by the fields that hold them).
    fn chunks(footer: &parquet::file::metadata::ParquetMetaData) -> Vec<String> {
        footer
            .row_groups()
            .iter()
            .flat_map(|group| group.columns())
            .map(|chunk| {
                let statistics = chunk.statistics().expect("chunk statistics");
                format!(
                    "{} {:?} {:?} {} {} {} {:?} {:?} {:?} {:?}",
                    chunk.column_path(),
                    chunk.data_page_offset(),
                    chunk.dictionary_page_offset(),
                    chunk.compressed_size(),
                    chunk.uncompressed_size(),
                    chunk.num_values(),
                    chunk.encodings().collect::<Vec<_>>(),
                    statistics.min_bytes_opt(),
                    statistics.max_bytes_opt(),
                    statistics.null_count_opt(),
                )
            })
            .collect()
    }

    /// The files' contract (columns, encodings, statistics, footer, one row
    /// group) is what `ArrowWriter` wrote: the pages are the same bytes,
    /// empty hours and row groups that split inside a slice included, and
    /// the footer says the same of them, its statistics without the
    /// deprecated copies of their bounds (`with_lean_metadata`).
    #[test]
    fn writing_a_column_at_a_time_gives_the_bytes_of_all_columns_at_once() {
        let same = |bytes: &[u8], expected: &[u8], what: &str| {
            let (pages, footer) = pages_and_footer(bytes);
            let (expected_pages, expected_footer) = pages_and_footer(expected);
            assert!(pages == expected_pages, "{what}: pages");
            assert_eq!(chunks(&footer), chunks(&expected_footer), "{what}");
            let file = footer.file_metadata();
            let expected_file = expected_footer.file_metadata();
            assert_eq!(file.num_rows(), expected_file.num_rows(), "{what}");
            assert_eq!(file.schema(), expected_file.schema(), "{what}");
            assert_eq!(
                file.key_value_metadata(),
                expected_file.key_value_metadata(),
                "{what}"
            );
            // Every chunk has bounds: the copies are gone, not the bounds.
            if file.num_rows() > 0 {
                assert!(bytes.len() < expected.len(), "{what}: no copies left out");
            }
        };
        for kind in [
            StreamKind::Trade,
            StreamKind::AggTrade,
            StreamKind::Kline(KlineInterval::Minute1),
        ] {
            for n_rows in [0, 1, 20_000] {
                let rows = varied_rows(kind, n_rows);
                let bytes = encode(kind, properties(kind, &rows), &rows);
                let expected =
                    encode_all_columns_at_once(Vec::new(), kind, properties(kind, &rows), &rows);
                same(&bytes, &expected, &format!("{kind} with {n_rows} rows"));
                let n_row_groups = pages_and_footer(&bytes).1.num_row_groups();
                assert_eq!(n_row_groups, usize::from(n_rows > 0), "{kind}");
            }
            // Row groups of 10,000 rows: the second starts inside the
            // second slice of 8,192.
            let rows = varied_rows(kind, 25_000);
            let small_groups = || {
                properties(kind, &rows)
                    .into_builder()
                    .set_max_row_group_row_count(Some(10_000))
                    .build()
            };
            let bytes = encode(kind, small_groups(), &rows);
            let expected = encode_all_columns_at_once(Vec::new(), kind, small_groups(), &rows);
            same(
                &bytes,
                &expected,
                &format!("{kind} in row groups of 10,000"),
            );
        }
    }

    /// The footer keeps each chunk's bounds once, in `min_value` and
    /// `max_value`: a file is smaller by the deprecated copies the writer
    /// makes of the signed columns' bounds (8 or 16 bytes each, and their
    /// fields' headers), and the bounds read back the same.
    #[test]
    fn the_footer_holds_each_bound_once() {
        for (kind, least_saved) in [
            (StreamKind::Trade, 140),
            (StreamKind::AggTrade, 180),
            (StreamKind::Kline(KlineInterval::Minute1), 400),
        ] {
            let rows = varied_rows(kind, 100);
            let bytes = encode(kind, properties(kind, &rows), &rows);
            let expected =
                encode_all_columns_at_once(Vec::new(), kind, properties(kind, &rows), &rows);
            assert!(
                bytes.len() + least_saved <= expected.len(),
                "{kind}: {} bytes, {} with the copies",
                bytes.len(),
                expected.len()
            );
            let (_, footer) = pages_and_footer(&bytes);
            for chunk in footer.row_groups().iter().flat_map(|group| group.columns()) {
                let statistics = chunk.statistics().expect("statistics");
                assert!(
                    statistics.min_bytes_opt().is_some() && statistics.max_bytes_opt().is_some(),
                    "{kind} {}",
                    chunk.column_path()
                );
            }
        }
    }

    /// The footer has no count of pages per encoding and no size
    /// statistics (no reader of the contract reads either; the writer's own
    /// footer has both), and each chunk's `encodings` still names what its
    /// pages use.
    #[test]
    fn the_footer_leaves_out_what_no_reader_reads() {
        let has_encoding_counts = |chunk: &parquet::file::metadata::ColumnChunkMetaData| {
            chunk.page_encoding_stats().is_some() || chunk.page_encoding_stats_mask().is_some()
        };
        let has_size_statistics = |chunk: &parquet::file::metadata::ColumnChunkMetaData| {
            chunk.unencoded_byte_array_data_bytes().is_some()
                || chunk.definition_level_histogram().is_some()
                || chunk.repetition_level_histogram().is_some()
        };
        for kind in [
            StreamKind::Trade,
            StreamKind::AggTrade,
            StreamKind::Kline(KlineInterval::Minute1),
        ] {
            let rows = varied_rows(kind, 100);
            let bytes = encode(kind, properties(kind, &rows), &rows);
            let (_, footer) = pages_and_footer(&bytes);
            for chunk in footer.row_groups().iter().flat_map(|group| group.columns()) {
                let column = chunk.column_path();
                assert!(!has_encoding_counts(chunk), "{kind} {column}");
                assert!(!has_size_statistics(chunk), "{kind} {column}");
                assert!(chunk.encodings().next().is_some(), "{kind} {column}");
            }
            let writers =
                encode_all_columns_at_once(Vec::new(), kind, properties(kind, &rows), &rows);
            let (_, writers_footer) = pages_and_footer(&writers);
            let writers_chunks: Vec<_> = writers_footer
                .row_groups()
                .iter()
                .flat_map(|group| group.columns())
                .collect();
            assert!(
                writers_chunks
                    .iter()
                    .all(|chunk| has_encoding_counts(chunk)),
                "{kind}"
            );
            assert!(
                writers_chunks
                    .iter()
                    .any(|chunk| has_size_statistics(chunk)),
                "{kind}"
            );
        }
    }

    #[test]
    fn rows_that_differ_from_pass_to_pass_fail_the_file() {
        /// One row fewer on every pass after the first.
        struct Shrinking(Vec<Row>, std::cell::Cell<usize>);
        impl SortedRows for Shrinking {
            fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
            fn for_each_slice(
                &self,
                max: usize,
                each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
            ) -> Result<(), ParquetOutError> {
                let n_passes = self.1.replace(self.1.get() + 1);
                self.0[n_passes.min(1)..].to_vec().for_each_slice(max, each)
            }
        }
        let rows = Shrinking(varied_rows(StreamKind::AggTrade, 100), Default::default());
        let properties = properties(StreamKind::AggTrade, &rows.0);
        let error = encode_by_column(
            Vec::new(),
            page_file(),
            StreamKind::AggTrade,
            properties,
            &rows,
            Path::new("test"),
        )
        .expect_err("refused");
        assert!(
            error.to_string().contains("gave 99 rows, the first 100"),
            "{error}"
        );
    }

    /// What the writer holds beside the rows: the column writers of one
    /// pass, their pages on disk until their chunks go into the file. It
    /// does not grow with the hour, where every column at once through
    /// `ArrowWriter` holds every page. (zstd's contexts, allocated by C,
    /// are not counted here.)
    #[test]
    fn the_writers_memory_does_not_grow_with_the_hour() {
        let kind = StreamKind::AggTrade;
        let peaks: Vec<(usize, u64, u64)> = [150_000, 600_000]
            .into_iter()
            .map(|n_rows| {
                let rows = VariedRows { kind, n_rows };
                // What a pass over the rows holds by itself (a slice of them).
                let the_rows_alone = allocation_counter::measure(|| {
                    rows.for_each_slice(ROWS_PER_BATCH, &mut |_| Ok(()))
                        .expect("the rows");
                });
                let mut file_size = 0;
                let by_column = allocation_counter::measure(|| {
                    let (output, _) = encode_by_column(
                        CountingSink::default(),
                        page_file(),
                        kind,
                        properties(kind, &[]),
                        &rows,
                        Path::new("test"),
                    )
                    .expect("encodes");
                    file_size = output.0;
                });
                let all_at_once = allocation_counter::measure(|| {
                    encode_all_columns_at_once(
                        CountingSink::default(),
                        kind,
                        properties(kind, &[]),
                        &rows,
                    );
                });
                let writer_peak = by_column.bytes_max - the_rows_alone.bytes_max;
                let all_at_once_peak = all_at_once.bytes_max - the_rows_alone.bytes_max;
                println!(
                    "{n_rows} rows, {file_size} bytes of file; the writer's peak heap \
                     {writer_peak} by pass, {all_at_once_peak} all at once"
                );
                (file_size, writer_peak, all_at_once_peak)
            })
            .collect();
        let (small, big) = (peaks[0], peaks[1]);
        assert!(
            big.0 > 3 * small.0,
            "four times the rows: {small:?} {big:?}"
        );
        // 2.0 MB at both sizes: the quantity's dictionary (up to its 1 MiB
        // page) and a page being encoded and compressed. Before the pages
        // went to a file, 4.4 MB for the 600,000 rows; all at once, 15.7.
        assert!(big.1 < 3 << 20, "{} bytes at the peak", big.1);
        assert!(big.1 < small.1 + (256 << 10), "{small:?} {big:?}");
        assert!(big.2 > 4 * big.1, "{big:?}");
    }

    /// Counts the bytes written, keeps none.
    #[derive(Default)]
    struct CountingSink(usize);

    impl Write for CountingSink {
        fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
            self.0 += buffer.len();
            Ok(buffer.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
