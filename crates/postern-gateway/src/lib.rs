//! `postern-gateway`: Postern's data plane and admin listener.
//!
//! A call arrives at `/<integration>/<vendor path>`; [`proxy`] runs it through named phases —
//! identify the caller, match the operation, authorize with Cedar, rate-limit, strip the caller's
//! credentials and inject the vendor's, dial a checked address over TLS, inspect the response —
//! and [`record`] turns it into one event and metrics. Everything one call learns lives in one
//! [`context::CallContext`].
//!
//! The compiled configuration ([`runtime::Runtime`]) is immutable and swapped atomically on
//! reload; in-flight calls finish on the version they started with.
//!
//! What this crate is not: it does not parse the config file (`postern-config`), decide policy
//! (`postern-policy`, which never sees hyper types) or classify addresses (`postern-netguard`).
//! It never formats a secret — vendor credential, caller token, admin token — into a log line,
//! event, metric or error message.

/// `tokio::io::AsyncWrite` for a wrapper `$wrapper<$io>` whose writes all pass untouched to its
/// field `$field` (vectored ones included): the wrappers that only watch or replay reads.
macro_rules! forward_async_write {
    ($wrapper:ident<$io:ident>, $field:ident) => {
        impl<$io: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<$io> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_shutdown(cx)
            }
        }
    };
}

pub mod admin;
pub mod audit;
pub mod body;
pub mod concurrency;
pub mod context;
pub mod deadline;
pub mod detect;
pub mod discovery;
pub mod echo;
pub mod error;
pub(crate) mod escapes;
pub mod events;
pub mod forward_proxy;
#[cfg(test)]
mod fuzz;
pub mod h1;
pub mod h1server;
pub mod h2streams;
pub mod intercept;
pub mod listener;
pub mod metrics;
pub mod oauth;
pub mod overrides;
pub mod proxy;
pub mod record;
pub mod runtime;
pub mod scan;
pub mod slots;
pub mod sources;
pub mod tls;
pub(crate) mod tokens;
pub mod upstream;
pub(crate) mod websocket;
pub mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use postern_config::Config;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::{EventFileOptions, EventSink};
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::runtime::{BuildInputs, ClientCache, LimiterCache, Runtime, TokenSourceCache};
use postern_vault::Vault;

/// Response header carrying the call's request id.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("postern-request-id");
/// Response header carrying the log index of the call's audit intent entry (a receipt).
pub const AUDIT_INDEX: http::HeaderName = http::HeaderName::from_static("postern-audit-index");
/// Request header a caller may use for its token instead of `Authorization`.
pub const CALLER_TOKEN: http::HeaderName = http::HeaderName::from_static("postern-caller-token");
/// File in `data_dir` holding the generated admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Event file in `data_dir`.
pub const EVENTS_FILE: &str = "events.jsonl";

/// (integration, caller, class, direction, UTC day) of the data-flow ledger.
type DataflowKey = (String, String, String, &'static str, String);

/// Refusals of calls with no caller (no or an unknown token, a malformed request) written to
/// the audit log per second, across all sources, after a burst of [`ANONYMOUS_AUDIT_BURST`]:
/// anyone who can reach the listener can send those, and the log keeps everything it is given,
/// so without a rate one flood of them would grow it by tens of MB a second until the disk is
/// full, and with `audit = "required"` no call could leave. Past it they are still answered,
/// evented and counted (`postern_audit_anonymous_unrecorded_total`); calls with a caller are
/// never held to it.
pub const ANONYMOUS_AUDIT_PER_SECOND: u32 = 100;
/// The burst of [`ANONYMOUS_AUDIT_PER_SECOND`].
pub const ANONYMOUS_AUDIT_BURST: u32 = 1000;

/// State shared by every connection.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub recorder: Recorder,
    pub vault: Arc<Vault>,
    pub audit: Arc<audit::Audit>,
    limiters: LimiterCache,
    clients: ClientCache,
    token_sources: TokenSourceCache,
    admin_token_sha256: Mutex<[u8; 32]>,
    draining: AtomicBool,
    /// Serializes rebuilds (reload, vault refresh) so none is lost.
    rebuild: Mutex<()>,
    /// Data-flow counts not yet written to the store: (integration, caller, class, direction, day).
    dataflow: Mutex<HashMap<DataflowKey, u64>>,
    pub credential_max_age_days: std::sync::atomic::AtomicU64,
    /// Whether the last reload could not use the listener's TLS files, so the TLS in use is
    /// older than what they hold (`postern_listener_tls_stale`).
    pub listener_tls_stale: AtomicBool,
    /// Postern's interception CA (forward proxy); `None` if it could not be loaded.
    pub intercept_ca: Option<Arc<intercept::InterceptCa>>,
    /// Destinations no integration claims, seen by the forward proxy.
    pub discovery: Arc<discovery::Discovery>,
    /// Open CONNECT tunnels.
    pub tunnels: std::sync::atomic::AtomicUsize,
    /// Open WebSocket sessions (`websocket.rs`): waited for at shutdown, as tunnels are.
    pub websocket_sessions: std::sync::atomic::AtomicUsize,
    /// Open (or opening) CONNECT tunnels by caller, for `[proxy] max_tunnels_per_caller`.
    pub tunnels_by_caller: forward_proxy::TunnelsByCaller,
    /// Open calls of integrations with concurrency limits, kept across reloads.
    pub open_calls: concurrency::OpenCalls,
    /// The data-plane listener's connection slots ([`listener::MAX_CONNECTIONS`]), held by each
    /// caller connection and by each tunnel opened on one.
    pub connection_slots: Arc<slots::Slots>,
    /// The admin listener's ([`listener::ADMIN_MAX_CONNECTIONS`]).
    pub admin_slots: Arc<slots::Slots>,
    /// The connections each client address holds on the data-plane listener, under
    /// `[gateway] max_connections_per_source`.
    pub per_source: Arc<sources::SourceLimit>,
    /// The connections each data-plane worker serves (`/metrics`).
    pub worker_load: workers::Load,
    /// Places for the public `/log/` tile reads ([`admin::LOG_READERS`]).
    pub log_reads: Arc<tokio::sync::Semaphore>,
    /// KiB of the public audit log's answers held until their clients take them
    /// ([`admin::PUBLIC_ANSWER_KIB`]).
    pub public_answers: Arc<tokio::sync::Semaphore>,
    /// The audit log's rate for refusals of calls with no caller ([`ANONYMOUS_AUDIT_PER_SECOND`]).
    pub anonymous_audit: governor::DefaultDirectRateLimiter,
    shutdown_signal: watch::Receiver<bool>,
    /// The time as of which open opaque tunnels and WebSocket sessions are decided again: set
    /// at each runtime swap (reload, vault change) and at each hour of UTC (Cedar rules read the
    /// hour and weekday); each also wakes at its caller's certificate's expiry
    /// ([`next_decision`]).
    tunnel_decisions: watch::Sender<SystemTime>,
}

