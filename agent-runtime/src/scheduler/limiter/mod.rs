//! The limiter kinds admission can reproduce, one module each, behind the one [`Meter`] the key
//! state calls: [`bucket`] (continuous refill, OpenAI/Anthropic), [`fixed_window`] (LiteLLM and
//! most gateways) and [`sliding_log`] (strict "at most `limit` in any `period`").
//!
//! Every kind answers the same questions with time passed in — what is left, how long until a
//! cost fits, take, give back, lower to what the provider reports — so `state.rs` never branches
//! on the kind. A new kind is a new module and one more arm in [`Meter`]'s dispatch.

pub(crate) mod bucket;
pub(crate) mod fixed_window;
pub(crate) mod sliding_log;

use std::time::Duration;

use tokio::time::Instant;

use super::quota::{Limiter, Rate};
use bucket::Bucket;
use fixed_window::FixedWindow;
use sliding_log::SlidingLog;

/// One limit's counter, of whichever kind its [`Rate::limiter`] names.
#[derive(Debug, Clone)]
pub(crate) enum Meter {
    Bucket(Bucket),
    Fixed(FixedWindow),
    Sliding(SlidingLog),
}

macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Meter::Bucket($m) => $body,
            Meter::Fixed($m) => $body,
            Meter::Sliding($m) => $body,
        }
    };
}

impl Meter {
    /// A meter for `rate` at `now`; a bucket starts full unless `full` is false (windows always
    /// start with their whole allowance: a provider's window does too).
    pub(crate) fn new(rate: Rate, now: Instant, full: bool) -> Self {
        match rate.limiter {
            Limiter::FixedWindow(start) => Meter::Fixed(FixedWindow::new(rate, start, now)),
            Limiter::SlidingWindow => Meter::Sliding(SlidingLog::new(rate, now)),
            // `Limiter` is non-exhaustive for users; every kind this crate knows is matched above.
            _ => Meter::Bucket(Bucket::new(rate, now, full)),
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        each!(self, m => m.rate())
    }

    /// Brings the meter to `now` (refill, window roll-over, log expiry). Every other method
    /// answers as of the last `refill`.
    pub(crate) fn refill(&mut self, now: Instant) {
        each!(self, m => m.refill(now))
    }

    /// Whole units available now; 0 when in debt.
    pub(crate) fn available(&self) -> u64 {
        each!(self, m => m.available())
    }

    /// How long until `amount` fits (zero if it does now).
    pub(crate) fn wait(&self, amount: u64) -> Duration {
        each!(self, m => m.wait(amount))
    }

    /// Like [`wait`](Self::wait), with `guard` of slack for requests that reach the provider
    /// sooner than the ones before them (see `Quota::guard`).
    pub(crate) fn wait_guarded(&self, amount: u64, guard: Duration) -> Duration {
        each!(self, m => m.wait_guarded(amount, guard))
    }

    pub(crate) fn take(&mut self, amount: u64) {
        each!(self, m => m.take(amount))
    }

    pub(crate) fn give(&mut self, amount: u64) {
        each!(self, m => m.give(amount))
    }

    /// Lowers what is left to `remaining` (never raises it).
    pub(crate) fn tighten_to(&mut self, remaining: u64) {
        each!(self, m => m.tighten_to(remaining))
    }

    /// Lowers what is left so that `amount` fits only after `wait` (a 429's "try again in").
    pub(crate) fn tighten_to_wait(&mut self, amount: u64, wait: Duration) {
        each!(self, m => m.tighten_to_wait(amount, wait))
    }

    /// Lowers what is left to `remaining` as reported `since` ago, brought up to now.
    pub(crate) fn tighten_to_since(&mut self, remaining: u64, since: Duration) {
        each!(self, m => m.tighten_to_since(remaining, since))
    }

    /// Nothing is left until the meter has recovered on its own: a bucket empties (no burst
    /// from refill it did not earn), a window closes until its boundary.
    pub(crate) fn drain(&mut self) {
        self.tighten_to(0);
    }

    /// Gives up `by` of refill: a bucket's balance drops by what it refills in `by` (possibly
    /// into debt). Windows have no refill to give up.
    pub(crate) fn lag(&mut self, by: Duration) {
        if let Meter::Bucket(b) = self {
            b.lag(by);
        }
    }

    /// Changes the limit or period; a change of kind starts a fresh meter that keeps no more
    /// than what the old one had left.
    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        if self.rate().limiter == rate.limiter {
            return each!(self, m => m.set_rate(rate, now));
        }
        self.refill(now);
        let left = self.available();
        let mut fresh = Meter::new(rate, now, true);
        fresh.refill(now);
        fresh.tighten_to(left);
        *self = fresh;
    }

    /// A fixed window learned to end at `boundary` (a reset header, a probe's success): later
    /// windows start there. Other kinds have no boundary and ignore it.
    pub(crate) fn align(&mut self, boundary: Instant) {
        if let Meter::Fixed(w) = self {
            w.align(boundary);
        }
    }
}

/// Nanoseconds of `d`, saturating.
pub(crate) fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// A duration of `ns` nanoseconds (0 when negative, saturating).
pub(crate) fn from_nanos(ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}
