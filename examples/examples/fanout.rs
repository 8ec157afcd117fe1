//! Fanout: N group chats sharing one quota against one endpoint. Every call of every chat goes
//! through one `QuotaScheduler`, which keeps the whole run under the endpoint's limits. Progress
//! goes to stderr; the last line on stdout is one JSON object (`wall_s`, `completed`, `failed`,
//! `calls`, `http_429`, `retries`, `prompt_tokens`, `completion_tokens`, `wait_p50_ms`,
//! `wait_p99_ms`, …). The exit code is non-zero if any conversation failed.
//!
//! ```sh
//! # In-process simulator enforcing 600 requests and 200k tokens per 6-second "minute":
//! cargo run --release --example fanout -- --conversations 200 --rpm 600 --tpm 200000 --period-seconds 6
//!
//! # Against the mock server, limits not configured here (learned from its headers):
//! cargo run --release -p agent-runtime --features mock-server --bin turnstile-mock -- --rpm 600 --tpm 200000 --period-seconds 6 &
//! cargo run --release --example fanout -- --base-url http://127.0.0.1:8089/v1 --period-seconds 6
//!
//! # A real endpoint (key from OPENAI_API_KEY; optional for local servers):
//! OPENAI_API_KEY=sk-... cargo run --example fanout -- --conversations 10 --rpm 500 --tpm 200000
//! cargo run --example fanout -- --base-url http://localhost:11434/v1 --model llama3.2 --concurrency 4
//!
//! # Twice on a response cache: the second run answers from the cache, with no provider call:
//! cargo run --release --example fanout -- --rpm 60 --period-seconds 6 --distinct-tasks --cache-dir /tmp/fanout-cache
//!
//! # The same workload with every reply streamed:
//! cargo run --release --example fanout -- --conversations 20 --rpm 60 --period-seconds 6 --stream
//!
//! # Several processes drawing from one quota kept in Redis (start them together):
//! cargo run --release --example fanout -- --base-url http://127.0.0.1:8089/v1 --rpm 600 \
//!     --period-seconds 6 --redis-url redis://127.0.0.1:6379
//! ```

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_core::budget::usd_to_nanos;
use agent_core::{ChatModel, PriceTable, Usage};
use agent_runtime::QuotaScheduler;
use agent_runtime::cache::{CacheMode, EmbeddedStore, RedisStore, ResponseCache};
use agent_runtime::console::Dollars;
use agent_runtime::fanout::{FanoutConfig, run_fanout};
use agent_runtime::prometheus::{self, SchedulerMetrics};
use agent_runtime::provider::{OpenAiProvider, SimConfig, SimulatedProvider};
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use agent_runtime::scheduler::{Deadlines, Limiter, Quota};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod support;

