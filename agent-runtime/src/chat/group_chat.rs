//! The group chat: its validating builder and its run loop (select a speaker, let it reply through
//! the scheduler, append, check caps and the termination condition, repeat).

use std::fmt;
use std::sync::Arc;

use agent_core::{Agent, Budget, Content, Message, StopReason, Termination};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cancel::CancelHandle;
use super::caps::{Caps, Counters, TerminationPredicate, TurnCap};
use super::error::{ChatConfigError, ChatError, ChatErrorKind};
use super::events::{ChatEvent, ChatEventStream};
use super::result::ChatResult;
use super::session::{Session, SessionSettings, Turn, check_names, session_setters};
use super::speaker::{
    AllowRepeat, CandidateFn, ChoiceFn, LlmTurn, Roster, Rules, Selected, SelectorInput,
    SpeakerChoice, SpeakerSelection, Transitions, random_below, rotation_next, select_manually,
};
use super::state::ChatState;
use super::task::Task;
use crate::cache::ResponseCache;

/// The chat's own name when none is set: selector and reflection calls are made under it.
pub const DEFAULT_CHAT_NAME: &str = "group_chat";

/// Which speakers may speak twice in a row, as configured.
#[derive(Debug, Clone)]
enum RepeatSetting {
    All(bool),
    Only(Vec<String>),
}

/// Builds a [`GroupChat`]; every setting is checked at [`build`](Self::build).
#[must_use = "a builder does nothing until build() is called"]
pub struct GroupChatBuilder {
    name: Option<String>,
    settings: SessionSettings,
    agents: Vec<Arc<dyn Agent>>,
    selection: SpeakerSelection,
    selector_func: Option<ChoiceFn>,
    candidate_func: Option<CandidateFn>,
    transitions: Option<Transitions>,
    repeat: Option<RepeatSetting>,
    max_turns: Option<u32>,
    exchange_turns: bool,
    max_messages: Option<u64>,
    max_consecutive_auto_reply: Option<u32>,
    termination: Option<Box<dyn Termination>>,
    predicate: Option<TerminationPredicate>,
    task_source: Option<String>,
    state: Option<ChatState>,
    cache: Option<ResponseCache>,
    agent_caches: Vec<(String, ResponseCache)>,
    introductions: bool,
}

impl fmt::Debug for GroupChatBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupChatBuilder")
            .field("name", &self.name)
            .field(
                "participants",
                &self.agents.iter().map(|a| a.name()).collect::<Vec<_>>(),
            )
            .field("selection", &self.selection)
            .field("max_turns", &self.max_turns)
            .field("max_messages", &self.max_messages)
            .finish_non_exhaustive()
    }
}

impl GroupChatBuilder {
    fn new() -> Self {
        Self {
            name: None,
            settings: SessionSettings::default(),
            agents: Vec::new(),
            selection: SpeakerSelection::RoundRobin,
            selector_func: None,
            candidate_func: None,
            transitions: None,
            repeat: None,
            max_turns: None,
            exchange_turns: false,
            max_messages: None,
            max_consecutive_auto_reply: None,
            termination: None,
            predicate: None,
            task_source: None,
            state: None,
            cache: None,
            agent_caches: Vec::new(),
            introductions: false,
        }
    }

    /// Answers the participants' calls through `cache` instead of the scheduler's (speaker
    /// selection and reflection calls keep the scheduler's). See [`crate::cache`].
    pub fn cache(mut self, cache: ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Answers participant `agent`'s calls through `cache`, over the chat's and the
    /// scheduler's; [`ResponseCache::disabled`] turns caching off for that agent. The name must
    /// be a participant's (checked at build).
    pub fn agent_cache(mut self, agent: impl Into<String>, cache: ResponseCache) -> Self {
        self.agent_caches.push((agent.into(), cache));
        self
    }

    /// AG2's `send_introductions`: the first run of a fresh chat (or after
    /// [`reset`](GroupChat::reset)) opens with a message from the chat introducing every
    /// participant by name and description, before the task. It is not counted by the message
    /// cap or the termination condition (in AG2 it never enters the group's messages).
    pub fn send_introductions(mut self, send: bool) -> Self {
        self.introductions = send;
        self
    }

    /// Adds a participant (an `Arc<dyn Agent>` works too).
    pub fn participant(mut self, agent: impl Agent + 'static) -> Self {
        self.agents.push(Arc::new(agent));
        self
    }

    /// Adds several participants, in order.
    pub fn participants<A: Agent + 'static>(mut self, agents: impl IntoIterator<Item = A>) -> Self {
        self.agents
            .extend(agents.into_iter().map(|a| Arc::new(a) as Arc<dyn Agent>));
        self
    }

