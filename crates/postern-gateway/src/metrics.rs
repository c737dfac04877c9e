//! Prometheus metrics. Names and labels are part of the interface (docs/ADMIN.md).
//! Label values are configured names only (never a raw path or a token), so cardinality is bounded
//! by the config.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::events::{Decision, EventStats};

/// Labels of `postern_calls_total`. The names are shared with the call's context (`Arc<str>`)
/// and the status is encoded as its number, so counting a call allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub integration: Arc<str>,
    pub caller: Arc<str>,
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationLabel {
    pub integration: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationCallerLabel {
    pub integration: Arc<str>,
    pub caller: Arc<str>,
}

/// The label value for "none" (no integration, unauthenticated caller).
fn dash() -> Arc<str> {
    static DASH: OnceLock<Arc<str>> = OnceLock::new();
    DASH.get_or_init(|| Arc::from("-")).clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Each thread's handles to the per-call series it has used: a call's counter and histogram are
/// found here without the family's lock and SipHash. The handles share the registry's atomics,
/// so scrapes see every increment. Tied to one `Metrics` (tests run several gateways), bounded.
/// Correct only while series are never removed from `calls` or `duration`: a change that prunes
/// them must also give the `Metrics` a new `id`, or threads would count into dropped series.
#[derive(Default)]
struct SeriesCache {
    owner: u64,
    calls: HashMap<CallLabels, Counter, foldhash::fast::RandomState>,
    durations: HashMap<Arc<str>, Histogram, foldhash::fast::RandomState>,
}

/// Series a thread keeps handles to before it starts over.
const SERIES_CACHE_LIMIT: usize = 4096;

thread_local! {
    static SERIES: RefCell<SeriesCache> = RefCell::default();
}

pub struct Metrics {
    /// Tells this instance's series apart in the threads' caches.
    id: u64,
    /// Held while counters kept elsewhere are copied in ([`Metrics::mirror`]): the admin API
    /// runs on several threads.
    mirroring: std::sync::Mutex<()>,
    alerts: Family<KindLabel, Counter>,
    pub detector_dropped: Counter,
    /// Refusals of calls with no caller whose audit entry was not written (over
    /// [`crate::ANONYMOUS_AUDIT_PER_SECOND`]).
    pub audit_anonymous_unrecorded: Counter,
    audit_entries_dropped: Counter,
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    denials: Family<ReasonLabel, Counter>,
    duration: Family<IntegrationLabel, Histogram>,
    pub config_reloads: Family<ResultLabel, Counter>,
    credential_age_days: Family<CredentialLabel, Gauge>,
    credential_over_max_age: Family<CredentialLabel, Gauge>,
    events_written: Counter,
    events_errors: Counter,
    event_rotations: Counter,
    event_rotation_failures: Counter,
    connections_open: Gauge,
    worker_connections: Family<WorkerLabel, Gauge>,
    connections_handed_over: Counter,
    connections_refused_per_source: Counter,
    connections_closed_for_room: Counter,
    admin_connections_closed_for_room: Counter,
    tunnels_open: Gauge,
    websocket_sessions_open: Gauge,
    listener_tls_stale: Gauge,
    listener_certificate_expiry: Gauge,
    calls_open: Family<IntegrationLabel, Gauge>,
    caller_calls_open: Family<IntegrationCallerLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Calls through the gateway by integration, caller, decision and status",
            calls.clone(),
        );
        let denials = Family::<ReasonLabel, Counter>::default();
        registry.register("denials", "Refused calls by reason", denials.clone());
        let duration = Family::<IntegrationLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
        });
        registry.register(
            "call_duration_seconds",
            "Call latency from request head to the end of the response body",
            duration.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, rejected)",
            config_reloads.clone(),
        );
        let alerts = Family::<KindLabel, Counter>::default();
        registry.register("alerts", "Anomaly alerts by kind", alerts.clone());
        let detector_dropped = Counter::default();
        registry.register(
            "detector_dropped",
            "Calls not scored by the anomaly detector because its queue was full",
            detector_dropped.clone(),
        );
        let audit_anonymous_unrecorded = Counter::default();
        registry.register(
            "audit_anonymous_unrecorded",
            "Refusals of calls with no caller (unauthenticated, malformed) recorded by event only: over the audit log's rate for them",
            audit_anonymous_unrecorded.clone(),
        );
        let audit_entries_dropped = Counter::default();
        registry.register(
            "audit_entries_dropped",
            "Audit entries nobody waited for (outcomes, refusals, best_effort intents) not written: the audit log's queue and its overflow were full",
            audit_entries_dropped.clone(),
        );
        let credential_age_days = Family::<CredentialLabel, Gauge>::default();
        registry.register(
            "credential_age_days",
            "Age of each vault credential's current value, in days",
            credential_age_days.clone(),
        );
        let credential_over_max_age = Family::<CredentialLabel, Gauge>::default();
        registry.register(
            "credential_over_max_age",
            "1 when an active vault credential is older than credential_max_age_days",
            credential_over_max_age.clone(),
        );
        let events_written = Counter::default();
        registry.register(
            "events_written",
            "Call events appended to events.jsonl",
            events_written.clone(),
        );
        let events_errors = Counter::default();
        registry.register(
            "event_write_errors",
            "Call events that could not be written",
            events_errors.clone(),
        );
        let event_rotations = Counter::default();
        registry.register(
            "event_rotations",
            "Times events.jsonl was rotated",
            event_rotations.clone(),
        );
        let event_rotation_failures = Counter::default();
        registry.register(
            "event_rotation_failures",
            "Rotations of events.jsonl that failed (the file grows past events_max_file_bytes until one succeeds)",
            event_rotation_failures.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the data-plane listener, CONNECT tunnels opened on them included",
            connections_open.clone(),
        );
        let worker_connections = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_connections",
            "Connections each data-plane worker serves",
            worker_connections.clone(),
        );
        let connections_handed_over = Counter::default();
        registry.register(
            "connections_handed_over",
            "Connections a worker accepted and handed to a worker serving fewer",
            connections_handed_over.clone(),
        );
        let connections_refused_per_source = Counter::default();
        registry.register(
            "connections_refused_per_source",
            "New connections closed because their client address held [gateway] max_connections_per_source",
            connections_refused_per_source.clone(),
        );
        let connections_closed_for_room = Counter::default();
        registry.register(
            "connections_closed_for_room",
            "Quiet data-plane connections closed to make room for a new one at the connection limit",
            connections_closed_for_room.clone(),
        );
        let admin_connections_closed_for_room = Counter::default();
        registry.register(
            "admin_connections_closed_for_room",
            "Quiet admin-listener connections closed to make room for a new one at its connection limit",
            admin_connections_closed_for_room.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "CONNECT tunnels open (opaque and intercepted)",
            tunnels_open.clone(),
        );
        let listener_tls_stale = Gauge::default();
        registry.register(
            "listener_tls_stale",
            "1 while the listener serves older TLS than its files hold: the last reload could not use them (see the log)",
            listener_tls_stale.clone(),
        );
        let listener_certificate_expiry = Gauge::default();
        registry.register(
            "listener_certificate_expiry_seconds",
            "When the certificate the TLS listener serves expires (notAfter), in seconds since the Unix epoch; 0 on a plain listener, or when its certificate cannot be read",
            listener_certificate_expiry.clone(),
        );
        let websocket_sessions_open = Gauge::default();
        registry.register(
            "websocket_sessions_open",
            "WebSocket sessions open (operations with websocket = true)",
            websocket_sessions_open.clone(),
        );
        let calls_open = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "calls_open",
            "Calls open on an integration with max_concurrent_calls, all callers together",
            calls_open.clone(),
        );
        let caller_calls_open = Family::<IntegrationCallerLabel, Gauge>::default();
        registry.register(
            "caller_calls_open",
            "Calls a caller has open on an integration with max_concurrent_calls_per_caller",
            caller_calls_open.clone(),
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mirroring: std::sync::Mutex::new(()),
            registry,
            calls,
            denials,
            duration,
            config_reloads,
            alerts,
            detector_dropped,
            audit_anonymous_unrecorded,
            audit_entries_dropped,
            credential_age_days,
            credential_over_max_age,
            events_written,
            events_errors,
            event_rotations,
            event_rotation_failures,
            connections_open,
            worker_connections,
            connections_handed_over,
            connections_refused_per_source,
            connections_closed_for_room,
            admin_connections_closed_for_room,
            tunnels_open,
            websocket_sessions_open,
            listener_tls_stale,
            listener_certificate_expiry,
            calls_open,
            caller_calls_open,
        }
    }

    /// Sets the open calls of integrations with concurrency limits (by integration, caller or
    /// `None` for all callers), read when the metrics are asked for.
    pub fn set_calls_open(&self, open: Vec<(Arc<str>, Option<Arc<str>>, u32)>) {
        self.calls_open.clear();
        self.caller_calls_open.clear();
        for (integration, caller, count) in open {
            let count = i64::from(count);
            match caller {
                None => self
                    .calls_open
                    .get_or_create(&IntegrationLabel { integration }),
                Some(caller) => self
                    .caller_calls_open
                    .get_or_create(&IntegrationCallerLabel {
                        integration,
                        caller,
                    }),
            }
            .set(count);
        }
    }

    /// Sets the open connections, tunnels and WebSocket sessions, read when the metrics are
    /// asked for.
    pub fn set_open(&self, connections: usize, tunnels: usize, websocket_sessions: usize) {
        self.connections_open
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        self.tunnels_open
            .set(i64::try_from(tunnels).unwrap_or(i64::MAX));
        self.websocket_sessions_open
            .set(i64::try_from(websocket_sessions).unwrap_or(i64::MAX));
    }

    /// Sets each worker's connections and the hand-overs since start, read when the metrics are
    /// asked for.
    pub fn set_workers(&self, load: &crate::workers::Load) {
        for (worker, serving) in load.per_worker().enumerate() {
            self.worker_connections
                .get_or_create(&WorkerLabel { worker })
                .set(i64::try_from(serving).unwrap_or(i64::MAX));
        }
        self.mirror(&[(&self.connections_handed_over, load.handed_over())]);
    }

    /// Counts one finished call and observes its duration.
    pub fn observe_call(
        &self,
        integration: Option<&Arc<str>>,
        caller: Option<&Arc<str>>,
        decision: Decision,
        status: u16,
        reason: &str,
        duration: Duration,
    ) {
        let labels = CallLabels {
            integration: integration.cloned().unwrap_or_else(dash),
            caller: caller.cloned().unwrap_or_else(dash),
            decision: decision.as_str(),
            status,
        };
        if decision == Decision::Deny {
            self.denials
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc();
        }
        let seconds = duration.as_secs_f64();
        let cached = SERIES.try_with(|cell| {
            let Ok(mut cache) = cell.try_borrow_mut() else {
                return false;
            };
            let cache = &mut *cache;
            if cache.owner != self.id
                || cache.calls.len() + cache.durations.len() >= SERIES_CACHE_LIMIT
            {
                cache.calls.clear();
                cache.durations.clear();
                cache.owner = self.id;
            }
            cache
                .durations
                .entry(labels.integration.clone())
                .or_insert_with(|| {
                    self.duration.get_or_create_owned(&IntegrationLabel {
                        integration: labels.integration.clone(),
                    })
                })
                .observe(seconds);
            match cache.calls.get(&labels) {
                Some(counter) => {
                    counter.inc();
                }
                None => {
                    let counter = self.calls.get_or_create_owned(&labels);
                    counter.inc();
                    cache.calls.insert(labels.clone(), counter);
                }
            }
            true
        });
        // Only while the thread's locals are torn down (a body dropped late) or re-entered.
        if cached != Ok(true) {
            self.calls.get_or_create(&labels).inc();
            self.duration
                .get_or_create(&IntegrationLabel {
                    integration: labels.integration,
                })
                .observe(seconds);
        }
    }

    pub fn observe_alert(&self, kind: &str) {
        self.alerts
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn set_credential_age(&self, credential: &str, age_days: i64, over_max_age: bool) {
        let label = CredentialLabel {
            credential: credential.to_string(),
        };
        self.credential_age_days.get_or_create(&label).set(age_days);
        self.credential_over_max_age
            .get_or_create(&label)
            .set(i64::from(over_max_age));
    }

    /// Brings each counter up to a count kept elsewhere (read, then add the difference), under
    /// one lock so two scrapes at once do not both add it.
    fn mirror(&self, counts: &[(&Counter, u64)]) {
        let _mirroring = self
            .mirroring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &(counter, count) in counts {
            let counted = counter.get();
            if count > counted {
                counter.inc_by(count - counted);
            }
        }
    }

    /// Whether the listener's TLS is older than its files ([`crate::Shared::listener_tls_stale`]),
    /// and when the certificate it serves expires (0 when there is none to read).
    pub fn set_listener_tls(&self, stale: bool, not_after: Option<i64>) {
        self.listener_tls_stale.set(i64::from(stale));
        self.listener_certificate_expiry.set(not_after.unwrap_or(0));
    }

    /// The connections refused at `max_connections_per_source` so far.
    pub fn set_refused_per_source(&self, refused: u64) {
        self.mirror(&[(&self.connections_refused_per_source, refused)]);
    }

    /// Connections closed so far to make room for new ones: on the data-plane listener, and on
    /// the admin listener ([`crate::slots`]).
    pub fn set_closed_for_room(&self, gateway: u64, admin: u64) {
        self.mirror(&[
            (&self.connections_closed_for_room, gateway),
            (&self.admin_connections_closed_for_room, admin),
        ]);
    }

    /// The audit entries dropped so far ([`crate::audit::Audit::dropped`]).
    pub fn set_audit_dropped(&self, dropped: u64) {
        self.mirror(&[(&self.audit_entries_dropped, dropped)]);
    }

    /// Text exposition format.
    pub fn encode(&self, event_stats: &EventStats) -> String {
        // Mirror the writer's counters into the registry before encoding.
        self.mirror(&[
            (
                &self.events_written,
                event_stats.written.load(Ordering::Relaxed),
            ),
            (
                &self.events_errors,
                event_stats.write_errors.load(Ordering::Relaxed),
            ),
            (
                &self.event_rotations,
                event_stats.rotations.load(Ordering::Relaxed),
            ),
            (
                &self.event_rotation_failures,
                event_stats.rotation_failures.load(Ordering::Relaxed),
            ),
        ]);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls_line(metrics: &Metrics, caller: &str) -> String {
        let text = metrics.encode(&EventStats::default());
        let wanted = format!("caller=\"{caller}\"");
        text.lines()
            .find(|line| line.starts_with("postern_calls_total{") && line.contains(&wanted))
            .unwrap_or_else(|| panic!("no postern_calls_total series for {caller} in:\n{text}"))
            .to_string()
    }

    fn observe(metrics: &Metrics, caller: &Arc<str>) {
        let integration: Arc<str> = Arc::from("acme");
        metrics.observe_call(
            Some(&integration),
            Some(caller),
            Decision::Allow,
            200,
            "granted",
            Duration::from_millis(3),
        );
    }

    #[test]
    fn two_gateways_on_one_thread_count_into_their_own_series() {
        let (first, second) = (Metrics::new(), Metrics::new());
        let caller: Arc<str> = Arc::from("checkout");
        for _ in 0..3 {
            observe(&first, &caller);
            observe(&second, &caller);
            observe(&second, &caller);
        }
        assert!(calls_line(&first, "checkout").ends_with(" 3"));
        assert!(calls_line(&second, "checkout").ends_with(" 6"));
        let text = first.encode(&EventStats::default());
        assert!(
            text.contains("postern_call_duration_seconds_count{integration=\"acme\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn past_the_cache_limit_every_call_still_counts() {
        let metrics = Metrics::new();
        let callers: Vec<Arc<str>> = (0..SERIES_CACHE_LIMIT + 10)
            .map(|index| Arc::from(format!("caller-{index}")))
            .collect();
        for caller in callers.iter().chain(&callers[..5]) {
            observe(&metrics, caller);
        }
        assert!(calls_line(&metrics, "caller-0").ends_with(" 2"));
        assert!(calls_line(&metrics, "caller-4").ends_with(" 2"));
        assert!(
            calls_line(&metrics, &format!("caller-{}", SERIES_CACHE_LIMIT + 9)).ends_with(" 1")
        );
        // And the cache stayed bounded while the counts stayed exact.
        SERIES.with(|cell| {
            let cache = cell.borrow();
            assert!(cache.calls.len() + cache.durations.len() <= SERIES_CACHE_LIMIT);
        });
    }
}
