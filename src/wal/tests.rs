//! Tests of the WAL as a whole: reader damage handling, writer life cycle,
//! faults through the seam, the committed format fixture, and a benchmark.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fault_fs::{FaultFs, FaultOp};
use super::frame::{encode_frame, encode_segment_header, frame_len, PAD_TO, SEGMENT_HEADER_LEN};
use super::fs::WalFs;
use super::*;

const DIR: &str = "/wal";

fn record(index: usize, payload_len: usize) -> Record {
    let mut payload = format!("{{\"e\":\"trade\",\"t\":{index}}}").into_bytes();
    payload.resize(payload_len.max(payload.len()), b' ');
    Record {
        kind: RecordKind::WsFrame,
        recv_time_us: 1_723_161_600_000_000 + index as i64,
        payload,
    }
}

fn config(dir: &Path, segment_max_bytes: u64) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_max_bytes,
        fsync: FsyncPolicy::EveryRecord,
    }
}

fn open_fault(fs: &FaultFs, segment_max_bytes: u64) -> Result<(WalWriter, OpenReport)> {
    Wal::open_with_fs(
        config(Path::new(DIR), segment_max_bytes),
        Arc::new(fs.clone()),
    )
}

fn read_all(fs: &FaultFs) -> Vec<ReadItem> {
    WalReader::open(Arc::new(fs.clone()), Path::new(DIR))
        .expect("list")
        .collect::<Result<Vec<_>>>()
        .expect("read")
}

fn records_in(items: &[ReadItem]) -> Vec<Record> {
    items
        .iter()
        .filter_map(|item| match item {
            ReadItem::Record { record, .. } => Some(record.clone()),
            _ => None,
        })
        .collect()
}

fn damage_in(items: &[ReadItem]) -> Vec<(SegmentId, u64, u64, DamageReason, bool)> {
    items
        .iter()
        .filter_map(|item| match item {
            ReadItem::Damage {
                segment,
                offset,
                skipped_bytes,
                reason,
                reaches_end,
            } => Some((*segment, *offset, *skipped_bytes, *reason, *reaches_end)),
            _ => None,
        })
        .collect()
}

/// A whole segment in memory, and where each record starts.
fn segment_bytes(segment: SegmentId, records: &[Record]) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = encode_segment_header(segment).to_vec();
    let mut offsets = Vec::new();
    for record in records {
        offsets.push(bytes.len() as u64);
        encode_frame(record, &mut bytes);
    }
    (bytes, offsets)
}

/// Puts a file in place durably.
fn put_file(fs: &FaultFs, path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("path has a parent");
    fs.create_dir_all(dir).expect("mkdir");
    if fs.read(path).is_some() {
        fs.remove_file(path).expect("remove");
    }
    let mut file = fs.create_new(path).expect("create");
    let mut rest = bytes;
    while !rest.is_empty() {
        let n_written = file.write(rest).expect("write");
        rest = &rest[n_written..];
    }
    file.sync_data().expect("sync");
    fs.sync_dir(dir).expect("sync dir");
}

fn sample_records(n_records: usize) -> Vec<Record> {
    (0..n_records)
        .map(|index| record(index, 40 + index * 7))
        .collect()
}

#[test]
fn writer_and_reader_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<WalWriter>();
    assert_send::<WalReader>();
    assert_send::<OpenReport>();
    assert_send::<WalError>();
}

#[test]
fn append_sync_reopen_reads_back_in_order() {
    let fs = FaultFs::new();
    let records = sample_records(20);
    let (mut writer, report) = open_fault(&fs, 1 << 20).expect("open");
    assert!(report.previous_segments.is_empty());
    assert_eq!(writer.active_segment(), SegmentId(1));
    let mut positions = Vec::new();
    for record in &records {
        positions.push(writer.append(record).expect("append"));
    }
    assert_eq!(
        positions[0],
        RecordPosition {
            segment: SegmentId(1),
            offset: SEGMENT_HEADER_LEN as u64
        }
    );
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
    writer.sync().expect("sync");
    drop(writer);

    let (writer, report) = open_fault(&fs, 1 << 20).expect("reopen");
    assert_eq!(report.previous_segments, vec![SegmentId(1)]);
    assert_eq!(report.torn_tail, None);
    assert_eq!(
        writer.active_segment(),
        SegmentId(2),
        "reopen starts a new segment"
    );
    let items: Vec<ReadItem> = report.replay().collect::<Result<_>>().expect("replay");
    let expected: Vec<ReadItem> = positions
        .iter()
        .zip(&records)
        .map(|(position, record)| ReadItem::Record {
            position: *position,
            record: record.clone(),
        })
        .collect();
    assert_eq!(items, expected);
}

