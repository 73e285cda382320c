//! [`FaultFs`], the in-memory [`WalFs`] of the WAL's tests: inject
//! one-shot faults, a full disk, short writes, and crashes that keep only
//! what was made durable (fsynced bytes and fsynced directory entries) plus
//! any chosen prefix of the unsynced bytes of each file. Compiled for tests
//! only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{WalFile, WalFs};

/// An operation of [`FaultFs`] that a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    CreateDir,
    ListDir,
    Create,
    OpenRead,
    Write,
    Sync,
    Truncate,
    Rename,
    Remove,
    SyncDir,
}

/// In-memory filesystem for tests: inject one-shot faults, a full disk,
/// short writes, and crashes that keep only what was made durable plus any
/// chosen prefix of the unsynced bytes of each file.
///
/// Clones share the same state, so a test keeps one clone to inspect and
/// damage the files while the WAL holds another.
#[derive(Clone, Debug, Default)]
pub struct FaultFs {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    dirs: BTreeSet<PathBuf>,
    /// The directory entries as the running process sees them.
    entries: BTreeMap<PathBuf, u64>,
    /// The directory entries a crash would leave: as of each directory's
    /// last `sync_dir`.
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, InodeData>,
    next_inode: u64,
    /// Bumped by each crash; handles from before a crash stop working.
    generation: u64,
    injected: Vec<(FaultOp, io::ErrorKind)>,
    disk_full: bool,
    max_write_chunk: Option<usize>,
    /// Misuse the WAL must never commit, e.g. an fsync retried on a file
    /// whose fsync failed.
    violations: Vec<String>,
}

#[derive(Debug, Default)]
struct InodeData {
    bytes: Vec<u8>,
    /// Bytes `0..synced_len` survive a crash.
    synced_len: usize,
    /// An fsync of this file has failed; a later fsync must not be tried.
    sync_failed: bool,
    /// Where the bytes the writer still lets the page cache keep start
    /// (`WalFile::drop_cached`).
    dropped_upto: u64,
}

impl FaultState {
    fn take_fault(&mut self, op: FaultOp) -> io::Result<()> {
        if let Some(index) = self
            .injected
            .iter()
            .position(|(injected_op, _)| *injected_op == op)
        {
            let (_, kind) = self.injected.remove(index);
            return Err(io::Error::new(kind, format!("injected {op:?} fault")));
        }
        Ok(())
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if self.dirs.contains(parent) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ))
        }
    }

    fn inode_at(&self, path: &Path) -> io::Result<u64> {
        self.entries.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            )
        })
    }
}

fn disk_full_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (injected)",
    )
}

#[derive(Debug)]
struct FaultFile {
    state: Arc<Mutex<FaultState>>,
    inode: u64,
    generation: u64,
}

impl FaultFile {
    fn state(&self) -> io::Result<MutexGuard<'_, FaultState>> {
        let state = lock(&self.state);
        if state.generation != self.generation {
            return Err(io::Error::other("file handle from before a crash"));
        }
        Ok(state)
    }
}

