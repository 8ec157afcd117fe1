//! The shared quota against a real Redis (`REDIS_URL`): atomic check-and-reserve across tasks and
//! processes, lease expiry after a crash, reconcile, pause and observe.
//!
//! Redis keeps real time, so these tests cannot run on tokio's paused clock. They never assert on
//! wall-clock durations: every window check uses the **server** timestamps the script stamped on
//! each grant, and the bucket bound they check holds exactly for those timestamps.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_runtime::scheduler::redis_state::{
    Admission, BucketSpec, RedisLease, RedisQuotaConfig, RedisQuotaState,
};

/// Set in a child process to make `worker_process` run (and tell it what to do).
const WORKER_ENV: &str = "TURNSTILE_REDIS_TEST_WORKER";

fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipping: REDIS_URL not set");
    }
    url
}

/// Kills a worker process if the test fails before it does (a holder never exits by itself).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The text after `tag` on a worker's output line (libtest may print its own status first).
fn worker_field<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.split_once(tag).map(|(_, rest)| rest)
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    format!("turnstile-test:{test}:{:016x}", rand::random::<u64>())
}

async fn state(url: &str, prefix: &str) -> RedisQuotaState {
    RedisQuotaState::connect(url, RedisQuotaConfig::default().with_key_prefix(prefix))
        .await
        .unwrap()
}

/// Acquires until granted, sleeping as told; panics on `Never`.
async fn acquire_blocking(
    state: &RedisQuotaState,
    quota: &str,
    costs: &[(BucketSpec, u64)],
    max_in_flight: Option<u32>,
) -> RedisLease {
    loop {
        match state.acquire(quota, costs, max_in_flight).await.unwrap() {
            Admission::Granted(lease) => return lease,
            Admission::Wait { retry_after, .. } => tokio::time::sleep(retry_after).await,
            other => panic!("unexpected admission {other:?}"),
        }
    }
}

