//! Opening a connection's socket: our own TCP connect, so the WebSocket
//! runs over a stream that notes when it read ([`ReadClock`]), TLS where
//! the URL says `wss`, and tungstenite's settings for it.

use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::domain::TimeUs;

use super::link::Socket;
use super::read_clock::ReadClock;

/// The byte stream under a link's TLS and WebSocket: the TCP connection,
/// noting when it read ([`ReadClock`]), read through a buffer of
/// [`SOCKET_READ_BYTES`].
pub(super) type ByteStream = BufReader<ReadClock<TcpStream>>;

/// What one read of the socket may bring. Tungstenite reads into the free
/// room of its own buffer, and while a burst's frames wait for their WAL
/// batch they hold that buffer, so each refill is a new one sized for the
/// frame at hand: straight from the socket that was a system call every 1
/// to 3 KB (254,403 `recvfrom` for a 3 M-frame burst, against 5,188 for
/// the bare loop's; docs/BENCHMARKS.md, session 35). Read through this
/// buffer, one call brings what the socket holds, up to this, and
/// tungstenite's small reads are copies out of it.
const SOCKET_READ_BYTES: usize = 64 * 1024;

/// When the socket read that brought the latest bytes returned (epoch
/// µs): the receive time of every frame those bytes completed. The
/// buffer sits above the clock, so a frame read out of it later keeps the
/// time its bytes left the socket.
pub(super) fn last_read_us(socket: &Socket) -> TimeUs {
    socket.get_ref().get_ref().get_ref().last_read_us()
}

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
    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(Error::Io)?;
    let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
        request,
        BufReader::with_capacity(SOCKET_READ_BYTES, ReadClock::new(tcp)),
        Some(socket_config()),
        None,
    )
    .await?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::binance::ws::now_us;

    /// As a link reads: the clock under the buffer. Bytes taken out of the
    /// buffer after the socket read that brought them keep that read's
    /// time; only a read that goes to the socket again moves it.
    #[tokio::test]
    async fn bytes_read_out_of_the_buffer_keep_the_time_of_the_socket_read() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = BufReader::with_capacity(SOCKET_READ_BYTES, ReadClock::new(near));
        far.write_all(&[b'a'; 10_000]).await.expect("far writes");
        let mut first = [0u8; 1_000];
        socket.read_exact(&mut first).await.expect("read");
        let brought = socket.get_ref().last_read_us();
        // Wait until the clock has moved on, so a later stamp would show.
        while now_us() <= brought {
            std::hint::spin_loop();
        }
        far.write_all(&[b'b'; 5_000])
            .await
            .expect("far writes more");
        let mut rest = vec![0u8; 9_000];
        socket.read_exact(&mut rest).await.expect("read the rest");
        assert!(rest.iter().all(|&byte| byte == b'a'));
        assert_eq!(
            socket.get_ref().last_read_us(),
            brought,
            "served by the buffer"
        );
        let mut more = [0u8; 10];
        socket.read_exact(&mut more).await.expect("read on");
        assert_eq!(&more, b"bbbbbbbbbb");
        assert!(
            socket.get_ref().last_read_us() > brought,
            "a socket read again"
        );
    }
}
