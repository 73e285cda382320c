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
//!
//! Channel policy: frames go to the recorder over a bounded channel. When it
//! is full the task waits (it stops reading, TCP pushes back on the
//! exchange). A task that cannot read cannot answer pings, so it waits at
//! most `max_backpressure_wait`: past that it closes the link, hands over the
//! frame it holds (waiting as long as needed, since no socket is open), and
//! reconnects; the disconnect is reported like any other.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::binance::decode::{decode_frame, Decoded};
use crate::binance::streams::{connection_url, stream_name};
use crate::domain::{Market, StreamKind, Symbol, TimeUs};
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
        }
    }
}

impl ConnectionSettings {
    /// Full jitter: a uniform delay in `[0, min(max, initial * 2^attempt)]`.
    pub fn backoff_delay(&self, attempt: u32, random_unit: f64) -> Duration {
        let ceiling = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        ceiling.mul_f64(random_unit.clamp(0.0, 1.0))
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
    pub streams: Vec<(Symbol, StreamKind)>,
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
        )
        .await;
        match outcome {
            DriveOutcome::Stop => return,
            DriveOutcome::Replaced(replacement) => {
                attempt = 0;
                current = Some(replacement);
            }
            DriveOutcome::Lost {
                link_number,
                lived,
                delivered_data,
                reason,
            } => {
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
                if delivered_data || lived >= settings.healthy_after {
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
    counters
        .reconnect_backoff_max_ms
        .fetch_max(ceiling_ms, std::sync::atomic::Ordering::Relaxed);
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
    let url = connection_url(&plan.ws_base_url, plan.market);
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
    info!(market = %plan.market, task = plan.task, link = number, n_streams = plan.streams.len(), "stream link established");
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
    },
}

/// Reads `link` (and, during a rotation, its replacement) until it ends.
async fn drive_link(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    budget: &HandshakeBudget,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
    mut link: Link,
    next_link: &mut u64,
) -> DriveOutcome {
    let mut replacement: Option<Link> = None;
    let mut rotation_deadline: Option<Instant> = None;
    let mut rotation_wanted = false;
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
        if rotation_wanted && replacement.is_none() {
            rotation_wanted = false;
            match open_link(plan, settings, budget, frames, cancel, next_link).await {
                None => return DriveOutcome::Stop,
                Some(Err(reason)) => {
                    warn!(market = %plan.market, %reason, "replacement link failed; keeping the current one")
                }
                Some(Ok(mut new_link)) => {
                    new_link.track_keys = true;
                    link.track_keys = true;
                    rotation_deadline = Some(Instant::now() + settings.rotation_overlap_timeout);
                    replacement = Some(new_link);
                }
            }
        }
        if let (Some(new_link), Some(deadline)) = (replacement.as_ref(), rotation_deadline) {
            let overlapped = plan.streams.iter().all(|stream| {
                matches!((new_link.first_key.get(stream), link.last_key.get(stream)), (Some(first_new), Some(last_old)) if first_new <= last_old)
            });
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
        let wake_at = [Some(dead_at), rotate_at, control_at, rotation_deadline]
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
                    rotation_wanted = true;
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
        receiving.last_frame = Instant::now();
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
        if !is_data || receiving.track_keys {
            match decode_frame(plan.market, &bytes, recv_time) {
                Ok(Decoded::ControlReply(reply)) => {
                    let refused = reply
                        .outcome
                        .err()
                        .map(|error| format!("code {}: {}", error.code, error.message));
                    receiving.handle_reply(plan.market, reply.id, refused);
                }
                Ok(Decoded::ServerShutdown { .. }) => {
                    if !from_replacement && rotation_deadline.is_none() {
                        info!(market = %plan.market, task = plan.task, link = receiving.number, "serverShutdown: rotating make-before-break");
                        rotation_wanted = true;
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
                // silence: the dead-link clock restarts once we read again.
                let receiving = if from_replacement {
                    replacement.as_mut().expect("event came from it")
                } else {
                    &mut link
                };
                receiving.last_frame = receiving.last_frame.max(Instant::now());
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
