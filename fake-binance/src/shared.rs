//! State shared by the listeners, the connections and the driver.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::clock::SimClock;
use crate::config::FakeConfig;
use crate::counters::CounterCells;
use crate::events::{ConnectionCommand, InjectedFrame, Outgoing};
use crate::faults::{Fault, PendingFaults, PendingPoison, RestFailure};
use crate::market::MarketState;
use crate::rest::WeightState;

/// Locks a mutex, taking the data even if another thread panicked while holding it:
/// the fake keeps serving (a test failure elsewhere must not cascade into hangs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open WebSocket connection as the driver sees it.
#[derive(Debug)]
pub(crate) struct ConnectionEntry {
    /// Subscriptions in the order they were made (LIST_SUBSCRIPTIONS answers in this order).
    pub streams_in_order: Vec<String>,
    pub streams: HashSet<String>,
    /// Unbounded: the connection's own pong deadline and lifetime bound how much can pile up,
    /// and a stall with backlog needs to keep everything.
    pub sender: mpsc::UnboundedSender<Outgoing>,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub next_connection_id: u64,
    pub connections: HashMap<u64, ConnectionEntry>,
}

impl Registry {
    /// Every stream at least one connection subscribed to.
    pub fn active_streams(&self) -> HashSet<String> {
        self.connections
            .values()
            .flat_map(|entry| entry.streams.iter().cloned())
            .collect()
    }
}

pub(crate) struct Shared {
    pub config: FakeConfig,
    pub clock: SimClock,
    pub market: Mutex<MarketState>,
    pub registry: Mutex<Registry>,
    pub counters: CounterCells,
    pub pending_faults: Mutex<PendingFaults>,
    pub commands: broadcast::Sender<ConnectionCommand>,
    pub handshakes: Mutex<VecDeque<Instant>>,
    pub weight: Mutex<WeightState>,
    /// Replay streams every event from the first; the model streams only from the start.
    pub replay_mode: bool,
    /// Poked when subscriptions change, so the driver starts new kline streams at once.
    pub driver_wakeup: Notify,
    /// Every event a `SkipEvents` fault withheld, in order.
    pub skipped_events: Mutex<Vec<crate::SkippedEvent>>,
    /// Every lying copy a `PoisonEvents` fault sent, in order.
    pub poisoned_events: Mutex<Vec<crate::PoisonedEvent>>,
    /// Firehose mode: the rendered frames and the blast's progress.
    pub firehose: Option<std::sync::Arc<crate::firehose::Firehose>>,
}

/// Which of the connections carrying a stream a fault is for.
#[derive(Clone, Copy)]
enum Which {
    Oldest,
    Newest,
}
use Which::{Newest, Oldest};

impl Shared {
    pub fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    /// The market, generated up to the simulated now.
    pub fn market_now(&self) -> (MutexGuard<'_, MarketState>, i64) {
        let now_us = self.now_us();
        let mut market = lock(&self.market);
        market.generate_until(now_us);
        (market, now_us)
    }

    /// The oldest or newest open connection subscribed to `stream` (ids
    /// grow with time).
    fn connection_carrying(&self, stream: &str, which: Which) -> Option<u64> {
        let registry = lock(&self.registry);
        let ids = registry
            .connections
            .iter()
            .filter(|(_, entry)| entry.streams.contains(stream))
            .map(|(connection_id, _)| *connection_id);
        match which {
            Oldest => ids.min(),
            Newest => ids.max(),
        }
    }

