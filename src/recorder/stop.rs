//! The runtime's orderly stop, after the connections were told to close:
//! fills dropped, every frame handed over made durable, the sessions'
//! stop checkpoints, the seals in flight finished, the WAL closed; then
//! the files of the hours not finished (`State::stop_seals`,
//! `hour/stop.rs`), one at a time, until a little before the shutdown
//! deadline.

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::batch::wait_batch;
use super::records::checkpoint_record;
use super::{execute_seal, Checkpoint, Runtime, SealOutcome};
use crate::binance::ws::Inbound;
use crate::metrics::Counters;

impl Runtime {
    /// The orderly stop after the connections were told to close.
    pub(super) async fn stop(
        mut self,
        receiver: &mut mpsc::Receiver<Inbound>,
        tasks: &TaskTracker,
        stop_seals_until: Instant,
    ) -> anyhow::Result<()> {
        self.service.stopping();
        // Fill rounds in flight are dropped: nothing of theirs was
        // acknowledged, and the holes are found again at the next start.
        self.fills.shutdown().await;
        let counters = self.counters.snapshot();
        info!(
            rest_calls = counters.rest_calls,
            rest_weight_used = counters.rest_weight_used,
            fill_rounds = counters.fill_rounds,
            fill_answers_from_agg_trades = counters.fill_answers_from_agg_trades,
            holes_declared = counters.holes_declared,
            "REST used since start"
        );
        if let Some(check) = self.symbol_check.take() {
            check.abort();
        }
        // Every frame a connection already handed over is made durable.
        let drain = async {
            while let Some(input) = receiver.recv().await {
                Counters::add(&self.counters.frames_received, input.n_frames() as u64);
                self.take_input(input);
            }
        };
        tokio::join!(drain, tasks.wait());
        if self.wal_lost {
            return Err(self
                .fatal
                .take()
                .unwrap_or_else(|| anyhow::anyhow!("WAL lost")));
        }
        // The batch being written, and the one its finish may start (the
        // next starts before the last one's rows are applied), end first.
        while self.batch.is_some() {
            let outcome = wait_batch(&mut self.batch)
                .await
                .context("WAL batch task failed")?;
            self.finish_batch(outcome).await;
        }
        for market_config in &self.config.markets {
            let market = market_config.market;
            let exchange_time = self.state.exchange_time(market);
            self.state.end_session(market, exchange_time);
            self.pending
                .push(checkpoint_record(&Checkpoint::SessionStop {
                    market: market.name().into(),
                    exchange_time,
                }));
        }
        self.pending.due_at_once();
        while !self.pending.is_empty() || self.batch.is_some() {
            self.maybe_start_batch();
            let outcome = wait_batch(&mut self.batch)
                .await
                .context("WAL batch task failed")?;
            self.finish_batch(outcome).await;
        }
        info!(
            n_seals = self.seals.len(),
            n_unsealed_rows = self.state.n_unsealed_rows(),
            "WAL synced; waiting for seals in flight"
        );
        while let Some(joined) = self.seals.join_next().await {
            self.finish_seal(joined);
        }
        if let Some(wal) = self.wal.take() {
            tokio::task::spawn_blocking(move || wal.close())
                .await
                .context("WAL close task failed")??;
        }
        if self.fatal.is_none() {
            self.write_stop_seals(stop_seals_until).await;
        }
        match self.fatal.take() {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }

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
