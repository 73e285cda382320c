//! Faults: each kind, through `inject`, the control endpoint and chaos mode.

use std::time::Duration;

use fake_binance::{ChaosConfig, FakeConfig, FakeExchange, Fault, Lie, Market};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{collect_texts, config, get, http, wait_until, Client};

const WITHIN: Duration = Duration::from_secs(10);

fn trade_ids(texts: &[String]) -> Vec<i64> {
    texts
        .iter()
        .map(|text| {
            serde_json::from_str::<Value>(text).expect("json")["t"]
                .as_i64()
                .expect("trade id")
        })
        .collect()
}

async fn trade_client(exchange: &FakeExchange) -> Client {
    let mut client = Client::connect(&format!("{}/ws/btcusdt@trade", exchange.ws_base_url())).await;
    // Make sure the subscription is live before injecting.
    client.next_text(WITHIN).await;
    client
}

fn holes(ids: &[i64]) -> i64 {
    ids.windows(2)
        .map(|pair| (pair[1] - pair[0] - 1).max(0))
        .sum()
}

fn repeats(ids: &[i64]) -> usize {
    ids.windows(2).filter(|pair| pair[0] == pair[1]).count()
}

fn descents(ids: &[i64]) -> usize {
    ids.windows(2).filter(|pair| pair[1] < pair[0]).count()
}

/// Reads trade frames until `done` holds for the ids read so far, then `extra` more.
/// Frames queued before the fault was injected come first, so the effect is awaited
/// rather than expected within a fixed number of frames.
async fn trade_ids_until(
    client: &mut Client,
    extra: usize,
    done: impl Fn(&[i64]) -> bool,
) -> Vec<i64> {
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done(&ids) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fault effect not seen in {} frames: {ids:?}",
            ids.len()
        );
        ids.extend(trade_ids(&[client.next_text(WITHIN).await]));
    }
    ids.extend(trade_ids(&collect_texts(client, extra, WITHIN).await));
    ids
}

