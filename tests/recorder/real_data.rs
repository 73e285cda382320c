//! Real data: the shared spot BTCUSDT capture (hftbacktest, 2024-08-08/09)
//! replayed by the fake, recorded into one file per UTC hour of `T`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use binance_recorder::domain::{Hour, Row, StreamKind};
use binance_recorder::parquet_out;
use fake_binance::{FakeConfig, FakeExchange, Limits, ReplayConfig};

use crate::support::*;

/// `(id, price, quantity, T in ms)` of every BTCUSDT trade in the capture,
/// read independently of the fake and the recorder.
fn captured_trades(files: &[PathBuf]) -> Vec<(i64, String, String, i64)> {
    let mut trades = Vec::new();
    for path in files {
        let file = std::fs::File::open(path).expect("capture opens");
        for line in BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
            let line = line.expect("capture line");
            let json = &line[line.find(' ').expect("time then JSON") + 1..];
            let value: serde_json::Value = serde_json::from_str(json).expect("JSON line");
            if value["stream"] != "btcusdt@trade" {
                continue;
            }
            let data = &value["data"];
            trades.push((
                data["t"].as_i64().expect("t"),
                data["p"].as_str().expect("p").to_owned(),
                data["q"].as_str().expect("q").to_owned(),
                data["T"].as_i64().expect("T"),
            ));
        }
    }
    trades
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_btcusdt_capture_lands_in_one_file_per_hour_of_trade_time() {
    let files = vec![
        real_data("ws/hftbacktest/spot_btcusdt_20240808.gz"),
        real_data("ws/hftbacktest/spot_btcusdt_20240809.gz"),
    ];
    let fake = FakeExchange::start(FakeConfig {
        speed: 600.0,
        limits: Limits {
            ping_interval: Duration::from_secs(2),
            ..Limits::default()
        },
        replay: Some(ReplayConfig {
            files: files.clone(),
            lead_in: Duration::from_secs(20 * 60),
        }),
        ..FakeConfig::default()
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let recorder = RunningRecorder::start(&recorder_toml_patient(
        &fake,
        root,
        &["BTCUSDT"],
        &["trade", "kline_1m"],
    ));

    // 2024-08-08T23 and 2024-08-09T00.
    let hour_23 = Hour::containing(1_723_158_000_000_000);
    let hour_00 = hour_23.next();
    let trade_key = key("BTCUSDT", StreamKind::Trade);
    let path_23 = file_path(root, &trade_key, hour_23);
    let path_00 = file_path(root, &trade_key, hour_00);
    let kline_path_00 = file_path(root, &key("BTCUSDT", minute_klines()), hour_00);
    wait_until(
        Duration::from_secs(120),
        "both hours sealed (the clock runs on after the data)",
        || path_23.exists() && path_00.exists() && kline_path_00.exists(),
    )
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");

    let captured = captured_trades(&files);
    assert_eq!(captured.len(), 19_904);
    let mut recorded = Vec::new();
    for (path, hour, expected_rows, first_id, last_id) in [
        (&path_23, hour_23, 9_738, 3_735_683_259, 3_735_692_996),
        (&path_00, hour_00, 10_166, 3_735_692_997, 3_735_703_162),
    ] {
        let rows = parquet_out::read_hour_file(path, StreamKind::Trade).expect("readable");
        assert_eq!(rows.len(), expected_rows, "{}", path.display());
        let ids: Vec<i64> = rows.iter().map(Row::key).collect();
        assert_eq!(
            (ids[0], ids[ids.len() - 1]),
            (first_id, last_id),
            "{}",
            path.display()
        );
        assert!(
            ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "ids consecutive in {}",
            path.display()
        );
        assert!(
            rows.iter()
                .all(|row| Hour::containing(row.bucket_time()) == hour),
            "bucketed by T"
        );
        let metadata = metadata(path);
        assert_eq!(metadata["first_key"], first_id.to_string());
        assert_eq!(metadata["last_key"], last_id.to_string());
        recorded.extend(rows);
    }
    // The 19 trades of hour 00 that arrived before the capture's midnight.
    let late_arrivals = 3_735_692_997..=3_735_693_015;
    assert_eq!(
        recorded
            .iter()
            .filter(|row| late_arrivals.contains(&row.key()))
            .count(),
        19
    );
    for (row, (id, price, quantity, time_ms)) in recorded.iter().zip(&captured) {
        let Row::Trade(trade) = row else {
            panic!("trade rows only")
        };
        assert_eq!(trade.trade_id, *id);
        assert_eq!(
            &trade.price.to_string(),
            price,
            "price of {id} equals the input string"
        );
        assert_eq!(
            &trade.quantity.to_string(),
            quantity,
            "quantity of {id} equals the input string"
        );
        assert_eq!(trade.trade_time, time_ms * 1000, "time of {id}");
    }
    fake.shutdown().await;
}
