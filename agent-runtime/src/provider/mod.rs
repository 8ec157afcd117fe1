//! Providers: the OpenAI-compatible HTTP provider and the in-process simulator.
//!
//! - `OpenAiProvider` (feature `openai`) talks to OpenAI, Azure OpenAI, or any OpenAI-compatible
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

pub mod dialects;
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
pub use simulator::{
    Dialect, Faults, LimiterKind, SimConfig, SimConfigError, SimStats, SimulatedProvider,
    Simulation, WindowAnchor,
};

/// The model an example or a quick start should use: the OpenAI-compatible provider when the
/// environment names an endpoint (`OPENAI_API_KEY` or `OPENAI_BASE_URL` set; see
/// [`OpenAiProvider::from_env`]), else a [`SimulatedProvider`] running `fallback` — so the same
/// program runs on a fresh machine with no key and against a real endpoint when one is given.
///
/// ```
/// use agent_runtime::provider::{SimConfig, env_or_simulated};
///
/// let model = env_or_simulated(SimConfig::default()).unwrap();
/// # if std::env::var_os("OPENAI_API_KEY").is_none() && std::env::var_os("OPENAI_BASE_URL").is_none() {
/// assert_eq!(model.id(), "sim/gpt-4o-mini");
/// # }
/// ```
#[cfg(feature = "openai")]
pub fn env_or_simulated(
    fallback: SimConfig,
) -> Result<std::sync::Arc<dyn agent_core::ChatModel>, EnvModelError> {
    env_or_simulated_with(fallback, |name| std::env::var(name).ok())
}

#[cfg(feature = "openai")]
fn env_or_simulated_with(
    fallback: SimConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<std::sync::Arc<dyn agent_core::ChatModel>, EnvModelError> {
    let named = ["OPENAI_API_KEY", "OPENAI_BASE_URL"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()));
    if named {
        let provider = OpenAiProvider::builder().with_env_lookup(var).build()?;
        Ok(std::sync::Arc::new(provider))
    } else {
        Ok(std::sync::Arc::new(SimulatedProvider::new(fallback)?))
    }
}

/// Why [`env_or_simulated`] could not build a model.
#[cfg(feature = "openai")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvModelError {
    /// The environment names an endpoint, but its configuration is unusable.
    #[error(transparent)]
    Provider(#[from] ProviderConfigError),
    /// The fallback simulator configuration is unusable.
    #[error(transparent)]
    Simulator(#[from] SimConfigError),
}

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

#[cfg(all(test, feature = "openai"))]
mod tests {
    use super::*;

    #[test]
    fn examples_use_the_simulator_unless_the_environment_names_an_endpoint() {
        let none = env_or_simulated_with(SimConfig::default(), |_| None).unwrap();
        assert_eq!(none.id(), "sim/gpt-4o-mini");
        let blank = env_or_simulated_with(SimConfig::default(), |_| Some(" ".into())).unwrap();
        assert_eq!(blank.id(), "sim/gpt-4o-mini");
        let local = env_or_simulated_with(SimConfig::default(), |name| {
            (name == "OPENAI_BASE_URL").then(|| "http://localhost:11434/v1".to_owned())
        })
        .unwrap();
        assert_eq!(local.id(), "localhost:11434/gpt-4o-mini");
        let bad = env_or_simulated_with(SimConfig::default().with_rpm(0), |_| None);
        assert!(matches!(bad, Err(EnvModelError::Simulator(_))));
    }
}
