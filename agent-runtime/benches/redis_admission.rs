//! What sharing a quota through Redis costs and delivers:
//!
//! 1. Redis round trips per admission and per settle (client count and the server's
//!    `INFO commandstats`), against a bare `PING`;
//! 2. the admission latency Redis adds: `QuotaScheduler::call` with an instant model on the
//!    in-memory state and on Redis, sequential and with 8 concurrent callers (p50/p99);
//! 3. four processes sharing one quota: makespan against the lower bound of
//!    `reference/rate-limits.md` §3.3, and the 429s a provider enforcing the same buckets would
//!    have sent for the calls as admitted (replayed at their Redis grant times).
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo bench -p agent-runtime --no-default-features --features redis --bench redis_admission`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops loudly

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::{
    Budget, CallKind, ChatModel, ChatRequest, Completion, Message, ModelError, RateLimitReading,
    TokenEstimator, Usage, async_trait,
};
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{
    Acquire, Cost, Lease, Limits, ModelCall, Quota, QuotaScheduler, QuotaState, Settlement,
    StateError,
};

const WORKER_ENV: &str = "TURNSTILE_REDIS_BENCH_WORKER";

/// One token per character, nothing else: a request's cost is exactly what the bench says.
#[derive(Debug)]
struct Exact;

impl TokenEstimator for Exact {
    fn message_tokens(&self, message: &Message) -> u64 {
        message.char_len() as u64
    }
    fn prompt_tokens(&self, request: &ChatRequest) -> u64 {
        request
            .messages
            .iter()
            .map(|m| self.message_tokens(m))
            .sum()
    }
}

/// Answers after `latency`, reporting exactly the prompt as usage.
struct Model {
    latency: Duration,
}

#[async_trait]
impl ChatModel for Model {
    fn id(&self) -> &str {
        "model"
    }
    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let tokens = Exact.prompt_tokens(&request);
        Ok(Completion::text("model", "ok", Usage::new(tokens, 0)))
    }
}

fn request(tokens: usize) -> ChatRequest {
    ChatRequest::new(vec![Message::user("x".repeat(tokens))]).with_max_completion_tokens(0)
}

/// Records every grant's server time (the lease id) and cost.
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
        ttl: Duration,
    ) -> Result<Acquire, StateError> {
        let answer = self.inner.acquire(key, limits, cost, ttl).await?;
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
        s: Settlement,
    ) -> Result<(), StateError> {
        self.inner.settle(key, limits, lease, s).await
    }
    async fn pause_until(&self, key: &str, d: Duration) -> Result<(), StateError> {
        self.inner.pause_until(key, d).await
    }
    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        r: &RateLimitReading,
    ) -> Result<(), StateError> {
        self.inner.observe(key, limits, r).await
    }
}

fn prefix(what: &str) -> String {
    format!("turnstile-bench:{what}:{:016x}", rand::random::<u64>())
}

async fn connect(url: &str, prefix: &str) -> RedisQuotaState {
    RedisQuotaState::connect(url, RedisQuotaConfig::default().with_key_prefix(prefix))
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    format!(
        "p50 {:>8.1} µs  p99 {:>8.1} µs  (n={})",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.len()
    )
}

async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Round trips and latency of the backend alone.
async fn backend(url: &str) {
    const N: usize = 2_000;
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut ping = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        ping.push(t.elapsed());
    }
    let state = connect(url, &prefix("backend")).await;
    let limits = Quota::per_minute()
        .requests(u64::MAX / 4)
        .tokens(u64::MAX / 4)
        .max_in_flight(1_000)
        .limits();
    let cost = Cost {
        requests: 1,
        tokens: 100,
    };
    let ttl = Duration::from_secs(60);
    // Warm up (loads the scripts).
    for _ in 0..50 {
        if let Acquire::Granted(l) = state.acquire("k", &limits, cost, ttl).await.unwrap() {
            let s = Settlement {
                actual_tokens: 80,
                refund_unused: true,
            };
            state.settle("k", &limits, l, s).await.unwrap();
        }
    }
    let (before_client, before_server) = (state.metrics().commands, evalsha_calls(&mut conn).await);
    let (mut acquire, mut settle) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let t = Instant::now();
        let Acquire::Granted(lease) = state.acquire("k", &limits, cost, ttl).await.unwrap() else {
            panic!("unlimited quota refused")
        };
        acquire.push(t.elapsed());
        let t = Instant::now();
        let s = Settlement {
            actual_tokens: 80,
            refund_unused: true,
        };
        state.settle("k", &limits, lease, s).await.unwrap();
        settle.push(t.elapsed());
    }
    let client_cmds = state.metrics().commands - before_client;
    // INFO itself is not an EVALSHA, so the server count is exact.
    let server_cmds = evalsha_calls(&mut conn).await - before_server;
    println!("backend (one RedisQuotaState, sequential, {N} admissions)");
    println!("  PING            {}", summary(ping));
    println!("  acquire script  {}", summary(acquire));
    println!("  settle script   {}", summary(settle));
    println!(
        "  round trips: {:.2} per admission+settle by the client, {:.2} EVALSHA per admission+settle at the server",
        client_cmds as f64 / N as f64,
        server_cmds as f64 / N as f64
    );
}

async fn timed_calls(scheduler: &QuotaScheduler, n: usize) -> Vec<Duration> {
    let model = Model {
        latency: Duration::ZERO,
    };
    let budget = Budget::unlimited();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let call = ModelCall::new(&model, request(20), CallKind::Reply, "c", "a", &budget);
        scheduler.call(call).await.unwrap();
        samples.push(t.elapsed());
    }
    samples
}

/// The latency Redis adds to a whole scheduler call.
async fn scheduler_latency(url: &str) {
    const N: usize = 2_000;
    let quota = Quota::per_minute()
        .requests(1_000_000_000)
        .tokens(1_000_000_000_000)
        .max_in_flight(1_000);
    let memory = QuotaScheduler::builder()
        .quota("model", quota.clone())
        .estimator(Exact)
        .build()
        .unwrap();
    let redis = QuotaScheduler::builder()
        .quota("model", quota)
        .estimator(Exact)
        .state(Arc::new(connect(url, &prefix("scheduler")).await))
        .build()
        .unwrap();
    timed_calls(&memory, 100).await;
    timed_calls(&redis, 100).await;
    let mem = timed_calls(&memory, N).await;
    let red = timed_calls(&redis, N).await;
    println!("scheduler call, instant model, sequential");
    println!("  in-memory state {}", summary(mem));
    println!("  Redis state     {}", summary(red));

    // Eight concurrent callers on one scheduler (eight conversations).
    let t = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move { timed_calls(&redis, N / 8).await })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = t.elapsed();
    println!(
        "  Redis, 8 callers {}  {:.0} calls/s",
        summary(all),
        N as f64 / elapsed.as_secs_f64()
    );
}

/// The shared-quota scenario each worker process runs.
const PROCESSES: usize = 4;
const CONVERSATIONS: usize = 8;
const CALLS_PER_CONVERSATION: usize = 2;
const TOKENS_PER_CALL: usize = 200;
const LATENCY: Duration = Duration::from_millis(50);
const PERIOD: Duration = Duration::from_secs(10);
const RPM: u64 = 40;
const TPM: u64 = 4_000;
const IN_FLIGHT: u32 = 8;

fn scenario_quota() -> Quota {
    Quota::per_period(PERIOD)
        .requests(RPM)
        .tokens(TPM)
        .max_in_flight(IN_FLIGHT)
}

async fn server_time_us(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1_000_000 + us
}

async fn worker(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let state = Arc::new(Recording {
        inner: connect(url, prefix).await,
        grants: Mutex::default(),
    });
    let scheduler = QuotaScheduler::builder()
        .quota("model", scenario_quota())
        .estimator(Exact)
        .state(state.clone())
        .poll_interval(Duration::from_millis(10))
        .max_admission_wait(Duration::from_secs(120))
        .build()
        .unwrap();
    let start = server_time_us(&mut conn).await;
    let tasks: Vec<_> = (0..CONVERSATIONS)
        .map(|c| {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                let model = Model { latency: LATENCY };
                let budget = Budget::unlimited();
                let conversation = format!("conversation-{c}");
                for _ in 0..CALLS_PER_CONVERSATION {
                    let call = ModelCall::new(
                        &model,
                        request(TOKENS_PER_CALL),
                        CallKind::Reply,
                        &conversation,
                        "agent",
                        &budget,
                    );
                    scheduler.call(call).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let end = server_time_us(&mut conn).await;
    let snapshot = scheduler.snapshot();
    println!("SPAN {start} {end}");
    println!("LOCAL429 {}", snapshot.keys["model"].rate_limited.total());
    for (t, c) in state.grants.lock().unwrap().iter() {
        println!("GRANT {t} {} {}", c.requests, c.tokens);
    }
}

/// 429s a provider enforcing continuous buckets (full at the start) would send for these
/// admissions, replayed at their grant times; a refused call takes nothing.
fn provider_429s(grants: &mut [(u64, u64, u64)]) -> usize {
    grants.sort_unstable();
    let mut buckets = [(RPM as f64, RPM as f64), (TPM as f64, TPM as f64)];
    let mut last = grants.first().map_or(0, |g| g.0);
    let mut refused = 0;
    for &(t, requests, tokens) in grants.iter() {
        let dt = (t - last) as f64 / 1e6;
        last = t;
        for (level, cap) in &mut buckets {
            *level = (*level + *cap * dt / PERIOD.as_secs_f64()).min(*cap);
        }
        // 1e-6 absorbs the float formatting of the scripts.
        if buckets[0].0 + 1e-6 < requests as f64 || buckets[1].0 + 1e-6 < tokens as f64 {
            refused += 1;
            continue;
        }
        buckets[0].0 -= requests as f64;
        buckets[1].0 -= tokens as f64;
    }
    refused
}

/// Four processes sharing one quota.
fn processes(url: &str) {
    let prefix = prefix("fanout");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(WORKER_ENV, &prefix)
                .env("REDIS_URL", url)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut first, mut last, mut local_429s) = (u64::MAX, 0u64, 0u64);
    let mut grants = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<u64> = line
                .split(' ')
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            match line.split(' ').next() {
                Some("SPAN") => {
                    first = first.min(fields[0]);
                    last = last.max(fields[1]);
                }
                Some("LOCAL429") => local_429s += fields[0],
                Some("GRANT") => grants.push((fields[0], fields[1], fields[2])),
                _ => {}
            }
        }
    }
    let n = (PROCESSES * CONVERSATIONS * CALLS_PER_CONVERSATION) as u64;
    let tokens = n * TOKENS_PER_CALL as u64;
    let period = PERIOD.as_secs_f64();
    let latency = LATENCY.as_secs_f64();
    // §3.3 with full buckets: the last request/token can be admitted no earlier than A_R/A_T.
    let a_r = period * n.saturating_sub(RPM) as f64 / RPM as f64;
    let a_t = period * tokens.saturating_sub(TPM) as f64 / TPM as f64;
    let work = n as f64 * latency / f64::from(IN_FLIGHT).min((PROCESSES * CONVERSATIONS) as f64);
    let chain = CALLS_PER_CONVERSATION as f64 * latency;
    let lower_bound = (a_r + latency).max(a_t + latency).max(work).max(chain);
    let makespan = (last - first) as f64 / 1e6;
    assert_eq!(
        grants.len() as u64,
        n,
        "every call was admitted through Redis"
    );
    let refused = provider_429s(&mut grants);
    println!(
        "{PROCESSES} processes x {CONVERSATIONS} conversations x {CALLS_PER_CONVERSATION} calls of {TOKENS_PER_CALL} tokens, {LATENCY:?} latency; quota {RPM} requests + {TPM} tokens per {PERIOD:?}, {IN_FLIGHT} in flight, shared through Redis"
    );
    println!(
        "  makespan {makespan:.2} s, lower bound {lower_bound:.2} s (efficiency {:.3}); 429s: {refused} from a provider with the same buckets, {local_429s} seen by the schedulers",
        lower_bound / makespan
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(prefix) = std::env::var(WORKER_ENV) {
        let url = std::env::var("REDIS_URL").unwrap();
        runtime.block_on(worker(&url, &prefix));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only in benches.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipping: REDIS_URL not set");
        return;
    };
    runtime.block_on(backend(&url));
    runtime.block_on(scheduler_latency(&url));
    processes(&url);
}
