//! The recorder runtime: wires connections, the WAL, the state machine and
//! the Parquet writer together, and stops them in order.
//!
//! One task (the loop in [`run`]) owns the WAL writer and the [`State`].
//! Connection tasks and clock tasks talk to it over one bounded channel
//! (capacity [`CHANNEL_CAPACITY`]; when full, senders wait: a connection
//! task then stops reading its socket and TCP pushes back). Blocking work
//! runs off the async workers: each WAL batch (append, fsync, then decode)
//! and each Parquet seal is a `spawn_blocking` job.

pub mod backfill;
pub mod budget;
pub mod fill;
pub mod held;
pub mod judge;
pub mod pace;
pub mod seal_job;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::binance::decode::{decode_frame, Decoded};
use crate::binance::rest::{Pacing, RestClient, RestError, RetryPolicy};
use crate::binance::streams::stream_name;
use crate::binance::ws::{now_us, run_connection, ConnectionPlan, HandshakeBudget, Inbound};
use crate::config::{Config, MarketConfig};
use crate::domain::{Hour, Market, StreamKey, StreamKind, TimeUs};
use crate::metrics::health::HealthBoard;
use crate::metrics::{Counters, GaugeF64, MarketLabels, StreamLabels};
use crate::parquet_out;
use crate::quarantine::{self, QuarantinedFrame};
use crate::recorder::pace::ClockPace;
use crate::service::{ServiceNotifier, StatusFigures, WalProgress};
use crate::wal::fs::{RealFs, WalFs};
use crate::wal::{FsyncPolicy, Record, RecordKind, SegmentId, Wal, WalConfig, WalError, WalWriter};
use prometheus_client::metrics::counter::Counter;
pub(crate) use seal_job::{execute_seal, SealOutcome, SealResult};
pub use seal_job::{SealFault, SealFaults};
pub use state::{Checkpoint, FillJob, FillReport, Job, MonoMs, SealJob, State};

/// Capacity of the channel from connection tasks to the recorder.
pub const CHANNEL_CAPACITY: usize = 8192;
/// Most records in one WAL batch, and most records waiting for the next one:
/// while that many wait, the recorder stops taking frames from the channel,
/// the channel fills, and connection tasks wait (TCP backpressure). So at
/// most `2 * MAX_BATCH_RECORDS + CHANNEL_CAPACITY` frames are held in memory
/// between the sockets and the WAL, however slow the disk.
pub const MAX_BATCH_RECORDS: usize = 16_384;

/// Runs the recorder until `shutdown` is cancelled, then stops in order:
/// connections first, then every frame already received is made durable,
/// in-flight seals finish (up to the configured deadline), and the WAL is
/// closed. Unsealed hours stay in the WAL for the next start.
pub async fn run(
    config: Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_wal_fs(config, Arc::new(RealFs), counters, shutdown).await
}

/// [`run`] with the WAL on a given filesystem seam (tests inject slow or
/// failing disks through it).
pub async fn run_with_wal_fs(
    config: Config,
    wal_fs: Arc<dyn WalFs>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let seams = Seams {
        wal_fs,
        ..Seams::default()
    };
    run_with_seams(config, seams, counters, shutdown).await
}

/// Where tests reach into a running recorder: the WAL's filesystem and
/// faults injected into seals (the data directory's seam).
#[derive(Clone)]
pub struct Seams {
    pub wal_fs: Arc<dyn WalFs>,
    pub seal_faults: Option<SealFaults>,
    /// Each `notify_one` makes one connection task panic (its supervisor
    /// must restart it).
    pub connection_panics: Option<Arc<tokio::sync::Notify>>,
}

impl Default for Seams {
    fn default() -> Self {
        Seams {
            wal_fs: Arc::new(RealFs),
            seal_faults: None,
            connection_panics: None,
        }
    }
}

/// [`run`] with every seam given.
pub async fn run_with_seams(
    config: Config,
    seams: Seams,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Seams {
        wal_fs,
        seal_faults,
        connection_panics,
    } = seams;
    config.check_directories()?;
    // Held until the recorder has stopped: no second recorder (or backfill
    // run) may write the same WAL or dataset meanwhile.
    let _wal_lock = crate::lock::lock_directory(&config.wal_dir)?;
    let _data_lock = crate::lock::lock_directory(&config.data_dir)?;
    crate::binance::ensure_crypto_provider();
    let metrics_listener = match config.metrics.listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {address}"))?,
        ),
        None => None,
    };
    let health = Arc::new(HealthBoard::new(
        config.metrics.health,
        config.markets.iter().flat_map(|market_config| {
            market_config.symbols.iter().flat_map(move |symbol| {
                market_config.streams.iter().map(move |kind| StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                })
            })
        }),
    ));
    let config = Arc::new(config);
    let wal_config = WalConfig {
        dir: config.wal_dir.clone(),
        segment_max_bytes: config.segment_max_bytes,
        fsync: config.fsync,
    };
    let (wal, state) = open_and_replay(
        &config,
        wal_config.clone(),
        wal_fs.clone(),
        counters.clone(),
    )
    .await?;
    // One REST client per market, shared by every caller, so one limiter
    // paces them all against the IP's weight limit (each market its own).
    let mut rest_clients: BTreeMap<Market, RestClient> = BTreeMap::new();
    for market_config in &config.markets {
        let options = market_config.rest_options(&config.fill, counters.clone())?;
        // Whether a key is there, never the key.
        info!(market = %market_config.market, api_key = options.api_key.is_some(), "rest client ready");
        rest_clients.insert(
            market_config.market,
            RestClient::with_options(market_config.market, &market_config.rest_url, options),
        );
    }
    // The symbol check runs beside the recording: a REST outage at start
    // must not delay the streams. A bad symbol still stops the daemon.
    let symbol_check = {
        let config = config.clone();
        let rest_clients = rest_clients.clone();
        tokio::spawn(async move {
            for market_config in &config.markets {
                check_symbols(market_config, &rest_clients[&market_config.market]).await?;
            }
            Ok(())
        })
    };

    let mut runtime = Runtime {
        config: config.clone(),
        wal_config,
        wal_fs,
        counters: counters.clone(),
        state,
        wal: Some(wal),
        pending: Vec::new(),
        pending_since: None,
        batch: None,
        seals: JoinSet::new(),
        seal_faults,
        seal_pause_until: None,
        fills: JoinSet::new(),
        fill_tasks: HashMap::new(),
        fill_queue: std::collections::VecDeque::new(),
        paces: HashMap::new(),
        fill_waits_logged_at: None,
        rest_clients: rest_clients.clone(),
        started: Instant::now(),
        wal_failures: 0,
        wal_retry_at: None,
        symbol_check: Some(symbol_check),
        fatal: None,
        wal_lost: false,
        service: ServiceNotifier::from_env(
            config
                .markets
                .iter()
                .map(|market_config| market_config.market),
            Instant::now(),
        ),
        links_up: BTreeMap::new(),
        last_commit: Instant::now(),
        last_sealed: None,
        health: health.clone(),
        batch_started: None,
        batch_oldest_recv_us: None,
        summary_logged_at: Instant::now(),
        status_refreshed_at: Instant::now(),
        stream_metrics: stream_metrics(&config, &counters),
        upload: None,
    };
    for market_config in &config.markets {
        runtime.state.begin_session(market_config.market);
        runtime
            .pending
            .push(checkpoint_record(&Checkpoint::SessionStart {
                market: market_config.market.name().into(),
            }));
    }
    runtime.pending_since = Some(Instant::now());

    let (sender, mut receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let tasks = TaskTracker::new();
    let task_shutdown = CancellationToken::new();
    let budget = Arc::new(HandshakeBudget::new(
        config.connection.handshake_limit,
        config.connection.handshake_window,
    ));
    if let Some(upload) = &config.upload {
        let handle = crate::upload::spawn(
            upload.clone(),
            config.data_dir.clone(),
            counters.clone(),
            health.clone(),
            &tasks,
            task_shutdown.child_token(),
        )
        .context("storage.destination: cannot build the object store client")?;
        runtime.upload = Some(handle);
    }
    let mut n_tasks = 0;
    let spawner = TaskSpawner {
        tasks: &tasks,
        budget: &budget,
        sender: &sender,
        shutdown: &task_shutdown,
        counters: &counters,
        connection_panics: connection_panics.as_ref(),
    };
    for market_config in &config.markets {
        let rest = rest_clients[&market_config.market].clone();
        n_tasks = spawner.spawn_market_tasks(market_config, n_tasks, rest);
    }
    drop(sender);
    if let Some(listener) = metrics_listener {
        match listener.local_addr() {
            Ok(address) => info!(%address, "serving /metrics and /health"),
            Err(error) => warn!(%error, "metrics listener has no local address"),
        }
        tasks.spawn(crate::metrics::server::serve(
            listener,
            counters.clone(),
            health,
            task_shutdown.child_token(),
        ));
    }

    runtime.run_until(&mut receiver, &shutdown).await;

    info!("stopping: closing connections");
    task_shutdown.cancel();
    tasks.close();
    let deadline = Instant::now() + config.shutdown_deadline;
    let stop = runtime.stop(&mut receiver, &tasks);
    match tokio::time::timeout_at(deadline, stop).await {
        Ok(Ok(())) => {
            info!("stopped cleanly");
            Ok(())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            error!(deadline_ms = config.shutdown_deadline.as_millis() as u64, "shutdown deadline passed; exiting with work left (the WAL holds every acknowledged frame)");
            Err(anyhow::anyhow!("shutdown deadline passed"))
        }
    }
}

