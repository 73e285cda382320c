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
//! Channel policy: frames go to the recorder over a bounded channel, the
//! frames read back to back up to [`FRAMES_PER_MESSAGE`] a message (`hand_over`).
//! When it is full the task waits (it stops reading, TCP pushes back on the
//! exchange). A task that cannot read cannot answer pings, so it waits at
//! most `max_backpressure_wait`: past that it closes the link, hands over the
//! frames it holds (waiting as long as needed, since no socket is open), and
//! reconnects; the disconnect is reported like any other.
//!
//! This file is the connection task (drive, rotate, reconnect); `open.rs`
//! opens a link (handshake slot, dial, backoff; a rotation's dial is
//! polled beside the old link's reads), `hand_over.rs` hands the frames
//! read to the recorder (the backpressure wait and the backlog close),
//! `link.rs` holds one socket's state, `silence.rs` the pure
//! silence judgements and the market's activity, `handshake.rs` the
//! shared [`HandshakeBudget`], `settings.rs` the [`ConnectionSettings`].

mod hand_over;
mod handshake;
mod inbound;
mod link;
mod open;
mod read_clock;
mod settings;
mod silence;
mod socket;

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::binance::decode::{decode_frame, Decoded};
use crate::binance::markets::Route;
use crate::binance::streams::{is_data_stream, stream_name};
use crate::domain::{Market, StreamKind, Symbol, TimeUs};
use crate::metrics::Counters;
use hand_over::{hand_over, lost};
pub use handshake::HandshakeBudget;
pub use inbound::{FramePayload, Inbound, FRAMES_PER_MESSAGE};
pub use link::LinkLost;
pub use link::OpenLinks;
use link::{stream_key_of, Link, LinkEvent};
use open::{backoff, dial, dialed, link_up, open_link, url_stream, Dialing, RouteChoice};
pub use settings::ConnectionSettings;
use silence::soonest_kline_close;
pub use silence::{
    judge_silence, judge_unheard, kline_speaks_within, silence_bound, DataRate, MarketActivity,
    MarketPeers, Silence, Unheard,
};

/// The symbols of a market whose streams are dropped for good (delivered
/// contracts): the runtime sends the whole set, each connection task
/// drops those streams from its links.
pub type RetiredSymbols = tokio::sync::watch::Receiver<Arc<std::collections::BTreeSet<Symbol>>>;

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
    /// Symbols whose streams this task drops (delivered contracts).
    pub retired: RetiredSymbols,
    /// The market's links open now, each counted while it exists.
    pub open_links: Arc<OpenLinks>,
}

impl ConnectionPlan {
    /// Drops the streams of retired symbols; whether any was dropped.
    fn drop_retired(&mut self) -> bool {
        let retired = self.retired.borrow_and_update().clone();
        let n_before = self.streams.len();
        self.streams.retain(|(symbol, _)| !retired.contains(symbol));
        self.streams.len() != n_before
    }
}

