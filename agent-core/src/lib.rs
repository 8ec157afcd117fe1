//! # agent-core
//!
//! Turnstile's vocabulary: [messages](Message), the [model interface](ChatModel), [agents](Agent)
//! and the [turn context](TurnContext) every model call goes through, [termination conditions](Termination),
//! [history policies](HistoryPolicy), [tools](Tool) and nested [budgets](Budget), plus the
//! built-in [agents]: [`LlmAgent`], [`UserProxy`] and [`FunctionAgent`].
//!
//! This crate has no scheduler, no HTTP and no Redis: a user who writes an agent or a termination
//! condition depends on `agent-core` alone. The runtime (`agent-runtime`) provides the scheduler
//! that implements [`TurnContext`], the chats, and the providers.

pub mod agent;
pub mod agents;
pub mod budget;
pub mod estimate;
pub mod history;
pub mod message;
pub mod model;
pub mod prices;
pub mod response_format;
pub mod scripted;
pub mod termination;
pub mod testing;
pub mod tool;

pub use agent::{
    Agent, AgentError, AgentReply, CallError, CallKind, CallStream, InputSource, QuotaDimension,
    TurnContext,
};
pub use agents::{
    AgentConfigError, FunctionAgent, HumanInputMode, LlmAgent, ScriptedInput,
    StructuredOutputError, TypedReply, UserProxy,
};
pub use budget::{
    Budget, BudgetDimension, BudgetExhausted, BudgetLimits, BudgetUsage, Charge, Price, PriceTable,
    Reservation,
};
pub use estimate::{CharsPerToken, TokenEstimator};
pub use history::HistoryPolicy;
pub use message::{Content, Message, Role, ToolCall, ToolResult, Usage};
pub use model::{
    CacheIdentity, ChatModel, ChatRequest, Completion, CompletionStream, FinishReason, ModelError,
    RateLimitKind, RateLimitReading, ResponseFormat, StreamEvent, ToolSpec,
};
pub use scripted::ScriptedModel;
pub use termination::{StopReason, Termination, TerminationConfigError, TerminationExt};
pub use tool::{Tool, ToolError, ToolRegistry, TypedTool};

/// Re-exported so implementors of the async traits need no direct dependency.
pub use async_trait::async_trait;
