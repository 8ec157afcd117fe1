//! A Magentic-style orchestrator (AutoGen's `MagenticOneGroupChat`): a task ledger (facts and
//! plan), a JSON progress ledger each round, stall counting with re-planning, and a final answer.
//!
//! - `ledger`: the prompts and the progress ledger's JSON;
//! - [`MagenticChat`]: the builder and the loop; every ledger call goes through the scheduler on
//!   the chat's budget;
//! - [`MagenticState`]: what `save_state` / `load_state` carry across a restart.

mod ledger;
mod orchestrator;
mod state;

pub use orchestrator::{DEFAULT_ORCHESTRATOR_NAME, MagenticChat, MagenticChatBuilder};
pub use state::MagenticState;
