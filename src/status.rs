//! `binance-recorder status`: what an operator wants at a glance, per
//! market and stream: state, last event age, rows held for unsealed hours,
//! last sealed hour, holes declared in the last day's files; then WAL depth
//! and disk use. The live part comes from the running daemon's `/status`
//! (on the metrics listener); the rest, and everything when the daemon is
//! stopped, from the data and WAL directories. [`render_table`] is pure.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::{Hour, TimeUs};
use crate::parquet_out;

/// What the daemon serves on `/status`: its live view of each stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    pub streams: Vec<LiveStream>,
    pub links_up: u64,
    pub wal_bytes: u64,
    /// Sealed files waiting for upload (absent from daemons without a
    /// destination, and from releases before uploads).
    #[serde(default)]
    pub upload_backlog: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStream {
    /// `spot/trade/BTCUSDT`.
    pub key: String,
    /// Seconds since the stream last delivered (a row or a kline update);
    /// `None` if it never did in this run.
    pub silent_secs: Option<f64>,
    /// Whether `/health` counts it silent past its interval.
    pub stale: bool,
    /// Exchange time of its newest row, µs.
    pub newest_event_us: Option<TimeUs>,
    /// Rows held in memory for its unsealed hours.
    pub rows_held: u64,
    /// A delivered contract's stream: its delivery, µs (absent from
    /// releases before deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at_us: Option<TimeUs>,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamLine {
    pub key: String,
    /// `live`, `silent`, `stale` (silent past its interval), `stopped`, or
    /// `delivered` (a dated contract's stream, ended at its delivery).
    pub state: String,
    /// When the contract was delivered, µs: from the daemon, or from the
    /// `delivered_at` of the stream's newest sealed file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_us: Option<TimeUs>,
    /// Seconds from the newest row's exchange time to now.
    pub last_event_age_secs: Option<f64>,
    pub rows_held: Option<u64>,
    /// UTC hour like `2026-11-23T10`.
    pub last_sealed_hour: Option<String>,
    /// Holes declared by the files of the last 24 sealed hours.
    pub declared_holes_24h: usize,
}

/// The whole answer of `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// `running` (the daemon answered) or `stopped` (it did not: figures
    /// from the directories only).
    pub daemon: String,
    pub streams: Vec<StreamLine>,
    pub links_up: Option<u64>,
    pub wal_bytes: u64,
    pub data_bytes: u64,
    /// Sealed files not yet verified at `[storage] destination`: the
    /// daemon's count, or the directory's when it is stopped; `None`
    /// without a destination.
    pub upload_backlog: Option<u64>,
}

/// Sealed hours looked at for declared holes.
const HOLE_LOOKBACK_HOURS: usize = 24;

