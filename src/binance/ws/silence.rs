//! Pure judgements of a link that answers pings but delivers no data: the
//! rate its streams usually deliver at ([`DataRate`], kline closes), the bound learned from it ([`silence_bound`]), whether the
//! link is silent ([`judge_silence`]) or some of its acknowledged streams
//! never spoke ([`judge_unheard`]), and what the market's other links are
//! doing meanwhile ([`MarketActivity`]). Time is passed in.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ConnectionSettings;
use crate::domain::{KlineInterval, StreamKind, Symbol};

/// A silent link's bound, in multiples of the typical gap between its data
/// frames. Trades come in bursts, so a quiet spell of several typical gaps
/// is common; twenty is rare enough not to churn healthy links (for
/// exponential gaps, e^-20).
const SILENCE_GAP_FACTOR: u32 = 20;
/// A silent link's bound, in intervals of its shortest kline stream: a
/// kline stream sends its closing update at the end of every interval,
/// trades or not (reference 7), so three closes missed are a sure sign.
const SILENCE_CLOSES_MISSED: u32 = 3;
/// Gaps seen before their average is trusted: a link's first frames (a
/// burst, a subscription's first pushes) say little about its usual rate.
const MIN_GAPS_LEARNED: u32 = 16;
/// Weight of the newest gap in the moving average (1/16: about the last
/// sixteen gaps count, so the rate follows the day's rhythm within minutes
/// on a busy link).
const GAP_AVERAGE_WEIGHT: f64 = 1.0 / 16.0;

/// The longest a kline stream is quiet while its link is healthy: until
/// its interval's closing update. Its updates of the open kline promise
/// nothing: the reference gives an update speed (4.3: 2 s; 4.4: 250 ms on
/// futures), but the real captures (`../shared/data/real/ws/cryptofeed`)
/// show it is a most, not a clock: an open kline is sent again only when a
/// trade changed it, quiet futures contracts 10 to 23 s apart.
pub fn kline_speaks_within(interval: KlineInterval) -> Duration {
    Duration::from_micros(interval.max_length_us().unsigned_abs())
}

/// The shortest of [`kline_speaks_within`] among a link's kline streams,
/// if it has any.
pub(super) fn soonest_kline_close(streams: &[(Symbol, StreamKind)]) -> Option<Duration> {
    streams
        .iter()
        .filter_map(|(_, kind)| match kind {
            StreamKind::Kline(interval) => Some(kline_speaks_within(*interval)),
            _ => None,
        })
        .min()
}

/// The rhythm of one link's data frames: when it last delivered and the
/// typical gap between deliveries (a moving average).
#[derive(Debug, Clone, Copy)]
pub struct DataRate {
    /// The link's last data frame, or its opening; moved on past time the
    /// task spent not reading (a recorder backlog is not the exchange's
    /// silence).
    quiet_since: Instant,
    last_data: Option<Instant>,
    /// Seconds (a float: updated for every data frame, converted only when
    /// a bound is asked for).
    typical_gap_secs: Option<f64>,
    n_gaps: u32,
}

impl DataRate {
    pub fn new(now: Instant) -> DataRate {
        DataRate {
            quiet_since: now,
            last_data: None,
            typical_gap_secs: None,
            n_gaps: 0,
        }
    }

    pub fn note_data(&mut self, now: Instant) {
        if let Some(last) = self.last_data {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            let average = match self.typical_gap_secs {
                None => gap,
                Some(typical) => typical + (gap - typical) * GAP_AVERAGE_WEIGHT,
            };
            self.typical_gap_secs = Some(average.max(0.0));
            self.n_gaps = self.n_gaps.saturating_add(1);
        }
        self.last_data = Some(now);
        self.quiet_since = self.quiet_since.max(now);
    }

    /// The task did not read until `now`: the silence counts from here.
    pub fn excuse_until(&mut self, now: Instant) {
        self.quiet_since = self.quiet_since.max(now);
    }

