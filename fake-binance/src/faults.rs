//! Faults the exchange can be told to commit, from a test (`inject`), the HTTP
//! control endpoint (same JSON) or the seeded chaos mode.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One fault. JSON form: `{"kind":"stall","duration_ms":3000,"keep_backlog":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Drop every WebSocket connection: `abort` resets TCP (SO_LINGER 0), otherwise a close frame.
    DropConnections {
        #[serde(default)]
        abort: bool,
    },
    /// Every connection sends nothing (no data, no pings) for `duration_ms` of real time;
    /// afterwards the events produced meanwhile are sent (`keep_backlog`) or lost.
    Stall {
        duration_ms: u64,
        keep_backlog: bool,
    },
    /// The next `count` events (that someone subscribed to) are silently not sent.
    SkipEvents { count: u32 },
    /// The next `count` events are sent twice.
    DuplicateEvents { count: u32 },
    /// The next `count` pairs of consecutive events are sent in swapped order.
    SwapEvents { count: u32 },
    /// The next `count` event frames are cut in the middle of their text.
    TruncateFrames { count: u32 },
    /// `count` text frames of non-JSON garbage to every connection.
    GarbageText { count: u32 },
    /// `count` text frames of syntactically broken JSON.
    BrokenJson { count: u32 },
    /// `count` binary frames.
    BinaryFrames { count: u32 },
    /// `count` well-formed events of an unknown type (`"e":"mysteryEvent"`).
    UnknownEventType { count: u32 },
    /// `count` trade events for a symbol nobody subscribed to.
    UnsubscribedSymbolEvent { count: u32 },
    /// The `serverShutdown` event on every connection, then a close after
    /// `Limits::server_shutdown_grace`. Spot only (the event exists on spot
    /// streams alone, [`crate::Market::sends_server_shutdown`]): on USD-M,
    /// COIN-M and Binance.US the fault is counted and does nothing, and
    /// every connection goes on as before.
    ServerShutdown,
    /// [`Fault::ServerShutdown`] on one connection: the newest open one
    /// subscribed to `stream` (a link that landed on a server about to
    /// stop, while the others did not). Spot only, like the other.
    ServerShutdownNewest { stream: String },
    /// The next `count` REST requests answer this HTTP status (500, 502, 503,
    /// 504; 403 answers the WAF's HTML page, 451 Binance's restricted-location body).
    RestStatus { status: u16, count: u32 },
    /// The next `count` REST requests answer 429 with this `Retry-After`.
    /// Like a real 429 it starts a back-off: calls inside it count towards a 418.
    RestTooManyRequests { retry_after_secs: u64, count: u32 },
    /// The next `count` REST requests answer 429 with no `Retry-After` header;
    /// the back-off lasts until the weight window ends.
    RestTooManyRequestsWithoutRetryAfter { count: u32 },
    /// The next `count` REST answers are a valid JSON array of `bytes` bytes
    /// (mostly whitespace): a broken or hostile server.
    RestOversizedBody { bytes: u64, count: u32 },
    /// The next `count` list answers carry `rows` rows more than the `limit` asked for.
    RestExtraRows { rows: u32, count: u32 },
    /// The next `count` REST requests are answered after `delay_ms` of real time.
    RestSlow { delay_ms: u64, count: u32 },
    /// The next `count` REST requests get their TCP connection reset instead of an answer.
    RestConnectionReset { count: u32 },
    /// The next `count` REST answers announce their full length but stop half-way.
    RestTruncatedBody { count: u32 },
    /// Forget every REST failure still queued, and any 429 back-off or 418
    /// ban in force: REST answers normally again (ends a "REST down" made of
    /// a long queue of failures).
    ClearRestFaults,
    /// The next `count` trade, aggTrade or kline events (of `stream` only,
    /// when given, e.g. `btcusdt@trade`) are each preceded by a copy that
    /// lies as `lie` says. The real event is still sent as usual and the lie
    /// never enters the ground truth; [`crate::FakeExchange::poisoned_events`]
    /// lists the lies sent. JSON:
    /// `{"kind":"poison_events","lie":{"event_time_ahead":{"secs":18000}},"count":1}`.
    PoisonEvents {
        lie: Lie,
        count: u32,
        #[serde(default)]
        stream: Option<String>,
    },
    /// The oldest open connection subscribed to `stream` stops sending data
    /// frames for good, while it goes on pinging, answering pongs and control
    /// requests: Binance's silent link. The events it withholds are lost for
    /// that connection (other connections still get theirs).
    SilenceConnection { stream: String },
    /// The next `count` SUBSCRIBE requests (of any connection) are not
    /// applied and are refused with a body of the reference's error table,
    /// which carries no id: `{"code": 2, "msg": "Invalid request: too many
    /// parameters"}`.
    SubscribeRefusedWithoutId { count: u32 },
    /// The next `count` SUBSCRIBE requests are neither applied nor
    /// answered: requests lost on their way.
    SubscribeUnanswered { count: u32 },
    /// The next `count` WebSocket handshakes are answered after `delay_ms`
    /// of real time: the TCP connection is accepted at once, the upgrade's
    /// reply waits (a far or busy server).
    SlowHandshakes { delay_ms: u64, count: u32 },
    /// From now on, a handshake whose URL names `stream` is answered 400
    /// `{"code":2,"msg":"Invalid request: invalid stream"}`: an exchange
    /// that does not serve that stream on that path (the reference's
    /// undocumented USD-M `@trade`). SUBSCRIBE still takes it.
    RefuseStreamInUrl { stream: String },
}

