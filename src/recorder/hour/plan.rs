//! A stream's turn of a planning walk, with no I/O: what the walk reads
//! for the stream ([`StreamTurn`]) and gathers over the streams ([`Walk`]),
//! and [`StreamState::plan`] with the steps it takes in order. Failed seals
//! run again, sealed hours are resealed with late rows or a changed
//! `unfilled` list, declared holes are retried and then given up, the due
//! hours are judged in order ([`judge_hour`]) and the verdicts acted on (a
//! fill round, or a seal), and the times at which the stream's verdicts
//! change by themselves are noted for the next walk.
//!
//! The hours themselves, and the stream's bookkeeping of them, are in the
//! parent (`hour.rs`); this room holds only the walk, so the life of an
//! hour reads apart from the order in which a walk visits it.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use crate::config::FillConfig;
use crate::domain::{Hour, Market, StreamKey, StreamKind, TimeUs, UnfilledRange};
use crate::gaps::{holes_before, stream_hour_holes, Hole, StreamHour};
use crate::metrics::Counters;
use crate::recorder::budget::{resolve_trade_holes, AggSpan, MAX_EVIDENCE_AGGS};
use crate::recorder::clock::MarketState;
use crate::recorder::declared::{micros, Declared};
use crate::recorder::jobs::{FillJob, FillReport, Job, SealJob};
use crate::recorder::judge::{self, judge_hour, FillStatus, HourFacts, MonoMs, Sealing, Verdict};
use crate::recorder::wake::note_earliest;
use crate::seal::{complete_at, coverage, is_sealable};

use super::{make_job, AggEvidence, HourState, OpenRows, StreamState, SymbolGates};

/// What a planning walk reads for one stream: its key, its market's clock
/// and spans, the fill settings, and what its symbol's streams say.
pub(in crate::recorder) struct StreamTurn<'a> {
    pub(in crate::recorder) key: &'a StreamKey,
    pub(in crate::recorder) market: &'a MarketState,
    /// The market's exchange clock.
    pub(in crate::recorder) exchange_now: TimeUs,
    /// The hour of the market's first watch span: where a stream never
    /// planned before starts.
    pub(in crate::recorder) first_watched_hour: Hour,
    pub(in crate::recorder) fill: &'a FillConfig,
    pub(in crate::recorder) grace_us: i64,
    pub(in crate::recorder) counters: &'a Counters,
    pub(in crate::recorder) gate: SymbolGates,
    /// The delivery of the symbol's contract, if it was delivered.
    pub(in crate::recorder) delivered_at: Option<TimeUs>,
}

/// What one planning walk gathers over the streams: the jobs, and when
/// the next walk is due.
#[derive(Debug)]
pub(in crate::recorder) struct Walk {
    /// The host's monotonic clock.
    pub(in crate::recorder) now: MonoMs,
    pub(in crate::recorder) max_seals: usize,
    pub(in crate::recorder) jobs: Vec<Job>,
    pub(in crate::recorder) n_seals: usize,
    /// Work was left for want of a seal slot.
    pub(in crate::recorder) capped: bool,
    /// Per market walked: the earliest exchange time at which a verdict
    /// changes by itself (see `Wake::exchange`).
    pub(in crate::recorder) wake_exchange: BTreeMap<Market, Option<TimeUs>>,
    /// The earliest host time at which a fill round may be tried again.
    pub(in crate::recorder) wake_mono: Option<MonoMs>,
    /// Stream-hours judged ([`judge_hour`] calls).
    pub(in crate::recorder) n_judged: u64,
}

impl Walk {
    pub(in crate::recorder) fn new(max_seals: usize, now: MonoMs) -> Walk {
        Walk {
            now,
            max_seals,
            jobs: Vec::new(),
            n_seals: 0,
            capped: false,
            wake_exchange: BTreeMap::new(),
            wake_mono: None,
            n_judged: 0,
        }
    }

    fn may_seal(&self) -> bool {
        self.n_seals < self.max_seals
    }

    fn push_seal(&mut self, job: SealJob) {
        self.jobs.push(Job::Seal(job));
        self.n_seals += 1;
    }

