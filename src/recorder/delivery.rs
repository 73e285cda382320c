//! Dated futures contracts (COIN-M `BTCUSD_260327`): when recording one
//! ends. A delivered contract stops trading and its streams go quiet for
//! good; that is not an outage. From its delivery on, the hours after the
//! delivery hour are not owed, no fill is tried for them, its streams are
//! dropped from the links and from `/health`, and the delivery hour's
//! file carries the delivery time (`delivered_at`) for `verify`.
//!
//! What the exchange says comes from `exchangeInfo` (read at start and
//! again with the weight limit): `deliveryDate` (ms) and `contractStatus`.
//! The reference does not document either; Binance's derivatives docs
//! list the statuses `PENDING_TRADING`, `TRADING`, `PRE_DELIVERING`,
//! `DELIVERING`, `DELIVERED`, `PRE_SETTLE`, `SETTLING`, `CLOSE`. So the
//! judgement is defensive: a contract is delivered once the market's
//! exchange clock passes its `deliveryDate`, or at once when its status
//! is one that only comes after trading ended (`DELIVERING`, `DELIVERED`,
//! `SETTLING`, `CLOSE`); any other or unknown status, or a missing date,
//! keeps it recording. A `deliveryDate` in 2100 or later is a perpetual's
//! placeholder, not a delivery, and beside it no status delivers (a
//! delisted perpetual gets a real date). Pure: time is passed in.

use std::collections::BTreeMap;

use crate::binance::rest::SymbolStatus;
use crate::domain::{Market, Symbol, TimeUs, MICROS_PER_DAY, MICROS_PER_HOUR};

/// 2100-01-01 00:00:00 UTC in µs: Binance gives perpetuals a
/// `deliveryDate` of 2100-12-25, so anything from here on is no delivery.
const NO_DELIVERY_FROM_US: TimeUs = 4_102_444_800_000_000;

/// Statuses that only come after a contract stopped trading.
const AFTER_TRADING: [&str; 4] = ["DELIVERING", "DELIVERED", "SETTLING", "CLOSE"];

/// What `exchangeInfo` said of one contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractFacts {
    pub symbol: Symbol,
    /// `contractStatus` (or `status`), as sent.
    pub status: Option<String>,
    /// `deliveryDate` in µs, when it names a real delivery.
    pub delivery_at: Option<TimeUs>,
}

impl ContractFacts {
    /// From an `exchangeInfo` entry; `None` for a symbol name the dataset
    /// refuses (such a symbol is in no config).
    pub fn from_status(status: &SymbolStatus) -> Option<ContractFacts> {
        let symbol = Symbol::new(&status.symbol).ok()?;
        let date_us = status.delivery_date.and_then(|ms| ms.checked_mul(1_000));
        let delivery_at = date_us.filter(|at| *at > 0 && *at < NO_DELIVERY_FROM_US);
        // A perpetual's placeholder date says no delivery is scheduled: a
        // status after trading beside it (a pause, a status Binance gives
        // some perpetuals for a while) must not end its recording for
        // good. A delisting comes with a real date.
        let scheduled_none = date_us.is_some_and(|at| at >= NO_DELIVERY_FROM_US);
        Some(ContractFacts {
            symbol,
            status: status
                .contract_status
                .clone()
                .or_else(|| status.status.clone())
                .filter(|_| !scheduled_none),
            delivery_at,
        })
    }
}

impl ContractFacts {
    /// Whether the status is one that only comes after trading ended.
    fn after_trading(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|status| AFTER_TRADING.contains(&status))
    }

    /// A dated contract `exchangeInfo` no longer lists, judged delivered
    /// when the day its name carries (`BTCUSD_251226`: 2025-12-26) ended
    /// before `exchange_now`: Binance drops delivered contracts from the
    /// list in time, and a config still naming one must not stop the
    /// daemon. Its delivery is dated at 08:00 UTC of that day, when
    /// Binance delivers its quarterly contracts. `None` for any other
    /// name, or a day not yet over: that symbol is unknown.
    pub fn delivered_and_unlisted(name: &str, exchange_now: TimeUs) -> Option<ContractFacts> {
        if !crate::config::is_dated_contract(name) {
            return None;
        }
        let (_, suffix) = name.rsplit_once('_')?;
        let day = chrono::NaiveDate::parse_from_str(&format!("20{suffix}"), "%Y%m%d").ok()?;
        let day_start = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
        if day_start + MICROS_PER_DAY > exchange_now {
            return None;
        }
        Some(ContractFacts {
            symbol: Symbol::new(name).ok()?,
            status: Some("DELIVERED".to_owned()),
            delivery_at: Some(day_start + 8 * MICROS_PER_HOUR),
        })
    }
}

