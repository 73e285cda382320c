//! Helpers shared by the integration tests: configs with short timers, a
//! WebSocket client wrapper and a minimal HTTP/1.1 client (so tests see the
//! exact bytes, truncated bodies and resets).

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use fake_binance::{FakeConfig, Limits};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// 2024-08-09 00:00:00 UTC, a Friday.
pub const SIM_START_US: i64 = 1_723_161_600_000_000;

/// Limits long enough not to interfere unless a test shortens one on purpose.
pub fn relaxed_limits() -> Limits {
    Limits {
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(60),
        max_incoming_per_sec: 100,
        ..Limits::default()
    }
}

pub fn config(speed: f64) -> FakeConfig {
    FakeConfig {
        seed: 7,
        speed,
        sim_start_us: SIM_START_US,
        history: Duration::from_secs(30 * 60),
        symbols: vec![
            "BTCUSDT".to_owned(),
            "ETHUSDT".to_owned(),
            "BNBUSDT".to_owned(),
        ],
        mean_orders_per_sec: 2.0,
        limits: relaxed_limits(),
        ..FakeConfig::default()
    }
}

/// Waits until `condition` holds, checking every few milliseconds, failing after `within`.
pub async fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Like `wait_until` for an async condition.
pub async fn wait_until_async<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct Client {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|error| panic!("connect {url}: {error}"));
        Client { socket }
    }

    /// The next frame of any kind, `None` on timeout or end of stream.
    pub async fn next_message(&mut self, within: Duration) -> Option<Message> {
        match timeout(within, self.socket.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            _ => None,
        }
    }

    /// The next text frame (pings and pongs skipped).
    pub async fn next_text(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_message(remaining).await {
                Some(Message::Text(text)) => return text.to_string(),
                Some(Message::Ping(_)) | Some(Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn next_json(&mut self, within: Duration) -> Value {
        let text = self.next_text(within).await;
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
    }

    /// The next text frame that is not an event (a reply to a control message).
    pub async fn next_reply(&mut self, within: Duration) -> Value {
        loop {
            let value = self.next_json(within).await;
            let is_event = value.get("e").is_some() || value.get("stream").is_some();
            if !is_event {
                return value;
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Reads until the server's close frame; returns it (None if the stream just ended).
    pub async fn wait_close(&mut self, within: Duration) -> Option<CloseFrame> {
        let deadline = Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(!remaining.is_zero(), "no close within {within:?}");
            match timeout(remaining, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no close within {within:?}"),
            }
        }
    }
}

/// Collects text frames until `count` were seen (pings skipped).
pub async fn collect_texts(client: &mut Client, count: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut texts = Vec::with_capacity(count);
    while texts.len() < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "only {} of {count} frames within {within:?}",
            texts.len()
        );
        texts.push(client.next_text(remaining).await);
    }
    texts
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    pub fn used_weight(&self) -> u64 {
        self.header("X-MBX-USED-WEIGHT-1M")
            .expect("weight header")
            .parse()
            .expect("weight number")
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
/// A body shorter than its Content-Length is an `UnexpectedEof` error.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no complete response head",
        )
    })?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let answer = Answer {
        status,
        headers,
        body: body.to_owned(),
    };
    if let Some(length) = answer
        .header("Content-Length")
        .and_then(|value| value.parse::<usize>().ok())
    {
        if answer.body.len() < length {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "body shorter than Content-Length",
            ));
        }
    }
    Ok(answer)
}

pub async fn get(base: &str, path: &str) -> Answer {
    http(base, "GET", path, &[], "")
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

pub async fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    http(base, "GET", path, headers, "")
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// Positions of `keys` (as `"k":`) in `text`, asserting they appear in this order.
pub fn assert_key_order(text: &str, keys: &[&str]) {
    let mut last = 0;
    for key in keys {
        let needle = format!("\"{key}\":");
        let position = text[last..]
            .find(&needle)
            .unwrap_or_else(|| panic!("key {key} missing or out of order in {text}"));
        last += position + needle.len();
    }
}

/// The number of decimals a wire amount is written with (`"27785.00"`: 2).
pub fn decimals_of(text: &str) -> usize {
    text.split_once('.')
        .map_or(0, |(_, fraction)| fraction.len())
}

/// A decimal string's value in 1e-8 units, to compare a wire amount with
/// the ground truth's eight-decimal string.
pub fn atoms(text: &str) -> i64 {
    fake_binance::decimal::parse_atoms(text)
        .unwrap_or_else(|error| panic!("not a decimal: {text}: {error}"))
}

/// Asserts that a wire amount has `decimals` decimals and the value of the
/// truth's string.
pub fn assert_amount(wire: &Value, decimals: usize, truth: &str, what: &str) {
    let text = wire
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {wire}"));
    assert_eq!(decimals_of(text), decimals, "{what}: {text}");
    assert_eq!(atoms(text), atoms(truth), "{what}: {text} vs truth {truth}");
}
