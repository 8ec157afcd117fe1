//! Goodput: does Turnstile run a workload as fast as the provider's quota allows, and no faster?
//!
//! `cargo bench -p agent-runtime --bench goodput` (add `-- --quick` for a smoke run,
//! `-- --write-docs` to replace the tables in `docs/benchmarks.md`, `-- --semantics` for only the
//! limiter-semantics rows, `-- --repeat N` to run each of those N times).
//!
//! Every scenario runs in real time over real HTTP: group chats of `LlmAgent`s (the `fanout`
//! workload, or the mixed workload below) call an `OpenAiProvider` pointed at the in-process
//! `MockServer` on 127.0.0.1, which enforces OpenAI's continuous RPM/TPM buckets (or a local
//! server's slots) with a compressed period and answers after a per-request plus per-token
//! latency. Each scenario runs twice: **configured** (the client's quota equals the provider's)
//! and **learned** (nothing configured but the period; limits come from `x-ratelimit-*` headers).
//!
//! The makespan is compared with the lower bound of rate-limits.md §3.3, computed from what the
//! provider actually admitted and served (its `SimStats`) and the per-conversation chains the
//! scheduler recorded — see `docs/benchmarks.md` for the formula and how to read each column.
#![allow(missing_docs, clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench stops loudly

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, ChatModel, ChatRequest, Completion, LlmAgent, Message,
};
use agent_runtime::chat::GroupChat;
use agent_runtime::fanout::{DEFAULT_TASK, FanoutConfig, run_fanout};
use agent_runtime::mock::MockServer;
use agent_runtime::provider::{LimiterKind, OpenAiProvider, SimConfig, SimStats, WindowAnchor};
use agent_runtime::scheduler::{
    CallInfo, CallObserver, KeyStats, Limiter, ModelCall, QueuePolicy, Quota, QuotaScheduler,
    RetryPolicy, WindowStart,
};
use support::{Options, Table, jain, thousands};

const MODEL: &str = "gpt-4o-mini";
/// First-token latency of every reply (a compressed ~1 s).
const LATENCY: Duration = Duration::from_millis(100);
/// Latency per generated token (a compressed ~20 ms).
const PER_TOKEN: Duration = Duration::from_millis(2);

/// What the client is told about the provider's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The client's quota equals the provider's limits.
    Configured,
    /// Only the period is configured; limits are learned from the provider's headers.
    Learned,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Learned => "learned",
        }
    }
}

/// The conversations of a scenario.
#[derive(Debug, Clone)]
enum Workload {
    /// `agent_runtime::fanout`: identical round-robin group chats, all started at once.
    Fanout(FanoutConfig),
    /// Groups of conversations that differ in agents, length and completion limit, all started at
    /// once on one scheduler (fanout runs identical chats only).
    Mixed(Vec<Group>),
}

#[derive(Debug, Clone, Copy)]
struct Group {
    label: &'static str,
    /// When the group's conversations start, from the start of the run.
    start_after: Duration,
    conversations: usize,
    agents: usize,
    max_messages: u64,
    max_completion_tokens: u32,
}

/// A provider limit change during the run (Azure's dynamic quota).
#[derive(Debug, Clone, Copy)]
struct LimitChange {
    at: Duration,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    sim: SimConfig,
    /// The client's quota in configured mode (the provider's limits as they are at the start).
    quota: Quota,
    workload: Workload,
    change: Option<LimitChange>,
    /// Learned mode is meaningless: the provider sends no limits to learn (a local server).
    nothing_to_learn: bool,
    /// Open the connection pool with one call before the clock starts. Off for the limiter
    /// semantics rows: they measure a cold start, and the call would spend a window's request.
    warm_up: bool,
    /// Start the run this far into a clock-aligned window of the request period (waiting for the
    /// system clock to get there), so a fixed window's bound is the same every run.
    start_phase: Option<Duration>,
}

fn sim(period: Duration, reply_tokens: u32) -> SimConfig {
    SimConfig::default()
        .with_model(MODEL)
        .with_period(period)
        .with_latency(LATENCY, PER_TOKEN)
        .with_reply_tokens(reply_tokens)
        // OpenAI: "unsuccessful requests contribute to your per-minute limit".
        .with_charge_rejected(true)
}

