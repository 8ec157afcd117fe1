//! Quota state shared by every process through Redis (feature `redis`): the [`QuotaState`]
//! backend that makes one API key's quota truly shared.
//!
//! Several processes, pods or machines running on one key each see the same quota: one Lua
//! script checks **and** reserves every dimension of a call (requests, tokens, daily caps, the
//! in-flight slot) atomically on the Redis server, using the server's clock; a second script
//! reconciles (refund or extra charge) and releases the slot. In-flight slots are leases with an
//! expiry, renewed while the call runs, so only a crashed holder's slot expires. A 429 pause is
//! stored in Redis, so one process learning "paused until T" makes all of them wait. Fairness
//! stays local: each process's scheduler orders its own waiters and only its head asks Redis.
//! When Redis fails, the configured [`RedisFailurePolicy`] decides — loudly — what admission does.
//! See `docs/redis.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use agent_runtime::scheduler::redis_state::{RedisQuotaConfig, RedisQuotaState};
//! use agent_runtime::scheduler::{Quota, QuotaScheduler};
//!
//! let redis = RedisQuotaState::connect("redis://127.0.0.1:6379", RedisQuotaConfig::default()).await?;
//! let scheduler = QuotaScheduler::builder()
//!     .quota("openai:gpt-4o", Quota::per_minute().requests(500).tokens(30_000))
//!     .state(Arc::new(redis))
//!     .build()?;
//! # let _ = scheduler; Ok(()) }
//! ```

mod config;
mod restart;
mod scripts;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::RateLimitReading;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use config::{RedisFailurePolicy, RedisQuotaConfig};
use restart::Continuity;
use scripts::{AcquireReply, BucketArg, QuotaKeys, Scripts};

use super::quota::{Cost, Dimension, Limits, Rate};
use super::state::{
    Acquire, InMemoryState, Lease, QuotaState, Settlement, StateError, remaining_within,
    reported_remaining,
};

/// Marks a lease granted by the fail-open local share. Redis lease ids are server times in µs
/// (about 2^51 today), so they never carry this bit.
const LOCAL_LEASE: u64 = 1 << 63;

/// What can go wrong setting up the Redis quota backend.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisQuotaError {
    /// The Redis URL could not be used. (The URL itself is never repeated: it may hold a password.)
    #[error(
        "the Redis URL is not usable ({reason}); expected redis://[user:password@]host[:port][/db], rediss://… for TLS, or redis+unix:///path"
    )]
    InvalidUrl {
        /// What the `redis` crate objected to.
        reason: String,
    },
    /// [`RedisQuotaState::from_env`] found no `REDIS_URL`.
    #[error("REDIS_URL is not set; set it (e.g. redis://127.0.0.1:6379) or pass a URL in code")]
    MissingUrl,
    /// A setting is out of range.
    #[error("invalid Redis quota configuration: {reason}")]
    InvalidConfig {
        /// Which setting and why.
        reason: String,
    },
    /// Redis did not answer at connect time (down, wrong address, wrong password) and the
    /// failure policy is fail-closed, so no call could be admitted.
    #[error(
        "cannot use Redis at {endpoint}: {message}; the shared quota fails closed, so no call would be admitted: start Redis, check the URL and password, or choose RedisFailurePolicy::FailOpen"
    )]
    Unreachable {
        /// Host and port (no credentials).
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// A Redis command failed or timed out.
    #[error("Redis at {endpoint} failed: {message}")]
    Command {
        /// Host and port (no credentials).
        endpoint: String,
        /// What happened.
        message: String,
    },
}

/// Whether admission currently uses the shared quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RedisMode {
    /// Redis answers; every admission is decided by the shared quota.
    #[default]
    Shared,
    /// Redis fails and the policy is fail-closed: admissions are refused until it answers.
    Unavailable,
    /// Redis fails and the policy is fail-open: admissions use this process's local share.
    LocalShare,
}

