//! A link's socket: our own TCP connect, so the WebSocket runs over a
//! stream that notes when it read ([`ReadClock`]), TLS where the URL says
//! `wss`, and tungstenite's WebSocket driven by the link's task itself
//! ([`Socket`]).

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error, TlsError, UrlError};
use tokio_tungstenite::tungstenite::handshake::client::ClientHandshake;
use tokio_tungstenite::tungstenite::handshake::HandshakeError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, WebSocket};
use tokio_tungstenite::MaybeTlsStream;

use crate::domain::TimeUs;

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

/// The socket's settings: tungstenite's defaults but a read buffer of
/// 32 KiB instead of 128. Before each read tungstenite fills the buffer's
/// free space with zeros (`FrameCodec::read_in`), up to 128 KiB a read for
/// reads that bring about 2 KB in a firehose (19,092 reads for 200,000
/// frames); a frame bigger than the buffer still gets room for all of it.
/// In a 2 M-frame burst, three interleaved pairs: 2.46 / 2.47 / 2.32
/// CPU-seconds a million with 128 KiB, 2.14 / 2.30 / 2.10 with 32 KiB.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(32 * 1024)
}

/// The TLS settings of every `wss` link: the Mozilla roots of
/// `webpki-roots` (as tokio-tungstenite's own connector used them), made
/// once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Opens the WebSocket at `url` over a socket that notes when it read
/// ([`ReadClock`]); TLS where the URL says `wss`. As
/// `tokio_tungstenite::connect_async_with_config` does, Nagle left on.
pub(super) async fn connect(url: &str) -> Result<Socket, Error> {
    connect_trusting(url, tls_config()).await
}

/// [`connect`] with the TLS settings given (a test's own root).
async fn connect_trusting(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Socket, Error> {
    let request = url.into_client_request()?;
    let host = request
        .uri()
        .host()
        .ok_or(Error::Url(UrlError::NoHostName))?
        .to_owned();
    let secure = match request.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(Error::Url(UrlError::UnsupportedUrlScheme)),
    };
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    // The host as the URL writes it: an IPv6 address keeps its brackets.
    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(Error::Io)?;
    let bytes = BufReader::with_capacity(SOCKET_READ_BYTES, ReadClock::new(tcp));
    let stream = if secure {
        // rustls names an IPv6 address without its brackets.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|_| Error::Tls(TlsError::InvalidDnsName))?
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, bytes)
            .await
            .map_err(Error::Io)?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(bytes)
    };
    let mut handshake = Some(ClientHandshake::start(
        Polled::new(stream),
        request,
        Some(socket_config()),
    )?);
    poll_fn(|context| {
        let mut mid = handshake.take().expect("polled after it ended");
        mid.get_mut().get_mut().set_waker(context.waker());
        match mid.handshake() {
            Ok((websocket, _response)) => Poll::Ready(Ok(Socket {
                websocket,
                ended: false,
            })),
            Err(HandshakeError::Interrupted(mid)) => {
                handshake = Some(mid);
                Poll::Pending
            }
            Err(HandshakeError::Failure(error)) => Poll::Ready(Err(error)),
        }
    })
    .await
}

/// One link's WebSocket, read and written by its task alone.
///
/// tokio-tungstenite's `WebSocketStream` lets a reading task and a writing
/// task share a socket: every poll registers the caller's waker in two
/// atomic slots and reads through a proxy waker that wakes both
/// (`AtomicWaker::register` alone was 5-6 % of a burst's samples). A link
/// is one task, so here the task's waker is kept as it is, replaced only
/// when the task's waker changes, and each read of tungstenite's sync
/// `WebSocket` polls the stream with it; `WouldBlock` is the poll's
/// `Pending`, as in tokio-tungstenite.
pub(super) struct Socket {
    websocket: WebSocket<Polled<MaybeTlsStream<ByteStream>>>,
    /// Read to its end, or failed: nothing more comes (tungstenite would
    /// answer `AlreadyClosed`).
    ended: bool,
}

