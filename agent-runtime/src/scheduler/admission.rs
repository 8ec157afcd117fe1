//! Quota admission: the wait of a call for its turn in the key's queue and for its quota.
//!
//! Per key, waiting calls sit in the key's [`FairQueue`], ordered by the quota's
//! [`QueuePolicy`](super::QueuePolicy) within priority classes (higher classes first).
//! The order is **strict head-of-line**: only the call at the head of that order may take from the
//! buckets, so a large call that waits for the bucket to refill is not overtaken by small calls
//! taking the tokens it waits for; its wait is bounded by `cost / rate` once it is at the head.
//!
//! The head waits on a timer for the time the buckets say it needs; everyone else waits on a
//! notification. Every event that can change the answer (a grant, a release, a refund, a
//! cancellation of the head) notifies the new head. Cancelling a waiting call (dropping its future
//! or firing its token) removes it and passes its turn on.

use std::future::pending;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::feedback;
use super::metrics::{KeyCounters, LearnedLimits};
use super::queue::{Demand, FairQueue, Slot};
use super::quota::{Cost, Dimension, Limits, Quota};
use super::retry::{Breaker, RetryBudget, RetryPolicy, WhenOpen};
use super::state::{Acquire, KeyBuckets, Lease, QuotaState, Settlement, StateError, instant_after};

/// Where admission takes quota from.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The key's own in-memory buckets, updated under its lock (the synchronous fast path).
    Local,
    /// A shared [`QuotaState`]; the local queue only orders the waiters.
    ///
    /// A backend error always fails closed here: the call keeps polling until the backend
    /// answers or `max_admission_wait` passes. Falling back to this process's own buckets would be
    /// the silent per-pod limit multiplication LiteLLM suffers from (its issue #35533); a backend
    /// that wants to fail open does so itself, to a conservative share it chooses (the Redis
    /// backend's `RedisFailurePolicy::FailOpen { expected_processes }`).
    Shared {
        state: Arc<dyn QuotaState>,
        lease_ttl: Duration,
        poll: Duration,
    },
}

/// Everything about one key that changes: guarded by one short per-key lock.
#[derive(Debug)]
pub(crate) struct KeyInner {
    pub(crate) buckets: KeyBuckets,
    /// Effective limits (configured, tightened or learned).
    pub(crate) limits: Limits,
    pub(crate) learned: LearnedLimits,
    /// The key knows no limit yet and admits one call at a time until the provider answers
    /// ([`feedback::starts_probing`]).
    pub(crate) probing: bool,
    /// A 429 without a hint put the key in debt: one probe at a time until a success.
    pub(crate) debt: Option<feedback::Debt>,
    /// What the provider's answers show about how it counts requests and tokens.
    pub(crate) inference: [super::inference::Track; 2],
    /// When the key first admitted a call, until its first answer (the cold-start shift).
    pub(crate) cold_since: Option<Instant>,
    /// The key has seen its first answer.
    pub(crate) warm: bool,
    pub(crate) queue: FairQueue,
    pub(crate) retry_budget: RetryBudget,
    pub(crate) breaker: Breaker,
    pub(crate) stats: KeyCounters,
    /// True while the shared backend is failing: one `warn` when an outage starts and one `info`
    /// when it ends, not one per poll.
    pub(crate) backend_failing: bool,
}

/// One quota key.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    inner: Mutex<KeyInner>,
}

/// One admission request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket<'a> {
    pub(crate) cost: Cost,
    /// The tokens the queue charges (the estimate), split for its input and output weights.
    pub(crate) demand: Demand,
    /// Whose share the call takes in the queue: its tenant label, or else its conversation.
    pub(crate) client: &'a str,
    /// The client's weight in a token-fair queue.
    pub(crate) weight: NonZeroU32,
    pub(crate) priority: u8,
    /// A retry after a provider failure: goes to the front of its conversation's queue and is not
    /// a new call for the retry budget.
    pub(crate) retry: bool,
    pub(crate) cancel: Option<&'a CancellationToken>,
}

/// An admitted call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admitted {
    /// When the call was admitted.
    pub(crate) at: Instant,
    pub(crate) wait: Duration,
    /// This call is the circuit breaker's half-open probe.
    pub(crate) probe: bool,
    /// The shared backend's lease.
    pub(crate) lease: Option<Lease>,
    /// The key's admission count at this admission (orders responses for inference).
    pub(crate) seq: u64,
    /// What the queue charged the call's client, for the correction at reconcile; `None` when
    /// the call passed an empty queue (no one waited, so no one's share was taken).
    pub(crate) units: Option<u64>,
}

