//! The LLM agent: a model, a system message, tools, a history policy and a bounded tool loop.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::structured::OutputSpec;
use super::{AgentConfigError, check_name};
use crate::agent::{Agent, AgentError, AgentReply, CallKind, TurnContext};
use crate::history::transcript::{body, speaker};
use crate::history::{HistoryPolicy, Unbounded, UnitKind, units};
use crate::message::{Content, Message, Role, ToolCall, ToolResult};
use crate::model::{ChatModel, ChatRequest, ResponseFormat, ToolSpec};
use crate::tool::ToolRegistry;
use crate::tool::check_tool_name;

/// Tool rounds an [`LlmAgent`] runs in one reply unless configured otherwise.
pub const DEFAULT_MAX_TOOL_ITERATIONS: u32 = 5;

/// The text of a handoff (and of its tool's result), AutoGen's default; `{target}` is replaced.
pub const HANDOFF_MESSAGE: &str =
    "Transferred to {target}, adopting the role of {target} immediately.";

/// An agent that answers with a chat model.
///
/// One reply: the [history policy](crate::HistoryPolicy) builds the view, the system message goes
/// first, and the model is called through [`TurnContext::complete`] (so every call is budgeted and
/// rate-limited), or through [`TurnContext::stream`] when built with
/// [`stream(true)`](LlmAgentBuilder::stream). When the model asks for tools, the agent runs them with its
/// [`ToolRegistry`], adds the call and its results to the reply and calls the model again, up to
/// [`max_tool_iterations`](LlmAgentBuilder::max_tool_iterations) rounds (default
/// [`DEFAULT_MAX_TOOL_ITERATIONS`]; AutoGen's default is 1 with no second call). If the last round
/// still ends in tool results, the final message is those results' text joined by newlines —
/// AutoGen's `reflect_on_tool_use=False` summary — so the loop never costs more than
/// `max_tool_iterations` model calls.
///
/// How the model sees the conversation: this agent's own messages as the assistant's; everyone
/// else's as user messages prefixed with the speaker's name (`"critic: …"`; a task from `"user"` is
/// not prefixed); another agent's tool calls and results as text. The final message's source is
/// this agent's name and it carries the call's usage.
///
/// Tools a model may call but another agent runs (AG2's `register_for_llm` on one agent,
/// `register_for_execution` on a [`UserProxy`](super::UserProxy)) are given with
/// [`external_tools`](LlmAgentBuilder::external_tools): a reply that calls one ends with the call
/// message. [`handoff`](LlmAgentBuilder::handoff) adds a `transfer_to_<target>` tool whose call
/// ends the reply with a [`Content::Handoff`] message (Swarm).
///
/// ```
/// use std::sync::Arc;
/// use agent_core::agents::LlmAgent;
/// use agent_core::tool::{ToolRegistry, TypedTool};
/// use agent_core::{testing::TestContext, Agent, Message, ScriptedModel, ToolCall};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add { a: i64, b: i64 }
///
/// let model = ScriptedModel::new("test/model")
///     .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a":2,"b":2}"#)])
///     .text("2 + 2 = 4");
/// let tools = ToolRegistry::new()
///     .with(TypedTool::new("add", "Adds.", |x: Add| async move { Ok(x.a + x.b) }))
///     .unwrap();
/// let agent = LlmAgent::builder("math", Arc::new(model.clone()))
///     .system_message("You add numbers.")
///     .tools(tools)
///     .build()
///     .unwrap();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let reply = agent.reply(&[Message::user("2+2?")], &TestContext::new()).await.unwrap();
/// // The tool call, its result, and the final answer.
/// assert_eq!(reply.messages.len(), 3);
/// assert_eq!(reply.messages[1].results()[0].content.as_ref(), "4");
/// assert_eq!(reply.last().unwrap().text(), Some("2 + 2 = 4"));
/// assert_eq!(reply.last().unwrap().source(), Some("math"));
/// // The second model call saw the tool result.
/// assert_eq!(model.requests()[1].messages.len(), 4);
/// # });
/// ```
pub struct LlmAgent {
    pub(super) name: Arc<str>,
    description: Arc<str>,
    system_message: Option<Message>,
    model: Arc<dyn ChatModel>,
    tools: ToolRegistry,
    external: Vec<Arc<str>>,
    handoffs: Vec<Handoff>,
    specs: Vec<ToolSpec>,
    history: Arc<dyn HistoryPolicy>,
    max_tool_iterations: u32,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    max_consecutive_auto_reply: Option<u32>,
    pub(super) output: Option<OutputSpec>,
    stream: bool,
}

