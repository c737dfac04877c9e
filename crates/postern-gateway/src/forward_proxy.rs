//! Forward-proxy mode: the gateway listener also answers `CONNECT host:port` and absolute-form
//! requests (`GET http://host/path`), so apps that only know `HTTP(S)_PROXY` go through Postern.
//!
//! ```text
//! CONNECT / absolute-form
//!   → proxy_caller   Proxy-Authorization (Basic password or Bearer) or client cert   (407)
//!   → target         host:port, registered integration claiming the host?
//!      registered, intercept = true   → 200, TLS with a leaf from Postern's CA, then every
//!                                       request runs the path-mode pipeline (proxy::handle_call)
//!      registered, intercept = false  → caller needs a grant on the integration; tunnel with
//!                                       bytes and timing only (mode "tunnel")
//!      unregistered                   → host policy (ports, deny, allow, mode), SSRF guard,
//!                                       tunnel or plain-HTTP forward; recorded in discovery
//! ```
//!
//! Every destination is resolved and checked by the SSRF guard, and Postern dials the address
//! it checked (`upstream::dial`). Tunnels end when either side closes, after `idle_timeout_ms`
//! without traffic, or at shutdown.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use crate::body::CallerBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::body::{ForwardBody, GatewayBody, PendingAudit, ResponseBody};
use crate::context::{AuthMethod, CallContext, ConnectionInfo, TunnelInfo};
use crate::error::CallError;
use crate::events::Decision;
use crate::proxy::{Progress, Unanswered};
use crate::record::PendingRecord;
use crate::runtime::{ByCertificate, IntegrationRuntime, Runtime};
use crate::upstream::dial;
use crate::Shared;
use postern_discover::{Observation, ObservationSource, Scheme};
use postern_tlog::RecordKind;

/// Status recorded when the TLS handshake inside an intercepted tunnel fails (nginx's 495).
pub const INTERCEPTION_REFUSED_STATUS: u16 = 495;

/// Who opened a proxy connection.
struct ProxyCaller {
    name: Arc<str>,
    auth: AuthMethod,
    token: Option<Zeroizing<Vec<u8>>>,
}

/// The CONNECT tunnels each caller holds, open or being opened (`[proxy]
/// max_tunnels_per_caller`): one caller cannot take every connection slot of the listener.
#[derive(Default)]
pub struct TunnelsByCaller(postern_netguard::PerCaller);

/// One tunnel's place among its caller's, given back when dropped (the tunnel closed, or the
/// CONNECT refused before it opened).
pub type TunnelPlace = postern_netguard::CallerPlace;

impl TunnelsByCaller {
    /// A place for one more of `caller`'s tunnels, unless it holds `limit` already.
    fn take(&self, caller: &Arc<str>, limit: u32) -> Result<TunnelPlace, CallError> {
        self.0.take(caller, limit as usize).ok_or_else(|| {
            CallError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tunnels",
                format!("this caller has {limit} tunnels and plain-HTTP proxy calls open, the most `[proxy] max_tunnels_per_caller` allows; close some (reuse connections), or raise the limit"),
            )
        })
    }
}

/// An open tunnel, from its `200` until its task ends (a panic included): counted in
/// [`Shared::tunnels`], holding its caller's [`TunnelPlace`], and standing as a call in flight
/// on the connection it was opened on, so that connection's idle limit leaves it to its own.
struct OpenTunnel {
    shared: Arc<Shared>,
    _place: TunnelPlace,
    _outer: crate::deadline::Waiting,
}

