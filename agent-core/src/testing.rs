//! Test support: a [`TurnContext`] that calls models directly.
//!
//! The runtime's scheduler is the real pipeline; this context exists so agents, history policies
//! and tools can be unit-tested with `agent-core` alone. It charges a [`Budget`] and records every
//! call it made, but enforces no quota and never retries.

use std::any::Any;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::agent::{CallError, CallKind, TurnContext};
use crate::budget::{Budget, Charge};
use crate::estimate::{CharsPerToken, TokenEstimator};
use crate::model::{ChatModel, ChatRequest, Completion};

/// One call recorded by [`TestContext`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// The model's id.
    pub model: String,
    /// Why the call was made.
    pub kind: CallKind,
    /// The request sent.
    pub request: ChatRequest,
}

/// A [`TurnContext`] for tests: direct model calls, budget charged, calls recorded.
#[derive(Debug, Clone)]
pub struct TestContext {
    conversation: Arc<str>,
    agent: Arc<str>,
    budget: Budget,
    estimator: CharsPerToken,
    calls: Arc<Mutex<Vec<RecordedCall>>>,
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TestContext {
    /// A context for agent `"agent"` in conversation `"test"` with an unlimited budget.
    pub fn new() -> Self {
        Self {
            conversation: Arc::from("test"),
            agent: Arc::from("agent"),
            budget: Budget::unlimited(),
            estimator: CharsPerToken::default(),
            calls: Arc::default(),
        }
    }

    /// Uses `budget`.
    #[must_use]
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Names the agent whose turn it is.
    #[must_use]
    pub fn with_agent(mut self, agent: impl Into<Arc<str>>) -> Self {
        self.agent = agent.into();
        self
    }

    /// Every call made through this context, oldest first.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl TurnContext for TestContext {
    async fn complete(
        &self,
        model: &dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
    ) -> Result<Completion, CallError> {
        let estimate = self.estimator.prompt_tokens(&request)
            + u64::from(request.max_completion_tokens.unwrap_or(0));
        let reservation = self.budget.try_reserve(Charge {
            calls: 1,
            tokens: estimate,
            cost_nanos: 0,
        })?;
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecordedCall {
                model: model.id().to_owned(),
                kind,
                request: request.clone(),
            });
        let completion = model.complete(request).await?;
        let usage = completion.usage.unwrap_or_default();
        reservation.settle(Charge {
            calls: 1,
            tokens: usage.total(),
            cost_nanos: self.budget.cost_nanos(model.id(), usage),
        });
        Ok(completion)
    }

    fn conversation(&self) -> &str {
        &self.conversation
    }

    fn agent(&self) -> &str {
        &self.agent
    }

    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn estimator(&self) -> &dyn TokenEstimator {
        &self.estimator
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
