//! One REST fill round: fetches the rows of a stream-hour's holes and says
//! which key ranges REST answered for in full ([`Settled`]) and why a hole
//! stayed open. The state decides what the answer means (see
//! `State::apply_fill`); this module only asks.
//!
//! How each hole is asked for (reference: REST endpoints, section 6):
//! - trades: `historicalTrades?fromId` from the hole's first id; a hole with
//!   no id before it (an hour's start) first finds the hour's first trade id
//!   from the first aggTrade at or after the hour's start (`f`);
//! - aggTrades: `aggTrades?fromId`, or by `startTime` for a hole with no
//!   id before it;
//! - klines: `klines` with start and end times, closed ones only.
//!
//! Holes one page can answer are fetched by one call ([`batch_holes`]).
//!
//! A hole with no known id after it (nothing seen after it in the hour) is
//! fetched up to the hour's end: the exchange having nothing more then
//! means nothing is missing, since the hour is over.

use crate::binance::rest::{
    FetchOutcome, Fetched, IdRangeEnd, RestClient, RestError, RetryPolicy, MAX_PAGE_ROWS,
    REASON_AGG_BEYOND_REACH, REASON_BEYOND_REACH, REASON_NO_API_KEY,
};
use crate::domain::{Hour, Row, StreamKind, Symbol};
use crate::gaps::{Hole, IdHole, KlineHole, Settled};
use crate::recorder::budget::batch_holes;
use crate::recorder::state::{FillJob, FillReport, REASON_REST_BEHIND};

/// Runs one fill round for `job`. Never fails: failures are in the report.
/// When `retry.cancel` fires (the runtime cuts the round at its deadline)
/// the page in progress is dropped, the holes not reached fail at once, and
/// the report keeps every row fetched so far, so a cut loses no REST work.
/// With `retry.max_rows`, the round stops after the page that brings its
/// rows to that many: the holes not reached are neither settled nor
/// failed, so the next round starts at once. For an hour still to seal it
/// starts from the rows the state then holds; a hole already declared in a
/// sealed file is settled up to the last row fetched (REST answered every
/// key it serves there), so the next retry asks only for the rest.
pub async fn run_fill(rest: RestClient, job: FillJob, retry: RetryPolicy) -> FillReport {
    let mut rows = Vec::new();
    let mut settled = Vec::new();
    let mut failure = None;
    let holes: Vec<Hole> = job
        .holes
        .iter()
        .map(|hole| bounded_to_hour(hole, job.hour))
        .collect();
    // Holes one page can answer share one call (see `budget`).
    for batch in batch_holes(job.key.kind, &holes) {
        let room = retry.max_rows.map(|max| max.saturating_sub(rows.len()));
        if room == Some(0) {
            break;
        }
        let retry = RetryPolicy {
            max_rows: room,
            ..retry.clone()
        };
        let mut answer = fill_hole(&rest, &job, &batch.fetch, &retry).await;
        answer.rows.retain(|row| batch.wants(row.key()));
        let capped = answer.capped;
        match answer.verdict {
            // Part of one hole: nothing about the rest of it is known.
            Ok(()) if capped => {
                if job.declared {
                    let prefix = answered_prefix(&batch.fetch, &answer.rows);
                    settled.extend(settled_ranges(&prefix, &answer.rows));
                }
            }
            Ok(()) => {
                for part in &batch.parts {
                    settled.extend(settled_ranges(part, &answer.rows));
                }
            }
            Err(reason) => {
                failure.get_or_insert(reason);
            }
        }
        rows.extend(answer.rows);
        if capped {
            break;
        }
    }
    FillReport::new(&job, rows, settled, failure)
}