/// Counters of the Redis backend (the scheduler's `KeyStats::backend_errors` counts the errors it
/// was handed; these count what the backend did about them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisQuotaMetrics {
    /// The current mode.
    pub mode: RedisMode,
    /// Script invocations sent (each one `EVALSHA` round trip once the script is cached).
    pub commands: u64,
    /// Commands that failed or timed out.
    pub redis_errors: u64,
    /// Switches between modes (each one logged with `tracing::warn!`).
    pub mode_switches: u64,
    /// Admissions granted by the local share while Redis was failing (fail-open).
    pub local_admissions: u64,
    /// Admissions refused because Redis failed (fail-closed).
    pub refused_admissions: u64,
    /// Leases renewed because their call outlived a third of the lease TTL.
    pub lease_renewals: u64,
    /// Restarts of the Redis server noticed (its run id changed; each one logged with
    /// `tracing::warn!`). See `docs/redis.md`, "Restarts".
    pub restarts_detected: u64,
}

/// A quota's state as Redis holds it right now (for dashboards and tests).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisQuotaSnapshot {
    /// The Redis server's clock, microseconds since the Unix epoch.
    pub server_time_us: u64,
    /// Live (unexpired) in-flight leases across all processes.
    pub in_flight: u64,
    /// How long the quota stays paused (zero when not paused).
    pub paused_for: Duration,
    /// Each bucket of the limits asked about, with its balance after refill (negative: in debt).
    pub balances: Vec<(Dimension, f64)>,
}

/// Quota state in Redis, shared by every process that uses the same server, key prefix and quota
/// key. Cheap to clone; clones share the connection and the metrics.
///
/// A granted [`Lease`]'s id is the grant's time on the Redis server in microseconds since the
/// epoch (comparable across processes; unique per quota key).
#[derive(Clone)]
pub struct RedisQuotaState {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    scripts: Scripts,
    config: RedisQuotaConfig,
    /// `host:port` for messages; never the URL, which may carry a password.
    endpoint: String,
    health: Health,
    /// The fail-open local share: the scheduler's own in-memory state, fed scaled limits.
    local: InMemoryState,
    /// Renewal tasks of leases held by this process, by (quota key, lease id).
    renewers: Mutex<HashMap<(String, u64), AbortHandle>>,
    /// What tells a restarted or flushed Redis from a quiet one.
    continuity: Continuity,
}

