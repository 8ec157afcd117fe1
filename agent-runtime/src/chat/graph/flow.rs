//! The graph's run loop: run every ready node at once, append their replies, activate the edges
//! whose conditions hold, repeat until nothing is ready.

use std::fmt;
use std::sync::Arc;

use agent_core::{Agent, Budget, Content, Message, StopReason, Termination};
use futures::future::join_all;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::builder::{Activation, GraphFlowBuilder, Topology};
use crate::chat::cancel::CancelHandle;
use crate::chat::caps::{Caps, Counters};
use crate::chat::error::{ChatError, ChatErrorKind};
use crate::chat::events::{ChatEvent, ChatEventStream};
use crate::chat::result::ChatResult;
use crate::chat::session::{Session, Turn};
use crate::chat::task::Task;

/// Where a graph's execution stands between steps.
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphState {
    /// Nodes that run in the next step, in participant order.
    ready: Vec<usize>,
    /// Per activation group: parents of an `All` group still to finish.
    remaining: Vec<usize>,
    /// Per activation group: an `Any` group has already queued its target.
    latched: Vec<bool>,
}

impl GraphState {
    fn start(topology: &Topology) -> Self {
        Self {
            ready: topology.start.clone(),
            remaining: topology.groups.iter().map(|g| g.parents).collect(),
            latched: vec![false; topology.groups.len()],
        }
    }

    fn queue(&mut self, node: usize) {
        if let Err(at) = self.ready.binary_search(&node) {
            self.ready.insert(at, node);
        }
    }

    /// `node` replied with `last`: activate the targets of its edges whose conditions hold.
    fn finished(&mut self, topology: &Topology, node: usize, last: &Message) {
        for edge in &topology.out[node] {
            if !edge.condition.as_ref().is_none_or(|c| c.holds(last)) {
                continue;
            }
            let group = &topology.groups[edge.group];
            match group.activation {
                Activation::All => {
                    let left = &mut self.remaining[edge.group];
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        // The join re-arms, so a loop can pass through it again.
                        *left = group.parents;
                        self.queue(edge.target);
                    }
                }
                Activation::Any => {
                    if !self.latched[edge.group] {
                        self.latched[edge.group] = true;
                        self.queue(edge.target);
                    }
                }
            }
        }
    }
}

/// A directed graph of agents (AutoGen's `GraphFlow`, the Agent Framework's workflows).
///
/// Each **step** runs every ready node **concurrently**: each sees the thread as it was when the
/// step began and replies through its own turn context — so every branch's calls queue in the
/// [scheduler](crate::scheduler) and are charged to the graph's budget. The replies are appended
/// in participant order (not finishing order, so transcripts are reproducible), then each
/// node's outgoing edges whose condition holds on the last message of its reply activate their
/// targets; a target runs once every parent of its activation group has finished
/// ([`Activation::All`]) or after the first ([`Activation::Any`]). When nothing is ready the run
/// stops with [`StopReason::GraphComplete`].
///
/// It also stops at the termination condition, `max_turns`, the budget, cancellation, an empty
/// reply, or a reply ending with a stop message. Replies of a step that already ran are kept even
/// when an earlier one in the same step stopped the run (their calls were made and charged).
/// A stopped graph resumes where it stopped ([`Task::Resume`] or a new task); a completed graph
/// starts again from its start nodes.
///
/// ```
/// use agent_core::{Agent, AgentError, AgentReply, Message, StopReason, TurnContext};
/// use agent_runtime::chat::graph::GraphFlow;
///
/// struct Echo(&'static str);
///
/// #[agent_core::async_trait]
/// impl Agent for Echo {
///     fn name(&self) -> &str { self.0 }
///     async fn reply(&self, _h: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
///         Ok(AgentReply::message(Message::assistant(self.0, "ok")))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// // A fans out to B and C, which join at D.
/// let mut flow = GraphFlow::builder()
///     .participant(Echo("A"))
///     .participant(Echo("B"))
///     .participant(Echo("C"))
///     .participant(Echo("D"))
///     .edge("A", "B")
///     .edge("A", "C")
///     .edge("B", "D")
///     .edge("C", "D")
///     .build()?;
/// let result = flow.run("go").await?;
/// let who: Vec<_> = result.messages.iter().map(|m| m.source().unwrap()).collect();
/// assert_eq!(who, ["user", "A", "B", "C", "D"]);
/// assert_eq!(result.stop_reason, StopReason::GraphComplete);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct GraphFlow {
    pub(crate) session: Session,
    pub(crate) agents: Vec<Arc<dyn Agent>>,
    pub(crate) topology: Topology,
    pub(crate) termination: Option<Box<dyn Termination>>,
    pub(crate) caps: Caps,
    pub(crate) messages: Vec<Message>,
    pub(crate) counters: Counters,
    pub(crate) state: GraphState,
}

