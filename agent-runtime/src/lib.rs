//! # agent-runtime
//!
//! Turnstile's runtime: the [quota scheduler](scheduler) that every model call passes through,
//! the [chats](chat) that run agents on it, the [providers](provider), and (feature `mock-server`)
//! an OpenAI-shaped rate-limited mock server (`mock`).
//!
//! The turn pipeline, stage by stage as the modules name it:
//! `budget → quota admission → provider → reconcile`, with one retry loop around the provider.

pub mod chat;
pub mod context;
#[cfg(feature = "mock-server")]
pub mod mock;
pub mod provider;
pub mod scheduler;

pub use context::SchedulerContext;
pub use scheduler::{CallObserver, ModelCall, QuotaScheduler};
