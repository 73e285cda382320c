//! Firehose mode, for benchmarks: pre-serialised combined-stream aggTrade
//! frames sent as fast as the client reads them (or at a set rate), until a
//! frame count or a time limit is reached.
//!
//! The frames are rendered once, at start, on a blocking thread, so the blast
//! itself costs the fake only its socket writes and the measured process is
//! the client. Frame `k` (from 0) is symbol `k mod n_symbols`'s next
//! aggregate: ids contiguous per symbol from 1, trade ids contiguous, trade
//! time `sim_start + k x step_us` (so hours roll over at the pace the
//! configuration asks), event time 1 ms later, prices a seeded random walk
//! on a 0.01 tick and quantities spread as real ones are ([`next_price`],
//! [`lots`]).
//!
//! It is kept apart from the simulated market: a firehose connection is never
//! registered with the driver, so the market model, faults and replay code
//! paths are untouched, and REST (exchangeInfo, time, history) still serves
//! the model as usual. A connection gets the blast once it subscribes (in the
//! URL or by SUBSCRIBE, answered as usual) to every firehose stream in the
//! unit the frames were rendered in (microseconds on spot, milliseconds
//! elsewhere); one connection blasts at a time, and a connection that closes
//! hands the rest to the next one (frames in flight on the closed socket are
//! lost, as on a real link). Other connections get their control replies and
//! pings, nothing else.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{FakeConfig, FirehoseConfig, Market};
use crate::model::{AggTrade, SymbolSpec};
use crate::rng::SplitMix64;
use crate::shared::{lock, Shared};
use crate::truth::{GroundTruth, TruthAggTrade};
use crate::wire::{self, Precision, TimeUnit};

/// Frames rendered into one contiguous buffer (freed once sent).
const FRAMES_PER_CHUNK: usize = 4096;

/// Most frames written between two flushes when not rate-limited.
const FRAMES_PER_FLUSH: usize = 1024;

/// Event time after trade time, µs: a real aggTrade's typical delay.
const EVENT_DELAY_US: i64 = 1_000;

/// One buffer of rendered frames and where each ends.
struct Chunk {
    text: Bytes,
    ends: Vec<usize>,
    /// Frames of this chunk already sent.
    next: usize,
}

/// The rendered frames and the blast's progress, shared by the connections.
pub(crate) struct Firehose {
    config: FirehoseConfig,
    /// `btcusdt@aggTrade`, ... of the configured symbols.
    streams: HashSet<String>,
    /// The unit the frames were rendered in.
    unit: TimeUnit,
    chunks: Mutex<VecDeque<Chunk>>,
    /// Frames the blast will send at most (the count, or what the rate
    /// allows within the time limit).
    n_rendered: u64,
    /// A connection is blasting.
    taken: AtomicBool,
    sent: AtomicU64,
    started_at: OnceLock<Instant>,
    finished: AtomicBool,
}

/// The prices' tick, 0.01 (BTCUSDT's), in atoms (1e-8).
const TICK_ATOMS: i64 = 1_000_000;

/// The quantities' lot, 0.00001 (BTCUSDT's step), in atoms.
const LOT_ATOMS: i64 = 1_000;

/// The next aggregate's price after `price`, moving as the real BTCUSDT
/// aggTrades of `../shared/data/real/spot/aggTrades` do from one to the
/// next: unchanged 4 times in 10 (the sample: 40 %), a tick up or down 3
/// in 10 (31 %), else 2 to 30 ticks either way.
fn next_price(price: i64, random: &mut SplitMix64) -> i64 {
    let ticks = match random.below(10) {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2 + random.below(29) as i64,
    };
    let step = if random.below(2) == 0 { ticks } else { -ticks };
    (price + step * TICK_ATOMS).max(TICK_ATOMS)
}

