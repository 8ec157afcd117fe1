//! Streaming: two agents answer token by token, printed as the tokens arrive, and one direct
//! streamed call read by hand. Every stream goes through the quota scheduler like any call: it is
//! admitted before its first byte, retried only before its first event, and charged when it ends
//! (the provider's usage, or the prompt's estimate plus what arrived).
//!
//! ```sh
//! cargo run --example streaming                       # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example streaming # OpenAI (OPENAI_MODEL, default gpt-4o-mini)
//! OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.2 cargo run --example streaming
//! ```

use std::error::Error;
use std::io::Write;
use std::time::Duration;

use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, LlmAgent, Message, StreamEvent};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::scheduler::{ModelCall, Quota};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    // The simulator streams its reply a token at a time (30 ms apart here, so you can watch).
    let model = env_or_simulated(
        SimConfig::default().with_latency(Duration::from_millis(200), Duration::from_millis(30)),
    )?;
    let scheduler = QuotaScheduler::builder()
        .quota(model.id(), Quota::per_minute().requests(60).tokens(40_000))
        .build()?;
    let budget = Budget::new("streaming", BudgetLimits::calls(10));

    // 1. A chat of streaming agents: the console printer shows each reply as its tokens arrive.
    let agent = |name: &str, role: &str| {
        LlmAgent::builder(name, model.clone())
            .system_message(role)
            .max_completion_tokens(120)
            .stream(true)
            .build()
    };
    let mut chat = GroupChat::builder()
        .participant(agent(
            "guide",
            "You suggest one place to visit in Lisbon, briefly.",
        )?)
        .participant(agent(
            "local",
            "You add one insider tip to the guide's suggestion.",
        )?)
        .max_turns(2)
        .budget(budget.clone())
        .scheduler(scheduler.clone())
        .build()?;
    ConsolePrinter::stdout()
        .run(&mut chat, "One afternoon in Lisbon: where should I go?")
        .await?;

    // 2. One streamed call through the scheduler, read by hand. The stream is 'static: it could
    //    be moved to another task; dropping it early would end the call and settle its charge.
    let request = ChatRequest::new(vec![Message::user("Say hello in Portuguese.")])
        .with_max_completion_tokens(40);
    let call = ModelCall::new(&*model, request, CallKind::Other, "direct", "me", &budget);
    let mut stream = scheduler.call_stream(call).await?;
    print!("direct: ");
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::TextDelta(text) => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            StreamEvent::Completed(done) => match done.usage {
                Some(u) => println!(
                    "\n        ({} + {} tokens reported)",
                    u.prompt_tokens, u.completion_tokens
                ),
                None => println!("\n        (no usage reported: charged the estimate)"),
            },
            _ => {}
        }
    }

    let used = budget.used();
    let key = &scheduler.snapshot().keys[model.id()];
    println!(
        "budget 'streaming': {} calls, {} tokens; scheduler: {} calls, {} in flight",
        used.calls, used.tokens, key.calls, key.in_flight
    );
    Ok(())
}
