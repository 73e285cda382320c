//! The runtime's side of dated contracts' delivery (the judgement is the
//! pure `delivery.rs`): at every planning pass, each contract whose
//! delivery the exchange clock passed (or that `exchangeInfo` says is
//! delivered) ends its recording once: the state owes no hour after the
//! delivery hour, the connection tasks drop its streams, `/health` stops
//! expecting them, and the delivery hour's files carry `delivered_at`.

use tracing::info;

use crate::domain::{Hour, StreamKey, TimeUs};
use crate::metrics::Counters;
use crate::recorder::Runtime;

impl Runtime {
    /// Ends the recording of every contract delivered by now, once each.
    pub(super) fn end_delivered_contracts(&mut self) {
        if !self.deliveries.any_pending() {
            return;
        }
        let markets: Vec<_> = self.retired.keys().copied().collect();
        for market in markets {
            let exchange_now = self.state.exchange_time(market);
            for (symbol, at) in self.deliveries.newly_delivered(market, exchange_now) {
                info!(
                    %market,
                    %symbol,
                    delivered_at = %crate::verify::report::utc_time(at),
                    "contract delivered: its streams are quiet for good; recording of it ends with the hour of its delivery"
                );
                Counters::add(&self.counters.contracts_delivered, 1);
                self.state.end_recording(market, &symbol, at);
                if let Some(retire) = self.retired.get(&market) {
                    retire.send_modify(|retired| {
                        let mut symbols = (**retired).clone();
                        symbols.insert(symbol.clone());
                        *retired = std::sync::Arc::new(symbols);
                    });
                }
                self.health.update(|inputs| {
                    let delivered = |key: &StreamKey| key.market == market && key.symbol == symbol;
                    let keys: Vec<StreamKey> = inputs
                        .streams
                        .keys()
                        .filter(|key| delivered(key))
                        .cloned()
                        .collect();
                    inputs.streams.retain(|key, _| !delivered(key));
                    inputs.newest_event.retain(|key, _| !delivered(key));
                    inputs.rows_held.retain(|key, _| !delivered(key));
                    // `/status` shows them as delivered, not as unknown.
                    inputs
                        .delivered
                        .extend(keys.into_iter().map(|key| (key, at)));
                });
            }
        }
    }

    /// The delivery time of `key`'s symbol when it falls in `hour` (the
    /// last hour recorded): the file says so for `verify`.
    pub(super) fn delivery_in_hour(&self, key: &StreamKey, hour: Hour) -> Option<TimeUs> {
        self.deliveries
            .delivered_at(key.market, &key.symbol)
            .filter(|at| Hour::containing(at.saturating_sub(1)) == hour)
    }
}
