//! What `verify` found, and its two renderings: a table for a person
//! (times as UTC, `2026-11-23T10`) and JSON for a machine, whose `holes`
//! list is what `backfill --holes` takes. Pure: the caller prints or
//! writes the strings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::{utc_datetime, Hour, StreamKey, StreamKind, TimeUs, UnfilledRange};

/// The JSON document's `format` value; raised when a field changes meaning.
pub const JSON_FORMAT: &str = "binance-recorder-verify/1";

/// A time as UTC with microseconds: `2026-11-23T10:15:00.123456Z`.
pub fn utc_time(time: TimeUs) -> String {
    utc_datetime(time)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// The kinds of undeclared problem, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An hour between a stream's first and last file has no file.
    MissingHour,
    /// A `*.parquet` file whose footer (or key columns) cannot be read.
    Unreadable,
    /// A `.parquet.corrupt` file: the recorder moved an unreadable file aside.
    CorruptFile,
    /// A file in the partition tree that is not a sealed `*.parquet`.
    StrayFile,
    /// A temporary file of a seal (a crash, or a seal in progress).
    TemporaryFile,
    /// A file whose path or name is not the one its stream and hour give.
    WrongName,
    /// Columns missing, of the wrong type (floats, ms, naive times), extra.
    Schema,
    /// Required metadata keys absent.
    MissingMetadata,
    /// Metadata that disagrees with the path or with the rows.
    MetadataMismatch,
    /// A `source` value other than `ws` and `rest`.
    UnknownSource,
    /// Rows not sorted and unique by key.
    NotSorted,
    /// A row whose time lies outside its file's hour.
    RowOutsideHour,
    /// A key in two files (or two files for one hour).
    DuplicateKey,
    /// Ids that skip, inside a file or across an hour, with no declared hole.
    UndeclaredIdGap,
    /// Klines missing from their grid with no declared hole.
    UndeclaredMissingKlines,
    /// A kline whose open time is not on its interval's grid.
    OffGridKline,
    /// A file of a delivered contract for an hour after its delivery (a
    /// file that should not exist: nothing trades then).
    AfterDelivery,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::MissingHour => "missing_hour",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::CorruptFile => "corrupt_file",
            ProblemKind::StrayFile => "stray_file",
            ProblemKind::TemporaryFile => "temporary_file",
            ProblemKind::WrongName => "wrong_name",
            ProblemKind::Schema => "schema",
            ProblemKind::MissingMetadata => "missing_metadata",
            ProblemKind::MetadataMismatch => "metadata_mismatch",
            ProblemKind::UnknownSource => "unknown_source",
            ProblemKind::NotSorted => "not_sorted",
            ProblemKind::RowOutsideHour => "row_outside_hour",
            ProblemKind::DuplicateKey => "duplicate_key",
            ProblemKind::UndeclaredIdGap => "undeclared_id_gap",
            ProblemKind::UndeclaredMissingKlines => "undeclared_missing_klines",
            ProblemKind::OffGridKline => "off_grid_kline",
            ProblemKind::AfterDelivery => "after_delivery",
        }
    }

    /// One line a person reads above the examples.
    pub fn description(self) -> &'static str {
        match self {
            ProblemKind::MissingHour => "hours with no file between a stream's first and last",
            ProblemKind::Unreadable => "files that cannot be read",
            ProblemKind::CorruptFile => "files moved aside as unreadable (.parquet.corrupt)",
            ProblemKind::StrayFile => {
                "files in the partition tree that are not sealed .parquet files"
            }
            ProblemKind::TemporaryFile => "temporary files of a seal in the partition tree",
            ProblemKind::WrongName => {
                "files whose path or name does not match their stream and hour"
            }
            ProblemKind::Schema => "columns missing, extra or of the wrong type",
            ProblemKind::MissingMetadata => "required metadata keys absent",
            ProblemKind::MetadataMismatch => "metadata that disagrees with the path or the rows",
            ProblemKind::UnknownSource => "source values other than ws and rest",
            ProblemKind::NotSorted => "rows not sorted and unique by key",
            ProblemKind::RowOutsideHour => "rows outside their file's hour",
            ProblemKind::DuplicateKey => "keys in two files",
            ProblemKind::UndeclaredIdGap => "ids missing with no declared hole",
            ProblemKind::UndeclaredMissingKlines => {
                "klines missing from the grid with no declared hole"
            }
            ProblemKind::OffGridKline => "klines opening off their interval's grid",
            ProblemKind::AfterDelivery => {
                "files of a delivered contract for hours after its delivery"
            }
        }
    }
}

