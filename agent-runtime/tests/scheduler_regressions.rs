//! Regressions of the scheduler review: each test failed before its fix. Everything runs on
//! tokio's paused clock; shared-backend races are reproduced with a slow in-memory backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scheduler_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, ModelError, RateLimitReading, ScriptedModel, Usage, async_trait,
};
use agent_runtime::scheduler::{
    Acquire, Cost, InMemoryState, Lease, Limits, ModelCall, Quota, QuotaScheduler, QuotaState,
    Settlement, StateError,
};
use scheduler_support::{ExactEstimator, TimedModel, completion, rate_limited, request};

/// An [`InMemoryState`] whose operations take `latency` (a network round trip), counting what is
/// still held.
#[derive(Debug, Default)]
struct SlowState {
    inner: InMemoryState,
    latency: Duration,
    settle_latency: Duration,
    granted: AtomicU64,
    settled: AtomicU64,
    settlements: Mutex<Vec<Settlement>>,
}

impl SlowState {
    fn new(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    fn held(&self) -> u64 {
        self.granted.load(Ordering::SeqCst) - self.settled.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl QuotaState for SlowState {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        // Decided at once, answered after the latency: like a Redis script whose reply is still
        // on the wire.
        let answer = self.inner.acquire(key, limits, cost, lease_ttl).await?;
        if matches!(answer, Acquire::Granted(_)) {
            self.granted.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.latency).await;
        Ok(answer)
    }

    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
        tokio::time::sleep(self.settle_latency).await;
        self.settlements.lock().unwrap().push(settlement);
        self.settled.fetch_add(1, Ordering::SeqCst);
        self.inner.settle(key, limits, lease, settlement).await
    }

    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError> {
        self.inner.pause_until(key, retry_after).await
    }

    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError> {
        self.inner.observe(key, limits, reading).await
    }
}

fn usage(tokens: u64) -> Usage {
    Usage::new(tokens, 0)
}

/// Review item 1: a higher-priority call that became head while the head's remote acquire was in
/// flight used to lose its queue slot to the head's grant (popped "whoever is head now"): it
/// waited forever and the granted call's slot stayed queued.
#[tokio::test(start_paused = true)]
async fn a_grant_removes_its_own_slot_not_the_new_head() {
    let state = Arc::new(SlowState::new(Duration::from_millis(10)));
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(1))
        .estimator(ExactEstimator)
        .state(state.clone())
        .build()
        .unwrap();
    let model = TimedModel::answering("m", usage(1));
    let budget = Budget::unlimited();
    let low = ModelCall::new(&model, request(1), CallKind::Reply, "a", "x", &budget);
    let high =
        ModelCall::new(&model, request(1), CallKind::Reply, "b", "x", &budget).with_priority(5);
    let both = async {
        tokio::join!(scheduler.call(low), async {
            // Arrives while the first call's acquire is on the wire.
            tokio::time::sleep(Duration::from_millis(1)).await;
            scheduler.call(high).await
        })
    };
    let (low, high) = tokio::time::timeout(Duration::from_secs(5 * 60), both)
        .await
        .expect("both calls finish: the second one after one refill of the request bucket");
    low.unwrap();
    high.unwrap();
    assert_eq!(model.count(), 2);
    assert_eq!(scheduler.snapshot().keys["m"].queued, 0, "no orphaned slot");
    assert_eq!(state.held(), 0);
}

fn scripted(id: &str, errors: Vec<ModelError>, then: Usage) -> TimedModel {
    let script = Arc::new(Mutex::new(errors));
    TimedModel::new(ScriptedModel::new(id).with_responder(move |_| {
        let mut script = script.lock().unwrap();
        if script.is_empty() {
            Ok(completion(then))
        } else {
            Err(script.remove(0))
        }
    }))
}

/// Review item 2: a provider's absurd retry hint (`retry-after: 1e19`) used to panic the call with
/// "overflow when adding duration to instant" before it was compared with `max_admission_wait`.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_hint_fails_the_call_instead_of_panicking() {
    for shared in [false, true] {
        let mut builder = QuotaScheduler::builder().quota("m", Quota::per_minute().requests(10));
        if shared {
            builder = builder.state(Arc::new(InMemoryState::new()));
        }
        let scheduler = builder.build().unwrap();
        let model = scripted("m", vec![rate_limited(Some(Duration::MAX))], usage(1));
        let budget = Budget::unlimited();
        let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
        let err = scheduler.call(call).await.unwrap_err();
        assert!(
            matches!(err, CallError::RateLimitWaitExceeded { .. }),
            "{err:?}"
        );
        // The key stays paused (far in the future) and refuses at once rather than hanging.
        let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
        let err = scheduler.call(call).await.unwrap_err();
        assert!(
            matches!(err, CallError::Model(ModelError::RateLimited { .. })),
            "{err:?}"
        );
        assert_eq!(model.count(), 1);
    }
}

