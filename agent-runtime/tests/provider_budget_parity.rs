//! `agent_core::testing::TestContext` charges a budget exactly as the scheduler does, so an agent
//! unit-tested with it sees production budget behaviour: the same reserve (prompt estimate +
//! `max_completion_tokens`, else the scheduler's default of 256), the same settlement to reported
//! usage, the estimate standing without usage, and every failed attempt counted as a call.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

use agent_core::model::DEFAULT_MAX_COMPLETION_TOKENS;
use agent_core::testing::TestContext;
use std::collections::VecDeque;
use std::sync::Mutex;

use agent_core::{
    Budget, BudgetLimits, BudgetUsage, CallKind, ChatModel, ChatRequest, Completion, FinishReason,
    Message, ModelError, PriceTable, ScriptedModel, TokenEstimator, TurnContext, Usage,
    async_trait,
};
use agent_runtime::SchedulerContext;
use agent_runtime::scheduler::{QuotaScheduler, quota};

const MODEL: &str = "m";

fn prices() -> PriceTable {
    PriceTable::new().with(MODEL, 1_000_000.0, 2_000_000.0)
}

/// Answers from a script, as is (`ScriptedModel` estimates usage a completion lacks; this one
/// reports none).
struct Script(Mutex<VecDeque<Result<Completion, ModelError>>>);

#[async_trait]
impl ChatModel for Script {
    fn id(&self) -> &str {
        MODEL
    }

    async fn complete(&self, _: ChatRequest) -> Result<Completion, ModelError> {
        self.0.lock().unwrap().pop_front().unwrap()
    }
}

fn model() -> Script {
    let no_usage = Completion {
        message: Message::assistant(MODEL, "no usage reported"),
        usage: None,
        finish_reason: FinishReason::Stop,
        rate_limits: None,
        cached: false,
    };
    Script(Mutex::new(VecDeque::from([
        Ok(Completion::text(MODEL, "hello", Usage::new(7, 3))),
        Ok(no_usage),
        Err(ModelError::InvalidRequest {
            status: Some(400),
            message: "bad".into(),
        }),
        Err(ModelError::QuotaExhausted {
            message: "no credit".into(),
        }),
    ])))
}

fn requests() -> Vec<ChatRequest> {
    let hi = ChatRequest::new(vec![Message::user("hi there")]);
    vec![
        hi.clone().with_max_completion_tokens(50),
        hi.clone(),
        hi.clone().with_max_completion_tokens(10),
        hi,
    ]
}

/// The budget after each call, and whether the call succeeded.
async fn run(ctx: &dyn TurnContext, budget: &Budget) -> Vec<(BudgetUsage, bool)> {
    let model = model();
    let mut out = Vec::new();
    for request in requests() {
        let ok = ctx.complete(&model, request, CallKind::Reply).await.is_ok();
        out.push((budget.used(), ok));
    }
    out
}

fn scheduler() -> QuotaScheduler {
    QuotaScheduler::builder().build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_test_context_charges_like_the_scheduler() {
    let test_budget = Budget::with_prices("b", BudgetLimits::UNLIMITED, prices());
    let test = run(
        &TestContext::new().with_budget(test_budget.clone()),
        &test_budget,
    )
    .await;

    let real_budget = Budget::with_prices("b", BudgetLimits::UNLIMITED, prices());
    let ctx = SchedulerContext::new(scheduler(), "c", "agent", real_budget.clone());
    let real = run(&ctx, &real_budget).await;

    assert_eq!(test, real);

    // And the numbers are the documented rule, not just equal.
    let prompt = agent_core::CharsPerToken::default().prompt_tokens(&requests()[1]);
    let reserve = prompt + u64::from(DEFAULT_MAX_COMPLETION_TOKENS);
    assert_eq!(
        DEFAULT_MAX_COMPLETION_TOKENS,
        quota::DEFAULT_MAX_COMPLETION_TOKENS
    );
    assert_eq!((test[0].0.calls, test[0].0.tokens), (1, 10));
    assert_eq!((test[1].0.calls, test[1].0.tokens), (2, 10 + reserve));
    assert_eq!(
        (test[2].0.calls, test[2].0.tokens, test[2].1),
        (3, 10 + reserve, false)
    );
    assert_eq!(
        (test[3].0.calls, test[3].0.tokens, test[3].1),
        (4, 10 + reserve, false)
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_completion_reserve_refuses_the_same_calls() {
    // Room for the prompt, not for the 256-token default reserve.
    let limits = BudgetLimits {
        max_tokens: Some(200),
        ..BudgetLimits::UNLIMITED
    };
    let model = ScriptedModel::new(MODEL)
        .with_responder(|_| Ok(Completion::text(MODEL, "x", Usage::new(1, 1))));
    let request = ChatRequest::new(vec![Message::user("hi")]);

    let test_budget = Budget::new("b", limits);
    let test = TestContext::new()
        .with_budget(test_budget.clone())
        .complete(&model, request.clone(), CallKind::Reply)
        .await;
    let real_budget = Budget::new("b", limits);
    let real = SchedulerContext::new(scheduler(), "c", "agent", real_budget.clone())
        .complete(&model, request, CallKind::Reply)
        .await;
    let shown =
        |r: Result<Completion, agent_core::CallError>| r.map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(shown(test), shown(real));
    assert_eq!(test_budget.used(), real_budget.used());
    assert_eq!(
        model.request_count(),
        0,
        "a refused call never reaches the model"
    );
}
