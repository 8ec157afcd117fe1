//! The README's "Add to your project" program, built as a project of its own.

use agent_runtime::chat::GroupChat;
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::termination::TextMention;
use agent_runtime::{LlmAgent, QuotaScheduler};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // OPENAI_API_KEY / OPENAI_BASE_URL name an endpoint; with neither, a simulator answers.
    let model = env_or_simulated(SimConfig::default().with_terminate_after(5))?;
    let mut chat = GroupChat::builder()
        .participant(
            LlmAgent::builder("writer", model.clone())
                .system_message("Write a haiku.")
                .build()?,
        )
        .participant(
            LlmAgent::builder("critic", model)
                .system_message("Critique it, or say TERMINATE.")
                .build()?,
        )
        .termination(TextMention::new("TERMINATE"))
        .max_turns(6)
        .scheduler(QuotaScheduler::new())
        .build()?;
    let result = ConsolePrinter::stdout()
        .run(&mut chat, "A haiku about queues")
        .await?;
    if result.model_calls() == 0 || result.cost_usd() <= 0.0 {
        return Err("expected model calls with a cost".into());
    }
    Ok(())
}
