//! The cold start of a whole-exchange config (issue 12): 350 quiet symbols
//! × trade, aggTrade, kline_1m (1,050 streams), started a minute before an
//! hour ends, so every stream owes that hour from its start and asks REST
//! for it at once. Every file of the hour must seal within
//! `seal.grace_ms` plus `fill.deadline_secs` of the hour's end (complete,
//! or with what REST could not deliver in time declared), and the log must
//! say that hours wait on REST and why. Rounds whose weight wait reaches
//! past their deadline give up at once (the exchange clock's pace, measured,
//! turns the deadline into a host instant), so those hours seal as soon as
//! REST is known to be behind, not all in one burst at the bound. It runs
//! alone (`.config/nextest.toml`): the bound is measured in real seconds on
//! the fake's clock. Rounds still running or queued when their deadline
//! nears are cut early enough for their hours to be written by it: a tenth
//! of the window, or more when many hours wait (the time the runtime was
//! seen to take per seal, times the hours waiting). The cuts and the last
//! seal are printed against the bound, and the REST calls and weight it
//! took
//! (`scripts/bench_cold_start.sh` runs it with and without
//! `fill.agg_trade_evidence` and compares them: docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind, MICROS_PER_MINUTE, MICROS_PER_SECOND};
use fake_binance::FakeExchange;

use crate::support::*;

const N_SYMBOLS: usize = 350;
/// Simulated seconds per real second: the hour's end is 20 s away, its
/// seal deadline (5 s grace + 120 s) another 42 s. Faster, 1,050 streams'
/// kline updates (one each 2 s of exchange time) and the burst of fill
/// reports and seals at the cold start keep a debug build's loop on a
/// 2-core machine busy enough that its exchange clock lags the fake's.
const SPEED: f64 = 3.0;
const GRACE_SECS: i64 = 5;
const DEADLINE_SECS: i64 = 120;