/// Why a call was not admitted.
#[derive(Debug)]
pub(crate) enum Refusal {
    Exceeds {
        dimension: Dimension,
        needed: u64,
        capacity: u64,
    },
    CircuitOpen(Duration),
    TooLong {
        dimension: Dimension,
        wait: Duration,
    },
    /// A fail-closed shared backend kept failing until the call's admission wait ran out.
    BackendUnavailable {
        error: String,
        wait: Duration,
    },
    Cancelled,
}

impl Refusal {
    /// Whether admission had counted the call in its key's `calls` before refusing it: every
    /// refusal but the capacity and circuit checks, which come first.
    pub(crate) fn counted(&self) -> bool {
        !matches!(self, Refusal::Exceeds { .. } | Refusal::CircuitOpen(_))
    }
}

pub(crate) async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(c) => c.cancelled().await,
        None => pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => pending().await,
    }
}

/// A shared backend's `acquire`, run as its own task so that it is never abandoned half-way: a
/// grant whose caller left meanwhile (cancelled, dropped, timed out) is given back at once
/// instead of holding its slot and tokens until the lease expires.
struct RemoteAcquire {
    rx: Option<tokio::sync::oneshot::Receiver<Result<Acquire, StateError>>>,
    release: Release,
}

/// What giving back an unwanted grant needs.
#[derive(Clone)]
struct Release {
    state: Arc<dyn QuotaState>,
    key: Arc<str>,
    limits: Limits,
}

impl Release {
    async fn run(self, lease: Lease) {
        // The provider never saw the call: every reserved token goes back (the request does not,
        // as with any settle).
        let settlement = Settlement {
            actual_tokens: 0,
            refund_unused: true,
        };
        let _ = self
            .state
            .settle(&self.key, &self.limits, lease, settlement)
            .await;
    }
}

impl RemoteAcquire {
    fn start(
        state: &Arc<dyn QuotaState>,
        key: &Arc<str>,
        limits: Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let release = Release {
            state: state.clone(),
            key: key.clone(),
            limits,
        };
        let task = release.clone();
        tokio::spawn(async move {
            let answer = task
                .state
                .acquire(&task.key, &task.limits, cost, lease_ttl)
                .await;
            if let Err(Ok(Acquire::Granted(lease))) = tx.send(answer) {
                task.run(lease).await;
            }
        });
        Self {
            rx: Some(rx),
            release,
        }
    }

    async fn answer(mut self) -> Result<Acquire, StateError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(Acquire::Wait {
                retry_after: None,
                dimension: Dimension::Paused,
            });
        };
        let answer = rx.await;
        self.rx = None;
        answer.unwrap_or_else(|_| {
            Err(StateError::Unavailable {
                message: "the quota backend's acquire task stopped without an answer".into(),
            })
        })
    }
}

impl Drop for RemoteAcquire {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // After close(), either the task's send fails (and the task releases the grant) or the
        // answer is already here (and released here): a grant is never lost in between.
        rx.close();
        if let Ok(Ok(Acquire::Granted(lease))) = rx.try_recv()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(self.release.clone().run(lease));
        }
    }
}

/// Removes a waiter that leaves without admission (cancelled, refused, or dropped), passing the
/// turn on and releasing a half-open probe it held.
struct Waiting<'a> {
    key: &'a Key,
    slot: Arc<Slot>,
    ticket: Ticket<'a>,
    probe: bool,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.key.lock();
        let was_head = inner.queue.is_head(self.slot.id);
        inner
            .queue
            .remove(self.ticket.client, self.ticket.priority, self.slot.id);
        if was_head {
            inner.queue.notify_head();
        }
        if self.probe {
            inner.breaker.probe_abandoned();
        }
    }
}

