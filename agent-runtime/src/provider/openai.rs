//! [`OpenAiProvider`]: OpenAI, Azure OpenAI and any OpenAI-compatible server over `async-openai`,
//! with exactly one HTTP attempt per call.
//!
//! `async-openai` supplies the configuration, the request/response schema, the URL and header
//! building and the SSE decoding. Its own retry layer (`OpenAIRetryLayer`, up to 3 retries on 429
//! and 5xx) is replaced through `Client::with_http_service` by [`SingleAttempt`], a tower service
//! that sends once and never sleeps, because the scheduler is the only retry loop (a second loop
//! below it would multiply attempts and hide 429s from the quota model).
//!
//! `SingleAttempt` is also the only place that sees response headers: `async-openai` drops them
//! on success. It parses them (with [`headers`](super::headers)) on every response; an error
//! response travels up as [`HttpFailure`] inside `OpenAIError::Boxed` (status, reading, raw body),
//! and a success reading is handed to the calling task through a task-local slot set around the
//! call — the service runs inside the caller's future, so the slot is the one of this call even
//! when calls run concurrently.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent_core::{
    ChatModel, ChatRequest, Completion, CompletionStream, Content, FinishReason, Message,
    ModelError, RateLimitReading, Role, StreamEvent, ToolCall, Usage, async_trait,
};
use async_openai::Client;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatChoiceStream, ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionResponse, FinishReason as WireFinish,
    FunctionCall, FunctionObject, StopConfiguration,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;

use super::headers::{self, ApiErrorBody};
use super::{DEFAULT_TIMEOUT, STREAM_CUT, Secret, timeout_error};

const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_ENV_MODEL: &str = "gpt-4o-mini";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Azure reports `x-ratelimit-limit-requests` per 10 seconds: 20 on a 120 RPM deployment
/// (rate-limits.md §1.2; aoai-simulated-api's `requests_per_10s`).
const AZURE_REQUESTS_WINDOW: Duration = Duration::from_secs(10);

/// Which kind of endpoint an [`OpenAiProvider`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavor {
    /// api.openai.com: bearer key required, `max_completion_tokens`.
    OpenAi,
    /// Azure OpenAI: `api-key` header, deployment URL with `api-version`, `max_tokens`.
    Azure,
    /// Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, LiteLLM): key optional,
    /// `max_tokens`.
    Compatible,
}

/// The request field that carries [`ChatRequest::max_completion_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenLimitField {
    /// `max_completion_tokens` (OpenAI; required by o-series models).
    MaxCompletionTokens,
    /// `max_tokens` (deprecated by OpenAI, but the one most compatible servers read).
    MaxTokens,
}