#[tokio::test]
async fn skipped_events_are_missing_from_the_stream_but_in_the_truth() {
    let exchange = FakeExchange::start(config(20.0)).await.unwrap();
    let mut client = trade_client(&exchange).await;
    exchange.inject(Fault::SkipEvents { count: 3 });
    let ids = trade_ids_until(&mut client, 30, |ids| holes(ids) >= 3).await;
    assert_eq!(holes(&ids), 3, "three trades skipped: {ids:?}");
    let truth = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
    let truth_ids: Vec<i64> = truth.trades.iter().map(|trade| trade.id).collect();
    for missing in ids[0]..*ids.last().unwrap() {
        assert!(
            truth_ids.contains(&missing),
            "truth keeps skipped trade {missing}"
        );
    }
    assert_eq!(exchange.counters().events_skipped, 3);
    assert_eq!(
        exchange.counters().faults_injected.get("skip_events"),
        Some(&1)
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn duplicated_swapped_and_truncated_events() {
    let exchange = FakeExchange::start(config(20.0)).await.unwrap();
    let mut client = trade_client(&exchange).await;
    exchange.inject(Fault::DuplicateEvents { count: 2 });
    let ids = trade_ids_until(&mut client, 30, |ids| repeats(ids) >= 2).await;
    assert_eq!(repeats(&ids), 2, "{ids:?}");
    assert_eq!(descents(&ids), 0, "{ids:?}");

    exchange.inject(Fault::SwapEvents { count: 1 });
    let ids = trade_ids_until(&mut client, 30, |ids| descents(ids) >= 1).await;
    assert_eq!(descents(&ids), 1, "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert!(
        sorted.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "a swap loses nothing: {ids:?}"
    );

    exchange.inject(Fault::TruncateFrames { count: 1 });
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut texts = Vec::new();
    while !texts
        .iter()
        .any(|text: &String| serde_json::from_str::<Value>(text).is_err())
    {
        assert!(tokio::time::Instant::now() < deadline, "no truncated frame");
        texts.push(client.next_text(WITHIN).await);
    }
    texts.extend(collect_texts(&mut client, 20, WITHIN).await);
    let broken: Vec<&String> = texts
        .iter()
        .filter(|text| serde_json::from_str::<Value>(text).is_err())
        .collect();
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0].starts_with(r#"{"e":"trade""#),
        "cut, not replaced: {}",
        broken[0]
    );
    let counters = exchange.counters();
    assert_eq!(
        (
            counters.events_duplicated,
            counters.events_swapped,
            counters.frames_truncated
        ),
        (2, 1, 1)
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn junk_frames_of_every_kind() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let mut client = Client::connect(&format!(
        "{}/stream?streams=btcusdt@kline_1d",
        exchange.ws_base_url()
    ))
    .await;
    client
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#)
        .await;
    client.next_reply(WITHIN).await;
    for fault in [
        Fault::GarbageText { count: 1 },
        Fault::BrokenJson { count: 1 },
        Fault::BinaryFrames { count: 1 },
        Fault::UnknownEventType { count: 1 },
        Fault::UnsubscribedSymbolEvent { count: 1 },
    ] {
        exchange.inject(fault);
    }
    let mut frames = Vec::new();
    while frames.len() < 5 {
        match client.next_message(WITHIN).await.expect("frame") {
            Message::Text(text) => {
                let text = text.to_string();
                // Skip genuine kline updates that may interleave.
                if !text.contains("@kline_1d") {
                    frames.push(Message::text(text));
                }
            }
            Message::Binary(bytes) => frames.push(Message::Binary(bytes)),
            _ => {}
        }
    }
    let texts: Vec<String> = frames
        .iter()
        .filter_map(|frame| frame.to_text().ok().map(str::to_owned))
        .collect();
    assert!(frames.iter().any(|frame| frame.is_binary()));
    assert!(texts.iter().any(|text| text.starts_with("garbage")));
    assert!(texts
        .iter()
        .any(|text| text.starts_with(r#"{"e":"trade""#)
            && serde_json::from_str::<Value>(text).is_err()));
    let unknown = texts
        .iter()
        .find(|text| text.contains("mysteryEvent"))
        .expect("unknown event");
    assert_eq!(
        serde_json::from_str::<Value>(unknown).unwrap()["data"]["e"],
        "mysteryEvent",
        "combined wrapper kept"
    );
    let foreign = texts
        .iter()
        .find(|text| text.contains("ZZZUSDT"))
        .expect("foreign symbol event");
    assert_eq!(
        serde_json::from_str::<Value>(foreign).unwrap()["stream"],
        "zzzusdt@trade"
    );
    assert_eq!(exchange.counters().faults_injected.len(), 5);
    exchange.shutdown().await;
}

/// Reads trade frames until one arrives `after` past `started`; returns the ids and the longest
/// silence between two frames.
async fn trades_across(
    client: &mut Client,
    started: tokio::time::Instant,
    after: Duration,
) -> (Vec<i64>, Duration) {
    let mut ids = Vec::new();
    let mut last_arrival = tokio::time::Instant::now();
    let mut longest_gap = Duration::ZERO;
    loop {
        let text = client.next_text(WITHIN).await;
        let now = tokio::time::Instant::now();
        longest_gap = longest_gap.max(now - last_arrival);
        last_arrival = now;
        ids.push(
            serde_json::from_str::<Value>(&text).expect("json")["t"]
                .as_i64()
                .expect("trade id"),
        );
        if now - started > after {
            return (ids, longest_gap);
        }
    }
}

#[tokio::test]
async fn stall_with_backlog_delivers_everything_later_without_backlog_loses_it() {
    let exchange = FakeExchange::start(config(60.0)).await.unwrap();
    let mut client = trade_client(&exchange).await;
    exchange.inject(Fault::Stall {
        duration_ms: 400,
        keep_backlog: true,
    });
    let (ids, longest_gap) = trades_across(
        &mut client,
        tokio::time::Instant::now(),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        longest_gap >= Duration::from_millis(300),
        "no silence during the stall: {longest_gap:?}"
    );
    assert!(
        ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "nothing lost: {ids:?}"
    );

    exchange.inject(Fault::Stall {
        duration_ms: 400,
        keep_backlog: false,
    });
    let (ids, longest_gap) = trades_across(
        &mut client,
        tokio::time::Instant::now(),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        longest_gap >= Duration::from_millis(300),
        "no silence during the stall: {longest_gap:?}"
    );
    let lost: i64 = ids.windows(2).map(|pair| pair[1] - pair[0] - 1).sum();
    // 400 ms at speed 60 is 24 simulated seconds: about 48 orders of trades lost.
    assert!(lost > 20, "backlog should be lost, lost {lost}");
    exchange.shutdown().await;
}

#[tokio::test]
async fn stall_sends_no_pings() {
    let mut exchange_config = config(1.0);
    exchange_config.limits.ping_interval = Duration::from_millis(50);
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    // Wait for the first ping so the connection is surely running.
    while !matches!(client.next_message(WITHIN).await, Some(Message::Ping(_))) {}
    exchange.inject(Fault::Stall {
        duration_ms: 400,
        keep_backlog: true,
    });
    let mut ping_arrivals = vec![tokio::time::Instant::now()];
    while ping_arrivals.len() < 6 {
        if let Some(Message::Ping(_)) = client.next_message(WITHIN).await {
            ping_arrivals.push(tokio::time::Instant::now());
        }
    }
    let longest_gap = ping_arrivals
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap();
    assert!(
        longest_gap >= Duration::from_millis(350),
        "pings continued during the stall: {longest_gap:?}"
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_by_close_frame_and_by_reset() {
    let exchange = FakeExchange::start(config(10.0)).await.unwrap();
    let mut client = trade_client(&exchange).await;
    exchange.inject(Fault::DropConnections { abort: false });
    let frame = client.wait_close(WITHIN).await.expect("close frame");
    assert_eq!(frame.reason.as_str(), "Connection dropped");

    let mut client = trade_client(&exchange).await;
    exchange.inject(Fault::DropConnections { abort: true });
    // A reset: the stream errors or ends, with no close frame.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut client.socket))
            .await
        {
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("expected a reset, got a close frame {frame:?}")
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("connection not dropped"),
        }
    }
    wait_until(WITHIN, "both drops counted", || {
        exchange.counters().ws_dropped_by_fault == 2
    })
    .await;
    exchange.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_event_bare_and_combined_then_close() {
    let mut shutdown_config = config(1.0);
    shutdown_config.limits.server_shutdown_grace = Duration::from_millis(300);
    let exchange = FakeExchange::start(shutdown_config).await.unwrap();
    let mut raw = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    let mut combined = Client::connect(&format!("{}/stream", exchange.ws_base_url())).await;
    wait_until(WITHIN, "two connections", || {
        exchange.counters().ws_connections_open == 2
    })
    .await;
    exchange.inject(Fault::ServerShutdown);
    let event = raw.next_json(WITHIN).await;
    assert_eq!(event["e"], "serverShutdown");
    assert!(event["E"].as_i64().is_some());
    assert_eq!(event.as_object().unwrap().len(), 2);
    // "Shortly before closing": still open right after the event, closed after the grace.
    assert_eq!(exchange.counters().ws_server_shutdown_closes, 0);
    raw.wait_close(WITHIN).await;
    let wrapped = combined.next_json(WITHIN).await;
    assert_eq!(wrapped["stream"], "!serverShutdown");
    assert_eq!(wrapped["data"]["e"], "serverShutdown");
    combined.wait_close(WITHIN).await;
    exchange.shutdown().await;
}

/// `ServerShutdownNewest` reaches one connection: the newest carrying the
/// stream, which gets the event and is closed; the older one goes on.
#[tokio::test]
async fn server_shutdown_newest_reaches_only_the_newest_connection() {
    let mut shutdown_config = config(1.0);
    shutdown_config.limits.server_shutdown_grace = Duration::from_millis(300);
    let exchange = FakeExchange::start(shutdown_config).await.unwrap();
    let url = format!("{}/ws/btcusdt@trade", exchange.ws_base_url());
    let mut older = Client::connect(&url).await;
    wait_until(WITHIN, "one connection", || {
        exchange.counters().ws_connections_open == 1
    })
    .await;
    let mut newer = Client::connect(&url).await;
    wait_until(WITHIN, "two connections", || {
        exchange.counters().ws_connections_open == 2
    })
    .await;
    exchange.inject(Fault::ServerShutdownNewest {
        stream: "btcusdt@trade".to_owned(),
    });
    // Trades may come first.
    loop {
        let event = newer.next_json(WITHIN).await;
        if event["e"] == "serverShutdown" {
            break;
        }
        assert_eq!(event["e"], "trade", "{event}");
    }
    newer.wait_close(WITHIN).await;
    older
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#)
        .await;
    loop {
        let reply = older.next_json(WITHIN).await;
        assert_ne!(
            reply["e"], "serverShutdown",
            "the older connection heard it"
        );
        if reply["id"] == 1 {
            assert_eq!(reply["result"], serde_json::json!(["btcusdt@trade"]));
            break;
        }
    }
    wait_until(WITHIN, "the newer connection counted closed", || {
        exchange.counters().ws_server_shutdown_closes == 1
    })
    .await;
    let counters = exchange.counters();
    assert_eq!(counters.ws_connections_open, 1, "{counters:?}");
    exchange.shutdown().await;
}

/// `serverShutdown` is a spot event (reference 3 and 11): on USD-M, COIN-M
/// and Binance.US the fault is counted and the connection goes on, with no
/// event and no close. The reply to a request sent after the injection is
/// the first frame: with no grace, a spot connection would have sent the
/// event and closed before reading the request.
#[tokio::test]
async fn server_shutdown_does_nothing_off_spot() {
    for (market, path, symbol) in [
        (Market::UsdM, "/market/ws", "BTCUSDT"),
        (Market::CoinM, "/ws", "BTCUSD_PERP"),
        (Market::Us, "/ws", "BTCUSDT"),
    ] {
        let mut exchange_config = FakeConfig {
            market,
            symbols: vec![symbol.to_owned()],
            ..config(1.0)
        };
        exchange_config.limits.server_shutdown_grace = Duration::ZERO;
        let exchange = FakeExchange::start(exchange_config).await.unwrap();
        let mut client = Client::connect(&format!("{}{path}", exchange.ws_base_url())).await;
        wait_until(WITHIN, "connected", || {
            exchange.counters().ws_connections_open == 1
        })
        .await;
        exchange.inject(Fault::ServerShutdown);
        client
            .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#)
            .await;
        assert_eq!(
            client.next_json(WITHIN).await,
            serde_json::json!({"result": [], "id": 1}),
            "{market:?}"
        );
        let counters = exchange.counters();
        assert_eq!(
            counters.faults_injected.get("server_shutdown"),
            Some(&1),
            "{market:?}"
        );
        assert_eq!(counters.ws_server_shutdown_closes, 0, "{market:?}");
        assert_eq!(counters.ws_connections_open, 1, "{market:?}");
        exchange.shutdown().await;
    }
}

#[tokio::test]
async fn rest_failures_for_the_next_requests() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    for status in [500, 502, 503, 504] {
        exchange.inject(Fault::RestStatus { status, count: 1 });
        assert_eq!(get(&base, "/api/v3/ping").await.status, status);
    }
    assert_eq!(
        get(&base, "/api/v3/ping").await.status,
        200,
        "only the next request fails"
    );

    exchange.inject(Fault::RestTooManyRequests {
        retry_after_secs: 7,
        count: 2,
    });
    for _ in 0..2 {
        let answer = get(&base, "/api/v3/time").await;
        assert_eq!(
            (answer.status, answer.header("Retry-After")),
            (429, Some("7"))
        );
        assert_eq!(answer.json()["code"], -1003);
    }
    // Those 429s started a 7 s back-off; forgive it so the next calls pass.
    exchange.inject(Fault::ClearRestFaults);

    exchange.inject(Fault::RestSlow {
        delay_ms: 300,
        count: 1,
    });
    let started = tokio::time::Instant::now();
    assert_eq!(get(&base, "/api/v3/ping").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    exchange.inject(Fault::RestConnectionReset { count: 1 });
    let error = http(&base, "GET", "/api/v3/ping", &[], "")
        .await
        .expect_err("reset");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{error:?}"
    );

    exchange.inject(Fault::RestTruncatedBody { count: 1 });
    let error = http(&base, "GET", "/api/v3/exchangeInfo", &[], "")
        .await
        .expect_err("truncated");
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(get(&base, "/api/v3/ping").await.status, 200);
    assert_eq!(exchange.counters().rest_failures_injected, 9);
    exchange.shutdown().await;
}

#[tokio::test]
async fn an_injected_429_starts_a_back_off_that_bans_after_a_few_calls() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    exchange.inject(Fault::RestTooManyRequests {
        retry_after_secs: 30,
        count: 1,
    });
    assert_eq!(get(&base, "/api/v3/ping").await.status, 429);
    for _ in 0..3 {
        let again = get(&base, "/api/v3/ping").await;
        assert_eq!(again.status, 429, "inside the back-off: {}", again.body);
        let retry_after: u64 = again.header("Retry-After").unwrap().parse().unwrap();
        assert!((29..=30).contains(&retry_after), "{retry_after}");
    }
    let banned = get(&base, "/api/v3/ping").await;
    assert_eq!(banned.status, 418, "{}", banned.body);
    assert_eq!(banned.header("Retry-After"), Some("120"));
    // Forgiven: answers normally again.
    exchange.inject(Fault::ClearRestFaults);
    assert_eq!(get(&base, "/api/v3/ping").await.status, 200);

    // Without Retry-After the back-off lasts until the window ends.
    exchange.inject(Fault::RestTooManyRequestsWithoutRetryAfter { count: 1 });
    let answer = get(&base, "/api/v3/ping").await;
    assert_eq!((answer.status, answer.header("Retry-After")), (429, None));
    let again = get(&base, "/api/v3/ping").await;
    assert_eq!(again.status, 429, "inside the back-off");
    let retry_after: u64 = again.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let counters = exchange.counters();
    assert_eq!(
        (counters.rest_responses_429, counters.rest_responses_418),
        (6, 1)
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn refusals_oversized_bodies_and_extra_rows() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    exchange.inject(Fault::RestStatus {
        status: 451,
        count: 1,
    });
    let answer = get(&base, "/api/v3/ping").await;
    assert_eq!(answer.status, 451);
    assert!(answer.json()["msg"]
        .as_str()
        .unwrap()
        .contains("restricted location"));
    exchange.inject(Fault::RestStatus {
        status: 403,
        count: 1,
    });
    let answer = get(&base, "/api/v3/ping").await;
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("403 ERROR"), "{}", answer.body);

    exchange.inject(Fault::RestOversizedBody {
        bytes: 100_000,
        count: 1,
    });
    let answer = get(&base, "/api/v3/ping").await;
    assert_eq!((answer.status, answer.body.len()), (200, 100_000));
    assert_eq!(answer.json(), serde_json::json!([]));

    exchange.inject(Fault::RestExtraRows { rows: 4, count: 1 });
    let answer = get(&base, "/api/v3/aggTrades?symbol=BTCUSDT&limit=3").await;
    assert_eq!(answer.json().as_array().unwrap().len(), 7);
    let answer = get(&base, "/api/v3/aggTrades?symbol=BTCUSDT&limit=3").await;
    assert_eq!(
        answer.json().as_array().unwrap().len(),
        3,
        "only the next one"
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn control_endpoint_injects_and_reports() {
    let exchange = FakeExchange::start(config(60.0)).await.unwrap();
    let control = exchange.control_url();
    let answer = http(
        &control,
        "POST",
        "/control/fault",
        &[],
        r#"{"kind":"rest_status","status":503,"count":1}"#,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        get(&exchange.rest_base_url(), "/api/v3/ping").await.status,
        503
    );
    let bad = http(
        &control,
        "POST",
        "/control/fault",
        &[],
        r#"{"kind":"meteor_strike"}"#,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    let counters = get(&control, "/control/counters").await.json();
    assert_eq!(counters["faults_injected"]["rest_status"], 1);
    assert_eq!(
        counters["rest_requests"], 1,
        "control calls are not REST requests"
    );
    let now = get(&control, "/control/time").await.json()["sim_now_us"]
        .as_i64()
        .unwrap();
    let truth = get(
        &control,
        &format!("/control/ground_truth?symbol=BTCUSDT&until={now}"),
    )
    .await
    .json();
    assert!(truth["trades"].as_array().unwrap().len() > 1000);
    assert!(truth["klines"]["1m"].as_array().unwrap().len() >= 30);
    let klines = get(&control, "/control/klines?symbol=BTCUSDT&interval=5m")
        .await
        .json();
    assert_eq!(klines.as_array().unwrap().len(), 6);
    exchange.shutdown().await;
}

#[tokio::test]
async fn chaos_mode_injects_faults_at_random() {
    let mut exchange_config = config(30.0);
    exchange_config.chaos = Some(ChaosConfig {
        seed: 3,
        mean_faults_per_minute: 3000.0,
        faults: vec![
            Fault::GarbageText { count: 1 },
            Fault::DuplicateEvents { count: 1 },
        ],
    });
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = trade_client(&exchange).await;
    collect_texts(&mut client, 20, WITHIN).await;
    wait_until(WITHIN, "several chaos faults", || {
        exchange.counters().faults_injected.values().sum::<u64>() >= 5
    })
    .await;
    exchange.shutdown().await;
}

/// `real` (a combined-stream frame) as the lie would tell it.
fn told_as(real: &Value, lie: Lie) -> Value {
    let mut lying = real.clone();
    let data = &mut lying["data"];
    let add = |value: &mut Value, amount: i64| {
        *value = Value::from(value.as_i64().expect("integer field") + amount);
    };
    match (lie, data["e"].as_str().expect("event type")) {
        (Lie::EventTimeAhead { secs }, _) => add(&mut data["E"], secs as i64 * 1000),
        (Lie::TradeTimeAt { time_ms }, "kline") => {
            let length = data["k"]["T"].as_i64().unwrap() - data["k"]["t"].as_i64().unwrap();
            data["k"]["t"] = Value::from(time_ms);
            data["k"]["T"] = Value::from(time_ms + length);
        }
        (Lie::TradeTimeAt { time_ms }, _) => data["T"] = Value::from(time_ms),
        (Lie::IdJump { by }, "trade") => add(&mut data["t"], by),
        (Lie::IdJump { by }, "aggTrade") => add(&mut data["a"], by),
        (Lie::IdJump { by }, _) => {
            add(&mut data["k"]["f"], by);
            add(&mut data["k"]["L"], by);
        }
    }
    lying
}

#[tokio::test]
async fn poisoned_events_lie_in_an_extra_frame_and_the_truth_is_unchanged() {
    let exchange = FakeExchange::start(config(20.0)).await.unwrap();
    let mut client = Client::connect(&format!(
        "{}/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@kline_1m",
        exchange.ws_base_url()
    ))
    .await;
    client.next_text(WITHIN).await;
    const YEAR_2300_MS: i64 = 10_413_792_000_000;
    let lies = [
        ("btcusdt@trade", Lie::EventTimeAhead { secs: 5 * 3600 }),
        (
            "btcusdt@aggTrade",
            Lie::TradeTimeAt {
                time_ms: YEAR_2300_MS,
            },
        ),
        ("btcusdt@kline_1m", Lie::TradeTimeAt { time_ms: 0 }),
        ("btcusdt@trade", Lie::TradeTimeAt { time_ms: 0 }),
        (
            "btcusdt@trade",
            Lie::IdJump {
                by: 1_000_000_000_000,
            },
        ),
        (
            "btcusdt@aggTrade",
            Lie::IdJump {
                by: 1_000_000_000_000,
            },
        ),
        ("btcusdt@kline_1m", Lie::EventTimeAhead { secs: 3600 }),
    ];
    let mut frames: Vec<Value> = Vec::new();
    for (index, (stream, lie)) in lies.into_iter().enumerate() {
        let fault = Fault::PoisonEvents {
            lie,
            count: 1,
            stream: Some(stream.to_owned()),
        };
        if index == 0 {
            // The JSON form, through the control endpoint.
            let body = serde_json::to_string(&fault).unwrap();
            assert_eq!(
                body,
                r#"{"kind":"poison_events","lie":{"event_time_ahead":{"secs":18000}},"count":1,"stream":"btcusdt@trade"}"#
            );
            let answer = http(
                &exchange.control_url(),
                "POST",
                "/control/fault",
                &[],
                &body,
            )
            .await
            .unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
        } else {
            exchange.inject(fault);
        }
        // The lie, then at once the real event it copies (frames queued
        // before the injection come first).
        let start = frames.len();
        let deadline = tokio::time::Instant::now() + WITHIN;
        let position = loop {
            let found = (start..frames.len().saturating_sub(1)).find(|&at| {
                frames[at]["stream"] == stream && frames[at] == told_as(&frames[at + 1], lie)
            });
            if let Some(at) = found {
                break at;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stream}: no lie {lie:?} in {:?}",
                &frames[start..]
            );
            frames.push(client.next_json(WITHIN).await);
        };
        assert_eq!(frames[position + 1]["stream"], stream);
        assert_ne!(
            frames[position],
            frames[position + 1],
            "{lie:?} changes the frame"
        );
    }
    for _ in 0..30 {
        frames.push(client.next_json(WITHIN).await);
    }

    let poisoned = exchange.poisoned_events();
    assert_eq!(poisoned.len(), lies.len(), "{poisoned:?}");
    for (event, (stream, lie)) in poisoned.iter().zip(lies) {
        assert_eq!((event.stream.as_str(), event.lie), (stream, lie));
    }
    assert_eq!(exchange.counters().events_poisoned, lies.len() as u64);
    assert_eq!(
        exchange.counters().faults_injected.get("poison_events"),
        Some(&(lies.len() as u64))
    );

    // Without the lies, each stream is what it would have been: trade and
    // aggTrade ids consecutive, each once, and every one in the truth; the
    // lying ids nowhere in it.
    let lying_positions: Vec<usize> = (0..frames.len() - 1)
        .filter(|&at| {
            lies.iter()
                .any(|(_, lie)| frames[at] == told_as(&frames[at + 1], *lie))
        })
        .collect();
    assert_eq!(lying_positions.len(), lies.len());
    let truth = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
    for (stream, field, truth_ids) in [
        (
            "btcusdt@trade",
            "t",
            truth
                .trades
                .iter()
                .map(|trade| trade.id)
                .collect::<Vec<_>>(),
        ),
        (
            "btcusdt@aggTrade",
            "a",
            truth.agg_trades.iter().map(|agg| agg.id).collect(),
        ),
    ] {
        let ids: Vec<i64> = frames
            .iter()
            .enumerate()
            .filter(|(at, frame)| frame["stream"] == stream && !lying_positions.contains(at))
            .map(|(_, frame)| frame["data"][field].as_i64().unwrap())
            .collect();
        assert!(ids.len() > 2, "{stream}: {ids:?}");
        assert!(
            ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{stream}: {ids:?}"
        );
        assert!(ids.iter().all(|id| truth_ids.contains(id)), "{stream}");
        assert!(
            truth_ids.iter().all(|id| *id < 1_000_000_000_000),
            "{stream}: no lying id in the truth"
        );
    }

    // Without a stream, the next events of any stream get the lie.
    exchange.inject(Fault::PoisonEvents {
        lie: Lie::IdJump { by: 7 },
        count: 2,
        stream: None,
    });
    wait_until(WITHIN, "two more lies", || {
        exchange.counters().events_poisoned == lies.len() as u64 + 2
    })
    .await;
    exchange.shutdown().await;
}

#[tokio::test]
async fn a_silenced_connection_pings_and_answers_but_sends_no_data() {
    let mut exchange_config = config(20.0);
    // Pings every 50 ms with a 500 ms deadline: the silent link must keep
    // answering them to stay open, as on Binance.
    exchange_config.limits.ping_interval = Duration::from_millis(50);
    exchange_config.limits.pong_timeout = Duration::from_millis(500);
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut silenced = trade_client(&exchange).await;
    let mut other = trade_client(&exchange).await;
    exchange.inject(Fault::SilenceConnection {
        stream: "btcusdt@trade".to_owned(),
    });
    wait_until(WITHIN, "the oldest connection withholds frames", || {
        exchange.counters().frames_silenced > 0
    })
    .await;
    // Everything written before the silence comes before this reply.
    silenced
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#)
        .await;
    let reply = silenced.next_reply(WITHIN).await;
    assert_eq!(reply["result"][0], "btcusdt@trade", "{reply}");
    let pongs_before = exchange.counters().ws_pongs_received;

    // While the other connection receives 40 trades, the silenced one
    // receives pings only (reading it lets tungstenite answer them).
    let mut n_other_trades = 0;
    let mut n_silenced_pings = 0;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while n_other_trades < 40 {
        tokio::select! {
            message = silenced.socket.next() => match message {
                Some(Ok(Message::Ping(_))) => n_silenced_pings += 1,
                other => panic!("the silenced connection sent {other:?}"),
            },
            message = other.socket.next() => match message {
                Some(Ok(Message::Text(_))) => n_other_trades += 1,
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("the other connection sent {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("only {n_other_trades} trades on the other connection"),
        }
    }
    assert!(n_silenced_pings >= 1, "pings go on: {n_silenced_pings}");
    // The silent link still answers control requests and stays open.
    silenced
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":2}"#)
        .await;
    assert_eq!(silenced.next_reply(WITHIN).await["id"], 2);
    let counters = exchange.counters();
    assert!(counters.ws_pongs_received > pongs_before, "{counters:?}");
    assert_eq!(counters.ws_pong_timeout_closes, 0, "{counters:?}");
    assert_eq!(counters.ws_connections_open, 2, "{counters:?}");
    assert_eq!(
        counters.faults_injected.get("silence_connection"),
        Some(&1),
        "{counters:?}"
    );
    exchange.shutdown().await;
}