fn fanout(conversations: usize, agents: usize, max_messages: u64, max_tokens: u32) -> Workload {
    Workload::Fanout(
        FanoutConfig::default()
            .with_conversations(conversations)
            .with_agents(agents)
            .with_max_messages(max_messages)
            .with_max_completion_tokens(Some(max_tokens)),
    )
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    // `quick` shrinks every workload to about a fifth: same shapes, shorter runs.
    let n = |full: usize| if quick { full.div_ceil(5) } else { full };
    let six = Duration::from_secs(6);
    let three = Duration::from_secs(3);
    vec![
        Scenario {
            name: "RPM-bound: tiny calls",
            sim: sim(six, 8).with_rpm(300),
            quota: Quota::per_period(six).requests(300),
            workload: fanout(n(100), 3, 9, 16),
            change: None,
            nothing_to_learn: false,
            warm_up: true,
            start_phase: None,
        },
        Scenario {
            name: "TPM-bound: growing history",
            sim: sim(six, 48).with_rpm(10_000).with_tpm(75_000),
            quota: Quota::per_period(six).requests(10_000).tokens(75_000),
            workload: fanout(n(50), 3, 11, 64),
            change: None,
            nothing_to_learn: false,
            warm_up: true,
            start_phase: None,
        },
        Scenario {
            name: "concurrency-bound: 4 slots",
            sim: sim(six, 24).with_max_concurrency(4),
            quota: Quota::per_period(six).max_in_flight(4),
            workload: fanout(n(40), 2, 6, 64),
            change: None,
            nothing_to_learn: true,
            warm_up: true,
            start_phase: None,
        },
        Scenario {
            name: "burst: 200 conversations at once",
            sim: sim(three, 24).with_rpm(120),
            quota: Quota::per_period(three).requests(120),
            workload: fanout(n(200), 2, 3, 64),
            change: None,
            nothing_to_learn: false,
            warm_up: true,
            start_phase: None,
        },
        Scenario {
            name: "limit halves mid-run",
            sim: sim(six, 8).with_rpm(300),
            quota: Quota::per_period(six).requests(300),
            workload: fanout(n(100), 3, 7, 16),
            change: Some(LimitChange {
                at: Duration::from_secs(if quick { 1 } else { 4 }),
                rpm: Some(150),
                tpm: None,
            }),
            nothing_to_learn: false,
            warm_up: true,
            start_phase: None,
        },
        Scenario {
            name: "mixed short and long",
            sim: sim(six, 96).with_rpm(10_000).with_tpm(60_000),
            quota: Quota::per_period(six).requests(10_000).tokens(60_000),
            workload: Workload::Mixed(vec![
                // The short conversations arrive once the long ones have spent the first
                // period's burst, so they compete for a saturated quota.
                Group {
                    label: "short",
                    start_after: Duration::from_secs(if quick { 1 } else { 4 }),
                    conversations: n(20),
                    agents: 2,
                    max_messages: 5,
                    max_completion_tokens: 16,
                },
                Group {
                    label: "long",
                    start_after: Duration::ZERO,
                    conversations: n(20),
                    agents: 3,
                    max_messages: 13,
                    max_completion_tokens: 128,
                },
            ]),
            change: None,
            nothing_to_learn: false,
            warm_up: true,
            start_phase: None,
        },
        fifty_chats(quick),
    ]
}

/// The 20-chat workload of the LiteLLM measurement (20 chats × 3 agents × 6 messages,
/// 100 calls) against one provider limit counted each way providers count: 60 requests per 6 s
/// (a compressed minute), cold start, every run started 2 s into a clock-aligned 6 s window (a
/// fixed window's bound depends on the phase: docs/benchmarks.md). In configured mode the client
/// is told the limit and how the provider counts it.
fn semantics_scenarios(quick: bool) -> Vec<Scenario> {
    let six = Duration::from_secs(6);
    let clock = LimiterKind::FixedWindow(WindowAnchor::Clock);
    let first = LimiterKind::FixedWindow(WindowAnchor::FirstRequest);
    let conversations = if quick { 8 } else { 20 };
    let row = |name, sim: SimConfig, limiter| Scenario {
        name,
        sim: sim.with_rpm(60),
        quota: Quota::per_period(six).requests(60).limiter(limiter),
        workload: fanout(conversations, 3, 6, 64),
        change: None,
        nothing_to_learn: false,
        warm_up: false,
        start_phase: Some(Duration::from_secs(2)),
    };
    let fixed = Limiter::FixedWindow(WindowStart::Clock);
    vec![
        row("continuous bucket (OpenAI)", sim(six, 24), Limiter::Bucket),
        row(
            "fixed window, reset headers",
            sim(six, 24).with_request_limiter(clock),
            fixed,
        ),
        row(
            "fixed window, no reset, no retry-after",
            sim(six, 24)
                .with_request_limiter(clock)
                .with_reset_headers(false)
                .with_retry_after_headers(false),
            fixed,
        ),
        row(
            "LiteLLM: fixed window, limit − 1, LiteLLM 429s",
            // LiteLLM does not count refused requests.
            sim(six, 24).with_charge_rejected(false).litellm(),
            fixed,
        ),
        row(
            "fixed window from first request",
            sim(six, 24).with_request_limiter(first),
            Limiter::FixedWindow(WindowStart::FirstRequest),
        ),
        row(
            "sliding log",
            sim(six, 24).with_request_limiter(LimiterKind::SlidingLog),
            Limiter::SlidingWindow,
        ),
    ]
}

