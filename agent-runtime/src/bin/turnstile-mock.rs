//! `turnstile-mock`: an OpenAI-compatible server that enforces RPM/TPM like a real provider — by
//! default OpenAI's continuous buckets; with flags fixed or sliding windows, Azure's, Anthropic's
//! or a LiteLLM proxy's headers and 429s — for testing agents against rate limits without a key
//! or a bill.
//!
//! ```text
//! turnstile-mock --port 8089 --rpm 60 --tpm 20000 --period-seconds 6 --terminate-after 8
//! turnstile-mock --port 8089 --rpm 60 --litellm            # a LiteLLM proxy, rpm: 60
//! turnstile-mock --rpm 60 --limiter fixed --window-phase-seconds 30 --no-reset-headers --no-retry-after
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 cargo run --example ...
//! ```
//!
//! Every argument is checked before anything starts: a value the mock cannot honour ends the
//! process with one line on stderr saying what to pass instead, and exit code 2.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use agent_runtime::mock::MockServer;
use agent_runtime::provider::{Dialect, Faults, LimiterKind, SimConfig, Simulation, WindowAnchor};
use clap::{Parser, ValueEnum};

/// How a limit is counted (`--limiter`, `--request-limiter`, `--token-limiter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Limiter {
    /// A continuously refilling bucket (OpenAI, Anthropic).
    Bucket,
    /// Fixed windows aligned to the clock (UTC calendar minute for 60 s), or starting
    /// `--window-phase-seconds` into the first window.
    Fixed,
    /// Fixed windows that open with the first request after the previous one closed.
    FixedFirstRequest,
    /// A sliding log of the last period's admissions.
    Sliding,
}

/// Which provider's headers and 429 bodies to send (`--dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DialectArg {
    /// OpenAI: x-ratelimit-{limit,remaining,reset}-*, retry-after(-ms) on 429.
    Openai,
    /// Azure OpenAI: no reset headers, retry-after(-ms) and "Please retry after N seconds".
    Azure,
    /// Anthropic: anthropic-ratelimit-* with RFC 3339 resets, retry-after.
    Anthropic,
    /// A LiteLLM proxy: no reset, a 429 with only llm_provider-retry-after: 60.
    Litellm,
}

/// An OpenAI-compatible mock server with a real provider's rate-limit semantics.
#[derive(Debug, Parser)]
#[command(name = "turnstile-mock", version, allow_negative_numbers = true)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Model name reported in responses and `/v1/models`.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Requests per period; unlimited when absent.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per period (prompt estimate + max completion tokens); unlimited when absent.
    #[arg(long)]
    tpm: Option<u64>,
    /// Length of a rate-limit "minute", in seconds (compress time with e.g. 6).
    #[arg(long, default_value_t = 60.0)]
    period_seconds: f64,
    /// How both limits are counted.
    #[arg(long, value_enum, default_value_t = Limiter::Bucket)]
    limiter: Limiter,
    /// How the request limit is counted (overrides --limiter).
    #[arg(long, value_enum)]
    request_limiter: Option<Limiter>,
    /// How the token limit is counted (overrides --limiter).
    #[arg(long, value_enum)]
    token_limiter: Option<Limiter>,
    /// Fixed windows only: start this many seconds into the first window instead of reading the
    /// phase from the clock.
    #[arg(long)]
    window_phase_seconds: Option<f64>,
    /// The request limit's window in seconds, when not --period-seconds (Azure: 10).
    #[arg(long)]
    request_period_seconds: Option<f64>,
    /// Which provider's headers and 429 bodies to send.
    #[arg(long, value_enum, default_value_t = DialectArg::Openai)]
    dialect: DialectArg,
    /// OpenAI dialect: send no x-ratelimit-reset-* headers.
    #[arg(long)]
    no_reset_headers: bool,
    /// OpenAI dialect: send no retry-after(-ms) and no "try again in" on a 429.
    #[arg(long)]
    no_retry_after: bool,
    /// Admit only limit − 1 requests per window (LiteLLM's off-by-one).
    #[arg(long)]
    off_by_one: bool,
    /// Play a LiteLLM proxy: fixed clock-aligned windows, --off-by-one, --dialect litellm
    /// (--limiter and --window-phase-seconds still apply when given).
    #[arg(long)]
    litellm: bool,
    /// Latency before the first token, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Latency per generated token, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    ms_per_token: f64,
    /// Tokens in a normal reply.
    #[arg(long, default_value_t = 24)]
    reply_tokens: u32,
    /// Reply TERMINATE once a request carries this many messages.
    #[arg(long)]
    terminate_after: Option<usize>,
    /// Completion tokens charged when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    default_max_tokens: u32,
    /// Start with empty buckets (no first-period burst).
    #[arg(long)]
    start_empty: bool,
    /// Rejected requests still take one request from the limit.
    #[arg(long)]
    charge_rejected: bool,
    /// Refund unused completion tokens when a reply ends.
    #[arg(long)]
    refund_unused: bool,
    /// Serve at most this many requests at once; answer 503 beyond.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Answer HTTP 500 to every Nth request.
    #[arg(long)]
    fail_every: Option<u64>,
    /// Never answer every Nth request.
    #[arg(long)]
    hang_every: Option<u64>,
    /// Send invalid JSON to every Nth request.
    #[arg(long)]
    malformed_every: Option<u64>,
    /// Drop the connection halfway through every Nth reply.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Answer `insufficient_quota` once this many tokens were admitted.
    #[arg(long)]
    insufficient_quota_after_tokens: Option<u64>,
}

