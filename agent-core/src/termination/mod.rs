//! Termination: when a conversation stops, and the typed reason it gives.
//!
//! A [`Termination`] is evaluated on the **delta** of new messages (the task messages first, then
//! each agent's reply with its inner tool traffic), keeps state across calls, and is `reset` when a
//! chat starts over. Built-in conditions follow AutoGen-agentchat's semantics; see
//! `docs/termination.md` for each condition's exact behaviour and stop text.
//!
//! | Condition | Stops when |
//! |---|---|
//! | [`MaxMessages`] | the number of messages seen (task included) reaches a cap |
//! | [`TextMention`] | a message's text contains a string (optionally only from given sources) |
//! | [`TokenUsage`] | summed [`Usage`](crate::Usage) of messages reaches a total/prompt/completion cap |
//! | [`Timeout`] | a duration has passed since the first check |
//! | [`External`] | another task called [`ExternalHandle::set`] |
//! | [`SourceMatch`] | one of the given sources produced a message |
//! | [`HandoffTo`] | a handoff to the target was seen |
//! | [`StopMessage`] | a stop message was seen |
//! | [`ToolExecuted`] | a result of the named tool was seen |
//! | [`TextMessageFrom`] | a plain text message arrived (from anyone, or from one source) |
//! | [`Functional`] | a predicate over the delta returned true |
//!
//! Compose them with `&` / `|` (or [`TerminationExt::and`] / [`TerminationExt::or`]): [`And`]
//! remembers children that already fired, [`Or`] asks all children every time. The chat itself
//! adds stops no condition raises (turn caps, budget exhaustion); those are [`StopReason`]
//! variants too, so callers branch on one type.
//!
//! ```
//! use agent_core::Message;
//! use agent_core::termination::{MaxMessages, Termination, TextMention};
//!
//! let mut stop = MaxMessages::new(5) | TextMention::new("TERMINATE");
//!
//! // The chat checks the task messages first...
//! assert!(stop.check(&[Message::user("Write a haiku about queues.")]).is_none());
//! // ...then each reply, with its tool traffic, as one delta.
//! assert!(stop.check(&[Message::assistant("writer", "Patient lines of calls")]).is_none());
//! let reason = stop
//!     .check(&[Message::assistant("critic", "Lovely. TERMINATE")])
//!     .unwrap();
//! assert_eq!(reason.to_string(), "Text 'TERMINATE' mentioned");
//!
//! // Asked again, a terminated condition gives the same reason without looking at the delta.
//! assert_eq!(stop.check(&[]), Some(reason));
//! // Reset forgets everything: the message count starts from zero again.
//! stop.reset();
//! assert!(!stop.is_terminated());
//! ```

mod combinators;
mod conditions;

pub use combinators::{And, Or, TerminationExt};
pub use conditions::{
    External, ExternalHandle, Functional, HandoffTo, MaxMessages, SourceMatch, StopMessage,
    TextMention, TextMessageFrom, Timeout, TokenUsage, TokenUsageBuilder, ToolExecuted,
};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetExhausted;
use crate::message::Message;

