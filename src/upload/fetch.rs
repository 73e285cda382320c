//! `verify --root s3://bucket/prefix` (or `az://container/prefix`): the dataset's objects are
//! downloaded into a scratch directory that mirrors the bucket's layout,
//! and the same `verify` runs on it as on a local copy.
//!
//! Why download rather than read footers in place through parquet's async
//! reader: `verify` reads key columns as well as footers, through the
//! synchronous reader its checks are written against; a download runs
//! every check unchanged (a bucket and a local copy cannot disagree
//! because of two code paths), and needs no extra parquet feature. The
//! cost is disk: `--market`, `--stream` and `--symbol` narrow what is
//! downloaded, and the scratch directory is removed at the end.
//!
//! The client is configured from the environment only (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, credentials; `AZURE_STORAGE_*`,
//! `AZURE_ALLOW_HTTP`), as the daemon's is apart from its `[storage.s3]`
//! and `[storage.azure]` keys (`store::store_from_env`).

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::config::parse_destination;
use super::store::store_from_env;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Url(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A directory removed when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "binance-recorder-verify-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether a `--root` names a bucket rather than a folder.
pub fn is_remote(root: &str) -> bool {
    root.contains("://")
}

/// Objects downloaded at once.
const CONCURRENT_DOWNLOADS: usize = 8;

/// Downloads the sealed files under `url` whose path has every one of
/// `partitions` (e.g. `market=spot`, `stream=trade`) into a scratch
/// directory; returns it and the number of files.
pub fn download_dataset(
    url: &str,
    partitions: &[String],
) -> Result<(ScratchDir, usize), FetchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| FetchError::Io {
            path: PathBuf::from("(runtime)"),
            source,
        })?;
    runtime.block_on(download(url, partitions))
}

async fn download(url: &str, partitions: &[String]) -> Result<(ScratchDir, usize), FetchError> {
    crate::binance::ensure_crypto_provider();
    let destination =
        parse_destination(url).map_err(|error| FetchError::Url(format!("--root: {error}")))?;
    let store = store_from_env(&destination)?;
    let prefix = destination.prefix;
    let scratch = ScratchDir::new().map_err(|source| FetchError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
    let mut wanted = Vec::new();
    let mut listing = store.list(prefix_path.as_ref());
    while let Some(meta) = listing.next().await {
        let location = meta?.location;
        let full = location.as_ref();
        let relative = if prefix.is_empty() {
            full
        } else {
            match full
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(relative) => relative,
                None => continue,
            }
        };
        let parts: Vec<&str> = relative.split('/').collect();
        let in_tree = parts
            .first()
            .is_some_and(|first| first.starts_with("market="))
            && relative.ends_with(".parquet")
            && !parts.iter().any(|part| part.is_empty() || *part == "..");
        if in_tree
            && partitions
                .iter()
                .all(|partition| parts.contains(&partition.as_str()))
        {
            wanted.push((location.clone(), scratch.path().join(relative)));
        }
    }
    let n_files = wanted.len();
    let store = &store;
    let mut downloads = futures_util::stream::iter(wanted)
        .map(|(location, target)| async move {
            let bytes = store.get(&location).await?.bytes().await?;
            let write = |target: &Path| -> std::io::Result<()> {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(target, &bytes)
            };
            write(&target).map_err(|source| FetchError::Io {
                path: target.clone(),
                source,
            })
        })
        .buffer_unordered(CONCURRENT_DOWNLOADS);
    while let Some(done) = downloads.next().await {
        done?;
    }
    Ok((scratch, n_files))
}
