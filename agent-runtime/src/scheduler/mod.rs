//! The quota scheduler: the one pipeline every model call passes through.
//!
//! `budget → quota admission → provider → reconcile`, with exactly one retry loop around the
//! provider stage. Each stage has its module:
//!
//! - budget: [`agent_core::Budget`] — reserved before queueing, so a spent budget never waits;
//! - [`quota`] — what a key allows; `bucket` — the continuous-bucket arithmetic;
//! - `admission` — the fair queue per key and the wait; [`state`] — where bucket state lives
//!   (in memory, or a shared backend behind [`QuotaState`]);
//! - provider — [`ChatModel::complete`], called only here;
//! - `feedback` — limits learned from headers and 429 pauses; [`retry`] — backoff, retry budget
//!   and circuit breaker; [`metrics`] — the [`SchedulerSnapshot`].
//!
//! See `docs/quota.md` for the semantics and the reasons behind them.

mod admission;
mod bucket;
mod feedback;
pub mod metrics;
pub mod quota;
pub mod retry;
pub mod state;

#[cfg(feature = "redis")]
pub mod redis_state;

pub use metrics::{
    ConversationStats, KeyStats, LearnedLimits, RateLimitCounts, SchedulerSnapshot, WaitStats,
};
pub use quota::{Cost, Dimension, Limits, Quota, QuotaConfigError, Rate};
pub use retry::{CircuitState, RetryPolicy};
pub use state::{Acquire, InMemoryState, Lease, QuotaState, Settlement, StateError};

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, Charge, CharsPerToken, ChatModel, ChatRequest, Completion,
    ModelError, RateLimitKind, RateLimitReading, Reservation, TokenEstimator, Usage,
};
use futures::future::Either;
use rand::rngs::SmallRng;
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use admission::{Admitted, Backend, Key, Refusal, Ticket, cancelled};
use metrics::{CallRecord, Conversations};

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
    /// The conversation it is charged to (fair queueing is per conversation).
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
        }
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

    /// The longest a call waits for admission (default 15 min). A call that would wait longer —
    /// a daily cap, a long provider pause — fails at once with a rate-limit error saying when to
    /// retry, instead of hanging.
    pub fn max_admission_wait(mut self, wait: Duration) -> Self {
        self.max_admission_wait = wait;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<QuotaScheduler, QuotaConfigError> {
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
            }),
        }
    }
}

/// How an attempt that reached the provider ended, for the reconcile stage.
enum Outcome<'r> {
    Completed {
        usage: Option<Usage>,
        reading: Option<&'r RateLimitReading>,
    },
    RateLimited {
        kind: RateLimitKind,
        retry_after: Option<Duration>,
        reading: Option<&'r RateLimitReading>,
        /// The pause when neither the provider nor the buckets say one: this attempt's backoff.
        fallback: Duration,
    },
    Transient,
    Rejected,
}

/// A call holding quota at the provider. Dropped before [`finish`](Self::finish) (the caller's
/// future was dropped mid-call), it keeps everything charged (the provider may have done the
/// work) and frees the in-flight slot.
struct InFlight<'a> {
    scheduler: &'a Inner,
    key: &'a Arc<Key>,
    cost: Cost,
    admitted: Admitted,
    reservation: Option<Reservation>,
    done: bool,
}

