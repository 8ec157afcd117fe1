//! Provider feedback: limits learned from rate-limit headers, and how long a 429 pauses a key.
//!
//! Headers are hints, never the source of truth (they are missing on some endpoints and wrong on
//! others, rate-limits.md §1.1.4): a reported limit may set a limit that is not configured, or
//! lower one that is, but never raise a key above its configuration.

use std::time::Duration;

use agent_core::{RateLimitKind, RateLimitReading};

use super::metrics::LearnedLimits;
use super::quota::{Cost, Limits, Quota, Rate};

/// The limits in force: configured, lowered (or, when unset, set) by what the provider reported;
/// one call in flight while `probing`.
pub(crate) fn effective_limits(quota: &Quota, learned: LearnedLimits, probing: bool) -> Limits {
    let mut limits = quota.limits();
    if quota.learn_from_headers {
        limits.requests = merge(limits.requests, learned.requests, quota.period);
        limits.tokens = merge(limits.tokens, learned.tokens, quota.period);
    }
    if probing {
        limits.max_in_flight = Some(1);
    }
    limits
}

/// Whether a new key starts with a probe: it knows none of its limits (nothing configured) but
/// learns them from headers. Until the provider's first answer, such a key admits one call at a
/// time, so the answer's headers set the limits and the remaining quota before the rest go out —
/// instead of a first burst meeting a wall of 429s (which providers charge). A provider that
/// sends no headers costs one call's latency, once.
pub(crate) fn starts_probing(quota: &Quota) -> bool {
    quota.learn_from_headers && quota.limits().is_unlimited()
}

fn merge(configured: Option<Rate>, reported: Option<u64>, period: Duration) -> Option<Rate> {
    match (configured, reported.filter(|r| *r > 0)) {
        (Some(c), Some(r)) => Some(Rate::new(c.limit.min(r), c.period)),
        (Some(c), None) => Some(c),
        // Learned limits use the key's period (a minute unless configured otherwise).
        (None, Some(r)) => Some(Rate::new(r, period)),
        (None, None) => None,
    }
}

/// Updates what the provider reported; true when the effective limits may have changed.
///
/// A limit whose reading states no window counts over the key's `period` (a minute unless
/// configured: OpenAI's, and a compressed mock's when the key is configured with the mock's
/// period). A reading that states its window (Azure counts requests per 10 s) is rescaled to the
/// key's period.
pub(crate) fn learn(
    learned: &mut LearnedLimits,
    reading: &RateLimitReading,
    period: Duration,
) -> bool {
    let before = *learned;
    let requests = match reading.requests_window {
        Some(_) => reading.requests_per(period),
        None => reading.limit_requests,
    };
    let tokens = match reading.tokens_window {
        Some(_) => reading.tokens_per(period),
        None => reading.limit_tokens,
    };
    if requests.is_some() {
        learned.requests = requests;
    }
    if tokens.is_some() {
        learned.tokens = tokens;
    }
    before != *learned
}

