//! Property tests of the WAL against a simple model, on the in-memory
//! [`FaultFs`]: random appends, syncs, rolls, deletions, reopens, crashes
//! (losing any part of what was not synced, which tears the last write at a
//! random byte), byte flips inside durable records, and injected faults
//! (fsync and write errors, a full disk, failed creates and renames, short
//! writes).
//!
//! After every reopen, for each segment, the log must hold all its durable
//! records in order (less the flipped ones), followed by a prefix of its
//! unsynced ones; every flipped record must be reported as damage (or cut as
//! a torn tail), never returned.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

use super::fault_fs::{FaultFs, FaultOp};
use super::*;

const DIR: &str = "/wal";
const SEGMENT_MAX_BYTES: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Append {
        payload_len: usize,
    },
    Sync,
    Roll,
    /// Drop the writer (unsynced appends were never acknowledged) and open again.
    Reopen,
    /// Power loss: each file keeps a random prefix of its unsynced bytes.
    Crash {
        seed: u64,
    },
    /// Flip bits of one byte inside a durable, intact record.
    Flip {
        entry: Index,
        byte: Index,
        xor: u8,
    },
    Inject(FaultOp),
    DiskFull(bool),
    DeleteUpTo(Index),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let fault = prop::sample::select(vec![
        FaultOp::Write,
        FaultOp::Sync,
        FaultOp::Create,
        FaultOp::Rename,
        FaultOp::SyncDir,
        FaultOp::Truncate,
    ]);
    prop_oneof![
        30 => (0usize..300).prop_map(|payload_len| Op::Append { payload_len }),
        8 => Just(Op::Sync),
        2 => Just(Op::Roll),
        3 => Just(Op::Reopen),
        3 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        2 => (any::<Index>(), any::<Index>(), 1u8..=255).prop_map(|(entry, byte, xor)| Op::Flip { entry, byte, xor }),
        2 => fault.prop_map(Op::Inject),
        1 => any::<bool>().prop_map(Op::DiskFull),
        1 => any::<Index>().prop_map(Op::DeleteUpTo),
    ]
}

/// A record the model expects in a segment.
#[derive(Clone, Debug)]
struct Entry {
    record: Record,
    offset: u64,
    /// Survives any crash.
    durable: bool,
    /// A byte of it was flipped: must be reported, never returned.
    damaged: bool,
}

struct Harness {
    fs: FaultFs,
    writer: Option<WalWriter>,
    /// Segments on disk and the records the model expects in each.
    segments: BTreeMap<SegmentId, Vec<Entry>>,
    /// Segments written by the current writer: a successful sync makes
    /// their records durable.
    writer_segments: BTreeSet<SegmentId>,
    /// A crash happened since the last successful open.
    crashed: bool,
    n_appended: usize,
}

fn make_record(index: usize, payload_len: usize) -> Record {
    let mut payload = format!("{{\"i\":{index}}}").into_bytes();
    payload.resize(payload_len.max(payload.len()), b'.');
    let kind = match index % 3 {
        0 => RecordKind::WsFrame,
        1 => RecordKind::RestRows,
        _ => RecordKind::Checkpoint,
    };
    Record {
        kind,
        recv_time_us: index as i64,
        payload,
    }
}

/// A tiny deterministic generator for crash choices.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }
}

impl Harness {
    fn new(max_write_chunk: Option<usize>) -> Harness {
        let fs = FaultFs::new();
        fs.set_max_write_chunk(max_write_chunk);
        Harness {
            fs,
            writer: None,
            segments: BTreeMap::new(),
            writer_segments: BTreeSet::new(),
            crashed: false,
            n_appended: 0,
        }
    }

    fn mark_durable(&mut self, except: Option<SegmentId>) {
        for segment in &self.writer_segments {
            if Some(*segment) == except {
                continue;
            }
            for entry in self.segments.get_mut(segment).into_iter().flatten() {
                entry.durable = true;
            }
        }
    }

