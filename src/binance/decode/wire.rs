//! Serde shapes of Binance's JSON. Private to the decoder (`decode.rs`),
//! in a file of its own so that the decoder's file holds its logic.
#![allow(non_snake_case)]

use super::*;

/// A string borrowed from the frame when it has no escape. (serde
/// borrows a `Cow` only when it is the field's whole type: in an
/// `Option` it would be copied into a new `String` every frame.)
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub stream: Option<Text<'a>>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub e: Option<Text<'a>>,
    pub id: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub error: Option<ErrorBody>,
    pub code: Option<i64>,
    pub msg: Option<String>,
}

#[derive(Deserialize)]
pub struct ErrorBody {
    pub code: i64,
    pub msg: String,
}

#[derive(Deserialize)]
pub struct EventTag<'a> {
    #[serde(borrow)]
    pub e: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Trade<'a> {
    #[serde(borrow)]
    pub e: Option<Text<'a>>,
    pub E: i64,
    #[serde(borrow)]
    pub s: Cow<'a, str>,
    pub t: i64,
    #[serde(borrow)]
    pub p: Cow<'a, str>,
    #[serde(borrow)]
    pub q: Cow<'a, str>,
    pub T: i64,
    pub m: bool,
    pub M: Option<bool>,
    pub X: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct AggTrade<'a> {
    #[serde(borrow)]
    pub e: Option<Text<'a>>,
    pub E: i64,
    #[serde(borrow)]
    pub s: Cow<'a, str>,
    pub a: i64,
    #[serde(borrow)]
    pub p: Cow<'a, str>,
    #[serde(borrow)]
    pub q: Cow<'a, str>,
    pub f: i64,
    pub l: i64,
    pub T: i64,
    pub m: bool,
    pub M: Option<bool>,
}

#[derive(Deserialize)]
pub struct KlineEvent<'a> {
    #[serde(borrow)]
    pub e: Option<Text<'a>>,
    pub E: i64,
    #[serde(borrow)]
    pub s: Cow<'a, str>,
    #[serde(borrow)]
    pub k: Kline<'a>,
}

#[derive(Deserialize)]
pub struct Kline<'a> {
    pub t: i64,
    pub T: i64,
    #[serde(borrow)]
    pub i: Cow<'a, str>,
    pub f: i64,
    pub L: i64,
    #[serde(borrow)]
    pub o: Cow<'a, str>,
    #[serde(borrow)]
    pub c: Cow<'a, str>,
    #[serde(borrow)]
    pub h: Cow<'a, str>,
    #[serde(borrow)]
    pub l: Cow<'a, str>,
    #[serde(borrow)]
    pub v: Cow<'a, str>,
    pub n: i64,
    pub x: bool,
    #[serde(borrow)]
    pub q: Cow<'a, str>,
    #[serde(borrow)]
    pub V: Cow<'a, str>,
    #[serde(borrow)]
    pub Q: Cow<'a, str>,
}

#[derive(Deserialize)]
pub struct ServerShutdown {
    pub E: i64,
}
