//! Poison frames (issue 11): the exchange sends, beside its real events,
//! copies that lie about their times or ids: an event time five hours
//! ahead, a trade time in 2300, a trade time of 0, an id 10^12 past the
//! newest. None of them may seal an hour early, create a file outside the
//! hours really recorded, set off REST calls, or reach a sealed file; each
//! is quarantined with its reason, and the hours equal the ground truth.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind, Symbol, MICROS_PER_MINUTE, MICROS_PER_SECOND};
use fake_binance::{FakeExchange, Fault, Lie};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const STREAMS: [&str; 3] = ["trade", "aggTrade", "kline_1m"];

/// `seal.grace_ms` of [`recorder_toml`].
const GRACE_US: i64 = 5 * MICROS_PER_SECOND;

/// 2300-01-01 00:00:00 UTC in epoch milliseconds.
const YEAR_2300_MS: i64 = 10_413_792_000_000;

const ID_JUMP: i64 = 1_000_000_000_000;

fn kinds() -> [StreamKind; 3] {
    [StreamKind::Trade, StreamKind::AggTrade, minute_klines()]
}

/// What the quarantine must say about each lie.
fn expected_reason(lie: Lie) -> &'static str {
    match lie {
        // T left alone: E lies hours after it.
        Lie::EventTimeAhead { .. } => "too far after the row time",
        Lie::TradeTimeAt { time_ms: 0 } => "before Binance existed",
        Lie::TradeTimeAt { .. } => "after its event time",
        Lie::IdJump { .. } => "clock.max_id_jump",
    }
}

