//! The provider's sliding-log window: every admission is logged with its cost and counts until
//! one period after it arrived — what Azure's simulator (aoai-simulated-api) and Redis sorted-set
//! limiters enforce. Exact: no boundary burst, no continuous refill either; capacity comes back
//! one logged admission at a time.
//!
//! Memory is one entry per admission within the last period (plus forced charges), which the
//! limit bounds for requests and the arrival rate bounds for tokens.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::bucket::NANOS_PER_MS;

#[derive(Debug, Clone)]
pub(crate) struct SlidingLog {
    limit: u64,
    period: Duration,
    /// Charges within the last period, oldest first.
    log: VecDeque<(Instant, u64)>,
    total: u64,
    now: Instant,
}

impl SlidingLog {
    pub(crate) fn new(limit: u64, period: Duration, now: Instant) -> Self {
        Self {
            limit,
            period: period.max(Duration::from_nanos(1)),
            log: VecDeque::new(),
            total: 0,
            now,
        }
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        self.now = now;
        while let Some(&(at, amount)) = self.log.front() {
            if now.saturating_duration_since(at) < self.period {
                break;
            }
            self.log.pop_front();
            self.total = self.total.saturating_sub(amount);
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.limit
    }

    pub(crate) fn available(&self) -> u64 {
        self.limit.saturating_sub(self.total)
    }

    pub(crate) fn used(&self) -> u64 {
        self.total
    }

    pub(crate) fn has(&self, amount: u64) -> bool {
        self.total.saturating_add(amount) <= self.limit
    }

    pub(crate) fn take(&mut self, amount: u64) {
        self.log.push_back((self.now, amount));
        self.total = self.total.saturating_add(amount);
    }

    /// Returns `amount` from the newest entries (a refund of the latest reservation).
    pub(crate) fn give_back(&mut self, mut amount: u64) {
        while amount > 0 {
            let Some(last) = self.log.back_mut() else {
                break;
            };
            let part = last.1.min(amount);
            last.1 -= part;
            amount -= part;
            self.total = self.total.saturating_sub(part);
            if last.1 == 0 {
                self.log.pop_back();
            }
        }
    }

    /// Time until `amount` fits: until enough of the oldest entries have left the window (one
    /// period when it never fits).
    pub(crate) fn wait_for(&self, amount: u64) -> Duration {
        if self.has(amount) {
            return Duration::ZERO;
        }
        let mut total = self.total;
        for &(at, logged) in &self.log {
            total = total.saturating_sub(logged);
            if total.saturating_add(amount) <= self.limit {
                return self.until_expired(at);
            }
        }
        self.period
    }

    /// Time until the log is empty (the reset header).
    pub(crate) fn time_to_full(&self) -> Duration {
        self.log
            .back()
            .map_or(Duration::ZERO, |&(at, _)| self.until_expired(at))
    }

    fn until_expired(&self, at: Instant) -> Duration {
        let expires = at + self.period;
        let nanos = expires.saturating_duration_since(self.now).as_nanos();
        let millis = nanos.div_ceil(NANOS_PER_MS).max(1);
        Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    pub(crate) fn set_capacity(&mut self, limit: u64) {
        self.limit = limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn capacity_returns_one_entry_at_a_time() {
        let period = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut log = SlidingLog::new(3, period, t0);
        // Charges at 0 s, 2 s and 4 s.
        for offset in [0, 2, 4] {
            log.refill(t0 + Duration::from_secs(offset));
            assert!(log.has(1));
            log.take(1);
        }
        assert!(!log.has(1));
        // The entry of 0 s leaves at 10 s: 6 s from 4 s.
        assert_eq!(log.wait_for(1), Duration::from_secs(6));
        // Two requests need the entry of 2 s gone too: 8 s.
        assert_eq!(log.wait_for(2), Duration::from_secs(8));
        assert_eq!(log.time_to_full(), Duration::from_secs(10));
        log.refill(t0 + Duration::from_millis(9_999));
        assert!(!log.has(1));
        log.refill(t0 + Duration::from_secs(10));
        assert_eq!(log.available(), 1);
        assert_eq!(log.wait_for(4), period, "never fits: one period");
        log.give_back(1);
        assert_eq!(log.used(), 1);
        log.set_capacity(1);
        assert!(!log.has(1));
        assert_eq!(log.capacity(), 1);
    }
}
