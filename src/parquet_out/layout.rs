//! Where files live under the dataset's root.
//!
//! The partition tree (`<root>/market=.../...`) holds nothing but sealed
//! `*.parquet` files, because `polars.read_parquet(<folder>)` refuses a
//! folder with any other file in it, hidden ones included. Everything else
//! the recorder keeps in the root sits beside the tree, on the same
//! filesystem so that renames stay atomic:
//!
//! - `<root>/.staging/`: files of a seal in progress, renamed into the tree
//!   once complete; anything left there is a crash's leftover.
//! - `<root>/.corrupt/<relative path>.corrupt`: sealed files that could not
//!   be read, moved aside for inspection.
//! - `<root>/.binance-recorder.lock` (`crate::lock`).
//!
//! Releases before schema version 2 kept the first two inside the tree
//! (`.<name>.parquet.tmp`, `<name>.parquet.corrupt`); start-up moves them
//! out ([`remove_temporary_files`], [`move_out_legacy_corrupt_files`]).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::domain::{Hour, StreamKey};

/// The folder of seals in progress, beside the partition tree.
pub const STAGING_DIR_NAME: &str = ".staging";

/// The folder of files moved aside, beside the partition tree.
pub const CORRUPT_DIR_NAME: &str = ".corrupt";

/// The suffix of a file in [`staging_dir`].
const TEMPORARY_SUFFIX: &str = ".tmp";

/// The suffix of a file moved aside.
const CORRUPT_SUFFIX: &str = ".corrupt";

/// `<root>/market=<m>/stream=<s>/symbol=<S>/date=<YYYY-MM-DD>/<S>-<s>-<YYYY-MM-DD>-<HH>.parquet`
pub fn hour_file_path(root: &Path, key: &StreamKey, hour: Hour) -> PathBuf {
    let stream = key.kind.path_name();
    let date = hour.date_text();
    root.join(format!("market={}", key.market))
        .join(format!("stream={stream}"))
        .join(format!("symbol={}", key.symbol))
        .join(format!("date={date}"))
        .join(format!(
            "{}-{stream}-{date}-{}.parquet",
            key.symbol,
            hour.hour_of_day_text()
        ))
}

/// `<root>/.staging`: where seals in progress write.
pub fn staging_dir(root: &Path) -> PathBuf {
    root.join(STAGING_DIR_NAME)
}

/// `<root>/.corrupt`: where unreadable files are moved, under the path
/// they had in the partition tree.
pub fn corrupt_dir(root: &Path) -> PathBuf {
    root.join(CORRUPT_DIR_NAME)
}

/// The temporary file a seal of `(key, hour)` writes before its rename:
/// `<root>/.staging/<market>-<S>-<s>-<YYYY-MM-DD>-<HH>.parquet.tmp`. The
/// market is in the name because the file name alone does not hold it.
pub(super) fn staging_path(root: &Path, key: &StreamKey, hour: Hour) -> PathBuf {
    let final_path = hour_file_path(root, key, hour);
    let name = final_path
        .file_name()
        .and_then(|name| name.to_str())
        .expect("hour file names are UTF-8");
    staging_dir(root).join(format!("{}-{name}{TEMPORARY_SUFFIX}", key.market))
}

/// The hours of `key` that have a sealed file under `root`, ascending.
/// Names that do not parse are skipped (they are not ours).
pub fn sealed_hours(root: &Path, key: &StreamKey) -> Vec<Hour> {
    let stream_dir = hour_file_path(root, key, Hour::containing(0))
        .parent()
        .and_then(Path::parent)
        .expect("hour file paths have a date and a symbol directory")
        .to_path_buf();
    let Ok(dates) = fs::read_dir(&stream_dir) else {
        return Vec::new();
    };
    let mut hours = Vec::new();
    for date_entry in dates.flatten() {
        let Ok(files) = fs::read_dir(date_entry.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".parquet") else {
                continue;
            };
            // <S>-<s>-<YYYY-MM-DD>-<HH>: the last 13 characters are the hour.
            let Some(hour_text) = stem
                .len()
                .checked_sub(13)
                .and_then(|start| stem.get(start..))
            else {
                continue;
            };
            let Ok(time) = chrono::NaiveDateTime::parse_from_str(
                &format!("{hour_text}:00:00"),
                "%Y-%m-%d-%H:%M:%S",
            ) else {
                continue;
            };
            let hour = Hour::containing(time.and_utc().timestamp_micros());
            if hour_file_path(root, key, hour) == file.path() {
                hours.push(hour);
            }
        }
    }
    hours.sort();
    hours
}

