//! The filesystem seam: every file operation of the WAL goes through
//! [`WalFs`], so tests can inject short writes, fsync errors, a full disk and
//! crashes at any step. [`RealFs`] is the production implementation;
//! `FaultFs` (`fault_fs.rs`, tests only) is an in-memory one that models
//! what survives a crash.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use super::direct::{BlockWriter, ReadOnce};

/// A file opened for appending by the writer.
pub trait WalFile: Send + fmt::Debug {
    /// Like [`io::Write::write`]: may write fewer bytes than given.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// `fdatasync`: after `Ok`, every byte written so far is durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Advice that the bytes `from..to`, durable now, need not stay in
    /// the page cache: the WAL is read back only at start. Errors are
    /// ignored (the advice changes nothing the WAL relies on); the default
    /// does nothing.
    fn drop_cached(&mut self, _from: u64, _to: u64) {}
    /// A buffer of the file's own that the writer may append whole
    /// records to instead of calling [`WalFile::write`] (saving a copy of
    /// every record): they are written by [`WalFile::write_buffer`] or
    /// [`WalFile::sync_data`]. Only appended to. `None` (the default): the
    /// file keeps none.
    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
    /// Writes what [`WalFile::buffer`] holds, or part of it (no fsync).
    fn write_buffer(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The file operations the WAL needs.
pub trait WalFs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`; names that are not UTF-8 are left out
    /// (the WAL never writes such names).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a file that must not exist yet, for writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// Cuts the file to `len` bytes and fsyncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The file's length in bytes (for the WAL size gauge). The default
    /// asks the real filesystem, which suits seams that wrap [`RealFs`].
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl WalFile for RealFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    /// `POSIX_FADV_DONTNEED` over bytes already synced, so clean: the
    /// kernel frees their pages now, and the next writes reuse pages just
    /// freed instead of taking pages nobody has touched for a while (on
    /// this VM those cost ten times as much to write into;
    /// docs/BENCHMARKS.md, session 20), and a WAL of gigabytes does not
    /// push the page cache's other files out.
    fn drop_cached(&mut self, from: u64, to: u64) {
        if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
            let _ = rustix::fs::fadvise(&self.0, from, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
}

impl WalFs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Written with `O_DIRECT` where the filesystem takes it
    /// ([`DirectFile`]), through the page cache where it does not (tmpfs
    /// before Linux 6.6, some network filesystems).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let blocks = BlockWriter::new(file);
        if blocks.direct() {
            return Ok(Box::new(DirectFile(blocks)));
        }
        tracing::debug!(path = %path.display(), "O_DIRECT refused; the WAL segment is written through the page cache");
        Ok(Box::new(RealFile(blocks.into_file())))
    }

    /// The segment is read once from start to end ([`ReadOnce`]).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(ReadOnce::open(path)?))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A segment written with `O_DIRECT` ([`BlockWriter`]): the last,
/// partial block written padded with zeros at each
/// [`WalFile::sync_data`] and again, completed, at the next. The zeros
/// after the last record are the padding the reader knows
/// ([`super::reader`]); they are cut when the segment is closed.
#[derive(Debug)]
struct DirectFile(BlockWriter);

impl WalFile for DirectFile {
    /// Buffers `bytes` and writes the buffer's whole blocks.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.buffer().extend_from_slice(bytes);
        self.write_buffer()?;
        Ok(bytes.len())
    }

    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        Some(self.0.buffer())
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.0.write_blocks(false)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.write_blocks(true)?;
        self.0
            .file()
            .sync_data()
            .inspect_err(|_| self.0.mark_failed())
    }
}

impl Drop for DirectFile {
    /// A segment closed (rolled, or the writer closed) ends at its last
    /// record: the padding is cut. Not synced, and errors ignored: a
    /// crash that loses the cut leaves the padding, which the reader
    /// knows. A failed file is left as it is.
    fn drop(&mut self) {
        let _ = self.0.cut_padding();
    }
}
