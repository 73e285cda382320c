//! Connection timing and limits: the `[connection]` config table as the
//! connection tasks read it.

use std::time::Duration;

use crate::backoff::Backoff;

/// Connection timing and limits (the `[connection]` config table).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A link that lived this long resets the backoff, even if it delivered
    /// no data (a quiet stream); one that delivered data resets it anyway.
    pub healthy_after: Duration,
    /// No frame (data or ping) for this long means the link is dead.
    pub dead_after: Duration,
    pub connect_timeout: Duration,
    /// Rotate a link this long after it opened (Binance closes at 24 h).
    pub rotate_after: Duration,
    /// How long the old link waits for the replacement to overlap it.
    pub rotation_overlap_timeout: Duration,
    /// Our control frames per second per link, leaving room for pongs
    /// under Binance's 5 incoming frames per second.
    pub max_control_per_sec: u32,
    /// Streams per SUBSCRIBE request.
    pub subscribe_batch: usize,
    /// Longest wait on a full channel before the link is given up.
    pub max_backpressure_wait: Duration,
    /// A link is never judged silent sooner than this...
    pub silent_after_min: Duration,
    /// ...and always after this, even while the market's other links are
    /// quiet too.
    pub silent_after_max: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            dead_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            rotate_after: Duration::from_secs(23 * 3600 + 30 * 60),
            rotation_overlap_timeout: Duration::from_secs(30),
            max_control_per_sec: 2,
            subscribe_batch: 100,
            max_backpressure_wait: Duration::from_secs(10),
            silent_after_min: Duration::from_secs(20),
            silent_after_max: Duration::from_secs(600),
        }
    }
}

impl ConnectionSettings {
    /// Full jitter: a uniform delay in `[0, min(max, initial * 2^attempt)]`.
    pub fn backoff_delay(&self, attempt: u32, random_unit: f64) -> Duration {
        Backoff::new(self.backoff_initial, self.backoff_max).full_jitter(attempt, random_unit)
    }
}
