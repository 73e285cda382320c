//! The comparison, pure: hours of our rows and of archive rows go in, in
//! ascending order of hour; a [`ReconcileReport`] comes out.
//!
//! Rows are matched by key (trade id, aggregate id, kline open time). A row
//! is bucketed by its own time on each side, so when the two sides disagree
//! about a row's time across an hour boundary, the row waits unmatched for
//! one more hour before it is judged missing: memory holds about two hours
//! of each side, whatever the length of the archive.
//!
//! Who a difference is attributed to:
//! - values differ under one key: ours (neither side is corrected);
//! - a key only the archive has: ours, unless our file declares a hole
//!   there (`unfilled`) or we have no file for that time (not recorded);
//! - a key only we have: the archive's when our keys are continuous on both
//!   sides of it (the archive lost it), ours otherwise;
//! - a key the archive holds twice: the archive's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::domain::{Hour, Row, StreamKey, StreamKind, TimeUs, UnfilledRange};

use super::archive::ArchiveRow;
use super::report::{archive_location, key_text, utc_text, Example, ReconcileReport, RowText};

/// Our sealed file of one hour, as read.
#[derive(Debug, Clone)]
pub struct OurHour {
    pub path: PathBuf,
    /// Sorted by key, as sealed files are.
    pub rows: Vec<Row>,
    /// The part of the hour the file vouches for (`coverage_from`..`coverage_to`).
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    pub unfilled: Vec<UnfilledRange>,
}

/// Whether two times are equal at the archive's precision.
fn same_time(ours: TimeUs, archive: TimeUs, archive_in_ms: bool) -> bool {
    if archive_in_ms {
        ours.div_euclid(1000) * 1000 == archive
    } else {
        ours == archive
    }
}

/// The compared fields whose values differ, in column order. Values are
/// compared as domain values (`Decimal8`), so `61685.99000000` equals
/// `61685.99`. `is_best_match` is compared where the archive has it (spot).
pub fn differing_fields(ours: &Row, archive: &ArchiveRow) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |name: &'static str, equal: bool| {
        if !equal {
            fields.push(name);
        }
    };
    match (ours, &archive.row) {
        (Row::Trade(ours), Row::Trade(theirs)) => {
            check("price", ours.price == theirs.price);
            check("quantity", ours.quantity == theirs.quantity);
            check(
                "trade_time",
                same_time(ours.trade_time, theirs.trade_time, archive.time_in_ms),
            );
            check(
                "is_buyer_maker",
                ours.is_buyer_maker == theirs.is_buyer_maker,
            );
            if theirs.is_best_match.is_some() {
                check("is_best_match", ours.is_best_match == theirs.is_best_match);
            }
        }
        (Row::AggTrade(ours), Row::AggTrade(theirs)) => {
            check("price", ours.price == theirs.price);
            check("quantity", ours.quantity == theirs.quantity);
            check(
                "first_trade_id",
                ours.first_trade_id == theirs.first_trade_id,
            );
            check("last_trade_id", ours.last_trade_id == theirs.last_trade_id);
            check(
                "trade_time",
                same_time(ours.trade_time, theirs.trade_time, archive.time_in_ms),
            );
            check(
                "is_buyer_maker",
                ours.is_buyer_maker == theirs.is_buyer_maker,
            );
            if theirs.is_best_match.is_some() {
                check("is_best_match", ours.is_best_match == theirs.is_best_match);
            }
        }
        (Row::Kline(ours), Row::Kline(theirs)) => {
            check(
                "close_time",
                same_time(ours.close_time, theirs.close_time, archive.close_time_in_ms),
            );
            check("open", ours.open == theirs.open);
            check("high", ours.high == theirs.high);
            check("low", ours.low == theirs.low);
            check("close", ours.close == theirs.close);
            check("volume", ours.volume == theirs.volume);
            check("quote_volume", ours.quote_volume == theirs.quote_volume);
            check("trade_count", ours.trade_count == theirs.trade_count);
            check(
                "taker_buy_base_volume",
                ours.taker_buy_base_volume == theirs.taker_buy_base_volume,
            );
            check(
                "taker_buy_quote_volume",
                ours.taker_buy_quote_volume == theirs.taker_buy_quote_volume,
            );
        }
        _ => check("kind", false),
    }
    fields
}

