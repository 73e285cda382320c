//! The durable record of what is uploaded, and the walk that finds the
//! sealed files still to upload.
//!
//! A file whose upload was verified gets a marker,
//! `<root>/.uploaded/<its path in the partition tree>.json`, beside the
//! tree like `.staging/` and `.corrupt/` (never inside it: readers of the
//! dataset see nothing but sealed files). The marker holds the file's size
//! and modification time as they were when it was read for the upload, so
//! a file resealed since (a late row: an atomic rename, a new mtime) no
//! longer matches and is uploaded again. A marker is written (temporary
//! file, fsync, rename) only after the object was verified; losing one
//! costs a HEAD request at the next start, never data.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::domain::Hour;

/// The folder of markers, beside the partition tree.
pub const MARKER_DIR_NAME: &str = ".uploaded";

/// What identifies one version of a local file cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub modified_ns: u64,
}

impl FileStamp {
    pub fn of(metadata: &fs::Metadata) -> FileStamp {
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        FileStamp {
            size: metadata.len(),
            modified_ns,
        }
    }
}

/// How a file's upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settled {
    /// The object at the key is this file, byte for byte (verified).
    Uploaded,
    /// The key holds a more complete object (more rows or fewer holes,
    /// or as complete and there first); the local file was not uploaded
    /// and is never deleted by retention.
    RemoteKept,
}

/// One marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub stamp: FileStamp,
    pub settled: Settled,
    /// The object's ETag as the server reported it.
    pub e_tag: Option<String>,
    /// The object key (the destination's prefix and the file's path).
    pub key: String,
}

/// One sealed file under the root: its path relative to the root, with
/// `/` separators (the object key's tail), and its hour.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SealedFile {
    pub hour: Hour,
    pub relative: String,
}

pub fn marker_path(root: &Path, relative: &str) -> PathBuf {
    root.join(MARKER_DIR_NAME).join(format!("{relative}.json"))
}