impl fmt::Debug for RedisQuotaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotaState")
            .field("endpoint", &self.inner.endpoint)
            .field("config", &self.inner.config)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl RedisQuotaState {
    /// Connects to the Redis at `url`: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` for TLS (certificates checked against the system's roots), or
    /// `redis+unix:///path`.
    ///
    /// Connects at once and asks the server for its run id (within the command timeout): with
    /// [`RedisFailurePolicy::FailClosed`] an unreachable server or refused credentials is a
    /// [`RedisQuotaError::Unreachable`] here, not a silent wait at the first call; with
    /// `FailOpen` the state starts on the local share (logged) and joins the shared quota when
    /// Redis answers. After that the connection is re-made after failures. It also fails on an
    /// unusable URL or configuration.
    pub async fn connect(url: &str, config: RedisQuotaConfig) -> Result<Self, RedisQuotaError> {
        let state = Self::connect_lazy(url, config)?;
        let inner = &state.inner;
        let mut conn = inner.conn.clone();
        let ping = tokio::time::timeout(
            inner.config.command_timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let error = match ping {
            Ok(Ok(_)) => {
                state.read_run_id().await;
                return Ok(state);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within the command timeout ({:?})",
                inner.config.command_timeout
            ),
        };
        match inner.config.failure_policy {
            RedisFailurePolicy::FailClosed => Err(RedisQuotaError::Unreachable {
                endpoint: inner.endpoint.clone(),
                message: error,
            }),
            // Starts on the local share; the switch is logged and counted like any other.
            RedisFailurePolicy::FailOpen { .. } => {
                inner.health.failed(&inner.endpoint, &error, &inner.config);
                Ok(state)
            }
        }
    }

    /// Like [`connect`](Self::connect), but connects at the first command instead of now: for a
    /// process that may start before its Redis does. Admissions while Redis is unreachable follow
    /// the failure policy (a fail-closed state keeps calls waiting, up to the scheduler's
    /// `max_admission_wait`). Fails only on an unusable URL or configuration.
    pub fn connect_lazy(url: &str, config: RedisQuotaConfig) -> Result<Self, RedisQuotaError> {
        config
            .validate()
            .map_err(|reason| RedisQuotaError::InvalidConfig { reason })?;
        let client = Client::open(url).map_err(|e| RedisQuotaError::InvalidUrl {
            reason: e.to_string(),
        })?;
        let addr = client.get_connection_info().addr();
        let endpoint = addr.to_string();
        if matches!(addr, redis::ConnectionAddr::TcpTls { .. }) {
            install_tls_provider();
        }
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // The failure policy decides how long to keep trying; the manager only reconnects
            // once per failed command.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.command_timeout);
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| {
                RedisQuotaError::InvalidUrl {
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                scripts: Scripts::new(),
                config,
                endpoint,
                health: Health::default(),
                local: InMemoryState::new(),
                renewers: Mutex::default(),
                continuity: Continuity::default(),
            }),
        })
    }

    /// Reads the server's run id: one other than the one read before is a restart. Best
    /// effort: a managed server that hides `INFO` only loses this way of noticing a restart (the
    /// empty start after recent activity does not need it).
    async fn read_run_id(&self) {
        let mut conn = self.inner.conn.clone();
        let info = tokio::time::timeout(
            self.inner.config.command_timeout,
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn),
        )
        .await;
        if let Ok(Ok(info)) = info
            && let Some(run_id) = restart::parse_run_id(&info)
            && self.inner.continuity.run_id_changed(run_id)
        {
            self.inner
                .health
                .restarts_detected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %self.inner.endpoint,
                "Redis restarted (its run id changed) and lost the quota state it held; quota keys used within their period start again with empty buckets, so the restart cannot overshoot the provider's limit"
            );
        }
    }

    /// Connects to the URL in the `REDIS_URL` environment variable.
    pub async fn from_env(config: RedisQuotaConfig) -> Result<Self, RedisQuotaError> {
        let url = std::env::var("REDIS_URL").map_err(|_| RedisQuotaError::MissingUrl)?;
        Self::connect(&url, config).await
    }

    /// The configuration.
    pub fn config(&self) -> &RedisQuotaConfig {
        &self.inner.config
    }

    /// `host:port` of the Redis server (no credentials).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The current mode.
    pub fn mode(&self) -> RedisMode {
        self.inner.health.mode()
    }

    /// The backend's counters.
    pub fn metrics(&self) -> RedisQuotaMetrics {
        self.inner.health.metrics()
    }

    /// Reads a quota's balances (for the buckets `limits` sets), live leases and pause without
    /// changing them.
    pub async fn snapshot(
        &self,
        key: &str,
        limits: &Limits,
    ) -> Result<RedisQuotaSnapshot, RedisQuotaError> {
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        let reply = self
            .guarded(self.inner.scripts.inspect(&mut conn, &keys, limits))
            .await
            .map_err(|message| RedisQuotaError::Command {
                endpoint: self.inner.endpoint.clone(),
                message,
            })?;
        Ok(RedisQuotaSnapshot {
            server_time_us: reply.server_us,
            in_flight: reply.in_flight,
            paused_for: reply.paused_for,
            balances: reply.levels,
        })
    }

    fn keys(&self, key: &str) -> QuotaKeys {
        QuotaKeys::new(&self.inner.config.key_prefix, key)
    }

    /// `Some(n)` while admission should use the local share without asking Redis (fail-open and
    /// the next probe not yet due).
    fn local_share_now(&self) -> Option<u32> {
        match self.inner.config.failure_policy {
            RedisFailurePolicy::FailOpen { expected_processes } => self
                .inner
                .health
                .skip_redis(Instant::now())
                .then_some(expected_processes),
            RedisFailurePolicy::FailClosed => None,
        }
    }

    fn local_share(&self) -> Option<u32> {
        match self.inner.config.failure_policy {
            RedisFailurePolicy::FailOpen { expected_processes } => Some(expected_processes),
            RedisFailurePolicy::FailClosed => None,
        }
    }

    fn unavailable(&self, error: &str) -> StateError {
        StateError::Unavailable {
            message: format!(
                "Redis at {} failed ({error}); the shared quota fails closed as configured: restore Redis, or choose RedisFailurePolicy::FailOpen",
                self.inner.endpoint
            ),
        }
    }

    async fn acquire_local(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
        processes: u32,
    ) -> Result<Acquire, StateError> {
        let share = local_share(limits, processes);
        // A call larger than this process's share takes the whole share rather than never
        // fitting: its cost is clamped to the smallest bucket it draws on.
        let cost = clamp_cost(&share, cost);
        let answer = self
            .inner
            .local
            .acquire(key, &share, cost, lease_ttl)
            .await?;
        Ok(match answer {
            Acquire::Granted(lease) => {
                self.inner
                    .health
                    .local_admissions
                    .fetch_add(1, Ordering::Relaxed);
                Acquire::Granted(Lease {
                    id: lease.id | LOCAL_LEASE,
                    cost: lease.cost,
                })
            }
            other => other,
        })
    }

    /// Keeps a lease alive while its call runs: renews it every third of its TTL, so only a holder
    /// that stopped running (crashed, hung, partitioned) loses it.
    fn spawn_renewer(&self, key: &str, lease_id: u64, ttl: Duration) {
        let state = self.clone();
        let keys = self.keys(key);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let mut conn = state.inner.conn.clone();
                let renewed = state
                    .guarded(state.inner.scripts.renew(&mut conn, &keys, lease_id, ttl))
                    .await;
                match renewed {
                    Ok(true) => {
                        state
                            .inner
                            .health
                            .lease_renewals
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // Redis is failing: the next renewal may get through before the expiry.
                    Err(_) => {}
                    Ok(false) => {
                        tracing::warn!(
                            quota = %keys.buckets,
                            lease = lease_id,
                            "in-flight lease expired before it could be renewed; another call may take its slot"
                        );
                        return;
                    }
                }
            }
        });
        self.renewers()
            .insert((key.to_owned(), lease_id), task.abort_handle());
    }

    fn renewers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), AbortHandle>> {
        // The map only holds abort handles; a panic elsewhere cannot leave it inconsistent.
        self.inner
            .renewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one Redis operation under the command timeout and records the outcome; the error is
    /// returned as text (it is only ever logged or shown). When Redis answers after failing, it
    /// may have restarted meanwhile: its run id is checked before returning.
    async fn guarded<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
        let (result, recovered) = self.command(op).await;
        if recovered {
            // Boxed: the rare path, kept out of every command's future.
            Box::pin(self.read_run_id()).await;
        }
        result
    }

    /// One command under the timeout, counted and fed to the mode tracking; also says whether
    /// its success ended a failure.
    async fn command<T>(
        &self,
        op: impl Future<Output = RedisResult<T>>,
    ) -> (Result<T, String>, bool) {
        let health = &self.inner.health;
        health.commands.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.config.command_timeout;
        // RedisError's Display never includes the URL or the password.
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within the command timeout ({timeout:?})"
            )),
        };
        let recovered = match &result {
            Ok(_) => health.succeeded(&self.inner.endpoint),
            Err(error) => {
                health.failed(&self.inner.endpoint, error, &self.inner.config);
                false
            }
        };
        (result, recovered)
    }
}