/// A quantity in lots, spread as the real sample's are: the decimal
/// logarithm of the lots about normal around 1.9 (78 lots, 0.00078; the
/// sample's quartiles 15 and 465 lots, 99 % under 30,000), 4 in 10 of
/// those past 10 lots rounded to two significant digits (round lots).
/// About 1,100 distinct values in 5,000 (the sample: 1,182), 13,000 in an
/// hour of 360,000: they repeat, as a real hour's do, and the dictionary
/// of a sealed hour holds them. (Uniform quantities, as before, never
/// repeated: an hour of a symbol overflowed the dictionary and made the
/// seal's compression search random bytes.)
fn lots(random: &mut SplitMix64) -> i64 {
    let normal = (-2.0 * random.unit_open().ln()).sqrt()
        * (std::f64::consts::TAU * random.unit_open()).cos();
    let lots = 10f64.powf(1.9 + 1.1 * normal).round().clamp(1.0, 300_000.0) as i64;
    if lots >= 10 && random.below(10) < 4 {
        let unit = 10_i64.pow(lots.ilog10() - 1);
        (lots + unit / 2) / unit * unit
    } else {
        lots
    }
}

/// The blast's aggregates in the order sent, each with its symbol's index
/// (see the module doc): the same for a given seed, so the truth of a blast
/// can be rendered again ([`firehose_truth`]).
fn aggregates(
    config: &FakeConfig,
    step_us: i64,
    n_frames: u64,
) -> impl Iterator<Item = (usize, AggTrade)> + '_ {
    let n_symbols = config.symbols.len().max(1);
    let mut random = SplitMix64::new(config.seed);
    // Per symbol: next aggregate id, next trade id, price in atoms (1e-8),
    // on the tick.
    let mut next_ids: Vec<(i64, i64, i64)> = (0..n_symbols)
        .map(|index| {
            let price = 6_500_000_000_000 / (index as i64 + 1);
            (1, 1, price - price % TICK_ATOMS)
        })
        .collect();
    (0..n_frames).map(move |frame_index| {
        let symbol_index = (frame_index % n_symbols as u64) as usize;
        let (agg_id, trade_id, price) = &mut next_ids[symbol_index];
        let n_fills = 1 + random.below(3) as i64;
        *price = next_price(*price, &mut random);
        let time_us = config.sim_start_us + frame_index as i64 * step_us;
        let agg = AggTrade {
            id: *agg_id,
            price: *price,
            quantity: lots(&mut random) * LOT_ATOMS,
            first_trade_id: *trade_id,
            last_trade_id: *trade_id + n_fills - 1,
            time_us,
            event_time_us: time_us + EVENT_DELAY_US,
            is_buyer_maker: random.below(2) == 0,
            is_best_match: true,
            dispatch_seq: frame_index,
            raw_payload: None,
        };
        *agg_id += 1;
        *trade_id += n_fills;
        (symbol_index, agg)
    })
}

/// What a blast of `firehose` under `config` sends of `symbol`, as ground
/// truth (aggTrades only; times in µs whatever the wire's unit). Frames the
/// blast does not get to send (a time limit) are in it too.
pub fn firehose_truth(config: &FakeConfig, firehose: &FirehoseConfig, symbol: &str) -> GroundTruth {
    let futures = !config.market.speaks_micros();
    let agg_trades = aggregates(config, firehose.step_us, firehose.frames)
        .filter(|(index, _)| config.symbols[*index] == symbol)
        .map(|(_, agg)| TruthAggTrade::of(&agg, (!futures).then_some(agg.is_best_match)))
        .collect();
    GroundTruth {
        agg_trades,
        ..GroundTruth::default()
    }
}

