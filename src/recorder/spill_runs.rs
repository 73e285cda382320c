//! The runtime's side of the memory budget: the runs the state spills
//! (`spill.rs`, `State::take_spills`) written on blocking threads beside
//! the WAL, and each write's outcome given back to the state. During the
//! replay at start the same runs are written in line.

use std::path::{Path, PathBuf};

use tokio::task::JoinError;
use tracing::{error, warn};

use crate::domain::{Hour, StreamKey};
use crate::parquet_out::run_file;

use super::held::HeldRows;
use super::seal_job::{unwinding, JobError};
use super::state::{Spill, State};
use super::Runtime;

/// A spilled run's write, finished: the file, or the rows back with why.
pub(crate) struct SpillWritten {
    key: StreamKey,
    hour: Hour,
    run_id: u64,
    written: Result<PathBuf, (HeldRows, JobError)>,
}

/// Writes one run (on a blocking thread); a failure or a panic hands the
/// rows back to stay in memory.
fn write_spill(wal_dir: &Path, spill: Spill) -> SpillWritten {
    let Spill { key, hour, run } = spill;
    let path = run_file::run_path(wal_dir, run.run_id);
    let written = unwinding("writing a spilled run", || {
        run_file::write_run(&path, run.kind, &run.rows)
    });
    let written = match written.and_then(|written| written.map_err(JobError::from)) {
        Ok(()) => Ok(path),
        Err(error) => {
            // A partial file is never read: its run stays in memory.
            let _ = std::fs::remove_file(&path);
            Err((run.rows, error))
        }
    };
    SpillWritten {
        key,
        hour,
        run_id: run.run_id,
        written,
    }
}

/// Gives a write's outcome to the state; a file no hour holds any more is
/// removed.
fn apply_spill(state: &mut State, done: SpillWritten) {
    let written = match done.written {
        Ok(path) => Ok(path),
        Err((rows, error)) => {
            error!(key = %done.key, hour = %done.hour, run_id = done.run_id, %error, "cannot spill rows to disk; they stay in memory");
            Err(rows)
        }
    };
    if let Some(orphan) = state.spill_done(&done.key, done.hour, done.run_id, written) {
        if let Err(error) = std::fs::remove_file(&orphan) {
            warn!(path = %orphan.display(), %error, "cannot remove a spilled run no hour holds; removed at the next start");
        }
    }
}

/// During the replay at start (already on a blocking thread): the runs
/// the state asks for, written in line.
pub(super) fn spill_in_line(wal_dir: &Path, state: &mut State) {
    for spill in state.take_spills() {
        let done = write_spill(wal_dir, spill);
        apply_spill(state, done);
    }
}

impl Runtime {
    /// Starts writing the runs the state asks for (after each batch).
    pub(super) fn start_spills(&mut self) {
        for spill in self.state.take_spills() {
            let wal_dir = self.config.wal_dir.clone();
            self.spills
                .spawn_blocking(move || write_spill(&wal_dir, spill));
        }
    }

    pub(super) fn finish_spill(&mut self, joined: Result<SpillWritten, JoinError>) {
        match joined {
            Ok(done) => apply_spill(&mut self.state, done),
            // Unreachable in practice: the write runs under catch_unwind.
            // Its hour waits for the run; the next start replays it.
            Err(error) => {
                error!(%error, "spill task failed outside its guarded call; its hour is sealed at the next start")
            }
        }
    }
}
