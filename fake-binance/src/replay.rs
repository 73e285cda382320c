//! Loading real data to replay: raw stream captures and data.binance.vision CSVs.
//!
//! Accepted inputs (gzip when the name ends in `.gz`):
//! * capture lines `<receive time> <combined-stream JSON>` (hftbacktest: ns then a space;
//!   cryptofeed: `<secs.frac>: ` after a first line holding the URL). Only
//!   `@trade` and `@aggTrade` lines are kept; depth, bookTicker, kline lines and REST
//!   snapshot lines (no `stream` key) are skipped.
//! * CSVs of trades or aggTrades, with or without header, times in ms or µs;
//!   the symbol comes from the file name (`BTCUSDT-aggTrades-2026-01-01.csv`).
//!
//! A captured trade keeps the exact bytes of its `data` object, so that in
//! millisecond mode the fake sends it byte for byte as Binance did.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tracing::{info, warn};

use crate::decimal::parse_atoms;
use crate::model::{AggTrade, Trade};

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("cannot read replay file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("the replay files hold no trade and no aggTrade")]
    Empty,
}

/// The replayed data of one symbol, in stream order.
#[derive(Debug, Default)]
pub(crate) struct ReplayedSymbol {
    pub symbol: String,
    pub trades: Vec<Trade>,
    pub agg_trades: Vec<AggTrade>,
}

#[derive(Deserialize)]
struct CombinedLine<'line> {
    stream: Option<String>,
    #[serde(borrow)]
    data: Option<&'line RawValue>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct TradeWire {
    #[serde(rename = "E")]
    event_time: i64,
    s: String,
    t: i64,
    p: String,
    q: String,
    #[serde(rename = "T")]
    trade_time: i64,
    m: bool,
    #[serde(rename = "M", default = "default_true")]
    best_match: bool,
}

#[derive(Deserialize)]
struct AggTradeWire {
    #[serde(rename = "E")]
    event_time: i64,
    s: String,
    a: i64,
    p: String,
    q: String,
    f: i64,
    l: i64,
    #[serde(rename = "T")]
    trade_time: i64,
    m: bool,
    #[serde(rename = "M", default = "default_true")]
    best_match: bool,
}

/// Times of 10^14 and above are µs (a ms time that large is 5000 years away).
fn to_micros(time: i64) -> i64 {
    if time.abs() >= 100_000_000_000_000 {
        time
    } else {
        time * 1000
    }
}

struct Collector {
    symbols: Vec<ReplayedSymbol>,
    index_of: HashMap<String, usize>,
    next_dispatch_seq: u64,
}

impl Collector {
    fn symbol(&mut self, symbol: &str) -> &mut ReplayedSymbol {
        let index = match self.index_of.get(symbol) {
            Some(index) => *index,
            None => {
                self.symbols.push(ReplayedSymbol {
                    symbol: symbol.to_owned(),
                    ..ReplayedSymbol::default()
                });
                self.index_of
                    .insert(symbol.to_owned(), self.symbols.len() - 1);
                self.symbols.len() - 1
            }
        };
        &mut self.symbols[index]
    }

    fn next_seq(&mut self) -> u64 {
        self.next_dispatch_seq += 1;
        self.next_dispatch_seq
    }
}

/// Reads every file, in order.
pub(crate) fn load_replay(files: &[PathBuf]) -> Result<Vec<ReplayedSymbol>, ReplayError> {
    let mut collector = Collector {
        symbols: Vec::new(),
        index_of: HashMap::new(),
        next_dispatch_seq: 0,
    };
    for path in files {
        load_file(path, &mut collector)?;
    }
    let mut symbols = collector.symbols;
    if symbols
        .iter()
        .all(|symbol| symbol.trades.is_empty() && symbol.agg_trades.is_empty())
    {
        return Err(ReplayError::Empty);
    }
    for symbol in &mut symbols {
        put_in_time_order(symbol);
        info!(symbol = %symbol.symbol, trades = symbol.trades.len(), agg_trades = symbol.agg_trades.len(), "replay loaded");
    }
    Ok(symbols)
}