/// The `implausible:` lines of the quarantine, parsed.
fn implausible_lines(quarantine: &std::path::Path) -> Vec<Value> {
    walk_files(quarantine)
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .expect("quarantine file readable")
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            line["error"]
                .as_str()
                .is_some_and(|error| error.starts_with("implausible: "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_frames_are_quarantined_and_seal_nothing_early_or_out_of_range() {
    let fake = Arc::new(
        FakeExchange::start(fake_config(240.0))
            .await
            .expect("fake starts"),
    );
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let data = root.join("data");
    let config_text = recorder_toml_patient(&fake, root, &SYMBOLS, &STREAMS);
    let config_path = root.join("config.toml");
    std::fs::write(&config_path, &config_text).expect("config written");
    // 00:59 to past 02:00: hour 00 (from 00:59, its start from REST) and
    // hour 01 are the only hours recorded.
    let first_hour = Hour::containing(SIM_START_US);
    let hour = first_hour.next();
    let mut expected: BTreeMap<PathBuf, (&str, StreamKind, Hour)> = BTreeMap::new();
    for symbol in SYMBOLS {
        for kind in kinds() {
            for each_hour in [first_hour, hour] {
                let path = file_path(root, &key(symbol, kind), each_hour);
                expected.insert(path, (symbol, kind, each_hour));
            }
        }
    }

    // Every file, with the fake's simulated time when it was first seen.
    let sightings: Arc<Mutex<BTreeMap<PathBuf, i64>>> = Arc::default();
    let stop_watching = CancellationToken::new();
    let watcher = tokio::spawn({
        let fake = fake.clone();
        let sightings = sightings.clone();
        let data = data.clone();
        let stop = stop_watching.clone();
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            while !stop.is_cancelled() {
                let now = fake.sim_now_us();
                for path in parquet_files(&data) {
                    sightings
                        .lock()
                        .expect("not poisoned")
                        .entry(path)
                        .or_insert(now);
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = ticker.tick() => {}
                }
            }
        }
    });

    let test_start = std::time::Instant::now();
    let recorder = RunningRecorder::start(&config_text);
    let stream_name = |symbol: &str, kind: StreamKind| {
        binance_recorder::binance::streams::stream_name(&Symbol::new(symbol).expect("valid"), kind)
    };
    let poisons = [
        (
            20,
            "BTCUSDT",
            StreamKind::Trade,
            Lie::EventTimeAhead { secs: 5 * 3600 },
        ),
        (
            25,
            "ETHUSDT",
            StreamKind::AggTrade,
            Lie::TradeTimeAt {
                time_ms: YEAR_2300_MS,
            },
        ),
        (
            30,
            "BNBUSDT",
            StreamKind::Trade,
            Lie::TradeTimeAt { time_ms: 0 },
        ),
        (
            35,
            "ETHUSDT",
            StreamKind::Trade,
            Lie::IdJump { by: ID_JUMP },
        ),
    ];
    wait_until(Duration::from_secs(60), "20 minutes into the hour", || {
        fake.sim_now_us() >= hour.start() + 20 * MICROS_PER_MINUTE
    })
    .await;
    let rest_before = fake.counters().rest_requests;
    let fill_rounds_before = recorder.counters().fill_rounds;
    let poisoned_at = std::time::Instant::now();
    for (minute, symbol, kind, lie) in poisons {
        wait_until(Duration::from_secs(60), "the lie's minute", || {
            fake.sim_now_us() >= hour.start() + minute * MICROS_PER_MINUTE
        })
        .await;
        fake.inject(Fault::PoisonEvents {
            lie,
            count: 1,
            stream: Some(stream_name(symbol, kind)),
        });
    }
    wait_until(Duration::from_secs(30), "every lie sent", || {
        fake.poisoned_events().len() == poisons.len()
    })
    .await;
    wait_until(
        Duration::from_secs(120),
        "every file of both hours sealed",
        || expected.keys().all(|path| is_sealed(path)),
    )
    .await;
    // Watched while recording: the stop writes its own files of the hour
    // not finished (`stopped_at`), at the stop, by design.
    stop_watching.cancel();
    watcher.await.expect("watcher ran");
    let counters = recorder.stop().await;
    let rest_after = fake.counters().rest_requests - rest_before;
    let poisoned_for = poisoned_at.elapsed();
    eprintln!(
        "poison run: {:?} real; REST requests {rest_before} before the lies, {rest_after} in the {poisoned_for:?} after; {counters:?}",
        test_start.elapsed()
    );

    // Nothing sealed before its hour ended on the exchange's clock.
    let sightings = sightings.lock().expect("not poisoned").clone();
    for (path, seen_at) in &sightings {
        let Some((_, _, file_hour)) = expected.get(path) else {
            panic!("a file outside the recorded hours: {}", path.display());
        };
        assert!(
            *seen_at >= file_hour.end() + GRACE_US,
            "{} appeared at simulated {seen_at}, before its hour ended (+ grace) at {}",
            path.display(),
            file_hour.end() + GRACE_US
        );
    }
    // Nothing in the data directory but the files of the two hours (and
    // those the stop wrote for the hour it was in, `stopped_at`: no lie
    // made them).
    let parquet: BTreeSet<PathBuf> = parquet_files(&data)
        .into_iter()
        .filter(|path| is_sealed(path))
        .collect();
    assert_eq!(
        parquet,
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "exactly the files of the hours recorded"
    );
    for path in walk_files(&data) {
        let name = path.file_name().expect("a name").to_string_lossy();
        assert!(
            expected.contains_key(&path) || name == ".binance-recorder.lock" || !is_sealed(&path),
            "unexpected file {}",
            path.display()
        );
    }

    // No REST storm: after the lies, the clock checks (one a second of
    // real time) and no fill, unless a link was lost (a loaded machine)
    // and a fill round had real holes to fill (a few requests each).
    let n_fills_after = counters.fill_rounds - fill_rounds_before;
    let links_lost = counters.disconnects > 0;
    if !links_lost {
        assert_eq!(n_fills_after, 0, "no hole after the lies: {counters:?}");
    }
    let clock_checks = poisoned_for.as_secs() + 2;
    assert!(
        rest_after <= clock_checks + 5 + 10 * n_fills_after,
        "{rest_after} REST requests in {poisoned_for:?} after the lies, {n_fills_after} fill rounds"
    );
    assert_eq!(counters.clock_check_failures, 0, "{counters:?}");

    // Each lie quarantined once, with its reason, and nothing else.
    let lines = implausible_lines(&root.join("quarantine"));
    assert_eq!(lines.len(), poisons.len(), "{lines:#?}");
    assert!(
        counters.frames_implausible >= poisons.len() as u64,
        "{counters:?}"
    );
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    let sent = fake.poisoned_events();
    for ((_, symbol, kind, lie), event) in poisons.iter().zip(&sent) {
        assert_eq!(event.lie, *lie);
        let stream = key(symbol, *kind).to_string();
        let (id_field, lying_id) = match (kind, lie) {
            (StreamKind::Trade, Lie::IdJump { by }) => ("trade_id", event.key + by),
            (StreamKind::Trade, _) => ("trade_id", event.key),
            (_, Lie::IdJump { by }) => ("agg_trade_id", event.key + by),
            _ => ("agg_trade_id", event.key),
        };
        let matching: Vec<&Value> = lines
            .iter()
            .filter_map(|line| {
                let frame: Value = serde_json::from_str(line["frame"].as_str()?).ok()?;
                (frame["stream"] == stream.as_str() && frame["row"][id_field] == lying_id)
                    .then_some(line)
            })
            .collect();
        assert_eq!(matching.len(), 1, "{lie:?} on {stream}: {lines:#?}");
        let error = matching[0]["error"].as_str().expect("error text");
        assert!(
            error.contains(expected_reason(*lie)),
            "{lie:?} on {stream}: {error}"
        );
        let frame: Value =
            serde_json::from_str(matching[0]["frame"].as_str().expect("frame text")).expect("json");
        match lie {
            Lie::EventTimeAhead { secs } => assert_eq!(
                frame["event_time"],
                event.event_time_us + *secs as i64 * MICROS_PER_SECOND
            ),
            Lie::TradeTimeAt { time_ms } => {
                assert_eq!(frame["row"]["trade_time"], time_ms * 1000)
            }
            Lie::IdJump { .. } => assert_eq!(frame["event_time"], event.event_time_us),
        }
    }

    // The hours are the truth: hour 00's start from REST, hour 01 all from
    // the stream (the lies set off no fill).
    for (path, (symbol, kind, file_hour)) in &expected {
        let truth = fake.ground_truth(symbol, hour.end() + MICROS_PER_MINUTE);
        if *file_hour == hour && !links_lost {
            assert_file_matches_truth(path, *kind, &truth, *file_hour);
        } else {
            assert_file_matches_truth_with_rest(path, *kind, &truth, *file_hour);
        }
        assert_complete_hour(path, *file_hour);
    }
    assert_verify_clean(&config_path).await;
    Arc::into_inner(fake)
        .expect("the watcher let go of the fake")
        .shutdown()
        .await;
}
