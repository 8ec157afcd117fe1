//! Cancelling a chat run from outside, promptly — also while a turn waits in the quota queue.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Cancels the run of the chat it came from ([`GroupChat::cancel_handle`](super::GroupChat::cancel_handle)).
/// Cheap to clone and `Send`, so another task can hold it.
///
/// `cancel()` stops the current run at once: a turn in progress is dropped (a model call waiting
/// in the scheduler's queue leaves it and is refunded), the run returns with
/// [`StopReason::Cancelled`](agent_core::StopReason::Cancelled), and every message appended before
/// the cancel stays in the transcript. A cancel issued while no run is in progress stops the next
/// run before its first turn. Each cancel is consumed by the run it stops: the run after that
/// proceeds normally (and resumes where the cancelled one stopped).
#[derive(Debug, Clone)]
pub struct CancelHandle {
    inner: Arc<CancelInner>,
}

#[derive(Debug)]
struct CancelInner {
    current: Mutex<CancellationToken>,
    /// A nested chat's tokens are children of its parent's, so cancelling the parent cancels it.
    parent: Option<CancellationToken>,
}

impl CancelHandle {
    pub(crate) fn new(parent: Option<CancellationToken>) -> Self {
        let token = parent
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        Self {
            inner: Arc::new(CancelInner {
                current: Mutex::new(token),
                parent,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CancellationToken> {
        // The token is replaced whole; a poisoned lock still holds a valid one.
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels the current run (or the next one, if none is running).
    pub fn cancel(&self) {
        self.lock().cancel();
    }

    /// True when a cancel is pending or in effect.
    pub fn is_cancelled(&self) -> bool {
        self.lock().is_cancelled()
    }

    /// The token the next run uses.
    pub(crate) fn token(&self) -> CancellationToken {
        self.lock().clone()
    }

    /// After a cancelled run: a fresh token, so the next run is not cancelled too. `None` when the
    /// current token was not cancelled (or the parent is, which a fresh child would inherit).
    pub(crate) fn renew(&self) -> Option<CancellationToken> {
        let mut current = self.lock();
        if !current.is_cancelled() || self.inner.parent.as_ref().is_some_and(|p| p.is_cancelled()) {
            return None;
        }
        *current = self
            .inner
            .parent
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        Some(current.clone())
    }
}
