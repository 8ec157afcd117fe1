//! The user proxy: a human's seat in a conversation, with AG2's human-input modes.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{AgentConfigError, check_name};
use crate::agent::{Agent, AgentError, AgentReply, InputSource, TurnContext};
use crate::message::Message;
use crate::tool::ToolRegistry;

/// When a [`UserProxy`] asks its human (AG2's `human_input_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HumanInputMode {
    /// Ask on every turn (AG2 `"ALWAYS"`, the default of AG2's `UserProxyAgent`).
    #[default]
    Always,
    /// Ask only when the last message is a termination message (AG2 `"TERMINATE"`).
    OnTerminate,
    /// Never ask; always reply automatically (AG2 `"NEVER"`).
    Never,
}

/// Prompt in [`HumanInputMode::Always`]; `{name}` and `{sender}` are replaced (AG2's wording).
pub const ALWAYS_PROMPT: &str = "Replying as {name}. Provide feedback to {sender}. Press enter to skip and use auto-reply, or type 'exit' to end the conversation: ";

/// Prompt in [`HumanInputMode::OnTerminate`] on a termination message; `{sender}` is replaced
/// (AG2's wording).
pub const ON_TERMINATE_PROMPT: &str =
    "Please give feedback to {sender}. Press enter or type 'exit' to stop the conversation: ";

type TerminationPredicate = dyn Fn(&Message) -> bool + Send + Sync;

/// Speaks for a human: asks an [`InputSource`] when its [`HumanInputMode`] says so, otherwise
/// runs the tool calls in the last message or sends its default auto-reply (AG2's
/// `UserProxyAgent`).
///
/// One turn, looking at the last message of the history (AG2's `check_termination_and_human_reply`
/// followed by the tool-call and default replies):
///
/// | Mode | Last message is a termination message | Otherwise |
/// |---|---|---|
/// | `Always` | ask; text → human reply; empty or `exit` → stop | ask; text → human reply; `exit` → stop; empty → auto-reply |
/// | `OnTerminate` | ask; text → human reply; empty or `exit` → stop | auto-reply |
/// | `Never` | stop | auto-reply |
///
/// *Auto-reply*: when the last message asks for tool calls, run them with this proxy's
/// [`ToolRegistry`] (a tool it does not have is an error result the model can read, as in AG2)
/// and reply with the results; otherwise reply with the default auto-reply text (AG2's default:
/// empty). Input is trimmed; `exit` must match exactly. A stop is a [`Content::Stop`] message with
/// text `exit`; every chat ends on it with
/// [`StopReason::StopRequested`](crate::StopReason::StopRequested). A reply the human typed (or a stop they chose) has `from_human: true`, which
/// resets the runtime's `max_consecutive_auto_reply` count.
///
/// Differences from AG2: the runtime, not the proxy, enforces `max_consecutive_auto_reply`, so
/// reaching it stops the chat in every mode (AG2 asks the human in `TERMINATE` mode first); and
/// the proxy's messages are user-role messages named after it.
///
/// [`Content::Stop`]: crate::Content::Stop
///
/// ```
/// use std::sync::Arc;
/// use agent_core::agents::{HumanInputMode, ScriptedInput, UserProxy};
/// use agent_core::{testing::TestContext, Agent, Content, Message};
///
/// let input = Arc::new(ScriptedInput::new(["looks good, ship it", "", "exit"]));
/// let human = UserProxy::builder("human")
///     .human_input_mode(HumanInputMode::Always)
///     .input(input.clone())
///     .default_auto_reply("continue")
///     .build()
///     .unwrap();
/// let history = [Message::assistant("writer", "draft v1")];
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let typed = human.reply(&history, &ctx).await.unwrap();
/// assert_eq!(typed.last().unwrap().text(), Some("looks good, ship it"));
/// assert!(typed.from_human);
/// let auto = human.reply(&history, &ctx).await.unwrap();
/// assert_eq!(auto.last().unwrap().text(), Some("continue"));
/// assert!(!auto.from_human);
/// let stop = human.reply(&history, &ctx).await.unwrap();
/// assert!(matches!(stop.last().unwrap().content, Content::Stop { .. }));
/// assert!(input.prompts()[0].starts_with("Replying as human. Provide feedback to writer."));
/// # });
/// ```
pub struct UserProxy {
    name: Arc<str>,
    description: Arc<str>,
    mode: HumanInputMode,
    input: Option<Arc<dyn InputSource>>,
    default_auto_reply: Arc<str>,
    tools: ToolRegistry,
    is_termination_msg: Arc<TerminationPredicate>,
    max_consecutive_auto_reply: Option<u32>,
}

