//! The tasks the runtime spawns beside its loop, all held by its
//! `TaskTracker`: the connection tasks of each market (spread over
//! connections by route and `streams_per_connection`), each under a
//! supervisor that restarts it with a back-off if it ever ends or panics,
//! and the clock task (`/api/v3/time` samples, the weight limit read again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::backoff::Backoff;
use crate::binance::rest::RestClient;
use crate::binance::ws::{run_connection, ConnectionPlan, HandshakeBudget, Inbound};
use crate::config::MarketConfig;
use crate::domain::Market;
use crate::metrics::Counters;

/// What every spawned connection and clock task shares.
pub(super) struct TaskSpawner<'a> {
    pub(super) tasks: &'a TaskTracker,
    /// One budget for every connection: Binance counts handshakes per IP.
    pub(super) budget: &'a Arc<HandshakeBudget>,
    pub(super) sender: &'a mpsc::Sender<Inbound>,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) counters: &'a Arc<Counters>,
    pub(super) connection_panics: Option<&'a Arc<tokio::sync::Notify>>,
}

impl TaskSpawner<'_> {
    /// Spawns the connection tasks of one market (streams spread over
    /// connections of at most `streams_per_connection`) and its clock task.
    /// Returns the number of connection tasks so far, for numbering.
    pub(super) fn spawn_market_tasks(
        &self,
        market_config: &MarketConfig,
        n_tasks_before: usize,
        rest: RestClient,
        retired: crate::binance::ws::RetiredSymbols,
        open_links: Arc<crate::binance::ws::OpenLinks>,
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
                retired: retired.clone(),
                open_links: open_links.clone(),
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
        // The periodic read (`exchange_info_interval_secs`) asks for every
        // configured symbol's status too (one call either way, of the
        // same weight): on futures a dated contract's delivery, or a
        // perpetual's delisting, which Binance announces with a
        // `deliveryDate` (`recorder/delivery.rs`); on every market a
        // symbol that stops or starts trading, logged (`statuses.rs`).
        // With `check_symbols` off, spot reads the limit alone.
        let contracts = (crate::binance::markets::MarketProfile::of(market).is_futures()
            || market_config.check_symbols)
            .then(|| {
                market_config
                    .symbols
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            });
        self.tasks.spawn(run_clock_checks(
            market,
            rest,
            (interval, market_config.exchange_info_interval),
            (weight_symbol, contracts),
            self.sender.clone(),
            self.shutdown.child_token(),
        ));
        n_tasks
    }
}

/// The pause before a connection task is restarted: 1 s doubling to 60 s.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

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
        let pause = RESTART_BACKOFF.ceiling(n_restarts_in_a_row);
        n_restarts_in_a_row = n_restarts_in_a_row.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Asks `/api/v3/time` every `time_interval` and reports the host clock's
/// offset; reads the REST weight limit again from `exchangeInfo` every
/// `info_interval` (Binance changes it now and then; it is also read at
/// every start), with the statuses of `contracts`, when given, reported to
/// the runtime.
async fn run_clock_checks(
    market: Market,
    rest: RestClient,
    (time_interval, info_interval): (Duration, Duration),
    (weight_symbol, contracts): (Option<crate::domain::Symbol>, Option<Vec<String>>),
    sender: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(time_interval);
    let mut weight_refresh =
        tokio::time::interval_at(Instant::now() + info_interval, info_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = weight_refresh.tick() => {
                if let Some(names) = &contracts {
                    // The same exchangeInfo call, which adopts the limit too.
                    let answered = tokio::select! {
                        () = shutdown.cancelled() => return,
                        answered = rest.symbol_statuses(names) => answered,
                    };
                    match answered {
                        Ok(statuses) => {
                            if sender.send(Inbound::SymbolStatuses { market, statuses }).await.is_err() {
                                return;
                            }
                        }
                        // A symbol the exchange no longer lists refuses the
                        // whole list on spot (-1121): worth a warning.
                        Err(error) if error.binance_code() == Some(-1121) => warn!(%market, %error, "exchangeInfo refuses the configured symbols: one is no longer listed; remove it from the config"),
                        Err(error) => debug!(%market, %error, "exchangeInfo not read again; keeping what is known"),
                    }
                } else if let Some(symbol) = &weight_symbol {
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
        let answered = tokio::select! {
            () = shutdown.cancelled() => return,
            answered = rest.server_time_sample() => answered,
        };
        match answered {
            Ok(sample) => {
                let (server_time, offset_us) = (sample.server_time, sample.offset_us);
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
