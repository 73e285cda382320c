//! Pure encoding and checking of the segment header and record frames
//! (layout in the module doc of `wal`). No I/O here, so nothing here fails
//! except on the bytes it is given.

#[cfg(test)]
use super::Record;
use super::{RecordKind, SegmentId};

pub const SEGMENT_MAGIC: [u8; 8] = *b"BRECWAL\0";
/// The format this release writes, and the only one it reads so far.
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 24;

/// Segments written with `O_DIRECT` are written in blocks of this many
/// bytes, the last padded with zeros: a segment may end in fewer zeros
/// than this after its last record, its length a multiple of this. The
/// reader takes them for the end of the segment, not for damage.
pub const PAD_TO: usize = super::direct::BLOCK;

pub const SYNC_MARKER: [u8; 4] = [0xF5, 0x57, 0xA1, 0x1E];
pub const FRAME_HEADER_LEN: usize = 21;
/// Largest payload accepted on write and believed on read, so a corrupt
/// length cannot make the reader allocate gigabytes.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// Byte offsets inside a frame header.
const CRC_AT: usize = 4;
const LEN_AT: usize = 8;
const KIND_AT: usize = 12;
const TIME_AT: usize = 13;

pub fn encode_segment_header(segment: SegmentId) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&0u16.to_le_bytes());
    header[12..20].copy_from_slice(&segment.0.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A segment header as read, before the caller judges version and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u16,
    pub flags: u16,
    pub segment: SegmentId,
}

/// Why a segment header does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderDamage {
    BadMagic,
    ChecksumMismatch,
}

pub fn decode_segment_header(
    bytes: &[u8; SEGMENT_HEADER_LEN],
) -> Result<SegmentHeader, HeaderDamage> {
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderDamage::BadMagic);
    }
    let stored_crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if crc32c::crc32c(&bytes[0..20]) != stored_crc {
        return Err(HeaderDamage::ChecksumMismatch);
    }
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&bytes[12..20]);
    Ok(SegmentHeader {
        version: u16::from_le_bytes([bytes[8], bytes[9]]),
        flags: u16::from_le_bytes([bytes[10], bytes[11]]),
        segment: SegmentId(u64::from_le_bytes(id_bytes)),
    })
}

/// Size on disk of a record with this payload length.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// Appends the frame of `record` to `out`. The caller has checked the
/// payload length against [`MAX_PAYLOAD_LEN`].
#[cfg(test)]
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) {
    encode_parts(record.kind, record.recv_time_us, &[&record.payload], out);
}

/// Appends the frame of a record whose payload is `parts` one after the
/// other, as [`encode_frame`] would with them joined. The caller has
/// checked their length against [`MAX_PAYLOAD_LEN`].
pub fn encode_parts(kind: RecordKind, recv_time_us: i64, parts: &[&[u8]], out: &mut Vec<u8>) {
    let payload_len: usize = parts.iter().map(|part| part.len()).sum();
    debug_assert!(payload_len <= MAX_PAYLOAD_LEN);
    let start = out.len();
    let payload_len_u32 =
        u32::try_from(payload_len).expect("payload length checked against MAX_PAYLOAD_LEN");
    out.reserve(frame_len(payload_len));
    out.extend_from_slice(&SYNC_MARKER);
    out.extend_from_slice(&[0u8; 4]); // crc, filled in below
    out.extend_from_slice(&payload_len_u32.to_le_bytes());
    out.push(kind.as_byte());
    out.extend_from_slice(&recv_time_us.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    let crc = crc32c::crc32c(&out[start + LEN_AT..]);
    out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Why a frame does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDamage {
    BadSyncMarker,
    LengthTooLarge { len: u32 },
    ChecksumMismatch,
}

/// A frame that verified; the payload is `bytes[FRAME_HEADER_LEN..frame_len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub kind_byte: u8,
    pub recv_time_us: i64,
    pub frame_len: usize,
}

/// The verdict on the bytes at a supposed frame start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameCheck {
    Valid(FrameInfo),
    /// Undecided: give at least this many bytes (from the frame start).
    NeedBytes(usize),
    Damaged(FrameDamage),
}

