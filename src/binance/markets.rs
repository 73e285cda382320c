//! What differs between Binance's markets, in one table: hosts, WebSocket
//! routes, ping timing, message and stream limits, the REST weight limit
//! and page sizes, whether an endpoint needs an API key. Every number is
//! taken from `../shared/reference/binance-protocol.md` (sections 1, 3,
//! 5 and 6); where the reference marks a number as uncertain (⚠), the
//! safe side is chosen and the reason written beside it. Spot's numbers
//! are never reused for another market unless the reference says so.
//!
//! Pure data and pure functions: the config takes its defaults from here,
//! the connection tasks their routes, the REST client its page limits.

use std::time::Duration;

use crate::domain::{Market, StreamKind, TimeUs};

/// A USD-M WebSocket route (reference 1.3, mandatory since 2026-04-23).
/// A stream subscribed on the wrong route is acknowledged and then never
/// delivers, so every USD-M connection names its route in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// The market has no routed paths (spot, COIN-M, Binance.US).
    Unrouted,
    /// `/public`: depth, bookTicker and (undocumented, observed) `@trade`.
    Public,
    /// `/market`: aggTrade, klines, mark price, tickers.
    Market,
}

impl Route {
    /// The path the route adds before `/stream`.
    pub fn path(self) -> &'static str {
        match self {
            Route::Unrouted => "",
            Route::Public => "/public",
            Route::Market => "/market",
        }
    }

    /// The route tried once when a stream stays silent on this one.
    pub fn other(self) -> Option<Route> {
        match self {
            Route::Unrouted => None,
            Route::Public => Some(Route::Market),
            Route::Market => Some(Route::Public),
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Unrouted => formatter.write_str("unrouted"),
            Route::Public => formatter.write_str("public"),
            Route::Market => formatter.write_str("market"),
        }
    }
}

/// The protocol numbers of one market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketProfile {
    pub market: Market,
    /// WebSocket base URL without a path (reference 1.1).
    pub ws_url: &'static str,
    /// REST base URL without a path (reference 1.2).
    pub rest_url: &'static str,
    /// The server's ping interval (reference 3).
    pub ping_interval: Duration,
    /// Binance's incoming messages per second per connection, pongs and
    /// control frames included (reference 3); we stay below it.
    pub max_incoming_per_sec: u32,
    /// Streams per connection: Binance's limit, or the safe one where the
    /// reference is unsure.
    pub max_streams_per_connection: usize,
    /// `REQUEST_WEIGHT` per minute until `exchangeInfo` says otherwise
    /// (reference 6).
    pub default_weight_limit: u32,
    /// Most rows one `historicalTrades` call may ask for (reference 5).
    pub max_historical_trades_rows: u16,
    /// `historicalTrades` needs `X-MBX-APIKEY` (security `MARKET_DATA`).
    pub historical_trades_needs_key: bool,
    /// How far back `historicalTrades` serves trades; `None`: no bound
    /// documented (futures: "only last one month", reference 5.2, taken
    /// as 30 days).
    pub historical_trades_reach: Option<Duration>,
    /// `aggTrades` with both `startTime` and `endTime` must span less than
    /// this (futures: one hour); `None` where no such rule exists.
    pub agg_trades_max_span: Option<Duration>,
    /// How far back an `aggTrades` answer is trusted to say what is *not*
    /// there. Futures: the REST note changed on 2026-05-12 to "not older
    /// than 24 hours" (reference 5.2, ⚠: whether older data is gone or
    /// only its time parameters are refused is undocumented). So older
    /// rows REST returns are used, but an empty or short answer about a
    /// range older than this settles nothing: the hole is declared with
    /// [`REASON_AGG_BEYOND_REACH`](crate::binance::rest::REASON_AGG_BEYOND_REACH)
    /// instead of being taken for "no trades". `None`: no bound (spot).
    pub agg_trades_sure_reach: Option<Duration>,
}

const SPOT: MarketProfile = MarketProfile {
    market: Market::Spot,
    ws_url: "wss://stream.binance.com:9443",
    rest_url: "https://api.binance.com",
    ping_interval: Duration::from_secs(20),
    max_incoming_per_sec: 5,
    max_streams_per_connection: 1024,
    default_weight_limit: 6000,
    max_historical_trades_rows: 1000,
    historical_trades_needs_key: false,
    historical_trades_reach: None,
    agg_trades_max_span: None,
    agg_trades_sure_reach: None,
};

