//! Every limiter kind and dialect on tokio's paused clock: the simulation admits exactly what its
//! semantics allow, refuses the rest for exactly the documented wait, and words each answer
//! exactly as the provider it plays (headers and bodies byte for byte).

use std::time::Duration;

use agent_core::{ChatRequest, Message, ModelError, TokenEstimator};
use serde_json::{Value, json};

use super::dialect::Headers;
use super::*;

const SIXTY: Duration = Duration::from_secs(60);

fn simulation(config: SimConfig) -> Simulation {
    Simulation::new(config.with_latency(Duration::ZERO, Duration::ZERO)).unwrap()
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn names(headers: &Headers) -> Vec<&'static str> {
    let mut names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names
}

/// Admits requests until the first refusal; returns how many were admitted and the refusal.
fn admit_until_refused(sim: &Simulation) -> (u64, Box<Rejection>) {
    let mut admitted = 0;
    loop {
        match sim.admit(&hi()) {
            Ok(_) => admitted += 1,
            Err(rejection) => return (admitted, rejection),
        }
        assert!(admitted < 10_000, "never refused");
    }
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

#[tokio::test(start_paused = true)]
async fn fixed_windows_admit_the_limit_then_wait_for_the_boundary_at_any_phase() {
    for phase_s in [0, 1, 30, 59] {
        let phase = Duration::from_secs(phase_s);
        let to_boundary = SIXTY - phase;
        let sim = simulation(
            SimConfig::default()
                .with_rpm(5)
                .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::Phase(phase))),
        );
        let (admitted, refusal) = admit_until_refused(&sim);
        assert_eq!(admitted, 5, "phase {phase_s}");
        assert_eq!(refusal.status, 429);
        // OpenAI's dialect: the wait and the reset are the time to the boundary.
        assert_eq!(refusal.reading.retry_after, Some(to_boundary));
        assert_eq!(refusal.reading.reset_requests, Some(to_boundary));
        assert_eq!(
            header(&refusal.headers, "x-ratelimit-remaining-requests"),
            Some("0")
        );
        // Nothing refills before the boundary…
        advance(to_boundary - Duration::from_millis(1)).await;
        let (admitted, refusal) = admit_until_refused(&sim);
        assert_eq!(
            (admitted, refusal.reading.retry_after),
            (0, Some(Duration::from_millis(1)))
        );
        // …and the whole limit comes back at it.
        advance(Duration::from_millis(1)).await;
        let (admitted, refusal) = admit_until_refused(&sim);
        assert_eq!(admitted, 5, "phase {phase_s}");
        assert_eq!(refusal.reading.retry_after, Some(SIXTY));
    }
}

#[tokio::test(start_paused = true)]
async fn clock_aligned_windows_end_on_the_system_clock_boundary() {
    let sim = simulation(
        SimConfig::default()
            .with_rpm(1)
            .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::Clock)),
    );
    sim.admit(&hi()).unwrap();
    let refusal = sim.admit(&hi()).unwrap_err();
    let wait = refusal.reading.retry_after.unwrap();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // The boundary is the next whole UTC minute: equal within a second, on a circle of 60 s
    // (the simulation read the clock a moment before the test did).
    let boundary_in_ms = 60_000 - i128::try_from(since_epoch.as_millis() % 60_000).unwrap();
    let wait_ms = i128::try_from(wait.as_millis()).unwrap();
    let off = (wait_ms - boundary_in_ms).rem_euclid(60_000);
    assert!(
        off <= 1_000 || off >= 59_000,
        "{wait:?} vs {boundary_in_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn first_request_windows_open_with_the_first_request() {
    let sim = simulation(
        SimConfig::default()
            .with_rpm(2)
            .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::FirstRequest)),
    );
    advance(Duration::from_secs(25)).await;
    sim.admit(&hi()).unwrap();
    advance(Duration::from_secs(40)).await;
    sim.admit(&hi()).unwrap();
    let refusal = sim.admit(&hi()).unwrap_err();
    // The window opened at 25 s, 40 s ago: 20 s left.
    assert_eq!(refusal.reading.retry_after, Some(Duration::from_secs(20)));
    advance(Duration::from_secs(20)).await;
    let (admitted, _) = admit_until_refused(&sim);
    assert_eq!(admitted, 2);
}