/// Fifty equal chats at once against 60 requests / 6 s, as a new user would try: the scenario
/// where the queue policy decides who finishes when.
fn fifty_chats(quick: bool) -> Scenario {
    let six = Duration::from_secs(6);
    Scenario {
        name: "50 equal chats at saturation",
        sim: sim(six, 48).with_rpm(60),
        quota: Quota::per_period(six).requests(60),
        workload: Workload::Mixed(vec![Group {
            label: "chat",
            start_after: Duration::ZERO,
            conversations: if quick { 10 } else { 50 },
            agents: 2,
            max_messages: 6,
            max_completion_tokens: 64,
        }]),
        change: None,
        nothing_to_learn: false,
        warm_up: true,
        start_phase: None,
    }
}

/// One conversation as the bound and the fairness index need it.
#[derive(Debug, Clone)]
struct Conversation {
    started: f64,
    finished: f64,
    /// Calls that completed (each one service time at the provider).
    calls: u64,
    completion_tokens: u64,
    failed: bool,
    /// (admitted s, finished s, tokens used) of every admitted call, from the chat's
    /// `CallObserver` (mixed workloads only).
    admissions: Vec<(f64, f64, u64)>,
}

impl Conversation {
    /// The conversation's own chain of service times: how long it takes alone, with no quota.
    fn ideal(&self, sim: &SimConfig) -> f64 {
        self.calls as f64 * sim.latency.as_secs_f64()
            + self.completion_tokens as f64 * sim.per_token_latency.as_secs_f64()
    }
}

/// What one run produced.
#[derive(Debug)]
struct Run {
    /// Seconds from the provider's creation to the start of the run (moves a fixed window's
    /// phase).
    lead: f64,
    /// Seconds into a clock-aligned request window (of the system clock) when the run started.
    clock_phase: f64,
    makespan: f64,
    conversations: Vec<Conversation>,
    stats: SimStats,
    key: KeyStats,
}

/// The makespan lower bound of rate-limits.md §3.3 and the term that set it.
#[derive(Debug, Clone, Copy)]
struct Bound {
    seconds: f64,
    term: &'static str,
}

/// The earliest time by which a bucket starting full at `limit` can have admitted `amount`,
/// with the limit (per `period`) changing to `later` at `change_at`: the smallest `t` with
/// `limit + ∫₀ᵗ rate ≥ amount`. Capping at a lowered capacity only delays admissions, so
/// ignoring it keeps this a lower bound.
fn earliest(
    amount: f64,
    limit: f64,
    period: f64,
    change: Option<(f64, f64)>, // (at, new limit)
) -> f64 {
    let need = amount - limit;
    if need <= 0.0 {
        return 0.0;
    }
    let rate = limit / period;
    match change {
        Some((at, later)) if need > rate * at => at + (need - rate * at) / (later / period),
        _ => need / rate,
    }
}

/// The earliest time by which `amount` can have been admitted when a `limit` is counted in
/// fixed windows of `period` and the first window closes after `first` (`period − phase` for an
/// aligned window the run starts `phase` into; a whole period for windows that open with the
/// first request, and for a sliding log that starts empty): the last unit needs window
/// `⌈amount / limit⌉ − 1`.
fn earliest_windowed(amount: f64, limit: f64, period: f64, first: f64) -> f64 {
    if amount <= limit || limit <= 0.0 {
        return 0.0;
    }
    let window = (amount / limit).ceil() - 1.0;
    first + (window - 1.0) * period
}

