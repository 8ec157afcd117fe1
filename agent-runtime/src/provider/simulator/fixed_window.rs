//! The provider's fixed-window counter: what LiteLLM, most API gateways and Azure's short request
//! windows enforce — a count that resets at each window boundary instead of refilling
//! continuously.
//!
//! Two anchors: windows **aligned** to the clock (boundaries at multiples of the period since an
//! origin, as LiteLLM's UTC calendar minutes), or **anchored at the first request** (a window opens
//! with the first request after the previous one expired, as LiteLLM's proxy limiter v3 and
//! Envoy-style Lua scripts do). Time is `tokio::time`, so tests on a paused clock are exact; waits
//! are rounded up to the millisecond like the bucket's.

use std::time::Duration;

use tokio::time::Instant;

use super::bucket::NANOS_PER_MS;

/// Where a fixed window's boundaries fall.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Boundaries {
    /// Boundaries at `origin + k × period` for every integer `k`; `origin` is the instant the
    /// simulation started less its phase into the first window.
    Aligned {
        /// The simulation's start.
        start: Instant,
        /// How far into its window the simulation started.
        phase: Duration,
    },
    /// A window opens with the first charge after the previous one expired.
    FirstRequest,
}

#[derive(Debug, Clone)]
pub(crate) struct FixedWindow {
    limit: u64,
    period: Duration,
    boundaries: Boundaries,
    /// Start of the window `used` counts; `None` before the first charge (first-request anchor).
    window_start: Option<Instant>,
    /// Charged in the current window; above `limit` after forced charges.
    used: u64,
    now: Instant,
}

impl FixedWindow {
    pub(crate) fn new(limit: u64, period: Duration, boundaries: Boundaries, now: Instant) -> Self {
        let period = period.max(Duration::from_nanos(1));
        let mut window = Self {
            limit,
            period,
            boundaries,
            window_start: None,
            used: 0,
            now,
        };
        window.refill(now);
        window
    }

    /// The start of the aligned window holding `now`.
    fn aligned_start(&self, start: Instant, phase: Duration, now: Instant) -> Instant {
        let period = self.period.as_nanos();
        let since_origin = now.saturating_duration_since(start).as_nanos() + phase.as_nanos();
        let into_window = since_origin % period;
        let back = Duration::from_nanos(u64::try_from(into_window).unwrap_or(u64::MAX));
        // Before the first boundary after `start` the window began before `start`: count from
        // `start` then (nothing happened earlier).
        now.checked_sub(back).unwrap_or(start).max(start)
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        self.now = now;
        match self.boundaries {
            Boundaries::Aligned { start, phase } => {
                let current = self.aligned_start(start, phase, now);
                if self.window_start != Some(current) {
                    self.window_start = Some(current);
                    self.used = 0;
                }
            }
            Boundaries::FirstRequest => {
                if self.elapsed_in_window().is_some_and(|e| e >= self.period) {
                    self.window_start = None;
                    self.used = 0;
                }
            }
        }
    }

    /// How long the current window has been open; `None` while no first-request window is open.
    /// (Durations, not instants: an instant a period away may not be representable.)
    fn elapsed_in_window(&self) -> Option<Duration> {
        let start = self.window_start?;
        let elapsed = self.now.saturating_duration_since(start);
        match self.boundaries {
            // The first aligned window began `phase` before the simulation did.
            Boundaries::Aligned {
                start: sim_start,
                phase,
            } if start == sim_start => Some(elapsed.saturating_add(phase)),
            _ => Some(elapsed),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.limit
    }

    pub(crate) fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn has(&self, amount: u64) -> bool {
        self.used.saturating_add(amount) <= self.limit
    }

    pub(crate) fn take(&mut self, amount: u64) {
        if self.window_start.is_none() {
            self.window_start = Some(self.now);
        }
        self.used = self.used.saturating_add(amount);
    }

    pub(crate) fn give_back(&mut self, amount: u64) {
        self.used = self.used.saturating_sub(amount);
    }

    /// Time until `amount` fits: zero when it fits now, else the time to the boundary (a window
    /// that can never hold `amount` answers one period, as the bucket answers with its cap).
    pub(crate) fn wait_for(&self, amount: u64) -> Duration {
        if self.has(amount) {
            return Duration::ZERO;
        }
        self.time_to_boundary().max(Duration::from_millis(1))
    }

    /// Time until the count is zero again (the reset header): the time to the boundary, or zero
    /// when nothing is counted.
    pub(crate) fn time_to_full(&self) -> Duration {
        if self.used == 0 {
            return Duration::ZERO;
        }
        self.time_to_boundary()
    }

    fn time_to_boundary(&self) -> Duration {
        let Some(elapsed) = self.elapsed_in_window() else {
            return Duration::ZERO;
        };
        let nanos = self.period.saturating_sub(elapsed).as_nanos();
        let millis = nanos.div_ceil(NANOS_PER_MS);
        Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    pub(crate) fn set_capacity(&mut self, limit: u64) {
        self.limit = limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIXTY: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn aligned_windows_reset_at_the_boundary_whatever_the_phase() {
        let start = Instant::now();
        let phase = Duration::from_secs(45);
        let mut w = FixedWindow::new(3, SIXTY, Boundaries::Aligned { start, phase }, start);
        for _ in 0..3 {
            assert!(w.has(1));
            w.take(1);
        }
        assert!(!w.has(1));
        // 45 s into the window: the boundary is 15 s away, and so are the reset and the wait.
        assert_eq!(w.wait_for(1), Duration::from_secs(15));
        assert_eq!(w.time_to_full(), Duration::from_secs(15));
        tokio::time::advance(Duration::from_millis(14_999)).await;
        w.refill(Instant::now());
        assert!(!w.has(1));
        assert_eq!(w.wait_for(1), Duration::from_millis(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        w.refill(Instant::now());
        assert_eq!(w.available(), 3);
        assert_eq!(w.time_to_full(), Duration::ZERO);
        w.take(1);
        // A whole window now.
        assert_eq!(w.time_to_full(), SIXTY);
        // Two periods later, two boundaries passed: empty again.
        tokio::time::advance(SIXTY * 2).await;
        w.refill(Instant::now());
        assert_eq!(w.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_windows_open_with_the_first_charge() {
        let start = Instant::now();
        let mut w = FixedWindow::new(2, SIXTY, Boundaries::FirstRequest, start);
        assert_eq!(w.time_to_full(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7)).await;
        w.refill(Instant::now());
        w.take(1);
        tokio::time::advance(Duration::from_secs(50)).await;
        w.refill(Instant::now());
        w.take(1);
        assert!(!w.has(1));
        // The window opened at 7 s: it closes at 67 s, 10 s from now.
        assert_eq!(w.wait_for(1), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        w.refill(Instant::now());
        assert!(w.has(2));
        // No window is open until the next charge.
        tokio::time::advance(Duration::from_secs(100)).await;
        w.refill(Instant::now());
        w.take(1);
        assert_eq!(w.time_to_full(), SIXTY);
        w.give_back(5);
        assert_eq!(w.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_charges_and_huge_values_saturate() {
        let start = Instant::now();
        let phase = Duration::MAX;
        let mut w = FixedWindow::new(
            10,
            Duration::MAX,
            Boundaries::Aligned { start, phase },
            start,
        );
        w.take(u64::MAX);
        w.take(u64::MAX);
        assert!(!w.has(1));
        let _ = (w.wait_for(u64::MAX), w.time_to_full());
        w.set_capacity(1);
        assert_eq!(w.capacity(), 1);
    }
}
