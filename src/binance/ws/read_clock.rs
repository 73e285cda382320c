//! The socket under a stream link, noting when its bytes were read: the
//! `recv_time` of a frame is the wall-clock time of the socket read that
//! completed it, read once per read, not once per frame (a busy stream's
//! read brings ten frames or more).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::domain::TimeUs;

use super::now_us;

/// A byte stream (the TCP connection, under TLS where there is TLS) that
/// notes the wall-clock time of its latest read that brought bytes.
#[derive(Debug)]
pub struct ReadClock<S> {
    inner: S,
    last_read_us: TimeUs,
}

impl<S> ReadClock<S> {
    pub fn new(inner: S) -> ReadClock<S> {
        ReadClock {
            inner,
            last_read_us: now_us(),
        }
    }

    /// When the latest read that brought bytes returned (epoch µs): the
    /// receive time of every frame those bytes completed.
    pub fn last_read_us(&self) -> TimeUs {
        self.last_read_us
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadClock<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(context, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.last_read_us = now_us();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadClock<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(context, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The time moves with reads that bring bytes, and only with them: a
    /// write, or bytes already read, leave it.
    #[tokio::test]
    async fn the_time_is_the_latest_read_that_brought_bytes() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut clock = ReadClock::new(near);
        let opened = clock.last_read_us();
        clock.write_all(b"ping").await.expect("write");
        assert_eq!(clock.last_read_us(), opened, "a write is not a read");
        let mut echoed = [0u8; 4];
        far.read_exact(&mut echoed).await.expect("far reads");
        far.write_all(b"first").await.expect("far writes");
        let mut first = [0u8; 5];
        let before_read = now_us();
        clock.read_exact(&mut first).await.expect("read");
        let first_read = clock.last_read_us();
        assert!(first_read >= before_read && first_read <= now_us());
        assert_eq!(&first, b"first");
        far.write_all(b"second").await.expect("far writes");
        let mut second = [0u8; 6];
        clock.read_exact(&mut second).await.expect("read");
        assert!(clock.last_read_us() >= first_read);
        drop(far);
        let mut rest = Vec::new();
        let at_end = clock.last_read_us();
        clock.read_to_end(&mut rest).await.expect("end");
        assert_eq!(clock.last_read_us(), at_end, "the end brings no bytes");
    }
}