impl Shared {
    /// Turns true when the gateway shuts down (tunnels close, intercepted connections drain).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_signal.clone()
    }

    /// Changes each time open opaque tunnels and WebSocket sessions are to be decided again (a
    /// runtime swapped in, a new hour), to the time as of which to decide them.
    pub fn tunnel_decisions(&self) -> watch::Receiver<SystemTime> {
        self.tunnel_decisions.subscribe()
    }

    /// Decides every open opaque tunnel again, as of `at`: the gateway does so at each runtime
    /// swap and each hour; tests use it to move the hour a tunnel's rules read.
    pub fn decide_tunnels_again(&self, at: SystemTime) {
        self.tunnel_decisions.send_replace(at);
    }

    /// Records a forward-proxy destination no integration claims.
    pub fn discovered(&self, observation: postern_discover::Observation) {
        self.discovery.record(observation);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Builds a runtime with the current vault contents and swaps it in: from a reloaded
    /// config (with the listener's TLS read from its files), or from the running one (read
    /// under the rebuild lock, so a reload that swapped in first is not undone), with the
    /// listener's TLS it holds or read again from the files it names.
    fn rebuild(&self, from: Rebuild) -> anyhow::Result<Vec<String>> {
        let _guard = self.rebuild.lock().expect("rebuild lock");
        let running = self.runtime.load_full();
        let (config, admin_token_sha256, reuse, listener_tls) = match from {
            Rebuild::Reload(reload) => {
                let Reload {
                    config,
                    admin_token_sha256,
                    listener_tls,
                } = *reload;
                (config, admin_token_sha256, None, listener_tls)
            }
            from_running => {
                let admin = *self.admin_token_sha256.lock().expect("admin token lock");
                let tls = match from_running {
                    Rebuild::ListenerTls => tls::listener_config(&running.config.gateway)
                        .map_err(|error| TlsFilesUnusable(tls_problem(&error)))?
                        .map(Arc::new),
                    _ => running.listener_tls.clone(),
                };
                ((*running.config).clone(), admin, Some(&*running), tls)
            }
        };
        // A refused build leaves the caches as they were (applied whole or not at all).
        let (clients, token_sources) = (self.clients.snapshot(), self.token_sources.snapshot());
        let built = Runtime::build(
            config,
            &BuildInputs {
                admin_token_sha256,
                limiters: &self.limiters,
                clients: &self.clients,
                token_sources: &self.token_sources,
                vault: Some(&self.vault),
                reuse,
                listener_tls,
            },
        );
        let runtime = match built {
            Ok(runtime) => runtime,
            Err(error) => {
                self.clients.restore(clients);
                self.token_sources.restore(token_sources);
                return Err(error);
            }
        };
        *self.admin_token_sha256.lock().expect("admin token lock") = admin_token_sha256;
        let notes = runtime.warnings();
        // What the caches hold for integrations this config no longer has (pools with their
        // idle vendor connections, rate-limit state, cached vendor tokens) goes now, not at
        // the next restart. Calls in flight keep what they hold.
        let kept = |name: &str| runtime.integrations.contains_key(name);
        self.clients.retain(kept);
        self.limiters.retain_used(&runtime);
        self.token_sources.retain(kept);
        // Carry last-used times over: they live on the runtime being replaced.
        let previous = self.runtime.swap(Arc::new(runtime));
        self.tunnel_decisions.send_replace(SystemTime::now());
        for (name, integration) in &previous.integrations {
            let at = integration.last_used_ms.swap(0, Ordering::Relaxed);
            if at > 0 {
                if let Some(current) = self.runtime.load().integrations.get(name) {
                    current.last_used_ms.fetch_max(at, Ordering::Relaxed);
                }
            }
        }
        Ok(notes)
    }

    /// Re-reads the vault (credentials, caller tokens) into a new runtime when it changed.
    /// Called by the poller and right after an admin-API change.
    pub fn refresh_from_vault(&self) -> anyhow::Result<bool> {
        let generation = self.vault.generation()?;
        if generation == self.runtime.load().vault_generation {
            return Ok(false);
        }
        let notes = self.rebuild(Rebuild::Vault)?;
        for note in notes {
            tracing::warn!(problem = %note, "after vault change");
        }
        tracing::info!(
            generation,
            "vault changed; credentials and caller tokens reloaded"
        );
        Ok(true)
    }

    /// Counts the data classes a call carried, for the data-flow ledger.
    pub fn note_dataflow(
        &self,
        context: &context::CallContext,
        scan: &scan::ScanSummary,
        direction: &'static str,
    ) {
        if scan.classes.is_empty() {
            return;
        }
        let day = events::rfc3339_millis(context.wall_start)[..10].to_string();
        let integration = context.integration.as_deref().unwrap_or("").to_string();
        let caller = context.caller.as_deref().unwrap_or("").to_string();
        let mut pending = self.dataflow.lock().expect("dataflow lock");
        for (class, count) in &scan.classes {
            *pending
                .entry((
                    integration.clone(),
                    caller.clone(),
                    class.to_string(),
                    direction,
                    day.clone(),
                ))
                .or_default() += *count as u64;
        }
    }

    /// Writes pending data-flow counts to the store.
    pub fn flush_dataflow(&self) {
        let pending = std::mem::take(&mut *self.dataflow.lock().expect("dataflow lock"));
        if pending.is_empty() {
            return;
        }
        let rows: Vec<postern_vault::DataflowRow> = pending
            .into_iter()
            .map(|((integration, caller, class, direction, day), count)| {
                postern_vault::DataflowRow {
                    integration,
                    caller,
                    class,
                    direction: direction.to_string(),
                    day,
                    count,
                }
            })
            .collect();
        if let Err(error) = self.vault.add_dataflow(&rows) {
            tracing::error!(%error, "could not write data-flow counts");
        }
    }

    /// Writes credential last-used times to the vault.
    fn flush_usage(&self) {
        self.flush_dataflow();
        self.discovery.flush_in_background();
        let runtime = self.runtime.load();
        let used: Vec<(String, i64)> = runtime
            .integrations
            .values()
            .filter_map(|i| {
                let at = i.last_used_ms.swap(0, Ordering::Relaxed);
                match (&i.vault_secret, at) {
                    (Some(name), at) if at > 0 => Some((name.clone(), at)),
                    _ => None,
                }
            })
            .collect();
        if !used.is_empty() {
            if let Err(error) = self.vault.touch(&used) {
                tracing::warn!(%error, "could not record credential use");
            }
        }
        match self.vault.erase_expired(now_ms()) {
            Ok(0) => {}
            Ok(erased) => tracing::info!(
                erased,
                "erased previous credential versions whose rollback window ended"
            ),
            Err(error) => tracing::warn!(%error, "could not erase expired credential versions"),
        }
        if let Ok(list) = self.vault.list() {
            let now = now_ms();
            let max_age = self.credential_max_age_days.load(Ordering::Relaxed) as i64;
            for meta in list {
                let age = meta.age_days(now);
                self.recorder.metrics.set_credential_age(
                    &meta.name,
                    age,
                    meta.state == postern_vault::SecretState::Active && age > max_age,
                );
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why the listener's TLS files could not be used, with the fix when it is a problem at one
/// of their keys.
fn tls_problem(error: &anyhow::Error) -> String {
    match error.downcast_ref::<postern_config::KeyProblem>() {
        Some(problem) => format!("{} (fix: {})", problem.message, problem.fix),
        None => format!("{error:#}"),
    }
}

/// The listener's TLS files could not be used ([`tls_problem`] says why and how to mend it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsFilesUnusable(String);

/// What [`Shared::rebuild`] builds the new runtime from.
enum Rebuild {
    /// A reloaded config.
    Reload(Box<Reload>),
    /// The running config, with the vault as it is now.
    Vault,
    /// The running config, with the listener's TLS files it names read again.
    ListenerTls,
}

/// What a reload hands [`Shared::rebuild`]: the new config, the admin token hash it names,
/// and the listener's TLS read from its files.
struct Reload {
    config: Config,
    admin_token_sha256: [u8; 32],
    listener_tls: Option<Arc<tls::ListenerTls>>,
}

/// A started gateway: its bound addresses and the handles to reload and stop it.
pub struct RunningGateway {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// The data plane's threads (`workers.rs`).
    workers: workers::Workers,
    accept_tasks: Vec<JoinHandle<()>>,
    gateway_graceful: Arc<GracefulShutdown>,
    admin_graceful: Arc<GracefulShutdown>,
    event_task: JoinHandle<()>,
    vault_poller: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    checkpoint_stop: watch::Sender<bool>,
    grace: Duration,
    /// `[gateway]` as the gateway started: the keys that need a restart keep these values.
    start_gateway: postern_config::GatewayConfig,
}

impl RunningGateway {
    /// Binds the listeners, opens the event file and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<RunningGateway> {
        Self::start_with_resolver(config, None).await
    }

    /// [`RunningGateway::start`], with every vendor host looked up by `resolver` instead of
    /// the system resolver (`None`). Its answers go through the same SSRF guard.
    pub async fn start_with_resolver(
        config: Config,
        resolver: Option<Arc<dyn postern_netguard::Resolve>>,
    ) -> anyhow::Result<RunningGateway> {
        // The listener's TLS files first (read only), then both addresses are taken (bound and
        // listening; connections wait in the backlog until the workers run) before anything is
        // written: a start that fails on an address in use leaves no data directory, key or log
        // behind.
        let listener_tls = tls::listener_config(&config.gateway)?.map(Arc::new);
        let gateway_sockets = workers::bind(
            config.gateway.listen,
            workers::count(config.gateway.workers),
        )?;
        // On this (the main) runtime: bound and listening, with `SO_REUSEADDR`.
        let admin_listener = TcpListener::bind(config.gateway.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "binding admin_listen address {}",
                    config.gateway.admin_listen
                )
            })?;
        let data_dir = config.gateway.data_dir.clone();
        create_private_dir(&data_dir)?;
        if let Some(problem) = data_dir_problem(&data_dir) {
            tracing::warn!(data_dir = %data_dir.display(), "{problem}");
        }
        // The vault first: a wrong or missing master key refuses start before anything is written.
        let vault = Arc::new(Vault::open(&data_dir)?);
        let admin_token_sha256 = admin_token_hash(&config, &data_dir)?;
        let audit = audit::Audit::open(
            &data_dir,
            config.gateway.audit_origin.as_deref(),
            Duration::from_millis(config.gateway.audit_timeout_ms),
        )
        .await?;
        let limiters = LimiterCache::default();
        // No dial may come back in: a caller would reach Postern through itself, its calls then
        // coming from Postern's own address.
        let clients = ClientCache::new(resolver)
            .with_own_listeners(vec![gateway_sockets.addr(), admin_listener.local_addr()?]);
        let token_sources = TokenSourceCache::default();
        let runtime = Runtime::build(
            config.clone(),
            &BuildInputs {
                admin_token_sha256,
                limiters: &limiters,
                clients: &clients,
                token_sources: &token_sources,
                vault: Some(&vault),
                reuse: None,
                listener_tls: listener_tls.clone(),
            },
        )?;
        for problem in &runtime.problems {
            tracing::error!(problem = %problem, "integration not ready");
        }
        for note in runtime.policy.notes() {
            tracing::warn!(%note, "custom policies");
        }
        for note in listener_tls.iter().flat_map(|tls| &tls.crl_notes) {
            tracing::warn!(%note, "client_crl");
        }
        let (events, event_task) = EventSink::start(EventFileOptions {
            path: data_dir.join(EVENTS_FILE),
            max_file_bytes: config.gateway.events_max_file_bytes,
            max_files: config.gateway.events_max_files,
        })
        .with_context(|| format!("opening {}", data_dir.join(EVENTS_FILE).display()))?;
        let metrics = Arc::new(Metrics::new());
        let detector = if config.gateway.detect {
            // Alerts rotate like events: the same size limit and number of files kept.
            Some(detect::Detector::start(
                &data_dir,
                detect::AlertFileOptions {
                    path: data_dir.join(detect::ALERTS_FILE),
                    max_file_bytes: config.gateway.events_max_file_bytes,
                    max_files: config.gateway.events_max_files,
                },
                metrics.clone(),
            )?)
        } else {
            None
        };
        let intercept_ca = match intercept::InterceptCa::load_or_create(
            &data_dir,
            &config.proxy.intercept_ca_names,
        ) {
            Ok(ca) => Some(Arc::new(ca)),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "TLS interception disabled: the CA could not be loaded");
                None
            }
        };
        let discovery = Arc::new(discovery::Discovery::open(&data_dir)?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            recorder: Recorder {
                events,
                metrics: metrics.clone(),
                detector: detector.clone(),
            },
            vault,
            audit,
            limiters,
            clients,
            token_sources,
            admin_token_sha256: Mutex::new(admin_token_sha256),
            draining: AtomicBool::new(false),
            rebuild: Mutex::new(()),
            dataflow: Mutex::new(HashMap::new()),
            listener_tls_stale: AtomicBool::new(false),
            credential_max_age_days: std::sync::atomic::AtomicU64::new(
                config.gateway.credential_max_age_days,
            ),
            intercept_ca,
            discovery,
            tunnels: std::sync::atomic::AtomicUsize::new(0),
            websocket_sessions: std::sync::atomic::AtomicUsize::new(0),
            tunnels_by_caller: forward_proxy::TunnelsByCaller::default(),
            open_calls: concurrency::OpenCalls::default(),
            connection_slots: slots::Slots::new(listener::MAX_CONNECTIONS),
            admin_slots: slots::Slots::new(listener::ADMIN_MAX_CONNECTIONS),
            per_source: sources::SourceLimit::new(config.gateway.max_connections_per_source),
            worker_load: gateway_sockets.load(),
            log_reads: Arc::new(tokio::sync::Semaphore::new(admin::LOG_READERS)),
            public_answers: Arc::new(tokio::sync::Semaphore::new(admin::PUBLIC_ANSWER_KIB)),
            anonymous_audit: governor::RateLimiter::direct(
                governor::Quota::per_second(
                    std::num::NonZeroU32::new(ANONYMOUS_AUDIT_PER_SECOND).expect("not zero"),
                )
                .allow_burst(std::num::NonZeroU32::new(ANONYMOUS_AUDIT_BURST).expect("not zero")),
            ),
            shutdown_signal: shutdown_rx.clone(),
            tunnel_decisions: watch::channel(SystemTime::now()).0,
        });
        shared.flush_usage();
        let vault_poller = Some(spawn_vault_poller(shared.clone()));
        let (checkpoint_stop, checkpoint_stop_rx) = watch::channel(false);
        tokio::spawn(run_tunnel_clock(
            Arc::downgrade(&shared),
            shutdown_rx.clone(),
        ));
        let checkpointer = Some(tokio::spawn(run_checkpointer(
            shared.audit.clone(),
            Duration::from_millis(config.gateway.audit_checkpoint_interval_ms),
            checkpoint_stop_rx,
        )));

        let admin_addr = admin_listener.local_addr()?;

        let gateway_graceful = Arc::new(GracefulShutdown::new());
        let admin_graceful = Arc::new(GracefulShutdown::new());
        let builder = listener::connection_builder(config.gateway.max_header_bytes);
        // Each TLS connection handshakes with the listener's TLS as the runtime holds it when
        // the connection arrives: a reload's rotated certificate or new `client_ca` applies
        // to the next handshake. (Whether the listener speaks TLS at all is fixed at start.)
        let tls = listener_tls.is_some().then(|| {
            let shared = shared.clone();
            Arc::new(move || shared.runtime.load().listener_tls.clone()) as listener::TlsSource
        });
        let gateway_accept = listener::Accept {
            tls,
            builder: builder.clone(),
            graceful: gateway_graceful.clone(),
            shutdown: shutdown_rx.clone(),
            slots: shared.connection_slots.clone(),
            per_source: shared.per_source.clone(),
            max_header_bytes: config.gateway.max_header_bytes,
            idle: Duration::from_millis(config.gateway.idle_timeout_ms),
            excuse_waits: true,
            on_malformed: Some(proxy::on_malformed(&shared)),
        };
        let (workers, listen_addr) = workers::Workers::start(gateway_sockets, {
            let shared = shared.clone();
            move |arrivals| {
                let shared = shared.clone();
                listener::accept_loop(
                    arrivals,
                    gateway_accept.clone(),
                    move |connection, request| proxy::handle(shared.clone(), connection, request),
                )
            }
        })
        .await?;
        let admin_task = tokio::spawn(listener::accept_loop(
            workers::Arrivals::single(admin_listener),
            listener::Accept {
                tls: None,
                builder: {
                    // Fewer streams than the gateway's: each may buffer an answer's
                    // `H2_SEND_BUFFER_BYTES` its client does not take, and public reads need
                    // no token.
                    let mut builder = builder;
                    builder
                        .http2()
                        .max_concurrent_streams(listener::ADMIN_MAX_CONCURRENT_STREAMS);
                    builder
                },
                graceful: admin_graceful.clone(),
                shutdown: shutdown_rx,
                // Its own few slots and a short idle limit: connections that never authenticate
                // cannot keep health probes and operators out for long.
                slots: shared.admin_slots.clone(),
                per_source: sources::SourceLimit::new(0),
                max_header_bytes: config.gateway.max_header_bytes,
                idle: Duration::from_millis(config.gateway.idle_timeout_ms)
                    .min(listener::ADMIN_IDLE),
                excuse_waits: false,
                on_malformed: None,
            },
            {
                let shared = shared.clone();
                move |_connection, request| admin::handle(shared.clone(), request)
            },
        ));
        tracing::info!(%listen_addr, %admin_addr, data_dir = %data_dir.display(), "postern is serving");
        Ok(RunningGateway {
            listen_addr,
            admin_addr,
            data_dir,
            shared,
            shutdown,
            workers,
            accept_tasks: vec![admin_task],
            gateway_graceful,
            admin_graceful,
            event_task,
            vault_poller,
            checkpointer,
            checkpoint_stop,
            grace: Duration::from_millis(config.gateway.shutdown_grace_ms),
            start_gateway: config.gateway.clone(),
        })
    }

    /// Swaps in a new configuration atomically. On error the running one stays.
    /// Listener addresses, whether the listener speaks TLS, and data_dir are fixed at start;
    /// changes to them are reported and need a restart. The listener's TLS files are read again.
    pub fn reload(&self, config: Config) -> anyhow::Result<Vec<String>> {
        let result = self.apply_reload(config);
        self.count_reload(result.is_ok());
        result
    }

    /// [`RunningGateway::reload`], before it is counted.
    fn apply_reload(&self, mut config: Config) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        // Compared with the values the gateway started with, not the last reload's, and put
        // back to them: a key that needs a restart takes effect nowhere until one.
        let changed = keep_start_values(&self.start_gateway, &mut config.gateway);
        if !changed.is_empty() {
            notes.push(format!(
                "[gateway] {} changed: these take effect only after a restart",
                changed.join(", ")
            ));
        }
        // Without `admin_token_sha256`, the token in `<data_dir>/admin-token` is read again (made
        // anew if it was deleted): an operator who takes a leaked hash out of the config, or
        // deletes the file, has the old token refused from this reload on, not at a restart.
        // A file that cannot be read keeps the token in use and is said, where that token is
        // the file's own: the rest of the reload (a revocation, say) must not wait on it. Where
        // the token in use is a configured hash the reload takes out (a leaked one, say), it
        // is refused instead: keeping it would keep what the operator is retiring.
        let running = *self
            .shared
            .admin_token_sha256
            .lock()
            .expect("admin token lock");
        let configured = self
            .shared
            .runtime
            .load()
            .config
            .gateway
            .admin_token_sha256
            .is_some();
        let hash = match admin_token_hash(&config, &self.data_dir) {
            Ok(hash) => hash,
            Err(error) if config.gateway.admin_token_sha256.is_none() && !configured => {
                tracing::warn!(error = %format!("{error:#}"), "the admin token file could not be read on reload; the admin token in use stays");
                notes.push(format!(
                    "{ADMIN_TOKEN_FILE} could not be read, so the admin token in use stays: {error:#}"
                ));
                running
            }
            Err(error) => return Err(error),
        };
        // The CA's names are fixed when it is made: a config that asks for others is refused
        // (the running one stays) rather than leaving clients to refuse the leaves.
        if let Some(ca) = &self.shared.intercept_ca {
            ca.check_names(&self.data_dir, &config.proxy.intercept_ca_names)?;
        }
        let max_age_days = config.gateway.credential_max_age_days;
        let per_source = config.gateway.max_connections_per_source;
        // The listener's files read again (a rotated certificate, another `client_ca` or
        // `client_crl`): new connections handshake with them, and connections already open
        // have their client certificates asked again under the new trust at their next request.
        // Files that cannot be used (a key written before its certificate, a list that does not
        // parse) keep the running ones, said in the notes: the rest of the reload (a caller's
        // revocation, say) must not wait on them.
        let read = tls::listener_config(&config.gateway);
        let stale = read.is_err();
        let listener_tls = match read {
            Ok(listener_tls) => listener_tls.map(Arc::new),
            Err(error) => {
                let why = tls_problem(&error);
                tracing::error!(error = %why, "the listener's TLS files could not be used; the running ones stay");
                notes.push(format!(
                    "the listener's TLS files could not be used, so the running ones stay: {why}"
                ));
                self.shared.runtime.load().listener_tls.clone()
            }
        };
        notes.extend(self.shared.rebuild(Rebuild::Reload(Box::new(Reload {
            config,
            admin_token_sha256: hash,
            listener_tls,
        })))?);
        self.shared
            .credential_max_age_days
            .store(max_age_days, Ordering::Relaxed);
        // Only once the reload applied: a refused one leaves the TLS, stale or not, as it was.
        self.shared
            .listener_tls_stale
            .store(stale, Ordering::Relaxed);
        self.shared.per_source.set(per_source);
        Ok(notes)
    }

    /// Reads the listener's TLS files again, as the running config names them, and swaps
    /// them in with nothing else changed: what a change to one of those files does. A
    /// certificate rotated in place is then served even while the config file holds an edit
    /// that a reload refuses (a full reload would wait on the edit being mended). Files that
    /// cannot be used keep the running TLS, with `postern_listener_tls_stale` at 1 until they
    /// can; the error names the file's key and the fix. Not counted as a config reload.
    pub fn reload_listener_tls(&self) -> anyhow::Result<Vec<String>> {
        let result = self.shared.rebuild(Rebuild::ListenerTls);
        // Stale only for the files' sake (another failure of the build is not theirs).
        let stale = match &result {
            Ok(_) => Some(false),
            Err(error) if error.is::<TlsFilesUnusable>() => Some(true),
            Err(_) => None,
        };
        if let Some(stale) = stale {
            self.shared
                .listener_tls_stale
                .store(stale, Ordering::Relaxed);
        }
        result
    }

    /// Counts a reload in `postern_config_reloads_total`, `applied` or `rejected`: one
    /// [`RunningGateway::reload`] counts itself; a file that does not parse or validate never
    /// reaches it, and whoever read the file counts it.
    pub fn count_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.shared
            .recorder
            .metrics
            .config_reloads
            .get_or_create(&metrics::ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight calls finish (up to `shutdown_grace_ms`), flushes events.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        if let Some(poller) = self.vault_poller {
            let _ = tokio::task::spawn_blocking(move || poller.join()).await;
        }
        // Blocking (SQLite, the vault): off the async threads. The discovery inventory's last
        // flush, below, waits for the one this may start.
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.flush_usage()).await;
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let mut workers = self.workers;
        workers.stopped_accepting().await;
        // Every accept loop has ended, so these are the last handles on the watchers; if one
        // were still held, the calls it watches could not be waited for: say so.
        let watchers = [
            ("gateway", Arc::try_unwrap(self.gateway_graceful).ok()),
            ("admin", Arc::try_unwrap(self.admin_graceful).ok()),
        ];
        for (listener, watcher) in &watchers {
            if watcher.is_none() {
                tracing::error!(
                    listener,
                    "a connection watcher is still held at shutdown; in-flight calls on this listener are not waited for"
                );
            }
        }
        let [(_, gateway), (_, admin)] = watchers;
        let drained = tokio::time::timeout(self.grace, async move {
            if let Some(gateway) = gateway {
                gateway.shutdown().await;
            }
            if let Some(admin) = admin {
                admin.shutdown().await;
            }
        })
        .await;
        // Tunnels saw the shutdown signal: intercepted ones finish their in-flight requests;
        // WebSocket sessions close, and are recorded.
        let deadline = tokio::time::Instant::now() + self.grace;
        let open = || {
            self.shared.tunnels.load(Ordering::Relaxed)
                + self.shared.websocket_sessions.load(Ordering::Relaxed)
        };
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if drained.is_err() || open() > 0 {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "calls still in flight after the shutdown grace period; closing them"
            );
        }
        workers.finish().await;
        let discovery = self.shared.discovery.clone();
        let _ = tokio::task::spawn_blocking(move || discovery.flush()).await;
        self.shared.recorder.events.flush().await;
        if let Some(detector) = self.shared.recorder.detector.clone() {
            let _ = tokio::task::spawn_blocking(move || detector.stop()).await;
        }
        // Last: let queued audit entries land, sign a final checkpoint, stop the sequencer.
        let _ = self.checkpoint_stop.send(true);
        if let Some(checkpointer) = self.checkpointer {
            let _ = checkpointer.await;
        }
        let audit = self.shared.audit.clone();
        // Held detached entries (outcomes, refusals) first, so the checkpoint covers them.
        let _ = audit.ledger.flush().await;
        let _ = tokio::task::spawn_blocking(move || audit.ledger.checkpoint()).await;
        self.shared.audit.ledger.close().await;
        drop(self.shared);
        // The writer ends when the last sink handle is gone; do not wait forever for stragglers.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.event_task).await;
    }
}