/// Klines and REST need time order. Real captures are; a file that is not gets
/// sorted, keeping the same set of stream positions so the two streams still interleave.
fn put_in_time_order(symbol: &mut ReplayedSymbol) {
    if !symbol
        .trades
        .windows(2)
        .all(|pair| pair[0].time_us <= pair[1].time_us)
    {
        warn!(symbol = %symbol.symbol, "replayed trades not in time order, sorting");
        let mut seqs: Vec<u64> = symbol
            .trades
            .iter()
            .map(|trade| trade.dispatch_seq)
            .collect();
        seqs.sort_unstable();
        symbol.trades.sort_by_key(|trade| (trade.time_us, trade.id));
        for (trade, seq) in symbol.trades.iter_mut().zip(seqs) {
            trade.dispatch_seq = seq;
        }
    }
    if !symbol
        .agg_trades
        .windows(2)
        .all(|pair| pair[0].time_us <= pair[1].time_us)
    {
        warn!(symbol = %symbol.symbol, "replayed aggTrades not in time order, sorting");
        let mut seqs: Vec<u64> = symbol
            .agg_trades
            .iter()
            .map(|agg| agg.dispatch_seq)
            .collect();
        seqs.sort_unstable();
        symbol.agg_trades.sort_by_key(|agg| (agg.time_us, agg.id));
        for (agg, seq) in symbol.agg_trades.iter_mut().zip(seqs) {
            agg.dispatch_seq = seq;
        }
    }
}

fn open_lines(path: &Path) -> Result<Box<dyn BufRead>, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|extension| extension == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

fn load_file(path: &Path, collector: &mut Collector) -> Result<(), ReplayError> {
    let mut lines = open_lines(path)?;
    let mut line = String::new();
    let mut line_number = 0usize;
    let mut csv: Option<CsvLayout> = None;
    let mut first_content_line = true;
    loop {
        line.clear();
        let read = lines
            .read_line(&mut line)
            .map_err(|source| ReplayError::Io {
                path: path.to_owned(),
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        line_number += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if first_content_line {
            first_content_line = false;
            let is_capture = text.contains('{') || text.starts_with("ws");
            if !is_capture {
                let (layout, is_header) = CsvLayout::detect(path, text)?;
                csv = Some(layout);
                if is_header {
                    continue;
                }
            }
        }
        let malformed = |reason: String| ReplayError::Malformed {
            path: path.to_owned(),
            line: line_number,
            reason,
        };
        match &csv {
            Some(layout) => layout.read_row(path, text, collector).map_err(malformed)?,
            None => read_capture_line(text, collector).map_err(malformed)?,
        }
    }
}

fn read_capture_line(text: &str, collector: &mut Collector) -> Result<(), String> {
    // Everything before the first '{' is the capturing tool's own prefix.
    let Some(json_start) = text.find('{') else {
        return Ok(());
    };
    let combined: CombinedLine = match serde_json::from_str(&text[json_start..]) {
        Ok(combined) => combined,
        Err(error) => return Err(format!("not JSON: {error}")),
    };
    let (Some(stream), Some(data)) = (combined.stream, combined.data) else {
        return Ok(()); // a REST snapshot or other non-stream line
    };
    let kind = stream.split_once('@').map(|(_, kind)| kind).unwrap_or("");
    match kind {
        "trade" => {
            let wire: TradeWire =
                serde_json::from_str(data.get()).map_err(|error| format!("bad trade: {error}"))?;
            let is_millisecond = wire.trade_time.abs() < 100_000_000_000_000;
            let trade = Trade {
                print: crate::model::PrintType::Market,
                id: wire.t,
                price: parse_atoms(&wire.p).map_err(|error| error.to_string())?,
                quantity: parse_atoms(&wire.q).map_err(|error| error.to_string())?,
                time_us: to_micros(wire.trade_time),
                event_time_us: to_micros(wire.event_time),
                is_buyer_maker: wire.m,
                is_best_match: wire.best_match,
                dispatch_seq: collector.next_seq(),
                raw_payload: is_millisecond.then(|| Arc::from(data.get())),
            };
            collector.symbol(&wire.s).trades.push(trade);
        }
        "aggTrade" => {
            let wire: AggTradeWire = serde_json::from_str(data.get())
                .map_err(|error| format!("bad aggTrade: {error}"))?;
            let is_millisecond = wire.trade_time.abs() < 100_000_000_000_000;
            let agg = AggTrade {
                id: wire.a,
                price: parse_atoms(&wire.p).map_err(|error| error.to_string())?,
                quantity: parse_atoms(&wire.q).map_err(|error| error.to_string())?,
                first_trade_id: wire.f,
                last_trade_id: wire.l,
                time_us: to_micros(wire.trade_time),
                event_time_us: to_micros(wire.event_time),
                is_buyer_maker: wire.m,
                is_best_match: wire.best_match,
                dispatch_seq: collector.next_seq(),
                raw_payload: is_millisecond.then(|| Arc::from(data.get())),
            };
            collector.symbol(&wire.s).agg_trades.push(agg);
        }
        _ => {}
    }
    Ok(())
}

/// Column layout of a data.binance.vision CSV.
#[derive(Debug, Clone)]
enum CsvLayout {
    /// agg id, price, qty, first id, last id, time, buyer maker[, best match]
    AggTrades { symbol: String },
    /// id, price, qty, quote qty, time, buyer maker[, best match]
    Trades { symbol: String },
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "True" | "true" => Ok(true),
        "False" | "false" => Ok(false),
        other => Err(format!("not a boolean: {other:?}")),
    }
}

fn parse_int(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| format!("not an integer: {text:?}"))
}

