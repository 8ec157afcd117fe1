//! Speaker selection: every method, the rules that narrow it, and the LLM selector's retries and
//! fallback.

mod support;

use std::sync::Arc;

use agent_core::{LlmAgent, Message, ScriptedModel, StopReason};
use agent_runtime::chat::{
    ChatConfigError, ChatErrorKind, GroupChat, LlmSelector, SelectorInput, SpeakerSelection, Task,
    Transitions,
};
use support::{Echo, HandOff, ScriptInput, sources};

fn three() -> [Echo; 3] {
    [Echo::new("a"), Echo::new("b"), Echo::new("c")]
}

#[tokio::test]
async fn round_robin_rotates_and_resumes_where_it_stopped() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .max_turns(2)
        .build()
        .unwrap();
    let first = chat.run("go").await.unwrap();
    assert_eq!(sources(&first.messages), ["user", "a", "b"]);
    let resumed = chat.run(Task::Resume).await.unwrap();
    assert_eq!(sources(&resumed.messages), ["c", "a"]);
    // A new task continues the rotation too (AutoGen keeps the manager's state until reset).
    let again = chat.run("more").await.unwrap();
    assert_eq!(sources(&again.messages), ["user", "b", "c"]);
    chat.reset();
    let fresh = chat.run("over").await.unwrap();
    assert_eq!(sources(&fresh.messages), ["user", "a", "b"]);
}

#[tokio::test]
async fn round_robin_follows_the_transition_graph() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .transitions(Transitions::allowed([
            ("a", vec!["c"]),
            ("c", vec!["b", "a"]),
            ("b", vec!["a"]),
        ]))
        .max_turns(5)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    // After c both a and b are allowed; rotation order after c wraps to a.
    assert_eq!(sources(&r.messages), ["user", "a", "c", "a", "c", "a"]);
}

#[tokio::test]
async fn a_speaker_without_allowed_successor_ends_the_chat() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .transitions(Transitions::allowed([("a", vec!["b"]), ("b", vec!["c"])]))
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b", "c"]);
    assert_eq!(
        r.stop_reason,
        StopReason::NoEligibleSpeaker { after: "c".into() }
    );
    assert_eq!(r.stop_reason.to_string(), "No eligible speaker after 'c'");
}

#[tokio::test]
async fn disallowed_transitions_remove_successors() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .transitions(Transitions::disallowed([
            ("a", vec!["b"]),
            ("c", vec!["b"]),
        ]))
        .allow_repeat(false)
        .max_turns(4)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "c", "a", "c"]);
}

#[tokio::test]
async fn seeded_random_is_reproducible_and_respects_the_repeat_rule() {
    let run = |seed| async move {
        let mut chat = GroupChat::builder()
            .participants(three())
            .speaker_selection(SpeakerSelection::Random { seed })
            .allow_repeat_for(["a"])
            .max_turns(40)
            .build()
            .unwrap();
        sources(&chat.run("go").await.unwrap().messages[1..])
    };
    let x = run(42).await;
    assert_eq!(x, run(42).await, "same seed, same speakers");
    assert_ne!(x, run(43).await, "another seed, another order");
    for pair in x.windows(2) {
        assert!(
            pair[0] != pair[1] || pair[0] == "a",
            "only a may repeat: {x:?}"
        );
    }
    for who in ["a", "b", "c"] {
        assert!(x.iter().any(|s| s == who), "{who} never spoke in {x:?}");
    }
}

