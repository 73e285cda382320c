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
use arrow_buffer::BooleanBuffer;
use arrow_schema::ArrowError;

use crate::domain::{Source, StreamKind, TimeUs};

use super::schema::{decimal_type, schema_for};

/// An `Int64` column (ids, counts).
pub fn ids(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// A decimal column from values in units of 10^-8 (as
/// [`crate::domain::Decimal8::scaled`]).
pub fn decimals(scaled: impl Iterator<Item = i128>) -> ArrayRef {
    Arc::new(Decimal128Array::from_iter_values(scaled).with_data_type(decimal_type()))
}

/// A timestamp column (µs, UTC) without nulls.
pub fn times(values: impl Iterator<Item = TimeUs>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// A timestamp column (µs, UTC) that may hold nulls.
pub fn optional_times(values: impl Iterator<Item = Option<TimeUs>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values).with_timezone("UTC"))
}

/// A boolean column without nulls.
pub fn flags(values: impl Iterator<Item = bool>) -> ArrayRef {
    Arc::new(BooleanArray::new(values.collect::<BooleanBuffer>(), None))
}

/// A boolean column that may hold nulls.
pub fn optional_flags(values: impl Iterator<Item = Option<bool>>) -> ArrayRef {
    Arc::new(values.collect::<BooleanArray>())
}

/// A text column that may hold nulls.
pub fn optional_texts<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

/// The `source` column.
pub fn sources(values: impl Iterator<Item = Source>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values.map(Source::name)))
}

/// The record batch of a file of `kind` from its columns in schema order;
/// an error when a column is not of its field's type or length.
pub fn batch(kind: StreamKind, columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(schema_for(kind), columns)
}
