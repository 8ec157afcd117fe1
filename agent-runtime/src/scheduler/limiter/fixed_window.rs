//! Fixed windows: at most `limit` per window of `period`, the count reset at each boundary.
//!
//! What LiteLLM (per UTC calendar minute), Envoy's rate-limit service and CrewAI count. A client
//! whose bucket refills continuously against such a limiter releases a burst into a window that
//! is still closed; this meter instead keeps the window's count and opens again exactly at the
//! boundary.
//!
//! Boundaries are `anchor + k·period` for any integer `k`; the anchor is a clock boundary (the
//! epoch, mapped to the tokio clock once), the first request of a window, or a boundary learned
//! from the provider ([`FixedWindow::align`]).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{from_nanos, nanos};
use crate::scheduler::quota::{Rate, WindowStart};
use crate::scheduler::state::instant_after;

/// One fixed-window counter.
#[derive(Debug, Clone)]
pub(crate) struct FixedWindow {
    rate: Rate,
    start: WindowStart,
    /// A window boundary.
    anchor: Instant,
    /// `FirstRequest` windows: false between windows, until the next request opens one.
    open: bool,
    /// The window `used` counts (index from `anchor`).
    window: i128,
    /// Units taken in `window`; may exceed the limit (usage above a reservation).
    used: u64,
    /// Units taken in `window` within [`boundary_band`] of its end: sent that close to a
    /// boundary, the provider may count them in the next window (its clock, the network), so
    /// the next window starts with them counted too.
    carry: u64,
    /// The window of the last take, so a refund never frees a later window.
    taken_in: i128,
    now: Instant,
}

/// Where the epoch's boundaries of `period` fall on the tokio clock: the instant of the next one
/// after `now` (whose wall-clock time is `wall`).
pub(crate) fn next_clock_boundary(now: Instant, wall: SystemTime, period: Duration) -> Instant {
    let since_epoch = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0);
    let period = nanos(period).max(1);
    let to_next = period - since_epoch.rem_euclid(period);
    instant_after(now, from_nanos(to_next))
}

/// How much later than the wall clock's boundary a clock-aligned window opens here: the
/// provider's clock may run a little behind this machine's, and a request must never arrive
/// before the boundary it was sent for (1 % of the period, at most 250 ms).
pub(crate) fn skew_margin(period: Duration) -> Duration {
    (period / 100).min(Duration::from_millis(250))
}

/// How close to a clock window's end a take counts in the next window as well: the skew margin
/// on either side of the provider's boundary. A run that starts just after a boundary (within
/// the margin) would otherwise spend the tail of a window this meter thinks is still open —
/// which the provider counts in its new one — then the whole of the next window again: up to
/// twice the limit into one provider window (the proptest below finds it in a few cases).
pub(crate) fn boundary_band(period: Duration) -> Duration {
    skew_margin(period).saturating_mul(2)
}

