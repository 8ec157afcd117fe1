//! What providers say about their rate limits: the one parser (and the one formatter) of
//! `x-ratelimit-*` / `retry-after` headers, Go duration strings, and OpenAI / Azure error bodies.
//!
//! Everything that reads or writes these formats goes through this module: the HTTP provider
//! parses with it, the mock server formats with it, and the simulator classifies its rejections
//! with the same [`classify`] the HTTP provider applies to a real response — so a simulated 429 and
//! a mock-server 429 become the same [`ModelError`]. The scheduler never sees headers, only the
//! [`RateLimitReading`] built here.
//!
//! Hand-written on purpose: no crate parses Go `time.Duration` strings (`6m0s`, `1.5s`, `12ms`)
//! together with OpenAI's "Please try again in 1.574s" / Azure's "Please retry after 6 seconds"
//! message text, and both must round-trip exactly with the mock's formatter.

use std::time::{Duration, SystemTime};

use agent_core::{ModelError, RateLimitKind, RateLimitReading};
use serde::{Deserialize, Serialize};

/// `x-ratelimit-limit-requests`.
pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
/// `x-ratelimit-limit-tokens`.
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
/// `x-ratelimit-remaining-requests`.
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
/// `x-ratelimit-remaining-tokens`.
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
/// `x-ratelimit-reset-requests` (a Go duration).
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
/// `x-ratelimit-reset-tokens` (a Go duration).
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";
/// `retry-after` (seconds, or an HTTP date).
pub const RETRY_AFTER: &str = "retry-after";
/// `retry-after-ms` (milliseconds, possibly fractional).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Each rate-limit header with its `_usage_based` twin (OpenAI sent `x-ratelimit-*_usage_based`
/// in 2023–2025; it is read when the plain name is absent), spelled out so that reading a
/// response builds no strings: most responses lack most of these headers, and every one is read.
const USAGE_BASED: [(&str, &str); 6] = [
    (LIMIT_REQUESTS, "x-ratelimit-limit-requests_usage_based"),
    (LIMIT_TOKENS, "x-ratelimit-limit-tokens_usage_based"),
    (
        REMAINING_REQUESTS,
        "x-ratelimit-remaining-requests_usage_based",
    ),
    (REMAINING_TOKENS, "x-ratelimit-remaining-tokens_usage_based"),
    (RESET_REQUESTS, "x-ratelimit-reset-requests_usage_based"),
    (RESET_TOKENS, "x-ratelimit-reset-tokens_usage_based"),
];

/// The `_usage_based` twin of a rate-limit header name.
fn usage_based(name: &str) -> Option<&'static str> {
    USAGE_BASED
        .iter()
        .find(|(plain, _)| *plain == name)
        .map(|(_, twin)| *twin)
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a Go `time.Duration` string as OpenAI sends in `x-ratelimit-reset-*`: one or more
/// `<number><unit>` parts with units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns` (`6m0s`, `1.5s`, `12ms`).
///
/// Returns `None` for anything else, including negative durations and overflow, so a garbage
/// header is ignored rather than trusted.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::provider::headers::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
/// assert_eq!(parse_go_duration("-1s"), None);
/// ```
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(after_dot) => {
                let end = after_dot
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_dot.len());
                after_dot.split_at(end)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            _ => return None,
        };
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        total = total.checked_add(whole.checked_mul(unit_nanos)?)?;
        // Like Go, digits beyond nanosecond precision are truncated; 20 digits keep the
        // arithmetic inside u128 for the largest unit.
        let mut frac_value: u128 = 0;
        let mut scale: u128 = 1;
        for digit in frac.bytes().take(20) {
            frac_value = frac_value * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        total = total.checked_add(frac_value * unit_nanos / scale)?;
        rest = tail;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    // The remainder is below one second, so it fits in u32.
    let nanos = (total % NANOS_PER_SEC) as u32;
    Some(Duration::new(secs, nanos))
}

