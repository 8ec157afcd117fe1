//! Continuous token-bucket arithmetic, exact in integers, with time passed in.
//!
//! Capacity is the limit; the bucket refills continuously at `limit / period`; a call is admitted
//! when the balance covers its cost; the wait for `cost` is `(cost − balance) / rate`. This is what
//! OpenAI's 429 messages compute to the millisecond (rate-limits.md §1.1.3).
//!
//! Why integers: the balance is kept as `balance × period_ns` in an `i128`, so a refill of
//! `elapsed_ns` adds exactly `limit × elapsed_ns` and no rounding can admit a token the bucket does
//! not have (floats would drift over long runs, and the property tests want exact bounds). The
//! balance may go negative: usage above the reservation is debt that later refills pay off.

use std::time::Duration;

use tokio::time::Instant;

use crate::scheduler::quota::Rate;

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// One continuously refilling bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Rate,
    /// `period` in ns (≥ 1; the scale of `level`).
    period_ns: i128,
    /// `balance × period_ns`.
    level: i128,
    last: Instant,
}

impl Bucket {
    /// A bucket for `rate` at `now`, full or empty.
    pub(crate) fn new(rate: Rate, now: Instant, full: bool) -> Self {
        let period_ns = nanos(rate.period).max(1);
        let level = if full {
            i128::from(rate.limit).saturating_mul(period_ns)
        } else {
            0
        };
        Self {
            rate,
            period_ns,
            level,
            last: now,
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    fn capacity(&self) -> i128 {
        i128::from(self.rate.limit).saturating_mul(self.period_ns)
    }

    fn scaled(&self, amount: u64) -> i128 {
        i128::from(amount).saturating_mul(self.period_ns)
    }

    /// Adds what was refilled since the last update (never above capacity).
    pub(crate) fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let elapsed = nanos(now.duration_since(self.last));
        let gained = i128::from(self.rate.limit).saturating_mul(elapsed);
        self.level = self.level.saturating_add(gained).min(self.capacity());
        self.last = now;
    }

    /// Whole units available now (after [`refill`](Self::refill)); 0 when in debt.
    pub(crate) fn available(&self) -> u64 {
        u64::try_from((self.level / self.period_ns).max(0)).unwrap_or(u64::MAX)
    }

    /// How long until the balance covers `amount` (zero if it does now). Call after `refill`.
    pub(crate) fn wait(&self, amount: u64) -> Duration {
        let need = self.scaled(amount).saturating_sub(self.level);
        if need <= 0 {
            return Duration::ZERO;
        }
        // The limit is ≥ 1 (validated), so this divides; round up so the wait is never short.
        let limit = i128::from(self.rate.limit.max(1));
        let ns = need.saturating_add(limit - 1) / limit;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Like [`wait`](Self::wait), but for the balance to cover `amount` plus `guard`'s worth of
    /// refill (capped at the capacity, so a call that fits an empty-to-full bucket still fits).
    pub(crate) fn wait_guarded(&self, amount: u64, guard: Duration) -> Duration {
        if guard.is_zero() {
            return self.wait(amount);
        }
        let scaled = self.scaled(amount);
        let margin = i128::from(self.rate.limit).saturating_mul(nanos(guard));
        let target = scaled
            .saturating_add(margin)
            .min(self.capacity().max(scaled));
        let need = target.saturating_sub(self.level);
        if need <= 0 {
            return Duration::ZERO;
        }
        let limit = i128::from(self.rate.limit.max(1));
        let ns = need.saturating_add(limit - 1) / limit;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `amount` (the caller checked [`wait`](Self::wait) is zero, or is charging debt).
    pub(crate) fn take(&mut self, amount: u64) {
        self.level = self.level.saturating_sub(self.scaled(amount));
    }

    /// Gives `amount` back, never above capacity.
    pub(crate) fn give(&mut self, amount: u64) {
        self.level = self
            .level
            .saturating_add(self.scaled(amount))
            .min(self.capacity());
    }

    /// Lowers the balance to `remaining` if the bucket believes it has more.
    pub(crate) fn tighten_to(&mut self, remaining: u64) {
        self.level = self.level.min(self.scaled(remaining));
    }

    /// Lowers the balance to what covers `amount` only after `wait` (possibly a debt), if the
    /// bucket believes it has more.
    pub(crate) fn tighten_to_wait(&mut self, amount: u64, wait: Duration) {
        let refill = i128::from(self.rate.limit).saturating_mul(nanos(wait));
        self.level = self.level.min(self.scaled(amount).saturating_sub(refill));
    }

    /// Lowers the balance to `remaining` plus what refilled in `since`, if the bucket believes
    /// it has more: a report `since` old, brought up to now.
    pub(crate) fn tighten_to_since(&mut self, remaining: u64, since: Duration) {
        let refilled = i128::from(self.rate.limit).saturating_mul(nanos(since));
        self.level = self
            .level
            .min(self.scaled(remaining).saturating_add(refilled));
    }

    /// Takes away what the bucket refills in `by` (the balance may go negative).
    pub(crate) fn lag(&mut self, by: Duration) {
        let refill = i128::from(self.rate.limit).saturating_mul(nanos(by));
        self.level = self.level.saturating_sub(refill);
    }

    /// Changes the rate, keeping the balance (clamped to the new capacity).
    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        let new_period = nanos(rate.period).max(1);
        // Rescale `balance × old_period` to `balance × new_period`.
        let level = self.level.saturating_mul(new_period) / self.period_ns;
        self.rate = rate;
        self.period_ns = new_period;
        self.level = level.min(self.capacity());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(limit: u64, period_ms: u64) -> Rate {
        Rate::new(limit, Duration::from_millis(period_ms))
    }

    #[test]
    fn wait_matches_openai_429_arithmetic() {
        // openai/codex #88: Limit 200000, Used 162960, Requested 42288 → "try again in 1.574s".
        let t0 = Instant::now();
        let mut b = Bucket::new(rate(200_000, 60_000), t0, true);
        b.take(162_960);
        let wait = b.wait(42_288);
        assert_eq!(wait.as_millis(), 1574);
        // After exactly that wait the call fits; one nanosecond earlier it does not.
        let mut early = b.clone();
        early.refill(t0 + wait - Duration::from_nanos(1));
        assert!(!early.wait(42_288).is_zero());
        b.refill(t0 + wait);
        assert!(b.wait(42_288).is_zero());
    }

    #[test]
    fn debt_refills_before_new_admissions() {
        let t0 = Instant::now();
        let mut b = Bucket::new(rate(60, 60_000), t0, true);
        b.take(60);
        b.take(30); // usage above the reservation: 30 of debt
        assert_eq!(b.available(), 0);
        // 31 units at one per second.
        assert_eq!(b.wait(1), Duration::from_secs(31));
    }

    #[test]
    fn set_rate_keeps_the_balance_and_clamps_to_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket::new(rate(100, 1_000), t0, true);
        b.take(40);
        b.set_rate(rate(100, 60_000), t0);
        assert_eq!(b.available(), 60);
        b.set_rate(rate(50, 60_000), t0);
        assert_eq!(b.available(), 50);
        b.tighten_to(7);
        assert_eq!(b.available(), 7);
        b.give(1_000);
        assert_eq!(b.available(), 50);
    }

    #[test]
    fn a_guard_asks_for_its_refill_on_top_but_never_beyond_a_full_bucket() {
        let t0 = Instant::now();
        // 10 per second: 100 ms of guard is one more unit.
        let mut b = Bucket::new(rate(10, 1_000), t0, true);
        b.take(9);
        assert_eq!(b.wait_guarded(1, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            b.wait_guarded(1, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        // A call as large as the bucket waits for a full bucket, not for more than it can hold.
        assert_eq!(b.wait_guarded(10, Duration::from_millis(100)), b.wait(10));
        b.take(1);
        assert_eq!(
            b.wait_guarded(1, Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        // A report of 0 left, 150 ms old: 1.5 units have refilled since.
        b.give(5);
        b.tighten_to_since(0, Duration::from_millis(150));
        assert_eq!(b.wait(1), Duration::ZERO);
        assert_eq!(b.wait(2), Duration::from_millis(50));
        // "Try again in 1.2 s" for one unit: exactly then, and not a moment before.
        b.tighten_to_wait(1, Duration::from_millis(1_200));
        assert_eq!(b.wait(1), Duration::from_millis(1_200));
    }

    proptest! {
        /// For any arrival pattern and costs, what a bucket admits in any window of length W is at
        /// most `capacity + limit·W/period`, and a call refused now is admitted exactly after the
        /// computed wait.
        #[test]
        fn admitted_in_any_window_is_bounded(
            limit in 1u64..500,
            period_ms in 1u64..5_000,
            full in any::<bool>(),
            ops in proptest::collection::vec((0u64..2_000, 1u64..600), 1..120),
        ) {
            let t0 = Instant::now();
            let r = rate(limit, period_ms);
            let mut b = Bucket::new(r, t0, full);
            let mut now = t0;
            let mut admitted: Vec<(Duration, u64)> = Vec::new();
            for (dt_ms, cost) in ops {
                now += Duration::from_millis(dt_ms);
                b.refill(now);
                let wait = b.wait(cost);
                if wait.is_zero() {
                    prop_assert!(cost <= limit);
                    b.take(cost);
                    admitted.push((now - t0, cost));
                } else if cost <= limit {
                    let mut probe = b.clone();
                    probe.refill(now + wait);
                    prop_assert!(probe.wait(cost).is_zero());
                    let mut early = b.clone();
                    early.refill(now + wait - Duration::from_nanos(1));
                    prop_assert!(!early.wait(cost).is_zero());
                }
            }
            for (i, (start, _)) in admitted.iter().enumerate() {
                let mut sum = 0u128;
                for (t, c) in &admitted[i..] {
                    sum += u128::from(*c);
                    let w = (*t - *start).as_nanos();
                    // The balance at the window's start is at most the capacity; add the refill.
                    let refill = (u128::from(limit) * w).div_ceil(r.period.as_nanos());
                    prop_assert!(sum <= u128::from(limit) + refill,
                        "window {w}ns admitted {sum} > cap {limit} + {refill}");
                }
            }
        }
    }
}
