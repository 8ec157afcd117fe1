//! Provider failures seen through a group chat over real HTTP: what is retried, what is not, and
//! that a failed chat keeps its transcript.
//!
//! Each chat is 3 LLM agents, round robin, 6 messages (task included), against the mock server
//! with one injected fault. The mock counts requests as they arrive, so "the 3rd request fails"
//! means the third agent's reply.

use agent_core::{AgentError, CallError, Message, ModelError};
use agent_runtime::chat::{ChatError, ChatErrorKind};
use agent_runtime::fanout::{FanoutConfig, run_fanout};
use agent_runtime::provider::{Faults, SimConfig};
use turnstile_tests::{
    MODEL, fast_retries, group_chat, provider, scheduler, start_mock, stats_over_http,
};

const TASK: &str = "Write a tagline for a rate limiter.";

fn faulty(faults: Faults) -> SimConfig {
    SimConfig::default().with_model(MODEL).with_faults(faults)
}

/// The model error that failed the chat, if an agent's model call failed it.
fn model_error(error: &ChatError) -> Option<&ModelError> {
    match error.kind() {
        ChatErrorKind::Agent {
            source: AgentError::Call(CallError::Model(e)),
            ..
        }
        | ChatErrorKind::Agent {
            source: AgentError::Call(CallError::RetriesExhausted { last: e, .. }),
            ..
        } => Some(e),
        _ => None,
    }
}

/// The task message, then the replies of `agent_1`, `agent_2`, … in order.
fn assert_transcript(transcript: &[Message], replies: usize) {
    assert_eq!(transcript.len(), 1 + replies, "{transcript:#?}");
    assert_eq!(transcript[0].text(), Some(TASK));
    for (k, m) in transcript[1..].iter().enumerate() {
        assert_eq!(m.source(), Some(format!("agent_{}", k + 1).as_str()));
        assert!(m.text().is_some_and(|t| !t.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_quota_is_one_http_call_and_a_clear_error() {
    // Each call reserves its prompt (~25 tokens here) + 100 completion tokens at the mock, so the
    // quota is spent after the second call and the third gets `insufficient_quota`.
    let server = start_mock(faulty(
        Faults::default().with_insufficient_quota_after_tokens(150),
    ))
    .await
    .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let scheduler = scheduler(&key, None, fast_retries()).unwrap();
    let mut chat = group_chat(&model, &scheduler, 3, 6, 100).unwrap();

    let error = chat.run(TASK).await.unwrap_err();

    assert!(
        matches!(model_error(&error), Some(ModelError::QuotaExhausted { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("agent_3"), "{text}");
    assert!(text.contains("quota exhausted"), "{text}");
    assert!(text.contains("check billing"), "{text}");
    assert!(text.contains("exceeded your current quota"), "{text}");
    assert_transcript(error.transcript(), 2);
    assert_eq!(chat.messages().len(), 3, "the chat keeps its thread");

    let stats = stats_over_http(&server).await.unwrap();
    assert_eq!(
        stats["quota_exhausted"], 1,
        "exactly one HTTP call for the failing turn"
    );
    assert_eq!(stats["requests"], 3);
    let keys = scheduler.snapshot().keys;
    assert_eq!(
        (keys[&key].attempts, keys[&key].retries),
        (3, 0),
        "never retried"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_response_is_a_clear_error_and_the_transcript_is_intact() {
    let server = start_mock(faulty(Faults::default().with_malformed_every(3)))
        .await
        .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let scheduler = scheduler(&key, None, fast_retries()).unwrap();
    let mut chat = group_chat(&model, &scheduler, 3, 6, 64).unwrap();

    let error = chat.run(TASK).await.unwrap_err();

    assert!(
        matches!(
            model_error(&error),
            Some(ModelError::MalformedResponse { .. })
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("agent_3"), "{text}");
    assert!(text.contains("malformed provider response"), "{text}");
    assert_transcript(error.transcript(), 2);
    let stats = stats_over_http(&server).await.unwrap();
    assert_eq!(stats["malformed"], 1);
    assert_eq!(
        stats["requests"], 3,
        "a malformed response is never retried"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_response_with_retries_off_is_a_clear_error_and_the_transcript_is_intact() {
    let server = start_mock(faulty(Faults::default().with_drop_every(3)))
        .await
        .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let scheduler = scheduler(&key, None, fast_retries().max_attempts(1)).unwrap();
    let mut chat = group_chat(&model, &scheduler, 3, 6, 64).unwrap();

    let error = chat.run(TASK).await.unwrap_err();

    assert!(
        matches!(model_error(&error), Some(ModelError::Transient { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("agent_3"), "{text}");
    // The cut reaches the client before or after the headers, depending on buffering: either
    // way the error says the connection closed mid-response.
    assert!(text.contains("transient provider failure"), "{text}");
    assert!(text.contains("connection"), "{text}");
    assert_transcript(error.transcript(), 2);
    let stats = stats_over_http(&server).await.unwrap();
    assert_eq!(
        (stats["dropped"].as_u64(), stats["requests"].as_u64()),
        (Some(1), Some(3))
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_response_is_retried_and_the_chat_completes() {
    let server = start_mock(faulty(Faults::default().with_drop_every(3)))
        .await
        .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let scheduler = scheduler(&key, None, fast_retries()).unwrap();
    let mut chat = group_chat(&model, &scheduler, 3, 6, 64).unwrap();

    let result = chat.run(TASK).await.unwrap();

    assert_eq!(result.messages.len(), 6);
    assert_transcript(&result.messages[..3], 2);
    // Requests 3 and 6 are cut: 5 replies take 7 requests.
    let stats = stats_over_http(&server).await.unwrap();
    assert_eq!(
        (stats["dropped"].as_u64(), stats["requests"].as_u64()),
        (Some(2), Some(7))
    );
    let keys = scheduler.snapshot().keys;
    assert_eq!((keys[&key].retries, keys[&key].transient_errors), (2, 2));
    assert_eq!(result.usage.total.attempts, 7);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_500s_are_retried_within_the_retry_budget() {
    let server = start_mock(faulty(Faults::default().with_fail_every(4)))
        .await
        .unwrap();
    let model = provider(&server).unwrap();
    let key = model.id().to_owned();
    let policy = fast_retries();
    let scheduler = scheduler(&key, None, policy.clone()).unwrap();
    let config = FanoutConfig::default()
        .with_conversations(5)
        .with_agents(3)
        .with_max_messages(6);

    let report = run_fanout(model, scheduler, &config, |_| {}).await.unwrap();

    assert_eq!(
        (report.completed, report.failed),
        (5, 0),
        "{:?}",
        report.first_error
    );
    assert_eq!(report.calls, 25);
    let stats = stats_over_http(&server).await.unwrap();
    let server_errors = stats["server_errors"].as_u64().unwrap();
    assert!(server_errors > 0);
    assert_eq!(report.retries, server_errors, "every 500 retried once");
    assert_eq!(report.transient_errors, server_errors);
    assert_eq!(stats["requests"], report.calls + server_errors);
    let budget =
        u64::from(policy.budget_floor) + (policy.budget_ratio * report.calls as f64) as u64;
    assert!(
        report.retries <= budget,
        "{} retries, budget {budget}",
        report.retries
    );
    server.shutdown().await.unwrap();
}