impl Fault {
    /// Stable name, used as the key in [`crate::Counters::faults_injected`].
    pub fn kind_name(&self) -> &'static str {
        match self {
            Fault::DropConnections { abort: true } => "drop_connections_abort",
            Fault::DropConnections { abort: false } => "drop_connections_close",
            Fault::Stall {
                keep_backlog: true, ..
            } => "stall_keep_backlog",
            Fault::Stall {
                keep_backlog: false,
                ..
            } => "stall_lose_backlog",
            Fault::SkipEvents { .. } => "skip_events",
            Fault::DuplicateEvents { .. } => "duplicate_events",
            Fault::SwapEvents { .. } => "swap_events",
            Fault::TruncateFrames { .. } => "truncate_frames",
            Fault::GarbageText { .. } => "garbage_text",
            Fault::BrokenJson { .. } => "broken_json",
            Fault::BinaryFrames { .. } => "binary_frames",
            Fault::UnknownEventType { .. } => "unknown_event_type",
            Fault::UnsubscribedSymbolEvent { .. } => "unsubscribed_symbol_event",
            Fault::ServerShutdown => "server_shutdown",
            Fault::ServerShutdownNewest { .. } => "server_shutdown_newest",
            Fault::RestStatus { .. } => "rest_status",
            Fault::RestTooManyRequests { .. } => "rest_too_many_requests",
            Fault::RestTooManyRequestsWithoutRetryAfter { .. } => {
                "rest_too_many_requests_without_retry_after"
            }
            Fault::RestOversizedBody { .. } => "rest_oversized_body",
            Fault::RestExtraRows { .. } => "rest_extra_rows",
            Fault::RestSlow { .. } => "rest_slow",
            Fault::RestConnectionReset { .. } => "rest_connection_reset",
            Fault::RestTruncatedBody { .. } => "rest_truncated_body",
            Fault::ClearRestFaults => "clear_rest_faults",
            Fault::PoisonEvents { .. } => "poison_events",
            Fault::SilenceConnection { .. } => "silence_connection",
            Fault::SubscribeRefusedWithoutId { .. } => "subscribe_refused_without_id",
            Fault::SubscribeUnanswered { .. } => "subscribe_unanswered",
            Fault::SlowHandshakes { .. } => "slow_handshakes",
            Fault::RefuseStreamInUrl { .. } => "refuse_stream_in_url",
        }
    }

    /// What chaos mode picks from when its list is empty: every kind, with mild parameters.
    pub fn chaos_defaults() -> Vec<Fault> {
        vec![
            Fault::DropConnections { abort: false },
            Fault::DropConnections { abort: true },
            Fault::Stall {
                duration_ms: 2_000,
                keep_backlog: true,
            },
            Fault::Stall {
                duration_ms: 2_000,
                keep_backlog: false,
            },
            Fault::SkipEvents { count: 3 },
            Fault::DuplicateEvents { count: 3 },
            Fault::SwapEvents { count: 2 },
            Fault::TruncateFrames { count: 1 },
            Fault::GarbageText { count: 1 },
            Fault::BrokenJson { count: 1 },
            Fault::BinaryFrames { count: 1 },
            Fault::UnknownEventType { count: 1 },
            Fault::UnsubscribedSymbolEvent { count: 1 },
            Fault::ServerShutdown,
            Fault::RestStatus {
                status: 503,
                count: 1,
            },
            Fault::RestTooManyRequests {
                retry_after_secs: 1,
                count: 1,
            },
            Fault::RestSlow {
                delay_ms: 2_000,
                count: 1,
            },
            Fault::RestConnectionReset { count: 1 },
            Fault::RestTruncatedBody { count: 1 },
        ]
    }
}