/// Formats a duration exactly as Go's `time.Duration.String()` does (`0s`, `12ms`, `1.5s`,
/// `6m0s`, `1h2m3.5s`, `1.5µs`), the format of OpenAI's `x-ratelimit-reset-*` headers.
///
/// [`parse_go_duration`] reads every output back to the same duration.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::provider::headers::format_go_duration;
///
/// assert_eq!(format_go_duration(Duration::from_secs(360)), "6m0s");
/// assert_eq!(format_go_duration(Duration::from_millis(1574)), "1.574s");
/// assert_eq!(format_go_duration(Duration::from_millis(12)), "12ms");
/// assert_eq!(format_go_duration(Duration::ZERO), "0s");
/// ```
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fixed_point(nanos, 3));
    }
    if nanos < NANOS_PER_SEC {
        return format!("{}ms", fixed_point(nanos, 6));
    }
    let secs_total = duration.as_secs();
    let sub_nanos = u128::from(duration.subsec_nanos());
    let hours = secs_total / 3_600;
    let minutes = (secs_total % 3_600) / 60;
    let secs = u128::from(secs_total % 60);
    let seconds = fixed_point(secs * NANOS_PER_SEC + sub_nanos, 9);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / 10^digits` printed with the fraction's trailing zeros removed (Go's `fmtFrac`).
fn fixed_point(value: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Reads the retry hint of a response: `retry-after-ms` (float milliseconds) first, then
/// `retry-after` as seconds (integer or float) or an HTTP date relative to `now` — the order the
/// official OpenAI SDK uses. Negative, unparsable or past values are ignored; hints above one day
/// are capped at one day.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use agent_runtime::provider::headers::parse_retry_after;
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(Some("1574"), Some("2"), now), Some(Duration::from_millis(1574)));
/// assert_eq!(parse_retry_after(None, Some("6"), now), Some(Duration::from_secs(6)));
/// assert_eq!(parse_retry_after(Some("-1"), Some("garbage"), now), None);
/// ```
pub fn parse_retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    parse_retry_after_unclamped(retry_after_ms, retry_after, now).map(|d| d.min(MAX_RETRY_AFTER))
}

/// The longest retry hint taken from a provider. A hint is a hint: no provider means "come back
/// in 300 billion years", and an unbounded value would overflow the scheduler's clock arithmetic.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

fn parse_retry_after_unclamped(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| non_negative_f64(v.trim())) {
        return Duration::try_from_secs_f64(ms / 1_000.0).ok();
    }
    let value = retry_after?.trim();
    if let Some(secs) = non_negative_f64(value) {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok()
}

fn non_negative_f64(text: &str) -> Option<f64> {
    let value: f64 = text.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// Builds a [`RateLimitReading`] from response headers, looked up by lower-case name through
/// `header` (so it works with any header map). Missing, negative or unparsable values stay
/// `None`; a limit of `0` is treated as missing (Azure has been seen sending `0`/`-1`).
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use agent_runtime::provider::headers::reading_from_headers;
///
/// let headers = HashMap::from([
///     ("x-ratelimit-limit-tokens", "160000"),
///     ("x-ratelimit-remaining-tokens", "159976"),
///     ("x-ratelimit-reset-tokens", "9ms"),
/// ]);
/// let reading = reading_from_headers(|name| headers.get(name).copied());
/// assert_eq!(reading.limit_tokens, Some(160_000));
/// assert_eq!(reading.remaining_tokens, Some(159_976));
/// assert_eq!(reading.reset_tokens, Some(Duration::from_millis(9)));
/// assert_eq!(reading.limit_requests, None);
/// ```
pub fn reading_from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> RateLimitReading {
    let lookup = |name: &str| header(name).or_else(|| usage_based(name).and_then(&header));
    let count = |name: &str| lookup(name).and_then(|v| v.trim().parse::<u64>().ok());
    let limit = |name: &str| count(name).filter(|&v| v > 0);
    let reset = |name: &str| lookup(name).and_then(parse_go_duration);
    let now = SystemTime::now();
    let mut reading = RateLimitReading {
        limit_requests: limit(LIMIT_REQUESTS),
        remaining_requests: count(REMAINING_REQUESTS),
        reset_requests: reset(RESET_REQUESTS),
        limit_tokens: limit(LIMIT_TOKENS),
        remaining_tokens: count(REMAINING_TOKENS),
        reset_tokens: reset(RESET_TOKENS),
        // The headers do not say; the provider that knows its endpoint sets them.
        requests_window: None,
        tokens_window: None,
        // `llm_provider-retry-after` is deliberately not read: LiteLLM sets it to a constant.
        retry_after: parse_retry_after(header(RETRY_AFTER_MS), header(RETRY_AFTER), now),
        ..RateLimitReading::default()
    };
    super::dialects::read_anthropic(&mut reading, &header, now);
    reading
}

/// Reads a [`RateLimitReading`] from an `http::HeaderMap` (non-UTF-8 values are ignored).
#[cfg(any(feature = "openai", feature = "mock-server"))]
pub fn reading_from_header_map(headers: &http::HeaderMap) -> RateLimitReading {
    reading_from_headers(|name| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    })
}

