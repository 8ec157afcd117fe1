//! The shared quota against a real Redis (`REDIS_URL`): atomic check-and-reserve across
//! schedulers in tasks and in processes, lease expiry after a crash, reconcile, pause, observe.
//!
//! Redis keeps real time, so these tests cannot run on tokio's paused clock. They never assert on
//! wall-clock durations: every window check uses the **server** timestamps of the grants (a Redis
//! lease id is its grant's server time in µs), and the bucket bound they check holds exactly for
//! those timestamps.
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

mod redis_support;
mod scheduler_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{Budget, CallKind, RateLimitReading, Usage, async_trait};
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{
    Acquire, Cost, Dimension, Lease, Limiter, Limits, ModelCall, Quota, QuotaScheduler, QuotaState,
    Settlement, StateError, WindowStart,
};
use redis_support::TestRedis;
use scheduler_support::{ExactEstimator, TimedModel, request};

/// Set in a child process to make `worker_process` run (and tell it what to do).
const WORKER_ENV: &str = "TURNSTILE_REDIS_TEST_WORKER";
const TTL: Duration = Duration::from_secs(30);

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    format!("turnstile-test:{test}:{:016x}", rand::random::<u64>())
}

async fn connect(url: &str, prefix: &str) -> RedisQuotaState {
    // A generous command timeout: a stall of the loaded test machine is not a Redis failure.
    let config = RedisQuotaConfig::default()
        .with_key_prefix(prefix)
        .with_command_timeout(Duration::from_secs(5));
    RedisQuotaState::connect(url, config).await.unwrap()
}

fn cost(requests: u64, tokens: u64) -> Cost {
    Cost { requests, tokens }
}

fn settled(actual_tokens: u64, refund_unused: bool) -> Settlement {
    Settlement {
        actual_tokens,
        refund_unused,
    }
}

