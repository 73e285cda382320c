//! Stream connections: the only code that owns a WebSocket.
//!
//! One task per connection plan (a set of at most `streams_per_connection`
//! streams of one market). The task keeps a *link* (one socket) alive
//! forever:
//!
//! - it connects to `/stream` (combined wrapper, µs times on spot) and
//!   subscribes with SUBSCRIBE requests, paced so that our own frames (pongs
//!   included) stay under Binance's 5 per second; every reply is checked, and
//!   a refused batch is retried stream by stream so one bad name is logged
//!   and does not cost the others;
//! - it passes every data frame on with its local receive time; tungstenite
//!   answers pings with their payload and flushes the pong on the next read;
//! - a link that delivered no frame (data or ping) for `dead_after` is dead,
//!   which also catches half-open TCP;
//! - it reconnects forever, with exponential backoff, full jitter and a cap,
//!   and every handshake of every task first takes a slot from a shared
//!   [`HandshakeBudget`] (Binance: 300 per 5 minutes per IP); a link that
//!   delivered data (or lived `healthy_after`) resets the backoff, so only
//!   links that fail before delivering anything climb it;
//! - before the 24 h lifetime ends (`rotate_after`), and at once on a
//!   `serverShutdown` event, it rotates make-before-break: a replacement link
//!   is opened and subscribed, and the old one is closed only once, for every
//!   stream, the replacement delivered a key the old one delivered too (or
//!   `rotation_overlap_timeout` passed). Frames seen on both are stored once
//!   downstream (rows are deduplicated by key).
//! - a link that still answers pings but whose streams delivered no data for
//!   a bound learned from their usual rates is *silent* (Binance has been
//!   seen to keep such a link open for good): [`judge_silence`] decides, and
//!   the link is rotated make-before-break like above, except that the old
//!   one is closed as soon as the replacement delivers (a silent link has
//!   nothing to overlap). A link is judged by the bound only while the
//!   market's other links deliver ([`MarketActivity`]); when they are all
//!   quiet the market more likely is, and only `silent_after_max` passes
//!   judgement.
//!
//! Channel policy: frames go to the recorder over a bounded channel. When it
//! is full the task waits (it stops reading, TCP pushes back on the
//! exchange). A task that cannot read cannot answer pings, so it waits at
//! most `max_backpressure_wait`: past that it closes the link, hands over the
//! frame it holds (waiting as long as needed, since no socket is open), and
//! reconnects; the disconnect is reported like any other.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::binance::decode::{decode_frame, Decoded};
use crate::binance::markets::Route;
use crate::binance::streams::{combined_stream_name, connection_url, stream_name};
use crate::domain::{KlineInterval, Market, StreamKind, Symbol, TimeUs};
use crate::metrics::Counters;

/// What a connection task (or the clock task) tells the recorder.
#[derive(Debug)]
pub enum Inbound {
    /// A text or binary data frame, as received.
    Frame {
        market: Market,
        recv_time: TimeUs,
        bytes: Vec<u8>,
    },
    /// A link was established and its subscription sent.
    Connected {
        market: Market,
        task: usize,
        link: u64,
    },
    /// A link ended. `streams` are the streams it carried; from now until a
    /// replacement delivers, they may miss data (a gap to check).
    Disconnected {
        market: Market,
        task: usize,
        link: u64,
        reason: String,
        streams: Vec<(Symbol, StreamKind)>,
    },
    /// A `/api/v3/time` answer: the exchange's clock and the host clock's
    /// offset from it (host minus exchange, at the middle of the request).
    ClockSample {
        market: Market,
        server_time: TimeUs,
        offset_us: i64,
    },
    /// Binance refuses this host (HTTP 403 or 451): the daemon stops with
    /// this message instead of retrying forever.
    Refused { market: Market, message: String },
}

/// Connection timing and limits (the `[connection]` config table).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A link that lived this long resets the backoff, even if it delivered
    /// no data (a quiet stream); one that delivered data resets it anyway.
    pub healthy_after: Duration,
    /// No frame (data or ping) for this long means the link is dead.
    pub dead_after: Duration,
    pub connect_timeout: Duration,
    /// Rotate a link this long after it opened (Binance closes at 24 h).
    pub rotate_after: Duration,
    /// How long the old link waits for the replacement to overlap it.
    pub rotation_overlap_timeout: Duration,
    /// Our control frames per second per link, leaving room for pongs
    /// under Binance's 5 incoming frames per second.
    pub max_control_per_sec: u32,
    /// Streams per SUBSCRIBE request.
    pub subscribe_batch: usize,
    /// Longest wait on a full channel before the link is given up.
    pub max_backpressure_wait: Duration,
    /// A link is never judged silent sooner than this...
    pub silent_after_min: Duration,
    /// ...and always after this, even while the market's other links are
    /// quiet too.
    pub silent_after_max: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            dead_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            rotate_after: Duration::from_secs(23 * 3600 + 30 * 60),
            rotation_overlap_timeout: Duration::from_secs(30),
            max_control_per_sec: 2,
            subscribe_batch: 100,
            max_backpressure_wait: Duration::from_secs(10),
            silent_after_min: Duration::from_secs(20),
            silent_after_max: Duration::from_secs(600),
        }
    }
}

impl ConnectionSettings {
    /// Full jitter: a uniform delay in `[0, min(max, initial * 2^attempt)]`.
    pub fn backoff_delay(&self, attempt: u32, random_unit: f64) -> Duration {
        Backoff::new(self.backoff_initial, self.backoff_max).full_jitter(attempt, random_unit)
    }
}

/// New connections allowed across all tasks: at most `limit` handshakes in
/// any `window` (a sliding window over the times of past handshakes).
pub struct HandshakeBudget {
    limit: usize,
    window: Duration,
    recent: Mutex<VecDeque<Instant>>,
}

