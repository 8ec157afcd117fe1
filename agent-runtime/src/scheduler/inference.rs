//! Inference of how a provider counts a limit, from what its successful responses show.
//!
//! Two signals, per dimension, compared between consecutive responses (in admission order):
//!
//! - **Reset headers.** A bucket's `reset` is the time until it is full again, so its implied end
//!   (`response time + reset`) moves later by `period / limit` for every unit taken, and
//!   `reset · limit / (limit − remaining)` is its period. A fixed window's `reset` is the time to
//!   its boundary: the implied end stays put while `remaining` falls, and jumps by one window
//!   length when the window rolls over.
//! - **A `remaining` that does not refill** (LiteLLM's 200s carry no reset): when enough time
//!   passed for a bucket to refill several units, yet `remaining` fell by exactly the calls sent
//!   in between, the limit is a window.
//!
//! Two consistent observations are needed before anything changes; a window inferred this way is
//! taken as clock-aligned ([`WindowStart::Clock`]) and re-aligned to every boundary the provider
//! shows (a reset header, or a `remaining` that jumps back up).

use std::time::Duration;

use tokio::time::Instant;

use super::quota::{Limiter, WindowStart};
use super::state::instant_after;

/// One dimension's reading of one response, as inference needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// When the call was admitted, and its admission number on the key (calls admitted in
    /// between are `seq − last.seq − 1`).
    pub(crate) admitted_at: Instant,
    pub(crate) seq: u64,
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: Option<Duration>,
}

impl Sample {
    /// When the limit is full again (bucket) or the window ends (fixed), as of the admission:
    /// the provider counts `remaining` and `reset` when the request arrives, and the admission
    /// is nearer that than the answer, whose time varies with the length of the reply.
    fn end(&self) -> Option<Instant> {
        self.reset.map(|r| instant_after(self.admitted_at, r))
    }
}

/// What one more response taught.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// The limiter kind, once two observations agree.
    pub(crate) limiter: Option<Limiter>,
    /// A bucket's period (time to refill from empty) or a window's length.
    pub(crate) period: Option<Duration>,
    /// A window boundary the provider showed.
    pub(crate) boundary: Option<Instant>,
}

/// Inference state of one dimension.
#[derive(Debug, Clone, Default)]
pub(crate) struct Track {
    last: Option<Sample>,
    fixed_votes: u8,
    bucket_votes: u8,
    last_period: Option<Duration>,
    decided: Option<Limiter>,
}

/// Votes needed before a kind is adopted.
const VOTES: u8 = 2;

impl Track {
    /// Takes one response's sample; `assumed` is the period the key counts over now.
    pub(crate) fn observe(&mut self, s: Sample, assumed: Duration) -> Evidence {
        let mut evidence = Evidence::default();
        let Some(last) = self.last.filter(|l| l.seq < s.seq && l.limit == s.limit) else {
            if self.last.is_none_or(|l| l.seq < s.seq) {
                self.last = Some(s);
            }
            return evidence;
        };
        self.last = Some(s);
        let limit = s.limit.max(1);
        // Calls that took from the limit between the two readings, this one included.
        let used = s.seq - last.seq;
        let dropped = last.remaining.saturating_sub(s.remaining);
        let rose = s.remaining.saturating_sub(last.remaining);
        match (last.end(), s.end(), s.reset) {
            (Some(end_a), Some(end_b), Some(reset)) => {
                if rose > limit / 4 {
                    // The count came back: a window rolled over (or a bucket sat idle). The new
                    // end is a boundary, and the step between ends a window's length.
                    if self.decided.is_some_and(|d| d != Limiter::Bucket) {
                        evidence.boundary = Some(end_b);
                        if end_b > end_a {
                            evidence.period = Some(end_b - end_a);
                        }
                    }
                } else if dropped > 0 && s.remaining < limit {
                    let unit = reset / u32::try_from(limit - s.remaining).unwrap_or(u32::MAX);
                    let shift = if end_b > end_a {
                        end_b - end_a
                    } else {
                        end_a - end_b
                    };
                    let bucket_shift = unit.saturating_mul(u32::try_from(dropped).unwrap_or(1));
                    if shift.saturating_mul(2) < bucket_shift {
                        self.vote_fixed();
                        evidence.boundary = Some(end_b);
                    } else {
                        self.vote_bucket();
                        // reset = (limit − remaining) · period / limit.
                        let period = reset.saturating_mul(u32::try_from(limit).unwrap_or(1))
                            / u32::try_from(limit - s.remaining).unwrap_or(1);
                        evidence.period = self.consistent_period(period);
                    }
                }
            }
            _ => {
                // No reset: does `remaining` refill between responses?
                let elapsed = s.admitted_at.saturating_duration_since(last.admitted_at);
                let refill = u128::from(limit) * elapsed.as_nanos() / assumed.as_nanos().max(1);
                if rose > limit / 4 {
                    if self.decided.is_some_and(|d| d != Limiter::Bucket) {
                        // The boundary passed between the two admissions; the later one is the
                        // conservative choice (windows then start no earlier than the provider's).
                        evidence.boundary = Some(s.admitted_at);
                    }
                } else if refill >= 3 {
                    // What each kind predicts now: a bucket refilled (up to full, less this
                    // call), a window only lost the calls sent since.
                    let window = i128::from(last.remaining) - i128::from(used);
                    let bucket = (window + i128::try_from(refill).unwrap_or(i128::MAX))
                        .min(i128::from(limit) - 1);
                    let seen = i128::from(s.remaining);
                    if bucket - window >= 3 {
                        if seen <= window + 1 {
                            self.vote_fixed();
                        } else if seen >= bucket - 1 {
                            self.vote_bucket();
                        }
                    }
                }
            }
        }
        if self.decided.is_none() {
            if self.fixed_votes >= VOTES {
                self.decided = Some(Limiter::FixedWindow(WindowStart::Clock));
            } else if self.bucket_votes >= VOTES {
                self.decided = Some(Limiter::Bucket);
            }
        }
        evidence.limiter = self.decided;
        evidence
    }

