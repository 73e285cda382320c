//! data.binance.vision archive files: their names, their CSV lines, and
//! reading them (zip or plain CSV) one line at a time.
//!
//! The official layouts (`binance-protocol.md` §9), each with or without a
//! header row (a header is a first line whose first field is not an
//! integer):
//!
//! | stream | columns | spot | futures |
//! |---|---|---|---|
//! | trades | id, price, qty, quote_qty, time, is_buyer_maker[, is_best_match] | 7 | 6 |
//! | aggTrades | agg id, price, qty, first id, last id, time, is_buyer_maker[, is_best_match] | 8 | 7 |
//! | klines | open_time, open, high, low, close, volume, close_time, quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore | 12 | 12 |
//!
//! Times are microseconds in spot files from 2025-01-01 and milliseconds
//! elsewhere; the unit is decided per value by its magnitude (see
//! [`parse_time`]) and kept, so a millisecond value is compared at
//! millisecond precision. Booleans are `True`/`False` (spot) or
//! `true`/`false` (futures). `quote_qty` and `ignore` are not stored by the
//! recorder and are not compared.
//!
//! Parsing is pure ([`ArchiveName::parse`], [`LineParser`]); only
//! [`for_each_line`] reads a file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};

use crate::domain::{
    AggTradeRow, Decimal8, Hour, KlineInterval, KlineRow, Market, Row, Source, StreamKind, Symbol,
    TimeUs, TradeRow, MAX_EXCHANGE_ID, MAX_EXCHANGE_TIME_US, MIN_EXCHANGE_ID,
};

use super::ReconcileError;

/// Values of 10^14 and above are microseconds: as milliseconds they would be
/// in the year 5138, and as microseconds anything below is before 1973.
const MICROSECOND_THRESHOLD: i64 = 100_000_000_000_000;

/// The period an official file covers, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "period", rename_all = "snake_case")]
pub enum Period {
    /// A daily file, `YYYY-MM-DD`.
    Day { year: i32, month: u32, day: u32 },
    /// A monthly file, `YYYY-MM`.
    Month { year: i32, month: u32 },
}

impl Period {
    /// The first hour of the period and the first hour after it.
    pub fn hours(self) -> (Hour, Hour) {
        let first_day = match self {
            Period::Day { year, month, day } => NaiveDate::from_ymd_opt(year, month, day),
            Period::Month { year, month } => NaiveDate::from_ymd_opt(year, month, 1),
        }
        .expect("periods are built from valid dates only");
        let end_day = match self {
            Period::Day { .. } => first_day.succ_opt(),
            Period::Month { .. } => first_day.checked_add_months(chrono::Months::new(1)),
        }
        .expect("a period ends before chrono's last date");
        let start_of = |date: NaiveDate| {
            date.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_micros()
        };
        (
            Hour::containing(start_of(first_day)),
            Hour::containing(start_of(end_day)),
        )
    }
}

/// What an official file name says: `BTCUSDT-aggTrades-2026-01-01.zip`,
/// `BTCUSDT-trades-2026-01.csv`, `FILUSDT-1m-2024-10.csv`. Anything after
/// the first dot is ignored (`...-2026-01-01.first5000rows.csv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName {
    pub symbol: Symbol,
    pub kind: StreamKind,
    pub period: Period,
}