#[derive(Debug, Clone)]
struct Handoff {
    tool: Arc<str>,
    target: Arc<str>,
    message: Arc<str>,
}

impl fmt::Debug for LlmAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmAgent")
            .field("name", &self.name)
            .field("model", &self.model.id())
            .field(
                "tools",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("max_tool_iterations", &self.max_tool_iterations)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .field("temperature", &self.temperature)
            .field(
                "max_consecutive_auto_reply",
                &self.max_consecutive_auto_reply,
            )
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Configures an [`LlmAgent`]; [`build`](LlmAgentBuilder::build) checks the configuration.
#[must_use]
pub struct LlmAgentBuilder {
    name: Arc<str>,
    model: Arc<dyn ChatModel>,
    description: Arc<str>,
    system_message: Option<Arc<str>>,
    tools: ToolRegistry,
    external: Vec<ToolSpec>,
    handoffs: Vec<(Arc<str>, Arc<str>)>,
    history: Arc<dyn HistoryPolicy>,
    max_tool_iterations: u32,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    max_consecutive_auto_reply: Option<u32>,
    output: Option<OutputSpec>,
    stream: bool,
}

impl fmt::Debug for LlmAgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmAgentBuilder")
            .field("name", &self.name)
            .field("model", &self.model.id())
            .finish_non_exhaustive()
    }
}

impl LlmAgent {
    /// Starts configuring an agent called `name` that answers with `model`.
    pub fn builder(name: impl Into<Arc<str>>, model: Arc<dyn ChatModel>) -> LlmAgentBuilder {
        LlmAgentBuilder {
            name: name.into(),
            model,
            description: Arc::from(""),
            system_message: None,
            tools: ToolRegistry::new(),
            external: Vec::new(),
            handoffs: Vec::new(),
            history: Arc::new(Unbounded),
            max_tool_iterations: DEFAULT_MAX_TOOL_ITERATIONS,
            max_completion_tokens: None,
            temperature: None,
            max_consecutive_auto_reply: None,
            output: None,
            stream: false,
        }
    }

    /// The model this agent calls.
    pub fn model(&self) -> &Arc<dyn ChatModel> {
        &self.model
    }

    /// Every tool the model is offered: registered, external, then handoff tools.
    pub fn tool_specs(&self) -> &[ToolSpec] {
        &self.specs
    }
}

impl LlmAgentBuilder {
    /// The system message sent first on every call.
    pub fn system_message(mut self, text: impl Into<Arc<str>>) -> Self {
        self.system_message = Some(text.into());
        self
    }

    /// What the agent does, for LLM speaker selection.
    pub fn description(mut self, text: impl Into<Arc<str>>) -> Self {
        self.description = text.into();
        self
    }

    /// The tools this agent runs itself.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// Tools the model may call that another agent runs (typically a
    /// [`UserProxy`](super::UserProxy) with the same registry): a reply calling one of them ends
    /// with the tool-call message, for the next speaker to answer.
    pub fn external_tools(mut self, specs: Vec<ToolSpec>) -> Self {
        self.external = specs;
        self
    }

