//! The built-in termination conditions, one type per AutoGen-agentchat condition.
//!
//! Every condition here latches: once `check` has returned a reason it returns that same reason
//! again, without looking at the delta, until `reset`. The latch lives in one macro
//! (`latched!`) so the contract is written once; each type only says how it evaluates a delta
//! and what it forgets on reset.
//!
//! The non-firing path of every `check` allocates nothing: the reason (and its strings) is only
//! built when the condition fires, because conditions run after every message of every chat.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{StopReason, Termination, TerminationConfigError};
use crate::message::{Content, Message};

/// Implements [`Termination`] for a condition with a `fired: Option<StopReason>` field, an
/// `evaluate(&mut self, &[Message]) -> Option<StopReason>` method and a `forget(&mut self)` method.
macro_rules! latched {
    ($($ty:ty),+ $(,)?) => {$(
        latched!(@impl $ty, {});
    )+};
    // `$extra`: further trait methods of this condition (its handoff exits).
    (@impl $ty:ty, {$($extra:tt)*}) => {
        impl Termination for $ty {
            fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
                if let Some(reason) = &self.fired {
                    return Some(reason.clone());
                }
                let reason = self.evaluate(delta)?;
                self.fired = Some(reason.clone());
                Some(reason)
            }

            fn is_terminated(&self) -> bool {
                self.fired.is_some()
            }

            fn reset(&mut self) {
                self.fired = None;
                self.forget();
            }

            $($extra)*
        }
    };
}

/// The name a stop text shows for a message's source.
fn source_of(message: &Message) -> String {
    message.source().unwrap_or("unknown").to_owned()
}

/// Tool calls and tool results are the agent's inner traffic (AutoGen's agent events), not chat
/// messages.
fn is_tool_traffic(message: &Message) -> bool {
    matches!(
        message.content,
        Content::ToolCalls { .. } | Content::ToolResults { .. }
    )
}

fn collect_sources<S: Into<Arc<str>>>(sources: impl IntoIterator<Item = S>) -> Box<[Arc<str>]> {
    sources.into_iter().map(Into::into).collect()
}

fn source_in(message: &Message, sources: &[Arc<str>]) -> bool {
    message
        .source()
        .is_some_and(|s| sources.iter().any(|wanted| **wanted == *s))
}

/// Stops when the number of messages seen reaches a cap (AutoGen's `MaxMessageTermination`).
///
/// Every message of every delta counts, **task messages included**, so `MaxMessages::new(3)` on a
/// one-message task allows two agent replies. Tool calls and tool results are the agent's inner
/// traffic and do not count unless [`include_tool_messages(true)`](Self::include_tool_messages)
/// (AutoGen's `include_agent_event`). The whole delta is counted before comparing, so the count in
/// the stop text can exceed the cap. A cap of 0 fires on the first check, even on an empty delta.
///
/// Stop text: `Maximum number of messages 3 reached, current message count: 3`.
///
/// ```
/// use agent_core::Message;
/// use agent_core::termination::{MaxMessages, Termination};
///
/// let mut cap = MaxMessages::new(3);
/// assert!(cap.check(&[Message::user("task")]).is_none());
/// assert!(cap.check(&[Message::assistant("a", "one")]).is_none());
/// let reason = cap.check(&[Message::assistant("b", "two")]).unwrap();
/// assert_eq!(
///     reason.to_string(),
///     "Maximum number of messages 3 reached, current message count: 3"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct MaxMessages {
    max: usize,
    include_tool_messages: bool,
    count: usize,
    fired: Option<StopReason>,
}

impl MaxMessages {
    /// Stops once `max` messages have been seen.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            include_tool_messages: false,
            count: 0,
            fired: None,
        }
    }

    /// Also count tool-call and tool-result messages (default: they are not counted).
    #[must_use]
    pub fn include_tool_messages(mut self, include: bool) -> Self {
        self.include_tool_messages = include;
        self
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        let counted = if self.include_tool_messages {
            delta.len()
        } else {
            delta.iter().filter(|m| !is_tool_traffic(m)).count()
        };
        self.count = self.count.saturating_add(counted);
        (self.count >= self.max).then_some(StopReason::MaxMessages {
            max: self.max,
            count: self.count,
        })
    }

    fn forget(&mut self) {
        self.count = 0;
    }
}

