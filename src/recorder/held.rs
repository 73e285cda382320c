//! The rows of one unsealed stream-hour, held compactly (no I/O).
//!
//! A busy hour holds hundreds of thousands of rows until it seals, so the
//! form they wait in decides the recorder's memory. A `Row` is sized by its
//! largest variant (a kline's ten i128 decimals, 224 bytes) and a
//! `BTreeMap` adds its node per row (about 430 bytes a trade in all).
//! Here each kind has its own packed form:
//!
//! - **trades**: 56 bytes: decimals as i64 units of 10^-8 (what every real
//!   price and quantity fits), times as i64 with a sentinel for "absent",
//!   the side, best-match flag and source in one byte of flags, and
//!   `trade_type` as an index into the hour's small table of the names seen;
//! - **aggTrades**: 56 bytes: the same, with `last_trade_id` as a 28-bit
//!   step from `first_trade_id` sharing a word with the flags, and
//!   `event_time` as an i32 step from the trade time;
//! - **klines** (at most 3,600 an hour, usually 60) and any row that does not
//!   fit its packed form (a decimal beyond i64, a step beyond u32, a row of
//!   another kind): kept whole, in a small ordered map beside the packed
//!   rows. Exact either way: a value is never narrowed.
//!
//! Packed rows sit in sorted chunks of at most [`CHUNK_ROWS`]: a stream
//! delivers in key order, so a row is appended to the last chunk after one
//! comparison; a row out of order (a late row, a REST fill of a hole) is
//! placed by binary search inside one chunk, and a chunk that overflows is
//! split in two. So the rows are always sorted and unique by key, every
//! insert answers exactly what it did ([`Inserted`], for the counters), and
//! the spare capacity is at most one chunk's growth per hour, not the
//! doubling of one big vector.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::mem::size_of;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use crate::domain::{Row, Source, StreamKind, TimeUs};
use crate::gaps::{spans_of_sorted, IdAt, IdSpan};
use crate::parquet_out::columns;
use crate::parquet_out::{ParquetOutError, Piece, SortedRows};
use crate::seal::Inserted;

mod packed;
mod run;

use packed::{Pack, PackedAggTrade, PackedTrade, Whole};
pub use run::{PackedRunReader, PACKED_RUN_MAGIC};

/// Rows per chunk: big enough that the per-chunk overhead is nothing, small
/// enough that placing a row out of order moves at most 64 KiB.
pub const CHUNK_ROWS: usize = 1024;

/// The rows of one stream-hour, sorted and unique by key.
#[derive(Debug, Clone)]
pub struct HeldRows {
    kind: StreamKind,
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Trades(Held<PackedTrade>),
    AggTrades(Held<PackedAggTrade>),
    Klines(Held<Whole>),
}

/// Calls `$body` with `$held` bound to the store of whatever kind it is.
macro_rules! each_store {
    ($store:expr, $held:ident => $body:expr) => {
        match $store {
            Store::Trades($held) => $body,
            Store::AggTrades($held) => $body,
            Store::Klines($held) => $body,
        }
    };
}

impl HeldRows {
    /// An empty set of rows for a stream of `kind`.
    pub fn new(kind: StreamKind) -> HeldRows {
        let store = match kind {
            StreamKind::Trade => Store::Trades(Held::default()),
            StreamKind::AggTrade => Store::AggTrades(Held::default()),
            StreamKind::Kline(_) => Store::Klines(Held::default()),
        };
        HeldRows { kind, store }
    }

    /// Rows already sorted and unique by key (a file's, merged), held.
    pub fn from_rows(kind: StreamKind, rows: Vec<Row>) -> HeldRows {
        let mut held = HeldRows::new(kind);
        for row in rows {
            held.insert(row);
        }
        held
    }

    /// The kind of stream the rows are of.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Inserts `row` under the merge rule of [`crate::seal::insert_row`]:
    /// the first arrival of a key wins, except that a stream row replaces a
    /// REST row.
    pub fn insert(&mut self, row: Row) -> Inserted {
        each_store!(&mut self.store, held => held.insert(row))
    }

