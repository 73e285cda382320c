//! The recorder's state machine, with no I/O: rows of unsealed hours,
//! exchange time and watch spans per market, which hours may be sealed now,
//! and which WAL segments are still needed. The runtime in `recorder/mod.rs`
//! feeds it durable, decoded frames (live or replayed) and acts on what it
//! answers, so replay and live recording go through the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::binance::decode::Decoded;
use crate::config::{ClockBounds, Config, FillConfig};
use crate::domain::{
    Hour, Market, Row, Source, StreamKey, StreamKind, Symbol, TimeUs, UnfilledRange,
};
use crate::gaps::{holes_before, stream_hour_holes, Hole, IdAt, StreamHour};
use crate::metrics::Counters;
use crate::quarantine::QuarantinedFrame;
use crate::recorder::budget::{resolve_trade_holes, AggSpan, MAX_EVIDENCE_AGGS};
use crate::recorder::clock::MarketState;
use crate::recorder::declared::{micros, millis, round_retry_at, Declared};
use crate::recorder::held::HeldRows;
use crate::recorder::judge::{self, judge_hour, FillStatus, HourFacts, Verdict};
use crate::recorder::spill::{HourRows, SpillJob};
use crate::recorder::wake::{note_earliest, Wake};
use crate::seal::{complete_at, coverage, is_sealable, Inserted, WatchSpan};
use crate::wal::SegmentId;

pub use crate::recorder::checkpoint::Checkpoint;
pub use crate::recorder::clock::{
    check_exchange_time, implausible_times, ClockCheck, SourceTimes, MAX_STREAM_LEAD_US,
};
pub use crate::recorder::declared::revise_declared;
pub use crate::recorder::jobs::{past_deadline, FillJob, FillReport, Job, SealJob};
pub use crate::recorder::judge::{
    MonoMs, REASON_DEADLINE, REASON_FILL_DISABLED, REASON_NOT_SERVED, REASON_REST_BEHIND,
};

#[derive(Debug)]
struct OpenHour {
    /// In memory, and the runs spilled past the memory budget.
    rows: HourRows,
    /// The oldest WAL segment holding a row of this hour.
    first_segment: SegmentId,
}

/// What one symbol's trade and aggTrade streams wait for each other on
/// (the aggTrade evidence for trade holes, see `budget`).
#[derive(Debug, Default, Clone, Copy)]
struct SymbolGates {
    /// The next hour the aggTrade stream will seal, unless a fill round of
    /// that hour failed: its trade hours then ask REST themselves rather
    /// than wait out the deadline.
    agg_next: Option<Hour>,
    /// The next hour the trade stream will seal.
    trade_next: Option<Hour>,
}

/// Per-(market, stream, symbol) state.
#[derive(Debug, Default)]
struct StreamState {
    /// Hours before this one are sealed (or were never watched).
    next_hour_to_seal: Option<Hour>,
    open: BTreeMap<Hour, OpenHour>,
    /// Hours being written now, with the segment their rows pin.
    in_flight: BTreeMap<Hour, Option<SegmentId>>,
    /// The last row of the sealed hours (carried over empty hours): the
    /// `before` of the next hour's gap detection.
    last_sealed: Option<IdAt>,
    /// An hour of this stream was sealed (by this process or, read from
    /// disk, by an earlier one): the following hours are owed in full.
    sealed_any: bool,
    fills: BTreeMap<Hour, FillStatus>,
    declared: BTreeMap<Hour, Declared>,
    /// Sealed hours whose `unfilled` list changed: resealed with it.
    unfilled_changed: BTreeMap<Hour, Vec<UnfilledRange>>,
    /// Seal jobs that failed, to run again as they were (still in flight).
    seals_to_retry: BTreeMap<Hour, SealJob>,
}

impl StreamState {
    /// The newest key held in memory (unsealed hours only).
    fn newest_key(&self) -> Option<i64> {
        self.open
            .values()
            .rev()
            .find_map(|open_hour| open_hour.rows.last_key())
    }
}

pub struct State {
    grace_us: i64,
    clock: ClockBounds,
    /// Stream rows whose times or ids cannot be believed, for the
    /// runtime to quarantine (drained after each batch).
    rejected: Vec<QuarantinedFrame>,
    fill: FillConfig,
    markets: BTreeMap<Market, MarketState>,
    streams: BTreeMap<StreamKey, StreamState>,
    counters: Arc<Counters>,
    warned_unexpected: BTreeSet<StreamKey>,
    /// Complete spot aggTrade hours kept as evidence for the same
    /// symbol-hour's trade holes (see `budget`), until that trade hour
    /// seals: at most [`MAX_EVIDENCE_AGGS`] each, one per symbol-hour
    /// sealed by its aggTrade stream and not yet by its trade stream.
    agg_evidence: BTreeMap<(Market, Symbol, Hour), Vec<AggSpan>>,
    /// An hour was sealed or finished sealing since the last [`State::prune`]:
    /// only then can it drop anything (it walks every stream, so not per plan).
    prune_due: bool,
    /// When [`State::plan`] must walk the streams again.
    wake: Wake,
    /// Stream-hours judged ([`judge_hour`] calls), for the test that a
    /// frame costs no planning work when nothing can change.
    n_judged: u64,
    /// Delivered contracts (see `recorder/delivery.rs`): no hour starting
    /// at or after the delivery is owed by the symbol's streams.
    delivered: BTreeMap<(Market, Symbol), TimeUs>,
    /// `memory.max_held_mb` in bytes: past it, [`State::take_spills`]
    /// spills the biggest hours' rows to runs.
    max_held_bytes: usize,
    /// Rows inserted since the rows held were last measured.
    rows_since_budget_check: usize,
    /// The id of the next run spilled (unique in this process).
    next_run_id: u64,
}

/// Rows inserted between two measures of the rows held against the
/// memory budget (at 56 bytes a row, 224 KiB of growth).
const BUDGET_CHECK_ROWS: usize = 4_096;

/// The smallest hour worth a run of its own (a chunk of packed rows).
const MIN_RUN_BYTES: usize = 64 * 1024;

