//! REST: shapes, weights, 429 then 418, error codes, parameter semantics, µs header.

use std::time::Duration;

use fake_binance::{FakeExchange, Limits};
use serde_json::Value;

use crate::support::{
    assert_amount, config, get, get_with, relaxed_limits, wait_until_async, SIM_START_US,
};

fn ids(rows: &Value, key: &str) -> Vec<i64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row[key].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn ping_time_exchange_info_and_weights() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    let ping = get(&base, "/api/v3/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "{}"));
    assert_eq!(ping.used_weight(), 1);
    let time = get(&base, "/api/v3/time").await;
    let server_time = time.json()["serverTime"].as_i64().unwrap();
    assert!(
        (SIM_START_US / 1000..SIM_START_US / 1000 + 60_000).contains(&server_time),
        "{server_time}"
    );
    assert_eq!(time.used_weight(), 2);
    let info = get(&base, "/api/v3/exchangeInfo").await;
    assert_eq!(info.used_weight(), 22);
    let info = info.json();
    assert_eq!(info["rateLimits"][0]["rateLimitType"], "REQUEST_WEIGHT");
    assert_eq!(info["rateLimits"][0]["limit"], 6000);
    let symbols = info["symbols"].as_array().unwrap();
    assert_eq!(symbols.len(), 3);
    assert_eq!(symbols[0]["symbol"], "BTCUSDT");
    assert_eq!(symbols[0]["status"], "TRADING");
    assert_eq!(symbols[0]["baseAsset"], "BTC");
    assert_eq!(symbols[0]["filters"][0]["filterType"], "PRICE_FILTER");
    assert_eq!(symbols[0]["filters"][0]["tickSize"], "0.01000000");
    assert_eq!(symbols[0]["filters"][1]["filterType"], "LOT_SIZE");
    let one = get(&base, "/api/v3/exchangeInfo?symbol=ETHUSDT")
        .await
        .json();
    assert_eq!(one["symbols"].as_array().unwrap().len(), 1);

    // Documented weights: aggTrades 4, trades 25, historicalTrades 25, klines 2.
    let mut expected = 42;
    for (path, weight) in [
        ("/api/v3/aggTrades?symbol=BTCUSDT", 4),
        ("/api/v3/trades?symbol=BTCUSDT", 25),
        ("/api/v3/historicalTrades?symbol=BTCUSDT", 25),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m", 2),
    ] {
        expected += weight;
        let answer = get(&base, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.used_weight(), expected, "{path}");
    }
    assert_eq!(exchange.counters().rest_used_weight, expected);
    exchange.shutdown().await;
}

#[tokio::test]
async fn over_the_weight_limit_429_then_a_ban_with_418() {
    let mut exchange_config = config(1.0);
    exchange_config.limits = Limits {
        weight_limit_per_minute: 50,
        weight_window: Duration::from_secs(3),
        ban_duration: Duration::from_secs(2),
        ..relaxed_limits()
    };
    let exchange = FakeExchange::start(exchange_config).await.unwrap();
    let base = exchange.rest_base_url();
    assert_eq!(get(&base, "/api/v3/exchangeInfo").await.status, 200);
    assert_eq!(get(&base, "/api/v3/exchangeInfo").await.status, 200);
    let too_many = get(&base, "/api/v3/exchangeInfo").await;
    assert_eq!(too_many.status, 429, "{}", too_many.body);
    assert_eq!(too_many.json()["code"], -1003);
    let retry_after: u64 = too_many
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    assert_eq!(too_many.used_weight(), 40);
    // A few calls inside the back-off are told 429 again (requests already
    // on the wire cannot be held back); one more earns a ban.
    for _ in 0..3 {
        let again = get(&base, "/api/v3/ping").await;
        assert_eq!(again.status, 429, "{}", again.body);
        assert!(again.header("Retry-After").is_some());
    }
    let banned = get(&base, "/api/v3/ping").await;
    assert_eq!(banned.status, 418, "{}", banned.body);
    assert_eq!(banned.json()["code"], -1003);
    assert!(banned.json()["msg"]
        .as_str()
        .unwrap()
        .contains("IP banned until"));
    let ban_retry: u64 = banned
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ban_retry), "{ban_retry}");
    assert_eq!(get(&base, "/api/v3/ping").await.status, 418, "still banned");
    let counters = exchange.counters();
    assert_eq!(
        (counters.rest_responses_429, counters.rest_responses_418),
        (4, 2)
    );
    // The ban ends and the window resets.
    wait_until_async(Duration::from_secs(10), "ban to end", || async {
        get(&base, "/api/v3/ping").await.status == 200
    })
    .await;
    exchange.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_get_binance_error_codes() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    for (path, code) in [
        ("/api/v3/trades", -1102),
        ("/api/v3/trades?symbol=NOPEUSDT", -1121),
        ("/api/v3/trades?symbol=btcusdt", -1121),
        ("/api/v3/klines?symbol=BTCUSDT", -1102),
        ("/api/v3/klines?symbol=BTCUSDT&interval=2m", -1120),
        (
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5000",
            -1130,
        ),
        ("/api/v3/aggTrades?symbol=BTCUSDT&limit=abc", -1100),
        (
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&startTime=1",
            -1128,
        ),
        ("/api/v3/historicalTrades?symbol=BTCUSDT&limit=0", -1130),
        ("/api/v3/exchangeInfo?symbol=NOPE", -1121),
    ] {
        let answer = get(&base, path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["code"], code, "{path}: {body}");
        assert!(body["msg"]
            .as_str()
            .is_some_and(|message| !message.is_empty()));
        assert!(answer.header("X-MBX-USED-WEIGHT-1M").is_some());
    }
    let bad_unit = get_with(&base, "/api/v3/time", &[("X-MBX-TIME-UNIT", "SECOND")]).await;
    assert_eq!(
        (bad_unit.status, bad_unit.json()["code"].as_i64()),
        (400, Some(-1194))
    );
    assert_eq!(get(&base, "/api/v3/nothing").await.status, 404);
    exchange.shutdown().await;
}

