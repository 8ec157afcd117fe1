//! Quota semantics of the scheduler on the paused clock: bucket bounds in every window, calls that
//! can never fit, daily caps, in-flight caps, refunds, learned limits, and a shared backend.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{Budget, BudgetLimits, CallError, CallKind, ModelError, RateLimitKind};
use agent_core::{RateLimitReading, ScriptedModel, Usage};
use agent_runtime::scheduler::{InMemoryState, ModelCall, Quota, QuotaScheduler};
use proptest::prelude::*;
use scheduler_support::{ExactEstimator, TimedModel, completion, request};
use tokio::time::Instant;

async fn call(
    s: &QuotaScheduler,
    model: &TimedModel,
    tokens: usize,
    conversation: &str,
    budget: &Budget,
) -> Result<agent_core::Completion, CallError> {
    let call = ModelCall::new(
        model,
        request(tokens),
        CallKind::Reply,
        conversation,
        "agent",
        budget,
    );
    s.call(call).await
}

/// Checks that what the provider saw in every window of length W is at most
/// `capacity + limit·W/period` in requests and tokens.
fn assert_within_buckets(seen: &[(Duration, u64)], requests: u64, tokens: u64, period: Duration) {
    for i in 0..seen.len() {
        let (start, _) = seen[i];
        let (mut n, mut sum) = (0u128, 0u128);
        for &(t, cost) in &seen[i..] {
            n += 1;
            sum += u128::from(cost);
            let w = (t - start).as_nanos();
            let refill = |limit: u64| (u128::from(limit) * w).div_ceil(period.as_nanos());
            assert!(
                n <= u128::from(requests) + refill(requests),
                "{n} requests in {w}ns"
            );
            assert!(
                sum <= u128::from(tokens) + refill(tokens),
                "{sum} tokens in {w}ns"
            );
        }
    }
}

