//! Streams through the scheduler on the paused clock: charged like calls, retried only before the
//! first event, reconciled on completion, error, cancellation and drop; an `LlmAgent` that
//! streams puts its tokens on the chat's event stream.
#![allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly

mod scheduler_support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    Budget, BudgetLimits, CallError, CallKind, ChatModel, ChatRequest, Completion,
    CompletionStream, LlmAgent, ModelError, StreamEvent, Usage, async_trait,
};
use agent_runtime::chat::{ChatEvent, GroupChat};
use agent_runtime::scheduler::{Deadlines, ModelCall, ModelStream, Quota, QuotaScheduler};
use futures::StreamExt;
use scheduler_support::{ExactEstimator, TimedModel, completion, request, server_error};
use tokio_util::sync::CancellationToken;

/// What one attempt of a [`Streaming`] model does.
enum Plan {
    /// `stream` itself fails (an HTTP error status).
    Refuse(ModelError),
    /// The stream yields these, each after its delay.
    Events(Vec<(Duration, Result<StreamEvent, ModelError>)>),
}

/// A model whose attempts follow a script; counts the requests it received.
#[derive(Clone, Default)]
struct Streaming {
    plans: Arc<Mutex<VecDeque<Plan>>>,
    requests: Arc<AtomicUsize>,
}

impl Streaming {
    fn then(self, plan: Plan) -> Self {
        self.plans.lock().unwrap().push_back(plan);
        self
    }

