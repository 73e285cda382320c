//! What the connection tasks (and the clock task) tell the recorder over
//! its one channel: frames as the socket handed them over, and the links'
//! and the exchange's news.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::LinkLost;
use crate::domain::{Market, StreamKind, Symbol, TimeUs};

/// A frame's bytes as the socket handed them over (its own buffer: no copy
/// until the WAL record is built). A text frame keeps tungstenite's proof
/// that it is UTF-8, so its decode does not check again.
#[derive(Debug, Clone)]
pub enum FramePayload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl FramePayload {
    /// The combined-stream name the frame carries, if any
    /// ([`combined_stream_name`](crate::binance::streams::combined_stream_name));
    /// a text frame's is sliced out, its UTF-8 already checked.
    pub fn stream_name(&self) -> Option<&str> {
        match self {
            FramePayload::Text(text) => {
                crate::binance::streams::combined_stream_name_in_text(text.as_str())
            }
            FramePayload::Binary(bytes) => crate::binance::streams::combined_stream_name(bytes),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            FramePayload::Text(text) => text.as_bytes(),
            FramePayload::Binary(bytes) => bytes,
        }
    }
}

/// Most frames in one [`Inbound::Frames`] message. The channel's capacity
/// counts messages, so it holds at most this many times its capacity in
/// frames (`recorder::CHANNEL_CAPACITY`).
pub const FRAMES_PER_MESSAGE: usize = 16;

/// What a connection task (or the clock task) tells the recorder.
#[derive(Debug)]
pub enum Inbound {
    /// A text or binary data frame, as received.
    Frame {
        market: Market,
        recv_time: TimeUs,
        payload: FramePayload,
    },
    /// Frames one link read back to back, in the order read, each with its
    /// `recv_time`: a burst's frames travel as one message, at most
    /// [`FRAMES_PER_MESSAGE`] of them (a channel send per frame, with its
    /// permit and the receiver's wake, cost more than the frame's WAL record).
    Frames {
        market: Market,
        frames: Vec<(TimeUs, FramePayload)>,
    },
    /// A link was established and its subscription sent.
    Connected {
        market: Market,
        task: usize,
        link: u64,
    },
    /// A link ended. `streams` are the streams it carried; from now until a
    /// replacement delivers, they may miss data (a gap to check).
    Disconnected {
        market: Market,
        task: usize,
        link: u64,
        reason: LinkLost,
        streams: Vec<(Symbol, StreamKind)>,
    },
    /// A `/api/v3/time` answer: the exchange's clock and the host clock's
    /// offset from it (host minus exchange, at the middle of the request).
    ClockSample {
        market: Market,
        server_time: TimeUs,
        offset_us: i64,
    },
    /// Binance refuses this host's region (HTTP 451): the daemon stops with
    /// this message instead of retrying forever.
    Refused { market: Market, message: String },
    /// `exchangeInfo` read again (with the weight limit): what it says of
    /// the configured symbols, for the delivery of dated contracts.
    SymbolStatuses {
        market: Market,
        statuses: Vec<crate::binance::rest::SymbolStatus>,
    },
}

impl Inbound {
    /// How many data frames the message carries.
    pub fn n_frames(&self) -> usize {
        match self {
            Inbound::Frame { .. } => 1,
            Inbound::Frames { frames, .. } => frames.len(),
            _ => 0,
        }
    }
}
