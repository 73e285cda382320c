//! Segment file names and the directory listing.

use std::path::{Path, PathBuf};

use super::fs::WalFs;
use super::{Result, SegmentId, WalError};

const SEGMENT_SUFFIX: &str = ".wal";
const TEMPORARY_SUFFIX: &str = ".wal.tmp";
const ID_DIGITS: usize = 20;

/// `00000000000000000042.wal` for segment 42.
pub fn segment_file_name(segment: SegmentId) -> String {
    format!("{:0width$}{SEGMENT_SUFFIX}", segment.0, width = ID_DIGITS)
}

pub fn segment_path(dir: &Path, segment: SegmentId) -> PathBuf {
    dir.join(segment_file_name(segment))
}

/// Where a segment is written before its header is durable.
pub(super) fn temporary_segment_path(dir: &Path, segment: SegmentId) -> PathBuf {
    dir.join(format!(
        "{:0width$}{TEMPORARY_SUFFIX}",
        segment.0,
        width = ID_DIGITS
    ))
}

fn parse_id(digits: &str) -> Option<SegmentId> {
    if digits.len() != ID_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .map(SegmentId)
}

/// The segment id named by a file name, if it is a segment's name.
pub(super) fn parse_segment_file_name(name: &str) -> Option<SegmentId> {
    parse_id(name.strip_suffix(SEGMENT_SUFFIX)?)
}

/// What the WAL directory holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct DirListing {
    /// Segment ids in increasing order.
    pub segments: Vec<SegmentId>,
    /// Leftover `*.wal.tmp` files of interrupted segment creations.
    pub temporaries: Vec<PathBuf>,
}

pub(super) fn list_dir(fs: &dyn WalFs, dir: &Path) -> Result<DirListing> {
    let names = fs
        .list_dir(dir)
        .map_err(|source| WalError::io("list directory", dir, source))?;
    let mut listing = DirListing::default();
    for name in names {
        if let Some(segment) = parse_segment_file_name(&name) {
            listing.segments.push(segment);
        } else if name
            .strip_suffix(TEMPORARY_SUFFIX)
            .and_then(parse_id)
            .is_some()
        {
            listing.temporaries.push(dir.join(name));
        }
        // Anything else (a lock file, an operator's notes) is not ours.
    }
    listing.segments.sort_unstable();
    listing.temporaries.sort_unstable();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_like_ids() {
        assert_eq!(segment_file_name(SegmentId(42)), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.wal"),
            Some(SegmentId(42))
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(SegmentId(u64::MAX))),
            Some(SegmentId(u64::MAX))
        );
        assert!(segment_file_name(SegmentId(9)) < segment_file_name(SegmentId(10)));
    }

    #[test]
    fn foreign_names_are_not_segments() {
        for name in [
            "00000000000000000000.wal",
            "0000000000000000042.wal",
            "00000000000000000042.wal.tmp",
            "0000000000000000004x.wal",
            "99999999999999999999.wal",
            "lock",
            "+0000000000000000042.wal",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }
}
