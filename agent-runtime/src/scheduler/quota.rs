//! Quota configuration of one key: limits per period, daily caps, in-flight cap, and the
//! provider's accounting habits (refunds, default completion reservation, learning from headers).

use std::time::Duration;

use super::queue::QueuePolicy;

/// The default period of a [`Quota`]: providers quote RPM/TPM, so a minute.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

/// The default period of the daily caps.
pub const DEFAULT_DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Completion tokens reserved for a request that sets no `max_completion_tokens`.
///
/// Providers do not document what they reserve then; 256 covers a typical chat turn, and the
/// reservation is reconciled to the reported usage after the call anyway.
pub const DEFAULT_MAX_COMPLETION_TOKENS: u32 = 256;

/// The limits of one quota key (a provider + model, or any label the user picks).
///
/// Each limit is a continuously refilling bucket whose capacity is the limit and whose refill rate
/// is `limit / period` (OpenAI's and Anthropic's semantics, see `docs/quota.md`). Unset limits do
/// not bind. A call costs one request and `estimated prompt tokens + max completion tokens` tokens.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::Quota;
///
/// let quota = Quota::per_minute().requests(500).tokens(200_000).max_in_flight(64);
/// assert_eq!(quota.period, Duration::from_secs(60));
/// assert!(quota.validate().is_ok());
/// assert!(Quota::per_minute().requests(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Quota {
    /// The period of `requests` and `tokens` (default one minute; compress it in tests and demos).
    pub period: Duration,
    /// Requests per period.
    pub requests: Option<u64>,
    /// Tokens per period (prompt + completion, as the provider counts them at admission).
    pub tokens: Option<u64>,
    /// The period of the daily caps (default 24 h).
    pub day: Duration,
    /// Requests per day.
    pub requests_per_day: Option<u64>,
    /// Tokens per day.
    pub tokens_per_day: Option<u64>,
    /// Calls in flight at once (a local server's slots, or a politeness cap).
    pub max_in_flight: Option<u32>,
    /// Whether the provider gives back reserved tokens the call did not use (Anthropic does;
    /// OpenAI does not document it, so the default is `false`, the conservative choice).
    pub refund_unused: bool,
    /// Completion tokens reserved when a request sets no `max_completion_tokens`.
    pub default_max_completion_tokens: u32,
    /// Adopt limits the provider reports in its headers when none is configured, and tighten to
    /// what it reports when that is lower than configured (default `true`).
    pub learn_from_headers: bool,
    /// Start with empty buckets instead of full ones (no burst in the first period).
    pub start_empty: bool,
    /// Admit a call only once the buckets would still cover it had they refilled for `guard`
    /// less (default zero). The provider's bucket judges a request when it arrives, the
    /// scheduler's when it leaves: network jitter of up to `guard` between the two can then never
    /// make a request arrive before the provider has refilled for it. It costs one shift of
    /// `guard` at the start of a saturated run, never throughput. A shared Redis state applies it
    /// to continuous buckets by the server's clock: processes reach Redis and the provider over
    /// different paths, so their jitter is larger than one process's (`docs/redis.md`). The cold
    /// start needs no guard: a key's buckets give up the refill of its first round trip by
    /// default (`docs/quota.md`, "Cold start").
    pub guard: Duration,
    /// How the provider counts `requests` (default a continuous [`Limiter::Bucket`]).
    pub requests_limiter: Limiter,
    /// How the provider counts `tokens` (default a continuous [`Limiter::Bucket`]).
    pub tokens_limiter: Limiter,
    /// How calls waiting for this key are ordered (default [`QueuePolicy::token_fair`]).
    pub queue: QueuePolicy,
}

