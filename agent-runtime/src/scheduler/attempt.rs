//! One call's way through the pipeline, stage by stage, with the only retry loop:
//! response cache ([`CallAttempts::lookup`], a hit ends the call here) →
//! budget ([`CallAttempts::reserve`]) → quota admission ([`CallAttempts::admit`]) → provider
//! ([`CallAttempts::send`]) → reconcile ([`CallAttempts::reconcile`]) → retry decision
//! ([`CallAttempts::retry_delay`]) and back to the budget; a miss's outcome is stored
//! ([`Pending::remember`]) when the loop ends.
//!
//! Each stage is a method on [`CallAttempts`], which carries what the stages share (the call,
//! its key, its ticket and its record), so a new concern — a deadline, a stream, a cache — grows
//! one stage instead of the loop. The provider stage has two shapes ([`Delivery`]): a whole
//! completion ([`Whole`]), or a stream whose first event has arrived
//! ([`Streamed`](super::stream::Streamed)); the loop is the same for both.

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Budget, CallError, Charge, ChatModel, ChatRequest, Completion, ModelError, RateLimitKind,
    Reservation, Usage,
};
use tokio::time::Instant;

use super::admission::{Key, Refusal, Ticket, cancelled};
use super::deadline::Deadlines;
use super::metrics::CallRecord;
use super::reconcile::{InFlight, Outcome};
use super::retry::WhenOpen;
use super::{CallObserver, Inner, feedback};
use crate::cache::{CacheMode, Hit, Lookup, Pending, ResponseCache};

/// What the reconcile stage decided about a failed attempt.
pub(super) enum Next {
    /// Try again (subject to the retry decision): the error the attempt ended with.
    Retry(ModelError),
    /// Stop: the call fails with this error.
    Fail(CallError),
}

/// What the cache stage found.
pub(super) enum Cached {
    Hit(Box<Hit>),
    /// Not in the cache (`None`: no cache in force).
    Miss(Option<Pending>),
}

/// A budget charge for an attempt that reached the provider and failed: one call, no tokens.
const FAILED_ATTEMPT: Charge = Charge {
    calls: 1,
    tokens: 0,
    cost_nanos: 0,
};

/// The provider stage's shape: what one attempt sends and what a successful one hands on.
pub(super) trait Delivery: Sync {
    /// A successful attempt's answer.
    type Response: Send;

    /// Sends one attempt to `model`. The attempt has succeeded once this resolves `Ok`: after
    /// that, nothing about it is retried. The provider stage bounds the future by
    /// `deadlines.attempt`; what the response goes on to deliver (a stream's later events) is
    /// the response's to bound.
    fn send<'m>(
        &self,
        model: &'m dyn ChatModel,
        request: ChatRequest,
        deadlines: Deadlines,
    ) -> impl Future<Output = Result<Self::Response, ModelError>> + Send + 'm;
}

/// The provider stage of [`QuotaScheduler::call`](super::QuotaScheduler::call): one whole
/// completion.
pub(super) struct Whole;

impl Delivery for Whole {
    type Response = Completion;

    fn send<'m>(
        &self,
        model: &'m dyn ChatModel,
        request: ChatRequest,
        _: Deadlines,
    ) -> impl Future<Output = Result<Completion, ModelError>> + Send + 'm {
        model.complete(request)
    }
}

/// Settles a completed attempt's budget reservation to `usage` priced for `model`, and records
/// the cost (and the tokens, when the provider `reported` them rather than the scheduler
/// counting them).
pub(super) fn charge_usage(
    reservation: Reservation,
    budget: &Budget,
    model: &str,
    usage: Usage,
    reported: bool,
    record: &mut CallRecord,
) {
    let cost_nanos = budget.cost_nanos(model, usage);
    record.cost_nanos = cost_nanos;
    reservation.settle(Charge {
        calls: 1,
        tokens: usage.total(),
        cost_nanos,
    });
    if reported {
        record.prompt_tokens = record.prompt_tokens.saturating_add(usage.prompt_tokens);
        record.completion_tokens = record
            .completion_tokens
            .saturating_add(usage.completion_tokens);
    }
}

