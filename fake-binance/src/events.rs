//! Events on their way from the driver to the connections.

use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use crate::faults::Lie;
use crate::interval::KlineInterval;
use crate::market::KlineState;
use crate::model::{AggTrade, Trade};
use crate::wire::{self, Precision, Shape, TimeUnit};

/// One stream event, shared by every connection subscribed to its stream.
/// The JSON is built at most once per time unit, on first use.
#[derive(Debug)]
pub(crate) struct StreamEvent {
    pub stream_name: Arc<str>,
    pub event_time_us: i64,
    body: EventBody,
    /// The decimals of its symbol's amounts on this market.
    precision: Precision,
    payload_millisecond: OnceLock<String>,
    payload_microsecond: OnceLock<String>,
}

#[derive(Debug)]
enum EventBody {
    Trade {
        symbol: Arc<str>,
        trade: Trade,
    },
    AggTrade {
        symbol: Arc<str>,
        agg: AggTrade,
    },
    Kline {
        symbol: Arc<str>,
        interval: KlineInterval,
        kline: KlineState,
        closed: bool,
    },
}

impl StreamEvent {
    pub fn trade(
        stream_name: Arc<str>,
        symbol: Arc<str>,
        trade: Trade,
        precision: Precision,
    ) -> StreamEvent {
        StreamEvent::new(
            stream_name,
            trade.event_time_us,
            EventBody::Trade { symbol, trade },
            precision,
        )
    }

    pub fn agg_trade(
        stream_name: Arc<str>,
        symbol: Arc<str>,
        agg: AggTrade,
        precision: Precision,
    ) -> StreamEvent {
        StreamEvent::new(
            stream_name,
            agg.event_time_us,
            EventBody::AggTrade { symbol, agg },
            precision,
        )
    }

    pub fn kline(
        stream_name: Arc<str>,
        symbol: Arc<str>,
        interval: KlineInterval,
        kline: KlineState,
        closed: bool,
        event_time_us: i64,
        precision: Precision,
    ) -> StreamEvent {
        StreamEvent::new(
            stream_name,
            event_time_us,
            EventBody::Kline {
                symbol,
                interval,
                kline,
                closed,
            },
            precision,
        )
    }

    fn new(
        stream_name: Arc<str>,
        event_time_us: i64,
        body: EventBody,
        precision: Precision,
    ) -> StreamEvent {
        StreamEvent {
            stream_name,
            event_time_us,
            body,
            precision,
            payload_millisecond: OnceLock::new(),
            payload_microsecond: OnceLock::new(),
        }
    }

    /// What a skipped event would have delivered, for [`crate::SkippedEvent`].
    pub fn skipped(&self) -> crate::SkippedEvent {
        let (key, kline_closed) = match &self.body {
            EventBody::Trade { trade, .. } => (trade.id, false),
            EventBody::AggTrade { agg, .. } => (agg.id, false),
            EventBody::Kline { kline, closed, .. } => (kline.open_us, *closed),
        };
        crate::SkippedEvent {
            stream: self.stream_name.to_string(),
            key,
            kline_closed,
        }
    }

