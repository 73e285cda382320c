//! Spilled runs on disk: an unsealed hour's rows written beside the WAL
//! when the rows held pass `memory.max_held_mb` (`recorder/spill.rs`), read
//! back once when the hour seals.
//!
//! A run of trades or aggTrades is written in the rows' packed form
//! (`held/run.rs`: 50 or 56 bytes a row, checksummed blocks), so spilling
//! costs a copy, not a column build and an IPC encode; it becomes columns
//! a block at a time when it is read back. Any other run (a kline hour, or
//! one with rows kept whole) is an Arrow IPC stream of the dataset's own
//! columns (the schema of its stream kind), in batches of
//! [`RUN_BATCH_ROWS`]. Reading either holds one small block or batch per
//! run. No compression and no fsync: a run lives less than an hour, the
//! WAL holds every row of it until the hour is sealed, and the runs are
//! removed at start (replay rebuilds them).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::domain::{Row, StreamKind};
use crate::parquet_out::read::rows_from_batch;
use crate::parquet_out::{rows_batch, schema_for, ParquetOutError, Piece, SortedRows};

use super::held::{HeldRows, PackedRunReader, PACKED_RUN_MAGIC};

/// Rows per IPC batch: what reading a run back holds of it at a time.
pub const RUN_BATCH_ROWS: usize = 1024;

/// The buffer between a run's IPC stream and its file when written: a
/// batch of [`RUN_BATCH_ROWS`] rows is written as a few dozen buffers,
/// most of them under the standard 8 KiB, so the standard buffer made a
/// system call every few kilobytes (the spill's CPU a million rows 0.087
/// → 0.074 s, docs/BENCHMARKS.md). Reading needs no more: a batch's body
/// is read whole, past the buffer.
const RUN_IO_BYTES: usize = 256 << 10;

/// The folder of the runs, inside the WAL directory.
pub const RUNS_DIR_NAME: &str = "spill";

/// `<wal_dir>/spill/`.
pub fn runs_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join(RUNS_DIR_NAME)
}

/// The file of run `run_id`.
pub fn run_path(wal_dir: &Path, run_id: u64) -> PathBuf {
    runs_dir(wal_dir).join(format!("run-{run_id:010}.run"))
}