impl OpenTunnel {
    fn new(shared: &Arc<Shared>, place: TunnelPlace, connection: &ConnectionInfo) -> Self {
        shared.tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel {
            shared: shared.clone(),
            _place: place,
            _outer: connection.in_flight().wait(),
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.shared.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a CONNECT or absolute-form target's authority holds the caller's own token, in any
/// case: a host name is case-insensitive, and clients lowercase it.
fn own_token_in_authority(authority: &str, own: Option<&[u8]>) -> bool {
    own.filter(|own| !own.is_empty()).is_some_and(|own| {
        crate::proxy::url_holds_a_caller_token(
            &Zeroizing::new(authority.to_ascii_lowercase().into_bytes()),
            Some(&Zeroizing::new(own.to_ascii_lowercase())),
        )
    })
}

/// `CONNECT host:port`.
pub async fn handle_connect(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<CallerBody>,
) -> Response<GatewayBody> {
    let runtime = shared.runtime.load_full();
    let raw_target = request.uri().authority().map_or("", |a| a.as_str());
    let mut context = CallContext::new(
        &connection,
        request.method(),
        request.version(),
        shared.audit.target_hmac(raw_target),
    );
    context.mode = Some("tunnel");
    // Until `connect` returns, a caller that hangs up (while the destination is dialled, say)
    // leaves the call recorded as `caller_closed`; an open tunnel records itself when it closes.
    let mut call = Unanswered::new(&shared, context);
    let result = connect(
        &shared,
        &runtime,
        &connection,
        &mut call.context,
        &mut call.progress,
        request,
    )
    .await;
    call.answered();
    match result {
        Ok(response) => response,
        Err(error) => {
            // What a client sent after its CONNECT, before the answer (an optimistic TLS
            // hello, a request meant for the tunnel), is not a request to Postern: the
            // connection closes after the refusal, as Squid's does.
            // Over h2 that header is not sent, and other streams may be tunnels: there a
            // refusal closes the connection (with a GOAWAY) only when it has identified no
            // caller, as any refusal does.
            let mut response = crate::proxy::refuse(&shared, &call.context, &call.progress, &error);
            crate::proxy::close_after_refusal(&connection, &call.context, &mut response);
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

async fn connect(
    shared: &Arc<Shared>,
    runtime: &Arc<Runtime>,
    connection: &Arc<ConnectionInfo>,
    context: &mut CallContext,
    progress: &mut Progress,
    request: Request<CallerBody>,
) -> Result<Response<GatewayBody>, CallError> {
    enabled(runtime)?;
    let (host, port) = connect_target(request.uri())?;
    // A target holding a caller token is refused before its host is recorded (event,
    // discovery) or looked up in DNS: any caller's first, then, once the caller is known, its
    // own (which need not look like one Postern made), in any case. Checked as sent: the host
    // is lowercased.
    let sent = request
        .uri()
        .authority()
        .map_or("", |authority| authority.as_str());
    if crate::proxy::url_holds_a_caller_token(sent.as_bytes(), None) {
        return Err(crate::proxy::token_in_url());
    }
    context.host = Some(Arc::from(host.as_str()));
    let caller = proxy_caller(runtime, connection, context, request.headers())?;
    if own_token_in_authority(sent, caller.token.as_deref().map(Vec::as_slice)) {
        context.host = None;
        return Err(crate::proxy::token_in_url());
    }
    let proxy = &runtime.proxy;
    let place = shared
        .tunnels_by_caller
        .take(&caller.name, proxy.config.max_tunnels_per_caller)?;

    if let Some(integration) = proxy.integration_for_host(&host).cloned() {
        context.integration = Some(integration.name.clone());
        registered_port(runtime, &integration, port)?;
        if integration.config.intercept {
            context.mode = Some("intercept");
            return intercept(
                shared,
                runtime,
                connection,
                context,
                caller,
                &integration,
                host,
                request,
                place,
            );
        }
        authorize_tunnel(runtime, &integration, context, context.wall_start)?;
        // Granted, as a path-mode call is before its vendor is dialled: what befalls the dial
        // (a refused address, the caller hanging up) is recorded as an allowed call's end.
        progress.authorized = true;
        // The tunnel's requests are not seen, so not counted one by one: its opening is one call
        // under the integration's rate limit, and it holds one place under its concurrency
        // limits while it is open (the places go with the context into the tunnel's task).
        crate::proxy::rate_limit(&integration, context)?;
        context.places = shared.open_calls.admit(&integration, &caller.name)?;
        let connect_timeout = Duration::from_millis(integration.config.connect_timeout_ms);
        let (upstream, addr) = dial(
            integration.client.guard(),
            &host,
            port,
            connect_timeout,
            Some(&caller.name),
        )
        .await
        .map_err(|error| crate::proxy::connect_error(&host, &error))?;
        context.upstream_addr = Some(addr);
        progress.intent_index =
            crate::proxy::record_intent(shared, Some(&integration), context).await?;
        let grant = TunnelGrant {
            caller,
            certificate: connection.certificate.clone(),
            host,
            port,
            integration: Some(integration.name.clone()),
        };
        return Ok(open_tunnel(
            shared,
            runtime,
            connection,
            context,
            request,
            upstream,
            "tunnel",
            grant,
            progress.intent_index,
            place,
        ));
    }

    // Unregistered: host policy, then the guard; recorded in discovery either way.
    let decision = proxy.policy.decide(&caller.name, &host, port);
    if !decision.allowed {
        shared.discovered(sighting(context, &host, port, None, true));
        return Err(host_refused(decision.reason, &host, port));
    }
    let connect_timeout = Duration::from_millis(proxy.config.connect_timeout_ms);
    let (upstream, addr) = match dial(
        proxy.plain_client.guard(),
        &host,
        port,
        connect_timeout,
        Some(&caller.name),
    )
    .await
    {
        Ok(dialled) => dialled,
        Err(error) => {
            // Refused by the guard, or a host that is down or unknown: only the first is
            // the gateway's refusal.
            let refused = error.is_refusal();
            shared.discovered(sighting(context, &host, port, None, refused));
            return Err(crate::proxy::connect_error(&host, &error));
        }
    };
    context.upstream_addr = Some(addr);
    // Authorized once the guard let the address through: a refused address is a denial.
    progress.authorized = true;
    progress.intent_index = crate::proxy::record_intent(shared, None, context).await?;
    let grant = TunnelGrant {
        caller,
        certificate: connection.certificate.clone(),
        host,
        port,
        integration: None,
    };
    Ok(open_tunnel(
        shared,
        runtime,
        connection,
        context,
        request,
        upstream,
        decision.reason,
        grant,
        progress.intent_index,
        place,
    ))
}

/// What an opaque tunnel was opened for, to decide again whether it still may stay open when
/// a new runtime is swapped in (a reload, a vault change) and at each new hour: its requests are
/// never seen, so this is the only check after it opens.
struct TunnelGrant {
    caller: ProxyCaller,
    /// The client certificate of the connection it was opened on (its caller's credential
    /// when `caller.auth` is `Mtls`).
    certificate: Option<Arc<crate::tls::ClientCertificate>>,
    host: String,
    port: u16,
    /// The integration whose host it reaches; `None` for an unregistered destination.
    integration: Option<Arc<str>>,
}

impl TunnelGrant {
    /// Whether `runtime` still opens this tunnel at time `at`: the same caller for the same
    /// credential, and the grant or host policy that let it open (Cedar's hour and weekday as
    /// of `at`).
    fn still_allowed(
        &self,
        runtime: &Runtime,
        context: &mut CallContext,
        at: SystemTime,
    ) -> Result<(), CallError> {
        enabled(runtime)?;
        let token = self.caller.token.as_deref().map(Vec::as_slice);
        let certificate = self.certificate.as_deref();
        if !runtime.still_names(&self.caller.name, self.caller.auth, certificate, token, at) {
            return Err(CallError::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy_auth_required",
                "the tunnel's caller credential is no longer known (revoked, or the caller removed)",
            ));
        }
        let proxy = &runtime.proxy;
        match (proxy.integration_for_host(&self.host), &self.integration) {
            (Some(integration), Some(name))
                if integration.name == *name && !integration.config.intercept =>
            {
                registered_port(runtime, integration, self.port)?;
                authorize_tunnel(runtime, integration, context, at)?;
                // The address the tunnel dialled, against the integration's guard as it stands
                // now (a network taken out of `allow_private_networks` closes the tunnels into it).
                checked_again(&self.host, context, integration.client.guard())
            }
            (None, None) => {
                let decision = proxy
                    .policy
                    .decide(&self.caller.name, &self.host, self.port);
                if !decision.allowed {
                    return Err(host_refused(decision.reason, &self.host, self.port));
                }
                // The address the tunnel dialled, against the guard as it stands now (a
                // network added to `deny_hosts` closes the tunnels into it).
                checked_again(&self.host, context, proxy.plain_client.guard())
            }
            _ => Err(CallError::forbidden(
                "host_changed",
                "the integration that owns this host changed; open a new tunnel",
            )),
        }
    }
}

/// The address an open tunnel to `host` dialled (`context.upstream_addr`), checked against
/// `guard` as a new runtime has it.
fn checked_again(
    host: &str,
    context: &CallContext,
    guard: &postern_netguard::Guard,
) -> Result<(), CallError> {
    match context.upstream_addr.map(|addr| guard.check(addr.ip())) {
        Some(Err(denied)) => Err(crate::proxy::connect_error(
            host,
            &crate::upstream::ConnectError::Denied(denied),
        )),
        _ => Ok(()),
    }
}

/// Returns the refusal once `grant`'s tunnel, decided again (a runtime swapped in, a new hour,
/// the expiry of the client certificate that identified its caller), is no longer allowed; pending while it is. `decisions` was subscribed to after the runtime
/// that opened the tunnel was loaded, so it is first decided at once, as of now: a swap in
/// between is looked at too.
async fn revoked(
    shared: &Shared,
    grant: &TunnelGrant,
    context: &mut CallContext,
    decisions: &mut tokio::sync::watch::Receiver<SystemTime>,
) -> CallError {
    let mut at = SystemTime::now();
    loop {
        let runtime = shared.runtime.load_full();
        // A tunnel still allowed keeps the policy it opened under in its record (its intent
        // names it); a refused one names the policy that refused it.
        let opened_under = context.policy_id.clone();
        match grant.still_allowed(&runtime, context, at) {
            Ok(()) => context.policy_id = opened_under,
            Err(refusal) => return refusal,
        }
        // A tunnel its caller's certificate opened is decided again when that expires.
        let expires = grant.caller.auth.expiry(grant.certificate.as_deref());
        match crate::next_decision(decisions, expires).await {
            Some(next) => at = next,
            None => return std::future::pending().await,
        }
    }
}

/// The reason an opaque tunnel's record gives when a configuration or vault change, a new
/// hour, or its caller's certificate expiring closed it.
const TUNNEL_REVOKED: &str = "tunnel_revoked";

/// Answers 200 and splices the client and the upstream until either closes, the tunnel idles
/// out, a configuration or vault change (or a new hour, or its caller's certificate expiring)
/// no longer allows it, or the gateway shuts down; then
/// records the event (bytes each way, duration).
#[allow(clippy::too_many_arguments)]
fn open_tunnel(
    shared: &Arc<Shared>,
    runtime: &Runtime,
    connection: &Arc<ConnectionInfo>,
    context: &mut CallContext,
    request: Request<CallerBody>,
    upstream: TcpStream,
    reason: &'static str,
    grant: TunnelGrant,
    intent_index: Option<u64>,
    place: TunnelPlace,
) -> Response<GatewayBody> {
    let shared = shared.clone();
    let idle = Duration::from_millis(runtime.proxy.config.idle_timeout_ms);
    let mut context = context.take();
    let mut shutdown = shared.shutdown_signal();
    let mut decisions = shared.tunnel_decisions();
    // Holds the connection's slot on the listener while the tunnel is open (hyper's connection
    // task has ended once it handed the socket over).
    let open = OpenTunnel::new(&shared, place, connection);
    let connection = connection.clone();
    tokio::spawn(async move {
        let _held = (connection, open);
        let counts = Arc::new(TunnelCounts::default());
        let mut reason = reason;
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                let mut check = context.take();
                tokio::select! {
                    _ = splice(client, upstream, counts.clone(), idle) => {}
                    _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {}
                    refusal = revoked(&shared, &grant, &mut check, &mut decisions) => {
                        tracing::info!(caller = %grant.caller.name, host = %grant.host, refusal = refusal.code, "an open tunnel is no longer allowed after a configuration or vault change, its client certificate's expiry, or in this hour; closed");
                        reason = TUNNEL_REVOKED;
                    }
                }
                context = check;
            }
            // The tunnel's record below covers it: 0 bytes each way.
            Err(error) => tracing::debug!(%error, "CONNECT upgrade failed"),
        }
        let discovered = grant
            .integration
            .is_none()
            .then(|| (grant.host.clone(), grant.port));
        let sent = counts.client_to_upstream.load(Ordering::Relaxed);
        let received = counts.upstream_to_client.load(Ordering::Relaxed);
        context.request_body.bytes.store(sent, Ordering::Relaxed);
        shared
            .recorder
            .record_call(&context, 200, Decision::Allow, reason, received, false);
        let record = shared.audit.record(
            RecordKind::Outcome,
            &context,
            Some(&crate::audit::Outcome {
                decision: postern_tlog::Decision::Allow,
                reason,
                status: 200,
                response_bytes: received,
                intent_index,
            }),
        );
        shared.audit.append_later(record, &context.request_id);
        if let Some((host, port)) = discovered {
            let mut seen = sighting(&context, &host, port, counts.scheme(), false);
            seen.bytes_out = sent;
            seen.bytes_in = received;
            shared.discovered(seen);
        }
    });
    Response::new(GatewayBody::full(bytes::Bytes::new()))
}

/// Answers 200, then terminates TLS inside the tunnel with a leaf for `host` and serves every
/// request through the path-mode pipeline with the tunnel's caller and integration.
#[allow(clippy::too_many_arguments)]
fn intercept(
    shared: &Arc<Shared>,
    runtime: &Runtime,
    connection: &ConnectionInfo,
    context: &mut CallContext,
    caller: ProxyCaller,
    integration: &IntegrationRuntime,
    host: String,
    request: Request<CallerBody>,
    place: TunnelPlace,
) -> Result<Response<GatewayBody>, CallError> {
    let Some(ca) = shared.intercept_ca.clone() else {
        return Err(CallError::unavailable(
            "interception_unavailable",
            "TLS interception is not available (the CA could not be loaded; see postern logs); set intercept = false on the integration or fix data_dir/ca",
        ));
    };
    if !ca.vouches_for(&host) {
        return Err(CallError::unavailable(
            "interception_name_not_permitted",
            format!(
                "the interception CA is constrained to {} ([proxy] intercept_ca_names when it was made), so clients would refuse a certificate for this host; set intercept = false on the integration, or replace the CA with one whose names cover the host",
                ca.names().join(", ")
            ),
        ));
    }
    let tls = ca.server_config(&host).map_err(|error| {
        tracing::warn!(%host, error = %format!("{error:#}"), "no interception certificate");
        CallError::bad_request(
            "invalid_connect_target",
            "no certificate can be issued for this host name; CONNECT to a DNS name",
        )
    })?;
    let tunnel = Arc::new(TunnelInfo {
        caller: caller.name,
        auth: caller.auth,
        token: caller.token,
        integration: integration.name.clone(),
        host: Arc::from(host.as_str()),
        mode: "intercept",
    });
    // The tunnel's calls excuse its own idle limit while any runs (below).
    let in_flight = crate::deadline::InFlight::default();
    // The tunnel's place, count and call on the outer connection last as long as these facts:
    // the task below holds them, and so does a WebSocket session opened in the tunnel, which
    // outlives the task (hyper hands its socket over and ends the connection's future).
    let open = OpenTunnel::new(shared, place, connection);
    let info = Arc::new(
        connection
            .tunnelled(true, tunnel, in_flight.clone())
            .keeping(Arc::new(open)),
    );
    let builder = crate::listener::connection_builder(runtime.config.gateway.max_header_bytes);
    // An intercepted tunnel closes after the proxy's idle timeout without a byte either way
    // (unless a call in it is waiting for its vendor).
    let idle = Duration::from_millis(runtime.proxy.config.idle_timeout_ms);
    let shared = shared.clone();
    let context = context.take();
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let stream = crate::deadline::Deadline::new(
                    TokioIo::new(upgraded),
                    crate::listener::FIRST_BYTE_TIMEOUT,
                    idle,
                )
                .excusing(in_flight);
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        let handler = {
                            let shared = shared.clone();
                            move |connection, request| {
                                crate::proxy::handle_call(shared.clone(), connection, request)
                            }
                        };
                        crate::listener::serve_hyper(
                            TokioIo::new(stream),
                            info,
                            builder,
                            (shared.shutdown_signal(), idle),
                            Some(crate::proxy::on_malformed(&shared)),
                            handler,
                        )
                        .await;
                    }
                    failed => {
                        let (code, message) = match failed {
                            // A client silent after its `200` meets the tunnel's first-byte limit
                            // (as long as the handshake's): out of time, not refused.
                            Ok(Err(error)) if error.kind() != std::io::ErrorKind::TimedOut => {
                                tracing::warn!(host = %context.host.as_deref().unwrap_or(""), caller = %context.caller.as_deref().unwrap_or(""), %error, "the TLS handshake inside the tunnel failed (the client refused Postern's interception certificate, or did not speak TLS); nothing was forwarded (trust the CA from `postern ca export`, or set intercept = false)");
                                (
                                    "interception_refused",
                                    "the TLS handshake inside the tunnel failed",
                                )
                            }
                            _ => (
                                "interception_handshake_timeout",
                                "no TLS handshake inside the tunnel within 10 s",
                            ),
                        };
                        let status = StatusCode::from_u16(INTERCEPTION_REFUSED_STATUS)
                            .unwrap_or(StatusCode::BAD_REQUEST);
                        let refusal = CallError::new(status, code, message);
                        crate::proxy::refuse(&shared, &context, &Progress::default(), &refusal);
                    }
                }
            }
            Err(error) => {
                // The connection ended before hyper handed it over (the caller left before its
                // `200` went out, or shutdown cut it): recorded like any call left unanswered.
                tracing::debug!(%error, "CONNECT upgrade failed");
                crate::proxy::record_refusal(
                    &shared,
                    &context,
                    &Progress::default(),
                    &crate::proxy::unanswered(&shared),
                );
            }
        }
    });
    Ok(Response::new(GatewayBody::full(bytes::Bytes::new())))
}

