//! Running a chat: resume and reset, cancellation (also of a turn stuck in a call), the event
//! stream, results, and save → load → continue.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_core::{Budget, BudgetLimits, ScriptedModel, StopReason};
use agent_runtime::QuotaScheduler;
use agent_runtime::chat::{
    ChatConfigError, ChatEvent, ChatState, GroupChat, GroupChatBuilder, LlmSelector,
    SpeakerSelection, Task,
};
use futures::StreamExt;
use support::{Echo, ModelAgent, Slow, Stuck, sources};

#[tokio::test]
async fn the_turn_counter_restarts_after_each_stop() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .max_turns(3)
        .build()
        .unwrap();
    let first = chat.run("go").await.unwrap();
    assert_eq!(sources(&first.messages), ["user", "a", "b", "a"]);
    let second = chat.run(Task::Resume).await.unwrap();
    assert_eq!(sources(&second.messages), ["b", "a", "b"]);
    assert_eq!(second.stop_reason, StopReason::MaxTurns { max: 3 });
    assert_eq!(chat.messages().len(), 7);
    // Agents always see the whole thread.
    assert_eq!(second.messages[2].text(), Some("b 6"));
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_a_stuck_turn_promptly_keeps_the_transcript_and_charges_the_sent_call() {
    let stuck = Stuck::default();
    let budget = Budget::new("run", BudgetLimits::calls(10));
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .participant(ModelAgent::new("b", stuck.clone()))
        .budget(budget.clone())
        .build()
        .unwrap();
    let handle = chat.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.cancel();
    });
    let mut events = Vec::new();
    let mut stream = chat.run_stream("go");
    while let Some(e) = stream.next().await {
        events.push(e);
    }
    drop(stream);
    let Some(ChatEvent::Finished(result)) = events.pop() else {
        panic!("the stream must end with Finished")
    };
    let r = (*result).unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user", "a"]);
    assert_eq!(stuck.calls.load(Ordering::SeqCst), 1);
    // The call never finished, so no usage is reported; but the request had reached the provider,
    // so the budget keeps the call (the scheduler charges every attempt that was sent). A call
    // cancelled while still queued is refunded instead (scheduler tests).
    assert_eq!(r.model_calls(), 0);
    assert_eq!(budget.used().calls, 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ChatEvent::CallQueued { agent, .. } if &**agent == "b"))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ChatEvent::CallFinished { .. }))
    );
    assert!(matches!(
        events.last(),
        Some(ChatEvent::Stopped(StopReason::Cancelled))
    ));
    assert_eq!(sources(chat.messages()), ["user", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_chat_resumes_with_the_same_speaker_and_its_turn_count() {
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .participant(ModelAgent::new(
            "b",
            Slow {
                delay: Duration::from_secs(10),
            },
        ))
        .max_turns(3)
        .build()
        .unwrap();
    let handle = chat.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.cancel();
    });
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user", "a"]);
    assert!(
        !chat.cancel_handle().is_cancelled(),
        "the cancel was consumed"
    );
    // The turn counter survived the cancellation (AutoGen): 1 turn done, 2 left.
    let r = chat.run(Task::Resume).await.unwrap();
    assert_eq!(sources(&r.messages), ["b", "a"]);
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 3 });
}

#[tokio::test]
async fn a_cancel_before_the_run_stops_it_before_the_first_turn() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .max_turns(2)
        .build()
        .unwrap();
    chat.cancel_handle().cancel();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user"]);
    let r = chat.run(Task::Resume).await.unwrap();
    assert_eq!(sources(&r.messages), ["a", "b"]);
}