/// Sets the keys of `new` that take effect only at a restart back to their `start` values;
/// returns the names of those that differed.
fn keep_start_values(
    start: &postern_config::GatewayConfig,
    new: &mut postern_config::GatewayConfig,
) -> Vec<&'static str> {
    let mut changed = Vec::new();
    // Whether the listener speaks TLS is fixed at start (its sockets are served one way or
    // the other); while it does, its files are read again at each reload, whatever their paths.
    if new.tls_cert.is_some() != start.tls_cert.is_some() {
        changed.push("tls_cert");
        new.tls_cert = start.tls_cert.clone();
        new.tls_key = start.tls_key.clone();
        new.client_ca = start.client_ca.clone();
        new.client_crl = start.client_crl.clone();
    }
    macro_rules! keep {
        (restart_only: [$($key:ident),* $(,)?], reloadable: [$($live:ident),* $(,)?]) => {
            // Every field is named in one list or the other, with no `..`: a new field does
            // not compile until it is sorted into one.
            let postern_config::GatewayConfig { $($key: _,)* $($live: _,)* } = start;
            $(
                if new.$key != start.$key {
                    changed.push(stringify!($key));
                    new.$key = start.$key.clone();
                }
            )*
        };
    }
    keep!(
        restart_only: [
            listen,
            admin_listen,
            data_dir,
            events_max_file_bytes,
            events_max_files,
            max_header_bytes,
            shutdown_grace_ms,
            idle_timeout_ms,
            workers,
            detect,
            audit_origin,
            audit_timeout_ms,
            audit_checkpoint_interval_ms,
        ],
        reloadable: [
            max_connections_per_source,
            tls_cert,
            tls_key,
            client_ca,
            client_crl,
            admin_token_sha256,
            policies,
            credential_max_age_days,
            scan_rules,
        ]
    );
    changed
}

