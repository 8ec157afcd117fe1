//! Where bucket state lives: the pluggable [`QuotaState`] trait, and the in-memory key state both
//! the scheduler's synchronous fast path and [`InMemoryState`] are built on.
//!
//! # For implementors (the Redis backend)
//!
//! Fairness stays local: only the head of a process's local queue calls
//! [`acquire`](QuotaState::acquire), so a backend only has to be atomic, not fair. Each operation
//! is meant to be **one round trip** (one Lua script using the server's `TIME`, all of a key's
//! state under one hash tag `{key}`):
//!
//! - `acquire` checks the pause, every bucket in [`Limits`] (requests, tokens, daily caps) and the
//!   in-flight cap at once, and takes `cost` from all of them or from none. Buckets follow
//!   [`bucket`](super) semantics: capacity = limit, continuous refill of `limit/period`, a
//!   missing bucket starts full (or empty with `limits.start_empty`). A refused call gets the
//!   longest wait among the refusing dimensions, `(cost − balance)·period/limit`.
//! - In-flight slots are leases with an expiry (`lease_ttl`), e.g. a ZSET scored by expiry, so a
//!   crashed holder's slot returns by itself. (The in-memory state needs no expiry.)
//! - `settle` ends a lease: it frees the in-flight slot, charges tokens used above the
//!   reservation (the balance may go negative), and gives back unused tokens only when
//!   `settlement.refund_unused`. The request is never given back.
//! - `pause_until` makes every process's `acquire` answer `Wait { dimension: Paused }` for the
//!   given time from now (server time), extending but never shortening a pause.
//! - `observe` lowers balances to what the provider reports remaining (never raises them).
//! - Limits come with every call (they may change as headers teach them); a backend resizes its
//!   buckets to them, keeping the balance. Keys may expire when idle for a full period.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{RateLimitKind, RateLimitReading};
use async_trait::async_trait;
use tokio::time::Instant;

use super::limiter::Meter;
use super::quota::{Cost, Dimension, Limiter, Limits, Rate};

/// A granted admission: its cost is taken from the buckets and it holds an in-flight slot until
/// [`QuotaState::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The backend's id for the in-flight slot.
    pub id: u64,
    /// What was taken.
    pub cost: Cost,
}

/// The answer of [`QuotaState::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acquire {
    /// Admitted: the cost is taken and an in-flight slot held.
    Granted(Lease),
    /// Not now; nothing was taken.
    Wait {
        /// How long until the call could fit, or `None` when it waits for an in-flight slot to be
        /// released (no time can be computed).
        retry_after: Option<Duration>,
        /// The dimension that refused (the one with the longest wait).
        dimension: Dimension,
    },
}

/// How a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Tokens the provider reports the call used (prompt + completion).
    pub actual_tokens: u64,
    /// Give back `reserved − actual` when the call used less than reserved.
    pub refund_unused: bool,
}

/// A shared-state backend failed. The scheduler's failure policy decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The backend could not be reached or answered with an error.
    #[error("quota state backend unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
}

/// Where a key's buckets, in-flight slots and pauses live. The scheduler keeps them in memory by
/// default; implement this trait to share quota across processes (see the module docs for the
/// exact semantics each operation must have).
#[async_trait]
pub trait QuotaState: Send + Sync + fmt::Debug {
    /// Atomically checks the pause, every bucket and the in-flight cap; takes `cost` from all of
    /// them and returns a lease, or takes nothing and says how long to wait. The lease's slot
    /// expires after `lease_ttl` if never settled.
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError>;

    /// Ends `lease`: frees its in-flight slot and reconciles its tokens to `settlement`.
    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError>;

    /// Pauses the key for `retry_after` from now (extends, never shortens, a pause).
    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError>;

    /// Lowers balances to what the provider reported remaining.
    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError>;

    /// Gives up `by` of refill in the key's continuous buckets (possibly into debt); windows
    /// have no refill to give up. The scheduler calls it once per key, at the provider's first
    /// answer, with the time since its first admission: the provider's bucket began refilling
    /// only when that request arrived, the shared one when it was granted, and without the shift
    /// a later request that travels faster than the first finds the provider short (a 429 with
    /// limits configured exactly). The default does nothing: a backend without it only loses
    /// that protection.
    async fn lag(&self, key: &str, limits: &Limits, by: Duration) -> Result<(), StateError> {
        let _ = (key, limits, by);
        Ok(())
    }
}

