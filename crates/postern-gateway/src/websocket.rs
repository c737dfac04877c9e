//! WebSocket sessions (RFC 6455), for operations with `websocket = true`: in path mode, and
//! inside intercepted forward-proxy tunnels (`wss://` through `HTTPS_PROXY`).
//!
//! A caller's handshake (`GET` over HTTP/1.1 with `Upgrade: websocket`) runs the whole pipeline
//! as any call does: caller, operation, Cedar grant, rate limit, intent entry, credential
//! injection. Then it is sent to the vendor on a connection of its own
//! ([`UpstreamClient::handshake`](crate::upstream::UpstreamClient::handshake): dialled through
//! the SSRF guard, TLS offering only http/1.1, never pooled), with `Sec-WebSocket-Extensions`
//! taken off, so no extension (`permessage-deflate`) is negotiated and every frame can be read
//! as sent. A vendor answer other than `101` reaches the caller as any answer does; a `101`
//! is passed on (the vendor's `Sec-WebSocket-Accept` answers the caller's key, which went
//! through unchanged) and both connections are handed over to a session task that relays
//! bytes both ways until either side closes, the session idles out
//! (`response_idle_timeout_ms`, no byte either way) or reaches `total_timeout_ms`, a reload or
//! vault change (or a new hour, under a Cedar rule on it) no longer allows it
//! ([`SessionGrant`]), or Postern shuts down. The call's event and audit outcome are recorded
//! then: status 101, the bytes each way, the session's length, and why it ended.
//!
//! The caller's frames are read as they pass ([`Frames`], [`CallerTokens`]): each message's
//! payload (unmasked, across its fragments) is searched for the caller's token and any
//! `postern`-made token in every form a request body is ([`crate::body`]'s reading), and each
//! control frame's payload on its own. Where a token stands, the session ends at once: both
//! connections are closed and the frame that completes it is not passed on
//! (`caller_token_in_body`). A message whose bytes so far could begin a token is held back
//! only where more is sure to follow: within a frame, or after a fragment of an unfinished
//! message; so a whole message is never held. It is held from where the token could begin,
//! as sent, when that lies in its last frame ([`TokenReading::pending`]); from its first frame
//! while an escaped, unwrapped, base64 or UTF-16 reading may be completing one. A session whose held
//! bytes pass [`MAX_HELD`] (frames put between a message's parts) is ended
//! (`websocket_held_too_long`). A frame that breaks RFC 6455 (unmasked, reserved bits or
//! opcodes, a control frame fragmented or over 125 bytes) ends the session
//! (`websocket_protocol_error`), as does a message over the integration's
//! `max_request_body_bytes` (`request_too_large`).
//!
//! The vendor's frames are read the same way ([`EchoedSecrets`]) for the credential Postern
//! injected, in each form an answer's body is read for it: where one stands, the session ends
//! before the frame that completes it reaches the caller (`secret_echoed`; a frame cannot be
//! redacted in place once its head has gone). A frame of the vendor's that breaks RFC 6455
//! (masked, reserved bits or opcodes) ends it too (`upstream_websocket_error`), as does a
//! message over `max_response_body_bytes` (`response_too_large`). It is held back only from
//! where the key could begin.
//!
//! Not found: a token split across two fragments of a message, where the first fragment ended
//! where no token could begin yet, is found when its last part comes, but what went before it
//! has gone on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::body::{CallerBody, ForwardBody, GatewayBody, TokenReading};
use crate::context::{CallContext, ConnectionInfo};
use crate::error::CallError;
use crate::events::Decision;
use crate::runtime::IntegrationRuntime;
use crate::tokens::Needles;
use crate::upstream::{UpstreamBody, UpstreamError};
use crate::Shared;

/// The most bytes of the caller's that are held back while more could complete a token: far
/// more than the longest form of a token that is read (escaped twice over, in UTF-16), so a
/// session that needs more is one whose caller put frames (pings, empty continuations)
/// between the parts of a message to push a token's start out: it is ended instead.
pub(crate) const MAX_HELD: u64 = 64 * 1024;

/// `Sec-WebSocket-Extensions` (RFC 6455 §11.3.2): never passed on, so frames carry no
/// compressed payload.
const EXTENSIONS: header::HeaderName = header::HeaderName::from_static("sec-websocket-extensions");

/// Whether `request` is a WebSocket handshake: `GET` over HTTP/1.1 asking to upgrade to
/// `websocket` (RFC 6455 §4.1).
pub(crate) fn requested(request: &Request<CallerBody>) -> bool {
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && lists(request.headers(), &header::UPGRADE, "websocket")
        && lists(request.headers(), &header::CONNECTION, "upgrade")
}