    pub fn len(&self) -> usize {
        each_store!(&self.store, held => held.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's key and time, in key order.
    pub fn id_ats(&self) -> Box<dyn Iterator<Item = IdAt> + '_> {
        each_store!(&self.store, held => Box::new(held.id_ats()))
    }

    /// The rows' keys as spans without a gap (see [`IdSpan`]): what gap
    /// detection needs, without a vector of every key.
    pub fn id_spans(&self) -> Vec<IdSpan> {
        spans_of_sorted(self.id_ats())
    }

    /// [`HeldRows::id_spans`] and the earliest and latest row time, in one
    /// pass over the rows (what a spilled run keeps of them).
    pub fn spans_and_times(&self) -> (Vec<IdSpan>, Option<(TimeUs, TimeUs)>) {
        each_store!(&self.store, held => held.spans_and_times())
    }

    /// How many rows came from REST.
    pub fn n_rest(&self) -> usize {
        each_store!(&self.store, held => held.n_rest())
    }

    /// The first row's key and time.
    pub fn first_id_at(&self) -> Option<IdAt> {
        self.id_ats().next()
    }

    /// The last row's key.
    pub fn last_key(&self) -> Option<i64> {
        each_store!(&self.store, held => held.last_key())
    }

    /// The last row's key and time.
    pub fn last_id_at(&self) -> Option<IdAt> {
        each_store!(&self.store, held => held.last_id_at())
    }

    /// The rows in key order, each unpacked as it is reached.
    pub fn rows(&self) -> Box<dyn Iterator<Item = Row> + '_> {
        each_store!(&self.store, held => Box::new(held.rows()))
    }

    /// The rows in key order, all unpacked (for tests and small hours).
    pub fn to_vec(&self) -> Vec<Row> {
        self.rows().collect()
    }

    /// The rows, sorted and unique by key, in their full form.
    pub fn into_rows(self) -> Vec<Row> {
        each_store!(self.store, held => held.into_rows())
    }

    /// Bytes of heap the rows take, counting spare capacity (the whole rows
    /// estimated with their map node).
    pub fn heap_bytes(&self) -> usize {
        each_store!(&self.store, held => held.heap_bytes())
    }

    /// The rows as one record batch of the kind's schema, made from their
    /// packed form (a block of a packed run read back); `None` when some
    /// are not packed (a kline hour, a row kept whole).
    pub fn to_batch(&self) -> Result<Option<RecordBatch>, ArrowError> {
        match &self.store {
            Store::Trades(held) => held.to_batch(self.kind),
            Store::AggTrades(held) => held.to_batch(self.kind),
            Store::Klines(_) => Ok(None),
        }
    }
}

impl SortedRows for HeldRows {
    fn is_empty(&self) -> bool {
        HeldRows::is_empty(self)
    }

    fn for_each_slice(
        &self,
        max: usize,
        each: &mut dyn FnMut(&[Row]) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        // One slice of unpacked rows at a time: the hour stays packed.
        let mut slice = Vec::with_capacity(max.clamp(1, self.len().max(1)));
        for row in self.rows() {
            slice.push(row);
            if slice.len() >= max {
                each(&slice)?;
                slice.clear();
            }
        }
        if !slice.is_empty() {
            each(&slice)?;
        }
        Ok(())
    }

    /// Packed rows go to the writer as columns made straight from their
    /// packed form, a chunk at a time; an hour with rows kept whole (rare:
    /// a value beyond the packed form; every kline hour) goes as rows.
    fn for_each_piece(
        &self,
        max: usize,
        each: &mut dyn FnMut(Piece<'_>) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        if each_store!(&self.store, held => !held.whole.is_empty()) {
            return self.for_each_slice(max, &mut |rows| each(Piece::Rows(rows)));
        }
        each_store!(&self.store, held => held.for_each_batch(self.kind, max, each))
    }
}

/// Packed rows in sorted chunks, and the rows that do not pack kept whole.
#[derive(Debug, Clone)]
struct Held<P: Pack> {
    chunks: Vec<Vec<P>>,
    whole: BTreeMap<i64, Row>,
    table: P::Table,
    n_packed: usize,
}

impl<P: Pack> Default for Held<P> {
    fn default() -> Self {
        Held {
            chunks: Vec::new(),
            whole: BTreeMap::new(),
            table: P::Table::default(),
            n_packed: 0,
        }
    }
}

/// Where a held key is.
enum Found {
    Packed { chunk: usize, index: usize },
    Whole,
}

impl<P: Pack> Held<P> {
    fn len(&self) -> usize {
        self.n_packed + self.whole.len()
    }

    fn last_key(&self) -> Option<i64> {
        self.last_id_at().map(|at| at.id)
    }

