//! The failure policies with Redis unreachable (a closed port, so the shared Redis keeps running
//! for the other tests). Needs no `REDIS_URL`.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agent_runtime::scheduler::redis_state::{
    BucketSpec, FailurePolicy, RedisMode, RedisQuotaConfig, RedisQuotaError, RedisQuotaState,
};

/// Nothing listens on port 1, so connecting is refused at once.
const UNREACHABLE: &str = "redis://127.0.0.1:1";

#[tokio::test]
async fn fail_closed_waits_up_to_max_wait_then_errors_and_says_so() {
    let config = RedisQuotaConfig::default()
        .with_failure_policy(FailurePolicy::fail_closed(Duration::from_millis(300)));
    let state = RedisQuotaState::connect(UNREACHABLE, config).await.unwrap();
    assert_eq!(state.mode(), RedisMode::Shared);
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(60));

    let err = state
        .acquire("q", &[(requests, 1)], None)
        .await
        .unwrap_err();
    let RedisQuotaError::Unavailable {
        endpoint, waited, ..
    } = &err
    else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert_eq!(endpoint, "127.0.0.1:1");
    assert!(*waited <= Duration::from_millis(300));
    assert!(err.to_string().contains("fails closed"));

    let metrics = state.metrics();
    assert_eq!(metrics.mode, RedisMode::Unavailable);
    assert!(metrics.redis_errors >= 2, "it retried: {metrics:?}");
    assert_eq!(metrics.unavailable_errors, 1);
    // One switch into the failure mode, however many errors.
    assert_eq!(metrics.mode_switches, 1);
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
        RedisQuotaConfig::default().with_failure_policy(FailurePolicy::fail_open(0)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RedisQuotaError::InvalidConfig { .. }));
}

#[tokio::test]
async fn the_password_never_shows_in_debug_output() {
    let state = RedisQuotaState::connect(
        "redis://user:hunter2@127.0.0.1:1/0",
        RedisQuotaConfig::default(),
    )
    .await
    .unwrap();
    let debug = format!("{state:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("127.0.0.1:1"));
}