/// Stops when a message's text contains a string (AutoGen's `TextMentionTermination`).
///
/// Looks at the text of text, handoff and stop messages (task messages included); tool calls and
/// tool results are data, not speech, and are never searched. The match is a case-sensitive
/// substring test. With [`from_sources`](Self::from_sources) only messages from those sources are
/// searched (an empty list never fires).
///
/// Stop text: `Text 'TERMINATE' mentioned`.
#[derive(Debug, Clone)]
pub struct TextMention {
    text: Box<str>,
    sources: Option<Box<[Arc<str>]>>,
    fired: Option<StopReason>,
}

impl TextMention {
    /// Stops when any message mentions `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into().into_boxed_str(),
            sources: None,
            fired: None,
        }
    }

    /// Only messages from these sources count.
    #[must_use]
    pub fn from_sources<S: Into<Arc<str>>>(mut self, sources: impl IntoIterator<Item = S>) -> Self {
        self.sources = Some(collect_sources(sources));
        self
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        let sources = self.sources.as_deref();
        delta
            .iter()
            .filter(|m| sources.is_none_or(|s| source_in(m, s)))
            .any(|m| m.text().is_some_and(|t| t.contains(&*self.text)))
            .then(|| StopReason::TextMention {
                text: self.text.to_string(),
            })
    }

    fn forget(&mut self) {}
}

/// Stops when reported token usage reaches a cap (AutoGen's `TokenUsageTermination`).
///
/// Sums [`Message::usage`] over every message of every delta, then fires when any configured cap
/// (total, prompt, completion) is reached (`>=`). Messages without usage (tasks, tool results)
/// add nothing. Usage a model reported but no message carries (a speaker-selection call) is not
/// seen here; budgets see it.
///
/// Stop text: `Token usage limit reached, total token count: 120, prompt token count: 100,
/// completion token count: 20.`
///
/// ```
/// use agent_core::termination::{TerminationConfigError, TokenUsage};
///
/// let cap = TokenUsage::builder().max_total(10_000).max_completion(2_000).build()?;
/// # drop(cap);
/// // At least one cap is required.
/// assert!(matches!(
///     TokenUsage::builder().build(),
///     Err(TerminationConfigError::NoTokenCap)
/// ));
/// # Ok::<(), TerminationConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TokenUsage {
    max_total: Option<u64>,
    max_prompt: Option<u64>,
    max_completion: Option<u64>,
    prompt: u64,
    completion: u64,
    fired: Option<StopReason>,
}

impl TokenUsage {
    /// Starts a builder; set at least one cap, then [`build`](TokenUsageBuilder::build).
    pub fn builder() -> TokenUsageBuilder {
        TokenUsageBuilder::default()
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        for usage in delta.iter().filter_map(|m| m.usage) {
            self.prompt = self.prompt.saturating_add(usage.prompt_tokens);
            self.completion = self.completion.saturating_add(usage.completion_tokens);
        }
        let total = self.prompt.saturating_add(self.completion);
        let reached = |cap: Option<u64>, value: u64| cap.is_some_and(|cap| value >= cap);
        let hit = reached(self.max_total, total)
            || reached(self.max_prompt, self.prompt)
            || reached(self.max_completion, self.completion);
        hit.then_some(StopReason::TokenUsage {
            total,
            prompt: self.prompt,
            completion: self.completion,
        })
    }

    fn forget(&mut self) {
        self.prompt = 0;
        self.completion = 0;
    }
}