/// The earliest admission of `amount` under `kind` (`earliest` for a bucket).
fn earliest_by_kind(
    kind: LimiterKind,
    amount: f64,
    limit: f64,
    period: f64,
    lead: f64,
    clock_phase: f64,
    change: Option<(f64, f64)>,
) -> f64 {
    match kind {
        LimiterKind::FixedWindow(WindowAnchor::Clock) => {
            earliest_windowed(amount, limit, period, period - clock_phase % period)
        }
        LimiterKind::FixedWindow(WindowAnchor::Phase(phase)) => {
            // The run starts `lead` after the provider did, so that much further in.
            let into = (phase.as_secs_f64() + lead) % period;
            earliest_windowed(amount, limit, period, period - into)
        }
        LimiterKind::FixedWindow(_) | LimiterKind::SlidingLog => {
            earliest_windowed(amount, limit, period, period)
        }
        _ => earliest(amount, limit, period, change),
    }
}

fn bound(scenario: &Scenario, run: &Run) -> Bound {
    let sim = &scenario.sim;
    let period = sim.period.as_secs_f64();
    let stats = &run.stats;
    let us = 1e-6;
    let min_l = stats.min_service_us as f64 * us;
    let max_l = stats.max_service_us as f64 * us;
    let sum_l = stats.service_us as f64 * us;
    // Tokens as the provider counts them: the reservation, less what it refunded.
    let tokens = stats.tokens_admitted.saturating_sub(stats.refunded_tokens) as f64;
    let requests = stats.admitted as f64;
    let change = |new: Option<u64>| {
        scenario
            .change
            .and_then(|c| new.map(|l| (c.at.as_secs_f64(), l as f64)))
    };
    let mut terms = vec![("longest call", max_l)];
    if let Some(rpm) = sim.rpm {
        // LiteLLM's off-by-one admits one request fewer per window.
        let limit = rpm.saturating_sub(u64::from(sim.off_by_one)) as f64;
        let a = earliest_by_kind(
            sim.request_limiter,
            requests,
            limit,
            sim.requests_window().as_secs_f64(),
            run.lead,
            run.clock_phase,
            change(scenario.change.and_then(|c| c.rpm)),
        );
        terms.push(("requests (A_R)", a + min_l));
    }
    if let Some(tpm) = sim.tpm {
        let a = earliest_by_kind(
            sim.token_limiter,
            tokens,
            tpm as f64,
            period,
            run.lead,
            run.clock_phase,
            change(scenario.change.and_then(|c| c.tpm)),
        );
        terms.push(("tokens (A_T)", a + min_l));
    }
    let k = run.conversations.len();
    let slots = sim.max_concurrency.unwrap_or(k).min(k).max(1);
    terms.push(("slots (ΣL/C)", sum_l / slots as f64));
    let chain = run
        .conversations
        .iter()
        .map(|c| c.started + c.ideal(sim))
        .fold(0.0, f64::max);
    terms.push(("longest chain", chain));
    let (term, seconds) = terms
        .into_iter()
        .fold(("", 0.0), |best, t| if t.1 > best.1 { t } else { best });
    Bound { seconds, term }
}

fn provider(server: &MockServer) -> Arc<dyn ChatModel> {
    Arc::new(
        OpenAiProvider::builder()
            .base_url(server.base_url())
            .model(MODEL)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("provider"),
    )
}

/// The guard time of both modes: localhost jitter on a loaded two-core machine is a few
/// milliseconds, with stalls of 10 ms and more when the machine is busy; 25 ms costs 25 ms once
/// per run (see `Quota::guard`).
const GUARD: Duration = Duration::from_millis(25);

fn scheduler(scenario: &Scenario, mode: Mode, key: &str) -> QuotaScheduler {
    let mut builder = QuotaScheduler::builder()
        // Learned limits need the provider's period: a minute in production, compressed here.
        .default_quota(Quota::per_period(scenario.sim.period).guard(GUARD))
        .retry(RetryPolicy::default().seed(7));
    if mode == Mode::Configured {
        builder = builder.quota(key, scenario.quota.clone().guard(GUARD));
    }
    builder.build().expect("scheduler")
}

/// Records when each call of one chat was admitted and the tokens it used.
#[derive(Debug)]
struct Admissions {
    start: tokio::time::Instant,
    calls: std::sync::Mutex<Pending>,
}

/// The admission time of the call in flight, and the calls done: (admitted s, finished s,
/// tokens used).
type Pending = (Option<f64>, Vec<(f64, f64, u64)>);

impl CallObserver for Admissions {
    fn admitted(&self, _key: &str, _wait: Duration) {
        self.calls.lock().unwrap().0 = Some(self.start.elapsed().as_secs_f64());
    }

