//! `binance-recorder verify`: proves a dataset complete, or says exactly
//! where it is not (docs/DATASET.md, "Completeness"; docs/OPERATIONS.md).
//!
//! - [`read`]: what is read from one file: the footer, the key column, the
//!   time column, `source` only where the statistics leave a doubt.
//! - [`checks`]: the pure checks, per file (layout, schema, metadata
//!   against the rows, order, hour, holes) and across the files of a
//!   stream (missing hours, keys in two files, ids across hours).
//! - [`report`]: the findings, as a table and as JSON (whose `holes` list
//!   `backfill --holes` takes).
//!
//! This module walks the tree (`<root>/market=/stream=/symbol=/date=/`)
//! and `<root>/.corrupt/`, and is the only part that does I/O. It reads
//! sealed files only and takes no lock: beside a running recorder, an
//! hour sealed while it runs may be reported or not.

pub mod checks;
pub mod metadata;
pub mod read;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::domain::{Hour, Market, StreamKey, StreamKind, Symbol};
use crate::parquet_out;

pub use checks::{check_stream, Finding};
pub use report::{DeclaredHole, Problem, ProblemKind, Report, StreamSummary};

use checks::FileFacts;
use metadata::ParsedMetadata;
use report::{PartialHour, UnfinishedHour};

/// Which part of the dataset to check; `None` is everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub market: Option<Market>,
    pub kind: Option<StreamKind>,
    pub symbol: Option<Symbol>,
    /// First hour checked (inclusive).
    pub from: Option<Hour>,
    /// Last hour checked (inclusive).
    pub to: Option<Hour>,
}

impl Selection {
    fn takes_hour(&self, hour: Hour) -> bool {
        self.from.is_none_or(|from| hour >= from) && self.to.is_none_or(|to| hour <= to)
    }
}

/// Why `verify` could not run at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("data directory {0} does not exist or is not a directory")]
    RootMissing(PathBuf),
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The folder moved-aside files live in from schema version 2 on.
pub const CORRUPT_DIR: &str = ".corrupt";

/// A `*.parquet` file found under a stream folder.
#[derive(Debug, Clone)]
struct FoundFile {
    path: PathBuf,
    /// The hour its name says, if the name parses.
    name_hour: Option<Hour>,
}

#[derive(Debug, Default)]
struct Tree {
    files: BTreeMap<StreamKey, Vec<FoundFile>>,
    /// Moved-aside files, by stream when the path says which, with the hour
    /// the name says.
    corrupt: Vec<(Option<StreamKey>, Option<Hour>, PathBuf)>,
    /// Anything else that does not belong, with its kind and a detail.
    others: Vec<(ProblemKind, Option<StreamKey>, PathBuf, String)>,
}

/// The hour a file name `<S>-<s>-<YYYY-MM-DD>-<HH>` (`.parquet`, maybe
/// `.corrupt` after it) says.
fn hour_of_name(name: &str) -> Option<Hour> {
    let stem = name.split(".parquet").next()?;
    let hour_text = stem.get(stem.len().checked_sub(13)?..)?;
    let time =
        chrono::NaiveDateTime::parse_from_str(&format!("{hour_text}:00:00"), "%Y-%m-%d-%H:%M:%S")
            .ok()?;
    Some(Hour::containing(time.and_utc().timestamp_micros()))
}

/// A path as the report shows it: relative to the dataset's root.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn list(path: &Path) -> Result<Vec<std::fs::DirEntry>, VerifyError> {
    let entries = std::fs::read_dir(path).map_err(|source| VerifyError::List {
        path: path.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    Ok(entries)
}

fn is_dir(entry: &std::fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|kind| kind.is_dir())
}

/// `name=value` of a partition folder.
fn partition<'a>(entry_name: &'a str, name: &str) -> Option<&'a str> {
    entry_name.strip_prefix(name)?.strip_prefix('=')
}

