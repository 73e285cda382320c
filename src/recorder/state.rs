//! The recorder's state machine, with no I/O: rows of unsealed hours,
//! exchange time and watch spans per market, which hours may be sealed now,
//! and which WAL segments are still needed. The runtime in `recorder/mod.rs`
//! feeds it durable, decoded frames (live or replayed) and acts on what it
//! answers, so replay and live recording go through the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::binance::decode::Decoded;
use crate::config::Config;
use crate::domain::{Hour, Market, Row, StreamKey, TimeUs};
use crate::metrics::Counters;
use crate::seal::{coverage, insert_row, is_sealable, Inserted, WatchSpan};
use crate::wal::SegmentId;

/// Checkpoint records: what the WAL must remember besides frames so that a
/// restart knows which stretches of time were watched. A `Sessions` record
/// opens every segment, so deleting old segments never loses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Checkpoint {
    /// A recorder process started; its span begins at the market's next event.
    SessionStart { market: String },
    /// A recorder process stopped cleanly at this exchange time.
    SessionStop {
        market: String,
        exchange_time: Option<TimeUs>,
    },
    /// The spans still relevant to unsealed hours, at a segment's start.
    Sessions {
        market: String,
        spans: Vec<WatchSpan>,
        pending_new_span: bool,
    },
    /// A link carrying these streams ended at this exchange time: the
    /// streams may miss data until a replacement delivers.
    LinkLost {
        market: String,
        streams: Vec<String>,
        exchange_time: Option<TimeUs>,
    },
}

/// A stretch during which a stream may have missed data because its link
/// was lost: from the last key and time before to the first key after
/// (unknown while the stream stays silent). Gap detection reads these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectWindow {
    pub key: StreamKey,
    /// Exchange time when the link was lost.
    pub lost_at: Option<TimeUs>,
    /// The stream's newest key (id, or kline open time) before the loss.
    pub last_key_before: Option<i64>,
    /// The first key received after the loss.
    pub first_key_after: Option<i64>,
}

/// Per-market state.
#[derive(Debug, Default)]
struct MarketState {
    /// The newest event time seen on any stream of the market.
    exchange_time: Option<TimeUs>,
    spans: Vec<WatchSpan>,
    /// A process started; the next event opens a new span.
    pending_new_span: bool,
    /// Host-minus-exchange clock offsets by hour of exchange time.
    clock_offsets: BTreeMap<Hour, Vec<i64>>,
    last_clock_offset: Option<i64>,
}

#[derive(Debug)]
struct OpenHour {
    rows: BTreeMap<i64, Row>,
    /// The oldest WAL segment holding a row of this hour.
    first_segment: SegmentId,
}

/// Per-(market, stream, symbol) state.
#[derive(Debug, Default)]
struct StreamState {
    /// Hours before this one are sealed (or were never watched).
    next_hour_to_seal: Option<Hour>,
    open: BTreeMap<Hour, OpenHour>,
    /// Hours being written now, with the segment their rows pin.
    in_flight: BTreeMap<Hour, Option<SegmentId>>,
}

impl StreamState {
    /// The newest key held in memory (unsealed hours only).
    fn newest_key(&self) -> Option<i64> {
        self.open
            .values()
            .rev()
            .find_map(|open_hour| open_hour.rows.keys().next_back().copied())
    }
}

/// One file to write: rows sorted and unique by key.
#[derive(Debug, Clone)]
pub struct SealJob {
    pub key: StreamKey,
    pub hour: Hour,
    pub rows: Vec<Row>,
    /// The segment the rows came from first, returned with a failure.
    pub first_segment: Option<SegmentId>,
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
    pub clock_offset_us: Option<i64>,
    /// The hour was sealed before: merge with the file on disk.
    pub late: bool,
}

pub struct State {
    grace_us: i64,
    markets: BTreeMap<Market, MarketState>,
    streams: BTreeMap<StreamKey, StreamState>,
    counters: Arc<Counters>,
    warned_unexpected: BTreeSet<StreamKey>,
    disconnect_windows: Vec<DisconnectWindow>,
}

