//! The quota scheduler: the one pipeline every model call passes through.
//!
//! `budget → quota admission → provider → reconcile`, with exactly one retry loop around the
//! provider stage. (This file is the stable public surface; the stages live in sub-modules.)

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Budget, CallError, CallKind, Charge, CharsPerToken, ChatModel, ChatRequest, Completion,
    TokenEstimator,
};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "redis")]
pub mod redis_state;

/// Receives the life-cycle of one model call (the chats turn these into events).
pub trait CallObserver: Send + Sync {
    /// The call entered the admission queue.
    fn queued(&self, _key: &str) {}
    /// The call was admitted after waiting `wait`.
    fn admitted(&self, _key: &str, _wait: Duration) {}
    /// The call finished (successfully or not) after `attempts` provider attempts.
    fn finished(&self, _key: &str, _result: Result<&Completion, &CallError>, _attempts: u32) {}
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
}

impl fmt::Debug for ModelCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelCall")
            .field("model", &self.model.id())
            .field("kind", &self.kind)
            .field("conversation", &self.conversation)
            .field("agent", &self.agent)
            .field("priority", &self.priority)
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
        }
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
#[derive(Clone)]
pub struct QuotaScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    estimator: Arc<dyn TokenEstimator>,
}

impl fmt::Debug for QuotaScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaScheduler").finish_non_exhaustive()
    }
}

impl Default for QuotaScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl QuotaScheduler {
    /// A scheduler with no quotas configured.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                estimator: Arc::new(CharsPerToken::default()),
            }),
        }
    }

    /// The estimator used for admission.
    pub fn estimator(&self) -> &dyn TokenEstimator {
        &*self.inner.estimator
    }

    /// Runs one model call through the pipeline: budget → quota admission → provider → reconcile.
    pub async fn call(&self, call: ModelCall<'_>) -> Result<Completion, CallError> {
        // PLACEHOLDER PIPELINE (to be replaced by the real admission/retry stages).
        let estimate = self.inner.estimator.prompt_tokens(&call.request)
            + u64::from(call.request.max_completion_tokens.unwrap_or(0));
        let reservation = call.budget.try_reserve(Charge {
            calls: 1,
            tokens: estimate,
            cost_nanos: 0,
        })?;
        if let Some(o) = call.observer {
            o.queued(call.model.id());
            o.admitted(call.model.id(), Duration::ZERO);
        }
        let result = call
            .model
            .complete(call.request)
            .await
            .map_err(CallError::from);
        match &result {
            Ok(c) => {
                let usage = c.usage.unwrap_or_default();
                reservation.settle(Charge {
                    calls: 1,
                    tokens: usage.total(),
                    cost_nanos: call.budget.cost_nanos(call.model.id(), usage),
                });
            }
            Err(_) => reservation.settle(Charge {
                calls: 1,
                tokens: 0,
                cost_nanos: 0,
            }),
        }
        if let Some(o) = call.observer {
            o.finished(call.model.id(), result.as_ref(), 1);
        }
        result
    }
}
