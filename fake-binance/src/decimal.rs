//! Exact decimal amounts as integers of 1e-8 ("atoms"), the precision spot sends.
//!
//! Prices and quantities never pass through `f64`: a float cannot hold
//! `61685.99` exactly, and the recorder's tests compare strings byte for byte.
//! Spot prints every amount with eight decimals ([`format_atoms`]); futures
//! print a symbol's amounts with its own precision ([`push_decimals`]).

use thiserror::Error;

/// Number of atoms in one unit: spot prints exactly eight decimals.
pub const ATOMS_PER_UNIT: i64 = 100_000_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecimalError {
    #[error("empty decimal")]
    Empty,
    #[error("decimal {text:?} has a character that is not a digit")]
    NotADigit { text: String },
    #[error("decimal {text:?} has more than 8 significant decimals")]
    TooPrecise { text: String },
    #[error("decimal {text:?} does not fit in 64 bits of 1e-8 units")]
    Overflow { text: String },
}

/// Formats atoms as spot does: `"61685.99000000"`, `"0.00017000"`.
pub fn format_atoms(atoms: i64) -> String {
    let mut text = String::with_capacity(24);
    push_atoms(&mut text, atoms);
    text
}

/// Appends the spot form of `atoms` to `out` (avoids an allocation per field on the hot path).
pub fn push_atoms(out: &mut String, atoms: i64) {
    use std::fmt::Write;
    let sign = if atoms < 0 { "-" } else { "" };
    let magnitude = atoms.unsigned_abs();
    let units = magnitude / ATOMS_PER_UNIT as u64;
    let fraction = magnitude % ATOMS_PER_UNIT as u64;
    write!(out, "{sign}{units}.{fraction:08}").expect("writing to a String cannot fail");
}

/// `atoms` with `decimals` decimals, as [`push_decimals`] writes it.
pub fn format_decimals(atoms: i64, decimals: u32) -> String {
    let mut text = String::with_capacity(24);
    push_decimals(&mut text, atoms, decimals);
    text
}

/// Appends `atoms` with `decimals` decimals (0 to 8; none and no point for
/// 0), as futures print a symbol's amounts: `"27785.00"`, `"0.014"`, `"3"`.
/// A value that has more significant decimals than that gets as many as it
/// needs: the string is never rounded, so its value is always `atoms`.
pub fn push_decimals(out: &mut String, atoms: i64, decimals: u32) {
    use std::fmt::Write;
    if decimals >= 8 {
        // Spot's form, on its hot path.
        push_atoms(out, atoms);
        return;
    }
    let decimals = decimals.max(significant_decimals(atoms));
    let sign = if atoms < 0 { "-" } else { "" };
    let magnitude = atoms.unsigned_abs();
    let units = magnitude / ATOMS_PER_UNIT as u64;
    if decimals == 0 {
        write!(out, "{sign}{units}").expect("writing to a String cannot fail");
        return;
    }
    let fraction = (magnitude % ATOMS_PER_UNIT as u64) / 10_u64.pow(8 - decimals);
    let width = decimals as usize;
    write!(out, "{sign}{units}.{fraction:0width$}").expect("writing to a String cannot fail");
}

/// The number of decimals `atoms` needs to be written exactly: 2 for
/// `0.01` (1,000,000 atoms), 0 for a whole number, 8 at most.
pub fn significant_decimals(atoms: i64) -> u32 {
    let mut fraction = atoms.unsigned_abs() % ATOMS_PER_UNIT as u64;
    if fraction == 0 {
        return 0;
    }
    let mut decimals = 8;
    while fraction.is_multiple_of(10) {
        fraction /= 10;
        decimals -= 1;
    }
    decimals
}

/// Parses a decimal string (`"0.001"`, `"61685.99000000"`, `"3"`) into atoms.
/// Trailing zeros beyond eight decimals are accepted; other digits there are an error,
/// because rounding would silently change replayed data.
pub fn parse_atoms(text: &str) -> Result<i64, DecimalError> {
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (integer_part, fraction_part) = match body.split_once('.') {
        Some((integer, fraction)) => (integer, fraction),
        None => (body, ""),
    };
    if integer_part.is_empty() && fraction_part.is_empty() {
        return Err(DecimalError::Empty);
    }
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(integer_part) || !all_digits(fraction_part) {
        return Err(DecimalError::NotADigit {
            text: text.to_owned(),
        });
    }
    let overflow = || DecimalError::Overflow {
        text: text.to_owned(),
    };
    let mut units: i64 = 0;
    for digit in integer_part.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|value| value.checked_add(i64::from(digit - b'0')))
            .ok_or_else(overflow)?;
    }
    let mut fraction_atoms: i64 = 0;
    for (position, digit) in fraction_part.bytes().enumerate() {
        if position >= 8 {
            if digit != b'0' {
                return Err(DecimalError::TooPrecise {
                    text: text.to_owned(),
                });
            }
            continue;
        }
        fraction_atoms += i64::from(digit - b'0') * 10_i64.pow(7 - position as u32);
    }
    let atoms = units
        .checked_mul(ATOMS_PER_UNIT)
        .and_then(|value| value.checked_add(fraction_atoms))
        .ok_or_else(overflow)?;
    Ok(if negative { -atoms } else { atoms })
}