impl Firehose {
    /// Renders every frame the blast can send (blocking work: call it off
    /// the async workers).
    pub(crate) fn render(config: &FakeConfig, firehose: &FirehoseConfig) -> Firehose {
        let unit = if config.market.speaks_micros() {
            TimeUnit::Microsecond
        } else {
            TimeUnit::Millisecond
        };
        let n_rendered = match firehose.rate_per_sec {
            Some(rate) => firehose
                .frames
                .min((rate as f64 * firehose.max_duration.as_secs_f64()).ceil() as u64 + 1),
            None => firehose.frames,
        };
        let shape = config.market.shape();
        // Futures print the symbols' precision; the blast's prices are not
        // on their tick grid, so they take the decimals they need (exact).
        let precisions: Vec<Precision> = config
            .symbols
            .iter()
            .map(|symbol| Precision::of(config.market, &SymbolSpec::for_symbol(symbol)))
            .collect();
        let stream_names: Vec<String> = config
            .symbols
            .iter()
            .map(|symbol| format!("{}@aggTrade", symbol.to_ascii_lowercase()))
            .collect();
        let mut chunks = VecDeque::new();
        let mut text = String::new();
        let mut ends = Vec::with_capacity(FRAMES_PER_CHUNK);
        for (symbol_index, agg) in aggregates(config, firehose.step_us, n_rendered) {
            let payload = wire::agg_trade_event(
                &config.symbols[symbol_index],
                &agg,
                unit,
                shape,
                precisions[symbol_index],
            );
            text.push_str(&wire::combined(&stream_names[symbol_index], &payload));
            ends.push(text.len());
            if ends.len() == FRAMES_PER_CHUNK {
                chunks.push_back(Chunk {
                    text: Bytes::from(std::mem::take(&mut text)),
                    ends: std::mem::replace(&mut ends, Vec::with_capacity(FRAMES_PER_CHUNK)),
                    next: 0,
                });
            }
        }
        if !ends.is_empty() {
            chunks.push_back(Chunk {
                text: Bytes::from(text),
                ends,
                next: 0,
            });
        }
        Firehose {
            config: firehose.clone(),
            streams: stream_names.into_iter().collect(),
            unit,
            chunks: Mutex::new(chunks),
            n_rendered,
            taken: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            started_at: OnceLock::new(),
            finished: AtomicBool::new(n_rendered == 0),
        }
    }

    /// Up to `limit` next frames, in order.
    fn take_frames(&self, limit: usize) -> Vec<Utf8Bytes> {
        let mut chunks = lock(&self.chunks);
        let mut frames = Vec::with_capacity(limit);
        while frames.len() < limit {
            let Some(chunk) = chunks.front_mut() else {
                break;
            };
            while frames.len() < limit && chunk.next < chunk.ends.len() {
                let start = if chunk.next == 0 {
                    0
                } else {
                    chunk.ends[chunk.next - 1]
                };
                let end = chunk.ends[chunk.next];
                frames.push(
                    Utf8Bytes::try_from(chunk.text.slice(start..end))
                        .expect("rendered frames are ASCII JSON"),
                );
                chunk.next += 1;
            }
            if chunk.next == chunk.ends.len() {
                chunks.pop_front();
            }
        }
        frames
    }

    /// What the blasting connection does next.
    fn next_step(&self) -> Step {
        if self.finished.load(Ordering::Relaxed) {
            return Step::Finished;
        }
        let started_at = *self.started_at.get_or_init(Instant::now);
        let now = Instant::now();
        let sent = self.sent.load(Ordering::Relaxed);
        if sent >= self.config.frames || now >= started_at + self.config.max_duration {
            return Step::Finished;
        }
        let limit = match self.config.rate_per_sec {
            None => FRAMES_PER_FLUSH,
            Some(rate) => {
                let rate = rate.max(1);
                let due = (now.duration_since(started_at).as_secs_f64() * rate as f64) as u64 + 1;
                if due <= sent {
                    let next_at = started_at + Duration::from_secs_f64(sent as f64 / rate as f64);
                    return Step::WaitUntil(next_at.min(started_at + self.config.max_duration));
                }
                ((due - sent) as usize).min(FRAMES_PER_FLUSH)
            }
        };
        let remaining = (self.config.frames - sent).min(usize::MAX as u64) as usize;
        let frames = self.take_frames(limit.min(remaining));
        if frames.is_empty() {
            return Step::Finished;
        }
        Step::Send(frames)
    }

