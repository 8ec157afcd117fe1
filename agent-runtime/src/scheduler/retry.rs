//! The one retry layer's policy: full-jitter exponential backoff, a retry budget per key, and a
//! circuit breaker per key.
//!
//! Hand-written rather than tower's `retry`/`TpsBudget` or `backon`: the scheduler's retries go
//! back through its own admission queue (a retry must wait for quota like any call), which a
//! wrapping retry combinator cannot do, and the budget and breaker live under the key's lock the
//! admission fast path already holds, so they cost no extra synchronization.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::quota::QuotaConfigError;

/// How the scheduler retries transient failures (5xx, timeouts, dropped connections) and how it
/// protects a failing provider. Rate limits (429) are not retried by backoff and use up no
/// attempt: the key pauses until the provider's retry time (or, with no usable hint, probes one
/// call at a time) and the call goes back to the front of its queue.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(4)
///     .backoff(Duration::from_millis(100), Duration::from_secs(5))
///     .seed(7);
/// assert!(policy.validate().is_ok());
/// assert!(RetryPolicy::default().max_attempts(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Provider attempts per call, first included (default 6). A rate-limit 429 uses none: the
    /// call waits for quota instead, up to the scheduler's `max_admission_wait`.
    pub max_attempts: u32,
    /// Backoff base: attempt `n` sleeps `uniform(0, min(cap, base·2^(n−1)))` (default 500 ms).
    pub base: Duration,
    /// Backoff cap (default 30 s).
    pub cap: Duration,
    /// Retries allowed per key as a fraction of first attempts in the window (default 0.2).
    pub budget_ratio: f64,
    /// Retries always allowed per key per window, whatever the traffic (default 10).
    pub budget_floor: u32,
    /// The retry budget's sliding window (default 10 s).
    pub budget_window: Duration,
    /// Consecutive transient failures that open a key's circuit (default 5).
    pub breaker_threshold: u32,
    /// How long an open circuit holds calls back before letting one probe through (default 30 s).
    pub breaker_cooldown: Duration,
    /// What a call does while its key's circuit is open (default [`WhenOpen::Wait`]).
    pub when_open: WhenOpen,
    /// Seed of the jitter generator, for reproducible tests (default: from the OS).
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            budget_ratio: 0.2,
            budget_floor: 10,
            budget_window: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            when_open: WhenOpen::Wait,
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// Sets the attempts per call (1 = never retry).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the backoff base and cap.
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// Sets the retry budget: `floor + ratio × first attempts` retries per `window`, per key.
    #[must_use]
    pub fn budget(mut self, ratio: f64, floor: u32, window: Duration) -> Self {
        self.budget_ratio = ratio;
        self.budget_floor = floor;
        self.budget_window = window;
        self
    }

    /// Sets the circuit breaker: open after `threshold` consecutive transient failures, for
    /// `cooldown`.
    #[must_use]
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Sets what calls do while a key's circuit is open: wait for it (the default) or fail fast.
    #[must_use]
    pub fn when_open(mut self, when_open: WhenOpen) -> Self {
        self.when_open = when_open;
        self
    }

    /// Seeds the jitter.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the policy.
    pub fn validate(&self) -> Result<(), QuotaConfigError> {
        let invalid = |reason| Err(QuotaConfigError::InvalidRetryPolicy { reason });
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1 (1 means no retries)");
        }
        if self.base.is_zero() || self.base > self.cap {
            return invalid("backoff base must be positive and not above the cap");
        }
        if !self.budget_ratio.is_finite() || self.budget_ratio < 0.0 {
            return invalid("budget ratio must be a finite, non-negative fraction");
        }
        if self.budget_window < Duration::from_millis(10) {
            return invalid("budget window must be at least 10 ms");
        }
        if self.breaker_threshold == 0 {
            return invalid("breaker threshold must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn rng(&self) -> SmallRng {
        match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        }
    }

    /// Full jitter (AWS "Exponential Backoff And Jitter"): `uniform(0, min(cap, base·2^(n−1)))`
    /// for retry `n ≥ 1`.
    pub(crate) fn backoff_for(&self, retry: u32, rng: &mut SmallRng) -> Duration {
        let exp = 2u32.saturating_pow(retry.saturating_sub(1).min(31));
        let ceiling = self.base.saturating_mul(exp).min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// What a call does while its key's circuit breaker is open.
///
/// ```
/// use agent_runtime::scheduler::{RetryPolicy, WhenOpen};
///
/// assert_eq!(RetryPolicy::default().when_open, WhenOpen::Wait);
/// let fail_fast = RetryPolicy::default().when_open(WhenOpen::FailFast);
/// assert_eq!(fail_fast.when_open, WhenOpen::FailFast);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WhenOpen {
    /// Wait (cancellable, within the scheduler's `max_admission_wait`) until the cool-down ends
    /// and a half-open probe has closed the circuit, then go: an outage shorter than the wait
    /// limit costs time, not calls. While open, retries do not draw on the retry budget (they
    /// queue behind the probe and add no load), and a retry that finds the budget spent opens
    /// the circuit rather than failing its call. A call whose wait limit ends before the
    /// cool-down fails at once with `CallError::CircuitOpen`.
    #[default]
    Wait,
    /// Fail at once with `CallError::CircuitOpen` (and when to retry) while the circuit is open,
    /// for callers that prefer to handle an outage themselves.
    FailFast,
}