/// Absolute-form requests (`GET http://host/path`, what HTTP_PROXY clients send for plain http).
pub async fn handle_absolute(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<CallerBody>,
) -> Response<GatewayBody> {
    let runtime = shared.runtime.load_full();
    let uri = request.uri().clone();
    // The target's keyed hash is made only where this context reaches the audit log (below, and
    // in `absolute` before the intent, its first await, so a call dropped unanswered has it
    // too): a call to a registered host gets a context of its own in `handle_call`, which
    // hashes the target itself.
    let mut context = CallContext::new(
        &connection,
        request.method(),
        request.version(),
        Arc::from(""),
    );
    context.mode = Some("proxy");
    // Until `absolute` returns, a caller that hangs up (while the destination answers, say)
    // leaves the call recorded as `caller_closed`.
    let mut call = Unanswered::new(&shared, context);
    let outcome = absolute(
        &shared,
        &runtime,
        &connection,
        &mut call.context,
        &mut call.progress,
        request,
    )
    .await;
    call.answered();
    match outcome {
        Ok(Absolute::Answered(response)) => response,
        Ok(Absolute::Registered(info, request)) => {
            // The pipeline makes and guards a context of its own; this one is never recorded.
            drop(call);
            crate::proxy::handle_call(shared, info, request).await
        }
        Err(error) => {
            if call.context.target_hmac.is_empty() {
                call.context.target_hmac = shared.audit.target_hmac(&uri.to_string());
            }
            let mut response = crate::proxy::refuse(&shared, &call.context, &call.progress, &error);
            crate::proxy::close_after_refusal(&connection, &call.context, &mut response);
            response
        }
    }
}