    fn last_id_at(&self) -> Option<IdAt> {
        let packed = self
            .chunks
            .last()
            .and_then(|chunk| chunk.last())
            .map(|held| IdAt {
                id: held.key(),
                time: held.time(),
            });
        let whole = self.whole.values().next_back().map(|row| IdAt {
            id: row.key(),
            time: row.bucket_time(),
        });
        packed.into_iter().chain(whole).max_by_key(|at| at.id)
    }

    fn insert(&mut self, row: Row) -> Inserted {
        let key = row.key();
        // The stream's usual case: a key beyond every key held.
        let beyond_all = self.last_key().is_none_or(|last| key > last);
        if !beyond_all {
            if let Some(found) = self.find(key) {
                let held_source = match found {
                    Found::Packed { chunk, index } => self.chunks[chunk][index].source(),
                    Found::Whole => self.whole[&key].source(),
                };
                if held_source == Source::Rest && row.source() == Source::Ws {
                    self.remove(key, found);
                    self.place(row);
                    return Inserted::ReplacedRest;
                }
                return Inserted::Duplicate;
            }
        }
        self.place(row);
        Inserted::New
    }

    /// Puts a row whose key is not held.
    fn place(&mut self, row: Row) {
        let Some(packed) = P::pack(&row, &mut self.table) else {
            self.whole.insert(row.key(), row);
            return;
        };
        self.n_packed += 1;
        let key = packed.key();
        let appends = self
            .chunks
            .last()
            .and_then(|chunk| chunk.last())
            .is_none_or(|last| key > last.key());
        if appends {
            match self.chunks.last_mut() {
                Some(chunk) if chunk.len() < CHUNK_ROWS => chunk.push(packed),
                // A stream that filled a chunk fills the next: made whole
                // at once rather than grown a row at a time. A first chunk
                // grows, so a quiet stream's hour stays small.
                Some(_) => {
                    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
                    chunk.push(packed);
                    self.chunks.push(chunk);
                }
                None => self.chunks.push(vec![packed]),
            }
            return;
        }
        let chunk_index = self.chunk_for(key);
        let chunk = &mut self.chunks[chunk_index];
        let index = chunk.partition_point(|held| held.key() < key);
        chunk.insert(index, packed);
        if chunk.len() > CHUNK_ROWS {
            let upper = chunk.split_off(chunk.len() / 2);
            chunk.shrink_to(CHUNK_ROWS);
            self.chunks.insert(chunk_index + 1, upper);
        }
    }

