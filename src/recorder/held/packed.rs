//! The packed forms of held rows (see `recorder/held.rs`): a trade and an
//! aggTrade in 56 bytes each, klines never packed, and how each packed
//! kind becomes a file's columns without being unpacked.

use arrow_array::ArrayRef;

use crate::domain::{AggTradeRow, Decimal8, Row, Source, TimeUs, TradeRow};
use crate::parquet_out::columns::{
    decimals, flags, ids, optional_flags, optional_texts, optional_times, sources, times,
};

/// Stands for an absent optional time in a packed row. No real exchange
/// time is this far before 1970.
const ABSENT_TIME: TimeUs = TimeUs::MIN;

const FLAG_BUYER_MAKER: u8 = 1;
const FLAG_BEST_MATCH_KNOWN: u8 = 1 << 1;
const FLAG_BEST_MATCH: u8 = 1 << 2;
const FLAG_REST: u8 = 1 << 3;

/// Most distinct `trade_type` names one hour's table holds before further
/// names make their rows whole (0 stands for "absent").
const MAX_TRADE_TYPES: usize = u8::MAX as usize;

/// A packed form of one kind of row.
pub(super) trait Pack: Sized + Clone + std::fmt::Debug {
    /// What the packed rows of one hour share (the trade type names).
    type Table: Default + Clone + std::fmt::Debug;
    /// `None` when the row is of another kind or a value does not fit.
    fn pack(row: &Row, table: &mut Self::Table) -> Option<Self>;
    fn unpack(&self, table: &Self::Table) -> Row;
    fn key(&self) -> i64;
    fn time(&self) -> TimeUs;
    fn source(&self) -> Source;
    /// The columns of `packed` in the file schema's order
    /// ([`crate::parquet_out::schema_for`] the kind).
    fn columns(packed: &[Self], table: &Self::Table) -> Vec<ArrayRef>;
    fn table_bytes(_table: &Self::Table) -> usize {
        0
    }
    /// Bytes of one packed row in a spilled run (`held/run.rs`).
    const WIRE_BYTES: usize;
    /// Appends the row's [`Pack::WIRE_BYTES`] bytes, little-endian.
    fn to_wire(&self, out: &mut Vec<u8>);
    /// A row from [`Pack::WIRE_BYTES`] bytes; `None` for a kind never
    /// packed.
    fn from_wire(bytes: &mut Wire<'_>) -> Option<Self>;
    /// Appends the table; `None` when it cannot be written (the run is then
    /// written as columns).
    fn table_to_wire(_table: &Self::Table, _out: &mut Vec<u8>) -> Option<()> {
        Some(())
    }
    /// The table [`Pack::table_to_wire`] wrote; `None` when it is damaged.
    fn table_from_wire(bytes: &mut Wire<'_>) -> Option<Self::Table> {
        bytes.is_empty().then(Self::Table::default)
    }
}

/// Bytes being read back, the front taken a value at a time.
pub(super) struct Wire<'a>(pub(super) &'a [u8]);

impl Wire<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(super) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }

    pub(super) fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_le_bytes)
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn pack_decimal(value: Decimal8) -> Option<i64> {
    i64::try_from(value.scaled()).ok()
}

fn unpack_decimal(units: i64) -> Decimal8 {
    Decimal8::from_scaled(i128::from(units))
}

fn pack_time(time: Option<TimeUs>) -> Option<TimeUs> {
    match time {
        Some(ABSENT_TIME) => None,
        Some(time) => Some(time),
        None => Some(ABSENT_TIME),
    }
}

fn unpack_time(time: TimeUs) -> Option<TimeUs> {
    (time != ABSENT_TIME).then_some(time)
}

fn pack_flags(is_buyer_maker: bool, is_best_match: Option<bool>, source: Source) -> u8 {
    let mut flags = 0;
    if is_buyer_maker {
        flags |= FLAG_BUYER_MAKER;
    }
    if let Some(best) = is_best_match {
        flags |= FLAG_BEST_MATCH_KNOWN;
        if best {
            flags |= FLAG_BEST_MATCH;
        }
    }
    if source == Source::Rest {
        flags |= FLAG_REST;
    }
    flags
}