/// Has open opaque tunnels decided again at each new hour of UTC, the finest time a Cedar rule
/// reads (`context.hour`, `context.weekday`), so a tunnel opened in a permitted hour closes
/// once that hour is over. Looks at the clock at least once a minute, so a clock set forward
/// or back is caught up with. Ends at shutdown.
async fn run_tunnel_clock(shared: std::sync::Weak<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut hour = utc_hour(SystemTime::now());
    loop {
        let wait = until_next_hour(SystemTime::now()).min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = SystemTime::now();
        if utc_hour(now) == hour {
            continue;
        }
        hour = utc_hour(now);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.decide_tunnels_again(now);
    }
}

/// Waits until open tunnels and WebSocket sessions are to be decided again: a change of
/// `decisions` (a runtime swapped in, a new hour), or the end of the client certificate they
/// were opened with (`expires`, while it is still ahead); the time as of which to decide.
/// `None` once the gateway is gone.
pub(crate) async fn next_decision(
    decisions: &mut watch::Receiver<SystemTime>,
    expires: Option<SystemTime>,
) -> Option<SystemTime> {
    // A second past `notAfter`, the certificate's last valid second.
    let until = expires.and_then(|end| {
        (end + Duration::from_secs(1))
            .duration_since(SystemTime::now())
            .ok()
    });
    let expired = async {
        match until {
            Some(until) => tokio::time::sleep(until).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        changed = decisions.changed() => {
            changed.ok()?;
            Some(*decisions.borrow_and_update())
        }
        _ = expired => Some(SystemTime::now()),
    }
}

/// Hours since the Unix epoch, UTC.
fn utc_hour(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 3600)
}

