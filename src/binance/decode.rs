//! Pure decoding of stream frames: `(market, bytes, recv_time)` to a typed
//! [`Decoded`] value, or a [`DecodeError`] that says what was wrong.
//!
//! Nothing here does I/O or keeps state, so the same function serves live
//! frames and WAL replay. Wire structs mirror the JSON and stay private;
//! unknown keys are ignored (old spot trades carry `b`/`a`, futures add `X`,
//! `nq`, `st`), unknown event types are returned as [`Decoded::Ignored`].
//!
//! Times are normalised to epoch µs. Spot streams are opened with
//! `timeUnit=MICROSECOND`; a time below 10^14 is nevertheless read as
//! milliseconds (10^14 µs is 1973, 10^14 ms is year 5138), so replays of
//! millisecond captures and markets that only speak ms decode the same way.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::flat_json::{read_flat, Fields, Flat};
use super::streams::{compact_name, COMPACT_WRAPPER_HEAD};

use crate::domain::{
    AggTradeRow, Decimal8, DecimalError, KlineInterval, KlineRow, Market, Row, Source, StreamKey,
    StreamKind, Symbol, TimeUs, TradeRow, MAX_EXCHANGE_ID, MAX_EXCHANGE_TIME_US, MIN_EXCHANGE_ID,
    MIN_EXCHANGE_TIME_US,
};

/// Times below this are milliseconds, at or above it microseconds.
const MICROSECOND_THRESHOLD: i64 = 100_000_000_000_000;

/// What a frame turned out to be.
// Rows dominate and are moved once; boxing them would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A trade, an aggregate trade or a closed kline: a row for the dataset.
    Row {
        key: StreamKey,
        row: Row,
        event_time: TimeUs,
    },
    /// A kline update before its close: only its event time is of use.
    KlineUpdate { key: StreamKey, event_time: TimeUs },
    /// A reply to SUBSCRIBE and the other control requests.
    ControlReply(ControlReply),
    /// The server announces that it will close the connection.
    ServerShutdown { event_time: TimeUs },
    /// A well-formed event of a type or stream this recorder does not record.
    Ignored { what: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlReply {
    /// The request id as sent back (we only send small integers).
    pub id: Option<i64>,
    pub outcome: Result<serde_json::Value, ControlError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub code: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON of a known shape: {0}")]
    Json(String),
    #[error("field {field} has a value that cannot be stored exactly: {source}")]
    Value {
        field: &'static str,
        source: DecimalError,
    },
    #[error("field {field} is {value}, outside what an exchange sends ({reason})")]
    OutOfRange {
        field: &'static str,
        value: i64,
        reason: &'static str,
    },
    #[error("symbol {0:?} is not a valid symbol")]
    Symbol(String),
    #[error("kline interval {0:?} is unknown")]
    Interval(String),
    #[error("stream {stream:?} does not match the event inside it ({event_symbol} {event_kind})")]
    StreamMismatch {
        stream: String,
        event_symbol: String,
        event_kind: String,
    },
}

mod wire;

/// Normalises an exchange time to µs (see the module doc).
pub fn normalise_time(value: i64) -> TimeUs {
    // `unsigned_abs`, not `abs`: `i64::MIN.abs()` overflows, and a frame
    // carrying it panicked the decoder.
    if value.unsigned_abs() < MICROSECOND_THRESHOLD.unsigned_abs() {
        value.saturating_mul(1000)
    } else {
        value
    }
}

const TIME_RANGE_REASON: &str = "times must lie between 1970 and the end of year 9999";
const ID_RANGE_REASON: &str = "ids must lie between -1 and 2^53";

/// An exchange time normalised to µs, or `None` when it lies outside
/// [`MIN_EXCHANGE_TIME_US`]..=[`MAX_EXCHANGE_TIME_US`]: such a time is
/// forged or corrupt, and hour arithmetic on it would overflow.
pub fn exchange_time(value: i64) -> Option<TimeUs> {
    Some(normalise_time(value)).filter(|time| is_exchange_time(*time))
}

fn is_exchange_time(time: TimeUs) -> bool {
    (MIN_EXCHANGE_TIME_US..=MAX_EXCHANGE_TIME_US).contains(&time)
}

/// A trade or aggregate-trade id, or `None` outside
/// [`MIN_EXCHANGE_ID`]..=[`MAX_EXCHANGE_ID`] (gap detection adds and
/// subtracts 1 from ids).
pub fn exchange_id(value: i64) -> Option<i64> {
    Some(value).filter(|id| (MIN_EXCHANGE_ID..=MAX_EXCHANGE_ID).contains(id))
}

fn checked_time(field: &'static str, value: i64) -> Result<TimeUs, DecodeError> {
    exchange_time(value).ok_or(DecodeError::OutOfRange {
        field,
        value,
        reason: TIME_RANGE_REASON,
    })
}

fn checked_id(field: &'static str, value: i64) -> Result<i64, DecodeError> {
    exchange_id(value).ok_or(DecodeError::OutOfRange {
        field,
        value,
        reason: ID_RANGE_REASON,
    })
}

/// Decodes one text frame received on a stream connection of `market`.
pub fn decode_frame(
    market: Market,
    frame: &[u8],
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    // Nearly every frame: the event is parsed once, not scanned by the
    // wrapper's parse first. Whatever this cannot decode takes the full
    // path below, so both give the same answer.
    if let Some(decoded) = split_combined(frame)
        .and_then(|(stream, data)| decode_as_named(market, stream, data, recv_time))
    {
        return decoded;
    }
    decode_parsed_wrapper(market, frame, recv_time)
}

/// [`decode_frame`] by parsing the wrapper first: every shape of frame.
fn decode_parsed_wrapper(
    market: Market,
    frame: &[u8],
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    let envelope: wire::Envelope = serde_json::from_slice(frame).map_err(json_error)?;
    if let Some(reply) = control_reply(&envelope) {
        return Ok(Decoded::ControlReply(reply));
    }
    match (envelope.stream.as_deref(), envelope.data) {
        (Some(stream), Some(data)) => {
            decode_event(market, Some(stream), data.get().as_bytes(), recv_time)
        }
        (None, None) if envelope.e.is_some() => decode_event(market, None, frame, recv_time),
        _ => Err(DecodeError::Json(
            "neither an event, a combined-stream wrapper nor a control reply".into(),
        )),
    }
}

/// [`decode_frame`] of a frame known to be UTF-8 (a WebSocket text frame:
/// tungstenite checked it): the same answer, without checking it again.
pub fn decode_text_frame(
    market: Market,
    frame: &str,
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    if let Some(decoded) = split_combined_text(frame)
        .and_then(|(stream, data)| decode_as_named(market, stream, data, recv_time))
    {
        return decoded;
    }
    decode_parsed_wrapper(market, frame.as_bytes(), recv_time)
}

/// [`decode_text_frame`], its answer pushed onto `out` as `wrap` makes it,
/// or its error returned. The usual trade or aggTrade is pushed as it is
/// built: a [`Decoded`] is about 180 bytes, and returned through
/// `Option` and `Result` it was copied at each (about a tenth of the
/// decode thread's time, docs/BENCHMARKS.md).
pub fn decode_text_frame_onto<T>(
    market: Market,
    frame: &str,
    recv_time: TimeUs,
    out: &mut Vec<T>,
    wrap: impl FnOnce(Decoded) -> T,
) -> Result<(), DecodeError> {
    let usual = split_combined_text(frame)
        .and_then(|(stream, data)| usual_row(market, stream, data, recv_time));
    if let Some(decoded) = usual {
        out.push(wrap(decoded));
        return Ok(());
    }
    out.push(wrap(decode_text_frame(market, frame, recv_time)?));
    Ok(())
}

/// Where the stream name and the event of a combined-stream wrapper lie
/// when it is written as Binance writes it, `{"stream":"<name>","data":<event>}`,
/// found without parsing the wrapper: byte ranges of `frame`, each bounded
/// by ASCII bytes. `None` for anything else (spaces, other keys, an escape
/// or a control character in the name): the full parse then decides.
fn combined_parts(frame: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    const MIDDLE: &[u8] = br#"","data":"#;
    let name = compact_name(frame)?;
    // A control character (which JSON refuses in a string) leaves it to
    // the full parse, which refuses it.
    if name.iter().any(|&byte| byte < 0x20) {
        return None;
    }
    let name = COMPACT_WRAPPER_HEAD.len()..COMPACT_WRAPPER_HEAD.len() + name.len();
    if !frame[name.end..].starts_with(MIDDLE) || !frame.ends_with(b"}") {
        return None;
    }
    let data = name.end + MIDDLE.len()..frame.len() - 1;
    (data.start <= data.end).then_some((name, data))
}

/// The stream name and event of a combined-stream wrapper written as
/// Binance writes it ([`combined_parts`]), each checked to be UTF-8 (text
/// that is not leaves it to the full parse). Checked once here: parsing a
/// `&str`, serde_json does not check each string of the event again.
fn split_combined(frame: &[u8]) -> Option<(&str, &str)> {
    let (name, data) = combined_parts(frame)?;
    Some((utf8(&frame[name])?, utf8(&frame[data])?))
}

/// [`split_combined`] of a frame already known to be UTF-8.
fn split_combined_text(frame: &str) -> Option<(&str, &str)> {
    let (name, data) = combined_parts(frame.as_bytes())?;
    Some((frame.get(name)?, frame.get(data)?))
}

/// `bytes` as text when it is UTF-8 (the answer of `std::str::from_utf8`,
/// checked with SIMD).
fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}