/// Where a contract stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVerdict {
    /// No delivery known: recorded as any symbol.
    Recording,
    /// Recorded until this exchange time.
    DeliversAt(TimeUs),
    /// Delivered at this time: recording of it ends.
    Delivered(TimeUs),
}

/// Judges one contract at `exchange_now` (the market's exchange clock).
/// A status after trading with no delivery date dates the delivery at
/// `exchange_now` (or leaves it recording while there is no clock yet).
pub fn judge_contract(facts: &ContractFacts, exchange_now: Option<TimeUs>) -> ContractVerdict {
    match (facts.delivery_at, facts.after_trading()) {
        (Some(at), true) => ContractVerdict::Delivered(at),
        (Some(at), false) if exchange_now.is_some_and(|now| now >= at) => {
            ContractVerdict::Delivered(at)
        }
        (Some(at), false) => ContractVerdict::DeliversAt(at),
        (None, true) => exchange_now.map_or(ContractVerdict::Recording, ContractVerdict::Delivered),
        (None, false) => ContractVerdict::Recording,
    }
}

/// The contracts of the configured symbols whose delivery is known, and
/// which of them were delivered (each announced once).
#[derive(Debug, Default)]
pub struct Deliveries {
    contracts: BTreeMap<(Market, Symbol), Contract>,
}

#[derive(Debug, Clone)]
struct Contract {
    facts: ContractFacts,
    /// Set once: the delivery time the recording ended at.
    delivered: Option<TimeUs>,
}

impl Deliveries {
    /// Takes what `exchangeInfo` said of `market`'s configured symbols
    /// (newer facts replace older ones; a delivery already judged stays).
    pub fn learn(&mut self, market: Market, facts: Vec<ContractFacts>) {
        for fact in facts {
            let key = (market, fact.symbol.clone());
            match self.contracts.get_mut(&key) {
                Some(contract) => contract.facts = fact,
                None => {
                    self.contracts.insert(
                        key,
                        Contract {
                            facts: fact,
                            delivered: None,
                        },
                    );
                }
            }
        }
    }

    /// The contracts of `market` delivered by `exchange_now` and not
    /// returned before, with their delivery times: each is returned once.
    pub fn newly_delivered(
        &mut self,
        market: Market,
        exchange_now: Option<TimeUs>,
    ) -> Vec<(Symbol, TimeUs)> {
        let mut delivered = Vec::new();
        for ((contract_market, symbol), contract) in &mut self.contracts {
            if *contract_market != market || contract.delivered.is_some() {
                continue;
            }
            if let ContractVerdict::Delivered(at) = judge_contract(&contract.facts, exchange_now) {
                contract.delivered = Some(at);
                delivered.push((symbol.clone(), at));
            }
        }
        delivered
    }

    /// When `symbol` of `market` was delivered, once judged so.
    pub fn delivered_at(&self, market: Market, symbol: &Symbol) -> Option<TimeUs> {
        self.contracts
            .get(&(market, symbol.clone()))
            .and_then(|contract| contract.delivered)
    }