/// Acquires until granted, sleeping as told (polling in-flight waits).
async fn acquire(
    state: &impl QuotaState,
    key: &str,
    limits: &Limits,
    c: Cost,
    ttl: Duration,
) -> Lease {
    loop {
        match state.acquire(key, limits, c, ttl).await.unwrap() {
            Acquire::Granted(lease) => return lease,
            Acquire::Wait { retry_after, .. } => {
                tokio::time::sleep(retry_after.unwrap_or(Duration::from_millis(10))).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn balance(
    snapshot: &agent_runtime::scheduler::redis_state::RedisQuotaSnapshot,
    d: Dimension,
) -> f64 {
    snapshot
        .balances
        .iter()
        .find(|(dim, _)| *dim == d)
        .map(|(_, level)| *level)
        .unwrap()
}

/// Checks that grants (server µs, amount) conform to a bucket of `capacity` per `period` that
/// starts full: for every pair of grants i ≤ j, the amount granted in [t_i, t_j] is at most
/// capacity + refill over (t_j − t_i). That is the provider's own rule (OpenAI's and Anthropic's
/// continuous buckets), so a provider with these limits would have answered none of these calls
/// with a 429.
fn assert_conforms(grants: &mut [(u64, u64)], capacity: u64, period: Duration, what: &str) {
    grants.sort_unstable();
    let rate_per_us = capacity as f64 / period.as_micros() as f64;
    for i in 0..grants.len() {
        let mut sum = 0u64;
        for j in i..grants.len() {
            sum += grants[j].1;
            let span = (grants[j].0 - grants[i].0) as f64;
            let bound = capacity as f64 + rate_per_us * span;
            // 0.01 absorbs the scripts' float formatting (balances at 1e-6, times at 1 µs).
            assert!(
                sum as f64 <= bound + 0.01,
                "{what}: {sum} admitted in {span} µs but the bucket allows {bound:.3}"
            );
        }
    }
}

#[test]
fn the_window_check_catches_processes_that_each_think_they_own_the_quota() {
    // Three processes with private buckets of 10 per second each admit their burst at once.
    let mut grants: Vec<(u64, u64)> = (0..30).map(|i| (1_000 + i, 1)).collect();
    let caught = std::panic::catch_unwind(move || {
        assert_conforms(&mut grants, 10, Duration::from_secs(1), "requests")
    });
    assert!(caught.is_err());
    // One bucket's worth at once, then one more per refill interval, conforms.
    let mut grants: Vec<(u64, u64)> = (0..10).map(|i| (i, 1)).collect();
    grants.extend((1..=5).map(|k| (k * 100_000, 1)));
    assert_conforms(&mut grants, 10, Duration::from_secs(1), "requests");
}

/// A [`QuotaState`] that records every grant's server time and cost on the way through: what the
/// scheduler was granted is exactly what a provider would see.
#[derive(Debug)]
struct Recording {
    inner: RedisQuotaState,
    grants: Mutex<Vec<(u64, Cost)>>,
}

#[async_trait]
impl QuotaState for Recording {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        let answer = self.inner.acquire(key, limits, cost, lease_ttl).await?;
        if let Acquire::Granted(lease) = answer {
            self.grants.lock().unwrap().push((lease.id, cost));
        }
        Ok(answer)
    }
    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
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

/// Runs `tasks` concurrent callers through one scheduler backed by Redis for `duration`; returns
/// the grants and how many calls reached the model.
async fn run_scheduler(
    url: &str,
    prefix: &str,
    quota: Quota,
    tasks: usize,
    tokens_per_call: usize,
    duration: Duration,
) -> (Vec<(u64, Cost)>, usize) {
    let state = Arc::new(Recording {
        inner: connect(url, prefix).await,
        grants: Mutex::default(),
    });
    let scheduler = QuotaScheduler::builder()
        .quota("model", quota)
        .estimator(ExactEstimator)
        .state(state.clone())
        .lease_ttl(TTL)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let usage = Usage::new(tokens_per_call as u64, 0);
    let model = TimedModel::answering("model", usage).with_latency(Duration::from_millis(5));
    let deadline = tokio::time::Instant::now() + duration;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let scheduler = scheduler.clone();
        let model = model.clone();
        handles.push(tokio::spawn(async move {
            let budget = Budget::unlimited();
            let conversation = format!("conversation-{task}");
            while tokio::time::Instant::now() < deadline {
                let call = ModelCall::new(
                    &model,
                    request(tokens_per_call),
                    CallKind::Reply,
                    &conversation,
                    "agent",
                    &budget,
                );
                scheduler.call(call).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let snapshot = scheduler.snapshot();
    let stats = &snapshot.keys["model"];
    assert_eq!(stats.rate_limited.total(), 0);
    assert_eq!(stats.backend_errors, 0);
    let grants = state.grants.lock().unwrap().clone();
    (grants, model.count())
}

fn check_grants(grants: &[(u64, Cost)], requests: u64, tokens: u64, period: Duration) {
    let mut by_request: Vec<_> = grants.iter().map(|&(t, c)| (t, c.requests)).collect();
    assert_conforms(&mut by_request, requests, period, "requests");
    let mut by_tokens: Vec<_> = grants.iter().map(|&(t, c)| (t, c.tokens)).collect();
    assert_conforms(&mut by_tokens, tokens, period, "tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn schedulers_in_separate_tasks_share_one_quota() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("tasks");
    let period = Duration::from_secs(1);
    let quota = Quota::per_period(period).requests(10).tokens(600);
    // Three schedulers, each with its own connection, as three services in one process would.
    let runs = (0..3).map(|_| {
        run_scheduler(
            &url,
            &prefix,
            quota.clone(),
            3,
            100,
            Duration::from_millis(1_500),
        )
    });
    let results = futures::future::join_all(runs).await;
    let mut grants = Vec::new();
    for (mine, calls) in results {
        // Every call that reached the model was admitted by Redis.
        assert_eq!(mine.len(), calls);
        assert!(calls > 0, "a scheduler was starved");
        grants.extend(mine);
    }
    // At least the initial burst (6 calls of 100 tokens) went through: the limit was exercised.
    assert!(grants.len() >= 6, "only {} calls", grants.len());
    check_grants(&grants, 10, 600, period);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn schedulers_in_separate_processes_share_one_quota() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("processes");
    let children: Vec<_> = (0..3)
        .map(|_| spawn_worker(&url, "share", &prefix))
        .collect();
    let mut grants = Vec::new();
    let mut per_process = Vec::new();
    for mut child in children {
        let out = child.0.wait().unwrap();
        assert!(out.success(), "worker failed: {out:?}");
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let mine: Vec<(u64, Cost)> = stdout
            .lines()
            .filter_map(|l| worker_field(l, "GRANT "))
            .map(|l| {
                let mut it = l.split(' ').map(|n| n.parse::<u64>().unwrap());
                let t = it.next().unwrap();
                (t, cost(it.next().unwrap(), it.next().unwrap()))
            })
            .collect();
        let calls = stdout
            .lines()
            .find_map(|l| worker_field(l, "CALLS "))
            .map(|n| n.parse::<usize>().unwrap())
            .unwrap();
        assert_eq!(mine.len(), calls);
        per_process.push(calls);
        grants.extend(mine);
    }
    assert!(
        per_process.iter().all(|&n| n > 0),
        "a process was starved: {per_process:?}"
    );
    check_grants(&grants, 8, 500, Duration::from_secs(1));
}

/// Runs only in child processes spawned by the tests above (`--ignored` there); not a test by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker the multi-process tests spawn; not a test by itself"]
async fn worker_process() {
    let Ok(job) = std::env::var(WORKER_ENV) else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap();
    let (mode, prefix) = job.split_once(' ').unwrap();
    match mode {
        "share" => {
            let quota = Quota::per_period(Duration::from_secs(1))
                .requests(8)
                .tokens(500)
                .max_in_flight(4);
            let (grants, calls) =
                run_scheduler(&url, prefix, quota, 3, 60, Duration::from_millis(1_500)).await;
            for (t, c) in grants {
                println!("GRANT {t} {} {}", c.requests, c.tokens);
            }
            println!("CALLS {calls}");
        }
        "hold" => {
            // Takes the only slot, reports when, then holds it (renewing) until killed.
            let state = connect(&url, prefix).await;
            let limits = Quota::per_minute().max_in_flight(1).limits();
            let lease = acquire(&state, "model", &limits, cost(1, 0), LEASE_TTL).await;
            println!("HELD {}", lease.id);
            std::future::pending::<()>().await;
        }
        other => panic!("unknown worker mode {other}"),
    }
}

/// Kills a worker process if the test fails before it does (a holder never exits by itself).
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, mode: &str, prefix: &str) -> Worker {
    Worker(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, format!("{mode} {prefix}"))
            .env("REDIS_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The text after `tag` on a worker's output line (libtest may print its own status first).
fn worker_field<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.split_once(tag).map(|(_, rest)| rest)
}

/// Long enough that a loaded machine's stalls (a debug-build child, two cores) never let a live
/// holder's lease lapse between renewals (every TTL/3).
const LEASE_TTL: Duration = Duration::from_millis(1_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn a_killed_holders_slot_returns_after_its_lease_expires() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("crash");
    let mut child = spawn_worker(&url, "hold", &prefix);
    let stdout = child.0.stdout.take().unwrap();
    let held_at: u64 = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| worker_field(&l, "HELD ").map(|t| t.parse().unwrap()))
            .unwrap()
    })
    .await
    .unwrap();

    let state = connect(&url, &prefix).await;
    let limits = Quota::per_minute().max_in_flight(1).limits();
    // While the holder lives it renews its lease: after two TTLs the slot is still taken.
    tokio::time::sleep(LEASE_TTL * 2).await;
    match state
        .acquire("model", &limits, cost(1, 0), LEASE_TTL)
        .await
        .unwrap()
    {
        Acquire::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, Dimension::InFlight);
            // A slot's release is not announced: the scheduler polls rather than sleeping on.
            assert_eq!(retry_after, None);
        }
        other => panic!("the live holder's slot was given away: {other:?}"),
    }
    let snapshot = state.snapshot("model", &limits).await.unwrap();
    assert_eq!(snapshot.in_flight, 1);
    // The holder renewed at least once since its grant, or the lease would have expired by now.
    let checked_at = snapshot.server_time_us;
    assert!(checked_at > held_at + LEASE_TTL.as_micros() as u64);
    // The lease's expiry as the server holds it just before the kill (a renewal after this read
    // only moves it later).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let expiry_ms: f64 = redis::cmd("ZSCORE")
        .arg(format!("{{{prefix}:model}}:leases"))
        .arg(held_at.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let lease = tokio::time::timeout(
        Duration::from_secs(10),
        acquire(&state, "model", &limits, cost(1, 0), LEASE_TTL),
    )
    .await
    .expect("the crashed holder's slot never came back");
    // The slot did not come back before the dead holder's lease expired on the server's clock.
    assert!(
        lease.id as f64 / 1_000.0 >= expiry_ms,
        "granted at {} ms, the lease expired at {expiry_ms} ms",
        lease.id as f64 / 1_000.0
    );
    state
        .settle("model", &limits, lease, settled(0, false))
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn reconcile_refunds_when_asked_and_charges_extra() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("reconcile")).await;
    // A 1,000-minute period makes refill during the test negligible (a token a minute), however
    // slowly a loaded machine runs it.
    let limits = Quota::per_period(Duration::from_secs(60_000))
        .tokens(1_000)
        .limits();
    let tokens = async || {
        balance(
            &state.snapshot("q", &limits).await.unwrap(),
            Dimension::Tokens,
        )
    };

    let lease = acquire(&state, "q", &limits, cost(1, 600), TTL).await;
    assert!((tokens().await - 400.0).abs() < 1.0);
    // Used 100 of the 600 reserved, and the provider refunds: 500 come back.
    state
        .settle("q", &limits, lease, settled(100, true))
        .await
        .unwrap();
    assert!((tokens().await - 900.0).abs() < 1.0);
    // Without refunds (OpenAI's default) the reservation is the charge.
    let lease = acquire(&state, "q", &limits, cost(1, 300), TTL).await;
    state
        .settle("q", &limits, lease, settled(10, false))
        .await
        .unwrap();
    assert!((tokens().await - 600.0).abs() < 1.0);
    // Used 400 more than reserved: the balance goes into debt and the next call waits it out.
    let lease = acquire(&state, "q", &limits, cost(1, 500), TTL).await;
    state
        .settle("q", &limits, lease, settled(900, false))
        .await
        .unwrap();
    assert!((tokens().await + 300.0).abs() < 1.0);
    match state.acquire("q", &limits, cost(1, 50), TTL).await.unwrap() {
        Acquire::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, Dimension::Tokens);
            // 350 tokens at 1000 per 60,000 s: 21,000 s (less what refilled meanwhile).
            let wait = retry_after.unwrap().as_secs_f64();
            assert!(wait <= 21_000.0 && wait > 20_940.0, "{wait}");
        }
        other => panic!("admitted into debt: {other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn a_refused_dimension_reserves_nothing_in_the_others() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("atomic")).await;
    let limits = Quota::per_period(Duration::from_secs(600))
        .requests(10)
        .tokens(100)
        .max_in_flight(5)
        .limits();
    let lease = acquire(&state, "q", &limits, cost(1, 90), TTL).await;
    for _ in 0..3 {
        let answer = state.acquire("q", &limits, cost(1, 50), TTL).await.unwrap();
        assert!(matches!(
            answer,
            Acquire::Wait {
                dimension: Dimension::Tokens,
                ..
            }
        ));
    }
    let snapshot = state.snapshot("q", &limits).await.unwrap();
    assert!((balance(&snapshot, Dimension::Requests) - 9.0).abs() < 0.1);
    assert_eq!(snapshot.in_flight, 1);
    state
        .settle("q", &limits, lease, settled(90, false))
        .await
        .unwrap();
    assert_eq!(state.snapshot("q", &limits).await.unwrap().in_flight, 0);
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn the_in_flight_cap_is_shared_and_settle_frees_the_slot() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("inflight");
    let one = connect(&url, &prefix).await;
    let other = connect(&url, &prefix).await;
    let limits = Quota::per_minute().max_in_flight(2).limits();
    let a = acquire(&one, "q", &limits, cost(1, 0), TTL).await;
    let _b = acquire(&other, "q", &limits, cost(1, 0), TTL).await;
    assert_eq!(
        other.acquire("q", &limits, cost(1, 0), TTL).await.unwrap(),
        Acquire::Wait {
            retry_after: None,
            dimension: Dimension::InFlight
        }
    );
    one.settle("q", &limits, a, settled(0, false))
        .await
        .unwrap();
    assert!(matches!(
        other.acquire("q", &limits, cost(1, 0), TTL).await.unwrap(),
        Acquire::Granted(_)
    ));
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn a_pause_learned_by_one_process_holds_every_process() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("pause");
    let one = connect(&url, &prefix).await;
    let other = connect(&url, &prefix).await;
    let limits = Quota::per_minute().requests(10).limits();
    one.pause_until("q", Duration::from_secs(20)).await.unwrap();
    // A shorter pause learned later does not shorten it.
    other
        .pause_until("q", Duration::from_secs(1))
        .await
        .unwrap();
    match other.acquire("q", &limits, cost(1, 0), TTL).await.unwrap() {
        Acquire::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, Dimension::Paused);
            assert!(retry_after.unwrap() > Duration::from_secs(19));
        }
        other => panic!("admitted during a pause: {other:?}"),
    }
    let snapshot = other.snapshot("q", &limits).await.unwrap();
    assert!(snapshot.paused_for > Duration::from_secs(19));
    // Nothing was reserved while paused.
    assert!((balance(&snapshot, Dimension::Requests) - 10.0).abs() < 0.01);
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn observe_tightens_but_never_loosens() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("observe")).await;
    // Refill over the test is negligible however slowly it runs (a token a minute).
    let limits = Quota::per_period(Duration::from_secs(60_000))
        .requests(50)
        .tokens(1_000)
        .limits();
    let reading = |requests, tokens| RateLimitReading {
        remaining_requests: Some(requests),
        remaining_tokens: Some(tokens),
        ..RateLimitReading::default()
    };
    state
        .observe("q", &limits, &reading(20, 300))
        .await
        .unwrap();
    state
        .observe("q", &limits, &reading(40, 900))
        .await
        .unwrap();
    let snapshot = state.snapshot("q", &limits).await.unwrap();
    assert!((balance(&snapshot, Dimension::Requests) - 20.0).abs() < 0.1);
    assert!((balance(&snapshot, Dimension::Tokens) - 300.0).abs() < 1.0);
    assert!(matches!(
        state
            .acquire("q", &limits, cost(1, 400), TTL)
            .await
            .unwrap(),
        Acquire::Wait {
            dimension: Dimension::Tokens,
            ..
        }
    ));
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn daily_caps_bind_alongside_the_per_period_buckets() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("daily")).await;
    let limits = Quota::per_minute()
        .requests(100)
        .requests_per_day(2)
        .limits();
    for _ in 0..2 {
        let lease = acquire(&state, "q", &limits, cost(1, 0), TTL).await;
        state
            .settle("q", &limits, lease, settled(0, false))
            .await
            .unwrap();
    }
    let Acquire::Wait {
        dimension,
        retry_after,
    } = state.acquire("q", &limits, cost(1, 0), TTL).await.unwrap()
    else {
        panic!("a third call passed a daily cap of two")
    };
    assert_eq!(dimension, Dimension::RequestsPerDay);
    // Half a day for one request at two per day.
    assert!(retry_after.unwrap() > Duration::from_secs(11 * 3600));
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn start_empty_buckets_admit_nothing_until_they_refill() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("empty")).await;
    let limits = Quota::per_minute().requests(60).start_empty(true).limits();
    let Acquire::Wait {
        dimension,
        retry_after,
    } = state.acquire("q", &limits, cost(1, 0), TTL).await.unwrap()
    else {
        panic!("an empty bucket admitted a call")
    };
    assert_eq!(dimension, Dimension::Requests);
    // One request refills in a second.
    assert!(retry_after.unwrap() <= Duration::from_secs(1));
}

