//! What the runtime does before it records: clean the data directory
//! (temporaries of interrupted seals, files an older release set aside),
//! open the WAL and replay it into a fresh [`State`], resume each stream
//! from its newest sealed files (their last row, their declared holes,
//! unreadable ones moved aside), and check the configured symbols against
//! `exchangeInfo` (run beside the recording, not before it).

use std::sync::Arc;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::binance::rest::{RestClient, RestError};
use crate::config::{is_dated_contract, Config, MarketConfig};
use crate::domain::{Hour, StreamKey};
use crate::metrics::Counters;
use crate::parquet_out::{self, run_file};
use crate::quarantine;
use crate::recorder::delivery::{judge_contract, ContractFacts, ContractVerdict};
use crate::recorder::records::{decode_record, Applied};
use crate::recorder::spill_runs::spill_in_line;
use crate::recorder::state::State;
use crate::wal::fs::WalFs;
use crate::wal::{Wal, WalConfig, WalWriter};

/// Checks the configured symbols against `exchangeInfo`: an unknown symbol
/// is an error, one that is not trading a warning. REST being unreachable
/// is only a warning: recording must not wait for it. Returns what the
/// answer says of the configured symbols' contracts (delivery dates and
/// statuses, `recorder/delivery.rs`), read even with `check_symbols` off
/// when a symbol is a dated contract; empty when REST did not answer.
pub(super) async fn check_symbols(
    market_config: &MarketConfig,
    rest: &RestClient,
) -> anyhow::Result<Vec<ContractFacts>> {
    let market = market_config.market;
    let names: Vec<String> = market_config
        .symbols
        .iter()
        .map(ToString::to_string)
        .collect();
    let has_dated = names.iter().any(|name| is_dated_contract(name));
    if !market_config.check_symbols && !has_dated {
        // The weight limit is still read: it changes over time.
        if let Some(symbol) = market_config.symbols.first() {
            if let Err(error) = rest.refresh_weight_limit(symbol).await {
                warn!(market = %market_config.market, %error, "cannot read the REST weight limit; using the default");
            }
        }
        return Ok(Vec::new());
    }
    let statuses = match rest.symbol_statuses(&names).await {
        Ok(statuses) => statuses,
        Err(RestError::Status {
            code: Some(-1121), ..
        }) if market_config.check_symbols => {
            // The list answer does not say which symbol is unknown: ask one by one.
            let mut unknown = Vec::new();
            for name in &names {
                if let Err(RestError::Status {
                    code: Some(-1121), ..
                }) = rest.symbol_statuses(std::slice::from_ref(name)).await
                {
                    unknown.push(name.clone());
                }
            }
            anyhow::bail!(
                "config key `markets.{market}.symbols`: unknown to the exchange: {} (Binance would accept the subscription and send nothing)",
                unknown.join(", ")
            );
        }
        Err(error) if error.is_fatal() => {
            anyhow::bail!("market {market}: {error}")
        }
        Err(error) => {
            warn!(%market, %error, "cannot check symbols against exchangeInfo; recording anyway");
            return Ok(Vec::new());
        }
    };
    for name in names.iter().filter(|_| market_config.check_symbols) {
        match statuses.iter().find(|status| &status.symbol == name) {
            None => anyhow::bail!(
                "config key `markets.{market}.symbols`: {name} is unknown to the exchange"
            ),
            Some(status) => {
                let facts = ContractFacts::from_status(status);
                let delivered = facts.as_ref().is_some_and(|facts| {
                    matches!(judge_contract(facts, None), ContractVerdict::Delivered(_))
                });
                // A delivered contract is said so by the runtime, once.
                match status.trading_status() {
                    Some("TRADING") => {}
                    _ if delivered => {}
                    trading_status => {
                        warn!(%market, symbol = %name, status = trading_status.unwrap_or("none"), "symbol is not trading; its streams may stay silent")
                    }
                }
            }
        }
    }
    Ok(statuses
        .iter()
        .filter_map(ContractFacts::from_status)
        .collect())
}