impl fmt::Debug for GraphFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphFlow")
            .field("session", &self.session)
            .field("ready", &self.state.ready)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl GraphFlow {
    /// A builder with no nodes and no edges.
    pub fn builder() -> GraphFlowBuilder {
        GraphFlowBuilder::new()
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.session.name
    }

    /// The nodes' names, in order.
    pub fn participants(&self) -> &[Arc<str>] {
        &self.session.names
    }

    /// The whole thread, every run included.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The budget every branch charges.
    pub fn budget(&self) -> &Budget {
        &self.session.budget
    }

    /// A handle that cancels the current (or next) run.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.session.cancel_handle()
    }

    /// Runs the graph until it completes or stops. `task` may be text, messages, or
    /// [`Task::Resume`].
    ///
    /// # Errors
    /// An agent failing with anything but budget exhaustion or cancellation, an empty task on a
    /// graph with no thread, or a failed reflection summary.
    pub async fn run(&mut self, task: impl Into<Task>) -> Result<ChatResult, ChatError> {
        self.run_with(task.into(), None).await
    }

    /// Runs the graph, yielding [`ChatEvent`]s (a `SpeakerSelected` per node of each step).
    pub fn run_stream(&mut self, task: impl Into<Task>) -> ChatEventStream<'_> {
        let task = task.into();
        ChatEventStream::new(move |tx| Box::pin(self.run_with(task, Some(tx))))
    }

    /// Starts over: clears the thread, the graph's position, the counters, the condition and
    /// every agent's state.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.state = GraphState::default();
        self.counters = Counters {
            consecutive: vec![0; self.agents.len()],
            ..Counters::default()
        };
        if let Some(t) = &mut self.termination {
            t.reset();
        }
        for a in &self.agents {
            a.reset();
        }
    }

    async fn run_with(
        &mut self,
        task: Task,
        events: Option<UnboundedSender<ChatEvent>>,
    ) -> Result<ChatResult, ChatError> {
        let started = Instant::now();
        self.session.begin(events);
        let run_start = self.messages.len();
        let outcome = self.drive(task).await;
        if let Ok(stop) = &outcome
            && *stop != StopReason::Cancelled
        {
            if let Some(t) = &mut self.termination {
                t.reset();
            }
            self.counters.turns = 0;
            self.counters.messages = 0;
        }
        self.session
            .finish(outcome, &self.messages, run_start, started)
            .await
    }

    fn append(&mut self, messages: Vec<Message>) -> Option<StopReason> {
        let from = self.messages.len();
        self.messages.extend(messages);
        let delta = &self.messages[from..];
        for m in delta {
            self.session.emit(|| ChatEvent::Message(m.clone()));
        }
        let condition = self.termination.as_mut().and_then(|t| t.check(delta));
        self.caps.check_delta(&mut self.counters, delta, condition)
    }

    async fn drive(&mut self, task: Task) -> Result<StopReason, Box<ChatErrorKind>> {
        if self.termination.as_ref().is_some_and(|t| t.is_terminated()) {
            return Ok(StopReason::AlreadyTerminated);
        }
        if task.is_resume() && self.messages.is_empty() {
            return Err(Box::new(ChatErrorKind::NothingToResume));
        }
        if self.state.ready.is_empty() {
            self.state = GraphState::start(&self.topology);
        }
        if !task.is_resume() {
            let source: Arc<str> = Arc::from("user");
            if let Some(stop) = self.append(task.into_messages(&source)) {
                return Ok(stop);
            }
        }
        loop {
            if self.session.token.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            if self.state.ready.is_empty() {
                return Ok(StopReason::GraphComplete);
            }
            if let Err(e) = self.session.room_for_a_call() {
                return Ok(StopReason::BudgetExhausted(e));
            }
            let step = std::mem::take(&mut self.state.ready);
            for &node in &step {
                for &g in &self.topology.groups_of[node] {
                    self.state.latched[g] = false;
                }
                self.session.emit(|| ChatEvent::SpeakerSelected {
                    name: self.session.names[node].clone(),
                });
            }
            let turns = {
                let history = &self.messages;
                let session = &self.session;
                join_all(
                    step.iter()
                        .map(|&node| session.take_turn(&*self.agents[node], node, history)),
                )
                .await
            };
            let mut stop: Option<StopReason> = None;
            for (&node, turn) in step.iter().zip(turns) {
                let reply = match turn {
                    Turn::Replied(reply) => reply,
                    Turn::Stop(reason) => {
                        // A node that could not reply (budget, cancel) runs again on resume.
                        if !matches!(reason, StopReason::EmptyReply { .. }) {
                            self.state.queue(node);
                        }
                        stop.get_or_insert(reason);
                        continue;
                    }
                    Turn::Failed(kind) => return Err(kind),
                };
                let by_turns = self
                    .caps
                    .record_reply(&mut self.counters, node, reply.from_human);
                let requested = match reply.messages.last().map(|m| &m.content) {
                    Some(Content::Stop { text }) => Some(StopReason::StopRequested {
                        source: self.session.names[node].to_string(),
                        text: text.to_string(),
                    }),
                    _ => None,
                };
                let last = reply.messages.last().cloned();
                let checked = self.append(reply.messages);
                if let Some(last) = last {
                    self.state.finished(&self.topology, node, &last);
                }
                if stop.is_none() {
                    stop = checked.or(requested).or(by_turns);
                }
            }
            if let Some(stop) = stop {
                return Ok(stop);
            }
            tokio::task::consume_budget().await;
        }
    }
}
