//! Group commit: the runtime's pending records go to the WAL in one batch
//! on a blocking thread (append and fsync, with the decoding beside them on
//! a second thread kept for the runtime's life, `batch/decoder.rs`; then delete the segments no unsealed hour needs), at most `wal.fsync_interval_ms` after the first of
//! them or at once when [`MAX_BATCH_RECORDS`] wait. A failed batch is kept in
//! memory and written to a new segment after a back-off; the applied
//! records reach the state only once durable, while the next batch is
//! written (its deletions keep their segments: [`oldest_kept`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

mod decoder;

use decoder::{decode_job, DecodeJob, Decoder};

use super::{Runtime, MAX_BATCH_RECORDS};
use crate::backoff::Backoff;
use crate::binance::ws::now_us;
use crate::domain::Market;
use crate::metrics::{thread_cpu, Counters, Work};
use crate::quarantine::{self, QuarantinedFrame};
use crate::recorder::records::{checkpoint_record, Applied, Outgoing};
use crate::wal::fs::WalFs;
use crate::wal::{
    FsyncPolicy, Record, RecordKind, SegmentId, SyncSchedule, Wal, WalConfig, WalError, WalWriter,
};

/// The outcome of one WAL batch, computed on a blocking thread.
pub(super) struct BatchOutcome {
    wal: Option<WalWriter>,
    /// On failure: the records, to append again after reopening.
    result: Result<Vec<Applied>, (WalError, Vec<Outgoing>)>,
    n_frames: u64,
    n_quarantined: u64,
    /// Why the batch's first quarantined frame was (for the log).
    first_quarantine_error: Option<String>,
    /// Bytes of the WAL's segments after the batch (and any deletion).
    wal_bytes: Option<u64>,
    /// Time the appends and the fsync took, when they succeeded.
    write_seconds: Option<f64>,
    /// The segment the batch's records start in, when they were written
    /// (they pin it and those after until their rows are in the state).
    first_written: Option<SegmentId>,
    /// CPU time of the appends, fsync and deletions, and of the decoding
    /// beside them (`cpu_seconds_total`).
    cpu: BatchCpu,
    /// The batch's lists, empty, for the next batch (`records` only when
    /// the batch succeeded; a failed one's records wait again).
    lists: BatchLists,
    records: Vec<Outgoing>,
}

/// The CPU time a batch's two threads used.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct BatchCpu {
    write: Duration,
    decode: Duration,
}

/// A batch's working lists, kept empty from one batch to the next rather
/// than made afresh: at up to [`MAX_BATCH_RECORDS`] records a batch they
/// are a few MB, past glibc's mmap threshold under the unit's allocator
/// settings, so each batch mapped and faulted them in anew (about a page
/// fault every 20 frames of a burst). None keeps more than
/// [`MAX_BATCH_RECORDS`] entries' room.
#[derive(Default)]
pub(super) struct BatchLists {
    applied: Vec<Applied>,
    record_of: Vec<usize>,
    segments: Vec<Option<SegmentId>>,
    /// The decode thread, kept from batch to batch with the lists, failed
    /// batches too (started by the first batch that opens the WAL, and
    /// again if it was lost).
    decoder: Option<Decoder>,
}

impl BatchLists {
    /// The lists emptied, each with at most [`MAX_BATCH_RECORDS`] room.
    fn emptied(mut self) -> BatchLists {
        empty(&mut self.applied);
        empty(&mut self.record_of);
        empty(&mut self.segments);
        self
    }

    /// Puts back the list of items applied, emptied.
    pub(super) fn put_applied(&mut self, mut applied: Vec<Applied>) {
        empty(&mut applied);
        self.applied = applied;
    }
}

/// Empties `list`, keeping at most [`MAX_BATCH_RECORDS`] entries' room.
fn empty<T>(list: &mut Vec<T>) {
    list.clear();
    list.shrink_to(MAX_BATCH_RECORDS);
}

/// The pause before a failed batch is written again: 1 s doubling to 30 s.
const WAL_RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Records waiting for the next WAL batch. When they are due is the WAL's
/// own group-commit rule ([`SyncSchedule`], from the first of them), so the
/// runtime and the writer cannot disagree on what `wal.fsync` means.
pub(super) struct Pending {
    records: Vec<Outgoing>,
    /// The last batch's list, empty, for the next (see [`BatchLists`]).
    spare: Vec<Outgoing>,
    schedule: SyncSchedule,
    /// Set by the stop: the records waiting now are due at once.
    at_once: bool,
}