    /// How the next speaker is chosen (default: round robin).
    pub fn speaker_selection(mut self, selection: SpeakerSelection) -> Self {
        self.selection = selection;
        self
    }

    /// A function consulted before the selection method: it returns a participant's name (which
    /// overrides the transition graph and the repeat rule) or `None` to let the method choose. A
    /// name that is not a participant fails the run with a clear error.
    pub fn selector_func(
        mut self,
        f: impl Fn(&SelectorInput<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.selector_func = Some(Arc::new(move |input: &SelectorInput<'_>| match f(input) {
            Some(name) => SpeakerChoice::Speaker(name),
            None => SpeakerChoice::Default,
        }));
        self
    }

    /// A selection function that may also **end the chat** (AG2's `speaker_selection_method`
    /// returning `None`): it sees the eligible [`candidates`](SelectorInput::candidates) and
    /// returns a [`SpeakerChoice`]. `End(reason)` stops with [`StopReason::Custom`]`(reason)`
    /// before any call. Replaces a [`selector_func`](Self::selector_func) set before it.
    ///
    /// ```
    /// use agent_core::{Agent, AgentError, AgentReply, Message, StopReason, TurnContext};
    /// use agent_runtime::chat::{GroupChat, SpeakerChoice};
    ///
    /// struct Echo(&'static str);
    ///
    /// #[agent_core::async_trait]
    /// impl Agent for Echo {
    ///     fn name(&self) -> &str { self.0 }
    ///     async fn reply(&self, _h: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
    ///         Ok(AgentReply::message(Message::assistant(self.0, "done")))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut chat = GroupChat::builder()
    ///     .participant(Echo("writer"))
    ///     .participant(Echo("reviewer"))
    ///     .select_speaker_with(|input| match input.previous {
    ///         Some("reviewer") => SpeakerChoice::End("reviewed".into()),
    ///         _ => SpeakerChoice::Default,
    ///     })
    ///     .build()?;
    /// let result = chat.run("draft a note").await?;
    /// assert_eq!(result.messages.len(), 3);
    /// assert_eq!(result.stop_reason, StopReason::Custom("reviewed".into()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn select_speaker_with(
        mut self,
        f: impl Fn(&SelectorInput<'_>) -> SpeakerChoice + Send + Sync + 'static,
    ) -> Self {
        self.selector_func = Some(Arc::new(f));
        self
    }

