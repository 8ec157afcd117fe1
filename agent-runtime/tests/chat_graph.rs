//! Graph workflows: AutoGen's `test_group_chat_graph.py` sequences (sequential, fan-out, joins,
//! conditional branches, loops with an exit condition), build-time validation, and a wide
//! fan-out held to a requests quota and a budget on the paused clock.
#![allow(clippy::unwrap_used)]

mod scheduler_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::termination::MaxMessages;
use agent_core::{
    Agent, AgentError, AgentReply, Budget, BudgetLimits, Message, ScriptedModel, StopReason,
    TurnContext, Usage, async_trait,
};
use agent_runtime::chat::graph::{Activation, Edge, GraphFlow};
use agent_runtime::chat::{ChatConfigError, ChatErrorKind};
use agent_runtime::scheduler::{Quota, QuotaScheduler};
use scheduler_support::TimedModel;
use support::{ModelAgent, sources};

/// AutoGen's `_EchoAgent`: replies with the text of the first message it is given (the task).
#[derive(Debug, Clone)]
struct Parrot(&'static str);

#[async_trait]
impl Agent for Parrot {
    fn name(&self) -> &str {
        self.0
    }
    async fn reply(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        let text = history.first().and_then(Message::text).unwrap_or_default();
        Ok(AgentReply::message(Message::assistant(self.0, text)))
    }
}

fn parrots(names: &[&'static str]) -> Vec<Parrot> {
    names.iter().map(|n| Parrot(n)).collect()
}

#[tokio::test]
async fn sequential_runs_each_node_once_and_completes() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .edge("A", "B")
        .edge("B", "C")
        .termination(MaxMessages::new(5))
        .build()
        .unwrap();
    let r = flow.run("Hello from User").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B", "C"]);
    assert_eq!(r.stop_reason, StopReason::GraphComplete);
    assert_eq!(r.stop_reason.to_string(), "Digraph execution is complete");
    // A completed graph starts over from its start nodes.
    let again = flow.run("Again").await.unwrap();
    assert_eq!(sources(&again.messages), ["user", "A", "B", "C"]);
}

#[tokio::test]
async fn parallel_fan_out_runs_both_branches_in_one_step() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .edge("A", "B")
        .edge("A", "C")
        .termination(MaxMessages::new(5))
        .build()
        .unwrap();
    let r = flow.run("Start").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B", "C"]);
    assert_eq!(r.stop_reason, StopReason::GraphComplete);
}

#[tokio::test]
async fn join_all_waits_for_every_parent_and_join_any_runs_once() {
    for activation in [Activation::All, Activation::Any] {
        let mut flow = GraphFlow::builder()
            .participants(parrots(&["A", "B", "C"]))
            .edge("A", "C")
            .edge("B", "C")
            .activation("C", activation)
            .termination(MaxMessages::new(5))
            .build()
            .unwrap();
        let r = flow.run("Go").await.unwrap();
        assert_eq!(
            sources(&r.messages),
            ["user", "A", "B", "C"],
            "{activation:?}"
        );
    }
}

#[tokio::test]
async fn join_any_fires_on_the_first_parent_of_uneven_branches() {
    // A → C directly, B → X → C: with `any`, C runs after A, and again after X.
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "X", "C"]))
        .edge("A", "C")
        .edge("B", "X")
        .edge("X", "C")
        .activation("C", Activation::Any)
        .build()
        .unwrap();
    let r = flow.run("Go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B", "X", "C", "C"]);
    // With `all`, C waits for both.
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "X", "C"]))
        .edge("A", "C")
        .edge("B", "X")
        .edge("X", "C")
        .build()
        .unwrap();
    let r = flow.run("Go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B", "X", "C"]);
}

#[tokio::test]
async fn multiple_start_nodes_and_disconnected_graphs() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B"]))
        .build()
        .unwrap();
    let r = flow.run("Start").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B"]);

    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C", "D"]))
        .edge("A", "B")
        .edge("C", "D")
        .termination(MaxMessages::new(10))
        .build()
        .unwrap();
    let r = flow.run("Go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "C", "B", "D"]);
}