/// One run to write: the rows of `key`'s `hour` spilled out of memory.
#[derive(Debug)]
pub struct Spill {
    pub key: StreamKey,
    pub hour: Hour,
    pub run: SpillJob,
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
            clock: config.clock,
            rejected: Vec::new(),
            fill: config.fill.clone(),
            markets,
            streams,
            counters,
            warned_unexpected: BTreeSet::new(),
            agg_evidence: BTreeMap::new(),
            prune_due: false,
            wake: Wake::default(),
            n_judged: 0,
            delivered: BTreeMap::new(),
            max_held_bytes: usize::try_from(config.max_held_bytes).unwrap_or(usize::MAX),
            rows_since_budget_check: 0,
            next_run_id: 0,
        }
    }

    /// `symbol` of `market` was delivered at `at`: its streams seal the
    /// hours before `at` as usual (the hour holding it with the rows up to
    /// it) and owe no later hour.
    pub fn end_recording(&mut self, market: Market, symbol: &Symbol, at: TimeUs) {
        self.delivered.insert((market, symbol.clone()), at);
        self.wake.dirty = true;
    }

    /// How many times [`State::plan`] walked the streams (the rest of its
    /// calls found nothing due and returned at once).
    pub fn n_plan_walks(&self) -> u64 {
        self.wake.n_walks
    }

    /// How many stream-hours [`State::plan`] judged.
    pub fn n_judged(&self) -> u64 {
        self.n_judged
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

    /// A process starts recording `market`: its span opens at the next
    /// event. The streams' times of an earlier process are no evidence
    /// against the new one's first frames (the downtime lies between).
    pub fn begin_session(&mut self, market: Market) {
        self.wake.dirty = true;
        if let Some(state) = self.markets.get_mut(&market) {
            // A process that died without a stop record: its span ends at
            // the last time it made durable.
            if let (Some(last), Some(previous_time)) = (state.spans.last_mut(), state.exchange_time)
            {
                if last.end.is_none() {
                    last.end = Some(previous_time.max(last.start));
                }
            }
            state.pending_new_span = true;
            state.sources = SourceTimes::default();
            state.server_time = None;
            state.frames_since_sample = false;
        }
    }

    /// A process stops recording `market` at `exchange_time`.
    pub fn end_session(&mut self, market: Market, exchange_time: Option<TimeUs>) {
        self.wake.dirty = true;
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
        self.wake.dirty = true;
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
            // Lost links are logged and counted; the holes they leave are
            // found from the ids and the kline grid (`gaps`), which see
            // every hole a link loss can make, so nothing more is kept.
            Checkpoint::LinkLost { .. } => {}
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
                // The record is the list still needed as of its writing
                // (older spans pruned); anything learnt earlier in the
                // replay is older, so a record at least as new replaces it.
                let newest_start = |list: &[WatchSpan]| list.last().map(|span| span.start);
                if state.spans.is_empty() || newest_start(&spans) >= newest_start(&state.spans) {
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

    /// Records a `/api/v3/time` answer: the exchange's own clock, which moves
    /// the market's clock when no stream frame arrived since the previous
    /// answer (so a market whose streams are all silent still seals), and
    /// checked against the streams' clock: event times ahead of it would
    /// seal hours early, so they are reported.
    pub fn add_clock_sample(
        &mut self,
        market: Market,
        server_time: TimeUs,
        offset_us: i64,
    ) -> ClockCheck {
        let Some(state) = self.markets.get_mut(&market) else {
            return ClockCheck::Consistent;
        };
        // One list of offsets for the hour being recorded; older hours'
        // lists go once every stream has sealed past them (`prune`).
        state
            .clock_offsets
            .entry(Hour::containing(server_time))
            .or_default()
            .push(offset_us);
        state.last_clock_offset = Some(offset_us);
        let check = check_exchange_time(state.sources.newest(), server_time);
        if let ClockCheck::StreamAhead { ahead_us } = check {
            Counters::add(&self.counters.clock_check_failures, 1);
            warn!(%market, ahead_us, "stream event times are ahead of /api/v3/time");
        }
        state.server_time = Some(
            state
                .server_time
                .map_or(server_time, |time| time.max(server_time)),
        );
        let silent = !std::mem::take(&mut state.frames_since_sample);
        if silent {
            state.silent_server_time = state.silent_server_time.max(Some(server_time));
        }
        // A process whose streams are all silent is still watching.
        state.advance_clock(silent.then_some(server_time));
        check
    }

    /// Stream `source` of `market` showed `event_time` (already checked).
    fn note_event_time(&mut self, market: Market, source: &StreamKey, event_time: TimeUs) {
        let Some(state) = self.markets.get_mut(&market) else {
            return;
        };
        state.sources.note(source, event_time);
        state.frames_since_sample = true;
        state.advance_clock(Some(event_time));
    }

    /// Applies one durable, decoded frame that came from WAL segment `segment`.
    /// A row whose times or id cannot be believed (see
    /// [`implausible_times`]) is set aside for the quarantine, counted, and
    /// neither filed nor used for the clock.
    pub fn apply(&mut self, market: Market, segment: SegmentId, decoded: Decoded) {
        match decoded {
            Decoded::Row {
                key,
                row,
                event_time,
            } => {
                if let Some(reason) = self.implausible_row(market, &key, &row, event_time) {
                    // The stream's time still counts as its own: it moves no
                    // clock alone, and if a second stream agrees (the first
                    // frames after a long outage of every link) the next
                    // frames are believed. Only a row whose own times agree
                    // is such evidence: one with T = 0, T after E or E hours
                    // after T vouches for no time, and noting its E would let
                    // one more lying frame "agree" with it.
                    let times_agree =
                        implausible_times(&row, event_time, None, &self.clock).is_none();
                    if let Some(state) = self.markets.get_mut(&market).filter(|_| times_agree) {
                        state.sources.note(&key, event_time);
                        state.advance_clock(None);
                    }
                    self.reject(market, &key, &row, event_time, reason);
                    return;
                }
                self.note_event_time(market, &key, event_time);
                self.insert(key, row, segment);
            }
            Decoded::KlineUpdate { key, event_time } => {
                let newest_other = self
                    .markets
                    .get(&market)
                    .and_then(|state| state.sources.newest_other_than(&key));
                let leads = newest_other
                    .is_some_and(|other| event_time.saturating_sub(other) > self.clock.max_lead_us);
                if leads {
                    Counters::add(&self.counters.frames_implausible, 1);
                    debug!(%key, event_time, "kline update time leads every other source; not used for the clock");
                } else {
                    self.note_event_time(market, &key, event_time);
                }
            }
            // Not tied to a stream, so never corroborated: it moves no clock.
            Decoded::ServerShutdown { .. } => {}
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

    /// Why a stream row cannot be believed, if it cannot.
    fn implausible_row(
        &self,
        market: Market,
        key: &StreamKey,
        row: &Row,
        event_time: TimeUs,
    ) -> Option<String> {
        let market_state = self.markets.get(&market)?;
        let newest_other = market_state
            .sources
            .newest_other_than(key)
            .max(market_state.server_time);
        if let Some(reason) = implausible_times(row, event_time, newest_other, &self.clock) {
            return Some(reason);
        }
        if matches!(row, Row::Kline(_)) {
            return None;
        }
        let stream = self.streams.get(key)?;
        let newest_id = stream
            .newest_key()
            .or(stream.last_sealed.map(|last| last.id))?;
        (row.key().saturating_sub(newest_id) > self.clock.max_id_jump).then(|| {
            format!(
                "id {} jumps past the newest id {newest_id} by more than clock.max_id_jump",
                row.key()
            )
        })
    }

    fn reject(
        &mut self,
        market: Market,
        key: &StreamKey,
        row: &Row,
        event_time: TimeUs,
        reason: String,
    ) {
        let total_before = self.counters.frames_implausible.get();
        Counters::add(&self.counters.frames_implausible, 1);
        // Once, then at each power of ten: a hostile feed cannot flood the log.
        if total_before == 0 || total_before.ilog10() != (total_before + 1).ilog10() {
            warn!(%key, event_time, %reason, total = total_before + 1, "implausible row quarantined");
        }
        let frame = serde_json::json!({
            "stream": key.to_string(),
            "event_time": event_time,
            "row": row,
        });
        self.rejected.push(QuarantinedFrame {
            market,
            recv_time_us: match row {
                Row::Trade(trade) => trade.recv_time,
                Row::AggTrade(agg_trade) => agg_trade.recv_time,
                Row::Kline(kline) => kline.recv_time,
            }
            .unwrap_or(event_time),
            error: format!("implausible: {reason}"),
            frame: frame.to_string(),
        });
    }

    /// Rows set aside since the last call, for the quarantine.
    pub fn take_rejected(&mut self) -> Vec<QuarantinedFrame> {
        std::mem::take(&mut self.rejected)
    }

    fn insert(&mut self, key: StreamKey, row: Row, segment: SegmentId) -> Option<Inserted> {
        let from_stream = row.source() == Source::Ws;
        let Some(stream) = self.streams.get_mut(&key) else {
            Counters::add(&self.counters.rows_unexpected, 1);
            if self.warned_unexpected.insert(key.clone()) {
                warn!(%key, "row of a stream that is not configured; not recorded");
            }
            return None;
        };
        let hour = Hour::containing(row.bucket_time());
        let late = from_stream && stream.next_hour_to_seal.is_some_and(|next| hour < next);
        if stream.next_hour_to_seal.is_some_and(|next| hour < next) {
            // A row of a sealed hour reseals it (a REST row of one too).
            self.wake.dirty = true;
        }
        let open_hour = stream.open.entry(hour).or_insert_with(|| OpenHour {
            rows: HourRows::new(key.kind),
            first_segment: segment,
        });
        open_hour.first_segment = open_hour.first_segment.min(segment);
        let inserted = open_hour.rows.insert(row);
        self.rows_since_budget_check += 1;
        match inserted {
            Inserted::Duplicate if from_stream => Counters::add(&self.counters.rows_duplicate, 1),
            Inserted::New if late => Counters::add(&self.counters.rows_late, 1),
            Inserted::New if !from_stream => Counters::add(&self.counters.rows_filled, 1),
            _ => {}
        }
        Some(inserted)
    }

    /// Continues after sealed files found on disk: `hour` is the newest
    /// sealed hour of `key` and `last_key` its last row's key, so the next
    /// hour is judged from its start, and hours missed while the recorder
    /// was down are owed (and backfilled when the fill is on).
    pub fn resume_after_sealed(&mut self, key: &StreamKey, hour: Hour, last_key: Option<i64>) {
        self.wake.dirty = true;
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        if stream
            .next_hour_to_seal
            .is_some_and(|next| next > hour.next())
        {
            return;
        }
        stream.next_hour_to_seal = Some(hour.next());
        stream.sealed_any = true;
        if let Some(id) = last_key {
            // The row's own time is not in the footer; its hour's last µs
            // bounds it, which is all detection needs of a previous hour.
            stream.last_sealed = Some(IdAt {
                id,
                time: hour.end() - 1,
            });
        }
    }

    /// A sealed file declares these holes: retry the ones REST may still fill.
    pub fn declare_sealed_holes(
        &mut self,
        key: &StreamKey,
        hour: Hour,
        unfilled: Vec<UnfilledRange>,
    ) {
        self.wake.dirty = true;
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        // A footer is input like any other: its ranges are kept within
        // their hour, so a damaged one cannot send REST past it.
        let last_us = hour.end() - 1;
        let unfilled: Vec<UnfilledRange> = unfilled
            .into_iter()
            .map(|mut range| {
                range.from_time = range.from_time.clamp(hour.start(), last_us);
                range.to_time = range.to_time.clamp(range.from_time, last_us);
                if matches!(key.kind, StreamKind::Kline(_)) {
                    range.from = range.from.map(|open| open.clamp(hour.start(), last_us));
                    range.to = range.to.map(|open| open.clamp(hour.start(), last_us));
                }
                range
            })
            .collect();
        if unfilled
            .iter()
            .any(|range| range.reason != REASON_NOT_SERVED)
        {
            stream.declared.insert(
                hour,
                Declared {
                    unfilled,
                    retry_at: 0,
                    in_flight: false,
                },
            );
        }
    }

    /// Number of hours with declared holes being retried (for logs and tests).
    pub fn n_declared_hours(&self) -> usize {
        self.streams
            .values()
            .map(|stream| stream.declared.len())
            .sum()
    }

    /// Applies a durable fill report: its rows join the hour (a stream row
    /// wins over a REST row of the same key), and what REST answered
    /// decides the next step for the holes.
    pub fn apply_fill(&mut self, segment: SegmentId, report: FillReport, now: MonoMs) {
        self.wake.dirty = true;
        let Some(key) = report.key() else {
            warn!(market = %report.market, stream = %report.stream, "fill report of an unknown stream; skipped");
            return;
        };
        let hour = Hour::containing(report.hour_start);
        debug!(%key, %hour, n_rows = report.rows.len(), settled = ?report.settled, failure = ?report.failure, declared = report.declared, "fill report applied");
        let declared_rows: Vec<Row> = if report.declared {
            report.rows.clone()
        } else {
            Vec::new()
        };
        // (The last part of a report cut into parts may hold no rows when
        // earlier parts did: then an earlier failure stays the reason too.)
        let answered_nothing = report.rows.is_empty() && report.settled.is_empty();
        for row in report.rows {
            self.insert(key.clone(), row, segment);
        }
        if report.rows_only {
            return;
        }
        let fill = self.fill.clone();
        let counters = self.counters.clone();
        let exchange_now = self.exchange_time(key.market).unwrap_or(0);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if report.declared {
            let Some(declared) = stream.declared.get_mut(&hour) else {
                return;
            };
            declared.in_flight = false;
            declared.retry_at = exchange_now.saturating_add(micros(fill.declared_retry));
            let revised = revise_declared(
                key.kind,
                hour,
                &declared.unfilled,
                &report.settled,
                &declared_rows,
                report.failure.as_deref(),
            );
            let n_retryable = |list: &[UnfilledRange]| {
                list.iter()
                    .filter(|range| range.reason != REASON_NOT_SERVED)
                    .count()
            };
            let n_filled = n_retryable(&declared.unfilled).saturating_sub(n_retryable(&revised));
            Counters::add(&counters.holes_filled_late, n_filled as u64);
            if revised != declared.unfilled {
                stream.unfilled_changed.insert(hour, revised.clone());
                declared.unfilled = revised;
            }
            if n_retryable(&declared.unfilled) == 0 {
                stream.declared.remove(&hour);
            }
            return;
        }
        if stream.next_hour_to_seal.is_some_and(|next| hour < next) {
            return;
        }
        let status = stream.fills.entry(hour).or_default();
        status.in_flight = false;
        status.n_rounds += 1;
        status.settled.extend(report.settled);
        match report.failure {
            Some(reason) if reason == REASON_REST_BEHIND => {
                Counters::add(&counters.fill_failures, 1);
                status.rest_behind = true;
                status.retry_at = now;
                // A round cut before any answer tells nothing new: an
                // earlier round's failure (REST down, say) stays the reason.
                if !(answered_nothing && status.last_failure.is_some()) {
                    status.last_failure = Some(reason);
                }
            }
            Some(reason) => {
                Counters::add(&counters.fill_failures, 1);
                status.retry_at = round_retry_at(&fill, status.n_rounds, now);
                status.last_failure = Some(reason);
            }
            None => status.retry_at = now,
        }
    }

    /// A fill task ended without a report (it panicked): try again later.
    pub fn fill_lost(&mut self, key: &StreamKey, hour: Hour, declared: bool, now: MonoMs) {
        self.wake.dirty = true;
        let retry_at = now.saturating_add(millis(self.fill.retry_max));
        let declared_retry_at = self
            .exchange_time(key.market)
            .unwrap_or(0)
            .saturating_add(micros(self.fill.declared_retry));
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        if declared {
            if let Some(entry) = stream.declared.get_mut(&hour) {
                entry.in_flight = false;
                entry.retry_at = declared_retry_at;
            }
        } else if let Some(status) = stream.fills.get_mut(&hour) {
            status.in_flight = false;
            status.retry_at = retry_at;
            status.last_failure = Some("fill task failed".to_owned());
        }
    }

    /// What to do now, at most `max_seals` seals: files to seal (each hour
    /// returned is marked in flight until [`State::seal_finished`]) and
    /// fill rounds to run (each marked in flight until its report is applied).
    ///
    /// The hours of one stream are decided in order: an hour whose holes
    /// are being filled holds back the next, whose detection depends on it.
    /// An hour is sealed when it has no hole left, or when its fill deadline
    /// (exchange time) has passed, with its open holes declared.
    pub fn plan(&mut self, max_seals: usize, now: MonoMs) -> Vec<Job> {
        let mut jobs = Vec::new();
        if !self.wake.is_due(&self.markets, now) {
            return jobs;
        }
        let mut wake_exchange: BTreeMap<Market, Option<TimeUs>> = BTreeMap::new();
        let mut wake_mono: Option<MonoMs> = None;
        let mut capped = false;
        let mut n_seals = 0;
        // It walks every stream: only when the evidence can be used.
        let gates = if self.fill.agg_trade_evidence {
            self.symbol_gates()
        } else {
            Vec::new()
        };
        let fill = &self.fill;
        for (index, (key, stream)) in self.streams.iter_mut().enumerate() {
            let gate = gates.get(index).copied().unwrap_or_default();
            let Some(market) = self.markets.get(&key.market) else {
                continue;
            };
            let (Some(exchange_now), Some(first_span)) =
                (market.exchange_time, market.spans.first())
            else {
                continue;
            };
            let next = *stream
                .next_hour_to_seal
                .get_or_insert_with(|| Hour::containing(first_span.start));
            // The earliest exchange time at which this stream's verdicts
            // change with no event (only times still ahead count).
            let market_wake = wake_exchange.entry(key.market).or_default();
            let mut note_exchange = |at: TimeUs| {
                if at > exchange_now {
                    note_earliest(market_wake, at);
                }
            };

            while n_seals < max_seals {
                let Some((_, job)) = stream.seals_to_retry.pop_first() else {
                    break;
                };
                jobs.push(Job::Seal(job));
                n_seals += 1;
            }
            capped |= !stream.seals_to_retry.is_empty();

            let late_hours: BTreeSet<Hour> = stream
                .open
                .keys()
                .chain(stream.unfilled_changed.keys())
                .copied()
                .filter(|hour| *hour < next && !stream.in_flight.contains_key(hour))
                .filter(|hour| {
                    // A run being written: `spill_done` wakes the plan.
                    !stream
                        .open
                        .get(hour)
                        .is_some_and(|open| open.rows.is_spilling())
                })
                .collect();
            for hour in late_hours {
                if n_seals >= max_seals {
                    capped = true;
                    break;
                }
                let open_hour = stream.open.remove(&hour);
                let unfilled = stream.unfilled_changed.remove(&hour);
                let job = make_late_job(key, hour, open_hour, unfilled, market);
                stream.in_flight.insert(hour, job.first_segment);
                jobs.push(Job::Seal(job));
                n_seals += 1;
            }

            // Declared holes are retried for `fill.declared_give_up_hours`;
            // then they stay declared in their file, for `backfill`.
            let n_declared_before = stream.declared.len();
            stream.declared.retain(|hour, declared| {
                let give_up_at = hour.end().saturating_add(fill.declared_give_up_us);
                note_exchange(give_up_at);
                note_exchange(declared.retry_at);
                declared.in_flight || give_up_at > exchange_now
            });
            let n_given_up = n_declared_before - stream.declared.len();
            if n_given_up > 0 {
                Counters::add(&self.counters.declared_given_up, n_given_up as u64);
                warn!(%key, n_hours = n_given_up, "declared holes no longer retried; `binance-recorder backfill` retries them");
            }

            if fill.enabled {
                for (hour, declared) in stream.declared.iter_mut() {
                    if declared.in_flight
                        || declared.retry_at > exchange_now
                        || stream.in_flight.contains_key(hour)
                    {
                        continue;
                    }
                    let holes: Vec<Hole> = declared
                        .unfilled
                        .iter()
                        .filter(|range| range.reason != REASON_NOT_SERVED)
                        .filter_map(|range| Hole::from_unfilled(key.kind, range))
                        .collect();
                    declared.in_flight = true;
                    let job = FillJob {
                        key: key.clone(),
                        hour: *hour,
                        holes,
                        closed_before: exchange_now,
                        declared: true,
                        // Its hour is sealed already: nothing waits on it.
                        deadline: None,
                    };
                    jobs.push(Job::Fill(job));
                }
            }

            // A few entries at most: found without building a key.
            let delivered_at = self
                .delivered
                .iter()
                .find(|((market, symbol), _)| *market == key.market && *symbol == key.symbol)
                .map(|(_, at)| *at);
            // Hours are judged even when no seal may start (every slot
            // busy, or seals paused after a failure), so their fill rounds
            // start on time; an hour judged ready to seal then waits for a
            // slot without being judged again ([`FillStatus::seal_ready`]).
            let mut hour = next;
            while is_sealable(key.kind, hour, exchange_now, self.grace_us)
                && !stream.in_flight.contains_key(&hour)
            {
                let seals_capped = n_seals >= max_seals;
                if seals_capped
                    && stream
                        .fills
                        .get(&hour)
                        .is_some_and(|status| status.seal_ready)
                {
                    break;
                }
                let watched = coverage(&market.spans, hour);
                // After a delivery only rows make an hour owed (none are
                // expected; were any held, they would pin the WAL).
                let delivered = delivered_at.is_some_and(|at| hour.start() >= at);
                // The delivery hour owes what came before the delivery only.
                let owed_until = delivered_at
                    .filter(|at| *at > hour.start() && *at < hour.end())
                    .unwrap_or(hour.end());
                let owed = stream.open.contains_key(&hour)
                    || (!delivered
                        && (watched.is_some()
                            || (stream.sealed_any
                                && fill.enabled
                                && fill.backfill_from_hour_start)));
                if !owed {
                    hour = hour.next();
                    stream.next_hour_to_seal = Some(hour);
                    continue;
                }
                let sealable_at = complete_at(key.kind, hour).saturating_add(self.grace_us);
                let judged_since = stream
                    .fills
                    .get(&hour)
                    .map_or(exchange_now, |status| status.judged_since)
                    .max(sealable_at);
                let deadline = judged_since.saturating_add(fill.deadline_us);
                if stream.fills.get(&hour).is_some_and(|status| {
                    fill.enabled && status.is_waiting(exchange_now, deadline, now)
                }) {
                    break;
                }
                if stream
                    .open
                    .get(&hour)
                    .is_some_and(|open| open.rows.is_spilling())
                {
                    // A run of it is being written; `spill_done` wakes the plan.
                    break;
                }
                let rows_facts = StreamHour {
                    kind: key.kind,
                    hour,
                    spans: stream
                        .open
                        .get(&hour)
                        .map(|open| open.rows.id_spans())
                        .unwrap_or_default(),
                    before: stream.last_sealed,
                    after: stream
                        .open
                        .range(hour.next()..)
                        .find_map(|(_, open)| open.rows.first_id_at()),
                    from_hour_start: fill.enabled && fill.backfill_from_hour_start,
                    watched_from: watched.map_or(hour.start(), |(from, _)| from),
                };
                let mut holes = stream_hour_holes(&rows_facts);
                if owed_until < hour.end() {
                    holes = holes_before(key.kind, holes, owed_until);
                }
                let owed_from_start = rows_facts.from_hour_start || rows_facts.before.is_some();
                let status = stream.fills.entry(hour).or_insert_with(|| FillStatus {
                    judged_since,
                    ..FillStatus::default()
                });
                let evidence_due = key.kind == StreamKind::Trade
                    && key.market == Market::Spot
                    && fill.agg_trade_evidence;
                self.n_judged += 1;
                let verdict = judge_hour(HourFacts {
                    kind: key.kind,
                    hour,
                    exchange_now,
                    now,
                    deadline,
                    watched,
                    holes,
                    owed_from_start,
                    status,
                    fill,
                    agg_hour_pending: evidence_due
                        && gate.agg_next.is_some_and(|next| next <= hour),
                    owed_until,
                });
                let sealing = match verdict {
                    Verdict::Wait => break,
                    Verdict::Fill { holes } => {
                        let job = FillJob {
                            key: key.clone(),
                            hour,
                            holes,
                            closed_before: exchange_now,
                            declared: false,
                            deadline: Some(judge::round_cut_at(deadline, fill.deadline_us)),
                        };
                        status.in_flight = true;
                        if let Some(aggs) = self
                            .agg_evidence
                            .get(&(key.market, key.symbol.clone(), hour))
                            .filter(|_| evidence_due)
                        {
                            let resolved = resolve_trade_holes(&job.holes, aggs);
                            // Used only when it answers everything: a trade hour
                            // with aggregates of several fills needs the same
                            // historicalTrades pages either way, and one round
                            // is quicker than an answer and then a round.
                            if resolved.holes.is_empty() && !status.answered_by_agg_trades {
                                status.answered_by_agg_trades = true;
                                Counters::add(&self.counters.fill_answers_from_agg_trades, 1);
                                debug!(%key, %hour, n_rows = resolved.rows.len(), n_holes_left = resolved.holes.len(), "trade holes answered by the aggTrade stream; no REST call");
                                let report =
                                    FillReport::new(&job, resolved.rows, resolved.settled, None);
                                jobs.push(Job::Answered(report));
                                break;
                            }
                        }
                        Counters::add(&self.counters.holes_found, job.holes.len() as u64);
                        Counters::add(&self.counters.fill_rounds, 1);
                        debug!(%key, %hour, n_holes = job.holes.len(), "holes found; filling from REST");
                        jobs.push(Job::Fill(job));
                        break;
                    }
                    Verdict::Seal(_) if seals_capped => {
                        status.seal_ready = true;
                        break;
                    }
                    Verdict::Seal(sealing) => sealing,
                };

                // Seal, declaring what is still open.
                if let (Some(reason), true) = (&sealing.declared_reason, fill.enabled) {
                    warn!(%key, %hour, n_holes = sealing.n_open_holes, %reason, "sealing with holes REST did not fill; declared in the file and retried");
                }
                let unfilled = sealing.unfilled;
                Counters::add(&self.counters.holes_declared, unfilled.len() as u64);
                if fill.enabled
                    && unfilled
                        .iter()
                        .any(|range| range.reason != REASON_NOT_SERVED)
                {
                    stream.declared.insert(
                        hour,
                        Declared {
                            unfilled: unfilled.clone(),
                            retry_at: exchange_now.saturating_add(micros(fill.declared_retry)),
                            in_flight: false,
                        },
                    );
                }
                stream.fills.remove(&hour);
                let open_hour = stream.open.remove(&hour);
                let mut job = make_job(key, hour, open_hour, market, false);
                if watched.is_some() || job.rows.is_empty() || owed_from_start {
                    job.coverage_from = sealing.coverage_from;
                    job.coverage_to = sealing.coverage_to;
                }
                let evidence_wanted = key.kind == StreamKind::AggTrade
                    && key.market == Market::Spot
                    && fill.agg_trade_evidence
                    && gate.trade_next.is_some_and(|next| next <= hour);
                if evidence_wanted
                    && unfilled.is_empty()
                    && (job.coverage_from, job.coverage_to) == (hour.start(), hour.end())
                    && job.rows.len() <= MAX_EVIDENCE_AGGS
                    && !job.rows.has_runs()
                {
                    // The file vouches for the whole hour: its aggregates
                    // name every trade id of it.
                    let spans = job
                        .rows
                        .in_memory()
                        .rows()
                        .filter_map(|row| AggSpan::of(&row))
                        .collect();
                    self.agg_evidence
                        .insert((key.market, key.symbol.clone(), hour), spans);
                }
                job.unfilled = Some(unfilled);
                if let Some(last) = job.rows.last_id_at() {
                    stream.last_sealed = Some(last);
                }
                stream.sealed_any = true;
                stream.in_flight.insert(hour, job.first_segment);
                jobs.push(Job::Seal(job));
                n_seals += 1;
                hour = hour.next();
                stream.next_hour_to_seal = Some(hour);
            }

            // Where this stream stopped, and when that changes by itself.
            let sealable_at = complete_at(key.kind, hour).saturating_add(self.grace_us);
            note_exchange(sealable_at);
            if let Some(status) = stream.fills.get(&hour) {
                let deadline = status
                    .judged_since
                    .max(sealable_at)
                    .saturating_add(fill.deadline_us);
                note_exchange(deadline);
                note_exchange(judge::agg_wait_ends(deadline, fill.deadline_us));
                if status.retry_at > now {
                    note_earliest(&mut wake_mono, status.retry_at);
                }
            }
            capped |= n_seals >= max_seals
                && exchange_now >= sealable_at
                && !stream.in_flight.contains_key(&hour);
        }
        self.wake = Wake {
            // A seal moves the gates other streams of its symbol wait on.
            dirty: n_seals > 0,
            capped,
            exchange: wake_exchange,
            mono: wake_mono,
            walked_at: Some(now),
            n_walks: self.wake.n_walks + 1,
        };
        if n_seals > 0 || self.prune_due {
            self.prune();
            self.prune_due = false;
        }
        jobs
    }

    /// Per stream, in the order `plan` walks them (market, symbol, kind:
    /// a symbol's streams are neighbours), its symbol's [`SymbolGates`].
    /// One walk, no allocation per stream: planning runs often.
    fn symbol_gates(&self) -> Vec<SymbolGates> {
        // Before the first plan: the hour of the market's first watch span.
        let next_of = |key: &StreamKey, stream: &StreamState| {
            stream.next_hour_to_seal.or_else(|| {
                let first_span = self.markets.get(&key.market)?.spans.first()?;
                Some(Hour::containing(first_span.start))
            })
        };
        let entries: Vec<(&StreamKey, &StreamState)> = self.streams.iter().collect();
        let mut gates = Vec::with_capacity(entries.len());
        for group in entries.chunk_by(|(a, _), (b, _)| a.market == b.market && a.symbol == b.symbol)
        {
            let mut gate = SymbolGates::default();
            for (key, stream) in group {
                match key.kind {
                    StreamKind::AggTrade => {
                        gate.agg_next = next_of(key, stream).filter(|hour| {
                            stream
                                .fills
                                .get(hour)
                                .is_none_or(|status| status.last_failure.is_none())
                        });
                    }
                    StreamKind::Trade => gate.trade_next = next_of(key, stream),
                    StreamKind::Kline(_) => {}
                }
            }
            gates.extend(std::iter::repeat_n(gate, group.len()));
        }
        gates
    }

    /// Drops what no unsealed hour needs any more: clock offsets of hours
    /// every stream of the market has sealed, and watch spans that ended
    /// before them (the newest span is always kept). With the rows, held
    /// per unsealed hour only, this bounds the state by the hours it serves.
    fn prune(&mut self) {
        // Evidence goes once its trade hour is sealed.
        let streams = &self.streams;
        self.agg_evidence.retain(|(market, symbol, hour), _| {
            let trade = StreamKey {
                market: *market,
                symbol: symbol.clone(),
                kind: StreamKind::Trade,
            };
            streams
                .get(&trade)
                .is_some_and(|stream| stream.next_hour_to_seal.is_none_or(|next| next <= *hour))
        });
        for (market, market_state) in self.markets.iter_mut() {
            let oldest_needed = self
                .streams
                .iter()
                .filter(|(key, _)| key.market == *market)
                .flat_map(|(_, stream)| {
                    stream
                        .next_hour_to_seal
                        .into_iter()
                        .chain(stream.open.keys().copied())
                        .chain(stream.in_flight.keys().copied())
                })
                .min();
            let Some(oldest_needed) = oldest_needed else {
                continue;
            };
            market_state.clock_offsets = market_state.clock_offsets.split_off(&oldest_needed);
            let n_spans = market_state.spans.len();
            let mut index = 0;
            market_state.spans.retain(|span| {
                index += 1;
                index == n_spans || span.end.is_none_or(|end| end >= oldest_needed.start())
            });
        }
    }

    /// A seal finished: the hour's rows are on disk, its WAL pin goes.
    pub fn seal_finished(&mut self, job_key: &StreamKey, hour: Hour) {
        self.wake.dirty = true;
        if let Some(stream) = self.streams.get_mut(job_key) {
            stream.in_flight.remove(&hour);
        }
        self.prune_due = true;
    }

    /// A seal failed: the same job (rows, holes, coverage) is planned again
    /// and the hour stays in flight meanwhile, pinning its WAL segments.
    pub fn seal_failed(&mut self, job: SealJob) {
        self.wake.dirty = true;
        if let Some(stream) = self.streams.get_mut(&job.key) {
            stream.seals_to_retry.insert(job.hour, job);
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

    /// Hours whose seal waits on a fill round running or queued now (for
    /// the log that says why hours are not sealed yet).
    pub fn n_hours_waiting_on_fill(&self) -> usize {
        self.streams
            .values()
            .flat_map(|stream| stream.fills.values())
            .filter(|status| status.in_flight)
            .count()
    }

    /// Runs to spill when the rows held in memory pass the budget: the
    /// biggest hours' rows, until what stays is at most half the budget
    /// (so spills come in few, large runs). Measured at most every
    /// [`BUDGET_CHECK_ROWS`] rows inserted: a walk of the open hours.
    pub fn take_spills(&mut self) -> Vec<Spill> {
        if self.rows_since_budget_check < BUDGET_CHECK_ROWS {
            return Vec::new();
        }
        self.rows_since_budget_check = 0;
        let mut held = 0usize;
        let mut candidates = Vec::new();
        for (key, stream) in &self.streams {
            for (hour, open_hour) in &stream.open {
                held += open_hour.rows.heap_bytes();
                let spillable = open_hour.rows.spillable_bytes();
                if spillable >= MIN_RUN_BYTES {
                    candidates.push((spillable, key.clone(), *hour));
                }
            }
        }
        Counters::set(&self.counters.held_bytes, held as u64);
        if held <= self.max_held_bytes {
            return Vec::new();
        }
        candidates.sort_unstable_by_key(|candidate| std::cmp::Reverse(candidate.0));
        let mut spills = Vec::new();
        for (bytes, key, hour) in candidates {
            if held <= self.max_held_bytes / 2 {
                break;
            }
            let Some(open_hour) = self
                .streams
                .get_mut(&key)
                .and_then(|stream| stream.open.get_mut(&hour))
            else {
                continue;
            };
            self.next_run_id += 1;
            if let Some(run) = open_hour.rows.spill(self.next_run_id) {
                held = held.saturating_sub(bytes);
                Counters::add(&self.counters.runs_spilled, 1);
                Counters::add(&self.counters.rows_spilled, run.rows.len() as u64);
                debug!(%key, %hour, run_id = run.run_id, n_rows = run.rows.len(), "rows held past the memory budget; spilled to a run");
                spills.push(Spill { key, hour, run });
            }
        }
        spills
    }

    /// A spilled run was written to `path`, or its write failed and its
    /// rows stay in memory. Returns the path when no hour holds the run
    /// any more (the file is the runtime's to remove).
    pub fn spill_done(
        &mut self,
        key: &StreamKey,
        hour: Hour,
        run_id: u64,
        written: Result<PathBuf, HeldRows>,
    ) -> Option<PathBuf> {
        // The hour waited on the run to seal.
        self.wake.dirty = true;
        if written.is_err() {
            Counters::add(&self.counters.spill_failures, 1);
        }
        let open_hour = self
            .streams
            .get_mut(key)
            .and_then(|stream| stream.open.get_mut(&hour));
        match open_hour {
            Some(open_hour) => {
                let path = written.as_ref().ok().cloned();
                if open_hour.rows.spill_done(run_id, written) {
                    None
                } else {
                    path
                }
            }
            None => written.ok(),
        }
    }

    /// Rows held for hours not sealed yet, per stream (for `status`).
    pub fn unsealed_rows_by_stream(&self) -> impl Iterator<Item = (&StreamKey, usize)> {
        self.streams.iter().map(|(key, stream)| {
            (
                key,
                stream
                    .open
                    .values()
                    .map(|open_hour| open_hour.rows.len())
                    .sum(),
            )
        })
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

fn make_job(
    key: &StreamKey,
    hour: Hour,
    open_hour: Option<OpenHour>,
    market: &MarketState,
    late: bool,
) -> SealJob {
    let (rows, first_segment) = match open_hour {
        Some(open_hour) => (open_hour.rows, Some(open_hour.first_segment)),
        None => (HourRows::new(key.kind), None),
    };
    let (coverage_from, coverage_to) = coverage(&market.spans, hour).unwrap_or_else(|| {
        // Rows from before the first watched moment (a trade stamped in the
        // previous hour that arrived first): vouch only for what we hold.
        let first = rows.first_id_at().map_or(hour.start(), |at| at.time);
        let last = rows.time_bounds().map_or(hour.start(), |(_, last)| last);
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
        unfilled: None,
        late,
        delivered_at: None,
    }
}

/// A job that reseals a sealed hour with late rows and/or a new `unfilled`
/// list (the file on disk keeps its coverage unless this one is wider).
fn make_late_job(
    key: &StreamKey,
    hour: Hour,
    open_hour: Option<OpenHour>,
    unfilled: Option<Vec<UnfilledRange>>,
    market: &MarketState,
) -> SealJob {
    let mut job = make_job(key, hour, open_hour, market, true);
    if unfilled.as_ref().is_some_and(|list| list.is_empty()) {
        // Every declared hole is filled now: the file vouches for the whole hour.
        job.coverage_from = hour.start();
        job.coverage_to = hour.end();
    }
    job.unfilled = unfilled;
    job
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
    use crate::gaps::Settled;

    const HOUR_START: TimeUs = 1_723_161_600_000_000;

    fn config() -> Config {
        config_with_fill("enabled = false")
    }

    fn config_with_fill(fill: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[seal]
grace_ms = 1000
[fill]
{fill}
[markets.spot]
ws_url = "ws://127.0.0.1:1"
rest_url = "http://127.0.0.1:1"
symbols = ["BTCUSDT"]
streams = ["trade", "kline_1m"]
"#
        ))
        .expect("valid test config")
    }

    fn seals(state: &mut State) -> Vec<SealJob> {
        state
            .plan(10, 0)
            .into_iter()
            .map(|job| match job {
                Job::Seal(job) => job,
                Job::Fill(job) => panic!("fill is off in this test: {job:?}"),
                Job::Answered(report) => panic!("fill is off in this test: {report:?}"),
            })
            .collect()
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

    /// Two `/api/v3/time` answers with no frame between them: the streams
    /// were silent for a sampling interval, so the server's time is the clock.
    fn clock_sample_of_silence(state: &mut State, server_time: TimeUs) {
        state.add_clock_sample(Market::Spot, server_time, 0);
        state.add_clock_sample(Market::Spot, server_time, 0);
    }

    /// Applies `decoded` with a `/api/v3/time` answer at its event time, so
    /// the clock follows one stream as it would with REST answering.
    fn apply_corroborated(state: &mut State, segment: SegmentId, decoded: Decoded) {
        let event_time = match &decoded {
            Decoded::Row { event_time, .. } => Some(*event_time),
            _ => None,
        };
        if let Some(event_time) = event_time {
            clock_sample_of_silence(state, event_time);
        }
        state.apply(Market::Spot, segment, decoded);
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
        apply_corroborated(&mut state, SegmentId(1), trade(1, start));
        assert!(seals(&mut state).is_empty());
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(2, HOUR_START + MICROS_PER_HOUR + 999_999),
        );
        assert!(seals(&mut state).is_empty(), "grace not over yet");
        apply_corroborated(
            &mut state,
            SegmentId(2),
            trade(3, HOUR_START + MICROS_PER_HOUR + 1_000_000),
        );
        let jobs = seals(&mut state);
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
            state.seal_finished(&job.key, job.hour);
        }
        assert_eq!(
            state.oldest_pinned_segment(),
            Some(SegmentId(1)),
            "hour 2 rows are in segment 1 too"
        );
    }

    #[test]
    fn a_delivered_symbol_seals_its_delivery_hour_and_owes_no_later_hour() {
        // The same quiet hours, once recorded and once with the symbol
        // delivered at the end of the first: watched hours are owed (empty
        // files) only while the contract trades.
        for delivered in [false, true] {
            let mut state = new_state();
            apply_corroborated(
                &mut state,
                SegmentId(1),
                trade(1, HOUR_START + 30 * MICROS_PER_MINUTE),
            );
            let delivery = HOUR_START + MICROS_PER_HOUR;
            if delivered {
                let symbol = Symbol::new("BTCUSDT").expect("valid");
                state.end_recording(Market::Spot, &symbol, delivery);
            }
            clock_sample_of_silence(&mut state, HOUR_START + 3 * MICROS_PER_HOUR + 2_000_000);
            let jobs = seals(&mut state);
            for job in &jobs {
                state.seal_finished(&job.key, job.hour);
            }
            let hours: BTreeSet<Hour> = jobs.iter().map(|job| job.hour).collect();
            let first = Hour::containing(HOUR_START);
            if delivered {
                assert_eq!(hours, BTreeSet::from([first]), "{jobs:?}");
                let trade_job = jobs
                    .iter()
                    .find(|job| job.key.kind == StreamKind::Trade)
                    .expect("trade job");
                assert_eq!(trade_job.rows.len(), 1);
            } else {
                assert_eq!(
                    hours,
                    BTreeSet::from([first, first.next(), first.next().next()]),
                    "{jobs:?}"
                );
            }
            clock_sample_of_silence(&mut state, HOUR_START + 5 * MICROS_PER_HOUR + 2_000_000);
            let later = seals(&mut state);
            assert_eq!(later.is_empty(), delivered, "{later:?}");
        }
    }

    fn minute_kline(open: TimeUs) -> Decoded {
        let one = Decimal8::from_scaled(1);
        let close_time = open + MICROS_PER_MINUTE - 1;
        Decoded::Row {
            key: key(StreamKind::Kline(crate::domain::KlineInterval::Minute1)),
            row: Row::Kline(crate::domain::KlineRow {
                open_time: open,
                close_time,
                open: one,
                high: one,
                low: one,
                close: one,
                volume: one,
                quote_volume: one,
                trade_count: 1,
                taker_buy_base_volume: one,
                taker_buy_quote_volume: one,
                first_trade_id: None,
                last_trade_id: None,
                event_time: Some(close_time + 1),
                recv_time: Some(close_time + 1),
                source: Source::Ws,
            }),
            event_time: close_time + 1,
        }
    }

    #[test]
    fn a_delivery_inside_the_hour_owes_no_kline_after_it_and_ends_the_coverage() {
        // Klines up to 00:39; the contract delivered at 00:40, or not.
        let delivery = HOUR_START + 40 * MICROS_PER_MINUTE;
        for delivered in [false, true] {
            let mut config =
                config_with_fill("deadline_secs = 60\nbackfill_from_hour_start = false");
            config.markets[0].streams =
                vec![StreamKind::Kline(crate::domain::KlineInterval::Minute1)];
            let mut state = State::new(&config, Arc::new(Counters::default()));
            state.begin_session(Market::Spot);
            for minute in 0..40 {
                let open = HOUR_START + minute * MICROS_PER_MINUTE;
                apply_corroborated(&mut state, SegmentId(1), minute_kline(open));
            }
            if delivered {
                let symbol = Symbol::new("BTCUSDT").expect("valid");
                state.end_recording(Market::Spot, &symbol, delivery);
            }
            clock_sample_of_silence(&mut state, HOUR_START + MICROS_PER_HOUR + 2_000_000);
            let jobs = state.plan(10, 0);
            assert_eq!(jobs.len(), 1, "{jobs:?}");
            match (&jobs[0], delivered) {
                (Job::Seal(job), true) => {
                    assert_eq!(job.rows.len(), 40);
                    assert_eq!(job.unfilled, Some(vec![]));
                    assert_eq!(job.coverage_to, delivery);
                }
                // Recording on: the 20 minutes are holes to fill.
                (Job::Fill(job), false) => assert_eq!(
                    job.holes,
                    vec![Hole::Klines(crate::gaps::KlineHole {
                        first_open: delivery,
                        last_open: HOUR_START + 59 * MICROS_PER_MINUTE,
                    })]
                ),
                (job, _) => panic!("delivered {delivered}: {job:?}"),
            }
        }
    }

    #[test]
    fn rows_after_a_delivery_are_still_sealed_and_pin_no_wal_segment() {
        let mut state = new_state();
        let symbol = Symbol::new("BTCUSDT").expect("valid");
        state.end_recording(Market::Spot, &symbol, HOUR_START);
        // Not expected from a delivered contract; held for ever, they
        // would keep their WAL segment.
        let late = HOUR_START + 2 * MICROS_PER_HOUR + 5 * MICROS_PER_MINUTE;
        apply_corroborated(&mut state, SegmentId(3), trade(1, late));
        clock_sample_of_silence(&mut state, HOUR_START + 4 * MICROS_PER_HOUR + 2_000_000);
        let jobs = seals(&mut state);
        let sealed: Vec<(StreamKind, Hour)> =
            jobs.iter().map(|job| (job.key.kind, job.hour)).collect();
        assert_eq!(sealed, vec![(StreamKind::Trade, Hour::containing(late))]);
        for job in &jobs {
            state.seal_finished(&job.key, job.hour);
        }
        assert_eq!(state.oldest_pinned_segment(), None);
    }

    #[test]
    fn frames_mid_hour_cost_no_planning_walk_and_the_hours_end_wakes_it() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START + 10));
        assert!(seals(&mut state).is_empty());
        let (n_walks, n_judged) = (state.n_plan_walks(), state.n_judged());
        for id in 2..1_000 {
            let time = HOUR_START + id * 1_000_000;
            apply_corroborated(&mut state, SegmentId(1), trade(id, time));
            assert!(seals(&mut state).is_empty());
        }
        assert_eq!(
            state.n_plan_walks(),
            n_walks,
            "frames mid-hour can change no verdict: no walk"
        );
        assert_eq!(state.n_judged(), n_judged, "and no hour judged");
        // The hour's end and grace pass on the exchange clock: that alone
        // wakes the planner, which seals both streams' hours in one walk.
        let next_hour = HOUR_START + MICROS_PER_HOUR + 1_000_000;
        apply_corroborated(&mut state, SegmentId(2), trade(1_000, next_hour));
        let jobs = seals(&mut state);
        assert_eq!(jobs.len(), 2);
        assert_eq!(state.n_plan_walks(), n_walks + 1);
        for job in &jobs {
            state.seal_finished(&job.key, job.hour);
        }
        assert!(seals(&mut state).is_empty());
        // A late row of the sealed hour is an event: it is resealed.
        apply_corroborated(&mut state, SegmentId(2), trade(2, HOUR_START + 5));
        let late = seals(&mut state);
        assert_eq!(late.len(), 1);
        assert!(late[0].late);
    }

    #[test]
    fn late_row_reseals_its_hour_and_failures_return_rows() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START + 10));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(5, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let jobs = seals(&mut state);
        assert_eq!(jobs.len(), 2);
        for job in &jobs {
            state.seal_finished(&job.key, job.hour);
        }
        apply_corroborated(&mut state, SegmentId(3), trade(2, HOUR_START + 20));
        assert_eq!(state.counters.snapshot().rows_late, 1);
        let jobs = seals(&mut state);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].late);
        assert_eq!(jobs[0].rows.len(), 1);
        assert!(
            seals(&mut state).is_empty(),
            "an hour in flight is not planned twice"
        );
        state.seal_failed(jobs[0].clone());
        let again = seals(&mut state);
        assert_eq!(again.len(), 1, "a failed seal is retried");
    }

    #[test]
    fn spans_survive_restart_through_checkpoints() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START + 100));
        state.end_session(Market::Spot, state.exchange_time(Market::Spot));
        let checkpoints = state.checkpoints();
        let mut restarted = State::new(&config(), Arc::new(Counters::default()));
        for checkpoint in checkpoints {
            restarted.apply_checkpoint(checkpoint);
        }
        restarted.begin_session(Market::Spot);
        apply_corroborated(
            &mut restarted,
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

    fn kline_update(time: TimeUs) -> Decoded {
        Decoded::KlineUpdate {
            key: key(StreamKind::Kline(crate::domain::KlineInterval::Minute1)),
            event_time: time,
        }
    }

    #[test]
    fn one_lying_stream_cannot_move_the_clock_and_a_second_one_corroborates() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 100));
        state.apply(Market::Spot, SegmentId(1), kline_update(HOUR_START + 200));
        assert_eq!(state.exchange_time(Market::Spot), Some(HOUR_START + 100));
        // A trade frame five hours ahead, consistent with its own time.
        let ahead = HOUR_START + 5 * MICROS_PER_HOUR;
        state.apply(Market::Spot, SegmentId(1), trade(2, ahead));
        assert_eq!(state.counters.snapshot().frames_implausible, 1);
        assert_eq!(state.exchange_time(Market::Spot), Some(HOUR_START + 200));
        assert!(seals(&mut state).is_empty(), "no hour seals early");
        let rejected = state.take_rejected();
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].error.contains("clock.max_lead_secs"),
            "{}",
            rejected[0].error
        );
        assert_eq!(state.n_unsealed_rows(), 1, "the lying row is not filed");
        // Two streams moving on together are believed.
        state.apply(
            Market::Spot,
            SegmentId(1),
            trade(3, HOUR_START + 10 * MICROS_PER_MINUTE),
        );
        state.apply(
            Market::Spot,
            SegmentId(1),
            kline_update(HOUR_START + 10 * MICROS_PER_MINUTE),
        );
        assert_eq!(
            state.exchange_time(Market::Spot),
            Some(HOUR_START + 10 * MICROS_PER_MINUTE)
        );
    }

    #[test]
    fn a_row_whose_own_times_disagree_vouches_for_no_time() {
        let mut state = new_state();
        state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 100));
        state.apply(Market::Spot, SegmentId(1), kline_update(HOUR_START + 200));
        // E five hours after its own T: quarantined...
        let ahead = HOUR_START + 5 * MICROS_PER_HOUR;
        let lying = match trade(2, HOUR_START + 300) {
            Decoded::Row { key, row, .. } => Decoded::Row {
                key,
                row,
                event_time: ahead,
            },
            other => other,
        };
        state.apply(Market::Spot, SegmentId(1), lying);
        assert_eq!(state.take_rejected().len(), 1);
        // ...and no evidence: a second stream five hours ahead still leads
        // every believable time, so the clock stays.
        state.apply(Market::Spot, SegmentId(1), kline_update(ahead));
        assert_eq!(state.counters.snapshot().frames_implausible, 2);
        assert_eq!(state.exchange_time(Market::Spot), Some(HOUR_START + 100));
        assert!(seals(&mut state).is_empty(), "no hour seals early");
    }

    #[test]
    fn rows_whose_own_times_disagree_or_whose_ids_leap_are_quarantined() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(100, HOUR_START + 100));
        let with_times =
            |id: i64, trade_time: TimeUs, event_time: TimeUs| match trade(id, trade_time) {
                Decoded::Row { key, row, .. } => Decoded::Row {
                    key,
                    row,
                    event_time,
                },
                other => other,
            };
        let now = HOUR_START + 1_000;
        // T = 0, T in 2300, E five hours after T, an id 10^12 ahead.
        state.apply(Market::Spot, SegmentId(1), with_times(101, 0, now));
        state.apply(
            Market::Spot,
            SegmentId(1),
            with_times(102, 10_413_792_000_000_000, now),
        );
        state.apply(
            Market::Spot,
            SegmentId(1),
            with_times(103, now, now + 5 * MICROS_PER_HOUR),
        );
        state.apply(
            Market::Spot,
            SegmentId(1),
            with_times(1_000_000_000_100, now, now),
        );
        let reasons: Vec<String> = state
            .take_rejected()
            .into_iter()
            .map(|frame| frame.error)
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("before Binance existed"), "{reasons:?}");
        assert!(reasons[1].contains("after its event time"), "{reasons:?}");
        assert!(
            reasons[2].contains("clock.max_event_delay_secs"),
            "{reasons:?}"
        );
        assert!(reasons[3].contains("clock.max_id_jump"), "{reasons:?}");
        assert_eq!(state.n_unsealed_rows(), 1);
        assert_eq!(state.exchange_time(Market::Spot), Some(HOUR_START + 100));
        // The next honest row is filed as usual.
        apply_corroborated(&mut state, SegmentId(1), trade(101, now));
        assert_eq!(state.n_unsealed_rows(), 2);
    }

    #[test]
    fn server_time_moves_sealing_on_when_every_stream_is_silent() {
        let mut state = new_state();
        state.add_clock_sample(Market::Spot, HOUR_START + 100, 0);
        assert!(seals(&mut state).is_empty());
        clock_sample_of_silence(&mut state, HOUR_START + MICROS_PER_HOUR + 2_000_000);
        let jobs = seals(&mut state);
        assert_eq!(jobs.len(), 2, "empty trade and kline files: {jobs:?}");
        assert!(jobs.iter().all(|job| job.rows.is_empty()));
    }

    #[test]
    fn one_stream_moving_alone_is_believed_as_far_as_the_server_agrees() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START + 100));
        // The trade stream goes quiet; the kline stream and the server move on.
        for minute in 1..=70 {
            let time = HOUR_START + minute * MICROS_PER_MINUTE;
            state.apply(Market::Spot, SegmentId(1), kline_update(time));
            state.add_clock_sample(Market::Spot, time - MICROS_PER_MINUTE / 2, 0);
        }
        assert_eq!(
            state.exchange_time(Market::Spot),
            Some(HOUR_START + 70 * MICROS_PER_MINUTE - MICROS_PER_MINUTE / 2)
        );
        assert_eq!(seals(&mut state).len(), 2, "the quiet hour seals");
    }

    #[test]
    fn server_time_does_not_seal_the_hours_of_streams_that_deliver_late() {
        let mut state = new_state();
        state.add_clock_sample(Market::Spot, HOUR_START + 100, 0);
        // The streams deliver (behind, say a slow disk), while REST runs ahead.
        for n in 0..3 {
            let time = HOUR_START + n * MICROS_PER_MINUTE;
            state.apply(Market::Spot, SegmentId(1), trade(n + 1, time));
            state.apply(Market::Spot, SegmentId(1), kline_update(time));
            state.add_clock_sample(Market::Spot, HOUR_START + 2 * MICROS_PER_HOUR, 0);
        }
        assert_eq!(
            state.exchange_time(Market::Spot),
            Some(HOUR_START + 2 * MICROS_PER_MINUTE)
        );
        assert!(
            seals(&mut state).is_empty(),
            "the streams' own rows come first"
        );
    }

    #[test]
    fn clock_offsets_and_spans_are_pruned_with_the_hours_they_serve() {
        let mut state = new_state();
        for n_hour in 0..48 {
            // A process per hour, each with a clock sample and a trade.
            state.begin_session(Market::Spot);
            let time = HOUR_START + n_hour * MICROS_PER_HOUR + 10 * MICROS_PER_MINUTE;
            apply_corroborated(&mut state, SegmentId(1), trade(n_hour + 1, time));
            for job in seals(&mut state) {
                state.seal_finished(&job.key, job.hour);
            }
        }
        let market = &state.markets[&Market::Spot];
        assert!(
            market.clock_offsets.len() <= 2,
            "{:?}",
            market.clock_offsets.keys()
        );
        assert!(market.spans.len() <= 2, "{:?}", market.spans);
        assert_eq!(state.n_unsealed_rows(), 1, "only the current hour is held");
    }

    /// A declared hole of trade ids 5..=6 between these times.
    fn ids_5_to_6(from_time: TimeUs, to_time: TimeUs) -> UnfilledRange {
        UnfilledRange {
            from: Some(5),
            to: Some(6),
            from_time,
            to_time,
            reason: "rest unreachable".to_owned(),
        }
    }

    #[test]
    fn declared_ranges_read_from_a_footer_are_kept_within_their_hour() {
        let mut state = filling_state("");
        let key = key(StreamKind::Trade);
        let hour = Hour::containing(HOUR_START);
        state.declare_sealed_holes(&key, hour, vec![ids_5_to_6(0, i64::MAX)]);
        let declared = &state.streams[&key].declared[&hour].unfilled[0];
        assert_eq!(
            (declared.from_time, declared.to_time),
            (hour.start(), hour.end() - 1)
        );
    }

    #[test]
    fn declared_holes_are_given_up_after_the_configured_hours() {
        let mut state = filling_state("declared_give_up_hours = 2");
        let key = key(StreamKind::Trade);
        let hour = Hour::containing(HOUR_START);
        state.declare_sealed_holes(&key, hour, vec![ids_5_to_6(HOUR_START, HOUR_START + 10)]);
        let mut within = filling_state("declared_give_up_hours = 2");
        within.declare_sealed_holes(
            &key,
            hour,
            state.streams[&key].declared[&hour].unfilled.clone(),
        );
        clock_sample_of_silence(&mut within, hour.end() + MICROS_PER_HOUR);
        let jobs = within.plan(10, 0);
        assert!(
            jobs.iter()
                .any(|job| matches!(job, Job::Fill(fill) if fill.declared)),
            "retried within the bound: {jobs:?}"
        );
        clock_sample_of_silence(&mut state, hour.end() + 2 * MICROS_PER_HOUR + 1);
        let jobs = state.plan(10, 0);
        assert!(jobs
            .iter()
            .all(|job| !matches!(job, Job::Fill(fill) if fill.declared)));
        assert_eq!(state.n_declared_hours(), 0, "left to backfill");
        assert_eq!(state.counters.snapshot().declared_given_up, 1);
    }

    #[test]
    fn crashed_session_ends_at_its_last_event() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(2, HOUR_START + 200));
        state.begin_session(Market::Spot);
        apply_corroborated(&mut state, SegmentId(2), trade(3, HOUR_START + 900));
        assert_eq!(state.spans(Market::Spot)[0].end, Some(HOUR_START + 200));
    }

    #[test]
    fn exchange_time_is_checked_against_the_server_time() {
        let mut state = new_state();
        apply_corroborated(&mut state, SegmentId(1), trade(1, HOUR_START));
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

    fn rest_trade(id: i64, time: TimeUs) -> Row {
        let Decoded::Row {
            row: Row::Trade(mut trade),
            ..
        } = trade(id, time)
        else {
            unreachable!()
        };
        trade.source = Source::Rest;
        trade.event_time = None;
        trade.recv_time = None;
        Row::Trade(trade)
    }

    fn filling_state(extra_fill: &str) -> State {
        let config = config_with_fill(&format!(
            "deadline_secs = 60\nretry_initial_ms = 1000\ndeclared_retry_secs = 30\n{extra_fill}"
        ));
        let mut config = config;
        config.markets[0].streams = vec![StreamKind::Trade];
        let mut state = State::new(&config, Arc::new(Counters::default()));
        state.begin_session(Market::Spot);
        state
    }

    fn report(
        job: &FillJob,
        rows: Vec<Row>,
        settled: Vec<Settled>,
        failure: Option<&str>,
    ) -> FillReport {
        FillReport::new(job, rows, settled, failure.map(str::to_owned))
    }

    fn only_fill(jobs: Vec<Job>) -> FillJob {
        match <[Job; 1]>::try_from(jobs) {
            Ok([Job::Fill(job)]) => job,
            Ok(other) => panic!("expected one fill job: {other:?}"),
            Err(jobs) => panic!("expected one fill job: {jobs:?}"),
        }
    }

    /// The keys of a seal job's rows, in order.
    fn keys_of(job: &SealJob) -> Vec<i64> {
        job.rows.to_vec().iter().map(Row::key).collect()
    }

    fn only_seal(jobs: Vec<Job>) -> SealJob {
        match <[Job; 1]>::try_from(jobs) {
            Ok([Job::Seal(job)]) => job,
            Ok(other) => panic!("expected one seal job: {other:?}"),
            Err(jobs) => panic!("expected one seal job: {jobs:?}"),
        }
    }

    #[test]
    fn holes_are_filled_through_a_report_before_the_hour_seals() {
        let mut state = filling_state("");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(10, HOUR_START + 900));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(11, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let job = only_fill(state.plan(10, 0));
        let bounds: Vec<_> = job.holes.iter().map(Hole::key_bounds).collect();
        assert_eq!(
            bounds,
            vec![(None, Some(6)), (Some(8), Some(9))],
            "the hour's start is owed, and 8..9"
        );
        assert!(state.plan(10, 0).is_empty(), "one round at a time");
        let filled = report(
            &job,
            vec![
                rest_trade(6, HOUR_START + 50),
                rest_trade(8, HOUR_START + 200),
                rest_trade(9, HOUR_START + 300),
            ],
            vec![
                Settled {
                    from: None,
                    to: Some(6),
                },
                Settled {
                    from: Some(8),
                    to: Some(9),
                },
            ],
            None,
        );
        state.apply_fill(SegmentId(2), filled, 10);
        let sealed = only_seal(state.plan(10, 10));
        assert_eq!(keys_of(&sealed), vec![6, 7, 8, 9, 10]);
        assert_eq!(
            sealed
                .rows
                .to_vec()
                .iter()
                .filter(|row| row.source() == Source::Rest)
                .count(),
            3
        );
        assert_eq!(sealed.unfilled, Some(vec![]));
        assert_eq!(
            (sealed.coverage_from, sealed.coverage_to),
            (HOUR_START, HOUR_START + MICROS_PER_HOUR)
        );
        let counters = state.counters.snapshot();
        assert_eq!(
            (
                counters.rows_filled,
                counters.holes_found,
                counters.holes_declared
            ),
            (3, 2, 0)
        );
    }

    #[test]
    fn a_stream_row_replaces_a_rest_row_and_rest_never_replaces_a_stream_row() {
        let mut state = filling_state("");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(9, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let job = only_fill(state.plan(10, 0));
        let rows = vec![
            rest_trade(7, HOUR_START + 100),
            rest_trade(8, HOUR_START + 200),
        ];
        state.apply_fill(
            SegmentId(2),
            report(
                &job,
                rows,
                vec![Settled {
                    from: None,
                    to: Some(8),
                }],
                None,
            ),
            0,
        );
        apply_corroborated(&mut state, SegmentId(2), trade(8, HOUR_START + 200));
        let sealed = only_seal(state.plan(10, 0));
        assert!(
            sealed
                .rows
                .to_vec()
                .iter()
                .all(|row| row.source() == Source::Ws),
            "{:?}",
            sealed.rows
        );
    }

    #[test]
    fn failed_fills_retry_with_backoff_then_seal_declared_at_the_deadline_and_reseal_when_filled() {
        let mut state = filling_state("");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(10, HOUR_START + 900));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(11, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let job = only_fill(state.plan(10, 0));
        let failure = "rest unreachable: HTTP 503";
        state.apply_fill(
            SegmentId(2),
            report(
                &job,
                vec![],
                vec![Settled {
                    from: None,
                    to: Some(6),
                }],
                Some(failure),
            ),
            0,
        );
        assert!(state.plan(10, 999).is_empty(), "waits for the retry");
        let again = only_fill(state.plan(10, 1000));
        assert_eq!(again.holes.len(), 1, "the settled start is not asked again");
        state.apply_fill(
            SegmentId(2),
            report(&again, vec![], vec![], Some(failure)),
            1000,
        );
        assert!(state.plan(10, 2999).is_empty(), "the pause doubles");
        // Exchange time passes the deadline (hour end + 1 s grace + 60 s).
        apply_corroborated(
            &mut state,
            SegmentId(3),
            trade(12, HOUR_START + MICROS_PER_HOUR + 62_000_000),
        );
        let sealed = only_seal(state.plan(10, 2000));
        let unfilled = sealed.unfilled.clone().expect("a list");
        assert_eq!(unfilled.len(), 1);
        assert_eq!(
            (
                unfilled[0].from,
                unfilled[0].to,
                unfilled[0].reason.as_str()
            ),
            (Some(8), Some(9), failure)
        );
        assert_eq!(
            (unfilled[0].from_time, unfilled[0].to_time),
            (HOUR_START + 100, HOUR_START + 900)
        );
        state.seal_finished(&sealed.key, sealed.hour);
        assert_eq!(state.counters.snapshot().holes_declared, 1);
        assert_eq!(state.n_declared_hours(), 1);

        // The retry waits declared_retry_secs of exchange time, whatever
        // the host's clock says.
        let declared_at = HOUR_START + MICROS_PER_HOUR + 62_000_000;
        assert!(
            state.plan(10, u64::MAX / 2).is_empty(),
            "declared holes wait declared_retry_secs of exchange time"
        );
        clock_to(&mut state, 13, declared_at + 29_999_999);
        assert!(state.plan(10, 2000).is_empty(), "not yet");
        clock_to(&mut state, 14, declared_at + 30_000_000);
        let retry = only_fill(state.plan(10, 2000));
        assert!(retry.declared);
        let rows = vec![
            rest_trade(8, HOUR_START + 200),
            rest_trade(9, HOUR_START + 300),
        ];
        state.apply_fill(
            SegmentId(4),
            report(
                &retry,
                rows,
                vec![Settled {
                    from: Some(8),
                    to: Some(9),
                }],
                None,
            ),
            40_000,
        );
        let resealed = only_seal(state.plan(10, 40_000));
        assert!(resealed.late);
        assert_eq!(keys_of(&resealed), vec![8, 9]);
        assert_eq!(resealed.unfilled, Some(vec![]));
        assert_eq!(state.n_declared_hours(), 0);
        assert_eq!(state.counters.snapshot().holes_filled_late, 1);
    }

    /// A BTCUSDT trade stream with ids 7 and 20 in the hour (a hole of
    /// 8..=19) and 21 after it, watched from its first row, the clock at the hour's end + 2 s: one fill
    /// round planned, returned with the state.
    fn state_with_a_round_in_flight() -> (State, FillJob) {
        // Only the hole between the ids, not the hour's unseen start.
        let mut state = filling_state("backfill_from_hour_start = false");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(20, HOUR_START + 900));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(21, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let job = only_fill(state.plan(10, 0));
        (state, job)
    }

    /// Moves the exchange clock to `time` with a trade of id `id`.
    fn clock_to(state: &mut State, id: i64, time: TimeUs) {
        apply_corroborated(state, SegmentId(3), trade(id, time));
    }

    #[test]
    fn a_fill_round_starts_while_no_seal_can_and_a_ready_hour_waits_unjudged() {
        let mut state = filling_state("backfill_from_hour_start = false");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(20, HOUR_START + 900));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(21, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        // No seal slot free (all busy, or seals paused after a failure):
        // the hole's round starts anyway.
        let job = only_fill(state.plan(0, 0));
        let fetched = (8..=19)
            .map(|id| rest_trade(id, HOUR_START + 100 + id))
            .collect();
        let settled = vec![Settled {
            from: Some(8),
            to: Some(19),
        }];
        state.apply_fill(SegmentId(2), report(&job, fetched, settled, None), 0);
        assert!(state.plan(0, 0).is_empty(), "ready, but no slot");
        let n_judged = state.n_judged();
        assert!(state.plan(0, 10).is_empty());
        assert_eq!(
            state.n_judged(),
            n_judged,
            "not judged again until a slot frees"
        );
        let sealed = only_seal(state.plan(1, 20));
        assert_eq!(keys_of(&sealed), (7..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_round_carries_its_hours_deadline_in_exchange_time() {
        let (mut state, job) = state_with_a_round_in_flight();
        // First judged at the hour's end + 2 s (after the 1 s grace): the
        // seal deadline is 60 s of exchange time later, and the round is
        // cut a tenth of that window (6 s) before it, kept for the seal.
        let deadline = HOUR_START + MICROS_PER_HOUR + 56_000_000;
        assert_eq!(job.deadline, Some(deadline));
        assert!(!job.is_overdue(None), "no clock, no cut");
        assert!(!job.is_overdue(Some(deadline - 1)));
        assert!(job.is_overdue(Some(deadline)));
        assert_eq!(state.n_hours_waiting_on_fill(), 1);
        // The round is not answered: the hour waits for it (the runtime
        // cuts it at the deadline), and the retry after a failure keeps
        // the deadline of the first judgement.
        clock_to(&mut state, 22, deadline - 1_000_000);
        assert!(state.plan(10, 0).is_empty(), "waits for the round");
        state.apply_fill(
            SegmentId(2),
            report(&job, vec![], vec![], Some("rest unreachable: HTTP 503")),
            0,
        );
        let retry = only_fill(state.plan(10, 1_000));
        assert_eq!(retry.deadline, Some(deadline));
        assert!(!retry.declared);
    }

    #[test]
    fn a_round_cut_at_its_deadline_keeps_its_rows_and_seals_the_rest_declared() {
        let (mut state, job) = state_with_a_round_in_flight();
        let deadline = job.deadline.expect("a first fill has a deadline");
        clock_to(&mut state, 22, deadline);
        assert!(job.is_overdue(state.exchange_time(Market::Spot)));
        // The cut round got 8..=12 before the runtime stopped it.
        let fetched = (8..=12)
            .map(|id| rest_trade(id, HOUR_START + 100 + id))
            .collect();
        let cut = report(&job, fetched, vec![], Some(REASON_REST_BEHIND));
        state.apply_fill(SegmentId(2), cut, 0);
        assert_eq!(state.n_hours_waiting_on_fill(), 0);
        let sealed = only_seal(state.plan(10, 0));
        assert_eq!(
            keys_of(&sealed),
            vec![7, 8, 9, 10, 11, 12, 20],
            "what the cut round fetched is kept"
        );
        let unfilled = sealed.unfilled.expect("a list");
        assert_eq!(
            unfilled
                .iter()
                .map(|range| (range.from, range.to, range.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![(Some(13), Some(19), REASON_REST_BEHIND)],
            "the rest is declared as REST being behind"
        );
        assert_eq!(state.n_declared_hours(), 1, "and retried later");
    }

    #[test]
    fn a_round_that_cannot_be_answered_before_the_deadline_seals_its_hour_declared_at_once() {
        let (mut state, job) = state_with_a_round_in_flight();
        let deadline = job.deadline.expect("a first fill has a deadline");
        // Well before the deadline the round's weight wait reaches past it
        // (RestError::OutOfTime): it gives up with what it got, 8..=9.
        clock_to(&mut state, 22, deadline - 50_000_000);
        assert!(!job.is_overdue(state.exchange_time(Market::Spot)));
        let fetched = (8..=9)
            .map(|id| rest_trade(id, HOUR_START + 100 + id))
            .collect();
        let behind = report(&job, fetched, vec![], Some(REASON_REST_BEHIND));
        state.apply_fill(SegmentId(2), behind, 0);
        let sealed = only_seal(state.plan(10, 0));
        assert_eq!(keys_of(&sealed), vec![7, 8, 9, 20]);
        assert_eq!(
            sealed
                .unfilled
                .expect("a list")
                .iter()
                .map(|range| (range.from, range.to, range.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![(Some(10), Some(19), REASON_REST_BEHIND)],
            "sealed now, not at the deadline, with the rest declared"
        );
        assert_eq!(state.n_declared_hours(), 1, "and retried later");
    }

    #[test]
    fn any_other_failure_before_the_deadline_is_retried_not_declared() {
        let (mut state, job) = state_with_a_round_in_flight();
        let deadline = job.deadline.expect("a first fill has a deadline");
        clock_to(&mut state, 22, deadline - 50_000_000);
        let failed = report(&job, vec![], vec![], Some("rest unreachable: reset"));
        state.apply_fill(SegmentId(2), failed, 0);
        assert!(
            state.plan(10, 0).is_empty(),
            "the hour waits for its retry, it does not seal"
        );
        assert_eq!(state.n_declared_hours(), 0);
    }

    #[test]
    fn a_round_still_queued_at_its_deadline_seals_its_hour_with_the_holes_declared() {
        let (mut state, job) = state_with_a_round_in_flight();
        let deadline = job.deadline.expect("a first fill has a deadline");
        clock_to(&mut state, 22, deadline + 1);
        let not_started = FillReport::not_started(&job);
        assert!(not_started.rows.is_empty() && not_started.settled.is_empty());
        assert_eq!(not_started.failure.as_deref(), Some(REASON_REST_BEHIND));
        state.apply_fill(SegmentId(2), not_started, 0);
        let sealed = only_seal(state.plan(10, 0));
        let unfilled = sealed.unfilled.expect("a list");
        assert_eq!(
            unfilled
                .iter()
                .map(|range| (range.from, range.to, range.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![(Some(8), Some(19), REASON_REST_BEHIND)]
        );
        state.seal_finished(&sealed.key, sealed.hour);
        // The declared retry holds no seal, so it carries no deadline.
        clock_to(&mut state, 23, deadline + 1 + 30_000_000);
        let retry = only_fill(state.plan(10, 0));
        assert!(retry.declared);
        assert_eq!(retry.deadline, None);
        assert!(!retry.is_overdue(Some(i64::MAX)));
    }

    fn agg_trade(id: i64, first: i64, last: i64, time: TimeUs) -> Decoded {
        Decoded::Row {
            key: key(StreamKind::AggTrade),
            row: Row::AggTrade(crate::domain::AggTradeRow {
                agg_trade_id: id,
                price: Decimal8::from_scaled(1),
                quantity: Decimal8::from_scaled(1),
                first_trade_id: first,
                last_trade_id: last,
                trade_time: time,
                is_buyer_maker: true,
                is_best_match: Some(true),
                event_time: Some(time),
                recv_time: Some(time),
                source: Source::Ws,
            }),
            event_time: time,
        }
    }

    #[test]
    fn trade_holes_wait_for_the_agg_trade_hour_and_need_no_call_when_its_aggregates_answer_them() {
        let mut config = config_with_fill("deadline_secs = 60\nagg_trade_evidence = true");
        config.markets[0].streams = vec![StreamKind::Trade, StreamKind::AggTrade];
        let mut state = State::new(&config, Arc::new(Counters::default()));
        state.begin_session(Market::Spot);
        // Trades 8 and 9 missed; the aggregates name them, each of one fill.
        for decoded in [
            trade(7, HOUR_START + 100),
            agg_trade(1, 7, 7, HOUR_START + 100),
            agg_trade(2, 8, 8, HOUR_START + 200),
            agg_trade(3, 9, 9, HOUR_START + 250),
            agg_trade(4, 10, 11, HOUR_START + 300),
            trade(10, HOUR_START + 300),
            trade(11, HOUR_START + 300),
        ] {
            apply_corroborated(&mut state, SegmentId(1), decoded);
        }
        let after = HOUR_START + MICROS_PER_HOUR + 2_000_000;
        apply_corroborated(&mut state, SegmentId(1), trade(12, after));
        apply_corroborated(&mut state, SegmentId(1), agg_trade(5, 12, 12, after));

        // Both hours start unseen: only the aggTrade stream asks REST; the
        // trade stream waits for its evidence.
        let agg_round = only_fill(state.plan(10, 0));
        assert_eq!(agg_round.key.kind, StreamKind::AggTrade);
        let nothing_before = vec![Settled {
            from: None,
            to: Some(0),
        }];
        state.apply_fill(
            SegmentId(2),
            report(&agg_round, vec![], nothing_before, None),
            0,
        );
        let sealed = only_seal(state.plan(10, 0));
        assert_eq!(sealed.key.kind, StreamKind::AggTrade);
        state.seal_finished(&sealed.key, sealed.hour);

        // The aggregates answer: trades 8 and 9 are the one-fill aggregates
        // 2 and 3, and nothing precedes trade 7 in the hour. No REST call.
        let answered = match <[Job; 1]>::try_from(state.plan(10, 0)) {
            Ok([Job::Answered(report)]) => report,
            other => panic!("expected an answer from the aggTrades: {other:?}"),
        };
        assert_eq!(
            answered.rows.iter().map(Row::key).collect::<Vec<_>>(),
            vec![8, 9]
        );
        assert_eq!(answered.failure, None);
        state.apply_fill(SegmentId(3), answered, 0);
        assert_eq!(state.counters.snapshot().fill_answers_from_agg_trades, 1);
        let sealed = only_seal(state.plan(10, 0));
        assert_eq!(keys_of(&sealed), vec![7, 8, 9, 10, 11]);
        assert!(sealed.rows.to_vec()[1..3]
            .iter()
            .all(|row| row.source() == Source::Rest));
        assert_eq!(sealed.unfilled, Some(vec![]));
        assert_eq!(sealed.coverage_from, HOUR_START);
        assert!(state.agg_evidence.is_empty(), "evidence goes with its hour");
    }

    #[test]
    fn a_round_in_flight_on_one_stream_holds_no_other_streams_seal() {
        let mut config = config_with_fill("deadline_secs = 60\nbackfill_from_hour_start = false");
        config.markets[0].streams = vec![StreamKind::Trade];
        let eth = Symbol::new("ETHUSDT").expect("valid");
        config.markets[0].symbols.push(eth.clone());
        let mut state = State::new(&config, Arc::new(Counters::default()));
        state.begin_session(Market::Spot);
        let eth_trade = |id: i64, time: TimeUs| {
            let Decoded::Row {
                row, event_time, ..
            } = trade(id, time)
            else {
                unreachable!()
            };
            let key = StreamKey {
                symbol: eth.clone(),
                ..key(StreamKind::Trade)
            };
            Decoded::Row {
                key,
                row,
                event_time,
            }
        };
        // BTCUSDT misses 8..=19; ETHUSDT has every id.
        for (btc, eth, time) in [
            (7, 1, HOUR_START + 100),
            (20, 2, HOUR_START + 900),
            (21, 3, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        ] {
            apply_corroborated(&mut state, SegmentId(1), trade(btc, time));
            apply_corroborated(&mut state, SegmentId(1), eth_trade(eth, time));
        }
        let jobs = state.plan(10, 0);
        let fills: Vec<&FillJob> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Fill(job) => Some(job),
                Job::Seal(_) | Job::Answered(_) => None,
            })
            .collect();
        let sealed: Vec<&SealJob> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Seal(job) => Some(job),
                Job::Fill(_) | Job::Answered(_) => None,
            })
            .collect();
        assert_eq!(fills.len(), 1, "{jobs:?}");
        assert_eq!(fills[0].key.symbol.to_string(), "BTCUSDT");
        assert_eq!(sealed.len(), 1, "{jobs:?}");
        assert_eq!(sealed[0].key.symbol, eth);
        assert_eq!(sealed[0].hour, Hour::containing(HOUR_START));
    }

    #[test]
    fn ids_rest_does_not_serve_are_declared_at_once_and_not_retried() {
        let mut state = filling_state("");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        apply_corroborated(&mut state, SegmentId(1), trade(10, HOUR_START + 900));
        apply_corroborated(
            &mut state,
            SegmentId(1),
            trade(11, HOUR_START + MICROS_PER_HOUR + 2_000_000),
        );
        let job = only_fill(state.plan(10, 0));
        let settled = vec![
            Settled {
                from: None,
                to: Some(6),
            },
            Settled {
                from: Some(8),
                to: Some(9),
            },
        ];
        state.apply_fill(
            SegmentId(2),
            report(&job, vec![rest_trade(8, HOUR_START + 200)], settled, None),
            0,
        );
        let sealed = only_seal(state.plan(10, 0));
        let unfilled = sealed.unfilled.expect("a list");
        assert_eq!(unfilled.len(), 1);
        assert_eq!(
            (
                unfilled[0].from,
                unfilled[0].to,
                unfilled[0].reason.as_str()
            ),
            (Some(9), Some(9), REASON_NOT_SERVED)
        );
        assert_eq!(state.n_declared_hours(), 0, "nothing to retry");
    }

    #[test]
    fn an_open_end_probe_that_finds_nothing_is_no_hole() {
        let mut state = filling_state("backfill_from_hour_start = false");
        apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
        // Only the kline... no: another market event moves exchange time past the hour.
        clock_sample_of_silence(&mut state, HOUR_START + MICROS_PER_HOUR + 2_000_000);
        let job = only_fill(state.plan(10, 0));
        assert_eq!(
            job.holes.iter().map(Hole::key_bounds).collect::<Vec<_>>(),
            vec![(Some(8), None)]
        );
        state.apply_fill(
            SegmentId(2),
            report(
                &job,
                vec![],
                vec![Settled {
                    from: Some(8),
                    to: None,
                }],
                None,
            ),
            0,
        );
        let sealed = only_seal(state.plan(10, 0));
        assert_eq!(sealed.unfilled, Some(vec![]));
        assert_eq!(
            sealed.coverage_from,
            HOUR_START + 100,
            "not backfilled: the file vouches from its first event"
        );
        assert_eq!(sealed.coverage_to, HOUR_START + MICROS_PER_HOUR);
    }

    #[test]
    fn fill_reports_round_trip_through_json() {
        let job = FillJob {
            key: key(StreamKind::Trade),
            hour: Hour::containing(HOUR_START),
            holes: vec![],
            closed_before: HOUR_START,
            declared: false,
            deadline: None,
        };
        let three = vec![
            rest_trade(1, HOUR_START),
            rest_trade(2, HOUR_START),
            rest_trade(3, HOUR_START),
        ];
        let parts = report(&job, three, vec![], Some("x")).into_parts(2);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].rows_only && parts[0].failure.is_none() && parts[0].rows.len() == 2);
        assert!(!parts[1].rows_only && parts[1].failure.is_some() && parts[1].rows.len() == 1);
        let original = report(
            &job,
            vec![rest_trade(8, HOUR_START + 200)],
            vec![Settled {
                from: None,
                to: Some(9),
            }],
            Some("x"),
        );
        let text = serde_json::to_string(&original).expect("serialises");
        let back: FillReport = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, original);
        assert_eq!(back.key(), Some(key(StreamKind::Trade)));
    }

    proptest::proptest! {
        /// Any split of a sequence into stream rows and REST rows, with
        /// duplicates on either side and in any order, seals as the
        /// sequence once, sorted, each row from the stream when the stream
        /// delivered it.
        #[test]
        fn any_split_into_stream_and_rest_rows_seals_each_key_once(
            keys in proptest::collection::btree_set(1i64..400, 1..80),
            plan in proptest::collection::vec((0u8..3, proptest::prelude::any::<bool>()), 80),
            report_at in 0usize..200,
            shuffle_seed in proptest::prelude::any::<u64>(),
        ) {
            let mut state = new_state();
            let time_of = |id: i64| HOUR_START + id * 1000;
            let mut stream_rows = Vec::new();
            let mut rest_rows = Vec::new();
            let mut from_stream = BTreeSet::new();
            for (index, id) in keys.iter().enumerate() {
                let (side, twice) = plan[index];
                let copies = if twice { 2 } else { 1 };
                for _ in 0..copies {
                    if side != 1 {
                        stream_rows.push(trade(*id, time_of(*id)));
                        from_stream.insert(*id);
                    }
                    if side != 0 {
                        rest_rows.push(rest_trade(*id, time_of(*id)));
                    }
                }
            }
            let length = stream_rows.len();
            for index in 0..length {
                let other = (shuffle_seed.wrapping_mul(index as u64 + 7) % length as u64) as usize;
                stream_rows.swap(index, other);
            }
            let job = FillJob { key: key(StreamKind::Trade), hour: Hour::containing(HOUR_START), holes: vec![], closed_before: HOUR_START, declared: false, deadline: None };
            let fill_report = report(&job, rest_rows, vec![], None);
            let report_at = report_at.min(stream_rows.len());
            let mut fill_report = Some(fill_report);
            for (index, row) in stream_rows.into_iter().enumerate() {
                if index == report_at {
                    state.apply_fill(SegmentId(1), fill_report.take().expect("once"), 0);
                }
                state.apply(Market::Spot, SegmentId(1), row);
            }
            if let Some(fill_report) = fill_report {
                state.apply_fill(SegmentId(1), fill_report, 0);
            }
            clock_sample_of_silence(&mut state, HOUR_START + MICROS_PER_HOUR + 2_000_000);
            let sealed = seals(&mut state).into_iter().find(|job| job.key.kind == StreamKind::Trade).expect("trade file");
            let sealed_keys: Vec<i64> = keys_of(&sealed);
            proptest::prop_assert_eq!(sealed_keys, keys.iter().copied().collect::<Vec<_>>());
            for row in &sealed.rows.to_vec() {
                let expected = if from_stream.contains(&row.key()) { Source::Ws } else { Source::Rest };
                proptest::prop_assert_eq!(row.source(), expected);
            }
        }
    }
}
