//! `[storage]` keys of the upload: where sealed files go (`destination`),
//! how the S3 or Azure client reaches it (`[storage.s3]`,
//! `[storage.azure]`), how long local copies are kept and when a backlog is
//! loud. Serde structs in, a validated [`UploadConfig`] out; a bad value is
//! a [`ConfigError`] naming the key.
//!
//! Credentials are never read from the config file: the S3 client takes
//! them from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, web identity, ECS or instance metadata), the usual
//! AWS sources; the Azure client from `AZURE_STORAGE_ACCOUNT_KEY`,
//! `AZURE_STORAGE_SAS_TOKEN`, a service principal (`AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`), workload identity or managed
//! identity. They are never logged.
//!
//! `gs://` is refused: see [`GCS_REFUSED`].

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

/// A key with a value that cannot be used, and why (`crate::config`
/// turns it into its `ConfigError::Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The S3 client's options: `[storage.s3]`. Every key is optional; the
/// environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, ...) fills what is not set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3 {
    /// An S3-compatible server's URL (MinIO, Ceph, R2, ...); none for AWS.
    pub endpoint: Option<String>,
    /// The bucket's region; none takes `AWS_REGION` or `us-east-1`.
    pub region: Option<String>,
    /// `true`: `https://<bucket>.<endpoint>/<key>` (AWS's default);
    /// `false`: `https://<endpoint>/<bucket>/<key>` (path style, what most
    /// S3-compatible servers want).
    pub virtual_hosted_style: Option<bool>,
    /// Plain HTTP to `endpoint`. Refused unless the endpoint is a loopback
    /// address: credentials and data never cross a network unencrypted.
    pub allow_http: bool,
    /// Conditional puts (`If-None-Match`, `If-Match`), so that two
    /// recorders racing for one key never overwrite each other blindly.
    /// Turn off only for a server that refuses them.
    pub conditional_put: bool,
}

impl Default for RawS3 {
    fn default() -> Self {
        RawS3 {
            endpoint: None,
            region: None,
            virtual_hosted_style: None,
            allow_http: false,
            conditional_put: true,
        }
    }
}

/// The Azure Blob client's options: `[storage.azure]`. Every key is
/// optional; the environment (`AZURE_STORAGE_ACCOUNT_NAME`,
/// `AZURE_STORAGE_ENDPOINT`, ...) fills what is not set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAzure {
    /// The storage account's name (not a secret); none takes
    /// `AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    /// The blob service's URL when it is not
    /// `https://<account>.blob.core.windows.net` (sovereign clouds, Azurite:
    /// `http://127.0.0.1:10000/<account>`).
    pub endpoint: Option<String>,
    /// Plain HTTP to `endpoint`. Refused unless the endpoint is a loopback
    /// address.
    pub allow_http: bool,
}

/// Why `gs://` is refused, said where it is refused. Google Cloud Storage
/// is not supported until it can be tested: object_store's GCS client
/// speaks GCS's XML API (HEAD, list, conditional puts on generations,
/// multipart uploads), and no emulator installable from the package
/// registries this project uses answers all of it.
pub const GCS_REFUSED: &str = "gs:// (Google Cloud Storage) is not supported in this release: \
     it has no emulator the test suite can install that serves what the upload needs \
     (conditional puts, multipart uploads), so it is untested. Supported: s3:// (AWS and \
     S3-compatible servers) and az:// (Azure Blob)";

/// Multipart uploads are used from this size up by default (64 MiB).
pub const DEFAULT_MULTIPART_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
/// S3's smallest part (every part but the last).
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;
/// A backlog of more files than this is logged loudly by default.
pub const DEFAULT_BACKLOG_WARN_FILES: u64 = 1000;

/// The kind of store a destination names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `s3://bucket/prefix`: AWS and S3-compatible servers.
    S3,
    /// `az://container/prefix`: Azure Blob Storage.
    Azure,
}

/// Where sealed files go, as a URL: the object key of a file is the prefix
/// and the file's path under the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub scheme: Scheme,
    /// The S3 bucket or the Azure container.
    pub bucket: String,
    /// No leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

/// Validated upload settings; `None` in [`crate::config::Config`] when no
/// destination is set (files stay in the data directory, as before).
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub destination: Destination,
    /// The URL as written, for logs (it holds no credential).
    pub destination_url: String,
    pub s3: RawS3,
    pub azure: RawAzure,
    /// Local sealed files are deleted once verified and this much exchange
    /// time past their hour's end; `None` keeps them forever.
    pub keep_local: Option<Duration>,
    pub backlog_warn_files: u64,
    pub multipart_threshold_bytes: u64,
    /// Back-off between failed attempts: full jitter, doubling from the
    /// first to the cap.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// The `[storage]` keys of the upload, as written (the table itself is