    /// The chunk a packed `key` belongs in: the first whose last key is not
    /// below it (the last chunk when every key is below it).
    fn chunk_for(&self, key: i64) -> usize {
        let index = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last.key() < key));
        index.min(self.chunks.len().saturating_sub(1))
    }

    fn find(&self, key: i64) -> Option<Found> {
        if self.whole.contains_key(&key) {
            return Some(Found::Whole);
        }
        if self.chunks.is_empty() {
            return None;
        }
        let chunk = self.chunk_for(key);
        self.chunks[chunk]
            .binary_search_by_key(&key, P::key)
            .ok()
            .map(|index| Found::Packed { chunk, index })
    }

    fn remove(&mut self, key: i64, found: Found) {
        match found {
            Found::Whole => {
                self.whole.remove(&key);
            }
            Found::Packed { chunk, index } => {
                self.chunks[chunk].remove(index);
                self.n_packed -= 1;
                if self.chunks[chunk].is_empty() {
                    self.chunks.remove(chunk);
                }
            }
        }
    }

    fn id_ats(&self) -> impl Iterator<Item = IdAt> + '_ {
        let packed = self.chunks.iter().flatten().map(|held| IdAt {
            id: held.key(),
            time: held.time(),
        });
        let whole = self.whole.values().map(|row| IdAt {
            id: row.key(),
            time: row.bucket_time(),
        });
        MergeByKey::new(packed, whole, |id_at: &IdAt| id_at.id)
    }

    /// [`HeldRows::spans_and_times`], for this kind: a spill takes it of
    /// every row held, so the usual hour (nothing kept whole) walks its
    /// chunks without the merge.
    fn spans_and_times(&self) -> (Vec<IdSpan>, Option<(TimeUs, TimeUs)>) {
        let mut times: Option<(TimeUs, TimeUs)> = None;
        let mut note = |at: &IdAt| {
            times = Some(times.map_or((at.time, at.time), |(low, high)| {
                (low.min(at.time), high.max(at.time))
            }));
        };
        let spans = if self.whole.is_empty() {
            spans_of_sorted(self.chunks.iter().flatten().map(|held| {
                let at = IdAt {
                    id: held.key(),
                    time: held.time(),
                };
                note(&at);
                at
            }))
        } else {
            spans_of_sorted(self.id_ats().inspect(note))
        };
        (spans, times)
    }

    fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        let table = &self.table;
        let packed = self
            .chunks
            .iter()
            .flatten()
            .map(move |held| held.unpack(table));
        MergeByKey::new(packed, self.whole.values().cloned(), Row::key)
    }

    fn n_rest(&self) -> usize {
        let packed = self
            .chunks
            .iter()
            .flatten()
            .filter(|held| held.source() == Source::Rest)
            .count();
        packed
            + self
                .whole
                .values()
                .filter(|row| row.source() == Source::Rest)
                .count()
    }

    /// The packed rows (none kept whole) as record batches of at most
    /// `max` rows, one chunk or part of one at a time.
    fn for_each_batch(
        &self,
        kind: StreamKind,
        max: usize,
        each: &mut dyn FnMut(Piece<'_>) -> Result<(), ParquetOutError>,
    ) -> Result<(), ParquetOutError> {
        debug_assert!(self.whole.is_empty(), "rows kept whole go as rows");
        for chunk in &self.chunks {
            for part in chunk.chunks(max.max(1)) {
                let batch =
                    columns::batch(kind, P::columns(part, &self.table)).map_err(|source| {
                        ParquetOutError::Arrow {
                            path: std::path::PathBuf::new(),
                            source,
                        }
                    })?;
                each(Piece::Columns(&batch))?;
            }
        }
        Ok(())
    }

    fn to_batch(&self, kind: StreamKind) -> Result<Option<RecordBatch>, ArrowError> {
        if !self.whole.is_empty() {
            return Ok(None);
        }
        let packed: Cow<'_, [P]> = match self.chunks.as_slice() {
            [one] => Cow::Borrowed(one),
            chunks => Cow::Owned(chunks.concat()),
        };
        columns::batch(kind, P::columns(&packed, &self.table)).map(Some)
    }

    fn into_rows(self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.len());
        let table = self.table;
        let packed = self
            .chunks
            .into_iter()
            .flatten()
            .map(|held| held.unpack(&table));
        rows.extend(MergeByKey::new(packed, self.whole.into_values(), Row::key));
        rows
    }

    fn heap_bytes(&self) -> usize {
        // A B-tree node holds up to 11 entries; count it as 1.5 entries'
        // worth of room per entry, which is what a map grown by inserts has.
        let whole_entry = size_of::<i64>() + size_of::<Row>();
        self.chunks.capacity() * size_of::<Vec<P>>()
            + self
                .chunks
                .iter()
                .map(|chunk| chunk.capacity() * size_of::<P>())
                .sum::<usize>()
            + self.whole.len() * whole_entry * 3 / 2
            + P::table_bytes(&self.table)
    }
}

/// Two iterators sorted by unique keys merged into one sorted sequence.
struct MergeByKey<A: Iterator, B: Iterator<Item = A::Item>, K> {
    left: Peekable<A>,
    right: Peekable<B>,
    key: K,
}

impl<A: Iterator, B: Iterator<Item = A::Item>, K: Fn(&A::Item) -> i64> MergeByKey<A, B, K> {
    fn new(left: A, right: B, key: K) -> Self {
        MergeByKey {
            left: left.peekable(),
            right: right.peekable(),
            key,
        }
    }
}

