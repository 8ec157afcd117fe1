//! The limiter kinds in the shared Redis quota (`REDIS_URL`): fixed windows on the server's clock
//! and anchored at the first request, and sliding logs — the same bounds the in-memory meters
//! keep, checked on the **server** timestamps of the grants (a lease id is its grant's server
//! time in µs), never on wall-clock durations.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use agent_core::RateLimitReading;
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{
    Acquire, Cost, Dimension, Limiter, Limits, Quota, QuotaState, Settlement, WindowStart,
};

const TTL: Duration = Duration::from_secs(30);
const ONE: Cost = Cost {
    requests: 1,
    tokens: 0,
};

async fn connect(test: &str) -> Option<RedisQuotaState> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipping: REDIS_URL not set");
        return None;
    };
    let prefix = format!("turnstile-test:{test}:{:016x}", rand::random::<u64>());
    let config = RedisQuotaConfig::default().with_key_prefix(prefix);
    Some(RedisQuotaState::connect(&url, config).await.unwrap())
}

/// `tasks` concurrent callers each take `each` requests, waiting as told; returns the grants'
/// server times in µs.
async fn grants(state: &RedisQuotaState, limits: Limits, tasks: usize, each: usize) -> Vec<u64> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let state = state.clone();
        handles.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while times.len() < each {
                match state.acquire("m", &limits, ONE, TTL).await.unwrap() {
                    Acquire::Granted(lease) => {
                        times.push(lease.id);
                        let s = Settlement {
                            actual_tokens: 0,
                            refund_unused: false,
                        };
                        state.settle("m", &limits, lease, s).await.unwrap();
                    }
                    Acquire::Wait { retry_after, .. } => {
                        let wait = retry_after.unwrap_or(Duration::from_millis(5));
                        tokio::time::sleep(wait).await;
                    }
                    other => panic!("{other:?}"),
                }
            }
            times
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    all
}

#[tokio::test]
async fn clock_windows_never_admit_more_than_the_limit_per_window() {
    let Some(state) = connect("clock-windows").await else {
        return;
    };
    let period = Duration::from_millis(500);
    let limits = Quota::per_period(period)
        .requests(3)
        .limiter(Limiter::FixedWindow(WindowStart::Clock))
        .limits();
    let times = grants(&state, limits, 4, 3).await;
    assert_eq!(times.len(), 12);
    // Windows start at multiples of the period since the epoch, plus the skew margin (1 %).
    let period_us = 500_000u64;
    let margin_us = 5_000u64;
    let mut per_window = std::collections::HashMap::<u64, u32>::new();
    for t in &times {
        *per_window.entry((t - margin_us) / period_us).or_default() += 1;
    }
    assert!(per_window.values().all(|n| *n <= 3), "{per_window:?}");
    assert!(
        per_window.len() >= 4,
        "12 grants at 3 a window: {per_window:?}"
    );
}

#[tokio::test]
async fn first_request_windows_wait_for_their_end_and_reports_close_them() {
    let Some(state) = connect("first-request-windows").await else {
        return;
    };
    let period = Duration::from_secs(2);
    let limits = Quota::per_period(period)
        .requests(3)
        .limiter(Limiter::FixedWindow(WindowStart::FirstRequest))
        .limits();
    let mut first = None;
    for _ in 0..2 {
        match state.acquire("m", &limits, ONE, TTL).await.unwrap() {
            Acquire::Granted(lease) => {
                first.get_or_insert(lease.id);
            }
            other => panic!("{other:?}"),
        }
    }
    // The provider says nothing is left: the window closes until its end, two seconds after
    // the first grant.
    let empty = RateLimitReading {
        remaining_requests: Some(0),
        ..RateLimitReading::default()
    };
    state.observe("m", &limits, &empty).await.unwrap();
    match state.acquire("m", &limits, ONE, TTL).await.unwrap() {
        Acquire::Wait {
            retry_after: Some(wait),
            dimension: Dimension::Requests,
        } => assert!(wait <= period && !wait.is_zero(), "{wait:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sliding_logs_admit_at_most_the_limit_in_any_period() {
    let Some(state) = connect("sliding").await else {
        return;
    };
    let period = Duration::from_millis(400);
    let limits = Quota::per_period(period)
        .requests(3)
        .limiter(Limiter::SlidingWindow)
        .limits();
    let times = grants(&state, limits, 4, 3).await;
    assert_eq!(times.len(), 12);
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| **t < start + 400_000)
            .count();
        assert!(n <= 3, "{n} grants within one period from {start}");
    }
}

/// Grants within the skew margin of either side of a clock boundary may be counted by the
/// provider in the window after it (its clock, the network): they count in the next window here
/// too, so a run that starts just before or after a boundary cannot spend the tail of one
/// window and then the whole of the next into the provider's one window. Three grants at the
/// boundary of 1 s windows of three, then, past the margin, a fourth: it waits for the window
/// after (without the carry it is granted: checked by disabling it).
#[tokio::test]
async fn grants_at_a_boundary_count_in_the_next_window_too() {
    let Some(state) = connect("clock-band").await else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let period_us: u64 = 1_000_000;
    let margin_us: u64 = 10_000;
    let server_us = async |conn: &mut redis::aio::MultiplexedConnection| -> u64 {
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
        s * 1_000_000 + us
    };
    let limits = Quota::per_period(Duration::from_micros(period_us))
        .requests(3)
        .limiter(Limiter::FixedWindow(WindowStart::Clock))
        .limits();
    // 5 ms before the next boundary of the server's clock.
    let now = server_us(&mut conn).await;
    let boundary = (now / period_us + 1) * period_us;
    tokio::time::sleep(Duration::from_micros(boundary - now - 5_000)).await;
    let mut granted = Vec::new();
    for _ in 0..3 {
        match state.acquire("m", &limits, ONE, TTL).await.unwrap() {
            Acquire::Granted(lease) => granted.push(lease.id),
            other => panic!("a fresh window refused: {other:?}"),
        }
    }
    let in_band = granted
        .iter()
        .all(|t| t + margin_us >= boundary && *t < boundary + margin_us);
    // Past the margin: this side's next window has opened.
    let now = server_us(&mut conn).await;
    if now < boundary + 3 * margin_us {
        tokio::time::sleep(Duration::from_micros(boundary + 3 * margin_us - now)).await;
    }
    let fourth = state.acquire("m", &limits, ONE, TTL).await.unwrap();
    if in_band {
        match fourth {
            Acquire::Wait { dimension, .. } => assert_eq!(dimension, Dimension::Requests),
            // Granted a whole window later (the machine stalled past it): nothing to check.
            Acquire::Granted(lease) if lease.id >= boundary + period_us + margin_us => {}
            other => panic!(
                "grants at {granted:?} (boundary {boundary}) were not counted in the next window: {other:?}"
            ),
        }
    } else {
        eprintln!(
            "the machine stalled: grants at {granted:?} fell outside the band around {boundary}; nothing to check this run"
        );
    }
}