/// Builds the report from the directories, and `live` when the daemon
/// answered. `now_us` is the host clock (for the event age).
pub fn build(config: &Config, live: Option<&LiveStatus>, now_us: TimeUs) -> StatusReport {
    let live_streams: BTreeMap<&str, &LiveStream> = live
        .map(|live| {
            live.streams
                .iter()
                .map(|stream| (stream.key.as_str(), stream))
                .collect()
        })
        .unwrap_or_default();
    let mut streams = Vec::new();
    for key in config.stream_keys() {
        let name = key.to_string();
        let sealed = parquet_out::sealed_hours(&config.data_dir, &key);
        // Newest first.
        let summaries: Vec<parquet_out::SealedSummary> = sealed
            .iter()
            .rev()
            .take(HOLE_LOOKBACK_HOURS)
            .filter_map(|hour| {
                parquet_out::read_summary(&parquet_out::hour_file_path(
                    &config.data_dir,
                    &key,
                    *hour,
                ))
                .ok()
            })
            .collect();
        let declared_holes_24h = summaries.iter().map(|summary| summary.unfilled.len()).sum();
        let live_stream = live_streams.get(name.as_str());
        // The daemon's word, else the newest file's: a delivered
        // contract's last file names its delivery.
        let delivered_at_us = live_stream
            .and_then(|stream| stream.delivered_at_us)
            .or_else(|| summaries.first().and_then(|summary| summary.delivered_at));
        let state = match (live, live_stream) {
            _ if delivered_at_us.is_some() => "delivered",
            (None, _) => "stopped",
            (Some(_), Some(stream)) if stream.stale => "stale",
            (Some(_), Some(stream)) if stream.silent_secs.is_none_or(|secs| secs > 10.0) => {
                "silent"
            }
            (Some(_), Some(_)) => "live",
            (Some(_), None) => "unknown",
        };
        streams.push(StreamLine {
            key: name.clone(),
            state: state.to_owned(),
            delivered_at_us,
            last_event_age_secs: live_stream
                .and_then(|stream| stream.newest_event_us)
                .map(|newest| (now_us - newest).max(0) as f64 / 1e6),
            rows_held: live_stream.map(|stream| stream.rows_held),
            last_sealed_hour: sealed.last().map(Hour::to_string),
            declared_holes_24h,
        });
    }
    StatusReport {
        daemon: if live.is_some() { "running" } else { "stopped" }.to_owned(),
        streams,
        links_up: live.map(|live| live.links_up),
        wal_bytes: live.map_or_else(|| directory_bytes(&config.wal_dir), |live| live.wal_bytes),
        data_bytes: directory_bytes(&config.data_dir),
        upload_backlog: config.upload.as_ref().map(|_| {
            live.and_then(|live| live.upload_backlog)
                .unwrap_or_else(|| {
                    crate::upload::marker::sealed_files(&config.data_dir)
                        .iter()
                        .filter(|file| {
                            crate::upload::marker::settled(&config.data_dir, &file.relative)
                                .is_none()
                        })
                        .count() as u64
                })
        }),
    }
}

/// Bytes of the files under `directory` (0 if it is missing).
pub fn directory_bytes(directory: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |metadata| metadata.len()),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `2026-03-27T08:00Z` (seconds shown only when not zero).
fn minute_utc(at: TimeUs) -> String {
    let Some(time) = chrono::DateTime::from_timestamp_micros(at) else {
        return at.to_string();
    };
    if at % 60_000_000 == 0 {
        time.format("%Y-%m-%dT%H:%MZ").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
    }
}

