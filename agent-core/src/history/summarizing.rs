//! The summarizing policy: older messages replaced by one summary written by a model.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::HistoryPolicy;
use super::pairing::{Sendable, Unit};
use super::transcript::transcript;
use crate::agent::{CallError, CallKind, TurnContext};
use crate::message::{Message, Role};
use crate::model::{ChatModel, ChatRequest};

/// The default instruction for the summary call.
pub const DEFAULT_SUMMARY_PROMPT: &str = "Summarize the conversation you are given for a participant who will continue it. \
Keep the task, facts, decisions, open questions and tool results that may still matter. \
Do not add any introductory phrases.";

/// The text the summary message starts with; the summary follows on the next line.
pub const SUMMARY_HEADING: &str = "Summary of the earlier conversation:";

/// Conversations whose summary is remembered at once; beyond this the least recently used is
/// forgotten (it is recomputed if that conversation speaks again).
const MAX_CACHED: usize = 1024;

/// Replaces older messages with one summary written by a model, once the history is longer than
/// [`trigger`](Summarizing::trigger) messages; the last [`keep_last`](Summarizing::keep_last)
/// messages are sent as they are.
///
/// **The summary call goes through [`TurnContext::complete`] with [`CallKind::Summary`]**, so it
/// waits for quota and is charged to the budget of the conversation that needed it, like any
/// other call; when the budget is exhausted, `view` fails with that error and the chat stops.
///
/// The summary is cached per conversation: while the summarized part grows by no more than
/// [`refresh_after`](Summarizing::refresh_after) messages, the cached summary is reused and the
/// messages after it are sent in full. A refresh sends the previous summary plus the new messages,
/// not the whole history again. The summary arrives as a user message (no source) beginning with
/// [`SUMMARY_HEADING`]; leading system messages are kept, and tool calls stay with their results
/// on whichever side of the cut they fall.
///
/// ```
/// use std::sync::Arc;
/// use agent_core::history::{HistoryPolicy, Summarizing};
/// use agent_core::{testing::TestContext, CallKind, Message, ScriptedModel, TurnContext};
///
/// let summarizer = ScriptedModel::new("test/summarizer").text("The user counted to 7.");
/// let policy = Summarizing::new(Arc::new(summarizer)).trigger(6).keep_last(2);
/// let history: Vec<Message> = (0..10).map(|i| Message::user(i.to_string())).collect();
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = policy.view(&history, &ctx).await.unwrap();
/// assert_eq!(view.len(), 3);
/// assert!(view[0].text().unwrap().ends_with("The user counted to 7."));
/// assert_eq!(view[2].text(), Some("9"));
/// // The summary call went through the turn context and was charged to its budget.
/// assert_eq!(ctx.calls()[0].kind, CallKind::Summary);
/// assert_eq!(ctx.budget().used().calls, 1);
/// # });
/// ```
pub struct Summarizing {
    model: Arc<dyn ChatModel>,
    keep_last: usize,
    trigger: usize,
    refresh_after: usize,
    prompt: Arc<str>,
    max_completion_tokens: Option<u32>,
    cache: Mutex<Cache>,
}

impl fmt::Debug for Summarizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Summarizing")
            .field("model", &self.model.id())
            .field("keep_last", &self.keep_last)
            .field("trigger", &self.trigger)
            .field("refresh_after", &self.refresh_after)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Arc<str>, Cached>,
    clock: u64,
}

#[derive(Clone)]
struct Cached {
    /// History index where the summarized part ends.
    boundary: usize,
    /// The message just before `boundary`, to tell that the history is still the same one.
    fingerprint: Message,
    summary: Arc<str>,
    last_used: u64,
}

impl Summarizing {
    /// Summarizes with `model`; defaults: trigger 30 messages, keep the last 10, refresh after 10
    /// more, [`DEFAULT_SUMMARY_PROMPT`], at most 1024 completion tokens.
    pub fn new(model: Arc<dyn ChatModel>) -> Self {
        Self {
            model,
            keep_last: 10,
            trigger: 30,
            refresh_after: 10,
            prompt: Arc::from(DEFAULT_SUMMARY_PROMPT),
            max_completion_tokens: Some(1024),
            cache: Mutex::default(),
        }
    }

    /// Messages sent as they are after the summary (the newest exchange is always kept whole).
    #[must_use]
    pub fn keep_last(mut self, messages: usize) -> Self {
        self.keep_last = messages;
        self
    }

    /// Summarize only when the history (system messages aside) is longer than this.
    #[must_use]
    pub fn trigger(mut self, messages: usize) -> Self {
        self.trigger = messages;
        self
    }

    /// Reuse a cached summary until this many more messages would need summarizing.
    #[must_use]
    pub fn refresh_after(mut self, messages: usize) -> Self {
        self.refresh_after = messages;
        self
    }

