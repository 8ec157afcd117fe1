//! The overhead workload: round-robin group chats of two agents calling an instant in-process
//! model through a scheduler key with configured limits — everything measured is Turnstile.

use std::sync::Arc;

use agent_core::{
    Agent, AgentError, AgentReply, CallKind, ChatModel, ChatRequest, Completion, LlmAgent, Message,
    ModelError, TurnContext, Usage, async_trait,
};
use agent_runtime::chat::GroupChat;
use agent_runtime::scheduler::{Quota, QuotaScheduler};

pub(crate) const KEY: &str = "bench/instant";
pub(crate) const TASK: &str = "Plan a one-day visit to Lisbon; add one short suggestion each.";
/// Agent replies per chat run; each conversation runs, resets and runs again.
pub(crate) const TURNS_PER_RUN: u32 = 10;

/// A model that answers at once with a prepared completion (cloning it is two reference counts).
pub(crate) struct InstantModel {
    completion: Completion,
}

impl InstantModel {
    pub(crate) fn new() -> Self {
        Self {
            completion: Completion::text(KEY, "Take tram 28 up to the castle.", Usage::new(40, 8)),
        }
    }
}

#[async_trait]
impl ChatModel for InstantModel {
    fn id(&self) -> &str {
        KEY
    }
    async fn complete(&self, _request: ChatRequest) -> Result<Completion, ModelError> {
        Ok(self.completion.clone())
    }
}

/// The smallest agent that still makes a model call through the scheduler: it sends a fixed
/// request and answers with the model's message. Its cost is the framework's floor.
struct Caller {
    name: Arc<str>,
    model: Arc<dyn ChatModel>,
    request: ChatRequest,
}

#[async_trait]
impl Agent for Caller {
    fn name(&self) -> &str {
        &self.name
    }
    async fn reply(
        &self,
        _history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let completion = ctx
            .complete(&*self.model, self.request.clone(), CallKind::Reply)
            .await?;
        Ok(AgentReply::message(
            completion.message.with_source(self.name.clone()),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentKind {
    /// `Caller`: a fixed request, no history handling.
    Minimal,
    /// `agent_core::LlmAgent` with a system message: builds its prompt from the whole history.
    Llm,
}

impl AgentKind {
    pub(crate) const ALL: [AgentKind; 2] = [AgentKind::Minimal, AgentKind::Llm];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Llm => "LlmAgent",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == s)
    }
}

/// One provider key with limits configured (high enough never to bind), so every call runs the
/// bucket arithmetic a production key does.
pub(crate) fn scheduler() -> QuotaScheduler {
    QuotaScheduler::builder()
        .quota(
            KEY,
            Quota::per_minute()
                .requests(1 << 50)
                .tokens(1 << 60)
                .max_in_flight(1 << 30),
        )
        .build()
        .expect("valid quota")
}

pub(crate) fn build_chat(
    i: usize,
    kind: AgentKind,
    model: &Arc<dyn ChatModel>,
    scheduler: &QuotaScheduler,
) -> GroupChat {
    let mut builder = GroupChat::builder()
        .conversation_id(format!("conversation-{i}"))
        .scheduler(scheduler.clone())
        .max_turns(TURNS_PER_RUN);
    for name in ["planner", "critic"] {
        builder = match kind {
            AgentKind::Minimal => builder.participant(Caller {
                name: name.into(),
                model: model.clone(),
                request: ChatRequest::new(vec![
                    Message::system("You plan trips."),
                    Message::user(TASK),
                ])
                .with_max_completion_tokens(64),
            }),
            AgentKind::Llm => builder.participant(
                LlmAgent::builder(name, model.clone())
                    .system_message("You plan trips. Reply with one short suggestion.")
                    .max_completion_tokens(64)
                    .build()
                    .expect("valid agent"),
            ),
        };
    }
    builder.build().expect("valid chat")
}

/// Runs every chat `runs` times (resetting in between) on `runtime`, one task per chat; returns
/// the chats and the agent turns made.
pub(crate) fn run_chats(
    runtime: &tokio::runtime::Runtime,
    chats: Vec<GroupChat>,
    runs: u64,
) -> (Vec<GroupChat>, u64) {
    runtime.block_on(async move {
        let n = chats.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut chat) in chats.into_iter().enumerate() {
            tasks.spawn(async move {
                let mut turns = 0u64;
                for run in 0..runs {
                    if run > 0 {
                        chat.reset();
                    }
                    let result = chat.run(TASK).await.expect("chat runs");
                    // Every message after the task is one agent turn.
                    turns += result.messages.len() as u64 - 1;
                }
                (i, chat, turns)
            });
        }
        let mut back: Vec<Option<GroupChat>> = (0..n).map(|_| None).collect();
        let mut turns = 0;
        while let Some(done) = tasks.join_next().await {
            let (i, chat, t) = done.expect("chat task");
            back[i] = Some(chat);
            turns += t;
        }
        (back.into_iter().flatten().collect(), turns)
    })
}
