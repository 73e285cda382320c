//! What the recorder tells the world about itself, apart from the data:
//! systemd (readiness, status, keep-alives), the summary log line, the
//! `/health` and `/status` inputs and the per-stream metrics. Called by the
//! recorder loop (`recorder/mod.rs`); reads its fields, changes none of the
//! recording.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::Runtime;
use crate::binance::streams::stream_name;
use crate::config::Config;
use crate::domain::{Market, StreamKey, TimeUs};
use crate::metrics::{Counters, GaugeF64, StreamLabels};
use crate::service::{StatusFigures, WalProgress};
use prometheus_client::metrics::counter::Counter;

/// A summary log line this often, so an operator reading only the journal
/// sees progress.
const SUMMARY_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Runtime {
    /// Stream links open now, every market.
    pub(super) fn n_links_up(&self) -> u64 {
        self.open_links.values().map(|links| links.get()).sum()
    }

    /// Readiness, status and keep-alives for systemd (nothing outside it).
    pub(super) fn tell_service(&mut self) {
        let wal = WalProgress {
            idle: self.pending.is_empty() && self.batch.is_none(),
            last_commit: self.last_commit,
        };
        let n_links_up = self.n_links_up();
        let figures = || {
            let counters = self.counters.snapshot();
            StatusFigures {
                n_streams: self
                    .config
                    .markets
                    .iter()
                    .map(|market| market.symbols.len() * market.streams.len())
                    .sum(),
                links_up: n_links_up,
                frames_durable: counters.frames_durable,
                wal_bytes: counters.wal_bytes,
                last_sealed: self.last_sealed,
            }
        };
        self.service.tick(Instant::now(), wal, figures);
        if self.summary_logged_at.elapsed() >= SUMMARY_LOG_INTERVAL {
            self.summary_logged_at = Instant::now();
            let counters = self.counters.snapshot();
            info!(
                links_up = self.n_links_up(),
                frames_durable = counters.frames_durable,
                files_sealed = counters.files_sealed,
                last_sealed = %self.last_sealed.map_or_else(|| "none".to_owned(), |hour| hour.to_string()),
                holes_declared = counters.holes_declared,
                wal_bytes = counters.wal_bytes,
                disconnects = counters.disconnects,
                rest_429 = counters.rest_429,
                "recording"
            );
        }
        let waiting_since = match (self.pending.since(), self.batch_started) {
            (Some(pending), Some(batch)) => Some(pending.min(batch)),
            (pending, batch) => pending.or(batch),
        };
        let links_up: BTreeMap<Market, u64> = self
            .open_links
            .iter()
            .map(|(market, links)| (*market, links.get()))
            .collect();
        Counters::set(&self.counters.links_up, links_up.values().sum());
        // Rows held per stream walk every stream: every 2 s, not per frame.
        let rows_held: Option<BTreeMap<StreamKey, u64>> =
            (self.status_refreshed_at.elapsed() >= Duration::from_secs(2)).then(|| {
                self.state
                    .unsealed_rows_by_stream()
                    .map(|(key, n)| (key.clone(), n as u64))
                    .collect()
            });
        if rows_held.is_some() {
            self.status_refreshed_at = Instant::now();
        }
        if let Some(upload) = &self.upload {
            let newest = self
                .config
                .markets
                .iter()
                .filter_map(|market_config| self.state.exchange_time(market_config.market))
                .max();
            if let Some(newest) = newest {
                upload.exchange_time(newest);
            }
        }
        let wal_bytes = self.counters.wal_bytes.get();
        self.health.update(|inputs| {
            inputs.waiting_since = waiting_since;
            inputs.wal_bytes = wal_bytes;
            if let Some(rows_held) = rows_held {
                inputs.rows_held = rows_held;
            }
            for (market, links) in inputs.links_up.iter_mut() {
                *links = links_up.get(market).copied().unwrap_or(0);
            }
        });
    }

    /// Per-stream metrics and health for the rows of one committed batch:
    /// one update per stream, not per row.
    pub(super) fn observe_streams(&self, seen: &[(StreamKey, u64, TimeUs)]) {
        if seen.is_empty() {
            return;
        }
        let now = Instant::now();
        for (key, n_rows, newest_event) in seen {
            // Only configured streams have handles: the label sets stay bounded.
            if let Some((rows, last_event)) = self.stream_metrics.get(key) {
                rows.inc_by(*n_rows);
                last_event.set(*newest_event as f64 / 1e6);
            }
        }
        self.health.update(|inputs| {
            for (key, _, newest_event) in seen {
                if let Some(last) = inputs.streams.get_mut(key) {
                    *last = Some(now);
                    match inputs.newest_event.get_mut(key) {
                        Some(newest) => *newest = *newest_event,
                        None => {
                            inputs.newest_event.insert(key.clone(), *newest_event);
                        }
                    }
                }
            }
        });
    }
}

/// The per-stream metric handles of every configured stream.
pub(super) fn stream_metrics(
    config: &Config,
    counters: &Counters,
) -> HashMap<StreamKey, (Counter, GaugeF64)> {
    config
        .stream_keys()
        .map(|key| {
            let labels = StreamLabels {
                market: key.market.name().to_owned(),
                stream: stream_name(&key.symbol, key.kind),
            };
            let rows = counters.rows_by_stream.get_or_create(&labels).clone();
            let last_event = counters.last_event_time.get_or_create(&labels).clone();
            (key, (rows, last_event))
        })
        .collect()
}
