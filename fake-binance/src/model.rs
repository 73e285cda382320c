//! The seeded market model: taker orders sweeping price levels, turned into
//! trades and aggregate trades.
//!
//! Invariants the tests rely on:
//! * trade ids are consecutive per symbol, aggregate trade ids too;
//! * each aggregate trade is one (taker order, price level) and its `f..l`
//!   covers exactly the fills at that level, so the aggregates tile the trades;
//! * all fills of one order share one trade time;
//! * event time `E = max(previous E, T + latency)`, so it never decreases and is
//!   at most [`MAX_TRADE_LATENCY_US`] after `T`;
//! * the sequence depends only on the seed and the symbol, never on when or how
//!   often generation is called.

use std::sync::Arc;

use crate::rng::{stable_hash, stable_hash_str, SplitMix64};

/// Upper bound of the simulated matching-engine-to-stream latency of trades.
pub const MAX_TRADE_LATENCY_US: i64 = 1_500;
const MIN_TRADE_LATENCY_US: i64 = 100;

/// One fill. Amounts are atoms (1e-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    pub id: i64,
    /// What kind of print: futures trade streams carry it as `X`; only
    /// `Market` prints are aggregated and served by REST.
    pub print: PrintType,
    pub price: i64,
    pub quantity: i64,
    pub time_us: i64,
    pub event_time_us: i64,
    pub is_buyer_maker: bool,
    pub is_best_match: bool,
    /// Position in the symbol's stream order (trades and aggregates share one sequence).
    pub dispatch_seq: u64,
    /// Replay only: the exact bytes of the captured `data` object, sent as-is in millisecond mode.
    pub raw_payload: Option<Arc<str>>,
}

/// A futures trade's `X`: market fills, and the prints that are not (an
/// insurance-fund liquidation, an auto-deleverage, `NA` with zero
/// quantity). Non-market prints are in the trade id sequence but in no
/// aggregate and in no REST answer (reference 4.4 and 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrintType {
    Market,
    InsuranceFund,
    Adl,
    Na,
}

impl PrintType {
    pub fn as_str(self) -> &'static str {
        match self {
            PrintType::Market => "MARKET",
            PrintType::InsuranceFund => "INSURANCE_FUND",
            PrintType::Adl => "ADL",
            PrintType::Na => "NA",
        }
    }
}

/// One aggregate trade (one taker order at one price).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggTrade {
    pub id: i64,
    pub price: i64,
    pub quantity: i64,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub time_us: i64,
    pub event_time_us: i64,
    pub is_buyer_maker: bool,
    pub is_best_match: bool,
    pub dispatch_seq: u64,
    pub raw_payload: Option<Arc<str>>,
}

/// Static facts about a symbol: assets and filters.
#[derive(Debug, Clone)]
pub struct SymbolSpec {
    pub symbol: String,
    pub base_asset: String,
    pub quote_asset: String,
    pub tick_atoms: i64,
    pub step_atoms: i64,
    pub initial_price_atoms: i64,
    /// A coin-margined contract's size in USD (`contractSize` of COIN-M
    /// `exchangeInfo`: 100 for the BTC contracts, 10 for the others, as
    /// every symbol of the real `BINANCE_DELIVERY.0` answer); `None` for
    /// everything else.
    pub contract_size: Option<i64>,
}

