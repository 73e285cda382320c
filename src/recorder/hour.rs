//! One stream's hours, with no I/O: the life of each stream-hour
//! ([`HourState`]) and a stream's part of a planning walk
//! ([`StreamState::plan`]): failed seals run again, sealed hours resealed
//! with late rows or a changed `unfilled` list, declared holes retried and
//! then given up, the due hours judged in order ([`judge_hour`]), and when
//! the stream's verdicts next change by themselves. The state (`state.rs`)
//! owns the streams, feeds them rows and reports, and walks them.
//!
//! `HourState` is a struct of optional parts, not an enum of phases,
//! because an hour's phases overlap: a sealed hour can at once be written
//! again, hold late rows that wait for that write, have declared holes
//! being retried, and carry a changed `unfilled` list for its next reseal.
//! An enum would need a variant for each mix, or would lose one. Nor is
//! "sealed" the hour's own fact: it is the stream's, whose cursor
//! `next_hour_to_seal` moves past many hours at once (hours nobody
//! watched, a resume after the files on disk). Stored in each entry it
//! could disagree with the cursor; derived from it, it cannot. So each
//! part is present only while the hour needs it, and an entry with no part
//! left is removed ([`HourState::is_empty`]): after months of recording a
//! stream holds its unsealed hours and the few sealed ones still being
//! written or retried, nothing more.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use crate::config::FillConfig;
use crate::domain::{Hour, Market, Row, StreamKey, StreamKind, Symbol, TimeUs, UnfilledRange};
use crate::gaps::{holes_before, stream_hour_holes, Hole, IdAt, StreamHour};
use crate::metrics::Counters;
use crate::recorder::budget::{resolve_trade_holes, AggSpan, MAX_EVIDENCE_AGGS};
use crate::recorder::clock::MarketState;
use crate::recorder::declared::{micros, Declared};
use crate::recorder::jobs::{FillJob, FillReport, Job, SealJob};
use crate::recorder::judge::{
    self, judge_hour, FillStatus, HourFacts, MonoMs, Sealing, Verdict, REASON_NOT_SERVED,
};
use crate::recorder::spill::HourRows;
use crate::recorder::wake::note_earliest;
use crate::seal::{complete_at, coverage, is_sealable, Inserted};
use crate::wal::SegmentId;

/// Rows of an hour not in a file yet, and the WAL segment they pin.
#[derive(Debug)]
pub(super) struct OpenRows {
    /// In memory, and the runs spilled past the memory budget.
    pub(super) rows: HourRows,
    /// The oldest WAL segment holding one of these rows.
    pub(super) first_segment: SegmentId,
}

/// A file of the hour being written (its seal, or a reseal).
#[derive(Debug)]
pub(super) struct Writing {
    /// The oldest WAL segment the rows being written came from: kept
    /// until the file is on disk (`None`: the job holds no row).
    pub(super) pinned_segment: Option<SegmentId>,
    /// The write failed: the same job (rows, holes, coverage) runs again,
    /// and the hour stays in flight, pinning its segment, until it does.
    pub(super) failed_job: Option<SealJob>,
}

/// What one stream-hour still needs. Whether the hour is sealed is the
/// stream's to say (it is before `next_hour_to_seal`); each part here is
/// present only while needed (see the module doc).
#[derive(Debug, Default)]
pub(super) struct HourState {
    /// Rows not in a file yet: an unsealed hour's rows, or late rows (from
    /// the stream or REST) of a sealed hour, waiting for its reseal.
    pub(super) rows: Option<OpenRows>,
    /// Fill progress of an unsealed hour, from its first verdict until it
    /// seals, or until the stream's cursor passes it unsealed (a resume
    /// after the files on disk, a delivery): no verdict reads it then, and
    /// a report of it is ignored ([`StreamState::forget_fills_before`]).
    pub(super) fill: Option<FillStatus>,
    /// A file of the hour is being written.
    pub(super) writing: Option<Writing>,
    /// The holes its sealed file declares, retried now and then.
    pub(super) declared: Option<Declared>,
    /// A retry changed the sealed file's `unfilled` list: it is resealed
    /// with this one.
    pub(super) unfilled_changed: Option<Vec<UnfilledRange>>,
}

