//! What providers other than OpenAI say about their rate limits, in their own words: Anthropic's
//! `anthropic-ratelimit-*` headers (RFC 3339 resets, separate input and output token limits),
//! LiteLLM's throttling errors (the limits in the message, a constant `llm_provider-retry-after`
//! that is no hint), and Gemini's `RESOURCE_EXHAUSTED` with its `RetryInfo`.
//!
//! [`headers`](super::headers) calls into this module, so every response still goes through its
//! one parser and one [`classify`](super::headers::classify).

use std::time::{Duration, SystemTime};

use agent_core::{RateLimitKind, RateLimitReading};

/// LiteLLM forwards the upstream's headers with this prefix; on its own 429 it sets
/// `llm_provider-retry-after: 60` whatever the window's state, so it is never read as a hint.
pub const LITELLM_RETRY_AFTER: &str = "llm_provider-retry-after";

/// Parses an RFC 3339 timestamp (Anthropic's `…-reset` headers, `2026-12-06T03:30:00Z`) as the
/// time left until it from `now`; a past or unparsable time is `None`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use agent_runtime::provider::dialects::rfc3339_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
/// assert_eq!(rfc3339_after("2025-12-06T05:46:50Z", now), Some(Duration::from_secs(10)));
/// assert_eq!(rfc3339_after("2025-12-06T05:46:50+00:00", now), Some(Duration::from_secs(10)));
/// assert_eq!(rfc3339_after("yesterday", now), None);
/// ```
pub fn rfc3339_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    // humantime reads UTC only; Anthropic sends `Z`, and `+00:00` is the same instant.
    let utc = match value.strip_suffix("+00:00") {
        Some(stem) => format!("{stem}Z"),
        None => value.to_owned(),
    };
    let at = humantime::parse_rfc3339_weak(&utc).ok()?;
    at.duration_since(now).ok()
}

/// Fills `reading` from Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,
/// output-tokens}-{limit,remaining,reset}` headers, where the OpenAI-style ones are absent.
///
/// `tokens` is Anthropic's most restrictive token limit in effect; input and output limits are
/// kept apart ([`RateLimitReading::limit_input_tokens`], …). Resets are absolute times: the
/// time left is measured on this machine's clock (`now`), so clock skew shifts them.
pub(crate) fn read_anthropic<'a>(
    reading: &mut RateLimitReading,
    header: &impl Fn(&str) -> Option<&'a str>,
    now: SystemTime,
) {
    let count = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
    let reset = |name: &str| header(name).and_then(|v| rfc3339_after(v, now));
    let fill = |limit: &mut Option<u64>,
                remaining: &mut Option<u64>,
                at: &mut Option<Duration>,
                family: &str| {
        let name = |part: &str| format!("anthropic-ratelimit-{family}-{part}");
        if limit.is_none() {
            *limit = count(&name("limit")).filter(|&v| v > 0);
        }
        if remaining.is_none() {
            *remaining = count(&name("remaining"));
        }
        if at.is_none() {
            *at = reset(&name("reset"));
        }
    };
    // Only when the family is there at all: most responses carry none of these headers.
    if header("anthropic-ratelimit-requests-limit").is_none()
        && header("anthropic-ratelimit-tokens-limit").is_none()
        && header("anthropic-ratelimit-input-tokens-limit").is_none()
    {
        return;
    }
    let r = reading;
    fill(
        &mut r.limit_requests,
        &mut r.remaining_requests,
        &mut r.reset_requests,
        "requests",
    );
    fill(
        &mut r.limit_tokens,
        &mut r.remaining_tokens,
        &mut r.reset_tokens,
        "tokens",
    );
    fill(
        &mut r.limit_input_tokens,
        &mut r.remaining_input_tokens,
        &mut r.reset_input_tokens,
        "input-tokens",
    );
    fill(
        &mut r.limit_output_tokens,
        &mut r.remaining_output_tokens,
        &mut r.reset_output_tokens,
        "output-tokens",
    );
}

/// True for a LiteLLM throttling error (`type` `throttling_error`, or its router's "No
/// deployments available"): a gateway's fixed window, whose message states no usable wait (its
/// "Try again in 60 seconds" is the router's constant cool-down).
pub(crate) fn is_litellm_throttle(kind: Option<&str>, message: &str) -> bool {
    kind == Some("throttling_error")
        || message.contains("No deployments available")
        || message.contains("litellm.RateLimitError")
}

