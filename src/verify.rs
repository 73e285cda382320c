//! `binance-recorder verify`: the dataset-level completeness check
//! (docs/DATASET.md, "Completeness"). Reads only file footers. For each
//! (market, stream, symbol) it reports the holes files declare, and
//! *undeclared* problems: ids that skip between consecutive hours or kline
//! files with fewer klines than their grid, with no `unfilled` entry to
//! say so, and files that cannot be read. Declared holes are honest; an
//! undeclared one is a defect of the recorder. `check_stream` is pure.

use std::path::PathBuf;

use crate::config::Config;
use crate::domain::{Hour, StreamKey, StreamKind, UnfilledRange};
use crate::gaps::kline_grid;
use crate::parquet_out::{self, SealedSummary};

/// One finding of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A hole a file declares (not a defect: the exchange or REST could
    /// not give the rows).
    Declared { hour: Hour, range: UnfilledRange },
    /// Ids skip between the last row of one hour and the first of the next
    /// sealed hour, and neither file declares it.
    UndeclaredIdGap {
        after_hour: Hour,
        last_key: i64,
        next_key: i64,
    },
    /// A kline file holds fewer klines than its grid, beyond what it declares.
    UndeclaredMissingKlines { hour: Hour, n_missing: u64 },
    /// A file whose footer cannot be read.
    Unreadable { path: PathBuf, error: String },
}

impl Finding {
    pub fn is_defect(&self) -> bool {
        !matches!(self, Finding::Declared { .. })
    }
}

