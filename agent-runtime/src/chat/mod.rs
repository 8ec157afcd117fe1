//! Conversations: group chats, two-agent chats, nested and sequential chats — every model call
//! of which goes through the [quota scheduler](crate::scheduler).
//!
//! - [`GroupChat`] (built with [`GroupChat::builder`]) runs participants chosen by a
//!   [`SpeakerSelection`] under caps, a termination condition and a budget, and returns a
//!   [`ChatResult`]; [`GroupChat::run_stream`] yields [`ChatEvent`]s as it goes.
//! - [`GroupChat::two_agent`] is AG2's `initiate_chat`.
//! - [`graph::GraphFlow`] runs a directed graph of agents: conditional edges, joins, parallel
//!   branches.
//! - [`magentic::MagenticChat`] is a Magentic-style orchestrator with task and progress ledgers.
//! - [`NestedChatAgent`] answers with the summary of an inner chat run on a child budget;
//!   [`run_sequential`] carries each chat's summary into the next.
//!
//! `docs/chats.md` describes every selection method, cap and control with its exact semantics.

mod cancel;
mod caps;
mod error;
mod events;
pub mod graph;
mod group_chat;
pub mod magentic;
mod nested;
mod result;
mod sequential;
mod session;
mod speaker;
mod state;
mod summary;
mod task;
mod two_agent;

pub use cancel::CancelHandle;
pub use caps::TerminationPredicate;
pub use error::{ChatConfigError, ChatError, ChatErrorKind};
pub use events::{ChatEvent, ChatEventStream};
pub use group_chat::{DEFAULT_CHAT_NAME, GroupChat, GroupChatBuilder};
pub use nested::{NestedChatAgent, NestedChatFactory};
pub use result::{CallUsage, ChatResult, UsageReport};
pub use sequential::{ChatSpec, SequenceError, run_sequential};
pub use speaker::{
    CandidateFn, LlmSelector, SelectorFn, SelectorInput, SpeakerChoice, SpeakerSelection,
    Transitions,
};
pub use state::ChatState;
pub use summary::{SummaryFn, SummaryMethod};
pub use task::Task;
