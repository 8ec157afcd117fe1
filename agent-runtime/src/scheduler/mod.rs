//! The quota scheduler: the one pipeline every model call passes through.
//!
//! `budget → quota admission → provider → reconcile`, with exactly one retry loop around the
//! provider stage. `attempt` runs one call through the stages, a method each; each stage's
//! machinery has its module:
//!
//! - budget: [`agent_core::Budget`] — reserved before queueing, so a spent budget never waits;
//! - [`quota`] — what a key allows; `limiter` — how each limiter kind counts (continuous
//!   bucket, fixed window, sliding log), one module per kind;
//! - `admission` — the wait for a turn and for quota; `queue` — the order of the waiting calls,
//!   one module per [`QueuePolicy`]; [`state`] — where bucket state lives
//!   (in memory, or a shared backend behind [`QuotaState`]);
//! - provider — [`ChatModel::complete`] or, for [`QuotaScheduler::call_stream`],
//!   [`ChatModel::stream`] (`stream`: the [`ModelStream`] that reconciles when it ends), called
//!   only in `attempt`, within the attempt's [`Deadlines`] (`deadline`);
//! - `reconcile` — quota and budget settled to the outcome; `feedback` — limits learned from
//!   headers and 429 pauses; [`retry`] — backoff, retry budget and circuit breaker; [`metrics`] —
//!   the [`SchedulerSnapshot`].
//!
//! See `docs/quota.md` for the semantics and the reasons behind them.

mod admission;
mod attempt;
mod deadline;
mod feedback;
mod inference;
mod limiter;
pub mod metrics;
mod queue;
pub mod quota;
mod reconcile;
pub mod retry;
pub mod state;
mod stream;

#[cfg(feature = "redis")]
pub mod redis_state;

pub use deadline::Deadlines;
pub use metrics::{
    ConversationStats, KeyStats, LearnedLimits, RateLimitCounts, SchedulerSnapshot, WAIT_BUCKETS,
    WaitStats,
};
pub use queue::QueuePolicy;
pub use quota::{Cost, Dimension, Limiter, Limits, Quota, QuotaConfigError, Rate, WindowStart};
pub use retry::{CircuitState, RetryPolicy, WhenOpen};
pub use state::{Acquire, InMemoryState, Lease, QuotaState, Settlement, StateError};
pub use stream::ModelStream;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, Charge, CharsPerToken, ChatModel, ChatRequest, Completion,
    ModelError, RateLimitKind, TokenEstimator, Usage,
};
use futures::future::Either;
use rand::rngs::SmallRng;
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::ResponseCache;
use admission::{Backend, Key, Refusal, Ticket};
use attempt::CallAttempts;
use metrics::{CallRecord, Conversations};
use queue::Demand;

/// Receives the life-cycle of one model call (the chats turn these into events).
pub trait CallObserver: Send + Sync {
    /// The call entered the admission queue.
    fn queued(&self, _key: &str) {}
    /// The call was admitted after waiting `wait`.
    fn admitted(&self, _key: &str, _wait: Duration) {}
    /// The call finished (successfully or not) after `attempts` provider attempts.
    ///
    /// Prefer [`call_finished`](Self::call_finished), which also says which model answered and
    /// what the call cost; the scheduler calls that one, whose default forwards here.
    fn finished(&self, _key: &str, _result: Result<&Completion, &CallError>, _attempts: u32) {}

    /// The call finished: `info` says where it was charged and what it cost (priced once, by the
    /// scheduler, with the budget's prices for the model's id — not by the quota key, which may be
    /// any label). The default calls [`finished`](Self::finished).
    fn call_finished(&self, info: &CallInfo<'_>, result: Result<&Completion, &CallError>) {
        self.finished(info.key, result, info.attempts);
    }

    /// A streamed call ([`QuotaScheduler::call_stream`]) delivered `text` on quota key `key`.
    /// Called from the stream's reader as each delta passes, so keep it quick.
    fn delta(&self, _key: &str, _text: &str) {}
}