impl ArchiveName {
    /// Parses a file name (not a path). The error says what is wrong.
    pub fn parse(file_name: &str) -> Result<ArchiveName, String> {
        let base = file_name.split('.').next().unwrap_or_default();
        let parts: Vec<&str> = base.split('-').collect();
        let expected = "expected <SYMBOL>-<trades|aggTrades|interval>-<YYYY-MM[-DD]>";
        if !(4..=5).contains(&parts.len()) {
            return Err(format!("{file_name:?}: {expected}"));
        }
        let symbol = Symbol::new(parts[0]).map_err(|error| format!("{file_name:?}: {error}"))?;
        let kind = match parts[1] {
            "trades" => StreamKind::Trade,
            "aggTrades" => StreamKind::AggTrade,
            interval => KlineInterval::from_binance_name(interval)
                .or_else(|| KlineInterval::from_path_name(interval))
                .map(StreamKind::Kline)
                .ok_or_else(|| format!("{file_name:?}: unknown stream {interval:?}; {expected}"))?,
        };
        let number = |text: &str, digits: usize| -> Result<u32, String> {
            if text.len() == digits && text.bytes().all(|byte| byte.is_ascii_digit()) {
                text.parse()
                    .map_err(|_| format!("{file_name:?}: {text:?} is not a number"))
            } else {
                Err(format!(
                    "{file_name:?}: {text:?} is not a date part; {expected}"
                ))
            }
        };
        let year = i32::try_from(number(parts[2], 4)?).expect("four digits fit i32");
        let month = number(parts[3], 2)?;
        let period = match parts.get(4) {
            Some(day_text) => Period::Day {
                year,
                month,
                day: number(day_text, 2)?,
            },
            None => Period::Month { year, month },
        };
        let valid = match period {
            Period::Day { year, month, day } => NaiveDate::from_ymd_opt(year, month, day),
            Period::Month { year, month } => NaiveDate::from_ymd_opt(year, month, 1),
        }
        .is_some_and(|date| date.year() >= 2000);
        if !valid {
            return Err(format!("{file_name:?}: no such date"));
        }
        Ok(ArchiveName {
            symbol,
            kind,
            period,
        })
    }
}

/// The market an archive's path or symbol names, when it names one:
/// data.binance.vision paths hold `spot`, `futures/um` or `futures/cm`, and
/// COIN-M symbols end in `_PERP` or a delivery date (`BTCUSD_250627`).
pub fn market_hint(path: &Path, symbol: &Symbol) -> Option<Market> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|part| part.as_os_str().to_str().map(str::to_owned))
        .collect();
    for pair in parts.windows(2) {
        match (pair[0].as_str(), pair[1].as_str()) {
            ("futures", "um") => return Some(Market::UsdM),
            ("futures", "cm") => return Some(Market::CoinM),
            _ => {}
        }
    }
    if parts.iter().any(|part| part == "spot") {
        return Some(Market::Spot);
    }
    symbol.as_str().contains('_').then_some(Market::CoinM)
}

/// One archive row, as the project's domain row, with where it came from.
///
/// The row's `source` is [`Source::Rest`] and its stream-only fields
/// (`event_time`, `recv_time`, `trade_type`, kline trade ids) are `None`:
/// archives carry none of them, and they are never compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    pub row: Row,
    /// Which of the archives given (their index).
    pub file: usize,
    /// 1-based line in the CSV.
    pub line: u64,
    /// The row's time (klines: open time) was in milliseconds.
    pub time_in_ms: bool,
    /// Klines: the close time was in milliseconds.
    pub close_time_in_ms: bool,
}

/// The time unit of a parsed value, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Milliseconds,
    Microseconds,
}

/// Parses an epoch time in ms or µs (decided by magnitude) into µs.
pub fn parse_time(text: &str) -> Result<(TimeUs, TimeUnit), String> {
    let value = parse_integer(text)?;
    let (micros, unit) = if value.abs() >= MICROSECOND_THRESHOLD {
        (value, TimeUnit::Microseconds)
    } else {
        (value.saturating_mul(1000), TimeUnit::Milliseconds)
    };
    if !(0..=MAX_EXCHANGE_TIME_US).contains(&micros) {
        return Err(format!("time {text:?} is out of range"));
    }
    Ok((micros, unit))
}

fn parse_integer(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("{text:?} is not an integer"))
}

fn parse_id(text: &str) -> Result<i64, String> {
    let value = parse_integer(text)?;
    if (MIN_EXCHANGE_ID..=MAX_EXCHANGE_ID).contains(&value) {
        Ok(value)
    } else {
        Err(format!("id {text:?} is out of range"))
    }
}

fn parse_decimal(text: &str) -> Result<Decimal8, String> {
    text.parse::<Decimal8>().map_err(|error| error.to_string())
}

/// `True`/`False` (spot) or `true`/`false` (futures).
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "True" | "true" => Ok(true),
        "False" | "false" => Ok(false),
        other => Err(format!(
            "{other:?} is not a boolean (True/False or true/false)"
        )),
    }
}

