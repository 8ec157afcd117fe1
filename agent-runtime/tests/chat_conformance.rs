//! Conformance with AutoGen-agentchat and AG2 where a user hit a gap: empty tasks, handoffs to
//! the human, the selector's candidate function, a selection function that ends the chat, the
//! selector's own history window, and the smaller API fixes.

mod support;

use std::sync::Arc;

use agent_core::history::LastN;
use agent_core::termination::{HandoffTo, MaxMessages, TextMention};
use agent_core::{
    LlmAgent, Message, ScriptedModel, StopReason, TerminationExt, ToolCall, ToolResult,
};
use agent_runtime::chat::{
    ChatConfigError, ChatErrorKind, GroupChat, LlmSelector, SelectorInput, SpeakerChoice,
    SpeakerSelection, Task, Transitions,
};
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

fn four() -> [Echo; 4] {
    ["agent1", "agent2", "agent3", "agent4"].map(Echo::new)
}

#[tokio::test]
async fn candidate_function_narrows_each_turn_and_one_candidate_makes_no_call() {
    // AutoGen's test_selector_group_chat_custom_candidate_func, with its exact sequence.
    let selector = ScriptedModel::new("test/selector").text("agent3");
    let mut chat = GroupChat::builder()
        .participants(four())
        .speaker_selection(SpeakerSelection::Llm(LlmSelector::new(selector.clone())))
        .candidate_func(|input: &SelectorInput<'_>| {
            let last = input.messages.last().and_then(Message::source);
            match last {
                None => vec!["agent1".into()],
                Some("agent1") => vec!["agent2".into()],
                Some("agent2") => vec!["agent2".into(), "agent3".into()],
                Some("agent3") => vec!["agent4".into()],
                Some(_) => vec!["agent1".into()],
            }
        })
        .termination(MaxMessages::new(6))
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "agent1", "agent2", "agent3", "agent4", "agent1"]
    );
    assert_eq!(
        r.stop_reason.to_string(),
        "Maximum number of messages 6 reached, current message count: 6"
    );
    // Only the two-candidate turn asked the model, and it was offered exactly those two.
    let requests = selector.requests();
    assert_eq!(requests.len(), 1);
    let prompt = requests[0].messages[0].text().unwrap();
    assert!(
        prompt.contains("from ['agent2', 'agent3'] to play"),
        "{prompt}"
    );
}

#[tokio::test]
async fn candidate_function_applies_on_the_first_turn_and_rejects_empty_and_strangers() {
    let mut chat = GroupChat::builder()
        .participants(four())
        .candidate_func(|_: &SelectorInput<'_>| vec!["agent3".into()])
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "agent3", "agent3"]);

    let mut empty = GroupChat::builder()
        .participants(four())
        .candidate_func(|_: &SelectorInput<'_>| Vec::new())
        .build()
        .unwrap();
    let err = empty.run("go").await.unwrap_err();
    assert!(matches!(err.kind(), ChatErrorKind::NoCandidates), "{err}");

    let mut stranger = GroupChat::builder()
        .participants(four())
        .candidate_func(|_: &SelectorInput<'_>| vec!["zed".into()])
        .build()
        .unwrap();
    let err = stranger.run("go").await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ChatErrorKind::UnknownSpeaker { context: "candidate function", name, .. } if name == "zed"
    ));
}

