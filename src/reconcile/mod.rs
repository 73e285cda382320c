//! Reconciling the dataset with the official archives of data.binance.vision
//! (`verify --against PATH...`): daily or monthly trades, aggTrades and
//! klines files, zip or CSV, compared by key with the rows of our sealed
//! files of the same (market, stream, symbol) and time range.
//!
//! Layers: [`archive`] names and parses the official files (pure) and reads
//! them line by line; [`compare`] matches rows by key and attributes every
//! difference (pure); this module reads our files through
//! [`crate::parquet_out`] and feeds both to the comparison an hour at a
//! time; [`report`] prints the outcome.
//!
//! Memory does not grow with the archive: archive rows are buffered by the
//! hour of their time, and an hour is compared once the archive has reached
//! two hours past it. An archive row more than that behind the rows before
//! it is refused with its line ([`ReconcileError::OutOfOrder`]); official
//! files are in time order.
//!
//! The range compared is the period the archive's name states (a day or a
//! month), or, for a name that states none, the hours its rows fall in.

pub mod archive;
pub mod compare;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::domain::{Hour, Market, StreamKey, StreamKind, Symbol, MICROS_PER_HOUR};
use crate::parquet_out::{self, ParquetOutError};

use archive::{for_each_line, market_hint, ArchiveName, ArchiveRow, LineParser, Period};
use compare::{Engine, OurHour};
pub use report::{ReconcileReport, MAX_EXAMPLES};

/// Why a reconcile could not run. None of these is helped by a retry: each
/// names the file (and line) to look at.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable zip: {source}")]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("{path} {reason}")]
    ZipLayout { path: PathBuf, reason: String },
    #[error("{path} line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{path} line {line}: a row of hour {hour} comes after rows of {reached}; \
         sort the file by time"
    )]
    OutOfOrder {
        path: PathBuf,
        line: u64,
        hour: String,
        reached: String,
    },
    #[error(
        "{path}: cannot tell which stream it holds ({reason}); name the market, symbol and stream"
    )]
    UnknownArchive { path: PathBuf, reason: String },
    #[error("no archive file given")]
    NoArchives,
    #[error("our dataset: {0}")]
    Dataset(#[from] ParquetOutError),
}

/// What to use instead of what an archive's name says: for files renamed,
/// or to say the market, which the name of an official file does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOverride {
    pub market: Option<Market>,
    pub symbol: Option<Symbol>,
    pub kind: Option<StreamKind>,
}

/// The stream an archive holds: its name's symbol and stream, the market
/// from its path (`spot`, `futures/um`, `futures/cm`) or a COIN-M symbol,
/// else spot; each overridden where `overrides` says.
pub fn infer_stream_key(
    path: &Path,
    overrides: &StreamOverride,
) -> Result<StreamKey, ReconcileError> {
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let parsed = ArchiveName::parse(file_name);
    let unknown = |reason: String| ReconcileError::UnknownArchive {
        path: path.to_path_buf(),
        reason,
    };
    let symbol = match (&overrides.symbol, &parsed) {
        (Some(symbol), _) => symbol.clone(),
        (None, Ok(name)) => name.symbol.clone(),
        (None, Err(reason)) => return Err(unknown(reason.clone())),
    };
    let kind = match (overrides.kind, &parsed) {
        (Some(kind), _) => kind,
        (None, Ok(name)) => name.kind,
        (None, Err(reason)) => return Err(unknown(reason.clone())),
    };
    let market = overrides
        .market
        .or_else(|| market_hint(path, &symbol))
        .unwrap_or(Market::Spot);
    Ok(StreamKey {
        market,
        symbol,
        kind,
    })
}

/// Reconciles each archive with the stream it holds ([`infer_stream_key`]):
/// one report per stream, archives of the same stream compared together.
pub fn reconcile_paths(
    root: &Path,
    archives: &[PathBuf],
    overrides: &StreamOverride,
) -> Result<Vec<ReconcileReport>, ReconcileError> {
    if archives.is_empty() {
        return Err(ReconcileError::NoArchives);
    }
    let mut by_stream: BTreeMap<StreamKey, Vec<PathBuf>> = BTreeMap::new();
    for path in archives {
        let key = infer_stream_key(path, overrides)?;
        by_stream.entry(key).or_default().push(path.clone());
    }
    by_stream
        .iter()
        .map(|(key, paths)| reconcile(root, key, paths))
        .collect()
}

