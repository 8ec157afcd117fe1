//! The queue policies on the paused clock: token-fair shares of the token rate (by conversation
//! and by weighted tenant, with the charge corrected to usage), finish-first completion times
//! and its aging bound, round robin's per-call shares for contrast, the same order with a shared
//! backend, and VTC's service-gap bound as a property.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{Budget, CallKind, ChatRequest, Message, ScriptedModel, Usage};
use agent_runtime::scheduler::{
    InMemoryState, ModelCall, QueuePolicy, Quota, QuotaConfigError, QuotaScheduler,
};
use proptest::prelude::*;
use scheduler_support::{ExactEstimator, completion, request};
use tokio::time::Instant;

/// A model that reports as used exactly the prompt it received (one token per character) and
/// `completion` tokens, answering at once.
fn model(completion_tokens: u64) -> ScriptedModel {
    ScriptedModel::new("m").with_responder(move |r: &ChatRequest| {
        let prompt = r.messages.iter().map(Message::char_len).sum::<usize>() as u64;
        Ok(completion(Usage::new(prompt, completion_tokens)))
    })
}

fn scheduler(quota: Quota, shared: bool) -> QuotaScheduler {
    let mut builder = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", quota);
    if shared {
        // The shared-backend path (as with Redis): the backend grants, the local queue orders.
        builder = builder
            .state(Arc::new(InMemoryState::new()))
            .poll_interval(Duration::from_millis(5));
    }
    builder.build().unwrap()
}

/// What one client did: (time of each admitted call, its tokens).
type Log = Arc<Mutex<HashMap<String, Vec<(Instant, u64)>>>>;

/// One sequential conversation: calls of `tokens` (prompt) and `max_completion` back to back
/// until `stop`, each logged when it returns (at once: the model has no latency, so that is
/// when it was admitted).
#[allow(clippy::too_many_arguments)]
fn converse(
    s: &QuotaScheduler,
    model: &ScriptedModel,
    conversation: &'static str,
    tenant: Option<(&'static str, u32)>,
    tokens: usize,
    max_completion: u32,
    stop: Instant,
    log: &Log,
) -> tokio::task::JoinHandle<()> {
    let (s, model, log) = (s.clone(), model.clone(), log.clone());
    tokio::spawn(async move {
        let budget = Budget::unlimited();
        while Instant::now() < stop {
            let request = request(tokens).with_max_completion_tokens(max_completion);
            let mut call = ModelCall::new(
                &model,
                request,
                CallKind::Reply,
                conversation,
                "agent",
                &budget,
            );
            let mut client = conversation;
            if let Some((label, weight)) = tenant {
                call = call.with_tenant(label, NonZeroU32::new(weight).unwrap());
                client = label;
            }
            let used = s.call(call).await.unwrap().usage.unwrap().total();
            log.lock()
                .unwrap()
                .entry(client.to_owned())
                .or_default()
                .push((Instant::now(), used));
        }
    })
}

/// A conversation of [`token_run`]: name, tenant and weight, prompt tokens, max completion.
type Spec = (&'static str, Option<(&'static str, u32)>, usize, u32);

/// Runs `conversations` for 60 s
/// against `tokens` a second on the default (token-fair) queue.
async fn token_run(tokens: u64, conversations: &[Spec]) -> Log {
    let quota = Quota::per_period(Duration::from_secs(1))
        .tokens(tokens)
        .start_empty(true);
    let s = scheduler(quota, false);
    let model = model(0);
    let log = Log::default();
    let stop = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = conversations
        .iter()
        .map(|&(c, tenant, prompt, max)| converse(&s, &model, c, tenant, prompt, max, stop, &log))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    log
}

fn totals(log: &Log) -> HashMap<String, u64> {
    log.lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|(_, t)| t).sum()))
        .collect()
}