    fn call_finished(&self, _info: &CallInfo<'_>, result: Result<&Completion, &CallError>) {
        let mut calls = self.calls.lock().unwrap();
        let used = result.ok().and_then(|c| c.usage).map_or(0, |u| u.total());
        if let Some(at) = calls.0.take() {
            calls.1.push((at, self.start.elapsed().as_secs_f64(), used));
        }
    }
}

async fn run_mixed(
    model: Arc<dyn ChatModel>,
    scheduler: &QuotaScheduler,
    groups: &[Group],
) -> (f64, Vec<Conversation>) {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    let mut observers = Vec::new();
    for group in groups {
        for i in 0..group.conversations {
            let id = format!("{}-{i}", group.label);
            let observer = Arc::new(Admissions {
                start,
                calls: Default::default(),
            });
            observers.push(observer.clone());
            let mut chat = GroupChat::builder()
                .conversation_id(id.clone())
                .scheduler(scheduler.clone())
                .call_observer(observer)
                .max_messages(group.max_messages);
            for a in 1..=group.agents {
                let agent = LlmAgent::builder(format!("agent_{a}"), model.clone())
                    .system_message(format!(
                        "You are agent_{a}, one of {} agents working on the user's task \
                         together. Reply with one short, concrete contribution.",
                        group.agents
                    ))
                    .max_completion_tokens(group.max_completion_tokens)
                    .build()
                    .expect("agent");
                chat = chat.participant(agent);
            }
            let mut chat = chat.build().expect("chat");
            let index = ids.len();
            ids.push(id);
            let delay = group.start_after;
            tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                let started = start.elapsed().as_secs_f64();
                let ok = chat.run(DEFAULT_TASK).await.is_ok();
                (index, started, start.elapsed().as_secs_f64(), ok)
            });
        }
    }
    let mut ended = vec![(0.0, 0.0, false); ids.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, started, finished, ok) = joined.expect("conversation task");
        ended[index] = (started, finished, ok);
    }
    let makespan = start.elapsed().as_secs_f64();
    let snapshot = scheduler.snapshot();
    let conversations = ids
        .iter()
        .zip(ended)
        .zip(observers)
        .map(|((id, (started, finished, ok)), observer)| {
            let c = snapshot.conversations.get(id).cloned().unwrap_or_default();
            Conversation {
                started,
                finished,
                calls: c.calls - c.failed,
                completion_tokens: c.completion_tokens,
                failed: !ok,
                admissions: std::mem::take(&mut observer.calls.lock().unwrap().1),
            }
        })
        .collect();
    (makespan, conversations)
}

/// Opens the provider's HTTP connection pool with one call through a throwaway scheduler, so the
/// measured scheduler learns nothing from it. Without it, the first request of the run pays for
/// a TCP handshake: the provider's bucket then starts draining that much later than the client's,
/// and faster requests later arrive a fraction of a request early (an application that has been
/// running has a warm pool).
async fn warm_up(model: &Arc<dyn ChatModel>) {
    let scheduler = QuotaScheduler::new();
    let budget = Budget::unlimited();
    let request = ChatRequest::new(vec![Message::user("warm up")]).with_max_completion_tokens(1);
    let call = ModelCall::new(
        &**model,
        request,
        CallKind::Other,
        "warm-up",
        "bench",
        &budget,
    );
    scheduler.call(call).await.expect("warm-up call");
}

fn run(runtime: &tokio::runtime::Runtime, scenario: &Scenario, mode: Mode) -> Run {
    runtime.block_on(async {
        if let Some(phase) = scenario.start_phase {
            tokio::time::sleep(until_phase(scenario.sim.requests_window(), phase)).await;
        }
        let created = tokio::time::Instant::now();
        let (_, server) = MockServer::start(scenario.sim.clone())
            .await
            .expect("mock server");
        let model = provider(&server);
        let key = model.id().to_owned();
        let scheduler = scheduler(scenario, mode, &key);
        if scenario.warm_up {
            warm_up(&model).await;
        }
        let before = server.stats();
        let lead = created.elapsed().as_secs_f64();
        let clock_phase = since_epoch() % scenario.sim.requests_window().as_secs_f64();
        let simulation = server.simulation().clone();
        let change = scenario.change.map(|c| {
            tokio::spawn(async move {
                tokio::time::sleep(c.at).await;
                simulation.set_limits(c.rpm, c.tpm).expect("new limits");
            })
        });
        let (makespan, conversations) = match &scenario.workload {
            Workload::Fanout(config) => {
                let report = run_fanout(model.clone(), scheduler.clone(), config, |_| {})
                    .await
                    .expect("fanout config");
                let conversations = report
                    .per_conversation
                    .iter()
                    .map(|c| Conversation {
                        started: c.started_s,
                        finished: c.finished_s,
                        // A failed conversation failed on its last call.
                        calls: c.calls - u64::from(c.error.is_some()),
                        completion_tokens: c.completion_tokens,
                        failed: c.error.is_some(),
                        admissions: Vec::new(),
                    })
                    .collect();
                (report.wall_s, conversations)
            }
            Workload::Mixed(groups) => run_mixed(model.clone(), &scheduler, groups).await,
        };
        if let Some(change) = change {
            change.abort();
        }
        let stats = since(&server.stats(), &before);
        let key_stats = scheduler
            .snapshot()
            .keys
            .get(&key)
            .cloned()
            .unwrap_or_default();
        server.shutdown().await.expect("mock shutdown");
        Run {
            lead,
            clock_phase,
            makespan,
            conversations,
            stats,
            key: key_stats,
        }
    })
}