/// Builds a [`TokenUsage`] condition; [`build`](Self::build) refuses a builder with no cap.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TokenUsageBuilder {
    max_total: Option<u64>,
    max_prompt: Option<u64>,
    max_completion: Option<u64>,
}

impl TokenUsageBuilder {
    /// Cap on prompt plus completion tokens.
    pub fn max_total(mut self, tokens: u64) -> Self {
        self.max_total = Some(tokens);
        self
    }

    /// Cap on prompt tokens.
    pub fn max_prompt(mut self, tokens: u64) -> Self {
        self.max_prompt = Some(tokens);
        self
    }

    /// Cap on completion tokens.
    pub fn max_completion(mut self, tokens: u64) -> Self {
        self.max_completion = Some(tokens);
        self
    }

    /// The condition, or [`TerminationConfigError::NoTokenCap`] when no cap was set.
    pub fn build(self) -> Result<TokenUsage, TerminationConfigError> {
        if self.max_total.is_none() && self.max_prompt.is_none() && self.max_completion.is_none() {
            return Err(TerminationConfigError::NoTokenCap);
        }
        Ok(TokenUsage {
            max_total: self.max_total,
            max_prompt: self.max_prompt,
            max_completion: self.max_completion,
            prompt: 0,
            completion: 0,
            fired: None,
        })
    }
}

/// Stops once a duration has passed (AutoGen's `TimeoutTermination`).
///
/// The clock starts at the **first `check`** after construction or `reset`, not at construction:
/// a condition is often built long before its chat runs (or stored in a template), and the chat's
/// first check is when its task arrives. It fires on the first `check` at which the elapsed time
/// is `>=` the limit, so it is cooperative: it stops the chat after the message that was in
/// flight, never in the middle of a turn (use cancellation for a hard stop). Time is read from
/// `tokio::time::Instant`, so it follows tokio's paused clock in tests.
///
/// Stop text: `Timeout of 30 seconds reached`.
#[derive(Debug, Clone)]
pub struct Timeout {
    limit: Duration,
    started: Option<Instant>,
    fired: Option<StopReason>,
}

impl Timeout {
    /// Stops once `limit` has passed since the first check.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            started: None,
            fired: None,
        }
    }

    fn evaluate(&mut self, _delta: &[Message]) -> Option<StopReason> {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        (now.saturating_duration_since(started) >= self.limit).then_some(StopReason::Timeout {
            seconds: self.limit.as_secs_f64(),
        })
    }

    fn forget(&mut self) {
        self.started = None;
    }
}

/// Stops when another task asks (AutoGen's `ExternalTermination`).
///
/// Take an [`ExternalHandle`] with [`handle`](Self::handle) before handing the condition to a
/// chat; [`ExternalHandle::set`] may be called from any task or thread. The condition fires at
/// its next `check` (after the message in flight: a graceful stop, not a cancellation).
/// `reset` clears the request, so a `set` that lands after the chat already stopped for another
/// reason does not stop the next run.
///
/// Not `Clone`: two conditions sharing one flag would clear each other's requests on reset.
///
/// Stop text: `External termination requested`.
///
/// ```
/// use agent_core::Message;
/// use agent_core::termination::{External, Termination};
///
/// let mut stop = External::new();
/// let handle = stop.handle();
/// assert!(stop.check(&[Message::user("task")]).is_none());
/// handle.set();
/// assert_eq!(stop.check(&[]).unwrap().to_string(), "External termination requested");
/// ```
#[derive(Debug, Default)]
pub struct External {
    requested: Arc<AtomicBool>,
    fired: Option<StopReason>,
}

impl External {
    /// A condition with no stop requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that requests the stop; clone it freely.
    pub fn handle(&self) -> ExternalHandle {
        ExternalHandle {
            requested: Arc::clone(&self.requested),
        }
    }

    fn evaluate(&mut self, _delta: &[Message]) -> Option<StopReason> {
        self.requested
            .load(Ordering::Acquire)
            .then_some(StopReason::External)
    }

    fn forget(&mut self) {
        self.requested.store(false, Ordering::Release);
    }
}