/// The report as a table a person reads.
pub fn render_table(report: &StatusReport) -> String {
    let header = [
        "stream",
        "state",
        "last event",
        "rows held",
        "last sealed",
        "holes (24 h)",
    ];
    let rows: Vec<[String; 6]> = report
        .streams
        .iter()
        .map(|line| {
            [
                line.key.clone(),
                match line.delivered_at_us {
                    Some(at) => format!("delivered {}", minute_utc(at)),
                    None => line.state.clone(),
                },
                line.last_event_age_secs
                    .map_or_else(|| "-".to_owned(), |age| format!("{age:.0} s ago")),
                line.rows_held
                    .map_or_else(|| "-".to_owned(), |rows| rows.to_string()),
                line.last_sealed_hour
                    .clone()
                    .unwrap_or_else(|| "none".to_owned()),
                line.declared_holes_24h.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut text = format!(
        "daemon: {}{}\n\n",
        report.daemon,
        report
            .links_up
            .map_or_else(String::new, |links| format!(", {links} links up"))
    );
    text += &line(&header.map(str::to_owned));
    for row in &rows {
        text += &line(row);
    }
    text += &format!(
        "\nWAL: {}   data: {}\n",
        mib(report.wal_bytes),
        mib(report.data_bytes)
    );
    if let Some(backlog) = report.upload_backlog {
        text += &format!(
            "upload backlog: {backlog} sealed files not yet verified at the destination\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_at_a_glance() {
        let report = StatusReport {
            daemon: "running".into(),
            streams: vec![
                StreamLine {
                    key: "spot/trade/BTCUSDT".into(),
                    state: "live".into(),
                    delivered_at_us: None,
                    last_event_age_secs: Some(0.4),
                    rows_held: Some(48_211),
                    last_sealed_hour: Some("2026-11-23T10".into()),
                    declared_holes_24h: 0,
                },
                StreamLine {
                    key: "spot/kline_1m/ETHUSDT".into(),
                    state: "stale".into(),
                    delivered_at_us: None,
                    last_event_age_secs: Some(75.2),
                    rows_held: Some(12),
                    last_sealed_hour: None,
                    declared_holes_24h: 2,
                },
            ],
            links_up: Some(1),
            wal_bytes: 13 * 1024 * 1024,
            data_bytes: 1536 * 1024 * 1024,
            upload_backlog: Some(3),
        };
        let expected = "\
daemon: running, 1 links up

stream                 state  last event  rows held  last sealed    holes (24 h)
spot/trade/BTCUSDT     live   0 s ago     48211      2026-11-23T10  0
spot/kline_1m/ETHUSDT  stale  75 s ago    12         none           2

WAL: 13.0 MiB   data: 1536.0 MiB
upload backlog: 3 sealed files not yet verified at the destination
";
        assert_eq!(render_table(&report), expected);
    }

    #[test]
    fn a_delivered_contracts_streams_show_as_delivered_with_the_time() {
        let config = Config::from_toml(
            r#"
[storage]
data_dir = "/nonexistent/binance-recorder-status-test/data"
wal_dir = "/nonexistent/binance-recorder-status-test/wal"
[markets.coinm]
symbols = ["BTCUSD_PERP", "BTCUSD_260101"]
streams = ["trade"]
"#,
        )
        .expect("valid test config");
        let delivery = 1_767_231_600_000_000; // 2026-01-01T01:40Z
        let live = LiveStatus {
            streams: vec![
                LiveStream {
                    key: "coinm/trade/BTCUSD_PERP".into(),
                    silent_secs: Some(0.1),
                    stale: false,
                    newest_event_us: None,
                    rows_held: 3,
                    delivered_at_us: None,
                },
                LiveStream {
                    key: "coinm/trade/BTCUSD_260101".into(),
                    silent_secs: None,
                    stale: false,
                    newest_event_us: None,
                    rows_held: 0,
                    delivered_at_us: Some(delivery),
                },
            ],
            links_up: 1,
            wal_bytes: 0,
            upload_backlog: None,
        };
        let report = build(&config, Some(&live), delivery);
        let states: Vec<(&str, &str, Option<TimeUs>)> = report
            .streams
            .iter()
            .map(|line| (line.key.as_str(), line.state.as_str(), line.delivered_at_us))
            .collect();
        assert_eq!(
            states,
            vec![
                ("coinm/trade/BTCUSD_PERP", "live", None),
                ("coinm/trade/BTCUSD_260101", "delivered", Some(delivery)),
            ]
        );
        let table = render_table(&report);
        assert!(
            table.contains("coinm/trade/BTCUSD_260101  delivered 2026-01-01T01:40Z"),
            "{table}"
        );
    }

    #[test]
    fn a_stopped_daemon_shows_dashes_for_what_only_it_knows() {
        let report = StatusReport {
            daemon: "stopped".into(),
            streams: vec![StreamLine {
                key: "spot/trade/BTCUSDT".into(),
                state: "stopped".into(),
                delivered_at_us: None,
                last_event_age_secs: None,
                rows_held: None,
                last_sealed_hour: Some("2026-11-23T10".into()),
                declared_holes_24h: 1,
            }],
            links_up: None,
            wal_bytes: 0,
            data_bytes: 0,
            upload_backlog: None,
        };
        let expected = "\
daemon: stopped

stream              state    last event  rows held  last sealed    holes (24 h)
spot/trade/BTCUSDT  stopped  -           -          2026-11-23T10  1

WAL: 0.0 MiB   data: 0.0 MiB
";
        assert_eq!(render_table(&report), expected);
    }
}