#[tokio::test(start_paused = true)]
async fn fixed_windows_without_reset_or_retry_after_send_neither() {
    let sim = simulation(
        SimConfig::default()
            .with_rpm(2)
            .with_limiter(LimiterKind::FixedWindow(WindowAnchor::Phase(
                Duration::ZERO,
            )))
            .with_reset_headers(false)
            .with_retry_after_headers(false),
    );
    let ok = sim.admit(&hi()).unwrap();
    assert_eq!(
        names(&ok.headers),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests"
        ]
    );
    assert_eq!(
        header(&ok.headers, "x-ratelimit-remaining-requests"),
        Some("1")
    );
    drop(ok);
    let (_, refusal) = admit_until_refused(&sim);
    assert_eq!(
        names(&refusal.headers),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests"
        ]
    );
    let body: Value = serde_json::from_slice(&refusal.body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Limit 2, Used 2, Requested 1. Visit"),
        "{message}"
    );
    assert!(!message.contains("try again"), "{message}");
    // No hint anywhere: the client is told it is rate limited, not when to come back.
    match refusal.into_error() {
        ModelError::RateLimited { retry_after, .. } => assert_eq!(retry_after, None),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn litellm_admits_limit_minus_one_and_answers_like_the_proxy() {
    let sim = simulation(SimConfig::default().with_rpm(60).litellm().with_limiter(
        LimiterKind::FixedWindow(WindowAnchor::Phase(Duration::from_secs(12))),
    ));
    let mut last = None;
    for _ in 0..58 {
        drop(sim.admit(&hi()).unwrap());
    }
    if let Ok(admission) = sim.admit(&hi()) {
        last = Some(admission);
    }
    let last = last.expect("the 59th request is admitted");
    // A 200 carries the limit and the remaining count, never a reset time.
    assert_eq!(
        names(&last.headers),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests"
        ]
    );
    assert_eq!(
        header(&last.headers, "x-ratelimit-limit-requests"),
        Some("60")
    );
    // LiteLLM reports limit − current: one left, which the 60th request will not get.
    assert_eq!(
        header(&last.headers, "x-ratelimit-remaining-requests"),
        Some("1")
    );
    let refusal = sim.admit(&hi()).unwrap_err();
    assert_eq!(refusal.status, 429);
    assert_eq!(
        refusal.headers,
        vec![("llm_provider-retry-after", "60".to_owned())]
    );
    let body: Value = serde_json::from_slice(&refusal.body).unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "litellm.RateLimitError: No deployments available for selected model. \
                        Passed model=gpt-4o-mini. Deployments={'turnstile-sim-deployment': \
                        {'current_tpm': 0, 'tpm_limit': inf, 'current_rpm': 59, 'rpm_limit': 60}}\n\n\
                        LiteLLM: model group 'gpt-4o-mini' failed with the error above. \
                        No fallback was attempted.",
            "type": "throttling_error",
            "param": null,
            "code": "429",
        }})
    );
    assert!(refusal.reading.is_empty(), "{:?}", refusal.reading);
    // The constant "60" is not the time to the boundary: 48 s later the window is open again.
    advance(Duration::from_secs(48)).await;
    let (admitted, _) = admit_until_refused(&sim);
    assert_eq!(admitted, 59);
}

