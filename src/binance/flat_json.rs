//! A strict reader of the one JSON shape most frames carry: a flat object
//! written without whitespace whose values are plain strings, non-negative
//! integers, booleans or null (`{"e":"aggTrade","E":1,"s":"BTCUSDT",...}`).
//!
//! It is a shortcut in front of serde_json, not a JSON parser: it answers
//! only for text it can read exactly as serde_json would, and `None` for
//! anything else (whitespace, an escape, a control character, a negative
//! or fractional number, a nested value, a number beyond `i64`), which then
//! goes to serde_json, so the answers and the errors stay serde_json's. A
//! spot trade or aggTrade event takes it 330-350 ns against serde_json's
//! 630-770 into the same borrowed struct (docs/BENCHMARKS.md, session 14):
//! the decode is most of a replay's CPU and a third of a burst's.

use crate::domain::{eight_digits, Decimal8, Symbol};

/// One value of a flat object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flat<'a> {
    /// A string without escapes or control characters.
    Str(&'a str),
    /// A non-negative integer, as `i64` reads it.
    Int(i64),
    Bool(bool),
    Null,
}

/// Calls `each` with every key and value of `text`, in order, and returns
/// `Some(())` when `text` is one whole flat object as described above and
/// every call returned `Some(())`. An empty object is not read.
pub fn read_flat<'a>(
    text: &'a str,
    mut each: impl FnMut(&'a str, Flat<'a>) -> Option<()>,
) -> Option<()> {
    let bytes = text.as_bytes();
    let mut at = 0;
    if bytes.first() != Some(&b'{') {
        return None;
    }
    loop {
        at += 1;
        let (key, after_key) = plain_string(text, at)?;
        if bytes.get(after_key) != Some(&b':') {
            return None;
        }
        let (value, after_value) = value(text, after_key + 1)?;
        each(key, value)?;
        match bytes.get(after_value) {
            Some(b',') => at = after_value,
            Some(b'}') if after_value + 1 == bytes.len() => return Some(()),
            _ => return None,
        }
    }
}

/// A flat object read field by field in an order known beforehand (the
/// order Binance writes its events in), each value read as what its key
/// holds (an integer, a boolean, a decimal or a symbol): no key matching,
/// no [`Flat`] and no string in between. A key other than the one
/// expected, or a value [`read_flat`] would refuse or read as another
/// type, or one not in its usual form, gives `None`, and the caller
/// decodes the object by the general path instead; when every field came
/// as expected and [`Fields::end`] agrees, the values are those the general
/// path reads.
pub struct Fields<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(text: &'a str) -> Fields<'a> {
        Fields { text, at: 0 }
    }

    /// Moves past `key`: the field as written up to its value, with the
    /// brace or comma before it (`{"e":` first, then `,"E":` and so on).
    #[inline]
    fn key(&mut self, key: &[u8]) -> Option<usize> {
        let rest = self.text.as_bytes().get(self.at..)?;
        rest.starts_with(key).then(|| self.at + key.len())
    }

    /// Moves past `text` written exactly so (a key and a value known
    /// beforehand, such as `{"e":"aggTrade"`).
    #[inline]
    pub fn literal(&mut self, text: &[u8]) -> Option<()> {
        self.at = self.key(text)?;
        Some(())
    }

    /// A string field holding the usual decimal (`key` ends with the
    /// string's opening quote), as [`Decimal8::usual_quoted`] reads it.
    #[inline]
    pub fn usual_decimal(&mut self, key: &[u8]) -> Option<Decimal8> {
        let at = self.key(key)?;
        let (decimal, len) = Decimal8::usual_quoted(&self.text.as_bytes()[at..])?;
        self.at = at + len + 1;
        Some(decimal)
    }

    /// A string field holding the symbol `name` spells (`key` ends with
    /// the string's opening quote), as [`Symbol::quoted_named`] reads it.
    #[inline]
    pub fn symbol_named(&mut self, key: &[u8], name: &str) -> Option<Symbol> {
        let at = self.key(key)?;
        let symbol = Symbol::quoted_named(&self.text.as_bytes()[at..], name.as_bytes())?;
        self.at = at + name.len() + 1;
        Some(symbol)
    }

    /// An integer field, as [`Flat::Int`].
    #[inline]
    pub fn integer(&mut self, key: &[u8]) -> Option<i64> {
        let at = self.key(key)?;
        let bytes = self.text.as_bytes();
        if !bytes.get(at)?.is_ascii_digit() {
            return None;
        }
        let (Flat::Int(number), end) = integer(bytes, at)? else {
            return None;
        };
        self.at = end;
        Some(number)
    }

    /// A boolean or null field.
    #[inline]
    pub fn optional_boolean(&mut self, key: &[u8]) -> Option<Option<bool>> {
        let at = self.key(key)?;
        let bytes = self.text.as_bytes();
        let (value, end) = match bytes.get(at)? {
            b't' => literal(bytes, at, b"true", Some(true))?,
            b'f' => literal(bytes, at, b"false", Some(false))?,
            b'n' => literal(bytes, at, b"null", None)?,
            _ => return None,
        };
        self.at = end;
        Some(value)
    }

    /// A boolean field.
    #[inline]
    pub fn boolean(&mut self, key: &[u8]) -> Option<bool> {
        self.optional_boolean(key)?
    }

    /// Whether the object ends right after the fields read.
    pub fn end(&self) -> Option<()> {
        (self.text.as_bytes().get(self.at..) == Some(b"}".as_slice())).then_some(())
    }
}

