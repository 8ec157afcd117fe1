//! The default persistent store: one redb file in a directory.
//!
//! Why redb: it is pure Rust (nothing to compile in C, unlike a bundled SQLite), keeps everything
//! in one file with ACID, crash-safe commits (copy-on-write B-trees, no write-ahead log to
//! replay), has had a stable file format since 1.0 and is actively maintained. A cache needs
//! get and put by key, which is exactly its API; fjall's LSM tree and background compaction
//! threads would be machinery this workload never uses.
//!
//! One process opens a file at a time (redb locks it): processes that share a cache use the
//! Redis store instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, TableDefinition};

use super::{CacheKey, CacheStore, StoreError};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("responses");

/// The file a cache directory holds.
pub const FILE_NAME: &str = "responses.redb";

/// Cached responses in `DIR/responses.redb`.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        store: "embedded",
        message: e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (creating it and the directory when missing) the store in `dir`.
    ///
    /// Fails when the directory cannot be created, the file is not a redb database, or another
    /// process has it open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let open = |message: String| StoreError::Open {
            store: "embedded",
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| open(format!("cannot create directory {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| {
            open(format!(
                "{}: {e} (is another process using this cache directory? give each its own, or share through Redis)",
                path.display()
            ))
        })?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a blocking database operation off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || op(&db))
            .await
            .map_err(backend)?
    }
}

#[async_trait]
impl CacheStore for EmbeddedStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.as_str().to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = match txn.open_table(TABLE) {
                Ok(table) => table,
                // Nothing was ever written.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            let value = table.get(key.as_str()).map_err(backend)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put(
        &self,
        key: &CacheKey,
        entry: Vec<u8>,
        _ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = key.as_str().to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(TABLE).map_err(backend)?;
                table
                    .insert(key.as_str(), entry.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }
}
