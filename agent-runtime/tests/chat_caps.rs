//! Caps and stop reasons: turns, messages, consecutive auto-replies, the termination condition
//! and predicate, the budget — plus build-time validation and run errors.

mod support;

use agent_core::{
    Budget, BudgetDimension, BudgetLimits, ScriptedModel, StopReason, Termination, ToolCall,
};
use agent_runtime::chat::{
    ChatConfigError, ChatErrorKind, GroupChat, LlmSelector, SpeakerSelection, Task, Transitions,
};
use support::{AlreadyDone, Echo, Failing, Mentions, ModelAgent, Scripted, Silent, sources};

fn echo_model(id: &str) -> ScriptedModel {
    ScriptedModel::new(id.to_owned()).with_responder(|req| {
        Ok(agent_core::Completion::text(
            "m",
            format!("reply to {} messages", req.messages.len()),
            agent_core::Usage::new(5, 2),
        ))
    })
}

#[tokio::test]
async fn max_turns_counts_agent_replies_not_task_messages() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .max_turns(3)
        .build()
        .unwrap();
    let r = chat
        .run(vec![
            agent_core::Message::user("one"),
            agent_core::Message::user("two"),
        ])
        .await
        .unwrap();
    assert_eq!(sources(&r.messages), ["user", "user", "a", "b", "a"]);
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 3 });
    assert_eq!(
        r.stop_reason.to_string(),
        "Maximum number of turns 3 reached."
    );
}

#[tokio::test]
async fn max_messages_counts_task_messages_like_autogen() {
    let model = echo_model("test/m");
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .max_messages(3)
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    // 1 task message + 2 replies = 3 messages; so 2 model calls.
    assert_eq!(sources(&r.messages), ["user", "a", "b"]);
    assert_eq!(r.stop_reason, StopReason::MaxMessages { max: 3, count: 3 });
    assert_eq!(model.request_count(), 2);
    assert_eq!(r.model_calls(), 2);
    assert_eq!(
        r.stop_reason.to_string(),
        "Maximum number of messages 3 reached, current message count: 3"
    );

    // The counter restarts after a stop, and a task alone can reach the cap.
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .max_messages(1)
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(sources(&r.messages), ["user"]);
    assert_eq!(r.stop_reason, StopReason::MaxMessages { max: 1, count: 1 });
}

#[tokio::test]
async fn inner_tool_traffic_is_not_a_message_for_max_messages() {
    #[derive(Debug)]
    struct ToolUser;
    #[async_trait::async_trait]
    impl agent_core::Agent for ToolUser {
        fn name(&self) -> &str {
            "tools"
        }
        async fn reply(
            &self,
            _h: &[agent_core::Message],
            _c: &dyn agent_core::TurnContext,
        ) -> Result<agent_core::AgentReply, agent_core::AgentError> {
            Ok(agent_core::AgentReply {
                messages: vec![
                    agent_core::Message::tool_calls("tools", vec![ToolCall::new("1", "f", "{}")]),
                    agent_core::Message::assistant("tools", "done"),
                ],
                from_human: false,
            })
        }
    }
    let mut chat = GroupChat::builder()
        .participant(ToolUser)
        .max_messages(3)
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(
        r.messages.len(),
        5,
        "task + two replies of two messages each"
    );
    assert_eq!(r.stop_reason, StopReason::MaxMessages { max: 3, count: 3 });
}

#[tokio::test]
async fn consecutive_auto_reply_cap_stops_when_the_capped_agent_is_next() {
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a").with_cap(2))
        .participant(Echo::new("b"))
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a", "b"]);
    assert_eq!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply {
            agent: "a".into(),
            max: 2
        }
    );
    // Resuming keeps the counters: a is next and still capped.
    let r = chat.run(Task::Resume).await.unwrap();
    assert!(r.messages.is_empty());
    assert!(matches!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply { .. }
    ));
    // A new task is a new chat (AG2's initiate_chat): the counters start over.
    let r = chat.run("again").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a", "b"]);
}

#[tokio::test]
async fn chat_default_cap_applies_to_agents_without_their_own() {
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a").with_cap(3))
        .participant(Echo::new("b"))
        .max_consecutive_auto_reply(1)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a"]);
    assert_eq!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply {
            agent: "b".into(),
            max: 1
        }
    );

    // Zero: the agent may not auto-reply at all.
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a"))
        .max_consecutive_auto_reply(0)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user"]);
}