/// Reconciles the dataset under `root` (the data directory) for `key` with
/// the official `archives` of that stream (zip or CSV, in any order). The
/// archives' names are not checked against `key`: `key` is what they hold.
pub fn reconcile(
    root: &Path,
    key: &StreamKey,
    archives: &[PathBuf],
) -> Result<ReconcileReport, ReconcileError> {
    if archives.is_empty() {
        return Err(ReconcileError::NoArchives);
    }
    // Named periods in time order, so the archives' rows come in time order.
    let mut ordered: Vec<(Option<Period>, PathBuf)> = archives
        .iter()
        .map(|path| {
            let period = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| ArchiveName::parse(name).ok())
                .map(|name| name.period);
            (period, path.clone())
        })
        .collect();
    ordered.sort_by_key(|(period, _)| period.map(|period| period.hours().0));
    let paths: Vec<PathBuf> = ordered.iter().map(|(_, path)| path.clone()).collect();
    let mut scope = Scope::default();
    for (period, _) in &ordered {
        if let Some(period) = period {
            let (start, end) = period.hours();
            scope.add_range(start, end);
        }
    }
    let mut run = Run {
        root,
        key,
        sealed: parquet_out::sealed_hours(root, key).into_iter().collect(),
        engine: Engine::new(key, paths.clone()),
        buffer: BTreeMap::new(),
        next_hour: None,
        scope,
    };
    for (index, path) in paths.iter().enumerate() {
        let summary = run.read_archive(index, path)?;
        run.engine.report_mut().archives.push(summary);
    }
    run.finish()
}

/// Hours named by the archives' periods, as ranges `[start, end)`.
#[derive(Debug, Default)]
struct Scope {
    ranges: Vec<(Hour, Hour)>,
}

impl Scope {
    fn add_range(&mut self, start: Hour, end: Hour) {
        self.ranges.push((start, end));
    }

    fn contains(&self, hour: Hour) -> bool {
        self.ranges
            .iter()
            .any(|(start, end)| (*start..*end).contains(&hour))
    }

    fn first(&self) -> Option<Hour> {
        self.ranges.iter().map(|(start, _)| *start).min()
    }

    /// The last hour named.
    fn last(&self) -> Option<Hour> {
        self.ranges
            .iter()
            .map(|(_, end)| Hour::containing(end.start() - 1))
            .max()
    }
}

/// One reconcile in progress.
struct Run<'a> {
    root: &'a Path,
    key: &'a StreamKey,
    /// Hours we have a sealed file for.
    sealed: BTreeSet<Hour>,
    engine: Engine,
    /// Archive rows read and not yet compared, by hour.
    buffer: BTreeMap<Hour, Vec<ArchiveRow>>,
    /// The next hour to compare; every hour before it was.
    next_hour: Option<Hour>,
    scope: Scope,
}

/// Row statistics of one archive, for its summary.
#[derive(Default)]
struct ArchiveStats {
    n_rows: u64,
    n_ms: u64,
    n_us: u64,
    first_time: Option<i64>,
    last_time: Option<i64>,
}