#[tokio::test]
async fn agg_trades_parameter_semantics() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    let truth = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
    assert!(truth.agg_trades.len() > 1500, "30 minutes of history");

    // None: the most recent 500, ascending.
    let recent = get(&base, "/api/v3/aggTrades?symbol=BTCUSDT").await.json();
    let recent_ids = ids(&recent, "a");
    assert_eq!(recent_ids.len(), 500);
    assert!(recent_ids.windows(2).all(|pair| pair[1] == pair[0] + 1));
    let server_time_ms = get(&base, "/api/v3/time").await.json()["serverTime"]
        .as_i64()
        .unwrap();
    assert!(recent
        .as_array()
        .unwrap()
        .iter()
        .all(|row| row["T"].as_i64().unwrap() <= server_time_ms));
    let row = &recent[0];
    assert_eq!(row.as_object().unwrap().keys().count(), 8, "{row}");

    // fromId: inclusive, ascending, limit.
    let from = truth.agg_trades[100].id;
    let page = get(
        &base,
        &format!("/api/v3/aggTrades?symbol=BTCUSDT&fromId={from}&limit=7"),
    )
    .await
    .json();
    assert_eq!(ids(&page, "a"), (from..from + 7).collect::<Vec<_>>());
    assert_eq!(page[0]["p"], truth.agg_trades[100].price.as_str());
    assert_eq!(
        page[0]["f"].as_i64().unwrap(),
        truth.agg_trades[100].first_trade_id
    );

    // startTime only: the oldest from startTime.
    let start_us = truth.agg_trades[200].time_us;
    let page = get(
        &base,
        &format!(
            "/api/v3/aggTrades?symbol=BTCUSDT&startTime={}&limit=5",
            start_us / 1000
        ),
    )
    .await
    .json();
    let first_expected = truth
        .agg_trades
        .iter()
        .find(|agg| agg.time_us >= start_us / 1000 * 1000)
        .unwrap()
        .id;
    assert_eq!(
        ids(&page, "a"),
        (first_expected..first_expected + 5).collect::<Vec<_>>()
    );

    // endTime only: the newest up to endTime.
    let end_us = truth.agg_trades[300].time_us;
    let page = get(
        &base,
        &format!(
            "/api/v3/aggTrades?symbol=BTCUSDT&endTime={}&limit=5",
            end_us / 1000
        ),
    )
    .await
    .json();
    let last_expected = truth
        .agg_trades
        .iter()
        .rev()
        .find(|agg| agg.time_us / 1000 <= end_us / 1000)
        .unwrap()
        .id;
    assert_eq!(
        ids(&page, "a"),
        (last_expected - 4..=last_expected).collect::<Vec<_>>()
    );

    // Both: from the start, never beyond the end.
    let page = get(
        &base,
        &format!(
            "/api/v3/aggTrades?symbol=BTCUSDT&startTime={}&endTime={}&limit=1000",
            start_us / 1000,
            end_us / 1000
        ),
    )
    .await
    .json();
    let page_ids = ids(&page, "a");
    assert_eq!(page_ids.first(), Some(&first_expected));
    assert_eq!(page_ids.last(), Some(&last_expected));

    // Microsecond start times are accepted too, and the µs header switches the answer.
    let page = get_with(
        &base,
        &format!("/api/v3/aggTrades?symbol=BTCUSDT&startTime={start_us}&limit=1"),
        &[("X-MBX-TIME-UNIT", "MICROSECOND")],
    )
    .await
    .json();
    assert_eq!(page[0]["T"].as_i64().unwrap(), start_us);
    exchange.shutdown().await;
}

