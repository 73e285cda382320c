//! The recorder's state machine, with no I/O: rows of unsealed hours,
//! exchange time and watch spans per market, which hours may be sealed now,
//! and which WAL segments are still needed. The runtime in `recorder/mod.rs`
//! feeds it durable, decoded frames (live or replayed) and acts on what it
//! answers, so replay and live recording go through the same code.

mod fills;
mod spills;
mod streams;
mod writes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::binance::decode::Decoded;
use crate::config::{ClockBounds, Config, FillConfig};
use crate::domain::{
    Hour, Market, Row, Source, StreamKey, StreamKind, Symbol, TimeUs, UnfilledRange, MICROS_PER_DAY,
};
use crate::gaps::IdAt;
use crate::metrics::Counters;
use crate::quarantine::QuarantinedFrame;
use crate::recorder::clock::MarketState;
use crate::recorder::declared::Declared;
use crate::recorder::hour::{AggEvidence, HourState, StreamState, StreamTurn, SymbolGates, Walk};
use crate::recorder::wake::Wake;
use crate::seal::{Inserted, WatchSpan};
use crate::wal::SegmentId;

pub use crate::recorder::checkpoint::Checkpoint;
pub use crate::recorder::clock::{
    check_exchange_time, implausible_times, ClockCheck, SourceTimes, MAX_STREAM_LEAD_US,
};
pub use crate::recorder::declared::revise_declared;
pub use crate::recorder::jobs::{past_deadline, FillJob, FillReport, Job, SealJob};
pub use crate::recorder::judge::{
    MonoMs, REASON_DEADLINE, REASON_FILL_DISABLED, REASON_NOT_SERVED, REASON_REST_BEHIND,
    REASON_STOPPED,
};
pub use spills::Spill;
use streams::Streams;

pub struct State {
    grace_us: i64,
    clock: ClockBounds,
    /// Stream rows whose times or ids cannot be believed, for the
    /// runtime to quarantine (drained after each batch).
    rejected: Vec<QuarantinedFrame>,
    fill: FillConfig,
    markets: BTreeMap<Market, MarketState>,
    streams: Streams,
    counters: Arc<Counters>,
    warned_unexpected: BTreeSet<StreamKey>,
    /// Complete spot aggTrade hours kept as evidence for the same
    /// symbol-hour's trade holes (see `budget`), until that trade hour
    /// seals: at most [`MAX_EVIDENCE_AGGS`](crate::recorder::budget::MAX_EVIDENCE_AGGS) each, one per symbol-hour
    /// sealed by its aggTrade stream and not yet by its trade stream.
    agg_evidence: AggEvidence,
    /// An hour was sealed or finished sealing since the last [`State::prune`]:
    /// only then can it drop anything (it walks every stream, so not per plan).
    prune_due: bool,
    /// When [`State::plan`] must walk the streams again.
    wake: Wake,
    /// Stream-hours judged ([`judge_hour`](crate::recorder::judge::judge_hour) calls), for the test that a
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
    /// Rows were spilled and the rows held have not fallen to a quarter of
    /// the budget since: seals run one at a time ([`State::memory_pressed`]).
    memory_pressed: bool,
    /// The id of the next run spilled (unique in this process).
    next_run_id: u64,
    /// The streams with frames seen since [`State::take_seen`] was last
    /// called, each once (their counts are in their `StreamState`).
    seen: Vec<StreamKey>,
}

