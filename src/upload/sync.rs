//! `backfill` with a destination: the hours to fill are read from the
//! bucket when retention deleted them locally, and what the backfill
//! resealed is uploaded when it is done (judged like the daemon's uploads:
//! a file with fewer holes replaces the object, never one with more).

use std::path::Path;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use super::config::UploadConfig;
use super::fetch::FetchError;
use super::marker::{self, FileStamp, Marker, Settled};
use super::store::{build_store, object_key, upload_file};
use crate::domain::{Hour, StreamKey};
use crate::parquet_out;

/// Downloads into `data_dir` the sealed files of `keys` in `[from, to]`
/// that the bucket holds and the disk does not, each with a marker (it is
/// the object, byte for byte); returns how many. `hours_of` narrows a
/// key's hours further (a hole list names them).
pub async fn restore_missing(
    config: &UploadConfig,
    data_dir: &Path,
    keys: &[StreamKey],
    from: Option<Hour>,
    to: Option<Hour>,
    hours_of: &dyn Fn(&StreamKey, Hour) -> bool,
) -> Result<usize, FetchError> {
    let store = build_store(config)?;
    let mut n_restored = 0;
    for key in keys {
        let path = parquet_out::hour_file_path(data_dir, key, Hour::containing(0));
        let symbol_dir = path
            .parent()
            .and_then(Path::parent)
            .expect("hour file paths have a date and a symbol folder");
        let Some(relative_dir) = symbol_dir
            .strip_prefix(data_dir)
            .ok()
            .and_then(|relative| relative.to_str())
        else {
            continue;
        };
        let prefix = ObjectPath::from(object_key(config, relative_dir).as_str());
        let mut listing = store.list(Some(&prefix));
        let mut wanted = Vec::new();
        while let Some(meta) = listing.next().await {
            let location = meta?.location;
            let Some(hour) = location.filename().and_then(marker::hour_of_name) else {
                continue;
            };
            let in_range = from.is_none_or(|from| hour >= from) && to.is_none_or(|to| hour <= to);
            let local = parquet_out::hour_file_path(data_dir, key, hour);
            if in_range && hours_of(key, hour) && !local.exists() {
                wanted.push((location, local));
            }
        }
        for (location, local) in wanted {
            let got = store.get(&location).await?;
            let e_tag = got.meta.e_tag.clone();
            let bytes = got.bytes().await?;
            let relative = local
                .strip_prefix(data_dir)
                .map(|relative| relative.display().to_string())
                .unwrap_or_default();
            let write = || -> std::io::Result<()> {
                let parent = local.parent().expect("a sealed file has a folder");
                std::fs::create_dir_all(parent)?;
                let staging = parquet_out::staging_dir(data_dir);
                std::fs::create_dir_all(&staging)?;
                let temporary = staging.join(format!("restore-{}.tmp", std::process::id()));
                std::fs::write(&temporary, &bytes)?;
                std::fs::File::open(&temporary)?.sync_all()?;
                std::fs::rename(&temporary, &local)?;
                let stamp = FileStamp::of(&std::fs::metadata(&local)?);
                marker::write_marker(
                    data_dir,
                    &relative,
                    &Marker {
                        stamp,
                        settled: Settled::Uploaded,
                        e_tag,
                        key: location.to_string(),
                    },
                )
            };
            write().map_err(|source| FetchError::Io {
                path: local.clone(),
                source,
            })?;
            n_restored += 1;
        }
    }
    if n_restored > 0 {
        info!(
            n_restored,
            "sealed files read back from the destination to backfill"
        );
    }
    Ok(n_restored)
}

/// What [`upload_unsettled`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncSummary {
    pub n_uploaded: usize,
    pub n_kept_remote: usize,
    pub n_failed: usize,
}

/// Uploads every sealed file under `data_dir` whose marker does not vouch
/// for it (once each; a failure is left for the daemon's next start).
pub async fn upload_unsettled(
    config: &UploadConfig,
    data_dir: &Path,
) -> Result<SyncSummary, FetchError> {
    let store = build_store(config)?;
    let mut summary = SyncSummary::default();
    for file in marker::sealed_files(data_dir) {
        if marker::settled(data_dir, &file.relative).is_some() {
            continue;
        }
        let settled = match upload_file(store.as_ref(), config, data_dir, &file.relative).await {
            Ok(settlement) => {
                let settled = settlement.marker.settled;
                marker::write_marker(data_dir, &file.relative, &settlement.marker).map_err(
                    |source| FetchError::Io {
                        path: marker::marker_path(data_dir, &file.relative),
                        source,
                    },
                )?;
                settled
            }
            Err(error) => {
                warn!(file = %file.relative, %error, "upload after backfill failed; the daemon uploads it at its next start");
                summary.n_failed += 1;
                continue;
            }
        };
        match settled {
            Settled::Uploaded => summary.n_uploaded += 1,
            Settled::RemoteKept => summary.n_kept_remote += 1,
        }
    }
    Ok(summary)
}
