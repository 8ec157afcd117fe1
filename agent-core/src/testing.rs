//! Test support: a [`TurnContext`] that calls models directly.
//!
//! The runtime's scheduler is the real pipeline; this context exists so agents, history policies
//! and tools can be unit-tested with `agent-core` alone. It charges the [`Budget`] **by the
//! scheduler's rule** (docs/quota.md, "Budgets"), so an agent tested here sees the budget
//! behaviour it will see in production:
//!
//! - **Reserve before the call**: `{1 call, prompt estimate + max_completion_tokens, priced
//!   estimate}`, where a request without `max_completion_tokens` reserves
//!   [`DEFAULT_MAX_COMPLETION_TOKENS`] (256), as the scheduler's default quota does. A budget
//!   that cannot take the reserve fails the call with [`CallError::BudgetExhausted`] before the
//!   model is called.
//! - **Settle after it**: to the reported usage (cost priced with the budget's price table);
//!   without reported usage the estimate stands.
//! - **A failed call still counts**: the request reached the model, so it stays one call in the
//!   budget (its tokens and cost are released).
//!
//! What it does **not** do: no quota (no RPM/TPM buckets, no admission queue, no learning from
//! rate-limit headers), no retries (a transient error or a 429 is returned at once, where the
//! scheduler would retry it and charge each attempt as a call), no cancellation, no circuit
//! breaker. Use the runtime's `SchedulerContext` for those.

use std::any::Any;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::agent::{CallError, CallKind, TurnContext};
use crate::budget::{Budget, Charge};
use crate::estimate::{CharsPerToken, TokenEstimator};
use crate::message::Usage;
use crate::model::{ChatModel, ChatRequest, Completion, DEFAULT_MAX_COMPLETION_TOKENS};

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

/// A [`TurnContext`] for tests: direct model calls, the budget charged as the scheduler charges
/// it, calls recorded. See the [module docs](self) for what it does and does not model.
///
/// ```
/// use agent_core::testing::TestContext;
/// use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, Message, ModelError, ScriptedModel, TurnContext};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let budget = Budget::new("test", BudgetLimits::calls(10));
/// let ctx = TestContext::new().with_budget(budget.clone());
/// let model = ScriptedModel::new("m").error(ModelError::transient("overloaded"));
/// let request = ChatRequest::new(vec![Message::user("hi")]);
/// assert!(ctx.complete(&model, request, CallKind::Reply).await.is_err());
/// // No retry, and the failed attempt still counts as a call.
/// assert_eq!(model.request_count(), 1);
/// assert_eq!(budget.used().calls, 1);
/// # });
/// ```
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
        // The scheduler's reserve (agent-runtime's `QuotaScheduler::run`), step for step.
        let prompt = self.estimator.prompt_tokens(&request);
        let completion_cap = u64::from(
            request
                .max_completion_tokens
                .unwrap_or(DEFAULT_MAX_COMPLETION_TOKENS),
        );
        let reservation = self.budget.try_reserve(Charge {
            calls: 1,
            tokens: prompt.saturating_add(completion_cap),
            cost_nanos: self
                .budget
                .cost_nanos(model.id(), Usage::new(prompt, completion_cap)),
        })?;
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecordedCall {
                model: model.id().to_owned(),
                kind,
                request: request.clone(),
            });
        let completion = match model.complete(request).await {
            Ok(completion) => completion,
            Err(error) => {
                // The request was sent: it stays a call, as every scheduler attempt does.
                reservation.settle(Charge {
                    calls: 1,
                    tokens: 0,
                    cost_nanos: 0,
                });
                return Err(error.into());
            }
        };
        match completion.usage {
            Some(usage) => reservation.settle(Charge {
                calls: 1,
                tokens: usage.total(),
                cost_nanos: self.budget.cost_nanos(model.id(), usage),
            }),
            // Without reported usage the estimate stands.
            None => reservation.commit(),
        }
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