    /// Narrows the candidates each turn, the first turn included (AutoGen's `candidate_func`):
    /// `f` returns the names the selection method may choose from, which **replace** the graph's
    /// and the repeat rule's candidates. One name means no selector call. An empty list or a
    /// non-participant fails the run (AutoGen raises `ValueError`). Not for handoff selection.
    pub fn candidate_func(
        mut self,
        f: impl Fn(&SelectorInput<'_>) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.candidate_func = Some(Arc::new(f));
        self
    }

    /// Restricts who may follow whom.
    pub fn transitions(mut self, transitions: Transitions) -> Self {
        self.transitions = Some(transitions);
        self
    }

    /// Whether the previous speaker may be chosen again. Default: `false` for LLM selection
    /// (AutoGen's `allow_repeated_speaker`), `true` otherwise (AG2's `allow_repeat_speaker`).
    pub fn allow_repeat(mut self, allow: bool) -> Self {
        self.repeat = Some(RepeatSetting::All(allow));
        self
    }

    /// Only these agents may speak twice in a row.
    pub fn allow_repeat_for<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.repeat = Some(RepeatSetting::Only(
            names.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Stops after this many agent replies since the last stop (task messages are not turns).
    pub fn max_turns(mut self, max: u32) -> Self {
        self.max_turns = Some(max);
        self
    }

    /// Two-agent chats count turns as exchanges (AG2's `initiate_chat(max_turns=)`).
    pub(crate) fn count_exchanges(mut self) -> Self {
        self.exchange_turns = true;
        self
    }

    /// Stops once this many messages have been seen since the last stop, **task messages
    /// included** and inner tool traffic excluded (AutoGen's `MaxMessageTermination`): with one
    /// task message, `max_messages(3)` allows two replies.
    pub fn max_messages(mut self, max: u64) -> Self {
        self.max_messages = Some(max);
        self
    }

    /// The default `max_consecutive_auto_reply` for agents that do not set their own: an agent
    /// that has made this many automatic replies since the last human reply or new task stops the
    /// chat when it is selected again. `0` means it may not auto-reply at all.
    pub fn max_consecutive_auto_reply(mut self, max: u32) -> Self {
        self.max_consecutive_auto_reply = Some(max);
        self
    }

    /// The termination condition, checked with the task messages and then with each reply's
    /// messages.
    pub fn termination(mut self, condition: impl Termination + 'static) -> Self {
        self.termination = Some(Box::new(condition));
        self
    }

    /// Stops when an appended message (task messages included) satisfies `predicate` (AG2's
    /// `is_termination_msg`), with [`StopReason::TerminationMessage`].
    pub fn is_termination_msg(
        mut self,
        predicate: impl Fn(&Message) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    session_setters!("chat");

    /// The chat's own name, under which selector and reflection calls are made and reported
    /// (default [`DEFAULT_CHAT_NAME`]). Must differ from every participant's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Who a text task is attributed to (default `"user"`).
    pub fn task_source(mut self, source: impl Into<String>) -> Self {
        self.task_source = Some(source.into());
        self
    }

    /// Cancelling `parent` cancels this chat too.
    pub(crate) fn parent_cancel(mut self, parent: CancellationToken) -> Self {
        self.settings.parent_cancel = Some(parent);
        self
    }

    /// Continues from a saved state (see [`GroupChat::load_state`]).
    pub fn load_state(mut self, state: ChatState) -> Self {
        self.state = Some(state);
        self
    }

    /// Validates the configuration and builds the chat.
    ///
    /// # Errors
    /// No participant, duplicate names, a participant named like the chat, unknown names in the
    /// transitions or repeat list, a zero cap or attempt count, handoff selection combined with
    /// transitions or a repeat rule, with handoff selection an agent whose
    /// [`handoff_targets`](Agent::handoff_targets) name a non-participant, or a saved state that
    /// does not fit.
    pub fn build(self) -> Result<GroupChat, ChatConfigError> {
        let (names, name) = check_names(&self.agents, self.name.as_deref(), DEFAULT_CHAT_NAME)?;
        let roster = Roster::new(names);
        if self.max_turns == Some(0) {
            return Err(ChatConfigError::Zero { what: "max_turns" });
        }
        if self.max_messages == Some(0) {
            return Err(ChatConfigError::Zero {
                what: "max_messages",
            });
        }
        if let SpeakerSelection::Llm(s) = &self.selection
            && s.attempts() == 0
        {
            return Err(ChatConfigError::Zero {
                what: "LlmSelector::max_attempts",
            });
        }
        if matches!(self.selection, SpeakerSelection::Handoffs) {
            if self.transitions.is_some() {
                return Err(ChatConfigError::IncompatibleWithHandoffs {
                    setting: ".transitions(..)",
                });
            }
            if self.repeat.is_some() {
                return Err(ChatConfigError::IncompatibleWithHandoffs {
                    setting: ".allow_repeat(..) / .allow_repeat_for(..)",
                });
            }
            if self.candidate_func.is_some() {
                return Err(ChatConfigError::IncompatibleWithHandoffs {
                    setting: ".candidate_func(..)",
                });
            }
            // Handoffs are acted on only here; elsewhere a handoff message is just a message. A
            // target outside the chat is fine when the termination condition stops there (a
            // handoff to the human: AutoGen's `HandoffTermination(target="user")`).
            let exits = self
                .termination
                .as_ref()
                .map(|t| t.handoff_exits())
                .unwrap_or_default();
            for agent in &self.agents {
                for target in agent.handoff_targets() {
                    if roster.index(&target).is_none() && !exits.contains(&target) {
                        return Err(ChatConfigError::UnknownHandoffTarget {
                            agent: agent.name().to_owned(),
                            target,
                            participants: roster.owned_names(),
                        });
                    }
                }
            }
        }
        let n = roster.len();
        let repeat = match &self.repeat {
            Some(RepeatSetting::All(true)) => AllowRepeat::All,
            Some(RepeatSetting::All(false)) => AllowRepeat::Nobody,
            Some(RepeatSetting::Only(list)) => {
                let mut allowed = vec![false; n];
                for who in list {
                    allowed[roster.require("allow_repeat_for", who)?] = true;
                }
                AllowRepeat::Only(allowed)
            }
            None if matches!(self.selection, SpeakerSelection::Llm(_)) => AllowRepeat::Nobody,
            None => AllowRepeat::All,
        };
        let rules = Rules::new(self.transitions.as_ref(), repeat, &roster)?;
        let mut caches = vec![self.cache.clone(); n];
        for (who, cache) in self.agent_caches {
            caches[roster.require("agent_cache", &who)?] = Some(cache);
        }
        let caps = Caps {
            max_turns: self.max_turns.map(|max| TurnCap {
                replies: if self.exchange_turns {
                    max.saturating_mul(2).saturating_sub(1)
                } else {
                    max
                },
                reported: max,
            }),
            max_messages: self.max_messages,
            auto_reply: self
                .agents
                .iter()
                .map(|a| {
                    a.max_consecutive_auto_reply()
                        .or(self.max_consecutive_auto_reply)
                })
                .collect(),
            predicate: self.predicate,
        };
        let rng_seed = match &self.selection {
            SpeakerSelection::Random { seed } => *seed,
            _ => 0,
        };
        let session = Session::new(
            name,
            "chat",
            roster.names().to_vec(),
            SessionSettings {
                caches,
                ..self.settings
            },
        );
        let descriptions = self
            .agents
            .iter()
            .map(|a| Arc::from(a.description()))
            .collect();
        let mut chat = GroupChat {
            session,
            agents: self.agents,
            roster,
            descriptions,
            selection: self.selection,
            selector_func: self.selector_func,
            candidate_func: self.candidate_func,
            rules,
            caps,
            termination: self.termination,
            task_source: Arc::from(self.task_source.as_deref().unwrap_or("user")),
            rng_seed,
            thread: Thread {
                messages: Vec::new(),
                previous: None,
                handoff: None,
                counters: Counters {
                    consecutive: vec![0; n],
                    ..Counters::default()
                },
                rng: rng_seed,
            },
            scratch: Vec::with_capacity(n),
            introductions: self.introductions,
        };
        if let Some(state) = self.state {
            chat.load_state(state)?;
        }
        Ok(chat)
    }
}

/// The conversation itself and the counters that continue across runs.
#[derive(Debug, Clone)]
struct Thread {
    messages: Vec<Message>,
    previous: Option<usize>,
    handoff: Option<usize>,
    counters: Counters,
    rng: u64,
}

/// A conversation between agents, every model call of which goes through a
/// [`QuotaScheduler`](crate::scheduler::QuotaScheduler).
///
/// Each run appends the task, then repeats: pick a speaker, let it reply to the whole thread
/// (agents apply their own history policy), append the reply, check the termination condition and
/// the caps. It stops at the first of: the termination condition, `max_messages`, the
/// termination predicate, a reply ending with a stop message (a human typing `exit`),
/// `max_turns`, an agent's `max_consecutive_auto_reply`, the budget, no eligible speaker, an
/// empty reply, or cancellation — and says which in
/// [`ChatResult::stop_reason`].
///
/// The chat keeps its thread and counters between runs: running it again (with a new task or
/// [`Task::Resume`]) continues the rotation like AutoGen-agentchat; [`reset`](Self::reset) starts
/// over; [`save_state`](Self::save_state) / [`load_state`](Self::load_state) carry it across a
/// process restart. A chat is a future, not a thread: thousands can share one scheduler.
///
/// ```
/// use agent_core::{Agent, AgentError, AgentReply, Message, StopReason, TurnContext};
/// use agent_runtime::chat::GroupChat;
///
/// struct Echo(&'static str);
///
/// #[agent_core::async_trait]
/// impl Agent for Echo {
///     fn name(&self) -> &str { self.0 }
///     async fn reply(&self, history: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
///         let n = history.len();
///         Ok(AgentReply::message(Message::assistant(self.0, format!("{} #{n}", self.0))))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let mut chat = GroupChat::builder()
///     .participant(Echo("alice"))
///     .participant(Echo("bob"))
///     .max_turns(3)
///     .build()?;
/// let result = chat.run("say hi").await?;
/// let speakers: Vec<_> = result.messages.iter().map(|m| m.source().unwrap()).collect();
/// assert_eq!(speakers, ["user", "alice", "bob", "alice"]);
/// assert_eq!(result.stop_reason, StopReason::MaxTurns { max: 3 });
///
/// // Running again continues the rotation.
/// let more = chat.run(agent_runtime::chat::Task::Resume).await?;
/// assert_eq!(more.messages[0].source(), Some("bob"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct GroupChat {
    agents: Vec<Arc<dyn Agent>>,
    roster: Roster,
    descriptions: Vec<Arc<str>>,
    selection: SpeakerSelection,
    selector_func: Option<ChoiceFn>,
    candidate_func: Option<CandidateFn>,
    rules: Rules,
    caps: Caps,
    termination: Option<Box<dyn Termination>>,
    task_source: Arc<str>,
    /// Contexts (one per participant, then the chat's own), events, cancellation.
    session: Session,
    rng_seed: u64,
    thread: Thread,
    /// Reused candidate buffer, so selection does not allocate per turn.
    scratch: Vec<usize>,
    introductions: bool,
}

impl fmt::Debug for GroupChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupChat")
            .field("name", &self.session.name)
            .field("conversation", &self.session.conversation)
            .field("participants", &self.roster.names())
            .field("selection", &self.selection)
            .field("caps", &self.caps)
            .field("messages", &self.thread.messages.len())
            .finish_non_exhaustive()
    }
}

impl GroupChat {
    /// A builder with no participants, round-robin selection and no caps.
    pub fn builder() -> GroupChatBuilder {
        GroupChatBuilder::new()
    }