#[async_trait]
impl QuotaState for RedisQuotaState {
    async fn acquire(
        &self,
        key: &str,
        limits: &Limits,
        cost: Cost,
        lease_ttl: Duration,
    ) -> Result<Acquire, StateError> {
        if let Some(processes) = self.local_share_now() {
            return self
                .acquire_local(key, limits, cost, lease_ttl, processes)
                .await;
        }
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        let now = Instant::now();
        let start = self.inner.continuity.start(key, limits, now);
        let reply = self
            .guarded(
                self.inner
                    .scripts
                    .acquire(&mut conn, &keys, limits, start, cost, lease_ttl),
            )
            .await;
        if reply.is_ok() {
            self.inner.continuity.seen(key, now);
        }
        match reply {
            Ok(AcquireReply::Granted { lease_id }) => {
                self.spawn_renewer(key, lease_id, lease_ttl);
                Ok(Acquire::Granted(Lease { id: lease_id, cost }))
            }
            Ok(AcquireReply::Wait { dimension, wait }) => Ok(Acquire::Wait {
                // A lease's expiry only bounds when its slot frees; holders usually settle sooner
                // and nobody announces it, so the scheduler polls.
                retry_after: (dimension != Dimension::InFlight).then_some(wait),
                dimension,
            }),
            // The scheduler refuses such calls before asking; should limits have changed in
            // between, the call waits and the scheduler gives up on it after max_admission_wait.
            Ok(AcquireReply::Never { dimension, .. }) => Ok(Acquire::Wait {
                retry_after: None,
                dimension,
            }),
            Err(error) => match self.local_share() {
                Some(processes) => {
                    self.acquire_local(key, limits, cost, lease_ttl, processes)
                        .await
                }
                None => {
                    self.inner
                        .health
                        .refused_admissions
                        .fetch_add(1, Ordering::Relaxed);
                    Err(self.unavailable(&error))
                }
            },
        }
    }

