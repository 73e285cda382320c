//! Everything that speaks Binance: stream names, frame decoding, the
//! WebSocket connection and the REST client.

pub mod decode;
mod flat_json;
pub mod limiter;
pub mod markets;
pub mod rest;
pub mod streams;
pub mod ws;

/// Installs rustls' ring provider for this process (once; later calls are
/// no-ops). Both the WebSocket and the REST client need one for TLS.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
