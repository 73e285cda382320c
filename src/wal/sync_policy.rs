//! Group commit as a pure decision: given the policy and when the oldest
//! unsynced record was appended, is a sync due at `now`? Time is passed in,
//! so the tests need no clock.

use std::time::Instant;

use super::FsyncPolicy;

/// Tracks unsynced records against an [`FsyncPolicy`].
#[derive(Clone, Debug)]
pub struct SyncSchedule {
    policy: FsyncPolicy,
    oldest_unsynced_at: Option<Instant>,
    n_unsynced_records: u64,
    n_unsynced_bytes: u64,
}

impl SyncSchedule {
    pub fn new(policy: FsyncPolicy) -> SyncSchedule {
        SyncSchedule {
            policy,
            oldest_unsynced_at: None,
            n_unsynced_records: 0,
            n_unsynced_bytes: 0,
        }
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// A record of `n_bytes` was appended at `now`.
    pub fn on_append(&mut self, now: Instant, n_bytes: u64) {
        self.n_unsynced_records += 1;
        self.n_unsynced_bytes = self.n_unsynced_bytes.saturating_add(n_bytes);
        if self.oldest_unsynced_at.is_none() {
            self.oldest_unsynced_at = Some(now);
        }
    }

    /// Every appended record is now durable.
    pub fn on_sync(&mut self) {
        self.n_unsynced_records = 0;
        self.n_unsynced_bytes = 0;
        self.oldest_unsynced_at = None;
    }

    pub fn n_unsynced_records(&self) -> u64 {
        self.n_unsynced_records
    }

    /// When the oldest record not yet synced was appended.
    pub fn oldest_unsynced_at(&self) -> Option<Instant> {
        self.oldest_unsynced_at
    }

    /// When the next sync is due, or `None` while nothing is unsynced. The
    /// caller's loop waits for input at most until then.
    pub fn deadline(&self) -> Option<Instant> {
        let oldest = self.oldest_unsynced_at?;
        match self.policy {
            FsyncPolicy::EveryRecord => Some(oldest),
            FsyncPolicy::Interval { enough_bytes, .. } if self.n_unsynced_bytes >= enough_bytes => {
                Some(oldest)
            }
            // An interval too large to add is as good as "never by the timer".
            FsyncPolicy::Interval { max_wait, .. } => oldest.checked_add(max_wait),
        }
    }

    pub fn is_due(&self, now: Instant) -> bool {
        if self.n_unsynced_records == 0 {
            return false;
        }
        match self.policy {
            FsyncPolicy::EveryRecord => true,
            FsyncPolicy::Interval { .. } => self.deadline().is_some_and(|deadline| now >= deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_record_is_due_after_any_append() {
        let start = Instant::now();
        let mut schedule = SyncSchedule::new(FsyncPolicy::EveryRecord);
        assert!(!schedule.is_due(start));
        assert_eq!(schedule.deadline(), None);
        schedule.on_append(start, 10);
        assert!(schedule.is_due(start));
        schedule.on_sync();
        assert!(!schedule.is_due(start));
    }

    #[test]
    fn interval_is_measured_from_the_oldest_unsynced_append() {
        let start = Instant::now();
        let interval = Duration::from_millis(50);
        let mut schedule = SyncSchedule::new(FsyncPolicy::Interval {
            max_wait: interval,
            enough_bytes: 1000,
        });
        schedule.on_append(start, 400);
        schedule.on_append(start + Duration::from_millis(40), 400);
        assert_eq!(schedule.n_unsynced_records(), 2);
        assert_eq!(schedule.deadline(), Some(start + interval));
        assert!(!schedule.is_due(start + Duration::from_millis(49)));
        assert!(schedule.is_due(start + interval));
        schedule.on_sync();
        assert_eq!(schedule.deadline(), None);
        assert!(!schedule.is_due(start + Duration::from_secs(10)));
        schedule.on_append(start + Duration::from_secs(10), 999);
        assert_eq!(
            schedule.deadline(),
            Some(start + Duration::from_secs(10) + interval)
        );
    }

    #[test]
    fn enough_bytes_make_a_sync_due_at_once() {
        let start = Instant::now();
        let mut schedule = SyncSchedule::new(FsyncPolicy::Interval {
            max_wait: Duration::from_millis(50),
            enough_bytes: 1000,
        });
        schedule.on_append(start, 600);
        assert!(!schedule.is_due(start + Duration::from_millis(1)));
        // The record that brings the bytes waiting to the threshold makes
        // the batch due then, not at the oldest record's deadline.
        schedule.on_append(start + Duration::from_millis(1), 400);
        assert_eq!(schedule.deadline(), Some(start));
        assert!(schedule.is_due(start + Duration::from_millis(1)));
        // A sync forgets the bytes as well as the records.
        schedule.on_sync();
        schedule.on_append(start + Duration::from_millis(2), 600);
        assert!(!schedule.is_due(start + Duration::from_millis(3)));
        assert_eq!(schedule.deadline(), Some(start + Duration::from_millis(52)));
    }
}