impl State {
    pub fn new(config: &Config, counters: Arc<Counters>) -> State {
        let mut markets = BTreeMap::new();
        let mut streams = BTreeMap::new();
        for market_config in &config.markets {
            markets.insert(market_config.market, MarketState::default());
            for symbol in &market_config.symbols {
                for kind in &market_config.streams {
                    let key = StreamKey {
                        market: market_config.market,
                        symbol: symbol.clone(),
                        kind: *kind,
                    };
                    streams.insert(key, StreamState::default());
                }
            }
        }
        State {
            grace_us: i64::try_from(config.seal_grace.as_micros()).unwrap_or(i64::MAX),
            markets,
            streams,
            counters,
            warned_unexpected: BTreeSet::new(),
            disconnect_windows: Vec::new(),
        }
    }

    pub fn exchange_time(&self, market: Market) -> Option<TimeUs> {
        self.markets
            .get(&market)
            .and_then(|state| state.exchange_time)
    }

    pub fn spans(&self, market: Market) -> Vec<WatchSpan> {
        self.markets
            .get(&market)
            .map(|state| state.spans.clone())
            .unwrap_or_default()
    }

    /// A process starts recording `market`: its span opens at the next event.
    pub fn begin_session(&mut self, market: Market) {
        if let Some(state) = self.markets.get_mut(&market) {
            state.pending_new_span = true;
        }
    }

    /// A process stops recording `market` at `exchange_time`.
    pub fn end_session(&mut self, market: Market, exchange_time: Option<TimeUs>) {
        let Some(state) = self.markets.get_mut(&market) else {
            return;
        };
        state.pending_new_span = false;
        if let (Some(last), Some(time)) = (state.spans.last_mut(), exchange_time) {
            if last.end.is_none() {
                last.end = Some(time.max(last.start));
            }
        }
    }

    /// Applies a checkpoint record met during replay.
    pub fn apply_checkpoint(&mut self, checkpoint: Checkpoint) {
        match checkpoint {
            Checkpoint::SessionStart { market } => {
                if let Some(market) = Market::from_name(&market) {
                    self.begin_session(market);
                }
            }
            Checkpoint::SessionStop {
                market,
                exchange_time,
            } => {
                if let Some(market) = Market::from_name(&market) {
                    self.end_session(market, exchange_time);
                }
            }
            Checkpoint::LinkLost {
                market,
                streams,
                exchange_time,
            } => {
                let Some(market) = Market::from_name(&market) else {
                    return;
                };
                for name in streams {
                    let Some((symbol, kind)) = crate::binance::streams::parse_stream_name(&name)
                    else {
                        continue;
                    };
                    let key = StreamKey {
                        market,
                        symbol,
                        kind,
                    };
                    let last_key_before = self.streams.get(&key).and_then(StreamState::newest_key);
                    self.disconnect_windows.push(DisconnectWindow {
                        key,
                        lost_at: exchange_time,
                        last_key_before,
                        first_key_after: None,
                    });
                }
            }
            Checkpoint::Sessions {
                market,
                spans,
                pending_new_span,
            } => {
                let Some(market) = Market::from_name(&market) else {
                    return;
                };
                let Some(state) = self.markets.get_mut(&market) else {
                    return;
                };
                // The record is the full list as of its writing; anything
                // learnt earlier in the replay is older and contained in it.
                if spans.len() >= state.spans.len() || state.spans.is_empty() {
                    state.spans = spans;
                }
                state.pending_new_span |= pending_new_span;
            }
        }
    }