impl InFlight<'_> {
    fn settlement(&self, actual_tokens: u64) -> Settlement {
        Settlement {
            actual_tokens,
            refund_unused: self.key.quota.refund_unused,
        }
    }

    /// Reconciles quota to the outcome, learns from the provider, updates the breaker and
    /// counters. Returns the reservation (to settle), the pause a 429 imposed, and what a shared
    /// backend still has to be told. Synchronous, so the local path's future stays small.
    fn finish(
        mut self,
        outcome: Outcome<'_>,
    ) -> (Option<Reservation>, Duration, Option<RemoteSettle>) {
        self.done = true;
        let actual = match &outcome {
            Outcome::Completed { usage, .. } => usage.map_or(self.cost.tokens, |u| u.total()),
            // The provider rejected the attempt before generating: no tokens were used.
            _ => 0,
        };
        let settlement = self.settlement(actual);
        let scheduler = self.scheduler;
        let mut pause = Duration::ZERO;
        let (limits, reading) = {
            let mut inner = self.key.lock();
            let inner = &mut *inner;
            // An unlimited key's success touches no bucket and no timer: spare the clock read.
            let timeless = inner.limits.is_unlimited()
                && matches!(outcome, Outcome::Completed { reading: None, .. });
            let now = if timeless {
                self.admitted.at
            } else {
                Instant::now()
            };
            inner.stats.in_flight = inner.stats.in_flight.saturating_sub(1);
            let reading = match &outcome {
                Outcome::Completed { reading, usage } => {
                    inner.stats.succeeded += 1;
                    if let Some(u) = usage {
                        inner.stats.prompt_tokens =
                            inner.stats.prompt_tokens.saturating_add(u.prompt_tokens);
                        inner.stats.completion_tokens = inner
                            .stats
                            .completion_tokens
                            .saturating_add(u.completion_tokens);
                    }
                    inner.breaker.success();
                    *reading
                }
                Outcome::RateLimited { kind, reading, .. } => {
                    inner.stats.rate_limited.add(*kind);
                    // The provider answered: it is reachable, just busy. The pause, not the
                    // breaker, handles a 429.
                    inner.breaker.success();
                    *reading
                }
                Outcome::Transient => {
                    inner.stats.transient_errors += 1;
                    inner.breaker.failure(now, &scheduler.retry);
                    None
                }
                Outcome::Rejected => {
                    inner.breaker.success();
                    None
                }
            };
            if self.admitted.probe && !matches!(outcome, Outcome::Transient) {
                inner.breaker.success();
            }
            let learned = reading.is_some_and(|r| {
                self.key.quota.learn_from_headers
                    && feedback::learn(&mut inner.learned, r, self.key.quota.period)
            });
            // The provider answered (with or without headers): the probe has taught what it can.
            let probed = inner.probing
                && matches!(
                    outcome,
                    Outcome::Completed { .. } | Outcome::RateLimited { .. }
                );
            if probed {
                inner.probing = false;
            }
            if learned || probed {
                inner.limits =
                    feedback::effective_limits(&self.key.quota, inner.learned, inner.probing);
            }
            let limits = inner.limits;
            if let Backend::Local = scheduler.backend {
                inner.buckets.settle(now, &limits, self.cost, settlement);
            }
            if let Some(r) = reading {
                match scheduler.backend {
                    Backend::Local => {
                        // The report is taken as of now, with no refill credited for the time
                        // since admission and no extra unit for header rounding: crediting them
                        // keeps the client ahead of a provider whose bucket started refilling
                        // later (the first request's network delay), which cost an occasional
                        // 429 with limits configured exactly (tests/tests/http_fanout.rs).
                        // Conservative by one response latency of refill.
                        inner.buckets.observe_since(
                            now,
                            &limits,
                            r,
                            Duration::ZERO,
                            state::Present::default(),
                        );
                    }
                    Backend::Shared { .. } => inner.buckets.observe(now, &limits, r),
                }
            }
            if let Outcome::RateLimited {
                kind,
                retry_after,
                fallback,
                ..
            } = &outcome
            {
                pause = feedback::pause_after_429(
                    *kind,
                    *retry_after,
                    reading,
                    &limits,
                    self.cost,
                    *fallback,
                );
                inner.buckets.pause_until(state::instant_after(now, pause));
                let told = retry_after.or_else(|| reading.and_then(|r| r.retry_after));
                if let (Backend::Local, Some(told)) = (&scheduler.backend, told) {
                    inner
                        .buckets
                        .after_429(now, &limits, *kind, self.cost, told);
                }
            }
            inner.queue.notify_head();
            (limits, reading)
        };
        let remote = match &scheduler.backend {
            Backend::Local => None,
            Backend::Shared { state, .. } => Some(RemoteSettle {
                state: state.clone(),
                key: self.key.clone(),
                lease: self.admitted.lease,
                limits,
                settlement,
                reading: reading.cloned(),
                pause,
            }),
        };
        (self.reservation.take(), pause, remote)
    }
}

/// What a shared backend must be told after an attempt (settle, observe, pause).
struct RemoteSettle {
    state: Arc<dyn QuotaState>,
    key: Arc<Key>,
    lease: Option<Lease>,
    limits: Limits,
    settlement: Settlement,
    reading: Option<RateLimitReading>,
    pause: Duration,
}

impl RemoteSettle {
    /// Runs [`apply`](Self::apply) as its own task and waits for it: a caller that drops its
    /// future meanwhile does not abort the settle (the slot would stay held until its lease
    /// expired, and the token adjustment would be lost).
    async fn apply_detached(self) {
        // A panic in the backend only loses this settle; the lease expiry covers the slot.
        let _ = tokio::spawn(self.apply()).await;
    }

