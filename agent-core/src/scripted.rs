//! A scripted model for tests and examples: answers from a queue and records every request.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::message::{Message, ToolCall, Usage};
use crate::model::{ChatModel, ChatRequest, Completion, FinishReason, ModelError};

type Responder = dyn Fn(&ChatRequest) -> Result<Completion, ModelError> + Send + Sync;

/// A [`ChatModel`] that returns queued completions in order, then falls back to a responder (or an
/// error when none is set), and records every request it received.
///
/// ```
/// use agent_core::{ChatModel, ChatRequest, Message, ScriptedModel};
///
/// let model = ScriptedModel::new("test/scripted").text("first").text("second");
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let a = model.complete(ChatRequest::new(vec![Message::user("q")])).await.unwrap();
/// assert_eq!(a.message.text(), Some("first"));
/// assert_eq!(model.requests().len(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct ScriptedModel {
    id: Arc<str>,
    inner: Arc<Mutex<Inner>>,
    responder: Option<Arc<Responder>>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Result<Completion, ModelError>>,
    requests: Vec<ChatRequest>,
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("ScriptedModel")
            .field("id", &self.id)
            .field("queued", &inner.queue.len())
            .field("requests", &inner.requests.len())
            .field("responder", &self.responder.is_some())
            .finish()
    }
}

impl ScriptedModel {
    /// An empty script for model `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            inner: Arc::default(),
            responder: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a text completion; usage is estimated as characters ÷ 4 of prompt and reply.
    #[must_use]
    pub fn text(self, text: impl Into<Arc<str>>) -> Self {
        let message = Message::assistant(self.id.clone(), text);
        self.push(Ok(Completion {
            message,
            usage: None,
            finish_reason: FinishReason::Stop,
            rate_limits: None,
            cached: false,
        }))
    }

    /// Queues a completion asking for tool calls.
    #[must_use]
    pub fn tool_calls(self, calls: Vec<ToolCall>) -> Self {
        let message = Message::tool_calls(self.id.clone(), calls);
        self.push(Ok(Completion {
            message,
            usage: None,
            finish_reason: FinishReason::ToolCalls,
            rate_limits: None,
            cached: false,
        }))
    }

    /// Queues an error.
    #[must_use]
    pub fn error(self, error: ModelError) -> Self {
        self.push(Err(error))
    }

    /// Queues any result as is (set `usage` yourself to control reported usage).
    #[must_use]
    pub fn push(self, result: Result<Completion, ModelError>) -> Self {
        self.lock().queue.push_back(result);
        self
    }

    /// Answers with `responder` once the queue is empty.
    #[must_use]
    pub fn with_responder(
        mut self,
        responder: impl Fn(&ChatRequest) -> Result<Completion, ModelError> + Send + Sync + 'static,
    ) -> Self {
        self.responder = Some(Arc::new(responder));
        self
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.lock().requests.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Completions still queued.
    pub fn remaining(&self) -> usize {
        self.lock().queue.len()
    }
}

fn estimate_usage(request: &ChatRequest, completion: &Completion) -> Usage {
    let prompt: usize = request.messages.iter().map(Message::char_len).sum();
    Usage::new(
        prompt.div_ceil(4) as u64,
        completion.message.char_len().div_ceil(4) as u64,
    )
}

#[async_trait]
impl ChatModel for ScriptedModel {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        let next = {
            let mut inner = self.lock();
            inner.requests.push(request.clone());
            inner.queue.pop_front()
        };
        let result = match (next, &self.responder) {
            (Some(result), _) => result,
            (None, Some(responder)) => responder(&request),
            (None, None) => Err(ModelError::InvalidRequest {
                status: None,
                message: format!(
                    "scripted model '{}' has no more completions queued",
                    self.id
                ),
            }),
        };
        result.map(|mut c| {
            if c.usage.is_none() {
                let usage = estimate_usage(&request, &c);
                c.usage = Some(usage);
                c.message.usage = Some(usage);
            }
            c
        })
    }
}
