//! USD-M futures end to end against the fake serving USD-M (issue 15):
//! routed WebSocket paths, futures event shapes, milliseconds only, the
//! futures ping timing, REST under `/fapi/v1` with its own weights and
//! limit, `historicalTrades` behind an API key; and a stream on the wrong
//! route noticed, counted and moved to the other route.

use std::path::{Path, PathBuf};
use std::time::Duration;

use binance_recorder::binance::rest::REASON_NO_API_KEY;
use binance_recorder::domain::{
    Hour, Market, Row, Source, StreamKey, StreamKind, Symbol, TimeUs, UnfilledRange,
    MICROS_PER_MINUTE,
};
use binance_recorder::recorder::state::REASON_NOT_SERVED;
use fake_binance::{FakeConfig, FakeExchange, Fault, Limits};

use crate::support::*;

const USDM_SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const STREAMS: [&str; 3] = ["trade", "aggTrade", "kline_1m"];
/// What the fake accepts and the recorder reads from its key file; a test
/// greps the data directory for it.
pub(crate) const API_KEY: &str = "fake-usdm-key-7f3a9c";

fn kinds() -> [StreamKind; 3] {
    [StreamKind::Trade, StreamKind::AggTrade, minute_klines()]
}

pub(crate) fn usdm_key(symbol: &str, kind: StreamKind) -> StreamKey {
    StreamKey {
        market: Market::UsdM,
        symbol: Symbol::new(symbol).expect("valid symbol"),
        kind,
    }
}

/// The fake as USD-M ([`usdm_fake_config`]) started, and a scratch
/// directory for the recorder.
async fn start_usdm_fake_and_scratch(trade_on_market: bool) -> (FakeExchange, tempfile::TempDir) {
    let fake = FakeExchange::start(usdm_fake_config(trade_on_market))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    (fake, scratch)
}

/// `market`'s limits, but with pings every 2 s of real time (the real
/// intervals would outlast the tests).
pub(crate) fn limits_pinging_every_2s(market: fake_binance::Market) -> Limits {
    Limits {
        ping_interval: Duration::from_secs(2),
        ..Limits::for_market(market)
    }
}

/// The fake as USD-M at 240x: the futures limits (10 messages a second,
/// 200 streams, 2,400 weight a minute, 10-minute pong deadline) but pings
/// every 2 s of real time (3 minutes would outlast the test). Half spot's
/// order rate: USD-M REST serves 4 times fewer trades per minute of weight
/// (500 a page for 20, against 1,000 for 25 of 6,000), and at 240x a real
/// minute of weight must fill four simulated hours.
fn usdm_fake_config(trade_on_market: bool) -> FakeConfig {
    FakeConfig {
        market: fake_binance::Market::UsdM,
        symbols: USDM_SYMBOLS
            .iter()
            .map(|symbol| symbol.to_string())
            .collect(),
        limits: limits_pinging_every_2s(fake_binance::Market::UsdM),
        api_keys: vec![API_KEY.to_owned()],
        usdm_trade_on_market: trade_on_market,
        mean_orders_per_sec: 0.25,
        ..fake_config(240.0)
    }
}

/// A `[markets.usdm]` table pointing at `fake`, with `extra` keys in it,
/// `fill` keys in `[fill]` and `connection` keys in `[connection]`; the
/// rest as [`recorder_toml`] writes it.
pub(crate) fn usdm_toml(
    fake: &FakeExchange,
    root: &Path,
    extra: &str,
    fill: &str,
    connection: &str,
) -> String {
    market_recorder_toml(
        fake,
        root,
        "usdm",
        &USDM_SYMBOLS,
        &STREAMS,
        &format!(
            "
[connection]
backoff_initial_ms = 50
backoff_max_ms = 500
{connection}

[fill]
weight_share = 0.9
{fill}
"
        ),
        &format!(
            "api_key_env = \"BINANCE_RECORDER_TEST_NO_SUCH_VARIABLE\"
{extra}
"
        ),
    )
}

/// Writes [`API_KEY`] to a key file under `root` and returns the
/// `api_key_file = "..."` line naming it, for a market table.
pub(crate) fn api_key_file_line(root: &Path) -> String {
    let path = root.join("usdm-api-key");
    std::fs::write(&path, format!("{API_KEY}\n")).expect("key file written");
    format!("api_key_file = {:?}", path.display().to_string())
}

/// [`usdm_toml`] with the key file, a patient fill deadline and
/// `connection` keys in `[connection]`.
fn usdm_toml_with_key(fake: &FakeExchange, root: &Path, connection: &str) -> String {
    usdm_toml(
        fake,
        root,
        &api_key_file_line(root),
        &format!("deadline_secs = {PATIENT_DEADLINE_SECS}"),
        connection,
    )
}

/// [`usdm_toml_with_key`], recording only BTCUSDT's trades.
pub(crate) fn usdm_btcusdt_trades_toml(fake: &FakeExchange, root: &Path) -> String {
    usdm_toml_with_key(fake, root, "")
        .replace(
            "symbols = [\"BTCUSDT\", \"ETHUSDT\"]",
            "symbols = [\"BTCUSDT\"]",
        )
        .replace(
            "streams = [\"trade\", \"aggTrade\", \"kline_1m\"]",
            "streams = [\"trade\"]",
        )
}

fn hour_files(root: &Path, hour: Hour) -> Vec<(StreamKey, PathBuf)> {
    let mut files = Vec::new();
    for symbol in USDM_SYMBOLS {
        for kind in kinds() {
            let key = usdm_key(symbol, kind);
            let path = file_path(root, &key, hour);
            files.push((key, path));
        }
    }
    files
}

async fn wait_for_sealed(files: &[(StreamKey, PathBuf)], within: Duration, what: &str) {
    wait_until(within, what, || {
        files.iter().all(|(_, path)| is_sealed(path))
    })
    .await;
}

