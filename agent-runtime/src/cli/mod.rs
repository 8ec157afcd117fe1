//! The `turnstile` command's library: declarative teams and resumable batch runs under one
//! quota (feature `cli`).
//!
//! - [`spec`] — the team spec (YAML, TOML or JSON) and its validation;
//! - [`team`] — a spec made real: providers, one scheduler, a fresh chat per task;
//! - [`tasks`] — the JSONL input and `--shard i/N`;
//! - [`results`] — the JSONL output, appended line by line and read back to resume;
//! - [`batch`] — running the tasks, stopping in two steps;
//! - [`estimate`](mod@estimate) — `--dry-run`'s upper bounds on calls, tokens and cost, and the quota's lower
//!   bound on the makespan.
//!
//! `docs/cli.md` is the reference for the command and every spec field.

pub mod batch;
pub mod estimate;
pub mod results;
pub mod spec;
pub mod tasks;
pub mod team;

pub use batch::{BatchControl, BatchProgress, BatchSummary, run_batch};
pub use estimate::{Estimate, estimate};
pub use results::{ResultsFile, TaskRecord};
pub use spec::{SpecError, TeamSpec};
pub use tasks::{InputTask, Shard, read_tasks};
pub use team::{TaskChat, Team};