    fn vote_fixed(&mut self) {
        self.fixed_votes = self.fixed_votes.saturating_add(1);
        self.bucket_votes = 0;
    }

    fn vote_bucket(&mut self) {
        self.bucket_votes = self.bucket_votes.saturating_add(1);
        self.fixed_votes = 0;
    }

    /// The period once two estimates in a row agree within 10 % (the longer one: the slower
    /// rate is the safe one).
    fn consistent_period(&mut self, period: Duration) -> Option<Duration> {
        let agreed = self.last_period.filter(|p| {
            let (lo, hi) = if *p < period {
                (*p, period)
            } else {
                (period, *p)
            };
            hi.saturating_sub(lo) * 10 <= hi
        });
        self.last_period = Some(period);
        agreed.map(|p| p.max(period))
    }

    /// A window was shown by a probe's success after hint-less 429s.
    pub(crate) fn decide(&mut self, limiter: Limiter) {
        self.decided = Some(limiter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, ms: u64, seq: u64, remaining: u64, reset_ms: Option<u64>) -> Sample {
        let at = t0 + Duration::from_millis(ms);
        Sample {
            admitted_at: at,
            seq,
            limit: 60,
            remaining,
            reset: reset_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_bucket_s_reset_headers_give_its_period() {
        // 60 per 12 s: a unit refills every 200 ms; reset = (60 − remaining) × 200 ms.
        let t0 = Instant::now();
        let mut track = Track::default();
        let minute = Duration::from_secs(60);
        let mut evidence = Evidence::default();
        for (i, remaining) in [59u64, 57, 55, 53].into_iter().enumerate() {
            let i = i as u64;
            // Two calls per reading, sent 10 ms apart: almost no refill in between.
            let s = sample(
                t0,
                i * 10,
                i * 2 + 1,
                remaining,
                Some((60 - remaining) * 200),
            );
            evidence = track.observe(s, minute);
        }
        assert_eq!(evidence.limiter, Some(Limiter::Bucket));
        assert_eq!(evidence.period, Some(Duration::from_secs(12)));
    }

    #[test]
    fn a_window_s_reset_points_at_a_fixed_boundary() {
        // A window ending at t0 + 30 s: reset shrinks as time passes while remaining falls.
        let t0 = Instant::now();
        let end = 30_000u64;
        let mut track = Track::default();
        let mut evidence = Evidence::default();
        for (i, remaining) in [59u64, 58, 57].into_iter().enumerate() {
            let ms = i as u64 * 1_000;
            let s = sample(t0, ms, i as u64 + 1, remaining, Some(end - ms));
            evidence = track.observe(s, Duration::from_secs(60));
        }
        assert_eq!(
            evidence.limiter,
            Some(Limiter::FixedWindow(WindowStart::Clock))
        );
        assert_eq!(evidence.boundary, Some(t0 + Duration::from_millis(end)));
    }

    #[test]
    fn a_remaining_that_does_not_refill_is_a_window() {
        // LiteLLM: limit and remaining, no reset; a call every 5 s (five units of refill under a
        // per-minute bucket), remaining falls by one each time.
        let t0 = Instant::now();
        let mut track = Track::default();
        let mut evidence = Evidence::default();
        for i in 0..4u64 {
            let s = sample(t0, i * 5_000, i + 1, 20 - i, None);
            evidence = track.observe(s, Duration::from_secs(60));
        }
        assert_eq!(
            evidence.limiter,
            Some(Limiter::FixedWindow(WindowStart::Clock))
        );
        // The count comes back between two calls: the later admission is a boundary.
        let rolled = sample(t0, 31_000, 5, 58, None);
        let evidence = track.observe(rolled, Duration::from_secs(60));
        assert_eq!(evidence.boundary, Some(rolled.admitted_at));
        // A bucket refills: remaining stays up although calls were made.
        // A bucket refills: four calls every 5 s against five units of refill.
        let mut bucket = Track::default();
        let mut evidence = Evidence::default();
        for i in 0..4u64 {
            let s = sample(t0, i * 5_000, i * 4 + 1, 55 + i, None);
            evidence = bucket.observe(s, Duration::from_secs(60));
        }
        assert_eq!(evidence.limiter, Some(Limiter::Bucket));
    }
}
