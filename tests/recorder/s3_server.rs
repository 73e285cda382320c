//! A real S3-compatible server for the upload tests: moto's server (the
//! `moto[server]` package pinned in scripts/requirements-test.txt, in the
//! venv scripts/setup.sh makes) on 127.0.0.1 and a free port, waited on by
//! condition, killed when dropped; and a TCP proxy in front of it that a
//! test can cut (every connection reset, new ones refused, even in the
//! middle of an upload) and bring back, while moto keeps what it stored.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::local_server::LocalServer;

/// Any credentials do for moto; the recorder reads them from the
/// environment like real ones (never from its config).
pub const ACCESS_KEY: &str = "testing-access-key";
pub const SECRET_KEY: &str = "testing-secret-key";
pub const REGION: &str = "us-east-1";

/// Sets the AWS variables the recorder's S3 client reads. Every upload
/// test sets the same values (nextest runs each test in its own process).
pub fn set_credentials_env() {
    // Every test sets the same values, so a test running beside another
    // (cargo test threads) never sees a different one.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", REGION);
    // No instance-metadata probe, ever: tests never leave the machine.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// The credentials as child-process environment.
pub fn credentials_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn moto_binary() -> PathBuf {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/setup.sh (it installs scripts/requirements-test.txt)",
        binary.display()
    );
    binary
}

/// moto's S3 server, killed when dropped.
pub struct MotoServer {
    server: LocalServer,
    pub port: u16,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub async fn start() -> MotoServer {
        let server = LocalServer::start("moto_server", |port| {
            Command::new(moto_binary())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server starts")
        })
        .await;
        MotoServer {
            port: server.port,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// A client of the same server, for the tests' own reads and writes.
pub fn client(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_allow_http(true)
            .build()
            .expect("S3 client"),
    )
}

/// Creates `bucket` (moto starts empty).
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await.expect("moto reachable");
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"),
        "bucket {bucket} created: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// A TCP proxy on 127.0.0.1 in front of `target`; `cut` resets every
/// connection and refuses new ones until `restore`.
pub struct CuttableProxy {
    pub port: u16,
    up: watch::Sender<bool>,
    /// Cut as soon as a client starts sending a PUT (mid-upload).
    cut_on_put: Arc<AtomicBool>,
    /// PUT requests seen (each part of a multipart upload is one).
    pub n_puts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(target_port: u16) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let (up, up_watch) = watch::channel(true);
        let cut_on_put = Arc::new(AtomicBool::new(false));
        let n_puts = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target_port,
            up_watch,
            up.clone(),
            cut_on_put.clone(),
            n_puts.clone(),
        ));
        CuttableProxy {
            port,
            up,
            cut_on_put,
            n_puts,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// The next PUT's connection is reset before its body is through, and
    /// the proxy stays cut from then on.
    pub fn cut_on_next_put(&self) {
        self.cut_on_put.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target_port: u16,
    up_watch: watch::Receiver<bool>,
    up: watch::Sender<bool>,
    cut_on_put: Arc<AtomicBool>,
    n_puts: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !*up_watch.borrow() {
            // Down: the connection is reset at once (as a dead server's
            // port refuses).
            drop(client);
            continue;
        }
        while connections.try_join_next().is_some() {}
        connections.spawn(relay(
            client,
            target_port,
            up_watch.clone(),
            up.clone(),
            cut_on_put.clone(),
            n_puts.clone(),
        ));
    }
}

async fn relay(
    client: TcpStream,
    target_port: u16,
    mut up_watch: watch::Receiver<bool>,
    up: watch::Sender<bool>,
    cut_on_put: Arc<AtomicBool>,
    n_puts: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let chunk = &buffer[..n];
            if chunk.starts_with(b"PUT ") {
                n_puts.fetch_add(1, Ordering::SeqCst);
                if cut_on_put.swap(false, Ordering::SeqCst) {
                    // Half the request through, then the server is gone.
                    let _ = server_write.write_all(&chunk[..n / 2]).await;
                    up.send_replace(false);
                    return;
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    let cut = async {
        let _ = up_watch.wait_for(|up| !*up).await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        () = cut => {}
    }
}
