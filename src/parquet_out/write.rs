//! Writing a sealed file: rows to Arrow columns, encoded to a temporary
//! file in `<root>/.staging/`, fsynced, renamed into the partition tree,
//! and the folder fsynced. See ARCHITECTURE.md "Crash points".

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;

use crate::domain::{Decimal8, Row, StreamKind};

use super::layout::{
    create_dir_durably, hour_file_path, staging_dir, staging_path, sync_directory,
};
use super::schema::{decimal_type, file_metadata, schema_for, timestamp_type, writer_properties};
use super::{HourFile, ParquetOutError, SortedRows};

/// Rows turned into Arrow columns at a time when a file is written: the
/// rows unpacked (224 bytes each) and their column builders are what a
/// seal holds beside the Parquet writer, 14 MB of rows alone at 65,536.
/// Pages and row groups do not depend on it.
const ROWS_PER_BATCH: usize = 8_192;

/// Column builders for one file, filled row by row.
pub(super) struct Columns {
    schema: SchemaRef,
    source: StringBuilder,
    int64: Vec<Int64Builder>,
    decimals: Vec<Decimal128Builder>,
    times: Vec<TimestampMicrosecondBuilder>,
    booleans: Vec<BooleanBuilder>,
    strings: Vec<StringBuilder>,
}

impl Columns {
    pub(super) fn new(kind: StreamKind) -> Columns {
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
            // Utf8 columns other than source.
            strings: (0..count(&DataType::Utf8) - 1)
                .map(|_| StringBuilder::new())
                .collect(),
            schema,
        }
    }

    pub(super) fn push(&mut self, row: &Row) {
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
    pub(super) fn finish(mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut int64 = self.int64.iter_mut();
        let mut decimals = self.decimals.iter_mut();
        let mut times = self.times.iter_mut();
        let mut booleans = self.booleans.iter_mut();
        let mut strings = self.strings.iter_mut();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let array: ArrayRef = match (field.name().as_str(), field.data_type()) {
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

/// Writes `file` atomically under `root` and returns its final path.
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
) -> Result<PathBuf, ParquetOutError> {
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
    create_dir_durably(root, &directory).map_err(io_error(&directory))?;
    let staging = staging_dir(root);
    create_dir_durably(root, &staging).map_err(io_error(&staging))?;
    let temporary = staging_path(root, &file.key, file.hour);

    let encode_error = |source| ParquetOutError::Encode {
        path: temporary.clone(),
        source,
    };
    let output = File::create(&temporary).map_err(io_error(&temporary))?;
    let properties = writer_properties(file.key.kind, file_metadata(file));
    let schema = schema_for(file.key.kind);
    let mut writer =
        ArrowWriter::try_new(output, schema, Some(properties)).map_err(encode_error)?;
    // Arrow columns of a slice at a time, not of the whole hour: the writer
    // buffers encoded pages until a row group is full, so the file is the
    // same, and a busy hour's seal does not hold a second copy of its rows.
    let mut write_slice = |rows: &[Row]| {
        let mut columns = Columns::new(file.key.kind);
        for row in rows {
            columns.push(row);
        }
        let batch = columns.finish().map_err(|source| ParquetOutError::Arrow {
            path: final_path.clone(),
            source,
        })?;
        writer.write(&batch).map_err(encode_error)
    };
    if file.rows.n_rows() == 0 {
        // An empty hour still writes its one empty batch.
        write_slice(&[])?;
    } else {
        file.rows.for_each_slice(ROWS_PER_BATCH, &mut write_slice)?;
    }
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
