//! binance-recorder: records Binance market data (trade, aggTrade, kline
//! streams) into sealed hourly Parquet files, losing nothing it acknowledged.
//!
//! # Layout
//!
//! - [`config`]: the config file, validated into [`config::Config`].
//! - [`domain`]: markets, symbols, stream kinds, hours, exact decimals, rows.
//! - [`binance`]: what differs per market ([`binance::markets`]: spot,
//!   USD-M, COIN-M, Binance.US), stream names, pure frame decoding, the
//!   WebSocket connection task and the REST client (the only network I/O).
//! - [`wal`]: the write-ahead log every frame goes through first.
//! - [`seal`]: pure sealing decisions (when, what coverage, how rows merge).
//! - [`recorder`]: the state machine ([`recorder::state`]) and the runtime
//!   that wires everything and stops it in order.
//! - [`parquet_out`]: the dataset contract's files (schema version 2),
//!   written atomically; version-1 files read and rewritten.
//! - [`gaps`]: pure gap detection; [`recorder::fill`] asks REST to fill.
//! - [`lock`]: one recorder per directory (flock).
//! - [`verify`]: the dataset-level check: every file of the contract's
//!   schema and true to its metadata, no hour, id or kline missing undeclared.
//! - [`upload`]: sealed files uploaded to `[storage] destination` (S3, Azure Blob),
//!   verified, marked, and then deleted locally past `keep_local_hours`.
//! - [`quarantine`], [`metrics`]: undecodable frames, counters.
//! - [`backoff`]: the one exponential back-off rule of every retry loop.
//!
//! # Life of one message
//!
//! 1. [`binance::ws`] reads a frame (on USD-M from the stream kind's route,
//!    `/public` or `/market`), stamps its receive time, and sends it to
//!    the recorder task over a bounded channel (full: the reader waits).
//! 2. The recorder appends it to the [`wal`] with the other frames of its
//!    batch and fsyncs: from here it is recorded.
//! 3. [`binance::decode`] turns the frame into a typed row (exact
//!    decimals, µs UTC times) or sends it to the [`quarantine`]; it runs
//!    beside the append and fsync, and its answer is used once they succeed.
//! 4. [`recorder::state`] checks the row's times and id against its own
//!    event time and the market's other sources (implausible rows go to the
//!    quarantine), moves the exchange clock only to a time two sources agree
//!    on (or `/api/v3/time`), and files the row under the UTC hour of its
//!    trade time (kline: open time).
//! 5. Once exchange time passes the hour's end plus the grace period, the
//!    hour is judged: holes in its ids (or kline grid) go to a REST fill
//!    round ([`recorder::fill`]), whose rows come back through the WAL; at
//!    the fill deadline what is still open is declared in `unfilled`.
//! 6. The hour's rows are sorted, deduplicated and written by
//!    [`recorder::seal_job`] and [`parquet_out`] (temporary file in
//!    `<root>/.staging/`, fsync, rename into the partition tree, directory
//!    fsync); a failed write keeps the job and retries it.
//! 7. The next WAL batch deletes the segments older than every segment an
//!    unsealed hour still needs, so the WAL holds only unsealed hours.
//!
//! ARCHITECTURE.md holds the code map and the invariants.

// No unsafe code anywhere: the recorder parses untrusted bytes from the
// network and the disk, and memory safety must not depend on review.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod binance;
pub mod config;
pub mod domain;
#[cfg(test)]
mod fuzz_input;
pub mod gaps;
pub mod lock;
pub mod metrics;
pub mod parquet_out;
pub mod quarantine;
pub mod reconcile;
pub mod recorder;
pub mod seal;
pub mod service;
pub mod status;
pub mod upload;
pub mod verify;
pub mod wal;