/// A USD-M trade file against the truth: every row equals its truth trade
/// (values, `trade_type` on stream rows, no best match); a truth trade with
/// no row must be a non-market print (REST serves market trades only) and
/// lie in a range the file declares as not served by the exchange. Returns
/// the non-market prints stored, by type.
fn assert_usdm_trades_match_truth(
    path: &Path,
    truth: &fake_binance::GroundTruth,
    hour: Hour,
) -> std::collections::BTreeMap<String, usize> {
    let label = path.display();
    let rows = binance_recorder::parquet_out::read_hour_file(path, StreamKind::Trade)
        .expect("sealed file readable");
    let by_id: std::collections::BTreeMap<i64, _> = rows
        .iter()
        .map(|row| match row {
            Row::Trade(trade) => (trade.trade_id, trade),
            other => panic!("{label}: not a trade row: {other:?}"),
        })
        .collect();
    let unfilled: Vec<UnfilledRange> =
        serde_json::from_str(&metadata(path)["unfilled"]).expect("unfilled is a JSON list");
    let mut stored_specials = std::collections::BTreeMap::new();
    let mut n_matched = 0;
    for want in truth
        .trades
        .iter()
        .filter(|trade| Hour::containing(trade.time_us) == hour)
    {
        let kind = want.trade_type.clone().expect("futures trades carry X");
        let Some(row) = by_id.get(&want.id) else {
            assert_ne!(kind, "MARKET", "{label}: market trade {} missing", want.id);
            assert!(
                unfilled
                    .iter()
                    .any(|range| range.reason == REASON_NOT_SERVED
                        && range.from.is_some_and(|from| from <= want.id)
                        && range.to.is_some_and(|to| to >= want.id)),
                "{label}: {kind} print {} neither stored nor declared not served: {unfilled:?}",
                want.id
            );
            continue;
        };
        n_matched += 1;
        assert_eq!(row.price.to_string(), want.price, "{label}: {}", want.id);
        assert_eq!(
            row.quantity.to_string(),
            want.quantity,
            "{label}: {}",
            want.id
        );
        assert_eq!(row.trade_time, want.time_us, "{label}: {}", want.id);
        assert_eq!(
            row.is_buyer_maker, want.is_buyer_maker,
            "{label}: {}",
            want.id
        );
        assert_eq!(row.is_best_match, None, "{label}: {}", want.id);
        if row.source == Source::Ws {
            assert_eq!(
                row.trade_type.as_deref(),
                Some(kind.as_str()),
                "{label}: {}",
                want.id
            );
            assert_eq!(
                row.event_time,
                Some(want.event_time_us),
                "{label}: {}",
                want.id
            );
        }
        if kind != "MARKET" {
            *stored_specials.entry(kind).or_default() += 1;
        }
    }
    assert_eq!(
        n_matched,
        rows.len(),
        "{label}: rows the truth does not have"
    );
    stored_specials
}

/// No file under `directory` holds `needle`.
fn assert_nowhere_in(directory: &Path, needle: &str) {
    for path in walk_files(directory) {
        let bytes = std::fs::read(&path).expect("readable");
        assert!(
            !bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes()),
            "{} holds the API key",
            path.display()
        );
    }
}

/// The spine of USD-M: a whole hour of trade, aggTrade and kline_1m of two
/// symbols equals the fake's ground truth row by row, with events skipped
/// mid-hour filled through `/fapi/v1` (trades with the API key), the
/// hour before backfilled from its start, within the futures weight limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usdm_hours_equal_ground_truth_with_gaps_filled_through_fapi() {
    let (fake, scratch) = start_usdm_fake_and_scratch(false).await;
    let root = scratch.path();
    let config = usdm_toml_with_key(&fake, root, "");
    let recorder = RunningRecorder::start(&config);
    let first_hour = Hour::containing(SIM_START_US);
    let hour = first_hour.next();
    for minute in [10, 30] {
        let at = hour.start() + minute * MICROS_PER_MINUTE;
        wait_until(Duration::from_secs(60), "mid-hour", || {
            fake.sim_now_us() >= at
        })
        .await;
        fake.inject(Fault::SkipEvents { count: 30 });
    }
    let files: Vec<_> = hour_files(root, first_hour)
        .into_iter()
        .chain(hour_files(root, hour))
        .collect();
    wait_for_sealed(&files, Duration::from_secs(120), "both hours sealed").await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    eprintln!("recorder: {counters:?}\nfake: {fake_counters:?}");

    let until = hour.end() + MICROS_PER_MINUTE;
    for symbol in USDM_SYMBOLS {
        let truth = fake.ground_truth(symbol, until);
        assert!(
            truth.trades.len() > 500,
            "the model traded: {}",
            truth.trades.len()
        );
        for kind in kinds() {
            let key = usdm_key(symbol, kind);
            let path = file_path(root, &key, hour);
            let first = file_path(root, &key, first_hour);
            assert!(
                path.to_string_lossy().contains("market=usdm"),
                "{}",
                path.display()
            );
            if kind == StreamKind::Trade {
                // The stream delivers every print; REST (the hour before,
                // backfilled, and the skips) only the market ones.
                let stored = assert_usdm_trades_match_truth(&path, &truth, hour);
                for print in ["INSURANCE_FUND", "ADL", "NA"] {
                    assert!(
                        stored.get(print).is_some_and(|n| *n > 0),
                        "{print} stored: {stored:?}"
                    );
                }
                assert_usdm_trades_match_truth(&first, &truth, first_hour);
                continue;
            }
            // AggTrades are complete by `a`: no hole declared for the trade
            // ids their f..l chain skips (the non-market prints).
            assert_file_matches_truth_with_rest(&path, kind, &truth, hour);
            assert_eq!(metadata(&path)["unfilled"], "[]", "{}", path.display());
            assert_file_matches_truth_with_rest(&first, kind, &truth, first_hour);
            assert_eq!(metadata(&first)["unfilled"], "[]", "{}", first.display());
        }
    }
    assert_eq!(fake_counters.events_skipped, 60);
    assert!(counters.rows_filled > 0, "{counters:?}");
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    // The fake's USD-M limits were kept: routes right, key sent, weight
    // within 2,400 a minute, no 429 or 418, no rate-limit close.
    assert_eq!(
        fake_counters.ws_wrong_route_subscriptions, 0,
        "{fake_counters:?}"
    );
    assert_eq!(fake_counters.rest_api_key_refusals, 0, "{fake_counters:?}");
    assert_eq!(
        (
            fake_counters.rest_responses_429,
            fake_counters.rest_responses_418
        ),
        (0, 0),
        "{fake_counters:?}"
    );
    assert_eq!(fake_counters.ws_rate_limit_closes, 0, "{fake_counters:?}");
    assert!(
        fake_counters.rest_used_weight_max <= 2400,
        "{fake_counters:?}"
    );
    assert_eq!(
        fake_counters.rest_responses_400, 0,
        "no request the fake refused: {fake_counters:?}"
    );
    // The key is sent in a header and written nowhere.
    assert_nowhere_in(&root.join("data"), API_KEY);
    assert_nowhere_in(&root.join("wal"), API_KEY);
    fake.shutdown().await;
}

/// Without an API key, USD-M trade holes cannot be filled
/// (`historicalTrades` needs one): they are sealed as declared with that
/// reason, while aggTrade and kline holes of the same hour are filled.
/// `historicalTrades` is never called without the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usdm_trade_holes_without_an_api_key_are_declared_with_the_reason() {
    let (fake, scratch) = start_usdm_fake_and_scratch(false).await;
    let root = scratch.path();
    // The hour joined late needs a backfill from its start: REST only.
    let config = usdm_toml(&fake, root, "", "deadline_secs = 60", "");
    let recorder = RunningRecorder::start(&config);
    let first_hour = Hour::containing(SIM_START_US);
    let files = hour_files(root, first_hour);
    wait_for_sealed(&files, Duration::from_secs(90), "the first hour sealed").await;
    recorder.stop().await;
    for (key, path) in &files {
        let unfilled = metadata(path)["unfilled"].clone();
        if key.kind == StreamKind::Trade {
            assert!(
                unfilled.contains(REASON_NO_API_KEY),
                "{}: {unfilled}",
                path.display()
            );
        } else {
            assert_eq!(unfilled, "[]", "{}", path.display());
        }
    }
    assert_eq!(
        fake.counters().rest_api_key_refusals,
        0,
        "never asked without a key"
    );
    fake.shutdown().await;
}

