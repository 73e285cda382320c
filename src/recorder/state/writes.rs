//! The state's side of the files being written, with no I/O: a seal's
//! outcome given back to its hour ([`State::seal_finished`],
//! [`State::seal_failed`]). A child of `state.rs`, so it reads `State`'s
//! fields without making them any less private.

use crate::domain::{Hour, StreamKey};
use crate::recorder::jobs::SealJob;

use super::State;

impl State {
    /// A seal finished: the hour's rows are on disk, its WAL pin goes.
    pub fn seal_finished(&mut self, job_key: &StreamKey, hour: Hour) {
        self.wake.dirty = true;
        if let Some(stream) = self.streams.get_mut(job_key) {
            if let Some(state) = stream.hours.get_mut(&hour) {
                state.writing = None;
            }
            stream.drop_if_empty(hour);
        }
        self.prune_due = true;
    }

    /// A seal failed: the same job (rows, holes, coverage) is planned again
    /// and the hour stays in flight meanwhile, pinning its WAL segments.
    pub fn seal_failed(&mut self, job: SealJob) {
        self.wake.dirty = true;
        if let Some(stream) = self.streams.get_mut(&job.key) {
            stream.hour_mut(job.hour).write_failed(job);
        }
    }
}
