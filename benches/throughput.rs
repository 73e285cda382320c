//! Throughput of the recorder's hot path, stage by stage, on real data:
//! decode (vs a plain `serde_json::Value` parse of the same frames), WAL
//! append + group commit (vs an fsync per record), Parquet sealing, and
//! held rows written as a spilled run and as a sealed file from their
//! packed columns (vs the same rows made into `Row`s first).
//!
//! Run: `cargo bench --bench throughput` (figures go to docs/BENCHMARKS.md).
//! Shared machines are noisy: read the ratios within one run, not the
//! absolute numbers across runs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use binance_recorder::binance::decode::{decode_frame, Decoded};
use binance_recorder::domain::{Hour, Market, Row, StreamKey, StreamKind, Symbol};
use binance_recorder::parquet_out::{write_hour_file, HourFile};
use binance_recorder::recorder::held::HeldRows;
use binance_recorder::recorder::run_file::{write_run, RunReader};
use binance_recorder::wal::{FsyncPolicy, Record, RecordKind, Wal, WalConfig};

fn capture_frames() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/real/ws/hftbacktest/spot_btcusdt_20240809.gz");
    let file = std::fs::File::open(&path).expect("shared data beside the repository");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|line| line.expect("line"))
        .filter(|line| line.contains("\"btcusdt@trade\""))
        .map(|line| line.as_bytes()[line.find(' ').expect("time then JSON") + 1..].to_vec())
        .collect()
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let frames = capture_frames();
    let rounds = 20;

    let started = Instant::now();
    let mut rows = Vec::new();
    for round in 0..rounds {
        for frame in &frames {
            let decoded = decode_frame(Market::Spot, frame, 0).expect("real frames decode");
            if round == 0 {
                if let Decoded::Row { row, .. } = decoded {
                    rows.push(row);
                }
            }
        }
    }
    let decode_rate = rate(frames.len() * rounds, started.elapsed());
    let started = Instant::now();
    for _ in 0..rounds {
        for frame in &frames {
            let value: serde_json::Value = serde_json::from_slice(frame).expect("JSON");
            std::hint::black_box(value);
        }
    }
    let value_rate = rate(frames.len() * rounds, started.elapsed());
    println!(
        "decode: {:.0} frames/s; serde_json::Value parse: {:.0} frames/s; ratio {:.2}",
        decode_rate,
        value_rate,
        decode_rate / value_rate
    );

    let scratch = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))
        .expect("scratch directory on the project's disk");
    let record = |frame: &Vec<u8>| Record {
        kind: RecordKind::WsFrame,
        recv_time_us: 0,
        payload: frame.clone(),
    };
    let mut wal_rates = Vec::new();
    for (label, batch, n_records) in [
        ("group commit, 1000 per fsync", 1000, 20_000),
        ("fsync per record", 1, 500),
    ] {
        let directory = scratch.path().join(label.replace([' ', ','], "_"));
        let config = WalConfig {
            dir: directory,
            segment_max_bytes: 64 << 20,
            fsync: FsyncPolicy::EveryRecord,
        };
        let (mut wal, _) = Wal::open(config).expect("WAL opens");
        let started = Instant::now();
        for (index, frame) in frames.iter().cycle().take(n_records).enumerate() {
            wal.append(&record(frame)).expect("append");
            if (index + 1) % batch == 0 {
                wal.sync().expect("sync");
            }
        }
        wal.sync().expect("sync");
        let append_rate = rate(n_records, started.elapsed());
        println!("WAL {label}: {append_rate:.0} records/s");
        wal_rates.push(append_rate);
    }
    println!(
        "WAL group commit / fsync per record: {:.0}x",
        wal_rates[0] / wal_rates[1]
    );

    let key = StreamKey {
        market: Market::Spot,
        symbol: Symbol::new("BTCUSDT").expect("valid"),
        kind: StreamKind::Trade,
    };
    let hour = Hour::containing(rows[0].bucket_time());
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|row| Hour::containing(row.bucket_time()) == hour)
        .collect();
    let file = HourFile {
        key,
        hour,
        rows,
        unfilled: vec![],
        coverage_from: hour.start(),
        coverage_to: hour.end(),
        clock_offset_us: Some(0),
        delivered_at: None,
        stopped_at: None,
    };
    packed_against_rows(scratch.path(), &file);

    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let (path, _) = write_hour_file(&scratch.path().join("parquet"), &file).expect("seal");
        bytes = std::fs::metadata(path).expect("file").len();
    }
    let seal_rate = rate(file.rows.len() * rounds, started.elapsed());
    println!(
        "seal: {:.0} rows/s ({} real trades, {} bytes, {:.2} B/row incl. recv_time); seal / decode rate {:.2}",
        seal_rate,
        file.rows.len(),
        bytes,
        bytes as f64 / file.rows.len() as f64,
        seal_rate / decode_rate
    );
}

/// The median of `times`.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// An hour's trades written as a spilled run (packed) and read back as
/// columns, and sealed from the rows held packed (`HeldRows`: columns made
/// from the packed form) and from the same rows as `Row`s (a cell at a
/// time), interleaved.
fn packed_against_rows(scratch: &Path, file: &HourFile) {
    let held = HeldRows::from_rows(file.key.kind, file.rows.clone());
    let run_path = scratch.join("run.run");
    let time_run = || {
        let started = Instant::now();
        write_run(&run_path, &held).expect("run written");
        started.elapsed()
    };
    let time_read_back = || {
        let started = Instant::now();
        let mut reader = RunReader::open(&run_path, file.key.kind).expect("run opened");
        let mut n_read = 0;
        while let Some(batch) = reader.next_batch() {
            n_read += batch.num_rows();
        }
        assert!(reader.error().is_none() && n_read == file.rows.len());
        started.elapsed()
    };
    let held_file = HourFile {
        key: file.key.clone(),
        hour: file.hour,
        rows: held.clone(),
        unfilled: file.unfilled.clone(),
        coverage_from: file.coverage_from,
        coverage_to: file.coverage_to,
        clock_offset_us: file.clock_offset_us,
        delivered_at: file.delivered_at,
        stopped_at: file.stopped_at,
    };
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..9 {
        times[0].push(time_run());
        times[1].push(time_read_back());
        let started = Instant::now();
        write_hour_file(&scratch.join("packed"), &held_file).expect("seal");
        times[2].push(started.elapsed());
        let started = Instant::now();
        write_hour_file(&scratch.join("rows"), file).expect("seal");
        times[3].push(started.elapsed());
    }
    let [run_written, run_read, seal_packed, seal_rows] = times.map(median);
    let n_rows = file.rows.len();
    println!(
        "spilled run of {n_rows} trades: written {:.0} rows/s, read back as columns {:.0} rows/s",
        rate(n_rows, run_written),
        rate(n_rows, run_read),
    );
    println!(
        "seal of {n_rows} held trades: packed {:.0} rows/s, rows {:.0} rows/s, ratio {:.2}",
        rate(n_rows, seal_packed),
        rate(n_rows, seal_rows),
        seal_rows.as_secs_f64() / seal_packed.as_secs_f64()
    );
}
