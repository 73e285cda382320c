//! The filesystem seam: every file operation of the WAL goes through
//! [`WalFs`], so tests can inject short writes, fsync errors, a full disk and
//! crashes at any step. [`RealFs`] is the production implementation;
//! `FaultFs` (`fault_fs.rs`, tests only) is an in-memory one that models
//! what survives a crash.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::frame::PAD_TO;

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
        match DirectFile::new(file) {
            Ok(direct) => Ok(Box::new(direct)),
            Err((file, error)) => {
                tracing::debug!(path = %path.display(), %error, "O_DIRECT refused; the WAL segment is written through the page cache");
                Ok(Box::new(RealFile(file)))
            }
        }
    }

    /// The segment is read once from start to end ([`ReadOnce`]).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let file = File::open(path)?;
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(Box::new(ReadOnce::new(file)))
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

/// A segment read once, start to end (the replay): the kernel is told to
/// read a window ahead of the reader, and to drop what the reader has
/// read. The page cache then holds a few windows of the WAL, not all of
/// it, and the pages it frees are the ones it reads the next window into:
/// on this VM a page the kernel has not used for a while costs about
/// 1 s a GB to fill (docs/BENCHMARKS.md, sessions 20 and 22), and a
/// segment read ahead whole took 64 MiB of such pages at once.
#[derive(Debug)]
struct ReadOnce {
    file: File,
    /// Bytes read so far.
    offset: u64,
    /// The kernel was told to read ahead up to here.
    ahead_to: u64,
    /// The kernel was told to drop the pages up to here.
    dropped_to: u64,
}

/// How far ahead of the reader the kernel reads, in one request each.
const READ_AHEAD: u64 = 4 << 20;

impl ReadOnce {
    fn new(file: File) -> ReadOnce {
        ReadOnce {
            file,
            offset: 0,
            ahead_to: 0,
            dropped_to: 0,
        }
    }
}

impl Read for ReadOnce {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::fs::{fadvise, Advice};
        if self.offset + READ_AHEAD > self.ahead_to {
            let from = self.ahead_to.max(self.offset);
            let _ = fadvise(
                &self.file,
                from,
                std::num::NonZeroU64::new(2 * READ_AHEAD),
                Advice::WillNeed,
            );
            self.ahead_to = from + 2 * READ_AHEAD;
        }
        let n_read = self.file.read(buf)?;
        self.offset += n_read as u64;
        if self.offset - self.dropped_to >= READ_AHEAD {
            // Whole pages only: the last one may still be read from.
            let to = self.offset / PAD_TO as u64 * PAD_TO as u64;
            let _ = fadvise(
                &self.file,
                self.dropped_to,
                std::num::NonZeroU64::new(to - self.dropped_to),
                Advice::DontNeed,
            );
            self.dropped_to = to;
        }
        Ok(n_read)
    }
}

/// A segment written with `O_DIRECT`: from an aligned buffer straight to
/// the disk, never through the page cache. On this VM a buffered write
/// into page-cache pages cost about 1 s of system time a GB, most of the
/// WAL thread's time in a burst; a direct write of the same bytes 0.17 s
/// (docs/BENCHMARKS.md, session 22).
///
/// A direct write covers whole blocks of [`PAD_TO`] bytes at offsets that
/// are multiples of it. Whole blocks are written as they come; the last,
/// partial block is written padded with zeros at each [`WalFile::sync_data`]
/// and kept, to be written again, completed, by the next one. Rewriting a
/// block rewrites its durable bytes with the same bytes, so a write torn
/// by a power loss cannot damage them (disks write a sector whole or not
/// at all). The zeros after the last record are the padding the reader
/// knows ([`super::reader`]).
struct DirectFile {
    file: File,
    /// The file's bytes from `block_start` on that are not all written
    /// yet: a partial block, then what came since.
    buffer: AlignedBuffer,
    /// A multiple of [`PAD_TO`].
    block_start: u64,
    /// The file's length: where the last write ended, padding included.
    written_to: u64,
    /// Where the bytes written, padding excluded, end.
    data_to: u64,
    /// Set by a failed write or sync: the file is not touched again.
    failed: bool,
}

