//! Tool-call pairing: the units a history policy keeps or drops whole.
//!
//! Providers reject a tool result whose call is missing and a call without its results, so no
//! policy may cut between them. Every built-in policy works on the [`Unit`]s this module finds
//! instead of on single messages; a policy you write should do the same.

use std::ops::Range;

use crate::message::{Content, Message, Role};

/// What a [`Unit`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// One message that is not tool traffic: text, handoff, stop or system.
    Message,
    /// A tool-call message followed by the result message(s) answering every call in it.
    ToolGroup,
    /// Tool traffic that cannot be sent: results not preceded by their call, calls that are not
    /// (or not all) answered, or a call message with no calls. Policies leave it out of the view.
    Orphan,
}

/// A run of messages a policy keeps or drops as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unit {
    /// Where the unit sits in the history it was found in.
    pub range: Range<usize>,
    /// What it holds.
    pub kind: UnitKind,
}

impl Unit {
    /// Number of messages in the unit.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Always false: a unit holds at least one message.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// True when the unit may be sent to a model (it is not an orphan).
    pub fn is_sendable(&self) -> bool {
        self.kind != UnitKind::Orphan
    }
}

/// Splits `history` into units, oldest first. The units cover every message exactly once.
///
/// A tool-call message and the tool-result messages directly after it that answer its calls form
/// one [`UnitKind::ToolGroup`] when every call is answered; anything else tool-related is an
/// [`UnitKind::Orphan`].
///
/// ```
/// use agent_core::history::{is_well_paired, units, UnitKind};
/// use agent_core::{Message, ToolCall, ToolResult};
///
/// let call = Message::tool_calls("a", vec![ToolCall::new("c1", "add", "{}")]);
/// let result = Message::tool_results("a", vec![ToolResult {
///     call_id: "c1".into(), name: "add".into(), content: "2".into(), is_error: false,
/// }]);
/// let history = vec![Message::user("task"), call, result.clone(), result];
/// let kinds: Vec<UnitKind> = units(&history).into_iter().map(|u| u.kind).collect();
/// assert_eq!(kinds, [UnitKind::Message, UnitKind::ToolGroup, UnitKind::Orphan]);
/// assert!(!is_well_paired(&history));
/// assert!(is_well_paired(&history[..3]));
/// ```
pub fn units(history: &[Message]) -> Vec<Unit> {
    let mut out = Vec::with_capacity(history.len());
    let mut i = 0;
    while i < history.len() {
        let unit = match &history[i].content {
            Content::ToolCalls { calls } => tool_group(history, i, calls.len()),
            Content::ToolResults { .. } => Unit {
                range: i..i + 1,
                kind: UnitKind::Orphan,
            },
            _ => Unit {
                range: i..i + 1,
                kind: UnitKind::Message,
            },
        };
        i = unit.range.end;
        out.push(unit);
    }
    out
}

/// The unit starting at the tool-call message `start`.
fn tool_group(history: &[Message], start: usize, call_count: usize) -> Unit {
    let calls = history[start].calls();
    // Calls per message are few (a handful), so a flag per call beats a hash set.
    let mut answered = vec![false; call_count];
    let mut end = start + 1;
    while end < history.len() && answered.iter().any(|a| !a) {
        let results = match &history[end].content {
            Content::ToolResults { results } => results,
            _ => break,
        };
        let positions: Option<Vec<usize>> = results
            .iter()
            .map(|r| calls.iter().position(|c| c.id == r.call_id))
            .collect();
        match positions {
            // A result message that answers something else ends the group.
            Some(positions) if !positions.is_empty() => {
                for p in positions {
                    answered[p] = true;
                }
                end += 1;
            }
            _ => break,
        }
    }
    let complete = call_count > 0 && answered.iter().all(|a| *a);
    Unit {
        range: start..end,
        kind: if complete {
            UnitKind::ToolGroup
        } else {
            UnitKind::Orphan
        },
    }
}

/// True when `messages` holds no orphaned tool traffic: every result follows its call and every
/// call is answered.
pub fn is_well_paired(messages: &[Message]) -> bool {
    units(messages).iter().all(Unit::is_sendable)
}

/// A history split the way every built-in policy sees it: the leading system messages (always
/// kept) and the sendable units after them (orphans already left out).
#[derive(Debug)]
pub(crate) struct Sendable<'a> {
    pub(crate) history: &'a [Message],
    /// Number of leading system messages.
    pub(crate) lead: usize,
    /// Sendable units after the leading system messages, with ranges into `history`.
    pub(crate) units: Vec<Unit>,
}