fn lock(state: &Mutex<FaultState>) -> MutexGuard<'_, FaultState> {
    // A panic in a test while holding the lock poisons it; the state is still
    // fine to read for the failure report.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WalFile for FaultFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.state()?;
        state.take_fault(FaultOp::Write)?;
        if state.disk_full && !bytes.is_empty() {
            return Err(disk_full_error());
        }
        let n_written = state
            .max_write_chunk
            .map_or(bytes.len(), |chunk| bytes.len().min(chunk.max(1)));
        let inode = self.inode;
        let data = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("inode vanished"))?;
        data.bytes.extend_from_slice(&bytes[..n_written]);
        Ok(n_written)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.state()?;
        let inode = self.inode;
        let already_failed = state
            .inodes
            .get(&inode)
            .is_some_and(|data| data.sync_failed);
        if already_failed {
            state
                .violations
                .push(format!("fsync retried on inode {inode} after it failed"));
        }
        if let Err(error) = state.take_fault(FaultOp::Sync) {
            if let Some(data) = state.inodes.get_mut(&inode) {
                data.sync_failed = true;
            }
            return Err(error);
        }
        let data = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("inode vanished"))?;
        // Like Linux after a failed fsync: the dirty pages may be gone, and
        // a later fsync reports success without making them durable.
        if !data.sync_failed {
            data.synced_len = data.bytes.len();
        }
        Ok(())
    }

    /// Checks the advice: only durable bytes, each once, in order.
    fn drop_cached(&mut self, from: u64, to: u64) {
        let Ok(mut state) = self.state() else {
            return;
        };
        let inode = self.inode;
        let Some(data) = state.inodes.get_mut(&inode) else {
            return;
        };
        let fits = from == data.dropped_upto && from <= to && to <= data.synced_len as u64;
        if fits {
            data.dropped_upto = to;
        } else {
            let message = format!(
                "page cache dropped over {from}..{to} of inode {inode}: durable up to {}, dropped up to {}",
                data.synced_len, data.dropped_upto
            );
            state.violations.push(message);
        }
    }
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// The next call of `op` fails with `kind` (one-shot; several can queue).
    pub fn inject(&self, op: FaultOp, kind: io::ErrorKind) {
        lock(&self.state).injected.push((op, kind));
    }

    pub fn clear_injected(&self) {
        lock(&self.state).injected.clear();
    }

    /// While set, writes and file creation fail with `StorageFull`.
    pub fn set_disk_full(&self, full: bool) {
        lock(&self.state).disk_full = full;
    }

    /// Each write call writes at most this many bytes (short writes).
    pub fn set_max_write_chunk(&self, chunk: Option<usize>) {
        lock(&self.state).max_write_chunk = chunk;
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }

    /// Current content of a file, if it exists.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let inode = state.entries.get(path)?;
        state.inodes.get(inode).map(|data| data.bytes.clone())
    }

    /// (synced, total) byte counts of a file.
    pub fn lengths(&self, path: &Path) -> Option<(usize, usize)> {
        let state = lock(&self.state);
        let inode = state.entries.get(path)?;
        state
            .inodes
            .get(inode)
            .map(|data| (data.synced_len, data.bytes.len()))
    }

    /// Where the bytes of a file the page cache may still keep start: the
    /// writer's `drop_cached` advice reached this far.
    pub fn dropped_upto(&self, path: &Path) -> Option<u64> {
        let state = lock(&self.state);
        let inode = state.entries.get(path)?;
        state.inodes.get(inode).map(|data| data.dropped_upto)
    }

    /// Paths of all files, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        lock(&self.state).entries.keys().cloned().collect()
    }

    /// Xors one byte of a file in place (disk corruption); false if out of range.
    pub fn corrupt(&self, path: &Path, offset: usize, xor: u8) -> bool {
        let mut state = lock(&self.state);
        let Some(inode) = state.entries.get(path).copied() else {
            return false;
        };
        match state
            .inodes
            .get_mut(&inode)
            .and_then(|data| data.bytes.get_mut(offset))
        {
            Some(byte) => {
                *byte ^= xor;
                true
            }
            None => false,
        }
    }

    /// Simulates power loss: directory entries revert to their last
    /// `sync_dir`, and each file keeps its synced bytes plus
    /// `keep_unsynced(path, n_unsynced)` (clamped) of the bytes after them.
    /// Open handles stop working. Injected faults and the disk-full flag are
    /// cleared.
    pub fn crash(&self, mut keep_unsynced: impl FnMut(&Path, usize) -> usize) {
        let mut state = lock(&self.state);
        state.generation += 1;
        state.injected.clear();
        state.disk_full = false;
        state.entries = state.durable_entries.clone();
        let live: BTreeSet<u64> = state.entries.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        let entries: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        for (path, inode) in entries {
            if let Some(data) = state.inodes.get_mut(&inode) {
                let n_unsynced = data.bytes.len() - data.synced_len;
                let keep = keep_unsynced(&path, n_unsynced).min(n_unsynced);
                data.bytes.truncate(data.synced_len + keep);
                data.synced_len = data.bytes.len();
                data.sync_failed = false;
            }
        }
    }
}

impl WalFs for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::CreateDir)?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::ListDir)?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            ));
        }
        Ok(state
            .entries
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::Create)?;
        if state.disk_full {
            return Err(disk_full_error());
        }
        state.check_parent(path)?;
        if state.entries.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(inode, InodeData::default());
        state.entries.insert(path.to_path_buf(), inode);
        Ok(Box::new(FaultFile {
            state: Arc::clone(&self.state),
            inode,
            generation: state.generation,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::OpenRead)?;
        let inode = state.inode_at(path)?;
        let bytes = state
            .inodes
            .get(&inode)
            .map(|data| data.bytes.clone())
            .unwrap_or_default();
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::Truncate)?;
        let inode = state.inode_at(path)?;
        let data = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("inode vanished"))?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        data.bytes.resize(len, 0);
        data.synced_len = data.bytes.len();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::Rename)?;
        state.check_parent(to)?;
        let inode = state.inode_at(from)?;
        state.entries.remove(from);
        state.entries.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::Remove)?;
        state.inode_at(path)?;
        state.entries.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.take_fault(FaultOp::SyncDir)?;
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.durable_entries.retain(|path, _| !in_dir(path));
        let current: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        state.durable_entries.extend(current);
        Ok(())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = lock(&self.state);
        let inode = state.inode_at(path)?;
        Ok(state
            .inodes
            .get(&inode)
            .map_or(0, |data| data.bytes.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_synced_entries_only() {
        let fs = FaultFs::new();
        let dir = Path::new("/wal");
        fs.create_dir_all(dir).expect("mkdir");
        let durable = dir.join("a");
        let mut file = fs.create_new(&durable).expect("create");
        assert_eq!(file.write(b"hello").expect("write"), 5);
        file.sync_data().expect("sync");
        fs.sync_dir(dir).expect("sync dir");
        assert_eq!(file.write(b" world").expect("write"), 6);
        let not_durable = dir.join("b");
        fs.create_new(&not_durable).expect("create");

        fs.crash(|_, n_unsynced| n_unsynced / 2);
        assert_eq!(fs.read(&durable).as_deref(), Some(&b"hello wo"[..]));
        assert_eq!(fs.read(&not_durable), None);
        assert!(file.write(b"x").is_err(), "handles die with a crash");
    }

    #[test]
    fn failed_fsync_is_not_made_good_by_a_retry() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/wal")).expect("mkdir");
        let path = Path::new("/wal/a");
        let mut file = fs.create_new(path).expect("create");
        file.write(b"abc").expect("write");
        fs.inject(FaultOp::Sync, io::ErrorKind::Other);
        assert!(file.sync_data().is_err());
        assert!(
            file.sync_data().is_ok(),
            "like Linux, the retry reports success"
        );
        assert_eq!(fs.lengths(path), Some((0, 3)), "but nothing became durable");
        assert_eq!(fs.violations().len(), 1);
    }
}
