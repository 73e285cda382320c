//! Paging: the `fetch_*_range` helpers ask page after page (up to 1000 rows
//! a call) until a range of ids or times is covered, retry what may
//! succeed later with capped, jittered back-off ([`RetryPolicy`]: attempts,
//! a deadline, a cancel token), and say honestly how far they got
//! ([`FetchOutcome`]). One page is one call of the client in `mod.rs`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::wire::IdPaged;
use super::{RestClient, RestError, MAX_PAGE_ROWS};
use crate::backoff::Backoff;
use crate::domain::{AggTradeRow, KlineInterval, KlineRow, Symbol, TimeUs, TradeRow};

/// How hard a `fetch_*_range` helper tries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per page, the first included, before giving up.
    pub max_attempts: u32,
    /// No request is sent, and no back-off waited for, past this instant.
    pub deadline: Option<Instant>,
    /// Back-off after the first failure; doubled each time up to `max_backoff`,
    /// then a random 50-100 % of it is waited.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Fired by the caller when it stops waiting (a fill round's deadline
    /// passed in exchange time, which no `Instant` can stand for): the call
    /// or back-off in progress is dropped and [`RestError::Cancelled`]
    /// returned, so a `fetch_*_range` helper reports the rows it got.
    pub cancel: Option<CancellationToken>,
    /// An id-paged fetch stops after the page that brings its rows to this
    /// many ([`FetchOutcome::Capped`]): what a fill round holds before its
    /// rows reach the state is bounded.
    pub max_rows: Option<usize>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            deadline: None,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            cancel: None,
            max_rows: None,
        }
    }
}

impl RetryPolicy {
    /// Runs `work` until it ends or [`RetryPolicy::cancel`] fires.
    async fn unless_cancelled<T>(
        &self,
        work: impl Future<Output = Result<T, RestError>>,
    ) -> Result<T, RestError> {
        match &self.cancel {
            None => work.await,
            Some(cancel) => tokio::select! {
                // A cut that already happened wins over work that could still start.
                biased;
                _ = cancel.cancelled() => Err(RestError::Cancelled),
                result = work => result,
            },
        }
    }

    fn backoff(&self, n_failures: u32) -> Duration {
        Backoff::new(self.first_backoff, self.max_backoff)
            .equal_jitter(n_failures.saturating_sub(1), fastrand::f64())
    }
}

/// Where an id range ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRangeEnd {
    /// At this id, inclusive.
    Id(i64),
    /// Before the first row with a trade time at or after this, e.g. the
    /// hour's end when the id after a hole is unknown.
    Time(TimeUs),
}

/// How far a `fetch_*_range` helper got.
#[derive(Debug)]
pub enum FetchOutcome {
    /// The exchange showed a row at or past the range's end, so every row it
    /// serves in the range was fetched. (Ids or klines it does not serve, as
    /// in a halt, stay missing: compare with the range.)
    Complete,
    /// The exchange has nothing more now and the range's end was not reached:
    /// the newest rows are not served yet, a kline has not closed yet, or
    /// there were no trades after the last row. Judge with the exchange's
    /// clock, or try again later.
    ExchangeHasNoMore,
    /// A call failed past the retry budget, or with an error retrying cannot help.
    GaveUp(RestError),
    /// [`RetryPolicy::max_rows`] rows were kept before the range's end: the
    /// rest is another fetch's, from the id after the last row.
    Capped,
}

/// The rows a `fetch_*_range` helper got, in ascending key order, and how
/// far it got.
#[derive(Debug)]
pub struct Fetched<R> {
    pub rows: Vec<R>,
    pub outcome: FetchOutcome,
    /// Calls attempted, failed ones included.
    pub n_attempts: u32,
}

impl<R> Fetched<R> {
    pub fn is_complete(&self) -> bool {
        matches!(self.outcome, FetchOutcome::Complete)
    }
}

impl RestClient {
    /// The first aggregate trade with a trade time in `[from, to]`, if any,
    /// retried like the `fetch_*` helpers. Its `first_trade_id` is where
    /// trades start at `from` (historicalTrades has no time parameter).
    pub async fn first_agg_trade_between(
        &self,
        symbol: &Symbol,
        from: TimeUs,
        to: TimeUs,
        retry: &RetryPolicy,
    ) -> Result<Option<AggTradeRow>, RestError> {
        let mut n_attempts = 0;
        let page = self
            .with_retries(retry, &mut n_attempts, |deadline| {
                self.agg_trades_time_page(symbol, from, Some(to), 1, deadline)
            })
            .await?;
        Ok(page.into_iter().next())
    }