fn unavailable(retry_after: Option<Duration>) -> ModelError {
    ModelError::Transient {
        status: Some(503),
        retry_after,
        message: "overloaded".into(),
    }
}

/// Review item 3: a 503 with `Retry-After: 86400` used to sleep a day, ignoring
/// `max_admission_wait`.
#[tokio::test(start_paused = true)]
async fn a_transient_hint_beyond_the_admission_wait_returns_the_error() {
    let scheduler = QuotaScheduler::builder()
        .max_admission_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let model = scripted(
        "m",
        vec![unavailable(Some(Duration::from_secs(86_400)))],
        usage(1),
    );
    let budget = Budget::unlimited();
    let start = tokio::time::Instant::now();
    let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
    let err = scheduler.call(call).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Model(ModelError::Transient {
                status: Some(503),
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(model.count(), 1);
    assert!(start.elapsed() < Duration::from_secs(60));
    // A hint within the wait is honoured.
    let model = scripted(
        "m",
        vec![unavailable(Some(Duration::from_secs(30)))],
        usage(1),
    );
    let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
    scheduler.call(call).await.unwrap();
    let seen = model.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(30));
}

/// Review item 8, and issue 10: a hint-less 429 used to pause for a jittered backoff, so a key
/// was retried at least twice a second however long the storm lasted, and each retry used up an
/// attempt. Now the key probes, one call at a time: first at the next boundary of the wall
/// clock's period (a gateway's minute), then every period/8, doubling to period/2 — and the 429s
/// use up no attempt (five 429s and a success with two attempts allowed).
#[tokio::test(start_paused = true)]
async fn hint_less_429s_probe_at_growing_intervals_and_use_no_attempts() {
    let period = Duration::from_secs(8);
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_period(period).requests(1_000))
        .retry(agent_runtime::scheduler::RetryPolicy::default().max_attempts(2))
        .build()
        .unwrap();
    let model = scripted("m", vec![rate_limited(None); 5], usage(1));
    let budget = Budget::unlimited();
    let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
    scheduler.call(call).await.unwrap();
    let seen = model.seen();
    assert_eq!(seen.len(), 6, "five 429s did not use up two attempts");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    // To the next boundary of 8 s on the wall clock, plus a margin of period/50.
    let margin = period / 50;
    assert!(gaps[0] > margin && gaps[0] <= period + margin, "{gaps:?}");
    let s = |ms| Duration::from_millis(ms);
    assert_eq!(gaps[1..], [s(1_000), s(2_000), s(4_000), s(4_000)]);
    let k = &scheduler.snapshot().keys["m"];
    assert_eq!((k.attempts, k.retries, k.rate_limited.total()), (6, 5, 5));
}

/// Review item 8 (breaker): a 429 is an answer from a reachable provider, so it resets the run of
/// consecutive transient failures, as docs/quota.md says.
#[tokio::test(start_paused = true)]
async fn a_429_resets_the_breakers_failure_run() {
    let scheduler = QuotaScheduler::builder()
        .retry(
            agent_runtime::scheduler::RetryPolicy::default()
                .breaker(2, Duration::from_secs(60))
                .seed(1),
        )
        .build()
        .unwrap();
    let model = scripted(
        "m",
        vec![
            unavailable(None),
            rate_limited(Some(Duration::from_secs(1))),
            unavailable(None),
        ],
        usage(1),
    );
    let budget = Budget::unlimited();
    let call = ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
    scheduler.call(call).await.unwrap();
    assert_eq!(model.count(), 4);
}

/// Review item 4: dropping the call while a shared backend settled it dropped the budget
/// reservation unsettled, refunding a call the provider had answered.
#[tokio::test(start_paused = true)]
async fn dropping_the_call_during_the_remote_settle_keeps_it_charged_and_settles() {
    let state = Arc::new(SlowState {
        settle_latency: Duration::from_millis(10),
        ..SlowState::default()
    });
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(10).tokens(1_000))
        .estimator(ExactEstimator)
        .state(state.clone())
        .build()
        .unwrap();
    let model = TimedModel::answering("m", usage(7));
    let budget = Budget::unlimited();
    let call = ModelCall::new(&model, request(5), CallKind::Reply, "c", "x", &budget);
    let dropped = tokio::time::timeout(Duration::from_millis(5), scheduler.call(call)).await;
    assert!(dropped.is_err(), "dropped during the 10 ms settle");
    assert_eq!(model.count(), 1);
    assert_eq!(budget.used().calls, 1, "the answered call stays charged");
    assert_eq!(budget.used().tokens, 7, "to its reported usage");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(state.held(), 0, "the settle finished in the background");
    assert_eq!(state.settlements.lock().unwrap()[0].actual_tokens, 7);
}