/// The state one call carries through its attempts.
pub(super) struct CallAttempts<'s, 'c> {
    pub(super) scheduler: &'s Inner,
    pub(super) model: &'c dyn ChatModel,
    pub(super) request: &'c ChatRequest,
    pub(super) key: &'s Arc<Key>,
    pub(super) budget: &'c Budget,
    /// What one attempt reserves from the budget (the estimate).
    pub(super) charge: Charge,
    pub(super) ticket: Ticket<'c>,
    pub(super) observer: Option<&'c dyn CallObserver>,
    pub(super) record: &'c mut CallRecord,
    /// Attempts admitted so far (1-based once the first is).
    pub(super) attempt: u32,
    /// How long each attempt may take (the call's, the key's or the scheduler's).
    pub(super) deadlines: Deadlines,
    /// The last attempt ran past its deadline (the provider stage abandoned it).
    pub(super) expired: bool,
    /// The call's 429s: they use up no attempt, only `max_admission_wait` from the first.
    pub(super) limited: RateLimitedWait,
    /// The response cache in force for this call (the most specific one configured).
    pub(super) cache: Option<&'c ResponseCache>,
}

/// How long a call has been rate limited by the provider.
#[derive(Debug, Default)]
pub(super) struct RateLimitedWait {
    /// 429s so far.
    count: u32,
    /// The first 429.
    since: Option<Instant>,
    /// The last 429, for the error that ends the wait.
    last: Option<ModelError>,
}

impl RateLimitedWait {
    /// What is left of `max_wait` (all of it before the first 429).
    fn left(&self, now: Instant, max_wait: Duration) -> Duration {
        match self.since {
            Some(since) => max_wait.saturating_sub(now.saturating_duration_since(since)),
            None => max_wait,
        }
    }
}

impl<'s, 'c> CallAttempts<'s, 'c> {
    /// Runs the call to its end: the completion, or the error that ends it.
    pub(super) async fn run(mut self) -> Result<Completion, CallError> {
        // The cache first: a hit spends no budget, no quota and no provider call.
        let pending = match self.lookup().await? {
            Cached::Hit(hit) => return Ok(hit.completion),
            Cached::Miss(pending) => pending,
        };
        let result = match self.attempts(&Whole).await {
            Ok((in_flight, completion)) => Ok(self.completed(in_flight, completion).await),
            Err(error) => Err(error),
        };
        if let Some(pending) = pending {
            pending.remember(result.as_ref()).await;
        }
        result
    }

    /// Cache stage: answers from the response cache, or says what a miss must store. Waiting
    /// for an identical call in flight is cancellable like a queued call.
    pub(super) async fn lookup(&self) -> Result<Cached, CallError> {
        let Some(cache) = self.cache.filter(|c| c.mode() != CacheMode::Off) else {
            return Ok(Cached::Miss(None));
        };
        match cache
            .lookup(self.model.id(), self.request, self.ticket.cancel)
            .await?
        {
            Lookup::Hit(hit) => {
                tracing::debug!("answered from the response cache");
                Ok(Cached::Hit(hit))
            }
            Lookup::Miss(pending) => Ok(Cached::Miss(Some(pending))),
        }
    }

