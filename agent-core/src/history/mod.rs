//! History policies: what a model sees of a conversation.
//!
//! A policy builds a *view* for one model call; the stored transcript is never changed. Every
//! policy keeps tool traffic whole: a tool result never appears without the call that asked for it,
//! and a call never without its results.

use async_trait::async_trait;

use crate::agent::{CallError, TurnContext};
use crate::message::Message;

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

/// Sends the whole history.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbounded;

#[async_trait]
impl HistoryPolicy for Unbounded {
    async fn view(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        Ok(history.to_vec())
    }
}