#[tokio::test]
async fn a_human_reply_resets_the_auto_reply_counters() {
    let mut chat = GroupChat::builder()
        .participant(Echo::new("bot").with_cap(1))
        .participant(Scripted::new("human", &["ok"]).human())
        .max_turns(8)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 8 });
    assert_eq!(r.messages.len(), 9);

    // Without the human's reset the bot stops at its cap.
    let mut chat = GroupChat::builder()
        .participant(Echo::new("bot").with_cap(1))
        .participant(Scripted::new("script", &["ok"]))
        .max_turns(8)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "bot", "script"]);
}

#[tokio::test]
async fn condition_sees_the_task_first_then_each_reply_delta_and_resets_on_stop() {
    let condition = Mentions::new("a 3");
    let deltas = condition.deltas.clone();
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .termination(condition)
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a"]);
    assert_eq!(
        r.stop_reason,
        StopReason::TextMention { text: "a 3".into() }
    );
    let seen: Vec<Vec<String>> = deltas.lock().unwrap().iter().map(|d| sources(d)).collect();
    assert_eq!(seen, [vec!["user"], vec!["a"], vec!["b"], vec!["a"]]);
    // The condition was reset at the stop, so a resumed run goes on.
    let r = chat.run(Task::Resume).await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 10 });
}

#[tokio::test]
async fn condition_wins_over_max_turns_on_the_same_reply() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .termination(Mentions::new("b 2"))
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(
        r.stop_reason,
        StopReason::TextMention { text: "b 2".into() }
    );
}

#[tokio::test]
async fn a_task_can_meet_the_condition_before_any_turn() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a")])
        .termination(Mentions::new("STOP"))
        .build()
        .unwrap();
    let r = chat.run("STOP now").await.unwrap();
    assert_eq!(sources(&r.messages), ["user"]);
    assert_eq!(
        r.stop_reason,
        StopReason::TextMention {
            text: "STOP".into()
        }
    );
}

#[tokio::test]
async fn a_condition_handed_over_terminated_stops_the_first_run_then_is_reset() {
    // A built-in condition that already fired before the chat got it (checked by hand, or reused
    // from another run): the one way a chat starts with a terminated condition, since the chat
    // resets its condition at every stop, at reset() and at load_state().
    let mut condition = agent_core::termination::MaxMessages::new(1);
    assert!(
        condition
            .check(&[agent_core::Message::user("earlier")])
            .is_some()
    );
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a")])
        .termination(condition)
        .max_turns(1)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::AlreadyTerminated);
    assert!(r.messages.is_empty(), "nothing appended, no agent asked");
    // That stop reset the condition like any other, so the next run is a normal one.
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user"]);
    assert!(matches!(
        r.stop_reason,
        StopReason::MaxMessages { max: 1, count: 1 }
    ));
}

#[tokio::test]
async fn running_with_a_terminated_condition_reports_already_terminated() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a")])
        .termination(AlreadyDone)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::AlreadyTerminated);
    assert!(r.messages.is_empty());
    assert_eq!(
        r.stop_reason.to_string(),
        "The group chat has already terminated."
    );
}

#[tokio::test]
async fn termination_predicate_checks_every_message() {
    let mut chat = GroupChat::builder()
        .participant(Scripted::new("a", &["working", "TERMINATE"]))
        .participant(Echo::new("b"))
        .is_termination_msg(agent_core::Message::is_terminate)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a"]);
    assert_eq!(
        r.stop_reason,
        StopReason::TerminationMessage { source: "a".into() }
    );
}

#[tokio::test]
async fn budget_is_checked_before_each_turn() {
    let model = echo_model("test/m");
    let budget = Budget::new("run", BudgetLimits::calls(3));
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .budget(budget.clone())
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "a"]);
    match &r.stop_reason {
        StopReason::BudgetExhausted(e) => {
            assert_eq!(e.dimension, BudgetDimension::Calls);
            assert_eq!(e.budget, "run");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        r.stop_reason.to_string(),
        "budget exhausted: 3 of 3 model calls (budget 'run')"
    );
    assert_eq!(budget.used().calls, 3);
    assert_eq!(model.request_count(), 3);
}