/// An [`OpenAiProvider`] configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderConfigError {
    /// No model name.
    #[error("no model set: call .model(\"gpt-4o-mini\") or set OPENAI_MODEL")]
    MissingModel,
    /// OpenAI and Azure need a key.
    #[error("no API key for {base_url}: call .api_key(..) or set OPENAI_API_KEY")]
    MissingApiKey {
        /// The endpoint that needs it, without credentials (userinfo dropped, query values `***`).
        base_url: String,
    },
    /// The key cannot be sent in an HTTP header.
    #[error(
        "the API key contains characters that cannot be sent in an HTTP header (check for a stray newline or quote)"
    )]
    InvalidApiKey,
    /// The base URL does not parse or is not http(s).
    #[error("invalid base URL {url:?}: {reason} (expected e.g. http://localhost:11434/v1)")]
    InvalidBaseUrl {
        /// The URL given, without credentials (userinfo dropped, query values `***`).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An Azure endpoint without deployment.
    #[error("{base_url} is an Azure OpenAI endpoint: call .azure(deployment, api_version)")]
    MissingAzureDeployment {
        /// The endpoint, without credentials (userinfo dropped, query values `***`).
        base_url: String,
    },
    /// A timeout of zero.
    #[error("the {0} timeout is zero, so every call would fail; use e.g. 120 s")]
    ZeroTimeout(&'static str),
    /// The HTTP client could not be built (TLS backend).
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// Builds an [`OpenAiProvider`]; validated at [`build`](OpenAiProviderBuilder::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct OpenAiProviderBuilder {
    model: Option<String>,
    base_url: Option<String>,
    api_key: Option<Secret>,
    flavor: Option<Flavor>,
    azure: Option<(String, String)>,
    token_limit_field: Option<TokenLimitField>,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    id: Option<String>,
    stream_usage: bool,
}

impl Default for OpenAiProviderBuilder {
    fn default() -> Self {
        Self {
            model: None,
            base_url: None,
            api_key: None,
            flavor: None,
            azure: None,
            token_limit_field: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_TIMEOUT,
            id: None,
            stream_usage: true,
        }
    }
}

impl OpenAiProviderBuilder {
    /// The model name sent in requests (for Azure, defaults to the deployment).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The API base URL, including `/v1` for OpenAI-style servers (default
    /// `https://api.openai.com/v1`; for Azure, the resource endpoint
    /// `https://NAME.openai.azure.com`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key (bearer token; Azure's `api-key`).
    pub fn api_key(mut self, key: impl Into<Secret>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The endpoint kind, when the base URL does not make it clear (default: OpenAI for
    /// api.openai.com or no base URL, Azure when [`azure`](Self::azure) is set, else Compatible).
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = Some(flavor);
        self
    }

    /// Azure OpenAI: the deployment name and API version (e.g. `"2024-10-21"`); sets the flavor.
    pub fn azure(mut self, deployment: impl Into<String>, api_version: impl Into<String>) -> Self {
        self.azure = Some((deployment.into(), api_version.into()));
        self.flavor = Some(Flavor::Azure);
        self
    }

    /// Which request field carries the completion-token limit (default: `max_completion_tokens`
    /// for OpenAI, `max_tokens` for Azure and compatible servers).
    pub fn token_limit_field(mut self, field: TokenLimitField) -> Self {
        self.token_limit_field = Some(field);
        self
    }

    /// How long to wait for the response to start (its status and headers; default 120 s).
    /// Expiry is a [`ModelError::Transient`]. The scheduler's per-attempt
    /// [`Deadlines`](crate::scheduler::Deadlines) bound the whole attempt on top of this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the body (or a stream) may go without a byte once the response has started
    /// (default 120 s). Expiry is a [`ModelError::Transient`]. A server dripping bytes slower
    /// than the reply needs never trips it: the scheduler's whole-attempt deadline does.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long to wait for the TCP/TLS connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The model id for quota keys and prices (default `openai/MODEL`, `azure/DEPLOYMENT`, or
    /// `HOST:PORT/MODEL` for compatible servers).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Whether streams ask for a final usage chunk (`stream_options.include_usage`, default
    /// true). Turn it off for a server that rejects the option.
    pub fn stream_usage(mut self, include: bool) -> Self {
        self.stream_usage = include;
        self
    }

    /// Fills unset fields from the environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL`, and
    /// `OPENAI_MODEL` (default `gpt-4o-mini`).
    pub fn from_env(self) -> Self {
        self.with_env_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn with_env_lookup(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        if self.api_key.is_none() {
            self.api_key = set(var("OPENAI_API_KEY")).map(Secret::from);
        }
        if self.base_url.is_none() {
            self.base_url = set(var("OPENAI_BASE_URL"));
        }
        if self.model.is_none() {
            self.model = Some(set(var("OPENAI_MODEL")).unwrap_or_else(|| DEFAULT_ENV_MODEL.into()));
        }
        self
    }

    /// Validates the configuration and builds the provider.
    pub fn build(self) -> Result<OpenAiProvider, ProviderConfigError> {
        for (name, value) in [
            ("request", self.timeout),
            ("connect", self.connect_timeout),
            ("idle", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ProviderConfigError::ZeroTimeout(name));
            }
        }
        let raw_base = self
            .base_url
            .clone()
            .unwrap_or_else(|| OPENAI_BASE_URL.to_owned());
        let mut url = reqwest::Url::parse(raw_base.trim()).map_err(|e| {
            ProviderConfigError::InvalidBaseUrl {
                url: redacted_url(&raw_base),
                reason: e.to_string(),
            }
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProviderConfigError::InvalidBaseUrl {
                url: redacted_url(&raw_base),
                reason: format!("scheme {:?} is not http or https", url.scheme()),
            });
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let shown = shown_url(&url);
        let url_secrets = url_secrets(&url);
        // async-openai appends the route to the base as text, which would land after a `?`: the
        // base URL's query (a proxy's `?key=`) travels with the request's own query instead.
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        url.set_fragment(None);
        // Keeps the userinfo: reqwest turns it into basic auth when the request is sent.
        let base_url = url.as_str().trim_end_matches('/').to_owned();
        let flavor = match self.flavor {
            Some(f) => f,
            None if host == "api.openai.com" => Flavor::OpenAi,
            None if host.ends_with(".openai.azure.com") => {
                return Err(ProviderConfigError::MissingAzureDeployment { base_url: shown });
            }
            None => Flavor::Compatible,
        };
        let key = self.api_key.filter(|k| !k.is_empty());
        if key.is_none() && flavor != Flavor::Compatible {
            return Err(ProviderConfigError::MissingApiKey { base_url: shown });
        }

        let (model, path_prefix) = match flavor {
            Flavor::Azure => {
                let Some((deployment, version)) = self.azure else {
                    return Err(ProviderConfigError::MissingAzureDeployment { base_url: shown });
                };
                let model = self.model.unwrap_or_else(|| deployment.clone());
                query.push(("api-version".to_owned(), version));
                (model, format!("/openai/deployments/{deployment}"))
            }
            _ => (
                self.model.ok_or(ProviderConfigError::MissingModel)?,
                String::new(),
            ),
        };
        if model.trim().is_empty() {
            return Err(ProviderConfigError::MissingModel);
        }

        let mut header_map = HeaderMap::new();
        if let Some(key) = &key {
            let (name, value) = match flavor {
                Flavor::Azure => (HeaderName::from_static("api-key"), key.expose().to_owned()),
                _ => (AUTHORIZATION, format!("Bearer {}", key.expose())),
            };
            let mut value =
                HeaderValue::from_str(&value).map_err(|_| ProviderConfigError::InvalidApiKey)?;
            value.set_sensitive(true);
            header_map.insert(name, value);
        }

        let id = self.id.unwrap_or_else(|| match flavor {
            Flavor::OpenAi => format!("openai/{model}"),
            Flavor::Azure => format!("azure/{}", path_prefix.rsplit('/').next().unwrap_or(&model)),
            Flavor::Compatible => match url.port() {
                Some(port) => format!("{host}:{port}/{model}"),
                None => format!("{host}/{model}"),
            },
        });
        let token_limit_field = self.token_limit_field.unwrap_or(match flavor {
            Flavor::OpenAi => TokenLimitField::MaxCompletionTokens,
            _ => TokenLimitField::MaxTokens,
        });

        // reqwest is built without a crypto provider of its own (no aws-lc-sys).
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.idle_timeout)
            .build()
            .map_err(|e| ProviderConfigError::HttpClient(e.to_string()))?;
        let config = WireConfig {
            api_base: base_url,
            path_prefix,
            headers: header_map,
            query,
            api_key: SecretString::from(key.as_ref().map(|k| k.expose()).unwrap_or_default()),
        };
        let client = Client::build(http.clone(), config).with_http_service(SingleAttempt {
            http,
            timeout: self.timeout,
            requests_window: (flavor == Flavor::Azure).then_some(AZURE_REQUESTS_WINDOW),
        });
        Ok(OpenAiProvider {
            id: id.into(),
            model,
            flavor,
            token_limit_field,
            stream_usage: self.stream_usage,
            client,
            errors: ErrorMapper {
                secret: key,
                url_secrets: url_secrets.into(),
                endpoint: shown.into(),
                timeout: self.timeout,
            },
        })
    }
}

/// A [`ChatModel`] for OpenAI, Azure OpenAI and OpenAI-compatible servers.
///
/// Each `complete`/`stream` is exactly one HTTP request: no retries, no sleeping on 429. Every
/// response's `x-ratelimit-*` / `retry-after` headers reach the caller, in
/// [`Completion::rate_limits`] on success and in [`ModelError::RateLimited::reading`] on a 429.
///
/// ```no_run
/// use agent_runtime::provider::OpenAiProvider;
///
/// // OpenAI, key from the environment.
/// let openai = OpenAiProvider::from_env()?;
/// // A local Ollama: no key needed.
/// let ollama = OpenAiProvider::builder()
///     .base_url("http://localhost:11434/v1")
///     .model("llama3.2")
///     .build()?;
/// assert_eq!(agent_core::ChatModel::id(&ollama), "localhost:11434/llama3.2");
/// # Ok::<(), agent_runtime::provider::ProviderConfigError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiProvider {
    id: Arc<str>,
    model: String,
    flavor: Flavor,
    token_limit_field: TokenLimitField,
    stream_usage: bool,
    client: Client<WireConfig>,
    errors: ErrorMapper,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("id", &self.id)
            .field("model", &self.model)
            .field("flavor", &self.flavor)
            .field("base_url", &self.errors.endpoint)
            .field("token_limit_field", &self.token_limit_field)
            .field("api_key", &self.errors.secret)
            .field("timeout", &self.errors.timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A builder with nothing set.
    pub fn builder() -> OpenAiProviderBuilder {
        OpenAiProviderBuilder::default()
    }

    /// A provider configured from `OPENAI_API_KEY`, `OPENAI_BASE_URL` and `OPENAI_MODEL`
    /// (default `gpt-4o-mini`). Against api.openai.com a missing key is an error; a compatible
    /// base URL works without one.
    pub fn from_env() -> Result<Self, ProviderConfigError> {
        Self::builder().from_env().build()
    }

    /// The endpoint kind.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The base URL requests go to, as it may be shown: without userinfo, query values as `***`
    /// (a proxy URL can carry credentials).
    pub fn base_url(&self) -> &str {
        &self.errors.endpoint
    }

    #[allow(deprecated)] // `max_tokens` and `seed` are deprecated by OpenAI but read by other servers.
    fn wire_request(&self, request: &ChatRequest, stream: bool) -> CreateChatCompletionRequest {
        let mut wire = CreateChatCompletionRequest {
            messages: wire_messages(&request.messages),
            model: self.model.clone(),
            temperature: request.temperature,
            seed: request.seed.map(|s| s as i64),
            ..Default::default()
        };
        match self.token_limit_field {
            TokenLimitField::MaxCompletionTokens => {
                wire.max_completion_tokens = request.max_completion_tokens;
            }
            TokenLimitField::MaxTokens => wire.max_tokens = request.max_completion_tokens,
        }
        if !request.stop.is_empty() {
            wire.stop = Some(StopConfiguration::StringArray(request.stop.clone()));
        }
        wire.response_format = request.response_format.as_ref().and_then(wire_format);
        if !request.tools.is_empty() {
            wire.tools = Some(
                request
                    .tools
                    .iter()
                    .map(|t| {
                        ChatCompletionTools::Function(ChatCompletionTool {
                            function: FunctionObject {
                                name: t.name.to_string(),
                                description: Some(t.description.to_string()),
                                parameters: Some((*t.parameters).clone()),
                                strict: None,
                            },
                        })
                    })
                    .collect(),
            );
        }
        if stream {
            // Set explicitly: with the `byot` feature async-openai does not set it for us.
            wire.stream = Some(true);
            if self.stream_usage {
                wire.stream_options = Some(ChatCompletionStreamOptions {
                    include_usage: Some(true),
                    include_obfuscation: None,
                });
            }
        }
        wire
    }

    fn completion(
        &self,
        response: CreateChatCompletionResponse,
        reading: Option<RateLimitReading>,
    ) -> Result<Completion, ModelError> {
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(ModelError::MalformedResponse {
                message: "the response has no choices".to_owned(),
            });
        };
        let usage = response
            .usage
            .map(|u| Usage::new(u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
        let calls: Vec<ToolCall> = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|call| match call {
                ChatCompletionMessageToolCalls::Function(c) => {
                    ToolCall::new(c.id, c.function.name, c.function.arguments)
                }
                ChatCompletionMessageToolCalls::Custom(c) => {
                    ToolCall::new(c.id, c.custom_tool.name, c.custom_tool.input)
                }
            })
            .collect();
        let text = choice.message.content.or(choice.message.refusal);
        Ok(assemble(
            &self.id,
            text.unwrap_or_default(),
            calls,
            usage,
            finish_reason(choice.finish_reason),
            reading,
        ))
    }

    /// Runs one async-openai call with this call's header slot installed.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, OpenAIError>>,
    ) -> Result<(T, Option<RateLimitReading>), ModelError> {
        let slot = Arc::new(OnceLock::new());
        let result = RESPONSE_READING.scope(slot.clone(), call).await;
        let value = result.map_err(|e| self.errors.map(e))?;
        let reading = slot
            .get()
            .cloned()
            .filter(|r: &RateLimitReading| !r.is_empty());
        Ok((value, reading))
    }
}

fn assemble(
    source: &Arc<str>,
    text: String,
    calls: Vec<ToolCall>,
    usage: Option<Usage>,
    finish_reason: FinishReason,
    rate_limits: Option<RateLimitReading>,
) -> Completion {
    let mut message = if calls.is_empty() {
        Message::assistant(source.clone(), text)
    } else {
        Message::tool_calls(source.clone(), calls)
    };
    if let Some(usage) = usage {
        message = message.with_usage(usage);
    }
    Completion {
        message,
        usage,
        finish_reason,
        rate_limits,
        cached: false,
    }
}

/// Our response format as OpenAI's `response_format` (strict mode as the format says: set for
/// schemas that qualify). `Text` is what no format means, so it is not sent.
fn wire_format(
    format: &agent_core::ResponseFormat,
) -> Option<async_openai::types::chat::ResponseFormat> {
    use async_openai::types::chat::{ResponseFormat as Wire, ResponseFormatJsonSchema};
    match format {
        agent_core::ResponseFormat::JsonObject => Some(Wire::JsonObject),
        agent_core::ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => Some(Wire::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: description.as_deref().map(str::to_owned),
                name: name.to_string(),
                schema: (**schema).clone(),
                strict: strict.then_some(true),
            },
        }),
        // Text, and formats added later that this provider cannot express: free text.
        _ => None,
    }
}