/// `Quota::guard` holds back `guard`'s worth of refill in a shared bucket too, as in memory: ten
/// requests per minute refill one every 6 s, so a 30 s guard keeps five back and a fresh bucket
/// admits five before it waits; a guard longer than the period is capped at the capacity (only a
/// full bucket admits). The next call then waits one request's refill. (The refill between the
/// acquires is a few milliseconds, a thousandth of a request.)
#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn a_guard_holds_back_its_refill_in_the_shared_bucket() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("guard")).await;
    for (guard, burst) in [(0, 10), (30, 5), (3_600, 1)] {
        let key = format!("guard-{guard}");
        let limits = Quota::per_minute()
            .requests(10)
            .guard(Duration::from_secs(guard))
            .limits();
        let mut admitted = 0;
        let wait = loop {
            match state.acquire(&key, &limits, cost(1, 0), TTL).await.unwrap() {
                Acquire::Granted(_) => admitted += 1,
                Acquire::Wait {
                    dimension,
                    retry_after,
                } => {
                    assert_eq!(dimension, Dimension::Requests);
                    break retry_after.unwrap();
                }
                other => panic!("{other:?}"),
            }
            assert!(
                admitted <= 10,
                "a guard of {guard} s admitted over capacity"
            );
        };
        assert_eq!(admitted, burst, "guard {guard} s");
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "guard {guard} s: waited {wait:?}"
        );
    }
}

