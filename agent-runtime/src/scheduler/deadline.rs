//! Per-attempt deadlines: how long one provider attempt may take in total, and how long it may
//! go without a byte (or a stream event), before the provider stage gives up on it.
//!
//! A deadline that passes ends the attempt with a transient [`ModelError`], which the one retry
//! loop treats like a dropped connection: the attempt's quota slot and in-flight lease are
//! released (its reservation stays charged — the provider may have done the work), the breaker
//! counts a failure, and the call is retried within the retry budget. No attempt can hold quota
//! or a conversation longer than its deadline.
//!
//! Deadlines are set for every key with [`QuotaSchedulerBuilder::deadlines`], per key with
//! [`QuotaSchedulerBuilder::key_deadlines`], and per call with [`ModelCall::with_deadlines`]
//! (the most specific wins). See `docs/faults.md`.
//!
//! [`QuotaSchedulerBuilder::deadlines`]: super::QuotaSchedulerBuilder::deadlines
//! [`QuotaSchedulerBuilder::key_deadlines`]: super::QuotaSchedulerBuilder::key_deadlines
//! [`ModelCall::with_deadlines`]: super::ModelCall::with_deadlines

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use agent_core::{CompletionStream, ModelError, StreamEvent};
use futures::Stream;
use tokio::time::{Instant, Sleep, sleep_until};

use super::quota::QuotaConfigError;
use super::state::instant_after;

/// How long one provider attempt may take.
///
/// - `attempt`: the whole attempt — connecting, waiting for the first byte, reading the body or
///   the whole stream. Default [`Deadlines::DEFAULT_ATTEMPT`] (10 min, the OpenAI and Anthropic
///   SDKs' request timeout: a long non-streamed reply from a slow model can take minutes).
/// - `idle`: the longest gap between two stream events (and, for `complete`, the provider's gap
///   between two body bytes: see below). Default [`Deadlines::DEFAULT_IDLE`] (2 min).
/// - `probe`: how long the other calls of a key that is still learning its limits (the first
///   call goes alone, see `docs/quota.md`) wait behind that first call before they go ahead
///   anyway. Default [`Deadlines::DEFAULT_PROBE`] (5 s). The first call itself keeps its own
///   `attempt` deadline.
///
/// The scheduler enforces `attempt` on every call and `idle` between the events of a stream. A
/// non-streamed `complete` returns nothing before its last byte, so its idle gap is the
/// provider's to enforce (`OpenAiProviderBuilder::idle_timeout`); the `attempt` deadline bounds it
/// whatever the provider does (a server dripping one byte a second never trips an idle timeout).
///
/// ```
/// use std::time::Duration;
/// use agent_runtime::scheduler::Deadlines;
///
/// let deadlines = Deadlines::default()
///     .attempt(Duration::from_secs(30))
///     .idle(Duration::from_secs(10));
/// assert!(deadlines.validate().is_ok());
/// assert_eq!(Deadlines::default().attempt, Deadlines::DEFAULT_ATTEMPT);
/// assert!(Deadlines::default().attempt(Duration::ZERO).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Deadlines {
    /// The whole attempt: connect, first byte, body or stream.
    pub attempt: Duration,
    /// The longest gap between two stream events.
    pub idle: Duration,
    /// How long calls wait behind a key's first (limit-learning) call before going ahead.
    pub probe: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Deadlines {
    /// Default whole-attempt deadline: 10 minutes.
    pub const DEFAULT_ATTEMPT: Duration = Duration::from_secs(600);
    /// Default idle deadline: 2 minutes.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(120);
    /// Default probe patience: 5 seconds.
    pub const DEFAULT_PROBE: Duration = Duration::from_secs(5);

    /// The defaults.
    pub const DEFAULT: Deadlines = Deadlines {
        attempt: Self::DEFAULT_ATTEMPT,
        idle: Self::DEFAULT_IDLE,
        probe: Self::DEFAULT_PROBE,
    };

    /// Deadlines with `attempt` for the whole attempt and the default idle and probe times
    /// (the idle time capped at `attempt`).
    pub const fn new(attempt: Duration) -> Self {
        let idle = if attempt.as_nanos() < Self::DEFAULT_IDLE.as_nanos() {
            attempt
        } else {
            Self::DEFAULT_IDLE
        };
        Self {
            attempt,
            idle,
            probe: Self::DEFAULT_PROBE,
        }
    }

    /// Sets the whole-attempt deadline.
    #[must_use]
    pub const fn attempt(mut self, attempt: Duration) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the idle deadline (between stream events).
    #[must_use]
    pub const fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Sets how long calls wait behind a key's first call while it learns the limits.
    #[must_use]
    pub const fn probe(mut self, probe: Duration) -> Self {
        self.probe = probe;
        self
    }

    /// Checks the deadlines: each must be longer than zero.
    pub fn validate(&self) -> Result<(), QuotaConfigError> {
        for (what, value) in [
            ("attempt", self.attempt),
            ("idle", self.idle),
            ("probe", self.probe),
        ] {
            if value.is_zero() {
                return Err(QuotaConfigError::ZeroDeadline { what });
            }
        }
        Ok(())
    }

    /// The error of an attempt that ran past its deadline: transient, so the call is retried.
    pub(crate) fn attempt_expired(&self) -> ModelError {
        expired(format!(
            "the provider attempt did not finish within its deadline of {:.3}s",
            self.attempt.as_secs_f64()
        ))
    }

    fn idle_expired(&self) -> ModelError {
        expired(format!(
            "the provider sent nothing for {:.3}s (idle deadline) in the middle of a stream",
            self.idle.as_secs_f64()
        ))
    }

    /// Bounds a stream of an attempt that started at `started` (before the request was sent, so
    /// connecting and the first byte count): the stream yields its events until it runs past
    /// `attempt` after `started` or goes `idle` without an event; then it yields one transient
    /// error, drops the inner stream (closing the connection) and ends.
    ///
    /// The provider stage applies it to streamed calls; it is public for callers that stream from
    /// a [`ChatModel`](agent_core::ChatModel) outside the scheduler.
    ///
    /// ```
    /// use std::time::Duration;
    /// use agent_core::{ModelError, StreamEvent};
    /// use agent_runtime::scheduler::Deadlines;
    /// use futures::StreamExt;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// // A provider that sends one event and then nothing.
    /// let stalled = futures::stream::once(async { Ok(StreamEvent::TextDelta("Hel".into())) })
    ///     .chain(futures::stream::pending())
    ///     .boxed();
    /// let deadlines = Deadlines::new(Duration::from_secs(60)).idle(Duration::from_secs(5));
    /// let events: Vec<_> = deadlines
    ///     .bound_stream(stalled, tokio::time::Instant::now())
    ///     .collect()
    ///     .await;
    /// assert!(matches!(events[0], Ok(StreamEvent::TextDelta(_))));
    /// assert!(matches!(events[1], Err(ModelError::Transient { .. })));
    /// assert_eq!(events.len(), 2);
    /// # });
    /// ```
    pub fn bound_stream(&self, stream: CompletionStream, started: Instant) -> CompletionStream {
        let now = Instant::now();
        let end = instant_after(started, self.attempt);
        Box::pin(BoundStream {
            inner: Some(stream),
            deadlines: *self,
            end,
            timer: Box::pin(sleep_until(instant_after(now, self.idle).min(end))),
        })
    }
}

