//! The mock server's OpenAI wire format: chat-completion requests in, completions, SSE chunks and
//! error bodies out. Lenient on input (what real clients send), exact on output (what
//! `async-openai` and the official SDKs parse).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_core::{
    ChatRequest, FinishReason, Message, ResponseFormat, ToolCall, ToolResult, ToolSpec, Usage,
};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::provider::{Reply, ReplyBody};

/// A parsed `/v1/chat/completions` request.
#[derive(Debug)]
pub(crate) struct WireRequest {
    pub(crate) request: ChatRequest,
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

/// Reads a chat-completion request body; the error says what is wrong, for a 400.
pub(crate) fn parse_request(body: &[u8]) -> Result<WireRequest, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("`messages` must be a non-empty array")?;

    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    let mut pending_results: Vec<ToolResult> = Vec::new();
    let mut call_names: HashMap<String, Arc<str>> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}] has no `role`"))?;
        let name = message.get("name").and_then(Value::as_str);
        let text = text_of(message.get("content"));
        if role == "tool" {
            let call_id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("messages[{i}] (tool) has no `tool_call_id`"))?;
            pending_results.push(ToolResult {
                call_id: call_id.into(),
                name: call_names
                    .get(call_id)
                    .cloned()
                    .unwrap_or_else(|| "".into()),
                content: text.into(),
                is_error: false,
            });
            continue;
        }
        // Consecutive tool messages are one message of results, as our providers send them.
        if !pending_results.is_empty() {
            out.push(Message::tool_results(
                "tool",
                std::mem::take(&mut pending_results),
            ));
        }
        out.push(match role {
            "system" | "developer" => Message::system(text),
            "user" => Message::user_from(name.unwrap_or("user"), text),
            "assistant" => {
                let source = name.unwrap_or("assistant");
                let calls = tool_calls_of(message, i)?;
                if calls.is_empty() {
                    Message::assistant(source, text)
                } else {
                    for call in &calls {
                        call_names.insert(call.id.to_string(), call.name.clone());
                    }
                    Message::tool_calls(source, calls)
                }
            }
            other => return Err(format!("messages[{i}] has unknown role {other:?}")),
        });
    }
    if !pending_results.is_empty() {
        out.push(Message::tool_results("tool", pending_results));
    }

    let tools = value
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| tools.iter().filter_map(tool_of).collect())
        .unwrap_or_default();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| value.get(*key).and_then(Value::as_u64))
        .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    let mut request = ChatRequest::new(out).with_tools(tools);
    request.max_completion_tokens = max_tokens;
    request.response_format = response_format_of(value.get("response_format"))?;
    Ok(WireRequest {
        request,
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        stream: value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// `response_format`: `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
/// {"name", "schema", "strict"?, "description"?}}`; `text` or absent is free text.
fn response_format_of(format: Option<&Value>) -> Result<Option<ResponseFormat>, String> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let spec = format
                .get("json_schema")
                .ok_or("response_format of type json_schema has no `json_schema`")?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .ok_or("response_format.json_schema has no `name`")?;
            let schema = spec
                .get("schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            Ok(Some(ResponseFormat::JsonSchema {
                name: name.into(),
                description: spec
                    .get("description")
                    .and_then(Value::as_str)
                    .map(Into::into),
                schema: Arc::new(schema),
                strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
            }))
        }
        other => Err(format!(
            "response_format.type must be text, json_object or json_schema (got {other:?})"
        )),
    }
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn tool_calls_of(message: &Value, i: usize) -> Result<Vec<ToolCall>, String> {
    let Some(calls) = message.get("tool_calls").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    calls
        .iter()
        .map(|call| {
            let field = |path: &str| call.pointer(path).and_then(Value::as_str);
            match (field("/id"), field("/function/name")) {
                (Some(id), Some(name)) => Ok(ToolCall::new(
                    id,
                    name,
                    field("/function/arguments").unwrap_or("{}"),
                )),
                _ => Err(format!("messages[{i}] has a tool call without id or name")),
            }
        })
        .collect()
}

fn tool_of(tool: &Value) -> Option<ToolSpec> {
    let function = tool.get("function")?;
    Some(ToolSpec {
        name: function.get("name")?.as_str()?.into(),
        description: function
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        parameters: Arc::new(function.get("parameters").cloned().unwrap_or(json!({}))),
    })
}

