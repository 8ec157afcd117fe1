//! History policies: what a model sees of a conversation.
//!
//! A policy builds a *view* for one model call; the stored transcript is never changed. Every
//! policy keeps tool traffic whole: a tool result never appears without the call that asked for it,
//! and a call never without its results (see [`units`]). Tool traffic that is already broken in the
//! history (a call nobody answered yet, a result whose call is gone) is left out of every view,
//! because providers reject it. Leading system messages are always kept.
//!
//! | Policy | Peer equivalent |
//! |---|---|
//! | [`Unbounded`] | AutoGen `UnboundedChatCompletionContext` |
//! | [`LastN`] | AutoGen `BufferedChatCompletionContext`, AG2 `MessageHistoryLimiter` |
//! | [`HeadTail`] | AutoGen `HeadAndTailChatCompletionContext` |
//! | [`TokenLimited`] | AutoGen `TokenLimitedChatCompletionContext` |
//! | [`TruncateLong`] | AG2 `MessageTokenLimiter(max_tokens_per_message)` |
//! | [`Summarizing`] | CrewAI `respect_context_window`, LangChain `SummarizationMiddleware` |
//! | [`Chain`] | AG2 `TransformMessages` with several transforms |

use async_trait::async_trait;

use crate::agent::{CallError, TurnContext};
use crate::message::Message;

mod chain;
mod pairing;
mod summarizing;
mod tokens;
pub(crate) mod transcript;
mod window;

#[cfg(test)]
mod proptests;

pub use chain::Chain;
pub use pairing::{Unit, UnitKind, is_well_paired, units};
pub use summarizing::{DEFAULT_SUMMARY_PROMPT, SUMMARY_HEADING, Summarizing};
pub(crate) use tokens::truncate_at;
pub use tokens::{TokenLimited, TruncateLong};
pub use window::{HeadTail, LastN};

/// Builds the view of `history` a model call sees.
///
/// `ctx` is the turn's context: a policy that needs a model (summarizing) calls it through
/// [`TurnContext::complete`], so the call is budgeted and rate-limited like any other.
#[async_trait]
pub trait HistoryPolicy: Send + Sync {
    /// The messages to send, oldest first.
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError>;
}

#[async_trait]
impl<P: HistoryPolicy + ?Sized> HistoryPolicy for std::sync::Arc<P> {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        (**self).view(history, ctx).await
    }
}

#[async_trait]
impl<P: HistoryPolicy + ?Sized> HistoryPolicy for Box<P> {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        (**self).view(history, ctx).await
    }
}

#[async_trait]
impl<P: HistoryPolicy + ?Sized> HistoryPolicy for &P {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        (**self).view(history, ctx).await
    }
}

/// Sends the whole history (less any orphaned tool traffic, as every policy does).
///
/// ```
/// use agent_core::history::{HistoryPolicy, Unbounded};
/// use agent_core::{testing::TestContext, Message, ToolCall};
///
/// let history = vec![
///     Message::user("task"),
///     Message::assistant("a", "on it"),
///     // A call another agent has not answered yet: providers would reject it.
///     Message::tool_calls("a", vec![ToolCall::new("c1", "search", "{}")]),
/// ];
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = Unbounded.view(&history, &TestContext::new()).await.unwrap();
/// assert_eq!(view, history[..2]);
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbounded;

#[async_trait]
impl HistoryPolicy for Unbounded {
    async fn view(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let s = pairing::Sendable::new(history);
        Ok(s.view_of(&s.units))
    }
}