    /// The checkpoint records that open a new segment.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        let oldest_needed = self.oldest_unsealed_hour_start();
        self.markets
            .iter()
            .map(|(market, state)| Checkpoint::Sessions {
                market: market.name().to_owned(),
                spans: state
                    .spans
                    .iter()
                    .filter(|span| match (span.end, oldest_needed) {
                        (Some(end), Some(oldest)) => end >= oldest,
                        _ => true,
                    })
                    .copied()
                    .collect(),
                pending_new_span: state.pending_new_span,
            })
            .collect()
    }

    fn oldest_unsealed_hour_start(&self) -> Option<TimeUs> {
        self.streams
            .values()
            .flat_map(|stream| {
                stream
                    .next_hour_to_seal
                    .into_iter()
                    .chain(stream.open.keys().copied())
                    .chain(stream.in_flight.keys().copied())
            })
            .map(Hour::start)
            .min()
    }

    /// Records a `/api/v3/time` answer, and checks the exchange time the
    /// streams gave against it: event times ahead of the exchange's own
    /// clock would seal hours early, so they are reported.
    pub fn add_clock_sample(
        &mut self,
        market: Market,
        server_time: TimeUs,
        offset_us: i64,
    ) -> ClockCheck {
        let Some(state) = self.markets.get_mut(&market) else {
            return ClockCheck::Consistent;
        };
        state
            .clock_offsets
            .entry(Hour::containing(server_time))
            .or_default()
            .push(offset_us);
        state.last_clock_offset = Some(offset_us);
        let check = check_exchange_time(state.exchange_time, server_time);
        if let ClockCheck::StreamAhead { ahead_us } = check {
            Counters::add(&self.counters.clock_check_failures, 1);
            warn!(%market, ahead_us, "stream event times are ahead of /api/v3/time");
        }
        check
    }

    fn note_event_time(&mut self, market: Market, event_time: TimeUs) {
        let Some(state) = self.markets.get_mut(&market) else {
            return;
        };
        if state.pending_new_span {
            if let (Some(last), Some(previous_time)) = (state.spans.last_mut(), state.exchange_time)
            {
                // The previous process died without a stop record: its span
                // ends at the last event it made durable.
                if last.end.is_none() {
                    last.end = Some(previous_time.max(last.start));
                }
            }
            state.spans.push(WatchSpan {
                start: event_time,
                end: None,
            });
            state.pending_new_span = false;
        }
        state.exchange_time = Some(
            state
                .exchange_time
                .map_or(event_time, |time| time.max(event_time)),
        );
    }

    /// Applies one durable, decoded frame that came from WAL segment `segment`.
    pub fn apply(&mut self, market: Market, segment: SegmentId, decoded: Decoded) {
        match decoded {
            Decoded::Row {
                key,
                row,
                event_time,
            } => {
                self.note_event_time(market, event_time);
                self.insert(key, row, segment);
            }
            Decoded::KlineUpdate { event_time, .. } | Decoded::ServerShutdown { event_time } => {
                self.note_event_time(market, event_time);
            }
            Decoded::ControlReply(reply) => {
                if let Err(error) = reply.outcome {
                    Counters::add(&self.counters.control_errors, 1);
                    warn!(%market, id = ?reply.id, code = error.code, message = %error.message, "control request refused");
                }
            }
            Decoded::Ignored { what } => {
                Counters::add(&self.counters.events_ignored, 1);
                debug!(%market, %what, "event not recorded");
            }
        }
    }

    /// Disconnect windows seen so far (closed ones have `first_key_after`).
    pub fn disconnect_windows(&self) -> &[DisconnectWindow] {
        &self.disconnect_windows
    }

    fn insert(&mut self, key: StreamKey, row: Row, segment: SegmentId) {
        for window in self
            .disconnect_windows
            .iter_mut()
            .filter(|window| window.key == key && window.first_key_after.is_none())
        {
            window.first_key_after = Some(row.key());
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            Counters::add(&self.counters.rows_unexpected, 1);
            if self.warned_unexpected.insert(key.clone()) {
                warn!(%key, "row of a stream that is not configured; not recorded");
            }
            return;
        };
        let hour = Hour::containing(row.bucket_time());
        let late = stream.next_hour_to_seal.is_some_and(|next| hour < next);
        let open_hour = stream.open.entry(hour).or_insert_with(|| OpenHour {
            rows: BTreeMap::new(),
            first_segment: segment,
        });
        open_hour.first_segment = open_hour.first_segment.min(segment);
        match insert_row(&mut open_hour.rows, row) {
            Inserted::Duplicate => Counters::add(&self.counters.rows_duplicate, 1),
            Inserted::New if late => Counters::add(&self.counters.rows_late, 1),
            Inserted::New | Inserted::ReplacedRest => {}
        }
    }

    /// The files that can be sealed now, at most `max_jobs`. Each returned
    /// hour is marked in flight until [`State::seal_finished`].
    pub fn plan_seals(&mut self, max_jobs: usize) -> Vec<SealJob> {
        let mut jobs = Vec::new();
        for (key, stream) in self.streams.iter_mut() {
            if jobs.len() >= max_jobs {
                break;
            }
            let Some(market) = self.markets.get(&key.market) else {
                continue;
            };
            let (Some(now), Some(first_span)) = (market.exchange_time, market.spans.first()) else {
                continue;
            };
            let next = *stream
                .next_hour_to_seal
                .get_or_insert_with(|| Hour::containing(first_span.start));
            let late_hours: Vec<Hour> = stream
                .open
                .keys()
                .copied()
                .filter(|hour| *hour < next && !stream.in_flight.contains_key(hour))
                .collect();
            for hour in late_hours {
                if jobs.len() >= max_jobs {
                    break;
                }
                let open_hour = stream
                    .open
                    .remove(&hour)
                    .expect("listed from the map above");
                jobs.push(make_job(key, hour, Some(open_hour), market, true));
                stream.in_flight.insert(
                    hour,
                    jobs.last().and_then(|job: &SealJob| job.first_segment),
                );
            }
            let mut hour = next;
            while jobs.len() < max_jobs
                && is_sealable(key.kind, hour, now, self.grace_us)
                && !stream.in_flight.contains_key(&hour)
            {
                let open_hour = stream.open.remove(&hour);
                if open_hour.is_some() || coverage(&market.spans, hour).is_some() {
                    let job = make_job(key, hour, open_hour, market, false);
                    stream.in_flight.insert(hour, job.first_segment);
                    jobs.push(job);
                }
                hour = hour.next();
                stream.next_hour_to_seal = Some(hour);
            }
        }
        jobs
    }

    /// A seal finished. On failure its rows come back to be sealed later.
    pub fn seal_finished(
        &mut self,
        job_key: &StreamKey,
        hour: Hour,
        returned: Option<(Vec<Row>, SegmentId)>,
    ) {
        let Some(stream) = self.streams.get_mut(job_key) else {
            return;
        };
        stream.in_flight.remove(&hour);
        if let Some((rows, segment)) = returned {
            let open_hour = stream.open.entry(hour).or_insert_with(|| OpenHour {
                rows: BTreeMap::new(),
                first_segment: segment,
            });
            open_hour.first_segment = open_hour.first_segment.min(segment);
            for row in rows {
                insert_row(&mut open_hour.rows, row);
            }
        }
    }

    /// The oldest WAL segment that still holds rows of an unsealed hour.
    pub fn oldest_pinned_segment(&self) -> Option<SegmentId> {
        self.streams
            .values()
            .flat_map(|stream| {
                stream
                    .open
                    .values()
                    .map(|open_hour| open_hour.first_segment)
                    .chain(stream.in_flight.values().flatten().copied())
            })
            .min()
    }

    /// Rows held for hours not sealed yet (for logs and tests).
    pub fn n_unsealed_rows(&self) -> usize {
        self.streams
            .values()
            .flat_map(|stream| stream.open.values())
            .map(|open_hour| open_hour.rows.len())
            .sum()
    }
}