impl Default for Quota {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl Quota {
    /// No limits, a one-minute period, learning from headers on.
    pub const fn unlimited() -> Self {
        Self {
            period: DEFAULT_PERIOD,
            requests: None,
            tokens: None,
            day: DEFAULT_DAY,
            requests_per_day: None,
            tokens_per_day: None,
            max_in_flight: None,
            refund_unused: false,
            default_max_completion_tokens: DEFAULT_MAX_COMPLETION_TOKENS,
            learn_from_headers: true,
            start_empty: false,
            guard: Duration::ZERO,
            requests_limiter: Limiter::Bucket,
            tokens_limiter: Limiter::Bucket,
            queue: QueuePolicy::token_fair(),
        }
    }

    /// Limits per minute (set them with [`requests`](Self::requests) and [`tokens`](Self::tokens)).
    pub const fn per_minute() -> Self {
        Self::unlimited()
    }

    /// Limits per `period`.
    pub const fn per_period(period: Duration) -> Self {
        let mut q = Self::unlimited();
        q.period = period;
        q
    }

    /// Sets the period.
    #[must_use]
    pub const fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Sets the requests per period.
    #[must_use]
    pub const fn requests(mut self, requests: u64) -> Self {
        self.requests = Some(requests);
        self
    }

    /// Sets the tokens per period.
    #[must_use]
    pub const fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Sets the requests per day.
    #[must_use]
    pub const fn requests_per_day(mut self, requests: u64) -> Self {
        self.requests_per_day = Some(requests);
        self
    }

    /// Sets the tokens per day.
    #[must_use]
    pub const fn tokens_per_day(mut self, tokens: u64) -> Self {
        self.tokens_per_day = Some(tokens);
        self
    }

    /// Sets the length of a "day" for the daily caps (compress it in tests).
    #[must_use]
    pub const fn day(mut self, day: Duration) -> Self {
        self.day = day;
        self
    }

    /// Sets the in-flight cap.
    #[must_use]
    pub const fn max_in_flight(mut self, max: u32) -> Self {
        self.max_in_flight = Some(max);
        self
    }

    /// Sets whether unused reserved tokens are given back after the call.
    #[must_use]
    pub const fn refund_unused(mut self, refund: bool) -> Self {
        self.refund_unused = refund;
        self
    }

    /// Sets the completion tokens reserved for requests that set none.
    #[must_use]
    pub const fn default_max_completion_tokens(mut self, tokens: u32) -> Self {
        self.default_max_completion_tokens = tokens;
        self
    }

    /// Sets whether provider headers may set or tighten limits.
    #[must_use]
    pub const fn learn_from_headers(mut self, learn: bool) -> Self {
        self.learn_from_headers = learn;
        self
    }

    /// Sets whether buckets start empty.
    #[must_use]
    pub const fn start_empty(mut self, empty: bool) -> Self {
        self.start_empty = empty;
        self
    }

    /// Sets the guard time: admission waits until the buckets would cover the call even with
    /// `guard` less refill, so a request that reaches the provider up to `guard` sooner than the
    /// one before it still finds its quota there (see [`Quota::guard`](field@Quota::guard)).
    /// A few milliseconds absorb localhost jitter; use the network's jitter for a remote API.
    #[must_use]
    pub const fn guard(mut self, guard: Duration) -> Self {
        self.guard = guard;
        self
    }

    /// Sets how the provider counts both `requests` and `tokens` (see [`Limiter`]).
    #[must_use]
    pub const fn limiter(mut self, limiter: Limiter) -> Self {
        self.requests_limiter = limiter;
        self.tokens_limiter = limiter;
        self
    }

    /// Sets how the provider counts `requests` only.
    #[must_use]
    pub const fn requests_limiter(mut self, limiter: Limiter) -> Self {
        self.requests_limiter = limiter;
        self
    }

    /// Sets how the provider counts `tokens` only.
    #[must_use]
    pub const fn tokens_limiter(mut self, limiter: Limiter) -> Self {
        self.tokens_limiter = limiter;
        self
    }