    /// Lets the model hand the conversation to `target` by calling a `transfer_to_<target>` tool
    /// described by `description`. The reply then ends with a handoff message to `target`.
    pub fn handoff(
        mut self,
        target: impl Into<Arc<str>>,
        description: impl Into<Arc<str>>,
    ) -> Self {
        self.handoffs.push((target.into(), description.into()));
        self
    }

    /// What the model sees of the history (default [`Unbounded`]).
    pub fn history(mut self, policy: impl HistoryPolicy + 'static) -> Self {
        self.history = Arc::new(policy);
        self
    }

    /// Tool rounds per reply, at least 1 (default [`DEFAULT_MAX_TOOL_ITERATIONS`]).
    pub fn max_tool_iterations(mut self, rounds: u32) -> Self {
        self.max_tool_iterations = rounds;
        self
    }

    /// Completion-token limit of each call (the scheduler reserves this many).
    pub fn max_completion_tokens(mut self, max: u32) -> Self {
        self.max_completion_tokens = Some(max);
        self
    }

    /// Sampling temperature (0 or more).
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Automatic replies in a row the runtime allows before stopping the chat.
    pub fn max_consecutive_auto_reply(mut self, max: u32) -> Self {
        self.max_consecutive_auto_reply = Some(max);
        self
    }

    /// The agent's final reply is a `T`: every call asks for `T`'s JSON schema (derived by
    /// schemars, strict where the schema allows), a reply that does not decode as `T` goes back
    /// to the model with the error (at most
    /// [`max_format_retries`](Self::max_format_retries) times, each call charged to the budget),
    /// and the final message is [`Content::Structured`]. Read it with
    /// [`LlmAgent::reply_as`] or [`Message::value_as`].
    pub fn output<T: serde::de::DeserializeOwned + schemars::JsonSchema>(mut self) -> Self {
        let retries = self.output.as_ref().map(|o| o.max_retries);
        let mut spec = OutputSpec::typed::<T>();
        spec.max_retries = retries.unwrap_or(spec.max_retries);
        self.output = Some(spec);
        self
    }

    /// Asks for `format` as given (JSON mode, or a schema written by hand): replies must be JSON
    /// (an object for [`ResponseFormat::JsonObject`]); see [`output`](Self::output) for a typed
    /// one.
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        let retries = self.output.as_ref().map(|o| o.max_retries);
        let mut spec = OutputSpec::format(format);
        spec.max_retries = retries.unwrap_or(spec.max_retries);
        self.output = Some(spec);
        self
    }

    /// How many times a reply that does not fit the response format is sent back for
    /// correction (default [`DEFAULT_MAX_FORMAT_RETRIES`](super::DEFAULT_MAX_FORMAT_RETRIES)).
    /// Set before or after [`output`](Self::output).
    pub fn max_format_retries(mut self, retries: u32) -> Self {
        match &mut self.output {
            Some(spec) => spec.max_retries = retries,
            None => {
                let mut spec = OutputSpec::format(ResponseFormat::Text);
                spec.max_retries = retries;
                self.output = Some(spec);
            }
        }
        self
    }

    /// Streams every model call through [`TurnContext::stream`] (default off): a chat's event
    /// stream then carries the reply's tokens as they arrive. The reply itself is the same.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Checks the configuration: a non-empty name, at least one tool round, a usable temperature,
    /// and unique, valid tool names across registered, external and handoff tools.
    pub fn build(self) -> Result<LlmAgent, AgentConfigError> {
        check_name(&self.name)?;
        let invalid = |setting, problem: &str| AgentConfigError::InvalidSetting {
            agent: self.name.to_string(),
            setting,
            problem: problem.to_owned(),
        };
        if self.max_tool_iterations == 0 {
            return Err(invalid(
                "max_tool_iterations",
                "is 0; it must be at least 1 (one model call, one round of tools)",
            ));
        }
        if self.temperature.is_some_and(|t| !t.is_finite() || t < 0.0) {
            return Err(invalid(
                "temperature",
                "must be a finite number of 0 or more",
            ));
        }
        let handoffs: Vec<Handoff> = self
            .handoffs
            .iter()
            .map(|(target, _)| Handoff {
                tool: format!("transfer_to_{target}").into(),
                target: target.clone(),
                message: HANDOFF_MESSAGE.replace("{target}", target).into(),
            })
            .collect();
        let handoff_specs = handoffs
            .iter()
            .zip(&self.handoffs)
            .map(|(h, (_, desc))| ToolSpec {
                name: h.tool.clone(),
                description: if desc.is_empty() {
                    format!("Hand the conversation to {}.", h.target).into()
                } else {
                    desc.clone()
                },
                parameters: Arc::new(serde_json::json!({"type": "object", "properties": {}})),
            });
        let mut specs = self.tools.specs();
        for spec in self.external.iter().cloned().chain(handoff_specs) {
            check_tool_name(&spec.name)?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(AgentConfigError::DuplicateTool {
                    name: spec.name.to_string(),
                });
            }
            specs.push(spec);
        }
        Ok(LlmAgent {
            system_message: self.system_message.map(Message::system),
            external: self.external.iter().map(|s| s.name.clone()).collect(),
            name: self.name,
            description: self.description,
            model: self.model,
            tools: self.tools,
            handoffs,
            specs,
            history: self.history,
            max_tool_iterations: self.max_tool_iterations,
            max_completion_tokens: self.max_completion_tokens,
            temperature: self.temperature,
            max_consecutive_auto_reply: self.max_consecutive_auto_reply,
            output: self
                .output
                .filter(|o| !matches!(o.format, ResponseFormat::Text)),
            stream: self.stream,
        })
    }
}

