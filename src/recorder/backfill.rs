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

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use crate::binance::rest::{RestClient, RetryPolicy};
use crate::config::Config;
use crate::domain::{Hour, StreamKey, StreamKind, UnfilledRange};
use crate::gaps::Hole;
use crate::metrics::Counters;
use crate::parquet_out;
use crate::recorder::fill_rounds::round_max_rows;
use crate::recorder::spill::HourRows;
use crate::recorder::state::{revise_declared, FillJob, SealJob};
use crate::recorder::{execute_seal, fill, SealResult};
use crate::verify::report::{holes_from_json, utc_time};
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

    /// What a person reads: per stream-hour the holes asked for, the rows
    /// REST gave, the holes closed and those still open (UTC times), then
    /// the totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for outcome in &self.hours {
            let n_closed = outcome.n_holes_asked.saturating_sub(outcome.left.len());
            let _ = writeln!(
                out,
                "{} {}: asked {} holes, {} rows from REST, {} closed, {} open{}",
                outcome.key,
                outcome.hour,
                outcome.n_holes_asked,
                outcome.n_rows_fetched,
                n_closed,
                outcome.left.len(),
                if outcome.resealed {
                    ", file replaced"
                } else {
                    ""
                }
            );
            for range in &outcome.left {
                let bound = |bound: Option<i64>| match (bound, outcome.key.kind) {
                    (None, _) => "?".to_owned(),
                    (Some(open), StreamKind::Kline(_)) => utc_time(open),
                    (Some(id), _) => id.to_string(),
                };
                let what = match outcome.key.kind {
                    StreamKind::Kline(_) => "klines",
                    StreamKind::Trade | StreamKind::AggTrade => "ids",
                };
                let _ = writeln!(
                    out,
                    "  still open: {what} {} ..= {}, {} .. {}: {}",
                    bound(range.from),
                    bound(range.to),
                    utc_time(range.from_time),
                    utc_time(range.to_time),
                    range.reason
                );
            }
        }
        for hole in &self.not_declared {
            let _ = writeln!(
                out,
                "{}/{}/{} {}: in the hole list but no file declares it (filled already?)",
                hole.market, hole.stream, hole.symbol, hole.hour
            );
        }
        let _ = writeln!(
            out,
            "files with holes: {}, resealed: {}, holes left: {} ({} REST may still fill)",
            self.n_files_with_holes,
            self.n_files_resealed,
            self.n_holes_left,
            self.n_holes_fillable_left
        );
        out
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

/// A round that fetched no row and left every hole it asked for as it was
/// (only a reason may have changed): replacing the file would gain nothing.
fn nothing_filled(n_rows: usize, asked: &[UnfilledRange], left: &[UnfilledRange]) -> bool {
    n_rows == 0
        && asked.len() == left.len()
        && asked
            .iter()
            .zip(left)
            .all(|(asked, left)| same_hole(asked, left))
}

/// The same hole: its bounds, whatever its reason says now.
fn same_hole(a: &UnfilledRange, b: &UnfilledRange) -> bool {
    (a.from, a.to, a.from_time, a.to_time) == (b.from, b.to, b.from_time, b.to_time)
}

