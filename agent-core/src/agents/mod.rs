//! Built-in agents: an LLM agent, a user proxy, and a function agent.
//!
//! - [`LlmAgent`]: a system message, a model, tools, a history policy and a tool loop bounded by
//!   `max_tool_iterations` (AutoGen's `AssistantAgent`, AG2's `AssistantAgent`).
//! - [`UserProxy`]: speaks for a human through a pluggable [`InputSource`](crate::InputSource)
//!   (AG2's `UserProxyAgent`), runs tools the model asked for, or auto-replies.
//! - [`FunctionAgent`]: a closure over the history, for tests, benchmarks and glue.
//!
//! Every agent reports its `max_consecutive_auto_reply`; the runtime enforces it (a human reply
//! resets the count).

mod function;
mod llm;
mod user_proxy;

pub use function::{FunctionAgent, IntoReply};
pub use llm::{DEFAULT_MAX_TOOL_ITERATIONS, HANDOFF_MESSAGE, LlmAgent, LlmAgentBuilder};
pub use user_proxy::{
    ALWAYS_PROMPT, HumanInputMode, ON_TERMINATE_PROMPT, ScriptedInput, UserProxy, UserProxyBuilder,
};

/// An agent or tool registry was configured in a way that cannot work. Returned by `build()` and
/// [`ToolRegistry::insert`](crate::tool::ToolRegistry::insert), never at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentConfigError {
    /// The agent's name is empty or blank.
    #[error("agent name is empty; give every agent a unique, non-empty name")]
    EmptyName,
    /// Two tools (or a tool and a handoff) share a name.
    #[error(
        "tool '{name}' is defined twice; tool names (handoffs included) must be unique within an agent"
    )]
    DuplicateTool {
        /// The repeated name.
        name: String,
    },
    /// A tool name providers would reject.
    #[error(
        "tool name '{name}' is invalid; use 1 to 64 ASCII letters, digits, '_' or '-' (what providers accept)"
    )]
    InvalidToolName {
        /// The name.
        name: String,
    },
    /// A setting is out of range.
    #[error("agent '{agent}': {setting} {problem}")]
    InvalidSetting {
        /// The agent.
        agent: String,
        /// The builder method.
        setting: &'static str,
        /// What is wrong and what would work.
        problem: String,
    },
    /// A user proxy that must ask a human has nowhere to ask.
    #[error(
        "user proxy '{agent}' uses HumanInputMode::{mode:?} but has no input source; call .input(...) or use HumanInputMode::Never"
    )]
    MissingInput {
        /// The agent.
        agent: String,
        /// Its mode.
        mode: HumanInputMode,
    },
}

/// Fails with [`AgentConfigError::EmptyName`] on a blank name.
fn check_name(name: &str) -> Result<(), AgentConfigError> {
    if name.trim().is_empty() {
        Err(AgentConfigError::EmptyName)
    } else {
        Ok(())
    }
}