    async fn settle(
        &self,
        key: &str,
        limits: &Limits,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<(), StateError> {
        if lease.id & LOCAL_LEASE != 0 {
            let processes = self.local_share().unwrap_or(1);
            let local = Lease {
                id: lease.id & !LOCAL_LEASE,
                cost: lease.cost,
            };
            return self
                .inner
                .local
                .settle(key, &local_share(limits, processes), local, settlement)
                .await;
        }
        if let Some(renewer) = self.renewers().remove(&(key.to_owned(), lease.id)) {
            renewer.abort();
        }
        let deltas: Vec<(BucketArg, i64)> = BucketArg::of(limits)
            .filter(BucketArg::is_tokens)
            .filter_map(|b| token_delta(lease.cost.tokens, settlement).map(|d| (b, d)))
            .collect();
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        let start = self.inner.continuity.start(key, limits, Instant::now());
        match self
            .guarded(
                self.inner
                    .scripts
                    .settle(&mut conn, &keys, lease.id, start, &deltas),
            )
            .await
        {
            Ok(_) => Ok(()),
            // The slot returns when the lease expires; the token adjustment is lost (a lost
            // refund only makes admission more careful).
            Err(error) => Err(self.unavailable(&error)),
        }
    }

    async fn pause_until(&self, key: &str, retry_after: Duration) -> Result<(), StateError> {
        // The local share must honour the pause too if it ever takes over.
        self.inner.local.pause_until(key, retry_after).await?;
        if self.local_share_now().is_some() {
            return Ok(());
        }
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.scripts.pause(&mut conn, &keys, retry_after))
            .await
            .map(|_| ())
            .map_err(|error| self.unavailable(&error))
    }

    async fn observe(
        &self,
        key: &str,
        limits: &Limits,
        reading: &RateLimitReading,
    ) -> Result<(), StateError> {
        if let Some(processes) = self.local_share_now() {
            // The provider's remaining is the whole key's; this process may count on its share.
            let share = RateLimitReading {
                remaining_requests: reading.remaining_requests.map(|r| r / u64::from(processes)),
                remaining_tokens: reading.remaining_tokens.map(|r| r / u64::from(processes)),
                ..reading.clone()
            };
            let share_limits = local_share(limits, processes);
            return self.inner.local.observe(key, &share_limits, &share).await;
        }
        let [requests, tokens] = reported_remaining(reading);
        let remaining: Vec<(BucketArg, u64)> = BucketArg::of(limits)
            .filter_map(|b| {
                let report = match b.dimension {
                    Dimension::Requests => requests,
                    Dimension::Tokens => tokens,
                    _ => None,
                };
                report.map(|report| (b, remaining_within(report, b.rate)))
            })
            .collect();
        if remaining.is_empty() {
            return Ok(());
        }
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        let start = self.inner.continuity.start(key, limits, Instant::now());
        self.guarded(
            self.inner
                .scripts
                .observe(&mut conn, &keys, start, &remaining),
        )
        .await
        .map_err(|error| self.unavailable(&error))
    }