/// The undocumented `@trade` moved to `/market` (the reference's ⚠): the
/// recorder subscribes it on `/public`, where it is acknowledged and then
/// silent, notices within the bound while aggTrade and klines deliver,
/// logs and counts each stream by name, moves the link to `/market` once,
/// and records the trades there; the hour after equals the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_on_the_wrong_route_is_counted_and_recorded_on_the_other() {
    let (fake, scratch) = start_usdm_fake_and_scratch(true).await;
    let root = scratch.path();
    // Silent past a second of real time (4 simulated minutes) while the
    // `/market` link delivers aggTrades and klines.
    let config = usdm_toml_with_key(&fake, root, "silent_after_min_ms = 1000");
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(30), "the route switched", || {
        recorder.counters().stream_route_switches >= 1
    })
    .await;
    let counters = recorder.counters();
    assert_eq!(
        counters.streams_subscribed_silent,
        USDM_SYMBOLS.len() as u64,
        "each trade stream counted once: {counters:?}"
    );
    assert!(fake.counters().ws_wrong_route_subscriptions >= USDM_SYMBOLS.len() as u64);
    let hour = Hour::containing(SIM_START_US).next();
    let files = hour_files(root, hour);
    wait_for_sealed(&files, Duration::from_secs(120), "the hour after sealed").await;
    let counters = recorder.stop().await;
    assert_eq!(
        counters.stream_route_switches, 1,
        "tried once, and it worked: {counters:?}"
    );
    let until = hour.end() + MICROS_PER_MINUTE;
    for symbol in USDM_SYMBOLS {
        let truth = fake.ground_truth(symbol, until);
        let path = file_path(root, &usdm_key(symbol, StreamKind::Trade), hour);
        // The trades missed while the link was silent come from REST (the
        // non-market prints among them are declared not served).
        assert_usdm_trades_match_truth(&path, &truth, hour);
    }
    fake.shutdown().await;
}

/// Once the trade streams delivered on the other route, that route is
/// theirs: a later link whose streams say nothing for a while (here a
/// halt of BTCUSDT, the link dropped as it starts) is not taken for one
/// on the wrong route and sent back where the trades never come. Before,
/// the quiet spell sent it back to `/public` for good, and nothing after
/// the halt was received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_delivered_is_kept_through_a_quiet_spell_after_a_reconnect() {
    let halt_from = SIM_START_US + 40 * MICROS_PER_MINUTE;
    let halt_until = halt_from + 20 * MICROS_PER_MINUTE;
    let fake = FakeExchange::start(FakeConfig {
        halts: vec![("BTCUSDT".to_owned(), halt_from, halt_until)],
        mean_orders_per_sec: 1.0,
        ..usdm_fake_config(true)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let config = usdm_btcusdt_trades_toml(&fake, scratch.path()).replace(
        "[connection]\n",
        "[connection]\nsilent_after_min_ms = 1000\n",
    );
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(30), "trades on the other route", || {
        let counters = recorder.counters();
        counters.stream_route_switches == 1 && counters.frames_durable > 20
    })
    .await;
    wait_until(Duration::from_secs(30), "the halt began", || {
        fake.sim_now_us() > halt_from + MICROS_PER_MINUTE
    })
    .await;
    fake.inject(Fault::DropConnections { abort: true });
    wait_until(Duration::from_secs(30), "the halt ended", || {
        fake.sim_now_us() > halt_until + 2 * MICROS_PER_MINUTE
    })
    .await;
    let after_halt = recorder.counters().frames_durable;
    wait_until(Duration::from_secs(20), "trades after the halt", || {
        recorder.counters().frames_durable > after_halt + 20
    })
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.stream_route_switches, 1, "{counters:?}");
    fake.shutdown().await;
}