impl Pending {
    pub(super) fn new(policy: FsyncPolicy) -> Pending {
        Pending {
            records: Vec::new(),
            spare: Vec::new(),
            schedule: SyncSchedule::new(policy),
            at_once: false,
        }
    }

    pub(super) fn push(&mut self, record: impl Into<Outgoing>) {
        let record = record.into();
        // Only the first waiting record's time counts: one clock reading a
        // batch, not one a frame. tokio's clock (paused in tests), kept as
        // the std instant under it.
        let now = self
            .schedule
            .oldest_unsynced_at()
            .unwrap_or_else(|| Instant::now().into_std());
        self.schedule.on_append(now, record.frame_len());
        self.records.push(record);
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// When the oldest waiting record arrived.
    pub(super) fn since(&self) -> Option<Instant> {
        self.schedule.oldest_unsynced_at().map(Instant::from_std)
    }

    /// When the waiting records are due, by the group-commit rule.
    fn deadline(&self) -> Option<Instant> {
        if self.at_once {
            return self.since();
        }
        self.schedule.deadline().map(Instant::from_std)
    }

    /// Makes what waits now due at once (the stop's last flush).
    pub(super) fn due_at_once(&mut self) {
        self.at_once = true;
    }

    /// Every waiting record, for a batch; the next wait in the last
    /// batch's list.
    fn take(&mut self) -> Vec<Outgoing> {
        self.schedule.on_sync();
        self.at_once = false;
        std::mem::replace(&mut self.records, std::mem::take(&mut self.spare))
    }

    /// A batch's list of records back, for the one after next.
    fn reuse(&mut self, mut list: Vec<Outgoing>) {
        empty(&mut list);
        if list.capacity() > self.spare.capacity() {
            self.spare = list;
        }
    }

    /// A failed batch's records go back before the ones that came since,
    /// all waiting from now.
    fn put_back(&mut self, records: Vec<Outgoing>) {
        let arrived_since = self.take();
        for record in records.into_iter().chain(arrived_since) {
            self.push(record);
        }
    }
}

impl Runtime {
    pub(super) fn sync_deadline(&self) -> Option<Instant> {
        if self.batch.is_some() {
            return None;
        }
        let deadline = self.pending.deadline()?;
        Some(
            self.wal_retry_at
                .map_or(deadline, |retry_at| retry_at.max(deadline)),
        )
    }

    /// Starts a WAL batch when one is due and none is running: group commit.
    pub(super) fn maybe_start_batch(&mut self) {
        self.start_batch_if_due(None);
    }

    /// [`Runtime::maybe_start_batch`] while the rows of a batch written
    /// from segment `unapplied_from` are not in the state yet: the new
    /// batch's deletions keep that segment and those after it.
    fn start_batch_if_due(&mut self, unapplied_from: Option<SegmentId>) {
        if self.batch.is_some() || self.pending.is_empty() {
            return;
        }
        if self
            .wal_retry_at
            .is_some_and(|retry_at| Instant::now() < retry_at)
        {
            return;
        }
        let due = self.pending.len() >= MAX_BATCH_RECORDS
            || self
                .sync_deadline()
                .is_some_and(|deadline| deadline <= Instant::now());
        if !due {
            return;
        }
        let records = self.pending.take();
        self.batch_started = Some(Instant::now());
        self.batch_oldest_recv_us = records
            .iter()
            .filter(|record| record.kind() == RecordKind::WsFrame)
            .map(Outgoing::recv_time_us)
            .min();
        let wal = self.wal.take();
        let checkpoints: Vec<Record> = self
            .state
            .checkpoints()
            .iter()
            .map(checkpoint_record)
            .collect();
        let pinned = oldest_kept(self.state.oldest_pinned_segment(), unapplied_from);
        let wal_config = self.wal_config.clone();
        let wal_fs = self.wal_fs.clone();
        let n_buffered = (records.len() + self.pending.len()) as u64;
        Counters::raise(&self.counters.frames_buffered_max, n_buffered);
        let quarantine_dir = self.config.quarantine_dir.clone();
        let lists = std::mem::take(&mut self.batch_lists);
        self.batch = Some(tokio::task::spawn_blocking(move || {
            write_batch(
                wal,
                (wal_config, wal_fs),
                (records, lists),
                checkpoints,
                pinned,
                &quarantine_dir,
            )
        }));
    }