impl fmt::Debug for UserProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserProxy")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("default_auto_reply", &self.default_auto_reply)
            .field("tools", &self.tools)
            .field(
                "max_consecutive_auto_reply",
                &self.max_consecutive_auto_reply,
            )
            .finish_non_exhaustive()
    }
}

/// Configures a [`UserProxy`]; [`build`](UserProxyBuilder::build) checks the configuration.
#[must_use]
pub struct UserProxyBuilder {
    name: Arc<str>,
    description: Arc<str>,
    mode: HumanInputMode,
    input: Option<Arc<dyn InputSource>>,
    default_auto_reply: Arc<str>,
    tools: ToolRegistry,
    is_termination_msg: Arc<TerminationPredicate>,
    max_consecutive_auto_reply: Option<u32>,
}

impl fmt::Debug for UserProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserProxyBuilder")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl UserProxy {
    /// Starts configuring a proxy called `name` (mode [`HumanInputMode::Always`] as in AG2).
    pub fn builder(name: impl Into<Arc<str>>) -> UserProxyBuilder {
        UserProxyBuilder {
            name: name.into(),
            description: Arc::from(""),
            mode: HumanInputMode::default(),
            input: None,
            default_auto_reply: Arc::from(""),
            tools: ToolRegistry::new(),
            is_termination_msg: Arc::new(Message::is_terminate),
            max_consecutive_auto_reply: None,
        }
    }

    /// Its human-input mode.
    pub fn human_input_mode(&self) -> HumanInputMode {
        self.mode
    }
}

impl UserProxyBuilder {
    /// When to ask the human.
    pub fn human_input_mode(mut self, mode: HumanInputMode) -> Self {
        self.mode = mode;
        self
    }

    /// Where the human's input comes from (required unless the mode is `Never`).
    pub fn input(mut self, input: impl InputSource + 'static) -> Self {
        self.input = Some(Arc::new(input));
        self
    }

    /// The text of an automatic reply when there are no tool calls to run (default empty, as AG2).
    pub fn default_auto_reply(mut self, text: impl Into<Arc<str>>) -> Self {
        self.default_auto_reply = text.into();
        self
    }

    /// The tools this proxy runs for other agents' tool calls.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// Decides whether a message is a termination message (default:
    /// [`Message::is_terminate`], a text message that is exactly `TERMINATE`).
    pub fn is_termination_msg(
        mut self,
        predicate: impl Fn(&Message) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.is_termination_msg = Arc::new(predicate);
        self
    }

    /// What the proxy does, for LLM speaker selection.
    pub fn description(mut self, text: impl Into<Arc<str>>) -> Self {
        self.description = text.into();
        self
    }

    /// Automatic replies in a row the runtime allows before stopping the chat (AG2's default is
    /// 100; here unset means no cap).
    pub fn max_consecutive_auto_reply(mut self, max: u32) -> Self {
        self.max_consecutive_auto_reply = Some(max);
        self
    }

    /// Checks the configuration: a non-empty name, and an input source unless the mode is `Never`.
    pub fn build(self) -> Result<UserProxy, AgentConfigError> {
        check_name(&self.name)?;
        if self.mode != HumanInputMode::Never && self.input.is_none() {
            return Err(AgentConfigError::MissingInput {
                agent: self.name.to_string(),
                mode: self.mode,
            });
        }
        Ok(UserProxy {
            name: self.name,
            description: self.description,
            mode: self.mode,
            input: self.input,
            default_auto_reply: self.default_auto_reply,
            tools: self.tools,
            is_termination_msg: self.is_termination_msg,
            max_consecutive_auto_reply: self.max_consecutive_auto_reply,
        })
    }
}

/// What the human answered.
enum Answer {
    Text(String),
    Empty,
    Exit,
}

impl UserProxy {
    async fn ask(&self, template: &str, sender: &str) -> Result<Answer, AgentError> {
        let Some(input) = &self.input else {
            // build() guarantees an input source for every mode that asks.
            return Ok(Answer::Empty);
        };
        let prompt = template
            .replace("{name}", &self.name)
            .replace("{sender}", sender);
        let text = input.read(&prompt).await?;
        Ok(match text.trim() {
            "" => Answer::Empty,
            "exit" => Answer::Exit,
            typed => Answer::Text(typed.to_owned()),
        })
    }

    fn human(&self, text: String) -> AgentReply {
        AgentReply {
            messages: vec![Message::user_from(self.name.clone(), text)],
            from_human: true,
        }
    }