/// The marker of a file, if there is a readable one.
pub fn read_marker(root: &Path, relative: &str) -> Option<Marker> {
    let text = fs::read(marker_path(root, relative)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes a marker atomically (temporary file, fsync, rename).
pub fn write_marker(root: &Path, relative: &str, marker: &Marker) -> io::Result<()> {
    let path = marker_path(root, relative);
    let directory = path
        .parent()
        .expect("a marker path has the marker folder as an ancestor");
    fs::create_dir_all(directory)?;
    let temporary = path.with_extension("json.tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(marker).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&temporary, &path)
}

pub fn remove_marker(root: &Path, relative: &str) -> io::Result<()> {
    match fs::remove_file(marker_path(root, relative)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// How `relative`'s file, as it is now, settled: `None` when it has no
/// marker or its marker was written for another version of it.
pub fn settled(root: &Path, relative: &str) -> Option<Settled> {
    let metadata = fs::metadata(root.join(relative)).ok()?;
    read_marker(root, relative)
        .filter(|marker| marker.stamp == FileStamp::of(&metadata))
        .map(|marker| marker.settled)
}

/// Whether `relative`'s file is verified uploaded as it is now: its marker
/// says uploaded and its stamp is the file's.
pub fn verified(root: &Path, relative: &str) -> bool {
    settled(root, relative) == Some(Settled::Uploaded)
}

/// Whether the file is still the version `stamp` describes.
pub fn unchanged_since(root: &Path, relative: &str, stamp: FileStamp) -> bool {
    fs::metadata(root.join(relative)).is_ok_and(|metadata| FileStamp::of(&metadata) == stamp)
}

/// The hour in a sealed file's name, `<S>-<s>-<YYYY-MM-DD>-<HH>.parquet`.
pub fn hour_of_name(name: &str) -> Option<Hour> {
    let stem = name.strip_suffix(".parquet")?;
    let hour_text = stem.get(stem.len().checked_sub(13)?..)?;
    let time =
        chrono::NaiveDateTime::parse_from_str(&format!("{hour_text}:00:00"), "%Y-%m-%d-%H:%M:%S")
            .ok()?;
    Some(Hour::containing(time.and_utc().timestamp_micros()))
}

/// Every sealed file of the partition tree
/// (`market=*/stream=*/symbol=*/date=*/*.parquet`), hours ascending.
/// Folders that are not partitions (`.staging`, `.corrupt`, the markers)
/// are not walked.
pub fn sealed_files(root: &Path) -> Vec<SealedFile> {
    fn partitions(directory: &Path, key: &str) -> Vec<(String, PathBuf)> {
        let Ok(entries) = fs::read_dir(directory) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.starts_with(&format!("{key}="))
                    .then(|| (name, entry.path()))
            })
            .collect()
    }
    let mut files = Vec::new();
    for (market, market_dir) in partitions(root, "market") {
        for (stream, stream_dir) in partitions(&market_dir, "stream") {
            for (symbol, symbol_dir) in partitions(&stream_dir, "symbol") {
                for (date, date_dir) in partitions(&symbol_dir, "date") {
                    let Ok(entries) = fs::read_dir(&date_dir) else {
                        continue;
                    };
                    for entry in entries.flatten() {
                        let Ok(name) = entry.file_name().into_string() else {
                            continue;
                        };
                        let Some(hour) = hour_of_name(&name) else {
                            continue;
                        };
                        files.push(SealedFile {
                            hour,
                            relative: format!("{market}/{stream}/{symbol}/{date}/{name}"),
                        });
                    }
                }
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_match_only_the_version_of_the_file_they_were_written_for() {
        let root = tempfile::tempdir().expect("temporary directory");
        let relative = "market=spot/stream=trade/symbol=BTCUSDT/date=2024-08-09/BTCUSDT-trade-2024-08-09-00.parquet";
        let path = root.path().join(relative);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(&path, b"one").expect("write");
        assert!(!verified(root.path(), relative));
        let stamp = FileStamp::of(&fs::metadata(&path).expect("stat"));
        let marker = Marker {
            stamp,
            settled: Settled::Uploaded,
            e_tag: Some("\"x\"".into()),
            key: relative.into(),
        };
        write_marker(root.path(), relative, &marker).expect("marker");
        assert!(verified(root.path(), relative));
        assert!(unchanged_since(root.path(), relative, stamp));
        assert_eq!(read_marker(root.path(), relative), Some(marker.clone()));
        // A reseal replaces the file: the marker no longer vouches for it.
        fs::write(&path, b"one and a late row").expect("rewrite");
        assert!(!verified(root.path(), relative));
        assert!(!unchanged_since(root.path(), relative, stamp));
        assert_eq!(settled(root.path(), relative), None);
        // A kept remote is settled (not queued again) but not verified.
        let stamp = FileStamp::of(&fs::metadata(&path).expect("stat"));
        let kept = Marker {
            stamp,
            settled: Settled::RemoteKept,
            ..marker
        };
        write_marker(root.path(), relative, &kept).expect("marker");
        assert_eq!(settled(root.path(), relative), Some(Settled::RemoteKept));
        assert!(!verified(root.path(), relative));
        assert_eq!(
            sealed_files(root.path()),
            vec![SealedFile {
                hour: hour_of_name("BTCUSDT-trade-2024-08-09-00.parquet").expect("an hour"),
                relative: relative.into()
            }]
        );
        remove_marker(root.path(), relative).expect("remove");
        remove_marker(root.path(), relative).expect("removing twice is fine");
    }

    #[test]
    fn only_partition_folders_are_walked() {
        let root = tempfile::tempdir().expect("temporary directory");
        for relative in [
            ".staging/spot-BTCUSDT-trade-2024-08-09-00.parquet",
            ".uploaded/market=spot/stream=trade/symbol=X/date=2024-08-09/X-trade-2024-08-09-00.parquet",
            "market=spot/stream=trade/symbol=X/date=2024-08-09/notes.txt",
        ] {
            let path = root.path().join(relative);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            fs::write(&path, b"x").expect("write");
        }
        assert!(sealed_files(root.path()).is_empty());
    }
}
