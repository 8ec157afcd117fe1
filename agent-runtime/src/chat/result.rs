//! What a chat run returns: its messages, why it stopped, its summary, and every model call it
//! caused — hidden ones (speaker selection, reflection, nested chats) included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_core::budget::nanos_to_usd;
use agent_core::{Message, StopReason, Usage};
use serde::{Deserialize, Serialize};

/// Model usage of one agent, one model, or a whole run.
///
/// Calls answered by a response cache are counted in `calls` and their tokens in the token
/// fields (the usage *including* cached inference, as AG2 reports it), and again in the `cached_*`
/// fields; [`excluding_cached`](Self::excluding_cached) is what the providers actually served. A
/// hit costs nothing: `cost_nanos` is what the budget was charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallUsage {
    /// Model calls that finished, successfully or not.
    pub calls: u64,
    /// Of those, calls that failed.
    pub failed: u64,
    /// Provider attempts (a call retried by the scheduler counts each attempt).
    pub attempts: u64,
    /// Prompt tokens reported by the providers.
    pub prompt_tokens: u64,
    /// Completion tokens reported by the providers.
    pub completion_tokens: u64,
    /// Cost in nanodollars, priced with the chat budget's price table.
    pub cost_nanos: u64,
    /// Of `calls`, those a response cache answered.
    #[serde(default)]
    pub cached_calls: u64,
    /// Of `prompt_tokens`, those of cached answers.
    #[serde(default)]
    pub cached_prompt_tokens: u64,
    /// Of `completion_tokens`, those of cached answers.
    #[serde(default)]
    pub cached_completion_tokens: u64,
}

impl CallUsage {
    /// Prompt plus completion tokens (saturating at `u64::MAX`).
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Cost in dollars.
    pub fn cost_usd(&self) -> f64 {
        nanos_to_usd(self.cost_nanos)
    }

    /// The usage the providers served: cached answers left out (AG2's
    /// `usage_excluding_cached_inference`).
    pub fn excluding_cached(&self) -> CallUsage {
        CallUsage {
            calls: self.calls.saturating_sub(self.cached_calls),
            prompt_tokens: self.prompt_tokens.saturating_sub(self.cached_prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_sub(self.cached_completion_tokens),
            cached_calls: 0,
            cached_prompt_tokens: 0,
            cached_completion_tokens: 0,
            ..*self
        }
    }
}

/// Adds field by field, saturating: a report must never wrap to a small number.
impl std::ops::AddAssign for CallUsage {
    fn add_assign(&mut self, other: CallUsage) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failed = self.failed.saturating_add(other.failed);
        self.attempts = self.attempts.saturating_add(other.attempts);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.cached_calls = self.cached_calls.saturating_add(other.cached_calls);
        self.cached_prompt_tokens = self
            .cached_prompt_tokens
            .saturating_add(other.cached_prompt_tokens);
        self.cached_completion_tokens = self
            .cached_completion_tokens
            .saturating_add(other.cached_completion_tokens);
    }
}

/// Usage of a run, by agent and by model.
///
/// Keys: the agent whose context made the call — a participant, or the chat's own name for
/// speaker-selection and reflection calls; a nested chat's calls count under the nested agent —
/// and the scheduler's quota key for the model (the model id unless the scheduler maps it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Per agent.
    pub by_agent: BTreeMap<String, CallUsage>,
    /// Per model (quota key).
    pub by_model: BTreeMap<String, CallUsage>,
    /// Everything.
    pub total: CallUsage,
}

/// The outcome of one chat run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChatResult {
    /// The messages of this run: the task messages, then every reply (inner tool traffic
    /// included). A resumed run holds only the new messages.
    pub messages: Vec<Message>,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// The summary, by the chat's [`SummaryMethod`](super::SummaryMethod) (default: the last
    /// message's text).
    pub summary: String,
    /// Every model call the run caused.
    pub usage: UsageReport,
    /// Time from the start of the run to its result.
    pub wall_time: Duration,
}

impl ChatResult {
    /// Total cost in dollars.
    pub fn cost_usd(&self) -> f64 {
        self.usage.total.cost_usd()
    }

    /// Model calls made (each call once, whatever its retries).
    pub fn model_calls(&self) -> u64 {
        self.usage.total.calls
    }
}