/// The bytes that end a plain string: its quote, or what only a string
/// with escapes or an invalid one holds (a backslash, a control character).
const ENDS_PLAIN_STRING: [bool; 256] = {
    let mut ends = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        ends[byte] = true;
        byte += 1;
    }
    ends[b'"' as usize] = true;
    ends[b'\\' as usize] = true;
    ends
};

/// The string whose opening quote is at `at`, and the index after its
/// closing quote.
#[inline]
fn plain_string(text: &str, at: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let length = bytes[start..]
        .iter()
        .position(|&byte| ENDS_PLAIN_STRING[usize::from(byte)])?;
    let end = start + length;
    if bytes[end] != b'"' {
        return None;
    }
    // Quotes are ASCII, so both ends are character boundaries.
    Some((&text[start..end], end + 1))
}

/// The value that starts at `at`, and the index after it.
fn value(text: &str, at: usize) -> Option<(Flat<'_>, usize)> {
    let bytes = text.as_bytes();
    match bytes.get(at)? {
        b'"' => plain_string(text, at).map(|(string, end)| (Flat::Str(string), end)),
        b't' => literal(bytes, at, b"true", Flat::Bool(true)),
        b'f' => literal(bytes, at, b"false", Flat::Bool(false)),
        b'n' => literal(bytes, at, b"null", Flat::Null),
        b'0'..=b'9' => integer(bytes, at),
        _ => None,
    }
}

fn literal<T>(bytes: &[u8], at: usize, word: &[u8], value: T) -> Option<(T, usize)> {
    bytes[at..]
        .starts_with(word)
        .then_some((value, at + word.len()))
}

