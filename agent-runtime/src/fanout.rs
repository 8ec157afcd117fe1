//! The fanout workload: N group chats sharing one [`QuotaScheduler`] against one model, and the
//! [`FanoutReport`] of how it went.
//!
//! This is the one implementation of "many conversations on one quota" — the `fanout` example,
//! the HTTP integration tests and the benchmarks all run it. Each conversation is a round-robin
//! [`GroupChat`] of [`LlmAgent`]s capped by `max_messages` (task message included, as AutoGen's
//! `MaxMessageTermination` counts, so a chat makes at most `max_messages − 1` model calls). Chats
//! are tokio tasks, at most `concurrency` at once; the rest wait their turn to start.
//!
//! The report's call, 429, retry, token and wait counters are the scheduler's own
//! ([`QuotaScheduler::snapshot`]) for the model's quota key, so nothing is counted twice: give
//! each run its own scheduler for counters that cover that run only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{AgentConfigError, Budget, BudgetLimits, ChatModel, LlmAgent, Message};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::CacheStats;
use crate::chat::{ChatConfigError, GroupChat};
use crate::scheduler::{ConversationStats, KeyStats, QuotaScheduler};

/// The task every conversation starts from unless configured otherwise.
pub const DEFAULT_TASK: &str = "Plan a one-day visit to Lisbon for a first-time visitor. Each of you adds one short, concrete \
     suggestion that builds on the previous ones.";

/// What to run: how many conversations, how many agents each, how long, how many at once.
///
/// ```
/// use agent_runtime::fanout::FanoutConfig;
///
/// let config = FanoutConfig::default()
///     .with_conversations(200)
///     .with_agents(3)
///     .with_max_messages(6) // the task message + 5 replies: at most 5 model calls per chat
///     .with_concurrency(50);
/// assert!(config.validate().is_ok());
/// assert!(FanoutConfig::default().with_max_messages(1).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FanoutConfig {
    /// Conversations to run (default 20).
    pub conversations: usize,
    /// Agents per conversation, speaking round robin (default 3).
    pub agents: usize,
    /// Messages per conversation, the task message included (default 6).
    pub max_messages: u64,
    /// Conversations running at once (default: all of them).
    pub concurrency: Option<usize>,
    /// The task text every conversation starts from (default [`DEFAULT_TASK`]).
    pub task: String,
    /// The completion-token limit of each call, which the scheduler reserves at admission
    /// (default 64; `None` leaves it to the provider and the quota's default reservation).
    pub max_completion_tokens: Option<u32>,
    /// Caps of each conversation's budget (default unlimited).
    pub chat_budget: BudgetLimits,
    /// Caps of the whole run, the parent of every conversation's budget (default unlimited).
    pub run_budget: BudgetLimits,
    /// Whether the agents stream their replies ([`LlmAgent`] `stream(true)`; default off): each
    /// call is then a [`QuotaScheduler::call_stream`], admitted and charged like a call.
    pub stream: bool,
    /// Whether each conversation's report keeps its transcript (default off).
    pub transcripts: bool,
    /// Whether each conversation's task ends with its number (`… (conversation 7)`), so no two
    /// conversations are alike (default off: all start from the same task). With a response
    /// cache, identical conversations share their answers — turn this on to measure a run whose
    /// calls all reach the provider.
    pub distinct_tasks: bool,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            conversations: 20,
            agents: 3,
            max_messages: 6,
            concurrency: None,
            task: DEFAULT_TASK.to_owned(),
            max_completion_tokens: Some(64),
            chat_budget: BudgetLimits::UNLIMITED,
            run_budget: BudgetLimits::UNLIMITED,
            stream: false,
            transcripts: false,
            distinct_tasks: false,
        }
    }
}

impl FanoutConfig {
    /// Sets the number of conversations.
    #[must_use]
    pub fn with_conversations(mut self, conversations: usize) -> Self {
        self.conversations = conversations;
        self
    }

