//! `/health`: is the recorder recording? Healthy while the WAL commits,
//! every market has a link up, and every configured stream delivered
//! within its expected interval: for a kline stream its interval plus
//! `stale_after` (Binance sends a kline's close at its interval's end
//! whatever the market does, so silence past it is a sure sign; updates in
//! between come only with trades, as the real captures show),
//! `quiet_stale_after` for trade and aggTrade streams (a quiet symbol can
//! go minutes without a trade). The runtime writes what it sees into a
//! [`HealthBoard`]; [`judge`] is pure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::domain::{Market, StreamKey, StreamKind, TimeUs};
use crate::status::{LiveStatus, LiveStream};

/// The bounds a health check applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthBounds {
    /// A kline stream silent longer than its interval and this is stale.
    pub stale_after: Duration,
    /// A trade or aggTrade stream silent longer than this is stale.
    pub quiet_stale_after: Duration,
    /// Frames waiting longer than this for a WAL commit: the WAL is stuck.
    pub wal_stuck_after: Duration,
}

/// What the runtime last saw; updated after each WAL batch and link change.
#[derive(Debug)]
pub struct HealthInputs {
    pub started: Instant,
    /// Every configured stream, with when it last delivered (row or update).
    pub streams: BTreeMap<StreamKey, Option<Instant>>,
    pub links_up: BTreeMap<Market, u64>,
    /// Since when frames have waited for a commit (`None`: nothing waits).
    pub waiting_since: Option<Instant>,
    /// For `/status`: exchange time of each stream's newest row, rows held
    /// for its unsealed hours, and the WAL's size.
    pub newest_event: BTreeMap<StreamKey, TimeUs>,
    pub rows_held: BTreeMap<StreamKey, u64>,
    pub wal_bytes: u64,
    /// Sealed files waiting for upload; `None` without a destination.
    pub upload_backlog: Option<u64>,
    /// Streams of delivered contracts, with the delivery: no longer in
    /// `streams` (nothing is expected of them), shown by `/status` as
    /// delivered.
    pub delivered: BTreeMap<StreamKey, TimeUs>,
}

/// How long `key`'s stream may stay silent before it is stale.
fn stale_bound(bounds: &HealthBounds, kind: StreamKind) -> Duration {
    match kind {
        StreamKind::Kline(interval) => bounds
            .stale_after
            .saturating_add(crate::binance::ws::kline_speaks_within(interval)),
        StreamKind::Trade | StreamKind::AggTrade => bounds.quiet_stale_after,
    }
}

/// The verdict, as `/health` serves it (JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    /// What is wrong, one sentence each; empty when healthy.
    pub problems: Vec<String>,
}

/// Judges the inputs at `now`. A stream that never delivered counts from
/// the start, so a stream that is wrong from the first minute shows too.
pub fn judge(inputs: &HealthInputs, bounds: &HealthBounds, now: Instant) -> HealthReport {
    let mut problems = Vec::new();
    if let Some(since) = inputs.waiting_since {
        let waited = now.saturating_duration_since(since);
        if waited > bounds.wal_stuck_after {
            problems.push(format!(
                "the WAL has not committed for {} s (frames wait for their fsync)",
                waited.as_secs()
            ));
        }
    }
    for (market, links) in &inputs.links_up {
        // A market whose every stream was delivered needs no link.
        let expects_links = inputs.streams.keys().any(|key| key.market == *market);
        if *links == 0 && expects_links {
            problems.push(format!("market {market}: no stream link is up"));
        }
    }
    let mut stale = Vec::new();
    for (key, last) in &inputs.streams {
        let bound = stale_bound(bounds, key.kind);
        let silent = now.saturating_duration_since(last.unwrap_or(inputs.started));
        if silent > bound {
            stale.push(format!("{key} silent for {} s", silent.as_secs()));
        }
    }
    if !stale.is_empty() {
        let n = stale.len();
        stale.truncate(10);
        problems.push(format!(
            "{n} stream(s) silent past their interval: {}{}",
            stale.join(", "),
            if n > 10 { ", ..." } else { "" }
        ));
    }
    HealthReport {
        healthy: problems.is_empty(),
        problems,
    }
}

/// The runtime's inputs and the bounds, shared with the HTTP server.
#[derive(Debug)]
pub struct HealthBoard {
    pub bounds: HealthBounds,
    pub inputs: Mutex<HealthInputs>,
}

impl HealthBoard {
    pub fn new(bounds: HealthBounds, streams: impl IntoIterator<Item = StreamKey>) -> Self {
        let streams: BTreeMap<StreamKey, Option<Instant>> =
            streams.into_iter().map(|key| (key, None)).collect();
        let links_up = streams.keys().map(|key| (key.market, 0)).collect();
        HealthBoard {
            bounds,
            inputs: Mutex::new(HealthInputs {
                started: Instant::now(),
                streams,
                links_up,
                waiting_since: None,
                newest_event: BTreeMap::new(),
                rows_held: BTreeMap::new(),
                wal_bytes: 0,
                upload_backlog: None,
                delivered: BTreeMap::new(),
            }),
        }
    }