/// Before `backfill` on a config with a destination: the files of the
/// hours it is asked to fill (`--from`/`--to`, or the hours of a hole
/// list) that retention deleted locally are read back from the bucket.
/// Without a bound or a list nothing is read (a whole bucket is not
/// downloaded to look for holes; run `verify --root s3://... --json`
/// and pass its list).
pub async fn restore_from_destination(
    config: &Config,
    from: Option<Hour>,
    to: Option<Hour>,
    only: Option<&HoleList>,
) -> Result<usize, crate::upload::fetch::FetchError> {
    let Some(upload) = &config.upload else {
        return Ok(0);
    };
    if from.is_none() && to.is_none() && only.is_none() {
        return Ok(0);
    }
    let mut keys: Vec<StreamKey> = config.stream_keys().collect();
    if let Some(list) = only {
        keys = list
            .holes
            .iter()
            .filter_map(|hole| {
                Some(StreamKey {
                    market: crate::domain::Market::from_name(&hole.market)?,
                    symbol: crate::domain::Symbol::new(&hole.symbol).ok()?,
                    kind: crate::domain::StreamKind::from_name(&hole.stream)?,
                })
            })
            .collect();
        keys.sort();
        keys.dedup();
    }
    let listed = |key: &StreamKey, hour: Hour| {
        only.is_none_or(|list| {
            let hour_text = hour.to_string();
            list.holes.iter().any(|hole| {
                hole.market == key.market.name()
                    && hole.stream == key.kind.path_name()
                    && hole.symbol == key.symbol.as_str()
                    && hole.hour == hour_text
            })
        })
    };
    crate::upload::sync::restore_missing(upload, &config.data_dir, &keys, from, to, &listed).await
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
            None => config
                .stream_keys()
                .filter(|key| key.market == market_config.market)
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
        let options = market_config.rest_options(&config.fill, counters.clone())?;
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
        range.is_retryable()
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
        summary.n_holes_fillable_left += ranges.iter().filter(|range| range.is_retryable()).count();
    };
    if wanted.is_none() {
        count_left(summary, &untouched);
    }
    if targeted.is_empty() {
        return Ok(());
    }
    summary.n_files_with_holes += 1;
    // Rounds of at most `round_max_rows` rows, each merged into the file
    // before the next: a hole of a whole busy hour is fetched and resealed
    // a round at a time, each round asking for what the last one left.
    let retry = RetryPolicy {
        max_rows: Some(round_max_rows(config.max_held_bytes)),
        ..retry.clone()
    };
    let mut outcome = HourOutcome {
        key: key.clone(),
        hour,
        n_holes_asked: targeted.len(),
        n_rows_fetched: 0,
        left: targeted.clone(),
        failure: None,
        resealed: false,
    };
    let mut asked = targeted;
    loop {
        let holes: Vec<Hole> = asked
            .iter()
            .filter(|range| range.is_retryable())
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
        let revised_asked = revise_declared(
            key.kind,
            hour,
            &asked,
            &report.settled,
            &report.rows,
            report.failure.as_deref(),
        );
        outcome.n_rows_fetched += report.rows.len();
        outcome.left = revised_asked.clone();
        outcome.failure = report.failure.clone();
        // Nothing came back and nothing was settled: the file stays as it
        // is (only the reasons would change), and its holes stay open.
        if nothing_filled(report.rows.len(), &asked, &revised_asked) {
            break;
        }
        let n_filled = asked.len().saturating_sub(revised_asked.len());
        let mut revised = untouched.clone();
        revised.extend(revised_asked.iter().cloned());
        revised.sort_by_key(|range| (range.from_time, range.from));
        // A file written at a stop vouches only up to it, filled or not:
        // the daemon's next run finishes its hour.
        let whole_hour = revised.is_empty() && sealed.stopped_at.is_none();
        let seal_job = SealJob {
            key: key.clone(),
            hour,
            rows: HourRows::from_rows(key.kind, report.rows),
            first_segment: None,
            // Merged with the file's own coverage; a file with no hole left
            // vouches for its whole hour.
            coverage_from: if whole_hour { hour.start() } else { hour.end() },
            coverage_to: if whole_hour { hour.end() } else { hour.start() },
            clock_offset_us: None,
            unfilled: Some(revised),
            late: true,
            delivered_at: None,
            // A file written at a stop stays marked: only the daemon's
            // next run can finish its hour.
            stopped_at: sealed.stopped_at,
        };
        let data_dir = config.data_dir.clone();
        let sealed_outcome =
            tokio::task::spawn_blocking(move || execute_seal(&data_dir, None, seal_job))
                .await
                .context("seal task failed")?;
        match sealed_outcome.result {
            Ok(SealResult::Written { path, n_rows, .. }) => {
                if !outcome.resealed {
                    summary.n_files_resealed += 1;
                }
                outcome.resealed = true;
                Counters::add(&counters.files_resealed, 1);
                Counters::add(&counters.holes_filled_late, n_filled as u64);
                info!(path = %path.display(), n_rows, n_filled, "backfilled");
            }
            Ok(SealResult::Unchanged) => {}
            Err(failure) => {
                return Err(anyhow::Error::new(failure.error)
                    .context(format!("cannot reseal {}", path.display())))
            }
        }
        // A round that failed nothing and left holes stopped at its row
        // cap: the next asks for the rest. One that answered nothing new
        // would ask the same again.
        let answered = revised_asked != asked;
        asked = revised_asked;
        if report.failure.is_some() || !answered || !asked.iter().any(UnfilledRange::is_retryable) {
            break;
        }
    }
    count_left(summary, &asked);
    if let Some(failure) = &outcome.failure {
        warn!(path = %path.display(), %failure, "holes left declared");
    }
    summary.hours.push(outcome);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Market, Symbol, REASON_NOT_SERVED};

    const HOUR_START: i64 = 1_795_474_800_000_000;

    fn range(from: i64, to: i64, reason: &str) -> UnfilledRange {
        UnfilledRange {
            from: Some(from),
            to: Some(to),
            from_time: HOUR_START + 1,
            to_time: HOUR_START + 2,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_round_that_got_nothing_leaves_the_file_alone() {
        let asked = [range(10, 12, "REST unreachable")];
        let same_new_reason = [range(10, 12, "connection refused")];
        assert!(nothing_filled(0, &asked, &same_new_reason));
        assert!(
            !nothing_filled(1, &asked, &same_new_reason),
            "rows came back"
        );
        assert!(
            !nothing_filled(0, &asked, &[]),
            "settled as nothing to fetch"
        );
        let not_served = [range(11, 11, REASON_NOT_SERVED)];
        assert!(!nothing_filled(0, &asked, &not_served), "narrowed");
    }

    #[test]
    fn the_summary_says_what_is_still_open_in_utc() {
        let key = StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::AggTrade,
        };
        let summary = BackfillSummary {
            n_files_with_holes: 1,
            n_holes_left: 1,
            n_holes_fillable_left: 1,
            hours: vec![HourOutcome {
                key,
                hour: Hour::containing(HOUR_START),
                n_holes_asked: 1,
                n_rows_fetched: 0,
                left: vec![range(10, 12, "connection refused")],
                failure: Some("connection refused".into()),
                resealed: false,
            }],
            ..BackfillSummary::default()
        };
        assert!(summary.holes_remain());
        assert_eq!(
            summary.render(),
            "spot/aggTrade/BTCUSDT 2026-11-23T23: asked 1 holes, 0 rows from REST, 0 closed, 1 open\n\
             \x20 still open: ids 10 ..= 12, 2026-11-23T23:00:00.000001Z .. 2026-11-23T23:00:00.000002Z: connection refused\n\
             files with holes: 1, resealed: 0, holes left: 1 (1 REST may still fill)\n"
        );
    }
}
