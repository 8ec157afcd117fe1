//! What can go wrong with a chat: a configuration rejected at `build()`, or a run that failed.
//!
//! A chat that *stops* (a cap, the termination condition, the budget, cancellation) is not an
//! error: it returns a [`ChatResult`](super::ChatResult) with a typed stop reason. [`ChatError`] is
//! for failures a caller has to handle, and it keeps the transcript so nothing is lost.

use agent_core::{AgentError, CallError, Message};

/// A chat configuration rejected by `build()` (or by [`GroupChat::load_state`](super::GroupChat::load_state)).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatConfigError {
    /// The chat has no participants.
    #[error("a chat needs at least one participant; add one with .participant(agent)")]
    NoParticipants,
    /// Two participants share a name.
    #[error("two participants are named '{name}'; agent names must be unique in a chat")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A participant has the chat's own name (used for selector and reflection calls).
    #[error(
        "participant '{name}' has the chat's own name, which is used for speaker-selection and reflection calls; rename the agent or set another chat name with .name(..)"
    )]
    NameClash {
        /// The name.
        name: String,
    },
    /// A name in the configuration is not a participant.
    #[error(
        "{context} names '{name}', which is not a participant (participants: {participants:?})"
    )]
    UnknownAgent {
        /// Where the name was given (e.g. `"transitions"`).
        context: &'static str,
        /// The unknown name.
        name: String,
        /// The participants' names.
        participants: Vec<String>,
    },
    /// With handoff selection, an agent can hand off to someone who is not a participant
    /// ([`Agent::handoff_targets`](agent_core::Agent::handoff_targets)).
    #[error(
        "agent '{agent}' can hand off to '{target}', which is not a participant (participants: {participants:?}); add '{target}' to the chat or remove the handoff"
    )]
    UnknownHandoffTarget {
        /// The agent with the handoff.
        agent: String,
        /// The target that is not a participant.
        target: String,
        /// The participants' names.
        participants: Vec<String>,
    },
    /// A cap or attempt count was zero, which would stop (or never select) before anything happens.
    #[error("{what} must be at least 1; leave it unset for no cap")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// Handoff selection was combined with a setting that does not apply to it: it follows the
    /// agents' handoffs (and lets the same speaker continue when nobody hands off), so neither a
    /// transition graph nor a repeat rule has any meaning there.
    #[error(
        "handoff selection follows the agents' handoffs and lets the same speaker continue when nobody hands off, so {setting} does not apply to it; remove {setting} or choose another speaker selection"
    )]
    IncompatibleWithHandoffs {
        /// The builder setting: `.transitions(..)` or `.allow_repeat(..)` / `.allow_repeat_for(..)`.
        setting: &'static str,
    },
    /// A graph has no node to start from: every node has an incoming edge and no start node was
    /// named.
    #[error(
        "the graph has no start node: every node has an incoming edge; name one with .start(..) or remove an edge into it"
    )]
    GraphNoStart,
    /// A graph has no leaf: every node has an outgoing edge, so no path can end there.
    #[error(
        "the graph has no leaf node (one without outgoing edges), so no path can finish; add a node that ends the workflow"
    )]
    GraphNoLeaf,
    /// A cycle of the graph has no conditional edge, so once entered it never exits.
    #[error(
        "cycle detected without exit condition: {}; make one of its edges conditional (Edge::when_contains or Edge::when)",
        cycle.join(" -> ")
    )]
    GraphCycleWithoutExit {
        /// The cycle, first node repeated at the end (`["A", "B", "A"]`).
        cycle: Vec<String>,
    },
    /// A node has both conditional and unconditional outgoing edges (AutoGen rejects it too: the
    /// unconditional ones would always fire, making the condition meaningless as a branch).
    #[error(
        "node '{node}' has a mix of conditional and unconditional edges; make all of its outgoing edges conditional or none"
    )]
    GraphMixedEdges {
        /// The node.
        node: String,
    },
    /// A graph lists the same edge twice.
    #[error("the edge '{from}' -> '{to}' is defined twice; define each edge once")]
    GraphDuplicateEdge {
        /// The source node.
        from: String,
        /// The target node.
        to: String,
    },
    /// A saved state has a format version this build cannot read.
    #[error(
        "saved chat state has format version {found}, but this build reads version {supported}; save it again with a matching version"
    )]
    StateVersion {
        /// The state's version.
        found: u32,
        /// The version this build reads ([`ChatState::VERSION`](super::ChatState::VERSION)).
        supported: u32,
    },
    /// A saved state names an agent that is not a participant of this chat.
    #[error(
        "saved chat state names '{name}' as its {field}, who is not a participant (participants: {participants:?}); build the chat with the same participants it was saved from"
    )]
    StateUnknownAgent {
        /// Where the name appears: `previous_speaker`, `pending_handoff` or
        /// `consecutive_auto_replies`.
        field: &'static str,
        /// The name.
        name: String,
        /// The participants' names.
        participants: Vec<String>,
    },
    /// A saved counter is larger than the saved thread allows: every counted turn, message or
    /// auto-reply is a message of the thread, so none can exceed the thread's length.
    #[error(
        "saved chat state is inconsistent: its {counter} counter is {value}, but its thread has only {messages} messages, so it can be at most {messages}; the state was corrupted or edited — load an unmodified save_state()"
    )]
    StateCounterOutOfRange {
        /// The counter (`turns`, `counted_messages`, or `consecutive_auto_replies['<agent>']`).
        counter: String,
        /// Its saved value.
        value: u64,
        /// The number of messages in the saved thread.
        messages: u64,
    },
}

