//! Structured output: an agent that returns a typed Rust value. The JSON schema comes from the
//! type (schemars), goes to the provider as `response_format` (strict where the schema allows),
//! and a reply that does not decode goes back to the model with the error — a bounded number of
//! times, each retry a budgeted call.
//!
//! ```sh
//! cargo run --example structured                       # no key: the simulator answers with JSON that fits
//! OPENAI_API_KEY=sk-... cargo run --example structured # OpenAI (OPENAI_MODEL, default gpt-4o-mini)
//! ```

use std::error::Error;

use agent_core::{Budget, BudgetLimits, LlmAgent, Message};
use agent_runtime::chat::GroupChat;
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::{QuotaScheduler, SchedulerContext};

/// How urgent a ticket is.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
enum Priority {
    Low,
    Normal,
    Urgent,
}

/// A support ticket, triaged.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Triage {
    /// One line saying what is wrong.
    summary: String,
    priority: Priority,
    /// Which teams should look at it.
    teams: Vec<String>,
    /// Hours of work, roughly.
    estimate_hours: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let model = env_or_simulated(SimConfig::default())?;
    let scheduler = QuotaScheduler::new();

    let triager = LlmAgent::builder("triager", model.clone())
        .system_message("You triage support tickets. Answer with the triage only.")
        .output::<Triage>() // the schema, the checks and the corrections
        .max_format_retries(2)
        .build()?;

    // 1. Directly, as a typed value.
    let budget = Budget::new("structured", BudgetLimits::calls(5));
    let ctx = SchedulerContext::new(scheduler.clone(), "ticket-1", "triager", budget.clone());
    let ticket = [Message::user(
        "Customers in the EU cannot log in since the 10:00 deploy; the US is fine.",
    )];
    let typed = triager.reply_as::<Triage>(&ticket, &ctx).await?;
    let Triage {
        summary,
        priority,
        teams,
        estimate_hours,
    } = &typed.value;
    println!(
        "summary: {summary}\npriority: {priority:?}\nteams: {teams:?}\nestimate: {estimate_hours} h"
    );
    println!(
        "model calls (corrections included): {}",
        budget.used().calls
    );

    // 2. In a chat: the reply is a structured message in the transcript.
    let mut chat = GroupChat::builder()
        .participant(triager)
        .max_messages(2)
        .scheduler(scheduler)
        .build()?;
    let result = chat.run("The invoice PDF has the wrong VAT rate.").await?;
    if let Some(last) = result.messages.last() {
        println!("transcript entry: {}", serde_json::to_string(last)?);
        if let Some(Ok(triage)) = last.value_as::<Triage>() {
            println!(
                "decoded from the transcript: {:?} priority",
                triage.priority
            );
        }
    }
    Ok(())
}