/// Checks that grants (server µs, amount) conform to a bucket of `capacity` per `period` that
/// starts full: for every pair of grants i ≤ j, the amount granted in [t_i, t_j] is at most
/// capacity + refill over (t_j − t_i). This is the provider's own rule, so a provider with
/// these limits would have answered none of these calls with a 429.
fn assert_conforms(grants: &mut [(u64, u64)], capacity: u64, period: Duration, what: &str) {
    grants.sort_unstable();
    let rate_per_us = capacity as f64 / period.as_micros() as f64;
    for i in 0..grants.len() {
        let mut sum = 0u64;
        for j in i..grants.len() {
            sum += grants[j].1;
            let span = (grants[j].0 - grants[i].0) as f64;
            let bound = capacity as f64 + rate_per_us * span;
            // 0.01 absorbs the scripts' float formatting (levels at 1e-6, times at 1 µs).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedulers_in_one_process_never_exceed_the_bucket() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("tasks");
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(1));
    let tokens = BucketSpec::new("tokens", 1_000, Duration::from_secs(1));
    // Three independent backends (three connections) stand in for three schedulers.
    let mut handles = Vec::new();
    for scheduler in 0..3u64 {
        let state = state(&url, &prefix).await;
        for task in 0..4u64 {
            let state = state.clone();
            handles.push(tokio::spawn(async move {
                let mut grants = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
                let mut n = 0;
                while tokio::time::Instant::now() < deadline {
                    let cost = 60 + (scheduler * 7 + task * 13 + n) % 90;
                    n += 1;
                    let lease =
                        acquire_blocking(&state, "model", &[(requests, 1), (tokens, cost)], None)
                            .await;
                    grants.push((lease.granted_at_us(), cost));
                    assert!(state.settle(lease, &[]).await);
                }
                grants
            }));
        }
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    // The bucket starts full, so at least its burst was admitted: the test exercised the limit.
    assert!(all.len() >= 10, "only {} admissions", all.len());
    let mut by_request: Vec<_> = all.iter().map(|&(t, _)| (t, 1)).collect();
    assert_conforms(&mut by_request, 10, Duration::from_secs(1), "requests");
    assert_conforms(&mut all, 1_000, Duration::from_secs(1), "tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_in_separate_processes_share_one_quota() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("processes");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "worker_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WORKER_ENV, format!("share {prefix}"))
                .env("REDIS_URL", &url)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut grants = Vec::new();
    let mut per_process = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed: {out:?}");
        let mine: Vec<(u64, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| worker_field(l, "GRANT "))
            .map(|l| {
                let (t, c) = l.split_once(' ').unwrap();
                (t.parse().unwrap(), c.parse().unwrap())
            })
            .collect();
        per_process.push(mine.len());
        grants.extend(mine);
    }
    assert!(
        per_process.iter().all(|&n| n > 0),
        "every process was admitted: {per_process:?}"
    );
    let mut by_request: Vec<_> = grants.iter().map(|&(t, _)| (t, 1)).collect();
    assert_conforms(&mut by_request, 8, Duration::from_secs(1), "requests");
    assert_conforms(&mut grants, 800, Duration::from_secs(1), "tokens");
}

/// Runs only in child processes spawned by the tests above (it returns at once otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process() {
    let Ok(job) = std::env::var(WORKER_ENV) else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap();
    let (mode, prefix) = job.split_once(' ').unwrap();
    match mode {
        "share" => {
            let state = state(&url, prefix).await;
            let requests = BucketSpec::new("requests", 8, Duration::from_secs(1));
            let tokens = BucketSpec::new("tokens", 800, Duration::from_secs(1));
            let mut tasks = Vec::new();
            for task in 0..3u64 {
                let state = state.clone();
                tasks.push(tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
                    let mut n = 0;
                    let mut lines = Vec::new();
                    while tokio::time::Instant::now() < deadline {
                        let cost = 50 + (task * 31 + n * 17) % 100;
                        n += 1;
                        let lease = acquire_blocking(
                            &state,
                            "model",
                            &[(requests, 1), (tokens, cost)],
                            Some(4),
                        )
                        .await;
                        lines.push(format!("GRANT {} {cost}", lease.granted_at_us()));
                        // A short call, then refund nothing: the reservation is the charge.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        state.settle(lease, &[]).await;
                    }
                    lines
                }));
            }
            for t in tasks {
                for line in t.await.unwrap() {
                    println!("{line}");
                }
            }
        }
        "hold" => {
            // Takes the only slot, reports when, then holds it (renewing) until killed.
            let state = RedisQuotaState::connect(
                &url,
                RedisQuotaConfig::default()
                    .with_key_prefix(prefix)
                    .with_lease_ttl(Duration::from_millis(600)),
            )
            .await
            .unwrap();
            let lease = acquire_blocking(&state, "model", &[], Some(1)).await;
            println!("HELD {}", lease.granted_at_us());
            std::future::pending::<()>().await;
        }
        other => panic!("unknown worker mode {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_slot_returns_after_its_lease_expires() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("crash");
    let ttl = Duration::from_millis(600);
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, format!("hold {prefix}"))
            .env("REDIS_URL", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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

    let state = RedisQuotaState::connect(
        &url,
        RedisQuotaConfig::default()
            .with_key_prefix(&prefix)
            .with_lease_ttl(ttl),
    )
    .await
    .unwrap();
    // While the holder lives it renews its lease: after two TTLs the slot is still taken.
    tokio::time::sleep(ttl * 2).await;
    match state.acquire("model", &[], Some(1)).await.unwrap() {
        Admission::Wait { dimension, .. } => assert_eq!(dimension, "in_flight"),
        other => panic!("the live holder's slot was given away: {other:?}"),
    }
    let snapshot = state.snapshot("model", &[]).await.unwrap();
    assert_eq!(snapshot.in_flight, 1);
    let renewed_until = snapshot.server_time_us;

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let lease = tokio::time::timeout(
        Duration::from_secs(10),
        acquire_blocking(&state, "model", &[], Some(1)),
    )
    .await
    .expect("the crashed holder's slot never came back");
    // The slot came back only once the lease (renewed until at least `renewed_until` − TTL/3)
    // had expired, on the server's clock.
    let ttl_us = ttl.as_micros() as u64;
    assert!(lease.granted_at_us() >= held_at + ttl_us);
    assert!(lease.granted_at_us() >= renewed_until - ttl_us / 3 + ttl_us - ttl_us / 3);
    assert!(state.settle(lease, &[]).await);
}