    /// Sets how waiting calls are ordered (see `docs/quota.md`, "Fair admission").
    #[must_use]
    pub const fn queue(mut self, policy: QueuePolicy) -> Self {
        self.queue = policy;
        self
    }

    /// Checks the configuration: periods must be positive, limits set must be at least 1, a
    /// token window must hold the default completion reservation, and the queue policy must be
    /// consistent.
    pub fn validate(&self) -> Result<(), QuotaConfigError> {
        self.validate_for("")
    }

    pub(crate) fn validate_for(&self, key: &str) -> Result<(), QuotaConfigError> {
        let zero_period = |what: &'static str| QuotaConfigError::ZeroPeriod {
            key: key.to_owned(),
            what,
        };
        if self.period.is_zero() {
            return Err(zero_period("period"));
        }
        if self.day.is_zero() {
            return Err(zero_period("day"));
        }
        for (limit, dimension) in [
            (self.requests, "requests per period"),
            (self.tokens, "tokens per period"),
            (self.requests_per_day, "requests per day"),
            (self.tokens_per_day, "tokens per day"),
            (self.max_in_flight.map(u64::from), "calls in flight"),
        ] {
            if limit == Some(0) {
                return Err(QuotaConfigError::ZeroLimit {
                    key: key.to_owned(),
                    dimension,
                });
            }
        }
        // A request that sets no `max_completion_tokens` reserves the default: a window whose
        // allowance is below it refuses every such call. (Buckets keep their per-call check at
        // admission only, `CallError::ExceedsQuota`: configurations that worked before windows
        // existed stay valid.)
        let reserve = u64::from(self.default_max_completion_tokens);
        if self.tokens_limiter != Limiter::Bucket
            && let Some(capacity) = self.tokens.filter(|l| *l < reserve)
        {
            return Err(QuotaConfigError::CostExceedsCapacity {
                key: key.to_owned(),
                dimension: "tokens per period",
                limiter: self.tokens_limiter,
                cost: reserve,
                capacity,
            });
        }
        if let Some(reason) = self.queue.invalid() {
            return Err(QuotaConfigError::InvalidQueuePolicy {
                key: key.to_owned(),
                reason,
            });
        }
        Ok(())
    }

    /// The limits as the state backend sees them.
    pub fn limits(&self) -> Limits {
        let rate = |limit: Option<u64>, period: Duration, limiter: Limiter| {
            limit.map(|limit| Rate::new(limit, period).with_limiter(limiter))
        };
        Limits {
            requests: rate(self.requests, self.period, self.requests_limiter),
            tokens: rate(self.tokens, self.period, self.tokens_limiter),
            requests_per_day: rate(self.requests_per_day, self.day, Limiter::Bucket),
            tokens_per_day: rate(self.tokens_per_day, self.day, Limiter::Bucket),
            max_in_flight: self.max_in_flight,
            start_empty: self.start_empty,
            guard: self.guard,
        }
    }
}

/// One limit's parameters: `limit` per `period`, counted the way `limiter` says (a continuous
/// bucket unless set otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Capacity, and the amount refilled (or allowed) per `period`.
    pub limit: u64,
    /// The refill period, or the window's length.
    pub period: Duration,
    /// How the provider counts this limit.
    pub limiter: Limiter,
}

impl Rate {
    /// A continuous bucket of `limit` per `period`.
    pub const fn new(limit: u64, period: Duration) -> Self {
        Self {
            limit,
            period,
            limiter: Limiter::Bucket,
        }
    }

    /// The same limit counted by `limiter`.
    #[must_use]
    pub const fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }
}