/// How long a 429 pauses the key: the provider's retry time when it gave one (the error's, else
/// the reading's), else the time the limited bucket needs to refill this call's cost, else
/// `fallback` (a jittered backoff).
pub(crate) fn pause_after_429(
    kind: RateLimitKind,
    retry_after: Option<Duration>,
    reading: Option<&RateLimitReading>,
    limits: &Limits,
    cost: Cost,
    fallback: Duration,
) -> Duration {
    if let Some(d) = retry_after.or_else(|| reading.and_then(|r| r.retry_after)) {
        return d;
    }
    let refill = |rate: Option<Rate>, amount: u64| {
        rate.map(|r| {
            let ns = r.period.as_nanos() * u128::from(amount) / u128::from(r.limit.max(1));
            Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
        })
    };
    let computed = match kind {
        RateLimitKind::Requests => refill(limits.requests, cost.requests),
        RateLimitKind::Tokens => refill(limits.tokens, cost.tokens),
        // Unknown, and kinds added later: no bucket to compute from.
        _ => None,
    };
    computed.unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_limits_tighten_or_set_but_never_raise() {
        let quota = Quota::per_minute().requests(100);
        let learned = LearnedLimits {
            requests: Some(500),
            tokens: Some(20_000),
        };
        let l = effective_limits(&quota, learned, false);
        assert_eq!(l.requests.map(|r| r.limit), Some(100), "never raised");
        assert_eq!(
            l.tokens.map(|r| r.limit),
            Some(20_000),
            "learned when unset"
        );
        let lower = LearnedLimits {
            requests: Some(40),
            tokens: None,
        };
        assert_eq!(
            effective_limits(&quota, lower, false)
                .requests
                .map(|r| r.limit),
            Some(40)
        );
        let off = quota.clone().learn_from_headers(false);
        assert_eq!(effective_limits(&off, learned, false).tokens, None);
    }

    #[test]
    fn only_a_key_that_knows_no_limit_probes_and_the_probe_is_one_call() {
        assert!(starts_probing(&Quota::unlimited()));
        assert!(!starts_probing(&Quota::per_minute().requests(10)));
        assert!(!starts_probing(&Quota::per_minute().max_in_flight(4)));
        assert!(!starts_probing(
            &Quota::unlimited().learn_from_headers(false)
        ));
        let probe = effective_limits(&Quota::unlimited(), LearnedLimits::default(), true);
        assert_eq!(probe.max_in_flight, Some(1));
        assert!(
            effective_limits(&Quota::unlimited(), LearnedLimits::default(), false).is_unlimited()
        );
    }

    #[test]
    fn a_per_ten_second_allowance_is_learned_as_its_per_minute_rate() {
        // Azure: `x-ratelimit-limit-requests: 20` on a 120 RPM deployment (rate-limits.md §1.2).
        let azure = RateLimitReading {
            limit_requests: Some(20),
            requests_window: Some(Duration::from_secs(10)),
            limit_tokens: Some(20_000),
            ..RateLimitReading::default()
        };
        let mut learned = LearnedLimits::default();
        assert!(learn(&mut learned, &azure, Duration::from_secs(60)));
        assert_eq!(learned.requests, Some(120));
        assert_eq!(learned.tokens, Some(20_000));
        let openai = RateLimitReading {
            limit_requests: Some(500),
            ..RateLimitReading::default()
        };
        assert!(learn(&mut learned, &openai, Duration::from_secs(60)));
        assert_eq!(learned.requests, Some(500));
        // No stated window: the limit is taken as counting over the key's own period.
        assert!(!learn(&mut learned, &openai, Duration::from_secs(6)));
        assert_eq!(learned.requests, Some(500));
    }

    #[test]
    fn pause_prefers_the_provider_then_the_bucket_then_backoff() {
        let limits = Quota::per_minute().tokens(60_000).limits();
        let cost = Cost {
            requests: 1,
            tokens: 2_000,
        };
        let fallback = Duration::from_millis(700);
        let reading = RateLimitReading {
            retry_after: Some(Duration::from_millis(1574)),
            ..RateLimitReading::default()
        };
        let tokens = RateLimitKind::Tokens;
        assert_eq!(
            pause_after_429(
                tokens,
                Some(Duration::from_secs(3)),
                Some(&reading),
                &limits,
                cost,
                fallback
            ),
            Duration::from_secs(3)
        );
        assert_eq!(
            pause_after_429(tokens, None, Some(&reading), &limits, cost, fallback),
            Duration::from_millis(1574)
        );
        // 2,000 tokens at 1,000 a second.
        assert_eq!(
            pause_after_429(tokens, None, None, &limits, cost, fallback),
            Duration::from_secs(2)
        );
        assert_eq!(
            pause_after_429(RateLimitKind::Requests, None, None, &limits, cost, fallback),
            fallback
        );
    }
}
