//! The WAL's one error type.

use std::io;
use std::path::PathBuf;

use super::SegmentId;

pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// What the caller can do about a [`WalError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reopen the WAL (a new segment), with backoff while it keeps failing,
    /// and append again every record not yet acknowledged. Disk full and
    /// fsync failures land here.
    AfterReopen,
    /// Retrying cannot help: an operator must look at the files, or the
    /// caller has a bug.
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A filesystem operation failed. `op` says which (`"create"`,
    /// `"fsync"`, ...), `path` the file or directory.
    #[error("wal {op} failed on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An earlier error (given) left the writer failed; it accepts nothing
    /// more. Reopen the WAL and append the unacknowledged records again.
    #[error("wal writer failed earlier ({cause}); reopen the wal and append unacknowledged records again")]
    WriterFailed { cause: String },

    /// A segment header that verifies but cannot be right (its id differs
    /// from the file name's, or it sets flags this release does not know).
    #[error("bad wal segment header in {}: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },

    /// The segment was written by a release with a format this one does not
    /// read (a downgrade?). Nothing is skipped or deleted.
    #[error("wal segment {} has format version {version}, this release reads only version {supported}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u16,
        supported: u16,
    },

    /// The payload is over the per-record limit; the writer stays usable.
    #[error("wal record payload of {len} bytes is over the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },

    /// The active segment cannot be deleted.
    #[error("refusing to delete wal segment {segment}: it is the active segment")]
    DeleteActiveSegment { segment: SegmentId },

    #[error("invalid wal config {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether reopening and retrying can help.
    pub fn retry(&self) -> Retry {
        match self {
            WalError::Io { .. } | WalError::WriterFailed { .. } => Retry::AfterReopen,
            WalError::BadHeader { .. }
            | WalError::UnsupportedVersion { .. }
            | WalError::RecordTooLarge { .. }
            | WalError::DeleteActiveSegment { .. }
            | WalError::InvalidConfig { .. } => Retry::Never,
        }
    }

    /// True for "no space left on device": the caller stops acknowledging,
    /// counts it, and reopens with backoff until space returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            WalError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}
