//! The runtime's side of the memory budget: the runs the state spills
//! (`spill.rs`, `State::take_spills`) written on blocking threads beside
//! the WAL, and each write's outcome given back to the state. During the
//! replay at start the same runs are written on a thread of their own
//! beside it ([`ReplaySpills`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};

use anyhow::Context;

use tokio::task::JoinError;
use tracing::{error, warn};

use super::run_file;
use crate::domain::{Hour, StreamKey};
use crate::metrics::{thread_cpu, Work};

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
        run_file::write_run(&path, &run.rows)
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

/// During the replay at start: the runs the state asks for, written on a
/// thread of their own so that the state goes on applying records while
/// a run is on its way to disk (in line, the replay's reader filled its
/// lead and waited at each spill). One run is written and at most one
/// waits, so the runs in memory stay within the budget's half twice over.
pub(super) struct ReplaySpills<'scope> {
    /// `None` once finished.
    sender: Option<mpsc::SyncSender<Spill>>,
    done: mpsc::Receiver<SpillWritten>,
    thread: ScopedJoinHandle<'scope, ()>,
    wal_dir: &'scope Path,
}

impl<'scope> ReplaySpills<'scope> {
    pub(super) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        wal_dir: &'env Path,
    ) -> anyhow::Result<Self> {
        let (sender, spills) = mpsc::sync_channel::<Spill>(1);
        let (written, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wal-replay-spill".to_owned())
            .spawn_scoped(scope, move || {
                for spill in spills {
                    if written.send(write_spill(wal_dir, spill)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the WAL replay's spill thread")?;
        Ok(ReplaySpills {
            sender: Some(sender),
            done,
            thread,
            wal_dir,
        })
    }

    /// Gives the state the runs written so far, and hands the writer the
    /// runs the state asks for now (waiting while one is already queued).
    pub(super) fn spill(&mut self, state: &mut State) {
        for done in self.done.try_iter() {
            apply_spill(state, done);
        }
        for spill in state.take_spills() {
            // The thread only stops when its sender is dropped; should it
            // be gone all the same, the run is written here.
            let unsent = match &self.sender {
                Some(sender) => sender.send(spill).err().map(|error| error.0),
                None => Some(spill),
            };
            if let Some(spill) = unsent {
                let done = write_spill(self.wal_dir, spill);
                apply_spill(state, done);
            }
        }
    }

    /// Waits for every run handed over and gives the state their outcomes.
    pub(super) fn finish(mut self, state: &mut State) {
        self.sender = None;
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        for done in self.done.try_iter() {
            apply_spill(state, done);
        }
    }
}

impl Runtime {
    /// Starts writing the runs the state asks for (after each batch).
    pub(super) fn start_spills(&mut self) {
        for spill in self.state.take_spills() {
            let wal_dir = self.config.wal_dir.clone();
            let counters = self.counters.clone();
            self.spills.spawn_blocking(move || {
                let cpu = thread_cpu();
                let written = write_spill(&wal_dir, spill);
                counters.charge_cpu(Work::Spill, cpu);
                written
            });
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
