//! Counters per key and per conversation, and the [`SchedulerSnapshot`] that reports them.
//!
//! Admission waits go into a small log-bucketed histogram (four buckets per power of two, about
//! 19 % resolution, 1 µs to ~36 min, 512 bytes). Hand-written rather than `hdrhistogram`: an HDR
//! histogram with useful precision takes tens of kilobytes, and the scheduler keeps one per
//! conversation (10,000 conversations must stay a few megabytes).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::RateLimitKind;
use rustc_hash::FxBuildHasher;

use super::quota::{Cost, Limiter, Limits};
use super::retry::CircuitState;

const BUCKETS: usize = 128;

/// The bounds of [`KeyStats::wait_buckets`]: 1 ms to 10 minutes, the range between an idle key
/// and one whose calls wait out a provider's minute several times.
pub const WAIT_BUCKETS: [Duration; 12] = [
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// Waits below 2^10 ns (about 1 µs) count as no wait.
const MIN_SHIFT: u32 = 10;

/// A log-bucketed histogram of durations.
#[derive(Debug, Clone)]
pub(crate) struct WaitHistogram {
    counts: [u32; BUCKETS],
    total_ns: u64,
    max_ns: u64,
}

impl Default for WaitHistogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            total_ns: 0,
            max_ns: 0,
        }
    }
}

fn index(ns: u64) -> usize {
    if ns < 1 << MIN_SHIFT {
        return 0;
    }
    let msb = 63 - ns.leading_zeros();
    let sub = (ns >> (msb - 2)) & 3;
    (1 + (msb - MIN_SHIFT) as usize * 4 + sub as usize).min(BUCKETS - 1)
}

fn upper_bound(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    let msb = MIN_SHIFT + ((i - 1) / 4) as u32;
    let sub = ((i - 1) % 4) as u64;
    ((4 + sub + 1) << (msb - 2)).saturating_sub(1)
}

