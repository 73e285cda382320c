//! The runtime's side of an orderly stop's files (`State::stop_seals`,
//! `hour/stop.rs`): written one at a time after the WAL is closed, until
//! a little before the shutdown deadline.

use tokio::time::Instant;
use tracing::{info, warn};

use super::{execute_seal, Runtime, SealOutcome};

impl Runtime {
    /// Writes a file for every hour not finished (`State::stop_seals`),
    /// one at a time, until `until`: every hour watched has a file while
    /// the recorder is stopped. Best effort: an hour left without one, or
    /// whose write fails, waits in the WAL for the next run, as before.
    pub(super) async fn write_stop_seals(&mut self, until: Instant) {
        let jobs = self.state.stop_seals(self.now_ms());
        let n_jobs = jobs.len();
        let mut n_written = 0;
        for job in jobs {
            if Instant::now() >= until {
                break;
            }
            let (key, hour) = (job.key.clone(), job.hour);
            let data_dir = self.config.data_dir.clone();
            let write = tokio::task::spawn_blocking(move || execute_seal(&data_dir, None, job));
            match tokio::time::timeout_at(until, write).await {
                Ok(Ok(SealOutcome { result: Ok(_), .. })) => n_written += 1,
                Ok(Ok(SealOutcome {
                    result: Err(failure),
                    ..
                })) => {
                    warn!(%key, %hour, error = %failure.error, "file of an unfinished hour not written at the stop; the hour waits in the WAL");
                }
                Ok(Err(join_error)) => {
                    warn!(%key, %hour, error = %join_error, "file of an unfinished hour not written at the stop; the hour waits in the WAL");
                }
                Err(_) => break,
            }
        }
        if n_written < n_jobs {
            warn!(n_written, n_left = n_jobs - n_written, "stop deadline near: files of unfinished hours left to the next run (their rows are in the WAL)");
        } else {
            info!(
                n_written,
                "unfinished hours written up to the stop (stopped_at); the next run finishes them"
            );
        }
    }
}