    /// Sets the agents per conversation.
    #[must_use]
    pub fn with_agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    /// Sets the messages per conversation, the task message included.
    #[must_use]
    pub fn with_max_messages(mut self, max_messages: u64) -> Self {
        self.max_messages = max_messages;
        self
    }

    /// Sets how many conversations run at once.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets the task text.
    #[must_use]
    pub fn with_task(mut self, task: impl Into<String>) -> Self {
        self.task = task.into();
        self
    }

    /// Sets the completion-token limit of each call (`None`: not set).
    #[must_use]
    pub fn with_max_completion_tokens(mut self, max: Option<u32>) -> Self {
        self.max_completion_tokens = max;
        self
    }

    /// Sets the caps of each conversation's budget.
    #[must_use]
    pub fn with_chat_budget(mut self, limits: BudgetLimits) -> Self {
        self.chat_budget = limits;
        self
    }

    /// Sets the caps of the whole run.
    #[must_use]
    pub fn with_run_budget(mut self, limits: BudgetLimits) -> Self {
        self.run_budget = limits;
        self
    }

    /// Sets whether each conversation's report keeps its transcript
    /// ([`ConversationReport::transcript`]).
    #[must_use]
    pub fn with_transcripts(mut self, keep: bool) -> Self {
        self.transcripts = keep;
        self
    }

    /// Sets whether each conversation's task ends with its number.
    #[must_use]
    pub fn with_distinct_tasks(mut self, distinct: bool) -> Self {
        self.distinct_tasks = distinct;
        self
    }

    /// Sets whether the agents stream their replies.
    #[must_use]
    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Checks that the configuration can run: at least one conversation and one agent, room for
    /// one reply after the task message, and a concurrency of at least 1.
    pub fn validate(&self) -> Result<(), FanoutConfigError> {
        if self.conversations == 0 {
            return Err(FanoutConfigError::Zero {
                what: "conversations",
            });
        }
        if self.agents == 0 {
            return Err(FanoutConfigError::Zero { what: "agents" });
        }
        if self.concurrency == Some(0) {
            return Err(FanoutConfigError::Zero {
                what: "concurrency",
            });
        }
        if self.max_completion_tokens == Some(0) {
            return Err(FanoutConfigError::Zero {
                what: "max_completion_tokens",
            });
        }
        if self.max_messages < 2 {
            return Err(FanoutConfigError::TooFewMessages {
                max_messages: self.max_messages,
            });
        }
        Ok(())
    }
}

/// A [`FanoutConfig`] that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutConfigError {
    /// A count is zero.
    #[error("fanout {what} must be at least 1")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// `max_messages` leaves no room for a reply.
    #[error(
        "max_messages is {max_messages}, but it counts the task message: it must be at least 2 \
         for one model call per conversation"
    )]
    TooFewMessages {
        /// The value given.
        max_messages: u64,
    },
}

/// Where a run stands, passed to the progress callback when it starts and after every
/// conversation that ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FanoutProgress {
    /// Conversations in the run.
    pub total: usize,
    /// Conversations running now.
    pub running: usize,
    /// Conversations that ended with a result (whatever their stop reason).
    pub completed: usize,
    /// Conversations that ended with an error.
    pub failed: usize,
}

/// One conversation of a run, for fairness and latency analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConversationReport {
    /// The conversation id (`fanout-N`), as the scheduler tracks it.
    pub id: String,
    /// Seconds from the start of the run to the conversation's start.
    pub started_s: f64,
    /// Seconds from the start of the run to the conversation's end.
    pub finished_s: f64,
    /// Messages of the run, the task message included (for a failed conversation, those kept
    /// in the error's transcript).
    pub messages: usize,
    /// Model calls submitted to the scheduler (a call its budget refused included).
    pub calls: u64,
    /// Provider attempts (calls plus retries).
    pub attempts: u64,
    /// 429s received.
    pub http_429: u64,
    /// Retries made.
    pub retries: u64,
    /// Prompt tokens reported.
    pub prompt_tokens: u64,
    /// Completion tokens reported.
    pub completion_tokens: u64,
    /// Admission wait summed over the conversation's calls, in milliseconds.
    pub wait_ms: f64,
    /// Why the conversation stopped (completed conversations).
    pub stop_reason: Option<String>,
    /// What failed (failed conversations).
    pub error: Option<String>,
    /// The messages, when [`FanoutConfig::transcripts`] is set (left out of the JSON when
    /// empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<Message>,
}