#[async_trait]
impl<S: QuotaState + ?Sized> QuotaState for Arc<S> {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        (**self).acquire(key, limits, cost, lease_ttl).await
    }
    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
        (**self).settle(key, limits, lease, settlement).await
    }
    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError> {
        (**self).pause_until(key, retry_after).await
    }
    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError> {
        (**self).observe(key, limits, reading).await
    }
    async fn lag(&self, key: &str, limits: &Limits, by: Duration) -> Result<(), StateError> {
        (**self).lag(key, limits, by).await
    }
}

#[async_trait]
impl<S: QuotaState + ?Sized> QuotaState for Box<S> {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        (**self).acquire(key, limits, cost, lease_ttl).await
    }
    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
        (**self).settle(key, limits, lease, settlement).await
    }
    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError> {
        (**self).pause_until(key, retry_after).await
    }
    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError> {
        (**self).observe(key, limits, reading).await
    }
    async fn lag(&self, key: &str, limits: &Limits, by: Duration) -> Result<(), StateError> {
        (**self).lag(key, limits, by).await
    }
}

/// A reading's `(remaining, limit it was counted against)` for requests and for tokens.
pub(crate) fn reported_remaining(reading: &RateLimitReading) -> [Option<(u64, Option<u64>)>; 2] {
    [
        reading
            .remaining_requests
            .map(|r| (r, reading.limit_requests)),
        reading.remaining_tokens.map(|r| (r, reading.limit_tokens)),
    ]
}

/// What a provider's `remaining`, counted against the limit it reports, leaves of `rate`, the
/// one in force here. A fixed window whose limit here is below the reported one (LiteLLM admits
/// one less than it reports, configured or learned) counts what the provider used against its
/// own limit: a deployment of `rpm: 60` that reports 1 remaining after 59 has nothing left for a
/// key that knows it admits 59 (taking the 1 at its word was one 429 per window). A bucket takes
/// the report as it is: a limit configured below the provider's is usually headroom left for
/// others, and the provider's remaining already bounds what is there.
pub(crate) fn remaining_within((remaining, reported): (u64, Option<u64>), rate: Rate) -> u64 {
    match reported {
        Some(reported)
            if reported > rate.limit && matches!(rate.limiter, Limiter::FixedWindow(_)) =>
        {
            remaining.saturating_sub(reported - rate.limit)
        }
        _ => remaining,
    }
}

/// `now + d`, or a far-future instant when that is not representable. Every instant offset by a
/// configured or provider-supplied duration goes through here: `Instant + Duration` panics on
/// overflow, and a provider's `retry-after` or a user's `Duration::MAX` must never panic a call.
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    // Thirty years is what tokio itself uses as "far future".
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Why a key cannot admit a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// `None`: waiting for an in-flight slot.
    pub(crate) wait: Option<Duration>,
    pub(crate) dimension: Dimension,
}

/// Which of a key's request and token buckets existed at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present {
    pub(crate) requests: bool,
    pub(crate) tokens: bool,
}

/// The in-memory state of one key: its buckets, in-flight count and pause. Synchronous so the
/// scheduler can update it under its per-key lock with no allocation and no `await`.
#[derive(Debug, Default)]
pub(crate) struct KeyBuckets {
    buckets: [Option<Meter>; 4],
    /// Any bucket exists (lets an unlimited key skip `sync`).
    has_buckets: bool,
    in_flight: u32,
    paused_until: Option<Instant>,
}

const DIMENSIONS: [Dimension; 4] = [
    Dimension::Requests,
    Dimension::Tokens,
    Dimension::RequestsPerDay,
    Dimension::TokensPerDay,
];

fn rates(limits: &Limits) -> [Option<Rate>; 4] {
    [
        limits.requests,
        limits.tokens,
        limits.requests_per_day,
        limits.tokens_per_day,
    ]
}

fn amounts(cost: Cost) -> [u64; 4] {
    [cost.requests, cost.tokens, cost.requests, cost.tokens]
}

