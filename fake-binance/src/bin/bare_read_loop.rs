//! The floor the recorder is measured against (issue 14): a bare loop that
//! reads combined-stream aggTrade frames from a WebSocket and parses each
//! into a borrowed struct, nothing else (no WAL, no state, no Parquet).
//!
//! `scripts/bench` runs it against the fake's firehose beside the full
//! daemon, and reads the one JSON line it prints:
//!
//! ```text
//! bare-read-loop --ws ws://127.0.0.1:PORT --symbols BTCUSDT,ETHUSDT --frames 5000000
//! {"frames":5000000,"secs":3.1,"cpu_ticks":305,"vm_hwm_kb":9000}
//! ```
//!
//! (`cpu_ticks`: utime + stime from the first frame to the last, in
//! `SC_CLK_TCK` ticks.) Without `--ws` it starts an in-process firehose of
//! `--frames` (default 1,000,000) over 10 symbols, which then shares its CPU.
//!
//! Built only with the `bare-read-loop` feature
//! (`cargo build --release --workspace --bins --features
//! fake-binance/bare-read-loop`),
//! so the test suite never builds it; see fake-binance/Cargo.toml.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

/// The wire shape of a spot aggTrade, borrowed from the frame.
#[derive(Deserialize)]
struct Combined<'a> {
    #[serde(borrow)]
    stream: &'a str,
    #[serde(borrow)]
    data: AggTrade<'a>,
}

#[derive(Deserialize)]
struct AggTrade<'a> {
    #[serde(rename = "E")]
    event_time: i64,
    #[serde(rename = "s", borrow)]
    symbol: &'a str,
    #[serde(rename = "a")]
    agg_trade_id: i64,
    #[serde(rename = "p", borrow)]
    price: &'a str,
    #[serde(rename = "q", borrow)]
    quantity: &'a str,
    #[serde(rename = "f")]
    first_trade_id: i64,
    #[serde(rename = "l")]
    last_trade_id: i64,
    #[serde(rename = "T")]
    trade_time: i64,
    #[serde(rename = "m")]
    is_buyer_maker: bool,
}

struct Arguments {
    ws: Option<String>,
    symbols: Vec<String>,
    frames: u64,
}

fn parse_arguments() -> Arguments {
    let mut arguments = Arguments {
        ws: None,
        symbols: (0..10).map(|index| format!("SYM{index}USDT")).collect(),
        frames: 1_000_000,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--ws" => arguments.ws = words.next(),
            "--symbols" => {
                arguments.symbols = words
                    .next()
                    .expect("--symbols needs a value")
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--frames" => {
                arguments.frames = words
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--frames needs a count")
            }
            other => panic!("unknown argument {other:?}: --ws URL, --symbols A,B, --frames N"),
        }
    }
    arguments
}

/// utime + stime of this process, in clock ticks (`/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// VmHWM of this process in kB (`/proc/self/status`).
fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn read_loop(ws_base_url: &str, symbols: &[String], n_frames: u64) -> (Duration, u64, u64) {
    let url = format!("{ws_base_url}/stream?timeUnit=MICROSECOND");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|error| panic!("connect {url}: {error}"));
    let streams: Vec<String> = symbols
        .iter()
        .map(|symbol| format!("{}@aggTrade", symbol.to_ascii_lowercase()))
        .collect();
    let subscribe = serde_json::json!({"method": "SUBSCRIBE", "params": streams, "id": 1});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .expect("send SUBSCRIBE");
    let mut n_parsed = 0u64;
    let mut checksum = 0i64;
    let mut started: Option<(Instant, u64)> = None;
    while n_parsed < n_frames {
        let message = match socket.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => panic!("read: {error}"),
            None => panic!("the fake closed after {n_parsed} frames"),
        };
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Combined<'_>>(text.as_str()) else {
            // The reply to SUBSCRIBE; the clock starts at the first frame.
            continue;
        };
        if started.is_none() {
            started = Some((Instant::now(), cpu_ticks()));
        }
        let trade = frame.data;
        checksum = checksum
            .wrapping_add(trade.agg_trade_id)
            .wrapping_add(trade.event_time ^ trade.trade_time)
            .wrapping_add(trade.first_trade_id - trade.last_trade_id)
            .wrapping_add((trade.price.len() + trade.quantity.len()) as i64)
            .wrapping_add((frame.stream.len() + trade.symbol.len()) as i64)
            .wrapping_add(i64::from(trade.is_buyer_maker));
        n_parsed += 1;
    }
    std::hint::black_box(checksum);
    let (started_at, ticks_at_start) = started.expect("at least one frame");
    (started_at.elapsed(), cpu_ticks() - ticks_at_start, n_parsed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arguments = parse_arguments();
    let in_process = match &arguments.ws {
        Some(_) => None,
        None => {
            let config = fake_binance::FakeConfig {
                symbols: arguments.symbols.clone(),
                mean_orders_per_sec: 0.001,
                history: Duration::from_secs(60),
                firehose: Some(fake_binance::FirehoseConfig {
                    frames: arguments.frames,
                    ..fake_binance::FirehoseConfig::default()
                }),
                ..fake_binance::FakeConfig::default()
            };
            Some(
                fake_binance::FakeExchange::start(config)
                    .await
                    .expect("fake exchange starts"),
            )
        }
    };
    let ws_base_url = match (&arguments.ws, &in_process) {
        (Some(url), _) => url.clone(),
        (None, Some(exchange)) => exchange.ws_base_url(),
        (None, None) => unreachable!("an in-process fake is started without --ws"),
    };
    let (elapsed, ticks, n_parsed) =
        read_loop(&ws_base_url, &arguments.symbols, arguments.frames).await;
    println!(
        "{}",
        serde_json::json!({
            "frames": n_parsed,
            "secs": elapsed.as_secs_f64(),
            "cpu_ticks": ticks,
            "vm_hwm_kb": vm_hwm_kb(),
        })
    );
    if let Some(exchange) = in_process {
        eprintln!(
            "bare read loop: {:.0} frames/s (in-process firehose: the fake shares this process's CPU)",
            n_parsed as f64 / elapsed.as_secs_f64()
        );
        exchange.shutdown().await;
    }
}
