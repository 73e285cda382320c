//! The upload task: its queue, its supervisor, the retention pass.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::config::UploadConfig;
use super::decide::may_delete_local;
use super::marker::{self, SealedFile, Settled};
use super::store::{self, UploadError};
use crate::backoff::Backoff;
use crate::domain::TimeUs;
use crate::metrics::health::HealthBoard;
use crate::metrics::Counters;

/// Paths of sealed files waiting in the channel from the recorder. When
/// it is full a seal does not wait: the path is dropped and the task
/// walks the data directory again (see the module doc).
pub const QUEUE_CAPACITY: usize = 4096;

/// Most files held in the task's queue; past this the walk leaves the
/// rest on disk (counted in the backlog) and finds them when the queue
/// has room again.
const MAX_QUEUED_FILES: usize = 100_000;

/// Most verified files waiting for their retention time; past this the
/// newest wait for the next walk (at the next start).
const MAX_RETAINED_FILES: usize = 1_000_000;

/// A backlog past the bound is logged at most this often.
const BACKLOG_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// What the recorder holds to talk to the upload task. Never blocks.
#[derive(Clone)]
pub struct UploadHandle {
    sender: mpsc::Sender<PathBuf>,
    rescan: Arc<AtomicBool>,
    clock: Arc<watch::Sender<Option<TimeUs>>>,
}

impl UploadHandle {
    /// A file was sealed (for the first time, or again with late rows):
    /// queue its upload.
    pub fn sealed(&self, path: &Path) {
        if self.sender.try_send(path.to_path_buf()).is_err() {
            self.rescan.store(true, Ordering::Relaxed);
        }
    }

    /// The newest exchange time (retention counts hours on it, as seals do).
    pub fn exchange_time(&self, now: TimeUs) {
        self.clock.send_if_modified(|time| {
            let newer = time.is_none_or(|time| now > time);
            if newer {
                *time = Some(now);
            }
            newer
        });
    }
}

/// What every run of the task shares.
struct Shared {
    config: UploadConfig,
    root: PathBuf,
    store: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
    health: Arc<HealthBoard>,
    rescan: Arc<AtomicBool>,
    clock: watch::Receiver<Option<TimeUs>>,
    backoff: Backoff,
}

