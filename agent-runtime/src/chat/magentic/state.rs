//! A Magentic chat's saved state: the thread and the orchestrator's ledger, to continue after a
//! process restart.

use agent_core::{BudgetUsage, Message};
use serde::{Deserialize, Serialize};

/// A snapshot of a [`MagenticChat`](super::MagenticChat) between runs, serializable with serde:
/// the thread, the task ledger (task, facts, plan), the round and stall counters, where the latest
/// ledger message sits, and what the budget had used (AutoGen's orchestrator state holds the
/// same: message thread, task, facts, plan, rounds, stalls). The termination condition and the
/// agents' own state are not in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MagenticState {
    /// Format version (currently 1).
    pub version: u32,
    /// The conversation id the chat's calls are queued and charged under.
    pub conversation_id: String,
    /// The whole thread, oldest first.
    pub messages: Vec<Message>,
    /// The task the ledger works on.
    pub task: String,
    /// The current fact sheet.
    pub facts: String,
    /// The current plan.
    pub plan: String,
    /// Rounds since the task started.
    pub rounds: u32,
    /// Stalls counted since the last plan.
    pub stalls: u32,
    /// The index in `messages` of the latest ledger message.
    pub ledger_from: usize,
    /// What the budget had used when the state was saved; loading raises the new budget to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_used: Option<BudgetUsage>,
}

impl MagenticState {
    /// The current format version.
    pub const VERSION: u32 = 1;
}
