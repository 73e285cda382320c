//! A faithful fake of Binance's public market data: WebSocket streams,
//! REST, protocol limits, faults and replay of real captures, on 127.0.0.1.
//! One fake serves one market ([`Market`]: spot, USD-M with its routed
//! paths, COIN-M, Binance.US); run one per market to serve several.
//!
//! # Layout
//!
//! * [`config`]: [`FakeConfig`], [`Limits`], [`ReplayConfig`], [`ChaosConfig`].
//! * `clock`: simulated time, `sim = start + elapsed_real x speed` (tokio time).
//! * `model` and `market`: the seeded order flow (trades, aggTrades) and klines
//!   computed from it, or replayed data (`replay`). Pure, no I/O, no clock.
//! * `driver`: the one task that turns due data into stream events and queues
//!   them to the subscribed connections, applying stream faults.
//! * `ws`: one task per WebSocket connection (control messages, pings, limits).
//! * `rest` over `http`: REST endpoints with weights and bans; `control`: the
//!   fault/counters/ground-truth endpoint.
//! * `truth`: [`GroundTruth`], what the recorder should have stored.
//! * `firehose`: benchmark mode ([`FirehoseConfig`]), pre-serialised aggTrade
//!   frames as fast as the client reads, beside (not through) the driver.
//!
//! # Life of a trade
//!
//! 1. The driver wakes at the simulated time of the next due event and asks the
//!    market to generate every order up to now; each order yields trades and
//!    aggregate trades with a trade time `T` and an event time `E >= T`.
//! 2. Events with `E <= now` are taken in stream order, merged with kline
//!    updates and closes by `E`, and pushed into the unbounded queue of every
//!    connection subscribed to their stream (under the registry lock, so each
//!    connection sees one stream's events in production order).
//! 3. The connection task renders the JSON in its time unit (ms or µs), wraps it
//!    for combined streams, and writes it.
//! 4. REST serves the same trade once its `E` has passed; the ground truth
//!    reports it from then on for any `until > T`.

// No unsafe code: the fake has no need for it, and a memory bug in the test
// exchange would show up as a recorder failure that is not the recorder's.
#![forbid(unsafe_code)]

pub mod config;
pub mod counters;
pub mod decimal;
pub mod faults;
pub mod interval;
pub mod truth;

mod clock;
mod control;
mod driver;
mod events;
mod firehose;
mod http;
mod market;
mod model;
mod replay;
mod rest;
mod shared;
mod streams;
mod wire;
mod ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::{sleep, timeout, Duration};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{
    ChaosConfig, ConfigError, FakeConfig, FirehoseConfig, JsonStyle, KlineUpdates, Limits, Market,
    ReplayConfig,
};
pub use counters::Counters;
pub use faults::{Fault, Lie};
pub use firehose::firehose_truth;
pub use interval::KlineInterval;
pub use replay::ReplayError;
pub use truth::{GroundTruth, TruthAggTrade, TruthKline, TruthTrade};

use crate::clock::SimClock;
use crate::market::{MarketState, SymbolBook};
use crate::rng::SplitMix64;
use crate::shared::{lock, Registry, Shared};

mod rng;

/// How long [`FakeExchange::shutdown`] waits for its tasks before giving up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// A running fake exchange. Dropping it stops its tasks too, but
/// [`FakeExchange::shutdown`] waits until they are gone.
/// An event a `SkipEvents` fault withheld from every subscriber: what a
/// recorder must get back from REST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEvent {
    /// The stream name, e.g. `btcusdt@trade`.
    pub stream: String,
    /// Trade id, aggTrade id, or kline open time (µs).
    pub key: i64,
    /// For klines: the event was the kline's closing one.
    pub kline_closed: bool,
}

/// A lying copy a `PoisonEvents` fault sent ahead of a real event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonedEvent {
    /// The stream name, e.g. `btcusdt@trade`.
    pub stream: String,
    /// The real event's trade id, aggTrade id, or kline open time (µs).
    pub key: i64,
    /// The real event's time `E` (µs).
    pub event_time_us: i64,
    pub lie: Lie,
}