#[tokio::test]
async fn the_event_stream_reports_messages_speakers_calls_and_the_result_in_order() {
    let model = ScriptedModel::new("test/m").text("hello").text("bye");
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .max_turns(2)
        .build()
        .unwrap();
    let events: Vec<ChatEvent> = chat.run_stream("go").collect().await;
    let shape: Vec<String> = events
        .iter()
        .map(|e| match e {
            ChatEvent::Message(m) => format!("msg {}", m.source().unwrap()),
            ChatEvent::SpeakerSelected { name } => format!("speaker {name}"),
            ChatEvent::CallQueued { agent, key } => format!("queued {agent} {key}"),
            ChatEvent::CallAdmitted { agent, .. } => format!("admitted {agent}"),
            ChatEvent::CallFinished {
                agent,
                usage,
                attempts,
                error,
                ..
            } => format!(
                "finished {agent} {} {attempts} {}",
                usage.is_some(),
                error.is_none()
            ),
            ChatEvent::Stopped(r) => format!("stopped {r}"),
            ChatEvent::Finished(r) => {
                format!("result {}", r.as_ref().as_ref().unwrap().messages.len())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "msg user",
            "speaker a",
            "queued a test/m",
            "admitted a",
            "finished a true 1 true",
            "msg a",
            "speaker b",
            "queued b test/m",
            "admitted b",
            "finished b true 1 true",
            "msg b",
            "stopped Maximum number of turns 2 reached.",
            "result 3",
        ]
    );
}

#[tokio::test]
async fn results_report_usage_per_agent_and_model_with_cost() {
    let prices = agent_core::PriceTable::new().with("test/m", 1000.0, 2000.0);
    let budget = Budget::with_prices("run", BudgetLimits::UNLIMITED, prices);
    let model = ScriptedModel::new("test/m").with_responder(|_| {
        Ok(agent_core::Completion::text(
            "test/m",
            "ok",
            agent_core::Usage::new(100, 10),
        ))
    });
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .participant(Echo::new("c"))
        .budget(budget.clone())
        .max_turns(5)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.model_calls(), 4);
    assert_eq!(r.usage.by_agent["a"].calls, 2);
    assert_eq!(r.usage.by_agent["b"].calls, 2);
    assert!(!r.usage.by_agent.contains_key("c"));
    assert_eq!(r.usage.by_model["test/m"].prompt_tokens, 400);
    assert_eq!(r.usage.total.completion_tokens, 40);
    // 4 × (100 × $1000/M + 10 × $2000/M) = 4 × $0.12
    assert!((r.cost_usd() - 0.48).abs() < 1e-9, "{}", r.cost_usd());
    assert!((budget.used().cost_usd - r.cost_usd()).abs() < 1e-9);
}

#[tokio::test]
async fn reset_starts_over() {
    let condition = support::Mentions::new("never");
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b"), Echo::new("c")])
        .termination(condition)
        .max_turns(2)
        .build()
        .unwrap();
    chat.run("go").await.unwrap();
    chat.reset();
    assert!(chat.messages().is_empty());
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b"]);
    assert_eq!(r.messages[2].text(), Some("b 2"));
}

fn picker() -> ScriptedModel {
    // A deterministic selector: picks the candidate whose position is the thread length modulo
    // the number of candidates.
    ScriptedModel::new("test/selector").with_responder(|req| {
        let prompt = req.messages[0].text().unwrap_or_default();
        let list = prompt
            .split("from [")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap_or_default();
        let names: Vec<&str> = list.split(", ").map(|n| n.trim_matches('\'')).collect();
        let lines = prompt.lines().filter(|l| l.contains(": ")).count();
        Ok(agent_core::Completion::text(
            "test/selector",
            names[lines % names.len()].to_owned(),
            agent_core::Usage::new(1, 1),
        ))
    })
}

fn chat_with(selection: SpeakerSelection) -> GroupChatBuilder {
    GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b"), Echo::new("c")])
        .speaker_selection(selection)
        .conversation_id("conv-7")
}

#[tokio::test]
async fn save_load_continue_matches_an_uninterrupted_run() {
    let selections = [
        SpeakerSelection::RoundRobin,
        SpeakerSelection::Random { seed: 9 },
        SpeakerSelection::Llm(LlmSelector::new(picker())),
    ];
    for selection in selections {
        let label = format!("{selection:?}");
        let mut whole = chat_with(selection.clone()).max_turns(8).build().unwrap();
        let uninterrupted = whole.run("go").await.unwrap().messages;

        let mut first = chat_with(selection.clone()).max_turns(4).build().unwrap();
        first.run("go").await.unwrap();
        let json = serde_json::to_string(&first.save_state()).unwrap();
        drop(first);

        // A "new process": a fresh chat from the JSON, built without a conversation id.
        let state: ChatState = serde_json::from_str(&json).unwrap();
        let mut second = GroupChat::builder()
            .participants([Echo::new("a"), Echo::new("b"), Echo::new("c")])
            .speaker_selection(selection)
            .max_turns(4)
            .load_state(state)
            .build()
            .unwrap();
        assert_eq!(second.conversation_id(), "conv-7");
        second.run(Task::Resume).await.unwrap();
        assert_eq!(second.messages(), &uninterrupted[..], "{label}");
        assert_eq!(second.messages().len(), 9, "{label}");
    }
}

#[test]
fn loading_a_state_that_does_not_fit_is_rejected() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .build()
        .unwrap();
    let mut state = chat.save_state();
    state.previous_speaker = Some("zed".into());
    let err = chat.load_state(state.clone()).unwrap_err();
    assert_eq!(
        err,
        ChatConfigError::StateUnknownAgent {
            field: "previous_speaker",
            name: "zed".into(),
            participants: vec!["a".into(), "b".into()],
        }
    );
    assert!(err.to_string().contains("'zed'"), "{err}");
    state.previous_speaker = None;
    state.version = 99;
    assert_eq!(
        chat.load_state(state).unwrap_err(),
        ChatConfigError::StateVersion {
            found: 99,
            supported: ChatState::VERSION
        }
    );
}

