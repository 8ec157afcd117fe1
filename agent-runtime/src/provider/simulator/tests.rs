//! The simulator on tokio's paused clock: admission, 429s and their waits, exactly per the
//! bucket formula of rate-limits.md §1.1.3.

use std::time::Duration;

use agent_core::{
    ChatModel, ChatRequest, FinishReason, Message, ModelError, RateLimitKind, StreamEvent,
    TokenEstimator,
};
use futures::StreamExt;
use tokio::time::Instant;

use super::*;
use crate::provider::headers;

const SIXTY: Duration = Duration::from_secs(60);

fn instant(config: SimConfig) -> SimulatedProvider {
    SimulatedProvider::new(config.with_latency(Duration::ZERO, Duration::ZERO)).unwrap()
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

/// A request the simulator charges exactly `cost` tokens for (prompt estimate + max tokens).
fn costing(cost: u64) -> ChatRequest {
    let base = ChatRequest::new(vec![Message::user("x")]);
    let prompt = agent_core::CharsPerToken::default().prompt_tokens(&base);
    base.with_max_completion_tokens(u32::try_from(cost - prompt).unwrap())
}

fn rate_limited(result: Result<Completion, ModelError>) -> (RateLimitKind, Duration, String) {
    match result {
        Err(ModelError::RateLimited {
            kind,
            retry_after: Some(wait),
            message,
            reading,
        }) => {
            // The reading carries the same wait, for a scheduler that reads only readings.
            assert_eq!(reading.and_then(|r| r.retry_after), Some(wait));
            (kind, wait, message)
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn request_bucket_refuses_the_eleventh_request_for_exactly_six_seconds() {
    let model = instant(SimConfig::default().with_rpm(10));
    for _ in 0..10 {
        model.complete(hi()).await.unwrap();
    }
    let (kind, wait, message) = rate_limited(model.complete(hi()).await);
    assert_eq!(kind, RateLimitKind::Requests);
    // One request at 10 per 60 s refills in 6 s.
    assert_eq!(wait, Duration::from_secs(6));
    assert!(
        message.contains(
            "on requests per min (RPM): Limit 10, Used 10, Requested 1. Please try again in 6s."
        ),
        "{message}"
    );

    tokio::time::advance(wait - Duration::from_millis(1)).await;
    let (_, wait, _) = rate_limited(model.complete(hi()).await);
    assert_eq!(wait, Duration::from_millis(1));
    tokio::time::advance(wait).await;
    let ok = model.complete(hi()).await.unwrap();
    let reading = ok.rate_limits.unwrap();
    assert_eq!(reading.remaining_requests, Some(0));
    assert_eq!(reading.reset_requests, Some(SIXTY));
}

/// Every TPM sample of rate-limits.md §1.1.3, replayed: the message states `Limit L, Used U,
/// Requested Q` and a wait of `(U + Q − L) / (L / 60 s)` rounded up to the millisecond (OpenAI's
/// own value, within that millisecond).
#[tokio::test(start_paused = true)]
async fn token_bucket_waits_match_every_openai_sample() {
    let samples = [
        (30000, 29937, 385, 644),
        (10000, 8554, 3082, 9816),
        (200000, 162960, 42288, 1574),
        (200000, 158404, 48556, 2088),
        (30000, 14567, 24754, 18642),
        (30000, 28039, 3906, 3890),
        (30000, 18928, 11159, 174),
        (10000, 8782, 8172, 41724),
    ];
    for (limit, used, requested, openai_ms) in samples {
        let model = instant(SimConfig::default().with_tpm(limit));
        model.complete(costing(used)).await.unwrap();
        let (kind, wait, message) = rate_limited(model.complete(costing(requested)).await);
        assert_eq!(kind, RateLimitKind::Tokens);

        let deficit_ns = u128::from(used + requested - limit) * 60_000_000_000;
        let exact_ns = deficit_ns.div_ceil(u128::from(limit));
        let want = Duration::from_millis(u64::try_from(exact_ns.div_ceil(1_000_000)).unwrap());
        assert_eq!(wait, want, "L={limit} U={used} Q={requested}");
        assert!(wait.abs_diff(Duration::from_millis(openai_ms)) <= Duration::from_millis(1));
        let stated = format!(
            "Limit {limit}, Used {used}, Requested {requested}. Please try again in {}.",
            headers::format_go_duration(want)
        );
        assert!(message.contains(&stated), "{message}");

        // Waiting exactly that long is enough.
        tokio::time::advance(wait).await;
        model.complete(costing(requested)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn success_readings_match_the_community_headers() {
    // §1.1.3: 1 request of 5000 RPM resets in 12 ms; 24 tokens of 160000 TPM in 9 ms.
    let model = instant(SimConfig::default().with_rpm(5000).with_tpm(160_000));
    let reading = model
        .complete(costing(24))
        .await
        .unwrap()
        .rate_limits
        .unwrap();
    assert_eq!(reading.limit_requests, Some(5000));
    assert_eq!(reading.remaining_requests, Some(4999));
    assert_eq!(reading.reset_requests, Some(Duration::from_millis(12)));
    assert_eq!(reading.limit_tokens, Some(160_000));
    assert_eq!(reading.remaining_tokens, Some(159_976));
    assert_eq!(reading.reset_tokens, Some(Duration::from_millis(9)));
    assert_eq!(reading.retry_after, None);
}

#[tokio::test(start_paused = true)]
async fn start_empty_and_charge_rejected() {
    let empty = instant(SimConfig::default().with_rpm(10).with_start_empty(true));
    let (_, wait, _) = rate_limited(empty.complete(hi()).await);
    assert_eq!(wait, Duration::from_secs(6));

    let plain = instant(SimConfig::default().with_rpm(1));
    plain.complete(hi()).await.unwrap();
    assert_eq!(rate_limited(plain.complete(hi()).await).1, SIXTY);
    assert_eq!(rate_limited(plain.complete(hi()).await).1, SIXTY);

    // A rejected request still takes a request: resending pushes the wait out.
    let charged = instant(SimConfig::default().with_rpm(1).with_charge_rejected(true));
    charged.complete(hi()).await.unwrap();
    assert_eq!(rate_limited(charged.complete(hi()).await).1, 2 * SIXTY);
    assert_eq!(rate_limited(charged.complete(hi()).await).1, 2 * SIXTY);
}

#[tokio::test(start_paused = true)]
async fn refund_unused_returns_the_unused_reservation() {
    for refund in [false, true] {
        let model = instant(
            SimConfig::default()
                .with_tpm(1000)
                .with_reply_tokens(10)
                .with_refund_unused(refund),
        );
        // Costs 100: 8 prompt + 92 max completion, of which 10 are generated.
        model.complete(costing(100)).await.unwrap();
        let reading = model
            .complete(costing(100))
            .await
            .unwrap()
            .rate_limits
            .unwrap();
        let want = if refund { 1000 - 200 + 82 } else { 1000 - 200 };
        assert_eq!(reading.remaining_tokens, Some(want), "refund={refund}");
        assert_eq!(
            model.simulation().stats().refunded_tokens,
            if refund { 164 } else { 0 }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn oversized_requests_and_quota_exhaustion_are_permanent() {
    let model = instant(SimConfig::default().with_tpm(1000));
    let err = model.complete(costing(1001)).await.unwrap_err();
    assert!(matches!(err, ModelError::RequestTooLarge { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(model.simulation().stats().tokens_admitted, 0);

    let faults = Faults::default().with_insufficient_quota_after_tokens(100);
    let quota = instant(SimConfig::default().with_faults(faults));
    quota.complete(costing(100)).await.unwrap();
    let err = quota.complete(costing(10)).await.unwrap_err();
    assert!(matches!(err, ModelError::QuotaExhausted { .. }), "{err:?}");
    let stats = quota.simulation().stats();
    assert_eq!(
        (stats.requests, stats.admitted, stats.quota_exhausted),
        (2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn injected_server_errors_are_transient_and_charged() {
    let model = instant(
        SimConfig::default()
            .with_rpm(10)
            .with_faults(Faults::default().with_fail_every(2)),
    );
    model.complete(hi()).await.unwrap();
    let err = model.complete(hi()).await.unwrap_err();
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
    let third = model.complete(hi()).await.unwrap();
    assert_eq!(third.rate_limits.unwrap().remaining_requests, Some(7));
    assert_eq!(model.simulation().stats().server_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn hangs_time_out_and_broken_bodies_are_clear_errors() {
    let hang = instant(SimConfig::default().with_faults(Faults::default().with_hang_every(1)))
        .with_timeout(Duration::from_secs(5));
    let start = Instant::now();
    let err = hang.complete(hi()).await.unwrap_err();
    assert!(
        matches!(err, ModelError::Transient { status: None, .. }),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(hang.stream(hi()).await.is_err());

    let bad = instant(SimConfig::default().with_faults(Faults::default().with_malformed_every(1)));
    assert!(matches!(
        bad.complete(hi()).await,
        Err(ModelError::MalformedResponse { .. })
    ));
    let mut stream = bad.stream(hi()).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Err(ModelError::MalformedResponse { .. }))
    ));
    assert!(stream.next().await.is_none());

    let cut = instant(SimConfig::default().with_faults(Faults::default().with_drop_every(1)));
    assert!(matches!(
        cut.complete(hi()).await,
        Err(ModelError::Transient { .. })
    ));
    let events: Vec<_> = cut.stream(hi()).await.unwrap().collect().await;
    let (last, deltas) = events.split_last().unwrap();
    assert_eq!(deltas.len(), 12, "half of the 24 tokens arrive");
    assert!(
        deltas
            .iter()
            .all(|e| matches!(e, Ok(StreamEvent::TextDelta(_))))
    );
    match last {
        Err(ModelError::Transient { message, .. }) => assert!(message.contains(STREAM_CUT)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn streams_deliver_the_same_reply_with_latency_per_token() {
    let model = SimulatedProvider::new(
        SimConfig::default()
            .with_rpm(100)
            .with_reply_tokens(8)
            .with_latency(Duration::from_millis(200), Duration::from_millis(10)),
    )
    .unwrap();
    let start = Instant::now();
    let whole = model.complete(hi()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200 + 8 * 10));

    let start = Instant::now();
    let events: Vec<_> = model.stream(hi()).await.unwrap().collect().await;
    // Streamed, the same reply takes as long as whole.
    assert_eq!(start.elapsed(), Duration::from_millis(200 + 8 * 10));
    let mut text = String::new();
    let mut completed = None;
    for event in events {
        match event.unwrap() {
            StreamEvent::TextDelta(d) => text.push_str(&d),
            StreamEvent::Completed(c) => completed = Some(c),
            other => panic!("{other:?}"),
        }
    }
    let completed = completed.unwrap();
    assert_eq!(Some(text.as_str()), completed.message.text());
    assert_eq!(completed.message.text(), whole.message.text());
    assert_eq!(completed.usage, whole.usage);
    assert_eq!(completed.usage.unwrap().completion_tokens, 8);
    assert_eq!(completed.finish_reason, FinishReason::Stop);
    assert_eq!(completed.rate_limits.unwrap().remaining_requests, Some(98));
}

#[tokio::test(start_paused = true)]
async fn full_slots_answer_busy() {
    let model = SimulatedProvider::new(
        SimConfig::default()
            .with_max_concurrency(1)
            .with_latency(Duration::from_secs(1), Duration::ZERO),
    )
    .unwrap();
    let first = tokio::spawn({
        let model = model.clone();
        async move { model.complete(hi()).await }
    });
    tokio::task::yield_now().await;
    let err = model.complete(hi()).await.unwrap_err();
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
    first.await.unwrap().unwrap();
    model.complete(hi()).await.unwrap();
    let stats = model.simulation().stats();
    assert_eq!(
        (stats.busy, stats.max_in_flight, stats.in_flight),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn limits_can_drop_mid_run() {
    let model = instant(SimConfig::default().with_rpm(10));
    for _ in 0..8 {
        model.complete(hi()).await.unwrap();
    }
    model.simulation().set_limits(Some(1), None).unwrap();
    // Two requests were left; the new capacity holds one.
    let reading = model.complete(hi()).await.unwrap().rate_limits.unwrap();
    assert_eq!(reading.limit_requests, Some(1));
    assert_eq!(rate_limited(model.complete(hi()).await).1, SIXTY);
    assert!(model.simulation().set_limits(Some(0), None).is_err());
}

#[tokio::test(start_paused = true)]
async fn stats_track_per_period_maxima() {
    let model = instant(SimConfig::default());
    for _ in 0..3 {
        model.complete(costing(20)).await.unwrap();
    }
    tokio::time::advance(SIXTY).await;
    model.complete(costing(20)).await.unwrap();
    let stats = model.simulation().stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.max_requests_in_period, 3);
    assert_eq!(stats.max_tokens_in_period, 60);
    assert_eq!(stats.tokens_admitted, 80);
}

#[test]
fn invalid_configs_are_refused_at_construction() {
    assert!(SimulatedProvider::new(SimConfig::default().with_tpm(0)).is_err());
    assert_eq!(SimulatedProvider::default().id(), "sim/gpt-4o-mini");
}

#[tokio::test(start_paused = true)]
async fn service_times_sum_the_latency_model_of_every_admitted_reply() {
    // 10 ms to the first token, 1 ms per token; replies of 5 tokens unless cut shorter.
    let model = SimulatedProvider::new(
        SimConfig::default()
            .with_rpm(2)
            .with_reply_tokens(5)
            .with_latency(Duration::from_millis(10), Duration::from_millis(1)),
    )
    .unwrap();
    assert_eq!(model.simulation().stats().min_service_us, 0);
    model.complete(hi()).await.unwrap();
    model
        .complete(hi().with_max_completion_tokens(2))
        .await
        .unwrap();
    // The third is refused: no service time for it.
    assert!(model.complete(hi()).await.is_err());
    let stats = model.simulation().stats();
    assert_eq!(stats.max_service_us, 15_000);
    assert_eq!(stats.min_service_us, 12_000);
    assert_eq!(stats.service_us, 27_000);
}

#[tokio::test(start_paused = true)]
async fn extreme_configs_are_refused_or_run_exactly() {
    let refused = [
        (SimConfig::default().with_period(Duration::MAX), "period"),
        (
            SimConfig::default().with_latency(Duration::MAX, Duration::ZERO),
            "latency",
        ),
        (
            SimConfig::default().with_latency(Duration::ZERO, Duration::MAX),
            "per_token_latency",
        ),
        (
            SimConfig::default().with_reply_tokens(u32::MAX),
            "reply_tokens",
        ),
    ];
    for (config, field) in refused {
        match SimulatedProvider::new(config) {
            Err(e @ SimConfigError::TooLarge { field: f, .. }) => {
                assert_eq!(f, field);
                assert!(e.to_string().contains(field), "{e}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }

    // The largest limits over the longest period: admitted and reported exactly.
    let provider = instant(
        SimConfig::default()
            .with_period(SimConfig::MAX_PERIOD)
            .with_rpm(u64::MAX)
            .with_tpm(u64::MAX)
            .with_charge_rejected(true)
            .with_refund_unused(true),
    );
    let done = provider.complete(hi()).await.unwrap();
    let reading = done.rate_limits.unwrap();
    assert_eq!(reading.limit_requests, Some(u64::MAX));
    assert_eq!(reading.remaining_requests, Some(u64::MAX - 1));
    provider.simulation().set_limits(Some(1), Some(1)).unwrap();
    tokio::time::advance(SimConfig::MAX_PERIOD).await;
    let err = provider.complete(hi()).await.unwrap_err();
    assert!(matches!(err, ModelError::RequestTooLarge { .. }), "{err:?}");
    provider
        .simulation()
        .set_limits(Some(u64::MAX), Some(u64::MAX))
        .unwrap();
    // The rejected request took the one request there was; at u64::MAX a year it is back
    // within the millisecond OpenAI rounds to.
    let (kind, wait, _) = rate_limited(provider.complete(hi()).await);
    assert_eq!(
        (kind, wait),
        (RateLimitKind::Requests, Duration::from_millis(1))
    );
    tokio::time::advance(wait).await;
    provider.complete(hi()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn streams_carry_usage_only_when_configured_to() {
    let with = SimulatedProvider::new(SimConfig::default()).unwrap();
    let without = SimulatedProvider::new(SimConfig::default().with_stream_usage(false)).unwrap();
    let last = |events: Vec<Result<StreamEvent, ModelError>>| match events.into_iter().last() {
        Some(Ok(StreamEvent::Completed(c))) => c,
        other => panic!("{other:?}"),
    };
    let reported = last(with.stream(hi()).await.unwrap().collect().await);
    let silent = last(without.stream(hi()).await.unwrap().collect().await);
    assert_eq!(reported.usage.unwrap().completion_tokens, 24);
    assert_eq!((silent.usage, silent.message.usage), (None, None));
    assert_eq!(silent.message.text(), reported.message.text());
    // A whole completion always reports usage.
    assert!(without.complete(hi()).await.unwrap().usage.is_some());
}
