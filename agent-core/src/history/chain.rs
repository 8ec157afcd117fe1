//! Policies applied one after another.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::HistoryPolicy;
use crate::agent::{CallError, TurnContext};
use crate::message::Message;

/// Applies policies in order, each to the previous one's view: for example summarize, then cap
/// each message's length.
///
/// Put [`Summarizing`](super::Summarizing) first: its cache recognises the stored transcript,
/// not another policy's view of it.
///
/// ```
/// use std::sync::Arc;
/// use agent_core::history::{Chain, HistoryPolicy, LastN, TruncateLong};
/// use agent_core::{testing::TestContext, Message};
///
/// let policy = Chain::new(vec![Arc::new(LastN::new(2)), Arc::new(TruncateLong::new(20))]);
/// let history = vec![Message::user("a"), Message::user("b"), Message::user("c".repeat(500))];
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = policy.view(&history, &TestContext::new()).await.unwrap();
/// assert_eq!(view.len(), 2);
/// assert!(view[1].text().unwrap().len() < 100);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct Chain {
    policies: Vec<Arc<dyn HistoryPolicy>>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("policies", &self.policies.len())
            .finish()
    }
}

impl Chain {
    /// Applies `policies` in order (an empty chain sends the history unchanged, like
    /// [`Unbounded`](super::Unbounded)).
    pub fn new(policies: Vec<Arc<dyn HistoryPolicy>>) -> Self {
        Self { policies }
    }
}

#[async_trait]
impl HistoryPolicy for Chain {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let Some((first, rest)) = self.policies.split_first() else {
            return super::Unbounded.view(history, ctx).await;
        };
        let mut view = first.view(history, ctx).await?;
        for p in rest {
            view = p.view(&view, ctx).await?;
        }
        Ok(view)
    }
}
