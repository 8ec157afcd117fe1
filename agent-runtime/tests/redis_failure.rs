//! The failure policies with Redis unreachable (a closed port, so the shared Redis keeps running
//! for the other tests). Needs no `REDIS_URL`.
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

mod redis_support;
mod scheduler_support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{Budget, CallError, CallKind, ModelError, Usage};
use agent_runtime::scheduler::redis_state::{
    RedisFailurePolicy, RedisMode, RedisQuotaConfig, RedisQuotaError, RedisQuotaState,
};
use agent_runtime::scheduler::{
    Acquire, Cost, ModelCall, Quota, QuotaScheduler, QuotaState, StateError,
};
use redis_support::PrivateRedis;
use scheduler_support::{ExactEstimator, TimedModel, request};

/// Nothing listens on port 1, so connecting is refused at once.
const UNREACHABLE: &str = "redis://127.0.0.1:1";

/// A state on an unreachable Redis, connected lazily (an eager `connect` refuses to start a
/// fail-closed state on it: see `fail_closed_connect_is_a_clear_error_at_once`).
async fn unreachable(policy: RedisFailurePolicy) -> RedisQuotaState {
    RedisQuotaState::connect_lazy(
        UNREACHABLE,
        RedisQuotaConfig::default().with_failure_policy(policy),
    )
    .unwrap()
}

fn scheduler(state: &RedisQuotaState, quota: Quota, max_wait: Duration) -> QuotaScheduler {
    QuotaScheduler::builder()
        .quota("model", quota)
        .estimator(ExactEstimator)
        .state(Arc::new(state.clone()))
        .poll_interval(Duration::from_millis(20))
        .max_admission_wait(max_wait)
        .build()
        .unwrap()
}

async fn call(s: &QuotaScheduler, model: &TimedModel) -> Result<agent_core::Completion, CallError> {
    let budget = Budget::unlimited();
    s.call(ModelCall::new(
        model,
        request(10),
        CallKind::Reply,
        "conversation",
        "agent",
        &budget,
    ))
    .await
}

#[tokio::test]
async fn fail_closed_refuses_admission_and_says_why() {
    let state = unreachable(RedisFailurePolicy::FailClosed).await;
    assert_eq!(state.mode(), RedisMode::Shared);
    let limits = Quota::per_minute().requests(10).limits();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let err = state
        .acquire("model", &limits, cost, Duration::from_secs(60))
        .await
        .unwrap_err();
    let StateError::Unavailable { message } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("fails closed"), "{message}");

    let metrics = state.metrics();
    assert_eq!(metrics.mode, RedisMode::Unavailable);
    assert_eq!(metrics.refused_admissions, 1);
    assert_eq!(metrics.mode_switches, 1);
    assert_eq!(metrics.local_admissions, 0);
}

