//! Token-bounded policies: a limit on the whole view, and a cap on each message.

use std::sync::Arc;

use async_trait::async_trait;

use super::HistoryPolicy;
use super::pairing::Sendable;
use crate::agent::{CallError, TurnContext};
use crate::estimate::TokenEstimator;
use crate::message::{Content, Message, ToolResult};

/// Drops messages from the middle until the view is under `max_tokens` (AutoGen's
/// `TokenLimitedChatCompletionContext`).
///
/// Tokens are counted with the turn's estimator ([`TurnContext::estimator`]), the one admission
/// uses. Leading system messages, the first message (the task) and the newest exchange are never
/// dropped; when they alone exceed the limit the view is returned over the limit (pair with
/// [`TruncateLong`] to shorten long messages). Removal goes from the middle outward, alternating
/// sides as AutoGen does, and takes a tool call and its results together. The agent's own system
/// message and tool schemas are added after the policy, so leave room for them.
///
/// ```
/// use agent_core::history::{HistoryPolicy, TokenLimited};
/// use agent_core::{testing::TestContext, Message};
///
/// // Each message is 40 characters: 10 tokens plus 4 of framing with the default estimator.
/// let history: Vec<Message> = (0..5).map(|i| Message::user(format!("{i}").repeat(40))).collect();
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = TokenLimited::new(45).view(&history, &ctx).await.unwrap();
/// let firsts: Vec<_> = view.iter().map(|m| &m.text().unwrap()[..1]).collect();
/// assert_eq!(firsts, ["0", "1", "4"]);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimited {
    max_tokens: u64,
}

impl TokenLimited {
    /// A view of at most `max_tokens` estimated prompt tokens.
    pub const fn new(max_tokens: u64) -> Self {
        Self { max_tokens }
    }
}

fn tokens(est: &dyn TokenEstimator, messages: &[Message]) -> u64 {
    messages.iter().map(|m| est.message_tokens(m)).sum()
}

#[async_trait]
impl HistoryPolicy for TokenLimited {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let est = ctx.estimator();
        let s = Sendable::new(history);
        let unit_tokens: Vec<u64> = s.units.iter().map(|u| tokens(est, s.messages(u))).collect();
        let mut total = tokens(est, s.system()) + unit_tokens.iter().sum::<u64>();
        // The kept units are always a prefix [0, a) and a suffix [b, len): removing "the middle
        // element" of such a list only ever takes the unit next to the gap.
        let len = s.units.len();
        let (mut a, mut b) = (len / 2, len / 2);
        while total > self.max_tokens {
            let (prefix, suffix) = (a, len - b);
            // The first unit (the task) and the newest stay; otherwise take from the longer side.
            let (can_prefix, can_suffix) = (prefix > 1, suffix > 1);
            if can_suffix && (suffix >= prefix || !can_prefix) {
                total -= unit_tokens[b];
                b += 1;
            } else if can_prefix {
                a -= 1;
                total -= unit_tokens[a];
            } else {
                break;
            }
        }
        let kept: Vec<_> = s.units[..a].iter().chain(&s.units[b..]).cloned().collect();
        Ok(s.view_of(&kept))
    }
}

/// Shortens any message whose estimate exceeds `max_tokens_per_message` (AG2's
/// `MessageTokenLimiter(max_tokens_per_message=…)`), typically a long tool output.
///
/// Text, handoff and stop texts and tool-result contents are cut at a character boundary and end
/// with `… [truncated N chars]`. Tool-call arguments are never cut (they must stay valid JSON),
/// nor are the leading system messages. No message is removed, so pairing is unchanged.
///
/// ```
/// use agent_core::history::{HistoryPolicy, TruncateLong};
/// use agent_core::{testing::TestContext, Message, TokenEstimator, TurnContext};
///
/// let history = vec![Message::user("short"), Message::user("x".repeat(4000))];
/// let ctx = TestContext::new();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let view = TruncateLong::new(100).view(&history, &ctx).await.unwrap();
/// assert_eq!(view[0], history[0]);
/// let cut = view[1].text().unwrap();
/// assert!(cut.ends_with(" chars]"), "{cut}");
/// assert!(ctx.estimator().message_tokens(&view[1]) <= 100);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncateLong {
    max_tokens_per_message: u64,
}

impl TruncateLong {
    /// Caps every message at `max_tokens_per_message` estimated tokens.
    pub const fn new(max_tokens_per_message: u64) -> Self {
        Self {
            max_tokens_per_message,
        }
    }
}

/// Estimators are opaque, so the cut is found by shrinking the kept share until it fits; a few
/// rounds suffice because the estimate is close to proportional to length.
const SHRINK_ROUNDS: usize = 8;