fn finish_reason(reason: Option<WireFinish>) -> FinishReason {
    match reason {
        Some(WireFinish::Stop) => FinishReason::Stop,
        Some(WireFinish::Length) => FinishReason::Length,
        Some(WireFinish::ToolCalls | WireFinish::FunctionCall) => FinishReason::ToolCalls,
        Some(WireFinish::ContentFilter) => FinishReason::ContentFilter,
        None => FinishReason::Other,
    }
}

/// OpenAI's `name` must match `^[a-zA-Z0-9_-]{1,64}$`.
fn wire_name(source: Option<&str>) -> Option<String> {
    let name = agent_core::model::api_name(source?);
    (!name.is_empty()).then_some(name)
}

/// Our messages as chat-completion messages: tool calls on assistant messages, one `tool`
/// message per tool result, handoffs and stops as text, and the speaker's name on user and
/// assistant messages (so a model can tell agents apart).
fn wire_messages(messages: &[Message]) -> Vec<ChatCompletionRequestMessage> {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let name = wire_name(message.source());
        match &message.content {
            Content::ToolCalls { calls } => {
                let tool_calls = calls
                    .iter()
                    .map(|c| {
                        ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                            id: c.id.to_string(),
                            function: FunctionCall {
                                name: c.name.to_string(),
                                arguments: c.arguments.to_string(),
                            },
                        })
                    })
                    .collect();
                out.push(ChatCompletionRequestMessage::Assistant(
                    ChatCompletionRequestAssistantMessage {
                        name,
                        tool_calls: Some(tool_calls),
                        ..Default::default()
                    },
                ));
            }
            Content::ToolResults { results } => {
                out.extend(results.iter().map(|r| {
                    ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                        content: ChatCompletionRequestToolMessageContent::Text(
                            r.content.to_string(),
                        ),
                        tool_call_id: r.call_id.to_string(),
                    })
                }));
            }
            // Text, handoffs, stops, and content kinds added later: their text, if they have
            // one (content with no text has nothing a chat-completion API could carry).
            _ => {
                let Some(text) = message.text().map(str::to_owned) else {
                    continue;
                };
                out.push(match message.role {
                    Role::System => {
                        ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                            content: ChatCompletionRequestSystemMessageContent::Text(text),
                            name: None,
                        })
                    }
                    Role::Assistant => ChatCompletionRequestMessage::Assistant(
                        ChatCompletionRequestAssistantMessage {
                            content: Some(ChatCompletionRequestAssistantMessageContent::Text(text)),
                            name,
                            ..Default::default()
                        },
                    ),
                    // User; a text from the tool role (which has no call to answer) and roles
                    // added later: the model reads them as input.
                    _ => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                        content: ChatCompletionRequestUserMessageContent::Text(text),
                        name: name.filter(|n| n != "user"),
                    }),
                });
            }
        }
    }
    out
}