    fn stop(&self, from_human: bool) -> AgentReply {
        AgentReply {
            messages: vec![Message::stop(self.name.clone(), "exit")],
            from_human,
        }
    }

    async fn auto_reply(&self, last: Option<&Message>) -> AgentReply {
        let message = match last.map(Message::calls) {
            Some(calls) if !calls.is_empty() => {
                Message::tool_results(self.name.clone(), self.tools.execute_all(calls).await)
            }
            _ => Message::user_from(self.name.clone(), self.default_auto_reply.clone()),
        };
        AgentReply {
            messages: vec![message],
            from_human: false,
        }
    }
}

#[async_trait]
impl Agent for UserProxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        self.max_consecutive_auto_reply
    }

    async fn reply(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let last = history.last();
        let terminating = last.is_some_and(|m| (self.is_termination_msg)(m));
        let sender = last.and_then(Message::source).unwrap_or("the conversation");
        let answer = match (self.mode, terminating) {
            (HumanInputMode::Never, true) => return Ok(self.stop(false)),
            (HumanInputMode::Never, false) | (HumanInputMode::OnTerminate, false) => {
                return Ok(self.auto_reply(last).await);
            }
            (HumanInputMode::Always, _) => self.ask(ALWAYS_PROMPT, sender).await?,
            (HumanInputMode::OnTerminate, true) => self.ask(ON_TERMINATE_PROMPT, sender).await?,
        };
        Ok(match answer {
            Answer::Text(text) => self.human(text),
            Answer::Exit => self.stop(true),
            // Enter on a termination message ends the chat (AG2 turns it into "exit").
            Answer::Empty if terminating => self.stop(true),
            Answer::Empty => self.auto_reply(last).await,
        })
    }
}

/// An [`InputSource`] that answers from a script and records the prompts it was shown, for tests
/// and examples. Reading past the end of the script is an [`AgentError::Input`].
///
/// ```
/// use agent_core::agents::ScriptedInput;
/// use agent_core::InputSource;
///
/// let input = ScriptedInput::new(["yes"]);
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(input.read("Proceed? ").await.unwrap(), "yes");
/// assert!(input.read("Again? ").await.is_err());
/// assert_eq!(input.prompts(), ["Proceed? ", "Again? "]);
/// # });
/// ```
#[derive(Debug, Default)]
pub struct ScriptedInput {
    state: Mutex<Script>,
}

#[derive(Debug, Default)]
struct Script {
    answers: VecDeque<String>,
    prompts: Vec<String>,
}