#[async_trait]
impl HistoryPolicy for TruncateLong {
    async fn view(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<Vec<Message>, CallError> {
        let est = ctx.estimator();
        let s = Sendable::new(history);
        let mut out = s.view_of(&s.units);
        for m in &mut out[s.lead..] {
            let tokens = est.message_tokens(m);
            if tokens > self.max_tokens_per_message {
                *m = truncate(m, self.max_tokens_per_message, tokens, est);
            }
        }
        Ok(out)
    }
}

fn truncate(m: &Message, max: u64, mut tokens: u64, est: &dyn TokenEstimator) -> Message {
    let mut share = 1.0_f64;
    let mut best = m.clone();
    for _ in 0..SHRINK_ROUNDS {
        // Aim a little under the limit so the marker's own characters fit.
        share *= (max as f64 / tokens as f64) * 0.9;
        best = cut_message(m, share);
        tokens = est.message_tokens(&best);
        if tokens <= max || share <= 0.0 {
            break;
        }
    }
    best
}

fn cut_message(m: &Message, share: f64) -> Message {
    let content = match &m.content {
        Content::Text { text } => Content::Text {
            text: cut(text, share),
        },
        Content::Stop { text } => Content::Stop {
            text: cut(text, share),
        },
        Content::Handoff { target, text } => Content::Handoff {
            target: target.clone(),
            text: cut(text, share),
        },
        Content::ToolResults { results } => Content::ToolResults {
            results: results
                .iter()
                .map(|r| ToolResult {
                    content: cut(&r.content, share),
                    ..r.clone()
                })
                .collect(),
        },
        // A cut value would no longer parse: structured values stay whole.
        Content::ToolCalls { .. } | Content::Structured { .. } => m.content.clone(),
    };
    Message {
        content,
        ..m.clone()
    }
}

/// Keeps about `share` of `text` (by length).
fn cut(text: &Arc<str>, share: f64) -> Arc<str> {
    truncate_at(text, (text.len() as f64 * share.clamp(0.0, 1.0)) as usize)
}

/// Keeps the first `keep_bytes` bytes of `text` (moved back to a character boundary) and says how
/// many characters were cut: `… [truncated N chars]`. Returns `text` itself when it is short
/// enough. Shared by history truncation and the tool output cap so the model sees one marker.
pub(crate) fn truncate_at(text: &Arc<str>, keep_bytes: usize) -> Arc<str> {
    let mut keep = keep_bytes;
    if keep >= text.len() {
        return text.clone();
    }
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let removed = text[keep..].chars().count();
    format!("{}… [truncated {removed} chars]", &text[..keep]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ToolCall;
    use crate::testing::TestContext;

    #[tokio::test]
    async fn token_limited_drops_from_the_middle_outward_keeping_ends() {
        let ctx = TestContext::new();
        // 7 messages of 14 tokens each.
        let history: Vec<Message> = (0..7)
            .map(|i| Message::user(format!("{i}").repeat(40)))
            .collect();
        let firsts = |view: Vec<Message>| -> String {
            view.iter().map(|m| &m.text().unwrap()[..1]).collect()
        };
        // AutoGen pops index len//2 repeatedly: 3, then 4 (index 3 of 6), then 2, then 5.
        assert_eq!(
            firsts(TokenLimited::new(98).view(&history, &ctx).await.unwrap()),
            "0123456"
        );
        assert_eq!(
            firsts(TokenLimited::new(97).view(&history, &ctx).await.unwrap()),
            "012456"
        );
        assert_eq!(
            firsts(TokenLimited::new(83).view(&history, &ctx).await.unwrap()),
            "01256"
        );
        assert_eq!(
            firsts(TokenLimited::new(69).view(&history, &ctx).await.unwrap()),
            "0156"
        );
        assert_eq!(
            firsts(TokenLimited::new(55).view(&history, &ctx).await.unwrap()),
            "016"
        );
        // The first and the newest message always stay.
        assert_eq!(
            firsts(TokenLimited::new(1).view(&history, &ctx).await.unwrap()),
            "06"
        );
    }

    #[tokio::test]
    async fn truncate_long_cuts_tool_output_but_not_arguments() {
        let ctx = TestContext::new();
        let args = format!(r#"{{"q":"{}"}}"#, "a".repeat(2000));
        let history = vec![
            Message::tool_calls("a", vec![ToolCall::new("1", "f", args.clone())]),
            Message::tool_results(
                "a",
                vec![ToolResult {
                    call_id: "1".into(),
                    name: "f".into(),
                    content: "é".repeat(3000).into(),
                    is_error: false,
                }],
            ),
        ];
        let view = TruncateLong::new(50).view(&history, &ctx).await.unwrap();
        assert_eq!(view[0], history[0]);
        let out = &view[1].results()[0];
        assert!(out.content.starts_with("éé"));
        assert!(out.content.ends_with(" chars]"));
        assert_eq!(out.call_id, history[1].results()[0].call_id);
        assert!(ctx.estimator().message_tokens(&view[1]) <= 50);
    }

    #[test]
    fn cut_respects_char_boundaries_and_counts_removed_chars() {
        let text: Arc<str> = "aé€😀".into();
        for share in [0.0, 0.1, 0.3, 0.5, 0.7, 0.9] {
            let out = cut(&text, share);
            assert!(out.contains("… [truncated "), "{out}");
        }
        assert_eq!(&*cut(&text, 0.0), "… [truncated 4 chars]");
        assert!(Arc::ptr_eq(&cut(&text, 1.0), &text));
    }
}