impl<A: Iterator, B: Iterator<Item = A::Item>, K: Fn(&A::Item) -> i64> Iterator
    for MergeByKey<A, B, K>
{
    type Item = A::Item;

    fn next(&mut self) -> Option<A::Item> {
        let take_left = match (self.left.peek(), self.right.peek()) {
            (Some(left), Some(right)) => (self.key)(left) < (self.key)(right),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_left {
            self.left.next()
        } else {
            self.right.next()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::packed::TradeTypes;
    use super::*;
    use crate::domain::{AggTradeRow, Decimal8, KlineInterval, KlineRow, TimeUs, TradeRow};
    use crate::seal::insert_row;
    use proptest::prelude::*;

    const HOUR_START: TimeUs = 1_723_161_600_000_000; // 2024-08-09T00:00Z

    /// A trade whose values are all derived from `id` and a `variant`
    /// (so two arrivals of one key can differ), spanning every optional.
    fn trade(id: i64, variant: u8, source: Source) -> Row {
        let big = variant % 5 == 4;
        Row::Trade(TradeRow {
            trade_id: id,
            price: Decimal8::from_scaled(if big {
                i128::from(i64::MAX) * 1_000 + i128::from(id)
            } else {
                6_168_599_000_000 + i128::from(id)
            }),
            quantity: Decimal8::from_scaled(i128::from(variant) * 1_000),
            trade_time: HOUR_START + id * 1_000,
            is_buyer_maker: variant.is_multiple_of(2),
            is_best_match: [None, Some(true), Some(false)][usize::from(variant % 3)],
            trade_type: [
                None,
                Some("MARKET".to_owned()),
                Some("LIQUIDATION".to_owned()),
            ][usize::from(variant / 3 % 3)]
            .clone(),
            event_time: (!variant.is_multiple_of(4)).then_some(HOUR_START + id * 1_000 + 5),
            recv_time: (variant % 4 != 1).then_some(HOUR_START + id * 1_000 + 9),
            source,
        })
    }

    fn agg_trade(id: i64, variant: u8, source: Source) -> Row {
        let first_trade_id = id * 10;
        let last_trade_id = match variant % 4 {
            0 => first_trade_id,
            1 => first_trade_id + 3,
            2 => first_trade_id + (1 << 28), // a step beyond 28 bits
            _ => first_trade_id + (1 << 28) - 1,
        };
        Row::AggTrade(AggTradeRow {
            agg_trade_id: id,
            price: Decimal8::from_scaled(if variant % 7 == 6 {
                -i128::from(i64::MAX) * 3
            } else {
                100_000_000 + i128::from(variant)
            }),
            quantity: Decimal8::from_scaled(i128::from(variant)),
            first_trade_id,
            last_trade_id,
            trade_time: HOUR_START + id * 1_000,
            is_buyer_maker: variant % 2 == 1,
            is_best_match: (!variant.is_multiple_of(3)).then_some(variant % 3 == 1),
            event_time: match variant % 5 {
                0 => None,
                1 => Some(HOUR_START + id * 1_000 - 7), // before the trade
                2 => Some(HOUR_START + id * 1_000 + i64::from(i32::MAX) + 1), // beyond i32
                _ => Some(HOUR_START + id * 1_000 + 1),
            },
            recv_time: Some(HOUR_START + id * 1_000 + 2),
            source,
        })
    }

    fn kline(minute: i64, variant: u8, source: Source) -> Row {
        let open_time = HOUR_START + minute * 60_000_000;
        Row::kline(KlineRow {
            open_time,
            close_time: open_time + 59_999_999,
            open: Decimal8::from_scaled(i128::from(variant)),
            high: Decimal8::from_scaled(i128::from(variant) + 1),
            low: Decimal8::ZERO,
            close: Decimal8::ZERO,
            volume: Decimal8::ZERO,
            quote_volume: Decimal8::ZERO,
            trade_count: i64::from(variant),
            taker_buy_base_volume: Decimal8::ZERO,
            taker_buy_quote_volume: Decimal8::ZERO,
            first_trade_id: None,
            last_trade_id: None,
            event_time: None,
            recv_time: None,
            source,
        })
    }

    fn source(rest: bool) -> Source {
        if rest {
            Source::Rest
        } else {
            Source::Ws
        }
    }

    /// Inserts every row into the store and into the model (the ordered
    /// map and `insert_row` the recorder held rows in before), and checks
    /// each answer and the rows that come out.
    fn check_against_model(kind: StreamKind, rows: Vec<Row>) {
        let mut held = HeldRows::new(kind);
        let mut model = BTreeMap::new();
        for row in rows {
            let expected = insert_row(&mut model, row.clone());
            assert_eq!(held.insert(row), expected);
            assert_eq!(held.len(), model.len());
        }
        let model_rows: Vec<Row> = model.into_values().collect();
        let model_id_ats: Vec<(i64, TimeUs)> = model_rows
            .iter()
            .map(|row| (row.key(), row.bucket_time()))
            .collect();
        let id_ats: Vec<(i64, TimeUs)> = held.id_ats().map(|at| (at.id, at.time)).collect();
        assert_eq!(id_ats, model_id_ats);
        let (spans, times) = held.spans_and_times();
        let model_spans = spans_of_sorted(model_id_ats.iter().map(|&(id, time)| IdAt { id, time }));
        assert_eq!(spans, model_spans);
        let model_times = model_id_ats.iter().map(|&(_, time)| time);
        assert_eq!(
            times,
            model_times.clone().min().zip(model_times.max()),
            "the earliest and latest time"
        );
        assert_eq!(held.last_key(), model_rows.last().map(Row::key));
        assert_eq!(
            held.first_id_at().map(|at| at.id),
            model_rows.first().map(Row::key)
        );
        // What the Parquet writer reads: slices in key order, and the footer facts.
        let mut sliced = Vec::new();
        held.for_each_slice(7, &mut |slice| {
            assert!(!slice.is_empty() && slice.len() <= 7);
            sliced.extend_from_slice(slice);
            Ok(())
        })
        .expect("no error");
        assert_eq!(sliced, model_rows);
        // And as pieces: columns made from the packed rows, or rows.
        let mut pieced = Vec::new();
        let has_whole = each_store!(&held.store, store => !store.whole.is_empty());
        held.for_each_piece(7, &mut |piece| {
            assert!(!piece.is_empty() && piece.len() <= 7);
            match piece {
                Piece::Rows(rows) => {
                    assert!(has_whole, "an hour of packed rows goes as columns");
                    pieced.extend_from_slice(rows)
                }
                Piece::Columns(batch) => {
                    assert_eq!(batch.schema(), crate::parquet_out::schema_for(kind));
                    pieced.extend(
                        crate::parquet_out::read::rows_from_batch(batch, kind)
                            .expect("columns of the kind's schema"),
                    )
                }
            }
            Ok(())
        })
        .expect("no error");
        assert_eq!(pieced, model_rows);
        assert_eq!(held.to_vec(), model_rows);
        let n_rest = model_rows
            .iter()
            .filter(|row| row.source() == Source::Rest)
            .count();
        assert_eq!(held.n_rest(), n_rest);
        assert_eq!(
            held.first_id_at().map(|at| at.id),
            model_rows.first().map(Row::key)
        );
        assert_eq!(
            held.last_id_at().map(|at| at.id),
            model_rows.last().map(Row::key)
        );
        // As a spilled run: packed when nothing is kept whole, read back
        // block by block to the same rows; otherwise nothing written.
        let mut run = Vec::new();
        let packed = held.write_packed_run(&mut run).expect("written to memory");
        assert_eq!(packed, !has_whole && !matches!(kind, StreamKind::Kline(_)));
        if packed {
            let mut bytes = std::io::Cursor::new(&run[PACKED_RUN_MAGIC.len()..]);
            assert_eq!(run[..PACKED_RUN_MAGIC.len()], PACKED_RUN_MAGIC);
            let mut reader = PackedRunReader::open(&mut bytes, kind).expect("its header");
            let mut read_back = Vec::new();
            while let Some(block) = reader.next_block().expect("every block") {
                assert!(!block.is_empty() && block.len() <= CHUNK_ROWS);
                let batch = block.to_batch().expect("columns").expect("all packed");
                assert_eq!(
                    crate::parquet_out::read::rows_from_batch(&batch, kind).expect("the kind's"),
                    block.to_vec()
                );
                read_back.extend(block.into_rows());
            }
            assert_eq!(read_back, model_rows);
        } else {
            assert!(run.is_empty());
        }
        assert_eq!(held.clone().into_rows(), model_rows);
        assert_eq!(held.into_rows(), model_rows);
    }

    fn arrivals() -> impl Strategy<Value = Vec<(i64, u8, bool)>> {
        // Keys from a narrow range, so duplicates and REST/stream pairs are
        // common; long enough to split chunks.
        prop::collection::vec((0i64..3_000, any::<u8>(), any::<bool>()), 0..4_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn trades_in_any_order_come_out_as_the_model_keeps_them(arrivals in arrivals()) {
            let rows = arrivals.into_iter().map(|(id, variant, rest)| trade(id, variant, source(rest))).collect();
            check_against_model(StreamKind::Trade, rows);
        }

        #[test]
        fn agg_trades_in_any_order_come_out_as_the_model_keeps_them(arrivals in arrivals()) {
            let rows = arrivals.into_iter().map(|(id, variant, rest)| agg_trade(id, variant, source(rest))).collect();
            check_against_model(StreamKind::AggTrade, rows);
        }

        #[test]
        fn packed_trades_and_agg_trades_come_out_as_columns_of_the_model(arrivals in arrivals()) {
            let trades = arrivals
                .iter()
                .map(|(id, variant, rest)| trade(*id, *variant, source(*rest)))
                .filter(|row| PackedTrade::pack(row, &mut TradeTypes::default()).is_some())
                .collect();
            check_against_model(StreamKind::Trade, trades);
            let agg_trades = arrivals
                .iter()
                .map(|(id, variant, rest)| agg_trade(*id, *variant, source(*rest)))
                .filter(|row| PackedAggTrade::pack(row, &mut ()).is_some())
                .collect();
            check_against_model(StreamKind::AggTrade, agg_trades);
        }

        #[test]
        fn klines_and_rows_of_another_kind_come_out_as_the_model_keeps_them(
            arrivals in prop::collection::vec((0i64..60, any::<u8>(), any::<bool>(), 0u8..3), 0..300)
        ) {
            let rows = arrivals.into_iter().map(|(n, variant, rest, kind)| match kind {
                0 => kline(n, variant, source(rest)),
                1 => trade(n, variant, source(rest)),
                _ => agg_trade(n, variant, source(rest)),
            }).collect::<Vec<_>>();
            check_against_model(StreamKind::Kline(KlineInterval::from_binance_name("1m").expect("valid")), rows.clone());
            check_against_model(StreamKind::Trade, rows.clone());
            check_against_model(StreamKind::AggTrade, rows);
        }
    }

    #[test]
    fn packed_rows_are_at_most_64_bytes() {
        assert_eq!(size_of::<PackedTrade>(), 56);
        assert_eq!(size_of::<PackedAggTrade>(), 56);
    }

    #[test]
    fn values_beyond_the_packed_form_are_kept_exactly() {
        // i128 decimals, a step beyond u32, an unknown 256th trade type.
        let mut held = HeldRows::new(StreamKind::Trade);
        for id in 0..300 {
            let mut row = trade(id, 0, Source::Ws);
            if let Row::Trade(trade) = &mut row {
                trade.trade_type = Some(format!("TYPE{id}"));
            }
            assert_eq!(held.insert(row), Inserted::New);
        }
        let big = trade(300, 4, Source::Ws);
        assert_eq!(held.insert(big.clone()), Inserted::New);
        let rows = held.into_rows();
        assert_eq!(rows.len(), 301);
        assert_eq!(rows[299].key(), 299);
        let Row::Trade(last_typed) = &rows[299] else {
            panic!("a trade");
        };
        assert_eq!(last_typed.trade_type.as_deref(), Some("TYPE299"));
        assert_eq!(rows[300], big);

        let mut held = HeldRows::new(StreamKind::AggTrade);
        let wide = agg_trade(1, 2, Source::Rest);
        let negative_big = agg_trade(2, 6, Source::Ws);
        held.insert(wide.clone());
        held.insert(negative_big.clone());
        // A stream row replaces the REST row kept whole, and packs.
        let stream = agg_trade(1, 1, Source::Ws);
        assert_eq!(held.insert(stream.clone()), Inserted::ReplacedRest);
        assert_eq!(held.into_rows(), vec![stream, negative_big]);
    }

    /// The target: at most 64 bytes of memory per held trade or
    /// aggTrade row in steady state (a busy hour arriving in key order,
    /// spare capacity counted).
    #[test]
    fn a_busy_hour_holds_at_most_64_bytes_a_row() {
        let n_rows: i64 = 360_000;
        for kind in [StreamKind::Trade, StreamKind::AggTrade] {
            let mut held = HeldRows::new(kind);
            for id in 0..n_rows {
                let row = match kind {
                    StreamKind::Trade => trade(id, 1, Source::Ws),
                    _ => agg_trade(id, 1, Source::Ws),
                };
                held.insert(row);
            }
            let per_row = held.heap_bytes() as f64 / n_rows as f64;
            println!("{kind:?}: {per_row:.1} bytes per held row");
            assert!(per_row <= 64.0, "{kind:?}: {per_row:.1} bytes per row");
        }
    }
}