fn created() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        // `Other` and reasons added later: the wire's plain end.
        _ => "stop",
    }
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total(),
    })
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

/// The `chat.completion` object for `reply`.
pub(crate) fn completion_json(id: &str, model: &str, reply: &Reply) -> Vec<u8> {
    let message = match &reply.body {
        ReplyBody::Text(text) => json!({"role": "assistant", "content": text}),
        ReplyBody::ToolCalls(calls) => {
            json!({"role": "assistant", "content": null, "tool_calls": tool_calls_json(calls)})
        }
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish(reply.finish_reason),
        }],
        "usage": usage_json(reply.usage),
    })
    .to_string()
    .into_bytes()
}

/// The start of a completion that never finishes: what a `malformed` fault sends.
pub(crate) fn malformed_json(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"unterminated"#
    )
    .into_bytes()
}

/// One SSE event carrying `value`.
fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// An SSE event whose data is not JSON: what a `malformed` fault streams.
pub(crate) fn malformed_event() -> Bytes {
    Bytes::from_static(b"data: {\"id\": chatcmpl-broken, \"choices\": [\n\n")
}

/// The SSE events of `reply` in order: the role, one event per token (what gets the per-token
/// latency), the finish reason, the usage (when asked for), `[DONE]`. Returns the events and the
/// index range of the token events.
pub(crate) fn sse_events(
    id: &str,
    model: &str,
    reply: &Reply,
    include_usage: bool,
) -> (Vec<Bytes>, std::ops::Range<usize>) {
    let created = created();
    let chunk = |delta: Value, finish_reason: Value| {
        event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }))
    };
    let mut events = Vec::with_capacity(reply.chunks.len() + 4);
    match &reply.body {
        ReplyBody::Text(_) => {
            events.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
        }
        ReplyBody::ToolCalls(calls) => {
            let heads: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"index": i, "id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": ""}})
                })
                .collect();
            events.push(chunk(
                json!({"role": "assistant", "tool_calls": heads}),
                Value::Null,
            ));
        }
    }
    let tokens_start = events.len();
    match &reply.body {
        ReplyBody::Text(_) => {
            for piece in &reply.chunks {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
        }
        ReplyBody::ToolCalls(calls) => {
            for (i, c) in calls.iter().enumerate() {
                let args = json!([{"index": i, "function": {"arguments": c.arguments}}]);
                events.push(chunk(json!({"tool_calls": args}), Value::Null));
            }
        }
    }
    let tokens = tokens_start..events.len();
    events.push(chunk(json!({}), json!(finish(reply.finish_reason))));
    if include_usage {
        events.push(event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_json(reply.usage),
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    (events, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_our_messages() {
        let body = br#"{
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "add "}, {"type": "text", "text": "1 and 2"}]},
                {"role": "assistant", "name": "writer", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"},
                {"role": "tool", "tool_call_id": "c9", "content": "?"},
                {"role": "user", "name": "critic", "content": "ok"}
            ],
            "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
            "max_tokens": 40,
            "stream": true,
            "stream_options": {"include_usage": true}
        }"#;
        let wire = parse_request(body).unwrap();
        assert!(wire.stream && wire.include_usage);
        assert_eq!(wire.model.as_deref(), Some("gpt-4o-mini"));
        let r = &wire.request;
        assert_eq!(r.max_completion_tokens, Some(40));
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.messages.len(), 5);
        assert_eq!(r.messages[1].text(), Some("add 1 and 2"));
        assert_eq!(r.messages[2].calls()[0].name.as_ref(), "add");
        let results = r.messages[3].results();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].name.as_ref(), "add");
        assert_eq!(results[1].name.as_ref(), "");
        assert_eq!(r.messages[4].source(), Some("critic"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(parse_request(b"{").unwrap_err().contains("not valid JSON"));
        assert!(
            parse_request(b"{\"messages\": []}")
                .unwrap_err()
                .contains("non-empty")
        );
        let unknown = br#"{"messages": [{"role": "wizard", "content": "x"}]}"#;
        assert!(parse_request(unknown).unwrap_err().contains("wizard"));
    }
}
