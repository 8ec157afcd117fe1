//! Budgets: how many model calls, tokens and dollars a run may spend, nested.
//!
//! A [`Budget`] is a node in a tree. Every charge is checked against the node **and all its
//! ancestors** at once, so a nested chat (a child budget) can never spend more than its parent has
//! left, and whatever the child does not use was never taken from the parent. Charges are two-phase:
//! [`Budget::try_reserve`] takes an estimate before a call, [`Reservation::settle`] replaces it with
//! the actual usage afterwards, and dropping an unsettled reservation gives it all back (a call that
//! was cancelled while queued costs nothing).
//!
//! Counters are atomics; a reservation walks the chain to the root and rolls back on the first
//! limit it would cross, so concurrent chats sharing a budget never overshoot the call limit.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::message::Usage;

/// Nanodollars per dollar: costs are kept as integer nanodollars so they add exactly.
const NANOS_PER_DOLLAR: f64 = 1e9;

/// Caps of one budget node. `None` means unlimited in that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetLimits {
    /// Maximum model calls (every attempt that reaches a provider counts).
    pub max_calls: Option<u64>,
    /// Maximum tokens (prompt + completion).
    pub max_tokens: Option<u64>,
    /// Maximum cost in dollars, priced with the budget's [`PriceTable`].
    pub max_cost_usd: Option<f64>,
}

impl BudgetLimits {
    /// No caps.
    pub const UNLIMITED: BudgetLimits = BudgetLimits {
        max_calls: None,
        max_tokens: None,
        max_cost_usd: None,
    };

    /// Caps only the number of model calls.
    pub const fn calls(max_calls: u64) -> Self {
        BudgetLimits {
            max_calls: Some(max_calls),
            max_tokens: None,
            max_cost_usd: None,
        }
    }

    /// Adds a token cap.
    #[must_use]
    pub const fn with_max_tokens(mut self, max_tokens: u64) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Adds a cost cap in dollars.
    #[must_use]
    pub const fn with_max_cost_usd(mut self, max_cost_usd: f64) -> Self {
        self.max_cost_usd = Some(max_cost_usd);
        self
    }
}

/// Price of a model in dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Dollars per million prompt tokens.
    pub input_per_million: f64,
    /// Dollars per million completion tokens.
    pub output_per_million: f64,
}

impl Price {
    fn nanos(&self, usage: Usage) -> u64 {
        let dollars = usage.prompt_tokens as f64 * self.input_per_million / 1e6
            + usage.completion_tokens as f64 * self.output_per_million / 1e6;
        usd_to_nanos(dollars)
    }
}

/// Nanodollars as dollars. Costs are counted in integer nanodollars (so they add exactly) and
/// shown in dollars; this and [`usd_to_nanos`] are the only conversions, used by budgets and by
/// the runtime's usage reports alike.
///
/// ```
/// use agent_core::budget::{nanos_to_usd, usd_to_nanos};
///
/// assert_eq!(usd_to_nanos(0.25), 250_000_000);
/// assert_eq!(nanos_to_usd(250_000_000), 0.25);
/// assert_eq!(usd_to_nanos(-1.0), 0);
/// assert_eq!(usd_to_nanos(f64::NAN), 0);
/// assert_eq!(usd_to_nanos(1e30), u64::MAX);
/// ```
pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_DOLLAR
}

/// Dollars as nanodollars, rounded to the nearest. Negative and NaN amounts are 0; amounts too
/// large for a `u64` saturate. See [`nanos_to_usd`].
pub fn usd_to_nanos(usd: f64) -> u64 {
    // `as` saturates (and maps NaN to 0), which is the clamping wanted here.
    (usd.max(0.0) * NANOS_PER_DOLLAR).round() as u64
}

/// Prices by model id ([`ChatModel::id`](crate::ChatModel::id)). Models not in the table cost 0.
///
/// An id is looked up as given, then by the name after its last `/` (so `gpt-4o` prices
/// `openai/gpt-4o`, `azure/gpt-4o` and the simulator's `sim/gpt-4o`), then by that name without a
/// `-latest` or date suffix. [`PriceTable::builtin`] holds dated list prices of common models and
/// is what [`Budget::new`] prices with; [`PriceTable::new`] is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

