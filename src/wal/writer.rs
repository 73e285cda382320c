//! The writer: open, append, group commit, roll, delete, fail-stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::frame::{self, MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN};
use super::fs::{WalFile, WalFs};
use super::reader::{cut_torn_tail, TailCheck, TornTail, WalReader};
use super::segment::{list_dir, segment_path, temporary_segment_path};
use super::sync_policy::SyncSchedule;
use super::{
    FsyncPolicy, Record, RecordKind, RecordPosition, Result, SegmentId, WalConfig, WalError,
};

/// Appended bytes are handed to the kernel (without fsync) once this many are
/// buffered, so a long interval between syncs does not grow memory without
/// bound, and a sync has little left to write.
const WRITE_OUT_THRESHOLD: usize = 1024 * 1024;

/// What [`super::Wal::open`] found and repaired.
#[derive(Debug)]
pub struct OpenReport {
    fs: Arc<dyn WalFs>,
    dir: PathBuf,
    /// Segments written by earlier processes, in id order: the ones to replay.
    pub previous_segments: Vec<SegmentId>,
    /// The torn tail cut from the newest previous segment holding more than
    /// a header, if it had one. The records lost there are a gap to fill.
    pub torn_tail: Option<TornTail>,
    /// Leftover temporary segment files (of an interrupted segment creation)
    /// that were removed.
    pub removed_temporary_files: Vec<PathBuf>,
}

impl OpenReport {
    /// Reads the previous segments (not the new active one), in order.
    pub fn replay(&self) -> WalReader {
        WalReader::for_segments(
            Arc::clone(&self.fs),
            &self.dir,
            self.previous_segments.clone(),
        )
    }
}

/// Appends records to the active segment. One owner, blocking calls.
#[derive(Debug)]
pub struct WalWriter {
    fs: Arc<dyn WalFs>,
    dir: PathBuf,
    segment_max_bytes: u64,
    /// Every segment on disk, the active one included, with its length in
    /// bytes when closed (the active one's is `active.len`).
    segments: BTreeMap<SegmentId, u64>,
    active: ActiveSegment,
    /// Encoded frames not yet handed to the kernel, when the active
    /// segment's file keeps no buffer of its own ([`WalFile::buffer`]).
    pending: Vec<u8>,
    schedule: SyncSchedule,
    /// Set when a segment roll happened and the caller has not asked yet.
    rolled_to: Option<SegmentId>,
    /// Set by the first I/O error; from then on the writer refuses work.
    failure: Option<String>,
}

#[derive(Debug)]
struct ActiveSegment {
    id: SegmentId,
    path: PathBuf,
    file: Box<dyn WalFile>,
    /// Bytes of the segment, header and pending ones included.
    len: u64,
    n_records: u64,
    /// Where the bytes synced but still in the page cache start.
    cached_from: u64,
}

