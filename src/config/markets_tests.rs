//! Tests of the per-market tables: defaults from the reference, the
//! precedence of a market's table over `[connection]`, each market's own
//! limits, and the API key source (issue 15).

use super::validate::{is_dated_contract, validate_fill};
use super::*;

const SPOT_ONLY_NAMES: &str = r#"
[markets.spot]
symbols = ["BTCUSDT"]
streams = ["trade"]
"#;

const USDM_ONLY_NAMES: &str = r#"
[markets.usdm]
symbols = ["BTCUSDT", "ETHUSDT"]
streams = ["trade", "aggTrade", "kline_1m"]
"#;

fn error_of(text: &str) -> String {
    match Config::from_toml(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(error) => error.to_string(),
    }
}

fn market(config: &Config, market: Market) -> &MarketConfig {
    config
        .markets
        .iter()
        .find(|market_config| market_config.market == market)
        .expect("market configured")
}

#[test]
fn a_table_with_only_symbols_and_streams_records_the_real_exchange() {
    let config = Config::from_toml(SPOT_ONLY_NAMES).expect("valid without URLs");
    let spot = market(&config, Market::Spot);
    assert_eq!(spot.ws_url, "wss://stream.binance.com:9443");
    assert_eq!(spot.rest_url, "https://api.binance.com");
    assert_eq!(spot.connection.dead_after, Duration::from_secs(30));
    assert_eq!(spot.connection.max_control_per_sec, 2);
    assert_eq!(spot.streams_per_connection, 200);

    let config = Config::from_toml(USDM_ONLY_NAMES).expect("valid without URLs");
    let usdm = market(&config, Market::UsdM);
    assert_eq!(usdm.ws_url, "wss://fstream.binance.com");
    assert_eq!(usdm.rest_url, "https://fapi.binance.com");
    // Futures ping every 3 minutes: a link is dead after 4.5 without a frame.
    assert_eq!(usdm.connection.dead_after, Duration::from_secs(270));
    assert_eq!(usdm.connection.max_control_per_sec, 5);
    assert_eq!(usdm.streams_per_connection, 200);
    assert_eq!(usdm.api_key.env, "BINANCE_API_KEY");
    assert_eq!(usdm.api_key.file, None);
}

#[test]
fn several_markets_run_in_one_daemon_each_with_its_own_numbers() {
    let text = format!("{SPOT_ONLY_NAMES}{USDM_ONLY_NAMES}");
    let config = Config::from_toml(&text).expect("valid");
    assert_eq!(config.markets.len(), 2);
    assert_ne!(
        market(&config, Market::Spot).connection.dead_after,
        market(&config, Market::UsdM).connection.dead_after
    );
    let fill = validate_fill(&RawFill::default()).expect("default fill");
    let counters = std::sync::Arc::new(crate::metrics::Counters::default());
    let spot_rest = market(&config, Market::Spot)
        .rest_options(&fill, counters.clone())
        .expect("options");
    let usdm_rest = market(&config, Market::UsdM)
        .rest_options(&fill, counters)
        .expect("options");
    assert_eq!(spot_rest.weight_limit.limit, 6000);
    assert_eq!(usdm_rest.weight_limit.limit, 2400);
}

#[test]
fn a_market_table_wins_over_connection_which_wins_over_the_default() {
    let text = format!(
        "[connection]\ndead_after_ms = 1500\nmax_control_per_sec = 3\n{SPOT_ONLY_NAMES}{USDM_ONLY_NAMES}max_control_per_sec = 8\n"
    );
    let config = Config::from_toml(&text).expect("valid");
    let spot = market(&config, Market::Spot);
    let usdm = market(&config, Market::UsdM);
    assert_eq!(spot.connection.dead_after, Duration::from_millis(1500));
    assert_eq!(usdm.connection.dead_after, Duration::from_millis(1500));
    assert_eq!(spot.connection.max_control_per_sec, 3);
    assert_eq!(usdm.connection.max_control_per_sec, 8);
}

#[test]
fn each_market_is_held_to_its_own_limits_and_the_error_names_the_key() {
    // 8 control frames a second are fine on futures (10), not on spot (5).
    let message = error_of(&format!("{SPOT_ONLY_NAMES}max_control_per_sec = 8\n"));
    assert!(
        message.contains("markets.spot.max_control_per_sec") && message.contains("between 1 and 4"),
        "{message}"
    );
    let message = error_of(&format!(
        "[connection]\nmax_control_per_sec = 5\n{SPOT_ONLY_NAMES}"
    ));
    assert!(
        message.contains("connection.max_control_per_sec"),
        "{message}"
    );
    // 1024 streams per connection are spot's limit; futures get the safe 200.
    assert!(
        Config::from_toml(&format!("{SPOT_ONLY_NAMES}streams_per_connection = 1024\n")).is_ok()
    );
    let message = error_of(&format!("{USDM_ONLY_NAMES}streams_per_connection = 201\n"));
    assert!(
        message.contains("markets.usdm.streams_per_connection") && message.contains("200"),
        "{message}"
    );
    let message = error_of(&USDM_ONLY_NAMES.replace("kline_1m", "kline_1s"));
    assert!(
        message.contains("markets.usdm.streams") && message.contains("kline_1s"),
        "{message}"
    );
    let message = error_of(&format!("{USDM_ONLY_NAMES}dead_after_ms = 0\n"));
    assert!(message.contains("markets.usdm.dead_after_ms"), "{message}");
    let message = error_of(&format!("{USDM_ONLY_NAMES}api_key_env = \"MY KEY\"\n"));
    assert!(message.contains("markets.usdm.api_key_env"), "{message}");
    let message = error_of(&format!(
        "{USDM_ONLY_NAMES}ws_url = \"https://fstream.binance.com\"\n"
    ));
    assert!(message.contains("markets.usdm.ws_url"), "{message}");
}

