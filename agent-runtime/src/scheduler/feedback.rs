//! Provider feedback: limits learned from rate-limit headers, how long a 429 pauses a key, and
//! the debt a 429 without a hint puts a key in.
//!
//! Headers are hints, never the source of truth (they are missing on some endpoints and wrong on
//! others, rate-limits.md §1.1.4): a reported limit may set a limit that is not configured, or
//! lower one that is, but never raise a key above its configuration. Inferred semantics (see
//! `inference`) may replace the default continuous bucket, never a limiter the user chose.

use std::time::{Duration, SystemTime};

use agent_core::{RateLimitKind, RateLimitReading};
use tokio::time::Instant;

use super::admission::{Admitted, KeyInner};
use super::inference::Sample;
use super::limiter::fixed_window::next_clock_boundary;
use super::metrics::LearnedLimits;
use super::quota::{Cost, Limiter, Limits, Quota, Rate, WindowStart};
use super::state::{KeyBuckets, instant_after};

/// The limits in force: configured, lowered (or, when unset, set) by what the provider reported;
/// one call in flight while `probing`.
pub(crate) fn effective_limits(quota: &Quota, learned: LearnedLimits, probing: bool) -> Limits {
    let mut limits = quota.limits();
    if quota.learn_from_headers {
        limits.requests = adapt(
            limits.requests,
            Learned {
                limit: learned.requests,
                period: learned.requests_period,
                limiter: learned.requests_limiter,
                window: learned.window_requests,
            },
            quota.period,
        );
        limits.tokens = adapt(
            limits.tokens,
            Learned {
                limit: learned.tokens,
                period: learned.tokens_period,
                limiter: learned.tokens_limiter,
                window: learned.window_tokens,
            },
            quota.period,
        );
    }
    if probing {
        limits.max_in_flight = Some(1);
    }
    limits
}

/// What was learned about one dimension.
struct Learned {
    limit: Option<u64>,
    period: Option<Duration>,
    limiter: Option<Limiter>,
    window: Option<u64>,
}

fn adapt(configured: Option<Rate>, learned: Learned, period: Duration) -> Option<Rate> {
    let was_configured = configured.is_some();
    let mut rate = merge(configured, learned.limit, period)?;
    // A learned limit counts over the period the provider showed; a configured one may only be
    // slowed down by it (a longer period at the same limit is a lower rate).
    if let Some(p) = learned
        .period
        .filter(|p| !was_configured || *p > rate.period)
    {
        rate.period = p;
    }
    // Evidence replaces the default bucket, never a window the user configured.
    if rate.limiter == Limiter::Bucket
        && let Some(limiter) = learned.limiter
    {
        rate.limiter = limiter;
    }
    if matches!(rate.limiter, Limiter::FixedWindow(_))
        && let Some(window) = learned.window
    {
        rate.limit = rate.limit.min(window).max(1);
    }
    Some(rate)
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
        (Some(c), Some(r)) => Some(Rate {
            limit: c.limit.min(r),
            ..c
        }),
        (Some(c), None) => Some(c),
        // Learned limits use the key's period (a minute unless configured otherwise).
        (None, Some(r)) => Some(Rate::new(r, period)),
        (None, None) => None,
    }
}

/// A key that got a 429 with no usable hint (no `retry-after`, no "try again in", or only a
/// gateway's constant). It admits one call at a time — the probe — and its meters earn nothing
/// while it waits: only a success shows there is capacity again. Without this, the key's bucket
/// refills during the pause and releases a burst into a provider window that is still closed
/// (issue 10: bursts of up to 12 into LiteLLM's closed minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Debt {
    /// The limit the 429s were about.
    pub(crate) kind: RateLimitKind,
    /// Hint-less 429s since the debt began (the first, then every failed probe).
    pub(crate) refusals: u32,
    /// The next probe goes at the boundary the key's window (or the wall clock) predicts; a
    /// success then confirms that phase rather than moving it.
    pub(crate) at_boundary: bool,
    /// When the debt began: a 429 for a call sent before is part of the same burst, not a failed
    /// probe, and only a call sent after can show capacity.
    pub(crate) since: Instant,
}