/// The WAL is read back only at start: what a sync made durable leaves
/// the page cache at once (`WalFile::drop_cached`), each byte once, and
/// nothing before it is durable.
#[test]
fn synced_bytes_leave_the_page_cache_and_unsynced_ones_stay() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 4096).expect("open");
    let first = segment_path(Path::new(DIR), writer.active_segment());
    for record in sample_records(3) {
        writer.append(&record).expect("append");
    }
    writer.sync().expect("sync");
    let synced = fs.lengths(&first).expect("segment").0 as u64;
    assert_eq!(fs.dropped_upto(&first), Some(synced));
    writer.append(&record(3, 40)).expect("append");
    assert_eq!(
        fs.dropped_upto(&first),
        Some(synced),
        "not durable yet, so still cached"
    );
    // Past the segment's size the next append rolls: the old segment is
    // synced and dropped whole, the new one from its start.
    for record in sample_records(200) {
        writer.append(&record).expect("append");
    }
    writer.sync().expect("sync");
    assert!(writer.active_segment() > SegmentId(1));
    for path in fs.files() {
        let (synced, total) = fs.lengths(&path).expect("file");
        assert_eq!(
            (synced, fs.dropped_upto(&path)),
            (total, Some(total as u64)),
            "{}",
            path.display()
        );
    }
    assert_eq!(fs.violations(), Vec::<String>::new());
}

/// A record appended in parts is written as the record of the parts
/// joined: the same bytes on disk, read back the same.
#[test]
fn a_record_appended_in_parts_is_the_record_of_the_parts_joined() {
    let joined_fs = FaultFs::new();
    let parts_fs = FaultFs::new();
    let (mut joined, _) = open_fault(&joined_fs, 1 << 20).expect("open");
    let (mut parted, _) = open_fault(&parts_fs, 1 << 20).expect("open");
    let payload = br#"{"stream":"btcusdt@trade","data":{"e":"trade"}}"#;
    for split in [0, 1, 7, payload.len()] {
        let (head, tail) = payload.split_at(split);
        let record = Record {
            kind: RecordKind::WsFrame,
            recv_time_us: 1_723_161_600_000_000 + split as i64,
            payload: payload.to_vec(),
        };
        let at_joined = joined.append(&record).expect("append");
        let at_parts = parted
            .append_parts(record.kind, record.recv_time_us, &[head, tail])
            .expect("append");
        assert_eq!(at_joined, at_parts);
    }
    joined.sync().expect("sync");
    parted.sync().expect("sync");
    let path = segment_path(Path::new(DIR), SegmentId(1));
    assert_eq!(joined_fs.read(&path), parts_fs.read(&path));
    let too_long = vec![b'x'; MAX_PAYLOAD_LEN];
    assert!(matches!(
        parted.append_parts(RecordKind::WsFrame, 0, &[b"x", &too_long]),
        Err(WalError::RecordTooLarge { len, .. }) if len == MAX_PAYLOAD_LEN + 1
    ));
}

#[test]
fn real_filesystem_round_trip_and_missing_dir_is_created() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("nested").join("wal");
    let records = sample_records(5);
    let (mut writer, _) = Wal::open(config(&dir, 1 << 20)).expect("open");
    for record in &records {
        writer.append(record).expect("append");
    }
    writer.close().expect("close");
    assert!(dir.join("00000000000000000001.wal").is_file());
    let items: Vec<ReadItem> = read_segments(&dir)
        .expect("list")
        .collect::<Result<_>>()
        .expect("read");
    assert_eq!(records_in(&items), records);
}

#[test]
fn real_filesystem_torn_tail_is_cut_at_open() {
    let temp = tempfile::tempdir().expect("tempdir");
    let records = sample_records(6);
    let (mut writer, _) = Wal::open(config(temp.path(), 1 << 20)).expect("open");
    let mut positions = Vec::new();
    for record in &records {
        positions.push(writer.append(record).expect("append"));
    }
    writer.close().expect("close");
    // A crash tore the last record 5 bytes short of its end.
    let path = segment_path(temp.path(), SegmentId(1));
    let full_len = std::fs::metadata(&path).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(full_len - 5)
        .expect("tear");

    let (_writer, report) = Wal::open(config(temp.path(), 1 << 20)).expect("reopen");
    let last_start = positions[5].offset;
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            segment: SegmentId(1),
            cut_at: last_start,
            cut_bytes: full_len - 5 - last_start,
            reason: DamageReason::Truncated
        })
    );
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), last_start);
    let replayed: Vec<ReadItem> = report.replay().collect::<Result<_>>().expect("replay");
    assert_eq!(records_in(&replayed), records[..5]);
    assert_eq!(replayed.len(), 5, "no damage left after the cut");
}

#[test]
fn unusable_directory_is_an_error_naming_the_path() {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let dir = file.join("wal");
    let error = Wal::open(config(&dir, 1 << 20)).expect_err("a file is in the way");
    assert!(
        error.to_string().contains(&*dir.to_string_lossy()),
        "{error}"
    );
    assert_eq!(error.retry(), Retry::AfterReopen);
}

