//! Quota state shared by every process through Redis (feature `redis`).
//!
//! Several processes, pods or machines running on one API key each see the same quota: one Lua
//! script checks **and** reserves every dimension of a call (requests, tokens, daily caps, the
//! in-flight slot) atomically on the Redis server, using the server's clock; a second script
//! reconciles (refund or extra charge) and releases the slot. In-flight slots are leases with an
//! expiry, so a crashed holder's slot comes back. A 429 pause is stored in Redis, so one process
//! learning "paused until T" makes all of them wait. When Redis fails, the configured
//! [`FailurePolicy`] decides — loudly — what admission does. See `docs/redis.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), agent_runtime::scheduler::redis_state::RedisQuotaError> {
//! use std::time::Duration;
//! use agent_runtime::scheduler::redis_state::{
//!     Admission, BucketSpec, RedisQuotaConfig, RedisQuotaState,
//! };
//!
//! let state = RedisQuotaState::connect("redis://127.0.0.1:6379", RedisQuotaConfig::default()).await?;
//! let rpm = BucketSpec::new("requests", 500, Duration::from_secs(60));
//! let tpm = BucketSpec::new("tokens", 30_000, Duration::from_secs(60));
//! match state.acquire("openai:gpt-4o", &[(rpm, 1), (tpm, 1_200)], Some(8)).await? {
//!     Admission::Granted(lease) => {
//!         // … call the provider, which used 700 tokens: refund the other 500.
//!         state.settle(lease, &[(tpm, 500)]).await;
//!     }
//!     Admission::Wait { retry_after, .. } => tokio::time::sleep(retry_after).await,
//!     Admission::Never { dimension, capacity } => eprintln!("{dimension} can never fit {capacity}"),
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

mod config;
mod scripts;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use config::{FailurePolicy, RedisQuotaConfig};
pub use scripts::BucketSpec;
use scripts::{AcquireReply, QuotaKeys, Scripts};

/// What can go wrong with the Redis quota backend.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisQuotaError {
    /// The Redis URL could not be used. (The URL itself is never repeated: it may hold a password.)
    #[error(
        "the Redis URL is not usable ({reason}); expected redis://[user:password@]host[:port][/db] or rediss://… for TLS"
    )]
    InvalidUrl {
        /// What the `redis` crate objected to.
        reason: String,
    },
    /// `REDIS_URL` was read but is not set.
    #[error("REDIS_URL is not set; set it (e.g. redis://127.0.0.1:6379) or pass a URL in code")]
    MissingUrl,
    /// A setting is out of range.
    #[error("invalid Redis quota configuration: {reason}")]
    InvalidConfig {
        /// Which setting and why.
        reason: String,
    },
    /// Redis did not answer for `waited` and the policy is [`FailurePolicy::FailClosed`]: the call
    /// is not admitted rather than risk exceeding the shared quota.
    #[error(
        "Redis at {endpoint} did not answer for {waited:?} (last error: {last_error}); admission fails closed as configured. Start or reach Redis, or choose FailurePolicy::FailOpen to continue on a local share"
    )]
    Unavailable {
        /// Host and port (no credentials).
        endpoint: String,
        /// How long admission waited.
        waited: Duration,
        /// The last Redis error.
        last_error: String,
    },
    /// One Redis command failed (operations outside admission report it and do not retry).
    #[error("Redis command to {endpoint} failed: {message}")]
    Command {
        /// Host and port (no credentials).
        endpoint: String,
        /// The Redis error.
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
    /// Redis fails and the policy is fail-closed: admissions wait for it, then error.
    Unavailable,
    /// Redis fails and the policy is fail-open: admissions use this process's local share.
    LocalShare,
}

/// Counters of the Redis backend, for dashboards and the scheduler's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisQuotaMetrics {
    /// The current mode.
    pub mode: RedisMode,
    /// Script invocations sent (each one `EVALSHA` round trip in the steady state).
    pub commands: u64,
    /// Commands that failed or timed out.
    pub redis_errors: u64,
    /// Switches between modes (each one logged with `tracing::warn!`).
    pub mode_switches: u64,
    /// Admissions decided by the local share while Redis was failing (fail-open).
    pub local_admissions: u64,
    /// Admissions refused with [`RedisQuotaError::Unavailable`] (fail-closed).
    pub unavailable_errors: u64,
}