/// Requests that an [`External`] condition stop its chat. `Send + Sync + Clone`.
#[derive(Debug, Clone)]
pub struct ExternalHandle {
    requested: Arc<AtomicBool>,
}

impl ExternalHandle {
    /// Requests the stop; the condition fires at its next check.
    pub fn set(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// True while a stop is requested and not yet cleared by a reset.
    pub fn is_set(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// Stops when one of the given sources produced a message (AutoGen's `SourceMatchTermination`).
///
/// Any message counts, tool traffic included (it carries the agent's name as source). An empty
/// list never fires.
///
/// Stop text: `'critic' answered`.
#[derive(Debug, Clone)]
pub struct SourceMatch {
    sources: Box<[Arc<str>]>,
    fired: Option<StopReason>,
}

impl SourceMatch {
    /// Stops when any of `sources` speaks.
    pub fn new<S: Into<Arc<str>>>(sources: impl IntoIterator<Item = S>) -> Self {
        Self {
            sources: collect_sources(sources),
            fired: None,
        }
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        delta
            .iter()
            .find(|m| source_in(m, &self.sources))
            .map(|m| StopReason::SourceMatch {
                source: source_of(m),
            })
    }

    fn forget(&mut self) {}
}

/// Stops when a handoff to the target is seen (AutoGen's `HandoffTermination`), typically to hand
/// control back to a human (`HandoffTo::new("user")`).
///
/// Stop text: `Handoff to user from agent detected.`
#[derive(Debug, Clone)]
pub struct HandoffTo {
    target: Box<str>,
    fired: Option<StopReason>,
}

impl HandoffTo {
    /// Stops on a handoff whose target is `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into().into_boxed_str(),
            fired: None,
        }
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        delta
            .iter()
            .find(|m| matches!(&m.content, Content::Handoff { target, .. } if **target == *self.target))
            .map(|m| StopReason::Handoff {
                target: self.target.to_string(),
                source: source_of(m),
            })
    }

    fn forget(&mut self) {}
}

latched!(@impl HandoffTo, {
    fn handoff_exits(&self) -> Vec<String> {
        vec![self.target.to_string()]
    }
});

/// Stops when a stop message ([`Content::Stop`]) is seen (AutoGen's `StopMessageTermination`).
///
/// Stop text: `Stop message received`.
#[derive(Debug, Clone, Default)]
pub struct StopMessage {
    fired: Option<StopReason>,
}

impl StopMessage {
    /// Stops on any stop message.
    pub fn new() -> Self {
        Self::default()
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        delta
            .iter()
            .any(|m| matches!(m.content, Content::Stop { .. }))
            .then_some(StopReason::StopMessage)
    }

    fn forget(&mut self) {}
}

/// Stops when the named tool has been executed (AutoGen's `FunctionCallTermination`).
///
/// Fires on a tool **result** for that tool name, not on the model's request to call it, so the
/// tool's output is in the history when the chat stops. A result marked as an error (bad
/// arguments, tool failure) counts too, as in AutoGen: the tool was run.
///
/// Stop text: `Function 'submit' was executed.`
#[derive(Debug, Clone)]
pub struct ToolExecuted {
    name: Box<str>,
    fired: Option<StopReason>,
}

impl ToolExecuted {
    /// Stops once a result of tool `name` is seen.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into().into_boxed_str(),
            fired: None,
        }
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        delta
            .iter()
            .flat_map(Message::results)
            .any(|r| *r.name == *self.name)
            .then(|| StopReason::ToolExecuted {
                name: self.name.to_string(),
            })
    }

    fn forget(&mut self) {}
}

/// Stops when a plain text message arrives, from anyone or from one source (AutoGen's
/// `TextMessageTermination`).
///
/// Only [`Content::Text`] counts (not tool traffic, handoffs or stop messages). Note that
/// [`any`](Self::any) also fires on a text **task** message; use [`source`](Self::source) to wait
/// for a particular agent.
///
/// Stop text: `Text message received from 'writer'`.
#[derive(Debug, Clone)]
pub struct TextMessageFrom {
    source: Option<Box<str>>,
    fired: Option<StopReason>,
}