/// The local wall clock in epoch µs: the `recv_time` of a frame, read at
/// every socket read that brings bytes (`read_clock.rs`), so without
/// chrono's calendar arithmetic (a date made only to be turned back into a
/// count); a clock before 1970 reads as negative µs, as chrono's would.
pub fn now_us() -> TimeUs {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN),
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
    let mut routes = RouteChoice::new(plan.route);
    let mut attempt: u32 = 0;
    // Handshakes in a row whose URL was refused: which stream the next
    // URL names (`url_stream`); three in a row try the other route.
    let mut url_refusals: u32 = 0;
    let mut next_link: u64 = 1;
    let mut current: Option<Link> = None;
    loop {
        plan.drop_retired();
        if plan.streams.is_empty() {
            // Every stream of this task is retired: nothing to connect for.
            if let Some(mut link) = current.take() {
                let _ = link.socket.close().await;
            }
            info!(market = %plan.market, task = plan.task, "every stream of this connection is retired (delivered contracts); connection closed");
            cancel.cancelled().await;
            return;
        }
        let link = match current.take() {
            Some(link) => link,
            None => {
                let named = url_stream(&plan, url_refusals);
                match open_link(
                    &plan,
                    &settings,
                    &budget,
                    &frames,
                    &cancel,
                    &mut next_link,
                    named,
                )
                .await
                {
                    Some(Ok(link)) => link,
                    Some(Err(reason)) => {
                        if reason.url_refused() {
                            url_refusals += 1;
                            let next = url_stream(&plan, url_refusals).map_or_else(
                                || "none".to_owned(),
                                |(symbol, kind)| stream_name(&symbol, kind),
                            );
                            warn!(market = %plan.market, task = plan.task, route = %plan.route, %reason, next_url_stream = %next, "handshake refused its URL: the next one names another stream");
                            if url_refusals.is_multiple_of(3) && routes.may_switch(&plan) {
                                routes.switch(&mut plan, &counters);
                            }
                        }
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
        let may_reroute = routes.may_switch(&plan);
        let outcome = drive_link(
            &mut plan,
            &settings,
            &budget,
            &frames,
            &cancel,
            link,
            &mut next_link,
            may_reroute,
            url_refusals,
            &counters,
        )
        .await;
        match outcome {
            DriveOutcome::Stop => return,
            DriveOutcome::Retired => continue,
            DriveOutcome::Replaced(mut replacement) => {
                if replacement.delivered_data {
                    routes.delivered(&plan);
                }
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
                    routes.switch(&mut plan, &counters);
                } else if delivered_data {
                    routes.delivered(&plan);
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
    /// Every stream of the plan was retired (delivered contracts): the
    /// links are closed and the task has nothing left to connect for.
    Retired,
    Replaced(Link),
    Lost {
        link_number: u64,
        lived: Duration,
        delivered_data: bool,
        reason: LinkLost,
        /// Every stream of the link was subscribed but silent: try the
        /// other route.
        reroute: bool,
    },
}

/// Reads `link` (and, during a rotation, its replacement) until it ends.
#[allow(clippy::too_many_arguments)]
async fn drive_link(
    plan: &mut ConnectionPlan,
    settings: &ConnectionSettings,
    budget: &HandshakeBudget,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
    mut link: Link,
    next_link: &mut u64,
    may_reroute: bool,
    url_refusals: u32,
    counters: &Counters,
) -> DriveOutcome {
    let mut replacement: Option<Link> = None;
    let mut rotation_deadline: Option<Instant> = None;
    // A replacement that heard `serverShutdown` before it took over is
    // rotated again at once: its server is about to close it.
    let mut rotation_wanted: Option<RotationCause> =
        link.shutdown_announced.then_some(RotationCause::Scheduled);
    // A rotation waiting for a handshake slot: when one frees.
    let mut rotation_not_before: Option<Instant> = None;
    // The replacement's dial under way, and why it is wanted.
    let mut dialing: Option<Dialing> = None;
    let mut dialing_cause = RotationCause::Scheduled;
    let kline_close_within = soonest_kline_close(&plan.streams);
    // One timer for the link's life, moved only when something falls due
    // before it is set for: a frame only pushes the dead-link deadline
    // later, so most frames leave it alone (a timer per frame cost more
    // than the frame). A wake that finds nothing due re-checks and loops.
    let wake = tokio::time::sleep_until(Instant::now() + settings.dead_after);
    tokio::pin!(wake);
    let mut ready: Option<LinkEvent> = None;
    // When the first frame of the frames read back to back was taken: the
    // liveness time of all of them (they came in one read, or microseconds
    // apart), so a frame of a burst reads the monotonic clock only once per
    // turn. `recv_time` is the time of the socket read that completed the
    // frame (`read_clock.rs`).
    let mut turn_started = Instant::now();
    let mut activity_noted: Option<Instant> = None;
    let mut ready_in_a_row = 0;
    // Frames taken from the sockets and not yet handed to the recorder:
    // the frames of a burst go as one message (see `hand_over`).
    let mut held: Vec<(TimeUs, FramePayload)> = Vec::with_capacity(FRAMES_PER_MESSAGE);
    // The waits on the stop and on retirements live as long as the link,
    // not one per turn: each made anew joined (and, dropped, left) its
    // notifier's waiting list under a lock, at every frame of a live feed.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let retirements = retirements(plan.retired.clone());
    tokio::pin!(retirements);
    loop {
        let next = ready.take();
        // Frames taken go to the recorder before anything but the next
        // ready data frame is handled (a link lost, a judgement, a wait),
        // and once a message's worth wait.
        let next_is_data = matches!(
            next,
            Some(LinkEvent::Frame(Message::Text(_) | Message::Binary(_)))
        );
        if !held.is_empty() && (!next_is_data || held.len() >= FRAMES_PER_MESSAGE) {
            let handed = hand_over(
                &mut held,
                plan,
                settings,
                frames,
                (&mut link, &mut replacement),
                counters,
            );
            if let Err(outcome) = handed.await {
                return outcome;
            }
        }
        // A frame already read on this turn's way out is handled without
        // the turn's judgements (see `READY_FRAMES_PER_TURN`).
        let (event, from_replacement, chained) = if let Some(event) = next {
            (event, false, true)
        } else {
            if let Err(reason) = link.send_due_control(settings).await {
                return lost(&link, reason);
            }
            if let Some(new_link) = replacement.as_mut() {
                if let Err(reason) = new_link.send_due_control(settings).await {
                    warn!(market = %plan.market, %reason, "replacement link failed; keeping the current one");
                    replacement = None;
                    rotation_deadline = None;
                }
            }
            if let Some(cause) = rotation_wanted
                .take()
                .filter(|_| replacement.is_none() && dialing.is_none())
            {
                // A replacement takes a handshake slot only if one is free:
                // waiting for one here (minutes after a reconnect storm)
                // would stop reading the old link and leave its pings
                // unanswered. It is tried again when a slot frees. The dial
                // itself is polled beside the old link's reads, below.
                let slot = match rotation_not_before {
                    Some(at) if Instant::now() < at => Err(at),
                    _ => budget.try_acquire().await,
                };
                match slot {
                    Err(free_at) => {
                        if rotation_not_before != Some(free_at) {
                            debug!(market = %plan.market, task = plan.task, wait_ms = free_at.saturating_duration_since(Instant::now()).as_millis() as u64, "handshake budget spent: the rotation waits, the old link reads on");
                        }
                        rotation_not_before = Some(free_at);
                        rotation_wanted = Some(cause);
                    }
                    Ok(()) => {
                        rotation_not_before = None;
                        dialing = Some(dial(plan, settings, url_stream(plan, url_refusals)));
                        dialing_cause = cause;
                    }
                }
            }
            if let (Some(new_link), Some(deadline)) = (replacement.as_ref(), rotation_deadline) {
                let overlapped = plan.streams.iter().all(|stream| {
                    matches!((new_link.first_key.get(stream), link.last_key.get(stream)), (Some(first_new), Some(last_old)) if first_new <= last_old)
                });
                // A silent link has nothing to overlap: what it withheld is
                // lost on it, and gap fill fetches it from REST.
                let overlapped =
                    overlapped || (new_link.replaces_silent && new_link.delivered_data);
                if overlapped || Instant::now() >= deadline {
                    info!(market = %plan.market, task = plan.task, old = link.number, new = new_link.number, overlapped, "rotation done: closing the old link");
                    let _ = link.socket.close().await;
                    let mut new_link = replacement.take().expect("checked above");
                    new_link.track_keys = false;
                    return DriveOutcome::Replaced(new_link);
                }
            }

            // A link being replaced (or whose replacement is being dialed)
            // is not judged again, nor rotated.
            let rotating = replacement.is_some() || dialing.is_some();
            // One reading of the clock for every judgement of this turn.
            let now = Instant::now();
            let dead_at = link.last_frame + settings.dead_after;
            let rotate_at = (!rotating).then_some(link.opened + settings.rotate_after);
            let control_at = link
                .control_deadline()
                .into_iter()
                .chain(replacement.as_ref().and_then(Link::control_deadline))
                .min();
            // Streams never heard are judged first: a link all of whose
            // streams are unheard is a route question before a silence one.
            let judging_unheard = !rotating && !link.unheard_judged && !link.unheard.is_empty();
            let unheard_bound = if judging_unheard {
                link.unheard_bound(settings.silent_after_min, settings.silent_after_max)
            } else {
                settings.silent_after_min
            };
            let unheard_at = match judging_unheard.then(|| {
                judge_unheard(
                    unheard_bound,
                    settings.silent_after_max,
                    link.subscribed_at,
                    link.last_data,
                    plan.activity.peers(),
                    now,
                )
            }) {
                Some(Unheard::Wait(at)) => at,
                Some(Unheard::Silent) => Some(now),
                None => None,
            };
            let all_unheard = link.awaiting_route_verdict(plan.streams.len());
            let silence_at = match (!rotating && !all_unheard).then(|| {
                judge_silence(
                    settings,
                    kline_close_within,
                    &link.rate,
                    plan.activity.peers(),
                    now,
                )
            }) {
                Some(Silence::CheckAt(at)) => Some(at),
                Some(Silence::Silent { .. }) => Some(now),
                Some(Silence::Unknown) | None => None,
            };
            let wake_at = [
                Some(dead_at),
                rotate_at,
                rotation_not_before.filter(|_| rotation_wanted.is_some()),
                control_at,
                rotation_deadline,
                silence_at,
                unheard_at,
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("dead_at is always set");
            if wake_at < wake.deadline() || wake.is_elapsed() {
                wake.as_mut().reset(wake_at);
            }

            tokio::select! {
                Some(()) = retirements.next() => {
                    if !plan.drop_retired() {
                        continue;
                    }
                    if plan.streams.is_empty() {
                        let _ = link.socket.close().await;
                        if let Some(mut new_link) = replacement {
                            let _ = new_link.socket.close().await;
                        }
                        return DriveOutcome::Retired;
                    }
                    // The others move to a link without the retired streams,
                    // make-before-break, so they lose nothing.
                    if !rotating {
                        info!(market = %plan.market, task = plan.task, link = link.number, "streams retired (delivered contracts): moving the others to a link without them");
                        rotation_wanted = Some(RotationCause::Scheduled);
                    }
                    continue;
                }
                () = &mut cancelled => {
                    let _ = link.socket.close().await;
                    if let Some(mut new_link) = replacement {
                        let _ = new_link.socket.close().await;
                    }
                    return DriveOutcome::Stop;
                }
                event = link.next_event() => (event, false, false),
                event = next_replacement_event(&mut replacement) => (event, true, false),
                outcome = dialed(&mut dialing) => {
                    dialing = None;
                    match outcome {
                        Err(reason) => {
                            warn!(market = %plan.market, %reason, "replacement link failed; keeping the current one")
                        }
                        Ok(dialed) => {
                            let Some(mut new_link) = link_up(plan, settings, frames, dialed, next_link).await else {
                                return DriveOutcome::Stop;
                            };
                            new_link.track_keys = true;
                            link.track_keys = true;
                            new_link.rate.learn_from(&link.rate);
                            new_link.replaces_silent = dialing_cause == RotationCause::Silence;
                            rotation_deadline = Some(Instant::now() + settings.rotation_overlap_timeout);
                            replacement = Some(new_link);
                        }
                    }
                    continue;
                }
                _ = &mut wake => {
                    let now = Instant::now();
                    if now >= link.last_frame + settings.dead_after {
                        let reason = LinkLost::Dead(settings.dead_after);
                        if let Some(new_link) = replacement.take() {
                            let _ = link.socket.close().await;
                            warn!(market = %plan.market, %reason, "old link died during rotation; the replacement takes over");
                            return DriveOutcome::Replaced(new_link);
                        }
                        return lost(&link, reason);
                    }
                    if !rotating && now >= link.opened + settings.rotate_after {
                        info!(market = %plan.market, task = plan.task, link = link.number, "link lifetime ending: rotating make-before-break");
                        rotation_wanted = Some(RotationCause::Scheduled);
                    }
                    if judging_unheard
                        && judge_unheard(unheard_bound, settings.silent_after_max, link.subscribed_at, link.last_data, plan.activity.peers(), now) == Unheard::Silent
                    {
                        link.unheard_judged = true;
                        Counters::add(&counters.streams_subscribed_silent, link.unheard.len() as u64);
                        for stream in &link.unheard {
                            warn!(market = %plan.market, task = plan.task, link = link.number, route = %plan.route, %stream, bound_ms = unheard_bound.as_millis() as u64, "stream subscribed but silent while the market delivers");
                        }
                        if all_unheard && may_reroute {
                            let _ = link.socket.close().await;
                            let reason = LinkLost::SilentRoute(plan.route);
                            return DriveOutcome::Lost {
                                link_number: link.number,
                                lived: link.opened.elapsed(),
                                delivered_data: link.delivered_data,
                                reason,
                                reroute: true,
                            };
                        }
                        // Asked once more, on this route: a SUBSCRIBE or
                        // its reply lost on the way looks the same.
                        let n_asked = link.resubscribe_unheard(&plan.streams, settings.subscribe_batch);
                        info!(market = %plan.market, task = plan.task, link = link.number, n_streams = n_asked, "subscribing the silent streams once more");
                    }
                    if !rotating && rotation_wanted.is_none() && !link.awaiting_route_verdict(plan.streams.len()) {
                        let verdict = judge_silence(settings, kline_close_within, &link.rate, plan.activity.peers(), now);
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
                return lost(&link, reason);
            }
            LinkEvent::Frame(Message::Close(frame)) => {
                let reason = LinkLost::Closed(frame);
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
                return lost(&link, reason);
            }
            LinkEvent::Frame(message) => message,
        };
        let receiving = if from_replacement {
            replacement.as_mut().expect("event came from it")
        } else {
            &mut link
        };
        if !chained {
            turn_started = Instant::now();
        }
        let received_at = turn_started;
        receiving.last_frame = received_at;
        // When the socket read that completed the frame returned.
        let recv_time = receiving.socket.last_read_us();
        let payload = match message {
            Message::Text(text) => FramePayload::Text(text),
            Message::Binary(bytes) => FramePayload::Binary(bytes),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => continue,
        };
        let bytes = payload.as_bytes();
        // Control replies and serverShutdown are not in the combined
        // wrapper; a rotation also needs the keys of data frames.
        let stream = payload.stream_name();
        let is_data = is_data_stream(stream);
        receiving.delivered_data |= is_data;
        if is_data {
            receiving.note_data_frame(stream, received_at);
            receiving.rate.note_data(received_at);
            // Shared by the market's tasks (an atomic): once per time.
            if activity_noted != Some(received_at) {
                plan.activity.note_data(received_at);
                activity_noted = Some(received_at);
            }
        }
        if !is_data || receiving.track_keys {
            match decode_frame(plan.market, bytes, recv_time) {
                Ok(Decoded::ControlReply(reply)) => {
                    let refused = reply
                        .outcome
                        .err()
                        .map(|error| format!("code {}: {}", error.code, error.message));
                    receiving.handle_reply(plan.market, reply.id, refused);
                    receiving.note_subscribed();
                }
                Ok(Decoded::ServerShutdown { .. }) => {
                    receiving.shutdown_announced = true;
                    if from_replacement {
                        info!(market = %plan.market, task = plan.task, link = receiving.number, "serverShutdown on the replacement: rotating it again once it takes over");
                    } else if rotation_deadline.is_none() {
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
        held.push((recv_time, payload));
        if replacement.is_none() && ready_in_a_row < READY_FRAMES_PER_TURN {
            // Polled once, with this task's own waker: a socket with
            // nothing ready keeps it for the next turn's `select!`, which
            // registers the same one (a no-op waker, swapped with the
            // task's at every frame, cost a waker clone and drop a frame).
            ready = std::future::poll_fn(|context| {
                Poll::Ready(match link.poll_event(context) {
                    Poll::Ready(event) => Some(event),
                    Poll::Pending => None,
                })
            })
            .await;
        }
        ready_in_a_row = if ready.is_some() {
            ready_in_a_row + 1
        } else {
            0
        };
    }
}

/// How many frames already read from the socket are handled one after the
/// other without the turn's judgements (control sends, rotation, silence,
/// the `select!` over retirement, cancellation and timers): in a burst those
/// cost more than the frame. Every judgement is about time or a rare event,
/// so putting it off for this many frames (microseconds) changes nothing.
const READY_FRAMES_PER_TURN: u32 = 64;

/// Each change of the retired symbols, from a receiver of its own (the
/// plan's reads the value): one wait kept across turns. Ends when the
/// sender is gone.
fn retirements(retired: RetiredSymbols) -> impl Stream<Item = ()> {
    futures_util::stream::unfold(retired, |mut retired| async move {
        retired.changed().await.ok()?;
        Some(((), retired))
    })
    .fuse()
}

async fn next_replacement_event(replacement: &mut Option<Link>) -> LinkEvent {
    match replacement.as_mut() {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_us_reads_the_wall_clock_as_chrono_does() {
        let before = chrono::Utc::now().timestamp_micros();
        let now = now_us();
        let after = chrono::Utc::now().timestamp_micros();
        assert!((before..=after).contains(&now), "{before} {now} {after}");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let settings = ConnectionSettings::default();
        assert_eq!(settings.backoff_delay(0, 1.0), Duration::from_millis(250));
        assert_eq!(settings.backoff_delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(settings.backoff_delay(30, 1.0), Duration::from_secs(30));
        assert_eq!(settings.backoff_delay(5, 0.0), Duration::ZERO);
        assert_eq!(settings.backoff_delay(2, 0.5), Duration::from_millis(500));
    }
}
