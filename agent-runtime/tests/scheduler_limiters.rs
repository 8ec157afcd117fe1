//! Admission against providers whose limiter is not a continuous bucket, on the paused clock:
//! fixed windows (clock-aligned, LiteLLM's off-by-one and its hint-less 429s), sliding windows,
//! limits and semantics learned from what the provider shows, and the cold start.
//!
//! The provider here is a small in-test limiter model: it judges each request when it arrives
//! (after a network delay), answers LiteLLM's 429 body through the HTTP provider's own
//! classifier, and records every arrival, so tests assert on what the provider saw.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agent_core::{
    Budget, CallKind, ChatModel, ChatRequest, Completion, ModelError, RateLimitReading, Usage,
    async_trait,
};
use agent_runtime::provider::headers::classify;
use agent_runtime::scheduler::{
    InMemoryState, Limiter, ModelCall, Quota, QuotaScheduler, WindowStart,
};
use scheduler_support::{ExactEstimator, completion, request};
use tokio::time::Instant;

/// How the in-test provider counts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Counting {
    /// Fixed windows on the wall clock's boundaries (LiteLLM's UTC minutes).
    ClockWindows,
    /// At most the limit in any period, judged at arrival.
    Sliding,
    /// A continuous bucket that starts full at the first arrival.
    Bucket,
    /// Fixed windows opened by the first request, and by the first after a window ends
    /// (LiteLLM's proxy limiter v3): their phase is nowhere on the clock.
    FirstRequestWindows,
}

#[derive(Debug, Default)]
struct Seen {
    /// `(arrival, admitted)` in arrival order.
    arrivals: Vec<(Instant, bool)>,
    /// Bucket: `(level, at)`.
    bucket: Option<(f64, Instant)>,
    /// Requests sent so far.
    sent: usize,
    /// First-request windows: the current window's start and count.
    window: Option<(Instant, u64)>,
}

/// A provider with one request limit counted by `counting`.
#[derive(Debug, Clone)]
struct Provider {
    counting: Counting,
    /// The limit it reports in headers and 429 bodies.
    limit: u64,
    /// What it admits per window (`limit − 1` for LiteLLM's router).
    admits: u64,
    period: Duration,
    /// Network delay before the request is judged, and after: (the first `cold` requests, later
    /// ones).
    delay: (Duration, Duration),
    cold: usize,
    /// Success headers: `x-ratelimit-limit-requests` and `-remaining-requests` (LiteLLM's).
    headers: bool,
    /// Where the clock's windows start, on the paused clock (set at the first request).
    anchor: Arc<Mutex<Option<Instant>>>,
    seen: Arc<Mutex<Seen>>,
}

impl Provider {
    fn new(counting: Counting, limit: u64, period: Duration) -> Self {
        Self {
            counting,
            limit,
            admits: limit,
            period,
            delay: (Duration::from_millis(5), Duration::from_millis(5)),
            cold: 0,
            headers: false,
            anchor: Arc::default(),
            seen: Arc::default(),
        }
    }

    fn off_by_one(mut self) -> Self {
        self.admits = self.limit - 1;
        self
    }

    fn with_headers(mut self) -> Self {
        self.headers = true;
        self
    }

