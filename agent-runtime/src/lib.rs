//! # agent-runtime
//!
//! Turnstile's runtime: the [quota scheduler](scheduler) that every model call passes through,
//! the [chats](chat) that run agents on it, the [providers](provider), the [fanout] workload (many
//! group chats sharing one quota, with a report) and (feature `mock-server`) an OpenAI-shaped
//! rate-limited mock server (`mock`).
//!
//! The turn pipeline, stage by stage as the modules name it:
//! `budget → quota admission → provider → reconcile`, with one retry loop around the provider.

pub mod chat;
#[cfg(feature = "cli")]
pub mod cli;
pub mod context;
pub mod fanout;
#[cfg(feature = "mock-server")]
pub mod mock;
pub mod provider;
pub mod scheduler;

pub use context::SchedulerContext;
pub use scheduler::{CallInfo, CallObserver, ModelCall, QuotaScheduler};

// The README's code blocks compile and run as doctests, so the front page stays true to the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
