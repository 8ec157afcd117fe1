//! Tools: functions a model may call, with argument schemas from schemars.
//!
//! [`TypedTool`] turns an async closure over a `serde` + `schemars` argument type into a [`Tool`];
//! a [`ToolRegistry`] holds an agent's tools and runs the model's calls. A bad call never panics
//! and never aborts a chat: unknown tools, arguments that do not parse or do not match the schema,
//! failures and panics inside a tool all come back as a [`ToolResult`](crate::ToolResult) with
//! `is_error: true` and a text the model can read and act on.

use async_trait::async_trait;

use crate::model::ToolSpec;

mod registry;
mod typed;

pub(crate) use registry::check_tool_name;
pub use registry::{DEFAULT_MAX_OUTPUT_CHARS, ToolRegistry};
pub use typed::TypedTool;

/// Why a tool call failed. Every variant is turned into a tool result the model can read, never a
/// panic or an aborted chat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The model's arguments did not match the tool's schema.
    #[error(
        "invalid arguments for tool '{tool}': {message}. Expected arguments matching this JSON schema: {schema}"
    )]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What was wrong.
        message: String,
        /// The schema, so the model can correct itself.
        schema: String,
    },
    /// The model asked for a tool that does not exist.
    #[error("unknown tool '{name}'; available tools: {available}")]
    UnknownTool {
        /// The name asked for.
        name: String,
        /// The tools that exist, comma separated.
        available: String,
    },
    /// The tool ran and failed.
    #[error("tool '{tool}' failed: {message}")]
    Failed {
        /// The tool.
        tool: String,
        /// What went wrong.
        message: String,
    },
}

/// A tool a model can call. Most tools are a [`TypedTool`]; implement this trait directly for a
/// tool whose schema is not a Rust type.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and argument schema.
    fn spec(&self) -> ToolSpec;

    /// Runs the tool on the model's JSON argument text.
    async fn call(&self, arguments: &str) -> Result<String, ToolError>;
}

#[async_trait]
impl<T: Tool + ?Sized> Tool for std::sync::Arc<T> {
    fn spec(&self) -> ToolSpec {
        (**self).spec()
    }
    async fn call(&self, arguments: &str) -> Result<String, ToolError> {
        (**self).call(arguments).await
    }
}

#[async_trait]
impl<T: Tool + ?Sized> Tool for Box<T> {
    fn spec(&self) -> ToolSpec {
        (**self).spec()
    }
    async fn call(&self, arguments: &str) -> Result<String, ToolError> {
        (**self).call(arguments).await
    }
}

#[async_trait]
impl<T: Tool + ?Sized> Tool for &T {
    fn spec(&self) -> ToolSpec {
        (**self).spec()
    }
    async fn call(&self, arguments: &str) -> Result<String, ToolError> {
        (**self).call(arguments).await
    }
}