/// Column counts of the layouts of `kind`: with the spot-only best-match
/// column first.
fn column_counts(kind: StreamKind) -> &'static [usize] {
    match kind {
        StreamKind::Trade => &[7, 6],
        StreamKind::AggTrade => &[8, 7],
        StreamKind::Kline(_) => &[12],
    }
}

/// What the first line of a file showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n_columns: usize,
    pub has_header: bool,
}

/// Parses the lines of one archive of a known stream kind, in order.
#[derive(Debug)]
pub struct LineParser {
    kind: StreamKind,
    file: usize,
    layout: Option<Layout>,
}

impl LineParser {
    pub fn new(kind: StreamKind, file: usize) -> LineParser {
        LineParser {
            kind,
            file,
            layout: None,
        }
    }

    /// The layout, once the first non-empty line was seen.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Parses line `line` (1-based, without its line end). `Ok(None)` for
    /// the header and empty lines. The error is the reason only; the caller
    /// names the file and line.
    pub fn parse_line(&mut self, line: u64, text: &str) -> Result<Option<ArchiveRow>, String> {
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return Ok(None);
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let layout = match self.layout {
            Some(layout) => layout,
            None => {
                let has_header = fields
                    .first()
                    .is_some_and(|first| first.parse::<i64>().is_err());
                let counts = column_counts(self.kind);
                if !counts.contains(&fields.len()) {
                    return Err(format!(
                        "{} columns; a {} archive has {}",
                        fields.len(),
                        self.kind,
                        counts
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ));
                }
                let layout = Layout {
                    n_columns: fields.len(),
                    has_header,
                };
                self.layout = Some(layout);
                if has_header {
                    return Ok(None);
                }
                layout
            }
        };
        if fields.len() != layout.n_columns {
            return Err(format!(
                "{} columns where the file's first line has {}",
                fields.len(),
                layout.n_columns
            ));
        }
        let row = self.parse_fields(&fields, layout)?;
        Ok(Some(ArchiveRow { line, ..row }))
    }

    fn parse_fields(&self, fields: &[&str], layout: Layout) -> Result<ArchiveRow, String> {
        let column = |index: usize, name: &str| -> Result<&str, String> {
            let text = fields[index];
            if text.is_empty() {
                Err(format!("column {} ({name}) is empty", index + 1))
            } else {
                Ok(text)
            }
        };
        let named = |index: usize, name: &str, error: String| {
            format!("column {} ({name}): {error}", index + 1)
        };
        macro_rules! field {
            ($index:expr, $name:expr, $parse:expr) => {{
                let text = column($index, $name)?;
                $parse(text).map_err(|error| named($index, $name, error))?
            }};
        }
        let archive_row = |row: Row, time_unit: TimeUnit, close_unit: TimeUnit| ArchiveRow {
            row,
            file: self.file,
            line: 0,
            time_in_ms: time_unit == TimeUnit::Milliseconds,
            close_time_in_ms: close_unit == TimeUnit::Milliseconds,
        };
        match self.kind {
            StreamKind::Trade => {
                let (trade_time, unit) = field!(4, "time", parse_time);
                let is_best_match = if layout.n_columns == 7 {
                    Some(field!(6, "is_best_match", parse_bool))
                } else {
                    None
                };
                let row = TradeRow {
                    trade_id: field!(0, "id", parse_id),
                    price: field!(1, "price", parse_decimal),
                    quantity: field!(2, "qty", parse_decimal),
                    trade_time,
                    is_buyer_maker: field!(5, "is_buyer_maker", parse_bool),
                    is_best_match,
                    trade_type: None,
                    event_time: None,
                    recv_time: None,
                    source: Source::Rest,
                };
                Ok(archive_row(Row::Trade(row), unit, unit))
            }
            StreamKind::AggTrade => {
                let (trade_time, unit) = field!(5, "time", parse_time);
                let is_best_match = if layout.n_columns == 8 {
                    Some(field!(7, "is_best_match", parse_bool))
                } else {
                    None
                };
                let row = AggTradeRow {
                    agg_trade_id: field!(0, "agg_trade_id", parse_id),
                    price: field!(1, "price", parse_decimal),
                    quantity: field!(2, "quantity", parse_decimal),
                    first_trade_id: field!(3, "first_trade_id", parse_id),
                    last_trade_id: field!(4, "last_trade_id", parse_id),
                    trade_time,
                    is_buyer_maker: field!(6, "is_buyer_maker", parse_bool),
                    is_best_match,
                    event_time: None,
                    recv_time: None,
                    source: Source::Rest,
                };
                Ok(archive_row(Row::AggTrade(row), unit, unit))
            }
            StreamKind::Kline(_) => {
                let (open_time, open_unit) = field!(0, "open_time", parse_time);
                let (close_time, close_unit) = field!(6, "close_time", parse_time);
                let row = KlineRow {
                    open_time,
                    close_time,
                    open: field!(1, "open", parse_decimal),
                    high: field!(2, "high", parse_decimal),
                    low: field!(3, "low", parse_decimal),
                    close: field!(4, "close", parse_decimal),
                    volume: field!(5, "volume", parse_decimal),
                    quote_volume: field!(7, "quote_volume", parse_decimal),
                    trade_count: field!(8, "count", parse_integer),
                    taker_buy_base_volume: field!(9, "taker_buy_volume", parse_decimal),
                    taker_buy_quote_volume: field!(10, "taker_buy_quote_volume", parse_decimal),
                    first_trade_id: None,
                    last_trade_id: None,
                    event_time: None,
                    recv_time: None,
                    source: Source::Rest,
                };
                Ok(archive_row(Row::kline(row), open_unit, close_unit))
            }
        }
    }
}