#[test]
fn config_rejects_tiny_segments() {
    let error = Wal::open_with_fs(config(Path::new(DIR), 100), Arc::new(FaultFs::new()))
        .expect_err("too small");
    assert!(
        matches!(
            error,
            WalError::InvalidConfig {
                key: "segment_max_bytes",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    let records = sample_records(4);
    let (bytes, offsets) = segment_bytes(SegmentId(1), &records);
    let last_start = offsets[3] as usize;
    let path = segment_path(Path::new(DIR), SegmentId(1));
    for cut in last_start..bytes.len() {
        let fs = FaultFs::new();
        put_file(&fs, &path, &bytes[..cut]);
        let items = read_all(&fs);
        assert_eq!(records_in(&items), records[..3], "cut at {cut}");
        let expected_damage = if cut == last_start {
            vec![]
        } else {
            vec![(
                SegmentId(1),
                last_start as u64,
                (cut - last_start) as u64,
                DamageReason::Truncated,
                true,
            )]
        };
        assert_eq!(damage_in(&items), expected_damage, "cut at {cut}");

        // Open cuts the torn tail at the last good record.
        let (_writer, report) = open_fault(&fs, 1 << 20).expect("open");
        let torn = report.torn_tail.clone();
        if cut == last_start {
            assert_eq!(torn, None);
        } else {
            assert_eq!(
                torn,
                Some(TornTail {
                    segment: SegmentId(1),
                    cut_at: last_start as u64,
                    cut_bytes: (cut - last_start) as u64,
                    reason: DamageReason::Truncated
                })
            );
        }
        assert_eq!(fs.lengths(&path), Some((last_start, last_start)));
        let replayed: Vec<ReadItem> = report.replay().collect::<Result<_>>().expect("replay");
        assert_eq!(records_in(&replayed), records[..3]);
        assert!(damage_in(&replayed).is_empty());
    }
}

/// A direct write pads a segment's last block with zeros (`PAD_TO`):
/// fewer than a block of zeros to an aligned length is the segment's end,
/// not damage, after records or after the header alone; any other zeros
/// after the last record are damage, as before.
#[test]
fn the_zeros_of_a_direct_write_end_a_segment_and_other_zeros_are_damage() {
    let records = sample_records(4);
    let (bytes, offsets) = segment_bytes(SegmentId(1), &records);
    let (header_only, _) = segment_bytes(SegmentId(1), &[]);
    let path = segment_path(Path::new(DIR), SegmentId(1));
    let padded = |bytes: &[u8], len: usize| {
        let mut padded = bytes.to_vec();
        padded.resize(len, 0);
        padded
    };
    let aligned = bytes.len().div_ceil(PAD_TO) * PAD_TO;
    for (label, file, damage) in [
        ("records padded to the block", padded(&bytes, aligned), None),
        (
            "header padded to the block",
            padded(&header_only, PAD_TO),
            None,
        ),
        (
            "zeros to no block's end",
            padded(&bytes, aligned - 1),
            Some(aligned - 1),
        ),
        (
            "a block of zeros and more",
            padded(&bytes, aligned + PAD_TO),
            Some(aligned + PAD_TO),
        ),
    ] {
        let fs = FaultFs::new();
        put_file(&fs, &path, &file);
        let items = read_all(&fs);
        let expected_records = if file.starts_with(&bytes) {
            &records[..]
        } else {
            &[]
        };
        assert_eq!(records_in(&items), expected_records, "{label}");
        let end = bytes.len() as u64;
        assert_eq!(
            damage_in(&items),
            damage
                .map(|to| vec![(
                    SegmentId(1),
                    end,
                    to as u64 - end,
                    DamageReason::BadSyncMarker,
                    true
                )])
                .unwrap_or_default(),
            "{label}"
        );
        let (_writer, report) = open_fault(&fs, 1 << 20).expect("open");
        assert_eq!(report.torn_tail.is_some(), damage.is_some(), "{label}");
        let replayed: Vec<ReadItem> = report.replay().collect::<Result<_>>().expect("replay");
        assert_eq!(records_in(&replayed), expected_records, "{label}");
        assert!(damage_in(&replayed).is_empty(), "{label}");
    }
    // A record torn inside the padded block is damage, zeros and all.
    let torn_at = offsets[3] as usize + 5;
    let fs = FaultFs::new();
    put_file(&fs, &path, &padded(&bytes[..torn_at], aligned));
    assert_eq!(
        damage_in(&read_all(&fs)),
        vec![(
            SegmentId(1),
            offsets[3],
            aligned as u64 - offsets[3],
            DamageReason::ChecksumMismatch,
            true
        )]
    );
}

/// On the real filesystem (`O_DIRECT` where it is taken): records synced
/// a few at a time, so blocks are padded and written again, read back
/// whole and without damage, whether the writer was dropped like a
/// killed process (padding left) or closed (padding cut).
#[test]
fn real_filesystem_direct_writes_padded_and_rewritten_read_back_whole() {
    for killed in [true, false] {
        let temp = tempfile::tempdir().expect("tempdir");
        let records: Vec<Record> = (0..300)
            .map(|index| record(index, 20 + index * 13 % 900))
            .collect();
        let (mut writer, _) = Wal::open(config(temp.path(), 64 << 10)).expect("open");
        for (index, record) in records.iter().enumerate() {
            writer.append(record).expect("append");
            if index % 7 == 0 {
                writer.sync().expect("sync");
            }
        }
        writer.sync().expect("sync");
        let segments = writer.segments();
        assert!(segments.len() > 2, "rolled: {segments:?}");
        let active = segment_path(temp.path(), writer.active_segment());
        let active_len = std::fs::metadata(&active).expect("stat").len();
        if killed {
            assert_eq!(
                active_len % PAD_TO as u64,
                0,
                "written in padded blocks: does this filesystem refuse O_DIRECT?"
            );
            std::mem::forget(writer);
        } else {
            writer.close().expect("close");
            let closed_len = std::fs::metadata(&active).expect("stat").len();
            assert!(
                closed_len <= active_len && !closed_len.is_multiple_of(PAD_TO as u64),
                "padding cut: {closed_len}"
            );
        }
        let items: Vec<ReadItem> = read_segments(temp.path())
            .expect("list")
            .collect::<Result<_>>()
            .expect("read");
        assert_eq!(records_in(&items), records, "killed: {killed}");
        assert!(
            damage_in(&items).is_empty(),
            "killed: {killed}: {:?}",
            damage_in(&items)
        );
        let (_writer, report) = Wal::open(config(temp.path(), 64 << 10)).expect("reopen");
        assert_eq!(report.torn_tail, None);
        assert_eq!(
            records_in(&report.replay().collect::<Result<Vec<_>>>().expect("replay")),
            records
        );
    }
}

/// A record larger than the direct file keeps a buffer for (8 MiB)
/// between small ones, on the real filesystem: all read back.
#[test]
fn real_filesystem_direct_writes_take_a_record_larger_than_the_kept_buffer() {
    let temp = tempfile::tempdir().expect("tempdir");
    let records = vec![record(0, 100), record(1, 9 << 20), record(2, 100)];
    let (mut writer, _) = Wal::open(config(temp.path(), 64 << 20)).expect("open");
    for record in &records {
        writer.append(record).expect("append");
        writer.sync().expect("sync");
    }
    writer.close().expect("close");
    let items: Vec<ReadItem> = read_segments(temp.path())
        .expect("list")
        .collect::<Result<_>>()
        .expect("read");
    assert_eq!(records_in(&items), records);
    assert_eq!(items.len(), 3, "no damage");
}

#[test]
fn every_single_byte_corruption_of_a_middle_record_skips_only_it() {
    let records = sample_records(3);
    let (bytes, offsets) = segment_bytes(SegmentId(1), &records);
    let (start, end) = (offsets[1] as usize, offsets[2] as usize);
    let path = segment_path(Path::new(DIR), SegmentId(1));
    for index in start..end {
        for xor in [0x01u8, 0x80, 0xFF] {
            let fs = FaultFs::new();
            let mut corrupt = bytes.clone();
            corrupt[index] ^= xor;
            put_file(&fs, &path, &corrupt);
            let items = read_all(&fs);
            assert_eq!(
                records_in(&items),
                vec![records[0].clone(), records[2].clone()],
                "byte {index} xor {xor:#x}"
            );
            let damage = damage_in(&items);
            assert_eq!(damage.len(), 1, "byte {index} xor {xor:#x}: {damage:?}");
            let (segment, offset, skipped, _, reaches_end) = damage[0];
            assert_eq!(
                (segment, offset, skipped, reaches_end),
                (SegmentId(1), start as u64, (end - start) as u64, false)
            );
        }
    }
}

#[test]
fn every_single_byte_corruption_anywhere_returns_no_false_record() {
    let records = sample_records(3);
    let (bytes, _) = segment_bytes(SegmentId(1), &records);
    let path = segment_path(Path::new(DIR), SegmentId(1));
    for index in 0..bytes.len() {
        let fs = FaultFs::new();
        let mut corrupt = bytes.clone();
        corrupt[index] ^= 0x5A;
        put_file(&fs, &path, &corrupt);
        let items = read_all(&fs);
        let returned = records_in(&items);
        assert_eq!(
            returned.len() + 1,
            records.len() + usize::from(index < SEGMENT_HEADER_LEN),
            "byte {index}"
        );
        assert!(
            returned.iter().all(|record| records.contains(record)),
            "byte {index}"
        );
        assert_eq!(damage_in(&items).len(), 1, "byte {index}");
    }
}

#[test]
fn damage_spanning_several_records_resumes_at_the_next_good_one() {
    let records = sample_records(6);
    let (mut bytes, offsets) = segment_bytes(SegmentId(1), &records);
    // Zero from the middle of record 1 to the middle of record 3.
    let from = offsets[1] as usize + 5;
    let to = offsets[3] as usize + 9;
    bytes[from..to].fill(0);
    let fs = FaultFs::new();
    put_file(&fs, &segment_path(Path::new(DIR), SegmentId(1)), &bytes);
    let items = read_all(&fs);
    assert_eq!(records_in(&items), [&records[..1], &records[4..]].concat());
    assert_eq!(
        damage_in(&items),
        vec![(
            SegmentId(1),
            offsets[1],
            offsets[4] - offsets[1],
            DamageReason::ChecksumMismatch,
            false
        )]
    );
}

#[test]
fn corrupt_length_pointing_past_the_end_does_not_hide_later_records() {
    let records = sample_records(4);
    let (mut bytes, offsets) = segment_bytes(SegmentId(1), &records);
    let length_at = offsets[1] as usize + 8;
    bytes[length_at..length_at + 4].copy_from_slice(&(60u32 << 20).to_le_bytes());
    let fs = FaultFs::new();
    put_file(&fs, &segment_path(Path::new(DIR), SegmentId(1)), &bytes);
    let items = read_all(&fs);
    assert_eq!(
        records_in(&items),
        vec![records[0].clone(), records[2].clone(), records[3].clone()]
    );
    assert_eq!(
        damage_in(&items),
        vec![(
            SegmentId(1),
            offsets[1],
            offsets[2] - offsets[1],
            DamageReason::Truncated,
            false
        )]
    );
}

#[test]
fn damaged_segment_header_is_reported_and_records_still_read() {
    let records = sample_records(2);
    let (mut bytes, _) = segment_bytes(SegmentId(1), &records);
    bytes[3] ^= 0x01;
    let fs = FaultFs::new();
    let path = segment_path(Path::new(DIR), SegmentId(1));
    put_file(&fs, &path, &bytes);
    let items = read_all(&fs);
    assert_eq!(records_in(&items), records);
    assert_eq!(
        damage_in(&items),
        vec![(
            SegmentId(1),
            0,
            SEGMENT_HEADER_LEN as u64,
            DamageReason::BadSegmentMagic,
            false
        )]
    );

    // A file shorter than a header.
    put_file(&fs, &path, &bytes[..10]);
    let items = read_all(&fs);
    assert_eq!(
        damage_in(&items),
        vec![(
            SegmentId(1),
            0,
            10,
            DamageReason::TruncatedSegmentHeader,
            true
        )]
    );
    // And open leaves a segment with a damaged header alone.
    let (_writer, report) = open_fault(&fs, 1 << 20).expect("open");
    assert_eq!(report.torn_tail, None);
    assert_eq!(fs.lengths(&path), Some((10, 10)));
}

#[test]
fn unknown_version_is_an_error_naming_file_and_version() {
    let mut header = encode_segment_header(SegmentId(1));
    header[8..10].copy_from_slice(&2u16.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    let fs = FaultFs::new();
    let path = segment_path(Path::new(DIR), SegmentId(1));
    put_file(&fs, &path, &header);

    let mut reader = WalReader::open(Arc::new(fs.clone()), Path::new(DIR)).expect("list");
    let error = reader.next().expect("an item").expect_err("unsupported");
    assert!(
        matches!(
            &error,
            WalError::UnsupportedVersion {
                version: 2,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("00000000000000000001.wal") && message.contains("version 2"),
        "{message}"
    );
    assert_eq!(error.retry(), Retry::Never);
    assert!(reader.next().is_none(), "an error ends the iteration");

    let error = open_fault(&fs, 1 << 20).expect_err("open refuses a newer format");
    assert!(
        matches!(error, WalError::UnsupportedVersion { .. }),
        "{error}"
    );
}

#[test]
fn header_naming_another_segment_is_an_error() {
    let fs = FaultFs::new();
    put_file(
        &fs,
        &segment_path(Path::new(DIR), SegmentId(7)),
        &encode_segment_header(SegmentId(3)),
    );
    let error = WalReader::open(Arc::new(fs.clone()), Path::new(DIR))
        .expect("list")
        .collect::<Result<Vec<_>>>()
        .expect_err("mismatch");
    assert!(matches!(error, WalError::BadHeader { .. }), "{error}");
}

/// The replay's reading: each record lent from the reader's buffer is the
/// record written, across segments, read chunks and records longer than a
/// chunk, with damage between them reported as the iterator reports it.
#[test]
fn lent_records_are_the_records_written_and_damage_is_reported_between() {
    let mut records = sample_records(40);
    records[7] = record(7, 600 * 1024);
    records[30] = record(30, 300 * 1024);
    let (mut first, offsets) = segment_bytes(SegmentId(1), &records[..20]);
    first[offsets[3] as usize + 30] ^= 0x40;
    let (second, _) = segment_bytes(SegmentId(2), &records[20..]);
    let fs = FaultFs::new();
    put_file(&fs, &segment_path(Path::new(DIR), SegmentId(1)), &first);
    put_file(&fs, &segment_path(Path::new(DIR), SegmentId(2)), &second);
    let mut reader = WalReader::open(Arc::new(fs.clone()), Path::new(DIR)).expect("list");
    let mut lent = Vec::new();
    while let Some(item) = reader.next_lent() {
        lent.push(item.expect("read").map_record(RecordRef::to_record));
    }
    assert_eq!(lent, read_all(&fs));
    let mut expected = records.clone();
    expected.remove(3);
    assert_eq!(records_in(&lent), expected);
    assert_eq!(damage_in(&lent).len(), 1);
}

#[test]
fn unknown_kind_is_reported_and_reading_goes_on() {
    let records = sample_records(3);
    let (mut bytes, offsets) = segment_bytes(SegmentId(1), &records[..1]);
    let mut future = Vec::new();
    encode_frame(&records[1], &mut future);
    future[12] = 9;
    let crc = crc32c::crc32c(&future[8..]);
    future[4..8].copy_from_slice(&crc.to_le_bytes());
    let future_at = bytes.len() as u64;
    bytes.extend_from_slice(&future);
    encode_frame(&records[2], &mut bytes);
    let fs = FaultFs::new();
    put_file(&fs, &segment_path(Path::new(DIR), SegmentId(1)), &bytes);
    let items = read_all(&fs);
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[1],
        ReadItem::UnknownKind {
            position: RecordPosition {
                segment: SegmentId(1),
                offset: future_at
            },
            kind: 9,
            recv_time_us: records[1].recv_time_us,
            payload_len: records[1].payload.len(),
        }
    );
    assert_eq!(
        records_in(&items),
        vec![records[0].clone(), records[2].clone()]
    );
    assert_eq!(offsets, vec![SEGMENT_HEADER_LEN as u64]);
}

#[test]
fn rolling_syncs_the_old_segment_and_reads_across_segments_in_order() {
    let fs = FaultFs::new();
    let records: Vec<Record> = (0..100).map(|index| record(index, 200)).collect();
    let (mut writer, _) = open_fault(&fs, 4096).expect("open");
    let mut rolls = Vec::new();
    let mut positions = Vec::new();
    for record in &records {
        positions.push(writer.append(record).expect("append"));
        if let Some(segment) = writer.take_rolled() {
            assert_eq!(
                positions.last().map(|position| position.segment),
                Some(segment)
            );
            assert_eq!(
                positions.last().map(|position| position.offset),
                Some(SEGMENT_HEADER_LEN as u64),
                "first record of the new segment"
            );
            rolls.push(segment);
        }
    }
    let per_segment = (4096 - SEGMENT_HEADER_LEN).div_ceil(frame_len(200));
    assert_eq!(rolls.len(), records.len().div_ceil(per_segment) - 1);
    assert_eq!(writer.segments().len(), rolls.len() + 1);
    assert_eq!(writer.take_rolled(), None, "reported once");
    for segment in &writer.segments()[..rolls.len()] {
        let (synced, total) = fs
            .lengths(&segment_path(Path::new(DIR), *segment))
            .expect("exists");
        assert_eq!(synced, total, "closed segment {segment} is durable");
    }
    writer.sync().expect("sync");
    let items = read_all(&fs);
    assert_eq!(records_in(&items), records);
    let read_positions: Vec<RecordPosition> = items
        .iter()
        .filter_map(|item| match item {
            ReadItem::Record { position, .. } => Some(*position),
            _ => None,
        })
        .collect();
    assert_eq!(read_positions, positions);
}

#[test]
fn explicit_roll_lets_the_caller_put_a_checkpoint_first() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 4096).expect("open");
    let checkpoint = Record {
        kind: RecordKind::Checkpoint,
        recv_time_us: 0,
        payload: b"state".to_vec(),
    };
    for index in 0..60 {
        if writer.roll_due() {
            let segment = writer.roll().expect("roll");
            let position = writer.append(&checkpoint).expect("append checkpoint");
            assert_eq!(
                position,
                RecordPosition {
                    segment,
                    offset: SEGMENT_HEADER_LEN as u64
                }
            );
        }
        writer.append(&record(index, 300)).expect("append");
    }
    writer.sync().expect("sync");
    assert!(writer.segments().len() > 2);
}

#[test]
fn deletion_refuses_the_active_segment_and_deletes_older_ones() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 4096).expect("open");
    for index in 0..60 {
        writer.append(&record(index, 200)).expect("append");
    }
    writer.sync().expect("sync");
    let segments = writer.segments();
    assert!(segments.len() >= 3);
    let active = writer.active_segment();
    assert_eq!(segments.last(), Some(&active));

    let error = writer.delete_segments_upto(active).expect_err("active");
    assert!(
        matches!(error, WalError::DeleteActiveSegment { .. }),
        "{error}"
    );
    assert!(matches!(
        writer.delete_segment(active),
        Err(WalError::DeleteActiveSegment { .. })
    ));
    assert_eq!(writer.segments(), segments, "nothing deleted");

    let deleted = writer.delete_segments_upto(segments[1]).expect("delete");
    assert_eq!(deleted, segments[..2]);
    assert_eq!(writer.segments(), segments[2..]);
    assert_eq!(fs.files().len(), segments.len() - 2);
    // Deleting again (after a crash, say) is harmless.
    assert_eq!(
        writer.delete_segments_upto(segments[1]).expect("again"),
        Vec::<SegmentId>::new()
    );
    // Deletion is durable: a crash does not bring the segments back.
    drop(writer);
    fs.crash(|_, n_unsynced| n_unsynced);
    assert_eq!(fs.files().len(), segments.len() - 2);
    let items = read_all(&fs);
    assert!(records_in(&items)
        .iter()
        .all(|record| record.recv_time_us >= 1_723_161_600_000_000));
}

#[test]
fn failed_fsync_fails_the_writer_without_retrying_and_reopen_goes_on() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 1 << 20).expect("open");
    writer.append(&record(0, 50)).expect("append");
    writer.sync().expect("sync");
    writer.append(&record(1, 50)).expect("append");
    fs.inject(FaultOp::Sync, io::ErrorKind::Other);
    let error = writer.sync().expect_err("injected");
    assert!(matches!(error, WalError::Io { op: "fsync", .. }), "{error}");
    assert_eq!(error.retry(), Retry::AfterReopen);
    assert!(writer.is_failed());
    assert!(matches!(
        writer.append(&record(2, 50)),
        Err(WalError::WriterFailed { .. })
    ));
    assert!(matches!(writer.sync(), Err(WalError::WriterFailed { .. })));
    drop(writer);
    assert_eq!(fs.violations(), Vec::<String>::new(), "no fsync retried");

    // The caller reopens and appends its unacknowledged record again.
    let (mut writer, report) = open_fault(&fs, 1 << 20).expect("reopen");
    assert_eq!(writer.active_segment(), SegmentId(2));
    writer.append(&record(1, 50)).expect("append again");
    writer.sync().expect("sync");
    let replayed: Vec<ReadItem> = report.replay().collect::<Result<_>>().expect("replay");
    // Record 1 reached the page cache before the failed fsync, so it may be
    // read twice: consumers deduplicate by key.
    assert_eq!(records_in(&replayed)[0], record(0, 50));
}

