//! Tools: an LLM agent with typed tools. The model asks for `get_weather` with JSON arguments,
//! the agent parses them into a Rust struct (its JSON schema comes from `schemars`), runs the
//! tool, and calls the model again with the result. Both model calls go through the scheduler.
//!
//! ```sh
//! cargo run --example tools                        # no key: an in-process simulator answers
//! OPENAI_API_KEY=sk-... cargo run --example tools  # or OPENAI_BASE_URL=http://localhost:11434/v1
//! ```
//!
//! The simulator calls a tool when tools are offered and the last message says
//! `call tool NAME {json arguments}`, which is why the task spells the call out; a real model
//! reads the same sentence as an instruction.

use std::error::Error;

use agent_core::{LlmAgent, ToolRegistry, TypedTool};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use agent_runtime::console::ConsolePrinter;
use agent_runtime::provider::{SimConfig, env_or_simulated};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Arguments of `get_weather`.
#[derive(Debug, Deserialize, JsonSchema)]
struct WeatherArgs {
    /// The city, e.g. "Lisbon".
    city: String,
}

/// What `get_weather` returns (sent to the model as JSON).
#[derive(Debug, Serialize)]
struct Weather {
    city: String,
    forecast: &'static str,
    temperature_c: i32,
    chance_of_rain_percent: u8,
}

/// Arguments of `convert_temperature`.
#[derive(Debug, Deserialize, JsonSchema)]
struct Celsius {
    /// Degrees Celsius.
    celsius: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let model = env_or_simulated(SimConfig::default())?;

    let tools = ToolRegistry::new()
        .with(TypedTool::new(
            "get_weather",
            "Today's weather for a city.",
            |args: WeatherArgs| async move {
                // A real tool would call a weather API here; errors go back to the model as text.
                Ok::<_, String>(Weather {
                    city: args.city,
                    forecast: "light showers in the afternoon",
                    temperature_c: 17,
                    chance_of_rain_percent: 60,
                })
            },
        ))?
        .with(TypedTool::new(
            "convert_temperature",
            "Converts degrees Celsius to Fahrenheit.",
            |args: Celsius| async move { Ok::<_, String>(args.celsius * 9.0 / 5.0 + 32.0) },
        ))?;

    let assistant = LlmAgent::builder("assistant", model.clone())
        .system_message(
            "You are a travel assistant. Use the tools to check facts before answering.",
        )
        .tools(tools)
        .max_tool_iterations(3)
        .max_completion_tokens(300)
        .build()?;

    let mut chat = GroupChat::builder()
        .participant(assistant)
        .max_turns(1)
        .scheduler(QuotaScheduler::new())
        .build()?;

    // The printer shows the tool call, the tool's result and each model call's cost.
    let result = ConsolePrinter::stdout()
        .run(&mut chat, r#"Should I pack an umbrella for Lisbon today? Check first: call tool get_weather {"city": "Lisbon"}"#)
        .await?;
    println!(
        "model calls: {} (one to ask for the tool, one to answer with its result)",
        result.model_calls()
    );
    Ok(())
}
