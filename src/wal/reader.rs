//! Streaming read of the segments, with resync after damage, and the cut of
//! a torn tail at open.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::frame::{self, FrameCheck, FrameDamage, HeaderDamage, SEGMENT_HEADER_LEN, SYNC_MARKER};
use super::fs::{RealFs, WalFs};
use super::segment::{list_dir, segment_path};
use super::{Record, RecordKind, RecordPosition, RecordRef, Result, SegmentId, WalError};

/// Bytes asked of the file per read; a damaged region is scanned in such steps.
const READ_CHUNK: usize = 256 * 1024;

/// Why a span of a segment was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageReason {
    /// The file is shorter than a segment header.
    TruncatedSegmentHeader,
    /// The segment header's magic is wrong; records after it are still read.
    BadSegmentMagic,
    /// The segment header's checksum is wrong; records after it are still read.
    SegmentHeaderChecksum,
    /// No sync marker where a record should start.
    BadSyncMarker,
    /// A length over [`super::MAX_PAYLOAD_LEN`].
    LengthTooLarge { len: u32 },
    /// The checksum over length, kind, time and payload does not match.
    ChecksumMismatch,
    /// The frame runs past the end of the file (a torn write).
    Truncated,
}

impl From<FrameDamage> for DamageReason {
    fn from(damage: FrameDamage) -> DamageReason {
        match damage {
            FrameDamage::BadSyncMarker => DamageReason::BadSyncMarker,
            FrameDamage::LengthTooLarge { len } => DamageReason::LengthTooLarge { len },
            FrameDamage::ChecksumMismatch => DamageReason::ChecksumMismatch,
        }
    }
}

/// One thing found while reading the log. `R` is the record: owned
/// ([`Record`], what the iterator gives) or lent from the reader's buffer
/// ([`RecordRef`], what [`WalReader::next_lent`] gives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadItem<R = Record> {
    /// A record that verified.
    Record { position: RecordPosition, record: R },
    /// A record that verified but whose kind this release does not know
    /// (written by a newer one). Skipped; worth a warning and a counter.
    UnknownKind {
        position: RecordPosition,
        kind: u8,
        recv_time_us: i64,
        payload_len: usize,
    },
    /// Bytes `offset..offset + skipped_bytes` of the segment held no record
    /// that verified. `reaches_end` is true when they run to the end of the
    /// segment (a torn tail, when it is the newest segment).
    Damage {
        segment: SegmentId,
        offset: u64,
        skipped_bytes: u64,
        reason: DamageReason,
        reaches_end: bool,
    },
}

impl<R> ReadItem<R> {
    /// The same item with its record (if it is one) turned by `f`.
    pub fn map_record<S>(self, f: impl FnOnce(R) -> S) -> ReadItem<S> {
        match self {
            ReadItem::Record { position, record } => ReadItem::Record {
                position,
                record: f(record),
            },
            ReadItem::UnknownKind {
                position,
                kind,
                recv_time_us,
                payload_len,
            } => ReadItem::UnknownKind {
                position,
                kind,
                recv_time_us,
                payload_len,
            },
            ReadItem::Damage {
                segment,
                offset,
                skipped_bytes,
                reason,
                reaches_end,
            } => ReadItem::Damage {
                segment,
                offset,
                skipped_bytes,
                reason,
                reaches_end,
            },
        }
    }
}

/// Items of the log, each record lent until the next item is asked for:
/// what the replay reads, so that a record is decoded where it was read.
pub trait LendItems {
    /// The next item, or `None` once the log is read (or after an `Err`).
    fn next_lent(&mut self) -> Option<Result<ReadItem<RecordRef<'_>>>>;
}

/// What [`super::Wal::open`] cut from the end of the newest earlier segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: SegmentId,
    /// The new length of the segment: the end of its last good record.
    pub cut_at: u64,
    pub cut_bytes: u64,
    /// Why the first cut frame did not verify.
    pub reason: DamageReason,
}

/// Reads every segment of the WAL directory on the real filesystem, in id
/// order. Meant for tools (`verify`); the recorder replays with
/// [`super::OpenReport::replay`].
pub fn read_segments(dir: &Path) -> Result<WalReader> {
    WalReader::open(Arc::new(RealFs), dir)
}

/// Streams records and damage from segments in id order, holding at most
/// about one record (and a read chunk) in memory. After an `Err` item the
/// iterator ends.
#[derive(Debug)]
pub struct WalReader {
    fs: Arc<dyn WalFs>,
    dir: PathBuf,
    pending_segments: VecDeque<SegmentId>,
    current: Option<SegmentScanner>,
    failed: bool,
}