enum Absolute {
    Answered(Response<GatewayBody>),
    /// A registered host: the request continues through the path-mode pipeline.
    Registered(Arc<ConnectionInfo>, Request<CallerBody>),
}

async fn absolute(
    shared: &Arc<Shared>,
    runtime: &Arc<Runtime>,
    connection: &Arc<ConnectionInfo>,
    context: &mut CallContext,
    progress: &mut Progress,
    request: Request<CallerBody>,
) -> Result<Absolute, CallError> {
    crate::proxy::refuse_a_token_in_the_method(context, request.method(), None)?;
    enabled(runtime)?;
    crate::proxy::check_transfer_coding(request.headers())?;
    let uri = request.uri().clone();
    // The authority (`http://user:TOKEN@host/`, `http://TOKEN.example.com/`) holding any
    // caller's token is refused before its host is recorded; the caller's own, below.
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    if crate::proxy::url_holds_a_caller_token(authority.as_bytes(), None) {
        return Err(crate::proxy::token_in_url());
    }
    let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(CallError::bad_request(
                "invalid_proxy_target",
                "the absolute-form request's scheme is neither http nor https; the proxy speaks only those",
            ))
        }
    };
    let host = uri.host().and_then(canonical_host).ok_or_else(|| {
        CallError::bad_request(
            "invalid_proxy_target",
            "the absolute-form request has no valid host; send GET http://host/path",
        )
    })?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // Discovery records the scheme the caller asked for: an `https://` target is sent over TLS.
    let scheme = if https { Scheme::Https } else { Scheme::Http };
    let seen = |context: &CallContext, blocked: bool| {
        request_sighting(context, &host, port, scheme, uri.path(), blocked)
    };
    context.host = Some(Arc::from(host.as_str()));
    let caller = proxy_caller(runtime, connection, context, request.headers())?;
    let token = caller.token.as_deref().filter(|t| !t.is_empty());
    crate::proxy::refuse_a_token_in_the_method(
        context,
        request.method(),
        token.map(|token| &token[..]),
    )?;
    let token_in = |text: &str| {
        crate::proxy::url_holds_a_caller_token(text.as_bytes(), token.map(|token| &token[..]))
    };
    // The authority is looked at here for every host, in any case; the path and query by the
    // path-mode pipeline for a registered host, below for the others. Both before the path is
    // judged, whose refusal records the host.
    if own_token_in_authority(authority, token.map(|token| &token[..])) {
        context.host = None;
        return Err(crate::proxy::token_in_url());
    }
    if let Some(problem) = crate::proxy::path_problem(uri.path()) {
        return Err(CallError::bad_request(
            "invalid_path",
            format!("the request path is refused: {problem}"),
        ));
    }
    let proxy = &runtime.proxy;
    if let Some(integration) = proxy.integration_for_host(&host) {
        // The same pipeline as path mode; the request is re-originated to the integration's
        // upstream over TLS.
        let info = Arc::new(connection.tunnelled(
            connection.tls,
            Arc::new(TunnelInfo {
                caller: caller.name,
                auth: caller.auth,
                token: caller.token,
                integration: integration.name.clone(),
                host: Arc::from(host.as_str()),
                mode: "proxy",
                // One request's: nothing waits on it.
            }),
            connection.in_flight().clone(),
        ));
        return Ok(Absolute::Registered(info, request));
    }
    // (A registered host's request meets this in the pipeline's `check_request`.)
    crate::proxy::check_header_aliases(request.headers())?;
    // Refused before anything records the URL (discovery keeps hosts and paths).
    let target = uri.to_string();
    if token_in(uri.path_and_query().map_or("", |target| target.as_str())) {
        return Err(crate::proxy::token_in_url());
    }
    let decision = proxy.policy.decide(&caller.name, &host, port);
    if !decision.allowed {
        shared.discovered(seen(context, true));
        return Err(host_refused(decision.reason, &host, port));
    }
    // A plain-HTTP call holds a connection to the host until its answer ends, as a tunnel
    // does: it takes one of the caller's places too (held until the answer's record), so that
    // one caller's slow answers cannot take every connection slot of the listener.
    let place = shared
        .tunnels_by_caller
        .take(&caller.name, proxy.config.max_tunnels_per_caller)?;
    progress.authorized = true;
    context.target_hmac = shared.audit.target_hmac(&target);
    progress.intent_index = crate::proxy::record_intent(shared, None, context).await?;

    // Forward as is (minus hop-by-hop and caller credentials), streaming both ways.
    let (mut parts, body) = request.into_parts();
    let token = caller.token.as_ref().map(|t| t.to_vec());
    strip_proxy_headers(&mut parts.headers, token.as_deref());
    // The Host the destination sees is the one the policy checked, never the client's own:
    // otherwise an allowed host could front for another name on the same address.
    let checked_host = match (host.contains(':'), uri.port_u16()) {
        (true, Some(port)) => format!("[{host}]:{port}"),
        (true, None) => format!("[{host}]"),
        (false, Some(port)) => format!("{host}:{port}"),
        (false, None) => host.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&checked_host) {
        parts.headers.insert(header::HOST, value);
    }
    // And the host dialled, resolved and named in TLS is the one the policy checked, as a
    // CONNECT's is (`[::ffff:93.184.216.34]` is `93.184.216.34`, `1572395042` is too).
    let mut target_parts = parts.uri.clone().into_parts();
    target_parts.authority = checked_host.parse().ok();
    parts.uri = Uri::from_parts(target_parts).map_err(|_| {
        CallError::bad_request(
            "invalid_proxy_target",
            "the absolute-form request's host cannot be forwarded; send GET http://host/path",
        )
    })?;
    // Caller tokens (the caller's, and what looks like any `postern` made) are looked for in
    // the body decoded as well, as the destination may undo the coding (a coding Postern cannot
    // undo is refused, `415`), whoever the caller.
    let encoding = match http_body::Body::is_end_stream(&body) {
        true => None,
        false => crate::proxy::body_encoding(&parts.headers)?,
    };
    let max = postern_config::DEFAULT_MAX_REQUEST_BODY_BYTES;
    context.request_body.set_caller(&caller.name, encoding);
    // Nothing is read ahead here: the reading starts with the first frame.
    let body = ForwardBody::new(body, max, context.request_body.clone())
        .reading(encoding, token.as_deref(), None)
        .map_err(|violation| crate::proxy::body_refusal(violation, max))?;
    let mut upstream_request = Request::from_parts(parts, body);
    *upstream_request.version_mut() = http::Version::HTTP_11;
    let timeout = Duration::from_millis(postern_config::DEFAULT_REQUEST_TIMEOUT_MS);
    // On this caller's own connections: what it sends is its own, credentials included, and a
    // host may tie them to the connection (NTLM, Negotiate).
    let sent = proxy
        .plain_client
        .request_for(upstream_request, caller.name.clone());
    let response = match tokio::time::timeout(timeout, sent).await {
        Err(_) => {
            shared.discovered(seen(context, false));
            return Err(CallError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("{host} did not answer within {} ms", timeout.as_millis()),
            ));
        }
        Ok(Err(error)) => {
            context.upstream_addr = error.addr().or(context.upstream_addr);
            // The gateway's refusals: the SSRF guard's, or a body it would not forward (one that
            // broke off on the caller's side was not refused).
            let refused = matches!(
                &error,
                crate::upstream::UpstreamError::Connect(connect) if connect.is_refusal()
            ) || matches!(
                context.request_body.violation(),
                crate::body::RequestBodyViolation::TooLarge
                    | crate::body::RequestBodyViolation::CallerToken
                    | crate::body::RequestBodyViolation::Undecodable
            );
            shared.discovered(seen(context, refused));
            return Err(crate::proxy::body_violation_error(context, max)
                .or_else(|| match &error {
                    crate::upstream::UpstreamError::Connect(connect) => {
                        Some(crate::proxy::connect_error(&host, connect))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| {
                    CallError::bad_gateway(
                        "upstream_error",
                        format!("the request to {host} failed"),
                    )
                }));
        }
        Ok(Ok((response, addr))) => {
            context.upstream_addr = Some(addr);
            response
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_proxy_headers(&mut parts.headers, None);
    crate::proxy::audit_receipt(&mut parts.headers, progress.intent_index);
    parts.extensions = http::Extensions::new();
    let status = parts.status.as_u16();
    let request_id = context.request_id;
    let method = context.method.as_ref().map(ToString::to_string);
    let path = uri.path().to_string();
    let after_shared = shared.clone();
    let pending = PendingRecord {
        recorder: shared.recorder.clone(),
        context: context.take(),
        status,
        reason: decision.reason,
        after: Some(Box::new(
            move |context: &CallContext, response_bytes: u64| {
                drop(place);
                let mut seen = sighting(context, &host, port, Some(scheme), false);
                seen.method = method;
                seen.path = Some(path);
                seen.status = Some(status);
                seen.bytes_in = response_bytes;
                seen.bytes_out = context.request_body.bytes.load(Ordering::Relaxed);
                after_shared.discovered(seen);
            },
        )),
    };
    let audit = PendingAudit {
        audit: shared.audit.clone(),
        intent_index: progress.intent_index,
    };
    let body = ResponseBody::new(
        body,
        postern_config::DEFAULT_MAX_RESPONSE_BODY_BYTES,
        crate::body::Stall::new(proxy.config.response_idle_timeout_ms),
        pending,
        Some(audit),
    );
    let mut response = Response::from_parts(parts, GatewayBody::Stream(Box::new(body)));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(crate::REQUEST_ID, value);
    }
    Ok(Absolute::Answered(response))
}

/// An opaque tunnel carries any of the integration's operations, so Cedar must permit the caller
/// at least one of them in this context (grants, custom `permit`s, and any applicable `forbid`
/// — office hours, source ranges — all count, as in path mode), with the hour and weekday of `at`.
fn authorize_tunnel(
    runtime: &Runtime,
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    at: SystemTime,
) -> Result<(), CallError> {
    let facts = crate::proxy::PolicyFacts::at(context, at);
    let (mut granted, mut refusal) = (None, None);
    // The tunnel's requests are not seen, so neither are their sizes: it carries any of the
    // operations, so it opens only if no size could change the answer for any of them.
    for operation in &integration.config.operations {
        let request = facts.request(&integration.name, &operation.id, &operation.method, 0);
        match runtime.policy.authorize_unsized(&request) {
            Ok(decision) if decision.allowed => granted.get_or_insert(decision.reason),
            Ok(decision) => refusal.get_or_insert(decision.reason),
            Err(refusing) => {
                context.policy_id = refusing.reason.policy_id().cloned();
                return Err(CallError::forbidden(
                    "policy_forbid",
                    "a policy bounds the size of this caller's requests to the integration that owns this host (context.request_bytes), and an opaque tunnel's requests are not seen; set `intercept = true` on the integration so each request is decided",
                ));
            }
        };
    }
    if let Some(reason) = granted {
        context.policy_id = reason.policy_id().cloned();
        return Ok(());
    }
    context.policy_id = refusal.as_ref().and_then(|r| r.policy_id().cloned());
    Err(CallError::forbidden(
        refusal
            .as_ref()
            .map_or("not_granted", postern_policy::Reason::code),
        "this caller may call no operation of the integration that owns this host (now); ask the integration's owner for a grant",
    ))
}

pub(crate) fn enabled(runtime: &Runtime) -> Result<(), CallError> {
    if runtime.proxy.config.enabled {
        return Ok(());
    }
    Err(CallError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "proxy_disabled",
        "forward-proxy mode is off; call /<integration>/<path>, or set [proxy] enabled = true",
    ))
}

