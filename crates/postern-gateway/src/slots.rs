//! A listener's connection slots, and room made at the limit (the policy: CONFIG.md, time
//! limits). When every slot is taken, a new connection closes the open one that has been quiet
//! longest — no byte either way for at least [`MIN_QUIET`] and no request in hand
//! ([`InFlight::busy`]) — as nginx reuses its idle keep-alive connections.
//!
//! The closing is done by the connection's own [`crate::deadline::Deadline`]: told through its
//! [`Presence`], its next wait for bytes fails (`ConnectionAborted`), which ends whichever server
//! serves it (hyper's or Postern's own HTTP/1.1 one) as a connection reset would; so do bytes
//! arriving first (a kept connection's next request racing the close), unless a request is in
//! hand by then, in which case the connection closes once it has none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::deadline::InFlight;

/// How long a connection must have been quiet to be closed for a new one: a connection between
/// two requests of a busy client is not.
pub const MIN_QUIET: Duration = Duration::from_secs(1);

/// How long a new connection waits for the slot of the connection closed for it (it is freed
/// once that connection's task has run): past it, the new one is closed as at a full listener.
const ROOM_WAIT: Duration = Duration::from_millis(250);

/// A listener's connection slots ([`Slots::take`]) and the connections holding them.
pub struct Slots {
    permits: Arc<Semaphore>,
    limit: usize,
    holders: Mutex<HashMap<u64, Arc<Presence>>>,
    next_id: AtomicU64,
    base: Instant,
    closed_for_room: AtomicU64,
    /// No connection can be quiet enough before this (ms since `base`), as the last look found:
    /// a flood of connections at a limit of busy ones does not look through them all each time.
    next_look_ms: AtomicU64,
}

/// What the listener knows of one open connection: when it last moved a byte, whether a request
/// is in hand (its [`InFlight`]), and whether it was told to close for room.
pub struct Presence {
    /// When the connection last moved a byte, in milliseconds since its [`Slots`]' `base`.
    last_moved_ms: AtomicU64,
    base: Instant,
    in_flight: InFlight,
    closed_for_room: AtomicBool,
    /// The task to wake when told to close: the one that last waited for the connection's bytes.
    waker: AtomicWaker,
}

/// A connection's slot, given back (and the connection forgotten) when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    id: u64,
    slots: Arc<Slots>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("id", &self.id).finish()
    }
}

