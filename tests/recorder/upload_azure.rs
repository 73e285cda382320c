//! Uploads to Azure Blob (`az://`), against Azurite (`azurite_server.rs`):
//! the recorder's files land at their keys byte for byte, `verify --root
//! az://` says what `verify` on the local copy says, and the replacement
//! rules (conditional puts: `If-None-Match: *`, `If-Match: <ETag>`, both
//! honoured by Azure Blob) hold as they do on S3, and a put cut midway
//! (the cuttable proxy of `s3_server.rs` in front of Azurite) leaves no
//! partial blob and lands whole once the store is back.

use binance_recorder::upload::config::validate;
use binance_recorder::upload::{RawAzure, RawUpload};
use fake_binance::FakeExchange;

use crate::azurite_server::*;
use crate::support::*;
use crate::upload::{
    a_reseal_replaces_and_a_less_complete_writer_never_wins, assert_uploaded_byte_identical,
    n_objects, record_two_hours_and_upload_them, verify_json, PREFIX,
};

const CONTAINER: &str = "market-data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_sealed_hours_land_at_their_hive_keys_byte_identical_and_verify_reads_the_container() {
    set_credentials_env();
    let azurite = AzuriteServer::start().await;
    create_container(azurite.port, CONTAINER).await;
    let store = client(&azurite.endpoint(), CONTAINER);
    let fake = FakeExchange::start(fake_config(600.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let data = root.join("data");
    let streams = ["trade", "aggTrade", "kline_1m"];
    // The account and its key come from the environment
    // (`set_credentials_env`), never from the config. One byte: every
    // file goes up as a block list (object_store's multipart upload on
    // Azure); the single conditional put is the next test's.
    let storage = format!(
        "destination = \"az://{CONTAINER}/{PREFIX}\"\nupload_retry_initial_ms = 20\nupload_retry_max_ms = 300\nmultipart_threshold_bytes = 1\n[wal]"
    );
    let config = format!(
        "{}\n[storage.azure]\nendpoint = \"{}\"\nallow_http = true\n",
        recorder_toml(&fake, root, &["BTCUSDT", "ETHUSDT"], &streams)
            .replacen("[wal]", &storage, 1),
        azurite.endpoint()
    );
    std::fs::write(root.join("config.toml"), &config).expect("write config");
    let counters = record_two_hours_and_upload_them(fake, root, &config).await;
    let n_files = assert_uploaded_byte_identical(&store, &data).await;
    assert!(n_files >= 6, "an hour or two of 6 streams: {n_files} files");
    assert_eq!(n_objects(&store).await, n_files, "one blob per sealed file");
    assert_eq!(counters.upload_failures, 0);
    eprintln!(
        "{n_files} files uploaded to Azurite byte-identical ({} bytes sent)",
        counters.upload_bytes
    );

    crate::upload::remove_unfinished(&data);
    let local = verify_json(vec!["--root".into(), data.display().to_string()], &[]).await;
    let endpoint = azurite.endpoint();
    let mut env = credentials_env();
    env.push(("AZURE_STORAGE_ENDPOINT", endpoint.as_str()));
    env.push(("AZURE_ALLOW_HTTP", "true"));
    let remote = verify_json(
        vec!["--root".into(), format!("az://{CONTAINER}/{PREFIX}")],
        &env,
    )
    .await;
    assert_eq!(
        remote, local,
        "verify --root az:// matches verify on the local copy"
    );
    assert_eq!(
        remote.0["files"], n_files,
        "verify read every blob: {}",
        remote.0
    );
    eprintln!(
        "verify --root az://: {} files, {} rows, exit {:?}, the same report as the local copy's",
        remote.0["files"], remote.0["rows"], remote.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_a_late_reseal_replaces_the_blob_and_a_less_complete_writer_never_wins() {
    set_credentials_env();
    let azurite = AzuriteServer::start().await;
    create_container(azurite.port, CONTAINER).await;
    let store = client(&azurite.endpoint(), CONTAINER);
    let config = validate(RawUpload {
        destination: Some(format!("az://{CONTAINER}/{PREFIX}")),
        azure: RawAzure {
            endpoint: Some(azurite.endpoint()),
            allow_http: true,
            ..RawAzure::default()
        },
        ..RawUpload::default()
    })
    .expect("valid")
    .expect("a destination");
    a_reseal_replaces_and_a_less_complete_writer_never_wins(&config, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_an_upload_cut_midway_leaves_no_partial_blob_and_the_retry_lands_it() {
    use binance_recorder::upload::marker::Settled;
    use binance_recorder::upload::store::{build_store, upload_file};
    use object_store::path::Path as ObjectPath;

    use crate::s3_server::CuttableProxy;
    use crate::upload::{object_bytes, seal};

    set_credentials_env();
    let azurite = AzuriteServer::start().await;
    create_container(azurite.port, CONTAINER).await;
    let store = client(&azurite.endpoint(), CONTAINER);
    let proxy = CuttableProxy::start(azurite.port).await;
    let config = validate(RawUpload {
        destination: Some(format!("az://{CONTAINER}/{PREFIX}")),
        azure: RawAzure {
            endpoint: Some(format!("{}/{ACCOUNT}", proxy.endpoint())),
            allow_http: true,
            ..RawAzure::default()
        },
        ..RawUpload::default()
    })
    .expect("valid")
    .expect("a destination");
    let uploader = build_store(&config).expect("client");
    let data = tempfile::tempdir().expect("data directory");
    let relative = seal(data.path(), 5_000, 0);
    let key = ObjectPath::from(format!("{PREFIX}/{relative}").as_str());
    let local = std::fs::read(data.path().join(&relative)).expect("local file");

    // The link dies halfway through the put's body.
    proxy.cut_on_next_put();
    let cut = upload_file(uploader.as_ref(), &config, data.path(), &relative).await;
    assert!(cut.is_err(), "an upload cut midway fails: {cut:?}");
    assert!(!proxy.is_up());
    assert_eq!(
        object_bytes(&store, &key).await,
        None,
        "no partial blob is visible"
    );
    // Down: every attempt fails, nothing is written.
    assert!(
        upload_file(uploader.as_ref(), &config, data.path(), &relative)
            .await
            .is_err()
    );
    // Back: the retry lands the whole file.
    proxy.restore();
    let settled = upload_file(uploader.as_ref(), &config, data.path(), &relative)
        .await
        .expect("settles once the store is back");
    assert_eq!(settled.marker.settled, Settled::Uploaded);
    assert_eq!(
        object_bytes(&store, &key).await.as_deref(),
        Some(local.as_slice())
    );
    eprintln!(
        "{} bytes landed byte-identical after a cut mid-put and an outage",
        local.len()
    );
}