/// Why a conversation stopped. Typed so callers can branch; `Display` gives the human text
/// (AutoGen's wording where AutoGen has the condition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// `MaxMessages`: the message count (task messages included) reached the cap.
    MaxMessages {
        /// The cap.
        max: usize,
        /// Messages counted.
        count: usize,
    },
    /// `TextMention`: a message contained the text.
    TextMention {
        /// The text looked for.
        text: String,
    },
    /// `TokenUsage`: reported usage reached a cap.
    TokenUsage {
        /// Total tokens counted.
        total: u64,
        /// Prompt tokens counted.
        prompt: u64,
        /// Completion tokens counted.
        completion: u64,
    },
    /// `Timeout`: the time since the condition was first checked reached the limit.
    Timeout {
        /// The limit in seconds.
        seconds: f64,
    },
    /// `External`: another task asked the chat to stop.
    External,
    /// `SourceMatch`: one of the given sources spoke.
    SourceMatch {
        /// The source that spoke.
        source: String,
    },
    /// `HandoffTo`: a handoff to the target was seen.
    Handoff {
        /// The handoff target.
        target: String,
        /// Who handed off.
        source: String,
    },
    /// `StopMessage`: a stop message was seen.
    StopMessage,
    /// `ToolExecuted`: the named tool was executed.
    ToolExecuted {
        /// The tool.
        name: String,
    },
    /// `TextMessageFrom`: a text message arrived (from the given source, if one was set).
    TextMessage {
        /// Its source.
        source: String,
    },
    /// `Functional`: the user's predicate returned true.
    Functional,
    /// A reply matched the two-agent chat's termination predicate (default: exactly `TERMINATE`).
    TerminationMessage {
        /// Who sent it.
        source: String,
    },
    /// The chat's turn cap (agent replies) was reached.
    MaxTurns {
        /// The cap.
        max: u32,
    },
    /// An agent reached `max_consecutive_auto_reply`.
    MaxConsecutiveAutoReply {
        /// The agent.
        agent: String,
        /// The cap.
        max: u32,
    },
    /// The conversation's budget (or an ancestor's) ran out.
    BudgetExhausted(BudgetExhausted),
    /// Speaker selection found nobody allowed to speak next.
    NoEligibleSpeaker {
        /// The last speaker.
        after: String,
    },
    /// An agent replied with no messages.
    EmptyReply {
        /// The agent.
        agent: String,
    },
    /// A run started while its termination condition was already terminated, so the chat stopped
    /// before appending the task (AutoGen's "The group chat has already terminated."). A chat
    /// resets its condition at every stop, at `reset()` and when loading a state, so this happens
    /// only when the condition was handed to the chat already fired, or is a custom condition whose
    /// `is_terminated` reads state outside the chat. That stop resets it like any other.
    AlreadyTerminated,
    /// A reply ended with a stop message ([`Content::Stop`](crate::Content::Stop)), such as a
    /// human typing `exit` to a [`UserProxy`](crate::UserProxy). Every chat stops on one, with no
    /// condition needed (AG2 ends the conversation there too).
    StopRequested {
        /// The agent whose reply ended with the stop message.
        source: String,
        /// The stop message's text (`exit` for a human).
        text: String,
    },
    /// The chat was cancelled.
    Cancelled,
    /// A graph workflow ran out of nodes to run: every path reached a leaf or an edge whose
    /// condition did not hold (AutoGen's `GraphFlow`: "Digraph execution is complete").
    GraphComplete,
    /// A Magentic orchestrator's progress ledger judged the request satisfied; `reason` is the
    /// ledger's own reason (AutoGen's `MagenticOneGroupChat` reports it as the stop reason).
    Satisfied {
        /// Why the orchestrator judged the task done.
        because: String,
    },
    /// Several conditions fired together (AND accumulation, or several OR children).
    Combined(Vec<StopReason>),
    /// A reason given by user code.
    Custom(String),
}

impl StopReason {
    /// Joins reasons: one stays itself, several become `Combined` (nested `Combined`s are flattened).
    pub fn combine(reasons: Vec<StopReason>) -> Option<StopReason> {
        let mut flat = Vec::with_capacity(reasons.len());
        for r in reasons {
            match r {
                StopReason::Combined(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(StopReason::Combined(flat)),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::MaxMessages { max, count } => {
                write!(
                    f,
                    "Maximum number of messages {max} reached, current message count: {count}"
                )
            }
            StopReason::TextMention { text } => write!(f, "Text '{text}' mentioned"),
            StopReason::TokenUsage {
                total,
                prompt,
                completion,
            } => write!(
                f,
                "Token usage limit reached, total token count: {total}, prompt token count: {prompt}, completion token count: {completion}."
            ),
            StopReason::Timeout { seconds } => write!(f, "Timeout of {seconds} seconds reached"),
            StopReason::External => f.write_str("External termination requested"),
            StopReason::SourceMatch { source } => write!(f, "'{source}' answered"),
            StopReason::Handoff { target, source } => {
                write!(f, "Handoff to {target} from {source} detected.")
            }
            StopReason::StopMessage => f.write_str("Stop message received"),
            StopReason::ToolExecuted { name } => write!(f, "Function '{name}' was executed."),
            StopReason::TextMessage { source } => {
                write!(f, "Text message received from '{source}'")
            }
            StopReason::Functional => f.write_str("Functional termination condition met"),
            StopReason::TerminationMessage { source } => {
                write!(f, "'{source}' sent a termination message")
            }
            StopReason::MaxTurns { max } => write!(f, "Maximum number of turns {max} reached."),
            StopReason::MaxConsecutiveAutoReply { agent, max } => {
                write!(
                    f,
                    "Maximum consecutive auto-replies {max} reached for '{agent}'"
                )
            }
            StopReason::BudgetExhausted(e) => write!(f, "{e}"),
            StopReason::NoEligibleSpeaker { after } => {
                write!(f, "No eligible speaker after '{after}'")
            }
            StopReason::EmptyReply { agent } => write!(f, "'{agent}' had nothing to say"),
            StopReason::AlreadyTerminated => f.write_str("The group chat has already terminated."),
            StopReason::StopRequested { source, text } => {
                write!(f, "'{source}' asked to stop: {text}")
            }
            StopReason::Cancelled => f.write_str("Cancelled"),
            StopReason::GraphComplete => f.write_str("Digraph execution is complete"),
            StopReason::Satisfied { because } => f.write_str(because),
            StopReason::Combined(reasons) => {
                for (i, r) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            StopReason::Custom(text) => f.write_str(text),
        }
    }
}

/// A termination condition was configured in a way that could never work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TerminationConfigError {
    /// [`TokenUsage`] was built without any cap.
    #[error(
        "TokenUsage needs at least one cap: call max_total, max_prompt or max_completion on the builder before build()"
    )]
    NoTokenCap,
}