/// What the scheduler knows about a finished call, for [`CallObserver::call_finished`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CallInfo<'a> {
    /// The quota key the call was admitted on.
    pub key: &'a str,
    /// The model's id ([`ChatModel::id`]): what the budget's price table is keyed by.
    pub model: &'a str,
    /// Provider attempts made.
    pub attempts: u32,
    /// What the budget was charged, in nanodollars: the reported usage priced for `model`, the
    /// priced estimate when the provider reported none, 0 for attempts that failed.
    pub cost_nanos: u64,
}

/// A quota key looked up once (see [`QuotaScheduler::key_handle`]): a chat's contexts keep one
/// so their calls skip the scheduler's key map — a read lock and a reference count that every
/// worker thread would otherwise touch on every call.
#[derive(Clone)]
pub(crate) struct KeyHandle(Arc<Key>);

impl KeyHandle {
    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyHandle").field(&self.name()).finish()
    }
}

/// One model call, as submitted to [`QuotaScheduler::call`].
#[non_exhaustive]
pub struct ModelCall<'a> {
    /// The provider.
    pub model: &'a dyn ChatModel,
    /// The request.
    pub request: ChatRequest,
    /// Why the call is made.
    pub kind: CallKind,
    /// The conversation it is charged to (its place in the admission queue, unless a tenant is
    /// set with [`with_tenant`](Self::with_tenant)).
    pub conversation: &'a str,
    /// The agent making it.
    pub agent: &'a str,
    /// The budget charged.
    pub budget: &'a Budget,
    /// Higher runs first among waiting calls (default 0).
    pub priority: u8,
    /// Cancels the call while queued or in flight.
    pub cancel: Option<&'a CancellationToken>,
    /// Sees the call's life-cycle.
    pub observer: Option<&'a dyn CallObserver>,
    /// The quota key, when not the model's id (any label the user picks).
    pub quota_key: Option<&'a str>,
    /// The response cache for this call, over the scheduler's (see [`crate::cache`]).
    pub cache: Option<&'a ResponseCache>,
    /// Sees the call's life-cycle like `observer`, and is the observer a
    /// [`ModelStream`] keeps: a stream reports its deltas and its end after
    /// [`QuotaScheduler::call_stream`] has returned, so it needs one it can own.
    pub shared_observer: Option<Arc<dyn CallObserver>>,
    /// Deadlines of this call's attempts, overriding the key's (see [`Deadlines`]).
    pub deadlines: Option<Deadlines>,
    /// The tenant whose share of the key the call takes in the admission queue, instead of its
    /// conversation's, and the tenant's weight (see [`with_tenant`](Self::with_tenant)).
    pub tenant: Option<(&'a str, NonZeroU32)>,
}

