//! The response cache: a pipeline stage in front of the budget. A hit answers from a store —
//! no budget charge, no quota, no provider — and is marked [`Completion::cached`]; a miss runs
//! the pipeline and stores what the provider answered. Identical calls that miss at the same
//! time make one provider call (the others wait for it).
//!
//! - [`CacheKey`] (`key`) — what identifies a response;
//! - [`CacheStore`] (`store`) — where entries live: [`EmbeddedStore`] (redb, the persistent
//!   default), [`RedisStore`] (feature `redis`, shared by processes), [`InMemoryStore`] (tests);
//! - `entry` — the stored form; `flight` — coalescing of concurrent misses.
//!
//! Plug a cache in per scheduler (every call:
//! [`QuotaSchedulerBuilder::cache`](crate::scheduler::QuotaSchedulerBuilder::cache)), per chat
//! or per agent ([`GroupChatBuilder::cache`](crate::chat::GroupChatBuilder::cache),
//! [`agent_cache`](crate::chat::GroupChatBuilder::agent_cache)), or per call
//! ([`ModelCall::with_cache`](crate::ModelCall::with_cache)); the most specific wins. See
//! `docs/caching.md`.

mod embedded;
mod entry;
mod flight;
mod key;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod store;

pub use embedded::{EmbeddedStore, FILE_NAME};
pub use key::CacheKey;
pub use memory::InMemoryStore;
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_REDIS_TIMEOUT, RedisStore};
pub use store::{CacheStore, StoreError};

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_core::{CallError, ChatRequest, Completion};
use tokio_util::sync::CancellationToken;

use entry::{Entry, Unusable};
use flight::{FlightGuard, Flights, Role};

/// What a cache may do: read, write, both, or neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheMode {
    /// Answer from the cache when it can, store what the provider answers (the default).
    #[default]
    On,
    /// Bypass the cache entirely (turns off a scheduler's or chat's cache for one agent).
    Off,
    /// Answer from the cache when it can; store nothing (replaying a recorded run).
    ReadOnly,
    /// Never answer from the cache; store every answer (recording a fresh run).
    WriteOnly,
}

impl CacheMode {
    fn reads(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::ReadOnly)
    }

    fn writes(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::WriteOnly)
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;

    /// `on`, `off`, `read-only` or `write-only`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(CacheMode::On),
            "off" => Ok(CacheMode::Off),
            "read-only" => Ok(CacheMode::ReadOnly),
            "write-only" => Ok(CacheMode::WriteOnly),
            other => Err(format!(
                "unknown cache mode '{other}'; use on, off, read-only or write-only"
            )),
        }
    }
}

/// A cache configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheConfigError {
    /// `max_age` is zero: every entry would be expired.
    #[error("cache max_age is zero, so every entry would be expired; leave it unset for no limit")]
    ZeroMaxAge,
    /// The namespace is empty.
    #[error("cache namespace is empty; name it (AutoGen's cache_seed), e.g. \"default\"")]
    EmptyNamespace,
}

/// Counters of one cache, over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls answered from the store.
    pub hits: u64,
    /// Calls answered by an identical call in flight (no provider call of their own).
    pub coalesced: u64,
    /// Calls that went to the provider.
    pub misses: u64,
    /// Entries written.
    pub writes: u64,
    /// Entries found but unusable (corrupt, or of another version): counted as misses.
    pub corrupt: u64,
    /// Entries found but older than `max_age`: counted as misses.
    pub expired: u64,
    /// Store operations that failed or timed out (the call went on without the cache).
    pub store_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    coalesced: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    corrupt: AtomicU64,
    expired: AtomicU64,
    store_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A response cache over a [`CacheStore`]. Cheap to clone; clones share the store, the flights
