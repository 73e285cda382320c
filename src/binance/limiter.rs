//! REST weight pacing: pure, time passed in, so every rule is unit-tested.
//!
//! Binance counts request weight per IP in fixed windows (spot: 6,000 per
//! minute, resetting on the whole minute; the limit is read from
//! `exchangeInfo.rateLimits` at start). Over the limit it answers 429 with
//! `Retry-After`; calling again before that earns a 418 IP ban that grows
//! from 2 minutes to 3 days (reference section 6). Other programs on the
//! host share the IP, so we only use a configured share of the limit.
//!
//! The rules, in the order [`Limiter::try_send`] applies them:
//!
//! 1. **Back-off.** After a 429 or 418 nothing is sent until its
//!    `Retry-After` has passed, by any clone of the client (they share one
//!    limiter). Without the header: one weight window after a 429 (the
//!    server's count has reset by then whatever its phase), doubling while
//!    429s without the header repeat, up to ten minutes; two minutes after a
//!    418 (the shortest ban), doubling while answers without the header
//!    repeat, up to an hour (a ban grows to three days, and each probe
//!    inside one may lengthen it). A 403 (the web application firewall, which
//!    blocks for rate as well as for security) backs off like a 429.
//!    Answers to requests that were already on the wire may extend the
//!    back-off; they never start a second one.
//! 2. **A probe.** When a back-off ends, one request goes alone (nothing
//!    else in flight) and the others wait for its answer: a 429 again starts
//!    a new back-off, anything else lets the rest follow. A probe that gets
//!    no answer (a transport error, a cancelled call) is probed again.
//! 3. **Requests in flight.** At most `max_in_flight` requests are on the
//!    wire at once, so a 429 meets only a few requests the client can no
//!    longer hold back (Binance bans for calls inside a back-off).
//! 4. **Our own weight, sliding window.** The weight of our requests over any
//!    window-long span stays within the budget (`limit * share`). A sliding
//!    window keeps every fixed window under the budget whatever its phase,
//!    so a host clock that is off, or a server whose windows do not start on
//!    our whole minutes, cannot make us pass it; the price is being a little
//!    slower just after a boundary. A request counts from when it is sent
//!    until one window after its answer (the server may count it any time in
//!    between); one still on the wire counts in full.
//! 5. **The server's count.** `X-MBX-USED-WEIGHT-1M` says what the whole IP
//!    used in the server's current window, including other programs. We
//!    trust it over our own count: the estimate is the larger of the two (the
//!    header plus what we sent that it may not include yet). A reading is
//!    forgotten at the end of the window it was taken in (whole multiples of
//!    the window on the clock passed in, plus a margin for clock offset).
//!
//! A request heavier than the whole budget is let through alone, when
//! nothing else is counted, so that it is slow rather than impossible.

use std::collections::VecDeque;
use std::time::Duration;

use crate::domain::{Market, TimeUs};

/// The shortest IP ban Binance gives (reference section 6): the back-off
/// after a 418 that carries no `Retry-After`.
const DEFAULT_BAN: Duration = Duration::from_secs(120);

/// The shortest back-off a `Retry-After` starts: the header is whole
/// seconds, and a server that rounds down says 0 in the last second of
/// its window, when asking again at once would only add to the overdraft
/// that leads to a ban (reference section 6).
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest back-off after repeated 429s that carried no `Retry-After`.
const MAX_DEFAULT_BACKOFF: Duration = Duration::from_secs(600);

/// The longest back-off after repeated 418s that carried no `Retry-After`:
/// a probe an hour at most while a ban of up to three days runs.
const MAX_DEFAULT_BAN: Duration = Duration::from_secs(3600);

/// Requests on the wire at once per client (all clones), unless configured.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;

/// How long after a window boundary (on our clock) a header reading is
/// still trusted: covers a host clock up to this much behind the server's.
const BOUNDARY_MARGIN: Duration = Duration::from_secs(1);

/// The `REQUEST_WEIGHT` rate limit: `limit` weight per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightLimit {
    pub limit: u32,
    pub window: Duration,
}

impl WeightLimit {
    /// Spot's limit since 2023-08-25, used until `exchangeInfo` says otherwise.
    pub const SPOT_DEFAULT: WeightLimit = WeightLimit {
        limit: 6000,
        window: Duration::from_secs(60),
    };
}

impl Default for WeightLimit {
    fn default() -> WeightLimit {
        WeightLimit::SPOT_DEFAULT
    }
}

/// The part of the weight limit the recorder may use, in `(0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightShare(f64);

impl WeightShare {
    /// Half the limit: the rest is left to other programs on the host.
    pub const DEFAULT: WeightShare = WeightShare(0.5);