/// The reference gives the combined wrapper's shape, not its bytes: a
/// fake writing every frame as Python's `json.dumps(sort_keys=True)` does
/// (spaces, `{"data": ..., "stream": ...}`) is recorded as the compact one
/// is. Every stream is heard on its route (no route switch, none counted
/// silent, no link replaced for silence), and the hour after the start is
/// the ground truth, all of it from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usdm_frames_with_spaces_and_sorted_keys_are_recorded_as_compact_ones() {
    let fake = FakeExchange::start(FakeConfig {
        json_style: fake_binance::JsonStyle::SpacedSortedKeys,
        ..usdm_fake_config(false)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    // Streams unheard or silent past a second of real time would be judged,
    // whatever the other links deliver past two seconds.
    let config = usdm_toml_with_key(
        &fake,
        root,
        "silent_after_min_ms = 1000\nsilent_after_max_ms = 2000",
    );
    let recorder = RunningRecorder::start(&config);
    let hour = Hour::containing(SIM_START_US).next();
    let files = hour_files(root, hour);
    wait_for_sealed(&files, Duration::from_secs(120), "the hour after sealed").await;
    let counters = recorder.stop().await;
    assert_eq!(
        (
            counters.stream_route_switches,
            counters.streams_subscribed_silent,
            counters.frames_quarantined
        ),
        (0, 0, 0),
        "{counters:?}"
    );
    assert!(counters.frames_received > 1000, "{counters:?}");
    let until = hour.end() + MICROS_PER_MINUTE;
    for symbol in USDM_SYMBOLS {
        let truth = fake.ground_truth(symbol, until);
        for kind in kinds() {
            let path = file_path(root, &usdm_key(symbol, kind), hour);
            if kind == StreamKind::Trade {
                assert_usdm_trades_match_truth(&path, &truth, hour);
            } else {
                assert_file_matches_truth_with_rest(&path, kind, &truth, hour);
            }
            let by_source: serde_json::Value =
                serde_json::from_str(&metadata(&path)["rows_by_source"]).expect("JSON");
            assert_eq!(by_source["rest"], 0, "{}: {by_source}", path.display());
        }
    }
    fake.shutdown().await;
}

/// One daemon records spot, USD-M, COIN-M (perpetuals) and Binance.US at
/// once, each from its own fake with its own limits: every market's files
/// of two whole hours equal its ground truth (Binance.US in milliseconds,
/// spot-shaped; COIN-M futures-shaped on `/dapi/v1`, unrouted), with
/// every market's links dropped and stalled in each hour and the holes filled
/// through that market's REST, under `market=spot|usdm|coinm|us`, with no
/// limit of any fake broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_records_spot_usdm_coinm_and_binance_us_at_once() {
    let spot = FakeExchange::start(FakeConfig {
        symbols: USDM_SYMBOLS
            .iter()
            .map(|symbol| symbol.to_string())
            .collect(),
        mean_orders_per_sec: 0.25,
        ..fake_config(240.0)
    })
    .await
    .expect("spot fake starts");
    let usdm = FakeExchange::start(usdm_fake_config(false))
        .await
        .expect("usdm fake starts");
    let us = FakeExchange::start(FakeConfig {
        market: fake_binance::Market::Us,
        symbols: vec!["BTCUSD".to_owned()],
        mean_orders_per_sec: 0.25,
        limits: limits_pinging_every_2s(fake_binance::Market::Us),
        ..fake_config(240.0)
    })
    .await
    .expect("us fake starts");
    let coinm = FakeExchange::start(FakeConfig {
        market: fake_binance::Market::CoinM,
        symbols: vec!["BTCUSD_PERP".to_owned()],
        mean_orders_per_sec: 0.25,
        limits: limits_pinging_every_2s(fake_binance::Market::CoinM),
        api_keys: vec![API_KEY.to_owned()],
        ..fake_config(240.0)
    })
    .await
    .expect("coinm fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let extra = api_key_file_line(root);
    let config = format!(
        "{}
[markets.spot]
ws_url = \"{}\"
rest_url = \"{}\"
symbols = [\"BTCUSDT\", \"ETHUSDT\"]
streams = [\"trade\", \"aggTrade\", \"kline_1m\"]
time_check_interval_secs = 1

[markets.us]
ws_url = \"{}\"
rest_url = \"{}\"
symbols = [\"BTCUSD\"]
streams = [\"trade\", \"aggTrade\", \"kline_1m\"]
time_check_interval_secs = 1

[markets.coinm]
ws_url = \"{}\"
rest_url = \"{}\"
symbols = [\"BTCUSD_PERP\"]
streams = [\"trade\", \"aggTrade\", \"kline_1m\"]
time_check_interval_secs = 1
{}
",
        usdm_toml(
            &usdm,
            root,
            &extra,
            &format!("deadline_secs = {PATIENT_DEADLINE_SECS}"),
            "",
        ),
        spot.ws_base_url(),
        spot.rest_base_url(),
        us.ws_base_url(),
        us.rest_base_url(),
        coinm.ws_base_url(),
        coinm.rest_base_url(),
        extra,
    );
    let recorder = RunningRecorder::start(&config);
    let hour = Hour::containing(SIM_START_US).next();
    let hours = [hour, hour.next()];
    // Two simulated hours; in each, every market's links are dropped, then
    // stalled losing what the stall held: each market's holes are filled
    // through its own REST.
    let faults = [
        (20, Fault::DropConnections { abort: false }),
        (
            40,
            Fault::Stall {
                duration_ms: 1_000,
                keep_backlog: false,
            },
        ),
    ];
    for (at_hour, (minute, fault)) in hours
        .iter()
        .flat_map(|hour| faults.iter().map(move |fault| (*hour, fault.clone())))
    {
        let at = at_hour.start() + minute * MICROS_PER_MINUTE;
        wait_until(Duration::from_secs(60), "mid-hour", || {
            spot.sim_now_us() >= at
        })
        .await;
        for fake in [&spot, &usdm, &us, &coinm] {
            fake.inject(fault.clone());
        }
    }
    let mut files: Vec<(StreamKey, Hour, PathBuf, &FakeExchange)> = Vec::new();
    for (market, fake, symbols) in [
        (Market::Spot, &spot, &USDM_SYMBOLS[..]),
        (Market::UsdM, &usdm, &USDM_SYMBOLS[..]),
        (Market::Us, &us, &["BTCUSD"][..]),
        (Market::CoinM, &coinm, &["BTCUSD_PERP"][..]),
    ] {
        for symbol in symbols {
            for kind in kinds() {
                let key = StreamKey {
                    market,
                    ..usdm_key(symbol, kind)
                };
                for hour in hours {
                    let path = file_path(root, &key, hour);
                    files.push((key.clone(), hour, path, fake));
                }
            }
        }
    }
    wait_until(
        Duration::from_secs(120),
        "every market's two hours sealed",
        || files.iter().all(|(_, _, path, _)| path.exists()),
    )
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");
    let until = hours[1].end() + MICROS_PER_MINUTE;
    for (key, hour, path, fake) in &files {
        let hour = *hour;
        assert!(
            path.to_string_lossy()
                .contains(&format!("market={}", key.market.name())),
            "{}",
            path.display()
        );
        let truth = fake.ground_truth(key.symbol.as_str(), until);
        if matches!(key.market, Market::UsdM | Market::CoinM) && key.kind == StreamKind::Trade {
            assert_usdm_trades_match_truth(path, &truth, hour);
            continue;
        }
        assert_file_matches_truth_with_rest(path, key.kind, &truth, hour);
        assert_eq!(metadata(path)["unfilled"], "[]", "{}", path.display());
    }
    for (name, fake, limit) in [
        ("spot", &spot, 6000),
        ("usdm", &usdm, 2400),
        ("us", &us, 1200),
        ("coinm", &coinm, 1200),
    ] {
        let counters = fake.counters();
        assert_eq!(
            (
                counters.rest_responses_429,
                counters.rest_responses_418,
                counters.ws_rate_limit_closes,
                counters.rest_responses_400,
            ),
            (0, 0, 0, 0),
            "{name}: {counters:?}"
        );
        // Each market's own limit and the configured share of it (0.9).
        assert!(
            counters.rest_used_weight_max <= limit * 9 / 10,
            "{name}: {counters:?}"
        );
    }
    // Every market's folders through the reader matrix (DATASET.md "How it
    // is read"): futures trades' `trade_type`, their null `is_best_match`,
    // COIN-M's `_PERP` partitions.
    let data = root.join("data");
    for market in [Market::Spot, Market::UsdM, Market::Us, Market::CoinM] {
        let expected = crate::end_to_end::expected_readings(&data, market, &kinds());
        crate::end_to_end::run_reader_matrix(&data, market, &expected, market.name()).await;
    }
    for fake in [spot, usdm, us, coinm] {
        fake.shutdown().await;
    }
}

/// The API key never shows: the daemon (the binary, every crate logging at
/// `trace`) fills the first USD-M hour's trades with it, and no log line,
/// data file or WAL segment holds it; the log says only that a key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_in_no_log_line_and_no_file() {
    let (fake, scratch) = start_usdm_fake_and_scratch(false).await;
    let root = scratch.path();
    let config = usdm_btcusdt_trades_toml(&fake, root);
    let config_path = root.join("recorder.toml");
    std::fs::write(&config_path, &config).expect("config written");
    let log_path = root.join("recorder.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let recorder = RecorderProcess::start_with_log(&config_path, root, "trace", log);
    let first_hour = Hour::containing(SIM_START_US);
    let path = file_path(root, &usdm_key("BTCUSDT", StreamKind::Trade), first_hour);
    wait_until(
        Duration::from_secs(90),
        "the first hour's trades sealed",
        || path.exists(),
    )
    .await;
    recorder.terminate().await;
    // Filled through historicalTrades, which the fake serves only with the key.
    assert_eq!(fake.counters().rest_api_key_refusals, 0);
    assert!(
        binance_recorder::parquet_out::read_hour_file(&path, StreamKind::Trade)
            .expect("readable")
            .iter()
            .any(|row| row.source() == Source::Rest),
        "the hour was backfilled from REST"
    );
    let log_text = std::fs::read_to_string(&log_path).expect("log readable");
    assert!(
        log_text.contains("api_key=true"),
        "the log says a key is there"
    );
    let n_http_lines = log_text
        .lines()
        .filter(|line| line.contains("reqwest") || line.contains("hyper"))
        .count();
    eprintln!(
        "log: {} lines, {n_http_lines} from the HTTP stack",
        log_text.lines().count()
    );
    assert!(n_http_lines > 0, "the HTTP stack logged at trace");
    assert!(!log_text.contains(API_KEY), "the log holds the key");
    assert_nowhere_in(&root.join("data"), API_KEY);
    assert_nowhere_in(&root.join("wal"), API_KEY);
    assert_nowhere_in(&root.join("quarantine"), API_KEY);
    fake.shutdown().await;
}

/// The COIN-M perpetual that trades on through the delivery tests.
const PERPETUAL: &str = "BTCUSD_PERP";
/// The dated COIN-M contract the delivery tests deliver.
const DATED: &str = "BTCUSD_260101";

/// The fake as COIN-M at 240x with [`PERPETUAL`] and [`DATED`], the latter
/// delivered at `delivery_us`; pings every 2 s of real time.
async fn start_coinm_with_a_dated_contract(delivery_us: TimeUs) -> FakeExchange {
    start_coinm(&[PERPETUAL, DATED], vec![(DATED.to_owned(), delivery_us)]).await
}

/// The fake as COIN-M at 240x listing `symbols`, with `deliveries`; pings
/// every 2 s of real time.
async fn start_coinm(symbols: &[&str], deliveries: Vec<(String, TimeUs)>) -> FakeExchange {
    FakeExchange::start(coinm_config(symbols, deliveries))
        .await
        .expect("coinm fake starts")
}

/// The configuration [`start_coinm`] starts the fake with.
fn coinm_config(symbols: &[&str], deliveries: Vec<(String, TimeUs)>) -> FakeConfig {
    FakeConfig {
        market: fake_binance::Market::CoinM,
        symbols: symbols.iter().map(|symbol| (*symbol).to_owned()).collect(),
        deliveries,
        mean_orders_per_sec: 0.25,
        limits: limits_pinging_every_2s(fake_binance::Market::CoinM),
        api_keys: vec![API_KEY.to_owned()],
        ..fake_config(240.0)
    }
}

/// A `[markets.coinm]` table pointing at `coinm` with [`PERPETUAL`] and
/// [`DATED`], the key file, a patient fill deadline and `market_extra`
/// lines after the key file line.
fn dated_contract_toml(coinm: &FakeExchange, root: &Path, market_extra: &str) -> String {
    coinm_toml(coinm, root, &[PERPETUAL, DATED], market_extra)
}

/// [`dated_contract_toml`] with `symbols` configured.
fn coinm_toml(coinm: &FakeExchange, root: &Path, symbols: &[&str], market_extra: &str) -> String {
    market_recorder_toml(
        coinm,
        root,
        "coinm",
        symbols,
        &STREAMS,
        &format!("\n[fill]\nweight_share = 0.9\ndeadline_secs = {PATIENT_DEADLINE_SECS}\n"),
        &format!("{}{market_extra}", api_key_file_line(root)),
    )
}

/// [`usdm_key`] on COIN-M.
fn coinm_key(symbol: &str, kind: StreamKind) -> StreamKey {
    StreamKey {
        market: Market::CoinM,
        ..usdm_key(symbol, kind)
    }
}

/// A quiet futures contract's kline stream, as the real captures show it
/// (`../shared/data/real/ws/cryptofeed`: an open kline sent again only
/// when a trade changed it, 10 to 23 s apart, though the reference gives
/// futures an update speed of 250 ms): its link, the market's only one, is
/// kept while the closes come, and its stream is not taken for one
/// subscribed but silent before its first close. At 20x a minute kline
/// closes every 3 s of real time, and with a floor of 1 s the old bound
/// (ten pushes of 250 ms) replaced the link between every two closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_futures_kline_link_is_kept_between_the_closes() {
    let coinm = FakeExchange::start(FakeConfig {
        mean_orders_per_sec: 0.002,
        ..FakeConfig {
            speed: 20.0,
            sim_start_us: sim_start_us(20.0),
            ..coinm_config(&[PERPETUAL], Vec::new())
        }
    })
    .await
    .expect("coinm fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = market_recorder_toml(
        &coinm,
        root,
        "coinm",
        &[PERPETUAL],
        &["kline_1m"],
        "\n[connection]\nsilent_after_min_ms = 1000\n",
        &api_key_file_line(root),
    );
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(40), "five kline frames", || {
        recorder.counters().frames_durable >= 5
    })
    .await;
    let counters = recorder.counters();
    assert_eq!(
        (
            counters.silent_links_replaced,
            counters.streams_subscribed_silent
        ),
        (0, 0),
        "{counters:?}"
    );
    assert_eq!(coinm.counters().ws_handshakes_accepted, 1);
    recorder.stop().await;
    coinm.shutdown().await;
}

/// A dated COIN-M contract delivered mid-run: recording of it ends
/// cleanly, other symbols unaffected. BTCUSD_260101 is delivered at
/// 02:00 (on the hour, as Binance delivers at 08:00 UTC) while
/// BTCUSD_PERP trades on: both symbols' files up to the delivery equal the
/// fake's ground truth, the delivery hour's files name the delivery, no
/// later hour of the contract is sealed or owed while the perpetual's
/// are, its streams are dropped without a silence alarm, and `verify`
/// is clean and names the delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dated_coinm_contract_delivered_mid_run_ends_cleanly_and_others_record_on() {
    let logs = LogCapture::install();
    let first_hour = Hour::containing(SIM_START_US);
    let delivery_hour = first_hour.next();
    let delivery_us = delivery_hour.end();
    let coinm = start_coinm_with_a_dated_contract(delivery_us).await;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = dated_contract_toml(&coinm, root, "");
    let config_path = root.join("recorder.toml");
    std::fs::write(&config_path, &config).expect("config written");
    let started = std::time::Instant::now();
    let recorder = RunningRecorder::start(&config);
    let after_delivery = delivery_hour.next();
    let mut wanted = Vec::new();
    for kind in kinds() {
        for hour in [first_hour, delivery_hour, after_delivery] {
            wanted.push((coinm_key(PERPETUAL, kind), hour));
        }
        for hour in [first_hour, delivery_hour] {
            wanted.push((coinm_key(DATED, kind), hour));
        }
    }
    // The perpetual's hour after the delivery seals once the exchange
    // clock is past it; the contract's would seal in the same pass.
    wait_until(Duration::from_secs(120), "the hours sealed", || {
        wanted
            .iter()
            .all(|(key, hour)| file_path(root, key, *hour).exists())
    })
    .await;
    // The link that carried both symbols was replaced by one without the
    // contract: one link up, not the old one counted on.
    wait_until(Duration::from_secs(10), "one link up", || {
        recorder.counters.links_up.get() == 1
    })
    .await;
    let counters = recorder.stop().await;
    let elapsed = started.elapsed();
    eprintln!(
        "recorder ran {elapsed:?}: {counters:?}\nfake: {:?}",
        coinm.counters()
    );
    assert_delivery_logged_once(&logs.text(), DATED, "2026-01-01T02:00:00.000000Z");

    let until = after_delivery.end() + MICROS_PER_MINUTE;
    assert_true_files_with_one_delivery(
        &coinm,
        root,
        &wanted,
        until,
        (DATED, delivery_hour, delivery_us),
    );
    // The contract traded up to its delivery and no more; the perpetual on.
    let dated_truth = coinm.ground_truth(DATED, until);
    assert!(
        dated_truth.trades.len() > 100,
        "{}",
        dated_truth.trades.len()
    );
    assert!(dated_truth
        .trades
        .iter()
        .all(|trade| trade.time_us < delivery_us));
    let perpetual_rows = binance_recorder::parquet_out::read_hour_file(
        &file_path(
            root,
            &coinm_key(PERPETUAL, StreamKind::AggTrade),
            after_delivery,
        ),
        StreamKind::AggTrade,
    )
    .expect("readable");
    assert!(perpetual_rows.len() > 100, "{}", perpetual_rows.len());
    // No hour after the delivery is sealed, or owed, for the contract.
    for kind in kinds() {
        let later = file_path(root, &coinm_key(DATED, kind), after_delivery);
        assert!(!later.exists(), "{} sealed", later.display());
    }
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    // Its quiet streams raised no alarm: no stream judged subscribed but
    // silent, no link replaced as silent.
    assert_eq!(counters.streams_subscribed_silent, 0, "{counters:?}");
    assert_eq!(counters.silent_links_replaced, 0, "{counters:?}");
    assert_eq!(counters.frames_quarantined, 0, "{counters:?}");

    // verify: nothing undeclared (trade hours declare only the non-market
    // prints REST does not serve), and the delivery named.
    let (success, table, report) = verify_json(&config_path).await;
    eprintln!("{table}");
    assert!(success, "{table}");
    assert_eq!(report["undeclared_problems"], 0, "{table}");
    for hole in report["holes"].as_array().expect("a list") {
        assert_eq!(hole["reason"], REASON_NOT_SERVED, "{hole}");
    }
    for stream in report["streams"].as_array().expect("a list") {
        let delivered = stream["symbol"] == DATED;
        assert_eq!(
            stream["delivered_at"],
            if delivered {
                serde_json::json!(delivery_us)
            } else {
                serde_json::Value::Null
            },
            "{stream}"
        );
    }
    assert!(
        table.contains("coinm BTCUSD_260101 trade: delivered at 2026-01-01T02:00:00"),
        "{table}"
    );
    coinm.shutdown().await;
}

/// Each of `wanted` equals the fake's ground truth up to `until` (the
/// aggTrade and kline files with nothing unfilled), and only the file of
/// `delivered`'s symbol and hour carries `delivered_at`, its time.
fn assert_true_files_with_one_delivery(
    coinm: &FakeExchange,
    root: &Path,
    wanted: &[(StreamKey, Hour)],
    until: TimeUs,
    delivered: (&str, Hour, TimeUs),
) {
    let (delivered_symbol, delivery_hour, delivery_us) = delivered;
    for (key, hour) in wanted {
        let path = file_path(root, key, *hour);
        let truth = coinm.ground_truth(key.symbol.as_str(), until);
        if key.kind == StreamKind::Trade {
            assert_usdm_trades_match_truth(&path, &truth, *hour);
        } else {
            assert_file_matches_truth_with_rest(&path, key.kind, &truth, *hour);
            assert_eq!(metadata(&path)["unfilled"], "[]", "{}", path.display());
        }
        let delivered_at = metadata(&path).get("delivered_at").cloned();
        let is_delivery_file = key.symbol.as_str() == delivered_symbol && *hour == delivery_hour;
        assert_eq!(
            delivered_at,
            is_delivery_file.then(|| delivery_us.to_string()),
            "{}",
            path.display()
        );
    }
}

/// The "contract delivered" line, once, naming the symbol and the time.
fn assert_delivery_logged_once(log: &str, symbol: &str, delivered_at: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("contract delivered"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(&format!("symbol={symbol}"))
            && lines[0].contains(&format!("delivered_at={delivered_at}")),
        "{}",
        lines[0]
    );
}

/// A delivery inside an hour (01:40; Binance delivers on the hour, but the
/// reference does not promise it): the delivery hour seals with the rows
/// up to the delivery, equal to the fake's ground truth, its coverage ends
/// at the delivery, and no kline, trade or aggTrade after it is declared
/// missing; `verify` is clean. The contract has its own connection
/// (`streams_per_connection = 3`), closed at the delivery: one link up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_inside_an_hour_seals_that_hour_up_to_the_delivery() {
    let logs = LogCapture::install();
    let delivery_hour = Hour::containing(SIM_START_US).next();
    let delivery_us = delivery_hour.start() + 40 * MICROS_PER_MINUTE;
    let coinm = start_coinm_with_a_dated_contract(delivery_us).await;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = dated_contract_toml(&coinm, root, "\nstreams_per_connection = 3");
    let config_path = root.join("recorder.toml");
    std::fs::write(&config_path, &config).expect("config written");
    let started = std::time::Instant::now();
    let recorder = RunningRecorder::start(&config);
    let wanted: Vec<StreamKey> = [PERPETUAL, DATED]
        .into_iter()
        .flat_map(|symbol| kinds().map(|kind| coinm_key(symbol, kind)))
        .collect();
    wait_until(Duration::from_secs(60), "the delivery hour sealed", || {
        wanted
            .iter()
            .all(|key| file_path(root, key, delivery_hour).exists())
    })
    .await;
    wait_until(Duration::from_secs(10), "one link up", || {
        recorder.counters.links_up.get() == 1
    })
    .await;
    let counters = recorder.stop().await;
    eprintln!(
        "recorder ran {:?}: {counters:?}\nfake: {:?}",
        started.elapsed(),
        coinm.counters()
    );
    assert_delivery_logged_once(&logs.text(), DATED, "2026-01-01T01:40:00.000000Z");

    let until = delivery_hour.end() + MICROS_PER_MINUTE;
    for key in &wanted {
        let path = file_path(root, key, delivery_hour);
        let truth = coinm.ground_truth(key.symbol.as_str(), until);
        if key.kind == StreamKind::Trade {
            assert_usdm_trades_match_truth(&path, &truth, delivery_hour);
        } else {
            assert_file_matches_truth_with_rest(&path, key.kind, &truth, delivery_hour);
            assert_eq!(metadata(&path)["unfilled"], "[]", "{}", path.display());
        }
        let dated = key.symbol.as_str() == DATED;
        let footer = metadata(&path);
        let coverage_to = if dated {
            delivery_us
        } else {
            delivery_hour.end()
        };
        assert_eq!(
            footer["coverage_to"],
            coverage_to.to_string(),
            "{}",
            path.display()
        );
        assert_eq!(
            footer.get("delivered_at").cloned(),
            dated.then(|| delivery_us.to_string()),
            "{}",
            path.display()
        );
    }
    // The contract's klines stop at the delivery, and it traded until then.
    let dated_klines = binance_recorder::parquet_out::read_hour_file(
        &file_path(root, &coinm_key(DATED, minute_klines()), delivery_hour),
        minute_klines(),
    )
    .expect("readable");
    assert_eq!(dated_klines.len(), 40);
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");

    let (success, table, report) = verify_json(&config_path).await;
    assert!(success, "{table}");
    assert_eq!(report["undeclared_problems"], 0, "{table}");
    // Nothing after the delivery is declared missing (trade hours declare
    // only the non-market prints REST does not serve, before it).
    for hole in report["holes"].as_array().expect("a list") {
        assert_eq!(hole["reason"], REASON_NOT_SERVED, "{hole}");
        assert!(
            hole["to_time"].as_i64().expect("a time") < delivery_us || hole["symbol"] != DATED,
            "{hole}"
        );
    }

    // `status` with the daemon stopped: the contract's streams show as
    // delivered, with the time, from its last files.
    let status = run_binary(vec![
        "status".into(),
        "--config".into(),
        config_path.display().to_string(),
    ])
    .await;
    let status_table = String::from_utf8_lossy(&status.stdout);
    for kind in STREAMS {
        let key = format!("coinm/{kind}/{DATED}");
        let cells: Option<Vec<&str>> = status_table
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&key.as_str()));
        assert_eq!(
            cells.as_ref().map(|cells| &cells[1..3]),
            Some(&["delivered", "2026-01-01T01:40Z"][..]),
            "{status_table}"
        );
    }

    // A file of the contract after its delivery should not exist: verify
    // says so.
    let stray_key = coinm_key(DATED, StreamKind::AggTrade);
    let stray_hour = delivery_hour.next();
    binance_recorder::parquet_out::write_hour_file(
        &root.join("data"),
        &binance_recorder::parquet_out::HourFile {
            key: stray_key,
            hour: stray_hour,
            rows: Vec::<Row>::new(),
            unfilled: Vec::new(),
            coverage_from: stray_hour.start(),
            coverage_to: stray_hour.end(),
            clock_offset_us: None,
            delivered_at: None,
            stopped_at: None,
        },
    )
    .expect("stray file written");
    let (success, table, report) = verify_json(&config_path).await;
    assert!(!success, "{table}");
    let kinds_found: Vec<&str> = report["problems"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|problem| problem["kind"].as_str())
        .collect();
    assert_eq!(kinds_found, vec!["after_delivery"], "{table}");
    coinm.shutdown().await;
}

/// A dated contract already delivered when the recorder starts is not
/// refused: the daemon records the other symbols, judges the contract
/// delivered from the start-up `exchangeInfo` (`DELIVERED`), owes none of
/// its hours (it delivered on the hour before the first one watched) and
/// drops its streams before any silence is judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dated_contract_the_exchange_no_longer_lists_is_skipped_not_refused() {
    // Delivered days before the fake's clock starts, and gone from its
    // exchangeInfo (`-1121 Invalid symbol`), while the config still names it.
    const UNLISTED: &str = "BTCUSD_251226";
    let coinm = start_coinm(&[PERPETUAL], Vec::new()).await;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = coinm_toml(&coinm, root, &[PERPETUAL, UNLISTED], "");
    let recorder = RunningRecorder::start(&config);
    let hour = Hour::containing(SIM_START_US).next();
    let wanted: Vec<_> = kinds()
        .into_iter()
        .map(|kind| (coinm_key(PERPETUAL, kind), hour))
        .collect();
    wait_until(
        Duration::from_secs(120),
        "the perpetual's hour sealed",
        || {
            wanted
                .iter()
                .all(|(key, hour)| is_sealed(&file_path(root, key, *hour)))
        },
    )
    .await;
    let counters = recorder.stop().await;
    let unlisted_files: Vec<_> = parquet_files(&root.join("data"))
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(UNLISTED))
        .collect();
    assert!(unlisted_files.is_empty(), "{unlisted_files:?}");
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    coinm.shutdown().await;
}