/// Review item 5: a call cancelled (or dropped) while the backend's grant was on the wire left the
/// lease held with nobody to settle it — slot and tokens taken until the lease expired.
#[tokio::test(start_paused = true)]
async fn a_grant_arriving_after_cancellation_is_given_back() {
    for drop_future in [false, true] {
        let state = Arc::new(SlowState::new(Duration::from_millis(10)));
        let scheduler = QuotaScheduler::builder()
            .quota("m", Quota::per_minute().tokens(100).max_in_flight(1))
            .estimator(ExactEstimator)
            .state(state.clone())
            .build()
            .unwrap();
        let model = TimedModel::answering("m", usage(1));
        let budget = Budget::unlimited();
        let cancel = tokio_util::sync::CancellationToken::new();
        let call = ModelCall::new(&model, request(60), CallKind::Reply, "c", "x", &budget)
            .with_cancel(&cancel);
        let result = tokio::time::timeout(Duration::from_millis(5), async {
            if drop_future {
                scheduler.call(call).await
            } else {
                let trigger = async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    cancel.cancel();
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    r = scheduler.call(call) => r,
                    () = trigger => unreachable!(),
                }
            }
        })
        .await;
        match result {
            Err(_) => assert!(drop_future),
            Ok(r) => assert!(matches!(r, Err(CallError::Cancelled)), "{r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(model.count(), 0);
        assert_eq!(
            state.held(),
            0,
            "the grant was released (drop: {drop_future})"
        );
        assert_eq!(state.settlements.lock().unwrap()[0].actual_tokens, 0);
        // The slot and the 60 tokens are back: the next 60-token call fits at once.
        let call = ModelCall::new(&model, request(60), CallKind::Reply, "c", "x", &budget);
        let at = tokio::time::Instant::now();
        scheduler.call(call).await.unwrap();
        assert_eq!(at.elapsed(), Duration::from_millis(10), "one round trip");
        assert_eq!(budget.used().calls, 1);
    }
}

/// Review item 6: `max_admission_wait` bound only a head with a known wait; a head waiting for an
/// in-flight slot and every call behind it waited for as long as the slot was held.
#[tokio::test(start_paused = true)]
async fn every_waiter_gives_up_after_max_admission_wait() {
    for shared in [false, true] {
        let mut builder = QuotaScheduler::builder()
            .quota("m", Quota::per_minute().max_in_flight(1))
            .max_admission_wait(Duration::from_secs(60));
        if shared {
            builder = builder.state(Arc::new(InMemoryState::new()));
        }
        let scheduler = builder.build().unwrap();
        let model = TimedModel::answering("m", usage(1)).with_latency(Duration::from_secs(600));
        let budget = Budget::unlimited();
        let start = tokio::time::Instant::now();
        let call = |conversation| {
            ModelCall::new(
                &model,
                request(1),
                CallKind::Reply,
                conversation,
                "x",
                &budget,
            )
        };
        let late = |c| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let r = scheduler.call(c).await;
            (r, start.elapsed())
        };
        let (holder, head, behind) =
            tokio::join!(scheduler.call(call("a")), late(call("b")), late(call("b")));
        holder.unwrap();
        for (r, at) in [head, behind] {
            assert!(
                matches!(r, Err(CallError::Model(ModelError::RateLimited { .. }))),
                "{r:?}"
            );
            assert!(at <= Duration::from_secs(61), "gave up at {at:?}");
        }
        assert_eq!(scheduler.snapshot().keys["m"].queued, 0);
    }
}

/// Review item 7: `max_admission_wait(Duration::MAX)` and a `Duration::MAX` breaker cool-down
/// panicked at run time ("overflow when adding duration to instant").
#[tokio::test(start_paused = true)]
async fn maximal_durations_in_settings_do_not_panic() {
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(1))
        .max_admission_wait(Duration::MAX)
        .retry(
            agent_runtime::scheduler::RetryPolicy::default()
                .max_attempts(1)
                .breaker(1, Duration::MAX)
                .when_open(agent_runtime::scheduler::WhenOpen::FailFast),
        )
        .build()
        .unwrap();
    let model = scripted("m", vec![unavailable(None)], usage(1));
    let budget = Budget::unlimited();
    let call = || ModelCall::new(&model, request(1), CallKind::Reply, "c", "x", &budget);
    // The first call fails once and opens the circuit for "ever".
    assert!(matches!(
        scheduler.call(call()).await,
        Err(CallError::RetriesExhausted { .. })
    ));
    assert!(matches!(
        scheduler.call(call()).await,
        Err(CallError::CircuitOpen { .. })
    ));
    // A waiting call with an unbounded admission wait waits for the refill.
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(1))
        .max_admission_wait(Duration::MAX)
        .build()
        .unwrap();
    let model = TimedModel::answering("m", usage(1));
    let (a, b) = tokio::join!(scheduler.call(call_on(&model, &budget)), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        scheduler.call(call_on(&model, &budget)).await
    });
    a.unwrap();
    b.unwrap();
    let seen = model.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(60));
}

