//! A sealed file's footer metadata, parsed for `verify`: every key of
//! docs/DATASET.md's "File metadata", absences and malformed values listed
//! rather than fatal, so one bad footer is a finding, not a stop.

use crate::domain::{Hour, TimeUs, UnfilledRange};
use crate::parquet_out;

/// The metadata keys every sealed file carries (docs/DATASET.md, "File
/// metadata"); `clock_offset_us` may be `null` and is not checked.
pub const REQUIRED_METADATA: [&str; 13] = [
    "schema_version",
    "recorder_version",
    "market",
    "stream",
    "symbol",
    "hour",
    "row_count",
    "rows_by_source",
    "first_key",
    "last_key",
    "unfilled",
    "coverage_from",
    "coverage_to",
];

/// A footer's key-value metadata, parsed; absent or malformed values are
/// `None` and listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMetadata {
    pub schema_version: Option<u32>,
    pub market: Option<String>,
    pub stream: Option<String>,
    pub symbol: Option<String>,
    pub hour: Option<Hour>,
    pub row_count: Option<u64>,
    /// `(ws, rest)`.
    pub rows_by_source: Option<(u64, u64)>,
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
    pub unfilled: Vec<UnfilledRange>,
    pub coverage_from: Option<TimeUs>,
    pub coverage_to: Option<TimeUs>,
    /// A delivered contract's last hour names its delivery (optional key).
    pub delivered_at: Option<TimeUs>,
    /// A file written at an orderly stop before its hour was finished.
    pub stopped_at: Option<TimeUs>,
    pub missing: Vec<&'static str>,
    pub malformed: Vec<String>,
}

/// Parses `YYYY-MM-DDTHH` (the `hour` metadata value and the CLI's hours).
pub fn parse_hour_text(text: &str) -> Option<Hour> {
    chrono::NaiveDateTime::parse_from_str(&format!("{text}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|time| Hour::containing(time.and_utc().timestamp_micros()))
}

pub fn parse_metadata(pairs: &[(String, String)]) -> ParsedMetadata {
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    let mut parsed = ParsedMetadata {
        missing: REQUIRED_METADATA
            .into_iter()
            .filter(|key| value(key).is_none())
            .collect(),
        ..ParsedMetadata::default()
    };
    let mut malformed = Vec::new();
    let mut integer = |key: &str| -> Option<i64> {
        let text = value(key)?;
        let parsed = text.parse::<i64>().ok();
        if parsed.is_none() {
            malformed.push(format!("{key} {text:?} is not an integer"));
        }
        parsed
    };
    parsed.schema_version = integer("schema_version").and_then(|value| u32::try_from(value).ok());
    parsed.row_count = integer("row_count").and_then(|value| u64::try_from(value).ok());
    parsed.coverage_from = integer("coverage_from");
    parsed.coverage_to = integer("coverage_to");
    parsed.delivered_at = integer("delivered_at");
    parsed.stopped_at = integer("stopped_at");
    parsed.market = value("market").map(str::to_owned);
    parsed.stream = value("stream").map(str::to_owned);
    parsed.symbol = value("symbol").map(str::to_owned);
    if let Some(text) = value("hour") {
        parsed.hour = parse_hour_text(text);
        if parsed.hour.is_none() {
            malformed.push(format!("hour {text:?} is not YYYY-MM-DDTHH"));
        }
    }
    if let Some(text) = value("rows_by_source") {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BySource {
            ws: u64,
            rest: u64,
        }
        match serde_json::from_str::<BySource>(text) {
            Ok(by_source) => parsed.rows_by_source = Some((by_source.ws, by_source.rest)),
            Err(_) => malformed.push(format!(
                "rows_by_source {text:?} is not {{\"ws\":n,\"rest\":n}}"
            )),
        }
    }
    // Keys and holes through the recorder's own range-checked parser; a
    // key it misses is already reported as missing, not twice.
    match parquet_out::parse_summary(pairs) {
        Ok(summary) => {
            parsed.first_key = summary.first_key;
            parsed.last_key = summary.last_key;
            parsed.unfilled = summary.unfilled;
        }
        Err(parquet_out::SummaryError::NoSchemaVersion)
            if parsed.missing.contains(&"schema_version") => {}
        Err(error) => malformed.push(error.to_string()),
    }
    parsed.malformed = malformed;
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_parsed_and_its_absences_listed() {
        let pairs: Vec<(String, String)> = [
            ("schema_version", "1"),
            ("hour", "2026-11-23T10"),
            ("rows_by_source", "{\"ws\":3,\"rest\":1}"),
            ("row_count", "four"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let parsed = parse_metadata(&pairs);
        assert_eq!(parsed.schema_version, Some(1));
        assert_eq!(
            parsed.hour.map(|hour| hour.to_string()).as_deref(),
            Some("2026-11-23T10")
        );
        assert_eq!(parsed.rows_by_source, Some((3, 1)));
        assert_eq!(parsed.row_count, None);
        assert!(parsed
            .malformed
            .iter()
            .any(|text| text.contains("row_count")));
        assert!(parsed.missing.contains(&"market") && !parsed.missing.contains(&"hour"));
    }
}
