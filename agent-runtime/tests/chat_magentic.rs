//! The Magentic orchestrator: AutoGen's `test_magentic_one_group_chat.py` cases (basic, stalls →
//! re-plan) with their exact transcripts, ledger calls charged and reported, and its failure
//! paths (unreadable ledger, budget, max rounds).
#![allow(clippy::unwrap_used)]

mod support;

use agent_core::{Budget, BudgetLimits, ScriptedModel, StopReason};
use agent_runtime::chat::magentic::MagenticChat;
use agent_runtime::chat::{ChatConfigError, ChatErrorKind};
use serde_json::json;
use support::{Echo, sources};

fn team() -> [Echo; 4] {
    ["agent_1", "agent_2", "agent_3", "agent_4"].map(Echo::new)
}

fn ledger(satisfied: bool, progress: bool, in_loop: bool, say: &str, next: &str) -> String {
    json!({
        "is_request_satisfied": {"answer": satisfied, "reason": if satisfied { "Because" } else { "test" }},
        "is_progress_being_made": {"answer": progress, "reason": "test"},
        "is_in_loop": {"answer": in_loop, "reason": "test"},
        "instruction_or_question": {"answer": say, "reason": "test"},
        "next_speaker": {"answer": next, "reason": "test"},
    })
    .to_string()
}

const TASK: &str = "Write a program that prints 'Hello, world!'";