impl fmt::Debug for ModelCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelCall")
            .field("model", &self.model.id())
            .field("kind", &self.kind)
            .field("conversation", &self.conversation)
            .field("agent", &self.agent)
            .field("priority", &self.priority)
            .field("quota_key", &self.quota_key)
            .field("deadlines", &self.deadlines)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl<'a> ModelCall<'a> {
    /// A call with default priority, no cancellation and no observer.
    pub fn new(
        model: &'a dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
        conversation: &'a str,
        agent: &'a str,
        budget: &'a Budget,
    ) -> Self {
        Self {
            model,
            request,
            kind,
            conversation,
            agent,
            budget,
            priority: 0,
            cancel: None,
            observer: None,
            quota_key: None,
            cache: None,
            shared_observer: None,
            deadlines: None,
            tenant: None,
        }
    }

    /// Answers the call through `cache` instead of the scheduler's (a cache in
    /// [`CacheMode::Off`](crate::cache::CacheMode::Off) bypasses caching for it).
    #[must_use]
    pub fn with_cache(mut self, cache: &'a ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Queues the call as tenant `label` with `weight`: every call with the same label shares one
    /// place in the key's queue, whatever its conversation. Under
    /// [`QueuePolicy::TokenFair`] a waiting tenant gets a share of the key's token rate
    /// proportional to its weight (a tenant of weight 2 gets twice the share of one of weight 1);
    /// the other policies ignore the weight. Give all calls of a tenant the same weight.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use agent_core::{Budget, CallKind, ChatRequest, Message, ScriptedModel};
    /// use agent_runtime::scheduler::ModelCall;
    ///
    /// let model = ScriptedModel::new("m");
    /// let budget = Budget::unlimited();
    /// let request = ChatRequest::new(vec![Message::user("hello")]);
    /// let weight = NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN);
    /// let call = ModelCall::new(&model, request, CallKind::Reply, "chat-1", "bot", &budget)
    ///     .with_tenant("team-a", weight);
    /// assert_eq!(call.tenant, Some(("team-a", weight)));
    /// ```
    #[must_use]
    pub fn with_tenant(mut self, label: &'a str, weight: NonZeroU32) -> Self {
        self.tenant = Some((label, weight));
        self
    }

    /// Charges the call to quota key `key` instead of the model's id.
    #[must_use]
    pub fn with_quota_key(mut self, key: &'a str) -> Self {
        self.quota_key = Some(key);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the cancellation token.
    #[must_use]
    pub fn with_cancel(mut self, cancel: &'a CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Sets the observer.
    #[must_use]
    pub fn with_observer(mut self, observer: &'a dyn CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Sets an observer the call may keep: the one a [`ModelStream`] reports its deltas and
    /// its end to. Use it instead of [`with_observer`](Self::with_observer) for streams.
    #[must_use]
    pub fn with_shared_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.shared_observer = Some(observer);
        self
    }

    /// Sets the deadlines of this call's attempts, overriding the key's and the scheduler's.
    /// Zero durations are not refused here (a call has no build step): an attempt with a zero
    /// deadline times out at once and the call fails after its retries.
    #[must_use]
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = Some(deadlines);
        self
    }
}

/// The scheduler handle. Cheap to clone; clones share all state.
///
/// ```
/// use std::time::Duration;
/// use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, Message, ScriptedModel};
/// use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let scheduler = QuotaScheduler::builder()
///     .quota("test/model", Quota::per_minute().requests(60).tokens(10_000))
///     .build()
///     .unwrap();
/// let model = ScriptedModel::new("test/model").text("hello");
/// let budget = Budget::new("run", BudgetLimits::calls(10));
/// let request = ChatRequest::new(vec![Message::user("hi")]).with_max_completion_tokens(16);
/// let call = ModelCall::new(&model, request, CallKind::Reply, "chat-1", "assistant", &budget);
/// let completion = scheduler.call(call).await.unwrap();
/// assert_eq!(completion.message.text(), Some("hello"));
/// assert_eq!(budget.used().calls, 1);
/// assert_eq!(scheduler.snapshot().keys["test/model"].calls, 1);
/// # });
/// ```
#[derive(Clone)]
pub struct QuotaScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    estimator: Arc<dyn TokenEstimator>,
    quotas: HashMap<String, Quota>,
    default_quota: Quota,
    keys: RwLock<HashMap<Arc<str>, Arc<Key>, FxBuildHasher>>,
    retry: RetryPolicy,
    rng: Mutex<SmallRng>,
    backend: Backend,
    conversations: Conversations,
    max_admission_wait: Duration,
    deadlines: Deadlines,
    key_deadlines: HashMap<String, Deadlines>,
    cache: Option<ResponseCache>,
}

impl fmt::Debug for QuotaScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaScheduler")
            .field("quotas", &self.inner.quotas)
            .field("default_quota", &self.inner.default_quota)
            .field("retry", &self.inner.retry)
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Default for QuotaScheduler {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`QuotaScheduler`]; every setting is validated by [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct QuotaSchedulerBuilder {
    quotas: Vec<(String, Quota)>,
    default_quota: Quota,
    estimator: Arc<dyn TokenEstimator>,
    retry: RetryPolicy,
    state: Option<Arc<dyn QuotaState>>,
    lease_ttl: Duration,
    poll: Duration,
    max_tracked_conversations: usize,
    max_admission_wait: Duration,
    deadlines: Deadlines,
    key_deadlines: Vec<(String, Deadlines)>,
    cache: Option<ResponseCache>,
}

/// Conversations tracked one by one in snapshots by default (about 600 bytes each).
pub const DEFAULT_MAX_TRACKED_CONVERSATIONS: usize = 10_000;

/// How long a call may wait for admission by default before it fails as rate limited.
pub const DEFAULT_MAX_ADMISSION_WAIT: Duration = Duration::from_secs(15 * 60);

impl Default for QuotaSchedulerBuilder {
    fn default() -> Self {
        Self {
            quotas: Vec::new(),
            default_quota: Quota::unlimited(),
            estimator: Arc::new(CharsPerToken::default()),
            retry: RetryPolicy::default(),
            state: None,
            lease_ttl: Duration::from_secs(600),
            poll: Duration::from_millis(50),
            max_tracked_conversations: DEFAULT_MAX_TRACKED_CONVERSATIONS,
            max_admission_wait: DEFAULT_MAX_ADMISSION_WAIT,
            deadlines: Deadlines::DEFAULT,
            key_deadlines: Vec::new(),
            cache: None,
        }
    }
}

impl QuotaSchedulerBuilder {
    /// Sets the quota of `key` (a model id such as `"openai/gpt-4o-mini"`, or a label passed
    /// with [`ModelCall::with_quota_key`]).
    pub fn quota(mut self, key: impl Into<String>, quota: Quota) -> Self {
        self.quotas.push((key.into(), quota));
        self
    }

    /// Sets the quota of keys not configured (default: unlimited, learning from headers).
    pub fn default_quota(mut self, quota: Quota) -> Self {
        self.default_quota = quota;
        self
    }

    /// Sets the token estimator used for admission and budgets.
    pub fn estimator(mut self, estimator: impl TokenEstimator + 'static) -> Self {
        self.estimator = Arc::new(estimator);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Keeps bucket state in a shared backend (e.g. Redis) instead of this process's memory.
    pub fn state(mut self, state: Arc<dyn QuotaState>) -> Self {
        self.state = Some(state);
        self
    }

    /// How long a shared backend keeps an unsettled in-flight lease (default 10 min).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often a waiting head re-asks a shared backend when it cannot say when (default 50 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// How many conversations snapshots track one by one (default 10,000; later ones are summed
    /// under `"(other)"`; 0 turns per-conversation stats off).
    pub fn max_tracked_conversations(mut self, max: usize) -> Self {
        self.max_tracked_conversations = max;
        self
    }

    /// The longest a call waits for admission (default 15 min), summed over its attempts. A call
    /// that would wait longer — a daily cap, a long provider pause, an outage that keeps its
    /// circuit open — fails at once with an error saying when to retry, instead of hanging.
    pub fn max_admission_wait(mut self, wait: Duration) -> Self {
        self.max_admission_wait = wait;
        self
    }

    /// Answers every call through `cache` unless the call, its chat or its agent sets another
    /// (see [`crate::cache`]): a hit spends no quota and no budget.
    pub fn cache(mut self, cache: ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Sets the deadlines of every provider attempt (default [`Deadlines::DEFAULT`]: 10 min per
    /// attempt, 2 min idle between stream events, 5 s behind a key's first call).
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Sets the deadlines of the attempts on quota key `key` (a provider's model id, or a label),
    /// overriding [`deadlines`](Self::deadlines); a call's own
    /// [`ModelCall::with_deadlines`] overrides both.
    pub fn key_deadlines(mut self, key: impl Into<String>, deadlines: Deadlines) -> Self {
        self.key_deadlines.push((key.into(), deadlines));
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<QuotaScheduler, QuotaConfigError> {
        self.deadlines.validate()?;
        for (_, deadlines) in &self.key_deadlines {
            deadlines.validate()?;
        }
        self.default_quota.validate_for("(default)")?;
        for (key, quota) in &self.quotas {
            quota.validate_for(key)?;
        }
        self.retry.validate()?;
        if self.state.is_some() {
            if self.poll.is_zero() {
                return Err(QuotaConfigError::ZeroPollInterval);
            }
            if self.lease_ttl.is_zero() {
                return Err(QuotaConfigError::ZeroLeaseTtl);
            }
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> QuotaScheduler {
        let quotas = self.quotas.into_iter().collect();
        let backend = match self.state {
            None => Backend::Local,
            Some(state) => Backend::Shared {
                state,
                lease_ttl: self.lease_ttl,
                poll: self.poll,
            },
        };
        QuotaScheduler {
            inner: Arc::new(Inner {
                estimator: self.estimator,
                quotas,
                default_quota: self.default_quota,
                keys: RwLock::default(),
                rng: Mutex::new(self.retry.rng()),
                retry: self.retry,
                backend,
                conversations: Conversations::new(self.max_tracked_conversations),
                max_admission_wait: self.max_admission_wait,
                deadlines: self.deadlines,
                key_deadlines: self.key_deadlines.into_iter().collect(),
                cache: self.cache,
            }),
        }
    }
}

impl Inner {
    fn key(&self, name: &str) -> Arc<Key> {
        // Poisoning cannot leave the map half-updated (an insert either happened or not).
        if let Some(k) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return k.clone();
        }
        let quota = self.quotas.get(name).unwrap_or(&self.default_quota).clone();
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(Key::new(name, quota, &self.retry)))
            .clone()
    }

    /// Records a finished call in its conversation, on its span and in its log line, and tells
    /// its observer.
    fn finish_call(
        &self,
        key: &Key,
        caller: Caller<'_>,
        record: &mut CallRecord,
        observer: Option<&dyn CallObserver>,
        result: Result<&Completion, &CallError>,
    ) {
        record.failed = result.is_err();
        if record.failed && record.submitted {
            key.lock().stats.failed += 1;
        }
        self.conversations.record(caller.conversation, record);
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("turnstile.quota.wait_seconds", record.wait.as_secs_f64());
            // As i64: OpenTelemetry has no unsigned integers (the bridge would send a string).
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            span.record("turnstile.attempts", int(record.attempts));
            span.record(
                "turnstile.cost_usd",
                agent_core::budget::nanos_to_usd(record.cost_nanos),
            );
            match result {
                Ok(c) => {
                    if let Some(u) = c.usage {
                        span.record("gen_ai.usage.input_tokens", int(u.prompt_tokens));
                        span.record("gen_ai.usage.output_tokens", int(u.completion_tokens));
                    }
                    span.record(
                        "gen_ai.response.finish_reasons",
                        tracing::field::debug(&c.finish_reason),
                    );
                }
                Err(e) => {
                    span.record("error.type", tracing::field::display(error_type(e)));
                }
            }
        }
        // The one line per model call that `RUST_LOG=info` shows (docs/observability.md).
        tracing::info!(
            key = &*key.name,
            agent = caller.agent,
            kind = ?caller.kind,
            wait_ms = u64::try_from(record.wait.as_millis()).unwrap_or(u64::MAX),
            prompt_tokens = record.prompt_tokens,
            completion_tokens = record.completion_tokens,
            cost_usd = agent_core::budget::nanos_to_usd(record.cost_nanos),
            attempts = record.attempts,
            ok = !record.failed,
            cached = result.is_ok_and(|c| c.cached),
            "model call"
        );
        if let Some(o) = observer {
            let info = CallInfo {
                key: &key.name,
                model: caller.model,
                attempts: u32::try_from(record.attempts).unwrap_or(u32::MAX),
                cost_nanos: record.cost_nanos,
            };
            o.call_finished(&info, result);
        }
    }

    /// The deadlines of a call on `key`: its own, else the key's, else the scheduler's.
    fn deadlines(&self, key: &str, call: Option<Deadlines>) -> Deadlines {
        call.unwrap_or_else(|| {
            // Most schedulers configure none per key: skip the hashing.
            if self.key_deadlines.is_empty() {
                return self.deadlines;
            }
            self.key_deadlines
                .get(key)
                .copied()
                .unwrap_or(self.deadlines)
        })
    }

    fn backoff(&self, retry: u32) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        self.retry.backoff_for(retry, &mut rng)
    }

    fn refusal(&self, key: &Key, refusal: Refusal) -> CallError {
        match refusal {
            Refusal::Exceeds {
                dimension,
                needed,
                capacity,
            } => CallError::ExceedsQuota {
                key: key.name.to_string(),
                // `Limits::exceeded_by` only names buckets, which all map.
                dimension: dimension
                    .quota_dimension()
                    .unwrap_or(agent_core::QuotaDimension::Tokens),
                needed,
                capacity,
            },
            Refusal::CircuitOpen(retry_after) => CallError::CircuitOpen {
                key: key.name.to_string(),
                retry_after,
            },
            Refusal::TooLong { dimension, wait } => CallError::Model(ModelError::RateLimited {
                kind: match dimension {
                    Dimension::Requests | Dimension::RequestsPerDay => RateLimitKind::Requests,
                    Dimension::Tokens | Dimension::TokensPerDay => RateLimitKind::Tokens,
                    _ => RateLimitKind::Unknown,
                },
                retry_after: Some(wait),
                reading: None,
                message: format!(
                    "local quota '{}' ({dimension}) cannot admit the call within the scheduler's max_admission_wait of {:?}; retry later or raise the limit",
                    key.name, self.max_admission_wait
                ),
            }),
            Refusal::BackendUnavailable { error, wait } => {
                CallError::Model(ModelError::Transient {
                    status: None,
                    retry_after: None,
                    message: format!(
                        "quota '{}' not admitted: its shared state backend kept failing for {wait:?} ({error}); admission fails closed",
                        key.name
                    ),
                })
            }
            Refusal::Cancelled => CallError::Cancelled,
        }
    }
}

impl QuotaScheduler {
    /// A scheduler with no quotas configured: every key is unlimited (learning limits from
    /// provider headers), default retry policy, in-memory state.
    pub fn new() -> Self {
        // The defaults are valid by construction.
        QuotaSchedulerBuilder::default().assemble()
    }

    /// A builder.
    pub fn builder() -> QuotaSchedulerBuilder {
        QuotaSchedulerBuilder::default()
    }

    /// The estimator used for admission.
    pub fn estimator(&self) -> &dyn TokenEstimator {
        &*self.inner.estimator
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The quota configured for `key` (the default quota when none is).
    pub fn quota(&self, key: &str) -> &Quota {
        self.inner
            .quotas
            .get(key)
            .unwrap_or(&self.inner.default_quota)
    }

    /// The response cache every call uses unless it sets its own.
    pub fn cache(&self) -> Option<&ResponseCache> {
        self.inner.cache.as_ref()
    }

    /// Counters per key and per conversation.
    pub fn snapshot(&self) -> SchedulerSnapshot {
        let keys: Vec<Arc<Key>> = self
            .inner
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let keys = keys
            .iter()
            .map(|key| {
                let mut inner = key.lock();
                let inner = &mut *inner;
                let mut stats = inner.stats.stats();
                let limits = inner.limits;
                let [requests, tokens] = inner.buckets.available(now, &limits);
                stats.queued = inner.queue.len();
                stats.limits = limits;
                stats.learned = inner.learned;
                stats.available_requests = requests;
                stats.available_tokens = tokens;
                stats.paused_for = inner.buckets.paused_for(now);
                stats.circuit = Some(inner.breaker.state(now));
                (key.name.to_string(), stats)
            })
            .collect();
        SchedulerSnapshot {
            keys,
            conversations: self.inner.conversations.snapshot(),
        }
    }

    /// Runs one model call through the pipeline: budget → quota admission → provider →
    /// reconcile, retrying inside (the only retry layer).
    ///
    /// Errors: [`CallError::BudgetExhausted`] before anything is queued when the budget (or an
    /// ancestor's) cannot cover the call; [`CallError::ExceedsQuota`] at once when the call can
    /// never fit a bucket; [`CallError::CircuitOpen`] when the key's breaker stays open beyond the
    /// call's admission wait (or at once with [`WhenOpen::FailFast`]);
    /// [`CallError::Model`] for provider errors that are never retried (quota exhausted, request
    /// too large, invalid request) and for waits beyond `max_admission_wait`;
    /// [`CallError::RetriesExhausted`] when attempts or the retry budget run out;
    /// [`CallError::Cancelled`] when the call's token fires.
    pub fn call<'a>(
        &'a self,
        call: ModelCall<'a>,
    ) -> impl Future<Output = Result<Completion, CallError>> + Send + 'a {
        let key = self
            .inner
            .key(call.quota_key.unwrap_or_else(|| call.model.id()));
        self.dispatch(call, key)
    }

    /// The key `name`, looked up once for a caller that makes many calls on it.
    pub(crate) fn key_handle(&self, name: &str) -> KeyHandle {
        KeyHandle(self.inner.key(name))
    }

    /// [`call`](Self::call) on a key looked up before; `key` must be the call's key.
    pub(crate) fn call_on<'a>(
        &'a self,
        call: ModelCall<'a>,
        key: &'a KeyHandle,
    ) -> impl Future<Output = Result<Completion, CallError>> + Send + 'a {
        self.dispatch(call, &key.0)
    }

    fn dispatch<'a, K: std::borrow::Borrow<Arc<Key>> + Send + 'a>(
        &'a self,
        call: ModelCall<'a>,
        key: K,
    ) -> impl Future<Output = Result<Completion, CallError>> + Send + 'a {
        // Not an `async fn`: the span happens here, and the returned future is the pipeline
        // itself rather than one more state machine around it.
        let span = admission_span(&call, key.borrow());
        traced(span, self.run(call, key))
    }

    async fn run<K: std::borrow::Borrow<Arc<Key>>>(
        &self,
        call: ModelCall<'_>,
        key: K,
    ) -> Result<Completion, CallError> {
        let key = key.borrow();
        let call = self.prepare(call, key);
        let mut record = CallRecord::default();
        let result = call.attempts(&self.inner, key, &mut record).run().await;
        self.inner.finish_call(
            key,
            call.caller(),
            &mut record,
            call.observer(),
            result.as_ref(),
        );
        result
    }

    /// Unpacks a call for the attempt loop: its estimate (prompt, quota cost, budget charge)
    /// and its deadlines on `key`.
    fn prepare<'c>(&self, call: ModelCall<'c>, key: &Key) -> Prepared<'c> {
        let ModelCall {
            model,
            request,
            kind,
            conversation,
            agent,
            budget,
            priority,
            cancel,
            observer,
            cache,
            shared_observer,
            deadlines,
            tenant,
            ..
        } = call;
        let prompt = self.inner.estimator.prompt_tokens(&request);
        let completion_cap = u64::from(
            request
                .max_completion_tokens
                .unwrap_or(key.quota.default_max_completion_tokens),
        );
        let cost = Cost {
            requests: 1,
            tokens: prompt.saturating_add(completion_cap),
        };
        let charge = Charge {
            calls: 1,
            tokens: cost.tokens,
            cost_nanos: budget.cost_nanos(model.id(), Usage::new(prompt, completion_cap)),
        };
        Prepared {
            deadlines: self.inner.deadlines(&key.name, deadlines),
            model,
            request,
            kind,
            conversation,
            agent,
            budget,
            priority,
            cancel,
            observer,
            shared_observer,
            cache,
            tenant,
            prompt,
            demand: Demand {
                prompt,
                completion: completion_cap,
            },
            cost,
            charge,
        }
    }
}

