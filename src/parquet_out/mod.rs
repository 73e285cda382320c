//! The Parquet side of the dataset contract (`docs/DATASET.md`, schema
//! version 2): the Arrow schema of each stream kind, rows to record
//! batches and back, the file metadata, and the atomic write (temporary
//! file in `<root>/.staging/`, fsync, rename into the partition tree,
//! directory fsync). This module and the WAL are the only ones that touch
//! data files.
//!
//! - [`layout`]: paths; the partition tree holds only sealed files, and
//!   staging, moved-aside files and their start-up migration live beside it.
//! - [`schema`]: columns per stream kind and schema version, encodings,
//!   footer metadata.
//! - [`write`](mod@write): the atomic write and its crash-point seam; the
//!   rows are encoded in passes of a few columns, so a seal holds one
//!   pass's pages rather than the whole file's.
//! - [`read`]: footers, summaries and rows of version 1 and 2 files.
//!
//! Encodings are chosen for size: ids and times are delta-encoded (they
//! mostly grow by small steps); quantities, `source` and `trade_type` are
//! dictionary-encoded (an hour repeats them); prices and the other decimals
//! are plain (neighbouring values share most of their bytes, which zstd
//! finds; byte-stream-split and delta byte array would keep DuckDB or
//! polars from reading them); every page is zstd-compressed, at a level
//! per column ([`schema`]'s `writer_properties`).

use std::io;
use std::path::PathBuf;

use arrow_array::RecordBatch;

use crate::domain::{Hour, Row, StreamKey, TimeUs, UnfilledRange};

pub mod columns;
pub mod layout;
pub mod read;
pub mod schema;
pub mod write;

pub use layout::{
    corrupt_dir, hour_file_path, move_aside, move_out_legacy_corrupt_files, remove_temporary_files,
    sealed_hours, staging_dir, sync_directory, CORRUPT_DIR_NAME, STAGING_DIR_NAME,
};
pub use read::{
    parse_schema_version, parse_summary, read_hour_file, read_metadata, read_summary,
    summary_from_bytes, HourFileReader, SealedSummary, SummaryError,
};
pub use schema::{schema_for, schema_of_version, SchemaVersion, SCHEMA_VERSION};
pub use write::{rows_batch, write_hour_file, write_hour_file_until, SealStep};

