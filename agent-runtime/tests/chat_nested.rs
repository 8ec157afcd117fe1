//! Nested chats on child budgets, summaries, and sequential chats with carryover.

mod support;

use std::time::Duration;

use agent_core::{Agent, AgentError, Budget, BudgetLimits, Message, ScriptedModel, StopReason};
use agent_runtime::chat::{
    ChatError, ChatErrorKind, ChatSpec, GroupChat, NestedChatAgent, SummaryMethod, Task,
    run_sequential,
};
use support::{Echo, ModelAgent, Stuck, sources};

fn counting_model() -> ScriptedModel {
    ScriptedModel::new("test/m").with_responder(|req| {
        Ok(agent_core::Completion::text(
            "test/m",
            format!("thought {}", req.messages.len()),
            agent_core::Usage::new(10, 2),
        ))
    })
}

/// A nested agent whose inner chat is two model agents talking without any cap of their own.
fn researcher(model: &ScriptedModel, limits: BudgetLimits) -> NestedChatAgent {
    let model = model.clone();
    NestedChatAgent::new("research", move |history: &[Message]| {
        let topic = history
            .last()
            .and_then(|m| m.text())
            .unwrap_or("")
            .to_owned();
        (
            GroupChat::builder()
                .participant(ModelAgent::new("searcher", model.clone()))
                .participant(ModelAgent::new("critic", model.clone())),
            Task::from(format!("research: {topic}")),
        )
    })
    .budget_limits(limits)
}

#[tokio::test]
async fn a_nested_chat_never_exceeds_its_carve_out_and_the_parent_pays_only_what_it_used() {
    let model = counting_model();
    let parent = Budget::new("outer", BudgetLimits::calls(10));
    let nested = std::sync::Arc::new(researcher(&model, BudgetLimits::calls(3)));
    let mut chat = GroupChat::builder()
        .participant(nested.clone())
        .participant(Echo::new("writer"))
        .budget(parent.clone())
        .max_turns(3)
        .build()
        .unwrap();
    let r = chat.run("queues").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "research", "writer", "research"]
    );
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 3 });
    // Each inner run stopped at its own cap of 3 calls, and said so.
    let reply = r.messages[1].text().unwrap();
    assert!(
        reply.ends_with(
            "[nested chat 'research' stopped early: budget exhausted: 3 of 3 model calls (budget 'research')]"
        ),
        "{reply}"
    );
    let inner = nested.last_result().unwrap();
    assert_eq!(inner.model_calls(), 3);
    assert_eq!(
        sources(&inner.messages),
        ["user", "searcher", "critic", "searcher"]
    );
    // The parent was charged exactly what the inner chats used; the outer result sees the hidden
    // calls under the nested agent's name.
    assert_eq!(model.request_count(), 6);
    assert_eq!(parent.used().calls, 6);
    assert_eq!(r.usage.by_agent["research"].calls, 6);
    assert_eq!(r.model_calls(), 6);
    assert_eq!(parent.used().tokens, r.usage.total.total_tokens());
}

#[tokio::test]
async fn unused_carve_out_stays_with_the_parent() {
    let model = counting_model();
    let parent = Budget::new("outer", BudgetLimits::calls(10));
    let nested = NestedChatAgent::new("research", {
        let model = model.clone();
        move |_h: &[Message]| {
            (
                GroupChat::builder()
                    .participant(ModelAgent::new("searcher", model.clone()))
                    .max_turns(1),
                Task::from("look it up"),
            )
        }
    })
    .budget_limits(BudgetLimits::calls(5));
    let mut chat = GroupChat::builder()
        .participant(nested)
        .budget(parent.clone())
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.messages[1].text(), Some("thought 1"));
    assert_eq!(parent.used().calls, 2);
    assert_eq!(parent.remaining_calls(), 8);
}

#[tokio::test]
async fn the_parents_remaining_budget_binds_the_nested_chat_and_stops_the_outer_chat() {
    let model = counting_model();
    let parent = Budget::new("outer", BudgetLimits::calls(4));
    let mut chat = GroupChat::builder()
        .participant(researcher(&model, BudgetLimits::calls(3)))
        .participant(Echo::new("writer"))
        .budget(parent.clone())
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("queues").await.unwrap();
    // research (3 calls), writer, research (1 call, then the parent is spent).
    assert_eq!(sources(&r.messages), ["user", "research", "writer"]);
    match &r.stop_reason {
        StopReason::BudgetExhausted(e) => assert_eq!(e.budget, "outer"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(parent.used().calls, 4);
    assert_eq!(model.request_count(), 4);
}

#[tokio::test]
async fn nested_reply_is_the_inner_reflection_summary_charged_to_the_child() {
    let model = counting_model();
    let reflector = ScriptedModel::new("test/reflect").text("queues are fair");
    let nested = NestedChatAgent::new("research", {
        let model = model.clone();
        let reflector = reflector.clone();
        move |_h: &[Message]| {
            (
                GroupChat::builder()
                    .participant(ModelAgent::new("searcher", model.clone()))
                    .max_turns(2)
                    .summary_method(SummaryMethod::reflection(reflector.clone())),
                Task::from("look it up"),
            )
        }
    });
    let parent = Budget::new("outer", BudgetLimits::calls(10));
    let mut chat = GroupChat::builder()
        .participant(nested)
        .budget(parent.clone())
        .max_turns(1)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.messages[1].text(), Some("queues are fair"));
    let request = &reflector.requests()[0];
    let last = request.messages.last().unwrap();
    assert_eq!(last.text(), Some(SummaryMethod::REFLECTION_PROMPT));
    assert_eq!(request.messages.len(), 4, "inner thread of 3 + the prompt");
    assert_eq!(parent.used().calls, 3);
    assert_eq!(r.usage.by_model["test/reflect"].calls, 1);
}

#[tokio::test]
async fn reflection_calls_are_reported_under_the_chat_name() {
    let reflector = ScriptedModel::new("test/reflect").text("summary");
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .name("team")
        .max_turns(1)
        .summary_method(SummaryMethod::reflection(reflector.clone()))
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.summary, "summary");
    assert_eq!(r.usage.by_agent["team"].calls, 1);

    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .max_turns(2)
        .summary_method(SummaryMethod::custom(|m, stop| {
            format!("{} messages, {stop}", m.len())
        }))
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.summary, "3 messages, Maximum number of turns 2 reached.");
}

