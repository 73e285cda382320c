//! One open socket of a connection task and what is known about it: the
//! SUBSCRIBE requests to send (paced) and awaiting replies, the keys seen
//! per stream for the rotation overlap check, its data rate, and which
//! streams are still unheard. The task in `mod.rs` drives it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::warn;

use super::silence::DataRate;
use super::socket::Socket;
use super::ConnectionSettings;
use crate::binance::decode::Decoded;
use crate::binance::markets::Route;
use crate::binance::streams::{parse_stream_name, stream_name};
use crate::domain::{Market, StreamKind, Symbol};

/// The stream a frame belongs to and its ordering key (trade id, aggTrade
/// id, kline event time), for the rotation overlap check.
pub(super) fn stream_key_of(decoded: &Decoded) -> Option<((Symbol, StreamKind), i64)> {
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

/// The links of one market open now, shared by its connection tasks and
/// read by the runtime (`links_up`, `/status`, `/health`). The links count
/// themselves: one is added when a link opens and taken back when it is
/// dropped, whichever way it ends (lost, replaced in a rotation, closed
/// because every stream it carried was retired at a delivery, or stopped),
/// so no path can forget to lower the count.
#[derive(Debug, Default)]
pub struct OpenLinks(AtomicU64);

impl OpenLinks {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One link's place in [`OpenLinks`], given back on drop.
#[derive(Debug)]
pub(super) struct CountedLink(Arc<OpenLinks>);

impl CountedLink {
    pub(super) fn new(open_links: &Arc<OpenLinks>) -> CountedLink {
        open_links.0.fetch_add(1, Ordering::Relaxed);
        CountedLink(open_links.clone())
    }
}

impl Drop for CountedLink {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open socket and what we know about it.
pub(super) struct Link {
    pub(super) number: u64,
    pub(super) socket: Socket,
    pub(super) opened: Instant,
    pub(super) last_frame: Instant,
    /// SUBSCRIBE requests not sent yet, and those sent awaiting a reply
    /// (by id, which grows with each request: the oldest first).
    pub(super) to_send: VecDeque<(u64, Vec<(Symbol, StreamKind)>)>,
    pub(super) awaiting: BTreeMap<u64, Awaiting>,
    /// The id of the next request made after the first ones: ids are never
    /// used twice on a link, so a late reply cannot answer a newer request.
    next_id: u64,
    pub(super) next_send: Instant,
    /// Per stream: first and last ordering key seen on this link.
    pub(super) first_key: BTreeMap<(Symbol, StreamKind), i64>,
    pub(super) last_key: BTreeMap<(Symbol, StreamKind), i64>,
    /// Keys are tracked only while a rotation needs them.
    pub(super) track_keys: bool,
    /// A data frame of a subscribed stream arrived: the link worked, and
    /// losing it does not climb the reconnect backoff.
    pub(super) delivered_data: bool,
    pub(super) rate: DataRate,
    /// This link replaces a silent one: the old link is closed as soon as
    /// this one delivers, as there is nothing to overlap.
    pub(super) replaces_silent: bool,
    /// Names of the streams subscribed here that delivered nothing yet
    /// (emptied as they deliver; then no frame is looked at for it).
    pub(super) unheard: BTreeSet<String>,
    /// When the last SUBSCRIBE was acknowledged: unheard streams are
    /// judged from then on ([`judge_unheard`](super::judge_unheard)), once.
    pub(super) subscribed_at: Option<Instant>,
    pub(super) unheard_judged: bool,
    /// The newest data frame of this link.
    pub(super) last_data: Option<Instant>,
    /// The exchange announced it will close this link (`serverShutdown`):
    /// it is replaced make-before-break as soon as it is the one read (a
    /// replacement that heard it is rotated again once it takes over).
    pub(super) shutdown_announced: bool,
    /// Counted in its market's [`OpenLinks`] while it exists.
    _counted: CountedLink,
}

/// A SUBSCRIBE sent and not answered yet.
#[derive(Debug)]
pub(super) struct Awaiting {
    pub(super) sent_at: Instant,
    pub(super) batch: Vec<(Symbol, StreamKind)>,
}

/// How long a SUBSCRIBE may go unanswered. Past it the request is taken as
/// made: its streams are then judged by what they deliver (unheard ones
/// as on a wrong route, `judge_unheard`), so an exchange that drops a
/// reply cannot leave the link waiting for it until its 24 hours end.
pub(super) const SUBSCRIBE_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link read nothing more.
pub(super) enum LinkEvent {
    Frame(Message),
    Ended(LinkLost),
}

/// Why a link was lost or could not be made: logged, told to the recorder
/// with the link's streams, and the reconnect backs off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkLost {
    #[error("connect timed out")]
    ConnectTimedOut,
    #[error("connect failed: {0}")]
    ConnectFailed(Arc<tungstenite::Error>),
    #[error("cannot subscribe: {0}")]
    Subscribe(Arc<tungstenite::Error>),
    #[error("read error: {0}")]
    Read(Arc<tungstenite::Error>),
    #[error("stream ended")]
    Ended,
    #[error("closed by server: {0:?}")]
    Closed(Option<CloseFrame>),
    /// No frame at all, not even a ping, for this long.
    #[error("no frame for {0:?}: dead link")]
    Dead(Duration),
    /// Every stream subscribed and none delivered while the market did.
    #[error("every stream silent on route {0}")]
    SilentRoute(Route),
    /// The recorder took no frame for too long: the link is given up
    /// rather than miss its pings.
    #[error("recorder backlog (backpressure wait exceeded)")]
    Backlog,
}

impl LinkLost {
    /// The handshake was answered 400 or 404: the URL itself, its path or
    /// the stream it names, is refused (an exchange that does not know the
    /// stream on that path), not the moment. Trying the same URL again is
    /// pointless; another stream, none, or the other route may do.
    pub(super) fn url_refused(&self) -> bool {
        matches!(self, LinkLost::ConnectFailed(error)
            if matches!(error.as_ref(), tungstenite::Error::Http(response)
                if matches!(response.status().as_u16(), 400 | 404)))
    }
}

/// The SUBSCRIBE requests a new link sends, ids from 1: every stream but
/// the one its URL named, which the handshake itself subscribed (asked
/// again, it would count twice against a server that does not merge
/// repeats, and a USD-M link carries the 200 its limit allows).
pub(super) fn subscribe_batches(
    streams: &[(Symbol, StreamKind)],
    named_in_url: Option<&(Symbol, StreamKind)>,
    batch: usize,
) -> VecDeque<(u64, Vec<(Symbol, StreamKind)>)> {
    let to_subscribe: Vec<(Symbol, StreamKind)> = streams
        .iter()
        .filter(|stream| Some(*stream) != named_in_url)
        .cloned()
        .collect();
    to_subscribe
        .chunks(batch.max(1))
        .enumerate()
        .map(|(index, batch)| (index as u64 + 1, batch.to_vec()))
        .collect()
}

impl Link {
    pub(super) fn new(
        number: u64,
        socket: Socket,
        streams: &[(Symbol, StreamKind)],
        named_in_url: Option<&(Symbol, StreamKind)>,
        settings: &ConnectionSettings,
        open_links: &Arc<OpenLinks>,
    ) -> Link {
        let now = Instant::now();
        let to_send = subscribe_batches(streams, named_in_url, settings.subscribe_batch);
        let next_id = to_send.len() as u64 + 1;
        // A link whose URL named its only stream has nothing to subscribe.
        let subscribed_at = to_send.is_empty().then_some(now);
        Link {
            number,
            socket,
            opened: now,
            last_frame: now,
            to_send,
            awaiting: BTreeMap::new(),
            next_id,
            next_send: now,
            first_key: BTreeMap::new(),
            last_key: BTreeMap::new(),
            track_keys: false,
            delivered_data: false,
            rate: DataRate::new(now),
            replaces_silent: false,
            shutdown_announced: false,
            unheard: streams
                .iter()
                .map(|(symbol, kind)| stream_name(symbol, *kind))
                .collect(),
            subscribed_at,
            unheard_judged: false,
            last_data: None,
            _counted: CountedLink::new(open_links),
        }
    }

    /// Notes a data frame of `stream`: it is heard, and the link delivered.
    pub(super) fn note_data_frame(&mut self, stream: Option<&str>, now: Instant) {
        self.last_data = Some(now);
        if let Some(name) = stream.filter(|_| !self.unheard.is_empty()) {
            self.unheard.remove(name);
        }
    }

    /// Every stream of the link is unheard and not judged yet: a route
    /// question, judged by [`judge_unheard`](super::judge_unheard) before any silence verdict.
    pub(super) fn awaiting_route_verdict(&self, n_streams: usize) -> bool {
        !self.unheard_judged && self.unheard.len() >= n_streams
    }

    /// Sets `subscribed_at` once every SUBSCRIBE was sent and answered.
    pub(super) fn note_subscribed(&mut self) {
        if self.subscribed_at.is_none() && self.to_send.is_empty() && self.awaiting.is_empty() {
            self.subscribed_at = Some(Instant::now());
        }
    }

    pub(super) async fn next_event(&mut self) -> LinkEvent {
        std::future::poll_fn(|context| self.poll_event(context)).await
    }

    /// The next event if the socket has one ready; else the task's waker
    /// is left with the socket (the same one its `select!` leaves).
    pub(super) fn poll_event(&mut self, context: &mut Context<'_>) -> Poll<LinkEvent> {
        self.socket.poll_next(context).map(|next| match next {
            None => LinkEvent::Ended(LinkLost::Ended),
            Some(Err(error)) => LinkEvent::Ended(LinkLost::Read(Arc::new(error))),
            Some(Ok(message)) => LinkEvent::Frame(message),
        })
    }

    /// Sends the next paced SUBSCRIBE if one is due.
    pub(super) async fn send_due_control(
        &mut self,
        settings: &ConnectionSettings,
    ) -> Result<(), LinkLost> {
        // Checked before the clock: this runs once per frame.
        if self.to_send.is_empty() && self.awaiting.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.give_up_unanswered(now);
        if self.to_send.is_empty() || now < self.next_send {
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
            .map_err(|error| LinkLost::Subscribe(Arc::new(error)))?;
        self.awaiting.insert(
            id,
            Awaiting {
                sent_at: Instant::now(),
                batch,
            },
        );
        self.next_send =
            Instant::now() + Duration::from_secs(1) / settings.max_control_per_sec.max(1);
        Ok(())
    }

    /// When a paced SUBSCRIBE is due, or the oldest unanswered one is
    /// given up ([`SUBSCRIBE_REPLY_TIMEOUT`]), whichever comes first.
    pub(super) fn control_deadline(&self) -> Option<Instant> {
        let send_at = (!self.to_send.is_empty()).then_some(self.next_send);
        let give_up_at = self
            .awaiting
            .values()
            .map(|awaiting| awaiting.sent_at + SUBSCRIBE_REPLY_TIMEOUT)
            .min();
        send_at.into_iter().chain(give_up_at).min()
    }

    /// Takes every SUBSCRIBE unanswered for [`SUBSCRIBE_REPLY_TIMEOUT`] at
    /// `now` as made, and says so once per request.
    fn give_up_unanswered(&mut self, now: Instant) {
        let before = self.awaiting.len();
        self.awaiting.retain(|id, awaiting| {
            let waited = now.saturating_duration_since(awaiting.sent_at);
            let answered_in_time = waited < SUBSCRIBE_REPLY_TIMEOUT;
            if !answered_in_time {
                warn!(link = self.number, id, n_streams = awaiting.batch.len(), waited_ms = waited.as_millis() as u64, "subscription not answered; taken as made, its streams judged by what they deliver");
            }
            answered_in_time
        });
        if self.awaiting.len() < before {
            self.note_subscribed();
        }
    }

    /// Handles a control reply addressed to this link's SUBSCRIBE requests.
    pub(super) fn handle_reply(
        &mut self,
        market: Market,
        id: Option<i64>,
        refused: Option<String>,
    ) {
        // Replies come in the order of the requests: one without an id (an
        // error body of the reference's table) answers the oldest.
        let id = match id {
            Some(id) => u64::try_from(id).ok(),
            None => self.awaiting.keys().next().copied(),
        };
        let Some(Awaiting { batch, .. }) = id.and_then(|id| self.awaiting.remove(&id)) else {
            return;
        };
        let id = id.expect("found by it");
        let Some(reason) = refused else { return };
        if batch.len() == 1 {
            let (symbol, kind) = &batch[0];
            warn!(%market, stream = %stream_name(symbol, *kind), %reason, "subscription refused; the other streams go on");
            return;
        }
        // Find the bad stream(s): ask again one by one.
        warn!(%market, id, n_streams = batch.len(), %reason, "subscription batch refused; retrying stream by stream");
        for stream in batch {
            self.queue_subscribe(vec![stream]);
        }
    }

    /// Queues a SUBSCRIBE of `batch` under a new id.
    fn queue_subscribe(&mut self, batch: Vec<(Symbol, StreamKind)>) {
        let id = self.next_id;
        self.next_id += 1;
        self.to_send.push_back((id, batch));
    }

    /// How long after the last acknowledged SUBSCRIBE the unheard streams
    /// are judged: `floor`, or, when all of them are kline streams, `floor`
    /// after the soonest of their closes (a quiet symbol's kline stream
    /// sends nothing before its interval ends:
    /// [`kline_speaks_within`](super::kline_speaks_within)), at most `cap`.
    /// Read from the names, without allocating: it is asked at every turn
    /// while streams are unheard.
    pub(super) fn unheard_bound(&self, floor: Duration, cap: Duration) -> Duration {
        let mut soonest_close: Option<Duration> = None;
        for name in &self.unheard {
            let Some((_, StreamKind::Kline(interval))) = parse_stream_name(name) else {
                return floor;
            };
            let within = super::kline_speaks_within(interval);
            soonest_close = Some(soonest_close.map_or(within, |soonest| soonest.min(within)));
        }
        soonest_close.map_or(floor, |close| {
            floor.saturating_add(close).min(cap.max(floor))
        })
    }

    /// Asks again for the streams of `streams` that delivered nothing, in
    /// batches of `batch_size`: a SUBSCRIBE or its reply lost on the way
    /// looks the same as a stream that never delivers. Returns how many.
    pub(super) fn resubscribe_unheard(
        &mut self,
        streams: &[(Symbol, StreamKind)],
        batch_size: usize,
    ) -> usize {
        let unheard: Vec<(Symbol, StreamKind)> = streams
            .iter()
            .filter(|(symbol, kind)| self.unheard.contains(&stream_name(symbol, *kind)))
            .cloned()
            .collect();
        for batch in unheard.chunks(batch_size.max(1)) {
            self.queue_subscribe(batch.to_vec());
        }
        unheard.len()
    }

    pub(super) fn note_key(&mut self, stream: (Symbol, StreamKind), key: i64) {
        self.first_key.entry(stream.clone()).or_insert(key);
        let last = self.last_key.entry(stream).or_insert(key);
        *last = (*last).max(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_named_in_the_url_is_not_subscribed_again() {
        let streams: Vec<(Symbol, StreamKind)> = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
            .into_iter()
            .map(|name| {
                (
                    Symbol::new(name).expect("a valid symbol"),
                    StreamKind::Trade,
                )
            })
            .collect();
        let batches = subscribe_batches(&streams, Some(&streams[0]), 1);
        let asked: Vec<(u64, Vec<(Symbol, StreamKind)>)> = batches.into_iter().collect();
        assert_eq!(
            asked,
            vec![(1, vec![streams[1].clone()]), (2, vec![streams[2].clone()])]
        );
        // A bare `/stream`: every stream by SUBSCRIBE.
        assert_eq!(subscribe_batches(&streams, None, 2).len(), 2);
        // A URL naming the only stream leaves nothing to ask.
        assert!(subscribe_batches(&streams[..1], Some(&streams[0]), 100).is_empty());
    }
}