impl WaitHistogram {
    pub(crate) fn record(&mut self, wait: Duration) {
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        let i = index(ns);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    fn quantile(&self, count: u64, q: f64) -> Duration {
        if count == 0 {
            return Duration::ZERO;
        }
        let rank = ((count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Duration::from_nanos(upper_bound(i).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// Cumulative counts at each bound: waits known to be at most the bound (a histogram bucket
    /// counts toward a bound once its upper edge is within it, so a count is low by at most one
    /// bucket's width, about 19 %).
    pub(crate) fn cumulative(&self, bounds: &[Duration]) -> Vec<(Duration, u64)> {
        let mut out = Vec::with_capacity(bounds.len());
        let (mut i, mut seen) = (0, 0u64);
        for &bound in bounds {
            let ns = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
            while i < BUCKETS && upper_bound(i) <= ns {
                seen += u64::from(self.counts[i]);
                i += 1;
            }
            out.push((bound, seen));
        }
        out
    }

    pub(crate) fn stats(&self) -> WaitStats {
        let count: u64 = self.counts.iter().map(|c| u64::from(*c)).sum();
        WaitStats {
            count,
            p50: self.quantile(count, 0.50),
            p99: self.quantile(count, 0.99),
            max: Duration::from_nanos(self.max_ns),
            total: Duration::from_nanos(self.total_ns),
        }
    }
}

/// Admission waits: how long calls queued before they were admitted (every attempt counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitStats {
    /// Admissions recorded.
    pub count: u64,
    /// Median wait (upper bound of its histogram bucket, ≤ 19 % above the true value).
    pub p50: Duration,
    /// 99th percentile wait (same resolution).
    pub p99: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Sum of all waits.
    pub total: Duration,
}

/// 429s by the limit they were about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitCounts {
    /// About requests.
    pub requests: u64,
    /// About tokens.
    pub tokens: u64,
    /// The provider did not say.
    pub unknown: u64,
}

impl RateLimitCounts {
    pub(crate) fn add(&mut self, kind: RateLimitKind) {
        match kind {
            RateLimitKind::Requests => self.requests += 1,
            RateLimitKind::Tokens => self.tokens += 1,
            // Unknown, and kinds added later.
            _ => self.unknown += 1,
        }
    }

    /// All 429s.
    pub fn total(&self) -> u64 {
        self.requests + self.tokens + self.unknown
    }
}

/// Limits learned from the provider's headers (`x-ratelimit-limit-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LearnedLimits {
    /// Last reported request limit.
    pub requests: Option<u64>,
    /// Last reported token limit.
    pub tokens: Option<u64>,
    /// How the provider counts requests, as inferred from its answers (reset headers, a
    /// `remaining` that does not refill, 429s without a hint); `None` until there is evidence.
    pub requests_limiter: Option<Limiter>,
    /// How the provider counts tokens, as inferred.
    pub tokens_limiter: Option<Limiter>,
    /// The request limit's period (a bucket's time to refill from empty, a window's length),
    /// as inferred from reset headers.
    pub requests_period: Option<Duration>,
    /// The token limit's period, as inferred.
    pub tokens_period: Option<Duration>,
    /// The most requests one fixed window was seen to admit when it admits fewer than its
    /// reported limit (LiteLLM's router admits `rpm_limit − 1`).
    pub window_requests: Option<u64>,
    /// The most tokens one fixed window was seen to admit, likewise.
    pub window_tokens: Option<u64>,
}

/// Counters of one quota key.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Calls submitted (logical calls, not attempts).
    pub calls: u64,
    /// Provider attempts (calls plus retries; a call refused before its first attempt makes
    /// none).
    pub attempts: u64,
    /// Calls that ended with a completion.
    pub succeeded: u64,
    /// Calls counted in `calls` that ended with an error (retries exhausted, cancelled, a
    /// refusal after queueing). `succeeded + failed` is how many of `calls` have finished.
    pub failed: u64,
    /// Prompt tokens the provider reported.
    pub prompt_tokens: u64,
    /// Completion tokens the provider reported.
    pub completion_tokens: u64,
    /// Tokens reserved at admission (summed over attempts).
    pub tokens_reserved: u64,
    /// 429s received.
    pub rate_limited: RateLimitCounts,
    /// Retries made (after 429s and transient failures): retry attempts admitted, so
    /// `attempts = calls + retries − calls refused before their first attempt` (see
    /// `docs/faults.md`).
    pub retries: u64,
    /// Transient failures received (timed-out attempts included).
    pub transient_errors: u64,
    /// Attempts abandoned at their deadline ([`Deadlines`](super::Deadlines)); also counted in
    /// `transient_errors`.
    pub timeouts: u64,
    /// Calls refused because their cost exceeds a bucket's capacity.
    pub exceeds_quota: u64,
    /// Calls refused by an open circuit.
    pub circuit_rejections: u64,
    /// Errors of the shared state backend.
    pub backend_errors: u64,
    /// Admission waits.
    pub wait: WaitStats,
    /// Admission waits as a histogram: for each bound of [`WAIT_BUCKETS`], how many waits were
    /// at most that long (cumulative, as Prometheus histograms count).
    pub wait_buckets: Vec<(Duration, u64)>,
    /// Calls in flight now.
    pub in_flight: u32,
    /// Calls waiting for admission now.
    pub queued: usize,
    /// The limits in force (configured, tightened or learned).
    pub limits: Limits,
    /// What the provider's headers reported.
    pub learned: LearnedLimits,
    /// Requests and tokens available now (`None` where unlimited).
    pub available_requests: Option<u64>,
    /// Tokens available now (`None` where unlimited).
    pub available_tokens: Option<u64>,
    /// Time left of a 429 pause.
    pub paused_for: Option<Duration>,
    /// The circuit breaker.
    pub circuit: Option<CircuitState>,
}

impl KeyStats {
    /// Calls of `calls` that have finished, successfully or not; `calls - finished()` are still
    /// queued, in flight or waiting to retry.
    pub fn finished(&self) -> u64 {
        self.succeeded.saturating_add(self.failed)
    }
}

/// Counters of one conversation (across keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversationStats {
    /// Calls submitted.
    pub calls: u64,
    /// Provider attempts.
    pub attempts: u64,
    /// Prompt tokens reported.
    pub prompt_tokens: u64,
    /// Completion tokens reported.
    pub completion_tokens: u64,
    /// 429s received.
    pub rate_limited: u64,
    /// Retries made.
    pub retries: u64,
    /// Calls that failed.
    pub failed: u64,
    /// What the calls were charged, in nanodollars (priced by the model's id).
    pub cost_nanos: u64,
    /// Admission waits per call (summed over a call's attempts).
    pub wait: WaitStats,
}