/// The shared quota's answer to one admission request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Admission {
    /// Every dimension was reserved; settle the lease when the call ends.
    Granted(RedisLease),
    /// Not now: `dimension` (`"paused"`, `"in_flight"` or a bucket name) needs `retry_after`.
    /// Nothing was reserved.
    Wait {
        /// The dimension with the longest wait.
        dimension: String,
        /// When to ask again.
        retry_after: Duration,
    },
    /// The cost exceeds the bucket's capacity: no wait will ever admit it.
    Never {
        /// The bucket that is too small.
        dimension: String,
        /// Its capacity.
        capacity: u64,
    },
}

/// A granted call's hold on the shared quota: one in-flight lease, renewed while held.
///
/// Settle it with [`RedisQuotaState::settle`]. Dropping it unsettled (a cancelled call) releases
/// the slot in the background without touching the buckets; a crashed process's lease expires
/// after [`RedisQuotaConfig::lease_ttl`].
pub struct RedisLease {
    state: RedisQuotaState,
    keys: Arc<QuotaKeys>,
    id: String,
    granted_at_us: u64,
    renewer: Option<AbortHandle>,
    settled: bool,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("id", &self.id)
            .field("granted_at_us", &self.granted_at_us)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    /// The lease id as stored in Redis.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the shared quota admitted the call, in microseconds since the Unix epoch on the
    /// **Redis server's** clock (comparable across processes and machines).
    pub fn granted_at_us(&self) -> u64 {
        self.granted_at_us
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if self.settled {
            return;
        }
        // A cancelled call must not hold its slot until the lease expires. Without a runtime
        // (process shutdown) the lease simply expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let state = self.state.clone();
            let keys = Arc::clone(&self.keys);
            let id = std::mem::take(&mut self.id);
            handle.spawn(async move {
                let _ = state.release(&keys, &id, &[]).await;
            });
        }
    }
}

/// A quota's state as Redis holds it right now (for metrics and tests).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisQuotaSnapshot {
    /// The Redis server's clock, microseconds since the Unix epoch.
    pub server_time_us: u64,
    /// Live (unexpired) in-flight leases across all processes.
    pub in_flight: u64,
    /// How long the quota stays paused (zero when not paused).
    pub paused_for: Duration,
    /// Each requested bucket's level after refill, in the order asked.
    pub levels: Vec<(&'static str, f64)>,
}