/// Three conversations of 400-token calls and three of 40-token calls against 1,000 tokens/s
/// for 60 s: (tokens of the short ones, tokens of the long ones).
async fn short_and_long(policy: QueuePolicy, shared: bool) -> (Vec<u64>, Vec<u64>) {
    let quota = Quota::per_period(Duration::from_secs(1))
        .tokens(1_000)
        .start_empty(true)
        .queue(policy);
    let s = scheduler(quota, shared);
    let model = model(0);
    let log = Log::default();
    let stop = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for (conv, tokens) in [
        ("long1", 400),
        ("long2", 400),
        ("long3", 400),
        ("short1", 40),
        ("short2", 40),
        ("short3", 40),
    ] {
        tasks.push(converse(&s, &model, conv, None, tokens, 0, stop, &log));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let totals = totals(&log);
    let pick = |prefix: &str| -> Vec<u64> {
        let mut v: Vec<u64> = totals
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, t)| *t)
            .collect();
        v.sort_unstable();
        v
    };
    (pick("short"), pick("long"))
}

fn spread(shares: &[u64]) -> f64 {
    let min = *shares.iter().min().unwrap() as f64;
    let max = *shares.iter().max().unwrap() as f64;
    (max - min) / max
}

#[tokio::test(start_paused = true)]
async fn token_fair_gives_short_and_long_conversations_equal_token_shares() {
    for shared in [false, true] {
        let (short, long) = short_and_long(QueuePolicy::token_fair(), shared).await;
        let all: Vec<u64> = short.iter().chain(&long).copied().collect();
        // 60 s × 1,000 tokens/s over six conversations: ~10,000 each, within one long call.
        assert!(
            spread(&all) <= 0.06,
            "shared {shared}: short {short:?} long {long:?}"
        );
        assert!(all.iter().sum::<u64>() >= 58_000, "the quota was used");
    }
}

#[tokio::test(start_paused = true)]
async fn round_robin_gives_equal_calls_so_short_conversations_get_a_tenth_of_the_tokens() {
    let (short, long) = short_and_long(QueuePolicy::RoundRobin, false).await;
    // One call per round each: 40 tokens against 400.
    let ratio = short.iter().sum::<u64>() as f64 / long.iter().sum::<u64>() as f64;
    assert!(
        (0.08..=0.12).contains(&ratio),
        "short {short:?} long {long:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tenant_of_weight_two_gets_twice_the_token_share() {
    // Tenant "a" runs three conversations, "b" one: shares go by tenant, not conversation.
    let log = token_run(
        1_000,
        &[
            ("a1", Some(("a", 1)), 100, 0),
            ("a2", Some(("a", 1)), 100, 0),
            ("a3", Some(("a", 1)), 100, 0),
            ("b1", Some(("b", 2)), 250, 0),
        ],
    )
    .await;
    let totals = totals(&log);
    let ratio = totals["b"] as f64 / totals["a"] as f64;
    assert!((1.85..=2.15).contains(&ratio), "{totals:?}");
}

#[tokio::test(start_paused = true)]
async fn the_charge_is_corrected_to_usage_at_reconcile() {
    // "reserving" asks for 900 completion tokens and uses none: charged 1,000 at admission,
    // corrected to 100 when it returns. Its share of *used* tokens then matches "exact", which
    // reserves what it uses; charged the estimate only, it would get a tenth of the calls.
    let log = token_run(
        2_000,
        &[("reserving", None, 100, 900), ("exact", None, 100, 0)],
    )
    .await;
    let calls: HashMap<String, usize> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.len()))
        .collect();
    let ratio = calls["reserving"] as f64 / calls["exact"] as f64;
    assert!(ratio >= 0.9, "{calls:?}");
}

/// Ten conversations of five calls each against one request a second; the time each finished.
async fn ten_conversations(policy: QueuePolicy) -> Vec<Duration> {
    let quota = Quota::per_period(Duration::from_secs(1))
        .requests(1)
        .start_empty(true)
        .queue(policy);
    let s = scheduler(quota, false);
    let model = model(0);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (s, model) = (s.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            let budget = Budget::unlimited();
            let conversation = format!("c{i}");
            for _ in 0..5 {
                let call = ModelCall::new(
                    &model,
                    request(10),
                    CallKind::Reply,
                    &conversation,
                    "agent",
                    &budget,
                );
                s.call(call).await.unwrap();
            }
            Instant::now() - t0
        }));
        tokio::task::yield_now().await;
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done
}

fn mean(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64
}

