//! One seal job, run on a blocking thread: write an hour's file (merged
//! with a file already sealed for it) and say how it went. A failure, a
//! panic of the Parquet library included, hands the whole job back, with
//! its holes and coverage, so the hour is sealed again later exactly as
//! judged; nothing about an hour is decided here.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::run_file::RunReader;
use crate::domain::{Hour, Row, Source, StreamKey, StreamKind, TimeUs};
use crate::parquet_out::{
    self, HourFile, HourFileReader, ParquetOutError, Piece, SchemaVersion, SortedRows,
};

use super::spill::{HourRows, RunRows};
use super::SealJob;

/// How a seal job ended.
pub(crate) struct SealOutcome {
    pub(crate) job_key: StreamKey,
    pub(crate) hour: Hour,
    pub(crate) result: Result<SealResult, SealFailure>,
}

pub(crate) enum SealResult {
    Written {
        path: PathBuf,
        n_rows: usize,
        resealed: bool,
    },
    Unchanged,
}

/// A seal that did not happen: why, and the job to run again.
pub(crate) struct SealFailure {
    pub(crate) error: JobError,
    pub(crate) job: SealJob,
}

/// Why a file job on a blocking thread (a seal, a spilled run's write)
/// did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// The Parquet or Arrow code panicked: a bug, not a full disk, so
    /// counted apart.
    #[error("{what} panicked: {message}")]
    Panicked { what: &'static str, message: String },
    #[error(transparent)]
    File(#[from] ParquetOutError),
    #[error("cannot move aside unreadable {path}: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl JobError {
    pub(crate) fn panicked(&self) -> bool {
        matches!(self, JobError::Panicked { .. })
    }
}

/// A fault injected into seals by tests (the data directory's seam, as
/// [`crate::wal::WalFs`] is the WAL's): an I/O error or a panic in place
/// of writing the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealFault {
    Io(std::io::ErrorKind),
    Panic,
}

/// Asked before each file is written; `None` writes it.
pub type SealFaults = Arc<dyn Fn(&StreamKey, Hour) -> Option<SealFault> + Send + Sync>;

/// Runs `call`, turning a panic into [`JobError::Panicked`].
pub(crate) fn unwinding<T>(what: &'static str, call: impl FnOnce() -> T) -> Result<T, JobError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        JobError::Panicked { what, message }
    })
}