/// Checks the sealed files of one stream, given in ascending hour order.
pub fn check_stream(kind: StreamKind, files: &[(Hour, SealedSummary)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (hour, summary) in files {
        for range in &summary.unfilled {
            findings.push(Finding::Declared {
                hour: *hour,
                range: range.clone(),
            });
        }
        if let StreamKind::Kline(interval) = kind {
            let n_grid = kline_grid(interval, hour.start(), hour.end()).len() as u64;
            let n_declared: u64 = summary
                .unfilled
                .iter()
                .filter_map(|range| {
                    // Clamped to the hour: a footer is read from disk, and a
                    // corrupt range spanning centuries would build a grid
                    // that exhausts memory.
                    let from = range.from?.max(hour.start());
                    let to = interval.next_open_time(range.to?.min(hour.end()));
                    Some(kline_grid(interval, from, to.min(hour.end())).len() as u64)
                })
                .fold(0, u64::saturating_add);
            let n_missing = n_grid.saturating_sub(summary.row_count.saturating_add(n_declared));
            if n_missing > 0 {
                findings.push(Finding::UndeclaredMissingKlines {
                    hour: *hour,
                    n_missing,
                });
            }
        }
    }
    if matches!(kind, StreamKind::Trade | StreamKind::AggTrade) {
        // The last known key so far, carried over empty files.
        let mut previous: Option<(Hour, i64)> = None;
        for (hour, summary) in files {
            if let (Some((previous_hour, last_key)), Some(first_key)) =
                (previous, summary.first_key)
            {
                let contiguous_hours = previous_hour.next() == *hour || previous_hour == *hour;
                // A declared range explains the skip when it overlaps it.
                let declared = |list: &[UnfilledRange]| {
                    list.iter().any(|range| {
                        range.from.is_none_or(|from| from < first_key)
                            && range.to.is_none_or(|to| to > last_key)
                    })
                };
                let previous_declares = files
                    .iter()
                    .find(|(other, _)| *other == previous_hour)
                    .is_some_and(|(_, other)| declared(&other.unfilled));
                if contiguous_hours
                    && first_key > last_key + 1
                    && !declared(&summary.unfilled)
                    && !previous_declares
                {
                    findings.push(Finding::UndeclaredIdGap {
                        after_hour: previous_hour,
                        last_key,
                        next_key: first_key,
                    });
                }
            }
            if let Some(last_key) = summary.last_key {
                previous = Some((*hour, last_key));
            } else if let Some((_, last_key)) = previous {
                // An empty hour keeps the previous key but moves the hour on.
                previous = Some((*hour, last_key));
            }
        }
    }
    findings
}

/// What `verify` found in a dataset.
#[derive(Debug, Default)]
pub struct Report {
    pub n_files: usize,
    pub findings: Vec<(StreamKey, Finding)>,
}

impl Report {
    pub fn n_defects(&self) -> usize {
        self.findings
            .iter()
            .filter(|(_, finding)| finding.is_defect())
            .count()
    }
}

/// Checks every sealed file of the configured streams.
pub fn verify(config: &Config) -> Report {
    let mut report = Report::default();
    for market_config in &config.markets {
        for symbol in &market_config.symbols {
            for kind in &market_config.streams {
                let key = StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                };
                let mut files = Vec::new();
                for hour in parquet_out::sealed_hours(&config.data_dir, &key) {
                    report.n_files += 1;
                    let path = parquet_out::hour_file_path(&config.data_dir, &key, hour);
                    match parquet_out::read_summary(&path) {
                        Ok(summary) => files.push((hour, summary)),
                        Err(error) => report.findings.push((
                            key.clone(),
                            Finding::Unreadable {
                                path,
                                error: error.to_string(),
                            },
                        )),
                    }
                }
                for finding in check_stream(*kind, &files) {
                    report.findings.push((key.clone(), finding));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KlineInterval, MICROS_PER_MINUTE};

    const HOUR_START: i64 = 1_767_229_200_000_000;

    fn summary(first: i64, last: i64, unfilled: Vec<UnfilledRange>) -> SealedSummary {
        SealedSummary {
            schema_version: crate::parquet_out::SchemaVersion::CURRENT,
            first_key: Some(first),
            last_key: Some(last),
            row_count: (last - first + 1) as u64,
            unfilled,
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

    /// A footer is read from disk: a declared kline range spanning the whole
    /// accepted time range (corrupt, or hand-edited) is clamped to the file's
    /// hour instead of building a grid of 2.5 * 10^11 seconds.
    #[test]
    fn a_declared_range_beyond_its_hour_counts_only_the_hour() {
        let hour = Hour::containing(HOUR_START);
        let mut summary = summary(0, 0, vec![hole(0, crate::domain::MAX_EXCHANGE_TIME_US)]);
        summary.row_count = 0;
        let second = StreamKind::Kline(KlineInterval::Second1);
        let findings = check_stream(second, &[(hour, summary)]);
        assert!(
            !findings
                .iter()
                .any(|finding| matches!(finding, Finding::UndeclaredMissingKlines { .. })),
            "the whole hour is declared: {findings:?}"
        );
    }

    #[test]
    fn consecutive_hours_with_consecutive_ids_are_clean() {
        let hour = Hour::containing(HOUR_START);
        let files = [
            (hour, summary(1, 10, vec![])),
            (hour.next(), summary(11, 20, vec![])),
        ];
        assert!(check_stream(StreamKind::Trade, &files).is_empty());
    }

    #[test]
    fn a_skip_between_hours_is_a_defect_unless_declared() {
        let hour = Hour::containing(HOUR_START);
        let files = [
            (hour, summary(1, 10, vec![])),
            (hour.next(), summary(15, 20, vec![])),
        ];
        let findings = check_stream(StreamKind::AggTrade, &files);
        assert_eq!(
            findings,
            vec![Finding::UndeclaredIdGap {
                after_hour: hour,
                last_key: 10,
                next_key: 15
            }]
        );
        let declared = [
            (hour, summary(1, 10, vec![hole(11, 14)])),
            (hour.next(), summary(15, 20, vec![])),
        ];
        let findings = check_stream(StreamKind::AggTrade, &declared);
        assert_eq!(findings.len(), 1);
        assert!(!findings[0].is_defect());
    }

    #[test]
    fn hours_not_recorded_are_not_judged_across() {
        let hour = Hour::containing(HOUR_START);
        let files = [
            (hour, summary(1, 10, vec![])),
            (hour.next().next(), summary(50, 60, vec![])),
        ];
        assert!(check_stream(StreamKind::Trade, &files).is_empty());
    }

    #[test]
    fn kline_files_short_of_their_grid_are_a_defect_unless_declared() {
        let hour = Hour::containing(HOUR_START);
        let minute = StreamKind::Kline(KlineInterval::Minute1);
        let short = SealedSummary {
            schema_version: crate::parquet_out::SchemaVersion::CURRENT,
            first_key: Some(HOUR_START),
            last_key: None,
            row_count: 58,
            unfilled: vec![],
        };
        assert_eq!(
            check_stream(minute, &[(hour, short.clone())]),
            vec![Finding::UndeclaredMissingKlines { hour, n_missing: 2 }]
        );
        let declared = SealedSummary {
            unfilled: vec![hole(
                HOUR_START + 5 * MICROS_PER_MINUTE,
                HOUR_START + 6 * MICROS_PER_MINUTE,
            )],
            ..short
        };
        assert!(check_stream(minute, &[(hour, declared)])
            .iter()
            .all(|finding| !finding.is_defect()));
    }
}
