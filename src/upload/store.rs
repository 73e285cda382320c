//! The object store side of one upload: build the S3 or Azure client, put a sealed
//! file at its key (conditionally where the store supports it, never over
//! a more complete object), and verify what the store holds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
use tracing::{info, warn};

use super::config::{Destination, Scheme, UploadConfig, MULTIPART_PART_BYTES};
use super::decide::{etag_matches, expected_etag, judge_replace, Replace};
use super::marker::{FileStamp, Marker, Settled};
use crate::parquet_out;

/// Why one upload did not settle. Every kind is retried (with back-off):
/// a store that is down, refuses or loses a race comes back or settles.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the local file is gone (moved aside or deleted)")]
    LocalGone,
    #[error("cannot read the local file: {0}")]
    Local(std::io::Error),
    #[error("the local file is not a readable sealed file: {0}")]
    LocalUnreadable(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("the object does not match what was written: {0}")]
    Mismatch(String),
    #[error("other writers changed the object during every attempt")]
    Contended,
}

/// The client's timeouts: a store that does not answer is a failed
/// attempt (retried by our loop), never a task stuck forever.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300))
}

/// Our own loop retries forever with back-off; the client retries a
/// little so one dropped connection does not cost a whole back-off.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
    }
}

/// Builds the destination's client. Credentials come from the environment
/// (`AmazonS3Builder::from_env`: the usual AWS sources;
/// `MicrosoftAzureBuilder::from_env`: `AZURE_*`), never the config.
pub fn build_store(config: &UploadConfig) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let Destination { scheme, bucket, .. } = &config.destination;
    match scheme {
        Scheme::S3 => {
            let mut builder = AmazonS3Builder::from_env()
                // Client options first: they replace every client option,
                // and `allow_http` is one of them.
                .with_client_options(client_options())
                .with_bucket_name(bucket)
                .with_allow_http(config.s3.allow_http)
                .with_conditional_put(if config.s3.conditional_put {
                    S3ConditionalPut::ETagMatch
                } else {
                    S3ConditionalPut::Disabled
                })
                .with_retry(retry_config());
            if let Some(endpoint) = &config.s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &config.s3.region {
                builder = builder.with_region(region);
            }
            if let Some(virtual_hosted) = config.s3.virtual_hosted_style {
                builder = builder.with_virtual_hosted_style_request(virtual_hosted);
            }
            Ok(Arc::new(builder.build()?))
        }
        Scheme::Azure => {
            let mut builder = MicrosoftAzureBuilder::from_env()
                .with_client_options(client_options())
                .with_container_name(bucket)
                .with_allow_http(config.azure.allow_http)
                .with_retry(retry_config());
            if let Some(account) = &config.azure.account {
                builder = builder.with_account(account);
            }
            if let Some(endpoint) = &config.azure.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            Ok(Arc::new(builder.build()?))
        }
    }
}

/// A client of `destination` configured from the environment only
/// (`verify --root`, which has no config file): `AWS_*` for `s3://`
/// (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), `AZURE_*` for `az://`
/// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ENDPOINT`,
/// `AZURE_ALLOW_HTTP`, ...).
pub fn store_from_env(
    destination: &Destination,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    Ok(match destination.scheme {
        Scheme::S3 => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(&destination.bucket)
                .build()?,
        ),
        Scheme::Azure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(&destination.bucket)
                .build()?,
        ),
    })
}

/// The object key of a file: the destination's prefix, then its path
/// under the data directory (the Hive path).
pub fn object_key(config: &UploadConfig, relative: &str) -> String {
    let prefix = &config.destination.prefix;
    if prefix.is_empty() {
        relative.to_owned()
    } else {
        format!("{prefix}/{relative}")
    }
}

/// How one file settled.
#[derive(Debug)]
pub struct Settlement {
    pub marker: Marker,
    /// Bytes sent (0 when the object was already there or kept).
    pub bytes_sent: u64,
}

/// Puts at most this many times per attempt when other writers race us.
const MAX_RACES: usize = 4;

