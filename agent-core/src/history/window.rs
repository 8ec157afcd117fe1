//! Windowing policies: the last N messages, and head + tail with a "skipped" marker.

use async_trait::async_trait;

use super::HistoryPolicy;
use super::pairing::Sendable;
use crate::agent::{CallError, TurnContext};
use crate::message::Message;

/// Sends the last `max_messages` messages (AutoGen's `BufferedChatCompletionContext`, AG2's
/// `MessageHistoryLimiter`).
///
/// Leading system messages are always sent and not counted. A tool call and its results are kept
/// or dropped together, so the window may hold fewer than `max_messages`; the newest exchange is
/// always kept whole, even when it alone is longer than the window. With
/// [`keep_first_message`](LastN::keep_first_message) the first message (usually the task) is kept
/// too and counts toward `max_messages`, as in AG2.
///
/// ```
/// use agent_core::history::{HistoryPolicy, LastN};
/// use agent_core::{testing::TestContext, Message};
///
/// let history: Vec<Message> = (0..6).map(|i| Message::user(format!("m{i}"))).collect();
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = LastN::new(3).keep_first_message().view(&history, &ctx).await.unwrap();
/// let texts: Vec<_> = view.iter().filter_map(|m| m.text()).collect();
/// assert_eq!(texts, ["m0", "m4", "m5"]);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastN {
    max_messages: usize,
    keep_first: bool,
}

impl LastN {
    /// A window of the last `max_messages` messages.
    pub const fn new(max_messages: usize) -> Self {
        Self {
            max_messages,
            keep_first: false,
        }
    }

    /// Also keeps the first message after the system messages (AG2's `keep_first_message=True`).
    #[must_use]
    pub const fn keep_first_message(mut self) -> Self {
        self.keep_first = true;
        self
    }
}

#[async_trait]
impl HistoryPolicy for LastN {
    async fn view(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let s = Sendable::new(history);
        if s.message_count() <= self.max_messages {
            return Ok(s.view_of(&s.units));
        }
        let (first, rest, budget) = match s.units.split_first() {
            Some((first, rest)) if self.keep_first => (
                Some(first.clone()),
                rest,
                self.max_messages.saturating_sub(first.len()),
            ),
            _ => (None, &s.units[..], self.max_messages),
        };
        let take = s.tail_units(budget, rest);
        let kept: Vec<_> = first
            .into_iter()
            .chain(rest[rest.len() - take..].iter().cloned())
            .collect();
        Ok(s.view_of(&kept))
    }
}

/// Sends the first `head` and the last `tail` messages with `"Skipped K messages."` between them
/// (AutoGen's `HeadAndTailChatCompletionContext`, same marker text, sent as a user message).
///
/// Leading system messages are always sent and not counted. Tool calls and their results are
/// kept or dropped together; `K` counts the messages left out between head and tail. When
/// nothing is left out, no marker is added.
///
/// ```
/// use agent_core::history::{HeadTail, HistoryPolicy};
/// use agent_core::{testing::TestContext, Message};
///
/// let history: Vec<Message> = (0..10).map(|i| Message::user(format!("m{i}"))).collect();
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = HeadTail::new(1, 2).view(&history, &ctx).await.unwrap();
/// let texts: Vec<_> = view.iter().filter_map(|m| m.text()).collect();
/// assert_eq!(texts, ["m0", "Skipped 7 messages.", "m8", "m9"]);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadTail {
    head: usize,
    tail: usize,
}

impl HeadTail {
    /// Keeps `head` messages from the start and `tail` from the end.
    pub const fn new(head: usize, tail: usize) -> Self {
        Self { head, tail }
    }
}

/// The marker [`HeadTail`] puts where it skipped `skipped` messages (AutoGen's wording).
pub(crate) fn skipped_marker(skipped: usize) -> Message {
    Message::user(format!("Skipped {skipped} messages."))
}

#[async_trait]
impl HistoryPolicy for HeadTail {
    async fn view(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let s = Sendable::new(history);
        if s.message_count() <= self.head + self.tail {
            return Ok(s.view_of(&s.units));
        }
        let mut head_units = 0;
        let mut head_count = 0;
        for u in &s.units {
            if head_count + u.len() > self.head {
                break;
            }
            head_count += u.len();
            head_units += 1;
        }
        let rest = &s.units[head_units..];
        let tail_units = s.tail_units(self.tail, rest);
        let tail = &rest[rest.len() - tail_units..];
        if head_units + tail_units == s.units.len() {
            return Ok(s.view_of(&s.units));
        }
        let gap_start = rest.first().map_or(history.len(), |u| u.range.start);
        let gap_end = tail.first().map_or(history.len(), |u| u.range.start);
        let mut out = Vec::with_capacity(s.lead + head_count + 1 + tail.len() * 2);
        out.extend_from_slice(s.system());
        for u in &s.units[..head_units] {
            out.extend_from_slice(s.messages(u));
        }
        out.push(skipped_marker(gap_end - gap_start));
        for u in tail {
            out.extend_from_slice(s.messages(u));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::is_well_paired;
    use crate::message::{ToolCall, ToolResult};
    use crate::testing::TestContext;

    fn call(id: &str) -> Message {
        Message::tool_calls("a", vec![ToolCall::new(id, "f", "{}")])
    }

    fn result(id: &str) -> Message {
        Message::tool_results(
            "a",
            vec![ToolResult {
                call_id: id.into(),
                name: "f".into(),
                content: "ok".into(),
                is_error: false,
            }],
        )
    }

    #[tokio::test]
    async fn last_n_does_not_start_with_an_orphaned_result() {
        let history = vec![
            Message::system("sys"),
            Message::user("task"),
            call("1"),
            result("1"),
            Message::assistant("a", "done"),
        ];
        // A plain last-2 cut would start at the result; the pair is dropped instead.
        let view = LastN::new(2)
            .view(&history, &TestContext::new())
            .await
            .unwrap();
        assert_eq!(view, vec![history[0].clone(), history[4].clone()]);
        let view = LastN::new(3)
            .view(&history, &TestContext::new())
            .await
            .unwrap();
        assert_eq!(
            view,
            vec![
                history[0].clone(),
                history[2].clone(),
                history[3].clone(),
                history[4].clone()
            ]
        );
    }

    #[tokio::test]
    async fn last_n_keeps_the_newest_tool_group_even_when_it_is_longer() {
        let history = vec![Message::user("task"), call("1"), result("1")];
        let view = LastN::new(1)
            .view(&history, &TestContext::new())
            .await
            .unwrap();
        assert_eq!(view, history[1..].to_vec());
        assert!(is_well_paired(&view));
    }

    #[tokio::test]
    async fn head_tail_counts_skipped_messages_and_keeps_pairs() {
        let history = vec![
            Message::user("task"),
            call("1"),
            result("1"),
            Message::assistant("a", "x"),
            Message::assistant("b", "y"),
            call("2"),
            result("2"),
        ];
        // head 2 cannot take the call without its result; tail 1 keeps the newest group whole.
        let view = HeadTail::new(2, 1)
            .view(&history, &TestContext::new())
            .await
            .unwrap();
        assert_eq!(
            view,
            vec![
                history[0].clone(),
                skipped_marker(4),
                history[5].clone(),
                history[6].clone()
            ]
        );
    }
}