    /// A replacement carries the same streams: it starts from what the old
    /// link learned about their rate.
    pub fn learn_from(&mut self, older: &DataRate) {
        if self.n_gaps < older.n_gaps {
            self.typical_gap_secs = older.typical_gap_secs;
            self.n_gaps = older.n_gaps;
        }
    }

    /// The learned gap between data frames.
    fn typical_gap(&self) -> Option<Duration> {
        self.typical_gap_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    }
}

/// How long a link may go without data before it is judged silent: the
/// shorter of what its kline closes and its learned gaps promise, kept
/// between `silent_after_min` and `silent_after_max`. `None` while nothing
/// is known (no kline stream, too few gaps): only `dead_after` applies then.
pub fn silence_bound(
    settings: &ConnectionSettings,
    kline_close_within: Option<Duration>,
    rate: &DataRate,
) -> Option<Duration> {
    let from_closes = kline_close_within.map(|within| within.saturating_mul(SILENCE_CLOSES_MISSED));
    let from_gaps = rate
        .typical_gap()
        .filter(|_| rate.n_gaps >= MIN_GAPS_LEARNED)
        .map(|gap| gap.saturating_mul(SILENCE_GAP_FACTOR));
    let bound = match (from_closes, from_gaps) {
        (Some(closes), Some(gaps)) => closes.min(gaps),
        (closes, gaps) => closes.or(gaps)?,
    };
    // max then min rather than clamp: never panics, and the cap wins.
    Some(
        bound
            .max(settings.silent_after_min)
            .min(settings.silent_after_max),
    )
}

/// What the market's other links say, for [`judge_silence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketPeers {
    /// This link is the market's only one: its own rate is all there is.
    Alone,
    /// Other links exist; the newest data any link of the market delivered.
    Newest(Option<Instant>),
}

/// The verdict on one link's silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Nothing is known of the link's rate: it is never judged silent.
    Unknown,
    /// Not silent; look again at this time if no data came meanwhile.
    CheckAt(Instant),
    /// Silent for `silence`, past `bound`: replace it.
    Silent { silence: Duration, bound: Duration },
}

/// Whether a link is silent now: pure, with time passed in. Past its bound
/// a link is silent while any other link of the market delivered within
/// that bound (the exchange is sending, this link is not), or when it is
/// the market's only link. When the whole market is quiet (a trading halt,
/// an exchange-wide pause), replacing links would only churn, so judgement
/// waits for `silent_after_max`.
pub fn judge_silence(
    settings: &ConnectionSettings,
    kline_close_within: Option<Duration>,
    rate: &DataRate,
    peers: MarketPeers,
    now: Instant,
) -> Silence {
    let Some(bound) = silence_bound(settings, kline_close_within, rate) else {
        return Silence::Unknown;
    };
    let silence = now.saturating_duration_since(rate.quiet_since);
    if silence < bound {
        return Silence::CheckAt(rate.quiet_since + bound);
    }
    let others_deliver = match peers {
        MarketPeers::Alone => true,
        // This link has delivered nothing within the bound, so data that
        // recent came from another link.
        MarketPeers::Newest(newest) => {
            newest.is_some_and(|newest| now.saturating_duration_since(newest) < bound)
        }
    };
    if others_deliver {
        return Silence::Silent { silence, bound };
    }
    let cap = settings.silent_after_max.max(bound);
    if silence >= cap {
        return Silence::Silent {
            silence,
            bound: cap,
        };
    }
    // Look again soon: the others may start delivering before the cap.
    let recheck = (bound / 4).max(Duration::from_millis(10));
    Silence::CheckAt((now + recheck).min(rate.quiet_since + cap))
}

/// The verdict on a link's streams that were subscribed and never heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unheard {
    /// Not (yet) judged; look again at this time, if any.
    Wait(Option<Instant>),
    /// Silent past the bound while the market delivered: name them.
    Silent,
}