    /// Lists `turn`'s market as walked: with nothing noted, only an event
    /// wakes it (a market not listed is walked whenever it has a clock).
    fn enter_market(&mut self, turn: &StreamTurn) {
        self.wake_exchange.entry(turn.key.market).or_default();
    }

    /// Exchange time `at` changes a verdict of `turn`'s stream by itself:
    /// kept if it is the market's earliest and still ahead.
    fn note_exchange(&mut self, turn: &StreamTurn, at: TimeUs) {
        if at > turn.exchange_now {
            note_earliest(self.wake_exchange.entry(turn.key.market).or_default(), at);
        }
    }
}

/// What the walk does after judging one due hour.
enum Step {
    /// The hour is sealed, or owes nothing: the next one is judged.
    Next,
    /// The hour holds the stream back (its holes are being filled, it
    /// waits for a seal slot or a run): later hours depend on it.
    Stop,
}

impl StreamState {
    /// This stream's part of a planning walk, in the order its jobs go
    /// out: failed seals again, late reseals, declared holes (given up or
    /// retried), then its due hours judged in order, and the times at
    /// which its verdicts change by themselves.
    pub(in crate::recorder) fn plan(
        &mut self,
        turn: &StreamTurn,
        walk: &mut Walk,
        agg_evidence: &mut AggEvidence,
    ) {
        let next = *self
            .next_hour_to_seal
            .get_or_insert(turn.first_watched_hour);
        walk.enter_market(turn);
        self.retry_failed_seals(walk);
        self.reseal_late_hours(next, turn, walk);
        self.give_up_declared_holes(turn, walk);
        if turn.fill.enabled {
            self.retry_declared_holes(turn, walk);
        }
        let stopped_at = self.judge_due_hours(next, turn, walk, agg_evidence);
        self.note_wake(stopped_at, turn, walk);
    }

    /// Failed seals run again as they were, oldest first, while slots last.
    fn retry_failed_seals(&mut self, walk: &mut Walk) {
        for state in self.hours.values_mut() {
            if !walk.may_seal() {
                break;
            }
            if let Some(job) = state.take_failed_job() {
                walk.push_seal(job);
            }
        }
        walk.capped |= self.hours.values().any(HourState::has_failed_job);
    }

    /// Sealed hours (before `next`) with late rows or a changed `unfilled`
    /// list are written again, oldest first, while slots last.
    fn reseal_late_hours(&mut self, next: Hour, turn: &StreamTurn, walk: &mut Walk) {
        for (hour, state) in self.hours.range_mut(..next) {
            if !state.wants_reseal() {
                continue;
            }
            if !walk.may_seal() {
                walk.capped = true;
                break;
            }
            let rows = state.rows.take();
            let unfilled = state.unfilled_changed.take();
            let job = make_late_job(turn.key, *hour, rows, unfilled, turn.market);
            state.start_writing(job.first_segment, job.rows.heap_bytes());
            walk.push_seal(job);
        }
    }

    /// Declared holes are retried for `fill.declared_give_up_hours`; then
    /// they stay declared in their file, for `backfill`.
    fn give_up_declared_holes(&mut self, turn: &StreamTurn, walk: &mut Walk) {
        let mut given_up = Vec::new();
        for (hour, state) in self.hours.iter_mut() {
            let Some(declared) = &state.declared else {
                continue;
            };
            let give_up_at = hour.end().saturating_add(turn.fill.declared_give_up_us);
            walk.note_exchange(turn, give_up_at);
            walk.note_exchange(turn, declared.retry_at);
            if !declared.in_flight && give_up_at <= turn.exchange_now {
                state.declared = None;
                given_up.push(*hour);
            }
        }
        for hour in &given_up {
            self.drop_if_empty(*hour);
        }
        if !given_up.is_empty() {
            let key = turn.key;
            Counters::add(&turn.counters.declared_given_up, given_up.len() as u64);
            warn!(%key, n_hours = given_up.len(), "declared holes no longer retried; `binance-recorder backfill` retries them");
        }
    }