fn flag_buyer_maker(flags: u8) -> bool {
    flags & FLAG_BUYER_MAKER != 0
}

fn flag_best_match(flags: u8) -> Option<bool> {
    (flags & FLAG_BEST_MATCH_KNOWN != 0).then_some(flags & FLAG_BEST_MATCH != 0)
}

fn flag_source(flags: u8) -> Source {
    if flags & FLAG_REST != 0 {
        Source::Rest
    } else {
        Source::Ws
    }
}

/// A trade in 56 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct PackedTrade {
    trade_id: i64,
    price: i64,
    quantity: i64,
    trade_time: TimeUs,
    event_time: TimeUs,
    recv_time: TimeUs,
    /// 0: absent; n: the hour's table entry n - 1.
    trade_type: u8,
    flags: u8,
}

/// The `trade_type` names an hour's trades use (futures send `MARKET`).
#[derive(Debug, Default, Clone)]
pub(super) struct TradeTypes(Vec<Box<str>>);

impl TradeTypes {
    fn index_of(&mut self, name: Option<&str>) -> Option<u8> {
        let Some(name) = name else {
            return Some(0);
        };
        let position = match self.0.iter().position(|known| &**known == name) {
            Some(position) => position,
            None if self.0.len() < MAX_TRADE_TYPES => {
                self.0.push(name.into());
                self.0.len() - 1
            }
            None => return None,
        };
        u8::try_from(position + 1).ok()
    }

    fn name(&self, index: u8) -> Option<&str> {
        let position = usize::from(index).checked_sub(1)?;
        self.0.get(position).map(|name| &**name)
    }
}

impl Pack for PackedTrade {
    type Table = TradeTypes;

    fn pack(row: &Row, table: &mut TradeTypes) -> Option<PackedTrade> {
        let Row::Trade(trade) = row else {
            return None;
        };
        Some(PackedTrade {
            trade_id: trade.trade_id,
            price: pack_decimal(trade.price)?,
            quantity: pack_decimal(trade.quantity)?,
            trade_time: trade.trade_time,
            event_time: pack_time(trade.event_time)?,
            recv_time: pack_time(trade.recv_time)?,
            trade_type: table.index_of(trade.trade_type.as_deref())?,
            flags: pack_flags(trade.is_buyer_maker, trade.is_best_match, trade.source),
        })
    }

    fn unpack(&self, table: &TradeTypes) -> Row {
        Row::Trade(TradeRow {
            trade_id: self.trade_id,
            price: unpack_decimal(self.price),
            quantity: unpack_decimal(self.quantity),
            trade_time: self.trade_time,
            is_buyer_maker: flag_buyer_maker(self.flags),
            is_best_match: flag_best_match(self.flags),
            trade_type: table.name(self.trade_type).map(str::to_owned),
            event_time: unpack_time(self.event_time),
            recv_time: unpack_time(self.recv_time),
            source: flag_source(self.flags),
        })
    }

    fn key(&self) -> i64 {
        self.trade_id
    }

    fn time(&self) -> TimeUs {
        self.trade_time
    }

    fn source(&self) -> Source {
        flag_source(self.flags)
    }

    fn columns(packed: &[PackedTrade], table: &TradeTypes) -> Vec<ArrayRef> {
        vec![
            ids(packed, |trade| trade.trade_id),
            decimals(packed, |trade| i128::from(trade.price)),
            decimals(packed, |trade| i128::from(trade.quantity)),
            times(packed, |trade| trade.trade_time),
            flags(packed, |trade| flag_buyer_maker(trade.flags)),
            optional_flags(packed, |trade| flag_best_match(trade.flags)),
            optional_texts(packed, |trade| table.name(trade.trade_type)),
            optional_times(packed, |trade| unpack_time(trade.event_time)),
            optional_times(packed, |trade| unpack_time(trade.recv_time)),
            sources(packed, |trade| flag_source(trade.flags)),
        ]
    }