    /// `None` unless `0 < share <= 1`.
    pub fn new(share: f64) -> Option<WeightShare> {
        (share > 0.0 && share <= 1.0).then_some(WeightShare(share))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for WeightShare {
    fn default() -> WeightShare {
        WeightShare::DEFAULT
    }
}

/// The REST endpoints the recorder calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    AggTrades,
    HistoricalTrades,
    Trades,
    Klines,
    ExchangeInfo,
    Time,
    Ping,
}

impl Endpoint {
    /// The last path segment, as in `/api/v3/aggTrades`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::AggTrades => "aggTrades",
            Endpoint::HistoricalTrades => "historicalTrades",
            Endpoint::Trades => "trades",
            Endpoint::Klines => "klines",
            Endpoint::ExchangeInfo => "exchangeInfo",
            Endpoint::Time => "time",
            Endpoint::Ping => "ping",
        }
    }

    /// The documented weight of one call asking for `limit` rows (reference
    /// section 5; only futures klines depend on `limit`).
    pub fn weight(self, market: Market, limit: u32) -> u32 {
        match market {
            Market::Spot | Market::Us => match self {
                Endpoint::AggTrades => 4,
                Endpoint::HistoricalTrades | Endpoint::Trades => 25,
                Endpoint::Klines => 2,
                Endpoint::ExchangeInfo => 20,
                Endpoint::Time | Endpoint::Ping => 1,
            },
            Market::UsdM | Market::CoinM => match self {
                Endpoint::AggTrades | Endpoint::HistoricalTrades => 20,
                Endpoint::Trades => 5,
                Endpoint::Klines => match limit {
                    0..100 => 1,
                    100..500 => 2,
                    500..=1000 => 5,
                    _ => 10,
                },
                Endpoint::ExchangeInfo | Endpoint::Time | Endpoint::Ping => 1,
            },
        }
    }
}

/// One request we sent, from [`Limiter::on_send`] to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendId(u64);

#[derive(Debug, Clone, Copy)]
struct Sent {
    id: u64,
    weight: u32,
    sent_at: TimeUs,
    /// When its answer's headers arrived (or it ended without one).
    answered_at: Option<TimeUs>,
    /// Off the wire: answered and read, failed, or given up by its caller.
    done: bool,
}

/// Why [`Limiter::try_send`] says not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Ask again after this long (the weight budget or a back-off).
    For(Duration),
    /// Ask again when a request in flight ends: too many are on the wire,
    /// or a probe after a back-off is (or must go) alone.
    ForAnswer,
}

/// The probe after a back-off (rule 2 of the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    NotNeeded,
    Wanted,
    InFlight(u64),
}

/// Whether an answer of `status` holds every request back (rule 1): 429
/// (too much weight), 418 (banned) or 403 (the firewall, reference section
/// 6: "rate or security").
pub fn holds_back(status: u16) -> bool {
    matches!(status, 429 | 418 | 403)
}

/// A back-off that a 429 or 418 started (not one it only extended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffStarted {
    pub status: u16,
    /// How long nothing is sent.
    pub length: Duration,
    /// Whether the answer said how long (`Retry-After`), or a default applies.
    pub retry_after_given: bool,
}

#[derive(Debug, Clone, Copy)]
struct HeaderReading {
    used: u32,
    /// When the request it answers was sent.
    request_sent_at: TimeUs,
    request: u64,
    forget_at: TimeUs,
}

/// Counters worth exporting as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    pub n_sent: u64,
    /// 429 answers (each one, also those extending a back-off).
    pub n_rate_limited: u64,
    /// 418 answers.
    pub n_banned: u64,
    /// Back-offs started (each logged once).
    pub n_backoffs: u64,
    /// The highest `X-MBX-USED-WEIGHT-1M` any answer carried.
    pub max_used_weight_seen: u32,
}

/// The pacer. One per market, shared by every clone of the REST client.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: WeightLimit,
    share: WeightShare,
    max_in_flight: u32,
    sent: VecDeque<Sent>,
    next_id: u64,
    header: Option<HeaderReading>,
    backoff_until: Option<TimeUs>,
    probe: Probe,
    /// 429s without `Retry-After` since the last answer that was not one.
    n_default_backoffs: u32,
    stats: LimiterStats,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn duration_between(now: TimeUs, later: TimeUs) -> Duration {
    Duration::from_micros(u64::try_from(later.saturating_sub(now)).unwrap_or(0))
}

impl Limiter {
    pub fn new(limit: WeightLimit, share: WeightShare) -> Limiter {
        Limiter {
            limit,
            share,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            sent: VecDeque::new(),
            next_id: 0,
            header: None,
            backoff_until: None,
            probe: Probe::NotNeeded,
            n_default_backoffs: 0,
            stats: LimiterStats::default(),
        }
    }