#[tokio::test]
async fn budget_refusing_a_call_inside_a_reply_stops_the_chat_not_fails_it() {
    let model = echo_model("test/m");
    let budget = Budget::new("run", BudgetLimits::UNLIMITED.with_max_tokens(20));
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .budget(budget)
        .build()
        .unwrap();
    let r = chat.run("a task long enough to need more than a few tokens to send to the model, surely more than twenty of them in total").await.unwrap();
    match &r.stop_reason {
        StopReason::BudgetExhausted(e) => assert_eq!(e.dimension, BudgetDimension::Tokens),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(sources(&r.messages), ["user"]);
    assert_eq!(model.request_count(), 0);
}

#[tokio::test]
async fn selector_calls_count_toward_the_budget_and_usage() {
    let model = echo_model("test/agent");
    let selector = ScriptedModel::new("test/selector").with_responder(|req| {
        // Pick the first offered candidate.
        let prompt = req.messages[0].text().unwrap_or_default();
        let offered = prompt.split("from ['").nth(1).unwrap_or_default();
        let first = offered.split('\'').next().unwrap_or_default().to_owned();
        Ok(agent_core::Completion::text(
            "test/selector",
            first,
            agent_core::Usage::new(50, 1),
        ))
    });
    let budget = Budget::new("run", BudgetLimits::calls(4));
    let mut chat = GroupChat::builder()
        .participant(ModelAgent::new("a", model.clone()))
        .participant(ModelAgent::new("b", model.clone()))
        .participant(ModelAgent::new("c", model.clone()))
        .speaker_selection(SpeakerSelection::Llm(LlmSelector::new(selector.clone())))
        .budget(budget.clone())
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    // Each turn: one selector call + one reply.
    assert_eq!(sources(&r.messages), ["user", "a", "b"]);
    assert!(matches!(r.stop_reason, StopReason::BudgetExhausted(_)));
    assert_eq!(budget.used().calls, 4);
    assert_eq!(r.model_calls(), 4);
    assert_eq!(r.usage.by_agent["group_chat"].calls, 2);
    assert_eq!(r.usage.by_agent["group_chat"].prompt_tokens, 100);
    assert_eq!(r.usage.by_agent["a"].calls, 1);
    assert_eq!(r.usage.by_model["test/selector"].calls, 2);
    assert_eq!(r.usage.by_model["test/agent"].calls, 2);
    assert_eq!(budget.used().tokens, r.usage.total.total_tokens());
}

#[tokio::test]
async fn an_empty_reply_stops_the_chat() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a")])
        .participant(Silent("quiet"))
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a"]);
    assert_eq!(
        r.stop_reason,
        StopReason::EmptyReply {
            agent: "quiet".into()
        }
    );
}

#[tokio::test]
async fn an_agent_failure_is_an_error_that_keeps_the_transcript() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a")])
        .participant(Failing("broken"))
        .build()
        .unwrap();
    let err = chat.run("go").await.unwrap_err();
    match err.kind() {
        ChatErrorKind::Agent { agent, .. } => assert_eq!(agent, "broken"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "agent 'broken' failed: tool server unreachable"
    );
    assert_eq!(sources(err.transcript()), ["user", "a"]);
    assert_eq!(sources(chat.messages()), ["user", "a"]);
}

#[test]
fn builder_rejects_bad_configurations_with_clear_errors() {
    let err = GroupChat::builder().build().unwrap_err();
    assert_eq!(err, ChatConfigError::NoParticipants);

    let err = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("a")])
        .build()
        .unwrap_err();
    assert_eq!(err, ChatConfigError::DuplicateName { name: "a".into() });
    assert!(err.to_string().contains("unique"), "{err}");

    let err = GroupChat::builder()
        .participants([Echo::new("group_chat")])
        .build()
        .unwrap_err();
    assert!(matches!(err, ChatConfigError::NameClash { .. }), "{err}");

    let err = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .transitions(Transitions::allowed([("a", vec!["zed"])]))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "transitions names 'zed', which is not a participant (participants: [\"a\", \"b\"])"
    );

    let err = GroupChat::builder()
        .participants([Echo::new("a")])
        .allow_repeat_for(["b"])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ChatConfigError::UnknownAgent { context: "allow_repeat_for", name, .. } if name == "b")
    );

    for (builder, what) in [
        (GroupChat::builder().max_turns(0), "max_turns"),
        (GroupChat::builder().max_messages(0), "max_messages"),
        (
            GroupChat::builder().speaker_selection(SpeakerSelection::Llm(
                LlmSelector::new(ScriptedModel::new("s")).max_attempts(0),
            )),
            "LlmSelector::max_attempts",
        ),
    ] {
        let err = builder.participant(Echo::new("a")).build().unwrap_err();
        assert_eq!(err, ChatConfigError::Zero { what });
    }

    let err = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .speaker_selection(SpeakerSelection::Handoffs)
        .allow_repeat(false)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ChatConfigError::IncompatibleWithHandoffs { setting } if setting.contains("allow_repeat")),
        "{err}"
    );
    let err = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .speaker_selection(SpeakerSelection::Handoffs)
        .transitions(Transitions::allowed([("a", vec!["b"])]))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ChatConfigError::IncompatibleWithHandoffs {
            setting: ".transitions(..)"
        }
    );
}
