//! A shared quota across a Redis restart: two processes (two schedulers, each with its own
//! connection) share 60 requests per 6 s through a private `redis-server`, which is killed and
//! restarted empty mid-run. The provider (the mock, limited to the same 60 per 6 s) must see no
//! 429: the processes notice the lost state and start its buckets empty instead of full (4–5
//! 429s in three runs with that disabled). No warm-up call and no guard: the shared buckets take
//! the cold-start shift too (`QuotaState::lag`); without it this test drew one 429 in 4 of 10
//! runs on a loaded machine, and once in CI.
//! (Connecting to an unreachable Redis: `agent-runtime/tests/redis_failure.rs` and
//! `examples/tests/hostile_args.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::time::Duration;

use agent_runtime::fanout::{FanoutConfig, run_fanout};
use agent_runtime::provider::SimConfig;
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{Quota, QuotaScheduler};
use turnstile_tests::{PERIOD, PrivateRedis, completed_run, fast_retries, provider, start_mock};

const RPM: u64 = 60;

async fn process(redis: &PrivateRedis, key: &str) -> (RedisQuotaState, QuotaScheduler) {
    let state = RedisQuotaState::connect(
        &redis.url(),
        RedisQuotaConfig::default().with_key_prefix("fault-redis"),
    )
    .await
    .unwrap();
    let scheduler = QuotaScheduler::builder()
        .quota(key, Quota::per_period(PERIOD).requests(RPM))
        .retry(fast_retries())
        .state(Arc::new(state.clone()))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    (state, scheduler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_causes_no_provider_429() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let server = start_mock(SimConfig::default().with_rpm(RPM).with_period(PERIOD))
        .await
        .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let (state_a, a) = process(&redis, &key).await;
    let (state_b, b) = process(&redis, &key).await;

    // 2 × 10 conversations × 5 calls = 100 calls: the first period's 60, then 10 a second.
    let workload = FanoutConfig::default()
        .with_conversations(10)
        .with_agents(2)
        .with_max_messages(6);
    let run = |scheduler: QuotaScheduler| {
        let (model, workload) = (model.clone(), workload.clone());
        tokio::spawn(async move { run_fanout(model, scheduler, &workload, |_| {}).await })
    };
    let (run_a, run_b) = (run(a), run(b));
    // Mid-run, with the provider's bucket drained: Redis restarts and forgets every bucket.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.restart().expect("redis-server restarts");

    for run in [run_a, run_b] {
        completed_run(run, 10, Duration::from_secs(120))
            .await
            .unwrap();
    }
    let stats = server.stats();
    assert_eq!(
        stats.rate_limited_requests + stats.rate_limited_tokens,
        0,
        "the provider answered 429s: {stats:?}"
    );
    assert_eq!(stats.admitted, 100);
    // Both processes noticed the restart (their run id changed) and said so.
    for state in [&state_a, &state_b] {
        assert_eq!(
            state.metrics().restarts_detected,
            1,
            "{:?}",
            state.metrics()
        );
    }
}
