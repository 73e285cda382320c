//! The exchange's market state: per-symbol trades and aggregate trades (generated
//! by the model or loaded from a replay), and klines computed from them.
//!
//! Nothing here does I/O or reads a clock: every query takes the simulated
//! "now" as an argument and only answers with data published by then (event
//! time `E <= now`), so the same state can serve the driver, REST and the
//! ground truth consistently.

use crate::decimal::{base_product_wide, quote_product_wide, wide_to_atoms};
use crate::interval::KlineInterval;
use crate::model::{AggTrade, OrderGenerator, SymbolSpec, Trade};
use crate::rng::stable_hash;

/// Lower and upper bound of the delay between a kline's end and its closing (`x: true`) event.
pub const MIN_KLINE_CLOSE_LATENCY_US: i64 = 2_000;
pub const MAX_KLINE_CLOSE_LATENCY_US: i64 = 9_000;

/// What a kline aggregates: one trade, or one aggregate trade when a replay has no trades.
#[derive(Debug, Clone, Copy)]
pub struct Fill {
    pub time_us: i64,
    pub price: i64,
    pub quantity: i64,
    pub is_buyer_maker: bool,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
}

/// A kline in progress or closed. Amounts in atoms; quote sums kept exact at 1e-16.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlineState {
    pub open_us: i64,
    pub next_open_us: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i64,
    pub quote_volume_wide: i128,
    pub trade_count: i64,
    pub taker_buy_volume: i64,
    pub taker_buy_quote_volume_wide: i128,
    /// -1 when the kline has no trade, as Binance sends.
    pub first_trade_id: i64,
    pub last_trade_id: i64,
}

impl KlineState {
    /// A kline without trades: OHLC at the previous close, volumes zero, ids -1.
    pub fn empty(open_us: i64, next_open_us: i64, previous_close: i64) -> KlineState {
        KlineState {
            open_us,
            next_open_us,
            open: previous_close,
            high: previous_close,
            low: previous_close,
            close: previous_close,
            volume: 0,
            quote_volume_wide: 0,
            trade_count: 0,
            taker_buy_volume: 0,
            taker_buy_quote_volume_wide: 0,
            first_trade_id: -1,
            last_trade_id: -1,
        }
    }

    /// Adds a fill. The quote columns sum price x quantity, or on a
    /// coin-margined contract (`contract_size`) the base asset's amount,
    /// contracts x size / price: dstream's kline `q` and `Q` are
    /// base-asset volumes (`"9.49653573"` BTC in the real capture).
    pub fn add(&mut self, fill: &Fill, contract_size: Option<i64>) {
        if self.trade_count == 0 {
            self.open = fill.price;
            self.high = fill.price;
            self.low = fill.price;
            self.first_trade_id = fill.first_trade_id;
        }
        self.high = self.high.max(fill.price);
        self.low = self.low.min(fill.price);
        self.close = fill.price;
        self.volume += fill.quantity;
        let quote = match contract_size {
            Some(size) => base_product_wide(fill.price, fill.quantity, size),
            None => quote_product_wide(fill.price, fill.quantity),
        };
        self.quote_volume_wide += quote;
        // Voided replayed aggregates carry f = l = -1; they add no trade.
        self.trade_count += (fill.last_trade_id - fill.first_trade_id + 1).max(1);
        self.last_trade_id = fill.last_trade_id;
        if !fill.is_buyer_maker {
            self.taker_buy_volume += fill.quantity;
            self.taker_buy_quote_volume_wide += quote;
        }
    }

    pub fn quote_volume(&self) -> i64 {
        wide_to_atoms(self.quote_volume_wide)
    }

    pub fn taker_buy_quote_volume(&self) -> i64 {
        wide_to_atoms(self.taker_buy_quote_volume_wide)
    }
}