impl ScriptedInput {
    /// A script answering with `answers` in order.
    pub fn new<S: Into<String>>(answers: impl IntoIterator<Item = S>) -> Self {
        Self {
            state: Mutex::new(Script {
                answers: answers.into_iter().map(Into::into).collect(),
                prompts: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Script> {
        // A poisoned script is still readable; the panic that poisoned it is reported elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every prompt shown, oldest first.
    pub fn prompts(&self) -> Vec<String> {
        self.lock().prompts.clone()
    }

    /// Answers not yet given.
    pub fn remaining(&self) -> usize {
        self.lock().answers.len()
    }
}

#[async_trait]
impl InputSource for ScriptedInput {
    async fn read(&self, prompt: &str) -> Result<String, AgentError> {
        let mut script = self.lock();
        script.prompts.push(prompt.to_owned());
        script.answers.pop_front().ok_or_else(|| {
            AgentError::Input(format!(
                "the scripted input has no answer left for prompt {prompt:?}; add one to ScriptedInput::new"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Content, ToolCall};
    use crate::testing::TestContext;
    use crate::tool::TypedTool;

    fn proxy(mode: HumanInputMode, input: &Arc<ScriptedInput>) -> UserProxy {
        UserProxy::builder("human")
            .human_input_mode(mode)
            .input(input.clone())
            .default_auto_reply("go on")
            .build()
            .unwrap()
    }

    fn is_stop(r: &AgentReply) -> bool {
        matches!(r.last().map(|m| &m.content), Some(Content::Stop { .. }))
    }

    async fn turn(p: &UserProxy, last: Message) -> AgentReply {
        p.reply(&[Message::user("task"), last], &TestContext::new())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_a_text_terminate_is_a_termination_message() {
        let input = Arc::new(ScriptedInput::new(Vec::<String>::new()));
        let p = UserProxy::builder("human")
            .human_input_mode(HumanInputMode::Never)
            .input(input)
            .default_auto_reply("go on")
            .build()
            .unwrap();
        assert!(is_stop(
            &turn(&p, Message::assistant("bot", "TERMINATE")).await
        ));
        // The same text in a handoff or a stop message is not AG2's termination message.
        for last in [
            Message::handoff("bot", "human", "TERMINATE"),
            Message::stop("bot", "TERMINATE"),
        ] {
            let r = turn(&p, last).await;
            assert!(!is_stop(&r));
            assert_eq!(r.last().unwrap().text(), Some("go on"));
        }
    }

    #[tokio::test]
    async fn always_asks_every_turn_and_empty_means_auto_reply_unless_terminating() {
        let input = Arc::new(ScriptedInput::new(["", "", "  exit \n"]));
        let p = proxy(HumanInputMode::Always, &input);
        let auto = turn(&p, Message::assistant("bot", "hi")).await;
        assert_eq!(auto.last().unwrap().text(), Some("go on"));
        assert!(!auto.from_human);
        let ended = turn(&p, Message::assistant("bot", "TERMINATE")).await;
        assert!(is_stop(&ended) && ended.from_human);
        let exit = turn(&p, Message::assistant("bot", "hi")).await;
        assert!(is_stop(&exit) && exit.from_human);
        assert_eq!(input.prompts().len(), 3);
    }

    #[tokio::test]
    async fn on_terminate_asks_only_on_a_termination_message() {
        let input = Arc::new(ScriptedInput::new(["one more thing", ""]));
        let p = proxy(HumanInputMode::OnTerminate, &input);
        let auto = turn(&p, Message::assistant("bot", "working")).await;
        assert_eq!(auto.last().unwrap().text(), Some("go on"));
        assert!(input.prompts().is_empty());
        let typed = turn(&p, Message::assistant("bot", "TERMINATE")).await;
        assert_eq!(typed.last().unwrap().text(), Some("one more thing"));
        assert_eq!(typed.last().unwrap().source(), Some("human"));
        assert!(typed.from_human);
        assert_eq!(
            input.prompts()[0],
            "Please give feedback to bot. Press enter or type 'exit' to stop the conversation: "
        );
        let stop = turn(&p, Message::assistant("bot", "TERMINATE")).await;
        assert!(is_stop(&stop) && stop.from_human);
        // "TERMINATE" must be exact, as in AG2.
        let auto = turn(&p, Message::assistant("bot", "TERMINATE.")).await;
        assert!(!is_stop(&auto));
    }

    #[tokio::test]
    async fn never_runs_tool_calls_or_auto_replies_and_stops_on_termination() {
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct Q {
            q: String,
        }
        let tools = ToolRegistry::new()
            .with(TypedTool::new("lookup", "Looks up.", |x: Q| async move {
                Ok(format!("found {}", x.q))
            }))
            .unwrap();
        let p = UserProxy::builder("executor")
            .human_input_mode(HumanInputMode::Never)
            .tools(tools)
            .is_termination_msg(|m| m.text().is_some_and(|t| t.contains("DONE")))
            .build()
            .unwrap();
        let calls = Message::tool_calls(
            "bot",
            vec![
                ToolCall::new("1", "lookup", r#"{"q":"rust"}"#),
                ToolCall::new("2", "missing", "{}"),
            ],
        );
        let reply = turn(&p, calls.clone()).await;
        let results = reply.last().unwrap().results();
        assert_eq!(&*results[0].content, "found rust");
        assert!(results[1].is_error && results[1].content.contains("unknown tool 'missing'"));
        assert!(crate::history::is_well_paired(&[
            calls,
            reply.messages[0].clone()
        ]));
        let auto = turn(&p, Message::assistant("bot", "hmm")).await;
        assert_eq!(auto.last().unwrap().text(), Some(""));
        let stop = turn(&p, Message::assistant("bot", "all DONE")).await;
        assert!(is_stop(&stop) && !stop.from_human);
    }

    #[tokio::test]
    async fn input_failures_are_errors_and_build_needs_an_input_source() {
        let input = Arc::new(ScriptedInput::new(Vec::<String>::new()));
        let p = proxy(HumanInputMode::Always, &input);
        let err = p
            .reply(&[Message::user("x")], &TestContext::new())
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Input(_)), "{err}");
        let err = UserProxy::builder("h").build().unwrap_err();
        assert_eq!(
            err,
            AgentConfigError::MissingInput {
                agent: "h".into(),
                mode: HumanInputMode::Always
            }
        );
        assert!(
            UserProxy::builder("")
                .human_input_mode(HumanInputMode::Never)
                .build()
                .is_err()
        );
    }
}
