//! A [`TeamSpec`] made real: its providers, one scheduler with every provider's quota, and a
//! fresh [`GroupChat`] per task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_core::history::{LastN, TokenLimited};
use agent_core::termination::{
    HandoffTo, MaxMessages, TerminationExt, TextMention, Timeout, TokenUsage,
};
use agent_core::tool::{ToolRegistry, TypedTool};
use agent_core::{Budget, BudgetLimits, ChatModel, LlmAgent, PriceTable, Termination};

use super::spec::{
    AgentSpec, BuiltinTool, CacheSpec, HistorySpec, LimitsSpec, ProviderKind, ProviderSpec,
    SpecError, TeamKind, TeamSpec, TerminationSpec,
};
use crate::cache::{EmbeddedStore, ResponseCache};
use crate::chat::graph::{Activation, Edge, GraphFlow};
use crate::chat::{CancelHandle, ChatError, ChatResult, GroupChat, LlmSelector, SpeakerSelection};
use crate::provider::{OpenAiProvider, SimConfig, SimulatedProvider};
use crate::scheduler::{Quota, QuotaScheduler, QuotaState};

/// A team ready to run tasks: providers built, one scheduler for all of them.
pub struct Team {
    spec: TeamSpec,
    providers: BTreeMap<String, Arc<dyn ChatModel>>,
    scheduler: QuotaScheduler,
    prices: PriceTable,
    run_budget: Budget,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("agents", &self.spec.agents.len())
            .finish_non_exhaustive()
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn limits(l: &LimitsSpec) -> BudgetLimits {
    BudgetLimits {
        max_calls: l.calls,
        max_tokens: l.tokens,
        max_cost_usd: l.cost_usd,
    }
}

/// The run's response cache, from its spec (validated).
fn open_cache(c: &CacheSpec) -> Result<ResponseCache, SpecError> {
    let store = EmbeddedStore::open(&c.dir).map_err(|e| invalid("cache.dir", e.to_string()))?;
    let mut cache = ResponseCache::builder(store).mode(c.mode.into());
    if let Some(namespace) = &c.namespace {
        cache = cache.namespace(namespace.clone());
    }
    if let Some(secs) = c.max_age_seconds {
        cache = cache.max_age(Duration::from_secs(secs));
    }
    cache.build().map_err(|e| invalid("cache", e.to_string()))
}

impl Team {
    /// Builds the providers and the scheduler. `env` looks up environment variables (the API
    /// keys named by `api_key_env`); `state` keeps the quota in a shared backend (Redis).
    ///
    /// A missing key variable is an error naming the provider and the variable.
    pub fn build(
        spec: TeamSpec,
        env: &dyn Fn(&str) -> Option<String>,
        state: Option<Arc<dyn QuotaState>>,
    ) -> Result<Team, SpecError> {
        spec.validate()?;
        let mut providers = BTreeMap::new();
        // Each result carries its task's usage; per-conversation stats in the scheduler would
        // only grow with the batch (a 10,000-task run would track 10,000 conversations).
        let mut scheduler = QuotaScheduler::builder().max_tracked_conversations(0);
        for (name, p) in &spec.providers {
            let model = build_provider(name, p, env)?;
            let quota = quota_of(name, p)?;
            scheduler = scheduler.quota(model.id(), quota);
            providers.insert(name.clone(), model);
        }
        if let Some(state) = state {
            scheduler = scheduler.state(state);
        }
        if let Some(c) = &spec.cache {
            scheduler = scheduler.cache(open_cache(c)?);
        }
        let scheduler = scheduler
            .build()
            .map_err(|e| invalid("providers", e.to_string()))?;
        let mut prices = PriceTable::new();
        for (model, p) in &spec.prices {
            prices = prices.with(model.clone(), p.input_per_million, p.output_per_million);
        }
        let run_budget = Budget::with_prices("run", limits(&spec.budget.run), prices.clone());
        Ok(Team {
            spec,
            providers,
            scheduler,
            prices,
            run_budget,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &TeamSpec {
        &self.spec
    }

    /// The scheduler every call of every task goes through.
    pub fn scheduler(&self) -> &QuotaScheduler {
        &self.scheduler
    }

    /// The run's budget (each task's is its child).
    pub fn run_budget(&self) -> &Budget {
        &self.run_budget
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Each provider's model id (its quota and price key), by provider name.
    pub fn model_ids(&self) -> BTreeMap<String, String> {
        self.providers
            .iter()
            .map(|(name, model)| (name.clone(), model.id().to_owned()))
            .collect()
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn ChatModel>> {
        self.providers.get(name)
    }

    /// A fresh chat for task `id`, on the shared scheduler, with a child of the run's budget.
    pub fn chat(&self, id: &str) -> Result<TaskChat, SpecError> {
        let budget = self
            .run_budget
            .child(format!("task {id}"), limits(&self.spec.budget.per_task));
        if self.spec.team.kind == TeamKind::Graph {
            return self.graph(id, budget).map(TaskChat::Graph);
        }
        self.group(id, budget).map(TaskChat::Group)
    }

    fn graph(&self, id: &str, budget: Budget) -> Result<GraphFlow, SpecError> {
        let team = &self.spec.team;
        let mut flow = GraphFlow::builder()
            .name(format!("task {id}"))
            .conversation_id(id.to_owned())
            .scheduler(self.scheduler.clone())
            .budget(budget);
        for (i, a) in self.spec.agents.iter().enumerate() {
            flow = flow.participant(self.agent(i, a)?);
        }
        for e in &team.edges {
            let mut edge = Edge::new(e.from.as_str(), e.to.as_str());
            if let Some(text) = &e.when_contains {
                edge = edge.when_contains(text.as_str());
            }
            flow = flow.add_edge(edge);
        }
        for node in &team.activate_on_any {
            flow = flow.activation(node.as_str(), Activation::Any);
        }
        if let Some(t) = team.max_turns {
            flow = flow.max_turns(t);
        }
        if let Some(cond) = &team.termination {
            flow = flow.termination(termination(cond)?);
        }
        flow.build()
            .map_err(|e| invalid("team.edges", e.to_string()))
    }

    fn group(&self, id: &str, budget: Budget) -> Result<GroupChat, SpecError> {
        let mut chat = GroupChat::builder()
            .name(format!("task {id}"))
            .conversation_id(id.to_owned())
            .scheduler(self.scheduler.clone())
            .budget(budget);
        for (i, a) in self.spec.agents.iter().enumerate() {
            chat = chat.participant(self.agent(i, a)?);
        }
        let team = &self.spec.team;
        chat = match team.kind {
            TeamKind::RoundRobin => chat.speaker_selection(SpeakerSelection::RoundRobin),
            TeamKind::Swarm | TeamKind::Graph => chat.speaker_selection(SpeakerSelection::Handoffs),
            TeamKind::Selector => {
                let name = team.selector.as_deref().unwrap_or_default();
                let model = self.providers.get(name).ok_or_else(|| {
                    invalid("team.selector", format!("no provider named '{name}'"))
                })?;
                chat.speaker_selection(SpeakerSelection::Llm(LlmSelector::from_arc(model.clone())))
            }
        };
        if let Some(t) = team.max_turns {
            chat = chat.max_turns(t);
        }
        if let Some(m) = team.max_messages {
            chat = chat.max_messages(m);
        }
        if let Some(cond) = &team.termination {
            chat = chat.termination(termination(cond)?);
        }
        chat.build().map_err(|e| invalid("team", e.to_string()))
    }

    fn agent(&self, i: usize, a: &AgentSpec) -> Result<LlmAgent, SpecError> {
        let at = |f: &str| format!("agents[{i}].{f}");
        let model = self.providers.get(&a.provider).ok_or_else(|| {
            invalid(
                at("provider"),
                format!("no provider named '{}'", a.provider),
            )
        })?;
        let mut b = LlmAgent::builder(a.name.as_str(), model.clone());
        if let Some(s) = &a.system_message {
            b = b.system_message(s.as_str());
        }
        if let Some(d) = &a.description {
            b = b.description(d.as_str());
        }
        if let Some(m) = a.max_completion_tokens {
            b = b.max_completion_tokens(m);
        }
        if let Some(t) = a.temperature {
            b = b.temperature(t);
        }
        b = match a.history {
            HistorySpec::Unbounded => b,
            HistorySpec::LastN(n) => b.history(LastN::new(n)),
            HistorySpec::TokenLimit(n) => b.history(TokenLimited::new(n)),
        };
        if !a.tools.is_empty() {
            let mut tools = ToolRegistry::new();
            for tool in &a.tools {
                tools =
                    builtin_tool(tools, *tool).map_err(|e| invalid(at("tools"), e.to_string()))?;
            }
            b = b.tools(tools);
        }
        for target in &a.handoffs {
            b = b.handoff(
                target.as_str(),
                format!("Hand the conversation to {target}."),
            );
        }
        b.build().map_err(|e| invalid(at("name"), e.to_string()))
    }
}

/// One task's chat: a group chat or a graph, run the same way.
#[derive(Debug)]
#[non_exhaustive]
pub enum TaskChat {
    /// Round robin, selector or swarm.
    Group(GroupChat),
    /// A graph of agents.
    Graph(GraphFlow),
}

impl TaskChat {
    /// Runs the task to its end.
    pub async fn run(&mut self, task: String) -> Result<ChatResult, ChatError> {
        match self {
            TaskChat::Group(c) => c.run(task).await,
            TaskChat::Graph(g) => g.run(task).await,
        }
    }

    /// Cancels the run from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        match self {
            TaskChat::Group(c) => c.cancel_handle(),
            TaskChat::Graph(g) => g.cancel_handle(),
        }
    }

    /// The task's budget.
    pub fn budget(&self) -> &Budget {
        match self {
            TaskChat::Group(c) => c.budget(),
            TaskChat::Graph(g) => g.budget(),
        }
    }
}

fn build_provider(
    name: &str,
    p: &ProviderSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn ChatModel>, SpecError> {
    let at = |f: &str| format!("providers.{name}.{f}");
    if p.kind == ProviderKind::Simulated {
        // The simulator plays the provider: it enforces the quota the spec gives the key.
        let mut sim = SimConfig::default().with_model(p.model.as_str());
        if let Some(q) = &p.quota {
            sim = sim
                .with_period(
                    q.period()
                        .map_err(|m| invalid(at("quota.period_seconds"), m))?,
                )
                .with_limiter(crate::scheduler::Limiter::from(q.limiter).into());
            if let Some(n) = q.requests {
                sim = sim.with_rpm(n);
            }
            if let Some(n) = q.tokens {
                sim = sim.with_tpm(n);
            }
        }
        let sim = SimulatedProvider::new(sim).map_err(|e| invalid(at("quota"), e.to_string()))?;
        return Ok(Arc::new(sim));
    }
    let mut b = OpenAiProvider::builder().model(p.model.as_str());
    if let Some(url) = &p.base_url {
        b = b.base_url(url.as_str());
    }
    if p.kind == ProviderKind::Azure {
        b = b.azure(p.model.as_str(), p.api_version.clone().unwrap_or_default());
    }
    if let Some(var) = &p.api_key_env {
        let key = env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            invalid(
                at("api_key_env"),
                format!("the environment variable {var} is not set; export it with the API key"),
            )
        })?;
        b = b.api_key(key);
    }
    let provider = b
        .build()
        .map_err(|e| invalid(at("base_url"), e.to_string()))?;
    Ok(Arc::new(provider))
}

fn quota_of(name: &str, p: &ProviderSpec) -> Result<Quota, SpecError> {
    let Some(q) = &p.quota else {
        return Ok(Quota::unlimited());
    };
    let at = |f: &str| format!("providers.{name}.quota.{f}");
    let mut quota = Quota::per_period(q.period().map_err(|m| invalid(at("period_seconds"), m))?)
        .limiter(q.limiter.into());
    if let Some(n) = q.requests {
        quota = quota.requests(n);
    }
    if let Some(n) = q.tokens {
        quota = quota.tokens(n);
    }
    if let Some(n) = q.requests_per_day {
        quota = quota.requests_per_day(n);
    }
    if let Some(n) = q.tokens_per_day {
        quota = quota.tokens_per_day(n);
    }
    if let Some(n) = q.max_in_flight {
        quota = quota.max_in_flight(n);
    }
    quota
        .validate_for(name)
        .map_err(|e| invalid(at("requests"), e.to_string()))?;
    Ok(quota)
}

/// The termination condition a spec expression names.
pub fn termination(cond: &TerminationSpec) -> Result<Box<dyn Termination>, SpecError> {
    Ok(match cond {
        TerminationSpec::TextMention(t) => Box::new(TextMention::new(t.as_str())),
        TerminationSpec::MaxMessages(n) => Box::new(MaxMessages::new(*n)),
        TerminationSpec::MaxTotalTokens(n) => Box::new(
            TokenUsage::builder()
                .max_total(*n)
                .build()
                .map_err(|e| invalid("team.termination.max_total_tokens", e.to_string()))?,
        ),
        TerminationSpec::TimeoutSeconds(s) => {
            let d = std::time::Duration::try_from_secs_f64(*s).map_err(|_| {
                invalid(
                    "team.termination.timeout_seconds",
                    "must be a number of seconds",
                )
            })?;
            Box::new(Timeout::new(d))
        }
        TerminationSpec::HandoffTo(t) => Box::new(HandoffTo::new(t.as_str())),
        TerminationSpec::Any(list) | TerminationSpec::All(list) => {
            let any = matches!(cond, TerminationSpec::Any(_));
            let mut parts = list.iter().map(termination);
            let first = parts
                .next()
                .ok_or_else(|| invalid("team.termination", "an empty list"))??;
            let mut acc: Box<dyn Termination> = first;
            for part in parts {
                let part = part?;
                acc = if any {
                    Box::new(acc.or(part))
                } else {
                    Box::new(acc.and(part))
                };
            }
            acc
        }
    })
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct WordCountArgs {
    /// The text whose words to count.
    text: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoArgs {}

fn builtin_tool(
    tools: ToolRegistry,
    tool: BuiltinTool,
) -> Result<ToolRegistry, agent_core::AgentConfigError> {
    match tool {
        BuiltinTool::WordCount => {
            tools.with(TypedTool::new(
                "word_count",
                "Counts the words of a text.",
                |args: WordCountArgs| async move {
                    Ok::<_, String>(args.text.split_whitespace().count())
                },
            ))
        }
        BuiltinTool::UnixTime => tools.with(TypedTool::new(
            "unix_time",
            "The current UTC time in seconds since the Unix epoch.",
            |_: NoArgs| async move {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .map_err(|e| e.to_string())
            },
        )),
    }
}