impl CsvLayout {
    /// Decides the layout from the first line; true when that line is a header.
    fn detect(path: &Path, first_line: &str) -> Result<(CsvLayout, bool), ReplayError> {
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        let symbol = file_name.split('-').next().unwrap_or("").to_owned();
        let unsupported = |reason: &str| ReplayError::Unsupported {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if symbol.is_empty()
            || !symbol
                .bytes()
                .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit())
        {
            return Err(unsupported(
                "CSV file name must start with the symbol, e.g. BTCUSDT-aggTrades-2026-01-01.csv",
            ));
        }
        let fields: Vec<&str> = first_line.split(',').collect();
        let is_header = fields
            .first()
            .is_some_and(|first| first.trim().parse::<i64>().is_err());
        if is_header {
            let header = first_line.to_ascii_lowercase();
            if header.contains("agg_trade_id") {
                return Ok((CsvLayout::AggTrades { symbol }, true));
            }
            if header.contains("open_time") {
                return Err(unsupported(
                    "kline CSVs cannot be replayed: klines are computed from trades",
                ));
            }
            if header.starts_with("id,") {
                return Ok((CsvLayout::Trades { symbol }, true));
            }
            return Err(unsupported("unknown CSV header"));
        }
        let layout = match fields.len() {
            8 => CsvLayout::AggTrades { symbol },
            6 => CsvLayout::Trades { symbol },
            // Spot trades end with two booleans; futures aggTrades have a time in column 6.
            7 if parse_bool(fields[5]).is_ok() => CsvLayout::Trades { symbol },
            7 => CsvLayout::AggTrades { symbol },
            12 => {
                return Err(unsupported(
                    "kline CSVs cannot be replayed: klines are computed from trades",
                ))
            }
            _ => return Err(unsupported("unknown CSV layout")),
        };
        Ok((layout, false))
    }