#[async_trait]
impl ChatModel for OpenAiProvider {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, ModelError> {
        let wire = self.wire_request(&request, false);
        let chat = self.client.chat();
        let (response, reading) = self.call(chat.create(wire)).await?;
        self.completion(response, reading)
    }

    async fn stream(&self, request: ChatRequest) -> Result<CompletionStream, ModelError> {
        let wire = self.wire_request(&request, true);
        let chat = self.client.chat();
        let (inner, reading) = self.call(chat.create_stream(wire)).await?;
        let state = StreamAssembly {
            inner,
            source: self.id.clone(),
            reading,
            errors: self.errors.clone(),
            text: String::new(),
            calls: BTreeMap::new(),
            usage: None,
            finish: None,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let event = s.next_event().await?;
            Some((event, s))
        })
        .boxed())
    }
}

/// Accumulates SSE chunks into deltas and the final [`Completion`].
struct StreamAssembly {
    inner: ChatCompletionResponseStream,
    source: Arc<str>,
    reading: Option<RateLimitReading>,
    errors: ErrorMapper,
    text: String,
    /// Tool-call fragments by index: id, name, arguments so far.
    calls: BTreeMap<u32, (String, String, String)>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    done: bool,
}

impl StreamAssembly {
    async fn next_event(&mut self) -> Option<Result<StreamEvent, ModelError>> {
        while !self.done {
            match self.inner.next().await {
                Some(Ok(chunk)) => {
                    if let Some(u) = chunk.usage {
                        self.usage = Some(Usage::new(
                            u64::from(u.prompt_tokens),
                            u64::from(u.completion_tokens),
                        ));
                    }
                    let delta = chunk
                        .choices
                        .into_iter()
                        .filter(|c| c.index == 0)
                        .map(|c| self.absorb(c))
                        .collect::<String>();
                    if !delta.is_empty() {
                        return Some(Ok(StreamEvent::TextDelta(delta)));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self.errors.map(e)));
                }
                None => {
                    self.done = true;
                    // async-openai ends the stream at `[DONE]` or when the body ends; only a
                    // finish reason proves the reply is whole.
                    let Some(finish) = self.finish else {
                        return Some(Err(ModelError::transient(format!(
                            "{STREAM_CUT}: the server closed the stream without a finish reason"
                        ))));
                    };
                    let calls = std::mem::take(&mut self.calls)
                        .into_values()
                        .map(|(id, name, arguments)| ToolCall::new(id, name, arguments))
                        .collect();
                    return Some(Ok(StreamEvent::Completed(assemble(
                        &self.source,
                        std::mem::take(&mut self.text),
                        calls,
                        self.usage,
                        finish,
                        self.reading.take(),
                    ))));
                }
            }
        }
        None
    }

    /// Folds one choice into the state; returns its text delta.
    fn absorb(&mut self, choice: ChatChoiceStream) -> String {
        if let Some(reason) = choice.finish_reason {
            self.finish = Some(finish_reason(Some(reason)));
        }
        for call in choice.delta.tool_calls.unwrap_or_default() {
            let entry = self.calls.entry(call.index).or_default();
            if let Some(id) = call.id {
                entry.0.push_str(&id);
            }
            if let Some(function) = call.function {
                if let Some(name) = function.name {
                    entry.1.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    entry.2.push_str(&arguments);
                }
            }
        }
        let delta = choice.delta.content.unwrap_or_default();
        self.text.push_str(&delta);
        delta
    }
}

