//! Stream names (`btcusdt@trade`, `btcusdt@kline_1m`) are built and parsed here only.

use crate::config::Market;
use crate::interval::KlineInterval;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Trade,
    AggTrade,
    Kline(KlineInterval),
    /// A real spot stream the fake accepts but never feeds (depth, bookTicker, tickers).
    Unfed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamName {
    /// Lower-case symbol.
    pub symbol: String,
    pub kind: StreamKind,
}

impl StreamName {
    /// Parses a stream name as Binance accepts it: lower-case symbol, case-sensitive kind.
    pub fn parse(name: &str) -> Option<StreamName> {
        let (symbol, kind_text) = name.split_once('@')?;
        if symbol.is_empty()
            || !symbol
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        {
            return None;
        }
        let kind = match kind_text {
            "trade" => StreamKind::Trade,
            "aggTrade" => StreamKind::AggTrade,
            other => {
                if let Some(interval_text) = other.strip_prefix("kline_") {
                    StreamKind::Kline(KlineInterval::parse(interval_text)?)
                } else if is_unfed_kind(other) {
                    StreamKind::Unfed
                } else {
                    return None;
                }
            }
        };
        Some(StreamName {
            symbol: symbol.to_owned(),
            kind,
        })
    }

    /// Parses a stream name `market` has: as [`StreamName::parse`], but
    /// `<s>@kline_1s` is no stream on futures ("intervals as spot without
    /// `1s`", reference 4.4). So it is refused as a bad stream name is:
    /// SUBSCRIBE answers code 2 `Invalid request: invalid stream` (reference
    /// 2, observed), a URL naming it gets the fake's HTTP 400. Not the
    /// wrong-route behaviour (acknowledged, never fed, reference 1.3): that
    /// is for streams that exist on another path.
    pub fn parse_on(name: &str, market: Market) -> Option<StreamName> {
        StreamName::parse(name).filter(|stream| match stream.kind {
            StreamKind::Kline(interval) => interval.exists_on(market),
            _ => true,
        })
    }

    pub fn trade(symbol_lower: &str) -> String {
        format!("{symbol_lower}@trade")
    }

    pub fn agg_trade(symbol_lower: &str) -> String {
        format!("{symbol_lower}@aggTrade")
    }

    pub fn kline(symbol_lower: &str, interval: KlineInterval) -> String {
        format!("{symbol_lower}@kline_{}", interval.as_str())
    }
}

/// The path a USD-M connection was opened on (reference 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No route in the path: spot, or a legacy USD-M URL (public data only).
    Unrouted,
    Public,
    Market,
    Private,
}

impl Route {
    /// Splits a route prefix off a path: `/market/stream` is
    /// (`Market`, `/stream`).
    pub fn split(path: &str) -> (Route, &str) {
        for (prefix, route) in [
            ("/public", Route::Public),
            ("/market", Route::Market),
            ("/private", Route::Private),
        ] {
            if let Some(rest) = path.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    return (route, rest);
                }
            }
        }
        (Route::Unrouted, path)
    }
}

/// Whether a stream subscribed on `route` delivers. On a market without
/// routes, always. On USD-M: `@trade` (undocumented, observed there),
/// depth and bookTicker on `/public` (and on an unrouted legacy URL,
/// which gets public-class data only); aggTrade, klines and tickers on
/// `/market`; nothing market-data on `/private`. A stream on the wrong
/// route is acknowledged and then silent, as Binance does.
/// `trade_on_market` moves `@trade` to `/market` (see
/// `FakeConfig::usdm_trade_on_market`).
pub fn served_on(routed: bool, trade_on_market: bool, route: Route, name: &str) -> bool {
    if !routed {
        return true;
    }
    let Some(stream) = StreamName::parse(name) else {
        return false;
    };
    let (_, kind_text) = name.split_once('@').unwrap_or((name, ""));
    let public_class = match stream.kind {
        StreamKind::Trade => !trade_on_market,
        StreamKind::AggTrade | StreamKind::Kline(_) => false,
        StreamKind::Unfed => kind_text.starts_with("depth") || kind_text == "bookTicker",
    };
    match route {
        Route::Public | Route::Unrouted => public_class,
        Route::Market => !public_class,
        Route::Private => false,
    }
}

