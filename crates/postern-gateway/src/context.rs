//! The per-call context: everything the phases learn about one call, in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::body::RequestBodyState;
use crate::deadline::InFlight;
use crate::events::{
    event_method, rfc3339_millis, CallEvent, CallEventRef, Decision, EventText,
    EVENT_SCHEMA_VERSION,
};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Token,
    Mtls,
    /// A caller token in `Proxy-Authorization` (forward-proxy mode).
    ProxyToken,
}

impl AuthMethod {
    /// When a caller authenticated this way with `certificate` (its connection's) stops being
    /// identified by it: the certificate's expiry for `Mtls`, never for a token.
    pub fn expiry(
        self,
        certificate: Option<&crate::tls::ClientCertificate>,
    ) -> Option<std::time::SystemTime> {
        match self {
            AuthMethod::Mtls => certificate.map(crate::tls::ClientCertificate::not_after),
            AuthMethod::Token | AuthMethod::ProxyToken => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Mtls => "mtls",
            AuthMethod::ProxyToken => "proxy_token",
        }
    }
}

/// [`ConnectionInfo`]'s note that a request identified a caller by its client certificate.
const BY_CERTIFICATE: u8 = 1;
/// [`ConnectionInfo`]'s note that a request identified a caller by a caller token.
const BY_TOKEN: u8 = 2;

/// Facts about the downstream connection, fixed for all its requests, and what its requests
/// have told of it (whether one identified a caller, and how).
#[derive(Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// `peer.ip()` as text, formatted once per connection for every call's event, audit entry,
    /// policy context and detector event. Private so it always matches `peer`.
    peer_ip: Arc<str>,
    /// A verified client certificate naming a SPIFFE ID; what it identifies is asked of the
    /// runtime at each request ([`crate::runtime::Runtime::caller_by_certificate`]).
    pub certificate: Option<Arc<crate::tls::ClientCertificate>>,
    pub tls: bool,
    /// Set on connections inside an intercepted CONNECT tunnel (and for absolute-form requests
    /// to a registered host): who opened it and which integration the host belongs to.
    pub tunnel: Option<Arc<TunnelInfo>>,
    /// The listener's connection slot and the worker's count of its connections, given back
    /// when the last holder of this connection's facts ends: the connection's task, or a tunnel
    /// that outlives it (a CONNECT's socket is handed to a task of its own), so open tunnels
    /// count against the listener's limit and as their worker's connections.
    held: Option<Arc<Held>>,
    /// An intercepted tunnel's bookkeeping (its place under the caller's tunnel cap, the open
    /// tunnels' count, a call in flight on the connection it came through), kept while anything
    /// holds these facts: the tunnel's task, and a WebSocket session opened in it, which goes on
    /// once hyper has handed its socket over and the task has ended.
    _open_tunnel: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// The calls in flight on this connection (or tunnel), which its idle limit excuses.
    in_flight: InFlight,
    /// How requests on this connection have identified a caller (path mode): the bits
    /// [`BY_CERTIFICATE`] and [`BY_TOKEN`].
    identified: std::sync::atomic::AtomicU8,
    /// Told when the connection is to close once the answers in hand are out
    /// ([`ConnectionInfo::close`]).
    closing: tokio::sync::Notify,
    /// Whether it has been told so (an HTTP/1.1 refusal then carries `connection: close`).
    told_to_close: std::sync::atomic::AtomicBool,
}