impl State {
    pub fn new(config: &Config, counters: Arc<Counters>) -> State {
        let markets = config
            .markets
            .iter()
            .map(|market_config| (market_config.market, MarketState::default()))
            .collect();
        let streams = Streams::new(config.stream_keys());
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
            memory_pressed: false,
            next_run_id: 0,
            seen: Vec::new(),
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
            state.begin_session();
        }
    }

    /// A process stops recording `market` at `exchange_time`.
    pub fn end_session(&mut self, market: Market, exchange_time: Option<TimeUs>) {
        self.wake.dirty = true;
        if let Some(state) = self.markets.get_mut(&market) {
            state.end_session(exchange_time);
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
                if let Some(state) = self.markets.get_mut(&market) {
                    state.restore_spans(spans, pending_new_span);
                }
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
                spans: state.spans_needed(oldest_needed),
                pending_new_span: state.pending_new_span,
            })
            .collect()
    }

    fn oldest_unsealed_hour_start(&self) -> Option<TimeUs> {
        self.streams
            .values()
            .flat_map(StreamState::hours_needing_market_history)
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
        let check = state.add_clock_sample(server_time, offset_us);
        if let ClockCheck::StreamAhead { ahead_us } = check {
            Counters::add(&self.counters.clock_check_failures, 1);
            warn!(%market, ahead_us, "stream event times are ahead of /api/v3/time");
        }
        check
    }

    /// Stream `source` of `market` showed `event_time` (already checked).
    fn note_event_time(&mut self, market: Market, source: &StreamKey, event_time: TimeUs) {
        if let Some(state) = self.markets.get_mut(&market) {
            state.note_event_time(source, event_time);
        }
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
                // One lookup of the stream for the count, the checks and
                // the insert: this runs for every frame.
                let mut stream = self.streams.get_mut(&key);
                // Seen even when rejected below.
                if let Some(stream) = stream.as_deref_mut() {
                    if stream.note_seen(1, event_time) {
                        self.seen.push(key.clone());
                    }
                }
                if let Some(reason) = implausible_row(
                    &self.markets,
                    &self.clock,
                    stream.as_deref(),
                    market,
                    &key,
                    &row,
                    event_time,
                ) {
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
                if let Some(state) = self.markets.get_mut(&market) {
                    state.note_event_time(&key, event_time);
                }
                match stream {
                    Some(stream) => {
                        self.rows_since_budget_check += 1;
                        insert_into(
                            stream,
                            &self.counters,
                            &mut self.wake,
                            key.kind,
                            row,
                            segment,
                        );
                    }
                    None => self.unexpected(&key),
                }
            }
            Decoded::KlineUpdate { key, event_time } => {
                if let Some(stream) = self.streams.get_mut(&key) {
                    if stream.note_seen(0, event_time) {
                        self.seen.push(key.clone());
                    }
                }
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

    /// Each stream with frames applied since the last call: its rows (a
    /// kline update counts none, a rejected row counts) and its newest
    /// event time. Configured streams only.
    pub fn take_seen(&mut self) -> Vec<(StreamKey, u64, TimeUs)> {
        let mut seen = Vec::with_capacity(self.seen.len());
        for key in self.seen.drain(..) {
            if let Some((n_rows, newest)) = self
                .streams
                .get_mut(&key)
                .and_then(|stream| stream.seen.take())
            {
                seen.push((key, n_rows, newest));
            }
        }
        seen
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
        let Some(stream) = self.streams.get_mut(&key) else {
            self.unexpected(&key);
            return None;
        };
        self.rows_since_budget_check += 1;
        Some(insert_into(
            stream,
            &self.counters,
            &mut self.wake,
            key.kind,
            row,
            segment,
        ))
    }

    /// A row of a stream that is not configured: counted, warned of once.
    fn unexpected(&mut self, key: &StreamKey) {
        Counters::add(&self.counters.rows_unexpected, 1);
        if self.warned_unexpected.insert(key.clone()) {
            warn!(%key, "row of a stream that is not configured; not recorded");
        }
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
        stream.forget_fills_before(hour.next());
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
        if unfilled.iter().any(UnfilledRange::is_retryable) {
            stream.hour_mut(hour).declared = Some(Declared::new(unfilled, 0));
        }
    }

    /// Number of hours with declared holes being retried (for logs and tests).
    pub fn n_declared_hours(&self) -> usize {
        self.streams
            .values()
            .flat_map(|stream| stream.hours.values())
            .filter(|state| state.declared.is_some())
            .count()
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
        if !self.wake.is_due(&self.markets, now) {
            return Vec::new();
        }
        // It walks every stream: only when the evidence can be used.
        let gates = if self.fill.agg_trade_evidence {
            self.symbol_gates()
        } else {
            Vec::new()
        };
        let mut walk = Walk::new(max_seals, now);
        for (index, (key, stream)) in self.streams.iter_mut().enumerate() {
            let gate = gates.get(index).copied().unwrap_or_default();
            let Some(turn) = stream_turn(
                key,
                gate,
                &self.markets,
                &self.fill,
                self.grace_us,
                &self.counters,
                &self.delivered,
            ) else {
                continue;
            };
            stream.plan(&turn, &mut walk, &mut self.agg_evidence);
        }
        self.finish_walk(walk)
    }

    /// The files of an orderly stop (`hour/stop.rs`): every stream's hours
    /// from the next to seal up to its market's exchange time, with what
    /// they hold, marked `stopped_at`. Called once the last WAL batch and
    /// seal are done: the rows are moved into the jobs, and the state is
    /// not used after.
    pub fn stop_seals(&mut self, now: MonoMs) -> Vec<SealJob> {
        let mut jobs = Vec::new();
        for (key, stream) in self.streams.iter_mut() {
            let gate = SymbolGates::default();
            if let Some(turn) = stream_turn(
                key,
                gate,
                &self.markets,
                &self.fill,
                self.grace_us,
                &self.counters,
                &self.delivered,
            ) {
                jobs.extend(stream.stop_seals(&turn, now));
            }
        }
        jobs
    }

    /// Keeps what a planning walk found for the next one (when it is due,
    /// and the hours judged), prunes when an hour was sealed, and returns
    /// the jobs.
    fn finish_walk(&mut self, walk: Walk) -> Vec<Job> {
        self.n_judged += walk.n_judged;
        self.wake = Wake {
            // A seal moves the gates other streams of its symbol wait on.
            dirty: walk.n_seals > 0,
            capped: walk.capped,
            exchange: walk.wake_exchange,
            mono: walk.wake_mono,
            walked_at: Some(walk.now),
            n_walks: self.wake.n_walks + 1,
        };
        if walk.n_seals > 0 || self.prune_due {
            self.prune();
            self.prune_due = false;
        }
        walk.jobs
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
                                .fill_of(*hour)
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
                .flat_map(|(_, stream)| stream.hours_needing_market_history())
                .min();
            let Some(oldest_needed) = oldest_needed else {
                continue;
            };
            market_state.prune_before(oldest_needed);
        }
    }

    /// The oldest WAL segment that still holds rows of an unsealed hour.
    pub fn oldest_pinned_segment(&self) -> Option<SegmentId> {
        self.streams
            .values()
            .flat_map(|stream| stream.hours.values())
            .filter_map(HourState::pinned_segment)
            .min()
    }

    /// Hours whose seal waits on a fill round running or queued now (for
    /// the log that says why hours are not sealed yet).
    pub fn n_hours_waiting_on_fill(&self) -> usize {
        self.streams
            .values()
            .flat_map(|stream| stream.hours.values())
            .filter(|state| state.fill.as_ref().is_some_and(|status| status.in_flight))
            .count()
    }

    /// Rows held for hours not sealed yet, per stream (for `status`).
    pub fn unsealed_rows_by_stream(&self) -> impl Iterator<Item = (&StreamKey, usize)> {
        self.streams.iter().map(|(key, stream)| {
            (
                key,
                stream
                    .open_rows()
                    .map(|(_, open_hour)| open_hour.rows.len())
                    .sum(),
            )
        })
    }

    /// Rows held for hours not sealed yet (for logs and tests).
    pub fn n_unsealed_rows(&self) -> usize {
        self.streams
            .values()
            .flat_map(StreamState::open_rows)
            .map(|(_, open_hour)| open_hour.rows.len())
            .sum()
    }

    /// Hours with a spilled run still on its way to disk (tests).
    #[cfg(test)]
    pub fn n_hours_spilling(&self) -> usize {
        self.streams
            .values()
            .flat_map(StreamState::open_rows)
            .filter(|(_, open_hour)| open_hour.rows.is_spilling())
            .count()
    }
}