    /// Declared holes due for a retry get a fill round (their hour is
    /// sealed, so nothing waits on it) unless the hour is being written.
    fn retry_declared_holes(&mut self, turn: &StreamTurn, walk: &mut Walk) {
        for (hour, state) in self.hours.iter_mut() {
            let writing = state.is_writing();
            let Some(declared) = state.declared.as_mut() else {
                continue;
            };
            if declared.in_flight || declared.retry_at > turn.exchange_now || writing {
                continue;
            }
            let holes: Vec<Hole> = declared
                .unfilled
                .iter()
                .filter(|range| range.is_retryable())
                .filter_map(|range| Hole::from_unfilled(turn.key.kind, range))
                .collect();
            declared.in_flight = true;
            declared.answered = false;
            walk.jobs.push(Job::Fill(FillJob {
                key: turn.key.clone(),
                hour: *hour,
                holes,
                closed_before: turn.exchange_now,
                declared: true,
                // Its hour is sealed already: nothing waits on it.
                deadline: None,
            }));
        }
    }

    /// Judges the due hours from `next` on, in order, until one holds the
    /// stream back; returns the hour it stopped at.
    ///
    /// Hours are judged even when no seal may start (every slot busy, or
    /// seals paused after a failure), so their fill rounds start on time;
    /// an hour judged ready to seal then waits for a slot without being
    /// judged again ([`FillStatus::seal_ready`]).
    fn judge_due_hours(
        &mut self,
        next: Hour,
        turn: &StreamTurn,
        walk: &mut Walk,
        agg_evidence: &mut AggEvidence,
    ) -> Hour {
        let mut hour = next;
        while is_sealable(turn.key.kind, hour, turn.exchange_now, turn.grace_us)
            && !self.is_writing(hour)
        {
            match self.judge_due_hour(hour, turn, walk, agg_evidence) {
                Step::Next => {
                    hour = hour.next();
                    self.forget_fills_before(hour);
                    self.next_hour_to_seal = Some(hour);
                }
                Step::Stop => break,
            }
        }
        hour
    }

    /// One due hour: skipped when it owes nothing, left alone while its
    /// fill round runs or a run of it is being written, else judged from
    /// its holes, and the verdict acted on (a fill round, or its seal).
    fn judge_due_hour(
        &mut self,
        hour: Hour,
        turn: &StreamTurn,
        walk: &mut Walk,
        agg_evidence: &mut AggEvidence,
    ) -> Step {
        let (key, fill, exchange_now) = (turn.key, turn.fill, turn.exchange_now);
        let seals_capped = !walk.may_seal();
        if seals_capped && self.fill_of(hour).is_some_and(|status| status.seal_ready) {
            return Step::Stop;
        }
        let watched = coverage(&turn.market.spans, hour);
        let Some(owed_until) = self.owed_until(hour, watched, turn) else {
            return Step::Next;
        };
        let sealable_at = complete_at(key.kind, hour).saturating_add(turn.grace_us);
        let judged_since = self
            .fill_of(hour)
            .map_or(exchange_now, |status| status.judged_since)
            .max(sealable_at);
        let deadline = judged_since.saturating_add(fill.deadline_us);
        if self.fill_of(hour).is_some_and(|status| {
            fill.enabled && status.is_waiting(exchange_now, deadline, walk.now)
        }) {
            return Step::Stop;
        }
        if self.hours.get(&hour).is_some_and(HourState::is_spilling) {
            // A run of it is being written; `spill_done` wakes the plan.
            return Step::Stop;
        }
        let (holes, owed_from_start) = self.holes_of(hour, watched, owed_until, turn);
        let status = self.hour_mut(hour).fill.get_or_insert_with(|| FillStatus {
            judged_since,
            ..FillStatus::default()
        });
        let evidence_due =
            key.kind == StreamKind::Trade && key.market == Market::Spot && fill.agg_trade_evidence;
        walk.n_judged += 1;
        let verdict = judge_hour(HourFacts {
            kind: key.kind,
            hour,
            exchange_now,
            now: walk.now,
            deadline,
            watched,
            holes,
            owed_from_start,
            status,
            fill,
            agg_hour_pending: evidence_due && turn.gate.agg_next.is_some_and(|next| next <= hour),
            owed_until,
        });
        let sealing = match verdict {
            Verdict::Wait => return Step::Stop,
            Verdict::Fill { holes } => {
                let job = FillJob {
                    key: key.clone(),
                    hour,
                    holes,
                    closed_before: exchange_now,
                    declared: false,
                    deadline: Some(judge::round_cut_at(deadline, fill.deadline_us)),
                };
                let evidence = agg_evidence
                    .get(&(key.market, key.symbol.clone(), hour))
                    .filter(|_| evidence_due);
                start_fill_round(job, status, evidence, turn, walk);
                return Step::Stop;
            }
            Verdict::Seal(_) if seals_capped => {
                status.seal_ready = true;
                return Step::Stop;
            }
            Verdict::Seal(sealing) => sealing,
        };
        // The verdict's coverage is the file's when the hour was watched
        // or is owed from its start; else (rows from before the first
        // watched moment) the rows held say how far the file vouches.
        let verdict_coverage = watched.is_some() || owed_from_start;
        self.seal_due_hour(hour, sealing, verdict_coverage, turn, walk, agg_evidence);
        Step::Next
    }

