//! What the runtime does before it records: clean the data directory
//! (temporaries of interrupted seals, files an older release set aside),
//! open the WAL and replay it into a fresh [`State`], resume each stream
//! from its newest sealed files (their last row, their declared holes,
//! unreadable ones moved aside), and check the configured symbols against
//! `exchangeInfo` (run beside the recording, not before it).

use std::path::Path;
use std::sync::{mpsc, Arc};

use anyhow::Context;
use tracing::{error, info, warn};

use crate::binance::rest::{RestClient, RestError};
use crate::config::{is_dated_contract, Config, MarketConfig};
use crate::domain::{Hour, StreamKey, Symbol, TimeUs};
use crate::metrics::Counters;
use crate::parquet_out;
use crate::quarantine::{self, QuarantinedFrame};
use crate::recorder::delivery::{judge_contract, ContractFacts, ContractVerdict};
use crate::recorder::records::{decode_record, Applied};
use crate::recorder::run_file;
use crate::recorder::spill_runs::ReplaySpills;
use crate::recorder::state::State;
use crate::wal::fs::WalFs;
use crate::wal::{LendItems, ReadItem, Wal, WalConfig, WalWriter};

/// Checks the configured symbols against `exchangeInfo`: an unknown symbol
/// is an error, one that is not trading a warning. REST being unreachable
/// is only a warning: recording must not wait for it. Returns what the
/// answer says of the configured symbols' contracts (delivery dates and
/// statuses, `recorder/delivery.rs`), read even with `check_symbols` off
/// on futures (a dated contract's delivery, a delisted perpetual's date);
/// empty when REST did not answer.
pub(super) async fn check_symbols(
    market_config: &MarketConfig,
    rest: &RestClient,
    data_dir: &Path,
) -> anyhow::Result<Vec<ContractFacts>> {
    let market = market_config.market;
    let names: Vec<String> = market_config
        .symbols
        .iter()
        .map(ToString::to_string)
        .collect();
    let futures = crate::binance::markets::MarketProfile::of(market).is_futures();
    if !market_config.check_symbols && !futures {
        // The weight limit is still read: it changes over time.
        if let Some(symbol) = market_config.symbols.first() {
            if let Err(error) = rest.refresh_weight_limit(symbol).await {
                warn!(market = %market_config.market, %error, "cannot read the REST weight limit; using the default");
            }
        }
        return Ok(Vec::new());
    }
    // Dated contracts the exchange no longer lists, judged delivered.
    let mut unlisted: Vec<ContractFacts> = Vec::new();
    let mut listed = names.clone();
    let statuses = loop {
        match rest.symbol_statuses(&listed).await {
            Ok(statuses) => break statuses,
            Err(RestError::Status {
                code: Some(-1121), ..
            }) if market_config.check_symbols => {
                // The list answer does not say which symbol is unknown: ask one by one.
                let mut unknown = Vec::new();
                for name in &listed {
                    if let Err(RestError::Status {
                        code: Some(-1121), ..
                    }) = rest.symbol_statuses(std::slice::from_ref(name)).await
                    {
                        unknown.push(name.clone());
                    }
                }
                if unknown.is_empty() {
                    // Refused as a list, taken one by one: nothing to name.
                    warn!(%market, "exchangeInfo refuses the symbols together and takes each alone; recording anyway");
                    return Ok(unlisted);
                }
                let none_listed = unknown.len() == names.len();
                let delivered =
                    delivered_and_unlisted(market_config, rest, &unknown, none_listed, data_dir)
                        .await?;
                listed.retain(|name| !delivered.iter().any(|facts| facts.symbol.as_str() == name));
                unlisted.extend(delivered);
                if listed.is_empty() {
                    return Ok(unlisted);
                }
            }
            Err(error) if error.is_fatal() => {
                anyhow::bail!("market {market}: {error}")
            }
            Err(error) => {
                warn!(%market, %error, "cannot check symbols against exchangeInfo; recording anyway");
                return Ok(unlisted);
            }
        }
    };
    let absent: Vec<String> = listed
        .iter()
        .filter(|name| !statuses.iter().any(|status| &status.symbol == *name))
        .cloned()
        .collect();
    if market_config.check_symbols && !absent.is_empty() {
        let none_listed = absent.len() == names.len();
        unlisted.extend(
            delivered_and_unlisted(market_config, rest, &absent, none_listed, data_dir).await?,
        );
    }
    for name in listed.iter().filter(|_| market_config.check_symbols) {
        if let Some(status) = statuses.iter().find(|status| &status.symbol == name) {
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
    Ok(statuses
        .iter()
        .filter_map(ContractFacts::from_status)
        .chain(unlisted)
        .collect())
}

/// Of `unknown` (names `exchangeInfo` does not list), as delivered, each
/// warned of: the dated contracts whose day ended before the exchange's
/// clock ([`ContractFacts::delivered_and_unlisted`]), and the symbols
/// whose newest file in `data_dir` says the daemon saw their delivery or
/// delisting (`delivered_at`; Binance may drop a delisted perpetual from
/// the list). A symbol this dataset recorded before without any such
/// word (delisted while the daemon was down) ends its recording at the
/// exchange's clock (status `CLOSE`, no date: [`judge_contract`] delivers
/// it then), so that the other symbols record on; not when `none_listed`
/// (the exchange knows none of the market's configured symbols: a wrong
/// URL or market far more likely than every one delisted). Any other is
/// an error naming it, as is a dated contract with an unreadable exchange
/// clock (nothing can be judged delivered then).
async fn delivered_and_unlisted(
    market_config: &MarketConfig,
    rest: &RestClient,
    unknown: &[String],
    none_listed: bool,
    data_dir: &Path,
) -> anyhow::Result<Vec<ContractFacts>> {
    let market = market_config.market;
    let exchange_now = match unknown.iter().any(|name| is_dated_contract(name)) {
        true => rest.server_time().await.ok(),
        false => None,
    };
    let mut delivered = Vec::new();
    let mut still_unknown = Vec::new();
    for name in unknown {
        match exchange_now.and_then(|now| ContractFacts::delivered_and_unlisted(name, now)) {
            Some(facts) => {
                warn!(%market, symbol = %name, "dated contract no longer listed by the exchange: delivered, not recorded (remove it from the config)");
                delivered.push(facts);
            }
            None => match newest_files(market_config, name, data_dir) {
                None => still_unknown.push(name.as_str()),
                Some((symbol, files)) => match delivered_in_files(&files, data_dir) {
                    Some(delivery_at) => {
                        warn!(%market, symbol = %name, "symbol no longer listed by the exchange, delivered or delisted as its last file says: not recorded (remove it from the config)");
                        delivered.push(ContractFacts {
                            symbol,
                            status: Some("CLOSE".to_owned()),
                            delivery_at: Some(delivery_at),
                        });
                    }
                    None => match files.iter().map(|(_, hour)| *hour).max() {
                        // Recorded here before, so no typo: delisted while
                        // the daemon was down. Refusing the start would stop
                        // every other symbol until someone edits the config.
                        Some(newest) if !none_listed => {
                            error!(%market, symbol = %name, newest_file_hour = %newest, "symbol no longer listed by the exchange and its files name no delisting (delisted while the daemon was down?): its recording ends at the exchange time known when this answer came (right after a start, often the newest time in the WAL); the hours up to it are owed and declared unfilled where REST cannot serve them (remove it from the config)");
                            delivered.push(ContractFacts {
                                symbol,
                                status: Some("CLOSE".to_owned()),
                                delivery_at: None,
                            });
                        }
                        _ => still_unknown.push(name.as_str()),
                    },
                },
            },
        }
    }
    if !still_unknown.is_empty() {
        anyhow::bail!(
            "config key `markets.{market}.symbols`: unknown to the exchange: {} (Binance would accept the subscription and send nothing)",
            still_unknown.join(", ")
        );
    }
    Ok(delivered)
}

/// Each configured stream's newest sealed hour of `name` on the market
/// (one listing each; empty for a name never recorded here); `None` for a
/// name the dataset refuses.
fn newest_files(
    market_config: &MarketConfig,
    name: &str,
    data_dir: &Path,
) -> Option<(Symbol, Vec<(StreamKey, Hour)>)> {
    let symbol = Symbol::new(name).ok()?;
    let files = market_config
        .streams
        .iter()
        .filter_map(|kind| {
            let key = StreamKey {
                market: market_config.market,
                symbol: symbol.clone(),
                kind: *kind,
            };
            let newest = parquet_out::sealed_hours(data_dir, &key).last().copied()?;
            Some((key, newest))
        })
        .collect();
    Some((symbol, files))
}

/// The delivery the newest files say (`delivered_at`, written by a daemon
/// that saw the delivery or the delisting), the first one found; `None`
/// when none says so.
fn delivered_in_files(files: &[(StreamKey, Hour)], data_dir: &Path) -> Option<TimeUs> {
    files.iter().find_map(|(key, newest)| {
        parquet_out::read_summary(&parquet_out::hour_file_path(data_dir, key, *newest))
            .ok()?
            .delivered_at
    })
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
        let (n_records, mut quarantined) =
            replay_into(report.replay(), &config, &mut state, &counters)?;
        Counters::add(&counters.records_replayed, n_records);
        // The per-stream metrics count frames received by this process.
        state.take_seen();
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

/// Records read and decoded ahead of the state, in one hand-over: few
/// enough that a hand-over's buffer stays under glibc's `mmap` threshold
/// (128 KiB; fixed, since the unit sets `MALLOC_TRIM_THRESHOLD_`), so it
/// comes from the heap's free memory instead of an `mmap` whose pages fault
/// in anew each time (14 % of the reader's time with 512).
const REPLAY_BATCH: usize = 512;
/// Hand-overs decoded and not yet applied: the reader's lead on the state,
/// at most about 5 MB of decoded records (under 300 bytes each). It lets
/// the reader go on while the state writes a spilled run; with a lead of
/// 4 x 512 the replay was slower in three interleaved runs of three.
const REPLAY_BATCHES_AHEAD: usize = 32;
const _: () = assert!(REPLAY_BATCH * std::mem::size_of::<Replayed>() < 128 * 1024);

/// A durable record as the replay's reader thread hands it to the state.
#[allow(clippy::large_enum_variant)] // a quarantined frame is rare; see `Decoded`
enum Replayed {
    Applied(Applied),
    Quarantined(QuarantinedFrame),
}

/// Replays `records` into `state`: a reader thread reads, verifies and
/// decodes the records (most of a replay's work) while this thread applies
/// them in WAL order, and a third writes the runs that pass the memory
/// budget ([`ReplaySpills`]). Returns how
/// many records there were and the frames that did not decode.
fn replay_into(
    mut records: impl LendItems + Send,
    config: &Config,
    state: &mut State,
    counters: &Counters,
) -> anyhow::Result<(u64, Vec<QuarantinedFrame>)> {
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::sync_channel(REPLAY_BATCHES_AHEAD);
        let reader = std::thread::Builder::new()
            .name("wal-replay".to_owned())
            .spawn_scoped(scope, move || {
                read_and_decode(&mut records, counters, &sender)
            })
            .context("cannot start the WAL replay's reader thread")?;
        let mut spills = ReplaySpills::start(scope, &config.wal_dir)?;
        let mut quarantined = Vec::new();
        // Ends when the reader is done (or failed, its error last).
        for batch in receiver {
            for replayed in batch? {
                match replayed {
                    Replayed::Applied(Applied::Frame {
                        market,
                        segment,
                        decoded,
                    }) => {
                        state.apply(market, segment, decoded);
                        spills.spill(state);
                    }
                    Replayed::Applied(Applied::Checkpoint(checkpoint)) => {
                        state.apply_checkpoint(checkpoint)
                    }
                    Replayed::Applied(Applied::Fill { segment, report }) => {
                        state.apply_fill(segment, report, 0)
                    }
                    Replayed::Quarantined(frame) => quarantined.push(frame),
                }
            }
        }
        spills.finish(state);
        let n_records = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((n_records, quarantined))
    })
}

/// The replay's reader: reads and decodes `records`, hands them over in
/// batches, and returns how many records it read. A read error is handed
/// over after the records before it, and ends the reading; so does the
/// state's side hanging up (it failed).
fn read_and_decode(
    records: &mut impl LendItems,
    counters: &Counters,
    sender: &mpsc::SyncSender<anyhow::Result<Vec<Replayed>>>,
) -> u64 {
    let mut n_records = 0u64;
    let mut batch = Vec::with_capacity(REPLAY_BATCH);
    while let Some(item) = records.next_lent() {
        let item = match item.context("cannot read the WAL") {
            Ok(item) => item,
            Err(error) => {
                let _ = sender.send(Ok(batch));
                let _ = sender.send(Err(error));
                return n_records;
            }
        };
        match item {
            ReadItem::Record { position, record } => {
                n_records += 1;
                match decode_record(position.segment, record) {
                    Ok(Some(applied)) => batch.push(Replayed::Applied(applied)),
                    Ok(None) => {}
                    Err(frame) => batch.push(Replayed::Quarantined(frame)),
                }
            }
            ReadItem::Damage {
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
            ReadItem::UnknownKind { position, kind, .. } => {
                warn!(?position, kind, "WAL record of an unknown kind skipped");
            }
        }
        if batch.len() >= REPLAY_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(REPLAY_BATCH));
            if sender.send(Ok(full)).is_err() {
                return n_records;
            }
        }
    }
    let _ = sender.send(Ok(batch));
    n_records
}