/// A non-negative integer without a leading zero (JSON's rule), within
/// `i64`, and not followed by a fraction or an exponent. One pass over the
/// digits, eight at a time while eight are there; the first 18 always fit
/// an `i64`, so they are added without the overflow checks the release
/// profile would otherwise put on each.
#[inline]
fn integer(bytes: &[u8], at: usize) -> Option<(Flat<'static>, usize)> {
    let digits = &bytes[at..];
    let mut number = 0i64;
    let mut length = 0;
    // Eight digits at a time, twice at most (sixteen digits fit an i64):
    // a microsecond time has 16, an id 10 or so.
    while length < 16 {
        let Some(eight) = digits.get(length..).and_then(eight_digits) else {
            break;
        };
        // Below 10^16: no overflow.
        number = number.wrapping_mul(100_000_000).wrapping_add(eight as i64);
        length += 8;
    }
    while let Some(&byte) = digits.get(length) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        number = if length < 18 {
            number.wrapping_mul(10).wrapping_add(i64::from(digit))
        } else {
            number.checked_mul(10)?.checked_add(i64::from(digit))?
        };
        length += 1;
    }
    if length > 1 && digits[0] == b'0' {
        return None;
    }
    let end = at + length;
    if matches!(bytes.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((Flat::Int(number), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Option<Vec<(&str, Flat<'_>)>> {
        let mut fields = Vec::new();
        read_flat(text, |key, value| {
            fields.push((key, value));
            Some(())
        })?;
        Some(fields)
    }

    #[test]
    fn reads_the_usual_event_and_refuses_what_it_cannot_read_exactly() {
        assert_eq!(
            read(r#"{"e":"aggTrade","E":1672515782136,"p":"0.001","m":true,"M":false,"x":null}"#),
            Some(vec![
                ("e", Flat::Str("aggTrade")),
                ("E", Flat::Int(1_672_515_782_136)),
                ("p", Flat::Str("0.001")),
                ("m", Flat::Bool(true)),
                ("M", Flat::Bool(false)),
                ("x", Flat::Null),
            ])
        );
        assert_eq!(
            read(r#"{"a":0,"b":"é"}"#),
            Some(vec![("a", Flat::Int(0)), ("b", Flat::Str("é"))])
        );
        assert_eq!(
            read(r#"{"a":9223372036854775807}"#),
            Some(vec![("a", Flat::Int(i64::MAX))])
        );
        for refused in [
            "",
            "{}",
            r#"{"a":1} "#,
            r#" {"a":1}"#,
            r#"{"a": 1}"#,
            r#"{"a":1,}"#,
            r#"{"a":1}}"#,
            r#"{"a":-1}"#,
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            r#"{"a":1.0}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1E3}"#,
            r#"{"a":9223372036854775808}"#,
            r#"{"a":"x\"y"}"#,
            r#"{"a":"x\u0041"}"#,
            "{\"a\":\"x\ty\"}",
            r#"{"a\u0041":1}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a""#,
            r#"{"a":"#,
            r#"{"a":1"#,
            r#"{a:1}"#,
        ] {
            assert_eq!(read(refused), None, "{refused}");
        }
    }

    proptest::proptest! {
        /// Integers of every length around the eight-digit words (leading
        /// zeros, a fraction or an exponent after them, past `i64`) read
        /// as serde_json reads them, and refused where it does not read
        /// an `i64`.
        #[test]
        fn integers_read_as_serde_json_reads_them(
            digits in "[0-9]{1,21}",
            tail in proptest::sample::select(vec!["", ".5", "e3", "E1", "0", "x"]),
        ) {
            let text = format!(r#"{{"a":{digits}{tail}}}"#);
            let ours = read(&text).map(|fields| fields[0].1);
            let theirs = serde_json::from_str::<std::collections::BTreeMap<String, serde_json::Value>>(&text)
                .ok()
                .and_then(|object| object["a"].as_i64())
                .filter(|_| tail.is_empty() || tail == "0");
            match ours {
                Some(value) => proptest::prop_assert_eq!(Some(value), theirs.map(Flat::Int), "{}", text),
                None => proptest::prop_assert_eq!(theirs, None, "{}", text),
            }
        }
    }

    #[test]
    fn stops_when_told() {
        let mut seen = 0;
        assert_eq!(
            read_flat(r#"{"a":1,"b":2}"#, |_, _| {
                seen += 1;
                None
            }),
            None
        );
        assert_eq!(seen, 1);
    }
}
