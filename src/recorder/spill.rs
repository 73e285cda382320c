//! The rows of one unsealed stream-hour, in memory and spilled (no I/O).
//!
//! Rows wait in memory ([`HeldRows`]) until their hour seals. When the rows
//! held by every hour pass the memory budget (`memory.max_held_mb`), the
//! state takes the biggest hours' rows out of memory as *runs*: each run is
//! the hour's rows held at that moment, sorted and unique by key, handed to
//! the runtime to write beside the WAL (`recorder/run_file.rs`). The hour
//! keeps only what judging it needs of a run: its keys as [`IdSpan`]s (gap
//! detection needs the ends of each span of ids, not every id), its counts
//! and its first and last times. When the hour seals, its runs and what is
//! in memory are merged back in key order under the merge rule
//! ([`merged_rows`]), a slice at a time, so a busy hour never has to fit in
//! memory at once.
//!
//! A run is written once and read once; the WAL still holds every row of
//! it (the hour pins its segments until sealed), so the runs are removed at
//! start and rebuilt by replay. A run whose write failed stays in memory.

use std::path::PathBuf;

use itertools::Itertools;

use crate::domain::{Row, Source, StreamKind, TimeUs};
use crate::gaps::{merge_spans, IdAt, IdSpan};
use crate::seal::Inserted;

use super::held::HeldRows;

/// Where a spilled run's rows are.
#[derive(Debug, Clone)]
pub enum RunRows {
    /// Being written by the runtime: the hour cannot seal until it knows.
    Writing,
    /// The write failed: the rows stay in memory.
    Held(HeldRows),
    /// On disk, to be read back when the hour seals (all `n_rows` of it).
    File { path: PathBuf, n_rows: usize },
}

/// One run spilled out of an hour, summarised.
#[derive(Debug, Clone)]
pub struct SpilledRun {
    pub id: u64,
    /// The run's keys as spans, with the times at their ends.
    spans: Vec<IdSpan>,
    n_rows: usize,
    n_rest: usize,
    /// The earliest and latest trade time of its rows.
    times: Option<(TimeUs, TimeUs)>,
    /// Bytes of heap its rows took when spilled (still taken while written).
    bytes: usize,
    pub rows: RunRows,
}

/// What the runtime writes: one run of one hour.
#[derive(Debug)]
pub struct SpillJob {
    pub run_id: u64,
    pub rows: HeldRows,
}

/// The rows of one stream-hour: those in memory and the runs spilled
/// before them (oldest first). Sorted and unique by key once merged.
#[derive(Debug, Clone)]
pub struct HourRows {
    memory: HeldRows,
    runs: Vec<SpilledRun>,
    /// The highest key of any run: a row above it cannot be in one.
    runs_upto: Option<i64>,
}

impl HourRows {
    pub fn new(kind: StreamKind) -> HourRows {
        HourRows::from_held(HeldRows::new(kind))
    }

    pub fn from_held(memory: HeldRows) -> HourRows {
        HourRows {
            memory,
            runs: Vec::new(),
            runs_upto: None,
        }
    }

    /// Rows already sorted and unique by key (a file's, a fill's), held.
    pub fn from_rows(kind: StreamKind, rows: Vec<Row>) -> HourRows {
        HourRows::from_held(HeldRows::from_rows(kind, rows))
    }

    pub fn kind(&self) -> StreamKind {
        self.memory.kind()
    }

    /// Inserts `row` under the merge rule (first arrival wins, a stream
    /// row replaces a REST row). A key a run holds is a duplicate unless
    /// the row comes from the stream and the run holds REST rows: then it is
    /// kept in memory and the merge at sealing decides.
    pub fn insert(&mut self, row: Row) -> Inserted {
        let key = row.key();
        if self.runs_upto.is_some_and(|upto| key <= upto) {
            let holder = self.runs.iter().find(|run| {
                let at = run.spans.partition_point(|span| span.last.id < key);
                run.spans.get(at).is_some_and(|span| span.first.id <= key)
            });
            if let Some(run) = holder {
                if row.source() == Source::Rest || run.n_rest == 0 {
                    return Inserted::Duplicate;
                }
            }
        }
        self.memory.insert(row)
    }