fn expired(what: String) -> ModelError {
    ModelError::Transient {
        status: None,
        retry_after: None,
        message: format!(
            "{what}; the attempt was abandoned and will be retried within the retry budget (raise the scheduler's Deadlines if the model is just slow)"
        ),
    }
}

/// A stream bounded by [`Deadlines::bound_stream`]: yields the inner stream's events, or one
/// transient error when a deadline passes, then ends.
struct BoundStream {
    inner: Option<CompletionStream>,
    deadlines: Deadlines,
    end: Instant,
    timer: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for BoundStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundStream")
            .field("deadlines", &self.deadlines)
            .field("ended", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl Stream for BoundStream {
    type Item = Result<StreamEvent, ModelError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = inner.as_mut().poll_next(cx) {
            if item.is_none() {
                this.inner = None;
            } else {
                let next = instant_after(Instant::now(), this.deadlines.idle).min(this.end);
                this.timer.as_mut().reset(next);
            }
            return Poll::Ready(item);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            // Dropping the inner stream closes the connection.
            this.inner = None;
            let error = if Instant::now() >= this.end {
                this.deadlines.attempt_expired()
            } else {
                this.deadlines.idle_expired()
            };
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn events(gaps_ms: &'static [u64]) -> CompletionStream {
        futures::stream::iter(gaps_ms.iter().copied())
            .then(|ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(StreamEvent::TextDelta("x".into()))
            })
            .boxed()
    }

    #[test]
    fn zero_deadlines_are_refused_and_new_caps_idle() {
        assert!(Deadlines::default().validate().is_ok());
        assert_eq!(
            Deadlines::default().idle(Duration::ZERO).validate(),
            Err(QuotaConfigError::ZeroDeadline { what: "idle" })
        );
        assert_eq!(
            Deadlines::new(Duration::from_secs(3)).idle,
            Duration::from_secs(3)
        );
        assert_eq!(
            Deadlines::new(Duration::from_secs(900)).idle,
            Deadlines::DEFAULT_IDLE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_goes_quiet_ends_with_a_transient_error_at_the_idle_deadline() {
        let d = Deadlines::new(Duration::from_secs(60)).idle(Duration::from_secs(2));
        let start = Instant::now();
        let mut s = d.bound_stream(events(&[1_000, 1_500, 5_000, 10]), start);
        assert!(matches!(s.next().await, Some(Ok(_))));
        assert!(matches!(s.next().await, Some(Ok(_))));
        let err = s.next().await;
        assert!(
            matches!(&err, Some(Err(ModelError::Transient { message, .. })) if message.contains("idle")),
            "{err:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(4_500));
        assert!(s.next().await.is_none(), "the stream ends after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_drips_forever_ends_at_the_attempt_deadline() {
        let d = Deadlines::new(Duration::from_millis(4_500)).idle(Duration::from_secs(2));
        let start = Instant::now();
        let s = d.bound_stream(events(&[1_000; 100]), start);
        let items: Vec<_> = s.collect().await;
        assert_eq!(items.len(), 5, "four events, then the error");
        assert!(
            matches!(items.last(), Some(Err(ModelError::Transient { message, .. })) if message.contains("deadline of 4.500s"))
        );
        assert_eq!(start.elapsed(), Duration::from_millis(4_500));
    }
}