impl HourState {
    /// Nothing is left to do for the hour: its entry can go.
    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_none()
            && self.fill.is_none()
            && self.writing.is_none()
            && self.declared.is_none()
            && self.unfilled_changed.is_none()
    }

    pub(super) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// A run of its rows is being written to disk: the hour is neither
    /// judged nor sealed until it is (`spill_done` wakes the plan).
    pub(super) fn is_spilling(&self) -> bool {
        self.rows
            .as_ref()
            .is_some_and(|open| open.rows.is_spilling())
    }

    /// The oldest WAL segment the hour still needs: its rows' and the
    /// write's, whichever is older.
    pub(super) fn pinned_segment(&self) -> Option<SegmentId> {
        let rows = self.rows.as_ref().map(|open| open.first_segment);
        let writing = self
            .writing
            .as_ref()
            .and_then(|writing| writing.pinned_segment);
        rows.into_iter().chain(writing).min()
    }

    /// A seal of the hour, running or to come, will read its market's
    /// watch spans and clock offsets: they are kept while this holds.
    pub(super) fn needs_market_history(&self) -> bool {
        self.rows.is_some() || self.writing.is_some()
    }

    /// A sealed hour with late rows or a changed `unfilled` list, not
    /// being written and with no run being spilled: reseal it now.
    pub(super) fn wants_reseal(&self) -> bool {
        (self.rows.is_some() || self.unfilled_changed.is_some())
            && !self.is_writing()
            && !self.is_spilling()
    }

    /// Files `row`, met in WAL segment `segment`, with the hour's rows.
    pub(super) fn insert_row(
        &mut self,
        kind: StreamKind,
        row: Row,
        segment: SegmentId,
    ) -> Inserted {
        let open = self.rows.get_or_insert_with(|| OpenRows {
            rows: HourRows::new(kind),
            first_segment: segment,
        });
        open.first_segment = open.first_segment.min(segment);
        open.rows.insert(row)
    }

    /// A write of the hour starts, pinning `pinned_segment` until it ends.
    pub(super) fn start_writing(&mut self, pinned_segment: Option<SegmentId>) {
        self.writing = Some(Writing {
            pinned_segment,
            failed_job: None,
        });
    }

    /// The write failed: `job` runs again as it was. The hour stays in
    /// flight; were it somehow not (only a planned job can fail), the
    /// job's own segment is pinned until it runs, the safe side.
    pub(super) fn write_failed(&mut self, job: SealJob) {
        let writing = self.writing.get_or_insert(Writing {
            pinned_segment: job.first_segment,
            failed_job: None,
        });
        writing.failed_job = Some(job);
    }

    /// A failed write waiting to run again, taken out to run.
    fn take_failed_job(&mut self) -> Option<SealJob> {
        self.writing.as_mut()?.failed_job.take()
    }

    fn has_failed_job(&self) -> bool {
        self.writing
            .as_ref()
            .is_some_and(|writing| writing.failed_job.is_some())
    }
}

/// What one symbol's trade and aggTrade streams wait for each other on
/// (the aggTrade evidence for trade holes, see `budget`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SymbolGates {
    /// The next hour the aggTrade stream will seal, unless a fill round of
    /// that hour failed: its trade hours then ask REST themselves rather
    /// than wait out the deadline.
    pub(super) agg_next: Option<Hour>,
    /// The next hour the trade stream will seal.
    pub(super) trade_next: Option<Hour>,
}

/// Complete spot aggTrade hours kept as evidence for the same
/// symbol-hour's trade holes (see `budget`), until that trade hour seals.
pub(super) type AggEvidence = BTreeMap<(Market, Symbol, Hour), Vec<AggSpan>>;

/// What a planning walk reads for one stream: its key, its market's clock
/// and spans, the fill settings, and what its symbol's streams say.
pub(super) struct StreamTurn<'a> {
    pub(super) key: &'a StreamKey,
    pub(super) market: &'a MarketState,
    /// The market's exchange clock.
    pub(super) exchange_now: TimeUs,
    /// The hour of the market's first watch span: where a stream never
    /// planned before starts.
    pub(super) first_watched_hour: Hour,
    pub(super) fill: &'a FillConfig,
    pub(super) grace_us: i64,
    pub(super) counters: &'a Counters,
    pub(super) gate: SymbolGates,
    /// The delivery of the symbol's contract, if it was delivered.
    pub(super) delivered_at: Option<TimeUs>,
}

