//! Stream names and stream URLs: the only place where strings like
//! `btcusdt@kline_1m` are built or parsed. The rest of the crate uses
//! [`StreamKey`](crate::domain::StreamKey).

use crate::binance::markets::Route;
use crate::domain::{KlineInterval, Market, StreamKind, Symbol};

/// The Binance stream name for a (symbol, kind): `btcusdt@trade`,
/// `btcusdt@aggTrade`, `btcusdt@kline_1M`. Symbols are lower-case on the wire.
pub fn stream_name(symbol: &Symbol, kind: StreamKind) -> String {
    let lower_symbol = symbol.as_str().to_ascii_lowercase();
    match kind {
        StreamKind::Trade => format!("{lower_symbol}@trade"),
        StreamKind::AggTrade => format!("{lower_symbol}@aggTrade"),
        StreamKind::Kline(interval) => format!("{lower_symbol}@kline_{}", interval.binance_name()),
    }
}

/// Parses a stream name as it arrives in the combined wrapper. `None` for
/// streams this recorder does not record (depth, bookTicker, `!serverShutdown`).
pub fn parse_stream_name(name: &str) -> Option<(Symbol, StreamKind)> {
    let (lower_symbol, stream) = name.split_once('@')?;
    let symbol = Symbol::from_lowercase(lower_symbol).ok()?;
    let kind = match stream {
        "trade" => StreamKind::Trade,
        "aggTrade" => StreamKind::AggTrade,
        _ => StreamKind::Kline(KlineInterval::from_binance_name(
            stream.strip_prefix("kline_")?,
        )?),
    };
    Some((symbol, kind))
}

/// The URL a connection opens before subscribing: the route's path (USD-M
/// `/public` or `/market`, nothing elsewhere), then `/stream` (events come
/// in the combined wrapper, which names their stream) with the link's
/// `first` stream, the documented form (`/stream?streams=<s1>/...`,
/// reference 1.1): an exchange that refuses a `/stream` naming no stream
/// still opens it. The link then subscribes to all of its streams, this
/// one again (a SUBSCRIBE of a stream the link has is acknowledged), so
/// every stream is confirmed the same way and the URL stays short
/// (Binance refuses URLs of about 8 KB). Spot is asked for microsecond
/// times (`timeUnit=MICROSECOND`), so stream and REST rows carry the same
/// exact times; the other markets only speak milliseconds.
pub fn connection_url(
    ws_base_url: &str,
    market: Market,
    route: Route,
    first: Option<&str>,
) -> String {
    let base = ws_base_url.trim_end_matches('/');
    let path = route.path();
    let mut query: Vec<String> = Vec::new();
    if let Some(first) = first {
        query.push(format!("streams={first}"));
    }
    if market_times_in_micros(market) {
        query.push("timeUnit=MICROSECOND".to_owned());
    }
    if query.is_empty() {
        format!("{base}{path}/stream")
    } else {
        format!("{base}{path}/stream?{}", query.join("&"))
    }
}

/// How a combined-stream wrapper starts when Binance writes it.
pub(super) const COMPACT_WRAPPER_HEAD: &[u8] = br#"{"stream":""#;

/// The name's bytes of a wrapper written as Binance writes it (the name
/// right after [`COMPACT_WRAPPER_HEAD`], ending at its quote, found with
/// SIMD); `None` for any other frame, an escaped name included. The one
/// reader of a wrapper's head: the link's data-or-control test and the
/// decoder's shortcut both start here.
pub(super) fn compact_name(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(COMPACT_WRAPPER_HEAD)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// The stream name of a combined-stream wrapper
/// (`{"stream":"btcusdt@trade","data":...}`); `None` for any other frame (a
/// control reply, a bare event, text that is not JSON). Read from the
/// frame's first bytes when it is written as Binance writes it; otherwise
/// (spaces, `data` first: the reference gives the shape, not the bytes)
/// by parsing the wrapper, which only such frames pay for.
pub fn combined_stream_name(frame: &[u8]) -> Option<&str> {
    if let Some(name) = compact_name(frame) {
        return std::str::from_utf8(name).ok();
    }
    #[derive(serde::Deserialize)]
    struct Wrapper<'a> {
        #[serde(borrow)]
        stream: Option<&'a str>,
    }
    serde_json::from_slice::<Wrapper<'_>>(frame).ok()?.stream
}

/// [`combined_stream_name`] of a frame known to be UTF-8 (a text message,
/// which tungstenite checked): the name is sliced out, not checked again.
pub fn combined_stream_name_in_text(frame: &str) -> Option<&str> {
    match compact_name(frame.as_bytes()) {
        // Between two ASCII bytes: character boundaries.
        Some(name) => {
            frame.get(COMPACT_WRAPPER_HEAD.len()..COMPACT_WRAPPER_HEAD.len() + name.len())
        }
        None => combined_stream_name(frame.as_bytes()),
    }
}

/// Whether a frame whose combined-stream name is `name` is a data frame:
/// a wrapper whose stream is not one of the exchange's own
/// (`!serverShutdown`). Control replies and bare events (no name) are not.
pub fn is_data_stream(name: Option<&str>) -> bool {
    name.is_some_and(|name| !name.starts_with('!'))
}

