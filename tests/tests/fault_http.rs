//! Broken providers over real HTTP: servers that never answer, stall after the headers, drip
//! bytes or reset connections, and a provider that goes away for two seconds mid-run. Every call
//! ends — in a completion or a typed error — and chats keep their transcripts.
//!
//! Real sockets, so real time: each test is wrapped in a generous outer timeout that only fails
//! a hang; nothing asserts how long a call took.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::time::Duration;

use agent_core::{AgentError, Budget, CallError, CallKind, ChatModel, ModelError};
use agent_runtime::chat::ChatErrorKind;
use agent_runtime::fanout::{FanoutConfig, run_fanout};
use agent_runtime::mock::MockServer;
use agent_runtime::mock::broken::{BrokenServer, Misbehaviour};
use agent_runtime::provider::{OpenAiProvider, SimConfig, Simulation};
use agent_runtime::scheduler::{Deadlines, ModelCall, Quota, QuotaScheduler, RetryPolicy};
use turnstile_tests::{MODEL, completed_run, group_chat};

/// A hang, not a slow run: far above every deadline and backoff of these tests.
const HANG: Duration = Duration::from_secs(60);

fn provider_at(base_url: &str) -> Arc<dyn ChatModel> {
    let provider = OpenAiProvider::builder()
        .base_url(base_url)
        .model(MODEL)
        .timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Arc::new(provider)
}

/// Two attempts of at most 1 s each, millisecond backoff, breaker out of the way.
fn impatient() -> QuotaScheduler {
    QuotaScheduler::builder()
        .default_quota(Quota::per_minute().requests(10_000))
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .backoff(Duration::from_millis(10), Duration::from_millis(50))
                .breaker(1_000, Duration::from_secs(1))
                .seed(5),
        )
        .deadlines(Deadlines::new(Duration::from_secs(1)))
        .build()
        .unwrap()
}

async fn one_call(scheduler: &QuotaScheduler, model: &dyn ChatModel) -> Result<(), CallError> {
    let budget = Budget::unlimited();
    let request = agent_core::ChatRequest::new(vec![agent_core::Message::user("hello")])
        .with_max_completion_tokens(8);
    let call = ModelCall::new(model, request, CallKind::Reply, "c", "a", &budget);
    scheduler.call(call).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_server_ends_each_call_in_a_typed_transient_error() {
    for misbehaviour in [
        Misbehaviour::NeverAnswer,
        Misbehaviour::StallAfterHeaders,
        Misbehaviour::Drip {
            every: Duration::from_millis(100),
        },
        Misbehaviour::Reset,
    ] {
        let server = BrokenServer::start(misbehaviour).await.unwrap();
        let model = provider_at(&server.base_url());
        let scheduler = impatient();
        let result = tokio::time::timeout(HANG, one_call(&scheduler, &*model))
            .await
            .unwrap_or_else(|_| panic!("{misbehaviour:?}: the call hung"));
        let err = result.expect_err("a broken server cannot answer");
        let CallError::RetriesExhausted { attempts, last } = &err else {
            panic!("{misbehaviour:?}: {err:?}");
        };
        assert_eq!(*attempts, 2, "{misbehaviour:?}");
        assert!(
            matches!(last, ModelError::Transient { .. }),
            "{misbehaviour:?}: {last:?}"
        );
        assert_eq!(server.connections(), 2, "{misbehaviour:?}: one per attempt");
        let key = &scheduler.snapshot().keys[model.id()];
        assert_eq!(key.in_flight, 0, "{misbehaviour:?}: slots released");
        let timeouts = if misbehaviour == Misbehaviour::Reset {
            0
        } else {
            2
        };
        assert_eq!(key.timeouts, timeouts, "{misbehaviour:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_on_a_stalled_provider_fails_typed_with_its_transcript() {
    let server = BrokenServer::start(Misbehaviour::StallAfterHeaders)
        .await
        .unwrap();
    let model = provider_at(&server.base_url());
    let scheduler = impatient();
    let mut chat = group_chat(&model, &scheduler, 2, 4, 8).unwrap();
    let error = tokio::time::timeout(HANG, chat.run("Say hello."))
        .await
        .expect("the chat hung")
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ChatErrorKind::Agent {
                source: AgentError::Call(CallError::RetriesExhausted { .. }),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("deadline"), "{error}");
    assert_eq!(error.transcript().len(), 1, "the task message is kept");
    assert_eq!(error.transcript()[0].text(), Some("Say hello."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_conversations_complete_across_a_two_second_provider_outage() {
    // 300 ms a call: the run lasts past the outage's start even on a stalled machine.
    let config = SimConfig::default()
        .with_model(MODEL)
        .with_latency(Duration::from_millis(300), Duration::ZERO);
    let (addr, server) = MockServer::start(config.clone()).await.unwrap();
    let model = provider_at(&server.base_url());
    let scheduler = QuotaScheduler::builder()
        .default_quota(Quota::per_minute().requests(100_000))
        .retry(
            RetryPolicy::default()
                .backoff(Duration::from_millis(50), Duration::from_millis(500))
                .breaker(5, Duration::from_millis(500))
                .seed(11),
        )
        .deadlines(Deadlines::new(Duration::from_secs(5)))
        .max_admission_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let workload = FanoutConfig::default()
        .with_conversations(40)
        .with_agents(2)
        .with_max_messages(8);
    let run = tokio::spawn(async move { run_fanout(model, scheduler, &workload, |_| {}).await });

    // Mid-run (each conversation makes 7 calls of ≥ 300 ms): the provider goes away for 2 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, restarted) = MockServer::bind(addr, Simulation::new(config).unwrap())
        .await
        .unwrap();

    let report = completed_run(run, 40, HANG).await.unwrap();
    assert!(
        report.transient_errors > 0,
        "the outage was felt: {report:?}"
    );
    assert_eq!(report.attempts, report.calls + report.retries, "{report:?}");
    assert!(
        restarted.stats().requests > 0,
        "the run finished on the restarted provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_own_timeouts_end_a_stall_without_the_scheduler() {
    // Idle timeout: the headers came, the body stalls.
    let stalled = BrokenServer::start(Misbehaviour::StallAfterHeaders)
        .await
        .unwrap();
    // Response timeout: nothing at all comes.
    let silent = BrokenServer::start(Misbehaviour::NeverAnswer)
        .await
        .unwrap();
    for server in [&stalled, &silent] {
        let provider = OpenAiProvider::builder()
            .base_url(server.base_url())
            .model(MODEL)
            .timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let request = agent_core::ChatRequest::new(vec![agent_core::Message::user("hi")]);
        let result = tokio::time::timeout(HANG, provider.complete(request))
            .await
            .expect("the provider hung");
        assert!(
            matches!(result, Err(ModelError::Transient { status: None, .. })),
            "{result:?}"
        );
    }
}