    fn read_row(&self, _path: &Path, text: &str, collector: &mut Collector) -> Result<(), String> {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let field = |index: usize| {
            fields
                .get(index)
                .copied()
                .ok_or_else(|| format!("missing column {}", index + 1))
        };
        match self {
            CsvLayout::AggTrades { symbol } => {
                let time_us = to_micros(parse_int(field(5)?)?);
                let agg = AggTrade {
                    id: parse_int(field(0)?)?,
                    price: parse_atoms(field(1)?).map_err(|error| error.to_string())?,
                    quantity: parse_atoms(field(2)?).map_err(|error| error.to_string())?,
                    first_trade_id: parse_int(field(3)?)?,
                    last_trade_id: parse_int(field(4)?)?,
                    time_us,
                    // The CSV has no event time; the event is taken to be sent at the trade time.
                    event_time_us: time_us,
                    is_buyer_maker: parse_bool(field(6)?)?,
                    is_best_match: match fields.get(7) {
                        Some(text) => parse_bool(text)?,
                        None => true,
                    },
                    dispatch_seq: collector.next_seq(),
                    raw_payload: None,
                };
                collector.symbol(symbol).agg_trades.push(agg);
            }
            CsvLayout::Trades { symbol } => {
                let time_us = to_micros(parse_int(field(4)?)?);
                let trade = Trade {
                    print: crate::model::PrintType::Market,
                    id: parse_int(field(0)?)?,
                    price: parse_atoms(field(1)?).map_err(|error| error.to_string())?,
                    quantity: parse_atoms(field(2)?).map_err(|error| error.to_string())?,
                    time_us,
                    event_time_us: time_us,
                    is_buyer_maker: parse_bool(field(5)?)?,
                    is_best_match: match fields.get(6) {
                        Some(text) => parse_bool(text)?,
                        None => true,
                    },
                    dispatch_seq: collector.next_seq(),
                    raw_payload: None,
                };
                collector.symbol(symbol).trades.push(trade);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_temp(name: &str, content: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("fake-binance-replay-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn capture_lines_keep_trade_bytes_and_skip_other_streams() {
        let content = concat!(
            "1723161600164378285 {\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"E\":1723161601438,\"s\":\"BTCUSDT\",\"t\":3735693016,\"p\":\"61685.99000000\",\"q\":\"0.00017000\",\"T\":1723161601437,\"m\":true,\"M\":true}}\n",
            "1723161600164378286 {\"stream\":\"btcusdt@bookTicker\",\"data\":{\"u\":1,\"s\":\"BTCUSDT\",\"b\":\"1\",\"B\":\"1\",\"a\":\"1\",\"A\":\"1\"}}\n",
            "1723161600164378287 {\"lastUpdateId\":5,\"bids\":[],\"asks\":[]}\n",
        );
        let path = write_temp("capture.txt", content);
        let symbols = load_replay(&[path]).unwrap();
        assert_eq!(symbols.len(), 1);
        let trade = &symbols[0].trades[0];
        assert_eq!(trade.time_us, 1_723_161_601_437_000);
        assert_eq!(
            trade.raw_payload.as_deref(),
            Some(
                r#"{"e":"trade","E":1723161601438,"s":"BTCUSDT","t":3735693016,"p":"61685.99000000","q":"0.00017000","T":1723161601437,"m":true,"M":true}"#
            )
        );
    }

    #[test]
    fn csv_with_and_without_header() {
        let spot = write_temp(
            "BTCUSDT-aggTrades-2025-01-01.csv",
            "0,0.20000000,50.00000000,0,0,1735689600010866,False,True\n",
        );
        let symbols = load_replay(&[spot]).unwrap();
        assert_eq!(symbols[0].symbol, "BTCUSDT");
        assert_eq!(symbols[0].agg_trades[0].time_us, 1_735_689_600_010_866);
        let usdm = write_temp(
            "BTCUSDT-aggTrades-2023-05-01.csv",
            "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n1715206948,29223.0,0.639,3643221425,3643221428,1682899200101,false\n",
        );
        let symbols = load_replay(&[usdm]).unwrap();
        assert_eq!(symbols[0].agg_trades[0].time_us, 1_682_899_200_101_000);
        assert_eq!(symbols[0].agg_trades[0].last_trade_id, 3_643_221_428);
        let trades = write_temp(
            "TRXUSDT-trades-2025-01-01.csv",
            "51175358,17.80180000,5.69000000,101.29224200,1735689600010866,True,True\n",
        );
        let symbols = load_replay(&[trades]).unwrap();
        assert_eq!(symbols[0].trades[0].id, 51_175_358);
        let klines = write_temp("BTCUSDT-1m-2025-01-01.csv", "1735689600000000,4.15070000,4.15870000,4.15060000,4.15540000,539.23000000,1735693199999999,2240.39860900,13,401.82000000,1669.98121300,0\n");
        assert!(matches!(
            load_replay(&[klines]),
            Err(ReplayError::Unsupported { .. })
        ));
    }
}
