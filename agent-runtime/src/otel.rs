//! OpenTelemetry export of Turnstile's spans (feature `otel`).
//!
//! The runtime always opens three `tracing` spans, named and attributed by OpenTelemetry's GenAI
//! semantic conventions:
//!
//! | span (`otel.name`) | level | attributes |
//! |---|---|---|
//! | `chat_run {chat}` | debug | `turnstile.chat.name`, `gen_ai.conversation.id` |
//! | `invoke_agent {agent}` (one per turn) | debug | `gen_ai.operation.name = invoke_agent`, `gen_ai.agent.name`, `gen_ai.conversation.id` |
//! | `chat {model}` (one per model call, quota wait and retries included) | debug | `gen_ai.operation.name = chat`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.request.max_tokens`, `gen_ai.agent.name`, `gen_ai.conversation.id`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`, `error.type`, `turnstile.quota.key`, `turnstile.quota.wait_seconds`, `turnstile.attempts`, `turnstile.cost_usd`, `turnstile.call.kind` |
//!
//! [`layer`] bridges them to an OpenTelemetry tracer (an OTLP exporter's, or the SDK's in-memory
//! one in tests); they nest chat → turn → call. They are `DEBUG` spans so that a console at
//! `RUST_LOG=info` stays one line per call and per chat: give the OpenTelemetry layer a filter of
//! its own that lets `agent_runtime` at `DEBUG` through (as below).
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing::Level;
//! use tracing_subscriber::filter::Targets;
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::Layer as _;
//!
//! // Any SdkTracerProvider: here one with no exporter.
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let spans = Targets::new().with_target("agent_runtime", Level::DEBUG);
//! let subscriber = tracing_subscriber::registry()
//!     .with(agent_runtime::otel::layer(provider.tracer("turnstile")).with_filter(spans));
//! let _guard = tracing::subscriber::set_default(subscriber);
//! ```

use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// A `tracing-subscriber` layer that exports spans (Turnstile's among them) through `tracer`.
/// Add a filter (`EnvFilter`, `Targets`) to the layer to keep only `agent_runtime`'s spans.
pub fn layer<S, T>(tracer: T) -> tracing_opentelemetry::OpenTelemetryLayer<S, T>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(tracer)
}