impl fmt::Debug for DirectFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DirectFile")
            .field("file", &self.file)
            .field("block_start", &self.block_start)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl DirectFile {
    /// Sets `O_DIRECT` on a new, empty `file`; gives it back if the
    /// filesystem refuses.
    fn new(file: File) -> Result<DirectFile, (File, io::Error)> {
        use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
        let flags = match fcntl_getfl(&file) {
            Ok(flags) => flags,
            Err(error) => return Err((file, error.into())),
        };
        if let Err(error) = fcntl_setfl(&file, flags | OFlags::DIRECT) {
            return Err((file, error.into()));
        }
        Ok(DirectFile {
            file,
            buffer: AlignedBuffer::default(),
            block_start: 0,
            written_to: 0,
            data_to: 0,
            failed: false,
        })
    }

    /// Writes the buffer's whole blocks, and with `pad` its partial last
    /// block padded with zeros; keeps that partial block.
    fn write_blocks(&mut self, pad: bool) -> io::Result<()> {
        self.buffer.align();
        let len = self.buffer.len();
        let whole = len / PAD_TO * PAD_TO;
        let end = if pad {
            len.div_ceil(PAD_TO) * PAD_TO
        } else {
            whole
        };
        if end == 0 {
            return Ok(());
        }
        let blocks = self.buffer.padded(end);
        let mut written = self.file.write_all_at(blocks, self.block_start);
        if matches!(&written, Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()))
        {
            // The filesystem took the flag but not these blocks (a device
            // whose blocks are larger than `PAD_TO`): the same bytes, at
            // the same place, through the page cache from now on.
            let buffered = rustix::fs::fcntl_getfl(&self.file).and_then(|flags| {
                rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)
            });
            if buffered.is_ok() {
                tracing::warn!(
                    "O_DIRECT write refused; the WAL segment is written through the page cache"
                );
                written = self.file.write_all_at(blocks, self.block_start);
            }
        }
        if let Err(error) = written {
            self.failed = true;
            return Err(error);
        }
        self.written_to = self.written_to.max(self.block_start + end as u64);
        self.data_to = self.block_start + end.min(len) as u64;
        self.buffer.drop_front(whole, len);
        self.block_start += whole as u64;
        Ok(())
    }
}

impl WalFile for DirectFile {
    /// Buffers `bytes` and writes the buffer's whole blocks.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.bytes.extend_from_slice(bytes);
        self.write_blocks(false)?;
        Ok(bytes.len())
    }

    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        Some(&mut self.buffer.bytes)
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.write_blocks(false)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.write_blocks(true)?;
        self.file.sync_data().inspect_err(|_| self.failed = true)
    }
}

impl Drop for DirectFile {
    /// A segment closed (rolled, or the writer closed) ends at its last
    /// record: the padding is cut. Not synced, and errors ignored: a
    /// crash that loses the cut leaves the padding, which the reader
    /// knows. A failed file is left as it is.
    fn drop(&mut self) {
        if !self.failed && self.written_to > self.data_to {
            let _ = self.file.set_len(self.data_to);
        }
    }
}

/// Bytes starting at an address aligned to [`PAD_TO`], as `O_DIRECT`
/// needs, kept in a `Vec` the writer appends records to
/// ([`WalFile::buffer`]): the bytes start at `start`, the room before it
/// unused. Safe code only: when the `Vec` grew to an allocation aligned
/// elsewhere, [`AlignedBuffer::align`] moves the bytes once.
#[derive(Default)]
struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
}

/// A buffer that one huge record grew past this is given back once
/// written, not kept for the segment's life.
const KEEP_AT_MOST: usize = 8 << 20;

impl AlignedBuffer {
    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Makes the bytes start at an aligned address with room for a block
    /// after them (the padding), moving them if they do not.
    fn align(&mut self) {
        let len = self.len();
        let aligned = (self.bytes.as_ptr().addr() + self.start).is_multiple_of(PAD_TO);
        if aligned && self.bytes.capacity() >= self.bytes.len() + PAD_TO {
            return;
        }
        let mut fresh = Vec::<u8>::with_capacity(2 * len + 3 * PAD_TO);
        let start = (PAD_TO - fresh.as_ptr().addr() % PAD_TO) % PAD_TO;
        fresh.resize(start, 0);
        fresh.extend_from_slice(&self.bytes[self.start..]);
        self.bytes = fresh;
        self.start = start;
    }

    /// The first `end` bytes, zeros after the buffered ones; `end` is at
    /// most a block past them, and [`AlignedBuffer::align`] came first.
    fn padded(&mut self, end: usize) -> &[u8] {
        let len = self.len();
        self.bytes.resize(self.start + end.max(len), 0);
        &self.bytes[self.start..self.start + end]
    }

    /// Drops the padding and the first `n` bytes (whole blocks).
    fn drop_front(&mut self, n: usize, len: usize) {
        self.bytes.truncate(self.start + len);
        self.bytes.copy_within(self.start + n.., self.start);
        self.bytes.truncate(self.start + len - n);
        if self.bytes.capacity() > KEEP_AT_MOST {
            self.bytes.shrink_to(self.start + len - n + PAD_TO);
        }
    }
}