/// USD-M: pings every 3 minutes, 10 messages a second. Streams per
/// connection: the reference gives 200 on the older page and 1024 nowhere
/// for futures (⚠), so 200, the number a wrong guess cannot exceed.
const USDM: MarketProfile = MarketProfile {
    market: Market::UsdM,
    ws_url: "wss://fstream.binance.com",
    rest_url: "https://fapi.binance.com",
    ping_interval: Duration::from_secs(180),
    max_incoming_per_sec: 10,
    max_streams_per_connection: 200,
    default_weight_limit: 2400,
    max_historical_trades_rows: 500,
    historical_trades_needs_key: true,
    historical_trades_reach: Some(Duration::from_secs(30 * 24 * 3600)),
    agg_trades_max_span: Some(Duration::from_secs(3600)),
    agg_trades_sure_reach: Some(Duration::from_secs(24 * 3600)),
};

/// COIN-M: the futures numbers; its weight limit (1,200 per nautilus ⚠)
/// is read from `/dapi/v1/exchangeInfo` at start.
const COINM: MarketProfile = MarketProfile {
    market: Market::CoinM,
    ws_url: "wss://dstream.binance.com",
    rest_url: "https://dapi.binance.com",
    default_weight_limit: 1200,
    ..USDM
};

/// Binance.US: spot-shaped, own hosts (the reference's source is stale ⚠).
/// Its weight limit is not in the reference: spot's lower past value of
/// 1,200 until `exchangeInfo` says otherwise, the safe side of a guess.
/// Its pings: the reference's US source (2023) predates spot's change from
/// every 3 minutes to every 20 s (2025), so the longer one, which a link
/// that pings either way survives: a quiet link is not taken for dead
/// every 30 s. A link whose streams stop delivering is replaced far
/// sooner by the silence judgement (`silent_after_*`).
const US: MarketProfile = MarketProfile {
    market: Market::Us,
    ws_url: "wss://stream.binance.us:9443",
    rest_url: "https://api.binance.us",
    ping_interval: Duration::from_secs(180),
    default_weight_limit: 1200,
    ..SPOT
};

impl MarketProfile {
    pub fn of(market: Market) -> MarketProfile {
        match market {
            Market::Spot => SPOT,
            Market::UsdM => USDM,
            Market::CoinM => COINM,
            Market::Us => US,
        }
    }

    /// Whether `historicalTrades` can still serve trades of `time` when
    /// the exchange clock is at `exchange_now` (both µs): always on spot;
    /// on futures only within the last month.
    pub fn historical_trades_reach_back_to(&self, time: TimeUs, exchange_now: TimeUs) -> bool {
        self.historical_trades_reach.is_none_or(|reach| {
            let reach_us = TimeUs::try_from(reach.as_micros()).unwrap_or(TimeUs::MAX);
            time >= exchange_now.saturating_sub(reach_us)
        })
    }

    /// Whether an `aggTrades` answer about `time` is trusted, at
    /// `exchange_now` (both µs), to say what is not there (see
    /// `agg_trades_sure_reach`): always on spot; on futures for the last
    /// 24 hours.
    pub fn agg_trades_sure_back_to(&self, time: TimeUs, exchange_now: TimeUs) -> bool {
        self.agg_trades_sure_reach.is_none_or(|reach| {
            let reach_us = TimeUs::try_from(reach.as_micros()).unwrap_or(TimeUs::MAX);
            time >= exchange_now.saturating_sub(reach_us)
        })
    }

    /// Whether this market's streams are futures-shaped (trades carry `X`,
    /// no `M`; REST under `/fapi` or `/dapi`).
    pub fn is_futures(&self) -> bool {
        matches!(self.market, Market::UsdM | Market::CoinM)
    }

    /// The route a stream kind is subscribed on first. USD-M: aggTrade and
    /// klines on `/market` (documented); `@trade` on `/public`, where it
    /// was observed (undocumented: if it stays silent there, `/market` is
    /// tried once, see `ws::judge_unheard`).
    pub fn route(&self, kind: StreamKind) -> Route {
        match (self.market, kind) {
            (Market::UsdM, StreamKind::Trade) => Route::Public,
            (Market::UsdM, _) => Route::Market,
            _ => Route::Unrouted,
        }
    }