#[test]
fn coinm_records_perpetuals_and_dated_contracts() {
    let coinm = r#"
[markets.coinm]
symbols = ["BTCUSD_PERP", "ETHUSD_PERP"]
streams = ["trade", "aggTrade", "kline_1m"]
"#;
    let config = Config::from_toml(coinm).expect("perpetuals are recorded");
    let market_config = market(&config, Market::CoinM);
    assert_eq!(market_config.ws_url, "wss://dstream.binance.com");
    assert_eq!(market_config.rest_url, "https://dapi.binance.com");
    assert_eq!(
        market_config.connection.dead_after,
        Duration::from_secs(270)
    );
    // A dated contract is recorded until its delivery (recorder/delivery.rs).
    let config = Config::from_toml(&coinm.replace("ETHUSD_PERP", "BTCUSD_260327"))
        .expect("dated contracts are recorded");
    assert_eq!(
        market(&config, Market::CoinM).symbols[1].to_string(),
        "BTCUSD_260327"
    );
    // A spot symbol with an underscore and digits is not judged.
    assert!(!is_dated_contract("BTCUSD_PERP") && is_dated_contract("ETHUSD_251226"));
}

#[test]
fn binance_us_has_its_own_hosts_and_spot_shapes() {
    let config = Config::from_toml(&SPOT_ONLY_NAMES.replace("[markets.spot]", "[markets.us]"))
        .expect("valid without URLs");
    let us = market(&config, Market::Us);
    assert_eq!(us.ws_url, "wss://stream.binance.us:9443");
    assert_eq!(us.rest_url, "https://api.binance.us");
    // Its 2023 documentation's pings every 3 minutes, not spot's 20 s.
    assert_eq!(us.connection.dead_after, Duration::from_secs(270));
    let fill = validate_fill(&RawFill::default()).expect("default fill");
    let options = us
        .rest_options(
            &fill,
            std::sync::Arc::new(crate::metrics::Counters::default()),
        )
        .expect("options");
    assert_eq!(
        options.weight_limit.limit, 1200,
        "the safe guess until exchangeInfo"
    );
}

#[test]
fn the_api_key_comes_from_its_file_or_variable_and_is_never_shown() {
    let scratch = tempfile::tempdir().expect("scratch");
    let path = scratch.path().join("key");
    fs::write(&path, "  abcDEF123-secret\n").expect("key file");
    let text = format!(
        "{USDM_ONLY_NAMES}api_key_file = {:?}\napi_key_env = \"BINANCE_RECORDER_TEST_UNSET_VARIABLE\"\n",
        path.display().to_string()
    );
    let config = Config::from_toml(&text).expect("valid");
    let usdm = market(&config, Market::UsdM);
    let key = usdm.api_key.resolve().expect("readable").expect("a key");
    assert_eq!(key, ApiKey::new("abcDEF123-secret").expect("valid key"));
    assert!(
        !format!("{key:?}").contains("secret"),
        "Debug hides the key"
    );
    assert!(
        !format!("{usdm:?}").contains("secret"),
        "the config never holds it"
    );

    // No file, a variable that is not set: no key, not an error.
    let text = format!("{USDM_ONLY_NAMES}api_key_env = \"BINANCE_RECORDER_TEST_UNSET_VARIABLE\"\n");
    let config = Config::from_toml(&text).expect("valid");
    assert_eq!(
        market(&config, Market::UsdM)
            .api_key
            .resolve()
            .expect("no error"),
        None
    );

    // A named file that cannot be read is an error naming the key, not the value.
    fs::remove_file(&path).expect("removed");
    let text = format!(
        "{USDM_ONLY_NAMES}api_key_file = {:?}\n",
        path.display().to_string()
    );
    let config = Config::from_toml(&text).expect("valid");
    let message = market(&config, Market::UsdM)
        .api_key
        .resolve()
        .expect_err("unreadable")
        .to_string();
    assert!(message.contains("markets.usdm.api_key_file"), "{message}");

    // A key a header cannot carry is refused without showing it.
    fs::write(&path, "two words").expect("key file");
    let message = market(&config, Market::UsdM)
        .api_key
        .resolve()
        .expect_err("not a header value")
        .to_string();
    assert!(
        message.contains("markets.usdm.api_key_file") && !message.contains("two words"),
        "{message}"
    );
}