pub(super) fn open(config: &WalConfig, fs: Arc<dyn WalFs>) -> Result<(WalWriter, OpenReport)> {
    config.validate()?;
    let dir = config.dir.clone();
    fs.create_dir_all(&dir)
        .map_err(|source| WalError::io("create directory", dir.clone(), source))?;
    let listing = list_dir(fs.as_ref(), &dir)?;

    // A temporary segment never held an acknowledged record: its header was
    // not yet durable under its final name.
    let mut removed_temporary_files = Vec::new();
    for path in listing.temporaries {
        fs.remove_file(&path)
            .map_err(|source| WalError::io("remove temporary segment", path.clone(), source))?;
        warn!(path = %path.display(), "removed leftover temporary wal segment");
        removed_temporary_files.push(path);
    }
    if !removed_temporary_files.is_empty() {
        fs.sync_dir(&dir)
            .map_err(|source| WalError::io("fsync directory", dir.clone(), source))?;
    }

    let next_id = match listing.segments.last() {
        Some(newest) => SegmentId(newest.0.checked_add(1).ok_or_else(|| WalError::BadHeader {
            path: segment_path(&dir, *newest),
            reason: "segment ids exhausted".to_owned(),
        })?),
        None => SegmentId(1),
    };
    let active = create_segment(fs.as_ref(), &dir, next_id)?;

    // Cut the torn tail only once the new segment exists: an open that fails
    // before this point changes nothing, so the damage is still there to be
    // reported by the next open. Header-only segments (left by a failed open
    // or a crash just after a roll) are passed over.
    let mut torn_tail = None;
    for segment in listing.segments.iter().rev() {
        match cut_torn_tail(&fs, &dir, *segment)? {
            TailCheck::HeaderOnly => continue,
            TailCheck::Clean | TailCheck::HeaderDamaged => {}
            TailCheck::Cut(torn) => torn_tail = Some(torn),
        }
        break;
    }
    info!(
        dir = %dir.display(),
        active_segment = next_id.0,
        n_previous_segments = listing.segments.len(),
        "wal opened"
    );

    let mut segments: BTreeMap<SegmentId, u64> = listing
        .segments
        .iter()
        .map(|segment| {
            // Only the size gauge reads this: a file that cannot be measured counts 0.
            let len = fs.file_len(&segment_path(&dir, *segment)).unwrap_or(0);
            (*segment, len)
        })
        .collect();
    segments.insert(next_id, 0);
    let writer = WalWriter {
        fs: Arc::clone(&fs),
        dir: dir.clone(),
        segment_max_bytes: config.segment_max_bytes,
        segments,
        active,
        pending: Vec::new(),
        schedule: SyncSchedule::new(config.fsync),
        rolled_to: None,
        failure: None,
    };
    let report = OpenReport {
        fs,
        dir,
        previous_segments: listing.segments,
        torn_tail,
        removed_temporary_files,
    };
    Ok((writer, report))
}

/// Creates segment `id` durably: header written and fsynced under a
/// temporary name, renamed, directory fsynced. A crash leaves either no
/// segment or a whole header.
fn create_segment(fs: &dyn WalFs, dir: &Path, id: SegmentId) -> Result<ActiveSegment> {
    let temporary_path = temporary_segment_path(dir, id);
    let path = segment_path(dir, id);
    let mut file = fs
        .create_new(&temporary_path)
        .map_err(|source| WalError::io("create segment", temporary_path.clone(), source))?;
    write_all(file.as_mut(), &frame::encode_segment_header(id))
        .map_err(|source| WalError::io("write segment header", temporary_path.clone(), source))?;
    file.sync_data()
        .map_err(|source| WalError::io("fsync", temporary_path.clone(), source))?;
    fs.rename(&temporary_path, &path)
        .map_err(|source| WalError::io("rename segment", temporary_path.clone(), source))?;
    fs.sync_dir(dir)
        .map_err(|source| WalError::io("fsync directory", dir, source))?;
    Ok(ActiveSegment {
        id,
        path,
        file,
        len: SEGMENT_HEADER_LEN as u64,
        n_records: 0,
        cached_from: 0,
    })
}

/// Writes all of `bytes`, going on after short writes.
fn write_all(file: &mut dyn WalFile, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n_written) => bytes = &bytes[n_written..],
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

impl WalWriter {
    /// Buffers `record` at the end of the log and returns where it starts.
    /// Not durable until a later [`WalWriter::sync`] returns `Ok`.
    ///
    /// If the active segment has reached `segment_max_bytes`, it is first
    /// synced and closed and a new segment started; [`WalWriter::take_rolled`]
    /// then says so. To put a checkpoint first in each segment, call
    /// [`WalWriter::roll_due`] / [`WalWriter::roll`] before appending.
    pub fn append(&mut self, record: &Record) -> Result<RecordPosition> {
        self.append_parts(record.kind, record.recv_time_us, &[&record.payload])
    }