/// An undeclared problem, where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// `None` for a file outside any stream's folder.
    #[serde(flatten, serialize_with = "serialize_stream_opt")]
    pub stream: Option<StreamKey>,
    #[serde(serialize_with = "serialize_hour_opt")]
    pub hour: Option<Hour>,
    pub path: Option<PathBuf>,
    pub detail: String,
}

/// A hole a file declares, in the form `backfill --holes` takes: the
/// stream, the hour, and the file's `unfilled` entry as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredHole {
    pub market: String,
    pub stream: String,
    pub symbol: String,
    /// `YYYY-MM-DDTHH`.
    pub hour: String,
    #[serde(flatten)]
    pub range: UnfilledRange,
}

/// A file that vouches for less than its hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialHour {
    pub hour: Hour,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
}

/// A file written at an orderly stop before its hour was finished
/// (`stopped_at`): what it holds is true, the rest of its hour is the
/// recorder's next run's to write. Its holes are not counted as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedHour {
    pub hour: Hour,
    pub stopped_at: TimeUs,
    /// Holes it declares (found, not filled before the stop).
    pub n_holes: usize,
}

/// One (market, stream, symbol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub key: StreamKey,
    /// Readable files.
    pub n_hours: usize,
    pub n_rows: u64,
    pub n_rows_rest: u64,
    pub declared: Vec<DeclaredHole>,
    pub partial: Vec<PartialHour>,
    pub unfinished: Vec<UnfinishedHour>,
    pub n_problems: usize,
    pub first_hour: Option<Hour>,
    pub last_hour: Option<Hour>,
    /// A dated contract delivered at this time: its recording ended with
    /// that hour, and no later hour is owed.
    pub delivered_at: Option<TimeUs>,
}

impl StreamSummary {
    pub fn new(key: StreamKey) -> StreamSummary {
        StreamSummary {
            key,
            n_hours: 0,
            n_rows: 0,
            n_rows_rest: 0,
            declared: Vec::new(),
            partial: Vec::new(),
            unfinished: Vec::new(),
            n_problems: 0,
            first_hour: None,
            last_hour: None,
            delivered_at: None,
        }
    }

    /// Ids the declared holes name (klines: none; `None` bounds count 0).
    pub fn n_declared_ids(&self) -> u64 {
        if matches!(self.key.kind, StreamKind::Kline(_)) {
            return 0;
        }
        self.declared
            .iter()
            .filter_map(|hole| Some(hole.range.to?.checked_sub(hole.range.from?)? + 1))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .fold(0, u64::saturating_add)
    }

    /// Time the declared holes span, µs.
    pub fn declared_time_us(&self) -> i64 {
        self.declared
            .iter()
            .map(|hole| (hole.range.to_time - hole.range.from_time).max(0))
            .fold(0, i64::saturating_add)
    }
}

/// What `verify` found in a dataset.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub root: PathBuf,
    /// `*.parquet` files looked at.
    pub n_files: usize,
    /// Sorted by stream.
    pub streams: Vec<StreamSummary>,
    /// Undeclared problems, in the order found.
    pub problems: Vec<Problem>,
}

/// How `verify` ends: 0 clean, 1 not clean; 2 (could not run) is the
/// caller's, for an error before any report.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_NOT_CLEAN: u8 = 1;
pub const EXIT_COULD_NOT_RUN: u8 = 2;