/// Deterministic delay of a kline's closing event after its end.
pub fn kline_close_latency_us(
    seed: u64,
    symbol_index: usize,
    interval: KlineInterval,
    open_us: i64,
) -> i64 {
    let spread = (MAX_KLINE_CLOSE_LATENCY_US - MIN_KLINE_CLOSE_LATENCY_US + 1) as u64;
    MIN_KLINE_CLOSE_LATENCY_US
        + (stable_hash(&[
            seed,
            symbol_index as u64,
            interval.index() as u64,
            open_us as u64,
        ]) % spread) as i64
}

/// One symbol's data.
#[derive(Debug)]
pub struct SymbolBook {
    pub index: usize,
    pub spec: SymbolSpec,
    /// Lower-case symbol as used in stream names.
    pub stream_symbol: String,
    pub trades: Vec<Trade>,
    pub agg_trades: Vec<AggTrade>,
    generator: Option<OrderGenerator>,
    /// Earliest time of the data (start of history, or the first replayed event).
    pub data_start_us: i64,
    /// Klines are computed from aggregate trades when a replay has none of the trades.
    klines_from_agg_trades: bool,
    /// Price before the first fill (previous close of the first klines).
    initial_price: i64,
    /// A dated contract's delivery (epoch µs): nothing trades at or after
    /// it, and no kline opens at or after it.
    pub delivery_us: Option<i64>,
    /// From when `exchangeInfo` names the delivery (epoch µs).
    pub delivery_announced_us: i64,
    /// Trading halts `[from, until)`: no order, and no kline opens, inside.
    pub halts: Vec<(i64, i64)>,
}

impl SymbolBook {
    pub fn generated(
        index: usize,
        symbol: &str,
        seed: u64,
        data_start_us: i64,
        mean_orders_per_sec: f64,
        special_prints: bool,
    ) -> SymbolBook {
        let spec = SymbolSpec::for_symbol(symbol);
        let mut generator = OrderGenerator::new(
            seed,
            index,
            spec.clone(),
            data_start_us,
            mean_orders_per_sec,
        );
        if special_prints {
            generator = generator.with_special_prints();
        }
        SymbolBook {
            index,
            initial_price: spec.initial_price_atoms,
            stream_symbol: symbol.to_ascii_lowercase(),
            spec,
            trades: Vec::new(),
            agg_trades: Vec::new(),
            generator: Some(generator),
            data_start_us,
            klines_from_agg_trades: false,
            delivery_us: None,
            delivery_announced_us: i64::MIN,
            halts: Vec::new(),
        }
    }

    pub fn replayed(
        index: usize,
        symbol: &str,
        trades: Vec<Trade>,
        agg_trades: Vec<AggTrade>,
    ) -> SymbolBook {
        let spec = SymbolSpec::for_symbol(symbol);
        let klines_from_agg_trades = trades.is_empty();
        let first_price = if klines_from_agg_trades {
            agg_trades.first().map(|agg| agg.price)
        } else {
            trades.first().map(|trade| trade.price)
        };
        let data_start_us = trades
            .iter()
            .map(|trade| trade.time_us)
            .chain(agg_trades.iter().map(|agg| agg.time_us))
            .min()
            .unwrap_or(0);
        SymbolBook {
            index,
            initial_price: first_price.unwrap_or(spec.initial_price_atoms),
            stream_symbol: symbol.to_ascii_lowercase(),
            spec,
            trades,
            agg_trades,
            generator: None,
            data_start_us,
            klines_from_agg_trades,
            delivery_us: None,
            delivery_announced_us: i64::MIN,
            halts: Vec::new(),
        }
    }

    /// Generates the model's orders up to `until_us` (no-op for replayed data).
    pub fn generate_until(&mut self, until_us: i64) {
        // A delivered contract trades no more: orders stop just before it.
        let until_us = match self.delivery_us {
            Some(delivery_us) => until_us.min(delivery_us - 1),
            None => until_us,
        };
        let Some(generator) = self.generator.as_mut() else {
            return;
        };
        // Orders up to each halt, none inside it.
        for (from, until) in &self.halts {
            if generator.next_order_time_us() >= *until {
                continue;
            }
            generator.generate_until(
                until_us.min(from - 1),
                &mut self.trades,
                &mut self.agg_trades,
            );
            if until_us < *from {
                return;
            }
            generator.skip_to(*until);
        }
        generator.generate_until(until_us, &mut self.trades, &mut self.agg_trades);
    }

