//! One recorder per directory: an advisory `flock` on a lock file in each
//! directory the recorder writes (the WAL and the dataset). The kernel
//! releases it when the holder dies, so a restart right after SIGKILL starts
//! at once (a pid file would need a staleness guess); the holder writes its
//! pid inside so the next one can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in each locked directory.
pub const LOCK_FILE_NAME: &str = ".binance-recorder.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{directory} is in use by another binance-recorder (pid {holder}); stop it first, or give this one other directories"
    )]
    Held { directory: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirectoryLock {
    _file: File,
}

/// Takes the lock of `directory` (which must exist), without waiting.
pub fn lock_directory(directory: &Path) -> Result<DirectoryLock, LockError> {
    let path = directory.join(LOCK_FILE_NAME);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder may be writing its pid right now.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(LockError::Held {
                directory: directory.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(io_error(source)),
    }
    file.set_len(0).map_err(io_error)?;
    writeln!(file, "{}", std::process::id()).map_err(io_error)?;
    Ok(DirectoryLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let held = lock_directory(directory.path()).expect("first lock");
        let error = lock_directory(directory.path()).expect_err("second lock refused");
        let message = error.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&directory.path().display().to_string()),
            "{message}"
        );
        drop(held);
        lock_directory(directory.path()).expect("free again once dropped");
    }
}