/// `host:port` of a CONNECT request (the port is required, as RFC 9110 §9.3.6 says).
fn connect_target(uri: &Uri) -> Result<(String, u16), CallError> {
    let invalid = || {
        CallError::bad_request(
            "invalid_connect_target",
            "CONNECT needs host:port (RFC 9110 §9.3.6), for example CONNECT api.stripe.com:443",
        )
    };
    let authority = uri.authority().ok_or_else(invalid)?;
    let port = authority.port_u16().ok_or_else(invalid)?;
    let host = canonical_host(authority.host()).ok_or_else(invalid)?;
    Ok((host, port))
}

/// The longest host name DNS carries, in its text form, and its longest label (RFC 1035 §2.3.4).
const MAX_HOST_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;

/// The one form of a destination host that policy, guard, certificates, events and discovery
/// all see: brackets off, lowercase, one trailing dot removed; `None` for an empty label, or
/// a name longer than DNS allows.
fn canonical_host(raw: &str) -> Option<String> {
    let host = postern_policy::normalize_host(raw.trim_start_matches('[').trim_end_matches(']'));
    // No IPv6 zone id (`[2001:db8::1%25eth0]`): the resolver dials the address it names, but
    // no host pattern would see that address in it.
    // No longer than a DNS name can be (RFC 1035: 253 characters, labels of at most 63): the
    // host is recorded (the event of a refusal too, before the caller is known), and a 16 KiB
    // "host" would make every such event line 16 KiB.
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host.split('.').all(|label| label.len() <= MAX_LABEL_BYTES)
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !host.contains("..")
        && !host.contains('%');
    // An IPv4 address in a shorthand form (`1572395042`, `0x5db8d822`, `93.184.216.042`) is
    // the dotted quad it dials as, so a `deny_hosts` entry for that address matches it.
    match postern_netguard::ipv4_literal(&host) {
        Some(address) if valid => Some(address.to_string()),
        _ => valid.then_some(host),
    }
}