/// Removes the temporary files interrupted seals left (never complete,
/// never visible to readers) and returns their paths: everything in
/// `<root>/.staging/`, and the `.<name>.parquet.tmp` files releases before
/// schema version 2 wrote inside the partition tree. Run at start, under
/// the directory lock.
pub fn remove_temporary_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    match fs::read_dir(staging_dir(root)) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    fs::remove_file(entry.path())?;
                    removed.push(entry.path());
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    for path in partition_tree_files(root)? {
        let name = file_name(&path);
        if name.starts_with('.') && name.ends_with(".parquet.tmp") {
            fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Moves the `<name>.parquet.corrupt` files releases before schema
/// version 2 left beside sealed files out of the partition tree, to
/// `<root>/.corrupt/<same relative path>`; returns each move (from, to).
/// Run at start, under the directory lock.
pub fn move_out_legacy_corrupt_files(root: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut moved = Vec::new();
    for path in partition_tree_files(root)? {
        if file_name(&path).ends_with(&format!(".parquet{CORRUPT_SUFFIX}")) {
            let aside = move_out_of_tree(root, &path, "")?;
            moved.push((path, aside));
        }
    }
    Ok(moved)
}

/// Moves an unreadable sealed file out of the partition tree, to
/// `<root>/.corrupt/<its path under root>.corrupt` (kept for inspection),
/// and returns where it went. A file moved aside earlier for the same hour
/// is kept too: the new one gets a number (`<name>.parquet.2.corrupt`).
pub fn move_aside(root: &Path, path: &Path) -> io::Result<PathBuf> {
    move_out_of_tree(root, path, CORRUPT_SUFFIX)
}

/// Renames `path` (inside `root`'s partition tree) to the same relative
/// path under [`corrupt_dir`], with `suffix` added, never over an existing
/// file, and makes both directories durable.
fn move_out_of_tree(root: &Path, path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let relative = path
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| PathBuf::from(file_name(path)));
    let wanted = corrupt_dir(root).join(relative);
    let directory = wanted
        .parent()
        .expect("a path under the corrupt folder has a parent")
        .to_path_buf();
    create_dir_durably(root, &directory)?;
    let name = format!("{}{suffix}", file_name(&wanted));
    let (stem, last) = match name.strip_suffix(CORRUPT_SUFFIX) {
        Some(stem) => (stem.to_owned(), CORRUPT_SUFFIX),
        None => (name.clone(), ""),
    };
    let mut aside = directory.join(&name);
    let mut number = 2;
    while aside.exists() {
        aside = directory.join(format!("{stem}.{number}{last}"));
        number += 1;
    }
    fs::rename(path, &aside)?;
    if let Some(source_directory) = path.parent() {
        sync_directory(source_directory)?;
    }
    sync_directory(&directory)?;
    Ok(aside)
}

/// Creates `directory` (under `root`) and the folders above it that are
/// missing, and fsyncs the parent of each one it created, so that a file
/// made durable inside it cannot vanish with its folder in a power cut.
pub(super) fn create_dir_durably(root: &Path, directory: &Path) -> io::Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut next = Some(directory);
    while let Some(folder) = next.filter(|folder| !folder.is_dir()) {
        missing.push(folder.to_path_buf());
        next = folder.parent();
    }
    fs::create_dir_all(directory)?;
    for folder in missing.iter().rev() {
        match folder.parent() {
            // Above the root the recorder only owns what it created.
            Some(parent) if parent.starts_with(root) || root.starts_with(parent) => {
                sync_directory(parent)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes a rename or a delete in `directory` durable.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every file under the `market=` folders of `root`.
fn partition_tree_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = Vec::new();
    match fs::read_dir(root) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with("market=")
                    && entry.file_type()?.is_dir()
                {
                    stack.push(entry.path());
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(error),
    }
    while let Some(directory) = stack.pop() {
        let entries = match fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Market, StreamKind, Symbol};

    fn key(market: Market) -> StreamKey {
        StreamKey {
            market,
            symbol: Symbol::new("BTCUSDT").expect("valid"),
            kind: StreamKind::Trade,
        }
    }

    #[test]
    fn staging_names_are_outside_the_tree_and_unique_per_market() {
        let root = Path::new("/data");
        let hour = Hour::containing(1_723_161_600_000_000);
        let spot = staging_path(root, &key(Market::Spot), hour);
        let us = staging_path(root, &key(Market::Us), hour);
        assert_eq!(
            spot,
            Path::new("/data/.staging/spot-BTCUSDT-trade-2024-08-09-00.parquet.tmp")
        );
        assert_ne!(spot, us);
        assert!(!spot.to_string_lossy().contains("market="));
    }

    #[test]
    fn start_up_removes_temporaries_and_moves_legacy_files_out_of_the_tree() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let root = scratch.path();
        let hour = Hour::containing(1_723_161_600_000_000);
        let sealed = hour_file_path(root, &key(Market::Spot), hour);
        let folder = sealed.parent().expect("folder");
        fs::create_dir_all(folder).expect("tree");
        fs::create_dir_all(staging_dir(root)).expect("staging");
        fs::write(&sealed, b"sealed").expect("sealed");
        let legacy_temporary = folder.join(".BTCUSDT-trade-2024-08-09-01.parquet.tmp");
        let legacy_corrupt = folder.join("BTCUSDT-trade-2024-08-09-02.parquet.corrupt");
        let staged = staging_path(root, &key(Market::Spot), hour);
        for path in [&legacy_temporary, &legacy_corrupt, &staged] {
            fs::write(path, b"x").expect("leftover");
        }

        let mut removed = remove_temporary_files(root).expect("removes");
        removed.sort();
        let mut expected = vec![staged, legacy_temporary];
        expected.sort();
        assert_eq!(removed, expected);
        let moved = move_out_legacy_corrupt_files(root).expect("moves");
        let expected_aside =
            corrupt_dir(root).join(legacy_corrupt.strip_prefix(root).expect("under root"));
        assert_eq!(moved, vec![(legacy_corrupt.clone(), expected_aside)]);
        assert_eq!(
            partition_tree_files(root).expect("walks"),
            vec![sealed],
            "only the sealed file is left in the tree"
        );
    }

    #[test]
    fn moving_aside_twice_keeps_both_files_outside_the_tree() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let root = scratch.path();
        let hour = Hour::containing(1_723_161_600_000_000);
        let sealed = hour_file_path(root, &key(Market::Spot), hour);
        fs::create_dir_all(sealed.parent().expect("folder")).expect("tree");
        fs::write(&sealed, b"first").expect("first");
        let first = move_aside(root, &sealed).expect("moved");
        fs::write(&sealed, b"second").expect("second");
        let second = move_aside(root, &sealed).expect("moved");
        let relative = sealed.strip_prefix(root).expect("under root");
        let expected_first = corrupt_dir(root).join(format!("{}.corrupt", relative.display()));
        assert_eq!(first, expected_first);
        assert_eq!(
            second,
            expected_first.with_file_name("BTCUSDT-trade-2024-08-09-00.parquet.2.corrupt")
        );
        assert_eq!(fs::read(&first).expect("kept"), b"first");
        assert_eq!(fs::read(&second).expect("kept"), b"second");
        assert!(partition_tree_files(root).expect("walks").is_empty());
    }
}