fn run_paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random arrivals and costs over several conversations: whatever was admitted in any window
    /// stays within the bucket semantics, every call that fits a bucket succeeds, and every call
    /// that cannot fails with `ExceedsQuota` without reaching the provider.
    #[test]
    fn admitted_load_never_exceeds_the_buckets(
        requests in 1u64..20,
        tokens in 50u64..400,
        period_ms in 100u64..3_000,
        shared_state in any::<bool>(),
        arrivals in proptest::collection::vec((0u64..400, 1usize..450, 0usize..4), 1..40),
    ) {
        let period = Duration::from_millis(period_ms);
        let seen = run_paused(async move {
            let mut b = QuotaScheduler::builder()
                .estimator(ExactEstimator)
                .quota("m", Quota::per_period(period).requests(requests).tokens(tokens));
            if shared_state {
                b = b.state(Arc::new(InMemoryState::new()));
            }
            let s = b.build().unwrap();
            let model = TimedModel::answering("m", Usage::new(1, 1));
            let budget = Budget::unlimited();
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            let mut at = Duration::ZERO;
            for (gap_ms, cost, conv) in arrivals {
                at += Duration::from_millis(gap_ms);
                let (s, model, budget) = (s.clone(), model.clone(), budget.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(t0 + at).await;
                    let r = call(&s, &model, cost, &format!("c{conv}"), &budget).await;
                    (cost, r)
                }));
            }
            for t in tasks {
                let (cost, r) = t.await.unwrap();
                match r {
                    Ok(_) => assert!(cost as u64 <= tokens),
                    Err(CallError::ExceedsQuota { needed, capacity, .. }) => {
                        assert!(cost as u64 > tokens);
                        assert_eq!((needed, capacity), (cost as u64, tokens));
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            model.seen().iter().map(|s| (s.at - t0, s.prompt_chars as u64)).collect::<Vec<_>>()
        });
        assert_within_buckets(&seen, requests, tokens, period);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_larger_than_the_bucket_fails_at_once_and_costs_nothing() {
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", Quota::per_minute().tokens(100))
        .build()
        .unwrap();
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::new("run", BudgetLimits::calls(5));
    let err = call(&s, &model, 150, "c", &budget).await.unwrap_err();
    let CallError::ExceedsQuota {
        key,
        dimension,
        needed,
        capacity,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (key.as_str(), *dimension, *needed, *capacity),
        ("m", agent_core::QuotaDimension::Tokens, 150, 100)
    );
    assert!(err.to_string().contains("can never be admitted"), "{err}");
    assert_eq!(model.count(), 0);
    assert_eq!(
        budget.used().calls,
        0,
        "the budget reservation was refunded"
    );
    assert_eq!(s.snapshot().keys["m"].exceeds_quota, 1);
}

#[tokio::test(start_paused = true)]
async fn daily_caps_wait_for_refill_or_fail_fast_beyond_the_max_wait() {
    let quota = Quota::per_period(Duration::from_secs(1))
        .requests(100)
        .requests_per_day(3)
        .day(Duration::from_secs(30));
    let impatient = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", quota.clone())
        .max_admission_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::unlimited();
    for _ in 0..3 {
        call(&impatient, &model, 1, "c", &budget).await.unwrap();
    }
    let err = call(&impatient, &model, 1, "c", &budget).await.unwrap_err();
    let CallError::Model(ModelError::RateLimited {
        kind, retry_after, ..
    }) = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*kind, RateLimitKind::Requests);
    // One request of a 3-per-30 s bucket refills in 10 s.
    assert_eq!(*retry_after, Some(Duration::from_secs(10)));
    assert_eq!(model.count(), 3);

    let patient = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", quota)
        .build()
        .unwrap();
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let t0 = Instant::now();
    for _ in 0..4 {
        call(&patient, &model, 1, "c", &budget).await.unwrap();
    }
    let seen = model.seen();
    assert_eq!(seen[2].at, t0);
    assert_eq!(seen[3].at - t0, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_cap_holds_and_slots_return() {
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", Quota::per_minute().max_in_flight(2))
        .build()
        .unwrap();
    let model = TimedModel::answering("m", Usage::new(1, 1)).with_latency(Duration::from_secs(1));
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let calls = (0..6).map(|i| {
        let (s, model, budget) = (&s, &model, &budget);
        async move { call(s, model, 1, &format!("c{i}"), budget).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let seen = model.seen();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| s.concurrent <= 2));
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    let k = &s.snapshot().keys["m"];
    assert_eq!(k.in_flight, 0);
    assert_eq!(k.wait.max, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn unused_tokens_are_refunded_only_when_the_provider_refunds() {
    for refund in [true, false] {
        let s = QuotaScheduler::builder()
            .estimator(ExactEstimator)
            .quota("m", Quota::per_minute().tokens(100).refund_unused(refund))
            .build()
            .unwrap();
        // Reserves 80, uses 10.
        let model = TimedModel::answering("m", Usage::new(5, 5));
        let budget = Budget::unlimited();
        let t0 = Instant::now();
        call(&s, &model, 80, "c", &budget).await.unwrap();
        call(&s, &model, 80, "c", &budget).await.unwrap();
        let second = model.seen()[1].at - t0;
        if refund {
            assert_eq!(second, Duration::ZERO);
        } else {
            // 60 more tokens at 100 per minute.
            assert_eq!(second, Duration::from_secs(36));
        }
        // The budget is reconciled to actual usage either way.
        assert_eq!(budget.used().tokens, 20);
    }
}

#[tokio::test(start_paused = true)]
async fn limits_are_learned_from_headers_and_never_raised_above_configuration() {
    let reading = RateLimitReading {
        limit_tokens: Some(600),
        remaining_tokens: Some(0),
        limit_requests: Some(1_000),
        ..RateLimitReading::default()
    };
    let answer = {
        let reading = reading.clone();
        move |_: &agent_core::ChatRequest| {
            let mut c = completion(Usage::new(10, 10));
            c.rate_limits = Some(reading.clone());
            Ok(c)
        }
    };
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("configured", Quota::per_minute().requests(10))
        .build()
        .unwrap();
    let learner = TimedModel::new(ScriptedModel::new("unknown").with_responder(answer.clone()));
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    call(&s, &learner, 100, "c", &budget).await.unwrap();
    // The provider said 600 tokens/min and none left: 100 tokens take 10 s to refill.
    call(&s, &learner, 100, "c", &budget).await.unwrap();
    assert_eq!(learner.seen()[1].at - t0, Duration::from_secs(10));
    let snap = s.snapshot();
    let k = &snap.keys["unknown"];
    assert_eq!(k.learned.tokens, Some(600));
    assert_eq!(k.limits.tokens.map(|r| r.limit), Some(600));

    let configured = TimedModel::new(ScriptedModel::new("configured").with_responder(answer));
    call(&s, &configured, 1, "c", &budget).await.unwrap();
    let k = &s.snapshot().keys["configured"];
    assert_eq!(k.limits.requests.map(|r| r.limit), Some(10), "never raised");
    assert_eq!(k.limits.tokens.map(|r| r.limit), Some(600), "learned");
}

#[tokio::test(start_paused = true)]
async fn two_schedulers_sharing_state_share_the_quota() {
    let state = Arc::new(InMemoryState::new());
    let quota = Quota::per_period(Duration::from_secs(10)).requests(5);
    let make = || {
        QuotaScheduler::builder()
            .estimator(ExactEstimator)
            .quota("m", quota.clone())
            .state(state.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let calls = (0..10).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        let (model, budget) = (&model, &budget);
        async move { call(s, model, 1, &format!("c{i}"), budget).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let seen: Vec<(Duration, u64)> = model.seen().iter().map(|s| (s.at - t0, 1)).collect();
    assert_within_buckets(&seen, 5, u64::MAX / 4, Duration::from_secs(10));
    // 5 at once, then one every 2 s.
    assert_eq!(seen[9].0, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_guard_shifts_saturated_admissions_once_and_keeps_the_rate() {
    let guard = Duration::from_millis(100);
    // 10 requests per 10 s: one a second once the first burst is spent.
    let quota = Quota::per_period(Duration::from_secs(10)).requests(10);
    let mut times = Vec::new();
    for g in [Duration::ZERO, guard] {
        let s = QuotaScheduler::builder()
            .estimator(ExactEstimator)
            .quota("m", quota.clone().guard(g))
            .build()
            .unwrap();
        let model = TimedModel::answering("m", Usage::new(1, 0));
        let budget = Budget::unlimited();
        let t0 = Instant::now();
        for _ in 0..13 {
            call(&s, &model, 1, "c", &budget).await.unwrap();
        }
        times.push(model.seen().iter().map(|s| s.at - t0).collect::<Vec<_>>());
    }
    let (plain, guarded) = (&times[0], &times[1]);
    // Without a guard: ten at once, then one a second.
    assert!(plain[..10].iter().all(|t| t.is_zero()));
    assert_eq!(plain[10..], [1, 2, 3].map(Duration::from_secs));
    // With one: the tenth waits until a unit and the guard's refill are there, and every later
    // admission keeps that shift of exactly the guard — the rate is the same.
    assert!(guarded[..9].iter().all(|t| t.is_zero()));
    assert_eq!(guarded[9], guard);
    for (p, g) in plain[10..].iter().zip(&guarded[10..]) {
        assert_eq!(*g - *p, guard);
    }
}
