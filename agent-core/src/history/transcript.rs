//! Plain-text rendering of messages: for summary prompts, and for showing a model what other
//! agents did with their tools.

use std::borrow::Cow;
use std::fmt::Write;

use crate::message::{Content, Message, Role};

/// The message's content as one text: text as is, tool traffic and handoffs described.
pub(crate) fn body(m: &Message) -> Cow<'_, str> {
    match &m.content {
        Content::Text { text } | Content::Stop { text } | Content::Structured { text, .. } => {
            Cow::Borrowed(text)
        }
        Content::Handoff { target, text } => Cow::Owned(format!("[handoff to {target}] {text}")),
        Content::ToolCalls { calls } => {
            let mut out = String::new();
            for (i, c) in calls.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                let _ = write!(out, "[called tool {}({})]", c.name, c.arguments);
            }
            Cow::Owned(out)
        }
        Content::ToolResults { results } => {
            let mut out = String::new();
            for (i, r) in results.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                let verb = if r.is_error { "failed" } else { "returned" };
                let _ = write!(out, "[tool {} {verb}] {}", r.name, r.content);
            }
            Cow::Owned(out)
        }
    }
}

/// Who said it: the source, else the role.
pub(crate) fn speaker(m: &Message) -> &str {
    m.source().unwrap_or(match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    })
}

/// `speaker: body` lines, one message after another.
pub(crate) fn transcript<'a>(messages: impl IntoIterator<Item = &'a Message>) -> String {
    let mut out = String::new();
    for m in messages {
        let _ = writeln!(out, "{}: {}", speaker(m), body(m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ToolCall, ToolResult};

    #[test]
    fn describes_every_kind() {
        let t = transcript(&[
            Message::user("hi"),
            Message::tool_calls("a", vec![ToolCall::new("1", "add", r#"{"a":1}"#)]),
            Message::tool_results(
                "a",
                vec![ToolResult {
                    call_id: "1".into(),
                    name: "add".into(),
                    content: "oops".into(),
                    is_error: true,
                }],
            ),
            Message::handoff("a", "b", "yours"),
            Message::system("be brief"),
        ]);
        assert_eq!(
            t,
            "user: hi\na: [called tool add({\"a\":1})]\na: [tool add failed] oops\na: [handoff to b] yours\nsystem: be brief\n"
        );
    }
}
