//! Held rows as a spilled run in their packed form: written and read back
//! as they are held, without becoming Arrow columns and an IPC stream on
//! the way out (what a run of klines, or of rows kept whole, still is:
//! `recorder/run_file.rs` chooses).
//!
//! The layout, little-endian:
//!
//! - [`PACKED_RUN_MAGIC`] (8 bytes);
//! - the header: the kind (1 byte: 1 trades, 2 aggTrades), the length of
//!   the table (u32) and the table (the hour's trade type names), then the
//!   CRC-32C of those (u32);
//! - blocks of at most [`CHUNK_ROWS`] rows in key order: the count (u32),
//!   the rows ([`Pack::WIRE_BYTES`] each), the CRC-32C of count and rows;
//! - a last block of no rows: its count, 0, and that count's CRC.
//!
//! A run cut short, damaged, or holding keys out of order reads as an
//! error, never as fewer rows.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::domain::StreamKind;

use super::packed::{Pack, Wire};
use super::{Held, HeldRows, Store, CHUNK_ROWS};

/// The first bytes of a packed run (an Arrow IPC stream starts otherwise).
pub const PACKED_RUN_MAGIC: [u8; 8] = *b"BRECRUN\x01";

/// The most bytes a header's table may say it holds: 255 names of a few
/// bytes each in any real hour; more is a damaged length.
const MAX_TABLE_BYTES: usize = 1 << 20;

const KIND_TRADES: u8 = 1;
const KIND_AGG_TRADES: u8 = 2;

impl HeldRows {
    /// Writes the rows as a packed run and returns `true`; returns `false`,
    /// having written nothing, when they cannot all go in their packed
    /// form (a kline hour, a row kept whole).
    pub fn write_packed_run(&self, out: &mut dyn Write) -> io::Result<bool> {
        match &self.store {
            Store::Trades(held) => held.write_run(KIND_TRADES, out),
            Store::AggTrades(held) => held.write_run(KIND_AGG_TRADES, out),
            Store::Klines(_) => Ok(false),
        }
    }
}

impl<P: Pack> Held<P> {
    fn write_run(&self, kind: u8, out: &mut dyn Write) -> io::Result<bool> {
        if !self.whole.is_empty() {
            return Ok(false);
        }
        let mut header = vec![kind, 0, 0, 0, 0];
        if P::table_to_wire(&self.table, &mut header).is_none() {
            return Ok(false);
        }
        let table_len = u32::try_from(header.len() - 5).map_err(io::Error::other)?;
        header[1..5].copy_from_slice(&table_len.to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        out.write_all(&PACKED_RUN_MAGIC)?;
        out.write_all(&header)?;
        let mut block = Vec::with_capacity(4 + CHUNK_ROWS * P::WIRE_BYTES + 4);
        let blocks = self
            .chunks
            .iter()
            .flat_map(|chunk| chunk.chunks(CHUNK_ROWS));
        for rows in blocks.chain([&[][..]]) {
            block.clear();
            let n_rows = u32::try_from(rows.len()).expect("a block holds at most CHUNK_ROWS rows");
            block.extend_from_slice(&n_rows.to_le_bytes());
            for row in rows {
                row.to_wire(&mut block);
            }
            block.extend_from_slice(&crc32c::crc32c(&block).to_le_bytes());
            out.write_all(&block)?;
        }
        Ok(true)
    }
}

/// A packed run read back a block at a time, each block as held rows of
/// its own (one chunk, the run's table).
pub struct PackedRunReader<R> {
    reader: R,
    /// No rows; the run's kind and table.
    template: HeldRows,
    /// The bytes of the block being read.
    block: Vec<u8>,
    last_key: Option<i64>,
    ended: bool,
}

impl<R: Read> PackedRunReader<R> {
    /// Reads the header of a run whose [`PACKED_RUN_MAGIC`] was just read
    /// from `reader`; the run must hold rows of `kind`.
    pub fn open(mut reader: R, kind: StreamKind) -> Result<PackedRunReader<R>, String> {
        let mut head = [0u8; 5];
        read_all(&mut reader, &mut head)?;
        let [tag, length @ ..] = head;
        let table_len = usize::try_from(u32::from_le_bytes(length)).unwrap_or(usize::MAX);
        if table_len > MAX_TABLE_BYTES {
            return Err(format!("a header table of {table_len} bytes"));
        }
        let mut header = head.to_vec();
        header.resize(5 + table_len + 4, 0);
        read_all(&mut reader, &mut header[5..])?;
        check_crc(&header, "the header")?;
        let table = &header[5..5 + table_len];
        let mut template = HeldRows::new(kind);
        let read_table = match (&mut template.store, tag) {
            (Store::Trades(held), KIND_TRADES) => read_table(held, table),
            (Store::AggTrades(held), KIND_AGG_TRADES) => read_table(held, table),
            _ => return Err("not a run of this stream kind".to_owned()),
        };
        read_table
            .then_some(())
            .ok_or("its trade type names are damaged")?;
        Ok(PackedRunReader {
            reader,
            template,
            block: Vec::new(),
            last_key: None,
            ended: false,
        })
    }