    /// At most `max_in_flight` (at least 1) requests on the wire at once.
    pub fn with_max_in_flight(mut self, max_in_flight: u32) -> Limiter {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Requests sent and not yet done.
    pub fn n_in_flight(&self) -> usize {
        self.sent.iter().filter(|sent| !sent.done).count()
    }

    /// Adopts the limit `exchangeInfo` reported.
    pub fn set_limit(&mut self, limit: WeightLimit) {
        self.limit = limit;
    }

    pub fn limit(&self) -> WeightLimit {
        self.limit
    }

    /// The weight per window we allow ourselves: `limit * share`, at least 1.
    pub fn budget(&self) -> u32 {
        ((f64::from(self.limit.limit) * self.share.get()).floor() as u32).max(1)
    }

    pub fn stats(&self) -> LimiterStats {
        self.stats
    }

    /// Until when every call waits because of a 429 or 418, if it does at `now`.
    pub fn backoff_until(&self, now: TimeUs) -> Option<TimeUs> {
        self.backoff_until.filter(|until| *until > now)
    }

    fn window_us(&self) -> i64 {
        micros(self.limit.window).max(1)
    }

    /// When a request stops counting in our sliding window. One still
    /// unanswered is taken as answered at `now`: the delay computed from it
    /// is a lower bound and the caller asks again after waiting.
    fn expiry(&self, sent: &Sent, now: TimeUs) -> TimeUs {
        sent.answered_at
            .unwrap_or(now)
            .saturating_add(self.window_us())
    }

    fn own_weight_at(&self, at: TimeUs, now: TimeUs) -> u32 {
        self.sent
            .iter()
            .filter(|sent| self.expiry(sent, now) > at)
            .map(|sent| sent.weight)
            .sum()
    }

    fn header_weight_at(&self, at: TimeUs, now: TimeUs) -> u32 {
        let Some(reading) = self.header.filter(|reading| at < reading.forget_at) else {
            return 0;
        };
        // Our requests that the reading may not include: every one not
        // answered before the read request was sent.
        let maybe_uncounted: u32 = self
            .sent
            .iter()
            .filter(|sent| sent.id != reading.request)
            .filter(|sent| {
                sent.answered_at
                    .is_none_or(|answered| answered >= reading.request_sent_at)
            })
            .filter(|sent| self.expiry(sent, now) > at)
            .map(|sent| sent.weight)
            .sum();
        reading.used.saturating_add(maybe_uncounted)
    }

    fn may_send_at(&self, weight: u32, at: TimeUs, now: TimeUs) -> bool {
        if self.backoff_until.is_some_and(|until| until > at) {
            return false;
        }
        let used = self
            .own_weight_at(at, now)
            .max(self.header_weight_at(at, now));
        used.saturating_add(weight) <= self.budget() || used == 0
    }

    /// How long to wait before sending a request of `weight` at `now`;
    /// `None` to send now. After waiting, ask again: requests still in
    /// flight may hold the budget longer than assumed.
    pub fn delay_before(&self, weight: u32, now: TimeUs) -> Option<Duration> {
        let mut candidates: Vec<TimeUs> = vec![now];
        candidates.extend(self.backoff_until);
        candidates.extend(self.header.map(|reading| reading.forget_at));
        candidates.extend(self.sent.iter().map(|sent| self.expiry(sent, now)));
        candidates.retain(|at| *at >= now);
        candidates.sort_unstable();
        candidates.dedup();
        // At the latest candidate nothing counts any more, so one always fits.
        let at = candidates
            .into_iter()
            .find(|at| self.may_send_at(weight, *at, now))
            .expect("at the latest candidate time nothing is counted");
        (at > now).then(|| duration_between(now, at))
    }

    /// Counts a request of `weight` sent at `now`, whatever the rules say
    /// (tests and [`Limiter::try_send`] use it).
    pub fn on_send(&mut self, weight: u32, now: TimeUs) -> SendId {
        self.forget_expired(now);
        let id = self.next_id;
        self.next_id += 1;
        self.sent.push_back(Sent {
            id,
            weight,
            sent_at: now,
            answered_at: None,
            done: false,
        });
        if self.probe == Probe::Wanted {
            self.probe = Probe::InFlight(id);
        }
        self.stats.n_sent += 1;
        SendId(id)
    }

    /// Every rule of the module doc in one step, so two callers sharing the
    /// limiter cannot both take the last of the budget: the request may go
    /// now (it is counted), or the caller waits and asks again.
    pub fn try_send(&mut self, weight: u32, now: TimeUs) -> Result<SendId, Wait> {
        self.forget_expired(now);
        if let Some(until) = self.backoff_until(now) {
            return Err(Wait::For(duration_between(now, until)));
        }
        let n_in_flight = self.n_in_flight();
        if self.probe != Probe::NotNeeded && n_in_flight > 0 {
            return Err(Wait::ForAnswer);
        }
        if n_in_flight >= self.max_in_flight as usize {
            return Err(Wait::ForAnswer);
        }
        match self.delay_before(weight, now) {
            None => Ok(self.on_send(weight, now)),
            Some(delay) => Err(Wait::For(delay)),
        }
    }

    /// The request `send` was answered with success (or a status other than
    /// 429/418) at `now` and is done; `used_weight` is its
    /// `X-MBX-USED-WEIGHT-1M` header, when it had one.
    pub fn on_response(&mut self, send: SendId, used_weight: Option<u32>, now: TimeUs) {
        self.on_headers(send, 200, used_weight, None, now);
        self.on_done(send, now);
    }

    /// The headers of the answer to `send` arrived at `now`. A 429 or 418
    /// holds every caller back (rule 1); the answer of a probe that is
    /// neither lets them follow (rule 2). Returns the back-off it started,
    /// if it started one, for the caller to log once.
    pub fn on_headers(
        &mut self,
        send: SendId,
        status: u16,
        used_weight: Option<u32>,
        retry_after: Option<Duration>,
        now: TimeUs,
    ) -> Option<BackoffStarted> {
        let mut request_sent_at = now;
        if let Some(sent) = self.sent.iter_mut().find(|sent| sent.id == send.0) {
            sent.answered_at.get_or_insert(now);
            request_sent_at = sent.sent_at;
        }
        if let Some(used) = used_weight {
            self.stats.max_used_weight_seen = self.stats.max_used_weight_seen.max(used);
            let window = self.window_us();
            let boundary = (now.div_euclid(window) + 1).saturating_mul(window);
            let margin = micros(BOUNDARY_MARGIN).min(window / 10);
            let reading = HeaderReading {
                used,
                request_sent_at,
                request: send.0,
                forget_at: boundary + margin,
            };
            // A reading of an older request does not replace a newer one.
            if self
                .header
                .is_none_or(|current| current.request_sent_at <= request_sent_at)
            {
                self.header = Some(reading);
            }
        }
        if holds_back(status) {
            return self.on_retry_after(status, retry_after, now);
        }
        self.n_default_backoffs = 0;
        if self.probe == Probe::InFlight(send.0) {
            self.probe = Probe::NotNeeded;
        }
        None
    }

    /// The request `send` is off the wire at `now` (its body read, or it
    /// failed, or its caller gave up): its in-flight slot is free. A probe
    /// that ends without an answer is tried again.
    pub fn on_done(&mut self, send: SendId, now: TimeUs) {
        if let Some(sent) = self.sent.iter_mut().find(|sent| sent.id == send.0) {
            sent.answered_at.get_or_insert(now);
            sent.done = true;
        }
        if self.probe == Probe::InFlight(send.0) {
            self.probe = Probe::Wanted;
        }
        self.forget_expired(now);
    }

    /// A 429 (too much weight), 418 (banned) or 403 (firewall) answer at
    /// `now`, with its
    /// `Retry-After`: every call waits until it has passed, then one probes.
    /// Returns the back-off when this answer started it (none was in force).
    pub fn on_retry_after(
        &mut self,
        status: u16,
        retry_after: Option<Duration>,
        now: TimeUs,
    ) -> Option<BackoffStarted> {
        let length = match retry_after {
            Some(retry_after) => retry_after.max(MIN_RETRY_AFTER),
            None => {
                self.n_default_backoffs = self.n_default_backoffs.saturating_add(1);
                let doubling = 2u32.saturating_pow(self.n_default_backoffs.min(31) - 1);
                if status == 418 {
                    DEFAULT_BAN.saturating_mul(doubling).min(MAX_DEFAULT_BAN)
                } else {
                    let window = self.limit.window.max(Duration::from_micros(1));
                    let to_boundary = {
                        let window_us = self.window_us();
                        let boundary = (now.div_euclid(window_us) + 1).saturating_mul(window_us)
                            + micros(BOUNDARY_MARGIN).min(window_us / 10);
                        duration_between(now, boundary)
                    };
                    window
                        .saturating_mul(doubling)
                        .min(MAX_DEFAULT_BACKOFF)
                        .max(to_boundary)
                }
            }
        };
        if status == 418 {
            self.stats.n_banned += 1;
        } else {
            self.stats.n_rate_limited += 1;
        }
        let until = now.saturating_add(micros(length));
        let was_in_force = self.backoff_until(now).is_some();
        self.backoff_until = Some(
            self.backoff_until
                .filter(|current| *current > now)
                .map_or(until, |current| current.max(until)),
        );
        // Whatever was probing, the next request after this back-off probes.
        self.probe = Probe::Wanted;
        if was_in_force {
            return None;
        }
        self.stats.n_backoffs += 1;
        Some(BackoffStarted {
            status,
            length,
            retry_after_given: retry_after.is_some(),
        })
    }

    fn forget_expired(&mut self, now: TimeUs) {
        let window = self.window_us();
        self.sent.retain(|sent| {
            !sent.done
                || sent
                    .answered_at
                    .is_none_or(|answered| answered.saturating_add(window) > now)
        });
        if self.header.is_some_and(|reading| reading.forget_at <= now) {
            self.header = None;
        }
        if self.backoff_until.is_some_and(|until| until <= now) {
            self.backoff_until = None;
        }
    }
}

/// Whole seconds of a `Retry-After` header as a duration (the HTTP-date form
/// is not used by Binance and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MICROS_PER_SECOND;