impl KeyBuckets {
    /// Creates, resizes or drops buckets to match `limits`, and refills them to `now`.
    fn sync(&mut self, limits: &Limits, now: Instant) {
        if !self.has_buckets && limits.is_unlimited() {
            return;
        }
        for (slot, rate) in self.buckets.iter_mut().zip(rates(limits)) {
            match (slot.as_mut(), rate) {
                (Some(b), Some(r)) => {
                    if b.rate() == r {
                        b.refill(now);
                    } else {
                        b.set_rate(r, now);
                    }
                }
                (None, Some(r)) => *slot = Some(Meter::new(r, now, !limits.start_empty)),
                (Some(_), None) => *slot = None,
                (None, None) => {}
            }
        }
        self.has_buckets = self.buckets.iter().any(Option::is_some);
    }

    /// How long the key is still paused.
    pub(crate) fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Takes `cost` from every bucket and an in-flight slot, or nothing.
    pub(crate) fn try_acquire(
        &mut self,
        now: Instant,
        limits: &Limits,
        cost: Cost,
    ) -> Result<(), Blocked> {
        if let Some(wait) = self.paused_for(now) {
            return Err(Blocked {
                wait: Some(wait),
                dimension: Dimension::Paused,
            });
        }
        if limits.is_unlimited() && !self.has_buckets {
            self.in_flight += 1;
            return Ok(());
        }
        if limits
            .max_in_flight
            .is_some_and(|max| self.in_flight >= max)
        {
            return Err(Blocked {
                wait: None,
                dimension: Dimension::InFlight,
            });
        }
        self.sync(limits, now);
        let amounts = amounts(cost);
        let mut longest: Option<(Duration, Dimension)> = None;
        for ((slot, amount), dimension) in self.buckets.iter().zip(amounts).zip(DIMENSIONS) {
            if let Some(b) = slot {
                let wait = b.wait_guarded(amount, limits.guard);
                if !wait.is_zero() && longest.is_none_or(|(w, _)| wait > w) {
                    longest = Some((wait, dimension));
                }
            }
        }
        if let Some((wait, dimension)) = longest {
            return Err(Blocked {
                wait: Some(wait),
                dimension,
            });
        }
        for (slot, amount) in self.buckets.iter_mut().zip(amounts) {
            if let Some(b) = slot {
                b.take(amount);
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Ends an admission of `reserved`: frees its in-flight slot, charges usage above the
    /// reservation, and refunds unused tokens when asked.
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        limits: &Limits,
        reserved: Cost,
        settlement: Settlement,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let extra = settlement.actual_tokens.saturating_sub(reserved.tokens);
        let unused = reserved.tokens.saturating_sub(settlement.actual_tokens);
        if extra == 0 && !(settlement.refund_unused && unused > 0) {
            // Nothing to charge or give back: the buckets are brought up to date (`sync`) by
            // whatever reads them next, so a plain success costs no refill arithmetic here.
            return;
        }
        self.sync(limits, now);
        for (i, slot) in self.buckets.iter_mut().enumerate() {
            let Some(b) = slot else { continue };
            let is_tokens = matches!(DIMENSIONS[i], Dimension::Tokens | Dimension::TokensPerDay);
            if !is_tokens {
                continue;
            }
            if extra > 0 {
                b.take(extra);
            } else if settlement.refund_unused && unused > 0 {
                b.give(unused);
            }
        }
    }

    /// Pauses until `until` (never shortens a pause).
    pub(crate) fn pause_until(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|p| p < until) {
            self.paused_until = Some(until);
        }
    }

    /// Lowers the balances to what the provider reports remaining.
    pub(crate) fn observe(&mut self, now: Instant, limits: &Limits, reading: &RateLimitReading) {
        self.sync(limits, now);
        for (slot, remaining) in self.buckets.iter_mut().zip(reported_remaining(reading)) {
            if let (Some(b), Some(remaining)) = (slot, remaining) {
                let remaining = remaining_within(remaining, b.rate());
                b.tighten_to(remaining);
            }
        }
    }

    /// Which of the request and token buckets exist now (the scheduler reports with
    /// `Present::default()`, see `InFlight::finish`; the tests exercise the rounding allowance).
    #[cfg(test)]
    pub(crate) fn present(&self) -> Present {
        Present {
            requests: self.buckets[0].is_some(),
            tokens: self.buckets[1].is_some(),
        }
    }

    /// Lowers the balances to a provider's report of what it had left when it admitted a call
    /// sent `since` ago, while `sent` buckets existed here.
    ///
    /// The report is as old as the call, so it is first brought up to now with the refill since
    /// (lowering today's balance to the old value would throw that refill away at every
    /// response). The result is an upper bound on what the provider can have now — whatever
    /// anyone took since only lowers it — so lowering to it is always safe, and repeating it is
    /// harmless. Headers give whole units: one more is allowed for the fraction when the bucket
    /// already existed here; a bucket created for limits learned since takes the report as it is.
    pub(crate) fn observe_since(
        &mut self,
        now: Instant,
        limits: &Limits,
        reading: &RateLimitReading,
        since: Duration,
        sent: Present,
    ) {
        self.sync(limits, now);
        let existed = [sent.requests, sent.tokens];
        let reports = reported_remaining(reading).into_iter().zip(existed);
        for (slot, (remaining, existed)) in self.buckets.iter_mut().zip(reports) {
            if let (Some(b), Some(remaining)) = (slot, remaining) {
                let remaining =
                    remaining_within(remaining, b.rate()).saturating_add(u64::from(existed));
                b.tighten_to_since(remaining, since);
            }
        }
    }

    /// Takes a 429's "try again in `retry_after`" at its word: the provider's bucket of `kind`
    /// will cover `cost` only then, so this one may not hold more than that implies (it may go
    /// into debt). Without this, the bucket refills during the pause as if nothing were wrong,
    /// and the calls it then lets out at once meet the same empty provider bucket — each 429
    /// that a provider charges digging the hole deeper.
    pub(crate) fn after_429(
        &mut self,
        now: Instant,
        limits: &Limits,
        kind: RateLimitKind,
        cost: Cost,
        retry_after: Duration,
    ) {
        self.sync(limits, now);
        let (slot, amount) = match kind {
            RateLimitKind::Requests => (&mut self.buckets[0], cost.requests),
            RateLimitKind::Tokens => (&mut self.buckets[1], cost.tokens),
            _ => return,
        };
        if let Some(b) = slot {
            b.tighten_to_wait(amount, retry_after);
        }
    }

    /// The request and token meters a 429 of `kind` is about (both when it does not say):
    /// 0 requests, 1 tokens.
    pub(crate) fn dimensions_of(kind: RateLimitKind) -> &'static [usize] {
        match kind {
            RateLimitKind::Requests => &[0],
            RateLimitKind::Tokens => &[1],
            _ => &[0, 1],
        }
    }

