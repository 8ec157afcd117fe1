//! A chat's saved state: everything needed to continue it after a process restart.

use std::collections::BTreeMap;

use agent_core::{BudgetUsage, Message};
use serde::{Deserialize, Serialize};

/// A snapshot of a chat between runs, serializable with serde.
///
/// Holds the thread, the rotation (previous speaker, pending handoff, random selector state), the
/// counters (turns and messages since the last stop, consecutive auto-replies) and what the chat's
/// budget had used, so a chat restored after a restart keeps spending from the same budget. Like
/// AutoGen-agentchat's `save_state`, it does **not** hold the termination condition's internal
/// state: conditions are reset whenever a chat stops, so a state saved after a stop loses nothing;
/// one saved after a cancellation restarts the condition's counting. Agents keep their own state.
///
/// Participants are referred to by name, so loading into a chat that lacks one fails with a clear
/// error. Build the chat with the same participants in the same order (and the same selection) to
/// continue the same rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatState {
    /// Format version (currently 1).
    pub version: u32,
    /// The conversation id the chat's calls are queued and charged under.
    pub conversation_id: String,
    /// The whole thread, oldest first.
    pub messages: Vec<Message>,
    /// The participant who spoke last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_speaker: Option<String>,
    /// A handoff target not yet acted on (handoff selection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_handoff: Option<String>,
    /// Agent replies since the last stop (the `max_turns` counter).
    pub turns: u32,
    /// Messages counted toward `max_messages` since the last stop.
    pub counted_messages: u64,
    /// Automatic replies per agent since the last human reply or new task.
    #[serde(default)]
    pub consecutive_auto_replies: BTreeMap<String, u32>,
    /// The random selector's generator state.
    pub rng: u64,
    /// What the chat's budget had used when it was saved (calls, tokens, dollars). Loading raises
    /// the new chat's budget to it with [`Budget::restore_used`](agent_core::Budget::restore_used),
    /// which also charges the new budget's ancestors. `None` (states saved before this field
    /// existed) restores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_used: Option<BudgetUsage>,
}

impl ChatState {
    /// The current format version.
    pub const VERSION: u32 = 1;
}