/// The headers that carry `reading`, as OpenAI formats them: counts as integers, resets as Go
/// durations, and when `retry_after` is set both `retry-after` (whole seconds, rounded up) and
/// `retry-after-ms`. [`reading_from_headers`] reads them back to the same reading (exactly, for
/// whole-millisecond `retry_after`).
///
/// ```
/// use std::time::Duration;
/// use agent_core::RateLimitReading;
/// use agent_runtime::provider::headers::{reading_from_headers, reading_to_headers};
///
/// let reading = RateLimitReading {
///     limit_requests: Some(60),
///     remaining_requests: Some(0),
///     reset_requests: Some(Duration::from_secs(1)),
///     retry_after: Some(Duration::from_millis(1574)),
///     ..RateLimitReading::default()
/// };
/// let headers = reading_to_headers(&reading);
/// assert!(headers.contains(&("retry-after", "2".to_owned())));
/// let back = reading_from_headers(|name| {
///     headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
/// });
/// assert_eq!(back, reading);
/// ```
pub fn reading_to_headers(reading: &RateLimitReading) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(8);
    let mut push_count = |name, value: Option<u64>| {
        if let Some(v) = value {
            out.push((name, v.to_string()));
        }
    };
    push_count(LIMIT_REQUESTS, reading.limit_requests);
    push_count(LIMIT_TOKENS, reading.limit_tokens);
    push_count(REMAINING_REQUESTS, reading.remaining_requests);
    push_count(REMAINING_TOKENS, reading.remaining_tokens);
    if let Some(d) = reading.reset_requests {
        out.push((RESET_REQUESTS, format_go_duration(d)));
    }
    if let Some(d) = reading.reset_tokens {
        out.push((RESET_TOKENS, format_go_duration(d)));
    }
    if let Some(d) = reading.retry_after {
        let nanos = d.as_nanos();
        out.push((RETRY_AFTER, nanos.div_ceil(NANOS_PER_SEC).to_string()));
        let ms = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000).to_string()
        } else {
            fixed_point(nanos, 6)
        };
        out.push((RETRY_AFTER_MS, ms));
    }
    out
}

/// The `error` object of an OpenAI-shaped error body:
/// `{"error":{"message":…,"type":…,"param":…,"code":…}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// The human-readable message (OpenAI puts "Please try again in 1.574s" here).
    #[serde(default)]
    pub message: String,
    /// `type`: `tokens`, `requests`, `insufficient_quota`, `server_error`, … (absent on Azure).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `param`, when the error is about one request field.
    #[serde(default)]
    pub param: Option<String>,
    /// `code`: `rate_limit_exceeded`, `insufficient_quota`, or Azure's `"429"`.
    #[serde(default)]
    pub code: Option<String>,
    /// Google's `status` (`RESOURCE_EXHAUSTED` from Gemini's OpenAI-compatible endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Google's `RetryInfo.retryDelay`: how long to wait, when the body says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<Duration>,
    /// Google's violated `QuotaFailure` `quotaId` (names the limit: requests or tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
}

impl ApiErrorBody {
    /// An error object with the given message, type and code.
    pub fn new(message: impl Into<String>, kind: Option<&str>, code: Option<&str>) -> Self {
        Self {
            message: message.into(),
            kind: kind.map(str::to_owned),
            param: None,
            code: code.map(str::to_owned),
            ..Self::default()
        }
    }

