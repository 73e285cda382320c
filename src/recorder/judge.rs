//! The verdict on one stream-hour that is due (its end and grace have
//! passed on the exchange clock): wait, ask REST for its holes, or seal it
//! with what is still open declared. Pure, with time passed in; the state
//! (`state.rs`) gathers the facts and acts on the verdict.

use crate::config::FillConfig;
use crate::domain::{Hour, StreamKind, TimeUs, UnfilledRange};
use crate::gaps::{sort_by_settled, Hole, Settled};

/// Milliseconds of the host's monotonic clock since the runtime started:
/// when a fill round may be tried again. (Deadlines are in exchange time.)
pub type MonoMs = u64;

pub use crate::domain::REASON_NOT_SERVED;
/// `unfilled` reason: gap fill is switched off in the config.
pub const REASON_FILL_DISABLED: &str = "fill disabled";
/// `unfilled` reason in a file written at an orderly stop before its hour
/// was finished (`stopped_at`): the next run fills it and seals again.
pub const REASON_STOPPED: &str = "the recorder stopped before filling it";
/// `unfilled` reason when no fill round failed but the deadline came first.
pub const REASON_DEADLINE: &str = "not filled before the deadline";
/// `unfilled` reason when a fill round was still queued or running at the
/// hour's deadline (REST slow, or its weight budget spent): the round is
/// cut, what it fetched is kept, and the rest is retried later.
pub const REASON_REST_BEHIND: &str = "REST could not keep up before the deadline";

/// The share of an hour's fill window kept, at its end, for sealing: a
/// round is cut (running) or not started (queued) this much before the
/// seal deadline, so hours whose rounds are cut together are written by
/// the deadline, not after it in one burst. A tenth: 12 s of the default
/// 120 s window.
pub const SEAL_RESERVE_DIVISOR: i64 = 10;

/// Pure: when a fill round of an hour whose seal deadline is `deadline`
/// (a window of `window_us`) is cut: [`SEAL_RESERVE_DIVISOR`] of the
/// window earlier.
pub fn round_cut_at(deadline: TimeUs, window_us: TimeUs) -> TimeUs {
    deadline.saturating_sub(window_us / SEAL_RESERVE_DIVISOR)
}

/// Pure: until when a spot trade hour waits for its aggTrade hour's
/// evidence before asking REST itself: a third of its fill window, so
/// that an aggTrade hour REST cannot fill (REST down, or behind) leaves
/// the trade hour time for its own round, and its own failure to report,
/// beside the seal's reserve (at most a tenth plus a quarter of the
/// window: [`round_cut_at`], and the runtime's reserve for many seals).
pub fn agg_wait_ends(deadline: TimeUs, window_us: TimeUs) -> TimeUs {
    deadline.saturating_sub(window_us / 3 * 2)
}

/// Fill progress of an hour not sealed yet.
#[derive(Debug, Default)]
pub struct FillStatus {
    /// Key ranges REST answered for in full.
    pub settled: Vec<Settled>,
    pub n_rounds: u32,
    pub in_flight: bool,
    pub retry_at: MonoMs,
    pub last_failure: Option<String>,
    /// Exchange time when the hour was first judged; its fill deadline
    /// counts from here (after downtime that is later than its end).
    pub judged_since: TimeUs,
    /// The aggTrade stream's evidence answered this trade hour's holes
    /// once: later rounds ask REST for exactly the ids it left.
    pub answered_by_agg_trades: bool,
    /// A round reported [`REASON_REST_BEHIND`]: REST cannot answer before
    /// the deadline (cut there, or its weight wait reaches past it), so the
    /// hour seals now with the rest declared instead of waiting for it.
    pub rest_behind: bool,
    /// Judged ready to seal while no seal could start: the hour waits for
    /// a slot and is not judged again until one is free.
    pub seal_ready: bool,
}

impl FillStatus {
    /// Whether the hour waits on its fill round with nothing to decide:
    /// a round is running, or the next may not start yet and neither the
    /// deadline nor a "REST is behind" report cut the wait short. Judging
    /// walks the hour's rows, so it is skipped then.
    pub fn is_waiting(&self, exchange_now: TimeUs, deadline: TimeUs, now: MonoMs) -> bool {
        self.in_flight || (self.retry_at > now && exchange_now < deadline && !self.rest_behind)
    }
}

