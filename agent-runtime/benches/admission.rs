//! Cost of the scheduler's uncontended path: a whole `call` with an instant model on an unlimited
//! key and on a limited key that never has to wait, next to the budget stage alone.
//!
//! `cargo bench -p agent-runtime --no-default-features --bench admission`
#![allow(missing_docs, clippy::panic)] // a bench with a bad configuration should stop loudly

use std::hint::black_box;

use agent_core::{
    Budget, BudgetLimits, CallKind, Charge, ChatModel, ChatRequest, Completion, Message,
    ModelError, Usage, async_trait,
};
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;

/// Answers at once with a prepared completion.
struct Instant {
    completion: Completion,
}

#[async_trait]
impl ChatModel for Instant {
    fn id(&self) -> &str {
        "bench/instant"
    }
    async fn complete(&self, _request: ChatRequest) -> Result<Completion, ModelError> {
        Ok(self.completion.clone())
    }
}

fn bench(c: &mut Criterion) {
    let model = Instant {
        completion: Completion::text("bench", "ok", Usage::new(12, 3)),
    };
    let request = ChatRequest::new(vec![Message::system("be brief"), Message::user("hello")])
        .with_max_completion_tokens(16);
    let budget = Budget::new(
        "bench",
        BudgetLimits::UNLIMITED.with_max_tokens(u64::MAX / 2),
    );

    // Uncontended calls complete in one poll: no runtime overhead is measured.
    let run = |s: &QuotaScheduler| {
        let call = ModelCall::new(
            &model,
            request.clone(),
            CallKind::Reply,
            "conversation",
            "agent",
            &budget,
        );
        black_box(s.call(call).now_or_never())
    };

    let unlimited = QuotaScheduler::new();
    c.bench_function("call/unlimited_key/instant_model", |b| {
        b.iter(|| run(&unlimited))
    });

    let limited = QuotaScheduler::builder()
        .quota(
            "bench/instant",
            Quota::per_minute()
                .requests(u64::MAX / 4)
                .tokens(u64::MAX / 4)
                .max_in_flight(1_000),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("call/limited_key/instant_model", |b| {
        b.iter(|| run(&limited))
    });

    // What a call costs without the scheduler: the request clone the caller makes, the one the
    // pipeline makes for its retry layer, and the model. `call/*` minus this is the scheduler.
    c.bench_function("baseline/direct_model_call", |b| {
        b.iter(|| {
            let owned = request.clone();
            black_box(model.complete(owned.clone()).now_or_never())
        })
    });

    let nested = budget.child("child", BudgetLimits::calls(u64::MAX / 2));
    c.bench_function("budget/reserve_settle/depth2", |b| {
        b.iter(|| {
            let r = nested.try_reserve(Charge {
                calls: 1,
                tokens: 30,
                cost_nanos: 0,
            });
            if let Ok(r) = r {
                r.settle(Charge {
                    calls: 1,
                    tokens: 15,
                    cost_nanos: 0,
                });
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