    pub(super) async fn finish_batch(&mut self, outcome: BatchOutcome) {
        self.wal = outcome.wal;
        // The list of items the last batch applied waits here (see below).
        let applied_list = std::mem::take(&mut self.batch_lists.applied);
        self.batch_lists = outcome.lists;
        if self.batch_lists.applied.capacity() < applied_list.capacity() {
            self.batch_lists.applied = applied_list;
        }
        self.pending.reuse(outcome.records);
        self.batch_started = None;
        if let Some(first_error) = &outcome.first_quarantine_error {
            // Logged for the first frame, then at each power of ten, so a
            // flood of bad frames cannot flood the log; the counter has them all.
            let total_before = self.counters.frames_quarantined.get();
            let total_after = total_before + outcome.n_quarantined;
            if total_before == 0 || total_before.ilog10() != total_after.ilog10() {
                warn!(total = total_after, %first_error, "frames could not be decoded; kept in quarantine");
            }
        }
        Counters::add(&self.counters.frames_quarantined, outcome.n_quarantined);
        self.counters.add_cpu(Work::WalWrite, outcome.cpu.write);
        self.counters.add_cpu(Work::Decode, outcome.cpu.decode);
        if let Some(wal_bytes) = outcome.wal_bytes {
            Counters::set(&self.counters.wal_bytes, wal_bytes);
        }
        match outcome.result {
            Ok(mut applied) => {
                if self.wal_failures > 0 {
                    info!(n_failures = self.wal_failures, "WAL writes succeed again");
                    self.wal_failures = 0;
                    self.wal_retry_at = None;
                }
                Counters::add(&self.counters.wal_syncs, 1);
                self.last_commit = Instant::now();
                if let Some(seconds) = outcome.write_seconds {
                    self.counters.wal_fsync_seconds.observe(seconds);
                }
                if let Some(oldest) = self.batch_oldest_recv_us {
                    let waited_us = now_us().saturating_sub(oldest).max(0);
                    self.counters
                        .receive_to_durable_seconds
                        .observe(waited_us as f64 / 1e6);
                }
                Counters::add(&self.counters.frames_durable, outcome.n_frames);
                // The next batch goes to the disk while this one's rows are
                // applied: the rows take a fifth of a batch's time, and the
                // links wait on a full channel meanwhile. Its deletions
                // keep this batch's segments, whose rows pin nothing yet.
                self.start_batch_if_due(outcome.first_written);
                let now = self.now_ms();
                for item in applied.drain(..) {
                    match item {
                        Applied::Frame {
                            market,
                            segment,
                            decoded,
                        } => self.state.apply(market, segment, decoded),
                        Applied::Checkpoint(_) => {}
                        Applied::Fill { segment, report } => {
                            self.state.apply_fill(segment, report, now)
                        }
                    }
                }
                self.batch_lists.put_applied(applied);
                let seen = self.state.take_seen();
                self.observe_streams(&seen);
                self.start_spills();
                let rejected = self.state.take_rejected();
                if !rejected.is_empty() {
                    // Rare (a lying feed), small, and already durable in the WAL.
                    let directory = self.config.quarantine_dir.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        quarantine::append(&directory, &rejected)
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        error!(
                            ?written,
                            "cannot write implausible rows to the quarantine; they stay in the WAL"
                        );
                    }
                }
            }
            Err((error, _)) if error.retry() == crate::wal::Retry::Never => {
                // Retrying cannot help (a segment this release cannot read,
                // a bad config): stop, loudly, rather than retry forever.
                // What was acknowledged is in the WAL. Logged once, by
                // main, with the exit status.
                self.fatal = Some(anyhow::anyhow!("WAL: {error}"));
                self.wal_lost = true;
            }
            Err((error, records)) => {
                // Nothing of the batch was acknowledged: it waits in memory
                // (the channel then fills and the links are slowed, then
                // given up; REST fills what they miss) and is written to a
                // new segment once the disk takes it again.
                self.wal_failures += 1;
                Counters::add(&self.counters.wal_write_failures, 1);
                let backoff = WAL_RETRY_BACKOFF.ceiling(self.wal_failures - 1);
                if self.wal_failures == 1 || self.wal_failures.is_multiple_of(10) {
                    error!(%error, n_records = records.len(), n_failures = self.wal_failures, retry_in_ms = backoff.as_millis() as u64, "WAL write failed; nothing in this batch was acknowledged, retrying in a new segment");
                }
                self.pending.put_back(records);
                self.wal_retry_at = Some(Instant::now() + backoff);
            }
        }
    }
}