/// Files `row` in its hour of `stream` and counts what it was.
fn insert_into(
    stream: &mut StreamState,
    counters: &Counters,
    wake: &mut Wake,
    kind: StreamKind,
    row: Row,
    segment: SegmentId,
) -> Inserted {
    let from_stream = row.source() == Source::Ws;
    let hour = Hour::containing(row.bucket_time());
    let late = from_stream && stream.next_hour_to_seal.is_some_and(|next| hour < next);
    if stream.next_hour_to_seal.is_some_and(|next| hour < next) {
        // A row of a sealed hour reseals it (a REST row of one too).
        wake.dirty = true;
    }
    let inserted = stream.hour_mut(hour).insert_row(kind, row, segment);
    match inserted {
        Inserted::Duplicate if from_stream => Counters::add(&counters.rows_duplicate, 1),
        Inserted::New if late => Counters::add(&counters.rows_late, 1),
        Inserted::New if !from_stream => Counters::add(&counters.rows_filled, 1),
        _ => {}
    }
    inserted
}

/// Why a stream row cannot be believed, if it cannot; `stream` is its
/// stream's state, if the stream is recorded.
fn implausible_row(
    markets: &BTreeMap<Market, MarketState>,
    clock: &ClockBounds,
    stream: Option<&StreamState>,
    market: Market,
    key: &StreamKey,
    row: &Row,
    event_time: TimeUs,
) -> Option<String> {
    let market_state = markets.get(&market)?;
    let newest_other = market_state
        .sources
        .newest_other_than(key)
        .max(market_state.server_time);
    if let Some(reason) = implausible_times(row, event_time, newest_other, clock) {
        return Some(reason);
    }
    if matches!(row, Row::Kline(_)) {
        return None;
    }
    let stream = stream?;
    // The newest id held (of an hour still open: recent), else the last
    // sealed one, which may be months old after a long stop: ids grow
    // with time, so the bound is per day between the two.
    let (newest_id, newest_time) = match stream.newest_key() {
        Some(id) => (id, None),
        None => stream.last_sealed.map(|last| (last.id, Some(last.time)))?,
    };
    let days = newest_time.map_or(1, |time| {
        row.bucket_time().saturating_sub(time).max(0) / MICROS_PER_DAY + 1
    });
    let bound = clock.max_id_jump.saturating_mul(days);
    (row.key().saturating_sub(newest_id) > bound).then(|| {
        format!(
            "id {} jumps past the newest id {newest_id} by more than clock.max_id_jump a day ({days} day(s))",
            row.key()
        )
    })
}

/// What a walk reads for `key`'s stream (see [`StreamTurn`]), or `None`
/// before its market has a clock and a watch span. The state's parts
/// passed one by one: the walk holds its streams mutably meanwhile.
fn stream_turn<'a>(
    key: &'a StreamKey,
    gate: SymbolGates,
    markets: &'a BTreeMap<Market, MarketState>,
    fill: &'a FillConfig,
    grace_us: i64,
    counters: &'a Counters,
    delivered: &BTreeMap<(Market, Symbol), TimeUs>,
) -> Option<StreamTurn<'a>> {
    let market = markets.get(&key.market)?;
    let (Some(exchange_now), Some(first_span)) = (market.exchange_time, market.spans.first())
    else {
        return None;
    };
    Some(StreamTurn {
        key,
        market,
        exchange_now,
        first_watched_hour: Hour::containing(first_span.start),
        fill,
        grace_us,
        counters,
        gate,
        // A few entries at most: found without building a key.
        delivered_at: delivered
            .iter()
            .find(|((market, symbol), _)| *market == key.market && *symbol == key.symbol)
            .map(|(_, at)| *at),
    })
}

#[cfg(test)]
mod tests;
