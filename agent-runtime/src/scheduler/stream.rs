//! The streaming shape of the provider stage: [`QuotaScheduler::call_stream`] and the
//! [`ModelStream`] it returns.
//!
//! A stream passes the same pipeline as a call: budget and quota are reserved before the first
//! byte, the attempt loop ([`CallAttempts::attempts`]) retries until the provider's first event
//! has arrived — and never after — and the reconcile stage runs when the stream ends: on its
//! completed event, on an error, on cancellation, or when the reader drops it. What it charges:
//! the provider's usage when it reports one (`stream_options.include_usage`), exactly as for a
//! call; otherwise the prompt's estimate plus the estimate of what arrived.
//!
//! The response cache stage comes first here too: a hit is replayed as a stream (the deltas the
//! original stream arrived in, then its completion), and a miss that completes is stored with
//! its deltas.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use agent_core::{
    Budget, CallError, CallKind, ChatModel, ChatRequest, Completion, CompletionStream, Message,
    ModelError, StreamEvent, Usage,
};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::admission::Key;
use super::attempt::Cached;
use super::attempt::{Delivery, charge_usage};
use super::deadline::Deadlines;
use super::metrics::CallRecord;
use super::reconcile::{Outcome, Parked, RemoteSettle, StreamEnd};
use super::{
    CallObserver, Caller, Inner, KeyHandle, ModelCall, QuotaScheduler, admission_span, traced,
};
use crate::cache::{Hit, Pending};

/// The provider stage of [`QuotaScheduler::call_stream`]: the provider's stream, once its first
/// event has arrived. An error before that fails the attempt (and may be retried); nothing after
/// it is retried.
pub(super) struct Streamed;

/// A stream whose first event has arrived.
pub(super) struct Opened {
    first: StreamEvent,
    rest: CompletionStream,
}

impl Delivery for Streamed {
    type Response = Opened;

    // Not an `async fn`: that future would borrow the stage too, which the trait does not allow.
    #[allow(clippy::manual_async_fn)]
    fn send<'m>(
        &self,
        model: &'m dyn ChatModel,
        request: ChatRequest,
        deadlines: Deadlines,
    ) -> impl Future<Output = Result<Opened, ModelError>> + Send + 'm {
        async move {
            let started = Instant::now();
            let rest = model.stream(request).await?;
            // The attempt deadline counts from before the request; the idle one between events
            // (the first included), for the whole stream, after this returns too.
            let mut rest = deadlines.bound_stream(rest, started);
            match rest.next().await {
                Some(Ok(first)) => Ok(Opened { first, rest }),
                Some(Err(error)) => Err(error),
                None => Err(ModelError::transient(
                    "the provider's stream ended before its first event",
                )),
            }
        }
    }
}

