//! The tool registry: an agent's tools by name, and the one place tool calls are executed.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use super::{Tool, ToolError};
use crate::agents::AgentConfigError;
use crate::history::truncate_at;
use crate::message::{ToolCall, ToolResult};
use crate::model::ToolSpec;

/// The output cap a new registry starts with, in characters (about 5,000 tokens): one runaway tool
/// output should not eat a conversation's token budget.
pub const DEFAULT_MAX_OUTPUT_CHARS: usize = 20_000;

/// An agent's tools, by unique name. Cheap to clone (tools are shared).
///
/// [`execute`](ToolRegistry::execute) never fails: every problem becomes a [`ToolResult`] with
/// `is_error: true` whose text the model can read and act on. Outputs (and error texts) longer
/// than the cap ([`DEFAULT_MAX_OUTPUT_CHARS`] unless changed) are cut and end with
/// `… [truncated N chars]`.
///
/// ```
/// use agent_core::tool::{ToolRegistry, TypedTool};
/// use agent_core::ToolCall;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add { a: i64, b: i64 }
///
/// let tools = ToolRegistry::new()
///     .with(TypedTool::new("add", "Adds two integers.", |x: Add| async move { Ok(x.a + x.b) }))
///     .unwrap();
/// assert_eq!(tools.specs()[0].name.as_ref(), "add");
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let ok = tools.execute(&ToolCall::new("c1", "add", r#"{"a":1,"b":2}"#)).await;
/// assert_eq!((ok.content.as_ref(), ok.is_error), ("3", false));
///
/// // A mistake by the model is a result it can read, not a panic.
/// let bad = tools.execute(&ToolCall::new("c2", "add", r#"{"a":"one","b":2}"#)).await;
/// assert!(bad.is_error);
/// assert!(bad.content.contains("invalid type: string \"one\", expected i64"), "{}", bad.content);
/// assert_eq!(bad.call_id.as_ref(), "c2");
/// # });
/// ```
#[derive(Clone)]
pub struct ToolRegistry {
    tools: Vec<(ToolSpec, Arc<dyn Tool>)>,
    max_output_chars: usize,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names().collect::<Vec<_>>())
            .field("max_output_chars", &self.max_output_chars)
            .finish()
    }
}

impl Default for ToolRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks a tool name against what providers accept (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
pub(crate) fn check_tool_name(name: &str) -> Result<(), AgentConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(AgentConfigError::InvalidToolName {
            name: name.to_owned(),
        })
    }
}

impl ToolRegistry {
    /// An empty registry with the default output cap.
    pub fn new() -> Self {
        Self {
            tools: Vec::new(),
            max_output_chars: DEFAULT_MAX_OUTPUT_CHARS,
        }
    }

    /// The registry with `tool` added. Fails on a duplicate or invalid name.
    pub fn with(mut self, tool: impl Tool + 'static) -> Result<Self, AgentConfigError> {
        self.insert(tool)?;
        Ok(self)
    }

    /// Adds `tool`. Fails, leaving the registry unchanged, when the name is taken or is not
    /// 1–64 letters, digits, `_` or `-`.
    pub fn insert(&mut self, tool: impl Tool + 'static) -> Result<(), AgentConfigError> {
        let spec = tool.spec();
        check_tool_name(&spec.name)?;
        if self.contains(&spec.name) {
            return Err(AgentConfigError::DuplicateTool {
                name: spec.name.to_string(),
            });
        }
        self.tools.push((spec, Arc::new(tool)));
        Ok(())
    }

    /// Caps each result's content at `max_chars` characters (`usize::MAX` for no cap).
    #[must_use]
    pub fn with_max_output_chars(mut self, max_chars: usize) -> Self {
        self.max_output_chars = max_chars;
        self
    }