    /// 2026-01-01 01:00:00 UTC, a whole minute.
    const T0: TimeUs = 1_767_229_200_000_000;

    fn at(offset_ms: i64) -> TimeUs {
        T0 + offset_ms * 1000
    }

    fn limiter(limit: u32, share: f64) -> Limiter {
        Limiter::new(
            WeightLimit {
                limit,
                window: Duration::from_secs(60),
            },
            WeightShare::new(share).expect("valid share"),
        )
    }

    fn send_and_answer(
        limiter: &mut Limiter,
        weight: u32,
        sent_ms: i64,
        answered_ms: i64,
        used: Option<u32>,
    ) {
        let id = limiter.try_send(weight, at(sent_ms)).expect("may send");
        limiter.on_response(id, used, at(answered_ms));
    }

    #[test]
    fn documented_spot_weights() {
        let weights: Vec<u32> = [
            Endpoint::AggTrades,
            Endpoint::HistoricalTrades,
            Endpoint::Trades,
            Endpoint::Klines,
            Endpoint::ExchangeInfo,
            Endpoint::Time,
            Endpoint::Ping,
        ]
        .into_iter()
        .map(|endpoint| endpoint.weight(Market::Spot, 1000))
        .collect();
        assert_eq!(weights, vec![4, 25, 25, 2, 20, 1, 1]);
        assert_eq!(Endpoint::Klines.weight(Market::UsdM, 99), 1);
        assert_eq!(Endpoint::Klines.weight(Market::UsdM, 1000), 5);
        assert_eq!(Endpoint::Klines.weight(Market::UsdM, 1500), 10);
    }

