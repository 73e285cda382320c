//! Sealed files uploaded to an object store (`[storage] destination`),
//! verified, recorded as uploaded, and then (optionally) deleted locally.
//!
//! One task (under a supervisor that restarts it, counted, if it ever
//! panics) owns the queue of files to upload. The recorder never waits on
//! it: a seal hands over the file's path with `try_send` on a bounded
//! channel ([`QUEUE_CAPACITY`]); when the channel is full the path is
//! dropped and a flag asks the task to walk the data directory again, so
//! nothing is lost and nothing grows without bound. At start (and after
//! a restart of the task) the walk queues every sealed file whose marker
//! (`marker.rs`) does not vouch for it as it is now.
//!
//! For each file, oldest first: read it, HEAD its key, put it (`Create`
//! when the key is free, `Update` on the version seen when the local file
//! is more complete, nothing when the object is this file or a more
//! complete one; `decide.rs`), read the object's size and ETag back and
//! compare them with what was written, and only then write the marker.
//! A failure retries the same file after a capped, jittered back-off,
//! forever.
//!
//! **Delete only what is verified**: a local file is deleted only when
//! its marker says uploaded for the file as it is now, and the exchange
//! clock is `keep_local_hours` past its hour's end (`decide::may_delete_local`).

pub mod config;
pub mod decide;
pub mod fetch;
pub mod marker;
pub mod store;
pub mod sync;
mod task;

pub use config::{RawAzure, RawS3, RawUpload, UploadConfig};
pub use task::{spawn, UploadHandle, QUEUE_CAPACITY};