    /// The full body `{"error": {…}}` as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let value = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        value.to_string().into_bytes()
    }

    /// Reads an error body. Lenient: a numeric `code` becomes text, a body that is not the
    /// expected JSON becomes a message holding (the start of) the raw text.
    pub fn parse(body: &[u8]) -> Self {
        let text_of = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            // Gemini's OpenAI-compatible endpoint wraps its error in a one-element array.
            let value = match value.as_array().and_then(|a| a.first()) {
                Some(first) => first,
                None => &value,
            };
            let error = value.get("error").unwrap_or(value);
            if let Some(object) = error.as_object() {
                let field = |name: &str| object.get(name).and_then(text_of);
                let google = super::dialects::google_details(error);
                return Self {
                    message: field("message").unwrap_or_default(),
                    kind: field("type"),
                    param: field("param"),
                    code: field("code"),
                    status: google.status,
                    retry_delay: google.retry_delay,
                    quota_id: google.quota_id,
                };
            }
            if let Some(message) = text_of(error) {
                return Self::new(message, None, None);
            }
        }
        let text = String::from_utf8_lossy(body);
        let mut message: String = text.trim().chars().take(300).collect();
        if message.is_empty() {
            message = "(empty body)".to_owned();
        }
        Self::new(message, None, None)
    }

    fn is_quota_exhausted(&self) -> bool {
        let is = |v: &Option<String>, want: &str| v.as_deref() == Some(want);
        is(&self.kind, "insufficient_quota")
            || is(&self.code, "insufficient_quota")
            || is(&self.code, "credit_balance_exhausted")
    }

    fn is_too_large(&self) -> bool {
        self.message
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("request too large")
            || self.code.as_deref() == Some("context_length_exceeded")
    }

    fn rate_limit_kind(&self) -> RateLimitKind {
        if let Some(kind) = self
            .quota_id
            .as_deref()
            .and_then(super::dialects::google_kind)
        {
            return kind;
        }
        match self.kind.as_deref() {
            Some(k) if k.starts_with("tokens") => return RateLimitKind::Tokens,
            Some(k) if k.starts_with("requests") => return RateLimitKind::Requests,
            _ => {}
        }
        let message = self.message.to_ascii_lowercase();
        const TOKENS: [&str; 5] = [
            "tokens per min",
            "tokens per day",
            "(tpm)",
            "token rate limit",
            "tokens/min",
        ];
        const REQUESTS: [&str; 6] = [
            "requests per min",
            "requests per day",
            "(rpm)",
            "call rate limit",
            "request rate limit",
            "request/min",
        ];
        if TOKENS.iter().any(|p| message.contains(p)) {
            RateLimitKind::Tokens
        } else if REQUESTS.iter().any(|p| message.contains(p)) {
            RateLimitKind::Requests
        } else {
            RateLimitKind::Unknown
        }
    }
}

/// The wait a provider's error message asks for: OpenAI's "Please try again in 1.574s" (a Go
/// duration) or Azure's "Please retry after 6 seconds".
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::provider::headers::try_again_in;
///
/// assert_eq!(try_again_in("… Please try again in 644ms. Visit …"), Some(Duration::from_millis(644)));
/// assert_eq!(try_again_in("… Please retry after 6 seconds. …"), Some(Duration::from_secs(6)));
/// assert_eq!(try_again_in("no hint here"), None);
/// ```
pub fn try_again_in(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    ["try again in ", "retry after ", "retry in "]
        .iter()
        .find_map(|marker| {
            let start = lower.find(marker)? + marker.len();
            wait_at(&lower[start..])
        })
}

