//! `binance-recorder`: wiring only. Arguments, config, tracing, signals,
//! run, exit code; everything else lives in the library.

// No unsafe code anywhere: the recorder parses untrusted bytes from the
// network and the disk, and memory safety must not depend on review.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use binance_recorder::config::{Config, LogFormat};
use binance_recorder::domain::{Hour, Market, StreamKind, Symbol};
use binance_recorder::metrics::Counters;
use binance_recorder::recorder;
use binance_recorder::recorder::backfill::HoleList;
use binance_recorder::status::LiveStatus;
use binance_recorder::verify;

/// Records Binance market data to sealed hourly Parquet files.
#[derive(Parser)]
#[command(version, about)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record the configured streams until SIGTERM or SIGINT.
    Run {
        /// The config file (see the shipped config.toml).
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Fill the holes that sealed files declare (their `unfilled` metadata)
    /// from REST and replace the files, while no recorder runs on the dataset.
    /// Prints what it filled and what is still open; exits 0 when no hole
    /// REST may fill is left, 1 when some are, 2 when it could not run.
    Backfill {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// First hour to look at, e.g. 2026-01-01T00 (UTC); all when absent.
        #[arg(long, value_parser = parse_hour)]
        from: Option<Hour>,
        /// Last hour to look at (inclusive).
        #[arg(long, value_parser = parse_hour)]
        to: Option<Hour>,
        /// Fill exactly the holes of this file (what `verify --json` wrote),
        /// and no other.
        #[arg(long)]
        holes: Option<PathBuf>,
    },
    /// Check that the dataset is complete and as DATASET.md says: every
    /// file readable, of the contract's schema, its metadata true to its
    /// rows, no hour, id or kline missing unless declared. Prints a table
    /// (and writes JSON with --json); exits 0 clean, 1 not clean, 2 when it
    /// could not run. Reads sealed files only: it may run beside a recorder.
    Verify(VerifyArguments),
    /// What the recorder is doing: per stream its state, last event age,
    /// rows held, last sealed hour and the holes of the last day, from the
    /// running daemon's /status (metrics.listen) and the data and WAL
    /// directories (those alone when the daemon is stopped).
    Status {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Print JSON for machines instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and print what it would record.
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct VerifyArguments {
    /// The config file whose `storage.data_dir` is checked (default
    /// config.toml when --root is not given).
    #[arg(long, conflicts_with = "root")]
    config: Option<PathBuf>,
    /// The dataset's root folder (what `storage.data_dir` names), or a
    /// bucket, `s3://bucket/prefix` or `az://container/prefix` (what
    /// `storage.destination` names; the client is configured from the
    /// environment: AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP and the
    /// credentials; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ENDPOINT,
    /// AZURE_ALLOW_HTTP and the credentials).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Only this market (spot, usdm, coinm, us).
    #[arg(long, value_parser = parse_market)]
    market: Option<Market>,
    /// Only this stream (trade, aggTrade, kline_1m...).
    #[arg(long, value_parser = parse_stream)]
    stream: Option<StreamKind>,
    /// Only this symbol (BTCUSDT).
    #[arg(long, value_parser = parse_symbol)]
    symbol: Option<Symbol>,
    /// First hour checked, e.g. 2026-11-23T00 (UTC).
    #[arg(long, value_parser = parse_hour)]
    from: Option<Hour>,
    /// Last hour checked (inclusive).
    #[arg(long, value_parser = parse_hour)]
    to: Option<Hour>,
    /// Also write the report as JSON to this file (its `holes` list is
    /// what `backfill --holes` takes).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Official data.binance.vision files (zip or CSV; trades, aggTrades,
    /// klines) to reconcile with the dataset by key: rows missing on either
    /// side and values that differ are reported. The stream is read from
    /// each file's name; --market, --stream and --symbol override it.
    #[arg(long, num_args = 1..)]
    against: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    match arguments.command {
        Command::Run { config } => run(config),
        Command::Backfill {
            config,
            from,
            to,
            holes,
        } => backfill(config, from, to, holes),
        Command::Verify(arguments) => verify(arguments),
        Command::Status { config, json } => status(config, json),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(config) => {
                for market in &config.markets {
                    let streams: Vec<String> =
                        market.streams.iter().map(ToString::to_string).collect();
                    let symbols: Vec<String> =
                        market.symbols.iter().map(ToString::to_string).collect();
                    println!(
                        "{}: {} x {}",
                        market.market,
                        symbols.join(","),
                        streams.join(",")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
    }
}

fn parse_market(text: &str) -> Result<Market, String> {
    Market::from_name(text).ok_or_else(|| format!("{text:?} is not spot, usdm, coinm or us"))
}

fn parse_stream(text: &str) -> Result<StreamKind, String> {
    StreamKind::from_name(text)
        .ok_or_else(|| format!("{text:?} is not a stream like trade, aggTrade, kline_1m"))
}

fn parse_symbol(text: &str) -> Result<Symbol, String> {
    Symbol::new(text).map_err(|error| error.to_string())
}

fn parse_hour(text: &str) -> Result<Hour, String> {
    chrono::NaiveDateTime::parse_from_str(&format!("{text}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .map(|time| Hour::containing(time.and_utc().timestamp_micros()))
        .map_err(|_| format!("{text:?} is not an hour like 2026-01-01T00"))
}

/// Loads the config and starts logging; `Err` is the exit code.
fn load_and_log(config_path: &Path) -> Result<Config, ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return Err(ExitCode::from(2));
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => subscriber.with_ansi(ansi).init(),
        LogFormat::Json => subscriber.json().init(),
    }
    Ok(config)
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once: the log goes to stderr (the journal under systemd).
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(arguments: VerifyArguments) -> ExitCode {
    let could_not_run = ExitCode::from(verify::report::EXIT_COULD_NOT_RUN);
    let root = match arguments.root {
        Some(root) => root,
        None => {
            let config_path = arguments
                .config
                .unwrap_or_else(|| PathBuf::from("config.toml"));
            match Config::load(&config_path) {
                Ok(config) => config.data_dir,
                Err(error) => {
                    eprintln!("error: {error}");
                    return could_not_run;
                }
            }
        }
    };
    let selection = verify::Selection {
        market: arguments.market,
        kind: arguments.stream,
        symbol: arguments.symbol.clone(),
        from: arguments.from,
        to: arguments.to,
    };
    // A bucket is downloaded (narrowed by the selection) and verified as a folder.
    let mut _downloaded = None;
    let root_text = root.to_string_lossy().into_owned();
    let root = if binance_recorder::upload::fetch::is_remote(&root_text) {
        let partitions: Vec<String> = [
            arguments.market.map(|market| format!("market={market}")),
            arguments
                .stream
                .map(|kind| format!("stream={}", kind.path_name())),
            arguments
                .symbol
                .as_ref()
                .map(|symbol| format!("symbol={symbol}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match binance_recorder::upload::fetch::download_dataset(&root_text, &partitions) {
            Ok((scratch, n_files)) => {
                eprintln!("{root_text}: {n_files} sealed files downloaded to verify");
                let path = scratch.path().to_path_buf();
                _downloaded = Some(scratch);
                path
            }
            Err(error) => {
                eprintln!("error: {error}");
                return could_not_run;
            }
        }
    } else {
        root
    };
    let report = match verify::verify(&root, &selection) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return could_not_run;
        }
    };
    print!("{}", report.render_table());
    // The comparison with official archives, printed after the table.
    let mut against_exit = 0;
    let mut against_json = None;
    if !arguments.against.is_empty() {
        let overrides = binance_recorder::reconcile::StreamOverride {
            market: arguments.market,
            symbol: arguments.symbol.clone(),
            kind: arguments.stream,
        };
        match binance_recorder::reconcile::reconcile_paths(&root, &arguments.against, &overrides) {
            Ok(reports) => {
                println!();
                match binance_recorder::reconcile::print_reports(&reports, &mut std::io::stdout()) {
                    Ok(code) => against_exit = code,
                    Err(error) => {
                        eprintln!("error: cannot print the reconciliation: {error}");
                        return could_not_run;
                    }
                }
                against_json = serde_json::from_str::<serde_json::Value>(
                    &binance_recorder::reconcile::reports_json(&reports),
                )
                .ok();
            }
            Err(error) => {
                eprintln!("error: {error}");
                return could_not_run;
            }
        }
    }
    if let Some(json_path) = arguments.json {
        let mut json = report.to_json();
        if let (Some(object), Some(against)) = (json.as_object_mut(), against_json) {
            object.insert("against".to_owned(), against);
        }
        let text = serde_json::to_string_pretty(&json).expect("a report always serialises");
        if let Err(error) = std::fs::write(&json_path, text + "\n") {
            eprintln!("error: cannot write {}: {error}", json_path.display());
            return could_not_run;
        }
    }
    ExitCode::from(report.exit_code().max(against_exit))
}

fn backfill(
    config_path: PathBuf,
    from: Option<Hour>,
    to: Option<Hour>,
    holes: Option<PathBuf>,
) -> ExitCode {
    let could_not_run = ExitCode::from(2);
    let config = match load_and_log(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let hole_list = match holes.as_deref().map(HoleList::read).transpose() {
        Ok(list) => list,
        Err(error) => {
            eprintln!("error: {error:#}");
            return could_not_run;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                // With a destination: hours deleted locally are read back
                // first, and what was resealed is uploaded after.
                recorder::backfill::restore_from_destination(
                    &config,
                    from,
                    to,
                    hole_list.as_ref(),
                )
                .await
                .context("storage.destination: cannot read sealed files back")?;
                let summary = recorder::backfill::backfill(
                    &config,
                    from,
                    to,
                    hole_list.as_ref(),
                    Arc::new(Counters::default()),
                )
                .await?;
                if let Some(upload) = &config.upload {
                    let synced = binance_recorder::upload::sync::upload_unsettled(upload, &config.data_dir)
                        .await
                        .context("storage.destination: cannot upload the backfilled files")?;
                    eprintln!(
                        "{}: {} files uploaded, {} kept the bucket's more complete object, {} left for the daemon's next start",
                        upload.destination_url, synced.n_uploaded, synced.n_kept_remote, synced.n_failed
                    );
                }
                Ok(summary)
            })
        });
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            error!("{error:#}");
            return could_not_run;
        }
    };
    print!("{}", summary.render());
    if summary.holes_remain() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn status(config_path: PathBuf, json: bool) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let live = config.metrics.listen.and_then(|address| {
        let host = if address.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            address.ip()
        };
        let url = format!(
            "http://{}/status",
            std::net::SocketAddr::new(host, address.port())
        );
        binance_recorder::binance::ensure_crypto_provider();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .build()
                .ok()?;
            client
                .get(&url)
                .send()
                .await
                .ok()?
                .json::<LiveStatus>()
                .await
                .ok()
        })
    });
    let now_us = chrono::Utc::now().timestamp_micros();
    let report = binance_recorder::status::build(&config, live.as_ref(), now_us);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", binance_recorder::status::render_table(&report));
    }
    ExitCode::SUCCESS
}

fn run(config_path: PathBuf) -> ExitCode {
    let config = match load_and_log(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };

    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let _signals = watch_signals(shutdown.clone())?;
                info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), "binance-recorder starting");
                // On a worker like the connection tasks, not on this thread:
                // a frame sent to an idle recorder then wakes it on the
                // sender's own worker, not across threads.
                let recording =
                    tokio::spawn(recorder::run(config, Arc::new(Counters::default()), shutdown));
                match recording.await {
                    Ok(result) => result,
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    Err(error) => Err(anyhow::anyhow!("the recorder task ended: {error}")),
                }
            })
        });
    exit_code(result)
}

/// SIGTERM, SIGINT and SIGHUP cancel `shutdown`; a second signal exits at
/// once (the WAL already holds every acknowledged frame). SIGHUP is an
/// orderly stop, not a reload: nothing of the config can change under a
/// running recorder without a restart (systemd restarts it; the WAL replays).
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut count = 0;
            for signal in signals.forever() {
                count += 1;
                if count == 1 {
                    info!(signal, "stop requested");
                    shutdown.cancel();
                } else {
                    eprintln!("second stop signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(handle)
}
