//! The recorder's vocabulary: markets, symbols, stream kinds, hour buckets and
//! the rows that end up in Parquet. Pure data and pure functions; no I/O.
//!
//! Times are epoch microseconds UTC everywhere (`TimeUs`). Prices, quantities
//! and volumes are [`Decimal8`]: an exact fixed-point value with 8 fractional
//! digits, the Parquet `decimal128(38, 8)` of the dataset contract.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

mod decimal;
pub(crate) use decimal::eight_digits;
pub use decimal::{Decimal8, DecimalError, DECIMAL_PRECISION, DECIMAL_SCALE};

/// Epoch microseconds, UTC.
pub type TimeUs = i64;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// The latest exchange time accepted from the network or the disk: the last
/// µs of year 9999, the last the `date=` partition can name. Together with
/// [`MIN_EXCHANGE_TIME_US`] it keeps every hour, kline grid and deadline
/// computed from an exchange time far from `i64` overflow, so a forged or
/// corrupt time is refused where it enters instead of panicking later.
pub const MAX_EXCHANGE_TIME_US: TimeUs = 253_402_300_799_999_999;
/// The earliest exchange time accepted: the epoch (Binance opened in 2017).
pub const MIN_EXCHANGE_TIME_US: TimeUs = 0;
/// The largest trade or aggregate-trade id accepted: 2^53, the largest
/// integer every JSON reader holds exactly, which Binance's ids (about 10^10
/// today) stay far below. Ids get `+ 1` and `- 1` in gap detection.
pub const MAX_EXCHANGE_ID: i64 = 1 << 53;
/// The smallest id accepted: -1 is what voided aggregate trades and klines
/// without trades carry as their trade ids.
pub const MIN_EXCHANGE_ID: i64 = -1;

/// A Binance market. The name is the `market=` partition of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Market {
    Spot,
    UsdM,
    CoinM,
    Us,
}

impl Market {
    pub const ALL: [Market; 4] = [Market::Spot, Market::UsdM, Market::CoinM, Market::Us];

    /// The name used in paths, config keys and file metadata.
    pub fn name(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::UsdM => "usdm",
            Market::CoinM => "coinm",
            Market::Us => "us",
        }
    }

    pub fn from_name(name: &str) -> Option<Market> {
        Market::ALL.into_iter().find(|market| market.name() == name)
    }

    /// A one-byte tag for the WAL, stable across releases.
    pub fn wal_tag(self) -> u8 {
        match self {
            Market::Spot => 1,
            Market::UsdM => 2,
            Market::CoinM => 3,
            Market::Us => 4,
        }
    }

    pub fn from_wal_tag(tag: u8) -> Option<Market> {
        Market::ALL
            .into_iter()
            .find(|market| market.wal_tag() == tag)
    }
}

impl fmt::Display for Market {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// An exchange symbol, validated against the dataset rule `[A-Z0-9_]{1,32}`
/// so that it is always safe to use in a path.
///
/// Held inline (no allocation): one is made for every row decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name, then zeros: every byte of a name is above zero, so these
    /// order as the names do.
    bytes: [u8; MAX_SYMBOL_LEN],
    len: u8,
}

/// The longest symbol the dataset rule allows.
const MAX_SYMBOL_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("symbol {0:?} is not upper-case [A-Z0-9_]{{1,32}}")]
pub struct InvalidSymbol(pub String);

/// The name's bytes only, not the zeros after it: every frame's row finds
/// its stream by a hash of its key, and a name is a word or two of the
/// hasher's, the 32 bytes held four.
impl std::hash::Hash for Symbol {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl Symbol {
    pub fn new(text: &str) -> Result<Symbol, InvalidSymbol> {
        let valid_length = (1..=MAX_SYMBOL_LEN).contains(&text.len());
        let valid_chars = text
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_');
        if !(valid_length && valid_chars) {
            return Err(InvalidSymbol(text.to_owned()));
        }
        let mut bytes = [0; MAX_SYMBOL_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Symbol {
            bytes,
            len: text.len() as u8,
        })
    }

