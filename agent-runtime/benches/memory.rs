//! Memory per idle conversation and allocations per turn, counted by the allocator itself.
//!
//! `cargo bench -p agent-runtime --bench memory` (add `-- --quick` for a smoke run,
//! `-- --write-docs` to replace the table in `docs/benchmarks.md`).
//!
//! The workload is the `overhead` bench's (two-agent round-robin group chats on an instant model,
//! every call through the scheduler). A conversation is built, runs `TURNS_PER_RUN` turns and then
//! sits idle with its agents, contexts and thread; its cost is the live heap it holds then, less
//! the bytes of its messages' text.
#![allow(missing_docs, clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench stops loudly

mod support;

use std::alloc::System;
use std::sync::Arc;

use agent_core::{ChatModel, Message};
use agent_runtime::chat::GroupChat;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::instant::{AgentKind, InstantModel, TASK, TURNS_PER_RUN, build_chat, run_chats};
use support::{Options, Table, thousands};

/// Counts every allocation and free, so memory is exact live heap bytes rather than resident
/// pages. `stats_alloc` rather than a hand-written counting allocator: implementing `GlobalAlloc`
/// needs `unsafe`, which the workspace forbids. Its shared atomic counters make allocation on
/// two threads contend, which is why throughput is measured by the `overhead` bench, on the
/// system allocator, and not here.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes now.
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

struct Memory {
    text: f64,
    /// The chats' own heap (agents, contexts, thread) beyond message text.
    chat: f64,
    /// The same plus what the scheduler keeps per conversation (its per-conversation stats).
    total: f64,
}

/// Builds `conversations` chats, runs each once, and measures what they hold once idle.
fn memory(runtime: &tokio::runtime::Runtime, conversations: usize, kind: AgentKind) -> Memory {
    let model: Arc<dyn ChatModel> = Arc::new(InstantModel::new());
    let scheduler = support::instant::scheduler();
    // The key's state exists before the measurement: it is shared, not per conversation.
    let mut warm = build_chat(usize::MAX, kind, &model, &scheduler);
    runtime.block_on(warm.run(TASK)).expect("warm-up chat");
    drop(warm);
    let before = live_bytes();
    let chats: Vec<GroupChat> = (0..conversations)
        .map(|i| build_chat(i, kind, &model, &scheduler))
        .collect();
    let (chats, turns) = run_chats(runtime, chats, 1);
    assert_eq!(turns, conversations as u64 * u64::from(TURNS_PER_RUN));
    let idle = live_bytes();
    let text: usize = chats
        .iter()
        .flat_map(|c| c.messages())
        .map(Message::char_len)
        .sum();
    drop(chats);
    let chat_heap = idle - live_bytes();
    let n = conversations as f64;
    Memory {
        text: text as f64 / n,
        chat: (chat_heap as f64 - text as f64) / n,
        total: ((idle - before) as f64 - text as f64) / n,
    }
}

/// Allocations per turn of one conversation running `runs` times.
fn allocations_per_turn(runtime: &tokio::runtime::Runtime, kind: AgentKind, runs: u64) -> f64 {
    let model: Arc<dyn ChatModel> = Arc::new(InstantModel::new());
    let scheduler = support::instant::scheduler();
    let chats = vec![build_chat(0, kind, &model, &scheduler)];
    let region = Region::new(GLOBAL);
    let (chats, turns) = run_chats(runtime, chats, runs);
    let allocations = region.change().allocations;
    drop(chats);
    allocations as f64 / turns as f64
}

fn main() {
    let options = Options::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let machine = support::machine();
    println!("memory: {machine}");
    let conversations = if options.quick { 1_000 } else { 10_000 };
    let mut table = Table::new(&[
        "<agent",
        "idle conversations",
        "message text B/conv",
        "chat beyond text B/conv",
        "incl. scheduler stats B/conv",
        "allocations/turn",
    ]);
    for kind in AgentKind::ALL {
        let m = memory(&runtime, conversations, kind);
        let allocations = allocations_per_turn(&runtime, kind, 10_000);
        table.row(vec![
            kind.label().to_owned(),
            thousands(conversations as u64),
            format!("{:.0}", m.text),
            thousands(m.chat as u64),
            thousands(m.total as u64),
            format!("{allocations:.1}"),
        ]);
    }
    let rendered = table.render();
    println!("{rendered}");
    if options.write_docs && !options.quick {
        support::write_section("memory", &format!("Measured on {machine}.\n\n{rendered}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