/// What every spawned connection and clock task shares.
struct TaskSpawner<'a> {
    tasks: &'a TaskTracker,
    /// One budget for every connection: Binance counts handshakes per IP.
    budget: &'a Arc<HandshakeBudget>,
    sender: &'a mpsc::Sender<Inbound>,
    shutdown: &'a CancellationToken,
    counters: &'a Arc<Counters>,
    connection_panics: Option<&'a Arc<tokio::sync::Notify>>,
}

impl TaskSpawner<'_> {
    /// Spawns the connection tasks of one market (streams spread over
    /// connections of at most `streams_per_connection`) and its clock task.
    /// Returns the number of connection tasks so far, for numbering.
    fn spawn_market_tasks(
        &self,
        market_config: &MarketConfig,
        n_tasks_before: usize,
        rest: RestClient,
    ) -> usize {
        let market = market_config.market;
        let profile = crate::binance::markets::MarketProfile::of(market);
        // Streams grouped by route (USD-M: `/public`, `/market`), each
        // group spread over connections of at most streams_per_connection.
        let mut by_route: BTreeMap<crate::binance::markets::Route, Vec<_>> = BTreeMap::new();
        for symbol in &market_config.symbols {
            for kind in &market_config.streams {
                by_route
                    .entry(profile.route(*kind))
                    .or_default()
                    .push((symbol.clone(), *kind));
            }
        }
        let mut n_tasks = n_tasks_before;
        let activity = Arc::new(crate::binance::ws::MarketActivity::default());
        let chunks = by_route.into_iter().flat_map(|(route, streams)| {
            streams
                .chunks(market_config.streams_per_connection.max(1))
                .map(|chunk| (route, chunk.to_vec()))
                .collect::<Vec<_>>()
        });
        for (route, chunk) in chunks {
            let plan = ConnectionPlan {
                market,
                task: n_tasks,
                ws_base_url: market_config.ws_url.clone(),
                route,
                streams: chunk,
                activity: activity.clone(),
            };
            n_tasks += 1;
            self.tasks.spawn(supervise_connection(
                plan,
                market_config.connection.clone(),
                self.budget.clone(),
                self.sender.clone(),
                self.shutdown.child_token(),
                self.counters.clone(),
                self.connection_panics.cloned(),
            ));
        }
        let interval = market_config.time_check_interval;
        let weight_symbol = market_config.symbols.first().cloned();
        self.tasks.spawn(run_clock_checks(
            market,
            rest,
            interval,
            weight_symbol,
            self.sender.clone(),
            self.shutdown.child_token(),
        ));
        n_tasks
    }
}

