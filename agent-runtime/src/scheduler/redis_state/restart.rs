//! Restart safety: a Redis that restarted (or was flushed) has forgotten the quota it held, and
//! a bucket re-created full would let every process spend a whole period's quota again on top of
//! what the provider already counted — 429s the shared quota exists to prevent.
//!
//! Two signals, both kept in this process:
//!
//! - **Missing state after recent activity.** A quota key this process used within its longest
//!   period cannot have expired by itself, so if its state is missing, Redis lost it. Operations
//!   on such a key send [`Start::Lost`]: the scripts create missing buckets **empty** — they
//!   refill from zero at the limit's rate, as the provider's bucket does from wherever it stands
//!   — and, when the quota's whole hash is gone, count a missing window as **spent** until it
//!   turns (a clock window until its boundary, a first-request window or a sliding log for one
//!   period from now): the count of the provider's current window is unknown, and anything
//!   else could admit a second window's worth into it. This covers restarts and `FLUSHALL`
//!   alike, with no extra round trip. A key idle for longer than its period starts as
//!   configured: its buckets would have been full and its windows unspent anyway.
//! - **The server's run id** (`INFO server`), read at connect and again whenever Redis answers
//!   after failing: a new one means the server restarted. It is logged (`warn`) and counted in
//!   `RedisQuotaMetrics::restarts_detected`, so a restart is visible, not only survived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::scheduler::quota::Limits;

/// How a script starts a meter it finds missing (the scripts' `start` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// A bucket full, a window unspent.
    AsConfigured,
    /// A bucket empty (the quota's `start_empty`), a window unspent.
    Empty,
    /// Lost to a restart or a flush: a bucket empty, and — when the quota's whole hash is gone,
    /// so no other dimension was merely switched to a new kind — a window spent until it turns.
    Lost,
}

impl Start {
    /// The script argument.
    pub(super) fn arg(self) -> u8 {
        match self {
            Start::AsConfigured => 0,
            Start::Empty => 1,
            Start::Lost => 2,
        }
    }
}

/// What this process remembers to tell a restarted Redis from a quiet one.
#[derive(Debug, Default)]
pub(super) struct Continuity {
    /// When each quota key last got an answer from Redis.
    last_seen: Mutex<HashMap<String, Instant>>,
    /// The server's run id as last read.
    run_id: Mutex<Option<String>>,
}

impl Continuity {
    /// How the scripts are to start state they find missing for `key`: [`Start::Lost`] when the
    /// key was active within its longest period (its state must still be there; if it is not,
    /// Redis lost it), else as the quota says.
    pub(super) fn start(&self, key: &str, limits: &Limits, now: Instant) -> Start {
        let window = longest_period(limits);
        let recent = self
            .last_seen()
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < window);
        if recent {
            Start::Lost
        } else if limits.start_empty {
            Start::Empty
        } else {
            Start::AsConfigured
        }
    }

    /// Redis answered an operation on `key`.
    pub(super) fn seen(&self, key: &str, now: Instant) {
        let mut map = self.last_seen();
        match map.get_mut(key) {
            Some(at) => *at = now,
            None => {
                map.insert(key.to_owned(), now);
            }
        }
    }

    /// Records the server's run id; true when it differs from the one read before (a restart).
    pub(super) fn run_id_changed(&self, run_id: String) -> bool {
        let mut held = self.run_id.lock().unwrap_or_else(|p| p.into_inner());
        let changed = held.as_ref().is_some_and(|old| *old != run_id);
        *held = Some(run_id);
        changed
    }

    fn last_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Plain inserts of instants: a panic elsewhere cannot leave the map inconsistent.
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The longest period among the buckets `limits` sets (zero when none is set).
fn longest_period(limits: &Limits) -> Duration {
    [
        limits.requests,
        limits.tokens,
        limits.requests_per_day,
        limits.tokens_per_day,
    ]
    .into_iter()
    .flatten()
    .map(|r| r.period)
    .max()
    .unwrap_or(Duration::ZERO)
}

/// The `run_id` field of an `INFO server` reply.
pub(super) fn parse_run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::quota::Rate;

    #[test]
    fn a_key_used_within_its_period_reads_missing_state_as_lost_and_an_idle_one_does_not() {
        let c = Continuity::default();
        let limits = Limits {
            requests: Some(Rate::new(60, Duration::from_secs(6))),
            ..Limits::UNLIMITED
        };
        let empty = Limits {
            start_empty: true,
            ..limits
        };
        let t0 = Instant::now();
        assert_eq!(c.start("k", &limits, t0), Start::AsConfigured, "never seen");
        assert_eq!(c.start("k", &empty, t0), Start::Empty);
        c.seen("k", t0);
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(c.start("k", &limits, soon), Start::Lost);
        assert_eq!(c.start("k", &empty, soon), Start::Lost);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(c.start("k", &limits, later), Start::AsConfigured);
        assert_eq!(c.start("other", &limits, t0), Start::AsConfigured);
    }

    #[test]
    fn a_new_run_id_is_a_restart_and_the_first_is_not() {
        let c = Continuity::default();
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(parse_run_id(info).as_deref(), Some("abc123"));
        assert!(!c.run_id_changed("abc123".into()));
        assert!(!c.run_id_changed("abc123".into()));
        assert!(c.run_id_changed("def456".into()));
        assert_eq!(parse_run_id("redis_version:7"), None);
    }
}
