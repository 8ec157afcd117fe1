//! Messages: what agents say to each other and what models read.
//!
//! A [`Message`] is cheap to clone (every string and list inside it is reference counted), because
//! every turn builds a fresh view of the history. Its serde form is stable: it round-trips through
//! JSON unchanged, which is what chat save/load relies on.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who produced a message, in the sense chat-completion APIs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model.
    System,
    /// A human, a task, or another agent speaking to the model.
    User,
    /// The model's own words (or an agent speaking for itself).
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// One call of a tool requested by a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; a [`ToolResult`] refers back to it.
    pub id: Arc<str>,
    /// The tool's name.
    pub name: Arc<str>,
    /// The arguments as the model wrote them: a JSON text, not yet validated.
    pub arguments: Arc<str>,
}

impl ToolCall {
    /// A tool call with the given id, tool name and JSON argument text.
    pub fn new(
        id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        arguments: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

/// The outcome of one [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub call_id: Arc<str>,
    /// The tool's name.
    pub name: Arc<str>,
    /// What the tool returned, or a readable error the model can act on.
    pub content: Arc<str>,
    /// True when `content` describes an error (bad arguments, tool failure).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl ToolResult {
    /// A successful result of the call `call_id` to the tool `name`.
    ///
    /// ```
    /// use agent_core::{Message, ToolCall, ToolResult};
    ///
    /// let call = ToolCall::new("call_1", "add", r#"{"a": 2, "b": 3}"#);
    /// let result = ToolResult::new(call.id.clone(), call.name.clone(), "5");
    /// assert!(!result.is_error);
    /// let message = Message::tool_results("calculator", vec![result]);
    /// assert_eq!(message.results()[0].content.as_ref(), "5");
    /// ```
    pub fn new(
        call_id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        content: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            call_id: call_id.into(),
            name: name.into(),
            content: content.into(),
            is_error: false,
        }
    }

    /// A failed call: `message` says what went wrong, in words the model can act on.
    ///
    /// ```
    /// use agent_core::ToolResult;
    ///
    /// let result = ToolResult::error("call_1", "add", "argument 'b' is missing");
    /// assert!(result.is_error);
    /// ```
    pub fn error(
        call_id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        message: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            is_error: true,
            ..Self::new(call_id, name, message)
        }
    }
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Content {
    /// Plain text.
    Text {
        /// The text.
        text: Arc<str>,
    },
    /// A model asking for tools to be run.
    ToolCalls {
        /// The calls, in the order the model listed them.
        calls: Arc<[ToolCall]>,
    },
    /// Results of tool calls.
    ToolResults {
        /// One result per call.
        results: Arc<[ToolResult]>,
    },
    /// Control passes to another agent (Swarm-style handoff).
    Handoff {
        /// The agent that should speak next.
        target: Arc<str>,
        /// Text that goes with the handoff.
        text: Arc<str>,
    },
    /// The sender asks the conversation to stop.
    Stop {
        /// Why.
        text: Arc<str>,
    },
    /// A value matching a schema (a structured output): the JSON value, and its text as the
    /// model wrote it, which is what another model reads.
    Structured {
        /// The schema's name (see [`ResponseFormat`](crate::ResponseFormat)).
        schema: Arc<str>,
        /// The value.
        value: Arc<serde_json::Value>,
        /// The value's JSON text.
        text: Arc<str>,
    },
}

/// Token usage a model reported for one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

impl Usage {
    /// Usage from prompt and completion token counts.
    pub const fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
        }
    }

    /// Prompt plus completion tokens (saturating at `u64::MAX`).
    pub const fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Saturating: usage comes from providers and saved states, and a sum must never wrap.
impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, rhs: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(rhs.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(rhs.completion_tokens),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// One message in a conversation.
///
/// ```
/// use agent_core::{Message, Role};
///
/// let task = Message::user("Write a haiku about queues.");
/// let reply = Message::assistant("writer", "Patient lines of calls");
/// assert_eq!(reply.role, Role::Assistant);
/// assert_eq!(reply.source(), Some("writer"));
/// assert_eq!(reply.text(), Some("Patient lines of calls"));
///
/// // Cloning shares the text instead of copying it.
/// let copy = task.clone();
/// assert_eq!(copy, task);
///
/// // The JSON form round-trips.
/// let json = serde_json::to_string(&reply).unwrap();
/// assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), reply);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The chat-completion role.
    pub role: Role,
    /// The agent (or `"user"`) that produced the message, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    /// What the message carries.
    pub content: Content,
    /// Token usage of the model call that produced this message, if a model did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Message {
    /// A message with the given role, source and content, and no usage.
    pub fn new(role: Role, source: Option<Arc<str>>, content: Content) -> Self {
        Self {
            role,
            source,
            content,
            usage: None,
        }
    }

    /// A system message.
    pub fn system(text: impl Into<Arc<str>>) -> Self {
        Self::new(Role::System, None, Content::Text { text: text.into() })
    }

    /// A user message from the source `"user"` (a task, or a human).
    pub fn user(text: impl Into<Arc<str>>) -> Self {
        Self::new(
            Role::User,
            Some(Arc::from("user")),
            Content::Text { text: text.into() },
        )
    }

    /// A user-role text message attributed to `source`.
    pub fn user_from(source: impl Into<Arc<str>>, text: impl Into<Arc<str>>) -> Self {
        Self::new(
            Role::User,
            Some(source.into()),
            Content::Text { text: text.into() },
        )
    }

    /// An assistant text message from agent `source`.
    pub fn assistant(source: impl Into<Arc<str>>, text: impl Into<Arc<str>>) -> Self {
        Self::new(
            Role::Assistant,
            Some(source.into()),
            Content::Text { text: text.into() },
        )
    }

    /// An assistant message asking for tool calls.
    pub fn tool_calls(source: impl Into<Arc<str>>, calls: impl Into<Arc<[ToolCall]>>) -> Self {
        Self::new(
            Role::Assistant,
            Some(source.into()),
            Content::ToolCalls {
                calls: calls.into(),
            },
        )
    }

    /// A tool-role message carrying results.
    pub fn tool_results(
        source: impl Into<Arc<str>>,
        results: impl Into<Arc<[ToolResult]>>,
    ) -> Self {
        Self::new(
            Role::Tool,
            Some(source.into()),
            Content::ToolResults {
                results: results.into(),
            },
        )
    }

    /// An assistant message handing control to `target`.
    pub fn handoff(
        source: impl Into<Arc<str>>,
        target: impl Into<Arc<str>>,
        text: impl Into<Arc<str>>,
    ) -> Self {
        Self::new(
            Role::Assistant,
            Some(source.into()),
            Content::Handoff {
                target: target.into(),
                text: text.into(),
            },
        )
    }

    /// An assistant message asking the conversation to stop.
    pub fn stop(source: impl Into<Arc<str>>, text: impl Into<Arc<str>>) -> Self {
        Self::new(
            Role::Assistant,
            Some(source.into()),
            Content::Stop { text: text.into() },
        )
    }

    /// An assistant message carrying a structured value of schema `schema`; its text is the
    /// value's JSON.
    ///
    /// ```
    /// use agent_core::Message;
    ///
    /// #[derive(serde::Deserialize, PartialEq, Debug)]
    /// struct Point { x: i32, y: i32 }
    ///
    /// let m = Message::structured("geo", "Point", serde_json::json!({"x": 1, "y": 2}));
    /// assert_eq!(m.text(), Some(r#"{"x":1,"y":2}"#));
    /// assert_eq!(m.value_as::<Point>().unwrap().unwrap(), Point { x: 1, y: 2 });
    /// ```
    pub fn structured(
        source: impl Into<Arc<str>>,
        schema: impl Into<Arc<str>>,
        value: serde_json::Value,
    ) -> Self {
        Self::new(
            Role::Assistant,
            Some(source.into()),
            Content::Structured {
                schema: schema.into(),
                text: value.to_string().into(),
                value: Arc::new(value),
            },
        )
    }

    /// The structured value of a [`Content::Structured`] message, decoded as `T`; `None` for
    /// other kinds.
    pub fn value_as<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        match &self.content {
            Content::Structured { value, .. } => Some(T::deserialize(&**value)),
            _ => None,
        }
    }

    /// The same message with `usage` attached.
    #[must_use]
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The same message attributed to `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The source as a `&str`.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The text of a text, handoff or stop message; `None` for tool traffic.
    pub fn text(&self) -> Option<&str> {
        match &self.content {
            Content::Text { text }
            | Content::Stop { text }
            | Content::Handoff { text, .. }
            | Content::Structured { text, .. } => Some(text),
            Content::ToolCalls { .. } | Content::ToolResults { .. } => None,
        }
    }

    /// The tool calls this message asks for (empty for other kinds).
    pub fn calls(&self) -> &[ToolCall] {
        match &self.content {
            Content::ToolCalls { calls } => calls,
            _ => &[],
        }
    }

    /// The tool results this message carries (empty for other kinds).
    pub fn results(&self) -> &[ToolResult] {
        match &self.content {
            Content::ToolResults { results } => results,
            _ => &[],
        }
    }

    /// AG2's default `is_termination_msg`: a **text** message whose text is exactly `TERMINATE`
    /// (case-sensitive, no surrounding whitespace). Stop and handoff messages never match: a stop
    /// message ends a chat by itself, and a handoff is not a request to stop.
    ///
    /// The two-agent chat's default predicate and [`UserProxy`](crate::UserProxy)'s default
    /// termination test are both this function.
    ///
    /// ```
    /// use agent_core::Message;
    ///
    /// assert!(Message::assistant("a", "TERMINATE").is_terminate());
    /// assert!(!Message::assistant("a", "TERMINATE.").is_terminate());
    /// assert!(!Message::stop("a", "TERMINATE").is_terminate());
    /// assert!(!Message::handoff("a", "b", "TERMINATE").is_terminate());
    /// ```
    pub fn is_terminate(&self) -> bool {
        matches!(&self.content, Content::Text { text } if &**text == "TERMINATE")
    }

    /// True for a plain text message.
    pub fn is_text(&self) -> bool {
        matches!(self.content, Content::Text { .. })
    }

    /// Number of characters a token estimator should count for this message.
    pub fn char_len(&self) -> usize {
        match &self.content {
            Content::Text { text } | Content::Stop { text } => text.len(),
            Content::Structured { text, .. } => text.len(),
            Content::Handoff { target, text } => target.len() + text.len(),
            Content::ToolCalls { calls } => calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len() + c.id.len())
                .sum(),
            Content::ToolResults { results } => results
                .iter()
                .map(|r| r.content.len() + r.call_id.len())
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_content_kind_round_trips_through_json() {
        let messages = vec![
            Message::system("be brief"),
            Message::user("task"),
            Message::assistant("a", "hello").with_usage(Usage::new(3, 4)),
            Message::tool_calls("a", vec![ToolCall::new("c1", "add", r#"{"a":1}"#)]),
            Message::tool_results(
                "a",
                vec![ToolResult {
                    call_id: "c1".into(),
                    name: "add".into(),
                    content: "2".into(),
                    is_error: false,
                }],
            ),
            Message::handoff("a", "b", "over to you"),
            Message::stop("a", "TERMINATE"),
            Message::structured(
                "a",
                "Plan",
                serde_json::json!({"steps": ["a", "b"], "n": 2}),
            ),
        ];
        let json = serde_json::to_string(&messages).unwrap();
        let back: Vec<Message> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, messages);
        // And the JSON form is stable across a second trip.
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn clone_shares_text() {
        let m = Message::assistant("a", "x".repeat(1000));
        let c = m.clone();
        match (&m.content, &c.content) {
            (Content::Text { text: a }, Content::Text { text: b }) => assert!(Arc::ptr_eq(a, b)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn accessors_distinguish_kinds() {
        let h = Message::handoff("a", "b", "go");
        assert_eq!(h.text(), Some("go"));
        assert!(h.calls().is_empty());
        let t = Message::tool_calls("a", vec![ToolCall::new("1", "f", "{}")]);
        assert_eq!(t.text(), None);
        assert_eq!(t.calls().len(), 1);
        assert_eq!(Usage::new(1, 2) + Usage::new(3, 4), Usage::new(4, 6));
    }

    #[test]
    fn usage_sums_saturate_instead_of_overflowing() {
        let big = Usage::new(u64::MAX, u64::MAX - 1);
        assert_eq!(big.total(), u64::MAX);
        assert_eq!(big + Usage::new(1, 5), Usage::new(u64::MAX, u64::MAX));
        let mut sum = Usage::new(u64::MAX - 1, 0);
        sum += Usage::new(3, 2);
        assert_eq!(sum, Usage::new(u64::MAX, 2));
    }
}
