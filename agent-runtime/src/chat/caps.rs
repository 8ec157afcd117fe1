//! The caps a chat enforces itself — turns, messages, consecutive auto-replies, the stop
//! predicate — and their counters. (The budget is checked by the run loop; the termination
//! condition is the user's.) `docs/termination.md#chat-caps` states each cap's exact semantics.

use std::sync::Arc;

use agent_core::{Content, Message, StopReason};

/// A predicate that stops the chat when an appended message satisfies it (AG2's
/// `is_termination_msg`).
pub type TerminationPredicate = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// The turn cap: how many agent replies stop the chat, and the number the stop reason reports
/// (a two-agent chat counts exchanges, AG2-style: `max_turns = N` allows `2N − 1` replies after
/// the initiator's opening message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TurnCap {
    pub(crate) replies: u32,
    pub(crate) reported: u32,
}

/// The caps of one chat.
#[derive(Clone, Default)]
pub(crate) struct Caps {
    pub(crate) max_turns: Option<TurnCap>,
    pub(crate) max_messages: Option<u64>,
    /// Per participant, the agent's own `max_consecutive_auto_reply` or the chat's default.
    pub(crate) auto_reply: Vec<Option<u32>>,
    pub(crate) predicate: Option<TerminationPredicate>,
}

impl std::fmt::Debug for Caps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caps")
            .field("max_turns", &self.max_turns)
            .field("max_messages", &self.max_messages)
            .field("auto_reply", &self.auto_reply)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

/// Counters behind the caps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Agent replies since the last stop.
    pub(crate) turns: u32,
    /// Messages counted toward `max_messages` since the last stop.
    pub(crate) messages: u64,
    /// Automatic replies per participant since the last human reply or new task.
    pub(crate) consecutive: Vec<u32>,
}

/// Whether a message counts toward `max_messages`: chat messages do, inner tool traffic does not
/// (AutoGen's `MaxMessageTermination` with `include_agent_event=False`).
pub(crate) fn counts_as_message(message: &Message) -> bool {
    !matches!(
        message.content,
        Content::ToolCalls { .. } | Content::ToolResults { .. }
    )
}

impl Caps {
    /// Counts `delta` and checks the message cap and the predicate. Several hits combine.
    pub(crate) fn check_delta(
        &self,
        counters: &mut Counters,
        delta: &[Message],
        condition: Option<StopReason>,
    ) -> Option<StopReason> {
        let counted = delta.iter().filter(|m| counts_as_message(m)).count();
        counters.messages = counters
            .messages
            .saturating_add(u64::try_from(counted).unwrap_or(u64::MAX));
        let by_predicate = self.predicate.as_ref().and_then(|p| {
            delta
                .iter()
                .find(|m| p(m))
                .map(|m| StopReason::TerminationMessage {
                    source: m.source().unwrap_or_default().to_owned(),
                })
        });
        let by_count = self.max_messages.and_then(|max| {
            (counters.messages >= max).then_some(StopReason::MaxMessages {
                max: usize::try_from(max).unwrap_or(usize::MAX),
                count: usize::try_from(counters.messages).unwrap_or(usize::MAX),
            })
        });
        if condition.is_none() && by_predicate.is_none() && by_count.is_none() {
            return None;
        }
        StopReason::combine(
            condition
                .into_iter()
                .chain(by_predicate)
                .chain(by_count)
                .collect(),
        )
    }

    /// The consecutive auto-reply cap `speaker` has reached, if any.
    pub(crate) fn auto_reply_reached(&self, counters: &Counters, speaker: usize) -> Option<u32> {
        let cap = self.auto_reply.get(speaker).copied().flatten()?;
        (counters.consecutive.get(speaker).copied().unwrap_or(0) >= cap).then_some(cap)
    }