/// Writes one hour's file, merging with a file already sealed for it.
/// Runs on a blocking thread.
pub(crate) fn execute_seal(
    data_dir: &Path,
    faults: Option<&SealFaults>,
    mut job: SealJob,
) -> SealOutcome {
    let job_key = job.key.clone();
    let hour = job.hour;
    let fail = |error: JobError, job: SealJob| SealOutcome {
        job_key: job.key.clone(),
        hour: job.hour,
        result: Err(SealFailure { error, job }),
    };
    let path = parquet_out::hour_file_path(data_dir, &job.key, job.hour);
    // Spilled runs are removed once their rows are in the file (or back in
    // memory for good); a failed seal keeps them for the retry.
    let run_files: Vec<PathBuf> = job.rows.run_files().cloned().collect();
    let mut coverage = (job.coverage_from, job.coverage_to);
    let mut unfilled = job.unfilled.clone().unwrap_or_default();
    let mut delivered_at = job.delivered_at;
    let mut clock_offset_us = job.clock_offset_us;
    let mut resealed = false;
    let mut sealed_file = None;
    if path.exists() {
        // The rows decide whether the file is readable: the held rows are
        // merged into them once, a batch at a time, to see whether any is
        // new. A footer whose summary does not parse reads as declaring
        // no hole, as before.
        let read = unwinding("reading the sealed file", || {
            let mut changed = false;
            for_each_resealed(&path, &job.rows, &mut |_, new| {
                changed |= new;
                Ok(())
            })
            .map(|n_sealed| {
                let summary = parquet_out::read_summary(&path).ok();
                (n_sealed, changed, summary, sealed_coverage(&path))
            })
        });
        match read {
            Err(panic) => return fail(panic, job),
            Ok(Err(MergeFailure::Held(error))) => return fail(error.into(), job),
            Ok(Ok((n_sealed, changed, summary, sealed_coverage))) => {
                let sealed_delivery = summary.as_ref().and_then(|summary| summary.delivered_at);
                // A file written at a stop is finished by a seal without
                // the mark (or marked again at a later stop).
                let stop_mark_changed =
                    summary.as_ref().and_then(|summary| summary.stopped_at) != job.stopped_at;
                // Measured while the hour was live: a reseal (late rows,
                // `backfill`, whose jobs know no offset) keeps it.
                clock_offset_us = summary
                    .as_ref()
                    .and_then(|summary| summary.clock_offset_us)
                    .or(clock_offset_us);
                // The delivery is said once it is known, and kept after.
                let delivery_changed = delivered_at.is_some() && delivered_at != sealed_delivery;
                delivered_at = delivered_at.or(sealed_delivery);
                let sealed_version = summary.as_ref().map(|summary| summary.schema_version);
                let sealed_unfilled = summary.map(|summary| summary.unfilled).unwrap_or_default();
                if let Some((from, to)) = sealed_coverage {
                    coverage = (coverage.0.min(from), coverage.1.max(to));
                }
                let unfilled_changed = job
                    .unfilled
                    .as_ref()
                    .is_some_and(|list| *list != sealed_unfilled);
                if job.unfilled.is_none() {
                    unfilled = sealed_unfilled;
                }
                // A file of an older schema version is rewritten in the
                // current one even when its rows stay the same.
                let outdated =
                    sealed_version.is_some_and(|version| version != SchemaVersion::CURRENT);
                if let Some(version) = sealed_version.filter(|_| outdated) {
                    info!(path = %path.display(), from_version = %version, to_version = %SchemaVersion::CURRENT, "sealed file of an older schema version; rewriting it in the current one");
                }
                if !changed
                    && !unfilled_changed
                    && !outdated
                    && !delivery_changed
                    && !stop_mark_changed
                {
                    remove_runs(&run_files);
                    return SealOutcome {
                        job_key,
                        hour,
                        result: Ok(SealResult::Unchanged),
                    };
                }
                resealed = true;
                sealed_file = Some(SealedFile {
                    path: path.clone(),
                    n_rows: n_sealed,
                });
            }
            Ok(Err(MergeFailure::Sealed(error))) => {
                match parquet_out::move_aside(data_dir, &path) {
                    Ok(aside) => {
                        error!(path = %path.display(), %error, aside = %aside.display(), "sealed file unreadable; moved aside and rebuilt from the rows held");
                    }
                    Err(source) => {
                        let error = JobError::MoveAside { path, source };
                        return fail(error, job);
                    }
                }
            }
        }
    }
    let rows = MergedHour {
        rows: std::mem::replace(&mut job.rows, HourRows::new(job.key.kind)),
        sealed: sealed_file,
    };
    let file = HourFile {
        key: job.key.clone(),
        hour: job.hour,
        rows,
        unfilled,
        coverage_from: coverage.0,
        coverage_to: coverage.1,
        clock_offset_us,
        delivered_at,
        stopped_at: job.stopped_at,
    };
    let fault = faults.and_then(|faults| faults(&job.key, job.hour));
    // `file` is only borrowed: its rows survive a panic and go back to the job.
    let written = unwinding("writing the Parquet file", || match fault {
        Some(SealFault::Panic) => panic!("injected seal panic"),
        Some(SealFault::Io(kind)) => Err(ParquetOutError::Io {
            path: path.clone(),
            source: std::io::Error::new(kind, "injected data-dir fault"),
        }),
        None => parquet_out::write_hour_file(data_dir, &file),
    });
    job.rows = file.rows.rows;
    match written {
        Ok(Ok((path, counts))) => {
            let n_rows = counts.n_rows;
            remove_runs(&run_files);
            SealOutcome {
                job_key,
                hour,
                result: Ok(SealResult::Written {
                    path,
                    n_rows,
                    resealed,
                }),
            }
        }
        Ok(Err(error)) => fail(error.into(), job),
        Err(panic) => fail(panic, job),
    }
}

/// Removes spilled runs whose rows are written (a run left behind is
/// removed at the next start).
fn remove_runs(paths: &[PathBuf]) {
    for path in paths {
        if let Err(error) = std::fs::remove_file(path) {
            warn!(path = %path.display(), %error, "cannot remove a spilled run; removed at the next start");
        }
    }
}

/// An hour's rows as the writer reads them: with nothing spilled, the rows
/// in memory; else its runs, read back from disk, merged with them (once
/// per pass of the writer, the first of which counts them). A reseal
/// merges them into the rows of the file already sealed, read back a
/// batch at a time at each pass.
pub(crate) struct MergedHour {
    rows: HourRows,
    sealed: Option<SealedFile>,
}

/// The file a reseal replaces, and the rows its footer counts.
struct SealedFile {
    path: PathBuf,
    n_rows: u64,
}

impl SortedRows for MergedHour {
    fn is_empty(&self) -> bool {
        self.sealed.as_ref().is_none_or(|sealed| sealed.n_rows == 0)
            && !self.rows.has_runs()
            && self.rows.in_memory().is_empty()
    }

    fn for_each_slice(
        &self,
        max: usize,
        each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        let mut slice = Vec::with_capacity(max.clamp(1, 65_536));
        let mut each_row = |row: Row| {
            slice.push(row);
            if slice.len() >= max {
                each(&slice)?;
                slice.clear();
            }
            Ok(())
        };
        if let Some(sealed) = &self.sealed {
            for_each_resealed(&sealed.path, &self.rows, &mut |row, _| each_row(row))
                .map_err(MergeFailure::into_error)?;
            if !slice.is_empty() {
                each(&slice)?;
            }
            return Ok(());
        }
        if !self.rows.has_runs() {
            return self.rows.in_memory().for_each_slice(max, each);
        }
        for_each_merged(&self.rows, &mut each_row)?;
        if !slice.is_empty() {
            each(&slice)?;
        }
        Ok(())
    }