impl TextMessageFrom {
    /// Stops on the first text message from anyone.
    pub fn any() -> Self {
        Self {
            source: None,
            fired: None,
        }
    }

    /// Stops on the first text message from `source`.
    pub fn source(source: impl Into<String>) -> Self {
        Self {
            source: Some(source.into().into_boxed_str()),
            fired: None,
        }
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        let wanted = self.source.as_deref();
        delta
            .iter()
            .find(|m| m.is_text() && wanted.is_none_or(|w| m.source() == Some(w)))
            .map(|m| StopReason::TextMessage {
                source: source_of(m),
            })
    }

    fn forget(&mut self) {}
}

type Predicate = dyn Fn(&[Message]) -> bool + Send + Sync;

/// Stops when a predicate over the delta returns true (AutoGen's `FunctionalTermination`).
///
/// The predicate sees each delta once and is called on every check until it fires (also on empty
/// deltas). It is `Fn`, not `FnMut`, because `reset` could not clear state hidden in a closure;
/// a condition that accumulates across calls should implement [`Termination`] itself.
///
/// Stop text: `Functional termination condition met`.
///
/// ```
/// use agent_core::Message;
/// use agent_core::termination::{Functional, Termination};
///
/// let mut long_reply = Functional::new(|delta: &[Message]| {
///     delta.iter().any(|m| m.text().is_some_and(|t| t.len() > 10))
/// });
/// assert!(long_reply.check(&[Message::assistant("a", "short")]).is_none());
/// assert!(long_reply.check(&[Message::assistant("a", "a much longer reply")]).is_some());
/// ```
#[derive(Clone)]
pub struct Functional {
    predicate: Arc<Predicate>,
    fired: Option<StopReason>,
}

impl Functional {
    /// Stops when `predicate(delta)` returns true.
    pub fn new(predicate: impl Fn(&[Message]) -> bool + Send + Sync + 'static) -> Self {
        Self {
            predicate: Arc::new(predicate),
            fired: None,
        }
    }

    fn evaluate(&mut self, delta: &[Message]) -> Option<StopReason> {
        (self.predicate)(delta).then_some(StopReason::Functional)
    }

    fn forget(&mut self) {}
}

impl fmt::Debug for Functional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Functional")
            .field("fired", &self.fired)
            .finish_non_exhaustive()
    }
}