    /// A copy of this event that lies as `lie` says (see
    /// [`crate::Fault::PoisonEvents`]). Built from the fields, never from a
    /// replay's captured bytes, so the lie shows in both time units.
    pub fn lying_copy(&self, lie: Lie) -> StreamEvent {
        let ahead_us = match lie {
            Lie::EventTimeAhead { secs } => i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
            _ => 0,
        };
        let event_time_us = self.event_time_us.saturating_add(ahead_us);
        let time_us = |time_ms: i64| time_ms.saturating_mul(1000);
        let body = match &self.body {
            EventBody::Trade { symbol, trade } => {
                let mut trade = trade.clone();
                trade.raw_payload = None;
                trade.event_time_us = event_time_us;
                match lie {
                    Lie::TradeTimeAt { time_ms } => trade.time_us = time_us(time_ms),
                    Lie::IdJump { by } => trade.id = trade.id.saturating_add(by),
                    Lie::EventTimeAhead { .. } => {}
                }
                EventBody::Trade {
                    symbol: Arc::clone(symbol),
                    trade,
                }
            }
            EventBody::AggTrade { symbol, agg } => {
                let mut agg = agg.clone();
                agg.raw_payload = None;
                agg.event_time_us = event_time_us;
                match lie {
                    Lie::TradeTimeAt { time_ms } => agg.time_us = time_us(time_ms),
                    Lie::IdJump { by } => agg.id = agg.id.saturating_add(by),
                    Lie::EventTimeAhead { .. } => {}
                }
                EventBody::AggTrade {
                    symbol: Arc::clone(symbol),
                    agg,
                }
            }
            EventBody::Kline {
                symbol,
                interval,
                kline,
                closed,
            } => {
                let mut kline = kline.clone();
                match lie {
                    Lie::TradeTimeAt { time_ms } => {
                        let length_us = kline.next_open_us - kline.open_us;
                        kline.open_us = time_us(time_ms);
                        kline.next_open_us = kline.open_us.saturating_add(length_us);
                    }
                    Lie::IdJump { by } => {
                        kline.first_trade_id = kline.first_trade_id.saturating_add(by);
                        kline.last_trade_id = kline.last_trade_id.saturating_add(by);
                    }
                    Lie::EventTimeAhead { .. } => {}
                }
                EventBody::Kline {
                    symbol: Arc::clone(symbol),
                    interval: *interval,
                    kline,
                    closed: *closed,
                }
            }
        };
        StreamEvent::new(
            Arc::clone(&self.stream_name),
            event_time_us,
            body,
            self.precision,
        )
    }

    /// What a lying copy of this event stood for, for [`crate::PoisonedEvent`].
    pub fn poisoned(&self, lie: Lie) -> crate::PoisonedEvent {
        crate::PoisonedEvent {
            stream: self.stream_name.to_string(),
            key: self.skipped().key,
            event_time_us: self.event_time_us,
            lie,
        }
    }

    /// Counter key of the frame kind.
    pub fn kind_name(&self) -> &'static str {
        match self.body {
            EventBody::Trade { .. } => "trade",
            EventBody::AggTrade { .. } => "aggTrade",
            EventBody::Kline { .. } => "kline",
        }
    }

    /// The bare event JSON in the given unit and shape. A replayed event in
    /// millisecond mode is its captured bytes, untouched. One fake serves
    /// one market, so the shape is the same at every call and the cache is
    /// kept per unit only.
    pub fn payload(&self, unit: TimeUnit, shape: Shape) -> &str {
        let cell = match unit {
            TimeUnit::Millisecond => &self.payload_millisecond,
            TimeUnit::Microsecond => &self.payload_microsecond,
        };
        cell.get_or_init(|| match &self.body {
            EventBody::Trade { symbol, trade } => match (&trade.raw_payload, unit) {
                (Some(raw), TimeUnit::Millisecond) => raw.to_string(),
                _ => wire::trade_event(symbol, trade, unit, shape, self.precision),
            },
            EventBody::AggTrade { symbol, agg } => match (&agg.raw_payload, unit) {
                (Some(raw), TimeUnit::Millisecond) => raw.to_string(),
                _ => wire::agg_trade_event(symbol, agg, unit, shape, self.precision),
            },
            EventBody::Kline {
                symbol,
                interval,
                kline,
                closed,
            } => wire::kline_event(
                symbol,
                *interval,
                kline,
                *closed,
                self.event_time_us,
                unit,
                self.precision,
            ),
        })
    }
}

/// A frame queued for one connection.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Event {
        event: Arc<StreamEvent>,
        truncate: bool,
    },
    Injected(InjectedFrame),
}

/// Junk a fault puts on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InjectedFrame {
    GarbageText,
    BrokenJson,
    Binary,
    UnknownEventType,
    UnsubscribedSymbolEvent,
}

/// Orders to every connection at once (broadcast), outside the event order;
/// `Silence` is for the one connection it names, `ServerShutdown` for the
/// one it names when it names one.
#[derive(Debug, Clone)]
pub(crate) enum ConnectionCommand {
    Drop { abort: bool },
    Stall { until: Instant, keep_backlog: bool },
    ServerShutdown { only: Option<u64> },
    Silence { connection_id: u64 },
}