/// The span a call's pipeline runs in: one per model call, quota wait included, named and
/// attributed by OpenTelemetry's GenAI semantic conventions (docs/observability.md);
/// [`Inner::finish_call`] records the outcome on it.
fn admission_span(call: &ModelCall<'_>, key: &Key) -> tracing::Span {
    let model = call.model.id();
    tracing::debug_span!(
        "model_call",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = model.split_once('/').map_or("unknown", |(p, _)| p),
        gen_ai.request.model = model,
        gen_ai.request.max_tokens = call.request.max_completion_tokens,
        gen_ai.agent.name = call.agent,
        gen_ai.conversation.id = call.conversation,
        turnstile.call.kind = ?call.kind,
        turnstile.quota.key = &*key.name,
        turnstile.quota.wait_seconds = tracing::field::Empty,
        turnstile.attempts = tracing::field::Empty,
        turnstile.cost_usd = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// `pipeline` in `span`, or alone when the span is disabled: a span nobody records still costs a
/// `log` check on every poll and on drop (tracing's `log` feature is on in the dependency graph).
fn traced<F: Future>(
    span: tracing::Span,
    pipeline: F,
) -> Either<F, tracing::instrument::Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(pipeline)
    } else {
        Either::Right(pipeline.instrument(span))
    }
}