/// What one planning walk gathers over the streams: the jobs, and when
/// the next walk is due.
#[derive(Debug)]
pub(super) struct Walk {
    /// The host's monotonic clock.
    pub(super) now: MonoMs,
    pub(super) max_seals: usize,
    pub(super) jobs: Vec<Job>,
    pub(super) n_seals: usize,
    /// Work was left for want of a seal slot.
    pub(super) capped: bool,
    /// Per market walked: the earliest exchange time at which a verdict
    /// changes by itself (see `Wake::exchange`).
    pub(super) wake_exchange: BTreeMap<Market, Option<TimeUs>>,
    /// The earliest host time at which a fill round may be tried again.
    pub(super) wake_mono: Option<MonoMs>,
    /// Stream-hours judged ([`judge_hour`] calls).
    pub(super) n_judged: u64,
}

impl Walk {
    pub(super) fn new(max_seals: usize, now: MonoMs) -> Walk {
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

/// Per-(market, stream, symbol) state.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// Hours before this one are sealed (or were never watched).
    pub(super) next_hour_to_seal: Option<Hour>,
    /// The last row of the sealed hours (carried over empty hours): the
    /// `before` of the next hour's gap detection.
    pub(super) last_sealed: Option<IdAt>,
    /// An hour of this stream was sealed (by this process or, read from
    /// disk, by an earlier one): the following hours are owed in full.
    pub(super) sealed_any: bool,
    /// The hours that still need something; none is empty.
    pub(super) hours: BTreeMap<Hour, HourState>,
}

impl StreamState {
    /// The newest key held in memory (rows not in a file yet).
    pub(super) fn newest_key(&self) -> Option<i64> {
        self.hours
            .values()
            .rev()
            .find_map(|state| state.rows.as_ref()?.rows.last_key())
    }

    /// The hour's state, made when the stream holds none. A caller that
    /// may leave it empty calls [`StreamState::drop_if_empty`] after.
    pub(super) fn hour_mut(&mut self, hour: Hour) -> &mut HourState {
        self.hours.entry(hour).or_default()
    }

    /// Drops the fill status of every hour before `cursor`, which the
    /// stream's cursor is about to pass: no verdict reads one again, and
    /// one left in flight would count among the hours waiting on a fill
    /// for good.
    pub(super) fn forget_fills_before(&mut self, cursor: Hour) {
        let passed: Vec<Hour> = self
            .hours
            .range(..cursor)
            .filter(|(_, state)| state.fill.is_some())
            .map(|(hour, _)| *hour)
            .collect();
        for hour in passed {
            self.hour_mut(hour).fill = None;
            self.drop_if_empty(hour);
        }
    }

    /// Removes the hour's entry once nothing is left of it.
    pub(super) fn drop_if_empty(&mut self, hour: Hour) {
        if self.hours.get(&hour).is_some_and(HourState::is_empty) {
            self.hours.remove(&hour);
        }
    }

    pub(super) fn fill_of(&self, hour: Hour) -> Option<&FillStatus> {
        self.hours.get(&hour)?.fill.as_ref()
    }

    pub(super) fn rows_of(&self, hour: Hour) -> Option<&OpenRows> {
        self.hours.get(&hour)?.rows.as_ref()
    }

    pub(super) fn rows_mut(&mut self, hour: Hour) -> Option<&mut OpenRows> {
        self.hours.get_mut(&hour)?.rows.as_mut()
    }

    /// The hours holding rows not in a file yet, oldest first.
    pub(super) fn open_rows(&self) -> impl Iterator<Item = (Hour, &OpenRows)> {
        self.hours
            .iter()
            .filter_map(|(hour, state)| Some((*hour, state.rows.as_ref()?)))
    }

    fn is_writing(&self, hour: Hour) -> bool {
        self.hours.get(&hour).is_some_and(HourState::is_writing)
    }