/// How a provider counts one limit: the semantics admission reproduces (see `docs/quota.md`,
/// one section per kind).
///
/// - OpenAI and Anthropic: [`Bucket`](Limiter::Bucket) — capacity `limit`, refilled
///   continuously at `limit / period` (the default).
/// - LiteLLM and most API gateways: [`FixedWindow`](Limiter::FixedWindow) — `limit` per window,
///   the count reset at each boundary (LiteLLM: UTC calendar minutes, [`WindowStart::Clock`]).
/// - Azure OpenAI (per-10 s request windows) and strict "at most `limit` in any `period`"
///   limiters: [`SlidingWindow`](Limiter::SlidingWindow).
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::{Limiter, Quota, WindowStart};
///
/// // A LiteLLM deployment with `rpm: 60`: fixed UTC minutes.
/// let litellm = Quota::per_minute()
///     .requests(60)
///     .limiter(Limiter::FixedWindow(WindowStart::Clock));
/// assert_eq!(litellm.limits().requests.unwrap().limiter, Limiter::FixedWindow(WindowStart::Clock));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Limiter {
    /// A continuously refilling bucket (GCRA): at most `limit + limit·t/period` in any `t`.
    #[default]
    Bucket,
    /// Fixed windows of `period`: at most `limit` per window, the count reset at each boundary.
    FixedWindow(WindowStart),
    /// A sliding log: at most `limit` in any `period`, each admission freeing its share exactly
    /// `period` after it was taken.
    SlidingWindow,
}

impl Limiter {
    /// A short name (`"bucket"`, `"fixed window"`, `"sliding window"`), as used in errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Limiter::Bucket => "bucket",
            Limiter::FixedWindow(_) => "fixed window",
            Limiter::SlidingWindow => "sliding window",
        }
    }
}

impl std::fmt::Display for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Limiter {
    type Err = String;

    /// `bucket`, `fixed-window` (boundaries on the clock, as LiteLLM and most gateways count),
    /// `fixed-window-from-first-request` or `sliding-window`, as command lines name them.
    ///
    /// ```
    /// use agent_runtime::scheduler::{Limiter, WindowStart};
    ///
    /// let kind: Limiter = "fixed-window".parse().unwrap();
    /// assert_eq!(kind, Limiter::FixedWindow(WindowStart::Clock));
    /// assert!("window".parse::<Limiter>().unwrap_err().contains("sliding-window"));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bucket" => Ok(Limiter::Bucket),
            "fixed-window" => Ok(Limiter::FixedWindow(WindowStart::Clock)),
            "fixed-window-from-first-request" => {
                Ok(Limiter::FixedWindow(WindowStart::FirstRequest))
            }
            "sliding-window" => Ok(Limiter::SlidingWindow),
            other => Err(format!(
                "unknown limiter '{other}'; use bucket, fixed-window, \
                 fixed-window-from-first-request or sliding-window"
            )),
        }
    }
}

/// Where a fixed window's boundaries fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WindowStart {
    /// At whole multiples of the period since the Unix epoch: UTC calendar minutes for a one
    /// minute period (LiteLLM's per-minute keys, Envoy's rate-limit service). In memory this is the
    /// process's wall clock; with Redis, the Redis server's clock.
    #[default]
    Clock,
    /// At the first request, and again at the first request after a window ends (LiteLLM's proxy
    /// limiter v3, CrewAI's RPM controller).
    FirstRequest,
}

/// The effective limits of a key at one moment (configured, possibly tightened or learned from
/// provider headers). Sent with every state operation so a remote backend needs no configuration
/// of its own and limits can change on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Limits {
    /// Requests bucket.
    pub requests: Option<Rate>,
    /// Tokens bucket.
    pub tokens: Option<Rate>,
    /// Daily requests bucket.
    pub requests_per_day: Option<Rate>,
    /// Daily tokens bucket.
    pub tokens_per_day: Option<Rate>,
    /// In-flight cap.
    pub max_in_flight: Option<u32>,
    /// A bucket created for these limits starts empty rather than full.
    pub start_empty: bool,
    /// Slack for network jitter: admit only once a continuous bucket would still cover the call
    /// had it refilled for `guard` less ([`Quota::guard`](field@Quota::guard)).
    pub guard: Duration,
}