#[test]
fn disk_full_fails_the_writer_and_reopen_works_once_space_returns() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 1 << 20).expect("open");
    writer.append(&record(0, 50)).expect("append");
    writer.sync().expect("sync");
    fs.set_disk_full(true);
    writer.append(&record(1, 50)).expect("append only buffers");
    let error = writer.sync().expect_err("disk full");
    assert!(error.is_disk_full(), "{error}");
    drop(writer);
    let error = open_fault(&fs, 1 << 20).expect_err("still full");
    assert!(error.is_disk_full(), "{error}");
    fs.set_disk_full(false);
    let (mut writer, report) = open_fault(&fs, 1 << 20).expect("space is back");
    writer.append(&record(1, 50)).expect("append");
    writer.sync().expect("sync");
    assert_eq!(
        records_in(&report.replay().collect::<Result<Vec<_>>>().expect("replay")),
        vec![record(0, 50)]
    );
    assert_eq!(
        records_in(&read_all(&fs)),
        vec![record(0, 50), record(1, 50)]
    );
}

#[test]
fn short_writes_are_completed() {
    let fs = FaultFs::new();
    fs.set_max_write_chunk(Some(3));
    let records = sample_records(10);
    let (mut writer, _) = open_fault(&fs, 1 << 20).expect("open");
    for record in &records {
        writer.append(record).expect("append");
    }
    writer.sync().expect("sync");
    assert_eq!(records_in(&read_all(&fs)), records);
}