impl Key {
    pub(crate) fn new(name: &str, quota: Quota, policy: &RetryPolicy) -> Self {
        let now = Instant::now();
        let learned = LearnedLimits::default();
        let probing = feedback::starts_probing(&quota);
        Self {
            name: Arc::from(name),
            inner: Mutex::new(KeyInner {
                buckets: KeyBuckets::default(),
                limits: feedback::effective_limits(&quota, learned, probing),
                learned,
                probing,
                debt: None,
                inference: Default::default(),
                cold_since: None,
                warm: false,
                queue: FairQueue::new(quota.queue),
                retry_budget: RetryBudget::new(policy, now),
                breaker: Breaker::new(),
                stats: KeyCounters::default(),
                backend_failing: false,
            }),
            quota,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, KeyInner> {
        // Every update under this lock is a handful of assignments that cannot panic half-way,
        // so a poisoned lock still guards consistent state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the call's turn and its quota. The fast path (empty queue, quota available,
    /// local state) takes the lock once and never allocates.
    pub(crate) async fn admit(
        &self,
        backend: &Backend,
        ticket: Ticket<'_>,
        policy: &RetryPolicy,
        max_wait: Duration,
    ) -> Result<Admitted, Refusal> {
        let start = Instant::now();
        // While the key's circuit is open the call waits here, up to `max_wait`, re-asking the
        // breaker when the cool-down ends (or a probe is due to have answered).
        let mut now = start;
        let (slot, probe) = 'admit: loop {
            let circuit_wait = 'circuit: {
                let mut inner = self.lock();
                let inner = &mut *inner;
                if let Some((dimension, needed, capacity)) = inner.limits.exceeded_by(ticket.cost) {
                    inner.stats.exceeds_quota += 1;
                    return Err(Refusal::Exceeds {
                        dimension,
                        needed,
                        capacity,
                    });
                }
                let probe = match inner.breaker.admit(now, policy) {
                    Ok(probe) => probe,
                    Err(wait) => {
                        let left = instant_after(start, max_wait).saturating_duration_since(now);
                        if policy.when_open == WhenOpen::FailFast || wait > left {
                            inner.stats.circuit_rejections += 1;
                            return Err(Refusal::CircuitOpen(wait));
                        }
                        break 'circuit wait;
                    }
                };
                if !ticket.retry {
                    inner.stats.calls += 1;
                    inner.retry_budget.deposit(now);
                }
                if matches!(backend, Backend::Local)
                    && inner.queue.len() == 0
                    && inner
                        .buckets
                        .try_acquire(now, &inner.limits, ticket.cost)
                        .is_ok()
                {
                    let wait = now - start;
                    inner.stats.admitted(ticket.cost, wait, ticket.retry);
                    if !inner.warm {
                        inner.cold_since.get_or_insert(now);
                    }
                    return Ok(Admitted {
                        at: now,
                        wait,
                        probe,
                        lease: None,
                        seq: inner.stats.attempts,
                        units: None,
                    });
                }
                let slot = inner
                    .queue
                    .push(ticket.client, ticket.priority, ticket.retry, now);
                break 'admit (slot, probe);
            };
            tokio::select! {
                biased;
                () = cancelled(ticket.cancel) => return Err(Refusal::Cancelled),
                () = tokio::time::sleep(circuit_wait) => {}
            }
            now = Instant::now();
        };
        let mut waiting = Waiting {
            key: self,
            slot,
            ticket,
            probe,
            done: false,
        };
        // Boxed: the waiting state machine (timers, notifications) is large, and keeping it out
        // of line keeps the fast path's future small and cheap to move.
        Box::pin(self.wait_turn(&mut waiting, backend, start, max_wait)).await
    }

    async fn wait_turn(
        &self,
        waiting: &mut Waiting<'_>,
        backend: &Backend,
        start: Instant,
        max_wait: Duration,
    ) -> Result<Admitted, Refusal> {
        let cost = waiting.ticket.cost;
        let give_up_at = instant_after(start, max_wait);
        // What held the call last, for the error should it give up without a known wait.
        let mut holding = Dimension::Paused;
        loop {
            let mut deadline = None;
            let mut ask_remote = None;
            {
                let mut inner = self.lock();
                let inner = &mut *inner;
                if inner.queue.is_head(waiting.slot.id) {
                    let now = Instant::now();
                    if let Some((dimension, needed, capacity)) = inner.limits.exceeded_by(cost) {
                        // Limits learned while queued can make the call impossible.
                        inner.stats.exceeds_quota += 1;
                        return Err(Refusal::Exceeds {
                            dimension,
                            needed,
                            capacity,
                        });
                    }
                    let local = match backend {
                        Backend::Local => true,
                        Backend::Shared { .. } => false,
                    };
                    let blocked = if local {
                        inner.buckets.try_acquire(now, &inner.limits, cost).err()
                    } else {
                        // A pause this process knows of holds the head without a round trip.
                        inner
                            .buckets
                            .paused_for(now)
                            .map(|wait| super::state::Blocked {
                                wait: Some(wait),
                                dimension: Dimension::Paused,
                            })
                    };
                    match blocked {
                        None if local => return Ok(self.grant(inner, waiting, start, now, None)),
                        None => ask_remote = Some(inner.limits),
                        Some(b) => {
                            holding = b.dimension;
                            // Compared before adding: a provider's pause may be years long.
                            if let Some(w) = b.wait
                                && w > give_up_at.saturating_duration_since(now)
                            {
                                return Err(Refusal::TooLong {
                                    dimension: b.dimension,
                                    wait: (now - start).saturating_add(w),
                                });
                            }
                            deadline = b.wait.map(|w| instant_after(now, w));
                        }
                    }
                } else {
                    // A policy's order can change without an event (finish-first ages waiters):
                    // whoever wakes and finds another call at the head wakes that one.
                    inner.queue.notify_head();
                }
            }
            if let (Some(limits), Backend::Shared { .. }) = (ask_remote, backend) {
                match self
                    .ask_remote(waiting, backend, &limits, start, give_up_at)
                    .await?
                {
                    Ok(admitted) => return Ok(admitted),
                    Err(next) => deadline = Some(next),
                }
            }
            tokio::select! {
                biased;
                () = cancelled(waiting.ticket.cancel) => return Err(Refusal::Cancelled),
                () = waiting.slot.notify.notified() => {}
                () = sleep_until_opt(deadline) => {}
                // Every waiter has a deadline: behind the head, or at the head waiting for an
                // in-flight slot (no computable wait), it would otherwise wait forever.
                () = sleep_until(give_up_at) => {
                    return Err(Refusal::TooLong {
                        dimension: holding,
                        wait: max_wait,
                    });
                }
            }
        }
    }

    /// The head asks the shared backend. `Ok(Err(t))`: try again at `t`.
    async fn ask_remote(
        &self,
        waiting: &mut Waiting<'_>,
        backend: &Backend,
        limits: &Limits,
        start: Instant,
        give_up_at: Instant,
    ) -> Result<Result<Admitted, Instant>, Refusal> {
        let Backend::Shared {
            state,
            lease_ttl,
            poll,
        } = backend
        else {
            return Ok(Err(Instant::now()));
        };
        let cost = waiting.ticket.cost;
        let pending = RemoteAcquire::start(state, &self.name, *limits, cost, *lease_ttl);
        let answer = tokio::select! {
            biased;
            () = cancelled(waiting.ticket.cancel) => return Err(Refusal::Cancelled),
            a = pending.answer() => a,
        };
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut backend_error = None;
        let (wait, dimension) = match answer {
            Ok(Acquire::Granted(lease)) => {
                self.backend_recovered(inner);
                return Ok(Ok(self.grant(inner, waiting, start, now, Some(lease))));
            }
            Ok(Acquire::Wait {
                retry_after,
                dimension,
            }) => {
                self.backend_recovered(inner);
                (retry_after.unwrap_or(*poll), dimension)
            }
            Err(e) => {
                inner.stats.backend_errors += 1;
                if !inner.backend_failing {
                    inner.backend_failing = true;
                    tracing::warn!(key = &*self.name, error = %e, "quota backend failed; admission waits for it (fails closed)");
                }
                backend_error = Some(e.to_string());
                (*poll, Dimension::Paused)
            }
        };
        if wait > give_up_at.saturating_duration_since(now) {
            let wait = (now - start).saturating_add(wait);
            if let Some(error) = backend_error {
                return Err(Refusal::BackendUnavailable { error, wait });
            }
            return Err(Refusal::TooLong { dimension, wait });
        }
        Ok(Err(instant_after(now, wait)))
    }

    fn backend_recovered(&self, inner: &mut KeyInner) {
        if std::mem::take(&mut inner.backend_failing) {
            tracing::info!(key = &*self.name, "quota backend answers again");
        }
    }

    fn grant(
        &self,
        inner: &mut KeyInner,
        waiting: &mut Waiting<'_>,
        start: Instant,
        now: Instant,
        lease: Option<Lease>,
    ) -> Admitted {
        let ticket = waiting.ticket;
        let units = inner.queue.units(ticket.demand, ticket.weight);
        inner
            .queue
            .take(ticket.client, ticket.priority, waiting.slot.id, units, now);
        inner.queue.notify_head();
        waiting.done = true;
        let wait = now - start;
        inner
            .stats
            .admitted(waiting.ticket.cost, wait, waiting.ticket.retry);
        if !inner.warm {
            inner.cold_since.get_or_insert(now);
        }
        Admitted {
            at: now,
            wait,
            probe: waiting.probe,
            lease,
            seq: inner.stats.attempts,
            units: Some(units),
        }
    }
}