/// A number after `name` in LiteLLM's deployment dump (`'rpm_limit': 60`, `"current_rpm": 59`).
fn number_after(message: &str, name: &str) -> Option<u64> {
    let at = message.find(name)? + name.len();
    let rest = message[at..].trim_start_matches(['\'', '"', ':', ' ']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What LiteLLM's 429 message says about the limit it hit: the kind, and the limit its router
/// enforces (`rpm_limit`/`tpm_limit`; the router admits only `limit − 1` per window, as it
/// excludes a deployment once `current + 1 >= limit`).
pub(crate) fn litellm_limit(message: &str) -> Option<(RateLimitKind, Option<u64>)> {
    let rpm = number_after(message, "rpm_limit");
    let tpm = number_after(message, "tpm_limit");
    let current_rpm = number_after(message, "current_rpm");
    match (rpm, tpm) {
        (Some(limit), _) if current_rpm.is_none_or(|c| c + 1 >= limit) => {
            Some((RateLimitKind::Requests, Some(limit)))
        }
        (_, Some(limit)) => Some((RateLimitKind::Tokens, Some(limit))),
        (Some(limit), None) => Some((RateLimitKind::Requests, Some(limit))),
        (None, None) if message.contains("rpm") => Some((RateLimitKind::Requests, None)),
        (None, None) if message.contains("tpm") => Some((RateLimitKind::Tokens, None)),
        (None, None) => None,
    }
}

/// What a Google-style error (`{"error":{"status":"RESOURCE_EXHAUSTED","details":[…]}}`, also
/// wrapped in a one-element array by Gemini's OpenAI-compatible endpoint) says: its `status`, the
/// `RetryInfo`'s `retryDelay` and the violated `quotaId`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GoogleDetails {
    pub(crate) status: Option<String>,
    pub(crate) retry_delay: Option<Duration>,
    pub(crate) quota_id: Option<String>,
}

pub(crate) fn google_details(error: &serde_json::Value) -> GoogleDetails {
    let mut out = GoogleDetails {
        status: error
            .get("status")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        ..GoogleDetails::default()
    };
    let Some(details) = error.get("details").and_then(|d| d.as_array()) else {
        return out;
    };
    for detail in details {
        let kind = detail.get("@type").and_then(|t| t.as_str()).unwrap_or("");
        if kind.ends_with("google.rpc.RetryInfo") {
            // A protobuf Duration in JSON: `"32s"`, `"1.5s"`.
            out.retry_delay = detail
                .get("retryDelay")
                .and_then(|d| d.as_str())
                .and_then(super::headers::parse_go_duration);
        } else if kind.ends_with("google.rpc.QuotaFailure") {
            out.quota_id = detail
                .get("violations")
                .and_then(|v| v.as_array())
                .and_then(|v| v.first())
                .and_then(|v| v.get("quotaId"))
                .and_then(|q| q.as_str())
                .map(str::to_owned);
        }
    }
    out
}

/// The kind a Google `quotaId` names (`GenerateRequestsPerMinutePerProjectPerModel-FreeTier`,
/// `GenerateContentInputTokensPerModelPerMinute-FreeTier`).
pub(crate) fn google_kind(quota_id: &str) -> Option<RateLimitKind> {
    let id = quota_id.to_ascii_lowercase();
    if id.contains("token") {
        Some(RateLimitKind::Tokens)
    } else if id.contains("request") {
        Some(RateLimitKind::Requests)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::headers::{classify, reading_from_headers};
    use agent_core::ModelError;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    /// The LiteLLM 429 of issue 10, with its constant `llm_provider-retry-after: 60` and no
    /// `retry-after` or `x-ratelimit-*`: a request limit of 60 with nothing left, and no wait.
    #[test]
    fn litellm_throttling_429_is_a_request_limit_with_no_hint() {
        let body = br#"{"error":{"message":"litellm.RateLimitError: No deployments available for selected model. Passed model=gpt-4o-mini. Deployments={'model_name': 'gpt-4o-mini', 'litellm_params': {'model': 'openai/gpt-4o-mini', 'rpm': 60}, 'current_rpm': 59, 'rpm_limit': 60}","type":"throttling_error","param":null,"code":"429"}}"#;
        let pairs = [
            (LITELLM_RETRY_AFTER, "60"),
            ("content-type", "application/json"),
        ];
        let reading = reading_from_headers(headers(&pairs));
        assert_eq!(reading.retry_after, None, "the constant 60 is not a hint");
        match classify(429, reading, body) {
            ModelError::RateLimited {
                kind,
                retry_after,
                reading,
                ..
            } => {
                assert_eq!(kind, RateLimitKind::Requests);
                assert_eq!(retry_after, None);
                let reading = reading.unwrap();
                assert_eq!(reading.limit_requests, Some(60));
                assert_eq!(reading.remaining_requests, Some(0));
            }
            other => panic!("{other:?}"),
        }
        // The router's "Try again in 60 seconds" wording is its cool-down constant too.
        let router = br#"{"error":{"message":"No deployments available for selected model, Try again in 60 seconds. Passed model=gpt-4o-mini. pre-call-checks=False, tpm_limit: 1000, current_tpm: 990","type":"None","param":null,"code":"429"}}"#;
        match classify(429, RateLimitReading::default(), router) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Tokens);
                assert_eq!(retry_after, None);
            }
            other => panic!("{other:?}"),
        }
        // LiteLLM's 200s: limit and remaining, no reset.
        let ok = [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "42"),
        ];
        let r = reading_from_headers(headers(&ok));
        assert_eq!(
            (r.limit_requests, r.remaining_requests),
            (Some(60), Some(42))
        );
        assert_eq!(r.reset_requests, None);
    }

    /// Azure: `retry-after-ms` wins over `retry-after`; the 10-second request window is set by
    /// the Azure flavour of the provider (`requests_window`), the body's "retry after" is read.
    #[test]
    fn azure_429_with_retry_after_ms() {
        let pairs = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "1200"),
            ("retry-after", "6"),
            ("retry-after-ms", "5712"),
        ];
        let body = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#;
        match classify(429, reading_from_headers(headers(&pairs)), body) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Requests);
                assert_eq!(retry_after, Some(Duration::from_millis(5712)));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Anthropic: every `anthropic-ratelimit-*` family, RFC 3339 resets, `retry-after`, and the
    /// `rate_limit_error` body about input tokens.
    #[test]
    fn anthropic_headers_and_429() {
        let in_10s = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(10))
            .to_string();
        let in_50s = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(50))
            .to_string();
        let pairs = [
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", in_10s.as_str()),
            ("anthropic-ratelimit-tokens-limit", "60000"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", in_50s.as_str()),
            ("anthropic-ratelimit-input-tokens-limit", "50000"),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            ("anthropic-ratelimit-input-tokens-reset", in_50s.as_str()),
            ("anthropic-ratelimit-output-tokens-limit", "10000"),
            ("anthropic-ratelimit-output-tokens-remaining", "10000"),
            ("anthropic-ratelimit-output-tokens-reset", in_10s.as_str()),
            ("retry-after", "49"),
        ];
        let r = reading_from_headers(headers(&pairs));
        assert_eq!(
            (r.limit_requests, r.remaining_requests),
            (Some(50), Some(49))
        );
        assert_eq!(
            (r.limit_tokens, r.remaining_tokens),
            (Some(60_000), Some(0))
        );
        assert_eq!(r.limit_input_tokens, Some(50_000));
        assert_eq!(r.remaining_input_tokens, Some(0));
        assert_eq!(r.limit_output_tokens, Some(10_000));
        assert_eq!(r.remaining_output_tokens, Some(10_000));
        // Whole seconds on the wire, measured from a slightly later now: within a second.
        let reset = r.reset_input_tokens.unwrap();
        assert!(reset <= Duration::from_secs(50) && reset > Duration::from_secs(48));
        assert!(r.reset_requests.unwrap() <= Duration::from_secs(10));
        assert_eq!(r.retry_after, Some(Duration::from_secs(49)));
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization (a1b2) of 50,000 input tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
        match classify(429, r, body) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Tokens);
                assert_eq!(retry_after, Some(Duration::from_secs(49)));
            }
            other => panic!("{other:?}"),
        }
        // 529 overloaded is not a quota signal.
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            classify(529, RateLimitReading::default(), overloaded),
            ModelError::Transient {
                status: Some(529),
                ..
            }
        ));
    }

    /// Gemini's OpenAI-compatible endpoint: `RESOURCE_EXHAUSTED` in a one-element array, with
    /// `RetryInfo` and the violated quota.
    #[test]
    fn gemini_resource_exhausted_with_retry_info() {
        let body = br#"[{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_input_token_count","quotaId":"GenerateContentInputTokensPerModelPerMinute-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"1000000"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more about Gemini API quotas","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"22s"}]}}]"#;
        match classify(429, RateLimitReading::default(), body) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Tokens);
                assert_eq!(retry_after, Some(Duration::from_secs(22)));
            }
            other => panic!("{other:?}"),
        }
        // The same object without the array, as Google's native endpoint sends it.
        let plain = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#;
        assert_eq!(
            classify(429, RateLimitReading::default(), plain).retry_after(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn litellm_messages_name_their_limit() {
        let issue = "litellm.RateLimitError: No deployments available for selected model. Passed model=gpt-4o-mini. Deployments={'model_name': 'gpt-4o-mini', 'current_rpm': 59, 'rpm_limit': 60, 'tpm_limit': None}";
        assert_eq!(
            litellm_limit(issue),
            Some((RateLimitKind::Requests, Some(60)))
        );
        let tpm = r#"No deployments available for selected model. {"current_tpm": 9000, "tpm_limit": 10000}"#;
        assert_eq!(
            litellm_limit(tpm),
            Some((RateLimitKind::Tokens, Some(10_000)))
        );
        assert!(is_litellm_throttle(Some("throttling_error"), "x"));
        assert!(is_litellm_throttle(None, issue));
        assert!(!is_litellm_throttle(Some("tokens"), "Rate limit reached"));
        assert_eq!(litellm_limit("Rate limit reached"), None);
    }

    #[test]
    fn google_retry_info_and_quota_failure_are_read() {
        let body: serde_json::Value = serde_json::from_str(
            r#"{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"32s"}]}"#,
        )
        .unwrap();
        let d = google_details(&body);
        assert_eq!(d.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(d.retry_delay, Some(Duration::from_secs(32)));
        assert_eq!(
            d.quota_id.as_deref().and_then(google_kind),
            Some(RateLimitKind::Requests)
        );
        assert_eq!(
            google_kind("GenerateContentInputTokensPerModelPerMinute-FreeTier"),
            Some(RateLimitKind::Tokens)
        );
    }
}