/// Turns async-openai errors into [`ModelError`]s, with the key and the base URL's credentials
/// scrubbed from every message.
#[derive(Clone)]
struct ErrorMapper {
    secret: Option<Secret>,
    /// The base URL's password and query values.
    url_secrets: Arc<[Secret]>,
    /// The base URL without credentials, for messages, `Debug` and [`OpenAiProvider::base_url`].
    endpoint: Arc<str>,
    timeout: Duration,
}

impl ErrorMapper {
    fn map(&self, error: OpenAIError) -> ModelError {
        let error = match error {
            OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
                Ok(failure) => match *failure {
                    HttpFailure::Status {
                        status,
                        reading,
                        body,
                    } => headers::classify(status, *reading, &body),
                    HttpFailure::TimedOut => timeout_error(self.timeout),
                },
                Err(other) => ModelError::transient(other.to_string()),
            },
            OpenAIError::Reqwest(e) => self.transport(e),
            OpenAIError::ApiError(response) => headers::classify_body(
                response.status_code.as_u16(),
                RateLimitReading::default(),
                ApiErrorBody {
                    message: response.api_error.message,
                    kind: response.api_error.r#type,
                    param: response.api_error.param,
                    code: response.api_error.code,
                    ..ApiErrorBody::default()
                },
            ),
            OpenAIError::JSONDeserialize(e, content) => ModelError::MalformedResponse {
                message: format!(
                    "{e}; the body starts with {:?}",
                    content.chars().take(120).collect::<String>()
                ),
            },
            OpenAIError::StreamError(e) => ModelError::transient(format!("{STREAM_CUT}: {e}")),
            OpenAIError::InvalidArgument(message) => ModelError::InvalidRequest {
                status: None,
                message,
            },
            other => ModelError::transient(other.to_string()),
        };
        self.redact(error)
    }

    fn transport(&self, error: reqwest::Error) -> ModelError {
        if error.is_timeout() {
            return timeout_error(self.timeout);
        }
        // reqwest's message embeds the full request URL, credentials included; name the
        // redacted endpoint instead.
        let error = error.without_url();
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        let what = if error.is_connect() {
            "could not connect to the provider"
        } else if error.is_body() || error.is_decode() {
            "the connection broke while the response was being read"
        } else if error.is_builder() {
            return ModelError::InvalidRequest {
                status: None,
                message: format!("{detail} (base URL {})", self.endpoint),
            };
        } else {
            "the request failed before a response arrived"
        };
        ModelError::transient(format!("{what} at {} ({detail})", self.endpoint))
    }

    fn redact(&self, error: ModelError) -> ModelError {
        if self.secret.is_none() && self.url_secrets.is_empty() {
            return error;
        }
        let r = |m: String| {
            self.secret
                .iter()
                .chain(self.url_secrets.iter())
                .fold(m, |m, secret| secret.redact(&m))
        };
        match error {
            ModelError::RateLimited {
                kind,
                retry_after,
                reading,
                message,
            } => ModelError::RateLimited {
                kind,
                retry_after,
                reading,
                message: r(message),
            },
            ModelError::QuotaExhausted { message } => ModelError::QuotaExhausted {
                message: r(message),
            },
            ModelError::RequestTooLarge { message } => ModelError::RequestTooLarge {
                message: r(message),
            },
            ModelError::Transient {
                status,
                retry_after,
                message,
            } => ModelError::Transient {
                status,
                retry_after,
                message: r(message),
            },
            ModelError::InvalidRequest { status, message } => ModelError::InvalidRequest {
                status,
                message: r(message),
            },
            ModelError::MalformedResponse { message } => ModelError::MalformedResponse {
                message: r(message),
            },
            other => other,
        }
    }
}

