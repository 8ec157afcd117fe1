//! Running many tasks as chats on one scheduler, writing each result as it finishes.
//!
//! Stopping is in two steps, as `turnstile run` wires them to Ctrl-C: [`BatchControl::stop`]
//! starts no new task and lets the running ones finish (their results are written);
//! [`BatchControl::abort`] also cancels the running chats, whose results are **not** written, so
//! a rerun runs them again. Nothing written is ever lost or written twice.

use std::sync::Arc;
use std::time::Duration;

use agent_core::StopReason;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::results::{ResultsError, ResultsFile, TaskRecord};
use super::tasks::InputTask;
use super::team::Team;

/// Tasks running at once when the spec says nothing.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// How a run is stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct BatchControl {
    /// Start no new task; let running ones finish.
    pub stop: CancellationToken,
    /// Cancel running tasks too (their results are not written).
    pub abort: CancellationToken,
}

/// Where a run stands; passed to the progress callback after every task that ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct BatchProgress {
    /// Tasks this run set out to run.
    pub total: usize,
    /// Tasks ended with a result written (stopped normally or failed).
    pub done: usize,
    /// Of those, tasks that failed.
    pub failed: usize,
    /// Tasks running now.
    pub running: usize,
    /// Model calls of the written results.
    pub calls: u64,
    /// Tokens of the written results.
    pub tokens: u64,
    /// Dollars of the written results.
    pub cost_usd: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BatchSummary {
    /// The counters at the end.
    pub progress: BatchProgress,
    /// Tasks never started because the run was stopped.
    pub not_started: usize,
    /// Tasks cancelled while running (not written).
    pub cancelled: usize,
}

/// Runs `tasks` as chats of `team`, at most `concurrency` at once, appending each result to
/// `out` as it ends. Invalid input lines are written as failed records without running.
pub async fn run_batch(
    team: Arc<Team>,
    tasks: Vec<InputTask>,
    out: &mut ResultsFile,
    concurrency: usize,
    control: &BatchControl,
    mut on_progress: impl FnMut(&BatchProgress),
) -> Result<BatchSummary, ResultsError> {
    let concurrency = concurrency.max(1);
    let mut progress = BatchProgress {
        total: tasks.len(),
        ..BatchProgress::default()
    };
    on_progress(&progress);
    let mut queue = tasks.into_iter();
    let mut running: JoinSet<Option<TaskRecord>> = JoinSet::new();
    let mut cancelled = 0;
    loop {
        while running.len() < concurrency && !control.stop.is_cancelled() {
            let Some(task) = queue.next() else { break };
            match task {
                InputTask::Invalid { id, error } => {
                    record(out, &mut progress, &TaskRecord::invalid(id, error))?;
                    on_progress(&progress);
                }
                InputTask::Task { id, task } => {
                    running.spawn(run_task(team.clone(), id, task, control.abort.clone()));
                }
            }
        }
        progress.running = running.len();
        let ended = tokio::select! {
            ended = running.join_next() => ended,
            // Wake to stop admitting even when nothing ends for a while.
            () = control.stop.cancelled(), if !control.stop.is_cancelled() => continue,
        };
        let Some(ended) = ended else { break };
        progress.running = running.len();
        match ended {
            Ok(Some(r)) => record(out, &mut progress, &r)?,
            Ok(None) => cancelled += 1,
            // A task that panicked: its chat is gone, but the run goes on and says so.
            Err(e) => {
                tracing::error!(error = %e, "a task panicked; its result is not written");
                cancelled += 1;
            }
        }
        on_progress(&progress);
    }
    Ok(BatchSummary {
        progress,
        not_started: queue.len(),
        cancelled,
    })
}

fn record(
    out: &mut ResultsFile,
    progress: &mut BatchProgress,
    r: &TaskRecord,
) -> Result<(), ResultsError> {
    out.append(r)?;
    progress.done += 1;
    progress.failed += usize::from(r.failed());
    progress.calls += r.calls;
    progress.tokens += r.prompt_tokens + r.completion_tokens;
    progress.cost_usd += r.cost_usd;
    Ok(())
}

/// One task: its chat, run to the end; `None` when it was cancelled by an abort.
async fn run_task(
    team: Arc<Team>,
    id: String,
    task: String,
    abort: CancellationToken,
) -> Option<TaskRecord> {
    let start = Instant::now();
    let mut chat = match team.chat(&id) {
        Ok(chat) => chat,
        Err(e) => return Some(TaskRecord::invalid(id, e.to_string())),
    };
    let handle = chat.cancel_handle();
    let result = {
        let cancel = async {
            abort.cancelled().await;
            handle.cancel();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = chat.run(task) => r,
            () = cancel => return None,
        }
    };
    let used = chat.budget().used();
    let mut record = TaskRecord::new(id);
    record.calls = used.calls;
    record.cost_usd = used.cost_usd;
    record.wall_s = round_ms(start.elapsed());
    match result {
        Ok(r) if r.stop_reason == StopReason::Cancelled && abort.is_cancelled() => return None,
        Ok(r) => {
            record.stop_reason = Some(r.stop_reason.to_string());
            record.prompt_tokens = r.usage.total.prompt_tokens;
            record.completion_tokens = r.usage.total.completion_tokens;
            record.transcript = r.messages;
        }
        Err(e) => {
            record.error = Some(e.to_string());
            record.transcript = e.into_transcript();
        }
    }
    Some(record)
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
