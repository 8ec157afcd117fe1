//! Coalescing: identical calls that miss at the same time make one provider call. The first
//! becomes the leader; the others wait for its completion and take it as a hit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{CacheKey, Hit};

/// What a leader hands its followers: its answer, or `None` when its call failed or was
/// dropped (each follower then tries again, and one of them leads).
type Landing = Option<Arc<Hit>>;

/// The calls in flight, by key.
#[derive(Debug, Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<CacheKey, watch::Receiver<Option<Landing>>>>,
}

/// What a call is in its key's flight.
pub(super) enum Role {
    /// Makes the call; lands the flight when done (or when dropped).
    Leader(FlightGuard),
    /// Waits for the leader.
    Follower(watch::Receiver<Option<Landing>>),
}

impl Flights {
    /// Joins the flight of `key`, leading it when there is none.
    pub(super) fn join(self: &Arc<Self>, key: &CacheKey) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Role::Leader(FlightGuard {
            flights: self.clone(),
            key: key.clone(),
            tx: Some(tx),
        })
    }

    /// Calls in flight now.
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Waits for the leader of a flight: its completion, or `None` when it failed.
pub(super) async fn landing(mut rx: watch::Receiver<Option<Landing>>) -> Landing {
    match rx.wait_for(Option::is_some).await {
        Ok(landed) => landed.clone().flatten(),
        // The leader vanished without landing (it cannot: dropping lands): try again.
        Err(_) => None,
    }
}

/// The leader's hold on a flight. Dropped without [`land`](Self::land) (the call failed, or its
/// future was dropped), it tells the followers to try again.
pub(super) struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    tx: Option<watch::Sender<Option<Landing>>>,
}

impl FlightGuard {
    /// Ends the flight with `completion` (`None`: failed).
    pub(super) fn land(mut self, completion: Landing) {
        self.end(completion);
    }

    fn end(&mut self, completion: Landing) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        // Out of the map first: a call arriving from now on leads a new flight (and finds the
        // entry in the store, which the leader wrote before landing).
        self.flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        tx.send_replace(Some(completion));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.end(None);
    }
}
