//! Deterministic replies of the simulated provider: the same request always gets the same answer.
//!
//! The rules, in order:
//! 1. a request carrying at least `terminate_after` messages gets `… TERMINATE`;
//! 2. when the request offers tools and its last message says `call tool NAME {json args}` (NAME
//!    one of the tools), the reply is that tool call (arguments `{}` when none are given);
//! 3. when the last message carries tool results, the reply reports them:
//!    `Tool NAME returned CONTENT.`;
//! 4. when the request asks for a response format, the reply is JSON that fits it
//!    (`structured`);
//! 5. with scripted replies ([`SimConfig::with_replies`]), the next text in turn order;
//! 6. otherwise the reply is `Turn N, answering SOURCE: ` followed by filler words, cut to
//!    `reply_tokens` tokens.
//!
//! A reply is split into chunks of `chars_per_token` bytes; each chunk is one completion token
//! (and one streamed delta), so usage, latency and the scheduler's estimate all agree.

use std::sync::Arc;

use agent_core::{ChatRequest, Completion, Content, FinishReason, Message, Role, ToolCall, Usage};

use super::SimConfig;

const FILLER: [&str; 12] = [
    "queue", "token", "bucket", "minute", "reply", "agent", "limit", "quota", "turn", "model",
    "budget", "retry",
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplyBody {
    Text(String),
    ToolCalls(Vec<ToolCall>),
}

/// One generated answer, before delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) body: ReplyBody,
    /// Text pieces, one completion token each (empty for tool calls).
    pub(crate) chunks: Vec<String>,
    pub(crate) usage: Usage,
    pub(crate) finish_reason: FinishReason,
}

impl Reply {
    pub(crate) fn generate(config: &SimConfig, request: &ChatRequest, prompt_tokens: u64) -> Self {
        let per_token = config.estimator.chars_per_token.max(1) as usize;
        let count = request.messages.len();
        let last = request.messages.last();
        let limit = request.max_completion_tokens.map(|m| m as usize);

        if config.terminate_after.is_none_or(|n| count < n)
            && let Some(calls) = last.and_then(|m| tool_call_for(request, m, count))
        {
            let chars: usize = calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
            let usage = Usage::new(prompt_tokens, chars.div_ceil(per_token).max(1) as u64);
            return Self {
                body: ReplyBody::ToolCalls(calls),
                chunks: Vec::new(),
                usage,
                finish_reason: FinishReason::ToolCalls,
            };
        }

        let prefix = format!("Turn {count}, answering {}: ", who(last));
        let structured = request
            .response_format
            .as_ref()
            .and_then(|f| super::structured::reply_text(f, count));
        let (text, padded) = match last {
            _ if structured.is_some() => (structured.unwrap_or_default(), false),
            _ if config.terminate_after.is_some_and(|n| count >= n) => {
                (format!("{prefix}TERMINATE"), false)
            }
            Some(m) if !m.results().is_empty() => {
                let reports: Vec<String> = m
                    .results()
                    .iter()
                    .map(|r| format!("Tool {} returned {}.", r.name, r.content))
                    .collect();
                (reports.join(" "), false)
            }
            _ if !config.replies.is_empty() => {
                let turn = request
                    .messages
                    .iter()
                    .filter(|m| m.role != Role::System)
                    .count()
                    .saturating_sub(1);
                (
                    config.replies[turn % config.replies.len()].to_string(),
                    false,
                )
            }
            _ => (
                filler(&prefix, count, config.reply_tokens as usize * per_token),
                true,
            ),
        };
        let mut chunks = split(&text, per_token);
        if padded {
            chunks.truncate(config.reply_tokens as usize);
        }
        let mut finish_reason = FinishReason::Stop;
        if let Some(limit) = limit
            && chunks.len() > limit
        {
            chunks.truncate(limit);
            finish_reason = FinishReason::Length;
        }
        let text: String = chunks.concat();
        Self {
            usage: Usage::new(prompt_tokens, chunks.len() as u64),
            body: ReplyBody::Text(text),
            chunks,
            finish_reason,
        }
    }

    pub(crate) fn completion_tokens(&self) -> u64 {
        self.usage.completion_tokens
    }

    /// The reply as a completion from `source`.
    pub(crate) fn to_completion(
        &self,
        source: &Arc<str>,
        rate_limits: Option<agent_core::RateLimitReading>,
    ) -> Completion {
        let message = match &self.body {
            ReplyBody::Text(text) => Message::assistant(source.clone(), text.as_str()),
            ReplyBody::ToolCalls(calls) => Message::tool_calls(source.clone(), calls.clone()),
        };
        Completion {
            message: message.with_usage(self.usage),
            usage: Some(self.usage),
            finish_reason: self.finish_reason,
            rate_limits,
            cached: false,
        }
    }
}

fn who(last: Option<&Message>) -> String {
    match last {
        Some(m) => match (&m.source, m.role) {
            (Some(source), _) => source.to_string(),
            (None, Role::System) => "system".to_owned(),
            (None, Role::User) => "user".to_owned(),
            (None, Role::Assistant) => "assistant".to_owned(),
            (None, Role::Tool) => "tool".to_owned(),
            (None, _) => "someone".to_owned(),
        },
        None => "nobody".to_owned(),
    }
}