/// How an agent named `own` shows `view` to its model, appended to `out`: its own messages as the
/// assistant's, everyone else's as user text naming the speaker, and tool traffic of others as
/// text (the model did not make those calls, and a provider would reject results for calls it
/// never made). Orphaned tool traffic is left out.
fn present(own: &str, view: &[Message], out: &mut Vec<Message>) {
    for unit in units(view) {
        let messages = &view[unit.range.clone()];
        match unit.kind {
            UnitKind::Orphan => {}
            UnitKind::ToolGroup if messages[0].source() == Some(own) => {
                out.extend_from_slice(messages);
            }
            UnitKind::ToolGroup | UnitKind::Message => {
                out.extend(messages.iter().map(|m| present_one(own, m)));
            }
        }
    }
}

fn present_one(own: &str, m: &Message) -> Message {
    if m.role == Role::System {
        return m.clone();
    }
    if m.source() == Some(own) {
        let content = match &m.content {
            Content::Text { .. } => m.content.clone(),
            _ => Content::Text {
                text: body(m).into(),
            },
        };
        return Message {
            role: Role::Assistant,
            content,
            ..m.clone()
        };
    }
    let from_user = m.role == Role::User && matches!(m.source(), None | Some("user"));
    if from_user && m.is_text() {
        return m.clone();
    }
    Message {
        role: Role::User,
        content: Content::Text {
            text: format!("{}: {}", speaker(m), body(m)).into(),
        },
        ..m.clone()
    }
}

impl LlmAgent {
    fn request(&self, messages: Vec<Message>) -> ChatRequest {
        let mut request = ChatRequest::new(messages).with_tools(self.specs.clone());
        request.max_completion_tokens = self.max_completion_tokens;
        request.temperature = self.temperature;
        request.response_format = self.output.as_ref().map(|o| o.format.clone());
        request
    }

    /// One model call of a reply: the completion's message, attributed to this agent.
    pub(super) async fn call(
        &self,
        ctx: &dyn TurnContext,
        messages: &[Message],
    ) -> Result<Message, AgentError> {
        let request = self.request(messages.to_vec());
        let completion = if self.stream {
            ctx.stream(&*self.model, request, CallKind::Reply)
                .await?
                .completion()
                .await?
        } else {
            ctx.complete(&*self.model, request, CallKind::Reply).await?
        };
        let mut message = completion.message.with_source(self.name.clone());
        message.role = Role::Assistant;
        message.usage = message.usage.or(completion.usage);
        Ok(message)
    }

