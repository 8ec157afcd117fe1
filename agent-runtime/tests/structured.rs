//! Structured output end to end: an agent asking for a Rust type gets a value of it — from the
//! in-process simulator, and over HTTP from the mock server through the OpenAI provider (the
//! request carries the JSON schema, the mock answers with JSON that fits it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;

use agent_core::{ChatModel, Content, LlmAgent, Message, TurnContext};
use agent_runtime::QuotaScheduler;
use agent_runtime::SchedulerContext;
use agent_runtime::chat::GroupChat;
use agent_runtime::mock::MockServer;
use agent_runtime::provider::{OpenAiProvider, SimConfig, SimulatedProvider};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
enum Priority {
    Low,
    High,
}

/// A triaged ticket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Triage {
    summary: String,
    priority: Priority,
    labels: Vec<String>,
    estimate_hours: u32,
}

fn triager(model: Arc<dyn ChatModel>) -> LlmAgent {
    LlmAgent::builder("triager", model)
        .system_message("Triage the ticket.")
        .output::<Triage>()
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_simulator_answers_a_typed_agent_with_a_value_of_its_type() {
    let model = Arc::new(SimulatedProvider::new(SimConfig::default()).unwrap());
    let agent = triager(model.clone());
    let scheduler = QuotaScheduler::new();
    let ctx = SchedulerContext::new(scheduler, "c", "triager", Default::default());
    let typed = agent
        .reply_as::<Triage>(&[Message::user("the login page is down")], &ctx)
        .await
        .unwrap();
    assert_eq!(typed.value.labels.len(), 1);
    assert_eq!(ctx.budget().used().calls, 1, "it fit the first time");
    assert_eq!(model.simulation().stats().requests, 1);
}

#[tokio::test]
async fn over_http_the_schema_goes_out_and_a_fitting_value_comes_back() {
    let (addr, server) = MockServer::start(SimConfig::default()).await.unwrap();
    let model: Arc<dyn ChatModel> = Arc::new(
        OpenAiProvider::builder()
            .base_url(format!("http://{addr}/v1"))
            .model("gpt-4o-mini")
            .build()
            .unwrap(),
    );
    // In a chat: the structured message lands in the transcript and round-trips through serde.
    let mut chat = GroupChat::builder()
        .participant(triager(model))
        .max_messages(2)
        .build()
        .unwrap();
    let result = chat.run("the login page is down").await.unwrap();
    let last = result.messages.last().unwrap();
    let Content::Structured { schema, value, .. } = &last.content else {
        panic!("{last:?}")
    };
    assert_eq!(&**schema, "Triage");
    let triage: Triage = serde_json::from_value((**value).clone()).unwrap();
    assert_eq!(last.value_as::<Triage>().unwrap().unwrap(), triage);
    let json = serde_json::to_string(&result.messages).unwrap();
    let back: Vec<Message> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, result.messages);
    assert_eq!(server.stats().requests, 1);
    server.shutdown().await.unwrap();
}