impl ConnectionInfo {
    /// An IPv4 client of a dual-stack (`[::]`) listener arrives as `::ffff:a.b.c.d`: it is
    /// taken as the IPv4 address it is, for events, audit entries and Cedar's `source_ip`
    /// (whose `ip()` parser refuses the mapped form, so every decision of a custom policy would
    /// fail).
    /// `in_flight`: the count of its calls waiting on vendors that its stream's
    /// [`crate::deadline::Deadline`] excuses (`InFlight::default()` where none does).
    pub fn new(
        peer: SocketAddr,
        certificate: Option<Arc<crate::tls::ClientCertificate>>,
        tls: bool,
        in_flight: InFlight,
    ) -> Self {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        ConnectionInfo {
            peer,
            peer_ip: peer.ip().to_string().into(),
            certificate,
            tls,
            tunnel: None,
            held: None,
            _open_tunnel: None,
            in_flight,
            identified: std::sync::atomic::AtomicU8::new(0),
            closing: tokio::sync::Notify::new(),
            told_to_close: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The calls in flight on this connection.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// The same facts, holding the listener's connection `slot`, the worker's count of it
    /// (`live`, on a data-plane worker) and its place under its source's cap (`source`) until
    /// the last holder ends.
    pub fn holding(
        self,
        slot: crate::slots::Slot,
        live: Option<crate::workers::Live>,
        source: Option<crate::sources::SourceHold>,
    ) -> Self {
        ConnectionInfo {
            held: Some(Arc::new(Held {
                _slot: slot,
                _live: live,
                _source: source,
            })),
            ..self
        }
    }

    /// The same facts, keeping an intercepted tunnel's bookkeeping (`open`) until the last
    /// holder ends.
    pub fn keeping(self, open: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        ConnectionInfo {
            _open_tunnel: Some(open),
            ..self
        }
    }

    /// The same client, inside a tunnel (or an absolute-form request) that `tunnel` describes,
    /// its calls counted in `in_flight`: the one its stream's [`crate::deadline::Deadline`]
    /// excuses (an intercepted tunnel's own, or this connection's for an absolute-form request).
    pub fn tunnelled(&self, tls: bool, tunnel: Arc<TunnelInfo>, in_flight: InFlight) -> Self {
        ConnectionInfo {
            peer: self.peer,
            peer_ip: self.peer_ip.clone(),
            certificate: self.certificate.clone(),
            tls,
            tunnel: Some(tunnel),
            held: self.held.clone(),
            _open_tunnel: None,
            in_flight,
            identified: std::sync::atomic::AtomicU8::new(BY_CERTIFICATE | BY_TOKEN),
            closing: tokio::sync::Notify::new(),
            told_to_close: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A request on this connection identified a caller, by its client certificate or by a
    /// caller token.
    pub fn identified(&self, by_token: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let by = if by_token { BY_TOKEN } else { BY_CERTIFICATE };
        // Read first: most calls find it set, and a store would dirty the line each time.
        if self.identified.load(Relaxed) & by == 0 {
            self.identified.fetch_or(by, Relaxed);
        }
    }

    /// Whether a request on this connection has identified a caller by a caller token.
    pub fn identified_by_token(&self) -> bool {
        self.identified.load(std::sync::atomic::Ordering::Relaxed) & BY_TOKEN != 0
    }

    /// After a refusal of a request that identified no caller: when this connection has
    /// identified none yet, it is told to close once that answer is out
    /// ([`crate::proxy::close_after_refusal`]).
    pub fn close_unidentified(&self) {
        if self.identified.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            self.close();
        }
    }

    /// Tells the connection (or intercepted tunnel) to close once the answers in hand are out
    /// (HTTP/1.1 after the answer, h2 with a GOAWAY): a caller that never identified itself
    /// ([`Self::close_unidentified`]), or a tunnel a reload no longer allows (`403
    /// host_changed`, a `401` for a revoked caller, a `404` for a removed integration), or a
    /// connection whose client certificate identifies no one any more, so a client does not go
    /// on meeting the refusal on a kept connection. Hyper-served connections listen to
    /// [`Self::closing`]; Postern's own HTTP/1.1 server closes by the refusal's
    /// `connection: close` ([`crate::proxy::close_after_refusal`]).
    pub fn close(&self) {
        self.told_to_close
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.closing.notify_one();
    }

    /// Whether the connection has been told to close ([`Self::close`]).
    pub fn told_to_close(&self) -> bool {
        self.told_to_close
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends once the connection has been told to close ([`Self::close`]).
    pub async fn closing(&self) {
        self.closing.notified().await;
    }
}

/// What a connection holds until its last holder ends ([`ConnectionInfo::holding`]).
#[derive(Debug)]
struct Held {
    _slot: crate::slots::Slot,
    _live: Option<crate::workers::Live>,
    _source: Option<crate::sources::SourceHold>,
}

/// The forward-proxy facts a tunnel's requests inherit.
pub struct TunnelInfo {
    pub caller: Arc<str>,
    pub auth: AuthMethod,
    /// The caller token from `Proxy-Authorization`, kept to make sure it is never forwarded.
    pub token: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub integration: Arc<str>,
    pub host: Arc<str>,
    /// `intercept` (CONNECT) or `proxy` (absolute-form request).
    pub mode: &'static str,
}

impl std::fmt::Debug for TunnelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelInfo")
            .field("caller", &self.caller)
            .field("integration", &self.integration)
            .field("host", &self.host)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

pub struct CallContext {
    pub request_id: RequestId,
    pub started: Instant,
    pub wall_start: SystemTime,
    /// The client's address as text (the connection's `peer_ip`, formatted once).
    pub source_ip: Arc<str>,
    pub protocol: &'static str,
    /// `None` for a request refused before its method could be read: a head hyper's parser
    /// refused ([`CallContext::malformed`]).
    pub method: Option<http::Method>,
    pub integration: Option<Arc<str>>,
    pub caller: Option<Arc<str>>,
    pub auth: Option<AuthMethod>,
    pub operation_id: Option<Arc<str>>,
    pub path_template: Option<Arc<str>>,
    pub upstream_addr: Option<SocketAddr>,
    pub request_body: Arc<RequestBodyState>,
    pub redirect_off_origin: bool,
    /// The vendor's answer carried the injected credential: in a header (dropped) or its body
    /// (redacted, or the answer cut: [`crate::echo`]).
    pub secret_echoed: bool,
    /// The Cedar policy that decided: `grant-N` or a custom policy id.
    pub policy_id: Option<Arc<str>>,
    /// What the payload scan found in the request (scanned integrations only).
    pub request_scan: Option<crate::scan::ScanSummary>,
    /// What the payload scan found in the vendor's response (scanned integrations only).
    pub response_scan: Option<crate::scan::ScanSummary>,
    /// Forward-proxy mode (`proxy`, `tunnel`, `intercept`); `None` in path mode.
    pub mode: Option<&'static str>,
    /// The keyed hash of the raw request target ([`crate::audit::Audit::target_hmac`]), made
    /// when the call starts and carried by every audit entry of the call. Empty while there is
    /// no target to hash (a forward-proxy request before its destination is parsed, a head the
    /// parser refused): its audit entries then carry no target hash.
    pub target_hmac: Arc<str>,
    /// Forward-proxy destination host.
    pub host: Option<Arc<str>>,
    /// The authority the caller reached Postern by, in path mode, until the vendor's answer
    /// head is prepared: a vendor's redirect naming it outside the integration is removed
    /// (`proxy::through_postern`). Never recorded.
    pub reached: Option<Reached>,
    /// The call's places under its integration's concurrency limits, given back when the
    /// context is dropped: once the call is recorded.
    pub places: Option<crate::concurrency::CallPlaces>,
    /// The calls of the connection it came on ([`ConnectionInfo::in_flight`]): an answer
    /// dropped unfinished with its connection, closed at its idle limit
    /// ([`InFlight::idled_out`]), is one its caller stopped taking (`caller_stalled`).
    /// `None` in the placeholder [`CallContext::take`] leaves.
    pub in_flight: Option<InFlight>,
}

/// The authority a caller reached Postern by: shared with the request it came in (no copy).
#[derive(Debug, Clone)]
pub enum Reached {
    /// HTTP/1.x: the `Host` field.
    Host(http::HeaderValue),
    /// h2: the `:authority` pseudo-header, which stands for `Host`.
    Authority(http::uri::Authority),
}

impl Reached {
    /// As text; `None` for a `Host` that is not visible ASCII.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reached::Host(host) => host.to_str().ok(),
            Reached::Authority(authority) => Some(authority.as_str()),
        }
    }
}

impl CallContext {
    pub fn new(
        connection: &ConnectionInfo,
        method: &http::Method,
        version: http::Version,
        target_hmac: Arc<str>,
    ) -> Self {
        CallContext {
            request_id: RequestId::new(),
            started: Instant::now(),
            wall_start: SystemTime::now(),
            source_ip: connection.peer_ip.clone(),
            protocol: match version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            method: Some(method.clone()),
            integration: None,
            caller: None,
            auth: None,
            operation_id: None,
            path_template: None,
            upstream_addr: None,
            request_body: Arc::new(RequestBodyState::default()),
            redirect_off_origin: false,
            secret_echoed: false,
            policy_id: None,
            request_scan: None,
            response_scan: None,
            mode: connection.tunnel.as_ref().map(|t| t.mode),
            target_hmac,
            host: connection.tunnel.as_ref().map(|t| t.host.clone()),
            reached: None,
            places: None,
            in_flight: Some(connection.in_flight.clone()),
        }
    }

    /// A request whose head hyper's HTTP/1.1 parser refused (and answered itself): nothing of
    /// it is known but the connection it came on. Its target is unknown, so its audit entry
    /// carries no target hash (`target_hmac` is empty). Inside an intercepted tunnel, the
    /// tunnel's caller and integration are the request's.
    pub fn malformed(connection: &ConnectionInfo) -> Self {
        let mut context = CallContext::new(
            connection,
            &http::Method::GET,
            http::Version::HTTP_11,
            Arc::from(""),
        );
        context.method = None;
        if let Some(tunnel) = &connection.tunnel {
            context.caller = Some(tunnel.caller.clone());
            context.auth = Some(tunnel.auth);
            context.integration = Some(tunnel.integration.clone());
        }
        context
    }

    /// Moves the context out (into a streaming body or a tunnel task), leaving a placeholder that
    /// keeps only the request id, clocks and source address.
    pub fn take(&mut self) -> CallContext {
        let placeholder = CallContext {
            request_id: self.request_id,
            started: self.started,
            wall_start: self.wall_start,
            source_ip: self.source_ip.clone(),
            protocol: self.protocol,
            // Never recorded: the call's record goes with the context taken.
            method: None,
            integration: None,
            caller: None,
            auth: None,
            operation_id: None,
            path_template: None,
            upstream_addr: None,
            request_body: self.request_body.clone(),
            redirect_off_origin: false,
            secret_echoed: false,
            policy_id: None,
            request_scan: None,
            response_scan: None,
            mode: None,
            target_hmac: self.target_hmac.clone(),
            host: None,
            reached: None,
            places: None,
            in_flight: None,
        };
        std::mem::replace(self, placeholder)
    }

    /// The call's event, borrowed from this context: nothing is copied or formatted until it is
    /// serialized. `elapsed` is the call's duration so far (`started.elapsed()`).
    pub fn event_ref<'a>(
        &'a self,
        status: u16,
        decision: Decision,
        reason: &'a str,
        response_bytes: u64,
        incomplete: bool,
        elapsed: std::time::Duration,
    ) -> CallEventRef<'a> {
        CallEventRef {
            schema_version: EVENT_SCHEMA_VERSION,
            time: EventText::Time(self.wall_start),
            request_id: self.request_id.as_str(),
            integration: self.integration.as_deref(),
            caller: self.caller.as_deref(),
            operation: self.operation_id.as_deref(),
            method: self.method.as_ref().map_or("", event_method),
            path: self.path_template.as_deref(),
            status,
            decision,
            reason,
            request_bytes: self
                .request_body
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            response_bytes,
            duration_ms: duration_ms(elapsed),
            upstream_addr: self.upstream_addr.map(EventText::Addr),
            source_ip: EventText::Str(&self.source_ip),
            auth: self.auth.map(AuthMethod::as_str),
            protocol: self.protocol,
            policy: self.policy_id.as_deref(),
            redirect_off_origin: self.redirect_off_origin,
            secret_echoed: self.secret_echoed,
            incomplete,
            data_classes: self.request_scan.as_ref().map(|s| &s.classes),
            unscanned: self.request_scan.as_ref().and_then(|s| s.unscanned),
            redacted: self.request_scan.as_ref().is_some_and(|s| s.redacted),
            response_data_classes: self.response_scan.as_ref().map(|s| &s.classes),
            response_unscanned: self.response_scan.as_ref().and_then(|s| s.unscanned),
            response_redacted: self.response_scan.as_ref().is_some_and(|s| s.redacted),
            mode: self.mode,
            host: self.host.as_deref(),
        }
    }