/// The first four bytes of every zip file with content.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Calls `on_line(line_number, text)` for every line of the archive at
/// `path`: the one CSV inside a zip (told by its first bytes, whatever the
/// name), or the file itself. Reads as it goes: memory does not grow with
/// the file.
pub fn for_each_line(
    path: &Path,
    mut on_line: impl FnMut(u64, &str) -> Result<(), ReconcileError>,
) -> Result<(), ReconcileError> {
    let io_error = |source| ReconcileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut magic = [0u8; 4];
    let n_read = read_up_to(&mut file, &mut magic).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    if n_read == 4 && &magic == ZIP_MAGIC {
        let zip_error = |source| ReconcileError::Zip {
            path: path.to_path_buf(),
            source,
        };
        let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
        let entries: Vec<usize> = (0..archive.len())
            .filter(|index| {
                // An entry whose name cannot be decoded still counts as a file.
                archive
                    .name_for_index(*index)
                    .is_some_and(|name| !matches!(name, Ok(name) if name.ends_with('/')))
            })
            .collect();
        let [only] = entries.as_slice() else {
            return Err(ReconcileError::ZipLayout {
                path: path.to_path_buf(),
                reason: format!(
                    "holds {} files; an official archive holds one CSV",
                    entries.len()
                ),
            });
        };
        let inner = archive.by_index(*only).map_err(zip_error)?;
        read_lines(path, BufReader::with_capacity(1 << 16, inner), &mut on_line)
    } else {
        read_lines(path, BufReader::with_capacity(1 << 16, file), &mut on_line)
    }
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn read_lines(
    path: &Path,
    mut reader: impl BufRead,
    on_line: &mut impl FnMut(u64, &str) -> Result<(), ReconcileError>,
) -> Result<(), ReconcileError> {
    let mut buffer = Vec::new();
    let mut line_number = 0u64;
    loop {
        buffer.clear();
        // A zip whose deflate stream or CRC is bad fails here, as a read error.
        let n_read =
            reader
                .read_until(b'\n', &mut buffer)
                .map_err(|source| ReconcileError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        if n_read == 0 {
            return Ok(());
        }
        line_number += 1;
        let bytes = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        let text = std::str::from_utf8(bytes).map_err(|_| ReconcileError::BadLine {
            path: PathBuf::from(path),
            line: line_number,
            reason: "not UTF-8 text".into(),
        })?;
        on_line(line_number, text)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(kind: StreamKind, text: &str) -> Result<Vec<ArchiveRow>, (u64, String)> {
        let mut parser = LineParser::new(kind, 0);
        let mut rows = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index as u64 + 1;
            if let Some(row) = parser
                .parse_line(line_number, line)
                .map_err(|reason| (line_number, reason))?
            {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    fn decimal(text: &str) -> Decimal8 {
        text.parse().expect("test decimal")
    }

    #[test]
    fn names_give_symbol_stream_and_period() {
        let daily = ArchiveName::parse("BTCUSDT-aggTrades-2026-01-01.zip").expect("daily");
        assert_eq!(daily.symbol.as_str(), "BTCUSDT");
        assert_eq!(daily.kind, StreamKind::AggTrade);
        assert_eq!(
            daily.period,
            Period::Day {
                year: 2026,
                month: 1,
                day: 1
            }
        );
        let (start, end) = daily.period.hours();
        assert_eq!(start.hour_text(), "2026-01-01T00");
        assert_eq!(end.hour_text(), "2026-01-02T00");

        let monthly = ArchiveName::parse("BTCUSDT-trades-2026-01.csv").expect("monthly");
        assert_eq!(monthly.kind, StreamKind::Trade);
        let (start, end) = monthly.period.hours();
        assert_eq!(
            (start.hour_text(), end.hour_text()),
            ("2026-01-01T00".into(), "2026-02-01T00".into())
        );

        let klines = ArchiveName::parse("FILUSDT-1m-2024-10.csv").expect("klines");
        assert_eq!(klines.kind, StreamKind::Kline(KlineInterval::Minute1));
        let month_klines = ArchiveName::parse("BTCUSDT-1mo-2024-10.zip").expect("1mo");
        assert_eq!(month_klines.kind, StreamKind::Kline(KlineInterval::Month1));

        let prefix =
            ArchiveName::parse("BTCUSDT-aggTrades-2026-01-01.first5000rows.csv").expect("prefix");
        assert_eq!(prefix.period, daily.period);

        for bad in [
            "BTCUSDT-aggTrades.zip",
            "btcusdt-trades-2026-01.csv",
            "BTCUSDT-depth-2026-01.csv",
            "BTCUSDT-trades-2026-13.csv",
            "BTCUSDT-trades-2026-02-30.csv",
            "BTCUSDT-trades-26-01.csv",
        ] {
            assert!(ArchiveName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn market_comes_from_the_path_or_a_coin_m_symbol() {
        let symbol = Symbol::new("BTCUSDT").expect("valid");
        let in_tree = |path: &str| market_hint(Path::new(path), &symbol);
        assert_eq!(
            in_tree("data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2026-01-01.zip"),
            Some(Market::UsdM)
        );
        assert_eq!(
            in_tree("data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2026-01.zip"),
            Some(Market::Spot)
        );
        assert_eq!(in_tree("/tmp/BTCUSDT-trades-2026-01.zip"), None);
        let coin_m = Symbol::new("BTCUSD_PERP").expect("valid");
        assert_eq!(
            market_hint(Path::new("BTCUSD_PERP-trades-2026-01.zip"), &coin_m),
            Some(Market::CoinM)
        );
    }

    #[test]
    fn spot_agg_trades_without_header_in_microseconds() {
        // The first two lines of the shared official BTCUSDT file.
        let text = "3800397495,87648.21000000,0.08185000,5723703861,5723703861,1767225600039409,True,True\n\
                    3800397496,87648.22000000,0.00013000,5723703862,5723703862,1767225600272386,False,True\n";
        let rows = parse_all(StreamKind::AggTrade, text).expect("valid");
        assert_eq!(rows.len(), 2);
        let Row::AggTrade(first) = &rows[0].row else {
            panic!("aggTrade row")
        };
        assert_eq!(first.agg_trade_id, 3_800_397_495);
        assert_eq!(first.price, decimal("87648.21"));
        assert_eq!(first.quantity, decimal("0.08185"));
        assert_eq!(
            (first.first_trade_id, first.last_trade_id),
            (5_723_703_861, 5_723_703_861)
        );
        assert_eq!(first.trade_time, 1_767_225_600_039_409);
        assert!(first.is_buyer_maker);
        assert_eq!(first.is_best_match, Some(true));
        assert!(!rows[0].time_in_ms);
        assert_eq!((rows[0].line, rows[1].line), (1, 2));
        let Row::AggTrade(second) = &rows[1].row else {
            panic!("aggTrade row")
        };
        assert!(!second.is_buyer_maker);
    }

    #[test]
    fn futures_agg_trades_with_header_in_milliseconds() {
        let text = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n\
                    1715206948,29223.0,0.639,3643221425,3643221428,1682899200101,false\n";
        let rows = parse_all(StreamKind::AggTrade, text).expect("valid");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 2);
        assert!(rows[0].time_in_ms);
        let Row::AggTrade(agg) = &rows[0].row else {
            panic!("aggTrade row")
        };
        assert_eq!(agg.trade_time, 1_682_899_200_101_000);
        assert_eq!(agg.price, decimal("29223"));
        assert_eq!(agg.is_best_match, None);
        assert!(!agg.is_buyer_maker);
    }

    #[test]
    fn spot_and_futures_trades() {
        // Spot: 7 columns, no header, µs, capitalised booleans.
        let spot = "51175358,17.80180000,5.69000000,101.29224200,1735689600010866,True,False\n";
        let rows = parse_all(StreamKind::Trade, spot).expect("spot");
        let Row::Trade(trade) = &rows[0].row else {
            panic!("trade row")
        };
        assert_eq!(trade.trade_id, 51_175_358);
        assert_eq!(trade.price, decimal("17.8018"));
        assert_eq!(trade.trade_time, 1_735_689_600_010_866);
        assert_eq!(
            (trade.is_buyer_maker, trade.is_best_match),
            (true, Some(false))
        );
        // Futures: header, 6 columns, ms, lower-case booleans.
        let futures = "id,price,qty,quote_qty,time,is_buyer_maker\r\n\
                       548321769,0.23120,1000,231.2,1741046404349,true\r\n";
        let rows = parse_all(StreamKind::Trade, futures).expect("futures");
        let Row::Trade(trade) = &rows[0].row else {
            panic!("trade row")
        };
        assert_eq!(trade.trade_time, 1_741_046_404_349_000);
        assert!(rows[0].time_in_ms);
        assert_eq!((trade.is_buyer_maker, trade.is_best_match), (true, None));
        // Spot before 2025: milliseconds, no header.
        let old_spot = "3735693016,61685.99000000,0.00017000,10.48661830,1723161601437,True,True\n";
        let rows = parse_all(StreamKind::Trade, old_spot).expect("old spot");
        assert!(rows[0].time_in_ms);
    }

    #[test]
    fn klines_with_header_ms_and_without_header_us() {
        // From the shared FILUSDT USD-M file: a zero-trade minute prints `0`.
        let futures = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n\
                       1730132460000,3.611,3.611,3.611,3.611,0,1730132519999,0,0,0,0,0\n";
        let rows = parse_all(StreamKind::Kline(KlineInterval::Minute1), futures).expect("futures");
        let Row::Kline(kline) = &rows[0].row else {
            panic!("kline row")
        };
        assert_eq!(kline.open_time, 1_730_132_460_000_000);
        assert_eq!(kline.close_time, 1_730_132_519_999_000);
        assert_eq!(kline.volume, Decimal8::ZERO);
        assert_eq!(kline.trade_count, 0);
        assert!(rows[0].time_in_ms && rows[0].close_time_in_ms);
        let spot = "1735689600000000,4.15070000,4.15870000,4.15060000,4.15540000,539.23000000,1735693199999999,2240.39860900,13,401.82000000,1669.98121300,0\n";
        let rows = parse_all(StreamKind::Kline(KlineInterval::Hour1), spot).expect("spot");
        let Row::Kline(kline) = &rows[0].row else {
            panic!("kline row")
        };
        assert_eq!(kline.close_time, 1_735_693_199_999_999);
        assert_eq!(kline.taker_buy_quote_volume, decimal("1669.981213"));
        assert!(!rows[0].time_in_ms);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_column() {
        let agg = "3800397495,87648.21000000,0.00040000,5723703861,5723703861,1767225600039409,True,True\n";
        let cases = [
            (
                format!("{agg}3800397496,87648.22,0.01,5723703862,5723703863,1767225600039409,Yes,True\n"),
                2,
                "column 7 (is_buyer_maker)",
            ),
            (
                format!("{agg}3800397496,87648.2x,0.01,5723703862,5723703863,1767225600039409,True,True\n"),
                2,
                "column 2 (price)",
            ),
            (
                format!("{agg}3800397496,87648.22,0.01,5723703862\n"),
                2,
                "4 columns",
            ),
            (
                format!("{agg}3800397496,0.123456789,0.01,1,1,1767225600039409,True,True\n"),
                2,
                "would be rounded",
            ),
            (
                format!("{agg}3800397496,1,0.01,1,1,,True,True\n"),
                2,
                "column 6 (time) is empty",
            ),
            ("1,2,3\n".to_owned(), 1, "3 columns; a aggTrade archive has 8 or 7"),
        ];
        for (text, line, reason) in cases {
            let error = parse_all(StreamKind::AggTrade, &text).expect_err("bad line");
            assert_eq!(error.0, line, "{text}");
            assert!(
                error.1.contains(reason),
                "{} does not say {reason}",
                error.1
            );
        }
    }

    #[test]
    fn time_unit_is_decided_per_value() {
        assert_eq!(
            parse_time("1767225600039409"),
            Ok((1_767_225_600_039_409, TimeUnit::Microseconds))
        );
        assert_eq!(
            parse_time("1767225600039"),
            Ok((1_767_225_600_039_000, TimeUnit::Milliseconds))
        );
        assert!(parse_time("-5").is_err());
        assert!(
            parse_time("999999999999999999").is_err(),
            "after the year 9999"
        );
        assert!(parse_time("1.5").is_err());
    }

    fn scratch_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let directory = tempfile::tempdir().expect("scratch directory");
        let path = directory.path().join(name);
        std::fs::write(&path, bytes).expect("scratch file written");
        (directory, path)
    }

    fn lines_of(path: &Path) -> Result<Vec<(u64, String)>, ReconcileError> {
        let mut lines = Vec::new();
        for_each_line(path, |number, text| {
            lines.push((number, text.to_owned()));
            Ok(())
        })?;
        Ok(lines)
    }

    fn zip_bytes(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in files {
            writer.start_file(*name, options).expect("zip entry");
            std::io::Write::write_all(&mut writer, content.as_bytes()).expect("zip write");
        }
        writer.finish().expect("zip finished").into_inner()
    }

    #[test]
    fn zip_and_plain_csv_read_the_same_lines() {
        let csv = "1,2\n3,4\r\nlast line without end";
        let (_plain_dir, plain) = scratch_file("X-trades-2026-01.csv", csv.as_bytes());
        let (_zip_dir, zipped) = scratch_file(
            "X-trades-2026-01.zip",
            &zip_bytes(&[("X-trades-2026-01.csv", csv)]),
        );
        let expected = vec![
            (1, "1,2".to_owned()),
            (2, "3,4\r".to_owned()),
            (3, "last line without end".to_owned()),
        ];
        assert_eq!(lines_of(&plain).expect("plain"), expected);
        assert_eq!(lines_of(&zipped).expect("zip"), expected);
    }

    #[test]
    fn a_zip_with_two_files_or_garbage_is_refused_by_name() {
        let (_two_dir, two) = scratch_file(
            "X-trades-2026-01.zip",
            &zip_bytes(&[("a.csv", "1\n"), ("b.csv", "2\n")]),
        );
        let error = lines_of(&two).expect_err("two files");
        assert!(
            matches!(&error, ReconcileError::ZipLayout { path, .. } if path == &two),
            "{error}"
        );
        assert!(error.to_string().contains("holds 2 files"), "{error}");
        let mut broken = zip_bytes(&[("X-trades-2026-01.csv", "1,2\n")]);
        broken.truncate(20);
        let (_broken_dir, broken) = scratch_file("X-trades-2026-01.zip", &broken);
        let error = lines_of(&broken).expect_err("truncated zip");
        assert!(
            error.to_string().contains("X-trades-2026-01.zip"),
            "{error}"
        );
        let (_binary_dir, binary) = scratch_file("X-trades-2026-01.csv", b"1,2\n\xff\xfe\n");
        let error = lines_of(&binary).expect_err("not UTF-8");
        assert!(
            matches!(error, ReconcileError::BadLine { line: 2, .. }),
            "{error}"
        );
    }
}