    #[test]
    fn share_must_be_a_fraction() {
        assert!(WeightShare::new(0.0).is_none());
        assert!(WeightShare::new(1.5).is_none());
        assert!(WeightShare::new(f64::NAN).is_none());
        assert!(WeightShare::new(1.0).is_some());
        assert_eq!(limiter(6000, 0.5).budget(), 3000);
        assert_eq!(limiter(1, 0.1).budget(), 1, "a budget is never zero");
    }

    #[test]
    fn sends_freely_under_the_budget() {
        let mut pacer = limiter(100, 0.5);
        for index in 0..5 {
            assert_eq!(
                pacer.delay_before(10, at(index)),
                None,
                "{} of 50 after this one",
                10 * (index + 1)
            );
            send_and_answer(&mut pacer, 10, index, index, None);
        }
        assert!(pacer.delay_before(1, at(5)).is_some());
    }

    #[test]
    fn waits_when_the_budget_is_spent_until_the_first_request_slides_out() {
        let mut pacer = limiter(100, 0.5);
        send_and_answer(&mut pacer, 25, 0, 100, None);
        send_and_answer(&mut pacer, 25, 200, 300, None);
        // 50 of 50: the next waits until the first answer is a window old.
        assert_eq!(
            pacer.delay_before(1, at(300)),
            Some(Duration::from_millis(59_800))
        );
        assert_eq!(pacer.delay_before(1, at(60_100)), None);
        assert!(pacer.try_send(1, at(60_099)).is_err());
    }