    /// The symbol written at the start of `text` and closed by a quote,
    /// when it is valid and the one `name` (a stream name's symbol, in any
    /// case) spells; one pass over it, as this runs for every frame.
    #[inline]
    pub fn quoted_named(text: &[u8], name: &[u8]) -> Option<Symbol> {
        let len = name.len();
        if !(1..=MAX_SYMBOL_LEN).contains(&len) || text.get(len) != Some(&b'"') {
            return None;
        }
        let mut bytes = [0; MAX_SYMBOL_LEN];
        for ((byte, held), named) in text[..len].iter().zip(&mut bytes).zip(name) {
            let valid = byte.is_ascii_uppercase() || byte.is_ascii_digit() || *byte == b'_';
            if !(valid && byte.eq_ignore_ascii_case(named)) {
                return None;
            }
            *held = *byte;
        }
        Some(Symbol {
            bytes,
            len: len as u8,
        })
    }

    /// The symbol a stream name spells in lower case (`btcusdt`), made
    /// without an allocation (one is made for every frame decoded).
    pub fn from_lowercase(text: &str) -> Result<Symbol, InvalidSymbol> {
        let mut upper = [0; MAX_SYMBOL_LEN];
        let Some(bytes) = upper.get_mut(..text.len()) else {
            return Err(InvalidSymbol(text.to_ascii_uppercase()));
        };
        bytes.copy_from_slice(text.as_bytes());
        bytes.make_ascii_uppercase();
        let upper = std::str::from_utf8(bytes).map_err(|_| InvalidSymbol(text.to_owned()))?;
        Symbol::new(upper)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("a symbol is ASCII, checked when it was made")
    }

    /// The name's bytes (ASCII), without [`Symbol::as_str`]'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// As the names order. Compared as four big-endian words rather than by
/// `memcmp`: a symbol is compared in every lookup of a stream's state, a
/// few times a frame.
impl Ord for Symbol {
    fn cmp(&self, other: &Symbol) -> std::cmp::Ordering {
        let words = |symbol: &Symbol| -> [u64; MAX_SYMBOL_LEN / 8] {
            std::array::from_fn(|index| {
                let chunk = &symbol.bytes[index * 8..index * 8 + 8];
                u64::from_be_bytes(chunk.try_into().expect("8 bytes"))
            })
        };
        words(self).cmp(&words(other))
    }
}

impl PartialOrd for Symbol {
    fn partial_cmp(&self, other: &Symbol) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("Symbol")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A kline interval. Binance names are case-sensitive (`1m` is a minute, `1M`
/// a month); the month is written `1mo` in paths so the two never collide on
/// case-insensitive filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KlineInterval {
    Second1,
    Minute1,
    Minute3,
    Minute5,
    Minute15,
    Minute30,
    Hour1,
    Hour2,
    Hour4,
    Hour6,
    Hour8,
    Hour12,
    Day1,
    Day3,
    Week1,
    Month1,
}

impl KlineInterval {
    pub const ALL: [KlineInterval; 16] = [
        KlineInterval::Second1,
        KlineInterval::Minute1,
        KlineInterval::Minute3,
        KlineInterval::Minute5,
        KlineInterval::Minute15,
        KlineInterval::Minute30,
        KlineInterval::Hour1,
        KlineInterval::Hour2,
        KlineInterval::Hour4,
        KlineInterval::Hour6,
        KlineInterval::Hour8,
        KlineInterval::Hour12,
        KlineInterval::Day1,
        KlineInterval::Day3,
        KlineInterval::Week1,
        KlineInterval::Month1,
    ];

    /// The name Binance uses in stream names and REST parameters.
    pub fn binance_name(self) -> &'static str {
        match self {
            KlineInterval::Second1 => "1s",
            KlineInterval::Minute1 => "1m",
            KlineInterval::Minute3 => "3m",
            KlineInterval::Minute5 => "5m",
            KlineInterval::Minute15 => "15m",
            KlineInterval::Minute30 => "30m",
            KlineInterval::Hour1 => "1h",
            KlineInterval::Hour2 => "2h",
            KlineInterval::Hour4 => "4h",
            KlineInterval::Hour6 => "6h",
            KlineInterval::Hour8 => "8h",
            KlineInterval::Hour12 => "12h",
            KlineInterval::Day1 => "1d",
            KlineInterval::Day3 => "3d",
            KlineInterval::Week1 => "1w",
            KlineInterval::Month1 => "1M",
        }
    }

    /// The name used in the dataset's paths (`1mo` for the month).
    pub fn path_name(self) -> &'static str {
        match self {
            KlineInterval::Month1 => "1mo",
            other => other.binance_name(),
        }
    }

