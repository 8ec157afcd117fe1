//! The declarative team spec: what `turnstile check` validates and `turnstile run` runs.
//!
//! A spec is YAML, TOML or JSON (by the file's extension) with the same fields in each. Every
//! struct refuses unknown fields, so a typo is an error naming the field, not a silently ignored
//! setting. Parsing errors name the field's path and, for YAML and TOML, the line; the semantic
//! checks of [`TeamSpec::validate`] name the field's path. `docs/cli.md` is the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A whole team: its providers (each with its quota), its agents, how they take turns, when a
/// chat stops, and the budgets of each task and of the run.
///
/// ```
/// use agent_runtime::cli::TeamSpec;
///
/// let spec = TeamSpec::from_yaml(r#"
/// providers:
///   sim: { kind: simulated, model: gpt-4o-mini, quota: { requests: 60, period_seconds: 6 } }
/// agents:
///   - { name: writer, provider: sim, system_message: "Write one line." }
///   - { name: critic, provider: sim, system_message: "Improve it, or say TERMINATE." }
/// team:
///   max_messages: 6
///   termination: { text_mention: TERMINATE }
/// "#).unwrap();
/// spec.validate().unwrap();
/// assert_eq!(spec.agents.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TeamSpec {
    /// Model endpoints by the name agents refer to them with.
    pub providers: BTreeMap<String, ProviderSpec>,
    /// The agents, in participant order (round robin speaks in this order).
    pub agents: Vec<AgentSpec>,
    /// How agents take turns, the caps, and the termination condition.
    pub team: TeamSettings,
    /// Budgets of each task and of the whole run.
    #[serde(default)]
    pub budget: BudgetSpec,
    /// Prices in dollars per million tokens, by model id (`openai/gpt-4o-mini`, …), used for
    /// cost reports and dollar budgets.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSpec>,
    /// Batch settings.
    #[serde(default)]
    pub run: RunSettings,
    /// The response cache (none by default).
    #[serde(default)]
    pub cache: Option<CacheSpec>,
}

/// The run's response cache (`docs/caching.md`): every answer is stored under a hash of the
/// model and the whole request, so running the same tasks again — a rerun after a kill, the same
/// input into a new output file — replays the answers instead of paying the provider twice.
/// After a kill only the calls that were in flight at that moment are asked again.
///
/// ```
/// use agent_runtime::cli::TeamSpec;
///
/// let spec = TeamSpec::from_yaml(r#"
/// providers: { sim: { kind: simulated, model: gpt-4o-mini } }
/// agents: [ { name: writer, provider: sim } ]
/// team: { max_messages: 2 }
/// cache: { dir: .turnstile-cache, namespace: claims-v1, max_age_seconds: 86400 }
/// "#).unwrap();
/// spec.validate().unwrap();
/// assert_eq!(spec.cache.unwrap().namespace.as_deref(), Some("claims-v1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheSpec {
    /// Directory of the embedded store (one process at a time); a relative path is taken from
    /// the spec file's directory.
    pub dir: PathBuf,
    /// Caches with different namespaces share nothing: change it to ask the provider again
    /// (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// What the cache may do (default `on`).
    #[serde(default)]
    pub mode: CacheModeSpec,
    /// Entries older than this many seconds are misses (default: none expire).
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
}

/// What a run's cache may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheModeSpec {
    /// Replay what is stored, store what the provider answers.
    #[default]
    On,
    /// Replay what is stored; store nothing.
    ReadOnly,
    /// Never replay; store every answer (recording a fresh run).
    WriteOnly,
    /// No cache.
    Off,
}

impl From<CacheModeSpec> for crate::cache::CacheMode {
    fn from(mode: CacheModeSpec) -> Self {
        match mode {
            CacheModeSpec::On => Self::On,
            CacheModeSpec::ReadOnly => Self::ReadOnly,
            CacheModeSpec::WriteOnly => Self::WriteOnly,
            CacheModeSpec::Off => Self::Off,
        }
    }
}