/// Every file under a folder, recursively (strays, `.corrupt/`).
fn files_under(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![directory.to_path_buf()];
    while let Some(directory) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_dir(&entry) {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The stream a path names through its `market=`, `stream=`, `symbol=`
/// folders, when it names one.
fn stream_of_path(path: &Path) -> Option<StreamKey> {
    let mut market = None;
    let mut kind = None;
    let mut symbol = None;
    for component in path.iter().filter_map(|part| part.to_str()) {
        if let Some(value) = partition(component, "market") {
            market = Market::from_name(value);
        } else if let Some(value) = partition(component, "stream") {
            kind = StreamKind::from_name(value);
        } else if let Some(value) = partition(component, "symbol") {
            symbol = Symbol::new(value).ok();
        }
    }
    Some(StreamKey {
        market: market?,
        symbol: symbol?,
        kind: kind?,
    })
}

fn walk(root: &Path, selection: &Selection) -> Result<Tree, VerifyError> {
    let mut tree = Tree::default();
    let stray = |tree: &mut Tree, key: Option<&StreamKey>, path: PathBuf, detail: &str| {
        tree.others.push((
            ProblemKind::StrayFile,
            key.cloned(),
            path,
            detail.to_owned(),
        ))
    };
    let stray_all = |tree: &mut Tree, key: Option<&StreamKey>, path: PathBuf, detail: &str| {
        let files = if path.is_dir() {
            files_under(&path)
        } else {
            vec![path]
        };
        for file in files {
            stray(tree, key, file, detail);
        }
    };
    for market_entry in list(root)? {
        let market_name = market_entry.file_name().to_string_lossy().into_owned();
        let Some(market_value) = partition(&market_name, "market") else {
            continue; // Not the partition tree: locks, .staging, quarantine.
        };
        let Some(market) = Market::from_name(market_value).filter(|_| is_dir(&market_entry)) else {
            stray_all(&mut tree, None, market_entry.path(), "not a market folder");
            continue;
        };
        if selection.market.is_some_and(|wanted| wanted != market) {
            continue;
        }
        for stream_entry in list(&market_entry.path())? {
            let stream_name = stream_entry.file_name().to_string_lossy().into_owned();
            let kind = partition(&stream_name, "stream")
                .and_then(StreamKind::from_name)
                .filter(|kind| format!("stream={}", kind.path_name()) == stream_name)
                .filter(|_| is_dir(&stream_entry));
            let Some(kind) = kind else {
                stray_all(&mut tree, None, stream_entry.path(), "not a stream folder");
                continue;
            };
            if selection.kind.is_some_and(|wanted| wanted != kind) {
                continue;
            }
            for symbol_entry in list(&stream_entry.path())? {
                let symbol_name = symbol_entry.file_name().to_string_lossy().into_owned();
                let symbol = partition(&symbol_name, "symbol")
                    .and_then(|value| Symbol::new(value).ok())
                    .filter(|_| is_dir(&symbol_entry));
                let Some(symbol) = symbol else {
                    stray_all(&mut tree, None, symbol_entry.path(), "not a symbol folder");
                    continue;
                };
                if selection
                    .symbol
                    .as_ref()
                    .is_some_and(|wanted| *wanted != symbol)
                {
                    continue;
                }
                let key = StreamKey {
                    market,
                    symbol,
                    kind,
                };
                for date_entry in list(&symbol_entry.path())? {
                    let date_name = date_entry.file_name().to_string_lossy().into_owned();
                    let date_ok = partition(&date_name, "date").is_some_and(|date| {
                        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
                    });
                    if !date_ok || !is_dir(&date_entry) {
                        stray_all(
                            &mut tree,
                            Some(&key),
                            date_entry.path(),
                            "not a date folder",
                        );
                        continue;
                    }
                    for file_entry in list(&date_entry.path())? {
                        let path = file_entry.path();
                        let name = file_entry.file_name().to_string_lossy().into_owned();
                        let name_hour = hour_of_name(&name);
                        if name_hour.is_some_and(|hour| !selection.takes_hour(hour)) {
                            continue;
                        }
                        if is_dir(&file_entry) {
                            stray_all(&mut tree, Some(&key), path, "a folder inside a date folder");
                        } else if name.ends_with(".parquet") && !name.starts_with('.') {
                            tree.files
                                .entry(key.clone())
                                .or_default()
                                .push(FoundFile { path, name_hour });
                        } else if name.ends_with(".parquet.corrupt") {
                            tree.corrupt.push((Some(key.clone()), name_hour, path));
                        } else if name.starts_with('.') && name.ends_with(".tmp") {
                            tree.others.push((
                                ProblemKind::TemporaryFile,
                                Some(key.clone()),
                                path,
                                format!("{name}: a seal in progress or interrupted"),
                            ));
                        } else {
                            stray(&mut tree, Some(&key), path, "not a sealed .parquet file");
                        }
                    }
                }
                tree.files.entry(key).or_default();
            }
        }
    }
    // Schema version 2 moves unreadable files out of the partition tree.
    for path in files_under(&root.join(CORRUPT_DIR)) {
        let key = stream_of_path(&path);
        let selected = key.as_ref().is_none_or(|key| {
            selection.market.is_none_or(|market| market == key.market)
                && selection.kind.is_none_or(|kind| kind == key.kind)
                && selection
                    .symbol
                    .as_ref()
                    .is_none_or(|symbol| *symbol == key.symbol)
        });
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name_hour = hour_of_name(&name);
        if selected && name_hour.is_none_or(|hour| selection.takes_hour(hour)) {
            tree.corrupt.push((key, name_hour, path));
        }
    }
    Ok(tree)
}

/// Checks the dataset under `root` (the recorder's `storage.data_dir`).
pub fn verify(root: &Path, selection: &Selection) -> Result<Report, VerifyError> {
    if !root.is_dir() {
        return Err(VerifyError::RootMissing(root.to_path_buf()));
    }
    let tree = walk(root, selection)?;
    let mut report = Report {
        root: root.to_path_buf(),
        ..Report::default()
    };
    let mut summaries: BTreeMap<StreamKey, StreamSummary> = tree
        .files
        .keys()
        .map(|key| (key.clone(), StreamSummary::new(key.clone())))
        .collect();
    let mut problems: Vec<Problem> = Vec::new();
    let problem =
        |kind, stream: Option<&StreamKey>, hour, path: Option<&Path>, detail: String| Problem {
            kind,
            stream: stream.cloned(),
            hour,
            path: path.map(Path::to_path_buf),
            detail,
        };

    // Hours whose file is there but cannot be used: not also "missing".
    let mut blocked: BTreeMap<StreamKey, BTreeSet<Hour>> = BTreeMap::new();
    for (key, hour, path) in &tree.corrupt {
        if let (Some(key), Some(hour)) = (key, hour) {
            blocked.entry(key.clone()).or_default().insert(*hour);
        }
        problems.push(problem(
            ProblemKind::CorruptFile,
            key.as_ref(),
            *hour,
            Some(path),
            format!("{} moved aside as unreadable", shown(root, path)),
        ));
    }
    for (kind, key, path, detail) in &tree.others {
        problems.push(problem(
            *kind,
            key.as_ref(),
            None,
            Some(path),
            format!("{}: {detail}", shown(root, path)),
        ));
    }

    for (key, found_files) in &tree.files {
        let mut facts: Vec<FileFacts> = Vec::new();
        let blocked = blocked.entry(key.clone()).or_default();
        for found in found_files {
            report.n_files += 1;
            let contents = match read::read_file(&found.path, key.kind) {
                Ok(contents) => contents,
                Err(error) => {
                    blocked.extend(found.name_hour);
                    problems.push(problem(
                        ProblemKind::Unreadable,
                        Some(key),
                        found.name_hour,
                        Some(&found.path),
                        format!("{}: {error}", shown(root, &found.path)),
                    ));
                    continue;
                }
            };
            let metadata: ParsedMetadata = metadata::parse_metadata(&contents.metadata);
            // The footer's hour is the file's truth; the name is checked
            // against it.
            let Some(hour) = metadata.hour.or(found.name_hour) else {
                problems.push(problem(
                    ProblemKind::WrongName,
                    Some(key),
                    None,
                    Some(&found.path),
                    format!(
                        "{}: neither its name nor its metadata gives an hour",
                        shown(root, &found.path)
                    ),
                ));
                continue;
            };
            if !selection.takes_hour(hour) {
                continue;
            }
            let expected_path = parquet_out::hour_file_path(root, key, hour);
            if expected_path != found.path {
                problems.push(problem(
                    ProblemKind::WrongName,
                    Some(key),
                    Some(hour),
                    Some(&found.path),
                    format!(
                        "{} should be {}",
                        shown(root, &found.path),
                        shown(root, &expected_path)
                    ),
                ));
            }
            // Checked as the hour its footer says: a misnamed file is one
            // problem (above), not also rows outside a wrong hour.
            let (file_facts, findings) = checks::check_file(key, hour, &contents, &metadata);
            for finding in findings {
                problems.push(problem(
                    finding.kind,
                    Some(key),
                    finding.hour,
                    Some(&found.path),
                    finding.detail,
                ));
            }
            facts.push(file_facts);
        }
        facts.sort_by_key(|file| file.hour);
        for finding in checks::check_hours(key.kind, &facts, blocked) {
            let path = finding
                .hour
                .map(|hour| parquet_out::hour_file_path(root, key, hour));
            problems.push(problem(
                finding.kind,
                Some(key),
                finding.hour,
                path.as_deref(),
                finding.detail,
            ));
        }
        let summary = summaries
            .get_mut(key)
            .expect("a summary per stream of the tree");
        summary.n_hours = facts.len();
        summary.first_hour = facts.first().map(|file| file.hour);
        summary.last_hour = facts.last().map(|file| file.hour);
        summary.delivered_at = facts.iter().filter_map(|file| file.delivered_at).max();
        for file in &facts {
            summary.n_rows += file.n_rows;
            summary.n_rows_rest += file.n_rows_rest;
            if let Some(stopped_at) = file.stopped_at {
                summary.unfinished.push(UnfinishedHour {
                    hour: file.hour,
                    stopped_at,
                    n_holes: file.unfilled.len(),
                });
                continue;
            }
            if file.is_partial() {
                summary.partial.push(PartialHour {
                    hour: file.hour,
                    coverage_from: file.coverage_from,
                    coverage_to: file.coverage_to,
                });
            }
            for range in &file.unfilled {
                summary.declared.push(DeclaredHole {
                    market: key.market.name().to_owned(),
                    stream: key.kind.path_name(),
                    symbol: key.symbol.to_string(),
                    hour: file.hour.to_string(),
                    range: range.clone(),
                });
            }
        }
    }
    report.streams = summaries.into_values().collect();
    for problem in problems {
        report.push_problem(problem);
    }
    Ok(report)
}
