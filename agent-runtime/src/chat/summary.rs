//! Summaries of finished chat runs (AG2's `summary_method`): what a nested chat replies with and
//! what a sequential chat carries into the next one.

use std::fmt;
use std::sync::Arc;

use agent_core::{CallError, CallKind, ChatModel, ChatRequest, Message, StopReason, TurnContext};

use crate::context::SchedulerContext;

/// A user-written summary: the chat's whole thread and why the run stopped.
pub type SummaryFn = Arc<dyn Fn(&[Message], &StopReason) -> String + Send + Sync>;

/// How a chat run is summarized into [`ChatResult::summary`](super::ChatResult::summary).
///
/// ```
/// use agent_core::ScriptedModel;
/// use agent_runtime::chat::SummaryMethod;
///
/// let reflect = SummaryMethod::reflection(ScriptedModel::new("test/summarizer"));
/// let custom = SummaryMethod::custom(|messages, _stop| format!("{} messages", messages.len()));
/// # let _ = (reflect, custom);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum SummaryMethod {
    /// The text of the thread's last message that has text (AG2's `last_msg`, the default).
    #[default]
    LastMessage,
    /// One model call over the whole thread followed by `prompt` as a system message (AG2's
    /// `reflection_with_llm`). The call goes through the scheduler on the chat's budget, under the
    /// chat's name with [`CallKind::Reflection`], and counts in the run's usage. When the run was
    /// cancelled, or the budget refuses the call, the summary falls back to the last message.
    Reflection {
        /// The model.
        model: Arc<dyn ChatModel>,
        /// The instruction.
        prompt: Arc<str>,
    },
    /// A function of the thread and the stop reason.
    Custom(SummaryFn),
}

impl fmt::Debug for SummaryMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SummaryMethod::LastMessage => f.write_str("LastMessage"),
            SummaryMethod::Reflection { model, prompt } => f
                .debug_struct("Reflection")
                .field("model", &model.id())
                .field("prompt", prompt)
                .finish(),
            SummaryMethod::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl SummaryMethod {
    /// AG2's reflection prompt.
    pub const REFLECTION_PROMPT: &'static str =
        "Summarize the takeaway from the conversation. Do not add any introductory phrases.";

    /// Reflection with `model` and AG2's prompt.
    pub fn reflection(model: impl ChatModel + 'static) -> Self {
        SummaryMethod::Reflection {
            model: Arc::new(model),
            prompt: Arc::from(Self::REFLECTION_PROMPT),
        }
    }

    /// A custom summary function.
    pub fn custom(f: impl Fn(&[Message], &StopReason) -> String + Send + Sync + 'static) -> Self {
        SummaryMethod::Custom(Arc::new(f))
    }

    /// Summarizes `thread`; `ctx` is the chat's own context (for the reflection call).
    pub(crate) async fn summarize(
        &self,
        thread: &[Message],
        stop: &StopReason,
        ctx: &SchedulerContext,
    ) -> Result<String, CallError> {
        match self {
            SummaryMethod::LastMessage => Ok(last_text(thread)),
            SummaryMethod::Custom(f) => Ok(f(thread, stop)),
            SummaryMethod::Reflection { model, prompt } => {
                if thread.is_empty() || matches!(stop, StopReason::Cancelled) {
                    return Ok(last_text(thread));
                }
                let mut messages = Vec::with_capacity(thread.len() + 1);
                messages.extend_from_slice(thread);
                messages.push(Message::system(prompt.clone()));
                match ctx
                    .complete(&**model, ChatRequest::new(messages), CallKind::Reflection)
                    .await
                {
                    Ok(c) => Ok(c.message.text().unwrap_or_default().to_owned()),
                    Err(CallError::BudgetExhausted(_) | CallError::Cancelled) => {
                        Ok(last_text(thread))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// The text of the last message that has text, or an empty string.
pub(crate) fn last_text(thread: &[Message]) -> String {
    thread
        .iter()
        .rev()
        .find_map(Message::text)
        .unwrap_or_default()
        .to_owned()
}
