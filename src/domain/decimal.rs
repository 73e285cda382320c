//! [`Decimal8`], the dataset's exact decimal: parsed without rounding
//! (the usual form in one pass, anything else by the general parse),
//! printed padded to its scale, serialised as its decimal string.

use std::fmt;
use std::str::FromStr;

/// An exact decimal with 8 fractional digits, stored as the integer value
/// times 10^8: the `decimal128(38, 8)` of the dataset.
///
/// Parsing never rounds: a string with a non-zero ninth decimal, or one that
/// does not fit 38 digits, is an error. (Hand-written rather than taken from
/// a decimal crate because the one rule we need, "exactly representable at
/// scale 8 or refuse", is a dozen lines and the crates round by default.)
///
/// Serialised (in WAL records of REST rows) as its exact decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Decimal8(i128);

pub const DECIMAL_SCALE: u32 = 8;
pub const DECIMAL_PRECISION: u8 = 38;
const DECIMAL_FACTOR: i128 = 100_000_000;
const DECIMAL_MAX_ABS: i128 = 10i128.pow(38) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("{0:?} is not a decimal number")]
    Syntax(String),
    #[error("{0:?} has more than 8 significant decimal places and would be rounded")]
    TooPrecise(String),
    #[error("{0:?} does not fit decimal(38, 8)")]
    TooLarge(String),
}

impl Decimal8 {
    pub const ZERO: Decimal8 = Decimal8(0);

    pub fn from_scaled(scaled: i128) -> Decimal8 {
        Decimal8(scaled)
    }

    /// The value times 10^8.
    pub fn scaled(self) -> i128 {
        self.0
    }
}

impl Decimal8 {
    /// The decimal written in the usual form (at most 10 integer and 8
    /// fraction digits) at the start of `text` and closed by a quote, as
    /// [`str::parse`] reads the text before the quote, and the length up to
    /// the quote; `None` for any other text, which `parse` may still read
    /// or refuse.
    #[inline]
    pub fn usual_quoted(text: &[u8]) -> Option<(Decimal8, usize)> {
        match usual_prefix(text)? {
            (scaled, len) if text.get(len) == Some(&b'"') => Some((Decimal8(scaled), len)),
            _ => None,
        }
    }
}

impl FromStr for Decimal8 {
    type Err = DecimalError;

    fn from_str(text: &str) -> Result<Decimal8, DecimalError> {
        match parse_usual(text.as_bytes()) {
            Some(scaled) => Ok(Decimal8(scaled)),
            None => parse_any(text),
        }
    }
}

/// The usual price or quantity (`73109.38000000`, `-0.5`, `100`): at most
/// 10 integer digits and 1 to 8 of fraction, read in one pass (this runs
/// twice for every trade); `None` for anything else, which [`parse_any`]
/// then reads or refuses.
fn parse_usual(text: &[u8]) -> Option<i128> {
    match usual_prefix(text)? {
        (scaled, len) if len == text.len() => Some(scaled),
        _ => None,
    }
}