#[tokio::test]
async fn many_chats_run_as_plain_futures_on_one_task() {
    let model = Arc::new(ScriptedModel::new("test/m").with_responder(|_| {
        Ok(agent_core::Completion::text(
            "test/m",
            "ok",
            agent_core::Usage::new(1, 1),
        ))
    }));
    let chats: Vec<GroupChat> = (0..50)
        .map(|_| {
            GroupChat::builder()
                .participant(ModelAgent::new("a", model.clone()))
                .participant(Echo::new("b"))
                .max_turns(4)
                .build()
                .unwrap()
        })
        .collect();
    let results = futures::future::join_all(
        chats
            .into_iter()
            .map(|mut c| async move { c.run("go").await.unwrap() }),
    )
    .await;
    assert!(results.iter().all(|r| r.messages.len() == 5));
    assert_eq!(model.request_count(), 100);
}

#[tokio::test(start_paused = true)]
async fn cancel_while_a_turn_waits_in_the_quota_queue_refunds_it_and_frees_the_queue() {
    use agent_runtime::scheduler::Quota;
    // One request per minute: the first reply takes it, the second waits in the queue.
    let model = ScriptedModel::new("test/m").text("one").text("two");
    let scheduler = QuotaScheduler::builder()
        .quota("test/m", Quota::per_minute().requests(1))
        .build()
        .unwrap();
    let budget = Budget::new("run", BudgetLimits::calls(10));
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .scheduler(scheduler.clone())
        .budget(budget.clone())
        .build()
        .unwrap();
    let handle = chat.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.cancel();
    });
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user", "a"]);
    // Only the first call reached the provider and only it is charged; the queued one was
    // refunded and left the queue.
    assert_eq!(model.request_count(), 1);
    assert_eq!(budget.used().calls, 1);
    let key = &scheduler.snapshot().keys["test/m"];
    assert_eq!(key.queued, 0);
    assert_eq!(key.in_flight, 0);
}

#[tokio::test]
async fn a_loaded_state_with_impossible_counters_is_rejected_not_overflowed() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .max_turns(3)
        .build()
        .unwrap();
    chat.run("go").await.unwrap();
    let good = chat.save_state();

    let mut state = good.clone();
    state.turns = u32::MAX;
    let err = chat.load_state(state).unwrap_err();
    assert!(err.to_string().contains("turns"), "{err}");

    let mut state = good.clone();
    state.counted_messages = u64::MAX;
    assert!(chat.load_state(state).is_err());

    let mut state = good.clone();
    state.consecutive_auto_replies.insert("a".into(), u32::MAX);
    assert!(chat.load_state(state).is_err());

    // The chat is unchanged by the rejected loads and still runs within its cap.
    let r = chat.run("again").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 3 });
}

fn model_chat(model: &ScriptedModel, budget: Budget) -> GroupChatBuilder {
    GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .conversation_id("conv-budget")
        .budget(budget)
}

#[tokio::test]
async fn a_restored_chat_keeps_spending_from_its_saved_budget() {
    let model = ScriptedModel::new("test/m").with_responder(|_| {
        Ok(agent_core::Completion::text(
            "test/m",
            "ok",
            agent_core::Usage::new(3, 1),
        ))
    });
    let mut first = model_chat(&model, Budget::new("run", BudgetLimits::calls(5)))
        .max_turns(3)
        .build()
        .unwrap();
    first.run("go").await.unwrap();
    assert_eq!(first.budget().used().calls, 3);
    let json = serde_json::to_string(&first.save_state()).unwrap();
    drop(first);

    // A "new process": a fresh budget with the same caps, under a fresh parent.
    let root = Budget::new("process", BudgetLimits::UNLIMITED);
    let budget = root.child("run", BudgetLimits::calls(5));
    let state: ChatState = serde_json::from_str(&json).unwrap();
    let mut second = model_chat(&model, budget.clone())
        .max_turns(10)
        .load_state(state)
        .build()
        .unwrap();
    assert_eq!(budget.used().calls, 3);
    assert_eq!(
        root.used().calls,
        3,
        "restored usage counts into the new ancestors"
    );
    let r = second.run(Task::Resume).await.unwrap();
    assert_eq!(r.model_calls(), 2, "only what is left of the 5 calls");
    assert!(matches!(r.stop_reason, StopReason::BudgetExhausted(_)));
    assert_eq!(model.request_count(), 5);
    assert_eq!(budget.used().calls, 5);
    assert_eq!(budget.used().tokens, 20);
}
