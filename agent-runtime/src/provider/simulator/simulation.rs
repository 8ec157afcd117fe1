//! [`Simulation`]: the simulated provider's state — its buckets, its fault counters, its stats —
//! and the one admission decision both the in-process provider and the mock server use.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agent_core::{ChatRequest, RateLimitReading, TokenEstimator};
use serde::Serialize;
use tokio::time::Instant;

use super::dialect::{Headers, Level, Levels, ORGANIZATION, RATE_LIMIT_DOCS, Refusal};
use super::limiter::Limiter;
use super::reply::Reply;
use super::{SimConfig, SimConfigError};
use crate::provider::headers::{ApiErrorBody, classify, reading_from_headers};

/// A simulated provider: RPM/TPM limits counted the way the configured provider counts them
/// (OpenAI's continuous buckets by default; fixed or sliding windows), answered in its dialect,
/// with deterministic replies, latency, fault injection and statistics.
///
/// Cheap to clone (clones share state). The in-process
/// [`SimulatedProvider`](super::SimulatedProvider) and the mock HTTP server both wrap one, so the
/// two behave identically; time is `tokio::time`, so tests on a paused clock are exact.
///
/// ```
/// use agent_runtime::provider::{SimConfig, Simulation};
///
/// let sim = Simulation::new(SimConfig::default().with_rpm(60)).unwrap();
/// assert_eq!(sim.stats().requests, 0);
/// assert_eq!(sim.stats().rpm, Some(60));
/// ```
#[derive(Clone)]
pub struct Simulation {
    inner: Arc<Inner>,
}

struct Inner {
    config: SimConfig,
    state: Mutex<State>,
}

struct State {
    requests: Option<Limiter>,
    tokens: Option<Limiter>,
    arrivals: u64,
    in_flight: usize,
    /// Requests whose service time is in the stats.
    served: u64,
    /// Admissions within the last period, for the per-period maxima.
    window: VecDeque<(Instant, u64)>,
    window_tokens: u64,
    stats: SimStats,
}

/// What a [`Simulation`] has seen so far (the mock server serves it at `GET /stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests received, whatever their outcome.
    pub requests: u64,
    /// Requests admitted by the buckets (including ones a later fault failed).
    pub admitted: u64,
    /// 429s because the request bucket was empty.
    pub rate_limited_requests: u64,
    /// 429s because the token bucket was short.
    pub rate_limited_tokens: u64,
    /// 429s "Request too large" (cost above the token limit).
    pub too_large: u64,
    /// 429s `insufficient_quota`.
    pub quota_exhausted: u64,
    /// Injected 500s.
    pub server_errors: u64,
    /// 503s because every concurrency slot was in use.
    pub busy: u64,
    /// Injected hangs.
    pub hung: u64,
    /// Injected malformed bodies.
    pub malformed: u64,
    /// Injected dropped connections.
    pub dropped: u64,
    /// Tokens charged at admission (prompt estimate + requested completion tokens).
    pub tokens_admitted: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Completion tokens generated for admitted requests.
    pub completion_tokens: u64,
    /// Completion tokens refunded (with `refund_unused`).
    pub refunded_tokens: u64,
    /// Service time of admitted requests, summed, in microseconds: first-token latency plus
    /// per-token latency × completion tokens (injected hangs excluded). With the minimum and
    /// maximum below, this is what a makespan lower bound needs (`docs/benchmarks.md`).
    pub service_us: u64,
    /// Shortest service time of an admitted request, in microseconds (0 before any).
    pub min_service_us: u64,
    /// Longest service time of an admitted request, in microseconds.
    pub max_service_us: u64,
    /// Most requests admitted within any one period.
    pub max_requests_in_period: u64,
    /// Most tokens admitted within any one period.
    pub max_tokens_in_period: u64,
    /// Requests being answered now.
    pub in_flight: usize,
    /// Most requests answered at once.
    pub max_in_flight: usize,
    /// The request limit now in force.
    pub rpm: Option<u64>,
    /// The token limit now in force.
    pub tpm: Option<u64>,
    /// The period, in milliseconds.
    pub period_ms: u64,
}

/// How an admitted request will misbehave, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryFault {
    Hang,
    Malformed,
    Drop,
}

