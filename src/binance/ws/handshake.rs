//! The handshake budget every connection task of the process shares:
//! Binance counts new WebSocket connections per IP (300 per 5 minutes), so
//! each handshake first takes a slot of one sliding window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// New connections allowed across all tasks: at most `limit` handshakes in
/// any `window` (a sliding window over the times of past handshakes).
pub struct HandshakeBudget {
    limit: usize,
    window: Duration,
    recent: Mutex<VecDeque<Instant>>,
}

impl HandshakeBudget {
    pub fn new(limit: u32, window: Duration) -> HandshakeBudget {
        HandshakeBudget {
            limit: limit.max(1) as usize,
            window,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// When a handshake may happen, given the past ones: pure.
    pub fn next_slot(
        recent: &VecDeque<Instant>,
        limit: usize,
        window: Duration,
        now: Instant,
    ) -> Instant {
        let in_window = recent
            .iter()
            .filter(|time| now.duration_since(**time) < window)
            .count();
        if in_window < limit {
            return now;
        }
        // The oldest handshake inside the window must leave it first.
        let oldest_in_window = recent.iter().rev().nth(limit - 1).copied().unwrap_or(now);
        oldest_in_window + window
    }

    /// Takes a slot if one is free now; else says when one will be.
    pub async fn try_acquire(&self) -> Result<(), Instant> {
        let mut recent = self.recent.lock().await;
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|time| now.duration_since(*time) >= self.window)
        {
            recent.pop_front();
        }
        let slot = HandshakeBudget::next_slot(&recent, self.limit, self.window, now);
        if slot <= now {
            recent.push_back(now);
            return Ok(());
        }
        Err(slot)
    }

    /// Waits for a slot and takes it; `false` if cancelled first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        loop {
            let Err(wait_until) = self.try_acquire().await else {
                return true;
            };
            debug!(
                wait_ms = wait_until
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "handshake budget spent; waiting"
            );
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_budget_is_a_sliding_window() {
        let start = Instant::now();
        let window = Duration::from_secs(300);
        let mut recent = VecDeque::new();
        assert_eq!(HandshakeBudget::next_slot(&recent, 2, window, start), start);
        recent.push_back(start);
        recent.push_back(start + Duration::from_secs(10));
        let later = start + Duration::from_secs(20);
        assert_eq!(
            HandshakeBudget::next_slot(&recent, 2, window, later),
            start + window
        );
        assert_eq!(HandshakeBudget::next_slot(&recent, 3, window, later), later);
        let after_window = start + window + Duration::from_secs(1);
        assert_eq!(
            HandshakeBudget::next_slot(&recent, 2, window, after_window),
            after_window
        );
    }

    #[tokio::test(start_paused = true)]
    async fn handshake_budget_waits_for_a_slot() {
        let budget = HandshakeBudget::new(2, Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        for _ in 0..5 {
            assert!(budget.acquire(&cancel).await);
        }
        // Five handshakes at two per minute: the fifth waits two windows.
        assert!(Instant::now() - start >= Duration::from_secs(120));
        assert!(Instant::now() - start < Duration::from_secs(121));
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_takes_a_free_slot_or_says_when_one_frees() {
        let budget = HandshakeBudget::new(1, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(budget.try_acquire().await, Ok(()));
        assert_eq!(
            budget.try_acquire().await,
            Err(start + Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(budget.try_acquire().await, Ok(()));
    }
}
