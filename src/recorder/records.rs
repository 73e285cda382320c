//! The WAL record codec: what a record of the runtime is and how it is
//! written and read back. A WS frame is its market's one-byte tag and then
//! the frame as received; a fill report and a checkpoint are JSON. A
//! durable record decodes to an [`Applied`] (live batches and replay alike);
//! a frame that cannot be decoded comes back for the quarantine.

use crate::binance::decode::{decode_frame, decode_text_frame_onto, DecodeError, Decoded};
use crate::binance::ws::{now_us, FramePayload};
use crate::domain::{Market, TimeUs};
use crate::quarantine::QuarantinedFrame;
use crate::recorder::state::{Checkpoint, FillReport};
use crate::wal::{
    Record, RecordKind, RecordPosition, RecordRef, SegmentId, WalWriter, FRAME_HEADER_LEN,
};
use tracing::warn;

pub(super) fn checkpoint_record(checkpoint: &Checkpoint) -> Record {
    Record {
        kind: RecordKind::Checkpoint,
        recv_time_us: now_us(),
        payload: serde_json::to_vec(checkpoint).expect("checkpoints always serialise"),
    }
}

/// A WS frame record's payload: one byte of market tag, then the frame.
#[cfg(test)]
pub(super) fn frame_record(market: Market, recv_time: TimeUs, bytes: &[u8]) -> Record {
    let mut payload = Vec::with_capacity(bytes.len() + 1);
    payload.push(market.wal_tag());
    payload.extend_from_slice(bytes);
    Record {
        kind: RecordKind::WsFrame,
        recv_time_us: recv_time,
        payload,
    }
}

/// A frame as a socket hands it over: text when it is UTF-8, else binary.
#[cfg(test)]
pub(super) fn waiting_frame(market: Market, recv_time: TimeUs, bytes: &[u8]) -> Outgoing {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    let payload = match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => FramePayload::Text(text),
        Err(_) => FramePayload::Binary(bytes),
    };
    Outgoing::Frame {
        market,
        recv_time,
        payload,
    }
}

/// A record waiting for the WAL. A WS frame keeps the bytes its socket
/// read (shared with the socket's read buffer, not copied); its market's
/// tag byte goes before them only as it is appended, so a frame is copied
/// once, into the WAL's buffer, and never allocated on its own.
#[derive(Debug)]
pub(super) enum Outgoing {
    Frame {
        market: Market,
        recv_time: TimeUs,
        payload: FramePayload,
    },
    Record(Record),
}

impl Outgoing {
    pub(super) fn kind(&self) -> RecordKind {
        match self {
            Outgoing::Frame { .. } => RecordKind::WsFrame,
            Outgoing::Record(record) => record.kind,
        }
    }

    pub(super) fn recv_time_us(&self) -> TimeUs {
        match self {
            Outgoing::Frame { recv_time, .. } => *recv_time,
            Outgoing::Record(record) => record.recv_time_us,
        }
    }

    /// Bytes it takes in a WAL segment, header included.
    pub(super) fn frame_len(&self) -> u64 {
        match self {
            Outgoing::Frame { payload, .. } => {
                (FRAME_HEADER_LEN + 1 + payload.as_bytes().len()) as u64
            }
            Outgoing::Record(record) => record.frame_len(),
        }
    }

    /// The payload's length and its first `n` bytes.
    pub(super) fn payload_start(&self, n: usize) -> (usize, Vec<u8>) {
        match self {
            Outgoing::Frame {
                market, payload, ..
            } => {
                let bytes = payload.as_bytes();
                let mut start = vec![market.wal_tag()];
                start.extend_from_slice(&bytes[..bytes.len().min(n.saturating_sub(1))]);
                (bytes.len() + 1, start)
            }
            Outgoing::Record(record) => (
                record.payload.len(),
                record.payload[..record.payload.len().min(n)].to_vec(),
            ),
        }
    }