    /// Rows that arrived in key order (the runs' keys ascend from one to
    /// the next and on to those in memory) need no merge: each run's
    /// columns go to the writer as they were written, then the rows in
    /// memory. Otherwise the merged rows.
    fn for_each_piece(
        &self,
        max: usize,
        each: &mut dyn FnMut(Piece<'_>) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        let in_memory = self.rows.in_memory();
        if self.sealed.is_none() && !self.rows.has_runs() {
            return in_memory.for_each_piece(max, each);
        }
        if self.sealed.is_some() || !self.rows.sources_ascend() {
            return self.for_each_slice(max, &mut |rows| each(Piece::Rows(rows)));
        }
        for run in self.rows.runs() {
            match run {
                RunRows::Held(held) => held.for_each_piece(max, each)?,
                RunRows::File { path, n_rows } => {
                    let mut reader = RunReader::open(path, in_memory.kind())?;
                    let mut seen = 0;
                    while let Some(batch) = reader.next_batch() {
                        let n_batch = batch.num_rows();
                        seen += n_batch;
                        for from in (0..n_batch).step_by(max.max(1)) {
                            each(Piece::Columns(&batch.slice(from, max.min(n_batch - from))))?;
                        }
                    }
                    if let Some(error) = reader
                        .error()
                        .or_else(|| short_run(path, &reader, seen, *n_rows))
                    {
                        return Err(error);
                    }
                }
                RunRows::Writing => return Err(still_writing()),
            }
        }
        in_memory.for_each_piece(max, each)
    }
}

/// A spilled run cannot be read while it is being written.
fn still_writing() -> ParquetOutError {
    ParquetOutError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other("a spilled run is still being written"),
    }
}

/// A run must read back as many rows as were written to it.
fn short_run(
    path: &Path,
    reader: &RunReader,
    seen: usize,
    expected: usize,
) -> Option<ParquetOutError> {
    (seen != expected).then(|| ParquetOutError::Invalid {
        path: path.to_path_buf(),
        kind: reader.kind().path_name(),
        reason: format!("the run holds {seen} rows; {expected} were written"),
    })
}

/// Calls `each` with an hour's rows in key order: its runs (read back) and
/// the rows in memory merged under the merge rule. A run that cannot be
/// read, or reads back other than the rows it was written with, fails it.
fn for_each_merged(
    rows: &HourRows,
    each: &mut dyn FnMut(Row) -> Result<(), ParquetOutError>,
) -> Result<(), ParquetOutError> {
    let failure = Rc::new(RefCell::new(None));
    let mut sources: Vec<Box<dyn Iterator<Item = Row> + '_>> = Vec::new();
    for run in rows.runs() {
        sources.push(match run {
            RunRows::Held(held) => held.rows(),
            RunRows::File { path, n_rows } => Box::new(CheckedRun {
                reader: RunReader::open(path, rows.kind())?,
                path: path.clone(),
                expected: *n_rows,
                seen: 0,
                failure: failure.clone(),
            }),
            RunRows::Writing => return Err(still_writing()),
        });
    }
    for row in rows.merged(sources) {
        if let Some(error) = failure.borrow_mut().take() {
            return Err(error);
        }
        each(row)?;
    }
    let error = failure.borrow_mut().take();
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// A run read back, checked: it must end where it was written to.
struct CheckedRun {
    reader: RunReader,
    path: PathBuf,
    expected: usize,
    seen: usize,
    failure: Rc<RefCell<Option<ParquetOutError>>>,
}

impl Iterator for CheckedRun {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if let Some(row) = self.reader.next() {
            self.seen += 1;
            return Some(row);
        }
        let error = self
            .reader
            .error()
            .or_else(|| short_run(&self.path, &self.reader, self.seen, self.expected));
        if let Some(error) = error {
            self.failure.borrow_mut().get_or_insert(error);
        }
        None
    }
}

/// Which side of a reseal's merge failed: the sealed file (unreadable, or
/// its keys not ascending: moved aside) or the held rows (a spilled run
/// that cannot be read back: the seal is retried).
enum MergeFailure {
    Sealed(ParquetOutError),
    Held(ParquetOutError),
}

impl MergeFailure {
    fn into_error(self) -> ParquetOutError {
        match self {
            MergeFailure::Sealed(error) | MergeFailure::Held(error) => error,
        }
    }
}

/// Calls `each` with the rows of the sealed file at `path` and the rows
/// `held` for its hour, in key order, merged under the merge rule
/// ([`crate::seal::insert_row`]: a stream row takes the place of a REST
/// row; otherwise the sealed row stays), each with whether it is new to
/// the file. The file is read a batch at a time, so a reseal holds no more
/// of an hour than the writer's slices. Returns the rows the file held.
fn for_each_resealed(
    path: &Path,
    held: &HourRows,
    each: &mut dyn FnMut(Row, bool) -> Result<(), ParquetOutError>,
) -> Result<u64, MergeFailure> {
    let mut sealed = SealedRows::open(path, held.kind()).map_err(MergeFailure::Sealed)?;
    let merged = for_each_merged(held, &mut |row| {
        let key = row.key();
        while sealed.peek().is_some_and(|next| next.key() < key) {
            let next = sealed.take().expect("peeked");
            each(next, false)?;
        }
        match sealed.peek() {
            Some(next) if next.key() == key => {
                let kept = sealed.take().expect("peeked");
                if kept.source() == Source::Rest && row.source() == Source::Ws {
                    each(row, true)
                } else {
                    each(kept, false)
                }
            }
            _ => each(row, true),
        }
    });
    if let Err(error) = merged {
        return Err(sealed
            .failure
            .take()
            .map_or(MergeFailure::Held(error), MergeFailure::Sealed));
    }
    while let Some(next) = sealed.take() {
        each(next, false).map_err(MergeFailure::Held)?;
    }
    match sealed.failure.take() {
        Some(error) => Err(MergeFailure::Sealed(error)),
        None => Ok(sealed.n_read),
    }
}

