//! A real Azure Blob endpoint for the `az://` upload tests: Azurite's blob
//! service (the npm package pinned in scripts/azurite/, installed by
//! scripts/setup.sh into .tools/azurite) on 127.0.0.1 and a free port, in
//! memory, telemetry off, waited on by condition, killed when dropped.
//! Its one account is Azurite's documented development account.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::local_server::LocalServer;

/// Azurite's development account and its published key (not a secret:
/// every Azurite has it). The recorder reads the key from the
/// environment, like a real one.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Azure variables the recorder's client reads (`AZURE_*`).
pub fn set_credentials_env() {
    std::env::set_var("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT);
    std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY);
}

/// The credentials as child-process environment.
pub fn credentials_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT),
        ("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY),
    ]
}

fn azurite_script() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/azurite/node_modules/azurite/dist/src/blob/main.js");
    assert!(
        script.exists(),
        "{} is missing: run scripts/setup.sh (it installs scripts/azurite/)",
        script.display()
    );
    script
}

/// Azurite's blob service, killed when dropped.
pub struct AzuriteServer {
    server: LocalServer,
    /// Azurite's working directory (in memory, it writes nothing there).
    _workspace: tempfile::TempDir,
    pub port: u16,
}

impl AzuriteServer {
    /// Starts Azurite on a free port and waits until it answers HTTP.
    pub async fn start() -> AzuriteServer {
        let workspace = tempfile::tempdir().expect("azurite workspace");
        let server = LocalServer::start("azurite", |port| {
            Command::new("node")
                .arg(azurite_script())
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ])
                // In memory, Azurite takes no --location; its debug and
                // account files would go to the working directory.
                .current_dir(workspace.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node runs azurite")
        })
        .await;
        AzuriteServer {
            port: server.port,
            server,
            _workspace: workspace,
        }
    }

    /// The blob service URL of the account (path style, as Azurite serves it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// A client of one container, for the tests' own reads and writes.
pub fn client(endpoint: &str, container: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        MicrosoftAzureBuilder::new()
            .with_endpoint(endpoint.to_owned())
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_container_name(container)
            .with_allow_http(true)
            .build()
            .expect("Azure client"),
    )
}

/// Creates `container` (Azurite starts empty): one `Create Container`
/// request signed with the account's Shared Key.
pub async fn create_container(port: u16, container: &str) {
    const VERSION: &str = "2021-08-06";
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let path = format!("/{ACCOUNT}/{container}");
    // Verb, then the eleven standard headers (all empty here), the x-ms-
    // headers sorted, and the resource: the account, the path, the query.
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n/{ACCOUNT}{path}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(ACCOUNT_KEY)
        .expect("the key is base64");
    let signature = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
    );
    let authorization = format!(
        "SharedKey {ACCOUNT}:{}",
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("azurite reachable");
    let request = format!(
        "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\n\
         x-ms-version: {VERSION}\r\nAuthorization: {authorization}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer read");
    assert!(
        answer.starts_with(b"HTTP/1.1 201"),
        "container {container} created: {}",
        String::from_utf8_lossy(&answer)
    );
}