impl Run<'_> {
    fn read_archive(
        &mut self,
        index: usize,
        path: &Path,
    ) -> Result<report::ArchiveSummary, ReconcileError> {
        let mut parser = LineParser::new(self.key.kind, index);
        let mut stats = ArchiveStats::default();
        for_each_line(path, |line, text| {
            let row = parser
                .parse_line(line, text)
                .map_err(|reason| ReconcileError::BadLine {
                    path: path.to_path_buf(),
                    line,
                    reason,
                })?;
            let Some(row) = row else { return Ok(()) };
            let time = row.row.bucket_time();
            stats.n_rows += 1;
            if row.time_in_ms {
                stats.n_ms += 1;
            } else {
                stats.n_us += 1;
            }
            stats.first_time = Some(stats.first_time.map_or(time, |first| first.min(time)));
            stats.last_time = Some(stats.last_time.map_or(time, |last| last.max(time)));
            self.add_archive_row(path, row)
        })?;
        let time_unit = match (stats.n_us > 0, stats.n_ms > 0) {
            (true, true) => "µs and ms",
            (true, false) => "µs",
            (false, true) => "ms",
            (false, false) => "none",
        };
        let in_ms = stats.n_us == 0;
        Ok(report::ArchiveSummary {
            path: path.to_path_buf(),
            n_rows: stats.n_rows,
            has_header: parser.layout().is_some_and(|layout| layout.has_header),
            time_unit,
            first_time: stats.first_time.map(|time| report::utc_text(time, in_ms)),
            last_time: stats.last_time.map(|time| report::utc_text(time, in_ms)),
        })
    }

    fn add_archive_row(&mut self, path: &Path, row: ArchiveRow) -> Result<(), ReconcileError> {
        let hour = Hour::containing(row.row.bucket_time());
        let next_hour = *self
            .next_hour
            .get_or_insert_with(|| self.scope.first().map_or(hour, |first| first.min(hour)));
        if hour < next_hour {
            return Err(ReconcileError::OutOfOrder {
                path: path.to_path_buf(),
                line: row.line,
                hour: hour.hour_text(),
                reached: Hour::containing(next_hour.start() + MICROS_PER_HOUR).hour_text(),
            });
        }
        self.buffer.entry(hour).or_default().push(row);
        // Compare the hours at least two before this row's.
        let compare_before = Hour::containing(hour.start() - MICROS_PER_HOUR);
        self.compare_hours_before(compare_before)
    }

    /// Compares every hour from `next_hour` up to (not including) `before`.
    fn compare_hours_before(&mut self, before: Hour) -> Result<(), ReconcileError> {
        while let Some(hour) = self.next_hour.filter(|hour| *hour < before) {
            let archive_rows = self.buffer.remove(&hour).unwrap_or_default();
            if self.scope.contains(hour) || !archive_rows.is_empty() {
                let ours = self.read_our_hour(hour)?;
                self.engine.add_hour(hour, ours, archive_rows);
            }
            self.next_hour = Some(hour.next());
        }
        Ok(())
    }

    fn read_our_hour(&self, hour: Hour) -> Result<Option<OurHour>, ReconcileError> {
        if !self.sealed.contains(&hour) {
            return Ok(None);
        }
        let path = parquet_out::hour_file_path(self.root, self.key, hour);
        let rows = parquet_out::read_hour_file(&path, self.key.kind)?;
        let metadata = parquet_out::read_metadata(&path)?;
        let invalid = |reason: String| ParquetOutError::Invalid {
            path: path.clone(),
            kind: "metadata".into(),
            reason,
        };
        let summary =
            parquet_out::parse_summary(&metadata).map_err(|error| invalid(error.to_string()))?;
        let time_of = |name: &str, default: i64| -> Result<i64, ParquetOutError> {
            match metadata.iter().find(|(key, _)| key == name) {
                Some((_, text)) => text
                    .parse()
                    .map_err(|_| invalid(format!("{name} {text:?} is not an integer"))),
                None => Ok(default),
            }
        };
        Ok(Some(OurHour {
            coverage_from: time_of("coverage_from", hour.start())?,
            coverage_to: time_of("coverage_to", hour.end())?,
            unfilled: summary.unfilled,
            rows,
            path,
        }))
    }

    fn finish(mut self) -> Result<ReconcileReport, ReconcileError> {
        let last_buffered = self.buffer.keys().next_back().copied();
        let last = match (self.scope.last(), last_buffered) {
            (Some(scope), Some(buffered)) => Some(scope.max(buffered)),
            (scope, buffered) => scope.or(buffered),
        };
        if self.next_hour.is_none() {
            self.next_hour = self.scope.first();
        }
        if let Some(last) = last {
            self.compare_hours_before(last.next())?;
        }
        Ok(self.engine.finish())
    }
}

/// Prints `reports` for a person to `out` and returns the exit code of
/// `verify --against`: 0 when no difference is attributable to us (archive
/// defects, declared holes and unrecorded hours are shown but pass), 1
/// otherwise. A reconcile that could not run is the caller's exit 2.
pub fn print_reports(reports: &[ReconcileReport], out: &mut impl Write) -> std::io::Result<u8> {
    for report in reports {
        writeln!(out, "{report}")?;
    }
    Ok(exit_code(reports))
}

