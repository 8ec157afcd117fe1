//! Providers: the OpenAI-compatible HTTP provider and the in-process simulator.
//!
//! - [`OpenAiProvider`] (feature `openai`) talks to OpenAI, Azure OpenAI, or any OpenAI-compatible
//!   server (Ollama, vLLM, llama.cpp, LiteLLM) through `async-openai`, with its retry layer
//!   removed: one call is one HTTP attempt, because the scheduler is the only retry loop.
//! - [`SimulatedProvider`] answers in process with OpenAI's rate-limit semantics: the default for
//!   examples and tests, no key and no server needed.
//! - [`headers`] is the one parser of what providers say about their limits (`x-ratelimit-*`,
//!   `retry-after`, 429 bodies); the scheduler reads only the resulting
//!   [`RateLimitReading`](agent_core::RateLimitReading).
//!
//! Providers never retry and never sleep on a 429: they return the [`ModelError`] on the first
//! failure, with the provider's hint attached.
//!
//! See `docs/providers.md` for configuration of each backend.

use std::time::Duration;

use agent_core::ModelError;

pub mod headers;
#[cfg(feature = "openai")]
mod openai;
mod secret;
mod simulator;

#[cfg(feature = "openai")]
pub use openai::{
    Flavor, OpenAiProvider, OpenAiProviderBuilder, ProviderConfigError, TokenLimitField,
};
pub use secret::Secret;
#[cfg(feature = "mock-server")]
pub(crate) use simulator::{Admission, DeliveryFault, Rejection, Reply, ReplyBody};
pub use simulator::{Faults, SimConfig, SimConfigError, SimStats, SimulatedProvider, Simulation};

/// How long a provider waits for a response before giving up (per call, to the first byte).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a stream that ends before its final event reports.
pub(crate) const STREAM_CUT: &str = "stream ended before completion";

/// The error of a call that got no response in time: transient, so the scheduler may retry.
pub(crate) fn timeout_error(timeout: Duration) -> ModelError {
    ModelError::Transient {
        status: None,
        retry_after: None,
        message: format!(
            "no response within {:.3}s; the provider may be overloaded (raise the provider's \
             timeout if the model is just slow)",
            timeout.as_secs_f64()
        ),
    }
}