impl FixedWindow {
    pub(crate) fn new(rate: Rate, start: WindowStart, now: Instant) -> Self {
        let (anchor, open) = match start {
            WindowStart::FirstRequest => (now, false),
            // `WindowStart` is non-exhaustive for users; `Clock` and any later clock-like kind.
            _ => (
                instant_after(
                    next_clock_boundary(now, SystemTime::now(), rate.period),
                    skew_margin(rate.period),
                ),
                true,
            ),
        };
        let mut w = Self {
            rate,
            start,
            anchor,
            open,
            window: 0,
            used: 0,
            carry: 0,
            taken_in: i128::MIN,
            now,
        };
        w.window = w.index(now);
        w
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    fn period_ns(&self) -> i128 {
        nanos(self.rate.period).max(1)
    }

    /// The window `at` falls in.
    fn index(&self, at: Instant) -> i128 {
        let offset = if at >= self.anchor {
            nanos(at - self.anchor)
        } else {
            -nanos(self.anchor - at)
        };
        offset.div_euclid(self.period_ns())
    }

    /// When the current window ends.
    fn window_end(&self) -> Duration {
        let end = (self.window + 1).saturating_mul(self.period_ns());
        let now = if self.now >= self.anchor {
            nanos(self.now - self.anchor)
        } else {
            -nanos(self.anchor - self.now)
        };
        from_nanos(end - now)
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        if now <= self.now {
            return;
        }
        self.now = now;
        let index = self.index(now);
        if index > self.window {
            // What was taken at the very end of the window just closed may be counted in this
            // one by the provider (see `carry`).
            self.used = if index == self.window + 1 {
                self.carry
            } else {
                0
            };
            self.carry = 0;
            self.window = index;
            if self.start == WindowStart::FirstRequest {
                // The provider opens the next window at the next request, not at this boundary.
                self.open = false;
            }
        }
    }

    pub(crate) fn available(&self) -> u64 {
        self.rate.limit.saturating_sub(self.used)
    }

    pub(crate) fn wait(&self, amount: u64) -> Duration {
        if !self.open || self.used.saturating_add(amount) <= self.rate.limit {
            return Duration::ZERO;
        }
        // Amounts above the limit are refused before they get here (`Limits::exceeded_by`), so
        // the next window fits unless it starts with this one's carry, and the one after always.
        let end = self.window_end();
        if self.carry.saturating_add(amount) <= self.rate.limit {
            end
        } else {
            end.saturating_add(self.rate.period)
        }
    }

    /// A fixed window judges a request by the window it arrives in; boundaries come from the
    /// same clock on both sides, so there is no refill lead for a guard to absorb.
    pub(crate) fn wait_guarded(&self, amount: u64, _guard: Duration) -> Duration {
        self.wait(amount)
    }

    pub(crate) fn take(&mut self, amount: u64) {
        if !self.open {
            self.anchor = self.now;
            self.window = 0;
            self.used = 0;
            self.carry = 0;
            self.open = true;
        }
        self.used = self.used.saturating_add(amount);
        self.taken_in = self.window;
        if self.in_band() {
            self.carry = self.carry.saturating_add(amount);
        }
    }

    /// Whether now is within the boundary band at this window's end, where what happens may
    /// belong to the provider's next window. A window opened by its first request has no
    /// boundary to straddle.
    fn in_band(&self) -> bool {
        self.start != WindowStart::FirstRequest
            && self.window_end() <= boundary_band(self.rate.period)
    }

    pub(crate) fn give(&mut self, amount: u64) {
        if self.taken_in == self.window {
            self.used = self.used.saturating_sub(amount);
            self.carry = self.carry.min(self.used);
        }
    }

    pub(crate) fn tighten_to(&mut self, remaining: u64) {
        if !self.open {
            // A report between windows describes a window this meter has not opened: it opens
            // now with that count.
            self.take(0);
        }
        self.used = self.used.max(self.rate.limit.saturating_sub(remaining));
        // A report this close to the boundary may describe the provider's next window: it
        // stands for that one too (a window another client spent, a 429 at the boundary).
        if self.in_band() {
            self.carry = self.carry.max(self.used);
        }
    }

    pub(crate) fn tighten_to_since(&mut self, remaining: u64, since: Duration) {
        // A report from before this window's start says nothing about this window.
        let reported_at = self.now.checked_sub(since).unwrap_or(self.now);
        if self.index(reported_at) == self.window {
            self.tighten_to(remaining);
        }
    }

    pub(crate) fn tighten_to_wait(&mut self, amount: u64, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        // "Not before `wait`": closed for the rest of this window when that reaches past it;
        // a shorter wait within the window is the key's pause.
        if wait >= self.window_end() || self.used.saturating_add(amount) > self.rate.limit {
            self.tighten_to(0);
        }
    }

    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.window = self.index(self.now);
    }