    fn table_bytes(table: &TradeTypes) -> usize {
        table.0.capacity() * size_of::<Box<str>>()
            + table.0.iter().map(|name| name.len()).sum::<usize>()
    }

    const WIRE_BYTES: usize = 6 * 8 + 2;

    fn to_wire(&self, out: &mut Vec<u8>) {
        for value in [
            self.trade_id,
            self.price,
            self.quantity,
            self.trade_time,
            self.event_time,
            self.recv_time,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&[self.trade_type, self.flags]);
    }

    fn from_wire(bytes: &mut Wire<'_>) -> Option<PackedTrade> {
        Some(PackedTrade {
            trade_id: bytes.i64()?,
            price: bytes.i64()?,
            quantity: bytes.i64()?,
            trade_time: bytes.i64()?,
            event_time: bytes.i64()?,
            recv_time: bytes.i64()?,
            trade_type: bytes.u8()?,
            flags: bytes.u8()?,
        })
    }

    /// The count of names, then each name's length (u32) and bytes.
    fn table_to_wire(table: &TradeTypes, out: &mut Vec<u8>) -> Option<()> {
        out.push(u8::try_from(table.0.len()).ok()?);
        for name in &table.0 {
            out.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        Some(())
    }

    fn table_from_wire(bytes: &mut Wire<'_>) -> Option<TradeTypes> {
        let n_names = bytes.u8()?;
        let mut names = Vec::with_capacity(usize::from(n_names));
        for _ in 0..n_names {
            let len = usize::try_from(bytes.u32()?).ok()?;
            let name = std::str::from_utf8(bytes.bytes(len)?).ok()?;
            names.push(name.into());
        }
        bytes.is_empty().then_some(TradeTypes(names))
    }
}

/// An aggregate trade in 56 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct PackedAggTrade {
    agg_trade_id: i64,
    price: i64,
    quantity: i64,
    first_trade_id: i64,
    trade_time: TimeUs,
    recv_time: TimeUs,
    /// `event_time - trade_time` (the stream stamps its event a few ms
    /// after the trade), or [`ABSENT_STEP`].
    event_step: i32,
    /// `last_trade_id - first_trade_id` in the low 28 bits, the flags in
    /// the top 4.
    n_more_trades_and_flags: u32,
}

/// Stands for an absent event time in [`PackedAggTrade::event_step`].
const ABSENT_STEP: i32 = i32::MIN;
const TRADE_STEP_BITS: u32 = 28;
const TRADE_STEP_MASK: u32 = (1 << TRADE_STEP_BITS) - 1;

impl PackedAggTrade {
    fn flags(&self) -> u8 {
        u8::try_from(self.n_more_trades_and_flags >> TRADE_STEP_BITS)
            .expect("the top 4 bits of a u32 fit a u8")
    }

    fn last_trade_id(&self) -> i64 {
        self.first_trade_id + i64::from(self.n_more_trades_and_flags & TRADE_STEP_MASK)
    }

    fn event_time(&self) -> Option<TimeUs> {
        (self.event_step != ABSENT_STEP).then(|| self.trade_time + i64::from(self.event_step))
    }
}

impl Pack for PackedAggTrade {
    type Table = ();

    fn pack(row: &Row, _table: &mut ()) -> Option<PackedAggTrade> {
        let Row::AggTrade(agg_trade) = row else {
            return None;
        };
        let n_more_trades = agg_trade
            .last_trade_id
            .checked_sub(agg_trade.first_trade_id)
            .and_then(|step| u32::try_from(step).ok())
            .filter(|step| *step <= TRADE_STEP_MASK)?;
        let event_step = match agg_trade.event_time {
            None => ABSENT_STEP,
            Some(event_time) => event_time
                .checked_sub(agg_trade.trade_time)
                .and_then(|step| i32::try_from(step).ok())
                .filter(|step| *step != ABSENT_STEP)?,
        };
        let flags = pack_flags(
            agg_trade.is_buyer_maker,
            agg_trade.is_best_match,
            agg_trade.source,
        );
        Some(PackedAggTrade {
            agg_trade_id: agg_trade.agg_trade_id,
            price: pack_decimal(agg_trade.price)?,
            quantity: pack_decimal(agg_trade.quantity)?,
            first_trade_id: agg_trade.first_trade_id,
            trade_time: agg_trade.trade_time,
            recv_time: pack_time(agg_trade.recv_time)?,
            event_step,
            n_more_trades_and_flags: n_more_trades | (u32::from(flags) << TRADE_STEP_BITS),
        })
    }