impl HandshakeBudget {
    pub fn new(limit: u32, window: Duration) -> HandshakeBudget {
        HandshakeBudget {
            limit: limit.max(1) as usize,
            window,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// When a handshake may happen, given the past ones: pure.
    pub fn next_slot(
        recent: &VecDeque<Instant>,
        limit: usize,
        window: Duration,
        now: Instant,
    ) -> Instant {
        let in_window = recent
            .iter()
            .filter(|time| now.duration_since(**time) < window)
            .count();
        if in_window < limit {
            return now;
        }
        // The oldest handshake inside the window must leave it first.
        let oldest_in_window = recent.iter().rev().nth(limit - 1).copied().unwrap_or(now);
        oldest_in_window + window
    }

    /// Waits for a slot and takes it; `false` if cancelled first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        loop {
            let wait_until = {
                let mut recent = self.recent.lock().await;
                let now = Instant::now();
                while recent
                    .front()
                    .is_some_and(|time| now.duration_since(*time) >= self.window)
                {
                    recent.pop_front();
                }
                let slot = HandshakeBudget::next_slot(&recent, self.limit, self.window, now);
                if slot <= now {
                    recent.push_back(now);
                    return true;
                }
                slot
            };
            debug!(
                wait_ms = wait_until
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "handshake budget spent; waiting"
            );
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }
}

/// One connection task's streams.
#[derive(Debug, Clone)]
pub struct ConnectionPlan {
    pub market: Market,
    /// Index of the task, for logs.
    pub task: usize,
    pub ws_base_url: String,
    /// The path the streams are subscribed on first (USD-M: `/public` or
    /// `/market`; every stream of a plan has the same route).
    pub route: Route,
    pub streams: Vec<(Symbol, StreamKind)>,
    /// Shared by every connection task of the market.
    pub activity: Arc<MarketActivity>,
}

/// A silent link's bound, in multiples of the typical gap between its data
/// frames. Trades come in bursts, so a quiet spell of several typical gaps
/// is common; twenty is rare enough not to churn healthy links (for
/// exponential gaps, e^-20).
const SILENCE_GAP_FACTOR: u32 = 20;
/// A silent link's bound, in multiples of its fastest kline push interval.
/// Klines are pushed on a clock whether or not anyone trades, so ten missed
/// pushes are a sure sign.
const SILENCE_PUSH_FACTOR: u32 = 10;
/// Gaps seen before their average is trusted: a link's first frames (a
/// burst, a subscription's first pushes) say little about its usual rate.
const MIN_GAPS_LEARNED: u32 = 16;
/// Weight of the newest gap in the moving average (1/16: about the last
/// sixteen gaps count, so the rate follows the day's rhythm within minutes
/// on a busy link).
const GAP_AVERAGE_WEIGHT: f64 = 1.0 / 16.0;

/// How often a kline stream is pushed, whether or not anyone trades (the
/// reference, 4.3 and 4.4): spot every 2 s (1 s for `1s` klines), futures
/// every 250 ms. Binance.US is assumed to push like spot; a guess too long
/// only makes the bound longer.
pub fn kline_push_interval(market: Market, interval: KlineInterval) -> Duration {
    match (market, interval) {
        (Market::UsdM | Market::CoinM, _) => Duration::from_millis(250),
        (Market::Spot | Market::Us, KlineInterval::Second1) => Duration::from_secs(1),
        (Market::Spot | Market::Us, _) => Duration::from_secs(2),
    }
}

/// The fastest push interval among a link's kline streams, if it has any.
fn fastest_push(market: Market, streams: &[(Symbol, StreamKind)]) -> Option<Duration> {
    streams
        .iter()
        .filter_map(|(_, kind)| match kind {
            StreamKind::Kline(interval) => Some(kline_push_interval(market, *interval)),
            _ => None,
        })
        .min()
}

/// The rhythm of one link's data frames: when it last delivered and the
/// typical gap between deliveries (a moving average).
#[derive(Debug, Clone, Copy)]
pub struct DataRate {
    /// The link's last data frame, or its opening; moved on past time the
    /// task spent not reading (a recorder backlog is not the exchange's
    /// silence).
    quiet_since: Instant,
    last_data: Option<Instant>,
    typical_gap: Option<Duration>,
    n_gaps: u32,
}

impl DataRate {
    pub fn new(now: Instant) -> DataRate {
        DataRate {
            quiet_since: now,
            last_data: None,
            typical_gap: None,
            n_gaps: 0,
        }
    }

    pub fn note_data(&mut self, now: Instant) {
        if let Some(last) = self.last_data {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            let average = match self.typical_gap {
                None => gap,
                Some(typical) => {
                    let typical = typical.as_secs_f64();
                    typical + (gap - typical) * GAP_AVERAGE_WEIGHT
                }
            };
            self.typical_gap = Some(Duration::from_secs_f64(average.max(0.0)));
            self.n_gaps = self.n_gaps.saturating_add(1);
        }
        self.last_data = Some(now);
        self.quiet_since = self.quiet_since.max(now);
    }

    /// The task did not read until `now`: the silence counts from here.
    pub fn excuse_until(&mut self, now: Instant) {
        self.quiet_since = self.quiet_since.max(now);
    }

    /// A replacement carries the same streams: it starts from what the old
    /// link learned about their rate.
    pub fn learn_from(&mut self, older: &DataRate) {
        if self.n_gaps < older.n_gaps {
            self.typical_gap = older.typical_gap;
            self.n_gaps = older.n_gaps;
        }
    }
}

/// How long a link may go without data before it is judged silent: the
/// shorter of what its kline pushes and its learned gaps promise, kept
/// between `silent_after_min` and `silent_after_max`. `None` while nothing
/// is known (no kline stream, too few gaps): only `dead_after` applies then.
pub fn silence_bound(
    settings: &ConnectionSettings,
    push_interval: Option<Duration>,
    rate: &DataRate,
) -> Option<Duration> {
    let from_pushes = push_interval.map(|interval| interval.saturating_mul(SILENCE_PUSH_FACTOR));
    let from_gaps = rate
        .typical_gap
        .filter(|_| rate.n_gaps >= MIN_GAPS_LEARNED)
        .map(|gap| gap.saturating_mul(SILENCE_GAP_FACTOR));
    let bound = match (from_pushes, from_gaps) {
        (Some(pushes), Some(gaps)) => pushes.min(gaps),
        (pushes, gaps) => pushes.or(gaps)?,
    };
    // max then min rather than clamp: never panics, and the cap wins.
    Some(
        bound
            .max(settings.silent_after_min)
            .min(settings.silent_after_max),
    )
}

/// What the market's other links say, for [`judge_silence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketPeers {
    /// This link is the market's only one: its own rate is all there is.
    Alone,
    /// Other links exist; the newest data any link of the market delivered.
    Newest(Option<Instant>),
}