    /// Records a reply by `speaker` and checks the turn cap.
    pub(crate) fn record_reply(
        &self,
        counters: &mut Counters,
        speaker: usize,
        from_human: bool,
    ) -> Option<StopReason> {
        // Saturating: counters can come from a saved state, and must never wrap past a cap.
        counters.turns = counters.turns.saturating_add(1);
        if from_human {
            counters.consecutive.iter_mut().for_each(|c| *c = 0);
        } else if let Some(c) = counters.consecutive.get_mut(speaker) {
            *c = c.saturating_add(1);
        }
        let cap = self.max_turns?;
        (counters.turns >= cap.replies).then_some(StopReason::MaxTurns { max: cap.reported })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::ToolCall;

    #[test]
    fn tool_traffic_does_not_count_toward_max_messages() {
        let caps = Caps {
            max_messages: Some(3),
            ..Caps::default()
        };
        let mut counters = Counters::default();
        let task = [Message::user("task")];
        assert_eq!(caps.check_delta(&mut counters, &task, None), None);
        let reply = [
            Message::tool_calls("a", vec![ToolCall::new("1", "f", "{}")]),
            Message::assistant("a", "done"),
        ];
        assert_eq!(caps.check_delta(&mut counters, &reply, None), None);
        assert_eq!(counters.messages, 2);
        let stop = caps.check_delta(&mut counters, &[Message::assistant("b", "x")], None);
        assert_eq!(stop, Some(StopReason::MaxMessages { max: 3, count: 3 }));
    }

    #[test]
    fn simultaneous_hits_combine() {
        let caps = Caps {
            max_messages: Some(1),
            predicate: Some(Arc::new(Message::is_terminate)),
            ..Caps::default()
        };
        let mut counters = Counters::default();
        let stop = caps
            .check_delta(
                &mut counters,
                &[Message::assistant("a", "TERMINATE")],
                Some(StopReason::External),
            )
            .unwrap();
        assert_eq!(
            stop,
            StopReason::Combined(vec![
                StopReason::External,
                StopReason::TerminationMessage { source: "a".into() },
                StopReason::MaxMessages { max: 1, count: 1 },
            ])
        );
    }

    #[test]
    fn human_reply_resets_every_auto_reply_counter() {
        let caps = Caps {
            auto_reply: vec![Some(2), None],
            ..Caps::default()
        };
        let mut counters = Counters {
            consecutive: vec![0, 0],
            ..Counters::default()
        };
        caps.record_reply(&mut counters, 0, false);
        caps.record_reply(&mut counters, 1, false);
        assert_eq!(caps.auto_reply_reached(&counters, 0), None);
        caps.record_reply(&mut counters, 0, false);
        assert_eq!(caps.auto_reply_reached(&counters, 0), Some(2));
        assert_eq!(caps.auto_reply_reached(&counters, 1), None);
        caps.record_reply(&mut counters, 1, true);
        assert_eq!(counters.consecutive, vec![0, 0]);
        assert_eq!(counters.turns, 4);
    }

    #[test]
    fn counters_saturate_instead_of_wrapping_past_a_cap() {
        let caps = Caps {
            max_turns: Some(TurnCap {
                replies: 3,
                reported: 3,
            }),
            max_messages: Some(5),
            auto_reply: vec![Some(2)],
            ..Caps::default()
        };
        let mut counters = Counters {
            turns: u32::MAX,
            messages: u64::MAX,
            consecutive: vec![u32::MAX],
        };
        assert_eq!(
            caps.record_reply(&mut counters, 0, false),
            Some(StopReason::MaxTurns { max: 3 })
        );
        assert_eq!(counters.turns, u32::MAX);
        assert_eq!(counters.consecutive, vec![u32::MAX]);
        assert_eq!(caps.auto_reply_reached(&counters, 0), Some(2));
        let stop = caps.check_delta(&mut counters, &[Message::assistant("a", "x")], None);
        assert!(matches!(stop, Some(StopReason::MaxMessages { max: 5, .. })));
        assert_eq!(counters.messages, u64::MAX);
    }
}
