//! Streams through the scheduler over real HTTP against the in-process mock server: the
//! provider asks for a usage chunk (`stream_options.include_usage`) and the scheduler charges the
//! usage the server reported; without it, the prompt's estimate plus what arrived.
#![cfg(all(feature = "openai", feature = "mock-server"))]
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use agent_core::{Budget, CallKind, ChatModel, ChatRequest, Message, StreamEvent, Usage};
use agent_runtime::mock::MockServer;
use agent_runtime::provider::{OpenAiProvider, SimConfig};
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
use futures::StreamExt;

fn provider(server: &MockServer, include_usage: bool) -> OpenAiProvider {
    OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("gpt-4o-mini")
        .stream_usage(include_usage)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_usage_chunk_is_asked_for_and_charged_when_sent() {
    let config = SimConfig::default().with_latency(Duration::ZERO, Duration::ZERO);
    let (_, server) = MockServer::start(config).await.unwrap();
    let request = ChatRequest::new(vec![Message::user("hi")]).with_max_completion_tokens(64);

    for include_usage in [true, false] {
        let model = provider(&server, include_usage);
        let scheduler = QuotaScheduler::builder()
            .quota(
                model.id(),
                Quota::per_minute().requests(100).tokens(100_000),
            )
            .build()
            .unwrap();
        let budget = Budget::unlimited();
        let call = ModelCall::new(&model, request.clone(), CallKind::Reply, "c", "a", &budget);
        let mut stream = scheduler.call_stream(call).await.unwrap();
        let (mut text, mut done) = (String::new(), None);
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::TextDelta(delta) => text.push_str(&delta),
                StreamEvent::Completed(c) => done = Some(c),
                other => panic!("unexpected {other:?}"),
            }
        }
        let done = done.unwrap();
        assert_eq!(done.message.text(), Some(text.as_str()));
        let key = &scheduler.snapshot().keys[model.id()];
        assert_eq!((key.succeeded, key.in_flight), (1, 0));
        if include_usage {
            // The mock's usage chunk: 8 prompt tokens, 24 generated.
            assert_eq!(done.usage, Some(Usage::new(8, 24)));
            assert_eq!(budget.used().tokens, 32);
            assert_eq!((key.prompt_tokens, key.completion_tokens), (8, 24));
        } else {
            assert_eq!(done.usage, None);
            let estimator = scheduler.estimator();
            let expected =
                estimator.prompt_tokens(&request) + estimator.message_tokens(&done.message);
            assert_eq!(budget.used().tokens, expected);
            // Less than the 64-token completion reservation: what arrived, not the cap.
            assert!(expected < estimator.prompt_tokens(&request) + 64);
            assert_eq!((key.prompt_tokens, key.completion_tokens), (0, 0));
        }
    }
    server.shutdown().await.unwrap();
}