    /// Whether the symbol is halted at `time_us`.
    pub fn halted_at(&self, time_us: i64) -> bool {
        self.halts
            .iter()
            .any(|(from, until)| (*from..*until).contains(&time_us))
    }

    /// Whether no kline opens at `open_us` or later: the contract was delivered.
    pub fn delivered_by(&self, open_us: i64) -> bool {
        self.delivery_us
            .is_some_and(|delivery_us| open_us >= delivery_us)
    }

    /// Time of the model's next order; `None` for replayed data and after
    /// a delivery.
    pub fn next_order_time_us(&self) -> Option<i64> {
        self.generator
            .as_ref()
            .map(OrderGenerator::next_order_time_us)
            .filter(|at| self.delivery_us.is_none_or(|delivery_us| *at < delivery_us))
    }

    /// Whether a kline opening at `open_us` exists: none opens at or after
    /// the delivery of a dated contract, nor inside a halt.
    pub fn has_kline_at(&self, open_us: i64) -> bool {
        !self.delivered_by(open_us) && !self.halted_at(open_us)
    }

    pub fn fill_count(&self) -> usize {
        if self.klines_from_agg_trades {
            self.agg_trades.len()
        } else {
            self.trades.len()
        }
    }

    pub fn fill(&self, index: usize) -> Fill {
        if self.klines_from_agg_trades {
            let agg = &self.agg_trades[index];
            Fill {
                time_us: agg.time_us,
                price: agg.price,
                quantity: agg.quantity,
                is_buyer_maker: agg.is_buyer_maker,
                first_trade_id: agg.first_trade_id,
                last_trade_id: agg.last_trade_id,
            }
        } else {
            let trade = &self.trades[index];
            Fill {
                time_us: trade.time_us,
                price: trade.price,
                quantity: trade.quantity,
                is_buyer_maker: trade.is_buyer_maker,
                first_trade_id: trade.id,
                last_trade_id: trade.id,
            }
        }
    }

    fn fill_time(&self, index: usize) -> i64 {
        if self.klines_from_agg_trades {
            self.agg_trades[index].time_us
        } else {
            self.trades[index].time_us
        }
    }

