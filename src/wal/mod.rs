//! Write-ahead log: every received frame is appended here, and made durable,
//! before anything else uses it.
//!
//! The WAL is a blocking, synchronous API called from one blocking thread. It
//! knows nothing about Binance: a record is a kind, a receive time and opaque
//! payload bytes.
//!
//! # Layers
//!
//! Thin layers, each testable alone (after quickwit-oss/mrecordlog):
//!
//! | file | does | I/O |
//! |---|---|---|
//! | `frame.rs` | encode/check the segment header and one record frame | none |
//! | `sync_policy.rs` | group commit: when is a sync due, time passed in | none |
//! | `fs.rs` | the filesystem seam: `WalFs` trait, `RealFs`, and `FaultFs` (tests) | all of it |
//! | `direct.rs` | `RealFs`'s files: `BlockWriter` (whole blocks with `O_DIRECT`, the last padded), `ReadOnce` (a window read ahead, what was read dropped) | the real files |
//! | `segment.rs` | segment file names, listing, directory scan | via `WalFs` |
//! | `writer.rs` | `WalWriter`: append, sync, roll, delete, fail-stop | via `WalFs` |
//! | `reader.rs` | `WalReader`: streams records and damage, resyncs; torn-tail repair | via `WalFs` |
//! | `proptests.rs` | model-based property tests with crashes and faults | in memory |
//!
//! # Files
//!
//! `<dir>/<segment id, 20 digits zero-padded>.wal`, ids increasing from 1.
//! A segment is created as `<id>.wal.tmp`, its header written and fsynced,
//! then renamed to `<id>.wal` and the directory fsynced, so a segment file
//! always starts with a whole header; a leftover `*.wal.tmp` is removed at
//! open. The WAL never appends to a segment written by an earlier process:
//! every [`Wal::open`] starts a new segment.
//!
//! # Byte layout (format version 1, all integers little endian)
//!
//! Segment header, 24 bytes:
//!
//! ```text
//! offset size field
//!      0    8 magic          b"BRECWAL\0"
//!      8    2 version        u16 = 1
//!     10    2 flags          u16 = 0 (reserved; a v1 reader rejects others)
//!     12    8 segment id     u64, equal to the id in the file name
//!     20    4 header crc     crc32c of bytes 0..20
//! ```
//!
//! Then records, back to back, each a 21-byte frame header and its payload:
//!
//! ```text
//! offset size field
//!      0    4 sync marker    F5 57 A1 1E  (0xF5 never occurs in UTF-8, so
//!                                          never inside a JSON text frame)
//!      4    4 crc            crc32c of bytes 8..21+length: the length, kind,
//!                            receive time and payload
//!      8    4 length         u32 payload length, at most MAX_PAYLOAD_LEN (64 MiB)
//!     12    1 kind           1 WsFrame, 2 RestRows, 3 Checkpoint
//!     13    8 recv_time_us   i64, local receive time, µs since the Unix epoch
//!     21    n payload        opaque bytes
//! ```
//!
//! The crc sits before the fields it covers so that it covers one contiguous
//! byte range (the brief put it after the length; same fields covered). A
//! record's [`RecordPosition`] is the offset of its sync marker.
//!
//! A segment may end in fewer than 4,096 zero bytes after its last record,
//! its length then a multiple of 4,096 (`frame::PAD_TO`): [`RealFs`] writes
//! segments with `O_DIRECT` where the filesystem takes it, in whole blocks,
//! the last padded with zeros; the padding is cut when the segment is
//! closed, and left by a crash. The reader takes such zeros for the end of
//! the segment; any other bytes after the last record are damage.
//!
//! # Durability contract
//!
//! - [`WalWriter::append`] only buffers. A record is durable, and may be
//!   acknowledged, once a later [`WalWriter::sync`] has returned `Ok`
//!   (write out, then `fdatasync`). Group commit: append many, sync once,
//!   acknowledge them all; [`WalWriter::needs_sync`] applies the
//!   [`FsyncPolicy`].
//! - Rolling to a new segment syncs the old one first; segment creation and
//!   deletion fsync the directory.
//! - **Fail-stop.** Any I/O error while writing, syncing or rolling marks the
//!   writer failed: every later append or sync returns
//!   [`WalError::WriterFailed`]. The writer never retries an fsync on a file
//!   whose fsync failed, because the kernel may have dropped the dirty pages
//!   and report success the next time. The caller reopens the WAL (which
//!   starts a new segment, and may itself fail while the disk is full: retry
//!   with backoff) and appends again every record it had not acknowledged.
//!   Replay may therefore yield such a record twice (once from the old
//!   segment, if its bytes did reach the disk); consumers deduplicate by key.
//!
//! # Recovery
//!
//! [`WalReader`] streams every segment in id order, record by record, without
//! loading a segment in memory. A frame that fails its checks (bad marker,
//! length over the limit, crc mismatch, or cut by the end of the file) is
//! reported as one [`ReadItem::Damage`] and skipped by scanning forward to the
//! next sync marker whose frame verifies; reading goes on from there, so
//! mid-segment corruption costs only the damaged records. Damage that runs to
//! the end of a segment (a torn tail) is reported and reading continues with
//! the next segment. A record with a kind this release does not know is
//! reported as [`ReadItem::UnknownKind`] and skipped.
//!
//! [`Wal::open`], in this order: create the directory if missing; remove
//! leftover `*.wal.tmp` files; create the new segment (durably); then cut the
//! torn tail of the newest earlier segment that holds more than a header, at
//! its last good record, with a warning ([`OpenReport::torn_tail`]; the
//! records lost there are a gap for REST to fill). The cut comes after the
//! creation so that an open that fails (disk full) changes nothing and the
//! next open still sees, and reports, the damage.
//!
//! A damaged record is never returned as a record. The one residual risk is a
//! damaged frame whose payload itself contains a whole valid frame: resync
//! could then find that inner frame. WebSocket frames are UTF-8 text and
//! cannot contain the marker; binary payloads (`RestRows`, `Checkpoint`)
//! should not embed WAL frames.
//!
//! # Use
//!
//! ```rust,ignore
//! let (mut wal, report) = Wal::open(config)?;
//! for item in report.replay() { /* rebuild state; count damage; dedupe by key */ }
//! loop {
//!     let frame = receive_until(wal.sync_deadline())?;      // caller's channel
//!     if wal.roll_due() {
//!         wal.roll()?;
//!         wal.append(&checkpoint_record())?;               // first in the segment
//!     }
//!     wal.append(&frame_record)?;                          // buffered only
//!     unacknowledged.push(frame);
//!     if wal.needs_sync(Instant::now()) {
//!         wal.sync()?;                                     // group commit
//!         acknowledge(unacknowledged.drain(..));           // now durable
//!     }
//! }
//! // On any Err: stop acknowledging, reopen with backoff (e.g. while the disk
//! // is full), append `unacknowledged` again, go on.
//! ```
//!
//! # Upgrades
//!
//! The header's version selects the frame decoder. A reader refuses an
//! unknown version with [`WalError::UnsupportedVersion`] naming the file,
//! rather than guessing. `testdata/v1/` holds a committed segment of format 1
//! that every later release must keep reading (test `reads_committed_v1_fixture`).
//!
//! # Deletion
//!
//! The WAL deletes only what the caller asks ([`WalWriter::delete_segments_upto`]),
//! never the active segment; the caller asks only once every Parquet hour that
//! a segment feeds is sealed.

