//! Many chats at once: a thousand group chats share one scheduler and one root budget, each a
//! plain future on a two-worker runtime.

mod support;

use agent_core::{Budget, BudgetLimits, Completion, ScriptedModel, StopReason, Usage};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::{GroupChat, SummaryMethod};
use support::{Echo, ModelAgent};

const CHATS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_chats_share_one_scheduler_and_account_for_every_call() {
    let model = ScriptedModel::new("test/m").with_responder(|req| {
        Ok(Completion::text(
            "test/m",
            "ok",
            Usage::new(req.messages.len() as u64, 1),
        ))
    });
    let scheduler = QuotaScheduler::new();
    let root = Budget::new("fleet", BudgetLimits::UNLIMITED);
    let mut tasks = Vec::with_capacity(CHATS);
    for i in 0..CHATS {
        let mut chat = GroupChat::builder()
            .participant(ModelAgent::new("a", model.clone()))
            .participant(ModelAgent::new("b", model.clone()))
            .participant(Echo::new("c"))
            .max_turns(6)
            .summary_method(SummaryMethod::reflection(model.clone()))
            .scheduler(scheduler.clone())
            .budget(root.child(format!("chat-{i}"), BudgetLimits::calls(5)))
            .conversation_id(format!("conv-{i}"))
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move { chat.run("go").await }));
    }
    let mut calls = 0;
    let mut tokens = 0;
    for task in tasks {
        let r = task.await.unwrap().unwrap();
        assert_eq!(r.messages.len(), 7);
        assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 6 });
        assert_eq!(r.summary, "ok");
        // 4 replies + the reflection, which is hidden from the transcript but not from usage.
        assert_eq!(r.usage.total.calls, 5);
        assert_eq!(r.usage.by_agent["a"].calls, 2);
        assert_eq!(r.usage.by_agent["b"].calls, 2);
        assert_eq!(r.usage.by_agent["group_chat"].calls, 1);
        calls += r.usage.total.calls;
        tokens += r.usage.total.total_tokens();
    }
    assert_eq!(calls, (CHATS * 5) as u64);
    // What the provider saw, what the scheduler counted, and what it charged to the shared root
    // budget all equal the sum of the chats' usage.
    assert_eq!(model.request_count() as u64, calls);
    let snapshot = scheduler.snapshot();
    let key = &snapshot.keys["test/m"];
    assert_eq!(key.calls, calls);
    assert_eq!(key.attempts, calls);
    assert_eq!(key.succeeded, calls);
    assert_eq!(key.prompt_tokens + key.completion_tokens, tokens);
    assert_eq!(root.used().calls, calls);
    assert_eq!(root.used().tokens, tokens);
}