    async fn lag(&self, key: &str, limits: &Limits, by: Duration) -> Result<(), StateError> {
        if let Some(processes) = self.local_share_now() {
            let share_limits = local_share(limits, processes);
            return self.inner.local.lag(key, &share_limits, by).await;
        }
        if by.is_zero() {
            return Ok(());
        }
        let keys = self.keys(key);
        let mut conn = self.inner.conn.clone();
        let start = self.inner.continuity.start(key, limits, Instant::now());
        self.guarded(self.inner.scripts.lag(&mut conn, &keys, limits, start, by))
            .await
            .map_err(|error| self.unavailable(&error))
    }
}

/// How a settled call moves the token buckets: an extra charge for usage above the reservation,
/// a refund of the unused part only when the provider refunds, otherwise nothing.
fn token_delta(reserved: u64, settlement: Settlement) -> Option<i64> {
    let actual = settlement.actual_tokens;
    let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    if actual > reserved {
        Some(-to_i64(actual - reserved))
    } else if settlement.refund_unused && actual < reserved {
        Some(to_i64(reserved - actual))
    } else {
        None
    }
}

/// This process's conservative share of `limits`: every limit and the in-flight cap divided by
/// the expected number of processes (rounded down, at least 1).
fn local_share(limits: &Limits, processes: u32) -> Limits {
    let n = u64::from(processes.max(1));
    let share = |rate: Option<Rate>| {
        rate.map(|r| Rate {
            limit: (r.limit / n).max(1),
            ..r
        })
    };
    Limits {
        requests: share(limits.requests),
        tokens: share(limits.tokens),
        requests_per_day: share(limits.requests_per_day),
        tokens_per_day: share(limits.tokens_per_day),
        max_in_flight: limits.max_in_flight.map(|m| (m / processes.max(1)).max(1)),
        ..*limits
    }
}

fn clamp_cost(limits: &Limits, cost: Cost) -> Cost {
    let cap = |rates: [Option<Rate>; 2], amount: u64| {
        rates
            .into_iter()
            .flatten()
            .fold(amount, |a, r| a.min(r.limit))
    };
    Cost {
        requests: cap([limits.requests, limits.requests_per_day], cost.requests),
        tokens: cap([limits.tokens, limits.tokens_per_day], cost.tokens),
    }
}

/// `rediss://` needs a rustls crypto provider (ring unless the application chose one).
fn install_tls_provider() {
    crate::tls::install_crypto_provider();
}

/// Mode tracking and counters. The mutex is never held across an await.
#[derive(Default)]
struct Health {
    state: Mutex<HealthState>,
    commands: AtomicU64,
    redis_errors: AtomicU64,
    mode_switches: AtomicU64,
    local_admissions: AtomicU64,
    refused_admissions: AtomicU64,
    lease_renewals: AtomicU64,
    restarts_detected: AtomicU64,
}

#[derive(Default)]
struct HealthState {
    mode: RedisMode,
    /// While in the local share: when to ask Redis again.
    next_probe: Option<Instant>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Plain assignments only; a panic elsewhere cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mode(&self) -> RedisMode {
        self.lock().mode
    }

    /// True while the local share answers without asking Redis.
    fn skip_redis(&self, now: Instant) -> bool {
        let state = self.lock();
        state.mode == RedisMode::LocalShare && state.next_probe.is_some_and(|p| now < p)
    }

