//! The scheduler in Prometheus text format, and a small `/metrics` endpoint (feature
//! `prometheus`).
//!
//! [`SchedulerMetrics`] is a `prometheus-client` [`Collector`]: on every scrape it reads the
//! scheduler's [`snapshot`](QuotaScheduler::snapshot) (and the budgets and Redis backends it was
//! given), so nothing is counted twice and an idle process does no work. Register it in your own
//! [`Registry`], or let [`serve`] expose it:
//!
//! ```
//! use agent_runtime::prometheus::SchedulerMetrics;
//! use agent_runtime::{Budget, BudgetLimits, QuotaScheduler};
//!
//! let scheduler = QuotaScheduler::new();
//! let budget = Budget::new("run", BudgetLimits::calls(100));
//! let metrics = SchedulerMetrics::new(&scheduler).budget(&budget);
//! let text = metrics.encode();
//! assert!(text.contains("turnstile_budget_remaining{budget=\"run\",dimension=\"calls\"} 100"));
//! ```
//!
//! Every metric and its labels are listed in `docs/observability.md`; `docs/grafana-dashboard.json`
//! charts them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use agent_core::Budget;
use agent_core::budget::nanos_to_usd;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::QuotaScheduler;
use crate::scheduler::{CircuitState, KeyStats, Rate};

/// Reads a scheduler (and optionally budgets and Redis backends) into Prometheus metrics on each
/// scrape. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerMetrics {
    scheduler: QuotaScheduler,
    budgets: Vec<Budget>,
    #[cfg(feature = "redis")]
    redis: Vec<crate::scheduler::redis_state::RedisQuotaState>,
}

impl fmt::Debug for SchedulerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerMetrics")
            .field("budgets", &self.budgets.len())
            .finish_non_exhaustive()
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;
type NoExemplar = Option<&'static Exemplar<NoLabelSet, f64>>;

impl SchedulerMetrics {
    /// Metrics of `scheduler`'s keys and conversations.
    pub fn new(scheduler: &QuotaScheduler) -> Self {
        Self {
            scheduler: scheduler.clone(),
            budgets: Vec::new(),
            #[cfg(feature = "redis")]
            redis: Vec::new(),
        }
    }

    /// Also reports `budget`'s use and what it has left (`budget` label: its name).
    #[must_use]
    pub fn budget(mut self, budget: &Budget) -> Self {
        self.budgets.push(budget.clone());
        self
    }

    /// Also reports a Redis backend's failure-policy mode and counters (`endpoint` label).
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn redis(mut self, state: &crate::scheduler::redis_state::RedisQuotaState) -> Self {
        self.redis.push(state.clone());
        self
    }

    /// A registry holding these metrics, for [`serve`] or your own exposition.
    pub fn registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }

    /// The metrics now, in Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        encode_text(&self.clone().registry())
    }
}

/// A registry in Prometheus text format (version 0.0.4).
pub fn encode_text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; a collector's error leaves what was written.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// One metric family: its descriptor, then one sample per label set.
fn family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        sample_value(&mut sample, kind, value)?;
    }
    Ok(())
}

fn sample_value(sample: &mut MetricEncoder<'_>, kind: MetricType, value: f64) -> fmt::Result {
    match kind {
        MetricType::Counter => sample.encode_counter(&value, None as NoExemplar),
        _ => sample.encode_gauge(&value),
    }
}

fn key_counters(
    encoder: &mut DescriptorEncoder<'_>,
    keys: &[(&str, &KeyStats)],
    name: &str,
    help: &str,
    read: impl Fn(&KeyStats) -> u64,
) -> fmt::Result {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        keys.iter()
            .map(|(k, s)| (vec![("key", *k)], read(s) as f64)),
    )
}

fn rate_samples<'a>(
    keys: &[(&'a str, &'a KeyStats)],
    read: impl Fn(&KeyStats) -> [Option<f64>; 2],
) -> Vec<(Labels<'a>, f64)> {
    let mut out = Vec::new();
    for (k, s) in keys {
        for (dimension, v) in ["requests", "tokens"].into_iter().zip(read(s)) {
            if let Some(v) = v {
                out.push((vec![("key", *k), ("dimension", dimension)], v));
            }
        }
    }
    out
}

fn per_minute(rate: Option<Rate>) -> Option<f64> {
    rate.map(|r| r.limit as f64 * 60.0 / r.period.as_secs_f64().max(f64::MIN_POSITIVE))
}

