//! What a reconcile found: counts per kind of difference, a bounded list of
//! examples for each (the key and both values), who each kind is
//! attributed to, and how to print it for a person ([`fmt::Display`], UTC
//! times, never raw µs) or a machine (`serde::Serialize`, JSON).

use std::fmt;
use std::path::PathBuf;

use crate::domain::{utc_datetime, Row, StreamKey, StreamKind, TimeUs};

use super::archive::ArchiveRow;

/// At most this many examples are kept per kind of difference; the counts
/// are always complete.
pub const MAX_EXAMPLES: usize = 10;

/// `2026-01-01T00:12:19.347397Z`, or with 3 decimals for a value the
/// archive gave in milliseconds.
pub fn utc_text(time: TimeUs, in_milliseconds: bool) -> String {
    let format = if in_milliseconds {
        "%Y-%m-%dT%H:%M:%S%.3fZ"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    };
    utc_datetime(time).format(format).to_string()
}

/// One row of one side, as text: the compared fields, `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowText {
    /// Where the row is: the Parquet file, or the archive file and line.
    pub location: String,
    /// The compared fields in order, e.g. `[["price", "87648.21000000"], ...]`.
    pub fields: Vec<(&'static str, String)>,
}

impl RowText {
    /// The fields the dataset and the archives have in common (archives
    /// carry no event or receive time, no trade type, no kline trade ids).
    pub fn of_row(row: &Row, location: String, times_in_ms: (bool, bool)) -> RowText {
        let (time_ms, close_ms) = times_in_ms;
        let fields = match row {
            Row::Trade(trade) => vec![
                ("price", trade.price.to_string()),
                ("quantity", trade.quantity.to_string()),
                ("trade_time", utc_text(trade.trade_time, time_ms)),
                ("is_buyer_maker", trade.is_buyer_maker.to_string()),
                ("is_best_match", optional(trade.is_best_match)),
            ],
            Row::AggTrade(agg) => vec![
                ("price", agg.price.to_string()),
                ("quantity", agg.quantity.to_string()),
                ("first_trade_id", agg.first_trade_id.to_string()),
                ("last_trade_id", agg.last_trade_id.to_string()),
                ("trade_time", utc_text(agg.trade_time, time_ms)),
                ("is_buyer_maker", agg.is_buyer_maker.to_string()),
                ("is_best_match", optional(agg.is_best_match)),
            ],
            Row::Kline(kline) => vec![
                ("close_time", utc_text(kline.close_time, close_ms)),
                ("open", kline.open.to_string()),
                ("high", kline.high.to_string()),
                ("low", kline.low.to_string()),
                ("close", kline.close.to_string()),
                ("volume", kline.volume.to_string()),
                ("quote_volume", kline.quote_volume.to_string()),
                ("trade_count", kline.trade_count.to_string()),
                (
                    "taker_buy_base_volume",
                    kline.taker_buy_base_volume.to_string(),
                ),
                (
                    "taker_buy_quote_volume",
                    kline.taker_buy_quote_volume.to_string(),
                ),
            ],
        };
        RowText { location, fields }
    }
}

fn optional(value: Option<bool>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| value.to_string())
}

/// One example of a difference: the key and what each side holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Example {
    /// Trade id, aggregate id, or kline open time (epoch µs).
    pub key: i64,
    /// The key as printed: the id, or the kline's open time in UTC.
    pub key_text: String,
    /// The row's time (klines: open time) as UTC text.
    pub time: String,
    /// Our row, where we have one.
    pub ours: Option<RowText>,
    /// The archive's row, where it has one (the first, for a duplicate).
    pub archive: Option<RowText>,
    /// A duplicate's second archive row.
    pub archive_duplicate: Option<RowText>,
    /// The fields whose values differ (values differ, duplicates).
    pub differing_fields: Vec<&'static str>,
}

/// A count and the first [`MAX_EXAMPLES`] examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Category {
    pub count: u64,
    pub examples: Vec<Example>,
}

impl Category {
    pub(super) fn add(&mut self, example: impl FnOnce() -> Example) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// What was read from one archive file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveSummary {
    pub path: PathBuf,
    pub n_rows: u64,
    pub has_header: bool,
    /// `µs`, `ms`, `µs and ms`, or `none` for a file without rows.
    pub time_unit: &'static str,
    /// UTC text of the earliest and latest row time.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

/// The outcome of reconciling one (market, stream, symbol) with archives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// `market/stream/symbol`, e.g. `spot/aggTrade/BTCUSDT`.
    pub stream: String,
    pub archives: Vec<ArchiveSummary>,
    /// The hours compared, UTC (`2026-01-01T00`), first and last.
    pub first_hour: Option<String>,
    pub last_hour: Option<String>,
    /// Hours with a sealed file of ours among those compared.
    pub n_hours_recorded: u64,
    pub n_archive_rows: u64,
    pub n_our_rows: u64,
    /// Rows with the same key and the same values on both sides.
    pub n_identical: u64,

    // Attributed to us: these make the reconcile fail.
    /// Same key on both sides, some compared value differs. Neither side
    /// is corrected: archive aggTrades have been seen to differ from the
    /// live stream under the same aggregate id.
    pub values_differ: Category,
    /// In the archive, not in our file of the hour, and not declared.
    pub missing_on_our_side: Category,
    /// In our file only, where our own keys are not continuous around it
    /// (nothing shows the archive lost it).
    pub only_on_our_side: Category,

    // Known, not failing.
    /// In the archive, not in our file, inside a hole our file declares in
    /// its `unfilled` metadata.
    pub missing_on_our_side_declared: Category,
    /// Archive rows in hours we have no file for, or outside the part of
    /// the hour the file vouches for (`coverage_from`..`coverage_to`).
    pub not_recorded: Category,