    /// The specs to send to the model, in insertion order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|(spec, _)| spec.clone()).collect()
    }

    /// True when a tool called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tools.iter().any(|(spec, _)| &*spec.name == name)
    }

    /// The tool names, in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|(spec, _)| &*spec.name)
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Runs one call. Never fails and never panics: an unknown tool, bad arguments, a tool error
    /// or a panic inside the tool become an error result the model can read.
    pub async fn execute(&self, call: &ToolCall) -> ToolResult {
        let outcome = match self.tools.iter().find(|(spec, _)| spec.name == call.name) {
            None => Err(ToolError::UnknownTool {
                name: call.name.to_string(),
                available: self.names().collect::<Vec<_>>().join(", "),
            }),
            Some((_, tool)) => AssertUnwindSafe(tool.call(&call.arguments))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_owned());
                    Err(ToolError::Failed {
                        tool: call.name.to_string(),
                        message: format!("the tool panicked ({what})"),
                    })
                }),
        };
        let (content, is_error) = match outcome {
            Ok(text) => (text, false),
            Err(e) => (e.to_string(), true),
        };
        ToolResult {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: self.cap(content.into()),
            is_error,
        }
    }

    /// Runs `calls` concurrently; the results are in call order.
    pub async fn execute_all(&self, calls: &[ToolCall]) -> Vec<ToolResult> {
        futures::future::join_all(calls.iter().map(|c| self.execute(c))).await
    }

    fn cap(&self, text: Arc<str>) -> Arc<str> {
        match text.char_indices().nth(self.max_output_chars) {
            Some((byte, _)) => truncate_at(&text, byte),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::TypedTool;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Echo {
        text: String,
    }

    fn registry() -> ToolRegistry {
        ToolRegistry::new()
            .with(TypedTool::new("echo", "Echoes.", |e: Echo| async move {
                Ok(e.text)
            }))
            .unwrap()
            .with(TypedTool::new("boom", "Panics.", |_: Echo| async move {
                if true {
                    panic!("kaboom");
                }
                Ok(String::new())
            }))
            .unwrap()
    }

    #[test]
    fn duplicate_and_invalid_names_are_errors() {
        let err = registry()
            .with(TypedTool::new("echo", "again", |e: Echo| async move {
                Ok(e.text)
            }))
            .unwrap_err();
        assert_eq!(
            err,
            AgentConfigError::DuplicateTool {
                name: "echo".into()
            }
        );
        let err = ToolRegistry::new()
            .with(TypedTool::new("has space", "x", |e: Echo| async move {
                Ok(e.text)
            }))
            .unwrap_err();
        assert!(matches!(err, AgentConfigError::InvalidToolName { .. }));
        assert!(err.to_string().contains("has space"), "{err}");
    }

    #[tokio::test]
    async fn unknown_tools_and_panics_become_readable_results() {
        let tools = registry();
        let unknown = tools.execute(&ToolCall::new("1", "nope", "{}")).await;
        assert!(unknown.is_error);
        assert_eq!(
            &*unknown.content,
            "unknown tool 'nope'; available tools: echo, boom"
        );
        let boom = tools
            .execute(&ToolCall::new("2", "boom", r#"{"text":"x"}"#))
            .await;
        assert!(boom.is_error);
        assert!(
            boom.content.contains("panicked (kaboom)"),
            "{}",
            boom.content
        );
    }

    #[tokio::test]
    async fn output_is_capped_in_characters() {
        let tools = registry().with_max_output_chars(10);
        let text = "ü".repeat(25);
        let r = tools
            .execute(&ToolCall::new(
                "1",
                "echo",
                format!(r#"{{"text":"{text}"}}"#),
            ))
            .await;
        assert!(!r.is_error);
        assert_eq!(&*r.content, "üüüüüüüüüü… [truncated 15 chars]");
        let short = tools
            .execute(&ToolCall::new("2", "echo", r#"{"text":"0123456789"}"#))
            .await;
        assert_eq!(&*short.content, "0123456789");
    }

    #[tokio::test]
    async fn execute_all_keeps_call_order() {
        let tools = registry();
        let calls: Vec<ToolCall> = (0..5)
            .map(|i| ToolCall::new(format!("c{i}"), "echo", format!(r#"{{"text":"{i}"}}"#)))
            .collect();
        let results = tools.execute_all(&calls).await;
        let got: Vec<(&str, &str)> = results.iter().map(|r| (&*r.call_id, &*r.content)).collect();
        assert_eq!(
            got,
            [
                ("c0", "0"),
                ("c1", "1"),
                ("c2", "2"),
                ("c3", "3"),
                ("c4", "4")
            ]
        );
    }
}