    /// The chat's name (selector and reflection calls are reported under it).
    pub fn name(&self) -> &str {
        &self.session.name
    }

    /// The conversation id.
    pub fn conversation_id(&self) -> &str {
        &self.session.conversation
    }

    /// The participants' names, in order.
    pub fn participants(&self) -> &[Arc<str>] {
        self.roster.names()
    }

    /// The whole thread, every run included.
    pub fn messages(&self) -> &[Message] {
        &self.thread.messages
    }

    /// The budget the chat charges.
    pub fn budget(&self) -> &Budget {
        &self.session.budget
    }

    /// Appends a message to the thread **without running** the chat and without resetting any
    /// counter (AG2's `send(message, recipient, request_reply=False)`): the next
    /// [`Task::Resume`] run answers it. Unlike a run with a task, the auto-reply counters keep
    /// counting, and the message cap and the termination condition do not see it.
    ///
    /// ```
    /// use agent_core::{Agent, AgentError, AgentReply, Message, TurnContext};
    /// use agent_runtime::chat::{GroupChat, Task};
    ///
    /// struct Count;
    ///
    /// #[agent_core::async_trait]
    /// impl Agent for Count {
    ///     fn name(&self) -> &str { "count" }
    ///     async fn reply(&self, h: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
    ///         Ok(AgentReply::message(Message::assistant("count", h.len().to_string())))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut chat = GroupChat::builder().participant(Count).max_turns(1).build().unwrap();
    /// chat.send(Message::user("context first"));
    /// let result = chat.run(Task::Resume).await.unwrap();
    /// assert_eq!(result.messages[0].text(), Some("1"));
    /// # });
    /// ```
    pub fn send(&mut self, message: Message) {
        self.thread.messages.push(message);
    }

