//! Round robin per call: one admission per waiting client per round, whatever its size.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use super::Order;

/// Clients with waiting calls, in turn order.
#[derive(Debug, Default)]
pub(super) struct RoundRobin {
    ring: VecDeque<Arc<str>>,
}

impl Order for RoundRobin {
    fn arrive(&mut self, client: &Arc<str>, front: bool, _since: Instant) {
        // A retried call had its turn taken from it by the provider: it goes first again rather
        // than to the back of the round.
        if front {
            self.ring.push_front(client.clone());
        } else {
            self.ring.push_back(client.clone());
        }
    }

    fn leave(&mut self, client: &str) {
        self.ring.retain(|n| &**n != client);
    }

    fn served(&mut self, client: &str, _units: u64, next: Option<Instant>, _now: Instant) {
        // It had its turn: to the back of the round, if it still waits.
        if let Some(at) = self.ring.iter().position(|n| &**n == client)
            && let Some(name) = self.ring.remove(at)
            && next.is_some()
        {
            self.ring.push_back(name);
        }
    }

    fn correct(&mut self, _client: &str, _delta: i64) {}

    fn next(&self) -> Option<&Arc<str>> {
        self.ring.front()
    }
}
