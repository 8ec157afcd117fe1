//! Which limiter the simulated provider runs per dimension: the map from [`LimiterKind`] (what a
//! user configures) to the three implementations — the continuous bucket (`bucket.rs`), the fixed
//! window (`fixed_window.rs`) and the sliding log (`sliding_log.rs`) — behind one set of
//! operations the admission decision calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::bucket::ProviderBucket;
use super::fixed_window::{Boundaries, FixedWindow};
use super::sliding_log::SlidingLog;

/// How a simulated provider counts one dimension (requests or tokens) against its limit.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::provider::{LimiterKind, SimConfig, WindowAnchor};
///
/// // LiteLLM: requests in fixed windows on the UTC calendar minute.
/// let config = SimConfig::default()
///     .with_rpm(60)
///     .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::Clock));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimiterKind {
    /// A continuously refilling bucket of capacity = limit and refill = limit / period, starting
    /// full (OpenAI and Anthropic).
    #[default]
    Bucket,
    /// A counter that resets to zero at each window boundary (LiteLLM, most API gateways, Azure's
    /// short request windows).
    FixedWindow(WindowAnchor),
    /// A log of admissions within the last period: each one frees its share exactly one period
    /// after it arrived.
    SlidingLog,
}

/// Where a [`LimiterKind::FixedWindow`]'s boundaries fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowAnchor {
    /// At multiples of the period since the Unix epoch, read from the system clock when the
    /// simulation starts: the UTC calendar minute for a 60 s period, as LiteLLM counts.
    Clock,
    /// The simulation starts this far into its first window (less than one period), so the first
    /// boundary comes `period − phase` after the start: deterministic, for tests and benchmarks
    /// that must start at a chosen phase.
    Phase(Duration),
    /// A window opens with the first request after the previous window expired (LiteLLM's proxy
    /// limiter, Envoy-style scripts).
    FirstRequest,
}

/// The simulator counts the way a client's quota says the provider does: a provider to test
/// a [`scheduler::Limiter`](crate::scheduler::Limiter) against.
///
/// ```
/// use agent_runtime::provider::{LimiterKind, WindowAnchor};
/// use agent_runtime::scheduler::{Limiter, WindowStart};
///
/// let kind = LimiterKind::from(Limiter::FixedWindow(WindowStart::Clock));
/// assert_eq!(kind, LimiterKind::FixedWindow(WindowAnchor::Clock));
/// ```
impl From<crate::scheduler::Limiter> for LimiterKind {
    fn from(kind: crate::scheduler::Limiter) -> Self {
        use crate::scheduler::{Limiter, WindowStart};
        match kind {
            Limiter::FixedWindow(WindowStart::FirstRequest) => {
                LimiterKind::FixedWindow(WindowAnchor::FirstRequest)
            }
            Limiter::FixedWindow(_) => LimiterKind::FixedWindow(WindowAnchor::Clock),
            Limiter::SlidingWindow => LimiterKind::SlidingLog,
            _ => LimiterKind::Bucket,
        }
    }
}

/// One dimension's limiter.
#[derive(Debug, Clone)]
pub(crate) enum Limiter {
    Bucket(ProviderBucket),
    Fixed(FixedWindow),
    Sliding(SlidingLog),
}

/// Every operation, forwarded to the kind that holds the state.
macro_rules! forward {
    ($self:ident, $l:ident => $e:expr) => {
        match $self {
            Limiter::Bucket($l) => $e,
            Limiter::Fixed($l) => $e,
            Limiter::Sliding($l) => $e,
        }
    };
}

/// How far into a `period`-long window of the Unix epoch the system clock is now.
fn clock_phase(period: Duration) -> Duration {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let phase = since_epoch % period.as_nanos().max(1);
    Duration::from_nanos(u64::try_from(phase).unwrap_or(0))
}

impl Limiter {
    /// A limiter of `kind` for `limit` per `period`, as of `now`. `start_empty` applies to the
    /// bucket only (a window or log starts with nothing counted).
    pub(crate) fn new(
        kind: LimiterKind,
        limit: u64,
        period: Duration,
        start_empty: bool,
        now: Instant,
    ) -> Self {
        let aligned = |phase| Boundaries::Aligned { start: now, phase };
        match kind {
            LimiterKind::Bucket => {
                Self::Bucket(ProviderBucket::new(limit, period, start_empty, now))
            }
            LimiterKind::FixedWindow(anchor) => {
                let boundaries = match anchor {
                    WindowAnchor::Clock => aligned(clock_phase(period)),
                    WindowAnchor::Phase(phase) => aligned(phase),
                    WindowAnchor::FirstRequest => Boundaries::FirstRequest,
                };
                Self::Fixed(FixedWindow::new(limit, period, boundaries, now))
            }
            LimiterKind::SlidingLog => Self::Sliding(SlidingLog::new(limit, period, now)),
        }
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        forward!(self, l => l.refill(now))
    }

    pub(crate) fn capacity(&self) -> u64 {
        forward!(self, l => l.capacity())
    }

    /// Whole units available now (never negative).
    pub(crate) fn available(&self) -> u64 {
        forward!(self, l => l.available())
    }

    /// Units in use, as OpenAI's "Used U" counts them.
    pub(crate) fn used(&self) -> u64 {
        forward!(self, l => l.used())
    }

    pub(crate) fn has(&self, amount: u64) -> bool {
        forward!(self, l => l.has(amount))
    }

    /// Takes `amount`, beyond the limit if need be (a forced charge).
    pub(crate) fn take(&mut self, amount: u64) {
        forward!(self, l => l.take(amount))
    }

    /// Returns `amount` (a refund).
    pub(crate) fn give_back(&mut self, amount: u64) {
        forward!(self, l => l.give_back(amount))
    }

    /// Time until `amount` fits, rounded up to the millisecond.
    pub(crate) fn wait_for(&self, amount: u64) -> Duration {
        forward!(self, l => l.wait_for(amount))
    }

    /// Time until nothing is counted any more (what `x-ratelimit-reset-*` reports).
    pub(crate) fn time_to_full(&self) -> Duration {
        forward!(self, l => l.time_to_full())
    }

    /// Changes the limit at run time.
    pub(crate) fn set_capacity(&mut self, limit: u64) {
        forward!(self, l => l.set_capacity(limit))
    }
}
