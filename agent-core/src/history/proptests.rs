//! Property tests: every policy's view of a random history is well paired and is a subsequence
//! of it (plus markers and summaries), with the leading system messages first.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::message::{Content, Role, ToolCall, ToolResult};
use crate::model::Completion;
use crate::scripted::ScriptedModel;
use crate::testing::TestContext;

#[derive(Debug, Clone)]
enum Event {
    Text {
        assistant: bool,
        source: u8,
        len: usize,
    },
    Group {
        calls: usize,
        split: bool,
        len: usize,
    },
    OrphanResult,
    OrphanCall,
    Handoff,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (any::<bool>(), 0u8..3, 0usize..300)
            .prop_map(|(assistant, source, len)| Event::Text { assistant, source, len }),
        4 => (1usize..4, any::<bool>(), 0usize..400)
            .prop_map(|(calls, split, len)| Event::Group { calls, split, len }),
        1 => Just(Event::OrphanResult),
        1 => Just(Event::OrphanCall),
        1 => Just(Event::Handoff),
    ]
}

fn result(id: String, len: usize) -> ToolResult {
    ToolResult {
        call_id: id.into(),
        name: "f".into(),
        content: "r".repeat(len).into(),
        is_error: false,
    }
}

fn build(system: usize, events: &[Event]) -> Vec<Message> {
    let mut h: Vec<Message> = (0..system)
        .map(|i| Message::system(format!("s{i}")))
        .collect();
    let mut next_id = 0;
    let mut id = || {
        next_id += 1;
        format!("c{next_id}")
    };
    for e in events {
        match e {
            Event::Text {
                assistant,
                source,
                len,
            } => {
                let text = "t".repeat(*len);
                h.push(if *assistant {
                    Message::assistant(format!("a{source}"), text)
                } else {
                    Message::user_from(format!("u{source}"), text)
                });
            }
            Event::Group { calls, split, len } => {
                let ids: Vec<String> = (0..*calls).map(|_| id()).collect();
                let calls: Vec<ToolCall> = ids
                    .iter()
                    .map(|i| ToolCall::new(i.as_str(), "f", "{}"))
                    .collect();
                h.push(Message::tool_calls("a0", calls));
                let results: Vec<ToolResult> = ids.into_iter().map(|i| result(i, *len)).collect();
                if *split && results.len() > 1 {
                    let (a, b) = results.split_at(1);
                    h.push(Message::tool_results("a0", a.to_vec()));
                    h.push(Message::tool_results("a0", b.to_vec()));
                } else {
                    h.push(Message::tool_results("a0", results));
                }
            }
            Event::OrphanResult => h.push(Message::tool_results("a0", vec![result(id(), 3)])),
            Event::OrphanCall => h.push(Message::tool_calls(
                "a0",
                vec![ToolCall::new(id(), "f", "{}")],
            )),
            Event::Handoff => h.push(Message::handoff("a1", "a2", "over")),
        }
    }
    h
}

/// A "Skipped K messages." marker or a summary (possibly truncated by a later policy in a chain).
fn is_marker(m: &Message) -> bool {
    m.role == Role::User
        && m.text().is_some_and(|t| {
            let kept = t.split_once("… [truncated ").map_or(t, |(kept, _)| kept);
            (m.source() == Some("user") && t.starts_with("Skipped ") && t.ends_with(" messages."))
                || (m.source().is_none()
                    && (kept.starts_with(SUMMARY_HEADING) || SUMMARY_HEADING.starts_with(kept)))
        })
}

/// `out` is `input` itself or a truncation of it.
fn same_origin(out: &Message, input: &Message) -> bool {
    fn cut_of(out: &str, input: &str) -> bool {
        out == input
            || out
                .split_once("… [truncated ")
                .is_some_and(|(kept, _)| input.starts_with(kept))
    }
    if out == input {
        return true;
    }
    if out.role != input.role || out.source != input.source || out.usage != input.usage {
        return false;
    }
    match (&out.content, &input.content) {
        (Content::Text { text: a }, Content::Text { text: b })
        | (Content::Stop { text: a }, Content::Stop { text: b }) => cut_of(a, b),
        (
            Content::Handoff {
                target: t1,
                text: a,
            },
            Content::Handoff {
                target: t2,
                text: b,
            },
        ) => t1 == t2 && cut_of(a, b),
        (Content::ToolResults { results: a }, Content::ToolResults { results: b }) => {
            a.len() == b.len()
                && a.iter().zip(b.iter()).all(|(x, y)| {
                    x.call_id == y.call_id && x.name == y.name && cut_of(&x.content, &y.content)
                })
        }
        _ => false,
    }
}