/// What kind of endpoint a provider is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderKind {
    /// Any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp, a LiteLLM proxy…).
    #[default]
    Openai,
    /// Azure OpenAI: `model` is the deployment; `api_version` is required.
    Azure,
    /// The in-process simulator: no network, no key; it enforces the provider's `quota` itself.
    Simulated,
}

/// One model endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderSpec {
    /// The kind of endpoint (default `openai`).
    #[serde(default)]
    pub kind: ProviderKind,
    /// The base URL (default `https://api.openai.com/v1` for `openai`; required for `azure`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The model (for `azure`, the deployment).
    pub model: String,
    /// The NAME of the environment variable holding the API key — never the key itself.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Azure's `api-version`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The quota of this provider's key.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
}

/// A key's limits, as [`Quota`](crate::scheduler::Quota) takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QuotaSpec {
    /// Requests per period (absent: learned from the provider's headers).
    #[serde(default)]
    pub requests: Option<u64>,
    /// Tokens per period (absent: learned from the provider's headers).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// The period in seconds (default 60).
    #[serde(default = "default_period_seconds")]
    pub period_seconds: f64,
    /// Requests per day.
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    /// Tokens per day.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Calls in flight at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// How the provider counts `requests` and `tokens` (default `bucket`).
    #[serde(default)]
    pub limiter: LimiterSpec,
}

/// How a provider counts its limits (`docs/quota.md`, "Limiter semantics").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimiterSpec {
    /// A continuously refilling bucket: OpenAI, Anthropic.
    #[default]
    Bucket,
    /// Fixed windows with boundaries on the clock (the UTC minute for a 60 s period): a LiteLLM
    /// proxy, most API gateways.
    FixedWindow,
    /// Fixed windows that open with the first request after the last one closed.
    FixedWindowFromFirstRequest,
    /// At most the limit in any period.
    SlidingWindow,
}

impl From<LimiterSpec> for crate::scheduler::Limiter {
    fn from(kind: LimiterSpec) -> Self {
        use crate::scheduler::{Limiter, WindowStart};
        match kind {
            LimiterSpec::Bucket => Limiter::Bucket,
            LimiterSpec::FixedWindow => Limiter::FixedWindow(WindowStart::Clock),
            LimiterSpec::FixedWindowFromFirstRequest => {
                Limiter::FixedWindow(WindowStart::FirstRequest)
            }
            LimiterSpec::SlidingWindow => Limiter::SlidingWindow,
        }
    }
}

fn default_period_seconds() -> f64 {
    60.0
}

/// The longest period a spec may name: a year (longer is a typo, not a rate limit).
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 60 * 60);

impl QuotaSpec {
    /// The period as a [`Duration`], or why it is not one.
    pub fn period(&self) -> Result<Duration, String> {
        Duration::try_from_secs_f64(self.period_seconds)
            .ok()
            .filter(|p| !p.is_zero() && *p <= MAX_PERIOD)
            .ok_or_else(|| {
                format!(
                    "must be a number of seconds above 0 and at most a year, not {}",
                    self.period_seconds
                )
            })
    }
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentSpec {
    /// A unique name.
    pub name: String,
    /// The provider it calls (a key of `providers`).
    pub provider: String,
    /// Its system message.
    #[serde(default)]
    pub system_message: Option<String>,
    /// What it does (the selector reads it).
    #[serde(default)]
    pub description: Option<String>,
    /// The completion-token limit of each of its calls (reserved at admission).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// What it sees of the thread (default: all of it).
    #[serde(default)]
    pub history: HistorySpec,
    /// Tools from the built-in set.
    #[serde(default)]
    pub tools: Vec<BuiltinTool>,
    /// Agents it may hand off to (swarm teams).
    #[serde(default)]
    pub handoffs: Vec<String>,
}

/// What an agent sees of the thread: `{ last_n: N }`, `{ token_limit: N }`, or absent for all
/// of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistoryRepr", into = "HistoryRepr")]
#[non_exhaustive]
pub enum HistorySpec {
    /// The whole thread.
    #[default]
    Unbounded,
    /// The last N messages.
    LastN(usize),
    /// As many recent messages as fit N estimated tokens.
    TokenLimit(u64),
}

/// How a [`HistorySpec`] is written: a map with at most one key, the same in YAML, TOML and
/// JSON (serde's enum forms differ between the formats' crates: YAML wants tags).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_limit: Option<u64>,
}

