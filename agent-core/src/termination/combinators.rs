//! AND/OR composition of termination conditions: the [`And`] and [`Or`] types, the
//! [`TerminationExt`] methods that build them, and the `&` / `|` operators.
//!
//! Composition is flat: `a & b & c` is one [`And`] with three children, whichever way it was
//! written (`a.and(b).and(c)`, `(a & b) & (c & d)`), so a check walks one vector and the joined
//! reason lists every child once.

use std::any::Any;
use std::fmt;
use std::ops::{BitAnd, BitOr};

use super::conditions::{
    External, Functional, HandoffTo, MaxMessages, SourceMatch, StopMessage, TextMention,
    TextMessageFrom, Timeout, TokenUsage, ToolExecuted,
};
use super::{StopReason, Termination};
use crate::message::Message;

/// `.and(..)` and `.or(..)` for every termination condition, built-in or your own.
///
/// The built-in conditions (and [`And`]/[`Or`]) also support `&` and `|`; a condition of your own
/// gets the operators after its first `.and(..)`/`.or(..)`, since the result is an [`And`]/[`Or`].
///
/// ```
/// use agent_core::Message;
/// use agent_core::termination::{MaxMessages, SourceMatch, TerminationExt, Termination};
///
/// // Stop when the critic has spoken AND at least 4 messages were seen.
/// let mut stop = SourceMatch::new(["critic"]).and(MaxMessages::new(4));
/// assert!(stop.check(&[Message::user("task"), Message::assistant("critic", "hm")]).is_none());
/// let reason = stop.check(&[Message::assistant("writer", "v2"), Message::assistant("b", "ok")]);
/// assert_eq!(
///     reason.unwrap().to_string(),
///     "'critic' answered, Maximum number of messages 4 reached, current message count: 4"
/// );
/// ```
pub trait TerminationExt: Termination + Sized + 'static {
    /// Terminated when **both** are; see [`And`].
    fn and<T: Termination + 'static>(self, other: T) -> And {
        let mut and = And::flatten(self);
        and.absorb(And::flatten(other));
        and
    }

    /// Terminated when **either** is; see [`Or`].
    fn or<T: Termination + 'static>(self, other: T) -> Or {
        let mut or = Or::flatten(self);
        or.children.extend(Or::flatten(other).children);
        or
    }
}

impl<T: Termination + 'static> TerminationExt for T {}

/// Takes the value out of `slot` (an `Option<T>`) when `T` is `U`. Lets `and`/`or` splice an
/// existing [`And`]/[`Or`] into a flat list without specialization.
fn take_as<U: 'static>(slot: &mut dyn Any) -> Option<U> {
    slot.downcast_mut::<Option<U>>()?.take()
}

/// One child of an [`And`], with whether it has fired (so it is never asked again).
struct AndChild {
    condition: Box<dyn Termination>,
    fired: bool,
}

/// Terminated when **all** children have terminated (AutoGen's `AndTerminationCondition`).
///
/// Each check asks only the children that have not fired yet, all of them (so their counters
/// advance). A child that fired is remembered and **not asked again**; its reason is kept. When
/// the last child fires, the reasons of all children, in the order they fired, are joined into one
/// [`StopReason::Combined`] (its text joins them with `", "`). `reset` resets every child and
/// forgets which fired. A terminated `And` returns its reason again until reset.
///
/// Built with [`TerminationExt::and`] or `&`.
pub struct And {
    children: Vec<AndChild>,
    /// Reasons of fired children, in firing order.
    reasons: Vec<StopReason>,
    fired: Option<StopReason>,
}

impl And {
    fn flatten<T: Termination + 'static>(condition: T) -> And {
        let mut slot = Some(condition);
        if let Some(and) = take_as::<And>(&mut slot) {
            return and;
        }
        And {
            children: slot
                .into_iter()
                .map(|c| AndChild {
                    condition: Box::new(c),
                    fired: false,
                })
                .collect(),
            reasons: Vec::new(),
            fired: None,
        }
    }

    /// Appends `other`'s children, keeping what each has already fired. The result is not
    /// terminated until its next check, even if every child had fired.
    fn absorb(&mut self, other: And) {
        self.children.extend(other.children);
        self.reasons.extend(other.reasons);
        self.fired = None;
    }
}

