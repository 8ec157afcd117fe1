//! Budgets through the scheduler: charged before queueing, retries charged, and the runaway
//! recursion test — agents that spawn nested chats forever stop at the root budget.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Agent, AgentError, AgentReply, Budget, BudgetDimension, BudgetLimits, CallError, CallKind,
    ChatRequest, Message, ScriptedModel, TurnContext, Usage, async_trait,
};
use agent_runtime::SchedulerContext;
use agent_runtime::scheduler::{ModelCall, Quota, QuotaScheduler};
use scheduler_support::{ExactEstimator, TimedModel, completion, rate_limited, request};
use tokio::time::Instant;

/// An agent that, on every turn, asks the model, then runs two nested chats of its own on child
/// budgets — and never says TERMINATE.
struct Recursive {
    model: TimedModel,
}

#[async_trait]
impl Agent for Recursive {
    fn name(&self) -> &str {
        "recursive"
    }

    async fn reply(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let request = ChatRequest::new(history.to_vec()).with_max_completion_tokens(8);
        let completion = ctx.complete(&self.model, request, CallKind::Reply).await?;
        let scheduler = ctx
            .as_any()
            .downcast_ref::<SchedulerContext>()
            .ok_or_else(|| AgentError::Other("needs the runtime context".into()))?
            .scheduler()
            .clone();
        for i in 0..2 {
            // The child asks for far more than the root has: carving keeps it within the root.
            let budget = ctx
                .budget()
                .child(format!("nested-{i}"), BudgetLimits::calls(1_000));
            let nested = SchedulerContext::new(
                scheduler.clone(),
                format!("{}/{i}", ctx.conversation()),
                "recursive",
                budget,
            );
            run_chat(self, &nested, completion.message.clone()).await?;
        }
        Ok(AgentReply::message(completion.message))
    }
}

/// A chat loop with no termination condition: only an error ends it.
async fn run_chat(
    agent: &Recursive,
    ctx: &SchedulerContext,
    task: Message,
) -> Result<(), AgentError> {
    let mut history = vec![task];
    loop {
        let reply = agent.reply(&history, ctx).await?;
        history.extend(reply.messages);
    }
}