    /// A 429 with no usable hint: the meters of `kind` hold nothing until they recover on their
    /// own (a bucket refills from empty, a window opens at its boundary). Returns the longest
    /// time until a window opens, when a meter is a window.
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        limits: &Limits,
        kind: RateLimitKind,
        cost: Cost,
    ) -> Option<Duration> {
        self.sync(limits, now);
        let amounts = [cost.requests, cost.tokens];
        let mut window_end = None;
        for &i in Self::dimensions_of(kind) {
            if let Some(m) = &mut self.buckets[i] {
                m.drain();
                if matches!(m.rate().limiter, super::quota::Limiter::FixedWindow(_)) {
                    let wait = m.wait(amounts[i].max(1));
                    window_end = Some(window_end.map_or(wait, |w: Duration| w.max(wait)));
                }
            }
        }
        window_end
    }

    /// Windows of `kind` start afresh now (a probe's success will place them).
    pub(crate) fn reopen_windows(&mut self, now: Instant, limits: &Limits, kind: RateLimitKind) {
        self.sync(limits, now);
        for &i in Self::dimensions_of(kind) {
            if let Some(m) = &mut self.buckets[i]
                && matches!(m.rate().limiter, super::quota::Limiter::FixedWindow(_))
            {
                let mut fresh = Meter::new(m.rate(), now, true);
                fresh.align(now);
                *m = fresh;
            }
        }
    }

    /// The continuous buckets of `kind` hold nothing more than they have now or zero: they
    /// earned nothing while the key was in debt.
    pub(crate) fn drain_buckets(&mut self, now: Instant, limits: &Limits, kind: RateLimitKind) {
        self.sync(limits, now);
        for &i in Self::dimensions_of(kind) {
            if let Some(m) = &mut self.buckets[i]
                && m.rate().limiter == super::quota::Limiter::Bucket
            {
                m.drain();
            }
        }
    }

    /// Every continuous bucket that exists gives up `by` of refill (the cold-start shift). A
    /// bucket created since, for limits the answer taught, started no earlier than the answer
    /// and has no lead to give up.
    pub(crate) fn lag(&mut self, now: Instant, by: Duration) {
        for m in self.buckets.iter_mut().flatten() {
            m.refill(now);
            m.lag(by);
        }
    }

    /// What a fixed-window meter of `kind` held before `cost` when a 429 refused it: the most
    /// the provider's window admits, when it admits fewer than its limit. `None` for other kinds.
    pub(crate) fn window_count_before(
        &mut self,
        now: Instant,
        limits: &Limits,
        dimension: usize,
        cost: u64,
    ) -> Option<u64> {
        self.sync(limits, now);
        let m = self.buckets.get(dimension)?.as_ref()?;
        if !matches!(m.rate().limiter, super::quota::Limiter::FixedWindow(_)) {
            return None;
        }
        let used = m.rate().limit.saturating_sub(m.available());
        Some(used.saturating_sub(cost))
    }

    /// The provider showed a window boundary for `dimension` (0 requests, 1 tokens).
    pub(crate) fn align(&mut self, now: Instant, limits: &Limits, dimension: usize, at: Instant) {
        self.sync(limits, now);
        if let Some(Some(m)) = self.buckets.get_mut(dimension) {
            m.align(at);
        }
    }

    /// Whole units available per dimension now: `[requests, tokens]` (for snapshots).
    pub(crate) fn available(&mut self, now: Instant, limits: &Limits) -> [Option<u64>; 2] {
        self.sync(limits, now);
        [
            self.buckets[0].as_ref().map(Meter::available),
            self.buckets[1].as_ref().map(Meter::available),
        ]
    }
}

