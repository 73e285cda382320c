//! Pure decisions of the upload, with time passed in: whether a sealed
//! file may replace the object already at its key, whether a local file
//! may be deleted, what ETag an upload must come back with.

use std::time::Duration;

use md5::{Digest, Md5};

use crate::domain::{Hour, TimeUs};
use crate::parquet_out::SealedSummary;

/// What to do with a key that already holds an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Write the local file over it (conditionally, on the version seen).
    Write,
    /// Leave the object: it is at least as complete as the local file.
    KeepRemote { why: &'static str },
}

/// Whether the local file replaces the object at its key. A file never
/// replaces one with more rows or fewer declared holes; when both hold as
/// many, the first writer wins (so two recorders never flip-flop) unless
/// the local file is of a newer schema version. An object that is not a
/// readable file of this recorder (`remote` is `None`) is replaced.
pub fn judge_replace(local: &SealedSummary, remote: Option<&SealedSummary>) -> Replace {
    let Some(remote) = remote else {
        return Replace::Write;
    };
    if local.row_count < remote.row_count {
        return Replace::KeepRemote {
            why: "the object has more rows",
        };
    }
    if local.unfilled.len() > remote.unfilled.len() {
        return Replace::KeepRemote {
            why: "the object declares fewer holes",
        };
    }
    let better = local.row_count > remote.row_count
        || local.unfilled.len() < remote.unfilled.len()
        || local.schema_version > remote.schema_version;
    if better {
        Replace::Write
    } else {
        Replace::KeepRemote {
            why: "the object has as many rows and holes (the first writer wins)",
        }
    }
}

/// Whether a local sealed file may be deleted: only once its upload is
/// verified, and once the exchange clock is `keep` past its hour's end.
pub fn may_delete_local(verified: bool, hour: Hour, keep: Duration, exchange_now: TimeUs) -> bool {
    let keep_us = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
    verified && hour.end().saturating_add(keep_us) <= exchange_now
}

/// The ETag S3 gives an object uploaded as `bytes`: the hex MD5 for a
/// single put; for a multipart upload of `part_bytes` parts, the MD5 of
/// the parts' MD5s, `-` and the number of parts.
pub fn expected_etag(bytes: &[u8], part_bytes: Option<usize>) -> String {
    let hex = |digest: &[u8]| {
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    match part_bytes {
        None => hex(&Md5::digest(bytes)),
        Some(part_bytes) => {
            let mut of_parts = Md5::new();
            let mut n_parts = 0usize;
            for part in bytes.chunks(part_bytes.max(1)) {
                of_parts.update(Md5::digest(part));
                n_parts += 1;
            }
            if n_parts == 0 {
                of_parts.update(Md5::digest([]));
                n_parts = 1;
            }
            format!("{}-{n_parts}", hex(&of_parts.finalize()))
        }
    }
}

/// Whether an ETag a server returned is `expected` (quotes and case aside).
pub fn etag_matches(etag: &str, expected: &str) -> bool {
    etag.trim_matches('"').eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UnfilledRange;
    use crate::parquet_out::SchemaVersion;

    fn summary(row_count: u64, n_holes: usize) -> SealedSummary {
        SealedSummary {
            schema_version: SchemaVersion::CURRENT,
            first_key: Some(1),
            last_key: Some(row_count as i64),
            row_count,
            delivered_at: None,
            clock_offset_us: None,
            stopped_at: None,
            unfilled: (0..n_holes)
                .map(|index| UnfilledRange {
                    from: Some(index as i64 * 10),
                    to: Some(index as i64 * 10 + 1),
                    from_time: 0,
                    to_time: 1,
                    reason: "test".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_file_never_replaces_one_with_more_rows_or_fewer_holes() {
        assert_eq!(judge_replace(&summary(10, 0), None), Replace::Write);
        assert_eq!(
            judge_replace(&summary(11, 0), Some(&summary(10, 0))),
            Replace::Write
        );
        assert_eq!(
            judge_replace(&summary(10, 0), Some(&summary(10, 1))),
            Replace::Write
        );
        assert!(matches!(
            judge_replace(&summary(9, 0), Some(&summary(10, 0))),
            Replace::KeepRemote { .. }
        ));
        // More rows but more holes: either would make the bucket worse somewhere.
        assert!(matches!(
            judge_replace(&summary(12, 2), Some(&summary(10, 1))),
            Replace::KeepRemote { .. }
        ));
        // Equal: the first writer wins, so racing recorders settle.
        assert!(matches!(
            judge_replace(&summary(10, 1), Some(&summary(10, 1))),
            Replace::KeepRemote { .. }
        ));
    }

    #[test]
    fn a_newer_schema_version_replaces_an_equal_older_file() {
        let mut old = summary(10, 0);
        old.schema_version = SchemaVersion::V1;
        assert_eq!(judge_replace(&summary(10, 0), Some(&old)), Replace::Write);
        assert!(matches!(
            judge_replace(&old, Some(&summary(10, 0))),
            Replace::KeepRemote { .. }
        ));
    }

    #[test]
    fn only_verified_files_past_the_bound_are_deleted() {
        let hour = Hour::containing(1_723_161_600_000_000);
        let keep = Duration::from_secs(2 * 3600);
        let bound = hour.end() + 2 * 3_600_000_000;
        assert!(!may_delete_local(true, hour, keep, bound - 1));
        assert!(may_delete_local(true, hour, keep, bound));
        assert!(!may_delete_local(false, hour, keep, bound + 3_600_000_000));
    }

    #[test]
    fn etags_are_s3s() {
        // MD5 of the empty string, and of "hello" (RFC 1321 test values).
        assert_eq!(expected_etag(b"", None), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            expected_etag(b"hello", None),
            "5d41402abc4b2a76b9719d911017c592"
        );
        // One part: MD5 of the part's MD5, "-1".
        let one_part = expected_etag(b"hello", Some(8));
        assert!(one_part.ends_with("-1"), "{one_part}");
        assert_eq!(
            expected_etag(b"hellohello", Some(5)).rsplit('-').next(),
            Some("2")
        );
        assert!(etag_matches(
            "\"5D41402ABC4B2A76B9719D911017C592\"",
            "5d41402abc4b2a76b9719d911017c592"
        ));
    }
}
