//! What every team type shares around its own loop: the per-agent turn contexts (so every call
//! goes through the scheduler on the chat's budget), the event sink, cancellation, one agent
//! turn, and turning a run's outcome into a [`ChatResult`].

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use agent_core::{
    Agent, AgentError, AgentReply, Budget, BudgetExhausted, CallError, Charge, Message, StopReason,
};
use futures::future::Either;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cancel::CancelHandle;
use super::error::{ChatConfigError, ChatError, ChatErrorKind};
use super::events::{AgentObserver, ChatEvent, ChatShared};
use super::result::ChatResult;
use super::summary::{SummaryMethod, last_text};
use crate::cache::ResponseCache;
use crate::context::SchedulerContext;
use crate::scheduler::{CallObserver, QuotaScheduler};

/// A unique `<prefix>-N` conversation id.
pub(crate) fn next_conversation_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Checks the names every team builder checks — at least one participant, no two alike, none
/// like the chat's own name (`name`, or `default`) — and returns the participants' names and the
/// chat's.
pub(crate) fn check_names(
    agents: &[Arc<dyn Agent>],
    name: Option<&str>,
    default: &str,
) -> Result<(Vec<Arc<str>>, Arc<str>), ChatConfigError> {
    if agents.is_empty() {
        return Err(ChatConfigError::NoParticipants);
    }
    let names: Vec<Arc<str>> = agents.iter().map(|a| Arc::from(a.name())).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(ChatConfigError::DuplicateName {
                name: n.to_string(),
            });
        }
    }
    let name: Arc<str> = Arc::from(name.unwrap_or(default));
    if names.contains(&name) {
        return Err(ChatConfigError::NameClash {
            name: name.to_string(),
        });
    }
    Ok((names, name))
}

/// The builder methods of the settings every team shares, for a builder with a
/// `settings: SessionSettings` field; `$prefix` is the default conversation id's prefix.
macro_rules! session_setters {
    ($prefix:literal) => {
        /// The budget every call of the team is charged to (default: unlimited): its members'
        /// replies and its own calls. A runaway loop or a wide fan-out ends here, never beyond.
        pub fn budget(mut self, budget: agent_core::Budget) -> Self {
            self.settings.budget = Some(budget);
            self
        }

        /// The scheduler every call goes through (default: a new scheduler with no quotas; share
        /// one across chats to share quotas).
        pub fn scheduler(mut self, scheduler: $crate::scheduler::QuotaScheduler) -> Self {
            self.settings.scheduler = Some(scheduler);
            self
        }

        #[doc = concat!("The conversation id calls are queued under (default: a unique `", $prefix, "-N`).")]
        pub fn conversation_id(mut self, id: impl Into<String>) -> Self {
            self.settings.conversation_id = Some(id.into());
            self
        }

        /// The admission priority of the team's calls (higher first; default 0).
        pub fn priority(mut self, priority: u8) -> Self {
            self.settings.priority = priority;
            self
        }

        /// Queues every call of the team as tenant `label` with `weight` instead of under its
        /// own conversation (see [`ModelCall::with_tenant`](crate::scheduler::ModelCall::with_tenant)):
        /// with token-fair queueing, the default, the chats of one tenant share one fair share of
        /// each key, weighted, so a customer running a hundred chats gets what a customer running
        /// one gets at the same weight.
        pub fn tenant(
            mut self,
            label: impl Into<String>,
            weight: std::num::NonZeroU32,
        ) -> Self {
            self.settings.tenant = Some((std::sync::Arc::from(label.into()), weight));
            self
        }

        /// How each run is summarized (default: the last message).
        pub fn summary_method(mut self, method: $crate::chat::SummaryMethod) -> Self {
            self.settings.summary = method;
            self
        }

        /// Adds an observer of every model call the team causes.
        pub fn call_observer(
            mut self,
            observer: std::sync::Arc<dyn $crate::scheduler::CallObserver>,
        ) -> Self {
            self.settings.observers.push(observer);
            self
        }
    };
}
pub(crate) use session_setters;

/// The settings every team builder collects the same way.
#[derive(Default)]
pub(crate) struct SessionSettings {
    pub(crate) conversation_id: Option<String>,
    pub(crate) budget: Option<Budget>,
    pub(crate) scheduler: Option<QuotaScheduler>,
    pub(crate) priority: u8,
    /// The tenant every call is queued as, with its weight.
    pub(crate) tenant: Option<(Arc<str>, NonZeroU32)>,
    pub(crate) summary: SummaryMethod,
    pub(crate) observers: Vec<Arc<dyn CallObserver>>,
    /// Cancelling this cancels the chat too (a nested chat's parent).
    pub(crate) parent_cancel: Option<CancellationToken>,
    /// The response cache of each participant's context, by position (`None`, or missing: the
    /// scheduler's). The chat's own context always uses the scheduler's.
    pub(crate) caches: Vec<Option<ResponseCache>>,
}

