//! The order of a key's waiting calls: per-client FIFO queues within priority classes, and the
//! [`QueuePolicy`] that picks which client goes next — one module per policy.
//!
//! A *client* is the conversation a call belongs to, or the tenant label the caller set
//! ([`ModelCall::with_tenant`](super::ModelCall::with_tenant)). Higher priority classes always go
//! first; within a class the policy chooses the client, and the client's oldest call goes.
//! Admission (`admission.rs`) only asks for the head and tells the queue what was admitted,
//! removed or reconciled; it never knows which policy runs.

mod finish_first;
mod round_robin;
mod token_fair;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;
use tokio::time::Instant;

use finish_first::FinishFirst;
use round_robin::RoundRobin;
use token_fair::TokenFair;

/// How a key orders the calls waiting for its quota, set per key with
/// [`Quota::queue`](super::Quota::queue). Priorities always go first, and only the call at the
/// head of the order may take quota (strict head-of-line), whatever the policy.
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::{Quota, QueuePolicy};
///
/// // The default: every waiting conversation gets an equal share of the token rate.
/// assert_eq!(Quota::per_minute().queue, QueuePolicy::token_fair());
/// // Started conversations first, none waiting more than 30 s behind them.
/// let quota = Quota::per_minute().tokens(60_000).queue(QueuePolicy::finish_first(Duration::from_secs(30)));
/// assert!(quota.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// One admission per waiting client per round, whatever the call's size.
    RoundRobin,
    /// Virtual token counters (VTC): the waiting client that has received the fewest weighted
    /// tokens goes next, so every waiting client gets an equal share of the token rate (divided
    /// by its tenant weight). A call is charged `input_weight × prompt + output_weight ×
    /// max completion` at admission and corrected to its reported usage at reconcile.
    TokenFair {
        /// Weight of a prompt token.
        input_weight: u32,
        /// Weight of a completion token.
        output_weight: u32,
    },
    /// The waiting client that has received the most tokens goes next (finishing started
    /// conversations first lowers the mean completion time). A call that has waited `max_wait`
    /// goes ahead of every call that has not, oldest first: that bounds everyone's wait.
    FinishFirst {
        /// How long a call waits behind the finish-first order before it ages past it.
        max_wait: Duration,
    },
}

impl QueuePolicy {
    /// [`TokenFair`](Self::TokenFair) with prompt and completion tokens weighted alike, as a
    /// provider's token limit counts them.
    pub const fn token_fair() -> Self {
        Self::TokenFair {
            input_weight: 1,
            output_weight: 1,
        }
    }

    /// [`FinishFirst`](Self::FinishFirst) with the given aging bound.
    pub const fn finish_first(max_wait: Duration) -> Self {
        Self::FinishFirst { max_wait }
    }

    /// Why the policy is unusable, if it is.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        match self {
            Self::TokenFair {
                input_weight: 0,
                output_weight: 0,
            } => Some("token-fair queueing needs an input or an output weight above zero"),
            _ => None,
        }
    }

    /// A call's service in queue units: its weighted tokens divided by its tenant weight.
    fn units(&self, demand: Demand, weight: NonZeroU32) -> u64 {
        let (input, output) = match *self {
            Self::TokenFair {
                input_weight,
                output_weight,
            } => (u64::from(input_weight), u64::from(output_weight)),
            _ => (1, 1),
        };
        let tokens = demand
            .prompt
            .saturating_mul(input)
            .saturating_add(demand.completion.saturating_mul(output));
        tokens.saturating_mul(UNIT) / u64::from(weight.get())
    }
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self::token_fair()
    }
}

/// Queue units per weighted token: keeps a small call's share exact under a large tenant weight.
const UNIT: u64 = 1024;

/// How long a client with nothing waiting keeps its service counter: one that comes back later
/// starts afresh (token-fair lifts it to the waiting clients anyway).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The tokens of a call, as the queue charges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Demand {
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
}

/// A waiting call.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: u64,
    /// When the call joined the queue (finish-first ages on it).
    since: Instant,
    pub(crate) notify: Notify,
}