    pub fn from_binance_name(name: &str) -> Option<KlineInterval> {
        KlineInterval::ALL
            .into_iter()
            .find(|interval| interval.binance_name() == name)
    }

    pub fn from_path_name(name: &str) -> Option<KlineInterval> {
        KlineInterval::ALL
            .into_iter()
            .find(|interval| interval.path_name() == name)
    }

    /// Fixed length in µs, or `None` for the calendar month.
    fn fixed_length_us(self) -> Option<i64> {
        let length = match self {
            KlineInterval::Second1 => MICROS_PER_SECOND,
            KlineInterval::Minute1 => MICROS_PER_MINUTE,
            KlineInterval::Minute3 => 3 * MICROS_PER_MINUTE,
            KlineInterval::Minute5 => 5 * MICROS_PER_MINUTE,
            KlineInterval::Minute15 => 15 * MICROS_PER_MINUTE,
            KlineInterval::Minute30 => 30 * MICROS_PER_MINUTE,
            KlineInterval::Hour1 => MICROS_PER_HOUR,
            KlineInterval::Hour2 => 2 * MICROS_PER_HOUR,
            KlineInterval::Hour4 => 4 * MICROS_PER_HOUR,
            KlineInterval::Hour6 => 6 * MICROS_PER_HOUR,
            KlineInterval::Hour8 => 8 * MICROS_PER_HOUR,
            KlineInterval::Hour12 => 12 * MICROS_PER_HOUR,
            KlineInterval::Day1 => MICROS_PER_DAY,
            KlineInterval::Day3 => 3 * MICROS_PER_DAY,
            KlineInterval::Week1 => 7 * MICROS_PER_DAY,
            KlineInterval::Month1 => return None,
        };
        Some(length)
    }

    /// The longest a kline of this interval lasts, in µs: its length, or
    /// 31 days for the calendar month.
    pub fn max_length_us(self) -> i64 {
        self.fixed_length_us().unwrap_or(31 * MICROS_PER_DAY)
    }

    /// The open time of the kline that contains `time`.
    ///
    /// Fixed intervals are aligned to the epoch, except weeks, which open on
    /// Monday 00:00 UTC (the epoch was a Thursday, so the grid is shifted by
    /// four days). Months open on the first of the calendar month.
    pub fn open_time_containing(self, time: TimeUs) -> TimeUs {
        match self.fixed_length_us() {
            Some(length) => {
                let offset = if self == KlineInterval::Week1 {
                    4 * MICROS_PER_DAY
                } else {
                    0
                };
                (time - offset).div_euclid(length) * length + offset
            }
            None => {
                let date = utc_datetime(time).date_naive();
                month_start_us(date.year(), date.month())
            }
        }
    }

    /// The open time of the kline after the one opening at `open_time`.
    pub fn next_open_time(self, open_time: TimeUs) -> TimeUs {
        match self.fixed_length_us() {
            Some(length) => open_time + length,
            None => {
                let date = utc_datetime(open_time).date_naive();
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                month_start_us(year, month)
            }
        }
    }
}

fn month_start_us(year: i32, month: u32) -> TimeUs {
    let date = NaiveDate::from_ymd_opt(year, month, 1).expect("the first of a month always exists");
    date.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_micros()
}

/// The UTC date-time of an epoch-µs value (clamped to chrono's range, which
/// is far wider than any exchange time).
pub fn utc_datetime(time: TimeUs) -> DateTime<Utc> {
    Utc.timestamp_micros(time)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl fmt::Display for KlineInterval {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.binance_name())
    }
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    Trade,
    AggTrade,
    Kline(KlineInterval),
}

impl StreamKind {
    /// The `stream=` partition name: `trade`, `aggTrade`, `kline_1m`, `kline_1mo`.
    pub fn path_name(self) -> String {
        match self {
            StreamKind::Trade => "trade".to_owned(),
            StreamKind::AggTrade => "aggTrade".to_owned(),
            StreamKind::Kline(interval) => format!("kline_{}", interval.path_name()),
        }
    }

    /// Parses a config or path name (`kline_1M` and `kline_1mo` both mean the month).
    pub fn from_name(name: &str) -> Option<StreamKind> {
        match name {
            "trade" => Some(StreamKind::Trade),
            "aggTrade" => Some(StreamKind::AggTrade),
            _ => {
                let interval_name = name.strip_prefix("kline_")?;
                KlineInterval::from_binance_name(interval_name)
                    .or_else(|| KlineInterval::from_path_name(interval_name))
                    .map(StreamKind::Kline)
            }
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.path_name())
    }
}