/// Whether the comma-separated lists of `name`'s fields hold `token`, in any case.
fn lists(headers: &http::HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `operation` of `integration` takes WebSocket handshakes.
fn allowed(integration: &IntegrationRuntime, operation: Option<&str>) -> bool {
    operation.is_some_and(|id| {
        integration
            .config
            .operations
            .iter()
            .any(|known| known.websocket && known.id == id)
    })
}

/// A handshake ([`requested`]) to the operation `context` names, authorized: refused unless
/// the operation takes one (`websocket = true`), without a body. Answers the
/// caller's side of the upgrade, taken off the request.
pub(crate) fn admit(
    integration: &IntegrationRuntime,
    context: &CallContext,
    request: &mut Request<CallerBody>,
) -> Result<OnUpgrade, CallError> {
    let operation = context.operation_id.as_deref().unwrap_or("");
    if !allowed(integration, Some(operation)) {
        return Err(CallError::forbidden(
            "websocket_not_allowed",
            format!(
                "operation {operation} of integration {} does not take WebSocket handshakes; set websocket = true on the operation if it should",
                integration.name
            ),
        ));
    }
    if !http_body::Body::is_end_stream(request.body()) {
        return Err(CallError::bad_request(
            "websocket_handshake_body",
            "a WebSocket handshake carries no body; send it without Content-Length or Transfer-Encoding",
        ));
    }
    Ok(hyper::upgrade::on(request))
}

/// Puts the upgrade to `websocket` on a handshake's (or its answer's) headers: hop-by-hop
/// fields, which Postern takes off whatever it passes on.
fn upgrading(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// What sending the handshake gave, as [`crate::proxy`] reads a vendor's answer.
pub(crate) type Sent = Result<
    Result<(Response<UpstreamBody>, std::net::SocketAddr), UpstreamError>,
    tokio::time::error::Elapsed,
>;

/// Sends the handshake (`request`, injected) to the vendor within the integration's
/// `request_timeout_ms` (and what is left of `total_timeout_ms`), on a connection of its own.
pub(crate) async fn handshake(
    integration: &IntegrationRuntime,
    request: Request<ForwardBody>,
    started: Instant,
) -> Sent {
    let (mut parts, _) = request.into_parts();
    parts.headers.remove(EXTENSIONS);
    upgrading(&mut parts.headers);
    let request = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let deadline = crate::proxy::answer_deadline(integration, started);
    tokio::time::timeout_at(deadline, async {
        let (response, addr) = integration.client.handshake(request).await?;
        Ok((response.map(UpstreamBody::Handshake), addr))
    })
    .await
}

/// The vendor accepted the handshake (`101`): checks its answer, puts the upgrade back on the
/// answer prepared for the caller (`parts`), and starts the session's task, which records the
/// call when the session ends.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open(
    shared: &Arc<Shared>,
    integration: &IntegrationRuntime,
    connection: &Arc<ConnectionInfo>,
    context: &mut CallContext,
    intent_index: Option<u64>,
    mut parts: http::response::Parts,
    (caller, vendor): (OnUpgrade, OnUpgrade),
    (caller_token, vendor_path, injected): (Option<&[u8]>, &str, Option<crate::oauth::Minted>),
) -> Result<Response<GatewayBody>, CallError> {
    if parts.headers.contains_key(EXTENSIONS) {
        return Err(CallError::bad_gateway(
            "websocket_extension_refused",
            format!(
                "the vendor of {} accepted the WebSocket handshake with an extension that was not offered (Sec-WebSocket-Extensions); Postern passes on only sessions whose frames it can read",
                integration.name
            ),
        ));
    }
    upgrading(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    let config = &integration.config;
    let idle = (config.response_idle_timeout_ms > 0)
        .then(|| Duration::from_millis(config.response_idle_timeout_ms));
    let end = crate::body::call_end(context.started, config.total_timeout_ms).map(|(end, _)| end);
    let from_caller = Frames::new(
        CallerTokens(Needles::new(caller_token)),
        config.max_request_body_bytes,
    );
    let minted = crate::proxy::oauth_echoes(integration, injected.as_ref());
    let from_vendor = Frames::new(
        EchoedSecrets::new(&integration.secret_needles, minted),
        config.max_response_body_bytes,
    );
    let grant = SessionGrant {
        tunnel: connection.tunnel.clone(),
        certificate: connection.certificate.clone(),
        token: caller_token.map(|token| Zeroizing::new(token.to_vec())),
        path: crate::proxy::routed(vendor_path).into(),
    };
    let shared = shared.clone();
    let context = context.take();
    // The session holds its caller's connection (its place under the listener's limit) and
    // stands as a call in flight on it, as a tunnel does; Postern's shutdown waits for it.
    let open = OpenSession::new(&shared, connection);
    tokio::spawn(async move {
        let _open = open;
        let ended = match (caller.await, vendor.await) {
            (Ok(caller), Ok(vendor)) => {
                let ends = Ends {
                    idle,
                    end,
                    shutdown: shared.shutdown_signal(),
                    revoked: Box::pin(grant.revoked(&shared, &context)),
                };
                relay(caller, vendor, (from_caller, from_vendor), ends).await
            }
            (caller, vendor) => {
                // The caller left before its `101` went out, or the vendor's connection broke
                // as it was handed over.
                let reason = match caller {
                    Err(_) => "caller_closed",
                    Ok(_) => "upstream_error",
                };
                if let Err(error) = vendor {
                    tracing::debug!(%error, "the vendor's WebSocket upgrade failed");
                }
                Ended {
                    reason,
                    up: 0,
                    down: 0,
                }
            }
        };
        if ended.reason == "caller_token_in_body" {
            tracing::warn!(integration = context.integration.as_deref().unwrap_or(""), request_id = %context.request_id, "a caller token in a WebSocket message; the session was closed");
        }
        context
            .request_body
            .bytes
            .store(ended.up, std::sync::atomic::Ordering::Relaxed);
        let status = StatusCode::SWITCHING_PROTOCOLS.as_u16();
        let incomplete = ended.reason != "granted";
        shared.recorder.record_call(
            &context,
            status,
            Decision::Allow,
            ended.reason,
            ended.down,
            incomplete,
        );
        let record = shared.audit.record(
            postern_tlog::RecordKind::Outcome,
            &context,
            Some(&crate::audit::Outcome {
                decision: postern_tlog::Decision::Allow,
                reason: ended.reason,
                status,
                response_bytes: ended.down,
                intent_index,
            }),
        );
        shared.audit.append_later(record, &context.request_id);
    });
    Ok(Response::from_parts(parts, GatewayBody::full(Bytes::new())))
}

/// An open session, from its `101` until its task ends (a panic included): counted in
/// [`Shared::websocket_sessions`], holding its caller's connection, and standing as a call in
/// flight on it.
struct OpenSession {
    shared: Arc<Shared>,
    _connection: Arc<ConnectionInfo>,
    _waiting: crate::deadline::Waiting,
}

impl OpenSession {
    fn new(shared: &Arc<Shared>, connection: &Arc<ConnectionInfo>) -> Self {
        shared.websocket_sessions.fetch_add(1, Ordering::Relaxed);
        OpenSession {
            shared: shared.clone(),
            _connection: connection.clone(),
            _waiting: connection.in_flight().wait(),
        }
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.shared
            .websocket_sessions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ends a session besides its two sides: how long it may idle (no byte either way) and
/// until when it may last, Postern's shutdown, and its grant withdrawn
/// ([`SessionGrant::revoked`]).
struct Ends<'a> {
    idle: Option<Duration>,
    end: Option<tokio::time::Instant>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    revoked: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
}

/// What let a session open, decided again at each runtime swap (a reload, a vault change),
/// each new hour of UTC and the expiry of a client certificate that identified its caller, as
/// an opaque tunnel is: the same credential still names its caller,
/// the operation still takes WebSocket handshakes, Cedar still allows the call, the vendor
/// credential can still be injected and the vendor's address still passes the guard. The
/// caller, its way of authenticating, the integration and the operation are the call's
/// (its context); the credential it was named by is kept here.
struct SessionGrant {
    /// The forward-proxy tunnel it was opened in, if any: the session ends when forward-proxy
    /// mode is turned off or its host no longer routes to its integration, as the tunnel's
    /// next request would be refused.
    tunnel: Option<std::sync::Arc<crate::context::TunnelInfo>>,
    /// The client certificate of the connection it was opened on.
    certificate: Option<std::sync::Arc<crate::tls::ClientCertificate>>,
    token: Option<Zeroizing<Vec<u8>>>,
    /// The vendor path the operation was matched by ([`crate::proxy::routed`]): matched again,
    /// since a reload may move the operation or add a more literal one that covers the path.
    path: Box<str>,
}

impl SessionGrant {
    fn still_allowed(
        &self,
        runtime: &crate::runtime::Runtime,
        context: &CallContext,
        at: std::time::SystemTime,
    ) -> bool {
        let (Some(caller), Some(auth), Some(name), Some(operation)) = (
            &context.caller,
            context.auth,
            &context.integration,
            &context.operation_id,
        ) else {
            return false;
        };
        let token = self.token.as_deref().map(Vec::as_slice);
        if !runtime.still_names(caller, auth, self.certificate.as_deref(), token, at) {
            return false;
        }
        let Some(integration) = runtime.integrations.get(&**name) else {
            return false;
        };
        if let Some(tunnel) = &self.tunnel {
            if !crate::proxy::still_routes(runtime, tunnel, integration) {
                return false;
            }
        }
        let matched = integration.operations.find("GET", &self.path);
        if matched.is_none_or(|found| found.id != operation)
            || !allowed(integration, Some(operation))
        {
            return false;
        }
        // The vendor credential it was opened with, revoked or no longer to be had (`postern
        // creds revoke`, a key file gone), and the vendor's address, against the guard as it
        // stands now (a network taken out of `allow_private_networks`).
        if integration.credential.is_err()
            || context
                .upstream_addr
                .is_some_and(|addr| integration.client.guard().check(addr.ip()).is_err())
        {
            return false;
        }
        // Its messages' sizes are not seen, as when it opened: a rule on
        // `context.request_bytes` that a size could decide now ends it.
        let facts = crate::proxy::PolicyFacts::at(context, at);
        runtime
            .policy
            .authorize_unsized(&facts.request(name, operation, "GET", 0))
            .is_ok_and(|decision| decision.allowed)
    }

    /// Ends when the session is no longer allowed.
    async fn revoked(self, shared: &Shared, context: &CallContext) {
        let mut decisions = shared.tunnel_decisions();
        let mut at = std::time::SystemTime::now();
        // A session its caller's certificate opened is decided again when that expires.
        let expires = context
            .auth
            .and_then(|auth| auth.expiry(self.certificate.as_deref()));
        while self.still_allowed(&shared.runtime.load_full(), context, at) {
            match crate::next_decision(&mut decisions, expires).await {
                Some(next) => at = next,
                None => return std::future::pending().await,
            }
        }
        tracing::info!(caller = context.caller.as_deref().unwrap_or(""), integration = context.integration.as_deref().unwrap_or(""), request_id = %context.request_id, "an open WebSocket session is no longer allowed after a configuration or vault change, its client certificate's expiry, or in this hour; closed");
    }
}

/// How a session ended: the event's reason, and the bytes each way.
struct Ended {
    reason: &'static str,
    up: u64,
    down: u64,
}

/// Relays the session until it ends ([module docs](self)).
async fn relay(
    caller: Upgraded,
    vendor: Upgraded,
    (mut from_caller, mut from_vendor): (Frames<CallerTokens>, Frames<EchoedSecrets>),
    Ends {
        idle,
        end,
        mut shutdown,
        revoked,
    }: Ends<'_>,
) -> Ended {
    let (mut caller_read, mut caller_write) = tokio::io::split(TokioIo::new(caller));
    let (mut vendor_read, mut vendor_write) = tokio::io::split(TokioIo::new(vendor));
    // Milliseconds from `started` to the last byte either way.
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let moved = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let upward = pass(
        &mut caller_read,
        &mut vendor_write,
        &mut from_caller,
        &moved,
        &up,
    );
    let downward = pass(
        &mut vendor_read,
        &mut caller_write,
        &mut from_vendor,
        &moved,
        &down,
    );
    let idle = async {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let due = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
    };
    let total = async {
        match end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => std::future::pending().await,
        }
    };
    // Either side's close ends the session (RFC 6455 §7.1.1: the vendor, as the server, closes
    // its connection first once the closing handshake is done; the caller cannot be told
    // anything once it has closed its own).
    let reason = tokio::select! {
        ended = upward => ended.err().unwrap_or("granted"),
        ended = downward => ended.err().unwrap_or("granted"),
        () = idle => "upstream_idle_timeout",
        () = total => "upstream_total_timeout",
        _ = shutdown.wait_for(|stop| *stop) => "gateway_shutdown",
        () = revoked => "websocket_revoked",
    };
    Ended {
        reason,
        up: up.into_inner(),
        down: down.into_inner(),
    }
}

/// Passes one side's bytes on to the other as its frames allow ([`Frames::read`],
/// [`release_upto`]), counting them in `count`, until the side closes (`Ok`), or its frames or
/// a broken connection end the session (`Err` with the reason); bytes still held then are not
/// passed on.
async fn pass<R, W, S>(
    from: &mut R,
    to: &mut W,
    frames: &mut Frames<S>,
    moved: &(impl Fn() + Sync),
    count: &AtomicU64,
) -> Result<(), &'static str>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    S: Reader,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let mut held: Vec<u8> = Vec::new();
    let mut released = 0u64;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            // A close without TLS's `close_notify` (as many servers end a connection), or any
            // break once this side has sent its close frame, is a close.
            Err(error) if frames.closed() || error.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(_) => return Err(S::READ_BROKE),
        };
        moved();
        let hold = frames.read(&buffer[..read])?;
        let end = released + (held.len() + read) as u64;
        let upto = release_upto(hold, released, end)?;
        let release = (upto - released) as usize;
        // Most reads hold nothing back and follow none held: written as read, uncopied.
        let written = if held.is_empty() && upto == end {
            to.write_all(&buffer[..read]).await
        } else {
            held.extend_from_slice(&buffer[..read]);
            let written = to.write_all(&held[..release]).await;
            held.drain(..release);
            written
        };
        if let Err(error) = written {
            // The other side, answering this side's close, may have gone first.
            if frames.closed() {
                break;
            }
            return Err(match error.kind() {
                std::io::ErrorKind::TimedOut => S::WRITE_STALLED,
                _ => S::WRITE_BROKE,
            });
        }
        released = upto;
        count.fetch_add(release as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Up to where a side's stream may go on (counted from its first byte), from what
/// [`Frames::read`] answered (`hold`), with the bytes from `released` to `end` read but
/// not passed on yet; or why the session must end.
fn release_upto(hold: Option<u64>, released: u64, end: u64) -> Result<u64, &'static str> {
    let upto = hold.map_or(end, |from| from.clamp(released, end));
    if end - upto > MAX_HELD {
        return Err("websocket_held_too_long");
    }
    Ok(upto)
}

/// What one side's messages are read for: the caller's for caller tokens
/// ([`CallerTokens`]), the vendor's for the credential Postern injected ([`EchoedSecrets`]).
pub(crate) trait Reader {
    /// The reading of one message, as its payload passes.
    type Reading;
    /// Whether this side masks its frames (RFC 6455 §5.3: a client must, a server must not).
    const MASKED: bool;
    /// The session's end when a message holds what is looked for, when a frame breaks the
    /// protocol, and when a message is larger than allowed.
    const FOUND: &'static str;
    const PROTOCOL: &'static str;
    const TOO_LARGE: &'static str;
    /// The session's end when reading this side's connection fails (a reset, a TLS error: not
    /// a close), when writing to the other side's does, and when that write is cut at the
    /// connection's idle limit (a caller that stopped reading).
    const READ_BROKE: &'static str;
    const WRITE_BROKE: &'static str;
    const WRITE_STALLED: &'static str;
    fn start(&self) -> Self::Reading;
    /// Reads the next piece of a message: whether what is looked for now stands in it.
    fn read(&self, reading: &mut Self::Reading, piece: &[u8]) -> bool;
    /// How many of the last bytes read could begin it (more could complete it): 0 for none,
    /// `usize::MAX` where the reading cannot tell how many (then the whole message so far).
    fn pending(&self, reading: &Self::Reading) -> usize;
    /// Whether the message, ending here, holds it (what only its end decides).
    fn ends_in(&self, reading: &Self::Reading) -> bool;
    /// Whether a whole payload (a control frame's) holds it.
    fn in_whole(&self, bytes: &[u8]) -> bool;
}

/// The caller's messages, read for its own token and any `postern`-made one as a request body
/// is ([`TokenReading`]).
pub(crate) struct CallerTokens(pub(crate) Needles);

impl Reader for CallerTokens {
    type Reading = TokenReading;
    const MASKED: bool = true;
    const FOUND: &'static str = "caller_token_in_body";
    const PROTOCOL: &'static str = "websocket_protocol_error";
    const TOO_LARGE: &'static str = "request_too_large";
    const READ_BROKE: &'static str = "caller_closed";
    const WRITE_BROKE: &'static str = "upstream_error";
    const WRITE_STALLED: &'static str = "upstream_error";

    fn start(&self) -> TokenReading {
        TokenReading::new(true)
    }

    fn read(&self, reading: &mut TokenReading, piece: &[u8]) -> bool {
        reading.read(&self.0, piece)
    }

    fn pending(&self, reading: &TokenReading) -> usize {
        reading.pending(&self.0)
    }

    fn ends_in(&self, reading: &TokenReading) -> bool {
        reading.ends_in_token(&self.0)
    }

    fn in_whole(&self, bytes: &[u8]) -> bool {
        crate::body::whole_holds_a_token(&self.0, bytes, true)
    }
}

/// The vendor's messages, read for the credential Postern injected, in each form an answer's
/// body is read for it ([`crate::echo`]); the session is cut where one stands
/// (`secret_echoed`): a frame's length cannot change once its head has gone.
pub(crate) struct EchoedSecrets {
    needles: [Option<crate::echo::Needles>; 2],
    /// One less than the longest form: what a reading keeps of its last bytes.
    keep: usize,
}

impl EchoedSecrets {
    pub(crate) fn new(fixed: &crate::echo::Needles, minted: Option<crate::echo::Needles>) -> Self {
        let (needles, keep) = crate::echo::secrets(fixed, minted);
        EchoedSecrets { needles, keep }
    }
}

impl Reader for EchoedSecrets {
    type Reading = Zeroizing<Vec<u8>>;
    const MASKED: bool = false;
    const FOUND: &'static str = "secret_echoed";
    const PROTOCOL: &'static str = "upstream_websocket_error";
    const TOO_LARGE: &'static str = "response_too_large";
    const READ_BROKE: &'static str = "upstream_error";
    const WRITE_BROKE: &'static str = "caller_closed";
    const WRITE_STALLED: &'static str = "caller_stalled";

    fn start(&self) -> Self::Reading {
        Zeroizing::new(Vec::new())
    }

    fn read(&self, tail: &mut Self::Reading, piece: &[u8]) -> bool {
        let forms = crate::echo::forms(&self.needles);
        crate::echo::read_decoded(tail, piece, forms, self.keep)
    }

    fn pending(&self, tail: &Self::Reading) -> usize {
        crate::echo::starts_a_needle(tail, crate::echo::forms(&self.needles), self.keep)
    }

    fn ends_in(&self, _: &Self::Reading) -> bool {
        false
    }

    fn in_whole(&self, bytes: &[u8]) -> bool {
        crate::echo::forms(&self.needles).any(|needle| crate::proxy::contains(bytes, needle))
    }
}

/// One side of a session read as frames (RFC 6455 §5.2), each message's payload read as it
/// passes ([`Reader`]). Sans-IO: [`Frames::read`] takes the bytes as they come.
pub(crate) struct Frames<R: Reader> {
    reader: R,
    /// The largest message (its payloads' sum) that may pass.
    max_message: u64,
    /// The frame head read so far (2 to 14 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Within a frame's payload: what is left of it, its masking key and where in it the next
    /// byte falls, and whether it is a control frame and the last of its message.
    payload: Option<Payload>,
    /// The data message being read (its first frame came, its last has not ended).
    message: Option<Message<R::Reading>>,
    /// A control frame's payload, read whole (at most 125 bytes).
    control: Vec<u8>,
    /// The unmasked bytes of the piece being read.
    scratch: Vec<u8>,
    /// The bytes read so far, and where in them the frame being read began.
    fed: u64,
    frame_start: u64,
    /// This side sent a close frame: the closing handshake has begun, and a connection that
    /// breaks now (a server closing TCP without TLS's `close_notify`, a reset after the last
    /// frame) ends the session as a close does.
    closed: bool,
}

struct Payload {
    left: u64,
    key: [u8; 4],
    at: usize,
    /// A control frame's opcode (8, 9 or 10); `None` for a data frame.
    control: Option<u8>,
    fin: bool,
}

struct Message<Reading> {
    reading: Reading,
    bytes: u64,
    /// Where in the stream its first frame began.
    start: u64,
    /// Where in the stream its last payload byte read so far stands (one past it), and how
    /// many of its payload bytes its last data frame has given so far.
    payload_end: u64,
    in_frame: u64,
}

impl<R: Reader> Frames<R> {
    pub(crate) fn new(reader: R, max_message: u64) -> Self {
        Frames {
            reader,
            max_message,
            head: [0; 14],
            head_len: 0,
            payload: None,
            message: None,
            control: Vec::new(),
            scratch: Vec::new(),
            fed: 0,
            frame_start: 0,
            closed: false,
        }
    }

    /// Whether this side has sent a close frame.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// Reads the caller's next bytes. `Ok(None)`: every byte read so far may go on;
    /// `Ok(Some(from))`: those from `from` on (counted from the stream's first byte) stay until
    /// more, which is sure to come, shows they hold no token: the current message's, from its
    /// first frame, or a control frame's until it is read whole. `Err(reason)`: the session
    /// must end, nothing of these bytes passed on.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> Result<Option<u64>, &'static str> {
        while !bytes.is_empty() {
            match &mut self.payload {
                None => {
                    if self.head_len == 0 {
                        self.frame_start = self.fed;
                    }
                    let need = self.head_needs();
                    let take = (need - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
                    self.head_len += take;
                    bytes = &bytes[take..];
                    self.fed += take as u64;
                    if self.head_len == self.head_needs() {
                        self.start_frame()?;
                    }
                }
                Some(payload) => {
                    let take = usize::try_from(payload.left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    // A caller's payload is unmasked into `scratch`; a vendor's is read as sent.
                    let (piece, rest) = bytes.split_at(take);
                    let piece = match R::MASKED {
                        true => {
                            self.scratch.clear();
                            self.scratch.extend(
                                piece
                                    .iter()
                                    .enumerate()
                                    .map(|(i, byte)| byte ^ payload.key[(payload.at + i) % 4]),
                            );
                            &self.scratch[..]
                        }
                        false => piece,
                    };
                    payload.at = (payload.at + take) % 4;
                    payload.left -= take as u64;
                    bytes = rest;
                    self.fed += take as u64;
                    let (control, fin, done) = (payload.control, payload.fin, payload.left == 0);
                    if control.is_some() {
                        self.control.extend_from_slice(piece);
                    } else if let Some(message) = &mut self.message {
                        if self.reader.read(&mut message.reading, piece) {
                            return Err(R::FOUND);
                        }
                        message.payload_end = self.fed;
                        message.in_frame += take as u64;
                    }
                    if done {
                        self.payload = None;
                        self.end_frame(control, fin)?;
                    }
                }
            }
        }
        Ok(self.holding())
    }

    /// How many bytes the frame head being read has.
    fn head_needs(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let length = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length + if self.head[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// A frame's head is read whole: checks it and starts its payload.
    fn start_frame(&mut self) -> Result<(), &'static str> {
        let (first, second) = (self.head[0], self.head[1]);
        self.head_len = 0;
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        // No extension was negotiated: no reserved bit may be set; clients mask every frame,
        // servers none.
        if first & 0x70 != 0 || (second & 0x80 != 0) != R::MASKED {
            return Err(R::PROTOCOL);
        }
        // After its close frame an endpoint sends nothing more (RFC 6455 §5.5.1): a side that
        // does would keep its session going past the point where a broken connection counts
        // as a close.
        if self.closed {
            return Err(R::PROTOCOL);
        }
        let (left, key_at) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut length = [0; 8];
                length.copy_from_slice(&self.head[2..10]);
                let length = u64::from_be_bytes(length);
                if length >> 63 != 0 {
                    return Err(R::PROTOCOL);
                }
                (length, 10)
            }
            length => (u64::from(length), 2),
        };
        let mut key = [0; 4];
        if R::MASKED {
            key.copy_from_slice(&self.head[key_at..key_at + 4]);
        }
        let control = match opcode {
            0x8..=0xa => {
                if !fin || left > 125 {
                    return Err(R::PROTOCOL);
                }
                self.control.clear();
                Some(opcode)
            }
            0x0..=0x2 => {
                // A continuation continues a message; a text or binary frame begins one.
                if (opcode == 0x0) != self.message.is_some() {
                    return Err(R::PROTOCOL);
                }
                let start = self.frame_start;
                let reader = &self.reader;
                let message = self.message.get_or_insert_with(|| Message {
                    reading: reader.start(),
                    bytes: 0,
                    start,
                    payload_end: start,
                    in_frame: 0,
                });
                message.in_frame = 0;
                message.bytes = message.bytes.saturating_add(left);
                if message.bytes > self.max_message {
                    return Err(R::TOO_LARGE);
                }
                None
            }
            _ => return Err(R::PROTOCOL),
        };
        self.payload = Some(Payload {
            left,
            key,
            at: 0,
            control,
            fin,
        });
        if left == 0 {
            self.payload = None;
            self.end_frame(control, fin)?;
        }
        Ok(())
    }

    /// A frame's payload has been read whole.
    fn end_frame(&mut self, control: Option<u8>, fin: bool) -> Result<(), &'static str> {
        if let Some(opcode) = control {
            self.closed |= opcode == 0x8;
            // A close frame's reason is read on its own too: its status code's two bytes
            // before it could read as part of a token-shaped run (4161 is `\x10A`).
            let reason = match (opcode, self.control.get(2..)) {
                (0x8, Some(reason)) => reason,
                _ => &[],
            };
            if self.reader.in_whole(&self.control) || self.reader.in_whole(reason) {
                return Err(R::FOUND);
            }
            return Ok(());
        }
        if fin {
            if let Some(message) = self.message.take() {
                if self.reader.ends_in(&message.reading) {
                    return Err(R::FOUND);
                }
            }
        }
        Ok(())
    }

    /// From where bytes are held back ([`Frames::read`]): a message whose bytes so far end
    /// where what is looked for could begin, from that beginning where the reading tells it
    /// and its last data frame holds it, else from the message's first frame; a control frame
    /// read in part, from its head.
    fn holding(&self) -> Option<u64> {
        let message = self.message.as_ref().and_then(|message| {
            match self.reader.pending(&message.reading) as u64 {
                0 => None,
                pending if pending <= message.in_frame => Some(message.payload_end - pending),
                _ => Some(message.start),
            }
        });
        let control = match &self.payload {
            Some(payload) if payload.control.is_some() => Some(self.frame_start),
            _ => None,
        };
        message.into_iter().chain(control).min()
    }
}