/// What every policy does: the queue tells it when a client starts or stops waiting and what it
/// was served; it names the client that goes next.
trait Order {
    /// `client` has a call waiting again (it had none); `since`: when that call arrived.
    fn arrive(&mut self, client: &Arc<str>, front: bool, since: Instant);
    /// `client` has no call waiting any more (cancelled or timed out).
    fn leave(&mut self, client: &str);
    /// `client`'s call was admitted, charged `units`; `next` is when its next waiting call
    /// arrived, if it has one.
    fn served(&mut self, client: &str, units: u64, next: Option<Instant>, now: Instant);
    /// `client`'s oldest call left without admission; its next waiting one arrived at `since`.
    fn requeued(&mut self, _client: &str, _since: Instant) {}
    /// Corrects a past charge of `client` by `delta` units (reported usage against estimate).
    fn correct(&mut self, client: &str, delta: i64);
    /// The waiting client that goes next.
    fn next(&self) -> Option<&Arc<str>>;
}

/// The policies behind [`Order`], dispatched without a box.
#[derive(Debug)]
enum Policy {
    RoundRobin(RoundRobin),
    TokenFair(TokenFair),
    FinishFirst(FinishFirst),
}

impl Policy {
    fn new(policy: QueuePolicy) -> Self {
        match policy {
            QueuePolicy::RoundRobin => Self::RoundRobin(RoundRobin::default()),
            QueuePolicy::TokenFair { .. } => Self::TokenFair(TokenFair::default()),
            QueuePolicy::FinishFirst { max_wait } => Self::FinishFirst(FinishFirst::new(max_wait)),
        }
    }

    fn order(&self) -> &dyn Order {
        match self {
            Self::RoundRobin(p) => p,
            Self::TokenFair(p) => p,
            Self::FinishFirst(p) => p,
        }
    }

    fn order_mut(&mut self) -> &mut dyn Order {
        match self {
            Self::RoundRobin(p) => p,
            Self::TokenFair(p) => p,
            Self::FinishFirst(p) => p,
        }
    }
}

#[derive(Debug)]
struct Class {
    priority: u8,
    waiting: HashMap<Arc<str>, VecDeque<Arc<Slot>>, FxBuildHasher>,
    /// Kept while the class is empty: the policy's service counters outlive a quiet moment.
    policy: Policy,
}

/// Per-client FIFO queues within priority classes (highest first); the key's [`QueuePolicy`]
/// picks the client within a class.
#[derive(Debug)]
pub(crate) struct FairQueue {
    policy: QueuePolicy,
    classes: Vec<Class>,
    len: usize,
    next_id: u64,
}

