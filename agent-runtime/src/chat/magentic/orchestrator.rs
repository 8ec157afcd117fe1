//! The Magentic orchestrator's builder and loop: task ledger, then rounds of progress ledger →
//! instruction → speaker, re-planning after `max_stalls` stalled rounds, and a final answer.

use std::fmt;
use std::sync::Arc;

use agent_core::{
    Agent, Budget, CallError, CallKind, ChatModel, ChatRequest, Message, StopReason, Termination,
    TurnContext,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::ledger::{
    FACTS_PROMPT, FACTS_UPDATE_PROMPT, FINAL_ANSWER_PROMPT, LEDGER_MESSAGE, PLAN_PROMPT,
    PLAN_UPDATE_PROMPT, PROGRESS_PROMPT, Verdict, read_progress,
};
use super::state::MagenticState;
use crate::chat::cancel::CancelHandle;
use crate::chat::error::{ChatConfigError, ChatError, ChatErrorKind};
use crate::chat::events::{ChatEvent, ChatEventStream};
use crate::chat::result::ChatResult;
use crate::chat::session::{Session, SessionSettings, Turn, check_names, session_setters};
use crate::chat::speaker::fill_template;
use crate::chat::task::Task;

/// The orchestrator's name when none is set; its ledger calls are reported under it.
pub const DEFAULT_ORCHESTRATOR_NAME: &str = "orchestrator";

/// Why a step could not go on: a stop (budget, cancel, condition) or a failure.
enum Halt {
    Stop(StopReason),
    Fail(Box<ChatErrorKind>),
}

type Step<T> = Result<T, Halt>;

/// Builds a [`MagenticChat`]; every setting is checked at [`build`](Self::build).
#[must_use = "a builder does nothing until build() is called"]
pub struct MagenticChatBuilder {
    model: Arc<dyn ChatModel>,
    agents: Vec<Arc<dyn Agent>>,
    name: Option<String>,
    max_stalls: u32,
    max_turns: Option<u32>,
    ledger_attempts: u32,
    termination: Option<Box<dyn Termination>>,
    settings: SessionSettings,
}

impl fmt::Debug for MagenticChatBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MagenticChatBuilder")
            .field("model", &self.model.id())
            .field(
                "participants",
                &self.agents.iter().map(|a| a.name()).collect::<Vec<_>>(),
            )
            .field("max_stalls", &self.max_stalls)
            .field("max_turns", &self.max_turns)
            .finish_non_exhaustive()
    }
}

impl MagenticChatBuilder {
    /// Adds a team member (an `Arc<dyn Agent>` works too); its description is shown to the
    /// orchestrator's model.
    pub fn participant(mut self, agent: impl Agent + 'static) -> Self {
        self.agents.push(Arc::new(agent));
        self
    }

    /// Adds several team members, in order.
    pub fn participants<A: Agent + 'static>(mut self, agents: impl IntoIterator<Item = A>) -> Self {
        self.agents
            .extend(agents.into_iter().map(|a| Arc::new(a) as Arc<dyn Agent>));
        self
    }

    /// Stalled rounds (no progress, or a loop) before the orchestrator re-plans (default 3, as in
    /// AutoGen). Each round with progress takes one stall back.
    pub fn max_stalls(mut self, max: u32) -> Self {
        self.max_stalls = max;
        self
    }

    /// Rounds before the orchestrator gives its final answer anyway (default 20, as in AutoGen),
    /// stopping with [`StopReason::MaxTurns`].
    pub fn max_turns(mut self, max: u32) -> Self {
        self.max_turns = Some(max);
        self
    }

    /// Model calls one progress ledger may take: an answer that is not the ledger's JSON, or
    /// names a non-member as next speaker, is sent back with what is wrong (default 3; AutoGen
    /// allows 10). Every attempt is charged.
    pub fn ledger_attempts(mut self, attempts: u32) -> Self {
        self.ledger_attempts = attempts;
        self
    }

    /// A termination condition, checked on every appended message (the orchestrator's too).
    pub fn termination(mut self, condition: impl Termination + 'static) -> Self {
        self.termination = Some(Box::new(condition));
        self
    }

    /// The orchestrator's name (default [`DEFAULT_ORCHESTRATOR_NAME`]): the source of its
    /// messages and the agent its calls are reported under. Must differ from every member's.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    session_setters!("magentic");

    /// Validates the configuration and builds the chat.
    ///
    /// # Errors
    /// No participant, duplicate names, a member named like the orchestrator, or a zero
    /// `max_stalls`, `max_turns` or `ledger_attempts`.
    pub fn build(self) -> Result<MagenticChat, ChatConfigError> {
        let (names, name) = check_names(
            &self.agents,
            self.name.as_deref(),
            DEFAULT_ORCHESTRATOR_NAME,
        )?;
        for (what, value) in [
            ("max_stalls", Some(self.max_stalls)),
            ("max_turns", self.max_turns),
            ("ledger_attempts", Some(self.ledger_attempts)),
        ] {
            if value == Some(0) {
                return Err(ChatConfigError::Zero { what });
            }
        }
        let team = self
            .agents
            .iter()
            .map(|a| format!("{}: {}", a.name(), a.description()))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(MagenticChat {
            session: Session::new(name, "magentic", names, self.settings),
            agents: self.agents,
            model: self.model,
            team,
            max_stalls: self.max_stalls,
            max_turns: self.max_turns,
            ledger_attempts: self.ledger_attempts,
            termination: self.termination,
            messages: Vec::new(),
            ledger: TaskLedger::default(),
        })
    }
}