/// How the stream-derived exchange time compares with `/api/v3/time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockCheck {
    Consistent,
    /// Event times run ahead of the exchange's clock by more than
    /// [`MAX_STREAM_LEAD_US`]: something sends bogus times.
    StreamAhead {
        ahead_us: i64,
    },
}

/// How far event times may lead `/api/v3/time` (the request's own latency
/// and the exchange's event stamping) before it counts as inconsistent.
pub const MAX_STREAM_LEAD_US: i64 = 60 * crate::domain::MICROS_PER_SECOND;

/// Pure: compares the newest event time seen with the server time.
pub fn check_exchange_time(exchange_time: Option<TimeUs>, server_time: TimeUs) -> ClockCheck {
    match exchange_time {
        Some(exchange_time) if exchange_time - server_time > MAX_STREAM_LEAD_US => {
            ClockCheck::StreamAhead {
                ahead_us: exchange_time - server_time,
            }
        }
        _ => ClockCheck::Consistent,
    }
}

fn make_job(
    key: &StreamKey,
    hour: Hour,
    open_hour: Option<OpenHour>,
    market: &MarketState,
    late: bool,
) -> SealJob {
    let (rows, first_segment): (Vec<Row>, Option<SegmentId>) = match open_hour {
        Some(open_hour) => (
            open_hour.rows.into_values().collect(),
            Some(open_hour.first_segment),
        ),
        None => (Vec::new(), None),
    };
    let (coverage_from, coverage_to) = coverage(&market.spans, hour).unwrap_or_else(|| {
        // Rows from before the first watched moment (a trade stamped in the
        // previous hour that arrived first): vouch only for what we hold.
        let first = rows.first().map_or(hour.start(), Row::bucket_time);
        let last = rows
            .iter()
            .map(Row::bucket_time)
            .max()
            .unwrap_or(hour.start());
        (first.max(hour.start()), (last + 1).min(hour.end()))
    });
    let clock_offset_us = median(market.clock_offsets.get(&hour)).or(market.last_clock_offset);
    SealJob {
        key: key.clone(),
        hour,
        rows,
        first_segment,
        coverage_from,
        coverage_to,
        clock_offset_us,
        late,
    }
}