    /// The instruction sent (as the system message) with the summary call.
    #[must_use]
    pub fn prompt(mut self, prompt: impl Into<Arc<str>>) -> Self {
        self.prompt = prompt.into();
        self
    }

    /// Completion-token limit of the summary call (`None` leaves it to the scheduler's default).
    #[must_use]
    pub fn max_completion_tokens(mut self, max: Option<u32>) -> Self {
        self.max_completion_tokens = max;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A poisoned cache is still a valid cache: at worst a summary is recomputed.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached summary of this conversation, if it still describes a prefix of `history` that
    /// ends on a unit boundary at or before `split`.
    fn cached(&self, conversation: &str, s: &Sendable<'_>, split: usize) -> Option<Cached> {
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        let entry = cache.entries.get_mut(conversation)?;
        let valid = entry.boundary <= split
            && entry.boundary > s.lead
            && s.history.get(entry.boundary - 1) == Some(&entry.fingerprint)
            && (entry.boundary == split || s.units.iter().any(|u| u.range.start == entry.boundary));
        if !valid {
            return None;
        }
        entry.last_used = now;
        Some(entry.clone())
    }

    fn remember(
        &self,
        conversation: &str,
        boundary: usize,
        fingerprint: Message,
        summary: Arc<str>,
    ) {
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        if cache.entries.len() >= MAX_CACHED && !cache.entries.contains_key(conversation) {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.entries.remove(&k);
            }
        }
        cache.entries.insert(
            Arc::from(conversation),
            Cached {
                boundary,
                fingerprint,
                summary,
                last_used: now,
            },
        );
    }

    async fn summarize(
        &self,
        previous: Option<&str>,
        s: &Sendable<'_>,
        units: &[Unit],
        ctx: &dyn TurnContext,
    ) -> Result<Arc<str>, CallError> {
        let messages = units.iter().flat_map(|u| s.messages(u));
        let body = match previous {
            Some(prev) => format!(
                "Summary so far:\n{prev}\n\nNew messages:\n{}",
                transcript(messages)
            ),
            None => format!("Conversation:\n{}", transcript(messages)),
        };
        let mut request = ChatRequest::new(vec![
            Message::system(self.prompt.clone()),
            Message::user(body),
        ]);
        request.max_completion_tokens = self.max_completion_tokens;
        let completion = ctx
            .complete(&*self.model, request, CallKind::Summary)
            .await?;
        Ok(Arc::from(completion.message.text().unwrap_or_default()))
    }
}

/// The message a summary is presented as.
fn summary_message(summary: &str) -> Message {
    Message::new(
        Role::User,
        None,
        crate::message::Content::Text {
            text: format!("{SUMMARY_HEADING}\n{summary}").into(),
        },
    )
}

#[async_trait]
impl HistoryPolicy for Summarizing {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let s = Sendable::new(history);
        if s.message_count() <= self.trigger {
            return Ok(s.view_of(&s.units));
        }
        let keep = s.tail_units(self.keep_last, &s.units);
        let split_unit = s.units.len() - keep;
        let Some(split) = s.units.get(split_unit).map(|u| u.range.start) else {
            // Nothing to keep after a summary (keep_last 0 and no tail): summarize everything up
            // to the end.
            return self.view_split(&s, s.units.len(), history.len(), ctx).await;
        };
        if split_unit == 0 {
            return Ok(s.view_of(&s.units));
        }
        self.view_split(&s, split_unit, split, ctx).await
    }
}

impl Summarizing {
    /// The view with units `[0, split_unit)` (history up to index `split`) summarized.
    async fn view_split(
        &self,
        s: &Sendable<'_>,
        split_unit: usize,
        split: usize,
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let conversation = ctx.conversation();
        let (boundary, summary) = match self.cached(conversation, s, split) {
            Some(c) if split - c.boundary <= self.refresh_after => (c.boundary, c.summary),
            cached => {
                // Summarize what is new since the cached summary, or everything before the cut.
                let from = cached.as_ref().map_or(0, |c| {
                    s.units
                        .iter()
                        .position(|u| u.range.start >= c.boundary)
                        .unwrap_or(split_unit)
                });
                let previous = cached.as_ref().map(|c| &*c.summary);
                let summary = self
                    .summarize(previous, s, &s.units[from..split_unit], ctx)
                    .await?;
                self.remember(
                    conversation,
                    split,
                    s.history[split - 1].clone(),
                    summary.clone(),
                );
                (split, summary)
            }
        };
        let tail: Vec<Unit> = s
            .units
            .iter()
            .filter(|u| u.range.start >= boundary)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(s.lead + 1 + tail.iter().map(Unit::len).sum::<usize>());
        out.extend_from_slice(s.system());
        out.push(summary_message(&summary));
        for u in &tail {
            out.extend_from_slice(s.messages(u));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budget, BudgetLimits};
    use crate::history::is_well_paired;
    use crate::message::{ToolCall, ToolResult};
    use crate::scripted::ScriptedModel;
    use crate::testing::TestContext;

    fn history(n: usize) -> Vec<Message> {
        (0..n).map(|i| Message::user(format!("m{i}"))).collect()
    }

    fn model() -> ScriptedModel {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        ScriptedModel::new("test/sum").with_responder(move |_| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(crate::model::Completion::text(
                "x",
                format!("summary {n}"),
                crate::message::Usage::new(10, 5),
            ))
        })
    }