#[tokio::test]
async fn fail_closed_through_the_scheduler_waits_then_fails_the_call_and_sends_nothing() {
    let state = unreachable(RedisFailurePolicy::FailClosed).await;
    // Two seconds: long enough that a stalled machine still asks more than once.
    let s = scheduler(
        &state,
        Quota::per_minute().requests(10),
        Duration::from_secs(2),
    );
    let model = TimedModel::answering("model", Usage::new(10, 0));
    let err = call(&s, &model).await.unwrap_err();
    let CallError::Model(ModelError::Transient { message, .. }) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("fails closed"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert_eq!(
        model.count(),
        0,
        "a call reached the provider without the shared quota"
    );
    // It kept asking while it waited, and every failure is counted on both sides.
    let metrics = state.metrics();
    assert!(metrics.refused_admissions >= 2, "{metrics:?}");
    assert_eq!(metrics.mode_switches, 1, "one switch, however many errors");
    assert_eq!(
        s.snapshot().keys["model"].backend_errors,
        metrics.refused_admissions
    );
}

#[tokio::test]
async fn fail_open_admits_only_this_processs_share_of_each_limit() {
    // Four processes expected: this one may use 10 / 4 = 2 requests and 2 / 4 → 1 slot.
    let state = unreachable(RedisFailurePolicy::fail_open(4)).await;
    let s = scheduler(
        &state,
        Quota::per_minute().requests(10).max_in_flight(2),
        Duration::from_millis(300),
    );
    let model = TimedModel::answering("model", Usage::new(10, 0));
    assert!(call(&s, &model).await.is_ok());
    assert!(call(&s, &model).await.is_ok());
    // The third request would need 6 s of refill at 2 per minute: refused as rate limited.
    let err = call(&s, &model).await.unwrap_err();
    assert!(
        matches!(err, CallError::Model(ModelError::RateLimited { .. })),
        "{err:?}"
    );
    assert_eq!(model.count(), 2);

    let metrics = state.metrics();
    assert_eq!(metrics.mode, RedisMode::LocalShare);
    assert_eq!(metrics.local_admissions, 2);
    assert_eq!(metrics.mode_switches, 1);
    assert!(metrics.redis_errors >= 1);
    // The backend answered every admission itself: the scheduler saw no error to fall back on.
    assert_eq!(s.snapshot().keys["model"].backend_errors, 0);
}

#[tokio::test]
async fn fail_open_shares_the_in_flight_cap_too() {
    let state = unreachable(RedisFailurePolicy::fail_open(2)).await;
    let limits = Quota::per_minute().max_in_flight(4).limits();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let ttl = Duration::from_secs(60);
    let mut leases = Vec::new();
    for _ in 0..2 {
        match state.acquire("model", &limits, cost, ttl).await.unwrap() {
            Acquire::Granted(lease) => leases.push(lease),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        state.acquire("model", &limits, cost, ttl).await.unwrap(),
        Acquire::Wait { .. }
    ));
    let settlement = agent_runtime::scheduler::Settlement {
        actual_tokens: 0,
        refund_unused: false,
    };
    state
        .settle("model", &limits, leases.pop().unwrap(), settlement)
        .await
        .unwrap();
    assert!(matches!(
        state.acquire("model", &limits, cost, ttl).await.unwrap(),
        Acquire::Granted(_)
    ));
}

#[tokio::test]
async fn a_bad_url_or_setting_fails_at_connect_without_echoing_the_password() {
    let err = RedisQuotaState::connect("http://:hunter2@host", RedisQuotaConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RedisQuotaError::InvalidUrl { .. }));
    assert!(!err.to_string().contains("hunter2"));

    let err = RedisQuotaState::connect(
        UNREACHABLE,
        RedisQuotaConfig::default().with_failure_policy(RedisFailurePolicy::fail_open(0)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RedisQuotaError::InvalidConfig { .. }));
}