fn control_reply(envelope: &wire::Envelope) -> Option<ControlReply> {
    if envelope.stream.is_some() || envelope.e.is_some() {
        return None;
    }
    let id = envelope.id.as_ref().and_then(serde_json::Value::as_i64);
    if let Some(error) = &envelope.error {
        let outcome = Err(ControlError {
            code: error.code,
            message: error.msg.clone(),
        });
        return Some(ControlReply { id, outcome });
    }
    if let (Some(code), Some(message)) = (envelope.code, &envelope.msg) {
        return Some(ControlReply {
            id,
            outcome: Err(ControlError {
                code,
                message: message.clone(),
            }),
        });
    }
    if envelope.id.is_some() {
        let result = envelope.result.clone().unwrap_or(serde_json::Value::Null);
        return Some(ControlReply {
            id,
            outcome: Ok(result),
        });
    }
    None
}

fn decode_event(
    market: Market,
    stream: Option<&str>,
    data: &[u8],
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    if let Some(decoded) =
        stream.and_then(|stream| decode_as_named(market, stream, utf8(data)?, recv_time))
    {
        return decoded;
    }
    let tag: wire::EventTag = serde_json::from_slice(data).map_err(json_error)?;
    let event_type = tag.e.as_deref().unwrap_or("");
    match event_type {
        "trade" => decode_trade(
            market,
            stream,
            serde_json::from_slice(data).map_err(json_error)?,
            recv_time,
        ),
        "aggTrade" => decode_agg_trade(
            market,
            stream,
            serde_json::from_slice(data).map_err(json_error)?,
            recv_time,
        ),
        "kline" => decode_kline(
            market,
            stream,
            serde_json::from_slice(data).map_err(json_error)?,
            recv_time,
        ),
        "serverShutdown" => {
            let shutdown: wire::ServerShutdown =
                serde_json::from_slice(data).map_err(json_error)?;
            Ok(Decoded::ServerShutdown {
                event_time: checked_time("E", shutdown.E)?,
            })
        }
        _ => {
            let what = match stream {
                Some(stream) => format!("stream {stream}"),
                None => format!("event type {event_type:?}"),
            };
            Ok(Decoded::Ignored { what })
        }
    }
}

/// The hot path: a data frame decoded in one pass over its event, as the
/// kind its stream name says (`…@trade`, `…@aggTrade`, `…@kline_…`), and
/// believed only when its own `e` agrees. `None` when the name says no
/// known kind, the event does not parse as that kind, or its `e` differs:
/// the frame then goes the general way (event type first), which gives
/// the same answer or the same error as before this shortcut.
fn decode_as_named(
    market: Market,
    stream: &str,
    data: &str,
    recv_time: TimeUs,
) -> Option<Result<Decoded, DecodeError>> {
    if let Some(decoded) = usual_row(market, stream, data, recv_time) {
        return Some(Ok(decoded));
    }
    let at = stream.bytes().rposition(|byte| byte == b'@')?;
    let suffix = &stream[at + 1..];
    if suffix == "trade" {
        let trade = flat_trade(data).or_else(|| serde_json::from_str(data).ok())?;
        if trade.e.as_deref() != Some("trade") {
            return None;
        }
        Some(decode_trade(market, Some(stream), trade, recv_time))
    } else if suffix == "aggTrade" {
        let agg_trade = flat_agg_trade(data).or_else(|| serde_json::from_str(data).ok())?;
        if agg_trade.e.as_deref() != Some("aggTrade") {
            return None;
        }
        Some(decode_agg_trade(market, Some(stream), agg_trade, recv_time))
    } else if suffix.starts_with("kline_") {
        let kline: wire::KlineEvent = serde_json::from_str(data).ok()?;
        if kline.e.as_deref() != Some("kline") {
            return None;
        }
        Some(decode_kline(market, Some(stream), kline, recv_time))
    } else {
        None
    }
}

/// A trade or aggTrade event in its usual form (`usual_trade_row`,
/// `usual_agg_trade_row`), as the kind its stream name says: built in
/// place, since this runs for every frame and a `Decoded` moved through
/// `Option` and `Result` adapters is copied at each. `None` for any other
/// name or form.
fn usual_row(market: Market, stream: &str, data: &str, recv_time: TimeUs) -> Option<Decoded> {
    // A byte loop: names are short, and `rsplit_once` searches with a
    // `memrchr` call that costs more here than the search itself.
    let at = stream.bytes().rposition(|byte| byte == b'@')?;
    match &stream[at + 1..] {
        "aggTrade" => usual_agg_trade_row(market, &stream[..at], data, recv_time),
        "trade" => usual_trade_row(market, &stream[..at], data, recv_time),
        _ => None,
    }
}