impl TryFrom<HistoryRepr> for HistorySpec {
    type Error = String;

    fn try_from(r: HistoryRepr) -> Result<Self, String> {
        match (r.last_n, r.token_limit) {
            (None, None) => Ok(HistorySpec::Unbounded),
            (Some(n), None) => Ok(HistorySpec::LastN(n)),
            (None, Some(n)) => Ok(HistorySpec::TokenLimit(n)),
            _ => Err("name one of last_n or token_limit, not both".to_owned()),
        }
    }
}

impl From<HistorySpec> for HistoryRepr {
    fn from(h: HistorySpec) -> Self {
        match h {
            HistorySpec::Unbounded => HistoryRepr::default(),
            HistorySpec::LastN(n) => HistoryRepr {
                last_n: Some(n),
                ..HistoryRepr::default()
            },
            HistorySpec::TokenLimit(n) => HistoryRepr {
                token_limit: Some(n),
                ..HistoryRepr::default()
            },
        }
    }
}

/// The built-in tools a spec can give an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuiltinTool {
    /// Counts the words of a text.
    WordCount,
    /// The current UTC time as seconds since the Unix epoch.
    UnixTime,
}

/// How agents take turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TeamKind {
    /// Agents speak in order.
    #[default]
    RoundRobin,
    /// A model picks each next speaker (`selector` names its provider).
    Selector,
    /// Swarm: an agent hands off with a handoff tool call; otherwise it keeps the turn.
    Swarm,
    /// A directed graph of agents (`edges`): fan-out branches run concurrently; a node with
    /// several parents waits for all of them (or any, `activate_on_any`).
    Graph,
}

/// One edge of a graph team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EdgeSpec {
    /// The agent whose reply the edge follows.
    pub from: String,
    /// The agent it leads to.
    pub to: String,
    /// Taken only when the reply contains this text (a cycle needs such an exit).
    #[serde(default)]
    pub when_contains: Option<String>,
}

/// The team's turn-taking, caps and termination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TeamSettings {
    /// How agents take turns (default `round_robin`).
    #[serde(default)]
    pub kind: TeamKind,
    /// For `selector`: the provider of the selecting model.
    #[serde(default)]
    pub selector: Option<String>,
    /// For `graph`: the edges.
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
    /// For `graph`: nodes that run after the first of their parents, not after all of them.
    #[serde(default)]
    pub activate_on_any: Vec<String>,
    /// Agent replies per chat at most.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// Messages per chat at most, the task message included (AutoGen's `MaxMessageTermination`).
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// When a chat stops besides its caps.
    #[serde(default)]
    pub termination: Option<TerminationSpec>,
}

/// A termination expression: a condition, or `any`/`all` of several, each written as a map with
/// one key — the same in YAML, TOML and JSON.
///
/// In YAML: `{ any: [ { text_mention: TERMINATE }, { max_messages: 8 } ] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TerminationRepr", into = "TerminationRepr")]
#[non_exhaustive]
pub enum TerminationSpec {
    /// A message contains the text.
    TextMention(String),
    /// The thread holds this many messages (the task included).
    MaxMessages(usize),
    /// Total tokens reported by the chat's calls reach this many.
    MaxTotalTokens(u64),
    /// The chat has run this many seconds.
    TimeoutSeconds(f64),
    /// An agent handed off to this target.
    HandoffTo(String),
    /// Any of these fires.
    Any(Vec<TerminationSpec>),
    /// All of these have fired.
    All(Vec<TerminationSpec>),
}

/// How a [`TerminationSpec`] is written: one key of these.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminationRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_mention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_messages: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handoff_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<Vec<TerminationSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    all: Option<Vec<TerminationSpec>>,
}