/// How a run went. Serializes to the JSON the `fanout` example prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FanoutReport {
    /// The model's id, which is its quota key.
    pub model: String,
    /// Conversations run.
    pub conversations: usize,
    /// Agents per conversation.
    pub agents: usize,
    /// Messages per conversation, the task message included.
    pub max_messages: u64,
    /// Whether the agents streamed their replies.
    pub stream: bool,
    /// Seconds from the start of the run to the end of the last conversation.
    pub wall_s: f64,
    /// Conversations that ended with a result.
    pub completed: usize,
    /// Conversations that ended with an error.
    pub failed: usize,
    /// Model calls made (each call once, whatever its retries).
    pub calls: u64,
    /// Provider attempts (calls plus retries).
    pub attempts: u64,
    /// 429s the provider answered.
    pub http_429: u64,
    /// Retries the scheduler made (after 429s and transient failures).
    pub retries: u64,
    /// Transient failures (5xx, timeouts, cut connections).
    pub transient_errors: u64,
    /// Prompt tokens the provider reported.
    pub prompt_tokens: u64,
    /// Completion tokens the provider reported.
    pub completion_tokens: u64,
    /// What the run cost in dollars: every call's reported usage priced by the run budget's
    /// table (the built-in dated list prices, [`PriceTable::builtin`](agent_core::PriceTable::builtin));
    /// 0 for a model the table does not list.
    pub cost_usd: f64,
    /// Median admission wait of an attempt, in milliseconds.
    pub wait_p50_ms: f64,
    /// 99th-percentile admission wait of an attempt, in milliseconds.
    pub wait_p99_ms: f64,
    /// Longest admission wait, in milliseconds.
    pub wait_max_ms: f64,
    /// The request limit the provider's headers reported, if any.
    pub learned_rpm: Option<u64>,
    /// The token limit the provider's headers reported, if any.
    pub learned_tpm: Option<u64>,
    /// Completed conversations by stop reason.
    pub stop_reasons: BTreeMap<String, usize>,
    /// The error of the first failed conversation (in conversation order).
    pub first_error: Option<String>,
    /// The scheduler's response cache counters, when it has a cache (left out of the JSON
    /// otherwise). Cache hits reach no provider: `calls` and `attempts` count only the calls
    /// that did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    /// Each conversation, in order (left out of the JSON when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_conversation: Vec<ConversationReport>,
}

/// What one conversation task hands back.
#[derive(Debug)]
struct Ended {
    started: Duration,
    finished: Duration,
    messages: usize,
    result: Result<String, String>,
    transcript: Vec<Message>,
}

/// What every conversation task shares.
struct Run {
    model: Arc<dyn ChatModel>,
    scheduler: QuotaScheduler,
    config: FanoutConfig,
    budget: Budget,
    start: Instant,
}