#[tokio::test]
async fn trades_and_historical_trades() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    let truth = exchange.ground_truth("ETHUSDT", exchange.sim_now_us());
    let recent = get(&base, "/api/v3/trades?symbol=ETHUSDT&limit=10")
        .await
        .json();
    let recent_ids = ids(&recent, "id");
    assert_eq!(recent_ids.len(), 10);
    assert!(recent_ids.windows(2).all(|pair| pair[1] == pair[0] + 1));
    assert!(*recent_ids.last().unwrap() >= truth.trades.last().unwrap().id);
    let row = recent[0].as_object().unwrap();
    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
    for key in [
        "id",
        "price",
        "qty",
        "quoteQty",
        "time",
        "isBuyerMaker",
        "isBestMatch",
    ] {
        assert!(keys.contains(&key), "{key} missing");
    }
    let default_page = get(&base, "/api/v3/historicalTrades?symbol=ETHUSDT")
        .await
        .json();
    assert_eq!(default_page.as_array().unwrap().len(), 500);
    let from = truth.trades[10].id;
    let page = get(
        &base,
        &format!("/api/v3/historicalTrades?symbol=ETHUSDT&fromId={from}&limit=1000"),
    )
    .await
    .json();
    let page_ids = ids(&page, "id");
    assert_eq!(page_ids.len(), 1000);
    assert_eq!(page_ids[0], from);
    assert!(page_ids.windows(2).all(|pair| pair[1] == pair[0] + 1));
    let truth_trade = &truth.trades[10];
    assert_eq!(page[0]["price"], truth_trade.price.as_str());
    assert_eq!(page[0]["qty"], truth_trade.quantity.as_str());
    assert_eq!(
        page[0]["time"].as_i64().unwrap(),
        truth_trade.time_us / 1000
    );
    // quoteQty = price x qty, exact, 8 decimals.
    assert_eq!(
        page[0]["quoteQty"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .len(),
        8
    );
    // A fromId beyond the newest trade: nothing (the future is never served).
    let future = get(
        &base,
        "/api/v3/historicalTrades?symbol=ETHUSDT&fromId=9999999999",
    )
    .await
    .json();
    assert_eq!(future.as_array().unwrap().len(), 0);
    exchange.shutdown().await;
}

#[tokio::test]
async fn klines_parameter_semantics_and_the_open_kline() {
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let base = exchange.rest_base_url();
    // The minute before the start closes (x:true) a few ms after the start.
    crate::support::wait_until(Duration::from_secs(5), "first close", || {
        exchange.sim_now_us() > SIM_START_US + 20_000
    })
    .await;
    let server_time_ms = get(&base, "/api/v3/time").await.json()["serverTime"]
        .as_i64()
        .unwrap();
    let rows = get(&base, "/api/v3/klines?symbol=BTCUSDT&interval=1m")
        .await
        .json();
    let rows = rows.as_array().unwrap();
    // 30 minutes of history plus the open minute (the start is on a minute boundary).
    assert_eq!(rows.len(), 31);
    let last = rows.last().unwrap();
    assert_eq!(last.as_array().unwrap().len(), 12);
    assert!(
        last[6].as_i64().unwrap() >= server_time_ms,
        "the still-open kline is the last row"
    );
    assert_eq!(last[11], "0");
    for pair in rows.windows(2) {
        assert_eq!(
            pair[1][0].as_i64().unwrap(),
            pair[0][6].as_i64().unwrap() + 1
        );
    }
    // Closed rows equal the ground truth.
    let truth = exchange.klines("BTCUSDT", "1m", exchange.sim_now_us());
    assert_eq!(truth.len(), 30);
    for (row, kline) in rows.iter().zip(&truth) {
        assert_eq!(row[0].as_i64().unwrap() * 1000, kline.open_time_us);
        assert_eq!(row[1], kline.open.as_str());
        assert_eq!(row[2], kline.high.as_str());
        assert_eq!(row[3], kline.low.as_str());
        assert_eq!(row[4], kline.close.as_str());
        assert_eq!(row[5], kline.volume.as_str());
        assert_eq!(
            row[6].as_i64().unwrap(),
            (kline.close_time_us + 1) / 1000 - 1
        );
        assert_eq!(row[7], kline.quote_volume.as_str());
        assert_eq!(row[8].as_i64().unwrap(), kline.trade_count);
        assert_eq!(row[9], kline.taker_buy_base_volume.as_str());
        assert_eq!(row[10], kline.taker_buy_quote_volume.as_str());
    }
    // limit, startTime, endTime select by open time.
    let first_open = rows[0][0].as_i64().unwrap();
    let page = get(
        &base,
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={}&limit=3",
            first_open + 1
        ),
    )
    .await
    .json();
    let opens: Vec<i64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_i64().unwrap())
        .collect();
    assert_eq!(
        opens,
        vec![
            first_open + 60_000,
            first_open + 120_000,
            first_open + 180_000
        ]
    );
    let page = get(
        &base,
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&endTime={}&limit=2",
            first_open + 300_000
        ),
    )
    .await
    .json();
    let opens: Vec<i64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_i64().unwrap())
        .collect();
    assert_eq!(opens, vec![first_open + 240_000, first_open + 300_000]);
    let page = get(
        &base,
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={}&endTime={}",
            first_open,
            first_open + 120_000
        ),
    )
    .await
    .json();
    assert_eq!(page.as_array().unwrap().len(), 3);
    let page = get(&base, "/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=1")
        .await
        .json();
    assert_eq!(
        page[0][0].as_i64().unwrap(),
        SIM_START_US / 1000,
        "the open hour"
    );
    // µs header: open and close times in µs, close = next open - 1 µs.
    let page = get_with(
        &base,
        "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2",
        &[("X-MBX-TIME-UNIT", "MICROSECOND")],
    )
    .await
    .json();
    assert_eq!(
        page[0][6].as_i64().unwrap(),
        page[0][0].as_i64().unwrap() + 59_999_999
    );
    exchange.shutdown().await;
}