/// Reads the newest sealed files of every stream: the next hour is judged
/// from the last row before it, hours missed while the recorder was down
/// are owed, and holes the files declare are retried. The newest files
/// written at the last stop (`stopped_at`) are passed over: their hours
/// are finished now. Files more than
/// `fill.lookback_hours` older than a stream's newest file are not read.
fn resume_from_sealed_files(config: &Config, state: &mut State, counters: &Counters) {
    for key in config.stream_keys() {
        let hours = parquet_out::sealed_hours(&config.data_dir, &key);
        let Some(newest) = hours.last().copied() else {
            continue;
        };
        let oldest_read =
            newest.start() - i64::from(config.fill.lookback_hours) * crate::domain::MICROS_PER_HOUR;
        let mut resumed = false;
        for hour in hours
            .iter()
            .rev()
            .copied()
            .take_while(|hour| hour.start() >= oldest_read)
        {
            let path = parquet_out::hour_file_path(&config.data_dir, &key, hour);
            match parquet_out::read_summary(&path) {
                // Written at a stop before its hour was finished: the hour
                // is recorded on (its rows replay from the WAL), filled,
                // and sealed again without the mark; the stream resumes
                // from the file before it.
                Ok(summary) if !resumed && summary.stopped_at.is_some() => {
                    info!(%key, %hour, "file written at the last stop: its hour is finished now");
                }
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
                        state.declare_sealed_holes(&key, hour, whole_hour_hole(key.kind, hour));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Market;
    use crate::recorder::records::frame_record;
    use crate::wal::{RecordPosition, SegmentId, WalError};

    fn config() -> Config {
        crate::config::test_config("", &["trade"])
    }

    /// Owned items lent one at a time, as the WAL's reader lends them.
    struct Lend<I> {
        items: I,
        current: Option<crate::wal::Record>,
    }

    impl<I: Iterator<Item = crate::wal::Result<ReadItem>>> LendItems for Lend<I> {
        fn next_lent(&mut self) -> Option<crate::wal::Result<ReadItem<crate::wal::RecordRef<'_>>>> {
            let current = &mut self.current;
            Some(
                self.items
                    .next()?
                    .map(|item| item.map_record(|record| current.insert(record).lent())),
            )
        }
    }

    fn lend<I: Iterator<Item = crate::wal::Result<ReadItem>>>(items: I) -> Lend<I> {
        Lend {
            items,
            current: None,
        }
    }

    fn trade_record(id: i64) -> crate::wal::Result<ReadItem> {
        let frame = format!(
            r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1767225600001,"s":"BTCUSDT","t":{id},"p":"1","q":"2","T":1767225600000,"m":true,"M":true}}}}"#
        );
        Ok(ReadItem::Record {
            position: RecordPosition {
                segment: SegmentId(1),
                offset: 0,
            },
            record: frame_record(Market::Spot, 1_767_225_600_002_000, frame.as_bytes()),
        })
    }

    /// The reader thread hands every record over in WAL order, more than
    /// fit one hand-over and the reader's lead; frames that do not decode
    /// come back for the quarantine, in order.
    #[test]
    fn a_replay_applies_every_record_in_order_and_returns_the_undecodable() {
        let config = config();
        let counters = Arc::new(Counters::default());
        let mut state = State::new(&config, counters.clone());
        let n_trades = REPLAY_BATCH * (REPLAY_BATCHES_AHEAD + 3) + 7;
        let garbage = |text: &str| {
            Ok(ReadItem::Record {
                position: RecordPosition {
                    segment: SegmentId(1),
                    offset: 0,
                },
                record: frame_record(Market::Spot, 5, text.as_bytes()),
            })
        };
        let records = (0..n_trades as i64)
            .map(trade_record)
            .chain([garbage("first"), garbage("second")]);
        let (n_records, quarantined) =
            replay_into(lend(records), &config, &mut state, &counters).expect("replayed");
        assert_eq!(n_records, n_trades as u64 + 2);
        assert_eq!(state.n_unsealed_rows(), n_trades);
        let frames: Vec<&str> = quarantined
            .iter()
            .map(|frame| frame.frame.as_str())
            .collect();
        assert_eq!(frames, ["first", "second"]);
    }

    /// Past the memory budget the replay spills runs on its spill thread,
    /// and every run is on disk and given back to its hour before the
    /// replay returns: the files are there, none failed, and the hour
    /// holds every row (in memory and in its runs).
    #[test]
    fn a_replay_past_the_budget_spills_runs_beside_it_and_waits_for_them() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut config = crate::config::test_config("[memory]\nmax_held_mb = 1\n", &["trade"]);
        config.wal_dir = scratch.path().join("wal");
        let counters = Arc::new(Counters::default());
        let mut state = State::new(&config, counters.clone());
        let n_trades = 100_000;
        let (n_records, quarantined) = replay_into(
            lend((0..n_trades as i64).map(trade_record)),
            &config,
            &mut state,
            &counters,
        )
        .expect("replayed");
        assert_eq!(n_records, n_trades as u64);
        assert!(quarantined.is_empty());
        assert_eq!(state.n_unsealed_rows(), n_trades);
        let runs_spilled = counters.runs_spilled.get();
        assert!(runs_spilled >= 2, "{runs_spilled} runs spilled");
        assert_eq!(counters.spill_failures.get(), 0);
        let on_disk = std::fs::read_dir(run_file::runs_dir(&config.wal_dir))
            .expect("runs dir")
            .count();
        assert_eq!(on_disk as u64, runs_spilled);
        assert_eq!(state.n_hours_spilling(), 0);
    }

    /// A read error fails the replay after the records before it were
    /// applied, and the reader stops there.
    #[test]
    fn a_read_error_fails_the_replay_after_the_records_before_it() {
        let config = config();
        let counters = Arc::new(Counters::default());
        let mut state = State::new(&config, counters.clone());
        let read_after_error = std::sync::atomic::AtomicUsize::new(0);
        let records = (0..3)
            .map(trade_record)
            .chain(std::iter::once(Err(WalError::Io {
                op: "read",
                path: "segment".into(),
                source: std::io::Error::other("disk gone"),
            })))
            .chain((3..REPLAY_BATCH as i64 * 100).map(|id| {
                read_after_error.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                trade_record(id)
            }));
        let error = replay_into(lend(records), &config, &mut state, &counters)
            .expect_err("a read error fails the replay");
        assert!(
            format!("{error:#}").contains("cannot read the WAL"),
            "{error:#}"
        );
        assert_eq!(state.n_unsealed_rows(), 3);
        assert_eq!(
            read_after_error.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
