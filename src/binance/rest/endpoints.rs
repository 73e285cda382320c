//! One call, one page, per endpoint: `exchangeInfo` (symbol statuses and
//! the weight limit), `time`, `historicalTrades`, `aggTrades` by id or by
//! time, and `klines`. The `fetch_*_range` helpers in `paging.rs` page
//! through these.

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::wire::{
    parse_agg_trades, parse_exchange_info, parse_klines, parse_server_time, request_weight_limit,
    IdPaged,
};
use super::{RestClient, RestError, SymbolStatus, MAX_PAGE_ROWS};
use crate::binance::limiter::{Endpoint, WeightLimit};
use crate::binance::streams::market_times_in_micros;
use crate::domain::{AggTradeRow, KlineInterval, KlineRow, Symbol, TimeUs, TradeRow};

/// The `endTime` of an aggTrades call by time: the caller's, if any, and
/// on a market where start and end must span less than `max_span`
/// (futures: an hour) never further than `start + max_span - 1 ms`, so
/// the call is never refused; a page that ends there is followed by id.
fn agg_trades_window_end(
    max_span: Option<Duration>,
    start: TimeUs,
    end: Option<TimeUs>,
) -> Option<TimeUs> {
    let Some(max_span) = max_span else {
        return end;
    };
    let span_us = i64::try_from(max_span.as_micros()).unwrap_or(i64::MAX);
    // Binance compares milliseconds: the last ms inside the span.
    let last = start
        .div_euclid(1000)
        .saturating_mul(1000)
        .saturating_add(span_us)
        .saturating_sub(1000);
    Some(end.map_or(last, |end| end.min(last)))
}

fn clamp_limit(limit: u16) -> String {
    limit.clamp(1, MAX_PAGE_ROWS).to_string()
}

/// One `/time` answer ([`RestClient::server_time_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeSample {
    /// The exchange's clock, epoch µs.
    pub server_time: TimeUs,
    /// The local wall clock minus the exchange's, at the midpoint of the
    /// request's round trip.
    pub offset_us: i64,
    /// How long the request took on the wire, µs.
    pub round_trip_us: i64,
}

impl RestClient {
    /// The status of each of `symbols` that the exchange knows; a symbol
    /// missing from the answer is unknown to the exchange. The answer's
    /// `REQUEST_WEIGHT` limit becomes this client's (read at every start).
    pub async fn symbol_statuses(
        &self,
        symbols: &[String],
    ) -> Result<Vec<SymbolStatus>, RestError> {
        let list = serde_json::to_string(symbols).expect("a list of strings always serialises");
        // Futures `exchangeInfo` takes no parameter (reference 5.2): all
        // symbols come back, and only the asked ones are kept.
        let query = if self.profile.is_futures() {
            Vec::new()
        } else {
            vec![("symbols", list)]
        };
        let mut info = self
            .get_parsed(Endpoint::ExchangeInfo, &query, parse_exchange_info)
            .await?;
        info.symbols
            .retain(|status| symbols.contains(&status.symbol));
        if let Some(limit) = request_weight_limit(&info.rate_limits) {
            debug!(market = %self.market, limit = limit.limit, window_secs = limit.window.as_secs(), "request weight limit");
            self.pacer.limiter().set_limit(limit);
        }
        Ok(info.symbols)
    }

    /// Reads the `REQUEST_WEIGHT` limit from `exchangeInfo` (asked for one
    /// symbol, to keep the answer small), adopts it and returns it; `None`
    /// when the answer lists none (the current limit stays).
    pub async fn refresh_weight_limit(
        &self,
        symbol: &Symbol,
    ) -> Result<Option<WeightLimit>, RestError> {
        let query = if self.profile.is_futures() {
            Vec::new()
        } else {
            vec![("symbol", symbol.to_string())]
        };
        let info = self
            .get_parsed(Endpoint::ExchangeInfo, &query, parse_exchange_info)
            .await?;
        let limit = request_weight_limit(&info.rate_limits);
        if let Some(limit) = limit {
            self.pacer.limiter().set_limit(limit);
        }
        Ok(limit)
    }

    /// The exchange's clock, epoch µs.
    pub async fn server_time(&self) -> Result<TimeUs, RestError> {
        Ok(self.server_time_sample().await?.server_time)
    }

