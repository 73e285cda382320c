//! Connection-level protocol: control messages, pings, pong deadline, lifetime,
//! message rate, stream count, handshake budget.

use std::time::Duration;

use fake_binance::{FakeExchange, Limits};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{config, relaxed_limits, wait_until, Client};

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn control_messages_get_the_documented_replies() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;

    client
        .send_text(r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": null, "id": 1})
    );
    client
        .send_text(r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":312}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": null, "id": 312})
    );
    client
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": ["btcusdt@aggTrade"], "id": 3})
    );
    client
        .send_text(r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": false, "id": 2})
    );
    client
        .send_text(r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": null, "id": 5})
    );
    client
        .send_text(r#"{"method":"GET_PROPERTY","params":["combined"],"id":6}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": true, "id": 6})
    );

    // Error shapes: wrapped for a bad stream, bare for the others.
    client
        .send_text(r#"{"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":7}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 7})
    );
    client
        .send_text(r#"{"method":"SET_PROPERTY","params":["colour",true],"id":8}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"code": 0, "msg": "Unknown property", "id": 8})
    );
    client
        .send_text(r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":9}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"code": 1, "msg": "Invalid value type: expected Boolean"})
    );
    client.send_text("@@@ not json").await;
    let reply = client.next_reply(WITHIN).await;
    assert_eq!(reply["code"], 3);
    assert!(
        reply["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON: expected value at line 1 column 1"),
        "{reply}"
    );
    client.send_text(r#"{"method":"DANCE","id":10}"#).await;
    let reply = client.next_reply(WITHIN).await;
    assert_eq!(reply["code"], 2);
    assert!(
        reply["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request: unknown variant"),
        "{reply}"
    );
    client
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":[1]}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"})
    );

    // With combined set, events arrive wrapped.
    let event = loop {
        let value = client.next_json(Duration::from_secs(10)).await;
        if value.get("stream").is_some() {
            break value;
        }
    };
    assert_eq!(event["stream"], "btcusdt@aggTrade");
    assert_eq!(event["data"]["e"], "aggTrade");
    assert!(exchange.counters().ws_control_errors >= 6);
    exchange.shutdown().await;
}

#[tokio::test]
async fn server_pings_at_the_interval_and_a_pong_keeps_the_connection() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(400),
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    let started = tokio::time::Instant::now();
    let mut ping_times = Vec::new();
    // Reading lets tungstenite answer each ping with a pong carrying its payload.
    while ping_times.len() < 8 {
        match client.next_message(WITHIN).await {
            Some(Message::Ping(_)) => ping_times.push(started.elapsed()),
            Some(Message::Close(frame)) => panic!("closed although pongs were sent: {frame:?}"),
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
    // Eight pings at 100 ms: about 800 ms, well past the 400 ms pong deadline.
    let first = ping_times[0];
    assert!(
        first >= Duration::from_millis(80),
        "first ping too early: {first:?}"
    );
    for pair in ping_times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(60), "pings {gap:?} apart");
    }
    let counters = exchange.counters();
    assert!(counters.ws_pings_sent >= 8);
    assert!(counters.ws_pongs_received >= 6, "{counters:?}");
    assert_eq!(counters.ws_pong_timeout_closes, 0);
    exchange.shutdown().await;
}