mod direct;
mod error;
#[cfg(test)]
mod fault_fs;
mod frame;
pub mod fs;
mod reader;
mod segment;
mod sync_policy;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Result, Retry, WalError};
pub use frame::{FORMAT_VERSION, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN};
pub use fs::{RealFs, WalFile, WalFs};
pub use reader::{read_segments, DamageReason, LendItems, ReadItem, TornTail, WalReader};
pub use segment::{segment_file_name, segment_path};
pub use sync_policy::SyncSchedule;
pub use writer::{OpenReport, WalWriter};

/// Identifies a segment file; ids start at 1 and only increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// Where a record starts: its segment and the byte offset of its sync marker.
/// Positions order like the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordPosition {
    pub segment: SegmentId,
    pub offset: u64,
}

/// What a record's payload holds. The WAL does not look inside payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// One WebSocket text frame, exactly as received.
    WsFrame = 1,
    /// Rows fetched from REST to fill a gap.
    RestRows = 2,
    /// Recorder state written at the start of every segment.
    Checkpoint = 3,
}

impl RecordKind {
    /// The kind for a byte read from disk; `None` for a kind this release
    /// does not know (written by a newer one).
    pub fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::WsFrame),
            2 => Some(RecordKind::RestRows),
            3 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// One WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    /// Local receive time, µs since the Unix epoch.
    pub recv_time_us: i64,
    /// Opaque bytes; at most [`MAX_PAYLOAD_LEN`].
    pub payload: Vec<u8>,
}

