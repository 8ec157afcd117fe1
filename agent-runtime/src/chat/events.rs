//! The event stream of a chat run, and the call observer that feeds it and the usage ledger.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use agent_core::{CallError, Completion, Message, StopReason, Usage};
use futures::Stream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::error::ChatError;
use super::result::{ChatResult, Ledger, UsageReport};
use crate::scheduler::{CallInfo, CallObserver};

/// One thing that happened in a chat run, in order.
///
/// A [`ChatEventStream`] yields `Message`s as they are appended (task messages first),
/// `SpeakerSelected` before each turn, the model-call life-cycle of every call the run causes
/// (hidden ones included) with the `TokenDelta`s of streamed ones, `Stopped` when the run
/// decides to stop, and finally `Finished` with the run's result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChatEvent {
    /// A message was appended to the thread.
    Message(Message),
    /// The next speaker was chosen.
    SpeakerSelected {
        /// Its name.
        name: Arc<str>,
    },
    /// A model call entered the scheduler's admission queue.
    CallQueued {
        /// The agent (or the chat, for selector and reflection calls).
        agent: Arc<str>,
        /// The quota key.
        key: Arc<str>,
    },
    /// A model call was admitted.
    CallAdmitted {
        /// The agent.
        agent: Arc<str>,
        /// The quota key.
        key: Arc<str>,
        /// How long it waited in the queue.
        wait: Duration,
    },
    /// A streamed model call delivered more text (AutoGen's `ModelClientStreamingChunkEvent`):
    /// the reply's tokens as they arrive, before its `Message`. Only agents that stream (an
    /// [`LlmAgent`](agent_core::LlmAgent) built with `stream(true)`) produce these.
    TokenDelta {
        /// The agent whose call it is.
        agent: Arc<str>,
        /// The text that arrived.
        text: String,
    },
    /// A model call finished.
    CallFinished {
        /// The agent.
        agent: Arc<str>,
        /// The quota key.
        key: Arc<str>,
        /// The model's id ([`ChatModel::id`](agent_core::ChatModel::id)).
        model: Arc<str>,
        /// What the budget was charged, in nanodollars (priced by the model's id).
        cost_nanos: u64,
        /// Usage reported (none when the call failed).
        usage: Option<Usage>,
        /// Provider attempts made.
        attempts: u32,
        /// The error, when the call failed.
        error: Option<CallError>,
        /// True when a response cache answered (no quota, no budget, no provider call).
        cached: bool,
    },
    /// The run stopped for this reason (a `Finished` follows).
    Stopped(StopReason),
    /// The run's result. Always the last event.
    Finished(Box<Result<ChatResult, ChatError>>),
}

impl ChatEvent {
    /// The run's result, when this is the final [`ChatEvent::Finished`] event (saves unpacking
    /// the box by hand).
    ///
    /// ```
    /// use agent_core::{Agent, AgentError, AgentReply, Message, TurnContext};
    /// use agent_runtime::chat::{ChatEvent, GroupChat};
    /// use futures::StreamExt;
    ///
    /// struct Echo;
    ///
    /// #[agent_core::async_trait]
    /// impl Agent for Echo {
    ///     fn name(&self) -> &str { "echo" }
    ///     async fn reply(&self, _h: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
    ///         Ok(AgentReply::message(Message::assistant("echo", "hi")))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut chat = GroupChat::builder().participant(Echo).max_turns(1).build().unwrap();
    /// let mut events = chat.run_stream("go");
    /// let mut finished = None;
    /// while let Some(event) = events.next().await {
    ///     if let Some(Ok(result)) = event.finished() {
    ///         finished = Some(result.messages.len());
    ///     }
    /// }
    /// assert_eq!(finished, Some(2));
    /// # });
    /// ```
    pub fn finished(&self) -> Option<Result<&ChatResult, &ChatError>> {
        match self {
            ChatEvent::Finished(result) => Some(result.as_ref().as_ref()),
            _ => None,
        }
    }
}

/// State shared between a chat and the observers of its turn contexts.
#[derive(Debug, Default)]
pub(crate) struct ChatShared {
    inner: Mutex<SharedInner>,
}

#[derive(Debug, Default)]
struct SharedInner {
    ledger: Ledger,
    events: Option<UnboundedSender<ChatEvent>>,
}

impl ChatShared {
    fn lock(&self) -> MutexGuard<'_, SharedInner> {
        // A poisoned lock only means an observer panicked; the totals are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a run: clears the ledger and sets (or clears) the event sink.
    pub(crate) fn begin(&self, events: Option<UnboundedSender<ChatEvent>>) {
        let mut inner = self.lock();
        inner.ledger.clear();
        inner.events = events;
    }

