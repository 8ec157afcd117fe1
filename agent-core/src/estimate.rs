//! Token estimation before a call, for admission and budgets.
//!
//! The scheduler must charge a call before the provider says what it cost, so it estimates. The
//! default follows OpenAI's cookbook: about four characters a token, plus a few tokens of framing
//! per message and for reply priming. The estimate is reconciled to the provider's reported usage
//! after the call, so it only needs to be close, not exact.

use std::fmt::Debug;

use crate::message::Message;
use crate::model::ChatRequest;

/// Estimates the prompt tokens of a request. Pluggable: wrap a real tokenizer for exact counts.
pub trait TokenEstimator: Send + Sync + Debug {
    /// Estimated prompt tokens of one message.
    fn message_tokens(&self, message: &Message) -> u64;

    /// Estimated prompt tokens of a whole request (messages, tool schemas, reply priming).
    fn prompt_tokens(&self, request: &ChatRequest) -> u64 {
        let messages: u64 = request
            .messages
            .iter()
            .map(|m| self.message_tokens(m))
            .sum();
        let tools: u64 = request
            .tools
            .iter()
            .map(|t| {
                ((t.name.len() + t.description.len() + t.parameters.to_string().len()) as u64)
                    .div_ceil(4)
            })
            .sum();
        messages + tools + 3
    }
}

/// Characters ÷ 4 plus a per-message overhead (OpenAI cookbook: 4 tokens a message, 3 to prime
/// the reply).
///
/// ```
/// use agent_core::{CharsPerToken, ChatRequest, Message, TokenEstimator};
///
/// let est = CharsPerToken::default();
/// // 12 characters → 3 tokens, plus 4 of framing.
/// assert_eq!(est.message_tokens(&Message::user("abcdefghijkl")), 7);
/// // One message plus 3 tokens of reply priming.
/// assert_eq!(est.prompt_tokens(&ChatRequest::new(vec![Message::user("abcdefghijkl")])), 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharsPerToken {
    /// Characters per token (default 4).
    pub chars_per_token: u32,
    /// Tokens added for each message's framing (default 4).
    pub per_message: u32,
}

impl Default for CharsPerToken {
    fn default() -> Self {
        Self {
            chars_per_token: 4,
            per_message: 4,
        }
    }
}

impl TokenEstimator for CharsPerToken {
    fn message_tokens(&self, message: &Message) -> u64 {
        let per = u64::from(self.chars_per_token.max(1));
        (message.char_len() as u64).div_ceil(per) + u64::from(self.per_message)
    }
}