/// A perpetual delisted while the daemon runs: Binance announces it by
/// giving the perpetual a `deliveryDate`, days ahead, after the daemon
/// read `exchangeInfo` at its start. The periodic read
/// (`exchange_info_interval_secs`) learns it, and the recording of that
/// perpetual ends at the delisting as a delivered contract's does: its
/// delisting hour's files name it (the hours after are then not owed, as
/// the dated contract's test shows), while the other perpetual records
/// on. Without the periodic status read on a
/// market with no dated name, the delisting was noticed only at the next
/// start. Once the exchange lists it no more, a restart with the config
/// still naming it records on (before, "unknown to the exchange").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_perpetual_delisted_while_running_ends_its_recording_at_the_delisting() {
    const DELISTED: &str = "ETHUSD_PERP";
    let logs = LogCapture::install();
    let first_hour = Hour::containing(SIM_START_US);
    let delisting_hour = first_hour.next();
    let delisting_us = delisting_hour.end();
    let coinm = FakeExchange::start(FakeConfig {
        deliveries_announced: vec![(
            DELISTED.to_owned(),
            delisting_hour.start() + 20 * MICROS_PER_MINUTE,
        )],
        ..coinm_config(
            &[PERPETUAL, DELISTED],
            vec![(DELISTED.to_owned(), delisting_us)],
        )
    })
    .await
    .expect("coinm fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = coinm_toml(
        &coinm,
        root,
        &[PERPETUAL, DELISTED],
        "\nexchange_info_interval_secs = 1",
    );
    let recorder = RunningRecorder::start(&config);
    let mut wanted = Vec::new();
    for kind in kinds() {
        for symbol in [PERPETUAL, DELISTED] {
            for hour in [first_hour, delisting_hour] {
                wanted.push((coinm_key(symbol, kind), hour));
            }
        }
    }
    wait_until(Duration::from_secs(120), "the hours sealed", || {
        wanted
            .iter()
            .all(|(key, hour)| file_path(root, key, *hour).exists())
    })
    .await;
    let counters = recorder.stop().await;
    eprintln!("recorder: {counters:?}\nfake: {:?}", coinm.counters());
    assert_delivery_logged_once(&logs.text(), DELISTED, "2026-01-01T02:00:00.000000Z");
    assert_true_files_with_one_delivery(
        &coinm,
        root,
        &wanted,
        delisting_us + MICROS_PER_MINUTE,
        (DELISTED, delisting_hour, delisting_us),
    );
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    assert_eq!(counters.streams_subscribed_silent, 0, "{counters:?}");
    coinm.shutdown().await;

    // Later the exchange lists it no more: the next start does not refuse
    // the config still naming it (its last file says it was delisted).
    let later = FakeExchange::start(FakeConfig {
        sim_start_us: delisting_hour.next().end() + 10 * MICROS_PER_MINUTE,
        ..coinm_config(&[PERPETUAL], Vec::new())
    })
    .await
    .expect("coinm fake starts");
    let config = coinm_toml(&later, root, &[PERPETUAL, DELISTED], "");
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(30), "the check and frames", || {
        logs.text()
            .contains("symbol no longer listed by the exchange")
            && recorder.counters.frames_received.get() > 100
    })
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    later.shutdown().await;
}

