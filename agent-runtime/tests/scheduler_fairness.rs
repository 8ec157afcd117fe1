//! Fair admission on the paused clock: equal shares across conversations, a bounded wait for a
//! large call among small ones, priorities, and cancellation that gives the place back.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{Budget, BudgetLimits, CallError, CallKind, Completion, Usage};
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
use scheduler_support::{ExactEstimator, TimedModel, request};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn scheduler(quota: Quota) -> QuotaScheduler {
    QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", quota)
        .build()
        .unwrap()
}

async fn call(
    s: &QuotaScheduler,
    model: &TimedModel,
    tokens: usize,
    conversation: &str,
    budget: &Budget,
) -> Result<Completion, CallError> {
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

#[tokio::test(start_paused = true)]
async fn conversations_with_equal_demand_get_equal_shares_even_against_a_greedy_one() {
    // One request a second for 120 s; five conversations loop one call at a time, and a sixth
    // keeps 20 calls queued at once.
    let s = scheduler(Quota::per_minute().requests(60).start_empty(true));
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::unlimited();
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stop = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for (conv, parallel) in [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("d", 1),
        ("e", 1),
        ("greedy", 20),
    ] {
        for _ in 0..parallel {
            let (s, model, budget, counts) =
                (s.clone(), model.clone(), budget.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    call(&s, &model, 1, conv, &budget).await.unwrap();
                    *counts.lock().unwrap().entry(conv.to_owned()).or_default() += 1;
                }
            }));
        }
    }
    tokio::time::sleep_until(stop).await;
    let counts = counts.lock().unwrap().clone();
    for t in tasks {
        t.abort();
    }
    let shares: Vec<u32> = counts.values().copied().collect();
    let (min, max) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
    assert_eq!(shares.len(), 6);
    assert!(min >= 18, "{counts:?}");
    assert!(f64::from(max - min) <= 0.1 * f64::from(max), "{counts:?}");
    // The snapshot sees the same per-conversation traffic.
    let snap = s.snapshot();
    assert!(snap.conversations["greedy"].calls >= u64::from(counts["greedy"]));
}

#[tokio::test(start_paused = true)]
async fn a_large_call_is_admitted_within_a_bounded_wait_while_small_calls_keep_coming() {
    // 1,000 tokens a second. Ten conversations each start a 10-token call every 50 ms without
    // waiting for the previous one (2,000 tokens/s offered: twice the refill, so the bucket stays
    // near empty), and a 900-token call arrives at t = 2 s.
    let s = scheduler(Quota::per_period(Duration::from_secs(1)).tokens(1_000));
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::unlimited();
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(5);
    let mut arrivals = Vec::new();
    for i in 0..10 {
        let (s, model, budget) = (s.clone(), model.clone(), budget.clone());
        arrivals.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            while Instant::now() < stop {
                let (s, model, budget) = (s.clone(), model.clone(), budget.clone());
                calls.push(tokio::spawn(async move {
                    call(&s, &model, 10, &format!("small{i}"), &budget).await
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    call(&s, &model, 900, "large", &budget).await.unwrap();
    let waited = Instant::now() - asked;
    // Strict head-of-line: at worst every other conversation's turn first (10 × 10 tokens), then
    // 900 tokens of refill, at 1 token per ms. Without it, small calls would keep taking the
    // refill and the large call would wait until they stop.
    let bound = Duration::from_millis(900 + 10 * 10);
    assert!(waited <= bound, "large call waited {waited:?} > {bound:?}");
    assert!(
        waited > Duration::ZERO,
        "the bucket was drained by the small calls"
    );
    for a in arrivals {
        for c in a.await.unwrap() {
            c.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priority_calls_go_first() {
    let s = scheduler(Quota::per_period(Duration::from_secs(1)).requests(1));
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::unlimited();
    call(&s, &model, 1, "warmup", &budget).await.unwrap();
    let order: Arc<Mutex<Vec<&str>>> = Arc::default();
    let mut tasks = Vec::new();
    for (conv, priority) in [("low1", 0), ("low2", 0), ("high", 5)] {
        let (s, model, budget, order) = (s.clone(), model.clone(), budget.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let call = ModelCall::new(&model, request(1), CallKind::Reply, conv, "a", &budget)
                .with_priority(priority);
            s.call(call).await.unwrap();
            order.lock().unwrap().push(conv);
        }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high", "low1", "low2"]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_queued_call_gives_its_place_and_budget_back() {
    let s = scheduler(Quota::per_period(Duration::from_secs(10)).requests(1));
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let root = Budget::new("root", BudgetLimits::calls(10));
    let t0 = Instant::now();
    call(&s, &model, 1, "first", &root).await.unwrap();

    // Cancelled by token.
    let token = CancellationToken::new();
    let cancelled_budget = root.child("cancelled", BudgetLimits::calls(1));
    let by_token = {
        let (s, model, b, token) = (
            s.clone(),
            model.clone(),
            cancelled_budget.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let call = ModelCall::new(&model, request(1), CallKind::Reply, "x", "a", &b)
                .with_cancel(&token);
            s.call(call).await
        })
    };
    // Cancelled by dropping the future (a timeout).
    let by_drop = {
        let (s, model, root) = (s.clone(), model.clone(), root.clone());
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(500), call(&s, &model, 1, "y", &root)).await
        })
    };
    let next = {
        let (s, model, root) = (s.clone(), model.clone(), root.clone());
        tokio::spawn(async move { call(&s, &model, 1, "z", &root).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.snapshot().keys["m"].queued,
        2,
        "x and z wait; y timed out"
    );
    assert_eq!(cancelled_budget.used().calls, 1, "reserved while queued");
    token.cancel();
    assert!(matches!(by_token.await.unwrap(), Err(CallError::Cancelled)));
    assert!(by_drop.await.unwrap().is_err());
    assert_eq!(cancelled_budget.used().calls, 0, "refunded on cancel");
    next.await.unwrap().unwrap();
    // z was admitted at the first refill: the cancelled calls left nothing behind.
    assert_eq!(model.seen()[1].at - t0, Duration::from_secs(10));
    assert_eq!(model.count(), 2);
    assert_eq!(root.used().calls, 2);
    let k = &s.snapshot().keys["m"];
    assert_eq!((k.queued, k.in_flight), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelling_in_flight_keeps_the_charge_and_frees_the_slot() {
    let s = scheduler(Quota::per_minute().max_in_flight(1));
    let model = TimedModel::answering("m", Usage::new(1, 1)).with_latency(Duration::from_secs(5));
    let budget = Budget::new("b", BudgetLimits::calls(10));
    let token = CancellationToken::new();
    let slow = {
        let (s, model, budget, token) = (s.clone(), model.clone(), budget.clone(), token.clone());
        tokio::spawn(async move {
            let call = ModelCall::new(&model, request(1), CallKind::Reply, "a", "a", &budget)
                .with_cancel(&token);
            s.call(call).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.snapshot().keys["m"].in_flight, 1);
    token.cancel();
    assert!(matches!(slow.await.unwrap(), Err(CallError::Cancelled)));
    // The request reached the provider: it stays charged. The slot is free at once.
    assert_eq!(budget.used().calls, 1);
    assert_eq!(s.snapshot().keys["m"].in_flight, 0);
    let t = Instant::now();
    call(&s, &model, 1, "b", &budget).await.unwrap();
    assert_eq!(model.seen()[1].at, t);
}