/// Everything the scheduler counted, per key and per conversation.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SchedulerSnapshot {
    /// By quota key.
    pub keys: BTreeMap<String, KeyStats>,
    /// By conversation; past the tracking cap, new conversations are summed under
    /// [`OTHER_CONVERSATIONS`].
    pub conversations: BTreeMap<String, ConversationStats>,
}

/// The snapshot entry that sums conversations beyond the tracking cap.
pub const OTHER_CONVERSATIONS: &str = "(other)";

/// A key's counters, kept under the key's lock (which admission holds anyway).
#[derive(Debug, Default)]
pub(crate) struct KeyCounters {
    pub(crate) calls: u64,
    pub(crate) attempts: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) tokens_reserved: u64,
    pub(crate) rate_limited: RateLimitCounts,
    pub(crate) retries: u64,
    pub(crate) transient_errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) exceeds_quota: u64,
    pub(crate) circuit_rejections: u64,
    pub(crate) backend_errors: u64,
    pub(crate) in_flight: u32,
    pub(crate) wait: WaitHistogram,
}

impl KeyCounters {
    /// An attempt was admitted; `retry` when it is not the call's first. Retries are counted
    /// here, not when decided, so a retry the breaker or the admission wait refuses is no retry:
    /// `attempts = calls + retries` for calls that reached the provider at least once.
    pub(crate) fn admitted(&mut self, cost: Cost, wait: Duration, retry: bool) {
        self.attempts += 1;
        self.retries += u64::from(retry);
        self.tokens_reserved = self.tokens_reserved.saturating_add(cost.tokens);
        self.in_flight += 1;
        self.wait.record(wait);
    }

    /// The counters as reported (the caller fills in the key's live state).
    pub(crate) fn stats(&self) -> KeyStats {
        KeyStats {
            calls: self.calls,
            attempts: self.attempts,
            succeeded: self.succeeded,
            failed: self.failed,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            tokens_reserved: self.tokens_reserved,
            rate_limited: self.rate_limited,
            retries: self.retries,
            transient_errors: self.transient_errors,
            timeouts: self.timeouts,
            exceeds_quota: self.exceeds_quota,
            circuit_rejections: self.circuit_rejections,
            backend_errors: self.backend_errors,
            wait: self.wait.stats(),
            wait_buckets: self.wait.cumulative(&WAIT_BUCKETS),
            in_flight: self.in_flight,
            ..KeyStats::default()
        }
    }
}

/// What one finished call adds to its conversation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallRecord {
    pub(crate) attempts: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) rate_limited: u64,
    pub(crate) retries: u64,
    pub(crate) failed: bool,
    /// Admission counted the call in its key's `calls` (it got past the capacity and circuit
    /// checks of its first attempt).
    pub(crate) submitted: bool,
    /// What the budget was charged for the call (nanodollars), priced by the model's id.
    pub(crate) cost_nanos: u64,
    /// Admission wait summed over the call's attempts.
    pub(crate) wait: Duration,
}

#[derive(Debug, Clone, Default)]
struct Conversation {
    calls: u64,
    attempts: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    rate_limited: u64,
    retries: u64,
    failed: u64,
    cost_nanos: u64,
    wait: WaitHistogram,
}

const SHARDS: usize = 16;

/// Per-conversation counters, sharded so conversations on different threads rarely share a lock,
/// with a cap on how many are tracked (memory stays bounded whatever the number of chats).
#[derive(Debug)]
pub(crate) struct Conversations {
    shards: [Mutex<HashMap<Arc<str>, Conversation, FxBuildHasher>>; SHARDS],
    tracked: AtomicUsize,
    cap: usize,
}