/// in progress and the counters.
///
/// ```
/// use agent_core::{Budget, BudgetLimits, CallKind, ChatRequest, Message, ScriptedModel};
/// use agent_runtime::cache::ResponseCache;
/// use agent_runtime::scheduler::{ModelCall, QuotaScheduler};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let cache = ResponseCache::in_memory();
/// let scheduler = QuotaScheduler::builder().cache(cache.clone()).build().unwrap();
/// let model = ScriptedModel::new("test/model").text("hello");
/// let budget = Budget::new("run", BudgetLimits::calls(10));
/// let request = ChatRequest::new(vec![Message::user("hi")]);
/// let call = || ModelCall::new(&model, request.clone(), CallKind::Reply, "c", "a", &budget);
///
/// let first = scheduler.call(call()).await.unwrap();
/// let second = scheduler.call(call()).await.unwrap();
/// assert!(!first.cached && second.cached);
/// assert_eq!(second.message, first.message);
/// assert_eq!(model.request_count(), 1, "the hit never reached the provider");
/// assert_eq!(budget.used().calls, 1, "nor the budget");
/// assert_eq!(cache.stats().hits, 1);
/// # });
/// ```
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn CacheStore>,
    namespace: String,
    mode: CacheMode,
    max_age: Option<Duration>,
    flights: Arc<Flights>,
    counters: Counters,
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("store", &self.inner.store)
            .field("namespace", &self.inner.namespace)
            .field("mode", &self.inner.mode)
            .field("max_age", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ResponseCache`]; [`build`](Self::build) validates.
#[derive(Debug)]
#[must_use]
pub struct ResponseCacheBuilder {
    store: Arc<dyn CacheStore>,
    namespace: String,
    mode: CacheMode,
    max_age: Option<Duration>,
}

/// The namespace of a cache that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

impl ResponseCacheBuilder {
    /// The namespace (AutoGen's `cache_seed`): caches with different namespaces never share
    /// entries, so a new namespace re-runs everything against the provider (default
    /// [`DEFAULT_NAMESPACE`]).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// What the cache may do (default [`CacheMode::On`]).
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// Entries older than this are misses (default: no limit).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<ResponseCache, CacheConfigError> {
        if self.max_age == Some(Duration::ZERO) {
            return Err(CacheConfigError::ZeroMaxAge);
        }
        if self.namespace.is_empty() {
            return Err(CacheConfigError::EmptyNamespace);
        }
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                store: self.store,
                namespace: self.namespace,
                mode: self.mode,
                max_age: self.max_age,
                flights: Arc::default(),
                counters: Counters::default(),
            }),
        })
    }
}

/// An answer from the cache: the completion (marked cached) and, when it was streamed, the
/// deltas to replay it with.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) completion: Completion,
    pub(crate) deltas: Vec<String>,
}

impl Hit {
    fn new(mut completion: Completion, deltas: Vec<String>) -> Self {
        completion.cached = true;
        completion.rate_limits = None;
        Self { completion, deltas }
    }
}

/// What the lookup stage found.
pub(crate) enum Lookup {
    /// Answered without the provider (boxed: it is large, and the pipeline's future holds the
    /// lookup's result on every call).
    Hit(Box<Hit>),
    /// Not answered: run the pipeline, then hand the result to [`Pending::remember`].
    Miss(Pending),
}

/// A miss on its way through the pipeline: what to store, and the flight to land.
pub(crate) struct Pending {
    cache: ResponseCache,
    key: CacheKey,
    leader: Option<FlightGuard>,
}

impl ResponseCache {
    /// A builder over `store`.
    pub fn builder(store: impl CacheStore + 'static) -> ResponseCacheBuilder {
        ResponseCacheBuilder {
            store: Arc::new(store),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            mode: CacheMode::On,
            max_age: None,
        }
    }

    /// A cache in this process's memory, default namespace, on.
    pub fn in_memory() -> Self {
        Self::with_defaults(Arc::new(InMemoryStore::new()))
    }

    /// The persistent cache in directory `dir` ([`EmbeddedStore`]), default namespace, on.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(Self::with_defaults(Arc::new(EmbeddedStore::open(dir)?)))
    }

    /// A cache that is off: set it on a chat or an agent to bypass a cache configured above it.
    pub fn disabled() -> Self {
        let mut cache = Self::in_memory();
        if let Some(inner) = Arc::get_mut(&mut cache.inner) {
            inner.mode = CacheMode::Off;
        }
        cache
    }

    fn with_defaults(store: Arc<dyn CacheStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                namespace: DEFAULT_NAMESPACE.to_owned(),
                mode: CacheMode::On,
                max_age: None,
                flights: Arc::default(),
                counters: Counters::default(),
            }),
        }
    }

    /// The mode.
    pub fn mode(&self) -> CacheMode {
        self.inner.mode
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The maximum age of a usable entry.
    pub fn max_age(&self) -> Option<Duration> {
        self.inner.max_age
    }

    /// The key `request` to `model_id` has in this cache.
    pub fn key(&self, model_id: &str, request: &ChatRequest) -> CacheKey {
        CacheKey::new(&self.inner.namespace, model_id, request)
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&c.hits),
            coalesced: get(&c.coalesced),
            misses: get(&c.misses),
            writes: get(&c.writes),
            corrupt: get(&c.corrupt),
            expired: get(&c.expired),
            store_errors: get(&c.store_errors),
        }
    }

    /// Calls in flight that identical calls would join now.
    pub fn in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The lookup stage: a hit, or a miss to run through the pipeline. Waiting for an identical
    /// call in flight ends with `Err(Cancelled)` when `cancel` fires.
    pub(crate) async fn lookup(
        &self,
        model_id: &str,
        request: &ChatRequest,
        cancel: Option<&CancellationToken>,
    ) -> Result<Lookup, CallError> {
        let key = self.key(model_id, request);
        let miss = |leader| {
            bump(&self.inner.counters.misses);
            Ok(Lookup::Miss(Pending {
                cache: self.clone(),
                key: key.clone(),
                leader,
            }))
        };
        if !self.inner.mode.reads() {
            return miss(None);
        }
        loop {
            match self.inner.flights.join(&key) {
                Role::Leader(guard) => {
                    if let Some(entry) = self.read(&key).await {
                        let hit = Hit::new(entry.completion, entry.deltas);
                        // Nothing to wait for: followers that joined meanwhile take it too.
                        guard.land(Some(Arc::new(hit.clone())));
                        bump(&self.inner.counters.hits);
                        return Ok(Lookup::Hit(Box::new(hit)));
                    }
                    return miss(Some(guard));
                }
                Role::Follower(rx) => {
                    let landed = match cancel {
                        Some(token) => tokio::select! {
                            biased;
                            () = token.cancelled() => return Err(CallError::Cancelled),
                            landed = flight::landing(rx) => landed,
                        },
                        None => flight::landing(rx).await,
                    };
                    if let Some(hit) = landed {
                        bump(&self.inner.counters.coalesced);
                        return Ok(Lookup::Hit(Box::new((*hit).clone())));
                    }
                    // The leader failed: try again (one of the waiting calls leads now).
                }
            }
        }
    }

    /// The entry under `key`, when the store has a usable one. Every failure is a miss.
    async fn read(&self, key: &CacheKey) -> Option<Entry> {
        let counters = &self.inner.counters;
        let bytes = match self.inner.store.get(key).await {
            Ok(bytes) => bytes?,
            Err(error) => {
                bump(&counters.store_errors);
                tracing::warn!(%error, "response cache read failed; calling the provider");
                return None;
            }
        };
        match Entry::decode(&bytes, self.inner.max_age) {
            Ok(entry) => Some(entry),
            Err(Unusable::Expired) => {
                bump(&counters.expired);
                None
            }
            Err(Unusable::Corrupt(problem)) => {
                bump(&counters.corrupt);
                tracing::warn!(key = ?key, %problem, "unusable response cache entry; treated as a miss");
                None
            }
        }
    }

    async fn write(&self, key: &CacheKey, entry: &Entry) {
        let result = self
            .inner
            .store
            .put(key, entry.encode(), self.inner.max_age)
            .await;
        match result {
            Ok(()) => bump(&self.inner.counters.writes),
            Err(error) => {
                bump(&self.inner.counters.store_errors);
                tracing::warn!(%error, "response cache write failed; the answer is not cached");
            }
        }
    }
}

impl Pending {
    /// The store stage of a miss: writes a completion (in a writing mode), then lands the flight
    /// so waiting identical calls take the answer (or, on an error, try themselves).
    pub(crate) async fn remember(self, result: Result<&Completion, &CallError>) {
        self.remember_stream(result, Vec::new()).await;
    }

    /// [`remember`](Self::remember) for a streamed call, keeping the deltas for replay.
    pub(crate) async fn remember_stream(
        self,
        result: Result<&Completion, &CallError>,
        deltas: Vec<String>,
    ) {
        let Pending { cache, key, leader } = self;
        let Ok(completion) = result else {
            // Dropping the guard lands the flight as failed.
            return;
        };
        let entry = Entry::new(completion, deltas);
        if cache.inner.mode.writes() {
            cache.write(&key, &entry).await;
        }
        if let Some(leader) = leader {
            leader.land(Some(Arc::new(Hit::new(entry.completion, entry.deltas))));
        }
    }
}

#[cfg(test)]
mod tests;