#[tokio::test]
async fn a_selection_function_sees_the_eligible_candidates_and_can_end_the_chat() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let log = seen.clone();
    let mut chat = GroupChat::builder()
        .participants(four())
        .transitions(Transitions::allowed([
            ("agent1", vec!["agent2", "agent3"]),
            ("agent2", vec!["agent4"]),
        ]))
        .select_speaker_with(move |input: &SelectorInput<'_>| {
            log.lock()
                .unwrap()
                .push(input.candidates.iter().map(|c| c.to_string()).collect());
            match input.previous {
                // AG2: a speaker_selection_method returning None ends the chat.
                Some("agent4") => SpeakerChoice::End("agent4 had the last word".into()),
                Some("agent1") => SpeakerChoice::Speaker("agent2".into()),
                _ => SpeakerChoice::Default,
            }
        })
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "agent1", "agent2", "agent4"]);
    assert_eq!(
        r.stop_reason,
        StopReason::Custom("agent4 had the last word".into())
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![
            vec!["agent1", "agent2", "agent3", "agent4"],
            vec!["agent2", "agent3"],
            vec!["agent4"],
            vec![],
        ]
    );
}

#[tokio::test]
async fn the_selector_has_its_own_history_window() {
    // AutoGen's selector `model_context`: the selector sees the last two messages while the
    // agents still see the whole thread.
    let selector = ScriptedModel::new("test/selector")
        .text("agent2")
        .text("agent3")
        .text("agent4");
    let mut chat = GroupChat::builder()
        .participants(four())
        .speaker_selection(SpeakerSelection::Llm(
            LlmSelector::new(selector.clone()).history(LastN::new(2)),
        ))
        .selector_func(|input: &SelectorInput<'_>| {
            input.previous.is_none().then(|| "agent1".to_owned())
        })
        .max_turns(4)
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "agent1", "agent2", "agent3", "agent4"]
    );
    // Agents saw the whole thread: agent4 replied to 4 messages.
    assert_eq!(r.messages[4].text(), Some("agent4 4"));
    let requests = selector.requests();
    assert_eq!(requests.len(), 3);
    let last = requests[2].messages[0].text().unwrap();
    let history = last.split("\n\n").nth(1).unwrap();
    assert_eq!(history, "agent2: agent2 2\nagent3: agent3 3");
}

#[tokio::test]
async fn two_agent_lists_the_initiator_first_and_the_recipient_still_answers() {
    let mut chat = GroupChat::two_agent(Echo::new("student"), Echo::new("teacher"))
        .max_turns(1)
        .build()
        .unwrap();
    assert_eq!(
        chat.participants()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["student", "teacher"]
    );
    let r = chat.run("What is 2 + 2?").await.unwrap();
    assert_eq!(sources(&r.messages), ["student", "teacher"]);
}

#[tokio::test]
async fn send_appends_without_resetting_the_auto_reply_counters() {
    // AG2's send(request_reply=False): the message joins the thread; only a new task resets the
    // consecutive auto-reply counters.
    let mut chat = GroupChat::builder()
        .participant(Echo::new("a").with_cap(2))
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "a"]);
    assert_eq!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply {
            agent: "a".into(),
            max: 2
        }
    );
    chat.send(Message::user("one more thing"));
    let r = chat.run(Task::Resume).await.unwrap();
    assert!(r.messages.is_empty(), "{:?}", sources(&r.messages));
    assert_eq!(chat.messages().len(), 4);
    // A task resets them.
    let r = chat.run("new task").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "a"]);
}

#[tokio::test]
async fn send_introductions_opens_the_first_run_uncounted() {
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .send_introductions(true)
        .max_messages(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["group_chat", "user", "a"]);
    assert_eq!(
        r.messages[0].text(),
        Some(
            "Hello everyone. We have assembled a great team today to answer questions and solve tasks. In attendance are:\n\na: a helps\nb: b helps"
        )
    );
    // The agent saw the introduction (its reply counts the history it was given).
    assert_eq!(r.messages[2].text(), Some("a 2"));
    let r = chat.run("again").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "b"]);
}

#[test]
fn tool_results_have_constructors() {
    let ok = ToolResult::new("c1", "add", "5");
    let err = ToolResult::error("c2", "add", "missing b");
    assert!(!ok.is_error && err.is_error);
    assert_eq!(
        serde_json::to_value(&ok).unwrap(),
        serde_json::json!({"call_id": "c1", "name": "add", "content": "5"})
    );
}
