//! Nested chats under a budget: a planner's group chat has a `research` participant whose every
//! turn runs an inner chat (a researcher and a fact checker). The inner chat gets a child budget
//! carved out of the outer one: it can spend neither more than its own 3 calls nor more than the
//! outer chat has left, and what it does not spend stays with the parent.
//!
//! ```sh
//! cargo run --example nested                        # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example nested  # or OPENAI_BASE_URL=http://localhost:11434/v1
//! ```
//!
//! The inner chat wants 4 replies but its carve-out allows 3 calls, so it stops early; the
//! research reply says so on its last line and the outer chat goes on.

use std::error::Error;
use std::sync::Arc;

use agent_core::{Budget, BudgetLimits, LlmAgent, Message};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::{GroupChat, NestedChatAgent, Task};
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};

const OUTER_CALLS: u64 = 8;
const INNER_CALLS: u64 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let model = env_or_simulated(SimConfig::default())?;
    let agent = |name: &str, role: &str| {
        LlmAgent::builder(name, model.clone())
            .system_message(role)
            .max_completion_tokens(200)
            .build()
            .map(Arc::new)
    };
    let planner = agent(
        "planner",
        "You plan a weekend trip. Ask research for facts, then refine the plan.",
    )?;
    let researcher = agent("researcher", "You find facts relevant to the request.")?;
    let checker = agent(
        "fact_checker",
        "You check the researcher's facts and correct them.",
    )?;

    // Built afresh on every `research` turn, from the outer thread.
    let research = Arc::new(
        NestedChatAgent::new("research", move |history: &[Message]| {
            let request = history.last().and_then(Message::text).unwrap_or_default();
            let inner = GroupChat::builder()
                .participant(researcher.clone())
                .participant(checker.clone())
                .max_turns(4);
            (inner, Task::from(format!("Research this: {request}")))
        })
        .budget_limits(BudgetLimits::calls(INNER_CALLS)),
    );

    let mut chat = GroupChat::builder()
        .participant(planner)
        .participant(research.clone())
        .max_turns(3)
        .budget(Budget::new("trip", BudgetLimits::calls(OUTER_CALLS)))
        .scheduler(QuotaScheduler::new())
        .build()?;
    println!(
        "outer budget 'trip': {OUTER_CALLS} calls; each research turn carves out a child budget \
         'research' of {INNER_CALLS} calls (checked against 'trip' too)\n"
    );

    let result = ConsolePrinter::stdout()
        .run(&mut chat, "Plan a weekend in Porto in May.")
        .await?;
    if let Some(inner) = research.last_result() {
        println!(
            "inner chat: {} messages, stopped because: {}",
            inner.messages.len(),
            inner.stop_reason
        );
    }
    for (agent, usage) in &result.usage.by_agent {
        println!("  {agent:>8}: {} calls", usage.calls);
    }
    let used = chat.budget().used();
    println!(
        "budget 'trip': {} of {OUTER_CALLS} calls used (the nested chat's included), {} left",
        used.calls,
        chat.budget().remaining_calls()
    );
    Ok(())
}