impl Limits {
    /// No limits at all.
    pub const UNLIMITED: Limits = Limits {
        requests: None,
        tokens: None,
        requests_per_day: None,
        tokens_per_day: None,
        max_in_flight: None,
        start_empty: false,
        guard: Duration::ZERO,
    };

    /// True when nothing binds.
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none()
            && self.tokens.is_none()
            && self.requests_per_day.is_none()
            && self.tokens_per_day.is_none()
            && self.max_in_flight.is_none()
    }

    /// The first bucket whose capacity is below `cost`: such a call can never be admitted.
    pub fn exceeded_by(&self, cost: Cost) -> Option<(Dimension, u64, u64)> {
        [
            (self.requests, cost.requests, Dimension::Requests),
            (self.tokens, cost.tokens, Dimension::Tokens),
            (
                self.requests_per_day,
                cost.requests,
                Dimension::RequestsPerDay,
            ),
            (self.tokens_per_day, cost.tokens, Dimension::TokensPerDay),
        ]
        .into_iter()
        .find_map(|(rate, needed, dim)| {
            rate.filter(|r| needed > r.limit)
                .map(|r| (dim, needed, r.limit))
        })
    }
}

/// What one admission takes from a key's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cost {
    /// Requests (one per provider attempt).
    pub requests: u64,
    /// Tokens reserved: estimated prompt tokens + max completion tokens.
    pub tokens: u64,
}

/// A limit dimension of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dimension {
    /// Requests per period.
    Requests,
    /// Tokens per period.
    Tokens,
    /// Requests per day.
    RequestsPerDay,
    /// Tokens per day.
    TokensPerDay,
    /// Calls in flight.
    InFlight,
    /// The key is paused after a 429 until the provider's retry time.
    Paused,
}

impl Dimension {
    /// A short name (`"tokens"`, `"requests per day"`, ...), as used in errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::RequestsPerDay => "requests per day",
            Dimension::TokensPerDay => "tokens per day",
            Dimension::InFlight => "calls in flight",
            Dimension::Paused => "pause",
        }
    }
}

