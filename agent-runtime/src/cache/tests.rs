use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_core::{
    Budget, BudgetLimits, CallError, CallKind, ChatModel, ChatRequest, Completion, Message,
    ModelError, ScriptedModel, Usage, async_trait,
};

use super::*;
use crate::scheduler::{ModelCall, Quota, QuotaScheduler};

fn request(text: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::user(text)]).with_max_completion_tokens(8)
}

async fn call(
    scheduler: &QuotaScheduler,
    model: &dyn ChatModel,
    budget: &Budget,
    text: &str,
) -> Result<Completion, CallError> {
    let call = ModelCall::new(model, request(text), CallKind::Reply, "c", "a", budget);
    scheduler.call(call).await
}

fn scheduler_with(cache: ResponseCache) -> QuotaScheduler {
    QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(1_000).tokens(1_000_000))
        .cache(cache)
        .build()
        .unwrap()
}

/// Answers after `delay`, counting calls; fails the first `fail_first` calls (not retryable).
struct Slow {
    delay: Duration,
    calls: AtomicU64,
    fail_first: u64,
}

impl Slow {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            calls: AtomicU64::new(0),
            fail_first: 0,
        }
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ChatModel for Slow {
    fn id(&self) -> &str {
        "m"
    }
    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if n < self.fail_first {
            return Err(ModelError::InvalidRequest {
                status: Some(400),
                message: "no".into(),
            });
        }
        let text = request.messages[0].text().unwrap_or_default().to_owned();
        Ok(Completion::text(
            "m",
            format!("re: {text}"),
            Usage::new(3, 2),
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn a_hit_spends_no_quota_and_no_budget_and_is_marked() {
    let cache = ResponseCache::in_memory();
    let scheduler = scheduler_with(cache.clone());
    let model = ScriptedModel::new("m").text("one");
    let budget = Budget::new("b", BudgetLimits::calls(1));
    let first = call(&scheduler, &model, &budget, "q").await.unwrap();
    // The budget allows one call: the second would be refused if it were charged.
    let second = call(&scheduler, &model, &budget, "q").await.unwrap();
    assert!(!first.cached);
    assert!(second.cached);
    assert!(second.rate_limits.is_none());
    assert_eq!(second.message, first.message);
    assert_eq!(second.usage, first.usage);
    assert_eq!(model.request_count(), 1);
    assert_eq!(budget.used().calls, 1);
    assert_eq!(scheduler.snapshot().keys["m"].attempts, 1, "no quota taken");
    // A different request is a miss, refused by the spent budget before the provider.
    assert!(matches!(
        call(&scheduler, &model, &budget, "other").await,
        Err(CallError::BudgetExhausted(_))
    ));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.writes), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn modes_decide_reading_and_writing() {
    let store = Arc::new(InMemoryStore::new());
    let cache = |mode| {
        ResponseCache::builder(store.clone())
            .mode(mode)
            .build()
            .unwrap()
    };
    let model = Slow::new(Duration::from_millis(1));
    let budget = Budget::default();

    // Read-only on an empty store: both calls reach the provider, nothing is written.
    let ro = scheduler_with(cache(CacheMode::ReadOnly));
    call(&ro, &model, &budget, "q").await.unwrap();
    call(&ro, &model, &budget, "q").await.unwrap();
    assert_eq!((model.calls(), store.len()), (2, 0));

    // Write-only: the provider every time, and the answer stored.
    let wo = scheduler_with(cache(CacheMode::WriteOnly));
    call(&wo, &model, &budget, "q").await.unwrap();
    let again = call(&wo, &model, &budget, "q").await.unwrap();
    assert!(!again.cached);
    assert_eq!((model.calls(), store.len()), (4, 1));

    // Off: the store is never touched.
    let off = scheduler_with(cache(CacheMode::Off));
    assert!(!call(&off, &model, &budget, "q").await.unwrap().cached);
    assert_eq!(model.calls(), 5);

    // Read-only now finds what write-only recorded.
    assert!(call(&ro, &model, &budget, "q").await.unwrap().cached);
    assert_eq!(model.calls(), 5);
    assert_eq!("read-only".parse::<CacheMode>(), Ok(CacheMode::ReadOnly));
    assert!("sometimes".parse::<CacheMode>().is_err());
}

#[tokio::test(start_paused = true)]
async fn old_and_corrupt_entries_are_misses_and_get_replaced() {
    let store = Arc::new(InMemoryStore::new());
    let cache = ResponseCache::builder(store.clone())
        .max_age(Duration::from_secs(3600))
        .build()
        .unwrap();
    let scheduler = scheduler_with(cache.clone());
    let model = Slow::new(Duration::from_millis(1));
    let budget = Budget::default();
    let key = cache.key("m", &request("q"));

    let old = Entry::new(
        &Completion::text("m", "stale", Usage::new(1, 1)),
        Vec::new(),
    )
    .aged(Duration::from_secs(7200));
    store.insert_raw(&key, old.encode());
    let fresh = call(&scheduler, &model, &budget, "q").await.unwrap();
    assert!(!fresh.cached);
    assert_eq!(fresh.message.text(), Some("re: q"));
    assert_eq!(cache.stats().expired, 1);

    store.insert_raw(&key, b"{not json".to_vec());
    assert!(!call(&scheduler, &model, &budget, "q").await.unwrap().cached);
    assert_eq!(cache.stats().corrupt, 1);
    // The miss rewrote the entry: the next call hits.
    assert!(call(&scheduler, &model, &budget, "q").await.unwrap().cached);
    assert_eq!(model.calls(), 2);
    assert_eq!(
        ResponseCache::builder(InMemoryStore::new())
            .max_age(Duration::ZERO)
            .build()
            .unwrap_err(),
        CacheConfigError::ZeroMaxAge
    );
}

/// A store whose every operation fails.
#[derive(Debug)]
struct Broken;

#[async_trait]
impl CacheStore for Broken {
    async fn get(&self, _: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Backend {
            store: "broken",
            message: "disk on fire".into(),
        })
    }
    async fn put(&self, _: &CacheKey, _: Vec<u8>, _: Option<Duration>) -> Result<(), StoreError> {
        Err(StoreError::Timeout {
            store: "broken",
            after: Duration::from_millis(5),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_fails_the_call() {
    let cache = ResponseCache::builder(Broken).build().unwrap();
    let scheduler = scheduler_with(cache.clone());
    let model = Slow::new(Duration::from_millis(1));
    let budget = Budget::default();
    for _ in 0..2 {
        let c = call(&scheduler, &model, &budget, "q").await.unwrap();
        assert!(!c.cached);
    }
    assert_eq!(model.calls(), 2);
    let stats = cache.stats();
    assert_eq!((stats.store_errors, stats.writes, stats.hits), (4, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn identical_concurrent_misses_make_one_provider_call() {
    let cache = ResponseCache::in_memory();
    let scheduler = scheduler_with(cache.clone());
    let model = Slow::new(Duration::from_secs(2));
    let budget = Budget::default();
    let calls = (0..8).map(|i| {
        let text = if i < 6 { "same" } else { "different" };
        call(&scheduler, &model, &budget, text)
    });
    let results = futures::future::join_all(calls).await;
    let completions: Vec<Completion> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(model.calls(), 2, "one per distinct request");
    assert_eq!(completions.iter().filter(|c| c.cached).count(), 6);
    assert!(
        completions[..6]
            .iter()
            .all(|c| c.message.text() == Some("re: same"))
    );
    assert_eq!(budget.used().calls, 2, "followers are not charged");
    assert_eq!(cache.stats().coalesced, 6);
    assert_eq!(cache.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn when_the_leader_fails_a_follower_makes_its_own_call() {
    let cache = ResponseCache::in_memory();
    let scheduler = scheduler_with(cache.clone());
    let mut model = Slow::new(Duration::from_secs(1));
    model.fail_first = 1;
    let budget = Budget::default();
    let (a, b) = tokio::join!(
        call(&scheduler, &model, &budget, "q"),
        call(&scheduler, &model, &budget, "q")
    );
    assert!(matches!(a, Err(CallError::Model(_))), "{a:?}");
    let b = b.unwrap();
    assert!(!b.cached, "the follower's answer came from its own call");
    assert_eq!(model.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_follower_waiting_on_a_flight_can_be_cancelled() {
    let cache = ResponseCache::in_memory();
    let scheduler = scheduler_with(cache.clone());
    let model = Slow::new(Duration::from_secs(60));
    let budget = Budget::default();
    let token = tokio_util::sync::CancellationToken::new();
    let follower = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let call = ModelCall::new(&model, request("q"), CallKind::Reply, "c", "a", &budget)
            .with_cancel(&token);
        scheduler.call(call).await
    };
    let cancel = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        token.cancel();
    };
    let (leader, follower, ()) =
        tokio::join!(call(&scheduler, &model, &budget, "q"), follower, cancel);
    assert!(leader.is_ok());
    assert!(matches!(follower, Err(CallError::Cancelled)));
    assert_eq!(model.calls(), 1);
}

#[tokio::test]
async fn the_embedded_store_keeps_entries_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let model = Slow::new(Duration::from_millis(1));
    let budget = Budget::default();
    {
        let scheduler = scheduler_with(ResponseCache::open(dir.path()).unwrap());
        // Opened twice at once: the second is refused with advice, not a hang.
        let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
        call(&scheduler, &model, &budget, "q").await.unwrap();
    }
    let scheduler = scheduler_with(ResponseCache::open(dir.path()).unwrap());
    let again = call(&scheduler, &model, &budget, "q").await.unwrap();
    assert!(again.cached);
    assert_eq!(model.calls(), 1);
    assert!(dir.path().join(FILE_NAME).exists());
}

#[tokio::test]
async fn an_unusable_cache_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = ResponseCache::open(&file).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("cannot create directory"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_is_stored_and_replayed_as_the_same_stream() {
    use crate::provider::{SimConfig, SimulatedProvider};
    use agent_core::StreamEvent;
    use futures::StreamExt;

    let cache = ResponseCache::in_memory();
    let scheduler = QuotaScheduler::builder()
        .cache(cache.clone())
        .build()
        .unwrap();
    let model = SimulatedProvider::new(SimConfig::default().with_reply_tokens(6)).unwrap();
    let budget = Budget::default();
    let read = |stream: crate::scheduler::ModelStream| async move {
        let events: Vec<StreamEvent> = stream.map(Result::unwrap).collect().await;
        events
    };
    let open = || {
        let call = ModelCall::new(&model, request("q"), CallKind::Reply, "c", "a", &budget);
        scheduler.call_stream(call)
    };
    let first = read(open().await.unwrap()).await;
    let second = read(open().await.unwrap()).await;
    assert_eq!(model.simulation().stats().requests, 1);
    assert_eq!(first.len(), 7, "six deltas and the completion");
    assert_eq!(
        first[..6],
        second[..6],
        "the same deltas, in the same pieces"
    );
    let (StreamEvent::Completed(a), StreamEvent::Completed(b)) = (&first[6], &second[6]) else {
        panic!("{second:?}")
    };
    assert!(!a.cached && b.cached);
    assert_eq!(a.message, b.message);
    assert_eq!(budget.used().calls, 1);
    // A plain call finds the streamed entry too.
    let call = ModelCall::new(&model, request("q"), CallKind::Reply, "c", "a", &budget);
    assert!(scheduler.call(call).await.unwrap().cached);
    assert_eq!(cache.stats().hits, 2);
}