/// Who made a call, for its record, its log line and its observer.
#[derive(Debug, Clone, Copy)]
struct Caller<'x> {
    /// The model's id.
    model: &'x str,
    conversation: &'x str,
    agent: &'x str,
    kind: CallKind,
}

/// A call unpacked for the attempt loop (what [`QuotaScheduler::call`] and
/// [`QuotaScheduler::call_stream`] share).
struct Prepared<'c> {
    model: &'c dyn ChatModel,
    request: ChatRequest,
    kind: CallKind,
    conversation: &'c str,
    agent: &'c str,
    budget: &'c Budget,
    priority: u8,
    cancel: Option<&'c CancellationToken>,
    observer: Option<&'c dyn CallObserver>,
    shared_observer: Option<Arc<dyn CallObserver>>,
    /// The call's own response cache (over the scheduler's).
    cache: Option<&'c ResponseCache>,
    tenant: Option<(&'c str, NonZeroU32)>,
    deadlines: Deadlines,
    /// Estimated prompt tokens.
    prompt: u64,
    /// What the queue charges (the estimate).
    demand: Demand,
    /// Quota taken at admission.
    cost: Cost,
    /// Budget reserved per attempt.
    charge: Charge,
}

impl<'c> Prepared<'c> {
    /// The observer of queueing and admission: the borrowed one, else the shared one.
    fn observer(&self) -> Option<&dyn CallObserver> {
        self.observer.or(self.shared_observer.as_deref())
    }

