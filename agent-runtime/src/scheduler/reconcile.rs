//! The reconcile stage: what an attempt that reached the provider leaves behind — quota
//! settled to actual usage, limits learned from the provider's reading, a 429's pause, the
//! breaker and the counters — for the in-memory state at once and for a shared backend after.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{RateLimitKind, RateLimitReading, Reservation, Usage};
use tokio::time::Instant;

use super::admission::{Admitted, Backend, Key, KeyInner, Ticket};
use super::queue::Demand;
use super::quota::{Cost, Limits};
use super::state::{self, Lease, QuotaState, Settlement};
use super::{Inner, feedback};

/// How an attempt that reached the provider ended, for the reconcile stage.
pub(super) enum Outcome<'r> {
    Completed {
        usage: Option<Usage>,
        reading: Option<&'r RateLimitReading>,
    },
    RateLimited {
        kind: RateLimitKind,
        retry_after: Option<Duration>,
        reading: Option<&'r RateLimitReading>,
    },
    Transient,
    /// Abandoned at its deadline: a transient failure whose reservation stays charged (the
    /// provider may have done the work).
    TimedOut,
    Rejected,
    /// A stream the provider reported no usage for: `tokens` is the prompt's estimate plus the
    /// estimate of what arrived.
    Streamed {
        usage: Usage,
        reading: Option<&'r RateLimitReading>,
        end: StreamEnd,
    },
}

/// How a stream without reported usage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// With its completed event.
    Completed,
    /// Cut by a transient provider error after its first event.
    Cut,
    /// Dropped or cancelled by its reader.
    Abandoned,
}

/// A call holding quota at the provider. Dropped before [`finish`](Self::finish) (the caller's
/// future was dropped mid-call), it keeps everything charged (the provider may have done the
/// work) and frees the in-flight slot.
pub(super) struct InFlight<'a, 'c> {
    pub(super) scheduler: &'a Inner,
    pub(super) key: &'a Arc<Key>,
    pub(super) cost: Cost,
    /// The admission request, for the queue's correction to actual usage.
    pub(super) ticket: Ticket<'c>,
    pub(super) admitted: Admitted,
    pub(super) reservation: Option<Reservation>,
    pub(super) done: bool,
}

impl InFlight<'_, '_> {
    fn settlement(&self, actual_tokens: u64) -> Settlement {
        Settlement {
            actual_tokens,
            refund_unused: self.key.quota.refund_unused,
        }
    }

    /// Corrects the queue's charge of the call's client from the estimate to what the call used
    /// (its reported usage; nothing for an attempt the provider refused). Both backends: the
    /// queue is this process's own.
    fn correct_queue(&self, inner: &mut KeyInner, outcome: &Outcome<'_>) {
        let Some(charged) = self.admitted.units else {
            return;
        };
        let used = match outcome {
            Outcome::Completed { usage: None, .. } => return,
            Outcome::Completed { usage: Some(u), .. } | Outcome::Streamed { usage: u, .. } => {
                Demand {
                    prompt: u.prompt_tokens,
                    completion: u.completion_tokens,
                }
            }
            _ => Demand::default(),
        };
        let t = &self.ticket;
        let used = inner.queue.units(used, t.weight);
        let delta = i64::try_from(used)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(charged).unwrap_or(i64::MAX));
        inner.queue.correct(t.client, t.priority, delta);
    }

    /// Reconciles quota to the outcome, learns from the provider, updates the breaker and
    /// counters. Returns the reservation (to settle), the pause a 429 imposed, and what a shared
    /// backend still has to be told. Synchronous, so the local path's future stays small.
    pub(super) fn finish(
        mut self,
        outcome: Outcome<'_>,
    ) -> (Option<Reservation>, Duration, Option<RemoteSettle>) {
        self.done = true;
        let actual = match &outcome {
            Outcome::Completed { usage, .. } => usage.map_or(self.cost.tokens, |u| u.total()),
            Outcome::Streamed { usage, .. } => usage.total(),
            Outcome::TimedOut => self.cost.tokens,
            // The provider rejected the attempt before generating: no tokens were used.
            _ => 0,
        };
        let settlement = self.settlement(actual);
        let scheduler = self.scheduler;
        let mut pause = Duration::ZERO;
        let mut lag = None;
        let (limits, reading, hintless) = {
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
                Outcome::Transient | Outcome::TimedOut => {
                    inner.stats.transient_errors += 1;
                    inner.stats.timeouts += u64::from(matches!(outcome, Outcome::TimedOut));
                    inner.breaker.failure(now, &scheduler.retry);
                    None
                }
                Outcome::Rejected => {
                    inner.breaker.success();
                    None
                }
                Outcome::Streamed { reading, end, .. } => {
                    match end {
                        StreamEnd::Completed => inner.stats.succeeded += 1,
                        StreamEnd::Cut => inner.stats.transient_errors += 1,
                        StreamEnd::Abandoned => {}
                    }
                    if *end == StreamEnd::Cut {
                        inner.breaker.failure(now, &scheduler.retry);
                    } else {
                        // The provider streamed: it is reachable.
                        inner.breaker.success();
                    }
                    *reading
                }
            };
            let failed = matches!(
                outcome,
                Outcome::Transient
                    | Outcome::TimedOut
                    | Outcome::Streamed {
                        end: StreamEnd::Cut,
                        ..
                    }
            );
            if self.admitted.probe && !failed {
                inner.breaker.success();
            }
            let learned = reading.is_some_and(|r| {
                self.key.quota.learn_from_headers
                    && feedback::learn(&mut inner.learned, r, self.key.quota.period)
            });
            // The provider answered (with or without headers): the probe has taught what it can.
            // (A key in debt keeps probing until a success ends the debt.)
            let probed = inner.probing
                && inner.debt.is_none()
                && matches!(
                    outcome,
                    Outcome::Completed { .. }
                        | Outcome::RateLimited { .. }
                        | Outcome::Streamed { .. }
                );
            if probed {
                inner.probing = false;
            }
            if learned || probed {
                inner.limits =
                    feedback::effective_limits(&self.key.quota, inner.learned, inner.probing);
            }
            // What the answer shows beyond the headers: the cold start ends, a success ends a
            // debt and feeds inference, a 429 without a hint starts (or continues) a debt.
            let mut hintless = None;
            match &outcome {
                Outcome::Completed { .. } => {
                    lag = inner.first_answer(now);
                    inner.succeeded(&self.key.quota, now, &self.admitted, reading);
                }
                Outcome::RateLimited {
                    kind, retry_after, ..
                } => {
                    lag = inner.first_answer(now);
                    let told = retry_after.or_else(|| reading.and_then(|r| r.retry_after));
                    if told.is_none() {
                        pause = inner.refused_without_hint(
                            &self.key.quota,
                            now,
                            self.admitted.at,
                            *kind,
                            self.cost,
                        );
                        hintless = Some(*kind);
                    }
                }
                _ => {}
            }
            let limits = inner.limits;
            if let Backend::Local = scheduler.backend {
                inner.buckets.settle(now, &limits, self.cost, settlement);
            }
            self.correct_queue(inner, &outcome);
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
                kind, retry_after, ..
            } = &outcome
                && let Some(told) = retry_after.or_else(|| reading.and_then(|r| r.retry_after))
            {
                // The provider said when: the key pauses that long, and its bucket holds no
                // more than that implies.
                pause = told;
                inner.buckets.pause_until(state::instant_after(now, pause));
                if let Backend::Local = scheduler.backend {
                    inner
                        .buckets
                        .after_429(now, &limits, *kind, self.cost, told);
                }
            }
            inner.queue.notify_head();
            (limits, reading, hintless)
        };
        // A shared backend drains what this process drained: a report of nothing left.
        let reading = match hintless {
            Some(kind) => {
                let mut drained = reading.cloned().unwrap_or_default();
                for &d in state::KeyBuckets::dimensions_of(kind) {
                    if d == 0 {
                        drained.remaining_requests = Some(0);
                    } else {
                        drained.remaining_tokens = Some(0);
                    }
                }
                Some(drained)
            }
            None => reading.cloned(),
        };
        let remote = match &scheduler.backend {
            Backend::Local => None,
            Backend::Shared { state, .. } => Some(RemoteSettle {
                state: state.clone(),
                key: self.key.clone(),
                lease: self.admitted.lease,
                limits,
                settlement,
                reading,
                pause,
                lag,
            }),
        };
        (self.reservation.take(), pause, remote)
    }
}