/// The verdict on one link's silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Nothing is known of the link's rate: it is never judged silent.
    Unknown,
    /// Not silent; look again at this time if no data came meanwhile.
    CheckAt(Instant),
    /// Silent for `silence`, past `bound`: replace it.
    Silent { silence: Duration, bound: Duration },
}

/// Whether a link is silent now: pure, with time passed in. Past its bound
/// a link is silent while any other link of the market delivered within
/// that bound (the exchange is sending, this link is not), or when it is
/// the market's only link. When the whole market is quiet (a trading halt,
/// an exchange-wide pause), replacing links would only churn, so judgement
/// waits for `silent_after_max`.
pub fn judge_silence(
    settings: &ConnectionSettings,
    push_interval: Option<Duration>,
    rate: &DataRate,
    peers: MarketPeers,
    now: Instant,
) -> Silence {
    let Some(bound) = silence_bound(settings, push_interval, rate) else {
        return Silence::Unknown;
    };
    let silence = now.saturating_duration_since(rate.quiet_since);
    if silence < bound {
        return Silence::CheckAt(rate.quiet_since + bound);
    }
    let others_deliver = match peers {
        MarketPeers::Alone => true,
        // This link has delivered nothing within the bound, so data that
        // recent came from another link.
        MarketPeers::Newest(newest) => {
            newest.is_some_and(|newest| now.saturating_duration_since(newest) < bound)
        }
    };
    if others_deliver {
        return Silence::Silent { silence, bound };
    }
    let cap = settings.silent_after_max.max(bound);
    if silence >= cap {
        return Silence::Silent {
            silence,
            bound: cap,
        };
    }
    // Look again soon: the others may start delivering before the cap.
    let recheck = (bound / 4).max(Duration::from_millis(10));
    Silence::CheckAt((now + recheck).min(rate.quiet_since + cap))
}

/// The verdict on a link's streams that were subscribed and never heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unheard {
    /// Not (yet) judged; look again at this time, if any.
    Wait(Option<Instant>),
    /// Silent past the bound while the market delivered: name them.
    Silent,
}

/// Whether a link's streams that were acknowledged and never delivered
/// are *subscribed but silent*: pure, with time passed in. A stream on the
/// wrong USD-M route does exactly this (reference 1.3). Judged `bound`
/// after the last subscription was acknowledged, and only while data
/// flows elsewhere (this link's other streams, or the market's other
/// links) within the bound: when the whole market is quiet, only after
/// `cap`. A link that is its market's only one has nothing to compare
/// with and is judged at the bound, as [`judge_silence`] does, so a silent
/// lone link is never kept longer than before.
pub fn judge_unheard(
    bound: Duration,
    cap: Duration,
    subscribed_at: Option<Instant>,
    link_last_data: Option<Instant>,
    peers: MarketPeers,
    now: Instant,
) -> Unheard {
    let Some(subscribed_at) = subscribed_at else {
        return Unheard::Wait(None);
    };
    let judged_at = subscribed_at + bound;
    if now < judged_at {
        return Unheard::Wait(Some(judged_at));
    }
    let recent =
        |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) < bound);
    let peers_deliver = match peers {
        MarketPeers::Alone => true,
        MarketPeers::Newest(newest) => recent(newest),
    };
    if recent(link_last_data) || peers_deliver {
        return Unheard::Silent;
    }
    let capped_at = subscribed_at + cap.max(bound);
    if now >= capped_at {
        return Unheard::Silent;
    }
    let recheck = (bound / 4).max(Duration::from_millis(10));
    Unheard::Wait(Some((now + recheck).min(capped_at)))
}

/// The newest data frame any link of one market delivered, and how many
/// connection tasks the market runs: what [`judge_silence`] compares a link
/// with. Atomics, as every task of the market writes it on every frame.
#[derive(Debug)]
pub struct MarketActivity {
    origin: Instant,
    /// Milliseconds after `origin`; -1 before any data.
    newest_data_ms: AtomicI64,
    n_tasks: AtomicUsize,
}

impl Default for MarketActivity {
    fn default() -> Self {
        MarketActivity {
            origin: Instant::now(),
            newest_data_ms: AtomicI64::new(-1),
            n_tasks: AtomicUsize::new(0),
        }
    }
}