    /// Who makes the call.
    fn caller(&self) -> Caller<'c> {
        Caller {
            model: self.model.id(),
            conversation: self.conversation,
            agent: self.agent,
            kind: self.kind,
        }
    }

    /// Whose share the call takes in the queue: its tenant label, or else its conversation.
    fn client(&self) -> &'c str {
        self.tenant.map_or(self.conversation, |(label, _)| label)
    }

    /// The attempt loop's state for this call on `key`, recording into `record`.
    fn attempts<'a, 's>(
        &'a self,
        scheduler: &'s Inner,
        key: &'s Arc<Key>,
        record: &'a mut CallRecord,
    ) -> CallAttempts<'s, 'a>
    where
        'c: 'a,
        's: 'a,
    {
        CallAttempts {
            scheduler,
            model: self.model,
            request: &self.request,
            key,
            budget: self.budget,
            charge: self.charge,
            ticket: Ticket {
                cost: self.cost,
                demand: self.demand,
                client: self.client(),
                weight: self.tenant.map_or(NonZeroU32::MIN, |(_, weight)| weight),
                priority: self.priority,
                retry: false,
                cancel: self.cancel,
            },
            observer: self.observer(),
            record,
            attempt: 0,
            deadlines: self.deadlines,
            expired: false,
            limited: Default::default(),
            cache: self.cache.or(scheduler.cache.as_ref()),
        }
    }
}

/// The `error.type` of a failed call: a short, stable name for its kind.
fn error_type(error: &CallError) -> &'static str {
    match error {
        CallError::Model(ModelError::RateLimited { .. })
        | CallError::RateLimitWaitExceeded { .. } => "rate_limited",
        CallError::Model(ModelError::Transient { .. }) => "transient",
        CallError::Model(ModelError::InvalidRequest { .. }) => "invalid_request",
        CallError::Model(ModelError::MalformedResponse { .. }) => "malformed_response",
        CallError::Model(ModelError::Cancelled) | CallError::Cancelled => "cancelled",
        CallError::Model(_) => "provider_error",
        CallError::BudgetExhausted(_) => "budget_exhausted",
        CallError::ExceedsQuota { .. } => "exceeds_quota",
        _ => "other",
    }
}