/// Builds the client and spawns the supervised task on `tasks`; it stops
/// when `shutdown` is cancelled (an upload in flight is dropped: its file
/// has no marker and is uploaded again at the next start).
pub fn spawn(
    config: UploadConfig,
    root: PathBuf,
    counters: Arc<Counters>,
    health: Arc<HealthBoard>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<UploadHandle, object_store::Error> {
    let store = store::build_store(&config)?;
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let (clock_sender, clock) = watch::channel(None);
    let rescan = Arc::new(AtomicBool::new(true));
    // The crate's one back-off rule (full jitter, doubling, capped) with
    // the upload's own bounds.
    let backoff = Backoff::new(config.retry_initial, config.retry_max);
    info!(destination = %config.destination_url, keep_local_hours = config.keep_local.map(|keep| keep.as_secs() / 3600), "uploading sealed files");
    let shared = Arc::new(Shared {
        config,
        root,
        store,
        counters,
        health,
        rescan: rescan.clone(),
        clock,
        backoff,
    });
    tasks.spawn(supervise(shared, receiver, shutdown));
    Ok(UploadHandle {
        sender,
        rescan,
        clock: Arc::new(clock_sender),
    })
}

/// Runs the task, restarting it (counted, after a pause) if it panics:
/// a restart walks the directory again, so no file is forgotten.
async fn supervise(
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<PathBuf>,
    shutdown: CancellationToken,
) {
    let receiver = Arc::new(Mutex::new(receiver));
    let mut n_restarts: u32 = 0;
    loop {
        let ended = tokio::spawn(run(shared.clone(), receiver.clone(), shutdown.clone())).await;
        if shutdown.is_cancelled() {
            return;
        }
        Counters::add(&shared.counters.upload_task_restarts, 1);
        match ended {
            Ok(()) => error!("upload task ended by itself; restarting it"),
            Err(error) => error!(%error, "upload task panicked; restarting it"),
        }
        n_restarts = n_restarts.saturating_add(1);
        shared.rescan.store(true, Ordering::Relaxed);
        let pause = shared.backoff.full_jitter(n_restarts, fastrand::f64());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The files waiting, oldest first, each once.
#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    queued: HashSet<String>,
    /// Unverified files the last walk left on disk for want of room.
    n_beyond: usize,
}

impl Queue {
    fn push(&mut self, relative: String) -> bool {
        if self.queued.contains(&relative) {
            return true;
        }
        if self.order.len() >= MAX_QUEUED_FILES {
            return false;
        }
        self.queued.insert(relative.clone());
        self.order.push_back(relative);
        true
    }

    fn pop_front(&mut self) {
        if let Some(relative) = self.order.pop_front() {
            self.queued.remove(&relative);
        }
    }

    /// A failed file goes to the back: one file the store refuses must
    /// not hold up the others.
    fn rotate(&mut self) {
        if let Some(relative) = self.order.pop_front() {
            self.order.push_back(relative);
        }
    }

    fn backlog(&self) -> usize {
        self.order.len() + self.n_beyond
    }
}

/// The path of `path` under `root`, `/`-separated (an object key's tail).
fn relative_to(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
    Some(parts?.join("/"))
}

async fn run(
    shared: Arc<Shared>,
    receiver: Arc<Mutex<mpsc::Receiver<PathBuf>>>,
    shutdown: CancellationToken,
) {
    let mut receiver = receiver.lock().await;
    let mut clock = shared.clock.clone();
    let mut queue = Queue::default();
    let mut retained: BTreeSet<SealedFile> = BTreeSet::new();
    let mut n_failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut backlog_warned_at: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // The walk and the retention pass run on blocking threads; a stop
        // does not wait for them (the next start walks again).
        if shared.rescan.swap(false, Ordering::Relaxed) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = walk(&shared, &mut queue, &mut retained) => {}
            }
        }
        while let Ok(path) = receiver.try_recv() {
            take_sealed(&shared, &mut queue, &path);
        }
        publish_backlog(&shared, &queue, &mut backlog_warned_at);
        let exchange_now = *clock.borrow_and_update();
        if let (Some(keep), Some(now)) = (shared.config.keep_local, exchange_now) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = apply_retention(&shared, &mut retained, keep, now) => {}
            }
        }
        if queue.n_beyond > 0 && queue.order.len() < MAX_QUEUED_FILES / 2 {
            shared.rescan.store(true, Ordering::Relaxed);
        }
        let ready = retry_at.is_none_or(|at| Instant::now() >= at);
        let front = queue.order.front().cloned().filter(|_| ready);
        let Some(relative) = front else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                path = receiver.recv() => match path {
                    Some(path) => take_sealed(&shared, &mut queue, &path),
                    None => {
                        shutdown.cancelled().await;
                        return;
                    }
                },
                _ = clock.changed() => {}
                () = sleep_until_opt(retry_at) => retry_at = None,
            }
            continue;
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = store::upload_file(shared.store.as_ref(), &shared.config, &shared.root, &relative) => result,
        };
        let result = match result {
            Ok(settlement) => write_marker(&shared, &relative, settlement).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(written) => {
                queue.pop_front();
                n_failures = 0;
                retry_at = None;
                if !written.still_current {
                    // Resealed while it was uploaded (its notice found it
                    // queued): the new version goes up too.
                    queue.push(relative.clone());
                }
                if written.settled == Settled::Uploaded
                    && shared.config.keep_local.is_some()
                    && retained.len() < MAX_RETAINED_FILES
                {
                    if let Some(hour) = relative.rsplit('/').next().and_then(marker::hour_of_name) {
                        retained.insert(SealedFile { hour, relative });
                    }
                }
            }
            Err(UploadError::LocalGone) => {
                debug!(file = %relative, "sealed file gone before its upload (moved aside or replaced); skipped");
                queue.pop_front();
            }
            Err(error) => {
                n_failures = n_failures.saturating_add(1);
                Counters::add(&shared.counters.upload_failures, 1);
                let pause = shared.backoff.full_jitter(n_failures, fastrand::f64());
                warn!(file = %relative, %error, n_failures, retry_in_ms = pause.as_millis() as u64, "upload failed; retrying");
                queue.rotate();
                retry_at = Some(Instant::now() + pause);
            }
        }
    }
}

/// Queues a path the recorder sealed.
fn take_sealed(shared: &Shared, queue: &mut Queue, path: &Path) {
    match relative_to(&shared.root, path) {
        Some(relative) => {
            if !queue.push(relative) {
                queue.n_beyond += 1;
            }
        }
        None => {
            warn!(path = %path.display(), "sealed file outside the data directory; not uploaded")
        }
    }
}