    #[test]
    fn unanswered_requests_keep_counting() {
        let mut pacer = limiter(100, 0.5);
        let first = pacer.try_send(50, at(0)).expect("may send");
        // Still in flight after more than a window: it still counts.
        assert!(pacer.delay_before(1, at(70_000)).is_some());
        pacer.on_response(first, None, at(70_000));
        assert_eq!(
            pacer.delay_before(1, at(70_000)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(pacer.delay_before(1, at(130_000)), None);
    }

    #[test]
    fn the_header_counts_other_programs_on_the_same_ip() {
        let mut pacer = limiter(100, 0.5);
        // We sent 2, but the IP used 48 in this window.
        send_and_answer(&mut pacer, 2, 0, 10, Some(48));
        assert_eq!(pacer.delay_before(2, at(20)), None, "48 + 2 = 50");
        send_and_answer(&mut pacer, 2, 20, 30, Some(50));
        // Waits for the server's window to end (01:01:00 plus the margin),
        // not for our own 2 + 2 to slide out.
        assert_eq!(
            pacer.delay_before(2, at(40)),
            Some(Duration::from_millis(60_000 + 1000 - 40))
        );
    }

    #[test]
    fn the_header_is_trusted_only_when_it_says_more() {
        let mut pacer = limiter(100, 0.5);
        for index in 0..4 {
            // The server (its window just reset) reports less than we sent.
            send_and_answer(&mut pacer, 10, index, index, Some(1));
        }
        // Our own 40 still count: 40 + 20 > 50.
        assert!(pacer.delay_before(20, at(10)).is_some());
        assert_eq!(pacer.delay_before(10, at(10)), None);
    }

    #[test]
    fn requests_sent_after_a_reading_are_added_to_it() {
        let mut pacer = limiter(100, 0.5);
        let read = pacer.try_send(1, at(0)).expect("may send");
        let later = pacer.try_send(1, at(1)).expect("may send");
        pacer.on_response(read, Some(45), at(5));
        // The reading of 45 may not include the request still in flight:
        // 45 + 1 + 4 fits, 45 + 1 + 5 waits until that request slides out.
        assert_eq!(pacer.delay_before(4, at(6)), None);
        assert_eq!(
            pacer.delay_before(5, at(6)),
            Some(Duration::from_millis(60_000))
        );
        // Nor may the reading of the later request include the earlier one,
        // which the server may have counted after it.
        pacer.on_response(later, Some(46), at(7));
        assert_eq!(pacer.delay_before(3, at(8)), None);
        assert!(pacer.delay_before(4, at(8)).is_some());
    }

    #[test]
    fn an_older_reading_does_not_replace_a_newer_one() {
        let mut pacer = limiter(100, 0.5);
        let older = pacer.try_send(1, at(0)).expect("may send");
        let newer = pacer.try_send(1, at(1)).expect("may send");
        pacer.on_response(newer, Some(49), at(2));
        pacer.on_response(older, Some(3), at(3));
        assert!(pacer.delay_before(2, at(4)).is_some());
    }

    #[test]
    fn a_reading_is_forgotten_after_its_window() {
        let mut pacer = limiter(100, 0.5);
        send_and_answer(&mut pacer, 1, 30_000, 30_000, Some(50));
        assert!(pacer.delay_before(1, at(59_000)).is_some());
        // Window [01:00, 01:01) plus 1 s margin.
        assert_eq!(pacer.delay_before(1, at(61_000)), None);
    }

    #[test]
    fn too_many_requests_backs_off_for_retry_after() {
        let mut pacer = limiter(6000, 0.5);
        pacer.on_retry_after(429, Some(Duration::from_secs(7)), at(500));
        assert_eq!(pacer.backoff_until(at(500)), Some(at(7500)));
        assert_eq!(pacer.delay_before(1, at(500)), Some(Duration::from_secs(7)));
        assert_eq!(
            pacer.delay_before(1, at(7499)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(pacer.delay_before(1, at(7500)), None);
        assert_eq!(pacer.stats().n_rate_limited, 1);
    }

    #[test]
    fn a_ban_backs_off_for_retry_after_or_two_minutes() {
        let mut pacer = limiter(6000, 0.5);
        pacer.on_retry_after(418, None, at(0));
        assert_eq!(pacer.delay_before(1, at(0)), Some(Duration::from_secs(120)));
        pacer.on_retry_after(418, Some(Duration::from_secs(3600)), at(1000));
        assert_eq!(
            pacer.delay_before(1, at(1000)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(pacer.stats().n_banned, 2);
    }

    /// Binance's 418 names the ban's end; one that does not is met with
    /// the shortest ban, doubled while such answers repeat (a ban grows to
    /// three days, and a probe inside one may lengthen it), up to an hour.
    #[test]
    fn bans_without_retry_after_double_to_an_hour() {
        let mut pacer = limiter(6000, 0.5);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..7 {
            let probe = pacer.try_send(1, at(now)).expect("the probe goes");
            let started = pacer.on_headers(probe, 418, None, None, at(now + 10));
            pacer.on_done(probe, at(now + 10));
            let length = started.expect("a back-off starts").length;
            lengths.push(length.as_secs());
            now += 10 + i64::try_from(length.as_millis()).expect("short");
            assert_eq!(
                pacer.delay_before(1, at(now - 1)),
                Some(Duration::from_millis(1))
            );
        }
        assert_eq!(lengths, [120, 240, 480, 960, 1920, 3600, 3600]);
        // An answer that does not hold back starts the doubling again.
        let ok = pacer.try_send(1, at(now)).expect("the probe goes");
        pacer.on_headers(ok, 200, None, None, at(now + 10));
        pacer.on_done(ok, at(now + 10));
        let started = pacer.on_retry_after(418, None, at(now + 20));
        assert_eq!(started.map(|b| b.length), Some(Duration::from_secs(120)));
    }

    /// A server that rounds the wait down says `Retry-After: 0` in the
    /// last second of its window: a second, not a burst of probes.
    #[test]
    fn a_retry_after_of_zero_still_backs_off_a_second() {
        let mut pacer = limiter(6000, 0.5);
        let started = pacer.on_retry_after(429, Some(Duration::ZERO), at(59_500));
        assert_eq!(started.map(|b| b.length), Some(Duration::from_secs(1)));
        assert_eq!(pacer.backoff_until(at(59_500)), Some(at(60_500)));
        assert_eq!(
            pacer.delay_before(1, at(59_600)),
            Some(Duration::from_millis(900))
        );
    }

    #[test]
    fn a_shorter_retry_after_does_not_shorten_a_back_off() {
        let mut pacer = limiter(6000, 0.5);
        pacer.on_retry_after(429, Some(Duration::from_secs(30)), at(0));
        pacer.on_retry_after(429, Some(Duration::from_secs(1)), at(10));
        assert_eq!(pacer.backoff_until(at(10)), Some(at(30_000)));
    }

    #[test]
    fn too_many_requests_without_retry_after_backs_off_a_window_doubling_to_a_cap() {
        let mut pacer = limiter(6000, 0.5);
        let started = pacer.on_retry_after(429, None, at(45_000));
        assert_eq!(
            started,
            Some(BackoffStarted {
                status: 429,
                length: Duration::from_secs(60),
                retry_after_given: false
            })
        );
        assert_eq!(pacer.backoff_until(at(45_000)), Some(at(105_000)));
        // The probe after it gets 429 again: two windows, then four...
        let probe = pacer.try_send(1, at(105_000)).expect("the probe goes");
        let again = pacer.on_headers(probe, 429, None, None, at(105_100));
        assert_eq!(again.map(|b| b.length), Some(Duration::from_secs(120)));
        pacer.on_done(probe, at(105_100));
        for _ in 0..10 {
            pacer.on_retry_after(429, None, at(1_000_000));
        }
        assert_eq!(
            pacer.backoff_until(at(1_000_000)),
            Some(at(1_000_000 + 600_000)),
            "capped at ten minutes"
        );
        // Any other answer resets the doubling.
        let mut pacer = limiter(6000, 0.5);
        pacer.on_retry_after(429, None, at(0));
        pacer.on_retry_after(429, None, at(1));
        let ok = pacer.on_send(1, at(200_000));
        pacer.on_response(ok, None, at(200_001));
        let started = pacer.on_retry_after(429, None, at(290_000));
        assert_eq!(started.map(|b| b.length), Some(Duration::from_secs(60)));
        // Never shorter than the rest of the server's window (plus margin).
        let started = limiter(6000, 0.5).on_retry_after(429, None, at(0));
        assert_eq!(started.map(|b| b.length), Some(Duration::from_secs(61)));
    }

    #[test]
    fn a_firewall_403_backs_off_like_a_429_and_its_probe_decides() {
        let mut pacer = limiter(6000, 0.5);
        let first = pacer.try_send(1, at(45_000)).expect("may send");
        let started = pacer.on_headers(first, 403, None, None, at(45_010));
        assert_eq!(
            started,
            Some(BackoffStarted {
                status: 403,
                length: Duration::from_secs(60),
                retry_after_given: false
            })
        );
        pacer.on_done(first, at(45_010));
        assert!(pacer.try_send(1, at(100_000)).is_err(), "held back");
        // Blocked again at the probe: twice as long; then an answer lets
        // every caller follow.
        let probe = pacer.try_send(1, at(105_010)).expect("the probe goes");
        let again = pacer.on_headers(probe, 403, None, None, at(105_020));
        assert_eq!(again.map(|b| b.length), Some(Duration::from_secs(120)));
        pacer.on_done(probe, at(105_020));
        let probe = pacer.try_send(1, at(225_020)).expect("the probe goes");
        pacer.on_response(probe, Some(1), at(225_030));
        assert!(pacer.try_send(1, at(225_040)).is_ok(), "the others follow");
        // With a Retry-After, that long.
        let started = limiter(6000, 0.5).on_retry_after(403, Some(Duration::from_secs(5)), at(0));
        assert_eq!(started.map(|b| b.length), Some(Duration::from_secs(5)));
        assert!(holds_back(403) && holds_back(429) && holds_back(418));
        assert!(!holds_back(451) && !holds_back(500) && !holds_back(400));
    }

    #[test]
    fn a_back_off_is_reported_once_however_many_answers_extend_it() {
        let mut pacer = limiter(6000, 0.5);
        let ids: Vec<SendId> = (0..3)
            .map(|index| pacer.try_send(4, at(index)).expect("may send"))
            .collect();
        let first = pacer.on_headers(
            ids[0],
            429,
            Some(6001),
            Some(Duration::from_secs(5)),
            at(10),
        );
        assert_eq!(first.map(|b| b.length), Some(Duration::from_secs(5)));
        // The two others were on the wire: their 429s extend, silently.
        assert_eq!(
            pacer.on_headers(ids[1], 429, None, Some(Duration::from_secs(6)), at(20)),
            None
        );
        assert_eq!(
            pacer.on_headers(ids[2], 429, None, Some(Duration::from_secs(1)), at(30)),
            None
        );
        assert_eq!(pacer.backoff_until(at(30)), Some(at(6020)));
        let stats = pacer.stats();
        assert_eq!((stats.n_rate_limited, stats.n_backoffs), (3, 1));
    }

    #[test]
    fn requests_on_the_wire_during_a_back_off_count_as_used() {
        let mut pacer = limiter(100, 0.5);
        let on_wire = pacer.try_send(40, at(0)).expect("may send");
        pacer.on_retry_after(429, Some(Duration::from_secs(1)), at(10));
        pacer.on_headers(on_wire, 429, None, Some(Duration::from_secs(1)), at(500));
        pacer.on_done(on_wire, at(500));
        // Its own 429 extended the back-off to 1.5 s; after it, its 40
        // still count until a window after its answer.
        assert_eq!(pacer.backoff_until(at(1010)), Some(at(1500)));
        assert_eq!(pacer.delay_before(10, at(1500)), None);
        assert_eq!(
            pacer.delay_before(11, at(1500)),
            Some(Duration::from_millis(60_500 - 1500))
        );
    }

    #[test]
    fn after_a_back_off_one_request_probes_alone() {
        let mut pacer = limiter(6000, 0.5);
        let slow = pacer.try_send(4, at(0)).expect("may send");
        pacer.on_retry_after(429, Some(Duration::from_secs(2)), at(100));
        assert_eq!(
            pacer.try_send(4, at(100)),
            Err(Wait::For(Duration::from_secs(2)))
        );
        // Back-off over, but a request from before it is still on the wire:
        // the probe waits for it to end.
        assert_eq!(pacer.try_send(4, at(2100)), Err(Wait::ForAnswer));
        pacer.on_done(slow, at(2200));
        let probe = pacer.try_send(4, at(2200)).expect("the probe goes");
        assert_eq!(pacer.try_send(4, at(2201)), Err(Wait::ForAnswer), "alone");
        // Its answer lets the others follow.
        pacer.on_headers(probe, 200, Some(10), None, at(2300));
        let follower = pacer.try_send(4, at(2300)).expect("the rest follow");
        pacer.on_done(probe, at(2310));
        pacer.on_done(follower, at(2320));
    }

    #[test]
    fn a_probe_that_gets_429_backs_off_again_and_one_that_fails_probes_again() {
        let mut pacer = limiter(6000, 0.5);
        pacer.on_retry_after(429, Some(Duration::from_secs(1)), at(0));
        let probe = pacer.try_send(4, at(1000)).expect("the probe goes");
        let again = pacer.on_headers(probe, 429, None, Some(Duration::from_secs(3)), at(1100));
        assert!(again.is_some(), "a new back-off, reported");
        pacer.on_done(probe, at(1100));
        assert_eq!(
            pacer.try_send(4, at(1100)),
            Err(Wait::For(Duration::from_secs(3)))
        );
        // The next probe is cancelled before any answer: another one probes.
        let cancelled = pacer.try_send(4, at(4100)).expect("the probe goes");
        assert_eq!(pacer.try_send(4, at(4101)), Err(Wait::ForAnswer));
        pacer.on_done(cancelled, at(4200));
        let probe = pacer.try_send(4, at(4200)).expect("probes again");
        assert_eq!(pacer.try_send(4, at(4201)), Err(Wait::ForAnswer));
        pacer.on_response(probe, None, at(4300));
        assert!(pacer.try_send(4, at(4300)).is_ok());
    }

    #[test]
    fn requests_in_flight_are_bounded() {
        let mut pacer = limiter(6000, 0.5).with_max_in_flight(2);
        let first = pacer.try_send(1, at(0)).expect("may send");
        let second = pacer.try_send(1, at(0)).expect("may send");
        assert_eq!(pacer.try_send(1, at(0)), Err(Wait::ForAnswer));
        assert_eq!(pacer.n_in_flight(), 2);
        // Headers alone do not free the slot: the body is still being read.
        pacer.on_headers(first, 200, None, None, at(5));
        assert_eq!(pacer.try_send(1, at(5)), Err(Wait::ForAnswer));
        pacer.on_done(first, at(6));
        assert!(pacer.try_send(1, at(6)).is_ok());
        pacer.on_done(second, at(7));
        assert_eq!(pacer.n_in_flight(), 1);
        assert_eq!(limiter(1, 1.0).with_max_in_flight(0).max_in_flight, 1);
    }

    #[test]
    fn a_request_heavier_than_the_budget_goes_alone() {
        let mut pacer = limiter(30, 0.5);
        assert_eq!(pacer.budget(), 15);
        assert_eq!(pacer.delay_before(20, at(0)), None);
        send_and_answer(&mut pacer, 20, 0, 10, None);
        assert_eq!(
            pacer.delay_before(20, at(20)),
            Some(Duration::from_millis(59_990))
        );
        assert_eq!(
            pacer.delay_before(1, at(20)),
            Some(Duration::from_millis(59_990))
        );
    }

    #[test]
    fn a_new_limit_changes_the_budget() {
        let mut pacer = limiter(6000, 0.5);
        pacer.set_limit(WeightLimit {
            limit: 1200,
            window: Duration::from_secs(60),
        });
        assert_eq!(pacer.budget(), 600);
    }

    #[test]
    fn retry_after_parses_whole_seconds() {
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn paced_sends_never_pass_the_budget_in_any_window() {
        // A greedy caller that always sends as soon as it may, with answers
        // taking 0-300 ms: in every window-long span, our weight stays in budget.
        let mut pacer = limiter(200, 0.5);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut now = T0 + 123_456;
        let mut sends: Vec<(TimeUs, TimeUs, u32)> = Vec::new();
        while now < T0 + 600 * MICROS_PER_SECOND {
            let weight = [1, 2, 4, 25][rng.usize(..4)];
            match pacer.try_send(weight, now) {
                Ok(id) => {
                    let answered = now + rng.i64(0..300_000);
                    pacer.on_response(id, None, answered);
                    sends.push((now, answered, weight));
                    now = answered;
                }
                Err(Wait::For(delay)) => now += micros(delay),
                Err(Wait::ForAnswer) => unreachable!("every request is answered at once"),
            }
        }
        assert!(
            sends.len() > 40,
            "the caller made progress: {}",
            sends.len()
        );
        let window = 60 * MICROS_PER_SECOND;
        for (start, _, _) in &sends {
            // Any request the server may count in [start, start + window).
            let in_window: u32 = sends
                .iter()
                .filter(|(sent, answered, _)| *answered >= *start && *sent < start + window)
                .map(|(_, _, weight)| weight)
                .sum();
            assert!(
                in_window <= pacer.budget(),
                "{in_window} in the window from {start}"
            );
        }
    }
}