    /// `n` requests of another client already counted in the window the run starts in.
    fn with_prior(self, n: usize) -> Self {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.arrivals
                .extend(std::iter::repeat_n((Instant::now(), true), n));
        }
        self
    }

    /// The first `cold` requests travel `first` (new connections), later ones `later`.
    fn with_delay(mut self, cold: usize, first: Duration, later: Duration) -> Self {
        self.cold = cold;
        self.delay = (first, later);
        self
    }

    fn rejected(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.arrivals.iter().filter(|(_, ok)| !ok).count()
    }

    fn admitted(&self) -> Vec<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.arrivals
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(t, _)| *t)
            .collect()
    }

    /// The index of the clock window `at` falls in.
    fn window_of(&self, at: Instant) -> i128 {
        let anchor = self.anchor.lock().unwrap().unwrap();
        let p = self.period.as_nanos() as i128;
        let d = if at >= anchor {
            (at - anchor).as_nanos() as i128
        } else {
            -((anchor - at).as_nanos() as i128)
        };
        d.div_euclid(p)
    }

    /// Judges one arrival; `Some(remaining)` when admitted.
    fn judge(&self, at: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap();
        let used = match self.counting {
            Counting::ClockWindows => {
                let k = self.window_of(at);
                let same = |t: &Instant| self.window_of(*t) == k;
                seen.arrivals
                    .iter()
                    .filter(|(t, ok)| *ok && same(t))
                    .count() as u64
            }
            Counting::Sliding => seen
                .arrivals
                .iter()
                .filter(|(t, ok)| *ok && *t + self.period > at)
                .count() as u64,
            Counting::FirstRequestWindows => {
                let (start, used) = match seen.window {
                    Some((start, used)) if at < start + self.period => (start, used),
                    _ => (at, 0),
                };
                let ok = used < self.admits;
                seen.window = Some((start, used + u64::from(ok)));
                seen.arrivals.push((at, ok));
                return ok.then(|| self.limit - used - 1);
            }
            Counting::Bucket => {
                let rate = self.limit as f64 / self.period.as_secs_f64();
                let (level, last) = seen.bucket.unwrap_or((self.limit as f64, at));
                let level = (level + (at - last).as_secs_f64() * rate).min(self.limit as f64);
                let ok = level >= 1.0;
                seen.bucket = Some((if ok { level - 1.0 } else { level }, at));
                seen.arrivals.push((at, ok));
                return ok.then(|| level as u64 - 1);
            }
        };
        let ok = used < self.admits;
        seen.arrivals.push((at, ok));
        ok.then(|| self.limit - used - 1)
    }
}

#[async_trait]
impl ChatModel for Provider {
    fn id(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: ChatRequest) -> Result<Completion, ModelError> {
        let cold = {
            let mut anchor = self.anchor.lock().unwrap();
            if anchor.is_none() {
                // The wall clock's boundaries, placed on the paused clock at the first request
                // (what the scheduler does when it creates the key's window).
                let wall = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap();
                let into = wall.as_nanos() % self.period.as_nanos();
                let to_next = self.period.as_nanos() - into;
                *anchor = Some(Instant::now() + Duration::from_nanos(to_next as u64));
            }
            let mut seen = self.seen.lock().unwrap();
            seen.sent += 1;
            seen.sent <= self.cold
        };
        let delay = if cold { self.delay.0 } else { self.delay.1 };
        tokio::time::sleep(delay).await;
        let verdict = self.judge(Instant::now());
        tokio::time::sleep(self.delay.1).await;
        match verdict {
            Some(remaining) => {
                let mut done = completion(Usage::new(1, 1));
                if self.headers {
                    done.rate_limits = Some(RateLimitReading {
                        limit_requests: Some(self.limit),
                        remaining_requests: Some(remaining),
                        ..RateLimitReading::default()
                    });
                }
                Ok(done)
            }
            None => {
                // LiteLLM's 429 (issue 10), through the HTTP provider's classifier.
                let body = format!(
                    r#"{{"error":{{"message":"litellm.RateLimitError: No deployments available for selected model. Passed model=m. Deployments={{'current_rpm': {}, 'rpm_limit': {}}}","type":"throttling_error","param":null,"code":"429"}}}}"#,
                    self.admits, self.limit
                );
                Err(classify(429, RateLimitReading::default(), body.as_bytes()))
            }
        }
    }
}