    /// The first kline opening at or after `from` and closed before
    /// `closed_before`, if REST has one, retried like the `fetch_*`
    /// helpers: REST has klines past a range it answered nothing for (a
    /// halt produces none), so what it left out there never was.
    pub async fn first_closed_kline_from(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        from: TimeUs,
        closed_before: TimeUs,
        retry: &RetryPolicy,
    ) -> Result<Option<KlineRow>, RestError> {
        let mut n_attempts = 0;
        let page = self
            .with_retries(retry, &mut n_attempts, |deadline| {
                self.klines_page(symbol, interval, from, closed_before, 1, deadline)
            })
            .await?;
        Ok(page
            .into_iter()
            .find(|row| row.open_time >= from && row.close_time < closed_before))
    }

    /// Runs `call` until it succeeds, fails with an error retrying cannot
    /// help, or `retry` is spent; counts attempts in `n_attempts`.
    async fn with_retries<T, F, Fut>(
        &self,
        retry: &RetryPolicy,
        n_attempts: &mut u32,
        mut call: F,
    ) -> Result<T, RestError>
    where
        F: FnMut(Option<Instant>) -> Fut,
        Fut: Future<Output = Result<T, RestError>>,
    {
        let mut n_failures = 0;
        let mut last_error: Option<RestError> = None;
        loop {
            *n_attempts += 1;
            let error = match retry.unless_cancelled(call(retry.deadline)).await {
                Ok(value) => return Ok(value),
                // Cut during a retry: the failure before it, not the cut,
                // is why the call did not succeed.
                Err(RestError::Cancelled) if last_error.is_some() => {
                    return Err(last_error.take().expect("checked"));
                }
                Err(error) => error,
            };
            n_failures += 1;
            if !error.is_retryable()
                || matches!(
                    error,
                    RestError::OutOfTime { .. } | RestError::PastDeadline { .. }
                )
                || n_failures >= retry.max_attempts
            {
                return Err(error);
            }
            // After a 429/418 the limiter already holds every call back.
            let backoff = if matches!(error, RestError::RateLimited { .. }) {
                Duration::ZERO
            } else {
                retry.backoff(n_failures)
            };
            if retry
                .deadline
                .is_some_and(|deadline| Instant::now() + backoff >= deadline)
            {
                return Err(error);
            }
            debug!(market = %self.market, %error, n_failures, backoff_ms = backoff.as_millis() as u64, "rest call failed; retrying");
            let paused = retry
                .unless_cancelled(async {
                    tokio::time::sleep(backoff).await;
                    Ok(())
                })
                .await;
            if paused.is_err() {
                // Cut while pausing after a failure: that failure, not the
                // cut, is why the call did not succeed.
                return Err(error);
            }
            last_error = Some(error);
        }
    }

    /// Pages `fromId` from `from_id` until `end`; rows past `end` are not kept.
    async fn fetch_id_range<R: IdPaged>(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
        mut fetched: Fetched<R>,
    ) -> Fetched<R> {
        let page_limit = page_limit.clamp(1, self.max_page_rows(R::ENDPOINT));
        let past_end = |row: &R| match end {
            IdRangeEnd::Id(last) => row.id() > last,
            IdRangeEnd::Time(until) => row.time() >= until,
        };
        if matches!(end, IdRangeEnd::Id(last) if last < from_id) {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        let mut cursor = from_id;
        loop {
            let page = self
                .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                    self.id_page::<R>(symbol, cursor, page_limit, deadline)
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    fetched.outcome = FetchOutcome::GaveUp(error);
                    return fetched;
                }
            };
            let page_was_full = page.len() >= usize::from(page_limit);
            let mut last_id = None;
            for row in page {
                if row.id() < cursor {
                    // Not asked for; the answer starts at fromId.
                    continue;
                }
                if past_end(&row) {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
                last_id = Some(row.id());
                fetched.rows.push(row);
            }
            let Some(last_id) = last_id else {
                fetched.outcome = FetchOutcome::ExchangeHasNoMore;
                return fetched;
            };
            if matches!(end, IdRangeEnd::Id(last) if last_id == last) {
                fetched.outcome = FetchOutcome::Complete;
                return fetched;
            }
            if !page_was_full {
                fetched.outcome = FetchOutcome::ExchangeHasNoMore;
                return fetched;
            }
            if retry.max_rows.is_some_and(|max| fetched.rows.len() >= max) {
                fetched.outcome = FetchOutcome::Capped;
                return fetched;
            }
            cursor = last_id + 1;
        }
    }