/// Removes every run left by an earlier process (its rows are replayed
/// from the WAL), and returns how many there were.
pub fn remove_runs(wal_dir: &Path) -> io::Result<usize> {
    let dir = runs_dir(wal_dir);
    match fs::read_dir(&dir) {
        Ok(entries) => {
            let mut removed = 0;
            for entry in entries {
                fs::remove_file(entry?.path())?;
                removed += 1;
            }
            Ok(removed)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// Writes `rows` as run `path`: packed when they all are, else as
/// columns.
pub fn write_run(path: &Path, rows: &HeldRows) -> Result<(), ParquetOutError> {
    let io_error = |source: io::Error| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let file = File::create(path).map_err(io_error)?;
    let mut out = BufWriter::with_capacity(RUN_IO_BYTES, file);
    if rows.write_packed_run(&mut out).map_err(io_error)? {
        out.flush().map_err(io_error)?;
        return Ok(());
    }
    write_columns_run(path, out, rows)
}

/// Writes `rows` as an Arrow IPC stream of their kind's columns.
fn write_columns_run(
    path: &Path,
    out: BufWriter<File>,
    rows: &HeldRows,
) -> Result<(), ParquetOutError> {
    let kind = rows.kind();
    let io_error = |source: io::Error| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    };
    let arrow_error = |source| ParquetOutError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let schema = schema_for(kind);
    let mut writer = StreamWriter::try_new(out, &schema).map_err(arrow_error)?;
    rows.for_each_piece(RUN_BATCH_ROWS, &mut |piece| {
        let built;
        let batch = match piece {
            Piece::Columns(batch) if batch.schema() == schema => batch,
            Piece::Columns(_) => {
                return Err(ParquetOutError::Invalid {
                    path: path.to_path_buf(),
                    kind: kind.path_name(),
                    reason: "columns not of this stream kind's schema".to_owned(),
                })
            }
            Piece::Rows(slice) => {
                built = rows_batch(kind, slice).map_err(arrow_error)?;
                &built
            }
        };
        writer.write(batch).map_err(arrow_error)
    })?;
    writer.finish().map_err(arrow_error)?;
    writer
        .into_inner()
        .map_err(arrow_error)?
        .into_inner()
        .map_err(|error| io_error(error.into_error()))?;
    Ok(())
}

/// The rows of a run, in the order written, a block or batch at a time.
/// A file that cannot be read ends the rows; [`RunReader::error`] then
/// says why.
pub struct RunReader {
    path: PathBuf,
    kind: StreamKind,
    format: Format,
    rows: std::vec::IntoIter<Row>,
    error: Option<ParquetOutError>,
}

/// The form a run was written in.
enum Format {
    Packed(PackedRunReader<BufReader<File>>),
    Columns(StreamReader<BufReader<File>>),
}

impl RunReader {
    pub fn open(path: &Path, kind: StreamKind) -> Result<RunReader, ParquetOutError> {
        let io_error = |source: io::Error| ParquetOutError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| ParquetOutError::Invalid {
            path: path.to_path_buf(),
            kind: kind.path_name(),
            reason,
        };
        let mut file = BufReader::new(File::open(path).map_err(io_error)?);
        let mut magic = [0u8; PACKED_RUN_MAGIC.len()];
        let packed = match file.read_exact(&mut magic) {
            Ok(()) => magic == PACKED_RUN_MAGIC,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(error) => return Err(io_error(error)),
        };
        let format = if packed {
            Format::Packed(PackedRunReader::open(file, kind).map_err(invalid)?)
        } else {
            file.seek(SeekFrom::Start(0)).map_err(io_error)?;
            let batches =
                StreamReader::try_new(file, None).map_err(|source| ParquetOutError::Arrow {
                    path: path.to_path_buf(),
                    source,
                })?;
            Format::Columns(batches)
        };
        Ok(RunReader {
            path: path.to_path_buf(),
            kind,
            format,
            rows: Vec::new().into_iter(),
            error: None,
        })
    }

    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Why the rows ended early, if they did.
    pub fn error(&mut self) -> Option<ParquetOutError> {
        self.error.take()
    }

    fn invalid(&self, reason: String) -> ParquetOutError {
        ParquetOutError::Invalid {
            path: self.path.clone(),
            kind: self.kind.path_name(),
            reason,
        }
    }

    /// Keeps the first error; ends the rows.
    fn failed<T>(&mut self, reason: String) -> Option<T> {
        self.error = Some(self.invalid(reason));
        None
    }

    /// The next block of a packed run, `None` for a run of columns.
    fn next_block(&mut self) -> Option<Option<HeldRows>> {
        let Format::Packed(blocks) = &mut self.format else {
            return None;
        };
        match blocks.next_block() {
            Ok(block) => Some(block),
            Err(reason) => Some(self.failed(reason)),
        }
    }

    /// The next batch of a run of columns, checked to be of its kind.
    fn next_columns(&mut self) -> Option<RecordBatch> {
        let Format::Columns(batches) = &mut self.format else {
            return None;
        };
        let batch = match batches.next()? {
            Ok(batch) => batch,
            Err(error) => return self.failed(error.to_string()),
        };
        if batch.schema().fields() != schema_for(self.kind).fields() {
            return self.failed("not a run of this stream kind".to_owned());
        }
        Some(batch)
    }

    /// The next rows as the columns of the kind's schema ([`schema_for`]).
    /// None at the end or at an error ([`RunReader::error`] says which).
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.error.is_some() {
            return None;
        }
        match self.next_block() {
            Some(block) => match block?.to_batch() {
                Ok(Some(batch)) => Some(batch),
                Ok(None) => self.failed("a packed block with rows not packed".to_owned()),
                Err(error) => self.failed(error.to_string()),
            },
            None => self.next_columns(),
        }
    }
}

impl Iterator for RunReader {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(row);
            }
            if self.error.is_some() {
                return None;
            }
            let rows = match self.next_block() {
                Some(block) => block?.into_rows(),
                None => {
                    let batch = self.next_columns()?;
                    match rows_from_batch(&batch, self.kind) {
                        Ok(rows) => rows,
                        Err(reason) => return self.failed(reason),
                    }
                }
            };
            self.rows = rows.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AggTradeRow, Decimal8, Source, TradeRow};

    fn trade(id: i64) -> Row {
        Row::Trade(TradeRow {
            trade_id: id,
            price: Decimal8::from_scaled(i128::from(i64::MAX) * 4 + i128::from(id)),
            quantity: Decimal8::from_scaled(7),
            trade_time: 1_700_000_000_000_000 + id,
            is_buyer_maker: id % 2 == 0,
            is_best_match: None,
            trade_type: (id % 3 == 0).then(|| "BLOCK".to_owned()),
            event_time: Some(1_700_000_000_000_100 + id),
            recv_time: None,
            source: if id % 5 == 0 {
                Source::Rest
            } else {
                Source::Ws
            },
        })
    }

    fn agg_trade(id: i64) -> Row {
        Row::AggTrade(AggTradeRow {
            agg_trade_id: id,
            price: Decimal8::from_scaled(6_168_599_000_000 + i128::from(id % 97)),
            quantity: Decimal8::from_scaled(1_000 * i128::from(id % 13)),
            first_trade_id: id * 3,
            last_trade_id: id * 3 + id % 4,
            trade_time: 1_700_000_000_000_000 + id * 1_000,
            is_buyer_maker: id % 2 == 0,
            is_best_match: (id % 3 != 0).then_some(id % 3 == 1),
            event_time: (id % 5 != 0).then_some(1_700_000_000_000_000 + id * 1_000 + 7),
            recv_time: (id % 7 != 0).then_some(1_700_000_000_000_000 + id * 1_000 + 9),
            source: if id % 11 == 0 {
                Source::Rest
            } else {
                Source::Ws
            },
        })
    }

    /// Packed trades: small prices, and trade types for the run's table.
    fn packed_trade(id: i64) -> Row {
        let Row::Trade(mut trade) = trade(id) else {
            unreachable!("a trade");
        };
        trade.price = Decimal8::from_scaled(6_168_599_000_000 + i128::from(id));
        trade.trade_type =
            [None, Some("MARKET"), Some("BLOCK")][(id % 3) as usize].map(str::to_owned);
        Row::Trade(trade)
    }

    fn held(kind: StreamKind, rows: &[Row]) -> HeldRows {
        HeldRows::from_rows(kind, rows.to_vec())
    }

    fn read_rows(path: &Path, kind: StreamKind) -> Result<Vec<Row>, String> {
        let mut reader = RunReader::open(path, kind).map_err(|error| error.to_string())?;
        let rows: Vec<Row> = reader.by_ref().collect();
        match reader.error() {
            Some(error) => Err(error.to_string()),
            None => Ok(rows),
        }
    }

    fn read_batches(path: &Path, kind: StreamKind) -> Result<Vec<Row>, String> {
        let mut reader = RunReader::open(path, kind).map_err(|error| error.to_string())?;
        let mut rows = Vec::new();
        while let Some(batch) = reader.next_batch() {
            assert_eq!(batch.schema(), schema_for(kind));
            rows.extend(rows_from_batch(&batch, kind).expect("columns of the kind"));
        }
        match reader.error() {
            Some(error) => Err(error.to_string()),
            None => Ok(rows),
        }
    }

    #[test]
    fn a_run_reads_back_exactly_what_was_written_and_a_damaged_one_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = run_path(dir.path(), 3);
        // Prices beyond i64: rows kept whole, so a run of columns.
        let rows: Vec<Row> = (0..2_500).map(trade).collect();
        write_run(&path, &held(StreamKind::Trade, &rows)).expect("written");
        assert_ne!(fs::read(&path).expect("read")[..8], PACKED_RUN_MAGIC);
        assert_eq!(read_rows(&path, StreamKind::Trade), Ok(rows.clone()));
        assert_eq!(read_batches(&path, StreamKind::Trade), Ok(rows.clone()));

        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() / 2]).expect("cut");
        let mut reader = RunReader::open(&path, StreamKind::Trade).expect("opened");
        let read = reader.by_ref().count();
        assert!(read < rows.len());
        let error = reader.error().expect("the cut is reported").to_string();
        assert!(error.contains("run-0000000003.run"), "{error}");

        assert_eq!(remove_runs(dir.path()).expect("removed"), 1);
        assert_eq!(remove_runs(dir.path()).expect("nothing left"), 0);
    }

    /// Trades and aggTrades go packed, blocks and table included, and read
    /// back as rows and as columns equal to what was written.
    #[test]
    fn packed_runs_read_back_as_rows_and_as_columns() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (kind, make) in [
            (StreamKind::Trade, packed_trade as fn(i64) -> Row),
            (StreamKind::AggTrade, agg_trade),
        ] {
            for n_rows in [0, 1, 1_024, 2_500] {
                let path = run_path(dir.path(), n_rows as u64);
                let rows: Vec<Row> = (0..n_rows).map(|id| make(id * 2 + 5)).collect();
                write_run(&path, &held(kind, &rows)).expect("written");
                let bytes = fs::read(&path).expect("read");
                assert_eq!(bytes[..8], PACKED_RUN_MAGIC, "{kind:?} {n_rows}");
                assert_eq!(
                    read_rows(&path, kind),
                    Ok(rows.clone()),
                    "{kind:?} {n_rows}"
                );
                assert_eq!(
                    read_batches(&path, kind),
                    Ok(rows.clone()),
                    "{kind:?} {n_rows}"
                );
            }
        }
    }

    /// A packed run cut anywhere, with a byte changed anywhere, with bytes
    /// after its end, or opened as another kind reads as an error naming
    /// the file, never as fewer rows.
    #[test]
    fn a_damaged_packed_run_is_an_error_wherever_it_is_damaged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = run_path(dir.path(), 7);
        let rows: Vec<Row> = (0..1_500).map(packed_trade).collect();
        write_run(&path, &held(StreamKind::Trade, &rows)).expect("written");
        let bytes = fs::read(&path).expect("read");
        let damaged = |what: &str, changed: &[u8]| {
            fs::write(&path, changed).expect("written");
            for read in [read_rows, read_batches] {
                let error = read(&path, StreamKind::Trade).expect_err(what);
                assert!(error.contains("run-0000000007.run"), "{what}: {error}");
            }
        };
        for cut in (8..bytes.len())
            .step_by(97)
            .chain([bytes.len() - 1, bytes.len() - 8])
        {
            damaged(&format!("cut at {cut}"), &bytes[..cut]);
        }
        for at in (8..bytes.len()).step_by(131).chain([bytes.len() - 1]) {
            let mut changed = bytes.clone();
            changed[at] ^= 0x20;
            damaged(&format!("byte {at} changed"), &changed);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        damaged("a byte after the end", &longer);
        fs::write(&path, &bytes).expect("written");
        let error = read_rows(&path, StreamKind::AggTrade).expect_err("another kind");
        assert!(error.contains("not a run of this stream kind"), "{error}");
    }
}