/// Runs one connection task and restarts it whenever it ends or panics
/// before shutdown, after a pause (1 s doubling to 60 s, reset after an
/// hour without a restart), counted and logged: its streams are never left
/// dark. The task itself reconnects forever, so a restart means a bug.
async fn supervise_connection(
    plan: ConnectionPlan,
    settings: crate::binance::ws::ConnectionSettings,
    budget: Arc<HandshakeBudget>,
    sender: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
    panics: Option<Arc<tokio::sync::Notify>>,
) {
    let mut n_restarts_in_a_row: u32 = 0;
    loop {
        let started = Instant::now();
        let connection = run_connection(
            plan.clone(),
            settings.clone(),
            budget.clone(),
            sender.clone(),
            shutdown.child_token(),
            counters.clone(),
        );
        let panics = panics.clone();
        let mut task = tokio::spawn(async move {
            match panics {
                Some(panics) => tokio::select! {
                    () = connection => {}
                    () = panics.notified() => panic!("injected connection task panic"),
                },
                None => connection.await,
            }
        });
        let ended = tokio::select! {
            ended = &mut task => ended,
            () = shutdown.cancelled() => {
                // The task sees the same token and ends by itself, handing
                // over what it holds; one that does not is aborted, never
                // left detached.
                if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                    task.abort();
                }
                return;
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        Counters::add(&counters.connection_task_restarts, 1);
        match ended {
            Ok(()) => {
                error!(market = %plan.market, task = plan.task, "connection task ended by itself; restarting it")
            }
            Err(error) => {
                error!(market = %plan.market, task = plan.task, %error, "connection task panicked; restarting it")
            }
        }
        if started.elapsed() > Duration::from_secs(3600) {
            n_restarts_in_a_row = 0;
        }
        let pause = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow(n_restarts_in_a_row.min(6)))
            .min(Duration::from_secs(60));
        n_restarts_in_a_row = n_restarts_in_a_row.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How often the REST weight limit is read again from `exchangeInfo`
/// (Binance changes it now and then; it is also read at every start).
const WEIGHT_LIMIT_REFRESH: Duration = Duration::from_secs(3600);

/// Asks `/api/v3/time` every `interval` and reports the host clock's
/// offset; reads the REST weight limit again every [`WEIGHT_LIMIT_REFRESH`].
async fn run_clock_checks(
    market: Market,
    rest: RestClient,
    interval: Duration,
    weight_symbol: Option<crate::domain::Symbol>,
    sender: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    let mut weight_refresh =
        tokio::time::interval_at(Instant::now() + WEIGHT_LIMIT_REFRESH, WEIGHT_LIMIT_REFRESH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = weight_refresh.tick() => {
                if let Some(symbol) = &weight_symbol {
                    // REST waits (weight, back-off, a hanging server) never hold up a stop.
                    let refreshed = tokio::select! {
                        () = shutdown.cancelled() => return,
                        refreshed = rest.refresh_weight_limit(symbol) => refreshed,
                    };
                    if let Err(error) = refreshed {
                        debug!(%market, %error, "weight limit not refreshed; keeping the one known");
                    }
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        let before = now_us();
        let answered = tokio::select! {
            () = shutdown.cancelled() => return,
            answered = rest.server_time() => answered,
        };
        match answered {
            Ok(server_time) => {
                let after = now_us();
                let offset_us = (before + after) / 2 - server_time;
                if sender
                    .send(Inbound::ClockSample {
                        market,
                        server_time,
                        offset_us,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) if error.is_fatal() => {
                let _ = sender
                    .send(Inbound::Refused {
                        market,
                        message: error.to_string(),
                    })
                    .await;
                return;
            }
            Err(error) => debug!(%market, %error, "server time not available"),
        }
    }
}

/// Checks the configured symbols against `exchangeInfo`: an unknown symbol
/// is an error, one that is not trading a warning. REST being unreachable
/// is only a warning: recording must not wait for it.
async fn check_symbols(market_config: &MarketConfig, rest: &RestClient) -> anyhow::Result<()> {
    if !market_config.check_symbols {
        // The weight limit is still read: it changes over time.
        if let Some(symbol) = market_config.symbols.first() {
            if let Err(error) = rest.refresh_weight_limit(symbol).await {
                warn!(market = %market_config.market, %error, "cannot read the REST weight limit; using the default");
            }
        }
        return Ok(());
    }
    let market = market_config.market;
    let names: Vec<String> = market_config
        .symbols
        .iter()
        .map(ToString::to_string)
        .collect();
    let statuses = match rest.symbol_statuses(&names).await {
        Ok(statuses) => statuses,
        Err(RestError::Status {
            code: Some(-1121), ..
        }) => {
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
            return Ok(());
        }
    };
    for name in &names {
        match statuses.iter().find(|status| &status.symbol == name) {
            None => anyhow::bail!(
                "config key `markets.{market}.symbols`: {name} is unknown to the exchange"
            ),
            Some(status) if status.status != "TRADING" => {
                warn!(%market, symbol = %name, status = %status.status, "symbol is not trading; its streams may stay silent")
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn checkpoint_record(checkpoint: &Checkpoint) -> Record {
    Record {
        kind: RecordKind::Checkpoint,
        recv_time_us: now_us(),
        payload: serde_json::to_vec(checkpoint).expect("checkpoints always serialise"),
    }
}

/// A WS frame record's payload: one byte of market tag, then the frame.
fn frame_record(market: Market, recv_time: TimeUs, bytes: &[u8]) -> Record {
    let mut payload = Vec::with_capacity(bytes.len() + 1);
    payload.push(market.wal_tag());
    payload.extend_from_slice(bytes);
    Record {
        kind: RecordKind::WsFrame,
        recv_time_us: recv_time,
        payload,
    }
}

/// What a durable record turned into.
#[allow(clippy::large_enum_variant)] // see `Decoded`
enum Applied {
    Frame {
        market: Market,
        segment: SegmentId,
        decoded: Decoded,
    },
    Checkpoint(Checkpoint),
    Fill {
        segment: SegmentId,
        report: FillReport,
    },
}

/// Most rows in one WAL record of a fill report (about 2 MB of JSON; the
/// WAL takes records up to 64 MiB).
const FILL_RECORD_MAX_ROWS: usize = 10_000;

/// A fill report's record: its JSON.
fn fill_record(report: &FillReport) -> Record {
    Record {
        kind: RecordKind::RestRows,
        recv_time_us: now_us(),
        payload: serde_json::to_vec(report).expect("fill reports always serialise"),
    }
}

/// Decodes a durable record; undecodable frames are returned for quarantine.
fn decode_record(segment: SegmentId, record: &Record) -> Result<Option<Applied>, QuarantinedFrame> {
    match record.kind {
        RecordKind::WsFrame => {
            let Some((&tag, frame)) = record.payload.split_first() else {
                return Ok(None);
            };
            let Some(market) = Market::from_wal_tag(tag) else {
                warn!(tag, "WAL frame of an unknown market tag; skipped");
                return Ok(None);
            };
            match decode_frame(market, frame, record.recv_time_us) {
                Ok(decoded) => Ok(Some(Applied::Frame {
                    market,
                    segment,
                    decoded,
                })),
                Err(error) => Err(QuarantinedFrame {
                    market,
                    recv_time_us: record.recv_time_us,
                    error: error.to_string(),
                    frame: String::from_utf8_lossy(frame).into_owned(),
                }),
            }
        }
        RecordKind::Checkpoint => match serde_json::from_slice(&record.payload) {
            Ok(checkpoint) => Ok(Some(Applied::Checkpoint(checkpoint))),
            Err(error) => {
                warn!(%error, "WAL checkpoint record not understood; skipped");
                Ok(None)
            }
        },
        RecordKind::RestRows => match serde_json::from_slice(&record.payload) {
            Ok(report) => Ok(Some(Applied::Fill { segment, report })),
            Err(error) => {
                // Written by this program, so this is damage or a bug; the
                // rows are fetched again when the hour is judged.
                warn!(%error, "WAL fill record not understood; skipped");
                Ok(None)
            }
        },
    }
}

async fn open_and_replay(
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
                        })) => state.apply(market, segment, decoded),
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

/// The outcome of one WAL batch, computed on a blocking thread.
struct BatchOutcome {
    wal: Option<WalWriter>,
    /// On failure: the records, to append again after reopening.
    result: Result<Vec<Applied>, (WalError, Vec<Record>)>,
    n_frames: u64,
    n_quarantined: u64,
    /// Bytes of the WAL's segments after the batch (and any deletion).
    wal_bytes: Option<u64>,
    /// Time the appends and the fsync took, when they succeeded.
    write_seconds: Option<f64>,
}

/// A fill round running: which stream-hour it serves, and how to cut it.
struct RunningFill {
    key: StreamKey,
    hour: Hour,
    declared: bool,
    /// The hour's deadline in exchange time (see [`FillJob::deadline`]).
    deadline: Option<TimeUs>,
    /// Fired at the deadline: the round stops and reports what it has.
    cut: CancellationToken,
    started: Instant,
}

/// Hours waiting on REST are logged at most this often (real time), so a
/// long REST outage does not flood the log.
const FILL_WAITS_LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Runtime {
    config: Arc<Config>,
    wal_config: WalConfig,
    wal_fs: Arc<dyn WalFs>,
    counters: Arc<Counters>,
    state: State,
    /// `None` while a batch job holds it.
    wal: Option<WalWriter>,
    pending: Vec<Record>,
    pending_since: Option<Instant>,
    batch: Option<JoinHandle<BatchOutcome>>,
    seals: JoinSet<SealOutcome>,
    seal_faults: Option<SealFaults>,
    seal_pause_until: Option<Instant>,
    /// Fill rounds running, and which stream-hour each is for (a task that
    /// panics says only its id).
    fills: JoinSet<FillReport>,
    fill_tasks: HashMap<tokio::task::Id, RunningFill>,
    /// Rounds waiting for a free slot, oldest first.
    fill_queue: std::collections::VecDeque<FillJob>,
    /// Each market's exchange clock against the host's: a round's deadline
    /// (exchange time) as a host instant, so its weight wait can tell early
    /// that REST cannot answer in time.
    paces: HashMap<Market, ClockPace>,
    /// When hours waiting on fill rounds were last logged (at most every
    /// [`FILL_WAITS_LOG_INTERVAL`]).
    fill_waits_logged_at: Option<Instant>,
    rest_clients: BTreeMap<Market, RestClient>,
    /// Origin of the [`MonoMs`] clock the state's retry times use.
    started: Instant,
    /// Consecutive failed WAL batches (disk full, read-only filesystem),
    /// and when the next may be tried (doubling back-off up to 30 s).
    wal_failures: u32,
    wal_retry_at: Option<Instant>,
    /// The start-up symbol check, running beside the recording.
    symbol_check: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set when the runtime cannot go on; returned by the stop.
    fatal: Option<anyhow::Error>,
    /// The WAL writer went with a failed batch task: nothing more can be
    /// made durable, so the stop skips the final flush.
    wal_lost: bool,
    /// systemd readiness, status and watchdog keep-alives.
    service: ServiceNotifier,
    /// Stream links connected and not yet lost, per market.
    links_up: BTreeMap<Market, u64>,
    /// When the last WAL batch committed (the watchdog's proof of progress).
    last_commit: Instant,
    /// The newest hour sealed in this run, for the status line.
    last_sealed: Option<Hour>,
    /// What `/health` judges, updated as the loop turns.
    health: Arc<HealthBoard>,
    /// When the running WAL batch started, and the receive time of its
    /// oldest frame (for the latency histograms).
    batch_started: Option<Instant>,
    batch_oldest_recv_us: Option<TimeUs>,
    /// When the periodic summary was last logged.
    summary_logged_at: Instant,
    /// When `/status`'s rows held per stream were last refreshed.
    status_refreshed_at: Instant,
    /// Each configured stream's handles in the per-stream metric families,
    /// made once (no label strings built per batch).
    stream_metrics: HashMap<StreamKey, (Counter, GaugeF64)>,
    /// The upload task's inbox, when `[storage] destination` is set: each
    /// file written by a seal is handed over (never waiting).
    upload: Option<crate::upload::UploadHandle>,
}

/// The per-stream metric handles of every configured stream.
fn stream_metrics(config: &Config, counters: &Counters) -> HashMap<StreamKey, (Counter, GaugeF64)> {
    let mut handles = HashMap::new();
    for market_config in &config.markets {
        for symbol in &market_config.symbols {
            for kind in &market_config.streams {
                let labels = StreamLabels {
                    market: market_config.market.name().to_owned(),
                    stream: stream_name(symbol, *kind),
                };
                let rows = counters.rows_by_stream.get_or_create(&labels).clone();
                let last_event = counters.last_event_time.get_or_create(&labels).clone();
                let key = StreamKey {
                    market: market_config.market,
                    symbol: symbol.clone(),
                    kind: *kind,
                };
                handles.insert(key, (rows, last_event));
            }
        }
    }
    handles
}

/// A summary log line this often, so an operator reading only the journal
/// sees progress.
const SUMMARY_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Runtime {
    async fn run_until(
        &mut self,
        receiver: &mut mpsc::Receiver<Inbound>,
        shutdown: &CancellationToken,
    ) {
        // Plans are also made when nothing arrives, for fill retries that fall due.
        let mut planning = tokio::time::interval(Duration::from_millis(200));
        planning.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.fatal.is_some() {
                return;
            }
            self.maybe_start_batch();
            let sync_deadline = self.sync_deadline();
            // Every arm but a bare frame or the sync timer may change a plan.
            let mut replan = true;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                outcome = wait_batch(&mut self.batch) => match outcome {
                    Ok(outcome) => self.finish_batch(outcome).await,
                    Err(error) => {
                        // The WAL writer went with the task: nothing more can
                        // be acknowledged. Stop; the next start replays the WAL.
                        error!(%error, "WAL batch task failed; stopping");
                        self.fatal = Some(anyhow::anyhow!("WAL batch task failed: {error}"));
                        self.wal_lost = true;
                        return;
                    }
                },
                checked = wait_opt(&mut self.symbol_check) => match checked {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        // Logged once, by main, with the exit status.
                        self.fatal = Some(error);
                        return;
                    }
                    Err(error) => warn!(%error, "symbol check task failed; recording anyway"),
                },
                Some(joined) = self.seals.join_next(), if !self.seals.is_empty() => self.finish_seal(joined),
                Some(joined) = self.fills.join_next_with_id(), if !self.fills.is_empty() => self.finish_fill(joined),
                _ = planning.tick() => {}
                // Not while a full batch waits: the channel then fills and
                // the connection tasks wait (see MAX_BATCH_RECORDS).
                input = receiver.recv(), if self.pending.len() < MAX_BATCH_RECORDS => match input {
                    Some(input) => {
                        // A frame changes nothing the plan reads until its
                        // batch is applied: planning per frame was
                        // O(streams) per frame, and with a thousand
                        // streams the loop fell behind the feed (the
                        // exchange clock lagged a cold start by a minute).
                        replan = !matches!(input, Inbound::Frame { .. });
                        self.take_input(input);
                        if self.fatal.is_some() {
                            return;
                        }
                    }
                    None => {
                        warn!("every connection task ended");
                        shutdown.cancelled().await;
                        return;
                    }
                },
                _ = sleep_until_opt(sync_deadline) => replan = false,
            }
            if replan {
                self.plan_seals();
            }
            self.tell_service();
        }
    }

    /// Readiness, status and keep-alives for systemd (nothing outside it).
    fn tell_service(&mut self) {
        let wal = WalProgress {
            idle: self.pending.is_empty() && self.batch.is_none(),
            last_commit: self.last_commit,
        };
        let figures = || {
            let counters = self.counters.snapshot();
            StatusFigures {
                n_streams: self
                    .config
                    .markets
                    .iter()
                    .map(|market| market.symbols.len() * market.streams.len())
                    .sum(),
                links_up: self.links_up.values().sum(),
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
                links_up = self.links_up.values().sum::<u64>(),
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
        let waiting_since = match (self.pending_since, self.batch_started) {
            (Some(pending), Some(batch)) => Some(pending.min(batch)),
            (pending, batch) => pending.or(batch),
        };
        let links_up = &self.links_up;
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
    fn observe_streams(&self, seen: HashMap<StreamKey, (u64, TimeUs)>) {
        if seen.is_empty() {
            return;
        }
        let now = Instant::now();
        for (key, (n_rows, newest_event)) in &seen {
            // Only configured streams have handles: the label sets stay bounded.
            if let Some((rows, last_event)) = self.stream_metrics.get(key) {
                rows.inc_by(*n_rows);
                last_event.set(*newest_event as f64 / 1e6);
            }
        }
        self.health.update(|inputs| {
            for (key, (_, newest_event)) in &seen {
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

    fn take_input(&mut self, input: Inbound) {
        match input {
            Inbound::Frame {
                market,
                recv_time,
                bytes,
            } => {
                Counters::add(&self.counters.frames_received, 1);
                self.pending.push(frame_record(market, recv_time, &bytes));
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Inbound::Connected { market, .. } => {
                Counters::add(&self.counters.connections, 1);
                *self.links_up.entry(market).or_default() += 1;
                Counters::set(&self.counters.links_up, self.links_up.values().sum());
                self.service.subscribed(market);
            }
            Inbound::Disconnected {
                market,
                task,
                link,
                reason,
                streams,
            } => {
                Counters::add(&self.counters.disconnects, 1);
                let links = self.links_up.entry(market).or_default();
                *links = links.saturating_sub(1);
                Counters::set(&self.counters.links_up, self.links_up.values().sum());
                info!(%market, task, link, %reason, "stream link lost; its streams may have a gap until the replacement delivers");
                // The window is durable like the frames, so a crash does not forget it.
                let checkpoint = Checkpoint::LinkLost {
                    market: market.name().to_owned(),
                    streams: streams
                        .iter()
                        .map(|(symbol, kind)| stream_name(symbol, *kind))
                        .collect(),
                    exchange_time: self.state.exchange_time(market),
                };
                self.state.apply_checkpoint(checkpoint.clone());
                self.pending.push(checkpoint_record(&checkpoint));
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Inbound::ClockSample {
                market,
                server_time,
                offset_us,
            } => {
                self.state.add_clock_sample(market, server_time, offset_us);
                self.counters
                    .clock_offset
                    .get_or_create(&MarketLabels {
                        market: market.name().to_owned(),
                    })
                    .set(offset_us as f64 / 1e6);
            }
            Inbound::Refused { market, message } => {
                // Logged once, by main, with the exit status.
                self.fatal
                    .get_or_insert_with(|| anyhow::anyhow!("market {market}: {message}"));
            }
        }
    }

    fn sync_deadline(&self) -> Option<Instant> {
        if self.batch.is_some() {
            return None;
        }
        let since = self.pending_since?;
        let deadline = match self.config.fsync {
            FsyncPolicy::EveryRecord => since,
            FsyncPolicy::Interval(interval) => since + interval,
        };
        Some(
            self.wal_retry_at
                .map_or(deadline, |retry_at| retry_at.max(deadline)),
        )
    }

    /// Starts a WAL batch when one is due and none is running: group commit.
    fn maybe_start_batch(&mut self) {
        if self.batch.is_some() || self.pending.is_empty() {
            return;
        }
        if self
            .wal_retry_at
            .is_some_and(|retry_at| Instant::now() < retry_at)
        {
            return;
        }
        let due = self.pending.len() >= MAX_BATCH_RECORDS
            || self
                .sync_deadline()
                .is_some_and(|deadline| deadline <= Instant::now());
        if !due {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        self.pending_since = None;
        self.batch_started = Some(Instant::now());
        self.batch_oldest_recv_us = records
            .iter()
            .filter(|record| record.kind == RecordKind::WsFrame)
            .map(|record| record.recv_time_us)
            .min();
        let wal = self.wal.take();
        let checkpoints: Vec<Record> = self
            .state
            .checkpoints()
            .iter()
            .map(checkpoint_record)
            .collect();
        let pinned = self.state.oldest_pinned_segment();
        let wal_config = self.wal_config.clone();
        let wal_fs = self.wal_fs.clone();
        let n_buffered = (records.len() + self.pending.len()) as u64;
        Counters::raise(&self.counters.frames_buffered_max, n_buffered);
        let quarantine_dir = self.config.quarantine_dir.clone();
        self.batch = Some(tokio::task::spawn_blocking(move || {
            write_batch(
                wal,
                wal_config,
                wal_fs,
                records,
                checkpoints,
                pinned,
                &quarantine_dir,
            )
        }));
    }

    async fn finish_batch(&mut self, outcome: BatchOutcome) {
        self.wal = outcome.wal;
        self.batch_started = None;
        Counters::add(&self.counters.frames_quarantined, outcome.n_quarantined);
        if let Some(wal_bytes) = outcome.wal_bytes {
            Counters::set(&self.counters.wal_bytes, wal_bytes);
        }
        match outcome.result {
            Ok(applied) => {
                if self.wal_failures > 0 {
                    info!(n_failures = self.wal_failures, "WAL writes succeed again");
                    self.wal_failures = 0;
                    self.wal_retry_at = None;
                }
                Counters::add(&self.counters.wal_syncs, 1);
                self.last_commit = Instant::now();
                if let Some(seconds) = outcome.write_seconds {
                    self.counters.wal_fsync_seconds.observe(seconds);
                }
                if let Some(oldest) = self.batch_oldest_recv_us {
                    let waited_us = now_us().saturating_sub(oldest).max(0);
                    self.counters
                        .receive_to_durable_seconds
                        .observe(waited_us as f64 / 1e6);
                }
                Counters::add(&self.counters.frames_durable, outcome.n_frames);
                let now = self.now_ms();
                let mut seen: HashMap<StreamKey, (u64, TimeUs)> = HashMap::new();
                for item in applied {
                    match item {
                        Applied::Frame {
                            market,
                            segment,
                            decoded,
                        } => {
                            if let Decoded::Row {
                                key, event_time, ..
                            }
                            | Decoded::KlineUpdate { key, event_time } = &decoded
                            {
                                let is_row = u64::from(matches!(decoded, Decoded::Row { .. }));
                                match seen.get_mut(key) {
                                    Some((n_rows, newest)) => {
                                        *n_rows += is_row;
                                        *newest = (*newest).max(*event_time);
                                    }
                                    None => {
                                        seen.insert(key.clone(), (is_row, *event_time));
                                    }
                                }
                            }
                            self.state.apply(market, segment, decoded)
                        }
                        Applied::Checkpoint(_) => {}
                        Applied::Fill { segment, report } => {
                            self.state.apply_fill(segment, report, now)
                        }
                    }
                }
                self.observe_streams(seen);
                let rejected = self.state.take_rejected();
                if !rejected.is_empty() {
                    // Rare (a lying feed), small, and already durable in the WAL.
                    let directory = self.config.quarantine_dir.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        quarantine::append(&directory, &rejected)
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        error!(
                            ?written,
                            "cannot write implausible rows to the quarantine; they stay in the WAL"
                        );
                    }
                }
            }
            Err((error, _)) if error.retry() == crate::wal::Retry::Never => {
                // Retrying cannot help (a segment this release cannot read,
                // a bad config): stop, loudly, rather than retry forever.
                // What was acknowledged is in the WAL.
                error!(%error, "WAL error that no retry can fix; stopping");
                self.fatal = Some(anyhow::anyhow!("WAL: {error}"));
                self.wal_lost = true;
            }
            Err((error, mut records)) => {
                // Nothing of the batch was acknowledged: it waits in memory
                // (the channel then fills and the links are slowed, then
                // given up; REST fills what they miss) and is written to a
                // new segment once the disk takes it again.
                self.wal_failures += 1;
                Counters::add(&self.counters.wal_write_failures, 1);
                let backoff = Duration::from_secs(1)
                    .saturating_mul(2u32.saturating_pow(self.wal_failures.min(16) - 1))
                    .min(Duration::from_secs(30));
                if self.wal_failures == 1 || self.wal_failures.is_multiple_of(10) {
                    error!(%error, n_records = records.len(), n_failures = self.wal_failures, retry_in_ms = backoff.as_millis() as u64, "WAL write failed; nothing in this batch was acknowledged, retrying in a new segment");
                }
                records.append(&mut self.pending);
                self.pending = records;
                self.pending_since = Some(Instant::now());
                self.wal_retry_at = Some(Instant::now() + backoff);
            }
        }
    }

    fn now_ms(&self) -> MonoMs {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the seals and fill rounds the state asks for.
    fn plan_seals(&mut self) {
        let seals_paused = self
            .seal_pause_until
            .is_some_and(|until| Instant::now() < until);
        let free = if seals_paused {
            0
        } else {
            self.config
                .max_concurrent_seals
                .saturating_sub(self.seals.len())
        };
        self.observe_paces();
        self.cut_overdue_fills();
        while self.fills.len() < self.config.fill.max_concurrent_rounds {
            let Some(job) = self.next_queued_fill() else {
                break;
            };
            self.start_fill(job);
        }
        self.log_fill_waits();
        let now = self.now_ms();
        for job in self.state.plan(free, now) {
            match job {
                Job::Seal(job) => {
                    let data_dir = self.config.data_dir.clone();
                    let faults = self.seal_faults.clone();
                    let counters = self.counters.clone();
                    self.seals.spawn_blocking(move || {
                        let started = std::time::Instant::now();
                        let outcome = execute_seal(&data_dir, faults.as_ref(), job);
                        counters
                            .seal_seconds
                            .observe(started.elapsed().as_secs_f64());
                        outcome
                    });
                }
                Job::Fill(job) => self.start_fill(job),
                Job::Answered(report) => self.queue_fill_report(report),
            }
        }
    }

    /// The queued round to start next: the oldest one whose hour waits to
    /// seal (it has a deadline), else the oldest declared retry. Declared
    /// retries fill every free slot, but never hold one a seal needs first.
    fn next_queued_fill(&mut self) -> Option<FillJob> {
        let index = self
            .fill_queue
            .iter()
            .position(|job| job.deadline.is_some())
            .unwrap_or(0);
        self.fill_queue.remove(index)
    }

    /// Starts a fill round, or queues it while `fill.max_concurrent_rounds`
    /// run (the queue holds at most one round per stream-hour: the state
    /// marks each in flight until its report comes back).
    fn start_fill(&mut self, job: FillJob) {
        if self.fills.len() >= self.config.fill.max_concurrent_rounds {
            self.fill_queue.push_back(job);
            Counters::raise(
                &self.counters.fill_rounds_queued_max,
                self.fill_queue.len() as u64,
            );
            return;
        }
        let Some(rest) = self.rest_clients.get(&job.key.market).cloned() else {
            return;
        };
        let cut = CancellationToken::new();
        let retry = RetryPolicy {
            max_attempts: self.config.fill.max_attempts,
            deadline: self.host_deadline(&job),
            cancel: Some(cut.clone()),
            ..RetryPolicy::default()
        };
        let running = RunningFill {
            key: job.key.clone(),
            hour: job.hour,
            declared: job.declared,
            deadline: job.deadline,
            cut,
            started: Instant::now(),
        };
        let handle = self.fills.spawn(fill::run_fill(rest, job, retry));
        self.fill_tasks.insert(handle.id(), running);
    }

    /// Samples each market's exchange clock for [`ClockPace`].
    fn observe_paces(&mut self) {
        let now = self.now_ms();
        for market in self.rest_clients.keys() {
            if let Some(exchange_now) = self.state.exchange_time(*market) {
                self.paces
                    .entry(*market)
                    .or_default()
                    .observe(now, exchange_now);
            }
        }
    }

    /// The host instant the exchange clock reaches `job`'s deadline at its
    /// measured pace: a weight wait past it fails at once
    /// ([`RestError::OutOfTime`]) and the
    /// hour seals declared now, rather than all such hours at the deadline.
    /// `None` (no early give-up) for declared retries or before the pace is
    /// known; the deadline itself is held by [`Runtime::cut_overdue_fills`].
    fn host_deadline(&self, job: &FillJob) -> Option<Instant> {
        let deadline = job.deadline?;
        let exchange_now = self.state.exchange_time(job.key.market)?;
        let ahead = self
            .paces
            .get(&job.key.market)?
            .host_time_until(exchange_now, deadline)?;
        // A page sent just before the cut is wasted, and the hour still has
        // to be written: a tenth of the time left is kept for both. The
        // measured pace lags when the loop is busy, which errs late.
        Some(Instant::now() + ahead.mul_f64(0.9))
    }

    /// Holds every round to its hour's deadline, checked against the
    /// market's exchange clock (the clock hours seal on): a running round
    /// is cut and reports what it fetched; a queued one is not started and
    /// reports nothing, so its hour is judged again and sealed with its
    /// holes declared (then retried as declared holes, or by `backfill`).
    fn cut_overdue_fills(&mut self) {
        let state = &self.state;
        for running in self.fill_tasks.values_mut() {
            let exchange_now = state.exchange_time(running.key.market);
            if state::past_deadline(running.deadline, exchange_now) && !running.cut.is_cancelled() {
                running.cut.cancel();
                Counters::add(&self.counters.fill_rounds_cut, 1);
                debug!(key = %running.key, hour = %running.hour, running_ms = running.started.elapsed().as_millis() as u64, "fill round cut at its deadline; its rows are kept, the rest declared");
            }
        }
        let (overdue, waiting): (std::collections::VecDeque<FillJob>, _) =
            std::mem::take(&mut self.fill_queue)
                .into_iter()
                .partition(|job| job.is_overdue(state.exchange_time(job.key.market)));
        self.fill_queue = waiting;
        for job in overdue {
            Counters::add(&self.counters.fill_rounds_cut, 1);
            debug!(key = %job.key, hour = %job.hour, "fill round still queued at its deadline; not started");
            self.queue_fill_report(FillReport::not_started(&job));
        }
    }

    /// Says, at most every [`FILL_WAITS_LOG_INTERVAL`], how many hours wait
    /// on REST, for which streams (counted by kind, with a few names), and
    /// why: the queue is full (every `fill.max_concurrent_rounds` slot is
    /// busy), the weight budget of the window is spent, a 429's back-off is
    /// in force, or REST is slow to answer. One line, however many streams.
    fn log_fill_waits(&mut self) {
        if self.fill_tasks.is_empty() && self.fill_queue.is_empty() {
            return;
        }
        if self
            .fill_waits_logged_at
            .is_some_and(|at| at.elapsed() < FILL_WAITS_LOG_INTERVAL)
        {
            return;
        }
        self.fill_waits_logged_at = Some(Instant::now());
        let n_rounds_running = self.fill_tasks.len();
        let n_rounds_queued = self.fill_queue.len();
        let waiting: Vec<(&StreamKey, bool)> = self
            .fill_tasks
            .values()
            .map(|running| (&running.key, running.declared))
            .chain(self.fill_queue.iter().map(|job| (&job.key, job.declared)))
            .collect();
        let n_declared_retries = waiting.iter().filter(|(_, declared)| *declared).count();
        let n_of_kind = |wanted: fn(StreamKind) -> bool| {
            waiting
                .iter()
                .filter(|(key, declared)| !declared && wanted(key.kind))
                .count()
        };
        let n_trade = n_of_kind(|kind| kind == StreamKind::Trade);
        let n_agg_trade = n_of_kind(|kind| kind == StreamKind::AggTrade);
        let n_kline = n_of_kind(|kind| matches!(kind, StreamKind::Kline(_)));
        let examples: Vec<String> = waiting
            .iter()
            .filter(|(_, declared)| !declared)
            .take(3)
            .map(|(key, _)| key.to_string())
            .collect();
        let oldest_round_ms = self
            .fill_tasks
            .values()
            .map(|running| running.started.elapsed().as_millis() as u64)
            .max()
            .unwrap_or(0);
        let n_rest_requests_in_flight: usize = self
            .rest_clients
            .values()
            .map(RestClient::n_in_flight)
            .sum();
        let pacing: Vec<Pacing> = self
            .rest_clients
            .values()
            .map(|rest| rest.pacing_now(1))
            .collect();
        let why = if pacing.contains(&Pacing::BackingOff) {
            "back-off: REST answered 429 or 418, no call until Retry-After has passed"
        } else if pacing.contains(&Pacing::BudgetSpent) && n_rounds_queued > 0 {
            "weight budget: fill.weight_share of this window's limit is spent, and the queue is full"
        } else if pacing.contains(&Pacing::BudgetSpent) {
            "weight budget: fill.weight_share of this window's limit is spent"
        } else if n_rounds_queued > 0 {
            "queue full: every fill.max_concurrent_rounds slot is busy with slow REST answers"
        } else {
            "REST answers: rounds wait for pages in flight"
        };
        info!(
            n_hours_waiting = self.state.n_hours_waiting_on_fill(),
            n_trade,
            n_agg_trade,
            n_kline,
            streams = %examples.join(","),
            n_rounds_running,
            n_rounds_queued,
            n_declared_retries,
            oldest_round_ms,
            n_rest_requests_in_flight,
            rest_calls = self.counters.rest_calls.get(),
            rest_weight_used = self.counters.rest_weight_used.get(),
            why,
            "hours wait on REST fill rounds; each is cut at its fill deadline"
        );
    }

    /// Queues a fill report for the WAL: the state sees it once durable.
    fn queue_fill_report(&mut self, report: FillReport) {
        for part in report.into_parts(FILL_RECORD_MAX_ROWS) {
            self.pending.push(fill_record(&part));
        }
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// A fill round ended: its report goes through the WAL like a frame and
    /// reaches the state once durable.
    fn finish_fill(
        &mut self,
        joined: Result<(tokio::task::Id, FillReport), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, report)) => {
                self.fill_tasks.remove(&id);
                if let Some(failure) = &report.failure {
                    debug!(stream = %report.stream, hour_start = report.hour_start, %failure, n_rows = report.rows.len(), "fill round left holes open");
                }
                self.queue_fill_report(report);
            }
            Err(error) => {
                error!(%error, "fill task failed; retried later");
                if let Some(running) = self.fill_tasks.remove(&error.id()) {
                    let now = self.now_ms();
                    self.state
                        .fill_lost(&running.key, running.hour, running.declared, now);
                }
            }
        }
    }

    fn finish_seal(&mut self, joined: Result<SealOutcome, tokio::task::JoinError>) {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(error) => {
                // Unreachable in practice: every library call of a seal job
                // runs under catch_unwind. Its hour stays in flight, so its
                // WAL segments stay pinned and the next start seals it.
                Counters::add(&self.counters.seal_panics, 1);
                error!(%error, "seal task failed outside its guarded calls; its hour is sealed at the next start");
                return;
            }
        };
        match outcome.result {
            Ok(SealResult::Written {
                path,
                n_rows,
                resealed,
            }) => {
                let counter = if resealed {
                    &self.counters.files_resealed
                } else {
                    &self.counters.files_sealed
                };
                Counters::add(counter, 1);
                info!(key = %outcome.job_key, hour = %outcome.hour, n_rows, resealed, path = %path.display(), "hour sealed");
                self.state.seal_finished(&outcome.job_key, outcome.hour);
                self.last_sealed = self.last_sealed.max(Some(outcome.hour));
                if let Some(upload) = &self.upload {
                    upload.sealed(&path);
                }
            }
            Ok(SealResult::Unchanged) => self.state.seal_finished(&outcome.job_key, outcome.hour),
            Err(failure) => {
                Counters::add(&self.counters.seal_failures, 1);
                if failure.panicked {
                    Counters::add(&self.counters.seal_panics, 1);
                }
                error!(key = %outcome.job_key, hour = %outcome.hour, message = %failure.message, panicked = failure.panicked, "seal failed; retried in 5 s with the same rows, holes and coverage");
                self.state.seal_failed(failure.job);
                self.seal_pause_until = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// The orderly stop after the connections were told to close.
    async fn stop(
        mut self,
        receiver: &mut mpsc::Receiver<Inbound>,
        tasks: &TaskTracker,
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
        if let Some(batch) = self.batch.take() {
            let outcome = batch.await.context("WAL batch task failed")?;
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
        self.pending_since = Some(Instant::now() - Duration::from_secs(3600));
        while !self.pending.is_empty() {
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
        match self.fatal.take() {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }
}

async fn wait_batch(
    batch: &mut Option<JoinHandle<BatchOutcome>>,
) -> Result<BatchOutcome, tokio::task::JoinError> {
    let Some(handle) = batch.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = handle.await;
    *batch = None;
    outcome
}

/// Waits for a task that may not be there (then forever); takes it when done.
async fn wait_opt<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    let Some(handle) = task.as_mut() else {
        return std::future::pending().await;
    };
    let joined = handle.await;
    *task = None;
    joined
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Frames quarantined by this process, for log throttling only.
static TOTAL_QUARANTINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Appends and syncs one batch, then decodes it. Runs on a blocking thread.
fn write_batch(
    wal: Option<WalWriter>,
    wal_config: WalConfig,
    wal_fs: Arc<dyn WalFs>,
    records: Vec<Record>,
    checkpoints: Vec<Record>,
    pinned: Option<SegmentId>,
    quarantine_dir: &Path,
) -> BatchOutcome {
    let n_frames = records
        .iter()
        .filter(|record| record.kind == RecordKind::WsFrame)
        .count() as u64;
    let mut wal = match wal {
        Some(wal) if !wal.is_failed() => wal,
        _ => match Wal::open_with_fs(wal_config, wal_fs) {
            // A failed writer is never used again (no fsync retry on the
            // same file): a new segment takes the unacknowledged records.
            Ok((wal, _report)) => wal,
            Err(error) => {
                return BatchOutcome {
                    wal: None,
                    result: Err((error, records)),
                    n_frames,
                    n_quarantined: 0,
                    wal_bytes: None,
                    write_seconds: None,
                }
            }
        },
    };
    // This batch's rows land in this segment or later ones; the state has
    // not seen them yet, so they pin it until they are applied.
    let first_written = wal.active_segment();
    let mut segments = Vec::with_capacity(records.len());
    let mut too_large = Vec::new();
    let write_started = std::time::Instant::now();
    let appended = (|| -> Result<(), WalError> {
        for record in &records {
            if wal.roll_due() {
                wal.roll()?;
                for checkpoint in &checkpoints {
                    wal.append(checkpoint)?;
                }
            }
            match wal.append(record) {
                Ok(position) => segments.push(Some(position.segment)),
                // Retrying cannot help a record over the WAL's limit (the
                // writer stays usable): it is set aside, the rest go on.
                Err(WalError::RecordTooLarge { len, max }) => {
                    segments.push(None);
                    too_large.push((len, max));
                }
                Err(error) => return Err(error),
            }
        }
        wal.sync()
    })();
    if let Err(error) = appended {
        return BatchOutcome {
            wal: Some(wal),
            result: Err((error, records)),
            n_frames,
            n_quarantined: 0,
            wal_bytes: None,
            write_seconds: None,
        };
    }
    if let Some(upto) = deletable_upto(&wal.segments(), first_written, pinned) {
        match wal.delete_segments_upto(upto) {
            Ok(deleted) => debug!(
                ?deleted,
                "WAL segments deleted: every hour they fed is sealed"
            ),
            Err(error) => warn!(%error, "cannot delete WAL segments; will retry"),
        }
    }
    let write_seconds = write_started.elapsed().as_secs_f64();
    let wal_bytes = wal.bytes_on_disk();
    let mut applied = Vec::with_capacity(records.len());
    let mut quarantined = Vec::new();
    for (record, segment) in records.iter().zip(segments) {
        let Some(segment) = segment else {
            // Kept in the quarantine in part: it cannot be made durable whole.
            const KEPT_BYTES: usize = 4096;
            let market = record
                .payload
                .first()
                .and_then(|tag| Market::from_wal_tag(*tag))
                .unwrap_or(Market::Spot);
            let kept = &record.payload[..record.payload.len().min(KEPT_BYTES)];
            quarantined.push(QuarantinedFrame {
                market,
                recv_time_us: record.recv_time_us,
                error: format!(
                    "record of {} bytes is over the WAL's limit; not recorded (first {KEPT_BYTES} bytes kept)",
                    record.payload.len()
                ),
                frame: String::from_utf8_lossy(kept).into_owned(),
            });
            continue;
        };
        match decode_record(segment, record) {
            Ok(Some(item)) => applied.push(item),
            Ok(None) => {}
            Err(frame) => quarantined.push(frame),
        }
    }
    let n_quarantined = quarantined.len() as u64;
    if !quarantined.is_empty() {
        // Logged once for the first frame, then at each power of ten, so a
        // flood of bad frames cannot flood the log; the counter has them all.
        let total_before =
            TOTAL_QUARANTINED.fetch_add(n_quarantined, std::sync::atomic::Ordering::Relaxed);
        let total_after = total_before + n_quarantined;
        if total_before == 0 || total_before.ilog10() != total_after.ilog10() {
            warn!(total = total_after, first_error = %quarantined[0].error, "frames could not be decoded; kept in quarantine");
        }
        if let Err(error) = quarantine::append(quarantine_dir, &quarantined) {
            error!(%error, "cannot write the quarantine; the frames stay in the WAL");
        }
    }
    BatchOutcome {
        wal: Some(wal),
        result: Ok(applied),
        n_frames,
        n_quarantined,
        wal_bytes: Some(wal_bytes),
        write_seconds: Some(write_seconds),
    }
}

/// Pure: the newest segment that may be deleted, when there is one on disk
/// (`segments`, in id order) to delete. Kept: every segment from the oldest
/// one holding a row of an unsealed or in-flight hour (`pinned`), and every
/// segment from `first_written`, the one the batch being applied started
/// in (its rows are not in the state yet, so they pin nothing yet).
pub(crate) fn deletable_upto(
    segments: &[SegmentId],
    first_written: SegmentId,
    pinned: Option<SegmentId>,
) -> Option<SegmentId> {
    let keep_from = pinned.map_or(first_written, |pinned| pinned.min(first_written));
    segments
        .iter()
        .copied()
        .take_while(|segment| *segment < keep_from)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_over_the_wal_limit_is_quarantined_and_the_batch_goes_on() {
        let root = tempfile::tempdir().expect("temporary directory");
        let wal_config = WalConfig {
            dir: root.path().join("wal"),
            segment_max_bytes: 1024 * 1024,
            fsync: FsyncPolicy::EveryRecord,
        };
        let checkpoint = checkpoint_record(&Checkpoint::SessionStart {
            market: "spot".into(),
        });
        let huge = frame_record(
            Market::Spot,
            7,
            &vec![b'x'; crate::wal::MAX_PAYLOAD_LEN + 1],
        );
        let outcome = write_batch(
            None,
            wal_config,
            Arc::new(RealFs),
            vec![checkpoint.clone(), huge, checkpoint],
            Vec::new(),
            None,
            &root.path().join("quarantine"),
        );
        let Ok(applied) = outcome.result else {
            panic!("the batch must go on without the huge record")
        };
        assert_eq!(applied.len(), 2);
        assert_eq!(outcome.n_quarantined, 1);
        let quarantine =
            std::fs::read_to_string(root.path().join("quarantine/spot/1970-01-01.jsonl"))
                .expect("quarantined");
        assert!(quarantine.contains("over the WAL's limit"), "{quarantine}");
    }

    #[test]
    fn segments_are_deletable_below_the_oldest_pinned_and_the_batch_being_written() {
        let ids = |list: &[u64]| list.iter().copied().map(SegmentId).collect::<Vec<_>>();
        let on_disk = ids(&[3, 4, 5, 6, 7]);
        // Nothing pinned: everything below the batch's first segment goes.
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), None),
            Some(SegmentId(6))
        );
        // A pinned hour keeps its segment and every later one.
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), Some(SegmentId(5))),
            Some(SegmentId(4))
        );
        // The batch started in an older segment than the pin (it rolled).
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(4), Some(SegmentId(6))),
            Some(SegmentId(3))
        );
        // Nothing older than what is kept: no deletion (and no directory fsync).
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), Some(SegmentId(3))),
            None
        );
        assert_eq!(deletable_upto(&ids(&[7]), SegmentId(7), None), None);
    }

    #[test]
    fn frame_records_round_trip_through_decode() {
        let frame = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}}"#;
        let record = frame_record(Market::Spot, 99, frame);
        let Ok(Some(Applied::Frame {
            market,
            segment,
            decoded,
        })) = decode_record(SegmentId(4), &record)
        else {
            panic!("decodes")
        };
        assert_eq!((market, segment), (Market::Spot, SegmentId(4)));
        assert!(matches!(decoded, Decoded::Row { .. }));
        let garbage = frame_record(Market::Spot, 99, b"garbage");
        let Err(quarantined) = decode_record(SegmentId(4), &garbage) else {
            panic!("quarantined")
        };
        assert_eq!(
            (quarantined.frame.as_str(), quarantined.recv_time_us),
            ("garbage", 99)
        );
    }
}
