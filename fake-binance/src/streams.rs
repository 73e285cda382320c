//! Stream names (`btcusdt@trade`, `btcusdt@kline_1m`) are built and parsed here only.

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
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
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