    /// An error from a writer call: only injected faults may cause one.
    fn writer_failed(&mut self, error: &WalError) -> Result<(), TestCaseError> {
        prop_assert!(
            error.to_string().contains("injected"),
            "unexpected error: {}",
            error
        );
        let failed = self.writer.as_ref().is_some_and(WalWriter::is_failed);
        prop_assert!(failed, "the writer must be failed after {}", error);
        self.writer = None;
        Ok(())
    }

    /// The writer, reopening first if the last one failed or was dropped.
    fn ensure_writer(&mut self) -> Result<bool, TestCaseError> {
        if self.writer.is_none() {
            self.reopen()?;
        }
        Ok(self.writer.is_some())
    }

    fn reopen(&mut self) -> Result<(), TestCaseError> {
        self.writer = None;
        let config = WalConfig {
            dir: Path::new(DIR).to_path_buf(),
            segment_max_bytes: SEGMENT_MAX_BYTES,
            fsync: FsyncPolicy::EveryRecord,
        };
        match Wal::open_with_fs(config, Arc::new(self.fs.clone())) {
            Err(error) => {
                prop_assert!(
                    error.to_string().contains("injected"),
                    "unexpected open error: {}",
                    error
                );
                Ok(())
            }
            Ok((writer, report)) => {
                self.verify(&report)?;
                let active = writer.active_segment();
                prop_assert!(self.segments.keys().all(|segment| *segment < active));
                self.segments.insert(active, Vec::new());
                self.writer_segments = BTreeSet::from([active]);
                self.writer = Some(writer);
                self.crashed = false;
                Ok(())
            }
        }
    }