/// The key before and after `key` when nothing is missing: ids step by one,
/// klines by their interval.
fn neighbours(kind: StreamKind, key: i64) -> (i64, i64) {
    match kind {
        StreamKind::Kline(interval) => (
            interval.open_time_containing(key.saturating_sub(1)),
            interval.next_open_time(key),
        ),
        StreamKind::Trade | StreamKind::AggTrade => (key.saturating_sub(1), key.saturating_add(1)),
    }
}

fn archive_text(paths: &[PathBuf], row: &ArchiveRow) -> RowText {
    RowText::of_row(
        &row.row,
        archive_location(paths, row),
        (row.time_in_ms, row.close_time_in_ms),
    )
}

fn our_text(row: &Row, path: Option<&PathBuf>) -> RowText {
    let location = path.map_or_else(|| "our file".into(), |path| path.display().to_string());
    RowText::of_row(row, location, (false, false))
}

/// Whether a declared hole of our file covers the archive row.
fn declared(unfilled: &[UnfilledRange], key: i64, time: TimeUs) -> bool {
    unfilled.iter().any(|hole| match (hole.from, hole.to) {
        (Some(from), Some(to)) => (from..=to).contains(&key),
        _ => (hole.from_time..=hole.to_time).contains(&time),
    })
}

/// The comparison in progress. Feed hours in ascending order with
/// [`Engine::add_hour`], then [`Engine::finish`].
pub struct Engine {
    kind: StreamKind,
    archive_paths: Vec<PathBuf>,
    report: ReconcileReport,
    /// Our rows not matched yet, with their hour.
    pending_ours: BTreeMap<i64, (Hour, Row)>,
    /// Archive rows not matched yet, with their hour.
    pending_archive: BTreeMap<i64, (Hour, ArchiveRow)>,
    /// Archive rows matched in the last two hours: a later copy of one is a
    /// duplicate.
    matched_archive: BTreeMap<i64, (Hour, ArchiveRow)>,
    /// Our keys of the last three hours, for continuity.
    our_keys: BTreeMap<i64, Hour>,
    /// Hours added and not yet judged: our file, if any.
    hours: BTreeMap<Hour, Option<OurHour>>,
}

impl Engine {
    pub fn new(key: &StreamKey, archive_paths: Vec<PathBuf>) -> Engine {
        Engine {
            kind: key.kind,
            archive_paths,
            report: ReconcileReport::new(key),
            pending_ours: BTreeMap::new(),
            pending_archive: BTreeMap::new(),
            matched_archive: BTreeMap::new(),
            our_keys: BTreeMap::new(),
            hours: BTreeMap::new(),
        }
    }

    /// The report, for the caller to add what it read (archive summaries).
    pub fn report_mut(&mut self) -> &mut ReconcileReport {
        &mut self.report
    }

    /// Adds one hour: our file of it (if we have one) and the archive rows
    /// whose time falls in it, in file order. Hours must ascend.
    pub fn add_hour(&mut self, hour: Hour, ours: Option<OurHour>, archive_rows: Vec<ArchiveRow>) {
        debug_assert!(
            self.hours
                .keys()
                .next_back()
                .is_none_or(|last| *last < hour),
            "hours ascend"
        );
        self.report
            .first_hour
            .get_or_insert_with(|| hour.hour_text());
        self.report.last_hour = Some(hour.hour_text());
        let mut ours = ours;
        if let Some(file) = ours.as_mut() {
            self.report.n_hours_recorded += 1;
            self.report.n_our_rows += file.rows.len() as u64;
            for row in std::mem::take(&mut file.rows) {
                self.our_keys.insert(row.key(), hour);
                self.pending_ours.insert(row.key(), (hour, row));
            }
        }
        self.hours.insert(hour, ours);
        for row in archive_rows {
            self.add_archive_row(hour, row);
        }
        self.match_pending();
        // Rows of earlier hours had this hour to find their match.
        self.judge_before(Some(hour));
        let keep_from = |hours_back: i64| {
            Hour::containing(hour.start() - hours_back * crate::domain::MICROS_PER_HOUR)
        };
        let matched_from = keep_from(1);
        self.matched_archive
            .retain(|_, (row_hour, _)| *row_hour >= matched_from);
        let keys_from = keep_from(1);
        self.our_keys.retain(|_, key_hour| *key_hour >= keys_from);
    }

