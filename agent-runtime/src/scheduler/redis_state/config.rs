//! How a [`RedisQuotaState`](super::RedisQuotaState) connects and what it does when Redis fails.

use std::time::Duration;

/// What admission does while Redis is unreachable or slower than the command timeout.
///
/// There is no silent mode: every switch into and out of a failure mode is logged with
/// `tracing::warn!` and counted in [`RedisQuotaMetrics`](super::RedisQuotaMetrics).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admission keeps retrying Redis for up to `max_wait`, then fails with
    /// [`RedisQuotaError::Unavailable`](super::RedisQuotaError::Unavailable). No call is sent
    /// without the shared quota's consent, so the provider never sees more than the limit.
    FailClosed {
        /// How long one admission waits for Redis before it gives up.
        max_wait: Duration,
    },
    /// Admission continues on a local in-memory quota holding each limit divided by
    /// `expected_processes` (the conservative share of one process), and returns to the shared
    /// quota as soon as Redis answers again. Calls keep flowing, at a lower rate.
    FailOpen {
        /// How many processes share the quota; each gets `1 / expected_processes` of every limit
        /// while Redis is down. At least 1.
        expected_processes: u32,
    },
}

impl FailurePolicy {
    /// Fail closed, waiting up to `max_wait` per admission.
    pub fn fail_closed(max_wait: Duration) -> Self {
        FailurePolicy::FailClosed { max_wait }
    }

    /// Fail open to `1 / expected_processes` of every limit.
    pub fn fail_open(expected_processes: u32) -> Self {
        FailurePolicy::FailOpen { expected_processes }
    }
}

impl Default for FailurePolicy {
    /// Fail closed with a 30 s wait: a shared quota that silently stops being shared is the bug
    /// this backend exists to prevent, so degrading is opt-in.
    fn default() -> Self {
        FailurePolicy::FailClosed {
            max_wait: Duration::from_secs(30),
        }
    }
}

/// Settings of the Redis quota backend (everything except the URL, which may carry a password and
/// is therefore never stored in a value that can be printed).
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::redis_state::{FailurePolicy, RedisQuotaConfig};
///
/// let config = RedisQuotaConfig::default()
///     .with_key_prefix("billing-service")
///     .with_lease_ttl(Duration::from_secs(20))
///     .with_failure_policy(FailurePolicy::fail_open(4));
/// assert_eq!(config.key_prefix, "billing-service");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisQuotaConfig {
    /// Namespace of every key (`{prefix:quota}:…`). Processes share a quota exactly when they use
    /// the same prefix and quota key. Default `"turnstile"`.
    pub key_prefix: String,
    /// How long an in-flight lease lives without renewal. A holder renews its lease every third of
    /// this while the call runs, so a crashed holder's slot returns at most this long after the
    /// crash. Default 30 s.
    pub lease_ttl: Duration,
    /// A Redis command slower than this counts as a failure (and triggers the failure policy).
    /// Default 500 ms.
    pub command_timeout: Duration,
    /// While Redis is failing, how often a fail-open state probes it to return to the shared
    /// quota. Default 1 s.
    pub probe_interval: Duration,
    /// The longest an admission sleeps on a full in-flight limit before asking Redis again: a
    /// slot freed by another process is not announced, so it is polled. Default 50 ms.
    pub in_flight_poll: Duration,
    /// What admission does when Redis fails. Default [`FailurePolicy::default`].
    pub failure_policy: FailurePolicy,
}

impl Default for RedisQuotaConfig {
    fn default() -> Self {
        Self {
            key_prefix: "turnstile".to_owned(),
            lease_ttl: Duration::from_secs(30),
            command_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_secs(1),
            in_flight_poll: Duration::from_millis(50),
            failure_policy: FailurePolicy::default(),
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

    /// Sets the lease time-to-live.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
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

    /// Sets the in-flight poll interval.
    #[must_use]
    pub fn with_in_flight_poll(mut self, poll: Duration) -> Self {
        self.in_flight_poll = poll;
        self
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Checks the settings; `connect` calls this, so a bad value fails at start-up, not mid-run.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.key_prefix.is_empty() {
            return Err("key_prefix is empty; set a namespace such as \"turnstile\"".into());
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(format!(
                "lease_ttl {:?} is below 100 ms; leases would expire between renewals",
                self.lease_ttl
            ));
        }
        if self.command_timeout.is_zero() {
            return Err("command_timeout is zero; every command would time out".into());
        }
        if self.probe_interval.is_zero() || self.in_flight_poll.is_zero() {
            return Err("probe_interval and in_flight_poll must be above zero".into());
        }
        if let FailurePolicy::FailOpen {
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
            FailurePolicy::FailClosed { .. }
        ));
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        let cases = [
            RedisQuotaConfig::default().with_key_prefix(""),
            RedisQuotaConfig::default().with_lease_ttl(Duration::from_millis(10)),
            RedisQuotaConfig::default().with_command_timeout(Duration::ZERO),
            RedisQuotaConfig::default().with_in_flight_poll(Duration::ZERO),
            RedisQuotaConfig::default().with_failure_policy(FailurePolicy::fail_open(0)),
        ];
        for case in cases {
            let err = case.validate().err();
            assert!(err.is_some(), "{case:?} should be rejected");
        }
    }
}