/// A sealed file's rows one at a time, checked to ascend by key. A batch
/// that cannot be read, or a key out of order, ends them and is kept in
/// `failure` (the merge then fails: the file breaks the contract).
struct SealedRows {
    reader: HourFileReader,
    batch: std::vec::IntoIter<Row>,
    next: Option<Row>,
    last_key: Option<i64>,
    n_read: u64,
    failure: Option<ParquetOutError>,
}

impl SealedRows {
    fn open(path: &Path, kind: StreamKind) -> Result<SealedRows, ParquetOutError> {
        Ok(SealedRows {
            reader: HourFileReader::open(path, kind)?,
            batch: Vec::new().into_iter(),
            next: None,
            last_key: None,
            n_read: 0,
            failure: None,
        })
    }

    fn peek(&mut self) -> Option<&Row> {
        while self.next.is_none() && self.failure.is_none() {
            if let Some(row) = self.batch.next() {
                if self.last_key.is_some_and(|last| row.key() <= last) {
                    self.failure = Some(self.reader.invalid(format!(
                        "key {} follows key {}: keys must ascend",
                        row.key(),
                        self.last_key.unwrap_or_default()
                    )));
                    break;
                }
                self.last_key = Some(row.key());
                self.n_read += 1;
                self.next = Some(row);
                break;
            }
            match self.reader.next_rows() {
                Some(Ok(rows)) => self.batch = rows.into_iter(),
                Some(Err(error)) => self.failure = Some(error),
                None => break,
            }
        }
        self.next.as_ref()
    }

    fn take(&mut self) -> Option<Row> {
        self.peek();
        self.next.take()
    }
}