impl Debt {
    pub(crate) fn new(kind: RateLimitKind, since: Instant) -> Self {
        Self {
            kind,
            refusals: 0,
            at_boundary: false,
            since,
        }
    }

    /// When to probe after this hint-less refusal, for a limit of `period`: first at the next
    /// boundary of the wall clock's `period` (UTC minutes for a minute: LiteLLM's windows, and
    /// most gateways'), or at `window_end` when the key's meter knows its window; after that,
    /// every `period / 8`, doubling to at most `period / 2` — a handful of probes per window,
    /// never a storm.
    pub(crate) fn next_probe(
        &mut self,
        period: Duration,
        window_end: Option<Duration>,
        wall: SystemTime,
    ) -> Duration {
        self.refusals = self.refusals.saturating_add(1);
        // Lands the probe just after the boundary, past the scheduling and clock jitter between
        // client and provider.
        let margin = (period / 50).clamp(Duration::from_millis(1), Duration::from_millis(500));
        if self.refusals == 1 {
            self.at_boundary = true;
            let to_boundary = window_end.unwrap_or_else(|| {
                let now = Instant::now();
                next_clock_boundary(now, wall, period) - now
            });
            return to_boundary.saturating_add(margin);
        }
        self.at_boundary = false;
        let doublings = (self.refusals - 2).min(2);
        (period / 8).saturating_mul(1 << doublings).max(margin)
    }
}

impl KeyInner {
    fn rate(&self, dimension: usize) -> Option<Rate> {
        [self.limits.requests, self.limits.tokens][dimension]
    }

    fn relimit(&mut self, quota: &Quota) {
        self.limits = effective_limits(quota, self.learned, self.probing);
    }

    /// A 429 with no usable hint: the key goes into [`Debt`] (one probe at a time, its meters
    /// earning nothing) and, when it learns, takes the limit for a gateway's fixed window —
    /// clock-aligned until a probe shows otherwise — admitting no more per window than the
    /// window was seen to admit. Returns the pause until the next probe.
    pub(crate) fn refused_without_hint(
        &mut self,
        quota: &Quota,
        now: Instant,
        admitted_at: Instant,
        kind: RateLimitKind,
        cost: Cost,
    ) -> Duration {
        if let Some(debt) = self.debt
            && admitted_at < debt.since
        {
            // Sent before the debt began: the same closed window, not a failed probe.
            return self.buckets.paused_for(now).unwrap_or_default();
        }
        let amounts = [cost.requests, cost.tokens];
        if quota.learn_from_headers {
            let configured = [quota.requests_limiter, quota.tokens_limiter];
            for &d in KeyBuckets::dimensions_of(kind) {
                let Some(rate) = self.rate(d) else { continue };
                let limits = self.limits;
                if let Some(count) = self
                    .buckets
                    .window_count_before(now, &limits, d, amounts[d])
                    && count >= rate.limit / 2
                    && count < rate.limit
                {
                    let seen = [
                        &mut self.learned.window_requests,
                        &mut self.learned.window_tokens,
                    ];
                    let seen = seen.into_iter().nth(d);
                    if let Some(seen) = seen {
                        *seen = Some(seen.map_or(count, |c| c.min(count)));
                    }
                }
                if rate.limiter == Limiter::Bucket && configured[d] == Limiter::Bucket {
                    let window = Limiter::FixedWindow(WindowStart::Clock);
                    if d == 0 {
                        self.learned.requests_limiter = Some(window);
                    } else {
                        self.learned.tokens_limiter = Some(window);
                    }
                    self.inference[d].decide(window);
                }
            }
        }
        let mut debt = self.debt.unwrap_or_else(|| Debt::new(kind, now));
        self.probing = true;
        self.relimit(quota);
        let limits = self.limits;
        let window_end = if debt.refusals == 0 {
            self.buckets.drain(now, &limits, kind, cost)
        } else {
            // The boundary was not where the window said: reopen it, so that only the debt's
            // pause and single probe hold calls back, and the probe's success places it.
            self.buckets.reopen_windows(now, &limits, kind);
            self.buckets.drain_buckets(now, &limits, kind);
            None
        };
        let period = KeyBuckets::dimensions_of(kind)
            .iter()
            .filter_map(|&d| self.rate(d).map(|r| r.period))
            .max()
            .unwrap_or(quota.period);
        let pause = debt.next_probe(period, window_end, SystemTime::now());
        self.debt = Some(debt);
        self.buckets.pause_until(instant_after(now, pause));
        pause
    }

