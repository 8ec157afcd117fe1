//! The runtime's [`TurnContext`]: binds a turn to its scheduler, conversation, agent and budget.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use agent_core::{
    Budget, CallError, CallKind, CallStream, ChatModel, ChatRequest, Completion, TokenEstimator,
    TurnContext,
};
use tokio_util::sync::CancellationToken;

use crate::cache::ResponseCache;
use crate::scheduler::{CallObserver, KeyHandle, ModelCall, QuotaScheduler};

/// A [`TurnContext`] that sends every model call through a [`QuotaScheduler`].
#[derive(Clone)]
pub struct SchedulerContext {
    scheduler: QuotaScheduler,
    conversation: Arc<str>,
    agent: Arc<str>,
    budget: Budget,
    priority: u8,
    cancel: CancellationToken,
    observer: Option<Arc<dyn CallObserver>>,
    /// The quota key of the first model called, looked up once.
    key: OnceLock<KeyHandle>,
    /// The response cache of this context's calls, over the scheduler's.
    cache: Option<ResponseCache>,
    /// The tenant this context's calls are queued as, with its weight.
    tenant: Option<(Arc<str>, NonZeroU32)>,
}

impl fmt::Debug for SchedulerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerContext")
            .field("conversation", &self.conversation)
            .field("agent", &self.agent)
            .field("budget", &self.budget.name())
            .field("priority", &self.priority)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl SchedulerContext {
    /// A context for `agent` in `conversation`, charging `budget`.
    pub fn new(
        scheduler: QuotaScheduler,
        conversation: impl Into<Arc<str>>,
        agent: impl Into<Arc<str>>,
        budget: Budget,
    ) -> Self {
        Self {
            scheduler,
            conversation: conversation.into(),
            agent: agent.into(),
            budget,
            priority: 0,
            cancel: CancellationToken::new(),
            observer: None,
            key: OnceLock::new(),
            cache: None,
            tenant: None,
        }
    }

    /// Answers this context's calls through `cache` instead of the scheduler's (a chat sets it
    /// per chat or per agent; [`ResponseCache::disabled`] bypasses caching).
    #[must_use]
    pub fn with_cache(mut self, cache: ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The response cache set on this context, if any.
    pub fn cache(&self) -> Option<&ResponseCache> {
        self.cache.as_ref()
    }

    /// The same context for another agent.
    #[must_use]
    pub fn for_agent(&self, agent: impl Into<Arc<str>>) -> Self {
        Self {
            agent: agent.into(),
            ..self.clone()
        }
    }

    /// Sets the cancellation token (cancels queued and in-flight calls).
    #[must_use]
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Sets the observer of call life-cycles.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Sets the admission priority.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Queues this context's calls as tenant `label` with `weight` (see
    /// [`ModelCall::with_tenant`]).
    #[must_use]
    pub fn with_tenant(mut self, label: impl Into<Arc<str>>, weight: NonZeroU32) -> Self {
        self.tenant = Some((label.into(), weight));
        self
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &QuotaScheduler {
        &self.scheduler
    }

    /// The cancellation token.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The observer, if any.
    pub fn observer(&self) -> Option<&Arc<dyn CallObserver>> {
        self.observer.as_ref()
    }

    /// The quota key of `model` when it is the first model this context called (looked up
    /// once); `None` for another model.
    fn first_key(&self, model: &dyn ChatModel) -> Option<&KeyHandle> {
        let name = model.id();
        let key = self.key.get_or_init(|| self.scheduler.key_handle(name));
        (key.name() == name).then_some(key)
    }

    /// A call on behalf of this turn (no observer yet: a call borrows it, a stream keeps it).
    fn model_call<'a>(
        &'a self,
        model: &'a dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
    ) -> ModelCall<'a> {
        let call = ModelCall::new(
            model,
            request,
            kind,
            &self.conversation,
            &self.agent,
            &self.budget,
        )
        .with_priority(self.priority)
        .with_cancel(&self.cancel);
        let call = match &self.tenant {
            Some((label, weight)) => call.with_tenant(label, *weight),
            None => call,
        };
        match &self.cache {
            Some(cache) => call.with_cache(cache),
            None => call,
        }
    }
}

// Written out rather than with `#[async_trait]`: the macro would wrap the scheduler's future in
// one more async block, copied whole into its box and again on the first poll (about 2 KB each
// time, on every model call). Boxing the pipeline's future directly makes one copy.
impl TurnContext for SchedulerContext {
    fn complete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        model: &'life1 dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
    ) -> Pin<Box<dyn Future<Output = Result<Completion, CallError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let mut call = self.model_call(model, request, kind);
        if let Some(o) = &self.observer {
            call = call.with_observer(&**o);
        }
        match self.first_key(model) {
            Some(key) => Box::pin(self.scheduler.call_on(call, key)),
            // An agent calling a second model: the ordinary lookup.
            None => Box::pin(self.scheduler.call(call)),
        }
    }

    fn stream<'life0, 'life1, 'async_trait>(
        &'life0 self,
        model: &'life1 dyn ChatModel,
        request: ChatRequest,
        kind: CallKind,
    ) -> Pin<Box<dyn Future<Output = Result<CallStream, CallError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let mut call = self.model_call(model, request, kind);
        if let Some(o) = &self.observer {
            // The stream reports its deltas and its end after this returns: it keeps a handle.
            call = call.with_shared_observer(o.clone());
        }
        let key = self.first_key(model);
        Box::pin(async move {
            let stream = match key {
                Some(key) => self.scheduler.call_stream_on(call, key).await?,
                None => self.scheduler.call_stream(call).await?,
            };
            Ok(CallStream::new(stream))
        })
    }

    fn conversation(&self) -> &str {
        &self.conversation
    }

    fn agent(&self) -> &str {
        &self.agent
    }

    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn estimator(&self) -> &dyn TokenEstimator {
        self.scheduler.estimator()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