fn wait_at(text: &str) -> Option<Duration> {
    let mut words = text.split_whitespace();
    let first = words.next()?.trim_end_matches(['.', ',', ';', ')']);
    if let Some(d) = parse_go_duration(first) {
        return Some(d);
    }
    let amount = non_negative_f64(first)?;
    let unit = words.next().unwrap_or("seconds");
    let secs = if unit.starts_with("ms") || unit.starts_with("millisecond") {
        amount / 1_000.0
    } else if unit.starts_with("minute") {
        amount * 60.0
    } else if unit.starts_with("hour") {
        amount * 3_600.0
    } else {
        amount
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Turns an unsuccessful HTTP response (status, headers already read into `reading`, raw body)
/// into the [`ModelError`] callers branch on.
///
/// - 429 with `insufficient_quota` → [`ModelError::QuotaExhausted`] (never retryable);
/// - 429 "Request too large", 413, or `context_length_exceeded` → [`ModelError::RequestTooLarge`];
/// - other 429 → [`ModelError::RateLimited`] with the kind from `type` or the message, and
///   `retry_after` from `retry-after-ms`, else `retry-after`, else the message's "try again in";
/// - 408, 409, 425 and 5xx (including 503 "busy" and 529 "overloaded") → [`ModelError::Transient`];
/// - any other status → [`ModelError::InvalidRequest`].
///
/// ```
/// use std::time::Duration;
/// use agent_core::{ModelError, RateLimitKind, RateLimitReading};
/// use agent_runtime::provider::headers::classify;
///
/// let body = br#"{"error":{"message":"Rate limit reached for o4-mini in organization org-x on tokens per min (TPM): Limit 200000, Used 162960, Requested 42288. Please try again in 1.574s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
/// match classify(429, RateLimitReading::default(), body) {
///     ModelError::RateLimited { kind, retry_after, .. } => {
///         assert_eq!(kind, RateLimitKind::Tokens);
///         assert_eq!(retry_after, Some(Duration::from_millis(1574)));
///     }
///     other => panic!("{other}"),
/// }
/// ```
pub fn classify(status: u16, reading: RateLimitReading, body: &[u8]) -> ModelError {
    classify_body(status, reading, ApiErrorBody::parse(body))
}

/// [`classify`] for a body that is already parsed (the simulator's path).
pub fn classify_body(status: u16, mut reading: RateLimitReading, body: ApiErrorBody) -> ModelError {
    let litellm = super::dialects::is_litellm_throttle(body.kind.as_deref(), &body.message);
    if reading.retry_after.is_none() {
        // LiteLLM's "Try again in 60 seconds" is its router's constant cool-down, not the time
        // to its window's boundary: no hint at all is better than a wrong one.
        reading.retry_after = body
            .retry_delay
            .or_else(|| (!litellm).then(|| try_again_in(&body.message)).flatten());
    }
    let mut kind = body.rate_limit_kind();
    if litellm && let Some((named, limit)) = super::dialects::litellm_limit(&body.message) {
        kind = named;
        // The limit the router enforces, and none of it left.
        let (l, r) = match named {
            RateLimitKind::Requests => {
                (&mut reading.limit_requests, &mut reading.remaining_requests)
            }
            _ => (&mut reading.limit_tokens, &mut reading.remaining_tokens),
        };
        if l.is_none() {
            *l = limit;
        }
        *r = Some(0);
    }
    let retry_after = reading.retry_after;
    let message = if body.message.is_empty() {
        format!("HTTP {status} with no message")
    } else {
        body.message.clone()
    };
    match status {
        429 if body.is_quota_exhausted() => ModelError::QuotaExhausted { message },
        413 => ModelError::RequestTooLarge { message },
        429 if body.is_too_large() => ModelError::RequestTooLarge { message },
        429 => ModelError::RateLimited {
            kind,
            retry_after,
            reading: (!reading.is_empty()).then(|| Box::new(reading)),
            message,
        },
        400 if body.is_too_large() => ModelError::RequestTooLarge { message },
        408 | 409 | 425 | 500..=599 => ModelError::Transient {
            status: Some(status),
            retry_after,
            message,
        },
        _ => ModelError::InvalidRequest {
            status: Some(status),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn absurd_retry_hints_are_clamped_to_a_day() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            parse_retry_after(None, Some("1e19"), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after(Some("1e22"), None, now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after(None, Some("86400"), now),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn go_durations_from_the_rate_limit_guide_and_issues_parse() {
        // rate-limits.md §1.1.4 samples, plus the composite forms Go produces.
        let cases = [
            ("1s", Duration::from_secs(1)),
            ("6m0s", Duration::from_secs(360)),
            ("12ms", ms(12)),
            ("9ms", ms(9)),
            ("17ms", ms(17)),
            ("1.5s", ms(1500)),
            ("1.574s", ms(1574)),
            ("1h2m3.5s", Duration::from_millis(3_723_500)),
            ("1.5µs", Duration::from_nanos(1500)),
            ("1.5μs", Duration::from_nanos(1500)),
            ("2us", Duration::from_nanos(2000)),
            ("250ns", Duration::from_nanos(250)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            (".5s", ms(500)),
            ("1.0000000019s", Duration::new(1, 1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), Some(want), "{text}");
        }
    }

    #[test]
    fn garbage_and_negative_durations_are_ignored() {
        for text in [
            "",
            "-1s",
            "-1",
            "1",
            "s",
            "1x",
            "abc",
            "1.s.",
            "1s-",
            "..5s",
            "5 s",
            "1e3s",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse_go_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn formatting_matches_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1500), "1.5µs"),
            (ms(12), "12ms"),
            (Duration::from_micros(12_500), "12.5ms"),
            (Duration::from_secs(1), "1s"),
            (ms(1574), "1.574s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
            (Duration::new(1, 1), "1.000000001s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(d), want, "{d:?}");
        }
    }

    proptest! {
        #[test]
        fn go_duration_round_trips(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let text = format_go_duration(d);
            prop_assert_eq!(parse_go_duration(&text), Some(d), "{}", text);
        }

        #[test]
        fn small_go_durations_round_trip(nanos in 0u64..2_000_000_000) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_go_duration(&format_go_duration(d)), Some(d));
        }

        #[test]
        fn parsing_never_panics(text in ".{0,40}") {
            let _ = parse_go_duration(&text);
            let _ = try_again_in(&text);
            let _ = ApiErrorBody::parse(text.as_bytes());
        }

        #[test]
        fn readings_round_trip_through_headers(
            limit in proptest::option::of(1u64..10_000_000),
            remaining in proptest::option::of(0u64..10_000_000),
            reset_ms in proptest::option::of(0u64..100_000_000),
            retry_ms in proptest::option::of(0u64..1_000_000),
        ) {
            let reading = RateLimitReading {
                limit_requests: limit,
                remaining_requests: remaining,
                reset_requests: reset_ms.map(Duration::from_millis),
                limit_tokens: limit.map(|l| l * 100),
                remaining_tokens: remaining,
                reset_tokens: reset_ms.map(|m| Duration::from_millis(m / 3)),
                retry_after: retry_ms.map(Duration::from_millis),
                ..RateLimitReading::default()
            };
            let headers = reading_to_headers(&reading);
            let back = reading_from_headers(|name| {
                headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
            });
            prop_assert_eq!(back, reading);
        }
    }

    #[test]
    fn retry_after_prefers_ms_then_seconds_then_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(
            parse_retry_after(Some("1574.5"), Some("9"), now),
            Some(Duration::from_micros(1_574_500))
        );
        assert_eq!(
            parse_retry_after(Some("garbage"), Some("9"), now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(parse_retry_after(None, Some("1.5"), now), Some(ms(1500)));
        assert_eq!(
            parse_retry_after(None, Some("Sun, 06 Nov 1994 08:49:47 GMT"), now),
            Some(Duration::from_secs(10))
        );
        // In the past, negative or nonsense: ignored.
        assert_eq!(
            parse_retry_after(None, Some("Sun, 06 Nov 1994 08:49:27 GMT"), now),
            None
        );
        assert_eq!(parse_retry_after(Some("-5"), Some("-1"), now), None);
        assert_eq!(parse_retry_after(Some("NaN"), Some("inf"), now), None);
        assert_eq!(parse_retry_after(None, None, now), None);
    }

    #[test]
    fn headers_from_the_guide_and_community_threads() {
        // §1.1.3 success headers and §1.1.4's guide table (including the inconsistent `6m0s`).
        let sample = [
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-reset-requests", "12ms"),
            ("x-ratelimit-limit-tokens", "160000"),
            ("x-ratelimit-remaining-tokens", "159976"),
            ("x-ratelimit-reset-tokens", "9ms"),
        ];
        let r = reading_from_headers(|n| sample.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(
            r,
            RateLimitReading {
                limit_requests: Some(5000),
                remaining_requests: Some(4999),
                reset_requests: Some(ms(12)),
                limit_tokens: Some(160_000),
                remaining_tokens: Some(159_976),
                reset_tokens: Some(ms(9)),
                retry_after: None,
                ..RateLimitReading::default()
            }
        );
        let guide = [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ];
        let r = reading_from_headers(|n| guide.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(r.reset_tokens, Some(Duration::from_secs(360)));
        assert_eq!(r.remaining_requests, Some(59));
    }

    #[test]
    fn every_rate_limit_header_has_its_usage_based_twin() {
        let plain = [
            LIMIT_REQUESTS,
            LIMIT_TOKENS,
            REMAINING_REQUESTS,
            REMAINING_TOKENS,
            RESET_REQUESTS,
            RESET_TOKENS,
        ];
        for name in plain {
            let twin: &'static str = usage_based(name).unwrap();
            assert_eq!(twin, format!("{name}_usage_based"));
            // Each twin is read when the plain header is absent.
            let value = if name.contains("reset") { "2s" } else { "7" };
            let r = reading_from_headers(|n| (n == twin).then_some(value));
            assert_ne!(r, RateLimitReading::default(), "{twin} was not read");
        }
        assert_eq!(usage_based(RETRY_AFTER), None);
    }

    #[test]
    fn azure_minus_one_and_usage_based_variants() {
        let azure = [
            ("x-ratelimit-limit-tokens", "-1"),
            ("x-ratelimit-remaining-tokens", "-1"),
            ("x-ratelimit-limit-requests", "0"),
            ("x-ratelimit-remaining-requests", "20"),
            ("retry-after", "6"),
            ("retry-after-ms", "5712"),
        ];
        let r = reading_from_headers(|n| azure.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(r.limit_tokens, None);
        assert_eq!(r.remaining_tokens, None);
        assert_eq!(r.limit_requests, None);
        assert_eq!(r.remaining_requests, Some(20));
        assert_eq!(r.retry_after, Some(ms(5712)));

        let usage_based = [
            ("x-ratelimit-limit-tokens_usage_based", "10000"),
            ("x-ratelimit-remaining-tokens_usage_based", "1218"),
            ("x-ratelimit-reset-tokens_usage_based", "41.724s"),
        ];
        let r =
            reading_from_headers(|n| usage_based.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(r.limit_tokens, Some(10_000));
        assert_eq!(r.reset_tokens, Some(ms(41_724)));
    }

    /// Every TPM sample of rate-limits.md §1.1.3: the "try again in" text parses to the time the
    /// message states.
    #[test]
    fn every_tpm_message_sample_parses() {
        let samples = [
            (30000, 29937, 385, "644ms", 644),
            (10000, 8554, 3082, "9.816s", 9816),
            (200000, 162960, 42288, "1.574s", 1574),
            (200000, 158404, 48556, "2.088s", 2088),
            (30000, 14567, 24754, "18.642s", 18642),
            (30000, 28039, 3906, "3.89s", 3890),
            (30000, 18928, 11159, "174ms", 174),
            (10000, 8782, 8172, "41.724s", 41724),
        ];
        for (limit, used, requested, text, want_ms) in samples {
            let message = format!(
                "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): \
                 Limit {limit}, Used {used}, Requested {requested}. Please try again in {text}. \
                 Visit https://platform.openai.com/account/rate-limits to learn more."
            );
            let body = ApiErrorBody::new(message, Some("tokens"), Some("rate_limit_exceeded"));
            match classify(429, RateLimitReading::default(), &body.to_json()) {
                ModelError::RateLimited {
                    kind,
                    retry_after,
                    reading,
                    ..
                } => {
                    assert_eq!(kind, RateLimitKind::Tokens);
                    assert_eq!(retry_after, Some(ms(want_ms)), "{text}");
                    // The body's wait is recorded in the reading too, for the scheduler.
                    assert_eq!(reading.and_then(|r| r.retry_after), Some(ms(want_ms)));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn bodies_of_section_1_1_5_classify() {
        let tokens = br#"{"error":{"message":"Rate limit reached for o4-mini in organization org-abc on tokens per min (TPM): Limit 200000, Used 162960, Requested 42288. Please try again in 1.574s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(matches!(
            classify(429, RateLimitReading::default(), tokens),
            ModelError::RateLimited { kind: RateLimitKind::Tokens, retry_after: Some(d), .. } if d == ms(1574)
        ));

        let old_rpm = br#"{"error":{"message":"You've exceeded the 5 request/min rate limit, please slow down and try again.","type":"invalid_request_error","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(matches!(
            classify(429, RateLimitReading::default(), old_rpm),
            ModelError::RateLimited {
                kind: RateLimitKind::Requests,
                retry_after: None,
                ..
            }
        ));

        let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let e = classify(429, RateLimitReading::default(), quota);
        assert!(matches!(e, ModelError::QuotaExhausted { .. }), "{e:?}");
        assert!(!e.is_retryable());

        let credit = br#"{"error":{"message":"Your credit balance is too low.","type":"insufficient_quota","param":null,"code":"credit_balance_exhausted"}}"#;
        assert!(matches!(
            classify(429, RateLimitReading::default(), credit),
            ModelError::QuotaExhausted { .. }
        ));

        let too_large = br#"{"error":{"message":"Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Requested 31538. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(matches!(
            classify(429, RateLimitReading::default(), too_large),
            ModelError::RequestTooLarge { .. }
        ));
    }

    #[test]
    fn azure_bodies_of_section_1_2_classify() {
        let body = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#;
        match classify(429, RateLimitReading::default(), body) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Tokens);
                assert_eq!(retry_after, Some(Duration::from_secs(6)));
            }
            other => panic!("{other:?}"),
        }
        // The simulator's Azure-style text and a numeric code.
        let sim = br#"{"error":{"code":429,"message":"Requests to the OpenAI API Simulator have exceeded call rate limit. Please retry after 3 seconds."}}"#;
        match classify(429, RateLimitReading::default(), sim) {
            ModelError::RateLimited {
                kind, retry_after, ..
            } => {
                assert_eq!(kind, RateLimitKind::Requests);
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }
        // Headers win over the message text.
        let reading = RateLimitReading {
            retry_after: Some(ms(5712)),
            ..RateLimitReading::default()
        };
        assert_eq!(classify(429, reading, body).retry_after(), Some(ms(5712)));
    }

    #[test]
    fn other_statuses_classify() {
        let plain = |status| {
            classify(
                status,
                RateLimitReading::default(),
                b"<html>bad gateway</html>",
            )
        };
        assert!(matches!(
            plain(500),
            ModelError::Transient {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            plain(502),
            ModelError::Transient {
                status: Some(502),
                ..
            }
        ));
        assert!(matches!(
            plain(503),
            ModelError::Transient {
                status: Some(503),
                ..
            }
        ));
        assert!(matches!(
            plain(529),
            ModelError::Transient {
                status: Some(529),
                ..
            }
        ));
        assert!(matches!(
            plain(408),
            ModelError::Transient {
                status: Some(408),
                ..
            }
        ));
        assert!(matches!(
            plain(401),
            ModelError::InvalidRequest {
                status: Some(401),
                ..
            }
        ));
        assert!(matches!(
            plain(404),
            ModelError::InvalidRequest {
                status: Some(404),
                ..
            }
        ));
        assert!(matches!(plain(413), ModelError::RequestTooLarge { .. }));
        let context = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            classify(400, RateLimitReading::default(), context),
            ModelError::RequestTooLarge { .. }
        ));
        // A non-JSON body keeps its text so the error says what the server said.
        assert!(plain(502).to_string().contains("bad gateway"));
        assert!(
            classify(500, RateLimitReading::default(), b"")
                .to_string()
                .contains("empty body")
        );
    }

    #[test]
    fn error_bodies_round_trip() {
        let body = ApiErrorBody::new("m", Some("tokens"), Some("rate_limit_exceeded"));
        assert_eq!(ApiErrorBody::parse(&body.to_json()), body);
    }
}