impl QuotaScheduler {
    /// Runs one model call through the pipeline as a stream: budget → quota admission →
    /// provider ([`ChatModel::stream`]) → reconcile when the stream ends.
    ///
    /// Resolves once the provider's first event has arrived: admission, and every retry, happen
    /// before (a failure before the first event is retried like any call's; the errors are
    /// [`call`](Self::call)'s). The [`ModelStream`] then yields the events and is reconciled when
    /// it ends — on its completed event, on an error (not retried), when the call's cancellation
    /// token fires, or when it is dropped — so an abandoned stream frees its in-flight slot and
    /// settles its budget. It owns what it needs (`'static`).
    ///
    /// The call's borrowed observer ([`ModelCall::with_observer`]) sees queueing and admission
    /// only; the stream reports its deltas and its end to the shared one
    /// ([`ModelCall::with_shared_observer`]).
    ///
    /// ```
    /// use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, Message, ScriptedModel, StreamEvent};
    /// use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
    /// use futures::StreamExt;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// let scheduler = QuotaScheduler::builder()
    ///     .quota("test/model", Quota::per_minute().requests(60).tokens(10_000))
    ///     .build()
    ///     .unwrap();
    /// let model = ScriptedModel::new("test/model").text("hello");
    /// let budget = Budget::new("run", BudgetLimits::calls(10));
    /// let request = ChatRequest::new(vec![Message::user("hi")]).with_max_completion_tokens(16);
    /// let call = ModelCall::new(&model, request, CallKind::Reply, "chat-1", "assistant", &budget);
    /// let mut stream = scheduler.call_stream(call).await.unwrap();
    /// assert_eq!(stream.next().await.unwrap().unwrap(), StreamEvent::TextDelta("hello".into()));
    /// let completion = stream.completion().await.unwrap();
    /// assert_eq!(completion.message.text(), Some("hello"));
    /// assert_eq!(budget.used().calls, 1);
    /// assert_eq!(scheduler.snapshot().keys["test/model"].in_flight, 0);
    /// # });
    /// ```
    pub fn call_stream<'a>(
        &'a self,
        call: ModelCall<'a>,
    ) -> impl Future<Output = Result<ModelStream, CallError>> + Send + 'a {
        let key = self
            .inner
            .key(call.quota_key.unwrap_or_else(|| call.model.id()));
        self.dispatch_stream(call, key)
    }

    /// [`call_stream`](Self::call_stream) on a key looked up before; `key` must be the call's.
    pub(crate) fn call_stream_on<'a>(
        &'a self,
        call: ModelCall<'a>,
        key: &'a KeyHandle,
    ) -> impl Future<Output = Result<ModelStream, CallError>> + Send + 'a {
        self.dispatch_stream(call, &key.0)
    }

    fn dispatch_stream<'a, K: Borrow<Arc<Key>> + Send + 'a>(
        &'a self,
        call: ModelCall<'a>,
        key: K,
    ) -> impl Future<Output = Result<ModelStream, CallError>> + Send + 'a {
        let span = admission_span(&call, key.borrow());
        traced(span, self.open_stream(call, key))
    }

    async fn open_stream<K: Borrow<Arc<Key>>>(
        &self,
        call: ModelCall<'_>,
        key: K,
    ) -> Result<ModelStream, CallError> {
        let key = key.borrow();
        let mut call = self.prepare(call, key);
        let mut record = CallRecord::default();
        // The cache stage first: a hit is replayed, with nothing reserved for it.
        let looked = call.attempts(&self.inner, key, &mut record).lookup().await;
        let result = match looked {
            Ok(Cached::Hit(hit)) => {
                return Ok(ModelStream::replay(
                    self.inner.clone(),
                    key.clone(),
                    hit,
                    call.caller(),
                    call.shared_observer.take(),
                ));
            }
            Ok(Cached::Miss(pending)) => call
                .attempts(&self.inner, key, &mut record)
                .attempts(&Streamed)
                .await
                // Parked at once: the guard no longer borrows the call's state.
                .map(|(in_flight, opened)| ((in_flight.park(), opened), pending)),
            Err(error) => Err(error),
        };
        let ((parked, opened), pending) = match result {
            Ok(opened) => opened,
            Err(error) => {
                self.inner.finish_call(
                    key,
                    call.caller(),
                    &mut record,
                    call.observer(),
                    Err(&error),
                );
                return Err(error);
            }
        };
        Ok(ModelStream {
            scheduler: self.inner.clone(),
            key: key.clone(),
            state: State::Open(Box::new(Open {
                first: Some(opened.first),
                rest: opened.rest,
                parked,
                budget: call.budget.clone(),
                model: Arc::from(call.model.id()),
                conversation: Arc::from(call.conversation),
                agent: Arc::from(call.agent),
                kind: call.kind,
                client: Arc::from(call.client()),
                observer: call.shared_observer.take(),
                cancel: call.cancel.map(|c| Box::pin(c.clone().cancelled_owned())),
                record,
                prompt: call.prompt,
                received: String::new(),
                deltas: Vec::new(),
                pending,
            })),
        })
    }
}

/// One model call's events, from [`QuotaScheduler::call_stream`]: text deltas as they arrive,
/// then [`StreamEvent::Completed`] with the assembled completion — or one error, after which
/// nothing follows. The call holds its quota and budget reservation until the stream ends;
/// dropping it ends the call and settles both (what arrived, plus the prompt's estimate).
///
/// `'static` and `Unpin`: keep it across awaits, move it to another task, or wrap it in an
/// [`agent_core::CallStream`].
#[must_use = "a model stream makes progress only while polled; dropping it ends the call"]
pub struct ModelStream {
    scheduler: Arc<Inner>,
    key: Arc<Key>,
    state: State,
}

// The last event is held once, for one poll; boxing it would cost an allocation per stream.
#[allow(clippy::large_enum_variant)]
enum State {
    Open(Box<Open>),
    /// A cache hit being replayed.
    Replay(Box<Replay>),
    /// Ended: the last item, after a shared backend has been told.
    Settling {
        remote: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        last: Option<Result<StreamEvent, CallError>>,
    },
    Done,
}