/// Checks the frame that should start at `bytes[0]`.
pub fn check_frame(bytes: &[u8]) -> FrameCheck {
    if bytes.len() < SYNC_MARKER.len() {
        return FrameCheck::NeedBytes(FRAME_HEADER_LEN);
    }
    if bytes[0..4] != SYNC_MARKER {
        return FrameCheck::Damaged(FrameDamage::BadSyncMarker);
    }
    if bytes.len() < FRAME_HEADER_LEN {
        return FrameCheck::NeedBytes(FRAME_HEADER_LEN);
    }
    let payload_len = u32::from_le_bytes([
        bytes[LEN_AT],
        bytes[LEN_AT + 1],
        bytes[LEN_AT + 2],
        bytes[LEN_AT + 3],
    ]);
    let Ok(payload_len_usize) = usize::try_from(payload_len) else {
        return FrameCheck::Damaged(FrameDamage::LengthTooLarge { len: payload_len });
    };
    if payload_len_usize > MAX_PAYLOAD_LEN {
        return FrameCheck::Damaged(FrameDamage::LengthTooLarge { len: payload_len });
    }
    let total = frame_len(payload_len_usize);
    if bytes.len() < total {
        return FrameCheck::NeedBytes(total);
    }
    let stored_crc = u32::from_le_bytes([
        bytes[CRC_AT],
        bytes[CRC_AT + 1],
        bytes[CRC_AT + 2],
        bytes[CRC_AT + 3],
    ]);
    if crc32c::crc32c(&bytes[LEN_AT..total]) != stored_crc {
        return FrameCheck::Damaged(FrameDamage::ChecksumMismatch);
    }
    let mut time_bytes = [0u8; 8];
    time_bytes.copy_from_slice(&bytes[TIME_AT..TIME_AT + 8]);
    FrameCheck::Valid(FrameInfo {
        kind_byte: bytes[KIND_AT],
        recv_time_us: i64::from_le_bytes(time_bytes),
        frame_len: total,
    })
}

#[cfg(test)]
mod tests {
    use super::super::RecordKind;
    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            kind: RecordKind::WsFrame,
            recv_time_us: 1_723_161_600_123_456,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn frame_round_trips() {
        for payload in [
            &b""[..],
            b"x",
            br#"{"e":"trade","s":"BTCUSDT","p":"61000.10"}"#,
        ] {
            let original = record(payload);
            let mut bytes = Vec::new();
            encode_frame(&original, &mut bytes);
            assert_eq!(bytes.len(), frame_len(payload.len()));
            let FrameCheck::Valid(info) = check_frame(&bytes) else {
                panic!("frame did not verify");
            };
            assert_eq!(info.frame_len, bytes.len());
            assert_eq!(info.kind_byte, 1);
            assert_eq!(info.recv_time_us, original.recv_time_us);
            assert_eq!(&bytes[FRAME_HEADER_LEN..], payload);
        }
    }

    #[test]
    fn frame_layout_is_as_documented() {
        let mut bytes = Vec::new();
        encode_frame(
            &Record {
                kind: RecordKind::Checkpoint,
                recv_time_us: 0x0102_0304_0506_0708,
                payload: b"ab".to_vec(),
            },
            &mut bytes,
        );
        assert_eq!(&bytes[0..4], &[0xF5, 0x57, 0xA1, 0x1E]);
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(bytes[12], 3);
        assert_eq!(&bytes[13..21], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[21..], b"ab");
        let crc = crc32c::crc32c(&bytes[8..]);
        assert_eq!(&bytes[4..8], &crc.to_le_bytes());
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let mut clean = Vec::new();
        encode_frame(&record(br#"{"e":"aggTrade","a":123}"#), &mut clean);
        for index in 0..clean.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut corrupt = clean.clone();
                corrupt[index] ^= flip;
                match check_frame(&corrupt) {
                    FrameCheck::Valid(_) => {
                        panic!("corruption at byte {index} (xor {flip:#x}) not detected")
                    }
                    FrameCheck::Damaged(_) | FrameCheck::NeedBytes(_) => {}
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_undecided_not_valid() {
        let mut clean = Vec::new();
        encode_frame(&record(b"payload"), &mut clean);
        for cut in 0..clean.len() {
            match check_frame(&clean[..cut]) {
                FrameCheck::NeedBytes(needed) => assert!(needed > cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_length_is_damage_without_reading_on() {
        let mut bytes = Vec::new();
        encode_frame(&record(b"abc"), &mut bytes);
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            check_frame(&bytes),
            FrameCheck::Damaged(FrameDamage::LengthTooLarge { len: u32::MAX })
        );
    }

    #[test]
    fn segment_header_round_trips_and_detects_corruption() {
        let header = encode_segment_header(SegmentId(42));
        assert_eq!(
            decode_segment_header(&header),
            Ok(SegmentHeader {
                version: FORMAT_VERSION,
                flags: 0,
                segment: SegmentId(42)
            })
        );
        for index in 0..SEGMENT_HEADER_LEN {
            let mut corrupt = header;
            corrupt[index] ^= 0x10;
            assert!(decode_segment_header(&corrupt).is_err(), "byte {index}");
        }
    }
}
