//! The storage interface of the response cache: bytes under a key. One module per store:
//! `memory` (tests), `embedded` (redb, the default persistent store), `redis` (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::CacheKey;

/// Where cached responses live. Stores keep opaque bytes; the cache encodes, decodes, dates and
/// expires entries, so a store only has to get and put.
///
/// A store's failures never fail a model call: a `get` that fails is a miss and a `put` that
/// fails is skipped, both logged and counted. A store that can hang (a network store) must bound
/// its own operations in time.
#[async_trait]
pub trait CacheStore: Send + Sync + fmt::Debug {
    /// The entry under `key`, if any.
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `entry` under `key`, replacing any older one. `ttl` is the cache's maximum age: a
    /// store that can expire entries itself may use it (the cache checks ages on read anyway).
    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl<S: CacheStore + ?Sized> CacheStore for Arc<S> {
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key).await
    }
    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        (**self).put(key, entry, ttl).await
    }
}

#[async_trait]
impl<S: CacheStore + ?Sized> CacheStore for Box<S> {
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key).await
    }
    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        (**self).put(key, entry, ttl).await
    }
}

/// A cache store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened or reached (a file locked by another process, a directory
    /// that cannot be created, a bad URL).
    #[error("the {store} cache store cannot be opened: {message}")]
    Open {
        /// Which store.
        store: &'static str,
        /// What went wrong and what to do.
        message: String,
    },
    /// One operation failed.
    #[error("the {store} cache store failed: {message}")]
    Backend {
        /// Which store.
        store: &'static str,
        /// What went wrong.
        message: String,
    },
    /// One operation did not finish in time.
    #[error("the {store} cache store did not answer within {after:?}")]
    Timeout {
        /// Which store.
        store: &'static str,
        /// The bound.
        after: Duration,
    },
}