impl Collector for SchedulerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.scheduler.snapshot();
        let keys: Vec<(&str, &KeyStats)> =
            snapshot.keys.iter().map(|(k, s)| (k.as_str(), s)).collect();
        let e = &mut encoder;
        key_counters(
            e,
            &keys,
            "turnstile_calls",
            "Calls submitted to admission.",
            |s| s.calls,
        )?;
        family(
            e,
            "turnstile_calls_finished",
            "Submitted calls that ended, by outcome.",
            MetricType::Counter,
            keys.iter().flat_map(|(k, s)| {
                [
                    (
                        vec![("key", *k), ("outcome", "succeeded")],
                        s.succeeded as f64,
                    ),
                    (vec![("key", *k), ("outcome", "failed")], s.failed as f64),
                ]
            }),
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_attempts",
            "Provider attempts (calls plus retries).",
            |s| s.attempts,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_retries",
            "Retries after 429s and transient failures.",
            |s| s.retries,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_transient_errors",
            "Transient provider failures (5xx, timeouts, cut connections).",
            |s| s.transient_errors,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_exceeds_quota",
            "Calls refused because they exceed a bucket's capacity.",
            |s| s.exceeds_quota,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_circuit_rejections",
            "Calls refused by an open circuit.",
            |s| s.circuit_rejections,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_backend_errors",
            "Errors of the shared quota backend.",
            |s| s.backend_errors,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_prompt_tokens",
            "Prompt tokens the provider reported.",
            |s| s.prompt_tokens,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_completion_tokens",
            "Completion tokens the provider reported.",
            |s| s.completion_tokens,
        )?;
        key_counters(
            e,
            &keys,
            "turnstile_reserved_tokens",
            "Tokens reserved at admission.",
            |s| s.tokens_reserved,
        )?;
        family(
            e,
            "turnstile_rate_limited",
            "HTTP 429 answers, by the limit they were about.",
            MetricType::Counter,
            keys.iter().flat_map(|(k, s)| {
                let r = s.rate_limited;
                [
                    (vec![("key", *k), ("kind", "requests")], r.requests as f64),
                    (vec![("key", *k), ("kind", "tokens")], r.tokens as f64),
                    (vec![("key", *k), ("kind", "unknown")], r.unknown as f64),
                ]
            }),
        )?;
        family(
            e,
            "turnstile_calls_in_flight",
            "Calls admitted and not yet finished.",
            MetricType::Gauge,
            keys.iter()
                .map(|(k, s)| (vec![("key", *k)], f64::from(s.in_flight))),
        )?;
        family(
            e,
            "turnstile_calls_queued",
            "Calls waiting for admission.",
            MetricType::Gauge,
            keys.iter()
                .map(|(k, s)| (vec![("key", *k)], s.queued as f64)),
        )?;
        family(
            e,
            "turnstile_limit_per_minute",
            "Limits in force (configured, tightened or learned), per minute.",
            MetricType::Gauge,
            rate_samples(&keys, |s| {
                [per_minute(s.limits.requests), per_minute(s.limits.tokens)]
            }),
        )?;
        family(
            e,
            "turnstile_learned_limit",
            "Limits the provider's x-ratelimit-limit-* headers reported.",
            MetricType::Gauge,
            rate_samples(&keys, |s| {
                [
                    s.learned.requests.map(|v| v as f64),
                    s.learned.tokens.map(|v| v as f64),
                ]
            }),
        )?;
        family(
            e,
            "turnstile_available",
            "Requests and tokens available now in the key's buckets.",
            MetricType::Gauge,
            rate_samples(&keys, |s| {
                [
                    s.available_requests.map(|v| v as f64),
                    s.available_tokens.map(|v| v as f64),
                ]
            }),
        )?;
        family(
            e,
            "turnstile_paused_seconds",
            "Time left of a pause after a 429.",
            MetricType::Gauge,
            keys.iter().map(|(k, s)| {
                (
                    vec![("key", *k)],
                    s.paused_for.map_or(0.0, |d| d.as_secs_f64()),
                )
            }),
        )?;
        family(
            e,
            "turnstile_circuit_open",
            "The circuit breaker: 0 closed, 0.5 half-open, 1 open.",
            MetricType::Gauge,
            keys.iter().map(|(k, s)| {
                let v = match s.circuit {
                    Some(CircuitState::Open { .. }) => 1.0,
                    Some(CircuitState::HalfOpen) => 0.5,
                    _ => 0.0,
                };
                (vec![("key", *k)], v)
            }),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "turnstile_admission_wait_seconds",
                "How long attempts queued before admission.",
                None,
                MetricType::Histogram,
            )?;
            for (k, s) in &keys {
                let labels: Labels<'_> = vec![("key", *k)];
                // The encoder takes each bucket's own count and accumulates them itself.
                let mut below = 0;
                let buckets: Vec<(f64, u64)> = s
                    .wait_buckets
                    .iter()
                    .map(|(bound, n)| (bound.as_secs_f64(), *n))
                    .chain([(f64::INFINITY, s.wait.count)])
                    .map(|(bound, n)| {
                        let own = n.saturating_sub(below);
                        below = below.max(n);
                        (bound, own)
                    })
                    .collect();
                metric.encode_family(&labels)?.encode_histogram(
                    s.wait.total.as_secs_f64(),
                    s.wait.count,
                    &buckets,
                    None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                )?;
            }
        }
        let cost: u64 = snapshot
            .conversations
            .values()
            .fold(0u64, |sum, c| sum.saturating_add(c.cost_nanos));
        family(
            e,
            "turnstile_cost_dollars",
            "What the scheduler's calls cost, priced by the budgets' price tables.",
            MetricType::Counter,
            [(Labels::new(), nanos_to_usd(cost))],
        )?;
        self.encode_budgets(e)?;
        #[cfg(feature = "redis")]
        self.encode_redis(e)?;
        Ok(())
    }
}