    fn add_archive_row(&mut self, hour: Hour, row: ArchiveRow) {
        let kind = self.kind;
        self.report.n_archive_rows += 1;
        let key = row.row.key();
        let earlier = self
            .pending_archive
            .get(&key)
            .or_else(|| self.matched_archive.get(&key));
        if let Some((_, first)) = earlier {
            let paths = &self.archive_paths;
            let differing = differing_fields(&first.row, &row);
            let time = utc_text(row.row.bucket_time(), row.time_in_ms);
            self.report.archive_duplicates.add(|| Example {
                key,
                key_text: key_text(kind, key),
                time,
                ours: None,
                archive: Some(archive_text(paths, first)),
                archive_duplicate: Some(archive_text(paths, &row)),
                differing_fields: differing,
            });
            return;
        }
        self.pending_archive.insert(key, (hour, row));
    }

    fn match_pending(&mut self) {
        let kind = self.kind;
        let keys: Vec<i64> = if self.pending_archive.len() <= self.pending_ours.len() {
            self.pending_archive
                .keys()
                .filter(|key| self.pending_ours.contains_key(key))
                .copied()
                .collect()
        } else {
            self.pending_ours
                .keys()
                .filter(|key| self.pending_archive.contains_key(key))
                .copied()
                .collect()
        };
        for key in keys {
            let (our_hour, ours) = self.pending_ours.remove(&key).expect("key listed above");
            let (archive_hour, theirs) =
                self.pending_archive.remove(&key).expect("key listed above");
            let differing = differing_fields(&ours, &theirs);
            if differing.is_empty() {
                self.report.n_identical += 1;
            } else {
                let our_path = self
                    .hours
                    .get(&our_hour)
                    .and_then(Option::as_ref)
                    .map(|file| &file.path);
                let paths = &self.archive_paths;
                self.report.values_differ.add(|| Example {
                    key,
                    key_text: key_text(kind, key),
                    time: utc_text(theirs.row.bucket_time(), theirs.time_in_ms),
                    ours: Some(our_text(&ours, our_path)),
                    archive: Some(archive_text(paths, &theirs)),
                    archive_duplicate: None,
                    differing_fields: differing,
                });
            }
            self.matched_archive.insert(key, (archive_hour, theirs));
        }
    }

    /// Judges the unmatched rows of the hours before `before` (all of them
    /// for `None`) and forgets those hours.
    fn judge_before(&mut self, before: Option<Hour>) {
        let kind = self.kind;
        let is_due = |hour: &Hour| before.is_none_or(|before| *hour < before);
        let due_ours: Vec<i64> = self
            .pending_ours
            .iter()
            .filter(|(_, (hour, _))| is_due(hour))
            .map(|(key, _)| *key)
            .collect();
        for key in due_ours {
            let (hour, row) = self.pending_ours.remove(&key).expect("key listed above");
            let (before_key, after_key) = neighbours(kind, key);
            let continuous =
                self.our_keys.contains_key(&before_key) && self.our_keys.contains_key(&after_key);
            let path = self
                .hours
                .get(&hour)
                .and_then(Option::as_ref)
                .map(|file| &file.path);
            let example = || Example {
                key,
                key_text: key_text(kind, key),
                time: utc_text(row.bucket_time(), false),
                ours: Some(our_text(&row, path)),
                archive: None,
                archive_duplicate: None,
                differing_fields: Vec::new(),
            };
            if continuous {
                self.report.missing_in_archive.add(example);
            } else {
                self.report.only_on_our_side.add(example);
            }
        }
        let due_archive: Vec<i64> = self
            .pending_archive
            .iter()
            .filter(|(_, (hour, _))| is_due(hour))
            .map(|(key, _)| *key)
            .collect();
        for key in due_archive {
            let (hour, row) = self.pending_archive.remove(&key).expect("key listed above");
            let time = row.row.bucket_time();
            let paths = &self.archive_paths;
            let example = || Example {
                key,
                key_text: key_text(kind, key),
                time: utc_text(time, row.time_in_ms),
                ours: None,
                archive: Some(archive_text(paths, &row)),
                archive_duplicate: None,
                differing_fields: Vec::new(),
            };
            match self.hours.get(&hour).and_then(Option::as_ref) {
                Some(file) if (file.coverage_from..file.coverage_to).contains(&time) => {
                    if declared(&file.unfilled, key, time) {
                        self.report.missing_on_our_side_declared.add(example);
                    } else {
                        self.report.missing_on_our_side.add(example);
                    }
                }
                _ => self.report.not_recorded.add(example),
            }
        }
        self.hours.retain(|hour, _| !is_due(hour));
    }

