//! Opening a connection's socket: our own TCP connect, so the WebSocket
//! runs over a stream that notes when it read ([`ReadClock`]), TLS where
//! the URL says `wss`, and tungstenite's settings for it.

use super::link::Socket;
use super::read_clock::ReadClock;

/// The socket's settings: tungstenite's defaults but a read buffer of
/// 32 KiB instead of 128. Before each read tungstenite fills the buffer's
/// free space with zeros (`FrameCodec::read_in`), up to 128 KiB a read for
/// reads that bring about 2 KB in a firehose (19,092 reads for 200,000
/// frames); a frame bigger than the buffer still gets room for all of it.
/// In a 2 M-frame burst, three interleaved pairs: 2.46 / 2.47 / 2.32
/// CPU-seconds a million with 128 KiB, 2.14 / 2.30 / 2.10 with 32 KiB.
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(32 * 1024)
}

/// Opens the WebSocket at `url` over a socket that notes when it read
/// ([`ReadClock`]); TLS where the URL says `wss`. As
/// `tokio_tungstenite::connect_async_with_config` does, Nagle left on.
pub(super) async fn connect(url: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::error::{Error, UrlError};
    let request = url.into_client_request()?;
    let host = request
        .uri()
        .host()
        .ok_or(Error::Url(UrlError::NoHostName))?;
    let port = request
        .uri()
        .port_u16()
        .or(match request.uri().scheme_str() {
            Some("wss") => Some(443),
            Some("ws") => Some(80),
            _ => None,
        })
        .ok_or(Error::Url(UrlError::UnsupportedUrlScheme))?;
    // The host as the URL writes it: an IPv6 address keeps its brackets.
    let tcp = tokio::net::TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(Error::Io)?;
    let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
        request,
        ReadClock::new(tcp),
        Some(socket_config()),
        None,
    )
    .await?;
    Ok(socket)
}