#[tokio::test]
async fn conditional_branches_on_text_or_a_function() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .add_edge(Edge::new("A", "B").when_contains("yes"))
        .add_edge(Edge::new("A", "C").when_contains("no"))
        .activation("B", Activation::Any)
        .activation("C", Activation::Any)
        .build()
        .unwrap();
    let r = flow.run("Trigger yes").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B"]);

    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .add_edge(Edge::new("A", "B").when(|m| m.text().is_some_and(|t| t.contains("yes"))))
        .add_edge(Edge::new("A", "C").when(|m| m.text().is_some_and(|t| t.contains("no"))))
        .build()
        .unwrap();
    let r = flow.run("Trigger no").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "C"]);
}

fn decider(name: &str, model: &Arc<ScriptedModel>) -> ModelAgent {
    ModelAgent {
        name: name.into(),
        model: model.clone(),
    }
}

#[tokio::test]
async fn a_loop_runs_until_its_exit_condition() {
    let model = Arc::new(
        ScriptedModel::new("test/b")
            .text("loop")
            .text("loop")
            .text("exit"),
    );
    let mut flow = GraphFlow::builder()
        .participant(Parrot("A"))
        .participant(decider("B", &model))
        .participant(Parrot("C"))
        .edge("A", "B")
        .add_edge(Edge::new("B", "C").when_contains("exit"))
        .add_edge(Edge::new("B", "A").when_contains("loop"))
        .start("A")
        .termination(MaxMessages::new(20))
        .build()
        .unwrap();
    let r = flow.run("Start").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "A", "B", "A", "B", "A", "B", "C"]
    );
    assert_eq!(r.stop_reason, StopReason::GraphComplete);
    // Every model call of the loop went through the scheduler and is in the usage.
    assert_eq!(r.usage.by_agent["B"].calls, 3);
    assert_eq!(model.request_count(), 3);
}

#[tokio::test]
async fn a_self_loop_needs_its_own_activation_group() {
    let model = Arc::new(
        ScriptedModel::new("test/b")
            .text("loop")
            .text("loop")
            .text("exit"),
    );
    let mut flow = GraphFlow::builder()
        .participant(Parrot("A"))
        .participant(decider("B", &model))
        .participant(Parrot("C"))
        .edge("A", "B")
        .add_edge(Edge::new("B", "C").when_contains("exit"))
        .add_edge(Edge::new("B", "B").when_contains("loop").group("B_loop"))
        .start("A")
        .termination(MaxMessages::new(20))
        .build()
        .unwrap();
    let r = flow.run("Start").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B", "B", "B", "C"]);
}

#[tokio::test]
async fn two_cycles_through_one_hub() {
    // AutoGen's test_digraph_group_chat_loop_with_two_cycles, exact sequence.
    let model = Arc::new(
        ScriptedModel::new("test/hub")
            .text("to_x")
            .text("to_o")
            .text("to_y")
            .text("to_o")
            .text("exit"),
    );
    let mut flow = GraphFlow::builder()
        .participant(Parrot("A"))
        .participant(decider("O", &model))
        .participant(Parrot("B"))
        .participant(Parrot("C"))
        .participant(decider("X", &model))
        .participant(decider("Y", &model))
        .participant(Parrot("E"))
        .edge("A", "B")
        .edge("A", "C")
        .edge("B", "O")
        .edge("C", "O")
        .add_edge(Edge::new("O", "X").when_contains("to_x"))
        .add_edge(Edge::new("O", "Y").when_contains("to_y"))
        .add_edge(Edge::new("O", "E").when_contains("exit"))
        .add_edge(Edge::new("X", "O").when_contains("to_o").group("x_o_loop"))
        .add_edge(Edge::new("Y", "O").when_contains("to_o").group("y_o_loop"))
        .start("A")
        .termination(MaxMessages::new(20))
        .build()
        .unwrap();
    let r = flow.run("Start").await.unwrap();
    assert_eq!(
        sources(&r.messages),
        ["user", "A", "B", "C", "O", "X", "O", "Y", "O", "E"]
    );
}

#[tokio::test]
async fn termination_and_max_turns_stop_a_graph_which_then_resumes() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .edge("A", "B")
        .edge("B", "C")
        .max_turns(2)
        .build()
        .unwrap();
    let r = flow.run("go").await.unwrap();
    assert_eq!(sources(&r.messages), ["user", "A", "B"]);
    assert_eq!(r.stop_reason, StopReason::MaxTurns { max: 2 });
    let rest = flow.run(agent_runtime::chat::Task::Resume).await.unwrap();
    assert_eq!(sources(&rest.messages), ["C"]);
    assert_eq!(rest.stop_reason, StopReason::GraphComplete);
}