impl<'a> Sendable<'a> {
    pub(crate) fn new(history: &'a [Message]) -> Self {
        let lead = history
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        let units = units(&history[lead..])
            .into_iter()
            .filter(Unit::is_sendable)
            .map(|u| Unit {
                range: u.range.start + lead..u.range.end + lead,
                kind: u.kind,
            })
            .collect();
        Self {
            history,
            lead,
            units,
        }
    }

    /// The leading system messages.
    pub(crate) fn system(&self) -> &'a [Message] {
        &self.history[..self.lead]
    }

    /// The messages of `unit`.
    pub(crate) fn messages(&self, unit: &Unit) -> &'a [Message] {
        &self.history[unit.range.clone()]
    }

    /// Messages in all sendable units.
    pub(crate) fn message_count(&self) -> usize {
        self.units.iter().map(Unit::len).sum()
    }

    /// The system messages, then `units` in order, then nothing else.
    pub(crate) fn view_of(&self, units: &[Unit]) -> Vec<Message> {
        let count: usize = units.iter().map(Unit::len).sum();
        let mut out = Vec::with_capacity(self.lead + count + 1);
        out.extend_from_slice(self.system());
        for u in units {
            out.extend_from_slice(self.messages(u));
        }
        out
    }

    /// How many units at the end fit in `max` messages. The newest unit is kept whole even when
    /// it alone is longer (as long as `max > 0`), so a window never hides the latest exchange.
    pub(crate) fn tail_units(&self, max: usize, available: &[Unit]) -> usize {
        let mut taken = 0;
        let mut count = 0;
        for u in available.iter().rev() {
            if count + u.len() > max && !(taken == 0 && max > 0) {
                break;
            }
            count += u.len();
            taken += 1;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ToolCall, ToolResult};

    fn result(id: &str) -> ToolResult {
        ToolResult {
            call_id: id.into(),
            name: "f".into(),
            content: "ok".into(),
            is_error: false,
        }
    }

    #[test]
    fn results_split_over_two_messages_still_pair() {
        let h = vec![
            Message::tool_calls(
                "a",
                vec![ToolCall::new("1", "f", "{}"), ToolCall::new("2", "f", "{}")],
            ),
            Message::tool_results("a", vec![result("1")]),
            Message::tool_results("a", vec![result("2")]),
            Message::user("next"),
        ];
        let u = units(&h);
        assert_eq!(u[0].range, 0..3);
        assert_eq!(u[0].kind, UnitKind::ToolGroup);
        assert_eq!(u[1].kind, UnitKind::Message);
    }

    #[test]
    fn partly_answered_or_empty_calls_are_orphans() {
        let h = vec![
            Message::tool_calls(
                "a",
                vec![ToolCall::new("1", "f", "{}"), ToolCall::new("2", "f", "{}")],
            ),
            Message::tool_results("a", vec![result("1")]),
            Message::tool_calls("a", Vec::<ToolCall>::new()),
            Message::tool_calls("a", vec![ToolCall::new("3", "f", "{}")]),
        ];
        let kinds: Vec<_> = units(&h).into_iter().map(|u| (u.range, u.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0..2, UnitKind::Orphan),
                (2..3, UnitKind::Orphan),
                (3..4, UnitKind::Orphan),
            ]
        );
    }

    #[test]
    fn a_result_for_another_call_ends_the_group() {
        let h = vec![
            Message::tool_calls("a", vec![ToolCall::new("1", "f", "{}")]),
            Message::tool_results("a", vec![result("9")]),
            Message::tool_results("a", vec![result("1")]),
        ];
        assert!(units(&h).iter().all(|u| u.kind == UnitKind::Orphan));
    }

    #[test]
    fn tail_keeps_the_newest_unit_whole() {
        let h = vec![
            Message::user("a"),
            Message::tool_calls("a", vec![ToolCall::new("1", "f", "{}")]),
            Message::tool_results("a", vec![result("1")]),
        ];
        let s = Sendable::new(&h);
        assert_eq!(s.tail_units(1, &s.units), 1);
        assert_eq!(s.tail_units(2, &s.units), 1);
        assert_eq!(s.tail_units(3, &s.units), 2);
        assert_eq!(s.tail_units(0, &s.units), 0);
    }
}