impl Termination for And {
    fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
        if let Some(reason) = &self.fired {
            return Some(reason.clone());
        }
        let mut all_fired = true;
        for child in self.children.iter_mut().filter(|c| !c.fired) {
            match child.condition.check(delta) {
                Some(reason) => {
                    child.fired = true;
                    self.reasons.push(reason);
                }
                None => all_fired = false,
            }
        }
        if !all_fired {
            return None;
        }
        let reason = StopReason::combine(self.reasons.clone())?;
        self.fired = Some(reason.clone());
        Some(reason)
    }

    fn is_terminated(&self) -> bool {
        self.fired.is_some()
    }

    fn reset(&mut self) {
        for child in &mut self.children {
            child.condition.reset();
            child.fired = false;
        }
        self.reasons.clear();
        self.fired = None;
    }
}

impl fmt::Debug for And {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("And")
            .field("children", &self.children.len())
            .field("fired_children", &self.reasons)
            .field("fired", &self.fired)
            .finish()
    }
}

/// Terminated when **any** child has terminated (AutoGen's `OrTerminationCondition`).
///
/// Each check asks **every** child, even after one has fired in the same call, so stateful
/// children (counters, token sums) stay in step. The reasons of all children that fired in that
/// call are joined into one [`StopReason::Combined`] (one reason stays itself). `reset` resets
/// every child. A terminated `Or` returns its reason again until reset.
///
/// Built with [`TerminationExt::or`] or `|`.
pub struct Or {
    children: Vec<Box<dyn Termination>>,
    fired: Option<StopReason>,
}

impl Or {
    fn flatten<T: Termination + 'static>(condition: T) -> Or {
        let mut slot = Some(condition);
        if let Some(mut or) = take_as::<Or>(&mut slot) {
            // A terminated child answers its latched reason at the next check, so the merged
            // condition fires again then.
            or.fired = None;
            return or;
        }
        Or {
            children: slot
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Termination>)
                .collect(),
            fired: None,
        }
    }
}

impl Termination for Or {
    fn check(&mut self, delta: &[Message]) -> Option<StopReason> {
        if let Some(reason) = &self.fired {
            return Some(reason.clone());
        }
        // `Vec::new` does not allocate: the non-firing path stays allocation-free.
        let mut hits = Vec::new();
        for child in &mut self.children {
            if let Some(reason) = child.check(delta) {
                hits.push(reason);
            }
        }
        let reason = StopReason::combine(hits)?;
        self.fired = Some(reason.clone());
        Some(reason)
    }

    fn is_terminated(&self) -> bool {
        self.fired.is_some()
    }

    fn reset(&mut self) {
        for child in &mut self.children {
            child.reset();
        }
        self.fired = None;
    }

    /// Any child's exits: `a | b` stops wherever either does. (`And` keeps the default, none: a
    /// handoff alone does not stop it.)
    fn handoff_exits(&self) -> Vec<String> {
        self.children
            .iter()
            .flat_map(|c| c.handoff_exits())
            .collect()
    }
}

impl fmt::Debug for Or {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Or")
            .field("children", &self.children.len())
            .field("fired", &self.fired)
            .finish()
    }
}

/// `&` and `|` for the built-in conditions; both forward to [`TerminationExt`].
macro_rules! operators {
    ($($ty:ty),+ $(,)?) => {$(
        impl<R: Termination + 'static> BitAnd<R> for $ty {
            type Output = And;
            fn bitand(self, rhs: R) -> And {
                TerminationExt::and(self, rhs)
            }
        }

        impl<R: Termination + 'static> BitOr<R> for $ty {
            type Output = Or;
            fn bitor(self, rhs: R) -> Or {
                TerminationExt::or(self, rhs)
            }
        }
    )+};
}