/// An admitted request: the reply to deliver and the headers to send with it. Dropping it ends
/// the request (frees its concurrency slot, refunds unused tokens when configured).
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) reply: Reply,
    /// The rate-limit headers of the response, in the configured dialect.
    #[cfg_attr(not(feature = "mock-server"), allow(dead_code))]
    pub(crate) headers: Headers,
    /// What a client parses from `headers`.
    pub(crate) reading: RateLimitReading,
    pub(crate) fault: Option<DeliveryFault>,
    /// Sent as `x-request-id` by the mock server.
    #[cfg_attr(not(feature = "mock-server"), allow(dead_code))]
    pub(crate) request_id: String,
    pub(crate) latency: Duration,
    pub(crate) per_token_latency: Duration,
    _slot: Slot,
}

impl Admission {
    /// Latency of the whole reply: first token plus every generated token.
    pub(crate) fn total_latency(&self) -> Duration {
        let tokens = u32::try_from(self.reply.completion_tokens()).unwrap_or(u32::MAX);
        self.latency
            .saturating_add(self.per_token_latency.saturating_mul(tokens))
    }
}

/// A refused request: the status, body and headers to answer with, in the configured dialect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub(crate) status: u16,
    /// The JSON body.
    pub(crate) body: Vec<u8>,
    /// The rate-limit headers.
    #[cfg_attr(not(feature = "mock-server"), allow(dead_code))]
    pub(crate) headers: Headers,
    /// What a client parses from `headers`.
    pub(crate) reading: RateLimitReading,
    pub(crate) request_id: String,
}

impl Rejection {
    /// The error a client gets from this response — by the same classification the HTTP
    /// provider applies to the mock's bytes.
    pub(crate) fn into_error(self: Box<Self>) -> agent_core::ModelError {
        let Rejection {
            status,
            body,
            reading,
            ..
        } = *self;
        classify(status, reading, &body)
    }
}