/// How a poisoned copy of an event lies (see [`Fault::PoisonEvents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Lie {
    /// The event time `E` moved `secs` ahead; every other field left alone.
    EventTimeAhead { secs: u64 },
    /// The row's own time set to `time_ms` (epoch ms; 0, or a time in 2300):
    /// trade and aggTrade `T`; a kline's open time `t`, its close time `T`
    /// moved along so the kline keeps its length.
    TradeTimeAt { time_ms: i64 },
    /// The trade id `t` / aggTrade id `a` increased by `by` (a kline's
    /// `f` and `L`).
    IdJump { by: i64 },
}

/// A poison fault still waiting for its events.
#[derive(Debug)]
pub(crate) struct PendingPoison {
    pub lie: Lie,
    pub remaining: u32,
    pub stream: Option<String>,
}

/// How the next REST request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestFailure {
    Status(u16),
    /// `None`: no `Retry-After` header.
    TooManyRequests {
        retry_after_secs: Option<u64>,
    },
    OversizedBody {
        bytes: u64,
    },
    ExtraRows(usize),
    Slow(Duration),
    ConnectionReset,
    TruncatedBody,
}

/// Pending stream manglings (consumed by the event dispatcher) and REST failures.
#[derive(Debug, Default)]
pub(crate) struct PendingFaults {
    pub skip: u32,
    pub duplicate: u32,
    pub swap: u32,
    pub truncate: u32,
    /// SUBSCRIBE requests still to refuse without an id, and to drop.
    pub subscribe_refused: u32,
    pub subscribe_unanswered: u32,
    /// Handshakes still to answer late, and how late.
    pub slow_handshakes: u32,
    pub slow_handshake_delay: Duration,
    /// Streams whose name in a handshake URL is refused, for good.
    pub refused_in_url: Vec<String>,
    pub rest: VecDeque<RestFailure>,
    pub poison: Vec<PendingPoison>,
}

impl PendingFaults {
    pub fn next_rest_failure(&mut self) -> Option<RestFailure> {
        self.rest.pop_front()
    }

    /// The lie to tell before the next event of `stream`, if one is pending
    /// (the oldest fault that matches goes first).
    pub fn take_poison(&mut self, stream: &str) -> Option<Lie> {
        let index = self.poison.iter().position(|pending| {
            pending
                .stream
                .as_deref()
                .is_none_or(|wanted| wanted == stream)
        })?;
        let pending = &mut self.poison[index];
        let lie = pending.lie;
        pending.remaining -= 1;
        if pending.remaining == 0 {
            self.poison.remove(index);
        }
        Some(lie)
    }

    pub fn queue_rest(&mut self, failure: RestFailure, count: u32) {
        for _ in 0..count {
            self.rest.push_back(failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_round_trips() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"stall","duration_ms":3000,"keep_backlog":true}"#)
                .unwrap();
        assert_eq!(
            fault,
            Fault::Stall {
                duration_ms: 3000,
                keep_backlog: true
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"drop_connections"}"#).unwrap();
        assert_eq!(fault, Fault::DropConnections { abort: false });
        assert!(serde_json::from_str::<Fault>(
            r#"{"kind":"stall","duration_ms":1,"keep_backlog":true,"x":1}"#
        )
        .is_err());
        let poison: Fault = serde_json::from_str(
            r#"{"kind":"poison_events","lie":{"trade_time_at":{"time_ms":0}},"count":2}"#,
        )
        .unwrap();
        assert_eq!(
            poison,
            Fault::PoisonEvents {
                lie: Lie::TradeTimeAt { time_ms: 0 },
                count: 2,
                stream: None
            }
        );
        for fault in Fault::chaos_defaults() {
            let text = serde_json::to_string(&fault).unwrap();
            assert_eq!(serde_json::from_str::<Fault>(&text).unwrap(), fault);
        }
    }
}