fn check(input: &[Message], out: &[Message]) -> Result<(), TestCaseError> {
    prop_assert!(is_well_paired(out), "orphaned tool traffic in {out:#?}");
    let lead = input.iter().take_while(|m| m.role == Role::System).count();
    prop_assert_eq!(&out[..lead.min(out.len())], &input[..lead]);
    let mut j = 0;
    for m in out.iter().filter(|m| !is_marker(m)) {
        while j < input.len() && !same_origin(m, &input[j]) {
            j += 1;
        }
        prop_assert!(j < input.len(), "{m:?} is not from the input in order");
        j += 1;
    }
    Ok(())
}

fn policies(p: &Params) -> Vec<(String, Arc<dyn HistoryPolicy>)> {
    let summarizer = ScriptedModel::new("test/sum").with_responder(|_| {
        Ok(Completion::text(
            "x",
            "a summary",
            crate::message::Usage::new(1, 1),
        ))
    });
    let summarizing = || {
        Arc::new(
            Summarizing::new(Arc::new(summarizer.clone()))
                .trigger(p.a)
                .keep_last(p.b)
                .refresh_after(p.c),
        )
    };
    let mut last = LastN::new(p.a);
    if p.flag {
        last = last.keep_first_message();
    }
    vec![
        ("unbounded".into(), Arc::new(Unbounded)),
        (format!("{last:?}"), Arc::new(last)),
        (
            format!("head_tail {} {}", p.b, p.c),
            Arc::new(HeadTail::new(p.b, p.c)),
        ),
        (
            format!("token_limited {}", p.tokens),
            Arc::new(TokenLimited::new(p.tokens)),
        ),
        (
            format!("truncate {}", p.tokens / 4),
            Arc::new(TruncateLong::new(p.tokens / 4)),
        ),
        (format!("summarizing {p:?}"), summarizing()),
        (
            "chain".into(),
            Arc::new(Chain::new(vec![
                summarizing(),
                Arc::new(TruncateLong::new(p.tokens / 4)),
                Arc::new(LastN::new(p.a)),
            ])),
        ),
    ]
}

#[derive(Debug, Clone)]
struct Params {
    a: usize,
    b: usize,
    c: usize,
    tokens: u64,
    flag: bool,
}

fn params() -> impl Strategy<Value = Params> {
    (0usize..20, 0usize..8, 0usize..8, 0u64..600, any::<bool>()).prop_map(
        |(a, b, c, tokens, flag)| Params {
            a,
            b,
            c,
            tokens,
            flag,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_policy_keeps_tool_traffic_paired_and_in_order(
        system in 0usize..3,
        events in prop::collection::vec(event(), 0..40),
        p in params(),
    ) {
        let input = build(system, &events);
        let ctx = TestContext::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (name, policy) in policies(&p) {
            let out = rt.block_on(policy.view(&input, &ctx)).unwrap();
            check(&input, &out).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            // A second turn over a longer history (the summary cache path) holds too.
            let mut longer = input.clone();
            longer.extend(build(0, &events[events.len() / 2..]));
            let out = rt.block_on(policy.view(&longer, &ctx)).unwrap();
            check(&longer, &out).map_err(|e| TestCaseError::fail(format!("{name} (longer): {e}")))?;
        }
    }

    #[test]
    fn windows_keep_the_newest_message_and_token_limit_is_met_when_possible(
        events in prop::collection::vec(event(), 1..40),
        p in params(),
    ) {
        let input = build(1, &events);
        let ctx = TestContext::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let sendable = pairing::Sendable::new(&input);
        let Some(newest) = sendable.units.last() else { return Ok(()) };
        let newest = &input[newest.range.end - 1];
        if p.a > 0 {
            let out = rt.block_on(LastN::new(p.a).view(&input, &ctx)).unwrap();
            prop_assert_eq!(out.last(), Some(newest));
        }
        let out = rt.block_on(TokenLimited::new(p.tokens).view(&input, &ctx)).unwrap();
        prop_assert_eq!(out.last(), Some(newest));
        let used: u64 = out.iter().map(|m| ctx.estimator().message_tokens(m)).sum();
        let protected = 1 + sendable.units.len().min(2);
        let kept_units = units(&out).len();
        prop_assert!(used <= p.tokens || kept_units <= protected,
            "{used} tokens > {} with {kept_units} units", p.tokens);
    }
}