/// A stop condition, evaluated on each delta of new messages.
///
/// Contract:
/// - `check` receives only the messages since the previous call (task messages included) and
///   accumulates state across calls until `reset`.
/// - Once it has returned `Some`, `is_terminated` is true and further `check`s return the same
///   reason again without looking at the delta (our choice; AutoGen raises instead). The runtime
///   resets conditions when a chat stops, so a resumed chat starts fresh.
pub trait Termination: Send + Sync {
    /// Looks at the new messages; `Some` stops the conversation.
    fn check(&mut self, delta: &[Message]) -> Option<StopReason>;

    /// True after `check` returned `Some`, until `reset`.
    fn is_terminated(&self) -> bool;

    /// Forgets all accumulated state.
    fn reset(&mut self);

    /// Handoff targets this condition stops on by itself, whatever else happened (default:
    /// none). A chat with handoff selection accepts, at `build()`, an agent that can hand off to a
    /// non-participant only when its condition exits on that target — AutoGen's
    /// human-in-the-loop swarm hands off to `"user"` and stops with [`HandoffTo`]`("user")`.
    ///
    /// [`HandoffTo`]: crate::termination::HandoffTo
    fn handoff_exits(&self) -> Vec<String> {
        Vec::new()
    }
}

impl<T: Termination + ?Sized> Termination for Box<T> {
    fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
        (**self).check(delta)
    }
    fn is_terminated(&self) -> bool {
        (**self).is_terminated()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn handoff_exits(&self) -> Vec<String> {
        (**self).handoff_exits()
    }
}

/// A borrowed condition: check it through a `&mut` and keep the condition itself. (`check` and
/// `reset` need `&mut self`, so there is no forwarding impl for `Arc` or `&T`.)
impl<T: Termination + ?Sized> Termination for &mut T {
    fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
        (**self).check(delta)
    }
    fn is_terminated(&self) -> bool {
        (**self).is_terminated()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn handoff_exits(&self) -> Vec<String> {
        (**self).handoff_exits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_twice(mut condition: impl Termination) -> Option<StopReason> {
        condition.check(&[Message::user("a")]);
        condition.check(&[Message::user("b")])
    }

    #[test]
    fn a_borrowed_condition_keeps_its_state_in_the_owner() {
        let mut owned = MaxMessages::new(2);
        assert_eq!(
            check_twice(&mut owned),
            Some(StopReason::MaxMessages { max: 2, count: 2 })
        );
        assert!(owned.is_terminated());
        fn reset(mut condition: impl Termination) {
            condition.reset();
        }
        reset(&mut owned);
        assert!(!owned.is_terminated());
        let boxed: Box<dyn Termination> = Box::new(MaxMessages::new(3));
        assert_eq!(check_twice(boxed), None);
    }
}
