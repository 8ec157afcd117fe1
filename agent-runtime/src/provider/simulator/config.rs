//! [`SimConfig`]: what the simulated provider enforces and how it answers — shared by the
//! in-process [`SimulatedProvider`](super::SimulatedProvider) and the mock HTTP server.

use std::sync::Arc;
use std::time::Duration;

use agent_core::CharsPerToken;

use super::{Dialect, LimiterKind, WindowAnchor};

/// How a simulated provider behaves: its limits, its latency, its replies and its faults.
///
/// The defaults model a generous provider (no limits, 20 ms + 1 ms per output token, 24-token
/// replies); set `rpm`/`tpm` to enforce OpenAI-style continuous buckets, and the limiter kinds,
/// the dialect and `off_by_one` to play another provider (fixed or sliding windows, Azure,
/// Anthropic, a LiteLLM proxy — see [`SimConfig::litellm`]).
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::provider::SimConfig;
///
/// let config = SimConfig::default()
///     .with_model("gpt-4o-mini")
///     .with_rpm(60)
///     .with_tpm(10_000)
///     .with_period(Duration::from_secs(6)) // a "minute" lasts six seconds
///     .with_terminate_after(6);
/// assert_eq!(config.rpm, Some(60));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SimConfig {
    /// Model name reported in responses (default `gpt-4o-mini`).
    pub model: String,
    /// Requests per `period`, as a continuously refilling bucket of that capacity. `None`: no limit.
    pub rpm: Option<u64>,
    /// Tokens per `period` (prompt estimate + requested max completion tokens at admission).
    /// `None`: no limit.
    pub tpm: Option<u64>,
    /// How long a rate-limit "minute" lasts (default 60 s; shorten it to compress a benchmark).
    pub period: Duration,
    /// How the request limit is counted (default: a continuous bucket).
    pub request_limiter: LimiterKind,
    /// How the token limit is counted (default: a continuous bucket).
    pub token_limiter: LimiterKind,
    /// The window of the request limit when it is not `period` (Azure counts requests per 10 s
    /// and tokens per minute). `None`: `period`.
    pub request_period: Option<Duration>,
    /// Which provider's headers and 429 bodies to send (default OpenAI's).
    pub dialect: Dialect,
    /// Send `x-ratelimit-reset-*` ([`Dialect::OpenAi`] only; default on).
    pub reset_headers: bool,
    /// Send `retry-after`/`retry-after-ms` and "Please try again in t" on a 429
    /// ([`Dialect::OpenAi`] only; default on).
    pub retry_after_headers: bool,
    /// Admit only `limit − 1` requests per window, as LiteLLM does (it excludes a deployment when
    /// `current + 1 >= rpm`). Headers still report the configured limit. Requests only: LiteLLM's
    /// token check has no such slip. Default off.
    pub off_by_one: bool,
    /// Buckets start empty instead of full, which removes the first-period burst.
    pub start_empty: bool,
    /// Rejected requests still take one request from the request bucket, as OpenAI documents
    /// ("unsuccessful requests contribute to your per-minute limit"). Default off.
    pub charge_rejected: bool,
    /// When a reply ends, the unused part of its completion-token reservation returns to the
    /// token bucket (Anthropic-style). Default off (OpenAI-conservative).
    pub refund_unused: bool,
    /// Completion tokens charged at admission when a request sets no limit (default 16).
    pub default_max_tokens: u32,
    /// Latency before the first token (default 20 ms).
    pub latency: Duration,
    /// Latency per generated token (default 1 ms).
    pub per_token_latency: Duration,
    /// Tokens in a normal reply, before any `max_completion_tokens` cut (default 24).
    pub reply_tokens: u32,
    /// Reply `TERMINATE` once a request carries at least this many messages.
    pub terminate_after: Option<usize>,
    /// Scripted reply texts, in turn order (empty: generated filler). See
    /// [`with_replies`](Self::with_replies).
    pub replies: Vec<Arc<str>>,
    /// Requests served at once; more get `503` at once (local-server emulation). `None`: no cap.
    pub max_concurrency: Option<usize>,
    /// Injected failures.
    pub faults: Faults,
    /// How prompts are counted (default: characters ÷ 4 plus 4 per message, as the scheduler's
    /// default estimator does).
    pub estimator: CharsPerToken,
    /// Whether a stream ends with its usage, as an OpenAI-compatible server does when asked with
    /// `stream_options.include_usage` (default on). Off plays a server or request without it:
    /// the streamed completion carries no usage. (The mock server follows each request's flag.)
    pub stream_usage: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "gpt-4o-mini".to_owned(),
            rpm: None,
            tpm: None,
            period: Duration::from_secs(60),
            request_limiter: LimiterKind::Bucket,
            token_limiter: LimiterKind::Bucket,
            request_period: None,
            dialect: Dialect::OpenAi,
            reset_headers: true,
            retry_after_headers: true,
            off_by_one: false,
            start_empty: false,
            charge_rejected: false,
            refund_unused: false,
            default_max_tokens: 16,
            latency: Duration::from_millis(20),
            per_token_latency: Duration::from_millis(1),
            reply_tokens: 24,
            terminate_after: None,
            replies: Vec::new(),
            max_concurrency: None,
            faults: Faults::default(),
            estimator: CharsPerToken::default(),
            stream_usage: true,
        }
    }
}