pub struct FakeExchange {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    ws_address: SocketAddr,
    rest_address: SocketAddr,
    control_address: SocketAddr,
}

impl FakeExchange {
    /// Binds 127.0.0.1 on port 0 (WebSocket, REST, control) and starts serving.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeExchange> {
        FakeExchange::start_on(config, [0, 0, 0]).await
    }

    /// Like [`FakeExchange::start`] with fixed ports `[ws, rest, control]` (0 = any).
    pub async fn start_on(config: FakeConfig, ports: [u16; 3]) -> std::io::Result<FakeExchange> {
        config
            .validate()
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let (books, sim_start_us, replay_mode) = build_books(&config).await?;
        let firehose = match config.firehose.clone() {
            None => None,
            Some(firehose_config) => {
                let config = config.clone();
                // Rendering millions of frames is blocking work.
                let firehose = tokio::task::spawn_blocking(move || {
                    firehose::Firehose::render(&config, &firehose_config)
                })
                .await
                .map_err(std::io::Error::other)?;
                Some(Arc::new(firehose))
            }
        };
        let ws_listener = TcpListener::bind(("127.0.0.1", ports[0])).await?;
        let rest_listener = TcpListener::bind(("127.0.0.1", ports[1])).await?;
        let control_listener = TcpListener::bind(("127.0.0.1", ports[2])).await?;
        let ws_address = ws_listener.local_addr()?;
        let rest_address = rest_listener.local_addr()?;
        let control_address = control_listener.local_addr()?;

        let clock = SimClock::start(sim_start_us, config.speed);
        let (commands, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            clock,
            market: Mutex::new(MarketState {
                seed: config.seed,
                books,
            }),
            registry: Mutex::new(Registry::default()),
            counters: Default::default(),
            pending_faults: Mutex::new(Default::default()),
            commands,
            handshakes: Mutex::new(VecDeque::new()),
            weight: Mutex::new(rest::WeightState::on_the_clock(
                clock.real_start(),
                config::host_now_us(),
                config.limits.weight_window,
            )),
            replay_mode,
            driver_wakeup: tokio::sync::Notify::new(),
            skipped_events: std::sync::Mutex::new(Vec::new()),
            poisoned_events: std::sync::Mutex::new(Vec::new()),
            firehose,
            config,
        });
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        tracker.spawn(driver::run_driver(
            Arc::clone(&shared),
            cancel.child_token(),
        ));
        tracker.spawn(ws::run_ws_listener(
            Arc::clone(&shared),
            ws_listener,
            tracker.clone(),
            cancel.child_token(),
        ));
        let rest_shared = Arc::clone(&shared);
        tracker.spawn(http::run_http_listener(
            rest_listener,
            Arc::new(move |request| rest::handle_rest(Arc::clone(&rest_shared), request)),
            tracker.clone(),
            cancel.child_token(),
        ));
        let control_shared = Arc::clone(&shared);
        tracker.spawn(http::run_http_listener(
            control_listener,
            Arc::new(move |request| control::handle_control(Arc::clone(&control_shared), request)),
            tracker.clone(),
            cancel.child_token(),
        ));
        if let Some(chaos) = shared.config.chaos.clone() {
            tracker.spawn(run_chaos(Arc::clone(&shared), chaos, cancel.child_token()));
        }
        info!(
            ws = %ws_address,
            rest = %rest_address,
            control = %control_address,
            sim_start_us,
            speed = shared.config.speed,
            replay = replay_mode,
            "fake binance started"
        );
        Ok(FakeExchange {
            shared,
            tracker,
            cancel,
            ws_address,
            rest_address,
            control_address,
        })
    }

    /// `ws://127.0.0.1:PORT`; clients append `/ws/...` or `/stream?streams=...`.
    pub fn ws_base_url(&self) -> String {
        format!("ws://{}", self.ws_address)
    }

    /// `http://127.0.0.1:PORT`; clients append `/api/v3/...`.
    pub fn rest_base_url(&self) -> String {
        format!("http://{}", self.rest_address)
    }

    /// `http://127.0.0.1:PORT` of the control endpoint (`/control/fault`, `/control/counters`, ...).
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_address)
    }

    /// Simulated now, epoch µs.
    pub fn sim_now_us(&self) -> i64 {
        self.shared.now_us()
    }

    /// Simulated time at start, epoch µs (the first event's time in replay mode).
    pub fn sim_start_us(&self) -> i64 {
        self.shared.clock.sim_start_us()
    }

    /// Symbols served, upper case, in config (or replay) order.
    pub fn symbols(&self) -> Vec<String> {
        lock(&self.shared.market)
            .books
            .iter()
            .map(|book| book.spec.symbol.clone())
            .collect()
    }

    /// Everything that happened on `symbol` before `until_sim_us` and has been published:
    /// trades and aggregate trades with trade time `T < until` (and `E <= now`), and for
    /// each of the 16 intervals the klines with close time `< until` whose closing event
    /// was sent (`E <= now`). So `until` = an hour's end gives that hour complete, once the
    /// simulated clock is a few ms past it. Unknown symbol: empty.
    pub fn ground_truth(&self, symbol: &str, until_sim_us: i64) -> GroundTruth {
        ground_truth_of(&self.shared, symbol, until_sim_us).unwrap_or_default()
    }

    /// Closed klines of one interval (`"1m"`, `"1M"`, ...), as in [`FakeExchange::ground_truth`].
    /// Unknown symbol or interval: empty.
    pub fn klines(&self, symbol: &str, interval: &str, until_sim_us: i64) -> Vec<TruthKline> {
        let Some(interval) = KlineInterval::parse(interval) else {
            return Vec::new();
        };
        klines_of(&self.shared, symbol, interval, until_sim_us).unwrap_or_default()
    }

    /// Injects a fault now (same as `POST /control/fault`).
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    /// A snapshot of the counters.
    /// Every event withheld by `SkipEvents` so far, in order.
    pub fn skipped_events(&self) -> Vec<SkippedEvent> {
        shared::lock(&self.shared.skipped_events).clone()
    }

    /// Every lying copy a `PoisonEvents` fault sent so far, in order.
    pub fn poisoned_events(&self) -> Vec<PoisonedEvent> {
        shared::lock(&self.shared.poisoned_events).clone()
    }

    pub fn counters(&self) -> Counters {
        counters_of(&self.shared)
    }

    /// Stops accepting, closes every connection and waits for all tasks (with a deadline).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if timeout(SHUTDOWN_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining_tasks = self.tracker.len(),
                "fake binance tasks did not stop in time"
            );
        } else {
            info!("fake binance stopped");
        }
    }
}