/// Writes `frame` (opcode, payload) as a caller would send it, masked with `key`: for tests.
#[cfg(test)]
pub(crate) fn masked_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    frame(fin, opcode, payload, Some(key))
}

/// Writes a frame as a vendor would send it (unmasked, `key: None`) or a caller: for tests.
#[cfg(test)]
pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mask = if key.is_some() { 0x80 } else { 0 };
    let mut frame = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        length @ 0..=125 => frame.push(mask | length as u8),
        length @ 126..=0xffff => {
            frame.push(mask | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(mask | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    let key = key.unwrap_or_default();
    if mask != 0 {
        frame.extend_from_slice(&key);
    }
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    fn reader() -> Frames<CallerTokens> {
        Frames::new(
            CallerTokens(Needles::new(Some(
                b"pst_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            ))),
            1 << 20,
        )
    }

    /// Feeds `bytes` in pieces of `step`; the first refusal, else whether the last read holds.
    fn feed<R: Reader>(
        frames: &mut Frames<R>,
        bytes: &[u8],
        step: usize,
    ) -> Result<bool, &'static str> {
        let mut hold = None;
        for piece in bytes.chunks(step.max(1)) {
            hold = frames.read(piece)?;
        }
        Ok(hold.is_some())
    }

    /// What the relay passes on of `stream` read in `pieces` (their lengths, cycled), as
    /// [`pass`] does; and why it ended the session, if it did.
    fn relayed<R: Reader>(
        frames: &mut Frames<R>,
        stream: &[u8],
        pieces: &[usize],
    ) -> (Vec<u8>, Option<&'static str>) {
        let (mut released, mut read) = (0u64, 0usize);
        for &piece in pieces.iter().cycle() {
            if read == stream.len() {
                break;
            }
            let piece = piece.max(1).min(stream.len() - read);
            let hold = match frames.read(&stream[read..read + piece]) {
                Ok(hold) => hold,
                Err(reason) => return (stream[..released as usize].to_vec(), Some(reason)),
            };
            read += piece;
            match release_upto(hold, released, read as u64) {
                Ok(upto) => released = upto,
                Err(reason) => return (stream[..released as usize].to_vec(), Some(reason)),
            }
        }
        (stream[..released as usize].to_vec(), None)
    }

    /// The data frames' payloads in `stream` (unmasked, the last one as far as it goes),
    /// joined: what a vendor reads of the messages.
    fn unmasked(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 2 <= stream.len() {
            let (mut length, mut head) = (u64::from(stream[at + 1] & 0x7f), 2);
            if length == 126 && at + 4 <= stream.len() {
                length = u64::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]]));
                head = 4;
            } else if length == 127 && at + 10 <= stream.len() {
                length = u64::from_be_bytes(stream[at + 2..at + 10].try_into().unwrap());
                head = 10;
            }
            let masked = stream[at + 1] & 0x80 != 0;
            let start = at + head + if masked { 4 } else { 0 };
            if start > stream.len() {
                break;
            }
            let key = match masked {
                true => stream[at + head..start].to_vec(),
                false => vec![0; 4],
            };
            let end = (start + length as usize).min(stream.len());
            if stream[at] & 0x08 != 0 {
                at = end;
                continue;
            }
            out.extend(
                stream[start..end]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i % 4]),
            );
            at = end;
        }
        out
    }

    #[test]
    fn messages_without_a_token_pass_whole_however_split() {
        let mut stream = masked_frame(true, 1, br#"{"type":"session.update","session":{}}"#, KEY);
        stream.extend(masked_frame(true, 9, b"ping", KEY));
        stream.extend(masked_frame(false, 2, &[0u8; 300], KEY));
        stream.extend(masked_frame(true, 0, &[1u8; 70_000], KEY));
        stream.extend(masked_frame(true, 8, &[0x03, 0xe8], KEY));
        for step in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut frames = reader();
            assert_eq!(feed(&mut frames, &stream, step), Ok(false), "step {step}");
        }
    }

    #[test]
    fn a_token_in_a_message_is_found_however_split_and_however_written() {
        let token = "pst_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let other = "pst_ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";
        let escaped: String = token
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let bodies = [
            format!(r#"{{"type":"x","key":"{token}"}}"#),
            format!(r#"{{"type":"x","key":"{other}"}}"#),
            format!(r#"{{"type":"x","key":"{escaped}"}}"#),
        ];
        for body in &bodies {
            for step in [1, 5, 13, body.len() + 8] {
                let mut frames = reader();
                let stream = masked_frame(true, 1, body.as_bytes(), KEY);
                assert_eq!(
                    feed(&mut frames, &stream, step),
                    Err("caller_token_in_body"),
                    "{body} in pieces of {step}"
                );
            }
            // Fragmented: the token's halves in two frames of one message.
            let (first, second) = body.split_at(body.len() / 2);
            let mut stream = masked_frame(false, 1, first.as_bytes(), KEY);
            stream.extend(masked_frame(true, 9, b"", KEY));
            stream.extend(masked_frame(true, 0, second.as_bytes(), KEY));
            assert_eq!(feed(&mut reader(), &stream, 4), Err("caller_token_in_body"));
        }
        // In a control frame's payload (a close frame's reason).
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(token.as_bytes());
        let stream = masked_frame(true, 8, &close, KEY);
        assert_eq!(feed(&mut reader(), &stream, 3), Err("caller_token_in_body"));
    }

    #[test]
    fn what_could_begin_a_token_is_held_only_while_more_must_come() {
        // A frame cut in its middle right after the prefix: held, from where the prefix
        // begins (after the frame's 6-byte head and `abc `), until the rest is read.
        let mut stream = masked_frame(true, 2, b"whole", KEY);
        let first = stream.len() as u64;
        stream.extend(masked_frame(true, 1, b"abc pst_abc and more", KEY));
        let mut frames = reader();
        let cut = first as usize + 6 + 8;
        assert_eq!(frames.read(&stream[..cut]), Ok(Some(first + 6 + 4)));
        assert_eq!(frames.read(&stream[cut..]), Ok(None));
        // A whole message that ends in the prefix is not held: nothing more is sure to come.
        let mut frames = reader();
        assert_eq!(
            frames.read(&masked_frame(true, 1, b"ends in pst_", KEY)),
            Ok(None)
        );
        // A fragment that does is, from the prefix (after its 6-byte head and `ends in `),
        // until its message's next frame.
        let mut frames = reader();
        assert_eq!(
            frames.read(&masked_frame(false, 1, b"ends in pst_", KEY)),
            Ok(Some(6 + 8))
        );
        assert_eq!(
            frames.read(&masked_frame(true, 0, b" nothing", KEY)),
            Ok(None)
        );
    }

    #[test]
    fn frames_that_break_the_protocol_end_the_session() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        let mut reserved = masked_frame(true, 1, b"hi", KEY);
        reserved[0] |= 0x40;
        let long_ping = masked_frame(true, 9, &[0; 126], KEY);
        let fragmented_ping = masked_frame(false, 9, b"x", KEY);
        let stray_continuation = masked_frame(true, 0, b"x", KEY);
        let mut two_starts = masked_frame(false, 1, b"x", KEY);
        two_starts.extend(masked_frame(true, 1, b"y", KEY));
        let reserved_opcode = masked_frame(true, 3, b"x", KEY);
        for (what, stream) in [
            ("unmasked", unmasked.to_vec()),
            ("reserved bit", reserved),
            ("long ping", long_ping),
            ("fragmented ping", fragmented_ping),
            ("stray continuation", stray_continuation),
            ("two starts", two_starts),
            ("reserved opcode", reserved_opcode),
        ] {
            assert_eq!(
                feed(&mut reader(), &stream, 1),
                Err("websocket_protocol_error"),
                "{what}"
            );
        }
        let mut small = Frames::new(CallerTokens(Needles::new(None)), 100);
        let mut stream = masked_frame(false, 2, &[0; 60], KEY);
        stream.extend(masked_frame(true, 0, &[0; 60], KEY));
        assert_eq!(feed(&mut small, &stream, 7), Err("request_too_large"));
    }

    /// A message before `text`, then `text` as one message in random fragments with pings
    /// or empty continuations (up to 700) between them; masked with `key` (a caller's frames).
    fn fragmented(fuzz: &mut crate::fuzz::Fuzz, text: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut stream = frame(true, 1, b"before", key);
        let (mut at, mut opcode) = (0, 1);
        while at < text.len() {
            let take = 1 + fuzz.below(text.len() - at);
            let last = at + take == text.len();
            stream.extend(frame(last, opcode, &text[at..at + take], key));
            opcode = 0;
            at += take;
            let stuffed = if last {
                0
            } else {
                [0, 1, 3, 40, 700][fuzz.below(5)]
            };
            for _ in 0..stuffed {
                stream.extend(match fuzz.below(2) {
                    0 => frame(true, 9, &[b'x'; 125], key),
                    _ => frame(false, 0, b"", key),
                });
            }
        }
        stream
    }

    #[test]
    fn a_token_is_never_passed_on_whole_however_framed_split_or_padded() {
        let own = b"pst_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".to_vec();
        let seed = 0x005e_ed0f_3e55_a9e5;
        let mut fuzz = crate::fuzz::Fuzz(seed);
        for case in 0..1500 {
            let token = match fuzz.below(2) {
                0 => own.clone(),
                _ => crate::tokens::tests::random_token(&mut fuzz),
            };
            let mut text = br#"{"type":"input","text":""#.to_vec();
            text.extend((0..fuzz.below(40)).map(|_| b"ab p_\\"[fuzz.below(6)]));
            // Standing on its own (a base64url character before would make it no token).
            text.extend_from_slice(b", ");
            text.extend_from_slice(&token);
            if fuzz.below(2) == 0 {
                text.extend_from_slice(br#"","more":1}"#);
            }
            let stream = fragmented(&mut fuzz, &text, Some(KEY));
            let pieces: Vec<usize> = (0..8).map(|_| 1 + fuzz.below(300)).collect();
            let mut frames = Frames::new(CallerTokens(Needles::new(Some(&own))), 1 << 20);
            let (passed, ended) = relayed(&mut frames, &stream, &pieces);
            let seen = unmasked(&passed);
            let shown = || crate::fuzz::shown(seed, case, &text);
            assert!(
                !seen.windows(token.len()).any(|w| w == &token[..]),
                "a whole token went on: {}",
                shown()
            );
            assert!(
                matches!(
                    ended,
                    Some("caller_token_in_body" | "websocket_held_too_long")
                ),
                "{ended:?}: {}",
                shown()
            );
        }
    }

    #[test]
    fn a_long_message_whose_reads_each_end_where_a_token_could_begin_flows() {
        // 200 KiB of `p` in 4 KiB fragments, read in pieces that each end with a `p` (it
        // could begin `pst_`): only what could begin a token is held, never the message.
        let text = vec![b'p'; 200 * 1024];
        let mut stream = Vec::new();
        let parts: Vec<&[u8]> = text.chunks(4096).collect();
        for (i, part) in parts.iter().enumerate() {
            let opcode = u8::from(i == 0);
            stream.extend(masked_frame(i + 1 == parts.len(), opcode, part, KEY));
        }
        let (passed, ended) = relayed(&mut reader(), &stream, &[1000, 3001, 77]);
        assert_eq!(ended, None);
        assert_eq!(passed.len(), stream.len(), "the whole message went on");
        assert_eq!(unmasked(&passed), text);
        // Mid-message, at most the `p` a read ends with is held.
        let mut frames = reader();
        let (passed, ended) = relayed(&mut frames, &stream[..150_000], &[999]);
        assert_eq!(ended, None);
        assert!(
            passed.len() >= 150_000 - 1,
            "{} held",
            150_000 - passed.len()
        );
        // A message of the caller's own token's first 46 characters, again and again: each
        // read holds its last start of the token, and the token itself never goes on.
        let own = b"pst_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let mut text = own[..46].repeat(3000);
        text.extend_from_slice(b"G");
        let mut stream = masked_frame(false, 1, &text[..70_000], KEY);
        stream.extend(masked_frame(true, 0, &text[70_000..], KEY));
        let (passed, ended) = relayed(&mut reader(), &stream, &[4096]);
        assert_eq!(ended, Some("caller_token_in_body"));
        let seen = unmasked(&passed);
        assert!(!seen.windows(own.len()).any(|w| w == own));
        assert!(seen.len() > 100_000, "only {} bytes went on", seen.len());
    }

    #[test]
    fn frames_between_a_messages_parts_cannot_push_a_token_out() {
        let other = b"pst_ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";
        let mut stream = masked_frame(false, 1, b"{\"k\":\"", KEY);
        stream.extend(masked_frame(false, 0, other, KEY));
        for _ in 0..600 {
            stream.extend(masked_frame(true, 9, &[b'x'; 125], KEY));
        }
        stream.extend(masked_frame(true, 0, b"\"}", KEY));
        let (passed, ended) = relayed(&mut reader(), &stream, &[4096]);
        assert_eq!(ended, Some("websocket_held_too_long"));
        // Only the first fragment, which could begin no token, went on.
        assert_eq!(unmasked(&passed), b"{\"k\":\"", "{:?}", unmasked(&passed));
        // Fewer of them: held until the message's end shows the token.
        let mut stream = masked_frame(false, 1, other, KEY);
        for _ in 0..30 {
            stream.extend(masked_frame(true, 9, &[b'x'; 125], KEY));
        }
        stream.extend(masked_frame(true, 0, b"", KEY));
        let (passed, ended) = relayed(&mut reader(), &stream, &[100]);
        assert_eq!(ended, Some("caller_token_in_body"));
        assert!(unmasked(&passed).is_empty());
    }

    #[test]
    fn a_token_in_a_close_frames_reason_is_found_whatever_its_code() {
        let other = b"pst_ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";
        for code in [1000u16, 4161, 0x4141, 0x302d] {
            let mut close = code.to_be_bytes().to_vec();
            close.extend_from_slice(other);
            let stream = masked_frame(true, 8, &close, KEY);
            assert_eq!(
                feed(&mut reader(), &stream, 5),
                Err("caller_token_in_body"),
                "code {code}"
            );
        }
    }

    #[test]
    fn nothing_may_follow_a_close_frame() {
        let close = masked_frame(true, 8, &1000u16.to_be_bytes(), KEY);
        let mut frames = reader();
        assert!(!frames.closed());
        assert_eq!(frames.read(&close), Ok(None));
        assert!(frames.closed());
        let text = masked_frame(true, 1, b"more", KEY);
        assert_eq!(frames.read(&text), Err("websocket_protocol_error"));
    }

    /// The vendor's side, read for an injected credential `sk_live_key_4242` (raw, and as a
    /// JSON encoder escapes nothing of it).
    fn vendor_reader() -> Frames<EchoedSecrets> {
        let needles: crate::echo::Needles =
            Arc::new(vec![Zeroizing::new(b"sk_live_key_4242".to_vec())]);
        Frames::new(EchoedSecrets::new(&needles, None), 1 << 20)
    }

    #[test]
    fn an_echoed_credential_in_a_vendor_message_ends_the_session_before_it_reaches_the_caller() {
        let text = br#"{"type":"error","message":"bad key sk_live_key_4242 given"}"#;
        for cut in 1..text.len() {
            // One frame read in two pieces, and two fragments with a ping between.
            let whole = frame(true, 1, text, None);
            let mut fragments = frame(false, 1, &text[..cut], None);
            fragments.extend(frame(true, 10, b"", None));
            fragments.extend(frame(true, 0, &text[cut..], None));
            for (stream, pieces) in [(whole, vec![cut + 2, 1000]), (fragments, vec![3, 7])] {
                let (passed, ended) = relayed(&mut vendor_reader(), &stream, &pieces);
                assert_eq!(ended, Some("secret_echoed"), "cut {cut}");
                let seen = unmasked(&passed);
                assert!(
                    !seen.windows(16).any(|w| w == b"sk_live_key_4242"),
                    "cut {cut}: {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
        // Nothing like it: every message passes whole, none held after its end.
        let mut stream = frame(true, 1, b"sk_live_ and sk_", None);
        stream.extend(frame(true, 2, &[0x73; 70_000], None));
        let (passed, ended) = relayed(&mut vendor_reader(), &stream, &[5, 4096]);
        assert_eq!((passed.len(), ended), (stream.len(), None));
        // A vendor's frame must not be masked.
        let masked = masked_frame(true, 1, b"hello", KEY);
        assert_eq!(
            feed(&mut vendor_reader(), &masked, 3).map(|_| ()),
            Err("upstream_websocket_error")
        );
    }

    #[test]
    fn an_echoed_credential_is_never_passed_on_whole_however_framed_and_the_rest_flows() {
        let seed = 0x00ec_4011_5ec2_e700;
        let mut fuzz = crate::fuzz::Fuzz(seed);
        for case in 0..1500 {
            let echoes = fuzz.below(2) == 0;
            let mut text = br#"{"type":"error","message":""#.to_vec();
            // Text full of the key's beginnings (`s`, `sk_`, `sk_live_`).
            let noise: [&[u8]; 4] = [b"s", b"sk_", b"sk_live_", b"x "];
            for _ in 0..fuzz.below(30) {
                text.extend_from_slice(noise[fuzz.below(4)]);
            }
            if echoes {
                text.extend_from_slice(b"sk_live_key_4242");
            }
            if fuzz.below(2) == 0 {
                text.extend_from_slice(br#""}"#);
            }
            let stream = fragmented(&mut fuzz, &text, None);
            let pieces: Vec<usize> = (0..8).map(|_| 1 + fuzz.below(300)).collect();
            let (passed, ended) = relayed(&mut vendor_reader(), &stream, &pieces);
            let seen = unmasked(&passed);
            let shown = || crate::fuzz::shown(seed, case, &text);
            // Not even its start beyond what the noise holds: it is held until decided.
            assert!(
                !seen.windows(9).any(|w| w == b"sk_live_k"),
                "the key's start went on: {}",
                shown()
            );
            match echoes {
                true => assert!(
                    matches!(ended, Some("secret_echoed" | "websocket_held_too_long")),
                    "{ended:?}: {}",
                    shown()
                ),
                // Without it, everything goes on by the message's end, unless over 64 KiB of
                // pings came after a fragment ending in what could begin the key.
                false => match ended {
                    None => assert_eq!(passed.len(), stream.len(), "{}", shown()),
                    Some(ended) => assert_eq!(ended, "websocket_held_too_long", "{}", shown()),
                },
            }
        }
    }
}