/// Seconds since the Unix epoch on the system clock (what clock-aligned windows count from).
fn since_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How long until the system clock is `phase` into a window of `period` aligned to the epoch.
fn until_phase(period: Duration, phase: Duration) -> Duration {
    let p = period.as_secs_f64();
    let now = since_epoch() % p;
    Duration::from_secs_f64((phase.as_secs_f64() - now).rem_euclid(p))
}

/// The counters of `after` less those of `before` (the warm-up call). The service-time extremes
/// stay: the warm-up's short reply can only lower the minimum, which keeps the bound a lower bound.
fn since(after: &SimStats, before: &SimStats) -> SimStats {
    let mut s = after.clone();
    s.requests -= before.requests;
    s.admitted -= before.admitted;
    s.rate_limited_requests -= before.rate_limited_requests;
    s.rate_limited_tokens -= before.rate_limited_tokens;
    s.tokens_admitted -= before.tokens_admitted;
    s.prompt_tokens -= before.prompt_tokens;
    s.completion_tokens -= before.completion_tokens;
    s.refunded_tokens -= before.refunded_tokens;
    s.service_us -= before.service_us;
    s
}

struct Row {
    scenario: &'static str,
    mode: Mode,
    calls: u64,
    failed: usize,
    makespan: f64,
    bound: Bound,
    http_429: u64,
    w_reserve: u64,
    jain: f64,
    wait_p99_ms: f64,
}

impl Row {
    /// Prints the row's one-line summary on stderr (`run` labels a repetition) and returns its
    /// makespan / bound.
    fn report(&self, run: &str) -> f64 {
        let ratio = self.makespan / self.bound.seconds;
        eprintln!(
            "  {} / {}{run}: {:.2} s vs bound {:.2} s ({}) = {ratio:.3}, {} 429s, {} failed (load {})",
            self.scenario,
            self.mode.label(),
            self.makespan,
            self.bound.seconds,
            self.bound.term,
            self.http_429,
            self.failed,
            support::load_now()
        );
        ratio
    }
}

fn row(scenario: &Scenario, mode: Mode, run: &Run) -> Row {
    let stats = &run.stats;
    let b = bound(scenario, run);
    let x: Vec<f64> = run
        .conversations
        .iter()
        .map(|c| c.ideal(&scenario.sim) / (c.finished - c.started).max(1e-9))
        .collect();
    let used = stats.prompt_tokens + stats.completion_tokens;
    Row {
        scenario: scenario.name,
        mode,
        calls: stats.admitted,
        failed: run.conversations.iter().filter(|c| c.failed).count(),
        makespan: run.makespan,
        bound: b,
        http_429: stats.rate_limited_requests + stats.rate_limited_tokens,
        w_reserve: stats
            .tokens_admitted
            .saturating_sub(stats.refunded_tokens)
            .saturating_sub(used),
        jain: jain(&x),
        wait_p99_ms: run.key.wait.p99.as_secs_f64() * 1e3,
    }
}

