//! Sliding windows: at most `limit` in any `period`, kept as a log of admissions.
//!
//! What Azure's simulator and strict "no more than L in any 60 s" limiters count. Each admission
//! frees its share exactly `period` after it was taken (plus the guard: the provider logs the
//! arrival, this log the departure). The log holds one entry per admission still inside the
//! window (plus the guard's slack), so its size is bounded by the admissions one period allows.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::scheduler::quota::Rate;

/// Entries are kept this long past their period so a guarded wait still sees them.
const MAX_GUARD: Duration = Duration::from_secs(1);

/// One sliding-log counter.
#[derive(Debug, Clone)]
pub(crate) struct SlidingLog {
    rate: Rate,
    /// `(taken at, amount)`, oldest first.
    log: VecDeque<(Instant, u64)>,
    now: Instant,
}

impl SlidingLog {
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            log: VecDeque::new(),
            now,
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// When the entry taken `at` stops counting, with `guard` of slack.
    fn frees_at(&self, at: Instant, guard: Duration) -> Instant {
        let after = self.rate.period.saturating_add(guard);
        crate::scheduler::state::instant_after(at, after)
    }

    /// What the log holds that still counts now, with `guard` of slack.
    fn in_window(&self, guard: Duration) -> u64 {
        self.log
            .iter()
            .filter(|(at, _)| self.frees_at(*at, guard) > self.now)
            .fold(0u64, |sum, (_, amount)| sum.saturating_add(*amount))
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        while let Some(&(at, _)) = self.log.front() {
            if self.frees_at(at, MAX_GUARD) > self.now {
                break;
            }
            self.log.pop_front();
        }
    }

    pub(crate) fn available(&self) -> u64 {
        self.rate
            .limit
            .saturating_sub(self.in_window(Duration::ZERO))
    }

    pub(crate) fn wait(&self, amount: u64) -> Duration {
        self.wait_guarded(amount, Duration::ZERO)
    }

    pub(crate) fn wait_guarded(&self, amount: u64, guard: Duration) -> Duration {
        let guard = guard.min(MAX_GUARD);
        let held = self.in_window(guard);
        let Some(excess) = held.saturating_add(amount).checked_sub(self.rate.limit) else {
            return Duration::ZERO;
        };
        if excess == 0 {
            return Duration::ZERO;
        }
        // The oldest entries free first: wait for enough of them.
        let mut freed = 0u64;
        for &(at, amount) in &self.log {
            let frees = self.frees_at(at, guard);
            if frees <= self.now {
                continue;
            }
            freed = freed.saturating_add(amount);
            if freed >= excess {
                return frees - self.now;
            }
        }
        // More than the limit in one call: refused before admission; a period is the answer
        // that never under-waits.
        self.rate.period
    }

    pub(crate) fn take(&mut self, amount: u64) {
        if amount > 0 {
            self.log.push_back((self.now, amount));
        }
    }

    /// Gives back from the newest entries (the call being settled is among them).
    pub(crate) fn give(&mut self, mut amount: u64) {
        while amount > 0 {
            let Some(last) = self.log.back_mut() else {
                return;
            };
            let back = last.1.min(amount);
            last.1 -= back;
            amount -= back;
            if last.1 == 0 {
                self.log.pop_back();
            }
        }
    }

    /// A report of `remaining`: what this log does not know of was taken now (the most
    /// conservative time: it frees last).
    pub(crate) fn tighten_to(&mut self, remaining: u64) {
        let held = self.in_window(Duration::ZERO);
        let unknown = self
            .rate
            .limit
            .saturating_sub(remaining)
            .saturating_sub(held);
        self.take(unknown);
    }

    pub(crate) fn tighten_to_since(&mut self, remaining: u64, _since: Duration) {
        self.tighten_to(remaining);
    }

    /// "Fits only after `wait`": the log is full until then at least.
    pub(crate) fn tighten_to_wait(&mut self, amount: u64, wait: Duration) {
        if self.wait(amount) >= wait {
            return;
        }
        // An entry that frees in `wait` fills what is left now.
        let at = self
            .now
            .checked_sub(self.rate.period.saturating_sub(wait))
            .unwrap_or(self.now);
        let left = self.available();
        if left > 0 {
            let i = self.log.partition_point(|(t, _)| *t <= at);
            self.log.insert(i, (at, left));
        }
    }

    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.rate = rate;
        self.refill(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::quota::Limiter;
    use proptest::prelude::*;

    fn rate(limit: u64, period_ms: u64) -> Rate {
        Rate::new(limit, Duration::from_millis(period_ms)).with_limiter(Limiter::SlidingWindow)
    }

    #[test]
    fn each_admission_frees_its_share_a_period_later() {
        let t0 = Instant::now();
        let mut log = SlidingLog::new(rate(3, 10_000), t0);
        log.take(1);
        log.refill(t0 + Duration::from_secs(4));
        log.take(2);
        assert_eq!(log.wait(1), Duration::from_secs(6));
        assert_eq!(log.wait(3), Duration::from_secs(10));
        // With a guard of 300 ms the share frees 300 ms later.
        assert_eq!(
            log.wait_guarded(1, Duration::from_millis(300)),
            Duration::from_millis(6_300)
        );
        log.give(1);
        assert_eq!(log.wait(1), Duration::ZERO);
        // A 429 saying "in 2 s": nothing fits before.
        log.tighten_to_wait(1, Duration::from_secs(2));
        assert_eq!(log.wait(1), Duration::from_secs(2));
        log.refill(t0 + Duration::from_secs(20));
        assert_eq!(log.available(), 3);
        assert!(log.log.is_empty(), "expired entries are dropped");
    }

    proptest! {
        /// In every window of `period`, what the log admitted is at most the limit; a refused
        /// cost is admitted exactly after the computed wait.
        #[test]
        fn admitted_in_any_window_never_exceeds_the_limit(
            limit in 1u64..60,
            period_ms in 1u64..5_000,
            ops in proptest::collection::vec((0u64..2_000, 1u64..60), 1..150),
        ) {
            let t0 = Instant::now();
            let mut log = SlidingLog::new(rate(limit, period_ms), t0);
            let period = Duration::from_millis(period_ms);
            let mut now = t0;
            let mut admitted: Vec<(Instant, u64)> = Vec::new();
            for (dt, cost) in ops {
                now += Duration::from_millis(dt);
                log.refill(now);
                let cost = cost.min(limit);
                let wait = log.wait(cost);
                if wait.is_zero() {
                    log.take(cost);
                    admitted.push((now, cost));
                } else {
                    let mut later = log.clone();
                    later.refill(now + wait);
                    prop_assert!(later.wait(cost).is_zero());
                }
            }
            for (i, (start, _)) in admitted.iter().enumerate() {
                let sum: u64 = admitted[i..]
                    .iter()
                    .take_while(|(t, _)| *t < *start + period)
                    .map(|(_, c)| c)
                    .sum();
                prop_assert!(sum <= limit, "{} in a window > {}", sum, limit);
            }
        }
    }
}
