//! Shared harness for Turnstile's integration tests (one test file per area under `tests/`):
//! a mock OpenAI server on a free port, an HTTP provider pointed at it, schedulers with fast
//! retries, and small group chats of LLM agents.
//!
//! Everything here runs over a real socket in real time, so tests keep their limits compressed
//! (a six-second "minute") and assert counts, never timings.

use std::sync::Arc;
use std::time::Duration;

use agent_core::{Budget, BudgetLimits, ChatModel, LlmAgent};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::GroupChat;
use agent_runtime::mock::MockServer;
use agent_runtime::provider::{OpenAiProvider, SimConfig};
use agent_runtime::scheduler::{Quota, RetryPolicy};

/// What a harness step can fail with (any setup error fails the test).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The model name the mock serves.
pub const MODEL: &str = "gpt-4o-mini";

/// The compressed rate-limit period of the HTTP tests.
pub const PERIOD: Duration = Duration::from_secs(6);

/// Starts a mock OpenAI server for `config` on `127.0.0.1` and a free port.
pub async fn start_mock(config: SimConfig) -> Result<MockServer, Error> {
    let (_addr, server) = MockServer::start(config.with_model(MODEL)).await?;
    Ok(server)
}

/// An OpenAI-compatible provider for `server`, exactly as a user would point one at a local
/// endpoint (no key; one HTTP attempt per call).
pub fn provider(server: &MockServer) -> Result<Arc<dyn ChatModel>, Error> {
    let provider = OpenAiProvider::builder()
        .base_url(server.base_url())
        .model(MODEL)
        .timeout(Duration::from_secs(5))
        .build()?;
    Ok(Arc::new(provider))
}

/// The mock's counters as `GET /stats` serves them (what any client of the mock would see).
pub async fn stats_over_http(server: &MockServer) -> Result<serde_json::Value, Error> {
    let url = format!("http://{}/stats", server.addr());
    agent_runtime::tls::install_crypto_provider();
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

/// The default retry policy with millisecond backoff, so retried tests stay short, and a fixed
/// jitter seed.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .seed(7)
}

/// A scheduler with `quota` on `key` (or nothing configured when `None`), every other key
/// learning its limits from headers with the tests' period, and `retry`.
pub fn scheduler(
    key: &str,
    quota: Option<Quota>,
    retry: RetryPolicy,
) -> Result<QuotaScheduler, Error> {
    let mut builder = QuotaScheduler::builder()
        .default_quota(Quota::per_period(PERIOD))
        .retry(retry);
    if let Some(quota) = quota {
        builder = builder.quota(key, quota);
    }
    Ok(builder.build()?)
}

/// A round-robin group chat of `agents` LLM agents (`agent_1`, …) on `model`, stopping after
/// `max_messages` messages (the task message included), every call through `scheduler`.
/// Agents ask for at most `max_completion_tokens` tokens per reply.
pub fn group_chat(
    model: &Arc<dyn ChatModel>,
    scheduler: &QuotaScheduler,
    agents: usize,
    max_messages: u64,
    max_completion_tokens: u32,
) -> Result<GroupChat, Error> {
    let mut chat = GroupChat::builder()
        .scheduler(scheduler.clone())
        .budget(Budget::new("test", BudgetLimits::calls(100)))
        .max_messages(max_messages);
    for k in 1..=agents {
        let name = format!("agent_{k}");
        let agent = LlmAgent::builder(name.clone(), model.clone())
            .system_message(format!("You are {name}."))
            .max_completion_tokens(max_completion_tokens)
            .build()?;
        chat = chat.participant(agent);
    }
    Ok(chat.build()?)
}

/// A private `redis-server` on a free port (`--save "" --appendonly no`: it forgets everything
/// when stopped, as a restarted cache does), stopped on drop. The shared Redis of `REDIS_URL` is
/// never touched.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one on a free port; `None` (after printing why) when no `redis-server` binary is
    /// installed, so the calling test can skip.
    pub fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let redis = Self::start_on(port);
        if redis.is_none() {
            eprintln!("skipping: no redis-server binary");
        }
        redis
    }

    /// Starts one on `port` and waits until it accepts connections; `None` when it cannot run.
    pub fn start_on(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self {
            port,
            child: Some(child),
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone) and starts a new one on the same port: a restart.
    pub fn restart(&mut self) -> Option<()> {
        self.stop();
        let restarted = Self::start_on(self.port)?;
        *self = restarted;
        Some(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a fanout run spawned as a task (at most `hang`, which only a hang exceeds) and
/// checks that all `conversations` completed; returns its report.
pub async fn completed_run(
    run: tokio::task::JoinHandle<
        Result<agent_runtime::fanout::FanoutReport, agent_runtime::fanout::FanoutConfigError>,
    >,
    conversations: usize,
    hang: Duration,
) -> Result<agent_runtime::fanout::FanoutReport, Error> {
    let report = tokio::time::timeout(hang, run)
        .await
        .map_err(|_| format!("the run did not end within {hang:?}"))???;
    if (report.completed, report.failed) != (conversations, 0) {
        return Err(format!(
            "{} of {conversations} conversations completed, {} failed; first error: {:?}",
            report.completed, report.failed, report.first_error
        )
        .into());
    }
    Ok(report)
}