#[tokio::test]
async fn fail_closed_connect_is_a_clear_error_at_once_and_fail_open_starts_on_its_share() {
    let start = std::time::Instant::now();
    let err = RedisQuotaState::connect(
        "redis://user:hunter2@127.0.0.1:1/0",
        RedisQuotaConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RedisQuotaError::Unreachable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("cannot use Redis at 127.0.0.1:1: "),
        "{text}"
    );
    assert!(text.contains("RedisFailurePolicy::FailOpen"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2"));
    // Bounded by the command timeout (500 ms), not the scheduler's 15-minute admission wait.
    assert!(start.elapsed() < Duration::from_secs(10));

    let state = RedisQuotaState::connect(
        UNREACHABLE,
        RedisQuotaConfig::default().with_failure_policy(RedisFailurePolicy::fail_open(2)),
    )
    .await
    .unwrap();
    assert_eq!(
        state.mode(),
        RedisMode::LocalShare,
        "the switch shows at once"
    );
    assert_eq!(state.metrics().mode_switches, 1);
}

#[tokio::test]
async fn the_password_never_shows_in_debug_output_or_errors() {
    let state = RedisQuotaState::connect_lazy(
        "redis://user:hunter2@127.0.0.1:1/0",
        RedisQuotaConfig::default(),
    )
    .unwrap();
    let debug = format!("{state:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("127.0.0.1:1"));
    let limits = Quota::per_minute().requests(1).limits();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let err = state
        .acquire("model", &limits, cost, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
}

/// Asks until the state answers `Granted` from Redis (not from the local share).
async fn wait_for_shared(state: &RedisQuotaState, limits: &agent_runtime::scheduler::Limits) {
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = state
                .acquire("model", limits, cost, Duration::from_secs(60))
                .await;
            if state.mode() == RedisMode::Shared && matches!(answer, Ok(Acquire::Granted(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("never back on the shared quota");
}

#[tokio::test]
#[cfg_attr(
    no_redis_server,
    ignore = "no redis-server binary on PATH at build time"
)]
async fn fail_open_returns_to_the_shared_quota_when_redis_comes_back() {
    let mut redis = PrivateRedis::start(None).expect("redis-server could not be started");
    let state = RedisQuotaState::connect(
        &redis.url(),
        RedisQuotaConfig::default()
            .with_failure_policy(RedisFailurePolicy::fail_open(2))
            .with_probe_interval(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let limits = Quota::per_minute().requests(1_000).limits();
    wait_for_shared(&state, &limits).await;
    let switches = state.metrics().mode_switches;
    // Calls the local share admitted while the server was still starting.
    let local = state.metrics().local_admissions;

    redis.stop();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let answer = state
        .acquire("model", &limits, cost, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(answer, Acquire::Granted(_)));
    assert_eq!(state.mode(), RedisMode::LocalShare);
    assert_eq!(state.metrics().local_admissions, local + 1);

    let _restarted = PrivateRedis::start(Some(redis.port)).unwrap();
    wait_for_shared(&state, &limits).await;
    // Out to the local share and back: two more switches, each logged.
    assert_eq!(state.metrics().mode_switches, switches + 2);
}

#[tokio::test]
#[cfg_attr(
    no_redis_server,
    ignore = "no redis-server binary on PATH at build time"
)]
async fn fail_closed_admits_again_once_redis_comes_back() {
    let mut redis = PrivateRedis::start(None).expect("redis-server could not be started");
    let state = RedisQuotaState::connect(&redis.url(), RedisQuotaConfig::default())
        .await
        .unwrap();
    let limits = Quota::per_minute().requests(1_000).limits();
    wait_for_shared(&state, &limits).await;
    redis.stop();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    assert!(
        state
            .acquire("model", &limits, cost, Duration::from_secs(60))
            .await
            .is_err()
    );
    assert_eq!(state.mode(), RedisMode::Unavailable);
    let _restarted = PrivateRedis::start(Some(redis.port)).unwrap();
    wait_for_shared(&state, &limits).await;
    assert_eq!(state.metrics().local_admissions, 0);
}

/// A restart forgets every quota. For a key this process used within its period, whatever the
/// limiter kind, the state comes back with nothing to hand out — a bucket empty (one request
/// refills in 6 s at ten a minute), a window spent until it turns, a sliding log full for one
/// period — never a second allowance on top of what the provider already counted. A key first
/// used after the restart starts as configured.
#[tokio::test]
#[cfg_attr(
    no_redis_server,
    ignore = "no redis-server binary on PATH at build time"
)]
async fn a_restart_never_hands_out_a_second_allowance() {
    use agent_runtime::scheduler::{Dimension, Limiter, WindowStart};
    let mut redis = PrivateRedis::start(None).expect("redis-server could not be started");
    let state = RedisQuotaState::connect(&redis.url(), RedisQuotaConfig::default())
        .await
        .unwrap();
    let kinds = [
        ("bucket", Limiter::Bucket),
        ("clock", Limiter::FixedWindow(WindowStart::Clock)),
        ("first", Limiter::FixedWindow(WindowStart::FirstRequest)),
        ("sliding", Limiter::SlidingWindow),
    ];
    let limits = |kind| Quota::per_minute().requests(10).limiter(kind).limits();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let ttl = Duration::from_secs(60);
    for (key, kind) in kinds {
        for _ in 0..2 {
            let answer = state.acquire(key, &limits(kind), cost, ttl).await.unwrap();
            assert!(matches!(answer, Acquire::Granted(_)), "{key}: {answer:?}");
        }
    }

    redis.stop();
    let _restarted = PrivateRedis::start(Some(redis.port)).unwrap();
    for (key, kind) in kinds {
        // The first commands after the restart may find the connection gone: ask until Redis
        // answers.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(answer) = state.acquire(key, &limits(kind), cost, ttl).await {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("Redis never answered after its restart");
        let Acquire::Wait {
            dimension,
            retry_after: Some(wait),
        } = answer
        else {
            panic!("{key}: a restarted quota handed out a second allowance: {answer:?}");
        };
        assert_eq!(dimension, Dimension::Requests, "{key}");
        match key {
            "bucket" => assert!(wait <= Duration::from_secs(6), "{key}: {wait:?}"),
            "clock" => assert!(wait <= Duration::from_secs(61), "{key}: {wait:?}"),
            _ => assert!(wait > Duration::from_secs(55), "{key}: {wait:?}"),
        }
    }
    assert_eq!(state.metrics().restarts_detected, 1);
    for (key, kind) in kinds {
        let fresh = format!("{key}-after");
        let answer = state
            .acquire(&fresh, &limits(kind), cost, ttl)
            .await
            .unwrap();
        assert!(matches!(answer, Acquire::Granted(_)), "{fresh}: {answer:?}");
    }
}
