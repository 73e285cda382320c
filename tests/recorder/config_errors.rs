//! Bad config values stop the binary at once with a message naming the key.

use std::process::Command;

fn check_config(text: &str) -> (i32, String) {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let path = scratch.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    let shipped = include_str!("../../config.toml");
    let cases = [
        (
            shipped.replace("\"SOLUSDT\"", "\"solusdt\""),
            "markets.spot.symbols",
        ),
        (
            shipped.replace("\"kline_1m\"", "\"kline_7m\""),
            "markets.spot.streams",
        ),
        (
            shipped.replace("fsync = \"interval\"", "fsync = \"never\""),
            "wal.fsync",
        ),
        (
            shipped.replace("grace_ms = 10000", "grace_ms = -5"),
            "grace_ms",
        ),
        (
            shipped.replace("max_concurrent = 2", "max_concurrent = 2\nmax_parallel = 3"),
            "max_parallel",
        ),
        (
            shipped.replace("https://api.binance.com", "https://data-api.binance.vision"),
            "markets.spot.rest_url",
        ),
        (
            shipped.replace(
                "symbols = [\"BTCUSDT\", \"ETHUSDT\", \"SOLUSDT\"]",
                "symbols = []",
            ),
            "markets.spot.symbols",
        ),
        (
            shipped.replace("level = \"info\"", "level = \"loud!!==\""),
            "log.level",
        ),
        (
            shipped.replace("format = \"text\"", "format = \"xml\""),
            "log.format",
        ),
        (
            shipped.replace(
                "# destination = \"s3://my-bucket/binance\"",
                "destination = \"gs://my-bucket/binance\"",
            ),
            "storage.destination",
        ),
        (
            shipped.replace("# keep_local_hours = 48", "keep_local_hours = 48"),
            "storage.keep_local_hours",
        ),
        (
            shipped
                .replace(
                    "# destination = \"s3://my-bucket/binance\"",
                    "destination = \"s3://my-bucket/binance\"",
                )
                .replace("# keep_local_hours = 48", "keep_local_hours = 2"),
            "fill.declared_give_up_hours",
        ),
        (
            shipped
                .replace(
                    "# destination = \"s3://my-bucket/binance\"",
                    "destination = \"s3://my-bucket/binance\"",
                )
                .replace("# [storage.s3]", "[storage.s3]")
                .replace(
                    "# endpoint = \"https://minio.example.net:9000\"",
                    "endpoint = \"http://minio.example.net:9000\"\nallow_http = true",
                ),
            "storage.s3.allow_http",
        ),
    ];
    for (text, key) in cases {
        let (code, stderr) = check_config(&text);
        assert_eq!(code, 2, "exit code for {key}: {stderr}");
        assert!(stderr.contains(key), "message names {key}: {stderr}");
    }
}

/// Values past their upper bound used to be accepted and blow up later (a
/// huge `rotate_after_secs` overflowed an `Instant` in a connection task);
/// now the start refuses them, naming the key and the bound.
#[test]
fn out_of_bounds_values_exit_2_naming_the_key_and_the_bound() {
    let shipped = include_str!("../../config.toml");
    let cases = [
        (
            shipped.replace(
                "rotate_after_secs = 84600",
                "rotate_after_secs = 18446744073709551615",
            ),
            "connection.rotate_after_secs",
            "86400",
        ),
        (
            shipped.replace("\ndead_after_ms = 30000", "\ndead_after_ms = 86400000000"),
            "markets.spot.dead_after_ms",
            "3600000",
        ),
        (
            shipped.replace("declared_retry_secs = 600", "declared_retry_secs = 0"),
            "fill.declared_retry_secs",
            "604800",
        ),
        (
            shipped.replace("deadline_ms = 20000", "deadline_ms = 4000000000"),
            "shutdown.deadline_ms",
            "600000",
        ),
    ];
    for (text, key, bound) in cases {
        let (code, stderr) = check_config(&text);
        assert_eq!(code, 2, "exit code for {key}: {stderr}");
        assert!(stderr.contains(key), "message names {key}: {stderr}");
        assert!(stderr.contains(bound), "message names {bound}: {stderr}");
    }
}

#[test]
fn cleartext_urls_off_the_loopback_exit_2_unless_allowed() {
    let shipped = include_str!("../../config.toml");
    let cleartext_ws = shipped.replace("wss://stream.binance.com", "ws://stream.binance.com");
    let (code, stderr) = check_config(&cleartext_ws);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("markets.spot.ws_url"), "{stderr}");
    let cleartext_rest = shipped.replace("https://api.binance.com", "http://api.binance.com");
    let (code, stderr) = check_config(&cleartext_rest);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("markets.spot.rest_url"), "{stderr}");

    let allowed = cleartext_ws.replace("allow_insecure = false", "allow_insecure = true");
    let output = check_config_only(&allowed);
    assert!(output.status.success(), "allowed: {output:?}");
}

/// `check-config` validates without starting (no network, no directories).
fn check_config_only(text: &str) -> std::process::Output {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let path = scratch.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs")
}

#[test]
fn unwritable_data_directory_names_the_key() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let blocker = scratch.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let text = include_str!("../../config.toml")
        .replace("data/parquet", &format!("{}/parquet", blocker.display()))
        .replace("check_symbols = true", "check_symbols = false");
    let (code, stderr) = check_config(&text);
    assert_ne!(code, 0);
    assert!(stderr.contains("storage.data_dir"), "{stderr}");
}

#[test]
fn missing_config_file_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_binance-recorder"))
        .args(["run", "--config", "/nonexistent/config.toml"])
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/config.toml"));
}
