//! `--dry-run`: what a batch will cost and the shortest time its quota allows, before anything is
//! spent.
//!
//! Calls and tokens are **upper bounds**: every chat is assumed to run to its cap (a termination
//! condition can only stop it sooner), every reply to use its whole `max_completion_tokens`, and
//! every turn to send the whole thread (less, under a history policy). The makespan is the
//! **lower bound** of `docs/benchmarks.md` for that work: buckets start full and refill at
//! `limit / period`, so `N` requests cannot all be admitted before `(N − R) · P / R`, and likewise
//! for tokens; a chat's turns are sequential, so the longest chain of calls bounds it too.

use std::collections::BTreeMap;

use agent_core::{CharsPerToken, ChatRequest, Message, TokenEstimator, Usage};
use serde::Serialize;

use super::spec::{HistorySpec, ProviderKind, TeamKind, TeamSpec};
use crate::provider::SimConfig;
use crate::scheduler::quota::DEFAULT_MAX_COMPLETION_TOKENS;

/// What a dry run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Estimate {
    /// Tasks to run.
    pub tasks: usize,
    /// Model calls at most.
    pub calls: u64,
    /// Prompt tokens at most (by the scheduler's estimator).
    pub prompt_tokens: u64,
    /// Completion tokens at most.
    pub completion_tokens: u64,
    /// Dollars at most, priced with the spec's prices (0 for models without a price).
    pub cost_usd: f64,
    /// The shortest run the quotas allow for that work, in seconds.
    pub min_makespan_s: f64,
    /// Which limit sets it: `requests`, `tokens`, `chain` (a task's calls in sequence) or
    /// `none` (no limit configured and no latency known).
    pub bound_by: String,
    /// Per provider: calls and tokens at most.
    pub per_provider: BTreeMap<String, ProviderEstimate>,
}

/// One provider's share of an [`Estimate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProviderEstimate {
    /// Calls at most.
    pub calls: u64,
    /// Tokens at most (what the scheduler reserves: prompt + max completion).
    pub tokens: u64,
    /// Seconds the quota needs for them (0 without limits).
    pub quota_s: f64,
}

