//! Integration tests of the fake exchange: plain WebSocket and HTTP clients on
//! 127.0.0.1 see each documented behaviour. One test binary, one module per area.

#[path = "fake/support.rs"]
mod support;

#[path = "fake/websocket.rs"]
mod websocket;

#[path = "fake/streams.rs"]
mod streams;

#[path = "fake/rest.rs"]
mod rest;

#[path = "fake/faults.rs"]
mod faults;

#[path = "fake/replay.rs"]
mod replay;

#[path = "fake/firehose.rs"]
mod firehose;