#[tokio::test(start_paused = true)]
async fn runaway_recursion_stops_at_the_root_budget_with_a_typed_reason() {
    let scheduler = QuotaScheduler::builder()
        .quota("m", Quota::per_minute().requests(600))
        .build()
        .unwrap();
    let model = TimedModel::new(
        ScriptedModel::new("m").with_responder(|_| Ok(completion(Usage::new(3, 2)))),
    );
    let root = Budget::new("root", BudgetLimits::calls(40));
    let agent = Recursive {
        model: model.clone(),
    };
    // Two root chats share the budget concurrently.
    let chats = (0..2).map(|i| {
        let ctx = SchedulerContext::new(
            scheduler.clone(),
            format!("root{i}"),
            "recursive",
            root.clone(),
        );
        let agent = &agent;
        async move { run_chat(agent, &ctx, Message::user("go")).await }
    });
    let outcomes = futures::future::join_all(chats).await;
    for outcome in outcomes {
        let Err(AgentError::Call(CallError::BudgetExhausted(e))) = outcome else {
            panic!("expected a budget stop, got {outcome:?}")
        };
        assert_eq!(e.dimension, BudgetDimension::Calls);
        assert_eq!(
            e.to_string(),
            "budget exhausted: 40 of 40 model calls (budget 'root')"
        );
    }
    assert_eq!(
        model.count(),
        40,
        "every call the budget allowed, and not one more"
    );
    assert_eq!(root.used().calls, 40);
    // Nested conversations were charged and counted under their own names.
    let snap = scheduler.snapshot();
    assert!(
        snap.conversations
            .keys()
            .any(|c| c.starts_with("root0/0/0/"))
    );
    assert_eq!(snap.keys["m"].attempts, 40);
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_fails_before_queueing_and_never_waits() {
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .quota("m", Quota::per_minute().requests(1))
        .build()
        .unwrap();
    let model = TimedModel::answering("m", Usage::new(1, 1));
    let budget = Budget::new("b", BudgetLimits::calls(1));
    let call = |b| ModelCall::new(&model, request(1), CallKind::Summary, "c", "a", b);
    s.call(call(&budget)).await.unwrap();
    // The key has no request left for a minute, but the budget is what fails, at once.
    let t0 = Instant::now();
    let err = s.call(call(&budget)).await.unwrap_err();
    assert!(err.is_budget_exhausted(), "{err}");
    assert_eq!(Instant::now(), t0);
    assert_eq!(s.snapshot().keys["m"].queued, 0);
}

#[tokio::test(start_paused = true)]
async fn retries_are_charged_as_model_calls() {
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .build()
        .unwrap();
    let model = TimedModel::new(
        ScriptedModel::new("m")
            .error(rate_limited(Some(Duration::from_secs(1))))
            .with_responder(|_| Ok(completion(Usage::new(4, 6)))),
    );
    let two = Budget::new("two", BudgetLimits::calls(2).with_max_tokens(100));
    let call = |b| ModelCall::new(&model, request(20), CallKind::Reply, "c", "a", b);
    s.call(call(&two)).await.unwrap();
    assert_eq!(two.used().calls, 2);
    assert_eq!(two.used().tokens, 10, "reconciled to the reported usage");

    let model = TimedModel::new(
        ScriptedModel::new("m2")
            .error(rate_limited(Some(Duration::from_secs(1))))
            .text("never"),
    );
    let one = Budget::new("one", BudgetLimits::calls(1));
    let call = ModelCall::new(&model, request(20), CallKind::Reply, "c", "a", &one);
    let err = s.call(call).await.unwrap_err();
    assert!(err.is_budget_exhausted(), "{err}");
    assert_eq!(
        model.count(),
        1,
        "the retry was not sent: the budget had no call left"
    );
}

#[tokio::test(start_paused = true)]
async fn budget_tokens_reserve_the_estimate_then_settle_to_actual() {
    let s = QuotaScheduler::builder()
        .estimator(ExactEstimator)
        .build()
        .unwrap();
    let model = Arc::new(TimedModel::answering("m", Usage::new(30, 10)));
    let budget = Budget::new("b", BudgetLimits::calls(10).with_max_tokens(100));
    // 60 prompt tokens + 50 completion tokens reserved: more than the 100 left.
    let too_big =
        ChatRequest::new(vec![Message::user("x".repeat(60))]).with_max_completion_tokens(50);
    let call = ModelCall::new(&*model, too_big, CallKind::Reply, "c", "a", &budget);
    let err = s.call(call).await.unwrap_err();
    assert!(err.is_budget_exhausted(), "{err}");
    assert_eq!(model.count(), 0);
    let fits = ChatRequest::new(vec![Message::user("x".repeat(60))]).with_max_completion_tokens(40);
    let call = ModelCall::new(&*model, fits, CallKind::Reply, "c", "a", &budget);
    s.call(call).await.unwrap();
    assert_eq!(budget.used().tokens, 40);
}

mod conservation {
    use super::*;
    use agent_core::{Completion, ModelError};
    use agent_runtime::scheduler::RetryPolicy;
    use proptest::prelude::*;

    fn answer(request: &ChatRequest) -> Result<Completion, ModelError> {
        let text = request.messages[0].text().unwrap_or("");
        match text.split('-').next() {
            Some("fail") => Err(scheduler_support::server_error()),
            Some("quota") => Err(ModelError::QuotaExhausted {
                message: "insufficient_quota".into(),
            }),
            _ => Ok(completion(Usage::new(3, 4))),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Calls through the scheduler on a random budget tree, with random provider outcomes
        /// and retries: no node ever spends more calls than its cap, and every node's spending is
        /// exactly the provider attempts made in its subtree (children never exceed the parent,
        /// and nothing is charged twice or hidden).
        #[test]
        fn budgets_are_conserved_through_the_pipeline(
            root_cap in 0u64..40,
            child_caps in proptest::collection::vec((0u64..25, 0usize..3), 1..5),
            calls in proptest::collection::vec((0usize..6, 0u8..3), 1..60),
        ) {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(async move {
                    let s = QuotaScheduler::builder()
                        .estimator(ExactEstimator)
                        .retry(RetryPolicy::default().max_attempts(3).seed(1))
                        .build()
                        .unwrap();
                    let model = TimedModel::new(ScriptedModel::new("m").with_responder(answer));
                    // nodes[0] is the root; each child hangs off an earlier node.
                    let mut nodes = vec![Budget::new("n0", BudgetLimits::calls(root_cap))];
                    let mut parents = vec![None];
                    for (i, (cap, parent)) in child_caps.iter().enumerate() {
                        let p = parent % nodes.len();
                        let child = nodes[p].child(format!("n{}", i + 1), BudgetLimits::calls(*cap));
                        nodes.push(child);
                        parents.push(Some(p));
                    }
                    let runs = calls.iter().enumerate().map(|(i, (node, outcome))| {
                        let node = node % nodes.len();
                        let kind = ["ok", "fail", "quota"][usize::from(*outcome)];
                        let text = format!("{kind}-{node}");
                        let (s, model, budget) = (&s, &model, &nodes[node]);
                        async move {
                            let request = ChatRequest::new(vec![Message::user(text)]);
                            let conversation = format!("c{i}");
                            let call = ModelCall::new(model, request, CallKind::Reply, &conversation, "a", budget);
                            s.call(call).await
                        }
                    });
                    futures::future::join_all(runs).await;
                    // Attempts per node, from what the provider received.
                    let mut attempts = vec![0u64; nodes.len()];
                    for r in model.inner.requests() {
                        let text = r.messages[0].text().unwrap_or("");
                        let node: usize = text.rsplit('-').next().unwrap().parse().unwrap();
                        attempts[node] += 1;
                    }
                    let mut subtree = attempts.clone();
                    for i in (1..nodes.len()).rev() {
                        let p = parents[i].unwrap();
                        subtree[p] += subtree[i];
                    }
                    for (i, node) in nodes.iter().enumerate() {
                        let cap = node.limits().max_calls.unwrap();
                        assert!(node.used().calls <= cap, "node {i} over its cap");
                        assert_eq!(node.used().calls, subtree[i], "node {i}");
                    }
                });
        }
    }
}
