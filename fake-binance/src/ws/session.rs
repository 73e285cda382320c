//! One open connection's task: it owns the socket, writes what the driver
//! queued for it, pings on schedule, answers control messages, and closes
//! when a protocol limit is broken or a fault says so.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{sleep_until, timeout, Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::control::process_control;
use super::handshake::ConnectRequest;
use super::served_streams;
use crate::events::{ConnectionCommand, InjectedFrame, Outgoing, StreamEvent};
use crate::shared::{lock, Shared};
use crate::streams::Route;
use crate::wire::{self, TimeUnit};

/// How many queued frames are written before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 512;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEnd {
    ClientGone,
    ServerStopping,
    PongTimeout,
    Lifetime,
    RateLimit,
    TooManyStreams,
    DroppedByFault,
    ServerShutdownEvent,
    WriteFailed,
}

pub(super) struct Session {
    shared: Arc<Shared>,
    websocket: WebSocketStream<TcpStream>,
    route: Route,
    connection_id: u64,
    combined: bool,
    unit: TimeUnit,
    queue: mpsc::UnboundedReceiver<Outgoing>,
    commands: broadcast::Receiver<ConnectionCommand>,
    incoming_times: VecDeque<Instant>,
    /// Payload and send time of pings not answered yet, oldest first.
    outstanding_pings: VecDeque<(Vec<u8>, Instant)>,
    pings_sent: u64,
    /// A `SilenceConnection` fault chose this connection: its queued frames
    /// are dropped, while pings, pongs and control replies go on.
    silenced: bool,
}

impl Session {
    /// A session for the connection `connection_id`, registered with the
    /// driver, that asked for `connect_request`.
    pub(super) fn new(
        shared: Arc<Shared>,
        websocket: WebSocketStream<TcpStream>,
        connect_request: &ConnectRequest,
        connection_id: u64,
        queue: mpsc::UnboundedReceiver<Outgoing>,
        commands: broadcast::Receiver<ConnectionCommand>,
    ) -> Session {
        Session {
            shared,
            websocket,
            route: connect_request.route,
            connection_id,
            combined: connect_request.combined,
            unit: connect_request.unit,
            queue,
            commands,
            incoming_times: VecDeque::new(),
            outstanding_pings: VecDeque::new(),
            pings_sent: 0,
            silenced: false,
        }
    }