    /// Rows held, in memory and spilled (a key in two places counted twice
    /// until the merge; only a stream row over a spilled REST row does that).
    pub fn len(&self) -> usize {
        self.memory.len() + self.runs.iter().map(|run| run.n_rows).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any rows were spilled out of memory.
    pub fn has_runs(&self) -> bool {
        !self.runs.is_empty()
    }

    /// A run is being written: the hour must wait for it to seal.
    pub fn is_spilling(&self) -> bool {
        self.runs
            .iter()
            .any(|run| matches!(run.rows, RunRows::Writing))
    }

    /// The keys as sorted, merged spans (see [`crate::gaps::IdSpan`]).
    pub fn id_spans(&self) -> Vec<IdSpan> {
        let memory = self.memory.id_spans();
        if self.runs.is_empty() {
            return memory;
        }
        let spilled = self.runs.iter().flat_map(|run| run.spans.iter().copied());
        merge_spans(memory.into_iter().chain(spilled).collect())
    }

    /// The first row's key and time.
    pub fn first_id_at(&self) -> Option<IdAt> {
        self.runs
            .iter()
            .filter_map(|run| run.spans.first().map(|span| span.first))
            .chain(self.memory.first_id_at())
            .min_by_key(|at| at.id)
    }

    /// The last row's key and time.
    pub fn last_id_at(&self) -> Option<IdAt> {
        self.runs
            .iter()
            .filter_map(|run| run.spans.last().map(|span| span.last))
            .chain(self.memory.last_id_at())
            .max_by_key(|at| at.id)
    }

    /// The last row's key.
    pub fn last_key(&self) -> Option<i64> {
        self.memory.last_key().max(self.runs_upto)
    }

    /// The earliest and latest trade time of the rows.
    pub fn time_bounds(&self) -> Option<(TimeUs, TimeUs)> {
        let memory = self
            .memory
            .id_ats()
            .map(|at| at.time)
            .minmax()
            .into_option();
        self.runs
            .iter()
            .filter_map(|run| run.times)
            .chain(memory)
            .reduce(|(low, high), (from, to)| (low.min(from), high.max(to)))
    }

    /// The rows in memory (all of them when nothing was spilled).
    pub fn in_memory(&self) -> &HeldRows {
        &self.memory
    }

    /// Bytes of heap the rows kept in memory take (not the runs being
    /// written: see [`HourRows::writing_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.memory.heap_bytes()
            + self
                .runs
                .iter()
                .map(|run| match &run.rows {
                    RunRows::Held(rows) => rows.heap_bytes(),
                    RunRows::Writing | RunRows::File { .. } => 0,
                })
                .sum::<usize>()
    }

    /// Bytes of heap the runs being written still take (freed once on disk).
    pub fn writing_bytes(&self) -> usize {
        self.runs
            .iter()
            .filter(|run| matches!(run.rows, RunRows::Writing))
            .map(|run| run.bytes)
            .sum()
    }

    /// Bytes the next spill would free: the rows in memory.
    pub fn spillable_bytes(&self) -> usize {
        match self.kind() {
            // A kline hour holds at most 3,600 rows: never worth a file.
            StreamKind::Kline(_) => 0,
            StreamKind::Trade | StreamKind::AggTrade => self.memory.heap_bytes(),
        }
    }

    /// Takes the rows in memory out as run `run_id`, for the runtime to
    /// write; the hour keeps their summary.
    pub fn spill(&mut self, run_id: u64) -> Option<SpillJob> {
        if self.memory.is_empty() || self.spillable_bytes() == 0 {
            return None;
        }
        let kind = self.kind();
        let rows = std::mem::replace(&mut self.memory, HeldRows::new(kind));
        let (spans, times) = rows.spans_and_times();
        self.runs_upto = self.runs_upto.max(rows.last_key());
        self.runs.push(SpilledRun {
            id: run_id,
            spans,
            n_rows: rows.len(),
            n_rest: rows.n_rest(),
            times,
            bytes: rows.heap_bytes(),
            rows: RunRows::Writing,
        });
        Some(SpillJob { run_id, rows })
    }

    /// Run `run_id` was written to `path`, or failed and its rows come back
    /// to stay in memory. False when the hour holds no such run.
    pub fn spill_done(&mut self, run_id: u64, written: Result<PathBuf, HeldRows>) -> bool {
        let Some(run) = self.runs.iter_mut().find(|run| run.id == run_id) else {
            return false;
        };
        run.rows = match written {
            Ok(path) => RunRows::File {
                path,
                n_rows: run.n_rows,
            },
            Err(rows) => RunRows::Held(rows),
        };
        true
    }

    /// The runs (oldest first) and the rows in memory, for the seal.
    pub fn into_parts(self) -> (Vec<RunRows>, HeldRows) {
        let runs = self.runs.into_iter().map(|run| run.rows).collect();
        (runs, self.memory)
    }