impl SymbolSpec {
    /// Plausible filters for well-known symbols; anything else gets generic
    /// ones. A coin-margined contract (`BTCUSD_PERP`, `ETHUSD_260327`: a
    /// pair ending in `USD`) trades whole contracts (reference 4.4:
    /// "quantities are contracts"; `quantityPrecision` 0 in the real
    /// `exchangeInfo`).
    pub fn for_symbol(symbol: &str) -> SymbolSpec {
        let (base_asset, quote_asset) = split_symbol(symbol);
        const UNIT: i64 = crate::decimal::ATOMS_PER_UNIT;
        if let Some(pair) = coin_margined_pair(symbol) {
            // (price, tick) as the real BTCUSD_PERP (tick 0.1) and
            // ETHUSD_PERP (0.01); others a price between 1 and 100 on a
            // 0.001 tick, derived from the name so it is stable.
            let (initial_price_atoms, tick_atoms, contract_size) = match pair {
                "BTCUSD" => (60_000 * UNIT, 10_000_000, 100),
                "ETHUSD" => (3_000 * UNIT, 1_000_000, 10),
                _ => (
                    (1 + (stable_hash_str(symbol) % 100) as i64) * UNIT,
                    100_000,
                    10,
                ),
            };
            return SymbolSpec {
                symbol: symbol.to_owned(),
                base_asset: pair.trim_end_matches("USD").to_owned(),
                quote_asset: "USD".to_owned(),
                tick_atoms,
                step_atoms: UNIT,
                initial_price_atoms,
                contract_size: Some(contract_size),
            };
        }
        // (price, tick 0.01, lot step) in atoms.
        let (initial_price_atoms, tick_atoms, step_atoms) = match symbol {
            "BTCUSDT" | "BTCFDUSD" | "BTCUSDC" => (60_000 * UNIT, 1_000_000, 1_000),
            "ETHUSDT" | "ETHUSDC" => (3_000 * UNIT, 1_000_000, 10_000),
            "BNBUSDT" => (600 * UNIT, 1_000_000, 100_000),
            "SOLUSDT" => (150 * UNIT, 1_000_000, 100_000),
            _ => {
                // Something between 1 and 100 with a 0.0001 tick, derived from the name so it is stable.
                let price_units = 1 + (stable_hash_str(symbol) % 100) as i64;
                (price_units * 100_000_000, 10_000, 10_000_000)
            }
        };
        SymbolSpec {
            symbol: symbol.to_owned(),
            base_asset,
            quote_asset,
            tick_atoms,
            step_atoms,
            initial_price_atoms,
            contract_size: None,
        }
    }
}

/// The pair of a coin-margined contract's name (`BTCUSD` of `BTCUSD_PERP`),
/// `None` for any other name (a USD-M dated contract is `BTCUSDT_260327`).
pub fn coin_margined_pair(symbol: &str) -> Option<&str> {
    let (pair, _) = symbol.split_once('_')?;
    pair.ends_with("USD").then_some(pair)
}

/// Splits `BTCUSDT` into (`BTC`, `USDT`) using the common quote assets.
pub fn split_symbol(symbol: &str) -> (String, String) {
    const QUOTES: [&str; 10] = [
        "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY",
    ];
    for quote in QUOTES {
        if let Some(base) = symbol.strip_suffix(quote) {
            if !base.is_empty() {
                return (base.to_owned(), quote.to_owned());
            }
        }
    }
    let middle = symbol.len() / 2;
    (symbol[..middle].to_owned(), symbol[middle..].to_owned())
}

/// First trade id of the symbol at position `symbol_index` in the config:
/// above 2^31 so that 32-bit id bugs show, and far apart per symbol.
pub fn first_trade_id(symbol_index: usize) -> i64 {
    3_000_000_000 + 100_000_000 * symbol_index as i64
}

/// First aggregate trade id; also above 2^31.
pub fn first_agg_trade_id(symbol_index: usize) -> i64 {
    2_200_000_000 + 100_000_000 * symbol_index as i64
}

/// Generates the order flow of one symbol, incrementally.
#[derive(Debug, Clone)]
pub struct OrderGenerator {
    random: SplitMix64,
    spec: SymbolSpec,
    mean_gap_us: f64,
    mid_price_atoms: i64,
    next_order_time_us: i64,
    next_trade_id: i64,
    next_agg_trade_id: i64,
    last_event_time_us: i64,
    next_dispatch_seq: u64,
    /// Futures: now and then a non-market print follows an order.
    special_prints: bool,
}

impl OrderGenerator {
    pub fn new(
        seed: u64,
        symbol_index: usize,
        spec: SymbolSpec,
        start_us: i64,
        mean_orders_per_sec: f64,
    ) -> OrderGenerator {
        let random = SplitMix64::new(stable_hash(&[seed, stable_hash_str(&spec.symbol)]));
        let mid_price_atoms = spec.initial_price_atoms;
        let mut generator = OrderGenerator {
            random,
            spec,
            mean_gap_us: 1_000_000.0 / mean_orders_per_sec,
            mid_price_atoms,
            next_order_time_us: start_us,
            next_trade_id: first_trade_id(symbol_index),
            next_agg_trade_id: first_agg_trade_id(symbol_index),
            last_event_time_us: i64::MIN,
            next_dispatch_seq: 0,
            special_prints: false,
        };
        generator.next_order_time_us = start_us + generator.draw_gap_us();
        generator
    }

