//! The OpenAI-compatible provider over real HTTP against the in-process mock server: one HTTP
//! request per call, headers and 429 bodies parsed into readings and errors, streaming with
//! usage, tool calls both ways, faults turned into clear errors, keys never shown.
#![cfg(all(feature = "openai", feature = "mock-server"))]
// Helpers outside #[test] fns fail loudly too; that is what a test helper is for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    ChatModel, ChatRequest, Completion, FinishReason, Message, ModelError, RateLimitKind,
    StreamEvent, ToolCall, ToolResult, ToolSpec, Usage,
};
use agent_runtime::mock::MockServer;
use agent_runtime::provider::{Faults, Flavor, OpenAiProvider, SimConfig, SimulatedProvider};
use axum::http::{HeaderMap, Uri};
use futures::StreamExt;

const KEY: &str = "sk-test-SECRET-0123456789";

async fn serve(config: SimConfig) -> (MockServer, OpenAiProvider) {
    let config = config.with_latency(Duration::ZERO, Duration::ZERO);
    let (_, server) = MockServer::start(config).await.unwrap();
    let provider = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("gpt-4o-mini")
        .api_key(KEY)
        .build()
        .unwrap();
    (server, provider)
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

fn add_tool() -> ToolSpec {
    ToolSpec {
        name: "add".into(),
        description: "Adds two numbers".into(),
        parameters: Arc::new(serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        })),
    }
}

/// Collects a stream into its text deltas and its final event.
async fn drain(
    provider: &impl ChatModel,
    request: ChatRequest,
) -> (String, Result<Completion, ModelError>) {
    let mut stream = provider.stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::TextDelta(delta)) => text.push_str(&delta),
            Ok(StreamEvent::Completed(done)) => {
                assert!(stream.next().await.is_none(), "nothing after Completed");
                return (text, Ok(done));
            }
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(e) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (text, Err(e));
            }
        }
    }
    panic!("the stream ended without Completed or an error")
}

#[tokio::test]
async fn json_completion_carries_usage_and_the_headers_reading() {
    let (server, provider) = serve(SimConfig::default().with_rpm(100).with_tpm(10_000)).await;
    let done = provider.complete(hi()).await.unwrap();
    assert!(
        done.message
            .text()
            .unwrap()
            .starts_with("Turn 1, answering user: "),
        "{:?}",
        done.message
    );
    // "hi": 1 token + 4 framing + 3 priming; 24 reply tokens.
    assert_eq!(done.usage, Some(Usage::new(8, 24)));
    assert_eq!(done.message.usage, done.usage);
    assert_eq!(done.finish_reason, FinishReason::Stop);
    let reading = done.rate_limits.unwrap();
    assert_eq!(reading.limit_requests, Some(100));
    assert_eq!(reading.remaining_requests, Some(99));
    // One request of 100 per minute refills in 600 ms (formatted `600ms`, parsed back).
    assert_eq!(reading.reset_requests, Some(Duration::from_millis(600)));
    assert_eq!(reading.limit_tokens, Some(10_000));
    // Charged 8 prompt + 16 default completion tokens at admission.
    assert_eq!(reading.remaining_tokens, Some(9_976));
    assert_eq!(reading.retry_after, None);
    assert_eq!(server.stats().requests, 1);
}

#[tokio::test]
async fn sse_stream_assembles_text_usage_and_reading() {
    let (server, provider) = serve(SimConfig::default().with_rpm(100)).await;
    let (text, done) = drain(&provider, hi()).await;
    let done = done.unwrap();
    assert_eq!(done.message.text(), Some(text.as_str()));
    assert!(text.starts_with("Turn 1, answering user: "), "{text}");
    assert_eq!(done.usage, Some(Usage::new(8, 24)));
    assert_eq!(done.rate_limits.unwrap().remaining_requests, Some(99));

    // The same reply as the JSON path.
    let whole = provider.complete(hi()).await.unwrap();
    assert_eq!(whole.message.text(), done.message.text());
    assert_eq!(server.stats().requests, 2);
}