#[derive(Debug)]
struct Slot {
    inner: Arc<Inner>,
    refund: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        state.stats.in_flight = state.in_flight;
        if self.inner.config.refund_unused
            && self.refund > 0
            && let Some(bucket) = state.tokens.as_mut()
        {
            bucket.refill(Instant::now());
            bucket.give_back(self.refund);
            state.stats.refunded_tokens += self.refund;
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.stats();
        f.debug_struct("Simulation")
            .field("model", &self.inner.config.model)
            .field("rpm", &stats.rpm)
            .field("tpm", &stats.tpm)
            .field("period", &self.inner.config.period)
            .field("requests", &stats.requests)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A poisoned lock means another thread panicked mid-update; the counters are still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn every(n: Option<u64>, arrival: u64) -> bool {
    n.is_some_and(|n| n > 0 && arrival.is_multiple_of(n))
}

impl Default for Simulation {
    fn default() -> Self {
        Self::build(SimConfig::default())
    }
}

impl Simulation {
    /// A simulation of `config`, with buckets full (or empty with `start_empty`) as of now.
    pub fn new(config: SimConfig) -> Result<Self, SimConfigError> {
        config.validate()?;
        Ok(Self::build(config))
    }

    fn build(config: SimConfig) -> Self {
        let now = Instant::now();
        let limiter = |kind, limit: Option<u64>, period| {
            limit.map(|l| Limiter::new(kind, l, period, config.start_empty, now))
        };
        let stats = SimStats {
            rpm: config.rpm,
            tpm: config.tpm,
            period_ms: u64::try_from(config.period.as_millis()).unwrap_or(u64::MAX),
            ..SimStats::default()
        };
        let state = State {
            requests: limiter(config.request_limiter, config.rpm, config.requests_window()),
            tokens: limiter(config.token_limiter, config.tpm, config.period),
            arrivals: 0,
            in_flight: 0,
            served: 0,
            window: VecDeque::new(),
            window_tokens: 0,
            stats,
        };
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The configuration (limits as configured at start; see [`Simulation::stats`] for the ones
    /// in force).
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        lock(&self.inner.state).stats.clone()
    }

    /// Changes the limits at run time, as Azure's dynamic quota does; `None` leaves a limit as it
    /// is. What a limiter has counted stays (a bucket's tokens capped at the new capacity); a
    /// limit that did not exist starts with nothing counted.
    ///
    /// ```
    /// use agent_runtime::provider::{SimConfig, Simulation};
    ///
    /// let sim = Simulation::new(SimConfig::default().with_rpm(100)).unwrap();
    /// sim.set_limits(Some(50), None).unwrap();
    /// assert_eq!(sim.stats().rpm, Some(50));
    /// ```
    pub fn set_limits(&self, rpm: Option<u64>, tpm: Option<u64>) -> Result<(), SimConfigError> {
        if rpm == Some(0) {
            return Err(SimConfigError::ZeroLimit("requests"));
        }
        if tpm == Some(0) {
            return Err(SimConfigError::ZeroLimit("tokens"));
        }
        let now = Instant::now();
        let config = &self.inner.config;
        let mut state = lock(&self.inner.state);
        let update = |limiter: &mut Option<Limiter>, kind, limit: Option<u64>, period| {
            let Some(limit) = limit else { return };
            match limiter {
                Some(l) => {
                    l.refill(now);
                    l.set_capacity(limit);
                }
                None => *limiter = Some(Limiter::new(kind, limit, period, false, now)),
            }
        };
        let requests_window = config.requests_window();
        update(
            &mut state.requests,
            config.request_limiter,
            rpm,
            requests_window,
        );
        update(&mut state.tokens, config.token_limiter, tpm, config.period);
        state.stats.rpm = state.requests.as_ref().map(Limiter::capacity);
        state.stats.tpm = state.tokens.as_ref().map(Limiter::capacity);
        Ok(())
    }

    /// Decides one request on arrival: 503 when every slot is busy, 429 `insufficient_quota` once
    /// the quota fault is spent, 429 "Request too large", 429 on the request or token bucket,
    /// an injected 500 — or admission with the reply to deliver.
    pub(crate) fn admit(&self, request: &ChatRequest) -> Result<Admission, Box<Rejection>> {
        let config = &self.inner.config;
        let now = Instant::now();
        let mut guard = lock(&self.inner.state);
        let state = &mut *guard;
        state.arrivals += 1;
        state.stats.requests += 1;
        let arrival = state.arrivals;
        let request_id = format!("req_sim_{arrival:012}");
        for bucket in [&mut state.requests, &mut state.tokens]
            .into_iter()
            .flatten()
        {
            bucket.refill(now);
        }

        let answer = |status: u16, body: Vec<u8>, headers: Headers| {
            Err(Box::new(Rejection {
                status,
                body,
                reading: parse(&headers),
                headers,
                request_id: request_id.clone(),
            }))
        };
        let reject = |state: &mut State, status: u16, body: ApiErrorBody| {
            let headers = config.dialect.headers(config, &levels_of(state));
            answer(status, body.to_json(), headers)
        };

        if let Some(slots) = config.max_concurrency
            && state.in_flight >= slots
        {
            state.stats.busy += 1;
            let body = ApiErrorBody::new(
                format!("server busy: all {slots} slots are in use, please try again"),
                Some("server_error"),
                None,
            );
            return reject(state, 503, body);
        }

        if let Some(quota) = config.faults.insufficient_quota_after_tokens
            && state.stats.tokens_admitted >= quota
        {
            state.stats.quota_exhausted += 1;
            let body = ApiErrorBody::new(
                "You exceeded your current quota, please check your plan and billing details. \
                 For more information on this error, read the docs: \
                 https://platform.openai.com/docs/guides/error-codes/api-errors.",
                Some("insufficient_quota"),
                Some("insufficient_quota"),
            );
            return reject(state, 429, body);
        }

        let prompt_tokens = config.estimator.prompt_tokens(request);
        let max_completion = u64::from(
            request
                .max_completion_tokens
                .unwrap_or(config.default_max_tokens),
        );
        let cost = prompt_tokens.saturating_add(max_completion);

        if let Some(tokens) = state.tokens.as_ref().filter(|b| cost > b.capacity()) {
            let limit = tokens.capacity();
            state.stats.too_large += 1;
            if config.charge_rejected
                && let Some(r) = state.requests.as_mut()
            {
                r.take(1);
            }
            let body = ApiErrorBody::new(
                format!(
                    "Request too large for {} in organization {ORGANIZATION} on tokens per min \
                     (TPM): Limit {limit}, Requested {cost}. The input or output tokens must be \
                     reduced in order to run successfully. {RATE_LIMIT_DOCS}",
                    config.model
                ),
                Some("tokens"),
                Some("rate_limit_exceeded"),
            );
            return reject(state, 429, body);
        }

        // LiteLLM's off-by-one: a request fits only if one more would too.
        let request_need = if config.off_by_one { 2 } else { 1 };
        let requests_short = state
            .requests
            .as_ref()
            .is_some_and(|l| !l.has(request_need));
        let tokens_short = state.tokens.as_ref().is_some_and(|l| !l.has(cost));
        if requests_short || tokens_short {
            // Describe the limiter as it was when the request arrived, then charge it if asked.
            let levels = levels_of(state);
            let (level, requested) = if requests_short {
                state.stats.rate_limited_requests += 1;
                (levels.requests, 1)
            } else {
                state.stats.rate_limited_tokens += 1;
                (levels.tokens, cost)
            };
            if config.charge_rejected
                && let Some(r) = state.requests.as_mut()
            {
                r.take(1);
            }
            let wait = wait_for(state, request_need, cost);
            let refusal = Refusal {
                requests: requests_short,
                level: level.unwrap_or(Level {
                    limit: 0,
                    used: 0,
                    remaining: 0,
                    reset: Duration::ZERO,
                }),
                requested,
                wait,
            };
            let (body, headers) = config.dialect.rate_limited(config, &levels, &refusal);
            return answer(429, body, headers);
        }

        if let Some(r) = state.requests.as_mut() {
            r.take(1);
        }
        if let Some(t) = state.tokens.as_mut() {
            t.take(cost);
        }
        record_admission(state, now, cost, config.period);

        if every(config.faults.fail_every, arrival) {
            state.stats.server_errors += 1;
            let body = ApiErrorBody::new(
                "The server had an error while processing your request. Sorry about that!",
                Some("server_error"),
                None,
            );
            return reject(state, 500, body);
        }

        let reply = Reply::generate(config, request, prompt_tokens);
        let fault = if every(config.faults.hang_every, arrival) {
            state.stats.hung += 1;
            Some(DeliveryFault::Hang)
        } else if every(config.faults.malformed_every, arrival) {
            state.stats.malformed += 1;
            Some(DeliveryFault::Malformed)
        } else if every(config.faults.drop_every, arrival) {
            state.stats.dropped += 1;
            Some(DeliveryFault::Drop)
        } else {
            None
        };
        state.stats.prompt_tokens += prompt_tokens;
        state.stats.completion_tokens += reply.completion_tokens();
        if fault != Some(DeliveryFault::Hang) {
            record_service(state, config, reply.completion_tokens());
        }
        state.in_flight += 1;
        state.stats.in_flight = state.in_flight;
        state.stats.max_in_flight = state.stats.max_in_flight.max(state.in_flight);
        let headers = config.dialect.headers(config, &levels_of(state));
        drop(guard);

        let refund = max_completion.saturating_sub(reply.completion_tokens());
        Ok(Admission {
            reply,
            reading: parse(&headers),
            headers,
            fault,
            request_id,
            latency: config.latency,
            per_token_latency: config.per_token_latency,
            _slot: Slot {
                inner: self.inner.clone(),
                refund,
            },
        })
    }
}

fn record_service(state: &mut State, config: &SimConfig, completion_tokens: u64) {
    let tokens = u32::try_from(completion_tokens).unwrap_or(u32::MAX);
    let service = config.latency + config.per_token_latency.saturating_mul(tokens);
    let us = u64::try_from(service.as_micros()).unwrap_or(u64::MAX);
    let stats = &mut state.stats;
    stats.min_service_us = if state.served == 0 {
        us
    } else {
        stats.min_service_us.min(us)
    };
    stats.max_service_us = stats.max_service_us.max(us);
    stats.service_us = stats.service_us.saturating_add(us);
    state.served += 1;
}

/// The wait until both limiters could admit a request needing `requests` request units and
/// `cost` tokens.
fn wait_for(state: &State, requests: u64, cost: u64) -> Duration {
    let requests = state
        .requests
        .as_ref()
        .map_or(Duration::ZERO, |l| l.wait_for(requests));
    let tokens = state
        .tokens
        .as_ref()
        .map_or(Duration::ZERO, |l| l.wait_for(cost));
    requests.max(tokens)
}

fn levels_of(state: &State) -> Levels {
    let level = |limiter: &Limiter| Level {
        limit: limiter.capacity(),
        used: limiter.used(),
        remaining: limiter.available(),
        reset: limiter.time_to_full(),
    };
    Levels {
        requests: state.requests.as_ref().map(level),
        tokens: state.tokens.as_ref().map(level),
    }
}

/// What a client reads from `headers`: the HTTP provider's own parser, so the in-process provider
/// sees exactly what the mock server's clients see.
fn parse(headers: &Headers) -> RateLimitReading {
    reading_from_headers(|name| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    })
}

fn record_admission(state: &mut State, now: Instant, cost: u64, period: Duration) {
    state.stats.admitted += 1;
    state.stats.tokens_admitted += cost;
    while let Some(&(at, tokens)) = state.window.front() {
        if now.saturating_duration_since(at) < period {
            break;
        }
        state.window.pop_front();
        state.window_tokens -= tokens;
    }
    state.window.push_back((now, cost));
    state.window_tokens += cost;
    state.stats.max_requests_in_period = state
        .stats
        .max_requests_in_period
        .max(state.window.len() as u64);
    state.stats.max_tokens_in_period = state.stats.max_tokens_in_period.max(state.window_tokens);
}
