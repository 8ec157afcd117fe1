//! `turnstile`: run a declarative team over a file of tasks, under one quota, resumably.
//!
//! ```sh
//! turnstile check team.yaml
//! turnstile run team.yaml --input tasks.jsonl --output results.jsonl [--dry-run]
//!     [--redis-url redis://…] [--shard 0/4] [--concurrency 64]
//! ```
//!
//! Exit codes: 0 every task stopped normally; 1 some tasks failed (their records say why);
//! 2 the spec, the input or an argument is unusable (one line on stderr says which and why);
//! 130 interrupted (what finished is written; rerun to finish the rest). `docs/cli.md` has it all.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_runtime::cli::batch::DEFAULT_CONCURRENCY;
use agent_runtime::cli::{
    BatchControl, BatchProgress, InputTask, ResultsFile, Shard, Team, TeamSpec, estimate,
    read_tasks, run_batch,
};
use agent_runtime::scheduler::QuotaState;
use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Declarative multi-agent teams, run over many inputs under one quota.
#[derive(Debug, Parser)]
#[command(name = "turnstile", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a team spec (YAML, TOML or JSON) and says what it would run.
    Check {
        /// The team spec.
        spec: PathBuf,
    },
    /// Runs every task of a JSONL file as a chat of the team; results go to a JSONL file.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The team spec.
    spec: PathBuf,
    /// Tasks, one `{"id": …, "task": …}` a line.
    #[arg(long)]
    input: PathBuf,
    /// Results, one a line; ids already there are skipped (resume).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Validate and estimate calls, tokens, cost and the quota's minimum makespan; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep the quota in Redis, shared with every process using the same URL.
    #[arg(long)]
    redis_url: Option<String>,
    /// Run only shard i of N (by a stable hash of the id), e.g. 0/4.
    #[arg(long)]
    shard: Option<Shard>,
    /// Tasks running at once (default: the spec's run.concurrency, else 64).
    #[arg(long)]
    concurrency: Option<usize>,
}

/// Beyond this many tasks at once the process holds too much for too little: the quota, not
/// the concurrency, bounds the throughput.
const MAX_CONCURRENCY: usize = 100_000;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber_init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { spec } => check(&spec),
        Command::Run(args) => match run(args).await {
            Ok(code) => code,
            Err(message) => {
                eprintln!("turnstile: {message}");
                ExitCode::from(2)
            }
        },
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(spec: &Path) -> Result<TeamSpec, String> {
    let parsed = TeamSpec::from_path(spec).map_err(|e| e.to_string())?;
    parsed
        .validate()
        .map_err(|e| format!("{}: {e}", spec.display()))?;
    Ok(parsed)
}

fn check(spec: &Path) -> ExitCode {
    let parsed = match TeamSpec::from_path(spec).and_then(|s| s.validate().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("turnstile: {}: {e}", spec.display());
            return ExitCode::from(2);
        }
    };
    for (name, p) in &parsed.providers {
        if let Some(var) = &p.api_key_env
            && std::env::var(var).map_or(true, |v| v.trim().is_empty())
        {
            eprintln!(
                "turnstile: warning: providers.{name}.api_key_env: {var} is not set here; `run` will need it"
            );
        }
    }
    println!(
        "{}: ok — {} agent(s), {} provider(s), at most {} model call(s) per task",
        spec.display(),
        parsed.agents.len(),
        parsed.providers.len(),
        parsed.max_calls_per_task()
    );
    ExitCode::SUCCESS
}