/// `value` seconds as a duration in `(0, max]` (or `[0, max]` with `allow_zero`), or the one
/// line that says what `--flag` accepts.
fn seconds(flag: &str, value: f64, allow_zero: bool, max: Duration) -> Result<Duration, String> {
    let range = if allow_zero { "from 0" } else { "above 0" };
    let what = format!(
        "--{flag} {value:?}: expected a number of seconds {range} up to {}",
        max.as_secs()
    );
    if !value.is_finite() || value < 0.0 || (value == 0.0 && !allow_zero) {
        return Err(what);
    }
    match Duration::try_from_secs_f64(value) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(what),
    }
}

impl Args {
    fn limiter(&self, kind: Limiter) -> Result<LimiterKind, String> {
        Ok(match kind {
            Limiter::Bucket => LimiterKind::Bucket,
            Limiter::Fixed => match self.window_phase_seconds {
                Some(phase) => LimiterKind::FixedWindow(WindowAnchor::Phase(seconds(
                    "window-phase-seconds",
                    phase,
                    true,
                    SimConfig::MAX_PERIOD,
                )?)),
                None => LimiterKind::FixedWindow(WindowAnchor::Clock),
            },
            Limiter::FixedFirstRequest => LimiterKind::FixedWindow(WindowAnchor::FirstRequest),
            Limiter::Sliding => LimiterKind::SlidingLog,
        })
    }

    fn config(&self) -> Result<SimConfig, String> {
        let period = seconds(
            "period-seconds",
            self.period_seconds,
            false,
            SimConfig::MAX_PERIOD,
        )?;
        if !self.ms_per_token.is_finite() || self.ms_per_token < 0.0 {
            return Err(format!(
                "--ms-per-token {:?}: expected a number of milliseconds from 0",
                self.ms_per_token
            ));
        }
        let per_token = seconds(
            "ms-per-token",
            self.ms_per_token / 1000.0,
            true,
            SimConfig::MAX_LATENCY,
        )
        .map_err(|_| {
            format!(
                "--ms-per-token {:?}: expected a number of milliseconds from 0 up to {}",
                self.ms_per_token,
                SimConfig::MAX_LATENCY.as_millis()
            )
        })?;
        let base = if self.litellm && self.limiter == Limiter::Bucket {
            Limiter::Fixed
        } else {
            self.limiter
        };
        let mut config = SimConfig::default()
            .with_model(self.model.clone())
            .with_period(period)
            .with_request_limiter(self.limiter(self.request_limiter.unwrap_or(base))?)
            .with_token_limiter(self.limiter(self.token_limiter.unwrap_or(base))?)
            .with_dialect(match (self.litellm, self.dialect) {
                (true, _) | (_, DialectArg::Litellm) => Dialect::LiteLlm,
                (_, DialectArg::Openai) => Dialect::OpenAi,
                (_, DialectArg::Azure) => Dialect::Azure,
                (_, DialectArg::Anthropic) => Dialect::Anthropic,
            })
            .with_reset_headers(!self.no_reset_headers)
            .with_retry_after_headers(!self.no_retry_after)
            .with_off_by_one(self.off_by_one || self.litellm)
            .with_latency(Duration::from_millis(self.latency_ms), per_token)
            .with_reply_tokens(self.reply_tokens)
            .with_default_max_tokens(self.default_max_tokens)
            .with_start_empty(self.start_empty)
            .with_charge_rejected(self.charge_rejected)
            .with_refund_unused(self.refund_unused);
        if let Some(window) = self.request_period_seconds {
            config = config.with_request_period(seconds(
                "request-period-seconds",
                window,
                false,
                SimConfig::MAX_PERIOD,
            )?);
        }
        config.rpm = self.rpm;
        config.tpm = self.tpm;
        config.terminate_after = self.terminate_after;
        config.max_concurrency = self.max_concurrency;
        let mut faults = Faults::default();
        faults.fail_every = self.fail_every;
        faults.hang_every = self.hang_every;
        faults.malformed_every = self.malformed_every;
        faults.drop_every = self.drop_every;
        faults.insufficient_quota_after_tokens = self.insufficient_quota_after_tokens;
        let config = config.with_faults(faults);
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Ends the process with `message` as the one line on stderr.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("turnstile-mock: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // Help and version go to stdout as clap writes them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // clap's own message, on one line: its first line says what was wrong.
        Err(e) => {
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            return fail(format_args!(
                "{} (see --help)",
                line.trim_start_matches("error: ")
            ));
        }
    };
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => return fail(message),
    };
    let simulation = match Simulation::new(config) {
        Ok(simulation) => simulation,
        Err(e) => return fail(e),
    };
    let (addr, server) =
        match MockServer::bind(SocketAddr::new(args.host, args.port), simulation).await {
            Ok(bound) => bound,
            Err(e) => return fail(e),
        };
    println!("turnstile-mock listening: OPENAI_BASE_URL=http://{addr}/v1");
    println!("stats: http://{addr}/stats   limits: POST http://{addr}/admin/limits");
    if let Err(e) = tokio::signal::ctrl_c().await {
        return fail(format_args!("cannot wait for Ctrl-C: {e}"));
    }
    let stats = server.stats();
    if let Err(e) = server.shutdown().await {
        return fail(e);
    }
    match serde_json::to_string_pretty(&stats) {
        Ok(json) => println!("{json}"),
        Err(e) => return fail(format_args!("cannot print the stats: {e}")),
    }
    ExitCode::SUCCESS
}