/// Runs `config.conversations` group chats of `config.agents` LLM agents on `model`, every call
/// through `scheduler`, at most `config.concurrency` at once, and reports how it went.
/// `progress` is called when the run starts and after every conversation that ends.
///
/// A conversation that fails (a call the scheduler could not complete: `insufficient_quota`, a
/// malformed response, retries exhausted…) counts in `failed` with its error; the others go on.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use agent_runtime::fanout::{FanoutConfig, run_fanout};
/// use agent_runtime::provider::{SimConfig, SimulatedProvider};
/// use agent_runtime::scheduler::{Quota, QuotaScheduler};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let period = Duration::from_secs(6);
/// let model = Arc::new(SimulatedProvider::new(
///     SimConfig::default().with_rpm(60).with_period(period),
/// )?);
/// let scheduler = QuotaScheduler::builder()
///     .quota("sim/gpt-4o-mini", Quota::per_period(period).requests(60))
///     .build()?;
/// let config = FanoutConfig::default().with_conversations(20);
/// let report = run_fanout(model, scheduler, &config, |_| {}).await?;
/// assert_eq!((report.completed, report.failed), (20, 0));
/// assert_eq!(report.calls, 20 * 5);
/// assert_eq!(report.http_429, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn run_fanout(
    model: Arc<dyn ChatModel>,
    scheduler: QuotaScheduler,
    config: &FanoutConfig,
    mut progress: impl FnMut(&FanoutProgress),
) -> Result<FanoutReport, FanoutConfigError> {
    config.validate()?;
    let total = config.conversations;
    let limit = config.concurrency.unwrap_or(total).min(total);
    let run = Arc::new(Run {
        model,
        scheduler,
        config: config.clone(),
        budget: Budget::new("fanout", config.run_budget),
        start: Instant::now(),
    });
    let mut ended: Vec<Option<Ended>> = (0..total).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    let mut index_of = HashMap::new();
    let mut next = 0;
    let mut state = FanoutProgress {
        total,
        running: 0,
        completed: 0,
        failed: 0,
    };
    progress(&state);
    loop {
        while next < total && tasks.len() < limit {
            let run = run.clone();
            let i = next;
            let handle = tasks.spawn(async move { converse(&run, i).await });
            index_of.insert(handle.id(), i);
            next += 1;
        }
        state.running = tasks.len();
        let Some(joined) = tasks.join_next_with_id().await else {
            break;
        };
        let (i, outcome) = match joined {
            Ok((id, outcome)) => (index_of.remove(&id), outcome),
            // A panicking agent or tool fails its conversation, not the run.
            Err(e) => {
                let now = run.start.elapsed();
                let outcome = Ended {
                    started: now,
                    finished: now,
                    messages: 0,
                    result: Err(format!("the conversation's task failed: {e}")),
                    transcript: Vec::new(),
                };
                (index_of.remove(&e.id()), outcome)
            }
        };
        if outcome.result.is_ok() {
            state.completed += 1;
        } else {
            state.failed += 1;
        }
        if let Some(i) = i {
            ended[i] = Some(outcome);
        }
        state.running = tasks.len();
        progress(&state);
    }
    let wall = run.start.elapsed();
    Ok(report(&run, ended, wall))
}

/// Runs conversation `i` to its end.
async fn converse(run: &Run, i: usize) -> Ended {
    let started = run.start.elapsed();
    let keep = run.config.transcripts;
    let (messages, result, transcript) = match build_chat(run, i) {
        Err(e) => (0, Err(e.to_string()), Vec::new()),
        Ok(mut chat) => match chat.run(task_of(&run.config, i)).await {
            Ok(result) => (
                result.messages.len(),
                Ok(result.stop_reason.to_string()),
                if keep { result.messages } else { Vec::new() },
            ),
            Err(e) => (
                e.transcript().len(),
                Err(e.to_string()),
                if keep {
                    e.transcript().to_vec()
                } else {
                    Vec::new()
                },
            ),
        },
    };
    Ended {
        started,
        finished: run.start.elapsed(),
        messages,
        result,
        transcript,
    }
}

#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Agent(#[from] AgentConfigError),
    #[error(transparent)]
    Chat(#[from] ChatConfigError),
}

fn build_chat(run: &Run, i: usize) -> Result<GroupChat, BuildError> {
    let config = &run.config;
    let id = conversation_id(i);
    let n = config.agents;
    let mut chat = GroupChat::builder()
        .conversation_id(id.clone())
        .scheduler(run.scheduler.clone())
        .budget(run.budget.child(id, config.chat_budget))
        .max_messages(config.max_messages);
    for k in 1..=n {
        let name = format!("agent_{k}");
        let mut agent = LlmAgent::builder(name.clone(), run.model.clone()).system_message(format!(
            "You are {name}, one of {n} agents working on the user's task together. Reply with \
             one short, concrete contribution."
        ));
        if let Some(max) = config.max_completion_tokens {
            agent = agent.max_completion_tokens(max);
        }
        chat = chat.participant(agent.stream(config.stream).build()?);
    }
    Ok(chat.build()?)
}