#[tokio::test]
async fn basic_plan_one_round_and_a_final_answer() {
    let model = ScriptedModel::new("test/orchestrator")
        .text("No facts")
        .text("No plan")
        .text(ledger(false, true, false, "Continue task", "agent_1"))
        .text(ledger(true, true, false, "Task completed", "agent_1"))
        .text("print('Hello, world!')");
    let budget = Budget::new("magentic", BudgetLimits::calls(100));
    let mut chat = MagenticChat::builder(model.clone())
        .participants(team())
        .budget(budget.clone())
        .build()
        .unwrap();
    let r = chat.run(TASK).await.unwrap();
    assert_eq!(r.messages.len(), 5);
    assert_eq!(
        sources(&r.messages),
        [
            "user",
            "orchestrator",
            "orchestrator",
            "agent_1",
            "orchestrator"
        ]
    );
    assert_eq!(r.messages[2].text(), Some("Continue task"));
    assert_eq!(r.messages[4].text(), Some("print('Hello, world!')"));
    assert_eq!(
        r.stop_reason,
        StopReason::Satisfied {
            because: "Because".into()
        }
    );
    assert_eq!(r.stop_reason.to_string(), "Because");
    let ledger_text = r.messages[1].text().unwrap();
    assert!(ledger_text.starts_with("\nWe are working to address the following user request:"));
    assert!(ledger_text.contains("No facts") && ledger_text.contains("No plan"));
    assert!(
        ledger_text.contains("agent_3: agent_3 helps"),
        "{ledger_text}"
    );
    // Five orchestrator calls, every one charged and reported.
    assert_eq!(model.request_count(), 5);
    assert_eq!(r.usage.by_agent["orchestrator"].calls, 5);
    assert_eq!(r.usage.total.calls, 5);
    assert_eq!(budget.used().calls, 5);
    // The progress ledger prompt names the team and asks for JSON.
    let progress = model.requests()[2].clone();
    let prompt = progress.messages.last().unwrap().text().unwrap();
    assert!(prompt.contains("select from: agent_1, agent_2, agent_3, agent_4"));
    assert_eq!(chat.facts(), "No facts");
    assert_eq!(chat.plan(), "No plan");

    // AutoGen's save and load: a second team loaded from the state saves the same state.
    let state = chat.save_state();
    let json = serde_json::to_string(&state).unwrap();
    let mut second = MagenticChat::builder(ScriptedModel::new("test/orchestrator"))
        .participants(team())
        .build()
        .unwrap();
    second
        .load_state(serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(second.save_state(), state);
    assert_eq!(second.messages(), chat.messages());
    assert_eq!(second.plan(), "No plan");
    assert_eq!((state.rounds, state.stalls, state.ledger_from), (2, 0, 1));
    // A corrupted state is refused and changes nothing.
    let mut bad = state.clone();
    bad.ledger_from = 99;
    let mut third = MagenticChat::builder(ScriptedModel::new("test/orchestrator"))
        .participants(team())
        .build()
        .unwrap();
    assert!(matches!(
        third.load_state(bad),
        Err(ChatConfigError::StateCounterOutOfRange { .. })
    ));
    assert!(third.messages().is_empty());
}

#[tokio::test]
async fn stalls_trigger_a_new_plan() {
    let model = ScriptedModel::new("test/orchestrator")
        .text("No facts")
        .text("No plan")
        .text(ledger(false, false, true, "Stalling", "agent_1"))
        .text(ledger(false, false, true, "Stalling again", "agent_2"))
        .text("No facts2")
        .text("No plan2")
        .text(
            json!({
                "is_request_satisfied": {"answer": true, "reason": "test"},
                "is_progress_being_made": {"answer": true, "reason": "test"},
                "is_in_loop": {"answer": false, "reason": "test"},
                "instruction_or_question": {"answer": "Task completed", "reason": "test"},
                "next_speaker": {"answer": "agent_3", "reason": "test"},
            })
            .to_string(),
        )
        .text("print('Hello, world!')");
    let mut chat = MagenticChat::builder(model.clone())
        .participants(team())
        .max_stalls(2)
        .build()
        .unwrap();
    let r = chat.run(TASK).await.unwrap();
    assert_eq!(r.messages.len(), 6);
    assert_eq!(
        sources(&r.messages),
        [
            "user",
            "orchestrator",
            "orchestrator",
            "agent_1",
            "orchestrator",
            "orchestrator"
        ]
    );
    for i in [1, 4] {
        assert!(
            r.messages[i]
                .text()
                .unwrap()
                .starts_with("\nWe are working to address the following user request:")
        );
    }
    assert!(r.messages[4].text().unwrap().contains("No plan2"));
    assert_eq!(r.messages[2].text(), Some("Stalling"));
    assert_eq!(r.stop_reason.to_string(), "test");
    assert_eq!(model.request_count(), 8);
    assert_eq!(r.usage.by_agent["orchestrator"].calls, 8);
    assert_eq!(chat.plan(), "No plan2");
}

#[tokio::test]
async fn an_unreadable_ledger_is_retried_with_feedback_then_fails() {
    let model = ScriptedModel::new("test/orchestrator")
        .text("facts")
        .text("plan")
        .text("I think agent_1 should go")
        .text(ledger(false, true, false, "go", "nobody"))
        .text(ledger(false, true, false, "go", "agent_2"))
        .text(ledger(true, true, false, "", "agent_2"))
        .text("done");
    let mut chat = MagenticChat::builder(model.clone())
        .participants(team())
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        [
            "user",
            "orchestrator",
            "orchestrator",
            "agent_2",
            "orchestrator"
        ]
    );
    // The third ledger attempt saw both problems fed back.
    let third = model.requests()[4].clone();
    let feedback: Vec<_> = third
        .messages
        .iter()
        .filter_map(|m| m.text())
        .filter(|t| t.starts_with("Your answer could not be used"))
        .collect();
    assert_eq!(feedback.len(), 2);
    assert!(feedback[1].contains("'nobody'"), "{}", feedback[1]);
    assert_eq!(r.usage.by_agent["orchestrator"].calls, 7);

    let model = ScriptedModel::new("test/orchestrator")
        .text("facts")
        .text("plan")
        .text("nope")
        .text("still nope");
    let mut chat = MagenticChat::builder(model)
        .participants(team())
        .ledger_attempts(2)
        .build()
        .unwrap();
    let err = chat.run("task").await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ChatErrorKind::LedgerUnreadable { attempts: 2, .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_budget_ends_a_runaway_orchestration() {
    // A model that never declares the task done: the budget, not the model, ends it.
    let model = ScriptedModel::new("test/orchestrator").with_responder(|_| {
        Ok(agent_core::Completion::text(
            "test/orchestrator",
            ledger(false, true, false, "again", "agent_1"),
            agent_core::Usage::new(1, 1),
        ))
    });
    let budget = Budget::new("runaway", BudgetLimits::calls(9));
    let mut chat = MagenticChat::builder(model.clone())
        .participants(team())
        .budget(budget.clone())
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert!(
        matches!(r.stop_reason, StopReason::BudgetExhausted(_)),
        "{:?}",
        r.stop_reason
    );
    assert_eq!(model.request_count(), 9);
    assert_eq!(budget.used().calls, 9);
    assert_eq!(
        r.usage.by_agent["orchestrator"].calls - r.usage.by_agent["orchestrator"].failed,
        9
    );
}

#[tokio::test]
async fn max_rounds_gives_the_final_answer_anyway() {
    let model = ScriptedModel::new("test/orchestrator")
        .text("facts")
        .text("plan")
        .text(ledger(false, true, false, "one", "agent_1"))
        .text(ledger(false, true, false, "two", "agent_2"))
        .text("best effort");
    let mut chat = MagenticChat::builder(model.clone())
        .participants(team())
        .max_turns(2)
        .build()
        .unwrap();
    let r = chat.run("task").await.unwrap();
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 2 });
    assert_eq!(r.messages.last().unwrap().text(), Some("best effort"));
    assert_eq!(model.request_count(), 5);
}

#[test]
fn build_validates_the_team_and_the_settings() {
    let m = || ScriptedModel::new("test/o");
    assert_eq!(
        MagenticChat::builder(m()).build().unwrap_err(),
        ChatConfigError::NoParticipants
    );
    assert_eq!(
        MagenticChat::builder(m())
            .participant(Echo::new("orchestrator"))
            .build()
            .unwrap_err(),
        ChatConfigError::NameClash {
            name: "orchestrator".into()
        }
    );
    assert_eq!(
        MagenticChat::builder(m())
            .participants(team())
            .max_stalls(0)
            .build()
            .unwrap_err(),
        ChatConfigError::Zero { what: "max_stalls" }
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_stops_a_ledger_call_in_flight() {
    let stuck = support::Stuck::default();
    let mut chat = MagenticChat::builder(stuck.clone())
        .participants(team())
        .build()
        .unwrap();
    let handle = chat.cancel_handle();
    let (r, ()) = tokio::join!(chat.run("task"), async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        handle.cancel();
    });
    let r = r.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user"]);
    assert_eq!(stuck.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
