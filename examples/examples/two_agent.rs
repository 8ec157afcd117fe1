//! Two agents, AG2 style: a user proxy that never asks a human opens the chat, an assistant
//! answers, and the proxy auto-replies — at most twice in a row (`max_consecutive_auto_reply`),
//! within at most 5 exchanges (`max_turns`). Either cap, or a reply that is exactly `TERMINATE`,
//! ends the chat, and the stop reason says which.
//!
//! ```sh
//! cargo run --example two_agent                        # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example two_agent  # or OPENAI_BASE_URL=http://localhost:11434/v1
//! ```

use std::error::Error;

use agent_core::{Budget, BudgetLimits, HumanInputMode, LlmAgent, UserProxy};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let model = env_or_simulated(SimConfig::default())?;

    let assistant = LlmAgent::builder("assistant", model.clone())
        .system_message(
            "You are a helpful assistant. Answer briefly. When the user's question is fully \
             answered, reply with exactly TERMINATE.",
        )
        .max_completion_tokens(200)
        .build()?;
    // No human in the loop: the proxy answers every turn with its default auto-reply, and the
    // runtime stops the chat when it would auto-reply a third time in a row.
    let user = UserProxy::builder("user_proxy")
        .human_input_mode(HumanInputMode::Never)
        .default_auto_reply("Thanks. Can you give one more example?")
        .max_consecutive_auto_reply(2)
        .build()?;

    let mut chat = GroupChat::two_agent(user, assistant)
        .max_turns(5)
        .budget(Budget::new("two_agent", BudgetLimits::calls(10)))
        .scheduler(QuotaScheduler::new())
        .build()?;

    ConsolePrinter::stdout()
        .run(
            &mut chat,
            "What is a token bucket? One sentence, with an example.",
        )
        .await?;
    Ok(())
}