/// What an open stream carries until it is reconciled.
struct Open {
    /// The provider's first event, not yet yielded.
    first: Option<StreamEvent>,
    rest: CompletionStream,
    parked: Parked,
    budget: Budget,
    model: Arc<str>,
    conversation: Arc<str>,
    agent: Arc<str>,
    kind: CallKind,
    /// Whose share the call took in the queue (its tenant, or its conversation).
    client: Arc<str>,
    observer: Option<Arc<dyn CallObserver>>,
    cancel: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    record: CallRecord,
    /// The prompt's estimated tokens.
    prompt: u64,
    /// The text received so far, to estimate what to charge when the provider reports no usage.
    received: String,
    /// The deltas as they arrived, kept for the response cache (only when `pending`).
    deltas: Vec<String>,
    /// The response cache's miss, stored when the stream completes.
    pending: Option<Pending>,
}

/// A cache hit replayed as the stream it was recorded from.
struct Replay {
    deltas: std::collections::VecDeque<String>,
    completion: Completion,
    model: Arc<str>,
    conversation: Arc<str>,
    agent: Arc<str>,
    kind: CallKind,
    observer: Option<Arc<dyn CallObserver>>,
}

/// Why a stream is being reconciled.
// Lives on the stack for one call.
#[allow(clippy::large_enum_variant)]
enum End {
    Completed(Completion),
    Failed(ModelError),
    Cancelled,
    Dropped,
}

impl fmt::Debug for ModelStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelStream")
            .field("key", &self.key.name)
            .field("open", &matches!(self.state, State::Open(_)))
            .finish_non_exhaustive()
    }
}

impl ModelStream {
    /// Reads the rest of the stream and returns the assembled completion (the
    /// [`StreamEvent::Completed`] event), or the error the stream ended with.
    pub async fn completion(mut self) -> Result<Completion, CallError> {
        while let Some(event) = self.next().await {
            if let StreamEvent::Completed(completion) = event? {
                return Ok(completion);
            }
        }
        Err(CallError::Model(ModelError::transient(
            "the stream was read past its end; its completion was yielded before",
        )))
    }

    /// A stream replaying a cache hit: its deltas (the completion's text as one delta when it
    /// was not recorded from a stream), then the completion, marked cached.
    fn replay(
        scheduler: Arc<Inner>,
        key: Arc<Key>,
        hit: Box<Hit>,
        caller: Caller<'_>,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Self {
        let Hit { completion, deltas } = *hit;
        let deltas = if deltas.is_empty() {
            completion
                .message
                .text()
                .map(str::to_owned)
                .into_iter()
                .collect()
        } else {
            deltas.into()
        };
        Self {
            scheduler,
            key,
            state: State::Replay(Box::new(Replay {
                deltas,
                completion,
                model: Arc::from(caller.model),
                conversation: Arc::from(caller.conversation),
                agent: Arc::from(caller.agent),
                kind: caller.kind,
                observer,
            })),
        }
    }

    /// Ends the stream for `end`: reconciles it and keeps the last item (and a shared backend's
    /// settle, and the response cache's write) for the next poll.
    fn end(&mut self, end: End) {
        let State::Open(mut open) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        // A stream that did not complete drops its miss: waiting identical calls try themselves.
        let store = match (open.pending.take(), &end) {
            (Some(pending), End::Completed(completion)) => {
                let completion = completion.clone();
                let deltas = std::mem::take(&mut open.deltas);
                Some(async move { pending.remember_stream(Ok(&completion), deltas).await })
            }
            _ => None,
        };
        let (last, remote) = settle(&self.scheduler, &self.key, *open, end);
        let after: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = match (remote, store) {
            (None, None) => None,
            (remote, store) => Some(Box::pin(async move {
                if let Some(remote) = remote {
                    remote.apply_detached().await;
                }
                if let Some(store) = store {
                    store.await;
                }
            })),
        };
        self.state = State::Settling {
            remote: after,
            last,
        };
    }
}