impl Conversations {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            tracked: AtomicUsize::new(0),
            cap,
        }
    }

    pub(crate) fn record(&self, conversation: &str, record: &CallRecord) {
        if self.cap == 0 {
            return;
        }
        let shard = (FxBuildHasher.hash_one(conversation) >> 32) as usize % SHARDS;
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let entry = match map.get_mut(conversation) {
            Some(e) => e,
            None => {
                let name = if self.tracked.fetch_add(1, Ordering::Relaxed) < self.cap {
                    conversation
                } else {
                    self.tracked.fetch_sub(1, Ordering::Relaxed);
                    OTHER_CONVERSATIONS
                };
                map.entry(Arc::from(name)).or_default()
            }
        };
        entry.calls += 1;
        entry.attempts += record.attempts;
        entry.prompt_tokens = entry.prompt_tokens.saturating_add(record.prompt_tokens);
        entry.completion_tokens = entry
            .completion_tokens
            .saturating_add(record.completion_tokens);
        entry.rate_limited += record.rate_limited;
        entry.retries += record.retries;
        entry.failed += u64::from(record.failed);
        entry.cost_nanos = entry.cost_nanos.saturating_add(record.cost_nanos);
        entry.wait.record(record.wait);
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, ConversationStats> {
        let mut out: BTreeMap<String, ConversationStats> = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (name, c) in map.iter() {
                let stats = ConversationStats {
                    calls: c.calls,
                    attempts: c.attempts,
                    prompt_tokens: c.prompt_tokens,
                    completion_tokens: c.completion_tokens,
                    rate_limited: c.rate_limited,
                    retries: c.retries,
                    failed: c.failed,
                    cost_nanos: c.cost_nanos,
                    wait: c.wait.stats(),
                };
                // "(other)" may exist in several shards: sum them.
                let e = out.entry(name.to_string()).or_default();
                if e.calls == 0 {
                    *e = stats;
                } else {
                    e.calls += stats.calls;
                    e.attempts += stats.attempts;
                    e.prompt_tokens = e.prompt_tokens.saturating_add(stats.prompt_tokens);
                    e.completion_tokens =
                        e.completion_tokens.saturating_add(stats.completion_tokens);
                    e.rate_limited += stats.rate_limited;
                    e.retries += stats.retries;
                    e.failed += stats.failed;
                    e.cost_nanos = e.cost_nanos.saturating_add(stats.cost_nanos);
                    e.wait.count += stats.wait.count;
                    e.wait.total = e.wait.total.saturating_add(stats.wait.total);
                    e.wait.max = e.wait.max.max(stats.wait.max);
                    e.wait.p50 = e.wait.p50.max(stats.wait.p50);
                    e.wait.p99 = e.wait.p99.max(stats.wait.p99);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = WaitHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.stats();
        assert_eq!(s.count, 100);
        assert_eq!(s.max, Duration::from_millis(100));
        let p50 = s.p50.as_secs_f64() * 1e3;
        assert!((50.0..=50.0 * 1.19 + 0.01).contains(&p50), "p50 {p50}");
        let p99 = s.p99.as_secs_f64() * 1e3;
        assert!((99.0..=100.0).contains(&p99), "p99 {p99}");
        // Zero waits stay zero.
        let mut z = WaitHistogram::default();
        z.record(Duration::ZERO);
        assert_eq!(z.stats().p99, Duration::ZERO);
    }

    #[test]
    fn bucket_bounds_cover_their_values() {
        for ns in [1024u64, 1500, 4095, 4096, 1 << 30, (1 << 40) + 12345] {
            let i = index(ns);
            assert!(upper_bound(i) >= ns, "{ns} in bucket {i}");
            assert!(i == 1 || upper_bound(i - 1) < ns, "{ns} in bucket {i}");
        }
    }

    #[test]
    fn conversations_beyond_the_cap_are_summed_as_other() {
        let c = Conversations::new(2);
        let r = CallRecord {
            attempts: 1,
            ..CallRecord::default()
        };
        for name in ["a", "b", "c", "d", "a"] {
            c.record(name, &r);
        }
        let s = c.snapshot();
        assert_eq!(s.len(), 3);
        assert_eq!(s["a"].calls, 2);
        assert_eq!(s[OTHER_CONVERSATIONS].calls, 2);
    }
}