/// The value of `name=` in a log line, as a number.
fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_a_whole_exchange_seals_every_first_hour_on_time_and_says_why_hours_wait() {
    // `COLD_START_AGG_TRADE_EVIDENCE=false` measures the run without it.
    let evidence =
        std::env::var("COLD_START_AGG_TRADE_EVIDENCE").map_or(true, |value| value != "false");
    let symbols: Vec<String> = (0..N_SYMBOLS)
        .map(|index| format!("QT{index:03}USDT"))
        .collect();
    let mut settings = fake_config(SPEED);
    settings.symbols = symbols.clone();
    // A few orders an hour per symbol: most of an exchange's symbols.
    settings.mean_orders_per_sec = 0.001;
    // Spot's weight limit (6,000 a minute of real time) at the default
    // share of 0.3: 1,800 a real minute, 600 a minute of exchange time.
    let fake = FakeExchange::start(settings).await.expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let symbol_refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let config = format!(
        "{}\n[fill]\ndeadline_secs = {DEADLINE_SECS}\nagg_trade_evidence = {evidence}\n",
        recorder_toml(
            &fake,
            root,
            &symbol_refs,
            &["trade", "aggTrade", "kline_1m"]
        )
    );
    let config_path = root.join("recorder.toml");
    std::fs::write(&config_path, &config).expect("config written");
    let log_path = root.join("recorder.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let recorder = RecorderProcess::start_with_log(
        &config_path,
        root,
        "info,binance_recorder::recorder::fill_rounds=debug",
        log,
    );

    let hour = Hour::containing(SIM_START_US);
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let files: Vec<(String, StreamKind, PathBuf)> = symbols
        .iter()
        .flat_map(|symbol| {
            kinds.iter().map(move |kind| {
                (
                    symbol.clone(),
                    *kind,
                    file_path(root, &key(symbol, *kind), hour),
                )
            })
        })
        .collect();
    let due = hour.end() + (GRACE_SECS + DEADLINE_SECS) * MICROS_PER_SECOND;
    wait_until(
        Duration::from_secs(120),
        "the first hour's seal deadline",
        || fake.sim_now_us() >= due,
    )
    .await;
    // Rounds still queued or running are cut now and their hours sealed
    // declared: 2 s of real time are allowed for writing them and for this
    // test's polling.
    let deadline_reached_at = std::time::Instant::now();
    let deadline_wall = std::time::SystemTime::now();
    let mut checks = tokio::time::interval(Duration::from_millis(100));
    while deadline_reached_at.elapsed() < Duration::from_secs(2)
        && !files.iter().all(|(_, _, path)| path.exists())
    {
        checks.tick().await;
    }
    let all_sealed_at = files
        .iter()
        .all(|(_, _, path)| path.exists())
        .then(|| fake.sim_now_us());
    let missing: Vec<String> = files
        .iter()
        .filter(|(_, _, path)| !path.exists())
        .map(|(_, _, path)| path.display().to_string())
        .collect();
    let writing_ms = deadline_reached_at.elapsed().as_millis();
    recorder.terminate().await;
    let log = std::fs::read_to_string(&log_path).expect("log readable");
    // When rounds were cut, and the last hour written, in real
    // milliseconds from the bound (negative: before it).
    let bound_ms = deadline_wall
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let from_bound = |what: &str| -> Vec<i64> {
        log.lines()
            .filter(|line| line.contains(what))
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.timestamp_millis() - bound_ms)
            .collect()
    };
    let cut_running = from_bound("fill round cut at its deadline");
    let cut_queued = from_bound("fill round still queued at its deadline");
    let sealed = from_bound("hour sealed");
    eprintln!(
        "cut: {} running, {} queued, first {:?} ms from the bound; last hour written {:?} ms from the bound",
        cut_running.len(),
        cut_queued.len(),
        cut_running.iter().chain(&cut_queued).min(),
        sealed.iter().max(),
    );
    let waits: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("hours wait on REST fill rounds"))
        .collect();
    let used = log
        .lines()
        .rfind(|line| line.contains("REST used since start"))
        .expect("REST use logged at stop");
    let rest_calls = field(used, "rest_calls").expect("rest_calls");
    let rest_weight_used = field(used, "rest_weight_used").expect("rest_weight_used");
    let holes_declared = field(used, "holes_declared").expect("holes_declared");
    let answers = field(used, "fill_answers_from_agg_trades").expect("answers");
    eprintln!(
        "cold start ({} streams, agg_trade_evidence = {evidence}): {} files not sealed {writing_ms} ms (real) after the bound ({} s of exchange time after the hour's end); rest_calls = {rest_calls}, rest_weight_used = {rest_weight_used}, holes_declared = {holes_declared}, fill_answers_from_agg_trades = {answers}; {} lines said why hours waited",
        files.len(),
        missing.len(),
        GRACE_SECS + DEADLINE_SECS,
        waits.len(),
    );
    assert!(
        waits.iter().any(|line| line.contains("why=")),
        "the log says that and why hours wait on REST"
    );
    assert!(
        missing.is_empty(),
        "files of the first hour not sealed within grace + deadline (first few): {:?}",
        &missing[..missing.len().min(5)]
    );
    let sealed_at = all_sealed_at.expect("every file sealed");
    eprintln!(
        "last file sealed {} s (exchange time) after the hour's end",
        (sealed_at - hour.end()) / MICROS_PER_SECOND
    );

    // Every file that declares nothing equals the truth: what the aggTrade
    // evidence answered is the exchange's own trades.
    let mut n_complete = 0;
    for (symbol, kind, path) in &files {
        if metadata(path)["unfilled"] != "[]" {
            continue;
        }
        let truth = fake.ground_truth(symbol, hour.end() + MICROS_PER_MINUTE);
        assert_file_matches_truth_with_rest(path, *kind, &truth, hour);
        n_complete += 1;
    }
    eprintln!(
        "{n_complete} of {} files complete and equal to the truth",
        files.len()
    );
    fake.shutdown().await;
}