latched!(
    MaxMessages,
    TextMention,
    TokenUsage,
    Timeout,
    External,
    SourceMatch,
    StopMessage,
    ToolExecuted,
    TextMessageFrom,
    Functional,
);

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::message::{ToolCall, ToolResult, Usage};

    fn call(name: &str) -> Message {
        Message::tool_calls("agent", vec![ToolCall::new("c1", name, "{}")])
    }

    fn result(name: &str, is_error: bool) -> Message {
        Message::tool_results(
            "agent",
            vec![ToolResult {
                call_id: "c1".into(),
                name: name.into(),
                content: "done".into(),
                is_error,
            }],
        )
    }

    /// Checks the shared latch contract on a condition that `fire` terminates: re-asking returns
    /// the same reason without looking (even at a delta that would not fire), and reset clears.
    fn assert_latches(mut condition: impl Termination, fire: &[Message]) {
        assert!(!condition.is_terminated());
        let reason = condition.check(fire).expect("the firing delta fires");
        assert!(condition.is_terminated());
        assert_eq!(condition.check(&[]), Some(reason.clone()));
        assert_eq!(
            condition.check(&[Message::user_from("nobody", "nothing")]),
            Some(reason)
        );
        condition.reset();
        assert!(!condition.is_terminated());
    }

    #[test]
    fn every_condition_latches_until_reset() {
        assert_latches(MaxMessages::new(1), &[Message::user("t")]);
        assert_latches(TextMention::new("STOP"), &[Message::user("STOP")]);
        assert_latches(
            TokenUsage::builder().max_total(1).build().unwrap(),
            &[Message::assistant("a", "x").with_usage(Usage::new(1, 0))],
        );
        assert_latches(Timeout::new(Duration::ZERO), &[]);
        let external = External::new();
        external.handle().set();
        assert_latches(external, &[]);
        assert_latches(SourceMatch::new(["a"]), &[Message::assistant("a", "x")]);
        assert_latches(HandoffTo::new("user"), &[Message::handoff("a", "user", "")]);
        assert_latches(StopMessage::new(), &[Message::stop("a", "bye")]);
        assert_latches(ToolExecuted::new("f"), &[result("f", false)]);
        assert_latches(TextMessageFrom::any(), &[Message::assistant("a", "x")]);
        assert_latches(
            Functional::new(|d: &[Message]| !d.is_empty()),
            &[Message::user("t")],
        );
    }

    #[test]
    fn max_messages_counts_task_messages_and_accumulates() {
        let mut cap = MaxMessages::new(3);
        assert_eq!(cap.check(&[Message::user("task")]), None);
        assert_eq!(cap.check(&[Message::assistant("a", "1")]), None);
        let reason = cap.check(&[Message::assistant("b", "2")]).unwrap();
        assert_eq!(reason, StopReason::MaxMessages { max: 3, count: 3 });
        assert_eq!(
            reason.to_string(),
            "Maximum number of messages 3 reached, current message count: 3"
        );
    }

    #[test]
    fn max_messages_counts_the_whole_delta_before_comparing() {
        let mut cap = MaxMessages::new(2);
        let delta: Vec<_> = (0..5)
            .map(|i| Message::assistant("a", i.to_string()))
            .collect();
        assert_eq!(
            cap.check(&delta),
            Some(StopReason::MaxMessages { max: 2, count: 5 })
        );
    }

    #[test]
    fn max_messages_skips_tool_traffic_unless_asked() {
        let reply = [
            call("f"),
            result("f", false),
            Message::assistant("a", "done"),
        ];
        let mut default = MaxMessages::new(2);
        assert_eq!(default.check(&reply), None, "only the text reply counts");
        let mut all = MaxMessages::new(2).include_tool_messages(true);
        assert_eq!(
            all.check(&reply),
            Some(StopReason::MaxMessages { max: 2, count: 3 })
        );
    }

    #[test]
    fn max_messages_reset_restarts_the_count() {
        let mut cap = MaxMessages::new(2);
        assert!(
            cap.check(&[Message::user("1"), Message::user("2")])
                .is_some()
        );
        cap.reset();
        assert_eq!(cap.check(&[Message::user("1")]), None);
        assert_eq!(
            cap.check(&[Message::user("2")]),
            Some(StopReason::MaxMessages { max: 2, count: 2 })
        );
    }

    #[test]
    fn max_messages_zero_fires_on_the_first_check() {
        assert_eq!(
            MaxMessages::new(0).check(&[]),
            Some(StopReason::MaxMessages { max: 0, count: 0 })
        );
    }

    #[test]
    fn text_mention_searches_text_stop_and_handoff_messages() {
        for message in [
            Message::user("please TERMINATE now"),
            Message::stop("a", "TERMINATE"),
            Message::handoff("a", "b", "TERMINATE then"),
        ] {
            let mut mention = TextMention::new("TERMINATE");
            let reason = mention.check(&[message]).unwrap();
            assert_eq!(reason.to_string(), "Text 'TERMINATE' mentioned");
        }
    }

    #[test]
    fn text_mention_ignores_tool_traffic_and_is_case_sensitive() {
        let mut mention = TextMention::new("TERMINATE");
        let tool_call = Message::tool_calls(
            "a",
            vec![ToolCall::new("c", "say", r#"{"text":"TERMINATE"}"#)],
        );
        let tool_result = Message::tool_results(
            "a",
            vec![ToolResult {
                call_id: "c".into(),
                name: "say".into(),
                content: "TERMINATE".into(),
                is_error: false,
            }],
        );
        assert_eq!(
            mention.check(&[tool_call, tool_result, Message::user("terminate")]),
            None
        );
        assert!(!mention.is_terminated());
    }

    #[test]
    fn text_mention_from_sources_only_listens_to_them() {
        let mut mention = TextMention::new("APPROVE").from_sources(["critic"]);
        assert_eq!(
            mention.check(&[Message::assistant("writer", "please APPROVE")]),
            None
        );
        assert!(
            mention
                .check(&[Message::assistant("critic", "APPROVE")])
                .is_some()
        );
        let mut nobody = TextMention::new("x").from_sources(Vec::<String>::new());
        assert_eq!(nobody.check(&[Message::assistant("a", "x")]), None);
    }

    #[test]
    fn token_usage_requires_a_cap() {
        let err = TokenUsage::builder().build().unwrap_err();
        assert_eq!(err, TerminationConfigError::NoTokenCap);
        assert!(err.to_string().contains("max_total"));
    }

    #[test]
    fn token_usage_accumulates_usage_across_calls() {
        let mut cap = TokenUsage::builder().max_total(100).build().unwrap();
        let reply = |p, c| Message::assistant("a", "x").with_usage(Usage::new(p, c));
        assert_eq!(cap.check(&[Message::user("task"), reply(40, 10)]), None);
        assert_eq!(cap.check(&[reply(30, 10)]), None);
        let reason = cap.check(&[reply(5, 5)]).unwrap();
        assert_eq!(
            reason,
            StopReason::TokenUsage {
                total: 100,
                prompt: 75,
                completion: 25
            }
        );
        assert_eq!(
            reason.to_string(),
            "Token usage limit reached, total token count: 100, prompt token count: 75, completion token count: 25."
        );
        cap.reset();
        assert_eq!(cap.check(&[reply(50, 0)]), None, "reset zeroed the sums");
    }

    #[test]
    fn token_usage_fires_on_whichever_cap_is_reached() {
        let reply = Message::assistant("a", "x").with_usage(Usage::new(10, 3));
        let mut prompt = TokenUsage::builder().max_prompt(10).build().unwrap();
        assert!(prompt.check(std::slice::from_ref(&reply)).is_some());
        let mut completion = TokenUsage::builder()
            .max_total(1_000)
            .max_completion(4)
            .build()
            .unwrap();
        assert_eq!(completion.check(std::slice::from_ref(&reply)), None);
        assert!(completion.check(&[reply]).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_starts_at_the_first_check() {
        let mut timeout = Timeout::new(Duration::from_secs(30));
        // Time before the first check does not count: the chat has not started.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(timeout.check(&[Message::user("task")]), None);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(timeout.check(&[]), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let reason = timeout.check(&[]).unwrap();
        assert_eq!(reason.to_string(), "Timeout of 30 seconds reached");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_reset_restarts_the_clock_at_the_next_check() {
        let mut timeout = Timeout::new(Duration::from_millis(1500));
        assert_eq!(timeout.check(&[]), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            timeout.check(&[]).map(|r| r.to_string()).as_deref(),
            Some("Timeout of 1.5 seconds reached")
        );
        timeout.reset();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(timeout.check(&[]), None);
        tokio::time::advance(Duration::from_millis(1499)).await;
        assert_eq!(timeout.check(&[]), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(timeout.check(&[]).is_some());
    }

    #[tokio::test]
    async fn external_is_set_from_another_task() {
        let mut stop = External::new();
        let handle = stop.handle();
        assert_eq!(stop.check(&[Message::user("task")]), None);
        tokio::spawn(async move { handle.set() }).await.unwrap();
        assert_eq!(stop.check(&[]), Some(StopReason::External));
    }

    #[test]
    fn external_reset_clears_the_request() {
        let mut stop = External::new();
        let handle = stop.handle();
        handle.set();
        assert!(handle.is_set());
        assert!(stop.check(&[]).is_some());
        stop.reset();
        assert!(!handle.is_set());
        assert_eq!(stop.check(&[]), None);
        handle.clone().set();
        assert!(stop.check(&[]).is_some(), "every clone of the handle works");
    }

    #[test]
    fn source_match_names_the_source_that_spoke() {
        let mut critic = SourceMatch::new(["critic", "judge"]);
        assert_eq!(critic.check(&[Message::user("task")]), None);
        let reason = critic
            .check(&[
                Message::assistant("writer", "v1"),
                Message::assistant("judge", "ok"),
            ])
            .unwrap();
        assert_eq!(reason.to_string(), "'judge' answered");
        // Tool traffic carries the agent's name and counts.
        let mut tools = SourceMatch::new(["agent"]);
        assert!(tools.check(&[call("f")]).is_some());
        let mut nobody = SourceMatch::new(Vec::<String>::new());
        assert_eq!(nobody.check(&[Message::assistant("a", "x")]), None);
    }

    #[test]
    fn handoff_to_matches_only_its_target() {
        let mut to_user = HandoffTo::new("user");
        assert_eq!(
            to_user.check(&[
                Message::handoff("planner", "coder", "go"),
                Message::user("user")
            ]),
            None
        );
        let reason = to_user
            .check(&[Message::handoff("planner", "user", "your turn")])
            .unwrap();
        assert_eq!(reason.to_string(), "Handoff to user from planner detected.");
    }

    #[test]
    fn stop_message_needs_a_stop_message_not_stop_text() {
        let mut stop = StopMessage::new();
        assert_eq!(stop.check(&[Message::assistant("a", "TERMINATE")]), None);
        let reason = stop.check(&[Message::stop("a", "TERMINATE")]).unwrap();
        assert_eq!(reason.to_string(), "Stop message received");
    }

    #[test]
    fn tool_executed_fires_on_the_result_not_the_call() {
        let mut submitted = ToolExecuted::new("submit");
        assert_eq!(submitted.check(&[call("submit")]), None);
        assert_eq!(submitted.check(&[result("search", false)]), None);
        let reason = submitted.check(&[result("submit", true)]).unwrap();
        assert_eq!(reason.to_string(), "Function 'submit' was executed.");
    }

    #[test]
    fn text_message_from_counts_only_plain_text() {
        let mut any = TextMessageFrom::any();
        assert_eq!(
            any.check(&[
                call("f"),
                Message::stop("a", "x"),
                Message::handoff("a", "b", "x")
            ]),
            None
        );
        // A text task message fires it, as in AutoGen.
        assert_eq!(
            any.check(&[Message::user("task")]).unwrap().to_string(),
            "Text message received from 'user'"
        );
        let mut writer = TextMessageFrom::source("writer");
        assert_eq!(writer.check(&[Message::assistant("critic", "x")]), None);
        assert_eq!(
            writer.check(&[Message::assistant("writer", "x")]),
            Some(StopReason::TextMessage {
                source: "writer".into()
            })
        );
    }

    #[test]
    fn functional_sees_each_delta_and_stops_being_called_once_fired() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let mut two = Functional::new(move |delta: &[Message]| {
            counter.fetch_add(1, Ordering::Relaxed);
            delta.len() == 2
        });
        assert_eq!(two.check(&[Message::user("1")]), None);
        let reason = two
            .check(&[Message::user("1"), Message::user("2")])
            .unwrap();
        assert_eq!(reason.to_string(), "Functional termination condition met");
        assert_eq!(two.check(&[]), Some(reason));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the re-ask did not call it"
        );
    }

    #[test]
    fn conditions_and_handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ExternalHandle>();
        assert_send_sync::<Functional>();
        assert_send_sync::<TokenUsageBuilder>();
    }
}