    /// The hours whose seal, running or to come, reads the market's watch
    /// spans and clock offsets, with the next hour to seal.
    pub(super) fn hours_needing_market_history(&self) -> impl Iterator<Item = Hour> + '_ {
        self.next_hour_to_seal.into_iter().chain(
            self.hours
                .iter()
                .filter(|(_, state)| state.needs_market_history())
                .map(|(hour, _)| *hour),
        )
    }

    /// This stream's part of a planning walk, in the order its jobs go
    /// out: failed seals again, late reseals, declared holes (given up or
    /// retried), then its due hours judged in order, and the times at
    /// which its verdicts change by themselves.
    pub(super) fn plan(
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
            state.start_writing(job.first_segment);
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
                .filter(|range| range.reason != REASON_NOT_SERVED)
                .filter_map(|range| Hole::from_unfilled(turn.key.kind, range))
                .collect();
            declared.in_flight = true;
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
    fn owed_until(
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
    fn holes_of(
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
        if fill.enabled
            && unfilled
                .iter()
                .any(|range| range.reason != REASON_NOT_SERVED)
        {
            state.declared = Some(Declared {
                unfilled: unfilled.clone(),
                retry_at: turn
                    .exchange_now
                    .saturating_add(micros(fill.declared_retry)),
                in_flight: false,
            });
        }
        state.fill = None;
        let mut job = make_job(key, hour, state.rows.take(), turn.market, false);
        if verdict_coverage || job.rows.is_empty() {
            job.coverage_from = sealing.coverage_from;
            job.coverage_to = sealing.coverage_to;
        }
        state.start_writing(job.first_segment);
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

/// A job that seals `hour` with `open`'s rows (none: an empty file), the
/// coverage its market's watch spans give and the hour's clock offset.
pub(super) fn make_job(
    key: &StreamKey,
    hour: Hour,
    open: Option<OpenRows>,
    market: &MarketState,
    late: bool,
) -> SealJob {
    let (rows, first_segment) = match open {
        Some(open) => (open.rows, Some(open.first_segment)),
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

    const HOUR_START: TimeUs = 1_723_161_600_000_000;

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn trade_key() -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::Trade,
        }
    }

    fn trade(id: i64) -> Row {
        Row::test_trade(id, HOUR_START + id)
    }

    /// An hour holding `ids`, met in WAL segment `segment`.
    fn hour_with_rows(ids: &[i64], segment: u64) -> HourState {
        let mut state = HourState::default();
        for id in ids {
            state.insert_row(StreamKind::Trade, trade(*id), SegmentId(segment));
        }
        state
    }

    /// A seal job of the hour with `ids`, as the walk makes one.
    fn seal_job(ids: &[i64], segment: u64) -> SealJob {
        let state = hour_with_rows(ids, segment);
        make_job(
            &trade_key(),
            hour(),
            state.rows,
            &MarketState::default(),
            false,
        )
    }

    fn declared() -> Declared {
        Declared {
            unfilled: Vec::new(),
            retry_at: 0,
            in_flight: false,
        }
    }

    #[test]
    fn an_hour_is_empty_only_with_no_part_left() {
        assert!(HourState::default().is_empty());
        let with_each_part = [
            hour_with_rows(&[1], 1),
            HourState {
                fill: Some(FillStatus::default()),
                ..HourState::default()
            },
            HourState {
                writing: Some(Writing {
                    pinned_segment: None,
                    failed_job: None,
                }),
                ..HourState::default()
            },
            HourState {
                declared: Some(declared()),
                ..HourState::default()
            },
            HourState {
                unfilled_changed: Some(Vec::new()),
                ..HourState::default()
            },
        ];
        for state in &with_each_part {
            assert!(!state.is_empty(), "{state:?}");
        }
    }

    #[test]
    fn rows_pin_their_oldest_segment_and_a_write_its_own() {
        let mut state = hour_with_rows(&[1, 2], 5);
        state.insert_row(StreamKind::Trade, trade(3), SegmentId(3));
        state.insert_row(StreamKind::Trade, trade(4), SegmentId(9));
        assert_eq!(state.pinned_segment(), Some(SegmentId(3)));
        assert!(state.needs_market_history());

        // Being written from segment 2, with late rows from segment 3.
        state.start_writing(Some(SegmentId(2)));
        assert!(state.is_writing());
        assert_eq!(state.pinned_segment(), Some(SegmentId(2)));

        // A write that holds no row pins nothing; nor does an empty hour.
        let mut empty_file = HourState::default();
        empty_file.start_writing(None);
        assert!(empty_file.needs_market_history());
        assert_eq!(empty_file.pinned_segment(), None);
        assert_eq!(HourState::default().pinned_segment(), None);
        assert!(!HourState::default().needs_market_history());
    }

    #[test]
    fn a_failed_write_stays_in_flight_and_runs_again_once() {
        let mut state = HourState::default();
        state.start_writing(Some(SegmentId(4)));
        state.write_failed(seal_job(&[1], 7));
        assert!(state.has_failed_job());
        assert_eq!(
            state.pinned_segment(),
            Some(SegmentId(4)),
            "the running write's pin stays"
        );
        assert!(state.take_failed_job().is_some());
        assert!(state.take_failed_job().is_none(), "taken once");
        assert!(state.is_writing(), "in flight until it finishes");

        // Only a planned job can fail; were one not in flight, its rows'
        // segment is pinned until it runs.
        let mut not_writing = HourState::default();
        not_writing.write_failed(seal_job(&[1], 7));
        assert_eq!(not_writing.pinned_segment(), Some(SegmentId(7)));
    }

    #[test]
    fn a_sealed_hour_is_resealed_for_late_rows_or_a_new_list_when_not_being_written() {
        assert!(!HourState::default().wants_reseal());
        assert!(hour_with_rows(&[1], 1).wants_reseal());
        let changed = HourState {
            unfilled_changed: Some(Vec::new()),
            ..HourState::default()
        };
        assert!(changed.wants_reseal());
        let declared_only = HourState {
            declared: Some(declared()),
            ..HourState::default()
        };
        assert!(!declared_only.wants_reseal(), "its holes are retried first");
        let mut writing = hour_with_rows(&[1], 1);
        writing.start_writing(None);
        assert!(!writing.wants_reseal(), "late rows wait for the write");
    }

    #[test]
    fn a_stream_drops_an_hour_only_when_nothing_is_left_of_it() {
        let mut stream = StreamState::default();
        stream.hour_mut(hour()).start_writing(None);
        stream.hour_mut(hour()).declared = Some(declared());
        stream
            .hour_mut(hour().next())
            .insert_row(StreamKind::Trade, trade(1), SegmentId(1));

        stream.hours.get_mut(&hour()).expect("held").writing = None;
        stream.drop_if_empty(hour());
        assert!(
            stream.hours.contains_key(&hour()),
            "its declared holes remain"
        );
        stream.hours.get_mut(&hour()).expect("held").declared = None;
        stream.drop_if_empty(hour());
        stream.drop_if_empty(hour().next());
        assert_eq!(
            stream.hours.keys().copied().collect::<Vec<_>>(),
            vec![hour().next()]
        );

        // Looking at an hour makes no entry.
        assert!(stream.fill_of(hour()).is_none());
        assert!(stream.rows_mut(hour()).is_none());
        assert!(!stream.hours.contains_key(&hour()));
    }

    #[test]
    fn the_newest_key_and_the_next_rows_come_from_the_hours_holding_rows() {
        let mut stream = StreamState::default();
        stream
            .hour_mut(hour())
            .insert_row(StreamKind::Trade, trade(5), SegmentId(1));
        stream.hour_mut(hour().next()).start_writing(None);
        assert_eq!(
            stream.newest_key(),
            Some(5),
            "an hour being written holds no row"
        );
        let open: Vec<Hour> = stream.open_rows().map(|(hour, _)| hour).collect();
        assert_eq!(open, vec![hour()]);
        stream.next_hour_to_seal = Some(hour());
        let needing: Vec<Hour> = stream.hours_needing_market_history().collect();
        assert_eq!(needing, vec![hour(), hour(), hour().next()]);
    }
}