    /// [`WalWriter::append`] of a record whose payload is `parts` one after
    /// the other, without joining them first (a frame's tag byte and the
    /// frame as received).
    pub fn append_parts(
        &mut self,
        kind: RecordKind,
        recv_time_us: i64,
        parts: &[&[u8]],
    ) -> Result<RecordPosition> {
        self.check_not_failed()?;
        let payload_len: usize = parts.iter().map(|part| part.len()).sum();
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(WalError::RecordTooLarge {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        if self.roll_due() {
            self.roll()?;
        }
        let position = RecordPosition {
            segment: self.active.id,
            offset: self.active.len,
        };
        let pending = self.active.file.buffer().unwrap_or(&mut self.pending);
        frame::encode_parts(kind, recv_time_us, parts, pending);
        let pending_len = pending.len();
        let n_bytes = frame::frame_len(payload_len) as u64;
        self.active.len += n_bytes;
        self.active.n_records += 1;
        // Only the first unsynced record's time counts: one clock reading
        // a batch, not one a record.
        let now = self
            .schedule
            .oldest_unsynced_at()
            .unwrap_or_else(Instant::now);
        self.schedule.on_append(now, n_bytes);
        if pending_len >= WRITE_OUT_THRESHOLD {
            self.write_out()?;
        }
        Ok(position)
    }

    /// Writes out every appended record and fsyncs (`fdatasync`) the active
    /// segment. After `Ok`, every record appended so far is durable. After
    /// `Err`, the writer is failed: see the module doc.
    pub fn sync(&mut self) -> Result<()> {
        self.check_not_failed()?;
        if self.schedule.n_unsynced_records() == 0 && self.pending.is_empty() {
            return Ok(());
        }
        self.write_out()?;
        if let Err(source) = self.active.file.sync_data() {
            // Never fsync this file again: the kernel may have dropped the
            // dirty pages and would report success next time.
            return Err(self.fail(WalError::io("fsync", self.active.path.clone(), source)));
        }
        self.schedule.on_sync();
        let synced_to = self.active.len;
        self.active
            .file
            .drop_cached(self.active.cached_from, synced_to);
        self.active.cached_from = synced_to;
        Ok(())
    }

    /// Syncs and consumes the writer (clean shutdown).
    pub fn close(mut self) -> Result<()> {
        self.sync()
    }

    /// Whether the [`FsyncPolicy`] wants a sync at `now`.
    pub fn needs_sync(&self, now: Instant) -> bool {
        self.schedule.is_due(now)
    }

    /// When the next sync is due (`None` while nothing is unsynced): the
    /// caller waits for more input at most until then.
    pub fn sync_deadline(&self) -> Option<Instant> {
        self.schedule.deadline()
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.schedule.policy()
    }

    /// Records appended since the last successful sync.
    pub fn n_unsynced_records(&self) -> u64 {
        self.schedule.n_unsynced_records()
    }

    /// Whether the next append will start a new segment.
    pub fn roll_due(&self) -> bool {
        self.active.n_records > 0 && self.active.len >= self.segment_max_bytes
    }

    /// Syncs and closes the active segment and starts the next one, even if
    /// the active one is not full. Returns the new segment's id.
    ///
    /// # Panics
    ///
    /// When segment ids reach `u64::MAX`, which no WAL lives to see.
    pub fn roll(&mut self) -> Result<SegmentId> {
        self.check_not_failed()?;
        self.sync()?;
        let next_id = SegmentId(
            self.active
                .id
                .0
                .checked_add(1)
                .expect("u64 segment ids do not run out"),
        );
        let next = match create_segment(self.fs.as_ref(), &self.dir, next_id) {
            Ok(next) => next,
            Err(error) => return Err(self.fail(error)),
        };
        debug!(
            closed_segment = self.active.id.0,
            active_segment = next_id.0,
            "wal segment rolled"
        );
        let closed = std::mem::replace(&mut self.active, next);
        self.segments.insert(closed.id, closed.len);
        self.segments.insert(next_id, 0);
        self.rolled_to = Some(next_id);
        Ok(next_id)
    }

    /// The segment started by the latest roll, once; the caller writes a
    /// checkpoint record into it.
    pub fn take_rolled(&mut self) -> Option<SegmentId> {
        self.rolled_to.take()
    }

    pub fn active_segment(&self) -> SegmentId {
        self.active.id
    }

    /// Every segment on disk, in id order, the active one last.
    pub fn segments(&self) -> Vec<SegmentId> {
        self.segments.keys().copied().collect()
    }

    /// Bytes of every segment on disk, the active one's unsynced tail included.
    pub fn bytes_on_disk(&self) -> u64 {
        let closed: u64 = self
            .segments
            .iter()
            .filter(|(id, _)| **id != self.active.id)
            .map(|(_, len)| *len)
            .sum();
        closed.saturating_add(self.active.len)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier error failed the writer (reopen to go on).
    pub fn is_failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Deletes every segment with an id up to `last`, then fsyncs the
    /// directory; returns the ids deleted. Refuses (deleting nothing) when
    /// `last` reaches the active segment. A segment already gone counts as
    /// deleted, so a deletion cut short by a crash can simply be repeated.
    /// Works on a failed writer too: old segments are unaffected by failure.
    pub fn delete_segments_upto(&mut self, last: SegmentId) -> Result<Vec<SegmentId>> {
        if last >= self.active.id {
            return Err(WalError::DeleteActiveSegment {
                segment: self.active.id,
            });
        }
        let doomed: Vec<SegmentId> = self.segments.range(..=last).map(|(id, _)| *id).collect();
        self.delete(&doomed)?;
        Ok(doomed)
    }

    /// Deletes one segment (not the active one) and fsyncs the directory.
    pub fn delete_segment(&mut self, segment: SegmentId) -> Result<()> {
        if segment == self.active.id {
            return Err(WalError::DeleteActiveSegment { segment });
        }
        self.delete(&[segment])
    }

    /// Removes the files, then fsyncs the directory even when `doomed` is
    /// empty: a retry after a failed directory fsync must still make the
    /// earlier removals durable.
    fn delete(&mut self, doomed: &[SegmentId]) -> Result<()> {
        for segment in doomed {
            let path = segment_path(&self.dir, *segment);
            match self.fs.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(WalError::io("delete segment", path, source)),
            }
            self.segments.remove(segment);
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|source| WalError::io("fsync directory", self.dir.clone(), source))?;
        if let (Some(first), Some(last)) = (doomed.first(), doomed.last()) {
            debug!(first = first.0, last = last.0, "wal segments deleted");
        }
        Ok(())
    }

    /// Hands the buffered frames to the kernel (no fsync).
    fn write_out(&mut self) -> Result<()> {
        if let Err(source) = self.active.file.write_buffer() {
            return Err(self.fail(WalError::io("write", self.active.path.clone(), source)));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(source) = write_all(self.active.file.as_mut(), &self.pending) {
            // Part of a frame may be in the file; nothing more may follow it.
            return Err(self.fail(WalError::io("write", self.active.path.clone(), source)));
        }
        self.pending.clear();
        Ok(())
    }

    fn check_not_failed(&self) -> Result<()> {
        match &self.failure {
            Some(cause) => Err(WalError::WriterFailed {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the writer failed by `error`, which it returns.
    fn fail(&mut self, error: WalError) -> WalError {
        warn!(
            segment = self.active.id.0,
            n_unsynced_records = self.schedule.n_unsynced_records(),
            %error,
            "wal writer failed; it must be reopened"
        );
        self.failure = Some(error.to_string());
        self.pending.clear();
        error
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        // No I/O here: unsynced records were never acknowledged, and a
        // failed writer must not touch its file again.
        if self.failure.is_none() && self.schedule.n_unsynced_records() > 0 {
            warn!(
                segment = self.active.id.0,
                n_unsynced_records = self.schedule.n_unsynced_records(),
                "wal writer dropped with unsynced records; they were not acknowledged"
            );
        }
    }
}