    fn handoff_for(&self, tool: &str) -> Option<&Handoff> {
        self.handoffs.iter().find(|h| &*h.tool == tool)
    }

    /// Runs one round of calls concurrently; handoff tools answer with the handoff text.
    async fn run_calls(&self, calls: &[ToolCall]) -> Vec<ToolResult> {
        futures::future::join_all(calls.iter().map(|call| async move {
            match self.handoff_for(&call.name) {
                Some(h) => ToolResult {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: h.message.clone(),
                    is_error: false,
                },
                None => self.tools.execute(call).await,
            }
        }))
        .await
    }
}

#[async_trait]
impl Agent for LlmAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        self.max_consecutive_auto_reply
    }

    fn handoff_targets(&self) -> Vec<String> {
        self.handoffs.iter().map(|h| h.target.to_string()).collect()
    }

    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let view = self.history.view(history, ctx).await?;
        let mut messages = Vec::with_capacity(view.len() + 3);
        messages.extend(self.system_message.clone());
        present(&self.name, &view, &mut messages);
        let mut reply = Vec::new();
        for round in 1..=self.max_tool_iterations {
            let mut message = self.call(ctx, &messages).await?;
            let calls = match &message.content {
                Content::ToolCalls { calls } if !calls.is_empty() => calls.clone(),
                Content::ToolCalls { .. } => {
                    // No calls in a tool-call message: nothing to run, nothing said.
                    message.content = Content::Text { text: "".into() };
                    reply.push(message);
                    return Ok(done(reply));
                }
                _ => {
                    let message = self.conformed(ctx, &mut messages, message).await?;
                    reply.push(message);
                    return Ok(done(reply));
                }
            };
            if calls.iter().any(|c| self.external.contains(&c.name)) {
                reply.push(message);
                return Ok(done(reply));
            }
            let results = Message::tool_results(self.name.clone(), self.run_calls(&calls).await);
            messages.push(message.clone());
            messages.push(results.clone());
            reply.push(message);
            reply.push(results);
            if let Some(h) = calls.iter().find_map(|c| self.handoff_for(&c.name)) {
                reply.push(Message::handoff(
                    self.name.clone(),
                    h.target.clone(),
                    h.message.clone(),
                ));
                return Ok(done(reply));
            }
            if round == self.max_tool_iterations {
                break;
            }
        }
        // Out of rounds with results pending: AutoGen's tool-call summary, no extra model call.
        let summary = reply
            .last()
            .map(|m| {
                m.results()
                    .iter()
                    .map(|r| &*r.content)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        reply.push(Message::assistant(self.name.clone(), summary));
        Ok(done(reply))
    }
}

