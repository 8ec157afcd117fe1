//! Graph workflows (AutoGen's `GraphFlow` / `DiGraphBuilder`): a directed graph of agents with
//! conditional edges, `all`/`any` joins, parallel fan-out and cycles that must have an exit.
//!
//! - [`builder`](GraphFlowBuilder): the graph's definition ([`Edge`], [`Activation`]) and its
//!   validation at `build()`;
//! - [`GraphFlow`]: the run loop — each step runs every ready node concurrently through the
//!   scheduler, on the graph's budget.
//!
//! `docs/chats.md` ("Graph workflows") gives the exact semantics and where they differ from
//! AutoGen.

mod builder;
mod flow;

pub use builder::{Activation, DEFAULT_GRAPH_NAME, Edge, GraphFlowBuilder};
pub use flow::GraphFlow;
