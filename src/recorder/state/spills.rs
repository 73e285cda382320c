//! The state's side of the memory budget, with no I/O: past
//! `memory.max_held_mb`, [`State::take_spills`] takes the biggest hours'
//! rows out of memory as runs for the runtime to write (`spill_runs.rs`),
//! and [`State::spill_done`] gives each write's outcome back to its hour
//! (`spill.rs` keeps one hour's runs). A child of `state.rs`, so it reads
//! `State`'s fields (the budget, the rows inserted since the last measure,
//! the next run's id) without making them any less private.

use std::path::PathBuf;

use tracing::debug;

use crate::domain::{Hour, StreamKey};
use crate::metrics::Counters;
use crate::recorder::held::HeldRows;
use crate::recorder::spill::SpillJob;

use super::State;

/// Rows inserted between two measures of the rows held against the
/// memory budget (at 56 bytes a row, 224 KiB of growth).
const BUDGET_CHECK_ROWS: usize = 4_096;

/// The smallest hour worth a run of its own (a chunk of packed rows).
const MIN_RUN_BYTES: usize = 64 * 1024;

/// One run to write: the rows of `key`'s `hour` spilled out of memory.
#[derive(Debug)]
pub struct Spill {
    pub key: StreamKey,
    pub hour: Hour,
    pub run: SpillJob,
}

impl State {
    /// Runs to spill when the rows held in memory pass the budget: the
    /// biggest hours' rows, until what stays is at most half the budget
    /// (so spills come in few, large runs). The rows of files being
    /// written count too: they are held until the file is on disk, and
    /// only the open hours can make room. Measured at most every
    /// [`BUDGET_CHECK_ROWS`] rows inserted: a walk of the open hours.
    pub fn take_spills(&mut self) -> Vec<Spill> {
        if self.rows_since_budget_check < BUDGET_CHECK_ROWS {
            return Vec::new();
        }
        self.rows_since_budget_check = 0;
        // `held`: what stays in memory (the open hours' rows and those of
        // files being written), which the budget bounds; `writing`:
        // runs on their way to disk, in memory until written (the gauge
        // counts both: it is what the process holds).
        let (mut held, mut writing) = (0usize, 0usize);
        let mut candidates = Vec::new();
        for (key, stream) in &self.streams {
            held += stream.writing_held_bytes();
            for (hour, open_hour) in stream.open_rows() {
                held += open_hour.rows.heap_bytes();
                writing += open_hour.rows.writing_bytes();
                let spillable = open_hour.rows.spillable_bytes();
                if spillable >= MIN_RUN_BYTES {
                    candidates.push((spillable, key.clone(), hour));
                }
            }
        }
        // From a spill until a quarter of the budget is held: the spill
        // leaves half of it, so a bare half would let a second seal start
        // right after each spill.
        if held > self.max_held_bytes {
            self.memory_pressed = true;
        } else if held <= self.max_held_bytes / 4 {
            self.memory_pressed = false;
        }
        if held <= self.max_held_bytes {
            Counters::set(&self.counters.held_bytes, (held + writing) as u64);
            return Vec::new();
        }
        candidates.sort_unstable_by_key(|candidate| std::cmp::Reverse(candidate.0));
        let mut spills = Vec::new();
        for (bytes, key, hour) in candidates {
            if held <= self.max_held_bytes / 2 {
                break;
            }
            let Some(open_hour) = self
                .streams
                .get_mut(&key)
                .and_then(|stream| stream.rows_mut(hour))
            else {
                continue;
            };
            self.next_run_id += 1;
            if let Some(run) = open_hour.rows.spill(self.next_run_id) {
                held = held.saturating_sub(bytes);
                writing += bytes;
                Counters::add(&self.counters.runs_spilled, 1);
                Counters::add(&self.counters.rows_spilled, run.rows.len() as u64);
                debug!(%key, %hour, run_id = run.run_id, n_rows = run.rows.len(), "rows held past the memory budget; spilled to a run");
                spills.push(Spill { key, hour, run });
            }
        }
        Counters::set(&self.counters.held_bytes, (held + writing) as u64);
        spills
    }

    /// The rows held passed the memory budget at a measure and have not
    /// fallen to a quarter of it since: the runtime then runs one seal at
    /// a time, not `seal.max_concurrent`.
    /// A seal's own working memory (zstd contexts and pages, about 12 MB
    /// for a busy trade hour) is not in the budget, so under pressure the
    /// process holds the budget and one seal's, not two.
    pub fn memory_pressed(&self) -> bool {
        self.memory_pressed
    }

    /// A spilled run was written to `path`, or its write failed and its
    /// rows stay in memory. Returns the path when no hour holds the run
    /// any more (the file is the runtime's to remove).
    pub fn spill_done(
        &mut self,
        key: &StreamKey,
        hour: Hour,
        run_id: u64,
        written: Result<PathBuf, HeldRows>,
    ) -> Option<PathBuf> {
        // The hour waited on the run to seal.
        self.wake.dirty = true;
        if written.is_err() {
            Counters::add(&self.counters.spill_failures, 1);
        }
        let open_hour = self
            .streams
            .get_mut(key)
            .and_then(|stream| stream.rows_mut(hour));
        match open_hour {
            Some(open_hour) => {
                let path = written.as_ref().ok().cloned();
                if open_hour.rows.spill_done(run_id, written) {
                    None
                } else {
                    path
                }
            }
            None => written.ok(),
        }
    }
}
