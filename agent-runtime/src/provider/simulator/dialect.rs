//! How the simulated provider phrases its answers — which rate-limit headers a response carries
//! and what a rate-limit 429 looks like — for OpenAI, Azure OpenAI, Anthropic and a LiteLLM
//! proxy. The limits themselves are counted elsewhere (`limiter.rs`); a dialect only words them.
//!
//! The in-process provider reads its own headers back with the HTTP provider's parser, so a
//! dialect the parser does not understand is as opaque in process as it is over HTTP.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::SimConfig;
use crate::provider::headers::{ApiErrorBody, format_go_duration, reading_to_headers};
use agent_core::RateLimitReading;

pub(crate) const ORGANIZATION: &str = "org-turnstile-sim";
pub(crate) const RATE_LIMIT_DOCS: &str =
    "Visit https://platform.openai.com/account/rate-limits to learn more.";
/// What LiteLLM sends as `llm_provider-retry-after` on every "No deployments available" 429,
/// whatever the time to the window boundary.
pub(crate) const LITELLM_RETRY_AFTER: &str = "60";
/// The deployment id the LiteLLM dialect names in its 429 body.
const LITELLM_DEPLOYMENT: &str = "turnstile-sim-deployment";

/// Which provider's headers and 429 bodies a simulated provider sends.
///
/// ```
/// use agent_runtime::provider::{Dialect, SimConfig};
///
/// let config = SimConfig::default().with_rpm(60).with_dialect(Dialect::LiteLlm);
/// assert_eq!(config.dialect, Dialect::LiteLlm);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on every response; a 429 adds
    /// `retry-after` and `retry-after-ms` and says "Limit L, Used U, Requested Q. Please try again
    /// in t." (each part can be switched off with `reset_headers` / `retry_after_headers`).
    #[default]
    OpenAi,
    /// Azure OpenAI: `x-ratelimit-{limit,remaining}-*` without reset headers; a 429 carries
    /// `retry-after` and `retry-after-ms` and Azure's "Please retry after N seconds" body with
    /// code `"429"`.
    Azure,
    /// Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` with RFC 3339
    /// resets; a 429 adds `retry-after` (whole seconds) and a `rate_limit_error` body.
    Anthropic,
    /// A LiteLLM proxy: `x-ratelimit-{limit,remaining}-*` on a 200 and no reset header; a 429
    /// carries no `retry-after` and no `x-ratelimit-*`, only `llm_provider-retry-after: 60`, and
    /// the body `litellm.RateLimitError: No deployments available for selected model. …` with
    /// type `throttling_error` and code `"429"`.
    LiteLlm,
}

/// One dimension's standing, as a response reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) limit: u64,
    pub(crate) used: u64,
    pub(crate) remaining: u64,
    /// Time until nothing is counted.
    pub(crate) reset: Duration,
}

/// Both dimensions' standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Levels {
    pub(crate) requests: Option<Level>,
    pub(crate) tokens: Option<Level>,
}

/// A rate-limit refusal, before it is worded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    /// The request limit refused it (else the token limit).
    pub(crate) requests: bool,
    /// The refusing dimension as the request found it.
    pub(crate) level: Level,
    /// What the request asked of that dimension.
    pub(crate) requested: u64,
    /// Time until the request would fit.
    pub(crate) wait: Duration,
}