/// A hole whose next known row lies past the hour's end (its end time is
/// clamped to the hour's last µs) is fetched only up to the hour's end, as
/// if its end were open: the rest of it belongs to later hours, which are
/// judged (and filled) on their own. This keeps a round, and its WAL
/// record, to one hour of rows however long the downtime was.
fn bounded_to_hour(hole: &Hole, hour: Hour) -> Hole {
    match hole {
        Hole::Ids(ids) if ids.to_id.is_some() && ids.to_time >= hour.end() - 1 => {
            Hole::Ids(IdHole {
                to_id: None,
                ..*ids
            })
        }
        other => *other,
    }
}

/// The part of `hole` a fetch stopped at its row cap answered: up to the
/// last row fetched (a capped fetch is one hole, paged by id from its
/// start, and holds at least one row).
fn answered_prefix(hole: &Hole, rows: &[Row]) -> Hole {
    match (hole, rows.last()) {
        (Hole::Ids(ids), Some(last)) => Hole::Ids(IdHole {
            to_id: Some(last.key()),
            to_time: last.bucket_time().max(ids.from_time),
            ..*ids
        }),
        (other, _) => *other,
    }
}

/// What REST answered for in full when a hole's fetch completed: a hole
/// with named ends is settled as it is; an open end is split at the rows
/// fetched, so the open part says only "nothing more in this hour" (ids
/// past it belong to another hour) and the named part keeps telling ids
/// the exchange does not serve.
fn settled_ranges(hole: &Hole, rows: &[Row]) -> Vec<Settled> {
    let (from, to) = hole.key_bounds();
    let keys = rows
        .iter()
        .map(Row::key)
        .filter(|key| from.is_none_or(|from| *key >= from) && to.is_none_or(|to| *key <= to));
    let (Some(first), Some(last)) = (keys.clone().min(), keys.max()) else {
        return vec![Settled { from, to }];
    };
    let mut ranges = Vec::new();
    let named_from = match from {
        Some(from) => from,
        None => {
            ranges.push(Settled {
                from: None,
                to: Some(first - 1),
            });
            first
        }
    };
    let named_to = match to {
        Some(to) => to,
        None => {
            ranges.push(Settled {
                from: Some(last + 1),
                to: None,
            });
            last
        }
    };
    ranges.push(Settled {
        from: Some(named_from),
        to: Some(named_to),
    });
    ranges
}

/// The rows fetched for one hole, and whether REST answered for all of it.
struct HoleAnswer {
    rows: Vec<Row>,
    verdict: Result<(), String>,
    /// Every key asked for was fetched (not "the exchange has no more").
    complete: bool,
    /// The fetch stopped at [`RetryPolicy::max_rows`] inside the hole.
    capped: bool,
}

impl HoleAnswer {
    fn nothing_missing() -> HoleAnswer {
        HoleAnswer {
            rows: Vec::new(),
            verdict: Ok(()),
            complete: false,
            capped: false,
        }
    }

    fn failed(error: &RestError) -> HoleAnswer {
        HoleAnswer::refused(failure_reason(error))
    }

    /// Nothing fetched, for `reason`.
    fn refused(reason: String) -> HoleAnswer {
        HoleAnswer {
            rows: Vec::new(),
            verdict: Err(reason),
            complete: false,
            capped: false,
        }
    }

    /// Judges a fetch: complete, or (for a hole open at its end) the
    /// exchange having nothing more, answer for the hole.
    fn from_fetched<R>(fetched: Fetched<R>, end_known: bool, into_row: fn(R) -> Row) -> HoleAnswer {
        let verdict = match &fetched.outcome {
            FetchOutcome::Complete => Ok(()),
            FetchOutcome::ExchangeHasNoMore if !end_known => Ok(()),
            FetchOutcome::ExchangeHasNoMore => {
                Err("rest unreachable: the exchange does not serve the range yet".to_owned())
            }
            FetchOutcome::GaveUp(error) => Err(failure_reason(error)),
            FetchOutcome::Capped => Ok(()),
        };
        HoleAnswer {
            complete: matches!(fetched.outcome, FetchOutcome::Complete),
            capped: matches!(fetched.outcome, FetchOutcome::Capped),
            rows: fetched.rows.into_iter().map(into_row).collect(),
            verdict,
        }
    }
}