/// N group chats sharing one quota against an endpoint; prints a JSON report.
#[derive(Debug, Parser)]
#[command(name = "fanout")]
struct Args {
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8089/v1. Absent (and no OPENAI_API_KEY):
    /// the in-process simulator, enforcing --rpm/--tpm itself.
    #[arg(long, env = "OPENAI_BASE_URL")]
    base_url: Option<String>,
    /// Model name.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    model: String,
    /// Conversations to run.
    #[arg(long, default_value_t = 20)]
    conversations: usize,
    /// Agents per conversation (round robin).
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Messages per conversation, the task message included (as AutoGen's
    /// MaxMessageTermination counts): at most M−1 model calls per conversation.
    #[arg(long, default_value_t = 6)]
    max_messages: u64,
    /// Requests per period (0 or absent: not configured, learned from response headers).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per period (0 or absent: not configured, learned from response headers).
    #[arg(long)]
    tpm: Option<u64>,
    /// Length of the rate period in seconds (providers use 60; compress it for demos).
    #[arg(long, default_value_t = 60.0)]
    period_seconds: f64,
    /// How the provider counts --rpm/--tpm: bucket (OpenAI, Anthropic), fixed-window (a LiteLLM
    /// proxy, most gateways; boundaries on the clock), fixed-window-from-first-request or
    /// sliding-window. The simulator counts the same way.
    #[arg(long, default_value = "bucket")]
    limiter: Limiter,
    /// Conversations running at once (default: all).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Completion-token limit of each call (reserved at admission).
    #[arg(long, default_value_t = 64)]
    max_completion_tokens: u32,
    /// Include every conversation (start/finish times, calls, waits) in the JSON.
    #[arg(long)]
    per_conversation: bool,
    /// Keep the quota's buckets in Redis, shared with every process that uses the same URL and
    /// model (counters in the report stay this process's own).
    #[arg(long)]
    redis_url: Option<String>,
    /// Deadline of each provider attempt, in seconds (connect, first byte, whole reply); a
    /// timed-out attempt is retried.
    #[arg(long, default_value_t = 600.0)]
    attempt_deadline_seconds: f64,
    /// Stream every reply (each call admitted before its first byte, reconciled when it ends).
    #[arg(long)]
    stream: bool,
    /// Cache responses in this directory (an embedded redb file): a repeated run answers from it
    /// without the provider.
    #[arg(long, conflicts_with = "cache_redis")]
    cache_dir: Option<std::path::PathBuf>,
    /// Cache responses in Redis at this URL, shared by every process that names it.
    #[arg(long)]
    cache_redis: Option<String>,
    /// The cache's namespace (AutoGen's cache_seed): another namespace is a fresh run.
    #[arg(long, default_value = agent_runtime::cache::DEFAULT_NAMESPACE)]
    cache_namespace: String,
    /// What the cache may do: on, off, read-only or write-only.
    #[arg(long, default_value = "on")]
    cache_mode: CacheMode,
    /// Cached answers older than this many seconds are not used.
    #[arg(long)]
    cache_max_age_seconds: Option<u64>,
    /// End each conversation's task with its number, so no two conversations are alike (with a
    /// cache, identical conversations share their answers).
    #[arg(long)]
    distinct_tasks: bool,
    /// Include each conversation's transcript in the per-conversation JSON (implies
    /// --per-conversation).
    #[arg(long)]
    transcripts: bool,
    /// Serve the scheduler's Prometheus metrics at http://ADDR/metrics while the run lasts
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// The longest period or deadline accepted: a year (providers use a minute).
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = match support::parse("fanout") {
        Ok(args) => args,
        Err(code) => return code,
    };
    support::init_tracing();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanout: {e}");
            ExitCode::from(support::USAGE)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let period = seconds("--period-seconds", args.period_seconds)?;
    let deadline = seconds("--attempt-deadline-seconds", args.attempt_deadline_seconds)?;
    // Sizes first: nothing is built (no connection, no allocation) for a run that cannot be.
    let mut config = FanoutConfig::default()
        .with_conversations(args.conversations)
        .with_agents(args.agents)
        .with_max_messages(args.max_messages)
        .with_max_completion_tokens(Some(args.max_completion_tokens))
        .with_stream(args.stream)
        .with_distinct_tasks(args.distinct_tasks)
        .with_transcripts(args.transcripts);
    if let Some(n) = args.concurrency {
        config = config.with_concurrency(n);
    }
    config.validate()?;
    let rpm = args.rpm.filter(|&n| n > 0);
    let tpm = args.tpm.filter(|&n| n > 0);

    let api_key = std::env::var("OPENAI_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let model: Arc<dyn ChatModel> = if args.base_url.is_some() || api_key.is_some() {
        let mut builder = OpenAiProvider::builder().model(&args.model);
        if let Some(url) = &args.base_url {
            builder = builder.base_url(url);
        }
        if let Some(key) = api_key {
            builder = builder.api_key(key);
        }
        Arc::new(builder.build()?)
    } else {
        // The simulator plays the provider: it enforces the same limits and period.
        let mut sim = SimConfig::default()
            .with_model(&args.model)
            .with_period(period)
            .with_limiter(args.limiter.into());
        if let Some(n) = rpm {
            sim = sim.with_rpm(n);
        }
        if let Some(n) = tpm {
            sim = sim.with_tpm(n);
        }
        Arc::new(SimulatedProvider::new(sim)?)
    };
    let key = model.id().to_owned();

    // The client side of the quota: the configured limits, or none (learned from headers).
    let mut quota = Quota::per_period(period).limiter(args.limiter);
    if let Some(n) = rpm {
        quota = quota.requests(n);
    }
    if let Some(n) = tpm {
        quota = quota.tokens(n);
    }
    let mut scheduler = QuotaScheduler::builder()
        .quota(&key, quota)
        .deadlines(Deadlines::new(deadline));
    let mut redis = None;
    if let Some(url) = &args.redis_url {
        // Connects now: an unreachable Redis or a refused password ends the run here, in one line.
        let state = RedisQuotaState::connect(url, RedisQuotaConfig::default()).await?;
        eprintln!("fanout: quota shared through Redis at {}", state.endpoint());
        scheduler = scheduler.state(Arc::new(state.clone()));
        redis = Some(state);
    }
    if let Some(cache) = response_cache(&args)? {
        scheduler = scheduler.cache(cache);
    }
    let scheduler = scheduler.build()?;
    // Held until the run ends: dropping it stops the endpoint.
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let mut metrics = SchedulerMetrics::new(&scheduler);
            if let Some(state) = &redis {
                metrics = metrics.redis(state);
            }
            let server = prometheus::serve(addr, metrics.registry())
                .await
                .map_err(|e| format!("--metrics-addr {addr}: cannot listen there: {e}"))?;
            eprintln!("fanout: metrics at http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    eprintln!(
        "fanout: {} conversations × {} agents × {} messages on {key}; limits per {:?}: rpm {}, tpm {}",
        config.conversations,
        config.agents,
        config.max_messages,
        period,
        rpm.map_or("from headers".to_owned(), |n| n.to_string()),
        tpm.map_or("from headers".to_owned(), |n| n.to_string()),
    );

    let ticker = show_progress(&scheduler, &key, config.conversations as u64);
    let bar = ticker.bar.clone();
    let report = run_fanout(model, scheduler, &config, |p| {
        bar.set_position((p.completed + p.failed) as u64);
    })
    .await;
    ticker.task.abort();
    bar.finish_and_clear();
    let mut report = report?;

    if !args.per_conversation && !args.transcripts {
        report.per_conversation.clear();
    }
    if let Some(redis) = &redis {
        // Every switch was also logged as it happened (warn, shown by default).
        let m = redis.metrics();
        if m.mode_switches > 0 || m.restarts_detected > 0 {
            eprintln!(
                "fanout: Redis at {} failed during the run: {} failure-policy switches, {} admissions refused, {} restarts detected; now {:?}",
                redis.endpoint(),
                m.mode_switches,
                m.refused_admissions,
                m.restarts_detected,
                m.mode
            );
        }
    }
    if let Some(e) = &report.first_error {
        eprintln!(
            "fanout: {} conversation(s) failed; first: {e}",
            report.failed
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A duration flag: a number of seconds above 0 and at most a year.
fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_PERIOD)
        .ok_or_else(|| {
            format!(
                "{flag} {value} is out of range: give a number of seconds above 0 and at most {} (a year)",
                MAX_PERIOD.as_secs()
            )
        })
}

/// The response cache the arguments ask for, if any.
fn response_cache(args: &Args) -> Result<Option<ResponseCache>, Box<dyn std::error::Error>> {
    let builder = match (&args.cache_dir, &args.cache_redis) {
        (Some(dir), _) => {
            let store = EmbeddedStore::open(dir)?;
            eprintln!("fanout: responses cached in {}", store.path().display());
            ResponseCache::builder(store)
        }
        (None, Some(url)) => {
            let store = RedisStore::connect(url)?;
            eprintln!("fanout: responses cached in Redis at {}", store.endpoint());
            ResponseCache::builder(store)
        }
        (None, None) => return Ok(None),
    };
    let mut builder = builder
        .namespace(&args.cache_namespace)
        .mode(args.cache_mode);
    if let Some(secs) = args.cache_max_age_seconds {
        builder = builder.max_age(Duration::from_secs(secs));
    }
    Ok(Some(builder.build()?))
}

struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

/// A progress bar on stderr (plain lines every few seconds when stderr is not a terminal), with
/// the scheduler's live counters for `key`.
fn show_progress(scheduler: &QuotaScheduler, key: &str, total: u64) -> Progress {
    let tty = std::io::stderr().is_terminal();
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} chats  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let (scheduler, key, shown) = (scheduler.clone(), key.to_owned(), bar.clone());
    // The run's budget prices with the built-in table too; the line estimates from the same.
    let prices = PriceTable::builtin();
    let task = tokio::spawn(async move {
        let every = if tty { 250 } else { 2_000 };
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        loop {
            tick.tick().await;
            let snapshot = scheduler.snapshot();
            let Some(k) = snapshot.keys.get(&key) else {
                continue;
            };
            let line = format!(
                "calls {}/{} finished  in flight {}  queued {}  429s {}  retries {}  wait p99 {:.0?}  {}",
                k.finished(),
                k.calls,
                k.in_flight,
                k.queued,
                k.rate_limited.total(),
                k.retries,
                k.wait.p99,
                Dollars(usd_to_nanos(prices.cost_usd(
                    &key,
                    Usage::new(k.prompt_tokens, k.completion_tokens)
                ))),
            );
            if tty {
                shown.set_message(line);
            } else {
                eprintln!("{}/{} chats  {line}", shown.position(), total);
            }
        }
    });
    Progress { bar, task }
}
