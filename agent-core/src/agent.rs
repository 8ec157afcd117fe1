//! The agent interface: [`Agent`], the [`TurnContext`] every model call goes through, and the
//! errors of a turn.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::budget::{Budget, BudgetExhausted};
use crate::estimate::TokenEstimator;
use crate::message::Message;
use crate::model::{ChatModel, ChatRequest, Completion, ModelError};

/// Why a model call is made. Every kind goes through the same pipeline and is charged to the
/// budget of the conversation that caused it; the kind only labels it in events and usage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallKind {
    /// An agent producing its reply (including tool-loop iterations).
    Reply,
    /// Choosing the next speaker in a group chat.
    SpeakerSelection,
    /// A history policy summarizing older messages.
    Summary,
    /// Reflecting on a finished chat to produce its summary.
    Reflection,
    /// A team's orchestrator planning or judging progress (a Magentic orchestrator's task and
    /// progress ledgers and its final answer).
    Orchestration,
    /// Anything else a user-written agent does.
    Other,
}

/// A quota limit a call can exceed ([`CallError::ExceedsQuota`]). The runtime's scheduler maps
/// its own dimensions onto this.
///
/// ```
/// use agent_core::QuotaDimension;
/// assert_eq!(QuotaDimension::TokensPerDay.to_string(), "tokens per day");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QuotaDimension {
    /// Requests per period.
    Requests,
    /// Tokens per period.
    Tokens,
    /// Requests per day.
    RequestsPerDay,
    /// Tokens per day.
    TokensPerDay,
}

impl std::fmt::Display for QuotaDimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaDimension::Requests => "requests",
            QuotaDimension::Tokens => "tokens",
            QuotaDimension::RequestsPerDay => "requests per day",
            QuotaDimension::TokensPerDay => "tokens per day",
        })
    }
}

/// What a [`TurnContext::complete`] call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The provider failed and the scheduler will not (or may no longer) retry.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The conversation's budget (or an ancestor's) refused the call. The chat stops with this
    /// as its reason.
    #[error(transparent)]
    BudgetExhausted(#[from] BudgetExhausted),
    /// The call's cost exceeds what the quota can ever admit (for example more tokens than the
    /// per-period limit). Shorten the prompt or lower `max_completion_tokens`.
    #[error(
        "request can never be admitted on quota '{key}': it needs {needed} {dimension} but that limit is {capacity}; shorten the prompt or lower max_completion_tokens"
    )]
    ExceedsQuota {
        /// The quota key.
        key: String,
        /// The limit the call exceeds.
        dimension: QuotaDimension,
        /// What the call needs.
        needed: u64,
        /// The bucket's capacity.
        capacity: u64,
    },
    /// The quota key's circuit breaker is open after repeated failures; calls fail fast until it
    /// half-opens.
    #[error(
        "circuit open for quota '{key}' after repeated provider failures; retry after {retry_after:?}"
    )]
    CircuitOpen {
        /// The quota key.
        key: String,
        /// When the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The scheduler's retry budget or attempt limit for this call ran out; `last` is the final
    /// provider error.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: ModelError,
    },
    /// The call was cancelled (while queued or in flight).
    #[error("model call cancelled")]
    Cancelled,
}

impl CallError {
    /// True when the error ends the conversation's budget (the chat should stop with a reason, not
    /// fail).
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self, CallError::BudgetExhausted(_))
    }
}

/// What can fail in an agent's turn.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AgentError {
    /// A model call failed.
    Call(CallError),
    /// Human input could not be read.
    Input(String),
    /// Anything else, described.
    Other(String),
    /// A failure with a typed cause, kept as the error's [`source`](std::error::Error::source) so
    /// callers can downcast it (a nested chat keeps its `ChatError` here).
    Failed {
        /// What was being done.
        context: String,
        /// The cause.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl From<CallError> for AgentError {
    fn from(e: CallError) -> Self {
        AgentError::Call(e)
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Call(e) => e.fmt(f),
            AgentError::Input(text) => write!(f, "human input failed: {text}"),
            AgentError::Other(text) => f.write_str(text),
            AgentError::Failed { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

// Written by hand rather than derived: thiserror would report the `Arc` itself as the source, so
// downcasting to the cause's type would fail.
impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Call(e) => e.source(),
            AgentError::Input(_) | AgentError::Other(_) => None,
            AgentError::Failed { source, .. } => Some(&**source),
        }
    }
}

impl AgentError {
    /// A failure while doing `context`, caused by `source` (kept for
    /// [`source`](std::error::Error::source) and downcasting).
    ///
    /// ```
    /// use std::error::Error;
    /// use agent_core::AgentError;
    ///
    /// let cause = std::io::Error::other("disk full");
    /// let err = AgentError::failed("saving notes", cause);
    /// assert_eq!(err.to_string(), "saving notes: disk full");
    /// assert!(err.source().unwrap().downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn failed(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AgentError::Failed {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// Everything an agent may use during one turn. **All model calls go through
/// [`complete`](TurnContext::complete)**: that is where the runtime charges the budget, waits for
/// quota, calls the provider, retries and reconciles usage.
#[async_trait]
pub trait TurnContext: Send + Sync {
    /// Calls `model` with `request` through the pipeline (budget → quota admission → provider →
    /// reconcile), on behalf of the current agent and conversation.
    async fn complete(
        &self,
        model: &dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
    ) -> Result<Completion, CallError>;