/// Running totals of a chat's calls, keyed by (agent, quota key). A handful of entries per chat,
/// so a vector beats a map.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    entries: Vec<(Arc<str>, Arc<str>, CallUsage)>,
}

impl Ledger {
    pub(crate) fn record(
        &mut self,
        agent: &Arc<str>,
        key: &str,
        usage: Option<Usage>,
        failed: bool,
        attempts: u32,
        cost_nanos: u64,
    ) {
        let usage = usage.unwrap_or_default();
        *self.entry(agent, key) += CallUsage {
            calls: 1,
            failed: u64::from(failed),
            attempts: u64::from(attempts),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_nanos,
            ..CallUsage::default()
        };
    }

    /// A call a response cache answered: counted with its usage, no attempts, no cost.
    pub(crate) fn record_cached(&mut self, agent: &Arc<str>, key: &str, usage: Option<Usage>) {
        let usage = usage.unwrap_or_default();
        *self.entry(agent, key) += CallUsage {
            calls: 1,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_calls: 1,
            cached_prompt_tokens: usage.prompt_tokens,
            cached_completion_tokens: usage.completion_tokens,
            ..CallUsage::default()
        };
    }

    fn entry(&mut self, agent: &Arc<str>, key: &str) -> &mut CallUsage {
        match self
            .entries
            .iter_mut()
            .position(|(a, k, _)| a == agent && &**k == key)
        {
            Some(i) => &mut self.entries[i].2,
            None => {
                self.entries
                    .push((agent.clone(), Arc::from(key), CallUsage::default()));
                let last = self.entries.len() - 1;
                &mut self.entries[last].2
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn report(&self) -> UsageReport {
        let mut report = UsageReport::default();
        for (agent, key, usage) in &self.entries {
            *report.by_agent.entry(agent.to_string()).or_default() += *usage;
            *report.by_model.entry(key.to_string()).or_default() += *usage;
            report.total += *usage;
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_groups_by_agent_and_model() {
        let mut ledger = Ledger::default();
        let a: Arc<str> = Arc::from("a");
        let sel: Arc<str> = Arc::from("chat");
        ledger.record(&a, "m1", Some(Usage::new(10, 2)), false, 1, 5);
        ledger.record(&a, "m1", Some(Usage::new(1, 1)), false, 2, 1);
        ledger.record(&sel, "m2", None, true, 3, 0);
        let r = ledger.report();
        assert_eq!(r.by_agent["a"].calls, 2);
        assert_eq!(r.by_agent["a"].attempts, 3);
        assert_eq!(r.by_agent["a"].total_tokens(), 14);
        assert_eq!(r.by_agent["chat"].failed, 1);
        assert_eq!(r.by_model["m1"].cost_nanos, 6);
        assert_eq!(r.total.calls, 3);
        assert_eq!(r.total.attempts, 6);
    }

    #[test]
    fn cached_calls_count_in_the_totals_and_apart() {
        let mut ledger = Ledger::default();
        let a: Arc<str> = Arc::from("a");
        ledger.record(&a, "m", Some(Usage::new(10, 2)), false, 1, 7);
        ledger.record_cached(&a, "m", Some(Usage::new(10, 2)));
        let total = ledger.report().total;
        assert_eq!((total.calls, total.cached_calls), (2, 1));
        assert_eq!(total.total_tokens(), 24);
        assert_eq!(total.cost_nanos, 7, "a hit costs nothing");
        let served = total.excluding_cached();
        assert_eq!((served.calls, served.total_tokens()), (1, 12));
        assert_eq!(served.attempts, 1);
    }

    #[test]
    fn usage_sums_saturate_instead_of_overflowing() {
        let mut sum = CallUsage {
            calls: u64::MAX,
            prompt_tokens: u64::MAX,
            completion_tokens: 1,
            cost_nanos: u64::MAX - 1,
            ..CallUsage::default()
        };
        assert_eq!(sum.total_tokens(), u64::MAX);
        sum += CallUsage {
            calls: 1,
            failed: 2,
            cost_nanos: 5,
            ..CallUsage::default()
        };
        assert_eq!(sum.calls, u64::MAX);
        assert_eq!(sum.failed, 2);
        assert_eq!(sum.cost_nanos, u64::MAX);
    }
}