    fn introduction(&self) -> String {
        let mut text = String::from(
            "Hello everyone. We have assembled a great team today to answer questions and solve tasks. In attendance are:\n",
        );
        for (name, description) in self.roster.names().iter().zip(&self.descriptions) {
            text.push_str(&format!("\n{name}: {description}"));
        }
        text
    }

    /// A handle that cancels the chat's current (or next) run from anywhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.session.cancel_handle()
    }

    /// Runs the chat until it stops. `task` may be text, messages, or [`Task::Resume`].
    ///
    /// # Errors
    /// An agent failing with anything but budget exhaustion or cancellation, a failed selector or
    /// reflection call, a selector function or handoff naming a non-participant, or unreadable
    /// manual input. The error carries the run's transcript; the chat keeps its thread.
    pub async fn run(&mut self, task: impl Into<Task>) -> Result<ChatResult, ChatError> {
        self.run_with(task.into(), None).await
    }

    /// Runs the chat, yielding [`ChatEvent`]s as they happen; the last one is
    /// [`ChatEvent::Finished`] with the same result [`run`](Self::run) would return.
    pub fn run_stream(&mut self, task: impl Into<Task>) -> ChatEventStream<'_> {
        let task = task.into();
        ChatEventStream::new(move |tx| Box::pin(self.run_with(task, Some(tx))))
    }

    /// [`run`](Self::run), sending the run's events to `events` (the console printer drives this).
    pub(crate) async fn run_observed(
        &mut self,
        task: Task,
        events: UnboundedSender<ChatEvent>,
    ) -> Result<ChatResult, ChatError> {
        self.run_with(task, Some(events)).await
    }

    async fn run_with(
        &mut self,
        task: Task,
        events: Option<UnboundedSender<ChatEvent>>,
    ) -> Result<ChatResult, ChatError> {
        let started = Instant::now();
        self.session.begin(events);
        let run_start = self.thread.messages.len();
        // One span per chat run, the parent of its turns' spans (docs/observability.md).
        let span = self.session.run_span();
        let outcome = if span.is_disabled() {
            self.drive(task).await
        } else {
            self.drive(task).instrument(span).await
        };
        if let Ok(stop) = &outcome
            && *stop != StopReason::Cancelled
        {
            self.after_stop();
        }
        let result = self
            .session
            .finish(outcome, &self.thread.messages, run_start, started)
            .await;
        tracing::debug!(
            conversation = %self.session.conversation,
            stop = ?result.as_ref().map(|r| &r.stop_reason),
            "chat run finished"
        );
        result
    }

    /// After any stop but a cancellation: the condition and the turn and message counters start
    /// over (AutoGen-agentchat); the rotation and auto-reply counters continue.
    fn after_stop(&mut self) {
        if let Some(t) = &mut self.termination {
            t.reset();
        }
        self.thread.counters.turns = 0;
        self.thread.counters.messages = 0;
    }

    fn emit(&self, make: impl FnOnce() -> ChatEvent) {
        self.session.emit(make);
    }

    /// Appends `messages`, emits them, tracks handoffs, and checks the condition and caps.
    fn append(&mut self, messages: Vec<Message>) -> Result<Option<StopReason>, Box<ChatErrorKind>> {
        let from = self.thread.messages.len();
        self.thread.messages.extend(messages);
        let delta = &self.thread.messages[from..];
        for m in delta {
            self.session.emit(|| ChatEvent::Message(m.clone()));
        }
        // The condition is asked before the handoff target is resolved: a handoff that stops the
        // chat (to "user", say) need not name a participant.
        let condition = self.termination.as_mut().and_then(|t| t.check(delta));
        let stop = self
            .caps
            .check_delta(&mut self.thread.counters, delta, condition);
        if matches!(self.selection, SpeakerSelection::Handoffs)
            && let Some(target) = delta.iter().rev().find_map(|m| match &m.content {
                Content::Handoff { target, .. } => Some(target),
                _ => None,
            })
        {
            match self.roster.index(target) {
                Some(i) => self.thread.handoff = Some(i),
                None if stop.is_some() => {}
                None => {
                    return Err(Box::new(ChatErrorKind::UnknownSpeaker {
                        context: "handoff",
                        name: target.to_string(),
                        participants: self.roster.owned_names(),
                    }));
                }
            }
        }
        Ok(stop)
    }

    async fn drive(&mut self, task: Task) -> Result<StopReason, Box<ChatErrorKind>> {
        if self.termination.as_ref().is_some_and(|t| t.is_terminated()) {
            return Ok(StopReason::AlreadyTerminated);
        }
        if task.is_resume() && self.thread.messages.is_empty() {
            return Err(Box::new(ChatErrorKind::NothingToResume));
        }
        if self.introductions && self.thread.messages.is_empty() {
            let intro = Message::assistant(self.session.name.clone(), self.introduction());
            self.emit(|| ChatEvent::Message(intro.clone()));
            self.thread.messages.push(intro);
        }
        if !task.is_resume() {
            // A new task is a new chat in AG2's sense: auto-reply counters start over.
            self.thread
                .counters
                .consecutive
                .iter_mut()
                .for_each(|c| *c = 0);
            let messages = task.into_messages(&self.task_source);
            // A task written by a participant (a two-agent chat's initiator) is that
            // participant's turn, so another one answers it, as in AG2, where the sender of the
            // opening message is the last speaker. Handoff selection follows handoffs only.
            let author = messages
                .last()
                .and_then(Message::source)
                .and_then(|source| self.roster.index(source));
            let stop = self.append(messages)?;
            if let Some(author) = author
                && !matches!(self.selection, SpeakerSelection::Handoffs)
            {
                self.thread.previous = Some(author);
            }
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
        loop {
            if self.session.token.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            if let Err(e) = self.session.room_for_a_call() {
                return Ok(StopReason::BudgetExhausted(e));
            }
            let speaker = match self.select().await {
                Selected::Speaker(s) => s,
                Selected::Stop(reason) => return Ok(reason),
                Selected::Fail(kind) => return Err(kind),
            };
            self.emit(|| ChatEvent::SpeakerSelected {
                name: self.roster.name(speaker).clone(),
            });
            if let Some(max) = self.caps.auto_reply_reached(&self.thread.counters, speaker) {
                return Ok(StopReason::MaxConsecutiveAutoReply {
                    agent: self.roster.name(speaker).to_string(),
                    max,
                });
            }
            // Through the trait object itself: `Arc<dyn Agent>`'s forwarding impl would box the
            // reply future a second time.
            let agent: &dyn Agent = &*self.agents[speaker];
            let reply = match self
                .session
                .take_turn(agent, speaker, &self.thread.messages)
                .await
            {
                Turn::Replied(reply) => reply,
                Turn::Stop(stop) => return Ok(stop),
                Turn::Failed(kind) => return Err(kind),
            };
            self.thread.previous = Some(speaker);
            let by_turns =
                self.caps
                    .record_reply(&mut self.thread.counters, speaker, reply.from_human);
            // A reply that ends with a stop message (a human typing `exit`) ends every chat.
            let requested = match reply.messages.last().map(|m| &m.content) {
                Some(Content::Stop { text }) => Some(StopReason::StopRequested {
                    source: self.roster.name(speaker).to_string(),
                    text: text.to_string(),
                }),
                _ => None,
            };
            let stop = match (self.append(reply.messages)?, requested) {
                (Some(checked), Some(requested)) => StopReason::combine(vec![checked, requested]),
                (checked, requested) => checked.or(requested),
            };
            if let Some(stop) = stop {
                return Ok(stop);
            }
            if let Some(stop) = by_turns {
                return Ok(stop);
            }
            // Let other chats on this worker run: an instant agent never yields otherwise.
            tokio::task::consume_budget().await;
        }
    }

    async fn select(&mut self) -> Selected {
        let n = self.roster.len();
        let previous = self.thread.previous;
        let handoffs = matches!(self.selection, SpeakerSelection::Handoffs);
        // Fast path: with no functions, no graph and several participants, the rotation never
        // repeats.
        if matches!(self.selection, SpeakerSelection::RoundRobin)
            && self.rules.is_open()
            && n > 1
            && self.candidate_func.is_none()
            && self.selector_func.is_none()
        {
            return Selected::Speaker(previous.map_or(0, |p| (p + 1) % n));
        }
        if let Some(f) = &self.candidate_func {
            let input = SelectorInput {
                messages: &self.thread.messages,
                participants: self.roster.names(),
                previous: previous.map(|p| &**self.roster.name(p)),
                candidates: &[],
            };
            self.scratch.clear();
            for name in f(&input) {
                match self.roster.index(&name) {
                    Some(i) if !self.scratch.contains(&i) => self.scratch.push(i),
                    Some(_) => {}
                    None => {
                        return Selected::Fail(Box::new(ChatErrorKind::UnknownSpeaker {
                            context: "candidate function",
                            name,
                            participants: self.roster.owned_names(),
                        }));
                    }
                }
            }
            if self.scratch.is_empty() {
                return Selected::Fail(Box::new(ChatErrorKind::NoCandidates));
            }
            self.scratch.sort_unstable();
        } else if !handoffs {
            self.rules.candidates(n, previous, &mut self.scratch);
        }
        if let Some(f) = &self.selector_func {
            let candidates: Vec<Arc<str>> = self
                .scratch
                .iter()
                .map(|&c| self.roster.name(c).clone())
                .collect();
            let input = SelectorInput {
                messages: &self.thread.messages,
                participants: self.roster.names(),
                previous: previous.map(|p| &**self.roster.name(p)),
                candidates: if handoffs { &[] } else { &candidates },
            };
            match f(&input) {
                SpeakerChoice::Speaker(name) => {
                    return match self.roster.index(&name) {
                        Some(i) => Selected::Speaker(i),
                        None => Selected::Fail(Box::new(ChatErrorKind::UnknownSpeaker {
                            context: "selector function",
                            name,
                            participants: self.roster.owned_names(),
                        })),
                    };
                }
                SpeakerChoice::End(reason) => return Selected::Stop(StopReason::Custom(reason)),
                SpeakerChoice::Default => {}
            }
        }
        if handoffs {
            return Selected::Speaker(self.thread.handoff.take().or(previous).unwrap_or(0));
        }
        let candidates = &self.scratch;
        if candidates.is_empty() {
            return Selected::Stop(StopReason::NoEligibleSpeaker {
                after: previous.map_or_else(String::new, |p| self.roster.name(p).to_string()),
            });
        }
        if let [only] = candidates[..] {
            return Selected::Speaker(only);
        }
        match &self.selection {
            SpeakerSelection::Random { .. } => {
                Selected::Speaker(candidates[random_below(&mut self.thread.rng, candidates.len())])
            }
            SpeakerSelection::Llm(selector) => {
                LlmTurn {
                    selector,
                    ctx: &self.session.contexts[n],
                    roster: &self.roster,
                    descriptions: &self.descriptions,
                    messages: &self.thread.messages,
                    candidates,
                    previous,
                    cancel: &self.session.token,
                }
                .select()
                .await
            }
            SpeakerSelection::Manual(input) => tokio::select! {
                biased;
                () = self.session.token.cancelled() => Selected::Stop(StopReason::Cancelled),
                r = select_manually(&**input, &self.roster, candidates, previous) => match r {
                    Ok(s) => Selected::Speaker(s),
                    Err(kind) => Selected::Fail(Box::new(kind)),
                },
            },
            SpeakerSelection::RoundRobin | SpeakerSelection::Handoffs => {
                Selected::Speaker(rotation_next(n, previous, candidates).unwrap_or(candidates[0]))
            }
        }
    }

    /// Starts over: clears the thread, the rotation, every counter, the random selector, the
    /// termination condition, and each agent's own state ([`Agent::reset`]).
    pub fn reset(&mut self) {
        let n = self.roster.len();
        self.thread = Thread {
            messages: Vec::new(),
            previous: None,
            handoff: None,
            counters: Counters {
                consecutive: vec![0; n],
                ..Counters::default()
            },
            rng: self.rng_seed,
        };
        if let Some(t) = &mut self.termination {
            t.reset();
        }
        for a in &self.agents {
            a.reset();
        }
        self.session.renew_cancel();
    }

    /// A snapshot of the thread, rotation and counters (see [`ChatState`]).
    pub fn save_state(&self) -> ChatState {
        let t = &self.thread;
        ChatState {
            version: ChatState::VERSION,
            conversation_id: self.session.conversation.to_string(),
            messages: t.messages.clone(),
            previous_speaker: t.previous.map(|p| self.roster.name(p).to_string()),
            pending_handoff: t.handoff.map(|p| self.roster.name(p).to_string()),
            turns: t.counters.turns,
            counted_messages: t.counters.messages,
            consecutive_auto_replies: t
                .counters
                .consecutive
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (self.roster.name(i).to_string(), *c))
                .collect(),
            rng: t.rng,
            budget_used: Some(self.session.budget.used()),
        }
    }

    /// Replaces the thread, rotation and counters with a saved state, and adopts its conversation
    /// id. The chat's budget is raised to the saved usage ([`Budget::restore_used`]: its ancestors
    /// are charged too, and loading the same state twice charges once). The termination condition
    /// starts fresh.
    ///
    /// # Errors
    /// An unknown format version, a state naming agents that are not participants, or a counter
    /// larger than the saved thread allows (a corrupted or edited state). A rejected state
    /// changes nothing.
    pub fn load_state(&mut self, state: ChatState) -> Result<(), ChatConfigError> {
        if state.version != ChatState::VERSION {
            return Err(ChatConfigError::StateVersion {
                found: state.version,
                supported: ChatState::VERSION,
            });
        }
        let find = |field: &'static str, name: &str| {
            self.roster
                .index(name)
                .ok_or_else(|| ChatConfigError::StateUnknownAgent {
                    field,
                    name: name.to_owned(),
                    participants: self.roster.owned_names(),
                })
        };
        let previous = state
            .previous_speaker
            .as_deref()
            .map(|n| find("previous_speaker", n))
            .transpose()?;
        let handoff = state
            .pending_handoff
            .as_deref()
            .map(|n| find("pending_handoff", n))
            .transpose()?;
        let messages = u64::try_from(state.messages.len()).unwrap_or(u64::MAX);
        let in_range = |counter: &str, value: u64| {
            if value <= messages {
                Ok(())
            } else {
                Err(ChatConfigError::StateCounterOutOfRange {
                    counter: counter.to_owned(),
                    value,
                    messages,
                })
            }
        };
        in_range("turns", u64::from(state.turns))?;
        in_range("counted_messages", state.counted_messages)?;
        let mut consecutive = vec![0; self.roster.len()];
        for (name, count) in &state.consecutive_auto_replies {
            in_range(
                &format!("consecutive_auto_replies['{name}']"),
                u64::from(*count),
            )?;
            consecutive[find("consecutive_auto_replies", name)?] = *count;
        }
        self.thread = Thread {
            messages: state.messages,
            previous,
            handoff,
            counters: Counters {
                turns: state.turns,
                messages: state.counted_messages,
                consecutive,
            },
            rng: state.rng,
        };
        if let Some(t) = &mut self.termination {
            t.reset();
        }
        if let Some(used) = state.budget_used {
            self.session.budget.restore_used(used);
        }
        if *self.session.conversation != *state.conversation_id {
            self.session
                .set_conversation(Arc::from(state.conversation_id));
        }
        Ok(())
    }
}
