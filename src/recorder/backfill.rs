//! `binance-recorder backfill`: what the daemon does for declared holes,
//! for a dataset on disk while no daemon holds it. Every sealed file (of
//! the configured streams, optionally within an hour range) whose
//! `unfilled` metadata lists holes REST may still fill gets a fill round;
//! what comes back is merged in and the file is replaced atomically with
//! its revised list. It takes the dataset's lock, so it refuses to run
//! beside a daemon, and writes no WAL: a crash loses only its own progress.
//!
//! With a hole list (`verify --json`'s `holes`, [`HoleList`]) it fills
//! exactly those holes and leaves every other declared hole alone. A file
//! is replaced only when REST gave rows or settled a hole: a round that
//! failed (REST down) leaves the file as it was and its holes open. The
//! summary lists, per stream-hour, what was filled and what is still open.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use crate::binance::rest::{RestClient, RestOptions, RetryPolicy};
use crate::config::Config;
use crate::domain::{Hour, StreamKey, StreamKind, UnfilledRange};
use crate::gaps::Hole;
use crate::metrics::Counters;
use crate::parquet_out;
use crate::recorder::state::{revise_declared, FillJob, SealJob, REASON_NOT_SERVED};
use crate::recorder::{execute_seal, fill, SealResult};
use crate::verify::report::holes_from_json;
use crate::verify::DeclaredHole;

/// What a backfill run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackfillSummary {
    /// Files that declared holes REST may fill (and that were asked for).
    pub n_files_with_holes: usize,
    /// Files replaced with more rows or a shorter hole list.
    pub n_files_resealed: usize,
    /// Holes still declared after the run, in the files looked at.
    pub n_holes_left: usize,
    /// Of those, holes REST may still fill (the others: the exchange has
    /// no data for them).
    pub n_holes_fillable_left: usize,
    /// Per stream-hour that had holes to fill, in the order done.
    pub hours: Vec<HourOutcome>,
    /// Holes of the list given that no file declares (any more).
    pub not_declared: Vec<DeclaredHole>,
}

impl BackfillSummary {
    /// Holes remain that a later run may fill.
    pub fn holes_remain(&self) -> bool {
        self.n_holes_fillable_left > 0
    }
}

/// What one stream-hour's fill round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourOutcome {
    pub key: StreamKey,
    pub hour: Hour,
    /// Holes asked for.
    pub n_holes_asked: usize,
    /// Rows REST gave (merged; a row the file held already is not new).
    pub n_rows_fetched: usize,
    /// The asked holes still declared after the round.
    pub left: Vec<UnfilledRange>,
    /// Why REST did not answer, when it did not.
    pub failure: Option<String>,
    pub resealed: bool,
}

/// The holes to fill, from `verify --json` (its `holes` list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoleList {
    pub holes: Vec<DeclaredHole>,
}

impl HoleList {
    /// Reads a `verify --json` file.
    pub fn read(path: &Path) -> anyhow::Result<HoleList> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let holes = holes_from_json(&text)
            .map_err(|error| anyhow::anyhow!("{} is not verify's JSON: {error}", path.display()))?;
        Ok(HoleList { holes })
    }

    fn for_file(&self, key: &StreamKey, hour: Hour) -> Vec<&DeclaredHole> {
        let hour_text = hour.to_string();
        self.holes
            .iter()
            .filter(|hole| {
                hole.market == key.market.name()
                    && hole.stream == key.kind.path_name()
                    && hole.symbol == key.symbol.as_str()
                    && hole.hour == hour_text
            })
            .collect()
    }
}

/// The same hole: its bounds, whatever its reason says now.
fn same_hole(a: &UnfilledRange, b: &UnfilledRange) -> bool {
    (a.from, a.to, a.from_time, a.to_time) == (b.from, b.to, b.from_time, b.to_time)
}

