//! Per-attempt deadlines in the provider stage: a stalled attempt ends at its deadline as a
//! transient error, releases its quota slot, is retried within the retry budget, and a stalled
//! first call does not hold a learning key's other calls.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_core::{
    Budget, BudgetLimits, CallError, CallKind, ChatModel, ChatRequest, Completion, ModelError,
    Usage, async_trait,
};
use agent_runtime::scheduler::{Deadlines, ModelCall, Quota, QuotaScheduler, RetryPolicy};
use scheduler_support::{ExactEstimator, completion, request};
use tokio::time::Instant;

/// Never answers its first `stalls` requests (they hang until dropped); answers the rest.
#[derive(Debug, Clone)]
struct Stalling {
    stalls: usize,
    seen: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Stalling {
    fn new(stalls: usize) -> Self {
        Self {
            stalls,
            seen: Arc::default(),
            dropped: Arc::default(),
        }
    }
}

/// Counts the stalled requests the scheduler abandoned (dropped the future of).
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl ChatModel for Stalling {
    fn id(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: ChatRequest) -> Result<Completion, ModelError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        if n < self.stalls {
            let _guard = Dropped(self.dropped.clone());
            std::future::pending::<()>().await;
        }
        Ok(completion(Usage::new(10, 5)))
    }
}

fn builder() -> agent_runtime::scheduler::QuotaSchedulerBuilder {
    QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .retry(RetryPolicy::default().seed(7))
}

async fn call(
    s: &QuotaScheduler,
    model: &dyn ChatModel,
    budget: &Budget,
) -> Result<Completion, CallError> {
    s.call(ModelCall::new(
        model,
        request(10),
        CallKind::Reply,
        "c",
        "a",
        budget,
    ))
    .await
}

#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_times_out_releases_its_slot_and_is_retried() {
    let s = builder()
        .quota("m", Quota::per_minute().requests(100).max_in_flight(1))
        .deadlines(Deadlines::new(Duration::from_secs(3)))
        .build()
        .unwrap();
    let model = Stalling::new(1);
    let budget = Budget::unlimited();
    let start = Instant::now();
    let completion = call(&s, &model, &budget).await.unwrap();
    assert_eq!(completion.message.text(), Some("ok"));
    // The stalled attempt ended at its deadline; the retry's backoff is at most the base (0.5 s).
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed <= Duration::from_millis(3_500),
        "{elapsed:?}"
    );
    assert_eq!(
        model.dropped.load(Ordering::SeqCst),
        1,
        "the stalled request was abandoned"
    );
    let k = &s.snapshot().keys["m"];
    assert_eq!((k.calls, k.attempts, k.retries), (1, 2, 1));
    assert_eq!((k.timeouts, k.transient_errors), (1, 1));
    assert_eq!(k.in_flight, 0, "the in-flight slot was released");
    // Both attempts are charged: the provider may have worked on the abandoned one.
    assert_eq!(budget.used().calls, 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_keeps_stalling_fails_typed_within_attempts_times_the_deadline() {
    let s = builder()
        .quota("m", Quota::per_minute().requests(100))
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .breaker(100, Duration::from_secs(1))
                .seed(1),
        )
        .deadlines(Deadlines::new(Duration::from_secs(2)))
        .build()
        .unwrap();
    let model = Stalling::new(usize::MAX);
    let budget = Budget::unlimited();
    let start = Instant::now();
    let err = call(&s, &model, &budget).await.unwrap_err();
    let CallError::RetriesExhausted { attempts, last } = &err else {
        panic!("expected RetriesExhausted, got {err:?}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(last, ModelError::Transient { message, .. } if message.contains("deadline of 2.000s")),
        "{last:?}"
    );
    // Three deadlines plus two backoffs of at most 0.5 s and 1 s: the call cannot hang.
    assert!(
        start.elapsed() <= Duration::from_millis(7_500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.snapshot().keys["m"].timeouts, 3);
}

#[tokio::test(start_paused = true)]
async fn a_call_can_shorten_its_own_deadline() {
    let s = builder()
        .quota("m", Quota::per_minute().requests(100))
        .key_deadlines("m", Deadlines::new(Duration::from_secs(60)))
        .build()
        .unwrap();
    let model = Stalling::new(1);
    let budget = Budget::new("run", BudgetLimits::calls(10));
    let start = Instant::now();
    let call = ModelCall::new(&model, request(10), CallKind::Reply, "c", "a", &budget)
        .with_deadlines(Deadlines::new(Duration::from_millis(250)));
    s.call(call).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_first_call_of_a_learning_key_holds_the_others_only_for_the_probe_time() {
    // No limits configured: the key learns them from the first answer, sending one call alone.
    let s = builder()
        .deadlines(Deadlines::new(Duration::from_secs(60)).probe(Duration::from_secs(2)))
        .build()
        .unwrap();
    let model = Stalling::new(1);
    let budget = Budget::unlimited();
    let first = call(&s, &model, &budget);
    let others = async {
        // Queued behind the first call.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        let results = futures::future::join_all((0..3).map(|_| call(&s, &model, &budget))).await;
        (start.elapsed(), results)
    };
    let (first, (waited, results)) = tokio::join!(first, others);
    assert!(results.iter().all(Result::is_ok));
    assert!(
        waited <= Duration::from_secs(2),
        "the others went after the probe time, not the first call's deadline: {waited:?}"
    );
    // The first call itself ran to its deadline and was retried.
    assert!(first.is_ok());
    assert_eq!(s.snapshot().keys["m"].timeouts, 1);
}

#[test]
fn zero_deadlines_are_refused_at_build() {
    let err = QuotaScheduler::builder()
        .key_deadlines("m", Deadlines::default().idle(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the idle deadline is zero, so every provider attempt would time out; leave the default or set e.g. 60 s"
    );
}
