//! `/metrics` and `/health` on the metrics listener, scraped during a run
//! with injected drops, skipped events and REST failures: the counters
//! agree with what the fake says it did, and `/health` turns 503 (naming
//! the silent streams) while the fake stalls, and 200 again after.

use std::time::Duration;

use fake_binance::{FakeExchange, Fault};

use crate::local_server::free_port;
use crate::support::*;

/// The value of one sample line (`name{labels} value`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

pub async fn get(url: &str) -> (u16, String) {
    binance_recorder::binance::ensure_crypto_provider();
    let response = reqwest::get(url).await.expect("listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_fake_and_health_follows_a_stall() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let port = free_port();
    let config = recorder_toml_patient(
        &fake,
        scratch.path(),
        &["BTCUSDT", "ETHUSDT"],
        &["trade", "kline_1m"],
    )
    .replace(
        "[metrics]\nlisten = \"\"",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\nstale_after_secs = 1\nquiet_stale_after_secs = 1"
        ),
    );
    assert!(config.contains(&port.to_string()));
    let recorder = RunningRecorder::start(&config);
    let base = format!("http://127.0.0.1:{port}");

    wait_until(
        Duration::from_secs(30),
        "rows on both trade streams",
        || {
            let counters = recorder.counters();
            counters.frames_durable > 50 && counters.connections >= 1
        },
    )
    .await;
    let (status, _) = get(&format!("{base}/health")).await;
    assert_eq!(status, 200, "healthy while every stream delivers");

    fake.inject(Fault::DropConnections { abort: false });
    fake.inject(Fault::SkipEvents { count: 5 });
    fake.inject(Fault::RestStatus {
        status: 503,
        count: 2,
    });
    wait_until(
        Duration::from_secs(60),
        "the drop and the skip seen",
        || {
            let counters = recorder.counters();
            counters.disconnects >= 1 && counters.holes_found >= 1 && counters.rows_filled >= 1
        },
    )
    .await;

    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let fake_counters = fake.counters();
    let counters = recorder.counters();
    assert_eq!(
        sample(&text, "binance_recorder_disconnects_total"),
        Some(counters.disconnects as f64),
        "{text}"
    );
    assert!(
        counters.disconnects >= fake_counters.ws_dropped_by_fault,
        "every connection the fake dropped was seen lost: {counters:?} {fake_counters:?}"
    );
    assert!(
        sample(&text, "binance_recorder_holes_found_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for stream in ["btcusdt@trade", "ethusdt@trade", "btcusdt@kline_1m"] {
        let series = format!("binance_recorder_rows_total{{market=\"spot\",stream=\"{stream}\"}}");
        assert!(
            sample(&text, &series).is_some_and(|n| n > 0.0) || stream.contains("kline"),
            "{series} in {text}"
        );
        let lag = format!(
            "binance_recorder_last_event_time_seconds{{market=\"spot\",stream=\"{stream}\"}}"
        );
        assert!(
            sample(&text, &lag).is_some_and(|seconds| seconds > 1.7e9),
            "{lag} in {text}"
        );
    }
    assert!(
        sample(&text, "binance_recorder_wal_fsync_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "binance_recorder_receive_to_durable_seconds_count")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE binance_recorder_wal_bytes gauge"),
        "{text}"
    );
    // The group commits' two threads count their CPU time.
    for work in ["wal_write", "decode"] {
        let series = format!("binance_recorder_cpu_seconds_total{{work=\"{work}\"}}");
        assert!(
            sample(&text, &series).is_some_and(|seconds| seconds > 0.0),
            "{series} in {text}"
        );
    }

    // Every connection silent for 4 s of real time: the trade streams (a
    // trade every 33 ms or so) are past their 1 s bound; the minute
    // klines, whose close is due a minute of real time apart, are not.
    fake.inject(Fault::Stall {
        duration_ms: 4000,
        keep_backlog: true,
    });
    let body = std::sync::Mutex::new(String::new());
    wait_until_async(
        Duration::from_secs(30),
        "503 naming BTCUSDT's trades while the streams are silent",
        || async {
            let (status, text) = get(&format!("{base}/health")).await;
            // ETHUSDT, which trades less, may be named a moment earlier.
            let named = text.contains("trade/BTCUSDT");
            *body.lock().expect("body") = text;
            status == 503 && named
        },
    )
    .await;
    let body = body.into_inner().expect("body");
    assert!(
        !body.contains("kline_1m"),
        "names the silent streams: {body}"
    );
    wait_until_async(
        Duration::from_secs(60),
        "200 again once the streams deliver",
        || async { get(&format!("{base}/health")).await.0 == 200 },
    )
    .await;

    recorder.stop().await;
    fake.shutdown().await;
}

fn status_of(config_path: &std::path::Path, json: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_binance-recorder"));
    command.args(["status", "--config"]).arg(config_path);
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("status runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `status` against the running daemon (live state, rows held, last
/// sealed hour) and against the stopped one (the directories only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_running_daemon_and_the_directories_when_stopped() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let port = free_port();
    let config = recorder_toml_patient(&fake, scratch.path(), &["BTCUSDT"], &["trade", "kline_1m"])
        .replace(
            "[metrics]\nlisten = \"\"",
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
        );
    let config_path = scratch.path().join("config.toml");
    std::fs::write(&config_path, &config).expect("config written");
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(60), "an hour sealed", || {
        recorder.counters().files_sealed >= 2
    })
    .await;
    // The seals' threads count their CPU time.
    let (_, text) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        sample(&text, "binance_recorder_cpu_seconds_total{work=\"seal\"}")
            .is_some_and(|seconds| seconds > 0.0),
        "{text}"
    );
    let running = tokio::task::spawn_blocking({
        let config_path = config_path.clone();
        move || {
            (
                status_of(&config_path, false),
                status_of(&config_path, true),
            )
        }
    })
    .await
    .expect("status task");
    let (table, json) = running;
    assert!(table.starts_with("daemon: running, 1 links up"), "{table}");
    let line = table
        .lines()
        .find(|line| line.starts_with("spot/trade/BTCUSDT"))
        .expect("a line per stream");
    assert!(
        line.contains(" live ") || line.contains(" silent "),
        "{table}"
    );
    assert!(line.contains("2026-01-01T00"), "last sealed hour: {table}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(report["daemon"], "running");
    assert_eq!(
        report["streams"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );

    recorder.stop().await;
    let table = tokio::task::spawn_blocking(move || status_of(&config_path, false))
        .await
        .expect("status task");
    assert!(table.starts_with("daemon: stopped\n"), "{table}");
    let line = table
        .lines()
        .find(|line| line.starts_with("spot/trade/BTCUSDT"))
        .expect("a line per stream");
    // The newest file is the one the stop wrote for the hour it was in
    // (the first, sealed, or the next).
    assert!(
        line.contains("stopped")
            && (line.contains("2026-01-01T01") || line.contains("2026-01-01T00")),
        "{table}"
    );
    fake.shutdown().await;
}