    /// Every row, merged (tests: runs on disk are not read here).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<Row> {
        let sources: Vec<Box<dyn Iterator<Item = Row> + '_>> = self
            .runs
            .iter()
            .map(|run| match &run.rows {
                RunRows::Held(rows) => rows.rows(),
                RunRows::Writing | RunRows::File { .. } => {
                    panic!("to_vec reads only rows in memory")
                }
            })
            .collect();
        self.merged(sources).collect()
    }

    /// The hour's rows in key order under the merge rule: `runs` are the
    /// rows of its runs (as [`HourRows::runs`] lists them, oldest first),
    /// merged with those in memory. Spilled as they almost always arrive,
    /// in key order, each source's keys lie above the one's before it and
    /// the sources are read one after another, without a merge.
    pub fn merged<'a>(
        &'a self,
        mut runs: Vec<Box<dyn Iterator<Item = Row> + 'a>>,
    ) -> Box<dyn Iterator<Item = Row> + 'a> {
        runs.push(self.memory.rows());
        if self.sources_ascend() {
            Box::new(runs.into_iter().flatten())
        } else {
            Box::new(merged_rows(runs))
        }
    }

    /// Whether every run's keys, and then those in memory, lie above every
    /// key of the sources before them: no key is in two.
    pub fn sources_ascend(&self) -> bool {
        let runs = self
            .runs
            .iter()
            .filter_map(|run| Some((run.spans.first()?.first.id, run.spans.last()?.last.id)));
        let memory = self
            .memory
            .first_id_at()
            .zip(self.memory.last_key())
            .map(|(first, last)| (first.id, last));
        let mut upto: Option<i64> = None;
        for (first, last) in runs.chain(memory) {
            if upto.is_some_and(|upto| first <= upto) {
                return false;
            }
            upto = Some(last);
        }
        true
    }

    /// Where each run's rows are, oldest first.
    pub fn runs(&self) -> impl Iterator<Item = &RunRows> {
        self.runs.iter().map(|run| &run.rows)
    }

    /// The files of the runs on disk, to remove once the hour is sealed.
    pub fn run_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.runs.iter().filter_map(|run| match &run.rows {
            RunRows::File { path, .. } => Some(path),
            RunRows::Writing | RunRows::Held(_) => None,
        })
    }
}

