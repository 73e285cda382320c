//! Spilled runs on disk: an unsealed hour's rows written beside the WAL
//! when the rows held pass `memory.max_held_mb` (`recorder/spill.rs`), read
//! back once when the hour seals.
//!
//! A run is an Arrow IPC stream of the dataset's own columns (the schema
//! of its stream kind), in batches of [`RUN_BATCH_ROWS`]: the rows go
//! through the same conversion as a sealed file's, and reading one back
//! holds one small batch per run. No compression and no fsync: a run lives
//! less than an hour, the WAL holds every row of it until the hour is
//! sealed, and the runs are removed at start (replay rebuilds them).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::domain::{Row, StreamKind};

use super::read::rows_from_batch;
use super::schema::schema_for;
use super::write::Columns;
use super::{ParquetOutError, Piece, SortedRows};

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
    runs_dir(wal_dir).join(format!("run-{run_id:010}.arrow"))
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

/// Writes `rows` (sorted and unique by key) as run `path`.
pub fn write_run(
    path: &Path,
    kind: StreamKind,
    rows: &dyn SortedRows,
) -> Result<(), ParquetOutError> {
    let io_error = |source: io::Error| ParquetOutError::Io {
        path: path.to_path_buf(),
        source,
    };
    let arrow_error = |source| ParquetOutError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let file = File::create(path).map_err(io_error)?;
    let schema = schema_for(kind);
    let mut writer = StreamWriter::try_new(BufWriter::with_capacity(RUN_IO_BYTES, file), &schema)
        .map_err(arrow_error)?;
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
                let mut columns = Columns::new(kind);
                for row in slice {
                    columns.push(row);
                }
                built = columns.finish().map_err(arrow_error)?;
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

/// The rows of a run, in the order written, a batch at a time. A file
/// that cannot be read ends the rows; [`RunReader::error`] then says why.
pub struct RunReader {
    path: PathBuf,
    kind: StreamKind,
    batches: StreamReader<BufReader<File>>,
    rows: std::vec::IntoIter<Row>,
    error: Option<ParquetOutError>,
}

impl RunReader {
    pub fn open(path: &Path, kind: StreamKind) -> Result<RunReader, ParquetOutError> {
        let file = File::open(path).map_err(|source| ParquetOutError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let batches = StreamReader::try_new(BufReader::new(file), None).map_err(|source| {
            ParquetOutError::Arrow {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(RunReader {
            path: path.to_path_buf(),
            kind,
            batches,
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
}

impl RunReader {
    /// The next batch of rows as they were written: the columns of the
    /// kind's schema ([`schema_for`]). None at the end or at an error
    /// ([`RunReader::error`] says which).
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.error.is_some() {
            return None;
        }
        let batch = match self.batches.next()? {
            Ok(batch) => batch,
            Err(error) => {
                self.error = Some(self.invalid(error.to_string()));
                return None;
            }
        };
        if batch.schema().fields() != schema_for(self.kind).fields() {
            self.error = Some(self.invalid("not a run of this stream kind".to_owned()));
            return None;
        }
        Some(batch)
    }
}

impl Iterator for RunReader {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(row);
            }
            let batch = self.next_batch()?;
            match rows_from_batch(&batch, self.kind) {
                Ok(rows) => self.rows = rows.into_iter(),
                Err(reason) => {
                    self.error = Some(self.invalid(reason));
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Decimal8, Source, TradeRow};

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

    #[test]
    fn a_run_reads_back_exactly_what_was_written_and_a_damaged_one_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = run_path(dir.path(), 3);
        let rows: Vec<Row> = (0..2_500).map(trade).collect();
        write_run(&path, StreamKind::Trade, &rows).expect("written");
        let mut reader = RunReader::open(&path, StreamKind::Trade).expect("opened");
        let read: Vec<Row> = reader.by_ref().collect();
        assert!(reader.error().is_none());
        assert_eq!(read, rows);

        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() / 2]).expect("cut");
        let mut reader = RunReader::open(&path, StreamKind::Trade).expect("opened");
        let read = reader.by_ref().count();
        assert!(read < rows.len());
        let error = reader.error().expect("the cut is reported").to_string();
        assert!(error.contains("run-0000000003.arrow"), "{error}");

        assert_eq!(remove_runs(dir.path()).expect("removed"), 1);
        assert_eq!(remove_runs(dir.path()).expect("nothing left"), 0);
    }
}