    /// The exchange's clock and the local clock's offset from it, measured
    /// over the HTTP exchange alone: a wait for the weight budget or a
    /// back-off before the request (minutes, when fills or a 429 hold the
    /// budget) would otherwise skew the offset by half of it.
    pub async fn server_time_sample(&self) -> Result<ServerTimeSample, RestError> {
        let answer = self.call(Endpoint::Time, &[], 0, None).await?;
        let server_time = parse_server_time(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(ServerTimeSample {
            server_time,
            offset_us: answer.sent_us / 2 + answer.answered_us / 2 - server_time,
            round_trip_us: answer.answered_us - answer.sent_us,
        })
    }

    /// Up to `limit` (at most 1000) trades from id `from_id` on, ascending
    /// (`historicalTrades`, weight 25 on spot).
    pub async fn historical_trades(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
    ) -> Result<Vec<TradeRow>, RestError> {
        self.id_page(symbol, from_id, limit, None).await
    }

    /// Up to `limit` aggregate trades from id `from_id` on, ascending
    /// (`aggTrades`, weight 4 on spot).
    pub async fn agg_trades_from_id(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        self.id_page(symbol, from_id, limit, None).await
    }

    /// Up to `limit` aggregate trades with trade times in `[start, end]`
    /// (both inclusive, as Binance takes them), oldest first.
    pub async fn agg_trades_by_time(
        &self,
        symbol: &Symbol,
        start: TimeUs,
        end: TimeUs,
        limit: u16,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        self.agg_trades_time_page(symbol, start, Some(end), limit, None)
            .await
    }

    pub(super) async fn id_page<R: IdPaged>(
        &self,
        symbol: &Symbol,
        from_id: i64,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<R>, RestError> {
        let limit = limit.min(self.max_page_rows(R::ENDPOINT));
        let query = [
            ("symbol", symbol.to_string()),
            ("fromId", from_id.to_string()),
            ("limit", clamp_limit(limit)),
        ];
        let answer = self.call(R::ENDPOINT, &query, limit, deadline).await?;
        let rows = R::parse(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    pub(super) async fn agg_trades_time_page(
        &self,
        symbol: &Symbol,
        start: TimeUs,
        end: Option<TimeUs>,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<AggTradeRow>, RestError> {
        let mut query = vec![
            ("symbol", symbol.to_string()),
            ("startTime", self.time_parameter(start)),
            ("limit", clamp_limit(limit)),
        ];
        if let Some(end) = agg_trades_window_end(self.profile.agg_trades_max_span, start, end) {
            query.push(("endTime", self.time_parameter(end)));
        }
        let answer = self
            .call(Endpoint::AggTrades, &query, limit, deadline)
            .await?;
        let rows = parse_agg_trades(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    /// The closed klines of `interval` opening in `[start, end]` (both
    /// inclusive, as Binance takes them), at most `limit`. A kline is taken
    /// as closed when a later one follows it in the answer or its close time
    /// is before `closed_before` (the exchange's clock as the caller knows
    /// it); the still-open kline Binance puts last is left out.
    pub async fn klines(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        start: TimeUs,
        end: TimeUs,
        closed_before: TimeUs,
        limit: u16,
    ) -> Result<Vec<KlineRow>, RestError> {
        let mut rows = self
            .klines_page(symbol, interval, start, end, limit, None)
            .await?;
        if rows
            .last()
            .is_some_and(|last| last.close_time >= closed_before)
        {
            rows.pop();
        }
        Ok(rows)
    }

    /// Every kline of the answer, the still-open one included.
    pub(super) async fn klines_page(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        start: TimeUs,
        end: TimeUs,
        limit: u16,
        deadline: Option<Instant>,
    ) -> Result<Vec<KlineRow>, RestError> {
        let query = [
            ("symbol", symbol.to_string()),
            ("interval", interval.binance_name().to_owned()),
            ("startTime", self.time_parameter(start)),
            ("endTime", self.time_parameter(end)),
            ("limit", clamp_limit(limit)),
        ];
        let answer = self.call(Endpoint::Klines, &query, limit, deadline).await?;
        let rows = parse_klines(&answer.bytes).map_err(|reason| RestError::Body {
            url: answer.url.clone(),
            reason,
        })?;
        Ok(self.at_most(rows, limit, &answer.url))
    }

    /// A time parameter: µs where the market takes them, else ms (rounded
    /// down: a start then includes its whole ms, and Binance's inclusive ms
    /// end covers its whole ms).
    fn time_parameter(&self, time: TimeUs) -> String {
        if market_times_in_micros(self.market) {
            time.to_string()
        } else {
            time.div_euclid(1000).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_agg_trades_by_time_never_span_an_hour() {
        let hour = Duration::from_secs(3600);
        let start = 1_767_229_200_123_456; // µs, not on a whole ms
                                           // Spot: the caller's end, or none.
        assert_eq!(agg_trades_window_end(None, start, None), None);
        assert_eq!(
            agg_trades_window_end(None, start, Some(start + 5)),
            Some(start + 5)
        );
        // Futures: the last ms inside the hour from the start's ms.
        let last = 1_767_229_200_123_000 + 3_600_000_000 - 1000;
        assert_eq!(agg_trades_window_end(Some(hour), start, None), Some(last));
        assert_eq!(
            agg_trades_window_end(Some(hour), start, Some(start + 10 * 3_600_000_000)),
            Some(last)
        );
        assert_eq!(
            agg_trades_window_end(Some(hour), start, Some(start + 1000)),
            Some(start + 1000)
        );
        // In ms, as sent: end - start < 3,600,000.
        assert!(last / 1000 - start / 1000 < 3_600_000);
    }
}