const SLOTS: usize = 10;

/// Retries a key may still make: `floor + ratio × first attempts` over a sliding window of ten
/// slots (Finagle's and tower's `TpsBudget` idea), so retries never multiply load on a struggling
/// provider by more than `1 + ratio`.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    origin: Instant,
    slot_ms: u64,
    /// `(slot number, first attempts, retries)`.
    slots: [(u64, u32, u32); SLOTS],
    /// The slot deposits go to until `slot_end` (saves the slot arithmetic on every call).
    current: usize,
    slot_end: Instant,
}

impl RetryBudget {
    pub(crate) fn new(policy: &RetryPolicy, now: Instant) -> Self {
        let window_ms = u64::try_from(policy.budget_window.as_millis()).unwrap_or(u64::MAX);
        Self {
            origin: now,
            slot_ms: (window_ms / SLOTS as u64).max(1),
            slots: [(0, 0, 0); SLOTS],
            current: 0,
            slot_end: now,
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (u64, u32, u32) {
        let d = now.saturating_duration_since(self.origin);
        let n = (d.as_secs() * 1000 + u64::from(d.subsec_millis())) / self.slot_ms;
        let i = (n % SLOTS as u64) as usize;
        if self.slots[i].0 != n {
            self.slots[i] = (n, 0, 0);
        }
        self.current = i;
        self.slot_end = self.origin + Duration::from_millis((n + 1).saturating_mul(self.slot_ms));
        &mut self.slots[i]
    }

    /// Records a first attempt.
    pub(crate) fn deposit(&mut self, now: Instant) {
        let s = if now < self.slot_end {
            &mut self.slots[self.current]
        } else {
            self.slot(now)
        };
        s.1 = s.1.saturating_add(1);
    }

    /// Takes one retry if the budget allows it.
    pub(crate) fn withdraw(&mut self, now: Instant, policy: &RetryPolicy) -> bool {
        let current = self.slot(now).0;
        let live = self.slots.iter().filter(|s| s.0 + SLOTS as u64 > current);
        let (firsts, retries) = live.fold((0u64, 0u64), |(f, r), s| {
            (f + u64::from(s.1), r + u64::from(s.2))
        });
        let allowed = f64::from(policy.budget_floor) + policy.budget_ratio * firsts as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let s = self.slot(now);
        s.2 = s.2.saturating_add(1);
        true
    }
}

/// The state of a key's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls flow.
    Closed,
    /// Calls wait (or, with [`WhenOpen::FailFast`], fail with `CallError::CircuitOpen`) for the
    /// remaining time.
    Open {
        /// Until the next probe.
        remaining: Duration,
    },
    /// One probe call is allowed; its outcome closes or reopens the circuit.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A key's circuit breaker: opens after `threshold` consecutive transient failures, holds calls
/// back during the cool-down (they wait or fail fast, per [`WhenOpen`]), then lets exactly one
/// probe through.
#[derive(Debug)]
pub(crate) struct Breaker {
    consecutive: u32,
    circuit: Circuit,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            consecutive: 0,
            circuit: Circuit::Closed,
        }
    }