/// Rows of several sources, each sorted and unique by key and listed
/// oldest first, merged into one sorted sequence unique by key under the
/// merge rule of [`crate::seal::insert_row`]: of the rows of one key the
/// first stream row wins, else the first.
#[allow(
    clippy::result_large_err,
    reason = "itertools' coalesce hands the two rows back as its Err"
)]
pub fn merged_rows<'a>(
    sources: Vec<Box<dyn Iterator<Item = Row> + 'a>>,
) -> impl Iterator<Item = Row> + 'a {
    sources
        .into_iter()
        .enumerate()
        .map(|(order, rows)| rows.map(move |row| (row.key(), order, row)))
        .kmerge_by(|left, right| (left.0, left.1) < (right.0, right.1))
        .coalesce(|kept, next| {
            if kept.0 != next.0 {
                return Err((kept, next));
            }
            let replaced = kept.2.source() == Source::Rest && next.2.source() == Source::Ws;
            Ok(if replaced { next } else { kept })
        })
        .map(|(_, _, row)| row)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Decimal8, TradeRow};
    use crate::gaps::id_spans;
    use crate::seal::insert_row;

    fn trade(id: i64, variant: u8, rest: bool) -> Row {
        Row::Trade(TradeRow {
            trade_id: id,
            price: Decimal8::from_scaled(i128::from(variant) * 100_000_000 + 1),
            quantity: Decimal8::from_scaled(1),
            trade_time: 1_700_000_000_000_000 + id * 1_000 + i64::from(variant),
            is_buyer_maker: variant.is_multiple_of(2),
            is_best_match: Some(true),
            trade_type: None,
            event_time: None,
            recv_time: None,
            source: if rest { Source::Rest } else { Source::Ws },
        })
    }

    /// The rows of an hour after spills, merged as the seal merges them.
    fn sealed(hour: HourRows) -> Vec<Row> {
        hour.to_vec()
    }

    proptest! {
        #[test]
        fn spilled_at_any_moment_an_hour_seals_what_one_map_would_hold(
            mut arrivals in proptest::collection::vec((0i64..300, 0u8..4, any::<bool>()), 1..400),
            spill_after in proptest::collection::vec(0usize..400, 0..6),
            in_key_order in any::<bool>(),
        ) {
            // Any order of arrival, duplicates, stream and REST rows; spilled
            // at any moments: each key once, sorted, with exactly the row the
            // merge rule keeps, and the spans of the keys that arrived. In
            // key order (as rows almost always arrive) the runs are read one
            // after another, without a merge, unless a key is in two.
            if in_key_order {
                arrivals.sort_by_key(|(id, _, _)| *id);
            }
            let mut model = BTreeMap::new();
            let mut hour = HourRows::new(StreamKind::Trade);
            let mut run_id = 0;
            for (index, (id, variant, rest)) in arrivals.iter().enumerate() {
                let row = trade(*id, *variant, *rest);
                let expected = insert_row(&mut model, row.clone());
                let inserted = hour.insert(row);
                if inserted == Inserted::Duplicate {
                    // Never drops a row the merge rule would keep.
                    prop_assert_eq!(expected, Inserted::Duplicate);
                }
                if spill_after.contains(&index) {
                    run_id += 1;
                    if let Some(job) = hour.spill(run_id) {
                        prop_assert!(hour.is_spilling());
                        prop_assert!(hour.spill_done(job.run_id, Err(job.rows)));
                    }
                }
            }
            prop_assert!(!hour.is_spilling());
            let keys: Vec<IdAt> = model.values().map(|row| IdAt { id: row.key(), time: row.bucket_time() }).collect();
            prop_assert_eq!(hour.first_id_at().map(|at| at.id), keys.first().map(|at| at.id));
            prop_assert_eq!(hour.last_id_at().map(|at| at.id), keys.last().map(|at| at.id));
            let spans: Vec<(i64, i64)> = hour.id_spans().iter().map(|span| (span.first.id, span.last.id)).collect();
            let expected_spans: Vec<(i64, i64)> = id_spans(&keys).iter().map(|span| (span.first.id, span.last.id)).collect();
            prop_assert_eq!(spans, expected_spans);
            let times: Vec<TimeUs> = keys.iter().map(|at| at.time).collect();
            let bounds = hour.time_bounds().expect("rows");
            prop_assert!(bounds.0 <= *times.iter().min().expect("rows"));
            prop_assert!(bounds.1 >= *times.iter().max().expect("rows"));
            prop_assert_eq!(sealed(hour), model.into_values().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_stream_row_over_a_spilled_rest_row_wins_at_the_merge() {
        let mut hour = HourRows::new(StreamKind::Trade);
        hour.insert(trade(1, 0, true));
        hour.insert(trade(2, 0, false));
        let job = hour.spill(7).expect("rows to spill");
        assert_eq!(job.rows.len(), 2);
        assert!(hour.spill_done(7, Err(job.rows)));
        assert_eq!(
            hour.insert(trade(1, 1, true)),
            Inserted::Duplicate,
            "REST never replaces"
        );
        // The run holds a REST row: stream rows over it wait for the merge.
        assert_eq!(hour.insert(trade(1, 2, false)), Inserted::New);
        assert_eq!(hour.insert(trade(2, 1, false)), Inserted::New);
        let rows = sealed(hour);
        assert_eq!(
            rows,
            vec![trade(1, 2, false), trade(2, 0, false)],
            "the first stream row of each key"
        );

        let mut stream_only = HourRows::new(StreamKind::Trade);
        stream_only.insert(trade(4, 0, false));
        let job = stream_only.spill(8).expect("rows to spill");
        assert!(stream_only.spill_done(8, Err(job.rows)));
        assert_eq!(
            stream_only.insert(trade(4, 1, false)),
            Inserted::Duplicate,
            "dropped at once"
        );
        assert_eq!(stream_only.len(), 1);
    }

    #[test]
    fn klines_are_never_spilled_and_an_empty_hour_has_nothing_to_spill() {
        let mut klines = HourRows::new(StreamKind::Kline(
            crate::domain::KlineInterval::from_binance_name("1m").expect("valid"),
        ));
        assert!(klines.spill(1).is_none());
        let mut trades = HourRows::new(StreamKind::Trade);
        assert!(trades.spill(1).is_none());
        trades.insert(trade(5, 0, false));
        assert!(trades.spill(2).is_some());
        assert!(trades.spill(3).is_none(), "nothing new in memory");
        assert!(trades.is_spilling());
        assert!(
            trades.writing_bytes() > 0,
            "its rows are in memory until written"
        );
        assert!(!trades.spill_done(9, Ok(PathBuf::from("x"))), "no such run");
        assert!(trades.spill_done(2, Ok(PathBuf::from("run-2"))));
        assert_eq!(
            trades.run_files().collect::<Vec<_>>(),
            vec![&PathBuf::from("run-2")]
        );
        assert_eq!(trades.heap_bytes(), trades.in_memory().heap_bytes());
        assert_eq!(trades.writing_bytes(), 0);
    }
}