/// One recorded stream: the unit that gets one Parquet file per hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub market: Market,
    pub symbol: Symbol,
    pub kind: StreamKind,
}

impl fmt::Display for StreamKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}/{}", self.market, self.kind, self.symbol)
    }
}

/// A UTC hour, identified by its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hour {
    start: TimeUs,
}

impl Hour {
    pub fn containing(time: TimeUs) -> Hour {
        Hour {
            start: time.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR,
        }
    }

    pub fn start(self) -> TimeUs {
        self.start
    }

    /// The first µs after the hour.
    pub fn end(self) -> TimeUs {
        self.start + MICROS_PER_HOUR
    }

    pub fn next(self) -> Hour {
        Hour { start: self.end() }
    }

    /// `YYYY-MM-DD`, the `date=` partition.
    pub fn date_text(self) -> String {
        utc_datetime(self.start).format("%Y-%m-%d").to_string()
    }

    /// `YYYY-MM-DDTHH`, the `hour` metadata value.
    pub fn hour_text(self) -> String {
        utc_datetime(self.start).format("%Y-%m-%dT%H").to_string()
    }

    /// `HH`, used in file names.
    pub fn hour_of_day_text(self) -> String {
        utc_datetime(self.start).format("%H").to_string()
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.hour_text())
    }
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Received on the WebSocket stream.
    Ws,
    /// Fetched from REST to fill a gap.
    Rest,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Ws => "ws",
            Source::Rest => "rest",
        }
    }
}

/// A trade, as written to the `trade` stream's files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TradeRow {
    pub trade_id: i64,
    pub price: Decimal8,
    pub quantity: Decimal8,
    pub trade_time: TimeUs,
    pub is_buyer_maker: bool,
    pub is_best_match: Option<bool>,
    pub trade_type: Option<String>,
    pub event_time: Option<TimeUs>,
    pub recv_time: Option<TimeUs>,
    pub source: Source,
}

/// An aggregate trade, as written to the `aggTrade` stream's files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AggTradeRow {
    pub agg_trade_id: i64,
    pub price: Decimal8,
    pub quantity: Decimal8,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub trade_time: TimeUs,
    pub is_buyer_maker: bool,
    pub is_best_match: Option<bool>,
    pub event_time: Option<TimeUs>,
    pub recv_time: Option<TimeUs>,
    pub source: Source,
}

/// A closed kline, as written to the `kline_<interval>` stream's files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KlineRow {
    pub open_time: TimeUs,
    pub close_time: TimeUs,
    pub open: Decimal8,
    pub high: Decimal8,
    pub low: Decimal8,
    pub close: Decimal8,
    pub volume: Decimal8,
    pub quote_volume: Decimal8,
    pub trade_count: i64,
    pub taker_buy_base_volume: Decimal8,
    pub taker_buy_quote_volume: Decimal8,
    pub first_trade_id: Option<i64>,
    pub last_trade_id: Option<i64>,
    pub event_time: Option<TimeUs>,
    pub recv_time: Option<TimeUs>,
    pub source: Source,
}

/// A row of any stream kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Row {
    Trade(TradeRow),
    AggTrade(AggTradeRow),
    /// Boxed: a kline (eight decimals) is three times a trade's size and
    /// comes once a minute, and every row is moved a few times on its way
    /// from the socket to the state.
    Kline(Box<KlineRow>),
}

// A row is moved several times between the socket and the state, and
// held in `Vec<Row>` where an hour is read back: keep it a trade's size.
const _: () = assert!(std::mem::size_of::<Row>() <= 128);

impl Row {
    pub fn kline(row: KlineRow) -> Row {
        Row::Kline(Box::new(row))
    }

    /// The key a file is sorted and deduplicated by.
    pub fn key(&self) -> i64 {
        match self {
            Row::Trade(trade) => trade.trade_id,
            Row::AggTrade(agg_trade) => agg_trade.agg_trade_id,
            Row::Kline(kline) => kline.open_time,
        }
    }