#[tokio::test]
async fn the_same_seed_gives_the_same_market() {
    let first = FakeExchange::start(config(1.0)).await.unwrap();
    let second = FakeExchange::start(config(1.0)).await.unwrap();
    let mut other_config = config(1.0);
    other_config.seed = 8;
    let other = FakeExchange::start(other_config).await.unwrap();
    let until = SIM_START_US - 1_000_000;
    let truth = first.ground_truth("BNBUSDT", until);
    assert!(truth.trades.len() > 1000);
    assert_eq!(truth, second.ground_truth("BNBUSDT", until));
    assert_ne!(truth.trades, other.ground_truth("BNBUSDT", until).trades);
    let rows = |base: String| async move {
        get(
            &base,
            "/api/v3/aggTrades?symbol=BNBUSDT&startTime=1723160000000&limit=50",
        )
        .await
        .body
    };
    assert_eq!(
        rows(first.rest_base_url()).await,
        rows(second.rest_base_url()).await
    );
    first.shutdown().await;
    second.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn ground_truth_until_cuts_by_trade_time_and_close_time() {
    let exchange = FakeExchange::start(config(60.0)).await.unwrap();
    // Let a few simulated seconds pass so events around the start are all published.
    crate::support::wait_until(Duration::from_secs(5), "clock past the start", || {
        exchange.sim_now_us() > SIM_START_US + 5_000_000
    })
    .await;
    let everything = exchange.ground_truth("BTCUSDT", exchange.sim_now_us());
    let at_start = exchange.ground_truth("BTCUSDT", SIM_START_US);
    let before_start: Vec<_> = everything
        .trades
        .iter()
        .filter(|trade| trade.time_us < SIM_START_US)
        .cloned()
        .collect();
    assert_eq!(at_start.trades, before_start);
    assert!(at_start.trades.len() < everything.trades.len());
    let minutes = &at_start.klines["1m"];
    assert_eq!(minutes.len(), 30);
    assert_eq!(minutes.last().unwrap().close_time_us, SIM_START_US - 1);
    assert!(minutes.last().unwrap().close_event_time_us > SIM_START_US);
    // The hour before the start is only half in the history; its kline holds that half.
    let hours = &at_start.klines["1h"];
    assert_eq!(hours.len(), 1);
    assert_eq!(hours[0].first_trade_id, at_start.trades[0].id);
    assert_eq!(hours[0].trade_count as usize, at_start.trades.len());
    exchange.shutdown().await;
}

/// The recorder talks REST through reqwest (pooled keep-alive connections); the
/// hand-written HTTP loop must suit it, including its failures.
#[tokio::test]
async fn reqwest_client_on_pooled_connections() {
    // reqwest is built with rustls but no provider (as in the recorder); install one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exchange = FakeExchange::start(config(1.0)).await.unwrap();
    let client = reqwest::Client::new();
    let base = exchange.rest_base_url();
    for _ in 0..5 {
        let response = client
            .get(format!("{base}/api/v3/aggTrades?symbol=BTCUSDT&limit=3"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers().contains_key("x-mbx-used-weight-1m"));
        let rows: Vec<Value> = response.json().await.unwrap();
        assert_eq!(rows.len(), 3);
    }
    let response = client
        .get(format!("{base}/api/v3/klines?symbol=BTCUSDT&interval=9m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], -1120);
    exchange.inject(fake_binance::Fault::RestTooManyRequests {
        retry_after_secs: 3,
        count: 1,
    });
    let response = client
        .get(format!("{base}/api/v3/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    // Forgive the back-off that 429 started, so the next calls are answered.
    exchange.inject(fake_binance::Fault::ClearRestFaults);
    exchange.inject(fake_binance::Fault::RestTruncatedBody { count: 1 });
    let truncated = client
        .get(format!("{base}/api/v3/exchangeInfo"))
        .send()
        .await
        .unwrap()
        .text()
        .await;
    assert!(truncated.is_err(), "a cut body is an error for reqwest");
    exchange.inject(fake_binance::Fault::RestConnectionReset { count: 1 });
    assert!(client
        .get(format!("{base}/api/v3/ping"))
        .send()
        .await
        .is_err());
    // The pool recovers.
    assert_eq!(
        client
            .get(format!("{base}/api/v3/ping"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    exchange.shutdown().await;
}

/// A COIN-M dated contract delivered mid-run: `exchangeInfo` shows its
/// `deliveryDate` and `contractStatus` (TRADING, then DELIVERED), it
/// trades nothing from its delivery on, REST serves no row and no kline
/// after it, and the perpetual beside it trades on.
#[tokio::test]
async fn a_dated_coinm_contract_is_delivered_mid_run() {
    let delivery_us = SIM_START_US + 120_000_000;
    let exchange = FakeExchange::start(fake_binance::FakeConfig {
        market: fake_binance::Market::CoinM,
        symbols: vec!["BTCUSD_PERP".to_owned(), "BTCUSD_260101".to_owned()],
        deliveries: vec![("BTCUSD_260101".to_owned(), delivery_us)],
        ..config(60.0)
    })
    .await
    .unwrap();
    let base = exchange.rest_base_url();
    let contract = |info: &Value, symbol: &str| -> Value {
        info["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["symbol"] == symbol)
            .cloned()
            .unwrap()
    };
    let before = get(&base, "/dapi/v1/exchangeInfo").await.json();
    let dated = contract(&before, "BTCUSD_260101");
    assert_eq!(dated["contractStatus"], "TRADING");
    assert_eq!(dated["contractType"], "CURRENT_QUARTER");
    assert_eq!(dated["deliveryDate"], delivery_us / 1000);
    assert_eq!(dated["pair"], "BTCUSD");
    let perpetual = contract(&before, "BTCUSD_PERP");
    assert_eq!(perpetual["contractStatus"], "TRADING");
    assert_eq!(perpetual["contractType"], "PERPETUAL");
    assert_eq!(perpetual["deliveryDate"], 4_133_404_800_000_i64);

    let after_us = delivery_us + 60_000_000;
    wait_until_async(Duration::from_secs(30), "past the delivery", || async {
        exchange.sim_now_us() >= after_us
    })
    .await;
    let after = get(&base, "/dapi/v1/exchangeInfo").await.json();
    assert_eq!(
        contract(&after, "BTCUSD_260101")["contractStatus"],
        "DELIVERED"
    );
    assert_eq!(contract(&after, "BTCUSD_PERP")["contractStatus"], "TRADING");

    let dated_truth = exchange.ground_truth("BTCUSD_260101", after_us);
    assert!(!dated_truth.trades.is_empty());
    assert!(dated_truth
        .trades
        .iter()
        .all(|trade| trade.time_us < delivery_us));
    assert!(dated_truth.klines["1m"]
        .iter()
        .all(|kline| kline.open_time_us < delivery_us));
    assert_eq!(
        dated_truth.klines["1m"].last().unwrap().close_time_us,
        delivery_us - 1000,
        "a ms market's close time, one ms before the delivery, times 1000"
    );
    let perpetual_truth = exchange.ground_truth("BTCUSD_PERP", after_us);
    assert!(perpetual_truth
        .trades
        .iter()
        .any(|trade| trade.time_us >= delivery_us));

    let from_ms = delivery_us / 1000;
    let aggs = get(
        &base,
        &format!(
            "/dapi/v1/aggTrades?symbol=BTCUSD_260101&startTime={from_ms}&endTime={}",
            from_ms + 50_000
        ),
    )
    .await;
    assert_eq!((aggs.status, aggs.body.as_str()), (200, "[]"));
    let klines = get(
        &base,
        &format!(
            "/dapi/v1/klines?symbol=BTCUSD_260101&interval=1m&startTime={}",
            from_ms - 60_000
        ),
    )
    .await
    .json();
    assert_eq!(
        ids(
            &klines
                .as_array()
                .unwrap()
                .iter()
                .map(|row| serde_json::json!({"t": row[0]}))
                .collect(),
            "t"
        ),
        vec![from_ms - 60_000]
    );
    exchange.shutdown().await;
}

/// A perpetual's delisting announced mid-run: `exchangeInfo` shows the
/// perpetual's placeholder date until the announcement, then the
/// delisting as its `deliveryDate` (`TRADING`), then `SETTLING` from the
/// delisting on, still `PERPETUAL` (USD-M names it `status`, as the real
/// answers do); it trades nothing from then on.
#[tokio::test]
async fn a_perpetual_delisting_shows_in_exchange_info_from_its_announcement() {
    let announced_us = SIM_START_US + 60_000_000;
    let delisting_us = SIM_START_US + 180_000_000;
    let exchange = FakeExchange::start(fake_binance::FakeConfig {
        market: fake_binance::Market::UsdM,
        symbols: vec!["BTCUSDT".to_owned(), "ETHUSDT".to_owned()],
        deliveries: vec![("ETHUSDT".to_owned(), delisting_us)],
        deliveries_announced: vec![("ETHUSDT".to_owned(), announced_us)],
        ..config(60.0)
    })
    .await
    .unwrap();
    let base = exchange.rest_base_url();
    let delisted = || async {
        let info = get(&base, "/fapi/v1/exchangeInfo").await.json();
        info["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["symbol"] == "ETHUSDT")
            .cloned()
            .unwrap()
    };
    let before = delisted().await;
    assert_eq!(
        (&before["status"], &before["deliveryDate"]),
        (&"TRADING".into(), &4_133_404_800_000_i64.into())
    );
    for (at, status) in [(announced_us, "TRADING"), (delisting_us, "SETTLING")] {
        wait_until_async(Duration::from_secs(30), status, || async {
            exchange.sim_now_us() >= at
        })
        .await;
        let entry = delisted().await;
        assert_eq!(entry["status"], status, "{entry}");
        assert!(entry.get("contractStatus").is_none(), "{entry}");
        assert_eq!(entry["contractType"], "PERPETUAL", "{entry}");
        assert_eq!(entry["deliveryDate"], delisting_us / 1000, "{entry}");
    }
    let truth = exchange.ground_truth("ETHUSDT", delisting_us + 60_000_000);
    assert!(!truth.trades.is_empty());
    assert!(truth
        .trades
        .iter()
        .all(|trade| trade.time_us < delisting_us));
    exchange.shutdown().await;
}

/// A halt: `exchangeInfo` says `HALT` while it lasts, no trade inside it,
/// no kline opening inside it (ground truth
/// and REST alike), and REST `klines` counts its `limit` over the klines
/// that exist, so `limit=1` from inside the halt is the first kline after.
#[tokio::test]
async fn a_halt_trades_nothing_and_makes_no_kline() {
    let minute = 60_000_000;
    let halt_from = (SIM_START_US / minute + 1) * minute;
    let halt_until = halt_from + 3 * minute;
    let exchange = FakeExchange::start(fake_binance::FakeConfig {
        halts: vec![("BTCUSDT".to_owned(), halt_from, halt_until)],
        ..config(60.0)
    })
    .await
    .unwrap();
    let base = exchange.rest_base_url();
    let status = || async {
        let info = get(&base, "/api/v3/exchangeInfo?symbol=BTCUSDT")
            .await
            .json();
        info["symbols"][0]["status"].clone()
    };
    wait_until_async(Duration::from_secs(30), "inside the halt", || async {
        exchange.sim_now_us() >= halt_from + minute
    })
    .await;
    assert_eq!(status().await, "HALT", "exchangeInfo during the halt");
    let after_us = halt_until + 2 * minute;
    wait_until_async(Duration::from_secs(30), "past the halt", || async {
        exchange.sim_now_us() >= after_us
    })
    .await;
    assert_eq!(status().await, "TRADING", "exchangeInfo after the halt");
    let truth = exchange.ground_truth("BTCUSDT", after_us);
    assert!(truth
        .trades
        .iter()
        .all(|trade| !(halt_from..halt_until).contains(&trade.time_us)));
    assert!(truth.trades.iter().any(|trade| trade.time_us >= halt_until));
    let opens: Vec<i64> = truth.klines["1m"]
        .iter()
        .map(|kline| kline.open_time_us)
        .filter(|open| *open >= halt_from - minute)
        .collect();
    assert_eq!(opens[..2], [halt_from - minute, halt_until]);
    let klines = get(
        &exchange.rest_base_url(),
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={}&limit=1",
            halt_from / 1000
        ),
    )
    .await
    .json();
    assert_eq!(klines[0][0], halt_until / 1000, "{klines}");
    exchange.shutdown().await;
}

/// Futures take times in milliseconds only (reference 1.1: "treat futures
/// times as ms"): the same instant in microseconds is a time thousands of
/// years ahead, so it selects nothing, where spot reads either.
#[tokio::test]
async fn futures_read_request_times_as_milliseconds_only() {
    for (market, path, answers_micros) in [
        (fake_binance::Market::Spot, "/api/v3", true),
        (fake_binance::Market::UsdM, "/fapi/v1", false),
    ] {
        let exchange = FakeExchange::start(fake_binance::FakeConfig {
            market,
            ..config(60.0)
        })
        .await
        .unwrap();
        let base = exchange.rest_base_url();
        let from_ms = SIM_START_US / 1000 - 600_000;
        let rows = |body: serde_json::Value| body.as_array().unwrap().len();
        let in_ms = get(
            &base,
            &format!("{path}/aggTrades?symbol=BTCUSDT&startTime={from_ms}&limit=5"),
        )
        .await
        .json();
        assert_eq!(rows(in_ms), 5, "{market:?}: ms");
        let in_micros = get(
            &base,
            &format!(
                "{path}/aggTrades?symbol=BTCUSDT&startTime={}&limit=5",
                from_ms * 1000
            ),
        )
        .await
        .json();
        assert_eq!(
            rows(in_micros),
            if answers_micros { 5 } else { 0 },
            "{market:?}: µs"
        );
        exchange.shutdown().await;
    }
}

/// The precision each market writes a symbol's amounts with: spot eight
/// decimals; futures the model's tick and step decimals (USD-M BTCUSDT:
/// tick 0.01, step 0.00001; COIN-M BTCUSD_PERP: 0.1 and whole contracts),
/// quote sums with their sum on USD-M and eight on COIN-M, where they are
/// base-asset amounts and REST trades say `baseQty` (the real captures).
/// Every amount of `trades`, `historicalTrades`, `aggTrades` and `klines`
/// has exactly those decimals and the ground truth's value.
#[tokio::test]
async fn rest_amounts_carry_the_symbols_precision() {
    for (market, prefix, symbol, price, quantity, quote) in [
        (fake_binance::Market::Spot, "/api/v3", "BTCUSDT", 8, 8, 8),
        (fake_binance::Market::UsdM, "/fapi/v1", "BTCUSDT", 2, 5, 7),
        (
            fake_binance::Market::CoinM,
            "/dapi/v1",
            "BTCUSD_PERP",
            1,
            0,
            8,
        ),
    ] {
        let exchange = FakeExchange::start(fake_binance::FakeConfig {
            market,
            symbols: vec![symbol.to_owned()],
            api_keys: vec!["test-key".to_owned()],
            ..config(60.0)
        })
        .await
        .unwrap();
        let base = exchange.rest_base_url();
        let query =
            |endpoint: &str, rest: &str| format!("{prefix}/{endpoint}?symbol={symbol}&{rest}");
        let trades = get(&base, &query("trades", "limit=50")).await.json();
        let historical = get_with(
            &base,
            &query("historicalTrades", "limit=50"),
            &[("X-MBX-APIKEY", "test-key")],
        )
        .await
        .json();
        let aggs = get(&base, &query("aggTrades", "limit=50")).await.json();
        let klines = get(&base, &query("klines", "interval=1m&limit=20"))
            .await
            .json();
        let truth = exchange.ground_truth(symbol, exchange.sim_now_us());
        let label = format!("{market:?}");

        let mut n_trades = 0;
        for row in trades
            .as_array()
            .unwrap()
            .iter()
            .chain(historical.as_array().unwrap())
        {
            let want = truth
                .trades
                .iter()
                .find(|trade| trade.id == row["id"].as_i64().unwrap())
                .expect("a served trade is in the truth");
            assert_amount(&row["price"], price, &want.price, &label);
            assert_amount(&row["qty"], quantity, &want.quantity, &label);
            let quote_key = if market == fake_binance::Market::CoinM {
                assert!(row.get("quoteQty").is_none(), "{label}: {row}");
                "baseQty"
            } else {
                "quoteQty"
            };
            let quote_qty = row[quote_key].as_str().unwrap();
            assert_eq!(
                crate::support::decimals_of(quote_qty),
                quote,
                "{label}: {row}"
            );
            n_trades += 1;
        }
        assert_eq!(n_trades, 100, "{label}");
        for row in aggs.as_array().unwrap() {
            let want = truth
                .agg_trades
                .iter()
                .find(|agg| agg.id == row["a"].as_i64().unwrap())
                .expect("a served aggTrade is in the truth");
            assert_amount(&row["p"], price, &want.price, &label);
            assert_amount(&row["q"], quantity, &want.quantity, &label);
            if market == fake_binance::Market::UsdM {
                assert_amount(&row["nq"], quantity, &want.quantity, &label);
            }
        }
        let mut n_klines = 0;
        for row in klines.as_array().unwrap() {
            let Some(want) = truth.klines["1m"]
                .iter()
                .find(|kline| kline.open_time_us == row[0].as_i64().unwrap() * 1000)
            else {
                continue; // the kline still open
            };
            for (index, truth_value, decimals) in [
                (1, &want.open, price),
                (2, &want.high, price),
                (3, &want.low, price),
                (4, &want.close, price),
                (5, &want.volume, quantity),
                (7, &want.quote_volume, quote),
                (9, &want.taker_buy_base_volume, quantity),
                (10, &want.taker_buy_quote_volume, quote),
            ] {
                assert_amount(
                    &row[index],
                    decimals,
                    truth_value,
                    &format!("{label} [{index}]"),
                );
            }
            n_klines += 1;
        }
        assert!(n_klines >= 19, "{label}: {n_klines} closed klines");
        exchange.shutdown().await;
    }
}

/// Futures `exchangeInfo` as the real answers (`BINANCE_FUTURES.0`,
/// `BINANCE_DELIVERY.0`): their own `rateLimits` (the configured weight
/// limit first, no `RAW_REQUESTS`), `pricePrecision` and
/// `quantityPrecision`, COIN-M `contractSize` (100 for BTC, 10 for the
/// others), filters in the symbol's precision, each symbol with the real
/// answers' keys and no spot key. Spot keeps its own.
#[tokio::test]
async fn futures_exchange_info_has_the_real_rate_limits_and_precisions() {
    let weight = |limit: u32| serde_json::json!({"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit});
    let orders = |interval: &str, number: u32, limit: u32| serde_json::json!({"rateLimitType": "ORDERS", "interval": interval, "intervalNum": number, "limit": limit});
    let cases = [
        (
            fake_binance::Market::UsdM,
            "/fapi/v1",
            vec!["BTCUSDT", "ETHUSDT"],
            serde_json::json!([
                weight(2400),
                orders("MINUTE", 1, 1200),
                orders("SECOND", 10, 300)
            ]),
        ),
        (
            fake_binance::Market::CoinM,
            "/dapi/v1",
            vec!["BTCUSD_PERP", "ETHUSD_PERP"],
            serde_json::json!([weight(2400), orders("MINUTE", 1, 1200)]),
        ),
    ];
    for (market, prefix, symbols, rate_limits) in cases {
        let exchange = FakeExchange::start(fake_binance::FakeConfig {
            market,
            symbols: symbols.iter().map(|symbol| symbol.to_string()).collect(),
            limits: Limits {
                weight_limit_per_minute: 2400,
                ..relaxed_limits()
            },
            ..config(1.0)
        })
        .await
        .unwrap();
        let info = get(&exchange.rest_base_url(), &format!("{prefix}/exchangeInfo"))
            .await
            .json();
        assert_eq!(info["rateLimits"], rate_limits, "{market:?}");
        let entries = info["symbols"].as_array().unwrap();
        // The keys of the real answers' first symbol (BTCUSDT in
        // `rest/cryptofeed/BINANCE_FUTURES.0`, BTCUSD_PERP in
        // `BINANCE_DELIVERY.0` of `../shared/data/real`): futures keys,
        // none of spot's (`isSpotTradingAllowed`, `permissionSets`, ...).
        let real_keys: &[&str] = match market {
            fake_binance::Market::UsdM => &[
                "symbol",
                "pair",
                "contractType",
                "deliveryDate",
                "onboardDate",
                "status",
                "maintMarginPercent",
                "requiredMarginPercent",
                "baseAsset",
                "quoteAsset",
                "marginAsset",
                "pricePrecision",
                "quantityPrecision",
                "baseAssetPrecision",
                "quotePrecision",
                "underlyingType",
                "underlyingSubType",
                "settlePlan",
                "triggerProtect",
                "liquidationFee",
                "marketTakeBound",
                "filters",
                "orderTypes",
                "timeInForce",
            ],
            _ => &[
                "symbol",
                "pair",
                "contractType",
                "deliveryDate",
                "onboardDate",
                "contractStatus",
                "contractSize",
                "marginAsset",
                "maintMarginPercent",
                "requiredMarginPercent",
                "baseAsset",
                "quoteAsset",
                "pricePrecision",
                "quantityPrecision",
                "baseAssetPrecision",
                "quotePrecision",
                "equalQtyPrecision",
                "maxMoveOrderLimit",
                "triggerProtect",
                "underlyingType",
                "underlyingSubType",
                "filters",
                "orderTypes",
                "timeInForce",
                "liquidationFee",
                "marketTakeBound",
            ],
        };
        let real_keys: std::collections::BTreeSet<&str> = real_keys.iter().copied().collect();
        for entry in entries {
            let keys: std::collections::BTreeSet<&str> = entry
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, real_keys, "{market:?} {entry}");
        }
        let top: Vec<&str> = info
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let usdm_only = ["futuresType", "assets"];
        assert_eq!(
            usdm_only.iter().all(|key| top.contains(key)),
            market == fake_binance::Market::UsdM,
            "{top:?}"
        );
        let first = &entries[0];
        if market == fake_binance::Market::UsdM {
            // BTCUSDT: tick 0.01, step 0.00001.
            assert_eq!(
                (&first["pricePrecision"], &first["quantityPrecision"]),
                (&2.into(), &5.into())
            );
            assert_eq!(first["filters"][0]["tickSize"], "0.01");
            assert_eq!(first["filters"][0]["minPrice"], "0.01");
            assert_eq!(first["filters"][1]["stepSize"], "0.00001");
            assert_eq!(first["filters"][1]["minQty"], "0.00001");
            assert!(entries
                .iter()
                .all(|entry| entry.get("contractSize").is_none()));
        } else {
            // BTCUSD_PERP as the real one: tick 0.1, whole contracts.
            assert_eq!(
                (&first["pricePrecision"], &first["quantityPrecision"]),
                (&1.into(), &0.into())
            );
            assert_eq!(first["filters"][0]["tickSize"], "0.1");
            assert_eq!(first["filters"][1]["stepSize"], "1");
            assert_eq!(
                (&first["baseAsset"], &first["quoteAsset"]),
                (&"BTC".into(), &"USD".into())
            );
            let sizes: Vec<&Value> = entries.iter().map(|entry| &entry["contractSize"]).collect();
            assert_eq!(sizes, [&Value::from(100), &Value::from(10)]);
        }
        exchange.shutdown().await;
    }
    let spot = FakeExchange::start(config(1.0)).await.unwrap();
    let info = get(&spot.rest_base_url(), "/api/v3/exchangeInfo")
        .await
        .json();
    let types: Vec<&Value> = info["rateLimits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|limit| &limit["rateLimitType"])
        .collect();
    assert_eq!(
        types,
        ["REQUEST_WEIGHT", "ORDERS", "ORDERS", "RAW_REQUESTS"]
    );
    assert!(info["symbols"][0].get("pricePrecision").is_none());
    assert_eq!(info["symbols"][0]["filters"][1]["stepSize"], "0.00001000");
    spot.shutdown().await;
}

/// Futures have no `1s` klines (reference 4.4): REST `klines` refuses the
/// interval as any unknown one (400, -1120); spot serves it.
#[tokio::test]
async fn futures_refuse_one_second_klines() {
    for (market, path, served) in [
        (fake_binance::Market::Spot, "/api/v3", true),
        (fake_binance::Market::UsdM, "/fapi/v1", false),
        (fake_binance::Market::CoinM, "/dapi/v1", false),
    ] {
        let symbol = if market == fake_binance::Market::CoinM {
            "BTCUSD_PERP"
        } else {
            "BTCUSDT"
        };
        let exchange = FakeExchange::start(fake_binance::FakeConfig {
            market,
            symbols: vec![symbol.to_owned()],
            ..config(1.0)
        })
        .await
        .unwrap();
        let answer = get(
            &exchange.rest_base_url(),
            &format!("{path}/klines?symbol={symbol}&interval=1s&limit=5"),
        )
        .await;
        if served {
            assert_eq!(answer.status, 200, "{market:?}: {}", answer.body);
            assert_eq!(answer.json().as_array().unwrap().len(), 5);
        } else {
            assert_eq!(answer.status, 400, "{market:?}");
            assert_eq!(
                answer.json(),
                serde_json::json!({"code": -1120, "msg": "Invalid interval."}),
                "{market:?}"
            );
        }
        exchange.shutdown().await;
    }
}
