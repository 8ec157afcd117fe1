//! The model interface: [`ChatModel`], its request and completion types, and the errors callers
//! branch on.
//!
//! A `ChatModel` is only the provider: it sends one request and returns one answer. Quota, budgets
//! and retries live in the runtime's scheduler, which is the only code that calls `complete` and
//! `stream`; agents reach models through [`TurnContext::complete`](crate::TurnContext::complete)
//! and [`TurnContext::stream`](crate::TurnContext::stream).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::message::{Message, Usage};
pub use crate::response_format::{ResponseFormat, api_name};

/// A tool as the model sees it: name, description and JSON schema of the arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name, unique within an agent.
    pub name: Arc<str>,
    /// What the tool does, for the model.
    pub description: Arc<str>,
    /// JSON schema of the argument object.
    pub parameters: Arc<serde_json::Value>,
}

/// Completion tokens reserved (in quota and budget) for a request that sets no
/// [`ChatRequest::max_completion_tokens`]: the runtime scheduler's default
/// (`Quota::default_max_completion_tokens`) and what [`TestContext`](crate::testing::TestContext)
/// reserves, so both charge a budget alike.
pub const DEFAULT_MAX_COMPLETION_TOKENS: u32 = 256;

/// One request to a chat model.
///
/// ```
/// use agent_core::{ChatRequest, Message};
///
/// let request = ChatRequest::new(vec![Message::system("be brief"), Message::user("hi")])
///     .with_max_completion_tokens(64)
///     .with_temperature(0.0);
/// assert_eq!(request.max_completion_tokens, Some(64));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The prompt, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Upper bound on generated tokens. The scheduler reserves this many completion tokens at
    /// admission, as providers do; leaving it unset makes the scheduler use its configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Seed for providers that support deterministic sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// The shape the reply must take (JSON, or JSON matching a schema); `None` is free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

impl ChatRequest {
    /// A request for the given prompt with every option unset.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Sets the tools the model may call.
    #[must_use]
    pub fn with_tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }

    /// Sets the completion token limit.
    #[must_use]
    pub fn with_max_completion_tokens(mut self, max: u32) -> Self {
        self.max_completion_tokens = Some(max);
        self
    }

    /// Sets the temperature.
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the stop sequences.
    #[must_use]
    pub fn with_stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// Sets the response format.
    #[must_use]
    pub fn with_response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Everything about this request that determines the model's answer, as one serializable
    /// value: what a response cache hashes (with the model's id and a namespace).
    ///
    /// Built by destructuring the request without `..`, so adding a field to `ChatRequest` fails
    /// to compile here until the field is either put in the identity or explicitly left out. The
    /// messages' `usage` is left out: it is a report about a past call, never sent to a provider.
    ///
    /// ```
    /// use agent_core::{ChatRequest, Message};
    ///
    /// let a = ChatRequest::new(vec![Message::user("hi")]).with_seed(1);
    /// let b = a.clone().with_seed(2);
    /// let json = |r: &ChatRequest| serde_json::to_string(&r.cache_identity()).unwrap();
    /// assert_ne!(json(&a), json(&b));
    /// ```
    pub fn cache_identity(&self) -> CacheIdentity<'_> {
        let ChatRequest {
            messages,
            tools,
            max_completion_tokens,
            temperature,
            seed,
            stop,
            response_format,
        } = self;
        CacheIdentity {
            messages: messages
                .iter()
                .map(|m| {
                    let Message {
                        role,
                        source,
                        content,
                        usage: _,
                    } = m;
                    MessageIdentity {
                        role: *role,
                        source: source.as_deref(),
                        content,
                    }
                })
                .collect(),
            tools,
            max_completion_tokens: *max_completion_tokens,
            temperature: *temperature,
            seed: *seed,
            stop,
            response_format: response_format.as_ref(),
        }
    }
}

/// What determines a model's answer to a [`ChatRequest`]: see [`ChatRequest::cache_identity`].
/// Serialize it (every field is always written, so two requests differing in any field
/// serialize differently).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheIdentity<'a> {
    /// The prompt, without usage.
    pub messages: Vec<MessageIdentity<'a>>,
    /// The tools offered.
    pub tools: &'a [ToolSpec],
    /// The completion token limit.
    pub max_completion_tokens: Option<u32>,
    /// The sampling temperature.
    pub temperature: Option<f32>,
    /// The seed.
    pub seed: Option<u64>,
    /// The stop sequences.
    pub stop: &'a [String],
    /// The response format.
    pub response_format: Option<&'a ResponseFormat>,
}