    #[tokio::test]
    async fn summary_call_goes_through_the_context_and_is_charged() {
        let model = model();
        let ctx = TestContext::new().with_budget(Budget::new("chat", BudgetLimits::calls(10)));
        let policy = Summarizing::new(Arc::new(model.clone()))
            .trigger(4)
            .keep_last(2);
        let mut h = vec![Message::system("sys")];
        h.extend(history(6));
        let view = policy.view(&h, &ctx).await.unwrap();
        assert_eq!(view[0], h[0]);
        assert_eq!(view[1], summary_message("summary 0"));
        assert_eq!(&view[2..], &h[5..]);
        let calls = ctx.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].kind, CallKind::Summary);
        assert_eq!(calls[0].model, "test/sum");
        // The summarized messages, not the kept ones, are in the request.
        let body = calls[0].request.messages[1].text().unwrap().to_owned();
        assert!(body.contains("m3") && !body.contains("m4"), "{body}");
        assert_eq!(ctx.budget().used().calls, 1);
        assert_eq!(ctx.budget().used().tokens, 15);
        assert_eq!(model.request_count(), 1);
    }

    #[tokio::test]
    async fn an_exhausted_budget_fails_the_view() {
        let ctx = TestContext::new().with_budget(Budget::new("chat", BudgetLimits::calls(0)));
        let policy = Summarizing::new(Arc::new(model())).trigger(2).keep_last(1);
        let err = policy.view(&history(5), &ctx).await.unwrap_err();
        assert!(err.is_budget_exhausted(), "{err}");
    }

    #[tokio::test]
    async fn cached_summary_is_reused_then_refreshed_incrementally() {
        let model = model();
        let ctx = TestContext::new();
        let policy = Summarizing::new(Arc::new(model.clone()))
            .trigger(4)
            .keep_last(2)
            .refresh_after(2);
        let h = history(12);
        let v1 = policy.view(&h[..6], &ctx).await.unwrap();
        assert_eq!(v1[0], summary_message("summary 0"));
        // Two more messages: the summarized part grew by 2 ≤ refresh_after, no new call.
        let v2 = policy.view(&h[..8], &ctx).await.unwrap();
        assert_eq!(model.request_count(), 1);
        assert_eq!(v2[0], summary_message("summary 0"));
        assert_eq!(&v2[1..], &h[4..8]);
        // Three more: refresh, sending the previous summary and only the new messages.
        let v3 = policy.view(&h[..11], &ctx).await.unwrap();
        assert_eq!(model.request_count(), 2);
        assert_eq!(v3[0], summary_message("summary 1"));
        assert_eq!(&v3[1..], &h[9..11]);
        let body = ctx.calls()[1].request.messages[1]
            .text()
            .unwrap()
            .to_owned();
        assert!(body.starts_with("Summary so far:\nsummary 0"), "{body}");
        assert!(
            body.contains("m4") && body.contains("m8") && !body.contains("m3"),
            "{body}"
        );
        // Another conversation (or a rewritten history) does not reuse it.
        let mut other = h[..8].to_vec();
        other[3] = Message::user("changed");
        let _ = policy.view(&other, &ctx).await.unwrap();
        assert_eq!(model.request_count(), 3);
    }

    #[tokio::test]
    async fn the_cut_never_separates_a_call_from_its_results() {
        let ctx = TestContext::new();
        let policy = Summarizing::new(Arc::new(model())).trigger(3).keep_last(2);
        let h = vec![
            Message::user("task"),
            Message::assistant("a", "thinking"),
            Message::tool_calls("a", vec![ToolCall::new("1", "f", "{}")]),
            Message::tool_results(
                "a",
                vec![ToolResult {
                    call_id: "1".into(),
                    name: "f".into(),
                    content: "ok".into(),
                    is_error: false,
                }],
            ),
            Message::assistant("a", "done"),
        ];
        // keep_last 2 would start at the result; the whole group moves into the summary.
        let view = policy.view(&h, &ctx).await.unwrap();
        assert_eq!(view.len(), 2);
        assert_eq!(view[1], h[4]);
        assert!(is_well_paired(&view));
        let body = ctx.calls()[0].request.messages[1]
            .text()
            .unwrap()
            .to_owned();
        assert!(body.contains("[tool f returned] ok"), "{body}");
    }
}
