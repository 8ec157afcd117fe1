//! OpenTelemetry export (feature `otel`): one span per chat, turn and model call, with the GenAI
//! semantic-convention attributes, seen through the SDK's in-memory exporter.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use agent_core::{Completion, LlmAgent, ScriptedModel, Usage};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

const MODEL: &str = "openai/gpt-4o-mini";

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test]
async fn one_span_per_model_call_with_gen_ai_attributes_under_its_turn_and_chat() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(agent_runtime::otel::layer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let model = ScriptedModel::new(MODEL)
        .push(Ok(Completion::text(MODEL, "one", Usage::new(120, 30))))
        .push(Ok(Completion::text(MODEL, "two", Usage::new(150, 40))));
    let agent = |name: &str| {
        LlmAgent::builder(name, Arc::new(model.clone()))
            .build()
            .unwrap()
    };
    let mut chat = GroupChat::builder()
        .name("poem")
        .participant(agent("writer"))
        .participant(agent("critic"))
        .max_turns(2)
        .scheduler(QuotaScheduler::new())
        .build()
        .unwrap();
    chat.run("go").await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let named = |prefix: &str| -> Vec<&SpanData> {
        spans
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .collect()
    };
    let calls = named("chat openai/");
    let turns = named("invoke_agent ");
    let runs = named("chat_run ");
    assert_eq!(
        (calls.len(), turns.len(), runs.len()),
        (2, 2, 1),
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    for (call, (agent, input, output)) in
        calls.iter().zip([("writer", 120, 30), ("critic", 150, 40)])
    {
        assert_eq!(call.name, format!("chat {MODEL}"));
        assert_eq!(
            attr(call, "gen_ai.operation.name"),
            Some(&Value::from("chat"))
        );
        assert_eq!(
            attr(call, "gen_ai.request.model"),
            Some(&Value::from(MODEL))
        );
        assert_eq!(
            attr(call, "gen_ai.provider.name"),
            Some(&Value::from("openai"))
        );
        assert_eq!(attr(call, "gen_ai.agent.name"), Some(&Value::from(agent)));
        assert_eq!(
            attr(call, "gen_ai.usage.input_tokens"),
            Some(&Value::I64(input))
        );
        assert_eq!(
            attr(call, "gen_ai.usage.output_tokens"),
            Some(&Value::I64(output))
        );
        assert_eq!(attr(call, "turnstile.attempts"), Some(&Value::I64(1)));
        assert!(
            matches!(attr(call, "turnstile.quota.wait_seconds"), Some(Value::F64(w)) if *w >= 0.0)
        );
        assert!(matches!(attr(call, "turnstile.cost_usd"), Some(Value::F64(c)) if *c > 0.0));
        assert!(attr(call, "error.type").is_none());
        // Each call is a child of its agent's turn, each turn a child of the chat run.
        let turn = turns
            .iter()
            .find(|t| t.span_context.span_id() == call.parent_span_id)
            .unwrap();
        assert_eq!(turn.name, format!("invoke_agent {agent}"));
        assert_eq!(turn.parent_span_id, runs[0].span_context.span_id());
    }
    assert_eq!(runs[0].name, "chat_run poem");
}