/// One prompt message as far as it determines the answer: role, source and content.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MessageIdentity<'a> {
    /// The role.
    pub role: crate::message::Role,
    /// The source (providers send it as the speaker's name).
    pub source: Option<&'a str>,
    /// The content.
    pub content: &'a crate::message::Content,
}

/// Why the model stopped generating. More reasons may be added: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// The completion token limit was reached.
    Length,
    /// The model asked for tool calls.
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
    /// Anything else the provider reported.
    Other,
}

/// What the provider said about its rate limits on one response (success or 429).
///
/// Every field is optional: providers send different subsets, and some send none. These are hints
/// for the scheduler, never the source of truth.
///
/// Fields may be added in minor releases (the struct is not `#[non_exhaustive]` so that it can be
/// built with a literal): build one with `..RateLimitReading::default()`.
///
/// ```
/// use std::time::Duration;
/// use agent_core::RateLimitReading;
///
/// // Azure OpenAI on a 120 RPM deployment: 20 requests per 10-second window.
/// let azure = RateLimitReading {
///     limit_requests: Some(20),
///     requests_window: Some(Duration::from_secs(10)),
///     ..RateLimitReading::default()
/// };
/// assert_eq!(azure.requests_per(Duration::from_secs(60)), Some(120));
/// // OpenAI counts per minute: no window given.
/// let openai = RateLimitReading { limit_requests: Some(5000), ..RateLimitReading::default() };
/// assert_eq!(openai.requests_per(Duration::from_secs(60)), Some(5000));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitReading {
    /// `x-ratelimit-limit-requests`: requests allowed per [`requests_window`](Self::requests_window).
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-remaining-requests`, in the same window as `limit_requests`.
    pub remaining_requests: Option<u64>,
    /// The window `limit_requests` and `remaining_requests` are counted over, when it is not the
    /// provider's standard minute (`None`). Azure OpenAI reports a **10-second** request
    /// allowance (20 on a 120 RPM deployment), so its provider sets `Some(10 s)`; a consumer
    /// that wants a per-minute figure scales by `minute / window`
    /// ([`requests_per`](Self::requests_per)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_window: Option<Duration>,
    /// `x-ratelimit-reset-requests`: time until the request bucket is full again.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-limit-tokens`: tokens allowed per [`tokens_window`](Self::tokens_window).
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-tokens`, in the same window as `limit_tokens`.
    pub remaining_tokens: Option<u64>,
    /// The window `limit_tokens` and `remaining_tokens` are counted over, when it is not the
    /// provider's standard minute (`None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_window: Option<Duration>,
    /// `x-ratelimit-reset-tokens`: time until the token bucket is full again.
    pub reset_tokens: Option<Duration>,
    /// `retry-after-ms`, else `retry-after`, else the "try again in" time of a 429 body.
    pub retry_after: Option<Duration>,
    /// Input tokens allowed per minute, when the provider limits them apart from output
    /// (Anthropic's `anthropic-ratelimit-input-tokens-limit`, ITPM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_input_tokens: Option<u64>,
    /// Input tokens left (Anthropic rounds to the nearest thousand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_input_tokens: Option<u64>,
    /// Time until the input-token limit is fully replenished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_input_tokens: Option<Duration>,
    /// Output tokens allowed per minute, when limited apart from input (Anthropic's OTPM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_output_tokens: Option<u64>,
    /// Output tokens left (Anthropic rounds to the nearest thousand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_output_tokens: Option<u64>,
    /// Time until the output-token limit is fully replenished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_output_tokens: Option<Duration>,
}

impl RateLimitReading {
    /// The window limits are counted over when a reading names none.
    pub const STANDARD_WINDOW: Duration = Duration::from_secs(60);

    /// True when the provider sent no reading at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `limit_requests` rescaled to `period`: `limit × period / window` (window =
    /// [`requests_window`](Self::requests_window), else a minute), rounded down, saturating.
    pub fn requests_per(&self, period: Duration) -> Option<u64> {
        rescale(self.limit_requests?, self.requests_window, period)
    }

    /// `limit_tokens` rescaled to `period`, as [`requests_per`](Self::requests_per) does.
    pub fn tokens_per(&self, period: Duration) -> Option<u64> {
        rescale(self.limit_tokens?, self.tokens_window, period)
    }
}