/// An [`InFlight`] lifted off its borrows, so a stream that outlives the call's future can hold
/// it; [`resume`](Self::resume) puts it back for the reconcile stage.
pub(super) struct Parked {
    cost: Cost,
    demand: Demand,
    weight: NonZeroU32,
    priority: u8,
    admitted: Admitted,
    reservation: Option<Reservation>,
}

impl InFlight<'_, '_> {
    /// Lifts the guard off its borrows; the parked state is settled when resumed.
    pub(super) fn park(mut self) -> Parked {
        self.done = true;
        Parked {
            cost: self.cost,
            demand: self.ticket.demand,
            weight: self.ticket.weight,
            priority: self.ticket.priority,
            admitted: self.admitted,
            reservation: self.reservation.take(),
        }
    }
}

impl Parked {
    /// The in-flight guard again, on the `scheduler`, `key` and queue `client` it was admitted
    /// on.
    pub(super) fn resume<'a>(
        self,
        scheduler: &'a Inner,
        key: &'a Arc<Key>,
        client: &'a str,
    ) -> InFlight<'a, 'a> {
        InFlight {
            scheduler,
            key,
            cost: self.cost,
            ticket: Ticket {
                cost: self.cost,
                demand: self.demand,
                client,
                weight: self.weight,
                priority: self.priority,
                retry: false,
                cancel: None,
            },
            admitted: self.admitted,
            reservation: self.reservation,
            done: false,
        }
    }
}

/// What a shared backend must be told after an attempt (settle, observe, pause).
pub(super) struct RemoteSettle {
    state: Arc<dyn QuotaState>,
    key: Arc<Key>,
    lease: Option<Lease>,
    limits: Limits,
    settlement: Settlement,
    reading: Option<RateLimitReading>,
    pause: Duration,
    /// The cold-start shift, at the key's first answer.
    lag: Option<Duration>,
}

impl RemoteSettle {
    /// Runs [`apply`](Self::apply) as its own task and waits for it: a caller that drops its
    /// future meanwhile does not abort the settle (the slot would stay held until its lease
    /// expired, and the token adjustment would be lost).
    pub(super) async fn apply_detached(self) {
        // A panic in the backend only loses this settle; the lease expiry covers the slot.
        let _ = tokio::spawn(self.apply()).await;
    }

    /// Runs [`apply`](Self::apply) on the current runtime without waiting (for a `Drop`, which
    /// cannot await); with no runtime the backend's lease expiry returns the slot.
    pub(super) fn apply_in_background(self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(self.apply());
        }
    }

    async fn apply(self) {
        let name = &*self.key.name;
        let mut errors = 0u64;
        if let Some(by) = self.lag {
            errors += u64::from(self.state.lag(name, &self.limits, by).await.is_err());
        }
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

impl Drop for InFlight<'_, '_> {
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