operators!(
    And,
    Or,
    MaxMessages,
    TextMention,
    TokenUsage,
    Timeout,
    External,
    SourceMatch,
    HandoffTo,
    StopMessage,
    ToolExecuted,
    TextMessageFrom,
    Functional,
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::time::Duration;

    use super::*;
    use crate::termination::TerminationConfigError;

    /// Fires on its `fire_at`-th check since the last reset and counts every time it is asked.
    #[derive(Debug)]
    struct Probe {
        name: &'static str,
        fire_at: usize,
        seen: usize,
        asked: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        fired: Option<StopReason>,
    }

    impl Probe {
        fn new(name: &'static str, fire_at: usize) -> (Self, Arc<AtomicUsize>) {
            let asked = Arc::new(AtomicUsize::new(0));
            let probe = Self {
                name,
                fire_at,
                seen: 0,
                asked: Arc::clone(&asked),
                resets: Arc::new(AtomicUsize::new(0)),
                fired: None,
            };
            (probe, asked)
        }
    }

    impl Termination for Probe {
        fn check(&mut self, _delta: &[Message]) -> Option<StopReason> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            if self.fired.is_some() {
                return self.fired.clone();
            }
            self.seen += 1;
            if self.seen >= self.fire_at {
                self.fired = Some(StopReason::Custom(self.name.to_owned()));
            }
            self.fired.clone()
        }
        fn is_terminated(&self) -> bool {
            self.fired.is_some()
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::Relaxed);
            self.seen = 0;
            self.fired = None;
        }
    }

    operators!(Probe);

    fn custom(name: &str) -> StopReason {
        StopReason::Custom(name.to_owned())
    }

    fn asked(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn and_remembers_fired_children_and_does_not_ask_them_again() {
        let (a, a_asked) = Probe::new("A", 1);
        let (b, b_asked) = Probe::new("B", 3);
        let mut both = a.and(b);

        assert_eq!(both.check(&[]), None, "call 1: only A fired");
        assert_eq!(both.check(&[]), None, "call 2: B still counting");
        assert_eq!(
            both.check(&[]),
            Some(StopReason::Combined(vec![custom("A"), custom("B")])),
            "call 3: B fired, A's reason remembered"
        );
        assert_eq!(asked(&a_asked), 1, "A was asked once, in call 1");
        assert_eq!(asked(&b_asked), 3);
        assert!(both.is_terminated());

        // Re-asked after terminating: same reason, no child asked.
        assert_eq!(
            both.check(&[]),
            Some(StopReason::Combined(vec![custom("A"), custom("B")]))
        );
        assert_eq!((asked(&a_asked), asked(&b_asked)), (1, 3));
    }

    #[test]
    fn and_joins_reasons_in_firing_order() {
        let (early, _) = Probe::new("early", 1);
        let (late, _) = Probe::new("late", 2);
        // `late` is listed first but fires second.
        let mut all = late & MaxMessages::new(1) & early;
        assert_eq!(
            all.check(&[Message::user("t")]),
            None,
            "call 1: late has not fired"
        );
        let reason = all.check(&[]).unwrap();
        assert_eq!(
            reason,
            StopReason::Combined(vec![
                StopReason::MaxMessages { max: 1, count: 1 },
                custom("early"),
                custom("late"),
            ])
        );
        assert_eq!(
            reason.to_string(),
            "Maximum number of messages 1 reached, current message count: 1, early, late"
        );
    }

    #[test]
    fn and_reset_resets_children_and_forgets_what_fired() {
        let (a, a_asked) = Probe::new("A", 1);
        let (b, _) = Probe::new("B", 2);
        let mut both = a & b;
        assert_eq!(both.check(&[]), None);
        both.reset();
        assert!(!both.is_terminated());
        // A must be asked (and fire) again; B counts from zero again.
        assert_eq!(both.check(&[]), None);
        assert_eq!(asked(&a_asked), 2);
        assert!(both.check(&[]).is_some());
    }

    #[test]
    fn or_asks_every_child_even_when_one_fires() {
        let (counter, counter_asked) = Probe::new("counter", 2);
        let mut either = TextMention::new("STOP") | counter;
        assert_eq!(either.check(&[Message::user("go")]), None);
        let reason = either.check(&[Message::user("STOP")]).unwrap();
        // Both fired in the same call: the counter was asked and advanced.
        assert_eq!(asked(&counter_asked), 2);
        assert_eq!(
            reason,
            StopReason::Combined(vec![
                StopReason::TextMention {
                    text: "STOP".into()
                },
                custom("counter"),
            ])
        );
        assert_eq!(reason.to_string(), "Text 'STOP' mentioned, counter");
    }

    #[test]
    fn or_with_one_hit_gives_that_reason_alone() {
        let mut either = MaxMessages::new(5) | TextMention::new("TERMINATE");
        assert_eq!(either.check(&[Message::user("t")]), None);
        assert_eq!(
            either.check(&[Message::assistant("a", "TERMINATE")]),
            Some(StopReason::TextMention {
                text: "TERMINATE".into()
            })
        );
    }

    #[test]
    fn or_reset_resets_every_child_and_reask_asks_none() {
        let (a, a_asked) = Probe::new("A", 2);
        let (b, b_asked) = Probe::new("B", 1);
        let (a_resets, b_resets) = (Arc::clone(&a.resets), Arc::clone(&b.resets));
        let mut either = a.or(b);
        assert_eq!(either.check(&[]), Some(custom("B")));
        assert_eq!(either.check(&[]), Some(custom("B")));
        assert_eq!(
            (asked(&a_asked), asked(&b_asked)),
            (1, 1),
            "re-ask asked nobody"
        );
        either.reset();
        assert!(!either.is_terminated());
        assert_eq!((asked(&a_resets), asked(&b_resets)), (1, 1));

        // A reset child's state is really gone: the message count starts again.
        let mut max = MaxMessages::new(2) | StopMessage::new();
        assert_eq!(max.check(&[Message::user("1")]), None);
        max.reset();
        assert_eq!(max.check(&[Message::user("1")]), None, "count restarted");
        assert!(max.check(&[Message::user("2")]).is_some());
    }

    #[test]
    fn composition_is_flat() {
        let (a, _) = Probe::new("A", 1);
        let (b, _) = Probe::new("B", 1);
        let (c, _) = Probe::new("C", 1);
        let (d, _) = Probe::new("D", 1);
        let chained = MaxMessages::new(1) & StopMessage::new() & ToolExecuted::new("f");
        assert_eq!(chained.children.len(), 3);
        let grouped = (a & b).and(c.and(d));
        assert_eq!(grouped.children.len(), 4);
        let or = MaxMessages::new(1)
            | StopMessage::new()
            | (External::new() | Timeout::new(Duration::ZERO));
        assert_eq!(or.children.len(), 4);
        // Mixed: an Or inside an And stays one child.
        let mixed = (MaxMessages::new(1) | StopMessage::new()) & TextMention::new("x");
        assert_eq!(mixed.children.len(), 2);
    }

    #[test]
    fn merging_an_and_keeps_what_its_children_fired() {
        let (a, a_asked) = Probe::new("A", 1);
        let (b, _) = Probe::new("B", 1);
        let (c, _) = Probe::new("C", 2);
        let mut ab = a & b;
        let ab_reason = ab.check(&[]);
        assert_eq!(
            ab_reason,
            Some(StopReason::Combined(vec![custom("A"), custom("B")]))
        );
        let mut abc = ab & c;
        assert!(!abc.is_terminated(), "a new child has not fired");
        assert_eq!(abc.check(&[]), None);
        assert_eq!(
            abc.check(&[]),
            Some(StopReason::Combined(vec![
                custom("A"),
                custom("B"),
                custom("C")
            ]))
        );
        assert_eq!(asked(&a_asked), 1, "A was never asked again");
    }

    #[test]
    fn nested_and_inside_or_keeps_its_memory() {
        let (a, a_asked) = Probe::new("A", 1);
        let (b, _) = Probe::new("B", 3);
        let mut stop = (a & b) | StopMessage::new();
        assert_eq!(stop.check(&[]), None);
        assert_eq!(stop.check(&[]), None);
        assert_eq!(
            stop.check(&[Message::stop("x", "bye")]),
            Some(StopReason::Combined(vec![
                custom("A"),
                custom("B"),
                StopReason::StopMessage
            ])),
            "combine flattens the AND's reasons into the OR's"
        );
        assert_eq!(asked(&a_asked), 1);
    }

    #[test]
    fn boxed_and_user_conditions_compose() -> Result<(), TerminationConfigError> {
        let boxed: Box<dyn Termination> = Box::new(TokenUsage::builder().max_total(1).build()?);
        let (probe, _) = Probe::new("P", 1);
        let mut stop = probe.and(boxed) | Functional::new(|_: &[Message]| false);
        let reason =
            stop.check(&[Message::assistant("a", "x").with_usage(crate::Usage::new(1, 0))]);
        assert_eq!(
            reason,
            Some(StopReason::Combined(vec![
                custom("P"),
                StopReason::TokenUsage {
                    total: 1,
                    prompt: 1,
                    completion: 0
                }
            ]))
        );
        Ok(())
    }

    #[test]
    fn combinators_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<And>();
        assert_send_sync::<Or>();
    }

    #[test]
    fn handoff_exits_are_the_union_under_or_and_none_under_and() {
        let user = HandoffTo::new("user");
        assert_eq!(user.handoff_exits(), vec!["user".to_owned()]);
        let either = HandoffTo::new("user")
            .or(HandoffTo::new("admin"))
            .or(StopMessage::new());
        assert_eq!(
            either.handoff_exits(),
            vec!["user".to_owned(), "admin".to_owned()]
        );
        let both = HandoffTo::new("user").and(MaxMessages::new(3));
        assert!(both.handoff_exits().is_empty());
        let boxed: Box<dyn Termination> = Box::new(HandoffTo::new("user"));
        assert_eq!(boxed.handoff_exits(), vec!["user".to_owned()]);
    }
}
