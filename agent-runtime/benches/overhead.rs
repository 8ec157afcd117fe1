//! Framework overhead: group-chat turns per second and CPU time per turn with an instant
//! in-process model, from 1 to 10,000 concurrent conversations, plus instructions per turn under
//! callgrind (the number that does not depend on how busy the machine is).
//!
//! `cargo bench -p agent-runtime --bench overhead` (add `-- --quick` for a smoke run,
//! `-- --write-docs` to replace the tables in `docs/benchmarks.md`). Memory per conversation is
//! measured by the `memory` bench, which needs a counting allocator that would slow this one.
//!
//! Every turn is a real one: a round-robin `GroupChat` selects the speaker, the agent calls
//! `TurnContext::complete`, the call passes the whole scheduler pipeline (budget reserve, quota
//! admission on a key with configured limits, the model, reconcile, conversation stats), and the
//! chat appends the reply and checks its caps. Chats run as tokio tasks on a two-worker runtime.
#![allow(missing_docs, clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench stops loudly

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_core::ChatModel;
use agent_runtime::chat::GroupChat;
use support::instant::{
    AgentKind, InstantModel, KEY, TURNS_PER_RUN, build_chat, run_chats, scheduler,
};
use support::{Options, Table, cpu_time, thousands};

struct Throughput {
    turns: u64,
    wall: Duration,
    cpu: Duration,
}

/// Runs `conversations` chats at once, each running `TURNS_PER_RUN` turns, resetting and running
/// again until about `total_turns` turns are done; times the runs (not the building).
fn throughput(
    runtime: &tokio::runtime::Runtime,
    conversations: usize,
    kind: AgentKind,
    total_turns: u64,
) -> Throughput {
    let scheduler = scheduler();
    let runs = (total_turns / (conversations as u64 * u64::from(TURNS_PER_RUN))).max(1);
    // One model per chat: a shared one would hand every chat the same reply strings, whose
    // reference counts the two workers would then contend for — a cost no real provider, which
    // parses a fresh reply per call, has. All share one quota key.
    let chats: Vec<GroupChat> = (0..conversations)
        .map(|i| {
            let model: Arc<dyn ChatModel> = Arc::new(InstantModel::new());
            build_chat(i, kind, &model, &scheduler)
        })
        .collect();
    let cpu_before = cpu_time();
    let start = std::time::Instant::now();
    let (chats, turns) = run_chats(runtime, chats, runs);
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    drop(chats);
    let expected = conversations as u64 * runs * u64::from(TURNS_PER_RUN);
    assert_eq!(turns, expected, "every run makes {TURNS_PER_RUN} turns");
    let calls = scheduler.snapshot().keys[KEY].calls;
    assert_eq!(calls, turns, "every turn is one scheduler call");
    Throughput { turns, wall, cpu }
}

/// Instructions per turn under `valgrind --tool=callgrind`, from two runs of different lengths
/// (their difference cancels start-up and building). `None` when valgrind is not installed.
fn callgrind_per_turn(kind: AgentKind, conversations: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let run = |turns: u64| -> Option<u64> {
        let out = std::env::temp_dir().join(format!(
            "overhead-callgrind-{}-{}-{turns}.out",
            std::process::id(),
            kind.label()
        ));
        let status = std::process::Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--dump-instr=no")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&exe)
            .args(["--single", kind.label()])
            .arg(conversations.to_string())
            .arg(turns.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        let text = std::fs::read_to_string(&out).ok();
        let _ = std::fs::remove_file(&out);
        if !status.success() {
            return None;
        }
        text?
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|n| n.trim().parse().ok())
    };
    let (short, long) = (20_000u64, 120_000u64);
    let (a, b) = (run(short)?, run(long)?);
    Some(b.saturating_sub(a) as f64 / (long - short) as f64)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let options = Options::from_args();
    let runtime = runtime();
    // `--single KIND CONVERSATIONS TURNS`: one configuration only (what callgrind runs).
    let args: Vec<String> = std::env::args().collect();
    // `--sizes`: the size of the call future, whose moves and box show in the profile.
    if args.iter().any(|a| a == "--sizes") {
        use agent_core::{Budget, CallKind, ChatRequest, Message, TurnContext};
        use agent_runtime::scheduler::ModelCall;
        let model = InstantModel::new();
        let s = scheduler();
        let budget = Budget::unlimited();
        let call = ModelCall::new(
            &model,
            ChatRequest::new(vec![Message::user("x")]),
            CallKind::Reply,
            "c",
            "a",
            &budget,
        );
        let fut = s.call(call);
        println!(
            "scheduler.call future: {} bytes",
            std::mem::size_of_val(&fut)
        );
        drop(fut);
        let ctx = agent_runtime::SchedulerContext::new(s.clone(), "c", "a", budget.clone());
        let fut = ctx.complete(
            &model,
            ChatRequest::new(vec![Message::user("x")]),
            CallKind::Reply,
        );
        println!(
            "ctx.complete boxed future: {} bytes (box ptr)",
            std::mem::size_of_val(&fut)
        );
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--single") {
        let kind = AgentKind::parse(&args[i + 1]).expect("minimal or LlmAgent");
        let conversations = args[i + 2].parse().expect("conversations");
        let turns = args[i + 3].parse().expect("turns");
        let t = throughput(&runtime, conversations, kind, turns);
        println!("{} turns in {:?}", t.turns, t.wall);
        return;
    }
    let total = if options.quick { 200_000 } else { 2_000_000 };
    let machine = support::machine();
    println!("overhead: {machine}");
    let mut table = Table::new(&[
        "conversations",
        "<agent",
        "turns",
        "wall s",
        "turns/s",
        "CPU µs/turn",
        "cores busy",
    ]);
    for kind in AgentKind::ALL {
        for conversations in [1, 10, 100, 1_000, 10_000] {
            let t = throughput(&runtime, conversations, kind, total);
            let wall = t.wall.as_secs_f64();
            let per_s = t.turns as f64 / wall;
            table.row(vec![
                thousands(conversations as u64),
                kind.label().to_owned(),
                thousands(t.turns),
                format!("{wall:.2}"),
                thousands(per_s as u64),
                format!("{:.2}", t.cpu.as_secs_f64() * 1e6 / t.turns as f64),
                format!("{:.2}", t.cpu.as_secs_f64() / wall),
            ]);
            eprintln!(
                "  {conversations} x {}: {} turns/s (load {})",
                kind.label(),
                thousands(per_s as u64),
                support::load_now()
            );
        }
    }
    let mut instructions = Table::new(&["<agent", "conversations", "instructions/turn"]);
    for kind in AgentKind::ALL {
        let per_turn = callgrind_per_turn(kind, 100);
        instructions.row(vec![
            kind.label().to_owned(),
            "100".to_owned(),
            per_turn.map_or_else(|| "n/a (no valgrind)".to_owned(), |i| thousands(i as u64)),
        ]);
    }
    let rendered = format!("{}\n{}", table.render(), instructions.render());
    println!("{rendered}");
    if options.write_docs && !options.quick {
        support::write_section("overhead", &format!("Measured on {machine}.\n\n{rendered}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