/// The `unfilled` reason a REST error stands for.
pub fn failure_reason(error: &RestError) -> String {
    match error {
        RestError::RateLimited { .. } => format!("rate limited: {error}"),
        // The weight budget, a back-off or the in-flight bound holds the
        // call past the hour's deadline: the hour seals now, declared.
        RestError::OutOfTime { .. } | RestError::PastDeadline { .. } => {
            REASON_REST_BEHIND.to_owned()
        }
        RestError::Status { status, .. } if *status < 500 => format!("rest refused: {error}"),
        RestError::Refused { .. } => format!("binance refuses this host: {error}"),
        RestError::BodyTooLarge { .. } => format!("rest answer not trusted: {error}"),
        // The runtime cut the round at its hour's deadline.
        RestError::Cancelled => REASON_REST_BEHIND.to_owned(),
        _ => format!("rest unreachable: {error}"),
    }
}

async fn fill_hole(
    rest: &RestClient,
    job: &FillJob,
    hole: &Hole,
    retry: &RetryPolicy,
) -> HoleAnswer {
    let symbol = &job.key.symbol;
    match (job.key.kind, hole) {
        (StreamKind::Trade, Hole::Ids(hole)) => fill_trades(rest, symbol, job, hole, retry).await,
        (StreamKind::AggTrade, Hole::Ids(hole)) => {
            let mut answer = fill_agg_trades(rest, symbol, job.hour, hole, retry).await;
            // Beyond what futures aggTrades is sure to serve, rows are
            // used but only a complete answer for named ids settles.
            let trusted = rest.agg_trades_sure_back_to(hole.from_time, job.closed_before);
            // Capped, the ids from the hole's first to the last fetched
            // are named, and all there when none is skipped.
            let named_and_complete = (answer.complete && hole.is_closed())
                || (answer.capped
                    && hole
                        .from_id
                        .is_some_and(|from| ids_follow_on(from, &answer.rows)));
            // A capped answer of a round for an hour still to seal settles
            // nothing; one of a declared hole settles what it fetched.
            let settles = !answer.capped || job.declared;
            if !trusted && !named_and_complete && settles && answer.verdict.is_ok() {
                answer.verdict = Err(REASON_AGG_BEYOND_REACH.to_owned());
            }
            answer
        }
        (
            StreamKind::Kline(interval),
            Hole::Klines(KlineHole {
                first_open,
                last_open,
            }),
        ) => {
            let until = interval.next_open_time(*last_open);
            let fetched = rest
                .fetch_klines_range(
                    symbol,
                    interval,
                    *first_open,
                    until,
                    job.closed_before,
                    MAX_PAGE_ROWS,
                    retry,
                )
                .await;
            let short = matches!(fetched.outcome, FetchOutcome::ExchangeHasNoMore);
            let mut answer = HoleAnswer::from_fetched(fetched, true, Row::kline);
            // Nothing more up to the kline after the range: REST behind,
            // or no kline made there (a halt, `CANCEL_ONLY`: reference,
            // section 7). A closed kline anywhere later tells them apart:
            // the exchange is past the range, and what it left out never
            // was. (The next grid step alone would leave a halt longer
            // than the hole "not served yet" on every retry.)
            // Not known yet (or the probe failed): the range stays "not
            // served yet" and is asked again, the rows fetched kept.
            if short
                && answer.verdict.is_err()
                && rest
                    .first_closed_kline_from(symbol, interval, until, job.closed_before, retry)
                    .await
                    .is_ok_and(|later| later.is_some())
            {
                answer.verdict = Ok(());
            }
            answer
        }
        (kind, hole) => HoleAnswer::refused(format!(
            "internal: a {hole:?} cannot be filled for {kind:?}"
        )),
    }
}

