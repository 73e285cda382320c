//! The driver: the one task that turns simulated time into stream events.
//!
//! Each step it generates the market up to the simulated now, collects every
//! event whose event time has come (trades and aggregate trades in their stream
//! order, kline updates on the grid of their update period when a trade changed
//! the kline (or at every tick, [`KlineUpdates`]) and closing events shortly
//! after each kline's end), merges them by event time, and hands them to the
//! subscribed connections through their queues, applying pending stream faults
//! (skip, duplicate, swap, truncate) on the way. Because one task does all of
//! this under the registry lock, every connection receives the events of a
//! stream in the order they were produced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::time::{sleep_until, Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{FakeConfig, KlineUpdates, Market};
use crate::events::{Outgoing, StreamEvent};
use crate::interval::KlineInterval;
use crate::market::{kline_close_latency_us, KlineState, MarketState, SymbolBook};
use crate::shared::{lock, Registry, Shared};
use crate::streams::StreamName;
use crate::wire::Precision;

/// Longest real pause between two steps. Subscription changes wake the driver at once
/// (`Shared::driver_wakeup`); this is only a safety net, kept long so that tests with
/// tokio's paused time do not spin through millions of idle steps.
const MAX_IDLE: Duration = Duration::from_secs(10);

/// A swapped event held back longer than this (sim) is sent anyway.
const MAX_SWAP_HOLD_US: i64 = 2_000_000;

/// Kline events with their merge key (event time, symbol index, interval index).
type KeyedKlineEvents = Vec<((i64, usize, usize), Arc<StreamEvent>)>;

struct KlineStream {
    stream_name: Arc<str>,
    next_tick_us: i64,
    kline: KlineState,
    next_fill_index: usize,
    /// A trade changed the kline since its last update was sent.
    changed: bool,
}

struct SymbolCursor {
    next_trade_index: usize,
    next_agg_trade_index: usize,
    symbol: Arc<str>,
    /// The decimals of the symbol's amounts on this market.
    precision: Precision,
    trade_stream: Arc<str>,
    agg_trade_stream: Arc<str>,
}

pub(crate) struct Driver {
    /// The update period of kline streams depends on it.
    market: Market,
    kline_updates: KlineUpdates,
    cursors: Vec<SymbolCursor>,
    kline_streams: HashMap<(usize, KlineInterval), KlineStream>,
    held_for_swap: Option<Arc<StreamEvent>>,
}

impl Driver {
    pub fn new(
        market: &MarketState,
        config: &FakeConfig,
        start_us: i64,
        stream_from_first_event: bool,
    ) -> Driver {
        let cursors = market
            .books
            .iter()
            .map(|book| SymbolCursor {
                // History before the start is served by REST only, never streamed.
                next_trade_index: if stream_from_first_event {
                    0
                } else {
                    book.published_trade_count(start_us)
                },
                next_agg_trade_index: if stream_from_first_event {
                    0
                } else {
                    book.published_agg_trade_count(start_us)
                },
                symbol: Arc::from(book.spec.symbol.as_str()),
                precision: Precision::of(config.market, &book.spec),
                trade_stream: Arc::from(StreamName::trade(&book.stream_symbol)),
                agg_trade_stream: Arc::from(StreamName::agg_trade(&book.stream_symbol)),
            })
            .collect();
        Driver {
            market: config.market,
            kline_updates: config.kline_updates,
            cursors,
            kline_streams: HashMap::new(),
            held_for_swap: None,
        }
    }

    /// One step at simulated `now_us`; returns the simulated time of the next due event.
    pub fn step(&mut self, shared: &Shared, now_us: i64) -> i64 {
        let active_streams = lock(&shared.registry).active_streams();
        let (events, next_due_us) = {
            let mut market = lock(&shared.market);
            market.generate_until(now_us);
            self.collect_due_events(&market, &active_streams, now_us, shared.config.seed)
        };
        let mut registry = lock(&shared.registry);
        self.dispatch(shared, &mut registry, events, now_us);
        next_due_us
    }