impl TryFrom<TerminationRepr> for TerminationSpec {
    type Error = String;

    fn try_from(r: TerminationRepr) -> Result<Self, String> {
        let mut found = Vec::new();
        if let Some(v) = r.text_mention {
            found.push(TerminationSpec::TextMention(v));
        }
        if let Some(v) = r.max_messages {
            found.push(TerminationSpec::MaxMessages(v));
        }
        if let Some(v) = r.max_total_tokens {
            found.push(TerminationSpec::MaxTotalTokens(v));
        }
        if let Some(v) = r.timeout_seconds {
            found.push(TerminationSpec::TimeoutSeconds(v));
        }
        if let Some(v) = r.handoff_to {
            found.push(TerminationSpec::HandoffTo(v));
        }
        if let Some(v) = r.any {
            found.push(TerminationSpec::Any(v));
        }
        if let Some(v) = r.all {
            found.push(TerminationSpec::All(v));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("name one condition: text_mention, max_messages, max_total_tokens, timeout_seconds, handoff_to, any or all".to_owned()),
            _ => Err("a condition has one key; combine several with any: [...] or all: [...]".to_owned()),
        }
    }
}

impl From<TerminationSpec> for TerminationRepr {
    fn from(t: TerminationSpec) -> Self {
        let mut r = TerminationRepr::default();
        match t {
            TerminationSpec::TextMention(v) => r.text_mention = Some(v),
            TerminationSpec::MaxMessages(v) => r.max_messages = Some(v),
            TerminationSpec::MaxTotalTokens(v) => r.max_total_tokens = Some(v),
            TerminationSpec::TimeoutSeconds(v) => r.timeout_seconds = Some(v),
            TerminationSpec::HandoffTo(v) => r.handoff_to = Some(v),
            TerminationSpec::Any(v) => r.any = Some(v),
            TerminationSpec::All(v) => r.all = Some(v),
        }
        r
    }
}

/// Caps of one budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsSpec {
    /// Model calls.
    #[serde(default)]
    pub calls: Option<u64>,
    /// Tokens (prompt + completion).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Dollars (priced with `prices`).
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

/// The budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetSpec {
    /// Each task's budget (a child of the run's).
    #[serde(default)]
    pub per_task: LimitsSpec,
    /// The whole run's budget.
    #[serde(default)]
    pub run: LimitsSpec,
}

/// A model's price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PriceSpec {
    /// Dollars per million prompt tokens.
    pub input_per_million: f64,
    /// Dollars per million completion tokens.
    pub output_per_million: f64,
}

/// Batch settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RunSettings {
    /// Tasks running at once (default 64).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// The most agents, providers, tools or conditions a spec may list, and the longest cap: beyond
/// these a spec is a mistake (or an attack), not a team.
pub const MAX_ITEMS: usize = 1_000;

/// A spec that cannot be read or cannot run. The message names the field (its path, and for
/// parse errors the line) and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file's extension names no format this reads.
    #[error("{path}: unknown spec format; name the file .yaml, .yml, .toml or .json")]
    Format {
        /// The file.
        path: String,
    },
    /// The text does not parse into a spec.
    #[error("{}{field}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Parse {
        /// The field's path (`agents[1].provider`), or `(spec)` for the whole document.
        field: String,
        /// The 1-based line, where the format says.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The spec parses but cannot run.
    #[error("{field}: {message}")]
    Invalid {
        /// The field's path.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn path_or_root(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p.is_empty() || p == "." {
        "(spec)".to_owned()
    } else {
        p
    }
}