/// A perpetual delisted while the daemon was down, whose files therefore
/// name no delisting: at the next start the exchange lists it no more. A
/// name this dataset recorded is no typo, so the start is not refused
/// (which would stop every other symbol until someone edits the config):
/// its recording ends at the exchange's clock as a delivered contract's
/// does, and the other perpetual records on. A name never recorded stays
/// an error naming it, as does a config none of whose names the exchange
/// lists (a wrong URL or market rather than every one delisted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_perpetual_delisted_while_the_daemon_was_down_ends_its_recording_not_the_start() {
    const DELISTED: &str = "ETHUSD_PERP";
    let logs = LogCapture::install();
    let first_hour = Hour::containing(SIM_START_US);
    let coinm = start_coinm(&[PERPETUAL, DELISTED], Vec::new()).await;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = coinm_toml(&coinm, root, &[PERPETUAL, DELISTED], "");
    let recorder = RunningRecorder::start(&config);
    let delisted_first = file_path(root, &coinm_key(DELISTED, StreamKind::AggTrade), first_hour);
    wait_until(Duration::from_secs(120), "the first hour sealed", || {
        delisted_first.exists()
    })
    .await;
    recorder.stop().await;
    coinm.shutdown().await;

    // Hours later the exchange lists it no more. Each start below gets an
    // exchange of its own: the fills a start owes for the hours since the
    // stop use the exchange's weight, which would hold the next start's
    // check back.
    let later_exchange = || async {
        FakeExchange::start(FakeConfig {
            sim_start_us: first_hour.start() + 3 * binance_recorder::domain::MICROS_PER_HOUR,
            ..coinm_config(&[PERPETUAL], Vec::new())
        })
        .await
        .expect("coinm fake starts")
    };
    // First, while no file names its delisting: the exchange knowing none
    // of the configured names is taken for a wrong URL or market, not for
    // all of them delisted; a name never recorded here is a typo. Both are
    // refused, naming the name.
    for (symbols, named) in [
        (&[DELISTED][..], DELISTED),
        (&[PERPETUAL, "XRPUSD_PERP"][..], "XRPUSD_PERP"),
    ] {
        let later = later_exchange().await;
        let config = coinm_toml(&later, root, symbols, "");
        let error = RunningRecorder::start(&config)
            .ended_by_itself(Duration::from_secs(60))
            .await
            .expect_err("the start is refused");
        assert!(
            format!("{error:#}").contains(&format!("unknown to the exchange: {named}")),
            "the error names it: {error:#}"
        );
        later.shutdown().await;
    }

    // Then with the other perpetual: the delisted one ends, the start goes on.
    let later = later_exchange().await;
    let config = coinm_toml(&later, root, &[PERPETUAL, DELISTED], "");
    let recorder = RunningRecorder::start(&config);
    wait_until(
        Duration::from_secs(60),
        "the check, the ending and frames",
        || {
            logs.text().contains("its files name no delisting")
                && recorder.counters.contracts_delivered.get() == 1
                && recorder.counters.frames_received.get() > 100
        },
    )
    .await;
    // A clean stop: the daemon was recording on, not ending in an error.
    let counters = recorder.stop().await;
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    assert!(delisted_first.exists(), "what was recorded stays");
    later.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dated_coinm_contract_delivered_before_the_start_is_skipped_not_refused() {
    let first_hour = Hour::containing(SIM_START_US);
    let coinm = start_coinm_with_a_dated_contract(first_hour.start()).await;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = dated_contract_toml(&coinm, root, "");
    let recorder = RunningRecorder::start(&config);
    let hours = [first_hour, first_hour.next()];
    let wanted: Vec<_> = kinds()
        .into_iter()
        .flat_map(|kind| hours.map(|hour| (coinm_key(PERPETUAL, kind), hour)))
        .collect();
    wait_until(
        Duration::from_secs(120),
        "the perpetual's hours sealed",
        || {
            wanted
                .iter()
                .all(|(key, hour)| file_path(root, key, *hour).exists())
        },
    )
    .await;
    let counters = recorder.stop().await;
    let until = hours[1].end() + MICROS_PER_MINUTE;
    let truth = coinm.ground_truth(PERPETUAL, until);
    for (key, hour) in &wanted {
        let path = file_path(root, key, *hour);
        if key.kind == StreamKind::Trade {
            assert_usdm_trades_match_truth(&path, &truth, *hour);
        } else {
            assert_file_matches_truth_with_rest(&path, key.kind, &truth, *hour);
            assert_eq!(metadata(&path)["unfilled"], "[]", "{}", path.display());
        }
    }
    let dated_files: Vec<_> = parquet_files(&root.join("data"))
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(DATED))
        .collect();
    assert!(dated_files.is_empty(), "{dated_files:?}");
    assert_eq!(counters.contracts_delivered, 1, "{counters:?}");
    assert_eq!(counters.streams_subscribed_silent, 0, "{counters:?}");
    assert_eq!(counters.silent_links_replaced, 0, "{counters:?}");
    coinm.shutdown().await;
}