/// Answers with the last speaker named in the selector prompt's history — always the previous
/// speaker, which repeats are not allowed to pick.
fn previous_speaker_answer(request: &agent_core::ChatRequest) -> String {
    let prompt = request.messages[0].text().unwrap_or_default();
    let history = prompt.split("\n\n").nth(1).unwrap_or_default();
    history
        .lines()
        .last()
        .and_then(|l| l.split(':').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn llm_selector_picks_the_named_agent_with_roles_participants_and_history() {
    let selector = ScriptedModel::new("test/selector")
        .text("I choose b.")
        .text("c");
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Llm(LlmSelector::new(selector.clone())))
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("plan it").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "b", "c"]);
    let requests = selector.requests();
    assert_eq!(requests.len(), 2);
    let first = requests[0].messages[0].text().unwrap();
    assert!(
        first.contains("a: a helps\nb: b helps\nc: c helps"),
        "{first}"
    );
    assert!(first.contains("from ['a', 'b', 'c'] to play"), "{first}");
    assert!(first.contains("user: plan it"), "{first}");
    // Repeats are off by default for LLM selection: b is not offered after b.
    let second = requests[1].messages[0].text().unwrap();
    assert!(second.contains("from ['a', 'c'] to play"), "{second}");
    assert!(second.contains("b: b 1"), "{second}");
    // The selector calls are reported under the chat's name.
    assert_eq!(r.usage.by_agent["group_chat"].calls, 2);
    assert_eq!(r.usage.by_model["test/selector"].calls, 2);
}

#[tokio::test]
async fn llm_selector_retries_with_feedback_on_bad_answers() {
    let selector = ScriptedModel::new("test/selector")
        .text("nobody fits")
        .text("a or c")
        .text("c");
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Llm(LlmSelector::new(selector.clone())))
        .max_turns(1)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "c"]);
    let requests = selector.requests();
    assert_eq!(requests.len(), 3);
    let second = &requests[1].messages;
    assert_eq!(second.len(), 3);
    assert_eq!(second[1].text(), Some("nobody fits"));
    assert!(second[2].text().unwrap().contains("No participant name"));
    let third = &requests[2].messages;
    assert_eq!(third.len(), 5);
    assert!(
        third[4]
            .text()
            .unwrap()
            .contains("several participants (['a', 'c'])")
    );
}

#[tokio::test]
async fn llm_selector_makes_no_call_with_a_single_candidate() {
    let selector = ScriptedModel::new("test/selector").text("b");
    let mut chat = GroupChat::builder()
        .participants([Echo::new("a"), Echo::new("b")])
        .speaker_selection(SpeakerSelection::Llm(LlmSelector::new(selector.clone())))
        .max_turns(4)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "b", "a", "b", "a"]);
    // Only the first turn had two candidates.
    assert_eq!(selector.request_count(), 1);
}

#[tokio::test]
async fn llm_selector_fallback_never_returns_the_excluded_previous_speaker() {
    // microsoft/autogen#7471: a selector that insists on the previous speaker must not livelock.
    let selector = ScriptedModel::new("test/selector").with_responder(|req| {
        Ok(agent_core::Completion::text(
            "test/selector",
            previous_speaker_answer(req),
            agent_core::Usage::new(10, 1),
        ))
    });
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Llm(
            LlmSelector::new(selector.clone()).max_attempts(2),
        ))
        .max_turns(6)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 6 });
    let speakers = sources(&r.messages[1..]);
    assert_eq!(speakers.len(), 6);
    for pair in speakers.windows(2) {
        assert_ne!(pair[0], pair[1], "a speaker repeated: {speakers:?}");
    }
    // Fallback is the rotation after the previous speaker.
    assert_eq!(speakers, ["a", "b", "c", "a", "b", "c"]);
    // Every turn spent its two attempts, all charged and reported.
    assert_eq!(selector.request_count(), 12);
    assert_eq!(r.usage.by_agent["group_chat"].calls, 12);
    let feedback = selector.requests()[1].messages[2]
        .text()
        .unwrap()
        .to_owned();
    assert!(
        feedback.contains("may not speak twice in a row") || feedback.contains("No participant"),
        "{feedback}"
    );
    assert!(
        selector.requests()[3].messages[2]
            .text()
            .unwrap()
            .contains("'a' just spoke and may not speak twice in a row")
    );
}

#[tokio::test]
async fn selector_function_overrides_and_none_falls_back() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .selector_func(|input: &SelectorInput<'_>| {
            (input.previous == Some("a")).then(|| "c".to_owned())
        })
        .max_turns(5)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    // a → c (function), c → a (round robin), a → c, c → a, a → c
    assert_eq!(sources(&r.messages), ["user", "a", "c", "a", "c", "a"]);
}