/// Deterministic fault injection. Every `*_every` counts requests as they arrive (1-based): with
/// `Some(3)`, requests 3, 6, 9… fail. When several apply to one request, the first listed wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Answer HTTP 500 (after admission, so the request is charged).
    pub fail_every: Option<u64>,
    /// Never answer (the client's timeout fires).
    pub hang_every: Option<u64>,
    /// Answer 200 with a body that is not valid JSON (or an invalid SSE event).
    pub malformed_every: Option<u64>,
    /// Drop the connection halfway through the reply (mid-stream for SSE).
    pub drop_every: Option<u64>,
    /// Once this many tokens have been admitted in total, answer every request with the
    /// non-retryable `insufficient_quota` 429.
    pub insufficient_quota_after_tokens: Option<u64>,
}

impl Faults {
    /// Sets `fail_every`.
    #[must_use]
    pub fn with_fail_every(mut self, n: u64) -> Self {
        self.fail_every = Some(n);
        self
    }

    /// Sets `hang_every`.
    #[must_use]
    pub fn with_hang_every(mut self, n: u64) -> Self {
        self.hang_every = Some(n);
        self
    }

    /// Sets `malformed_every`.
    #[must_use]
    pub fn with_malformed_every(mut self, n: u64) -> Self {
        self.malformed_every = Some(n);
        self
    }

    /// Sets `drop_every`.
    #[must_use]
    pub fn with_drop_every(mut self, n: u64) -> Self {
        self.drop_every = Some(n);
        self
    }

    /// Sets `insufficient_quota_after_tokens`.
    #[must_use]
    pub fn with_insufficient_quota_after_tokens(mut self, tokens: u64) -> Self {
        self.insufficient_quota_after_tokens = Some(tokens);
        self
    }
}

/// A [`SimConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimConfigError {
    /// The period is zero.
    #[error("the rate-limit period must be longer than zero (use e.g. 60 s, or 6 s to compress)")]
    ZeroPeriod,
    /// A limit is zero, so nothing could ever be admitted.
    #[error(
        "the {0} limit is zero, so no request could ever be admitted; leave it unset (None) for no limit"
    )]
    ZeroLimit(&'static str),
    /// `max_concurrency` is zero.
    #[error(
        "max_concurrency is zero, so every request would get 503; leave it unset (None) for no cap"
    )]
    ZeroConcurrency,
    /// A fault fires "every 0 requests".
    #[error(
        "fault `{0}` is set to every 0 requests; use 1 for every request, or leave it unset to disable it"
    )]
    ZeroFaultInterval(&'static str),
    /// A fixed window's phase is not shorter than its period.
    #[error(
        "the {dimension} window phase ({phase:?}) must be shorter than its period ({period:?}); \
         use a phase in [0, period)"
    )]
    PhaseNotWithinPeriod {
        /// `requests` or `tokens`.
        dimension: &'static str,
        /// The phase asked for.
        phase: Duration,
        /// The window's period.
        period: Duration,
    },
    /// A value beyond what the simulator models (a period over a year, a latency over a day, a
    /// reply of more than a million tokens).
    #[error("`{field}` is larger than the simulator supports; use at most {max}")]
    TooLarge {
        /// The [`SimConfig`] field.
        field: &'static str,
        /// The largest accepted value.
        max: &'static str,
    },
}