    fn unpack(&self, _table: &()) -> Row {
        let flags = self.flags();
        Row::AggTrade(AggTradeRow {
            agg_trade_id: self.agg_trade_id,
            price: unpack_decimal(self.price),
            quantity: unpack_decimal(self.quantity),
            first_trade_id: self.first_trade_id,
            last_trade_id: self.last_trade_id(),
            trade_time: self.trade_time,
            is_buyer_maker: flag_buyer_maker(flags),
            is_best_match: flag_best_match(flags),
            event_time: self.event_time(),
            recv_time: unpack_time(self.recv_time),
            source: flag_source(flags),
        })
    }

    fn columns(packed: &[PackedAggTrade], _table: &()) -> Vec<ArrayRef> {
        vec![
            ids(packed, |agg| agg.agg_trade_id),
            decimals(packed, |agg| i128::from(agg.price)),
            decimals(packed, |agg| i128::from(agg.quantity)),
            ids(packed, |agg| agg.first_trade_id),
            ids(packed, PackedAggTrade::last_trade_id),
            times(packed, |agg| agg.trade_time),
            flags(packed, |agg| flag_buyer_maker(agg.flags())),
            optional_flags(packed, |agg| flag_best_match(agg.flags())),
            optional_times(packed, PackedAggTrade::event_time),
            optional_times(packed, |agg| unpack_time(agg.recv_time)),
            sources(packed, |agg| flag_source(agg.flags())),
        ]
    }

    fn key(&self) -> i64 {
        self.agg_trade_id
    }

    fn time(&self) -> TimeUs {
        self.trade_time
    }

    fn source(&self) -> Source {
        flag_source(self.flags())
    }

    const WIRE_BYTES: usize = 6 * 8 + 4 + 4;

    fn to_wire(&self, out: &mut Vec<u8>) {
        for value in [
            self.agg_trade_id,
            self.price,
            self.quantity,
            self.first_trade_id,
            self.trade_time,
            self.recv_time,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.event_step.to_le_bytes());
        out.extend_from_slice(&self.n_more_trades_and_flags.to_le_bytes());
    }

    fn from_wire(bytes: &mut Wire<'_>) -> Option<PackedAggTrade> {
        Some(PackedAggTrade {
            agg_trade_id: bytes.i64()?,
            price: bytes.i64()?,
            quantity: bytes.i64()?,
            first_trade_id: bytes.i64()?,
            trade_time: bytes.i64()?,
            recv_time: bytes.i64()?,
            event_step: bytes.i32()?,
            n_more_trades_and_flags: bytes.u32()?,
        })
    }
}

/// Klines are not packed: an hour has few, and they are kept whole.
#[derive(Debug, Clone)]
pub(super) enum Whole {}

impl Pack for Whole {
    type Table = ();

    fn pack(_row: &Row, _table: &mut ()) -> Option<Whole> {
        None
    }

    fn unpack(&self, _table: &()) -> Row {
        match *self {}
    }

    fn columns(_packed: &[Whole], _table: &()) -> Vec<ArrayRef> {
        unreachable!("no kline is packed: a kline hour goes to the writer as rows")
    }

    fn key(&self) -> i64 {
        match *self {}
    }

    fn time(&self) -> TimeUs {
        match *self {}
    }

    fn source(&self) -> Source {
        match *self {}
    }

    const WIRE_BYTES: usize = 0;

    fn to_wire(&self, _out: &mut Vec<u8>) {
        match *self {}
    }

    fn from_wire(_bytes: &mut Wire<'_>) -> Option<Whole> {
        None
    }
}
