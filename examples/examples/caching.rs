//! Response caching: the same chat run twice on a persistent cache. The second run answers every
//! call from the cache — no provider call, no quota, no budget — and produces the same
//! transcript. One agent opts out, so its calls always reach the model.
//!
//! ```sh
//! cargo run --example caching                          # no key: an in-process simulator answers
//! cargo run --example caching -- /tmp/my-cache         # keep the cache in a directory of yours
//! OPENAI_API_KEY=sk-... cargo run --example caching    # OpenAI (OPENAI_MODEL, default gpt-4o-mini)
//! ```

use std::error::Error;
use std::path::PathBuf;

use agent_core::{Budget, BudgetLimits, LlmAgent};
use agent_runtime::QuotaScheduler;
use agent_runtime::cache::ResponseCache;
use agent_runtime::chat::{ChatResult, GroupChat};
use agent_runtime::provider::{SimConfig, env_or_simulated};
use agent_runtime::scheduler::Quota;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    // The cache directory: the first argument, or a fresh one removed at the end.
    let (dir, scratch) = match std::env::args().nth(1) {
        Some(dir) => (PathBuf::from(dir), false),
        None => (
            std::env::temp_dir().join(format!("turnstile-caching-{}", std::process::id())),
            true,
        ),
    };

    let model = env_or_simulated(SimConfig::default())?;
    let mut results = Vec::new();
    for run in 1..=2 {
        // A new cache and scheduler each time, as a second process would open them.
        let cache = ResponseCache::builder(agent_runtime::cache::EmbeddedStore::open(&dir)?)
            .namespace("caching-example") // AutoGen's cache_seed: change it for a fresh run
            .build()?;
        let scheduler = QuotaScheduler::builder()
            .quota(model.id(), Quota::per_minute().requests(60).tokens(40_000))
            .cache(cache.clone()) // every call of every chat on this scheduler
            .build()?;
        let agent = |name: &str, role: &str| {
            LlmAgent::builder(name, model.clone())
                .system_message(role)
                .max_completion_tokens(120)
                .temperature(0.0)
                .build()
        };
        let mut chat = GroupChat::builder()
            .participant(agent("planner", "Propose one concrete step for the task.")?)
            .participant(agent("critic", "Point out one risk in the latest step.")?)
            // The critic should think afresh every time: its calls bypass the cache.
            .agent_cache("critic", ResponseCache::disabled())
            .max_messages(5)
            .budget(Budget::new("caching", BudgetLimits::calls(10)))
            .scheduler(scheduler.clone())
            .build()?;
        let result = chat
            .run("Plan the migration of a service to a new database.")
            .await?;
        report(run, &result, &cache, &scheduler, model.id());
        results.push(result);
    }
    let planner_turns = |r: &ChatResult| {
        r.messages
            .iter()
            .filter(|m| m.source() == Some("planner"))
            .cloned()
            .collect::<Vec<_>>()
    };
    println!(
        "the planner's words in run 2 are run 1's: {}",
        planner_turns(&results[0]) == planner_turns(&results[1])
    );
    if scratch {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn report(
    run: u32,
    result: &ChatResult,
    cache: &ResponseCache,
    scheduler: &QuotaScheduler,
    key: &str,
) {
    let total = result.usage.total;
    let served = total.excluding_cached();
    let sent = scheduler.snapshot().keys.get(key).map_or(0, |k| k.calls);
    println!(
        "run {run}: {} calls ({} from the cache), {} tokens in total, {} served by the provider; \
         {sent} provider calls admitted; cache: {:?}",
        total.calls,
        total.cached_calls,
        total.total_tokens(),
        served.total_tokens(),
        cache.stats(),
    );
}