/// What is known of a due stream-hour when it is judged.
#[derive(Debug)]
pub struct HourFacts<'a> {
    pub kind: StreamKind,
    pub hour: Hour,
    /// The market's exchange clock, and the host's monotonic clock.
    pub exchange_now: TimeUs,
    pub now: MonoMs,
    /// Exchange time at which the hour seals with what is still open.
    pub deadline: TimeUs,
    /// The part of the hour a recorder process watched, if any.
    pub watched: Option<(TimeUs, TimeUs)>,
    /// The holes gap detection found in the rows held.
    pub holes: Vec<Hole>,
    /// The hour is owed from its start (backfill, or the hour before was
    /// sealed), not only from when it was first watched.
    pub owed_from_start: bool,
    pub status: &'a FillStatus,
    pub fill: &'a FillConfig,
    /// A spot trade hour whose aggTrade hour is not sealed yet: its
    /// aggregates will name the missing trade ids for less weight.
    pub agg_hour_pending: bool,
    /// Where what the hour owes ends: its end, or a delivered contract's
    /// delivery inside it (the holes are cut there already); the file's
    /// coverage stops there too.
    pub owed_until: TimeUs,
}

/// The decision on a due hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do now: a round is running, the next may not start yet,
    /// or the aggTrade hour it waits on is not sealed.
    Wait,
    /// Start a fill round for these holes.
    Fill { holes: Vec<Hole> },
    /// Write the file now.
    Seal(Sealing),
}

/// How a due hour is sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealing {
    /// The file's `unfilled` list: holes REST has no data for, and the
    /// holes still open when fill is off or the deadline came.
    pub unfilled: Vec<UnfilledRange>,
    /// Why the open holes are declared (`None`: no hole was left open).
    pub declared_reason: Option<String>,
    /// How many holes were still open (declared, or left to the coverage
    /// when fill is off and the hole is only "maybe").
    pub n_open_holes: usize,
    /// The part of the hour the file vouches for, `[from, to)`.
    pub coverage_from: TimeUs,
    pub coverage_to: TimeUs,
}