    /// Ends a run: drops the event sink and returns the run's usage.
    pub(crate) fn finish(&self) -> UsageReport {
        let mut inner = self.lock();
        inner.events = None;
        inner.ledger.report()
    }
}

/// Observes the calls of one agent's turn context: records them in the chat's ledger, emits
/// events, and forwards to an outer observer (a nested chat reports to its parent this way).
pub(crate) struct AgentObserver {
    pub(crate) agent: Arc<str>,
    pub(crate) shared: Arc<ChatShared>,
    pub(crate) forward: Arc<[Arc<dyn CallObserver>]>,
}

impl fmt::Debug for AgentObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentObserver")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl AgentObserver {
    fn emit(&self, make: impl FnOnce() -> ChatEvent) {
        let inner = self.shared.lock();
        if let Some(tx) = &inner.events {
            // A closed receiver only means nobody listens any more.
            let _ = tx.send(make());
        }
    }
}

impl CallObserver for AgentObserver {
    fn queued(&self, key: &str) {
        for f in self.forward.iter() {
            f.queued(key);
        }
        self.emit(|| ChatEvent::CallQueued {
            agent: self.agent.clone(),
            key: Arc::from(key),
        });
    }

    fn admitted(&self, key: &str, wait: Duration) {
        for f in self.forward.iter() {
            f.admitted(key, wait);
        }
        self.emit(|| ChatEvent::CallAdmitted {
            agent: self.agent.clone(),
            key: Arc::from(key),
            wait,
        });
    }

    fn delta(&self, key: &str, text: &str) {
        for f in self.forward.iter() {
            f.delta(key, text);
        }
        self.emit(|| ChatEvent::TokenDelta {
            agent: self.agent.clone(),
            text: text.to_owned(),
        });
    }

    fn call_finished(&self, info: &CallInfo<'_>, result: Result<&Completion, &CallError>) {
        for f in self.forward.iter() {
            f.call_finished(info, result);
        }
        let usage = result.ok().and_then(|c| c.usage);
        // Usage "per model" is keyed by the model's id and priced once, by the scheduler: the
        // quota key may be any label.
        let cached = result.is_ok_and(|c| c.cached);
        let mut inner = self.shared.lock();
        if cached {
            inner.ledger.record_cached(&self.agent, info.model, usage);
        } else {
            inner.ledger.record(
                &self.agent,
                info.model,
                usage,
                result.is_err(),
                info.attempts,
                info.cost_nanos,
            );
        }
        if let Some(tx) = &inner.events {
            let _ = tx.send(ChatEvent::CallFinished {
                agent: self.agent.clone(),
                key: Arc::from(info.key),
                model: Arc::from(info.model),
                cost_nanos: info.cost_nanos,
                usage,
                attempts: info.attempts,
                error: result.err().cloned(),
                cached,
            });
        }
    }
}

type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<ChatResult, ChatError>> + Send + 'a>>;

/// The events of one chat run, ending with [`ChatEvent::Finished`]. Created by
/// [`GroupChat::run_stream`](super::GroupChat::run_stream); the run makes progress only while the
/// stream is polled, and dropping the stream drops the run (the chat keeps every message appended
/// so far).
#[must_use = "a chat run makes progress only while its stream is polled"]
pub struct ChatEventStream<'a> {
    run: Option<RunFuture<'a>>,
    events: UnboundedReceiver<ChatEvent>,
    result: Option<Result<ChatResult, ChatError>>,
}

impl fmt::Debug for ChatEventStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatEventStream")
            .field("running", &self.run.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> ChatEventStream<'a> {
    /// A channel for the run's events, and a stream that drives `make_run(sender)` while yielding
    /// them.
    pub(crate) fn new(make_run: impl FnOnce(UnboundedSender<ChatEvent>) -> RunFuture<'a>) -> Self {
        let (tx, rx) = unbounded_channel();
        Self {
            run: Some(make_run(tx)),
            events: rx,
            result: None,
        }
    }
}

impl Stream for ChatEventStream<'_> {
    type Item = ChatEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChatEvent>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(Some(event)) = this.events.poll_recv(cx) {
                return Poll::Ready(Some(event));
            }
            match this.run.as_mut() {
                Some(run) => match run.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        this.run = None;
                        this.result = Some(result);
                        // Drain whatever the run sent before finishing.
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                },
                None => {
                    return Poll::Ready(
                        this.result.take().map(|r| ChatEvent::Finished(Box::new(r))),
                    );
                }
            }
        }
    }
}