impl WalReader {
    /// Every segment now in `dir`.
    pub fn open(fs: Arc<dyn WalFs>, dir: &Path) -> Result<WalReader> {
        let listing = list_dir(fs.as_ref(), dir)?;
        Ok(WalReader::for_segments(fs, dir, listing.segments))
    }

    /// The given segments, in the order given.
    pub fn for_segments(fs: Arc<dyn WalFs>, dir: &Path, segments: Vec<SegmentId>) -> WalReader {
        WalReader {
            fs,
            dir: dir.to_path_buf(),
            pending_segments: segments.into(),
            current: None,
            failed: false,
        }
    }
}

impl LendItems for WalReader {
    fn next_lent(&mut self) -> Option<Result<ReadItem<RecordRef<'_>>>> {
        let item = loop {
            if self.failed {
                return None;
            }
            let scanner = match &mut self.current {
                Some(scanner) => scanner,
                None => {
                    let segment = self.pending_segments.pop_front()?;
                    let path = segment_path(&self.dir, segment);
                    match self.fs.open_read(&path) {
                        Ok(file) => self
                            .current
                            .insert(SegmentScanner::new(path, segment, file)),
                        Err(source) => {
                            self.failed = true;
                            return Some(Err(WalError::io("open for reading", path, source)));
                        }
                    }
                }
            };
            match scanner.next_item() {
                Ok(Some(item)) => break item,
                Ok(None) => self.current = None,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        };
        let scanner = self
            .current
            .as_ref()
            .expect("the item's segment is being read");
        Some(Ok(item.map_record(|found| scanner.lend(found))))
    }
}

impl Iterator for WalReader {
    type Item = Result<ReadItem>;

    fn next(&mut self) -> Option<Result<ReadItem>> {
        self.next_lent()
            .map(|item| item.map(|item| item.map_record(RecordRef::to_record)))
    }
}

/// Where a record that verified lies in the scanner's buffer, until the
/// scanner reads on.
#[derive(Clone, Debug)]
struct Found {
    kind: RecordKind,
    recv_time_us: i64,
    payload: std::ops::Range<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanState {
    Header,
    Records,
    Done,
}

/// Reads one segment through a sliding buffer.
struct SegmentScanner {
    path: PathBuf,
    segment: SegmentId,
    file: Box<dyn Read + Send>,
    /// Bytes of the file from `buffer_offset` on.
    buffer: Vec<u8>,
    buffer_offset: u64,
    /// Where the next record should start; bytes before it may be dropped.
    position: u64,
    at_eof: bool,
    state: ScanState,
}

impl std::fmt::Debug for SegmentScanner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SegmentScanner")
            .field("path", &self.path)
            .field("position", &self.position)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A frame start judged with all the bytes it needs, or with the end of the
/// file in the way.
enum Verdict {
    Valid(frame::FrameInfo),
    Damaged(DamageReason),
}

fn offset_to_usize(offset: u64) -> usize {
    usize::try_from(offset).expect("buffered span fits in memory")
}

impl SegmentScanner {
    fn new(path: PathBuf, segment: SegmentId, file: Box<dyn Read + Send>) -> SegmentScanner {
        SegmentScanner {
            path,
            segment,
            file,
            buffer: Vec::new(),
            buffer_offset: 0,
            position: 0,
            at_eof: false,
            state: ScanState::Header,
        }
    }

    fn buffer_end(&self) -> u64 {
        self.buffer_offset + self.buffer.len() as u64
    }

    /// The buffered bytes from file offset `offset` on.
    fn available_from(&self, offset: u64) -> &[u8] {
        let start = offset_to_usize(offset - self.buffer_offset).min(self.buffer.len());
        &self.buffer[start..]
    }

    /// Reads until the buffer holds the file up to `end`, or the file ends.
    /// Returns whether it does.
    fn fill_to(&mut self, end: u64) -> Result<bool> {
        if self.buffer_end() >= end {
            return Ok(true);
        }
        // Drop what lies before `position` once it is most of the buffer, so
        // the buffer stays about one record plus a chunk, and moves stay cheap.
        let droppable = offset_to_usize(self.position.saturating_sub(self.buffer_offset))
            .min(self.buffer.len());
        if droppable > 0 && droppable >= self.buffer.len() / 2 {
            self.buffer.drain(..droppable);
            self.buffer_offset += droppable as u64;
        }
        while !self.at_eof && self.buffer_end() < end {
            let missing = offset_to_usize(end - self.buffer_end());
            let want = missing.max(READ_CHUNK) as u64;
            // `take` + `read_to_end` reads into spare capacity without
            // zeroing it first, and retries on `Interrupted`.
            match (&mut self.file).take(want).read_to_end(&mut self.buffer) {
                Ok(0) => self.at_eof = true,
                Ok(_) => {}
                Err(source) => return Err(WalError::io("read", self.path.clone(), source)),
            }
        }
        Ok(self.buffer_end() >= end)
    }