    /// Marks the blast over (once) and says so.
    fn finish(&self, shared: &Shared) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let secs = self
            .started_at
            .get()
            .map(|started_at| started_at.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        shared
            .counters
            .update(|counters| counters.firehose_finished = true);
        // The rest of the rendered frames will not be sent: free them.
        lock(&self.chunks).clear();
        info!(
            n_sent = sent,
            n_rendered = self.n_rendered,
            secs,
            frames_per_sec = sent as f64 / secs.max(1e-9),
            "firehose finished"
        );
    }
}

enum Step {
    Send(Vec<Utf8Bytes>),
    WaitUntil(Instant),
    Finished,
}

/// A control message's outcome, from the reading half to the writing half.
struct ControlUpdate {
    reply: String,
    streams: Option<Vec<String>>,
    combined: Option<bool>,
}

/// Serves one accepted connection in firehose mode until the client leaves
/// or the fake stops.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    firehose: Arc<Firehose>,
    websocket: WebSocketStream<TcpStream>,
    request: crate::ws::ConnectRequest,
    cancel: CancellationToken,
) {
    let (sink, source) = websocket.split();
    let (updates, updates_received) = mpsc::unbounded_channel();
    let max_streams = shared.config.limits.max_streams_per_connection;
    let reader = read_control(
        source,
        updates,
        request.streams.clone(),
        request.combined,
        max_streams,
        shared.config.market,
    );
    let mut writer = Writer {
        shared: Arc::clone(&shared),
        firehose: Arc::clone(&firehose),
        sink,
        streams: request.streams.into_iter().collect(),
        combined: request.combined,
        unit: request.unit,
        blasting: false,
        warned: false,
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = reader => {}
        _ = writer.run(updates_received) => {}
    }
    if writer.blasting {
        firehose.taken.store(false, Ordering::Release);
    }
}

/// Reads the client's frames: answers control messages through the writer;
/// pongs and the client's pings are handled by tungstenite.
async fn read_control(
    mut source: SplitStream<WebSocketStream<TcpStream>>,
    updates: mpsc::UnboundedSender<ControlUpdate>,
    mut streams: Vec<String>,
    mut combined: bool,
    max_streams: usize,
    market: Market,
) {
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                return;
            }
            continue;
        };
        let outcome =
            crate::ws::process_control(text.as_str(), &streams, combined, max_streams, market);
        if let Some(new_streams) = &outcome.new_streams {
            streams.clone_from(new_streams);
        }
        if let Some(new_combined) = outcome.new_combined {
            combined = new_combined;
        }
        let update = ControlUpdate {
            reply: outcome.reply,
            streams: outcome.new_streams,
            combined: outcome.new_combined,
        };
        if updates.send(update).is_err() {
            return;
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    firehose: Arc<Firehose>,
    sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    streams: HashSet<String>,
    combined: bool,
    unit: TimeUnit,
    /// This connection holds the blast.
    blasting: bool,
    /// A subscription that cannot be fed was logged once.
    warned: bool,
}