/// Quota state in Redis, shared by every process that uses the same URL, prefix and quota key.
/// Cheap to clone; clones share the connection and the metrics.
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
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`, `rediss://…`
    /// for TLS, `redis+unix:///path`).
    ///
    /// The connection is made lazily and re-made after failures, so this succeeds while Redis is
    /// still down (admissions then follow the failure policy); it fails only on an unusable URL
    /// or configuration.
    pub async fn connect(url: &str, config: RedisQuotaConfig) -> Result<Self, RedisQuotaError> {
        config
            .validate()
            .map_err(|reason| RedisQuotaError::InvalidConfig { reason })?;
        let client = Client::open(url).map_err(|e| RedisQuotaError::InvalidUrl {
            reason: e.to_string(),
        })?;
        let endpoint = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // Our own failure policy decides how long to keep trying; the manager only needs to
            // try once per failed command.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.command_timeout);
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| {
                RedisQuotaError::InvalidUrl {
                    reason: e.to_string(),
                }
            })?;
        let state = Self {
            inner: Arc::new(Inner {
                conn,
                scripts: Scripts::new(),
                config,
                endpoint,
                health: Health::default(),
            }),
        };
        tracing::debug!(endpoint = %state.inner.endpoint, "Redis quota backend configured");
        Ok(state)
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

    /// Asks the shared quota to admit one call costing `costs` (one amount per bucket) and one
    /// in-flight slot out of `max_in_flight` (`None`: no concurrency limit, but the lease is still
    /// recorded). One round trip; either every dimension is reserved or none is.
    ///
    /// While Redis fails, [`FailurePolicy::FailClosed`] retries for up to `max_wait` and then
    /// returns [`RedisQuotaError::Unavailable`].
    pub async fn acquire(
        &self,
        quota: &str,
        costs: &[(BucketSpec, u64)],
        max_in_flight: Option<u32>,
    ) -> Result<Admission, RedisQuotaError> {
        for (spec, _) in costs {
            validate_spec(spec)?;
        }
        let keys = Arc::new(self.keys(quota));
        let lease_id = format!("{:032x}", rand::random::<u128>());
        let config = &self.inner.config;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut conn = self.inner.conn.clone();
            let attempt = self
                .guarded(self.inner.scripts.acquire(
                    &mut conn,
                    &keys,
                    &lease_id,
                    config.lease_ttl,
                    max_in_flight,
                    costs,
                ))
                .await;
            let error = match attempt {
                Ok(reply) => return Ok(self.admission(reply, keys, lease_id)),
                Err(e) => e,
            };
            let waited = started.elapsed();
            let max_wait = match config.failure_policy {
                FailurePolicy::FailClosed { max_wait } => max_wait,
                // The local share is wired in by the scheduler's state trait; until then a
                // fail-open backend reports the outage instead of guessing.
                FailurePolicy::FailOpen { .. } => Duration::ZERO,
            };
            if waited + backoff > max_wait {
                self.inner
                    .health
                    .unavailable_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Err(RedisQuotaError::Unavailable {
                    endpoint: self.inner.endpoint.clone(),
                    waited,
                    last_error: error,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Ends a granted call: releases its in-flight slot and moves each bucket by a delta —
    /// positive to refund an over-reservation (capped at capacity), negative for an extra charge
    /// (which may leave the bucket in debt that later admissions wait out).
    ///
    /// Returns whether the lease was still held (false when it had expired first). Never fails the
    /// call: if Redis is unreachable the error is counted and logged, the slot expires with its
    /// lease, and the token adjustment is lost (a refund lost only makes admission more careful).
    pub async fn settle(&self, mut lease: RedisLease, deltas: &[(BucketSpec, i64)]) -> bool {
        lease.settled = true;
        if let Some(renewer) = lease.renewer.take() {
            renewer.abort();
        }
        let keys = Arc::clone(&lease.keys);
        match self.release(&keys, &lease.id, deltas).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(
                    endpoint = %self.inner.endpoint,
                    quota = %keys.buckets,
                    %error,
                    "could not settle a call on the shared quota; its slot returns when the lease expires"
                );
                false
            }
        }
    }

    /// Pauses the quota for every process for `duration` (a 429's retry-after), never shortening
    /// a longer pause another process set. Returns the pause now in force.
    pub async fn pause_for(
        &self,
        quota: &str,
        duration: Duration,
    ) -> Result<Duration, RedisQuotaError> {
        let keys = self.keys(quota);
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.scripts.pause(&mut conn, &keys, duration))
            .await
            .map_err(|message| self.command_error(message))
    }

    /// Lowers each bucket to the amount the provider reported as remaining (a reading from
    /// response headers). Never raises a bucket.
    pub async fn observe(
        &self,
        quota: &str,
        remaining: &[(BucketSpec, u64)],
    ) -> Result<(), RedisQuotaError> {
        for (spec, _) in remaining {
            validate_spec(spec)?;
        }
        let keys = self.keys(quota);
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.scripts.observe(&mut conn, &keys, remaining))
            .await
            .map_err(|message| self.command_error(message))
    }

    /// Reads a quota's levels, live leases and pause without changing them.
    pub async fn snapshot(
        &self,
        quota: &str,
        specs: &[BucketSpec],
    ) -> Result<RedisQuotaSnapshot, RedisQuotaError> {
        for spec in specs {
            validate_spec(spec)?;
        }
        let keys = self.keys(quota);
        let mut conn = self.inner.conn.clone();
        let reply = self
            .guarded(self.inner.scripts.inspect(&mut conn, &keys, specs))
            .await
            .map_err(|message| self.command_error(message))?;
        Ok(RedisQuotaSnapshot {
            server_time_us: reply.server_us,
            in_flight: reply.in_flight,
            paused_for: reply.paused_for,
            levels: specs.iter().map(|s| s.name).zip(reply.levels).collect(),
        })
    }

    fn keys(&self, quota: &str) -> QuotaKeys {
        QuotaKeys::new(&self.inner.config.key_prefix, quota)
    }

    fn admission(&self, reply: AcquireReply, keys: Arc<QuotaKeys>, id: String) -> Admission {
        match reply {
            AcquireReply::Granted { server_us } => {
                let renewer = self.spawn_renewer(Arc::clone(&keys), id.clone());
                Admission::Granted(RedisLease {
                    state: self.clone(),
                    keys,
                    id,
                    granted_at_us: server_us,
                    renewer: Some(renewer),
                    settled: false,
                })
            }
            AcquireReply::Wait {
                dimension, wait, ..
            } => {
                // A lease's expiry only bounds when its slot frees; holders usually settle sooner
                // and nobody announces it, so in-flight waits are polled.
                let retry_after = if dimension == "in_flight" {
                    wait.min(self.inner.config.in_flight_poll)
                } else {
                    wait
                };
                Admission::Wait {
                    dimension,
                    retry_after,
                }
            }
            AcquireReply::Never {
                dimension,
                capacity,
            } => Admission::Never {
                dimension,
                capacity,
            },
        }
    }

    /// Keeps a lease alive while its call runs: renews it every third of its TTL, so only a holder
    /// that stopped running (crashed, hung, partitioned) loses it.
    fn spawn_renewer(&self, keys: Arc<QuotaKeys>, id: String) -> AbortHandle {
        let state = self.clone();
        let ttl = self.inner.config.lease_ttl;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let mut conn = state.inner.conn.clone();
                match state
                    .guarded(state.inner.scripts.renew(&mut conn, &keys, &id, ttl))
                    .await
                {
                    Ok(true) | Err(_) => {}
                    Ok(false) => {
                        tracing::warn!(
                            quota = %keys.buckets,
                            lease = %id,
                            "in-flight lease expired before it could be renewed; another call may use its slot"
                        );
                        return;
                    }
                }
            }
        })
        .abort_handle()
    }

    async fn release(
        &self,
        keys: &QuotaKeys,
        id: &str,
        deltas: &[(BucketSpec, i64)],
    ) -> Result<bool, RedisQuotaError> {
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.scripts.settle(&mut conn, keys, id, deltas))
            .await
            .map_err(|message| self.command_error(message))
    }

    /// Runs one Redis operation under the command timeout and records the outcome; the error is
    /// returned as text (it is only ever logged or shown).
    async fn guarded<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
        let health = &self.inner.health;
        health.commands.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.config.command_timeout;
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!(
                "no answer within the command timeout ({timeout:?})"
            )),
        };
        match &result {
            Ok(_) => health.succeeded(&self.inner.endpoint),
            Err(error) => health.failed(
                &self.inner.endpoint,
                error,
                self.inner.config.failure_policy,
            ),
        }
        result
    }

    fn command_error(&self, message: String) -> RedisQuotaError {
        RedisQuotaError::Command {
            endpoint: self.inner.endpoint.clone(),
            message,
        }
    }
}

