//! Inputs for the fuzz-style property tests (test builds only): arbitrary
//! bytes, and real samples mutated the way damaged or hostile input looks
//! (flipped bytes, truncation, insertion, deletion, duplicated slices,
//! swapped digits, numbers replaced by extreme ones, deep nesting).
//!
//! Every parser of outside input (frames, REST bodies, decimals, footers,
//! WAL segments) is fed these with the property "never a panic, always a
//! typed error or a value". Case counts stay bounded so each test takes
//! seconds in the normal test run; cargo-fuzz targets in `fuzz/` run the same
//! functions for as long as one likes.

use proptest::prelude::*;
use proptest::sample::Index;

/// Numbers that break naive arithmetic: the `i64` and `u64` edges and
/// beyond, values just outside the accepted time and id ranges, floats,
/// exponents, and more digits than `i128` holds.
const EXTREME_NUMBERS: &[&str] = &[
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-2",
    "0",
    "-0",
    "253402300800000000",
    "9007199254740993",
    "99999999999999999999999999999999999999999",
    "1e308",
    "1e400",
    "-1.5e-400",
    "0.000000001",
    "100000000000000000000000000000.00000000",
];

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipByte { at: Index, xor: u8 },
    Truncate { at: Index },
    Insert { at: Index, bytes: Vec<u8> },
    Delete { at: Index, len: usize },
    Duplicate { at: Index, len: usize },
    SwapDigits { first: Index, second: Index },
    ReplaceNumber { which: Index, with: Index },
    Nest { depth: usize, as_object: bool },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(at, xor)| Mutation::FlipByte { at, xor }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1..16usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<Index>(), 1..32usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        2 => (any::<Index>(), any::<Index>())
            .prop_map(|(first, second)| Mutation::SwapDigits { first, second }),
        4 => (any::<Index>(), any::<Index>())
            .prop_map(|(which, with)| Mutation::ReplaceNumber { which, with }),
        1 => (1..3000usize, any::<bool>())
            .prop_map(|(depth, as_object)| Mutation::Nest { depth, as_object }),
    ]
}

/// Start and end of each run of ASCII digits (with a leading `-`).
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index].is_ascii_digit() {
            let start = if index > 0 && bytes[index - 1] == b'-' {
                index - 1
            } else {
                index
            };
            while index < bytes.len() && bytes[index].is_ascii_digit() {
                index += 1;
            }
            spans.push((start, index));
        } else {
            index += 1;
        }
    }
    spans
}

impl Mutation {
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        // `Index::index(n)` needs n > 0: positions run over 0..=len.
        let position = |at: &Index, bytes: &Vec<u8>| at.index(bytes.len() + 1);
        match self {
            Mutation::FlipByte { at, xor } => {
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] ^= xor;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(position(at, bytes)),
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let at = position(at, bytes);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let at = position(at, bytes);
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Duplicate { at, len } => {
                let at = position(at, bytes);
                let end = (at + len).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Mutation::SwapDigits { first, second } => {
                let digits: Vec<usize> = (0..bytes.len())
                    .filter(|index| bytes[*index].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let first = digits[first.index(digits.len())];
                    let second = digits[second.index(digits.len())];
                    bytes.swap(first, second);
                }
            }
            Mutation::ReplaceNumber { which, with } => {
                let spans = number_spans(bytes);
                if !spans.is_empty() {
                    let (start, end) = spans[which.index(spans.len())];
                    let number = EXTREME_NUMBERS[with.index(EXTREME_NUMBERS.len())];
                    bytes.splice(start..end, number.bytes());
                }
            }
            Mutation::Nest { depth, as_object } => {
                let (open, close): (&[u8], &[u8]) = if *as_object {
                    (b"{\"data\":", b"}")
                } else {
                    (b"[", b"]")
                };
                let mut nested = open.repeat(*depth);
                nested.append(bytes);
                nested.extend(close.repeat(*depth));
                *bytes = nested;
            }
        }
    }
}

/// One of `seeds` with up to four mutations applied.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 0..4),
    )
        .prop_map(|(mut bytes, mutations)| {
            for mutation in &mutations {
                mutation.apply(&mut bytes);
            }
            bytes
        })
}

/// Mostly mutated seeds (they reach deep into a parser), some arbitrary bytes.
pub fn fuzz_input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        4 => mutated(seeds),
    ]
}

/// The non-empty lines of a JSON-lines sample, as seeds.
pub fn lines(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.as_bytes().to_vec())
        .collect()
}

/// The values of a sample file that is one JSON object of labelled bodies.
pub fn labelled_bodies(text: &str) -> Vec<Vec<u8>> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).expect("the committed sample is a JSON object");
    object
        .values()
        .map(|body| serde_json::to_vec(body).expect("a JSON value serialises"))
        .collect()
}

/// The committed samples (see `tests/fixtures/samples/SOURCES.md`).
pub mod samples {
    pub const SPOT_TRADE: &str = include_str!("../tests/fixtures/samples/spot-trade.jsonl");
    pub const SPOT_AGG_TRADE: &str = include_str!("../tests/fixtures/samples/spot-aggTrade.jsonl");
    pub const SPOT_KLINE: &str = include_str!("../tests/fixtures/samples/spot-kline.jsonl");
    pub const FUTURES_TRADE: &str = include_str!("../tests/fixtures/samples/futures-trade.jsonl");
    pub const FUTURES_AGG_TRADE: &str =
        include_str!("../tests/fixtures/samples/futures-aggTrade.jsonl");
    pub const FUTURES_KLINE: &str = include_str!("../tests/fixtures/samples/futures-kline.jsonl");
    pub const WS_CONTROL: &str = include_str!("../tests/fixtures/samples/ws-control.jsonl");
    pub const REST_TRADES: &str = include_str!("../tests/fixtures/samples/rest-trades.json");
    pub const REST_AGG_TRADES: &str = include_str!("../tests/fixtures/samples/rest-aggTrades.json");
    pub const REST_KLINES: &str = include_str!("../tests/fixtures/samples/rest-klines.json");
}