impl SimConfig {
    /// The longest `period`: a year (a daily limit fits; anything longer is no rate limit). It
    /// keeps the buckets' exact arithmetic far from overflow for any `u64` limit.
    pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);
    /// The longest `latency` and `per_token_latency`: a day (use `Faults::hang_every` for a
    /// server that never answers).
    pub const MAX_LATENCY: Duration = Duration::from_secs(24 * 3600);
    /// The longest normal reply, in tokens (each reply is built in memory).
    pub const MAX_REPLY_TOKENS: u32 = 1_000_000;

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.period.is_zero() {
            return Err(SimConfigError::ZeroPeriod);
        }
        let too_large = |field, max| Err(SimConfigError::TooLarge { field, max });
        if self.period > Self::MAX_PERIOD {
            return too_large("period", "365 days");
        }
        if let Some(period) = self.request_period {
            if period.is_zero() {
                return Err(SimConfigError::ZeroPeriod);
            }
            if period > Self::MAX_PERIOD {
                return too_large("request_period", "365 days");
            }
        }
        let windows = [
            ("requests", self.request_limiter, self.requests_window()),
            ("tokens", self.token_limiter, self.period),
        ];
        for (dimension, kind, period) in windows {
            if let LimiterKind::FixedWindow(WindowAnchor::Phase(phase)) = kind
                && phase >= period
            {
                return Err(SimConfigError::PhaseNotWithinPeriod {
                    dimension,
                    phase,
                    period,
                });
            }
        }
        if self.latency > Self::MAX_LATENCY {
            return too_large("latency", "1 day");
        }
        if self.per_token_latency > Self::MAX_LATENCY {
            return too_large("per_token_latency", "1 day");
        }
        if self.reply_tokens > Self::MAX_REPLY_TOKENS {
            return too_large("reply_tokens", "1000000");
        }
        if self.rpm == Some(0) {
            return Err(SimConfigError::ZeroLimit("requests"));
        }
        if self.tpm == Some(0) {
            return Err(SimConfigError::ZeroLimit("tokens"));
        }
        if self.max_concurrency == Some(0) {
            return Err(SimConfigError::ZeroConcurrency);
        }
        let faults = [
            ("fail_every", self.faults.fail_every),
            ("hang_every", self.faults.hang_every),
            ("malformed_every", self.faults.malformed_every),
            ("drop_every", self.faults.drop_every),
        ];
        if let Some((name, _)) = faults.iter().find(|(_, n)| *n == Some(0)) {
            return Err(SimConfigError::ZeroFaultInterval(name));
        }
        Ok(())
    }

    /// The period the request limit is counted over: `request_period`, else `period`.
    pub fn requests_window(&self) -> Duration {
        self.request_period.unwrap_or(self.period)
    }

    /// Plays a LiteLLM proxy in front of a deployment with `rpm`/`tpm`: fixed windows on the UTC
    /// calendar minute (of `period`) for both limits, `limit − 1` requests per window, and
    /// LiteLLM's headers and 429s ([`Dialect::LiteLlm`]). Set a [`WindowAnchor::Phase`] afterwards
    /// for a run that must start at a known phase.
    ///
    /// ```
    /// use agent_runtime::provider::{Dialect, SimConfig};
    ///
    /// let config = SimConfig::default().with_rpm(60).litellm();
    /// assert!(config.off_by_one);
    /// assert_eq!(config.dialect, Dialect::LiteLlm);
    /// ```
    #[must_use]
    pub fn litellm(self) -> Self {
        self.with_limiter(LimiterKind::FixedWindow(WindowAnchor::Clock))
            .with_dialect(Dialect::LiteLlm)
            .with_off_by_one(true)
    }

    /// Counts both limits with `kind`.
    #[must_use]
    pub fn with_limiter(mut self, kind: LimiterKind) -> Self {
        self.request_limiter = kind;
        self.token_limiter = kind;
        self
    }

    /// Counts the request limit with `kind`.
    #[must_use]
    pub fn with_request_limiter(mut self, kind: LimiterKind) -> Self {
        self.request_limiter = kind;
        self
    }

    /// Counts the token limit with `kind`.
    #[must_use]
    pub fn with_token_limiter(mut self, kind: LimiterKind) -> Self {
        self.token_limiter = kind;
        self
    }

    /// Counts the request limit over `period` instead of the common period (Azure: 10 s).
    #[must_use]
    pub fn with_request_period(mut self, period: Duration) -> Self {
        self.request_period = Some(period);
        self
    }

    /// Sets which provider's headers and 429 bodies to send.
    #[must_use]
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Sends (or not) `x-ratelimit-reset-*` in the OpenAI dialect.
    #[must_use]
    pub fn with_reset_headers(mut self, send: bool) -> Self {
        self.reset_headers = send;
        self
    }

    /// Sends (or not) `retry-after`, `retry-after-ms` and "Please try again in t" on a 429 in the
    /// OpenAI dialect.
    #[must_use]
    pub fn with_retry_after_headers(mut self, send: bool) -> Self {
        self.retry_after_headers = send;
        self
    }

    /// Admits only `limit − 1` requests per window (LiteLLM's off-by-one).
    #[must_use]
    pub fn with_off_by_one(mut self, off_by_one: bool) -> Self {
        self.off_by_one = off_by_one;
        self
    }

    /// Sets the model name.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the request limit per period.
    #[must_use]
    pub fn with_rpm(mut self, rpm: u64) -> Self {
        self.rpm = Some(rpm);
        self
    }

    /// Sets the token limit per period.
    #[must_use]
    pub fn with_tpm(mut self, tpm: u64) -> Self {
        self.tpm = Some(tpm);
        self
    }

    /// Sets the length of a rate-limit period.
    #[must_use]
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Starts with empty buckets.
    #[must_use]
    pub fn with_start_empty(mut self, start_empty: bool) -> Self {
        self.start_empty = start_empty;
        self
    }

    /// Charges rejected requests to the request bucket.
    #[must_use]
    pub fn with_charge_rejected(mut self, charge: bool) -> Self {
        self.charge_rejected = charge;
        self
    }

    /// Refunds unused completion tokens when a reply ends.
    #[must_use]
    pub fn with_refund_unused(mut self, refund: bool) -> Self {
        self.refund_unused = refund;
        self
    }

    /// Sets the completion tokens charged when a request sets no limit.
    #[must_use]
    pub fn with_default_max_tokens(mut self, tokens: u32) -> Self {
        self.default_max_tokens = tokens;
        self
    }

    /// Sets the latency before the first token and per generated token.
    #[must_use]
    pub fn with_latency(mut self, first_token: Duration, per_token: Duration) -> Self {
        self.latency = first_token;
        self.per_token_latency = per_token;
        self
    }

    /// Sets the length of a normal reply in tokens.
    #[must_use]
    pub fn with_reply_tokens(mut self, tokens: u32) -> Self {
        self.reply_tokens = tokens;
        self
    }

    /// Replies `TERMINATE` once a request carries at least `messages` messages.
    #[must_use]
    pub fn with_terminate_after(mut self, messages: usize) -> Self {
        self.terminate_after = Some(messages);
        self
    }

    /// Scripts the text of normal replies: a request whose thread holds `n` messages besides
    /// system messages gets `replies[(n - 1) % len]` — the first turn of a chat (the task alone)
    /// gets the first text, the next turn the second, and so on, cycling. Deterministic like every
    /// simulator reply; usage counts the text's tokens, and `max_completion_tokens` still cuts it.
    /// Tool calls, tool results and `terminate_after` keep their rules.
    ///
    /// ```
    /// use agent_runtime::provider::{SimConfig, SimulatedProvider};
    /// use agent_runtime::{ChatModel, ChatRequest, Message};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// let sim = SimulatedProvider::new(SimConfig::default().with_replies(["Draft one.", "Looks good."]))?;
    /// let first = sim.complete(ChatRequest::new(vec![Message::user("Write.")])).await?;
    /// assert_eq!(first.message.text(), Some("Draft one."));
    /// let thread = vec![Message::user("Write."), Message::assistant("writer", "Draft one.")];
    /// let second = sim.complete(ChatRequest::new(thread)).await?;
    /// assert_eq!(second.message.text(), Some("Looks good."));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    #[must_use]
    pub fn with_replies<S: Into<Arc<str>>>(mut self, replies: impl IntoIterator<Item = S>) -> Self {
        self.replies = replies.into_iter().map(Into::into).collect();
        self
    }

    /// Caps concurrent requests; the rest get 503.
    #[must_use]
    pub fn with_max_concurrency(mut self, slots: usize) -> Self {
        self.max_concurrency = Some(slots);
        self
    }

    /// Sets the injected faults.
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Sets whether streams end with their usage (`stream_options.include_usage`).
    #[must_use]
    pub fn with_stream_usage(mut self, include: bool) -> Self {
        self.stream_usage = include;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_configs_are_refused() {
        assert!(SimConfig::default().validate().is_ok());
        let zero = SimConfig::default().with_period(Duration::ZERO);
        assert_eq!(zero.validate(), Err(SimConfigError::ZeroPeriod));
        assert_eq!(
            SimConfig::default().with_rpm(0).validate(),
            Err(SimConfigError::ZeroLimit("requests"))
        );
        assert_eq!(
            SimConfig::default().with_max_concurrency(0).validate(),
            Err(SimConfigError::ZeroConcurrency)
        );
        let faults = Faults::default().with_drop_every(0);
        assert_eq!(
            SimConfig::default().with_faults(faults).validate(),
            Err(SimConfigError::ZeroFaultInterval("drop_every"))
        );
    }
}
