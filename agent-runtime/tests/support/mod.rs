//! Test agents, conditions and input sources shared by the chat integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    Agent, AgentError, AgentReply, CallKind, ChatModel, ChatRequest, Completion, InputSource,
    Message, StopReason, Termination, TurnContext, Usage,
};
use async_trait::async_trait;

/// Replies `"<name> <n>"`, where n is the length of the history it saw. Deterministic and
/// stateless, so replays and reloads give identical transcripts.
#[derive(Debug, Clone)]
pub struct Echo {
    pub name: String,
    pub description: String,
    pub cap: Option<u32>,
}

impl Echo {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            description: format!("{name} helps"),
            cap: None,
        }
    }

    pub fn with_cap(mut self, cap: u32) -> Self {
        self.cap = Some(cap);
        self
    }
}

#[async_trait]
impl Agent for Echo {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        self.cap
    }
    async fn reply(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(Message::assistant(
            self.name.as_str(),
            format!("{} {}", self.name, history.len()),
        )))
    }
}

/// Replies with a scripted sequence of texts, then repeats the last one.
#[derive(Debug)]
pub struct Scripted {
    pub name: String,
    pub lines: Mutex<VecDeque<String>>,
    pub human: bool,
}

impl Scripted {
    pub fn new(name: &str, lines: &[&str]) -> Self {
        Self {
            name: name.into(),
            lines: Mutex::new(lines.iter().map(|s| s.to_string()).collect()),
            human: false,
        }
    }

    pub fn human(mut self) -> Self {
        self.human = true;
        self
    }
}

#[async_trait]
impl Agent for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    async fn reply(
        &self,
        _history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let mut lines = self.lines.lock().unwrap();
        let text = if lines.len() > 1 {
            lines.pop_front().unwrap()
        } else {
            lines.front().cloned().unwrap_or_default()
        };
        Ok(AgentReply {
            messages: vec![Message::assistant(self.name.as_str(), text)],
            from_human: self.human,
        })
    }
}

/// Calls its model with the whole history through the turn context (so the call goes through the
/// scheduler and is charged), and replies with the completion's text under its own name.
#[derive(Clone)]
pub struct ModelAgent {
    pub name: String,
    pub model: Arc<dyn ChatModel>,
}

impl std::fmt::Debug for ModelAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelAgent")
            .field("name", &self.name)
            .finish()
    }
}

impl ModelAgent {
    pub fn new(name: &str, model: impl ChatModel + 'static) -> Self {
        Self {
            name: name.into(),
            model: Arc::new(model),
        }
    }
}

#[async_trait]
impl Agent for ModelAgent {
    fn name(&self) -> &str {
        &self.name
    }
    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let completion = ctx
            .complete(
                &*self.model,
                ChatRequest::new(history.to_vec()),
                CallKind::Reply,
            )
            .await?;
        let mut message = completion.message.with_source(self.name.as_str());
        message.usage = completion.usage;
        Ok(AgentReply::message(message))
    }
}

/// Hands off to `target` every time.
#[derive(Debug, Clone)]
pub struct HandOff {
    pub name: String,
    pub target: String,
}

impl HandOff {
    pub fn new(name: &str, target: &str) -> Self {
        Self {
            name: name.into(),
            target: target.into(),
        }
    }
}

#[async_trait]
impl Agent for HandOff {
    fn name(&self) -> &str {
        &self.name
    }
    async fn reply(
        &self,
        _history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(Message::handoff(
            self.name.as_str(),
            self.target.as_str(),
            format!("Transferred to {}.", self.target),
        )))
    }
}

/// Fails every turn.
#[derive(Debug)]
pub struct Failing(pub &'static str);

#[async_trait]
impl Agent for Failing {
    fn name(&self) -> &str {
        self.0
    }
    async fn reply(
        &self,
        _history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        Err(AgentError::Other("tool server unreachable".into()))
    }
}

/// Replies with nothing.
#[derive(Debug)]
pub struct Silent(pub &'static str);

#[async_trait]
impl Agent for Silent {
    fn name(&self) -> &str {
        self.0
    }
    async fn reply(
        &self,
        _history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::default())
    }
}

/// A model that never answers (a call stuck in a queue or in flight), counting calls.
#[derive(Debug, Default, Clone)]
pub struct Stuck {
    pub calls: Arc<AtomicUsize>,
}

#[async_trait]
impl ChatModel for Stuck {
    fn id(&self) -> &str {
        "test/stuck"
    }
    async fn complete(&self, _request: ChatRequest) -> Result<Completion, agent_core::ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A model that answers after a delay (tokio time, so tests run on the paused clock).
#[derive(Debug, Clone)]
pub struct Slow {
    pub delay: Duration,
}

#[async_trait]
impl ChatModel for Slow {
    fn id(&self) -> &str {
        "test/slow"
    }
    async fn complete(&self, _request: ChatRequest) -> Result<Completion, agent_core::ModelError> {
        tokio::time::sleep(self.delay).await;
        Ok(Completion::text("test/slow", "late", Usage::new(1, 1)))
    }
}

/// Stops when a message's text contains `needle`; records every delta it was given.
#[derive(Debug, Default)]
pub struct Mentions {
    pub needle: String,
    pub deltas: Arc<Mutex<Vec<Vec<Message>>>>,
    pub hit: bool,
}

impl Mentions {
    pub fn new(needle: &str) -> Self {
        Self {
            needle: needle.into(),
            ..Self::default()
        }
    }
}

impl Termination for Mentions {
    fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
        if self.hit {
            return Some(StopReason::TextMention {
                text: self.needle.clone(),
            });
        }
        self.deltas.lock().unwrap().push(delta.to_vec());
        if delta
            .iter()
            .any(|m| m.text().is_some_and(|t| t.contains(&self.needle)))
        {
            self.hit = true;
            return Some(StopReason::TextMention {
                text: self.needle.clone(),
            });
        }
        None
    }
    fn is_terminated(&self) -> bool {
        self.hit
    }
    fn reset(&mut self) {
        self.hit = false;
    }
}

/// A condition that is already terminated before any run.
#[derive(Debug)]
pub struct AlreadyDone;

impl Termination for AlreadyDone {
    fn check(&mut self, _delta: &[Message]) -> Option<StopReason> {
        Some(StopReason::External)
    }
    fn is_terminated(&self) -> bool {
        true
    }
    fn reset(&mut self) {}
}

/// Scripted human input; records every prompt shown.
#[derive(Debug, Default, Clone)]
pub struct ScriptInput {
    pub answers: Arc<Mutex<VecDeque<String>>>,
    pub prompts: Arc<Mutex<Vec<String>>>,
}

impl ScriptInput {
    pub fn new(answers: &[&str]) -> Self {
        Self {
            answers: Arc::new(Mutex::new(answers.iter().map(|s| s.to_string()).collect())),
            prompts: Arc::default(),
        }
    }
}

#[async_trait]
impl InputSource for ScriptInput {
    async fn read(&self, prompt: &str) -> Result<String, AgentError> {
        self.prompts.lock().unwrap().push(prompt.to_owned());
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| AgentError::Input("no more scripted answers".into()))
    }
}

/// The sources of `messages`, in order.
pub fn sources(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.source().unwrap_or("?").to_owned())
        .collect()
}