fn is_unfed_kind(kind: &str) -> bool {
    const UNFED: [&str; 17] = [
        "depth",
        "depth@100ms",
        "depth@1000ms",
        "depth5",
        "depth10",
        "depth20",
        "depth5@100ms",
        "depth10@100ms",
        "depth20@100ms",
        "bookTicker",
        "miniTicker",
        "ticker",
        "avgPrice",
        "ticker_1h",
        "ticker_4h",
        "ticker_1d",
        "referencePrice",
    ];
    UNFED.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_streams() {
        assert_eq!(
            StreamName::parse("btcusdt@trade").unwrap().kind,
            StreamKind::Trade
        );
        assert_eq!(
            StreamName::parse("btcusdt@aggTrade").unwrap().kind,
            StreamKind::AggTrade
        );
        assert_eq!(
            StreamName::parse("ethusdt@kline_1M").unwrap().kind,
            StreamKind::Kline(KlineInterval::OneMonth)
        );
        assert_eq!(
            StreamName::parse("btcusdt@depth@100ms").unwrap().kind,
            StreamKind::Unfed
        );
    }

    #[test]
    fn usdm_routes_serve_their_streams_only() {
        assert_eq!(Route::split("/market/stream"), (Route::Market, "/stream"));
        assert_eq!(
            Route::split("/public/ws/btcusdt@trade"),
            (Route::Public, "/ws/btcusdt@trade")
        );
        assert_eq!(Route::split("/stream"), (Route::Unrouted, "/stream"));
        assert_eq!(
            Route::split("/marketplace"),
            (Route::Unrouted, "/marketplace")
        );
        assert!(served_on(true, false, Route::Public, "btcusdt@trade"));
        assert!(!served_on(true, false, Route::Market, "btcusdt@trade"));
        assert!(served_on(true, false, Route::Market, "btcusdt@aggTrade"));
        assert!(served_on(true, false, Route::Market, "btcusdt@kline_1m"));
        assert!(!served_on(true, false, Route::Public, "btcusdt@kline_1m"));
        assert!(!served_on(true, false, Route::Unrouted, "btcusdt@aggTrade"));
        assert!(served_on(true, false, Route::Public, "btcusdt@bookTicker"));
        assert!(served_on(false, false, Route::Unrouted, "btcusdt@aggTrade"));
        assert!(served_on(true, true, Route::Market, "btcusdt@trade"));
        assert!(!served_on(true, true, Route::Public, "btcusdt@trade"));
    }

    #[test]
    fn one_second_klines_are_no_stream_on_futures() {
        for market in [Market::Spot, Market::Us] {
            assert_eq!(
                StreamName::parse_on("btcusdt@kline_1s", market)
                    .unwrap()
                    .kind,
                StreamKind::Kline(KlineInterval::OneSecond)
            );
        }
        for market in [Market::UsdM, Market::CoinM] {
            assert!(StreamName::parse_on("btcusdt@kline_1s", market).is_none());
            assert!(StreamName::parse_on("btcusdt@kline_1m", market).is_some());
            assert!(StreamName::parse_on("btcusdt@aggTrade", market).is_some());
        }
    }

    #[test]
    fn rejects_malformed_streams() {
        for bad in [
            "BTCUSDT@trade",
            "btcusdt@trades",
            "btcusdt",
            "@trade",
            "btcusdt@kline_2m",
            "btcusdt@aggtrade",
            "",
        ] {
            assert!(StreamName::parse(bad).is_none(), "{bad}");
        }
    }
}