    /// Index of the first fill with time >= `time_us` (fills are in time order).
    pub fn first_fill_at_or_after(&self, time_us: i64) -> usize {
        let (mut low, mut high) = (0, self.fill_count());
        while low < high {
            let middle = (low + high) / 2;
            if self.fill_time(middle) < time_us {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Last price strictly before `time_us`, or the price the market started at.
    pub fn price_before(&self, time_us: i64) -> i64 {
        match self.first_fill_at_or_after(time_us) {
            0 => self.initial_price,
            index => self.fill(index - 1).price,
        }
    }

    /// Number of trades published (E <= now); event times never decrease, so this is a prefix.
    pub fn published_trade_count(&self, now_us: i64) -> usize {
        self.trades
            .partition_point(|trade| trade.event_time_us <= now_us)
    }

    pub fn published_agg_trade_count(&self, now_us: i64) -> usize {
        self.agg_trades
            .partition_point(|agg| agg.event_time_us <= now_us)
    }

    fn published_fill_count(&self, now_us: i64) -> usize {
        if self.klines_from_agg_trades {
            self.published_agg_trade_count(now_us)
        } else {
            self.published_trade_count(now_us)
        }
    }

    /// Open time of the first kline of `interval` that has data.
    pub fn first_kline_open(&self, interval: KlineInterval) -> i64 {
        interval.open_time_containing(self.data_start_us)
    }

    /// Klines with open times from `first_open` to `last_open` inclusive (both on the grid),
    /// built from fills published by `now_us` and with time < `fills_before_us`.
    pub fn klines_between(
        &self,
        interval: KlineInterval,
        first_open: i64,
        last_open: i64,
        now_us: i64,
        fills_before_us: i64,
    ) -> Vec<KlineState> {
        let fill_limit = self.published_fill_count(now_us);
        let mut klines = Vec::new();
        let mut previous_close = self.price_before(first_open);
        let mut fill_index = self.first_fill_at_or_after(first_open);
        let mut open = first_open;
        while open <= last_open && !self.delivered_by(open) {
            let next_open = interval.next_open(open);
            if self.halted_at(open) {
                // Nothing traded: the next kline opens at the last close.
                open = next_open;
                continue;
            }
            let mut kline = KlineState::empty(open, next_open, previous_close);
            let end = next_open.min(fills_before_us);
            while fill_index < fill_limit {
                let fill = self.fill(fill_index);
                if fill.time_us >= end {
                    break;
                }
                kline.add(&fill, self.spec.contract_size);
                fill_index += 1;
            }
            // Skip fills of this kline that are not visible yet (time >= fills_before_us).
            while fill_index < self.fill_count() && self.fill_time(fill_index) < next_open {
                fill_index += 1;
            }
            previous_close = kline.close;
            klines.push(kline);
            open = next_open;
        }
        klines
    }
}

/// All symbols, in config order.
#[derive(Debug)]
pub struct MarketState {
    pub seed: u64,
    pub books: Vec<SymbolBook>,
}

impl MarketState {
    pub fn generate_until(&mut self, until_us: i64) {
        for book in &mut self.books {
            book.generate_until(until_us);
        }
    }

    pub fn book(&self, symbol: &str) -> Option<&SymbolBook> {
        self.books.iter().find(|book| book.spec.symbol == symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interval::MICROS_PER_MINUTE;

    fn book_with_trades(times_and_prices: &[(i64, i64)]) -> SymbolBook {
        let trades = times_and_prices
            .iter()
            .enumerate()
            .map(|(index, (time_us, price))| Trade {
                print: crate::model::PrintType::Market,
                id: 100 + index as i64,
                price: *price,
                quantity: 100_000_000,
                time_us: *time_us,
                event_time_us: *time_us,
                is_buyer_maker: index % 2 == 0,
                is_best_match: true,
                dispatch_seq: index as u64,
                raw_payload: None,
            })
            .collect();
        SymbolBook::replayed(0, "BTCUSDT", trades, Vec::new())
    }

    #[test]
    fn empty_minutes_get_a_kline_at_the_previous_close() {
        let minute = MICROS_PER_MINUTE;
        let book = book_with_trades(&[(10, 500), (20, 700), (3 * minute + 5, 900)]);
        let klines =
            book.klines_between(KlineInterval::OneMinute, 0, 3 * minute, i64::MAX, i64::MAX);
        assert_eq!(klines.len(), 4);
        assert_eq!(
            (
                klines[0].open,
                klines[0].high,
                klines[0].low,
                klines[0].close
            ),
            (500, 700, 500, 700)
        );
        assert_eq!(
            (
                klines[0].first_trade_id,
                klines[0].last_trade_id,
                klines[0].trade_count
            ),
            (100, 101, 2)
        );
        for empty in &klines[1..3] {
            assert_eq!(
                (empty.open, empty.high, empty.low, empty.close),
                (700, 700, 700, 700)
            );
            assert_eq!(
                (
                    empty.first_trade_id,
                    empty.last_trade_id,
                    empty.trade_count,
                    empty.volume
                ),
                (-1, -1, 0, 0)
            );
        }
        assert_eq!(klines[3].open, 900);
        // Taker-buy volume counts trades where the buyer is not the maker (the second one).
        assert_eq!(klines[0].taker_buy_volume, 100_000_000);
    }

    #[test]
    fn unpublished_trades_are_left_out() {
        let book = book_with_trades(&[(10, 500), (20, 700)]);
        let klines = book.klines_between(KlineInterval::OneMinute, 0, 0, 15, i64::MAX);
        assert_eq!(klines[0].trade_count, 1);
        assert_eq!(klines[0].close, 500);
    }
}