/// Whether `rows` are the ids from `from` on, one each, none skipped.
fn ids_follow_on(from: i64, rows: &[Row]) -> bool {
    rows.iter()
        .enumerate()
        .all(|(index, row)| i64::try_from(index).is_ok_and(|index| row.key() == from + index))
}

fn id_range_end(hole: &IdHole, hour: Hour) -> IdRangeEnd {
    hole.to_id
        .map_or(IdRangeEnd::Time(hour.end()), IdRangeEnd::Id)
}

async fn fill_trades(
    rest: &RestClient,
    symbol: &Symbol,
    job: &FillJob,
    hole: &IdHole,
    retry: &RetryPolicy,
) -> HoleAnswer {
    let hour = job.hour;
    // Either is declared with the reason at the deadline; no call is made.
    if !rest.can_fetch_trades() {
        return HoleAnswer::refused(REASON_NO_API_KEY.to_owned());
    }
    if !rest.trades_reach_back_to(hole.from_time, job.closed_before) {
        return HoleAnswer::refused(REASON_BEYOND_REACH.to_owned());
    }
    // The probe below asks aggTrades by time: beyond what futures
    // aggTrades is sure to serve, what it does not name is not "no trades".
    let probe_trusted = rest.agg_trades_sure_back_to(hole.from_time, job.closed_before);
    let from_id = match hole.from_id {
        Some(id) => id,
        None => {
            // historicalTrades has no time parameter: the first aggTrade at
            // or after the hole's start names its first trade id.
            let probe_end = hole.to_time.max(hole.from_time);
            let first = match rest
                .first_agg_trade_between(symbol, hole.from_time, probe_end, retry)
                .await
            {
                Ok(first) => first.map(|agg| agg.first_trade_id),
                Err(error) => return HoleAnswer::failed(&error),
            };
            if first.is_none() && !probe_trusted {
                return HoleAnswer::refused(REASON_AGG_BEYOND_REACH.to_owned());
            }
            match (first, hole.to_id) {
                (None, Some(_)) => return HoleAnswer::nothing_missing(),
                (Some(first), Some(to)) if first > to => return HoleAnswer::nothing_missing(),
                (Some(first), _) => first,
                // No aggTrade up to the hour's end: the hour had no trade.
                (None, None) => return HoleAnswer::nothing_missing(),
            }
        }
    };
    let fetched = rest
        .fetch_trades_range(
            symbol,
            from_id,
            id_range_end(hole, hour),
            MAX_PAGE_ROWS,
            retry,
        )
        .await;
    let mut answer = HoleAnswer::from_fetched(fetched, hole.to_id.is_some(), Row::Trade);
    // The trades before the first aggregate found may be ones REST no
    // longer names: keep the rows, settle nothing.
    let settles = !answer.capped || job.declared;
    if hole.from_id.is_none() && !probe_trusted && settles && answer.verdict.is_ok() {
        answer.verdict = Err(REASON_AGG_BEYOND_REACH.to_owned());
    }
    answer
}

