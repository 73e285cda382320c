//! The trading status `exchangeInfo` gives each configured symbol, read
//! again every `exchange_info_interval_secs` (`tasks.rs`): a change is
//! what an operator needs to hear of, since a symbol that stops trading
//! (`HALT`, `BREAK`, `CANCEL_ONLY`: reference 5.4) only shows as silence
//! on its streams and, for klines, declared holes. Spot has no delivery
//! date, so nothing ends its recording (`BREAK` also marks a pause); the
//! status is logged, not acted on. Pure: the runtime logs the changes.

use std::collections::BTreeMap;

use crate::binance::rest::SymbolStatus;
use crate::domain::Market;

/// The status a symbol trades in.
pub const TRADING: &str = "TRADING";

/// A symbol's status as last read, per market; holds only the symbols
/// `exchangeInfo` was asked for (the configured ones).
#[derive(Debug, Default)]
pub struct StatusWatch {
    known: BTreeMap<(Market, String), String>,
}

/// A status that differs from the one read before (`before` is `None` at
/// the first reading, which is reported only when it is not `TRADING`:
/// the start already warned of those, but a status that changed since is
/// news).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub symbol: String,
    pub before: Option<String>,
    pub now: String,
}

impl StatusWatch {
    /// Notes `statuses` of `market` and returns what changed.
    pub fn note(&mut self, market: Market, statuses: &[SymbolStatus]) -> Vec<StatusChange> {
        let mut changes = Vec::new();
        for status in statuses {
            let Some(now) = status.trading_status() else {
                continue;
            };
            let key = (market, status.symbol.clone());
            let before = self.known.get(&key);
            if before.map(String::as_str) == Some(now) {
                continue;
            }
            if before.is_some() || now != TRADING {
                changes.push(StatusChange {
                    symbol: status.symbol.clone(),
                    before: before.cloned(),
                    now: now.to_owned(),
                });
            }
            self.known.insert(key, now.to_owned());
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(symbol: &str, status: &str) -> SymbolStatus {
        serde_json::from_str(&format!(r#"{{"symbol":"{symbol}","status":"{status}"}}"#))
            .expect("an exchangeInfo entry")
    }

    #[test]
    fn changes_are_reported_once_and_a_first_trading_reading_is_quiet() {
        let mut watch = StatusWatch::default();
        assert_eq!(
            watch.note(
                Market::Spot,
                &[status("BTCUSDT", "TRADING"), status("ETHUSDT", "BREAK")]
            ),
            vec![StatusChange {
                symbol: "ETHUSDT".to_owned(),
                before: None,
                now: "BREAK".to_owned(),
            }]
        );
        assert_eq!(
            watch.note(
                Market::Spot,
                &[status("BTCUSDT", "HALT"), status("ETHUSDT", "BREAK")]
            ),
            vec![StatusChange {
                symbol: "BTCUSDT".to_owned(),
                before: Some("TRADING".to_owned()),
                now: "HALT".to_owned(),
            }]
        );
        // The same name on another market is another symbol.
        assert!(watch
            .note(Market::UsdM, &[status("BTCUSDT", "TRADING")])
            .is_empty());
        assert_eq!(
            watch.note(Market::Spot, &[status("BTCUSDT", "TRADING")]),
            vec![StatusChange {
                symbol: "BTCUSDT".to_owned(),
                before: Some("HALT".to_owned()),
                now: "TRADING".to_owned(),
            }]
        );
        assert!(watch
            .note(Market::Spot, &[status("BTCUSDT", "TRADING")])
            .is_empty());
    }
}
