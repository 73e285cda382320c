//! A file's columns built from plain values, a column at a time: how rows
//! held packed (`recorder/held.rs`) become a spilled run's or a sealed
//! file's record batches without being made into [`crate::domain::Row`]s
//! and read back a cell at a time. The types are the schema's
//! ([`schema_for`]); which value goes in which column is the caller's, and
//! [`batch`] checks the result against the schema.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::ArrowError;

use crate::domain::{Source, StreamKind, TimeUs};

use super::schema::{decimal_type, schema_for};

/// An `Int64` column (ids, counts): `value` of each of `rows`.
pub fn ids<T>(rows: &[T], value: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(value)))
}

/// A decimal column from values in units of 10^-8 (as
/// [`crate::domain::Decimal8::scaled`]).
pub fn decimals<T>(rows: &[T], scaled: impl Fn(&T) -> i128) -> ArrayRef {
    Arc::new(
        Decimal128Array::from_iter_values(rows.iter().map(scaled)).with_data_type(decimal_type()),
    )
}

/// A timestamp column (µs, UTC) without nulls.
pub fn times<T>(rows: &[T], value: impl Fn(&T) -> TimeUs) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(value)).with_timezone("UTC"),
    )
}

/// A timestamp column (µs, UTC) that may hold nulls: the values and the
/// validity each in one pass over `rows` (a builder's pushes, a value at
/// a time, cost several times as much).
pub fn optional_times<T>(rows: &[T], value: impl Fn(&T) -> Option<TimeUs>) -> ArrayRef {
    let values: ScalarBuffer<TimeUs> = rows.iter().map(|row| value(row).unwrap_or(0)).collect();
    let nulls = validity(rows, |row| value(row).is_some());
    Arc::new(TimestampMicrosecondArray::new(values, nulls).with_timezone("UTC"))
}

/// A boolean column without nulls, its bits set 64 at a time.
pub fn flags<T>(rows: &[T], value: impl Fn(&T) -> bool) -> ArrayRef {
    Arc::new(BooleanArray::new(bits(rows, value), None))
}

/// A boolean column that may hold nulls.
pub fn optional_flags<T>(rows: &[T], value: impl Fn(&T) -> Option<bool>) -> ArrayRef {
    let values = bits(rows, |row| value(row).unwrap_or(false));
    Arc::new(BooleanArray::new(
        values,
        validity(rows, |row| value(row).is_some()),
    ))
}

/// A text column that may hold nulls.
pub fn optional_texts<'a, T>(rows: &[T], value: impl Fn(&T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(value).collect::<StringArray>())
}

/// The `source` column: its names' bytes and offsets written straight
/// into two vectors sized once (`StringArray::from_iter_values` grows
/// its values from nothing).
pub fn sources<T>(rows: &[T], source: impl Fn(&T) -> Source) -> ArrayRef {
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    let mut bytes = Vec::with_capacity(rows.len() * Source::Ws.name().len());
    offsets.push(0_i32);
    for row in rows {
        bytes.extend_from_slice(source(row).name().as_bytes());
        offsets.push(i32::try_from(bytes.len()).expect("a batch's names fit i32 offsets"));
    }
    Arc::new(StringArray::new(
        OffsetBuffer::new(offsets.into()),
        bytes.into(),
        None,
    ))
}

/// `value` of each of `rows` as Arrow's bits.
fn bits<T>(rows: &[T], value: impl Fn(&T) -> bool) -> BooleanBuffer {
    BooleanBuffer::collect_bool(rows.len(), |at| value(&rows[at]))
}

/// The validity of a column, `None` when every row holds a value (as
/// Arrow's builders leave it).
fn validity<T>(rows: &[T], valid: impl Fn(&T) -> bool) -> Option<NullBuffer> {
    let nulls = NullBuffer::new(bits(rows, valid));
    (nulls.null_count() > 0).then_some(nulls)
}

/// The record batch of a file of `kind` from its columns in schema order;
/// an error when a column is not of its field's type or length.
pub fn batch(kind: StreamKind, columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(schema_for(kind), columns)
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;

    use super::*;

    /// Each column equals what Arrow's own builders make of the same
    /// values (nulls, no nulls, a length off a whole word of bits, none).
    #[test]
    fn columns_equal_arrows_builders() {
        for len in [0_usize, 1, 63, 64, 65, 1_000] {
            let rows: Vec<i64> = (0..len as i64).collect();
            for with_nulls in [false, true] {
                let time = |&row: &i64| (!with_nulls || row % 3 != 0).then_some(row * 1_000);
                let flag = |&row: &i64| (!with_nulls || row % 5 != 1).then_some(row % 2 == 0);
                let expected_times: ArrayRef = Arc::new(
                    TimestampMicrosecondArray::from_iter(rows.iter().map(time))
                        .with_timezone("UTC"),
                );
                let times = optional_times(&rows, time);
                assert_eq!(&times, &expected_times, "{len} rows, nulls {with_nulls}");
                assert_eq!(times.null_count(), expected_times.null_count());
                let expected_flags: ArrayRef =
                    Arc::new(rows.iter().map(flag).collect::<BooleanArray>());
                let optional = optional_flags(&rows, flag);
                assert_eq!(&optional, &expected_flags, "{len} rows, nulls {with_nulls}");
                assert_eq!(optional.nulls().is_some(), expected_flags.nulls().is_some());
            }
            let expected_flags: ArrayRef = Arc::new(
                rows.iter()
                    .map(|row| Some(row % 7 < 3))
                    .collect::<BooleanArray>(),
            );
            assert_eq!(&flags(&rows, |row| row % 7 < 3), &expected_flags);
            let source = |&row: &i64| {
                if row % 4 == 0 {
                    Source::Rest
                } else {
                    Source::Ws
                }
            };
            let expected_sources: ArrayRef = Arc::new(StringArray::from_iter_values(
                rows.iter().map(|row| source(row).name()),
            ));
            assert_eq!(&sources(&rows, source), &expected_sources);
        }
    }
}
