//! The exchange clock, with no I/O: what time each market is believed to
//! be at (the newest time two independent sources agree on, see
//! [`SourceTimes`]), the watch spans of its processes, which stream rows'
//! times cannot be believed ([`implausible_times`]), and how the streams'
//! clock compares with `/api/v3/time` ([`check_exchange_time`]). The state
//! (`state.rs`) feeds it event times and server answers.

use std::collections::BTreeMap;

use crate::config::ClockBounds;
use crate::domain::{Hour, Row, StreamKey, TimeUs};
use crate::seal::WatchSpan;

/// Per-market state.
#[derive(Debug, Default)]
pub(super) struct MarketState {
    /// The exchange clock: the newest time two independent sources agree
    /// on (see [`SourceTimes`]), or the newest `/api/v3/time` answer.
    pub(super) exchange_time: Option<TimeUs>,
    /// The newest event time of each stream, kept as its top two.
    pub(super) sources: SourceTimes,
    /// The newest `/api/v3/time` answer (evidence against lying frames).
    pub(super) server_time: Option<TimeUs>,
    /// The newest `/api/v3/time` answer that moves the clock: one that came
    /// after a whole sampling interval in which no stream frame arrived.
    /// While the streams deliver, they are the clock: a stream that lags
    /// (backpressure, a slow disk) must not have its hours sealed from REST
    /// before its own rows arrive.
    silent_server_time: Option<TimeUs>,
    /// A stream frame arrived since the last `/api/v3/time` answer.
    frames_since_sample: bool,
    pub(super) spans: Vec<WatchSpan>,
    /// A process started; the next event opens a new span.
    pub(super) pending_new_span: bool,
    /// Host-minus-exchange clock offsets by hour of exchange time.
    pub(super) clock_offsets: BTreeMap<Hour, Vec<i64>>,
    pub(super) last_clock_offset: Option<i64>,
}

impl MarketState {
    /// Moves the exchange clock to what is believed now: the newest time two
    /// streams agree on, or the server's own answer. `event_time`, a checked
    /// event just seen, opens the span of a process that just started.
    pub(super) fn advance_clock(&mut self, event_time: Option<TimeUs>) {
        if self.pending_new_span {
            if let Some(start) = event_time {
                self.spans.push(WatchSpan { start, end: None });
                self.pending_new_span = false;
            }
        }
        // The server is a source too: the second newest of the newest
        // stream, the next stream and the server. So one stream moving on
        // alone (a kline stream while trades are quiet) is believed as far
        // as the server agrees, and a lagging stream is not overtaken.
        let stream_and_server = match (self.sources.newest(), self.server_time) {
            (Some(stream), Some(server)) => Some(stream.min(server)),
            _ => None,
        };
        let believed = self
            .sources
            .corroborated()
            .max(stream_and_server)
            .max(self.silent_server_time);
        self.exchange_time = self.exchange_time.max(believed);
    }

    /// A process starts recording the market: its span opens at the next
    /// event, and the streams' times of an earlier process are forgotten.
    pub(super) fn begin_session(&mut self) {
        // A process that died without a stop record: its span ends at
        // the last time it made durable.
        if let (Some(last), Some(previous_time)) = (self.spans.last_mut(), self.exchange_time) {
            if last.end.is_none() {
                last.end = Some(previous_time.max(last.start));
            }
        }
        self.pending_new_span = true;
        self.sources = SourceTimes::default();
        self.server_time = None;
        self.frames_since_sample = false;
    }

    /// A process stops recording the market at `exchange_time`.
    pub(super) fn end_session(&mut self, exchange_time: Option<TimeUs>) {
        self.pending_new_span = false;
        if let (Some(last), Some(time)) = (self.spans.last_mut(), exchange_time) {
            if last.end.is_none() {
                last.end = Some(time.max(last.start));
            }
        }
    }

    /// Applies the spans of a `Sessions` checkpoint met during replay.
    pub(super) fn restore_spans(&mut self, spans: Vec<WatchSpan>, pending_new_span: bool) {
        // The record is the list still needed as of its writing
        // (older spans pruned); anything learnt earlier in the
        // replay is older, so a record at least as new replaces it.
        let newest_start = |list: &[WatchSpan]| list.last().map(|span| span.start);
        if self.spans.is_empty() || newest_start(&spans) >= newest_start(&self.spans) {
            self.spans = spans;
        }
        self.pending_new_span |= pending_new_span;
    }

    /// The spans still relevant to hours from `oldest_needed` on.
    pub(super) fn spans_needed(&self, oldest_needed: Option<TimeUs>) -> Vec<WatchSpan> {
        self.spans
            .iter()
            .filter(|span| match (span.end, oldest_needed) {
                (Some(end), Some(oldest)) => end >= oldest,
                _ => true,
            })
            .copied()
            .collect()
    }

    /// Records a `/api/v3/time` answer (see `State::add_clock_sample`) and
    /// compares it with the streams' newest time.
    pub(super) fn add_clock_sample(&mut self, server_time: TimeUs, offset_us: i64) -> ClockCheck {
        // One list of offsets for the hour being recorded; older hours'
        // lists go once every stream has sealed past them (`prune`).
        self.clock_offsets
            .entry(Hour::containing(server_time))
            .or_default()
            .push(offset_us);
        self.last_clock_offset = Some(offset_us);
        let check = check_exchange_time(self.sources.newest(), server_time);
        self.server_time = Some(
            self.server_time
                .map_or(server_time, |time| time.max(server_time)),
        );
        let silent = !std::mem::take(&mut self.frames_since_sample);
        if silent {
            self.silent_server_time = self.silent_server_time.max(Some(server_time));
        }
        // A process whose streams are all silent is still watching.
        self.advance_clock(silent.then_some(server_time));
        check
    }

