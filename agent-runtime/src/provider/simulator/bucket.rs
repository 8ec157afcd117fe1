//! The provider's own bucket: what OpenAI enforces on its side, as the simulator models it.
//!
//! This is deliberately separate from the scheduler's client-side bucket
//! (`scheduler/bucket.rs`): that one decides what *we* send; this one plays the *provider* that
//! judges it, with the provider's rules (capacity = limit, continuous refill of limit/period,
//! "try again in" = deficit / rate, forced charges for rejected requests). Keeping them apart lets
//! tests catch a client that disagrees with the provider.
//!
//! Arithmetic is exact integers: one token is `period_ns` units and the bucket refills `capacity`
//! units per nanosecond, so "Please try again in t" and the reset headers carry no float error.
//! Every operation saturates: within the bounds [`SimConfig::validate`](super::SimConfig::validate)
//! allows (a period of at most a year, any `u64` limit) nothing comes near `i128::MAX` and the
//! results are exact; beyond them (a bucket built directly, a refill after centuries) the bucket
//! clamps instead of panicking.

use std::time::Duration;

use tokio::time::Instant;

pub(super) const NANOS_PER_MS: u128 = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct ProviderBucket {
    capacity: u64,
    period_ns: u128,
    /// Units (tokens × `period_ns`). Negative after forced charges.
    level: i128,
    updated: Instant,
}

impl ProviderBucket {
    pub(crate) fn new(capacity: u64, period: Duration, start_empty: bool, now: Instant) -> Self {
        // Duration::MAX is below 2^96 ns, so the period always fits in i128.
        let period_ns = period.as_nanos().max(1);
        let mut bucket = Self {
            capacity,
            period_ns,
            level: 0,
            updated: now,
        };
        if !start_empty {
            bucket.level = bucket.full();
        }
        bucket
    }

    fn period(&self) -> i128 {
        i128::try_from(self.period_ns).unwrap_or(i128::MAX)
    }

    fn units(&self, tokens: u64) -> i128 {
        i128::from(tokens).saturating_mul(self.period())
    }

    fn full(&self) -> i128 {
        self.units(self.capacity)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        let elapsed = i128::try_from(now.saturating_duration_since(self.updated).as_nanos())
            .unwrap_or(i128::MAX);
        let refilled = elapsed.saturating_mul(i128::from(self.capacity));
        self.level = self.level.saturating_add(refilled).min(self.full());
        self.updated = now;
    }

    /// Whole tokens available now (never negative).
    pub(crate) fn available(&self) -> u64 {
        u64::try_from((self.level / self.period()).max(0)).unwrap_or(u64::MAX)
    }

    /// Tokens in use, as OpenAI's "Used U" counts them: capacity minus whole tokens available.
    pub(crate) fn used(&self) -> u64 {
        self.capacity.saturating_sub(self.available())
    }

    pub(crate) fn has(&self, tokens: u64) -> bool {
        self.level >= self.units(tokens)
    }

    /// Takes `tokens`, going negative if needed (a forced charge).
    pub(crate) fn take(&mut self, tokens: u64) {
        // Bounded below by one bucket of debt so endless rejected retries cannot push the
        // recovery time to infinity.
        self.level = self
            .level
            .saturating_sub(self.units(tokens))
            .max(-self.full());
    }

    /// Returns `tokens` (a refund), never above capacity.
    pub(crate) fn give_back(&mut self, tokens: u64) {
        self.level = self
            .level
            .saturating_add(self.units(tokens))
            .min(self.full());
    }

    /// Time until `tokens` are available, rounded up to the millisecond as OpenAI reports it.
    pub(crate) fn wait_for(&self, tokens: u64) -> Duration {
        self.time_to(self.units(tokens))
    }

    /// Time until the bucket is full again (`x-ratelimit-reset-*`), rounded up to the millisecond.
    pub(crate) fn time_to_full(&self) -> Duration {
        self.time_to(self.full())
    }

    fn time_to(&self, target: i128) -> Duration {
        let deficit = target.saturating_sub(self.level);
        if deficit <= 0 || self.capacity == 0 {
            return Duration::ZERO;
        }
        let nanos = deficit.unsigned_abs().div_ceil(u128::from(self.capacity));
        let millis = nanos.div_ceil(NANOS_PER_MS);
        Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// Changes the limit at run time (Azure's dynamic quota); the level keeps its tokens, capped
    /// at the new capacity.
    pub(crate) fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
        self.level = self.level.min(self.full());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refill_and_waits_follow_limit_over_period() {
        let now = Instant::now();
        let mut b = ProviderBucket::new(5000, Duration::from_secs(60), false, now);
        assert!(b.has(5000));
        b.take(1);
        // 1 / (5000 / 60 s) = 12 ms — the community thread's `reset-requests: 12ms`.
        assert_eq!(b.time_to_full(), Duration::from_millis(12));
        assert_eq!(b.available(), 4999);

        let mut t = ProviderBucket::new(160_000, Duration::from_secs(60), false, now);
        t.take(24);
        // 24 / (160000 / 60 s) = 9 ms.
        assert_eq!(t.time_to_full(), Duration::from_millis(9));

        let mut e = ProviderBucket::new(10, Duration::from_secs(60), true, now);
        assert!(!e.has(1));
        assert_eq!(e.wait_for(1), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        e.refill(Instant::now());
        assert!(e.has(1));
        assert!(!e.has(2));
        e.give_back(100);
        assert_eq!(e.available(), 10);
        e.take(25);
        assert_eq!(e.available(), 0);
        // Debt is capped at one bucket.
        assert_eq!(e.wait_for(1), Duration::from_secs(66));
        e.set_capacity(5);
        assert_eq!(e.capacity(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_capacities_and_periods_saturate_instead_of_overflowing() {
        let now = Instant::now();
        for period in [
            Duration::MAX,
            Duration::from_secs(365 * 24 * 3600),
            Duration::from_nanos(1),
        ] {
            for start_empty in [false, true] {
                let mut b = ProviderBucket::new(u64::MAX, period, start_empty, now);
                b.take(u64::MAX);
                b.take(u64::MAX);
                assert!(!b.has(1), "{period:?}");
                let _ = (b.wait_for(u64::MAX), b.time_to_full(), b.used());
                tokio::time::advance(Duration::from_secs(3600)).await;
                b.refill(Instant::now());
                b.give_back(u64::MAX);
                b.give_back(u64::MAX);
                b.set_capacity(u64::MAX);
                b.refill(Instant::now() + Duration::from_secs(u64::MAX / 4));
                assert!(b.has(u64::MAX), "a long refill fills it: {period:?}");
            }
        }
        // Within the bounds SimConfig allows, the arithmetic stays exact.
        let year = Duration::from_secs(365 * 24 * 3600);
        let mut b = ProviderBucket::new(u64::MAX, year, false, now);
        assert_eq!(b.available(), u64::MAX);
        b.take(u64::MAX);
        assert_eq!(b.available(), 0);
        assert_eq!(b.time_to_full(), year);
    }
}