pub(super) async fn wait_batch(
    batch: &mut Option<JoinHandle<BatchOutcome>>,
) -> Result<BatchOutcome, tokio::task::JoinError> {
    let Some(handle) = batch.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = handle.await;
    *batch = None;
    outcome
}

/// Appends and syncs one batch, then decodes it. Runs on a blocking thread.
/// A failed writer is reopened with the config and filesystem given; the
/// lists (kept between batches) come back empty in the outcome, with the
/// records' list once they are written.
fn write_batch(
    wal: Option<WalWriter>,
    (wal_config, wal_fs): (WalConfig, Arc<dyn WalFs>),
    (records, lists): (Vec<Outgoing>, BatchLists),
    checkpoints: Vec<Record>,
    pinned: Option<SegmentId>,
    quarantine_dir: &Path,
) -> BatchOutcome {
    let BatchLists {
        applied,
        record_of,
        mut segments,
        decoder,
    } = lists.emptied();
    let n_frames = records
        .iter()
        .filter(|record| record.kind() == RecordKind::WsFrame)
        .count() as u64;
    let mut wal = match wal {
        Some(wal) if !wal.is_failed() => wal,
        _ => match Wal::open_with_fs(wal_config, wal_fs) {
            // A failed writer is never used again (no fsync retry on the
            // same file): a new segment takes the unacknowledged records.
            Ok((wal, _report)) => wal,
            Err(error) => {
                return BatchOutcome {
                    wal: None,
                    result: Err((error, records)),
                    n_frames,
                    n_quarantined: 0,
                    first_quarantine_error: None,
                    wal_bytes: None,
                    write_seconds: None,
                    first_written: None,
                    cpu: BatchCpu::default(),
                    // The decode thread waits for the next try.
                    lists: BatchLists {
                        decoder,
                        ..BatchLists::default()
                    },
                    records: Vec::new(),
                };
            }
        },
    };
    // This batch's rows land in this segment or later ones; the state has
    // not seen them yet, so they pin it until they are applied.
    // Started here, once the WAL is open (the first batch, or after the
    // thread was lost), not before a failed open.
    let decoder = decoder.or_else(Decoder::start);
    let first_written = wal.active_segment();
    let write_started = std::time::Instant::now();
    let write_cpu = thread_cpu();
    // Decoding does not wait for the disk: it runs beside the appends and
    // the fsync, and what it gives is used only once they succeed.
    let records = Arc::new(records);
    let job = DecodeJob {
        records: Arc::clone(&records),
        segment: first_written,
        applied,
        record_of,
    };
    let unsent = match &decoder {
        Some(decoder) => decoder.send(job).err(),
        None => Some(job),
    };
    let appended = append_and_sync(&mut wal, &records, &checkpoints, &mut segments);
    let (decoded, decoder) = match unsent {
        // No thread (or it is gone): decoded here, after the appends.
        Some(job) => (decode_job(job), None),
        None => {
            let decoder = decoder.expect("the job went to the decoder");
            (decoder.answer(), Some(decoder))
        }
    };
    // The decoder let its share go before it answered.
    let mut records = Arc::try_unwrap(records)
        .unwrap_or_else(|_| unreachable!("the decoder keeps no records after its answer"));
    let decode_cpu = decoded.cpu;
    let record_of = decoded.record_of;
    let released = decoded.released;
    if let Err(error) = appended {
        return BatchOutcome {
            wal: Some(wal),
            result: Err((error, records)),
            n_frames,
            n_quarantined: 0,
            first_quarantine_error: None,
            wal_bytes: None,
            write_seconds: None,
            first_written: None,
            cpu: BatchCpu {
                write: thread_cpu().saturating_sub(write_cpu),
                decode: decode_cpu,
            },
            lists: BatchLists {
                decoder,
                ..BatchLists::default()
            },
            records: Vec::new(),
        };
    }
    if let Some(upto) = deletable_upto(&wal.segments(), first_written, pinned) {
        match wal.delete_segments_upto(upto) {
            Ok(deleted) => debug!(
                ?deleted,
                "WAL segments deleted: every hour they fed is sealed"
            ),
            Err(error) => warn!(%error, "cannot delete WAL segments; will retry"),
        }
    }
    let write_seconds = write_started.elapsed().as_secs_f64();
    let wal_bytes = wal.bytes_on_disk();
    // Records over the WAL's limit are not recorded: their rows are left
    // out, and they are kept in the quarantine in part instead.
    let mut quarantined: Vec<(usize, QuarantinedFrame)> = segments
        .iter()
        .enumerate()
        .filter(|(_, segment)| segment.is_none())
        .map(|(index, _)| (index, over_the_limit(&records[index])))
        .collect();
    quarantined.extend(
        decoded
            .quarantined
            .into_iter()
            .filter(|(index, _)| segments[*index].is_some()),
    );
    quarantined.sort_by_key(|(index, _)| *index);
    let quarantined: Vec<QuarantinedFrame> =
        quarantined.into_iter().map(|(_, frame)| frame).collect();
    // In place: a batch's decoded rows are a few MB, not moved again. The
    // decode marked them with the segment the batch started in: only when
    // a record went elsewhere (the WAL rolled over, or left one out) are
    // they walked again.
    let mut applied = decoded.applied;
    if !segments
        .iter()
        .all(|segment| *segment == Some(first_written))
    {
        let mut record_of_items = record_of.iter();
        applied.retain_mut(|item| {
            match segments[*record_of_items.next().expect("one record index per item")] {
                Some(segment) => {
                    item.set_segment(segment);
                    true
                }
                None => false,
            }
        });
    }
    let n_quarantined = quarantined.len() as u64;
    let first_quarantine_error = quarantined.first().map(|frame| frame.error.clone());
    if !quarantined.is_empty() {
        if let Err(error) = quarantine::append(quarantine_dir, &quarantined) {
            error!(%error, "cannot write the quarantine; the frames stay in the WAL");
        }
    }
    // Let go on the decode thread (a batch's frames take a few hundred
    // µs to free, which the next batch would wait for here).
    let records = match &decoder {
        Some(decoder) => {
            decoder.release(records);
            released
        }
        None => {
            records.clear();
            records
        }
    };
    BatchOutcome {
        wal: Some(wal),
        result: Ok(applied),
        n_frames,
        n_quarantined,
        first_quarantine_error,
        wal_bytes: Some(wal_bytes),
        write_seconds: Some(write_seconds),
        first_written: Some(first_written),
        cpu: BatchCpu {
            write: thread_cpu().saturating_sub(write_cpu),
            decode: decode_cpu,
        },
        lists: BatchLists {
            applied: Vec::new(),
            record_of,
            segments,
            decoder,
        },
        records,
    }
}

