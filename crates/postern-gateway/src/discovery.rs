//! Discovery: every forward-proxy destination no integration claims is counted in memory
//! (`postern_discover::Inventory`, bounded) and merged into `<data_dir>/discovery.db` every few
//! seconds and at shutdown. `GET /v1/discovered` and `postern discover list` read the store.

use std::path::Path;
use std::sync::Mutex;

use postern_discover::{DiscoveredHost, Inventory, Observation, ObservationSource, Store};

/// One call (or tunnel) to an unregistered destination, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub host: String,
    pub port: u16,
    pub caller: Option<String>,
    pub method: Option<String>,
    /// The raw path; the inventory keeps only its inferred template.
    pub path: Option<String>,
    pub status: Option<u16>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub time_ms: i64,
    pub blocked: bool,
}

/// The pending (not yet stored) inventory and the store.
pub struct Discovery {
    pending: Mutex<Inventory>,
    store: Store,
}

impl Discovery {
    pub fn open(data_dir: &Path) -> anyhow::Result<Discovery> {
        let store = Store::open(data_dir).map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(Discovery {
            pending: Mutex::new(Inventory::new()),
            store,
        })
    }

    pub fn record(&self, sighting: Sighting) {
        let observation = Observation {
            host: sighting.host,
            port: sighting.port,
            caller: sighting.caller,
            method: sighting.method,
            path: sighting.path,
            status: sighting.status,
            bytes_out: sighting.bytes_out,
            bytes_in: sighting.bytes_in,
            time_ms: sighting.time_ms,
            blocked: sighting.blocked,
            source: ObservationSource::Proxy,
        };
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

    /// Flushes, then lists every discovered destination (most calls first).
    pub fn list(&self) -> anyhow::Result<Vec<DiscoveredHost>> {
        self.flush();
        self.store
            .list()
            .map_err(|error| anyhow::anyhow!("{error}"))
    }
}