    /// Stream `source` showed `event_time` (already checked).
    pub(super) fn note_event_time(&mut self, source: &StreamKey, event_time: TimeUs) {
        self.sources.note(source, event_time);
        self.frames_since_sample = true;
        self.advance_clock(Some(event_time));
    }

    /// Drops the clock offsets of hours before `oldest_needed` and the
    /// watch spans that ended before it (the newest span is always kept).
    pub(super) fn prune_before(&mut self, oldest_needed: Hour) {
        self.clock_offsets = self.clock_offsets.split_off(&oldest_needed);
        let n_spans = self.spans.len();
        let mut index = 0;
        self.spans.retain(|span| {
            index += 1;
            index == n_spans || span.end.is_none_or(|end| end >= oldest_needed.start())
        });
    }
}

/// The two newest event times of a market's streams, from two different
/// streams. Each stream's newest time only grows, so keeping the top two
/// is exact: `second` is the newest time of any stream but `first`'s, the
/// time one lying stream cannot move.
#[derive(Debug, Default, Clone)]
pub struct SourceTimes {
    first: Option<(StreamKey, TimeUs)>,
    second: Option<TimeUs>,
}

impl SourceTimes {
    /// Stream `source` showed `time`.
    pub fn note(&mut self, source: &StreamKey, time: TimeUs) {
        match &mut self.first {
            Some((first_source, first_time)) if first_source == source => {
                *first_time = (*first_time).max(time);
            }
            Some((_, first_time)) if time > *first_time => {
                self.second = Some(*first_time);
                self.first = Some((source.clone(), time));
            }
            Some(_) => self.second = Some(self.second.map_or(time, |second| second.max(time))),
            None => self.first = Some((source.clone(), time)),
        }
    }

    /// The newest time a stream other than `source` showed.
    pub fn newest_other_than(&self, source: &StreamKey) -> Option<TimeUs> {
        match &self.first {
            Some((first_source, _)) if first_source == source => self.second,
            Some((_, first_time)) => Some(*first_time),
            None => None,
        }
    }

    /// The newest time any stream showed.
    pub fn newest(&self) -> Option<TimeUs> {
        self.first.as_ref().map(|(_, time)| *time)
    }

    /// The newest time two streams vouch for.
    pub fn corroborated(&self) -> Option<TimeUs> {
        self.second
    }
}

/// Pure: why a stream row's times cannot be believed, if they cannot.
/// `event_time` is its frame's `E`; `newest_other` the newest time any other
/// source of the market showed. (A row far behind the clock is a late row:
/// it reseals its hour by key, so it cannot seal anything early.)
pub fn implausible_times(
    row: &Row,
    event_time: TimeUs,
    newest_other: Option<TimeUs>,
    bounds: &ClockBounds,
) -> Option<String> {
    // Binance opened in July 2017: nothing it sends is older.
    const BINANCE_OPENED_US: TimeUs = 1_498_867_200_000_000;
    const SLACK_US: i64 = crate::domain::MICROS_PER_SECOND;
    if event_time < BINANCE_OPENED_US || row.bucket_time() < BINANCE_OPENED_US {
        return Some(format!(
            "time before Binance existed (E={event_time}, row time {})",
            row.bucket_time()
        ));
    }
    let (from, to) = match row {
        Row::Kline(kline) => (kline.open_time, kline.close_time),
        _ => (row.bucket_time(), row.bucket_time()),
    };
    if from > event_time.saturating_add(SLACK_US) {
        return Some(format!(
            "row time {from} after its event time E={event_time}"
        ));
    }
    if to < from || event_time.saturating_sub(to) > bounds.max_event_delay_us {
        return Some(format!(
            "event time E={event_time} too far after the row time {to} (clock.max_event_delay_secs)"
        ));
    }
    if let Some(other) = newest_other {
        if event_time.saturating_sub(other) > bounds.max_lead_us {
            return Some(format!(
                "event time E={event_time} leads every other source (newest {other}) by more than clock.max_lead_secs"
            ));
        }
    }
    None
}

/// How the stream-derived exchange time compares with `/api/v3/time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockCheck {
    Consistent,
    /// Event times run ahead of the exchange's clock by more than
    /// [`MAX_STREAM_LEAD_US`]: something sends bogus times.
    StreamAhead {
        ahead_us: i64,
    },
}

/// How far event times may lead `/api/v3/time` (the request's own latency
/// and the exchange's event stamping) before it counts as inconsistent.
pub const MAX_STREAM_LEAD_US: i64 = 60 * crate::domain::MICROS_PER_SECOND;

/// Pure: compares the newest event time seen with the server time.
pub fn check_exchange_time(exchange_time: Option<TimeUs>, server_time: TimeUs) -> ClockCheck {
    match exchange_time {
        Some(exchange_time) if exchange_time - server_time > MAX_STREAM_LEAD_US => {
            ClockCheck::StreamAhead {
                ahead_us: exchange_time - server_time,
            }
        }
        _ => ClockCheck::Consistent,
    }
}
