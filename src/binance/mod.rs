//! Everything that speaks Binance: stream names, frame decoding, the
//! WebSocket connection and the REST client.

pub mod decode;
pub mod streams;
pub mod rest;
pub mod ws;