#[tokio::test]
async fn a_nested_agent_outside_a_runtime_context_fails_clearly() {
    let agent = researcher(&counting_model(), BudgetLimits::UNLIMITED);
    let ctx = agent_core::testing::TestContext::new();
    let err = agent.reply(&[Message::user("x")], &ctx).await.unwrap_err();
    assert!(err.to_string().contains("SchedulerContext"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_outer_chat_cancels_the_inner_one() {
    let stuck = Stuck::default();
    let nested = NestedChatAgent::new("research", {
        let stuck = stuck.clone();
        move |_h: &[Message]| {
            (
                GroupChat::builder().participant(ModelAgent::new("searcher", stuck.clone())),
                Task::from("look"),
            )
        }
    });
    let parent = Budget::new("outer", BudgetLimits::calls(10));
    let mut chat = GroupChat::builder()
        .participant(nested)
        .budget(parent.clone())
        .build()
        .unwrap();
    let handle = chat.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.cancel();
    });
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user"]);
    // The inner call had reached the (stuck) provider, so it stays charged to the parent through
    // the child budget; nothing else was spent.
    assert_eq!(stuck.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(parent.used().calls, 1);
}

#[tokio::test]
async fn sequential_chats_carry_every_earlier_summary_forward() {
    let build = |name: &'static str| {
        GroupChat::builder()
            .participant(support::Scripted::new(name, &[&format!("{name} result")]))
            .max_turns(1)
            .build()
            .unwrap()
    };
    let results = run_sequential([
        ChatSpec::new(build("first"), "step one"),
        ChatSpec::new(build("second"), "step two"),
        ChatSpec::new(build("third"), Message::user("step three")),
    ])
    .await
    .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].messages[0].text(), Some("step one"));
    assert_eq!(
        results[1].messages[0].text(),
        Some("step two\nContext: \nfirst result")
    );
    assert_eq!(
        results[2].messages[0].text(),
        Some("step three\nContext: \nfirst result\nsecond result")
    );
    assert_eq!(results[2].summary, "third result");
}

#[tokio::test]
async fn a_failing_chat_in_a_sequence_keeps_the_earlier_results() {
    let ok = GroupChat::builder()
        .participant(Echo::new("a"))
        .max_turns(1)
        .build()
        .unwrap();
    let bad = GroupChat::builder()
        .participant(support::Failing("broken"))
        .build()
        .unwrap();
    let err = run_sequential([ChatSpec::new(ok, "one"), ChatSpec::new(bad, "two")])
        .await
        .unwrap_err();
    assert_eq!(err.index, 1);
    assert_eq!(err.completed.len(), 1);
    assert_eq!(
        err.error.transcript()[0].text(),
        Some("two\nContext: \na 1")
    );
}

#[tokio::test]
async fn an_outer_budget_named_like_the_nested_agent_still_stops_the_outer_chat() {
    let model = counting_model();
    // The outer budget has the nested agent's name: only identity tells the budgets apart.
    let parent = Budget::new("research", BudgetLimits::calls(4));
    let mut chat = GroupChat::builder()
        .participant(researcher(&model, BudgetLimits::calls(3)))
        .participant(Echo::new("writer"))
        .budget(parent.clone())
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("queues").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "research", "writer"]);
    match &r.stop_reason {
        StopReason::BudgetExhausted(e) => {
            assert_eq!(e.budget, "research");
            assert_eq!(e.limit, 4.0);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(parent.used().calls, 4);
}

#[tokio::test]
async fn a_failed_inner_chat_keeps_its_typed_error_as_the_source() {
    let nested = NestedChatAgent::new("research", |_h: &[Message]| {
        (
            GroupChat::builder().participant(support::Failing("searcher")),
            Task::from("look it up"),
        )
    });
    let mut chat = GroupChat::builder().participant(nested).build().unwrap();
    let err = chat.run("go").await.unwrap_err();
    let ChatErrorKind::Agent { agent, source } = err.kind() else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(agent, "research");
    assert!(matches!(source, AgentError::Failed { .. }), "{source:?}");
    let inner = std::error::Error::source(source)
        .and_then(|e| e.downcast_ref::<ChatError>())
        .expect("the inner ChatError is the source");
    assert!(matches!(inner.kind(), ChatErrorKind::Agent { agent, .. } if agent == "searcher"));
    assert_eq!(inner.transcript().len(), 1, "the inner transcript survives");
    assert!(
        source.to_string().contains("tool server unreachable"),
        "{source}"
    );
}