#[tokio::test]
async fn unanswered_pings_close_the_connection() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        ping_interval: Duration::from_millis(50),
        pong_timeout: Duration::from_millis(200),
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    // Not reading means tungstenite never answers the pings. Unsolicited pongs do
    // not count as answers (reference section 3).
    for _ in 0..4 {
        client
            .socket
            .send(Message::Pong(Vec::new().into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_until(WITHIN, "pong timeout close", || {
        exchange.counters().ws_pong_timeout_closes == 1
    })
    .await;
    let frame = client.wait_close(WITHIN).await.expect("close frame");
    assert_eq!(frame.reason.as_str(), "Pong timeout");
    assert!(exchange.counters().ws_unsolicited_pongs >= 1);
    exchange.shutdown().await;
}

#[tokio::test]
async fn connection_closes_at_its_lifetime() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        max_lifetime: Duration::from_millis(300),
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut client = Client::connect(&format!("{}/ws/btcusdt@trade", exchange.ws_base_url())).await;
    let frame = client.wait_close(WITHIN).await.expect("close frame");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(frame.reason.as_str(), "Connection lifetime reached");
    assert_eq!(exchange.counters().ws_lifetime_closes, 1);
    exchange.shutdown().await;
}

#[tokio::test]
async fn five_messages_a_second_are_fine_the_sixth_closes() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        max_incoming_per_sec: 5,
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    for id in 1..=5 {
        client
            .send_text(&format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#))
            .await;
    }
    for id in 1..=5 {
        assert_eq!(client.next_reply(WITHIN).await["id"], id);
    }
    assert_eq!(exchange.counters().ws_rate_limit_closes, 0);
    client
        .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":6}"#)
        .await;
    let frame = client.wait_close(WITHIN).await.expect("close frame");
    assert_eq!(frame.reason.as_str(), "Too many requests");
    assert_eq!(exchange.counters().ws_rate_limit_closes, 1);

    // Pings count as incoming messages too.
    let mut pinger = Client::connect(&format!("{}/ws", exchange.ws_base_url())).await;
    for _ in 0..6 {
        pinger
            .socket
            .send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
    }
    pinger.wait_close(WITHIN).await;
    assert_eq!(exchange.counters().ws_rate_limit_closes, 2);
    exchange.shutdown().await;
}

#[tokio::test]
async fn too_many_streams_close_the_connection() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        max_streams_per_connection: 3,
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client = Client::connect(&format!(
        "{}/ws/btcusdt@trade/ethusdt@trade",
        exchange.ws_base_url()
    ))
    .await;
    client
        .send_text(r#"{"method":"SUBSCRIBE","params":["bnbusdt@trade"],"id":1}"#)
        .await;
    assert_eq!(
        client.next_reply(WITHIN).await,
        json!({"result": null, "id": 1})
    );
    client
        .send_text(r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":2}"#)
        .await;
    let frame = client.wait_close(WITHIN).await.expect("close frame");
    assert_eq!(frame.reason.as_str(), "Too many streams");

    let url = format!(
        "{}/stream?streams=a@trade/b@trade/c@trade/d@trade",
        exchange.ws_base_url()
    );
    let mut client = Client::connect(&url).await;
    client.wait_close(WITHIN).await;
    assert_eq!(exchange.counters().ws_too_many_streams_closes, 2);
    exchange.shutdown().await;
}

#[tokio::test]
async fn handshakes_past_the_budget_get_429_until_the_window_passes() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        handshake_limit: 3,
        handshake_window: Duration::from_millis(700),
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let url = format!("{}/ws/btcusdt@trade", exchange.ws_base_url());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&url).await);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
    }
    assert_eq!(exchange.counters().ws_handshakes_refused, 1);
    // Once the window has passed, connecting works again.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if tokio_tungstenite::connect_async(&url).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exchange.counters().ws_handshakes_accepted, 4);

    // Bad paths and bad stream names in the URL are refused outright.
    for bad in ["/nothing", "/ws/BTCUSDT@trade"] {
        assert!(
            tokio_tungstenite::connect_async(format!("{}{bad}", exchange.ws_base_url()))
                .await
                .is_err()
        );
    }
    exchange.shutdown().await;
}

/// The default 24 h lifetime and 20 s pings, driven by tokio's paused clock: a day passes
/// in well under a second of real time, and the client's automatic pongs keep the link.
#[tokio::test(start_paused = true)]
async fn a_day_on_paused_time_ends_with_the_lifetime_close() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits::default();
    exchange_config.symbols = vec!["BTCUSDT".to_owned()];
    exchange_config.mean_orders_per_sec = 0.01;
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut client = Client::connect(&format!("{}/ws/btcusdt@trade", exchange.ws_base_url())).await;
    let frame = client
        .wait_close(Duration::from_secs(25 * 3600))
        .await
        .expect("close frame");
    assert_eq!(frame.reason.as_str(), "Connection lifetime reached");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(24 * 3600) && elapsed < Duration::from_secs(24 * 3600 + 60),
        "{elapsed:?}"
    );
    let counters = exchange.counters();
    assert_eq!(counters.ws_lifetime_closes, 1);
    assert_eq!(counters.ws_pong_timeout_closes, 0);
    assert!(
        (4300..=4320).contains(&counters.ws_pings_sent),
        "a ping every 20 s: {}",
        counters.ws_pings_sent
    );
    assert!(exchange.sim_now_us() >= crate::support::SIM_START_US + 24 * 3600 * 1_000_000);
    exchange.shutdown().await;
}
