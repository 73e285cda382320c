//! The recorder runtime: wires connections, the WAL, the state machine and
//! the Parquet writer together, and stops them in order.
//!
//! One task (the loop in [`run`]) owns the WAL writer and the [`State`].
//! Connection tasks and clock tasks talk to it over one bounded channel
//! (capacity [`CHANNEL_CAPACITY`]; when full, senders wait: a connection
//! task then stops reading its socket and TCP pushes back). Blocking work
//! runs off the async workers: each WAL batch (append, fsync, then decode)
//! and each Parquet seal is a `spawn_blocking` job.
//!
//! This file holds the loop and its wiring; the rooms around it are
//! `startup` (clean, replay, resume, symbol check), `records` (the WAL
//! record codec), `batch` (group commit), `fill_rounds` (rounds running and
//! queued), `tasks` (connection supervisors, the clock task) and `seal_job`.

pub mod backfill;
mod batch;
pub mod budget;
mod checkpoint;
mod clock;
mod contracts;
mod declared;
pub mod delivery;
pub mod fill;
mod fill_rounds;
pub mod held;
mod hour;
mod jobs;
pub mod judge;
pub mod pace;
mod records;
mod report;
pub mod run_file;
pub mod seal_job;
pub mod spill;
mod spill_runs;
mod startup;
pub mod state;
pub mod statuses;
mod stop;
mod tasks;
mod wake;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::binance::rest::RestClient;
use crate::binance::streams::stream_name;
use crate::binance::ws::{HandshakeBudget, Inbound, FRAMES_PER_MESSAGE};
use crate::config::Config;
use crate::domain::{Hour, Market, StreamKey, Symbol, TimeUs};
use crate::metrics::health::HealthBoard;
use crate::metrics::{thread_cpu, Counters, GaugeF64, MarketLabels, Work};
use crate::recorder::batch::{wait_batch, BatchLists, BatchOutcome, Pending};
use crate::recorder::fill_rounds::RunningFill;
use crate::recorder::pace::{ClockPace, SealPace};
use crate::recorder::records::{checkpoint_record, Outgoing};
use crate::recorder::startup::{check_symbols, open_and_replay};
use crate::recorder::tasks::TaskSpawner;
use crate::service::ServiceNotifier;
use crate::wal::fs::{RealFs, WalFs};
use crate::wal::{WalConfig, WalWriter};
use prometheus_client::metrics::counter::Counter;
pub(crate) use seal_job::{execute_seal, SealOutcome, SealResult};
pub use seal_job::{SealFault, SealFaults};
pub use state::{Checkpoint, FillJob, FillReport, Job, MonoMs, SealJob, State};

/// Capacity of the channel from connection tasks to the recorder, in
/// messages: a message carries one frame at live rates, up to
/// [`FRAMES_PER_MESSAGE`] in a burst, so at most `CHANNEL_CAPACITY *
/// FRAMES_PER_MESSAGE` frames wait in it.
pub const CHANNEL_CAPACITY: usize = 256;
/// Most records in one WAL batch, and most records waiting for the next one
/// (give or take one message's frames): while that many wait, the recorder
/// stops taking frames from the channel, the channel fills, and connection
/// tasks wait (TCP backpressure). So at most `2 * (MAX_BATCH_RECORDS +
/// FRAMES_PER_MESSAGE) + CHANNEL_CAPACITY * FRAMES_PER_MESSAGE` frames are
/// held in memory between the sockets and the WAL, however slow the disk.
pub const MAX_BATCH_RECORDS: usize = 8_192;