    async fn apply(self) {
        let name = &*self.key.name;
        let mut errors = 0u64;
        if let Some(lease) = self.lease {
            let r = self
                .state
                .settle(name, &self.limits, lease, self.settlement)
                .await;
            errors += u64::from(r.is_err());
        }
        if let Some(r) = &self.reading {
            errors += u64::from(self.state.observe(name, &self.limits, r).await.is_err());
        }
        if !self.pause.is_zero() {
            errors += u64::from(self.state.pause_until(name, self.pause).await.is_err());
        }
        if errors > 0 {
            let mut key = self.key.lock();
            key.stats.backend_errors = key.stats.backend_errors.saturating_add(errors);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(r) = self.reservation.take() {
            r.commit();
        }
        let settlement = self.settlement(self.cost.tokens);
        let mut inner = self.key.lock();
        inner.stats.in_flight = inner.stats.in_flight.saturating_sub(1);
        if self.admitted.probe {
            inner.breaker.probe_abandoned();
        }
        match &self.scheduler.backend {
            Backend::Local => {
                let limits = inner.limits;
                inner
                    .buckets
                    .settle(Instant::now(), &limits, self.cost, settlement);
            }
            Backend::Shared { state, .. } => {
                // Drop cannot await: settle on the runtime if there is one; otherwise the
                // backend's lease expiry returns the slot.
                if let (Some(lease), Ok(handle)) =
                    (self.admitted.lease, tokio::runtime::Handle::try_current())
                {
                    let state = state.clone();
                    let key = self.key.name.clone();
                    let limits = inner.limits;
                    handle.spawn(async move {
                        let _ = state.settle(&key, &limits, lease, settlement).await;
                    });
                }
            }
        }
        inner.queue.notify_head();
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
    /// never fit a bucket; [`CallError::CircuitOpen`] while the key's breaker is open;
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
        let span = tracing::debug_span!(
            "admission",
            conversation = call.conversation,
            agent = call.agent,
            key = &*key.borrow().name,
            kind = ?call.kind,
        );
        // A span nobody records still costs a `log` check on every poll and on drop (tracing's
        // `log` feature is on in the dependency graph): leave it out when it is disabled.
        if span.is_disabled() {
            Either::Left(self.run(call, key))
        } else {
            Either::Right(self.run(call, key).instrument(span))
        }
    }

    async fn run<K: std::borrow::Borrow<Arc<Key>>>(
        &self,
        call: ModelCall<'_>,
        key: K,
    ) -> Result<Completion, CallError> {
        let key = key.borrow();
        let ModelCall {
            model,
            request,
            conversation,
            budget,
            priority,
            cancel,
            observer,
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
        let mut record = CallRecord::default();
        let result = self
            .attempts(
                model,
                &request,
                key,
                budget,
                charge,
                Ticket {
                    cost,
                    conversation,
                    priority,
                    retry: false,
                    cancel,
                },
                observer,
                &mut record,
            )
            .await;
        record.failed = result.is_err();
        self.inner.conversations.record(conversation, &record);
        if let Some(o) = observer {
            let info = CallInfo {
                key: &key.name,
                model: model.id(),
                attempts: u32::try_from(record.attempts).unwrap_or(u32::MAX),
                cost_nanos: record.cost_nanos,
            };
            o.call_finished(&info, result.as_ref());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        model: &dyn ChatModel,
        request: &ChatRequest,
        key: &Arc<Key>,
        budget: &Budget,
        charge: Charge,
        mut ticket: Ticket<'_>,
        observer: Option<&dyn CallObserver>,
        record: &mut CallRecord,
    ) -> Result<Completion, CallError> {
        let inner = &*self.inner;
        let policy = &inner.retry;
        // Budget first: a spent budget fails here and never waits for quota.
        let mut reservation = Some(budget.try_reserve(charge)?);
        if let Some(o) = observer {
            o.queued(&key.name);
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let admitted = key
                .admit(&inner.backend, ticket, policy, inner.max_admission_wait)
                .await
                .map_err(|r| inner.refusal(key, r))?;
            record.attempts += 1;
            record.wait = record.wait.saturating_add(admitted.wait);
            if let Some(o) = observer {
                o.admitted(&key.name, admitted.wait);
            }
            tracing::debug!(
                attempt,
                wait_us = admitted.wait.as_micros() as u64,
                reserved_tokens = ticket.cost.tokens,
                "admitted"
            );
            let in_flight = InFlight {
                scheduler: inner,
                key,
                cost: ticket.cost,
                admitted,
                reservation: reservation.take(),
                done: false,
            };
            let result = tokio::select! {
                biased;
                r = model.complete(request.clone()) => r,
                () = cancelled(ticket.cancel) => return Err(CallError::Cancelled),
            };
            let failed_attempt = Charge {
                calls: 1,
                tokens: 0,
                cost_nanos: 0,
            };
            let error = match result {
                Ok(completion) => {
                    let usage = completion.usage;
                    let outcome = Outcome::Completed {
                        usage,
                        reading: completion.rate_limits.as_ref(),
                    };
                    let (r, _, remote) = in_flight.finish(outcome);
                    // The budget is settled before anything is awaited: a caller dropping the
                    // future during the remote settle must not refund a call that was made.
                    match (r, usage) {
                        (Some(r), Some(u)) => {
                            let cost_nanos = budget.cost_nanos(model.id(), u);
                            record.cost_nanos = cost_nanos;
                            r.settle(Charge {
                                calls: 1,
                                tokens: u.total(),
                                cost_nanos,
                            });
                            record.prompt_tokens =
                                record.prompt_tokens.saturating_add(u.prompt_tokens);
                            record.completion_tokens =
                                record.completion_tokens.saturating_add(u.completion_tokens);
                        }
                        // Without reported usage the estimate stands as the charge.
                        (Some(r), None) => {
                            record.cost_nanos = r.reserved().cost_nanos;
                            r.commit();
                        }
                        (None, _) => {}
                    }
                    if let Some(remote) = remote {
                        // Boxed: keeps the remote calls' state out of the local path's future.
                        Box::pin(remote.apply_detached()).await;
                    }
                    tracing::debug!(
                        prompt_tokens = usage.map(|u| u.prompt_tokens),
                        completion_tokens = usage.map(|u| u.completion_tokens),
                        "completed"
                    );
                    return Ok(completion);
                }
                Err(ModelError::RateLimited {
                    kind,
                    retry_after,
                    reading,
                    message,
                }) => {
                    let outcome = Outcome::RateLimited {
                        kind,
                        retry_after,
                        reading: reading.as_deref(),
                        // Grows with the attempt, so hint-less 429s back off exponentially.
                        fallback: inner.backoff(attempt),
                    };
                    let (r, pause, remote) = in_flight.finish(outcome);
                    if let Some(r) = r {
                        r.settle(failed_attempt);
                    }
                    if let Some(remote) = remote {
                        Box::pin(remote.apply_detached()).await;
                    }
                    record.rate_limited += 1;
                    tracing::debug!(?kind, pause_ms = pause.as_millis() as u64, "rate limited");
                    let error = ModelError::RateLimited {
                        kind,
                        retry_after,
                        reading,
                        message,
                    };
                    if pause > inner.max_admission_wait {
                        return Err(CallError::Model(error));
                    }
                    error
                }
                Err(e @ ModelError::Transient { .. }) => {
                    let (r, _, remote) = in_flight.finish(Outcome::Transient);
                    if let Some(r) = r {
                        r.settle(failed_attempt);
                    }
                    if let Some(remote) = remote {
                        Box::pin(remote.apply_detached()).await;
                    }
                    e
                }
                Err(e) => {
                    // Quota exhausted, request too large, invalid request, malformed response:
                    // the same request would fail again, so it is never retried.
                    let (r, _, remote) = in_flight.finish(Outcome::Rejected);
                    if let Some(r) = r {
                        r.settle(failed_attempt);
                    }
                    if let Some(remote) = remote {
                        Box::pin(remote.apply_detached()).await;
                    }
                    return Err(CallError::Model(e));
                }
            };
            if attempt >= policy.max_attempts {
                return Err(CallError::RetriesExhausted {
                    attempts: attempt,
                    last: error,
                });
            }
            let backoff = match &error {
                ModelError::Transient { retry_after, .. } => {
                    let allowed = key.lock().retry_budget.withdraw(Instant::now(), policy);
                    if !allowed {
                        tracing::debug!("retry budget spent");
                        return Err(CallError::RetriesExhausted {
                            attempts: attempt,
                            last: error,
                        });
                    }
                    match retry_after {
                        // Like a 429's pause: a hint beyond max_admission_wait returns the error
                        // rather than sleeping a day ("no hangs").
                        Some(hint) if *hint > inner.max_admission_wait => {
                            return Err(CallError::Model(error));
                        }
                        Some(hint) => Some(*hint),
                        None => Some(inner.backoff(attempt)),
                    }
                }
                // A 429 paused the key; the retry waits for the pause in the queue.
                _ => None,
            };
            {
                let mut k = key.lock();
                k.stats.retries += 1;
            }
            record.retries += 1;
            // Every attempt that reaches the provider is a model call in the budget.
            reservation = Some(budget.try_reserve(charge)?);
            if let Some(backoff) = backoff {
                tokio::select! {
                    biased;
                    () = cancelled(ticket.cancel) => return Err(CallError::Cancelled),
                    () = Box::pin(tokio::time::sleep(backoff)) => {}
                }
            }
            ticket.retry = true;
        }
    }
}