    pub(super) fn append_to(&self, wal: &mut WalWriter) -> crate::wal::Result<RecordPosition> {
        match self {
            Outgoing::Frame {
                market,
                recv_time,
                payload,
            } => wal.append_parts(
                RecordKind::WsFrame,
                *recv_time,
                &[&[market.wal_tag()], payload.as_bytes()],
            ),
            Outgoing::Record(record) => wal.append(record),
        }
    }

    /// [`decode_record`] of the record as it will be durable, pushed onto
    /// `applied`; `false` when it applies nothing. A frame's decode goes
    /// straight into the list: an [`Applied`] is 192 bytes, and each
    /// value it passed through on its way there was a copy of them (4 %
    /// of a burst's samples, docs/BENCHMARKS.md, session 37).
    pub(super) fn decode_onto(
        &self,
        segment: SegmentId,
        applied: &mut Vec<Applied>,
    ) -> Result<bool, QuarantinedFrame> {
        match self {
            Outgoing::Frame {
                market,
                recv_time,
                payload,
            } => {
                let market = *market;
                let wrap = |decoded| Applied::Frame {
                    market,
                    segment,
                    decoded,
                };
                let pushed = match payload {
                    FramePayload::Text(text) => {
                        decode_text_frame_onto(market, text, *recv_time, applied, wrap)
                    }
                    FramePayload::Binary(bytes) => decode_frame(market, bytes, *recv_time)
                        .map(|decoded| applied.push(wrap(decoded))),
                };
                if let Err(error) = pushed {
                    return Err(quarantined(market, payload.as_bytes(), *recv_time, error));
                }
            }
            Outgoing::Record(record) => match decode_record(segment, record.lent())? {
                Some(one) => applied.push(one),
                None => return Ok(false),
            },
        }
        Ok(true)
    }
}

impl From<Record> for Outgoing {
    fn from(record: Record) -> Outgoing {
        Outgoing::Record(record)
    }
}

/// What a durable record turned into.
#[allow(clippy::large_enum_variant)] // see `Decoded`
pub(super) enum Applied {
    Frame {
        market: Market,
        segment: SegmentId,
        decoded: Decoded,
    },
    Checkpoint(Checkpoint),
    Fill {
        segment: SegmentId,
        report: FillReport,
    },
}

impl Applied {
    /// Read from (or written to) WAL segment `segment`.
    pub(super) fn set_segment(&mut self, segment: SegmentId) {
        match self {
            Applied::Frame { segment: own, .. } | Applied::Fill { segment: own, .. } => {
                *own = segment
            }
            Applied::Checkpoint(_) => {}
        }
    }
}

/// Most rows in one WAL record of a fill report (about 2 MB of JSON; the
/// WAL takes records up to 64 MiB).
pub(super) const FILL_RECORD_MAX_ROWS: usize = 10_000;

/// A fill report's record: its JSON.
pub(super) fn fill_record(report: &FillReport) -> Record {
    Record {
        kind: RecordKind::RestRows,
        recv_time_us: now_us(),
        payload: serde_json::to_vec(report).expect("fill reports always serialise"),
    }
}

/// Decodes a durable record; undecodable frames are returned for quarantine.
pub(super) fn decode_record(
    segment: SegmentId,
    record: RecordRef<'_>,
) -> Result<Option<Applied>, QuarantinedFrame> {
    match record.kind {
        RecordKind::WsFrame => {
            let Some((&tag, frame)) = record.payload.split_first() else {
                return Ok(None);
            };
            let Some(market) = Market::from_wal_tag(tag) else {
                warn!(tag, "WAL frame of an unknown market tag; skipped");
                return Ok(None);
            };
            decode_frame_record(market, frame, record.recv_time_us, segment).map(Some)
        }
        RecordKind::Checkpoint => match serde_json::from_slice(record.payload) {
            Ok(checkpoint) => Ok(Some(Applied::Checkpoint(checkpoint))),
            Err(error) => {
                warn!(%error, "WAL checkpoint record not understood; skipped");
                Ok(None)
            }
        },
        RecordKind::RestRows => match serde_json::from_slice(record.payload) {
            Ok(report) => Ok(Some(Applied::Fill { segment, report })),
            Err(error) => {
                // Written by this program, so this is damage or a bug; the
                // rows are fetched again when the hour is judged.
                warn!(%error, "WAL fill record not understood; skipped");
                Ok(None)
            }
        },
    }
}