/// Runs one backfill pass over the dataset of `config`, for sealed hours
/// in `[from, to]` (all when `None`), and only for the holes of `only`
/// when given. `Err` means it could not run (config, lock, a file it
/// could not replace); holes left are in the summary.
pub async fn backfill(
    config: &Config,
    from: Option<Hour>,
    to: Option<Hour>,
    only: Option<&HoleList>,
    counters: Arc<Counters>,
) -> anyhow::Result<BackfillSummary> {
    config.check_directories()?;
    let _data_lock = crate::lock::lock_directory(&config.data_dir)?;
    crate::binance::ensure_crypto_provider();
    let mut summary = BackfillSummary::default();
    // With a list: its streams, whether configured or not (a market must
    // be, for its REST address); without: the configured streams.
    let mut keys_by_market: Vec<(&crate::config::MarketConfig, Vec<StreamKey>)> = Vec::new();
    for market_config in &config.markets {
        let keys: Vec<StreamKey> = match only {
            Some(list) => {
                let mut keys: Vec<StreamKey> = list
                    .holes
                    .iter()
                    .filter(|hole| hole.market == market_config.market.name())
                    .filter_map(|hole| {
                        Some(StreamKey {
                            market: market_config.market,
                            symbol: crate::domain::Symbol::new(&hole.symbol).ok()?,
                            kind: StreamKind::from_name(&hole.stream)?,
                        })
                    })
                    .collect();
                keys.sort();
                keys.dedup();
                keys
            }
            None => market_config
                .symbols
                .iter()
                .flat_map(|symbol| {
                    market_config.streams.iter().map(|kind| StreamKey {
                        market: market_config.market,
                        symbol: symbol.clone(),
                        kind: *kind,
                    })
                })
                .collect(),
        };
        keys_by_market.push((market_config, keys));
    }
    if let Some(list) = only {
        for hole in &list.holes {
            let configured = config
                .markets
                .iter()
                .any(|market| market.market.name() == hole.market);
            if !configured {
                anyhow::bail!(
                    "the hole list names market {:?}, which the config does not (its REST address is needed)",
                    hole.market
                );
            }
        }
    }
    for (market_config, keys) in keys_by_market {
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
        for key in keys {
            let hours = parquet_out::sealed_hours(&config.data_dir, &key);
            for hour in hours.into_iter().filter(|hour| {
                from.is_none_or(|from| *hour >= from) && to.is_none_or(|to| *hour <= to)
            }) {
                let wanted = only.map(|list| list.for_file(&key, hour));
                if wanted.as_ref().is_some_and(Vec::is_empty) {
                    continue;
                }
                backfill_file(
                    config,
                    &rest,
                    &retry,
                    &key,
                    hour,
                    wanted.as_deref(),
                    &counters,
                    &mut summary,
                )
                .await?;
            }
        }
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn backfill_file(
    config: &Config,
    rest: &RestClient,
    retry: &RetryPolicy,
    key: &StreamKey,
    hour: Hour,
    wanted: Option<&[&DeclaredHole]>,
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
    if let Some(wanted) = wanted {
        for hole in wanted {
            if !sealed
                .unfilled
                .iter()
                .any(|range| same_hole(range, &hole.range))
            {
                summary.not_declared.push((*hole).clone());
            }
        }
    }
    let asked = |range: &UnfilledRange| {
        range.reason != REASON_NOT_SERVED
            && Hole::from_unfilled(key.kind, range).is_some()
            && wanted.is_none_or(|wanted| wanted.iter().any(|hole| same_hole(&hole.range, range)))
    };
    let (targeted, untouched): (Vec<UnfilledRange>, Vec<UnfilledRange>) = sealed
        .unfilled
        .iter()
        .cloned()
        .partition(|range| asked(range));
    let count_left = |summary: &mut BackfillSummary, ranges: &[UnfilledRange]| {
        summary.n_holes_left += ranges.len();
        summary.n_holes_fillable_left += ranges
            .iter()
            .filter(|range| range.reason != REASON_NOT_SERVED)
            .count();
    };
    if wanted.is_none() {
        count_left(summary, &untouched);
    }
    if targeted.is_empty() {
        return Ok(());
    }
    summary.n_files_with_holes += 1;
    let holes: Vec<Hole> = targeted
        .iter()
        .filter_map(|range| Hole::from_unfilled(key.kind, range))
        .collect();
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
    let revised_targeted = revise_declared(
        key.kind,
        hour,
        &targeted,
        &report.settled,
        &report.rows,
        report.failure.as_deref(),
    );
    count_left(summary, &revised_targeted);
    let mut outcome = HourOutcome {
        key: key.clone(),
        hour,
        n_holes_asked: targeted.len(),
        n_rows_fetched: report.rows.len(),
        left: revised_targeted.clone(),
        failure: report.failure.clone(),
        resealed: false,
    };
    // Nothing came back and nothing was settled: the file stays as it is
    // (only the reasons would change), and its holes stay open.
    let unchanged = report.rows.is_empty()
        && revised_targeted.len() == targeted.len()
        && revised_targeted
            .iter()
            .zip(&targeted)
            .all(|(revised, old)| same_hole(revised, old));
    if unchanged {
        if let Some(failure) = &report.failure {
            warn!(path = %path.display(), %failure, "holes left declared");
        }
        summary.hours.push(outcome);
        return Ok(());
    }
    let n_filled = targeted.len().saturating_sub(revised_targeted.len());
    let mut revised = untouched;
    revised.extend(revised_targeted);
    revised.sort_by_key(|range| (range.from_time, range.from));
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
    let sealed_outcome =
        tokio::task::spawn_blocking(move || execute_seal(&data_dir, None, seal_job))
            .await
            .context("seal task failed")?;
    match sealed_outcome.result {
        Ok(SealResult::Written { path, n_rows, .. }) => {
            summary.n_files_resealed += 1;
            outcome.resealed = true;
            Counters::add(&counters.files_resealed, 1);
            Counters::add(&counters.holes_filled_late, n_filled as u64);
            info!(path = %path.display(), n_rows, n_filled, "backfilled");
        }
        Ok(SealResult::Unchanged) => {}
        Err(failure) => anyhow::bail!("cannot reseal {}: {}", path.display(), failure.message),
    }
    if let Some(failure) = &report.failure {
        warn!(path = %path.display(), %failure, "holes left declared");
    }
    summary.hours.push(outcome);
    Ok(())
}