/// The rows of one file, sorted and unique by key, as the writer reads
/// them: consecutive slices in key order, as many times as it asks (once
/// per pass of a few columns). What the footer says of them (how many,
/// from where, first and last key) the writer counts on its first pass:
/// a spilled hour only knows it by merging its runs.
pub trait SortedRows {
    /// Whether there are no rows (an empty hour has no row group).
    fn is_empty(&self) -> bool;
    /// Calls `each` with the rows in key order, at most `max` at a time.
    fn for_each_slice(
        &self,
        max: usize,
        each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError>;
    /// [`SortedRows::for_each_slice`] for the writer: rows that are already
    /// columns of the file's schema (a spilled run read back) may come as
    /// they are, without being made into rows and back.
    fn for_each_piece(
        &self,
        max: usize,
        each: &mut dyn FnMut(Piece<'_>) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        self.for_each_slice(max, &mut |rows| each(Piece::Rows(rows)))
    }
}

/// Consecutive rows of a file, as [`SortedRows::for_each_piece`] hands them.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    Rows(&'a [Row]),
    /// The columns of [`schema_for`] the file's kind, in its order.
    Columns(&'a RecordBatch),
}

impl Piece<'_> {
    pub fn len(&self) -> usize {
        match self {
            Piece::Rows(rows) => rows.len(),
            Piece::Columns(batch) => batch.num_rows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SortedRows for Vec<Row> {
    fn is_empty(&self) -> bool {
        <[Row]>::is_empty(self)
    }

    fn for_each_slice(
        &self,
        max: usize,
        each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        self.chunks(max.max(1)).try_for_each(each)
    }
}

/// What a file's rows are, as its footer says: counted by the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub n_rows: usize,
    /// How many came from REST.
    pub n_rest: usize,
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
}

impl RowCounts {
    /// Counts `slice`, the rows that follow those counted so far.
    pub fn add(&mut self, slice: &[Row]) {
        self.n_rows += slice.len();
        self.n_rest += slice
            .iter()
            .filter(|row| row.source() == crate::domain::Source::Rest)
            .count();
        self.first_key = self.first_key.or(slice.first().map(Row::key));
        self.last_key = slice.last().map(Row::key).or(self.last_key);
    }

    /// Counts `piece`, the rows that follow those counted so far. The key
    /// is a file's first column and `source` its last; a source that is
    /// neither `ws` nor `rest` is refused.
    pub fn add_piece(&mut self, piece: Piece<'_>) -> Result<(), String> {
        let batch = match piece {
            Piece::Rows(rows) => {
                self.add(rows);
                return Ok(());
            }
            Piece::Columns(batch) => batch,
        };
        let n_rows = batch.num_rows();
        if n_rows == 0 {
            return Ok(());
        }
        let keys = batch.column(0);
        let key = |index: usize| {
            use arrow_array::cast::AsArray;
            use arrow_array::types::{Int64Type, TimestampMicrosecondType};
            keys.as_primitive_opt::<Int64Type>()
                .map(|ids| ids.value(index))
                .or_else(|| {
                    keys.as_primitive_opt::<TimestampMicrosecondType>()
                        .map(|times| times.value(index))
                })
                .ok_or("the first column is not a key")
        };
        let sources = batch
            .column(batch.num_columns() - 1)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .ok_or("the last column is not `source`")?;
        for source in sources {
            match source {
                Some("rest") => self.n_rest += 1,
                Some("ws") => {}
                other => return Err(format!("unknown source {other:?}")),
            }
        }
        let (first, last) = (key(0)?, key(n_rows - 1)?);
        self.n_rows += n_rows;
        self.first_key = self.first_key.or(Some(first));
        self.last_key = Some(last);
        Ok(())
    }
}

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

/// Everything that goes into one sealed file. `R` holds the rows: a
/// `Vec<Row>`, or the recorder's packed `HeldRows`, written a slice at a
/// time without ever being all unpacked at once.
#[derive(Debug, Clone)]
pub struct HourFile<R = Vec<Row>> {
    pub key: StreamKey,
    pub hour: Hour,
    /// Sorted by key and unique; `seal` guarantees it.
    pub rows: R,
    pub unfilled: Vec<UnfilledRange>,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    pub clock_offset_us: Option<i64>,
    /// A dated contract's delivery (epoch µs) when it falls in this hour,
    /// the contract's last: written as `delivered_at`, only then.
    pub delivered_at: Option<TimeUs>,
    /// Written at an orderly stop before the hour was finished: the stop's
    /// exchange time, as `stopped_at`, only then.
    pub stopped_at: Option<TimeUs>,
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::domain::{
        AggTradeRow, Decimal8, KlineInterval, KlineRow, Market, Source, StreamKind, Symbol,
        TradeRow, MICROS_PER_HOUR,
    };

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
            delivered_at: None,
            stopped_at: None,
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
            StreamKind::Kline(_) => vec![Row::kline(KlineRow {
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
    fn a_delivered_contracts_last_hour_says_when_in_its_footer() {
        let root = tempfile::tempdir().expect("temporary directory");
        let mut file = hour_file(StreamKind::Trade, sample_rows(StreamKind::Trade));
        let (path, _) = write_hour_file(root.path(), &file).expect("writes");
        let summary = read_summary(&path).expect("summary");
        assert_eq!(summary.delivered_at, None);
        assert!(read_metadata(&path)
            .expect("metadata")
            .iter()
            .all(|(key, _)| key != "delivered_at"));
        file.delivered_at = Some(file.hour.end());
        let (path, _) = write_hour_file(root.path(), &file).expect("rewrites");
        assert_eq!(
            read_summary(&path).expect("summary").delivered_at,
            Some(file.hour.end())
        );
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
            let (path, _) = write_hour_file(root.path(), &file).expect("writes");
            assert!(path.to_string_lossy().ends_with(&format!(
                "market=spot/stream={0}/symbol=BTCUSDT/date=2024-08-09/BTCUSDT-{0}-2024-08-09-00.parquet",
                kind.path_name()
            )));
            assert_eq!(read_hour_file(&path, kind).expect("reads"), file.rows);
            // The footer holds no `ARROW:schema`: the Parquet types alone
            // read back as the contract's Arrow types.
            let read_back = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                fs::File::open(&path).expect("opens"),
            )
            .expect("a parquet file");
            let footer_keys: Vec<&str> = read_back
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .expect("key-value metadata")
                .iter()
                .map(|key_value| key_value.key.as_str())
                .collect();
            assert!(!footer_keys.contains(&"ARROW:schema"), "{footer_keys:?}");
            assert_eq!(
                read_back.schema().fields(),
                schema::schema_for(kind).fields(),
                "{kind:?}"
            );
            let metadata: std::collections::HashMap<_, _> = read_metadata(&path)
                .expect("metadata")
                .into_iter()
                .collect();
            assert_eq!(metadata["schema_version"], "2");
            assert_eq!(metadata["symbol"], "BTCUSDT");
            assert_eq!(metadata["market"], "spot");
            let summary = read_summary(&path).expect("summary");
            assert_eq!(summary.schema_version, SchemaVersion::V2);
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
    fn an_hour_of_many_batches_round_trips_in_one_row_group() {
        let root = tempfile::tempdir().expect("temporary directory");
        let template = sample_rows(StreamKind::Trade).remove(0);
        let rows: Vec<Row> = (0..150_000)
            .map(|index| {
                let mut row = template.clone();
                if let Row::Trade(trade) = &mut row {
                    trade.trade_id += index;
                    trade.trade_time += index;
                }
                row
            })
            .collect();
        let file = hour_file(StreamKind::Trade, rows);
        let (path, _) = write_hour_file(root.path(), &file).expect("writes");
        assert_eq!(
            read_hour_file(&path, StreamKind::Trade).expect("reads"),
            file.rows
        );
        let reader = parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(&path).expect("opens"),
        )
        .expect("a parquet file");
        use parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().num_row_groups(), 1);
    }

    #[test]
    fn empty_hour_still_gets_a_file_and_no_temporary_is_left() {
        let root = tempfile::tempdir().expect("temporary directory");
        let file = hour_file(StreamKind::Trade, vec![]);
        let (path, _) = write_hour_file(root.path(), &file).expect("writes");
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
    /// would be.
    fn real_agg_trade_rows() -> Vec<Row> {
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
        rows
    }

    /// The real aggTrades in a file; prints bytes per row (the issue's
    /// target: near 10).
    #[test]
    fn real_agg_trades_encode_compactly() {
        let rows = real_agg_trade_rows();
        let root = tempfile::tempdir().expect("temporary directory");
        let (path, _) =
            write_hour_file(root.path(), &hour_file(StreamKind::AggTrade, rows.clone()))
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
        // 9.97 with the encodings of `writer_properties` and each bound
        // once in the footer (10.79 with dictionary-encoded prices, 10.01
        // with the bounds' deprecated copies): a change that loses that
        // fails here.
        assert!(bytes_per_row < 10.2, "{bytes_per_row:.2} B/row");
    }

    /// The delta blocks chosen per column (`schema::delta_layout`) make the
    /// real aggTrades smaller than the writer's default layout does (and
    /// `real_agg_trades_encode_compactly` reads them back the same).
    #[test]
    fn delta_layouts_shrink_real_agg_trades() {
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::DeltaBinaryPackedEncoderOptions;
        use parquet::schema::types::ColumnPath;

        let kind = StreamKind::AggTrade;
        let mut columns = write::Columns::new(kind);
        for row in real_agg_trade_rows() {
            columns.push(&row);
        }
        let batch = columns.finish().expect("columns");
        let size = |default_layout: bool| {
            let mut properties = schema::writer_properties(kind, Vec::new()).into_builder();
            if default_layout {
                for column in ["first_trade_id", "last_trade_id", "recv_time"] {
                    properties = properties.set_column_delta_binary_packed_encoder_options(
                        ColumnPath::from(column),
                        // The writer's default for 64-bit integers.
                        DeltaBinaryPackedEncoderOptions::try_new(256, 4).expect("valid"),
                    );
                }
            }
            let mut bytes = Vec::new();
            let mut writer = ArrowWriter::try_new_with_options(
                &mut bytes,
                batch.schema(),
                schema::writer_options(properties.build()),
            )
            .expect("writer");
            writer.write(&batch).expect("writes");
            writer.close().expect("closes");
            bytes.len()
        };
        let (chosen, default) = (size(false), size(true));
        println!("real aggTrades: {chosen} bytes with the chosen delta blocks, {default} with the default");
        // 175 bytes less when measured (docs/BENCHMARKS.md, "Delta blocks
        // per column").
        assert!(chosen + 80 < default, "{chosen} vs {default}");
    }

    /// A busy hour can hold more distinct quantities than a 1 MiB dictionary
    /// page (65,536): the column then goes on in PLAIN, never in the
    /// writer's default fallback (delta byte array, which polars 2.1 cannot
    /// read on a decimal), and every column keeps encodings that DuckDB,
    /// pandas, polars and pyarrow all read.
    #[test]
    fn an_overflowing_dictionary_falls_back_to_encodings_every_reader_reads() {
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};

        let base = 1_723_161_600_000_000;
        let rows: Vec<Row> = (0..70_000)
            .map(|index| {
                Row::AggTrade(AggTradeRow {
                    agg_trade_id: 1_000 + index,
                    price: Decimal8::from_scaled(6_168_599_000_000 + i128::from(index)),
                    quantity: Decimal8::from_scaled(17_000 + i128::from(index)),
                    first_trade_id: 5_000 + index,
                    last_trade_id: 5_000 + index,
                    trade_time: base + index * 10,
                    is_buyer_maker: index % 3 == 0,
                    is_best_match: Some(true),
                    event_time: Some(base + index * 10 + 1_000),
                    recv_time: Some(base + index * 10 + 23_456),
                    source: Source::Ws,
                })
            })
            .collect();
        let root = tempfile::tempdir().expect("temporary directory");
        let (path, _) =
            write_hour_file(root.path(), &hour_file(StreamKind::AggTrade, rows.clone()))
                .expect("writes");
        let reader =
            SerializedFileReader::new(fs::File::open(&path).expect("file")).expect("reads");
        let readable = [
            Encoding::PLAIN,
            Encoding::RLE,
            Encoding::RLE_DICTIONARY,
            Encoding::DELTA_BINARY_PACKED,
        ];
        for row_group in reader.metadata().row_groups() {
            for column in row_group.columns() {
                let encodings: Vec<Encoding> = column.encodings().collect();
                assert!(
                    encodings.iter().all(|encoding| readable.contains(encoding)),
                    "{}: {encodings:?}",
                    column.column_path()
                );
            }
        }
        assert_eq!(
            read_hour_file(&path, StreamKind::AggTrade).expect("reads"),
            rows
        );
    }

    #[test]
    fn version_two_files_hold_no_partition_key_column() {
        for kind in [
            StreamKind::Trade,
            StreamKind::AggTrade,
            StreamKind::Kline(KlineInterval::Minute1),
        ] {
            let names: Vec<String> = schema_for(kind)
                .fields()
                .iter()
                .map(|field| field.name().clone())
                .collect();
            for partition_key in ["market", "stream", "symbol", "date"] {
                assert!(!names.iter().any(|name| name == partition_key), "{names:?}");
            }
            assert_eq!(names.last().map(String::as_str), Some("source"));
            let version_one = schema_of_version(kind, SchemaVersion::V1);
            assert_eq!(version_one.field(0).name(), "symbol");
            assert_eq!(&version_one.fields()[1..], &schema_for(kind).fields()[..]);
        }
    }

    #[test]
    fn a_seal_in_progress_or_interrupted_leaves_only_sealed_files_in_the_tree() {
        let root = tempfile::tempdir().expect("temporary directory");
        let file = hour_file(StreamKind::Trade, sample_rows(StreamKind::Trade));
        for step in [SealStep::Written, SealStep::Synced] {
            let (path, _) = write_hour_file_until(root.path(), &file, Some(step)).expect("writes");
            assert!(!path.exists(), "{step:?}: not renamed yet");
            let staged: Vec<_> = fs::read_dir(staging_dir(root.path()))
                .expect("staging exists")
                .flatten()
                .map(|entry| entry.path())
                .collect();
            assert_eq!(staged.len(), 1, "{step:?}: {staged:?}");
            let in_tree: Vec<_> = fs::read_dir(path.parent().expect("folder"))
                .expect("folder exists")
                .flatten()
                .collect();
            assert!(in_tree.is_empty(), "{step:?}: {in_tree:?}");
            assert_eq!(
                remove_temporary_files(root.path()).expect("cleans"),
                staged,
                "{step:?}"
            );
        }
    }

    /// The fixture written by the release before version 2 (see its
    /// SOURCES.md): every file reads, rows and summary alike.
    #[test]
    fn version_one_fixture_files_are_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dataset-v1");
        let hour = Hour::containing(1_723_161_600_000_000);
        let stream = |symbol: &str, kind| StreamKey {
            market: Market::Spot,
            symbol: Symbol::new(symbol).expect("valid"),
            kind,
        };
        for (key, n_rows, n_holes) in [
            (stream("BTCUSDT", StreamKind::Trade), 3, 0),
            (stream("ETHUSDT", StreamKind::Trade), 0, 1),
            (stream("BTCUSDT", StreamKind::AggTrade), 1, 0),
            (
                stream("BTCUSDT", StreamKind::Kline(KlineInterval::Minute1)),
                2,
                0,
            ),
        ] {
            let path = hour_file_path(&root, &key, hour);
            let summary = read_summary(&path).expect("summary");
            assert_eq!(summary.schema_version, SchemaVersion::V1);
            assert_eq!(summary.row_count, n_rows);
            assert_eq!(summary.unfilled.len(), n_holes);
            let rows = read_hour_file(&path, key.kind).expect("rows");
            assert_eq!(rows.len() as u64, n_rows, "{}", path.display());
            assert_eq!(
                rows.last().map(Row::key),
                summary.last_key,
                "{}",
                path.display()
            );
        }
        let trades = read_hour_file(
            &hour_file_path(&root, &stream("BTCUSDT", StreamKind::Trade), hour),
            StreamKind::Trade,
        )
        .expect("rows");
        let Row::Trade(first) = &trades[0] else {
            panic!("a trade")
        };
        assert_eq!(first.source, Source::Rest);
        assert_eq!(first.price.to_string(), "61685.99000000");
        assert_eq!((first.event_time, first.recv_time), (None, None));
    }

    #[test]
    fn a_version_two_file_with_a_symbol_column_is_refused() {
        let root = tempfile::tempdir().expect("temporary directory");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/fixtures/dataset-v1/market=spot/stream=aggTrade/symbol=BTCUSDT/date=2024-08-09/BTCUSDT-aggTrade-2024-08-09-00.parquet",
        );
        // Version 1 columns under a version 2 footer: rewrite the fixture's
        // batch with the footer changed.
        let input = fs::File::open(&fixture).expect("fixture");
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(input)
            .expect("reader");
        let batch = builder
            .build()
            .expect("reader")
            .next()
            .expect("one batch")
            .expect("batch");
        let path = root.path().join("mislabelled.parquet");
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "schema_version".to_owned(),
                "2".to_owned(),
            )]))
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            fs::File::create(&path).expect("create"),
            batch.schema(),
            Some(properties),
        )
        .expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let error = read_hour_file(&path, StreamKind::AggTrade).expect_err("refused");
        assert!(error.to_string().contains("schema version 2"), "{error}");
    }
}