    /// Later windows start at `boundary` (learned from the provider); the current count stays.
    pub(crate) fn align(&mut self, boundary: Instant) {
        self.anchor = boundary;
        self.open = true;
        self.window = self.index(self.now);
        self.taken_in = self.window;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::quota::Limiter;
    use proptest::prelude::*;

    fn rate(limit: u64, period_ms: u64) -> Rate {
        Rate::new(limit, Duration::from_millis(period_ms))
            .with_limiter(Limiter::FixedWindow(WindowStart::FirstRequest))
    }

    #[test]
    fn clock_boundaries_are_whole_periods_since_the_epoch() {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        // 12:34:56.5 UTC on some day: the next minute starts in 3.5 s.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_000_000_000 + 56_500);
        let at = next_clock_boundary(now, wall, minute);
        let want = minute - Duration::from_millis((1_765_000_000_000u64 + 56_500) % 60_000);
        assert_eq!(at - now, want);
        // Exactly on a boundary: the next is a whole period away.
        let on = SystemTime::UNIX_EPOCH + Duration::from_secs(600);
        assert_eq!(next_clock_boundary(now, on, minute) - now, minute);
    }

    #[test]
    fn a_window_closes_at_its_limit_and_opens_at_the_boundary() {
        let t0 = Instant::now();
        let mut w = FixedWindow::new(rate(3, 10_000), WindowStart::FirstRequest, t0);
        w.refill(t0 + Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(w.wait(1), Duration::ZERO);
            w.take(1);
        }
        // Anchored at the first request (t0 + 2 s): the window ends at t0 + 12 s.
        assert_eq!(w.wait(1), Duration::from_secs(10));
        w.refill(t0 + Duration::from_secs(7));
        assert_eq!(w.wait(1), Duration::from_secs(5));
        // A refund in the same window frees its share; the report of 0 left closes it again.
        w.give(1);
        assert_eq!(w.wait(1), Duration::ZERO);
        w.tighten_to(0);
        assert_eq!(w.available(), 0);
        w.refill(t0 + Duration::from_secs(12));
        assert_eq!(w.available(), 3);
        // First-request windows: the next window opens at the next request, not the boundary.
        w.refill(t0 + Duration::from_secs(30));
        w.take(1);
        assert_eq!(w.wait(3), Duration::from_secs(10));
    }

    /// A run that starts just after the provider's boundary: what it takes then counts in the
    /// window this meter still has open and in the next, so the next one does not hand the same
    /// allowance out again into the provider's window.
    #[test]
    fn a_take_near_a_boundary_counts_in_the_next_window_too() {
        let t0 = Instant::now();
        let minute = Rate::new(10, Duration::from_secs(60))
            .with_limiter(Limiter::FixedWindow(WindowStart::Clock));
        let mut w = FixedWindow::new(minute, WindowStart::Clock, t0);
        // This meter's window ends 100 ms from now (inside the 500 ms band).
        w.align(t0 + Duration::from_millis(100));
        w.take(10);
        w.refill(t0 + Duration::from_millis(100));
        assert_eq!(w.available(), 0, "the ten count in the new window too");
        assert_eq!(w.wait(1), Duration::from_secs(60));
        // Mid-window takes carry nothing: the window after is whole.
        w.refill(t0 + Duration::from_secs(61));
        w.take(4);
        w.refill(t0 + Duration::from_secs(121));
        assert_eq!(w.available(), 10);
        // A window skipped entirely starts empty, carry or not.
        let mut w = FixedWindow::new(minute, WindowStart::Clock, t0);
        w.align(t0 + Duration::from_millis(100));
        w.take(10);
        w.refill(t0 + Duration::from_secs(61));
        assert_eq!(w.available(), 10);
    }

    #[test]
    fn a_learned_boundary_moves_later_windows() {
        let t0 = Instant::now();
        let mut w = FixedWindow::new(rate(2, 60_000), WindowStart::FirstRequest, t0);
        w.take(2);
        // The provider says its window ends in 4 s.
        w.align(t0 + Duration::from_secs(4));
        assert_eq!(w.wait(1), Duration::from_secs(4));
        w.refill(t0 + Duration::from_secs(4));
        assert_eq!(w.wait(2), Duration::ZERO);
    }

    proptest! {
        /// Whatever the arrivals, costs and start, no window ever admits more than its limit,
        /// with the provider's boundaries (clock-aligned) and with LiteLLM's off-by-one (a
        /// server that admits `limit − 1`, configured as such).
        #[test]
        fn admitted_per_window_never_exceeds_the_limit(
            limit in 1u64..100,
            period_ms in 1u64..10_000,
            phase_ms in 0u64..10_000,
            off_by_one in any::<bool>(),
            delay in 0.0f64..1.0,
            ops in proptest::collection::vec((0u64..3_000, 1u64..100), 1..150),
        ) {
            let t0 = Instant::now();
            let limit = if off_by_one { limit.max(2) - 1 } else { limit };
            let r = Rate::new(limit, Duration::from_millis(period_ms))
                .with_limiter(Limiter::FixedWindow(WindowStart::Clock));
            let mut w = FixedWindow::new(r, WindowStart::Clock, t0);
            let boundary = t0 + Duration::from_millis(phase_ms % period_ms);
            w.align(boundary);
            let mut now = t0;
            let mut per_window: std::collections::HashMap<i128, u64> = Default::default();
            // The same admissions as the provider counts them when each arrives up to the
            // boundary band late (its clock behind, the network slow).
            let band = boundary_band(r.period);
            let mut late: std::collections::HashMap<i128, u64> = Default::default();
            for (dt, cost) in ops {
                now += Duration::from_millis(dt);
                w.refill(now);
                let cost = cost.min(limit);
                let wait = w.wait(cost);
                if wait.is_zero() {
                    w.take(cost);
                    let k = w.index(now);
                    *per_window.entry(k).or_default() += cost;
                    let arrives = now + band.mul_f64(delay);
                    *late.entry(w.index(arrives)).or_default() += cost;
                } else {
                    // Refused now, admitted exactly at the boundary the wait names: the next
                    // one, or the one after when the next starts with too much carried over.
                    let mut later = w.clone();
                    later.refill(now + wait);
                    prop_assert!(later.wait(cost).is_zero());
                    let ahead = later.index(now + wait) - w.index(now);
                    let carried = w.carry.saturating_add(cost) > limit;
                    prop_assert!(
                        ahead == 1 || (ahead == 2 && carried),
                        "admitted {} windows ahead (carry {})",
                        ahead,
                        w.carry
                    );
                    let mut sooner = w.clone();
                    sooner.refill(now + wait - Duration::from_nanos(1));
                    prop_assert!(!sooner.wait(cost).is_zero(), "the wait was longer than needed");
                }
            }
            for (k, admitted) in per_window {
                prop_assert!(admitted <= limit, "window {} admitted {} > {}", k, admitted, limit);
            }
            for (k, arrived) in late {
                prop_assert!(arrived <= limit, "window {} received {} > {}", k, arrived, limit);
            }
        }
    }
}