pub(super) async fn open_and_replay(
    config: &Arc<Config>,
    wal_config: WalConfig,
    wal_fs: Arc<dyn WalFs>,
    counters: Arc<Counters>,
) -> anyhow::Result<(WalWriter, State)> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(WalWriter, State)> {
        match parquet_out::remove_temporary_files(&config.data_dir) {
            Ok(removed) => {
                for path in &removed {
                    warn!(path = %path.display(), "temporary file of an interrupted seal removed; its hour is sealed again from the WAL");
                }
                Counters::add(&counters.temporary_files_removed, removed.len() as u64);
            }
            Err(error) => warn!(%error, "cannot clean temporary files in the data directory"),
        }
        // Releases before schema version 2 moved unreadable files aside
        // inside the partition tree, where they break folder readers.
        match parquet_out::move_out_legacy_corrupt_files(&config.data_dir) {
            Ok(moved) => {
                for (from, to) in &moved {
                    warn!(from = %from.display(), to = %to.display(), "file moved aside by an older release moved out of the partition tree");
                }
            }
            Err(error) => warn!(%error, "cannot move files set aside by an older release out of the partition tree"),
        }
        // Runs spilled by an earlier process: the replay rebuilds them.
        match run_file::remove_runs(&config.wal_dir) {
            Ok(0) => {}
            Ok(removed) => info!(removed, "spilled runs of the last run removed; the WAL replay rebuilds them"),
            Err(error) => warn!(%error, dir = %run_file::runs_dir(&config.wal_dir).display(), "cannot remove spilled runs of the last run"),
        }
        let (wal, report) = Wal::open_with_fs(wal_config.clone(), wal_fs)
            .with_context(|| format!("cannot open the WAL in {}", wal_config.dir.display()))?;
        if let Some(torn) = &report.torn_tail {
            warn!(
                ?torn,
                "WAL torn tail cut at start; the frames lost there are a gap"
            );
            Counters::add(&counters.wal_damage, 1);
        }
        let mut state = State::new(&config, counters.clone());
        let mut quarantined = Vec::new();
        let mut n_records = 0u64;
        for item in report.replay() {
            match item.context("cannot read the WAL")? {
                crate::wal::ReadItem::Record { position, record } => {
                    n_records += 1;
                    match decode_record(position.segment, &record) {
                        Ok(Some(Applied::Frame {
                            market,
                            segment,
                            decoded,
                        })) => {
                            state.apply(market, segment, decoded);
                            spill_in_line(&config.wal_dir, &mut state);
                        }
                        Ok(Some(Applied::Checkpoint(checkpoint))) => {
                            state.apply_checkpoint(checkpoint)
                        }
                        Ok(Some(Applied::Fill { segment, report })) => {
                            state.apply_fill(segment, report, 0)
                        }
                        Ok(None) => {}
                        Err(frame) => quarantined.push(frame),
                    }
                }
                crate::wal::ReadItem::Damage {
                    segment,
                    offset,
                    skipped_bytes,
                    reason,
                    ..
                } => {
                    Counters::add(&counters.wal_damage, 1);
                    warn!(
                        ?segment,
                        offset,
                        skipped_bytes,
                        ?reason,
                        "WAL damage skipped; the frames lost there are a gap"
                    );
                }
                crate::wal::ReadItem::UnknownKind { position, kind, .. } => {
                    warn!(?position, kind, "WAL record of an unknown kind skipped");
                }
            }
        }
        Counters::add(&counters.records_replayed, n_records);
        quarantined.extend(state.take_rejected());
        if !quarantined.is_empty() {
            // Quarantine files from the first pass may already hold them;
            // duplicates there are harmless, a loss would not be.
            quarantine::append(&config.quarantine_dir, &quarantined)
                .context("cannot write the quarantine")?;
        }
        info!(
            n_records,
            n_unsealed_rows = state.n_unsealed_rows(),
            "WAL replayed"
        );
        resume_from_sealed_files(&config, &mut state, &counters);
        Ok((wal, state))
    })
    .await
    .context("WAL replay task failed")?
}

/// Reads the newest sealed files of every stream: the next hour is judged
/// from the last row before it, hours missed while the recorder was down
/// are owed, and holes the files declare are retried. Files more than
/// `fill.lookback_hours` older than a stream's newest file are not read.
fn resume_from_sealed_files(config: &Config, state: &mut State, counters: &Counters) {
    for market_config in &config.markets {
        for symbol in &market_config.symbols {
            for kind in &market_config.streams {
                let key = StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                };
                let hours = parquet_out::sealed_hours(&config.data_dir, &key);
                let Some(newest) = hours.last().copied() else {
                    continue;
                };
                let oldest_read = newest.start()
                    - i64::from(config.fill.lookback_hours) * crate::domain::MICROS_PER_HOUR;
                let mut resumed = false;
                for hour in hours
                    .iter()
                    .rev()
                    .copied()
                    .take_while(|hour| hour.start() >= oldest_read)
                {
                    let path = parquet_out::hour_file_path(&config.data_dir, &key, hour);
                    match parquet_out::read_summary(&path) {
                        Ok(summary) => {
                            if !resumed {
                                state.resume_after_sealed(&key, hour, summary.last_key);
                                resumed = true;
                                // A delivered contract's last file: no later
                                // hour is owed, even before exchangeInfo
                                // answers (the spans replayed cover them).
                                if let Some(at) = summary.delivered_at {
                                    state.end_recording(key.market, &key.symbol, at);
                                }
                            }
                            if !summary.unfilled.is_empty() {
                                state.declare_sealed_holes(&key, hour, summary.unfilled);
                            }
                        }
                        Err(error) => {
                            Counters::add(&counters.files_corrupt, 1);
                            let aside = match parquet_out::move_aside(&config.data_dir, &path) {
                                Ok(aside) => aside,
                                Err(move_error) => {
                                    error!(path = %path.display(), %error, %move_error, "sealed file unreadable and cannot be moved aside");
                                    continue;
                                }
                            };
                            error!(path = %path.display(), %error, aside = %aside.display(), "sealed file unreadable at start; moved aside, rebuilt from the WAL and REST");
                            // Newer than every readable file: the hour is
                            // judged again from the previous one's last row.
                            // Older: its whole hour is a declared hole.
                            if resumed {
                                state.declare_sealed_holes(
                                    &key,
                                    hour,
                                    whole_hour_hole(*kind, hour),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let n_declared_hours = state.n_declared_hours();
    if n_declared_hours > 0 {
        info!(
            n_declared_hours,
            "sealed files declare holes; retrying them from REST"
        );
    }
}

/// The `unfilled` entry for an hour whose file was lost: all of it.
fn whole_hour_hole(
    kind: crate::domain::StreamKind,
    hour: Hour,
) -> Vec<crate::domain::UnfilledRange> {
    const REASON: &str = "sealed file was unreadable";
    let (from, to) = match kind {
        crate::domain::StreamKind::Kline(interval) => {
            let grid = crate::gaps::kline_grid(interval, hour.start(), hour.end());
            match (grid.first(), grid.last()) {
                (Some(first), Some(last)) => (Some(*first), Some(*last)),
                _ => return Vec::new(),
            }
        }
        _ => (None, None),
    };
    vec![crate::domain::UnfilledRange {
        from,
        to,
        from_time: hour.start(),
        to_time: hour.end() - 1,
        reason: REASON.to_owned(),
    }]
}