async fn fill_agg_trades(
    rest: &RestClient,
    symbol: &Symbol,
    hour: Hour,
    hole: &IdHole,
    retry: &RetryPolicy,
) -> HoleAnswer {
    match hole.from_id {
        Some(from_id) => {
            let fetched = rest
                .fetch_agg_trades_range(
                    symbol,
                    from_id,
                    id_range_end(hole, hour),
                    MAX_PAGE_ROWS,
                    retry,
                )
                .await;
            HoleAnswer::from_fetched(fetched, hole.to_id.is_some(), Row::AggTrade)
        }
        None => {
            // By time from the hole's start, up to the row after it.
            let until = match hole.to_id {
                Some(_) => hole.to_time + 1,
                None => hour.end(),
            };
            let mut fetched = rest
                .fetch_agg_trades_by_time(symbol, hole.from_time, until, MAX_PAGE_ROWS, retry)
                .await;
            if let Some(to_id) = hole.to_id {
                fetched.rows.retain(|row| row.agg_trade_id <= to_id);
            }
            // Judged as open-ended: the time bound, not an id, ends it.
            HoleAnswer::from_fetched(fetched, false, Row::AggTrade)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::binance::rest::{ApiKey, RestOptions};
    use crate::domain::{Market, StreamKey, TimeUs, MICROS_PER_HOUR};
    use crate::metrics::Counters;

    /// A fill round for one id hole of COIN-M's `BTCUSD_PERP`, with no
    /// deadline; `declared` says whether the hole is already in a sealed file.
    fn btcusd_perp_job(
        kind: StreamKind,
        hour: Hour,
        hole: IdHole,
        closed_before: TimeUs,
        declared: bool,
    ) -> FillJob {
        FillJob {
            key: StreamKey {
                market: Market::CoinM,
                symbol: Symbol::new("BTCUSD_PERP").expect("valid"),
                kind,
            },
            hour,
            holes: vec![Hole::Ids(hole)],
            closed_before,
            declared,
            deadline: None,
        }
    }

    /// Answers every HTTP request with an empty JSON list, one request per
    /// connection; stops with the test's runtime.
    async fn empty_list_server() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]")
                    .await;
            }
        });
        format!("http://{address}")
    }

    /// A futures aggTrade hole open at its end, after id 10: REST answers
    /// nothing more. Within the last 24 hours that settles it (nothing
    /// more in the hour); older, the 24-hour note (reference 5.2) means
    /// the answer may be the retention speaking, so it is declared.
    #[tokio::test]
    async fn an_empty_futures_agg_trades_answer_older_than_a_day_settles_nothing() {
        let rest = RestClient::with_options(
            Market::CoinM,
            &empty_list_server().await,
            RestOptions::default(),
        );
        let now: TimeUs = 1_774_598_400_000_000;
        for (age_hours, trusted) in [(2, true), (48, false)] {
            let hour = Hour::containing(now - age_hours * MICROS_PER_HOUR);
            let job = btcusd_perp_job(
                StreamKind::AggTrade,
                hour,
                IdHole {
                    from_id: Some(11),
                    to_id: None,
                    from_time: hour.start() + 5,
                    to_time: hour.end() - 1,
                },
                now,
                false,
            );
            let report = run_fill(rest.clone(), job, RetryPolicy::default()).await;
            if trusted {
                assert_eq!(report.failure, None);
                assert_eq!(
                    report.settled,
                    vec![Settled {
                        from: Some(11),
                        to: None
                    }]
                );
            } else {
                assert_eq!(report.failure.as_deref(), Some(REASON_AGG_BEYOND_REACH));
                assert!(report.settled.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn a_futures_trade_hole_older_than_a_month_is_declared_without_a_call() {
        const DAY_US: TimeUs = 24 * MICROS_PER_HOUR;
        let counters = Arc::new(Counters::default());
        // Nothing listens there: a call would fail with a network error.
        let rest = RestClient::with_options(
            Market::CoinM,
            "http://127.0.0.1:1",
            RestOptions {
                api_key: ApiKey::new("a-key"),
                counters: counters.clone(),
                ..RestOptions::default()
            },
        );
        let now: TimeUs = 1_774_598_400_000_000;
        let hour = Hour::containing(now - 31 * DAY_US);
        let job = btcusd_perp_job(
            StreamKind::Trade,
            hour,
            IdHole {
                from_id: Some(10),
                to_id: Some(20),
                from_time: hour.start() + 5,
                to_time: hour.start() + 50,
            },
            now,
            true,
        );
        let report = run_fill(rest, job, RetryPolicy::default()).await;
        assert_eq!(report.failure.as_deref(), Some(REASON_BEYOND_REACH));
        assert!(report.rows.is_empty() && report.settled.is_empty());
        assert_eq!(counters.snapshot().rest_calls, 0);
    }
}