impl PriceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the price of `model`.
    #[must_use]
    pub fn with(
        mut self,
        model: impl Into<String>,
        input_per_million: f64,
        output_per_million: f64,
    ) -> Self {
        self.prices.insert(
            model.into(),
            Price {
                input_per_million,
                output_per_million,
            },
        );
        self
    }

    /// A table of these prices.
    pub(crate) fn from_prices(prices: HashMap<String, Price>) -> Self {
        Self { prices }
    }

    /// The price of `model`, if listed (see the type's docs for how an id is looked up).
    pub fn get(&self, model: &str) -> Option<&Price> {
        crate::prices::lookup(&self.prices, model)
    }

    /// How many models are listed.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// True when no model is listed.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Adds (or replaces) every price of `other`.
    #[must_use]
    pub fn extend(mut self, other: PriceTable) -> Self {
        self.prices.extend(other.prices);
        self
    }

    /// Cost in dollars of `usage` on `model` (0 when the model is not listed).
    pub fn cost_usd(&self, model: &str, usage: Usage) -> f64 {
        nanos_to_usd(self.cost_nanos(model, usage))
    }

    fn cost_nanos(&self, model: &str, usage: Usage) -> u64 {
        self.get(model).map_or(0, |p| p.nanos(usage))
    }
}

/// The dimension a budget ran out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetDimension {
    /// Model calls.
    Calls,
    /// Tokens.
    Tokens,
    /// Dollars.
    Cost,
}

/// A budget refused a charge. Not retryable within this run: raise the budget or stop.
///
/// Its `Display` is the stop text, e.g. `budget exhausted: 40 of 40 model calls`.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{}", describe(self))]
pub struct BudgetExhausted {
    /// Name of the budget node that refused (the chat's own, or an ancestor's). Names need not be
    /// unique; compare [`budget_id`](Self::budget_id) to tell nodes apart.
    pub budget: String,
    /// [`Budget::id`] of the node that refused. `0` when read from a serialized form that predates
    /// the field (no budget has id 0).
    #[serde(default)]
    pub budget_id: u64,
    /// Which cap.
    pub dimension: BudgetDimension,
    /// What had been used (or reserved) when the charge was refused.
    pub used: f64,
    /// The cap.
    pub limit: f64,
}

fn describe(e: &BudgetExhausted) -> String {
    let scope = if e.budget.is_empty() {
        String::new()
    } else {
        format!(" (budget '{}')", e.budget)
    };
    match e.dimension {
        BudgetDimension::Calls => format!(
            "budget exhausted: {} of {} model calls{scope}",
            e.used, e.limit
        ),
        BudgetDimension::Tokens => {
            format!("budget exhausted: {} of {} tokens{scope}", e.used, e.limit)
        }
        BudgetDimension::Cost => {
            format!("budget exhausted: ${:.4} of ${:.4}{scope}", e.used, e.limit)
        }
    }
}

/// What one charge takes from a budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    /// Model calls.
    pub calls: u64,
    /// Tokens.
    pub tokens: u64,
    /// Cost in nanodollars.
    pub cost_nanos: u64,
}

/// What a budget node has spent (settled plus currently reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetUsage {
    /// Model calls.
    pub calls: u64,
    /// Tokens.
    pub tokens: u64,
    /// Dollars.
    pub cost_usd: f64,
}

#[derive(Debug)]
struct Node {
    id: u64,
    name: Arc<str>,
    max_calls: u64,
    max_tokens: u64,
    max_cost_nanos: u64,
    calls: AtomicU64,
    tokens: AtomicU64,
    cost_nanos: AtomicU64,
    parent: Option<Arc<Node>>,
    prices: Arc<PriceTable>,
}

impl Node {
    fn counters(&self) -> [(&AtomicU64, u64, BudgetDimension); 3] {
        [
            (&self.calls, self.max_calls, BudgetDimension::Calls),
            (&self.tokens, self.max_tokens, BudgetDimension::Tokens),
            (&self.cost_nanos, self.max_cost_nanos, BudgetDimension::Cost),
        ]
    }

