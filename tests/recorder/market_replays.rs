//! Real captures of the other markets replayed by the fake serving each
//! market (issue 15): the shared USD-M trade capture (hftbacktest) and the
//! COIN-M and Binance.US aggTrade captures (cryptofeed) land in one file
//! per hour with the values of the input.

use std::path::Path;
use std::time::Duration;

use binance_recorder::domain::{Hour, Market, Row, StreamKey, StreamKind};
use fake_binance::{FakeConfig, FakeExchange};

use crate::markets::{limits_pinging_every_2s, usdm_btcusdt_trades_toml, usdm_key, API_KEY};
use crate::support::*;

/// The fake as `market` at 600x, replaying `capture` after five minutes of
/// lead-in.
fn replay_fake_config(market: fake_binance::Market, capture: &Path) -> FakeConfig {
    FakeConfig {
        market,
        speed: 600.0,
        limits: limits_pinging_every_2s(market),
        replay: Some(fake_binance::ReplayConfig {
            files: vec![capture.to_path_buf()],
            lead_in: Duration::from_secs(5 * 60),
        }),
        ..FakeConfig::default()
    }
}

/// The shared USD-M BTCUSDT capture (hftbacktest, 2024-08-08 23:54-24:00,
/// 21,313 trades, keys `e,E,T,s,t,p,q,X,m`) replayed by the fake as USD-M,
/// recorded on `/public` into one file for hour 23: every captured trade,
/// ids consecutive, values equal to the input strings, `trade_type` from
/// `X`, no best match, times in ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usdm_btcusdt_capture_lands_in_one_file_with_its_values() {
    let capture = real_data("ws/hftbacktest/usdm_btcusdt_20240808.gz");
    let fake = FakeExchange::start(FakeConfig {
        api_keys: vec![API_KEY.to_owned()],
        ..replay_fake_config(fake_binance::Market::UsdM, &capture)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = usdm_btcusdt_trades_toml(&fake, root);
    let recorder = RunningRecorder::start(&config);
    let hour_23 = Hour::containing(1_723_158_000_000_000);
    let path = file_path(root, &usdm_key("BTCUSDT", StreamKind::Trade), hour_23);
    wait_until(Duration::from_secs(120), "hour 23 sealed", || path.exists()).await;
    let counters = recorder.stop().await;
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");

    let mut captured = Vec::new();
    let file = std::fs::File::open(&capture).expect("capture opens");
    for line in std::io::BufRead::lines(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    {
        let line = line.expect("capture line");
        let json = &line[line.find(' ').expect("time then JSON") + 1..];
        let value: serde_json::Value = serde_json::from_str(json).expect("JSON line");
        if value["stream"] == "btcusdt@trade" {
            captured.push(value["data"].clone());
        }
    }
    assert_eq!(captured.len(), 21_313);
    let rows =
        binance_recorder::parquet_out::read_hour_file(&path, StreamKind::Trade).expect("readable");
    assert_eq!(rows.len(), captured.len(), "{}", path.display());
    assert_eq!(metadata(&path)["unfilled"], "[]");
    for (row, data) in rows.iter().zip(&captured) {
        let Row::Trade(trade) = row else {
            panic!("trade rows only")
        };
        let id = data["t"].as_i64().expect("t");
        assert_eq!(trade.trade_id, id);
        let price = data["p"].as_str().expect("p");
        let quantity = data["q"].as_str().expect("q");
        // The input has 2 and 3 decimals; the file holds the same value.
        assert_eq!(trade.price, price.parse().expect("price"), "price of {id}");
        assert_eq!(
            trade.quantity,
            quantity.parse().expect("quantity"),
            "quantity of {id}"
        );
        assert_eq!(trade.trade_time, data["T"].as_i64().expect("T") * 1000);
        assert_eq!(trade.trade_type.as_deref(), data["X"].as_str());
        assert_eq!(trade.is_best_match, None);
        assert_eq!(trade.is_buyer_maker, data["m"].as_bool().expect("m"));
    }
    fake.shutdown().await;
}

/// The `(a, p, q, f, l, T, m)` of every aggTrade of `stream` in a
/// cryptofeed capture (`<secs>: <combined JSON>` lines after the URL line),
/// read independently of the fake and the recorder.
fn captured_agg_trades(path: &Path, stream: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("capture readable");
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .filter_map(|(_, json)| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter(|value| value["stream"] == stream)
        .map(|value| value["data"].clone())
        .collect()
}

/// Replays `capture` on a fake of `market`, records `symbol`'s aggTrades
/// into the hour of the capture, and checks that file against the capture:
/// every aggregate, values equal to the input, best match as the market
/// sends it.
async fn replayed_agg_trades_land_in_their_hour(
    market: fake_binance::Market,
    capture: &str,
    table: &str,
    symbol: &str,
) {
    let capture = real_data(capture);
    let stream = format!("{}@aggTrade", symbol.to_ascii_lowercase());
    let captured = captured_agg_trades(&capture, &stream);
    assert!(
        captured.len() >= 10,
        "{}: {}",
        capture.display(),
        captured.len()
    );
    let fake = FakeExchange::start(replay_fake_config(market, &capture))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = recorder_toml_patient(&fake, root, &[symbol], &["aggTrade"])
        .replace("[markets.spot]", &format!("[markets.{table}]"));
    let recorder = RunningRecorder::start(&config);
    let first_time_us = captured[0]["T"].as_i64().expect("T") * 1000;
    let hour = Hour::containing(first_time_us);
    let key = StreamKey {
        market: Market::from_name(table).expect("market name"),
        ..usdm_key(symbol, StreamKind::AggTrade)
    };
    let path = file_path(root, &key, hour);
    wait_until(
        Duration::from_secs(120),
        "the capture's hour sealed",
        || path.exists(),
    )
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    assert!(
        path.to_string_lossy().contains(&format!("market={table}")),
        "{}",
        path.display()
    );
    let rows = binance_recorder::parquet_out::read_hour_file(&path, StreamKind::AggTrade)
        .expect("readable");
    assert_eq!(rows.len(), captured.len(), "{}", path.display());
    assert_eq!(metadata(&path)["unfilled"], "[]");
    for (row, data) in rows.iter().zip(&captured) {
        let Row::AggTrade(agg) = row else {
            panic!("aggTrade rows only")
        };
        let id = data["a"].as_i64().expect("a");
        assert_eq!(agg.agg_trade_id, id);
        assert_eq!(
            agg.price,
            data["p"].as_str().expect("p").parse().expect("price"),
            "{id}"
        );
        assert_eq!(
            agg.quantity,
            data["q"].as_str().expect("q").parse().expect("qty"),
            "{id}"
        );
        assert_eq!(
            (agg.first_trade_id, agg.last_trade_id),
            (
                data["f"].as_i64().expect("f"),
                data["l"].as_i64().expect("l")
            ),
            "{id}"
        );
        assert_eq!(
            agg.trade_time,
            data["T"].as_i64().expect("T") * 1000,
            "{id}"
        );
        assert_eq!(agg.is_buyer_maker, data["m"].as_bool().expect("m"), "{id}");
        assert_eq!(
            agg.is_best_match,
            data["M"].as_bool(),
            "{id}: M as sent, or none"
        );
    }
    fake.shutdown().await;
}

/// The shared COIN-M capture (cryptofeed, 2021-07-22, XRPUSD_PERP aggTrades
/// 24247030-24247044, no `M`) replayed as COIN-M lands in its hour's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinm_perpetual_capture_lands_in_its_hour_with_its_values() {
    replayed_agg_trades_land_in_their_hour(
        fake_binance::Market::CoinM,
        "ws/cryptofeed/BINANCE_DELIVERY.ws.1.0",
        "coinm",
        "XRPUSD_PERP",
    )
    .await;
}

/// The shared Binance.US capture (cryptofeed, 2021-10-12, OMGBUSD aggTrades
/// 425085-425095, with `M`) replayed as Binance.US lands in its hour's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_us_capture_lands_in_its_hour_with_its_values() {
    replayed_agg_trades_land_in_their_hour(
        fake_binance::Market::Us,
        "ws/cryptofeed/BINANCE_US.ws.1.0",
        "us",
        "OMGBUSD",
    )
    .await;
}