#[tokio::test]
async fn reconcile_refunds_and_charges_extra() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("reconcile")).await;
    // A ten-minute period makes refill during the test negligible (< 0.2 tokens per 100 ms).
    let tokens = BucketSpec::new("tokens", 1_000, Duration::from_secs(600));
    let level = |s: &RedisQuotaState| {
        let s = s.clone();
        async move { s.snapshot("q", &[tokens]).await.unwrap().levels[0].1 }
    };

    let lease = acquire_blocking(&state, "q", &[(tokens, 600)], None).await;
    assert!((level(&state).await - 400.0).abs() < 1.0);
    // Used 100 of the 600 reserved: 500 come back.
    assert!(state.settle(lease, &[(tokens, 500)]).await);
    assert!((level(&state).await - 900.0).abs() < 1.0);
    // A refund never lifts the bucket above capacity.
    let lease = acquire_blocking(&state, "q", &[(tokens, 100)], None).await;
    state.settle(lease, &[(tokens, 5_000)]).await;
    assert!((level(&state).await - 1_000.0).abs() < 1.0);
    // Used 400 more than reserved: the bucket goes into debt and the next call waits it out.
    let lease = acquire_blocking(&state, "q", &[(tokens, 700)], None).await;
    state.settle(lease, &[(tokens, -400)]).await;
    assert!((level(&state).await + 100.0).abs() < 1.0);
    match state.acquire("q", &[(tokens, 50)], None).await.unwrap() {
        Admission::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, "tokens");
            // 150 tokens at 1000 per 600 s: about 90 s.
            let expected = 150.0 * 0.6;
            assert!(
                (retry_after.as_secs_f64() - expected).abs() < 1.0,
                "{retry_after:?}"
            );
        }
        other => panic!("admitted into debt: {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_dimension_reserves_nothing_in_the_others() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("atomic")).await;
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(600));
    let tokens = BucketSpec::new("tokens", 100, Duration::from_secs(600));
    let lease = acquire_blocking(&state, "q", &[(requests, 1), (tokens, 90)], Some(5)).await;
    state.settle(lease, &[]).await;
    for _ in 0..3 {
        let admission = state
            .acquire("q", &[(requests, 1), (tokens, 50)], Some(5))
            .await
            .unwrap();
        assert!(
            matches!(admission, Admission::Wait { ref dimension, .. } if dimension == "tokens")
        );
    }
    let snapshot = state.snapshot("q", &[requests, tokens]).await.unwrap();
    assert!((snapshot.levels[0].1 - 9.0).abs() < 0.1, "{snapshot:?}");
    assert_eq!(snapshot.in_flight, 0);
}

#[tokio::test]
async fn in_flight_is_limited_and_released_by_settle_and_by_drop() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("inflight")).await;
    let a = acquire_blocking(&state, "q", &[], Some(2)).await;
    let b = acquire_blocking(&state, "q", &[], Some(2)).await;
    match state.acquire("q", &[], Some(2)).await.unwrap() {
        Admission::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, "in_flight");
            // Polled, not slept until the lease expiry.
            assert!(retry_after <= state.config().in_flight_poll);
        }
        other => panic!("third call admitted over the in-flight limit: {other:?}"),
    }
    assert!(state.settle(a, &[]).await);
    // A cancelled call drops its lease unsettled: the slot comes back without waiting for expiry.
    drop(b);
    let snapshot = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = state.snapshot("q", &[]).await.unwrap();
            if s.in_flight == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("dropped lease was never released");
    assert_eq!(snapshot.in_flight, 0);
}