/// The cold-start shift in a shared bucket: `lag` by 30 s takes five requests' refill out of a
/// fresh bucket of ten per minute (five are admitted, then the next waits one refill), and
/// leaves a window alone (it has no refill to give up: all ten are admitted).
#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn lag_gives_up_refill_in_buckets_and_leaves_windows_alone() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("lag")).await;
    let bucket = Quota::per_minute().requests(10);
    let window = bucket
        .clone()
        .limiter(Limiter::FixedWindow(WindowStart::FirstRequest));
    for (key, quota, burst) in [("bucket", bucket, 5), ("window", window, 10)] {
        let limits = quota.limits();
        state
            .lag(key, &limits, Duration::from_secs(30))
            .await
            .unwrap();
        let mut admitted = 0;
        loop {
            match state.acquire(key, &limits, cost(1, 0), TTL).await.unwrap() {
                Acquire::Granted(_) => admitted += 1,
                Acquire::Wait { dimension, .. } => {
                    assert_eq!(dimension, Dimension::Requests);
                    break;
                }
                other => panic!("{other:?}"),
            }
            assert!(admitted <= 10, "{key}: admitted over capacity");
        }
        assert_eq!(admitted, burst, "{key}");
    }
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn idle_keys_expire_once_the_buckets_are_full_again() {
    let redis = TestRedis::start();
    let url = redis.url();
    let prefix = unique_prefix("expire");
    let state = connect(&url, &prefix).await;
    let limits = Quota::per_period(Duration::from_secs(2))
        .requests(10)
        .max_in_flight(3)
        .limits();
    let lease = acquire(&state, "q", &limits, cost(5, 0), Duration::from_secs(5)).await;

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pttl = async |suffix: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(format!("{{{prefix}:q}}:{suffix}"))
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    let lease_ttl = pttl("leases").await;
    state
        .settle("q", &limits, lease, settled(0, false))
        .await
        .unwrap();
    let bucket_ttl = pttl("buckets").await;
    // Lease TTL plus one second of slack.
    assert!(lease_ttl > 0 && lease_ttl <= 6_000, "{lease_ttl}");
    // Time to full (5 of 10 at 5 per second = 1 s) plus one second of slack.
    assert!(bucket_ttl > 0 && bucket_ttl <= 2_000, "{bucket_ttl}");
    // The last lease gone, its set is gone too (-2: no such key).
    assert_eq!(pttl("leases").await, -2);
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn scripts_reload_after_the_script_cache_is_flushed() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("noscript")).await;
    let limits = Quota::per_minute().requests(10).limits();
    acquire(&state, "q", &limits, cost(1, 0), TTL).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    acquire(&state, "q", &limits, cost(1, 0), TTL).await;
    let snapshot = state.snapshot("q", &limits).await.unwrap();
    assert!((balance(&snapshot, Dimension::Requests) - 8.0).abs() < 0.1);
    assert_eq!(snapshot.in_flight, 2);
}