impl Slots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            holders: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            base: Instant::now(),
            closed_for_room: AtomicU64::new(0),
            next_look_ms: AtomicU64::new(MIN_QUIET.as_millis() as u64),
        })
    }

    /// How many connections may hold a slot at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Connections told so far to close to make room for new ones.
    pub fn closed_for_room(&self) -> u64 {
        self.closed_for_room.load(Ordering::Relaxed)
    }

    /// A slot for a new connection whose requests `in_flight` counts; at the limit, room is made
    /// by closing the connection quiet longest, if one has been quiet [`MIN_QUIET`], and its slot
    /// waited for. `None`: every slot is held by a busy connection (or the one closed for room
    /// did not end in time, or another listener thread took its slot first).
    pub async fn take(self: &Arc<Self>, in_flight: &InFlight) -> Option<(Slot, Arc<Presence>)> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.make_room() {
                    return None;
                }
                tokio::time::timeout(ROOM_WAIT, self.permits.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        Some(self.hold(permit, in_flight))
    }

    fn hold(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        in_flight: &InFlight,
    ) -> (Slot, Arc<Presence>) {
        let presence = Arc::new(Presence {
            last_moved_ms: AtomicU64::new(self.ms(Instant::now())),
            base: self.base,
            in_flight: in_flight.clone(),
            closed_for_room: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.holders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, presence.clone());
        let slot = Slot {
            _permit: permit,
            id,
            slots: self.clone(),
        };
        (slot, presence)
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Tells the connection quiet longest (at least [`MIN_QUIET`], with no request in hand, not
    /// told already) to close; whether there was one.
    fn make_room(&self) -> bool {
        const QUIET_MS: u64 = MIN_QUIET.as_millis() as u64;
        let now = self.ms(Instant::now());
        if now < self.next_look_ms.load(Ordering::Relaxed) {
            return false;
        }
        let quiet_enough = now - QUIET_MS;
        let quietest = {
            let holders = self
                .holders
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            holders
                .values()
                .filter(|presence| {
                    !presence.closed_for_room.load(Ordering::Relaxed) && !presence.in_flight.busy()
                })
                .map(|presence| (presence.last_moved_ms.load(Ordering::Relaxed), presence))
                .min_by_key(|(moved, _)| *moved)
                .map(|(moved, presence)| (moved, presence.clone()))
        };
        match quietest {
            Some((moved, presence)) if moved <= quiet_enough => {
                presence.closed_for_room.store(true, Ordering::Release);
                presence.waker.wake();
                self.closed_for_room.fetch_add(1, Ordering::Relaxed);
                true
            }
            // None is quiet enough before the quietest idle one is, or, with all busy, for a
            // quiet period (a busy connection's request ends with bytes moved).
            quietest => {
                let next = quietest.map_or(now, |(moved, _)| moved) + QUIET_MS;
                self.next_look_ms.store(next, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .holders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

impl Presence {
    /// The connection moved a byte at `now`.
    pub fn moved(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.base).as_millis() as u64;
        self.last_moved_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the connection is to close now: told to close for room, with no request in hand.
    pub fn closing_for_room(&self) -> bool {
        self.closed_for_room.load(Ordering::Acquire) && !self.in_flight.busy()
    }

    /// [`Presence::closing_for_room`]; if not, the task behind `cx` is woken when it is told.
    pub fn closing_for_room_or_wake(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.closing_for_room()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn room_is_made_by_closing_the_connection_quiet_longest_and_never_a_busy_one() {
        let slots = Slots::new(3);
        // Past the first quiet period of the slots themselves.
        tokio::time::advance(Duration::from_secs(5)).await;
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let (busy, quiet, quieter) = (
            InFlight::default(),
            InFlight::default(),
            InFlight::default(),
        );
        let (_busy_slot, busy_presence) = slots.take(&busy).await.unwrap();
        let (quieter_slot, quieter_presence) = slots.take(&quieter).await.unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        let (quiet_slot, quiet_presence) = slots.take(&quiet).await.unwrap();
        assert_eq!(slots.open(), 3);

        // None quiet for MIN_QUIET yet: a new connection finds no room.
        assert!(slots.take(&InFlight::default()).await.is_none());
        assert_eq!(slots.closed_for_room(), 0);

        // The oldest has a request in hand, so the quieter of the others is chosen.
        tokio::time::advance(Duration::from_secs(2)).await;
        let request = busy.answering();
        let taking = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(&InFlight::default()).await.map(|(slot, _)| slot) }
        });
        tokio::task::yield_now().await;
        assert!(quieter_presence.closing_for_room_or_wake(&cx));
        assert!(!quiet_presence.closing_for_room_or_wake(&cx));
        assert!(!busy_presence.closing_for_room_or_wake(&cx));
        // Its slot, once its connection ends, goes to the new one.
        drop(quieter_slot);
        let _new_slot = taking.await.unwrap().expect("the closed connection's slot");
        assert_eq!(slots.closed_for_room(), 1);

        // A byte moved puts a connection back among the active ones; the one whose request
        // ended is quiet, and chosen.
        quiet_presence.moved(Instant::now());
        drop(request);
        let taking = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(&InFlight::default()).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!quiet_presence.closing_for_room_or_wake(&cx));
        assert!(busy_presence.closing_for_room_or_wake(&cx));
        assert_eq!(slots.closed_for_room(), 2);
        drop(quiet_slot);
        assert!(taking.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_told_to_close_that_takes_a_request_first_closes_after_it() {
        let slots = Slots::new(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        let in_flight = InFlight::default();
        let (_held, presence) = slots.take(&in_flight).await.unwrap();
        tokio::time::advance(MIN_QUIET).await;
        let request = in_flight.answering();
        // Busy: not chosen.
        assert!(slots.take(&InFlight::default()).await.is_none());
        drop(request);
        tokio::time::advance(MIN_QUIET).await;
        assert!(slots.take(&InFlight::default()).await.is_none());
        assert!(presence.closing_for_room());
        // Told once: the next new connection does not count it again.
        assert!(slots.take(&InFlight::default()).await.is_none());
        assert_eq!(slots.closed_for_room(), 1);
        // A request it took first keeps it open until the request is answered.
        let request = in_flight.answering();
        assert!(!presence.closing_for_room());
        drop(request);
        assert!(presence.closing_for_room());
    }
}