/// How many examples of a kind the table shows.
const EXAMPLES_PER_KIND: usize = 5;

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn exit_code(&self) -> u8 {
        if self.is_clean() {
            EXIT_CLEAN
        } else {
            EXIT_NOT_CLEAN
        }
    }

    pub fn n_declared(&self) -> usize {
        self.streams
            .iter()
            .map(|stream| stream.declared.len())
            .sum()
    }

    pub fn n_unfinished(&self) -> usize {
        self.streams
            .iter()
            .map(|stream| stream.unfinished.len())
            .sum()
    }

    pub fn n_partial(&self) -> usize {
        self.streams.iter().map(|stream| stream.partial.len()).sum()
    }

    pub fn n_rows(&self) -> u64 {
        self.streams.iter().map(|stream| stream.n_rows).sum()
    }

    /// Every declared hole, stream by stream, hour by hour.
    pub fn holes(&self) -> Vec<DeclaredHole> {
        self.streams
            .iter()
            .flat_map(|stream| stream.declared.iter().cloned())
            .collect()
    }

    /// Adds a problem found by a later pass (e.g. comparing with another
    /// source) and counts it on its stream's line.
    pub fn push_problem(&mut self, problem: Problem) {
        if let Some(key) = &problem.stream {
            match self.streams.iter_mut().find(|stream| &stream.key == key) {
                Some(stream) => stream.n_problems += 1,
                None => {
                    let mut stream = StreamSummary::new(key.clone());
                    stream.n_problems = 1;
                    self.streams.push(stream);
                    self.streams.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
        }
        self.problems.push(problem);
    }

    /// The table, the problems grouped by kind with examples, the declared
    /// holes and partial hours, and a summary line.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let header = [
            "market",
            "stream",
            "symbol",
            "hours",
            "rows",
            "rest",
            "declared holes",
            "partial",
            "problems",
            "first hour",
            "last hour",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
        for stream in &self.streams {
            let declared = if stream.declared.is_empty() {
                "0".to_owned()
            } else if matches!(stream.key.kind, StreamKind::Kline(_)) {
                format!(
                    "{} ({})",
                    stream.declared.len(),
                    duration(stream.declared_time_us())
                )
            } else {
                format!(
                    "{} ({} ids, {})",
                    stream.declared.len(),
                    stream.n_declared_ids(),
                    duration(stream.declared_time_us())
                )
            };
            let hour = |hour: Option<Hour>| hour.map_or("-".to_owned(), |hour| hour.to_string());
            lines.push(vec![
                stream.key.market.to_string(),
                stream.key.kind.to_string(),
                stream.key.symbol.to_string(),
                stream.n_hours.to_string(),
                stream.n_rows.to_string(),
                stream.n_rows_rest.to_string(),
                declared,
                stream.partial.len().to_string(),
                stream.n_problems.to_string(),
                hour(stream.first_hour),
                hour(stream.last_hour),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|column| {
                lines
                    .iter()
                    .map(|line| line[column].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &lines {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, width))| {
                    // Numbers right-aligned, words left-aligned.
                    if (3..=8).contains(&column) {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }

        let mut by_kind: BTreeMap<ProblemKind, Vec<&Problem>> = BTreeMap::new();
        for problem in &self.problems {
            by_kind.entry(problem.kind).or_default().push(problem);
        }
        if !by_kind.is_empty() {
            let _ = writeln!(out, "\nundeclared problems:");
        }
        for (kind, problems) in &by_kind {
            let _ = writeln!(
                out,
                "  {} ({}): {}",
                kind.name(),
                problems.len(),
                kind.description()
            );
            for problem in problems.iter().take(EXAMPLES_PER_KIND) {
                let mut place = problem
                    .stream
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string);
                if let Some(hour) = problem.hour {
                    let _ = write!(place, " {hour}");
                }
                if place.is_empty() {
                    place = problem
                        .path
                        .as_ref()
                        .map_or_else(String::new, |path| path.display().to_string());
                }
                let _ = writeln!(out, "    {}: {}", place.trim(), problem.detail);
            }
            if problems.len() > EXAMPLES_PER_KIND {
                let _ = writeln!(
                    out,
                    "    ... and {} more",
                    problems.len() - EXAMPLES_PER_KIND
                );
            }
        }

        let holes = self.holes();
        write_listed(
            &mut out,
            &format!("declared holes ({}):", holes.len()),
            &holes,
            " (--json lists them all)",
            |hole| {
                let ids = match (hole.range.from, hole.range.to) {
                    _ if hole.stream.starts_with("kline_") => String::new(),
                    (from, to) => format!(
                        "ids {} ..= {}, ",
                        from.map_or("?".to_owned(), |id| id.to_string()),
                        to.map_or("?".to_owned(), |id| id.to_string())
                    ),
                };
                format!(
                    "{}/{}/{} {}: {}{} .. {}: {}",
                    hole.market,
                    hole.stream,
                    hole.symbol,
                    hole.hour,
                    ids,
                    utc_time(hole.range.from_time),
                    utc_time(hole.range.to_time),
                    hole.range.reason
                )
            },
        );
        let partial: Vec<(&StreamSummary, &PartialHour)> = self
            .streams
            .iter()
            .flat_map(|stream| stream.partial.iter().map(move |hour| (stream, hour)))
            .collect();
        write_listed(
            &mut out,
            &format!(
                "partial hours ({}): the recorder watched only part of them",
                partial.len()
            ),
            &partial,
            "",
            |(stream, hour)| {
                format!(
                    "{} {}: covered {} .. {}",
                    stream.key,
                    hour.hour,
                    utc_time(hour.coverage_from),
                    utc_time(hour.coverage_to)
                )
            },
        );
        let unfinished: Vec<(&StreamSummary, &UnfinishedHour)> = self
            .streams
            .iter()
            .flat_map(|stream| stream.unfinished.iter().map(move |hour| (stream, hour)))
            .collect();
        write_listed(
            &mut out,
            &format!(
                "unfinished hours ({}): written at an orderly stop; the recorder's next run finishes them",
                unfinished.len()
            ),
            &unfinished,
            "",
            |(stream, hour)| {
                format!(
                    "{} {}: up to the stop at {}, {} holes found",
                    stream.key,
                    hour.hour,
                    utc_time(hour.stopped_at),
                    hour.n_holes
                )
            },
        );
        let delivered: Vec<(&StreamSummary, TimeUs)> = self
            .streams
            .iter()
            .filter_map(|stream| Some((stream, stream.delivered_at?)))
            .collect();
        if !delivered.is_empty() {
            let _ = writeln!(
                out,
                "\ndelivered contracts (recording ended with the delivery hour; later hours are not owed):"
            );
            for (stream, at) in delivered {
                let _ = writeln!(
                    out,
                    "  {} {} {}: delivered at {}",
                    stream.key.market,
                    stream.key.symbol,
                    stream.key.kind,
                    utc_time(at)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nfiles: {}, rows: {}, declared holes: {}, undeclared problems: {}, partial hours: {}, unfinished hours: {}: {}",
            self.n_files,
            self.n_rows(),
            self.n_declared(),
            self.problems.len(),
            self.n_partial(),
            self.n_unfinished(),
            if self.is_clean() { "clean" } else { "NOT CLEAN" }
        );
        out
    }

    /// The same for machines (see `JSON_FORMAT`).
    pub fn to_json(&self) -> serde_json::Value {
        let hour = |hour: Option<Hour>| hour.map(|hour| hour.to_string());
        let streams: Vec<serde_json::Value> = self
            .streams
            .iter()
            .map(|stream| {
                serde_json::json!({
                    "market": stream.key.market.name(),
                    "stream": stream.key.kind.path_name(),
                    "symbol": stream.key.symbol.as_str(),
                    "hours": stream.n_hours,
                    "rows": stream.n_rows,
                    "rows_rest": stream.n_rows_rest,
                    "declared_holes": stream.declared.len(),
                    "declared_ids": stream.n_declared_ids(),
                    "declared_time_us": stream.declared_time_us(),
                    "partial_hours": stream.partial.iter().map(|partial| serde_json::json!({
                        "hour": partial.hour.to_string(),
                        "coverage_from": partial.coverage_from,
                        "coverage_to": partial.coverage_to,
                    })).collect::<Vec<_>>(),
                    "unfinished_hours": stream.unfinished.iter().map(|unfinished| serde_json::json!({
                        "hour": unfinished.hour.to_string(),
                        "stopped_at": unfinished.stopped_at,
                        "holes": unfinished.n_holes,
                    })).collect::<Vec<_>>(),
                    "undeclared_problems": stream.n_problems,
                    "first_hour": hour(stream.first_hour),
                    "last_hour": hour(stream.last_hour),
                    "delivered_at": stream.delivered_at,
                })
            })
            .collect();
        serde_json::json!({
            "format": JSON_FORMAT,
            "root": self.root,
            "clean": self.is_clean(),
            "exit_code": self.exit_code(),
            "files": self.n_files,
            "rows": self.n_rows(),
            "declared_holes": self.n_declared(),
            "undeclared_problems": self.problems.len(),
            "partial_hours": self.n_partial(),
            "unfinished_hours": self.n_unfinished(),
            "streams": streams,
            "problems": self.problems,
            "holes": self.holes(),
        })
    }
}

/// A span of µs as a person reads it: `45s`, `12m05s`, `3h00m`.
pub fn duration(micros: i64) -> String {
    let seconds = micros / 1_000_000;
    if seconds < 60 {
        format!("{seconds}s")
    } else if seconds < 3600 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60)
    }
}

/// The holes of a `verify --json` document (its `holes` list).
pub fn holes_from_json(text: &str) -> Result<Vec<DeclaredHole>, String> {
    #[derive(Deserialize)]
    struct Document {
        format: Option<String>,
        holes: Vec<DeclaredHole>,
    }
    let document: Document = serde_json::from_str(text).map_err(|error| error.to_string())?;
    match document.format.as_deref() {
        Some(JSON_FORMAT) | None => Ok(document.holes),
        Some(other) => Err(format!("format {other:?} is not {JSON_FORMAT:?}")),
    }
}

fn serialize_stream_opt<S: serde::Serializer>(
    stream: &Option<StreamKey>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(None)?;
    if let Some(key) = stream {
        map.serialize_entry("market", key.market.name())?;
        map.serialize_entry("stream", &key.kind.path_name())?;
        map.serialize_entry("symbol", key.symbol.as_str())?;
    }
    map.end()
}

fn serialize_hour_opt<S: serde::Serializer>(
    hour: &Option<Hour>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match hour {
        Some(hour) => serializer.serialize_str(&hour.to_string()),
        None => serializer.serialize_none(),
    }
}

/// Items a section of the table lists at most.
const LISTED_PER_SECTION: usize = EXAMPLES_PER_KIND * 4;

/// A listed section of the table: nothing when `items` is empty, else its
/// heading (a line of its own), one line per item up to [`LISTED_PER_SECTION`], then how many
/// more (with `more_note`).
fn write_listed<T>(
    out: &mut String,
    heading: &str,
    items: &[T],
    more_note: &str,
    line: impl Fn(&T) -> String,
) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{heading}");
    for item in items.iter().take(LISTED_PER_SECTION) {
        let _ = writeln!(out, "  {}", line(item));
    }
    if items.len() > LISTED_PER_SECTION {
        let _ = writeln!(
            out,
            "  ... and {} more{more_note}",
            items.len() - LISTED_PER_SECTION
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Market, Symbol};

    fn key() -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::AggTrade,
        }
    }

    fn report() -> Report {
        let hour = Hour::containing(1_795_471_200_000_000);
        let mut stream = StreamSummary::new(key());
        stream.n_hours = 1;
        stream.first_hour = Some(hour);
        stream.last_hour = Some(hour);
        stream.declared.push(DeclaredHole {
            market: "spot".into(),
            stream: "aggTrade".into(),
            symbol: "BTCUSDT".into(),
            hour: hour.to_string(),
            range: UnfilledRange {
                from: Some(10),
                to: Some(12),
                from_time: hour.start(),
                to_time: hour.start() + 90_000_000,
                reason: "REST unreachable".into(),
            },
        });
        let mut report = Report {
            streams: vec![stream],
            ..Report::default()
        };
        report.push_problem(Problem {
            kind: ProblemKind::MissingHour,
            stream: Some(key()),
            hour: Some(hour.next()),
            path: None,
            detail: "no file for 2026-11-23T23".into(),
        });
        report
    }

    #[test]
    fn times_and_durations_print_as_people_read_them() {
        assert_eq!(
            utc_time(1_795_471_200_000_017),
            "2026-11-23T22:00:00.000017Z"
        );
        assert_eq!(duration(45_000_000), "45s");
        assert_eq!(duration(725_000_000), "12m05s");
        assert_eq!(duration(3 * 3_600_000_000), "3h00m");
    }

    #[test]
    fn the_table_counts_and_never_prints_debug_values() {
        let table = report().render_table();
        assert!(table.contains("1 (3 ids, 1m30s)"), "{table}");
        assert!(table.contains("missing_hour (1)"), "{table}");
        assert!(
            table.contains("ids 10 ..= 12, 2026-11-23T22:00:00.000000Z"),
            "{table}"
        );
        assert!(table.contains("undeclared problems: 1"), "{table}");
        assert!(
            !table.contains("Hour {") && !table.contains("Some("),
            "{table}"
        );
    }

    #[test]
    fn the_json_holes_are_what_backfill_reads_back() {
        let report = report();
        let json = report.to_json();
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["problems"][0]["kind"], "missing_hour");
        assert_eq!(json["problems"][0]["symbol"], "BTCUSDT");
        assert_eq!(json["problems"][0]["hour"], "2026-11-23T23");
        let text = serde_json::to_string(&json).expect("serialises");
        assert_eq!(holes_from_json(&text), Ok(report.holes()));
        assert!(holes_from_json("{\"format\":\"other\",\"holes\":[]}").is_err());
    }
}