#[tokio::test]
async fn selector_function_naming_a_stranger_is_a_clear_error_keeping_the_transcript() {
    let mut chat = GroupChat::builder()
        .participants(three())
        .selector_func(|input: &SelectorInput<'_>| input.previous.map(|_| "zed".to_owned()))
        .build()
        .unwrap();
    let err = chat.run("go").await.unwrap_err();
    match err.kind() {
        ChatErrorKind::UnknownSpeaker {
            name, participants, ..
        } => {
            assert_eq!(name, "zed");
            assert_eq!(participants, &["a", "b", "c"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("'zed'"), "{err}");
    assert_eq!(sources(err.transcript()), ["user", "a"]);
    assert_eq!(chat.messages().len(), 2);
}

#[tokio::test]
async fn handoffs_follow_the_latest_target_else_the_speaker_continues() {
    let mut chat = GroupChat::builder()
        .participant(HandOff::new("triage", "billing"))
        .participant(Echo::new("billing"))
        .participant(Echo::new("tech"))
        .speaker_selection(SpeakerSelection::Handoffs)
        .max_turns(3)
        .build()
        .unwrap();
    let r = chat.run("my invoice is wrong").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "triage", "billing", "billing"]
    );
    // A task may hand off too (resuming a swarm with a human's handoff).
    let r = chat
        .run(Message::handoff("user", "tech", "over to tech"))
        .await
        .unwrap();
    assert_eq!(sources(&r.messages), ["user", "tech", "tech", "tech"]);
}

#[tokio::test]
async fn handoff_to_a_stranger_is_a_clear_error() {
    let mut chat = GroupChat::builder()
        .participant(HandOff::new("triage", "legal"))
        .participant(Echo::new("billing"))
        .speaker_selection(SpeakerSelection::Handoffs)
        .build()
        .unwrap();
    let err = chat.run("help").await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ChatErrorKind::UnknownSpeaker { context: "handoff", name, .. } if name == "legal"
    ));
    assert_eq!(sources(err.transcript()), ["user", "triage"]);
}

#[tokio::test]
async fn manual_selection_accepts_numbers_and_names() {
    let input = ScriptInput::new(&["2", "c", "a"]);
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Manual(std::sync::Arc::new(input.clone())))
        .max_turns(3)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "b", "c", "a"]);
    let prompts = input.prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 3);
    assert!(prompts[0].contains("1: a\n2: b\n3: c\n"), "{}", prompts[0]);
}

#[tokio::test]
async fn manual_selection_falls_back_to_round_robin() {
    // Three invalid answers, then giving up with an empty answer: both fall back to rotation.
    let input = ScriptInput::new(&["x", "9", "zed", ""]);
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Manual(std::sync::Arc::new(input.clone())))
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "a", "b"]);
    assert_eq!(input.prompts.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn manual_selection_input_failure_is_an_error() {
    let input = ScriptInput::new(&[]);
    let mut chat = GroupChat::builder()
        .participants(three())
        .speaker_selection(SpeakerSelection::Manual(std::sync::Arc::new(input)))
        .build()
        .unwrap();
    let err = chat.run("go").await.unwrap_err();
    assert!(matches!(err.kind(), ChatErrorKind::Input(_)), "{err}");
    assert_eq!(sources(err.transcript()), ["user"]);
}

#[test]
fn a_handoff_to_a_non_participant_is_rejected_at_build() {
    let model = Arc::new(ScriptedModel::new("test/m"));
    let triage = LlmAgent::builder("triage", model.clone())
        .handoff("billing", "Billing questions.")
        .handoff("refunds", "Refunds.")
        .build()
        .unwrap();
    let billing = LlmAgent::builder("billing", model).build().unwrap();
    let err = GroupChat::builder()
        .participant(triage)
        .participant(billing)
        .speaker_selection(SpeakerSelection::Handoffs)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ChatConfigError::UnknownHandoffTarget {
            agent: "triage".into(),
            target: "refunds".into(),
            participants: vec!["triage".into(), "billing".into()],
        }
    );
    let text = err.to_string();
    assert!(text.contains("'triage'") && text.contains("'refunds'") && text.contains("billing"));
}