#[tokio::test(start_paused = true)]
async fn sliding_logs_free_each_admission_one_period_after_it() {
    let period = Duration::from_secs(10);
    let sim = simulation(
        SimConfig::default()
            .with_rpm(3)
            .with_period(period)
            .with_request_limiter(LimiterKind::SlidingLog),
    );
    for _ in 0..3 {
        drop(sim.admit(&hi()).unwrap());
        advance(Duration::from_secs(2)).await;
    }
    // Admissions at 0, 2 and 4 s; now 6 s. The first leaves at 10 s.
    let refusal = sim.admit(&hi()).unwrap_err();
    assert_eq!(refusal.reading.retry_after, Some(Duration::from_secs(4)));
    // The reset is when the newest (4 s) leaves: 14 s.
    assert_eq!(refusal.reading.reset_requests, Some(Duration::from_secs(8)));
    advance(Duration::from_secs(4)).await;
    let (admitted, refusal) = admit_until_refused(&sim);
    assert_eq!(admitted, 1);
    assert_eq!(refusal.reading.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn token_windows_count_the_reserved_cost() {
    let base = ChatRequest::new(vec![Message::user("x")]);
    let prompt = agent_core::CharsPerToken::default().prompt_tokens(&base);
    let request = base.with_max_completion_tokens(u32::try_from(100 - prompt).unwrap());
    for kind in [
        LimiterKind::FixedWindow(WindowAnchor::Phase(Duration::ZERO)),
        LimiterKind::SlidingLog,
    ] {
        let sim = simulation(SimConfig::default().with_tpm(250).with_token_limiter(kind));
        drop(sim.admit(&request).unwrap());
        drop(sim.admit(&request).unwrap());
        let refusal = sim.admit(&request).unwrap_err();
        assert_eq!(
            header(&refusal.headers, "x-ratelimit-remaining-tokens"),
            Some("50")
        );
        let body: Value = serde_json::from_slice(&refusal.body).unwrap();
        assert_eq!(body["error"]["type"], "tokens", "{kind:?}");
        assert_eq!(refusal.reading.retry_after, Some(SIXTY), "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn azure_counts_requests_per_ten_seconds_and_says_retry_after() {
    let sim = simulation(
        SimConfig::default()
            .with_rpm(2)
            .with_tpm(10_000)
            .with_request_period(Duration::from_secs(10))
            .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::Phase(
                Duration::from_millis(2500),
            )))
            .with_dialect(Dialect::Azure),
    );
    let ok = sim.admit(&hi()).unwrap();
    assert_eq!(
        names(&ok.headers),
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-remaining-tokens"
        ]
    );
    drop(ok);
    let (admitted, refusal) = admit_until_refused(&sim);
    assert_eq!(admitted, 1);
    assert_eq!(header(&refusal.headers, "retry-after-ms"), Some("7500"));
    assert_eq!(header(&refusal.headers, "retry-after"), Some("8"));
    assert!(header(&refusal.headers, "x-ratelimit-reset-requests").is_none());
    let body: Value = serde_json::from_slice(&refusal.body).unwrap();
    assert_eq!(body["error"]["code"], "429");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after 8 seconds."),
        "{message}"
    );
    advance(Duration::from_millis(7500)).await;
    assert_eq!(admit_until_refused(&sim).0, 2);
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_carry_rfc3339_resets_and_retry_after() {
    let sim = simulation(
        SimConfig::default()
            .with_rpm(1)
            .with_tpm(1000)
            .with_dialect(Dialect::Anthropic),
    );
    let ok = sim.admit(&hi()).unwrap();
    assert_eq!(
        names(&ok.headers),
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset"
        ]
    );
    let reset = header(&ok.headers, "anthropic-ratelimit-requests-reset").unwrap();
    let at = humantime::parse_rfc3339(reset).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
    // A full refill of one request per minute, rounded up to the second.
    assert!(
        ahead <= SIXTY && ahead >= Duration::from_secs(58),
        "{ahead:?}"
    );
    drop(ok);
    let refusal = sim.admit(&hi()).unwrap_err();
    assert_eq!(header(&refusal.headers, "retry-after"), Some("60"));
    let body: Value = serde_json::from_slice(&refusal.body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test(start_paused = true)]
async fn off_by_one_and_forced_charges_work_on_every_kind() {
    for kind in [
        LimiterKind::Bucket,
        LimiterKind::FixedWindow(WindowAnchor::Phase(Duration::ZERO)),
        LimiterKind::FixedWindow(WindowAnchor::FirstRequest),
        LimiterKind::SlidingLog,
    ] {
        let sim = simulation(
            SimConfig::default()
                .with_rpm(4)
                .with_request_limiter(kind)
                .with_off_by_one(true)
                .with_charge_rejected(true),
        );
        let (admitted, refusal) = admit_until_refused(&sim);
        assert_eq!(admitted, 3, "{kind:?}");
        // The forced charge of the refused request is counted.
        assert_eq!(sim.stats().rate_limited_requests, 1);
        assert!(refusal.reading.retry_after.is_some(), "{kind:?}");
    }
}

#[test]
fn a_phase_outside_its_window_is_refused_with_what_to_do() {
    let config = SimConfig::default()
        .with_request_period(Duration::from_secs(10))
        .with_request_limiter(LimiterKind::FixedWindow(WindowAnchor::Phase(
            Duration::from_secs(10),
        )));
    let error = config.validate().unwrap_err();
    assert!(matches!(error, SimConfigError::PhaseNotWithinPeriod { .. }));
    assert!(
        error.to_string().contains("use a phase in [0, period)"),
        "{error}"
    );
    let zero = SimConfig::default().with_request_period(Duration::ZERO);
    assert_eq!(zero.validate(), Err(SimConfigError::ZeroPeriod));
}
