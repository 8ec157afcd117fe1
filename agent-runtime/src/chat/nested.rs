//! Nested chats: an agent whose reply is the summary of an inner chat, run on a child budget.

use std::fmt;
use std::sync::{Arc, Mutex};

use agent_core::{
    Agent, AgentError, AgentReply, BudgetLimits, CallError, Message, StopReason, TurnContext,
};
use async_trait::async_trait;

use super::group_chat::GroupChatBuilder;
use super::result::ChatResult;
use super::task::Task;
use crate::context::SchedulerContext;

/// Builds the inner chat and its task from the outer thread.
pub type NestedChatFactory = Arc<dyn Fn(&[Message]) -> (GroupChatBuilder, Task) + Send + Sync>;

/// An agent that answers by running an inner chat (AG2's `register_nested_chats`, AutoGen's
/// `SocietyOfMindAgent`).
///
/// On each turn it builds the inner chat with the factory, then runs it:
/// - on the **same scheduler** and under the **same conversation id** as the outer chat (so the
///   inner calls share the outer conversation's place in the queue);
/// - on a **child budget** `ctx.budget().child(name, limits)`: every inner call (replies,
///   selector, reflection) is charged to the child and to every ancestor, so the inner chat can
///   spend neither more than its limits nor more than the outer chat has left, and whatever it
///   does not use stays with the parent;
/// - cancelled together with the outer chat;
/// - with every inner call reported to the outer chat's usage and events under this agent's name.
///
/// The reply is the inner run's [summary](super::SummaryMethod) (configure it on the builder the
/// factory returns). When the inner chat stops because **its own** carve-out ran out, the reply
/// says so on a last line (`[nested chat '<name>' stopped early: <reason>]`) and the outer chat
/// goes on; when the **outer** budget ran out, or the run was cancelled, the turn fails with that
/// error and the outer chat stops with the same reason. [`last_result`](Self::last_result) gives
/// the whole inner result.
///
/// It needs the runtime's [`SchedulerContext`]; run it as a participant of a
/// [`GroupChat`](super::GroupChat).
pub struct NestedChatAgent {
    name: Arc<str>,
    description: Arc<str>,
    factory: NestedChatFactory,
    limits: BudgetLimits,
    last: Mutex<Option<ChatResult>>,
}

impl fmt::Debug for NestedChatAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NestedChatAgent")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl NestedChatAgent {
    /// An agent named `name` whose turns run the chat `factory` builds from the outer thread.
    /// The child budget is unlimited (only the parent's caps bind) until
    /// [`budget_limits`](Self::budget_limits) is set.
    pub fn new(
        name: impl Into<Arc<str>>,
        factory: impl Fn(&[Message]) -> (GroupChatBuilder, Task) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            description: Arc::from(""),
            factory: Arc::new(factory),
            limits: BudgetLimits::UNLIMITED,
            last: Mutex::new(None),
        }
    }

    /// What the agent does (shown to LLM speaker selection).
    #[must_use]
    pub fn with_description(mut self, description: impl Into<Arc<str>>) -> Self {
        self.description = description.into();
        self
    }

    /// The caps of the child budget each inner run gets.
    #[must_use]
    pub fn budget_limits(mut self, limits: BudgetLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The result of the latest inner run.
    pub fn last_result(&self) -> Option<ChatResult> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Agent for NestedChatAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let Some(outer) = ctx.as_any().downcast_ref::<SchedulerContext>() else {
            return Err(AgentError::Other(format!(
                "nested chat agent '{}' needs the runtime's SchedulerContext to reach the scheduler; run it as a participant of a GroupChat",
                self.name
            )));
        };
        let child = ctx.budget().child(self.name.clone(), self.limits);
        let (builder, task) = (self.factory)(history);
        let mut builder = builder
            .scheduler(outer.scheduler().clone())
            .budget(child.clone())
            .conversation_id(ctx.conversation())
            .parent_cancel(outer.cancel_token().clone());
        if let Some(observer) = outer.observer() {
            builder = builder.call_observer(observer.clone());
        }
        let mut chat = builder.build().map_err(|e| {
            AgentError::failed(
                format!("nested chat of '{}' is misconfigured", self.name),
                e,
            )
        })?;
        let result = chat
            .run(task)
            .await
            .map_err(|e| AgentError::failed(format!("nested chat of '{}' failed", self.name), e))?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        let mut text = result.summary;
        match result.stop_reason {
            StopReason::Cancelled => return Err(AgentError::Call(CallError::Cancelled)),
            // By identity: an ancestor may have the nested agent's name.
            StopReason::BudgetExhausted(e) if e.budget_id != child.id() => {
                return Err(AgentError::Call(CallError::BudgetExhausted(e)));
            }
            StopReason::BudgetExhausted(e) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("[nested chat '{}' stopped early: {e}]", self.name));
            }
            _ => {}
        }
        Ok(AgentReply::message(Message::assistant(
            self.name.clone(),
            text,
        )))
    }
}