fn median(samples: Option<&Vec<i64>>) -> Option<i64> {
    let mut sorted = samples?.clone();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_unstable();
    Some(sorted[sorted.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Decimal8, Source, StreamKind, Symbol, TradeRow, MICROS_PER_HOUR, MICROS_PER_MINUTE,
    };

    const HOUR_START: TimeUs = 1_723_161_600_000_000;

    fn config() -> Config {
        Config::from_toml(
            r#"
[seal]
grace_ms = 1000
[markets.spot]
ws_url = "ws://127.0.0.1:1"
rest_url = "http://127.0.0.1:1"
symbols = ["BTCUSDT"]
streams = ["trade", "kline_1m"]
"#,
        )
        .expect("valid test config")
    }

    fn key(kind: StreamKind) -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind,
        }
    }

    fn trade(id: i64, time: TimeUs) -> Decoded {
        Decoded::Row {
            key: key(StreamKind::Trade),
            row: Row::Trade(TradeRow {
                trade_id: id,
                price: Decimal8::from_scaled(1),
                quantity: Decimal8::from_scaled(1),
                trade_time: time,
                is_buyer_maker: true,
                is_best_match: Some(true),
                trade_type: None,
                event_time: Some(time),
                recv_time: Some(time),
                source: Source::Ws,
            }),
            event_time: time,
        }
    }

    fn new_state() -> State {
        let mut state = State::new(&config(), Arc::new(Counters::default()));
        state.begin_session(Market::Spot);
        state
    }

    #[test]
    fn hours_seal_in_order_after_grace_with_empty_files_for_quiet_streams() {
        let mut state = new_state();
        let start = HOUR_START + 30 * MICROS_PER_MINUTE;
        state.apply(Market::Spot, SegmentId(1), trade(1, start));
        assert!(state.plan_seals(10).is_empty());
        state.apply(
            Market::Spot,
            SegmentId(1),
            trade(2, HOUR_START + MICROS_PER_HOUR + 999_999),
        );
        assert!(state.plan_seals(10).is_empty(), "grace not over yet");
        state.apply(
            Market::Spot,
            SegmentId(2),
            trade(3, HOUR_START + MICROS_PER_HOUR + 1_000_000),
        );
        let jobs = state.plan_seals(10);
        assert_eq!(
            jobs.len(),
            2,
            "trade and kline files of the first hour: {jobs:?}"
        );
        let trade_job = jobs
            .iter()
            .find(|job| job.key.kind == StreamKind::Trade)
            .expect("trade job");
        assert_eq!(trade_job.rows.len(), 1);
        assert_eq!(
            (trade_job.coverage_from, trade_job.coverage_to),
            (start, HOUR_START + MICROS_PER_HOUR)
        );
        let kline_job = jobs
            .iter()
            .find(|job| job.key.kind != StreamKind::Trade)
            .expect("kline job");
        assert!(kline_job.rows.is_empty());
        assert_eq!(
            state.oldest_pinned_segment(),
            Some(SegmentId(1)),
            "in flight and open rows pin segments"
        );
        for job in &jobs {
            state.seal_finished(&job.key, job.hour, None);
        }
        assert_eq!(
            state.oldest_pinned_segment(),
            Some(SegmentId(1)),
            "hour 2 rows are in segment 1 too"
        );
    }

    #[test]
    fn late_row_reseals_its_hour_and_failures_return_rows() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 10));
        state.apply(
            Market::Spot,
            SegmentId(1),
            trade(5, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let jobs = state.plan_seals(10);
        assert_eq!(jobs.len(), 2);
        for job in &jobs {
            state.seal_finished(&job.key, job.hour, None);
        }
        state.apply(Market::Spot, SegmentId(3), trade(2, HOUR_START + 20));
        assert_eq!(state.counters.snapshot().rows_late, 1);
        let jobs = state.plan_seals(10);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].late);
        assert_eq!(jobs[0].rows.len(), 1);
        assert!(
            state.plan_seals(10).is_empty(),
            "an hour in flight is not planned twice"
        );
        state.seal_finished(
            &jobs[0].key,
            jobs[0].hour,
            Some((jobs[0].rows.clone(), SegmentId(3))),
        );
        let again = state.plan_seals(10);
        assert_eq!(again.len(), 1, "a failed seal is retried");
    }

    #[test]
    fn spans_survive_restart_through_checkpoints() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 100));
        state.end_session(Market::Spot, state.exchange_time(Market::Spot));
        let checkpoints = state.checkpoints();
        let mut restarted = State::new(&config(), Arc::new(Counters::default()));
        for checkpoint in checkpoints {
            restarted.apply_checkpoint(checkpoint);
        }
        restarted.begin_session(Market::Spot);
        restarted.apply(
            Market::Spot,
            SegmentId(2),
            trade(9, HOUR_START + 5 * MICROS_PER_MINUTE),
        );
        assert_eq!(
            restarted.spans(Market::Spot),
            vec![
                WatchSpan {
                    start: HOUR_START + 100,
                    end: Some(HOUR_START + 100)
                },
                WatchSpan {
                    start: HOUR_START + 5 * MICROS_PER_MINUTE,
                    end: None
                }
            ]
        );
    }

    #[test]
    fn crashed_session_ends_at_its_last_event() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 100));
        state.apply(Market::Spot, SegmentId(1), trade(2, HOUR_START + 200));
        state.begin_session(Market::Spot);
        state.apply(Market::Spot, SegmentId(2), trade(3, HOUR_START + 900));
        assert_eq!(state.spans(Market::Spot)[0].end, Some(HOUR_START + 200));
    }

    #[test]
    fn lost_links_open_windows_that_the_next_row_closes() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(10, HOUR_START + 100));
        state.apply_checkpoint(Checkpoint::LinkLost {
            market: "spot".into(),
            streams: vec!["btcusdt@trade".into(), "btcusdt@kline_1m".into()],
            exchange_time: Some(HOUR_START + 100),
        });
        state.apply(Market::Spot, SegmentId(1), trade(15, HOUR_START + 900));
        let windows = state.disconnect_windows();
        assert_eq!(windows.len(), 2);
        let trade_window = windows
            .iter()
            .find(|window| window.key.kind == StreamKind::Trade)
            .expect("trade window");
        assert_eq!(
            (trade_window.last_key_before, trade_window.first_key_after),
            (Some(10), Some(15))
        );
        let kline_window = windows
            .iter()
            .find(|window| window.key.kind != StreamKind::Trade)
            .expect("kline window");
        assert_eq!(
            kline_window.first_key_after, None,
            "the kline stream stayed silent"
        );
    }

    #[test]
    fn exchange_time_is_checked_against_the_server_time() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START));
        assert_eq!(
            state.add_clock_sample(Market::Spot, HOUR_START + 5_000_000, 0),
            ClockCheck::Consistent
        );
        assert_eq!(
            state.add_clock_sample(Market::Spot, HOUR_START - 10_000_000, 0),
            ClockCheck::Consistent
        );
        let behind = HOUR_START - 2 * MAX_STREAM_LEAD_US;
        assert_eq!(
            state.add_clock_sample(Market::Spot, behind, 0),
            ClockCheck::StreamAhead {
                ahead_us: 2 * MAX_STREAM_LEAD_US
            }
        );
        assert_eq!(state.counters.snapshot().clock_check_failures, 1);
    }

    #[test]
    fn unconfigured_streams_are_counted_not_recorded() {
        let mut state = new_state();
        let Decoded::Row {
            row, event_time, ..
        } = trade(1, HOUR_START)
        else {
            unreachable!()
        };
        let other = StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("ETHUSDT").expect("valid"),
            kind: StreamKind::Trade,
        };
        state.apply(
            Market::Spot,
            SegmentId(1),
            Decoded::Row {
                key: other,
                row,
                event_time,
            },
        );
        assert_eq!(state.counters.snapshot().rows_unexpected, 1);
        assert_eq!(state.n_unsealed_rows(), 0);
    }
}