    /// Runs attempts until one succeeds: its in-flight guard (still holding quota and budget,
    /// for the caller's reconcile) and its answer; or the error that ends the call.
    pub(super) async fn attempts<D: Delivery>(
        &mut self,
        delivery: &D,
    ) -> Result<(InFlight<'s, 'c>, D::Response), CallError> {
        // Budget first: a spent budget fails here and never waits for quota.
        let mut reservation = self.reserve()?;
        if let Some(o) = self.observer {
            o.queued(&self.key.name);
        }
        loop {
            let in_flight = self.admit(reservation).await?;
            let error = match self.send(delivery).await? {
                Ok(response) => return Ok((in_flight, response)),
                Err(error) => error,
            };
            let error = match self.reconcile(in_flight, error).await {
                Next::Fail(error) => return Err(error),
                Next::Retry(error) => error,
            };
            let delay = self.retry_delay(error)?;
            // Retries are counted when admitted (`KeyCounters::admitted`, the admit stage), so
            // one the breaker or the admission wait refuses is not counted as made.
            // Every attempt that reaches the provider is a model call in the budget.
            reservation = self.reserve()?;
            if let Some(delay) = delay {
                tokio::select! {
                    biased;
                    () = cancelled(self.ticket.cancel) => return Err(CallError::Cancelled),
                    () = Box::pin(tokio::time::sleep(delay)) => {}
                }
            }
            self.ticket.retry = true;
        }
    }

    /// Budget stage: reserves one attempt's estimate from the budget and its ancestors.
    fn reserve(&self) -> Result<Reservation, CallError> {
        Ok(self.budget.try_reserve(self.charge)?)
    }