#[tokio::test(start_paused = true)]
async fn finish_first_lowers_the_mean_completion_time_at_the_same_makespan() {
    let rr = ten_conversations(QueuePolicy::RoundRobin).await;
    let ff = ten_conversations(QueuePolicy::finish_first(Duration::from_secs(600))).await;
    let (rr_end, ff_end) = (rr.iter().max().unwrap(), ff.iter().max().unwrap());
    assert_eq!(rr_end, ff_end, "same work, same quota: same makespan");
    // Round robin finishes everyone in the last round; finish-first one conversation per
    // five calls.
    assert!(mean(&ff) <= 0.65 * mean(&rr), "ff {ff:?} rr {rr:?}");
    let first_done = ff.iter().min().unwrap().as_secs_f64();
    assert!(first_done <= 0.2 * rr_end.as_secs_f64(), "{ff:?}");
}

#[tokio::test(start_paused = true)]
async fn finish_first_ages_a_newcomer_past_busy_conversations_within_its_bound() {
    let max_wait = Duration::from_secs(5);
    let quota = Quota::per_period(Duration::from_secs(1))
        .requests(1)
        .start_empty(true)
        .queue(QueuePolicy::finish_first(max_wait));
    let s = scheduler(quota, false);
    let model = model(0);
    let log = Log::default();
    let stop = Instant::now() + Duration::from_secs(60);
    // Three busy conversations, always waiting, always ahead of anyone with less service.
    let busy: Vec<_> = ["b1", "b2", "b3"]
        .into_iter()
        .map(|c| converse(&s, &model, c, None, 10, 0, stop, &log))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let budget = Budget::unlimited();
    let asked = Instant::now();
    let call = ModelCall::new(&model, request(10), CallKind::Reply, "new", "a", &budget);
    s.call(call).await.unwrap();
    let waited = Instant::now() - asked;
    // Aged at 5 s, then admitted at the next refill (one request a second).
    assert!(
        waited <= max_wait + Duration::from_secs(1),
        "waited {waited:?}"
    );
    assert!(
        waited >= max_wait,
        "it was behind the busy ones until it aged"
    );
    for b in busy {
        b.await.unwrap();
    }
}

#[test]
fn a_token_fair_queue_without_weights_is_refused_at_build() {
    let quota = Quota::per_minute().queue(QueuePolicy::TokenFair {
        input_weight: 0,
        output_weight: 0,
    });
    let err = QuotaScheduler::builder()
        .quota("m", quota)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, QuotaConfigError::InvalidQueuePolicy { ref key, .. } if key == "m"),
        "{err:?}"
    );
    assert!(err.to_string().contains("weight above zero"), "{err}");
}