/// `raw` (a base URL that may not parse) with what can carry credentials hidden: everything up to
/// the last `@` of the authority dropped, query values and any fragment replaced by `***`. Errs
/// towards hiding too much: it is only ever shown.
fn redacted_url(raw: &str) -> String {
    let raw = raw.trim();
    let (rest, fragment) = match raw.split_once('#') {
        Some((rest, _)) => (rest, true),
        None => (raw, false),
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    };
    let start = base.find("://").map_or(0, |i| i + 3);
    // A password may hold an unescaped `/` in text that did not parse, so the last `@` anywhere
    // counts rather than the last one before the first `/`.
    let host_start = base[start..].rfind('@').map_or(start, |i| start + i + 1);
    let mut out = format!(
        "{}{}",
        &base[..start],
        base[host_start..].trim_end_matches('/')
    );
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redacted_query(query));
    }
    if fragment {
        out.push_str("#***");
    }
    out
}

/// A parsed base URL as it may be shown: no userinfo, no fragment, query values `***`.
fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have userinfo, which then have none to hide.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.set_fragment(None);
    let mut out = shown.as_str().trim_end_matches('/').to_owned();
    if let Some(query) = url.query() {
        out.push('?');
        out.push_str(&redacted_query(query));
    }
    out
}

/// `a=1&b` as `a=***&***`: names stay (they help a reader), values go.
fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=***"),
            None => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The base URL's password (as a serialized URL shows it) and query values (serialized and
/// decoded), so a server or library that echoes the URL cannot show them. Values shorter than 4 characters
/// are left alone: scrubbing them would mangle unrelated text (status codes, counts) and they are
/// no credential worth hiding.
fn url_secrets(url: &reqwest::Url) -> Vec<Secret> {
    let mut values: Vec<String> = url.password().map(str::to_owned).into_iter().collect();
    if let Some(query) = url.query() {
        values.extend(
            query
                .split('&')
                .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.to_owned())),
        );
        values.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
    }
    values.retain(|v| v.chars().count() >= 4);
    values.sort();
    values.dedup();
    // Longest first, so a secret that contains another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.into_iter().map(Secret::from).collect()
}

tokio::task_local! {
    /// The reading of the current call's successful response (errors carry theirs in
    /// [`HttpFailure`]).
    static RESPONSE_READING: Arc<OnceLock<RateLimitReading>>;
}

/// A non-success response or a timeout, carried up through async-openai unchanged.
#[derive(Debug)]
enum HttpFailure {
    Status {
        status: u16,
        /// Boxed: a reading is large, and most failures are not about rate limits.
        reading: Box<RateLimitReading>,
        body: bytes::Bytes,
    },
    TimedOut,
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The body is left out: it can echo the rejected key.
            HttpFailure::Status { status, .. } => write!(f, "HTTP {status}"),
            HttpFailure::TimedOut => f.write_str("no response in time"),
        }
    }
}