    /// Whether any contract is known that is not delivered yet (and so
    /// must be judged as the clock moves): one with a delivery date, or a
    /// status after trading without one (delivered once a clock is read).
    pub fn any_pending(&self) -> bool {
        self.contracts.values().any(|contract| {
            contract.delivered.is_none()
                && (contract.facts.delivery_at.is_some() || contract.facts.after_trading())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-27 08:00:00 UTC, BTCUSD_260327's delivery.
    const DELIVERY_US: TimeUs = 1_774_598_400_000_000;

    #[test]
    fn an_unlisted_contract_is_delivered_only_once_the_day_it_names_is_over() {
        let day_after = DELIVERY_US - 8 * MICROS_PER_HOUR + MICROS_PER_DAY;
        let facts = ContractFacts::delivered_and_unlisted("BTCUSD_260327", day_after)
            .expect("the day is over");
        assert_eq!(facts.delivery_at, Some(DELIVERY_US));
        assert_eq!(
            judge_contract(&facts, None),
            ContractVerdict::Delivered(DELIVERY_US)
        );
        assert_eq!(
            ContractFacts::delivered_and_unlisted("BTCUSD_260327", day_after - 1),
            None,
            "its day is not over"
        );
        for name in ["BTCUSD_PERP", "BTCUSDT", "BTCUSD_261399", "BTCUSD_2603"] {
            assert_eq!(
                ContractFacts::delivered_and_unlisted(name, day_after + 1_000 * MICROS_PER_DAY),
                None,
                "{name}"
            );
        }
    }

    fn facts(status: Option<&str>, delivery_at: Option<TimeUs>) -> ContractFacts {
        ContractFacts {
            symbol: Symbol::new("BTCUSD_260327").expect("valid"),
            status: status.map(str::to_owned),
            delivery_at,
        }
    }

    fn entry(json: &str) -> SymbolStatus {
        serde_json::from_str(json).expect("an exchangeInfo entry")
    }

    #[test]
    fn exchange_info_entries_give_the_delivery_in_micros_and_perpetuals_none() {
        let dated = ContractFacts::from_status(&entry(
            r#"{"symbol":"BTCUSD_260327","pair":"BTCUSD","contractType":"CURRENT_QUARTER","deliveryDate":1774598400000,"onboardDate":1766736000000,"contractStatus":"TRADING"}"#,
        ))
        .expect("a valid symbol");
        assert_eq!(dated, facts(Some("TRADING"), Some(DELIVERY_US)));
        let perpetual = ContractFacts::from_status(&entry(
            r#"{"symbol":"BTCUSD_PERP","deliveryDate":4133404800000,"contractStatus":"TRADING"}"#,
        ))
        .expect("a valid symbol");
        assert_eq!(perpetual.delivery_at, None);
        // A perpetual's status after trading beside its placeholder date
        // does not deliver it; with a real date (a delisting) it does.
        for status in ["SETTLING", "CLOSE"] {
            let paused = ContractFacts::from_status(&entry(&format!(
                r#"{{"symbol":"ETHUSDT","deliveryDate":4133404800000,"status":"{status}"}}"#
            )))
            .expect("a valid symbol");
            assert_eq!(
                judge_contract(&paused, Some(DELIVERY_US)),
                ContractVerdict::Recording,
                "{status}"
            );
            let delisted = ContractFacts::from_status(&entry(&format!(
                r#"{{"symbol":"ETHUSDT","deliveryDate":1774598400000,"status":"{status}"}}"#
            )))
            .expect("a valid symbol");
            assert_eq!(
                judge_contract(&delisted, Some(DELIVERY_US - 60)),
                ContractVerdict::Delivered(DELIVERY_US),
                "{status}"
            );
        }
        // Spot-shaped: no contract fields at all.
        let spot = ContractFacts::from_status(&entry(r#"{"symbol":"BTCUSDT","status":"TRADING"}"#))
            .expect("a valid symbol");
        assert_eq!(
            (spot.status.as_deref(), spot.delivery_at),
            (Some("TRADING"), None)
        );
        assert_eq!(
            judge_contract(&spot, Some(DELIVERY_US)),
            ContractVerdict::Recording
        );
        // A date that is no time at all is ignored.
        let broken =
            ContractFacts::from_status(&entry(r#"{"symbol":"BTCUSD_260327","deliveryDate":-5}"#))
                .expect("a valid symbol");
        assert_eq!(broken.delivery_at, None);
    }

    #[test]
    fn a_contract_is_delivered_when_the_clock_passes_its_date_or_its_status_says_so() {
        let trading = facts(Some("TRADING"), Some(DELIVERY_US));
        assert_eq!(
            judge_contract(&trading, None),
            ContractVerdict::DeliversAt(DELIVERY_US)
        );
        assert_eq!(
            judge_contract(&trading, Some(DELIVERY_US - 1)),
            ContractVerdict::DeliversAt(DELIVERY_US)
        );
        assert_eq!(
            judge_contract(&trading, Some(DELIVERY_US)),
            ContractVerdict::Delivered(DELIVERY_US)
        );
        // The status after trading delivers at the date even before the
        // clock gets there (a clock behind the exchange's).
        for status in ["DELIVERING", "DELIVERED", "SETTLING", "CLOSE"] {
            assert_eq!(
                judge_contract(
                    &facts(Some(status), Some(DELIVERY_US)),
                    Some(DELIVERY_US - 60)
                ),
                ContractVerdict::Delivered(DELIVERY_US),
                "{status}"
            );
        }
        // Before delivery, or a status not known: the clock decides.
        for status in [Some("PRE_DELIVERING"), Some("SOMETHING_NEW"), None] {
            assert_eq!(
                judge_contract(&facts(status, Some(DELIVERY_US)), Some(DELIVERY_US - 60)),
                ContractVerdict::DeliversAt(DELIVERY_US),
                "{status:?}"
            );
        }
        // Delivered with no date: at the clock, once there is one.
        let undated = facts(Some("DELIVERED"), None);
        assert_eq!(judge_contract(&undated, None), ContractVerdict::Recording);
        assert_eq!(
            judge_contract(&undated, Some(7)),
            ContractVerdict::Delivered(7)
        );
        assert_eq!(
            judge_contract(&facts(Some("TRADING"), None), Some(7)),
            ContractVerdict::Recording
        );
    }

    /// `symbol` is delivered at its date and, already announced, is not
    /// announced again.
    #[track_caller]
    fn assert_delivered_and_not_announced_again(deliveries: &mut Deliveries, symbol: &Symbol) {
        assert_eq!(
            deliveries.newly_delivered(Market::CoinM, Some(DELIVERY_US + 9)),
            vec![]
        );
        assert_eq!(
            deliveries.delivered_at(Market::CoinM, symbol),
            Some(DELIVERY_US)
        );
    }

    #[test]
    fn each_delivery_is_announced_once_and_only_for_its_market() {
        let mut deliveries = Deliveries::default();
        deliveries.learn(
            Market::CoinM,
            vec![facts(Some("TRADING"), Some(DELIVERY_US))],
        );
        let symbol = Symbol::new("BTCUSD_260327").expect("valid");
        assert!(deliveries.any_pending());
        assert_eq!(
            deliveries.newly_delivered(Market::CoinM, Some(DELIVERY_US - 1)),
            vec![]
        );
        assert_eq!(
            deliveries.newly_delivered(Market::UsdM, Some(DELIVERY_US)),
            vec![]
        );
        assert_eq!(
            deliveries.newly_delivered(Market::CoinM, Some(DELIVERY_US + 5)),
            vec![(symbol.clone(), DELIVERY_US)]
        );
        assert_delivered_and_not_announced_again(&mut deliveries, &symbol);
        assert!(!deliveries.any_pending());
        // A later exchangeInfo (DELIVERED) changes nothing already judged.
        deliveries.learn(
            Market::CoinM,
            vec![facts(Some("DELIVERED"), Some(DELIVERY_US))],
        );
        assert_delivered_and_not_announced_again(&mut deliveries, &symbol);
    }

    /// A status after trading without a date (a symbol delisted while the
    /// daemon was down, `startup.rs`) stays pending until a clock is read,
    /// then is delivered at it, once.
    #[test]
    fn a_dateless_status_after_trading_is_pending_until_a_clock_delivers_it() {
        let mut deliveries = Deliveries::default();
        deliveries.learn(Market::CoinM, vec![facts(Some("CLOSE"), None)]);
        let symbol = Symbol::new("BTCUSD_260327").expect("valid");
        assert!(deliveries.any_pending());
        assert_eq!(deliveries.newly_delivered(Market::CoinM, None), vec![]);
        assert_eq!(
            deliveries.newly_delivered(Market::CoinM, Some(DELIVERY_US)),
            vec![(symbol.clone(), DELIVERY_US)]
        );
        assert!(!deliveries.any_pending());
        assert_eq!(
            deliveries.newly_delivered(Market::CoinM, Some(DELIVERY_US + 1)),
            vec![]
        );
        // A trading contract without a date is not pending.
        let mut deliveries = Deliveries::default();
        deliveries.learn(Market::CoinM, vec![facts(Some("TRADING"), None)]);
        assert!(!deliveries.any_pending());
    }
}
