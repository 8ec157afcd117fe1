//! Quickstart: a writer, a critic and an editor take turns in a group chat until the editor says
//! TERMINATE (or 12 replies pass). Every model call goes through one quota scheduler and is
//! charged to the chat's budget.
//!
//! ```sh
//! cargo run --example quickstart                       # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example quickstart # OpenAI (OPENAI_MODEL, default gpt-4o-mini)
//! OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.2 cargo run --example quickstart
//! ```
//!
//! On the simulator the replies are placeholders ("Turn N, answering …"); it answers TERMINATE once
//! a request carries 7 messages, which is the editor's second turn.

use std::error::Error;

use agent_core::termination::TextMention;
use agent_core::{Budget, BudgetLimits, LlmAgent};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::scheduler::Quota;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    // OPENAI_API_KEY / OPENAI_BASE_URL name an endpoint; otherwise the simulator answers.
    let model = env_or_simulated(SimConfig::default().with_terminate_after(7))?;

    // One scheduler for every call: the model's quota (its id is the quota key), fair queueing
    // across conversations, retries.
    let scheduler = QuotaScheduler::builder()
        .quota(model.id(), Quota::per_minute().requests(60).tokens(40_000))
        .build()?;

    let agent = |name: &str, role: &str| {
        LlmAgent::builder(name, model.clone())
            .system_message(role)
            .max_completion_tokens(200)
            .build()
    };
    let writer = agent(
        "writer",
        "You are a writer. Write or revise a four-line poem for the task, using the critic's notes.",
    )?;
    let critic = agent(
        "critic",
        "You are a critic. Give two short, concrete suggestions to improve the latest draft.",
    )?;
    let editor = agent(
        "editor",
        "You are an editor. If the latest draft is ready, reply with the final poem and the word \
         TERMINATE; otherwise say what must change.",
    )?;

    let mut chat = GroupChat::builder()
        .participant(writer)
        .participant(critic)
        .participant(editor)
        .termination(TextMention::new("TERMINATE").from_sources(["editor"]))
        .max_turns(12)
        .budget(Budget::new("quickstart", BudgetLimits::calls(20)))
        .scheduler(scheduler.clone())
        .build()?;

    // Speakers, messages, quota waits, each call's tokens and cost, the stop reason and the usage,
    // printed as they happen.
    ConsolePrinter::stdout()
        .run(&mut chat, "Write a short poem about waiting in a queue.")
        .await?;

    let budget = chat.budget().used();
    println!("budget 'quickstart': {} of 20 calls used", budget.calls);
    let snapshot = scheduler.snapshot();
    for (key, stats) in &snapshot.keys {
        println!(
            "scheduler {key}: {} calls, {} attempts, {} HTTP 429, {} retries, wait p50 {:?} p99 {:?}",
            stats.calls,
            stats.attempts,
            stats.rate_limited.total(),
            stats.retries,
            stats.wait.p50,
            stats.wait.p99,
        );
    }
    Ok(())
}
