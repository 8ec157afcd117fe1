//! The shared quota over TLS with a password (`rediss://:password@host:port`). Runs only when
//! `REDIS_TLS_URL` names such a server; its certificate must chain to a root the system trusts
//! (or to `SSL_CERT_FILE`). `docs/redis.md` shows how to start one for this test.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agent_runtime::scheduler::redis_state::{RedisMode, RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{Acquire, Cost, Quota, QuotaState};

#[tokio::test]
#[cfg_attr(no_redis_tls, ignore = "REDIS_TLS_URL was not set at build time")]
async fn admission_works_over_tls_with_auth() {
    let url = std::env::var("REDIS_TLS_URL").expect("set REDIS_TLS_URL to a rediss:// server");
    let prefix = format!("turnstile-test:tls:{:016x}", rand::random::<u64>());
    let state = RedisQuotaState::connect(&url, RedisQuotaConfig::default().with_key_prefix(prefix))
        .await
        .unwrap();
    let limits = Quota::per_minute().requests(2).limits();
    let cost = Cost {
        requests: 1,
        tokens: 0,
    };
    let ttl = Duration::from_secs(30);
    for _ in 0..2 {
        let answer = state.acquire("model", &limits, cost, ttl).await.unwrap();
        assert!(matches!(answer, Acquire::Granted(_)), "{answer:?}");
    }
    assert!(matches!(
        state.acquire("model", &limits, cost, ttl).await.unwrap(),
        Acquire::Wait { .. }
    ));
    assert_eq!(state.mode(), RedisMode::Shared);
    assert_eq!(state.metrics().redis_errors, 0);
}