/// Whether a link's streams that were acknowledged and never delivered
/// are *subscribed but silent*: pure, with time passed in. A stream on the
/// wrong USD-M route does exactly this (reference 1.3). Judged `bound`
/// after the last subscription was acknowledged, and only while data
/// flows elsewhere (this link's other streams, or the market's other
/// links) within the bound: when the whole market is quiet, only after
/// `cap`. A link that is its market's only one has nothing to compare
/// with and is judged at the bound, as [`judge_silence`] does, so a silent
/// lone link is never kept longer than before.
pub fn judge_unheard(
    bound: Duration,
    cap: Duration,
    subscribed_at: Option<Instant>,
    link_last_data: Option<Instant>,
    peers: MarketPeers,
    now: Instant,
) -> Unheard {
    let Some(subscribed_at) = subscribed_at else {
        return Unheard::Wait(None);
    };
    let judged_at = subscribed_at + bound;
    if now < judged_at {
        return Unheard::Wait(Some(judged_at));
    }
    let recent =
        |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) < bound);
    let peers_deliver = match peers {
        MarketPeers::Alone => true,
        MarketPeers::Newest(newest) => recent(newest),
    };
    if recent(link_last_data) || peers_deliver {
        return Unheard::Silent;
    }
    let capped_at = subscribed_at + cap.max(bound);
    if now >= capped_at {
        return Unheard::Silent;
    }
    let recheck = (bound / 4).max(Duration::from_millis(10));
    Unheard::Wait(Some((now + recheck).min(capped_at)))
}

/// The newest data frame any link of one market delivered, and how many
/// connection tasks the market runs: what [`judge_silence`] compares a link
/// with. Atomics, as every task of the market writes it on every frame.
#[derive(Debug)]
pub struct MarketActivity {
    origin: Instant,
    /// Milliseconds after `origin`; -1 before any data.
    newest_data_ms: AtomicI64,
    n_tasks: AtomicUsize,
}

impl Default for MarketActivity {
    fn default() -> Self {
        MarketActivity {
            origin: Instant::now(),
            newest_data_ms: AtomicI64::new(-1),
            n_tasks: AtomicUsize::new(0),
        }
    }
}

