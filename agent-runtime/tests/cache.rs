//! The response cache end to end: a fanout run repeated on a persistent cache reaches no
//! provider and reproduces every transcript; caches per chat and per agent; the Redis store, and
//! a Redis that is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::time::Duration;

use agent_core::{Agent, ChatModel, LlmAgent, Message};
use agent_runtime::cache::{EmbeddedStore, ResponseCache};
use agent_runtime::chat::{ChatEvent, GroupChat};
use agent_runtime::fanout::{FanoutConfig, FanoutReport, run_fanout};
use agent_runtime::provider::{SimConfig, SimulatedProvider};
use agent_runtime::scheduler::{Quota, QuotaScheduler};
use futures::StreamExt;

const PERIOD: Duration = Duration::from_secs(6);

fn limited_sim() -> Arc<SimulatedProvider> {
    Arc::new(SimulatedProvider::new(SimConfig::default().with_rpm(60).with_period(PERIOD)).unwrap())
}

async fn fanout_on(model: Arc<SimulatedProvider>, cache: ResponseCache) -> FanoutReport {
    let scheduler = QuotaScheduler::builder()
        .quota(model.id(), Quota::per_period(PERIOD).requests(60))
        .cache(cache)
        .build()
        .unwrap();
    let config = FanoutConfig::default()
        .with_conversations(20)
        .with_distinct_tasks(true)
        .with_transcripts(true);
    run_fanout(model, scheduler, &config, |_| {}).await.unwrap()
}