    fn collect_due_events(
        &mut self,
        market: &MarketState,
        active_streams: &HashSet<String>,
        now_us: i64,
        seed: u64,
    ) -> (Vec<Arc<StreamEvent>>, i64) {
        let mut next_due_us = i64::MAX;
        let mut lists: Vec<Vec<Arc<StreamEvent>>> = Vec::with_capacity(market.books.len() + 1);
        for (book, cursor) in market.books.iter().zip(self.cursors.iter_mut()) {
            let (list, next_us) = collect_symbol_events(book, cursor, active_streams, now_us);
            next_due_us = next_due_us.min(next_us);
            lists.push(list);
        }
        // Kline streams: start the ones newly subscribed, forget the abandoned ones.
        self.kline_streams
            .retain(|_, stream| active_streams.contains(&*stream.stream_name));
        for book in &market.books {
            for interval in KlineInterval::ALL {
                let name = StreamName::kline(&book.stream_symbol, interval);
                if active_streams.contains(&name)
                    && !self.kline_streams.contains_key(&(book.index, interval))
                {
                    self.kline_streams.insert(
                        (book.index, interval),
                        start_kline_stream(book, interval, self.market, name, now_us),
                    );
                }
            }
        }
        let mut kline_events = Vec::new();
        for ((symbol_index, interval), stream) in self.kline_streams.iter_mut() {
            let book = &market.books[*symbol_index];
            let cursor = &self.cursors[*symbol_index];
            let next_us = advance_kline_stream(
                book,
                cursor,
                (*interval, self.market, self.kline_updates),
                stream,
                now_us,
                seed,
                &mut kline_events,
            );
            next_due_us = next_due_us.min(next_us);
        }
        kline_events.sort_by_key(|(sort_key, _)| *sort_key);
        lists.push(kline_events.into_iter().map(|(_, event)| event).collect());
        (merge_by_event_time(lists), next_due_us)
    }

    fn dispatch(
        &mut self,
        shared: &Shared,
        registry: &mut Registry,
        events: Vec<Arc<StreamEvent>>,
        now_us: i64,
    ) {
        let mut faults = lock(&shared.pending_faults);
        for event in events {
            if !has_subscriber(registry, &event) {
                continue;
            }
            // The lie goes ahead of the real event, which then goes on as
            // usual (other faults included): the truth is unchanged.
            if let Some(lie) = faults.take_poison(&event.stream_name) {
                shared
                    .counters
                    .update(|counters| counters.events_poisoned += 1);
                lock(&shared.poisoned_events).push(event.poisoned(lie));
                debug!(stream = %event.stream_name, ?lie, "lying copy sent ahead of the event");
                send_to_subscribers(registry, &Arc::new(event.lying_copy(lie)), false);
            }
            if faults.skip > 0 {
                faults.skip -= 1;
                shared
                    .counters
                    .update(|counters| counters.events_skipped += 1);
                lock(&shared.skipped_events).push(event.skipped());
                debug!(stream = %event.stream_name, "event skipped by fault");
                continue;
            }
            if faults.swap > 0 {
                match self.held_for_swap.take() {
                    None => {
                        self.held_for_swap = Some(event);
                        continue;
                    }
                    Some(held) => {
                        faults.swap -= 1;
                        shared
                            .counters
                            .update(|counters| counters.events_swapped += 1);
                        send_to_subscribers(registry, &event, false);
                        send_to_subscribers(registry, &held, false);
                        continue;
                    }
                }
            }
            let truncate = faults.truncate > 0;
            if truncate {
                faults.truncate -= 1;
                shared
                    .counters
                    .update(|counters| counters.frames_truncated += 1);
            }
            send_to_subscribers(registry, &event, truncate);
            if faults.duplicate > 0 {
                faults.duplicate -= 1;
                shared
                    .counters
                    .update(|counters| counters.events_duplicated += 1);
                send_to_subscribers(registry, &event, false);
            }
        }
        // A swap needs a second event; if none comes soon, let the first one go.
        if let Some(held) = &self.held_for_swap {
            if held.event_time_us < now_us - MAX_SWAP_HOLD_US {
                let held = self.held_for_swap.take().expect("checked just above");
                send_to_subscribers(registry, &held, false);
            }
        }
    }
}

fn has_subscriber(registry: &Registry, event: &StreamEvent) -> bool {
    registry
        .connections
        .values()
        .any(|entry| entry.streams.contains(&*event.stream_name))
}

fn send_to_subscribers(registry: &Registry, event: &Arc<StreamEvent>, truncate: bool) {
    for entry in registry.connections.values() {
        if entry.streams.contains(&*event.stream_name) {
            // A closed queue means the connection is ending; it unregisters itself.
            let _ = entry.sender.send(Outgoing::Event {
                event: Arc::clone(event),
                truncate,
            });
        }
    }
}

