//! Frames that could not be decoded are kept here, raw, with their receive
//! time and the error: one JSON line each in
//! `<quarantine_dir>/<market>/<YYYY-MM-DD>.jsonl` (date of the receive time).
//! The WAL still holds them until their segment is deleted, so a decoder
//! fix can also be applied by replaying.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::domain::{utc_datetime, Market, TimeUs};

/// One quarantined frame.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedFrame {
    pub market: Market,
    pub recv_time_us: TimeUs,
    pub error: String,
    /// The frame as text (lossy for frames that are not UTF-8).
    pub frame: String,
}

impl Serialize for Market {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

fn file_for(directory: &Path, entry: &QuarantinedFrame) -> PathBuf {
    let date = utc_datetime(entry.recv_time_us).format("%Y-%m-%d");
    directory
        .join(entry.market.name())
        .join(format!("{date}.jsonl"))
}

/// Appends `entries` and fsyncs each file touched.
pub fn append(directory: &Path, entries: &[QuarantinedFrame]) -> io::Result<()> {
    let mut current: Option<(PathBuf, fs::File)> = None;
    for entry in entries {
        let path = file_for(directory, entry);
        if current
            .as_ref()
            .map(|(open_path, _)| open_path != &path)
            .unwrap_or(true)
        {
            if let Some((_, file)) = current.take() {
                file.sync_data()?;
            }
            fs::create_dir_all(path.parent().expect("quarantine files have a parent"))?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            current = Some((path, file));
        }
        let (_, file) = current.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(entry).expect("a quarantined frame always serialises");
        line.push(b'\n');
        file.write_all(&line)?;
    }
    if let Some((_, file)) = current {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_land_in_dated_json_lines() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let entry = QuarantinedFrame {
            market: Market::Spot,
            recv_time_us: 1_723_161_600_000_000,
            error: "bad".into(),
            frame: "{\"e\":".into(),
        };
        append(directory.path(), &[entry.clone(), entry]).expect("appends");
        let text =
            fs::read_to_string(directory.path().join("spot/2024-08-09.jsonl")).expect("file");
        assert_eq!(text.lines().count(), 2);
        let first: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(first["frame"], "{\"e\":");
        assert_eq!(first["market"], "spot");
    }
}
