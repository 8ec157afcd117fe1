//! What the scheduler adds to a stream's time to first token when quota is free: the provider's
//! stream called directly against the same stream through `QuotaScheduler::call_stream` (budget
//! reserve, admission on a key with configured limits, the provider stage, the first event).
//!
//! `cargo bench -p agent-runtime --bench stream`. Each sample times only up to the first event:
//! the stream is dropped (and, through the scheduler, reconciled) outside the timed part.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // a bench stops loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use agent_core::{
    Budget, CallKind, ChatModel, ChatRequest, Completion, CompletionStream, Message, ModelError,
    StreamEvent, Usage, async_trait,
};
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;

const KEY: &str = "bench/stream";

/// A provider that streams a prepared reply at once: three deltas and the completion.
struct InstantStream {
    completion: Completion,
}

#[async_trait]
impl ChatModel for InstantStream {
    fn id(&self) -> &str {
        KEY
    }
    async fn complete(&self, _: ChatRequest) -> Result<Completion, ModelError> {
        Ok(self.completion.clone())
    }
    async fn stream(&self, _: ChatRequest) -> Result<CompletionStream, ModelError> {
        let events = ["Take ", "tram 28 ", "to the castle."]
            .map(|t| Ok(StreamEvent::TextDelta(t.to_owned())))
            .into_iter()
            .chain([Ok(StreamEvent::Completed(self.completion.clone()))]);
        Ok(futures::stream::iter(events).boxed())
    }
}

fn time_to_first_token(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let model = InstantStream {
        completion: Completion::text(KEY, "Take tram 28 to the castle.", Usage::new(40, 8)),
    };
    // Limits far above what the bench uses: admission runs its bucket arithmetic, never waits.
    let scheduler = QuotaScheduler::builder()
        .quota(
            KEY,
            Quota::per_minute()
                .requests(1_000_000_000)
                .tokens(1_000_000_000_000),
        )
        .build()
        .unwrap();
    let budget = Budget::unlimited();
    let request = ChatRequest::new(vec![
        Message::system("You suggest one place to visit."),
        Message::user("One afternoon in Lisbon: where should I go?"),
    ])
    .with_max_completion_tokens(64);

    let mut group = c.benchmark_group("time_to_first_token");
    group.bench_function("provider_stream_direct", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (model, request) = (&model, &request);
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut stream = model.stream(request.clone()).await.unwrap();
                    black_box(stream.next().await);
                    timed += start.elapsed();
                    drop(stream);
                }
                timed
            }
        })
    });
    group.bench_function("through_scheduler_call_stream", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (model, request, scheduler, budget) = (&model, &request, &scheduler, &budget);
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let call = ModelCall::new(
                        model,
                        request.clone(),
                        CallKind::Reply,
                        "bench",
                        "agent",
                        budget,
                    );
                    let mut stream = scheduler.call_stream(call).await.unwrap();
                    black_box(stream.next().await);
                    timed += start.elapsed();
                    drop(stream);
                }
                timed
            }
        })
    });
    group.finish();
}

criterion_group!(benches, time_to_first_token);
criterion_main!(benches);
