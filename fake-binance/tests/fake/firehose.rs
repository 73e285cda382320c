//! Firehose mode: pre-serialised aggTrade frames, ids contiguous per symbol,
//! bounded by a frame count and by a time limit, after the subscription is
//! answered; a connection not subscribed to every stream gets none.

use std::collections::HashMap;
use std::time::Duration;

use fake_binance::{FakeConfig, FakeExchange, FirehoseConfig};
use serde_json::Value;

use crate::support::{collect_texts, config, wait_until, Client, SIM_START_US};

const WITHIN: Duration = Duration::from_secs(20);
const STREAMS: [&str; 3] = ["btcusdt@aggTrade", "ethusdt@aggTrade", "bnbusdt@aggTrade"];

fn firehose_config(firehose: FirehoseConfig) -> FakeConfig {
    FakeConfig {
        firehose: Some(firehose),
        ..config(1.0)
    }
}

/// Checks every frame is a combined aggTrade of a subscribed stream, ids
/// and trade ids contiguous per symbol from 1, trade times `step_us` apart
/// across symbols from the simulated start, event times 1 ms later.
fn check_frames(texts: &[String], step_us: i64) {
    let mut next_by_stream: HashMap<String, (i64, i64)> = HashMap::new();
    for (index, text) in texts.iter().enumerate() {
        let frame: Value =
            serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"));
        let stream = frame["stream"].as_str().expect("combined frame").to_owned();
        assert!(STREAMS.contains(&stream.as_str()), "{text}");
        let data = &frame["data"];
        assert_eq!(data["e"], "aggTrade");
        assert_eq!(
            data["s"].as_str().unwrap().to_ascii_lowercase() + "@aggTrade",
            stream
        );
        let (next_id, next_trade_id) = next_by_stream.entry(stream).or_insert((1, 1));
        assert_eq!(data["a"].as_i64().unwrap(), *next_id, "{text}");
        assert_eq!(data["f"].as_i64().unwrap(), *next_trade_id, "{text}");
        let last_trade_id = data["l"].as_i64().unwrap();
        assert!(last_trade_id >= *next_trade_id);
        *next_id += 1;
        *next_trade_id = last_trade_id + 1;
        let trade_time = data["T"].as_i64().unwrap();
        assert_eq!(trade_time, SIM_START_US + index as i64 * step_us, "{text}");
        assert_eq!(data["E"].as_i64().unwrap(), trade_time + 1_000);
    }
}

/// The next text after the frames is the reply to a LIST_SUBSCRIPTIONS sent
/// now: nothing was sent past the bound.
async fn assert_nothing_more(client: &mut Client) {
    client
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":77}"#)
        .await;
    let reply = client.next_json(WITHIN).await;
    assert_eq!(reply["id"], 77, "a frame past the bound: {reply}");
}

#[tokio::test]
async fn firehose_sends_its_frame_count_after_the_subscription_is_answered() {
    let step_us = 1_500_000;
    let exchange = FakeExchange::start(firehose_config(FirehoseConfig {
        frames: 3_000,
        max_duration: Duration::from_secs(60),
        rate_per_sec: None,
        step_us,
    }))
    .await
    .unwrap();
    let url = format!("{}/stream?timeUnit=MICROSECOND", exchange.ws_base_url());
    // Subscribed to two streams of three: answered, never fed.
    let mut partial = Client::connect(&url).await;
    partial
        .send_text(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","ethusdt@aggTrade"],"id":1}"#,
        )
        .await;
    assert_eq!(partial.next_json(WITHIN).await["id"], 1);

    let mut client = Client::connect(&url).await;
    let subscribe = serde_json::json!({"method": "SUBSCRIBE", "params": STREAMS, "id": 2});
    client.send_text(&subscribe.to_string()).await;
    let reply = client.next_json(WITHIN).await;
    assert_eq!(reply, serde_json::json!({"result": null, "id": 2}));
    let texts = collect_texts(&mut client, 3_000, WITHIN).await;
    check_frames(&texts, step_us);
    // 3,000 frames 1.5 s apart span 75 minutes from 00:00: the hour rolls over.
    assert_nothing_more(&mut client).await;
    wait_until(WITHIN, "the firehose to finish", || {
        let counters = exchange.counters();
        counters.firehose_finished && counters.firehose_frames_sent == 3_000
    })
    .await;
    assert_nothing_more(&mut partial).await;
    exchange.shutdown().await;
}

#[tokio::test]
async fn firehose_stops_at_its_time_limit_at_the_rate_asked() {
    let exchange = FakeExchange::start(firehose_config(FirehoseConfig {
        frames: 10_000_000,
        max_duration: Duration::from_millis(300),
        rate_per_sec: Some(2_000),
        step_us: 1_000,
    }))
    .await
    .unwrap();
    let mut client = Client::connect(&format!(
        "{}/stream?streams={}&timeUnit=MICROSECOND",
        exchange.ws_base_url(),
        STREAMS.join("/")
    ))
    .await;
    wait_until(WITHIN, "the firehose to reach its time limit", || {
        exchange.counters().firehose_finished
    })
    .await;
    let n_sent = exchange.counters().firehose_frames_sent;
    // 2,000 a second for 0.3 s: about 600, never the count.
    assert!((1..=601).contains(&n_sent), "{n_sent} frames sent");
    let texts = collect_texts(&mut client, n_sent as usize, WITHIN).await;
    check_frames(&texts, 1_000);
    assert_nothing_more(&mut client).await;
    exchange.shutdown().await;
}
