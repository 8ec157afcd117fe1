//! Finish-first queueing: the waiting client that has received the most service goes next, so
//! started conversations finish before new ones take quota (least attained service per whole
//! program, as in Autellix, reversed to shorten the mean completion time of equal programs).
//!
//! Its starvation bound: a call that has waited `max_wait` goes ahead of every call that has not,
//! oldest first. So a call is admitted at the latest `max_wait` after it arrived plus the time the
//! quota takes to serve the calls that aged before it (at most one call's refill wait each).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use super::{FORGET_AFTER, Order, corrected};

#[derive(Debug)]
struct Client {
    /// Service received (queue units).
    attained: u64,
    /// First seen: earlier clients win ties, so equal conversations finish one by one.
    seq: u64,
    /// When its oldest waiting call arrived, while it waits.
    waiting_since: Option<Instant>,
    last: Instant,
}

/// Attained service per client and the waiting clients ordered by it and by age.
#[derive(Debug)]
pub(super) struct FinishFirst {
    max_wait: Duration,
    clients: HashMap<Arc<str>, Client, FxBuildHasher>,
    by_service: BTreeMap<(Reverse<u64>, u64), Arc<str>>,
    by_age: BTreeMap<(Instant, u64), Arc<str>>,
    seq: u64,
    prune_at: usize,
}

impl FinishFirst {
    pub(super) fn new(max_wait: Duration) -> Self {
        Self {
            max_wait,
            clients: HashMap::default(),
            by_service: BTreeMap::new(),
            by_age: BTreeMap::new(),
            seq: 0,
            prune_at: 0,
        }
    }

    /// Takes a waiting client out of both orders; returns its name.
    fn unlink(&mut self, client: &str) -> Option<Arc<str>> {
        let c = self.clients.get(client)?;
        let since = c.waiting_since?;
        self.by_age.remove(&(since, c.seq));
        self.by_service.remove(&(Reverse(c.attained), c.seq))
    }

    fn link(&mut self, name: Arc<str>, since: Instant) {
        let Some(c) = self.clients.get_mut(&name) else {
            return;
        };
        c.waiting_since = Some(since);
        self.by_age.insert((since, c.seq), name.clone());
        self.by_service.insert((Reverse(c.attained), c.seq), name);
    }

    fn prune(&mut self, now: Instant) {
        if self.clients.len() < self.prune_at {
            return;
        }
        self.clients.retain(|_, c| {
            c.waiting_since.is_some() || now.saturating_duration_since(c.last) < FORGET_AFTER
        });
        self.prune_at = (self.clients.len() * 2).max(64);
    }
}

impl Order for FinishFirst {
    fn arrive(&mut self, client: &Arc<str>, _front: bool, since: Instant) {
        self.seq += 1;
        let seq = self.seq;
        let c = self.clients.entry(client.clone()).or_insert(Client {
            attained: 0,
            seq,
            waiting_since: None,
            last: since,
        });
        c.last = since;
        self.link(client.clone(), since);
        self.prune(since);
    }

    fn leave(&mut self, client: &str) {
        self.unlink(client);
        if let Some(c) = self.clients.get_mut(client) {
            c.waiting_since = None;
        }
    }

    fn served(&mut self, client: &str, units: u64, next: Option<Instant>, now: Instant) {
        let name = self.unlink(client);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        c.attained = c.attained.saturating_add(units);
        c.last = now;
        c.waiting_since = None;
        if let (Some(name), Some(since)) = (name, next) {
            self.link(name, since);
        }
    }

    fn requeued(&mut self, client: &str, since: Instant) {
        if let Some(name) = self.unlink(client) {
            self.link(name, since);
        }
    }

    fn correct(&mut self, client: &str, delta: i64) {
        let waiting = self.clients.get(client).and_then(|c| c.waiting_since);
        let name = self.unlink(client);
        if let Some(c) = self.clients.get_mut(client) {
            c.attained = corrected(c.attained, delta);
        }
        if let (Some(name), Some(since)) = (name, waiting) {
            self.link(name, since);
        }
    }

    fn next(&self) -> Option<&Arc<str>> {
        if let Some(((since, _), name)) = self.by_age.first_key_value()
            && since
                .checked_add(self.max_wait)
                .is_some_and(|aged| aged <= Instant::now())
        {
            return Some(name);
        }
        self.by_service.first_key_value().map(|(_, name)| name)
    }
}