/// Estimates `tasks` (their task texts) on `spec`; `model_ids` maps each provider's name to its
/// model id (the price key), as [`Team::model_ids`](super::Team::model_ids) gives it.
pub fn estimate<'t>(
    spec: &TeamSpec,
    model_ids: &BTreeMap<String, String>,
    tasks: impl IntoIterator<Item = &'t str>,
) -> Estimate {
    let estimator = CharsPerToken::default();
    let replies = match spec.team.kind {
        TeamKind::Selector if spec.agents.len() > 1 => spec.max_calls_per_task() / 2,
        _ => spec.max_calls_per_task(),
    };
    let mut per_provider: BTreeMap<String, ProviderEstimate> = BTreeMap::new();
    let (mut n, mut prompt_total, mut completion_total, mut cost) = (0usize, 0u64, 0u64, 0f64);
    let mut chain_s: f64 = 0.0;
    for task in tasks {
        n += 1;
        let mut thread = vec![Message::user(task)];
        let mut task_chain = 0.0;
        for turn in 0..replies {
            let agent = &spec.agents[usize::try_from(turn).unwrap_or(0) % spec.agents.len()];
            let reply_tokens = agent
                .max_completion_tokens
                .unwrap_or(DEFAULT_MAX_COMPLETION_TOKENS);
            let seen = visible(&thread, agent.history, &estimator);
            let mut messages = Vec::with_capacity(seen.len() + 1);
            if let Some(s) = &agent.system_message {
                messages.push(Message::system(s.as_str()));
            }
            messages.extend_from_slice(seen);
            let prompt = estimator.prompt_tokens(&ChatRequest::new(messages));
            let mut calls_here = 1;
            if spec.team.kind == TeamKind::Selector && spec.agents.len() > 1 {
                // The selector's prompt: roles and the whole thread; its answer is a name.
                let selector_prompt = estimator.prompt_tokens(&ChatRequest::new(thread.clone()));
                add(
                    &mut per_provider,
                    spec.team.selector.as_deref().unwrap_or_default(),
                    1,
                    selector_prompt + 16,
                );
                prompt_total += selector_prompt;
                completion_total += 16;
                calls_here += 1;
            }
            add(
                &mut per_provider,
                &agent.provider,
                1,
                prompt + u64::from(reply_tokens),
            );
            prompt_total += prompt;
            completion_total += u64::from(reply_tokens);
            if let Some(p) = spec.providers.get(&agent.provider) {
                let price = model_ids
                    .get(&agent.provider)
                    .and_then(|id| spec.prices.get(id));
                if let Some(price) = price {
                    let usage = Usage::new(prompt, u64::from(reply_tokens));
                    cost += (usage.prompt_tokens as f64 * price.input_per_million
                        + usage.completion_tokens as f64 * price.output_per_million)
                        / 1e6;
                }
                task_chain += latency_s(p, reply_tokens) * f64::from(calls_here);
            }
            // The reply, at its longest, joins the thread (4 characters a token).
            thread.push(Message::assistant(
                agent.name.as_str(),
                "x".repeat(reply_tokens as usize * 4),
            ));
        }
        chain_s = chain_s.max(task_chain);
    }
    let mut min_makespan_s = chain_s;
    let mut bound_by = if chain_s > 0.0 { "chain" } else { "none" };
    let mut calls = 0;
    for (name, est) in per_provider.iter_mut() {
        calls += est.calls;
        let Some(q) = spec.providers.get(name).and_then(|p| p.quota.as_ref()) else {
            continue;
        };
        let Ok(period) = q.period() else { continue };
        let first_latency = spec.providers.get(name).map_or(0.0, |p| latency_s(p, 1));
        for (limit, demand, what) in [
            (q.requests, est.calls, "requests"),
            (q.tokens, est.tokens, "tokens"),
        ] {
            let Some(limit) = limit else { continue };
            let wait = demand.saturating_sub(limit) as f64 * period.as_secs_f64() / limit as f64;
            let t = wait + first_latency;
            est.quota_s = est.quota_s.max(wait);
            if t > min_makespan_s {
                min_makespan_s = t;
                bound_by = what;
            }
        }
    }
    Estimate {
        tasks: n,
        calls,
        prompt_tokens: prompt_total,
        completion_tokens: completion_total,
        cost_usd: (cost * 1e6).round() / 1e6,
        min_makespan_s: (min_makespan_s * 1000.0).round() / 1000.0,
        bound_by: bound_by.to_owned(),
        per_provider,
    }
}

fn add(per: &mut BTreeMap<String, ProviderEstimate>, provider: &str, calls: u64, tokens: u64) {
    let e = per.entry(provider.to_owned()).or_default();
    e.calls += calls;
    e.tokens += tokens;
}

/// What an agent sees of the thread under its history policy (the estimate's view of it).
fn visible<'m>(
    thread: &'m [Message],
    history: HistorySpec,
    est: &dyn TokenEstimator,
) -> &'m [Message] {
    match history {
        HistorySpec::LastN(n) => &thread[thread.len().saturating_sub(n)..],
        HistorySpec::TokenLimit(limit) => {
            let mut used = 0u64;
            let mut from = thread.len();
            while from > 0 {
                let t = est.message_tokens(&thread[from - 1]);
                if used + t > limit {
                    break;
                }
                used += t;
                from -= 1;
            }
            &thread[from..]
        }
        _ => thread,
    }
}

/// A provider's service time for one call: the simulator's model of it; unknown (0) for an
/// HTTP endpoint, which makes the bound a pure quota bound.
fn latency_s(p: &super::spec::ProviderSpec, reply_tokens: u32) -> f64 {
    if p.kind != ProviderKind::Simulated {
        return 0.0;
    }
    let sim = SimConfig::default();
    let reply = reply_tokens.min(sim.reply_tokens);
    (sim.latency + sim.per_token_latency * reply).as_secs_f64()
}
