//! How a [`RedisQuotaState`](super::RedisQuotaState) connects and what it does when Redis fails.

use std::time::Duration;

/// What admission does while Redis is unreachable or slower than the command timeout.
///
/// There is no silent mode: every switch into and out of a failure mode is logged with
/// `tracing::warn!` and shows in [`RedisQuotaMetrics`](super::RedisQuotaMetrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisFailurePolicy {
    /// Admission fails with [`StateError::Unavailable`](crate::scheduler::StateError): the
    /// scheduler keeps the call waiting and asking Redis again every poll interval, and fails it after
    /// `max_admission_wait`. No call is sent without the shared quota's consent, so the provider
    /// never sees more than the limit; an outage stalls calls. The default: a shared quota that
    /// silently stops being shared is the bug this backend exists to prevent.
    #[default]
    FailClosed,
    /// Admission continues on a local in-memory quota holding each limit divided by
    /// `expected_processes` (this process's conservative share), asks Redis again every
    /// `probe_interval`, and returns to the shared quota as soon as Redis answers. Calls keep
    /// flowing at a lower rate; the sum over processes stays within the limit as long as no more
    /// than `expected_processes` processes run.
    FailOpen {
        /// How many processes share the quota; each gets `1 / expected_processes` of every limit
        /// (and of the in-flight cap) while Redis is down. At least 1.
        expected_processes: u32,
    },
}

impl RedisFailurePolicy {
    /// Fail open to `1 / expected_processes` of every limit.
    pub fn fail_open(expected_processes: u32) -> Self {
        RedisFailurePolicy::FailOpen { expected_processes }
    }
}

/// Settings of the Redis quota backend (everything except the URL, which may carry a password and
/// is therefore never stored in a value that can be printed).
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::redis_state::{RedisFailurePolicy, RedisQuotaConfig};
///
/// let config = RedisQuotaConfig::default()
///     .with_key_prefix("billing-service")
///     .with_command_timeout(Duration::from_millis(200))
///     .with_failure_policy(RedisFailurePolicy::fail_open(4));
/// assert_eq!(config.key_prefix, "billing-service");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisQuotaConfig {
    /// Namespace of every key (`{prefix:quota}:…`). Processes share a quota exactly when they use
    /// the same prefix and quota key. Default `"turnstile"`.
    pub key_prefix: String,
    /// A Redis command slower than this counts as a failure (and triggers the failure policy).
    /// Default 500 ms.
    pub command_timeout: Duration,
    /// While Redis is failing, how often a fail-open state probes it to return to the shared
    /// quota. Default 1 s.
    pub probe_interval: Duration,
    /// What admission does when Redis fails. Default [`RedisFailurePolicy::FailClosed`].
    pub failure_policy: RedisFailurePolicy,
}

impl Default for RedisQuotaConfig {
    fn default() -> Self {
        Self {
            key_prefix: "turnstile".to_owned(),
            command_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_secs(1),
            failure_policy: RedisFailurePolicy::default(),
        }
    }
}

impl RedisQuotaConfig {
    /// Sets the key prefix.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the command timeout.
    #[must_use]
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the probe interval of a fail-open state.
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn with_failure_policy(mut self, policy: RedisFailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Checks the settings; `connect` calls this, so a bad value fails at start-up, not mid-run.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.key_prefix.is_empty() {
            return Err("key_prefix is empty; set a namespace such as \"turnstile\"".into());
        }
        if self.command_timeout.is_zero() {
            return Err("command_timeout is zero; every command would time out".into());
        }
        if self.probe_interval.is_zero() {
            return Err("probe_interval must be above zero".into());
        }
        if let RedisFailurePolicy::FailOpen {
            expected_processes: 0,
        } = self.failure_policy
        {
            return Err("FailOpen needs expected_processes >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fail_closed() {
        let config = RedisQuotaConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(matches!(
            config.failure_policy,
            RedisFailurePolicy::FailClosed
        ));
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        let cases = [
            RedisQuotaConfig::default().with_key_prefix(""),
            RedisQuotaConfig::default().with_command_timeout(Duration::ZERO),
            RedisQuotaConfig::default().with_probe_interval(Duration::ZERO),
            RedisQuotaConfig::default().with_failure_policy(RedisFailurePolicy::fail_open(0)),
        ];
        for case in cases {
            let err = case.validate().err();
            assert!(err.is_some(), "{case:?} should be rejected");
        }
    }
}