/// Quote amount (price x quantity) in atoms, truncated to eight decimals like spot's volumes.
/// Sums should be accumulated with [`quote_product_wide`] and divided once, so that
/// truncation happens once per kline and not once per trade.
pub fn quote_atoms(price_atoms: i64, quantity_atoms: i64) -> i64 {
    (quote_product_wide(price_atoms, quantity_atoms) / i128::from(ATOMS_PER_UNIT)) as i64
}

/// price x quantity at 1e-16 scale, exact.
pub fn quote_product_wide(price_atoms: i64, quantity_atoms: i64) -> i128 {
    i128::from(price_atoms) * i128::from(quantity_atoms)
}

/// A coin-margined trade's base-asset amount scaled by 1e-16, as
/// [`quote_product_wide`]: `quantity` contracts of `contract_size` USD at
/// `price` USD each, `quantity * contract_size / price` (truncated at
/// 1e-16; a kline sums them, then prints eight decimals).
pub fn base_product_wide(price_atoms: i64, quantity_atoms: i64, contract_size: i64) -> i128 {
    if price_atoms <= 0 {
        return 0;
    }
    i128::from(quantity_atoms) * i128::from(contract_size) * 10_000_000_000_000_000
        / i128::from(price_atoms)
}

/// Converts a 1e-16 scaled sum back to atoms (truncating, as volumes are printed with 8 decimals).
pub fn wide_to_atoms(wide: i128) -> i64 {
    (wide / i128::from(ATOMS_PER_UNIT)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_eight_decimals() {
        assert_eq!(format_atoms(6_168_599_000_000), "61685.99000000");
        assert_eq!(format_atoms(17_000), "0.00017000");
        assert_eq!(format_atoms(0), "0.00000000");
        assert_eq!(format_atoms(-150_000_000), "-1.50000000");
    }

    #[test]
    fn formats_with_a_symbols_decimals_and_never_rounds() {
        let with = format_decimals;
        // The real futures strings of reference 4.4 and the dstream capture.
        assert_eq!(with(2_778_500_000_000, 2), "27785.00");
        assert_eq!(with(1_400_000, 3), "0.014");
        assert_eq!(with(300_000_000, 0), "3");
        assert_eq!(with(0, 4), "0.0000");
        assert_eq!(with(0, 0), "0");
        assert_eq!(with(-150_000_000, 2), "-1.50");
        assert_eq!(with(6_168_599_000_000, 8), "61685.99000000");
        // More significant decimals than asked: as many as the value needs.
        assert_eq!(with(101_000_000, 1), "1.01");
        assert_eq!(with(1, 2), "0.00000001");
        assert_eq!(with(5, 20), "0.00000005", "8 decimals at most");
        for atoms in [0, 1, 1_400_000, 101_000_000, 2_778_512_345_678, -7] {
            for decimals in 0..=8 {
                assert_eq!(parse_atoms(&with(atoms, decimals)), Ok(atoms));
            }
        }
        assert_eq!(significant_decimals(1_000_000), 2);
        assert_eq!(significant_decimals(10_000_000), 1);
        assert_eq!(significant_decimals(300_000_000), 0);
        assert_eq!(significant_decimals(1), 8);
    }

    #[test]
    fn parses_and_round_trips() {
        for text in ["61685.99000000", "0.00017000", "0.00000001", "123.45600000"] {
            assert_eq!(format_atoms(parse_atoms(text).unwrap()), text);
        }
        assert_eq!(parse_atoms("0.001").unwrap(), 100_000);
        assert_eq!(parse_atoms("3").unwrap(), 300_000_000);
        assert_eq!(parse_atoms("1.0000000000").unwrap(), 100_000_000);
        assert!(matches!(
            parse_atoms("1.000000001"),
            Err(DecimalError::TooPrecise { .. })
        ));
        assert!(matches!(
            parse_atoms("1e5"),
            Err(DecimalError::NotADigit { .. })
        ));
        assert!(matches!(parse_atoms(""), Err(DecimalError::Empty)));
        assert!(matches!(
            parse_atoms("99999999999999999999"),
            Err(DecimalError::Overflow { .. })
        ));
    }

    #[test]
    fn quote_is_exact_then_truncated() {
        // 61685.99 x 0.00017 = 10.4866183
        assert_eq!(
            format_atoms(quote_atoms(6_168_599_000_000, 17_000)),
            "10.48661830"
        );
        // 0.00000001 x 0.5 = 0.000000005 -> truncated to 0.00000000
        assert_eq!(quote_atoms(1, 50_000_000), 0);
    }
}
