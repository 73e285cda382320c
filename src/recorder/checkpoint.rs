//! The checkpoint records the WAL holds besides frames, with no I/O: the
//! sessions and watch spans a restart needs to know which stretches of
//! time were watched. Written and read as JSON by `records.rs`; applied by
//! the state (`State::apply_checkpoint`, `State::checkpoints`).

use serde::{Deserialize, Serialize};

use crate::domain::TimeUs;
use crate::seal::WatchSpan;

/// Checkpoint records: what the WAL must remember besides frames so that a
/// restart knows which stretches of time were watched. A `Sessions` record
/// opens every segment, so deleting old segments never loses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Checkpoint {
    /// A recorder process started; its span begins at the market's next event.
    SessionStart { market: String },
    /// A recorder process stopped cleanly at this exchange time.
    SessionStop {
        market: String,
        exchange_time: Option<TimeUs>,
    },
    /// The spans still relevant to unsealed hours, at a segment's start.
    Sessions {
        market: String,
        spans: Vec<WatchSpan>,
        pending_new_span: bool,
    },
    /// A link carrying these streams ended at this exchange time: the
    /// streams may miss data until a replacement delivers.
    LinkLost {
        market: String,
        streams: Vec<String>,
        exchange_time: Option<TimeUs>,
    },
}