/// Runs `sizes.len()` backlogged clients (two calls queued each) against 1,000 tokens/s, client
/// `i` joining at `joins[i]` and cycling through its call sizes; returns the largest service
/// gap between two clients over an interval both waited through, and the largest call.
fn service_gap(sizes: &[Vec<u32>], joins: &[u64]) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let quota = Quota::per_period(Duration::from_secs(1))
            .tokens(1_000)
            .start_empty(true);
        let s = scheduler(quota, false);
        let model = model(0);
        let t0 = Instant::now();
        let stop = t0 + Duration::from_secs(30);
        // (time, client, tokens) of every admission.
        let log: Arc<Mutex<Vec<(Instant, usize, u64)>>> = Arc::default();
        let mut tasks = Vec::new();
        for (client, calls) in sizes.iter().enumerate() {
            for lane in 0..2 {
                let (s, model, log, calls) = (s.clone(), model.clone(), log.clone(), calls.clone());
                let join = Duration::from_millis(joins[client]);
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(join).await;
                    let budget = Budget::unlimited();
                    let name = format!("client{client}");
                    let mut i = lane;
                    while Instant::now() < stop {
                        let tokens = calls[i % calls.len()] as usize;
                        i += 1;
                        let call = ModelCall::new(
                            &model,
                            request(tokens),
                            CallKind::Reply,
                            &name,
                            "a",
                            &budget,
                        );
                        let used = s.call(call).await.unwrap().usage.unwrap().total();
                        log.lock().unwrap().push((Instant::now(), client, used));
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        let largest = sizes.iter().flatten().copied().max().unwrap_or(0);
        let n = sizes.len();
        // Cumulative service of every client after each distinct instant.
        let mut points: Vec<(Instant, Vec<u64>)> = Vec::new();
        let mut served = vec![0u64; n];
        for (at, client, tokens) in log {
            served[client] += tokens;
            match points.last_mut() {
                Some((t, v)) if *t == at => *v = served.clone(),
                _ => points.push((at, served.clone())),
            }
        }
        // Per pair, the largest change of the difference of their service between two instants
        // both waited through: one pass, keeping the extremes of the difference seen so far.
        let mut gap = 0u64;
        for f in 0..n {
            for g in f + 1..n {
                let from = t0 + Duration::from_millis(joins[f].max(joins[g]));
                let (mut low, mut high) = (None::<i64>, None::<i64>);
                for (at, served) in &points {
                    if *at <= from || *at >= stop {
                        continue;
                    }
                    let d = served[f] as i64 - served[g] as i64;
                    let (l, h) = (low.unwrap_or(d).min(d), high.unwrap_or(d).max(d));
                    gap = gap.max((d - l).unsigned_abs()).max((h - d).unsigned_abs());
                    (low, high) = (Some(l), Some(h));
                }
            }
        }
        (gap, u64::from(largest))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// VTC's bound: two clients that both keep calls waiting receive service that differs by at
    /// most twice the largest call, over any interval — whatever the mix of call sizes and
    /// whenever they join.
    #[test]
    fn token_fair_service_gap_is_within_two_of_the_largest_call(
        sizes in prop::collection::vec(prop::collection::vec(10u32..=600, 1..4), 2..6),
        joins_seed in prop::collection::vec(0u64..5_000, 6),
    ) {
        let joins = &joins_seed[..sizes.len()];
        let (gap, largest) = service_gap(&sizes, joins);
        prop_assert!(gap <= 2 * largest, "gap {} > 2 × {}", gap, largest);
    }
}

/// `GroupChat::tenant`: every call of a chat (replies and its own) is queued as the tenant. One
/// customer runs four chats, another one, at the same weight, on a key that admits one call a
/// second. Queued by tenant, the lone chat gets about every other admission and its five calls
/// are done by the twelfth second; queued by conversation (no tenant) it gets one admission in
/// five and finishes near the end of the 25.
#[tokio::test(start_paused = true)]
async fn a_group_chat_s_calls_queue_as_its_tenant() {
    use agent_core::LlmAgent;
    use agent_runtime::chat::GroupChat;

    async fn lone_chat_done_after(tenants: bool) -> Duration {
        let model = Arc::new(model(1));
        let s = scheduler(Quota::per_period(Duration::from_secs(1)).requests(1), false);
        let start = Instant::now();
        let one = NonZeroU32::new(1).unwrap();
        let chat = |customer: &'static str, i: usize| {
            let agent = LlmAgent::builder("a", model.clone() as Arc<dyn agent_core::ChatModel>)
                .build()
                .unwrap();
            let mut builder = GroupChat::builder()
                .participant(agent)
                .max_messages(6)
                .scheduler(s.clone())
                .conversation_id(format!("{customer}-{i}"));
            if tenants {
                builder = builder.tenant(customer, one);
            }
            let mut chat = builder.build().unwrap();
            tokio::spawn(async move {
                chat.run("go").await.unwrap();
                start.elapsed()
            })
        };
        let big: Vec<_> = (0..4).map(|i| chat("big", i)).collect();
        let lone = chat("small", 0).await.unwrap();
        for c in big {
            c.await.unwrap();
        }
        lone
    }

    let by_tenant = lone_chat_done_after(true).await;
    let by_conversation = lone_chat_done_after(false).await;
    // 11 s and 24 s on the paused clock (token-fair balances tokens, not calls, so the lone
    // chat's growing prompts cost it a turn against the perfect alternation's 10 s).
    assert!(by_tenant <= Duration::from_secs(12), "{by_tenant:?}");
    assert!(
        by_conversation >= Duration::from_secs(20),
        "{by_conversation:?}"
    );
}