#[test]
fn interrupted_segment_creation_leaves_a_temporary_file_that_open_removes() {
    let fs = FaultFs::new();
    let (writer, _) = open_fault(&fs, 1 << 20).expect("open");
    drop(writer);
    fs.inject(FaultOp::Rename, io::ErrorKind::Other);
    open_fault(&fs, 1 << 20).expect_err("rename fails");
    let temporary = Path::new(DIR).join("00000000000000000002.wal.tmp");
    assert!(fs.files().contains(&temporary));
    let (writer, report) = open_fault(&fs, 1 << 20).expect("open");
    assert_eq!(report.removed_temporary_files, vec![temporary.clone()]);
    assert!(!fs.files().contains(&temporary));
    assert_eq!(writer.active_segment(), SegmentId(2));
}

#[test]
fn oversized_record_is_refused_and_the_writer_stays_usable() {
    let fs = FaultFs::new();
    let (mut writer, _) = open_fault(&fs, 1 << 20).expect("open");
    let huge = Record {
        kind: RecordKind::RestRows,
        recv_time_us: 0,
        payload: vec![0; MAX_PAYLOAD_LEN + 1],
    };
    let error = writer.append(&huge).expect_err("too large");
    assert!(matches!(error, WalError::RecordTooLarge { .. }), "{error}");
    assert_eq!(error.retry(), Retry::Never);
    writer.append(&record(0, 10)).expect("still usable");
    writer.sync().expect("sync");
}

