//! Provider feedback and the one retry layer: 429 pauses with retry hints, errors that are never
//! retried, transient retries with backoff and a retry budget, and the circuit breaker.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::time::Duration;

use agent_core::{Budget, CallError, CallKind, Completion, ModelError, RateLimitKind};
use agent_core::{RateLimitReading, ScriptedModel, Usage};
use agent_runtime::scheduler::{
    CircuitState, ModelCall, Quota, QuotaScheduler, RetryPolicy, WhenOpen,
};
use scheduler_support::{
    ExactEstimator, TimedModel, completion, rate_limited, request, server_error,
};
use tokio::time::Instant;

fn scheduler(policy: RetryPolicy) -> QuotaScheduler {
    QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", Quota::per_minute().requests(1_000).tokens(100_000))
        .retry(policy.seed(42))
        .build()
        .unwrap()
}

async fn call(
    s: &QuotaScheduler,
    model: &TimedModel,
    conversation: &str,
    budget: &Budget,
) -> Result<Completion, CallError> {
    let call = ModelCall::new(
        model,
        request(10),
        CallKind::Reply,
        conversation,
        "agent",
        budget,
    );
    s.call(call).await
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_key_until_the_retry_time_and_the_call_recovers() {
    let s = scheduler(RetryPolicy::default());
    let hinted_in_body = ModelError::RateLimited {
        kind: RateLimitKind::Requests,
        retry_after: None,
        reading: Some(Box::new(RateLimitReading {
            retry_after: Some(Duration::from_millis(1_574)),
            ..RateLimitReading::default()
        })),
        message: "Please try again in 1.574s".into(),
    };
    let model = TimedModel::new(
        ScriptedModel::new("m")
            .error(rate_limited(Some(Duration::from_secs(2))))
            .error(hinted_in_body)
            .with_responder(|_| Ok(completion(Usage::new(10, 5)))),
    );
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let first = {
        let (s, model, budget) = (s.clone(), model.clone(), budget.clone());
        tokio::spawn(async move { call(&s, &model, "a", &budget).await })
    };
    // Another conversation arrives while the key is paused: it must wait for the pause too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snap = s.snapshot();
    assert_eq!(
        snap.keys["m"].paused_for,
        Some(Duration::from_millis(1_500))
    );
    let other = call(&s, &model, "b", &budget);
    let (other, first) = tokio::join!(other, first);
    first.unwrap().unwrap();
    other.unwrap();

    // N = 2 rate limits → exactly N + 1 provider calls for the first call, one for the other.
    let seen = model.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].at, t0);
    // Nothing reached the provider before each retry time.
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.at >= t0 + Duration::from_secs(2))
    );
    let after_second = seen[1].at + Duration::from_millis(1_574);
    assert!(seen[2..].iter().all(|s| s.at >= after_second));
    let k = &s.snapshot().keys["m"];
    assert_eq!(k.rate_limited.tokens, 1);
    assert_eq!(k.rate_limited.requests, 1);
    assert_eq!((k.calls, k.attempts, k.retries, k.succeeded), (2, 4, 2, 2));
    // Every attempt that reached the provider is charged as a model call.
    assert_eq!(budget.used().calls, 4);
    assert_eq!(s.snapshot().conversations["a"].rate_limited, 2);
}