    /// Where what a due hour owes ends (its end, or a delivery inside
    /// it), or `None` when it owes nothing: no row of it is held, and it
    /// was not watched nor is owed in full by a backfill, or it starts
    /// after its contract's delivery.
    pub(super) fn owed_until(
        &self,
        hour: Hour,
        watched: Option<(TimeUs, TimeUs)>,
        turn: &StreamTurn,
    ) -> Option<TimeUs> {
        let fill = turn.fill;
        // After a delivery only rows make an hour owed (none are
        // expected; were any held, they would pin the WAL).
        let delivered = turn.delivered_at.is_some_and(|at| hour.start() >= at);
        let owed = self.rows_of(hour).is_some()
            || (!delivered
                && (watched.is_some()
                    || (self.sealed_any && fill.enabled && fill.backfill_from_hour_start)));
        // The delivery hour owes what came before the delivery only.
        let owed_until = turn
            .delivered_at
            .filter(|at| *at > hour.start() && *at < hour.end())
            .unwrap_or(hour.end());
        owed.then_some(owed_until)
    }

    /// The holes gap detection finds in a due hour's rows, between the
    /// last sealed row and the next hour's first, cut at `owed_until`;
    /// and whether the hour is owed from its start.
    pub(super) fn holes_of(
        &self,
        hour: Hour,
        watched: Option<(TimeUs, TimeUs)>,
        owed_until: TimeUs,
        turn: &StreamTurn,
    ) -> (Vec<Hole>, bool) {
        let (kind, fill) = (turn.key.kind, turn.fill);
        let rows_facts = StreamHour {
            kind,
            hour,
            spans: self
                .rows_of(hour)
                .map(|open| open.rows.id_spans())
                .unwrap_or_default(),
            before: self.last_sealed,
            after: self
                .hours
                .range(hour.next()..)
                .find_map(|(_, state)| state.rows.as_ref()?.rows.first_id_at()),
            from_hour_start: fill.enabled && fill.backfill_from_hour_start,
            watched_from: watched.map_or(hour.start(), |(from, _)| from),
        };
        let mut holes = stream_hour_holes(&rows_facts);
        if owed_until < hour.end() {
            holes = holes_before(kind, holes, owed_until);
        }
        let owed_from_start = rows_facts.from_hour_start || rows_facts.before.is_some();
        (holes, owed_from_start)
    }

