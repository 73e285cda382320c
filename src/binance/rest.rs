//! The REST client: the only code that speaks HTTP to Binance. For now it
//! checks symbols against `exchangeInfo` and reads the server time; gap fill
//! adds paging over trades, aggTrades and klines.

use std::time::Duration;

use serde::Deserialize;

use crate::binance::decode::normalise_time;
use crate::binance::streams::market_times_in_micros;
use crate::domain::{Market, TimeUs};

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("request to {url} failed: {source} (retrying may help)")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status} with Binance code {code:?}: {message}")]
    Status { url: String, status: u16, code: Option<i64>, message: String },
    #[error("{url} answered a body that is not the expected JSON: {reason}")]
    Body { url: String, reason: String },
}

impl RestError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Transport { .. } | RestError::Body { .. } => true,
            RestError::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }
}

/// The trading status of one symbol, as `exchangeInfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SymbolStatus {
    pub symbol: String,
    pub status: String,
}

#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base_url: String,
    market: Market,
}

#[derive(Deserialize)]
struct BinanceErrorBody {
    code: i64,
    msg: String,
}

#[derive(Deserialize)]
struct ExchangeInfo {
    symbols: Vec<SymbolStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerTime {
    server_time: i64,
}

impl RestClient {
    pub fn new(market: Market, base_url: &str) -> RestClient {
        crate::binance::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("binance-recorder/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with only timeouts set always builds");
        RestClient { http, base_url: base_url.trim_end_matches('/').to_owned(), market }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str, query: &[(&str, String)]) -> Result<T, RestError> {
        let url = format!("{}{}", self.base_url, path);
        let mut request = self.http.get(&url).query(query);
        if market_times_in_micros(self.market) {
            request = request.header("X-MBX-TIME-UNIT", "MICROSECOND");
        }
        let transport = |source| RestError::Transport { url: url.clone(), source };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<BinanceErrorBody>(&body) {
                Ok(error) => (Some(error.code), error.msg),
                Err(_) => (None, String::from_utf8_lossy(&body).chars().take(200).collect()),
            };
            return Err(RestError::Status { url, status: status.as_u16(), code, message });
        }
        serde_json::from_slice(&body).map_err(|error| RestError::Body { url, reason: error.to_string() })
    }

    /// The status of each of `symbols` that the exchange knows; a symbol
    /// missing from the answer is unknown to the exchange.
    pub async fn symbol_statuses(&self, symbols: &[String]) -> Result<Vec<SymbolStatus>, RestError> {
        let list = serde_json::to_string(symbols).expect("a list of strings always serialises");
        let info: ExchangeInfo = self.get_json("/api/v3/exchangeInfo", &[("symbols", list)]).await?;
        Ok(info.symbols)
    }

    /// The exchange's clock, epoch µs.
    pub async fn server_time(&self) -> Result<TimeUs, RestError> {
        let time: ServerTime = self.get_json("/api/v3/time", &[]).await?;
        Ok(normalise_time(time.server_time))
    }
}