    /// Our own control frames per second per connection by default: half
    /// of Binance's limit, leaving the rest for pongs (spot 2, futures 5).
    pub fn default_control_per_sec(&self) -> u32 {
        (self.max_incoming_per_sec / 2).max(1)
    }

    /// The most control frames per second the config may ask for: one
    /// below Binance's limit, so a pong always fits.
    pub fn max_control_per_sec(&self) -> u32 {
        self.max_incoming_per_sec.saturating_sub(1).max(1)
    }

    /// A link without any frame (data or ping) for this long is dead: one
    /// and a half ping intervals (spot 30 s, futures 270 s), so one late
    /// ping is forgiven and a missing one is not.
    pub fn default_dead_after(&self) -> Duration {
        self.ping_interval.saturating_mul(3) / 2
    }

    /// Streams per connection by default: 200 everywhere (a reconnect then
    /// costs at most 200 streams' worth of gap fill), within each limit.
    pub fn default_streams_per_connection(&self) -> usize {
        self.max_streams_per_connection.min(200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KlineInterval;

    #[test]
    fn futures_historical_trades_reach_back_one_month_and_spot_without_bound() {
        const DAY_US: TimeUs = 24 * 3_600_000_000;
        let now = 1_774_598_400_000_000;
        for market in [Market::UsdM, Market::CoinM] {
            let futures = MarketProfile::of(market);
            assert!(futures.historical_trades_reach_back_to(now - DAY_US, now));
            assert!(futures.historical_trades_reach_back_to(now - 30 * DAY_US, now));
            assert!(!futures.historical_trades_reach_back_to(now - 30 * DAY_US - 1, now));
        }
        for market in [Market::Spot, Market::Us] {
            let spot = MarketProfile::of(market);
            assert!(spot.historical_trades_reach_back_to(now - 3_650 * DAY_US, now));
        }
    }

    #[test]
    fn futures_numbers_are_their_own() {
        let spot = MarketProfile::of(Market::Spot);
        let usdm = MarketProfile::of(Market::UsdM);
        assert_eq!(spot.default_dead_after(), Duration::from_secs(30));
        assert_eq!(usdm.default_dead_after(), Duration::from_secs(270));
        // Binance.US: the stale source's 3-minute pings, not spot's 20 s.
        assert_eq!(
            MarketProfile::of(Market::Us).default_dead_after(),
            Duration::from_secs(270)
        );
        assert_eq!(
            (spot.max_control_per_sec(), usdm.max_control_per_sec()),
            (4, 9)
        );
        assert_eq!(
            (
                spot.default_control_per_sec(),
                usdm.default_control_per_sec()
            ),
            (2, 5)
        );
        assert_eq!(usdm.max_streams_per_connection, 200);
        assert_eq!(usdm.default_weight_limit, 2400);
        assert_eq!(usdm.max_historical_trades_rows, 500);
        assert!(usdm.historical_trades_needs_key && !spot.historical_trades_needs_key);
        assert_eq!(
            MarketProfile::of(Market::CoinM).rest_url,
            "https://dapi.binance.com"
        );
        assert_eq!(
            MarketProfile::of(Market::Us).ws_url,
            "wss://stream.binance.us:9443"
        );
    }

    #[test]
    fn usdm_routes_follow_the_reference() {
        let usdm = MarketProfile::of(Market::UsdM);
        assert_eq!(usdm.route(StreamKind::Trade), Route::Public);
        assert_eq!(usdm.route(StreamKind::AggTrade), Route::Market);
        assert_eq!(
            usdm.route(StreamKind::Kline(KlineInterval::Minute1)),
            Route::Market
        );
        for market in [Market::Spot, Market::CoinM, Market::Us] {
            assert_eq!(
                MarketProfile::of(market).route(StreamKind::Trade),
                Route::Unrouted
            );
        }
        assert_eq!(Route::Public.other(), Some(Route::Market));
        assert_eq!(Route::Market.other(), Some(Route::Public));
        assert_eq!(Route::Unrouted.other(), None);
    }
}
