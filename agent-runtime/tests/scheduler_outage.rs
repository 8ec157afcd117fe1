//! Provider outages and the circuit breaker: while a key's circuit is open calls wait (and a
//! half-open probe tests recovery) instead of failing; fail-fast stays an option; the wait is
//! cancellable and bounded; counters add up when the breaker refuses a retry.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, ChatModel, ChatRequest, Completion, ModelError, Usage, async_trait,
};
use agent_runtime::scheduler::{
    CircuitState, ModelCall, Quota, QuotaScheduler, RetryPolicy, WhenOpen,
};
use scheduler_support::{ExactEstimator, completion, request};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Refuses connections (a transient error) until `up_at`, then answers.
#[derive(Debug, Clone)]
struct Outage {
    up_at: Instant,
    requests: Arc<AtomicUsize>,
}

impl Outage {
    fn for_(d: Duration) -> Self {
        Self {
            up_at: Instant::now() + d,
            requests: Arc::default(),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ChatModel for Outage {
    fn id(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: ChatRequest) -> Result<Completion, ModelError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if Instant::now() < self.up_at {
            return Err(ModelError::Transient {
                status: None,
                retry_after: None,
                message: "connection refused".into(),
            });
        }
        Ok(completion(Usage::new(10, 5)))
    }
}

fn scheduler(policy: RetryPolicy, max_wait: Duration) -> QuotaScheduler {
    QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", Quota::per_minute().requests(10_000))
        .retry(policy.seed(3))
        .max_admission_wait(max_wait)
        .build()
        .unwrap()
}

fn call<'a>(model: &'a Outage, conversation: &'a str, budget: &'a Budget) -> ModelCall<'a> {
    ModelCall::new(
        model,
        request(10),
        CallKind::Reply,
        conversation,
        "a",
        budget,
    )
}

#[tokio::test(start_paused = true)]
async fn forty_calls_survive_a_two_second_outage_by_waiting_for_the_circuit() {
    let policy = RetryPolicy::default()
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .breaker(5, Duration::from_millis(500));
    let s = scheduler(policy, Duration::from_secs(60));
    let model = Outage::for_(Duration::from_secs(2));
    let budget = Budget::unlimited();
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let results =
        futures::future::join_all(names.iter().map(|n| s.call(call(&model, n, &budget)))).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    let k = &s.snapshot().keys["m"];
    assert_eq!(k.succeeded, 40);
    assert_eq!(k.attempts, k.calls + k.retries, "{k:?}");
    // The breaker kept the outage from multiplying load: the first wave, about one probe per
    // cool-down (2 s / 0.5 s), then each call's one successful attempt — not 40 × 6 attempts.
    assert!(
        model.requests() <= 40 + 6 + 40,
        "{} requests",
        model.requests()
    );
    assert_eq!(k.circuit, Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refuses_at_once_and_the_refused_retry_is_not_counted() {
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .breaker(1, Duration::from_secs(60))
        .when_open(WhenOpen::FailFast);
    let s = scheduler(policy, Duration::from_secs(600));
    let model = Outage::for_(Duration::from_secs(3_600));
    let budget = Budget::unlimited();
    // The first attempt fails and opens the circuit; the retry is refused by the breaker.
    let err = s.call(call(&model, "c", &budget)).await.unwrap_err();
    assert!(matches!(err, CallError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(model.requests(), 1);
    let k = &s.snapshot().keys["m"];
    assert_eq!((k.calls, k.attempts, k.retries), (1, 1, 0));
    assert_eq!(k.attempts, k.calls + k.retries);
    assert_eq!(k.circuit_rejections, 1);
    let c = &s.snapshot().conversations["c"];
    assert_eq!((c.calls, c.attempts, c.retries), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_the_circuit_is_cancellable_and_bounded_by_the_admission_wait() {
    let policy = RetryPolicy::default()
        .max_attempts(1)
        .breaker(1, Duration::from_secs(30));
    let s = scheduler(policy, Duration::from_secs(60));
    let model = Outage::for_(Duration::from_secs(3_600));
    let budget = Budget::unlimited();
    assert!(s.call(call(&model, "c", &budget)).await.is_err());

    // Waiting: cancelled after 5 s.
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let (result, ()) = tokio::join!(
        s.call(call(&model, "c", &budget).with_cancel(&cancel)),
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cancel.cancel();
        }
    );
    assert!(matches!(result, Err(CallError::Cancelled)), "{result:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(
        model.requests(),
        1,
        "nothing reached the provider while open"
    );

    // A circuit open longer than the admission wait fails at once, saying when to retry.
    let s = scheduler(
        RetryPolicy::default()
            .max_attempts(1)
            .breaker(1, Duration::from_secs(120)),
        Duration::from_secs(60),
    );
    assert!(s.call(call(&model, "c", &budget)).await.is_err());
    let start = Instant::now();
    let err = s.call(call(&model, "c", &budget)).await.unwrap_err();
    let CallError::CircuitOpen { retry_after, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(retry_after > Duration::from_secs(60));
}