impl std::error::Error for HttpFailure {}

/// The tower service that replaces async-openai's retry stack: one attempt, headers captured.
#[derive(Clone)]
struct SingleAttempt {
    http: reqwest::Client,
    timeout: Duration,
    /// The endpoint's request-limit window when it is not a minute (Azure).
    requests_window: Option<Duration>,
}

impl tower::Service<HttpRequestFactory> for SingleAttempt {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        // Read the slot now: `call` runs inside the caller's task-local scope.
        let slot = RESPONSE_READING.try_with(Arc::clone).ok();
        let http = self.http.clone();
        let timeout = self.timeout;
        let requests_window = self.requests_window;
        Box::pin(async move {
            let request = factory.build().await?;
            let response = match tokio::time::timeout(timeout, http.execute(request)).await {
                Err(_) => return Err(OpenAIError::Boxed(Box::new(HttpFailure::TimedOut))),
                Ok(result) => result.map_err(OpenAIError::Reqwest)?,
            };
            let mut reading = headers::reading_from_header_map(response.headers());
            if reading.limit_requests.is_some() || reading.remaining_requests.is_some() {
                reading.requests_window = requests_window;
            }
            let status = response.status();
            if status.is_success() {
                if let Some(slot) = slot {
                    let _ = slot.set(reading);
                }
                return Ok(response);
            }
            let body = match tokio::time::timeout(timeout, response.bytes()).await {
                Ok(Ok(body)) => body,
                Ok(Err(_)) | Err(_) => bytes::Bytes::new(),
            };
            Err(OpenAIError::Boxed(Box::new(HttpFailure::Status {
                status: status.as_u16(),
                reading: Box::new(reading),
                body,
            })))
        })
    }
}

/// async-openai's view of our configuration. Implemented here rather than using `OpenAIConfig`,
/// which reads environment variables implicitly, always sends `Authorization` (an empty bearer
/// to keyless local servers) and panics on a key that is not a valid header value.
#[derive(Clone)]
struct WireConfig {
    api_base: String,
    path_prefix: String,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    api_key: SecretString,
}