    /// Checks the replay of the previous segments against the model, then
    /// brings the model up to what is now on disk.
    fn verify(&mut self, report: &OpenReport) -> Result<(), TestCaseError> {
        let items = report
            .replay()
            .collect::<Result<Vec<ReadItem>>>()
            .map_err(|error| TestCaseError::fail(format!("replay failed: {error}")))?;
        let mut returned: BTreeMap<SegmentId, Vec<(u64, Record)>> = BTreeMap::new();
        let mut damage: BTreeMap<SegmentId, Vec<(u64, u64)>> = BTreeMap::new();
        for item in items {
            match item {
                ReadItem::Record { position, record } => {
                    returned
                        .entry(position.segment)
                        .or_default()
                        .push((position.offset, record));
                }
                ReadItem::Damage {
                    segment,
                    offset,
                    skipped_bytes,
                    ..
                } => damage
                    .entry(segment)
                    .or_default()
                    .push((offset, skipped_bytes)),
                ReadItem::UnknownKind { .. } => prop_assert!(false, "unknown kind read back"),
            }
        }
        for segment in returned.keys() {
            prop_assert!(
                self.segments.contains_key(segment),
                "records from unknown segment {}",
                segment
            );
        }
        for segment in self.segments.keys() {
            prop_assert!(
                report.previous_segments.contains(segment),
                "segment {} missing",
                segment
            );
        }

        let torn_tail = report.torn_tail.clone();
        let crashed = self.crashed;
        for (segment, entries) in &mut self.segments {
            let got = returned.remove(segment).unwrap_or_default();
            let durable: Vec<&Entry> = entries
                .iter()
                .filter(|entry| entry.durable && !entry.damaged)
                .collect();
            let volatile: Vec<&Entry> = entries.iter().filter(|entry| !entry.durable).collect();
            prop_assert!(
                got.len() >= durable.len() && got.len() <= durable.len() + volatile.len(),
                "segment {}: {} records read, {} durable, {} unsynced",
                segment,
                got.len(),
                durable.len(),
                volatile.len()
            );
            for ((offset, record), expected) in
                got.iter().zip(durable.iter().chain(volatile.iter()))
            {
                prop_assert_eq!(*offset, expected.offset, "segment {}", segment);
                prop_assert_eq!(record, &expected.record, "segment {}", segment);
            }
            let cut_at = torn_tail
                .as_ref()
                .filter(|torn| torn.segment == *segment)
                .map(|torn| torn.cut_at);
            let segment_damage = damage.remove(segment).unwrap_or_default();
            for entry in entries.iter().filter(|entry| entry.damaged) {
                let reported = segment_damage.iter().any(|(offset, skipped)| {
                    *offset <= entry.offset && entry.offset < offset + skipped
                });
                let cut = cut_at.is_some_and(|cut_at| cut_at <= entry.offset);
                prop_assert!(
                    reported || cut,
                    "damaged record at {}:{} not reported",
                    segment,
                    entry.offset
                );
            }

            // What is on disk now.
            let n_volatile_kept = got.len() - durable.len();
            let now_durable = crashed || cut_at.is_some();
            let mut n_volatile_seen = 0;
            entries.retain_mut(|entry| {
                if cut_at.is_some_and(|cut_at| entry.offset >= cut_at) {
                    return false;
                }
                if entry.durable {
                    return true;
                }
                n_volatile_seen += 1;
                entry.durable = now_durable;
                n_volatile_seen <= n_volatile_kept
            });
        }
        prop_assert!(returned.is_empty());
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { payload_len } => {
                if !self.ensure_writer()? {
                    return Ok(());
                }
                let record = make_record(self.n_appended, *payload_len);
                self.n_appended += 1;
                let writer = self.writer.as_mut().expect("ensured");
                match writer.append(&record) {
                    Ok(position) => {
                        if let Some(new_segment) = writer.take_rolled() {
                            prop_assert_eq!(position.segment, new_segment);
                            self.mark_durable(Some(new_segment));
                            self.segments.insert(new_segment, Vec::new());
                            self.writer_segments.insert(new_segment);
                        }
                        self.segments
                            .entry(position.segment)
                            .or_default()
                            .push(Entry {
                                record,
                                offset: position.offset,
                                durable: false,
                                damaged: false,
                            });
                    }
                    Err(error) => self.writer_failed(&error)?,
                }
            }
            Op::Sync => {
                if !self.ensure_writer()? {
                    return Ok(());
                }
                match self.writer.as_mut().expect("ensured").sync() {
                    Ok(()) => self.mark_durable(None),
                    Err(error) => self.writer_failed(&error)?,
                }
            }
            Op::Roll => {
                if !self.ensure_writer()? {
                    return Ok(());
                }
                let writer = self.writer.as_mut().expect("ensured");
                match writer.roll() {
                    Ok(new_segment) => {
                        prop_assert_eq!(writer.take_rolled(), Some(new_segment));
                        self.mark_durable(None);
                        self.segments.insert(new_segment, Vec::new());
                        self.writer_segments.insert(new_segment);
                    }
                    Err(error) => self.writer_failed(&error)?,
                }
            }
            Op::Reopen => self.reopen()?,
            Op::Crash { seed } => {
                self.writer = None;
                let mut random = SplitMix(*seed);
                self.fs.crash(|_, n_unsynced| {
                    let roll = random.next();
                    // Often everything or nothing, otherwise anywhere between.
                    match roll % 4 {
                        0 => 0,
                        1 => n_unsynced,
                        _ => {
                            usize::try_from(random.next() % (n_unsynced as u64 + 1)).expect("small")
                        }
                    }
                });
                self.crashed = true;
                self.reopen()?;
            }
            Op::Flip { entry, byte, xor } => {
                let candidates: Vec<(SegmentId, usize)> = self
                    .segments
                    .iter()
                    .flat_map(|(segment, entries)| {
                        entries
                            .iter()
                            .enumerate()
                            .filter(|(_, entry)| entry.durable && !entry.damaged)
                            .map(move |(index, _)| (*segment, index))
                    })
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let (segment, index) = candidates[entry.index(candidates.len())];
                let target = &mut self.segments.get_mut(&segment).expect("listed")[index];
                let frame_len = FRAME_HEADER_LEN + target.record.payload.len();
                let at = target.offset as usize + byte.index(frame_len);
                prop_assert!(self
                    .fs
                    .corrupt(&segment_path(Path::new(DIR), segment), at, *xor));
                target.damaged = true;
            }
            Op::Inject(fault) => self.fs.inject(*fault, io::ErrorKind::Other),
            Op::DiskFull(full) => self.fs.set_disk_full(*full),
            Op::DeleteUpTo(index) => {
                if !self.ensure_writer()? {
                    return Ok(());
                }
                let writer = self.writer.as_mut().expect("ensured");
                let active = writer.active_segment();
                let older: Vec<SegmentId> = self
                    .segments
                    .keys()
                    .copied()
                    .filter(|segment| *segment < active)
                    .collect();
                if older.is_empty() {
                    prop_assert!(writer.delete_segments_upto(active).is_err());
                    return Ok(());
                }
                let last = older[index.index(older.len())];
                // One-shot faults: the caller retries a failed deletion.
                let mut n_attempts = 0;
                while let Err(error) = writer.delete_segments_upto(last) {
                    prop_assert!(error.to_string().contains("injected"), "{}", error);
                    n_attempts += 1;
                    prop_assert!(n_attempts < 20);
                }
                self.segments.retain(|segment, _| *segment > last);
                self.writer_segments.retain(|segment| *segment > last);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_through_crashes_and_faults(
        ops in prop::collection::vec(op_strategy(), 1..150),
        max_write_chunk in prop::option::of(1usize..64),
    ) {
        let mut harness = Harness::new(max_write_chunk);
        harness.reopen()?;
        for op in &ops {
            harness.apply(op)?;
        }
        // End with power loss and a clean disk, and check once more.
        harness.fs.clear_injected();
        harness.fs.set_disk_full(false);
        harness.writer = None;
        harness.fs.crash(|_, n_unsynced| n_unsynced / 2);
        harness.crashed = true;
        harness.reopen()?;
        prop_assert!(harness.writer.is_some());
        prop_assert_eq!(harness.fs.violations(), Vec::<String>::new());
    }
}

/// Fuzz-style: arbitrary bytes, and a real segment (the committed v1
/// fixture) with flipped, cut, inserted, deleted and duplicated bytes, read
/// as a segment. The reader must return records, damage or an error, never
/// panic; cutting the torn tail and opening the log must not panic either.
mod fuzz {
    use super::*;
    use crate::fuzz_input::fuzz_input;
    use crate::wal::reader::cut_torn_tail;
    use crate::wal::segment::segment_path;

    const V1_SEGMENT: &[u8] = include_bytes!("testdata/v1/00000000000000000001.wal");

    fn write_segment(fs: &FaultFs, segment: SegmentId, bytes: &[u8]) {
        let dir = Path::new(DIR);
        fs.create_dir_all(dir).expect("in-memory mkdir");
        let mut file = fs
            .create_new(&segment_path(dir, segment))
            .expect("in-memory create");
        let mut written = 0;
        while written < bytes.len() {
            written += file.write(&bytes[written..]).expect("in-memory write");
        }
        file.sync_data().expect("in-memory fsync");
        fs.sync_dir(dir).expect("in-memory directory fsync");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn damaged_segments_never_panic_the_reader(
            bytes in fuzz_input(vec![V1_SEGMENT.to_vec()]),
            second in fuzz_input(vec![V1_SEGMENT.to_vec()]),
        ) {
            let fs = FaultFs::new();
            write_segment(&fs, SegmentId(1), &bytes);
            write_segment(&fs, SegmentId(2), &second);
            let shared: Arc<dyn WalFs> = Arc::new(fs.clone());
            let dir = Path::new(DIR);
            let mut n_items = 0usize;
            for item in WalReader::for_segments(
                Arc::clone(&shared),
                dir,
                vec![SegmentId(1), SegmentId(2)],
            ) {
                n_items += 1;
                if let Ok(ReadItem::Damage { skipped_bytes, .. }) = item {
                    prop_assert!(skipped_bytes as usize <= bytes.len().max(second.len()));
                }
                // Each item consumes bytes: more items than bytes is a loop.
                prop_assert!(n_items <= bytes.len() + second.len() + 2);
            }
            let _ = cut_torn_tail(&shared, dir, SegmentId(1));
            let config = WalConfig {
                dir: dir.to_path_buf(),
                segment_max_bytes: SEGMENT_MAX_BYTES,
                fsync: FsyncPolicy::EveryRecord,
            };
            let _ = Wal::open_with_fs(config, Arc::new(fs));
        }
    }
}