impl Socket {
    /// The next message, `None` once the socket has ended, or `Pending`
    /// with the task's waker kept for the bytes still to come.
    pub(super) fn poll_next(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.websocket.get_mut().set_waker(context.waker());
        match self.websocket.read() {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(error) if would_block(&error) => Poll::Pending,
            Err(Error::AlreadyClosed | Error::ConnectionClosed) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(error) => {
                self.ended = true;
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    /// Sends `message` and waits until it is written out, at most
    /// [`WRITE_WAIT`].
    pub(super) async fn send(&mut self, message: Message) -> Result<(), Error> {
        self.write_out(|websocket| websocket.write(message)).await
    }

    /// Sends a Close frame and waits until it is written out, at most
    /// [`WRITE_WAIT`] (the peer's answer is not waited for).
    pub(super) async fn close(&mut self) -> Result<(), Error> {
        self.write_out(|websocket| match websocket.close(None) {
            Err(Error::ConnectionClosed) => Ok(()),
            queued => queued,
        })
        .await
    }

    /// Queues a frame with `queue`, once, and flushes until it is written
    /// out, at most [`WRITE_WAIT`]. A queue or flush that would block has
    /// kept the frame, and the task's waker with the socket.
    async fn write_out(
        &mut self,
        queue: impl FnOnce(&mut WebSocket<Polled<MaybeTlsStream<ByteStream>>>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut queue = Some(queue);
        let written = poll_fn(|context| {
            self.websocket.get_mut().set_waker(context.waker());
            if let Some(queue) = queue.take() {
                match queue(&mut self.websocket) {
                    Err(error) if !would_block(&error) => return Poll::Ready(Err(error)),
                    _ => {}
                }
            }
            match self.websocket.flush() {
                Ok(()) | Err(Error::ConnectionClosed) => Poll::Ready(Ok(())),
                Err(error) if would_block(&error) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            }
        });
        within_write_wait(written).await
    }

    /// When the socket read that brought the latest bytes returned (epoch
    /// µs): the receive time of every frame those bytes completed. The
    /// buffer sits above the clock, so a frame read out of it later keeps
    /// the time its bytes left the socket.
    pub(super) fn last_read_us(&self) -> TimeUs {
        self.websocket
            .get_ref()
            .stream
            .get_ref()
            .get_ref()
            .last_read_us()
    }
}

/// How long a write (a SUBSCRIBE, a Close) waits for the peer to take
/// it. The link's task reads nothing while it waits, and a peer that has
/// left our few bytes unread for this long is not served by waiting
/// longer: the write fails, and the link is lost (or, closing, dropped).
const WRITE_WAIT: Duration = Duration::from_secs(2);

/// The socket had nothing to read, or no room to write: `Pending`, as
/// tungstenite reports it.
fn would_block(error: &Error) -> bool {
    matches!(error, Error::Io(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// `written`, or a timed-out I/O error once [`WRITE_WAIT`] has passed.
async fn within_write_wait(
    written: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    tokio::time::timeout(WRITE_WAIT, written)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {WRITE_WAIT:?}"),
            )))
        })
}

/// An async byte stream seen as a std one by tungstenite: each read or
/// write polls it once with the waker of the task driving the socket, and
/// `Pending` is `WouldBlock`.
struct Polled<S> {
    stream: S,
    waker: Waker,
}

impl<S> Polled<S> {
    fn new(stream: S) -> Polled<S> {
        Polled {
            stream,
            waker: Waker::noop().clone(),
        }
    }

    /// Polls from now on with `waker` (no clone when it is the one kept).
    fn set_waker(&mut self, waker: &Waker) {
        self.waker.clone_from(waker);
    }
}

/// `Pending` as `WouldBlock`, as tungstenite expects of a non-blocking stream.
fn blocking<T>(polled: Poll<io::Result<T>>) -> io::Result<T> {
    match polled {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<S: AsyncRead + Unpin> Read for Polled<S> {
    fn read(&mut self, bytes: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(bytes);
        let mut context = Context::from_waker(&self.waker);
        blocking(Pin::new(&mut self.stream).poll_read(&mut context, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S: AsyncWrite + Unpin> Write for Polled<S> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut context = Context::from_waker(&self.waker);
        blocking(Pin::new(&mut self.stream).poll_write(&mut context, bytes))
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut context = Context::from_waker(&self.waker);
        blocking(Pin::new(&mut self.stream).poll_flush(&mut context))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    use super::*;
    use crate::binance::ws::now_us;

    const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

    /// The next message, failing the test if none comes within a deadline
    /// (a socket that lost its waker would wait for ever).
    async fn next(socket: &mut Socket) -> Option<Message> {
        tokio::time::timeout(
            Duration::from_secs(10),
            poll_fn(|context| socket.poll_next(context)),
        )
        .await
        .expect("a message or the end within the deadline")
        .map(|read| read.expect("read"))
    }

    /// A `wss` server on 127.0.0.1 with the test certificate for
    /// `localhost` (tests/fixtures/tls): it sends a text and a ping,
    /// waits for the pong, echoes the client's text, then closes.
    async fn serve_wss_once(listener: TcpListener) -> Vec<Message> {
        let certificates: Vec<CertificateDer> =
            CertificateDer::pem_file_iter(format!("{TLS}/localhost.pem"))
                .expect("certificate file")
                .collect::<Result<_, _>>()
                .expect("certificate");
        let key = PrivateKeyDer::from_pem_file(format!("{TLS}/localhost.key")).expect("key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .expect("server TLS settings");
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await
            .expect("TLS accept");
        let mut websocket = tokio_tungstenite::accept_async(tls)
            .await
            .expect("WebSocket accept");
        websocket
            .send(Message::text("first"))
            .await
            .expect("send text");
        websocket
            .send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .expect("send ping");
        let mut heard = Vec::new();
        while let Some(message) = websocket.next().await {
            let message = message.expect("server read");
            let echo = matches!(message, Message::Text(_)).then(|| message.clone());
            heard.push(message);
            if let Some(echo) = echo {
                websocket.send(echo).await.expect("echo");
                websocket.close(None).await.expect("close");
            }
        }
        // TLS ends with its close_notify, so the client reads a clean end.
        let _ = websocket.get_mut().shutdown().await;
        heard
    }

    /// The TLS settings of a client trusting the test CA only.
    fn trusting_the_test_ca() -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(format!("{TLS}/ca.pem")).expect("CA file")
        {
            roots.add(certificate.expect("CA")).expect("CA added");
        }
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A `wss` link: TLS to the name in the URL, the upgrade, messages both
    /// ways, a ping answered while reading, and the peer's close read as
    /// the end.
    #[tokio::test]
    async fn a_wss_socket_reads_writes_and_answers_pings_through_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(serve_wss_once(listener));
        let url = format!("wss://localhost:{port}/ws");
        let mut socket = connect_trusting(&url, trusting_the_test_ca())
            .await
            .expect("wss connect");
        assert_eq!(next(&mut socket).await, Some(Message::text("first")));
        assert!(matches!(next(&mut socket).await, Some(Message::Ping(_))));
        socket.send(Message::text("subscribe")).await.expect("send");
        assert_eq!(next(&mut socket).await, Some(Message::text("subscribe")));
        assert!(matches!(next(&mut socket).await, Some(Message::Close(_))));
        assert_eq!(next(&mut socket).await, None, "ended");
        assert_eq!(next(&mut socket).await, None, "stays ended");
        let heard = server.await.expect("server task");
        // tungstenite sends a pong with the next frame written: after the
        // text when the text is what is written next.
        assert!(
            heard.contains(&Message::Pong(b"are you there".to_vec().into())),
            "{heard:?}"
        );
        assert!(heard.contains(&Message::text("subscribe")), "{heard:?}");
        assert!(matches!(heard.last(), Some(Message::Close(_))), "{heard:?}");
    }

    /// A certificate the roots do not vouch for is refused: the link's
    /// TLS checks the server (here the test server against the Mozilla
    /// roots every real link uses).
    #[tokio::test]
    async fn a_wss_server_the_roots_do_not_vouch_for_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), serve_wss_once(listener)).await;
        });
        let refused = connect(&format!("wss://localhost:{port}/ws")).await;
        let Err(Error::Io(error)) = refused else {
            panic!(
                "expected a TLS error, got {:?}",
                refused.map(|_| "a socket")
            );
        };
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        server.abort();
    }

    /// A peer that reads nothing: once the socket's buffers are full, a
    /// send and a close give up after [`WRITE_WAIT`] instead of holding
    /// the link's task (which reads nothing while it waits) for ever.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_gives_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let websocket = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("WebSocket accept");
            // Holds the socket and reads nothing until told.
            let _ = stopped.await;
            drop(websocket);
        });
        let mut socket = connect(&format!("ws://127.0.0.1:{port}/ws"))
            .await
            .expect("ws connect");
        // Fills the socket's buffers and the peer's: a write out that
        // would block leaves the rest queued.
        let mut queued = 0;
        loop {
            match socket.websocket.write(Message::binary(vec![0u8; 1 << 20])) {
                Ok(()) => queued += 1,
                Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("write: {error}"),
            }
            assert!(queued < 1_000, "the buffers never filled");
        }
        let started = tokio::time::Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(60), socket.send(Message::text("x")))
            .await
            .expect("the send gives up before the test's deadline");
        let Err(Error::Io(error)) = sent else {
            panic!("expected a timed-out send, got {sent:?}");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), WRITE_WAIT);
        let closed = tokio::time::timeout(Duration::from_secs(60), socket.close())
            .await
            .expect("the close gives up before the test's deadline");
        assert!(closed.is_err(), "{closed:?}");
        drop(socket);
        drop(stop);
        server.await.expect("server task");
    }

    /// Frames the server writes with its upgrade reply, in the same TCP
    /// segment, are the first messages read: the bytes past the reply stay
    /// with the WebSocket the handshake hands over.
    #[tokio::test]
    async fn frames_that_come_with_the_upgrade_reply_are_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tcp = tokio::io::BufReader::new(tcp);
            let mut key = None;
            loop {
                let mut line = String::new();
                tcp.read_line(&mut line).await.expect("request line");
                if let Some(value) = line.strip_prefix("sec-websocket-key:") {
                    key = Some(value.trim().to_owned());
                }
                if let Some(value) = line.strip_prefix("Sec-WebSocket-Key:") {
                    key = Some(value.trim().to_owned());
                }
                if line == "\r\n" {
                    break;
                }
            }
            let accept = derive_accept_key(key.expect("a key").as_bytes());
            let mut reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            for text in ["one", "two"] {
                reply.extend([0x81, text.len() as u8]);
                reply.extend(text.as_bytes());
            }
            tcp.write_all(&reply).await.expect("reply and frames");
            // Held open until the client has read.
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        });
        let mut socket = connect(&format!("ws://127.0.0.1:{port}/ws"))
            .await
            .expect("ws connect");
        assert_eq!(next(&mut socket).await, Some(Message::text("one")));
        assert_eq!(next(&mut socket).await, Some(Message::text("two")));
        socket.close().await.expect("close");
        drop(socket);
        server.await.expect("server task");
    }

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