    /// The conversation this turn belongs to.
    fn conversation(&self) -> &str;

    /// The agent whose turn it is.
    fn agent(&self) -> &str;

    /// The conversation's budget (nested chats take a child of it).
    fn budget(&self) -> &Budget;

    /// The estimator used for admission, for policies that trim by tokens.
    fn estimator(&self) -> &dyn TokenEstimator;

    /// The concrete context, so runtime-provided agents (nested chats) can reach the runtime.
    fn as_any(&self) -> &dyn Any;
}

/// An agent's answer for one turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReply {
    /// The messages produced, oldest first: inner traffic (tool calls and results) then the final
    /// message. Empty means the agent has nothing to say (the chat treats it as a stop).
    pub messages: Vec<Message>,
    /// True when a human wrote the final message (resets `max_consecutive_auto_reply` counters).
    pub from_human: bool,
}

impl AgentReply {
    /// A reply of one message, not from a human.
    pub fn message(message: Message) -> Self {
        Self {
            messages: vec![message],
            from_human: false,
        }
    }

    /// The final message, if any.
    pub fn last(&self) -> Option<&Message> {
        self.messages.last()
    }
}

/// A participant in a conversation.
///
/// ```
/// use agent_core::{Agent, AgentError, AgentReply, Message, TurnContext};
///
/// struct Shout;
///
/// #[async_trait::async_trait]
/// impl Agent for Shout {
///     fn name(&self) -> &str { "shout" }
///     async fn reply(&self, history: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
///         let last = history.last().and_then(|m| m.text()).unwrap_or("").to_uppercase();
///         Ok(AgentReply::message(Message::assistant("shout", last)))
///     }
/// }
/// # let ctx = agent_core::testing::TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let reply = Shout.reply(&[Message::user("hi")], &ctx).await.unwrap();
/// assert_eq!(reply.last().unwrap().text(), Some("HI"));
/// # });
/// ```
#[async_trait]
pub trait Agent: Send + Sync {
    /// The agent's unique name in a chat.
    fn name(&self) -> &str;

    /// What the agent does (used by LLM speaker selection).
    fn description(&self) -> &str {
        ""
    }

    /// How many automatic replies in a row the runtime allows this agent before stopping the chat
    /// (AG2's `max_consecutive_auto_reply`; `None` = no cap). Human replies reset the count.
    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        None
    }

    /// Produces the agent's reply to the visible `history`. Model calls go through `ctx`.
    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError>;

    /// The agents this one can hand off to (Swarm-style `Content::Handoff` targets), so a chat
    /// with handoff selection can reject a target that is not a participant when it is built,
    /// not when the handoff happens. Default: none.
    fn handoff_targets(&self) -> Vec<String> {
        Vec::new()
    }

    /// Clears per-conversation state when a chat is reset. Default: nothing to clear.
    fn reset(&self) {}
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for Arc<A> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn description(&self) -> &str {
        (**self).description()
    }
    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        (**self).max_consecutive_auto_reply()
    }
    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        (**self).reply(history, ctx).await
    }
    fn handoff_targets(&self) -> Vec<String> {
        (**self).handoff_targets()
    }
    fn reset(&self) {
        (**self).reset()
    }
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for Box<A> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn description(&self) -> &str {
        (**self).description()
    }
    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        (**self).max_consecutive_auto_reply()
    }
    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        (**self).reply(history, ctx).await
    }
    fn handoff_targets(&self) -> Vec<String> {
        (**self).handoff_targets()
    }
    fn reset(&self) {
        (**self).reset()
    }
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for &A {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn description(&self) -> &str {
        (**self).description()
    }
    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        (**self).max_consecutive_auto_reply()
    }
    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        (**self).reply(history, ctx).await
    }
    fn handoff_targets(&self) -> Vec<String> {
        (**self).handoff_targets()
    }
    fn reset(&self) {
        (**self).reset()
    }
}

/// Where human input comes from (a terminal, a web form, or a script in tests).
#[async_trait]
pub trait InputSource: Send + Sync {
    /// Shows `prompt` and returns what the human typed. An empty string means "no input".
    async fn read(&self, prompt: &str) -> Result<String, AgentError>;
}

#[async_trait]
impl<I: InputSource + ?Sized> InputSource for Arc<I> {
    async fn read(&self, prompt: &str) -> Result<String, AgentError> {
        (**self).read(prompt).await
    }
}

#[async_trait]
impl<I: InputSource + ?Sized> InputSource for Box<I> {
    async fn read(&self, prompt: &str) -> Result<String, AgentError> {
        (**self).read(prompt).await
    }
}

#[async_trait]
impl<I: InputSource + ?Sized> InputSource for &I {
    async fn read(&self, prompt: &str) -> Result<String, AgentError> {
        (**self).read(prompt).await
    }
}
