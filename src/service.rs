//! Talking to the service manager (systemd's `sd_notify` protocol, through
//! the `sd-notify` crate): `READY=1` once the WAL is open and every market's
//! first link is subscribed (or after [`READY_WITHIN`], saying why),
//! `STATUS=` lines a person reads in `systemctl status`, `WATCHDOG=1`
//! keep-alives only while the pipeline makes progress, and `STOPPING=1`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing, so the
//! binary runs the same everywhere. The decisions (when ready, when a
//! keep-alive is due, what the status says) are pure and unit-tested; only
//! [`ServiceNotifier::send`] does I/O.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::domain::{Hour, Market};

/// READY=1 is sent at the latest this long after start, even if a market
/// has no subscribed link yet (its STATUS says which): systemd's start
/// timeout (90 s in the shipped unit) must not kill a daemon that is
/// recording the other markets and retrying this one.
pub const READY_WITHIN: Duration = Duration::from_secs(45);

/// A STATUS= line is sent at most this often (and whenever readiness changes).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What the pipeline's WAL is doing, for the keep-alive decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalProgress {
    /// Nothing is waiting to be written and no batch is running.
    pub idle: bool,
    /// When the last WAL batch committed (or the runtime started).
    pub last_commit: Instant,
}

/// The figures a STATUS= line shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFigures {
    pub n_streams: usize,
    pub links_up: u64,
    pub frames_durable: u64,
    pub wal_bytes: u64,
    pub last_sealed: Option<Hour>,
}

/// Readiness, keep-alive and status bookkeeping of one running recorder.
#[derive(Debug)]
pub struct ServiceNotifier {
    markets: BTreeSet<Market>,
    subscribed: BTreeSet<Market>,
    started: Instant,
    ready: bool,
    /// `WATCHDOG_USEC` from the service manager, when it asked for keep-alives.
    watchdog: Option<Duration>,
    last_keepalive: Option<Instant>,
    last_status: Option<Instant>,
    /// A failed send is logged once, not at every turn.
    send_failed: bool,
}

impl ServiceNotifier {
    /// Reads the watchdog interval the service manager set (none outside
    /// systemd).
    pub fn from_env(markets: impl IntoIterator<Item = Market>, started: Instant) -> Self {
        Self::new(markets, started, sd_notify::watchdog_enabled())
    }

    pub fn new(
        markets: impl IntoIterator<Item = Market>,
        started: Instant,
        watchdog: Option<Duration>,
    ) -> Self {
        ServiceNotifier {
            markets: markets.into_iter().collect(),
            subscribed: BTreeSet::new(),
            started,
            ready: false,
            watchdog,
            last_keepalive: None,
            last_status: None,
            send_failed: false,
        }
    }

    /// A link of `market` connected and sent its subscription.
    pub fn subscribed(&mut self, market: Market) {
        self.subscribed.insert(market);
    }

    /// The markets still without a subscribed link.
    fn waiting(&self) -> Vec<Market> {
        self.markets.difference(&self.subscribed).copied().collect()
    }

    /// Whether READY=1 is due now (sent once).
    pub fn ready_due(&self, now: Instant) -> bool {
        !self.ready
            && (self.waiting().is_empty() || now.duration_since(self.started) >= READY_WITHIN)
    }

    /// Whether a keep-alive is due: the loop is turning (this is called from
    /// it) and the WAL is idle or committed within the watchdog interval;
    /// sent every quarter of the interval.
    pub fn keepalive_due(&self, now: Instant, wal: WalProgress) -> bool {
        let Some(interval) = self.watchdog else {
            return false;
        };
        let wal_moves = wal.idle || now.duration_since(wal.last_commit) < interval / 2;
        let spaced = self
            .last_keepalive
            .is_none_or(|last| now.duration_since(last) >= interval / 4);
        wal_moves && spaced
    }

    /// The STATUS= text for these figures.
    pub fn status_line(&self, figures: &StatusFigures) -> String {
        let mut line = format!(
            "{} streams, {} links up, {} frames recorded, WAL {:.1} MiB, last sealed hour {}",
            figures.n_streams,
            figures.links_up,
            figures.frames_durable,
            figures.wal_bytes as f64 / (1024.0 * 1024.0),
            figures
                .last_sealed
                .map_or_else(|| "none yet".to_owned(), |hour| hour.to_string()),
        );
        let waiting = self.waiting();
        if !waiting.is_empty() {
            let names: Vec<&str> = waiting.iter().map(|market| market.name()).collect();
            line.push_str(&format!(
                "; no subscribed link yet for {}",
                names.join(", ")
            ));
        }
        line
    }