#[tokio::test(start_paused = true)]
async fn errors_that_cannot_pass_are_never_retried() {
    let cases = [
        ModelError::QuotaExhausted {
            message: "You exceeded your current quota".into(),
        },
        ModelError::RequestTooLarge {
            message: "Request too large".into(),
        },
        ModelError::InvalidRequest {
            status: Some(400),
            message: "bad".into(),
        },
    ];
    for error in cases {
        let s = scheduler(RetryPolicy::default());
        let model = TimedModel::new(ScriptedModel::new("m").error(error.clone()).text("never"));
        let budget = Budget::unlimited();
        let err = call(&s, &model, "a", &budget).await.unwrap_err();
        assert_eq!(model.count(), 1, "{error}");
        let CallError::Model(e) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            std::mem::discriminant(e),
            std::mem::discriminant(&error),
            "{err}"
        );
        assert_eq!(s.snapshot().keys["m"].retries, 0);
        assert_eq!(budget.used().calls, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_capped_full_jitter_backoff() {
    let base = Duration::from_millis(200);
    let s = scheduler(RetryPolicy::default().backoff(base, Duration::from_millis(300)));
    let model = TimedModel::new(
        ScriptedModel::new("m")
            .error(server_error())
            .error(server_error())
            .error(server_error())
            .text("ok"),
    );
    let budget = Budget::unlimited();
    call(&s, &model, "a", &budget).await.unwrap();
    let seen = model.seen();
    assert_eq!(seen.len(), 4);
    // Retry n sleeps uniform(0, min(cap, base·2^(n−1))).
    for (n, ceiling) in [(1, 200), (2, 300), (3, 300)] {
        let gap = seen[n].at - seen[n - 1].at;
        assert!(gap <= Duration::from_millis(ceiling), "retry {n}: {gap:?}");
    }
    let k = &s.snapshot().keys["m"];
    assert_eq!((k.transient_errors, k.retries), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn a_provider_retry_after_on_a_transient_error_is_honoured() {
    let s = scheduler(RetryPolicy::default());
    let overloaded = ModelError::Transient {
        status: Some(529),
        retry_after: Some(Duration::from_secs(7)),
        message: "overloaded".into(),
    };
    let model = TimedModel::new(ScriptedModel::new("m").error(overloaded).text("ok"));
    call(&s, &model, "a", &Budget::unlimited()).await.unwrap();
    let seen = model.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn attempts_and_the_retry_budget_bound_retries() {
    // Three attempts at most.
    let s = scheduler(RetryPolicy::default().max_attempts(3));
    let failing = TimedModel::new(ScriptedModel::new("m").with_responder(|_| Err(server_error())));
    let budget = Budget::unlimited();
    let err = call(&s, &failing, "a", &budget).await.unwrap_err();
    assert!(
        matches!(err, CallError::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(failing.count(), 3);

    // A budget of 2 retries per window (no ratio), breaker out of the way and failing fast: the
    // first call uses both retries, later calls in the window get none. (Waiting for the
    // breaker, the default, a spent budget opens the circuit instead: scheduler_outage.rs.)
    let s = scheduler(
        RetryPolicy::default()
            .budget(0.0, 2, Duration::from_secs(60))
            .breaker(1_000, Duration::from_secs(1))
            .when_open(WhenOpen::FailFast),
    );
    let failing = TimedModel::new(ScriptedModel::new("m").with_responder(|_| Err(server_error())));
    let err = call(&s, &failing, "a", &budget).await.unwrap_err();
    assert!(
        matches!(err, CallError::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    for _ in 0..3 {
        let err = call(&s, &failing, "a", &budget).await.unwrap_err();
        assert!(
            matches!(err, CallError::RetriesExhausted { attempts: 1, .. }),
            "{err}"
        );
    }
    assert_eq!(failing.count(), 3 + 3);
}

#[tokio::test(start_paused = true)]
async fn the_circuit_opens_after_repeated_failures_then_probes_and_closes() {
    let cooldown = Duration::from_secs(30);
    let s = scheduler(
        RetryPolicy::default()
            .max_attempts(1)
            .breaker(3, cooldown)
            .when_open(WhenOpen::FailFast),
    );
    let model = TimedModel::new(
        ScriptedModel::new("m")
            .error(server_error())
            .error(server_error())
            .error(server_error())
            .with_responder(|_| Ok(completion(Usage::new(1, 1)))),
    );
    let budget = Budget::unlimited();
    for _ in 0..3 {
        call(&s, &model, "a", &budget).await.unwrap_err();
    }
    let err = call(&s, &model, "a", &budget).await.unwrap_err();
    let CallError::CircuitOpen { key, retry_after } = &err else {
        panic!("{err}")
    };
    assert_eq!((key.as_str(), *retry_after), ("m", cooldown));
    assert_eq!(
        model.count(),
        3,
        "an open circuit fails fast without calling the provider"
    );
    assert_eq!(s.snapshot().keys["m"].circuit_rejections, 1);

    tokio::time::advance(cooldown).await;
    assert_eq!(s.snapshot().keys["m"].circuit, Some(CircuitState::HalfOpen));
    call(&s, &model, "a", &budget).await.unwrap();
    assert_eq!(s.snapshot().keys["m"].circuit, Some(CircuitState::Closed));
    call(&s, &model, "a", &budget).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pause_longer_than_the_max_wait_returns_the_429_instead_of_hanging() {
    let s = QuotaScheduler::builder()
        .max_admission_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let model = TimedModel::new(
        ScriptedModel::new("m")
            .error(rate_limited(Some(Duration::from_secs(3_600))))
            .text("never"),
    );
    let err = call(&s, &model, "a", &Budget::unlimited())
        .await
        .unwrap_err();
    // A typed error naming the key, the limit and what to do, with the provider's 429 inside.
    match &err {
        CallError::RateLimitWaitExceeded {
            key,
            rate_limited,
            last,
            ..
        } => {
            assert_eq!((key.as_str(), *rate_limited), ("m", 1));
            assert!(matches!(**last, ModelError::RateLimited { .. }), "{last}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("max_admission_wait"), "{err}");
    assert_eq!(model.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_that_knows_no_limit_probes_with_one_call_before_the_rest_go_out() {
    // The provider allows 3 requests a minute and says so in its headers; nothing is configured.
    let reading = |remaining| RateLimitReading {
        limit_requests: Some(3),
        remaining_requests: Some(remaining),
        ..RateLimitReading::default()
    };
    let answered = std::sync::atomic::AtomicU64::new(0);
    let model = TimedModel::new(ScriptedModel::new("m").with_responder(move |_| {
        let n = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut c = completion(Usage::new(10, 5));
        c.rate_limits = Some(reading(2u64.saturating_sub(n)));
        Ok(c)
    }))
    .with_latency(Duration::from_secs(1));
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .retry(RetryPolicy::default().seed(1))
        .build()
        .unwrap();
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let calls = (0..4).map(|i| {
        let (s, model, budget) = (&s, &model, &budget);
        async move { call(s, model, &format!("c{i}"), budget).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let seen = model.seen();
    // The probe went alone; its answer taught 3 a minute with 2 left, so two more went at once
    // when it returned (t = 1 s). Their answers (t = 2 s) report 0 left, taken as of arrival with
    // no credit for the latency (docs/quota.md, "tightening"), so the fourth waits a whole
    // request's refill from there: 20 s at 3/min, one response latency later than the provider
    // strictly needed.
    assert_eq!(seen[0].at - t0, Duration::ZERO);
    assert_eq!(seen[0].concurrent, 1);
    assert_eq!(seen[1].at - t0, Duration::from_secs(1));
    assert_eq!(seen[2].at - t0, Duration::from_secs(1));
    assert_eq!(seen[3].at - t0, Duration::from_secs(22));
    let k = &s.snapshot().keys["m"];
    assert_eq!(k.rate_limited.total(), 0);
    assert_eq!(k.limits.requests.map(|r| r.limit), Some(3));
    assert_eq!(k.limits.max_in_flight, None, "the probe ended");
}

#[tokio::test(start_paused = true)]
async fn a_provider_without_headers_costs_one_probe_then_nothing_limits() {
    let model = TimedModel::answering("m", Usage::new(1, 1)).with_latency(Duration::from_secs(1));
    let s = QuotaScheduler::new();
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let calls = (0..5).map(|i| {
        let (s, model, budget) = (&s, &model, &budget);
        async move { call(s, model, &format!("c{i}"), budget).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let seen = model.seen();
    assert_eq!(seen[0].concurrent, 1);
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.at - t0 == Duration::from_secs(1))
    );
    assert_eq!(seen.iter().map(|s| s.concurrent).max(), Some(4));
    assert!(s.snapshot().keys["m"].limits.is_unlimited());
}