    /// An attempt streaming `parts` one second apart, then the completion with `usage`.
    fn reply(self, parts: &[&str], usage: Option<Usage>) -> Self {
        let mut events: Vec<_> = parts
            .iter()
            .map(|p| {
                (
                    Duration::from_secs(1),
                    Ok(StreamEvent::TextDelta((*p).to_owned())),
                )
            })
            .collect();
        let mut done = Completion::text("model", parts.concat(), Usage::new(0, 0));
        done.usage = usage;
        done.message.usage = usage;
        events.push((Duration::ZERO, Ok(StreamEvent::Completed(done))));
        self.then(Plan::Events(events))
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ChatModel for Streaming {
    fn id(&self) -> &str {
        "test/stream"
    }

    async fn complete(&self, _: ChatRequest) -> Result<Completion, ModelError> {
        Err(ModelError::InvalidRequest {
            status: None,
            message: "this test model only streams".into(),
        })
    }

    async fn stream(&self, _: ChatRequest) -> Result<CompletionStream, ModelError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let plan = self.plans.lock().unwrap().pop_front();
        let events = match plan {
            Some(Plan::Refuse(error)) => return Err(error),
            Some(Plan::Events(events)) => events,
            None => panic!("the model was called more often than scripted"),
        };
        Ok(futures::stream::iter(events)
            .then(|(delay, event)| async move {
                tokio::time::sleep(delay).await;
                event
            })
            .boxed())
    }
}

fn scheduler(quota: Quota) -> QuotaScheduler {
    QuotaScheduler::builder()
        .quota("test/stream", quota)
        .estimator(ExactEstimator)
        .build()
        .unwrap()
}

/// 20 prompt tokens, 30 reserved for the completion.
fn prompt() -> ChatRequest {
    request(20).with_max_completion_tokens(30)
}

async fn open(
    scheduler: &QuotaScheduler,
    model: &Streaming,
    budget: &Budget,
) -> Result<ModelStream, CallError> {
    let call = ModelCall::new(model, prompt(), CallKind::Reply, "c", "a", budget);
    scheduler.call_stream(call).await
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_charged_exactly_like_a_call() {
    let quota = Quota::per_minute().requests(10).tokens(1_000);
    let usage = Usage::new(20, 7);
    let (calls, streams) = (scheduler(quota.clone()), scheduler(quota));
    let called = TimedModel::new(
        agent_core::ScriptedModel::new("test/stream")
            .with_responder(move |_| Ok(completion(usage))),
    );
    let streamed = Streaming::default().reply(&["he", "llo"], Some(usage));
    let (call_budget, stream_budget) = (Budget::unlimited(), Budget::unlimited());

    let call = ModelCall::new(&called, prompt(), CallKind::Reply, "c", "a", &call_budget);
    calls.call(call).await.unwrap();
    let mut stream = open(&streams, &streamed, &stream_budget).await.unwrap();
    // Admitted and reserved before the first event is read.
    assert_eq!(streams.snapshot().keys["test/stream"].in_flight, 1);
    assert_eq!(stream_budget.used().tokens, 50);
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::TextDelta(delta) => text.push_str(&delta),
            StreamEvent::Completed(done) => assert_eq!(done.usage, Some(usage)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, "hello");

    assert_eq!(call_budget.used().calls, stream_budget.used().calls);
    assert_eq!(stream_budget.used().tokens, 27);
    assert_eq!(call_budget.used().tokens, stream_budget.used().tokens);
    let (c, s) = (
        &calls.snapshot().keys["test/stream"],
        &streams.snapshot().keys["test/stream"],
    );
    assert_eq!(
        (c.calls, c.attempts, c.succeeded, c.in_flight),
        (s.calls, s.attempts, s.succeeded, s.in_flight)
    );
    assert_eq!(
        (c.prompt_tokens, c.completion_tokens),
        (s.prompt_tokens, s.completion_tokens)
    );
    assert_eq!(s.in_flight, 0);
    // The stream took 2 s, the call none: a token bucket refills meanwhile. Compare what is
    // left after the refill both would see at the same instant.
    tokio::time::advance(Duration::from_secs(60)).await;
    let (c, s) = (
        &calls.snapshot().keys["test/stream"],
        &streams.snapshot().keys["test/stream"],
    );
    assert_eq!(c.available_tokens, s.available_tokens);
    assert_eq!(c.available_requests, s.available_requests);
}

#[tokio::test(start_paused = true)]
async fn without_reported_usage_a_stream_charges_the_prompt_and_what_arrived() {
    let scheduler = scheduler(Quota::per_minute().requests(10).tokens(1_000));
    let model = Streaming::default().reply(&["he", "llo"], None);
    let budget = Budget::unlimited();
    let done = open(&scheduler, &model, &budget)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(done.usage, None);
    // 20 prompt tokens + "hello" (5, one token a character): not the 30-token reservation.
    assert_eq!(budget.used().tokens, 25);
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!((key.succeeded, key.in_flight), (1, 0));
    // Estimates are not reported usage.
    assert_eq!((key.prompt_tokens, key.completion_tokens), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_settles_its_budget_and_frees_its_slot() {
    let scheduler = scheduler(Quota::per_minute().requests(10).max_in_flight(1));
    let model = Streaming::default()
        .reply(&["hel", "lo"], Some(Usage::new(20, 5)))
        .reply(&["next"], Some(Usage::new(20, 4)));
    let budget = Budget::unlimited();
    let mut stream = open(&scheduler, &model, &budget).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        StreamEvent::TextDelta("hel".into())
    );

    // A second call waits for the only in-flight slot.
    let waiting = {
        let (scheduler, model, budget) = (scheduler.clone(), model.clone(), budget.clone());
        tokio::spawn(async move {
            let done = open(&scheduler, &model, &budget)
                .await?
                .completion()
                .await?;
            Ok::<_, CallError>(done.message.text().unwrap().to_owned())
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!((key.in_flight, key.queued), (1, 1));
    assert!(!waiting.is_finished());

    drop(stream);
    // Settled at once: the prompt and the 3 tokens that arrived, not the 50 reserved (the
    // queued call holds its own 50-token reservation).
    assert_eq!(budget.used().calls, 2);
    assert_eq!(budget.used().tokens, 23 + 50);
    assert_eq!(waiting.await.unwrap().unwrap(), "next");
    assert_eq!(budget.used().tokens, 23 + 24);
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!((key.in_flight, key.queued, key.succeeded), (0, 0, 1));
    assert_eq!(model.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_first_event_is_retried() {
    let scheduler = scheduler(Quota::per_minute().requests(10));
    let model = Streaming::default()
        // Refused outright, then cut before anything arrived: both retried.
        .then(Plan::Refuse(server_error()))
        .then(Plan::Events(vec![(Duration::ZERO, Err(server_error()))]))
        .reply(&["ok"], Some(Usage::new(20, 2)));
    let budget = Budget::unlimited();
    let done = open(&scheduler, &model, &budget)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(done.message.text(), Some("ok"));
    assert_eq!(model.requests(), 3);
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!((key.attempts, key.retries, key.transient_errors), (3, 2, 2));
    // Every attempt that reached the provider is a call; failed ones cost no tokens.
    assert_eq!(budget.used().calls, 3);
    assert_eq!(budget.used().tokens, 22);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_event_is_not_retried() {
    let scheduler = scheduler(Quota::per_minute().requests(10));
    let model = Streaming::default()
        .then(Plan::Events(vec![
            (Duration::ZERO, Ok(StreamEvent::TextDelta("ab".into()))),
            (Duration::from_secs(1), Err(server_error())),
        ]))
        .reply(&["never"], None);
    let budget = Budget::unlimited();
    let mut stream = open(&scheduler, &model, &budget).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        StreamEvent::TextDelta("ab".into())
    );
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, CallError::Model(ModelError::Transient { .. })),
        "{err}"
    );
    assert!(stream.next().await.is_none(), "nothing after the error");
    assert_eq!(model.requests(), 1);
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!(
        (key.retries, key.transient_errors, key.in_flight),
        (0, 1, 0)
    );
    assert_eq!(budget.used().tokens, 22);
}

#[tokio::test(start_paused = true)]
async fn cancelling_mid_stream_ends_it_and_settles() {
    let scheduler = scheduler(Quota::per_minute().requests(10));
    let model = Streaming::default().then(Plan::Events(vec![
        (Duration::ZERO, Ok(StreamEvent::TextDelta("abcd".into()))),
        (
            Duration::from_secs(60),
            Ok(StreamEvent::TextDelta("late".into())),
        ),
    ]));
    let budget = Budget::unlimited();
    let cancel = CancellationToken::new();
    let call =
        ModelCall::new(&model, prompt(), CallKind::Reply, "c", "a", &budget).with_cancel(&cancel);
    let mut stream = scheduler.call_stream(call).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(StreamEvent::TextDelta(_)))
    ));
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        trigger.cancel();
    });
    let started = tokio::time::Instant::now();
    assert!(matches!(
        stream.next().await,
        Some(Err(CallError::Cancelled))
    ));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(stream.next().await.is_none());
    assert_eq!(scheduler.snapshot().keys["test/stream"].in_flight, 0);
    assert_eq!(budget.used().tokens, 24);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_agent_puts_its_tokens_on_the_chat_event_stream() {
    let scheduler = scheduler(Quota::per_minute().requests(10));
    let model = Streaming::default()
        .reply(&["Lis", "bon", "!"], Some(Usage::new(10, 3)))
        .reply(&["Por", "to"], Some(Usage::new(10, 2)));
    let agent = |name: &str| {
        LlmAgent::builder(name, Arc::new(model.clone()))
            .stream(true)
            .build()
            .unwrap()
    };
    let budget = Budget::new("run", BudgetLimits::calls(10));
    let mut chat = GroupChat::builder()
        .participant(agent("a"))
        .participant(agent("b"))
        .scheduler(scheduler.clone())
        .budget(budget.clone())
        .max_turns(2)
        .build()
        .unwrap();
    let events: Vec<ChatEvent> = chat.run_stream("go").collect().await;
    let mut deltas: Vec<(String, String)> = Vec::new();
    let mut messages = Vec::new();
    for event in &events {
        match event {
            ChatEvent::TokenDelta { agent, text } => match deltas.last_mut() {
                Some((last, joined)) if **last == **agent => joined.push_str(text),
                _ => deltas.push((agent.to_string(), text.clone())),
            },
            ChatEvent::Message(m) if m.source() != Some("user") => {
                // Every token of a reply arrives before its message.
                assert_eq!(deltas.last().unwrap().1, m.text().unwrap());
                messages.push(m.text().unwrap().to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(
        deltas,
        [
            ("a".to_owned(), "Lisbon!".to_owned()),
            ("b".to_owned(), "Porto".to_owned())
        ]
    );
    assert_eq!(messages, ["Lisbon!", "Porto"]);
    assert_eq!(budget.used().calls, 2);
    assert_eq!(budget.used().tokens, 25);
    assert_eq!(scheduler.snapshot().keys["test/stream"].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn deadlines_bound_a_stream_retried_before_its_first_event_and_cut_after() {
    let scheduler = QuotaScheduler::builder()
        .quota("test/stream", Quota::per_minute().requests(10))
        .estimator(ExactEstimator)
        .deadlines(Deadlines::new(Duration::from_secs(60)).idle(Duration::from_secs(5)))
        .build()
        .unwrap();
    let model = Streaming::default()
        // Silent for longer than the idle deadline before the first event: retried.
        .then(Plan::Events(vec![(
            Duration::from_secs(10),
            Ok(StreamEvent::TextDelta("slow".into())),
        )]))
        // Then quiet mid-stream: cut, not retried.
        .then(Plan::Events(vec![
            (Duration::ZERO, Ok(StreamEvent::TextDelta("ab".into()))),
            (
                Duration::from_secs(30),
                Ok(StreamEvent::TextDelta("late".into())),
            ),
        ]));
    let budget = Budget::unlimited();
    let start = tokio::time::Instant::now();
    let mut stream = open(&scheduler, &model, &budget).await.unwrap();
    // The idle deadline, then the retry's backoff (under a second).
    let opened = start.elapsed();
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(6)).contains(&opened),
        "{opened:?}"
    );
    let start = tokio::time::Instant::now();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        StreamEvent::TextDelta("ab".into())
    );
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(&err, CallError::Model(ModelError::Transient { message, .. }) if message.contains("idle")),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(stream.next().await.is_none());
    assert_eq!(model.requests(), 2);
    let key = &scheduler.snapshot().keys["test/stream"];
    assert_eq!(
        (key.attempts, key.transient_errors, key.in_flight),
        (2, 2, 0)
    );
    // The first attempt cost a call and no tokens; the second the prompt and "ab".
    assert_eq!(budget.used().calls, 2);
    assert_eq!(budget.used().tokens, 22);
}