/// One chat's plumbing. Contexts: one per participant, in order, then the chat's own (ledger,
/// selector and reflection calls).
pub(crate) struct Session {
    pub(crate) name: Arc<str>,
    pub(crate) conversation: Arc<str>,
    pub(crate) names: Vec<Arc<str>>,
    pub(crate) budget: Budget,
    scheduler: QuotaScheduler,
    priority: u8,
    tenant: Option<(Arc<str>, NonZeroU32)>,
    observers: Arc<[Arc<dyn CallObserver>]>,
    pub(crate) contexts: Vec<SchedulerContext>,
    shared: Arc<ChatShared>,
    cancel: CancelHandle,
    pub(crate) token: CancellationToken,
    events: Option<UnboundedSender<ChatEvent>>,
    summary: SummaryMethod,
    caches: Vec<Option<ResponseCache>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("conversation", &self.conversation)
            .field("participants", &self.names)
            .finish_non_exhaustive()
    }
}

/// How one agent turn ended.
pub(crate) enum Turn {
    Replied(AgentReply),
    Stop(StopReason),
    Failed(Box<ChatErrorKind>),
}

impl Session {
    pub(crate) fn new(
        name: Arc<str>,
        prefix: &str,
        names: Vec<Arc<str>>,
        settings: SessionSettings,
    ) -> Self {
        let cancel = CancelHandle::new(settings.parent_cancel);
        let token = cancel.token();
        let mut session = Self {
            name,
            conversation: Arc::from(
                settings
                    .conversation_id
                    .unwrap_or_else(|| next_conversation_id(prefix)),
            ),
            names,
            budget: settings.budget.unwrap_or_default(),
            scheduler: settings.scheduler.unwrap_or_default(),
            priority: settings.priority,
            tenant: settings.tenant,
            observers: settings.observers.into(),
            contexts: Vec::new(),
            shared: Arc::new(ChatShared::default()),
            cancel,
            token,
            events: None,
            summary: settings.summary,
            caches: settings.caches,
        };
        session.contexts = session.make_contexts();
        session
    }

    fn make_contexts(&self) -> Vec<SchedulerContext> {
        self.names
            .iter()
            .chain(std::iter::once(&self.name))
            .enumerate()
            .map(|(i, agent)| {
                let observer = Arc::new(AgentObserver {
                    agent: agent.clone(),
                    shared: self.shared.clone(),
                    forward: self.observers.clone(),
                });
                let ctx = SchedulerContext::new(
                    self.scheduler.clone(),
                    self.conversation.clone(),
                    agent.clone(),
                    self.budget.clone(),
                )
                .with_cancel(self.token.clone())
                .with_observer(observer)
                .with_priority(self.priority);
                let ctx = match &self.tenant {
                    Some((label, weight)) => ctx.with_tenant(label.clone(), *weight),
                    None => ctx,
                };
                match self.caches.get(i).cloned().flatten() {
                    Some(cache) => ctx.with_cache(cache),
                    None => ctx,
                }
            })
            .collect()
    }

    /// Adopts another conversation id (a loaded state's): calls queue under it from now on.
    pub(crate) fn set_conversation(&mut self, conversation: Arc<str>) {
        self.conversation = conversation;
        self.contexts = self.make_contexts();
    }

    /// Replaces a consumed cancel with a fresh token, so the next run can start.
    pub(crate) fn renew_cancel(&mut self) {
        if let Some(fresh) = self.cancel.renew() {
            for ctx in &mut self.contexts {
                *ctx = ctx.clone().with_cancel(fresh.clone());
            }
            self.token = fresh;
        }
    }

    /// Whether the budget has room for one more call: checked before each turn, so a spent
    /// budget stops the chat before anyone is asked.
    pub(crate) fn room_for_a_call(&self) -> Result<(), BudgetExhausted> {
        const ONE_CALL: Charge = Charge {
            calls: 1,
            tokens: 0,
            cost_nanos: 0,
        };
        self.budget.check(ONE_CALL)
    }

    /// The chat's own context (ledger, selector and reflection calls).
    pub(crate) fn own_context(&self) -> &SchedulerContext {
        &self.contexts[self.names.len()]
    }

