//! Two-agent chats: AG2's `initiate_chat` turn counting, termination message and auto-reply caps.

mod support;

use agent_core::agents::{HumanInputMode, ScriptedInput};
use agent_core::{Content, Role, ScriptedModel, StopReason, UserProxy};
use agent_runtime::chat::GroupChat;
use support::{Echo, ModelAgent, Scripted, sources};

#[tokio::test]
async fn max_turns_n_allows_2n_messages() {
    let mut chat = GroupChat::two_agent(Echo::new("student"), Echo::new("teacher"))
        .max_turns(3)
        .build()
        .unwrap();
    let r = chat.run("teach me").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        [
            "student", "teacher", "student", "teacher", "student", "teacher"
        ]
    );
    assert_eq!(r.messages[0].role, Role::User);
    assert_eq!(r.messages[0].text(), Some("teach me"));
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 3 });
}

#[tokio::test]
async fn an_exact_terminate_ends_the_chat() {
    let mut chat = GroupChat::two_agent(
        Echo::new("student"),
        Scripted::new("teacher", &["2 + 2 = 4", "TERMINATE"]),
    )
    .max_turns(10)
    .build()
    .unwrap();
    let r = chat.run("What is 2 + 2?").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["student", "teacher", "student", "teacher"]
    );
    assert_eq!(
        r.stop_reason,
        StopReason::TerminationMessage {
            source: "teacher".into()
        }
    );

    // Only the exact text counts.
    let mut chat = GroupChat::two_agent(
        Echo::new("student"),
        Scripted::new("teacher", &["TERMINATE."]),
    )
    .max_turns(2)
    .build()
    .unwrap();
    let r = chat.run("q").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 2 });
}

#[tokio::test]
async fn the_predicate_can_be_replaced() {
    let mut chat = GroupChat::two_agent(
        Echo::new("student"),
        Scripted::new("teacher", &["fine", "we are DONE"]),
    )
    .is_termination_msg(|m| m.text().is_some_and(|t| t.contains("DONE")))
    .build()
    .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(r.messages.len(), 4);
    assert!(matches!(
        r.stop_reason,
        StopReason::TerminationMessage { .. }
    ));
}

#[tokio::test]
async fn auto_reply_caps_apply_to_both_agents() {
    let mut chat = GroupChat::two_agent(Echo::new("student").with_cap(1), Echo::new("teacher"))
        .max_turns(10)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["student", "teacher", "student", "teacher"]
    );
    assert_eq!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply {
            agent: "student".into(),
            max: 1
        }
    );

    let mut chat = GroupChat::two_agent(Echo::new("student"), Echo::new("teacher"))
        .max_consecutive_auto_reply(2)
        .build()
        .unwrap();
    let r = chat.run("go").await.unwrap();
    // teacher, student, teacher, student, then teacher is at its cap of 2.
    assert_eq!(r.messages.len(), 5);
    assert_eq!(
        r.stop_reason,
        StopReason::MaxConsecutiveAutoReply {
            agent: "teacher".into(),
            max: 2
        }
    );
}

fn counting_model() -> ScriptedModel {
    ScriptedModel::new("test/m").with_responder(|req| {
        Ok(agent_core::Completion::text(
            "test/m",
            format!("answer {}", req.messages.len()),
            agent_core::Usage::new(10, 2),
        ))
    })
}

#[tokio::test]
async fn a_human_typing_exit_stops_the_chat_without_another_model_call() {
    let model = counting_model();
    let human = UserProxy::builder("human")
        .human_input_mode(HumanInputMode::Always)
        .input(ScriptedInput::new(["exit"]))
        .build()
        .unwrap();
    let mut chat = GroupChat::two_agent(human, ModelAgent::new("assistant", model.clone()))
        .max_turns(5)
        .build()
        .unwrap();
    let r = chat.run("help me").await.unwrap();
    assert_eq!(sources(&r.messages), ["human", "assistant", "human"]);
    assert!(matches!(r.messages[2].content, Content::Stop { .. }));
    assert_eq!(model.request_count(), 1);
    assert_eq!(r.model_calls(), 1);
    assert_eq!(
        r.stop_reason,
        StopReason::StopRequested {
            source: "human".into(),
            text: "exit".into()
        }
    );
    assert_eq!(r.stop_reason.to_string(), "'human' asked to stop: exit");
}

#[tokio::test]
async fn every_run_of_a_two_agent_chat_starts_with_the_recipient() {
    let mut chat = GroupChat::two_agent(Echo::new("student"), Echo::new("teacher"))
        .max_turns(2)
        .build()
        .unwrap();
    let first = chat.run("first question").await.unwrap();
    assert_eq!(
        sources(&first.messages),
        ["student", "teacher", "student", "teacher"]
    );
    let second = chat.run("second question").await.unwrap();
    assert_eq!(
        sources(&second.messages),
        ["student", "teacher", "student", "teacher"]
    );
    assert_eq!(second.messages[0].text(), Some("second question"));
}