/// Due trade and aggregate trade events of one symbol in stream order, and the time
/// of the next one not due yet.
fn collect_symbol_events(
    book: &SymbolBook,
    cursor: &mut SymbolCursor,
    active_streams: &HashSet<String>,
    now_us: i64,
) -> (Vec<Arc<StreamEvent>>, i64) {
    let want_trades = active_streams.contains(&*cursor.trade_stream);
    let want_agg_trades = active_streams.contains(&*cursor.agg_trade_stream);
    let mut events = Vec::new();
    loop {
        let trade = book.trades.get(cursor.next_trade_index);
        let agg = book.agg_trades.get(cursor.next_agg_trade_index);
        let take_trade = match (trade, agg) {
            (None, None) => return (events, next_generated_time(book)),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(trade), Some(agg)) => trade.dispatch_seq < agg.dispatch_seq,
        };
        if take_trade {
            let trade = trade.expect("chosen because present");
            if trade.event_time_us > now_us {
                return (events, trade.event_time_us);
            }
            if want_trades {
                events.push(Arc::new(StreamEvent::trade(
                    Arc::clone(&cursor.trade_stream),
                    Arc::clone(&cursor.symbol),
                    trade.clone(),
                    cursor.precision,
                )));
            }
            cursor.next_trade_index += 1;
        } else {
            let agg = agg.expect("chosen because present");
            if agg.event_time_us > now_us {
                return (events, agg.event_time_us);
            }
            if want_agg_trades {
                events.push(Arc::new(StreamEvent::agg_trade(
                    Arc::clone(&cursor.agg_trade_stream),
                    Arc::clone(&cursor.symbol),
                    agg.clone(),
                    cursor.precision,
                )));
            }
            cursor.next_agg_trade_index += 1;
        }
    }
}

/// When the model will next have something: its next order (replays have nothing more).
fn next_generated_time(book: &SymbolBook) -> i64 {
    book.next_order_time_us().unwrap_or(i64::MAX)
}

fn start_kline_stream(
    book: &SymbolBook,
    interval: KlineInterval,
    market: Market,
    name: String,
    now_us: i64,
) -> KlineStream {
    let period = interval.update_period_us(market);
    let next_tick_us = (now_us.div_euclid(period) + 1) * period;
    let open_us = interval.open_time_containing(next_tick_us - 1);
    KlineStream {
        stream_name: Arc::from(name),
        next_tick_us,
        kline: KlineState::empty(
            open_us,
            interval.next_open(open_us),
            book.price_before(open_us),
        ),
        next_fill_index: book.first_fill_at_or_after(open_us),
        changed: false,
    }
}

/// Emits the kline events of one stream due by `now_us`; returns when the
/// next may be due. An update of the open kline goes at each tick of its
/// period, or with [`KlineUpdates::OnChange`] only at a tick a trade
/// changed it before; the closing update always.
fn advance_kline_stream(
    book: &SymbolBook,
    cursor: &SymbolCursor,
    (interval, market, updates): (KlineInterval, Market, KlineUpdates),
    stream: &mut KlineStream,
    now_us: i64,
    seed: u64,
    out: &mut KeyedKlineEvents,
) -> i64 {
    let period = interval.update_period_us(market);
    loop {
        if book.delivered_by(stream.kline.open_us) {
            // Delivered: the stream stays quiet for good.
            return i64::MAX;
        }
        if book.halted_at(stream.kline.open_us) {
            // Halted: no kline opens; quiet until the next one may.
            let next_open = stream.kline.next_open_us;
            if next_open > now_us {
                return next_open;
            }
            let close = stream.kline.close;
            stream.kline = KlineState::empty(next_open, interval.next_open(next_open), close);
            stream.next_tick_us = next_open + period;
            continue;
        }
        let tick_us = stream.next_tick_us;
        if tick_us > now_us {
            return tick_us;
        }
        let closes_kline = tick_us == stream.kline.next_open_us;
        let event_time_us = if closes_kline {
            tick_us + kline_close_latency_us(seed, book.index, interval, stream.kline.open_us)
        } else {
            tick_us
        };
        if event_time_us > now_us {
            return event_time_us;
        }
        while stream.next_fill_index < book.fill_count() {
            let fill = book.fill(stream.next_fill_index);
            if fill.time_us >= tick_us {
                break;
            }
            stream.kline.add(&fill, book.spec.contract_size);
            stream.next_fill_index += 1;
            stream.changed = true;
        }
        if !closes_kline && !stream.changed && updates == KlineUpdates::OnChange {
            stream.next_tick_us = tick_us + period;
            continue;
        }
        stream.changed = false;
        let event = StreamEvent::kline(
            Arc::clone(&stream.stream_name),
            Arc::clone(&cursor.symbol),
            interval,
            stream.kline.clone(),
            closes_kline,
            event_time_us,
            cursor.precision,
        );
        out.push((
            (event_time_us, book.index, interval.index()),
            Arc::new(event),
        ));
        if closes_kline {
            let close = stream.kline.close;
            stream.kline = KlineState::empty(tick_us, interval.next_open(tick_us), close);
        }
        stream.next_tick_us = tick_us + period;
    }
}