/// Runs the recorder until `shutdown` is cancelled, then stops in order:
/// connections first, then every frame already received is made durable,
/// in-flight seals finish (up to the configured deadline), the WAL is
/// closed, and the hours not finished get files marked `stopped_at`
/// (`stop.rs`). Their rows stay in the WAL for the next start.
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
        config.stream_keys(),
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
            let mut contracts = Vec::new();
            for market_config in &config.markets {
                let market = market_config.market;
                contracts.push((
                    market,
                    check_symbols(market_config, &rest_clients[&market], &config.data_dir).await?,
                ));
            }
            Ok(contracts)
        })
    };

    let mut runtime = Runtime {
        config: config.clone(),
        wal_config,
        wal_fs,
        counters: counters.clone(),
        state,
        wal: Some(wal),
        pending: Pending::new(config.fsync),
        batch: None,
        batch_lists: BatchLists::default(),
        seals: JoinSet::new(),
        spills: JoinSet::new(),
        seal_faults,
        seal_pause_until: None,
        fills: JoinSet::new(),
        fill_tasks: HashMap::new(),
        fill_queue: std::collections::VecDeque::new(),
        paces: HashMap::new(),
        seal_pace: SealPace::default(),
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
        open_links: BTreeMap::new(),
        last_commit: Instant::now(),
        last_sealed: None,
        health: health.clone(),
        batch_started: None,
        batch_oldest_recv_us: None,
        summary_logged_at: Instant::now(),
        status_refreshed_at: Instant::now(),
        stream_metrics: report::stream_metrics(&config, &counters),
        upload: None,
        deliveries: delivery::Deliveries::default(),
        statuses: statuses::StatusWatch::default(),
        retired: BTreeMap::new(),
    };
    for market_config in &config.markets {
        runtime.state.begin_session(market_config.market);
        runtime
            .pending
            .push(checkpoint_record(&Checkpoint::SessionStart {
                market: market_config.market.name().into(),
            }));
    }

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
        let (retire, retired) = tokio::sync::watch::channel(Arc::default());
        runtime.retired.insert(market_config.market, retire);
        let open_links = Arc::new(crate::binance::ws::OpenLinks::default());
        runtime
            .open_links
            .insert(market_config.market, open_links.clone());
        n_tasks = spawner.spawn_market_tasks(market_config, n_tasks, rest, retired, open_links);
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
    // The files of the hours not finished stop being written a little
    // before the deadline: the exit stays clean, the WAL holds them.
    let stop_seals_until = deadline - (config.shutdown_deadline / 4).min(Duration::from_secs(5));
    let stop = runtime.stop(&mut receiver, &tasks, stop_seals_until);
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

struct Runtime {
    config: Arc<Config>,
    wal_config: WalConfig,
    wal_fs: Arc<dyn WalFs>,
    counters: Arc<Counters>,
    state: State,
    /// `None` while a batch job holds it.
    wal: Option<WalWriter>,
    /// Records waiting for the next WAL batch.
    pending: Pending,
    batch: Option<JoinHandle<BatchOutcome>>,
    /// The batches' working lists, kept between batches.
    batch_lists: BatchLists,
    /// Seals running, each with the instant it was handed out.
    seals: JoinSet<(Instant, SealOutcome)>,
    /// Runs of rows being spilled past `memory.max_held_mb`.
    spills: JoinSet<spill_runs::SpillWritten>,
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
    /// How fast hours get written, for the reserve before fill deadlines.
    seal_pace: SealPace,
    /// When hours waiting on fill rounds were last logged (at most every
    /// [`fill_rounds::FILL_WAITS_LOG_INTERVAL`]).
    fill_waits_logged_at: Option<Instant>,
    rest_clients: BTreeMap<Market, RestClient>,
    /// Origin of the [`MonoMs`] clock the state's retry times use.
    started: Instant,
    /// Consecutive failed WAL batches (disk full, read-only filesystem),
    /// and when the next may be tried (doubling back-off up to 30 s).
    wal_failures: u32,
    wal_retry_at: Option<Instant>,
    /// The start-up symbol check, running beside the recording; it
    /// answers what `exchangeInfo` says of each market's contracts.
    symbol_check: Option<JoinHandle<anyhow::Result<ContractsByMarket>>>,
    /// Set when the runtime cannot go on; returned by the stop.
    fatal: Option<anyhow::Error>,
    /// The WAL writer went with a failed batch task: nothing more can be
    /// made durable, so the stop skips the final flush.
    wal_lost: bool,
    /// systemd readiness, status and watchdog keep-alives.
    service: ServiceNotifier,
    /// Stream links open now, per market (counted by the links).
    open_links: BTreeMap<Market, Arc<crate::binance::ws::OpenLinks>>,
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
    /// Dated contracts' deliveries (`contracts.rs`).
    deliveries: delivery::Deliveries,
    /// The configured symbols' trading statuses, for a log line on a change.
    statuses: statuses::StatusWatch,
    /// Per market, the symbols whose streams the connection tasks drop.
    retired: BTreeMap<Market, tokio::sync::watch::Sender<Arc<std::collections::BTreeSet<Symbol>>>>,
}