    fn add(&self, charge: Charge) {
        for (counter, amount) in [
            (&self.calls, charge.calls),
            (&self.tokens, charge.tokens),
            (&self.cost_nanos, charge.cost_nanos),
        ] {
            if amount == 0 {
                continue;
            }
            // Saturating: a restored usage can be arbitrarily large, and must never wrap to 0.
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(amount))
            });
        }
    }

    fn sub(&self, charge: Charge) {
        for (counter, amount) in [
            (&self.calls, charge.calls),
            (&self.tokens, charge.tokens),
            (&self.cost_nanos, charge.cost_nanos),
        ] {
            // Saturating: a refund can never drive a counter below zero.
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(amount))
            });
        }
    }

    /// Adds `charge` if every dimension stays within its cap; otherwise changes nothing.
    fn try_add(&self, charge: Charge) -> Result<(), BudgetExhausted> {
        let amounts = [charge.calls, charge.tokens, charge.cost_nanos];
        for (i, (counter, max, dimension)) in self.counters().into_iter().enumerate() {
            let amount = amounts[i];
            if amount == 0 {
                continue;
            }
            let result = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let next = v.saturating_add(amount);
                (next <= max).then_some(next)
            });
            if let Err(current) = result {
                // Roll back the dimensions already added at this node.
                for (j, (counter, _, _)) in self.counters().into_iter().enumerate().take(i) {
                    counter.fetch_sub(amounts[j], Ordering::AcqRel);
                }
                return Err(self.exhausted(dimension, current));
            }
        }
        Ok(())
    }

    fn exhausted(&self, dimension: BudgetDimension, current: u64) -> BudgetExhausted {
        let (used, limit) = match dimension {
            BudgetDimension::Calls => (current as f64, self.max_calls as f64),
            BudgetDimension::Tokens => (current as f64, self.max_tokens as f64),
            BudgetDimension::Cost => (nanos_to_usd(current), nanos_to_usd(self.max_cost_nanos)),
        };
        BudgetExhausted {
            budget: self.name.to_string(),
            budget_id: self.id,
            dimension,
            used,
            limit,
        }
    }

    fn chain(self: &Arc<Self>) -> impl Iterator<Item = &Arc<Node>> {
        std::iter::successors(Some(self), |n| n.parent.as_ref())
    }
}

/// A budget node: cheap to clone (clones share counters).
///
/// ```
/// use agent_core::{Budget, BudgetLimits, Charge};
///
/// let root = Budget::new("run", BudgetLimits::calls(3));
/// let child = root.child("nested", BudgetLimits::calls(10)); // asks for more than the root has
///
/// let a = child.try_reserve(Charge { calls: 1, ..Charge::default() }).unwrap();
/// a.commit();
/// let b = root.try_reserve(Charge { calls: 2, ..Charge::default() }).unwrap();
/// b.commit();
/// // The root is spent, so the child is too, whatever its own cap says.
/// let err = child.try_reserve(Charge { calls: 1, ..Charge::default() }).unwrap_err();
/// assert_eq!(err.to_string(), "budget exhausted: 3 of 3 model calls (budget 'run')");
/// assert_eq!(root.used().calls, 3);
/// ```
#[derive(Debug, Clone)]
pub struct Budget {
    node: Arc<Node>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::unlimited()
    }
}

fn to_cap(limit: Option<u64>) -> u64 {
    limit.unwrap_or(u64::MAX)
}

fn cost_cap(limit: Option<f64>) -> u64 {
    match limit {
        Some(usd) if usd.is_finite() => usd_to_nanos(usd),
        _ => u64::MAX,
    }
}

impl Budget {
    /// A root budget with no caps.
    pub fn unlimited() -> Self {
        Self::new("", BudgetLimits::UNLIMITED)
    }

    /// A root budget named `name` with `limits`, pricing usage with the built-in dated table
    /// ([`PriceTable::builtin`]); models it does not list cost 0.
    pub fn new(name: impl Into<Arc<str>>, limits: BudgetLimits) -> Self {
        Self::node(name.into(), limits, None, PriceTable::builtin_shared())
    }

    /// A root budget that prices usage with `prices`.
    pub fn with_prices(
        name: impl Into<Arc<str>>,
        limits: BudgetLimits,
        prices: PriceTable,
    ) -> Self {
        Self::node(name.into(), limits, None, Arc::new(prices))
    }

