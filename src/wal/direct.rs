//! Segments written and read past the page cache: written once from
//! start to end (the last block again at each sync), read once, at the
//! next start.
//!
//! On this VM a page the kernel has not used for a while costs about 1 s
//! of system time a GB to fill (free page reporting hands freed pages back
//! to the host; docs/BENCHMARKS.md, sessions 20 and 22), and a burst
//! writes gigabytes: through the page cache that was most of a WAL
//! thread's time. [`BlockWriter`] writes with `O_DIRECT` where the
//! filesystem takes it: whole blocks of [`BLOCK`] bytes from an aligned
//! buffer, straight to the disk (a `dd` of 1 GB: 0.17 s of system time,
//! against 0.31 s into recently freed pages and 3.08 s into cold ones).
//! [`ReadOnce`] reads with the kernel reading a window ahead and dropping
//! what was read, so the few pages it needs are used again and again.

use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{fadvise, fcntl_getfl, fcntl_setfl, Advice, OFlags};

/// The unit of a direct write: offsets, lengths and the buffer's address
/// are multiples of it (4,096 serves every common device).
pub const BLOCK: usize = 4096;

/// A file written in whole blocks from an aligned buffer, with `O_DIRECT`
/// where the filesystem takes it (the same blocks through the page cache
/// where it does not). Whole blocks are written as they come; the last,
/// partial block is written padded with zeros when asked
/// ([`BlockWriter::write_blocks`] with `pad`) and kept, to be written
/// again, completed, by the next write. Rewriting a block rewrites its
/// bytes already on disk with the same bytes, so a write torn by a power
/// loss cannot damage them (disks write a sector whole or not at all).
pub struct BlockWriter {
    file: File,
    /// Whether `O_DIRECT` is set on `file`.
    direct: bool,
    /// The file's bytes from `block_start` on that are not all written
    /// yet: a partial block, then what came since.
    buffer: AlignedBuffer,
    /// A multiple of [`BLOCK`].
    block_start: u64,
    /// The file's length: where the last write ended, padding included.
    written_to: u64,
    /// Where the bytes written, padding excluded, end.
    data_to: u64,
    /// Set by a failed write: the file is not written again.
    failed: bool,
}

impl std::fmt::Debug for BlockWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BlockWriter")
            .field("file", &self.file)
            .field("direct", &self.direct)
            .field("block_start", &self.block_start)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl BlockWriter {
    /// Writes the new, empty `file` from its start; with `O_DIRECT` if the
    /// filesystem takes it (`direct()` says).
    pub fn new(file: File) -> BlockWriter {
        let direct = fcntl_getfl(&file)
            .and_then(|flags| fcntl_setfl(&file, flags | OFlags::DIRECT))
            .is_ok();
        BlockWriter {
            file,
            direct,
            buffer: AlignedBuffer::default(),
            block_start: 0,
            written_to: 0,
            data_to: 0,
            failed: false,
        }
    }

    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The file, for page-cache writes (nothing was written yet): `O_DIRECT`
    /// was refused.
    pub fn into_file(self) -> File {
        self.file
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the next byte goes: bytes appended here are written by the
    /// next [`BlockWriter::write_blocks`]. Only appended to.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer.bytes
    }

    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Writes the buffer's whole blocks, and with `pad` its partial last
    /// block padded with zeros, which it keeps.
    pub fn write_blocks(&mut self, pad: bool) -> io::Result<()> {
        self.buffer.align();
        let len = self.buffer.len();
        let whole = len / BLOCK * BLOCK;
        let end = if pad {
            len.div_ceil(BLOCK) * BLOCK
        } else {
            whole
        };
        if end == 0 {
            return Ok(());
        }
        let blocks = self.buffer.padded(end);
        let mut written = self.file.write_all_at(blocks, self.block_start);
        if self.direct
            && matches!(&written, Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()))
        {
            // The filesystem took the flag but not these blocks (a device
            // whose blocks are larger than `BLOCK`): the same bytes, at
            // the same place, through the page cache from now on.
            let buffered = fcntl_getfl(&self.file)
                .and_then(|flags| fcntl_setfl(&self.file, flags - OFlags::DIRECT));
            if buffered.is_ok() {
                tracing::warn!(
                    "O_DIRECT write refused; the file is written through the page cache"
                );
                self.direct = false;
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

    /// Cuts the padding of the last write, so the file ends at its last
    /// byte. Not synced.
    pub fn cut_padding(&mut self) -> io::Result<()> {
        if !self.failed && self.written_to > self.data_to {
            self.file.set_len(self.data_to)?;
            self.written_to = self.data_to;
        }
        Ok(())
    }
}

/// Bytes starting at an address aligned to [`BLOCK`], as `O_DIRECT`
/// needs, kept in a `Vec` that is appended to: the bytes start at
/// `start`, the room before it unused. Safe code only: when the `Vec`
/// grew to an allocation aligned elsewhere, [`AlignedBuffer::align`]
/// moves the bytes once.
#[derive(Default)]
struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
}

/// A buffer that one huge write grew past this is given back once
/// written, not kept for the file's life.
const KEEP_AT_MOST: usize = 8 << 20;

impl AlignedBuffer {
    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Makes the bytes start at an aligned address with room for a block
    /// after them (the padding), moving them if they do not.
    fn align(&mut self) {
        let len = self.len();
        let aligned = (self.bytes.as_ptr().addr() + self.start).is_multiple_of(BLOCK);
        if aligned && self.bytes.capacity() >= self.bytes.len() + BLOCK {
            return;
        }
        let mut fresh = Vec::<u8>::with_capacity(2 * len + 3 * BLOCK);
        let start = (BLOCK - fresh.as_ptr().addr() % BLOCK) % BLOCK;
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
            self.bytes.shrink_to(self.start + len - n + BLOCK);
        }
    }
}