/// How long from `at` until just past the next hour of UTC begins.
fn until_next_hour(at: SystemTime) -> Duration {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let next = Duration::from_secs((since.as_secs() / 3600 + 1) * 3600);
    next - since + Duration::from_millis(5)
}

/// Signs a checkpoint every `interval` when the log grew; stops on `stop`.
async fn run_checkpointer(
    audit: Arc<audit::Audit>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let ledger = audit.clone();
        match tokio::task::spawn_blocking(move || ledger.ledger.checkpoint()).await {
            Ok(Err(error)) => tracing::error!(%error, "could not sign an audit checkpoint"),
            Err(error) => tracing::error!(%error, "checkpoint task failed"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls the vault's generation (every 250 ms) so changes made by `postern creds` or
/// `postern callers` in another process take effect, and records credential use every 5 s.
/// Stops when the gateway starts draining.
fn spawn_vault_poller(shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    // A weak handle: if the gateway is dropped without `shutdown` (a panicking test, say), the
    // poller ends instead of keeping the shared state — and the event writer — alive.
    let shared = Arc::downgrade(&shared);
    std::thread::Builder::new()
        .name("postern-vault-poller".to_string())
        .spawn(move || {
            let mut ticks: u32 = 0;
            // A refresh that fails fails again at every tick until the vault changes: said once.
            let mut last_error: Option<String> = None;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if shared.is_draining() {
                    return;
                }
                match shared.refresh_from_vault() {
                    Ok(_) => last_error = None,
                    Err(error) => {
                        let error = format!("{error:#}");
                        if last_error.as_ref() != Some(&error) {
                            tracing::error!(%error, "vault refresh failed; keeping the current credentials");
                            last_error = Some(error);
                        }
                    }
                }
                ticks += 1;
                if ticks.is_multiple_of(20) {
                    shared.flush_usage();
                }
            }
        })
        .expect("spawning the vault poller thread")
}

pub(crate) fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    // 0700 from creation (parents created with it too); an existing directory is narrowed
    // below.
    postern_keyfile::create_private_dir(path)
        .with_context(|| format!("creating data_dir {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// What is wrong with `data_dir` as a home for the vault, the keys and the audit log, if
/// anything: owned by another user, or writable by group or others (a mount that could not be
/// made private). Whoever can write it can replace `vault.db` or the audit log (key files
/// planted there are refused: `postern_keyfile::read_private_file`).
pub fn data_dir_problem(data_dir: &Path) -> Option<String> {
    if let Some(problem) = postern_keyfile::writable_by_others(data_dir) {
        return Some(format!("data_dir {problem}: they can replace the vault and the audit log in it; give it to postern's user (`chown`) and `chmod 700` it (or mount it so)"));
    }
    postern_keyfile::replaceable_by_others(data_dir).map(|problem| {
        format!("data_dir {problem} (with the vault and the audit log); put data_dir under directories only postern's user or root may write (`chmod o-w,g-w`, or the sticky bit)")
    })
}

/// The admin token's hash: from the config, else from `<data_dir>/admin-token`, generated with
/// mode 0600 on first start.
pub fn admin_token_hash(config: &Config, data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    if let Some(hash) = &config.gateway.admin_token_sha256 {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hash, &mut out).context("admin_token_sha256 must be 64 hex digits")?;
        return Ok(out);
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = match postern_keyfile::read_private_file(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token("pat_");
            write_private_file(&path, format!("{token}\n").as_bytes())?;
            tracing::info!(path = %path.display(), "generated an admin token");
            token
        }
        // Another user's file, or one others may read: whoever planted or read it would hold
        // the admin API.
        Err(error) if postern_keyfile::is_not_private(&error) => anyhow::bail!(
            "{error}; the admin token must be readable by postern's user alone: delete the file to \
             have a new token generated, or `chown` it to that user and `chmod 600` it"
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading the admin token {}", path.display()))
        }
    };
    if token.is_empty() {
        anyhow::bail!(
            "{} is empty; delete it to have a new admin token generated",
            path.display()
        );
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Refuses a config whose caller has the admin token's hash ([`runtime::Runtime::build`], so at
/// start, reload and every vault refresh). `postern check` refuses one equal to a configured
/// `admin_token_sha256`; this covers the token generated into `<data_dir>/admin-token`, which
/// only the gateway reads.
pub(crate) fn refuse_admin_token_for_callers(
    config: &Config,
    admin: &[u8; 32],
) -> anyhow::Result<()> {
    let admin = hex::encode(admin);
    match config
        .callers
        .iter()
        .find(|caller| caller.token_sha256.as_deref() == Some(admin.as_str()))
    {
        Some(caller) => anyhow::bail!(
            "caller `{}` has the admin token's hash (the token in {}/{ADMIN_TOKEN_FILE}): give the caller a token of its own (`postern callers token {}`); a caller's token must never open the admin API",
            caller.name,
            config.gateway.data_dir.display(),
            caller.name
        ),
        None => Ok(()),
    }
}

/// The prefix of the caller tokens `postern callers token` makes.
pub const CALLER_TOKEN_PREFIX: &str = "pst_";
/// Random bytes in a token [`new_token`] makes.
const TOKEN_RANDOM_BYTES: usize = 32;
/// Characters of a token's random part: its bytes in base64url without padding.
pub const TOKEN_RANDOM_CHARS: usize = (TOKEN_RANDOM_BYTES * 4).div_ceil(3);

/// A new random token: prefix + `TOKEN_RANDOM_BYTES` random bytes, base64url.
pub fn new_token(prefix: &str) -> String {
    use base64::Engine as _;
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of a token, as the config stores it.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a key or token file readable by its owner only, whole or not at all
/// ([`postern_keyfile::create_private_file`]).
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    postern_keyfile::create_private_file(path, contents)
        .with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    /// A caller whose hash is the generated admin token's is refused (at start and at reload),
    /// naming the caller and the fix.
    #[test]
    fn a_caller_with_the_admin_tokens_hash_is_refused() {
        use sha2::Digest as _;
        let admin: [u8; 32] = sha2::Sha256::digest(b"pat_the_admin_token").into();
        let config = |hash: &str| {
            postern_config::parse(
                &format!(
                    "[gateway]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n\n[[callers]]\nname = \"checkout\"\ntoken_sha256 = \"{hash}\"\n"
                ),
                std::path::Path::new("postern.toml"),
            )
            .unwrap()
        };
        let error = super::refuse_admin_token_for_callers(&config(&hex::encode(admin)), &admin)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("caller `checkout` has the admin token's hash"),
            "{error}"
        );
        assert!(error.contains("postern callers token checkout"), "{error}");
        super::refuse_admin_token_for_callers(&config(&"ab".repeat(32)), &admin).unwrap();
    }

    /// The tunnel clock wakes just past each hour of UTC, whatever the time within the hour.
    #[test]
    fn the_tunnel_clock_wakes_just_past_the_next_hour() {
        use std::time::{Duration, UNIX_EPOCH};
        let hour = UNIX_EPOCH + Duration::from_secs(493_000 * 3600);
        for (at, wait_ms) in [
            (hour, 3_600_005),
            (hour + Duration::from_millis(1), 3_600_004),
            (hour + Duration::from_secs(3599), 1_005),
            (hour + Duration::from_millis(3_599_999), 6),
        ] {
            assert_eq!(super::until_next_hour(at), Duration::from_millis(wait_ms));
            let woken = at + super::until_next_hour(at);
            assert_eq!(super::utc_hour(woken), super::utc_hour(at) + 1);
        }
    }

    /// A private file is whole at its place or not there: written under a temporary name of
    /// its own, which is gone after; an existing file is never overwritten; the mode is 0600.
    #[test]
    fn a_private_file_is_created_whole_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        super::write_private_file(&path, b"pat_whole\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"pat_whole\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin-token"], "no temporary file is left");
        assert!(super::write_private_file(&path, b"another\n").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"pat_whole\n");
    }

    /// A data_dir others may write (a mount that could not be made private) is named in a
    /// warning with the fix; a private one is not.
    #[test]
    fn a_data_dir_others_may_write_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(super::data_dir_problem(dir.path()), None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let problem = super::data_dir_problem(dir.path()).unwrap();
        assert!(
            problem.contains("mode 777") && problem.contains("chmod 700"),
            "{problem}"
        );
    }

    /// An admin token file others may read or change (one planted in a shared data_dir, say)
    /// is refused with the fix, not trusted; the generated one is private and read back.
    #[test]
    fn an_admin_token_file_others_may_read_is_refused() {
        use sha2::Digest as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = postern_config::parse(
            "[gateway]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n",
            std::path::Path::new("postern.toml"),
        )
        .unwrap();
        let generated = super::admin_token_hash(&config, dir.path()).unwrap();
        assert_eq!(
            super::admin_token_hash(&config, dir.path()).unwrap(),
            generated
        );

        let path = dir.path().join(super::ADMIN_TOKEN_FILE);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "pat_planted\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = format!(
            "{:#}",
            super::admin_token_hash(&config, dir.path()).unwrap_err()
        );
        assert!(error.contains("mode 644"), "{error}");
        assert!(error.contains("delete the file"), "{error}");
        assert!(!error.contains("pat_planted"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let planted: [u8; 32] = sha2::Sha256::digest(b"pat_planted").into();
        assert_eq!(
            super::admin_token_hash(&config, dir.path()).unwrap(),
            planted
        );
    }
}