    fn node(
        name: Arc<str>,
        limits: BudgetLimits,
        parent: Option<Arc<Node>>,
        prices: Arc<PriceTable>,
    ) -> Self {
        // Ids start at 1 so that 0 can mean "unknown" in deserialized errors.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Budget {
            node: Arc::new(Node {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                name,
                max_calls: to_cap(limits.max_calls),
                max_tokens: to_cap(limits.max_tokens),
                max_cost_nanos: cost_cap(limits.max_cost_usd),
                calls: AtomicU64::new(0),
                tokens: AtomicU64::new(0),
                cost_nanos: AtomicU64::new(0),
                parent,
                prices,
            }),
        }
    }

    /// A child budget: its own caps, **and** every charge also charged to `self` and its
    /// ancestors. What the child leaves unused was never taken from the parent.
    pub fn child(&self, name: impl Into<Arc<str>>, limits: BudgetLimits) -> Budget {
        Self::node(
            name.into(),
            limits,
            Some(self.node.clone()),
            self.node.prices.clone(),
        )
    }

    /// The node's name (not necessarily unique).
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// The node's identity: unique among the budgets of this process (clones share it), and what
    /// [`BudgetExhausted::budget_id`] refers to. Compare ids, not names, to ask whether a refusal
    /// came from a given node.
    ///
    /// ```
    /// use agent_core::{Budget, BudgetLimits, Charge};
    ///
    /// let outer = Budget::new("research", BudgetLimits::calls(1));
    /// let inner = outer.child("research", BudgetLimits::UNLIMITED);
    /// assert_ne!(outer.id(), inner.id());
    /// assert_eq!(inner.clone().id(), inner.id());
    /// inner.try_reserve(Charge { calls: 1, ..Charge::default() }).unwrap().commit();
    /// let err = inner.try_reserve(Charge { calls: 1, ..Charge::default() }).unwrap_err();
    /// assert_eq!(err.budget_id, outer.id()); // same name, but the outer node refused
    /// ```
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// The node's own caps.
    pub fn limits(&self) -> BudgetLimits {
        let n = &self.node;
        BudgetLimits {
            max_calls: (n.max_calls != u64::MAX).then_some(n.max_calls),
            max_tokens: (n.max_tokens != u64::MAX).then_some(n.max_tokens),
            max_cost_usd: (n.max_cost_nanos != u64::MAX).then_some(nanos_to_usd(n.max_cost_nanos)),
        }
    }

    /// The price table used for cost.
    pub fn prices(&self) -> &PriceTable {
        &self.node.prices
    }

    /// Cost in nanodollars of `usage` on `model`, by this budget's price table.
    pub fn cost_nanos(&self, model: &str, usage: Usage) -> u64 {
        self.node.prices.cost_nanos(model, usage)
    }

    /// What this node has used (including reservations in flight).
    pub fn used(&self) -> BudgetUsage {
        let n = &self.node;
        BudgetUsage {
            calls: n.calls.load(Ordering::Acquire),
            tokens: n.tokens.load(Ordering::Acquire),
            cost_usd: nanos_to_usd(n.cost_nanos.load(Ordering::Acquire)),
        }
    }

    /// Raises this node's usage to `usage` and charges the difference to every ancestor, ignoring
    /// caps (usage that really happened is always recorded). This is how a chat restored from a
    /// saved state keeps spending from what it had already spent before a restart.
    ///
    /// - Only what is missing is added, so restoring the same usage twice (or a usage the node
    ///   has already reached) changes nothing, and usage is never lowered.
    /// - The ancestors are those of **this** tree: a child restored under a fresh parent charges
    ///   the parent too, keeping every parent's usage at least the sum of its children's. Restore
    ///   each saved node once, at the node it was saved from; do not also restore the same usage
    ///   into a parent, or the parent counts it twice.
    /// - Call it before the budget is in use; concurrent charges are kept, but the raise is
    ///   computed from the usage at the time of the call.
    ///
    /// ```
    /// use agent_core::{Budget, BudgetLimits, BudgetUsage, Charge};
    ///
    /// let root = Budget::new("process", BudgetLimits::UNLIMITED);
    /// let chat = root.child("chat", BudgetLimits::calls(5));
    /// let saved = BudgetUsage { calls: 3, tokens: 120, cost_usd: 0.0 };
    /// chat.restore_used(saved);
    /// chat.restore_used(saved); // idempotent
    /// assert_eq!(chat.used(), saved);
    /// assert_eq!(root.used().calls, 3);
    /// assert_eq!(chat.remaining_calls(), 2);
    /// ```
    pub fn restore_used(&self, usage: BudgetUsage) {
        let n = &self.node;
        let missing = Charge {
            calls: usage.calls.saturating_sub(n.calls.load(Ordering::Acquire)),
            tokens: usage
                .tokens
                .saturating_sub(n.tokens.load(Ordering::Acquire)),
            cost_nanos: usd_to_nanos(usage.cost_usd)
                .saturating_sub(n.cost_nanos.load(Ordering::Acquire)),
        };
        for node in self.node.chain() {
            node.add(missing);
        }
    }

    /// Model calls still allowed here, counting every ancestor's cap (`u64::MAX` if unlimited).
    pub fn remaining_calls(&self) -> u64 {
        self.node
            .chain()
            .map(|n| n.max_calls.saturating_sub(n.calls.load(Ordering::Acquire)))
            .min()
            .unwrap_or(0)
    }

    /// Tokens still allowed here, counting every ancestor's cap (`u64::MAX` if unlimited).
    pub fn remaining_tokens(&self) -> u64 {
        self.node
            .chain()
            .map(|n| {
                n.max_tokens
                    .saturating_sub(n.tokens.load(Ordering::Acquire))
            })
            .min()
            .unwrap_or(0)
    }

    /// Checks whether `charge` fits here and in every ancestor without taking it.
    pub fn check(&self, charge: Charge) -> Result<(), BudgetExhausted> {
        for n in self.node.chain() {
            for ((counter, max, dimension), amount) in
                n.counters()
                    .into_iter()
                    .zip([charge.calls, charge.tokens, charge.cost_nanos])
            {
                let current = counter.load(Ordering::Acquire);
                if amount > 0 && current.saturating_add(amount) > max {
                    return Err(n.exhausted(dimension, current));
                }
            }
        }
        Ok(())
    }

    /// Takes `charge` from this node and every ancestor, or nothing if any cap would be crossed.
    pub fn try_reserve(&self, charge: Charge) -> Result<Reservation, BudgetExhausted> {
        // Walks the chain twice on failure rather than collecting it: no allocation per call.
        for (i, node) in self.node.chain().enumerate() {
            if let Err(e) = node.try_add(charge) {
                for done in self.node.chain().take(i) {
                    done.sub(charge);
                }
                return Err(e);
            }
        }
        Ok(Reservation {
            budget: self.clone(),
            reserved: charge,
            done: false,
        })
    }

    fn adjust(&self, from: Charge, to: Charge) {
        let up = Charge {
            calls: to.calls.saturating_sub(from.calls),
            tokens: to.tokens.saturating_sub(from.tokens),
            cost_nanos: to.cost_nanos.saturating_sub(from.cost_nanos),
        };
        let down = Charge {
            calls: from.calls.saturating_sub(to.calls),
            tokens: from.tokens.saturating_sub(to.tokens),
            cost_nanos: from.cost_nanos.saturating_sub(to.cost_nanos),
        };
        for n in self.node.chain() {
            n.add(up);
            n.sub(down);
        }
    }
}