/// What the quarantine keeps of a record too big for the WAL: its start.
fn over_the_limit(record: &Outgoing) -> QuarantinedFrame {
    const KEPT_BYTES: usize = 4096;
    let (payload_len, kept) = record.payload_start(KEPT_BYTES);
    let market = kept
        .first()
        .and_then(|tag| Market::from_wal_tag(*tag))
        .unwrap_or(Market::Spot);
    QuarantinedFrame {
        market,
        recv_time_us: record.recv_time_us(),
        error: format!(
            "record of {payload_len} bytes is over the WAL's limit; not recorded (first {KEPT_BYTES} bytes kept)"
        ),
        frame: String::from_utf8_lossy(&kept).into_owned(),
    }
}

/// Appends a batch's records (rolling the segment when due, with the
/// checkpoints at the head of each new one) and syncs them. `segments`
/// gets each record's segment, or `None` for one over the WAL's limit:
/// retrying cannot help it and the writer stays usable, so it is set
/// aside (for the quarantine) and the rest go on.
fn append_and_sync(
    wal: &mut WalWriter,
    records: &[Outgoing],
    checkpoints: &[Record],
    segments: &mut Vec<Option<SegmentId>>,
) -> Result<(), WalError> {
    for record in records {
        if wal.roll_due() {
            wal.roll()?;
            for checkpoint in checkpoints {
                wal.append(checkpoint)?;
            }
        }
        match record.append_to(wal) {
            Ok(position) => segments.push(Some(position.segment)),
            Err(WalError::RecordTooLarge { .. }) => segments.push(None),
            Err(error) => return Err(error),
        }
    }
    wal.sync()
}

/// Pure: the oldest segment a batch must keep for what is not sealed: the
/// oldest `pinned` by the state's hours, or `unapplied_from`, where the
/// batch whose rows are being applied as it starts wrote from (those rows
/// are not in the state, so they pin nothing yet).
pub(crate) fn oldest_kept(
    pinned: Option<SegmentId>,
    unapplied_from: Option<SegmentId>,
) -> Option<SegmentId> {
    pinned.into_iter().chain(unapplied_from).min()
}