fn validate_spec(spec: &BucketSpec) -> Result<(), RedisQuotaError> {
    if spec.capacity == 0 || spec.period.is_zero() {
        return Err(RedisQuotaError::InvalidConfig {
            reason: format!(
                "bucket '{}' has capacity {} per {:?}; both must be above zero",
                spec.name, spec.capacity, spec.period
            ),
        });
    }
    Ok(())
}

fn describe(e: &RedisError) -> String {
    // RedisError's Display never includes the URL or password.
    e.to_string()
}

/// Mode tracking and counters. The mutex is never held across an await.
#[derive(Default)]
struct Health {
    mode: Mutex<RedisMode>,
    commands: AtomicU64,
    redis_errors: AtomicU64,
    mode_switches: AtomicU64,
    local_admissions: AtomicU64,
    unavailable_errors: AtomicU64,
}

impl Health {
    fn mode(&self) -> RedisMode {
        self.mode.lock().map(|m| *m).unwrap_or_default()
    }

    fn metrics(&self) -> RedisQuotaMetrics {
        RedisQuotaMetrics {
            mode: self.mode(),
            commands: self.commands.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            mode_switches: self.mode_switches.load(Ordering::Relaxed),
            local_admissions: self.local_admissions.load(Ordering::Relaxed),
            unavailable_errors: self.unavailable_errors.load(Ordering::Relaxed),
        }
    }

    fn switch(&self, to: RedisMode) -> Option<RedisMode> {
        let mut mode = self.mode.lock().ok()?;
        if *mode == to {
            return None;
        }
        let from = std::mem::replace(&mut *mode, to);
        self.mode_switches.fetch_add(1, Ordering::Relaxed);
        Some(from)
    }

    fn succeeded(&self, endpoint: &str) {
        if let Some(from) = self.switch(RedisMode::Shared) {
            tracing::warn!(
                %endpoint,
                ?from,
                "Redis answers again; admission is back on the shared quota"
            );
        }
    }

    fn failed(&self, endpoint: &str, error: &str, policy: FailurePolicy) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        let to = match policy {
            FailurePolicy::FailClosed { .. } => RedisMode::Unavailable,
            FailurePolicy::FailOpen { .. } => RedisMode::LocalShare,
        };
        if self.switch(to).is_some() {
            match policy {
                FailurePolicy::FailClosed { max_wait } => tracing::warn!(
                    %endpoint,
                    %error,
                    ?max_wait,
                    "Redis quota backend failing; admission fails closed: calls wait for Redis up to max_wait, then error"
                ),
                FailurePolicy::FailOpen { expected_processes } => tracing::warn!(
                    %endpoint,
                    %error,
                    expected_processes,
                    "Redis quota backend failing; admission fails open to this process's local share (each limit / expected_processes)"
                ),
            }
        }
    }
}