#[test]
fn sync_policy_drives_needs_sync() {
    let fs = FaultFs::new();
    let interval = Duration::from_millis(200);
    let wal_config = WalConfig {
        fsync: FsyncPolicy::Interval {
            max_wait: interval,
            enough_bytes: u64::MAX,
        },
        ..config(Path::new(DIR), 1 << 20)
    };
    let (mut writer, _) = Wal::open_with_fs(wal_config, Arc::new(fs.clone())).expect("open");
    let before = Instant::now();
    assert!(!writer.needs_sync(before));
    assert_eq!(writer.sync_deadline(), None);
    writer.append(&record(0, 10)).expect("append");
    let deadline = writer.sync_deadline().expect("a deadline");
    assert!(deadline >= before + interval);
    assert!(writer.needs_sync(deadline));
    assert_eq!(writer.n_unsynced_records(), 1);
    writer.sync().expect("sync");
    assert!(!writer.needs_sync(deadline + interval));
    assert_eq!(writer.n_unsynced_records(), 0);
}

/// The committed segment of format version 1 (see testdata/SOURCES.md).
/// Every later release must read it exactly so.
fn v1_fixture_records() -> Vec<Record> {
    vec![
        Record { kind: RecordKind::Checkpoint, recv_time_us: 1_723_161_600_000_000, payload: b"{\"checkpoint\":1}".to_vec() },
        Record {
            kind: RecordKind::WsFrame,
            recv_time_us: 1_723_161_600_123_456,
            payload: br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161600123000,"s":"BTCUSDT","t":3735426580,"p":"61000.10000000","q":"0.00100000","T":1723161600122999,"m":true,"M":true}}"#.to_vec(),
        },
        Record { kind: RecordKind::RestRows, recv_time_us: 1_723_161_601_000_000, payload: vec![0, 1, 2, 254, 255] },
        Record { kind: RecordKind::WsFrame, recv_time_us: -1, payload: Vec::new() },
    ]
}

