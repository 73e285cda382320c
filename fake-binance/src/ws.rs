//! The WebSocket market-stream server (reference sections 1-4).
//!
//! One task per connection owns its socket. It sends what the driver queued for
//! it, answers the control messages (SUBSCRIBE, ...), pings on schedule and
//! closes the connection when a protocol limit is broken (pong deadline,
//! lifetime, incoming message rate, stream count), or when a fault says so.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{sleep_until, timeout, Duration, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Market;
use crate::events::{ConnectionCommand, InjectedFrame, Outgoing, StreamEvent};
use crate::shared::{lock, ConnectionEntry, Shared};
use crate::streams::{served_on, Route, StreamName};
use crate::wire::{self, TimeUnit};

/// How many queued frames are written before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 512;

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectRequest {
    pub streams: Vec<String>,
    pub combined: bool,
    pub unit: TimeUnit,
    /// USD-M: the route in the path; `Unrouted` elsewhere.
    pub route: Route,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandshakeRejection {
    NotFound,
    BadRequest(String),
}

/// Parses `/ws`, `/ws/<s1>/<s2>`, `/stream?streams=<s1>/<s2>` and `timeUnit`;
/// on a market with routes (`routed`, USD-M) each may follow `/public`,
/// `/market` or `/private`, and times are milliseconds whatever is asked.
pub(crate) fn parse_connect_request(
    path_and_query: &str,
    market: Market,
) -> Result<ConnectRequest, HandshakeRejection> {
    let routed = market.has_routes();
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = percent_decode(path);
    let (route, path) = Route::split(&path);
    if route != Route::Unrouted && !routed {
        return Err(HandshakeRejection::NotFound);
    }
    let path = path.to_owned();
    let mut unit = TimeUnit::Millisecond;
    let mut query_streams: Option<String> = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "timeUnit" => {
                unit = TimeUnit::parse(&percent_decode(value)).ok_or_else(|| {
                    HandshakeRejection::BadRequest(format!("Invalid timeUnit: {value}"))
                })?;
            }
            "streams" => query_streams = Some(percent_decode(value)),
            _ => {}
        }
    }
    let (combined, stream_list) = if path == "/ws" || path == "/ws/" {
        (false, String::new())
    } else if let Some(rest) = path.strip_prefix("/ws/") {
        (false, rest.to_owned())
    } else if path == "/stream" || path == "/stream/" {
        (true, query_streams.unwrap_or_default())
    } else {
        return Err(HandshakeRejection::NotFound);
    };
    let mut streams: Vec<String> = Vec::new();
    for name in stream_list.split('/').filter(|name| !name.is_empty()) {
        if StreamName::parse(name).is_none() {
            return Err(HandshakeRejection::BadRequest(format!(
                "Invalid request: invalid stream {name}"
            )));
        }
        if !streams.iter().any(|existing| existing == name) {
            streams.push(name.to_owned());
        }
    }
    Ok(ConnectRequest {
        streams,
        combined,
        // Nothing like timeUnit is documented off spot: ms only.
        unit: if market.speaks_micros() {
            unit
        } else {
            TimeUnit::Millisecond
        },
        route,
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(value) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                decoded.push(value);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Accepts connections until cancelled; each runs in its own tracked task.
pub(crate) async fn run_ws_listener(
    shared: Arc<Shared>,
    listener: TcpListener,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(handle_connection(
                    Arc::clone(&shared),
                    stream,
                    peer,
                    cancel.child_token(),
                ));
            }
            Err(error) => {
                // Typically out of file descriptors; back off instead of spinning.
                warn!(%error, "websocket accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The subscribed streams the connection's route delivers: the others are
/// listed (LIST_SUBSCRIPTIONS) and acknowledged, never fed, and counted.
fn served_streams(shared: &Shared, route: Route, streams: &[String]) -> HashSet<String> {
    let routed = shared.config.market.has_routes();
    let served: HashSet<String> = streams
        .iter()
        .filter(|name| served_on(routed, shared.config.usdm_trade_on_market, route, name))
        .cloned()
        .collect();
    let n_unserved = (streams.len() - served.len()) as u64;
    if n_unserved > 0 {
        shared
            .counters
            .update(|counters| counters.ws_wrong_route_subscriptions += n_unserved);
    }
    served
}

fn error_response(status: u16, body: String) -> ErrorResponse {
    let mut response = http::Response::new(Some(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    response
}

/// Counts a handshake against the budget; false when the budget is spent.
fn take_handshake_budget(shared: &Shared) -> bool {
    let now = Instant::now();
    let window = shared.config.limits.handshake_window;
    let mut handshakes = lock(&shared.handshakes);
    while handshakes
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        handshakes.pop_front();
    }
    if handshakes.len() >= shared.config.limits.handshake_limit as usize {
        return false;
    }
    handshakes.push_back(now);
    true
}

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut accepted_request: Option<ConnectRequest> = None;
    // The error type is tungstenite's; its size is not ours to change.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|value| value.as_str())
            .unwrap_or("/");
        match parse_connect_request(path_and_query, shared.config.market) {
            Err(HandshakeRejection::NotFound) => {
                shared
                    .counters
                    .update(|counters| counters.ws_handshakes_rejected += 1);
                Err(error_response(404, "Not Found".to_owned()))
            }
            Err(HandshakeRejection::BadRequest(message)) => {
                shared
                    .counters
                    .update(|counters| counters.ws_handshakes_rejected += 1);
                Err(error_response(
                    400,
                    serde_json::json!({"code": 2, "msg": message}).to_string(),
                ))
            }
            Ok(connect_request) => {
                if !take_handshake_budget(&shared) {
                    shared
                        .counters
                        .update(|counters| counters.ws_handshakes_refused += 1);
                    warn!(%peer, "websocket handshake refused: too many connections");
                    return Err(error_response(
                        429,
                        r#"{"code":-1003,"msg":"Too many new connections; current limit is reached. Please try again later."}"#
                            .to_owned(),
                    ));
                }
                accepted_request = Some(connect_request);
                Ok(response)
            }
        }
    };
    let websocket = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(websocket) => websocket,
        Err(error) => {
            debug!(%peer, %error, "websocket handshake failed");
            return;
        }
    };
    let Some(connect_request) = accepted_request else {
        return;
    };
    shared.counters.update(|counters| {
        counters.ws_handshakes_accepted += 1;
        counters.ws_connections_open += 1;
    });
    if let Some(firehose) = shared.firehose.clone() {
        info!(%peer, streams = connect_request.streams.len(), "firehose websocket connected");
        crate::firehose::serve(
            Arc::clone(&shared),
            firehose,
            websocket,
            connect_request,
            cancel,
        )
        .await;
        shared
            .counters
            .update(|counters| counters.ws_connections_open -= 1);
        info!(%peer, "firehose websocket closed");
        return;
    }
    let (sender, queue) = mpsc::unbounded_channel();
    let commands = shared.commands.subscribe();
    let connection_id = {
        let mut registry = lock(&shared.registry);
        let connection_id = registry.next_connection_id;
        registry.next_connection_id += 1;
        registry.connections.insert(
            connection_id,
            ConnectionEntry {
                streams_in_order: connect_request.streams.clone(),
                streams: served_streams(&shared, connect_request.route, &connect_request.streams),
                sender,
            },
        );
        connection_id
    };
    shared.driver_wakeup.notify_one();
    info!(%peer, connection_id, streams = connect_request.streams.len(), combined = connect_request.combined, "websocket connected");
    let mut session = Session {
        shared: Arc::clone(&shared),
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
    };
    let end = session.run(cancel, connect_request.streams.len()).await;
    lock(&shared.registry).connections.remove(&connection_id);
    shared
        .counters
        .update(|counters| counters.ws_connections_open -= 1);
    info!(%peer, connection_id, ?end, "websocket closed");
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
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

struct Session {
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
    async fn run(&mut self, cancel: CancellationToken, initial_stream_count: usize) -> SessionEnd {
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
                    Ok(ConnectionCommand::ServerShutdown) => {
                        // Binance sends the event "shortly before closing":
                        // the connection keeps serving for the grace period.
                        let payload = wire::server_shutdown_event(self.shared.now_us(), self.unit);
                        let text = if self.combined { wire::combined("!serverShutdown", &payload) } else { payload };
                        self.shared.counters.frame_sent("serverShutdown");
                        if self.websocket.send(Message::text(text)).await.is_err() {
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
                (Message::text(text), event.kind_name())
            }
            Outgoing::Injected(frame) => (self.injected_message(frame), "injected"),
        }
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
                let current = lock(&self.shared.registry)
                    .connections
                    .get(&self.connection_id)
                    .map(|entry| entry.streams_in_order.clone())
                    .unwrap_or_default();
                let outcome = process_control(text.as_str(), &current, self.combined, max_streams);
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
                if self
                    .websocket
                    .send(Message::text(outcome.reply))
                    .await
                    .is_err()
                {
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

/// Result of one control message.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ControlOutcome {
    pub reply: String,
    pub new_streams: Option<Vec<String>>,
    pub new_combined: Option<bool>,
    pub too_many_streams: bool,
    pub is_error: bool,
}

fn bare_error(code: i64, message: &str) -> ControlOutcome {
    ControlOutcome {
        reply: serde_json::json!({"code": code, "msg": message}).to_string(),
        is_error: true,
        ..ControlOutcome::default()
    }
}

/// Processes one SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY
/// message against the connection's current streams (pure, for unit tests).
pub(crate) fn process_control(
    text: &str,
    current: &[String],
    combined: bool,
    max_streams: usize,
) -> ControlOutcome {
    let request: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return bare_error(3, &format!("Invalid JSON: {error}")),
    };
    let Some(object) = request.as_object() else {
        return bare_error(2, "Invalid request: invalid type: expected struct Request");
    };
    let method = match object.get("method") {
        None => return bare_error(2, "Invalid request: missing field `method`"),
        Some(Value::String(method)) => method.as_str(),
        Some(other) => {
            return bare_error(
                2,
                &format!("Invalid request: invalid type: {other}, expected a method name"),
            );
        }
    };
    const METHODS: [&str; 5] = [
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST_SUBSCRIPTIONS",
        "SET_PROPERTY",
        "GET_PROPERTY",
    ];
    if !METHODS.contains(&method) {
        return bare_error(
            2,
            &format!(
                "Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
            ),
        );
    }
    let id = match object.get("id") {
        Some(id) if is_valid_request_id(id) => id.clone(),
        _ => return bare_error(2, "Invalid request: request ID must be an unsigned integer"),
    };
    let params = object.get("params");
    let ok_reply = |result: Value| serde_json::json!({"result": result, "id": id}).to_string();
    let invalid_stream = || {
        ControlOutcome {
        reply: serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": id}).to_string(),
        is_error: true,
        ..ControlOutcome::default()
    }
    };
    match method {
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            let Some(Value::Array(names)) = params else {
                return invalid_stream();
            };
            let mut names_text = Vec::with_capacity(names.len());
            for name in names {
                match name.as_str() {
                    Some(name) if StreamName::parse(name).is_some() => {
                        names_text.push(name.to_owned())
                    }
                    _ => return invalid_stream(),
                }
            }
            let mut streams = current.to_vec();
            if method == "SUBSCRIBE" {
                for name in names_text {
                    if !streams.contains(&name) {
                        streams.push(name);
                    }
                }
                if streams.len() > max_streams {
                    return ControlOutcome {
                        too_many_streams: true,
                        ..ControlOutcome::default()
                    };
                }
            } else {
                streams.retain(|stream| !names_text.contains(stream));
            }
            ControlOutcome {
                reply: ok_reply(Value::Null),
                new_streams: Some(streams),
                ..ControlOutcome::default()
            }
        }
        "LIST_SUBSCRIPTIONS" => ControlOutcome {
            reply: ok_reply(Value::from(current.to_vec())),
            ..ControlOutcome::default()
        },
        "SET_PROPERTY" | "GET_PROPERTY" => {
            let empty = Vec::new();
            let params = match params {
                Some(Value::Array(params)) => params,
                None => &empty,
                Some(_) => return bare_error(2, "Invalid request: property name must be a string"),
            };
            let expected_count = if method == "SET_PROPERTY" { 2 } else { 1 };
            if params.len() > expected_count {
                return bare_error(2, "Invalid request: too many parameters");
            }
            let Some(Value::String(property)) = params.first() else {
                return bare_error(2, "Invalid request: property name must be a string");
            };
            if property != "combined" {
                return ControlOutcome {
                    reply: serde_json::json!({"code": 0, "msg": "Unknown property", "id": id})
                        .to_string(),
                    is_error: true,
                    ..ControlOutcome::default()
                };
            }
            if method == "GET_PROPERTY" {
                return ControlOutcome {
                    reply: ok_reply(Value::Bool(combined)),
                    ..ControlOutcome::default()
                };
            }
            match params.get(1) {
                Some(Value::Bool(value)) => ControlOutcome {
                    reply: ok_reply(Value::Null),
                    new_combined: Some(*value),
                    ..ControlOutcome::default()
                },
                _ => bare_error(1, "Invalid value type: expected Boolean"),
            }
        }
        _ => unreachable!("method checked against METHODS above"),
    }
}

/// Spot accepts a signed 64-bit integer, an alphanumeric string of up to 36 characters, or null.
fn is_valid_request_id(id: &Value) -> bool {
    match id {
        Value::Null => true,
        Value::Number(number) => number.is_i64(),
        Value::String(text) => {
            text.len() <= 36 && text.bytes().all(|byte| byte.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn usdm_paths_carry_their_route_and_speak_milliseconds() {
        let market =
            parse_connect_request("/market/stream?timeUnit=MICROSECOND", Market::UsdM).unwrap();
        assert_eq!(
            (market.route, market.combined, market.unit),
            (Route::Market, true, TimeUnit::Millisecond)
        );
        let public = parse_connect_request("/public/ws/btcusdt@trade", Market::UsdM).unwrap();
        assert_eq!(public.route, Route::Public);
        assert_eq!(public.streams, streams(&["btcusdt@trade"]));
        assert_eq!(
            parse_connect_request("/stream", Market::UsdM)
                .unwrap()
                .route,
            Route::Unrouted
        );
        // Spot has no routes.
        assert_eq!(
            parse_connect_request("/market/stream", Market::Spot),
            Err(HandshakeRejection::NotFound)
        );
    }

    #[test]
    fn parses_connect_paths() {
        let raw =
            parse_connect_request("/ws/btcusdt@trade/ethusdt@kline_1m", Market::Spot).unwrap();
        assert_eq!(raw.streams, streams(&["btcusdt@trade", "ethusdt@kline_1m"]));
        assert!(!raw.combined);
        let combined = parse_connect_request(
            "/stream?streams=btcusdt@trade/btcusdt@aggTrade&timeUnit=MICROSECOND",
            Market::Spot,
        )
        .unwrap();
        assert!(combined.combined);
        assert_eq!(combined.unit, TimeUnit::Microsecond);
        assert_eq!(combined.streams.len(), 2);
        assert_eq!(
            parse_connect_request("/ws", Market::Spot)
                .unwrap()
                .streams
                .len(),
            0
        );
        assert_eq!(
            parse_connect_request("/ws?timeUnit=microsecond", Market::Spot)
                .unwrap()
                .unit,
            TimeUnit::Microsecond
        );
        assert_eq!(
            parse_connect_request("/stream?streams=btcusdt%40trade", Market::Spot)
                .unwrap()
                .streams,
            streams(&["btcusdt@trade"])
        );
        assert_eq!(
            parse_connect_request("/other", Market::Spot),
            Err(HandshakeRejection::NotFound)
        );
        assert!(matches!(
            parse_connect_request("/ws/BTCUSDT@trade", Market::Spot),
            Err(HandshakeRejection::BadRequest(_))
        ));
        assert!(matches!(
            parse_connect_request("/ws?timeUnit=SECOND", Market::Spot),
            Err(HandshakeRejection::BadRequest(_))
        ));
    }

    #[test]
    fn subscribe_list_unsubscribe() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#,
            &[],
            false,
            10,
        );
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply, serde_json::json!({"result": null, "id": 1}));
        let current = outcome.new_streams.unwrap();
        assert_eq!(current, streams(&["btcusdt@aggTrade", "btcusdt@depth"]));
        let outcome = process_control(
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":312}"#,
            &current,
            false,
            10,
        );
        let current = outcome.new_streams.unwrap();
        assert_eq!(current, streams(&["btcusdt@aggTrade"]));
        let outcome = process_control(
            r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#,
            &current,
            false,
            10,
        );
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"result": ["btcusdt@aggTrade"], "id": 3})
        );
    }

    #[test]
    fn properties() {
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#,
            &[],
            false,
            10,
        );
        assert_eq!(outcome.new_combined, Some(true));
        let outcome = process_control(
            r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#,
            &[],
            true,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"result": true, "id": 2})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["colour",true],"id":7}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"code": 0, "msg": "Unknown property", "id": 7})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":7}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["code"],
            1
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":[5,true],"id":7}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"code": 2, "msg": "Invalid request: property name must be a string"})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined",true,1],"id":7}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: too many parameters"
        );
    }

    #[test]
    fn error_shapes() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":2}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 2})
        );
        assert!(outcome.new_streams.is_none());
        let outcome = process_control("not json", &[], false, 10);
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply["code"], 3);
        assert!(
            reply["msg"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JSON: expected"),
            "{reply}"
        );
        let outcome = process_control(r#"{"method":"PUBLISH","id":1}"#, &[], false, 10);
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply["code"], 2);
        assert!(reply["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request: unknown variant"));
        let outcome = process_control(r#"{"params":[],"id":1}"#, &[], false, 10);
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: missing field `method`"
        );
        let outcome = process_control(
            r#"{"method":"LIST_SUBSCRIPTIONS","id":{"a":1}}"#,
            &[],
            false,
            10,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: request ID must be an unsigned integer"
        );
        // Ids spot accepts: signed integers, short alphanumeric strings, null.
        for id in ["-5", r#""abc123""#, "null"] {
            let outcome = process_control(
                &format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#),
                &[],
                false,
                10,
            );
            assert!(!outcome.is_error, "{id}");
        }
    }

    #[test]
    fn too_many_streams() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["a@trade","b@trade","c@trade"],"id":1}"#,
            &[],
            false,
            2,
        );
        assert!(outcome.too_many_streams);
    }
}
