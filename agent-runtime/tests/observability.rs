//! What an operator sees: the scheduler's finished-vs-submitted counters and its Prometheus
//! exposition, scraped over HTTP from the `/metrics` endpoint.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;

use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, Completion, Message, ModelError};
use agent_core::{ScriptedModel, Usage};
use agent_runtime::prometheus::{SchedulerMetrics, serve};
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};

const MODEL: &str = "openai/gpt-4o-mini";

fn model(replies: usize, failures: usize) -> ScriptedModel {
    let mut m = ScriptedModel::new(MODEL);
    for _ in 0..replies {
        m = m.push(Ok(Completion::text(MODEL, "ok", Usage::new(1_000, 500))));
    }
    for _ in 0..failures {
        m = m.error(ModelError::InvalidRequest {
            status: Some(400),
            message: "bad".into(),
        });
    }
    m
}

async fn calls(s: &QuotaScheduler, m: &ScriptedModel, n: usize, budget: &Budget) {
    for _ in 0..n {
        let request = ChatRequest::new(vec![Message::user("hi")]).with_max_completion_tokens(10);
        let _ = s
            .call(ModelCall::new(
                m,
                request,
                CallKind::Reply,
                "c1",
                "writer",
                budget,
            ))
            .await;
    }
}

#[tokio::test]
async fn finished_counts_successes_and_failures_of_submitted_calls() {
    let s = QuotaScheduler::builder()
        .quota(MODEL, Quota::per_minute().requests(100))
        .build()
        .unwrap();
    let m = model(2, 1);
    calls(&s, &m, 3, &Budget::unlimited()).await;
    let k = &s.snapshot().keys[MODEL];
    assert_eq!((k.calls, k.succeeded, k.failed, k.finished()), (3, 2, 1, 3));

    // A call its budget refuses is never submitted, so it is neither counted nor finished.
    calls(&s, &m, 1, &Budget::new("none", BudgetLimits::calls(0))).await;
    let k = &s.snapshot().keys[MODEL];
    assert_eq!((k.calls, k.finished()), (3, 3));
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_endpoint_serves_the_schedulers_counters_as_they_move() {
    let s = QuotaScheduler::builder()
        .quota(MODEL, Quota::per_minute().requests(100).tokens(100_000))
        .build()
        .unwrap();
    let budget = Budget::new("run", BudgetLimits::calls(10));
    let registry = SchedulerMetrics::new(&s).budget(&budget).registry();
    let server = serve("127.0.0.1:0".parse().unwrap(), registry)
        .await
        .unwrap();
    let url = format!("http://{}/metrics", server.local_addr());
    agent_runtime::tls::install_crypto_provider();
    let scrape = || async {
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };

    let before = scrape().await;
    assert!(!before.contains("turnstile_calls_total{key="), "{before}");
    assert_eq!(
        sample(
            &before,
            r#"turnstile_budget_remaining{budget="run",dimension="calls"}"#
        ),
        10.0
    );

    let m = model(3, 1);
    calls(&s, &m, 4, &budget).await;
    let after = scrape().await;
    let key = format!(r#"key="{MODEL}""#);
    assert_eq!(
        sample(&after, &format!("turnstile_calls_total{{{key}}}")),
        4.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"turnstile_calls_finished_total{{{key},outcome="succeeded"}}"#)
        ),
        3.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"turnstile_calls_finished_total{{{key},outcome="failed"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(&after, &format!("turnstile_prompt_tokens_total{{{key}}}")),
        3_000.0
    );
    assert_eq!(
        sample(&after, &format!("turnstile_calls_in_flight{{{key}}}")),
        0.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"turnstile_limit_per_minute{{{key},dimension="requests"}}"#)
        ),
        100.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"turnstile_rate_limited_total{{{key},kind="tokens"}}"#)
        ),
        0.0
    );
    // Every attempt's wait is in the histogram; with the key idle none waited over 1 ms.
    assert_eq!(
        sample(
            &after,
            &format!("turnstile_admission_wait_seconds_count{{{key}}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"turnstile_admission_wait_seconds_bucket{{{key},le="0.001"}}"#)
        ),
        4.0
    );
    // 3 × (1,000 prompt × $0.15 + 500 completion × $0.60) per million, by the built-in prices.
    let cost = sample(&after, "turnstile_cost_dollars_total");
    assert!((cost - 3.0 * 0.00045).abs() < 1e-9, "{cost}");
    assert_eq!(
        sample(
            &after,
            r#"turnstile_budget_used{budget="run",dimension="calls"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &after,
            r#"turnstile_budget_remaining{budget="run",dimension="calls"}"#
        ),
        6.0
    );

    // Anything but /metrics is not served.
    let other = reqwest::get(format!("http://{}/", server.local_addr()))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    drop(Arc::new(server));
}

#[tokio::test]
async fn the_grafana_dashboard_charts_only_metrics_the_exposition_has() {
    use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};

    let s = QuotaScheduler::builder()
        .quota(MODEL, Quota::per_minute().requests(100).tokens(100_000))
        .build()
        .unwrap();
    calls(&s, &model(1, 0), 1, &Budget::unlimited()).await;
    // Nothing listens on port 1: the backend exists (its metrics are exposed) but never answers.
    let redis = RedisQuotaState::connect("redis://127.0.0.1:1", RedisQuotaConfig::default())
        .await
        .unwrap();
    let text = SchedulerMetrics::new(&s)
        .budget(&Budget::new("run", BudgetLimits::calls(5)))
        .redis(&redis)
        .encode();
    let dashboard = include_str!("../../docs/grafana-dashboard.json");
    let mut charted = 0;
    for (i, _) in dashboard.match_indices("turnstile_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name == "turnstile_" || name.starts_with("turnstile_scheduler") {
            continue; // the dashboard's uid and title
        }
        charted += 1;
        // A family is exposed once declared, samples or not (no limit learned yet, say);
        // `_bucket`, `_count` and `_sum` series belong to their histogram's family.
        let exposed = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .any(|family| name.starts_with(family));
        assert!(
            exposed,
            "the dashboard charts {name}, which /metrics does not expose"
        );
    }
    assert!(charted >= 20, "{charted}");
}