#[test]
fn build_rejects_bad_graphs_with_typed_errors() {
    let err = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C", "D", "E"]))
        .edge("A", "B")
        .edge("B", "C")
        .edge("C", "A")
        .edge("D", "E")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cycle detected without exit condition: A -> B -> C -> A; make one of its edges conditional (Edge::when_contains or Edge::when)"
    );
    let err = GraphFlow::builder()
        .participants(parrots(&["A", "B"]))
        .edge("A", "Z")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ChatConfigError::UnknownAgent { context: "graph edge", name, .. } if name == "Z"),
        "{err}"
    );
    let err = GraphFlow::builder()
        .participants(parrots(&["A", "A"]))
        .build()
        .unwrap_err();
    assert_eq!(err, ChatConfigError::DuplicateName { name: "A".into() });
    let err = GraphFlow::builder()
        .participants(parrots(&["A", "B"]))
        .edge("A", "B")
        .start("Q")
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        ChatConfigError::UnknownAgent {
            context: "graph start",
            ..
        }
    ));
}

#[tokio::test]
async fn an_empty_task_on_a_fresh_graph_is_refused() {
    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A"]))
        .build()
        .unwrap();
    let err = flow
        .run(agent_runtime::chat::Task::Resume)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ChatErrorKind::NothingToResume));
}