/// What the orchestrator knows between rounds.
#[derive(Debug, Clone, Default)]
struct TaskLedger {
    task: String,
    facts: String,
    plan: String,
    rounds: u32,
    stalls: u32,
    /// Where the latest ledger message sits in the thread: the team and the progress ledger see
    /// the thread from there on.
    from: usize,
}

/// A Magentic-style orchestrator (AutoGen's `MagenticOneGroupChat`, the Agent Framework's
/// Magentic orchestration).
///
/// A run with a task first builds the **task ledger**: the orchestrator's model lists the facts,
/// then drafts a plan for the team, and the orchestrator appends the ledger as one message
/// (`"\nWe are working to address the following user request:…"`). Then each **round**:
///
/// 1. past `max_turns` rounds, it gives its final answer and stops with
///    [`StopReason::MaxTurns`];
/// 2. it asks for the **progress ledger**, a JSON object — is the request satisfied? is progress
///    being made? are we in a loop? who speaks next, with what instruction? An unreadable answer
///    is sent back with the problem, up to `ledger_attempts` calls;
/// 3. satisfied: it asks for the **final answer**, appends it, and stops with
///    [`StopReason::Satisfied`] carrying the ledger's reason;
/// 4. no progress, or a loop, counts a stall (progress takes one back); at `max_stalls` it
///    **re-plans** — updated facts, a new plan, a new ledger message, the team's agents reset —
///    and starts the next round;
/// 5. otherwise it appends the instruction and lets the named member reply to the thread since
///    the latest ledger message.
///
/// Every ledger call and the final answer go through the scheduler under the orchestrator's name
/// with [`CallKind::Orchestration`], on the chat's budget, and appear in the run's usage.
///
/// ```
/// use agent_core::{Agent, AgentError, AgentReply, Message, ScriptedModel, StopReason, TurnContext};
/// use agent_runtime::chat::magentic::MagenticChat;
///
/// struct Coder;
///
/// #[agent_core::async_trait]
/// impl Agent for Coder {
///     fn name(&self) -> &str { "coder" }
///     async fn reply(&self, _h: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
///         Ok(AgentReply::message(Message::assistant("coder", "print('hi')")))
///     }
/// }
///
/// let next = r#"{"is_request_satisfied": {"answer": false, "reason": ""},
///     "is_progress_being_made": {"answer": true, "reason": ""},
///     "is_in_loop": {"answer": false, "reason": ""},
///     "instruction_or_question": {"answer": "Write it.", "reason": ""},
///     "next_speaker": {"answer": "coder", "reason": ""}}"#;
/// let done = r#"{"is_request_satisfied": {"answer": true, "reason": "The code is written."}}"#;
/// let model = ScriptedModel::new("test/orchestrator")
///     .text("No facts").text("1. Ask the coder.").text(next).text(done).text("print('hi')");
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let mut chat = MagenticChat::builder(model).participant(Coder).build()?;
/// let result = chat.run("Print hi in Python").await?;
/// assert_eq!(result.stop_reason, StopReason::Satisfied { because: "The code is written.".into() });
/// assert_eq!(result.usage.by_agent["orchestrator"].calls, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct MagenticChat {
    session: Session,
    agents: Vec<Arc<dyn Agent>>,
    model: Arc<dyn ChatModel>,
    team: String,
    max_stalls: u32,
    max_turns: Option<u32>,
    ledger_attempts: u32,
    termination: Option<Box<dyn Termination>>,
    messages: Vec<Message>,
    ledger: TaskLedger,
}

