//! The checks of `verify`, pure: each takes what was read (footer values,
//! key and time columns) and returns [`Finding`]s. No I/O here, so every
//! rule is unit-tested with plain vectors.
//!
//! A *declared* hole (a file's `unfilled` entry) or a *partial* hour
//! (`coverage_from`/`coverage_to` short of the hour) is honest and not a
//! problem; everything else found here is an undeclared problem.

use std::collections::BTreeSet;

use arrow_schema::{DataType, TimeUnit};

use crate::domain::{Hour, KlineInterval, StreamKey, StreamKind, TimeUs, UnfilledRange};
use crate::gaps::kline_grid;
use crate::parquet_out::{self, SealedSummary};

use super::metadata::ParsedMetadata;
use super::read::{is_utc, FileContents};
use super::report::{utc_time, ProblemKind};

/// One problem found, before it is attached to a stream and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: ProblemKind,
    /// The hour it concerns, when it concerns one.
    pub hour: Option<Hour>,
    /// What exactly, in words, with UTC times.
    pub detail: String,
}

impl Finding {
    fn new(kind: ProblemKind, hour: Option<Hour>, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            hour,
            detail: detail.into(),
        }
    }
}

/// What the checks across files need of one readable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub hour: Hour,
    pub n_rows: u64,
    pub n_rows_rest: u64,
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
    pub unfilled: Vec<UnfilledRange>,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    /// The `delivered_at` of a delivered contract's last hour.
    pub delivered_at: Option<TimeUs>,
    /// Written at an orderly stop before its hour was finished: the
    /// recorder's next run finishes it.
    pub stopped_at: Option<TimeUs>,
}

impl FileFacts {
    /// The file vouches for less than its whole hour.
    pub fn is_partial(&self) -> bool {
        self.coverage_from > self.hour.start() || self.coverage_to < self.hour.end()
    }

    fn starts_partial(&self) -> bool {
        self.coverage_from > self.hour.start()
    }

    fn ends_partial(&self) -> bool {
        self.coverage_to < self.hour.end()
    }
}

/// The column types of the contract, for `kind`, without `symbol` (a
/// partition key; schema version 1 also stored it, version 2 does not).
fn expected_columns(kind: StreamKind) -> Vec<(String, DataType)> {
    parquet_out::schema_for(kind)
        .fields()
        .iter()
        .filter(|field| field.name() != "symbol")
        .map(|field| (field.name().clone(), field.data_type().clone()))
        .collect()
}