    pub fn inject(&self, fault: Fault) {
        let kind = fault.kind_name();
        warn!(fault_kind = kind, ?fault, "fault injected");
        self.counters
            .update(|counters| *counters.faults_injected.entry(kind.to_owned()).or_default() += 1);
        let injected = |frame: InjectedFrame, count: u32| {
            let registry = lock(&self.registry);
            for entry in registry.connections.values() {
                for _ in 0..count {
                    // A closed receiver means the connection is going away; nothing to do.
                    let _ = entry.sender.send(Outgoing::Injected(frame));
                }
            }
        };
        match fault {
            Fault::DropConnections { abort } => {
                let _ = self.commands.send(ConnectionCommand::Drop { abort });
            }
            Fault::Stall {
                duration_ms,
                keep_backlog,
            } => {
                let until = Instant::now() + Duration::from_millis(duration_ms);
                let _ = self.commands.send(ConnectionCommand::Stall {
                    until,
                    keep_backlog,
                });
            }
            Fault::ServerShutdown => {
                let _ = self
                    .commands
                    .send(ConnectionCommand::ServerShutdown { only: None });
            }
            Fault::ServerShutdownNewest { stream } => {
                match self.connection_carrying(&stream, Newest) {
                    Some(connection_id) => {
                        let _ = self.commands.send(ConnectionCommand::ServerShutdown {
                            only: Some(connection_id),
                        });
                    }
                    None => warn!(%stream, "no open connection carries the stream to shut down"),
                }
            }
            Fault::SkipEvents { count } => lock(&self.pending_faults).skip += count,
            Fault::SubscribeRefusedWithoutId { count } => {
                lock(&self.pending_faults).subscribe_refused += count
            }
            Fault::SubscribeUnanswered { count } => {
                lock(&self.pending_faults).subscribe_unanswered += count
            }
            Fault::RefuseStreamInUrl { stream } => {
                lock(&self.pending_faults).refused_in_url.push(stream)
            }
            Fault::SlowHandshakes { delay_ms, count } => {
                let mut pending = lock(&self.pending_faults);
                pending.slow_handshakes += count;
                pending.slow_handshake_delay = Duration::from_millis(delay_ms);
            }
            Fault::DuplicateEvents { count } => lock(&self.pending_faults).duplicate += count,
            Fault::SwapEvents { count } => lock(&self.pending_faults).swap += count,
            Fault::TruncateFrames { count } => lock(&self.pending_faults).truncate += count,
            Fault::GarbageText { count } => injected(InjectedFrame::GarbageText, count),
            Fault::BrokenJson { count } => injected(InjectedFrame::BrokenJson, count),
            Fault::BinaryFrames { count } => injected(InjectedFrame::Binary, count),
            Fault::UnknownEventType { count } => injected(InjectedFrame::UnknownEventType, count),
            Fault::UnsubscribedSymbolEvent { count } => {
                injected(InjectedFrame::UnsubscribedSymbolEvent, count)
            }
            Fault::RestStatus { status, count } => {
                lock(&self.pending_faults).queue_rest(RestFailure::Status(status), count)
            }
            Fault::RestTooManyRequests {
                retry_after_secs,
                count,
            } => lock(&self.pending_faults).queue_rest(
                RestFailure::TooManyRequests {
                    retry_after_secs: Some(retry_after_secs),
                },
                count,
            ),
            Fault::RestTooManyRequestsWithoutRetryAfter { count } => lock(&self.pending_faults)
                .queue_rest(
                    RestFailure::TooManyRequests {
                        retry_after_secs: None,
                    },
                    count,
                ),
            Fault::RestOversizedBody { bytes, count } => {
                lock(&self.pending_faults).queue_rest(RestFailure::OversizedBody { bytes }, count)
            }
            Fault::RestExtraRows { rows, count } => {
                lock(&self.pending_faults).queue_rest(RestFailure::ExtraRows(rows as usize), count)
            }
            Fault::RestSlow { delay_ms, count } => lock(&self.pending_faults)
                .queue_rest(RestFailure::Slow(Duration::from_millis(delay_ms)), count),
            Fault::RestConnectionReset { count } => {
                lock(&self.pending_faults).queue_rest(RestFailure::ConnectionReset, count)
            }
            Fault::RestTruncatedBody { count } => {
                lock(&self.pending_faults).queue_rest(RestFailure::TruncatedBody, count)
            }
            Fault::ClearRestFaults => {
                lock(&self.pending_faults).rest.clear();
                lock(&self.weight).forgive();
            }
            Fault::PoisonEvents { lie, count, stream } => {
                if count > 0 {
                    lock(&self.pending_faults).poison.push(PendingPoison {
                        lie,
                        remaining: count,
                        stream,
                    });
                }
            }
            Fault::SilenceConnection { stream } => {
                match self.connection_carrying(&stream, Oldest) {
                    Some(connection_id) => {
                        let _ = self
                            .commands
                            .send(ConnectionCommand::Silence { connection_id });
                    }
                    None => warn!(%stream, "no open connection carries the stream to silence"),
                }
            }
        }
    }
}