    /// The call's event as an owned value (see [`CallContext::event_ref`] for the cheap form).
    pub fn to_event(
        &self,
        status: u16,
        decision: Decision,
        reason: &str,
        response_bytes: u64,
        incomplete: bool,
    ) -> CallEvent {
        let elapsed = self.started.elapsed();
        CallEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            time: rfc3339_millis(self.wall_start),
            request_id: self.request_id.to_string(),
            integration: self.integration.as_deref().map(str::to_string),
            caller: self.caller.as_deref().map(str::to_string),
            operation: self.operation_id.as_deref().map(str::to_string),
            method: self
                .method
                .as_ref()
                .map_or(String::new(), |method| event_method(method).to_string()),
            path: self.path_template.as_deref().map(str::to_string),
            status,
            decision,
            reason: reason.to_string(),
            request_bytes: self
                .request_body
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            response_bytes,
            duration_ms: duration_ms(elapsed),
            upstream_addr: self.upstream_addr.map(|a| a.to_string()),
            source_ip: self.source_ip.to_string(),
            auth: self.auth.map(AuthMethod::as_str),
            protocol: self.protocol,
            policy: self.policy_id.as_deref().map(str::to_string),
            redirect_off_origin: self.redirect_off_origin,
            secret_echoed: self.secret_echoed,
            incomplete,
            data_classes: self.request_scan.as_ref().map(|s| s.classes.clone()),
            unscanned: self.request_scan.as_ref().and_then(|s| s.unscanned),
            redacted: self.request_scan.as_ref().is_some_and(|s| s.redacted),
            response_data_classes: self.response_scan.as_ref().map(|s| s.classes.clone()),
            response_unscanned: self.response_scan.as_ref().and_then(|s| s.unscanned),
            response_redacted: self.response_scan.as_ref().is_some_and(|s| s.redacted),
            mode: self.mode,
            host: self.host.as_deref().map(str::to_string),
        }
    }
}

