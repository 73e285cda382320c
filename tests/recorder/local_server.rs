//! A server a test runs as a child process on 127.0.0.1 and a free port
//! (moto for S3, Azurite for Azure Blob): started up to three times on a
//! fresh port should another process take the port first, waited on by
//! condition (it answers HTTP), killed when dropped.

#![allow(dead_code)]

use std::process::Child;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A child-process server on a loopback port, killed when dropped.
pub struct LocalServer {
    child: Option<Child>,
    pub port: u16,
}

impl LocalServer {
    /// Spawns `spawn(port)` on a free port and waits until it answers
    /// HTTP; tries three ports before giving up, naming `name`.
    pub async fn start(name: &str, mut spawn: impl FnMut(u16) -> Child) -> LocalServer {
        for _ in 0..3 {
            let port = free_port();
            let mut server = LocalServer {
                child: Some(spawn(port)),
                port,
            };
            if server.wait_ready(Duration::from_secs(30)).await {
                return server;
            }
            // Another process took the port between our probe and the bind.
            server.kill();
        }
        panic!("{name} did not answer on any of three free ports");
    }

    /// Waits until `GET /` answers, or the process exits, or `within` passes.
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        while Instant::now() < deadline {
            ticker.tick().await;
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
            }
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await else {
                continue;
            };
            let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            if stream.write_all(request.as_bytes()).await.is_err() {
                continue;
            }
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.") {
                return true;
            }
        }
        false
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}