impl SchedulerMetrics {
    fn encode_budgets(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if self.budgets.is_empty() {
            return Ok(());
        }
        let mut used = Vec::new();
        let mut remaining = Vec::new();
        for b in &self.budgets {
            let u = b.used();
            let limits = b.limits();
            used.push((
                vec![("budget", b.name()), ("dimension", "calls")],
                u.calls as f64,
            ));
            used.push((
                vec![("budget", b.name()), ("dimension", "tokens")],
                u.tokens as f64,
            ));
            used.push((
                vec![("budget", b.name()), ("dimension", "dollars")],
                u.cost_usd,
            ));
            if limits.max_calls.is_some() {
                remaining.push((
                    vec![("budget", b.name()), ("dimension", "calls")],
                    b.remaining_calls() as f64,
                ));
            }
            if limits.max_tokens.is_some() {
                remaining.push((
                    vec![("budget", b.name()), ("dimension", "tokens")],
                    b.remaining_tokens() as f64,
                ));
            }
            if let Some(max) = limits.max_cost_usd {
                remaining.push((
                    vec![("budget", b.name()), ("dimension", "dollars")],
                    (max - u.cost_usd).max(0.0),
                ));
            }
        }
        family(
            e,
            "turnstile_budget_used",
            "What a budget has spent (settled plus reserved).",
            MetricType::Gauge,
            used,
        )?;
        family(
            e,
            "turnstile_budget_remaining",
            "What a budget has left, for each capped dimension.",
            MetricType::Gauge,
            remaining,
        )
    }

    #[cfg(feature = "redis")]
    fn encode_redis(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::scheduler::redis_state::RedisMode;
        if self.redis.is_empty() {
            return Ok(());
        }
        let all: Vec<_> = self
            .redis
            .iter()
            .map(|r| (r.endpoint(), r.metrics()))
            .collect();
        family(
            e,
            "turnstile_redis_mode",
            "The Redis failure policy's state: 1 for the current mode.",
            MetricType::Gauge,
            all.iter().flat_map(|(endpoint, m)| {
                [
                    ("shared", RedisMode::Shared),
                    ("unavailable", RedisMode::Unavailable),
                    ("local_share", RedisMode::LocalShare),
                ]
                .map(|(name, mode)| {
                    (
                        vec![("endpoint", *endpoint), ("mode", name)],
                        f64::from(u8::from(m.mode == mode)),
                    )
                })
            }),
        )?;
        let counter =
            |e: &mut DescriptorEncoder<'_>,
             name: &str,
             help: &str,
             read: fn(&crate::scheduler::redis_state::RedisQuotaMetrics) -> u64| {
                family(
                    e,
                    name,
                    help,
                    MetricType::Counter,
                    all.iter()
                        .map(|(endpoint, m)| (vec![("endpoint", *endpoint)], read(m) as f64)),
                )
            };
        counter(
            e,
            "turnstile_redis_commands",
            "Script invocations sent to Redis.",
            |m| m.commands,
        )?;
        counter(
            e,
            "turnstile_redis_errors",
            "Redis commands that failed or timed out.",
            |m| m.redis_errors,
        )?;
        counter(
            e,
            "turnstile_redis_mode_switches",
            "Switches between Redis modes.",
            |m| m.mode_switches,
        )?;
        counter(
            e,
            "turnstile_redis_local_admissions",
            "Admissions granted by the local share while Redis failed (fail-open).",
            |m| m.local_admissions,
        )?;
        counter(
            e,
            "turnstile_redis_refused_admissions",
            "Admissions refused because Redis failed (fail-closed).",
            |m| m.refused_admissions,
        )
    }
}

/// A running `/metrics` endpoint; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `registry` at `GET /metrics` on `addr` (Prometheus text format) until the returned
/// handle is dropped.
///
/// # Errors
/// The address cannot be bound (in use, not local, no permission).
pub async fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    encode_text(&registry),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(MetricsServer { addr, task })
}
