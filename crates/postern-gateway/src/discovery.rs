//! Discovery: every forward-proxy destination no integration claims is counted in memory
//! (`postern_discover::Inventory`, bounded) and merged into `<data_dir>/discovery.db` every few
//! seconds and at shutdown. `GET /v1/discovered` and `postern discover list` read the store.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use postern_discover::{DiscoveredHost, Inventory, Observation, Store};

/// The pending (not yet stored) inventory and the store.
pub struct Discovery {
    pending: Mutex<Inventory>,
    store: Store,
    /// A [`Discovery::flush_in_background`] is running.
    flushing: AtomicBool,
}

impl Discovery {
    pub fn open(data_dir: &Path) -> anyhow::Result<Discovery> {
        let store = Store::open(data_dir).map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(Discovery {
            pending: Mutex::new(Inventory::new()),
            store,
            flushing: AtomicBool::new(false),
        })
    }

    pub fn record(&self, observation: Observation) {
        self.pending
            .lock()
            .expect("discovery lock")
            .record(&observation);
    }

    /// Merges what was seen since the last flush into the store (blocking).
    pub fn flush(&self) {
        let delta = self.pending.lock().expect("discovery lock").drain();
        if delta.is_empty() {
            return;
        }
        if let Err(error) = self.store.merge_delta(&delta) {
            tracing::error!(%error, "could not write the discovery inventory; keeping it in memory");
            self.pending.lock().expect("discovery lock").merge(delta);
        }
    }

    /// [`Discovery::flush`] on a thread of its own, unless one is still running: the store may
    /// wait on another process's write (`postern discover import` merging a large log) for up
    /// to its busy timeout, which must not hold up the caller (the vault poller, which applies
    /// revocations every 250 ms).
    pub fn flush_in_background(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let discovery = self.clone();
        let spawned = std::thread::Builder::new()
            .name("postern-discovery-flush".to_string())
            .spawn(move || {
                discovery.flush();
                discovery.flushing.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the discovery flush; trying again later");
            self.flushing.store(false, Ordering::Release);
        }
    }

    /// [`Discovery::flush`] once a background flush still running has ended (waiting at most
    /// the store's busy timeout and a little more): at shutdown, so the process does not end
    /// with a background flush's transaction open, and its data lost.
    pub fn flush_last(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while self.flushing.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.flush();
    }

    /// Flushes, then lists every discovered destination (most calls first).
    pub fn list(&self) -> anyhow::Result<Vec<DiscoveredHost>> {
        self.flush();
        self.store
            .list()
            .map_err(|error| anyhow::anyhow!("{error}"))
    }
}
