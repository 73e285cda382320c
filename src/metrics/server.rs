//! The metrics listener (`[metrics] listen`, loopback by default): HTTP/1.1
//! through hyper, `GET /metrics` (Prometheus text), `GET /health` (200 or
//! 503 with a JSON body naming what is wrong) and `GET /status` (the live
//! view `binance-recorder status` reads). Each connection is served by
//! its own task and dropped at shutdown; the listener is for a scraper and
//! an operator's curl, not for the internet.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::health::HealthBoard;
use super::Counters;

/// Serves until `shutdown`; never fails after the bind (a failed accept
/// is logged and retried after a pause).
pub async fn serve(
    listener: TcpListener,
    counters: Arc<Counters>,
    health: Arc<HealthBoard>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, mostly: pause rather than spin.
                warn!(%error, "metrics listener cannot accept; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        let counters = counters.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&request, &counters, &health);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                served = connection => if let Err(error) = served {
                    debug!(%error, %peer, "metrics connection ended with an error");
                },
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn answer(
    request: &Request<Incoming>,
    counters: &Counters,
    health: &HealthBoard,
) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    if request.method() != Method::GET {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            counters.encode(),
        ),
        "/health" => {
            let report = health.report();
            let status = if report.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&report).expect("a report serialises");
            response(status, "application/json", body + "\n")
        }
        "/status" => response(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&health.live_status()).expect("a status serialises") + "\n",
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /health or /status\n".into(),
        ),
    }
}
