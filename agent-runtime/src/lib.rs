#![doc = include_str!("../../README.md")]
//!
//! # This crate
//!
//! `agent-runtime` is the one dependency an application needs: it re-exports all of
//! [`agent_core`] at its root (messages, [`ChatModel`], [`Agent`], [`LlmAgent`], termination,
//! [`Budget`], [`PriceTable`], …), so `agent_runtime::LlmAgent` and `agent_core::LlmAgent` are the
//! same item. Its own modules: the [quota scheduler](scheduler) every model call passes through,
//! the [chats](chat) that run agents on it, the [console] printer of a chat's events, the
//! [providers](provider), the [fanout] workload (many group chats sharing one quota, with a
//! report) and (feature `mock-server`) an OpenAI-shaped rate-limited mock server (`mock`).
//!
//! The turn pipeline, stage by stage as the modules name it:
//! `budget → quota admission → provider → reconcile`, with one retry loop around the provider.

pub mod cache;
pub mod chat;
#[cfg(feature = "cli")]
pub mod cli;
pub mod console;
pub mod context;
pub mod fanout;
#[cfg(feature = "mock-server")]
pub mod mock;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod provider;
pub mod scheduler;
#[cfg(any(feature = "openai", feature = "redis"))]
pub mod tls;

pub use context::SchedulerContext;
pub use scheduler::{CallInfo, CallObserver, ModelCall, QuotaScheduler};

// The vocabulary, re-exported: one dependency, one rustdoc. The README (this crate's front page)
// compiles and runs as doctests, so it stays true to the code.
/// The vocabulary crate itself, for paths such as `agent_runtime::agent_core::testing`.
pub use agent_core;
#[doc(inline)]
pub use agent_core::*;

// docs/caching.md and docs/structured-output.md: their Rust blocks run as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/caching.md")]
struct CachingDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/structured-output.md")]
struct StructuredOutputDoctests;