#[tokio::test]
async fn tool_calls_go_out_and_results_come_back() {
    let (_server, provider) = serve(SimConfig::default()).await;
    let ask = Message::user(r#"call tool add {"a": 1, "b": 2}"#);
    let request = ChatRequest::new(vec![ask.clone()]).with_tools(vec![add_tool()]);
    let done = provider.complete(request.clone()).await.unwrap();
    let want = ToolCall::new("call_1", "add", r#"{"a":1,"b":2}"#);
    assert_eq!(done.message.calls(), std::slice::from_ref(&want));
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);

    // Streamed tool calls assemble the same call.
    let (text, streamed) = drain(&provider, request).await;
    assert_eq!(text, "");
    let streamed = streamed.unwrap();
    assert_eq!(streamed.message.calls(), std::slice::from_ref(&want));
    assert_eq!(streamed.finish_reason, FinishReason::ToolCalls);

    // The call and its result travel back as an assistant `tool_calls` and a `tool` message.
    let back = ChatRequest::new(vec![
        ask,
        done.message.clone(),
        Message::tool_results(
            "calc",
            vec![ToolResult {
                call_id: "call_1".into(),
                name: "add".into(),
                content: "3".into(),
                is_error: false,
            }],
        ),
    ])
    .with_tools(vec![add_tool()]);
    let answer = provider.complete(back).await.unwrap();
    assert_eq!(answer.message.text(), Some("Tool add returned 3."));
}

#[tokio::test]
async fn request_429_is_rate_limited_with_the_headers_wait_and_no_retry() {
    let (server, provider) = serve(
        SimConfig::default()
            .with_rpm(1)
            .with_period(Duration::from_secs(3600)),
    )
    .await;
    provider.complete(hi()).await.unwrap();
    match provider.complete(hi()).await {
        Err(ModelError::RateLimited {
            kind,
            retry_after: Some(wait),
            reading: Some(reading),
            message,
        }) => {
            assert_eq!(kind, RateLimitKind::Requests);
            assert_eq!(reading.retry_after, Some(wait));
            assert_eq!(reading.limit_requests, Some(1));
            assert_eq!(reading.remaining_requests, Some(0));
            // One request per hour: the wait is (just under) an hour.
            assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
            assert!(message.contains("Please try again in"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Exactly one HTTP request per call: async-openai's retry layer is gone.
    let stats = server.stats();
    assert_eq!((stats.requests, stats.rate_limited_requests), (2, 1));
}

#[tokio::test]
async fn token_429_and_request_too_large() {
    let (server, provider) = serve(SimConfig::default().with_tpm(100)).await;
    // 8 prompt + 80 max tokens = 88 of 100.
    let big = hi().with_max_completion_tokens(80);
    provider.complete(big.clone()).await.unwrap();
    let err = provider.complete(big).await.unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::RateLimited {
                kind: RateLimitKind::Tokens,
                retry_after: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    let err = provider
        .complete(hi().with_max_completion_tokens(200))
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::RequestTooLarge { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(server.stats().requests, 3);
}

#[tokio::test]
async fn insufficient_quota_is_one_request_and_a_clear_error() {
    let faults = Faults::default().with_insufficient_quota_after_tokens(0);
    let (server, provider) = serve(SimConfig::default().with_faults(faults)).await;
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(matches!(err, ModelError::QuotaExhausted { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("check billing"), "{err}");
    assert_eq!(server.stats().requests, 1);

    let err = provider.stream(hi()).await.err().unwrap();
    assert!(matches!(err, ModelError::QuotaExhausted { .. }), "{err:?}");
    assert_eq!(server.stats().requests, 2);
}

#[tokio::test]
async fn a_500_is_one_request_and_transient() {
    let faults = Faults::default().with_fail_every(1);
    let (server, provider) = serve(SimConfig::default().with_rpm(10).with_faults(faults)).await;
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Transient {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let stats = server.stats();
    assert_eq!((stats.requests, stats.server_errors), (1, 1));
}

#[tokio::test]
async fn malformed_bodies_are_malformed_responses() {
    let faults = Faults::default().with_malformed_every(1);
    let (_server, provider) = serve(SimConfig::default().with_faults(faults)).await;
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(
        matches!(err, ModelError::MalformedResponse { .. }),
        "{err:?}"
    );
    let (text, done) = drain(&provider, hi()).await;
    assert_eq!(text, "");
    assert!(
        matches!(done, Err(ModelError::MalformedResponse { .. })),
        "{done:?}"
    );
}

#[tokio::test]
async fn a_cut_connection_is_a_transient_error_never_a_panic() {
    let faults = Faults::default().with_drop_every(1);
    let (_server, provider) = serve(SimConfig::default().with_faults(faults)).await;
    let (text, done) = drain(&provider, hi()).await;
    match done {
        Err(ModelError::Transient { message, .. }) => {
            assert!(
                message.contains("stream ended before completion"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // What arrived before the cut is the start of the reply, not the whole of it.
    let whole = SimulatedProvider::default().complete(hi()).await.unwrap();
    let whole = whole.message.text().unwrap();
    assert!(
        whole.starts_with(&text) && text.len() < whole.len(),
        "{text:?}"
    );

    let err = provider.complete(hi()).await.unwrap_err();
    assert!(matches!(err, ModelError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hung_server_times_out_as_transient() {
    let faults = Faults::default().with_hang_every(1);
    let (_, server) = MockServer::start(SimConfig::default().with_faults(faults))
        .await
        .unwrap();
    let provider = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("m")
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = provider.complete(hi()).await.unwrap_err();
    match &err {
        ModelError::Transient {
            status: None,
            message,
            ..
        } => assert!(message.contains("no response within"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(provider.stream(hi()).await.is_err());
    // Shutdown ends the hung handlers instead of waiting for them forever.
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_slots_answer_503_transient() {
    let faults = Faults::default().with_hang_every(2);
    let (_, server) = MockServer::start(
        SimConfig::default()
            .with_max_concurrency(1)
            .with_latency(Duration::ZERO, Duration::ZERO)
            .with_faults(faults),
    )
    .await
    .unwrap();
    let provider = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("m")
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    provider.complete(hi()).await.unwrap();
    // Request 2 hangs and holds the only slot.
    let hung = tokio::spawn(async move { provider.complete(hi()).await });
    for _ in 0..2000 {
        if server.stats().in_flight == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.stats().in_flight, 1);
    let other = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("m")
        .build()
        .unwrap();
    let err = other.complete(hi()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    server.shutdown().await.unwrap();
    // Shutting down ends the hang with a 503.
    let err = hung.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_simulator_and_the_mock_answer_alike() {
    let config = SimConfig::default()
        .with_rpm(2)
        .with_terminate_after(2)
        .with_latency(Duration::ZERO, Duration::ZERO);
    let sim = SimulatedProvider::new(config.clone()).unwrap();
    let (_, server) = MockServer::start(config).await.unwrap();
    let http = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("gpt-4o-mini")
        .build()
        .unwrap();
    let requests = [
        hi(),
        ChatRequest::new(vec![
            Message::user("hi"),
            Message::assistant("bot", "hello"),
        ]),
        hi(),
    ];
    for request in requests {
        let a = sim.complete(request.clone()).await;
        let b = http.complete(request).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.message.text(), b.message.text());
                assert_eq!(a.usage, b.usage);
                assert_eq!(a.finish_reason, b.finish_reason);
                let (ra, rb) = (a.rate_limits.unwrap(), b.rate_limits.unwrap());
                assert_eq!(ra.remaining_requests, rb.remaining_requests);
            }
            (Err(a), Err(b)) => {
                assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b));
                assert!(matches!(
                    a,
                    ModelError::RateLimited {
                        kind: RateLimitKind::Requests,
                        ..
                    }
                ));
            }
            (a, b) => panic!("simulator {a:?} vs mock {b:?}"),
        }
    }
}

/// A server that rejects every key and echoes it, as some proxies do.
async fn echoing_401() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = serde_json::json!({"error": {
                "message": format!("Incorrect API key provided: {auth}."),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

#[tokio::test]
async fn the_key_never_shows_in_debug_or_errors() {
    let (addr, task) = echoing_401().await;
    let provider = OpenAiProvider::builder()
        .base_url(format!("http://{addr}/v1"))
        .model("m")
        .api_key(KEY)
        .build()
        .unwrap();
    assert!(!format!("{provider:?}").contains(KEY));
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InvalidRequest {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(KEY), "{shown}");
        assert!(
            shown.contains("Incorrect API key provided: Bearer ***"),
            "{shown}"
        );
    }
    let err = provider.stream(hi()).await.err().unwrap();
    assert!(!format!("{err} {err:?}").contains(KEY));

    // Nothing listening: the transport error names the problem, not the key.
    task.abort();
    let _ = task.await;
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(matches!(err, ModelError::Transient { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(KEY));
}

#[derive(Debug, Clone)]
struct Seen {
    uri: Uri,
    headers: HeaderMap,
    body: serde_json::Value,
}

/// A server that records each request and answers with a fixed completion.
async fn recording() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let body = serde_json::from_slice(&body).unwrap_or_default();
            log.lock().unwrap().push(Seen { uri, headers, body });
            axum::Json(serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            }))
        }
    };
    let app = axum::Router::new().fallback(axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, seen)
}

#[tokio::test]
async fn flavors_choose_url_auth_and_token_field() {
    let (addr, seen) = recording().await;
    let request = hi().with_max_completion_tokens(33);

    let azure = OpenAiProvider::builder()
        .base_url(format!("http://{addr}"))
        .azure("prod-4o", "2024-10-21")
        .api_key(KEY)
        .build()
        .unwrap();
    let openai = OpenAiProvider::builder()
        .base_url(format!("http://{addr}/v1"))
        .flavor(Flavor::OpenAi)
        .model("gpt-4o")
        .api_key(KEY)
        .build()
        .unwrap();
    let local = OpenAiProvider::builder()
        .base_url(format!("http://{addr}/v1"))
        .model("llama3.2")
        .build()
        .unwrap();
    for provider in [&azure, &openai, &local] {
        let done = provider.complete(request.clone()).await.unwrap();
        assert_eq!(done.message.text(), Some("ok"));
        assert_eq!(done.usage, Some(Usage::new(3, 1)));
        // This server sends no rate-limit headers: no reading rather than an empty one.
        assert_eq!(done.rate_limits, None);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one HTTP request per call");

    let az = &seen[0];
    assert_eq!(
        az.uri.path(),
        "/openai/deployments/prod-4o/chat/completions"
    );
    assert_eq!(az.uri.query(), Some("api-version=2024-10-21"));
    assert_eq!(az.headers["api-key"], KEY);
    assert!(az.headers.get("authorization").is_none());
    assert_eq!(az.body["max_tokens"], 33);
    assert!(az.body.get("max_completion_tokens").is_none());

    let oa = &seen[1];
    assert_eq!(oa.uri.path(), "/v1/chat/completions");
    assert_eq!(
        oa.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(oa.body["max_completion_tokens"], 33);
    assert!(oa.body.get("max_tokens").is_none());
    assert_eq!(oa.body["model"], "gpt-4o");

    let lo = &seen[2];
    assert!(
        lo.headers.get("authorization").is_none(),
        "no empty bearer for keyless servers"
    );
    assert_eq!(lo.body["max_tokens"], 33);
    assert_eq!(lo.body["model"], "llama3.2");
}

#[tokio::test]
async fn azure_requests_reach_the_mock_deployment_route() {
    let (_, server) = MockServer::start(SimConfig::default().with_rpm(10))
        .await
        .unwrap();
    let azure = OpenAiProvider::builder()
        .base_url(format!("http://{}", server.addr()))
        .azure("gpt-4o-mini", "2024-10-21")
        .api_key(KEY)
        .build()
        .unwrap();
    assert_eq!(azure.id(), "azure/gpt-4o-mini");
    let done = azure.complete(hi()).await.unwrap();
    let reading = done.rate_limits.unwrap();
    assert_eq!(reading.remaining_requests, Some(9));
    // Azure counts `x-ratelimit-limit-requests` per 10 s, not per minute.
    assert_eq!(reading.requests_window, Some(Duration::from_secs(10)));
    assert_eq!(reading.tokens_window, None);
    assert_eq!(reading.requests_per(Duration::from_secs(60)), Some(60));

    // The same headers from an OpenAI-style endpoint are per minute.
    let openai = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model("gpt-4o-mini")
        .build()
        .unwrap();
    let reading = openai.complete(hi()).await.unwrap().rate_limits.unwrap();
    assert_eq!(reading.limit_requests, Some(10));
    assert_eq!(reading.requests_window, None);
    assert_eq!(reading.requests_per(Duration::from_secs(60)), Some(10));
}

#[tokio::test]
async fn an_azure_429_carries_the_ten_second_window() {
    let (_, server) = MockServer::start(SimConfig::default().with_rpm(1))
        .await
        .unwrap();
    let azure = OpenAiProvider::builder()
        .base_url(format!("http://{}", server.addr()))
        .azure("gpt-4o-mini", "2024-10-21")
        .api_key(KEY)
        .build()
        .unwrap();
    azure.complete(hi()).await.unwrap();
    match azure.complete(hi()).await.unwrap_err() {
        ModelError::RateLimited {
            reading: Some(reading),
            ..
        } => assert_eq!(reading.requests_window, Some(Duration::from_secs(10))),
        other => panic!("{other:?}"),
    }
}

/// Credentials a proxy URL may carry: userinfo and query-string keys.
const URL_PASSWORD: &str = "hunter2-PASS";
const URL_QUERY_KEY: &str = "QKEY-0123456789";
const URL_AZURE_KEY: &str = "AKEY-0123456789";

fn assert_no_url_secret(shown: &str) {
    for secret in [URL_PASSWORD, URL_QUERY_KEY, URL_AZURE_KEY] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
}

#[tokio::test]
async fn credentials_in_the_base_url_never_show() {
    let with_secrets = |base: &str| {
        format!("{base}?key={URL_QUERY_KEY}&api-key={URL_AZURE_KEY}").replacen(
            "://",
            &format!("://proxyuser:{URL_PASSWORD}@"),
            1,
        )
    };

    // Every configuration error that names the URL.
    let errors = [
        OpenAiProvider::builder()
            .base_url(with_secrets("https://api.openai.com/v1"))
            .model("m")
            .build()
            .unwrap_err(),
        OpenAiProvider::builder()
            .base_url(with_secrets("ftp://proxy.local/v1"))
            .model("m")
            .build()
            .unwrap_err(),
        OpenAiProvider::builder()
            .base_url(with_secrets("http://[not-an-ip/v1"))
            .model("m")
            .build()
            .unwrap_err(),
        OpenAiProvider::builder()
            .base_url(with_secrets("https://res.openai.azure.com"))
            .api_key(KEY)
            .build()
            .unwrap_err(),
    ];
    for err in &errors {
        let shown = format!("{err} {err:?}");
        assert_no_url_secret(&shown);
        assert!(shown.contains("***"), "the redaction is visible: {shown}");
    }

    // Requests still carry the credentials; only what is shown drops them.
    let (addr, seen) = recording().await;
    let provider = OpenAiProvider::builder()
        .base_url(with_secrets(&format!("http://{addr}/v1")))
        .model("m")
        .build()
        .unwrap();
    assert_no_url_secret(&format!("{provider:?} {}", provider.base_url()));
    assert_eq!(
        provider.base_url(),
        format!("http://{addr}/v1?key=***&api-key=***")
    );
    provider.complete(hi()).await.unwrap();
    let sent = seen.lock().unwrap()[0].clone();
    assert_eq!(sent.uri.path(), "/v1/chat/completions");
    assert_eq!(
        sent.uri.query(),
        Some(format!("key={URL_QUERY_KEY}&api-key={URL_AZURE_KEY}").as_str())
    );
    assert!(
        sent.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );

    // A transport failure: reqwest's error embeds the URL it failed on.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let provider = OpenAiProvider::builder()
        .base_url(with_secrets(&format!("http://{closed}/v1")))
        .model("m")
        .build()
        .unwrap();
    for err in [
        provider.complete(hi()).await.unwrap_err(),
        provider.stream(hi()).await.err().unwrap(),
    ] {
        assert!(matches!(err, ModelError::Transient { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert_no_url_secret(&shown);
        assert!(
            shown.contains(&closed.to_string()),
            "still names the endpoint: {shown}"
        );
    }
}