/// The caller of a proxy request: a verified client certificate's SPIFFE ID, else a caller token
/// in `Proxy-Authorization` (Basic with the token as password, or Bearer). Missing: 407.
fn proxy_caller(
    runtime: &Runtime,
    connection: &ConnectionInfo,
    context: &mut CallContext,
    headers: &http::HeaderMap,
) -> Result<ProxyCaller, CallError> {
    let token = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|value| crate::proxy::token_from_authorization(value.as_bytes()))
        .map(Zeroizing::new);
    let by_certificate =
        runtime.caller_by_certificate(connection.certificate.as_deref(), context.wall_start);
    if let ByCertificate::Caller(name) = by_certificate {
        connection.identified(false);
        context.caller = Some(name.clone());
        context.auth = Some(AuthMethod::Mtls);
        // A caller token sent as well is searched for and kept from vendors; anything else
        // in the header (`http://billing-svc@postern:8080`, a placeholder password) is not
        // a caller token, and searching for it would refuse every call that holds it.
        let token = token.filter(|token| runtime.caller_by_token(token).is_some());
        return Ok(ProxyCaller {
            name,
            auth: AuthMethod::Mtls,
            token,
        });
    }
    let Some(token) = token else {
        if let Some(reason) = crate::proxy::certificate_refusal(&by_certificate, connection) {
            return Err(CallError::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy_auth_required",
                reason,
            ));
        }
        return Err(CallError::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy_auth_required",
            "the proxy needs the caller token: put it in the proxy URL as the password (http://caller:<token>@postern:8080) or send Proxy-Authorization: Bearer <token>",
        ));
    };
    match runtime.caller_by_token(&token) {
        Some(name) => {
            connection.identified(true);
            context.caller = Some(name.clone());
            context.auth = Some(AuthMethod::ProxyToken);
            Ok(ProxyCaller {
                name,
                auth: AuthMethod::ProxyToken,
                token: Some(token),
            })
        }
        None => Err(CallError::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy_auth_required",
            "unknown caller token in Proxy-Authorization: use a token from `postern callers token NAME` whose sha256 is in the config",
        )),
    }
}