impl MarketActivity {
    pub fn note_data(&self, now: Instant) {
        let ms = i64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(i64::MAX);
        self.newest_data_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn peers(&self) -> MarketPeers {
        if self.n_tasks.load(Ordering::Relaxed) <= 1 {
            return MarketPeers::Alone;
        }
        let newest = u64::try_from(self.newest_data_ms.load(Ordering::Relaxed))
            .ok()
            .map(|ms| self.origin + Duration::from_millis(ms));
        MarketPeers::Newest(newest)
    }

    /// Counts a connection task in for as long as the guard lives.
    fn join(self: &Arc<Self>) -> ActivityMember {
        self.n_tasks.fetch_add(1, Ordering::Relaxed);
        ActivityMember(Arc::clone(self))
    }
}

/// A connection task counted in its market's [`MarketActivity`].
struct ActivityMember(Arc<MarketActivity>);

impl Drop for ActivityMember {
    fn drop(&mut self) {
        self.0.n_tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The local wall clock in epoch µs: the `recv_time` of a frame.
pub fn now_us() -> TimeUs {
    chrono::Utc::now().timestamp_micros()
}

/// The stream a frame belongs to and its ordering key (trade id, aggTrade
/// id, kline event time), for the rotation overlap check.
fn stream_key_of(decoded: &Decoded) -> Option<((Symbol, StreamKind), i64)> {
    match decoded {
        Decoded::Row {
            key,
            row,
            event_time,
        } => {
            let order = if matches!(key.kind, StreamKind::Kline(_)) {
                *event_time
            } else {
                row.key()
            };
            Some(((key.symbol.clone(), key.kind), order))
        }
        Decoded::KlineUpdate { key, event_time } => {
            Some(((key.symbol.clone(), key.kind), *event_time))
        }
        _ => None,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One open socket and what we know about it.
struct Link {
    number: u64,
    socket: Socket,
    opened: Instant,
    last_frame: Instant,
    /// SUBSCRIBE requests not sent yet, and those sent awaiting a reply.
    to_send: VecDeque<(u64, Vec<(Symbol, StreamKind)>)>,
    awaiting: HashMap<u64, Vec<(Symbol, StreamKind)>>,
    next_send: Instant,
    /// Per stream: first and last ordering key seen on this link.
    first_key: BTreeMap<(Symbol, StreamKind), i64>,
    last_key: BTreeMap<(Symbol, StreamKind), i64>,
    /// Keys are tracked only while a rotation needs them.
    track_keys: bool,
    /// A data frame of a subscribed stream arrived: the link worked, and
    /// losing it does not climb the reconnect backoff.
    delivered_data: bool,
    rate: DataRate,
    /// This link replaces a silent one: the old link is closed as soon as
    /// this one delivers, as there is nothing to overlap.
    replaces_silent: bool,
    /// Names of the streams subscribed here that delivered nothing yet
    /// (emptied as they deliver; then no frame is looked at for it).
    unheard: BTreeSet<String>,
    /// When the last SUBSCRIBE was acknowledged: unheard streams are
    /// judged from then on ([`judge_unheard`]), once.
    subscribed_at: Option<Instant>,
    unheard_judged: bool,
    /// The newest data frame of this link.
    last_data: Option<Instant>,
}

/// Why a link's read loop stopped.
enum LinkEvent {
    Frame(Message),
    Ended(String),
}

impl Link {
    fn new(
        number: u64,
        socket: Socket,
        streams: &[(Symbol, StreamKind)],
        settings: &ConnectionSettings,
    ) -> Link {
        let now = Instant::now();
        let to_send = streams
            .chunks(settings.subscribe_batch.max(1))
            .enumerate()
            .map(|(index, batch)| (index as u64 + 1, batch.to_vec()))
            .collect();
        Link {
            number,
            socket,
            opened: now,
            last_frame: now,
            to_send,
            awaiting: HashMap::new(),
            next_send: now,
            first_key: BTreeMap::new(),
            last_key: BTreeMap::new(),
            track_keys: false,
            delivered_data: false,
            rate: DataRate::new(now),
            replaces_silent: false,
            unheard: streams
                .iter()
                .map(|(symbol, kind)| stream_name(symbol, *kind))
                .collect(),
            subscribed_at: None,
            unheard_judged: false,
            last_data: None,
        }
    }

    /// Notes a data frame: it is heard, and the link delivered.
    fn note_data_frame(&mut self, bytes: &[u8], now: Instant) {
        self.last_data = Some(now);
        if !self.unheard.is_empty() {
            if let Some(name) = combined_stream_name(bytes) {
                self.unheard.remove(name);
            }
        }
    }

    /// Every stream of the link is unheard and not judged yet: a route
    /// question, judged by [`judge_unheard`] before any silence verdict.
    fn awaiting_route_verdict(&self, n_streams: usize) -> bool {
        !self.unheard_judged && self.unheard.len() >= n_streams
    }

    /// Sets `subscribed_at` once every SUBSCRIBE was sent and answered.
    fn note_subscribed(&mut self) {
        if self.subscribed_at.is_none() && self.to_send.is_empty() && self.awaiting.is_empty() {
            self.subscribed_at = Some(Instant::now());
        }
    }

    async fn next_event(&mut self) -> LinkEvent {
        match self.socket.next().await {
            None => LinkEvent::Ended("stream ended".to_owned()),
            Some(Err(error)) => LinkEvent::Ended(format!("read error: {error}")),
            Some(Ok(message)) => LinkEvent::Frame(message),
        }
    }

    /// Sends the next paced SUBSCRIBE if one is due.
    async fn send_due_control(&mut self, settings: &ConnectionSettings) -> Result<(), String> {
        if Instant::now() < self.next_send {
            return Ok(());
        }
        let Some((id, batch)) = self.to_send.pop_front() else {
            return Ok(());
        };
        let names: Vec<String> = batch
            .iter()
            .map(|(symbol, kind)| stream_name(symbol, *kind))
            .collect();
        let request = json!({"method": "SUBSCRIBE", "params": names, "id": id}).to_string();
        self.socket
            .send(Message::text(request))
            .await
            .map_err(|error| format!("cannot subscribe: {error}"))?;
        self.awaiting.insert(id, batch);
        self.next_send =
            Instant::now() + Duration::from_secs(1) / settings.max_control_per_sec.max(1);
        Ok(())
    }

    fn control_deadline(&self) -> Option<Instant> {
        (!self.to_send.is_empty()).then_some(self.next_send)
    }

    /// Handles a control reply addressed to this link's SUBSCRIBE requests.
    fn handle_reply(&mut self, market: Market, id: Option<i64>, refused: Option<String>) {
        let Some(id) = id.and_then(|id| u64::try_from(id).ok()) else {
            return;
        };
        let Some(batch) = self.awaiting.remove(&id) else {
            return;
        };
        let Some(reason) = refused else { return };
        if batch.len() == 1 {
            let (symbol, kind) = &batch[0];
            warn!(%market, stream = %stream_name(symbol, *kind), %reason, "subscription refused; the other streams go on");
            return;
        }
        // Find the bad stream(s): ask again one by one.
        warn!(%market, n_streams = batch.len(), %reason, "subscription batch refused; retrying stream by stream");
        let next_id = self
            .awaiting
            .keys()
            .chain(self.to_send.iter().map(|(id, _)| id))
            .max()
            .copied()
            .unwrap_or(id)
            + 1;
        for (offset, stream) in batch.into_iter().enumerate() {
            self.to_send
                .push_back((next_id.max(1000) + offset as u64, vec![stream]));
        }
    }

    fn note_key(&mut self, stream: (Symbol, StreamKind), key: i64) {
        self.first_key.entry(stream.clone()).or_insert(key);
        let last = self.last_key.entry(stream).or_insert(key);
        *last = (*last).max(key);
    }
}

/// Runs one connection plan until `cancel` fires or the recorder goes away.
pub async fn run_connection(
    plan: ConnectionPlan,
    settings: ConnectionSettings,
    budget: Arc<HandshakeBudget>,
    frames: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) {
    let _member = plan.activity.join();
    let mut plan = plan;
    // The route the reference gives, and whether the other one was tried:
    // a link whose streams all stay silent moves to the other route once;
    // silent there too, it goes back and stays.
    let first_route = plan.route;
    let mut route_tried = false;
    let mut route_settled = false;
    let mut attempt: u32 = 0;
    let mut next_link: u64 = 1;
    let mut current: Option<Link> = None;
    loop {
        let link = match current.take() {
            Some(link) => link,
            None => {
                match open_link(&plan, &settings, &budget, &frames, &cancel, &mut next_link).await {
                    Some(Ok(link)) => link,
                    Some(Err(reason)) => {
                        if !backoff(&plan, &settings, &mut attempt, &reason, &cancel, &counters)
                            .await
                        {
                            return;
                        }
                        continue;
                    }
                    None => return,
                }
            }
        };
        let outcome = drive_link(
            &plan,
            &settings,
            &budget,
            &frames,
            &cancel,
            link,
            &mut next_link,
            plan.route.other().is_some() && !route_settled,
            &counters,
        )
        .await;
        match outcome {
            DriveOutcome::Stop => return,
            DriveOutcome::Replaced(mut replacement) => {
                if replacement.replaces_silent {
                    Counters::add(&counters.silent_links_replaced, 1);
                    replacement.replaces_silent = false;
                } else {
                    Counters::add(&counters.rotations, 1);
                }
                attempt = 0;
                current = Some(replacement);
            }
            DriveOutcome::Lost {
                link_number,
                lived,
                delivered_data,
                reason,
                reroute,
            } => {
                if reroute {
                    let from = plan.route;
                    if route_tried {
                        plan.route = first_route;
                        route_settled = true;
                        warn!(market = %plan.market, task = plan.task, from = %from, to = %plan.route, "streams silent on both routes: back to the reference's route, no more switching");
                    } else if let Some(other) = plan.route.other() {
                        plan.route = other;
                        route_tried = true;
                        warn!(market = %plan.market, task = plan.task, from = %from, to = %other, "every stream silent on its route: trying the other route once");
                    }
                    Counters::add(&counters.stream_route_switches, 1);
                }
                if frames
                    .send(Inbound::Disconnected {
                        market: plan.market,
                        task: plan.task,
                        link: link_number,
                        reason: reason.clone(),
                        streams: plan.streams.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                // A link that worked resets the backoff; one that failed
                // before delivering anything (accept-then-drop) climbs it.
                if delivered_data || lived >= settings.healthy_after || reroute {
                    attempt = 0;
                }
                if !backoff(&plan, &settings, &mut attempt, &reason, &cancel, &counters).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps the backoff delay; `false` if cancelled.
async fn backoff(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    attempt: &mut u32,
    reason: &str,
    cancel: &CancellationToken,
    counters: &Counters,
) -> bool {
    let ceiling = settings.backoff_delay(*attempt, 1.0);
    let delay = settings.backoff_delay(*attempt, fastrand::f64());
    *attempt = attempt.saturating_add(1);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Counters::raise(&counters.reconnect_backoff_max_ms, ceiling_ms);
    warn!(market = %plan.market, task = plan.task, %reason, delay_ms = delay.as_millis() as u64, backoff_ceiling_ms = ceiling_ms, attempt = *attempt, "stream link lost, reconnecting");
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep_until(Instant::now() + delay) => true,
    }
}

/// Connects and queues the subscription. `None` when cancelled.
async fn open_link(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    budget: &HandshakeBudget,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
    next_link: &mut u64,
) -> Option<Result<Link, String>> {
    if !budget.acquire(cancel).await {
        return None;
    }
    let url = connection_url(&plan.ws_base_url, plan.market, plan.route);
    let connected = tokio::select! {
        _ = cancel.cancelled() => return None,
        connected = tokio::time::timeout(settings.connect_timeout, tokio_tungstenite::connect_async(url.as_str())) => connected,
    };
    let socket = match connected {
        Err(_) => return Some(Err("connect timed out".to_owned())),
        Ok(Err(error)) => return Some(Err(format!("connect failed: {error}"))),
        Ok(Ok((socket, _response))) => socket,
    };
    let number = *next_link;
    *next_link += 1;
    info!(market = %plan.market, task = plan.task, link = number, route = %plan.route, n_streams = plan.streams.len(), "stream link established");
    if frames
        .send(Inbound::Connected {
            market: plan.market,
            task: plan.task,
            link: number,
        })
        .await
        .is_err()
    {
        return None;
    }
    Some(Ok(Link::new(number, socket, &plan.streams, settings)))
}

/// Why a link is replaced make-before-break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RotationCause {
    /// Its lifetime is ending, or the exchange announced a shutdown: the
    /// old link delivers until the new one overlaps it.
    Scheduled,
    /// It delivers no data: it closes as soon as the new one delivers.
    Silence,
}

// A link is replaced about once a day: boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
enum DriveOutcome {
    Stop,
    Replaced(Link),
    Lost {
        link_number: u64,
        lived: Duration,
        delivered_data: bool,
        reason: String,
        /// Every stream of the link was subscribed but silent: try the
        /// other route.
        reroute: bool,
    },
}

/// Reads `link` (and, during a rotation, its replacement) until it ends.
#[allow(clippy::too_many_arguments)]
async fn drive_link(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    budget: &HandshakeBudget,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
    mut link: Link,
    next_link: &mut u64,
    may_reroute: bool,
    counters: &Counters,
) -> DriveOutcome {
    let mut replacement: Option<Link> = None;
    let mut rotation_deadline: Option<Instant> = None;
    let mut rotation_wanted: Option<RotationCause> = None;
    let push_interval = fastest_push(plan.market, &plan.streams);
    loop {
        if let Err(reason) = link.send_due_control(settings).await {
            return lost(link, reason);
        }
        if let Some(new_link) = replacement.as_mut() {
            if let Err(reason) = new_link.send_due_control(settings).await {
                warn!(market = %plan.market, %reason, "replacement link failed; keeping the current one");
                replacement = None;
                rotation_deadline = None;
            }
        }
        if let Some(cause) = rotation_wanted.take().filter(|_| replacement.is_none()) {
            match open_link(plan, settings, budget, frames, cancel, next_link).await {
                None => return DriveOutcome::Stop,
                Some(Err(reason)) => {
                    warn!(market = %plan.market, %reason, "replacement link failed; keeping the current one")
                }
                Some(Ok(mut new_link)) => {
                    new_link.track_keys = true;
                    link.track_keys = true;
                    new_link.rate.learn_from(&link.rate);
                    new_link.replaces_silent = cause == RotationCause::Silence;
                    rotation_deadline = Some(Instant::now() + settings.rotation_overlap_timeout);
                    replacement = Some(new_link);
                }
            }
        }
        if let (Some(new_link), Some(deadline)) = (replacement.as_ref(), rotation_deadline) {
            let overlapped = plan.streams.iter().all(|stream| {
                matches!((new_link.first_key.get(stream), link.last_key.get(stream)), (Some(first_new), Some(last_old)) if first_new <= last_old)
            });
            // A silent link has nothing to overlap: what it withheld is
            // lost on it, and gap fill fetches it from REST.
            let overlapped = overlapped || (new_link.replaces_silent && new_link.delivered_data);
            if overlapped || Instant::now() >= deadline {
                info!(market = %plan.market, task = plan.task, old = link.number, new = new_link.number, overlapped, "rotation done: closing the old link");
                let _ = link.socket.close(None).await;
                let mut new_link = replacement.take().expect("checked above");
                new_link.track_keys = false;
                return DriveOutcome::Replaced(new_link);
            }
        }

        let dead_at = link.last_frame + settings.dead_after;
        let rotate_at = (replacement.is_none()).then_some(link.opened + settings.rotate_after);
        let control_at = link
            .control_deadline()
            .into_iter()
            .chain(replacement.as_ref().and_then(Link::control_deadline))
            .min();
        // Streams never heard are judged first: a link all of whose
        // streams are unheard is a route question before a silence one.
        let judging_unheard =
            replacement.is_none() && !link.unheard_judged && !link.unheard.is_empty();
        let unheard_at = match judging_unheard.then(|| {
            judge_unheard(
                settings.silent_after_min,
                settings.silent_after_max,
                link.subscribed_at,
                link.last_data,
                plan.activity.peers(),
                Instant::now(),
            )
        }) {
            Some(Unheard::Wait(at)) => at,
            Some(Unheard::Silent) => Some(Instant::now()),
            None => None,
        };
        let all_unheard = link.awaiting_route_verdict(plan.streams.len());
        // A link being replaced is not judged again.
        let silence_at = match (replacement.is_none() && !all_unheard).then(|| {
            judge_silence(
                settings,
                push_interval,
                &link.rate,
                plan.activity.peers(),
                Instant::now(),
            )
        }) {
            Some(Silence::CheckAt(at)) => Some(at),
            Some(Silence::Silent { .. }) => Some(Instant::now()),
            Some(Silence::Unknown) | None => None,
        };
        let wake_at = [
            Some(dead_at),
            rotate_at,
            control_at,
            rotation_deadline,
            silence_at,
            unheard_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("dead_at is always set");

        let (event, from_replacement) = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = link.socket.close(None).await;
                if let Some(mut new_link) = replacement {
                    let _ = new_link.socket.close(None).await;
                }
                return DriveOutcome::Stop;
            }
            event = link.next_event() => (event, false),
            event = next_replacement_event(&mut replacement) => (event, true),
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if now >= link.last_frame + settings.dead_after {
                    let reason = format!("no frame for {:?}: dead link", settings.dead_after);
                    if let Some(new_link) = replacement.take() {
                        let _ = link.socket.close(None).await;
                        warn!(market = %plan.market, %reason, "old link died during rotation; the replacement takes over");
                        return DriveOutcome::Replaced(new_link);
                    }
                    return lost(link, reason);
                }
                if replacement.is_none() && now >= link.opened + settings.rotate_after {
                    info!(market = %plan.market, task = plan.task, link = link.number, "link lifetime ending: rotating make-before-break");
                    rotation_wanted = Some(RotationCause::Scheduled);
                }
                if judging_unheard
                    && judge_unheard(settings.silent_after_min, settings.silent_after_max, link.subscribed_at, link.last_data, plan.activity.peers(), now) == Unheard::Silent
                {
                    link.unheard_judged = true;
                    Counters::add(&counters.streams_subscribed_silent, link.unheard.len() as u64);
                    for stream in &link.unheard {
                        warn!(market = %plan.market, task = plan.task, link = link.number, route = %plan.route, %stream, bound_ms = settings.silent_after_min.as_millis() as u64, "stream subscribed but silent while the market delivers");
                    }
                    if all_unheard && may_reroute {
                        let _ = link.socket.close(None).await;
                        let reason = format!("every stream silent on route {}", plan.route);
                        return DriveOutcome::Lost {
                            link_number: link.number,
                            lived: link.opened.elapsed(),
                            delivered_data: link.delivered_data,
                            reason,
                            reroute: true,
                        };
                    }
                }
                if replacement.is_none() && rotation_wanted.is_none() && !link.awaiting_route_verdict(plan.streams.len()) {
                    let verdict = judge_silence(settings, push_interval, &link.rate, plan.activity.peers(), now);
                    if let Silence::Silent { silence, bound } = verdict {
                        warn!(market = %plan.market, task = plan.task, link = link.number, silence_ms = silence.as_millis() as u64, bound_ms = bound.as_millis() as u64, "link answers pings but delivers no data: replacing it make-before-break");
                        rotation_wanted = Some(RotationCause::Silence);
                        // If the replacement cannot be opened, the next
                        // try waits for another bound (no handshake storm).
                        link.rate.excuse_until(now);
                    }
                }
                continue;
            }
        };
        let message = match event {
            LinkEvent::Ended(reason) => {
                if from_replacement {
                    warn!(market = %plan.market, %reason, "replacement link ended; keeping the current one");
                    replacement = None;
                    rotation_deadline = None;
                    continue;
                }
                if let Some(new_link) = replacement.take() {
                    info!(market = %plan.market, %reason, "old link ended during rotation; the replacement takes over");
                    return DriveOutcome::Replaced(new_link);
                }
                return lost(link, reason);
            }
            LinkEvent::Frame(Message::Close(frame)) => {
                let reason = format!("closed by server: {frame:?}");
                if from_replacement {
                    warn!(market = %plan.market, %reason, "replacement link closed; keeping the current one");
                    replacement = None;
                    rotation_deadline = None;
                    continue;
                }
                if let Some(new_link) = replacement.take() {
                    info!(market = %plan.market, %reason, "old link closed during rotation; the replacement takes over");
                    return DriveOutcome::Replaced(new_link);
                }
                return lost(link, reason);
            }
            LinkEvent::Frame(message) => message,
        };
        let receiving = if from_replacement {
            replacement.as_mut().expect("event came from it")
        } else {
            &mut link
        };
        let received_at = Instant::now();
        receiving.last_frame = received_at;
        let recv_time = now_us();
        let bytes = match message {
            Message::Text(text) => text.as_bytes().to_vec(),
            Message::Binary(bytes) => bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => continue,
        };
        // Control replies and serverShutdown are not in the combined
        // wrapper; a rotation also needs the keys of data frames.
        let is_data = is_data_frame(&bytes);
        receiving.delivered_data |= is_data;
        if is_data {
            receiving.note_data_frame(&bytes, received_at);
            receiving.rate.note_data(received_at);
            plan.activity.note_data(received_at);
        }
        if !is_data || receiving.track_keys {
            match decode_frame(plan.market, &bytes, recv_time) {
                Ok(Decoded::ControlReply(reply)) => {
                    let refused = reply
                        .outcome
                        .err()
                        .map(|error| format!("code {}: {}", error.code, error.message));
                    receiving.handle_reply(plan.market, reply.id, refused);
                    receiving.note_subscribed();
                }
                Ok(Decoded::ServerShutdown { .. }) => {
                    if !from_replacement && rotation_deadline.is_none() {
                        info!(market = %plan.market, task = plan.task, link = receiving.number, "serverShutdown: rotating make-before-break");
                        rotation_wanted = Some(RotationCause::Scheduled);
                    }
                }
                Ok(decoded) => {
                    if let Some((stream, key)) = stream_key_of(&decoded) {
                        receiving.note_key(stream, key);
                    }
                }
                Err(_) => {}
            }
        }
        let inbound = Inbound::Frame {
            market: plan.market,
            recv_time,
            bytes,
        };
        match tokio::time::timeout(settings.max_backpressure_wait, frames.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(inbound);
                // Time spent waiting for the recorder is not the exchange's
                // silence: the dead-link clock restarts once we read again,
                // and neither link is judged silent for it.
                let now = Instant::now();
                let receiving = if from_replacement {
                    replacement.as_mut().expect("event came from it")
                } else {
                    &mut link
                };
                receiving.last_frame = receiving.last_frame.max(now);
                link.rate.excuse_until(now);
                if let Some(new_link) = replacement.as_mut() {
                    new_link.rate.excuse_until(now);
                }
            }
            Ok(Err(_)) => return DriveOutcome::Stop,
            Err(_) => {
                // The recorder is too slow: give up the link rather than
                // miss pings, but hand over the frame in hand first.
                let _ = link.socket.close(None).await;
                if let Some(mut new_link) = replacement.take() {
                    let _ = new_link.socket.close(None).await;
                }
                warn!(market = %plan.market, task = plan.task, "recorder backlog: link closed, reconnecting after the backlog drains");
                if frames.send(inbound).await.is_err() {
                    return DriveOutcome::Stop;
                }
                return lost(
                    link,
                    "recorder backlog (backpressure wait exceeded)".to_owned(),
                );
            }
        }
    }
}

async fn next_replacement_event(replacement: &mut Option<Link>) -> LinkEvent {
    match replacement.as_mut() {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}

fn lost(link: Link, reason: String) -> DriveOutcome {
    DriveOutcome::Lost {
        link_number: link.number,
        lived: link.opened.elapsed(),
        delivered_data: link.delivered_data,
        reason,
        reroute: false,
    }
}

/// A combined-stream data frame (not a control reply, not `serverShutdown`).
fn is_data_frame(bytes: &[u8]) -> bool {
    bytes.starts_with(br#"{"stream":""#) && !bytes.starts_with(br#"{"stream":"!"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let settings = ConnectionSettings::default();
        assert_eq!(settings.backoff_delay(0, 1.0), Duration::from_millis(250));
        assert_eq!(settings.backoff_delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(settings.backoff_delay(30, 1.0), Duration::from_secs(30));
        assert_eq!(settings.backoff_delay(5, 0.0), Duration::ZERO);
        assert_eq!(settings.backoff_delay(2, 0.5), Duration::from_millis(500));
    }

    #[test]
    fn handshake_budget_is_a_sliding_window() {
        let start = Instant::now();
        let window = Duration::from_secs(300);
        let mut recent = VecDeque::new();
        assert_eq!(HandshakeBudget::next_slot(&recent, 2, window, start), start);
        recent.push_back(start);
        recent.push_back(start + Duration::from_secs(10));
        let later = start + Duration::from_secs(20);
        assert_eq!(
            HandshakeBudget::next_slot(&recent, 2, window, later),
            start + window
        );
        assert_eq!(HandshakeBudget::next_slot(&recent, 3, window, later), later);
        let after_window = start + window + Duration::from_secs(1);
        assert_eq!(
            HandshakeBudget::next_slot(&recent, 2, window, after_window),
            after_window
        );
    }

    /// A rate that saw `n_gaps` gaps of `gap` each, the last data at `last`.
    fn steady_rate(gap: Duration, n_gaps: u32, last: Instant) -> DataRate {
        let first = last - gap * n_gaps;
        let mut rate = DataRate::new(first);
        for index in 0..=n_gaps {
            rate.note_data(first + gap * index);
        }
        rate
    }

    #[test]
    fn silence_bound_follows_kline_pushes_and_learned_gaps() {
        let settings = ConnectionSettings::default();
        let now = Instant::now();
        let spot_minute = kline_push_interval(Market::Spot, KlineInterval::Minute1);
        assert_eq!(spot_minute, Duration::from_secs(2));
        let futures = kline_push_interval(Market::UsdM, KlineInterval::Minute1);
        // Nothing known yet: no judgement (only dead_after applies).
        let fresh = DataRate::new(now);
        assert_eq!(silence_bound(&settings, None, &fresh), None);
        // A spot kline link: 10 pushes of 2 s.
        assert_eq!(
            silence_bound(&settings, Some(spot_minute), &fresh),
            Some(Duration::from_secs(20))
        );
        // Futures push every 250 ms: the floor holds.
        assert_eq!(
            silence_bound(&settings, Some(futures), &fresh),
            Some(settings.silent_after_min)
        );
        // Too few gaps to trust.
        let young = steady_rate(Duration::from_secs(3), MIN_GAPS_LEARNED - 1, now);
        assert_eq!(silence_bound(&settings, None, &young), None);
        // A trade link with a gap of 3 s: 20 gaps.
        let learned = steady_rate(Duration::from_secs(3), MIN_GAPS_LEARNED, now);
        assert_eq!(
            silence_bound(&settings, None, &learned),
            Some(Duration::from_secs(60))
        );
        // The kline pushes promise more than the trades: the shorter wins.
        assert_eq!(
            silence_bound(&settings, Some(spot_minute), &learned),
            Some(Duration::from_secs(20))
        );
        // A busy link: the floor; a quiet one: the cap.
        let busy = steady_rate(Duration::from_millis(10), 100, now);
        assert_eq!(
            silence_bound(&settings, None, &busy),
            Some(settings.silent_after_min)
        );
        let quiet = steady_rate(Duration::from_secs(300), 20, now);
        assert_eq!(
            silence_bound(&settings, None, &quiet),
            Some(settings.silent_after_max)
        );
    }

    #[test]
    fn the_gap_average_follows_a_changing_rate() {
        let start = Instant::now();
        let mut rate = steady_rate(Duration::from_secs(1), 50, start);
        assert_eq!(rate.typical_gap, Some(Duration::from_secs(1)));
        let mut now = start;
        for _ in 0..50 {
            now += Duration::from_millis(100);
            rate.note_data(now);
        }
        let typical = rate.typical_gap.expect("learned");
        assert!(typical < Duration::from_millis(150), "{typical:?}");
        // A replacement starts from what the old link learned.
        let mut replacement = DataRate::new(now);
        replacement.learn_from(&rate);
        assert_eq!(replacement.typical_gap, rate.typical_gap);
        assert_eq!(replacement.quiet_since, now);
    }

    #[test]
    fn unheard_streams_are_judged_after_the_bound_only_while_data_flows_elsewhere() {
        let bound = Duration::from_secs(20);
        let cap = Duration::from_secs(600);
        let start = Instant::now();
        let later = |secs: u64| start + Duration::from_secs(secs);
        // Not subscribed yet: nothing to judge.
        assert_eq!(
            judge_unheard(bound, cap, None, None, MarketPeers::Alone, later(100)),
            Unheard::Wait(None)
        );
        // Before the bound: look again at it.
        assert_eq!(
            judge_unheard(bound, cap, Some(start), None, MarketPeers::Alone, later(5)),
            Unheard::Wait(Some(later(20)))
        );
        // Past it, another link of the market delivered within the bound.
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                None,
                MarketPeers::Newest(Some(later(25))),
                later(30)
            ),
            Unheard::Silent
        );
        // Past it, this link's other streams deliver.
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                Some(later(29)),
                MarketPeers::Alone,
                later(30)
            ),
            Unheard::Silent
        );
        // The whole market is quiet: wait, until the cap.
        let verdict = judge_unheard(
            bound,
            cap,
            Some(start),
            None,
            MarketPeers::Newest(Some(later(1))),
            later(30),
        );
        assert_eq!(verdict, Unheard::Wait(Some(later(35))));
        // The market's only link is judged at the bound, as judge_silence does.
        assert_eq!(
            judge_unheard(bound, cap, Some(start), None, MarketPeers::Alone, later(20)),
            Unheard::Silent
        );
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                None,
                MarketPeers::Alone,
                later(600)
            ),
            Unheard::Silent
        );
    }

    #[test]
    fn a_link_is_silent_past_its_bound_while_the_others_deliver() {
        let settings = ConnectionSettings::default();
        let push = Some(Duration::from_secs(2));
        let last = Instant::now();
        let rate = steady_rate(Duration::from_millis(50), 100, last);
        let bound = Duration::from_secs(20);
        let others_now = |now: Instant| MarketPeers::Newest(Some(now - Duration::from_millis(5)));

        let before = last + Duration::from_secs(19);
        assert_eq!(
            judge_silence(&settings, push, &rate, others_now(before), before),
            Silence::CheckAt(last + bound)
        );
        let after = last + Duration::from_secs(21);
        assert_eq!(
            judge_silence(&settings, push, &rate, others_now(after), after),
            Silence::Silent {
                silence: Duration::from_secs(21),
                bound
            }
        );
        // Alone in its market: the rate bound alone decides.
        assert!(matches!(
            judge_silence(&settings, push, &rate, MarketPeers::Alone, after),
            Silence::Silent { .. }
        ));
        // The whole market is quiet: wait for the cap, looking again soon.
        let market_quiet = MarketPeers::Newest(Some(last));
        assert_eq!(
            judge_silence(&settings, push, &rate, market_quiet, after),
            Silence::CheckAt(after + bound / 4)
        );
        assert_eq!(
            judge_silence(&settings, push, &rate, MarketPeers::Newest(None), after),
            Silence::CheckAt(after + bound / 4)
        );
        let past_cap = last + settings.silent_after_max;
        assert_eq!(
            judge_silence(&settings, push, &rate, market_quiet, past_cap),
            Silence::Silent {
                silence: settings.silent_after_max,
                bound: settings.silent_after_max
            }
        );
        // Time the task spent not reading is not silence.
        let mut excused = rate;
        excused.excuse_until(last + Duration::from_secs(15));
        assert_eq!(
            judge_silence(&settings, push, &excused, others_now(after), after),
            Silence::CheckAt(last + Duration::from_secs(35))
        );
        // Nothing known: never judged.
        let trade_only_fresh = DataRate::new(last);
        assert_eq!(
            judge_silence(
                &settings,
                None,
                &trade_only_fresh,
                others_now(past_cap),
                past_cap
            ),
            Silence::Unknown
        );
    }

    #[tokio::test(start_paused = true)]
    async fn market_activity_counts_its_tasks_and_keeps_the_newest_data() {
        let activity = Arc::new(MarketActivity::default());
        let first = activity.join();
        assert_eq!(activity.peers(), MarketPeers::Alone);
        let second = activity.join();
        assert_eq!(activity.peers(), MarketPeers::Newest(None));
        let start = Instant::now();
        activity.note_data(start + Duration::from_secs(3));
        activity.note_data(start + Duration::from_secs(1));
        assert_eq!(
            activity.peers(),
            MarketPeers::Newest(Some(start + Duration::from_secs(3)))
        );
        drop(second);
        assert_eq!(activity.peers(), MarketPeers::Alone);
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn handshake_budget_waits_for_a_slot() {
        let budget = HandshakeBudget::new(2, Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        for _ in 0..5 {
            assert!(budget.acquire(&cancel).await);
        }
        // Five handshakes at two per minute: the fifth waits two windows.
        assert!(Instant::now() - start >= Duration::from_secs(120));
        assert!(Instant::now() - start < Duration::from_secs(121));
    }
}