impl Record {
    /// Bytes this record takes in a segment, header included.
    pub fn frame_len(&self) -> u64 {
        frame::frame_len(self.payload.len()) as u64
    }

    /// The record with its payload borrowed.
    pub fn lent(&self) -> RecordRef<'_> {
        RecordRef {
            kind: self.kind,
            recv_time_us: self.recv_time_us,
            payload: &self.payload,
        }
    }
}

/// One WAL record whose payload is borrowed: from the reader's buffer while
/// a replay reads it ([`WalReader::next_lent`]), so a record is not copied
/// out before it is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub kind: RecordKind,
    /// Local receive time, µs since the Unix epoch.
    pub recv_time_us: i64,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    pub fn to_record(self) -> Record {
        Record {
            kind: self.kind,
            recv_time_us: self.recv_time_us,
            payload: self.payload.to_vec(),
        }
    }
}

/// When appended records are fsynced (group commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A sync is due as soon as any record is unsynced.
    EveryRecord,
    /// Group commit: a sync is due once the oldest unsynced record has
    /// waited `max_wait`, or as soon as `enough_bytes` of records wait. An
    /// fsync of that much is worth its fixed cost, and waiting longer only
    /// adds latency: under load the batches follow each other as fast as
    /// the disk syncs them, and when frames are few the wait bounds how
    /// many fsyncs a second they cost.
    Interval {
        max_wait: Duration,
        enough_bytes: u64,
    },
}

/// Smallest accepted `segment_max_bytes`: a segment must hold more than its
/// header, and tiny segments would mean a directory fsync every few records.
pub const MIN_SEGMENT_MAX_BYTES: u64 = 4096;

/// How to open the WAL.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// A segment that has reached this size is closed, and the next append
    /// goes to a new segment. A segment holds at least one record, so a
    /// record larger than this makes a larger segment.
    pub segment_max_bytes: u64,
    /// When a sync is due.
    pub fsync: FsyncPolicy,
}

impl WalConfig {
    /// Checks the values that the type system does not.
    pub fn validate(&self) -> Result<()> {
        if self.segment_max_bytes < MIN_SEGMENT_MAX_BYTES {
            return Err(WalError::InvalidConfig {
                key: "segment_max_bytes",
                reason: format!(
                    "{} is below the minimum of {MIN_SEGMENT_MAX_BYTES} bytes",
                    self.segment_max_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Entry points of the WAL.
#[derive(Debug)]
pub struct Wal;

impl Wal {
    /// Opens the WAL on the real filesystem: creates the directory if
    /// missing, removes leftover temporary segments, cuts the torn tail of
    /// the newest existing segment, and starts a new segment (id = newest + 1).
    ///
    /// The returned [`OpenReport`] lists the segments that existed before
    /// (replay them with [`OpenReport::replay`]) and what was repaired.
    pub fn open(config: WalConfig) -> Result<(WalWriter, OpenReport)> {
        Wal::open_with_fs(config, Arc::new(RealFs))
    }

    /// [`Wal::open`] through a given filesystem (tests inject faults here).
    pub fn open_with_fs(config: WalConfig, fs: Arc<dyn WalFs>) -> Result<(WalWriter, OpenReport)> {
        writer::open(&config, fs)
    }
}
