//! # agent-runtime