/// A reply of `messages` (inner traffic, then the final message) written by the model.
fn done(messages: Vec<Message>) -> AgentReply {
    AgentReply {
        messages,
        from_human: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::CallKind;
    use crate::history::{LastN, is_well_paired};
    use crate::message::Usage;
    use crate::model::{Completion, FinishReason};
    use crate::scripted::ScriptedModel;
    use crate::testing::TestContext;
    use crate::tool::TypedTool;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Add {
        a: i64,
        b: i64,
    }

    fn tools() -> ToolRegistry {
        ToolRegistry::new()
            .with(TypedTool::new("add", "Adds.", |x: Add| async move {
                Ok(x.a + x.b)
            }))
            .unwrap()
    }

    fn agent(model: &ScriptedModel) -> LlmAgentBuilder {
        LlmAgent::builder("math", Arc::new(model.clone()))
            .system_message("sys")
            .tools(tools())
    }

    #[tokio::test]
    async fn invalid_arguments_reach_the_model_as_a_readable_result() {
        let model = ScriptedModel::new("m")
            .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a": 1}"#)])
            .tool_calls(vec![ToolCall::new("c2", "add", r#"{"a": 1, "b": 2}"#)])
            .text("3");
        let ctx = TestContext::new();
        let reply = agent(&model)
            .build()
            .unwrap()
            .reply(&[Message::user("1+2?")], &ctx)
            .await
            .unwrap();
        // The second request ends with the error result for the first call.
        let second = &model.requests()[1];
        let sent = second.messages.last().unwrap().results()[0].clone();
        assert!(sent.is_error);
        assert_eq!(&*sent.call_id, "c1");
        assert!(
            sent.content
                .starts_with("invalid arguments for tool 'add': missing field `b`"),
            "{}",
            sent.content
        );
        assert!(
            sent.content.contains(r#""required":["a","b"]"#),
            "{}",
            sent.content
        );
        // The model corrected itself; the reply holds both rounds, paired, then the answer.
        assert_eq!(reply.messages.len(), 5);
        assert!(is_well_paired(&reply.messages));
        assert_eq!(&*reply.messages[3].results()[0].content, "3");
        assert_eq!(reply.last().unwrap().text(), Some("3"));
        assert!(ctx.calls().iter().all(|c| c.kind == CallKind::Reply));
        assert_eq!(ctx.budget().used().calls, 3);
    }

    #[tokio::test]
    async fn running_out_of_rounds_returns_the_tool_output_without_another_call() {
        let model = ScriptedModel::new("m").with_responder(|_| {
            Ok(Completion {
                message: Message::tool_calls(
                    "m",
                    vec![
                        ToolCall::new("x", "add", r#"{"a":1,"b":1}"#),
                        ToolCall::new("y", "add", r#"{"a":2,"b":2}"#),
                    ],
                ),
                usage: Some(Usage::new(5, 1)),
                finish_reason: FinishReason::ToolCalls,
                rate_limits: None,
                cached: false,
            })
        });
        let reply = agent(&model)
            .max_tool_iterations(2)
            .build()
            .unwrap()
            .reply(&[Message::user("loop")], &TestContext::new())
            .await
            .unwrap();
        assert_eq!(model.request_count(), 2);
        assert_eq!(reply.messages.len(), 5);
        let last = reply.last().unwrap();
        assert_eq!(last.text(), Some("2\n4"));
        assert_eq!(last.source(), Some("math"));
        assert_eq!(reply.messages[0].usage, Some(Usage::new(5, 1)));
    }

    #[tokio::test]
    async fn the_model_sees_others_as_named_users_and_its_own_words_as_assistant() {
        let model = ScriptedModel::new("m").text("ok");
        let result = |id: &str| ToolResult {
            call_id: id.into(),
            name: "add".into(),
            content: "2".into(),
            is_error: false,
        };
        let history = vec![
            Message::user("task"),
            Message::assistant("critic", "try harder"),
            Message::tool_calls("critic", vec![ToolCall::new("o1", "add", "{}")]),
            Message::tool_results("critic", vec![result("o1")]),
            Message::tool_calls("math", vec![ToolCall::new("m1", "add", "{}")]),
            Message::tool_results("proxy", vec![result("m1")]),
            Message::assistant("math", "it is 2"),
            Message::user_from("proxy", "thanks"),
        ];
        let reply = agent(&model)
            .build()
            .unwrap()
            .reply(&history, &TestContext::new())
            .await
            .unwrap();
        assert_eq!(reply.messages.len(), 1);
        let sent = &model.requests()[0].messages;
        let shown: Vec<(Role, String)> = sent
            .iter()
            .map(|m| (m.role, body(m).into_owned()))
            .collect();
        let expect = [
            (Role::System, "sys"),
            (Role::User, "task"),
            (Role::User, "critic: try harder"),
            (Role::User, "critic: [called tool add({})]"),
            (Role::User, "critic: [tool add returned] 2"),
            (Role::Assistant, "[called tool add({})]"),
            (Role::Tool, "[tool add returned] 2"),
            (Role::Assistant, "it is 2"),
            (Role::User, "proxy: thanks"),
        ];
        let expect: Vec<(Role, String)> = expect.iter().map(|(r, t)| (*r, t.to_string())).collect();
        assert_eq!(shown, expect);
        // The agent's own group is sent as real tool traffic, paired.
        assert!(sent[5].calls().len() == 1 && sent[6].results().len() == 1);
        assert!(is_well_paired(sent));
    }

    #[tokio::test]
    async fn the_history_policy_shapes_the_view_and_the_source_is_rewritten() {
        let model = ScriptedModel::new("test/model").text("hello");
        let history: Vec<Message> = (0..5).map(|i| Message::user(format!("m{i}"))).collect();
        let reply = agent(&model)
            .history(LastN::new(1))
            .max_completion_tokens(50)
            .temperature(0.5)
            .build()
            .unwrap()
            .reply(&history, &TestContext::new())
            .await
            .unwrap();
        let request = &model.requests()[0];
        assert_eq!(request.messages.len(), 2);
        assert_eq!(request.messages[1].text(), Some("m4"));
        assert_eq!(request.max_completion_tokens, Some(50));
        assert_eq!(request.temperature, Some(0.5));
        assert_eq!(request.tools.len(), 1);
        let last = reply.last().unwrap();
        assert_eq!(last.source(), Some("math"));
        assert!(last.usage.is_some());
    }

    #[tokio::test]
    async fn a_handoff_call_ends_the_reply_with_a_handoff() {
        let model = ScriptedModel::new("m").tool_calls(vec![
            ToolCall::new("h", "transfer_to_billing", "{}"),
            ToolCall::new("a", "add", r#"{"a":1,"b":1}"#),
        ]);
        let agent = agent(&model)
            .handoff("billing", "Billing questions.")
            .build()
            .unwrap();
        assert_eq!(agent.tool_specs().len(), 2);
        let reply = agent
            .reply(&[Message::user("refund?")], &TestContext::new())
            .await
            .unwrap();
        assert_eq!(model.request_count(), 1);
        assert_eq!(reply.messages.len(), 3);
        assert!(is_well_paired(&reply.messages[..2]));
        let results = reply.messages[1].results();
        assert_eq!(
            &*results[0].content,
            "Transferred to billing, adopting the role of billing immediately."
        );
        assert_eq!(&*results[1].content, "2");
        assert_eq!(
            reply.last().unwrap().content,
            Content::Handoff {
                target: "billing".into(),
                text: "Transferred to billing, adopting the role of billing immediately.".into()
            }
        );
    }

    #[tokio::test]
    async fn a_call_to_an_external_tool_is_left_for_the_executor() {
        let model =
            ScriptedModel::new("m").tool_calls(vec![ToolCall::new("c", "add", r#"{"a":1,"b":1}"#)]);
        let agent = LlmAgent::builder("assistant", Arc::new(model.clone()))
            .external_tools(tools().specs())
            .build()
            .unwrap();
        let reply = agent
            .reply(&[Message::user("1+1")], &TestContext::new())
            .await
            .unwrap();
        assert_eq!(reply.messages.len(), 1);
        assert_eq!(reply.messages[0].calls()[0].name.as_ref(), "add");
        assert_eq!(reply.messages[0].source(), Some("assistant"));
    }

    #[derive(Debug, PartialEq, serde::Deserialize, schemars::JsonSchema)]
    struct Verdict {
        approved: bool,
    }

    #[tokio::test]
    async fn a_reply_that_does_not_fit_goes_back_with_its_problem_then_fails_typed() {
        let model = ScriptedModel::new("m")
            .text("yes")
            .text(r#"{"approved": "yes"}"#)
            .text(r#"{"approved": true}"#);
        let ctx = TestContext::new();
        let agent = LlmAgent::builder("judge", Arc::new(model.clone()))
            .output::<Verdict>()
            .build()
            .unwrap();
        let typed = agent
            .reply_as::<Verdict>(&[Message::user("ok?")], &ctx)
            .await
            .unwrap();
        assert_eq!(typed.value, Verdict { approved: true });
        assert_eq!(
            typed.reply.messages.len(),
            1,
            "corrections stay out of the reply"
        );
        assert!(matches!(
            typed.reply.messages[0].content,
            Content::Structured { .. }
        ));
        // Every attempt was a call through the context, charged to the budget.
        assert_eq!(ctx.budget().used().calls, 3);
        let requests = model.requests();
        let correction = |i: usize| {
            requests[i]
                .messages
                .last()
                .unwrap()
                .text()
                .unwrap()
                .to_owned()
        };
        assert!(
            correction(1).contains("not valid JSON"),
            "{}",
            correction(1)
        );
        assert!(correction(2).contains("invalid type"), "{}", correction(2));
        assert!(requests.iter().all(|r| r.response_format.is_some()));

        // With one correction allowed, two bad replies fail with a typed error.
        let model = ScriptedModel::new("m").text("no").text("still no");
        let agent = LlmAgent::builder("judge", Arc::new(model.clone()))
            .max_format_retries(1)
            .output::<Verdict>()
            .build()
            .unwrap();
        let err = agent
            .reply(&[Message::user("ok?")], &TestContext::new())
            .await
            .unwrap_err();
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<crate::agents::StructuredOutputError>())
            .unwrap();
        assert_eq!(source.attempts, 2);
        assert_eq!(model.request_count(), 2);
    }

    #[test]
    fn build_rejects_what_cannot_work() {
        let model = ScriptedModel::new("m");
        let err = |b: LlmAgentBuilder| b.build().unwrap_err();
        assert_eq!(
            err(LlmAgent::builder(" ", Arc::new(model.clone()))),
            AgentConfigError::EmptyName
        );
        assert!(matches!(
            err(agent(&model).max_tool_iterations(0)),
            AgentConfigError::InvalidSetting {
                setting: "max_tool_iterations",
                ..
            }
        ));
        assert!(matches!(
            err(agent(&model).temperature(f32::NAN)),
            AgentConfigError::InvalidSetting {
                setting: "temperature",
                ..
            }
        ));
        assert_eq!(
            err(agent(&model).external_tools(tools().specs())),
            AgentConfigError::DuplicateTool { name: "add".into() }
        );
        assert_eq!(
            err(agent(&model).handoff("x", "").handoff("x", "")),
            AgentConfigError::DuplicateTool {
                name: "transfer_to_x".into()
            }
        );
        assert_eq!(
            err(agent(&model).handoff("the boss", "")),
            AgentConfigError::InvalidToolName {
                name: "transfer_to_the boss".into()
            }
        );
    }

    #[tokio::test]
    async fn a_streaming_agent_replies_as_a_calling_one_and_charges_alike() {
        let model = || {
            ScriptedModel::new("test/m")
                .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a":1,"b":2}"#)])
                .text("3")
        };
        let tools = ToolRegistry::new()
            .with(TypedTool::new("add", "Adds.", |x: Add| async move {
                Ok(x.a + x.b)
            }))
            .unwrap();
        let build = |stream| {
            LlmAgent::builder("math", Arc::new(model()))
                .tools(tools.clone())
                .stream(stream)
                .build()
                .unwrap()
        };
        let (called, streamed) = (TestContext::new(), TestContext::new());
        let whole = build(false)
            .reply(&[Message::user("1+2?")], &called)
            .await
            .unwrap();
        let parts = build(true)
            .reply(&[Message::user("1+2?")], &streamed)
            .await
            .unwrap();
        assert_eq!(whole, parts);
        assert_eq!(parts.last().unwrap().text(), Some("3"));
        assert_eq!(called.budget().used(), streamed.budget().used());
        assert_eq!(streamed.calls().len(), 2);
    }
}
