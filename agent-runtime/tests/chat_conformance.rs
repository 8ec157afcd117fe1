//! Conformance with AutoGen-agentchat and AG2 where a user hit a gap: empty tasks, handoffs to
//! the human, the selector's candidate function, a selection function that ends the chat, the
//! selector's own history window, and the smaller API fixes.

mod support;

use std::sync::Arc;

use agent_core::termination::{HandoffTo, TextMention};
use agent_core::{LlmAgent, Message, ScriptedModel, StopReason, TerminationExt, ToolCall};
use agent_runtime::chat::{ChatConfigError, ChatErrorKind, GroupChat, SpeakerSelection, Task};
use support::{Echo, HandOff, sources};

#[tokio::test]
async fn an_empty_task_on_a_fresh_chat_is_refused_before_any_call() {
    let model = Arc::new(ScriptedModel::new("test/m").text("one").text("two"));
    let agent = LlmAgent::builder("a", model.clone()).build().unwrap();
    let mut chat = GroupChat::builder()
        .participant(agent)
        .max_turns(1)
        .build()
        .unwrap();
    for task in [Task::from(Vec::<Message>::new()), Task::Resume] {
        let err = chat.run(task).await.unwrap_err();
        assert!(
            matches!(err.kind(), ChatErrorKind::NothingToResume),
            "{err}"
        );
        assert!(err.transcript().is_empty());
    }
    assert_eq!(model.request_count(), 0, "no call may be spent on nothing");
    // Once there is a thread, an empty list resumes it.
    chat.run("go").await.unwrap();
    let resumed = chat.run(Vec::<Message>::new()).await.unwrap();
    assert_eq!(sources(&resumed.messages), ["a"]);
}

#[tokio::test]
async fn a_swarm_hands_off_to_the_user_stops_and_resumes_with_the_answer() {
    // AutoGen's human-in-the-loop swarm: the planner hands off to "user", the chat stops with
    // "Handoff to user from planner detected.", and the user's answer comes back as a handoff.
    let model = Arc::new(
        ScriptedModel::new("test/planner")
            .tool_calls(vec![ToolCall::new("c1", "transfer_to_user", "{}")])
            .text("The trip is booked. TERMINATE"),
    );
    let planner = LlmAgent::builder("planner", model.clone())
        .handoff("user", "Ask the user.")
        .build()
        .unwrap();
    let mut chat = GroupChat::builder()
        .participant(planner)
        .participant(Echo::new("booker"))
        .speaker_selection(SpeakerSelection::Handoffs)
        .termination(HandoffTo::new("user").or(TextMention::new("TERMINATE")))
        .build()
        .expect("a handoff target the condition exits on passes build()");
    let first = chat.run("plan a trip").await.unwrap();
    assert_eq!(
        first.stop_reason,
        StopReason::Handoff {
            target: "user".into(),
            source: "planner".into(),
        }
    );
    assert_eq!(
        first.stop_reason.to_string(),
        "Handoff to user from planner detected."
    );
    let second = chat
        .run(Message::handoff("user", "planner", "Paris, in May."))
        .await
        .unwrap();
    assert_eq!(sources(&second.messages), ["user", "planner"]);
    assert_eq!(
        second.stop_reason,
        StopReason::TextMention {
            text: "TERMINATE".into()
        }
    );
    assert_eq!(model.request_count(), 2);
}

#[test]
fn a_handoff_to_the_user_without_a_condition_that_exits_there_fails_build() {
    let model = Arc::new(ScriptedModel::new("test/m"));
    let planner = LlmAgent::builder("planner", model)
        .handoff("user", "Ask the user.")
        .build()
        .unwrap();
    let err = GroupChat::builder()
        .participant(planner)
        .speaker_selection(SpeakerSelection::Handoffs)
        .termination(TextMention::new("TERMINATE"))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ChatConfigError::UnknownHandoffTarget { target, .. } if target == "user"),
        "{err}"
    );
}

#[tokio::test]
async fn an_undeclared_handoff_to_a_stranger_still_fails_with_the_name() {
    // `HandOff` declares no targets, so build() cannot see it; the run names the target.
    let mut chat = GroupChat::builder()
        .participant(HandOff::new("triage", "legal"))
        .participant(Echo::new("billing"))
        .speaker_selection(SpeakerSelection::Handoffs)
        .termination(HandoffTo::new("user"))
        .build()
        .unwrap();
    let err = chat.run("help").await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ChatErrorKind::UnknownSpeaker { context: "handoff", name, .. } if name == "legal"
    ));
}