/// What failed in a chat run.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChatErrorKind {
    /// An agent's reply failed with something other than budget exhaustion or cancellation (those
    /// stop the chat with a reason instead).
    #[error("agent '{agent}' failed: {source}")]
    Agent {
        /// The agent.
        agent: String,
        /// What it failed with.
        source: AgentError,
    },
    /// A speaker-selection model call failed (after the scheduler's retries).
    #[error("speaker selection failed: {0}")]
    Selector(CallError),
    /// A Magentic orchestrator's ledger or final-answer call failed (after the scheduler's
    /// retries).
    #[error("orchestrator call failed: {0}")]
    Orchestrator(CallError),
    /// A Magentic orchestrator's model never produced a usable progress ledger.
    #[error(
        "the orchestrator's progress ledger was unreadable after {attempts} calls (last problem: {problem}); use a model that follows JSON instructions, or raise ledger_attempts"
    )]
    LedgerUnreadable {
        /// Calls made for this ledger.
        attempts: u32,
        /// What was wrong with the last answer.
        problem: String,
    },
    /// The summary's reflection call failed.
    #[error("summary reflection failed: {0}")]
    Summary(CallError),
    /// Speaker selection (a custom function, a handoff, or a saved state) named someone who is
    /// not a participant.
    #[error(
        "{context} named '{name}', which is not a participant (participants: {participants:?})"
    )]
    UnknownSpeaker {
        /// Who named it: `"selector function"`, `"candidate function"` or `"handoff"`.
        context: &'static str,
        /// The name given.
        name: String,
        /// The participants.
        participants: Vec<String>,
    },
    /// The [candidate function](super::GroupChatBuilder::candidate_func) returned no names
    /// (AutoGen raises `ValueError` there too).
    #[error(
        "the candidate function returned no candidates; return at least one participant's name, or end the chat with .select_speaker_with(..) returning SpeakerChoice::End"
    )]
    NoCandidates,
    /// Reading the human's choice for manual speaker selection failed.
    #[error("manual speaker selection could not read input: {0}")]
    Input(AgentError),
    /// The run was given no task (an empty message list or [`Task::Resume`](super::Task::Resume))
    /// but the chat has no thread to resume: running the agents on an empty thread would spend
    /// calls on nothing (AutoGen: "Task list cannot be empty").
    #[error(
        "the task is empty and the chat has no conversation to resume; pass a task (text or at least one message), or resume only a chat that has run before"
    )]
    NothingToResume,
    /// A chat built during the run (nested or sequential) was misconfigured.
    #[error(transparent)]
    Config(#[from] ChatConfigError),
}

/// A chat run that failed. Carries the messages of this run up to the failure (task messages
/// included), so nothing is lost; the chat itself keeps its whole thread and can be run again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}")]
pub struct ChatError {
    kind: ChatErrorKind,
    transcript: Vec<Message>,
}

impl ChatError {
    pub(crate) fn new(kind: ChatErrorKind, transcript: Vec<Message>) -> Self {
        Self { kind, transcript }
    }

    /// What failed.
    pub fn kind(&self) -> &ChatErrorKind {
        &self.kind
    }

    /// The messages of the failed run up to the failure.
    pub fn transcript(&self) -> &[Message] {
        &self.transcript
    }

    /// The transcript, by value.
    pub fn into_transcript(self) -> Vec<Message> {
        self.transcript
    }
}

impl From<ChatConfigError> for ChatError {
    fn from(e: ChatConfigError) -> Self {
        ChatError::new(ChatErrorKind::Config(e), Vec::new())
    }
}
