//! `postern-discover`: the inventory of outbound APIs nobody registered.
//!
//! Every call to a destination that matches no `[[integrations]]` entry — passed or blocked —
//! becomes an [`Observation`]; observations aggregate into a [`DiscoveredHost`] per
//! (host, port): when it was first and last seen, who called it, how often, how many bytes
//! each way, and which endpoints (method + inferred template such as `/v1/charges/{id}`).
//! From there an operator can see the shadow integrations and turn one into a real one
//! ([`draft_integration`]).
//!
//! # The parts
//! - [`infer_template`]: raw path → endpoint template (ids, numbers, UUIDs… become `{id}`).
//!   Pure.
//! - [`Inventory`]: bounded in-memory aggregate ([`Limits`]: hosts, endpoints and callers per
//!   host, endpoints in all); what does not fit is counted, not dropped silently. Pure: times
//!   come in the observations.
//! - [`Store`]: the persistent inventory, `<data_dir>/discovery.db` (SQLite, WAL), merged in
//!   deltas, shared by the gateway and the CLI.
//! - [`import`]: nginx (combined and JSON), Envoy JSON and HAR readers, for traffic that
//!   never went through Postern.
//! - [`promote`]: a ready-to-edit `[[integrations]]` stanza from a discovered host.
//!
//! # The API the gateway uses
//! ```no_run
//! use postern_discover::{Inventory, Observation, ObservationSource, Scheme, Store};
//! # fn main() -> Result<(), postern_discover::StoreError> {
//! let store = Store::open(std::path::Path::new("/var/lib/postern"))?; // once, at start
//! let mut inventory = Inventory::new(); // behind a Mutex, shared by the connections
//! inventory.record(&Observation {       // per call to an unregistered destination
//!     host: "api.example.com".into(), port: 443, scheme: Some(Scheme::Https),
//!     caller: Some("checkout".into()),
//!     method: Some("GET".into()), path: Some("/v1/things/42?x=1".into()), status: Some(200),
//!     bytes_out: 120, bytes_in: 900, time_ms: 1_709_633_472_000, blocked: false,
//!     source: ObservationSource::Proxy,
//! });
//! let delta = inventory.drain();        // every few seconds, under the lock (cheap)
//! store.merge_delta(&delta)?;           // outside the lock, on a blocking thread
//! let hosts = store.list()?;            // GET /v1/discovered: serde_json::to_string(&hosts)
//! # Ok(()) }
//! ```
//! [`Store`] is `Send + Sync` (one connection behind a mutex) and every call blocks; from
//! async code use `spawn_blocking`. [`DiscoveredHost`] is the stable JSON shape of both
//! `postern discover list --json` and `GET /v1/discovered` (docs/DISCOVERY.md).
//!
//! # What this crate is not
//! No network, no HTTP types, no clock, no tokio: it does not see calls, it is told about
//! them. It never stores a query string, a header or a body — only the path's template, in
//! which segments that look like ids or tokens are `{id}`. (Caller names come from the
//! caller's identity or, for imports, the log's user or client address.)

pub mod import;
mod inventory;
pub mod promote;
mod store;
mod template;

pub use inventory::{
    DiscoveredHost, EndpointStats, Inventory, Limits, Observation, ObservationSource, Scheme,
};
pub use promote::draft_integration;
pub use store::{Store, StoreError, DISCOVERY_FILE, SCHEMA_VERSION};
pub use template::{infer_template, MAX_TEMPLATE_BYTES, PLACEHOLDER, TRUNCATED};