impl FairQueue {
    pub(crate) fn new(policy: QueuePolicy) -> Self {
        Self {
            policy,
            classes: Vec::new(),
            len: 0,
            next_id: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A call's service in this queue's units.
    pub(crate) fn units(&self, demand: Demand, weight: NonZeroU32) -> u64 {
        self.policy.units(demand, weight)
    }

    fn class_mut(&mut self, priority: u8) -> Option<&mut Class> {
        self.classes.iter_mut().find(|c| c.priority == priority)
    }

    /// Queues a call of `client`; `front`: a retry, which goes first among the client's calls.
    pub(crate) fn push(
        &mut self,
        client: &str,
        priority: u8,
        front: bool,
        now: Instant,
    ) -> Arc<Slot> {
        self.next_id += 1;
        let slot = Arc::new(Slot {
            id: self.next_id,
            since: now,
            notify: Notify::new(),
        });
        // Classes are sorted by descending priority.
        let i = match self.classes.binary_search_by(|c| priority.cmp(&c.priority)) {
            Ok(i) => i,
            Err(i) => {
                self.classes.insert(
                    i,
                    Class {
                        priority,
                        waiting: HashMap::default(),
                        policy: Policy::new(self.policy),
                    },
                );
                i
            }
        };
        let class = &mut self.classes[i];
        match class.waiting.get_mut(client) {
            Some(q) if front => q.push_front(slot.clone()),
            Some(q) => q.push_back(slot.clone()),
            None => {
                let name: Arc<str> = Arc::from(client);
                class
                    .waiting
                    .insert(name.clone(), VecDeque::from([slot.clone()]));
                class.policy.order_mut().arrive(&name, front, now);
            }
        }
        self.len += 1;
        slot
    }

    pub(crate) fn head(&self) -> Option<&Arc<Slot>> {
        let class = self.classes.iter().find(|c| !c.waiting.is_empty())?;
        class.waiting.get(class.policy.order().next()?)?.front()
    }

    pub(crate) fn is_head(&self, id: u64) -> bool {
        self.head().is_some_and(|h| h.id == id)
    }

    /// Takes waiter `id` out of its client's FIFO: its class, its position there, and when the
    /// client's next waiting call arrived (`None`: the client has no call waiting any more).
    fn unqueue(
        &mut self,
        client: &str,
        priority: u8,
        id: u64,
    ) -> Option<(&mut Class, usize, Option<Instant>)> {
        let class = self.classes.iter_mut().find(|c| c.priority == priority)?;
        let q = class.waiting.get_mut(client)?;
        let pos = q.iter().position(|s| s.id == id)?;
        q.remove(pos);
        let next = q.front().map(|s| s.since);
        if next.is_none() {
            class.waiting.remove(client);
        }
        self.len -= 1;
        Some((class, pos, next))
    }

    /// Removes an admitted waiter and charges its client `units`. By id, not "whoever is head
    /// now": while a shared backend answers, a higher-priority call or a retry may have become
    /// head, and popping it would lose that call and orphan this one's slot.
    pub(crate) fn take(&mut self, client: &str, priority: u8, id: u64, units: u64, now: Instant) {
        if let Some((class, _, next)) = self.unqueue(client, priority, id) {
            class.policy.order_mut().served(client, units, next, now);
        }
    }

    /// Removes a waiter wherever it is (it leaves without admission).
    pub(crate) fn remove(&mut self, client: &str, priority: u8, id: u64) {
        match self.unqueue(client, priority, id) {
            Some((class, _, None)) => class.policy.order_mut().leave(client),
            // The client's oldest call left: its next one now sets its age.
            Some((class, 0, Some(since))) => class.policy.order_mut().requeued(client, since),
            _ => {}
        }
    }

    /// Corrects the charge of an admitted call of `client` to its reported usage.
    pub(crate) fn correct(&mut self, client: &str, priority: u8, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(class) = self.class_mut(priority) {
            class.policy.order_mut().correct(client, delta);
        }
    }

    /// Wakes the head so it re-checks the buckets.
    pub(crate) fn notify_head(&self) {
        if let Some(h) = self.head() {
            h.notify.notify_one();
        }
    }
}

/// A service counter ordered for a `BTreeMap`: ties go to the earlier `seq`.
type Rank = (u64, u64);

/// Applies a signed correction to a counter, saturating at both ends.
fn corrected(counter: u64, delta: i64) -> u64 {
    if delta >= 0 {
        counter.saturating_add(delta.unsigned_abs())
    } else {
        counter.saturating_sub(delta.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(q: &FairQueue) -> u64 {
        q.head().map_or(0, |s| s.id)
    }

    #[tokio::test(start_paused = true)]
    async fn token_fair_lifts_a_new_client_and_reorders_on_correction() {
        let now = Instant::now();
        let mut q = FairQueue::new(QueuePolicy::token_fair());
        let a = q.push("a", 0, false, now);
        q.take("a", 0, a.id, 100, now);
        // "b" arrives at an empty queue: lifted to the counter "a" left with, so "a" (returning
        // at 100) and "b" tie, and "b" came first.
        let b = q.push("b", 0, false, now);
        let a = q.push("a", 0, false, now);
        assert_eq!(head(&q), b.id);
        // "a"'s call used less than charged: it is behind on service now.
        q.correct("a", 0, -50);
        assert_eq!(head(&q), a.id);
        // A higher class goes first whatever the counters.
        let high = q.push("c", 1, false, now);
        assert_eq!(head(&q), high.id);
        q.remove("c", 1, high.id);
        assert_eq!(head(&q), a.id);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn finish_first_prefers_the_most_served_until_a_call_ages() {
        let start = Instant::now();
        let mut q = FairQueue::new(QueuePolicy::finish_first(Duration::from_secs(5)));
        let old = q.push("old", 0, false, start);
        let busy = q.push("busy", 0, false, start);
        q.take("busy", 0, busy.id, 10, start);
        let busy = q.push("busy", 0, false, start);
        assert_eq!(head(&q), busy.id, "more service goes first");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(head(&q), old.id, "aged past it");
    }
}
