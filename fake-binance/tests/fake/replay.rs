//! Replay of real captures: byte-identical trade payloads in order, REST over
//! the replayed data, klines that keep closing after the data ends, CSVs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_binance::{FakeConfig, FakeExchange, ReplayConfig};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::support::{get, relaxed_limits, Client};

/// `../shared/data/real` beside the repository, as in CI. Its absence is a
/// failure, not a skip: the replay tests are part of the suite.
fn real_file(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/real")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: the shared data must sit beside the repository",
        path.display()
    );
    Some(path)
}

/// The `data` bytes of every `btcusdt@trade` line, in file order, read independently of the fake.
fn expected_trade_payloads(files: &[PathBuf]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        stream: Option<String>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let mut payloads = Vec::new();
    for path in files {
        let reader = BufReader::new(flate2::read::GzDecoder::new(
            std::fs::File::open(path).unwrap(),
        ));
        for line in reader.lines() {
            let line = line.unwrap();
            let json = &line[line.find(' ').unwrap() + 1..];
            let parsed: Line = serde_json::from_str(json).unwrap();
            if parsed.stream.as_deref() == Some("btcusdt@trade") {
                payloads.push(parsed.data.unwrap().get().to_owned());
            }
        }
    }
    payloads
}

fn replay_config(files: Vec<PathBuf>, speed: f64, lead_in: Duration) -> FakeConfig {
    FakeConfig {
        speed,
        limits: relaxed_limits(),
        replay: Some(ReplayConfig { files, lead_in }),
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn spot_btcusdt_capture_comes_out_byte_identical_and_in_order() {
    let (Some(first), Some(second)) = (
        real_file("ws/hftbacktest/spot_btcusdt_20240808.gz"),
        real_file("ws/hftbacktest/spot_btcusdt_20240809.gz"),
    ) else {
        return;
    };
    let files = vec![first, second];
    let expected = expected_trade_payloads(&files);
    assert_eq!(expected.len(), 19_904, "README: 9,757 + 10,147 trades");
    // About 11 minutes of data at speed 200 is under 4 s; the lead-in gives the
    // clients 2 s of real time to connect before the first event.
    let exchange = FakeExchange::start(replay_config(files, 200.0, Duration::from_secs(400)))
        .await
        .unwrap();
    assert_eq!(exchange.symbols(), vec!["BTCUSDT".to_owned()]);
    let mut combined = Client::connect(&format!(
        "{}/stream?streams=btcusdt@trade",
        exchange.ws_base_url()
    ))
    .await;
    let mut raw = Client::connect(&format!("{}/ws/btcusdt@trade", exchange.ws_base_url())).await;
    assert!(
        exchange.sim_now_us() < 1_723_161_255_342_000,
        "connected after the first event; the machine is too slow for this lead-in"
    );
    let prefix = r#"{"stream":"btcusdt@trade","data":"#;
    for (index, payload) in expected.iter().enumerate() {
        let text = combined.next_text(Duration::from_secs(20)).await;
        let data = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_else(|| panic!("not a combined trade frame: {text}"));
        assert_eq!(data, payload, "trade {index} differs");
        let raw_text = raw.next_text(Duration::from_secs(20)).await;
        assert_eq!(&raw_text, payload, "raw trade {index} differs");
    }
    // Ground truth in replay mode is the replayed data.
    let truth = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
    assert_eq!(truth.trades.len(), 19_904);
    assert_eq!(truth.trades[0].id, 3_735_683_259);
    assert_eq!(truth.trades.last().unwrap().id, 3_735_703_162);
    exchange.shutdown().await;
}

#[tokio::test]
async fn replayed_data_is_served_by_rest_and_klines_keep_closing_after_the_end() {
    let Some(file) = real_file("ws/hftbacktest/spot_ethusdt_20240809.gz") else {
        return;
    };
    // 00:00:01.550 -> 00:05:05.012 at speed 600: the data ends after about half a second.
    let exchange = FakeExchange::start(replay_config(vec![file], 600.0, Duration::ZERO))
        .await
        .unwrap();
    let mut klines =
        Client::connect(&format!("{}/ws/ethusdt@kline_1m", exchange.ws_base_url())).await;
    let mut closes = Vec::new();
    while closes.len() < 8 {
        let event: Value =
            serde_json::from_str(&klines.next_text(Duration::from_secs(20)).await).unwrap();
        if event["k"]["x"] == true {
            closes.push(event);
        }
    }
    // The data ends in minute 00:05; later minutes have no trade but still close.
    let after_end: Vec<&Value> = closes
        .iter()
        .filter(|event| event["k"]["t"].as_i64().unwrap() >= 1_723_161_960_000)
        .collect();
    assert!(!after_end.is_empty());
    for event in after_end {
        assert_eq!(event["k"]["n"], 0);
        assert_eq!(event["k"]["f"], -1);
    }
    let base = exchange.rest_base_url();
    let page = get(
        &base,
        "/api/v3/historicalTrades?symbol=ETHUSDT&fromId=1520545031&limit=3",
    )
    .await
    .json();
    assert_eq!(page[0]["id"], 1_520_545_031_i64);
    assert_eq!(page[0]["time"].as_i64().unwrap(), 1_723_161_601_550);
    let rows = get(
        &base,
        "/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime=1723161600000&limit=6",
    )
    .await
    .json();
    let counts: i64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[8].as_i64().unwrap())
        .sum();
    assert_eq!(
        counts, 8_409,
        "all replayed trades are in the 00:00-00:05 klines"
    );
    let truth = exchange.klines("ETHUSDT", "1m", exchange.sim_now_us());
    assert_eq!(
        truth.iter().map(|kline| kline.trade_count).sum::<i64>(),
        8_409
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn data_binance_vision_agg_trades_csv_replays_as_agg_trade_events() {
    let Some(file) = real_file("spot/aggTrades/BTCUSDT-aggTrades-2026-01-01.first5000rows.csv")
    else {
        return;
    };
    let exchange = FakeExchange::start(replay_config(vec![file], 100.0, Duration::from_secs(100)))
        .await
        .unwrap();
    let mut client = Client::connect(&format!(
        "{}/ws/btcusdt@aggTrade?timeUnit=MICROSECOND",
        exchange.ws_base_url()
    ))
    .await;
    let first: Value =
        serde_json::from_str(&client.next_text(Duration::from_secs(20)).await).unwrap();
    assert_eq!(first["a"], 3_800_397_495_i64);
    assert_eq!(
        first["T"], 1_767_225_600_039_409_i64,
        "µs time from the CSV"
    );
    let second: Value =
        serde_json::from_str(&client.next_text(Duration::from_secs(20)).await).unwrap();
    assert_eq!(
        second["f"].as_i64().unwrap(),
        first["l"].as_i64().unwrap() + 1
    );
    let page = get(
        &exchange.rest_base_url(),
        "/api/v3/aggTrades?symbol=BTCUSDT&fromId=3800397495&limit=2",
    )
    .await
    .json();
    assert_eq!(page[0]["T"], 1_767_225_600_039_i64);
    exchange.shutdown().await;
}

#[tokio::test]
async fn cryptofeed_capture_with_a_url_line_replays_its_agg_trades() {
    let Some(file) = real_file("ws/cryptofeed/BINANCE.ws.1.0") else {
        return;
    };
    let exchange = FakeExchange::start(replay_config(vec![file], 10.0, Duration::ZERO))
        .await
        .unwrap();
    let mut symbols = exchange.symbols();
    symbols.sort();
    assert_eq!(symbols, vec!["LRCBTC".to_owned(), "NKNUSDT".to_owned()]);
    // Wait until both aggTrades (30 s of capture at speed 10) have been published.
    crate::support::wait_until(Duration::from_secs(10), "capture fully published", || {
        exchange
            .ground_truth("NKNUSDT", exchange.sim_now_us())
            .agg_trades
            .len()
            == 1
            && exchange
                .ground_truth("LRCBTC", exchange.sim_now_us())
                .agg_trades
                .len()
                == 1
    })
    .await;
    let truth = exchange.ground_truth("NKNUSDT", exchange.sim_now_us());
    assert_eq!(truth.agg_trades[0].id, 15_683_430);
    exchange.shutdown().await;
}
