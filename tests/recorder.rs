//! Integration tests of the recorder against the fake exchange, in one test
//! binary (one link of arrow/parquet instead of one per file).

#[path = "recorder/support.rs"]
mod support;

#[path = "recorder/azurite_server.rs"]
mod azurite_server;
#[path = "recorder/bad_input.rs"]
mod bad_input;
#[path = "recorder/cold_start.rs"]
mod cold_start;
#[path = "recorder/config_errors.rs"]
mod config_errors;
#[path = "recorder/connections.rs"]
mod connections;
#[path = "recorder/crash.rs"]
mod crash;
#[path = "recorder/dataset_versions.rs"]
mod dataset_versions;
#[path = "recorder/end_to_end.rs"]
mod end_to_end;
#[path = "recorder/gap_fill.rs"]
mod gap_fill;
#[path = "recorder/local_server.rs"]
mod local_server;
#[path = "recorder/long_run.rs"]
mod long_run;
#[path = "recorder/market_replays.rs"]
mod market_replays;
#[path = "recorder/markets.rs"]
mod markets;
#[path = "recorder/memory.rs"]
mod memory;
#[path = "recorder/metrics.rs"]
mod metrics;
#[path = "recorder/poison.rs"]
mod poison;
#[path = "recorder/real_data.rs"]
mod real_data;
#[path = "recorder/reconcile.rs"]
mod reconcile;
#[path = "recorder/rest_fill.rs"]
mod rest_fill;
#[path = "recorder/restart.rs"]
mod restart;
#[path = "recorder/s3_server.rs"]
mod s3_server;
#[path = "recorder/seal_faults.rs"]
mod seal_faults;
#[path = "recorder/service.rs"]
mod service;
#[path = "recorder/supervision.rs"]
mod supervision;
#[path = "recorder/upload.rs"]
mod upload;
#[path = "recorder/upload_azure.rs"]
mod upload_azure;
#[path = "recorder/verify.rs"]
mod verify;
#[path = "recorder/verify_dataset.rs"]
mod verify_dataset;
