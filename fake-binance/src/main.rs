//! `fake-binance`: runs the fake exchange until Ctrl-C and prints its URLs.

// No unsafe code: the fake has no need for it, and a memory bug in the test
// exchange would show up as a recorder failure that is not the recorder's.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fake_binance::{
    ChaosConfig, FakeConfig, FakeExchange, FirehoseConfig, Limits, Market, ReplayConfig,
};

#[derive(Debug, Parser)]
#[command(
    name = "fake-binance",
    about = "A fake Binance spot exchange on 127.0.0.1 (streams, REST, faults, replay)"
)]
struct Arguments {
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Comma-separated upper-case symbols (ignored with --replay).
    #[arg(long, value_delimiter = ',', default_value = "BTCUSDT,ETHUSDT,BNBUSDT")]
    symbols: Vec<String>,
    /// Seed of the market model and of chaos.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Taker orders per simulated second per symbol.
    #[arg(long, default_value_t = 2.0)]
    orders_per_sec: f64,
    /// Minutes of history before the start that REST serves.
    #[arg(long, default_value_t = 120)]
    history_minutes: u64,
    /// Simulated start, epoch ms (default: now).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Replay these files (captures or CSVs) instead of the model.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// With --replay: start the simulated clock this many simulated seconds
    /// before the first event, so a client can subscribe before data flows.
    #[arg(long, default_value_t = 0)]
    replay_lead_in_secs: u64,
    /// Random faults per minute (chaos mode); off when absent.
    #[arg(long)]
    chaos_per_minute: Option<f64>,
    /// The market to imitate: `spot`, `usdm` (USD-M futures: routed
    /// paths, futures shapes and limits, `/fapi/v1`) or `us` (Binance.US).
    #[arg(long, default_value = "spot")]
    market: String,
    /// An API key `historicalTrades` accepts on USD-M (read from this
    /// environment variable, never from the command line).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Firehose mode (benchmarks): send this many pre-serialised aggTrade
    /// frames of the symbols, round robin, to a connection subscribed to all
    /// their `@aggTrade` streams, as fast as it reads; REST serves the model.
    #[arg(long)]
    firehose_frames: Option<u64>,
    /// Firehose: stop after this many real seconds from the first frame.
    #[arg(long, default_value_t = 600.0)]
    firehose_max_secs: f64,
    /// Firehose: frames per second (default: as fast as the client reads).
    #[arg(long)]
    firehose_rate: Option<u64>,
    /// Firehose: exchange time between consecutive frames (all symbols),
    /// µs; the first frame is at the simulated start.
    #[arg(long, default_value_t = 1000)]
    firehose_step_us: i64,
    /// Fixed ports (0 = any free port).
    #[arg(long, default_value_t = 0)]
    ws_port: u16,
    #[arg(long, default_value_t = 0)]
    rest_port: u16,
    #[arg(long, default_value_t = 0)]
    control_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    let market = match arguments.market.as_str() {
        "spot" => Market::Spot,
        "usdm" => Market::UsdM,
        "us" => Market::Us,
        "coinm" => Market::CoinM,
        other => anyhow::bail!("--market {other:?}: spot, usdm, coinm or us"),
    };
    let api_keys = arguments
        .api_key_env
        .as_deref()
        .and_then(|name| std::env::var(name).ok())
        .into_iter()
        .collect();
    let mut config = FakeConfig {
        market,
        limits: Limits::for_market(market),
        api_keys,
        seed: arguments.seed,
        speed: arguments.speed,
        symbols: arguments
            .symbols
            .iter()
            .map(|symbol| symbol.trim().to_ascii_uppercase())
            .collect(),
        mean_orders_per_sec: arguments.orders_per_sec,
        history: Duration::from_secs(arguments.history_minutes * 60),
        ..FakeConfig::default()
    };
    if let Some(start_ms) = arguments.start_ms {
        config.sim_start_us = start_ms * 1000;
    }
    if !arguments.replay.is_empty() {
        config.replay = Some(ReplayConfig {
            files: arguments.replay.clone(),
            lead_in: Duration::from_secs(arguments.replay_lead_in_secs),
        });
    }
    if let Some(per_minute) = arguments.chaos_per_minute {
        config.chaos = Some(ChaosConfig {
            seed: arguments.seed,
            mean_faults_per_minute: per_minute,
            faults: Vec::new(),
        });
    }
    if let Some(frames) = arguments.firehose_frames {
        anyhow::ensure!(
            arguments.firehose_max_secs.is_finite() && arguments.firehose_max_secs > 0.0,
            "--firehose-max-secs must be a positive number of seconds"
        );
        config.firehose = Some(FirehoseConfig {
            frames,
            max_duration: Duration::from_secs_f64(arguments.firehose_max_secs),
            rate_per_sec: arguments.firehose_rate,
            step_us: arguments.firehose_step_us,
        });
    }
    let exchange = FakeExchange::start_on(
        config,
        [
            arguments.ws_port,
            arguments.rest_port,
            arguments.control_port,
        ],
    )
    .await
    .context("starting the fake exchange")?;
    println!("ws={}", exchange.ws_base_url());
    println!("rest={}", exchange.rest_base_url());
    println!("control={}", exchange.control_url());
    println!("symbols={}", exchange.symbols().join(","));
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    exchange.shutdown().await;
    Ok(())
}