/// 0 when every report is clean ([`ReconcileReport::is_clean`]), else 1.
pub fn exit_code(reports: &[ReconcileReport]) -> u8 {
    if reports.iter().all(ReconcileReport::is_clean) {
        0
    } else {
        1
    }
}

/// The reports as JSON, for `verify --json`.
pub fn reports_json(reports: &[ReconcileReport]) -> String {
    serde_json::to_string_pretty(reports).expect("reports hold only strings, numbers and lists")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg_trade_key() -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::AggTrade,
        }
    }

    /// An aggTrades line of 2026-01-01 at `hour` and `second`.
    fn line(id: i64, hour: i64, second: i64) -> String {
        let time = 1_767_225_600_000_000 + hour * MICROS_PER_HOUR + second * 1_000_000;
        format!("{id},87648.21000000,0.08185000,{id},{id},{time},True,True\n")
    }

    #[test]
    fn rows_more_than_two_hours_back_are_refused_with_their_line() {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let archive = scratch.path().join("BTCUSDT-aggTrades-2026-01-01.csv");
        let text = [
            line(1, 0, 1),
            line(2, 1, 1),
            line(3, 0, 2),
            line(4, 3, 1),
            line(5, 0, 3),
        ]
        .concat();
        std::fs::write(&archive, text).expect("archive written");
        let error =
            reconcile(scratch.path(), &agg_trade_key(), &[archive]).expect_err("out of order");
        assert!(
            matches!(&error, ReconcileError::OutOfOrder { line: 5, hour, .. } if hour == "2026-01-01T00"),
            "{error}"
        );
        assert!(error.to_string().contains("line 5"), "{error}");
    }

    #[test]
    fn hours_without_a_file_of_ours_are_not_recorded_and_pass() {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let archive = scratch.path().join("BTCUSDT-aggTrades-2026-01-01.csv");
        std::fs::write(&archive, [line(1, 0, 1), line(2, 5, 1)].concat()).expect("written");
        let report = reconcile(scratch.path(), &agg_trade_key(), &[archive]).expect("runs");
        assert_eq!(report.not_recorded.count, 2, "{report}");
        assert_eq!(report.n_hours_recorded, 0);
        assert_eq!(
            (report.first_hour.as_deref(), report.last_hour.as_deref()),
            (Some("2026-01-01T00"), Some("2026-01-01T23")),
            "the whole day the name states"
        );
        assert_eq!(exit_code(std::slice::from_ref(&report)), 0);
        let mut printed = Vec::new();
        assert_eq!(print_reports(&[report], &mut printed).expect("printed"), 0);
        let printed = String::from_utf8(printed).expect("text");
        assert!(printed.contains("result: clean"), "{printed}");
    }

    #[test]
    fn streams_are_inferred_from_names_and_paths_and_overridden() {
        let plain = infer_stream_key(
            Path::new("BTCUSDT-trades-2026-01.zip"),
            &StreamOverride::default(),
        )
        .expect("inferred");
        assert_eq!(plain.to_string(), "spot/trade/BTCUSDT");
        let futures = infer_stream_key(
            Path::new("data/futures/um/monthly/klines/FILUSDT/1m/FILUSDT-1m-2024-10.zip"),
            &StreamOverride::default(),
        )
        .expect("inferred");
        assert_eq!(futures.to_string(), "usdm/kline_1m/FILUSDT");
        let overridden = infer_stream_key(
            Path::new("renamed.csv"),
            &StreamOverride {
                market: Some(Market::UsdM),
                symbol: Some(Symbol::new("ETHUSDT").expect("valid")),
                kind: Some(StreamKind::AggTrade),
            },
        )
        .expect("all overridden");
        assert_eq!(overridden.to_string(), "usdm/aggTrade/ETHUSDT");
        assert!(matches!(
            infer_stream_key(Path::new("renamed.csv"), &StreamOverride::default()),
            Err(ReconcileError::UnknownArchive { .. })
        ));
        assert!(matches!(
            reconcile_paths(Path::new("."), &[], &StreamOverride::default()),
            Err(ReconcileError::NoArchives)
        ));
    }
}