    pub(crate) fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    pub(crate) fn emit(&self, make: impl FnOnce() -> ChatEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(make());
        }
    }

    /// Starts a run: clears the usage ledger and sets the event sink.
    pub(crate) fn begin(&mut self, events: Option<UnboundedSender<ChatEvent>>) {
        self.shared.begin(events.clone());
        self.events = events;
    }

    /// Lets participant `index` reply to `history` through its context, racing cancellation.
    /// Budget exhaustion and cancellation become stops; other failures name the agent.
    pub(crate) async fn take_turn(
        &self,
        agent: &dyn Agent,
        index: usize,
        history: &[Message],
    ) -> Turn {
        let turn = agent.reply(history, &self.contexts[index]);
        // One span per turn (GenAI `invoke_agent`), the parent of its model calls' spans.
        let name = &self.names[index];
        let span = tracing::debug_span!(
            "turn",
            otel.name = %format_args!("invoke_agent {name}"),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = &**name,
            gen_ai.conversation.id = &*self.conversation,
        );
        // A span nobody records still costs on every poll: leave it out when it is disabled.
        let mut turn = if span.is_disabled() {
            Either::Left(turn)
        } else {
            Either::Right(turn.instrument(span))
        };
        // An instant agent finishes on the first poll; only a pending turn needs to race the
        // cancellation token.
        let reply = match futures::poll!(&mut turn) {
            Poll::Ready(r) => r,
            Poll::Pending => tokio::select! {
                biased;
                () = self.token.cancelled() => return Turn::Stop(StopReason::Cancelled),
                r = &mut turn => r,
            },
        };
        match reply {
            Ok(reply) if reply.messages.is_empty() => Turn::Stop(StopReason::EmptyReply {
                agent: self.names[index].to_string(),
            }),
            Ok(reply) => Turn::Replied(reply),
            Err(AgentError::Call(CallError::BudgetExhausted(e))) => {
                Turn::Stop(StopReason::BudgetExhausted(e))
            }
            Err(AgentError::Call(CallError::Cancelled)) => Turn::Stop(StopReason::Cancelled),
            Err(source) => Turn::Failed(Box::new(ChatErrorKind::Agent {
                agent: self.names[index].to_string(),
                source,
            })),
        }
    }

    /// Ends a run: summarizes, collects the usage, and renews a consumed cancel.
    pub(crate) async fn finish(
        &mut self,
        outcome: Result<StopReason, Box<ChatErrorKind>>,
        thread: &[Message],
        run_start: usize,
        started: Instant,
    ) -> Result<ChatResult, ChatError> {
        let transcript = || thread[run_start.min(thread.len())..].to_vec();
        let result = match outcome {
            Ok(stop) => {
                self.emit(|| ChatEvent::Stopped(stop.clone()));
                let summary = tokio::select! {
                    biased;
                    s = self.summary.summarize(thread, &stop, self.own_context()) => s,
                    () = self.token.cancelled() => Ok(last_text(thread)),
                };
                match summary {
                    Ok(summary) => Ok(ChatResult {
                        messages: transcript(),
                        stop_reason: stop,
                        summary,
                        usage: self.shared.finish(),
                        wall_time: started.elapsed(),
                    }),
                    Err(e) => Err(ChatError::new(ChatErrorKind::Summary(e), transcript())),
                }
            }
            Err(kind) => Err(ChatError::new(*kind, transcript())),
        };
        self.shared.finish();
        self.events = None;
        self.renew_cancel();
        // The one line per chat run that `RUST_LOG=info` shows (docs/observability.md).
        match &result {
            Ok(r) => tracing::info!(
                chat = %self.name,
                conversation = %self.conversation,
                stop = %r.stop_reason,
                messages = r.messages.len(),
                calls = r.usage.total.calls,
                tokens = r.usage.total.total_tokens(),
                cost_usd = r.cost_usd(),
                wall_ms = u64::try_from(r.wall_time.as_millis()).unwrap_or(u64::MAX),
                "chat stopped"
            ),
            Err(e) => tracing::info!(
                chat = %self.name,
                conversation = %self.conversation,
                error = %e,
                "chat failed"
            ),
        }
        result
    }

    /// The span of one run (`chat_run {name}`), the parent of its turns' spans.
    pub(crate) fn run_span(&self) -> tracing::Span {
        tracing::debug_span!(
            "chat",
            otel.name = %format_args!("chat_run {}", self.name),
            turnstile.chat.name = &*self.name,
            gen_ai.conversation.id = &*self.conversation,
        )
    }
}