/// Ten branches, each one model call, behind a requests quota of 3 per minute and a budget of 7
/// calls, on the paused clock: the provider never sees more than the quota allows in any window,
/// never more calls than the budget, the branches overlap in flight, and the run's usage is the
/// sum of its branches'.
#[tokio::test(start_paused = true)]
async fn a_ten_way_fan_out_stays_within_the_quota_and_the_budget() {
    const BRANCHES: usize = 10;
    const RPM: u64 = 3;
    const BUDGET: u64 = 7;
    let period = Duration::from_secs(60);
    let model = TimedModel::answering("test/branch", Usage::new(10, 5))
        .with_latency(Duration::from_secs(2));
    let scheduler = QuotaScheduler::builder()
        .quota("test/branch", Quota::per_period(period).requests(RPM))
        .build()
        .unwrap();
    let names: Vec<String> = (0..BRANCHES).map(|i| format!("b{i}")).collect();
    let mut builder = GraphFlow::builder()
        .participant(Parrot("split"))
        .participant(Parrot("join"))
        .scheduler(scheduler)
        .budget(Budget::new("fan-out", BudgetLimits::calls(BUDGET)));
    for name in &names {
        builder = builder
            .participant(ModelAgent::new(name, model.clone()))
            .edge("split", name.as_str())
            .edge(name.as_str(), "join");
    }
    let mut flow = builder.build().unwrap();
    let t0 = tokio::time::Instant::now();
    let r = flow.run("fan out").await.unwrap();

    let seen = model.seen();
    assert_eq!(
        seen.len() as u64,
        BUDGET,
        "the budget admits exactly {BUDGET} calls"
    );
    assert!(
        matches!(r.stop_reason, StopReason::BudgetExhausted(_)),
        "{:?}",
        r.stop_reason
    );
    // The join never ran: three branches could not reply.
    assert!(!sources(&r.messages).contains(&"join".to_owned()));
    // Requests quota: in every window [t_i, t_j], at most RPM + refill(window) requests.
    for i in 0..seen.len() {
        for j in i..seen.len() {
            let window = seen[j].at - seen[i].at;
            let refill = (u128::from(RPM) * window.as_nanos()).div_ceil(period.as_nanos());
            assert!(
                (j - i + 1) as u128 <= u128::from(RPM) + refill,
                "{} requests within {window:?}",
                j - i + 1
            );
        }
    }
    // The first RPM branches were in flight together: branches really run concurrently.
    assert_eq!(seen.iter().map(|s| s.concurrent).max(), Some(RPM as usize));
    assert!(seen[0].at - t0 < Duration::from_secs(1));
    // Usage: the run's total is the sum of its branches', and matches what the provider saw.
    let branch_sum: u64 = names
        .iter()
        .filter_map(|n| r.usage.by_agent.get(n))
        .map(|u| u.calls - u.failed)
        .sum();
    let total_ok = r.usage.total.calls - r.usage.total.failed;
    assert_eq!(branch_sum, BUDGET);
    assert_eq!(total_ok, BUDGET);
    assert_eq!(
        r.usage.total.prompt_tokens,
        names
            .iter()
            .filter_map(|n| r.usage.by_agent.get(n))
            .map(|u| u.prompt_tokens)
            .sum::<u64>()
    );
    assert_eq!(r.usage.total.prompt_tokens, 10 * BUDGET);
    assert_eq!(flow.budget().used().calls, BUDGET);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_graph_drops_every_branch_in_flight() {
    let stuck = support::Stuck::default();
    let mut flow = GraphFlow::builder()
        .participant(Parrot("split"))
        .participant(ModelAgent::new("left", stuck.clone()))
        .participant(ModelAgent::new("right", stuck.clone()))
        .edge("split", "left")
        .edge("split", "right")
        // A configured quota: a key with none admits one call until it learns its limits.
        .scheduler(
            QuotaScheduler::builder()
                .quota("test/stuck", Quota::per_minute().requests(100))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let handle = flow.cancel_handle();
    let (r, ()) = tokio::join!(flow.run("go"), async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        handle.cancel();
    });
    let r = r.unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(sources(&r.messages), ["user", "split"]);
    // Both branches were in flight at once when the cancel came.
    assert_eq!(stuck.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The cancel was consumed: the graph resumes the two branches (which hang again).
    let handle = flow.cancel_handle();
    handle.cancel();
    let again = flow.run(agent_runtime::chat::Task::Resume).await.unwrap();
    assert_eq!(again.stop_reason, StopReason::Cancelled);
}

#[tokio::test]
async fn a_graph_streams_a_speaker_event_per_branch_then_its_result() {
    use agent_runtime::chat::ChatEvent;
    use futures::StreamExt;

    let mut flow = GraphFlow::builder()
        .participants(parrots(&["A", "B", "C"]))
        .edge("A", "B")
        .edge("A", "C")
        .build()
        .unwrap();
    let events: Vec<ChatEvent> = flow.run_stream("go").collect().await;
    let picked: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::SpeakerSelected { name } => Some(name.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(picked, ["A", "B", "C"]);
    let last = events
        .last()
        .and_then(ChatEvent::finished)
        .unwrap()
        .unwrap();
    assert_eq!(last.stop_reason, StopReason::GraphComplete);
    assert!(matches!(
        events[events.len() - 2],
        ChatEvent::Stopped(StopReason::GraphComplete)
    ));
}

#[tokio::test]
async fn a_failing_branch_fails_the_run_and_keeps_the_transcript() {
    let mut flow = GraphFlow::builder()
        .participant(Parrot("A"))
        .participant(support::Failing("B"))
        .edge("A", "B")
        .build()
        .unwrap();
    let err = flow.run("go").await.unwrap_err();
    assert!(
        matches!(err.kind(), ChatErrorKind::Agent { agent, .. } if agent == "B"),
        "{err}"
    );
    assert_eq!(sources(err.transcript()), ["user", "A"]);
}

#[tokio::test]
async fn a_runaway_cycle_ends_at_the_budget() {
    // The exit condition never holds: the budget, not the graph, ends the loop — exactly at it.
    let model = ScriptedModel::new("test/looper").with_responder(|_| {
        Ok(agent_core::Completion::text(
            "test/looper",
            "loop",
            Usage::new(3, 1),
        ))
    });
    let mut flow = GraphFlow::builder()
        .participant(decider("A", &Arc::new(model.clone())))
        .participant(decider("B", &Arc::new(model.clone())))
        .participant(Parrot("done"))
        .edge("A", "B")
        .add_edge(Edge::new("B", "A").when_contains("loop"))
        .add_edge(Edge::new("B", "done").when_contains("exit"))
        .start("A")
        .budget(Budget::new("loop", BudgetLimits::calls(5)))
        .build()
        .unwrap();
    let r = flow.run("go").await.unwrap();
    assert!(
        matches!(r.stop_reason, StopReason::BudgetExhausted(_)),
        "{:?}",
        r.stop_reason
    );
    assert_eq!(sources(&r.messages), ["user", "A", "B", "A", "B", "A"]);
    assert_eq!(model.request_count(), 5);
    assert_eq!(r.usage.total.calls - r.usage.total.failed, 5);
}