impl Drop for FakeExchange {
    fn drop(&mut self) {
        // A test that forgets shutdown still stops the tasks (without waiting for them).
        self.cancel.cancel();
    }
}

async fn build_books(config: &FakeConfig) -> std::io::Result<(Vec<SymbolBook>, i64, bool)> {
    if let Some(replay) = &config.replay {
        let files = replay.files.clone();
        // Decompressing and parsing megabytes is blocking work; keep it off the async workers.
        let loaded = tokio::task::spawn_blocking(move || replay::load_replay(&files))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        let books: Vec<SymbolBook> = loaded
            .into_iter()
            .enumerate()
            .map(|(index, symbol)| {
                SymbolBook::replayed(index, &symbol.symbol, symbol.trades, symbol.agg_trades)
            })
            .collect();
        let sim_start_us = books
            .iter()
            .flat_map(|book| {
                book.trades
                    .first()
                    .map(|trade| trade.event_time_us)
                    .into_iter()
                    .chain(book.agg_trades.first().map(|agg| agg.event_time_us))
            })
            .min()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, ReplayError::Empty)
            })?;
        let lead_in_us = i64::try_from(replay.lead_in.as_micros()).unwrap_or(i64::MAX / 4);
        return Ok((books, sim_start_us - lead_in_us, true));
    }
    let history_us = i64::try_from(config.history.as_micros()).unwrap_or(i64::MAX / 4);
    let data_start_us = config.sim_start_us - history_us;
    let mut books: Vec<SymbolBook> = config
        .symbols
        .iter()
        .enumerate()
        .map(|(index, symbol)| {
            SymbolBook::generated(
                index,
                symbol,
                config.seed,
                data_start_us,
                config.mean_orders_per_sec,
                config.market.is_futures(),
            )
        })
        .collect();
    for book in &mut books {
        book.delivery_us = config
            .deliveries
            .iter()
            .find(|(symbol, _)| *symbol == book.spec.symbol)
            .map(|(_, at)| *at)
            .or_else(|| {
                config
                    .market
                    .is_futures()
                    .then(|| config::delivery_from_name(&book.spec.symbol))
                    .flatten()
            });
        if let Some((_, at)) = config
            .deliveries_announced
            .iter()
            .find(|(symbol, _)| *symbol == book.spec.symbol)
        {
            book.delivery_announced_us = *at;
        }
        book.halts = config
            .halts
            .iter()
            .filter(|(symbol, _, _)| *symbol == book.spec.symbol)
            .map(|(_, from, until)| (*from, *until))
            .collect();
        book.halts.sort_unstable();
        book.generate_until(config.sim_start_us);
    }
    Ok((books, config.sim_start_us, false))
}