/// Conversation `i`'s task.
fn task_of(config: &FanoutConfig, i: usize) -> String {
    if config.distinct_tasks {
        format!("{} (conversation {i})", config.task)
    } else {
        config.task.clone()
    }
}

fn conversation_id(i: usize) -> String {
    format!("fanout-{i}")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

fn report(run: &Run, ended: Vec<Option<Ended>>, wall: Duration) -> FanoutReport {
    let snapshot = run.scheduler.snapshot();
    let key = run.model.id();
    let stats = snapshot.keys.get(key).cloned().unwrap_or_default();
    let KeyStats {
        calls,
        attempts,
        rate_limited,
        retries,
        transient_errors,
        prompt_tokens,
        completion_tokens,
        wait,
        learned,
        ..
    } = stats;
    let mut stop_reasons = BTreeMap::new();
    let mut first_error = None;
    let mut per_conversation = Vec::with_capacity(ended.len());
    let (mut completed, mut failed) = (0, 0);
    for (i, outcome) in ended.into_iter().enumerate() {
        let id = conversation_id(i);
        let c = snapshot.conversations.get(&id).cloned().unwrap_or_default();
        let ConversationStats {
            calls,
            attempts,
            rate_limited,
            retries,
            prompt_tokens,
            completion_tokens,
            wait,
            ..
        } = c;
        // A conversation task that vanished (it cannot, short of a runtime shutdown) is a failure.
        let outcome = outcome.unwrap_or(Ended {
            started: wall,
            finished: wall,
            messages: 0,
            result: Err("the conversation never finished".to_owned()),
            transcript: Vec::new(),
        });
        let (stop_reason, error) = match outcome.result {
            Ok(reason) => {
                completed += 1;
                *stop_reasons.entry(reason.clone()).or_insert(0) += 1;
                (Some(reason), None)
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{id}: {e}"));
                (None, Some(e))
            }
        };
        per_conversation.push(ConversationReport {
            id,
            started_s: secs(outcome.started),
            finished_s: secs(outcome.finished),
            messages: outcome.messages,
            calls,
            attempts,
            http_429: rate_limited,
            retries,
            prompt_tokens,
            completion_tokens,
            wait_ms: ms(wait.total),
            stop_reason,
            error,
            transcript: outcome.transcript,
        });
    }
    FanoutReport {
        model: key.to_owned(),
        conversations: run.config.conversations,
        agents: run.config.agents,
        max_messages: run.config.max_messages,
        stream: run.config.stream,
        wall_s: secs(wall),
        completed,
        failed,
        calls,
        attempts,
        http_429: rate_limited.total(),
        retries,
        transient_errors,
        prompt_tokens,
        completion_tokens,
        cost_usd: run.budget.used().cost_usd,
        wait_p50_ms: ms(wait.p50),
        wait_p99_ms: ms(wait.p99),
        wait_max_ms: ms(wait.max),
        learned_rpm: learned.requests,
        learned_tpm: learned.tokens,
        stop_reasons,
        first_error,
        cache: run.scheduler.cache().map(|c| c.stats()),
        per_conversation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Faults, SimConfig, SimulatedProvider};
    use crate::scheduler::RetryPolicy;

    fn sim(config: SimConfig) -> Arc<dyn ChatModel> {
        Arc::new(SimulatedProvider::new(config).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn every_chat_makes_max_messages_minus_one_calls_and_progress_counts_them() {
        let config = FanoutConfig::default()
            .with_conversations(7)
            .with_agents(2)
            .with_max_messages(4)
            .with_concurrency(3);
        let mut seen = Vec::new();
        let report = run_fanout(
            sim(SimConfig::default()),
            QuotaScheduler::new(),
            &config,
            |p| seen.push(*p),
        )
        .await
        .unwrap();
        assert_eq!((report.completed, report.failed), (7, 0));
        assert_eq!(report.calls, 7 * 3);
        assert_eq!(report.per_conversation.len(), 7);
        assert!(
            report
                .per_conversation
                .iter()
                .all(|c| c.messages == 4 && c.calls == 3)
        );
        assert_eq!(report.stop_reasons.values().sum::<usize>(), 7);
        // Once at the start, then once per conversation; never more than 3 running.
        assert_eq!(seen.len(), 8);
        assert_eq!(seen[0].completed + seen[0].failed, 0);
        assert!(seen.iter().all(|p| p.running <= 3));
        assert_eq!(seen.last().unwrap().completed, 7);
        assert_eq!(seen.last().unwrap().running, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_conversation_is_counted_with_its_error_and_the_others_finish() {
        // insufficient_quota is never retried: once the provider's quota is spent, every later
        // call fails its conversation.
        let model = sim(SimConfig::default()
            .with_faults(Faults::default().with_insufficient_quota_after_tokens(1)));
        let config = FanoutConfig::default()
            .with_conversations(3)
            .with_max_messages(3)
            .with_concurrency(1);
        let scheduler = QuotaScheduler::builder()
            .retry(RetryPolicy::default().seed(1))
            .build()
            .unwrap();
        let report = run_fanout(model, scheduler, &config, |_| {}).await.unwrap();
        assert_eq!((report.completed, report.failed), (0, 3));
        assert_eq!(
            report.calls, 4,
            "one success, then one failing call per chat"
        );
        assert_eq!(report.retries, 0);
        let first = report.first_error.unwrap();
        assert!(first.starts_with("fanout-0: "), "{first}");
        assert!(first.contains("quota"), "{first}");
        assert_eq!(
            report.per_conversation[0].messages, 2,
            "task + one reply kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_nest_under_the_run() {
        let config = FanoutConfig::default()
            .with_conversations(4)
            .with_max_messages(10)
            .with_chat_budget(BudgetLimits::calls(2))
            .with_run_budget(BudgetLimits::calls(6));
        let report = run_fanout(
            sim(SimConfig::default()),
            QuotaScheduler::new(),
            &config,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            report.completed, 4,
            "a budget stop is a stop, not a failure"
        );
        assert_eq!(
            report.calls, 6,
            "the run's budget bounds all chats together"
        );
        assert!(
            report.stop_reasons.keys().all(|r| r.contains("budget")),
            "{:?}",
            report.stop_reasons
        );
    }

    #[test]
    fn configurations_that_cannot_run_are_refused() {
        let zero = FanoutConfig::default().with_conversations(0).validate();
        assert_eq!(
            zero,
            Err(FanoutConfigError::Zero {
                what: "conversations"
            })
        );
        let err = FanoutConfig::default()
            .with_max_messages(1)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("counts the task message"), "{err}");
        assert!(
            FanoutConfig::default()
                .with_concurrency(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_report_serializes_the_documented_keys() {
        let report = FanoutReport {
            model: "m".into(),
            conversations: 1,
            agents: 1,
            max_messages: 2,
            stream: false,
            wall_s: 1.5,
            completed: 1,
            failed: 0,
            calls: 1,
            attempts: 1,
            http_429: 0,
            retries: 0,
            transient_errors: 0,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.25,
            wait_p50_ms: 0.0,
            wait_p99_ms: 0.0,
            wait_max_ms: 0.0,
            learned_rpm: None,
            learned_tpm: None,
            stop_reasons: BTreeMap::new(),
            first_error: None,
            cache: None,
            per_conversation: Vec::new(),
        };
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "stream",
            "wall_s",
            "completed",
            "failed",
            "calls",
            "http_429",
            "retries",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "wait_p50_ms",
            "wait_p99_ms",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert!(json.get("per_conversation").is_none());
    }
}
