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
mod structured;
mod user_proxy;

pub use function::{FunctionAgent, IntoReply};
pub use llm::{DEFAULT_MAX_TOOL_ITERATIONS, HANDOFF_MESSAGE, LlmAgent, LlmAgentBuilder};
pub use structured::{DEFAULT_MAX_FORMAT_RETRIES, StructuredOutputError, TypedReply};
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

#[cfg(test)]
mod forwarding_tests {
    //! Every trait an agent is built from works through `&T`, `Box<T>` and `Arc<T>`.
    use std::sync::Arc;

    use crate::history::{HistoryPolicy, Unbounded};
    use crate::testing::TestContext;
    use crate::tool::{Tool, TypedTool};
    use crate::{Agent, InputSource, Message};

    use super::{FunctionAgent, ScriptedInput};

    async fn name_and_reply(agent: impl Agent) -> (String, Option<String>) {
        let reply = agent
            .reply(&[Message::user("hi")], &TestContext::new())
            .await
            .unwrap();
        let text = reply.last().and_then(|m| m.text()).map(str::to_owned);
        (agent.name().to_owned(), text)
    }

    // Generic helpers, so the wrapper's own impl is the one called (a method call on `&x` would
    // auto-deref to `x`'s impl).
    async fn read(input: impl InputSource) -> String {
        input.read("?").await.unwrap()
    }

    async fn view(policy: impl HistoryPolicy, history: &[Message]) -> Vec<Message> {
        policy.view(history, &TestContext::new()).await.unwrap()
    }

    async fn spec_and_call(tool: impl Tool) -> (String, String) {
        let result = tool.call("[2, 3]").await.unwrap();
        (tool.spec().name.to_string(), result)
    }

    #[tokio::test]
    async fn agents_input_history_and_tools_forward_through_references_and_boxes() {
        let echo = FunctionAgent::new("echo", |h: &[Message]| {
            h.last().and_then(|m| m.text()).unwrap_or("").to_uppercase()
        });
        let expected = ("echo".to_owned(), Some("HI".to_owned()));
        assert_eq!(name_and_reply(&echo).await, expected);
        assert_eq!(name_and_reply(Box::new(&echo)).await, expected);
        assert_eq!(name_and_reply(Arc::new(&echo)).await, expected);

        let input = ScriptedInput::new(["one", "two"]);
        assert_eq!(read(&input).await, "one");
        let boxed: Box<dyn InputSource> = Box::new(&input);
        assert_eq!(read(boxed).await, "two");

        let history = [Message::user("a"), Message::user("b")];
        assert_eq!(view(&Unbounded, &history).await, history);

        let add = TypedTool::new("add", "Adds.", |a: (i64, i64)| async move {
            Ok::<_, String>(a.0 + a.1)
        });
        let expected = ("add".to_owned(), "5".to_owned());
        assert_eq!(spec_and_call(&add).await, expected);
    }
}
