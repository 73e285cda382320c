//! `binance-recorder backfill`: what the daemon does for declared holes,
//! for a dataset on disk while no daemon holds it. Every sealed file (of
//! the configured streams, optionally within an hour range) whose
//! `unfilled` metadata lists holes REST may still fill gets a fill round;
//! what comes back is merged in and the file is replaced atomically with
//! its revised list. It takes the dataset's lock, so it refuses to run
//! beside a daemon, and writes no WAL: a crash loses only its own progress.

use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use crate::binance::rest::{RestClient, RestOptions, RetryPolicy};
use crate::config::Config;
use crate::domain::{Hour, StreamKey};
use crate::gaps::Hole;
use crate::metrics::Counters;
use crate::parquet_out;
use crate::recorder::state::{revise_declared, FillJob, SealJob, REASON_NOT_SERVED};
use crate::recorder::{execute_seal, fill, SealResult};

/// What a backfill run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackfillSummary {
    /// Files that declared holes REST may fill.
    pub n_files_with_holes: usize,
    /// Files replaced with more rows or a shorter hole list.
    pub n_files_resealed: usize,
    /// Holes still declared after the run.
    pub n_holes_left: usize,
}

/// Runs one backfill pass over the dataset of `config`, for sealed hours
/// in `[from, to]` (all when `None`).
pub async fn backfill(
    config: &Config,
    from: Option<Hour>,
    to: Option<Hour>,
    counters: Arc<Counters>,
) -> anyhow::Result<BackfillSummary> {
    config.check_directories()?;
    let _data_lock = crate::lock::lock_directory(&config.data_dir)?;
    crate::binance::ensure_crypto_provider();
    let mut summary = BackfillSummary::default();
    for market_config in &config.markets {
        let options = RestOptions {
            request_timeout: config.fill.request_timeout,
            weight_share: config.fill.weight_share,
            counters: counters.clone(),
            ..RestOptions::default()
        };
        let rest = RestClient::with_options(market_config.market, &market_config.rest_url, options);
        let retry = RetryPolicy {
            max_attempts: config.fill.max_attempts,
            ..RetryPolicy::default()
        };
        for symbol in &market_config.symbols {
            for kind in &market_config.streams {
                let key = StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                };
                let hours = parquet_out::sealed_hours(&config.data_dir, &key);
                for hour in hours.into_iter().filter(|hour| {
                    from.is_none_or(|from| *hour >= from) && to.is_none_or(|to| *hour <= to)
                }) {
                    backfill_file(config, &rest, &retry, &key, hour, &counters, &mut summary)
                        .await?;
                }
            }
        }
    }
    Ok(summary)
}

async fn backfill_file(
    config: &Config,
    rest: &RestClient,
    retry: &RetryPolicy,
    key: &StreamKey,
    hour: Hour,
    counters: &Counters,
    summary: &mut BackfillSummary,
) -> anyhow::Result<()> {
    let path = parquet_out::hour_file_path(&config.data_dir, key, hour);
    let sealed = match parquet_out::read_summary(&path) {
        Ok(sealed) => sealed,
        Err(error) => {
            warn!(path = %path.display(), %error, "sealed file unreadable; skipped");
            return Ok(());
        }
    };
    let holes: Vec<Hole> = sealed
        .unfilled
        .iter()
        .filter(|range| range.reason != REASON_NOT_SERVED)
        .filter_map(|range| Hole::from_unfilled(key.kind, range))
        .collect();
    if holes.is_empty() {
        summary.n_holes_left += sealed.unfilled.len();
        return Ok(());
    }
    summary.n_files_with_holes += 1;
    let job = FillJob {
        key: key.clone(),
        hour,
        holes,
        closed_before: hour.end() + crate::domain::MICROS_PER_DAY * 7,
        declared: true,
        // No daemon seals behind a backfill: it takes the time it needs.
        deadline: None,
    };
    let report = fill::run_fill(rest.clone(), job, retry.clone()).await;
    let revised = revise_declared(
        key.kind,
        hour,
        &sealed.unfilled,
        &report.settled,
        &report.rows,
        report.failure.as_deref(),
    );
    summary.n_holes_left += revised.len();
    let n_filled = sealed.unfilled.len().saturating_sub(revised.len());
    let whole_hour = revised.is_empty();
    let seal_job = SealJob {
        key: key.clone(),
        hour,
        rows: report.rows,
        first_segment: None,
        // Merged with the file's own coverage; a file with no hole left
        // vouches for its whole hour.
        coverage_from: if whole_hour { hour.start() } else { hour.end() },
        coverage_to: if whole_hour { hour.end() } else { hour.start() },
        clock_offset_us: None,
        unfilled: Some(revised),
        late: true,
    };
    let data_dir = config.data_dir.clone();
    let outcome = tokio::task::spawn_blocking(move || execute_seal(&data_dir, None, seal_job))
        .await
        .context("seal task failed")?;
    match outcome.result {
        Ok(SealResult::Written { path, n_rows, .. }) => {
            summary.n_files_resealed += 1;
            Counters::add(&counters.files_resealed, 1);
            Counters::add(&counters.holes_filled_late, n_filled as u64);
            info!(path = %path.display(), n_rows, n_filled, "backfilled");
        }
        Ok(SealResult::Unchanged) => {}
        Err(failure) => anyhow::bail!("cannot reseal {}: {}", path.display(), failure.message),
    }
    if let Some(failure) = report.failure {
        warn!(path = %path.display(), %failure, "holes left declared");
    }
    Ok(())
}