impl Writer {
    async fn run(&mut self, mut updates: mpsc::UnboundedReceiver<ControlUpdate>) {
        let ping_interval = self.shared.config.limits.ping_interval;
        let mut next_ping_at = Instant::now() + ping_interval;
        loop {
            while let Ok(update) = updates.try_recv() {
                if !self.apply(update).await {
                    return;
                }
            }
            if Instant::now() >= next_ping_at {
                next_ping_at = Instant::now() + ping_interval;
                if self.sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            let wait_until = if self.may_blast() {
                match self.firehose.next_step() {
                    Step::Send(frames) => {
                        if !self.send(frames).await {
                            return;
                        }
                        continue;
                    }
                    Step::WaitUntil(at) => at.min(next_ping_at),
                    Step::Finished => {
                        self.firehose.finish(&self.shared);
                        next_ping_at
                    }
                }
            } else if self.wants_blast() && !self.firehose.finished.load(Ordering::Relaxed) {
                // Another connection blasts: look again shortly.
                next_ping_at.min(Instant::now() + Duration::from_millis(100))
            } else {
                next_ping_at
            };
            tokio::select! {
                update = updates.recv() => {
                    let Some(update) = update else { return };
                    if !self.apply(update).await {
                        return;
                    }
                }
                _ = sleep_until(wait_until) => {}
            }
        }
    }

    /// Sends a control reply and takes the new subscriptions; false when
    /// the socket is gone.
    async fn apply(&mut self, update: ControlUpdate) -> bool {
        if let Some(streams) = update.streams {
            self.streams = streams.into_iter().collect();
        }
        if let Some(combined) = update.combined {
            self.combined = combined;
        }
        self.shared.counters.frame_sent("control_reply");
        self.sink.send(Message::text(update.reply)).await.is_ok()
    }

    /// Subscribed to every firehose stream.
    fn wants_blast(&self) -> bool {
        self.firehose.streams.is_subset(&self.streams)
    }

    /// Whether this connection may send the next frames (taking the blast
    /// when it is free).
    fn may_blast(&mut self) -> bool {
        if self.blasting {
            return true;
        }
        if !self.wants_blast() {
            return false;
        }
        if !self.combined || self.unit != self.firehose.unit {
            if !self.warned {
                warn!(
                    combined = self.combined,
                    unit = ?self.unit,
                    "firehose frames are combined-stream frames in the market's unit; this connection is not fed"
                );
                self.warned = true;
            }
            return false;
        }
        self.blasting = self
            .firehose
            .taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.blasting
    }

    /// Writes frames and flushes; false when the socket is gone.
    async fn send(&mut self, frames: Vec<Utf8Bytes>) -> bool {
        let n_frames = frames.len() as u64;
        for frame in frames {
            if self.sink.feed(Message::Text(frame)).await.is_err() {
                return false;
            }
        }
        if self.sink.flush().await.is_err() {
            return false;
        }
        self.firehose.sent.fetch_add(n_frames, Ordering::Relaxed);
        self.shared.counters.update(|counters| {
            counters.firehose_frames_sent += n_frames;
            *counters
                .ws_frames_sent
                .entry("aggTrade".to_owned())
                .or_default() += n_frames;
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real sample's figures (`../shared/data/real/spot/aggTrades`,
    /// 5,000 BTCUSDT aggTrades): 1,182 distinct quantities, median 78
    /// lots; the price unchanged from one aggregate to the next 40 % of
    /// the time, a tick either way 31 %.
    #[test]
    fn quantities_and_prices_move_as_real_ones_do() {
        let mut random = SplitMix64::new(7);
        let mut quantities: Vec<i64> = (0..5_000).map(|_| lots(&mut random)).collect();
        quantities.sort_unstable();
        let median = quantities[quantities.len() / 2];
        quantities.dedup();
        assert!(
            (800..1_600).contains(&quantities.len()),
            "{} distinct",
            quantities.len()
        );
        assert!((40..160).contains(&median), "median {median} lots");
        assert!(quantities[0] >= 1 && *quantities.last().unwrap() <= 300_000);

        let mut price = 6_500_000_000_000;
        let (mut same, mut one_tick) = (0, 0);
        for _ in 0..10_000 {
            let next = next_price(price, &mut random);
            assert_eq!(next % TICK_ATOMS, 0, "{next} off the tick");
            match (next - price).abs() / TICK_ATOMS {
                0 => same += 1,
                1 => one_tick += 1,
                ticks => assert!(ticks <= 30, "{ticks} ticks"),
            }
            price = next;
        }
        assert!((3_500..4_500).contains(&same), "{same} unchanged");
        assert!((2_500..3_500).contains(&one_tick), "{one_tick} one tick");
    }
}