/// A segment read once, start to end (the replay): the kernel is told to read a window ahead of the reader, and to
/// drop what the reader has read. The page cache then holds a few windows
/// of the file, not all of it, and the pages it frees are the ones it
/// reads the next window into (a segment read ahead whole took 64 MiB of
/// cold pages at once).
#[derive(Debug)]
pub struct ReadOnce {
    file: File,
    /// Bytes read so far.
    offset: u64,
    /// The kernel was told to read ahead up to here.
    ahead_to: u64,
    /// The kernel was told to drop the pages up to here.
    dropped_to: u64,
}

/// How far ahead of the reader the kernel reads; it is asked for twice
/// this when the reader comes within this of the end of the last request.
const READ_AHEAD: u64 = 4 << 20;

impl ReadOnce {
    fn new(file: File) -> ReadOnce {
        let _ = fadvise(&file, 0, None, Advice::Sequential);
        ReadOnce {
            file,
            offset: 0,
            ahead_to: 0,
            dropped_to: 0,
        }
    }

    pub fn open(path: &Path) -> io::Result<ReadOnce> {
        Ok(ReadOnce::new(File::open(path)?))
    }
}

impl Read for ReadOnce {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset + READ_AHEAD > self.ahead_to {
            let from = self.ahead_to.max(self.offset);
            let _ = fadvise(
                &self.file,
                from,
                NonZeroU64::new(2 * READ_AHEAD),
                Advice::WillNeed,
            );
            self.ahead_to = from + 2 * READ_AHEAD;
        }
        let n_read = self.file.read(buf)?;
        self.offset += n_read as u64;
        if self.offset - self.dropped_to >= READ_AHEAD {
            // Whole pages only: the last one may still be read from.
            let to = self.offset / BLOCK as u64 * BLOCK as u64;
            let _ = fadvise(
                &self.file,
                self.dropped_to,
                NonZeroU64::new(to - self.dropped_to),
                Advice::DontNeed,
            );
            self.dropped_to = to;
        }
        Ok(n_read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partial block written padded, then completed: the file holds the
    /// bytes, the padding only past them, and cutting it leaves the bytes.
    #[test]
    fn a_padded_block_is_written_again_completed() {
        let temp = tempfile::tempdir().expect("tempdir");
        let path = temp.path().join("segment");
        let mut blocks = BlockWriter::new(File::create(&path).expect("create"));
        blocks.buffer().extend_from_slice(b"first");
        blocks.write_blocks(true).expect("padded");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), BLOCK as u64);
        blocks.buffer().extend_from_slice(&[b'x'; BLOCK]);
        blocks.write_blocks(true).expect("padded again");
        let on_disk = std::fs::read(&path).expect("read");
        assert_eq!(on_disk.len(), 2 * BLOCK);
        assert_eq!(&on_disk[..5], b"first");
        assert!(on_disk[5..5 + BLOCK].iter().all(|&byte| byte == b'x'));
        assert!(on_disk[5 + BLOCK..].iter().all(|&byte| byte == 0));
        blocks.cut_padding().expect("cut");
        assert_eq!(std::fs::read(&path).expect("read").len(), 5 + BLOCK);
    }
}