#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn one_round_trip_per_admission_and_per_settle() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("roundtrips")).await;
    let limits = Quota::per_minute()
        .requests(100)
        .tokens(10_000)
        .tokens_per_day(1_000_000)
        .max_in_flight(4)
        .limits();
    let before = state.metrics().commands;
    for _ in 0..10 {
        let Acquire::Granted(lease) = state
            .acquire("q", &limits, cost(1, 100), TTL)
            .await
            .unwrap()
        else {
            panic!("not admitted")
        };
        state
            .settle("q", &limits, lease, settled(80, true))
            .await
            .unwrap();
    }
    assert_eq!(state.metrics().commands - before, 20);
    assert_eq!(state.metrics().redis_errors, 0);
}

/// Review item 9: settle and observe read a missing bucket as full even with `start_empty`, so a
/// settle or a remaining-quota reading on an expired key refilled it.
#[tokio::test]
#[cfg_attr(
    no_redis,
    ignore = "no REDIS_URL and no redis-server binary at build time"
)]
async fn settle_and_observe_read_a_missing_bucket_as_empty_with_start_empty() {
    let redis = TestRedis::start();
    let url = redis.url();
    let state = connect(&url, &unique_prefix("empty-settle")).await;
    let limits = Quota::per_minute().tokens(6_000).start_empty(true).limits();
    let reading = RateLimitReading {
        remaining_tokens: Some(3_000),
        ..RateLimitReading::default()
    };
    state.observe("o", &limits, &reading).await.unwrap();
    let level = balance(
        &state.snapshot("o", &limits).await.unwrap(),
        Dimension::Tokens,
    );
    assert!(
        level < 100.0,
        "observe must not fill an empty bucket: {level}"
    );

    // An extra charge settled on a missing (expired) bucket leaves it in debt, not at cap − 50.
    let lease = Lease {
        id: 1,
        cost: cost(1, 100),
    };
    state
        .settle("s", &limits, lease, settled(150, false))
        .await
        .unwrap();
    let level = balance(
        &state.snapshot("s", &limits).await.unwrap(),
        Dimension::Tokens,
    );
    assert!(
        level < 100.0,
        "settle must not fill an empty bucket: {level}"
    );
}