    pub(super) async fn run(
        &mut self,
        cancel: CancellationToken,
        initial_stream_count: usize,
    ) -> SessionEnd {
        let limits = self.shared.config.limits.clone();
        if initial_stream_count > limits.max_streams_per_connection {
            self.shared
                .counters
                .update(|counters| counters.ws_too_many_streams_closes += 1);
            self.close(CloseCode::Policy, "Too many streams").await;
            return SessionEnd::TooManyStreams;
        }
        let opened_at = Instant::now();
        let lifetime_deadline = opened_at + limits.max_lifetime;
        let mut next_ping_at = opened_at + limits.ping_interval;
        let mut stall: Option<(Instant, bool)> = None;
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let pong_deadline = self
                .outstanding_pings
                .front()
                .map(|(_, sent_at)| *sent_at + limits.pong_timeout);
            let stall_end = stall.map(|(until, _)| until);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // On shutdown, say goodbye but do not wait for the client's answer.
                    let frame = CloseFrame { code: CloseCode::Away, reason: "Server stopping".into() };
                    let _ = timeout(Duration::from_millis(100), self.websocket.send(Message::Close(Some(frame)))).await;
                    return SessionEnd::ServerStopping;
                }
                command = self.commands.recv() => match command {
                    Ok(ConnectionCommand::Drop { abort }) => {
                        self.shared.counters.update(|counters| counters.ws_dropped_by_fault += 1);
                        if abort {
                            self.abort_tcp();
                        } else {
                            self.close(CloseCode::Away, "Connection dropped").await;
                        }
                        return SessionEnd::DroppedByFault;
                    }
                    Ok(ConnectionCommand::Stall { until, keep_backlog }) => {
                        stall = Some((until, keep_backlog));
                    }
                    Ok(ConnectionCommand::Silence { connection_id }) => {
                        self.silenced |= connection_id == self.connection_id;
                    }
                    Ok(ConnectionCommand::ServerShutdown { only: Some(connection_id) }) if connection_id != self.connection_id => {}
                    Ok(ConnectionCommand::ServerShutdown { .. }) if !self.shared.config.market.sends_server_shutdown() => {
                        // No such event on this market: the connection goes on.
                        debug!(connection_id = self.connection_id, "serverShutdown not sent: the market has no such event");
                    }
                    Ok(ConnectionCommand::ServerShutdown { .. }) => {
                        // Binance sends the event "shortly before closing":
                        // the connection keeps serving for the grace period.
                        let payload = wire::server_shutdown_event(self.shared.now_us(), self.unit);
                        let text = if self.combined { wire::combined("!serverShutdown", &payload) } else { payload };
                        self.shared.counters.frame_sent("serverShutdown");
                        if self.websocket.send(self.text(text)).await.is_err() {
                            return SessionEnd::WriteFailed;
                        }
                        shutdown_at.get_or_insert(Instant::now() + limits.server_shutdown_grace);
                    }
                    // Missed commands are from before this connection mattered; keep going.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return SessionEnd::ServerStopping,
                },
                _ = sleep_until(stall_end.unwrap_or(opened_at)), if stall_end.is_some() => {
                    let keep_backlog = stall.map(|(_, keep)| keep).unwrap_or(true);
                    stall = None;
                    if !keep_backlog {
                        let mut discarded = 0u64;
                        while self.queue.try_recv().is_ok() {
                            discarded += 1;
                        }
                        debug!(connection_id = self.connection_id, discarded, "stall ended, backlog lost");
                    }
                    if next_ping_at < Instant::now() {
                        next_ping_at = Instant::now();
                    }
                }
                _ = sleep_until(shutdown_at.unwrap_or(opened_at)), if shutdown_at.is_some() => {
                    self.close(CloseCode::Away, "Server shutdown").await;
                    self.shared.counters.update(|counters| counters.ws_server_shutdown_closes += 1);
                    return SessionEnd::ServerShutdownEvent;
                }
                _ = sleep_until(lifetime_deadline) => {
                    self.shared.counters.update(|counters| counters.ws_lifetime_closes += 1);
                    self.close(CloseCode::Normal, "Connection lifetime reached").await;
                    return SessionEnd::Lifetime;
                }
                _ = sleep_until(pong_deadline.unwrap_or(opened_at)), if pong_deadline.is_some() => {
                    self.shared.counters.update(|counters| counters.ws_pong_timeout_closes += 1);
                    warn!(connection_id = self.connection_id, "no pong in time, closing");
                    self.close(CloseCode::Policy, "Pong timeout").await;
                    return SessionEnd::PongTimeout;
                }
                _ = sleep_until(next_ping_at), if stall.is_none() => {
                    self.pings_sent += 1;
                    let payload = self.pings_sent.to_string().into_bytes();
                    self.outstanding_pings.push_back((payload.clone(), Instant::now()));
                    self.shared.counters.update(|counters| counters.ws_pings_sent += 1);
                    if self.websocket.send(Message::Ping(payload.into())).await.is_err() {
                        return SessionEnd::WriteFailed;
                    }
                    next_ping_at += limits.ping_interval;
                    if next_ping_at <= Instant::now() {
                        next_ping_at = Instant::now() + limits.ping_interval;
                    }
                }
                outgoing = self.queue.recv(), if stall.is_none() => {
                    let Some(outgoing) = outgoing else { return SessionEnd::ServerStopping };
                    if self.silenced {
                        self.shared.counters.update(|counters| counters.frames_silenced += 1);
                        continue;
                    }
                    if let Err(end) = self.write_batch(outgoing).await {
                        return end;
                    }
                }
                incoming = self.websocket.next() => {
                    let message = match incoming {
                        None | Some(Err(_)) => return SessionEnd::ClientGone,
                        Some(Ok(message)) => message,
                    };
                    if let Some(end) = self.handle_incoming(message, limits.max_incoming_per_sec, limits.max_streams_per_connection).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes one queued frame and whatever else is queued (up to a limit), then flushes.
    async fn write_batch(&mut self, first: Outgoing) -> Result<(), SessionEnd> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(outgoing) = next.take() {
            let (message, kind) = self.render(outgoing);
            self.shared.counters.frame_sent(kind);
            if self.websocket.feed(message).await.is_err() {
                return Err(SessionEnd::WriteFailed);
            }
            written += 1;
            if written < MAX_FRAMES_PER_FLUSH {
                next = self.queue.try_recv().ok();
            }
        }
        self.websocket
            .flush()
            .await
            .map_err(|_| SessionEnd::WriteFailed)
    }