/// The usual decimal [`parse_usual`] reads at the start of `text`, and its
/// length: it ends at the first byte past its digits (and its fraction's)
/// that is not one. 18 digits fit a u64, so no step can overflow.
#[inline]
fn usual_prefix(text: &[u8]) -> Option<(i128, usize)> {
    let negative = text.first() == Some(&b'-');
    let start = usize::from(negative);
    let digits = &text[start..];
    let digit_at = |at: usize| {
        digits
            .get(at)
            .map(|byte| byte.wrapping_sub(b'0'))
            .filter(|digit| *digit <= 9)
    };
    let mut value = 0u64;
    let mut end = 0;
    while let Some(digit) = digit_at(end) {
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        end += 1;
    }
    if end == 0 || end > 10 {
        return None;
    }
    let mut padding = DECIMAL_SCALE;
    if digits.get(end) == Some(&b'.') {
        end += 1;
        let fraction_start = end;
        // The usual fraction has all eight digits: read them as one word.
        if let Some(eight) = digits.get(end..).and_then(eight_digits) {
            if digit_at(end + 8).is_some() {
                return None;
            }
            let scaled = i128::from(value.wrapping_mul(100_000_000).wrapping_add(eight));
            return Some((if negative { -scaled } else { scaled }, start + end + 8));
        }
        while let Some(digit) = digit_at(end) {
            if end - fraction_start == DECIMAL_SCALE as usize {
                return None;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            end += 1;
        }
        let fraction_len = end - fraction_start;
        if fraction_len == 0 {
            return None;
        }
        padding -= fraction_len as u32;
    }
    let scaled = i128::from(value.wrapping_mul(10_u64.pow(padding)));
    Some((if negative { -scaled } else { scaled }, start + end))
}

/// The value of the eight ASCII digits `bytes` starts with (the first the
/// most significant); `None` when fewer than eight bytes are there or one
/// of them is not a digit. Read as one word, not digit by digit: the
/// usual fraction of a price or quantity and most of a microsecond time
/// or an id are eight digits, and this runs for each of them in every
/// frame. (Reading fewer than eight digits as a word too measured no
/// fewer instructions: docs/BENCHMARKS.md, session 32.)
#[inline]
pub(crate) fn eight_digits(bytes: &[u8]) -> Option<u64> {
    const LOW_NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    // The first byte is the word's lowest.
    let word = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    // A digit (0x30 to 0x39) has 3 for its high nibble, and still has
    // after adding 6; every other byte fails one of the two (one that
    // carries into the next byte when 6 is added, 0xFA and up, fails the
    // first).
    let high = word & HIGH_NIBBLES;
    let after_six = word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES;
    if high | (after_six >> 4) != 0x3333_3333_3333_3333 {
        return None;
    }
    // Pairs, then fours, then all eight: each the more significant half
    // times its weight plus the other (no lane outgrows its width).
    let mut value = word & LOW_NIBBLES;
    value = (value.wrapping_mul(10).wrapping_add(value >> 8)) & 0x00FF_00FF_00FF_00FF;
    value = (value.wrapping_mul(100).wrapping_add(value >> 16)) & 0x0000_FFFF_0000_FFFF;
    value = (value.wrapping_mul(10_000).wrapping_add(value >> 32)) & 0xFFFF_FFFF;
    Some(value)
}

/// Any decimal text [`Decimal8`] accepts: a sign, digits, a fraction
/// whose digits past the scale are zeros, up to 38 digits in all.
fn parse_any(text: &str) -> Result<Decimal8, DecimalError> {
    let syntax_error = || DecimalError::Syntax(text.to_owned());
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (integer_digits, fraction_digits) = match unsigned.split_once('.') {
        Some((integer, fraction)) => (integer, fraction),
        None => (unsigned, ""),
    };
    if integer_digits.is_empty() && fraction_digits.is_empty() {
        return Err(syntax_error());
    }
    let all_digits = |digits: &str| digits.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(integer_digits) || !all_digits(fraction_digits) {
        return Err(syntax_error());
    }
    let (kept_fraction, dropped_fraction) =
        fraction_digits.split_at(fraction_digits.len().min(DECIMAL_SCALE as usize));
    if dropped_fraction.bytes().any(|byte| byte != b'0') {
        return Err(DecimalError::TooPrecise(text.to_owned()));
    }
    let scaled = if integer_digits.len() + DECIMAL_SCALE as usize <= NARROW_DIGITS {
        scaled_narrow(integer_digits, kept_fraction)
    } else {
        scaled_wide(integer_digits, kept_fraction)
            .filter(|scaled| *scaled <= DECIMAL_MAX_ABS)
            .ok_or_else(|| DecimalError::TooLarge(text.to_owned()))?
    };
    Ok(Decimal8(if negative { -scaled } else { scaled }))
}

/// Scaled digits that fit a u64 with no check per digit: nearly every
/// price and quantity.
const NARROW_DIGITS: usize = 18;

/// `integer` and `fraction` (ASCII digits, at most [`NARROW_DIGITS`] with
/// the fraction padded to the scale) as units of 10^-8.
fn scaled_narrow(integer: &str, fraction: &str) -> i128 {
    let digits = integer.bytes().chain(fraction.bytes());
    let unpadded = digits.fold(0_u64, |value, byte| value * 10 + u64::from(byte - b'0'));
    let padding = DECIMAL_SCALE - fraction.len() as u32;
    i128::from(unpadded * 10_u64.pow(padding))
}

/// [`scaled_narrow`] for any number of digits; `None` past i128.
fn scaled_wide(integer: &str, fraction: &str) -> Option<i128> {
    let padding = std::iter::repeat_n(b'0', DECIMAL_SCALE as usize - fraction.len());
    integer
        .bytes()
        .chain(fraction.bytes())
        .chain(padding)
        .try_fold(0_i128, |value, byte| {
            value.checked_mul(10)?.checked_add(i128::from(byte - b'0'))
        })
}

impl serde::Serialize for Decimal8 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal8 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Decimal8, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Decimal8 {
    /// Always 8 decimals, as Binance spot prints them (`"61685.99000000"`).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let factor = DECIMAL_FACTOR as u128;
        write!(
            formatter,
            "{sign}{}.{:08}",
            magnitude / factor,
            magnitude % factor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_parses_exactly_and_prints_padded() {
        let price: Decimal8 = "61685.99000000".parse().expect("valid");
        assert_eq!(price.scaled(), 6_168_599_000_000);
        assert_eq!(price.to_string(), "61685.99000000");
        assert_eq!(
            "0.001".parse::<Decimal8>().expect("valid").to_string(),
            "0.00100000"
        );
        assert_eq!(
            "100".parse::<Decimal8>().expect("valid").to_string(),
            "100.00000000"
        );
        assert_eq!(
            "-0.5".parse::<Decimal8>().expect("valid").to_string(),
            "-0.50000000"
        );
        assert_eq!(
            ".5".parse::<Decimal8>().expect("valid").scaled(),
            50_000_000
        );
        assert_eq!(
            "0.123456780000"
                .parse::<Decimal8>()
                .expect("trailing zeros")
                .scaled(),
            12_345_678
        );
    }

    #[test]
    fn decimal_refuses_rounding_and_garbage() {
        assert!(matches!(
            "0.123456789".parse::<Decimal8>(),
            Err(DecimalError::TooPrecise(_))
        ));
        assert!(matches!(
            "1e5".parse::<Decimal8>(),
            Err(DecimalError::Syntax(_))
        ));
        assert!(matches!(
            "".parse::<Decimal8>(),
            Err(DecimalError::Syntax(_))
        ));
        assert!(matches!(
            ".".parse::<Decimal8>(),
            Err(DecimalError::Syntax(_))
        ));
        assert!(matches!(
            "1.2.3".parse::<Decimal8>(),
            Err(DecimalError::Syntax(_))
        ));
        let thirty_one_digits = "1".repeat(31);
        assert!(matches!(
            thirty_one_digits.parse::<Decimal8>(),
            Err(DecimalError::TooLarge(_))
        ));
        let thirty_digits = "9".repeat(30);
        assert!(thirty_digits.parse::<Decimal8>().is_ok());
    }
}

/// Fuzz-style property tests of [`Decimal8`] parsing: arbitrary and mutated
/// decimal strings parse exactly or give a [`DecimalError`], never a panic.
#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_input::mutated;

    fn decimal_seeds() -> Vec<Vec<u8>> {
        [
            "73109.38000000",
            "0.00040000",
            "-0.5",
            ".5",
            "100",
            "+1.00000000",
            "99999999999999999999999999999.99999999",
            "-99999999999999999999999999999.99999999",
        ]
        .into_iter()
        .map(|text| text.as_bytes().to_vec())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn decimal_parsing_never_panics_and_round_trips(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                "[-+]?[0-9]{0,45}(\\.[0-9]{0,20})?".prop_map(String::into_bytes),
                "-?[0-9]{0,11}(\\.[0-9]{0,9})?".prop_map(String::into_bytes),
                mutated(decimal_seeds()),
            ]
        ) {
            let text = String::from_utf8_lossy(&bytes);
            // The one-pass read of the usual text answers as the general
            // parse, or leaves the text to it.
            if let Some(scaled) = parse_usual(text.as_bytes()) {
                prop_assert_eq!(Ok(Decimal8(scaled)), parse_any(&text), "{}", text);
            }
            // Read in a JSON string: the usual text up to its closing
            // quote, whatever follows, and nothing else.
            if !text.contains('"') {
                for tail in ["", ",", "\"", "1\"", "x"] {
                    let quoted = format!("{text}\"{tail}");
                    prop_assert_eq!(
                        Decimal8::usual_quoted(quoted.as_bytes()),
                        parse_usual(text.as_bytes()).map(|scaled| (Decimal8(scaled), text.len())),
                        "{}", quoted
                    );
                }
            }
            if let Ok(value) = text.parse::<Decimal8>() {
                // The narrow path gives what the checked one would.
                let digits = text.trim_start_matches(['-', '+']);
                let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
                let fraction = &fraction[..fraction.len().min(DECIMAL_SCALE as usize)];
                let wide = scaled_wide(integer, fraction);
                prop_assert_eq!(wide.map(i128::unsigned_abs), Some(value.scaled().unsigned_abs()));
                prop_assert!(value.scaled().unsigned_abs() <= DECIMAL_MAX_ABS.unsigned_abs());
                let printed = value.to_string();
                prop_assert_eq!(printed.parse::<Decimal8>(), Ok(value), "round trip of {}", printed);
            }
        }

        #[test]
        fn eight_digits_reads_a_word_as_a_digit_loop_does(
            bytes in prop::collection::vec(
                prop_oneof![
                    8 => b'0'..=b'9',
                    1 => prop::sample::select(vec![0x00, b'/', b':', b'.', b'"', 0x39 + 6, 0xF9, 0xFA, 0xFF, b'0' | 0x80]),
                    1 => any::<u8>(),
                ],
                0..12,
            )
        ) {
            let naive = (bytes.len() >= 8 && bytes[..8].iter().all(u8::is_ascii_digit))
                .then(|| bytes[..8].iter().fold(0u64, |value, byte| value * 10 + u64::from(byte - b'0')));
            prop_assert_eq!(eight_digits(&bytes), naive, "{:?}", bytes);
        }
    }
}