fn rescale(limit: u64, window: Option<Duration>, period: Duration) -> Option<u64> {
    let window = window
        .unwrap_or(RateLimitReading::STANDARD_WINDOW)
        .as_nanos();
    if window == 0 {
        return None;
    }
    let scaled = u128::from(limit).saturating_mul(period.as_nanos()) / window;
    Some(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// One completed model call.
///
/// Fields may be added in minor releases (the struct is not `#[non_exhaustive]` so that models
/// and tests can build one with a literal): prefer [`Completion::text`], or name every field you
/// rely on and expect to add the new ones when upgrading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The model's message (text or tool calls). Its `usage` is set when the provider reported it.
    pub message: Message,
    /// Usage reported by the provider.
    pub usage: Option<Usage>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Rate-limit readings from the response headers, when the provider sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitReading>,
    /// True when a response cache answered instead of the provider: no quota and no budget was
    /// spent, and `usage` is what the original call reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

impl Completion {
    /// A text completion with the given usage and `FinishReason::Stop`.
    pub fn text(source: impl Into<Arc<str>>, text: impl Into<Arc<str>>, usage: Usage) -> Self {
        Self {
            message: Message::assistant(source, text).with_usage(usage),
            usage: Some(usage),
            finish_reason: FinishReason::Stop,
            rate_limits: None,
            cached: false,
        }
    }
}

/// Which limit a 429 was about. More kinds may be added (e.g. a daily limit): match with a
/// wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RateLimitKind {
    /// Requests per period.
    Requests,
    /// Tokens per period.
    Tokens,
    /// The provider did not say.
    Unknown,
}

impl std::fmt::Display for RateLimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateLimitKind::Requests => "requests",
            RateLimitKind::Tokens => "tokens",
            RateLimitKind::Unknown => "unknown limit",
        })
    }
}

/// What can go wrong in one provider call. Callers branch on the variant; [`ModelError::is_retryable`]
/// says whether trying again later can succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The provider's rate limit was hit (HTTP 429 about requests or tokens). Retryable after
    /// `retry_after`.
    #[error("rate limited by the provider on {kind}{}: {message}", fmt_retry(.retry_after))]
    RateLimited {
        /// Which limit.
        kind: RateLimitKind,
        /// When to retry, if the provider said.
        retry_after: Option<Duration>,
        /// Headers read from the 429 response (boxed: it is large and rarely present).
        reading: Option<Box<RateLimitReading>>,
        /// The provider's message.
        message: String,
    },
    /// The account's quota or credit is exhausted (`insufficient_quota`). Never retryable: add
    /// credit or change the key.
    #[error(
        "provider quota exhausted (no retry will succeed; check billing or use another key): {message}"
    )]
    QuotaExhausted {
        /// The provider's message.
        message: String,
    },
    /// The request can never fit (too many tokens for the context or the per-minute limit). Shorten
    /// the prompt or lower `max_completion_tokens`.
    #[error("request too large: {message}")]
    RequestTooLarge {
        /// The provider's message.
        message: String,
    },
    /// A failure that may pass: 5xx, overload, timeout, a dropped connection or stream.
    #[error("transient provider failure{}: {message}", fmt_status(.status))]
    Transient {
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// When to retry, if the provider said.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// The provider rejected the request (4xx other than 429): fix the request; retrying the same
    /// one will fail again.
    #[error("invalid request{}: {message}", fmt_status(.status))]
    InvalidRequest {
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// The provider's message.
        message: String,
    },
    /// The provider answered with something that could not be parsed.
    #[error("malformed provider response: {message}")]
    MalformedResponse {
        /// What could not be parsed.
        message: String,
    },
    /// The call was cancelled before it finished.
    #[error("model call cancelled")]
    Cancelled,
}

fn fmt_retry(retry: &Option<Duration>) -> String {
    match retry {
        Some(d) => format!(" (retry in {:.3}s)", d.as_secs_f64()),
        None => String::new(),
    }
}

fn fmt_status(status: &Option<u16>) -> String {
    match status {
        Some(s) => format!(" (HTTP {s})"),
        None => String::new(),
    }
}