/// `crate::config::RawStorage`, which embeds these).
#[derive(Debug, Clone, Default)]
pub struct RawUpload {
    pub destination: Option<String>,
    pub keep_local_hours: Option<u64>,
    pub backlog_warn_files: Option<u64>,
    pub multipart_threshold_bytes: Option<u64>,
    pub upload_retry_initial_ms: Option<u64>,
    pub upload_retry_max_ms: Option<u64>,
    pub s3: RawS3,
    pub azure: RawAzure,
}

impl UploadConfig {
    /// Whether puts are conditional (`If-None-Match: *` for a new key,
    /// `If-Match: <ETag seen>` for a replacement). Azure Blob always
    /// honours both; S3 unless `storage.s3.conditional_put` is off.
    pub fn conditional_put(&self) -> bool {
        match self.destination.scheme {
            Scheme::S3 => self.s3.conditional_put,
            Scheme::Azure => true,
        }
    }
}

const MAX_KEEP_LOCAL_HOURS: u64 = 10 * 365 * 24;
const MAX_MULTIPART_THRESHOLD: u64 = 5 * 1024 * 1024 * 1024;
const MAX_RETRY_MS: u64 = 3_600_000;

/// Parses `s3://bucket/prefix` or `az://container/prefix`; other schemes
/// are refused by name.
pub fn parse_destination(url: &str) -> Result<Destination, ConfigError> {
    const KEY: &str = "storage.destination";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(
            KEY,
            format!("{url:?} is not a URL; supported: s3://bucket/prefix, az://container/prefix"),
        ));
    };
    let scheme = match scheme {
        "s3" => Scheme::S3,
        "az" => Scheme::Azure,
        "gs" => return Err(invalid(KEY, GCS_REFUSED)),
        _ => {
            return Err(invalid(
                KEY,
                format!(
                    "{scheme}:// is not supported; supported: s3:// (AWS and S3-compatible servers), \
                     az:// (Azure Blob). Leave destination unset to keep files in storage.data_dir only"
                ),
            ))
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let name_bytes_ok = |extra: &[u8]| {
        (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || extra.contains(&byte)
            })
    };
    match scheme {
        Scheme::S3 if !name_bytes_ok(b"-.") => {
            return Err(invalid(
                KEY,
                format!("{bucket:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, '-', '.')"),
            ));
        }
        Scheme::Azure
            if !name_bytes_ok(b"-")
                || bucket.starts_with('-')
                || bucket.ends_with('-')
                || bucket.contains("--") =>
        {
            return Err(invalid(
                KEY,
                format!(
                    "{bucket:?} is not an Azure container name (3 to 63 of a-z, 0-9, '-'; \
                     no '-' first, last or twice in a row)"
                ),
            ));
        }
        _ => {}
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..")
        || prefix.contains("//")
        || prefix.contains(['?', '#', '\\'])
    {
        return Err(invalid(
            KEY,
            format!("prefix {prefix:?} is not a plain key prefix"),
        ));
    }
    Ok(Destination {
        scheme,
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Checks a client's `endpoint` and `allow_http` keys (`table` is
/// `storage.s3` or `storage.azure`).
fn validate_endpoint(
    table: &str,
    endpoint: Option<&str>,
    allow_http: bool,
) -> Result<(), ConfigError> {
    if let Some(endpoint) = endpoint {
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(invalid(
                &format!("{table}.endpoint"),
                format!("{endpoint:?} is not an http(s) URL"),
            ));
        }
        if endpoint.starts_with("http://") && !allow_http {
            return Err(invalid(
                &format!("{table}.endpoint"),
                format!("is plain http: set {table}.allow_http = true (loopback endpoints only) or use https"),
            ));
        }
    }
    if allow_http && !endpoint.is_some_and(is_loopback_endpoint) {
        return Err(invalid(
            &format!("{table}.allow_http"),
            "only for an endpoint on a loopback address (127.0.0.1, ::1, localhost): credentials and data never cross a network unencrypted",
        ));
    }
    Ok(())
}

/// Whether `endpoint` (a URL) names a loopback host.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Some((_, rest)) = endpoint.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Validates the upload keys; `Ok(None)` when no destination is set.
pub fn validate(raw: RawUpload) -> Result<Option<UploadConfig>, ConfigError> {
    let Some(url) = raw.destination.filter(|url| !url.is_empty()) else {
        for (key, set) in [
            ("storage.keep_local_hours", raw.keep_local_hours.is_some()),
            (
                "storage.backlog_warn_files",
                raw.backlog_warn_files.is_some(),
            ),
            (
                "storage.multipart_threshold_bytes",
                raw.multipart_threshold_bytes.is_some(),
            ),
            (
                "storage.upload_retry_initial_ms",
                raw.upload_retry_initial_ms.is_some(),
            ),
            (
                "storage.upload_retry_max_ms",
                raw.upload_retry_max_ms.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "needs storage.destination: without one, files stay in storage.data_dir and nothing is uploaded",
                ));
            }
        }
        return Ok(None);
    };
    let destination = parse_destination(&url)?;
    let keep_local = match raw.keep_local_hours {
        None => None,
        Some(hours) if (1..=MAX_KEEP_LOCAL_HOURS).contains(&hours) => {
            Some(Duration::from_secs(hours * 3600))
        }
        Some(hours) => {
            return Err(invalid(
                "storage.keep_local_hours",
                format!(
                    "{hours} is out of range: must be between 1 and {MAX_KEEP_LOCAL_HOURS} \
                     (a late row reseals its hour from the local file; leave it unset to keep files forever)"
                ),
            ))
        }
    };
    let backlog_warn_files = raw.backlog_warn_files.unwrap_or(DEFAULT_BACKLOG_WARN_FILES);
    if backlog_warn_files == 0 {
        return Err(invalid(
            "storage.backlog_warn_files",
            "must be at least 1 (the number of sealed files waiting for upload past which the daemon warns)",
        ));
    }
    let multipart_threshold_bytes = raw
        .multipart_threshold_bytes
        .unwrap_or(DEFAULT_MULTIPART_THRESHOLD_BYTES);
    if !(1..=MAX_MULTIPART_THRESHOLD).contains(&multipart_threshold_bytes) {
        return Err(invalid(
            "storage.multipart_threshold_bytes",
            format!(
                "{multipart_threshold_bytes} is out of range: must be between 1 and {MAX_MULTIPART_THRESHOLD} (S3's largest single put)"
            ),
        ));
    }
    let retry_initial_ms = raw.upload_retry_initial_ms.unwrap_or(500);
    let retry_max_ms = raw.upload_retry_max_ms.unwrap_or(60_000);
    for (key, value) in [
        ("storage.upload_retry_initial_ms", retry_initial_ms),
        ("storage.upload_retry_max_ms", retry_max_ms),
    ] {
        if !(1..=MAX_RETRY_MS).contains(&value) {
            return Err(invalid(
                key,
                format!("{value} is out of range: must be between 1 and {MAX_RETRY_MS} (uploads are retried at least hourly)"),
            ));
        }
    }
    if retry_max_ms < retry_initial_ms {
        return Err(invalid(
            "storage.upload_retry_max_ms",
            format!("{retry_max_ms} is below storage.upload_retry_initial_ms ({retry_initial_ms})"),
        ));
    }
    // A client table for the other kind of store is a mistake (an
    // endpoint or account written for nothing), never silently ignored.
    let s3_set = raw.s3.endpoint.is_some()
        || raw.s3.region.is_some()
        || raw.s3.virtual_hosted_style.is_some()
        || raw.s3.allow_http
        || !raw.s3.conditional_put;
    let azure_set =
        raw.azure.account.is_some() || raw.azure.endpoint.is_some() || raw.azure.allow_http;
    match destination.scheme {
        Scheme::S3 if azure_set => {
            return Err(invalid(
                "storage.azure",
                format!("is set but storage.destination ({url}) is not an az:// URL"),
            ))
        }
        Scheme::Azure if s3_set => {
            return Err(invalid(
                "storage.s3",
                format!("is set but storage.destination ({url}) is not an s3:// URL"),
            ))
        }
        _ => {}
    }
    validate_endpoint("storage.s3", raw.s3.endpoint.as_deref(), raw.s3.allow_http)?;
    validate_endpoint(
        "storage.azure",
        raw.azure.endpoint.as_deref(),
        raw.azure.allow_http,
    )?;
    if let Some(account) = &raw.azure.account {
        let account_ok = (3..=24).contains(&account.len())
            && account
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
        if !account_ok {
            return Err(invalid(
                "storage.azure.account",
                format!("{account:?} is not a storage account name (3 to 24 of a-z, 0-9)"),
            ));
        }
    }
    Ok(Some(UploadConfig {
        destination,
        destination_url: url,
        s3: raw.s3,
        azure: raw.azure,
        keep_local,
        backlog_warn_files,
        multipart_threshold_bytes,
        retry_initial: Duration::from_millis(retry_initial_ms),
        retry_max: Duration::from_millis(retry_max_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_destination(url: &str) -> RawUpload {
        RawUpload {
            destination: Some(url.to_owned()),
            ..RawUpload::default()
        }
    }

    fn error_key(result: Result<Option<UploadConfig>, ConfigError>) -> String {
        match result {
            Err(ConfigError { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn no_destination_is_the_local_directory_and_refuses_upload_keys() {
        assert!(validate(RawUpload::default()).expect("valid").is_none());
        let raw = RawUpload {
            keep_local_hours: Some(24),
            ..RawUpload::default()
        };
        assert_eq!(error_key(validate(raw)), "storage.keep_local_hours");
    }

    #[test]
    fn s3_urls_parse_into_bucket_and_prefix() {
        assert_eq!(
            parse_destination("s3://market-data/binance/v1/").expect("valid"),
            Destination {
                scheme: Scheme::S3,
                bucket: "market-data".into(),
                prefix: "binance/v1".into()
            }
        );
        assert_eq!(
            parse_destination("s3://market-data").expect("valid"),
            Destination {
                scheme: Scheme::S3,
                bucket: "market-data".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_destination("az://market-data/binance").expect("valid"),
            Destination {
                scheme: Scheme::Azure,
                bucket: "market-data".into(),
                prefix: "binance".into()
            }
        );
    }

    #[test]
    fn other_schemes_and_bad_names_are_refused_naming_the_key() {
        for url in [
            "gs://bucket/x",
            "file:///tmp/x",
            "az://market.data/x",
            "az://-container/x",
            "az://con--tainer/x",
            "bucket/x",
            "s3://Upper/x",
            "s3://ab",
            "s3://bucket/../x",
        ] {
            assert_eq!(
                error_key(validate(with_destination(url))),
                "storage.destination",
                "{url}"
            );
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let mut raw = with_destination("s3://bucket");
        raw.s3.endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(error_key(validate(raw.clone())), "storage.s3.endpoint");
        raw.s3.allow_http = true;
        assert!(validate(raw.clone()).expect("valid").is_some());
        raw.s3.endpoint = Some("http://[::1]:9000".into());
        assert!(validate(raw.clone()).expect("valid").is_some());
        raw.s3.endpoint = Some("http://localhost:9000/".into());
        assert!(validate(raw.clone()).expect("valid").is_some());
        raw.s3.endpoint = Some("http://10.0.0.5:9000".into());
        assert_eq!(error_key(validate(raw)), "storage.s3.allow_http");
        let mut raw = with_destination("az://container");
        raw.azure.endpoint = Some("http://127.0.0.1:10000/devstoreaccount1".into());
        assert_eq!(error_key(validate(raw.clone())), "storage.azure.endpoint");
        raw.azure.allow_http = true;
        assert!(validate(raw.clone()).expect("valid").is_some());
        raw.azure.endpoint = Some("http://blob.example:10000".into());
        assert_eq!(error_key(validate(raw)), "storage.azure.allow_http");
    }

    #[test]
    fn gcs_is_refused_saying_why() {
        let error = validate(with_destination("gs://bucket/x")).expect_err("refused");
        assert_eq!(error.key, "storage.destination");
        assert!(error.reason.contains("not supported"), "{}", error.reason);
        assert!(error.reason.contains("untested"), "{}", error.reason);
    }

    #[test]
    fn the_other_stores_table_is_refused_not_ignored() {
        let mut raw = with_destination("s3://bucket");
        raw.azure.account = Some("devstoreaccount1".into());
        assert_eq!(error_key(validate(raw)), "storage.azure");
        let mut raw = with_destination("az://container");
        raw.s3.region = Some("eu-west-1".into());
        assert_eq!(error_key(validate(raw)), "storage.s3");
    }

    #[test]
    fn azure_account_names_are_checked() {
        let mut raw = with_destination("az://container");
        raw.azure.account = Some("devstoreaccount1".into());
        assert!(validate(raw.clone()).expect("valid").is_some());
        raw.azure.account = Some("Dev_Store".into());
        assert_eq!(error_key(validate(raw)), "storage.azure.account");
    }

    #[test]
    fn ranges_name_their_key() {
        let mut raw = with_destination("s3://bucket");
        raw.keep_local_hours = Some(0);
        assert_eq!(error_key(validate(raw)), "storage.keep_local_hours");
        let mut raw = with_destination("s3://bucket");
        raw.backlog_warn_files = Some(0);
        assert_eq!(error_key(validate(raw)), "storage.backlog_warn_files");
        let mut raw = with_destination("s3://bucket");
        raw.upload_retry_initial_ms = Some(5000);
        raw.upload_retry_max_ms = Some(100);
        assert_eq!(error_key(validate(raw)), "storage.upload_retry_max_ms");
        let mut raw = with_destination("s3://bucket");
        raw.keep_local_hours = Some(48);
        let config = validate(raw).expect("valid").expect("a destination");
        assert_eq!(config.keep_local, Some(Duration::from_secs(48 * 3600)));
    }
}