    /// Whether a call may go: `Ok(true)` for the half-open probe, `Err(wait)` when open.
    pub(crate) fn admit(&mut self, now: Instant, policy: &RetryPolicy) -> Result<bool, Duration> {
        match self.circuit {
            Circuit::Closed => Ok(false),
            Circuit::Open { until } if now < until => Err(until - now),
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => {
                self.circuit = Circuit::HalfOpen { probing: true };
                Ok(true)
            }
            // Others are held back while the probe is out; they may ask again after a short while.
            Circuit::HalfOpen { probing: true } => Err(policy.base),
        }
    }

    /// The provider answered (anything but a transient failure).
    pub(crate) fn success(&mut self) {
        self.consecutive = 0;
        self.circuit = Circuit::Closed;
    }

    /// A transient failure; opens the circuit at the threshold or when the probe failed.
    pub(crate) fn failure(&mut self, now: Instant, policy: &RetryPolicy) {
        self.consecutive = self.consecutive.saturating_add(1);
        let probe_failed = matches!(self.circuit, Circuit::HalfOpen { .. });
        if probe_failed || self.consecutive >= policy.breaker_threshold {
            self.circuit = Circuit::Open {
                until: super::state::instant_after(now, policy.breaker_cooldown),
            };
        }
    }

    /// Opens the circuit now, whatever the run of failures: the key's retry budget is spent, so
    /// the provider is failing more than the budget allows retrying.
    pub(crate) fn trip(&mut self, now: Instant, policy: &RetryPolicy) {
        self.circuit = Circuit::Open {
            until: super::state::instant_after(now, policy.breaker_cooldown),
        };
    }

    /// The probe was cancelled before it told anything: let another call probe.
    pub(crate) fn probe_abandoned(&mut self) {
        if matches!(self.circuit, Circuit::HalfOpen { probing: true }) {
            self.circuit = Circuit::HalfOpen { probing: false };
        }
    }

    /// True while the circuit is not closed: failures are being absorbed by the breaker.
    pub(crate) fn is_tripped(&self) -> bool {
        !matches!(self.circuit, Circuit::Closed)
    }

    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        match self.circuit {
            Circuit::Closed => CircuitState::Closed,
            Circuit::Open { until } if now < until => CircuitState::Open {
                remaining: until - now,
            },
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_capped_exponential() {
        let policy = RetryPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_millis(1000))
            .seed(1);
        let mut rng = policy.rng();
        let mut seen_above_half = false;
        for retry in 1..=8u32 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(retry - 1)).min(policy.cap);
            for _ in 0..50 {
                let d = policy.backoff_for(retry, &mut rng);
                assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
                seen_above_half |= d > ceiling / 2;
            }
        }
        assert!(seen_above_half, "jitter should spread over the whole range");
    }

    #[test]
    fn retry_budget_allows_floor_plus_ratio_and_forgets_old_traffic() {
        let policy = RetryPolicy::default().budget(0.1, 2, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy, t0);
        for _ in 0..30 {
            budget.deposit(t0);
        }
        // 2 + 0.1 × 30 = 5 retries.
        let granted = (0..10).filter(|_| budget.withdraw(t0, &policy)).count();
        assert_eq!(granted, 5);
        // A window later, the old traffic and retries are forgotten: only the floor remains.
        let later = t0 + Duration::from_secs(11);
        let granted = (0..10).filter(|_| budget.withdraw(later, &policy)).count();
        assert_eq!(granted, 2);
    }

    #[test]
    fn breaker_opens_cools_down_and_probes_once() {
        let policy = RetryPolicy::default().breaker(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut b = Breaker::new();
        for _ in 0..2 {
            b.failure(t0, &policy);
        }
        assert_eq!(b.admit(t0, &policy), Ok(false));
        b.failure(t0, &policy);
        assert_eq!(b.admit(t0, &policy), Err(Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1, &policy), Ok(true));
        assert!(b.admit(t1, &policy).is_err(), "only one probe at a time");
        b.failure(t1, &policy);
        assert_eq!(
            b.state(t1),
            CircuitState::Open {
                remaining: Duration::from_secs(10)
            }
        );
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2, &policy), Ok(true));
        b.success();
        assert_eq!(b.admit(t2, &policy), Ok(false));
        assert_eq!(b.state(t2), CircuitState::Closed);
    }
}