impl ModelError {
    /// True when the same request may succeed later (rate limits and transient failures).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ModelError::RateLimited { .. } | ModelError::Transient { .. }
        )
    }

    /// The provider's suggested wait before retrying, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::RateLimited { retry_after, .. }
            | ModelError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A transient error with no status, for connection and stream failures.
    pub fn transient(message: impl Into<String>) -> Self {
        ModelError::Transient {
            status: None,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// The vocabulary's enums that will grow are `#[non_exhaustive]`, so adding a variant is not a
/// breaking change: a `match` outside `agent-core` needs a wildcard arm. Each block below is an
/// exhaustive match without one and must fail to compile (E0004).
///
/// ```compile_fail,E0004
/// fn f(r: agent_core::FinishReason) -> u8 {
///     use agent_core::FinishReason::*;
///     match r { Stop | Length | ToolCalls | ContentFilter | Other => 0 }
/// }
/// ```
/// ```compile_fail,E0004
/// fn f(k: agent_core::RateLimitKind) -> u8 {
///     use agent_core::RateLimitKind::*;
///     match k { Requests | Tokens | Unknown => 0 }
/// }
/// ```
/// ```compile_fail,E0004
/// fn f(d: agent_core::BudgetDimension) -> u8 {
///     use agent_core::BudgetDimension::*;
///     match d { Calls | Tokens | Cost => 0 }
/// }
/// ```
/// ```compile_fail,E0004
/// fn f(r: agent_core::Role) -> u8 {
///     use agent_core::Role::*;
///     match r { System | User | Assistant | Tool => 0 }
/// }
/// ```
/// ```compile_fail,E0004
/// fn f(c: &agent_core::Content) -> u8 {
///     use agent_core::Content::*;
///     match c {
///         Text { .. } | ToolCalls { .. } | ToolResults { .. } | Handoff { .. } | Stop { .. } => 0,
///     }
/// }
/// ```
/// With the wildcard arm it compiles:
/// ```
/// fn f(r: agent_core::FinishReason) -> &'static str {
///     match r { agent_core::FinishReason::Length => "cut", _ => "whole" }
/// }
/// assert_eq!(f(agent_core::FinishReason::Stop), "whole");
/// ```
#[cfg(doctest)]
pub struct GrowingEnums;

/// One piece of a streamed completion.
// `Completed` is large but arrives once per stream; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// More text.
    TextDelta(String),
    /// The stream ended; the assembled completion, with usage when the provider sent it.
    Completed(Completion),
}

/// A stream of [`StreamEvent`]s ending in `Completed`, or in an error.
pub type CompletionStream = BoxStream<'static, Result<StreamEvent, ModelError>>;

/// A chat-completion provider.
///
/// Implement `complete`; `stream` has a default that yields the whole completion at once. `id`
/// names the model for quota keys, usage reports and price tables (for example
/// `"openai/gpt-4o-mini"`).
///
/// ```
/// use agent_core::{ChatModel, ChatRequest, Completion, ModelError, Usage};
///
/// struct Echo;
///
/// #[async_trait::async_trait]
/// impl ChatModel for Echo {
///     fn id(&self) -> &str { "local/echo" }
///     async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
///         let last = request.messages.last().and_then(|m| m.text()).unwrap_or("").to_owned();
///         Ok(Completion::text("echo", last, Usage::new(1, 1)))
///     }
/// }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let out = Echo.complete(ChatRequest::new(vec![agent_core::Message::user("ping")])).await.unwrap();
/// assert_eq!(out.message.text(), Some("ping"));
/// # });
/// ```
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The model's name for quota keys, usage and pricing.
    fn id(&self) -> &str;

    /// Sends one request and returns the completion. Implementations do **not** retry: the
    /// scheduler is the only retry layer.
    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError>;

    /// Streams one completion: text deltas, then [`StreamEvent::Completed`] with the assembled
    /// completion (and its usage when the provider reported it). The default calls
    /// [`complete`](ChatModel::complete) and yields its text as one delta.
    ///
    /// Like `complete`, this is the provider stage only: agents stream through
    /// [`TurnContext::stream`](crate::TurnContext::stream), which admits, retries (before the
    /// first event) and reconciles the call.
    async fn stream(&self, request: ChatRequest) -> Result<CompletionStream, ModelError> {
        let completion = self.complete(request).await?;
        let mut events = Vec::with_capacity(2);
        if let Some(text) = completion.message.text() {
            events.push(Ok(StreamEvent::TextDelta(text.to_owned())));
        }
        events.push(Ok(StreamEvent::Completed(completion)));
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

#[async_trait]
impl<M: ChatModel + ?Sized> ChatModel for Arc<M> {
    fn id(&self) -> &str {
        (**self).id()
    }
    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        (**self).complete(request).await
    }
    async fn stream(&self, request: ChatRequest) -> Result<CompletionStream, ModelError> {
        (**self).stream(request).await
    }
}

#[async_trait]
impl<M: ChatModel + ?Sized> ChatModel for Box<M> {
    fn id(&self) -> &str {
        (**self).id()
    }
    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        (**self).complete(request).await
    }
    async fn stream(&self, request: ChatRequest) -> Result<CompletionStream, ModelError> {
        (**self).stream(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_rescale_limits_from_their_window() {
        let azure = RateLimitReading {
            limit_requests: Some(20),
            requests_window: Some(Duration::from_secs(10)),
            limit_tokens: Some(20_000),
            ..RateLimitReading::default()
        };
        assert_eq!(azure.requests_per(Duration::from_secs(60)), Some(120));
        assert_eq!(azure.requests_per(Duration::from_secs(6)), Some(12));
        // Tokens have no window of their own: a minute.
        assert_eq!(azure.tokens_per(Duration::from_secs(60)), Some(20_000));
        let absurd = RateLimitReading {
            limit_tokens: Some(u64::MAX),
            tokens_window: Some(Duration::ZERO),
            ..RateLimitReading::default()
        };
        assert_eq!(absurd.tokens_per(Duration::MAX), None);
        let huge = RateLimitReading {
            limit_tokens: Some(u64::MAX),
            ..RateLimitReading::default()
        };
        assert_eq!(huge.tokens_per(Duration::MAX), Some(u64::MAX));
        assert_eq!(
            RateLimitReading::default().requests_per(Duration::MAX),
            None
        );
    }

    fn full_request() -> ChatRequest {
        // A literal without `..`: adding a field to ChatRequest fails to compile here too.
        ChatRequest {
            messages: vec![Message::user("hi").with_usage(Usage::new(1, 2))],
            tools: vec![ToolSpec {
                name: "add".into(),
                description: "adds".into(),
                parameters: Arc::new(serde_json::json!({"type": "object"})),
            }],
            max_completion_tokens: Some(5),
            temperature: Some(0.5),
            seed: Some(7),
            stop: vec!["END".into()],
            response_format: Some(ResponseFormat::JsonObject),
        }
    }

    #[test]
    fn every_request_field_is_in_the_cache_identity() {
        let full = full_request();
        let request = serde_json::to_value(&full).unwrap();
        let identity = serde_json::to_value(full.cache_identity()).unwrap();
        for key in request.as_object().unwrap().keys() {
            assert!(identity.get(key).is_some(), "{key} is not in the identity");
        }
        let json = |r: &ChatRequest| serde_json::to_string(&r.cache_identity()).unwrap();
        let base = json(&full);
        let changed: Vec<ChatRequest> = vec![
            ChatRequest {
                messages: vec![Message::user("hi!")],
                ..full_request()
            },
            ChatRequest {
                messages: vec![Message::user_from("critic", "hi")],
                ..full_request()
            },
            ChatRequest {
                tools: Vec::new(),
                ..full_request()
            },
            ChatRequest {
                max_completion_tokens: Some(6),
                ..full_request()
            },
            ChatRequest {
                temperature: Some(0.25),
                ..full_request()
            },
            ChatRequest {
                seed: None,
                ..full_request()
            },
            ChatRequest {
                stop: Vec::new(),
                ..full_request()
            },
            ChatRequest {
                response_format: Some(ResponseFormat::json_schema_for::<Vec<u8>>()),
                ..full_request()
            },
        ];
        for other in &changed {
            assert_ne!(json(other), base, "{other:?}");
        }
        // Usage on a prompt message is a report, not input: it does not change the identity.
        let mut same = full_request();
        same.messages[0].usage = Some(Usage::new(9, 9));
        assert_eq!(json(&same), base);
    }

    #[test]
    fn retryability_follows_the_error_kind() {
        let rl = ModelError::RateLimited {
            kind: RateLimitKind::Tokens,
            retry_after: Some(Duration::from_millis(1574)),
            reading: None,
            message: "slow down".into(),
        };
        assert!(rl.is_retryable());
        assert_eq!(rl.retry_after(), Some(Duration::from_millis(1574)));
        assert!(rl.to_string().contains("retry in 1.574s"), "{rl}");
        assert!(
            !ModelError::QuotaExhausted {
                message: "x".into()
            }
            .is_retryable()
        );
        assert!(
            !ModelError::RequestTooLarge {
                message: "x".into()
            }
            .is_retryable()
        );
        assert!(
            !ModelError::InvalidRequest {
                status: Some(400),
                message: "x".into()
            }
            .is_retryable()
        );
        assert!(ModelError::transient("reset").is_retryable());
        assert!(!ModelError::Cancelled.is_retryable());
    }
}