    /// The time that decides the row's hour: trade time, or kline open time.
    pub fn bucket_time(&self) -> TimeUs {
        match self {
            Row::Trade(trade) => trade.trade_time,
            Row::AggTrade(agg_trade) => agg_trade.trade_time,
            Row::Kline(kline) => kline.open_time,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            Row::Trade(trade) => trade.source,
            Row::AggTrade(agg_trade) => agg_trade.source,
            Row::Kline(kline) => kline.source,
        }
    }

    /// For tests: a stream trade of id `id` traded (and received) at
    /// `time`, its price `100 + id` units of 10^-8.
    #[cfg(test)]
    pub(crate) fn test_trade(id: i64, time: TimeUs) -> Row {
        Row::Trade(TradeRow {
            trade_id: id,
            price: Decimal8::from_scaled(100 + i128::from(id)),
            quantity: Decimal8::from_scaled(1),
            trade_time: time,
            is_buyer_maker: false,
            is_best_match: Some(true),
            trade_type: None,
            event_time: Some(time),
            recv_time: Some(time),
            source: Source::Ws,
        })
    }
}

/// A hole known and not filled, as listed in a file's `unfilled` metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnfilledRange {
    /// First missing id (klines: open time in µs), inclusive; `None` when
    /// the exchange never told us.
    pub from: Option<i64>,
    /// Last missing id (klines: open time in µs), inclusive.
    pub to: Option<i64>,
    /// Bounds of the hole within the file's hour, epoch µs.
    pub from_time: TimeUs,
    pub to_time: TimeUs,
    pub reason: String,
}

/// `unfilled` reason: REST answered for the range and has no such rows
/// (klines during a halt, futures ids REST does not serve). Not retried.
pub const REASON_NOT_SERVED: &str = "exchange has no data";

impl UnfilledRange {
    /// Whether REST may still fill the range: all but what the exchange
    /// said it does not have ([`REASON_NOT_SERVED`]).
    pub fn is_retryable(&self) -> bool {
        self.reason != REASON_NOT_SERVED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> TimeUs {
        DateTime::parse_from_rfc3339(text)
            .expect("valid test time")
            .timestamp_micros()
    }

    /// A symbol hashes its name's bytes, not the zeros held after it;
    /// equal symbols hash equal.
    #[test]
    fn a_symbol_hashes_its_name_only() {
        #[derive(Default)]
        struct Written(Vec<u8>);
        impl std::hash::Hasher for Written {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.extend_from_slice(bytes);
            }
        }
        let mut written = Written::default();
        std::hash::Hash::hash(&Symbol::new("BTCUSDT").expect("valid"), &mut written);
        assert_eq!(written.0, b"BTCUSDT");
        let hash =
            |symbol: &Symbol| std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, symbol);
        assert_eq!(
            hash(&Symbol::new("ETHBTC").expect("valid")),
            hash(&Symbol::quoted_named(b"ETHBTC\"", b"ethbtc").expect("named"))
        );
    }

    #[test]
    fn symbols_follow_the_dataset_rule() {
        assert!(Symbol::new("BTCUSDT").is_ok());
        assert!(Symbol::new("BTCUSD_PERP").is_ok());
        assert!(Symbol::new("BTCUSD_250627").is_ok());
        assert!(Symbol::new("btcusdt").is_err());
        assert!(Symbol::new("").is_err());
        assert!(Symbol::new("../etc").is_err());
        assert!(Symbol::new(&"A".repeat(33)).is_err());
        assert_eq!(
            Symbol::from_lowercase("btcusd_perp"),
            Symbol::new("BTCUSD_PERP")
        );
        assert!(Symbol::from_lowercase(&"a".repeat(33)).is_err());
        assert!(Symbol::from_lowercase("../etc").is_err());
        assert_eq!(
            Symbol::new(&"A".repeat(32)).map(|s| s.to_string()),
            Ok("A".repeat(32))
        );
        // Ordered as the names are, shorter first where one begins the other.
        let names = [
            "BTCUSDT",
            "BTCUSD",
            "BTCUSD_PERP",
            "1000SHIBUSDT",
            "A",
            "B_1",
        ];
        let mut symbols: Vec<Symbol> = names
            .iter()
            .map(|name| Symbol::new(name).expect("valid"))
            .collect();
        symbols.sort();
        let mut sorted_names = names.to_vec();
        sorted_names.sort();
        assert_eq!(
            symbols.iter().map(Symbol::as_str).collect::<Vec<_>>(),
            sorted_names
        );
        assert_eq!(format!("{:?}", symbols[0]), "Symbol(\"1000SHIBUSDT\")");
    }

    #[test]
    fn stream_kind_names_round_trip_and_month_is_1mo() {
        for interval in KlineInterval::ALL {
            let kind = StreamKind::Kline(interval);
            assert_eq!(StreamKind::from_name(&kind.path_name()), Some(kind));
        }
        assert_eq!(
            StreamKind::Kline(KlineInterval::Month1).path_name(),
            "kline_1mo"
        );
        assert_eq!(
            StreamKind::from_name("kline_1M"),
            Some(StreamKind::Kline(KlineInterval::Month1))
        );
        assert_eq!(
            StreamKind::from_name("kline_1m"),
            Some(StreamKind::Kline(KlineInterval::Minute1))
        );
        assert_eq!(StreamKind::from_name("kline_2m"), None);
        assert_eq!(StreamKind::from_name("depth"), None);
    }

    #[test]
    fn kline_grid_follows_binance() {
        let minute = KlineInterval::Minute1;
        assert_eq!(
            minute.open_time_containing(time("2024-08-09T00:00:59.999999Z")),
            time("2024-08-09T00:00:00Z")
        );
        // 2024-08-08 was a Thursday; the week opened on Monday 2024-08-05.
        let week = KlineInterval::Week1;
        assert_eq!(
            week.open_time_containing(time("2024-08-08T12:00:00Z")),
            time("2024-08-05T00:00:00Z")
        );
        assert_eq!(
            week.next_open_time(time("2024-08-05T00:00:00Z")),
            time("2024-08-12T00:00:00Z")
        );
        let month = KlineInterval::Month1;
        assert_eq!(
            month.open_time_containing(time("2024-02-29T23:00:00Z")),
            time("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            month.next_open_time(time("2024-12-01T00:00:00Z")),
            time("2025-01-01T00:00:00Z")
        );
        let three_days = KlineInterval::Day3;
        let open = three_days.open_time_containing(time("2024-08-08T12:00:00Z"));
        assert_eq!(open % (3 * MICROS_PER_DAY), 0);
    }

    #[test]
    fn hours_name_themselves() {
        let hour = Hour::containing(time("2024-08-09T00:00:01.437Z"));
        assert_eq!(hour.start(), time("2024-08-09T00:00:00Z"));
        assert_eq!(hour.hour_text(), "2024-08-09T00");
        assert_eq!(hour.date_text(), "2024-08-09");
        assert_eq!(hour.hour_of_day_text(), "00");
        assert_eq!(Hour::containing(hour.end() - 1), hour);
        assert_eq!(hour.next().start(), hour.end());
    }
}