/// Merges lists that are each in order into one, by event time; on a tie the
/// earlier list goes first, and no list is ever reordered internally.
fn merge_by_event_time(lists: Vec<Vec<Arc<StreamEvent>>>) -> Vec<Arc<StreamEvent>> {
    let total = lists.iter().map(Vec::len).sum();
    let mut merged = Vec::with_capacity(total);
    let mut positions = vec![0usize; lists.len()];
    while merged.len() < total {
        let mut best: Option<(usize, i64)> = None;
        for (list_index, list) in lists.iter().enumerate() {
            if let Some(event) = list.get(positions[list_index]) {
                if best.is_none_or(|(_, best_time)| event.event_time_us < best_time) {
                    best = Some((list_index, event.event_time_us));
                }
            }
        }
        let (list_index, _) = best.expect("total not reached, so some list has an element");
        merged.push(Arc::clone(&lists[list_index][positions[list_index]]));
        positions[list_index] += 1;
    }
    merged
}

/// Runs the driver until cancelled.
pub(crate) async fn run_driver(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut driver = {
        let market = lock(&shared.market);
        Driver::new(
            &market,
            &shared.config,
            shared.clock.sim_start_us(),
            shared.replay_mode,
        )
    };
    loop {
        let now_us = shared.clock.now_us();
        let next_due_us = driver.step(&shared, now_us);
        let idle_limit = Instant::now() + MAX_IDLE;
        let wake_at = if next_due_us == i64::MAX {
            idle_limit
        } else {
            shared.clock.instant_of(next_due_us).min(idle_limit)
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.driver_wakeup.notified() => {}
            _ = sleep_until(wake_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trade;
    use crate::wire::TimeUnit;

    fn event(id: i64, event_time_us: i64) -> Arc<StreamEvent> {
        let trade = Trade {
            print: crate::model::PrintType::Market,
            id,
            price: 1,
            quantity: 1,
            time_us: event_time_us,
            event_time_us,
            is_buyer_maker: false,
            is_best_match: true,
            dispatch_seq: 0,
            raw_payload: None,
        };
        Arc::new(StreamEvent::trade(
            Arc::from("x@trade"),
            Arc::from("X"),
            trade,
            crate::wire::Precision::SPOT,
        ))
    }

    fn trade_ids(events: &[Arc<StreamEvent>]) -> Vec<i64> {
        events
            .iter()
            .map(|event| {
                let payload: serde_json::Value = serde_json::from_str(
                    event.payload(TimeUnit::Microsecond, crate::wire::Shape::Spot),
                )
                .unwrap();
                payload["t"].as_i64().unwrap()
            })
            .collect()
    }

    #[test]
    fn merge_orders_by_event_time_and_never_reorders_a_list() {
        // The first list has a late event before an early one (as a replay can): it stays in place.
        let merged = merge_by_event_time(vec![
            vec![event(1, 10), event(2, 50), event(3, 20)],
            vec![event(4, 15), event(5, 30)],
        ]);
        assert_eq!(trade_ids(&merged), vec![1, 4, 5, 2, 3]);
        // Ties go to the earlier list.
        let merged = merge_by_event_time(vec![vec![event(1, 10)], vec![event(2, 10)]]);
        assert_eq!(trade_ids(&merged), vec![1, 2]);
    }
}