    /// What `/status` serves: the live view of every stream.
    pub fn live_status(&self) -> LiveStatus {
        let inputs = self
            .inputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let streams = inputs
            .streams
            .iter()
            .map(|(key, last)| {
                let silent = now.saturating_duration_since(last.unwrap_or(inputs.started));
                LiveStream {
                    key: key.to_string(),
                    silent_secs: last.map(|last| now.saturating_duration_since(last).as_secs_f64()),
                    stale: silent > stale_bound(&self.bounds, key.kind),
                    newest_event_us: inputs.newest_event.get(key).copied(),
                    rows_held: inputs.rows_held.get(key).copied().unwrap_or(0),
                    delivered_at_us: None,
                }
            })
            .chain(inputs.delivered.iter().map(|(key, at)| LiveStream {
                key: key.to_string(),
                silent_secs: None,
                stale: false,
                newest_event_us: None,
                rows_held: inputs.rows_held.get(key).copied().unwrap_or(0),
                delivered_at_us: Some(*at),
            }))
            .collect();
        LiveStatus {
            streams,
            links_up: inputs.links_up.values().sum(),
            wal_bytes: inputs.wal_bytes,
            upload_backlog: inputs.upload_backlog,
        }
    }

    /// Runs `update` on the inputs (a poisoned lock is taken over: the
    /// inputs are plain values, always consistent).
    pub fn update(&self, update: impl FnOnce(&mut HealthInputs)) {
        let mut inputs = self
            .inputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut inputs);
    }

    pub fn report(&self) -> HealthReport {
        let inputs = self
            .inputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        judge(&inputs, &self.bounds, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KlineInterval, Symbol};

    fn key(kind: StreamKind) -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("symbol"),
            kind,
        }
    }

    const BOUNDS: HealthBounds = HealthBounds {
        stale_after: Duration::from_secs(60),
        quiet_stale_after: Duration::from_secs(3600),
        wal_stuck_after: Duration::from_secs(10),
    };

    fn inputs(start: Instant) -> HealthInputs {
        HealthInputs {
            started: start,
            streams: [
                (key(StreamKind::Trade), Some(start)),
                (key(StreamKind::Kline(KlineInterval::Minute1)), Some(start)),
            ]
            .into_iter()
            .collect(),
            links_up: [(Market::Spot, 1)].into_iter().collect(),
            waiting_since: None,
            newest_event: BTreeMap::new(),
            rows_held: BTreeMap::new(),
            wal_bytes: 0,
            upload_backlog: None,
            delivered: BTreeMap::new(),
        }
    }

    #[test]
    fn healthy_while_everything_delivers() {
        let start = Instant::now();
        let report = judge(&inputs(start), &BOUNDS, start + Duration::from_secs(30));
        assert!(report.healthy, "{report:?}");
    }

    #[test]
    fn a_silent_kline_stream_is_named_but_a_quiet_trade_stream_is_not() {
        let start = Instant::now();
        // A quiet symbol's minute kline says nothing until its close.
        let report = judge(&inputs(start), &BOUNDS, start + Duration::from_secs(119));
        assert!(report.healthy, "{report:?}");
        let report = judge(&inputs(start), &BOUNDS, start + Duration::from_secs(121));
        assert!(!report.healthy);
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(
            report.problems[0].contains("spot/kline_1m/BTCUSDT"),
            "{report:?}"
        );
        assert!(!report.problems[0].contains("spot/trade/"), "{report:?}");
    }

    #[test]
    fn no_link_and_a_stuck_wal_are_named() {
        let start = Instant::now();
        let mut inputs = inputs(start);
        inputs.links_up.insert(Market::Spot, 0);
        inputs.waiting_since = Some(start);
        let report = judge(&inputs, &BOUNDS, start + Duration::from_secs(11));
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(report
            .problems
            .iter()
            .any(|problem| problem.contains("WAL")));
        assert!(report
            .problems
            .iter()
            .any(|problem| problem.contains("no stream link")));
    }

    #[test]
    fn delivered_streams_need_no_link_and_show_in_status_as_delivered() {
        let start = Instant::now();
        let mut inputs = inputs(start);
        inputs.links_up.insert(Market::Spot, 0);
        assert!(!judge(&inputs, &BOUNDS, start).healthy);
        // Every stream of the market delivered: no link is expected.
        let delivered_at = 1_767_231_600_000_000;
        inputs.delivered = inputs
            .streams
            .keys()
            .map(|key| (key.clone(), delivered_at))
            .collect();
        inputs.streams.clear();
        let report = judge(&inputs, &BOUNDS, start);
        assert!(report.healthy, "{report:?}");
        let board = HealthBoard::new(BOUNDS, []);
        board.update(|board_inputs| *board_inputs = inputs);
        let live = board.live_status();
        assert_eq!(live.streams.len(), 2);
        assert!(live
            .streams
            .iter()
            .all(|stream| stream.delivered_at_us == Some(delivered_at) && !stream.stale));
    }
}