/// Uploads `relative` (a sealed file under `root`) to its key and
/// verifies it; or settles without writing when the key already holds
/// this file, or a more complete one.
pub async fn upload_file(
    store: &dyn ObjectStore,
    config: &UploadConfig,
    root: &Path,
    relative: &str,
) -> Result<Settlement, UploadError> {
    let path = root.join(relative);
    let (bytes, stamp) = tokio::task::spawn_blocking(move || read_with_stamp(&path))
        .await
        .map_err(|error| UploadError::Local(std::io::Error::other(error)))??;
    let key_text = object_key(config, relative);
    let key = ObjectPath::from(key_text.as_str());
    let multipart = bytes.len() as u64 >= config.multipart_threshold_bytes;
    let part_bytes = multipart.then_some(MULTIPART_PART_BYTES);
    let expected = expected_etag(&bytes, part_bytes);
    let local = parquet_out::summary_from_bytes(Path::new(relative), bytes.clone())
        .map_err(|error| UploadError::LocalUnreadable(error.to_string()))?;
    let marker = |settled: Settled, e_tag: Option<String>| Marker {
        stamp,
        settled,
        e_tag,
        key: key_text.clone(),
    };
    for _ in 0..MAX_RACES {
        let mode = match store.head(&key).await {
            Err(object_store::Error::NotFound { .. }) => PutMode::Create,
            Err(error) => return Err(error.into()),
            Ok(meta) => {
                let same_etag = meta
                    .e_tag
                    .as_deref()
                    .is_some_and(|e_tag| etag_matches(e_tag, &expected));
                if same_etag && meta.size == bytes.len() as u64 {
                    return Ok(Settlement {
                        marker: marker(Settled::Uploaded, meta.e_tag),
                        bytes_sent: 0,
                    });
                }
                let remote_bytes = store.get(&key).await?.bytes().await?;
                // Where ETags are not MD5s (Azure Blob, encrypted S3
                // buckets), the object that is this very file is known
                // by its bytes.
                if remote_bytes == bytes {
                    return Ok(Settlement {
                        marker: marker(Settled::Uploaded, meta.e_tag),
                        bytes_sent: 0,
                    });
                }
                let remote = parquet_out::summary_from_bytes(Path::new(&key_text), remote_bytes);
                if let Err(error) = &remote {
                    warn!(key = %key_text, %error, "the object at this key is not a readable sealed file; replacing it");
                }
                match judge_replace(&local, remote.as_ref().ok()) {
                    Replace::KeepRemote { why } => {
                        info!(key = %key_text, why, local_rows = local.row_count, local_holes = local.unfilled.len(), "the bucket keeps its object; the local file is not uploaded");
                        return Ok(Settlement {
                            marker: marker(Settled::RemoteKept, meta.e_tag),
                            bytes_sent: 0,
                        });
                    }
                    Replace::Write => PutMode::Update(UpdateVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    }),
                }
            }
        };
        match put(store, config, &key, bytes.clone(), mode).await {
            Ok(()) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                info!(key = %key_text, "another writer changed the object meanwhile; judging again");
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        let e_tag = verify(store, &key, &bytes, &expected).await?;
        return Ok(Settlement {
            marker: marker(Settled::Uploaded, e_tag),
            bytes_sent: bytes.len() as u64,
        });
    }
    Err(UploadError::Contended)
}

/// One put: a single request below the multipart threshold (conditional
/// where configured), else a multipart upload. S3 has no conditional
/// multipart upload, so a large file replaces an object on the judgment
/// of the HEAD and GET just before it (docs/DATASET.md says so).
async fn put(
    store: &dyn ObjectStore,
    config: &UploadConfig,
    key: &ObjectPath,
    bytes: Bytes,
    mode: PutMode,
) -> Result<(), object_store::Error> {
    if (bytes.len() as u64) < config.multipart_threshold_bytes {
        let mode = if config.conditional_put() {
            mode
        } else {
            PutMode::Overwrite
        };
        store
            .put_opts(key, PutPayload::from(bytes), PutOptions::from(mode))
            .await?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_BYTES);
    writer.put(bytes);
    writer.finish().await.map(|_| ())
}

/// Reads the object back: its size and ETag must be what was written;
/// where the store's ETag is not an MD5 (encrypted buckets), the bytes
/// themselves are compared. Returns the ETag.
async fn verify(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    bytes: &Bytes,
    expected: &str,
) -> Result<Option<String>, UploadError> {
    let meta = store.head(key).await?;
    if meta.size != bytes.len() as u64 {
        return Err(UploadError::Mismatch(format!(
            "{} bytes stored, {} written",
            meta.size,
            bytes.len()
        )));
    }
    let etag_ok = meta
        .e_tag
        .as_deref()
        .is_some_and(|e_tag| etag_matches(e_tag, expected));
    if !etag_ok {
        let stored = store.get(key).await?.bytes().await?;
        if stored != *bytes {
            return Err(UploadError::Mismatch(format!(
                "ETag {:?} is not {expected:?} and the bytes read back differ",
                meta.e_tag
            )));
        }
    }
    Ok(meta.e_tag)
}

/// The file's bytes and the stamp of the version read (one open file, so
/// a reseal renaming a new file in place meanwhile cannot mix them).
fn read_with_stamp(path: &Path) -> Result<(Bytes, FileStamp), UploadError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => UploadError::LocalGone,
        _ => UploadError::Local(error),
    })?;
    let metadata = file.metadata().map_err(UploadError::Local)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(UploadError::Local)?;
    Ok((Bytes::from(bytes), FileStamp::of(&metadata)))
}
