//! The mock server on the wire, read with a plain HTTP client: OpenAI's headers and 429 bodies
//! byte for byte, SSE framing, and the models, stats and admin endpoints.
#![cfg(all(feature = "mock-server", feature = "openai"))]
// Helpers outside #[test] fns fail loudly too; that is what a test helper is for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agent_runtime::mock::MockServer;
use agent_runtime::provider::SimConfig;
use agent_runtime::provider::headers::{parse_go_duration, try_again_in};
use serde_json::{Value, json};

async fn start(config: SimConfig) -> (MockServer, reqwest::Client) {
    let config = config.with_latency(Duration::ZERO, Duration::ZERO);
    let (_, server) = MockServer::start(config).await.unwrap();
    agent_runtime::tls::install_crypto_provider();
    (server, reqwest::Client::new())
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn post(client: &reqwest::Client, server: &MockServer, body: &Value) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn every_response_carries_openai_rate_limit_headers() {
    let (server, client) = start(SimConfig::default().with_rpm(100).with_tpm(6000)).await;
    let response = post(&client, &server, &chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "100");
    assert_eq!(header(&response, "x-ratelimit-remaining-requests"), "99");
    // 1 of 100 per minute: 600 ms; 24 of 6000 per minute: 240 ms. Go duration strings.
    assert_eq!(header(&response, "x-ratelimit-reset-requests"), "600ms");
    assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "6000");
    assert_eq!(header(&response, "x-ratelimit-remaining-tokens"), "5976");
    assert_eq!(header(&response, "x-ratelimit-reset-tokens"), "240ms");
    assert!(header(&response, "x-request-id").starts_with("req_"));
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 32);
}

#[tokio::test]
async fn a_429_is_byte_compatible_with_openai() {
    let (server, client) = start(
        SimConfig::default()
            .with_rpm(1)
            .with_period(Duration::from_secs(3600)),
    )
    .await;
    assert_eq!(post(&client, &server, &chat(false)).await.status(), 200);
    let response = post(&client, &server, &chat(false)).await;
    assert_eq!(response.status(), 429);
    let retry_ms: u64 = header(&response, "retry-after-ms").parse().unwrap();
    let retry_s: u64 = header(&response, "retry-after").parse().unwrap();
    assert_eq!(retry_s, retry_ms.div_ceil(1000));
    assert_eq!(header(&response, "x-ratelimit-remaining-requests"), "0");
    let reset = parse_go_duration(header(&response, "x-ratelimit-reset-requests")).unwrap();
    assert_eq!(
        reset,
        Duration::from_millis(retry_ms),
        "one request short: reset = wait"
    );

    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["type"], "requests");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["param"], Value::Null);
    let message = error["message"].as_str().unwrap();
    let head = "Rate limit reached for gpt-4o-mini in organization org-turnstile-sim on requests \
                per min (RPM): Limit 1, Used 1, Requested 1. Please try again in ";
    let tail = ". Visit https://platform.openai.com/account/rate-limits to learn more.";
    assert!(
        message.starts_with(head) && message.ends_with(tail),
        "{message}"
    );
    // The message's wait is the header's, in Go duration form.
    let stated = &message[head.len()..message.len() - tail.len()];
    assert_eq!(
        parse_go_duration(stated),
        Some(Duration::from_millis(retry_ms))
    );
    assert_eq!(try_again_in(message), Some(Duration::from_millis(retry_ms)));
}

#[tokio::test]
async fn sse_is_framed_like_openai_with_a_usage_chunk() {
    let (server, client) = start(SimConfig::default().with_reply_tokens(5)).await;
    let response = post(&client, &server, &chat(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // role, 5 tokens, finish, usage.
    assert_eq!(chunks.len(), 8);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content.len(), 20);
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 5);

    // Without include_usage there is no usage chunk.
    let mut plain = chat(true);
    plain["stream_options"] = json!({"include_usage": false});
    let text = post(&client, &server, &plain).await.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
}

#[tokio::test]
async fn models_stats_and_admin_endpoints() {
    let (server, client) = start(SimConfig::default().with_rpm(10).with_model("mock-4o")).await;
    let base = format!("http://{}", server.addr());
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock-4o");

    for _ in 0..3 {
        post(&client, &server, &chat(false)).await;
    }
    let bad = client
        .post(format!("{base}/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"]["type"], "invalid_request_error");

    let stats: Value = client
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["admitted"], 3);
    assert_eq!(stats["max_requests_in_period"], 3);
    assert_eq!(stats["rpm"], 10);

    // Halve the limit mid-run: the next response reports it.
    let after: Value = client
        .post(format!("{base}/admin/limits"))
        .json(&json!({"rpm": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["rpm"], 5);
    let response = post(&client, &server, &chat(false)).await;
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "5");
    assert_eq!(header(&response, "x-ratelimit-remaining-requests"), "4");

    let refused = client
        .post(format!("{base}/admin/limits"))
        .json(&json!({"tpm": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn quota_and_server_faults_use_openai_bodies() {
    use agent_runtime::provider::Faults;
    let faults = Faults::default()
        .with_insufficient_quota_after_tokens(24)
        .with_fail_every(1);
    let (server, client) = start(SimConfig::default().with_faults(faults)).await;
    let first = post(&client, &server, &chat(false)).await;
    assert_eq!(first.status(), 500);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");

    // The 500 was admitted (24 tokens), so the quota is now spent.
    let second = post(&client, &server, &chat(false)).await;
    assert_eq!(second.status(), 429);
    assert!(second.headers().get("retry-after").is_none());
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
}