/// A registered host is reached on its integration's own port, or one `[proxy] allowed_ports`
/// lists.
fn registered_port(
    runtime: &Runtime,
    integration: &IntegrationRuntime,
    port: u16,
) -> Result<(), CallError> {
    let allowed =
        port == integration.upstream_port() || runtime.proxy.config.allowed_ports.contains(&port);
    allowed.then_some(()).ok_or_else(|| port_refused(port))
}

fn port_refused(port: u16) -> CallError {
    CallError::forbidden(
        "port_not_allowed",
        format!("port {port} is not allowed through the proxy; add it to [proxy] allowed_ports if it should be"),
    )
}

fn host_refused(reason: &'static str, host: &str, port: u16) -> CallError {
    match reason {
        "port_not_allowed" => port_refused(port),
        "host_denied" => CallError::forbidden(
            "host_denied",
            format!("{host} is on the proxy's deny list ([proxy] deny_hosts)"),
        ),
        _ => CallError::forbidden(
            "host_not_allowed",
            format!("{host} is not allowed for this caller through the proxy; register an integration for it, or add it to the caller's allow_hosts or [proxy] allow_hosts"),
        ),
    }
}

/// Removes hop-by-hop headers (the same set as path mode, proxy credentials included),
/// `Expect`, the caller-token header, and any header carrying the caller token or any other caller token
/// `postern` made.
fn strip_proxy_headers(headers: &mut http::HeaderMap, token: Option<&[u8]>) {
    for name in crate::proxy::connection_named(headers)
        .iter()
        .chain(crate::proxy::HOP_BY_HOP.iter())
    {
        headers.remove(name);
    }
    headers.remove(crate::CALLER_TOKEN);
    // Answered on the caller's side, as in path mode (`proxy::inject`).
    headers.remove(http::header::EXPECT);
    let carrying: Vec<http::HeaderName> = headers
        .iter()
        .filter(|(name, value)| crate::proxy::holds_a_caller_token(name, value, token))
        .map(|(name, _)| name.clone())
        .collect();
    for name in carrying {
        headers.remove(name);
    }
}

