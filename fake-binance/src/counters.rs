//! What the exchange did, counted, so tests can assert on server-side facts
//! (a ping was sent, a connection was closed for its rate) without timing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// A snapshot of the counters. Map keys are frame kinds (`trade`, `aggTrade`,
/// `kline`, `control_reply`, `serverShutdown`, `injected`) and fault kinds
/// (`skip_events`, `stall`, ... as in [`crate::Fault::kind_name`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub ws_handshakes_accepted: u64,
    /// Refused with HTTP 429 because of the handshake budget.
    pub ws_handshakes_refused: u64,
    /// Rejected with HTTP 400/404 (bad path, bad stream in the URL, bad timeUnit).
    pub ws_handshakes_rejected: u64,
    pub ws_connections_open: u64,
    pub ws_pings_sent: u64,
    /// Pongs that answered an outstanding ping.
    pub ws_pongs_received: u64,
    pub ws_unsolicited_pongs: u64,
    pub ws_pong_timeout_closes: u64,
    pub ws_lifetime_closes: u64,
    pub ws_rate_limit_closes: u64,
    pub ws_too_many_streams_closes: u64,
    pub ws_server_shutdown_closes: u64,
    pub ws_dropped_by_fault: u64,
    pub ws_control_requests: u64,
    pub ws_control_errors: u64,
    pub ws_frames_sent: BTreeMap<String, u64>,
    pub events_skipped: u64,
    pub events_duplicated: u64,
    pub events_swapped: u64,
    pub frames_truncated: u64,
    /// Lying copies sent by `PoisonEvents` (each ahead of its real event).
    pub events_poisoned: u64,
    /// Frames a silenced connection withheld (`SilenceConnection`).
    pub frames_silenced: u64,
    pub faults_injected: BTreeMap<String, u64>,
    pub rest_requests: u64,
    pub rest_responses_400: u64,
    pub rest_responses_404: u64,
    pub rest_responses_429: u64,
    pub rest_responses_418: u64,
    pub rest_failures_injected: u64,
    /// `historicalTrades` calls refused for a missing or unknown API key (401).
    pub rest_api_key_refusals: u64,
    /// Subscriptions acknowledged on a route that does not serve them (USD-M
    /// `/public` vs `/market`): listed, never delivered.
    pub ws_wrong_route_subscriptions: u64,
    /// Weight used in the current window.
    pub rest_used_weight: u64,
    /// The most weight used in any one window so far.
    pub rest_used_weight_max: u64,
    /// Firehose mode: frames written and flushed (also counted under
    /// `aggTrade` in `ws_frames_sent`).
    pub firehose_frames_sent: u64,
    /// Firehose mode: the count or the time limit was reached.
    pub firehose_finished: bool,
}

/// The live counters behind a lock; cheap enough at the fake's event rates.
#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    inner: Mutex<Counters>,
}

impl CounterCells {
    pub fn update(&self, change: impl FnOnce(&mut Counters)) {
        let mut counters = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut counters);
    }

    pub fn frame_sent(&self, kind: &str) {
        self.update(|counters| *counters.ws_frames_sent.entry(kind.to_owned()).or_default() += 1);
    }

    pub fn snapshot(&self) -> Counters {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