    fn metrics(&self) -> RedisQuotaMetrics {
        RedisQuotaMetrics {
            mode: self.mode(),
            commands: self.commands.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            mode_switches: self.mode_switches.load(Ordering::Relaxed),
            local_admissions: self.local_admissions.load(Ordering::Relaxed),
            refused_admissions: self.refused_admissions.load(Ordering::Relaxed),
            lease_renewals: self.lease_renewals.load(Ordering::Relaxed),
            restarts_detected: self.restarts_detected.load(Ordering::Relaxed),
        }
    }

    /// Redis answered; true when this ends a failure (the mode switched back to shared).
    fn succeeded(&self, endpoint: &str) -> bool {
        let from = {
            let mut state = self.lock();
            state.next_probe = None;
            std::mem::replace(&mut state.mode, RedisMode::Shared)
        };
        if from != RedisMode::Shared {
            self.mode_switches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %endpoint,
                ?from,
                "Redis answers again; admission is back on the shared quota"
            );
        }
        from != RedisMode::Shared
    }

    fn failed(&self, endpoint: &str, error: &str, config: &RedisQuotaConfig) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        let to = match config.failure_policy {
            RedisFailurePolicy::FailClosed => RedisMode::Unavailable,
            RedisFailurePolicy::FailOpen { .. } => RedisMode::LocalShare,
        };
        let from = {
            let mut state = self.lock();
            if to == RedisMode::LocalShare {
                state.next_probe = Some(crate::scheduler::state::instant_after(
                    Instant::now(),
                    config.probe_interval,
                ));
            }
            std::mem::replace(&mut state.mode, to)
        };
        if from == to {
            tracing::debug!(%endpoint, %error, "Redis quota backend still failing");
            return;
        }
        self.mode_switches.fetch_add(1, Ordering::Relaxed);
        match config.failure_policy {
            RedisFailurePolicy::FailClosed => tracing::warn!(
                %endpoint,
                %error,
                "Redis quota backend failing; admission fails closed: calls wait for Redis and fail after the scheduler's max_admission_wait"
            ),
            RedisFailurePolicy::FailOpen { expected_processes } => tracing::warn!(
                %endpoint,
                %error,
                expected_processes,
                probe_interval = ?config.probe_interval,
                "Redis quota backend failing; admission fails open to this process's local share (every limit / expected_processes)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlement_charges_extra_and_refunds_only_when_asked() {
        let s = |actual_tokens, refund_unused| Settlement {
            actual_tokens,
            refund_unused,
        };
        assert_eq!(token_delta(100, s(150, false)), Some(-50));
        assert_eq!(token_delta(100, s(150, true)), Some(-50));
        assert_eq!(token_delta(100, s(40, false)), None);
        assert_eq!(token_delta(100, s(40, true)), Some(60));
        assert_eq!(token_delta(100, s(100, true)), None);
    }

    #[test]
    fn the_local_share_divides_every_limit_and_never_reaches_zero() {
        let limits = Limits {
            requests: Some(Rate::new(10, Duration::from_secs(60))),
            tokens: Some(Rate::new(1_000, Duration::from_secs(60))),
            requests_per_day: Some(Rate::new(3, Duration::from_secs(86_400))),
            tokens_per_day: None,
            max_in_flight: Some(5),
            ..Limits::UNLIMITED
        };
        let share = local_share(&limits, 4);
        assert_eq!(share.requests.map(|r| r.limit), Some(2));
        assert_eq!(share.tokens.map(|r| r.limit), Some(250));
        assert_eq!(share.requests_per_day.map(|r| r.limit), Some(1));
        assert_eq!(share.tokens_per_day, None);
        assert_eq!(share.max_in_flight, Some(1));
        assert_eq!(
            share.tokens.map(|r| r.period),
            Some(Duration::from_secs(60))
        );
        // A call bigger than the share takes the whole share instead of waiting forever.
        let cost = clamp_cost(
            &share,
            Cost {
                requests: 1,
                tokens: 900,
            },
        );
        assert_eq!(
            cost,
            Cost {
                requests: 1,
                tokens: 250
            }
        );
    }
}
