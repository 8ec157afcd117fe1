//! The in-process simulated provider: OpenAI's rate-limit semantics with no key, no server and no
//! sockets — the default model of every example.
//!
//! [`Simulation`] is the core (buckets, deterministic replies, latency, faults, stats) and is
//! shared with the mock HTTP server, which is only an HTTP wrapper around it; [`SimulatedProvider`]
//! is the [`ChatModel`] over it. Both answer the same request the same way, and a rejection
//! becomes the same [`ModelError`] the HTTP provider would make of the mock's 429.

mod bucket;
mod config;
mod dialect;
mod fixed_window;
mod limiter;
mod reply;
mod simulation;
mod sliding_log;
mod structured;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ChatModel, ChatRequest, Completion, CompletionStream, ModelError, StreamEvent, async_trait,
};
use futures::StreamExt;

pub use config::{Faults, SimConfig, SimConfigError};
pub use dialect::Dialect;
pub use limiter::{LimiterKind, WindowAnchor};
#[cfg(feature = "mock-server")]
pub(crate) use reply::{Reply, ReplyBody};
pub(crate) use simulation::{Admission, DeliveryFault, Rejection};
pub use simulation::{SimStats, Simulation};

use super::{DEFAULT_TIMEOUT, STREAM_CUT, timeout_error};

/// A [`ChatModel`] that simulates an OpenAI-style provider in process.
///
/// ```
/// use std::time::Duration;
/// use agent_core::{ChatModel, ChatRequest, Message, ModelError, RateLimitKind};
/// use agent_runtime::provider::{SimConfig, SimulatedProvider};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let model = SimulatedProvider::new(SimConfig::default().with_rpm(1)).unwrap();
/// let request = ChatRequest::new(vec![Message::user("hi")]);
/// let first = model.complete(request.clone()).await.unwrap();
/// assert_eq!(first.rate_limits.unwrap().remaining_requests, Some(0));
///
/// // One request per minute: the second is refused with the provider's wait.
/// match model.complete(request).await {
///     Err(ModelError::RateLimited { kind: RateLimitKind::Requests, retry_after, .. }) => {
///         assert!(retry_after.unwrap() <= Duration::from_secs(60));
///     }
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    id: Arc<str>,
    simulation: Simulation,
    timeout: Duration,
}

impl Default for SimulatedProvider {
    /// A provider with [`SimConfig::default`]: no limits, short latency.
    fn default() -> Self {
        Self::from_simulation(Simulation::default())
    }
}

impl SimulatedProvider {
    /// A provider simulating `config`.
    pub fn new(config: SimConfig) -> Result<Self, SimConfigError> {
        Ok(Self::from_simulation(Simulation::new(config)?))
    }

    /// A provider over an existing simulation (for example one a mock server also serves, so
    /// both draw on the same buckets).
    pub fn from_simulation(simulation: Simulation) -> Self {
        Self {
            id: format!("sim/{}", simulation.config().model).into(),
            simulation,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the model id used for quota keys and prices (default `sim/<model>`).
    #[must_use]
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets how long to wait for a reply before a [`ModelError::Transient`] timeout (default
    /// 120 s, as the HTTP provider). Only injected hangs or huge latencies reach it.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The simulation, for stats and run-time limit changes.
    pub fn simulation(&self) -> &Simulation {
        &self.simulation
    }

    /// Waits `delay`, or fails with the timeout error when it exceeds the timeout.
    async fn wait(&self, delay: Duration) -> Result<(), ModelError> {
        if delay > self.timeout {
            tokio::time::sleep(self.timeout).await;
            return Err(timeout_error(self.timeout));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

fn malformed() -> ModelError {
    ModelError::MalformedResponse {
        message: "the simulated provider sent a body that is not valid JSON (injected fault)"
            .to_owned(),
    }
}

fn dropped() -> ModelError {
    ModelError::transient("the connection closed before the response was complete (injected fault)")
}

#[async_trait]
impl ChatModel for SimulatedProvider {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        let admission = self
            .simulation
            .admit(&request)
            .map_err(Rejection::into_error)?;
        let delay = match admission.fault {
            Some(DeliveryFault::Hang) => Duration::MAX,
            _ => admission.total_latency(),
        };
        self.wait(delay).await?;
        match admission.fault {
            Some(DeliveryFault::Malformed) => Err(malformed()),
            Some(DeliveryFault::Drop) => Err(dropped()),
            _ => Ok(admission
                .reply
                .to_completion(&self.id, Some(admission.reading.clone()))),
        }
    }

    async fn stream(&self, request: ChatRequest) -> Result<CompletionStream, ModelError> {
        let admission = self
            .simulation
            .admit(&request)
            .map_err(Rejection::into_error)?;
        // Like an HTTP server, nothing arrives before the first token: a hang or a slow first
        // token fails the call itself, not the stream.
        let first = match admission.fault {
            Some(DeliveryFault::Hang) => Duration::MAX,
            _ => admission.latency,
        };
        self.wait(first).await?;
        let mut completion = admission
            .reply
            .to_completion(&self.id, Some(admission.reading.clone()));
        if !self.simulation.config().stream_usage {
            completion.usage = None;
            completion.message.usage = None;
        }
        let chunks = admission.reply.chunks.clone();
        let cut_at = (admission.fault == Some(DeliveryFault::Drop)).then_some(chunks.len() / 2);
        let state = StreamState {
            admission,
            provider: self.clone(),
            chunks,
            next: 0,
            cut_at,
            completion: Some(completion),
            first_at: tokio::time::Instant::now(),
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let event = state.next_event().await?;
            Some((event, state))
        });
        Ok(stream.boxed())
    }
}

struct StreamState {
    /// Held until the stream ends: it owns the concurrency slot and the refund.
    admission: Admission,
    provider: SimulatedProvider,
    chunks: Vec<String>,
    next: usize,
    cut_at: Option<usize>,
    completion: Option<Completion>,
    /// When the first token was due: token `k` is due `k × per_token_latency` after it.
    first_at: tokio::time::Instant,
}

impl StreamState {
    async fn next_event(&mut self) -> Option<Result<StreamEvent, ModelError>> {
        // `completion` is taken by the last event; nothing follows it.
        self.completion.as_ref()?;
        if self.admission.fault == Some(DeliveryFault::Malformed) {
            self.completion = None;
            return Some(Err(malformed()));
        }
        if self.cut_at == Some(self.next) {
            self.completion = None;
            return Some(Err(ModelError::transient(format!(
                "{STREAM_CUT} (injected fault)"
            ))));
        }
        if let Some(chunk) = self.chunks.get(self.next) {
            // Due at an instant counted from the first token, not a sleep after the previous
            // one: the timer's rounding (up to 1 ms a sleep) must not add up over a reply, or a
            // streamed reply would take longer than the same reply whole.
            let tokens = u32::try_from(self.next + 1).unwrap_or(u32::MAX);
            let due = self.first_at + self.admission.per_token_latency.saturating_mul(tokens);
            let delay = due.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = self.provider.wait(delay).await {
                self.completion = None;
                return Some(Err(e));
            }
            self.next += 1;
            return Some(Ok(StreamEvent::TextDelta(chunk.clone())));
        }
        let completion = self.completion.take()?;
        Some(Ok(StreamEvent::Completed(completion)))
    }
}

#[cfg(test)]
mod limiter_tests;
#[cfg(test)]
mod tests;
