//! How long `verify` takes: per 1,000 files and per million rows.
//!
//! Two synthetic spot trade datasets written through `parquet_out` (the
//! same builder as the `verify` tests): 1,000 hour files of 1,000 rows, and
//! 10 hour files of 100,000 rows; both 1,000,000 rows. Each is verified
//! three times (the first run reads from a cold page cache only if the
//! machine dropped it; the files were just written) and the best is kept.
//!
//! Run: `cargo bench --bench verify` (figures go to docs/BENCHMARKS.md).

#[path = "../tests/recorder/verify_dataset.rs"]
mod verify_dataset;

use std::path::Path;
use std::time::{Duration, Instant};

use binance_recorder::domain::{Hour, StreamKind};
use binance_recorder::verify::{self, Selection};

use verify_dataset::{hour_file, trade_rows, write, FIRST_HOUR_US};

fn write_dataset(root: &Path, n_files: i64, rows_per_file: i64) {
    let mut hour = Hour::containing(FIRST_HOUR_US);
    for index in 0..n_files {
        let rows = trade_rows(hour, 1_000 + index * rows_per_file, rows_per_file);
        write(root, &hour_file(StreamKind::Trade, hour, rows));
        hour = hour.next();
    }
}

fn best_of_three(root: &Path) -> (Duration, verify::Report) {
    let mut best: Option<(Duration, verify::Report)> = None;
    for _ in 0..3 {
        let started = Instant::now();
        let report = verify::verify(root, &Selection::default()).expect("verify runs");
        let elapsed = started.elapsed();
        if best.as_ref().is_none_or(|(fastest, _)| elapsed < *fastest) {
            best = Some((elapsed, report));
        }
    }
    best.expect("three runs")
}

fn main() {
    for (n_files, rows_per_file) in [(1_000, 1_000), (10, 100_000)] {
        let directory = tempfile::tempdir().expect("temporary directory");
        let root = directory.path().join("data");
        let started = Instant::now();
        write_dataset(&root, n_files, rows_per_file);
        let written = started.elapsed();
        let (elapsed, report) = best_of_three(&root);
        assert!(report.is_clean(), "{}", report.render_table());
        let n_rows = n_files * rows_per_file;
        let seconds = elapsed.as_secs_f64();
        println!(
            "verify {n_files} files x {rows_per_file} rows: {:.3} s ({:.3} s per 1,000 files, {:.3} s per million rows); written in {:.1} s",
            seconds,
            seconds * 1_000.0 / n_files as f64,
            seconds * 1_000_000.0 / n_rows as f64,
            written.as_secs_f64()
        );
    }
}