    // Attributed to the archive.
    /// A key the archive holds more than once.
    pub archive_duplicates: Category,
    /// In our file, not in the archive, with our keys continuous on both
    /// sides of it: the archive lost it.
    pub missing_in_archive: Category,
}

impl ReconcileReport {
    pub(super) fn new(key: &StreamKey) -> ReconcileReport {
        ReconcileReport {
            stream: key.to_string(),
            archives: Vec::new(),
            first_hour: None,
            last_hour: None,
            n_hours_recorded: 0,
            n_archive_rows: 0,
            n_our_rows: 0,
            n_identical: 0,
            values_differ: Category::default(),
            missing_on_our_side: Category::default(),
            only_on_our_side: Category::default(),
            missing_on_our_side_declared: Category::default(),
            not_recorded: Category::default(),
            archive_duplicates: Category::default(),
            missing_in_archive: Category::default(),
        }
    }

    /// Differences attributable to the dataset: values that differ, rows
    /// missing on our side (undeclared), rows only we have.
    pub fn n_differences_ours(&self) -> u64 {
        self.values_differ.count + self.missing_on_our_side.count + self.only_on_our_side.count
    }

    /// Defects attributed to the archive.
    pub fn n_archive_defects(&self) -> u64 {
        self.archive_duplicates.count + self.missing_in_archive.count
    }

    /// No difference attributable to us.
    pub fn is_clean(&self) -> bool {
        self.n_differences_ours() == 0
    }

    fn categories(&self) -> [(&'static str, &Category); 7] {
        [
            ("values differ", &self.values_differ),
            ("missing on our side", &self.missing_on_our_side),
            ("only on our side", &self.only_on_our_side),
            (
                "missing on our side, declared",
                &self.missing_on_our_side_declared,
            ),
            ("not recorded by us", &self.not_recorded),
            ("duplicates in the archive", &self.archive_duplicates),
            ("missing in the archive", &self.missing_in_archive),
        ]
    }
}

/// The text a key is printed as: an id, or a kline's open time in UTC.
pub(super) fn key_text(kind: StreamKind, key: i64) -> String {
    match kind {
        StreamKind::Kline(_) => utc_text(key, false),
        StreamKind::Trade | StreamKind::AggTrade => key.to_string(),
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "reconcile {} with {} archive file(s)",
            self.stream,
            self.archives.len()
        )?;
        for archive in &self.archives {
            writeln!(
                formatter,
                "  {}: {} rows, {}, times in {}, {} .. {}",
                archive.path.display(),
                archive.n_rows,
                if archive.has_header {
                    "header"
                } else {
                    "no header"
                },
                archive.time_unit,
                archive.first_time.as_deref().unwrap_or("-"),
                archive.last_time.as_deref().unwrap_or("-"),
            )?;
        }
        writeln!(
            formatter,
            "hours {} .. {}: {} with a file of ours",
            self.first_hour.as_deref().unwrap_or("-"),
            self.last_hour.as_deref().unwrap_or("-"),
            self.n_hours_recorded
        )?;
        writeln!(
            formatter,
            "rows: archive {}, ours {}, identical {}",
            self.n_archive_rows, self.n_our_rows, self.n_identical
        )?;
        writeln!(
            formatter,
            "differences attributable to us: {} (values differ {}, missing on our side {}, only on our side {})",
            self.n_differences_ours(),
            self.values_differ.count,
            self.missing_on_our_side.count,
            self.only_on_our_side.count
        )?;
        writeln!(
            formatter,
            "known: missing on our side in declared holes {}, not recorded by us {}",
            self.missing_on_our_side_declared.count, self.not_recorded.count
        )?;
        writeln!(
            formatter,
            "archive defects: {} (duplicates {}, missing in the archive with ours continuous {})",
            self.n_archive_defects(),
            self.archive_duplicates.count,
            self.missing_in_archive.count
        )?;
        for (name, category) in self.categories() {
            if category.examples.is_empty() {
                continue;
            }
            let shown = category.examples.len() as u64;
            if shown < category.count {
                writeln!(formatter, "{name} (first {shown} of {}):", category.count)?;
            } else {
                writeln!(formatter, "{name}:")?;
            }
            for example in &category.examples {
                write_example(formatter, example)?;
            }
        }
        let verdict = if self.is_clean() {
            "clean"
        } else {
            "NOT clean"
        };
        writeln!(formatter, "result: {verdict}")
    }
}

fn write_example(formatter: &mut fmt::Formatter<'_>, example: &Example) -> fmt::Result {
    write!(formatter, "  key {} at {}", example.key_text, example.time)?;
    if !example.differing_fields.is_empty() {
        write!(
            formatter,
            ", differs in {}",
            example.differing_fields.join(", ")
        )?;
    }
    writeln!(formatter)?;
    let sides = [
        ("ours", &example.ours),
        ("archive", &example.archive),
        ("archive again", &example.archive_duplicate),
    ];
    for (side, row) in sides {
        let Some(row) = row else { continue };
        let values: Vec<String> = row
            .fields
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        writeln!(
            formatter,
            "    {side:<13} {} ({})",
            values.join(" "),
            row.location
        )?;
    }
    Ok(())
}

/// Where an archive row is, for an example.
pub(super) fn archive_location(paths: &[PathBuf], row: &ArchiveRow) -> String {
    let name = paths
        .get(row.file)
        .and_then(|path| path.file_name())
        .map_or_else(
            || "archive".into(),
            |name| name.to_string_lossy().into_owned(),
        );
    format!("{name} line {}", row.line)
}