fn main() {
    let options = Options::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let machine = support::machine();
    println!("goodput: {machine}");
    let mut table = Table::new(&[
        "<scenario",
        "<limits",
        "calls",
        "makespan s",
        "bound s",
        "<bound set by",
        "makespan/bound",
        "429s",
        "W_reserve tokens",
        "Jain",
        "wait p99 ms",
    ]);
    // `--semantics`: only the limiter-semantics rows.
    let semantics_only = std::env::args().any(|a| a == "--semantics");
    for scenario in scenarios(options.quick) {
        if semantics_only || only.as_deref().is_some_and(|o| !scenario.name.contains(o)) {
            continue;
        }
        for mode in [Mode::Configured, Mode::Learned] {
            if mode == Mode::Learned && scenario.nothing_to_learn {
                table.row(vec![
                    scenario.name.to_owned(),
                    mode.label().to_owned(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "n/a: no headers to learn from".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                ]);
                continue;
            }
            let outcome = run(&runtime, &scenario, mode);
            if std::env::var_os("GOODPUT_DEBUG").is_some() {
                eprintln!(
                    "    client reserved {} (attempts {}), provider admitted {} tokens; client 429s {:?}; provider max/period {} req {} tok",
                    outcome.key.tokens_reserved,
                    outcome.key.attempts,
                    outcome.stats.tokens_admitted,
                    outcome.key.rate_limited,
                    outcome.stats.max_requests_in_period,
                    outcome.stats.max_tokens_in_period,
                );
            }
            if std::env::var_os("GOODPUT_DEBUG").is_some() {
                for c in &outcome.conversations {
                    eprintln!(
                        "      conv: start {:.2} end {:.2} calls {} completion {} ideal {:.2} x {:.3}",
                        c.started,
                        c.finished,
                        c.calls,
                        c.completion_tokens,
                        c.ideal(&scenario.sim),
                        c.ideal(&scenario.sim) / (c.finished - c.started)
                    );
                }
            }
            let r = row(&scenario, mode, &outcome);
            let ratio = r.report("");
            table.row(vec![
                r.scenario.to_owned(),
                r.mode.label().to_owned(),
                thousands(r.calls),
                format!("{:.2}", r.makespan),
                format!("{:.2}", r.bound.seconds),
                r.bound.term.to_owned(),
                format!("{ratio:.3}"),
                r.http_429.to_string(),
                thousands(r.w_reserve),
                format!("{:.3}", r.jain),
                format!("{:.0}", r.wait_p99_ms),
            ]);
        }
    }
    let rendered = table.render();
    println!("{rendered}");
    let semantics = semantics_table(&runtime, &options, only.as_deref());
    println!("{semantics}");
    queue_policies(&runtime, options, only.as_deref());
    if options.write_docs && !options.quick && only.is_none() {
        support::write_section("goodput", &format!("Measured on {machine}.\n\n{rendered}"))
            .unwrap_or_else(|e| panic!("{e}"));
        support::write_section(
            "semantics",
            &format!("Measured on {machine}.\n\n{semantics}"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The limiter-semantics rows: each scenario of [`semantics_scenarios`], configured and learned,
/// `--repeat N` times (default 1), one row per run.
fn semantics_table(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    only: Option<&str>,
) -> String {
    let repeat: usize = std::env::args()
        .skip_while(|a| a != "--repeat")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut table = Table::new(&[
        "<provider limiter",
        "<limits",
        "run",
        "calls",
        "failed conv.",
        "makespan s",
        "bound s",
        "<bound set by",
        "makespan/bound",
        "429s",
        "wait p99 ms",
    ]);
    for scenario in semantics_scenarios(options.quick) {
        if only.is_some_and(|o| !scenario.name.contains(o)) {
            continue;
        }
        for mode in [Mode::Configured, Mode::Learned] {
            for i in 1..=repeat {
                let outcome = run(runtime, &scenario, mode);
                let r = row(&scenario, mode, &outcome);
                let ratio = r.report(&format!(" #{i}"));
                table.row(vec![
                    r.scenario.to_owned(),
                    r.mode.label().to_owned(),
                    i.to_string(),
                    thousands(r.calls),
                    r.failed.to_string(),
                    format!("{:.2}", r.makespan),
                    format!("{:.2}", r.bound.seconds),
                    r.bound.term.to_owned(),
                    format!("{ratio:.3}"),
                    r.http_429.to_string(),
                    format!("{:.0}", r.wait_p99_ms),
                ]);
            }
        }
    }
    table.render()
}

/// The queue policies compared on the scenarios where the order matters (configured limits):
/// the fairness and completion-time table of `docs/benchmarks.md`.
fn queue_policies(runtime: &tokio::runtime::Runtime, options: Options, only: Option<&str>) {
    let quick = options.quick;
    let policies = [
        ("round robin", QueuePolicy::RoundRobin),
        ("token-fair", QueuePolicy::token_fair()),
        // Longer than the run: the aging bound never binds here.
        (
            "finish-first",
            QueuePolicy::finish_first(Duration::from_secs(60)),
        ),
    ];
    let mut table = Table::new(&[
        "<scenario",
        "<queue",
        "makespan s",
        "makespan/bound",
        "token-share Jain",
        "slowdown Jain",
        "slowdown short/long",
        "mean completion s",
        "first done s",
    ]);
    let scenarios = scenarios(quick)
        .into_iter()
        .filter(|s| matches!(s.workload, Workload::Mixed(_)))
        .filter(|s| only.is_none_or(|o| s.name.contains(o)));
    for scenario in scenarios {
        for (label, policy) in policies {
            let mut scenario = scenario.clone();
            scenario.quota = scenario.quota.clone().queue(policy);
            let outcome = run(runtime, &scenario, Mode::Configured);
            let b = bound(&scenario, &outcome);
            let convs = &outcome.conversations;
            let slowdown: Vec<f64> = convs
                .iter()
                .map(|c| (c.finished - c.started) / c.ideal(&scenario.sim).max(1e-9))
                .collect();
            let by_group = |label: &str| -> Option<f64> {
                let Workload::Mixed(groups) = &scenario.workload else {
                    return None;
                };
                let mut from = 0;
                for g in groups {
                    if g.label == label {
                        let s = &slowdown[from..from + g.conversations];
                        return Some(s.iter().sum::<f64>() / s.len() as f64);
                    }
                    from += g.conversations;
                }
                None
            };
            let short_long = match (by_group("short"), by_group("long")) {
                (Some(s), Some(l)) => format!("{:.2}", s / l),
                _ => "—".into(),
            };
            let x: Vec<f64> = slowdown.iter().map(|s| 1.0 / s).collect();
            let completion: Vec<f64> = convs.iter().map(|c| c.finished - c.started).collect();
            let mean = completion.iter().sum::<f64>() / completion.len() as f64;
            let first = completion.iter().copied().fold(f64::INFINITY, f64::min);
            let ratio = outcome.makespan / b.seconds;
            let shares = token_shares(convs);
            if std::env::var_os("GOODPUT_DEBUG").is_some() {
                eprintln!("    token shares while waiting (tokens/s): {shares:.0?}");
            }
            eprintln!(
                "  {} / {label}: {:.2} s vs bound {:.2} s = {ratio:.3}, token-share Jain {:.3}, mean completion {mean:.2} s, {} failed (load {})",
                scenario.name,
                outcome.makespan,
                b.seconds,
                jain(&shares),
                convs.iter().filter(|c| c.failed).count(),
                support::load_now()
            );
            table.row(vec![
                scenario.name.to_owned(),
                label.to_owned(),
                format!("{:.2}", outcome.makespan),
                format!("{ratio:.3}"),
                format!("{:.3}", jain(&shares)),
                format!("{:.3}", jain(&x)),
                short_long,
                format!("{mean:.2}"),
                format!("{first:.2}"),
            ]);
        }
    }
    let rendered = table.render();
    println!("{rendered}");
    if options.write_docs && !quick && only.is_none() {
        let machine = support::machine();
        support::write_section(
            "goodput-queue",
            &format!("Measured on {machine}.\n\n{rendered}"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Each conversation's rate of tokens **while it waited**, over the window in which every
/// conversation was running (from the last start to the first end after it): each call's tokens
/// are spread evenly over the wait that preceded its admission (from the end of the previous
/// call, or the start), and the tokens that fall in the window are divided by the time the
/// conversation spent waiting in it. Time in flight is left out: no queue can serve a
/// conversation that is not asking.
fn token_shares(convs: &[Conversation]) -> Vec<f64> {
    let from = convs.iter().map(|c| c.started).fold(0.0, f64::max);
    let to = convs
        .iter()
        .map(|c| c.finished)
        .filter(|f| *f > from)
        .fold(f64::INFINITY, f64::min);
    convs
        .iter()
        .map(|c| {
            let mut ready = c.started;
            let (mut tokens, mut waited) = (0.0, 0.0);
            for &(admitted, finished, used) in &c.admissions {
                let span = admitted - ready;
                let overlap = (admitted.min(to) - ready.max(from)).max(0.0);
                if span > 1e-6 {
                    tokens += used as f64 * overlap / span;
                    waited += overlap;
                } else if (from..=to).contains(&admitted) {
                    tokens += used as f64;
                }
                ready = finished;
            }
            tokens / waited.max(1e-3)
        })
        .collect()
}