async fn run(args: RunArgs) -> Result<ExitCode, String> {
    let spec = load(&args.spec)?;
    let concurrency = args
        .concurrency
        .or(spec.run.concurrency)
        .unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return Err(format!(
            "--concurrency must be 1 to {MAX_CONCURRENCY}, not {concurrency}"
        ));
    }
    let file = std::fs::File::open(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let tasks = read_tasks(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", args.input.display()))?;

    if args.dry_run {
        // No call is made: a key that is not set gets a stand-in so the ids can be computed,
        // and the cache stays closed (a run may hold it).
        let mut spec = spec;
        spec.cache = None;
        let team = Team::build(
            spec,
            &|var| {
                std::env::var(var)
                    .ok()
                    .or_else(|| Some("unused-in-dry-run".to_owned()))
            },
            None,
        )
        .map_err(|e| format!("{}: {e}", args.spec.display()))?;
        let pending: Vec<&str> = tasks
            .iter()
            .filter(|t| args.shard.is_none_or(|s| s.owns(t.id())))
            .filter_map(|t| match t {
                InputTask::Task { task, .. } => Some(task.as_str()),
                _ => None,
            })
            .collect();
        let est = estimate(team.spec(), &team.model_ids(), pending);
        eprintln!(
            "turnstile: dry run: {} task(s), at most {} call(s), {} prompt + {} completion tokens, ${:.4}; the quota allows it in no less than {:.1} s (set by {})",
            est.tasks,
            est.calls,
            est.prompt_tokens,
            est.completion_tokens,
            est.cost_usd,
            est.min_makespan_s,
            est.bound_by
        );
        println!(
            "{}",
            serde_json::to_string(&est).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }

    let output = args
        .output
        .ok_or("--output is required (results go there, and a rerun resumes from it)")?;
    let mut out = ResultsFile::open(&output).map_err(|e| e.to_string())?;
    if out.repaired() {
        eprintln!(
            "turnstile: {}: cut a torn last line (an interrupted write); that task runs again",
            output.display()
        );
    }
    let state: Option<Arc<dyn QuotaState>> = match &args.redis_url {
        None => None,
        Some(url) => {
            let connect = RedisQuotaState::connect(url, RedisQuotaConfig::default());
            let redis = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .map_err(|_| "Redis did not answer within 10 s; check --redis-url".to_owned())?
                .map_err(|e| format!("Redis: {e}"))?;
            eprintln!(
                "turnstile: quota shared through Redis at {}",
                redis.endpoint()
            );
            Some(Arc::new(redis))
        }
    };
    let team = Arc::new(
        Team::build(spec, &|var| std::env::var(var).ok(), state)
            .map_err(|e| format!("{}: {e}", args.spec.display()))?,
    );
    let done = out.done().clone();
    let pending: Vec<InputTask> = agent_runtime::cli::tasks::pending(&tasks, args.shard, &done)
        .cloned()
        .collect();
    let skipped = tasks.len() - pending.len();
    let est = estimate(
        team.spec(),
        &team.model_ids(),
        pending.iter().filter_map(|t| match t {
            InputTask::Task { task, .. } => Some(task.as_str()),
            _ => None,
        }),
    );
    eprintln!(
        "turnstile: {} task(s) to run ({} already done or in other shards), {} at once; the quota needs at least {:.1} s",
        pending.len(),
        skipped,
        concurrency,
        est.min_makespan_s
    );

    let control = BatchControl::default();
    watch_ctrl_c(control.clone());
    let bar = progress_bar(pending.len() as u64);
    let per_task_cap = team.spec().max_calls_per_task().max(1) as f64;
    let started = tokio::time::Instant::now();
    let mut last_line = started;
    let tty = std::io::stderr().is_terminal();
    let scheduler = team.scheduler().clone();
    let summary = run_batch(team, pending, &mut out, concurrency, &control, |p| {
        bar.set_position(p.done as u64);
        // The line reads the scheduler's snapshot: at most every 250 ms on a terminal, every 2 s
        // otherwise — never per task, which would cost O(tasks) each time on a large batch.
        let every = Duration::from_millis(if tty { 250 } else { 2_000 });
        if last_line.elapsed() < every && p.done != p.total {
            return;
        }
        last_line = tokio::time::Instant::now();
        let line = progress_line(p, &est, per_task_cap, &scheduler);
        if tty {
            bar.set_message(line);
        } else {
            eprintln!("turnstile: {}/{} {line}", p.done, p.total);
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();

    let p = summary.progress;
    eprintln!(
        "turnstile: {} done ({} failed), {} calls, {} tokens, ${:.4} in {:.1} s{}",
        p.done,
        p.failed,
        p.calls,
        p.tokens,
        p.cost_usd,
        started.elapsed().as_secs_f64(),
        if summary.not_started + summary.cancelled > 0 {
            format!(
                "; interrupted: {} not started, {} cancelled — rerun the same command to finish them",
                summary.not_started, summary.cancelled
            )
        } else {
            String::new()
        }
    );
    Ok(if summary.not_started + summary.cancelled > 0 {
        ExitCode::from(130)
    } else if p.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// First Ctrl-C: no new tasks, running ones finish. Second: cancel those too.
fn watch_ctrl_c(control: BatchControl) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "turnstile: stopping: no new tasks; running ones finish and are written (Ctrl-C again to cancel them)"
        );
        control.stop.cancel();
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("turnstile: cancelling running tasks; a rerun runs them again");
        control.abort.cancel();
    });
}

fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} tasks  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Tasks done and failed, calls, tokens, cost, the quota wait, and an ETA from the quota's lower
/// bound scaled by the calls tasks actually make (a chat that stops early needs less quota).
fn progress_line(
    p: &BatchProgress,
    est: &agent_runtime::cli::Estimate,
    per_task_cap: f64,
    scheduler: &agent_runtime::QuotaScheduler,
) -> String {
    let remaining = p.total.saturating_sub(p.done) as f64;
    let share = if p.total == 0 {
        0.0
    } else {
        remaining / p.total as f64
    };
    let observed = if p.done > 0 {
        (p.calls as f64 / p.done as f64 / per_task_cap).min(1.0)
    } else {
        1.0
    };
    let eta = est.min_makespan_s * share * observed;
    let wait_p99 = scheduler
        .snapshot()
        .keys
        .values()
        .map(|k| k.wait.p99)
        .max()
        .unwrap_or_default();
    format!(
        "failed {}  running {}  calls {}  tokens {}  ${:.4}  wait p99 {:.1?}  ETA ≥ {:.0} s",
        p.failed, p.running, p.calls, p.tokens, p.cost_usd, wait_p99, eta
    )
}