/// Pure: the verdict on a due hour.
pub fn judge_hour(facts: HourFacts) -> Verdict {
    let status = facts.status;
    let fill = facts.fill;
    let (to_fill, not_served) = sort_by_settled(facts.holes, &status.settled);
    let declared_reason = if to_fill.is_empty() {
        None
    } else if !fill.enabled {
        Some(REASON_FILL_DISABLED.to_owned())
    } else if status.in_flight {
        return Verdict::Wait;
    } else if facts.exchange_now >= facts.deadline || status.rest_behind {
        Some(
            status
                .last_failure
                .clone()
                .unwrap_or_else(|| REASON_DEADLINE.to_owned()),
        )
    } else if status.retry_at <= facts.now
        && !(facts.agg_hour_pending
            && facts.exchange_now < agg_wait_ends(facts.deadline, facts.fill.deadline_us))
    {
        return Verdict::Fill { holes: to_fill };
    } else {
        return Verdict::Wait;
    };

    let (kind, hour) = (facts.kind, facts.hour);
    let mut unfilled: Vec<UnfilledRange> = not_served
        .iter()
        .map(|hole| hole.unfilled(kind, hour, REASON_NOT_SERVED))
        .collect();
    let mut open_start = false;
    let mut open_end = false;
    if let Some(reason) = &declared_reason {
        for hole in &to_fill {
            let (from, to) = hole.key_bounds();
            open_start |= from.is_none();
            open_end |= to.is_none();
            // Without a fill an open hole is only "maybe": the coverage
            // says how far the file vouches instead.
            if fill.enabled || hole.is_closed() {
                unfilled.push(hole.unfilled(kind, hour, reason));
            }
        }
    }
    let coverage_from = match facts.watched {
        Some((from, _)) if open_start || !facts.owed_from_start => from,
        None if open_start => hour.end(),
        _ => hour.start(),
    };
    let coverage_to = match facts.watched {
        Some((_, to)) if open_end => to,
        None if open_end => coverage_from,
        _ => hour.end(),
    };
    let coverage_from = coverage_from.min(facts.owed_until);
    let coverage_to = coverage_to.min(facts.owed_until);
    Verdict::Seal(Sealing {
        unfilled,
        declared_reason,
        n_open_holes: to_fill.len(),
        coverage_from,
        coverage_to: coverage_to.max(coverage_from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_config;
    use crate::gaps::IdHole;

    const HOUR_START: TimeUs = 1_723_161_600_000_000; // 2024-08-09T00:00Z

    fn hour() -> Hour {
        Hour::containing(HOUR_START)
    }

    fn fill_config(enabled: bool) -> FillConfig {
        test_config(&format!("[fill]\nenabled = {enabled}"), &["trade"]).fill
    }

    /// Ids 5 to 6 are missing, between rows at +10 s and +20 s.
    fn closed_hole() -> Hole {
        Hole::Ids(IdHole {
            from_id: Some(5),
            to_id: Some(6),
            from_time: HOUR_START + 10_000_000,
            to_time: HOUR_START + 20_000_000,
        })
    }

    /// Nothing is known before the first row, at +30 min.
    fn open_start_hole() -> Hole {
        Hole::Ids(IdHole {
            from_id: None,
            to_id: Some(99),
            from_time: HOUR_START,
            to_time: HOUR_START + 1_800_000_000,
        })
    }

    const DEADLINE: TimeUs = HOUR_START + 7_200_000_000;

    /// The facts of the hour, watched whole, judged just after it ended,
    /// at host time 1,000 ms.
    fn facts<'a>(holes: Vec<Hole>, status: &'a FillStatus, fill: &'a FillConfig) -> HourFacts<'a> {
        HourFacts {
            kind: StreamKind::Trade,
            hour: hour(),
            exchange_now: hour().end() + 1_000_000,
            now: 1_000,
            deadline: DEADLINE,
            watched: Some((hour().start(), hour().end())),
            holes,
            owed_from_start: true,
            status,
            fill,
            agg_hour_pending: false,
            owed_until: hour().end(),
        }
    }

    fn sealed_as(verdict: Verdict) -> Sealing {
        match verdict {
            Verdict::Seal(sealing) => sealing,
            other => panic!("expected a seal, got {other:?}"),
        }
    }

    #[test]
    fn a_delivery_inside_the_hour_ends_its_coverage() {
        let (status, fill) = (FillStatus::default(), fill_config(true));
        let delivery = HOUR_START + 2_400_000_000; // +40 min
        let sealing = sealed_as(judge_hour(HourFacts {
            owed_until: delivery,
            ..facts(Vec::new(), &status, &fill)
        }));
        assert_eq!(
            (sealing.coverage_from, sealing.coverage_to),
            (HOUR_START, delivery)
        );
        assert!(sealing.unfilled.is_empty());
    }

    #[test]
    fn an_hour_without_holes_seals_whole_at_once() {
        let (status, fill) = (FillStatus::default(), fill_config(true));
        let sealing = sealed_as(judge_hour(facts(Vec::new(), &status, &fill)));
        assert_eq!(sealing.unfilled, Vec::new());
        assert_eq!(sealing.declared_reason, None);
        assert_eq!(
            (sealing.coverage_from, sealing.coverage_to),
            (hour().start(), hour().end())
        );
    }

    #[test]
    fn holes_start_a_round_when_its_retry_is_due_and_wait_while_it_runs() {
        let fill = fill_config(true);
        let status = FillStatus::default();
        assert_eq!(
            judge_hour(facts(vec![closed_hole()], &status, &fill)),
            Verdict::Fill {
                holes: vec![closed_hole()]
            }
        );
        let running = FillStatus {
            in_flight: true,
            ..FillStatus::default()
        };
        assert_eq!(
            judge_hour(facts(vec![closed_hole()], &running, &fill)),
            Verdict::Wait
        );
        let backing_off = FillStatus {
            retry_at: 5_000,
            ..FillStatus::default()
        };
        assert_eq!(
            judge_hour(facts(vec![closed_hole()], &backing_off, &fill)),
            Verdict::Wait
        );
        assert!(backing_off.is_waiting(hour().end(), DEADLINE, 1_000));
        assert!(!backing_off.is_waiting(DEADLINE, DEADLINE, 1_000));
    }

    #[test]
    fn a_trade_hour_waits_for_its_agg_trade_hour_before_asking_rest() {
        let (status, fill) = (FillStatus::default(), fill_config(true));
        let mut waiting = facts(vec![closed_hole()], &status, &fill);
        waiting.agg_hour_pending = true;
        assert_eq!(judge_hour(waiting), Verdict::Wait);
    }

    #[test]
    fn a_trade_hour_waits_for_its_agg_trade_hour_only_a_third_of_its_window() {
        let (status, fill) = (FillStatus::default(), fill_config(true));
        let mut late = facts(vec![closed_hole()], &status, &fill);
        late.agg_hour_pending = true;
        late.exchange_now = agg_wait_ends(late.deadline, fill.deadline_us);
        assert_eq!(
            judge_hour(late),
            Verdict::Fill {
                holes: vec![closed_hole()]
            },
            "a third of the window gone: it asks REST itself"
        );
    }

    #[test]
    fn at_the_deadline_open_holes_are_declared_with_the_last_failure() {
        let fill = fill_config(true);
        let failed = FillStatus {
            retry_at: 5_000,
            last_failure: Some("REST answered 503".to_owned()),
            ..FillStatus::default()
        };
        let mut at_deadline = facts(vec![closed_hole()], &failed, &fill);
        at_deadline.exchange_now = DEADLINE;
        let sealing = sealed_as(judge_hour(at_deadline));
        assert_eq!(
            sealing.declared_reason.as_deref(),
            Some("REST answered 503")
        );
        assert_eq!(sealing.unfilled.len(), 1);
        assert_eq!(sealing.unfilled[0].reason, "REST answered 503");
        assert_eq!(sealing.n_open_holes, 1);

        let never_failed = FillStatus {
            retry_at: 5_000,
            ..FillStatus::default()
        };
        let mut at_deadline = facts(vec![closed_hole()], &never_failed, &fill);
        at_deadline.exchange_now = DEADLINE;
        let sealing = sealed_as(judge_hour(at_deadline));
        assert_eq!(sealing.declared_reason.as_deref(), Some(REASON_DEADLINE));
    }

    #[test]
    fn a_round_is_cut_a_tenth_of_its_window_before_the_seal_deadline() {
        assert_eq!(round_cut_at(1_000_000_000, 120_000_000), 988_000_000);
        assert_eq!(round_cut_at(5, 0), 5, "no window, no reserve");
        assert_eq!(round_cut_at(i64::MIN + 1, 120_000_000), i64::MIN);
    }

    #[test]
    fn rest_behind_seals_before_the_deadline_with_the_holes_declared() {
        let fill = fill_config(true);
        let behind = FillStatus {
            rest_behind: true,
            last_failure: Some(REASON_REST_BEHIND.to_owned()),
            retry_at: 5_000,
            ..FillStatus::default()
        };
        assert!(!behind.is_waiting(hour().end(), DEADLINE, 1_000));
        let sealing = sealed_as(judge_hour(facts(
            vec![closed_hole(), open_start_hole()],
            &behind,
            &fill,
        )));
        assert_eq!(sealing.unfilled.len(), 2);
        assert!(sealing
            .unfilled
            .iter()
            .all(|range| range.reason == REASON_REST_BEHIND));
        // An open start declared: the file vouches from when it was watched.
        assert_eq!(sealing.coverage_from, hour().start());
    }

    #[test]
    fn without_fill_closed_holes_are_declared_and_an_open_start_narrows_the_coverage() {
        let (status, fill) = (FillStatus::default(), fill_config(false));
        let mut judged = facts(vec![closed_hole(), open_start_hole()], &status, &fill);
        judged.watched = Some((HOUR_START + 1_000, hour().end()));
        let sealing = sealed_as(judge_hour(judged));
        assert_eq!(
            sealing.unfilled.len(),
            1,
            "only the closed hole is declared"
        );
        assert_eq!(sealing.unfilled[0].reason, REASON_FILL_DISABLED);
        assert_eq!(sealing.coverage_from, HOUR_START + 1_000);
        assert_eq!(sealing.coverage_to, hour().end());
    }

    #[test]
    fn holes_rest_answered_empty_are_declared_not_served_and_not_asked_again() {
        let fill = fill_config(true);
        let answered = FillStatus {
            settled: vec![Settled {
                from: Some(5),
                to: Some(6),
            }],
            ..FillStatus::default()
        };
        let sealing = sealed_as(judge_hour(facts(vec![closed_hole()], &answered, &fill)));
        assert_eq!(sealing.declared_reason, None);
        assert_eq!(sealing.unfilled.len(), 1);
        assert_eq!(sealing.unfilled[0].reason, REASON_NOT_SERVED);
        // A probe of an open end that REST answered with nothing: no hole.
        let probed = FillStatus {
            settled: vec![Settled {
                from: None,
                to: Some(99),
            }],
            ..FillStatus::default()
        };
        let sealing = sealed_as(judge_hour(facts(vec![open_start_hole()], &probed, &fill)));
        assert_eq!(sealing.unfilled, Vec::new());
    }
}
