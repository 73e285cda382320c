//! A small HTTP/1.1 server loop for REST and the control endpoint.
//!
//! Hand-written rather than hyper so that faults can do what a real broken
//! server does: announce a body and stop half-way, or reset the connection
//! instead of answering. It speaks just enough HTTP/1.1 for reqwest, hyper and
//! curl: keep-alive, `Content-Length` request bodies, `Connection: close`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, Duration};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Largest request head or body accepted; REST requests are tiny.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Rows a list endpoint serves beyond the `limit` asked for (an
    /// injected `RestExtraRows` fault; 0 normally).
    pub extra_rows: usize,
}

impl HttpRequest {
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// How the answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Normal,
    /// Full `Content-Length`, half the body, then the connection closes.
    TruncatedBody,
    /// No answer at all: TCP reset.
    ResetConnection,
}

#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
    pub delivery: Delivery,
}

impl HttpResponse {
    pub fn json(status: u16, body: String) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![(
                "Content-Type".to_owned(),
                "application/json;charset=UTF-8".to_owned(),
            )],
            body,
            delay: Duration::ZERO,
            delivery: Delivery::Normal,
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> HttpResponse {
        self.headers.push((name.to_owned(), value));
        self
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

pub(crate) fn percent_decode_query(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let value = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match value {
                    Some(value) => {
                        decoded.push(value);
                        index += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            other => decoded.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode_query(key), percent_decode_query(value))
        })
        .collect()
}

/// Accepts HTTP connections until cancelled; `handler` answers each request.
pub(crate) async fn run_http_listener<H, F>(
    listener: TcpListener,
    handler: Arc<H>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) where
    H: Fn(HttpRequest) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let handler = Arc::clone(&handler);
                let cancel = cancel.child_token();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        result = serve_connection(stream, peer, handler) => {
                            if let Err(error) = result {
                                debug!(%peer, %error, "http connection ended with an error");
                            }
                        }
                    }
                });
            }
            Err(error) => {
                warn!(%error, "http accept failed");
                sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection<H, F>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
) -> std::io::Result<()>
where
    H: Fn(HttpRequest) -> F,
    F: Future<Output = HttpResponse>,
{
    let _ = stream.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let Some((request, keep_alive, consumed)) = read_request(&mut stream, &mut buffer).await?
        else {
            return Ok(());
        };
        buffer.drain(..consumed);
        debug!(%peer, method = %request.method, path = %request.path, "http request");
        let response = handler(request).await;
        if !response.delay.is_zero() {
            sleep(response.delay).await;
        }
        match response.delivery {
            Delivery::ResetConnection => {
                // SO_LINGER 0: close() sends RST at once (no blocking with a zero timeout).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Delivery::TruncatedBody => {
                let head = response_head(&response, false);
                stream.write_all(head.as_bytes()).await?;
                let cut = response.body.len() / 2;
                stream.write_all(&response.body.as_bytes()[..cut]).await?;
                stream.flush().await?;
                return Ok(());
            }
            Delivery::Normal => {
                let head = response_head(&response, keep_alive);
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(response.body.as_bytes());
                stream.write_all(&bytes).await?;
                stream.flush().await?;
                if !keep_alive {
                    return Ok(());
                }
            }
        }
    }
}

fn response_head(response: &HttpResponse, keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    });
    head.push_str("\r\n");
    head
}

/// Reads one request; `None` when the client closed the connection cleanly.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<(HttpRequest, bool, usize)>> {
    let invalid =
        |message: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned());
    loop {
        let mut header_storage = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut header_storage);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_length)) => {
                let method = parsed.method.unwrap_or("GET").to_owned();
                let target = parsed.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let keep_alive_default = parsed.version == Some(1);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|header| {
                        (
                            header.name.to_owned(),
                            String::from_utf8_lossy(header.value).into_owned(),
                        )
                    })
                    .collect();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(header, _)| header.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value.clone())
                };
                let keep_alive = match header("connection") {
                    Some(value) if value.eq_ignore_ascii_case("close") => false,
                    Some(value) if value.eq_ignore_ascii_case("keep-alive") => true,
                    _ => keep_alive_default,
                };
                let content_length: usize = match header("content-length") {
                    Some(value) => value
                        .trim()
                        .parse()
                        .map_err(|_| invalid("bad content-length"))?,
                    None => 0,
                };
                if content_length > MAX_REQUEST_BYTES {
                    return Err(invalid("request body too large"));
                }
                let request_path = path.to_owned();
                let request_query = parse_query(query);
                while buffer.len() < head_length + content_length {
                    if stream.read_buf(buffer).await? == 0 {
                        return Err(invalid("connection closed inside a request body"));
                    }
                }
                let body = buffer[head_length..head_length + content_length].to_vec();
                let request = HttpRequest {
                    method,
                    path: request_path,
                    query: request_query,
                    headers,
                    body,
                    extra_rows: 0,
                };
                return Ok(Some((request, keep_alive, head_length + content_length)));
            }
            Ok(httparse::Status::Partial) => {
                if buffer.len() > MAX_REQUEST_BYTES {
                    return Err(invalid("request head too large"));
                }
                if stream.read_buf(buffer).await? == 0 {
                    if buffer.is_empty() {
                        return Ok(None);
                    }
                    return Err(invalid("connection closed inside a request head"));
                }
            }
            Err(error) => return Err(invalid(&format!("malformed request: {error}"))),
        }
    }
}