    /// Trades with ids from `from_id` to `end` (`historicalTrades`), paged
    /// `page_limit` rows a call.
    pub async fn fetch_trades_range(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<TradeRow> {
        let empty = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        self.fetch_id_range(symbol, from_id, end, page_limit, retry, empty)
            .await
    }

    /// Aggregate trades with ids from `from_id` to `end` (`aggTrades?fromId`).
    pub async fn fetch_agg_trades_range(
        &self,
        symbol: &Symbol,
        from_id: i64,
        end: IdRangeEnd,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<AggTradeRow> {
        let empty = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        self.fetch_id_range(symbol, from_id, end, page_limit, retry, empty)
            .await
    }

    /// Aggregate trades with trade times in `[from, until)`: the first page
    /// by `startTime`, the next ones by `fromId` (Binance does not combine
    /// the two, and paging by time could stall on many trades in one µs).
    /// This is how an open hole (no id known at its start) is probed.
    pub async fn fetch_agg_trades_by_time(
        &self,
        symbol: &Symbol,
        from: TimeUs,
        until: TimeUs,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<AggTradeRow> {
        let page_limit = page_limit.clamp(1, MAX_PAGE_ROWS);
        let mut fetched = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        if until <= from {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        let first_page = self
            .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                self.agg_trades_time_page(symbol, from, None, page_limit, deadline)
            })
            .await;
        let first_page = match first_page {
            Ok(page) => page,
            Err(error) => {
                fetched.outcome = FetchOutcome::GaveUp(error);
                return fetched;
            }
        };
        let page_was_full = first_page.len() >= usize::from(page_limit);
        for row in first_page {
            if row.trade_time >= until {
                fetched.outcome = FetchOutcome::Complete;
                return fetched;
            }
            fetched.rows.push(row);
        }
        match fetched.rows.last() {
            Some(last) if page_was_full => {
                let next_id = last.agg_trade_id + 1;
                self.fetch_id_range(
                    symbol,
                    next_id,
                    IdRangeEnd::Time(until),
                    page_limit,
                    retry,
                    fetched,
                )
                .await
            }
            _ => fetched,
        }
    }

    /// Closed klines of `interval` opening in `[from, until)`, paged by
    /// start time. `closed_before` is the exchange's clock as the caller
    /// knows it (see [`RestClient::klines`]). Complete once a closed kline
    /// at or after the range's last grid open time was seen; open times the
    /// exchange has no kline for (a halt) are simply absent from the rows.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_klines_range(
        &self,
        symbol: &Symbol,
        interval: KlineInterval,
        from: TimeUs,
        until: TimeUs,
        closed_before: TimeUs,
        page_limit: u16,
        retry: &RetryPolicy,
    ) -> Fetched<KlineRow> {
        let page_limit = page_limit.clamp(1, MAX_PAGE_ROWS);
        let mut fetched = Fetched {
            rows: Vec::new(),
            outcome: FetchOutcome::ExchangeHasNoMore,
            n_attempts: 0,
        };
        let last_open = interval.open_time_containing(until - 1);
        if until <= from || last_open < from {
            fetched.outcome = FetchOutcome::Complete;
            return fetched;
        }
        // One grid step past the range: a kline there proves the last one closed.
        let evidence_open = interval.next_open_time(last_open);
        let mut cursor = from;
        loop {
            let page = self
                .with_retries(retry, &mut fetched.n_attempts, |deadline| {
                    self.klines_page(
                        symbol,
                        interval,
                        cursor,
                        evidence_open,
                        page_limit,
                        deadline,
                    )
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    fetched.outcome = FetchOutcome::GaveUp(error);
                    return fetched;
                }
            };
            let page_was_full = page.len() >= usize::from(page_limit);
            let n_rows = page.len();
            let mut last_kept = None;
            for (index, row) in page.into_iter().enumerate() {
                if row.open_time < cursor {
                    continue;
                }
                if row.open_time > last_open {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
                let closed = index + 1 < n_rows || row.close_time < closed_before;
                if !closed {
                    // Not closed yet: nothing after it can be either.
                    return fetched;
                }
                last_kept = Some(row.open_time);
                let is_last_of_range = row.open_time == last_open;
                fetched.rows.push(row);
                if is_last_of_range {
                    fetched.outcome = FetchOutcome::Complete;
                    return fetched;
                }
            }
            match last_kept {
                Some(open) if page_was_full => cursor = interval.next_open_time(open),
                _ => return fetched,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Market;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn fetch_futures_can_be_spawned() {
        let client = RestClient::new(Market::Spot, "http://127.0.0.1:9");
        let symbol = Symbol::new("BTCUSDT").expect("valid symbol");
        let retry = RetryPolicy::default();
        assert_send(&client.fetch_trades_range(&symbol, 1, IdRangeEnd::Id(2), 10, &retry));
        assert_send(&client.fetch_agg_trades_by_time(&symbol, 1, 2, 10, &retry));
        assert_send(&client.fetch_klines_range(
            &symbol,
            KlineInterval::Minute1,
            1,
            2,
            3,
            10,
            &retry,
        ));
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_with_jitter() {
        let retry = RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = retry.backoff(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = retry.backoff(3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            let capped = retry.backoff(30);
            assert!(
                capped >= Duration::from_millis(500) && capped <= Duration::from_millis(1000),
                "{capped:?}"
            );
        }
    }
}