    /// The record `found` by the last [`SegmentScanner::next_item`].
    fn lend(&self, found: Found) -> RecordRef<'_> {
        RecordRef {
            kind: found.kind,
            recv_time_us: found.recv_time_us,
            payload: &self.buffer[found.payload],
        }
    }

    fn next_item(&mut self) -> Result<Option<ReadItem<Found>>> {
        loop {
            match self.state {
                ScanState::Done => return Ok(None),
                ScanState::Header => {
                    if let Some(damage) = self.read_header()? {
                        return Ok(Some(damage));
                    }
                }
                ScanState::Records => return self.read_record(),
            }
        }
    }

    /// Checks the segment header; moves on to the records, or reports damage.
    fn read_header(&mut self) -> Result<Option<ReadItem<Found>>> {
        let header_len = SEGMENT_HEADER_LEN as u64;
        if !self.fill_to(header_len)? {
            self.state = ScanState::Done;
            return Ok(Some(ReadItem::Damage {
                segment: self.segment,
                offset: 0,
                skipped_bytes: self.buffer_end(),
                reason: DamageReason::TruncatedSegmentHeader,
                reaches_end: true,
            }));
        }
        let mut header_bytes = [0u8; SEGMENT_HEADER_LEN];
        header_bytes.copy_from_slice(&self.available_from(0)[..SEGMENT_HEADER_LEN]);
        self.position = header_len;
        self.state = ScanState::Records;
        let header = match frame::decode_segment_header(&header_bytes) {
            Ok(header) => header,
            Err(damage) => {
                // The records carry their own checksums: read on, as format 1.
                let reaches_end = !self.fill_to(header_len + 1)?;
                if reaches_end {
                    self.state = ScanState::Done;
                }
                return Ok(Some(ReadItem::Damage {
                    segment: self.segment,
                    offset: 0,
                    skipped_bytes: header_len,
                    reason: match damage {
                        HeaderDamage::BadMagic => DamageReason::BadSegmentMagic,
                        HeaderDamage::ChecksumMismatch => DamageReason::SegmentHeaderChecksum,
                    },
                    reaches_end,
                }));
            }
        };
        if header.version != frame::FORMAT_VERSION {
            return Err(WalError::UnsupportedVersion {
                path: self.path.clone(),
                version: header.version,
                supported: frame::FORMAT_VERSION,
            });
        }
        if header.flags != 0 {
            return Err(WalError::BadHeader {
                path: self.path.clone(),
                reason: format!("unknown flags {:#06x}", header.flags),
            });
        }
        if header.segment != self.segment {
            return Err(WalError::BadHeader {
                path: self.path.clone(),
                reason: format!(
                    "header names segment {}, the file name {}",
                    header.segment, self.segment
                ),
            });
        }
        Ok(None)
    }

    /// Judges the frame that should start at `start`.
    fn judge_frame(&mut self, start: u64) -> Result<Verdict> {
        let mut needed = frame::FRAME_HEADER_LEN;
        loop {
            let complete = self.fill_to(start + needed as u64)?;
            match frame::check_frame(self.available_from(start)) {
                FrameCheck::Valid(info) => return Ok(Verdict::Valid(info)),
                FrameCheck::Damaged(damage) => return Ok(Verdict::Damaged(damage.into())),
                FrameCheck::NeedBytes(more) => {
                    if !complete || more <= needed {
                        return Ok(Verdict::Damaged(DamageReason::Truncated));
                    }
                    needed = more;
                }
            }
        }
    }

    /// The offset of the next frame at or after `from` that verifies.
    fn find_next_valid_frame(&mut self, from: u64) -> Result<Option<u64>> {
        let mut candidate = from;
        loop {
            self.position = candidate;
            if !self.fill_to(candidate + SYNC_MARKER.len() as u64)? {
                return Ok(None);
            }
            let window = self.available_from(candidate);
            match window
                .windows(SYNC_MARKER.len())
                .position(|bytes| bytes == SYNC_MARKER)
            {
                Some(index) => {
                    let marker_at = candidate + index as u64;
                    if let Verdict::Valid(_) = self.judge_frame(marker_at)? {
                        return Ok(Some(marker_at));
                    }
                    candidate = marker_at + 1;
                }
                // Keep the last bytes: a marker may straddle the next read.
                None => candidate += (window.len() - (SYNC_MARKER.len() - 1)) as u64,
            }
        }
    }