    /// Futures: about one order in eight is followed by a non-market print
    /// (insurance fund, ADL, or a zero-quantity `NA`), in the trade id
    /// sequence and in no aggregate. Spot's flow is unchanged (no draw).
    pub fn with_special_prints(mut self) -> OrderGenerator {
        self.special_prints = true;
        self
    }

    /// Time of the next order not generated yet.
    pub fn next_order_time_us(&self) -> i64 {
        self.next_order_time_us
    }

    fn draw_gap_us(&mut self) -> i64 {
        // Exponential gaps (a Poisson process); at least 1 µs so times strictly increase.
        let gap = -self.random.unit_open().ln() * self.mean_gap_us;
        (gap as i64).max(1)
    }

    /// Moves the next order to `time_us` at the earliest (a halt ends).
    pub fn skip_to(&mut self, time_us: i64) {
        self.next_order_time_us = self.next_order_time_us.max(time_us);
    }

    /// Appends every order with time <= `until_us`.
    pub fn generate_until(
        &mut self,
        until_us: i64,
        trades: &mut Vec<Trade>,
        agg_trades: &mut Vec<AggTrade>,
    ) {
        while self.next_order_time_us <= until_us {
            let order_time_us = self.next_order_time_us;
            self.generate_order(order_time_us, trades, agg_trades);
            self.next_order_time_us = order_time_us + self.draw_gap_us();
        }
    }

    /// A generated trade with the next trade id and dispatch sequence, both
    /// taken by this call.
    fn next_trade(
        &mut self,
        print: PrintType,
        price: i64,
        quantity: i64,
        time_us: i64,
        event_time_us: i64,
        is_buyer_maker: bool,
    ) -> Trade {
        let trade = Trade {
            id: self.next_trade_id,
            print,
            price,
            quantity,
            time_us,
            event_time_us,
            is_buyer_maker,
            is_best_match: true,
            dispatch_seq: self.next_dispatch_seq,
            raw_payload: None,
        };
        self.next_trade_id += 1;
        self.next_dispatch_seq += 1;
        trade
    }

