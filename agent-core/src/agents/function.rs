//! The function agent: a closure over the history.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::agent::{Agent, AgentError, AgentReply, TurnContext};
use crate::message::Message;

/// What a [`FunctionAgent`]'s closure may return.
///
/// Text becomes an assistant message from the agent; a [`Message`] or [`AgentReply`] is used as
/// is (set its source yourself); `Result` lets the closure fail the turn.
pub trait IntoReply {
    /// The reply of agent `agent`.
    fn into_reply(self, agent: &Arc<str>) -> Result<AgentReply, AgentError>;
}

impl IntoReply for String {
    fn into_reply(self, agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(Message::assistant(agent.clone(), self)))
    }
}

impl IntoReply for &str {
    fn into_reply(self, agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(Message::assistant(agent.clone(), self)))
    }
}

impl IntoReply for Arc<str> {
    fn into_reply(self, agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(Message::assistant(agent.clone(), self)))
    }
}

impl IntoReply for Message {
    fn into_reply(self, _agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        Ok(AgentReply::message(self))
    }
}

impl IntoReply for AgentReply {
    fn into_reply(self, _agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        Ok(self)
    }
}

impl<T: IntoReply> IntoReply for Result<T, AgentError> {
    fn into_reply(self, agent: &Arc<str>) -> Result<AgentReply, AgentError> {
        self.and_then(|t| t.into_reply(agent))
    }
}

type SyncBody = dyn Fn(&[Message]) -> Result<AgentReply, AgentError> + Send + Sync;
type AsyncBody =
    dyn Fn(Vec<Message>) -> BoxFuture<'static, Result<AgentReply, AgentError>> + Send + Sync;

enum Body {
    Sync(Box<SyncBody>),
    Async(Box<AsyncBody>),
}

/// An agent whose reply is a closure over the history: for tests, benchmarks, and glue code.
///
/// [`new`](FunctionAgent::new) takes a synchronous closure over `&[Message]` and costs nothing per
/// turn beyond the reply it builds. [`new_async`](FunctionAgent::new_async) takes a closure
/// returning a future; it receives the history as an owned `Vec` (one allocation; the messages
/// themselves are shared, not copied). Neither makes model calls; implement [`Agent`] for an agent
/// that needs the [`TurnContext`].
///
/// ```
/// use agent_core::agents::FunctionAgent;
/// use agent_core::{testing::TestContext, Agent, Message};
///
/// let counter = FunctionAgent::new("counter", |history: &[Message]| {
///     format!("{} messages so far", history.len())
/// });
/// let slow_echo = FunctionAgent::new_async("echo", |history: Vec<Message>| async move {
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     history.last().and_then(|m| m.text()).unwrap_or("").to_owned()
/// });
/// let history = [Message::user("hi")];
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let reply = counter.reply(&history, &ctx).await.unwrap();
/// assert_eq!(reply.last().unwrap().text(), Some("1 messages so far"));
/// assert_eq!(reply.last().unwrap().source(), Some("counter"));
/// let reply = slow_echo.reply(&history, &ctx).await.unwrap();
/// assert_eq!(reply.last().unwrap().text(), Some("hi"));
/// # });
/// ```
pub struct FunctionAgent {
    name: Arc<str>,
    description: Arc<str>,
    max_consecutive_auto_reply: Option<u32>,
    body: Body,
}

impl fmt::Debug for FunctionAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionAgent")
            .field("name", &self.name)
            .field(
                "kind",
                &match self.body {
                    Body::Sync(_) => "sync",
                    Body::Async(_) => "async",
                },
            )
            .field(
                "max_consecutive_auto_reply",
                &self.max_consecutive_auto_reply,
            )
            .finish_non_exhaustive()
    }
}

impl FunctionAgent {
    /// An agent called `name` that replies with `f(history)`. The chat checks that names are
    /// unique and not empty.
    pub fn new<F, R>(name: impl Into<Arc<str>>, f: F) -> Self
    where
        F: Fn(&[Message]) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        let name = name.into();
        let own = name.clone();
        Self::with_body(name, Body::Sync(Box::new(move |h| f(h).into_reply(&own))))
    }

    /// An agent called `name` that replies with `f(history).await`.
    pub fn new_async<F, Fut, R>(name: impl Into<Arc<str>>, f: F) -> Self
    where
        F: Fn(Vec<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply,
    {
        let name = name.into();
        let own = name.clone();
        Self::with_body(
            name,
            Body::Async(Box::new(move |h| {
                let reply = f(h);
                let own = own.clone();
                Box::pin(async move { reply.await.into_reply(&own) })
            })),
        )
    }

    fn with_body(name: Arc<str>, body: Body) -> Self {
        Self {
            name,
            description: Arc::from(""),
            max_consecutive_auto_reply: None,
            body,
        }
    }

    /// What the agent does, for LLM speaker selection.
    #[must_use]
    pub fn with_description(mut self, text: impl Into<Arc<str>>) -> Self {
        self.description = text.into();
        self
    }

    /// Automatic replies in a row the runtime allows before stopping the chat.
    #[must_use]
    pub fn with_max_consecutive_auto_reply(mut self, max: u32) -> Self {
        self.max_consecutive_auto_reply = Some(max);
        self
    }
}

#[async_trait]
impl Agent for FunctionAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn max_consecutive_auto_reply(&self) -> Option<u32> {
        self.max_consecutive_auto_reply
    }

    async fn reply(
        &self,
        history: &[Message],
        _ctx: &dyn TurnContext,
    ) -> Result<AgentReply, AgentError> {
        match &self.body {
            Body::Sync(f) => f(history),
            Body::Async(f) => f(history.to_vec()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestContext;

    #[tokio::test]
    async fn every_output_kind_becomes_a_reply() {
        let ctx = TestContext::new();
        let h = [Message::user("x")];
        let msg = FunctionAgent::new("a", |_: &[Message]| Message::stop("a", "done"));
        assert_eq!(
            msg.reply(&h, &ctx).await.unwrap().messages,
            vec![Message::stop("a", "done")]
        );
        let failing = FunctionAgent::new("b", |_: &[Message]| -> Result<String, AgentError> {
            Err(AgentError::Other("no".into()))
        });
        assert!(matches!(
            failing.reply(&h, &ctx).await,
            Err(AgentError::Other(m)) if m == "no"
        ));
        let empty = FunctionAgent::new("c", |_: &[Message]| AgentReply::default())
            .with_max_consecutive_auto_reply(3)
            .with_description("says nothing");
        assert!(empty.reply(&h, &ctx).await.unwrap().messages.is_empty());
        assert_eq!(empty.max_consecutive_auto_reply(), Some(3));
        assert_eq!(empty.description(), "says nothing");
    }
}
