//! A Redis store (feature `redis`): one cache shared by every process that names the same server
//! and prefix. Entries expire with the cache's maximum age (`SET … PX`).

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{CacheKey, CacheStore, StoreError};

/// How long one Redis operation may take by default before the cache treats it as failed (a
/// miss, or a skipped write): a Redis that is down or stalled never holds a model call longer.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Cached responses in Redis, under `PREFIX` + the key's hex.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    endpoint: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint only: a URL can carry a password.
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://`, `rediss://`), with operations bounded by
    /// [`DEFAULT_REDIS_TIMEOUT`] and keys under `turnstile:cache:`.
    ///
    /// The connection is made lazily and re-made after failures, so this succeeds while Redis is
    /// down (lookups are then misses); it fails only on an unusable URL.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, DEFAULT_REDIS_TIMEOUT)
    }

    /// [`connect`](Self::connect) with another bound on each operation (at least 1 ms).
    pub fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let open = |message: String| StoreError::Open {
            store: "redis",
            message,
        };
        if timeout < Duration::from_millis(1) {
            return Err(open(
                "the operation timeout must be at least 1 ms".to_owned(),
            ));
        }
        let client = Client::open(url).map_err(|e| open(format!("unusable URL: {e}")))?;
        let addr = client.get_connection_info().addr();
        let endpoint = addr.to_string();
        if matches!(addr, redis::ConnectionAddr::TcpTls { .. }) {
            crate::tls::install_crypto_provider();
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| open(format!("unusable URL: {e}")))?;
        Ok(Self {
            conn,
            prefix: "turnstile:cache:".to_owned(),
            timeout,
            endpoint,
        })
    }

    /// Keys go under `prefix` (default `turnstile:cache:`).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// `host:port` of the server (no credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Backend {
                store: "redis",
                message: e.to_string(),
            }),
            Err(_) => Err(StoreError::Timeout {
                store: "redis",
                after: self.timeout,
            }),
        }
    }
}

#[async_trait]
impl CacheStore for RedisStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.redis_key(key);
        self.bounded(async move { conn.get::<_, Option<Vec<u8>>>(key).await })
            .await
    }

    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.redis_key(key);
        self.bounded(async move {
            match ttl {
                Some(ttl) => {
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    conn.pset_ex::<_, _, ()>(key, entry, ms).await
                }
                None => conn.set::<_, _, ()>(key, entry).await,
            }
        })
        .await
    }
}