fn sealed_coverage(path: &Path) -> Option<(TimeUs, TimeUs)> {
    let metadata = parquet_out::read_metadata(path).ok()?;
    let value = |key: &str| {
        metadata
            .iter()
            .find(|(name, _)| name == key)
            .and_then(|(_, value)| value.parse().ok())
    };
    Some((value("coverage_from")?, value("coverage_to")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Market, Row, StreamKind, Symbol};
    use crate::wal::SegmentId;

    const HOUR_START: TimeUs = 1_723_161_600_000_000;

    fn trade(id: i64) -> Row {
        Row::test_trade(id, HOUR_START + id)
    }

    fn job(rows: Vec<Row>, late: bool) -> SealJob {
        let hour = Hour::containing(HOUR_START);
        SealJob {
            key: StreamKey {
                market: Market::Spot,
                symbol: Symbol::new("BTCUSDT").expect("valid"),
                kind: StreamKind::Trade,
            },
            hour,
            rows: HourRows::from_rows(StreamKind::Trade, rows),
            first_segment: Some(SegmentId(1)),
            coverage_from: hour.start() + 10,
            coverage_to: hour.end(),
            clock_offset_us: None,
            unfilled: None,
            late,
            delivered_at: None,
            stopped_at: None,
        }
    }

    #[test]
    fn late_rows_reseal_by_merging_and_nothing_new_leaves_the_file_alone() {
        let root = tempfile::tempdir().expect("temporary directory");
        let first = execute_seal(root.path(), None, job(vec![trade(1), trade(3)], false));
        let Ok(SealResult::Written {
            path,
            n_rows: 2,
            resealed: false,
        }) = first.result
        else {
            panic!("first seal")
        };
        let late = execute_seal(root.path(), None, job(vec![trade(2)], true));
        assert!(matches!(
            late.result,
            Ok(SealResult::Written {
                n_rows: 3,
                resealed: true,
                ..
            })
        ));
        let keys: Vec<i64> = parquet_out::read_hour_file(&path, StreamKind::Trade)
            .expect("readable")
            .iter()
            .map(Row::key)
            .collect();
        assert_eq!(keys, vec![1, 2, 3]);
        let modified = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .expect("mtime");
        let again = execute_seal(root.path(), None, job(vec![trade(2), trade(3)], true));
        assert!(matches!(again.result, Ok(SealResult::Unchanged)));
        assert_eq!(
            std::fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .expect("mtime"),
            modified
        );
    }

    /// The clock offset measured while the hour was live stays through a
    /// reseal whose job knows none (`backfill`, late rows after the
    /// offsets were pruned); a file that had none takes the job's.
    #[test]
    fn a_reseal_keeps_the_clock_offset_the_hour_was_sealed_with() {
        let root = tempfile::tempdir().expect("temporary directory");
        let offset = |path: &Path| {
            parquet_out::read_summary(path)
                .expect("summary")
                .clock_offset_us
        };
        let first = execute_seal(
            root.path(),
            None,
            SealJob {
                clock_offset_us: Some(-1234),
                ..job(vec![trade(1), trade(3)], false)
            },
        );
        let Ok(SealResult::Written { path, .. }) = first.result else {
            panic!("first seal")
        };
        assert_eq!(offset(&path), Some(-1234));
        let late = execute_seal(root.path(), None, job(vec![trade(2)], true));
        assert!(matches!(
            late.result,
            Ok(SealResult::Written { n_rows: 3, .. })
        ));
        assert_eq!(offset(&path), Some(-1234), "kept through the reseal");
        let other = tempfile::tempdir().expect("temporary directory");
        let first = execute_seal(other.path(), None, job(vec![trade(1)], false));
        let Ok(SealResult::Written { path, .. }) = first.result else {
            panic!("first seal")
        };
        assert_eq!(offset(&path), None);
        let late = execute_seal(
            other.path(),
            None,
            SealJob {
                clock_offset_us: Some(77),
                ..job(vec![trade(2)], true)
            },
        );
        assert!(matches!(
            late.result,
            Ok(SealResult::Written { n_rows: 2, .. })
        ));
        assert_eq!(offset(&path), Some(77), "taken where the file had none");
    }

    /// A file written at an orderly stop (`stopped_at`) is sealed again
    /// without the mark by the run that finishes its hour, even when no row
    /// is new; `backfill`'s reseal, which passes the mark on, keeps it.
    #[test]
    fn the_next_seal_of_a_stopped_hour_drops_the_mark_even_with_no_new_row() {
        let root = tempfile::tempdir().expect("temporary directory");
        let stopped_at = HOUR_START + 99;
        let stop = execute_seal(
            root.path(),
            None,
            SealJob {
                stopped_at: Some(stopped_at),
                ..job(vec![trade(1), trade(2)], false)
            },
        );
        let Ok(SealResult::Written { path, .. }) = stop.result else {
            panic!("the stop's file")
        };
        let mark = |path: &Path| parquet_out::read_summary(path).expect("summary").stopped_at;
        assert_eq!(mark(&path), Some(stopped_at));
        let kept = execute_seal(
            root.path(),
            None,
            SealJob {
                stopped_at: Some(stopped_at),
                ..job(vec![trade(2)], true)
            },
        );
        assert!(matches!(kept.result, Ok(SealResult::Unchanged)));
        assert_eq!(mark(&path), Some(stopped_at));
        let finished = execute_seal(root.path(), None, job(vec![trade(1), trade(2)], false));
        assert!(matches!(
            finished.result,
            Ok(SealResult::Written { n_rows: 2, .. })
        ));
        assert_eq!(mark(&path), None);
    }

    /// A trade from `source` whose price tells the two sides apart.
    fn trade_from(id: i64, source: Source, price: i128) -> Row {
        let Row::Trade(mut row) = trade(id) else {
            unreachable!("a trade")
        };
        row.source = source;
        row.price = crate::domain::Decimal8::from_scaled(price);
        if source == Source::Rest {
            (row.event_time, row.recv_time) = (None, None);
        }
        Row::Trade(row)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// A reseal streams the sealed file (several of the reader's
        /// batches) and gives what the in-memory merge rule gives.
        #[test]
        fn a_reseal_merged_a_batch_at_a_time_equals_the_merge_rule(
            sealed in proptest::collection::btree_map(0i64..4_000, proptest::bool::ANY, 0..3_000),
            held in proptest::collection::btree_map(0i64..4_000, proptest::bool::ANY, 0..200),
        ) {
            let source = |rest: bool| if rest { Source::Rest } else { Source::Ws };
            let sealed: Vec<Row> = sealed
                .iter()
                .map(|(&id, &rest)| trade_from(id, source(rest), 1))
                .collect();
            let held: Vec<Row> = held
                .iter()
                .map(|(&id, &rest)| trade_from(id, source(rest), 2))
                .collect();
            let root = tempfile::tempdir().expect("temporary directory");
            let path = parquet_out::hour_file_path(root.path(), &job(Vec::new(), false).key, Hour::containing(HOUR_START));
            if !sealed.is_empty() {
                let first = execute_seal(root.path(), None, job(sealed.clone(), false));
                proptest::prop_assert!(first.result.is_ok());
            }
            let (expected, changed) = crate::seal::merge_into_sealed(sealed.clone(), held.clone());
            let late = execute_seal(root.path(), None, job(held, true));
            match late.result {
                Ok(SealResult::Unchanged) => proptest::prop_assert!(!changed && !sealed.is_empty()),
                Ok(SealResult::Written { n_rows, .. }) => {
                    proptest::prop_assert!(changed || sealed.is_empty());
                    proptest::prop_assert_eq!(n_rows, expected.len());
                }
                Err(failure) => proptest::prop_assert!(false, "{}", failure.error),
            }
            if path.exists() {
                let read = parquet_out::read_hour_file(&path, StreamKind::Trade).expect("readable");
                proptest::prop_assert_eq!(read, expected);
            }
        }
    }

    #[test]
    fn a_reseal_holds_a_batch_of_the_sealed_hour_not_the_hour() {
        const N_ROWS: i64 = 200_000;
        let root = tempfile::tempdir().expect("temporary directory");
        let rows: Vec<Row> = (0..N_ROWS).map(|id| trade(id * 2)).collect();
        let first = execute_seal(root.path(), None, job(rows, false));
        let Ok(SealResult::Written { path, .. }) = first.result else {
            panic!("first seal")
        };
        let mut late = None;
        let peak = allocation_counter::measure(|| {
            late = Some(execute_seal(root.path(), None, job(vec![trade(3)], true)));
        })
        .bytes_max;
        assert!(matches!(
            late.expect("ran").result,
            Ok(SealResult::Written { n_rows, .. }) if n_rows == N_ROWS as usize + 1
        ));
        // The hour in memory as rows alone, as a reseal held it before,
        // is a bound it must stay far under.
        let whole = allocation_counter::measure(|| {
            parquet_out::read_hour_file(&path, StreamKind::Trade).expect("readable");
        })
        .bytes_max;
        eprintln!("reseal peak {peak} bytes; the hour as rows {whole} bytes");
        assert!(
            peak < whole / 4,
            "reseal peak {peak} bytes; the hour as rows {whole}"
        );
    }

    #[test]
    fn a_sealed_file_whose_keys_do_not_ascend_is_moved_aside_and_rebuilt() {
        let root = tempfile::tempdir().expect("temporary directory");
        let disordered = HourFile {
            key: job(Vec::new(), false).key,
            hour: Hour::containing(HOUR_START),
            rows: vec![trade(1), trade(3), trade(2)],
            unfilled: Vec::new(),
            coverage_from: HOUR_START,
            coverage_to: HOUR_START + 3_600_000_000,
            clock_offset_us: None,
            delivered_at: None,
            stopped_at: None,
        };
        let (path, _) = parquet_out::write_hour_file(root.path(), &disordered).expect("written");
        let late = execute_seal(root.path(), None, job(vec![trade(4)], true));
        assert!(matches!(
            late.result,
            Ok(SealResult::Written { n_rows: 1, .. })
        ));
        let keys: Vec<i64> = parquet_out::read_hour_file(&path, StreamKind::Trade)
            .expect("readable")
            .iter()
            .map(Row::key)
            .collect();
        assert_eq!(keys, vec![4], "rebuilt from the rows held");
        let relative = path.strip_prefix(root.path()).expect("under the root");
        let aside =
            parquet_out::corrupt_dir(root.path()).join(format!("{}.corrupt", relative.display()));
        assert!(aside.exists(), "the disordered file is kept aside");
    }

    #[test]
    fn unreadable_sealed_file_is_moved_aside_and_rebuilt() {
        let root = tempfile::tempdir().expect("temporary directory");
        let first = execute_seal(root.path(), None, job(vec![trade(1)], false));
        let Ok(SealResult::Written { path, .. }) = first.result else {
            panic!("first seal")
        };
        std::fs::write(&path, b"not parquet").expect("corrupt it");
        let late = execute_seal(root.path(), None, job(vec![trade(2)], true));
        assert!(matches!(
            late.result,
            Ok(SealResult::Written { n_rows: 1, .. })
        ));
        let relative = path.strip_prefix(root.path()).expect("under the root");
        let aside =
            parquet_out::corrupt_dir(root.path()).join(format!("{}.corrupt", relative.display()));
        assert_eq!(
            std::fs::read(&aside).expect("the bad file is kept aside for inspection"),
            b"not parquet"
        );
        let in_folder: Vec<_> = std::fs::read_dir(path.parent().expect("folder"))
            .expect("listable")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(in_folder.len(), 1, "only the rebuilt file: {in_folder:?}");
        assert_eq!(
            parquet_out::read_hour_file(&path, StreamKind::Trade)
                .expect("rebuilt")
                .len(),
            1
        );
    }

    /// A crash after each step of sealing, then a restart: temporary files
    /// are removed and the rows the WAL still holds are sealed again. The
    /// file ends with every row exactly once, first seal or reseal.
    #[test]
    fn a_crash_at_every_step_of_sealing_leaves_each_row_exactly_once_after_restart() {
        use parquet_out::SealStep;
        for already_sealed in [false, true] {
            for step in [
                SealStep::Written,
                SealStep::Synced,
                SealStep::Renamed,
                SealStep::DirectorySynced,
            ] {
                let root = tempfile::tempdir().expect("temporary directory");
                if already_sealed {
                    let first =
                        execute_seal(root.path(), None, job(vec![trade(1), trade(3)], false));
                    assert!(matches!(first.result, Ok(SealResult::Written { .. })));
                }
                let rows = vec![trade(1), trade(2), trade(3), trade(4)];
                let crashed = job(rows.clone(), already_sealed);
                let file = HourFile {
                    key: crashed.key.clone(),
                    hour: crashed.hour,
                    rows: rows.clone(),
                    unfilled: Vec::new(),
                    coverage_from: crashed.coverage_from,
                    coverage_to: crashed.coverage_to,
                    clock_offset_us: None,
                    delivered_at: None,
                    stopped_at: None,
                };
                let (path, _) = parquet_out::write_hour_file_until(root.path(), &file, Some(step))
                    .expect("written up to the step");

                // Restart: leftovers go, and the WAL (never deleted before a
                // seal finished) gives the same rows again.
                parquet_out::remove_temporary_files(root.path()).expect("cleanup");
                let replayed = execute_seal(root.path(), None, job(rows.clone(), path.exists()));
                assert!(
                    replayed.result.is_ok(),
                    "{step:?}: {:?}",
                    replayed
                        .result
                        .err()
                        .map(|failure| failure.error.to_string())
                );
                let keys: Vec<i64> = parquet_out::read_hour_file(&path, StreamKind::Trade)
                    .expect("readable")
                    .iter()
                    .map(Row::key)
                    .collect();
                assert_eq!(
                    keys,
                    vec![1, 2, 3, 4],
                    "{step:?}, already sealed: {already_sealed}"
                );
                let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("directory"))
                    .expect("listable")
                    .flatten()
                    .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
                    .collect();
                assert!(leftovers.is_empty(), "{step:?}: {leftovers:?}");
            }
        }
        // After the WAL segments were deleted nothing is replayed: the
        // durable file alone holds the hour, once.
        let root = tempfile::tempdir().expect("temporary directory");
        let sealed = execute_seal(root.path(), None, job(vec![trade(1), trade(2)], false));
        let Ok(SealResult::Written { path, .. }) = sealed.result else {
            panic!("sealed")
        };
        parquet_out::remove_temporary_files(root.path()).expect("cleanup");
        assert_eq!(
            parquet_out::read_hour_file(&path, StreamKind::Trade)
                .expect("readable")
                .len(),
            2
        );
    }

    /// Copies the version-1 fixture (`tests/fixtures/dataset-v1`) into a
    /// fresh root.
    fn version_one_dataset() -> tempfile::TempDir {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dataset-v1");
        let root = tempfile::tempdir().expect("temporary directory");
        let mut stack = vec![fixture.clone()];
        while let Some(directory) = stack.pop() {
            for entry in std::fs::read_dir(&directory)
                .expect("fixture listable")
                .flatten()
            {
                let path = entry.path();
                let target = root
                    .path()
                    .join(path.strip_prefix(&fixture).expect("inside"));
                if path.is_dir() {
                    std::fs::create_dir_all(&target).expect("folder");
                    stack.push(path);
                } else if path
                    .extension()
                    .is_some_and(|extension| extension == "parquet")
                {
                    std::fs::copy(&path, &target).expect("copy");
                }
            }
        }
        root
    }

    /// A late row for an hour whose file an older release sealed: the file
    /// is rewritten as version 2 (no `symbol` column), with the rows it
    /// held, the late one, and its declared holes and coverage kept.
    #[test]
    fn a_late_reseal_over_a_version_one_file_writes_version_two_with_every_row() {
        let root = version_one_dataset();
        let late = job(vec![trade(1)], true);
        let path = parquet_out::hour_file_path(root.path(), &late.key, late.hour);
        let before = parquet_out::read_summary(&path).expect("v1 summary");
        assert_eq!(before.schema_version, SchemaVersion::V1);
        let old_rows = parquet_out::read_hour_file(&path, StreamKind::Trade).expect("v1 rows");
        assert_eq!(old_rows.len(), 3);

        let outcome = execute_seal(root.path(), None, late);
        assert!(matches!(
            outcome.result,
            Ok(SealResult::Written {
                n_rows: 4,
                resealed: true,
                ..
            })
        ));
        let after = parquet_out::read_summary(&path).expect("v2 summary");
        assert_eq!(after.schema_version, SchemaVersion::V2);
        assert_eq!(after.row_count, 4);
        let metadata: std::collections::HashMap<_, _> = parquet_out::read_metadata(&path)
            .expect("metadata")
            .into_iter()
            .collect();
        assert_eq!(metadata["schema_version"], "2");
        assert_eq!(metadata["symbol"], "BTCUSDT");
        assert_eq!(
            metadata["coverage_from"],
            HOUR_START.to_string(),
            "the file's whole-hour coverage is kept"
        );
        let rows = parquet_out::read_hour_file(&path, StreamKind::Trade).expect("v2 rows");
        let mut expected = vec![trade(1)];
        expected.extend(old_rows);
        assert_eq!(rows, expected, "every old row kept, the late one merged in");

        // The empty version-1 hour with a declared hole: a replay with no
        // new row still rewrites it, holes kept.
        let mut empty = job(vec![], true);
        empty.key.symbol = Symbol::new("ETHUSDT").expect("valid");
        let empty_path = parquet_out::hour_file_path(root.path(), &empty.key, empty.hour);
        let declared = parquet_out::read_summary(&empty_path).expect("v1").unfilled;
        assert_eq!(declared.len(), 1);
        let outcome = execute_seal(root.path(), None, empty);
        assert!(matches!(
            outcome.result,
            Ok(SealResult::Written { n_rows: 0, .. })
        ));
        let rewritten = parquet_out::read_summary(&empty_path).expect("v2");
        assert_eq!(rewritten.schema_version, SchemaVersion::V2);
        assert_eq!(rewritten.unfilled, declared);
    }

    #[test]
    fn a_failed_or_panicking_write_hands_the_whole_job_back() {
        let root = tempfile::tempdir().expect("temporary directory");
        for fault in [
            SealFault::Io(std::io::ErrorKind::StorageFull),
            SealFault::Panic,
        ] {
            let faults: SealFaults = Arc::new(move |_, _| Some(fault));
            let mut sent = job(vec![trade(1), trade(2)], false);
            sent.unfilled = Some(vec![crate::domain::UnfilledRange {
                from: Some(3),
                to: Some(4),
                from_time: HOUR_START,
                to_time: HOUR_START + 10,
                reason: "rest unreachable".to_owned(),
            }]);
            let outcome = execute_seal(root.path(), Some(&faults), sent.clone());
            let Err(failure) = outcome.result else {
                panic!("{fault:?}: the seal must fail")
            };
            assert_eq!(failure.error.panicked(), fault == SealFault::Panic);
            assert_eq!(failure.job.rows.to_vec(), sent.rows.to_vec(), "{fault:?}");
            assert_eq!(failure.job.unfilled, sent.unfilled, "{fault:?}");
            assert_eq!(
                (failure.job.coverage_from, failure.job.coverage_to),
                (sent.coverage_from, sent.coverage_to)
            );
            assert!(parquet_out::sealed_hours(root.path(), &sent.key).is_empty());
        }
    }

    /// An hour spilled to run files seals every row once, in key order:
    /// read back as written when its rows arrived in key order, merged when
    /// a later row lies below a run's last key; a cut run fails the seal
    /// with the run's name.
    #[test]
    fn a_spilled_hours_runs_seal_as_written_or_merged_and_a_cut_run_fails_it() {
        use crate::domain::Source;
        use crate::recorder::run_file::{run_path, write_run};

        let row = |id: i64| match trade(id) {
            Row::Trade(mut trade) => {
                trade.trade_type = (id % 3 == 0).then(|| "BLOCK".to_owned());
                trade.source = if id % 7 == 0 {
                    Source::Rest
                } else {
                    Source::Ws
                };
                Row::Trade(trade)
            }
            _ => unreachable!(),
        };
        for in_key_order in [true, false] {
            let wal = tempfile::tempdir().expect("temporary directory");
            let root = tempfile::tempdir().expect("temporary directory");
            let mut sent = job(Vec::new(), false);
            // 0..5,000 but 100..200, which come last when not in key order.
            let late: Vec<i64> = (100..200).collect();
            let arrivals: Vec<i64> = if in_key_order {
                (0..5_000).collect()
            } else {
                (0..5_000)
                    .filter(|id| !late.contains(id))
                    .chain(late.clone())
                    .collect()
            };
            for (index, id) in arrivals.iter().enumerate() {
                sent.rows.insert(row(*id));
                if index % 1_300 == 1_299 {
                    let run_id = index as u64;
                    let spill = sent.rows.spill(run_id).expect("rows to spill");
                    let path = run_path(wal.path(), run_id);
                    write_run(&path, &spill.rows).expect("written");
                    assert!(sent.rows.spill_done(run_id, Ok(path)));
                }
            }
            assert_eq!(sent.rows.sources_ascend(), in_key_order);
            let runs: Vec<PathBuf> = sent.rows.run_files().cloned().collect();
            assert_eq!(runs.len(), 3);

            let cut = sent.clone();
            let bytes = std::fs::read(&runs[1]).expect("run");
            let outcome = execute_seal(root.path(), None, sent);
            let Ok(SealResult::Written { path, n_rows, .. }) = outcome.result else {
                panic!("the seal must write the file")
            };
            assert_eq!(n_rows, 5_000);
            let expected: Vec<Row> = (0..5_000).map(row).collect();
            assert_eq!(
                parquet_out::read_hour_file(&path, StreamKind::Trade).expect("readable"),
                expected
            );
            let n_rest = expected
                .iter()
                .filter(|row| row.source() == Source::Rest)
                .count();
            let by_source = format!("{{\"ws\":{},\"rest\":{n_rest}}}", 5_000 - n_rest);
            let metadata = parquet_out::read_metadata(&path).expect("footer");
            for (key, value) in [
                ("rows_by_source", by_source.as_str()),
                ("first_key", "0"),
                ("last_key", "4999"),
            ] {
                assert!(
                    metadata.contains(&(key.to_owned(), value.to_owned())),
                    "{key} {metadata:?}"
                );
            }

            std::fs::write(&runs[1], &bytes[..bytes.len() / 2]).expect("cut");
            let outcome = execute_seal(root.path(), None, cut);
            let Err(failure) = outcome.result else {
                panic!("a cut run must fail the seal")
            };
            let message = failure.error.to_string();
            assert!(message.contains("run-"), "{message}");
        }
    }
}
