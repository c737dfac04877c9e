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
    /// Held across a flush's drain and merge: flushes run one at a time, so a flush (a listing,
    /// the last one at shutdown) ends after one already running, with its data stored.
    merging: Mutex<()>,
    /// A [`Discovery::flush_in_background`] is running.
    flushing: AtomicBool,
}

impl Discovery {
    pub fn open(data_dir: &Path) -> anyhow::Result<Discovery> {
        let store = Store::open(data_dir).map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(Discovery {
            pending: Mutex::new(Inventory::new()),
            store,
            merging: Mutex::new(()),
            flushing: AtomicBool::new(false),
        })
    }

    pub fn record(&self, observation: Observation) {
        self.pending
            .lock()
            .expect("discovery lock")
            .record(&observation);
    }

    /// Merges what was seen since the last flush into the store (blocking, after any flush
    /// already running).
    pub fn flush(&self) {
        let _merging = self.merging.lock().expect("discovery merge lock");
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

    /// Flushes, then lists every discovered destination (most calls first).
    pub fn list(&self) -> anyhow::Result<Vec<DiscoveredHost>> {
        self.flush();
        self.store
            .list()
            .map_err(|error| anyhow::anyhow!("{error}"))
    }

    /// Flushes, then the `limit` most-called destinations and how many there are in all: a
    /// listing that reads (and answers with) only what it shows.
    pub fn list_top(&self, limit: usize) -> anyhow::Result<(Vec<DiscoveredHost>, u64)> {
        self.flush();
        let error = |error: postern_discover::StoreError| anyhow::anyhow!("{error}");
        let hosts = self.store.list_top(limit).map_err(error)?;
        let total = self.store.host_count().map_err(error)?;
        Ok((hosts, total))
    }
}
