//! Framework overhead: group-chat turns per second, CPU time per turn and memory per idle
//! conversation, with an instant in-process model, so everything measured is Turnstile.
//!
//! `cargo bench -p agent-runtime --bench overhead` (add `-- --quick` for a smoke run,
//! `-- --write-docs` to replace the tables in `docs/benchmarks.md`).
//!
//! Every turn is a real one: a round-robin `GroupChat` selects the speaker, the agent calls
//! `TurnContext::complete`, the call passes the whole scheduler pipeline (budget reserve, quota
//! admission on a key with configured limits, the model, reconcile, conversation stats), and the
//! chat appends the reply and checks its caps.
#![allow(missing_docs, clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench stops loudly

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Agent, AgentError, AgentReply, CallKind, ChatModel, ChatRequest, Completion, LlmAgent, Message,
    ModelError, TurnContext, Usage, async_trait,
};
use agent_runtime::chat::GroupChat;
use agent_runtime::scheduler::{Quota, QuotaScheduler};
use support::{Options, Table, cpu_time, thousands};

const KEY: &str = "bench/instant";
const TASK: &str = "Plan a one-day visit to Lisbon; add one short suggestion each.";
/// Agent replies per chat run; each conversation runs, resets and runs again.
const TURNS_PER_RUN: u32 = 10;

/// A model that answers at once with a prepared completion (cloning it is two reference counts).
struct InstantModel {
    completion: Completion,
}

impl InstantModel {
    fn new() -> Self {
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
enum AgentKind {
    /// [`Caller`]: fixed request, no history handling.
    Minimal,
    /// `agent_core::LlmAgent` with a system message: builds its prompt from the whole history.
    Llm,
}

impl AgentKind {
    fn label(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Llm => "LlmAgent",
        }
    }
}

/// One provider key with limits configured (high enough never to bind), so every call runs the
/// bucket arithmetic a production key does.
fn scheduler() -> QuotaScheduler {
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

fn build_chat(
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

struct Throughput {
    conversations: usize,
    kind: AgentKind,
    turns: u64,
    wall: Duration,
    cpu: Duration,
}

/// Runs `conversations` chats at once, each running `TURNS_PER_RUN` turns, resetting and running
/// again until about `total_turns` turns are done; times the runs (not the building).
fn throughput(
    runtime: &tokio::runtime::Runtime,
    conversations: usize,
    kind: AgentKind,
    total_turns: u64,
) -> Throughput {
    let model: Arc<dyn ChatModel> = Arc::new(InstantModel::new());
    let scheduler = scheduler();
    let runs = (total_turns / (conversations as u64 * u64::from(TURNS_PER_RUN))).max(1);
    let chats: Vec<GroupChat> = (0..conversations)
        .map(|i| build_chat(i, kind, &model, &scheduler))
        .collect();
    let cpu_before = cpu_time();
    let start = std::time::Instant::now();
    let turns = runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for mut chat in chats {
            tasks.spawn(async move {
                let mut turns = 0u64;
                for _ in 0..runs {
                    let result = chat.run(TASK).await.expect("chat runs");
                    // Every message after the task is one agent turn.
                    turns += result.messages.len() as u64 - 1;
                    chat.reset();
                }
                turns
            });
        }
        let mut turns = 0;
        while let Some(t) = tasks.join_next().await {
            turns += t.expect("chat task");
        }
        turns
    });
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let expected = conversations as u64 * runs * u64::from(TURNS_PER_RUN);
    assert_eq!(turns, expected, "every run makes {TURNS_PER_RUN} turns");
    let calls = scheduler.snapshot().keys[KEY].calls;
    assert_eq!(calls, turns, "every turn is one scheduler call");
    Throughput {
        conversations,
        kind,
        turns,
        wall,
        cpu,
    }
}

fn main() {
    let options = Options::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `--single KIND CONVERSATIONS TURNS`: one configuration only (what callgrind runs).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--single") {
        let kind = match args[i + 1].as_str() {
            "minimal" => AgentKind::Minimal,
            _ => AgentKind::Llm,
        };
        let conversations = args[i + 2].parse().expect("conversations");
        let turns = args[i + 3].parse().expect("turns");
        let t = throughput(&runtime, conversations, kind, turns);
        println!("{} turns in {:?}", t.turns, t.wall);
        return;
    }
    let total = if options.quick { 200_000 } else { 2_000_000 };
    let mut table = Table::new(&[
        "conversations",
        "<agent",
        "turns",
        "wall s",
        "turns/s",
        "CPU µs/turn",
    ]);
    println!("overhead: {}", support::machine());
    for kind in [AgentKind::Minimal, AgentKind::Llm] {
        for conversations in [1, 10, 100, 1_000, 10_000] {
            let t = throughput(&runtime, conversations, kind, total);
            let per_s = t.turns as f64 / t.wall.as_secs_f64();
            table.row(vec![
                thousands(t.conversations as u64),
                t.kind.label().to_owned(),
                thousands(t.turns),
                format!("{:.2}", t.wall.as_secs_f64()),
                thousands(per_s as u64),
                format!("{:.2}", t.cpu.as_secs_f64() * 1e6 / t.turns as f64),
            ]);
            eprintln!(
                "  {} x {}: {} turns/s (load {})",
                t.conversations,
                t.kind.label(),
                thousands(per_s as u64),
                support::load_now()
            );
        }
    }
    println!("{}", table.render());
}
