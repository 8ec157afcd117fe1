//! The mock server's limiter kinds and dialects on the wire: what each admits and exactly which
//! headers and bodies it sends, read with a plain HTTP client. (Boundaries and waits are exact on
//! the paused clock in the simulator's own tests; here windows are an hour long, so a real-time
//! run never crosses one.)
#![cfg(all(feature = "mock-server", feature = "openai"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agent_runtime::mock::MockServer;
use agent_runtime::provider::{Dialect, LimiterKind, SimConfig, WindowAnchor};
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);

async fn start(config: SimConfig) -> (MockServer, reqwest::Client) {
    let config = config
        .with_period(HOUR)
        .with_latency(Duration::ZERO, Duration::ZERO);
    let (_, server) = MockServer::start(config).await.unwrap();
    // reqwest is built without a default TLS provider (see docs/install.md).
    agent_runtime::tls::install_crypto_provider();
    (server, reqwest::Client::new())
}

async fn post(client: &reqwest::Client, server: &MockServer) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// The rate-limit header names of `response`, sorted (content type, length, date and request
/// id left out).
fn rate_limit_names(response: &reqwest::Response) -> Vec<String> {
    let mut names: Vec<String> = response
        .headers()
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| {
            !["content-type", "content-length", "date", "x-request-id"].contains(&n.as_str())
        })
        .collect();
    names.sort();
    names
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

/// Posts until the first non-200; returns the number of 200s and that response.
async fn until_refused(client: &reqwest::Client, server: &MockServer) -> (u64, reqwest::Response) {
    let mut ok = 0;
    loop {
        let response = post(client, server).await;
        if response.status() != 200 {
            return (ok, response);
        }
        ok += 1;
        assert!(ok < 1_000, "never refused");
    }
}

fn phase(seconds: u64) -> LimiterKind {
    LimiterKind::FixedWindow(WindowAnchor::Phase(Duration::from_secs(seconds)))
}

#[tokio::test]
async fn litellm_over_http_admits_limit_minus_one_and_sends_its_429() {
    let (server, client) = start(
        SimConfig::default()
            .with_rpm(10)
            .litellm()
            .with_limiter(phase(0)),
    )
    .await;
    let first = post(&client, &server).await;
    assert_eq!(
        rate_limit_names(&first),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests"
        ]
    );
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "9");
    let (ok, refused) = until_refused(&client, &server).await;
    assert_eq!(ok + 1, 9, "LiteLLM admits limit − 1");
    assert_eq!(refused.status(), 429);
    assert_eq!(rate_limit_names(&refused), ["llm_provider-retry-after"]);
    assert_eq!(header(&refused, "llm_provider-retry-after"), "60");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "throttling_error");
    assert_eq!(body["error"]["code"], "429");
    assert_eq!(body["error"]["param"], Value::Null);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "litellm.RateLimitError: No deployments available for selected model. \
             Passed model=gpt-4o-mini. Deployments={"
        ),
        "{message}"
    );
    assert!(
        message.contains("'current_rpm': 9, 'rpm_limit': 10"),
        "{message}"
    );
    assert_eq!(server.stats().admitted, 9);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn fixed_windows_over_http_with_and_without_reset_and_retry_after() {
    let (server, client) = start(SimConfig::default().with_rpm(3).with_limiter(phase(600))).await;
    let (ok, refused) = until_refused(&client, &server).await;
    assert_eq!(ok, 3);
    assert_eq!(
        rate_limit_names(&refused),
        [
            "retry-after",
            "retry-after-ms",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests"
        ]
    );
    // 600 s into an hour-long window: the boundary is at most 3000 s away.
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((2990..=3000).contains(&retry), "{retry}");
    server.shutdown().await.unwrap();

    let bare = SimConfig::default()
        .with_rpm(3)
        .with_limiter(phase(0))
        .with_reset_headers(false)
        .with_retry_after_headers(false);
    let (server, client) = start(bare).await;
    let (ok, refused) = until_refused(&client, &server).await;
    assert_eq!(ok, 3);
    assert_eq!(
        rate_limit_names(&refused),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests"
        ]
    );
    let body: Value = refused.json().await.unwrap();
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sliding_and_first_request_windows_over_http_admit_the_limit() {
    for kind in [
        LimiterKind::SlidingLog,
        LimiterKind::FixedWindow(WindowAnchor::FirstRequest),
    ] {
        let (server, client) =
            start(SimConfig::default().with_rpm(4).with_request_limiter(kind)).await;
        let (ok, refused) = until_refused(&client, &server).await;
        assert_eq!(ok, 4, "{kind:?}");
        assert_eq!(refused.status(), 429);
        // Both free capacity about an hour after the first admission.
        let retry: u64 = header(&refused, "retry-after").parse().unwrap();
        assert!((3590..=3600).contains(&retry), "{kind:?}: {retry}");
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn azure_and_anthropic_dialects_over_http() {
    let azure = SimConfig::default()
        .with_rpm(2)
        .with_tpm(100_000)
        .with_dialect(Dialect::Azure);
    let (server, client) = start(azure).await;
    let (ok, refused) = until_refused(&client, &server).await;
    assert_eq!(ok, 2);
    assert_eq!(
        rate_limit_names(&refused),
        [
            "retry-after",
            "retry-after-ms",
            "x-ratelimit-limit-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-remaining-tokens"
        ]
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "429");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Please retry after")
    );
    server.shutdown().await.unwrap();

    let anthropic = SimConfig::default()
        .with_rpm(1)
        .with_dialect(Dialect::Anthropic);
    let (server, client) = start(anthropic).await;
    let (ok, refused) = until_refused(&client, &server).await;
    assert_eq!(ok, 1);
    assert_eq!(
        rate_limit_names(&refused),
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
            "retry-after"
        ]
    );
    let reset = header(&refused, "anthropic-ratelimit-requests-reset");
    assert!(reset.ends_with('Z') && reset.contains('T'), "{reset}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    server.shutdown().await.unwrap();
}