    fn generate_order(
        &mut self,
        time_us: i64,
        trades: &mut Vec<Trade>,
        agg_trades: &mut Vec<AggTrade>,
    ) {
        let tick = self.spec.tick_atoms;
        // The mid price drifts between orders (up to 25 ticks either way: a BTCUSDT hour moves
        // some tens of dollars, enough for klines with distinct open, high, low and close).
        let drift_ticks = self.random.below(51) as i64 - 25;
        self.mid_price_atoms = (self.mid_price_atoms + drift_ticks * tick).max(100 * tick);

        let taker_is_buyer = self.random.below(2) == 0;
        let levels = match self.random.below(10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let latency_us = MIN_TRADE_LATENCY_US
            + self
                .random
                .below((MAX_TRADE_LATENCY_US - MIN_TRADE_LATENCY_US + 1) as u64)
                as i64;
        let event_time_us = self.last_event_time_us.max(time_us + latency_us);
        self.last_event_time_us = event_time_us;

        let mut pending_aggs = Vec::with_capacity(levels);
        let mut last_price = self.mid_price_atoms;
        for level in 0..levels as i64 {
            // A buyer lifts asks above the mid, a seller hits bids below it.
            let offset = (level + 1) * tick;
            let price = if taker_is_buyer {
                self.mid_price_atoms + offset
            } else {
                self.mid_price_atoms - offset
            };
            let fills = 1 + self.random.below(4) as usize;
            let first_trade_id = self.next_trade_id;
            let mut level_quantity = 0;
            for _ in 0..fills {
                // Mostly small fills with an occasional large one, in whole lot steps.
                let lots = if self.random.below(8) == 0 {
                    1 + self.random.below(20_000)
                } else {
                    1 + self.random.below(500)
                };
                let quantity = lots as i64 * self.spec.step_atoms;
                level_quantity += quantity;
                trades.push(self.next_trade(
                    PrintType::Market,
                    price,
                    quantity,
                    time_us,
                    event_time_us,
                    !taker_is_buyer,
                ));
            }
            pending_aggs.push((
                price,
                level_quantity,
                first_trade_id,
                self.next_trade_id - 1,
            ));
            last_price = price;
        }
        if self.special_prints && self.random.below(8) == 0 {
            let print = match self.random.below(3) {
                0 => PrintType::InsuranceFund,
                1 => PrintType::Adl,
                _ => PrintType::Na,
            };
            let quantity = match print {
                PrintType::Na => 0,
                _ => (1 + self.random.below(50) as i64) * self.spec.step_atoms,
            };
            trades.push(self.next_trade(
                print,
                last_price,
                quantity,
                time_us,
                event_time_us,
                !taker_is_buyer,
            ));
        }
        // Aggregates follow the order's trades in stream order, as the two streams
        // of one order are both published once the order finished matching.
        for (price, quantity, first_trade_id, last_trade_id) in pending_aggs {
            agg_trades.push(AggTrade {
                id: self.next_agg_trade_id,
                price,
                quantity,
                first_trade_id,
                last_trade_id,
                time_us,
                event_time_us,
                is_buyer_maker: !taker_is_buyer,
                is_best_match: true,
                dispatch_seq: self.next_dispatch_seq,
                raw_payload: None,
            });
            self.next_agg_trade_id += 1;
            self.next_dispatch_seq += 1;
        }
        // The book moves towards where the sweep ended.
        self.mid_price_atoms = (self.mid_price_atoms + last_price) / 2 / tick * tick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(seed: u64, until_us: i64, steps: i64) -> (Vec<Trade>, Vec<AggTrade>) {
        let mut generator = OrderGenerator::new(seed, 0, SymbolSpec::for_symbol("BTCUSDT"), 0, 5.0);
        let mut trades = Vec::new();
        let mut aggs = Vec::new();
        for step in 1..=steps {
            generator.generate_until(until_us * step / steps, &mut trades, &mut aggs);
        }
        (trades, aggs)
    }

    #[test]
    fn deterministic_and_independent_of_step_size() {
        let (trades_one, aggs_one) = generate(7, 600_000_000, 1);
        let (trades_many, aggs_many) = generate(7, 600_000_000, 977);
        assert_eq!(trades_one, trades_many);
        assert_eq!(aggs_one, aggs_many);
        let (trades_other, _) = generate(8, 600_000_000, 1);
        assert_ne!(trades_one, trades_other);
        // 10 minutes at 5 orders/s: about 3000 orders.
        assert!(aggs_one.len() > 2500, "{}", aggs_one.len());
    }

    #[test]
    fn aggregates_tile_trades_and_ids_are_consecutive() {
        let (trades, aggs) = generate(3, 300_000_000, 3);
        assert_eq!(trades[0].id, 3_000_000_000);
        assert_eq!(aggs[0].id, 2_200_000_000);
        for pair in trades.windows(2) {
            assert_eq!(pair[1].id, pair[0].id + 1);
            assert!(pair[1].time_us >= pair[0].time_us);
            assert!(pair[1].event_time_us >= pair[0].event_time_us);
        }
        let mut expected_first = trades[0].id;
        for (index, agg) in aggs.iter().enumerate() {
            if index > 0 {
                assert_eq!(agg.id, aggs[index - 1].id + 1);
            }
            assert_eq!(agg.first_trade_id, expected_first);
            assert!(agg.last_trade_id >= agg.first_trade_id);
            let covered: Vec<&Trade> = trades
                .iter()
                .filter(|trade| trade.id >= agg.first_trade_id && trade.id <= agg.last_trade_id)
                .collect();
            assert_eq!(
                covered.iter().map(|trade| trade.quantity).sum::<i64>(),
                agg.quantity
            );
            assert!(covered
                .iter()
                .all(|trade| trade.price == agg.price && trade.time_us == agg.time_us));
            assert!(covered
                .iter()
                .all(|trade| trade.is_buyer_maker == agg.is_buyer_maker));
            expected_first = agg.last_trade_id + 1;
        }
        assert_eq!(expected_first, trades.last().unwrap().id + 1);
    }

    #[test]
    fn event_time_is_shortly_after_trade_time() {
        let (trades, _) = generate(5, 60_000_000, 1);
        for trade in &trades {
            assert!(trade.event_time_us >= trade.time_us);
            assert!(trade.event_time_us <= trade.time_us + MAX_TRADE_LATENCY_US);
        }
    }

    #[test]
    fn splits_symbols() {
        assert_eq!(
            split_symbol("BTCUSDT"),
            ("BTC".to_owned(), "USDT".to_owned())
        );
        assert_eq!(split_symbol("ETHBTC"), ("ETH".to_owned(), "BTC".to_owned()));
        assert_eq!(
            split_symbol("BTCFDUSD"),
            ("BTC".to_owned(), "FDUSD".to_owned())
        );
    }
}