impl Stream for ModelStream {
    type Item = Result<StreamEvent, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let open = match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Settling { remote, last } => {
                    if let Some(r) = remote {
                        ready!(r.as_mut().poll(cx));
                    }
                    let last = last.take();
                    this.state = State::Done;
                    return Poll::Ready(last);
                }
                State::Replay(replay) => {
                    if let Some(text) = replay.deltas.pop_front() {
                        if let Some(o) = &replay.observer {
                            o.delta(&this.key.name, &text);
                        }
                        return Poll::Ready(Some(Ok(StreamEvent::TextDelta(text))));
                    }
                    let State::Replay(replay) = std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Ready(None);
                    };
                    let Replay {
                        completion,
                        model,
                        conversation,
                        agent,
                        kind,
                        observer,
                        ..
                    } = *replay;
                    let caller = Caller {
                        model: &model,
                        conversation: &conversation,
                        agent: &agent,
                        kind,
                    };
                    this.scheduler.finish_call(
                        &this.key,
                        caller,
                        &mut CallRecord::default(),
                        observer.as_deref(),
                        Ok(&completion),
                    );
                    return Poll::Ready(Some(Ok(StreamEvent::Completed(completion))));
                }
                State::Open(open) => open,
            };
            if open
                .cancel
                .as_mut()
                .is_some_and(|c| c.as_mut().poll(cx).is_ready())
            {
                this.end(End::Cancelled);
                continue;
            }
            let event = match open.first.take() {
                Some(event) => event,
                None => match ready!(open.rest.poll_next_unpin(cx)) {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        this.end(End::Failed(error));
                        continue;
                    }
                    None => {
                        this.end(End::Failed(ModelError::transient(
                            "the provider's stream ended without its completed event",
                        )));
                        continue;
                    }
                },
            };
            match event {
                StreamEvent::Completed(completion) => {
                    this.end(End::Completed(completion));
                    continue;
                }
                StreamEvent::TextDelta(text) => {
                    open.received.push_str(&text);
                    if open.pending.is_some() {
                        open.deltas.push(text.clone());
                    }
                    if let Some(o) = &open.observer {
                        o.delta(&this.key.name, &text);
                    }
                    return Poll::Ready(Some(Ok(StreamEvent::TextDelta(text))));
                }
                other => return Poll::Ready(Some(Ok(other))),
            }
        }
    }
}

impl Drop for ModelStream {
    fn drop(&mut self) {
        let State::Open(open) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let (_, remote) = settle(&self.scheduler, &self.key, *open, End::Dropped);
        if let Some(remote) = remote {
            remote.apply_in_background();
        }
    }
}

/// The reconcile stage of a stream: quota and budget settled to what the stream used, the
/// conversation's record and the observer told. Synchronous (a `Drop` runs it); a shared
/// backend's part is returned.
fn settle(
    scheduler: &Inner,
    key: &Arc<Key>,
    open: Open,
    end: End,
) -> (Option<Result<StreamEvent, CallError>>, Option<RemoteSettle>) {
    let Open {
        parked,
        budget,
        model,
        conversation,
        agent,
        kind,
        client,
        observer,
        mut record,
        prompt,
        received,
        ..
    } = open;
    // The estimate of what the provider generated, when it does not say.
    let counted =
        |message: &Message| Usage::new(prompt, scheduler.estimator.message_tokens(message));
    let (result, usage, reported, stream_end) = match end {
        End::Completed(completion) => match completion.usage {
            Some(usage) => (Ok(completion), usage, true, StreamEnd::Completed),
            None => {
                let usage = counted(&completion.message);
                (Ok(completion), usage, false, StreamEnd::Completed)
            }
        },
        end => {
            let usage = if received.is_empty() {
                Usage::new(prompt, 0)
            } else {
                counted(&Message::assistant(&*model, received))
            };
            let (error, stream_end) = match end {
                End::Failed(error) if error.is_retryable() => {
                    (CallError::Model(error), StreamEnd::Cut)
                }
                End::Failed(error) => (CallError::Model(error), StreamEnd::Abandoned),
                _ => (CallError::Cancelled, StreamEnd::Abandoned),
            };
            (Err(error), usage, false, stream_end)
        }
    };
    let reading = result.as_ref().ok().and_then(|c| c.rate_limits.as_ref());
    let outcome = if reported {
        Outcome::Completed {
            usage: Some(usage),
            reading,
        }
    } else {
        Outcome::Streamed {
            usage,
            reading,
            end: stream_end,
        }
    };
    let (reservation, _, remote) = parked.resume(scheduler, key, &client).finish(outcome);
    if let Some(r) = reservation {
        charge_usage(r, &budget, &model, usage, reported, &mut record);
    }
    tracing::debug!(
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        reported,
        ?stream_end,
        "stream ended"
    );
    let caller = Caller {
        model: &model,
        conversation: &conversation,
        agent: &agent,
        kind,
    };
    scheduler.finish_call(
        key,
        caller,
        &mut record,
        observer.as_deref(),
        result.as_ref(),
    );
    (Some(result.map(StreamEvent::Completed)), remote)
}