impl fmt::Debug for MagenticChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MagenticChat")
            .field("session", &self.session)
            .field("model", &self.model.id())
            .field("rounds", &self.ledger.rounds)
            .field("stalls", &self.ledger.stalls)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl MagenticChat {
    /// A builder whose orchestrator uses `model` (default: 3 stalls, 20 rounds).
    pub fn builder(model: impl ChatModel + 'static) -> MagenticChatBuilder {
        Self::builder_from_arc(Arc::new(model))
    }

    /// A builder whose orchestrator uses a shared model.
    pub fn builder_from_arc(model: Arc<dyn ChatModel>) -> MagenticChatBuilder {
        MagenticChatBuilder {
            model,
            agents: Vec::new(),
            name: None,
            max_stalls: 3,
            max_turns: Some(20),
            ledger_attempts: 3,
            termination: None,
            settings: SessionSettings::default(),
        }
    }

    /// The orchestrator's name.
    pub fn name(&self) -> &str {
        &self.session.name
    }

    /// The team members' names, in order.
    pub fn participants(&self) -> &[Arc<str>] {
        &self.session.names
    }

    /// The whole thread, every run included.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The current plan (empty before the first run).
    pub fn plan(&self) -> &str {
        &self.ledger.plan
    }

    /// The current fact sheet (empty before the first run).
    pub fn facts(&self) -> &str {
        &self.ledger.facts
    }

    /// The budget every call charges.
    pub fn budget(&self) -> &Budget {
        &self.session.budget
    }

    /// A handle that cancels the current (or next) run.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.session.cancel_handle()
    }

    /// A snapshot of the thread and the orchestrator's ledger (see [`MagenticState`]).
    pub fn save_state(&self) -> MagenticState {
        MagenticState {
            version: MagenticState::VERSION,
            conversation_id: self.session.conversation.to_string(),
            messages: self.messages.clone(),
            task: self.ledger.task.clone(),
            facts: self.ledger.facts.clone(),
            plan: self.ledger.plan.clone(),
            rounds: self.ledger.rounds,
            stalls: self.ledger.stalls,
            ledger_from: self.ledger.from,
            budget_used: Some(self.session.budget.used()),
        }
    }

    /// Continues from a saved state: the thread, the ledger and the counters are replaced, the
    /// conversation id adopted, and the budget raised to the saved usage
    /// ([`Budget::restore_used`]). The termination condition starts fresh.
    ///
    /// # Errors
    /// An unknown format version, or a ledger position past the saved thread (a corrupted or
    /// edited state). A rejected state changes nothing.
    pub fn load_state(&mut self, state: MagenticState) -> Result<(), ChatConfigError> {
        if state.version != MagenticState::VERSION {
            return Err(ChatConfigError::StateVersion {
                found: state.version,
                supported: MagenticState::VERSION,
            });
        }
        let messages = u64::try_from(state.messages.len()).unwrap_or(u64::MAX);
        let from = u64::try_from(state.ledger_from).unwrap_or(u64::MAX);
        if from > messages {
            return Err(ChatConfigError::StateCounterOutOfRange {
                counter: "ledger_from".to_owned(),
                value: from,
                messages,
            });
        }
        self.messages = state.messages;
        self.ledger = TaskLedger {
            task: state.task,
            facts: state.facts,
            plan: state.plan,
            rounds: state.rounds,
            stalls: state.stalls,
            from: state.ledger_from,
        };
        if let Some(t) = &mut self.termination {
            t.reset();
        }
        if let Some(used) = state.budget_used {
            self.session.budget.restore_used(used);
        }
        if *self.session.conversation != *state.conversation_id {
            self.session
                .set_conversation(std::sync::Arc::from(state.conversation_id));
        }
        Ok(())
    }

    /// Runs the orchestration. A task starts a new one (new task ledger); [`Task::Resume`]
    /// continues the rounds where they stopped.
    ///
    /// # Errors
    /// A failed ledger or final-answer call (after the scheduler's retries), a progress ledger
    /// still unreadable after `ledger_attempts` calls, a member failing with anything but budget
    /// exhaustion or cancellation, or an empty task on a chat with no thread.
    pub async fn run(&mut self, task: impl Into<Task>) -> Result<ChatResult, ChatError> {
        self.run_with(task.into(), None).await
    }

    /// Runs the orchestration, yielding [`ChatEvent`]s (ledger calls appear as the
    /// orchestrator's call events).
    pub fn run_stream(&mut self, task: impl Into<Task>) -> ChatEventStream<'_> {
        let task = task.into();
        ChatEventStream::new(move |tx| Box::pin(self.run_with(task, Some(tx))))
    }

    async fn run_with(
        &mut self,
        task: Task,
        events: Option<UnboundedSender<ChatEvent>>,
    ) -> Result<ChatResult, ChatError> {
        let started = Instant::now();
        self.session.begin(events);
        let run_start = self.messages.len();
        let outcome = match self.drive(task).await {
            Ok(stop) | Err(Halt::Stop(stop)) => Ok(stop),
            Err(Halt::Fail(kind)) => Err(kind),
        };
        if let Ok(stop) = &outcome
            && *stop != StopReason::Cancelled
            && let Some(t) = &mut self.termination
        {
            t.reset();
        }
        self.session
            .finish(outcome, &self.messages, run_start, started)
            .await
    }

    fn append(&mut self, message: Message) -> Step<()> {
        self.session.emit(|| ChatEvent::Message(message.clone()));
        self.messages.push(message);
        let delta = &self.messages[self.messages.len() - 1..];
        match self.termination.as_mut().and_then(|t| t.check(delta)) {
            Some(stop) => Err(Halt::Stop(stop)),
            None => Ok(()),
        }
    }

    fn say(&mut self, text: impl Into<Arc<str>>) -> Step<()> {
        let message = Message::assistant(self.session.name.clone(), text);
        self.append(message)
    }

    /// One orchestrator call, through the chat's own context.
    async fn ask(&self, messages: Vec<Message>) -> Step<String> {
        let call = self.session.own_context().complete(
            &*self.model,
            ChatRequest::new(messages),
            CallKind::Orchestration,
        );
        let completion = tokio::select! {
            biased;
            () = self.session.token.cancelled() => return Err(Halt::Stop(StopReason::Cancelled)),
            r = call => r,
        };
        match completion {
            Ok(c) => Ok(c.message.text().unwrap_or_default().to_owned()),
            Err(CallError::BudgetExhausted(e)) => Err(Halt::Stop(StopReason::BudgetExhausted(e))),
            Err(CallError::Cancelled) => Err(Halt::Stop(StopReason::Cancelled)),
            Err(e) => Err(Halt::Fail(Box::new(ChatErrorKind::Orchestrator(e)))),
        }
    }

    fn working_thread(&self) -> Vec<Message> {
        self.messages[self.ledger.from.min(self.messages.len())..].to_vec()
    }

    fn ledger_message(&self) -> String {
        fill_template(
            LEDGER_MESSAGE,
            &[
                ("task", &self.ledger.task),
                ("team", &self.team),
                ("facts", &self.ledger.facts),
                ("plan", &self.ledger.plan),
            ],
        )
    }

    /// Facts, then a plan, then the ledger message the team works from.
    async fn plan_task(&mut self) -> Step<()> {
        let facts_prompt =
            Message::user(fill_template(FACTS_PROMPT, &[("task", &self.ledger.task)]));
        let facts = self.ask(vec![facts_prompt.clone()]).await?;
        let plan_prompt = Message::user(fill_template(PLAN_PROMPT, &[("team", &self.team)]));
        let plan = self
            .ask(vec![
                facts_prompt,
                Message::assistant(self.session.name.clone(), facts.as_str()),
                plan_prompt,
            ])
            .await?;
        self.ledger.facts = facts;
        self.ledger.plan = plan;
        self.post_ledger()
    }

    /// Updated facts and a new plan from what the team has done since the last ledger.
    async fn replan(&mut self) -> Step<()> {
        let mut thread = self.working_thread();
        let facts_prompt = Message::user(fill_template(
            FACTS_UPDATE_PROMPT,
            &[("task", &self.ledger.task), ("facts", &self.ledger.facts)],
        ));
        thread.push(facts_prompt);
        let facts = self.ask(thread.clone()).await?;
        thread.push(Message::assistant(
            self.session.name.clone(),
            facts.as_str(),
        ));
        thread.push(Message::user(fill_template(
            PLAN_UPDATE_PROMPT,
            &[("team", &self.team)],
        )));
        let plan = self.ask(thread).await?;
        self.ledger.facts = facts;
        self.ledger.plan = plan;
        self.ledger.stalls = 0;
        // The team starts the new plan afresh, as AutoGen resets its agents on re-entering the
        // outer loop.
        for agent in &self.agents {
            agent.reset();
        }
        self.post_ledger()
    }

    fn post_ledger(&mut self) -> Step<()> {
        self.ledger.from = self.messages.len();
        let text = self.ledger_message();
        self.say(text)
    }

    /// The progress ledger, retried with feedback while unreadable.
    async fn progress(&self) -> Step<Verdict> {
        let names: Vec<&str> = self.session.names.iter().map(|n| &**n).collect();
        let mut prompt = self.working_thread();
        prompt.push(Message::user(fill_template(
            PROGRESS_PROMPT,
            &[
                ("task", &self.ledger.task),
                ("team", &self.team),
                ("names", &names.join(", ")),
            ],
        )));
        let mut problem = String::new();
        for _ in 0..self.ledger_attempts {
            let answer = self.ask(prompt.clone()).await?;
            match read_progress(&answer, &names) {
                Ok(verdict) => return Ok(verdict),
                Err(why) => {
                    tracing::debug!(problem = %why, "unreadable progress ledger; asking again");
                    prompt.push(Message::assistant(
                        self.session.name.clone(),
                        answer.as_str(),
                    ));
                    prompt.push(Message::user(format!(
                        "Your answer could not be used: {why}. Answer again with the JSON object only, exactly as the schema says."
                    )));
                    problem = why;
                }
            }
        }
        Err(Halt::Fail(Box::new(ChatErrorKind::LedgerUnreadable {
            attempts: self.ledger_attempts,
            problem,
        })))
    }

    async fn final_answer(&mut self) -> Step<()> {
        let mut thread = self.working_thread();
        thread.push(Message::user(fill_template(
            FINAL_ANSWER_PROMPT,
            &[("task", &self.ledger.task)],
        )));
        let answer = self.ask(thread).await?;
        self.say(answer)
    }

    async fn drive(&mut self, task: Task) -> Step<StopReason> {
        if self.termination.as_ref().is_some_and(|t| t.is_terminated()) {
            return Ok(StopReason::AlreadyTerminated);
        }
        if task.is_resume() {
            if self.messages.is_empty() {
                return Err(Halt::Fail(Box::new(ChatErrorKind::NothingToResume)));
            }
        } else {
            let messages = task.into_messages(&Arc::from("user"));
            self.ledger = TaskLedger {
                task: messages
                    .iter()
                    .filter_map(Message::text)
                    .collect::<Vec<_>>()
                    .join("\n"),
                ..TaskLedger::default()
            };
            for m in messages {
                self.append(m)?;
            }
            self.plan_task().await?;
        }
        loop {
            if self.session.token.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            self.ledger.rounds += 1;
            if let Some(max) = self.max_turns
                && self.ledger.rounds > max
            {
                self.final_answer().await?;
                return Ok(StopReason::MaxTurns { max });
            }
            let (speaker, instruction) = match self.progress().await? {
                Verdict::Done(because) => {
                    self.final_answer().await?;
                    return Ok(StopReason::Satisfied { because });
                }
                Verdict::Next {
                    speaker,
                    instruction,
                    stalled,
                } => {
                    self.ledger.stalls = if stalled {
                        self.ledger.stalls.saturating_add(1)
                    } else {
                        self.ledger.stalls.saturating_sub(1)
                    };
                    (speaker, instruction)
                }
            };
            if self.ledger.stalls >= self.max_stalls {
                self.replan().await?;
                continue;
            }
            self.say(instruction)?;
            let Some(index) = self.session.names.iter().position(|n| **n == *speaker) else {
                // read_progress only accepts members.
                continue;
            };
            self.session.emit(|| ChatEvent::SpeakerSelected {
                name: self.session.names[index].clone(),
            });
            let history = self.working_thread();
            let turn = self
                .session
                .take_turn(&*self.agents[index], index, &history)
                .await;
            match turn {
                Turn::Replied(reply) => {
                    for m in reply.messages {
                        self.append(m)?;
                    }
                }
                Turn::Stop(reason) => return Ok(reason),
                Turn::Failed(kind) => return Err(Halt::Fail(kind)),
            }
        }
    }
}