    /// The next block's rows; `None` after the last.
    pub fn next_block(&mut self) -> Result<Option<HeldRows>, String> {
        if self.ended {
            return Ok(None);
        }
        let kind = self.template.kind;
        let reader = &mut self.reader;
        let (block, last_key) = (&mut self.block, &mut self.last_key);
        let store = match &self.template.store {
            Store::Trades(held) => held.read_block(reader, block, last_key)?.map(Store::Trades),
            Store::AggTrades(held) => held
                .read_block(reader, block, last_key)?
                .map(Store::AggTrades),
            Store::Klines(_) => unreachable!("no packed run of klines opens"),
        };
        self.ended = store.is_none();
        Ok(store.map(|store| HeldRows { kind, store }))
    }
}

fn read_table<P: Pack>(held: &mut Held<P>, bytes: &[u8]) -> bool {
    match P::table_from_wire(&mut Wire(bytes)) {
        Some(table) => {
            held.table = table;
            true
        }
        None => false,
    }
}

impl<P: Pack> Held<P> {
    /// Reads one block with this (empty) hour's table: its rows, or `None`
    /// at the last block, after which nothing may follow.
    fn read_block(
        &self,
        reader: &mut impl Read,
        block: &mut Vec<u8>,
        last_key: &mut Option<i64>,
    ) -> Result<Option<Held<P>>, String> {
        let mut count = [0u8; 4];
        read_all(reader, &mut count)?;
        let n_rows = usize::try_from(u32::from_le_bytes(count)).unwrap_or(usize::MAX);
        if n_rows > CHUNK_ROWS {
            return Err(format!("a block of {n_rows} rows, more than {CHUNK_ROWS}"));
        }
        block.clear();
        block.extend_from_slice(&count);
        block.resize(4 + n_rows * P::WIRE_BYTES + 4, 0);
        read_all(reader, &mut block[4..])?;
        check_crc(block, "a block")?;
        if n_rows == 0 {
            let mut after = [0u8; 1];
            return match reader.read(&mut after) {
                Ok(0) => Ok(None),
                Ok(_) => Err("bytes after its last block".to_owned()),
                Err(error) => Err(error.to_string()),
            };
        }
        let mut wire = Wire(&block[4..4 + n_rows * P::WIRE_BYTES]);
        let mut rows = Vec::with_capacity(n_rows);
        for _ in 0..n_rows {
            let row = P::from_wire(&mut wire).ok_or("a row cut short")?;
            if last_key.is_some_and(|last| row.key() <= last) {
                return Err(format!(
                    "key {} after key {}",
                    row.key(),
                    last_key.unwrap_or_default()
                ));
            }
            *last_key = Some(row.key());
            rows.push(row);
        }
        Ok(Some(Held {
            chunks: vec![rows],
            whole: BTreeMap::new(),
            table: self.table.clone(),
            n_packed: n_rows,
        }))
    }
}

/// Fills `bytes` from `reader`; the end of the file first is an error.
fn read_all(reader: &mut impl Read, bytes: &mut [u8]) -> Result<(), String> {
    reader
        .read_exact(bytes)
        .map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => "it ends before its last block".to_owned(),
            _ => error.to_string(),
        })
}

/// `bytes` ends with the CRC-32C of what comes before it.
fn check_crc(bytes: &[u8], what: &str) -> Result<(), String> {
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    (crc32c::crc32c(body) == stored)
        .then_some(())
        .ok_or_else(|| format!("{what}'s checksum does not match"))
}