impl TeamSpec {
    /// Reads a spec file; the format comes from the extension (`.yaml`/`.yml`, `.toml`, `.json`).
    pub fn from_path(path: &Path) -> Result<TeamSpec, SpecError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mut spec = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml(&text),
            Some("toml") => Self::from_toml(&text),
            Some("json") => Self::from_json(&text),
            _ => Err(SpecError::Format { path: shown }),
        }?;
        // Paths in a spec are the spec's own: the same file runs from any directory.
        if let (Some(cache), Some(base)) = (spec.cache.as_mut(), path.parent())
            && cache.dir.is_relative()
        {
            cache.dir = base.join(&cache.dir);
        }
        Ok(spec)
    }

    /// Parses YAML.
    pub fn from_yaml(text: &str) -> Result<TeamSpec, SpecError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = path_or_root(e.path());
            let inner = e.into_inner();
            SpecError::Parse {
                message: strip_location(&inner.to_string(), &field),
                field,
                line: inner.location().map(|l| l.line()),
            }
        })
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<TeamSpec, SpecError> {
        let de = toml::Deserializer::parse(text).map_err(|e| SpecError::Parse {
            field: "(spec)".to_owned(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = path_or_root(e.path());
            let inner = e.into_inner();
            SpecError::Parse {
                field,
                line: inner.span().map(|s| line_of(text, s.start)),
                message: inner.message().to_owned(),
            }
        })
    }

    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<TeamSpec, SpecError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = path_or_root(e.path());
            let inner = e.into_inner();
            SpecError::Parse {
                message: strip_location(&inner.to_string(), &field),
                field,
                line: Some(inner.line()).filter(|&l| l > 0),
            }
        })
    }

    /// The checks that parsing cannot make: references between fields, names, caps, numbers in
    /// range. A team with no cap at all is refused: in a batch, a chat that never stops is a
    /// runaway bill.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.providers.is_empty() {
            return Err(invalid("providers", "name at least one provider"));
        }
        if self.agents.is_empty() {
            return Err(invalid("agents", "name at least one agent"));
        }
        if self.agents.len() > MAX_ITEMS || self.providers.len() > MAX_ITEMS {
            return Err(invalid(
                "agents",
                format!("at most {MAX_ITEMS} agents and {MAX_ITEMS} providers"),
            ));
        }
        for (name, p) in &self.providers {
            self.validate_provider(name, p)?;
        }
        if let Some(cache) = &self.cache {
            Self::validate_cache(cache)?;
        }
        let mut names = BTreeSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            let at = |f: &str| format!("agents[{i}].{f}");
            if a.name.trim().is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if !names.insert(a.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("'{}' names two agents; names must be unique", a.name),
                ));
            }
            if !self.providers.contains_key(&a.provider) {
                return Err(invalid(
                    at("provider"),
                    format!(
                        "no provider named '{}'; the providers are: {}",
                        a.provider,
                        self.provider_names()
                    ),
                ));
            }
            if a.max_completion_tokens == Some(0) {
                return Err(invalid(at("max_completion_tokens"), "must be at least 1"));
            }
            if a.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                return Err(invalid(at("temperature"), "must be between 0 and 2"));
            }
            match a.history {
                HistorySpec::LastN(0) => {
                    return Err(invalid(at("history.last_n"), "must be at least 1"));
                }
                HistorySpec::TokenLimit(0) => {
                    return Err(invalid(at("history.token_limit"), "must be at least 1"));
                }
                _ => {}
            }
            if a.tools.len() > MAX_ITEMS {
                return Err(invalid(at("tools"), format!("at most {MAX_ITEMS} tools")));
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            for (j, target) in a.handoffs.iter().enumerate() {
                if !names.contains(target.as_str()) {
                    return Err(invalid(
                        format!("agents[{i}].handoffs[{j}]"),
                        format!("no agent named '{target}'"),
                    ));
                }
            }
        }
        self.validate_team()?;
        validate_limits("budget.per_task", &self.budget.per_task)?;
        validate_limits("budget.run", &self.budget.run)?;
        for (model, p) in &self.prices {
            for (f, v) in [
                ("input_per_million", p.input_per_million),
                ("output_per_million", p.output_per_million),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(
                        format!("prices.{model}.{f}"),
                        "must be a non-negative number",
                    ));
                }
            }
        }
        if self.run.concurrency == Some(0) {
            return Err(invalid("run.concurrency", "must be at least 1"));
        }
        Ok(())
    }

    fn provider_names(&self) -> String {
        self.providers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn validate_cache(cache: &CacheSpec) -> Result<(), SpecError> {
        if cache.dir.as_os_str().is_empty() {
            return Err(invalid("cache.dir", "must not be empty"));
        }
        if cache
            .namespace
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(invalid(
                "cache.namespace",
                "must not be empty (leave it out for the default namespace)",
            ));
        }
        if cache.max_age_seconds == Some(0) {
            return Err(invalid(
                "cache.max_age_seconds",
                "must be at least 1 (leave it out for entries that never expire)",
            ));
        }
        Ok(())
    }

    fn validate_provider(&self, name: &str, p: &ProviderSpec) -> Result<(), SpecError> {
        let at = |f: &str| format!("providers.{name}.{f}");
        if p.model.trim().is_empty() {
            return Err(invalid(at("model"), "must not be empty"));
        }
        if p.kind == ProviderKind::Azure {
            if p.base_url.is_none() {
                return Err(invalid(
                    at("base_url"),
                    "azure needs the resource URL, e.g. https://NAME.openai.azure.com",
                ));
            }
            if p.api_version.is_none() {
                return Err(invalid(
                    at("api_version"),
                    "azure needs an api_version, e.g. 2024-10-21",
                ));
            }
        }
        if let Some(env) = &p.api_key_env
            && (env.is_empty() || env.contains('=') || env.contains('\0'))
        {
            return Err(invalid(
                at("api_key_env"),
                "must be the NAME of an environment variable (the key itself never goes in the file)",
            ));
        }
        if let Some(q) = &p.quota {
            q.period()
                .map_err(|m| invalid(at("quota.period_seconds"), m))?;
            for (f, v) in [
                ("requests", q.requests),
                ("tokens", q.tokens),
                ("requests_per_day", q.requests_per_day),
                ("tokens_per_day", q.tokens_per_day),
                ("max_in_flight", q.max_in_flight.map(u64::from)),
            ] {
                if v == Some(0) {
                    return Err(invalid(
                        at(&format!("quota.{f}")),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_team(&self) -> Result<(), SpecError> {
        let t = &self.team;
        if t.max_turns.is_none() && t.max_messages.is_none() {
            return Err(invalid(
                "team",
                "set max_turns or max_messages: a batch chat needs a cap so it always stops",
            ));
        }
        if t.max_turns == Some(0) {
            return Err(invalid("team.max_turns", "must be at least 1"));
        }
        if t.max_messages.is_some_and(|m| m < 2) {
            return Err(invalid(
                "team.max_messages",
                "counts the task message: at least 2 for one reply",
            ));
        }
        match (t.kind, &t.selector) {
            (TeamKind::Selector, None) => {
                return Err(invalid(
                    "team.selector",
                    format!(
                        "a selector team names the provider that picks speakers; the providers are: {}",
                        self.provider_names()
                    ),
                ));
            }
            (TeamKind::Selector, Some(p)) if !self.providers.contains_key(p) => {
                return Err(invalid(
                    "team.selector",
                    format!(
                        "no provider named '{p}'; the providers are: {}",
                        self.provider_names()
                    ),
                ));
            }
            (k, Some(_)) if k != TeamKind::Selector => {
                return Err(invalid(
                    "team.selector",
                    "only a selector team takes a selector",
                ));
            }
            _ => {}
        }
        if let Some(cond) = &t.termination {
            validate_termination("team.termination", cond, 0)?;
        }
        self.validate_graph()
    }

    fn validate_graph(&self) -> Result<(), SpecError> {
        let t = &self.team;
        if t.kind != TeamKind::Graph {
            if !t.edges.is_empty() || !t.activate_on_any.is_empty() {
                return Err(invalid(
                    "team.edges",
                    "only a graph team takes edges and activate_on_any",
                ));
            }
            return Ok(());
        }
        if t.max_turns.is_none() {
            return Err(invalid(
                "team.max_turns",
                "a graph team counts its cap in turns: set max_turns",
            ));
        }
        if t.edges.len() > MAX_ITEMS {
            return Err(invalid("team.edges", format!("at most {MAX_ITEMS} edges")));
        }
        let agent = |name: &str| self.agents.iter().any(|a| a.name == name);
        for (i, e) in t.edges.iter().enumerate() {
            for (f, name) in [("from", &e.from), ("to", &e.to)] {
                if !agent(name) {
                    return Err(invalid(
                        format!("team.edges[{i}].{f}"),
                        format!("no agent named '{name}'"),
                    ));
                }
            }
        }
        for (i, name) in t.activate_on_any.iter().enumerate() {
            if !agent(name) {
                return Err(invalid(
                    format!("team.activate_on_any[{i}]"),
                    format!("no agent named '{name}'"),
                ));
            }
        }
        Ok(())
    }

    /// The most model calls one task can make: the reply cap, plus a selection call per reply on
    /// a selector team. Termination conditions may stop a chat sooner; this is the upper bound
    /// a dry run and a budget plan need.
    pub fn max_calls_per_task(&self) -> u64 {
        let replies = match (self.team.max_turns, self.team.max_messages) {
            (Some(t), Some(m)) => u64::from(t).min(m.saturating_sub(1)),
            (Some(t), None) => u64::from(t),
            (None, Some(m)) => m.saturating_sub(1),
            (None, None) => 0,
        };
        match self.team.kind {
            TeamKind::Selector if self.agents.len() > 1 => replies.saturating_mul(2),
            // A graph turn runs every ready node at once: up to one call per agent.
            TeamKind::Graph => replies.saturating_mul(self.agents.len() as u64),
            _ => replies,
        }
    }
}

fn validate_limits(field: &str, l: &LimitsSpec) -> Result<(), SpecError> {
    if l.calls == Some(0) || l.tokens == Some(0) {
        return Err(invalid(
            field,
            "calls and tokens must be at least 1 when set",
        ));
    }
    if l.cost_usd.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        return Err(invalid(
            format!("{field}.cost_usd"),
            "must be a positive number of dollars",
        ));
    }
    Ok(())
}

fn validate_termination(
    field: &str,
    cond: &TerminationSpec,
    depth: usize,
) -> Result<(), SpecError> {
    // A hostile spec could nest `any` thousands deep; 32 levels is more than any real one.
    if depth > 32 {
        return Err(invalid(field, "nested more than 32 levels deep"));
    }
    match cond {
        TerminationSpec::TextMention(t) if t.is_empty() => Err(invalid(
            format!("{field}.text_mention"),
            "must not be empty",
        )),
        TerminationSpec::MaxMessages(0) => Err(invalid(
            format!("{field}.max_messages"),
            "must be at least 1",
        )),
        TerminationSpec::MaxTotalTokens(0) => Err(invalid(
            format!("{field}.max_total_tokens"),
            "must be at least 1",
        )),
        TerminationSpec::TimeoutSeconds(s)
            if Duration::try_from_secs_f64(*s).map_or(true, |d| d.is_zero() || d > MAX_PERIOD) =>
        {
            Err(invalid(
                format!("{field}.timeout_seconds"),
                "must be a number of seconds above 0 and at most a year",
            ))
        }
        TerminationSpec::Any(list) | TerminationSpec::All(list) => {
            let op = if matches!(cond, TerminationSpec::Any(_)) {
                "any"
            } else {
                "all"
            };
            if list.is_empty() || list.len() > MAX_ITEMS {
                return Err(invalid(
                    format!("{field}.{op}"),
                    format!("list 1 to {MAX_ITEMS} conditions"),
                ));
            }
            for (i, c) in list.iter().enumerate() {
                validate_termination(&format!("{field}.{op}[{i}]"), c, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// serde_yaml and serde_json append " at line L column C", and serde_yaml puts the path in
/// front: both are reported on their own, so the message keeps only what is wrong.
fn strip_location(message: &str, field: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && field.starts_with(path) => rest.to_owned(),
        _ => message.to_owned(),
    }
}