/// A frame of `market` read from a WAL record of `segment`: what it
/// applies, or as the quarantine keeps it.
fn decode_frame_record(
    market: Market,
    frame: &[u8],
    recv_time_us: TimeUs,
    segment: SegmentId,
) -> Result<Applied, QuarantinedFrame> {
    match decode_frame(market, frame, recv_time_us) {
        Ok(decoded) => Ok(Applied::Frame {
            market,
            segment,
            decoded,
        }),
        Err(error) => Err(quarantined(market, frame, recv_time_us, error)),
    }
}

/// A frame that did not decode, as the quarantine keeps it.
fn quarantined(
    market: Market,
    frame: &[u8],
    recv_time_us: TimeUs,
    error: DecodeError,
) -> QuarantinedFrame {
    QuarantinedFrame {
        market,
        recv_time_us,
        error: error.to_string(),
        frame: String::from_utf8_lossy(frame).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame waiting as the socket handed it over is written, counted and
    /// decoded as its record would be: the WAL cannot tell them apart.
    #[test]
    fn a_frame_waiting_unjoined_is_its_record() {
        let text = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}}"#;
        for market in Market::ALL {
            for bytes in [&text[..], b"garbage"] {
                let record = frame_record(market, 99, bytes);
                let waiting = waiting_frame(market, 99, bytes);
                assert_eq!(waiting.kind(), record.kind);
                assert_eq!(waiting.recv_time_us(), record.recv_time_us);
                assert_eq!(waiting.frame_len(), record.frame_len());
                assert_eq!(
                    waiting.payload_start(5),
                    (record.payload.len(), record.payload[..5].to_vec())
                );
                let written = |outgoing: &Outgoing| {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let config = crate::wal::WalConfig {
                        dir: dir.path().to_path_buf(),
                        segment_max_bytes: 1 << 20,
                        fsync: crate::wal::FsyncPolicy::EveryRecord,
                    };
                    let (mut wal, _) = crate::wal::Wal::open(config).expect("open");
                    let position = outgoing.append_to(&mut wal).expect("append");
                    wal.sync().expect("sync");
                    let path = crate::wal::segment_path(dir.path(), position.segment);
                    std::fs::read(path).expect("segment")
                };
                assert_eq!(
                    written(&waiting),
                    written(&Outgoing::Record(record.clone()))
                );
                let decoded = |outgoing: &Outgoing| {
                    format!(
                        "{:?}",
                        {
                            let mut one = Vec::new();
                            outgoing
                                .decode_onto(SegmentId(4), &mut one)
                                .map(|_| one.pop())
                        }
                        .map(|applied| applied.map(|applied| match applied {
                            Applied::Frame {
                                market,
                                segment,
                                decoded,
                            } => format!("{market:?} {segment:?} {decoded:?}"),
                            _ => "other".to_owned(),
                        }))
                        .map_err(|frame| format!("{frame:?}"))
                    )
                };
                assert_eq!(decoded(&waiting), decoded(&Outgoing::Record(record)));
            }
        }
    }

    #[test]
    fn frame_records_round_trip_through_decode() {
        let frame = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}}"#;
        let record = frame_record(Market::Spot, 99, frame);
        let Ok(Some(Applied::Frame {
            market,
            segment,
            decoded,
        })) = decode_record(SegmentId(4), record.lent())
        else {
            panic!("decodes")
        };
        assert_eq!((market, segment), (Market::Spot, SegmentId(4)));
        assert!(matches!(decoded, Decoded::Row { .. }));
        let garbage = frame_record(Market::Spot, 99, b"garbage");
        let Err(quarantined) = decode_record(SegmentId(4), garbage.lent()) else {
            panic!("quarantined")
        };
        assert_eq!(
            (quarantined.frame.as_str(), quarantined.recv_time_us),
            ("garbage", 99)
        );
    }
}