/// Walks the data directory: unverified files are queued, verified ones
/// wait for retention.
async fn walk(shared: &Arc<Shared>, queue: &mut Queue, retained: &mut BTreeSet<SealedFile>) {
    let root = shared.root.clone();
    let found = tokio::task::spawn_blocking(move || {
        marker::sealed_files(&root)
            .into_iter()
            .map(|file| {
                let settled = marker::settled(&root, &file.relative);
                (file, settled)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let found = match found {
        Ok(found) => found,
        Err(error) => {
            error!(%error, "walking the data directory for uploads failed; walking again later");
            shared.rescan.store(true, Ordering::Relaxed);
            return;
        }
    };
    queue.n_beyond = 0;
    let (mut n_unverified, mut n_verified) = (0usize, 0usize);
    for (file, settled) in found {
        if settled == Some(Settled::Uploaded) {
            n_verified += 1;
            if shared.config.keep_local.is_some() && retained.len() < MAX_RETAINED_FILES {
                retained.insert(file);
            }
        } else if settled == Some(Settled::RemoteKept) {
            // Judged already: the key holds a more complete object.
            n_verified += 1;
        } else {
            n_unverified += 1;
            if !queue.push(file.relative) {
                queue.n_beyond += 1;
            }
        }
    }
    info!(
        n_unverified,
        n_verified, "sealed files found; queued those not verified uploaded"
    );
}

/// How a file settled, and whether the file is still the version that did.
struct Written {
    settled: Settled,
    still_current: bool,
}

/// Writes the marker of a settled file (on a blocking thread: it fsyncs).
async fn write_marker(
    shared: &Arc<Shared>,
    relative: &str,
    settlement: store::Settlement,
) -> Result<Written, UploadError> {
    let root = shared.root.clone();
    let owned = relative.to_owned();
    let marker = settlement.marker;
    let settled = marker.settled;
    let still_current = tokio::task::spawn_blocking(move || {
        marker::write_marker(&root, &owned, &marker)?;
        Ok(marker::unchanged_since(&root, &owned, marker.stamp))
    })
    .await
    .map_err(|error| UploadError::Local(std::io::Error::other(error)))?
    .map_err(UploadError::Local)?;
    match settled {
        Settled::Uploaded => {
            Counters::add(&shared.counters.files_uploaded, 1);
            Counters::add(&shared.counters.upload_bytes, settlement.bytes_sent);
            debug!(file = %relative, bytes = settlement.bytes_sent, "uploaded and verified");
        }
        Settled::RemoteKept => Counters::add(&shared.counters.upload_objects_kept, 1),
    }
    Ok(Written {
        settled,
        still_current,
    })
}

fn publish_backlog(shared: &Shared, queue: &Queue, warned_at: &mut Option<Instant>) {
    let backlog = queue.backlog() as u64;
    Counters::set(&shared.counters.upload_backlog_files, backlog);
    shared
        .health
        .update(|inputs| inputs.upload_backlog = Some(backlog));
    if backlog > shared.config.backlog_warn_files
        && warned_at.is_none_or(|at| at.elapsed() >= BACKLOG_WARN_INTERVAL)
    {
        *warned_at = Some(Instant::now());
        error!(
            backlog,
            bound = shared.config.backlog_warn_files,
            destination = %shared.config.destination_url,
            "upload backlog past storage.backlog_warn_files: the destination is unreachable or too slow; local files are kept and the disk fills"
        );
    }
}

/// Deletes the retained files whose time has come, if still verified
/// (a file resealed since is not: its new version is queued instead).
async fn apply_retention(
    shared: &Arc<Shared>,
    retained: &mut BTreeSet<SealedFile>,
    keep: Duration,
    now: TimeUs,
) {
    let mut due = Vec::new();
    while let Some(first) = retained.first() {
        if !may_delete_local(true, first.hour, keep, now) {
            break;
        }
        due.extend(retained.pop_first());
    }
    if due.is_empty() {
        return;
    }
    let root = shared.root.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        let mut n_deleted = 0u64;
        for file in due {
            let verified = marker::verified(&root, &file.relative);
            if !may_delete_local(verified, file.hour, keep, now) {
                continue;
            }
            match std::fs::remove_file(root.join(&file.relative)) {
                Ok(()) => {
                    n_deleted += 1;
                    if let Err(error) = marker::remove_marker(&root, &file.relative) {
                        warn!(file = %file.relative, %error, "local file deleted; its marker could not be");
                    }
                }
                Err(error) => warn!(file = %file.relative, %error, "cannot delete an uploaded local file"),
            }
        }
        n_deleted
    })
    .await;
    match deleted {
        Ok(n_deleted) if n_deleted > 0 => {
            Counters::add(&shared.counters.local_files_deleted, n_deleted);
            info!(
                n_deleted,
                "local sealed files deleted: uploaded, verified and past storage.keep_local_hours"
            );
        }
        Ok(_) => {}
        Err(error) => error!(%error, "retention pass failed"),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_each_file_once_and_rotates_failures() {
        let mut queue = Queue::default();
        assert!(queue.push("a".into()));
        assert!(queue.push("b".into()));
        assert!(queue.push("a".into()));
        assert_eq!(queue.backlog(), 2);
        queue.rotate();
        assert_eq!(queue.order.front().map(String::as_str), Some("b"));
        queue.pop_front();
        queue.pop_front();
        assert_eq!(queue.backlog(), 0);
        assert!(
            queue.push("a".into()),
            "a settled file can be queued again (a reseal)"
        );
    }

    #[test]
    fn relative_paths_are_object_key_tails() {
        let root = Path::new("/data/parquet");
        assert_eq!(
            relative_to(root, &root.join("market=spot/stream=trade/x.parquet")),
            Some("market=spot/stream=trade/x.parquet".to_owned())
        );
        assert_eq!(relative_to(root, Path::new("/elsewhere/x.parquet")), None);
    }
}