impl Config for WireConfig {
    fn headers(&self) -> HeaderMap {
        self.headers.clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.api_base, self.path_prefix)
    }

    fn query(&self) -> Vec<(&str, &str)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn api_base(&self) -> &str {
        &self.api_base
    }

    fn api_key(&self) -> &SecretString {
        &self.api_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::ToolResult;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn openai_needs_a_key_and_local_servers_do_not() {
        let err = OpenAiProvider::builder()
            .with_env_lookup(env(&[]))
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            ProviderConfigError::MissingApiKey {
                base_url: OPENAI_BASE_URL.into()
            }
        );
        assert!(err.to_string().contains("OPENAI_API_KEY"));

        let local = OpenAiProvider::builder()
            .with_env_lookup(env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1/")]))
            .build()
            .unwrap();
        assert_eq!(local.flavor(), Flavor::Compatible);
        assert_eq!(local.id(), "localhost:11434/gpt-4o-mini");
        assert_eq!(local.base_url(), "http://localhost:11434/v1");
        assert_eq!(local.token_limit_field, TokenLimitField::MaxTokens);

        let openai = OpenAiProvider::builder()
            .with_env_lookup(env(&[
                ("OPENAI_API_KEY", "sk-env-key-123"),
                ("OPENAI_MODEL", "gpt-4.1"),
            ]))
            .build()
            .unwrap();
        assert_eq!(openai.id(), "openai/gpt-4.1");
        assert_eq!(
            openai.token_limit_field,
            TokenLimitField::MaxCompletionTokens
        );
        let debug = format!("{openai:?}");
        assert!(!debug.contains("sk-env-key-123"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn bad_configurations_fail_at_build() {
        let build = |b: OpenAiProviderBuilder| b.build().unwrap_err();
        assert!(matches!(
            build(
                OpenAiProvider::builder()
                    .base_url("localhost:8000")
                    .model("m")
            ),
            ProviderConfigError::InvalidBaseUrl { .. }
        ));
        assert!(matches!(
            build(OpenAiProvider::builder().base_url("http://localhost:8000/v1")),
            ProviderConfigError::MissingModel
        ));
        let newline = build(OpenAiProvider::builder().model("m").api_key("sk-bad\nkey"));
        assert_eq!(newline, ProviderConfigError::InvalidApiKey);
        assert!(!newline.to_string().contains("sk-bad"));
        assert!(matches!(
            build(
                OpenAiProvider::builder()
                    .base_url("https://res.openai.azure.com")
                    .api_key("k")
            ),
            ProviderConfigError::MissingAzureDeployment { .. }
        ));
        assert!(matches!(
            build(
                OpenAiProvider::builder()
                    .model("m")
                    .api_key("k")
                    .timeout(Duration::ZERO)
            ),
            ProviderConfigError::ZeroTimeout("request")
        ));
        let azure = OpenAiProvider::builder()
            .base_url("https://res.openai.azure.com/")
            .azure("gpt4o-prod", "2024-10-21")
            .api_key("k")
            .build()
            .unwrap();
        assert_eq!(azure.id(), "azure/gpt4o-prod");
        assert_eq!(azure.token_limit_field, TokenLimitField::MaxTokens);
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            redacted_url(" http://u:p@ss/word@proxy:8080/v1/?key=abc&flag#frag "),
            "http://proxy:8080/v1?key=***&***#***"
        );
        assert_eq!(redacted_url("localhost:8000"), "localhost:8000");
        assert_eq!(redacted_url("user:pw@host/v1"), "host/v1");
        let url = reqwest::Url::parse("https://user:s%40cret@proxy.example/v1/?api-key=k3y-value")
            .unwrap();
        assert_eq!(shown_url(&url), "https://proxy.example/v1?api-key=***");
        let secrets: Vec<String> = url_secrets(&url)
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(secrets, ["k3y-value", "s%40cret"], "longest first");
        let plain = reqwest::Url::parse("http://localhost:11434/v1?a=1").unwrap();
        assert!(
            url_secrets(&plain).is_empty(),
            "short values are not scrubbed"
        );
    }

    #[test]
    fn messages_map_to_chat_completion_roles() {
        let messages = vec![
            Message::system("be brief"),
            Message::user("task"),
            Message::user_from("data analyst", "numbers"),
            Message::assistant("writer", "draft"),
            Message::tool_calls("writer", vec![ToolCall::new("c1", "add", r#"{"a":1}"#)]),
            Message::tool_results(
                "writer",
                vec![
                    ToolResult {
                        call_id: "c1".into(),
                        name: "add".into(),
                        content: "2".into(),
                        is_error: false,
                    },
                    ToolResult {
                        call_id: "c2".into(),
                        name: "add".into(),
                        content: "oops".into(),
                        is_error: true,
                    },
                ],
            ),
            Message::handoff("writer", "critic", "over to you"),
            Message::stop("critic", "TERMINATE"),
        ];
        let json = serde_json::to_value(wire_messages(&messages)).unwrap();
        let want = serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "task"},
            {"role": "user", "content": "numbers", "name": "data_analyst"},
            {"role": "assistant", "content": "draft", "name": "writer"},
            {"role": "assistant", "name": "writer", "tool_calls": [
                {"type": "function", "id": "c1", "function": {"name": "add", "arguments": "{\"a\":1}"}}
            ]},
            {"role": "tool", "content": "2", "tool_call_id": "c1"},
            {"role": "tool", "content": "oops", "tool_call_id": "c2"},
            {"role": "assistant", "content": "over to you", "name": "writer"},
            {"role": "assistant", "content": "TERMINATE", "name": "critic"},
        ]);
        assert_eq!(json, want);
        assert_eq!(
            wire_name(Some("Ünïcode agent!")).as_deref(),
            Some("_n_code_agent_")
        );
        assert_eq!(wire_name(Some("")), None);
        assert_eq!(wire_name(Some(&"x".repeat(100))).map(|n| n.len()), Some(64));
    }

    #[test]
    fn response_formats_map_to_openai_with_strict_where_the_schema_qualifies() {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Verdict {
            approved: bool,
        }
        let provider = OpenAiProvider::builder()
            .model("gpt-4o")
            .api_key("k")
            .build()
            .unwrap();
        let wire = |format: Option<agent_core::ResponseFormat>| {
            let mut request = ChatRequest::new(vec![Message::user("q")]);
            request.response_format = format;
            serde_json::to_value(provider.wire_request(&request, false)).unwrap()
        };
        let typed = wire(Some(
            agent_core::ResponseFormat::json_schema_for::<Verdict>(),
        ));
        let format = &typed["response_format"];
        assert_eq!(format["type"], "json_schema");
        assert_eq!(format["json_schema"]["name"], "Verdict");
        assert_eq!(format["json_schema"]["strict"], true);
        assert_eq!(
            format["json_schema"]["schema"]["additionalProperties"],
            false
        );
        let object = wire(Some(agent_core::ResponseFormat::JsonObject));
        assert_eq!(object["response_format"]["type"], "json_object");
        assert!(wire(None).get("response_format").is_none());
        assert!(
            wire(Some(agent_core::ResponseFormat::Text))
                .get("response_format")
                .is_none()
        );
    }

    #[test]
    fn the_token_limit_field_follows_the_flavor() {
        let request = ChatRequest::new(vec![Message::user("q")]).with_max_completion_tokens(50);
        let openai = OpenAiProvider::builder()
            .model("gpt-4o")
            .api_key("k")
            .build()
            .unwrap();
        let wire = serde_json::to_value(openai.wire_request(&request, true)).unwrap();
        assert_eq!(wire["max_completion_tokens"], 50);
        assert!(wire.get("max_tokens").is_none());
        assert_eq!(wire["stream"], true);
        assert_eq!(wire["stream_options"]["include_usage"], true);

        let local = OpenAiProvider::builder()
            .base_url("http://127.0.0.1:8080/v1")
            .model("llama")
            .build()
            .unwrap();
        let wire = serde_json::to_value(local.wire_request(&request, false)).unwrap();
        assert_eq!(wire["max_tokens"], 50);
        assert!(wire.get("max_completion_tokens").is_none());
        assert!(wire.get("stream_options").is_none());
    }
}
