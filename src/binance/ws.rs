//! One stream connection: the only code that owns a WebSocket. It connects
//! to a combined-stream URL, passes every data frame on with its local
//! receive time, lets tungstenite answer pings (the pong carries the ping's
//! payload and is flushed on the next read), and reconnects with capped,
//! fully jittered exponential backoff until it is cancelled.
//!
//! Channel policy: frames go to the recorder over a bounded channel; when it
//! is full this task waits (and so stops reading, and TCP pushes back on the
//! exchange) rather than buffering without bound or dropping.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::domain::{Market, TimeUs};

/// What a connection task tells the recorder.
#[derive(Debug)]
pub enum Inbound {
    /// A text or binary data frame, as received.
    Frame { market: Market, recv_time: TimeUs, bytes: Vec<u8> },
    /// A connection was established (`connection` counts from 1 per task).
    Connected { market: Market, connection: u64 },
    /// A connection ended; the reason is for the log.
    Disconnected { market: Market, connection: u64, reason: String },
    /// A `/api/v3/time` answer: the exchange's clock and the host clock's
    /// offset from it (host minus exchange, at the middle of the request).
    ClockSample { market: Market, server_time: TimeUs, offset_us: i64 },
}

/// Reconnect timing.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A connection that lived this long resets the backoff.
    pub healthy_after: Duration,
    /// No frame (data or ping) for this long means the link is dead.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Full jitter: a uniform delay in `[0, min(max, initial * 2^attempt)]`.
    pub fn delay(&self, attempt: u32, random_unit: f64) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        ceiling.mul_f64(random_unit.clamp(0.0, 1.0))
    }
}

/// The local wall clock in epoch µs: the `recv_time` of a frame.
pub fn now_us() -> TimeUs {
    chrono::Utc::now().timestamp_micros()
}

/// Runs one connection until `cancel` fires or the recorder goes away.
pub async fn run_connection(
    market: Market,
    url: String,
    backoff: Backoff,
    frames: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    let mut connection: u64 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = tokio::time::timeout(backoff.connect_timeout, tokio_tungstenite::connect_async(url.as_str())) => outcome,
        };
        let reason = match outcome {
            Err(_) => "connect timed out".to_owned(),
            Ok(Err(error)) => format!("connect failed: {error}"),
            Ok(Ok((socket, _response))) => {
                connection += 1;
                info!(%market, connection, "stream connection established");
                if frames.send(Inbound::Connected { market, connection }).await.is_err() {
                    return;
                }
                let reason = read_frames(market, socket, &backoff, &frames, &cancel).await;
                if cancel.is_cancelled() || frames.is_closed() {
                    return;
                }
                let _ = frames.send(Inbound::Disconnected { market, connection, reason: reason.clone() }).await;
                reason
            }
        };
        if started.elapsed() >= backoff.healthy_after {
            attempt = 0;
        }
        let delay = backoff.delay(attempt, fastrand::f64());
        attempt = attempt.saturating_add(1);
        warn!(%market, %reason, delay_ms = delay.as_millis() as u64, attempt, "stream connection lost, reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until the connection ends; returns why it ended.
async fn read_frames(
    market: Market,
    mut socket: Socket,
    backoff: &Backoff,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
) -> String {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = socket.close(None).await;
                return "cancelled".to_owned();
            }
            next = tokio::time::timeout(backoff.idle_timeout, socket.next()) => next,
        };
        let message = match next {
            Err(_) => return format!("no frame for {:?}: dead link", backoff.idle_timeout),
            Ok(None) => return "stream ended".to_owned(),
            Ok(Some(Err(error))) => return format!("read error: {error}"),
            Ok(Some(Ok(message))) => message,
        };
        let recv_time = now_us();
        let bytes = match message {
            Message::Text(text) => text.as_bytes().to_vec(),
            Message::Binary(bytes) => bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(frame) => {
                debug!(%market, ?frame, "close frame received");
                return format!("closed by server: {frame:?}");
            }
        };
        if frames.send(Inbound::Frame { market, recv_time, bytes }).await.is_err() {
            return "recorder stopped".to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(250));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(30, 1.0), Duration::from_secs(30));
        assert_eq!(backoff.delay(5, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(2, 0.5), Duration::from_millis(500));
    }
}