    /// Seals a due hour with what is still open declared: its rows go to
    /// the job, its holes REST may still fill are retried from the file.
    fn seal_due_hour(
        &mut self,
        hour: Hour,
        sealing: Sealing,
        verdict_coverage: bool,
        turn: &StreamTurn,
        walk: &mut Walk,
        agg_evidence: &mut AggEvidence,
    ) {
        let (key, fill) = (turn.key, turn.fill);
        if let (Some(reason), true) = (&sealing.declared_reason, fill.enabled) {
            warn!(%key, %hour, n_holes = sealing.n_open_holes, %reason, "sealing with holes REST did not fill; declared in the file and retried");
        }
        let unfilled = sealing.unfilled;
        Counters::add(&turn.counters.holes_declared, unfilled.len() as u64);
        let state = self.hour_mut(hour);
        if fill.enabled && unfilled.iter().any(UnfilledRange::is_retryable) {
            state.declared = Some(Declared::new(
                unfilled.clone(),
                turn.exchange_now
                    .saturating_add(micros(fill.declared_retry)),
            ));
        }
        state.fill = None;
        let mut job = make_job(key, hour, state.rows.take(), turn.market, false);
        if verdict_coverage || job.rows.is_empty() {
            job.coverage_from = sealing.coverage_from;
            job.coverage_to = sealing.coverage_to;
        }
        state.start_writing(job.first_segment, job.rows.heap_bytes());
        let evidence_wanted = key.kind == StreamKind::AggTrade
            && key.market == Market::Spot
            && fill.agg_trade_evidence
            && turn.gate.trade_next.is_some_and(|next| next <= hour);
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
            agg_evidence.insert((key.market, key.symbol.clone(), hour), spans);
        }
        job.unfilled = Some(unfilled);
        if let Some(last) = job.rows.last_id_at() {
            self.last_sealed = Some(last);
        }
        self.sealed_any = true;
        walk.push_seal(job);
    }

    /// Notes when the verdicts of this stream, stopped at `hour`, change
    /// by themselves: the hour's end and grace, its fill deadline and the
    /// end of its wait for the aggTrade evidence (exchange time), its next
    /// fill round (host time); and whether it stopped for want of a slot.
    fn note_wake(&self, hour: Hour, turn: &StreamTurn, walk: &mut Walk) {
        let sealable_at = complete_at(turn.key.kind, hour).saturating_add(turn.grace_us);
        walk.note_exchange(turn, sealable_at);
        if let Some(status) = self.fill_of(hour) {
            let deadline = status
                .judged_since
                .max(sealable_at)
                .saturating_add(turn.fill.deadline_us);
            walk.note_exchange(turn, deadline);
            walk.note_exchange(turn, judge::agg_wait_ends(deadline, turn.fill.deadline_us));
            if status.retry_at > walk.now {
                note_earliest(&mut walk.wake_mono, status.retry_at);
            }
        }
        walk.capped |=
            !walk.may_seal() && turn.exchange_now >= sealable_at && !self.is_writing(hour);
    }
}

/// Starts a fill round for a due hour's holes, or answers it at once from
/// the aggTrade stream's `evidence` when that names every id it lacks.
fn start_fill_round(
    job: FillJob,
    status: &mut FillStatus,
    evidence: Option<&Vec<AggSpan>>,
    turn: &StreamTurn,
    walk: &mut Walk,
) {
    let (key, hour) = (turn.key, job.hour);
    status.in_flight = true;
    if let Some(aggs) = evidence {
        let resolved = resolve_trade_holes(&job.holes, aggs);
        // Used only when it answers everything: a trade hour with
        // aggregates of several fills needs the same historicalTrades
        // pages either way, and one round is quicker than an answer and
        // then a round.
        if resolved.holes.is_empty() && !status.answered_by_agg_trades {
            status.answered_by_agg_trades = true;
            Counters::add(&turn.counters.fill_answers_from_agg_trades, 1);
            debug!(%key, %hour, n_rows = resolved.rows.len(), n_holes_left = resolved.holes.len(), "trade holes answered by the aggTrade stream; no REST call");
            let report = FillReport::new(&job, resolved.rows, resolved.settled, None);
            walk.jobs.push(Job::Answered(report));
            return;
        }
    }
    Counters::add(&turn.counters.holes_found, job.holes.len() as u64);
    Counters::add(&turn.counters.fill_rounds, 1);
    debug!(%key, %hour, n_holes = job.holes.len(), "holes found; filling from REST");
    walk.jobs.push(Job::Fill(job));
}

/// A job that reseals a sealed hour with late rows and/or a new `unfilled`
/// list (the file on disk keeps its coverage unless this one is wider).
fn make_late_job(
    key: &StreamKey,
    hour: Hour,
    open: Option<OpenRows>,
    unfilled: Option<Vec<UnfilledRange>>,
    market: &MarketState,
) -> SealJob {
    let mut job = make_job(key, hour, open, market, true);
    if unfilled.as_ref().is_some_and(|list| list.is_empty()) {
        // Every declared hole is filled now: the file vouches for the whole hour.
        job.coverage_from = hour.start();
        job.coverage_to = hour.end();
    }
    job.unfilled = unfilled;
    job
}
