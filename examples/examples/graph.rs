//! A graph workflow: a researcher briefs two writers who draft **in parallel** (one step, two
//! concurrent calls through the scheduler); an editor joins their drafts; a reviewer either
//! approves (the publisher runs, and the graph completes) or sends the draft back to the editor —
//! a cycle whose exit is a condition on the reviewer's reply, checked when the graph is built.
//! Every call, of every branch, is charged to one budget.
//!
//! ```sh
//! cargo run --example graph                        # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example graph  # or OPENAI_BASE_URL=http://localhost:11434/v1
//! ```
//!
//! On the simulator the replies are placeholders; it answers TERMINATE once a request carries 8
//! messages, which is the reviewer's second turn, so the loop runs once.

use std::error::Error;

use agent_core::{Budget, BudgetLimits, LlmAgent, Message};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::graph::{Edge, GraphFlow};
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::scheduler::Quota;

fn approved(message: &Message) -> bool {
    message.text().is_some_and(|t| t.contains("TERMINATE"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let model = env_or_simulated(SimConfig::default().with_terminate_after(8))?;
    let scheduler = QuotaScheduler::builder()
        .quota(model.id(), Quota::per_minute().requests(60).tokens(40_000))
        .build()?;
    let agent = |name: &str, role: &str| {
        LlmAgent::builder(name, model.clone())
            .system_message(role)
            .max_completion_tokens(200)
            .build()
    };

    let mut flow = GraphFlow::builder()
        .participant(agent(
            "researcher",
            "List three facts the writers should use.",
        )?)
        .participant(agent(
            "writer_a",
            "Draft an opening paragraph from the facts.",
        )?)
        .participant(agent(
            "writer_b",
            "Draft a closing paragraph from the facts.",
        )?)
        .participant(agent(
            "editor",
            "Merge the drafts into one short article, applying the reviewer's notes if any.",
        )?)
        .participant(agent(
            "reviewer",
            "If the article is ready, reply TERMINATE; otherwise give one concrete note.",
        )?)
        .participant(agent(
            "publisher",
            "Give the article a title and publish it.",
        )?)
        // Fan-out: both writers run in the same step, concurrently.
        .edge("researcher", "writer_a")
        .edge("researcher", "writer_b")
        // Fan-in: the editor waits for both drafts (Activation::All, the default) ...
        .edge("writer_a", "editor")
        .edge("writer_b", "editor")
        // ... or for the reviewer alone, on the way back round the loop (its own group).
        .add_edge(
            Edge::new("reviewer", "editor")
                .when(|m| !approved(m))
                .group("revise"),
        )
        .edge("editor", "reviewer")
        .add_edge(Edge::new("reviewer", "publisher").when(approved))
        .max_turns(20)
        .budget(Budget::new("graph", BudgetLimits::calls(20)))
        .scheduler(scheduler)
        .build()?;

    let result = flow
        .run("Write a short article about fair queueing.")
        .await?;

    for message in &result.messages {
        let who = message.source().unwrap_or("?");
        println!("--- {who}\n{}\n", message.text().unwrap_or("(no text)"));
    }
    println!("stop reason: {}", result.stop_reason);
    for (agent, usage) in &result.usage.by_agent {
        println!(
            "usage {agent:>10}: {} calls, {} prompt + {} completion tokens",
            usage.calls, usage.prompt_tokens, usage.completion_tokens
        );
    }
    println!(
        "total: {} calls, budget used {} of 20",
        result.model_calls(),
        flow.budget().used().calls
    );
    Ok(())
}