fn transcripts(report: &FanoutReport) -> Vec<(Vec<Message>, Option<String>)> {
    report
        .per_conversation
        .iter()
        .map(|c| (c.transcript.clone(), c.stop_reason.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_repeated_fanout_on_a_persistent_cache_makes_no_provider_request() {
    let dir = tempfile::tempdir().unwrap();
    let model = limited_sim();

    let first = fanout_on(model.clone(), ResponseCache::open(dir.path()).unwrap()).await;
    let sent = model.simulation().stats().requests;
    assert_eq!((first.completed, first.failed), (20, 0));
    assert_eq!(sent, 100, "20 chats × 5 replies");
    assert_eq!(first.cache.unwrap().writes, 100);

    // A new cache over the same directory, as a second process would open it.
    let second = fanout_on(model.clone(), ResponseCache::open(dir.path()).unwrap()).await;
    assert_eq!(
        model.simulation().stats().requests,
        sent,
        "the second run reached the provider"
    );
    assert_eq!(second.calls, 0, "no call was admitted on the quota");
    assert_eq!(second.cache.unwrap().hits, 100);
    assert_eq!(transcripts(&second), transcripts(&first));
    assert_eq!(second.stop_reasons, first.stop_reasons);
    assert!(
        first
            .per_conversation
            .iter()
            .all(|c| c.transcript.len() == 6)
    );
}

#[tokio::test(start_paused = true)]
async fn identical_conversations_share_their_answers() {
    let model = limited_sim();
    let scheduler = QuotaScheduler::builder()
        .cache(ResponseCache::in_memory())
        .build()
        .unwrap();
    // All 20 chats start from the same task: the 5 answers of one serve all of them, whether
    // found in the store or taken from an identical call in flight.
    let config = FanoutConfig::default().with_conversations(20);
    let report = run_fanout(model.clone(), scheduler, &config, |_| {})
        .await
        .unwrap();
    assert_eq!((report.completed, report.failed), (20, 0));
    assert_eq!(model.simulation().stats().requests, 5);
    let cache = report.cache.unwrap();
    assert_eq!(cache.misses, 5);
    assert_eq!(cache.hits + cache.coalesced, 95);
}

#[tokio::test(start_paused = true)]
async fn another_namespace_is_a_fresh_run() {
    let store = Arc::new(agent_runtime::cache::InMemoryStore::new());
    // No limits: every request the provider sees is a call's only attempt.
    let model = Arc::new(SimulatedProvider::new(SimConfig::default()).unwrap());
    let cache = |ns: &str| {
        ResponseCache::builder(store.clone())
            .namespace(ns)
            .build()
            .unwrap()
    };
    fanout_on(model.clone(), cache("seed-41")).await;
    fanout_on(model.clone(), cache("seed-42")).await;
    assert_eq!(model.simulation().stats().requests, 200);
    fanout_on(model.clone(), cache("seed-41")).await;
    assert_eq!(model.simulation().stats().requests, 200);
}

fn agent(name: &str, model: &Arc<SimulatedProvider>) -> impl Agent + use<> {
    LlmAgent::builder(name, model.clone() as Arc<dyn ChatModel>)
        .max_completion_tokens(16)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_chat_cache_with_one_agent_opted_out() {
    let model = Arc::new(SimulatedProvider::new(SimConfig::default()).unwrap());
    let cache = ResponseCache::in_memory();
    let build = || {
        GroupChat::builder()
            .participant(agent("a", &model))
            .participant(agent("b", &model))
            .cache(cache.clone())
            .agent_cache("b", ResponseCache::disabled())
            .max_messages(5)
            .build()
            .unwrap()
    };
    build().run("plan a trip").await.unwrap();
    assert_eq!(model.simulation().stats().requests, 4);

    let mut chat = build();
    let mut events = chat.run_stream("plan a trip");
    let mut finished = Vec::new();
    let mut result = None;
    while let Some(event) = events.next().await {
        match event {
            ChatEvent::CallFinished { agent, cached, .. } => {
                finished.push((agent.to_string(), cached))
            }
            ChatEvent::Finished(r) => result = Some(r.unwrap()),
            _ => {}
        }
    }
    let expected = [("a", true), ("b", false), ("a", true), ("b", false)];
    let expected: Vec<(String, bool)> = expected.iter().map(|(a, c)| (a.to_string(), *c)).collect();
    assert_eq!(finished, expected);
    assert_eq!(model.simulation().stats().requests, 6, "only b's two calls");
    let usage = result.unwrap().usage;
    assert_eq!(usage.by_agent["a"].cached_calls, 2);
    assert_eq!(usage.by_agent["a"].excluding_cached().calls, 0);
    assert_eq!(usage.by_agent["b"].cached_calls, 0);
    assert_eq!(
        usage.total.calls, 4,
        "cached calls count in the total, as AG2 reports it"
    );
    assert!(
        build_with_unknown(&model).is_err(),
        "an agent_cache naming no participant fails at build"
    );
}

fn build_with_unknown(model: &Arc<SimulatedProvider>) -> Result<GroupChat, impl std::error::Error> {
    GroupChat::builder()
        .participant(agent("a", model))
        .agent_cache("nobody", ResponseCache::in_memory())
        .build()
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn the_redis_store_shares_entries_and_a_redis_that_is_down_is_a_miss() {
    use agent_runtime::cache::RedisStore;

    // Down: a port nothing listens on. Every lookup and write fails within the store's bound,
    // and the calls succeed without the cache.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let down = RedisStore::connect_with_timeout(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_millis(100),
    )
    .unwrap();
    let cache = ResponseCache::builder(down).build().unwrap();
    let model = Arc::new(SimulatedProvider::new(SimConfig::default()).unwrap());
    let scheduler = QuotaScheduler::builder()
        .cache(cache.clone())
        .build()
        .unwrap();
    let config = FanoutConfig::default()
        .with_conversations(2)
        .with_max_messages(3)
        .with_distinct_tasks(true);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        run_fanout(model.clone(), scheduler, &config, |_| {}),
    )
    .await
    .expect("a Redis that is down must not hang the run")
    .unwrap();
    assert_eq!((report.completed, report.failed), (2, 0));
    assert_eq!(cache.stats().store_errors, 8, "4 reads and 4 writes failed");

    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("REDIS_URL not set: skipping the shared-store half");
        return;
    };
    let prefix = format!("turnstile:test:{}:{}:", std::process::id(), port);
    let shared = |_: ()| {
        // A generous timeout: a stall of the loaded test machine is not a Redis failure.
        ResponseCache::builder(
            RedisStore::connect_with_timeout(&url, Duration::from_secs(5))
                .unwrap()
                .with_prefix(prefix.clone()),
        )
        .mode(agent_runtime::cache::CacheMode::On)
        .max_age(Duration::from_secs(300))
        .build()
        .unwrap()
    };
    let model = Arc::new(SimulatedProvider::new(SimConfig::default()).unwrap());
    for _ in 0..2 {
        let scheduler = QuotaScheduler::builder().cache(shared(())).build().unwrap();
        run_fanout(model.clone(), scheduler, &config, |_| {})
            .await
            .unwrap();
    }
    assert_eq!(
        model.simulation().stats().requests,
        4,
        "the second process-like run found every answer in Redis"
    );
}

#[test]
fn the_embedded_store_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.path(), dir.path().join("responses.redb"));
}