    /// Judges what is left and returns the report.
    pub fn finish(mut self) -> ReconcileReport {
        self.judge_before(None);
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AggTradeRow, Decimal8, KlineInterval, KlineRow, Market, Source, Symbol};

    const HOUR_0: TimeUs = 1_767_225_600_000_000; // 2026-01-01T00

    fn key(kind: StreamKind) -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind,
        }
    }

    fn agg(id: i64, price: &str, time: TimeUs) -> AggTradeRow {
        AggTradeRow {
            agg_trade_id: id,
            price: price.parse().expect("price"),
            quantity: "0.5".parse().expect("quantity"),
            first_trade_id: id * 10,
            last_trade_id: id * 10 + 1,
            trade_time: time,
            is_buyer_maker: true,
            is_best_match: Some(true),
            event_time: None,
            recv_time: None,
            source: Source::Ws,
        }
    }

    fn ours(hour: Hour, rows: Vec<AggTradeRow>) -> OurHour {
        OurHour {
            path: PathBuf::from(format!("ours-{}.parquet", hour.hour_text())),
            rows: rows.into_iter().map(Row::AggTrade).collect(),
            coverage_from: hour.start(),
            coverage_to: hour.end(),
            unfilled: Vec::new(),
        }
    }

    fn archive(rows: Vec<AggTradeRow>) -> Vec<ArchiveRow> {
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| ArchiveRow {
                row: Row::AggTrade(AggTradeRow {
                    event_time: None,
                    recv_time: None,
                    source: Source::Rest,
                    ..row
                }),
                file: 0,
                line: index as u64 + 1,
                time_in_ms: false,
                close_time_in_ms: false,
            })
            .collect()
    }

    fn run(hours: Vec<(Hour, Option<OurHour>, Vec<ArchiveRow>)>) -> ReconcileReport {
        let mut engine = Engine::new(
            &key(StreamKind::AggTrade),
            vec![PathBuf::from("BTCUSDT-aggTrades-2026-01-01.csv")],
        );
        for (hour, ours, rows) in hours {
            engine.add_hour(hour, ours, rows);
        }
        engine.finish()
    }

    fn rows(ids: std::ops::RangeInclusive<i64>, time: TimeUs) -> Vec<AggTradeRow> {
        ids.map(|id| agg(id, "87648.21", time + id)).collect()
    }

    #[test]
    fn equal_rows_are_identical_whatever_the_decimal_padding() {
        let hour = Hour::containing(HOUR_0);
        let mut theirs = archive(rows(1..=3, HOUR_0));
        if let Row::AggTrade(row) = &mut theirs[0].row {
            row.price = "87648.2100".parse().expect("same value");
        }
        let report = run(vec![(hour, Some(ours(hour, rows(1..=3, HOUR_0))), theirs)]);
        assert_eq!(report.n_identical, 3);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.n_archive_defects(), 0);
    }

    #[test]
    fn a_deleted_row_and_a_changed_price_are_exactly_two_differences() {
        let hour = Hour::containing(HOUR_0);
        let mut our_rows = rows(1..=10, HOUR_0);
        our_rows.remove(4); // id 5
        our_rows[6].price = Decimal8::from_scaled(1); // id 8
        let report = run(vec![(
            hour,
            Some(ours(hour, our_rows)),
            archive(rows(1..=10, HOUR_0)),
        )]);
        assert_eq!(report.n_differences_ours(), 2, "{report}");
        assert_eq!(report.missing_on_our_side.count, 1);
        assert_eq!(report.missing_on_our_side.examples[0].key, 5);
        assert_eq!(report.values_differ.count, 1);
        let example = &report.values_differ.examples[0];
        assert_eq!(example.key, 8);
        assert_eq!(example.differing_fields, vec!["price"]);
        assert_eq!(
            example.ours.as_ref().expect("ours").fields[0].1,
            "0.00000001"
        );
        assert_eq!(
            example.archive.as_ref().expect("archive").location,
            "BTCUSDT-aggTrades-2026-01-01.csv line 8"
        );
        assert_eq!(report.n_identical, 8);
        assert!(!report.is_clean());
        let text = report.to_string();
        assert!(text.contains("differs in price"), "{text}");
        assert!(text.contains("2026-01-01T00:00:00.000008Z"), "{text}");
    }

    #[test]
    fn archive_duplicates_and_archive_gaps_are_the_archives() {
        let hour = Hour::containing(HOUR_0);
        let mut theirs = rows(1..=10, HOUR_0);
        theirs.remove(4); // the archive lost id 5; ours are continuous around it
        let duplicate = theirs[1].clone(); // id 2 again
        theirs.insert(2, duplicate);
        let report = run(vec![(
            hour,
            Some(ours(hour, rows(1..=10, HOUR_0))),
            archive(theirs),
        )]);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.archive_duplicates.count, 1);
        assert_eq!(report.archive_duplicates.examples[0].key, 2);
        assert_eq!(report.missing_in_archive.count, 1);
        assert_eq!(report.missing_in_archive.examples[0].key, 5);
    }

    #[test]
    fn a_row_only_we_have_beside_a_hole_of_ours_is_ours() {
        let hour = Hour::containing(HOUR_0);
        let mut our_rows = rows(1..=10, HOUR_0);
        our_rows.remove(5); // id 6 missing on our side
        our_rows.push(agg(100, "1", HOUR_0 + 100)); // an id nobody else has
        let report = run(vec![(
            hour,
            Some(ours(hour, our_rows)),
            archive(rows(1..=10, HOUR_0)),
        )]);
        assert_eq!(report.missing_on_our_side.count, 1);
        assert_eq!(report.only_on_our_side.count, 1);
        assert_eq!(report.only_on_our_side.examples[0].key, 100);
        assert_eq!(report.n_differences_ours(), 2);
    }

    #[test]
    fn declared_holes_and_unrecorded_hours_do_not_fail() {
        let hour_0 = Hour::containing(HOUR_0);
        let hour_1 = hour_0.next();
        let mut file = ours(hour_0, rows(1..=3, HOUR_0));
        file.unfilled.push(UnfilledRange {
            from: Some(4),
            to: Some(5),
            from_time: HOUR_0,
            to_time: HOUR_0 + 10,
            reason: "REST could not keep up before the deadline".into(),
        });
        let report = run(vec![
            (hour_0, Some(file), archive(rows(1..=5, HOUR_0))),
            (hour_1, None, archive(rows(6..=7, hour_1.start()))),
        ]);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.missing_on_our_side_declared.count, 2);
        assert_eq!(report.not_recorded.count, 2);
        assert_eq!(report.n_hours_recorded, 1);
        assert_eq!(report.last_hour.as_deref(), Some("2026-01-01T01"));
    }

    #[test]
    fn a_row_whose_time_crosses_the_hour_still_matches_by_key() {
        let hour_0 = Hour::containing(HOUR_0);
        let hour_1 = hour_0.next();
        // The archive puts id 3 just after the hour, we just before.
        let our_rows = vec![
            agg(1, "1", HOUR_0),
            agg(2, "1", HOUR_0 + 1),
            agg(3, "1", hour_1.start() - 1),
        ];
        let their_rows = vec![agg(1, "1", HOUR_0), agg(2, "1", HOUR_0 + 1)];
        let report = run(vec![
            (hour_0, Some(ours(hour_0, our_rows)), archive(their_rows)),
            (
                hour_1,
                Some(ours(hour_1, Vec::new())),
                archive(vec![agg(3, "1", hour_1.start())]),
            ),
        ]);
        assert_eq!(report.values_differ.count, 1, "{report}");
        assert_eq!(
            report.values_differ.examples[0].differing_fields,
            vec!["trade_time"]
        );
        assert_eq!(
            report.missing_on_our_side.count + report.only_on_our_side.count,
            0
        );
    }

    #[test]
    fn millisecond_archive_times_compare_at_millisecond_precision() {
        let ours_row = Row::AggTrade(agg(1, "1", HOUR_0 + 123_456));
        let mut theirs = archive(vec![agg(1, "1", HOUR_0 + 123_000)]).remove(0);
        theirs.time_in_ms = true;
        assert!(differing_fields(&ours_row, &theirs).is_empty());
        let Row::AggTrade(row) = &mut theirs.row else {
            unreachable!()
        };
        row.trade_time = HOUR_0 + 124_000;
        assert_eq!(differing_fields(&ours_row, &theirs), vec!["trade_time"]);
    }

    #[test]
    fn klines_compare_every_archive_value_and_are_continuous_on_their_grid() {
        let minute = KlineInterval::Minute1;
        let kline = |open: TimeUs, close: &str| KlineRow {
            open_time: open,
            close_time: open + 59_999_999,
            open: "1".parse().expect("open"),
            high: "2".parse().expect("high"),
            low: "1".parse().expect("low"),
            close: close.parse().expect("close"),
            volume: "10".parse().expect("volume"),
            quote_volume: "15".parse().expect("quote volume"),
            trade_count: 3,
            taker_buy_base_volume: "5".parse().expect("taker base"),
            taker_buy_quote_volume: "7.5".parse().expect("taker quote"),
            first_trade_id: Some(1),
            last_trade_id: Some(3),
            event_time: Some(open + 60_000_000),
            recv_time: Some(open + 60_001_000),
            source: Source::Ws,
        };
        let hour = Hour::containing(HOUR_0);
        let minute_us = 60_000_000;
        let our_rows: Vec<Row> = (0..3)
            .map(|index| Row::kline(kline(HOUR_0 + index * minute_us, "2")))
            .collect();
        let their_rows: Vec<ArchiveRow> =
            [kline(HOUR_0, "2"), kline(HOUR_0 + 2 * minute_us, "1.5")]
                .into_iter()
                .enumerate()
                .map(|(index, row)| ArchiveRow {
                    // The archive's close time in ms, as futures files give it.
                    row: Row::kline(KlineRow {
                        close_time: row.close_time - 999,
                        ..row
                    }),
                    file: 0,
                    line: index as u64 + 1,
                    time_in_ms: true,
                    close_time_in_ms: true,
                })
                .collect();
        let mut engine = Engine::new(
            &key(StreamKind::Kline(minute)),
            vec![PathBuf::from("BTCUSDT-1m-2026-01.csv")],
        );
        engine.add_hour(
            hour,
            Some(OurHour {
                path: PathBuf::from("ours.parquet"),
                rows: our_rows,
                coverage_from: hour.start(),
                coverage_to: hour.end(),
                unfilled: Vec::new(),
            }),
            their_rows,
        );
        let report = engine.finish();
        assert_eq!(report.values_differ.count, 1, "{report}");
        assert_eq!(
            report.values_differ.examples[0].differing_fields,
            vec!["close"]
        );
        assert_eq!(
            report.missing_in_archive.count, 1,
            "minute 1 lost by the archive"
        );
        assert_eq!(
            report.missing_in_archive.examples[0].key,
            HOUR_0 + minute_us
        );
        assert_eq!(report.n_identical, 1);
    }
}