/// Runs `chats` conversations of `turns` sequential calls each on `scheduler`; returns how many
/// calls failed.
async fn run(scheduler: &QuotaScheduler, provider: &Provider, chats: usize, turns: usize) -> usize {
    let budget = Budget::unlimited();
    let mut tasks = Vec::new();
    for c in 0..chats {
        let (s, p, b) = (scheduler.clone(), provider.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let conversation = format!("chat-{c}");
            let mut failed = 0;
            for _ in 0..turns {
                let call = ModelCall::new(&p, request(1), CallKind::Reply, &conversation, "a", &b);
                failed += usize::from(s.call(call).await.is_err());
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    failed
}

fn scheduler(quota: Quota) -> QuotaScheduler {
    QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", quota)
        .build()
        .unwrap()
}

const PERIOD: Duration = Duration::from_secs(6);

#[tokio::test(start_paused = true)]
async fn configured_clock_windows_never_overfill_a_provider_window() {
    let provider = Provider::new(Counting::ClockWindows, 10, PERIOD);
    let quota = Quota::per_period(PERIOD)
        .requests(10)
        .limiter(Limiter::FixedWindow(WindowStart::Clock));
    let s = scheduler(quota);
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    assert_eq!(provider.rejected(), 0, "no 429 with the window configured");
    let mut per_window: HashMap<i128, u64> = HashMap::new();
    for t in provider.admitted() {
        *per_window.entry(provider.window_of(t)).or_default() += 1;
    }
    assert!(per_window.values().all(|n| *n <= 10), "{per_window:?}");
    // 40 calls at 10 a window: four windows, each used in full — or five when the run starts
    // within the skew margin of a boundary, where the first calls count in both windows on the
    // client's side (the provider may count them in either).
    assert!((4..=5).contains(&per_window.len()), "{per_window:?}");
}

/// LiteLLM admits `rpm_limit − 1`: configured with the limit it reports, the first window's last
/// call gets one hint-less 429, the window's real allowance is learned, and nothing fails.
#[tokio::test(start_paused = true)]
async fn litellm_s_off_by_one_costs_one_429_then_is_learned() {
    let provider = Provider::new(Counting::ClockWindows, 10, PERIOD).off_by_one();
    let quota = Quota::per_period(PERIOD)
        .requests(10)
        .limiter(Limiter::FixedWindow(WindowStart::Clock));
    let s = scheduler(quota);
    assert_eq!(
        run(&s, &provider, 8, 5).await,
        0,
        "a 429 means wait, not fail"
    );
    assert_eq!(provider.rejected(), 1);
    let key = &s.snapshot().keys["m"];
    assert_eq!(key.learned.window_requests, Some(9));
    assert_eq!(key.limits.requests.map(|r| r.limit), Some(9));
}

/// The issue's failing case: limits configured as a bucket (`--rpm 60 --period-seconds 60`)
/// against LiteLLM's fixed windows with its off-by-one. The first hint-less 429 makes the key
/// take the limit for a clock-aligned window; it never releases a burst into the closed window
/// and probes once at the boundary.
#[tokio::test(start_paused = true)]
async fn a_bucket_against_litellm_windows_learns_them_without_a_storm() {
    let provider = Provider::new(Counting::ClockWindows, 10, PERIOD)
        .off_by_one()
        .with_headers();
    let s = scheduler(Quota::per_period(PERIOD).requests(10));
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    eprintln!(
        "bucket against LiteLLM: {} 429s for 40 calls",
        provider.rejected()
    );
    assert!(provider.rejected() <= 2, "{} 429s", provider.rejected());
    let key = &s.snapshot().keys["m"];
    assert_eq!(
        key.limits.requests.map(|r| r.limiter),
        Some(Limiter::FixedWindow(WindowStart::Clock))
    );
    // After the first 429, no provider window ever received more than it admits.
    let mut per_window: HashMap<i128, u64> = HashMap::new();
    for t in provider.admitted() {
        *per_window.entry(provider.window_of(t)).or_default() += 1;
    }
    assert!(per_window.values().all(|n| *n <= 9), "{per_window:?}");
}

/// Another client has already spent 7 of the 9 calls a LiteLLM window admits (it reports a
/// limit of 10) when this run starts: two runs back to back against a real proxy, the second
/// starting with the first's tail counted. Configured as LiteLLM counts (9 per clock window), the
/// key reads each answer's `remaining` against the limit the proxy reports: one conversation,
/// whose every call is answered before the next is sent, meets no 429 (taking "1 remaining" at
/// its word — of 10, where 9 are admitted — sent one call too many). Eight conversations send
/// eight calls before any answer: six of those can only be refused, and one more leaves on the
/// first answer, which predates the second success.
#[tokio::test(start_paused = true)]
async fn a_window_another_client_has_spent_stops_the_key_at_its_answers() {
    for (chats, most) in [(1, 0), (8, 7)] {
        let provider = Provider::new(Counting::ClockWindows, 10, PERIOD)
            .off_by_one()
            .with_headers()
            .with_prior(7);
        let quota = Quota::per_period(PERIOD)
            .requests(9)
            .limiter(Limiter::FixedWindow(WindowStart::Clock));
        let s = scheduler(quota);
        assert_eq!(run(&s, &provider, chats, 5).await, 0);
        assert!(
            provider.rejected() <= most,
            "{chats} chats: {} 429s",
            provider.rejected()
        );
    }
}

/// Nothing configured: the key learns the limit from LiteLLM's success headers, the window from
/// its first hint-less 429, and the off-by-one from where that window closed.
#[tokio::test(start_paused = true)]
async fn nothing_configured_learns_litellm_s_windows() {
    let provider = Provider::new(Counting::ClockWindows, 10, PERIOD)
        .off_by_one()
        .with_headers();
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .default_quota(Quota::per_period(PERIOD))
        .build()
        .unwrap();
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    eprintln!(
        "learned LiteLLM windows: {} 429s for 40 calls",
        provider.rejected()
    );
    assert!(provider.rejected() <= 3, "{} 429s", provider.rejected());
    let key = &s.snapshot().keys["m"];
    assert_eq!(key.learned.requests, Some(10));
    assert!(matches!(
        key.limits.requests.map(|r| r.limiter),
        Some(Limiter::FixedWindow(_))
    ));
}

/// After a hint-less 429 the key stays in debt: until a success, the provider sees one request
/// at a time, never a burst of what a bucket refilled meanwhile.
#[tokio::test(start_paused = true)]
async fn no_burst_after_a_hint_less_429() {
    let provider = Provider::new(Counting::ClockWindows, 10, PERIOD).off_by_one();
    // A continuous bucket refills 10 every 6 s: while the window is closed it would earn a burst.
    let s = scheduler(
        Quota::per_period(PERIOD)
            .requests(10)
            .learn_from_headers(false),
    );
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    let seen = provider.seen.lock().unwrap();
    for (i, (at, ok)) in seen.arrivals.iter().enumerate() {
        if *ok {
            continue;
        }
        // Every arrival after a 429 up to the next success, in flight one at a time: at most
        // one within any round trip (10 ms here).
        let until = seen.arrivals[i + 1..]
            .iter()
            .position(|(_, ok)| *ok)
            .map_or(seen.arrivals.len(), |p| i + 1 + p + 1);
        let after: Vec<Instant> = seen.arrivals[i + 1..until]
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t > *at + Duration::from_millis(20))
            .collect();
        for pair in after.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(10),
                "burst after a 429"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn configured_sliding_windows_draw_no_429s() {
    let provider = Provider::new(Counting::Sliding, 10, PERIOD);
    let s = scheduler(
        Quota::per_period(PERIOD)
            .requests(10)
            .limiter(Limiter::SlidingWindow),
    );
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    assert_eq!(provider.rejected(), 0);
    let admitted = provider.admitted();
    for (i, start) in admitted.iter().enumerate() {
        let n = admitted[i..]
            .iter()
            .take_while(|t| **t < *start + PERIOD)
            .count();
        assert!(n <= 10, "{n} in one window");
    }
}

/// Issue 10 item 5: a continuous bucket configured exactly, with a first burst that travels
/// slower than the rest (cold connections). The provider's bucket starts refilling when that
/// request arrives; the key's own bucket gives up the refill of its first round trip when the
/// first answer comes, so no later, faster request arrives before its refill. No warm-up call.
/// The same holds with a shared state (`QuotaState::lag`, what Redis gets too).
#[tokio::test(start_paused = true)]
async fn exact_limits_draw_no_429_at_cold_start() {
    for shared in [false, true] {
        for chats in [20, 50] {
            let provider = Provider::new(Counting::Bucket, 10, PERIOD).with_delay(
                10,
                Duration::from_millis(40),
                Duration::from_millis(2),
            );
            let mut builder = QuotaScheduler::builder()
                .estimator(ExactEstimator)
                .quota("m", Quota::per_period(PERIOD).requests(10));
            if shared {
                builder = builder.state(Arc::new(InMemoryState::new()));
            }
            let s = builder.build().unwrap();
            assert_eq!(run(&s, &provider, chats, 2).await, 0);
            assert_eq!(provider.rejected(), 0, "{chats} chats, shared {shared}");
        }
    }
}

/// A responder answering like a provider whose request limit is described by `reading(n, now)`
/// for the `n`-th call (from 0), after 50 ms.
fn reporting(
    reading: impl Fn(u64, Instant) -> RateLimitReading + Send + Sync + 'static,
) -> scheduler_support::TimedModel {
    let calls = Arc::new(Mutex::new(0u64));
    let model = agent_core::ScriptedModel::new("m").with_responder(move |_| {
        let mut n = calls.lock().unwrap();
        let mut done = completion(Usage::new(1, 1));
        done.rate_limits = Some(reading(*n, Instant::now()));
        *n += 1;
        Ok(done)
    });
    scheduler_support::TimedModel::new(model).with_latency(Duration::from_millis(50))
}

async fn sequential_calls(s: &QuotaScheduler, model: &scheduler_support::TimedModel, n: usize) {
    let budget = Budget::unlimited();
    for _ in 0..n {
        let call = ModelCall::new(model, request(1), CallKind::Reply, "c", "a", &budget);
        s.call(call).await.unwrap();
    }
}

/// A bucket of 60 per 12 s (OpenAI-style reset: the time until full again) teaches its period:
/// nothing configured but the default minute, the learned limit counts over 12 s.
#[tokio::test(start_paused = true)]
async fn a_bucket_s_period_is_learned_from_its_reset_headers() {
    let model = reporting(|n, _| {
        let remaining = 59 - n.min(59);
        RateLimitReading {
            limit_requests: Some(60),
            remaining_requests: Some(remaining),
            reset_requests: Some(Duration::from_millis(200 * (60 - remaining))),
            ..RateLimitReading::default()
        }
    });
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .build()
        .unwrap();
    sequential_calls(&s, &model, 5).await;
    let key = &s.snapshot().keys["m"];
    assert_eq!(key.learned.requests_limiter, Some(Limiter::Bucket));
    assert_eq!(key.learned.requests_period, Some(Duration::from_secs(12)));
    let rate = key.limits.requests.unwrap();
    assert_eq!((rate.limit, rate.period), (60, Duration::from_secs(12)));
}

/// A window whose reset counts down to a fixed boundary while `remaining` falls is a fixed
/// window: the key takes it for one, aligned to that boundary.
#[tokio::test(start_paused = true)]
async fn a_window_is_learned_from_reset_headers_that_count_down() {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(30);
    let model = reporting(move |n, now| RateLimitReading {
        limit_requests: Some(60),
        remaining_requests: Some(59 - n.min(59)),
        reset_requests: Some(end.saturating_duration_since(now)),
        ..RateLimitReading::default()
    });
    // Configured as a bucket (the default) with the right limit: evidence replaces the default.
    let s = scheduler(Quota::per_minute().requests(60));
    sequential_calls(&s, &model, 5).await;
    let key = &s.snapshot().keys["m"];
    assert_eq!(
        key.limits.requests.map(|r| r.limiter),
        Some(Limiter::FixedWindow(WindowStart::Clock))
    );
    // A limiter the user chose is never replaced.
    let model = reporting(move |n, now| RateLimitReading {
        limit_requests: Some(60),
        remaining_requests: Some(59 - n.min(59)),
        reset_requests: Some(end.saturating_duration_since(now)),
        ..RateLimitReading::default()
    });
    let s = scheduler(
        Quota::per_minute()
            .requests(60)
            .limiter(Limiter::SlidingWindow),
    );
    sequential_calls(&s, &model, 5).await;
    assert_eq!(
        s.snapshot().keys["m"].limits.requests.map(|r| r.limiter),
        Some(Limiter::SlidingWindow)
    );
}

/// Windows anchored at the first request: the probe at the clock's boundary finds the window
/// still closed, later probes go at growing intervals, and the success re-anchors the key's
/// window at the probe. Every call completes; the 429s stay a handful, never a storm.
#[tokio::test(start_paused = true)]
async fn first_request_windows_are_found_by_probing() {
    let provider = Provider::new(Counting::FirstRequestWindows, 10, PERIOD)
        .off_by_one()
        .with_headers();
    let s = scheduler(Quota::per_period(PERIOD).requests(10));
    assert_eq!(run(&s, &provider, 8, 5).await, 0);
    let rejected = provider.rejected();
    eprintln!("first-request windows: {rejected} 429s for 40 calls");
    assert!(rejected <= 8, "{rejected} 429s for 40 calls");
    let key = &s.snapshot().keys["m"];
    assert_eq!(key.learned.window_requests, Some(9));
}