fn tool_call_for(request: &ChatRequest, last: &Message, count: usize) -> Option<Vec<ToolCall>> {
    if request.tools.is_empty() {
        return None;
    }
    let Content::Text { text } = &last.content else {
        return None;
    };
    let lower = text.to_ascii_lowercase();
    let start = lower.find("call tool ")? + "call tool ".len();
    let rest = &text[start..];
    let name_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let name = &rest[..name_end];
    let tool = request.tools.iter().find(|t| &*t.name == name)?;
    let args_text = rest[name_end..].trim_start();
    let arguments = if args_text.starts_with('{') {
        serde_json::Deserializer::from_str(args_text)
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "{}".to_owned())
    } else {
        "{}".to_owned()
    };
    Some(vec![ToolCall::new(
        format!("call_{count}"),
        tool.name.clone(),
        arguments,
    )])
}

fn filler(prefix: &str, seed: usize, target_bytes: usize) -> String {
    let mut text = prefix.to_owned();
    let mut i = seed;
    while text.len() < target_bytes {
        text.push_str(FILLER[i % FILLER.len()]);
        text.push(' ');
        i += 1;
    }
    text
}

/// Splits `text` into pieces of at least `per_token` bytes, at character boundaries.
fn split(text: &str, per_token: usize) -> Vec<String> {
    let mut chunks = Vec::with_capacity(text.len() / per_token + 1);
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if current.len() >= per_token {
            chunks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{ToolResult, ToolSpec};

    fn add_tool() -> ToolSpec {
        ToolSpec {
            name: "add".into(),
            description: "adds".into(),
            parameters: Arc::new(serde_json::json!({"type": "object"})),
        }
    }

    #[test]
    fn normal_replies_have_exactly_reply_tokens() {
        let config = SimConfig::default().with_reply_tokens(10);
        let request = ChatRequest::new(vec![Message::user("hello")]);
        let reply = Reply::generate(&config, &request, 7);
        assert_eq!(reply.usage, Usage::new(7, 10));
        assert_eq!(reply.chunks.len(), 10);
        let ReplyBody::Text(text) = &reply.body else {
            panic!("{reply:?}")
        };
        assert!(text.starts_with("Turn 1, answering user: "), "{text}");
        assert_eq!(text.len(), 40);
        // The same request gets the same reply.
        assert_eq!(Reply::generate(&config, &request, 7), reply);
    }

    #[test]
    fn max_completion_tokens_cuts_with_length() {
        let config = SimConfig::default().with_reply_tokens(10);
        let request = ChatRequest::new(vec![Message::user("hello")]).with_max_completion_tokens(3);
        let reply = Reply::generate(&config, &request, 7);
        assert_eq!(reply.usage.completion_tokens, 3);
        assert_eq!(reply.finish_reason, FinishReason::Length);
    }

    #[test]
    fn terminate_after_n_messages() {
        let config = SimConfig::default().with_terminate_after(3);
        let two = ChatRequest::new(vec![Message::user("a"), Message::assistant("bot", "b")]);
        let ReplyBody::Text(text) = Reply::generate(&config, &two, 1).body else {
            panic!()
        };
        assert!(!text.contains("TERMINATE"));
        let mut three = two.clone();
        three.messages.push(Message::user_from("critic", "c"));
        let reply = Reply::generate(&config, &three, 1);
        assert_eq!(
            reply.body,
            ReplyBody::Text("Turn 3, answering critic: TERMINATE".to_owned())
        );
        assert_eq!(reply.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn tool_calls_both_ways() {
        let config = SimConfig::default();
        let ask = ChatRequest::new(vec![Message::user(
            r#"Please call tool add {"a": 1, "b": 2} now"#,
        )])
        .with_tools(vec![add_tool()]);
        let reply = Reply::generate(&config, &ask, 1);
        assert_eq!(reply.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            reply.body,
            ReplyBody::ToolCalls(vec![ToolCall::new("call_1", "add", r#"{"a":1,"b":2}"#)])
        );

        // No tools offered, or an unknown tool: a normal reply.
        let no_tools = ChatRequest::new(ask.messages.clone());
        assert!(matches!(
            Reply::generate(&config, &no_tools, 1).body,
            ReplyBody::Text(_)
        ));
        let unknown =
            ChatRequest::new(vec![Message::user("call tool mul")]).with_tools(vec![add_tool()]);
        assert!(matches!(
            Reply::generate(&config, &unknown, 1).body,
            ReplyBody::Text(_)
        ));

        let back = ChatRequest::new(vec![
            Message::user("call tool add"),
            Message::tool_calls("bot", vec![ToolCall::new("call_1", "add", "{}")]),
            Message::tool_results(
                "bot",
                vec![ToolResult {
                    call_id: "call_1".into(),
                    name: "add".into(),
                    content: "3".into(),
                    is_error: false,
                }],
            ),
        ])
        .with_tools(vec![add_tool()]);
        assert_eq!(
            Reply::generate(&config, &back, 1).body,
            ReplyBody::Text("Tool add returned 3.".to_owned())
        );
    }

    #[test]
    fn chunks_respect_char_boundaries() {
        let chunks = split("héllo wörld", 4);
        assert_eq!(chunks.concat(), "héllo wörld");
        assert!(
            chunks
                .iter()
                .all(|c| c.len() >= 4 || c == chunks.last().unwrap())
        );
    }
}
