//! `turnstile-mock`: an OpenAI-compatible server that enforces RPM/TPM like OpenAI does, for
//! testing agents against rate limits without a key or a bill.
//!
//! ```text
//! turnstile-mock --port 8089 --rpm 60 --tpm 20000 --period-seconds 6 --terminate-after 8
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 cargo run --example ...
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agent_runtime::mock::MockServer;
use agent_runtime::provider::{Faults, SimConfig, Simulation};
use clap::Parser;

/// An OpenAI-compatible mock server with OpenAI's rate-limit semantics.
#[derive(Debug, Parser)]
#[command(name = "turnstile-mock", version)]
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
    /// Requests per period (continuous bucket); unlimited when absent.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per period (prompt estimate + max completion tokens); unlimited when absent.
    #[arg(long)]
    tpm: Option<u64>,
    /// Length of a rate-limit "minute", in seconds (compress time with e.g. 6).
    #[arg(long, default_value_t = 60.0)]
    period_seconds: f64,
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
    /// Rejected requests still take one request from the bucket.
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

impl Args {
    fn config(&self) -> Result<SimConfig, String> {
        let period = Duration::try_from_secs_f64(self.period_seconds)
            .map_err(|e| format!("--period-seconds {}: {e}", self.period_seconds))?;
        let per_token = Duration::try_from_secs_f64(self.ms_per_token / 1000.0)
            .map_err(|e| format!("--ms-per-token {}: {e}", self.ms_per_token))?;
        let mut config = SimConfig::default()
            .with_model(self.model.clone())
            .with_period(period)
            .with_latency(Duration::from_millis(self.latency_ms), per_token)
            .with_reply_tokens(self.reply_tokens)
            .with_default_max_tokens(self.default_max_tokens)
            .with_start_empty(self.start_empty)
            .with_charge_rejected(self.charge_rejected)
            .with_refund_unused(self.refund_unused);
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
        Ok(config.with_faults(faults))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let simulation = Simulation::new(args.config()?)?;
    let (addr, server) =
        MockServer::bind(SocketAddr::new(args.host, args.port), simulation).await?;
    println!("turnstile-mock listening: OPENAI_BASE_URL=http://{addr}/v1");
    println!("stats: http://{addr}/stats   limits: POST http://{addr}/admin/limits");
    tokio::signal::ctrl_c().await?;
    let stats = server.stats();
    server.shutdown().await?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