/// The in-memory [`QuotaState`]: what the scheduler uses by default (through a synchronous fast
/// path, not this trait), provided as a trait object for tests and as the reference behaviour for
/// other backends. In-flight leases never expire here: a process that crashes loses its memory too.
#[derive(Debug, Default)]
pub struct InMemoryState {
    keys: Mutex<HashMap<String, KeyBuckets>>,
    next_lease: AtomicU64,
}

impl InMemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_key<R>(&self, key: &str, f: impl FnOnce(&mut KeyBuckets) -> R) -> R {
        // A poisoned lock means a panic elsewhere mid-update; bucket state stays consistent
        // because every update is a few plain assignments.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get_mut(key) {
            return f(k);
        }
        f(keys.entry(key.to_owned()).or_default())
    }
}

#[async_trait]
impl QuotaState for InMemoryState {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        _lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        let now = Instant::now();
        Ok(
            match self.with_key(key, |k| k.try_acquire(now, limits, cost)) {
                Ok(()) => Acquire::Granted(Lease {
                    id: self.next_lease.fetch_add(1, Ordering::Relaxed),
                    cost,
                }),
                Err(b) => Acquire::Wait {
                    retry_after: b.wait,
                    dimension: b.dimension,
                },
            },
        )
    }

    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
        let now = Instant::now();
        self.with_key(key, |k| k.settle(now, limits, lease.cost, settlement));
        Ok(())
    }

    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError> {
        let until = instant_after(Instant::now(), retry_after);
        self.with_key(key, |k| k.pause_until(until));
        Ok(())
    }

    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError> {
        let now = Instant::now();
        self.with_key(key, |k| k.observe(now, limits, reading));
        Ok(())
    }

    async fn lag(&self, key: &str, limits: &Limits, by: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        self.with_key(key, |k| {
            k.sync(limits, now);
            k.lag(now, by);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::quota::Quota;

    fn cost(tokens: u64) -> Cost {
        Cost {
            requests: 1,
            tokens,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_is_all_or_nothing_across_dimensions() {
        let state = InMemoryState::new();
        let limits = Quota::per_period(Duration::from_secs(10))
            .requests(2)
            .tokens(100)
            .limits();
        let ttl = Duration::from_secs(60);
        let Acquire::Granted(a) = state.acquire("k", &limits, cost(90), ttl).await.unwrap() else {
            panic!("first call fits")
        };
        // 10 tokens left: refused on tokens, and the request bucket is untouched.
        let refused = state.acquire("k", &limits, cost(50), ttl).await.unwrap();
        assert_eq!(
            refused,
            Acquire::Wait {
                retry_after: Some(Duration::from_secs(4)),
                dimension: Dimension::Tokens
            }
        );
        assert!(matches!(
            state.acquire("k", &limits, cost(10), ttl).await.unwrap(),
            Acquire::Granted(_)
        ));
        // Both requests used: refused on requests now (a request refills every 5 s).
        let Acquire::Wait { dimension, .. } =
            state.acquire("k", &limits, cost(0), ttl).await.unwrap()
        else {
            panic!("no request left")
        };
        assert_eq!(dimension, Dimension::Requests);
        // Refund of unused tokens (used 20 of 90) makes room for 70 more once a request refills.
        let s = Settlement {
            actual_tokens: 20,
            refund_unused: true,
        };
        state.settle("k", &limits, a, s).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            state.acquire("k", &limits, cost(70), ttl).await.unwrap(),
            Acquire::Granted(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_as_old_as_its_call_is_brought_up_to_now_before_it_lowers_anything() {
        // 10 requests per 10 s: one a second.
        let limits = Quota::per_period(Duration::from_secs(10))
            .requests(10)
            .limits();
        let reading = |remaining| RateLimitReading {
            remaining_requests: Some(remaining),
            ..RateLimitReading::default()
        };
        let mut k = KeyBuckets::default();
        let t0 = Instant::now();
        for _ in 0..7 {
            k.try_acquire(t0, &limits, cost(0)).unwrap();
        }
        let sent = k.present();
        // The answer arrives 2.5 s later: 2.5 requests refilled since, 5.5 here.
        let t1 = t0 + Duration::from_millis(2_500);
        let since = t1 - t0;
        // The provider agrees (3 left, or 2 and a fraction): nothing changes, however often.
        k.observe_since(t1, &limits, &reading(3), since, sent);
        k.observe_since(t1, &limits, &reading(2), since, sent);
        k.observe_since(t1, &limits, &reading(2), since, sent);
        assert_eq!(k.available(t1, &limits)[0], Some(5));
        // It had less than 1 left: someone else used the key; at most 1 + 2.5 can be left now.
        k.observe_since(t1, &limits, &reading(0), since, sent);
        assert_eq!(k.available(t1, &limits)[0], Some(3));
        // Lowering to the old value as it was would have thrown the refill away.
        let mut stale = KeyBuckets::default();
        for _ in 0..7 {
            stale.try_acquire(t0, &limits, cost(0)).unwrap();
        }
        stale.observe(t1, &limits, &reading(0));
        assert_eq!(stale.available(t1, &limits)[0], Some(0));
        // A bucket created for limits learned since takes the report as it is (plus refill).
        let mut fresh = KeyBuckets::default();
        fresh.observe_since(t1, &limits, &reading(2), Duration::ZERO, Present::default());
        assert_eq!(fresh.available(t1, &limits)[0], Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_and_in_flight_block_and_release() {
        let state = InMemoryState::new();
        let limits = Quota::per_minute().max_in_flight(1).limits();
        let ttl = Duration::from_secs(60);
        let Acquire::Granted(a) = state.acquire("k", &limits, cost(1), ttl).await.unwrap() else {
            panic!("slot free")
        };
        assert_eq!(
            state.acquire("k", &limits, cost(1), ttl).await.unwrap(),
            Acquire::Wait {
                retry_after: None,
                dimension: Dimension::InFlight
            }
        );
        let s = Settlement {
            actual_tokens: 1,
            refund_unused: false,
        };
        state.settle("k", &limits, a, s).await.unwrap();
        state
            .pause_until("k", Duration::from_secs(3))
            .await
            .unwrap();
        state
            .pause_until("k", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            state.acquire("k", &limits, cost(1), ttl).await.unwrap(),
            Acquire::Wait {
                retry_after: Some(Duration::from_secs(3)),
                dimension: Dimension::Paused
            }
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(
            state.acquire("k", &limits, cost(1), ttl).await.unwrap(),
            Acquire::Granted(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn observe_only_lowers_balances() {
        let state = InMemoryState::new();
        let limits = Quota::per_minute().tokens(1000).limits();
        let ttl = Duration::from_secs(60);
        let reading = RateLimitReading {
            remaining_tokens: Some(100),
            ..RateLimitReading::default()
        };
        state.observe("k", &limits, &reading).await.unwrap();
        assert!(matches!(
            state.acquire("k", &limits, cost(101), ttl).await.unwrap(),
            Acquire::Wait {
                dimension: Dimension::Tokens,
                ..
            }
        ));
        let high = RateLimitReading {
            remaining_tokens: Some(5000),
            ..RateLimitReading::default()
        };
        state.observe("k", &limits, &high).await.unwrap();
        assert!(matches!(
            state.acquire("k", &limits, cost(101), ttl).await.unwrap(),
            Acquire::Wait { .. }
        ));
    }
}