/// Pure: the newest segment that may be deleted, when there is one on disk
/// (`segments`, in id order) to delete. Kept: every segment from the oldest
/// one holding a row of an unsealed or in-flight hour (`pinned`), and every
/// segment from `first_written`, the one the batch being applied started
/// in (its rows are not in the state yet, so they pin nothing yet).
pub(crate) fn deletable_upto(
    segments: &[SegmentId],
    first_written: SegmentId,
    pinned: Option<SegmentId>,
) -> Option<SegmentId> {
    let keep_from = pinned.map_or(first_written, |pinned| pinned.min(first_written));
    segments
        .iter()
        .copied()
        .take_while(|segment| *segment < keep_from)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::state::Checkpoint;
    use crate::wal::fs::RealFs;

    /// A WAL of 1 MiB segments in `root`, each record synced.
    fn wal_config_in(root: &Path) -> WalConfig {
        WalConfig {
            dir: root.join("wal"),
            segment_max_bytes: 1024 * 1024,
            fsync: FsyncPolicy::EveryRecord,
        }
    }

    #[test]
    fn a_record_over_the_wal_limit_is_quarantined_and_the_batch_goes_on() {
        let root = tempfile::tempdir().expect("temporary directory");
        let wal_config = wal_config_in(root.path());
        let checkpoint = checkpoint_record(&Checkpoint::SessionStart {
            market: "spot".into(),
        });
        // Frames as the socket hands them over (no record of their own).
        let frame = |recv_time, bytes: &[u8]| {
            crate::recorder::records::waiting_frame(Market::Spot, recv_time, bytes)
        };
        let huge = frame(7, &vec![b'x'; crate::wal::MAX_PAYLOAD_LEN]);
        let trade = frame(
            7,
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}}"#,
        );
        let garbage = frame(8, b"garbage");
        let outcome = write_batch(
            None,
            (wal_config, Arc::new(RealFs)),
            (
                vec![
                    checkpoint.clone().into(),
                    huge,
                    trade,
                    garbage,
                    checkpoint.into(),
                ],
                BatchLists::default(),
            ),
            Vec::new(),
            None,
            &root.path().join("quarantine"),
        );
        let Ok(applied) = outcome.result else {
            panic!("the batch must go on without the huge record")
        };
        // The checkpoints and the trade, the trade with the segment it was
        // written to.
        assert_eq!(applied.len(), 3);
        let written_to = outcome.wal.expect("the writer goes on").active_segment();
        assert!(
            matches!(applied[1], Applied::Frame { segment, .. } if segment == written_to),
            "{written_to:?}"
        );
        assert_eq!(outcome.n_quarantined, 2);
        assert!(outcome
            .first_quarantine_error
            .as_deref()
            .is_some_and(|error| error.contains("over the WAL's limit")));
        let quarantine =
            std::fs::read_to_string(root.path().join("quarantine/spot/1970-01-01.jsonl"))
                .expect("quarantined");
        let lines: Vec<&str> = quarantine.lines().collect();
        assert_eq!(lines.len(), 2, "{quarantine}");
        assert!(lines[0].contains("over the WAL's limit"), "{quarantine}");
        assert!(lines[1].contains("garbage"), "{quarantine}");
    }

    /// A batch that fills its segment and goes on in the next: each row
    /// carries the segment its record went to (the decode marks them with
    /// the first, and those past the roll-over are set again), and one left
    /// out (over the WAL's limit) is dropped with the rest kept in order.
    #[test]
    fn rows_of_a_batch_that_rolls_the_segment_over_carry_their_own_segment() {
        let root = tempfile::tempdir().expect("temporary directory");
        let wal_config = wal_config_in(root.path());
        let trade = |id: usize| {
            let json = format!(
                r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":{id},"p":"1","q":"2","T":1,"m":true,"M":true,"padding":"{}"}}}}"#,
                "x".repeat(400)
            );
            crate::recorder::records::waiting_frame(Market::Spot, 7, json.as_bytes())
        };
        // About 1.3 MiB of frames against 1 MiB segments.
        let n_frames = 2_600;
        let mut records: Vec<Outgoing> = (0..n_frames).map(trade).collect();
        records.insert(
            n_frames / 2,
            crate::recorder::records::waiting_frame(
                Market::Spot,
                7,
                &vec![b'x'; crate::wal::MAX_PAYLOAD_LEN],
            ),
        );
        let outcome = write_batch(
            None,
            (wal_config, Arc::new(RealFs)),
            (records, BatchLists::default()),
            Vec::new(),
            None,
            &root.path().join("quarantine"),
        );
        let wal = outcome.wal.expect("the writer goes on");
        let Ok(applied) = outcome.result else {
            panic!("the batch is written")
        };
        let ids_and_segments: Vec<(i64, SegmentId)> = applied
            .iter()
            .map(|item| match item {
                Applied::Frame {
                    segment,
                    decoded: crate::binance::decode::Decoded::Row { row, .. },
                    ..
                } => (row.key(), *segment),
                _ => panic!("only trades"),
            })
            .collect();
        assert_eq!(
            ids_and_segments.len(),
            n_frames,
            "the oversized one left out"
        );
        assert!(ids_and_segments
            .iter()
            .map(|(id, _)| *id)
            .eq(0..n_frames as i64));
        let segments = wal.segments();
        assert!(segments.len() >= 2, "{segments:?}");
        let (first, last) = (ids_and_segments[0].1, ids_and_segments[n_frames - 1].1);
        assert_eq!(first, segments[0]);
        assert_eq!(last, wal.active_segment());
        assert!(first < last);
        assert!(ids_and_segments
            .windows(2)
            .all(|pair| pair[0].1 <= pair[1].1));
        // Each frame is marked with the segment that holds it.
        let written: Vec<SegmentId> = crate::wal::read_segments(&wal_config_in(root.path()).dir)
            .expect("the WAL reads")
            .filter_map(|item| match item.expect("no damage") {
                crate::wal::ReadItem::Record { position, record }
                    if record.kind == RecordKind::WsFrame =>
                {
                    Some(position.segment)
                }
                _ => None,
            })
            .collect();
        let marked: Vec<SegmentId> = ids_and_segments
            .iter()
            .map(|(_, segment)| *segment)
            .collect();
        assert_eq!(marked, written);
    }

    /// One decode thread serves batch after batch, handed on with the
    /// lists: a thread spawned per batch cost about 5 % of the daemon's CPU
    /// at 100,000 msgs/s.
    #[test]
    fn one_decode_thread_serves_every_batch() {
        let root = tempfile::tempdir().expect("temporary directory");
        let wal_config = wal_config_in(root.path());
        let mut wal = None;
        let mut lists = BatchLists::default();
        let mut threads = Vec::new();
        for id in 1..=3 {
            let trade = format!(
                r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":{id},"p":"1","q":"2","T":1,"m":true,"M":true}}}}"#
            );
            let outcome = write_batch(
                wal,
                (wal_config.clone(), Arc::new(RealFs)),
                (
                    vec![crate::recorder::records::waiting_frame(
                        Market::Spot,
                        7,
                        trade.as_bytes(),
                    )],
                    lists,
                ),
                Vec::new(),
                None,
                &root.path().join("quarantine"),
            );
            let Ok(applied) = &outcome.result else {
                panic!("batch {id} is written")
            };
            assert_eq!(applied.len(), 1, "batch {id} decoded");
            let decoder = outcome.lists.decoder.as_ref().expect("a decode thread");
            threads.push(decoder.thread());
            wal = outcome.wal;
            lists = outcome.lists;
        }
        assert!(
            threads.windows(2).all(|pair| pair[0] == pair[1]),
            "{threads:?}"
        );
        assert_ne!(threads[0], std::thread::current().id());
    }

    /// A durable batch's frames are let go on the decode thread, not on the
    /// batch's (where the next batch would wait for it), and their list
    /// comes back, empty, with the next batch.
    #[test]
    fn a_durable_batchs_frames_are_let_go_on_the_decode_thread() {
        use std::sync::Mutex;
        use std::thread::ThreadId;

        /// Frame bytes that note the thread they are dropped on.
        struct Probe(&'static [u8], Arc<Mutex<Option<ThreadId>>>);
        impl AsRef<[u8]> for Probe {
            fn as_ref(&self) -> &[u8] {
                self.0
            }
        }
        impl Drop for Probe {
            fn drop(&mut self) {
                *self.1.lock().expect("not poisoned") = Some(std::thread::current().id());
            }
        }

        let root = tempfile::tempdir().expect("temporary directory");
        let wal_config = wal_config_in(root.path());
        let dropped_on = Arc::new(Mutex::new(None));
        let frame = Outgoing::Frame {
            market: Market::Spot,
            recv_time: 7,
            payload: crate::binance::ws::FramePayload::Binary(bytes::Bytes::from_owner(Probe(
                br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"2","T":1,"m":true,"M":true}}"#,
                Arc::clone(&dropped_on),
            ))),
        };
        let write = |wal, records, lists| {
            write_batch(
                wal,
                (wal_config.clone(), Arc::new(RealFs)),
                (records, lists),
                Vec::new(),
                None,
                &root.path().join("quarantine"),
            )
        };
        let first = write(None, vec![frame], BatchLists::default());
        assert!(first.result.is_ok());
        // The thread answers the next job after letting the first go.
        let second = write(first.wal, Vec::new(), first.lists);
        assert!(second.result.is_ok());
        let decoder = second.lists.decoder.as_ref().expect("a decode thread");
        assert_eq!(
            *dropped_on.lock().expect("not poisoned"),
            Some(decoder.thread())
        );
        assert!(second.records.is_empty() && second.records.capacity() >= 1);
    }

    /// A batch's lists go back and serve the next batch, without growing
    /// past what a batch holds.
    #[test]
    fn a_batch_list_serves_the_next_batch_and_keeps_a_bounded_room() {
        let record = || {
            Outgoing::Record(checkpoint_record(&Checkpoint::SessionStart {
                market: "spot".into(),
            }))
        };
        let mut pending = Pending::new(FsyncPolicy::EveryRecord);
        for _ in 0..100 {
            pending.push(record());
        }
        let first = pending.take();
        let first_room = first.capacity();
        pending.reuse(first);
        // The records arriving meanwhile wait in the list they found; the
        // list given back takes those that arrive after the next batch.
        pending.push(record());
        let second = pending.take();
        assert_eq!(second.len(), 1);
        pending.push(record());
        let third = pending.take();
        assert_eq!((third.len(), third.capacity()), (1, first_room));
        let mut huge = Vec::with_capacity(4 * MAX_BATCH_RECORDS);
        huge.push(record());
        pending.reuse(huge);
        pending.push(record());
        assert!(pending.take().capacity() <= MAX_BATCH_RECORDS);
        let lists = BatchLists {
            applied: Vec::with_capacity(4 * MAX_BATCH_RECORDS),
            record_of: vec![1; 3 * MAX_BATCH_RECORDS],
            segments: vec![None; 7],
            decoder: None,
        }
        .emptied();
        assert!(
            lists.applied.is_empty() && lists.record_of.is_empty() && lists.segments.is_empty()
        );
        assert!(lists.applied.capacity() <= MAX_BATCH_RECORDS);
        assert!(lists.record_of.capacity() <= MAX_BATCH_RECORDS);
        assert!(lists.segments.capacity() >= 7);
    }

    /// The next batch starts while the last one's rows are applied: the
    /// segments those rows are in are kept though nothing pins them yet.
    #[test]
    fn a_batch_keeps_the_segments_of_the_batch_being_applied() {
        let on_disk: Vec<SegmentId> = [3, 4, 5, 6].into_iter().map(SegmentId).collect();
        // The batch being applied wrote 4 and 5; the next starts in 6.
        let kept = oldest_kept(None, Some(SegmentId(4)));
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(6), kept),
            Some(SegmentId(3))
        );
        // Without it, 4 and 5 would go.
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(6), None),
            Some(SegmentId(5))
        );
        // An older pin still decides; with neither, the batch's own start.
        assert_eq!(
            oldest_kept(Some(SegmentId(3)), Some(SegmentId(4))),
            Some(SegmentId(3))
        );
        assert_eq!(
            oldest_kept(Some(SegmentId(5)), Some(SegmentId(4))),
            Some(SegmentId(4))
        );
        assert_eq!(oldest_kept(Some(SegmentId(5)), None), Some(SegmentId(5)));
        assert_eq!(oldest_kept(None, None), None);
    }

    #[test]
    fn segments_are_deletable_below_the_oldest_pinned_and_the_batch_being_written() {
        let ids = |list: &[u64]| list.iter().copied().map(SegmentId).collect::<Vec<_>>();
        let on_disk = ids(&[3, 4, 5, 6, 7]);
        // Nothing pinned: everything below the batch's first segment goes.
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), None),
            Some(SegmentId(6))
        );
        // A pinned hour keeps its segment and every later one.
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), Some(SegmentId(5))),
            Some(SegmentId(4))
        );
        // The batch started in an older segment than the pin (it rolled).
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(4), Some(SegmentId(6))),
            Some(SegmentId(3))
        );
        // Nothing older than what is kept: no deletion (and no directory fsync).
        assert_eq!(
            deletable_upto(&on_disk, SegmentId(7), Some(SegmentId(3))),
            None
        );
        assert_eq!(deletable_upto(&ids(&[7]), SegmentId(7), None), None);
    }
}