/// A charge taken by [`Budget::try_reserve`]. Settle it with the actual usage, commit it as is, or
/// drop it to give everything back.
#[derive(Debug)]
#[must_use = "dropping a reservation refunds it"]
pub struct Reservation {
    budget: Budget,
    reserved: Charge,
    done: bool,
}

impl Reservation {
    /// What is currently reserved.
    pub fn reserved(&self) -> Charge {
        self.reserved
    }

    /// The budget charged.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Replaces the reservation with `actual` (which may be more than reserved: usage that really
    /// happened is always recorded, and the next reservation then fails).
    pub fn settle(mut self, actual: Charge) {
        self.budget.adjust(self.reserved, actual);
        self.done = true;
    }

    /// Keeps the reservation as the final charge.
    pub fn commit(mut self) {
        self.done = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.budget.adjust(self.reserved, Charge::default());
        }
    }
}

impl fmt::Display for BudgetUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls, {} tokens, ${:.4}",
            self.calls, self.tokens, self.cost_usd
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calls(n: u64) -> Charge {
        Charge {
            calls: n,
            ..Charge::default()
        }
    }

    #[test]
    fn failed_reserve_changes_nothing_anywhere() {
        let root = Budget::new("root", BudgetLimits::calls(10).with_max_tokens(100));
        let child = root.child("child", BudgetLimits::calls(5));
        let r = child
            .try_reserve(Charge {
                calls: 1,
                tokens: 90,
                cost_nanos: 0,
            })
            .unwrap();
        r.commit();
        let err = child
            .try_reserve(Charge {
                calls: 1,
                tokens: 20,
                cost_nanos: 0,
            })
            .unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::Tokens);
        assert_eq!(err.budget, "root");
        assert_eq!(
            child.used(),
            BudgetUsage {
                calls: 1,
                tokens: 90,
                cost_usd: 0.0
            }
        );
        assert_eq!(
            root.used(),
            BudgetUsage {
                calls: 1,
                tokens: 90,
                cost_usd: 0.0
            }
        );
    }

    #[test]
    fn settle_refunds_and_overcharges_along_the_chain() {
        let root = Budget::new("root", BudgetLimits::UNLIMITED.with_max_tokens(1000));
        let child = root.child("child", BudgetLimits::UNLIMITED);
        let r = child
            .try_reserve(Charge {
                calls: 1,
                tokens: 500,
                cost_nanos: 0,
            })
            .unwrap();
        assert_eq!(root.remaining_tokens(), 500);
        r.settle(Charge {
            calls: 1,
            tokens: 120,
            cost_nanos: 0,
        });
        assert_eq!(root.used().tokens, 120);
        assert_eq!(child.remaining_tokens(), 880);
        let r = child
            .try_reserve(Charge {
                calls: 1,
                tokens: 100,
                cost_nanos: 0,
            })
            .unwrap();
        r.settle(Charge {
            calls: 1,
            tokens: 950,
            cost_nanos: 0,
        });
        assert_eq!(root.used().tokens, 1070);
        assert_eq!(root.remaining_tokens(), 0);
        assert!(
            child
                .try_reserve(Charge {
                    calls: 1,
                    tokens: 1,
                    cost_nanos: 0
                })
                .is_err()
        );
    }

    #[test]
    fn dropped_reservation_is_refunded() {
        let b = Budget::new("b", BudgetLimits::calls(1));
        {
            let _r = b.try_reserve(calls(1)).unwrap();
            assert!(b.try_reserve(calls(1)).is_err());
        }
        assert_eq!(b.used().calls, 0);
        b.try_reserve(calls(1)).unwrap().commit();
        assert_eq!(b.used().calls, 1);
    }

    #[test]
    fn cost_is_priced_by_model() {
        let prices = PriceTable::new().with("m", 1.0, 2.0);
        let b = Budget::with_prices(
            "b",
            BudgetLimits::UNLIMITED.with_max_cost_usd(0.003),
            prices,
        );
        let nanos = b.cost_nanos("m", Usage::new(1000, 500)); // $0.001 + $0.001
        assert_eq!(nanos, 2_000_000);
        b.try_reserve(Charge {
            calls: 1,
            tokens: 0,
            cost_nanos: nanos,
        })
        .unwrap()
        .commit();
        let err = b
            .try_reserve(Charge {
                calls: 1,
                tokens: 0,
                cost_nanos: nanos,
            })
            .unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::Cost);
        assert!(
            err.to_string()
                .starts_with("budget exhausted: $0.0020 of $0.0030"),
            "{err}"
        );
        assert_eq!(b.cost_nanos("unknown", Usage::new(1000, 1000)), 0);
    }

    proptest! {
        /// Budgets are conserved: however charges are spread over a tree, no node's usage exceeds
        /// its cap, and every parent's usage is the sum of its own and its children's charges.
        #[test]
        fn children_never_exceed_parent(
            root_cap in 0u64..30,
            caps in proptest::collection::vec(0u64..20, 1..4),
            ops in proptest::collection::vec((0usize..4, 1u64..4, any::<bool>()), 0..80),
        ) {
            let root = Budget::new("root", BudgetLimits::calls(root_cap));
            let children: Vec<Budget> = caps.iter().map(|c| root.child("c", BudgetLimits::calls(*c))).collect();
            let mut direct = 0u64;
            for (who, n, keep) in ops {
                let target = if who < children.len() { &children[who] } else { &root };
                if let Ok(r) = target.try_reserve(calls(n)) {
                    if keep { r.commit(); if who >= children.len() { direct += n; } } else { drop(r); }
                }
            }
            let child_sum: u64 = children.iter().map(|c| c.used().calls).sum();
            prop_assert!(root.used().calls <= root_cap);
            for (c, cap) in children.iter().zip(&caps) {
                prop_assert!(c.used().calls <= *cap);
            }
            prop_assert_eq!(root.used().calls, child_sum + direct);
        }
    }
}
