//! What a store holds under a key: the completion, when it was made, and (for a streamed call)
//! the deltas it arrived in — JSON, versioned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::Completion;
use serde::{Deserialize, Serialize};

/// Bumped when the layout changes: an entry of another version reads as corrupt (a miss).
const ENTRY_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    version: u32,
    /// Milliseconds since the Unix epoch when the entry was written (wall clock: entries outlive
    /// the process).
    created_ms: u64,
    pub(super) completion: Completion,
    /// The text deltas of a streamed call, in order (empty for a plain call).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) deltas: Vec<String>,
}

/// Why an entry was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unusable {
    Corrupt(String),
    Expired,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Entry {
    /// An entry for `completion`, made now. What a later reader must not take as fresh is
    /// dropped: the rate-limit reading (a hit touches no quota) and the `cached` mark (set on
    /// read).
    pub(super) fn new(completion: &Completion, deltas: Vec<String>) -> Self {
        let mut completion = completion.clone();
        completion.rate_limits = None;
        completion.cached = false;
        Self {
            version: ENTRY_VERSION,
            created_ms: now_ms(),
            completion,
            deltas,
        }
    }

    #[cfg(test)]
    pub(super) fn aged(mut self, age: Duration) -> Self {
        self.created_ms = self
            .created_ms
            .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // Cannot fail: a completion is strings, numbers and JSON values.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry in `bytes`, if it is whole, of this version, and younger than `max_age`.
    pub(super) fn decode(bytes: &[u8], max_age: Option<Duration>) -> Result<Self, Unusable> {
        let entry: Entry =
            serde_json::from_slice(bytes).map_err(|e| Unusable::Corrupt(e.to_string()))?;
        if entry.version != ENTRY_VERSION {
            return Err(Unusable::Corrupt(format!(
                "entry version {} (this build reads {ENTRY_VERSION})",
                entry.version
            )));
        }
        if let Some(max) = max_age {
            let age = Duration::from_millis(now_ms().saturating_sub(entry.created_ms));
            if age > max {
                return Err(Unusable::Expired);
            }
        }
        Ok(entry)
    }
}