    /// Admission stage: waits for the key's quota in the fair queue. The returned guard holds
    /// the quota (and the budget reservation) until the reconcile stage settles it; dropped
    /// before that, it keeps everything charged and frees the in-flight slot.
    async fn admit(&mut self, reservation: Reservation) -> Result<InFlight<'s, 'c>, CallError> {
        let scheduler = self.scheduler;
        self.attempt += 1;
        // The admission wait is the call's, across its attempts: a call waiting out an outage,
        // attempt after attempt, still ends within it (and, once rate limited, within it from
        // the first 429).
        let max_wait = self
            .limited
            .left(Instant::now(), scheduler.max_admission_wait)
            .min(
                scheduler
                    .max_admission_wait
                    .saturating_sub(self.record.wait),
            );
        let admitted = match self
            .key
            .admit(&scheduler.backend, self.ticket, &scheduler.retry, max_wait)
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.record.submitted |= refusal.counted();
                if matches!(refusal, Refusal::TooLong { .. }) && self.limited.since.is_some() {
                    return Err(self.wait_exceeded());
                }
                return Err(scheduler.refusal(self.key, refusal));
            }
        };
        self.record.submitted = true;
        self.record.attempts += 1;
        self.record.retries += u64::from(self.ticket.retry);
        self.record.wait = self.record.wait.saturating_add(admitted.wait);
        if let Some(o) = self.observer {
            o.admitted(&self.key.name, admitted.wait);
        }
        tracing::debug!(
            attempt = self.attempt,
            wait_us = admitted.wait.as_micros() as u64,
            reserved_tokens = self.ticket.cost.tokens,
            "admitted"
        );
        Ok(InFlight {
            scheduler,
            key: self.key,
            cost: self.ticket.cost,
            ticket: self.ticket,
            admitted,
            reservation: Some(reservation),
            done: false,
        })
    }

    /// Provider stage: one attempt, within the attempt's deadline. Cancellation ends the call
    /// here; the caller's in-flight guard, dropped with it, keeps the attempt charged (the
    /// provider may have done the work). An attempt past its deadline is abandoned (its
    /// connection dropped) and ends in a transient error the reconcile stage settles and the
    /// retry stage retries.
    ///
    /// While the key still learns its limits this attempt may be the one call in flight (see
    /// [`feedback::starts_probing`]); should it run past the deadlines' `probe` time, the key
    /// stops waiting for it and lets the others go, so a stalled first call blocks nobody for
    /// longer than that.
    async fn send<D: Delivery>(
        &mut self,
        delivery: &D,
    ) -> Result<Result<D::Response, ModelError>, CallError> {
        let deadlines = self.deadlines;
        self.expired = false;
        // A key that is configured with limits never probes: spare it the lock.
        let mut probing = feedback::starts_probing(&self.key.quota) && self.key.lock().probing;
        let attempt = tokio::time::timeout(
            deadlines.attempt,
            delivery.send(self.model, self.request.clone(), deadlines),
        );
        let mut attempt = std::pin::pin!(attempt);
        // No timer at all for the usual call, which is not a probe.
        let mut patience = std::pin::pin!(async move {
            if probing {
                tokio::time::sleep(deadlines.probe).await;
            } else {
                std::future::pending::<()>().await;
            }
        });
        loop {
            tokio::select! {
                biased;
                r = &mut attempt => return Ok(match r {
                    Ok(r) => r,
                    Err(_) => {
                        self.expired = true;
                        tracing::debug!(attempt = self.attempt, deadline = ?deadlines.attempt, "attempt deadline passed");
                        Err(deadlines.attempt_expired())
                    }
                }),
                () = cancelled(self.ticket.cancel) => return Err(CallError::Cancelled),
                () = &mut patience, if probing => {
                    probing = false;
                    stop_probing(self.key, deadlines.probe);
                }
            }
        }
    }

    /// Reconcile stage for a failed attempt: settles quota and budget to the failure and decides
    /// whether the call may be retried. (A successful attempt is reconciled by its caller:
    /// [`completed`](Self::completed), or the stream when it ends.)
    async fn reconcile(&mut self, in_flight: InFlight<'s, 'c>, error: ModelError) -> Next {
        let outcome = match &error {
            ModelError::RateLimited {
                kind,
                retry_after,
                reading,
                ..
            } => Outcome::RateLimited {
                kind: *kind,
                retry_after: *retry_after,
                reading: reading.as_deref(),
            },
            // Abandoned at its deadline: the provider may have done (and charged) the work.
            ModelError::Transient { .. } if self.expired => Outcome::TimedOut,
            ModelError::Transient { .. } => Outcome::Transient,
            // Quota exhausted, request too large, invalid request, malformed response: the same
            // request would fail again, so it is never retried.
            _ => Outcome::Rejected,
        };
        let (reservation, pause, remote) = in_flight.finish(outcome);
        if let Some(r) = reservation {
            r.settle(FAILED_ATTEMPT);
        }
        if let Some(remote) = remote {
            // Boxed: keeps the remote calls' state out of the local path's future.
            Box::pin(remote.apply_detached()).await;
        }
        match error {
            ModelError::RateLimited { kind, .. } => {
                self.record.rate_limited += 1;
                tracing::debug!(?kind, pause_ms = pause.as_millis() as u64, "rate limited");
                let now = Instant::now();
                self.limited.count = self.limited.count.saturating_add(1);
                self.limited.since.get_or_insert(now);
                let left = self.limited.left(now, self.scheduler.max_admission_wait);
                self.limited.last = Some(error.clone());
                if pause > left {
                    return Next::Fail(self.wait_exceeded());
                }
                Next::Retry(error)
            }
            ModelError::Transient { .. } => Next::Retry(error),
            _ => Next::Fail(CallError::Model(error)),
        }
    }

    /// The error that ends a call the provider kept rate limiting for `max_admission_wait`.
    fn wait_exceeded(&self) -> CallError {
        let last = self
            .limited
            .last
            .clone()
            .unwrap_or_else(|| ModelError::transient("rate limited"));
        let kind = match &last {
            ModelError::RateLimited { kind, .. } => *kind,
            _ => RateLimitKind::Unknown,
        };
        let limits = self.key.lock().limits;
        CallError::RateLimitWaitExceeded {
            key: self.key.name.to_string(),
            limit: super::feedback::describe_limit(&limits, kind),
            waited: self
                .limited
                .since
                .map(|s| Instant::now().saturating_duration_since(s))
                .unwrap_or_default(),
            rate_limited: self.limited.count,
            last: Box::new(last),
        }
    }

    /// The reconcile stage for a completed attempt: the budget is settled to the reported usage
    /// before anything is awaited, so a caller dropping the future during a shared backend's
    /// settle cannot refund a call that was made.
    async fn completed(
        &mut self,
        in_flight: InFlight<'s, 'c>,
        completion: Completion,
    ) -> Completion {
        let usage = completion.usage;
        let outcome = Outcome::Completed {
            usage,
            reading: completion.rate_limits.as_ref(),
        };
        let (reservation, _, remote) = in_flight.finish(outcome);
        match (reservation, usage) {
            (Some(r), Some(u)) => {
                charge_usage(r, self.budget, self.model.id(), u, true, self.record);
            }
            // Without reported usage the estimate stands as the charge.
            (Some(r), None) => {
                self.record.cost_nanos = r.reserved().cost_nanos;
                r.commit();
            }
            (None, _) => {}
        }
        if let Some(remote) = remote {
            Box::pin(remote.apply_detached()).await;
        }
        tracing::debug!(
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            "completed"
        );
        completion
    }

    /// Retry decision for a retryable error: how long to wait before queueing again (`None`: a
    /// 429 paused the key, and the retry waits for the pause in the queue), or the error that
    /// ends the call (attempts or the retry budget spent, a hint beyond `max_admission_wait`).
    fn retry_delay(&self, error: ModelError) -> Result<Option<Duration>, CallError> {
        let scheduler = self.scheduler;
        let policy = &scheduler.retry;
        if let ModelError::RateLimited { .. } = error {
            // A 429 means wait, not fail: the retry waits for the key's pause in the queue and
            // uses up no attempt (it still counts as a retry in the metrics).
            return Ok(None);
        }
        if self.attempt.saturating_sub(self.limited.count) >= policy.max_attempts {
            return Err(CallError::RetriesExhausted {
                attempts: self.attempt,
                last: error,
            });
        }
        let ModelError::Transient { retry_after, .. } = &error else {
            return Ok(None);
        };
        let granted = {
            let mut inner = self.key.lock();
            let now = Instant::now();
            match policy.when_open {
                // While the breaker holds the key's calls back, a retry queues behind its probe
                // and adds no load: the budget, which exists to cap load, is not drawn on. A
                // spent budget means the provider fails more than it allows retrying: the
                // circuit opens and the retry waits for the probe, instead of its call failing
                // (an outage costs time, not conversations).
                WhenOpen::Wait => {
                    if !inner.breaker.is_tripped() && !inner.retry_budget.withdraw(now, policy) {
                        inner.breaker.trip(now, policy);
                        tracing::info!(
                            key = &*self.key.name,
                            "retry budget spent: the circuit opens and retries wait for a probe"
                        );
                    }
                    true
                }
                WhenOpen::FailFast => inner.retry_budget.withdraw(now, policy),
            }
        };
        if !granted {
            tracing::debug!("retry budget spent");
            return Err(CallError::RetriesExhausted {
                attempts: self.attempt,
                last: error,
            });
        }
        match *retry_after {
            // Like a 429's pause: a hint beyond max_admission_wait returns the error rather than
            // sleeping a day ("no hangs").
            Some(hint) if hint > scheduler.max_admission_wait => Err(CallError::Model(error)),
            Some(hint) => Ok(Some(hint)),
            None => Ok(Some(scheduler.backoff(self.attempt))),
        }
    }
}

/// Lets a key that is still learning its limits stop waiting for its first call: the others go
/// ahead under the configured limits (or none), and the first call's answer still teaches the
/// limits when it comes.
fn stop_probing(key: &Key, after: Duration) {
    let mut inner = key.lock();
    let inner = &mut *inner;
    // A key in debt after a hint-less 429 keeps its single probe: letting the others go would
    // release the burst the debt exists to prevent.
    if !inner.probing || inner.debt.is_some() {
        return;
    }
    inner.probing = false;
    inner.limits = feedback::effective_limits(&key.quota, inner.learned, false);
    inner.queue.notify_head();
    tracing::info!(
        key = &*key.name,
        after = ?after,
        "the key's first call is still running; the calls waiting behind it go ahead without learned limits"
    );
}
