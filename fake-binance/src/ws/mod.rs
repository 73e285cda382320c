//! The WebSocket market-stream server (reference sections 1-4).
//!
//! One task per connection owns its socket. It sends what the driver queued for
//! it, answers the control messages (SUBSCRIBE, ...), pings on schedule and
//! closes the connection when a protocol limit is broken (pong deadline,
//! lifetime, incoming message rate, stream count), or when a fault says so.
//!
//! Split by concern: [`handshake`] parses the upgrade request and holds the
//! handshake budget, [`session`] runs one open connection, [`control`]
//! answers its control messages. This file accepts connections and registers
//! each with the driver.

mod control;
mod handshake;
mod session;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Duration;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::shared::{lock, ConnectionEntry, Shared};
use crate::streams::{served_on, Route};
pub(crate) use control::process_control;
pub(crate) use handshake::ConnectRequest;
use handshake::{error_response, parse_connect_request, take_handshake_budget, HandshakeRejection};
use session::Session;

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

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let late = {
        let mut pending = lock(&shared.pending_faults);
        (pending.slow_handshakes > 0).then(|| {
            pending.slow_handshakes -= 1;
            pending.slow_handshake_delay
        })
    };
    if let Some(delay) = late {
        debug!(%peer, delay_ms = delay.as_millis() as u64, "websocket handshake answered late (fault)");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
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
                let refused = {
                    let pending = lock(&shared.pending_faults);
                    connect_request
                        .streams
                        .iter()
                        .find(|name| pending.refused_in_url.contains(name))
                        .cloned()
                };
                if let Some(stream) = refused {
                    shared
                        .counters
                        .update(|counters| counters.ws_handshakes_rejected += 1);
                    debug!(%peer, %stream, "websocket handshake refused: stream named in the URL (fault)");
                    return Err(error_response(
                        400,
                        serde_json::json!({"code": 2, "msg": "Invalid request: invalid stream"})
                            .to_string(),
                    ));
                }
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
    let mut session = Session::new(
        Arc::clone(&shared),
        websocket,
        &connect_request,
        connection_id,
        queue,
        commands,
    );
    let end = session.run(cancel, connect_request.streams.len()).await;
    lock(&shared.registry).connections.remove(&connection_id);
    shared
        .counters
        .update(|counters| counters.ws_connections_open -= 1);
    info!(%peer, connection_id, ?end, "websocket closed");
}
