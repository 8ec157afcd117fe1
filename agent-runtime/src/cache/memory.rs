//! An in-memory store: for tests, and for one process that wants coalescing and replay without
//! a file.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{CacheKey, CacheStore, StoreError};

/// Entries in a map in this process; gone when it ends.
#[derive(Debug, Default)]
pub struct InMemoryStore {
    entries: Mutex<HashMap<CacheKey, Vec<u8>>>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Replaces the bytes under `key` (tests use it to plant corrupt or old entries).
    pub fn insert_raw(&self, key: &CacheKey, bytes: Vec<u8>) {
        self.lock().insert(key.clone(), bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Vec<u8>>> {
        // A poisoned map only means a panic elsewhere; its entries are whole.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CacheStore for InMemoryStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        _ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.lock().insert(key.clone(), entry);
        Ok(())
    }
}