/// Property tests of [`Symbol`]: its quoted read and its order.
#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn a_quoted_symbol_is_read_when_valid_and_named(
            text in "[A-Za-z0-9_.@é]{0,34}",
            other in "[a-z0-9_]{1,8}",
            tail in prop_oneof![Just(""), Just("\""), Just("\",\"a\":1")],
            own in any::<bool>(),
        ) {
            let name = if own { text.to_ascii_lowercase() } else { other };
            let quoted = format!("{text}\"{tail}");
            let expected = Symbol::new(&text)
                .ok()
                .filter(|symbol| symbol.as_bytes().eq_ignore_ascii_case(name.as_bytes()));
            prop_assert_eq!(Symbol::quoted_named(quoted.as_bytes(), name.as_bytes()), expected, "{} {}", quoted, name);
            // Without its closing quote it is not read.
            prop_assert_eq!(Symbol::quoted_named(text.as_bytes(), name.as_bytes()), None);
        }

        #[test]
        fn symbols_order_as_their_names(
            prefix in "[A-Z0-9_]{0,20}", a in "[A-Z0-9_]{1,12}", b in "[A-Z0-9_]{0,12}",
        ) {
            // Names sharing a prefix, and one the prefix of the other.
            let (a, b) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
            prop_assume!(!b.is_empty());
            let (symbol_a, symbol_b) = (Symbol::new(&a).expect("valid"), Symbol::new(&b).expect("valid"));
            prop_assert_eq!(symbol_a.cmp(&symbol_b), a.cmp(&b));
            prop_assert_eq!(symbol_a.cmp(&symbol_a.clone()), std::cmp::Ordering::Equal);
        }
    }
}
