//! Faults of the data directory (issue 11): the Parquet write of an hour
//! fails (a full disk, then an I/O error) or panics, through the
//! `SealFaults` seam of `run_with_seams`. The seal is retried with the job
//! as it was judged: a file with declared holes keeps exactly those holes,
//! an empty hour still gets its file, a panicking seal ends with the file
//! equal to the truth, and the counters say what happened.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binance_recorder::domain::{Hour, KlineInterval, StreamKey, StreamKind, MICROS_PER_MINUTE};
use binance_recorder::recorder::{SealFault, SealFaults, Seams};
use fake_binance::{FakeExchange, Fault};

use crate::gap_fill::{
    assert_file_matches_truth_with_rest_allowing_missing, runs, skipped_keys, unfilled_of,
};
use crate::support::*;

/// EIO on Linux: what a failing disk answers.
const EIO: i32 = 5;

/// Seal faults a test arms per (stream, hour), and every seal attempt seen.
#[derive(Default)]
struct SealFaultPlan {
    armed: BTreeMap<(StreamKey, Hour), VecDeque<SealFault>>,
    attempts: BTreeMap<(StreamKey, Hour), Vec<Option<SealFault>>>,
}

impl SealFaultPlan {
    fn arm(plan: &Mutex<SealFaultPlan>, key: StreamKey, hour: Hour, faults: &[SealFault]) {
        plan.lock()
            .expect("not poisoned")
            .armed
            .entry((key, hour))
            .or_default()
            .extend(faults);
    }

    fn attempts(
        plan: &Mutex<SealFaultPlan>,
        key: &StreamKey,
        hour: Hour,
    ) -> Vec<Option<SealFault>> {
        plan.lock()
            .expect("not poisoned")
            .attempts
            .get(&(key.clone(), hour))
            .cloned()
            .unwrap_or_default()
    }