    /// Whether the segment ends at `start` in the zeros a direct write
    /// pads its last block with ([`frame::PAD_TO`]): fewer than a block of
    /// zeros, to a length that is a multiple of it. Such a tail is the
    /// writer's, not damage; anything else after the last record is.
    fn padding_from(&mut self, start: u64) -> Result<bool> {
        let block = frame::PAD_TO as u64;
        if self.fill_to(start + block)? {
            return Ok(false);
        }
        let tail = self.available_from(start);
        Ok(self.buffer_end().is_multiple_of(block) && tail.iter().all(|&byte| byte == 0))
    }

    fn read_record(&mut self) -> Result<Option<ReadItem<Found>>> {
        let start = self.position;
        if !self.fill_to(start + 1)? {
            self.state = ScanState::Done;
            return Ok(None);
        }
        match self.judge_frame(start)? {
            Verdict::Valid(info) => {
                let frame_at = offset_to_usize(start - self.buffer_offset);
                let payload = frame_at + frame::FRAME_HEADER_LEN..frame_at + info.frame_len;
                let position = RecordPosition {
                    segment: self.segment,
                    offset: start,
                };
                let item = match RecordKind::from_byte(info.kind_byte) {
                    Some(kind) => ReadItem::Record {
                        position,
                        record: Found {
                            kind,
                            recv_time_us: info.recv_time_us,
                            payload,
                        },
                    },
                    None => ReadItem::UnknownKind {
                        position,
                        kind: info.kind_byte,
                        recv_time_us: info.recv_time_us,
                        payload_len: payload.len(),
                    },
                };
                self.position = start + info.frame_len as u64;
                Ok(Some(item))
            }
            Verdict::Damaged(_) if self.padding_from(start)? => {
                self.state = ScanState::Done;
                Ok(None)
            }
            Verdict::Damaged(reason) => {
                let next_valid = self.find_next_valid_frame(start + 1)?;
                let end = match next_valid {
                    Some(offset) => offset,
                    None => {
                        // Everything up to the end of the file has been read.
                        self.state = ScanState::Done;
                        self.buffer_end()
                    }
                };
                self.position = end;
                Ok(Some(ReadItem::Damage {
                    segment: self.segment,
                    offset: start,
                    skipped_bytes: end - start,
                    reason,
                    reaches_end: next_valid.is_none(),
                }))
            }
        }
    }
}

/// What [`cut_torn_tail`] found.
#[derive(Debug)]
pub(super) enum TailCheck {
    /// Nothing after the header.
    HeaderOnly,
    /// Ends with a good record (or with damage followed by good records).
    Clean,
    /// The header is damaged: left alone, it may not be ours.
    HeaderDamaged,
    Cut(TornTail),
}

/// Cuts `segment` after its last good record when it ends in damage (a
/// write torn by a crash), so later reads do not report it again.
pub(super) fn cut_torn_tail(
    fs: &Arc<dyn WalFs>,
    dir: &Path,
    segment: SegmentId,
) -> Result<TailCheck> {
    let mut header_damaged = false;
    let mut n_items = 0u64;
    let mut tail: Option<(u64, u64, DamageReason)> = None;
    let mut reader = WalReader::for_segments(Arc::clone(fs), dir, vec![segment]);
    while let Some(item) = reader.next_lent() {
        n_items += 1;
        match item? {
            ReadItem::Damage {
                offset,
                skipped_bytes,
                reason,
                reaches_end,
                ..
            } => {
                if offset == 0 {
                    header_damaged = true;
                }
                tail = reaches_end.then_some((offset, skipped_bytes, reason));
            }
            ReadItem::Record { .. } | ReadItem::UnknownKind { .. } => tail = None,
        }
    }
    if n_items == 0 {
        return Ok(TailCheck::HeaderOnly);
    }
    if header_damaged {
        return Ok(TailCheck::HeaderDamaged);
    }
    let Some((cut_at, cut_bytes, reason)) = tail else {
        return Ok(TailCheck::Clean);
    };
    let path = segment_path(dir, segment);
    fs.truncate(&path, cut_at)
        .map_err(|source| WalError::io("truncate torn tail", path.clone(), source))?;
    warn!(
        segment = segment.0,
        path = %path.display(),
        cut_at,
        cut_bytes,
        ?reason,
        "cut torn tail of wal segment; records lost there are a gap to fill"
    );
    Ok(TailCheck::Cut(TornTail {
        segment,
        cut_at,
        cut_bytes,
        reason,
    }))
}