fn v1_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wal/testdata/v1")
}

#[test]
fn reads_committed_v1_fixture() {
    let items: Vec<ReadItem> = read_segments(&v1_fixture_dir())
        .expect("list")
        .collect::<Result<_>>()
        .expect("read");
    assert_eq!(records_in(&items), v1_fixture_records());
    assert_eq!(items.len(), v1_fixture_records().len(), "no damage");
}

/// Writes the v1 fixture. Run once per format, by hand:
/// `cargo test -- --ignored write_v1_fixture`; never after the format changed.
#[test]
#[ignore = "writes the committed fixture; run by hand for a new format only"]
fn write_v1_fixture() {
    let dir = v1_fixture_dir();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (bytes, _) = segment_bytes(SegmentId(1), &v1_fixture_records());
    std::fs::write(segment_path(&dir, SegmentId(1)), bytes).expect("write fixture");
}

/// Appends per second for 200-byte records, on the real filesystem under
/// `WAL_BENCH_DIR` (default: the system temp dir). Run with
/// `cargo test --release -- --ignored --nocapture bench_append_throughput`.
#[test]
#[ignore = "benchmark; run by hand in release mode"]
fn bench_append_throughput() {
    let base = std::env::var_os("WAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    for (label, records_per_sync, n_records) in [
        ("sync every 1000 records", 1000usize, 200_000usize),
        ("sync every record", 1, 2_000),
    ] {
        let temp = tempfile::tempdir_in(&base).expect("tempdir");
        let (mut writer, _) = Wal::open(config(temp.path(), 128 << 20)).expect("open");
        let record = record(0, 200);
        let start = Instant::now();
        for index in 0..n_records {
            writer.append(&record).expect("append");
            if (index + 1) % records_per_sync == 0 {
                writer.sync().expect("sync");
            }
        }
        writer.sync().expect("sync");
        let elapsed = start.elapsed();
        println!(
            "{label}: {n_records} records in {elapsed:.2?} = {:.0} appends/s ({})",
            n_records as f64 / elapsed.as_secs_f64(),
            base.display()
        );
    }
}