    fn render(&self, outgoing: Outgoing) -> (Message, &'static str) {
        match outgoing {
            Outgoing::Event { event, truncate } => {
                let mut text = self.event_text(&event);
                if truncate {
                    let mut cut = text.len() / 2;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                (self.text(text), event.kind_name())
            }
            Outgoing::Injected(frame) => {
                let message = match self.injected_message(frame) {
                    Message::Text(text) => self.text(text.as_str().to_owned()),
                    other => other,
                };
                (message, "injected")
            }
        }
    }

    /// A text frame in the configured [`JsonStyle`](crate::wire::JsonStyle).
    fn text(&self, text: String) -> Message {
        Message::text(wire::restyle(text, self.shared.config.json_style))
    }

    fn event_text(&self, event: &StreamEvent) -> String {
        let payload = event.payload(self.unit, self.shared.config.market.shape());
        if self.combined {
            wire::combined(&event.stream_name, payload)
        } else {
            payload.to_owned()
        }
    }

    fn injected_message(&self, frame: InjectedFrame) -> Message {
        let now = self.unit.convert(self.shared.now_us());
        let wrap = |stream: &str, payload: String| {
            if self.combined {
                wire::combined(stream, &payload)
            } else {
                payload
            }
        };
        match frame {
            InjectedFrame::GarbageText => Message::text("garbage: this frame is not JSON ~~~"),
            InjectedFrame::BrokenJson => {
                Message::text(format!(r#"{{"e":"trade","E":{now},"s":"BTCUSDT","t":"#))
            }
            InjectedFrame::Binary => Message::binary(vec![0xde, 0xad, 0xbe, 0xef]),
            InjectedFrame::UnknownEventType => Message::text(wrap(
                "btcusdt@mysteryEvent",
                format!(r#"{{"e":"mysteryEvent","E":{now},"s":"BTCUSDT","x":"surprise"}}"#),
            )),
            InjectedFrame::UnsubscribedSymbolEvent => Message::text(wrap(
                "zzzusdt@trade",
                format!(
                    r#"{{"e":"trade","E":{now},"s":"ZZZUSDT","t":1,"p":"1.00000000","q":"1.00000000","T":{now},"m":true,"M":true}}"#
                ),
            )),
        }
    }

    /// Handles one frame from the client; `Some` when the connection must end.
    async fn handle_incoming(
        &mut self,
        message: Message,
        max_per_second: u32,
        max_streams: usize,
    ) -> Option<SessionEnd> {
        // Every frame counts against the rate: data, pings, pongs and close frames alike.
        let now = Instant::now();
        self.incoming_times.push_back(now);
        while self
            .incoming_times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1))
        {
            self.incoming_times.pop_front();
        }
        if self.incoming_times.len() > max_per_second as usize {
            self.shared
                .counters
                .update(|counters| counters.ws_rate_limit_closes += 1);
            warn!(
                connection_id = self.connection_id,
                "too many incoming messages, closing"
            );
            self.close(CloseCode::Policy, "Too many requests").await;
            return Some(SessionEnd::RateLimit);
        }
        match message {
            Message::Text(text) => {
                self.shared
                    .counters
                    .update(|counters| counters.ws_control_requests += 1);
                if text.as_str().contains(r#""SUBSCRIBE""#) {
                    let (unanswered, refused) = {
                        let mut faults = lock(&self.shared.pending_faults);
                        let unanswered = faults.subscribe_unanswered > 0;
                        let refused = !unanswered && faults.subscribe_refused > 0;
                        faults.subscribe_unanswered -= u32::from(unanswered);
                        faults.subscribe_refused -= u32::from(refused);
                        (unanswered, refused)
                    };
                    if unanswered {
                        return None;
                    }
                    if refused {
                        self.shared
                            .counters
                            .update(|counters| counters.ws_control_errors += 1);
                        let reply = r#"{"code":2,"msg":"Invalid request: too many parameters"}"#;
                        if self
                            .websocket
                            .send(self.text(reply.to_owned()))
                            .await
                            .is_err()
                        {
                            return Some(SessionEnd::WriteFailed);
                        }
                        return None;
                    }
                }
                let current = lock(&self.shared.registry)
                    .connections
                    .get(&self.connection_id)
                    .map(|entry| entry.streams_in_order.clone())
                    .unwrap_or_default();
                let outcome = process_control(
                    text.as_str(),
                    &current,
                    self.combined,
                    max_streams,
                    self.shared.config.market,
                );
                if outcome.too_many_streams {
                    self.shared
                        .counters
                        .update(|counters| counters.ws_too_many_streams_closes += 1);
                    self.close(CloseCode::Policy, "Too many streams").await;
                    return Some(SessionEnd::TooManyStreams);
                }
                if let Some(streams) = outcome.new_streams {
                    {
                        let mut registry = lock(&self.shared.registry);
                        if let Some(entry) = registry.connections.get_mut(&self.connection_id) {
                            entry.streams = served_streams(&self.shared, self.route, &streams);
                            entry.streams_in_order = streams;
                        }
                    }
                    self.shared.driver_wakeup.notify_one();
                }
                if let Some(combined) = outcome.new_combined {
                    self.combined = combined;
                }
                if outcome.is_error {
                    self.shared
                        .counters
                        .update(|counters| counters.ws_control_errors += 1);
                }
                self.shared.counters.frame_sent("control_reply");
                if self.websocket.send(self.text(outcome.reply)).await.is_err() {
                    return Some(SessionEnd::WriteFailed);
                }
                None
            }
            Message::Pong(payload) => {
                match self
                    .outstanding_pings
                    .iter()
                    .position(|(sent, _)| sent.as_slice() == payload.as_ref())
                {
                    Some(position) => {
                        // Answering a ping also answers every older one.
                        self.outstanding_pings.drain(..=position);
                        self.shared
                            .counters
                            .update(|counters| counters.ws_pongs_received += 1);
                    }
                    None => self
                        .shared
                        .counters
                        .update(|counters| counters.ws_unsolicited_pongs += 1),
                }
                None
            }
            // tungstenite answers pings and close frames by itself.
            Message::Ping(_) | Message::Binary(_) | Message::Frame(_) => None,
            Message::Close(_) => {
                let _ = self.websocket.flush().await;
                Some(SessionEnd::ClientGone)
            }
        }
    }

    /// Sends a close frame and waits briefly for the client's answer.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        if self
            .websocket
            .send(Message::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let _ = timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = self.websocket.next().await {}
        })
        .await;
    }

    /// Resets the TCP connection instead of closing it, as a crashed server or a broken
    /// middlebox would.
    fn abort_tcp(&mut self) {
        // SO_LINGER 0 makes close() send RST; with a zero timeout it does not block.
        #[allow(deprecated)]
        let _ = self.websocket.get_ref().set_linger(Some(Duration::ZERO));
    }
}