    /// The seam: each seal takes the next fault armed for its stream-hour.
    fn seam(plan: &Arc<Mutex<SealFaultPlan>>) -> SealFaults {
        let plan = plan.clone();
        Arc::new(move |key: &StreamKey, hour: Hour| {
            let mut plan = plan.lock().expect("not poisoned");
            let fault = plan
                .armed
                .get_mut(&(key.clone(), hour))
                .and_then(VecDeque::pop_front);
            plan.attempts
                .entry((key.clone(), hour))
                .or_default()
                .push(fault);
            fault
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_panicking_seals_are_retried_with_their_holes_and_empty_hours_get_files() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    // One symbol; kline_2h has no kline opening in hour 01, so that hour
    // is sealed empty.
    let two_hour_klines = StreamKind::Kline(KlineInterval::Hour2);
    let streams = ["trade", "aggTrade", "kline_1m", "kline_2h"];
    let kinds = [
        StreamKind::Trade,
        StreamKind::AggTrade,
        minute_klines(),
        two_hour_klines,
    ];
    let fill = "max_attempts = 2\nretry_initial_ms = 100\nretry_max_ms = 200\ndeadline_secs = 60\ndeclared_retry_secs = 604800";
    let config = format!(
        "[connection]\ndead_after_ms = 1500\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n[fill]\n{fill}\n{}",
        recorder_toml(&fake, root, &["BTCUSDT"], &streams)
    );
    let first_hour = Hour::containing(SIM_START_US);
    let hour = first_hour.next();
    let trade = key("BTCUSDT", StreamKind::Trade);
    let empty = key("BTCUSDT", two_hour_klines);

    let plan: Arc<Mutex<SealFaultPlan>> = Arc::default();
    // (c) The first seal of hour 00's trades panics.
    SealFaultPlan::arm(&plan, trade.clone(), first_hour, &[SealFault::Panic]);
    // (b) The empty hour's first seal finds the disk full.
    SealFaultPlan::arm(
        &plan,
        empty.clone(),
        hour,
        &[SealFault::Io(std::io::ErrorKind::StorageFull)],
    );
    let seams = Seams {
        seal_faults: Some(SealFaultPlan::seam(&plan)),
        ..Seams::default()
    };
    let test_start = std::time::Instant::now();
    let recorder = RunningRecorder::start_with_seams(&config, seams);
    let counters = recorder.counters.clone();

    // Hour 00 sealed (its start from REST; kline_2h waits for 02:00), the
    // panicking seal included, before REST goes down.
    let early_files: Vec<_> = kinds[..3]
        .iter()
        .map(|kind| file_path(root, &key("BTCUSDT", *kind), first_hour))
        .collect();
    wait_until(Duration::from_secs(60), "hour 00 sealed", || {
        early_files.iter().all(|path| is_sealed(path))
    })
    .await;
    assert!(
        fake.sim_now_us() < hour.start() + 50 * MICROS_PER_MINUTE,
        "time left in hour 01 for the holes"
    );

    // (a) REST down, events lost mid-hour: hour 01 is sealed with declared
    // holes. Its write finds the disk full, then fails with EIO.
    fake.inject(Fault::RestStatus {
        status: 503,
        count: 1_000_000,
    });
    fake.inject(Fault::SkipEvents { count: 30 });
    wait_until(Duration::from_secs(30), "the events skipped", || {
        fake.counters().events_skipped == 30
    })
    .await;
    let truth_so_far = fake.ground_truth("BTCUSDT", hour.end());
    let holed_kind = [StreamKind::Trade, StreamKind::AggTrade]
        .into_iter()
        .find(|kind| !skipped_keys(&fake, &truth_so_far, "BTCUSDT", *kind, hour).is_empty())
        .expect("30 skipped events hit trades or aggTrades");
    let holed = key("BTCUSDT", holed_kind);
    let eio = std::io::Error::from_raw_os_error(EIO).kind();
    SealFaultPlan::arm(
        &plan,
        holed.clone(),
        hour,
        &[
            SealFault::Io(std::io::ErrorKind::StorageFull),
            SealFault::Io(eio),
        ],
    );

    let mut files: Vec<(StreamKind, Hour, std::path::PathBuf)> = Vec::new();
    for each_hour in [first_hour, hour] {
        for kind in kinds {
            files.push((
                kind,
                each_hour,
                file_path(root, &key("BTCUSDT", kind), each_hour),
            ));
        }
    }
    wait_until(
        Duration::from_secs(60),
        "every file of both hours sealed",
        || files.iter().all(|(_, _, path)| is_sealed(path)),
    )
    .await;
    recorder.stop().await;
    let counters = counters.snapshot();
    let truth = fake.ground_truth("BTCUSDT", hour.next().end() + MICROS_PER_MINUTE);
    eprintln!(
        "seal faults run: {:?} real; {counters:?}",
        test_start.elapsed()
    );

    // Every fault fired once, then the retry wrote the file.
    assert_eq!(
        SealFaultPlan::attempts(&plan, &trade, first_hour),
        vec![Some(SealFault::Panic), None]
    );
    assert_eq!(
        SealFaultPlan::attempts(&plan, &empty, hour),
        vec![Some(SealFault::Io(std::io::ErrorKind::StorageFull)), None]
    );
    assert_eq!(
        SealFaultPlan::attempts(&plan, &holed, hour),
        vec![
            Some(SealFault::Io(std::io::ErrorKind::StorageFull)),
            Some(SealFault::Io(eio)),
            None
        ]
    );
    assert_eq!(
        (counters.seal_failures, counters.seal_panics),
        (4, 1),
        "{counters:?}"
    );
    // The retries' pauses let hour 02's trades seal too, sometimes.
    assert!(counters.files_sealed >= files.len() as u64, "{counters:?}");

    // (a) The holes judged before the failures are the ones in the file.
    let holed_path = file_path(root, &holed, hour);
    let declared = unfilled_of(&holed_path);
    assert!(
        !declared.is_empty(),
        "{}: holes declared",
        holed_path.display()
    );
    assert_eq!(
        declared
            .iter()
            .map(|range| {
                assert!(range.reason.starts_with("rest unreachable"), "{range:?}");
                (range.from.expect("named ids"), range.to.expect("named ids"))
            })
            .collect::<Vec<_>>(),
        runs(&skipped_keys(&fake, &truth, "BTCUSDT", holed_kind, hour), 1),
        "{}: exactly the skipped keys are declared",
        holed_path.display()
    );
    let rest_keys =
        assert_file_matches_truth_with_rest_allowing_missing(&holed_path, holed_kind, &truth, hour);
    assert!(rest_keys.is_empty(), "REST was down");
    let holed_metadata = metadata(&holed_path);
    assert_eq!(
        (
            holed_metadata["coverage_from"].as_str(),
            holed_metadata["coverage_to"].as_str()
        ),
        (
            hour.start().to_string().as_str(),
            hour.end().to_string().as_str()
        )
    );

    // (b) The empty hour has its file: no rows, the whole hour vouched for.
    let empty_path = file_path(root, &empty, hour);
    assert_eq!(metadata(&empty_path)["row_count"], "0");
    assert_file_matches_truth(&empty_path, two_hour_klines, &truth, hour);
    assert_complete_hour(&empty_path, hour);

    // (c) The hour whose seal panicked equals the truth, its start from REST.
    let trade_path = file_path(root, &trade, first_hour);
    assert_file_matches_truth_with_rest(&trade_path, StreamKind::Trade, &truth, first_hour);
    assert_complete_hour(&trade_path, first_hour);

    // The files no fault touched are whole too (hour 01 may declare holes
    // where the skips hit it).
    for (kind, file_hour, path) in &files {
        if *file_hour == first_hour {
            assert_file_matches_truth_with_rest(path, *kind, &truth, *file_hour);
            assert_complete_hour(path, *file_hour);
        } else {
            assert_file_matches_truth_with_rest_allowing_missing(path, *kind, &truth, *file_hour);
        }
    }
    fake.shutdown().await;
}