/// Milliseconds with microsecond precision, as the event's `duration_ms`.
pub fn duration_ms(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_micros() as f64) / 1000.0
}

/// 128 random bits as 32 lower-case hex digits: unguessable and unique enough to join logs,
/// events and audit entries. Inline, so making and copying one allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    text: [u8; 32],
    /// Bytes, not a `u128`: the id sits in every call's context and future, which a 16-byte
    /// alignment would pad.
    bits: [u8; 16],
}

impl RequestId {
    pub fn new() -> Self {
        let bits: [u8; 16] = rand::random();
        let mut text = [0u8; 32];
        hex::encode_to_slice(bits, &mut text).expect("16 bytes are 32 hex digits");
        RequestId { text, bits }
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII hex, so never the fallback.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The 128 bits the text spells: a key for the call's entries (see `audit::Entry`).
    pub fn bits(&self) -> u128 {
        u128::from_be_bytes(self.bits)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectionInfo, InFlight};

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
        let mapped: std::net::SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        let info = ConnectionInfo::new(mapped, None, false, InFlight::default());
        assert_eq!(&*info.peer_ip, "10.0.0.7");
        assert_eq!(info.peer, "10.0.0.7:4000".parse().unwrap());
        let v6: std::net::SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(
            &*ConnectionInfo::new(v6, None, false, InFlight::default()).peer_ip,
            "2001:db8::1"
        );
    }
}
