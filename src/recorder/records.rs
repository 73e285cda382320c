//! The WAL record codec: what a record of the runtime is and how it is
//! written and read back. A WS frame is its market's one-byte tag and then
//! the frame as received; a fill report and a checkpoint are JSON. A
//! durable record decodes to an [`Applied`] (live batches and replay alike);
//! a frame that cannot be decoded comes back for the quarantine.

use crate::binance::decode::{decode_frame, Decoded};
use crate::binance::ws::now_us;
use crate::domain::{Market, TimeUs};
use crate::quarantine::QuarantinedFrame;
use crate::recorder::state::{Checkpoint, FillReport};
use crate::wal::{Record, RecordKind, SegmentId};
use tracing::warn;

pub(super) fn checkpoint_record(checkpoint: &Checkpoint) -> Record {
    Record {
        kind: RecordKind::Checkpoint,
        recv_time_us: now_us(),
        payload: serde_json::to_vec(checkpoint).expect("checkpoints always serialise"),
    }
}

/// A WS frame record's payload: one byte of market tag, then the frame.
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
    record: &Record,
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
            match decode_frame(market, frame, record.recv_time_us) {
                Ok(decoded) => Ok(Some(Applied::Frame {
                    market,
                    segment,
                    decoded,
                })),
                Err(error) => Err(QuarantinedFrame {
                    market,
                    recv_time_us: record.recv_time_us,
                    error: error.to_string(),
                    frame: String::from_utf8_lossy(frame).into_owned(),
                }),
            }
        }
        RecordKind::Checkpoint => match serde_json::from_slice(&record.payload) {
            Ok(checkpoint) => Ok(Some(Applied::Checkpoint(checkpoint))),
            Err(error) => {
                warn!(%error, "WAL checkpoint record not understood; skipped");
                Ok(None)
            }
        },
        RecordKind::RestRows => match serde_json::from_slice(&record.payload) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_records_round_trip_through_decode() {
        let frame = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}}"#;
        let record = frame_record(Market::Spot, 99, frame);
        let Ok(Some(Applied::Frame {
            market,
            segment,
            decoded,
        })) = decode_record(SegmentId(4), &record)
        else {
            panic!("decodes")
        };
        assert_eq!((market, segment), (Market::Spot, SegmentId(4)));
        assert!(matches!(decoded, Decoded::Row { .. }));
        let garbage = frame_record(Market::Spot, 99, b"garbage");
        let Err(quarantined) = decode_record(SegmentId(4), &garbage) else {
            panic!("quarantined")
        };
        assert_eq!(
            (quarantined.frame.as_str(), quarantined.recv_time_us),
            ("garbage", 99)
        );
    }
}
