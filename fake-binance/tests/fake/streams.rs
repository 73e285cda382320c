//! Stream payloads: shapes and key order, aggTrade tiling, kline updates and
//! closes (also with no trades), µs mode, and agreement with the ground truth.

use std::time::Duration;

use fake_binance::{FakeConfig, FakeExchange, KlineUpdates, Market};
use serde_json::Value;

use crate::support::{
    assert_amount, assert_key_order, collect_texts, config, decimals_of, Client, SIM_START_US,
};

const WITHIN: Duration = Duration::from_secs(10);

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

#[tokio::test]
async fn raw_and_combined_trade_events_have_binance_keys_in_order() {
    let exchange = FakeExchange::start(config(30.0)).await.unwrap();
    let mut raw = Client::connect(&format!("{}/ws/btcusdt@trade", exchange.ws_base_url())).await;
    let mut combined = Client::connect(&format!(
        "{}/stream?streams=btcusdt@trade/ethusdt@aggTrade",
        exchange.ws_base_url()
    ))
    .await;
    for text in collect_texts(&mut raw, 20, WITHIN).await {
        assert!(text.starts_with(r#"{"e":"trade","E":"#), "{text}");
        assert_key_order(&text, &["e", "E", "s", "t", "p", "q", "T", "m", "M"]);
        let event = parse(&text);
        assert_eq!(event.as_object().unwrap().len(), 9);
        assert_eq!(event["s"], "BTCUSDT");
        let price = event["p"].as_str().unwrap();
        assert_eq!(
            price.split('.').nth(1).unwrap().len(),
            8,
            "8 decimals: {price}"
        );
        assert!(event["t"].as_i64().unwrap() > 1 << 31);
        assert!(event["E"].as_i64().unwrap() >= event["T"].as_i64().unwrap());
    }
    let mut saw_agg = false;
    for text in collect_texts(&mut combined, 30, WITHIN).await {
        let wrapper = parse(&text);
        let stream = wrapper["stream"].as_str().unwrap();
        assert!(
            text.starts_with(&format!(r#"{{"stream":"{stream}","data":{{"e":"#)),
            "{text}"
        );
        if stream == "ethusdt@aggTrade" {
            saw_agg = true;
            let data = serde_json::to_string(&wrapper["data"]).unwrap();
            assert_eq!(wrapper["data"].as_object().unwrap().len(), 11, "{data}");
            assert_key_order(
                &text,
                &["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"],
            );
        } else {
            assert_eq!(stream, "btcusdt@trade");
        }
    }
    assert!(saw_agg);
    exchange.shutdown().await;
}

#[tokio::test]
async fn agg_trades_tile_the_trade_ids_and_match_the_ground_truth() {
    let exchange = FakeExchange::start(config(30.0)).await.unwrap();
    let mut client = Client::connect(&format!(
        "{}/ws/ethusdt@trade/ethusdt@aggTrade",
        exchange.ws_base_url()
    ))
    .await;
    let texts = collect_texts(&mut client, 300, WITHIN).await;
    let events: Vec<Value> = texts.iter().map(|text| parse(text)).collect();
    let trades: Vec<&Value> = events
        .iter()
        .filter(|event| event["e"] == "trade")
        .collect();
    let aggs: Vec<&Value> = events
        .iter()
        .filter(|event| event["e"] == "aggTrade")
        .collect();
    for pair in trades.windows(2) {
        assert_eq!(
            pair[1]["t"].as_i64().unwrap(),
            pair[0]["t"].as_i64().unwrap() + 1,
            "trade ids consecutive"
        );
    }
    for pair in aggs.windows(2) {
        assert_eq!(
            pair[1]["a"].as_i64().unwrap(),
            pair[0]["a"].as_i64().unwrap() + 1,
            "agg ids consecutive"
        );
        assert_eq!(
            pair[1]["f"].as_i64().unwrap(),
            pair[0]["l"].as_i64().unwrap() + 1,
            "f follows previous l"
        );
    }
    // Every aggregate covers trades of one price and one time.
    for agg in &aggs {
        let (first, last) = (agg["f"].as_i64().unwrap(), agg["l"].as_i64().unwrap());
        for trade in trades
            .iter()
            .filter(|trade| (first..=last).contains(&trade["t"].as_i64().unwrap()))
        {
            assert_eq!(trade["p"], agg["p"]);
            assert_eq!(trade["T"], agg["T"]);
            assert_eq!(trade["m"], agg["m"]);
        }
    }
    // The ground truth has exactly these events, with the same E.
    let truth = exchange.ground_truth("ETHUSDT", exchange.sim_now_us());
    for trade in &trades {
        let id = trade["t"].as_i64().unwrap();
        let truth_trade = truth
            .trades
            .iter()
            .find(|candidate| candidate.id == id)
            .expect("streamed trade in truth");
        assert_eq!(truth_trade.price, trade["p"].as_str().unwrap());
        assert_eq!(truth_trade.quantity, trade["q"].as_str().unwrap());
        assert_eq!(
            truth_trade.event_time_us / 1000,
            trade["E"].as_i64().unwrap()
        );
        assert_eq!(truth_trade.time_us / 1000, trade["T"].as_i64().unwrap());
        assert_eq!(truth_trade.is_buyer_maker, trade["m"].as_bool().unwrap());
    }
    let first_streamed = trades[0]["t"].as_i64().unwrap();
    let last_streamed = trades.last().unwrap()["t"].as_i64().unwrap();
    let truth_in_range = truth
        .trades
        .iter()
        .filter(|trade| (first_streamed..=last_streamed).contains(&trade.id))
        .count();
    assert_eq!(
        truth_in_range,
        trades.len(),
        "no trade in the truth was left out of the stream"
    );
    // History before the start is in the truth (for REST gap fills) but was never streamed.
    assert!(truth.trades[0].time_us < SIM_START_US);
    assert!(truth.trades[0].id < first_streamed);
    exchange.shutdown().await;
}

#[tokio::test]
async fn one_second_klines_close_every_second_including_empty_ones() {
    let mut exchange_config = config(20.0);
    // Few orders, so that many seconds have no trade.
    exchange_config.mean_orders_per_sec = 0.3;
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let mut client =
        Client::connect(&format!("{}/ws/btcusdt@kline_1s", exchange.ws_base_url())).await;
    let texts = collect_texts(&mut client, 40, WITHIN).await;
    for text in &texts {
        assert_key_order(
            text,
            &[
                "e", "E", "s", "k", "t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n",
                "x", "q", "V", "Q", "B",
            ],
        );
    }
    let events: Vec<Value> = texts.iter().map(|text| parse(text)).collect();
    let mut saw_empty = false;
    let mut saw_full = false;
    for pair in events.windows(2) {
        let (previous, current) = (&pair[0]["k"], &pair[1]["k"]);
        assert_eq!(
            current["t"].as_i64().unwrap(),
            previous["T"].as_i64().unwrap() + 1,
            "consecutive seconds"
        );
        if current["n"] == 0 {
            saw_empty = true;
            assert_eq!(
                (current["f"].as_i64(), current["L"].as_i64()),
                (Some(-1), Some(-1))
            );
            for price_key in ["o", "h", "l", "c"] {
                assert_eq!(
                    current[price_key], previous["c"],
                    "empty kline at previous close"
                );
            }
            for volume_key in ["v", "q", "V", "Q"] {
                assert_eq!(current[volume_key], "0.00000000");
            }
        } else {
            saw_full = true;
            assert!(current["o"].as_str().is_some());
        }
    }
    for event in &events {
        let kline = &event["k"];
        assert_eq!(kline["x"], true, "1s klines only send their closing event");
        assert_eq!(kline["i"], "1s");
        assert_eq!(
            kline["T"].as_i64().unwrap(),
            kline["t"].as_i64().unwrap() + 999
        );
        let close_delay = event["E"].as_i64().unwrap() - kline["T"].as_i64().unwrap();
        assert!(
            (1..=20).contains(&close_delay),
            "closing event a few ms after the close: {close_delay}"
        );
    }
    assert!(
        saw_empty && saw_full,
        "expected both empty and traded seconds"
    );
    // Closed klines equal the ground truth's, including the closing event's E.
    let truth = exchange.klines("BTCUSDT", "1s", exchange.sim_now_us());
    for event in &events {
        let kline = &event["k"];
        let open_us = kline["t"].as_i64().unwrap() * 1000;
        let truth_kline = truth
            .iter()
            .find(|candidate| candidate.open_time_us == open_us)
            .expect("kline in truth");
        assert_eq!(
            truth_kline.close_event_time_us / 1000,
            event["E"].as_i64().unwrap()
        );
        assert_eq!(truth_kline.close, kline["c"].as_str().unwrap());
        assert_eq!(truth_kline.volume, kline["v"].as_str().unwrap());
        assert_eq!(truth_kline.quote_volume, kline["q"].as_str().unwrap());
        assert_eq!(
            truth_kline.taker_buy_base_volume,
            kline["V"].as_str().unwrap()
        );
        assert_eq!(truth_kline.trade_count, kline["n"].as_i64().unwrap());
        assert_eq!(truth_kline.first_trade_id, kline["f"].as_i64().unwrap());
        assert_eq!(truth_kline.last_trade_id, kline["L"].as_i64().unwrap());
        assert_eq!(truth_kline.close_time_us, open_us + 999_999);
    }
    exchange.shutdown().await;
}

/// The events of `stream` up to its second closing update: the updates
/// of the open kline, and the two closes.
async fn kline_events_to_the_second_close(
    exchange: &FakeExchange,
    stream: &str,
    interval_ms: i64,
) -> (Vec<Value>, Vec<Value>) {
    let mut client = Client::connect(&format!("{}/ws/{stream}", exchange.ws_base_url())).await;
    let (mut updates, mut closes) = (Vec::new(), Vec::new());
    while closes.len() < 2 {
        let event = parse(&client.next_text(WITHIN).await);
        assert_eq!(event["e"], "kline");
        let kline = &event["k"];
        let open = kline["t"].as_i64().unwrap();
        assert_eq!(open % interval_ms, 0);
        assert_eq!(kline["T"].as_i64().unwrap(), open + interval_ms - 1);
        if kline["x"] == true {
            closes.push(event.clone());
        } else {
            let event_time = event["E"].as_i64().unwrap();
            assert!(event_time > open && event_time < open + interval_ms);
            updates.push(event);
        }
    }
    assert_eq!(
        closes[1]["k"]["t"].as_i64().unwrap(),
        closes[0]["k"]["t"].as_i64().unwrap() + interval_ms
    );
    (updates, closes)
}

/// As the real captures show (`../shared/data/real/ws/cryptofeed`: quiet
/// streams 10 to 23 s between updates), an open kline is sent again only
/// when a trade changed it, on the 2 s grid of the reference's update
/// speed; its close always, trades or not.
#[tokio::test]
async fn minute_klines_update_only_when_a_trade_changed_them_then_close() {
    let exchange = FakeExchange::start(FakeConfig {
        mean_orders_per_sec: 0.1,
        ..config(120.0)
    })
    .await
    .unwrap();
    let (updates, closes) =
        kline_events_to_the_second_close(&exchange, "bnbusdt@kline_1m", 60_000).await;
    assert!(
        updates.len() < 20,
        "a quiet symbol's kline is not sent every 2 s: {} updates",
        updates.len()
    );
    let mut last: Option<(i64, i64)> = None;
    for update in &updates {
        let event_time = update["E"].as_i64().unwrap();
        assert_eq!(event_time % 2_000, 0, "update at {event_time}");
        let (open, n_trades) = (
            update["k"]["t"].as_i64().unwrap(),
            update["k"]["n"].as_i64().unwrap(),
        );
        let n_before = last
            .filter(|(last_open, _)| *last_open == open)
            .map_or(0, |(_, n)| n);
        assert!(n_trades > n_before, "an update with no new trade: {update}");
        last = Some((open, n_trades));
    }
    let truth = exchange.klines("BNBUSDT", "1m", exchange.sim_now_us());
    let closed = &closes[1]["k"];
    let truth_kline = truth
        .iter()
        .find(|kline| kline.open_time_us == closed["t"].as_i64().unwrap() * 1000)
        .expect("closed kline in truth");
    assert_eq!(truth_kline.open, closed["o"].as_str().unwrap());
    assert_eq!(truth_kline.high, closed["h"].as_str().unwrap());
    assert_eq!(truth_kline.low, closed["l"].as_str().unwrap());
    assert_eq!(truth_kline.trade_count, closed["n"].as_i64().unwrap());
    exchange.shutdown().await;
}

/// The other reading of the update speed: every period, changed or not;
/// 2 s on spot, 250 ms on futures (reference 4.3, 4.4).
#[tokio::test]
async fn every_period_klines_update_on_their_market_grid() {
    for (market, symbol, period_ms, at_least) in [
        (Market::Spot, "bnbusdt", 2_000, 20),
        (Market::CoinM, "btcusd_perp", 250, 200),
    ] {
        let exchange = FakeExchange::start(FakeConfig {
            market,
            symbols: vec![symbol.to_uppercase()],
            kline_updates: KlineUpdates::EveryPeriod,
            ..config(120.0)
        })
        .await
        .unwrap();
        let (updates, _) =
            kline_events_to_the_second_close(&exchange, &format!("{symbol}@kline_1m"), 60_000)
                .await;
        assert!(
            updates.len() >= at_least,
            "{market:?}: about {} updates a minute, got {}",
            60_000 / period_ms - 1,
            updates.len()
        );
        for update in &updates {
            let event_time = update["E"].as_i64().unwrap();
            assert_eq!(
                event_time % period_ms,
                0,
                "{market:?}: update at {event_time}"
            );
        }
        exchange.shutdown().await;
    }
}

#[tokio::test]
async fn microsecond_mode_sends_microseconds() {
    let exchange = FakeExchange::start(config(60.0)).await.unwrap();
    let base = exchange.ws_base_url();
    let mut micro = Client::connect(&format!(
        "{base}/stream?streams=btcusdt@trade/btcusdt@kline_1s&timeUnit=MICROSECOND"
    ))
    .await;
    let mut milli = Client::connect(&format!("{base}/ws/btcusdt@trade?timeUnit=millisecond")).await;
    let mut saw_trade = false;
    let mut saw_kline = false;
    while !(saw_trade && saw_kline) {
        let wrapper = parse(&micro.next_text(WITHIN).await);
        let data = &wrapper["data"];
        let event_time = data["E"].as_i64().unwrap();
        assert!(
            event_time > 1_000_000_000_000_000,
            "µs event time: {event_time}"
        );
        if data["e"] == "trade" {
            saw_trade = true;
            let truth = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
            let trade = truth
                .trades
                .iter()
                .find(|trade| trade.id == data["t"].as_i64().unwrap())
                .unwrap();
            assert_eq!(trade.time_us, data["T"].as_i64().unwrap());
            assert_eq!(trade.event_time_us, event_time);
        } else {
            saw_kline = true;
            let kline = &data["k"];
            assert_eq!(
                kline["T"].as_i64().unwrap(),
                kline["t"].as_i64().unwrap() + 999_999,
                "close = next open - 1 µs"
            );
        }
    }
    let trade = parse(&milli.next_text(WITHIN).await);
    assert!(
        trade["E"].as_i64().unwrap() < 10_000_000_000_000,
        "ms event time"
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn each_connection_gets_the_same_events_in_the_same_order() {
    let exchange = FakeExchange::start(config(60.0)).await.unwrap();
    let url = format!(
        "{}/ws/btcusdt@trade/btcusdt@aggTrade/ethusdt@trade",
        exchange.ws_base_url()
    );
    let mut first = Client::connect(&url).await;
    let mut second = Client::connect(&url).await;
    // The second connection may have missed the very first events; align on the first common one.
    let first_texts = collect_texts(&mut first, 400, WITHIN).await;
    let second_texts = collect_texts(&mut second, 200, WITHIN).await;
    let start = first_texts
        .iter()
        .position(|text| *text == second_texts[0])
        .expect("common event");
    assert_eq!(&first_texts[start..start + 200], &second_texts[..]);
    // Within a stream, ids increase.
    let mut last_btc_trade = 0;
    for text in &first_texts {
        let event = parse(text);
        if event["e"] == "trade" && event["s"] == "BTCUSDT" {
            let id = event["t"].as_i64().unwrap();
            assert!(id > last_btc_trade);
            last_btc_trade = id;
        }
    }
    exchange.shutdown().await;
}

/// Futures events print the symbol's precision (reference 4.4; the real
/// fstream and dstream captures): USD-M BTCUSDT prices with the tick's 2
/// decimals, quantities (and `nq`) with the step's 5, kline quote volumes
/// with their sum (7); COIN-M BTCUSD_PERP 1 and 0 (whole contracts), kline
/// quote volumes (base-asset amounts there) 8.
/// Values are the ground truth's.
#[tokio::test]
async fn futures_events_carry_the_symbols_precision() {
    for (market, symbol, price, quantity, quote) in [
        (Market::UsdM, "BTCUSDT", 2, 5, 7),
        (Market::CoinM, "BTCUSD_PERP", 1, 0, 8),
    ] {
        let exchange = FakeExchange::start(FakeConfig {
            market,
            symbols: vec![symbol.to_owned()],
            ..config(240.0)
        })
        .await
        .unwrap();
        let base = exchange.ws_base_url();
        let lower = symbol.to_ascii_lowercase();
        // USD-M serves trades on /public, aggTrades and klines on /market.
        let (trade_url, other_url) = match market {
            Market::UsdM => (
                format!("{base}/public/ws/{lower}@trade"),
                format!("{base}/market/ws/{lower}@aggTrade/{lower}@kline_1m"),
            ),
            _ => (
                format!("{base}/ws/{lower}@trade"),
                format!("{base}/ws/{lower}@aggTrade/{lower}@kline_1m"),
            ),
        };
        let mut trades = Client::connect(&trade_url).await;
        let mut others = Client::connect(&other_url).await;
        let trade_events: Vec<Value> = collect_texts(&mut trades, 30, WITHIN)
            .await
            .iter()
            .map(|text| parse(text))
            .collect();
        let mut agg_events = Vec::new();
        let mut closed_kline: Option<Value> = None;
        while agg_events.len() < 30 || closed_kline.is_none() {
            let event = parse(&others.next_text(WITHIN).await);
            if event["e"] == "aggTrade" {
                agg_events.push(event);
            } else if event["k"]["x"] == true {
                closed_kline = Some(event["k"].clone());
            } else {
                let kline = &event["k"];
                for key in ["o", "h", "l", "c"] {
                    assert_eq!(decimals_of(kline[key].as_str().unwrap()), price, "{kline}");
                }
                for (key, decimals) in
                    [("v", quantity), ("V", quantity), ("q", quote), ("Q", quote)]
                {
                    assert_eq!(
                        decimals_of(kline[key].as_str().unwrap()),
                        decimals,
                        "{kline}"
                    );
                }
            }
        }
        let truth = exchange.ground_truth(symbol, exchange.sim_now_us());
        let label = format!("{market:?}");
        for event in &trade_events {
            let want = truth
                .trades
                .iter()
                .find(|trade| trade.id == event["t"].as_i64().unwrap())
                .expect("a sent trade is in the truth");
            assert_amount(&event["p"], price, &want.price, &label);
            assert_amount(&event["q"], quantity, &want.quantity, &label);
        }
        for event in &agg_events {
            let want = truth
                .agg_trades
                .iter()
                .find(|agg| agg.id == event["a"].as_i64().unwrap())
                .expect("a sent aggTrade is in the truth");
            assert_amount(&event["p"], price, &want.price, &label);
            assert_amount(&event["q"], quantity, &want.quantity, &label);
            if market == Market::UsdM {
                assert_amount(&event["nq"], quantity, &want.quantity, &label);
            }
        }
        let kline = closed_kline.expect("loop ends with a closed kline");
        let want = truth.klines["1m"]
            .iter()
            .find(|want| want.open_time_us == kline["t"].as_i64().unwrap() * 1000)
            .expect("a closed kline is in the truth");
        for (key, truth_value, decimals) in [
            ("o", &want.open, price),
            ("h", &want.high, price),
            ("l", &want.low, price),
            ("c", &want.close, price),
            ("v", &want.volume, quantity),
            ("q", &want.quote_volume, quote),
            ("V", &want.taker_buy_base_volume, quantity),
            ("Q", &want.taker_buy_quote_volume, quote),
        ] {
            assert_amount(
                &kline[key],
                decimals,
                truth_value,
                &format!("{label} {key}"),
            );
        }
        exchange.shutdown().await;
    }
}

/// `<s>@kline_1s` is no futures stream (reference 4.4): SUBSCRIBE refuses it
/// as a bad stream name (code 2 `Invalid request: invalid stream`,
/// reference 2) and subscribes nothing, a URL naming it is refused with
/// HTTP 400; spot takes it.
#[tokio::test]
async fn futures_have_no_one_second_kline_stream() {
    for (market, path, symbol) in [
        (Market::UsdM, "/market", "btcusdt"),
        (Market::CoinM, "", "btcusd_perp"),
    ] {
        let exchange = FakeExchange::start(FakeConfig {
            market,
            symbols: vec![symbol.to_uppercase()],
            ..config(60.0)
        })
        .await
        .unwrap();
        let base = exchange.ws_base_url();
        let mut client = Client::connect(&format!("{base}{path}/ws")).await;
        client
            .send_text(&format!(
                r#"{{"method":"SUBSCRIBE","params":["{symbol}@kline_1s"],"id":1}}"#
            ))
            .await;
        assert_eq!(
            client.next_reply(WITHIN).await,
            serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}),
            "{market:?}"
        );
        client
            .send_text(r#"{"method":"LIST_SUBSCRIPTIONS","id":2}"#)
            .await;
        assert_eq!(
            client.next_reply(WITHIN).await,
            serde_json::json!({"result": [], "id": 2}),
            "{market:?}"
        );
        match tokio_tungstenite::connect_async(format!("{base}{path}/ws/{symbol}@kline_1s")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{market:?}")
            }
            other => panic!("{market:?}: the handshake should be refused: {other:?}"),
        }
        exchange.shutdown().await;
    }
    let spot = FakeExchange::start(config(60.0)).await.unwrap();
    let mut client = Client::connect(&format!("{}/ws/btcusdt@kline_1s", spot.ws_base_url())).await;
    assert_eq!(client.next_json(WITHIN).await["k"]["i"], "1s");
    spot.shutdown().await;
}