    /// The provider answered (a success, or any 429): the first answer ends the cold start —
    /// the key's buckets lose the refill they earned between its first admission and now, as
    /// the provider's started refilling only when the first request arrived (at most this long
    /// after). One shift of one round trip, instead of a 429 whenever a later request travels
    /// faster than the first. Returns the shift, for a shared backend to apply to its buckets.
    pub(crate) fn first_answer(&mut self, now: Instant) -> Option<Duration> {
        if self.warm {
            return None;
        }
        self.warm = true;
        let since = self.cold_since.take()?;
        let by = now.saturating_duration_since(since);
        self.buckets.lag(now, by);
        Some(by)
    }

    /// A success: it ends a debt (when sent after it began) and teaches what its reading shows.
    pub(crate) fn succeeded(
        &mut self,
        quota: &Quota,
        now: Instant,
        admitted: &Admitted,
        reading: Option<&RateLimitReading>,
    ) {
        if let Some(debt) = self.debt.filter(|d| admitted.at >= d.since) {
            self.debt = None;
            self.probing = false;
            self.relimit(quota);
            let limits = self.limits;
            if !debt.at_boundary {
                // The window opened somewhere between the last refused probe and this one:
                // starting it at this probe never starts it before the provider's.
                for &d in KeyBuckets::dimensions_of(debt.kind) {
                    self.buckets.align(now, &limits, d, admitted.at);
                }
            }
            // Buckets earned nothing while in debt: they refill from here.
            self.buckets.drain_buckets(now, &limits, debt.kind);
        }
        let (Some(r), true) = (reading, quota.learn_from_headers) else {
            return;
        };
        let samples = [
            (
                r.limit_requests,
                r.remaining_requests,
                r.reset_requests,
                r.requests_window,
            ),
            (
                r.limit_tokens,
                r.remaining_tokens,
                r.reset_tokens,
                r.tokens_window,
            ),
        ];
        let mut changed = false;
        let mut boundaries = [None, None];
        for (d, (limit, remaining, reset, window)) in samples.into_iter().enumerate() {
            let (Some(limit), Some(remaining)) = (limit, remaining) else {
                continue;
            };
            let assumed = window
                .or_else(|| self.rate(d).map(|r| r.period))
                .unwrap_or(quota.period);
            let sample = Sample {
                admitted_at: admitted.at,
                seq: admitted.seq,
                limit,
                remaining,
                reset,
            };
            let evidence = self.inference[d].observe(sample, assumed);
            let (limiter, period) = if d == 0 {
                (
                    &mut self.learned.requests_limiter,
                    &mut self.learned.requests_period,
                )
            } else {
                (
                    &mut self.learned.tokens_limiter,
                    &mut self.learned.tokens_period,
                )
            };
            if evidence.limiter.is_some() && *limiter != evidence.limiter {
                *limiter = evidence.limiter;
                changed = true;
            }
            if evidence.period.is_some() && *period != evidence.period {
                *period = evidence.period;
                changed = true;
            }
            boundaries[d] = evidence.boundary;
        }
        if changed {
            self.relimit(quota);
        }
        let limits = self.limits;
        for (d, boundary) in boundaries.into_iter().enumerate() {
            if let Some(b) = boundary {
                self.buckets.align(now, &limits, d, b);
            }
        }
    }
}

/// A limit described for an error: `"requests (fixed window, 60 per 60s)"`.
pub(crate) fn describe_limit(limits: &Limits, kind: RateLimitKind) -> String {
    let rate = match kind {
        RateLimitKind::Requests => limits.requests,
        RateLimitKind::Tokens => limits.tokens,
        _ => None,
    };
    match rate {
        Some(r) => format!("{kind} ({}, {} per {:?})", r.limiter, r.limit, r.period),
        None => kind.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_limits_tighten_or_set_but_never_raise() {
        let quota = Quota::per_minute().requests(100);
        let learned = LearnedLimits {
            requests: Some(500),
            tokens: Some(20_000),
            ..LearnedLimits::default()
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
            ..LearnedLimits::default()
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
}