    /// Called at every turn of the recorder loop: sends what is due.
    pub fn tick(
        &mut self,
        now: Instant,
        wal: WalProgress,
        figures: impl FnOnce() -> StatusFigures,
    ) {
        let ready_now = self.ready_due(now);
        let status_due = ready_now
            || self
                .last_status
                .is_none_or(|last| now.duration_since(last) >= STATUS_EVERY);
        let keepalive = self.keepalive_due(now, wal);
        if !ready_now && !status_due && !keepalive {
            return;
        }
        let status = status_due.then(|| self.status_line(&figures()));
        let mut states = Vec::new();
        if ready_now {
            states.push(NotifyState::Ready);
            self.ready = true;
        }
        if let Some(status) = &status {
            states.push(NotifyState::Status(status));
            self.last_status = Some(now);
        }
        if keepalive {
            states.push(NotifyState::Watchdog);
            self.last_keepalive = Some(now);
        }
        self.send(&states);
    }

    /// STOPPING=1 with a last status.
    pub fn stopping(&mut self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: closing links, syncing the WAL, finishing seals"),
        ]);
    }

    fn send(&mut self, states: &[NotifyState]) {
        match sd_notify::notify(states) {
            Ok(()) => debug!(?states, "service manager notified"),
            Err(error) if !self.send_failed => {
                self.send_failed = true;
                warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET); recording goes on");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(watchdog: Option<Duration>) -> (ServiceNotifier, Instant) {
        let start = Instant::now();
        (
            ServiceNotifier::new([Market::Spot, Market::UsdM], start, watchdog),
            start,
        )
    }

    #[test]
    fn ready_once_every_market_has_a_subscribed_link() {
        let (mut notifier, start) = notifier(None);
        assert!(!notifier.ready_due(start));
        notifier.subscribed(Market::Spot);
        assert!(!notifier.ready_due(start + Duration::from_secs(1)));
        notifier.subscribed(Market::UsdM);
        assert!(notifier.ready_due(start + Duration::from_secs(1)));
    }

    #[test]
    fn ready_after_the_bound_with_the_waiting_market_named() {
        let (notifier, start) = notifier(None);
        assert!(!notifier.ready_due(start + READY_WITHIN - Duration::from_millis(1)));
        assert!(notifier.ready_due(start + READY_WITHIN));
        let figures = StatusFigures {
            n_streams: 6,
            links_up: 0,
            frames_durable: 0,
            wal_bytes: 0,
            last_sealed: None,
        };
        let line = notifier.status_line(&figures);
        assert!(
            line.contains("no subscribed link yet for spot, usdm"),
            "{line}"
        );
        assert!(line.contains("last sealed hour none yet"), "{line}");
    }

    #[test]
    fn no_keepalive_without_a_watchdog() {
        let (notifier, start) = notifier(None);
        let wal = WalProgress {
            idle: true,
            last_commit: start,
        };
        assert!(!notifier.keepalive_due(start, wal));
    }

    #[test]
    fn keepalives_stop_while_the_wal_does_not_commit() {
        let interval = Duration::from_secs(30);
        let (mut notifier, start) = notifier(Some(interval));
        let busy_since_start = WalProgress {
            idle: false,
            last_commit: start,
        };
        assert!(notifier.keepalive_due(start + Duration::from_secs(1), busy_since_start));
        // A batch that has not committed for half the interval: wedged.
        assert!(!notifier.keepalive_due(start + interval / 2, busy_since_start));
        // Idle (nothing to write) is progress: keep-alives go on.
        let idle = WalProgress {
            idle: true,
            last_commit: start,
        };
        assert!(notifier.keepalive_due(start + interval * 10, idle));
        // Spaced by a quarter of the interval.
        notifier.last_keepalive = Some(start + interval * 10);
        assert!(!notifier.keepalive_due(start + interval * 10 + interval / 8, idle));
        assert!(notifier.keepalive_due(start + interval * 10 + interval / 4, idle));
    }

    #[test]
    fn status_line_reads_as_a_sentence() {
        let (mut notifier, _) = notifier(None);
        notifier.subscribed(Market::Spot);
        notifier.subscribed(Market::UsdM);
        let figures = StatusFigures {
            n_streams: 3,
            links_up: 2,
            frames_durable: 1234,
            wal_bytes: 3 * 1024 * 1024,
            last_sealed: Some(Hour::containing(1_796_137_200_000_000)),
        };
        assert_eq!(
            notifier.status_line(&figures),
            format!(
                "3 streams, 2 links up, 1234 frames recorded, WAL 3.0 MiB, last sealed hour {}",
                Hour::containing(1_796_137_200_000_000)
            )
        );
    }
}