impl MarketActivity {
    pub fn note_data(&self, now: Instant) {
        let ms = i64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(i64::MAX);
        self.newest_data_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn peers(&self) -> MarketPeers {
        if self.n_tasks.load(Ordering::Relaxed) <= 1 {
            return MarketPeers::Alone;
        }
        let newest = u64::try_from(self.newest_data_ms.load(Ordering::Relaxed))
            .ok()
            .map(|ms| self.origin + Duration::from_millis(ms));
        MarketPeers::Newest(newest)
    }

    /// Counts a connection task in for as long as the guard lives.
    pub(super) fn join(self: &Arc<Self>) -> ActivityMember {
        self.n_tasks.fetch_add(1, Ordering::Relaxed);
        ActivityMember(Arc::clone(self))
    }
}

/// A connection task counted in its market's [`MarketActivity`].
pub(super) struct ActivityMember(Arc<MarketActivity>);

impl Drop for ActivityMember {
    fn drop(&mut self) {
        self.0.n_tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rate that saw `n_gaps` gaps of `gap` each, the last data at `last`.
    fn steady_rate(gap: Duration, n_gaps: u32, last: Instant) -> DataRate {
        let first = last - gap * n_gaps;
        let mut rate = DataRate::new(first);
        for index in 0..=n_gaps {
            rate.note_data(first + gap * index);
        }
        rate
    }

    #[test]
    fn silence_bound_follows_kline_closes_and_learned_gaps() {
        let settings = ConnectionSettings::default();
        let now = Instant::now();
        let minute = kline_speaks_within(KlineInterval::Minute1);
        assert_eq!(minute, Duration::from_secs(60));
        // Nothing known yet: no judgement (only dead_after applies).
        let fresh = DataRate::new(now);
        assert_eq!(silence_bound(&settings, None, &fresh), None);
        // A minute kline link: three closes, whatever the market (updates
        // of the open kline come only with trades).
        assert_eq!(
            silence_bound(&settings, Some(minute), &fresh),
            Some(Duration::from_secs(180))
        );
        // Second klines: three closes are below the floor, which holds.
        assert_eq!(
            silence_bound(
                &settings,
                Some(kline_speaks_within(KlineInterval::Second1)),
                &fresh
            ),
            Some(settings.silent_after_min)
        );
        // Hour klines: the cap.
        assert_eq!(
            silence_bound(
                &settings,
                Some(kline_speaks_within(KlineInterval::Hour1)),
                &fresh
            ),
            Some(settings.silent_after_max)
        );
        // Too few gaps to trust.
        let young = steady_rate(Duration::from_secs(3), MIN_GAPS_LEARNED - 1, now);
        assert_eq!(silence_bound(&settings, None, &young), None);
        // A trade link with a gap of 3 s: 20 gaps.
        let learned = steady_rate(Duration::from_secs(3), MIN_GAPS_LEARNED, now);
        assert_eq!(
            silence_bound(&settings, None, &learned),
            Some(Duration::from_secs(60))
        );
        // The trades promise more than the kline closes: the shorter wins.
        assert_eq!(
            silence_bound(&settings, Some(minute), &learned),
            Some(Duration::from_secs(60))
        );
        // A busy link: the floor; a quiet one: the cap.
        let busy = steady_rate(Duration::from_millis(10), 100, now);
        assert_eq!(
            silence_bound(&settings, None, &busy),
            Some(settings.silent_after_min)
        );
        let quiet = steady_rate(Duration::from_secs(300), 20, now);
        assert_eq!(
            silence_bound(&settings, None, &quiet),
            Some(settings.silent_after_max)
        );
    }

    /// A quiet futures contract's minute klines, as captured (updates 10
    /// to 23 s apart, only with trades): the lone link carrying them is
    /// not silent between closes.
    #[test]
    fn a_quiet_kline_link_is_not_silent_between_closes() {
        let settings = ConnectionSettings::default();
        let start = Instant::now();
        let mut rate = DataRate::new(start);
        let mut now = start;
        for gap_secs in [11, 23, 6, 17, 20, 3] {
            now += Duration::from_secs(gap_secs);
            let verdict = judge_silence(
                &settings,
                Some(kline_speaks_within(KlineInterval::Minute1)),
                &rate,
                MarketPeers::Alone,
                now,
            );
            assert!(
                matches!(verdict, Silence::CheckAt(_)),
                "{gap_secs} s after the last update: {verdict:?}"
            );
            rate.note_data(now);
        }
        // Three closes missed: silent.
        let verdict = judge_silence(
            &settings,
            Some(kline_speaks_within(KlineInterval::Minute1)),
            &rate,
            MarketPeers::Alone,
            now + Duration::from_secs(180),
        );
        assert!(matches!(verdict, Silence::Silent { .. }), "{verdict:?}");
    }

    #[test]
    fn the_gap_average_follows_a_changing_rate() {
        let start = Instant::now();
        let mut rate = steady_rate(Duration::from_secs(1), 50, start);
        assert_eq!(rate.typical_gap(), Some(Duration::from_secs(1)));
        let mut now = start;
        for _ in 0..50 {
            now += Duration::from_millis(100);
            rate.note_data(now);
        }
        let typical = rate.typical_gap().expect("learned");
        assert!(typical < Duration::from_millis(150), "{typical:?}");
        // A replacement starts from what the old link learned.
        let mut replacement = DataRate::new(now);
        replacement.learn_from(&rate);
        assert_eq!(replacement.typical_gap(), rate.typical_gap());
        assert_eq!(replacement.quiet_since, now);
    }

    #[test]
    fn unheard_streams_are_judged_after_the_bound_only_while_data_flows_elsewhere() {
        let bound = Duration::from_secs(20);
        let cap = Duration::from_secs(600);
        let start = Instant::now();
        let later = |secs: u64| start + Duration::from_secs(secs);
        // Not subscribed yet: nothing to judge.
        assert_eq!(
            judge_unheard(bound, cap, None, None, MarketPeers::Alone, later(100)),
            Unheard::Wait(None)
        );
        // Before the bound: look again at it.
        assert_eq!(
            judge_unheard(bound, cap, Some(start), None, MarketPeers::Alone, later(5)),
            Unheard::Wait(Some(later(20)))
        );
        // Past it, another link of the market delivered within the bound.
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                None,
                MarketPeers::Newest(Some(later(25))),
                later(30)
            ),
            Unheard::Silent
        );
        // Past it, this link's other streams deliver.
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                Some(later(29)),
                MarketPeers::Alone,
                later(30)
            ),
            Unheard::Silent
        );
        // The whole market is quiet: wait, until the cap.
        let verdict = judge_unheard(
            bound,
            cap,
            Some(start),
            None,
            MarketPeers::Newest(Some(later(1))),
            later(30),
        );
        assert_eq!(verdict, Unheard::Wait(Some(later(35))));
        // The market's only link is judged at the bound, as judge_silence does.
        assert_eq!(
            judge_unheard(bound, cap, Some(start), None, MarketPeers::Alone, later(20)),
            Unheard::Silent
        );
        assert_eq!(
            judge_unheard(
                bound,
                cap,
                Some(start),
                None,
                MarketPeers::Alone,
                later(600)
            ),
            Unheard::Silent
        );
    }

    #[test]
    fn a_link_is_silent_past_its_bound_while_the_others_deliver() {
        let settings = ConnectionSettings::default();
        let push = Some(Duration::from_secs(2));
        let last = Instant::now();
        let rate = steady_rate(Duration::from_millis(50), 100, last);
        let bound = Duration::from_secs(20);
        let others_now = |now: Instant| MarketPeers::Newest(Some(now - Duration::from_millis(5)));

        let before = last + Duration::from_secs(19);
        assert_eq!(
            judge_silence(&settings, push, &rate, others_now(before), before),
            Silence::CheckAt(last + bound)
        );
        let after = last + Duration::from_secs(21);
        assert_eq!(
            judge_silence(&settings, push, &rate, others_now(after), after),
            Silence::Silent {
                silence: Duration::from_secs(21),
                bound
            }
        );
        // Alone in its market: the rate bound alone decides.
        assert!(matches!(
            judge_silence(&settings, push, &rate, MarketPeers::Alone, after),
            Silence::Silent { .. }
        ));
        // The whole market is quiet: wait for the cap, looking again soon.
        let market_quiet = MarketPeers::Newest(Some(last));
        assert_eq!(
            judge_silence(&settings, push, &rate, market_quiet, after),
            Silence::CheckAt(after + bound / 4)
        );
        assert_eq!(
            judge_silence(&settings, push, &rate, MarketPeers::Newest(None), after),
            Silence::CheckAt(after + bound / 4)
        );
        let past_cap = last + settings.silent_after_max;
        assert_eq!(
            judge_silence(&settings, push, &rate, market_quiet, past_cap),
            Silence::Silent {
                silence: settings.silent_after_max,
                bound: settings.silent_after_max
            }
        );
        // Time the task spent not reading is not silence.
        let mut excused = rate;
        excused.excuse_until(last + Duration::from_secs(15));
        assert_eq!(
            judge_silence(&settings, push, &excused, others_now(after), after),
            Silence::CheckAt(last + Duration::from_secs(35))
        );
        // Nothing known: never judged.
        let trade_only_fresh = DataRate::new(last);
        assert_eq!(
            judge_silence(
                &settings,
                None,
                &trade_only_fresh,
                others_now(past_cap),
                past_cap
            ),
            Silence::Unknown
        );
    }

    #[tokio::test(start_paused = true)]
    async fn market_activity_counts_its_tasks_and_keeps_the_newest_data() {
        let activity = Arc::new(MarketActivity::default());
        let first = activity.join();
        assert_eq!(activity.peers(), MarketPeers::Alone);
        let second = activity.join();
        assert_eq!(activity.peers(), MarketPeers::Newest(None));
        let start = Instant::now();
        activity.note_data(start + Duration::from_secs(3));
        activity.note_data(start + Duration::from_secs(1));
        assert_eq!(
            activity.peers(),
            MarketPeers::Newest(Some(start + Duration::from_secs(3)))
        );
        drop(second);
        assert_eq!(activity.peers(), MarketPeers::Alone);
        drop(first);
    }
}