impl Dimension {
    /// The dimension as [`CallError::ExceedsQuota`](agent_core::CallError::ExceedsQuota) reports
    /// it; `None` for the in-flight cap and the pause, which no single call can exceed.
    pub const fn quota_dimension(self) -> Option<agent_core::QuotaDimension> {
        use agent_core::QuotaDimension as Q;
        Some(match self {
            Dimension::Requests => Q::Requests,
            Dimension::Tokens => Q::Tokens,
            Dimension::RequestsPerDay => Q::RequestsPerDay,
            Dimension::TokensPerDay => Q::TokensPerDay,
            Dimension::InFlight | Dimension::Paused => return None,
        })
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheduler's configuration is invalid; returned by `QuotaSchedulerBuilder::build`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaConfigError {
    /// A period is zero, which would make the refill rate infinite.
    #[error("quota '{key}': {what} must be longer than zero")]
    ZeroPeriod {
        /// The quota key (empty for the default quota).
        key: String,
        /// Which period.
        what: &'static str,
    },
    /// A limit is zero, so no call could ever be admitted; leave it unset for "unlimited".
    #[error("quota '{key}': a limit of 0 {dimension} admits nothing; leave it unset for no limit")]
    ZeroLimit {
        /// The quota key (empty for the default quota).
        key: String,
        /// Which limit.
        dimension: &'static str,
    },
    /// The default completion reservation alone is more than a limit can ever admit (a bucket's
    /// capacity, a window's allowance): every call that sets no `max_completion_tokens` would be
    /// refused.
    #[error(
        "quota '{key}': a call reserves at least {cost} tokens (default_max_completion_tokens) but the {limiter} of {dimension} admits at most {capacity}; lower default_max_completion_tokens or raise the limit"
    )]
    CostExceedsCapacity {
        /// The quota key (empty for the default quota).
        key: String,
        /// Which limit.
        dimension: &'static str,
        /// How that limit counts.
        limiter: Limiter,
        /// The smallest reservation of a call.
        cost: u64,
        /// What the limit admits at most.
        capacity: u64,
    },
    /// The shared-state poll interval is zero: a waiting call would ask the backend in a busy loop.
    #[error(
        "the scheduler's poll_interval must be longer than zero with a shared quota state (default 50 ms)"
    )]
    ZeroPollInterval,
    /// The shared-state lease TTL is zero: every in-flight slot would expire as it is granted.
    #[error(
        "the scheduler's lease_ttl must be longer than zero with a shared quota state (default 10 min; renewals keep long calls alive)"
    )]
    ZeroLeaseTtl,
    /// A per-attempt deadline is zero: every attempt would time out at once.
    #[error(
        "the {what} deadline is zero, so every provider attempt would time out; leave the default or set e.g. 60 s"
    )]
    ZeroDeadline {
        /// Which deadline (`attempt`, `idle` or `probe`).
        what: &'static str,
    },
    /// The queue policy cannot order calls.
    #[error("quota '{key}': {reason}")]
    InvalidQueuePolicy {
        /// The quota key (empty for the default quota).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The retry policy is inconsistent.
    #[error("invalid retry policy: {reason}")]
    InvalidRetryPolicy {
        /// What is wrong.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key_and_the_limit() {
        let err = Quota::per_minute()
            .tokens(0)
            .validate_for("openai/gpt")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota 'openai/gpt': a limit of 0 tokens per period admits nothing; leave it unset for no limit"
        );
        let err = Quota::per_period(Duration::ZERO).validate().unwrap_err();
        assert!(matches!(
            err,
            QuotaConfigError::ZeroPeriod { what: "period", .. }
        ));
        assert!(matches!(
            Quota::per_minute().max_in_flight(0).validate(),
            Err(QuotaConfigError::ZeroLimit {
                dimension: "calls in flight",
                ..
            })
        ));
    }

    #[test]
    fn a_token_window_smaller_than_the_default_reservation_is_refused() {
        let window = Limiter::FixedWindow(WindowStart::Clock);
        let err = Quota::per_minute()
            .tokens(100)
            .tokens_limiter(window)
            .validate_for("litellm/gpt")
            .unwrap_err();
        assert_eq!(
            err,
            QuotaConfigError::CostExceedsCapacity {
                key: "litellm/gpt".into(),
                dimension: "tokens per period",
                limiter: window,
                cost: 256,
                capacity: 100,
            }
        );
        assert!(
            err.to_string()
                .contains("lower default_max_completion_tokens")
        );
        // Fits once the reservation does; buckets keep their per-call check.
        let fits = Quota::per_minute()
            .tokens(100)
            .tokens_limiter(window)
            .default_max_completion_tokens(64);
        assert!(fits.validate().is_ok());
        assert!(Quota::per_minute().tokens(100).validate().is_ok());
        // The limiter travels with the limit it counts.
        let limits = Quota::per_minute()
            .requests(9)
            .requests_limiter(Limiter::SlidingWindow)
            .tokens(1_000)
            .limits();
        assert_eq!(
            limits.requests.map(|r| r.limiter),
            Some(Limiter::SlidingWindow)
        );
        assert_eq!(limits.tokens.map(|r| r.limiter), Some(Limiter::Bucket));
    }

    #[test]
    fn exceeded_by_finds_the_first_bucket_too_small() {
        let limits = Quota::per_minute().requests(10).tokens(100).limits();
        assert_eq!(
            limits.exceeded_by(Cost {
                requests: 1,
                tokens: 100
            }),
            None
        );
        assert_eq!(
            limits.exceeded_by(Cost {
                requests: 1,
                tokens: 101
            }),
            Some((Dimension::Tokens, 101, 100))
        );
        assert!(Limits::UNLIMITED.is_unlimited());
    }
}