/// Whether the market's streams and REST answers are asked for µs times.
pub fn market_times_in_micros(market: Market) -> bool {
    matches!(market, Market::Spot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(text: &str) -> Symbol {
        Symbol::new(text).expect("valid test symbol")
    }

    #[test]
    fn names_round_trip_for_every_kind() {
        let mut kinds = vec![StreamKind::Trade, StreamKind::AggTrade];
        kinds.extend(KlineInterval::ALL.into_iter().map(StreamKind::Kline));
        for kind in kinds {
            let name = stream_name(&symbol("BTCUSDT"), kind);
            assert_eq!(
                parse_stream_name(&name),
                Some((symbol("BTCUSDT"), kind)),
                "{name}"
            );
        }
        assert_eq!(
            stream_name(&symbol("ETHBTC"), StreamKind::Kline(KlineInterval::Month1)),
            "ethbtc@kline_1M"
        );
    }

    #[test]
    fn streams_we_do_not_record_are_not_parsed() {
        assert_eq!(parse_stream_name("btcusdt@depth@100ms"), None);
        assert_eq!(parse_stream_name("btcusdt@bookTicker"), None);
        assert_eq!(parse_stream_name("!serverShutdown"), None);
        assert_eq!(parse_stream_name("btcusdt@kline_2m"), None);
    }

    #[test]
    fn urls_name_the_first_stream_and_spot_asks_for_microseconds() {
        assert_eq!(
            connection_url(
                "ws://127.0.0.1:9/",
                Market::Spot,
                Route::Unrouted,
                Some("btcusdt@trade")
            ),
            "ws://127.0.0.1:9/stream?streams=btcusdt@trade&timeUnit=MICROSECOND"
        );
        assert_eq!(
            connection_url("ws://127.0.0.1:9", Market::Spot, Route::Unrouted, None),
            "ws://127.0.0.1:9/stream?timeUnit=MICROSECOND"
        );
        assert_eq!(
            connection_url(
                "wss://fstream.binance.com",
                Market::UsdM,
                Route::Market,
                Some("btcusdt@aggTrade")
            ),
            "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade"
        );
        assert_eq!(
            connection_url(
                "wss://fstream.binance.com/",
                Market::UsdM,
                Route::Public,
                None
            ),
            "wss://fstream.binance.com/public/stream"
        );
    }

    #[test]
    fn the_stream_name_is_read_from_the_wrapper_alone() {
        assert_eq!(
            combined_stream_name(br#"{"stream":"btcusdt@trade","data":{"e":"trade"}}"#),
            Some("btcusdt@trade")
        );
        assert_eq!(combined_stream_name(br#"{"result":null,"id":1}"#), None);
        assert_eq!(combined_stream_name(br#"{"stream":"unterminated"#), None);
        assert_eq!(combined_stream_name(br#"{"e":"trade","E":1}"#), None);
        assert_eq!(combined_stream_name(b"garbage"), None);
    }

    /// A text frame's name is the one read from its bytes, whatever the
    /// frame (the wrapper as Binance writes it, with an escape, spaces,
    /// `data` first, non-ASCII text, no wrapper).
    #[test]
    fn a_text_frame_gives_the_name_its_bytes_give() {
        for frame in [
            r#"{"stream":"btcusdt@trade","data":{"e":"trade"}}"#,
            r#"{"stream":"btc\u0075sdt@trade","data":{}}"#,
            r#"{ "stream": "ethusdt@aggTrade", "data": {} }"#,
            r#"{"data":{},"stream":"solusdt@kline_1m"}"#,
            r#"{"stream":"!serverShutdown","data":{}}"#,
            r#"{"stream":"é@trade","data":{}}"#,
            r#"{"result":null,"id":1}"#,
            r#"{"stream":"unterminated"#,
            "garbage",
        ] {
            assert_eq!(
                combined_stream_name_in_text(frame),
                combined_stream_name(frame.as_bytes()),
                "{frame}"
            );
        }
        assert!(is_data_stream(Some("btcusdt@trade")));
        assert!(!is_data_stream(Some("!serverShutdown")));
        assert!(!is_data_stream(None));
    }

    /// The reference gives the wrapper's shape, not its bytes: spaces
    /// (Python's `json.dumps`) and sorted keys (`data` first) are the same
    /// wrapper, and frames that are not one stay so.
    #[test]
    fn a_wrapper_with_spaces_or_data_first_is_read_too() {
        let is_data_frame = |frame: &[u8]| is_data_stream(combined_stream_name(frame));
        let spaced = br#"{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade"}}"#;
        let data_first = br#"{"data": {"e": "trade", "stream": "x"}, "stream": "ethusdt@trade"}"#;
        let pretty = b"{\n  \"stream\" : \"btcusdt@kline_1m\",\n  \"data\": {}\n}";
        assert_eq!(combined_stream_name(spaced), Some("btcusdt@aggTrade"));
        assert_eq!(combined_stream_name(data_first), Some("ethusdt@trade"));
        assert_eq!(combined_stream_name(pretty), Some("btcusdt@kline_1m"));
        for frame in [&spaced[..], &data_first[..], &pretty[..]] {
            assert!(is_data_frame(frame));
        }
        let shutdown = br#"{"data": {"e": "serverShutdown", "E": 1}, "stream": "!serverShutdown"}"#;
        assert!(!is_data_frame(shutdown));
        assert!(!is_data_frame(br#"{"stream":"!serverShutdown","data":{}}"#));
        assert!(!is_data_frame(br#"{"result": null, "id": 1}"#));
        assert!(!is_data_frame(
            br#"{"error": {"code": 2, "msg": "x"}, "id": 2}"#
        ));
        assert!(is_data_frame(br#"{"stream":"btcusdt@trade","data":{}}"#));
    }
}