fn is_string(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// What is wrong with one column's type, in words.
fn type_problem(name: &str, expected: &DataType, found: &DataType) -> Option<String> {
    if expected == found || (is_string(expected) && is_string(found)) {
        return None;
    }
    let what = match (expected, found) {
        (DataType::Timestamp(..), DataType::Timestamp(unit, zone)) => {
            let mut parts = Vec::new();
            if *unit != TimeUnit::Microsecond {
                parts.push(format!("{unit:?} instead of microseconds").to_lowercase());
            }
            match zone {
                None => parts.push("naive (no UTC zone)".to_owned()),
                Some(zone) if !is_utc(zone) => parts.push(format!("zone {zone} instead of UTC")),
                Some(_) => {}
            }
            parts.join(", ")
        }
        (DataType::Decimal128(..), DataType::Float16 | DataType::Float32 | DataType::Float64) => {
            format!("float ({found}) instead of exact {expected}")
        }
        _ => format!("{found} instead of {expected}"),
    };
    Some(format!("{name}: {what}"))
}

/// The schema check: every contract column present, in order, with its
/// exact type; `symbol` accepted in a version-1 file only; nothing else.
pub fn check_schema(
    kind: StreamKind,
    schema_version: Option<u32>,
    columns: &[(String, DataType)],
) -> Option<String> {
    let mut problems = Vec::new();
    let expected = expected_columns(kind);
    for (name, expected_type) in &expected {
        match columns.iter().find(|(column, _)| column == name) {
            None => problems.push(format!("column {name} missing")),
            Some((_, found)) => problems.extend(type_problem(name, expected_type, found)),
        }
    }
    for (name, data_type) in columns {
        if expected.iter().any(|(column, _)| column == name) {
            continue;
        }
        match (name.as_str(), schema_version) {
            // Without a version (reported as missing metadata) a string
            // symbol column is given the benefit of the doubt.
            ("symbol", Some(1) | None) if is_string(data_type) => {}
            ("symbol", Some(1) | None) => {
                problems.push(format!("symbol: {data_type} instead of string"))
            }
            ("symbol", _) => problems
                .push("a symbol column in a version 2 file (symbol is a partition key)".to_owned()),
            _ => problems.push(format!("unexpected column {name}")),
        }
    }
    if problems.is_empty() {
        let order: Vec<&String> = columns
            .iter()
            .map(|(name, _)| name)
            .filter(|name| name.as_str() != "symbol")
            .collect();
        let expected_order: Vec<&String> = expected.iter().map(|(name, _)| name).collect();
        if order != expected_order {
            problems.push("columns out of the contract's order".to_owned());
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Every check of one readable file: schema, metadata against the path's
/// stream and hour and against the rows, sources, and the rows
/// themselves. Returns the facts the cross-file checks use.
pub fn check_file(
    key: &StreamKey,
    hour: Hour,
    contents: &FileContents,
    metadata: &ParsedMetadata,
) -> (FileFacts, Vec<Finding>) {
    let mut findings = Vec::new();
    let at = Some(hour);
    if let Some(detail) = check_schema(key.kind, metadata.schema_version, &contents.columns) {
        findings.push(Finding::new(ProblemKind::Schema, at, detail));
    }
    if !metadata.missing.is_empty() {
        findings.push(Finding::new(
            ProblemKind::MissingMetadata,
            at,
            format!("keys absent: {}", metadata.missing.join(", ")),
        ));
    }

    let mut mismatches = metadata.malformed.clone();
    if let Some(version) = metadata
        .schema_version
        .filter(|version| !(1..=2).contains(version))
    {
        mismatches.push(format!("schema_version {version} is not 1 or 2"));
    }
    let market = key.market.name().to_owned();
    let stream = key.kind.path_name();
    let symbol = key.symbol.to_string();
    for (name, found, expected) in [
        ("market", &metadata.market, &market),
        ("stream", &metadata.stream, &stream),
        ("symbol", &metadata.symbol, &symbol),
    ] {
        if let Some(found) = found.as_ref().filter(|found| *found != expected) {
            mismatches.push(format!("{name} {found:?} but the path says {expected:?}"));
        }
    }
    if let Some(found) = metadata.hour.filter(|found| *found != hour) {
        mismatches.push(format!("hour {found} but the name says {hour}"));
    }
    if let Some(row_count) = metadata.row_count.filter(|count| *count != contents.n_rows) {
        mismatches.push(format!(
            "row_count {row_count} but the file holds {} rows",
            contents.n_rows
        ));
    }
    if let (Some((ws, rest)), Some(sources)) = (metadata.rows_by_source, &contents.sources) {
        // Rows of an unknown source are reported as such, not twice.
        if sources.others.is_empty() && (ws, rest) != (sources.n_ws, sources.n_rest) {
            mismatches.push(format!(
                "rows_by_source ws {ws}, rest {rest} but the rows hold ws {}, rest {}",
                sources.n_ws, sources.n_rest
            ));
        }
    }
    if let Some(keys) = &contents.keys {
        for (name, found, actual) in [
            ("first_key", metadata.first_key, keys.first().copied()),
            ("last_key", metadata.last_key, keys.last().copied()),
        ] {
            let present = !metadata.missing.contains(&name);
            if present && found != actual {
                mismatches.push(format!(
                    "{name} {} but the rows' is {}",
                    show_optional_key(key.kind, found),
                    show_optional_key(key.kind, actual)
                ));
            }
        }
    }
    let coverage_from = metadata.coverage_from.unwrap_or(hour.start());
    let coverage_to = metadata.coverage_to.unwrap_or(hour.end());
    if coverage_from < hour.start() || coverage_to > hour.end() || coverage_from > coverage_to {
        mismatches.push(format!(
            "coverage {} .. {} is not within the hour",
            utc_time(coverage_from),
            utc_time(coverage_to)
        ));
    }
    if !mismatches.is_empty() {
        findings.push(Finding::new(
            ProblemKind::MetadataMismatch,
            at,
            mismatches.join("; "),
        ));
    }

    if let Some(sources) = &contents.sources {
        if !sources.others.is_empty() {
            let values: Vec<String> = sources
                .others
                .iter()
                .map(|(value, count)| format!("{value:?} x{count}"))
                .collect();
            findings.push(Finding::new(
                ProblemKind::UnknownSource,
                at,
                format!("source other than ws or rest: {}", values.join(", ")),
            ));
        }
    }

    let coverage = (coverage_from, coverage_to);
    match &contents.keys {
        Some(keys) => findings.extend(check_rows(
            key.kind,
            hour,
            keys,
            contents.times.as_deref(),
            &metadata.unfilled,
            coverage,
        )),
        // Keys unreadable (reported by the schema check): klines are
        // still counted against their grid from the footer.
        None => {
            if let StreamKind::Kline(interval) = key.kind {
                findings.extend(kline_count_check(
                    interval,
                    hour,
                    contents.n_rows,
                    &metadata.unfilled,
                ));
            }
        }
    }

    let n_rows_rest = contents
        .sources
        .as_ref()
        .map(|sources| sources.n_rest)
        .or(metadata.rows_by_source.map(|(_, rest)| rest))
        .unwrap_or(0);
    let facts = FileFacts {
        hour,
        n_rows: contents.n_rows,
        n_rows_rest,
        first_key: contents
            .keys
            .as_ref()
            .map_or(metadata.first_key, |keys| keys.first().copied()),
        last_key: contents
            .keys
            .as_ref()
            .map_or(metadata.last_key, |keys| keys.last().copied()),
        unfilled: metadata.unfilled.clone(),
        coverage_from: coverage_from.clamp(hour.start(), hour.end()),
        coverage_to: coverage_to.clamp(hour.start(), hour.end()),
        delivered_at: metadata.delivered_at,
        stopped_at: metadata.stopped_at,
    };
    (facts, findings)
}

/// A key as a person reads it: ids as numbers, kline open times as UTC.
pub fn show_key(kind: StreamKind, key: i64) -> String {
    match kind {
        StreamKind::Kline(_) => utc_time(key),
        StreamKind::Trade | StreamKind::AggTrade => key.to_string(),
    }
}

fn show_optional_key(kind: StreamKind, key: Option<i64>) -> String {
    key.map_or("null".to_owned(), |key| show_key(kind, key))
}

/// Inclusive ranges of `from..=to` that no declared range covers; a
/// declared bound that is `None` is open on that side.
pub fn undeclared_parts(from: i64, to: i64, declared: &[&UnfilledRange]) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = declared
        .iter()
        .map(|range| (range.from.unwrap_or(i64::MIN), range.to.unwrap_or(i64::MAX)))
        .filter(|(first, last)| first <= last)
        .collect();
    ranges.sort_unstable();
    let mut parts = Vec::new();
    let mut next = from;
    for (first, last) in ranges {
        if next > to {
            break;
        }
        if last < next {
            continue;
        }
        if first > next {
            parts.push((next, (first - 1).min(to)));
        }
        match last.checked_add(1) {
            Some(after) => next = next.max(after),
            None => return parts,
        }
    }
    if next <= to {
        parts.push((next, to));
    }
    parts
}

/// The row checks of one file: sorted and unique by key, every row inside
/// the hour, and no undeclared hole: ids consecutive (trades, aggTrades)
/// or the interval's grid complete within the coverage (klines).
pub fn check_rows(
    kind: StreamKind,
    hour: Hour,
    keys: &[i64],
    times: Option<&[i64]>,
    unfilled: &[UnfilledRange],
    coverage: (TimeUs, TimeUs),
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let at = Some(hour);
    let disorder: Vec<usize> = (1..keys.len())
        .filter(|&index| keys[index] <= keys[index - 1])
        .collect();
    if let Some(&first) = disorder.first() {
        findings.push(Finding::new(
            ProblemKind::NotSorted,
            at,
            format!(
                "{} places where the key does not grow, first {} after {}",
                disorder.len(),
                show_key(kind, keys[first]),
                show_key(kind, keys[first - 1])
            ),
        ));
    }
    let row_times = times.unwrap_or(match kind {
        StreamKind::Kline(_) => keys,
        _ => &[],
    });
    let outside: Vec<i64> = row_times
        .iter()
        .copied()
        .filter(|time| *time < hour.start() || *time >= hour.end())
        .collect();
    if let Some(first) = outside.first() {
        findings.push(Finding::new(
            ProblemKind::RowOutsideHour,
            at,
            format!(
                "{} rows outside the hour, first at {}",
                outside.len(),
                utc_time(*first)
            ),
        ));
    }
    if !disorder.is_empty() {
        // Holes are meaningless in unsorted keys; the disorder is the finding.
        return findings;
    }
    let declared: Vec<&UnfilledRange> = unfilled.iter().collect();
    match kind {
        StreamKind::Trade | StreamKind::AggTrade => {
            let mut n_missing: i64 = 0;
            let mut examples = Vec::new();
            for pair in keys.windows(2) {
                if pair[1] > pair[0] + 1 {
                    for (first, last) in undeclared_parts(pair[0] + 1, pair[1] - 1, &declared) {
                        n_missing += last - first + 1;
                        examples.push((first, last));
                    }
                }
            }
            if n_missing > 0 {
                findings.push(Finding::new(
                    ProblemKind::UndeclaredIdGap,
                    at,
                    format!(
                        "{n_missing} ids missing inside the file ({} rows for a key span of {}), first {}",
                        keys.len(),
                        keys.last().unwrap_or(&0) - keys.first().unwrap_or(&0) + 1,
                        show_range(kind, examples[0])
                    ),
                ));
            }
        }
        StreamKind::Kline(interval) => {
            let off_grid: Vec<i64> = keys
                .iter()
                .copied()
                .filter(|open| interval.open_time_containing(*open) != *open)
                .collect();
            if let Some(first) = off_grid.first() {
                findings.push(Finding::new(
                    ProblemKind::OffGridKline,
                    at,
                    format!(
                        "{} klines open off the {interval} grid, first at {}",
                        off_grid.len(),
                        utc_time(*first)
                    ),
                ));
            }
            let present: BTreeSet<i64> = keys.iter().copied().collect();
            let (from, to) = (coverage.0.max(hour.start()), coverage.1.min(hour.end()));
            let missing: Vec<i64> = kline_grid(interval, from, to)
                .into_iter()
                .filter(|open| !present.contains(open))
                .filter(|open| !undeclared_parts(*open, *open, &declared).is_empty())
                .collect();
            if let Some(first) = missing.first() {
                findings.push(Finding::new(
                    ProblemKind::UndeclaredMissingKlines,
                    at,
                    format!(
                        "{} klines of the {interval} grid missing, first opening {}",
                        missing.len(),
                        utc_time(*first)
                    ),
                ));
            }
        }
    }
    findings
}

fn show_range(kind: StreamKind, (first, last): (i64, i64)) -> String {
    if first == last {
        show_key(kind, first)
    } else {
        format!("{} ..= {}", show_key(kind, first), show_key(kind, last))
    }
}

/// Klines counted against their grid from the footer alone (when the key
/// column cannot be read).
fn kline_count_check(
    interval: KlineInterval,
    hour: Hour,
    n_rows: u64,
    unfilled: &[UnfilledRange],
) -> Option<Finding> {
    let n_grid = kline_grid(interval, hour.start(), hour.end()).len() as u64;
    let n_declared: u64 = unfilled
        .iter()
        .filter_map(|range| {
            // Clamped to the hour: a footer is read from disk, and a
            // corrupt range spanning centuries would build a grid that
            // exhausts memory.
            let from = range.from?.max(hour.start());
            let to = interval.next_open_time(range.to?.min(hour.end()));
            Some(kline_grid(interval, from, to.min(hour.end())).len() as u64)
        })
        .fold(0, u64::saturating_add);
    let n_missing = n_grid.saturating_sub(n_rows.saturating_add(n_declared));
    (n_missing > 0).then(|| {
        Finding::new(
            ProblemKind::UndeclaredMissingKlines,
            Some(hour),
            format!("{n_missing} klines of the {interval} grid missing (counted from the footer)"),
        )
    })
}

/// The checks across the files of one stream, given in ascending hour
/// order: an hour with no file between the first and the last (unless a
/// neighbour's coverage says the recorder was not watching, or the hour's
/// file is there but unreadable or moved aside: `blocked`), a key in two
/// files, and ids that skip across an hour (or day) boundary with no
/// declared hole and no partial coverage to explain them.
pub fn check_hours(
    kind: StreamKind,
    files: &[FileFacts],
    blocked: &BTreeSet<Hour>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    // The last file with rows in the unbroken run of hours so far.
    let mut previous_with_rows: Option<&FileFacts> = None;
    // Holes declared by the files between it and the current one (empty
    // hours), which may explain a skip.
    let mut declared_between: Vec<&UnfilledRange> = Vec::new();
    let mut partial_between = false;
    // The delivery a file of a delivered contract named (its last hour's
    // `delivered_at`): no hour starting at or after it is owed, and a
    // file for one should not exist.
    let mut delivered_at: Option<TimeUs> = None;
    for (index, file) in files.iter().enumerate() {
        if let Some(at) = delivered_at.filter(|at| file.hour.start() >= *at) {
            findings.push(Finding::new(
                ProblemKind::AfterDelivery,
                Some(file.hour),
                format!(
                    "a file for {} although the contract was delivered at {}",
                    file.hour,
                    utc_time(at)
                ),
            ));
        }
        if let Some(at) = file.delivered_at {
            delivered_at = Some(delivered_at.map_or(at, |known| known.max(at)));
        }
        if let Some(before) = index.checked_sub(1).map(|before| &files[before]) {
            if file.hour == before.hour {
                findings.push(Finding::new(
                    ProblemKind::DuplicateKey,
                    Some(file.hour),
                    "two files hold this hour",
                ));
                continue;
            }
            if file.hour != before.hour.next() {
                let explained = before.ends_partial() || file.starts_partial();
                let mut missing = Vec::new();
                let mut hour = before.hour.next();
                while hour < file.hour {
                    let after_delivery = delivered_at.is_some_and(|at| hour.start() >= at);
                    if !blocked.contains(&hour) && !after_delivery {
                        missing.push(hour);
                    }
                    hour = hour.next();
                }
                if !explained && !missing.is_empty() {
                    findings.push(missing_hours_finding(&missing));
                }
                previous_with_rows = None;
                declared_between.clear();
                partial_between = false;
            }
        }
        if let (Some(previous), Some(first_key)) = (previous_with_rows, file.first_key) {
            let last_key = previous.last_key.unwrap_or(i64::MIN);
            let at = Some(file.hour);
            if matches!(kind, StreamKind::Trade | StreamKind::AggTrade) {
                if first_key <= last_key {
                    findings.push(Finding::new(
                        ProblemKind::DuplicateKey,
                        at,
                        format!(
                            "ids {first_key} ..= {} are also in the file of {}",
                            last_key.min(file.last_key.unwrap_or(first_key)),
                            previous.hour
                        ),
                    ));
                } else if first_key > last_key + 1 {
                    let explained =
                        partial_between || previous.ends_partial() || file.starts_partial();
                    let mut declared: Vec<&UnfilledRange> =
                        previous.unfilled.iter().chain(&file.unfilled).collect();
                    declared.extend(declared_between.iter().copied());
                    let parts = undeclared_parts(last_key + 1, first_key - 1, &declared);
                    if !explained && !parts.is_empty() {
                        let n_missing: i64 = parts.iter().map(|(a, b)| b - a + 1).sum();
                        findings.push(Finding::new(
                            ProblemKind::UndeclaredIdGap,
                            at,
                            format!(
                                "{n_missing} ids missing between the files of {} and {}: {}",
                                previous.hour,
                                file.hour,
                                show_range(kind, parts[0])
                            ),
                        ));
                    }
                }
            } else if first_key <= last_key {
                findings.push(Finding::new(
                    ProblemKind::DuplicateKey,
                    at,
                    format!(
                        "klines opening {} also in the file of {}",
                        utc_time(first_key),
                        previous.hour
                    ),
                ));
            }
        }
        if file.last_key.is_some() {
            previous_with_rows = Some(file);
            declared_between.clear();
            partial_between = false;
        } else {
            declared_between.extend(file.unfilled.iter());
            partial_between |= file.is_partial();
        }
    }
    findings
}

fn missing_hours_finding(missing: &[Hour]) -> Finding {
    let first = missing[0];
    let last = missing[missing.len() - 1];
    let detail = if missing.len() == 1 {
        format!("no file for {first}")
    } else {
        format!("no file for {} hours from {first} to {last}", missing.len())
    };
    Finding::new(ProblemKind::MissingHour, Some(first), detail)
}

/// The footer-only check of one stream (hours in ascending order), as the
/// recorder's restart sees it: declared holes are not problems, kline
/// files are counted against their grid, and ids are followed across
/// hours. Kept for callers that hold [`SealedSummary`]s only.
pub fn check_stream(kind: StreamKind, files: &[(Hour, SealedSummary)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let facts: Vec<FileFacts> = files
        .iter()
        .map(|(hour, summary)| {
            if let StreamKind::Kline(interval) = kind {
                findings.extend(kline_count_check(
                    interval,
                    *hour,
                    summary.row_count,
                    &summary.unfilled,
                ));
            }
            FileFacts {
                hour: *hour,
                n_rows: summary.row_count,
                n_rows_rest: 0,
                first_key: summary.first_key,
                last_key: summary.last_key,
                unfilled: summary.unfilled.clone(),
                coverage_from: hour.start(),
                coverage_to: hour.end(),
                delivered_at: summary.delivered_at,
                stopped_at: None,
            }
        })
        .collect();
    findings.extend(check_hours(kind, &facts, &BTreeSet::new()));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KlineInterval, MICROS_PER_MINUTE};

    const HOUR_START: i64 = 1_767_229_200_000_000;

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn summary(first: i64, last: i64, unfilled: Vec<UnfilledRange>) -> SealedSummary {
        SealedSummary {
            schema_version: crate::parquet_out::SchemaVersion::CURRENT,
            first_key: Some(first),
            last_key: Some(last),
            row_count: (last - first + 1) as u64,
            unfilled,
            delivered_at: None,
            clock_offset_us: None,
            stopped_at: None,
        }
    }

    fn hole(from: i64, to: i64) -> UnfilledRange {
        UnfilledRange {
            from: Some(from),
            to: Some(to),
            from_time: HOUR_START,
            to_time: HOUR_START,
            reason: "rest unreachable".into(),
        }
    }

    fn facts(hour: Hour, first: i64, last: i64) -> FileFacts {
        FileFacts {
            hour,
            n_rows: (last - first + 1) as u64,
            n_rows_rest: 0,
            first_key: Some(first),
            last_key: Some(last),
            unfilled: vec![],
            coverage_from: hour.start(),
            coverage_to: hour.end(),
            delivered_at: None,
            stopped_at: None,
        }
    }

    fn kinds(findings: &[Finding]) -> Vec<ProblemKind> {
        findings.iter().map(|finding| finding.kind).collect()
    }

    /// A footer is read from disk: a declared kline range spanning the whole
    /// accepted time range (corrupt, or hand-edited) is clamped to the file's
    /// hour instead of building a grid of 2.5 * 10^11 seconds.
    #[test]
    fn a_declared_range_beyond_its_hour_counts_only_the_hour() {
        let mut summary = summary(0, 0, vec![hole(0, crate::domain::MAX_EXCHANGE_TIME_US)]);
        summary.row_count = 0;
        let second = StreamKind::Kline(KlineInterval::Second1);
        assert!(check_stream(second, &[(hour(), summary)]).is_empty());
    }

    #[test]
    fn consecutive_hours_with_consecutive_ids_are_clean() {
        let files = [
            (hour(), summary(1, 10, vec![])),
            (hour().next(), summary(11, 20, vec![])),
        ];
        assert!(check_stream(StreamKind::Trade, &files).is_empty());
    }

    #[test]
    fn a_skip_between_hours_is_a_problem_unless_declared() {
        let files = [
            (hour(), summary(1, 10, vec![])),
            (hour().next(), summary(15, 20, vec![])),
        ];
        let findings = check_stream(StreamKind::AggTrade, &files);
        assert_eq!(kinds(&findings), vec![ProblemKind::UndeclaredIdGap]);
        assert!(findings[0].detail.contains("4 ids missing"), "{findings:?}");
        let declared = [
            (hour(), summary(1, 10, vec![hole(11, 14)])),
            (hour().next(), summary(15, 20, vec![])),
        ];
        assert!(check_stream(StreamKind::AggTrade, &declared).is_empty());
        // Declared only in part: the rest is reported.
        let part = [
            (hour(), summary(1, 10, vec![hole(11, 12)])),
            (hour().next(), summary(15, 20, vec![])),
        ];
        let findings = check_stream(StreamKind::AggTrade, &part);
        assert!(findings[0].detail.contains("2 ids missing"), "{findings:?}");
    }

    #[test]
    fn a_skip_after_a_partial_hour_is_not_judged() {
        let mut before = facts(hour(), 1, 10);
        before.coverage_to = hour().end() - MICROS_PER_MINUTE;
        let files = [before, facts(hour().next(), 15, 20)];
        assert!(check_hours(StreamKind::Trade, &files, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn ids_are_followed_across_empty_hours() {
        let mut empty = facts(hour().next(), 0, 0);
        (empty.first_key, empty.last_key, empty.n_rows) = (None, None, 0);
        let files = [
            facts(hour(), 1, 10),
            empty,
            facts(hour().next().next(), 13, 20),
        ];
        let findings = check_hours(StreamKind::Trade, &files, &BTreeSet::new());
        assert_eq!(kinds(&findings), vec![ProblemKind::UndeclaredIdGap]);
    }

    #[test]
    fn a_missing_hour_is_a_problem_unless_coverage_or_a_blocked_file_explains_it() {
        let files = [facts(hour(), 1, 10), facts(hour().next().next(), 11, 20)];
        let findings = check_hours(StreamKind::Trade, &files, &BTreeSet::new());
        assert_eq!(kinds(&findings), vec![ProblemKind::MissingHour]);
        assert_eq!(findings[0].hour, Some(hour().next()));
        let blocked = BTreeSet::from([hour().next()]);
        assert!(check_hours(StreamKind::Trade, &files, &blocked).is_empty());
        let mut after = files[1].clone();
        after.coverage_from += MICROS_PER_MINUTE;
        assert!(check_hours(
            StreamKind::Trade,
            &[files[0].clone(), after],
            &BTreeSet::new()
        )
        .is_empty());
    }

    #[test]
    fn a_file_after_a_contracts_delivery_is_a_problem_and_no_hour_after_it_is_missing() {
        // Delivered at the end of the first hour, which names it.
        let mut last = facts(hour(), 1, 10);
        last.delivered_at = Some(hour().end());
        assert!(check_hours(StreamKind::Trade, &[last.clone()], &BTreeSet::new()).is_empty());
        // A file two hours later: it should not exist, and the hour
        // between is not missing.
        let stray = facts(hour().next().next(), 11, 20);
        let findings = check_hours(StreamKind::Trade, &[last.clone(), stray], &BTreeSet::new());
        assert_eq!(kinds(&findings), vec![ProblemKind::AfterDelivery]);
        assert_eq!(findings[0].hour, Some(hour().next().next()));
        // Delivered mid-hour: the very next hour is after it too.
        last.delivered_at = Some(hour().start() + 40 * MICROS_PER_MINUTE);
        last.coverage_to = hour().start() + 40 * MICROS_PER_MINUTE;
        let next = facts(hour().next(), 11, 20);
        let findings = check_hours(StreamKind::Trade, &[last, next], &BTreeSet::new());
        assert_eq!(kinds(&findings), vec![ProblemKind::AfterDelivery]);
    }

    #[test]
    fn a_key_in_two_files_is_a_duplicate() {
        let files = [facts(hour(), 1, 10), facts(hour().next(), 10, 20)];
        let findings = check_hours(StreamKind::Trade, &files, &BTreeSet::new());
        assert_eq!(kinds(&findings), vec![ProblemKind::DuplicateKey]);
    }

    #[test]
    fn rows_unsorted_outside_the_hour_or_with_holes_are_found() {
        let kind = StreamKind::Trade;
        let coverage = (hour().start(), hour().end());
        let times = vec![HOUR_START; 4];
        let check = |keys: &[i64], times: &[i64], unfilled: &[UnfilledRange]| {
            kinds(&check_rows(
                kind,
                hour(),
                keys,
                Some(times),
                unfilled,
                coverage,
            ))
        };
        assert!(check(&[1, 2, 3, 4], &times, &[]).is_empty());
        assert_eq!(
            check(&[1, 3, 2, 4], &times, &[]),
            vec![ProblemKind::NotSorted]
        );
        assert_eq!(
            check(&[1, 2, 2, 4], &times, &[]),
            vec![ProblemKind::NotSorted]
        );
        assert_eq!(
            check(&[1, 2, 3, 5], &times, &[]),
            vec![ProblemKind::UndeclaredIdGap]
        );
        assert!(check(&[1, 2, 3, 5], &times, &[hole(4, 4)]).is_empty());
        let late = [HOUR_START, HOUR_START, HOUR_START, hour().end()];
        assert_eq!(
            check(&[1, 2, 3, 4], &late, &[]),
            vec![ProblemKind::RowOutsideHour]
        );
    }

    #[test]
    fn kline_grids_count_within_the_coverage_and_declared_holes() {
        let minute = StreamKind::Kline(KlineInterval::Minute1);
        let grid: Vec<i64> = (0..60)
            .map(|index| HOUR_START + index * MICROS_PER_MINUTE)
            .collect();
        let whole = (hour().start(), hour().end());
        let check = |keys: &[i64], unfilled: &[UnfilledRange], coverage| {
            kinds(&check_rows(minute, hour(), keys, None, unfilled, coverage))
        };
        assert!(check(&grid, &[], whole).is_empty());
        let short = &grid[..58];
        assert_eq!(
            check(short, &[], whole),
            vec![ProblemKind::UndeclaredMissingKlines]
        );
        assert!(check(short, &[hole(grid[58], grid[59])], whole).is_empty());
        let late_start = &grid[10..];
        assert!(check(late_start, &[], (grid[10], hour().end())).is_empty());
        let mut off = grid.clone();
        off[5] += 1;
        assert_eq!(
            check(&off, &[], whole),
            vec![
                ProblemKind::OffGridKline,
                ProblemKind::UndeclaredMissingKlines
            ]
        );
    }

    #[test]
    fn undeclared_parts_subtract_declared_ranges() {
        let open_start = UnfilledRange {
            from: None,
            ..hole(0, 12)
        };
        assert_eq!(undeclared_parts(10, 20, &[]), vec![(10, 20)]);
        assert_eq!(
            undeclared_parts(10, 20, &[&hole(12, 13), &hole(15, 30)]),
            vec![(10, 11), (14, 14)]
        );
        assert_eq!(undeclared_parts(10, 20, &[&open_start]), vec![(13, 20)]);
        assert!(undeclared_parts(10, 20, &[&hole(0, i64::MAX)]).is_empty());
    }

    #[test]
    fn the_schema_check_names_each_deviation() {
        let kind = StreamKind::Trade;
        let good = expected_columns(kind);
        assert_eq!(check_schema(kind, Some(2), &good), None);
        let mut v1 = vec![("symbol".to_owned(), DataType::Utf8)];
        v1.extend(good.clone());
        assert_eq!(check_schema(kind, Some(1), &v1), None);
        assert!(check_schema(kind, Some(2), &v1).is_some_and(|text| text.contains("version 2")));
        let replaced = |name: &str, data_type: DataType| {
            let columns: Vec<(String, DataType)> = good
                .iter()
                .map(|(column, original)| {
                    let data_type = if column == name {
                        data_type.clone()
                    } else {
                        original.clone()
                    };
                    (column.clone(), data_type)
                })
                .collect();
            check_schema(kind, Some(2), &columns).unwrap_or_default()
        };
        assert!(replaced("price", DataType::Float64).contains("float"));
        assert!(replaced("price", DataType::Decimal128(38, 2)).contains("Decimal128(38, 2)"));
        let millis = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        assert!(replaced("trade_time", millis).contains("millisecond"));
        let naive = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert!(replaced("trade_time", naive).contains("naive"));
        let dropped: Vec<(String, DataType)> = good
            .iter()
            .filter(|(name, _)| name != "quantity")
            .cloned()
            .collect();
        assert!(check_schema(kind, Some(2), &dropped)
            .is_some_and(|text| text.contains("quantity missing")));
    }
}