pub(crate) fn ground_truth_of(
    shared: &Shared,
    symbol: &str,
    until_sim_us: i64,
) -> Option<GroundTruth> {
    let (market, now_us) = shared.market_now();
    let book = market.book(symbol)?;
    let futures = shared.config.market.is_futures();
    let (trades, agg_trades) = truth::trades_until(book, until_sim_us, now_us, futures);
    let klines = KlineInterval::ALL
        .into_iter()
        .map(|interval| {
            let klines =
                truth::closed_klines_until(book, market.seed, interval, until_sim_us, now_us);
            (interval.as_str().to_owned(), klines)
        })
        .collect();
    let truth = GroundTruth {
        trades,
        agg_trades,
        klines,
    };
    let market = shared.config.market;
    if !market.speaks_micros() {
        return Some(truth::in_milliseconds(truth, market.is_futures()));
    }
    Some(truth)
}

pub(crate) fn klines_of(
    shared: &Shared,
    symbol: &str,
    interval: KlineInterval,
    until_sim_us: i64,
) -> Option<Vec<TruthKline>> {
    let (market, now_us) = shared.market_now();
    let book = market.book(symbol)?;
    let mut klines = truth::closed_klines_until(book, market.seed, interval, until_sim_us, now_us);
    if !shared.config.market.speaks_micros() {
        truth::klines_in_milliseconds(&mut klines);
    }
    Some(klines)
}

pub(crate) fn counters_of(shared: &Shared) -> Counters {
    let mut counters = shared.counters.snapshot();
    let mut weight = lock(&shared.weight);
    counters.rest_used_weight = u64::from(weight.used(
        tokio::time::Instant::now(),
        shared.config.limits.weight_window,
    ));
    counters.rest_used_weight_max = u64::from(weight.used_max);
    counters
}

/// Injects random faults at exponential gaps (real time), reproducible from the seed.
async fn run_chaos(shared: Arc<Shared>, chaos: ChaosConfig, cancel: CancellationToken) {
    let mut random = SplitMix64::new(chaos.seed);
    let faults = if chaos.faults.is_empty() {
        Fault::chaos_defaults()
    } else {
        chaos.faults
    };
    let mean_gap_secs = 60.0 / chaos.mean_faults_per_minute;
    loop {
        let gap = Duration::from_secs_f64((-random.unit_open().ln() * mean_gap_secs).min(86_400.0));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sleep(gap) => {}
        }
        let fault = faults[random.below(faults.len() as u64) as usize].clone();
        shared.inject(fault);
    }
}