/// [`sighting`] of an absolute-form request: its method and `path` too.
fn request_sighting(
    context: &CallContext,
    host: &str,
    port: u16,
    scheme: Scheme,
    path: &str,
    blocked: bool,
) -> Observation {
    let mut seen = sighting(context, host, port, Some(scheme), blocked);
    seen.method = context.method.as_ref().map(ToString::to_string);
    seen.path = Some(path.to_string());
    seen
}

fn sighting(
    context: &CallContext,
    host: &str,
    port: u16,
    scheme: Option<Scheme>,
    blocked: bool,
) -> Observation {
    Observation {
        host: host.to_string(),
        port,
        scheme,
        caller: context.caller.as_deref().map(str::to_string),
        method: None,
        path: None,
        status: None,
        bytes_out: 0,
        bytes_in: 0,
        time_ms: context
            .wall_start
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        blocked,
        source: ObservationSource::Proxy,
    }
}

#[derive(Default)]
struct TunnelCounts {
    client_to_upstream: AtomicU64,
    upstream_to_client: AtomicU64,
    /// Milliseconds since `started` of the last byte either way.
    last_activity_ms: AtomicU64,
    /// The caller's first byte plus one (0: none yet), for discovery to tell a TLS tunnel.
    client_first_byte: AtomicU16,
}

impl TunnelCounts {
    /// `https` when the caller's first byte opened a TLS handshake record (content type 22);
    /// otherwise unknown (nothing sent, or some other protocol: not taken for plain HTTP).
    fn scheme(&self) -> Option<Scheme> {
        (self.client_first_byte.load(Ordering::Relaxed) == 0x16 + 1).then_some(Scheme::Https)
    }
}

/// Copies both ways until both directions end, or nothing moved for `idle`.
async fn splice<C>(client: C, upstream: TcpStream, counts: Arc<TunnelCounts>, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = pump(
        &mut client_read,
        &mut upstream_write,
        &counts,
        Direction::FromClient,
        started,
    );
    let down = pump(
        &mut upstream_read,
        &mut client_write,
        &counts,
        Direction::ToClient,
        started,
    );
    let idle_watch = async {
        let tick = idle
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let last = Duration::from_millis(counts.last_activity_ms.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(last) >= idle {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = idle_watch => tracing::debug!("tunnel idle timeout"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromClient,
    ToClient,
}

async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    counts: &TunnelCounts,
    direction: Direction,
    started: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counter = match direction {
        Direction::FromClient => &counts.client_to_upstream,
        Direction::ToClient => &counts.upstream_to_client,
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if direction == Direction::FromClient && counter.load(Ordering::Relaxed) == 0 {
            counts
                .client_first_byte
                .store(u16::from(buffer[0]) + 1, Ordering::Relaxed);
        }
        if writer.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        counter.fetch_add(read as u64, Ordering::Relaxed);
        counts
            .last_activity_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = writer.shutdown().await;
}
