//! Token-fair queueing after VTC ("Fairness in Serving Large Language Models", OSDI '24): a
//! virtual token counter per client; the waiting client with the lowest counter goes next.
//!
//! A call is charged its estimated tokens when admitted and corrected to its reported usage at
//! reconcile. A client that starts waiting again is lifted to the lowest waiting counter (or,
//! with nobody waiting, to the counter of the client that last stopped), so time spent idle or
//! in flight is not saved up as credit: among clients that keep waiting, the service received
//! differs by at most about two of the largest calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use super::{FORGET_AFTER, Order, Rank, corrected};

#[derive(Debug)]
struct Client {
    counter: u64,
    /// Its place among the waiting clients, while it waits.
    rank: Option<Rank>,
    /// Its last arrival or admission, to forget clients gone for good.
    last: Instant,
}

/// Virtual token counters and the waiting clients ordered by them.
#[derive(Debug, Default)]
pub(super) struct TokenFair {
    clients: HashMap<Arc<str>, Client, FxBuildHasher>,
    /// Waiting clients by (counter, arrival): ties go first come, first served.
    waiting: BTreeMap<Rank, Arc<str>>,
    /// The counter of the client that last stopped waiting.
    floor: u64,
    seq: u64,
    /// Forget idle clients when the map grows to this size (amortised).
    prune_at: usize,
}

impl TokenFair {
    fn prune(&mut self, now: Instant) {
        if self.clients.len() < self.prune_at {
            return;
        }
        self.clients.retain(|_, c| {
            c.rank.is_some() || now.saturating_duration_since(c.last) < FORGET_AFTER
        });
        self.prune_at = (self.clients.len() * 2).max(64);
    }
}

impl Order for TokenFair {
    fn arrive(&mut self, client: &Arc<str>, _front: bool, since: Instant) {
        let lift = self
            .waiting
            .first_key_value()
            .map_or(self.floor, |(rank, _)| rank.0);
        self.seq += 1;
        let c = self.clients.entry(client.clone()).or_insert(Client {
            counter: 0,
            rank: None,
            last: since,
        });
        c.counter = c.counter.max(lift);
        c.last = since;
        let rank = (c.counter, self.seq);
        c.rank = Some(rank);
        self.waiting.insert(rank, client.clone());
        self.prune(since);
    }

    fn leave(&mut self, client: &str) {
        if let Some(c) = self.clients.get_mut(client)
            && let Some(rank) = c.rank.take()
        {
            self.waiting.remove(&rank);
            self.floor = c.counter;
        }
    }

    fn served(&mut self, client: &str, units: u64, next: Option<Instant>, now: Instant) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        if let Some(rank) = c.rank.take() {
            self.waiting.remove(&rank);
        }
        c.counter = c.counter.saturating_add(units);
        c.last = now;
        match next {
            Some(_) => {
                self.seq += 1;
                let rank = (c.counter, self.seq);
                c.rank = Some(rank);
                if let Some((name, _)) = self.clients.get_key_value(client) {
                    self.waiting.insert(rank, name.clone());
                }
            }
            None => self.floor = c.counter,
        }
    }

    fn correct(&mut self, client: &str, delta: i64) {
        let Some((name, c)) = self.clients.get_key_value(client) else {
            return;
        };
        let (name, old) = (name.clone(), c.rank);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        c.counter = corrected(c.counter, delta);
        if let Some(rank) = old {
            self.waiting.remove(&rank);
            let rank = (c.counter, rank.1);
            c.rank = Some(rank);
            self.waiting.insert(rank, name);
        }
    }

    fn next(&self) -> Option<&Arc<str>> {
        self.waiting.first_key_value().map(|(_, name)| name)
    }
}