#[tokio::test]
async fn a_pause_set_by_one_process_holds_every_process() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("pause");
    let one = state(&url, &prefix).await;
    let other = state(&url, &prefix).await;
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(60));
    let pause = one.pause_for("q", Duration::from_secs(20)).await.unwrap();
    assert!(pause > Duration::from_secs(19));
    // A shorter pause learned later does not shorten it.
    let still = other.pause_for("q", Duration::from_secs(1)).await.unwrap();
    assert!(still > Duration::from_secs(19));
    match other.acquire("q", &[(requests, 1)], None).await.unwrap() {
        Admission::Wait {
            dimension,
            retry_after,
        } => {
            assert_eq!(dimension, "paused");
            assert!(retry_after > Duration::from_secs(19));
        }
        other => panic!("admitted during a pause: {other:?}"),
    }
    // Nothing was reserved while paused.
    let snapshot = other.snapshot("q", &[requests]).await.unwrap();
    assert!((snapshot.levels[0].1 - 10.0).abs() < 0.01);
}

#[tokio::test]
async fn observe_tightens_but_never_loosens() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("observe")).await;
    let tokens = BucketSpec::new("tokens", 1_000, Duration::from_secs(600));
    state.observe("q", &[(tokens, 300)]).await.unwrap();
    let level = state.snapshot("q", &[tokens]).await.unwrap().levels[0].1;
    assert!((level - 300.0).abs() < 1.0);
    state.observe("q", &[(tokens, 900)]).await.unwrap();
    let level = state.snapshot("q", &[tokens]).await.unwrap().levels[0].1;
    assert!((level - 300.0).abs() < 1.0);
    assert!(matches!(
        state.acquire("q", &[(tokens, 400)], None).await.unwrap(),
        Admission::Wait { .. }
    ));
}

#[tokio::test]
async fn a_cost_above_capacity_is_never_admissible() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("never")).await;
    let tokens = BucketSpec::new("tokens", 1_000, Duration::from_secs(60));
    match state.acquire("q", &[(tokens, 1_001)], None).await.unwrap() {
        Admission::Never {
            dimension,
            capacity,
        } => {
            assert_eq!(dimension, "tokens");
            assert_eq!(capacity, 1_000);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn idle_keys_expire_once_the_buckets_are_full_again() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("expire");
    let state = RedisQuotaState::connect(
        &url,
        RedisQuotaConfig::default()
            .with_key_prefix(&prefix)
            .with_lease_ttl(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(2));
    let lease = acquire_blocking(&state, "q", &[(requests, 5)], Some(3)).await;

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
    state.settle(lease, &[]).await;
    let bucket_ttl = pttl("buckets").await;
    // The last lease gone, its set is gone too (-2: no such key).
    assert_eq!(pttl("leases").await, -2);
    // Time to full (5 of 10 at 5 per second = 1 s) plus one second of slack.
    assert!(bucket_ttl > 0 && bucket_ttl <= 2_000, "{bucket_ttl}");
    // Lease TTL plus one second of slack.
    assert!(lease_ttl > 0 && lease_ttl <= 6_000, "{lease_ttl}");
}

#[tokio::test]
async fn scripts_reload_after_the_script_cache_is_flushed() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("noscript")).await;
    let requests = BucketSpec::new("requests", 10, Duration::from_secs(60));
    let lease = acquire_blocking(&state, "q", &[(requests, 1)], None).await;
    state.settle(lease, &[]).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let lease = acquire_blocking(&state, "q", &[(requests, 1)], None).await;
    assert!(state.settle(lease, &[]).await);
    let level = state.snapshot("q", &[requests]).await.unwrap().levels[0].1;
    assert!((level - 8.0).abs() < 0.1);
}

#[tokio::test]
async fn one_round_trip_per_admission_and_per_settle() {
    let Some(url) = redis_url() else { return };
    let state = state(&url, &unique_prefix("roundtrips")).await;
    let requests = BucketSpec::new("requests", 100, Duration::from_secs(60));
    let tokens = BucketSpec::new("tokens", 10_000, Duration::from_secs(60));
    let before = state.metrics().commands;
    for _ in 0..10 {
        let Admission::Granted(lease) = state
            .acquire("q", &[(requests, 1), (tokens, 100)], Some(4))
            .await
            .unwrap()
        else {
            panic!("not admitted")
        };
        state.settle(lease, &[(tokens, 20)]).await;
    }
    assert_eq!(state.metrics().commands - before, 20);
    assert_eq!(state.metrics().redis_errors, 0);
}