/// A spot trade event in Binance's key order, straight into its row when
/// every value is one the row takes as written (times and ids in range,
/// decimals in their usual form, the symbol the stream's, `stream_symbol`
/// being the name before its `@`): what the general path answers, without
/// the wire struct or any error made. `None` for anything else, which the
/// general path then decodes or refuses with its errors.
fn usual_trade_row(
    market: Market,
    stream_symbol: &str,
    data: &str,
    recv_time: TimeUs,
) -> Option<Decoded> {
    let mut fields = Fields::new(data);
    fields.literal(br#"{"e":"trade""#)?;
    let event_time = exchange_time(fields.integer(br#","E":"#)?)?;
    let symbol = fields.symbol_named(br#","s":""#, stream_symbol)?;
    let trade_id = exchange_id(fields.integer(br#","t":"#)?)?;
    let price = fields.usual_decimal(br#","p":""#)?;
    let quantity = fields.usual_decimal(br#","q":""#)?;
    let trade_time = exchange_time(fields.integer(br#","T":"#)?)?;
    let is_buyer_maker = fields.boolean(br#","m":"#)?;
    let is_best_match = fields.optional_boolean(br#","M":"#)?;
    fields.end()?;
    Some(Decoded::Row {
        key: StreamKey {
            market,
            symbol,
            kind: StreamKind::Trade,
        },
        row: Row::Trade(TradeRow {
            trade_id,
            price,
            quantity,
            trade_time,
            is_buyer_maker,
            is_best_match,
            trade_type: None,
            event_time: Some(event_time),
            recv_time: Some(recv_time),
            source: Source::Ws,
        }),
        event_time,
    })
}

/// [`usual_trade_row`] for a spot aggregate trade event.
fn usual_agg_trade_row(
    market: Market,
    stream_symbol: &str,
    data: &str,
    recv_time: TimeUs,
) -> Option<Decoded> {
    let mut fields = Fields::new(data);
    fields.literal(br#"{"e":"aggTrade""#)?;
    let event_time = exchange_time(fields.integer(br#","E":"#)?)?;
    let symbol = fields.symbol_named(br#","s":""#, stream_symbol)?;
    let agg_trade_id = exchange_id(fields.integer(br#","a":"#)?)?;
    let price = fields.usual_decimal(br#","p":""#)?;
    let quantity = fields.usual_decimal(br#","q":""#)?;
    let first_trade_id = exchange_id(fields.integer(br#","f":"#)?)?;
    let last_trade_id = exchange_id(fields.integer(br#","l":"#)?)?;
    let trade_time = exchange_time(fields.integer(br#","T":"#)?)?;
    let is_buyer_maker = fields.boolean(br#","m":"#)?;
    let is_best_match = fields.optional_boolean(br#","M":"#)?;
    fields.end()?;
    Some(Decoded::Row {
        key: StreamKey {
            market,
            symbol,
            kind: StreamKind::AggTrade,
        },
        row: Row::AggTrade(AggTradeRow {
            agg_trade_id,
            price,
            quantity,
            first_trade_id,
            last_trade_id,
            trade_time,
            is_buyer_maker,
            is_best_match,
            event_time: Some(event_time),
            recv_time: Some(recv_time),
            source: Source::Ws,
        }),
        event_time,
    })
}

/// A trade event as serde_json reads it into [`wire::Trade`], read by
/// `flat_json` when it can be (a flat compact object, keys in any order:
/// the futures events, and spot events [`usual_trade_row`] did not take);
/// `None` leaves it to serde_json, which then also gives the errors.
fn flat_trade(data: &str) -> Option<wire::Trade<'_>> {
    let (mut e, mut big_e, mut s, mut t, mut p, mut q) = (None, None, None, None, None, None);
    let (mut big_t, mut m, mut big_m, mut x) = (None, None, None, None);
    read_flat(data, |key, value| match key.as_bytes() {
        [b'e'] => once(&mut e, optional_text(value)?),
        [b'E'] => once(&mut big_e, integer(value)?),
        [b's'] => once(&mut s, text(value)?),
        [b't'] => once(&mut t, integer(value)?),
        [b'p'] => once(&mut p, text(value)?),
        [b'q'] => once(&mut q, text(value)?),
        [b'T'] => once(&mut big_t, integer(value)?),
        [b'm'] => once(&mut m, boolean(value)?),
        [b'M'] => once(&mut big_m, optional_boolean(value)?),
        [b'X'] => once(
            &mut x,
            optional_text(value)?.map(|text| text.0.into_owned()),
        ),
        _ => Some(()),
    })?;
    Some(wire::Trade {
        e: e.flatten(),
        E: big_e?,
        s: s?,
        t: t?,
        p: p?,
        q: q?,
        T: big_t?,
        m: m?,
        M: big_m.flatten(),
        X: x.flatten(),
    })
}

/// [`flat_trade`] for an aggregate trade event ([`wire::AggTrade`]).
fn flat_agg_trade(data: &str) -> Option<wire::AggTrade<'_>> {
    let (mut e, mut big_e, mut s, mut a, mut p, mut q) = (None, None, None, None, None, None);
    let (mut f, mut l, mut big_t, mut m, mut big_m) = (None, None, None, None, None);
    read_flat(data, |key, value| match key.as_bytes() {
        [b'e'] => once(&mut e, optional_text(value)?),
        [b'E'] => once(&mut big_e, integer(value)?),
        [b's'] => once(&mut s, text(value)?),
        [b'a'] => once(&mut a, integer(value)?),
        [b'p'] => once(&mut p, text(value)?),
        [b'q'] => once(&mut q, text(value)?),
        [b'f'] => once(&mut f, integer(value)?),
        [b'l'] => once(&mut l, integer(value)?),
        [b'T'] => once(&mut big_t, integer(value)?),
        [b'm'] => once(&mut m, boolean(value)?),
        [b'M'] => once(&mut big_m, optional_boolean(value)?),
        _ => Some(()),
    })?;
    Some(wire::AggTrade {
        e: e.flatten(),
        E: big_e?,
        s: s?,
        a: a?,
        p: p?,
        q: q?,
        f: f?,
        l: l?,
        T: big_t?,
        m: m?,
        M: big_m.flatten(),
    })
}

/// Fills a field the first time its key comes; a second time is serde's
/// "duplicate field" error, so `None`.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn integer(value: Flat<'_>) -> Option<i64> {
    match value {
        Flat::Int(number) => Some(number),
        _ => None,
    }
}

fn text(value: Flat<'_>) -> Option<Cow<'_, str>> {
    match value {
        Flat::Str(text) => Some(Cow::Borrowed(text)),
        _ => None,
    }
}

fn optional_text(value: Flat<'_>) -> Option<Option<wire::Text<'_>>> {
    match value {
        Flat::Null => Some(None),
        value => text(value).map(|text| Some(wire::Text(text))),
    }
}

fn boolean(value: Flat<'_>) -> Option<bool> {
    match value {
        Flat::Bool(value) => Some(value),
        _ => None,
    }
}

fn optional_boolean(value: Flat<'_>) -> Option<Option<bool>> {
    match value {
        Flat::Null => Some(None),
        value => boolean(value).map(Some),
    }
}

/// A combined-stream frame's event must be of the stream it came on; checked
/// after the event's own values, whose errors come first.
fn check_stream_matches(stream: Option<&str>, key: &StreamKey) -> Result<(), DecodeError> {
    let Some(stream) = stream else {
        return Ok(());
    };
    if names_stream(stream, key) {
        Ok(())
    } else {
        Err(DecodeError::StreamMismatch {
            stream: stream.to_owned(),
            event_symbol: key.symbol.to_string(),
            event_kind: key.kind.to_string(),
        })
    }
}

/// Whether `stream` is the name of `key`'s stream: what
/// `parse_stream_name(stream) == Some((key.symbol, key.kind))` says, without
/// making a symbol from the name (this runs for every frame).
fn names_stream(stream: &str, key: &StreamKey) -> bool {
    // As `split_once('@')`, without its `memchr` call (see `decode_as_named`).
    let Some(at) = stream.bytes().position(|byte| byte == b'@') else {
        return false;
    };
    let (symbol, kind) = (&stream[..at], &stream[at + 1..]);
    // `Symbol::from_lowercase` upper-cases the name and accepts it when it
    // is a valid symbol: the key's symbol is, and is upper-case ASCII.
    symbol
        .as_bytes()
        .eq_ignore_ascii_case(key.symbol.as_bytes())
        && match key.kind {
            StreamKind::Trade => kind == "trade",
            StreamKind::AggTrade => kind == "aggTrade",
            StreamKind::Kline(interval) => {
                kind.strip_prefix("kline_")
                    .and_then(KlineInterval::from_binance_name)
                    == Some(interval)
            }
        }
}

fn json_error(error: serde_json::Error) -> DecodeError {
    DecodeError::Json(error.to_string())
}

fn symbol(text: &str) -> Result<Symbol, DecodeError> {
    Symbol::new(text).map_err(|_| DecodeError::Symbol(text.to_owned()))
}

fn decimal(field: &'static str, text: &str) -> Result<Decimal8, DecodeError> {
    text.parse()
        .map_err(|source| DecodeError::Value { field, source })
}

fn decode_trade(
    market: Market,
    stream: Option<&str>,
    trade: wire::Trade,
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    let key = StreamKey {
        market,
        symbol: symbol(&trade.s)?,
        kind: StreamKind::Trade,
    };
    let event_time = checked_time("E", trade.E)?;
    let row = TradeRow {
        trade_id: checked_id("t", trade.t)?,
        price: decimal("p", &trade.p)?,
        quantity: decimal("q", &trade.q)?,
        trade_time: checked_time("T", trade.T)?,
        is_buyer_maker: trade.m,
        is_best_match: trade.M,
        trade_type: trade.X,
        event_time: Some(event_time),
        recv_time: Some(recv_time),
        source: Source::Ws,
    };
    check_stream_matches(stream, &key)?;
    Ok(Decoded::Row {
        key,
        row: Row::Trade(row),
        event_time,
    })
}

fn decode_agg_trade(
    market: Market,
    stream: Option<&str>,
    agg: wire::AggTrade,
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    let key = StreamKey {
        market,
        symbol: symbol(&agg.s)?,
        kind: StreamKind::AggTrade,
    };
    let event_time = checked_time("E", agg.E)?;
    let row = AggTradeRow {
        agg_trade_id: checked_id("a", agg.a)?,
        price: decimal("p", &agg.p)?,
        quantity: decimal("q", &agg.q)?,
        first_trade_id: checked_id("f", agg.f)?,
        last_trade_id: checked_id("l", agg.l)?,
        trade_time: checked_time("T", agg.T)?,
        is_buyer_maker: agg.m,
        is_best_match: agg.M,
        event_time: Some(event_time),
        recv_time: Some(recv_time),
        source: Source::Ws,
    };
    check_stream_matches(stream, &key)?;
    Ok(Decoded::Row {
        key,
        row: Row::AggTrade(row),
        event_time,
    })
}

fn decode_kline(
    market: Market,
    stream: Option<&str>,
    event: wire::KlineEvent,
    recv_time: TimeUs,
) -> Result<Decoded, DecodeError> {
    let kline = event.k;
    let interval = KlineInterval::from_binance_name(&kline.i)
        .ok_or_else(|| DecodeError::Interval(kline.i.to_string()))?;
    let key = StreamKey {
        market,
        symbol: symbol(&event.s)?,
        kind: StreamKind::Kline(interval),
    };
    let event_time = checked_time("E", event.E)?;
    if !kline.x {
        check_stream_matches(stream, &key)?;
        return Ok(Decoded::KlineUpdate { key, event_time });
    }
    let row = KlineRow {
        open_time: checked_time("k.t", kline.t)?,
        close_time: checked_time("k.T", kline.T)?,
        open: decimal("k.o", &kline.o)?,
        high: decimal("k.h", &kline.h)?,
        low: decimal("k.l", &kline.l)?,
        close: decimal("k.c", &kline.c)?,
        volume: decimal("k.v", &kline.v)?,
        quote_volume: decimal("k.q", &kline.q)?,
        trade_count: kline.n,
        taker_buy_base_volume: decimal("k.V", &kline.V)?,
        taker_buy_quote_volume: decimal("k.Q", &kline.Q)?,
        first_trade_id: Some(checked_id("k.f", kline.f)?),
        last_trade_id: Some(checked_id("k.L", kline.L)?),
        event_time: Some(event_time),
        recv_time: Some(recv_time),
        source: Source::Ws,
    };
    check_stream_matches(stream, &key)?;
    Ok(Decoded::Row {
        key,
        row: Row::kline(row),
        event_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPOT_TRADE: &str = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1779941620961,"s":"BTCUSDT","t":6329162610,"p":"73109.38000000","q":"0.00040000","T":1779941620961,"m":false,"M":true}}"#;

    fn row_of(decoded: Decoded) -> (StreamKey, Row, TimeUs) {
        match decoded {
            Decoded::Row {
                key,
                row,
                event_time,
            } => (key, row, event_time),
            other => panic!("expected a row, got {other:?}"),
        }
    }

    #[test]
    fn combined_spot_trade_in_milliseconds() {
        let (key, row, event_time) =
            row_of(decode_frame(Market::Spot, SPOT_TRADE.as_bytes(), 7).expect("decodes"));
        assert_eq!(key.to_string(), "spot/trade/BTCUSDT");
        assert_eq!(event_time, 1_779_941_620_961_000);
        let Row::Trade(trade) = row else {
            panic!("trade expected")
        };
        assert_eq!(trade.trade_id, 6_329_162_610);
        assert_eq!(trade.price.to_string(), "73109.38000000");
        assert_eq!(trade.quantity.to_string(), "0.00040000");
        assert_eq!(trade.trade_time, 1_779_941_620_961_000);
        assert_eq!(trade.is_best_match, Some(true));
        assert_eq!(trade.trade_type, None);
        assert_eq!(trade.recv_time, Some(7));
    }

    /// The hot path's promise: a trade or aggTrade frame in the usual
    /// wrapper decodes without touching the heap (the frame's own buffer
    /// and the WAL's are the only allocations a frame costs).
    #[test]
    fn a_combined_trade_or_agg_trade_frame_decodes_without_allocating() {
        let frames = [
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1779941620961,"s":"BTCUSDT","t":6329162610,"p":"73109.38000000","q":"0.00040000","T":1779941620961,"m":false,"M":true}}"#,
            r#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#,
            r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1779941620961,"s":"BTCUSDT","a":1,"p":"73109.38","q":"0.0004","f":1,"l":2,"T":1779941620961,"m":false}}"#,
        ];
        for frame in frames {
            let mut decoded = None;
            let allocations = allocation_counter::measure(|| {
                decoded = Some(decode_frame(Market::Spot, frame.as_bytes(), 7));
            });
            assert!(matches!(decoded, Some(Ok(Decoded::Row { .. }))), "{frame}");
            assert_eq!(allocations.count_total, 0, "{frame}");
        }
    }

    #[test]
    fn microsecond_times_are_kept() {
        let frame = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1779941620961123,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1779941620961001,"m":true,"M":true}}"#;
        let (_, row, event_time) =
            row_of(decode_frame(Market::Spot, frame.as_bytes(), 0).expect("decodes"));
        assert_eq!(event_time, 1_779_941_620_961_123);
        assert_eq!(row.bucket_time(), 1_779_941_620_961_001);
    }

    #[test]
    fn old_trade_with_order_ids_and_raw_shape() {
        let frame = r#"{"e":"trade","E":1619385423298,"s":"ETHUSDT","t":376891502,"p":"2238.42000000","q":"0.00565000","b":3753381752,"a":3753381874,"T":1619385423297,"m":true,"M":true}"#;
        let (key, row, _) =
            row_of(decode_frame(Market::Spot, frame.as_bytes(), 0).expect("decodes"));
        assert_eq!(key.symbol.as_str(), "ETHUSDT");
        assert_eq!(row.key(), 376_891_502);
    }

    #[test]
    fn futures_trade_keeps_its_type_and_has_no_best_match() {
        let frame = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1676160600276,"T":1676160600269,"s":"BTCUSDT","t":3280342045,"p":"21845.10","q":"0.001","X":"MARKET","m":false}}"#;
        let (_, row, _) = row_of(decode_frame(Market::UsdM, frame.as_bytes(), 0).expect("decodes"));
        let Row::Trade(trade) = row else {
            panic!("trade expected")
        };
        assert_eq!(trade.trade_type.as_deref(), Some("MARKET"));
        assert_eq!(trade.is_best_match, None);
        assert_eq!(trade.price.to_string(), "21845.10000000");
    }

    #[test]
    fn agg_trade_combined() {
        let frame = r#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#;
        let (key, row, _) =
            row_of(decode_frame(Market::Spot, frame.as_bytes(), 0).expect("decodes"));
        assert_eq!(key.kind, StreamKind::AggTrade);
        let Row::AggTrade(agg) = row else {
            panic!("aggTrade expected")
        };
        assert_eq!(
            (agg.agg_trade_id, agg.first_trade_id, agg.last_trade_id),
            (12345, 100, 105)
        );
    }

    #[test]
    fn closed_kline_is_a_row_and_open_kline_an_update() {
        let closed = r#"{"e":"kline","E":1682244928001,"s":"ETHUSDT","k":{"t":1682244927000,"T":1682244927999,"s":"ETHUSDT","i":"1s","f":-1,"L":-1,"o":"1870.76000000","c":"1870.76000000","h":"1870.76000000","l":"1870.76000000","v":"0.00000000","n":0,"x":true,"q":"0.00000000","V":"0.00000000","Q":"0.00000000"}}"#;
        let (key, row, _) =
            row_of(decode_frame(Market::Spot, closed.as_bytes(), 0).expect("decodes"));
        assert_eq!(key.kind, StreamKind::Kline(KlineInterval::Second1));
        let Row::Kline(kline) = row else {
            panic!("kline expected")
        };
        assert_eq!(kline.open_time, 1_682_244_927_000_000);
        assert_eq!(kline.close_time, 1_682_244_927_999_000, "ms times 1000");
        assert_eq!(
            (kline.trade_count, kline.first_trade_id, kline.last_trade_id),
            (0, Some(-1), Some(-1))
        );
        let open = closed.replace("\"x\":true", "\"x\":false");
        assert!(matches!(
            decode_frame(Market::Spot, open.as_bytes(), 0),
            Ok(Decoded::KlineUpdate {
                event_time: 1_682_244_928_001_000,
                ..
            })
        ));
    }

    #[test]
    fn control_replies_in_every_shape() {
        let ok = decode_frame(Market::Spot, br#"{"result":null,"id":1}"#, 0).expect("decodes");
        assert_eq!(
            ok,
            Decoded::ControlReply(ControlReply {
                id: Some(1),
                outcome: Ok(serde_json::Value::Null)
            })
        );
        let wrapped = decode_frame(
            Market::Spot,
            br#"{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}"#,
            0,
        );
        let Ok(Decoded::ControlReply(ControlReply {
            id: Some(2),
            outcome: Err(error),
        })) = wrapped
        else {
            panic!("wrapped error expected")
        };
        assert_eq!(error.code, 2);
        let bare = decode_frame(
            Market::Spot,
            br#"{"code":0,"msg":"Unknown property","id":5}"#,
            0,
        );
        assert!(matches!(
            bare,
            Ok(Decoded::ControlReply(ControlReply {
                id: Some(5),
                outcome: Err(_)
            }))
        ));
    }

    #[test]
    fn server_shutdown_both_shapes() {
        let bare = decode_frame(
            Market::Spot,
            br#"{"e":"serverShutdown","E":1770123456789}"#,
            0,
        );
        assert_eq!(
            bare,
            Ok(Decoded::ServerShutdown {
                event_time: 1_770_123_456_789_000
            })
        );
        let combined = decode_frame(
            Market::Spot,
            br#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}"#,
            0,
        );
        assert_eq!(
            combined,
            Ok(Decoded::ServerShutdown {
                event_time: 1_770_123_456_789_000
            })
        );
    }

    #[test]
    fn unknown_events_are_ignored_not_errors() {
        let depth = br#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}"#;
        assert!(matches!(
            decode_frame(Market::Spot, depth, 0),
            Ok(Decoded::Ignored { .. })
        ));
        let book = br#"{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#;
        assert!(matches!(
            decode_frame(Market::Spot, book, 0),
            Ok(Decoded::Ignored { .. })
        ));
    }

    #[test]
    fn bad_frames_are_errors_that_say_why() {
        assert!(matches!(
            decode_frame(Market::Spot, b"garbage", 0),
            Err(DecodeError::Json(_))
        ));
        let truncated = &SPOT_TRADE.as_bytes()[..SPOT_TRADE.len() - 20];
        assert!(matches!(
            decode_frame(Market::Spot, truncated, 0),
            Err(DecodeError::Json(_))
        ));
        let too_precise = SPOT_TRADE.replace("0.00040000", "0.000400001");
        assert!(matches!(
            decode_frame(Market::Spot, too_precise.as_bytes(), 0),
            Err(DecodeError::Value { field: "q", .. })
        ));
        let mismatch = SPOT_TRADE.replace("btcusdt@trade", "ethusdt@trade");
        assert!(matches!(
            decode_frame(Market::Spot, mismatch.as_bytes(), 0),
            Err(DecodeError::StreamMismatch { .. })
        ));
        // The stream name says one kind, the event another: the one-pass
        // shortcut does not believe the name, and the event is decoded by
        // its own type, then refused for the mismatch.
        let other_kind = SPOT_TRADE.replace("btcusdt@trade", "btcusdt@aggTrade");
        assert!(matches!(
            decode_frame(Market::Spot, other_kind.as_bytes(), 0),
            Err(DecodeError::StreamMismatch { .. })
        ));
        let missing_field = SPOT_TRADE.replace("\"t\":6329162610,", "");
        assert!(matches!(
            decode_frame(Market::Spot, missing_field.as_bytes(), 0),
            Err(DecodeError::Json(_))
        ));
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::binance::streams::parse_stream_name;
    use crate::fuzz_input::{fuzz_input, lines, samples};

    fn frame_seeds() -> Vec<Vec<u8>> {
        [
            samples::SPOT_TRADE,
            samples::SPOT_AGG_TRADE,
            samples::SPOT_KLINE,
            samples::FUTURES_TRADE,
            samples::FUTURES_AGG_TRADE,
            samples::FUTURES_KLINE,
            samples::WS_CONTROL,
        ]
        .into_iter()
        .flat_map(lines)
        .collect()
    }

    /// The events inside the sample frames, and the frames.
    fn event_seeds() -> Vec<Vec<u8>> {
        let frames = frame_seeds();
        let events = frames.iter().filter_map(|frame| {
            let (_, data) = split_combined(frame)?;
            Some(data.as_bytes().to_vec())
        });
        events
            .collect::<Vec<_>>()
            .into_iter()
            .chain(frames.clone())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The SIMD check answers as std's, on any bytes and on text with
        /// every kind of character (multi-byte ones cut anywhere included).
        #[test]
        fn the_utf8_check_answers_as_std(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            text in ".{0,120}",
            cut in 0usize..480,
        ) {
            prop_assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes).ok());
            prop_assert_eq!(utf8(text.as_bytes()), Some(text.as_str()));
            let cut = cut.min(text.len());
            let head = &text.as_bytes()[..cut];
            prop_assert_eq!(utf8(head), std::str::from_utf8(head).ok());
        }

        /// Any bytes decode to a value or a typed error, never a panic; a
        /// row that decodes has its times and ids inside the accepted range.
        #[test]
        fn decode_frame_never_panics(frame in fuzz_input(frame_seeds()), recv_time in any::<i64>()) {
            for market in [Market::Spot, Market::UsdM] {
                if let Ok(Decoded::Row { row, event_time, .. }) = decode_frame(market, &frame, recv_time) {
                    prop_assert!(is_exchange_time(event_time));
                    prop_assert!(is_exchange_time(row.bucket_time()));
                    prop_assert!(exchange_id(row.key()).is_some() || matches!(row, Row::Kline(_)));
                }
            }
        }

        /// A text frame (tungstenite checked it is UTF-8) decodes as its
        /// bytes do: the same row or the same error, whatever the frame.
        #[test]
        fn a_text_frame_decodes_as_its_bytes(frame in fuzz_input(frame_seeds()), recv_time in any::<i64>()) {
            let text = String::from_utf8_lossy(&frame);
            for market in [Market::Spot, Market::UsdM] {
                prop_assert_eq!(
                    format!("{:?}", decode_text_frame(market, &text, recv_time)),
                    format!("{:?}", decode_frame(market, text.as_bytes(), recv_time))
                );
                // Pushed onto a list, wrapped: the same answer.
                let mut out = vec![None];
                let pushed = decode_text_frame_onto(market, &text, recv_time, &mut out, Some);
                let pushed = pushed.map(|()| {
                    assert_eq!(out.len(), 2, "one answer pushed");
                    out.pop().flatten().expect("pushed wrapped")
                });
                prop_assert_eq!(out.len(), 1, "nothing else pushed");
                prop_assert_eq!(
                    format!("{pushed:?}"),
                    format!("{:?}", decode_text_frame(market, &text, recv_time))
                );
            }
        }

        /// The per-frame check of a stream's name agrees with parsing the
        /// name, for any name and key.
        #[test]
        fn a_stream_name_is_checked_as_parsing_it_says(
            symbol in "[a-zA-Z0-9_\\-é]{0,34}",
            kind in prop_oneof![
                Just("trade".to_owned()), Just("aggTrade".to_owned()), Just("aggtrade".to_owned()),
                Just("kline_1m".to_owned()), Just("kline_1M".to_owned()), Just("kline_1mo".to_owned()),
                Just("kline_4h".to_owned()), "[a-zA-Z_0-9@]{0,10}",
            ],
            at in prop_oneof![Just("@"), Just(""), Just("@@")],
            key_symbol in prop_oneof![Just("BTCUSDT"), Just("BTC_USDT"), Just("ETHBTC1"), Just("A")],
            key_kind in prop_oneof![
                Just(StreamKind::Trade), Just(StreamKind::AggTrade),
                Just(StreamKind::Kline(KlineInterval::from_binance_name("1m").unwrap())),
                Just(StreamKind::Kline(KlineInterval::from_binance_name("1M").unwrap())),
            ],
            // Most names of the usual shape: the key's own symbol, any case.
            own_symbol in any::<bool>(),
        ) {
            let key = StreamKey {
                market: Market::Spot,
                symbol: Symbol::new(key_symbol).unwrap(),
                kind: key_kind,
            };
            let symbol = if own_symbol { key_symbol.to_ascii_lowercase() } else { symbol };
            let stream = format!("{symbol}{at}{kind}");
            prop_assert_eq!(
                names_stream(&stream, &key),
                parse_stream_name(&stream) == Some((key.symbol.clone(), key.kind)),
                "{}", stream
            );
        }

        /// The flat reader of trade and aggTrade events reads what serde_json
        /// reads, or leaves it to serde_json: for any bytes near real events.
        #[test]
        fn the_flat_reader_answers_as_serde_json_or_not_at_all(data in fuzz_input(event_seeds())) {
            let Ok(data) = std::str::from_utf8(&data) else { return Ok(()) };
            if let Some(trade) = flat_trade(data) {
                prop_assert_eq!(Some(trade), serde_json::from_str::<wire::Trade>(data).ok(), "{}", data);
            }
            if let Some(agg_trade) = flat_agg_trade(data) {
                prop_assert_eq!(Some(agg_trade), serde_json::from_str::<wire::AggTrade>(data).ok(), "{}", data);
            }
            // The rows of Binance's own key order, read before anything
            // else (the seeds are in that order, so their mutations probe
            // what these refuse): only what the general path decodes, for
            // the stream of the event's own symbol and for others.
            let own = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|event| Some(event.get("s")?.as_str()?.to_ascii_lowercase()));
            for name in own.iter().map(String::as_str).chain(["btcusdt", "bnbbtc"]) {
                for market in [Market::Spot, Market::Us] {
                    if let Some(decoded) = usual_trade_row(market, name, data, 7) {
                        prop_assert_eq!(Some(Ok(decoded)), general_trade(market, name, data), "{}", data);
                    }
                    if let Some(decoded) = usual_agg_trade_row(market, name, data, 7) {
                        prop_assert_eq!(Some(Ok(decoded)), general_agg_trade(market, name, data), "{}", data);
                    }
                }
            }
        }

        /// Events in Binance's spot key order with values a row takes as
        /// written, and values it does not (ids and times out of range,
        /// decimals past the usual form, symbols not the stream's or not
        /// valid, a null `m`): the row readers answer what the general path
        /// decodes, and take every event whose values are all usual.
        #[test]
        fn the_usual_rows_are_what_the_general_path_decodes(
            ids in proptest::collection::vec(prop_oneof![0i64..1_000_000_000_000, Just(-1), Just(i64::MAX)], 4),
            times in proptest::collection::vec(prop_oneof![
                1_500_000_000_000i64..2_000_000_000_000,
                1_500_000_000_000_000i64..2_000_000_000_000_000,
                Just(5i64),
            ], 2),
            decimals in proptest::collection::vec("-?[0-9]{1,11}(\\.[0-9]{0,9})?|1e5|\\+1|\\.5", 2),
            symbol in "[A-Z0-9_]{1,33}|[A-Za-z]{1,6}",
            other_name in prop_oneof![Just(None), "[a-z0-9_]{1,8}".prop_map(Some)],
            flags in proptest::collection::vec(prop_oneof![Just("true"), Just("false"), Just("null")], 2),
        ) {
            let name = other_name.clone().unwrap_or_else(|| symbol.to_ascii_lowercase());
            let agg = format!(
                r#"{{"e":"aggTrade","E":{},"s":"{symbol}","a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{},"M":{}}}"#,
                times[0], ids[0], decimals[0], decimals[1], ids[1], ids[2], times[1], flags[0], flags[1],
            );
            let trade = format!(
                r#"{{"e":"trade","E":{},"s":"{symbol}","t":{},"p":"{}","q":"{}","T":{},"m":{},"M":{}}}"#,
                times[0], ids[3], decimals[0], decimals[1], times[1], flags[0], flags[1],
            );
            let usual_decimal = |text: &str| {
                let digits = text.strip_prefix('-').unwrap_or(text);
                let (integer, fraction) = digits.split_once('.').unwrap_or((digits, "1"));
                let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
                (1..=10).contains(&integer.len()) && (1..=8).contains(&fraction.len())
                    && all_digits(integer) && all_digits(fraction)
            };
            // (An id of -1 is in range but not read by the row readers,
            // which read non-negative integers only.)
            let usual_values = decimals.iter().all(|text| usual_decimal(text))
                && flags[0] != "null"
                && ids.iter().all(|id| *id >= 0);
            for market in [Market::Spot, Market::Us] {
                let row = usual_agg_trade_row(market, &name, &agg, 7);
                let general = general_agg_trade(market, &name, &agg);
                if let Some(decoded) = row.clone() {
                    prop_assert_eq!(Some(Ok(decoded)), general.clone(), "{}", agg);
                }
                if usual_values && matches!(general, Some(Ok(_))) {
                    prop_assert!(row.is_some(), "{}", agg);
                }
                let row = usual_trade_row(market, &name, &trade, 7);
                let general = general_trade(market, &name, &trade);
                if let Some(decoded) = row.clone() {
                    prop_assert_eq!(Some(Ok(decoded)), general.clone(), "{}", trade);
                }
                if usual_values && matches!(general, Some(Ok(_))) {
                    prop_assert!(row.is_some(), "{}", trade);
                }
            }
        }

        /// Events written as Binance writes them, with any values, keys in
        /// any order and keys the recorder does not read: the flat reader
        /// reads every one, as serde_json does.
        #[test]
        fn the_flat_reader_reads_every_usual_event(
            ids in proptest::collection::vec(0i64..=i64::MAX, 6),
            texts in proptest::collection::vec("[A-Za-z0-9._é]{0,12}", 4),
            flags in proptest::collection::vec(prop_oneof![Just("true"), Just("false"), Just("null")], 2),
            order in Just((0..12).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let quoted = |text: &str| format!("\"{text}\"");
            let boolean = if flags[0] == "null" { "true" } else { flags[0] };
            let agg_fields = [
                ("e", quoted("aggTrade")), ("E", ids[0].to_string()), ("s", quoted(&texts[0])),
                ("a", ids[1].to_string()), ("p", quoted(&texts[1])), ("q", quoted(&texts[2])),
                ("f", ids[2].to_string()), ("l", ids[3].to_string()), ("T", ids[4].to_string()),
                ("m", boolean.to_owned()), ("M", flags[1].to_owned()), ("nq", quoted(&texts[3])),
            ];
            let trade_fields = [
                ("e", quoted("trade")), ("E", ids[0].to_string()), ("s", quoted(&texts[0])),
                ("t", ids[1].to_string()), ("p", quoted(&texts[1])), ("q", quoted(&texts[2])),
                ("T", ids[4].to_string()), ("m", boolean.to_owned()), ("M", flags[1].to_owned()),
                ("X", if flags[0] == "null" { "null".to_owned() } else { quoted(&texts[3]) }),
                ("b", ids[5].to_string()), ("st", "null".to_owned()),
            ];
            let object = |fields: &[(&str, String)]| {
                let body: Vec<String> = order.iter().map(|&at| format!("\"{}\":{}", fields[at].0, fields[at].1)).collect();
                format!("{{{}}}", body.join(","))
            };
            let agg = object(&agg_fields);
            let agg_trade = flat_agg_trade(&agg);
            prop_assert!(agg_trade.is_some(), "{}", agg);
            prop_assert_eq!(agg_trade, serde_json::from_str::<wire::AggTrade>(&agg).ok(), "{}", agg);
            let trade_text = object(&trade_fields);
            let trade = flat_trade(&trade_text);
            prop_assert!(trade.is_some(), "{}", trade_text);
            prop_assert_eq!(trade, serde_json::from_str::<wire::Trade>(&trade_text).ok(), "{}", trade_text);
            // The same events in Binance's spot order (without `nq`, `X`,
            // `b` and `st`): the row readers answer what the general path
            // decodes, or leave them to it.
            let in_order = |fields: &[(&str, String)]| {
                let body: Vec<String> = fields.iter().map(|(key, value)| format!("\"{key}\":{value}")).collect();
                format!("{{{}}}", body.join(","))
            };
            let name = texts[0].to_ascii_lowercase();
            let agg = in_order(&agg_fields[..11]);
            if let Some(decoded) = usual_agg_trade_row(Market::Spot, &name, &agg, 7) {
                prop_assert_eq!(Some(Ok(decoded)), general_agg_trade(Market::Spot, &name, &agg), "{}", agg);
            }
            let trade_text = in_order(&trade_fields[..9]);
            if let Some(decoded) = usual_trade_row(Market::Spot, &name, &trade_text, 7) {
                prop_assert_eq!(Some(Ok(decoded)), general_trade(Market::Spot, &name, &trade_text), "{}", trade_text);
            }
        }

        /// The shortcut for the usual wrapper answers exactly what parsing
        /// the wrapper first answers, for any bytes.
        #[test]
        fn the_wrapper_shortcut_decodes_as_the_full_parse(frame in fuzz_input(frame_seeds()), recv_time in any::<i64>()) {
            for market in [Market::Spot, Market::UsdM] {
                prop_assert_eq!(
                    format!("{:?}", decode_frame(market, &frame, recv_time)),
                    format!("{:?}", decode_parsed_wrapper(market, &frame, recv_time))
                );
            }
        }
    }

    /// What the general path (serde_json's read of the event, then its
    /// checks) decodes a trade event of the stream `<name>@trade` to;
    /// `None` when serde_json does not read it.
    fn general_trade(
        market: Market,
        name: &str,
        data: &str,
    ) -> Option<Result<Decoded, DecodeError>> {
        let trade = serde_json::from_str::<wire::Trade>(data).ok()?;
        Some(decode_trade(
            market,
            Some(&format!("{name}@trade")),
            trade,
            7,
        ))
    }

    /// [`general_trade`] for an aggTrade event.
    fn general_agg_trade(
        market: Market,
        name: &str,
        data: &str,
    ) -> Option<Result<Decoded, DecodeError>> {
        let agg_trade = serde_json::from_str::<wire::AggTrade>(data).ok()?;
        Some(decode_agg_trade(
            market,
            Some(&format!("{name}@aggTrade")),
            agg_trade,
            7,
        ))
    }

    /// The reads of Binance's key order take exactly that text: anything
    /// around it, missing, added or moved goes to the reader of any order
    /// (and from there to serde_json, which gives the answer or the error).
    #[test]
    fn the_usual_order_readers_take_only_the_usual_order() {
        const AGG: &str = r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#;
        const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
        assert!(usual_agg_trade_row(Market::Spot, "bnbbtc", AGG, 7).is_some());
        assert!(usual_trade_row(Market::Spot, "bnbbtc", TRADE, 7).is_some());
        // Another stream's event, a decimal the usual read does not take,
        // a null `e`: left to the general path too.
        assert!(usual_agg_trade_row(Market::Spot, "btcusdt", AGG, 7).is_none());
        assert!(usual_agg_trade_row(
            Market::Spot,
            "bnbbtc",
            &AGG.replacen("0.001", "0.0010000000", 1),
            7
        )
        .is_none());
        assert!(usual_trade_row(
            Market::Spot,
            "bnbbtc",
            &TRADE.replacen(r#""trade""#, "null", 1),
            7
        )
        .is_none());
        let variants = |event: &str| {
            vec![
                format!("{event}}}"),
                format!("{event} "),
                format!(" {event}"),
                event.replacen(r#","M":true"#, "", 1),
                event.replacen(r#","M":true"#, r#","M":true,"x":1"#, 1),
                event.replacen(
                    r#""E":1672515782136,"s":"BNBBTC""#,
                    r#""s":"BNBBTC","E":1672515782136"#,
                    1,
                ),
                event.replacen(r#""m":true"#, r#""m":null"#, 1),
                event.replacen(r#""e":"#, r#""e": "#, 1),
                event.replacen("12345", "012345", 1),
                event.replacen("12345", "12345.0", 1),
                event.replacen("BNBBTC", r#"BNB\u0042TC"#, 1),
            ]
        };
        for text in variants(AGG) {
            assert_eq!(
                usual_agg_trade_row(Market::Spot, "bnbbtc", &text, 7),
                None,
                "{text}"
            );
            assert_eq!(
                flat_agg_trade(&text),
                serde_json::from_str(&text)
                    .ok()
                    .filter(|_| flat_agg_trade(&text).is_some()),
                "{text}"
            );
        }
        for text in variants(TRADE) {
            assert_eq!(
                usual_trade_row(Market::Spot, "bnbbtc", &text, 7),
                None,
                "{text}"
            );
            assert_eq!(
                flat_trade(&text),
                serde_json::from_str(&text)
                    .ok()
                    .filter(|_| flat_trade(&text).is_some()),
                "{text}"
            );
        }
    }

    #[test]
    fn the_wrapper_shortcut_takes_only_the_usual_wrapper() {
        let data =
            br#"{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"2","T":1,"m":true,"M":true}"#;
        let usual = [
            br#"{"stream":"btcusdt@trade","data":"#.as_slice(),
            data,
            b"}",
        ]
        .concat();
        assert_eq!(
            split_combined(&usual).map(|(name, _)| name),
            Some("btcusdt@trade")
        );
        let spaced = [
            br#"{"stream": "btcusdt@trade", "data": "#.as_slice(),
            data,
            b"}",
        ]
        .concat();
        let escaped = [
            br#"{"stream":"btcusdt\u0040trade","data":"#.as_slice(),
            data,
            b"}",
        ]
        .concat();
        let more_keys = [
            br#"{"stream":"btcusdt@trade","data":"#.as_slice(),
            data,
            br#","x":1}"#,
        ]
        .concat();
        let control = [
            b"{\"stream\":\"btcusdt\x01@trade\",\"data\":".as_slice(),
            data,
            b"}",
        ]
        .concat();
        assert_eq!(
            split_combined(&control),
            None,
            "a control character is not JSON"
        );
        assert!(decode_frame(Market::Spot, &control, 5).is_err());
        for other in [&spaced, &escaped, &more_keys] {
            let split = split_combined(other);
            assert!(
                split.is_none_or(
                    |(_, data)| serde_json::from_str::<serde::de::IgnoredAny>(data).is_err()
                ),
                "{}",
                String::from_utf8_lossy(other)
            );
            assert_eq!(
                decode_frame(Market::Spot, other, 5),
                decode_frame(Market::Spot, &usual, 5),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn every_sample_line_decodes_without_error() {
        for line in frame_seeds() {
            let text = String::from_utf8_lossy(&line);
            // Request lines (`{"method":...}`) are not frames we receive.
            if text.contains("\"method\"") {
                continue;
            }
            assert!(
                decode_frame(Market::Spot, &line, 0).is_ok(),
                "sample decodes: {text}"
            );
        }
    }

    /// The reference's USD-M samples, as the USD-M connections see them:
    /// trades keep `X` as `trade_type` and have no best match; aggTrades
    /// (with or without `nq`, raw or wrapped) have no best match; times in
    /// ms become µs; the continuous kline is not a stream we record.
    #[test]
    fn the_futures_samples_decode_as_futures_rows() {
        for line in lines(samples::FUTURES_TRADE) {
            let Ok(Decoded::Row {
                row: Row::Trade(trade),
                key,
                ..
            }) = decode_frame(Market::UsdM, &line, 0)
            else {
                panic!("a trade: {}", String::from_utf8_lossy(&line))
            };
            assert_eq!(key.market, Market::UsdM);
            assert_eq!(trade.trade_type.as_deref(), Some("MARKET"));
            assert_eq!(trade.is_best_match, None);
            assert_eq!(trade.trade_time % 1000, 0, "ms times in µs");
        }
        let mut n_aggs = 0;
        for line in lines(samples::FUTURES_AGG_TRADE) {
            let Ok(Decoded::Row {
                row: Row::AggTrade(agg),
                ..
            }) = decode_frame(Market::UsdM, &line, 0)
            else {
                panic!("an aggTrade: {}", String::from_utf8_lossy(&line))
            };
            assert_eq!(agg.is_best_match, None);
            n_aggs += 1;
        }
        assert_eq!(
            n_aggs, 3,
            "doc example with nq, raw capture, combined capture"
        );
        let kinds: Vec<_> = lines(samples::FUTURES_KLINE)
            .iter()
            .map(|line| decode_frame(Market::UsdM, line, 0).expect("decodes"))
            .collect();
        assert!(
            matches!(kinds[0], Decoded::KlineUpdate { .. }),
            "{:?}",
            kinds[0]
        );
        assert!(
            matches!(kinds[1], Decoded::Ignored { .. }),
            "{:?}",
            kinds[1]
        );
    }

    /// Found by `decode_frame_never_panics`: `i64::MIN.abs()` overflowed in
    /// `normalise_time` and panicked the decoder on this frame.
    #[test]
    fn the_most_negative_time_is_a_typed_error() {
        let frame = br#"{"e":"trade","E":-9223372036854775808,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true,"M":true}"#;
        let error = decode_frame(Market::Spot, frame, 0).expect_err("out of range");
        assert!(
            matches!(error, DecodeError::OutOfRange { field: "E", .. }),
            "{error:?}"
        );
    }

    /// Times and ids that would overflow hour and gap arithmetic downstream
    /// are refused where they enter.
    #[test]
    fn extreme_times_and_ids_are_refused() {
        for (field, frame) in [
            (
                "T",
                r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":9223372036854775807,"m":true}"#,
            ),
            (
                "t",
                r#"{"e":"trade","E":1,"s":"BTCUSDT","t":9223372036854775807,"p":"1","q":"1","T":1,"m":true}"#,
            ),
            (
                "a",
                r#"{"e":"aggTrade","E":1,"s":"BTCUSDT","a":-9223372036854775808,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}"#,
            ),
            ("E", r#"{"e":"serverShutdown","E":-5}"#),
        ] {
            match decode_frame(Market::Spot, frame.as_bytes(), 0) {
                Err(DecodeError::OutOfRange { field: refused, .. }) => assert_eq!(refused, field),
                other => panic!("{frame}: expected {field} out of range, got {other:?}"),
            }
        }
    }
}