/// Response headers, lower-case names.
pub(crate) type Headers = Vec<(&'static str, String)>;

impl Dialect {
    /// The headers of a response that was not a rate-limit 429 (a 200, or another error).
    pub(crate) fn headers(self, config: &SimConfig, levels: &Levels) -> Headers {
        match self {
            Self::OpenAi => reading_to_headers(&openai_reading(config, levels, None)),
            Self::Azure | Self::LiteLlm => reading_to_headers(&counts_only(levels)),
            Self::Anthropic => anthropic_headers(levels, None),
        }
    }

    /// The body and headers of a rate-limit 429.
    pub(crate) fn rate_limited(
        self,
        config: &SimConfig,
        levels: &Levels,
        refusal: &Refusal,
    ) -> (Vec<u8>, Headers) {
        let Refusal {
            requests,
            level,
            requested,
            wait,
        } = *refusal;
        match self {
            Self::OpenAi => {
                let label = if requests {
                    "requests per min (RPM)"
                } else {
                    "tokens per min (TPM)"
                };
                let hint = if config.retry_after_headers {
                    format!(" Please try again in {}.", format_go_duration(wait))
                } else {
                    String::new()
                };
                let body = ApiErrorBody::new(
                    format!(
                        "Rate limit reached for {} in organization {ORGANIZATION} on {label}: \
                         Limit {}, Used {}, Requested {requested}.{hint} {RATE_LIMIT_DOCS}",
                        config.model, level.limit, level.used,
                    ),
                    Some(if requests { "requests" } else { "tokens" }),
                    Some("rate_limit_exceeded"),
                );
                let retry = config.retry_after_headers.then_some(wait);
                let headers = reading_to_headers(&openai_reading(config, levels, retry));
                (body.to_json(), headers)
            }
            Self::Azure => {
                let what = if requests { "call" } else { "token" };
                let seconds = wait.as_millis().div_ceil(1000).max(1);
                let body = ApiErrorBody::new(
                    format!(
                        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API \
                         version 2024-10-21 have exceeded {what} rate limit of your current \
                         OpenAI S0 pricing tier. Please retry after {seconds} seconds. Please go \
                         here: https://aka.ms/oai/quotaincrease if you would like to further \
                         increase the default rate limit."
                    ),
                    None,
                    Some("429"),
                );
                let mut reading = counts_only(levels);
                reading.retry_after = Some(wait);
                (body.to_json(), reading_to_headers(&reading))
            }
            Self::Anthropic => {
                let unit = if requests { "requests" } else { "tokens" };
                let body = json!({
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": format!(
                            "This request would exceed the rate limit for your organization \
                             ({ORGANIZATION}) of {} {unit} per minute. For details, refer to: \
                             https://docs.claude.com/en/api/rate-limits. You can see the response \
                             headers for current usage. Please reduce the prompt length or the \
                             maximum tokens requested, or try again later.",
                            level.limit
                        ),
                    },
                    "request_id": "req_sim",
                });
                let headers = anthropic_headers(levels, Some(wait));
                (body.to_string().into_bytes(), headers)
            }
            Self::LiteLlm => {
                let dimension = |level: Option<Level>| {
                    level.map_or_else(|| "inf".to_owned(), |l| l.limit.to_string())
                };
                let current = |level: Option<Level>| level.map_or(0, |l| l.used);
                let body = ApiErrorBody::new(
                    format!(
                        "litellm.RateLimitError: No deployments available for selected model. \
                         Passed model={model}. Deployments={{'{LITELLM_DEPLOYMENT}': \
                         {{'current_tpm': {}, 'tpm_limit': {}, 'current_rpm': {}, \
                         'rpm_limit': {}}}}}\n\nLiteLLM: model group '{model}' failed with the \
                         error above. No fallback was attempted.",
                        current(levels.tokens),
                        dimension(levels.tokens),
                        current(levels.requests),
                        dimension(levels.requests),
                        model = config.model,
                    ),
                    Some("throttling_error"),
                    Some("429"),
                );
                let headers = vec![("llm_provider-retry-after", LITELLM_RETRY_AFTER.to_owned())];
                (body.to_json(), headers)
            }
        }
    }
}

/// OpenAI's reading of `levels`: resets only with `reset_headers`, the wait only when given.
fn openai_reading(
    config: &SimConfig,
    levels: &Levels,
    retry_after: Option<Duration>,
) -> RateLimitReading {
    let mut reading = counts_only(levels);
    if config.reset_headers {
        reading.reset_requests = levels.requests.map(|l| l.reset);
        reading.reset_tokens = levels.tokens.map(|l| l.reset);
    }
    reading.retry_after = retry_after;
    reading
}

/// Limits and remaining counts, no reset times.
fn counts_only(levels: &Levels) -> RateLimitReading {
    RateLimitReading {
        limit_requests: levels.requests.map(|l| l.limit),
        remaining_requests: levels.requests.map(|l| l.remaining),
        limit_tokens: levels.tokens.map(|l| l.limit),
        remaining_tokens: levels.tokens.map(|l| l.remaining),
        ..RateLimitReading::default()
    }
}

/// Anthropic's headers: resets as RFC 3339 instants on the system clock, rounded up to the
/// second; `retry-after` in whole seconds, rounded up.
fn anthropic_headers(levels: &Levels, retry_after: Option<Duration>) -> Headers {
    let now = SystemTime::now();
    let mut out = Headers::with_capacity(7);
    let dimensions = [
        (
            levels.requests,
            [
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ],
        ),
        (
            levels.tokens,
            [
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ],
        ),
    ];
    for (level, [limit, remaining, reset]) in dimensions {
        let Some(level) = level else { continue };
        out.push((limit, level.limit.to_string()));
        out.push((remaining, level.remaining.to_string()));
        let secs = u64::try_from(level.reset.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
        let at = now.checked_add(Duration::from_secs(secs)).unwrap_or(now);
        out.push((reset, humantime::format_rfc3339_seconds(at).to_string()));
    }
    if let Some(wait) = retry_after {
        out.push((
            "retry-after",
            wait.as_millis().div_ceil(1000).max(1).to_string(),
        ));
    }
    out
}