/// What the start-up symbol check learnt of each market's contracts.
type ContractsByMarket = Vec<(Market, Vec<delivery::ContractFacts>)>;

/// Turns of the recorder loop that took only a frame between two ticks
/// of the service (readiness, watchdog, health: a few clock readings and
/// a lock each, too much per frame at a firehose's rate).
const FRAMES_PER_SERVICE_TICK: u32 = 256;

/// Inputs taken from the channel in one turn of the recorder loop when
/// they wait there already (one `recv_many`; the turn's `select!` and its
/// plan then run once for all of them).
const INPUTS_PER_TURN: usize = 256;

impl Runtime {
    async fn run_until(
        &mut self,
        receiver: &mut mpsc::Receiver<Inbound>,
        shutdown: &CancellationToken,
    ) {
        // Plans are also made when nothing arrives, for fill retries that fall due.
        let mut planning = tokio::time::interval(Duration::from_millis(200));
        planning.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the group commit, moved only when its deadline
        // does (a new timer per frame cost more than the frame).
        let sync_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sync_timer);
        let mut sync_timer_at: Option<Instant> = None;
        // Frames since the service was last told: a turn that took only a
        // frame tells it every `FRAMES_PER_SERVICE_TICK` frames (the
        // planning tick, every 200 ms, tells it too).
        let mut frames_untold: u32 = 0;
        let mut inputs = Vec::with_capacity(INPUTS_PER_TURN);
        // One wait on the stop for the whole run, not one per turn (each
        // joined and left the token's waiting list under a lock).
        let stopped = shutdown.cancelled();
        tokio::pin!(stopped);
        loop {
            if self.fatal.is_some() {
                return;
            }
            self.maybe_start_batch();
            let sync_deadline = self.sync_deadline();
            if let Some(deadline) = sync_deadline.filter(|at| sync_timer_at != Some(*at)) {
                sync_timer.as_mut().reset(deadline);
                sync_timer_at = Some(deadline);
            }
            // Every arm but a bare frame or the sync timer may change a plan.
            let mut replan = true;
            tokio::select! {
                biased;
                () = &mut stopped => return,
                outcome = wait_batch(&mut self.batch) => match outcome {
                    Ok(outcome) => self.finish_batch(outcome).await,
                    Err(error) => {
                        // The WAL writer went with the task: nothing more can
                        // be acknowledged. Stop; the next start replays the WAL.
                        // Logged once, by main, with the exit status.
                        self.fatal = Some(anyhow::anyhow!("WAL batch task failed: {error}"));
                        self.wal_lost = true;
                        return;
                    }
                },
                checked = wait_opt(&mut self.symbol_check) => match checked {
                    Ok(Ok(contracts)) => {
                        for (market, facts) in contracts {
                            self.deliveries.learn(market, facts);
                        }
                    }
                    Ok(Err(error)) => {
                        // Logged once, by main, with the exit status.
                        self.fatal = Some(error);
                        return;
                    }
                    Err(error) => warn!(%error, "symbol check task failed; recording anyway"),
                },
                Some(joined) = self.seals.join_next(), if !self.seals.is_empty() => self.finish_seal(joined),
                Some(joined) = self.spills.join_next(), if !self.spills.is_empty() => self.finish_spill(joined),
                Some(joined) = self.fills.join_next_with_id(), if !self.fills.is_empty() => self.finish_fill(joined),
                _ = planning.tick() => {}
                // Not while a full batch waits: the channel then fills and
                // the connection tasks wait (see MAX_BATCH_RECORDS).
                // What waits is taken in one go, up to a bound (a turn's
                // `select!` costs more than a frame, and the channel gives
                // its permits back once for all of them).
                // A message may carry up to `FRAMES_PER_MESSAGE` frames:
                // the records waiting pass `MAX_BATCH_RECORDS` by fewer.
                taken = receiver.recv_many(
                    &mut inputs,
                    INPUTS_PER_TURN
                        .min(MAX_BATCH_RECORDS.saturating_sub(self.pending.len()) / FRAMES_PER_MESSAGE)
                        .max(1),
                ), if self.pending.len() < MAX_BATCH_RECORDS => {
                    if taken == 0 {
                        warn!("every connection task ended");
                        shutdown.cancelled().await;
                        return;
                    }
                    // A frame changes nothing the plan reads until its batch
                    // is applied: planning per frame was O(streams) per
                    // frame, and with a thousand streams the loop fell
                    // behind the feed (the exchange clock lagged a cold
                    // start by a minute).
                    replan = false;
                    let mut n_frames = 0;
                    for input in inputs.drain(..) {
                        let frames_in = input.n_frames();
                        n_frames += frames_in as u64;
                        replan |= frames_in == 0;
                        self.take_input(input);
                        if self.fatal.is_some() {
                            return;
                        }
                    }
                    Counters::add(&self.counters.frames_received, n_frames);
                    frames_untold += u32::try_from(taken).unwrap_or(u32::MAX) - 1;
                }
                _ = &mut sync_timer, if sync_deadline.is_some() => {
                    sync_timer_at = None;
                    replan = false;
                }
            }
            if replan {
                self.plan_seals();
            }
            frames_untold += 1;
            if replan || frames_untold >= FRAMES_PER_SERVICE_TICK {
                frames_untold = 0;
                self.tell_service();
            }
        }
    }

    fn take_input(&mut self, input: Inbound) {
        match input {
            Inbound::Frame {
                market,
                recv_time,
                payload,
            } => {
                // Counted by the callers (the loop once per turn).
                self.pending.push(Outgoing::Frame {
                    market,
                    recv_time,
                    payload,
                });
            }
            Inbound::Frames { market, frames } => {
                for (recv_time, payload) in frames {
                    self.pending.push(Outgoing::Frame {
                        market,
                        recv_time,
                        payload,
                    });
                }
            }
            Inbound::Connected { market, .. } => {
                Counters::add(&self.counters.connections, 1);
                Counters::set(&self.counters.links_up, self.n_links_up());
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
                Counters::set(&self.counters.links_up, self.n_links_up());
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
            Inbound::SymbolStatuses { market, statuses } => {
                for change in self.statuses.note(market, &statuses) {
                    let before = change.before.as_deref().unwrap_or("unknown");
                    if change.now == statuses::TRADING {
                        info!(%market, symbol = %change.symbol, before, "symbol trading again (exchangeInfo)");
                    } else {
                        warn!(%market, symbol = %change.symbol, before, status = %change.now, "symbol not trading (exchangeInfo): its streams may stay silent, and klines are not made while it lasts");
                    }
                }
                let facts = statuses
                    .iter()
                    .filter_map(delivery::ContractFacts::from_status)
                    .collect();
                self.deliveries.learn(market, facts);
            }
            Inbound::Refused { market, message } => {
                // Logged once, by main, with the exit status.
                self.fatal
                    .get_or_insert_with(|| anyhow::anyhow!("market {market}: {message}"));
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
        let max_seals = if self.state.memory_pressed() {
            1
        } else {
            self.config.max_concurrent_seals
        };
        let free = if seals_paused {
            0
        } else {
            max_seals.saturating_sub(self.seals.len())
        };
        self.end_delivered_contracts();
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
                Job::Seal(mut job) => {
                    job.delivered_at = self.delivery_in_hour(&job.key, job.hour);
                    let data_dir = self.config.data_dir.clone();
                    let faults = self.seal_faults.clone();
                    let counters = self.counters.clone();
                    let handed_out = Instant::now();
                    self.seals.spawn_blocking(move || {
                        let started = std::time::Instant::now();
                        let cpu = thread_cpu();
                        let outcome = execute_seal(&data_dir, faults.as_ref(), job);
                        counters.charge_cpu(Work::Seal, cpu);
                        counters
                            .seal_seconds
                            .observe(started.elapsed().as_secs_f64());
                        (handed_out, outcome)
                    });
                }
                Job::Fill(job) => self.start_fill(job),
                Job::Answered(report) => self.queue_fill_report(report),
            }
        }
    }

    fn finish_seal(&mut self, joined: Result<(Instant, SealOutcome), tokio::task::JoinError>) {
        let outcome = match joined {
            Ok((handed_out, outcome)) => {
                self.seal_pace
                    .observe(handed_out.elapsed(), self.config.max_concurrent_seals);
                outcome
            }
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
                if failure.error.panicked() {
                    Counters::add(&self.counters.seal_panics, 1);
                }
                error!(key = %outcome.job_key, hour = %outcome.hour, error = %failure.error, panicked = failure.error.panicked(), "seal failed; retried in 5 s with the same rows, holes and coverage");
                self.state.seal_failed(failure.job);
                self.seal_pause_until = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }
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
