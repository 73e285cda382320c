//! Unit tests of the state machine (`state.rs`): sealing in order, the
//! corroborated clock and quarantined rows, watch spans across restarts,
//! fill rounds and declared holes, and the planning wake-ups, all through
//! `State`'s own methods with time passed in.

use super::*;
use crate::config::test_config;
use crate::domain::{
    Decimal8, Source, StreamKind, Symbol, TradeRow, MICROS_PER_HOUR, MICROS_PER_MINUTE,
};
use crate::gaps::{Hole, Settled};

const HOUR_START: TimeUs = 1_723_161_600_000_000;

fn config() -> Config {
    config_with_fill("enabled = false")
}

fn config_with_fill(fill: &str) -> Config {
    test_config(
        &format!("[seal]\ngrace_ms = 1000\n[fill]\n{fill}"),
        &["trade", "kline_1m"],
    )
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
        row: Row::kline(crate::domain::KlineRow {
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
        let mut config = config_with_fill("deadline_secs = 60\nbackfill_from_hour_start = false");
        config.markets[0].streams = vec![StreamKind::Kline(crate::domain::KlineInterval::Minute1)];
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
    let sealed: Vec<(StreamKind, Hour)> = jobs.iter().map(|job| (job.key.kind, job.hour)).collect();
    assert_eq!(sealed, vec![(StreamKind::Trade, Hour::containing(late))]);
    for job in &jobs {
        state.seal_finished(&job.key, job.hour);
    }
    assert_eq!(state.oldest_pinned_segment(), None);
}

#[test]
fn rows_being_written_count_against_the_memory_budget_and_its_pressure_lasts_to_a_quarter() {
    let config = test_config(
        "[seal]\ngrace_ms = 1000\n[fill]\nenabled = false\n[memory]\nmax_held_mb = 1",
        &["trade"],
    );
    let mut state = State::new(&config, Arc::new(Counters::default()));
    state.begin_session(Market::Spot);
    let budget = 1024 * 1024;
    assert!(!state.memory_pressed());
    // Each of two hours holds a bit over half the budget: within it alone.
    let n_rows = 12_000;
    let next_hour = HOUR_START + MICROS_PER_HOUR;
    apply_corroborated(&mut state, SegmentId(1), trade(0, HOUR_START));
    for id in 1..n_rows {
        state.apply(Market::Spot, SegmentId(1), trade(id, HOUR_START + id));
    }
    apply_corroborated(
        &mut state,
        SegmentId(2),
        trade(n_rows, next_hour + 1_000_000),
    );
    assert!(
        state.take_spills().is_empty(),
        "one hour is within the budget"
    );
    assert!(!state.memory_pressed());
    let jobs = seals(&mut state);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let sealing = jobs[0].rows.heap_bytes();
    assert!(
        sealing > budget / 2 && sealing < budget,
        "{sealing} bytes being written"
    );

    for id in n_rows + 1..2 * n_rows {
        state.apply(
            Market::Spot,
            SegmentId(2),
            trade(id, next_hour + 1_000_000 + id),
        );
    }
    let spills = state.take_spills();
    assert_eq!(
        spills.iter().map(|spill| spill.hour).collect::<Vec<_>>(),
        [Hour::containing(next_hour)],
        "the open hour makes room for the rows being written"
    );
    assert!(
        state.memory_pressed(),
        "past the budget: one seal at a time"
    );

    // Once the file is on disk its rows are not held: the next hour alone
    // is within the budget again.
    state.seal_finished(&key(StreamKind::Trade), Hour::containing(HOUR_START));
    for id in 2 * n_rows..2 * n_rows + 4_096 {
        state.apply(
            Market::Spot,
            SegmentId(2),
            trade(id, next_hour + 1_000_000 + id),
        );
    }
    assert!(state.take_spills().is_empty());
    assert!(
        !state.memory_pressed(),
        "a quarter of the budget held: seals run side by side again"
    );
    for id in 2 * n_rows + 4_096..3 * n_rows {
        state.apply(
            Market::Spot,
            SegmentId(2),
            trade(id, next_hour + 1_000_000 + id),
        );
    }
    assert!(
        state.take_spills().is_empty(),
        "the next hour alone is within the budget"
    );
    assert!(!state.memory_pressed(), "within the budget: no pressure");
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

/// What the per-stream metrics and `/health` read: each configured stream
/// seen since the last call, once, with its rows (a rejected row counts, a
/// kline update does not) and its newest event time; an unconfigured
/// stream is not among them, and a second call finds nothing new.
#[test]
fn the_streams_seen_are_taken_once_with_their_rows_and_newest_event() {
    let mut state = new_state();
    assert!(state.take_seen().is_empty());
    state.apply(Market::Spot, SegmentId(1), trade(1, HOUR_START + 100));
    state.apply(Market::Spot, SegmentId(1), kline_update(HOUR_START + 200));
    state.apply(
        Market::Spot,
        SegmentId(1),
        trade(2, HOUR_START + 5 * MICROS_PER_HOUR),
    );
    state.apply(Market::Spot, SegmentId(1), trade(3, HOUR_START + 150));
    let unconfigured = match trade(4, HOUR_START + 160) {
        Decoded::Row {
            row, event_time, ..
        } => Decoded::Row {
            key: StreamKey {
                symbol: Symbol::new("ETHUSDT").expect("valid"),
                ..key(StreamKind::Trade)
            },
            row,
            event_time,
        },
        other => other,
    };
    state.apply(Market::Spot, SegmentId(1), unconfigured);
    assert_eq!(state.take_rejected().len(), 1, "the row 5 hours ahead");
    let mut seen = state.take_seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            (key(StreamKind::Trade), 3, HOUR_START + 5 * MICROS_PER_HOUR),
            (
                key(StreamKind::Kline(crate::domain::KlineInterval::Minute1)),
                0,
                HOUR_START + 200
            ),
        ]
    );
    assert!(state.take_seen().is_empty());
    state.apply(Market::Spot, SegmentId(1), trade(5, HOUR_START + 170));
    assert_eq!(
        state.take_seen(),
        [(key(StreamKind::Trade), 1, HOUR_START + 170)]
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
    let with_times = |id: i64, trade_time: TimeUs, event_time: TimeUs| match trade(id, trade_time) {
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

/// The holes `key`'s sealed `hour` declares and retries.
fn declared_unfilled<'a>(state: &'a State, key: &StreamKey, hour: Hour) -> &'a [UnfilledRange] {
    let declared = state.streams[key].hours[&hour]
        .declared
        .as_ref()
        .expect("the hour has declared holes");
    &declared.unfilled
}

#[test]
fn declared_ranges_read_from_a_footer_are_kept_within_their_hour() {
    let mut state = filling_state("");
    let key = key(StreamKind::Trade);
    let hour = Hour::containing(HOUR_START);
    state.declare_sealed_holes(&key, hour, vec![ids_5_to_6(0, i64::MAX)]);
    let declared = &declared_unfilled(&state, &key, hour)[0];
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
    within.declare_sealed_holes(&key, hour, declared_unfilled(&state, &key, hour).to_vec());
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

/// The holes a seal job declares: ids and reason.
fn declared_of(job: &SealJob) -> Vec<(Option<i64>, Option<i64>, &str)> {
    job.unfilled
        .as_ref()
        .expect("a list")
        .iter()
        .map(|range| (range.from, range.to, range.reason.as_str()))
        .collect()
}

fn only_seal(jobs: Vec<Job>) -> SealJob {
    match <[Job; 1]>::try_from(jobs) {
        Ok([Job::Seal(job)]) => job,
        Ok(other) => panic!("expected one seal job: {other:?}"),
        Err(jobs) => panic!("expected one seal job: {jobs:?}"),
    }
}

/// A BTCUSDT trade stream with ids 7 and 10 in the hour (8 and 9
/// missing, and its start unseen) and 11 after it, the clock at the
/// hour's end + 2 s.
fn state_missing_8_and_9() -> State {
    let mut state = filling_state("");
    apply_corroborated(&mut state, SegmentId(1), trade(7, HOUR_START + 100));
    apply_corroborated(&mut state, SegmentId(1), trade(10, HOUR_START + 900));
    apply_corroborated(
        &mut state,
        SegmentId(1),
        trade(11, HOUR_START + MICROS_PER_HOUR + 2_000_000),
    );
    state
}

/// `job`'s round settles the hour's start (no trade before 7) and fails
/// for the rest with `failure`.
fn settle_start_and_fail(state: &mut State, job: &FillJob, failure: &str) {
    let start = Settled {
        from: None,
        to: Some(6),
    };
    state.apply_fill(
        SegmentId(2),
        report(job, vec![], vec![start], Some(failure)),
        0,
    );
}

/// `retry`'s round finds trades 8 and 9.
fn fill_8_and_9(state: &mut State, retry: &FillJob, now: MonoMs) {
    let rows = vec![
        rest_trade(8, HOUR_START + 200),
        rest_trade(9, HOUR_START + 300),
    ];
    let settled = Settled {
        from: Some(8),
        to: Some(9),
    };
    state.apply_fill(SegmentId(4), report(retry, rows, vec![settled], None), now);
}

#[test]
fn holes_are_filled_through_a_report_before_the_hour_seals() {
    let mut state = state_missing_8_and_9();
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

/// A round stopped at its row cap answers part of a hole and settles and
/// fails nothing: the next round starts at once, for what its rows left.
#[test]
fn a_round_stopped_at_its_row_cap_is_followed_at_once_by_one_for_the_rest() {
    let mut state = state_missing_8_and_9();
    let job = only_fill(state.plan(10, 0));
    let capped = report(&job, vec![rest_trade(8, HOUR_START + 200)], vec![], None);
    state.apply_fill(SegmentId(2), capped, 10);
    let next = only_fill(state.plan(10, 10));
    let bounds: Vec<_> = next.holes.iter().map(Hole::key_bounds).collect();
    assert_eq!(bounds, vec![(None, Some(6)), (Some(9), Some(9))]);
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

/// 8 and 9 are missing; every round fails until the hour seals with them
/// declared, then the declared retry starts: the state and that retry.
fn declared_8_and_9_retried() -> (State, FillJob) {
    let mut state = state_missing_8_and_9();
    let job = only_fill(state.plan(10, 0));
    let failure = "rest unreachable: HTTP 503";
    settle_start_and_fail(&mut state, &job, failure);
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
    (state, retry)
}

#[test]
fn failed_fills_retry_with_backoff_then_seal_declared_at_the_deadline_and_reseal_when_filled() {
    let (mut state, retry) = declared_8_and_9_retried();
    fill_8_and_9(&mut state, &retry, 40_000);
    let resealed = only_seal(state.plan(10, 40_000));
    assert!(resealed.late);
    assert_eq!(keys_of(&resealed), vec![8, 9]);
    assert_eq!(resealed.unfilled, Some(vec![]));
    assert_eq!(state.n_declared_hours(), 0);
    assert_eq!(state.counters.snapshot().holes_filled_late, 1);
}

/// A declared retry that fetched more rows than one WAL record holds is
/// applied part by part, each part answering for its own keys: none of the
/// rows fetched is declared "not served". (Before, the last part carried
/// every settled range but only its own rows, so the ids of the leading
/// parts were declared as ids the exchange does not have.)
#[test]
fn a_declared_retry_cut_into_parts_declares_none_of_its_rows_not_served() {
    let (mut state, retry) = declared_8_and_9_retried();
    let rows = vec![
        rest_trade(9, HOUR_START + 300),
        rest_trade(8, HOUR_START + 200),
    ];
    let settled = Settled {
        from: Some(8),
        to: Some(9),
    };
    let parts = report(&retry, rows, vec![settled], None).into_parts(1);
    assert_eq!(parts.len(), 2);
    for part in parts {
        state.apply_fill(SegmentId(4), part, 40_000);
    }
    let resealed = only_seal(state.plan(10, 40_000));
    assert_eq!(keys_of(&resealed), vec![8, 9]);
    assert_eq!(resealed.unfilled, Some(vec![]));
    assert_eq!(state.n_declared_hours(), 0);
}

/// A declared retry stopped at its row cap answered its hole up to the
/// last row fetched: the hole shrinks to the rest, which is asked for at
/// once, not after `declared_retry_secs`. A retry that answers nothing
/// waits as before.
#[test]
fn a_declared_retry_stopped_at_its_row_cap_shrinks_the_hole_and_the_rest_goes_at_once() {
    let (mut state, retry) = declared_8_and_9_retried();
    let prefix = Settled {
        from: Some(8),
        to: Some(8),
    };
    state.apply_fill(
        SegmentId(4),
        report(
            &retry,
            vec![rest_trade(8, HOUR_START + 200)],
            vec![prefix],
            None,
        ),
        40_000,
    );
    // The hour is resealed with what came, then the rest is asked for
    // with no exchange time passed.
    let resealed = only_seal(state.plan(10, 40_000));
    assert_eq!(keys_of(&resealed), vec![8]);
    let unfilled = resealed.unfilled.clone().expect("a list");
    assert_eq!(
        (unfilled[0].from, unfilled[0].to, unfilled[0].from_time),
        (Some(9), Some(9), HOUR_START + 200),
        "the rest starts after 8, at its time"
    );
    state.seal_finished(&resealed.key, resealed.hour);
    let rest = only_fill(state.plan(10, 40_000));
    assert!(rest.declared);
    assert_eq!(
        rest.holes.iter().map(Hole::key_bounds).collect::<Vec<_>>(),
        vec![(Some(9), Some(9))]
    );
    // This time REST is down: the next retry waits declared_retry_secs.
    state.apply_fill(
        SegmentId(5),
        report(&rest, vec![], vec![], Some("rest unreachable: HTTP 503")),
        40_000,
    );
    assert!(state
        .plan(10, 40_000)
        .iter()
        .all(|job| !matches!(job, Job::Fill(_))));
}

/// A declared hole open at its start (the stream began mid-hour and
/// nothing was known before it) is answered in two parts: nothing in the
/// hour before the first id found by time, then the ids fetched from it.
/// Together they fill it; before they were judged one by one, and such a
/// hole was retried every `declared_retry_secs` for ever, each retry
/// paging the whole hour again from REST.
#[test]
fn a_declared_hole_open_at_its_start_is_filled_by_both_parts_of_its_answer() {
    let hour = Hour::containing(HOUR_START);
    let hole = UnfilledRange {
        from: None,
        to: Some(19),
        from_time: HOUR_START,
        to_time: HOUR_START + 900,
        reason: REASON_REST_BEHIND.to_owned(),
    };
    let settled = [
        Settled {
            from: None,
            to: Some(9),
        },
        Settled {
            from: Some(10),
            to: Some(19),
        },
    ];
    let every: Vec<Row> = (10..=19)
        .map(|id| rest_trade(id, HOUR_START + id))
        .collect();
    let revise = |settled: &[Settled], rows: &[Row]| {
        revise_declared(
            StreamKind::Trade,
            hour,
            std::slice::from_ref(&hole),
            settled,
            rows,
            Some("HTTP 503"),
        )
        .into_iter()
        .map(|range| (range.from, range.to, range.reason))
        .collect::<Vec<_>>()
    };
    assert_eq!(revise(&settled, &every), vec![]);
    let without_15: Vec<Row> = every
        .iter()
        .filter(|row| row.key() != 15)
        .cloned()
        .collect();
    assert_eq!(
        revise(&settled, &without_15),
        vec![(Some(15), Some(15), REASON_NOT_SERVED.to_owned())],
        "an id inside the fetched part that REST does not serve is declared so"
    );
    assert_eq!(
        revise(&settled[..1], &[]),
        vec![(Some(10), Some(19), "HTTP 503".to_owned())],
        "one part alone does not fill it, but names where the rest starts"
    );
    assert_eq!(
        revise(&settled[1..], &every),
        vec![(None, Some(19), "HTTP 503".to_owned())],
        "the hour's start before id 10 is not answered for"
    );
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
    assert_eq!(
        declared_of(&sealed),
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
        declared_of(&sealed),
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
    assert_eq!(
        declared_of(&sealed),
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
    let mut state = state_missing_8_and_9();
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

/// A report cut into parts is cut in key order, and each part carries the
/// settled ranges over its own keys: from the key after the previous
/// part's last row to its own last row (the first and last parts reach
/// out to the open ends).
#[test]
fn a_report_cut_into_parts_cuts_its_settled_ranges_at_the_parts_keys() {
    let job = FillJob {
        key: key(StreamKind::Trade),
        hour: Hour::containing(HOUR_START),
        holes: vec![],
        closed_before: HOUR_START,
        declared: true,
        deadline: None,
    };
    let rows: Vec<Row> = [20, 9, 8, 13, 12, 11, 10, 14, 15, 16, 17, 18, 19]
        .into_iter()
        .map(|id| rest_trade(id, HOUR_START + id))
        .collect();
    let range = |from: Option<i64>, to: Option<i64>| Settled { from, to };
    let settled = vec![
        range(None, Some(6)),
        range(Some(8), Some(20)),
        range(Some(21), None),
    ];
    let parts = report(&job, rows, settled, Some("x")).into_parts(5);
    let cut: Vec<(Vec<i64>, Vec<Settled>, bool)> = parts
        .iter()
        .map(|part| {
            (
                part.rows.iter().map(Row::key).collect(),
                part.settled.clone(),
                part.failure.is_some(),
            )
        })
        .collect();
    assert_eq!(
        cut,
        vec![
            (
                vec![8, 9, 10, 11, 12],
                vec![range(None, Some(6)), range(Some(8), Some(12))],
                false
            ),
            (
                vec![13, 14, 15, 16, 17],
                vec![range(Some(13), Some(17))],
                false
            ),
            (
                vec![18, 19, 20],
                vec![range(Some(18), Some(20)), range(Some(21), None)],
                true
            ),
        ]
    );
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

/// A retryable declared range: its ids and its start time.
type OpenRange = (Option<i64>, Option<i64>, TimeUs);

/// The ids a declared list names as not served, and its retryable ranges.
fn not_served_and_open(list: &[UnfilledRange]) -> (Vec<i64>, Vec<OpenRange>) {
    let not_served = list
        .iter()
        .filter(|range| !range.is_retryable())
        .flat_map(|range| range.from.unwrap_or(0)..=range.to.unwrap_or(-1))
        .collect();
    let open = list
        .iter()
        .filter(|range| range.is_retryable())
        .map(|range| (range.from, range.to, range.from_time))
        .collect();
    (not_served, open)
}

proptest::proptest! {
    /// A declared retry's report revises the declared list the same way
    /// whole or cut into WAL-record parts applied one by one: the same ids
    /// not served, the same rest left open, whether REST answered the whole
    /// hole or (stopped at its row cap) a prefix of it.
    #[test]
    fn a_declared_list_is_revised_the_same_by_a_report_whole_or_in_parts(
        served in proptest::collection::btree_set(1i64..=60, 1..60),
        through in 1i64..=60,
        max_rows in 1usize..8,
    ) {
        let hour = Hour::containing(HOUR_START);
        let hole = UnfilledRange {
            from: Some(1),
            to: Some(60),
            from_time: HOUR_START,
            to_time: HOUR_START + 1_000,
            reason: "rest unreachable: HTTP 503".to_owned(),
        };
        let job = FillJob {
            key: key(StreamKind::Trade),
            hour,
            holes: vec![],
            closed_before: HOUR_START,
            declared: true,
            deadline: None,
        };
        let rows: Vec<Row> = served
            .iter()
            .filter(|id| **id <= through)
            .rev()
            .map(|id| rest_trade(*id, HOUR_START + id))
            .collect();
        let settled = vec![Settled { from: Some(1), to: Some(through) }];
        let revise = |list: &[UnfilledRange], part: &FillReport| {
            revise_declared(StreamKind::Trade, hour, list, &part.settled, &part.rows, part.failure.as_deref())
        };
        let whole = report(&job, rows, settled, None);
        let at_once = revise(std::slice::from_ref(&hole), &whole);
        let mut in_parts = vec![hole];
        for part in whole.into_parts(max_rows) {
            in_parts = revise(&in_parts, &part);
        }
        proptest::prop_assert_eq!(not_served_and_open(&at_once), not_served_and_open(&in_parts));
    }

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

#[test]
fn an_hours_entry_goes_once_it_is_sealed_its_seal_finished_and_no_declared_hole_is_left() {
    let mut state = state_missing_8_and_9();
    let key = key(StreamKind::Trade);
    let hour = Hour::containing(HOUR_START);
    // The fill round settles the hour's start and fails for 8..=9; the
    // deadline seals the hour with them declared.
    let job = only_fill(state.plan(10, 0));
    settle_start_and_fail(&mut state, &job, "rest unreachable");
    apply_corroborated(
        &mut state,
        SegmentId(3),
        trade(12, HOUR_START + MICROS_PER_HOUR + 62_000_000),
    );
    let sealed = only_seal(state.plan(10, 2000));
    assert_eq!(sealed.hour, hour);
    state.seal_finished(&sealed.key, sealed.hour);
    assert!(
        state.streams[&key].hours.contains_key(&hour),
        "its declared holes are still retried"
    );

    // The retry fills them: the hour is resealed with no hole, then nothing
    // is left of it.
    clock_to(&mut state, 13, HOUR_START + MICROS_PER_HOUR + 92_000_000);
    let retry = only_fill(state.plan(10, 2000));
    fill_8_and_9(&mut state, &retry, 40_000);
    let resealed = only_seal(state.plan(10, 40_000));
    assert_eq!(
        (resealed.hour, resealed.unfilled.clone()),
        (hour, Some(vec![]))
    );
    assert!(state.streams[&key].hours[&hour].is_writing());
    state.seal_finished(&resealed.key, resealed.hour);
    assert!(
        !state.streams[&key].hours.contains_key(&hour),
        "nothing is left of the hour: {:?}",
        state.streams[&key].hours.get(&hour)
    );
    assert!(state.streams[&key]
        .hours
        .values()
        .all(|state| !state.is_empty()));
}

#[test]
fn ninety_days_of_sealed_hours_leave_no_entry_behind() {
    let mut state = new_state();
    let n_hours = 90 * 24;
    for n_hour in 0..n_hours {
        let time = HOUR_START + n_hour * MICROS_PER_HOUR + 10 * MICROS_PER_MINUTE;
        apply_corroborated(&mut state, SegmentId(1), trade(n_hour + 1, time));
        for job in seals(&mut state) {
            state.seal_finished(&job.key, job.hour);
        }
    }
    for (key, stream) in &state.streams {
        let hours: Vec<Hour> = stream.hours.keys().copied().collect();
        assert!(
            hours.len() <= 1,
            "{key} holds only the hour being recorded: {hours:?}"
        );
    }
}

#[test]
fn a_fill_in_flight_is_forgotten_when_the_files_on_disk_move_the_stream_past_its_hour() {
    let (mut state, job) = state_with_a_round_in_flight();
    assert_eq!(state.n_hours_waiting_on_fill(), 1);
    // An earlier process sealed that hour (its file is on disk): the
    // round's hour is behind the stream's cursor now.
    state.resume_after_sealed(&job.key, job.hour, Some(20));
    assert_eq!(state.n_hours_waiting_on_fill(), 0);
    let stream = &state.streams[&job.key];
    assert!(
        stream
            .hours
            .get(&job.hour)
            .is_none_or(|hour_state| hour_state.fill.is_none()),
        "no fill status is left for a hour no verdict reads again"
    );
    // Its report, when it comes, changes nothing.
    state.apply_fill(SegmentId(2), report(&job, vec![], vec![], None), 0);
    assert_eq!(state.n_hours_waiting_on_fill(), 0);
}

/// An orderly stop mid-hour (`State::stop_seals`): the unfinished hour is
/// written with its rows, the gap between them declared as not filled
/// because of the stop, the coverage from the first event to the stop (the
/// unseen start and the time after the last trade are left to it, not
/// declared), and the mark.
#[test]
fn an_orderly_stop_writes_each_unfinished_hour_up_to_the_stop() {
    let mut state = filling_state("");
    let start = HOUR_START + 10 * MICROS_PER_MINUTE;
    apply_corroborated(&mut state, SegmentId(1), trade(7, start));
    // 8 and 9 missing: a hole a fill round would have asked REST for.
    apply_corroborated(&mut state, SegmentId(1), trade(10, start + 1_000));
    let stop = start + 20 * MICROS_PER_MINUTE;
    clock_sample_of_silence(&mut state, stop);
    state.end_session(Market::Spot, Some(stop));
    let jobs = state.stop_seals(0);
    let [job] = <[SealJob; 1]>::try_from(jobs).expect("one unfinished hour");
    assert_eq!(job.hour, Hour::containing(HOUR_START));
    assert_eq!(job.stopped_at, Some(stop));
    assert_eq!(keys_of(&job), vec![7, 10]);
    assert_eq!(declared_of(&job), vec![(Some(8), Some(9), REASON_STOPPED)]);
    assert_eq!((job.coverage_from, job.coverage_to), (start, stop + 1));
}

/// An orderly stop while a kline of hours runs (`kline_4h` opened at
/// 00:00, stopped at 02:30): each hour watched up to the stop has its file
/// (docs/DATASET.md: the hours a recorder is stopped in get theirs),
/// marked, without a row, vouching for nothing (the running kline had not
/// closed, and no other opens before the stop). Before, the running kline
/// left all three without a file.
#[test]
fn an_orderly_stop_inside_a_kline_of_hours_writes_each_hour_watched() {
    let config = test_config(
        "[seal]\ngrace_ms = 1000\n[fill]\nenabled = false",
        &["kline_4h"],
    );
    let mut state = State::new(&config, Arc::new(Counters::default()));
    state.begin_session(Market::Spot);
    clock_sample_of_silence(&mut state, HOUR_START + 10 * MICROS_PER_MINUTE);
    let stop = HOUR_START + 2 * MICROS_PER_HOUR + 30 * MICROS_PER_MINUTE;
    clock_sample_of_silence(&mut state, stop);
    assert!(
        seals(&mut state).is_empty(),
        "the kline runs: nothing seals"
    );
    state.end_session(Market::Spot, Some(stop));
    let jobs = state.stop_seals(0);
    let hours: Vec<Hour> = jobs.iter().map(|job| job.hour).collect();
    let watched: Vec<Hour> = (0..3)
        .map(|n| Hour::containing(HOUR_START + n * MICROS_PER_HOUR))
        .collect();
    assert_eq!(hours, watched);
    for job in &jobs {
        assert_eq!(job.stopped_at, Some(stop), "{:?}", job.hour);
        assert!(job.rows.is_empty(), "{:?}", job.hour);
        assert_eq!(job.coverage_to, job.coverage_from, "{:?}", job.hour);
        assert_eq!(job.unfilled.as_deref(), Some(&[][..]), "{:?}", job.hour);
    }
}

/// After a long stop the last sealed id is months old: the live ids have
/// grown with the days between, and are believed (before, every row was
/// quarantined for good: none was held to move the reference on). A leap
/// past a day's bound from a recent hour is still refused.
#[test]
fn the_id_jump_bound_grows_with_the_days_since_the_last_sealed_id() {
    let months_ago = Hour::containing(HOUR_START - 300 * MICROS_PER_DAY);
    let mut state = new_state();
    state.resume_after_sealed(&key(StreamKind::Trade), months_ago, Some(1_000));
    // Five billion ids in 300 days: more than one day's bound (10^9).
    apply_corroborated(
        &mut state,
        SegmentId(1),
        trade(5_000_001_000, HOUR_START + 100),
    );
    assert!(state.take_rejected().is_empty());
    assert_eq!(state.n_unsealed_rows(), 1);

    let mut state = new_state();
    let last_hour = Hour::containing(HOUR_START - MICROS_PER_HOUR);
    state.resume_after_sealed(&key(StreamKind::Trade), last_hour, Some(1_000));
    apply_corroborated(
        &mut state,
        SegmentId(1),
        trade(5_000_001_000, HOUR_START + 100),
    );
    let reasons: Vec<String> = state
        .take_rejected()
        .into_iter()
        .map(|frame| frame.error)
        .collect();
    assert!(
        reasons.len() == 1 && reasons[0].contains("clock.max_id_jump"),
        "{reasons:?}"
    );
}
