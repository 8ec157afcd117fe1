//! Shared harness of the scheduler tests: a token estimator with exact costs and a model that
//! records when each request reached it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    ChatModel, ChatRequest, Completion, Message, ModelError, RateLimitKind, ScriptedModel,
    TokenEstimator, Usage, async_trait,
};
use tokio::time::Instant;

/// One token per character, no framing: a request's admission cost is exactly its text length
/// plus `max_completion_tokens`.
#[derive(Debug, Clone, Copy)]
pub struct ExactEstimator;

impl TokenEstimator for ExactEstimator {
    fn message_tokens(&self, message: &Message) -> u64 {
        message.char_len() as u64
    }
    fn prompt_tokens(&self, request: &ChatRequest) -> u64 {
        request
            .messages
            .iter()
            .map(|m| self.message_tokens(m))
            .sum()
    }
}

/// A request costing exactly `tokens` with [`ExactEstimator`] (no completion reservation).
pub fn request(tokens: usize) -> ChatRequest {
    ChatRequest::new(vec![Message::user("x".repeat(tokens))]).with_max_completion_tokens(0)
}

/// A completion reporting `usage`.
pub fn completion(usage: Usage) -> Completion {
    Completion::text("model", "ok", usage)
}

/// A 429 with the given retry hint.
pub fn rate_limited(retry_after: Option<Duration>) -> ModelError {
    ModelError::RateLimited {
        kind: RateLimitKind::Tokens,
        retry_after,
        reading: None,
        message: "Rate limit reached".into(),
    }
}

/// A 500.
pub fn server_error() -> ModelError {
    ModelError::Transient {
        status: Some(500),
        retry_after: None,
        message: "internal error".into(),
    }
}

/// What the provider saw of one request.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    pub prompt_chars: usize,
    pub concurrent: usize,
}

#[derive(Debug, Default)]
struct Log {
    seen: Vec<Seen>,
    in_flight: usize,
}

/// Wraps a [`ScriptedModel`]: records the (paused-clock) time and concurrency of every request,
/// and answers after `latency`.
#[derive(Debug, Clone)]
pub struct TimedModel {
    pub inner: ScriptedModel,
    latency: Duration,
    log: Arc<Mutex<Log>>,
}

impl TimedModel {
    pub fn new(inner: ScriptedModel) -> Self {
        Self {
            inner,
            latency: Duration::ZERO,
            log: Arc::default(),
        }
    }

    /// A model answering every request with `usage`.
    pub fn answering(id: &str, usage: Usage) -> Self {
        Self::new(ScriptedModel::new(id).with_responder(move |_| Ok(completion(usage))))
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().seen.len()
    }
}

#[async_trait]
impl ChatModel for TimedModel {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        {
            let mut log = self.log.lock().unwrap();
            log.in_flight += 1;
            let concurrent = log.in_flight;
            log.seen.push(Seen {
                at: Instant::now(),
                prompt_chars: request.messages.iter().map(Message::char_len).sum(),
                concurrent,
            });
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let result = self.inner.complete(request).await;
        self.log.lock().unwrap().in_flight -= 1;
        result
    }
}