fn call_on<'a>(model: &'a TimedModel, budget: &'a Budget) -> ModelCall<'a> {
    ModelCall::new(model, request(1), CallKind::Reply, "c", "x", budget)
}

/// Review item 7: a zero poll interval or lease TTL was reported as "quota '': …".
#[test]
fn zero_shared_state_settings_name_the_setting() {
    let state = || Arc::new(InMemoryState::new());
    let err = QuotaScheduler::builder()
        .state(state())
        .poll_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("poll_interval"), "{err}");
    let err = QuotaScheduler::builder()
        .state(state())
        .lease_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("lease_ttl"), "{err}");
    assert!(!err.to_string().contains("quota ''"), "{err}");
}

/// Review item 10: usage sums in the scheduler's counters overflowed (a debug-build panic) on a
/// provider reporting absurd usage.
#[tokio::test(start_paused = true)]
async fn absurd_reported_usage_saturates_the_counters() {
    let scheduler = QuotaScheduler::new();
    let model = TimedModel::answering("m", Usage::new(u64::MAX, 0));
    let budget = Budget::unlimited();
    for _ in 0..2 {
        scheduler.call(call_on(&model, &budget)).await.unwrap();
    }
    let snapshot = scheduler.snapshot();
    assert_eq!(snapshot.keys["m"].prompt_tokens, u64::MAX);
    assert_eq!(snapshot.conversations["c"].prompt_tokens, u64::MAX);
}

#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String, u32, u64)>>,
}

impl agent_runtime::scheduler::CallObserver for Recorder {
    fn call_finished(
        &self,
        info: &agent_runtime::scheduler::CallInfo<'_>,
        _result: Result<&agent_core::Completion, &CallError>,
    ) {
        self.calls.lock().unwrap().push((
            info.key.to_owned(),
            info.model.to_owned(),
            info.attempts,
            info.cost_nanos,
        ));
    }
}

/// Review item 11: observers only got the quota key, so a chat priced cost by the key (any label)
/// while the budget priced by the model's id. The scheduler now hands over the model and the cost
/// it charged.
#[tokio::test(start_paused = true)]
async fn observers_get_the_model_and_the_cost_the_budget_was_charged() {
    let scheduler = QuotaScheduler::new();
    let model = TimedModel::answering("gpt", Usage::new(1_000_000, 0));
    let prices = agent_core::PriceTable::new().with("gpt", 2.0, 8.0);
    let budget = Budget::with_prices("run", agent_core::BudgetLimits::calls(10), prices);
    let recorder = Recorder::default();
    let call = call_on(&model, &budget)
        .with_quota_key("tenant-7")
        .with_observer(&recorder);
    scheduler.call(call).await.unwrap();
    let calls = recorder.calls.lock().unwrap();
    assert_eq!(
        *calls,
        vec![(
            "tenant-7".to_owned(),
            "gpt".to_owned(),
            1,
            2_000_000_000 // $2 for a million input tokens
        )]
    );
    assert!((budget.used().cost_usd - 2.0).abs() < 1e-9);
}

/// Review item 12: `ExceedsQuota.dimension` was a string documented as "tokens"/"requests" that
/// could also read "tokens per day"; it is a typed dimension now.
#[tokio::test(start_paused = true)]
async fn exceeding_a_daily_cap_names_the_daily_dimension() {
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().tokens(1_000).tokens_per_day(100))
        .estimator(ExactEstimator)
        .build()
        .unwrap();
    let model = TimedModel::answering("m", usage(1));
    let budget = Budget::unlimited();
    let call = ModelCall::new(&model, request(500), CallKind::Reply, "c", "x", &budget);
    let err = scheduler.call(call).await.unwrap_err();
    let CallError::ExceedsQuota { dimension, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*dimension, agent_core::QuotaDimension::TokensPerDay);
    assert!(
        err.to_string()
            .contains("needs 500 tokens per day but that limit is 100"),
        "{err}"
    );
}
