//! The data plane, one call, as its phases:
//!
//! `check_request` → `identify_caller` → `route` (integration + operation) → `authorize` (Cedar) →
//! `rate_limit` → `inject` (strip caller credentials, add the vendor's) → `forward` (guarded
//! dial, TLS) → `prepare_response` (limits, redirects; `inspect_scanned` when the body is
//! scanned) → record (when the body ends).
//!
//! Each phase reads and fills the one [`CallContext`]; a phase that refuses returns a
//! [`CallError`] and nothing after it runs, so nothing reaches the vendor.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::body::CallerBody;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use percent_encoding::AsciiSet;
use postern_policy::{AuthzRequest, Reason};

use crate::audit::Outcome;
use crate::body::{
    ForwardBody, GatewayBody, PendingAudit, RequestBodyViolation, ResponseBody, Stall,
};
use crate::context::{AuthMethod, CallContext, ConnectionInfo};
use crate::error::CallError;
use crate::events::Decision;
use crate::listener::{Malformed, OnMalformed};
use crate::oauth::TokenSource;
use crate::overrides::{form_decoded, form_name_is, method_override, OverrideScan};
use crate::record::PendingRecord;
use crate::runtime::{ByCertificate, Injector, IntegrationRuntime, Runtime};
use crate::upstream::{ConnectError, UpstreamBody, UpstreamError};
use crate::Shared;
use postern_config::AuditMode;
use postern_tlog::RecordKind;
use zeroize::Zeroizing;

/// Characters escaped in an injected query value.
pub const QUERY_VALUE: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Connection-scoped headers never forwarded (RFC 9110 §7.6.1), in either direction.
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A vendor's answer headers that speak for the whole origin they come from, not its own paths:
/// in path mode every integration shares Postern's origin, so one vendor's would steer the
/// caller's client for all of them (another host for the origin, `Alt-Svc`; its data wiped,
/// `Clear-Site-Data`; HTTPS pinned for the name, `Strict-Transport-Security`; the origin's
/// network errors reported to the vendor's collector, `NEL` with the `Report-To` groups it
/// names; client hints asked of every later request to the origin, `Accept-CH`). Not passed on
/// in path mode; through the forward proxy the caller talks to the vendor's own origin.
const ORIGIN_WIDE: [HeaderName; 6] = [
    header::ALT_SVC,
    HeaderName::from_static("clear-site-data"),
    header::STRICT_TRANSPORT_SECURITY,
    HeaderName::from_static("nel"),
    HeaderName::from_static("report-to"),
    HeaderName::from_static("accept-ch"),
];

/// The fields that say what a body is: a `Connection` header naming one (which RFC 9110
/// §7.6.1 forbids a sender) does not take it off, in either direction. Taken off, the body
/// would pass on as something other than what Postern read it as: an answer coded while read
/// for the injected credential as plain, a request typed `text/plain` (not read for `_method`
/// or `access_token`) that the vendor reads as a form once its type is gone.
const BODY_FIELDS: [HeaderName; 3] = [
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
];

/// Serves one call and always answers; refusals and failures are recorded here, streamed
/// responses when their body ends. CONNECT and absolute-form requests go to the forward proxy.
///
/// Not an `async fn`: it picks the path at once and returns that path's future, so the call's
/// future is the pipeline's own and not one level more (each level of `async fn` keeps its
/// arguments and is copied whole when it is made, and a call's futures are kilobytes).
pub fn handle(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<CallerBody>,
) -> Handled<impl Future<Output = Response<GatewayBody>> + Send> {
    // The forward-proxy paths are boxed (allocated only when taken): a future is as large as its
    // largest branch, and every call's future is moved into a box before it is polled.
    if request.method() == http::Method::CONNECT {
        return Handled::Boxed {
            call: Box::pin(crate::forward_proxy::handle_connect(
                shared, connection, request,
            )),
        };
    }
    // Absolute-form is HTTP/1 proxy syntax; every HTTP/2 request carries a scheme.
    if connection.tunnel.is_none()
        && request.version() < http::Version::HTTP_2
        && request.uri().scheme().is_some()
    {
        return Handled::Boxed {
            call: Box::pin(crate::forward_proxy::handle_absolute(
                shared, connection, request,
            )),
        };
    }
    Handled::Call {
        call: handle_call(shared, connection, request),
    }
}

/// A forward-proxy call's future, boxed.
type BoxedCall = Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send>>;

pin_project_lite::pin_project! {
    /// The future [`handle`] returns: the pipeline's, or a boxed forward-proxy path.
    #[must_use = "a call does nothing until its future is awaited"]
    #[project = HandledProjection]
    pub enum Handled<F> {
        Call { #[pin] call: F },
        Boxed { call: BoxedCall },
    }
}

impl<F: Future<Output = Response<GatewayBody>>> Future for Handled<F> {
    type Output = Response<GatewayBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HandledProjection::Call { call } => call.poll(cx),
            HandledProjection::Boxed { call } => call.as_mut().poll(cx),
        }
    }
}

/// The L7 pipeline for one call: path mode, or a request inside an intercepted tunnel
/// (`connection.tunnel` names the caller and integration). What needs no waiting is done
/// before the future is made; the future is an `async move` block (see `pipeline`).
pub fn handle_call(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<CallerBody>,
) -> impl Future<Output = Response<GatewayBody>> + Send {
    let runtime = shared.runtime.load_full();
    // A shared copy of the target (no allocation): the vendor path is a slice of it.
    let target = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let context = CallContext::new(
        &connection,
        request.method(),
        request.version(),
        shared.audit.target_hmac(target.as_str()),
    );
    async move {
        let mut call = Unanswered::new(&shared, context);
        let result = pipeline(
            &shared,
            &runtime,
            &connection,
            &mut call.context,
            &mut call.progress,
            &target,
            request,
        )
        .await;
        call.answered();
        match result {
            Ok(response) => response,
            Err(error) => {
                let mut response = refuse(&shared, &call.context, &call.progress, &error);
                close_after_refusal(&connection, &call.context, &mut response);
                response
            }
        }
    }
}

/// A refusal before any request on its connection identified a caller (`401`, `407`, a `400`
/// for a malformed path or a token in the method) closes the connection once it is answered
/// ([`ConnectionInfo::close_unidentified`]), as does one on a connection told to close otherwise
/// (a lapsed client certificate, a tunnel a reload no longer allows): HTTP/1.x by the answer's
/// `connection: close` (which Postern's own server closes by, lingering, and hyper's), h2 by a
/// GOAWAY ([`ConnectionInfo::closing`]). A peer without a caller token then cannot hold one of
/// the listener's connection places by sending a request every idle period: each refusal costs
/// it a connection. A connection that has identified a caller keeps going after a refusal (a
/// token revoked or mistyped in one of its requests).
pub(crate) fn close_after_refusal(
    connection: &ConnectionInfo,
    context: &CallContext,
    response: &mut Response<GatewayBody>,
) {
    if context.caller.is_none() && connection.tunnel.is_none() {
        connection.close_unidentified();
    }
    if connection.told_to_close() && context.protocol != "HTTP/2" {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A call not answered yet, with what it has learnt so far. Dropped before it has an answer —
/// its caller hung up (HTTP/1.1 EOF or reset, an h2 stream reset) while it waited, most often
/// for the vendor or a dial, or shutdown's grace ran out — it is recorded like a refusal:
/// event, metrics and audit outcome with `499 caller_closed` (or `503 gateway_shutdown`).
///
/// Every call holds one from its first poll until [`Unanswered::answered`]: the pipeline's
/// (path mode, intercepted tunnels, absolute-form to a registered host) and the forward proxy's
/// own (CONNECT, absolute-form to an unregistered host). A call is answered once its response
/// is built — a refusal recorded, or its record passed on with the context (a streamed body, a
/// tunnel's task, the pipeline for a registered host) — so the guard never records a call twice.
pub(crate) struct Unanswered<'a> {
    shared: &'a Shared,
    pub context: CallContext,
    pub progress: Progress,
    answered: bool,
}

impl<'a> Unanswered<'a> {
    pub(crate) fn new(shared: &'a Shared, context: CallContext) -> Self {
        Unanswered {
            shared,
            context,
            progress: Progress::default(),
            answered: false,
        }
    }

    /// The call has its answer, or its record has gone elsewhere: dropping it records nothing.
    pub(crate) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        // The context is taken (into a streamed answer, a tunnel's task) only just before the
        // call returns its answer, with no await in between: a call dropped unanswered still
        // has it.
        if !self.answered {
            record_refusal(
                self.shared,
                &self.context,
                &self.progress,
                &unanswered(self.shared),
            );
        }
    }
}

/// Why a call ended without an answer: its caller hung up (`499 caller_closed`), or, while
/// Postern shuts down, `shutdown_grace_ms` ran out and the calls still in flight were dropped
/// with the workers (`503 gateway_shutdown`): that, not the caller, ended them.
pub(crate) fn unanswered(shared: &Shared) -> CallError {
    if shared.is_draining() {
        CallError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "gateway_shutdown",
            "Postern shut down before the call was answered (shutdown_grace_ms ran out)",
        )
    } else {
        CallError::new(
            http::StatusCode::from_u16(499).expect("499 is a valid status code"),
            "caller_closed",
            "the caller closed the connection before the call was answered",
        )
    }
}

/// Records a refused or failed call (event, metrics, audit outcome) and builds its answer.
pub(crate) fn refuse(
    shared: &Shared,
    context: &CallContext,
    progress: &Progress,
    error: &CallError,
) -> Response<GatewayBody> {
    record_refusal(shared, context, progress, error);
    let mut response = error
        .to_response(&context.request_id)
        .map(GatewayBody::full);
    if let Some(index) = progress.intent_index {
        response
            .headers_mut()
            .insert(crate::AUDIT_INDEX, HeaderValue::from(index));
    }
    response
}

/// Records a refused or failed call: its event, metrics and audit outcome entry.
pub(crate) fn record_refusal(
    shared: &Shared,
    context: &CallContext,
    progress: &Progress,
    error: &CallError,
) {
    let Progress {
        authorized,
        intent_index,
    } = *progress;
    let decision = if authorized {
        Decision::Allow
    } else {
        Decision::Deny
    };
    shared
        .recorder
        .record(context, error.status.as_u16(), decision, error.code);
    if context.caller.is_none() && shared.anonymous_audit.check().is_err() {
        shared.recorder.metrics.audit_anonymous_unrecorded.inc();
        return;
    }
    let record = shared.audit.record(
        RecordKind::Outcome,
        context,
        Some(&Outcome {
            decision: if authorized {
                postern_tlog::Decision::Allow
            } else {
                postern_tlog::Decision::Deny
            },
            reason: error.code,
            status: error.status.as_u16(),
            response_bytes: 0,
            intent_index,
        }),
    );
    shared.audit.append_later(record, &context.request_id);
}

/// The hook a gateway listener calls for each request head refused before the pipeline saw it
/// (by hyper, [`crate::listener::malformed`], or by Postern's HTTP/1.1 server, both framings):
/// it is recorded as a refused call (`deny`), with an empty method and no path or target;
/// inside an intercepted tunnel, with the tunnel's caller and integration. Returns the answer.
pub(crate) fn on_malformed(shared: &Arc<Shared>) -> OnMalformed {
    let shared = shared.clone();
    Arc::new(move |connection: &ConnectionInfo, refused: Malformed| {
        let context = CallContext::malformed(connection);
        let error = CallError::new(refused.status, refused.reason, refused.message);
        refuse(&shared, &context, &Progress::default(), &error)
    })
}

/// How far a call got: decides the recorded decision and links the outcome to its intent.
#[derive(Default, Clone, Copy)]
pub(crate) struct Progress {
    pub authorized: bool,
    pub intent_index: Option<u64>,
}

/// The call's phases. Not an `async fn` but an `async move` block: an `async fn` keeps each
/// argument twice in its future (as captured and as a local), and the request is hundreds of
/// bytes. The phases that wait only for some integrations (the body scans, the OAuth2 token)
/// are boxed where they apply, so the usual call's future holds none of their state; a
/// `best_effort` integration's intent entry is queued without a future at all.
// The `async move` block is the point (see above), not an oversight.
#[allow(clippy::manual_async_fn)]
fn pipeline<'a>(
    shared: &'a Arc<Shared>,
    runtime: &'a Arc<Runtime>,
    connection: &'a Arc<ConnectionInfo>,
    context: &'a mut CallContext,
    progress: &'a mut Progress,
    target: &'a http::uri::PathAndQuery,
    mut request: Request<CallerBody>,
) -> impl Future<Output = Result<Response<GatewayBody>, CallError>> + 'a {
    async move {
        // Before anything else, a method shaped like any caller token; once the caller is
        // known, its own: a method is recorded (event, metrics) and echoed in refusals. An
        // extension method refused with a malformed request is not recorded either (it may
        // hold a token of another shape, which is not known before the caller is).
        refuse_a_token_in_the_method(context, request.method(), None)?;
        let declared_length = check_request(&request).inspect_err(|_| {
            if !is_standard_method(request.method()) {
                context.method = None;
            }
        })?;
        let caller_token = identify_caller(runtime, connection, context, request.headers())?;
        refuse_a_token_in_the_method(context, request.method(), caller_token.as_deref())?;
        let (integration, vendor_path) = match &connection.tunnel {
            Some(tunnel) => route_tunnel(runtime, connection, context, tunnel, target.path())?,
            None => route(runtime, context, target.path())?,
        };
        if let Some(limit) = integration.config.max_header_bytes {
            check_header_bytes(&request, target, limit)?;
        }
        let websocket = crate::websocket::requested(&request);
        // Read once: whether the body is compressed decides how its size is authorized; a
        // coding Postern cannot undo is refused (415) only after the authorization's refusals.
        let encoding = body_encoding(request.headers());
        authorize(
            runtime,
            &integration,
            context,
            &request,
            vendor_path,
            declared_length,
            (websocket, !matches!(encoding, Ok(None))),
        )?;
        // A WebSocket handshake goes on only to an operation that takes one; the caller's
        // connection is handed over once the vendor's `101` has been answered.
        let mut upgrade = None;
        if websocket {
            upgrade = Some(crate::websocket::admit(
                &integration,
                context,
                &mut request,
            )?);
        }
        progress.authorized = true;
        rate_limit(&integration, context)?;
        if let Some(caller) = &context.caller {
            let places = shared.open_calls.admit(&integration, caller)?;
            context.places = places;
        }
        let body = std::mem::replace(request.body_mut(), CallerBody::empty());
        let encoding = match body.is_end_stream() {
            true => None,
            false => encoding?,
        };
        // A compressed body's decoder counts against its caller's part of the budget.
        if let Some(caller) = &context.caller {
            context.request_body.set_caller(caller, encoding);
        }
        let (body, scan) = match &integration.config.data_classes {
            None => {
                let max = integration.config.max_request_body_bytes;
                let token = caller_token.as_deref();
                // A body with nothing in it (a GET's) has no field to read: its headers are not
                // looked at for one.
                let overrides = match body.is_end_stream() {
                    true => None,
                    false => OverrideScan::for_request(
                        request.method(),
                        request.headers(),
                        injects_bearer(&integration),
                    ),
                };
                // Nothing is read ahead here: the reading starts with the first frame.
                let body = ForwardBody::new(body, max, context.request_body.clone())
                    .reading(encoding, token, overrides)
                    .map_err(|violation| body_refusal(violation, max))?;
                (body, None)
            }
            Some(_) => {
                let scanned = Box::pin(crate::scan::scan_request(
                    &integration,
                    &runtime.scanner,
                    context,
                    request.headers(),
                    encoding,
                    body,
                    caller_token.as_deref(),
                ))
                .await;
                match scanned {
                    Ok(scanned) => scanned,
                    Err((error, summary)) => {
                        // A refusal still records what the body carried (classes and counts, never
                        // values).
                        if !summary.classes.is_empty() {
                            shared.note_dataflow(context, &summary, "request_blocked");
                            context.request_scan = Some(summary);
                        }
                        return Err(error);
                    }
                }
            }
        };
        if let Some(scan) = &scan {
            shared.note_dataflow(context, scan, "request");
        }
        let mut request = request.map(|_| body);
        if scan.as_ref().is_some_and(|scan| scan.redacted) {
            crate::scan::drop_digests(request.headers_mut());
        }
        context.request_scan = scan;
        if let Some(intent) = queue_intent(shared, Some(&integration), context) {
            progress.intent_index = durable_intent(shared, context, intent).await?;
        }
        let response = match &integration.credential {
            Ok(Some(Injector::OAuth2(source))) => {
                // Boxed: only OAuth2 integrations pay for its state.
                let source = source.clone();
                Box::pin(oauth_call(
                    &integration,
                    context,
                    vendor_path,
                    request,
                    declared_length,
                    caller_token.as_deref(),
                    source,
                    upgrade.is_some(),
                ))
                .await?
            }
            _ => {
                let upstream_request = inject(
                    &integration,
                    vendor_path,
                    request,
                    declared_length,
                    caller_token.as_deref(),
                    None,
                    &mut context.reached,
                )?;
                let result = match upgrade {
                    None => {
                        let caller = context.caller.as_deref();
                        forward(&integration, upstream_request, context.started, caller).await
                    }
                    // Boxed: only a handshake pays for its state.
                    Some(_) => {
                        Box::pin(crate::websocket::handshake(
                            &integration,
                            upstream_request,
                            context.started,
                        ))
                        .await
                    }
                };
                forwarded(&integration, context, result, declared_length)?
            }
        };
        if let Some(caller) = upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let mut response = response;
                let vendor = hyper::upgrade::on(&mut response);
                // The session's messages are read for the token its handshake carried too.
                let injected = response.extensions().get::<crate::oauth::Minted>().cloned();
                let prepared =
                    prepare_response(&integration, context, response, progress.intent_index)?;
                return crate::websocket::open(
                    shared,
                    &integration,
                    connection,
                    context,
                    progress.intent_index,
                    prepared.parts,
                    (caller, vendor),
                    (caller_token.as_deref(), vendor_path, injected),
                );
            }
        }
        if integration.config.data_classes.is_some() {
            // Boxed like the request's scan: only scanning integrations pay for its state.
            Box::pin(inspect_scanned(
                shared,
                runtime,
                &integration,
                context,
                response,
                progress.intent_index,
            ))
            .await
        } else {
            let prepared =
                prepare_response(&integration, context, response, progress.intent_index)?;
            Ok(answer(
                shared,
                &integration,
                context,
                prepared,
                (Bytes::new(), None),
                progress.intent_index,
            ))
        }
    }
}

/// An OAuth2 integration's vendor call: a token (cached, or minted), the request with it, and
/// once more with a fresh token if the vendor refuses the first (a WebSocket handshake, once).
#[allow(clippy::too_many_arguments)]
async fn oauth_call(
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    vendor_path: &str,
    request: Request<ForwardBody>,
    declared_length: Option<u64>,
    caller_token: Option<&[u8]>,
    source: Arc<TokenSource>,
    websocket: bool,
) -> Result<Response<UpstreamBody>, CallError> {
    let token = oauth_token(integration, &source, context.started).await?;
    let upstream_request = inject(
        integration,
        vendor_path,
        request,
        declared_length,
        caller_token,
        Some(token.header.clone()),
        &mut context.reached,
    )?;
    let answer = if websocket {
        // A handshake is not sent twice: its answer may be the session.
        let result =
            crate::websocket::handshake(integration, upstream_request, context.started).await;
        forwarded(integration, context, result, declared_length)
    } else {
        forward_replayable(
            integration,
            context,
            upstream_request,
            &source,
            token.clone(),
        )
        .await
    };
    // The answer is read for the token its request carried ([`oauth_echoes`]).
    answer.map(|mut response| {
        let injected = response
            .extensions()
            .get::<crate::oauth::Minted>()
            .is_some();
        if !injected {
            response.extensions_mut().insert(token);
        }
        response
    })
}

/// The intent entry: durable before the call is forwarded (or a tunnel opens), failing closed
/// with 503 `audit_unavailable`. Integrations with `audit = "best_effort"` queue it without
/// waiting for the disk (no receipt index); destinations no integration claims always wait.
pub(crate) async fn record_intent(
    shared: &Arc<Shared>,
    integration: Option<&IntegrationRuntime>,
    context: &CallContext,
) -> Result<Option<u64>, CallError> {
    match queue_intent(shared, integration, context) {
        Some(intent) => durable_intent(shared, context, intent).await,
        None => Ok(None),
    }
}

/// The intent entry, queued at once for a `best_effort` integration (`None`: nothing to wait
/// for); otherwise returned, for [`durable_intent`].
fn queue_intent(
    shared: &Arc<Shared>,
    integration: Option<&IntegrationRuntime>,
    context: &CallContext,
) -> Option<crate::audit::Entry> {
    let record = shared.audit.record(RecordKind::Intent, context, None);
    if integration.is_some_and(|i| i.config.audit == AuditMode::BestEffort) {
        // Provisional: left out if the call's outcome joins the same group commit.
        shared
            .audit
            .append_later(record.provisional(context), &context.request_id);
        return None;
    }
    Some(record)
}

/// Waits until the intent entry is durable: its index, or 503 `audit_unavailable`.
async fn durable_intent(
    shared: &Arc<Shared>,
    context: &CallContext,
    intent: crate::audit::Entry,
) -> Result<Option<u64>, CallError> {
    match shared.audit.append_durable(intent).await {
        Ok(index) => Ok(Some(index)),
        Err(why) => {
            tracing::error!(integration = %context.integration.as_deref().unwrap_or(""), request_id = %context.request_id, %why, "audit log unavailable; refusing the call");
            Err(CallError::unavailable(
                "audit_unavailable",
                "the audit log cannot record this call right now, and no call leaves without its record; retry later (see /readyz)",
            ))
        }
    }
}

/// Refuses malformed requests before anything else: traversal, encoded separators, control
/// characters, conflicting framing. Returns the declared `Content-Length` (read once here for
/// the policy's request size and the body limit).
fn check_request(request: &Request<CallerBody>) -> Result<Option<u64>, CallError> {
    let path = request.uri().path();
    if let Some(problem) = path_problem(path) {
        return Err(CallError::bad_request(
            "invalid_path",
            format!("the request path is refused: {problem}; send a normalized path such as /<integration>/v1/resource"),
        ));
    }
    if let Some(how) = method_override(request) {
        return Err(CallError::bad_request(
            "method_override_refused",
            format!(
                "the request's {how} names another method than its own ({}): a vendor that honours it would run an operation that was not authorized; send the request with the method it means",
                request.method()
            ),
        ));
    }
    let headers = request.headers();
    check_transfer_coding(headers)?;
    check_header_aliases(headers)?;
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else {
        return Ok(None);
    };
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(CallError::bad_request(
            "conflicting_framing",
            "the request has both Content-Length and Transfer-Encoding; send only one",
        ));
    }
    if lengths.next().is_some() {
        return Err(CallError::bad_request(
            "conflicting_framing",
            "the request has several Content-Length headers; send exactly one",
        ));
    }
    Ok(crate::h1::parse_length(length.as_bytes()))
}

/// The framing, body and hop-by-hop headers whose names hold a `-`, which a name with `_` for
/// it stands for where a server reads headers the CGI way ([`check_header_aliases`]).
const ALIASED_BY_UNDERSCORE: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// The lengths of [`ALIASED_BY_UNDERSCORE`]'s names, one bit each: most headers are told apart
/// from them by their length alone (checked against the names in a test).
const ALIASED_LENGTHS: u32 = 1 << 10 | 1 << 12 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;

/// Refuses a header spelled as a framing or hop-by-hop one with `_` for `-`
/// (`Transfer_Encoding`, `content_length`, `Content_Type`): Postern frames the body it forwards
/// itself, reads it by its own type and coding, and takes hop-by-hop headers off, but passes
/// other names on, and servers that read headers the CGI
/// way (Unicorn, older Puma, PHP and WSGI stacks behind a proxy that passes such names) take
/// `transfer_encoding: chunked` for `Transfer-Encoding` and frame the body otherwise than
/// Postern read it: a request smuggled inside it runs with the injected credential, neither
/// authorized nor recorded (`400 header_alias_refused`).
pub(crate) fn check_header_aliases(headers: &HeaderMap) -> Result<(), CallError> {
    let alias = headers
        .keys()
        .filter(|name| {
            let length = name.as_str().len();
            length < 32 && ALIASED_LENGTHS & (1 << length) != 0
        })
        .find(|name| cgi_alias_of(name, &ALIASED_BY_UNDERSCORE));
    match alias {
        None => Ok(()),
        Some(name) => Err(CallError::bad_request(
            "header_alias_refused",
            format!(
                "the request has a header `{name}`, which servers that read `_` as `-` take for a framing or hop-by-hop header; send the header under its own name, or not at all"
            ),
        )),
    }
}

/// A transfer coding under `chunked` (`gzip, chunked`) is not undone by the framing, and a body
/// forwarded without its header would reach the vendor, and every reading of Postern's, still
/// coded: refused (RFC 9112 §6.1: 501 for a transfer coding the server does not understand).
pub(crate) fn check_transfer_coding(headers: &HeaderMap) -> Result<(), CallError> {
    if headers.contains_key(header::TRANSFER_ENCODING) && !crate::h1::chunked_alone(headers) {
        return Err(CallError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            "the request's Transfer-Encoding is not `chunked` alone; send the body chunked, or with Content-Length (a compressed body names its coding in Content-Encoding)",
        ));
    }
    Ok(())
}

/// The coding a request body's `Content-Encoding` (all its lines as one list) names to
/// undo. Postern reads every body it forwards — for the caller's token, a `_method` field, data
/// classes — as a vendor that undoes the coding would, so a coding it cannot undo (anything but
/// one `gzip`, `deflate`, `br` or `zstd`: codings stacked, unknown ones) is refused before anything is
/// sent: `415` (RFC 9110 §15.5.16).
pub(crate) fn body_encoding(
    headers: &HeaderMap,
) -> Result<Option<postern_scan::Coding>, CallError> {
    let Some(encoding) = crate::scan::all_values(headers, &header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    postern_scan::StreamDecoder::check(&encoding).map_err(|unscanned| {
        // Named when it is a plausible coding name; the caller's own text otherwise stays out.
        let coding = match unscanned.reason {
            postern_scan::UnscannedReason::UnsupportedEncoding { encoding }
                if encoding.len() <= 40
                    && encoding
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._, ".contains(&b)) =>
            {
                encoding
            }
            _ => "(not a coding name)".to_owned(),
        };
        CallError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            format!(
                "the request body's Content-Encoding `{}` cannot be read by Postern, which checks every body it forwards (for the caller token, a _method field, data classes) as a vendor that undoes the coding would; send the body uncompressed, or in one coding, gzip, deflate, br or zstd",
                coding
            ),
        )
    })
}

/// The `Cookie` fields of `headers` as one, joined by "; ".
fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Each part was a valid field value, and so is "; " between them.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Refuses a request whose header section is larger than its integration allows
/// (`max_header_bytes`): each field's name and value plus 4 bytes (`: ` and CRLF, as on
/// HTTP/1.1), and the request target, however the request came (HTTP/1.1 or h2).
fn check_header_bytes(
    request: &Request<CallerBody>,
    target: &http::uri::PathAndQuery,
    limit: usize,
) -> Result<(), CallError> {
    let headers = request.headers();
    // An h2 request's `:authority` stands for the `Host` field an HTTP/1.1 one carries.
    let authority = match headers.contains_key(header::HOST) {
        true => 0,
        false => request
            .uri()
            .authority()
            .map_or(0, |authority| "host".len() + authority.as_str().len() + 4),
    };
    let size = headers
        .iter()
        .fold(target.as_str().len() + authority, |size, (name, value)| {
            size + name.as_str().len() + value.len() + 4
        });
    if size <= limit {
        return Ok(());
    }
    Err(CallError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_headers_too_large",
        format!("the request's header fields take {size} bytes, more than this integration's max_header_bytes ({limit}); send fewer or smaller headers"),
    ))
}

/// Why a raw request path is refused, if it is.
pub fn path_problem(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("it does not start with '/'");
    }
    // One pass over the bytes (this runs on every call): a problem with a character wins over
    // a problem with a segment, wherever each is. A segment's name is what comes before its
    // first ';' ([`postern_config::segment_name`], here found in the same pass), so `..;x`
    // climbs as `..` does and `;x` alone is an empty segment.
    let (mut dot_segment, mut empty_segment) = (false, false);
    let (mut segment_start, mut name_end) = (1, None);
    let mut segment_ends = |start: usize, name_end: usize| {
        let name = &bytes[start..name_end];
        dot_segment |= matches!(name, b"." | b"..");
        name.is_empty()
    };
    for (index, &byte) in bytes.iter().enumerate() {
        if byte < 0x20 || byte == 0x7f {
            return Some("it contains a control character");
        }
        match byte {
            b'\\' => return Some("it contains a backslash"),
            b'%' => {
                let (Some(&high), Some(&low)) = (bytes.get(index + 1), bytes.get(index + 2)) else {
                    return Some("it contains a malformed percent-escape");
                };
                let (Some(high), Some(low)) = (hex_digit(high), hex_digit(low)) else {
                    return Some("it contains a malformed percent-escape");
                };
                match high << 4 | low {
                    b'.' => return Some("it contains an encoded '.' (%2e)"),
                    // No encoder makes these (RFC 3986 §2.3), and a vendor that decodes them
                    // before routing would read `%73earch` as the literal `search` that a
                    // placeholder matched here.
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {
                        return Some("it contains an encoded letter, digit, '-' or '_'")
                    }
                    b'/' => return Some("it contains an encoded '/' (%2f)"),
                    b'\\' => return Some("it contains an encoded '\\' (%5c)"),
                    0..=0x1f | 0x7f => return Some("it contains an encoded control character"),
                    // `%25` and then an escape of what shapes a path: a vendor stack that
                    // decodes twice (a proxy in front of it, then its framework) reads `%252e%252e`
                    // as `..` and `%252f` as `/`, which no template was matched against.
                    // A letter, digit, '-' or '_' too (`%2573earch`), and an overlong lead byte.
                    b'%' => {
                        let twice = doubly_escaped_at(bytes, index);
                        if matches!(
                            twice,
                            Some(
                                b'.'
                                | b'/'
                                | b'\\'
                                | 0..=0x1f
                                | 0x7f
                                | b'a'..=b'z'
                                | b'A'..=b'Z'
                                | b'0'..=b'9'
                                | b'-'
                                | b'_',
                            )
                        ) || twice.is_some_and(|lead| {
                            // An overlong form encoded twice, its next byte encoded once more
                            // or not (`%25e0%2580%25af`, `%25e0%80%af`).
                            let next = doubly_escaped_at(bytes, index + 5)
                                .or_else(|| escape_at(bytes, index + 5));
                            overlong_after(lead, next)
                        }) {
                            return Some(DOUBLY_ENCODED);
                        }
                    }
                    // Overlong UTF-8 (`%c0%ae` for '.', `%e0%80%af` for '/'): no encoder makes
                    // one, and a lenient decoder behind the vendor reads the character it spells.
                    // 0xf8-0xfd: the 5- and 6-byte forms UTF-8 once had, which old decoders
                    // still read.
                    lead @ (0xc0 | 0xc1 | 0xe0 | 0xf0 | 0xf8..=0xfd)
                        if overlong_after(lead, escape_at(bytes, index + 3)) =>
                    {
                        return Some(OVERLONG)
                    }
                    _ => {}
                }
            }
            b';' if name_end.is_none() => name_end = Some(index),
            b'/' if index > 0 => {
                let (start, end) = (segment_start, name_end.take().unwrap_or(index));
                // Only a path's last segment may be empty (`/v1/charges/`).
                empty_segment |= segment_ends(start, end);
                segment_start = index + 1;
            }
            _ => {}
        }
    }
    let parameters = name_end.is_some();
    let last_name_empty = segment_ends(segment_start, name_end.unwrap_or(bytes.len()));
    empty_segment |= last_name_empty && parameters;
    if dot_segment {
        Some("it contains a '.' or '..' segment")
    } else if empty_segment {
        Some("it contains an empty segment ('//')")
    } else {
        None
    }
}

/// [`path_problem`]'s answers that more than one case gives.
const DOUBLY_ENCODED: &str = "it contains a doubly encoded '.', '/', '\\', letter, digit, '-', '_' or control character (%25 and its escape)";
const OVERLONG: &str = "it contains an overlong or obsolete UTF-8 escape (%c0%ae, %e0%80%af, %f8)";

/// Whether `lead` and the byte after it, `next`, begin an overlong or obsolete UTF-8 form:
/// `%c0%ae` for '.', `%e0%80%af` for '/', and the 5- and 6-byte forms (`%f8`–`%fd`) old
/// decoders still read. Such a lead followed by no continuation byte is no UTF-8 at all (a
/// Latin-1 `%fc` in `m%fcnchen`), left to the vendor.
fn overlong_after(lead: u8, next: Option<u8>) -> bool {
    let upper = match lead {
        0xc0 | 0xc1 | 0xf8..=0xfd => 0xbf,
        0xe0 => 0x9f,
        0xf0 => 0x8f,
        _ => return false,
    };
    next.is_some_and(|next| (0x80..=upper).contains(&next))
}

/// The byte a `%25XY` escape (`%XY`, encoded again) at `at` stands for, if one is there.
fn doubly_escaped_at(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at..at + 5)? {
        [b'%', b'2', b'5', high, low] => Some(hex_digit(*high)? << 4 | hex_digit(*low)?),
        _ => None,
    }
}

/// The byte a `%XY` escape at `at` stands for, if one is there.
fn escape_at(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at..at + 3)? {
        [b'%', high, low] => Some(hex_digit(*high)? << 4 | hex_digit(*low)?),
        _ => None,
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// The refusal of a request on a connection whose client certificate identified a caller
/// once and no longer does.
const CERTIFICATE_LAPSED: &str = "the client certificate this connection was made with has expired, or is no longer trusted (`client_ca` or `client_crl` changed): reconnect with a current certificate";

/// The refusal of a request without a caller token on a connection whose client certificate
/// is valid but whose SPIFFE ID no caller has (any more).
const CERTIFICATE_UNREGISTERED: &str = "the client certificate's SPIFFE ID is no caller's `spiffe_id` in the config (never added, or removed by a reload): register it, or send a caller token";

/// Why a request without a caller token is refused when its connection's client certificate
/// names no caller (path mode and the forward proxy alike), the connection told to close so
/// that the client reconnects with its current certificate, or once its caller is registered,
/// rather than meet the refusal on every request of a kept connection: always for a lapsed
/// certificate, for an unregistered one unless the connection's callers have used tokens (it
/// goes on then, as after any refusal of a request of its). `None` without a certificate.
pub(crate) fn certificate_refusal(
    by_certificate: &ByCertificate,
    connection: &ConnectionInfo,
) -> Option<&'static str> {
    let reason = match by_certificate {
        ByCertificate::Lapsed => CERTIFICATE_LAPSED,
        ByCertificate::Unregistered => CERTIFICATE_UNREGISTERED,
        ByCertificate::Caller(_) | ByCertificate::None => return None,
    };
    if matches!(by_certificate, ByCertificate::Lapsed) || !connection.identified_by_token() {
        connection.close();
    }
    Some(reason)
}

/// Who is calling: a verified client certificate's SPIFFE ID, else a caller token from
/// `Postern-Caller-Token`, `Authorization: Bearer`, or `Authorization: Basic` (token as password).
/// Returns the token (to keep it from ever being forwarded).
fn identify_caller(
    runtime: &Runtime,
    connection: &ConnectionInfo,
    context: &mut CallContext,
    headers: &HeaderMap,
) -> Result<Option<Vec<u8>>, CallError> {
    if let Some(tunnel) = &connection.tunnel {
        // Identified when the tunnel was opened (Proxy-Authorization or client certificate);
        // checked again on every request, so a revoked token or a caller removed from the
        // config stops working inside tunnels that are already open.
        let token = tunnel.token.as_deref().map(Vec::as_slice);
        let certificate = connection.certificate.as_deref();
        let at = context.wall_start;
        if !runtime.still_names(&tunnel.caller, tunnel.auth, certificate, token, at) {
            connection.close();
            return Err(CallError::unauthenticated(match tunnel.auth {
                AuthMethod::Mtls => CERTIFICATE_LAPSED,
                _ => "the credentials this tunnel was opened with are no longer valid (revoked or reconfigured); reconnect with a current caller token",
            }));
        }
        context.caller = Some(tunnel.caller.clone());
        context.auth = Some(tunnel.auth);
        return Ok(tunnel.token.as_ref().map(|token| token.to_vec()));
    }
    let by_certificate =
        runtime.caller_by_certificate(connection.certificate.as_deref(), context.wall_start);
    if let ByCertificate::Caller(caller) = by_certificate {
        connection.identified(false);
        context.caller = Some(caller);
        context.auth = Some(AuthMethod::Mtls);
        // A caller token sent as well is kept from the vendor; anything else in those
        // headers (an SDK's placeholder key) is not a caller token to search for.
        return Ok(caller_token_from_headers(headers)
            .filter(|token| runtime.caller_by_token(token).is_some()));
    }
    let Some(token) = caller_token_from_headers(headers) else {
        if let Some(reason) = certificate_refusal(&by_certificate, connection) {
            return Err(CallError::unauthenticated(reason));
        }
        return Err(CallError::unauthenticated(
            "no caller credentials: send Authorization: Bearer <caller token> (or Basic with the token as password, or Postern-Caller-Token), or a client certificate with a registered SPIFFE ID",
        ));
    };
    match runtime.caller_by_token(&token) {
        Some(caller) => {
            connection.identified(true);
            context.caller = Some(caller);
            context.auth = Some(AuthMethod::Token);
            Ok(Some(token))
        }
        None => Err(CallError::unauthenticated(
            "unknown caller token: use a token from `postern callers token NAME` whose sha256 is in the config",
        )),
    }
}

/// The caller token a request carries, if any: `Postern-Caller-Token`, else `Authorization`.
/// An empty one is none (it would match every text searched for it).
fn caller_token_from_headers(headers: &HeaderMap) -> Option<Vec<u8>> {
    let named = headers
        .get(crate::CALLER_TOKEN)
        .map(|value| value.as_bytes().trim_ascii().to_vec())
        .filter(|token| !token.is_empty());
    named.or_else(|| {
        token_from_authorization(headers.get(header::AUTHORIZATION)?.as_bytes())
            .filter(|token| !token.is_empty())
    })
}

/// The caller token in an `Authorization` or `Proxy-Authorization` value: `Bearer <token>`, or
/// `Basic` with the token as password (or as user name when the password is empty).
pub(crate) fn token_from_authorization(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], value[space + 1..].trim_ascii()),
        None => return None,
    };
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        use base64::Engine as _;
        // Wiped when dropped: it holds the token (and, for a user name, whatever came with it).
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?,
        );
        let colon = decoded.iter().position(|&b| b == b':')?;
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        return Some(if password.is_empty() { user } else { password }.to_vec());
    }
    None
}

/// A header value that is base64 as a whole (standard or URL-safe alphabet), after an optional
/// scheme word (`Basic …`, `Token …`): decoded into a zeroized copy, when it is long enough to
/// hold `shortest` bytes. Decoded as leniently as a lenient server would: padding optional,
/// stray low bits in the last character allowed. A `Basic` credential is one (a client given
/// the token as its password sends it to every host); an SDK may encode a key so in a header of
/// its own too (a custom auth header, a signed blob), and a vendor decodes it.
fn base64_value(value: &[u8], shortest: usize) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    let value = value.trim_ascii();
    let blob = match memchr::memrchr(b' ', value) {
        Some(space) => &value[space + 1..],
        None => value,
    };
    if blob.len() < (shortest * 4).div_ceil(3) {
        return None;
    }
    let (mut standard, mut url_safe) = (false, false);
    for &byte in blob {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'=' => {}
            b'+' | b'/' => standard = true,
            b'-' | b'_' => url_safe = true,
            _ => return None,
        }
    }
    let engine = match (standard, url_safe) {
        (true, true) => return None,
        (false, true) => &URL_SAFE,
        _ => &STANDARD,
    };
    engine.decode(blob).ok().map(Zeroizing::new)
}

/// `/<integration>/<vendor path>` → the integration and the vendor path.
fn route<'a>(
    runtime: &Runtime,
    context: &mut CallContext,
    path: &'a str,
) -> Result<(Arc<IntegrationRuntime>, &'a str), CallError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (name, vendor_path) = match rest.bytes().position(|byte| byte == b'/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let Some(integration) = runtime.integrations.get(name) else {
        return Err(CallError::new(
            StatusCode::NOT_FOUND,
            "unknown_integration",
            "no integration is registered under this path's first segment; call /<integration>/<vendor path> with a name from the config",
        ));
    };
    context.integration = Some(integration.name.clone());
    Ok((integration.clone(), vendor_path))
}

/// Inside a tunnel the integration is the one claiming the host; the whole path is the vendor's.
///
/// It is asked again of each request's runtime, as an opaque tunnel's grant is at each swap: a
/// reload that gives the host to another integration, takes it out of the integration's
/// `hosts`, or turns `intercept` off closes what the old config opened (`403 host_changed`)
/// rather than go on terminating TLS and injecting the old integration's credential for it.
fn route_tunnel<'a>(
    runtime: &Runtime,
    connection: &ConnectionInfo,
    context: &mut CallContext,
    tunnel: &crate::context::TunnelInfo,
    path: &'a str,
) -> Result<(Arc<IntegrationRuntime>, &'a str), CallError> {
    // Forward-proxy mode turned off closes what it opened, as it closes opaque tunnels (said
    // apart from `still_routes`'s other answers).
    if let Err(refusal) = crate::forward_proxy::enabled(runtime) {
        connection.close();
        return Err(refusal);
    }
    let Some(integration) = runtime.integrations.get(&*tunnel.integration) else {
        connection.close();
        return Err(CallError::new(
            StatusCode::NOT_FOUND,
            "unknown_integration",
            "the integration this tunnel was opened for is no longer configured; reconnect",
        ));
    };
    context.integration = Some(integration.name.clone());
    if !still_routes(runtime, tunnel, integration) {
        connection.close();
        return Err(CallError::forbidden(
            "host_changed",
            "the integration that owns this host, or whether Postern intercepts it, changed; open a new connection",
        ));
    }
    Ok((integration.clone(), path))
}

/// Whether `runtime` still routes what `tunnel` carries to `integration`, as when it opened:
/// forward-proxy mode still on, the host still that integration's, and intercepted only while
/// the integration intercepts (asked of each request in the tunnel, and of a WebSocket session
/// opened in it).
pub(crate) fn still_routes(
    runtime: &Runtime,
    tunnel: &crate::context::TunnelInfo,
    integration: &IntegrationRuntime,
) -> bool {
    let still_claimed = runtime
        .proxy
        .integration_for_host(&tunnel.host)
        .is_some_and(|owner| owner.name == integration.name);
    runtime.proxy.config.enabled
        && still_claimed
        && (tunnel.mode != "intercept" || integration.config.intercept)
}

/// Operation match, then the Cedar decision.
fn authorize(
    runtime: &Runtime,
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    request: &Request<CallerBody>,
    vendor_path: &str,
    declared_length: Option<u64>,
    (websocket, encoded): (bool, bool),
) -> Result<(), CallError> {
    // Servers that read path parameters (Tomcat, Jetty, Spring) route `search;x` as `search`:
    // the operation is the one the path names without them, as such a vendor routes it (the
    // path is forwarded as sent).
    let routed_path = routed(vendor_path);
    let Some(operation) = integration
        .operations
        .find(request.method().as_str(), &routed_path)
    else {
        return Err(CallError::forbidden(
            "operation_not_allowed",
            format!(
                "{} {} matches no operation of integration {}; add it to the integration's operations if it should be allowed",
                request.method(),
                "this path",
                integration.name
            ),
        ));
    };
    context.operation_id = Some(operation.id.clone());
    context.path_template = Some(operation.template.clone());
    let body = request.body();
    let size = declared_length
        .or_else(|| body.size_hint().exact())
        .or_else(|| body.is_end_stream().then_some(0));
    let facts = PolicyFacts::of(context);
    let authz = facts.request(
        &integration.name,
        operation.id,
        request.method().as_str(),
        size.unwrap_or(0),
    );
    // A compressed body's declared size is not the size its vendor reads (a 20 kB gzip body
    // may inflate to megabytes): decided as one of unknown size too. `encoded`: its
    // Content-Encoding names a coding, or one Postern cannot read ([`body_encoding`]).
    let coded = size != Some(0) && encoded;
    // A WebSocket's messages pass unseen once the handshake is answered (`websocket`: the
    // request asks for one), so their sizes are as unknown as a chunked body's: decided at
    // every size that could change the answer.
    let (decision, size_decides) = match size {
        Some(_) if !websocket && !coded => (runtime.policy.authorize(&authz), false),
        // A body of unknown size (chunked, h2 without content-length): a chunked upload must
        // not pass a size rule as 0 bytes, so where the size could change the answer: fail
        // closed, in the name of the policy that bounds it.
        _ => match runtime.policy.authorize_unsized(&authz) {
            Ok(decision) => (decision, false),
            Err(refusing) => (refusing, true),
        },
    };
    context.policy_id = decision.reason.policy_id().cloned();
    if size_decides && websocket {
        return Err(CallError::forbidden(
            "policy_forbid",
            "a policy bounds the size of this caller's requests to this operation (context.request_bytes), and a WebSocket's messages are not decided one by one; call the operation with plain requests, or exempt it from the size rule",
        ));
    }
    if size_decides && coded {
        return Err(CallError::forbidden(
            "policy_forbid",
            "a policy decides this call on the request's size (context.request_bytes), and its body is compressed (Content-Encoding), so the size its vendor reads is not known before it is read; send it uncompressed",
        ));
    }
    if size_decides {
        return Err(CallError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a policy decides this call on the request's size (context.request_bytes), and its body does not declare one; send it with Content-Length",
        ));
    }
    if decision.allowed {
        Ok(())
    } else {
        let fix = match decision.reason {
            Reason::Forbidden { .. } => "the policy's conditions refuse this call",
            _ => "ask the integration's owner for a grant",
        };
        Err(CallError::forbidden(
            decision.reason.code(),
            format!("{}; {fix}", decision.reason.describe(&authz)),
        ))
    }
}

/// What Cedar's context needs from the call, read once: caller, hour and weekday (UTC) of the
/// call's start, source address.
pub(crate) struct PolicyFacts {
    caller: Arc<str>,
    hour: u8,
    weekday: u8,
    source_ip: Arc<str>,
}

impl PolicyFacts {
    pub(crate) fn of(context: &CallContext) -> PolicyFacts {
        Self::at(context, context.wall_start)
    }

    /// The facts of `context`'s call with the hour and weekday of `at`.
    pub(crate) fn at(context: &CallContext, at: std::time::SystemTime) -> PolicyFacts {
        let now = time::OffsetDateTime::from(at);
        PolicyFacts {
            caller: context.caller.clone().unwrap_or_else(|| Arc::from("")),
            hour: now.hour(),
            weekday: now.weekday().number_days_from_monday(),
            source_ip: context.source_ip.clone(),
        }
    }

    pub(crate) fn request<'a>(
        &'a self,
        integration: &'a str,
        operation: &'a str,
        method: &'a str,
        request_bytes: u64,
    ) -> AuthzRequest<'a> {
        AuthzRequest {
            caller: &self.caller,
            integration,
            operation,
            method,
            hour: self.hour,
            weekday: self.weekday,
            request_bytes,
            source_ip: &self.source_ip,
        }
    }
}

pub(crate) fn rate_limit(
    integration: &IntegrationRuntime,
    context: &CallContext,
) -> Result<(), CallError> {
    let (Some(limiter), Some(caller)) = (&integration.limiter, &context.caller) else {
        return Ok(());
    };
    if let Err(not_until) = limiter.check_key(caller) {
        use governor::clock::Clock as _;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let mut error = CallError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit of {} requests/s (burst {}) for this caller on {} exceeded; retry after the Retry-After delay",
                integration.config.rate_limit.map_or(0, |r| r.requests_per_second),
                integration.config.rate_limit.map_or(0, |r| r.burst),
                integration.name
            ),
        );
        error.retry_after_seconds = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(error);
    }
    Ok(())
}

/// Whether `integration` injects a bearer token (`bearer`, `oauth2`), which RFC 6750 lets a
/// request also carry as an `access_token` query parameter (§2.3, stripped by [`inject`]) or
/// form field (§2.2, refused as the body streams, [`OverrideScan`]): a caller's own there would
/// be a second vendor credential, its own.
pub(crate) fn injects_bearer(integration: &IntegrationRuntime) -> bool {
    matches!(
        integration.config.credential.as_ref().map(|c| c.kind),
        Some(postern_config::CredentialKind::Bearer | postern_config::CredentialKind::OAuth2)
    )
}

/// Builds the vendor request: strips every caller credential and hop-by-hop header, refuses a
/// request that would carry the caller token, injects the vendor credential. The authority
/// the caller reached Postern by (its `Host`, which the vendor does not get, or h2's
/// `:authority`) is kept in `reached`, moved rather than looked up or copied, for the answer's
/// redirects ([`names_postern`]).
#[allow(clippy::too_many_arguments)]
fn inject(
    integration: &IntegrationRuntime,
    vendor_path: &str,
    request: Request<ForwardBody>,
    declared_length: Option<u64>,
    caller_token: Option<&[u8]>,
    oauth_token: Option<HeaderValue>,
    reached: &mut Option<crate::context::Reached>,
) -> Result<Request<ForwardBody>, CallError> {
    let injector = match &integration.credential {
        Ok(injector) => injector,
        Err(problem) => {
            let what = if problem.code == "credential_revoked" {
                "has been revoked"
            } else {
                "is not available"
            };
            return Err(CallError::unavailable(
                problem.code,
                format!(
                    "the vendor credential of integration {} {what}; the operator must fix it (see postern logs and /readyz)",
                    integration.name
                ),
            ));
        }
    };
    if integration.vault_secret.is_some() {
        integration
            .last_used_ms
            .store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
    if url_holds_a_caller_token(target.as_bytes(), caller_token) {
        return Err(token_in_url());
    }
    let limit = integration.config.max_request_body_bytes;
    if declared_length.is_some_and(|length| length > limit) {
        return Err(CallError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body exceeds max_request_body_bytes ({limit}); send a smaller body"
            ),
        ));
    }

    // Headers: drop hop-by-hop, those named by Connection, caller credentials, and any header
    // carrying the caller token.
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    let connection_named = connection_named(&parts.headers);
    let mut last_name: Option<HeaderName> = None;
    let mut cookies = 0usize;
    let mut accepts_codings = false;
    for (name, value) in parts.headers.into_iter() {
        let name = match name {
            Some(name) => {
                last_name = Some(name.clone());
                name
            }
            None => match &last_name {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        if name == header::HOST {
            *reached = Some(crate::context::Reached::Host(value));
            continue;
        }
        // `Expect: 100-continue` was answered on the caller's side (hyper's server sends the
        // `100`), and Postern sends the vendor the whole body at once without waiting for one:
        // a vendor that answered early (401, 413, 417) and then read the body as the
        // connection's next request would leave the pooled connection out of step, so the
        // header is not passed on (as Envoy does by default).
        if name == header::EXPECT
            || HOP_BY_HOP.contains(&name)
            || connection_named.contains(&name)
            || integration.stripped_headers.contains(&name)
            || cgi_alias_of(&name, &integration.stripped_headers)
        {
            continue;
        }
        if holds_a_caller_token(&name, &value, caller_token) {
            continue;
        }
        cookies += usize::from(name == header::COOKIE);
        // Noted in passing: most requests carry none, and looking it up after costs a hash.
        accepts_codings |= name == header::ACCEPT_ENCODING;
        headers.append(name, value);
    }
    // h2 carries no `Host`: its `:authority` stands for it.
    if reached.is_none() {
        *reached = parts
            .uri
            .authority()
            .cloned()
            .map(crate::context::Reached::Authority);
    }
    // HTTP/2 sends each cookie as a field of its own; HTTP/1.1 wants them in one, joined by
    // "; " (RFC 9113 §8.2.3). Fields of other kinds are sent as they came.
    if cookies > 1 {
        join_cookies(&mut headers);
    }
    // Made once per integration (the client would otherwise build it from the authority).
    headers.insert(header::HOST, integration.upstream.host_header.clone());
    // An answer that is scanned comes in a coding Postern can undo; one read for the injected
    // credential as it streams, in one it can read so (not zstd: `crate::echo`).
    let reads_echoes = matches!(integration.credential, Ok(Some(_)));
    if integration.config.data_classes.is_some() {
        crate::scan::narrow_accept_encoding(
            &mut headers,
            integration.config.on_unapproved,
            !reads_echoes,
        );
    } else if reads_echoes && accepts_codings {
        crate::scan::without_zstd(&mut headers);
    }

    // URL: upstream prefix + vendor path + query (with the credential's query param replaced).
    let mut target =
        String::with_capacity(integration.upstream.path_prefix.len() + vendor_path.len() + 64);
    target.push_str(&integration.upstream.path_prefix);
    target.push_str(vendor_path);
    let mut query: Vec<Cow<'_, str>> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(Cow::Borrowed)
                .collect()
        })
        .unwrap_or_default();
    let mut injected_query = None;
    // A bearer token may also ride in the query (RFC 6750 §2.3): where Postern injects one, a
    // caller's `access_token` would be the vendor's second credential, its own. (In a form body,
    // §2.2, it is refused as the body streams: `OverrideScan`.)
    if injects_bearer(integration) {
        strip_query_credential(&mut query, "access_token");
    }
    match injector {
        Some(Injector::Header { name, value }) => {
            headers.insert(name.clone(), value.clone());
        }
        Some(Injector::Query {
            param,
            encoded_value,
        }) => {
            strip_query_credential(&mut query, param);
            injected_query = Some(Zeroizing::new(format!(
                "{param}={}",
                encoded_value.as_str()
            )));
        }
        Some(Injector::OAuth2(_)) => {
            if let Some(token) = oauth_token {
                headers.insert(header::AUTHORIZATION, token);
            }
        }
        None => {}
    }
    let pairs = query.iter().map(|pair| &**pair);
    for (i, pair) in pairs
        .chain(injected_query.as_deref().map(String::as_str))
        .enumerate()
    {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(pair);
    }
    let uri = Uri::builder()
        .scheme(integration.upstream.scheme.clone())
        .authority(integration.upstream.authority.clone())
        .path_and_query(target)
        .build()
        .map_err(|_| {
            CallError::bad_request(
                "invalid_path",
                "the request target cannot be forwarded; check the path and query encoding",
            )
        })?;

    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    Ok(upstream)
}

/// Puts the durable intent's index on a vendor's answer as `Postern-Audit-Index`, and takes off
/// any the vendor sent (with no durable intent, or one of its own making, it would point the
/// caller at another call's entry).
pub(crate) fn audit_receipt(headers: &mut HeaderMap, intent_index: Option<u64>) {
    match intent_index {
        Some(index) => {
            headers.insert(crate::AUDIT_INDEX, HeaderValue::from(index));
        }
        None => {
            headers.remove(crate::AUDIT_INDEX);
        }
    }
}

/// The path an operation is matched by: `vendor_path` without its path parameters, as servers
/// that read them (Tomcat, Jetty, Spring) route `search;x` as `search` (the path is forwarded
/// as sent).
pub(crate) fn routed(vendor_path: &str) -> std::borrow::Cow<'_, str> {
    match memchr::memchr(b';', vendor_path.as_bytes()) {
        Some(_) => std::borrow::Cow::Owned(strip_path_parameters(vendor_path)),
        None => std::borrow::Cow::Borrowed(vendor_path),
    }
}

/// `path` with each segment cut to its name ([`postern_config::segment_name`]).
fn strip_path_parameters(path: &str) -> String {
    path.split('/')
        .map(postern_config::segment_name)
        .collect::<Vec<_>>()
        .join("/")
}

/// Takes out of `query` every pair a vendor could read as the credential's parameter `param`
/// ([`query_name_is`]), including one written after a `;` inside a pair (`a=1;api_key=…`, as
/// servers that take `;` for a separator read it); the rest of such a pair is kept as sent.
fn strip_query_credential(query: &mut Vec<Cow<'_, str>>, param: &str) {
    query.retain_mut(|pair| {
        if !pair.contains(';') {
            return !query_name_is(pair, param);
        }
        if !pair.split(';').any(|part| query_name_is(part, param)) {
            return true;
        }
        let kept: Vec<&str> = pair
            .split(';')
            .filter(|part| !part.is_empty() && !query_name_is(part, param))
            .collect();
        *pair = Cow::Owned(kept.join(";"));
        !pair.is_empty()
    });
}

/// Whether a query pair's name is `name` as some vendor's server reads it: decoded as a form
/// decodes it (`%XX`, `+` for a space), then read by the one rule for form and query names,
/// regardless of ASCII case ([`crate::overrides::form_name_is`]: up to a NUL, padding before it
/// dropped, `.` and a space taken for `_`, an array or hash under it its own). A caller's
/// `api%5Fkey=…`, `API_KEY=…`, `api.key[]=…` or `[api_key]=…` is its own `api_key=…`, which a
/// vendor that reads the first value would take over the injected one.
fn query_name_is(pair: &str, name: &str) -> bool {
    let raw = pair.split('=').next().unwrap_or(pair);
    form_name_is(&form_decoded(raw.as_bytes()), name.as_bytes(), true)
}

/// Whether a request header must not be forwarded because it holds a caller token: the call's
/// own `token` in its value — as it stands, percent-decoded, or inside base64 ([`base64_value`]:
/// a `Basic` credential, as a client set up with the token as its password sends it to every
/// host, or any value that is base64 as a whole) — or in its name (which HTTP/1.1 parsing lowercased: matched regardless of
/// case; percent-decoded too); or, in its value in the same forms, what looks like any caller
/// token `postern` made (a service holding another's token, or an old one of its own, would
/// otherwise hand it to the vendor). Each decoded form of the value is made once, for both.
pub(crate) fn holds_a_caller_token(
    name: &HeaderName,
    value: &HeaderValue,
    token: Option<&[u8]>,
) -> bool {
    let token = token.filter(|token| !token.is_empty());
    let value = value.as_bytes();
    if holds_a_token_even_encoded(value, token)
        || base64_value(value, shortest_token(token))
            .is_some_and(|decoded| holds_a_token(&decoded, token))
    {
        return true;
    }
    let Some(token) = token else {
        return false;
    };
    let in_name = |name: &[u8]| {
        name.len() >= token.len()
            && name
                .windows(token.len())
                .any(|window| window.eq_ignore_ascii_case(token))
    };
    let name = name.as_str().as_bytes();
    in_name(name)
        || (memchr::memchr(b'%', name).is_some()
            && in_name(&Zeroizing::new(
                percent_encoding::percent_decode(name).collect::<Vec<u8>>(),
            )))
}

/// Whether `name` is not one of `stripped` but reads as one where `_` and `-` are the same:
/// the CGI convention PHP, Rack and WSGI servers read headers by (`X_Api_Key` and `X-Api-Key`
/// are both `HTTP_X_API_KEY`), so a caller's `Authorization` or vendor key sent under such a
/// name could stand in for the one Postern strips and injects, whichever of the two the
/// injected header's name uses. Names of other lengths are told apart by their length.
fn cgi_alias_of(name: &HeaderName, stripped: &[HeaderName]) -> bool {
    let name = name.as_str().as_bytes();
    let joiner = |byte: &u8| matches!(byte, b'-' | b'_');
    stripped.iter().any(|stripped| {
        let stripped = stripped.as_str().as_bytes();
        stripped.len() == name.len()
            && stripped != name
            && stripped
                .iter()
                .zip(name)
                .all(|(a, b)| a == b || (joiner(a) && joiner(b)))
    })
}

/// Refuses a request whose method (an extension method: the standard ones hold no token) holds
/// the caller's own `token` or what looks like any caller token `postern` made, as it stands or
/// percent-encoded, as a URL would be refused (`400 caller_token_in_method`). Nothing of such a
/// method is recorded: the call's context forgets it, so its event and audit entries carry none.
pub(crate) fn refuse_a_token_in_the_method(
    context: &mut CallContext,
    method: &http::Method,
    token: Option<&[u8]>,
) -> Result<(), CallError> {
    if is_standard_method(method) || !url_holds_a_caller_token(method.as_str().as_bytes(), token) {
        return Ok(());
    }
    context.method = None;
    Err(CallError::bad_request(
        "caller_token_in_method",
        "the request method holds a Postern caller token; send the caller's own only in a header (Authorization, or Proxy-Authorization through the forward proxy), and no other anywhere",
    ))
}

/// One of RFC 9110's methods and PATCH: not an extension method, so it holds no token.
pub(crate) fn is_standard_method(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
            | Method::PATCH
    )
}

/// The refusal of a request whose URL (or, through the forward proxy, target) holds a caller
/// token.
pub(crate) fn token_in_url() -> CallError {
    CallError::bad_request(
        "caller_token_in_url",
        "the request URL contains a Postern caller token; send the caller's own only in a header (Authorization, or Proxy-Authorization through the forward proxy), and no other anywhere",
    )
}

/// Whether part of a request URL holds the call's own caller `token` or what looks like any
/// caller token `postern` made (a caller identified by its certificate has no token of its own
/// to look for, yet its SDK may hold one as a query key), as it stands or percent-encoded
/// (`?k=%70st_…`: no encoder writes a token's characters so, but a vendor decodes them); and
/// the call's own token inside base64 text or in UTF-16, as a body is read for it
/// ([`crate::tokens::Needles`]), as it stands or percent-decoded once (`+` and `/` as `%2B`,
/// `%2F`).
pub(crate) fn url_holds_a_caller_token(text: &[u8], token: Option<&[u8]>) -> bool {
    let token = token.filter(|token| !token.is_empty());
    holds_a_token_even_encoded(text, token)
        || token.is_some_and(|token| {
            // The shortest base64 form of a token is about 4/3 of it: most URLs are shorter.
            text.len() >= (token.len() * 4 / 3).saturating_sub(2) && {
                let needles = crate::tokens::Needles::new(Some(token));
                needles.encoded_in(text)
                    || memchr::memchr(b'%', text).is_some() && {
                        let decoded: Zeroizing<Vec<u8>> =
                            Zeroizing::new(percent_encoding::percent_decode(text).collect());
                        needles.encoded_in(&decoded)
                    }
            }
        })
}

/// The fewest bytes that can hold `token` or a token `postern` made: most URLs and header
/// values are shorter, and are answered without a search.
fn shortest_token(token: Option<&[u8]>) -> usize {
    token.map_or(crate::tokens::TOKEN_LEN, |token| {
        token.len().min(crate::tokens::TOKEN_LEN)
    })
}

/// Whether `bytes` hold `token` (a non-empty one) or what looks like a token `postern` made.
fn holds_a_token(bytes: &[u8], token: Option<&[u8]>) -> bool {
    token.is_some_and(|token| contains(bytes, token)) || crate::tokens::token_shaped(bytes)
}

/// How many layers of escapes a URL or header value is read through: a vendor decodes one
/// (percent-encoding, or JSON's string escapes in a value that carries a JSON document, as
/// Dropbox's `Dropbox-API-Arg` does), and an application behind it may decode a parameter once
/// more (a nested URL, a `redirect_uri`, JSON in a JSON string); bodies are read through two as
/// well. One more than that, for good measure.
const ESCAPE_LAYERS: usize = 3;

/// [`holds_a_token`] on `bytes` as they stand or with escapes undone, for `bytes` long enough
/// to hold one: percent-encoding and JSON string escapes, either on what the other gave, up to
/// [`ESCAPE_LAYERS`] layers in all (each into a zeroized copy). A kind is undone only where
/// its mark (`%`, `\`) stands, so a value without either is searched once.
fn holds_a_token_even_encoded(bytes: &[u8], token: Option<&[u8]>) -> bool {
    bytes.len() >= shortest_token(token) && holds_a_token_undone(bytes, token, ESCAPE_LAYERS)
}

/// [`holds_a_token_even_encoded`] with `layers` left to undo.
fn holds_a_token_undone(bytes: &[u8], token: Option<&[u8]>, layers: usize) -> bool {
    if holds_a_token(bytes, token) {
        return true;
    }
    if layers == 0 {
        return false;
    }
    let percent = || {
        memchr::memchr(b'%', bytes)?;
        let decoded = percent_encoding::percent_decode(bytes).collect::<Vec<u8>>();
        // `%` not followed by two hex digits stays as it is: nothing undone.
        (decoded.len() != bytes.len()).then(|| Zeroizing::new(decoded))
    };
    let json = || {
        crate::escapes::json_unescaped(bytes)
            .filter(|unescaped| unescaped.len() != bytes.len())
            .map(Zeroizing::new)
    };
    percent().is_some_and(|decoded| holds_a_token_undone(&decoded, token, layers - 1))
        || json().is_some_and(|unescaped| holds_a_token_undone(&unescaped, token, layers - 1))
}

/// Removes the fields of `fields` (an answer's header or trailer fields) whose name or value
/// `leaks`: their names.
pub(crate) fn remove_fields(
    fields: &mut http::HeaderMap,
    leaks: impl Fn(&HeaderName, &HeaderValue) -> bool,
) -> Vec<HeaderName> {
    let leaking: Vec<HeaderName> = fields
        .iter()
        .filter(|(name, value)| leaks(name, value))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &leaking {
        fields.remove(name);
    }
    leaking
}

/// Whether a response header field holds one of `needles`: its value as it stands or, when it
/// holds a `%`, percent-decoded (a vendor's encoder may escape more than Postern's, `_` as
/// `%5F`), with its tabs left out too; or its name, read so too and in any case (a name
/// reaches the caller in lower case, so a secret there keeps all but its case).
pub(crate) fn echoes_secret(
    name: &HeaderName,
    value: &[u8],
    needles: &[Zeroizing<Vec<u8>>],
) -> bool {
    let forms = || needles.iter().map(|needle| needle.as_slice());
    any_even_encoded(value, forms())
        || any_even_encoded_by(name.as_str().as_bytes(), forms(), contains_in_any_case)
        // Tabs (the only control character a field value may hold) are dropped by the URL
        // parsers of browsers and `url`: a `Location` split by them is read whole again.
        || memchr::memchr(b'\t', value).is_some() && {
            let untabbed: Zeroizing<Vec<u8>> =
                Zeroizing::new(value.iter().copied().filter(|&b| b != b'\t').collect());
            any_even_encoded(&untabbed, forms())
        }
}

/// Whether `haystack` holds one of `needles` as it stands or, when it holds a `%`,
/// percent-decoded: decoded once, for all of them, and only when it is long enough for the
/// shortest (the decoded copy is zeroized: it may hold a secret).
fn any_even_encoded<'a>(haystack: &[u8], needles: impl Iterator<Item = &'a [u8]> + Clone) -> bool {
    any_even_encoded_by(haystack, needles, contains)
}

/// [`any_even_encoded`], with `holds` telling whether a text holds a needle.
fn any_even_encoded_by<'a>(
    haystack: &[u8],
    needles: impl Iterator<Item = &'a [u8]> + Clone,
    holds: impl Fn(&[u8], &[u8]) -> bool,
) -> bool {
    if needles.clone().any(|needle| holds(haystack, needle)) {
        return true;
    }
    let shortest = needles.clone().map(<[u8]>::len).min().unwrap_or(usize::MAX);
    if haystack.len() < shortest || memchr::memchr(b'%', haystack).is_none() {
        return false;
    }
    let decoded: Zeroizing<Vec<u8>> =
        Zeroizing::new(percent_encoding::percent_decode(haystack).collect());
    needles.into_iter().any(|needle| holds(&decoded, needle))
}

/// Whether `haystack` holds `needle` regardless of ASCII case (a header name: most are shorter
/// than any secret, and are not read).
fn contains_in_any_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Whether `haystack` holds `needle` (a caller token, an injected secret). A haystack shorter
/// than the needle is answered without a search: `memmem::find` first prepares the needle (a
/// hash of all its bytes, a factorisation), and on every call the target and most header
/// values are shorter than a token or a secret. A short one (a small JSON answer, a long
/// header value) is searched where the needle's first byte is, which costs less than that
/// preparation; a long one with `memmem`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    /// Below this many bytes a haystack is searched by its needle's first byte.
    const SHORT: usize = 512;
    match (needle.split_first(), haystack.len()) {
        (_, len) if len < needle.len() => false,
        (Some((&first, rest)), len) if len < SHORT => memchr::memchr_iter(first, haystack)
            .take_while(|&at| at + needle.len() <= len)
            .any(|at| haystack[at + 1..].starts_with(rest)),
        _ => memchr::memmem::find(haystack, needle).is_some(),
    }
}

/// The OAuth2 access token for this call (cached, or minted now — once for all waiting calls).
/// The wait ends with the call's `total_timeout_ms` (504 `upstream_total_timeout`): a slow token
/// endpoint, or a queue of fetches before this call's, holds it no longer than a slow vendor.
async fn oauth_token(
    integration: &IntegrationRuntime,
    source: &Arc<TokenSource>,
    started: std::time::Instant,
) -> Result<crate::oauth::Minted, CallError> {
    let total = integration.config.total_timeout_ms;
    let answer = match crate::body::call_end(started, total) {
        Some((end, _)) => match tokio::time::timeout_at(end, source.authorization()).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(integration = %integration.name, "no OAuth2 access token before the call's total_timeout_ms");
                return Err(CallError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_total_timeout",
                    format!(
                        "the OAuth2 token endpoint did not answer before the call reached total_timeout_ms ({total} ms)"
                    ),
                ));
            }
        },
        None => source.authorization().await,
    };
    answer.map_err(|error| {
        tracing::error!(integration = %integration.name, %error, "no OAuth2 access token; failing closed");
        CallError::unavailable(
            "credential_unavailable",
            format!(
                "no OAuth2 access token for integration {} ({error}); calls fail closed until the token endpoint answers",
                integration.name
            ),
        )
    })
}

/// Forwards a request whose body is read into memory first, so that when the vendor refuses the
/// access token (401) the token is purged, re-minted once, and the call replayed once.
async fn forward_replayable(
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    request: Request<ForwardBody>,
    source: &Arc<TokenSource>,
    token: crate::oauth::Minted,
) -> Result<Response<UpstreamBody>, CallError> {
    use http_body_util::BodyExt as _;
    let (parts, mut body) = request.into_parts();
    // (A scanned body's share of the scan budget is held while it is.)
    let _scanned = body.take_scanned();
    // Read whole before it goes (it may go twice): bound as a body read for scanning is, in
    // time and in memory (its share of `REPLAYS`, held until the call is over).
    let (by, _) = body_read_by(integration, context.started);
    let mut held = crate::scan::REPLAYS.permit(context.caller.as_ref());
    let read = tokio::time::timeout_at(by, async {
        let mut read = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                if !held.grow(data.len()) {
                    return Ok(None);
                }
                read.extend_from_slice(data);
            }
        }
        Ok(Some(read.freeze()))
    })
    .await;
    let Ok(read) = read else {
        let received = context
            .request_body
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        return Err(request_body_timeout(
            received,
            crate::h1::content_length(&parts.headers),
        ));
    };
    let bytes = match read {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let mut error = CallError::unavailable(
                "request_bodies_busy",
                "the gateway holds as many request bodies as its memory budget allows (an OAuth2 integration's are read whole, to be replayed once if the vendor refuses the token); retry shortly",
            );
            error.retry_after_seconds = Some(1);
            return Err(error);
        }
        Err::<_, <ForwardBody as http_body::Body>::Error>(_) => {
            return Err(
                body_violation_error(context, integration.config.max_request_body_bytes)
                    .unwrap_or_else(|| {
                        CallError::bad_request(
                            "request_body_error",
                            "the request body could not be read completely",
                        )
                    }),
            )
        }
    };
    let body_state = context.request_body.clone();
    let build = |authorization: HeaderValue| {
        let mut request = Request::new(ForwardBody::full(bytes.clone(), body_state.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
        request
    };
    let first = build(token.header.clone());
    let result = forward(
        integration,
        first,
        context.started,
        context.caller.as_deref(),
    )
    .await;
    let response = forwarded(integration, context, result, None)?;
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    source.purge(&token.header);
    let fresh = match oauth_token(integration, source, context.started).await {
        Ok(fresh) => fresh,
        // The call's time ran out while a new token was fetched: the vendor's answer, in hand,
        // is the call's, not a 504.
        Err(error) if error.code == "upstream_total_timeout" => return Ok(response),
        Err(error) => return Err(error),
    };
    // The token was not dropped (another was dropped less than a second ago): sending the
    // same one again would only be refused again. The vendor's 401 is the answer.
    if fresh.header == token.header {
        return Ok(response);
    }
    drop(response);
    tracing::info!(integration = %integration.name, request_id = %context.request_id, "vendor refused the OAuth2 token; re-minted, replaying once");
    let caller = context.caller.as_deref();
    let result = forward(
        integration,
        build(fresh.header.clone()),
        context.started,
        caller,
    )
    .await;
    let mut response = forwarded(integration, context, result, None)?;
    response.extensions_mut().insert(fresh);
    Ok(response)
}

/// The vendor request under `request_timeout_ms`, and within the call's `total_timeout_ms` of
/// `started`; [`forwarded`] reads its result. Not an `async fn` (no level of its own in the
/// call's future: see [`handle`]).
///
/// Sent on connections kept to the `caller` ([`UpstreamClient::send`]): a vendor that sends an
/// answer nobody asked for (a second response after one, late) puts an HTTP/1.1 connection one
/// answer behind its requests, which no client can tell; on a connection shared by callers,
/// each would get the one before's answer. Kept apart, a caller can only ever get its own. An
/// h2 connection fails all its streams together (a GOAWAY), so a caller who can make it fail
/// (by not reading answers sent in small frames) fails only its own calls.
fn forward<'a>(
    integration: &'a IntegrationRuntime,
    request: Request<ForwardBody>,
    started: std::time::Instant,
    caller: Option<&'a str>,
) -> tokio::time::Timeout<impl Future<Output = Forwarded> + Send + 'a> {
    tokio::time::timeout_at(
        answer_deadline(integration, started),
        integration.client.send(request, caller),
    )
}

/// When the vendor's answer head must have come, for a call that `started` then
/// ([`body_read_by`]'s deadline).
pub(crate) fn answer_deadline(
    integration: &IntegrationRuntime,
    started: std::time::Instant,
) -> tokio::time::Instant {
    body_read_by(integration, started).0
}

/// What the vendor request gave: its response, or why there is none.
type Forwarded = Result<(Response<UpstreamBody>, std::net::SocketAddr), UpstreamError>;

/// [`forward`]'s result as the call sees it: the response (its address noted), or the refusal.
/// `declared_length`: the request body's `Content-Length`, to tell a caller whose upload had
/// not arrived when time ran out (the vendor side waiting for more of it) from a vendor slow to
/// take it or to answer.
fn forwarded(
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    result: Result<Forwarded, tokio::time::error::Elapsed>,
    declared_length: Option<u64>,
) -> Result<Response<UpstreamBody>, CallError> {
    let total = integration.config.total_timeout_ms;
    let past_end = || {
        crate::body::call_end(context.started, total)
            .is_some_and(|(end, _)| tokio::time::Instant::now() >= end)
    };
    let received = || {
        context
            .request_body
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    match result {
        Err(_)
            if context.request_body.waiting_on_caller()
                && declared_length.is_some_and(|length| received() < length) =>
        {
            Err(request_body_timeout(received(), declared_length))
        }
        Err(_) if past_end() => Err(CallError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_total_timeout",
            format!(
                "the vendor did not answer before the call reached total_timeout_ms ({total} ms)"
            ),
        )),
        Err(_) => Err(CallError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!(
                "the vendor did not answer within request_timeout_ms ({} ms)",
                integration.config.request_timeout_ms
            ),
        )),
        Ok(Err(error)) => {
            // A connection was made: the event names the vendor address, as for an answer.
            context.upstream_addr = error.addr().or(context.upstream_addr);
            Err(classify_upstream_error(integration, context, &error))
        }
        Ok(Ok((response, addr))) => {
            context.upstream_addr = Some(addr);
            Ok(response)
        }
    }
}

fn classify_upstream_error(
    integration: &IntegrationRuntime,
    context: &CallContext,
    error: &UpstreamError,
) -> CallError {
    if let Some(refusal) = body_violation_error(context, integration.config.max_request_body_bytes)
    {
        return refusal;
    }
    if let UpstreamError::Connect(connect) = error {
        let refusal = connect_error(&format!("the vendor of {}", integration.name), connect);
        // The log says which failure it was, with the code the call's event carries.
        tracing::warn!(integration = %integration.name, request_id = %context.request_id, code = refusal.code, error = %connect, "could not connect to the vendor");
        return refusal;
    }
    if matches!(error, UpstreamError::Tls { .. }) || has_tls_error(error) {
        tracing::warn!(integration = %integration.name, request_id = %context.request_id, error = %error_chain(error), "TLS to the vendor failed");
        return CallError::bad_gateway(
            "upstream_tls_error",
            format!(
                "TLS to the vendor of {} failed (certificate not trusted or handshake refused); check upstream and ca_file",
                integration.name
            ),
        );
    }
    tracing::warn!(integration = %integration.name, request_id = %context.request_id, error = %error_chain(error), "upstream request failed");
    // What was wrong with an answer Postern refuses to read is the vendor's, and holds nothing
    // of the request: the caller is told, as the log is.
    if let UpstreamError::H1 {
        error: crate::h1::Error::Malformed(problem),
        ..
    } = error
    {
        return CallError::bad_gateway(
            "upstream_error",
            format!(
                "the vendor of {} sent an answer Postern does not pass on: {problem}",
                integration.name
            ),
        );
    }
    CallError::bad_gateway(
        "upstream_error",
        format!(
            "the vendor of {} closed or broke the connection",
            integration.name
        ),
    )
}

/// The refusal for a request body stopped while streaming (too large, or carrying the caller
/// token), if it was.
pub(crate) fn body_violation_error(context: &CallContext, limit: u64) -> Option<CallError> {
    violation_error(context.request_body.violation(), limit)
}

/// Within `request_timeout_ms` from now, and before the call's end (`total_timeout_ms` from
/// `started`), and the limit that decides it: when the vendor's answer head must have come
/// ([`answer_deadline`]), and when a request body read whole before anything goes to the vendor
/// (for scanning, or to be sent again with a fresh OAuth2 token) must have arrived, as a
/// streamed body must. The caller's connection does not bound it: a call in progress excuses
/// its connection's idle limit (and holds its places under the concurrency limits).
pub(crate) fn body_read_by(
    integration: &IntegrationRuntime,
    started: std::time::Instant,
) -> (tokio::time::Instant, std::time::Duration) {
    let config = &integration.config;
    // `request_timeout_ms` is at least 1 (postern-config refuses 0).
    let request = Duration::from_millis(config.request_timeout_ms);
    let head = (tokio::time::Instant::now() + request, request);
    match crate::body::call_end(started, config.total_timeout_ms) {
        Some(end) if end.0 < head.0 => end,
        _ => head,
    }
}

/// The refusal of a call whose caller had sent `received` bytes of its body (of `declared`, when
/// it said) when `request_timeout_ms` or `total_timeout_ms` ran out: the caller was slow, not
/// the vendor.
pub(crate) fn request_body_timeout(received: u64, declared: Option<u64>) -> CallError {
    let of = match declared {
        Some(declared) => format!("{received} of {declared} bytes"),
        None => format!("{received} bytes"),
    };
    CallError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_body_timeout",
        format!(
            "the request body did not arrive in time ({of} when request_timeout_ms or total_timeout_ms ran out); send it faster, or raise the integration's limits"
        ),
    )
}

/// The refusal of a request body found to be one (`limit`: its `max_request_body_bytes`).
pub(crate) fn body_refusal(violation: RequestBodyViolation, limit: u64) -> CallError {
    violation_error(violation, limit).expect("a violation has its refusal")
}

/// The refusal of a request body stopped for `violation` (`limit`: its integration's
/// `max_request_body_bytes`).
pub(crate) fn violation_error(violation: RequestBodyViolation, limit: u64) -> Option<CallError> {
    match violation {
        RequestBodyViolation::TooLarge => Some(CallError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body exceeds max_request_body_bytes ({limit}); send a smaller body"
            ),
        )),
        RequestBodyViolation::CallerToken => Some(CallError::bad_request(
            "caller_token_in_body",
            "the request body contains the caller token; it is never forwarded",
        )),
        RequestBodyViolation::MethodOverride => Some(crate::overrides::body_method_override()),
        RequestBodyViolation::VendorCredential => Some(CallError::bad_request(
            "vendor_credential_in_body",
            "the request's form body has an access_token field (RFC 6750 §2.2; its name read percent-decoded, and in a compressed body decoded), a vendor credential the vendor would act on: Postern injects the vendor's credential; remove access_token from the form body",
        )),
        RequestBodyViolation::Undecodable => Some(CallError::bad_request(
            "request_body_undecodable",
            "the compressed request body is not valid for its Content-Encoding (corrupt, cut short, or bytes after its end), or is br with a window over 4 MiB (22 bits, the encoders' default) or zstd with a window over 8 MiB (RFC 9659's most), so what a vendor would decode from it cannot be checked (for the caller token, a _method field, data classes); nothing more of it was forwarded; send it uncompressed or validly compressed (br with a window of at most 22 bits, zstd of at most 23)",
        )),
        RequestBodyViolation::DecodersBusy => {
            let mut error = CallError::unavailable(
                "request_decoders_busy",
                "the gateway is decoding as many br and zstd request bodies as its memory budget allows; retry shortly, or send the body uncompressed or gzip'd",
            );
            error.retry_after_seconds = Some(1);
            Some(error)
        }
        RequestBodyViolation::Broken => Some(CallError::bad_request(
            "request_body_error",
            "the request body could not be read completely (malformed chunked framing, or the caller stopped sending it); nothing more of it was forwarded",
        )),
        RequestBodyViolation::None => None,
    }
}

/// The answer when `what` (a vendor, a host) could not be dialled: guard refusal, DNS,
/// timeout, or connection failure.
pub(crate) fn connect_error(what: &str, error: &ConnectError) -> CallError {
    match error {
        ConnectError::Denied(denied) if denied.listed => CallError::forbidden(
            "host_denied",
            format!("{what} resolves to an address on the proxy's deny list ([proxy] deny_hosts)"),
        ),
        ConnectError::Denied(denied) => CallError::bad_gateway(
            "upstream_address_denied",
            format!(
                "{what} resolves to a {} address, which Postern refuses to dial; if this is intended, list it in allow_private_networks",
                denied.class.as_str()
            ),
        ),
        ConnectError::Resolve { .. } => CallError::bad_gateway(
            "upstream_unresolvable",
            format!("{what} could not be resolved"),
        ),
        ConnectError::ReachesPostern { .. } => CallError::bad_gateway(
            "upstream_is_postern",
            format!("{what} is Postern itself (one of its own listening sockets); a call may not come back in through Postern"),
        ),
        ConnectError::ResolverBusy { limit } => {
            let mut error = CallError::unavailable(
                "resolver_busy",
                format!("{what} was not looked up: Postern has {limit} name lookups waiting on name servers already; try again shortly"),
            );
            error.retry_after_seconds = Some(1);
            error
        }
        ConnectError::CallerResolverBusy { limit } => {
            let mut error = CallError::unavailable(
                "resolver_busy",
                format!("{what} was not looked up: this caller has {limit} name lookups waiting on name servers already, the most one caller may have; try again shortly"),
            );
            error.retry_after_seconds = Some(1);
            error
        }
        ConnectError::Timeout { timeout_ms, .. } => CallError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_connect_timeout",
            format!("connecting to {what} took longer than connect_timeout_ms ({timeout_ms} ms)"),
        ),
        ConnectError::Connect { .. }
        | ConnectError::NoAddress
        | ConnectError::ServerName { .. } => CallError::bad_gateway(
            "upstream_unreachable",
            format!("{what} could not be reached"),
        ),
    }
}

fn has_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if error.is::<rustls::Error>() {
            return true;
        }
        // io::Error hides its payload from `source()`; look inside, layer by layer.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(io) = inner.and_then(|e| e.downcast_ref::<std::io::Error>()) {
            inner = io
                .get_ref()
                .map(|e| e as &(dyn std::error::Error + 'static));
            if inner.is_some_and(|e| e.is::<rustls::Error>()) {
                return true;
            }
        }
        current = error.source();
    }
    false
}

/// An error and its causes, for the log. A vendor's GOAWAY carries debug data of the vendor's
/// choosing, which h2 shows after the reason as ` (b"…")`: it may quote the injected credential
/// or the request's URL (a `query` credential), so it is left out.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(error) = current {
        if !text.is_empty() {
            text.push_str(": ");
        }
        let described = error.to_string();
        text.push_str(match described.find(" (b\"") {
            Some(at) => &described[..at],
            None => &described,
        });
        current = error.source();
    }
    text
}

/// The vendor's response, checked and cleaned before anything of it reaches the caller: its
/// declared size, an off-origin redirect noted, hop-by-hop headers and any header echoing the
/// injected credential removed, Postern's own headers added.
fn prepare_response(
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    response: Response<UpstreamBody>,
    intent_index: Option<u64>,
) -> Result<Prepared, CallError> {
    let (mut parts, mut body) = response.into_parts();
    let limit = integration.config.max_response_body_bytes;
    let bodiless = crate::body::bodiless(context.method.as_ref(), parts.status.as_u16());
    if bodiless {
        body = body.without_content();
    }
    // An answer with no content (to `HEAD`, a 304) has nothing to limit: its `Content-Length`
    // says what a `GET` would have carried.
    let declared_length = crate::h1::content_length(&parts.headers).filter(|_| !bodiless);
    if declared_length.is_some_and(|length| length > limit) {
        return Err(CallError::bad_gateway(
            "response_too_large",
            format!("the vendor's response exceeds max_response_body_bytes ({limit})"),
        ));
    }
    if parts.status.is_redirection() {
        redirect_for_caller(integration, context, &mut parts.headers);
    }
    // Needed no more: a `Host` shares the request head's buffer, which a streamed answer
    // would otherwise keep until its end.
    context.reached = None;
    // A vendor may echo the injected credential (a redirect or pagination link carrying an
    // api_key parameter, say): such headers never reach the caller.
    let oauth_tokens = oauth_echoes(integration, parts.extensions.get::<crate::oauth::Minted>());
    let leaks = |name: &HeaderName, value: &HeaderValue| {
        echoes_secret(name, value.as_bytes(), &integration.secret_needles)
            || oauth_tokens
                .as_ref()
                .is_some_and(|tokens| echoes_secret(name, value.as_bytes(), tokens))
    };
    // Most answers carry none of the headers removed below, and one pass over them costs less
    // than the removals (each hashes its name): `Connection`, which names more, is hop-by-hop.
    let mut cookies = false;
    let origin_wide: &[HeaderName] = match context.mode {
        None => &ORIGIN_WIDE,
        Some(_) => &[],
    };
    let mut origin_wide_found = false;
    let strip = parts.headers.iter().fold(false, |strip, (name, value)| {
        cookies |= name == header::SET_COOKIE;
        origin_wide_found |= origin_wide.contains(name);
        strip || HOP_BY_HOP.contains(name) || leaks(name, value)
    });
    // Many vendors send one on every answer (HSTS): taken off by name alone, not by the strip
    // below, which reads every field again.
    if origin_wide_found {
        for name in origin_wide {
            parts.headers.remove(name);
        }
    }
    // Every integration shares Postern's origin in path mode: a vendor's cookie is kept to its
    // integration's paths, or a caller's cookie jar would hand it to every other vendor.
    if cookies && context.mode.is_none() {
        // (One that could not be kept so, were there one, is dropped.)
        let prefix = &integration.upstream.path_prefix;
        let kept: Vec<HeaderValue> = parts
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| cookie_kept_to(value.as_bytes(), prefix, &integration.name))
            .collect();
        parts.headers.remove(header::SET_COOKIE);
        for value in kept {
            parts.headers.append(header::SET_COOKIE, value);
        }
    }
    if strip {
        for name in HOP_BY_HOP.iter().chain(&connection_named(&parts.headers)) {
            parts.headers.remove(name);
        }
        for name in remove_fields(&mut parts.headers, leaks) {
            // A name that holds the credential is not written out either.
            let named = !leaks(&name, &HeaderValue::from_static(""));
            let shown = if named {
                name.as_str()
            } else {
                "(its name held it)"
            };
            tracing::warn!(integration = %integration.name, header = %shown, request_id = %context.request_id, "vendor response header carried the injected credential; removed");
            context.secret_echoed = true;
        }
    }
    // The body is read for it too, as it streams (an answer with no content has none).
    let echo = match bodiless {
        true => None,
        false => crate::echo::EchoFilter::for_answer(
            &parts.headers,
            &integration.secret_needles,
            oauth_tokens.clone(),
            (limit, context.caller.as_ref()),
        )
        .map_err(|unreadable| {
            let coding = match unreadable {
                crate::echo::Unreadable::Coding(coding) => coding,
                // The call reached the vendor, which may have acted on it: a 502, with no
                // `Retry-After` inviting a retry that would act again.
                crate::echo::Unreadable::DecodersBusy => {
                    return CallError::bad_gateway(
                        "response_decoders_busy",
                        "the vendor's answer was withheld: the gateway is reading as many br answers for the injected credential as its memory budget allows (the call reached the vendor, and may have taken effect); ask for gzip (Accept-Encoding: gzip) to be read without that budget",
                    );
                }
            };
            let named = coding
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._, ".contains(&b));
            CallError::bad_gateway(
                "response_undecodable",
                format!(
                    "the vendor answered in Content-Encoding `{}`, which Postern cannot read for the injected credential as it streams, before the caller gets it (stacked or unknown codings, and zstd, whose blocks decode only once whole); the caller should ask for one coding Postern reads so (Accept-Encoding: gzip, deflate or br) or none",
                    if named { coding.as_str() } else { "(not a coding name)" }
                ),
            )
        })?
        .map(Box::new),
    };
    if let Ok(value) = HeaderValue::from_str(&context.request_id) {
        parts.headers.insert(crate::REQUEST_ID, value);
    }
    audit_receipt(&mut parts.headers, intent_index);
    parts.version = http::Version::default();
    parts.extensions = http::Extensions::new();
    Ok(Prepared { parts, body, echo })
}

/// The OAuth2 tokens an answer is read for: those the integration minted last
/// ([`TokenSource::echoes`]), and the one this call injected ([`oauth_call`] leaves it in the
/// answer's `extensions`) should newer ones have pushed it out meanwhile.
pub(crate) fn oauth_echoes(
    integration: &IntegrationRuntime,
    injected: Option<&crate::oauth::Minted>,
) -> Option<crate::echo::Needles> {
    let minted = integration.oauth_echoes();
    match (minted, injected) {
        (Some(minted), Some(injected))
            if !injected
                .needles
                .iter()
                .all(|needle| minted.iter().any(|known| known[..] == needle[..])) =>
        {
            let all = minted.iter().chain(injected.needles.iter()).cloned();
            Some(Arc::new(all.collect()))
        }
        (Some(minted), _) => Some(Arc::clone(&minted)),
        (None, injected) => injected.map(|injected| injected.needles.clone()),
    }
}

/// The vendor's answer as [`prepare_response`] leaves it for the caller.
struct Prepared {
    parts: http::response::Parts,
    body: UpstreamBody,
    /// What reads the body for the injected credential ([`crate::echo`]); `None` when there is
    /// none to look for, or no body.
    echo: Option<Box<crate::echo::EchoFilter>>,
}

/// [`prepare_response`], then the response body's scan (integrations with `data_classes`).
async fn inspect_scanned(
    shared: &Arc<Shared>,
    runtime: &Runtime,
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    response: Response<UpstreamBody>,
    intent_index: Option<u64>,
) -> Result<Response<GatewayBody>, CallError> {
    let Prepared {
        mut parts,
        body,
        echo,
    } = prepare_response(integration, context, response, intent_index)?;
    let scanned = crate::scan::scan_response(
        integration,
        &runtime.scanner,
        &parts.headers,
        body,
        (context.started, context.caller.as_ref()),
    );
    match scanned.await {
        Ok(scanned) => {
            if scanned.summary.redacted {
                crate::scan::drop_digests(&mut parts.headers);
            }
            shared.note_dataflow(context, &scanned.summary, "response");
            context.response_scan = Some(scanned.summary);
            Ok(answer(
                shared,
                integration,
                context,
                Prepared {
                    parts,
                    body: scanned.rest,
                    echo,
                },
                (scanned.prefix, scanned.held),
                intent_index,
            ))
        }
        Err((error, summary)) => {
            shared.note_dataflow(context, &summary, "response_blocked");
            context.response_scan = Some(summary);
            Err(error)
        }
    }
}

/// The caller's response: the vendor's head, and its body (after `prefix`, what a scan already
/// read) streamed under `max_response_body_bytes`; the call is recorded when the body ends.
fn answer(
    shared: &Arc<Shared>,
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    Prepared { parts, body, echo }: Prepared,
    (prefix, scanned): (Bytes, Option<Box<crate::body::DecoderPermit<'static>>>),
    intent_index: Option<u64>,
) -> Response<GatewayBody> {
    let status = parts.status.as_u16();
    let started = context.started;
    let pending = PendingRecord {
        recorder: shared.recorder.clone(),
        context: context.take(),
        status,
        reason: "granted",
        after: None,
    };
    let audit = PendingAudit {
        audit: shared.audit.clone(),
        intent_index,
    };
    let limit = integration.config.max_response_body_bytes;
    let stall = Stall::for_call(&integration.config, started);
    let body = ResponseBody::new(body, limit, stall, pending, Some(audit))
        .with_prefix(prefix)
        .with_echo(echo)
        .holding(scanned);
    Response::from_parts(parts, GatewayBody::Stream(Box::new(body)))
}

/// Whether a redirect's Location points outside the upstream's scheme, host and port, or may
/// to some client (a `\` or a tab in it).
pub fn leaves_origin(upstream: &url::Url, location: &str) -> bool {
    // A `\` or a tab, which URL parsers read differently (WHATWG's takes `\` for `/` and
    // drops tabs; curl's and Python's do not): `http://vendor\@evil.example/` is the vendor
    // to one client and `evil.example` to another. Taken as leaving.
    if location.contains(['\\', '\t']) {
        return true;
    }
    match upstream.join(location) {
        Ok(target) => {
            target.scheme() != upstream.scheme()
                || target.host_str().map(str::to_ascii_lowercase)
                    != upstream.host_str().map(str::to_ascii_lowercase)
                || target.port_or_known_default() != upstream.port_or_known_default()
        }
        Err(_) => true,
    }
}

/// A vendor's redirect, as the caller gets it: flagged in the event when it leads off the
/// vendor's origin or past Postern (`redirect_off_origin`), and in path mode either mapped
/// through Postern, left as written, or removed ([`through_postern`]). Through the forward proxy
/// the caller already names the vendor's own URLs: the `Location` is left as written.
fn redirect_for_caller(
    integration: &IntegrationRuntime,
    context: &mut CallContext,
    headers: &mut HeaderMap,
) {
    let mut locations = headers.get_all(header::LOCATION).iter();
    let Some(first) = locations.next() else {
        return;
    };
    // The same `Location` twice (a proxy's duplicate line) is one; different ones are not.
    let several = locations.any(|other| other != first);
    let upstream = &integration.config.upstream;
    let text = first.to_str().ok();
    // One a client could read otherwise than Postern (a byte that is not visible ASCII) is
    // taken as leaving the origin.
    context.redirect_off_origin = text.is_none_or(|location| leaves_origin(upstream, location));
    if context.mode.is_some() {
        return;
    }
    let redirect = match text {
        // Clients disagree on which one they follow, or on how they read it: none is sent.
        Some(_) if several => Redirect::Dropped,
        None => Redirect::Dropped,
        Some(location) => through_postern(
            upstream,
            &integration.upstream.path_prefix,
            &integration.name,
            location,
            context.path_template.as_deref(),
            context
                .reached
                .as_ref()
                .and_then(|reached| reached.as_str()),
        ),
    };
    match redirect {
        Redirect::Through(through) => {
            if let Ok(value) = HeaderValue::from_str(&through) {
                headers.insert(header::LOCATION, value);
            }
        }
        Redirect::AsWritten => {}
        Redirect::OutOfReach => context.redirect_off_origin = true,
        Redirect::Dropped => {
            context.redirect_off_origin = true;
            headers.remove(header::LOCATION);
        }
    }
}

/// What becomes of a vendor's redirect in path mode ([`through_postern`]).
#[derive(Debug, PartialEq)]
enum Redirect {
    /// To a place of the vendor's own, as the caller reaches it through Postern.
    Through(String),
    /// Left as the vendor wrote it: another origin (flagged by [`leaves_origin`]), or a
    /// reference relative to the request's own URL that stays inside the integration.
    AsWritten,
    /// The vendor's own origin outside the upstream's path prefix, as a full URL: left as
    /// written (a caller following it reaches the vendor without Postern, as for another
    /// origin) and flagged.
    OutOfReach,
    /// Removed and flagged: a `Location` a caller following it would resolve to a place on
    /// Postern's origin outside the integration (`/other/x` from the vendor's root outside the
    /// prefix, `../../other/x` past the integration's first segment, `http:/other/x`, a full
    /// URL naming the address the caller reached Postern by, [`names_postern`]), since it
    /// would call another integration with its own token, and its method and body too after a
    /// 307 or 308: the vendor would choose what the caller calls next. Also one that URL parsers
    /// read apart (a `\`, a tab), one that is not visible ASCII, and one of several.
    Dropped,
}

/// Whether a caller that called a path of the operation `template`'s shape under
/// `/<integration>` (`/v1/charges/{id}` for `/<integration>/v1/charges/ch_1`) and followed
/// `location` would call Postern's origin outside the integration's paths, over plain HTTP or
/// TLS alike. Only the shape of the request's path matters to dot-segment resolution (RFC 3986
/// §5.2; templates match segment for segment), so it is resolved against a path of that shape;
/// a request for the integration's root (`/`, which `/<integration>` alone also reaches) has no
/// directory of its own there, so any path-relative reference leaves it. Resolved as WHATWG
/// URL parsers do (the `url` crate), which read more forms as relative (`http:/x`) than RFC
/// 3986; Python's `urljoin` and curl read those alike.
fn lands_outside_integration(location: &str, template: Option<&str>) -> bool {
    let directories = template.map_or(0, |template| {
        template
            .bytes()
            .filter(|&byte| byte == b'/')
            .count()
            .saturating_sub(1)
    });
    let path = match template {
        Some(template) if template != "/" => format!("/i/{}f", "d/".repeat(directories)),
        _ => "/i".to_string(),
    };
    ["http", "https"].iter().any(|scheme| {
        let base = format!("{scheme}://postern.invalid{path}");
        match url::Url::parse(&base).and_then(|base| base.join(location)) {
            Ok(target) => {
                target.host_str() == Some("postern.invalid")
                    && target.scheme() == *scheme
                    && target.port().is_none()
                    && !(target.path() == "/i" || target.path().starts_with("/i/"))
            }
            Err(_) => true,
        }
    })
}

/// Whether `location` names an empty authority (`///x`, `http:///x`): WHATWG parsers skip the
/// slashes and take `x` for a host, Python's `urljoin` keeps the caller's host and calls `/x`
/// there: where a caller following it lands depends on its client.
fn empty_authority(location: &str) -> bool {
    let rest = match location.split_once(':') {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"+-.".contains(&byte)) =>
        {
            rest
        }
        _ => location,
    };
    rest.strip_prefix("//")
        .is_some_and(|after| after.is_empty() || after.starts_with(['/', '?', '#']))
}

/// A vendor's redirect, as the caller reaches its target through Postern (path mode):
/// `https://api.vendor.example/v2/x?y` or `/v2/x?y`, for an upstream
/// `https://api.vendor.example/v2`, is `/<integration>/x?y`. A caller that follows it then stays
/// on its grants, its token and the vendor's key where they belong; the vendor's own URL would
/// take it past Postern (its client carrying whatever headers it sends Postern), and a path
/// from the vendor's root would land on Postern's. A redirect to another origin is left as
/// written (flagged in the event, [`leaves_origin`]), and so is one relative to the request's
/// own URL (`other`, `?page=2`, `../x`), which the caller resolves against the URL it called,
/// through Postern already: unless, as the caller resolves it, it lands on Postern's origin
/// outside the integration ([`lands_outside_integration`], [`Redirect::Dropped`]).
/// `template`: the operation's path template, the shape of the request's path. `reached`: the
/// authority the caller reached Postern by; a full URL naming it is a place on Postern's
/// origin, kept only inside the integration.
fn through_postern(
    upstream: &url::Url,
    path_prefix: &str,
    integration: &str,
    location: &str,
    template: Option<&str>,
    reached: Option<&str>,
) -> Redirect {
    // Read apart by URL parsers (WHATWG takes `\` for `/` and drops tabs; curl and Python do
    // not): where a caller's client lands cannot be told.
    if location.contains(['\\', '\t']) || empty_authority(location) {
        return Redirect::Dropped;
    }
    let left = |as_written: Redirect| match lands_outside_integration(location, template) {
        true => Redirect::Dropped,
        false => as_written,
    };
    if !location.starts_with('/') && url::Url::parse(location).is_err() {
        return left(Redirect::AsWritten);
    }
    if leaves_origin(upstream, location) {
        // Postern's own address, as the caller wrote it or another name for it on loopback:
        // a caller following it calls Postern, with whatever credentials its client sends
        // there (a `Postern-Caller-Token` set on every request, which clients do not take off
        // for another host, or its `Authorization` for the same one).
        if let (Ok(target), Some(reached)) = (upstream.join(location), reached) {
            if names_postern(&target, reached) {
                let path = target.path();
                let inside = path
                    .strip_prefix('/')
                    .and_then(|path| path.strip_prefix(integration))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                return match inside {
                    true => Redirect::AsWritten,
                    false => Redirect::Dropped,
                };
            }
        }
        return left(Redirect::AsWritten);
    }
    let Some(rest) = upstream.join(location).ok().and_then(|target| {
        let rest = target.path().strip_prefix(path_prefix)?.to_string();
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }) else {
        return left(Redirect::OutOfReach);
    };
    let mut through = format!("/{integration}{rest}");
    if rest.is_empty() {
        through.push('/');
    }
    // The query and fragment as the vendor wrote them (a signed URL's bytes matter; the `url`
    // crate would write some anew, `'` as `%27`).
    if let Some(at) = location.find(['?', '#']) {
        through.push_str(&location[at..]);
    }
    Redirect::Through(through)
}

/// Whether `target` (a vendor's redirect, resolved) names the authority the caller reached
/// Postern by (`reached`, its `Host`): the same host (a name's trailing dot aside), or both this
/// machine's (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`, and the addresses a connection
/// to reaches this machine too: 0.0.0.0/8, `::`, and those IPv4-mapped, `::ffff:127.0.0.1`; a
/// sidecar's caller reaches it by any of them), and the same port (a `Host` without one stands
/// for the default port of the `Location`'s scheme, which is not told apart from the other
/// scheme's: a redirect to the other one is taken as Postern's too). Hosts compared as WHATWG
/// parsers write them (`LOCALHOST`, `0x7f.1` and `127.1` are `localhost` and `127.0.0.1`).
/// Another name that resolves to Postern (a DNS alias, `127.0.0.1.nip.io`) is not told.
fn names_postern(target: &url::Url, reached: &str) -> bool {
    let Ok(reached) = url::Url::parse(&format!("http://{reached}/")) else {
        return false;
    };
    let same_port = match reached.port() {
        Some(port) => target.port_or_known_default() == Some(port),
        None => target.port().is_none(),
    };
    let this_machine = |host: &url::Host<&str>| {
        let address = match host {
            url::Host::Domain(name) => {
                let name = name.strip_suffix('.').unwrap_or(name);
                return name == "localhost" || name.ends_with(".localhost");
            }
            url::Host::Ipv4(address) => std::net::IpAddr::V4(*address),
            url::Host::Ipv6(address) => std::net::IpAddr::V6(*address).to_canonical(),
        };
        // 0.0.0.0/8 ("this network") reaches this host too, as the SSRF guard notes.
        address.is_loopback()
            || address.is_unspecified()
            || matches!(address, std::net::IpAddr::V4(v4) if v4.octets()[0] == 0)
    };
    let same_host = |a: &url::Host<&str>, b: &url::Host<&str>| match (a, b) {
        (url::Host::Domain(a), url::Host::Domain(b)) => {
            a.strip_suffix('.').unwrap_or(a) == b.strip_suffix('.').unwrap_or(b)
        }
        (a, b) => a == b,
    };
    match (target.host(), reached.host()) {
        (Some(target), Some(reached)) => {
            same_port
                && (same_host(&target, &reached)
                    || (this_machine(&target) && this_machine(&reached)))
        }
        _ => false,
    }
}

/// A vendor's `Set-Cookie` kept to its integration's paths on Postern's origin (path mode): its
/// `Path` mapped as a request path is (`Path=/v2/a`, for an upstream path prefix `/v2`, is
/// `Path=/<integration>/a`; a path outside the prefix, `/` included, is `/<integration>`), and
/// a cookie without one (or whose last `Path` does not start with `/`) given `/<integration>`,
/// since its default path is the called path's directory, which for `/<integration>` itself
/// is `/` (RFC 6265 §5.1.4); the `Path` goes last. A `Domain` attribute, which names the
/// vendor's host and would make a client refuse the cookie on Postern's (or widen it to
/// Postern's neighbours), is dropped. Read as bytes (a value that is not UTF-8 is kept to its
/// paths as well); `None` only where the result would not be a header value.
fn cookie_kept_to(value: &[u8], path_prefix: &str, integration: &str) -> Option<HeaderValue> {
    let mut parts = value.split(|&byte| byte == b';');
    let mut kept = parts.next().unwrap_or_default().to_vec();
    let mut path: &[u8] = b"";
    for attribute in parts {
        let (name, attribute_value) = match attribute.iter().position(|&byte| byte == b'=') {
            Some(at) => (&attribute[..at], &attribute[at + 1..]),
            None => (attribute, &b""[..]),
        };
        let (name, attribute_value) = (name.trim_ascii(), attribute_value.trim_ascii());
        if name.eq_ignore_ascii_case(b"path") {
            // The last one counts; one not starting with `/` stands for the default.
            path = match attribute_value.starts_with(b"/") {
                true => attribute_value
                    .strip_prefix(path_prefix.as_bytes())
                    .filter(|rest| rest.is_empty() || rest.starts_with(b"/"))
                    .unwrap_or(b""),
                false => b"",
            };
        } else if !name.eq_ignore_ascii_case(b"domain") {
            kept.push(b';');
            kept.extend_from_slice(attribute);
        }
    }
    kept.extend_from_slice(b"; Path=/");
    kept.extend_from_slice(integration.as_bytes());
    kept.extend_from_slice(if path == b"/" { b"" } else { path });
    HeaderValue::from_bytes(&kept).ok()
}

/// Header names listed in `Connection` (hop-by-hop for this message, RFC 9110 §7.6.1). Read
/// as bytes: a value with a byte that is not UTF-8 (obs-text) still names the headers beside it.
/// [`BODY_FIELDS`] are left out, in path mode and the forward proxy alike: named or not, they
/// stay.
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&byte| byte == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .filter(|name| !BODY_FIELDS.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        cgi_alias_of, check_header_bytes, check_request, contains, cookie_kept_to, echoes_secret,
        holds_a_caller_token, leaves_origin, path_problem, query_name_is, strip_path_parameters,
        strip_query_credential, through_postern, url_holds_a_caller_token, ESCAPE_LAYERS,
    };
    use crate::body::CallerBody;
    use crate::escapes::every_byte::{json_escaped, percent_encoded};
    use http::header::{HeaderName, HeaderValue};
    use http::{header, Request};
    use std::borrow::Cow;

    /// A vendor's GOAWAY debug data (h2 shows it after the reason) never reaches the log.
    #[test]
    fn a_vendors_goaway_debug_data_is_left_out_of_the_log() {
        #[derive(Debug)]
        struct GoAway;
        impl std::fmt::Display for GoAway {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "connection error received: not a result of an error (b\"key=sk_live_CANARY\")",
                )
            }
        }
        impl std::error::Error for GoAway {}
        #[derive(Debug)]
        struct Client(GoAway);
        impl std::fmt::Display for Client {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("http2 error")
            }
        }
        impl std::error::Error for Client {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            super::error_chain(&Client(GoAway)),
            "http2 error: connection error received: not a result of an error"
        );
    }

    #[test]
    fn a_header_read_as_a_stripped_one_by_cgi_servers_is_stripped_too() {
        let stripped = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];
        for (name, alias) in [
            ("x_api_key", true),
            ("x_api-key", true),
            ("x-api_key", true),
            ("x-api-key", false), // stripped by name already
            ("x_api_keys", false),
            ("x_other_key", false),
            ("x-other-key", false),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(cgi_alias_of(&name, &stripped), alias, "{name}");
        }
        // An injected header named with `_`: its `-` spelling is stripped too.
        let underscored = [HeaderName::from_static("x_api_key")];
        assert!(cgi_alias_of(
            &HeaderName::from_static("x-api-key"),
            &underscored
        ));
        // `Authorization` has no `-`: only itself.
        assert!(!cgi_alias_of(
            &HeaderName::from_static("authori_ation"),
            &stripped
        ));
    }

    #[test]
    fn a_vendors_cookie_is_kept_to_its_integrations_paths() {
        let cases: [(&[u8], &str); 10] = [
            (
                b"sid=1; Path=/; Domain=vendor.example; HttpOnly",
                "sid=1; HttpOnly; Path=/pay",
            ),
            (
                b"sid=1; path=/v2/cart; Secure",
                "sid=1; Secure; Path=/pay/cart",
            ),
            (
                b"sid=1; Path = /v2/cart ;Secure",
                "sid=1;Secure; Path=/pay/cart",
            ),
            (b"sid=1; Path=/v1/other", "sid=1; Path=/pay"),
            (b"sid=1; Path=/v2x", "sid=1; Path=/pay"),
            (b"sid=1; Path=/v2/", "sid=1; Path=/pay"),
            (
                b"sid=1;Path=relative;Max-Age=60",
                "sid=1;Max-Age=60; Path=/pay",
            ),
            (b"sid=1; Path=/v2/a; Path=/v2/b", "sid=1; Path=/pay/b"),
            (
                b"sid=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; DOMAIN=.vendor.example",
                "sid=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/pay",
            ),
            // No `Path`: its default, for a call to `/pay` itself, would be `/`.
            (b"sid=a=b; HttpOnly", "sid=a=b; HttpOnly; Path=/pay"),
        ];
        for (cookie, kept) in cases {
            let got = cookie_kept_to(cookie, "/v2", "pay").unwrap();
            assert_eq!(got, kept, "{}", String::from_utf8_lossy(cookie));
        }
        assert_eq!(
            cookie_kept_to(b"a=1; Path=/v1/x", "", "pay").unwrap(),
            "a=1; Path=/pay/v1/x"
        );
        // A byte that is not UTF-8 in the value: kept to its paths all the same.
        let odd = cookie_kept_to(b"a=\xff; Path=/", "", "pay").unwrap();
        assert_eq!(odd.as_bytes(), b"a=\xff; Path=/pay");
    }

    #[test]
    fn a_redirect_to_the_vendors_own_place_goes_through_postern() {
        use super::Redirect::{AsWritten, Dropped, OutOfReach, Through};
        let upstream = url::Url::parse("https://api.vendor.example/v2").unwrap();
        let through = |path: &str| Through(path.to_string());
        // The request: `/pay/v1/charges/ch_1`, two directories below `/pay/`.
        let template = Some("/v1/charges/{id}");
        let cases = [
            (
                "/v2/charges/ch_1?expand=x",
                through("/pay/charges/ch_1?expand=x"),
            ),
            (
                "https://API.vendor.example:443/v2/a#top",
                through("/pay/a#top"),
            ),
            ("/v2", through("/pay/")),
            ("/v2/../v2/b", through("/pay/b")),
            ("/v2/s?sig=a'b%2F#x y", through("/pay/s?sig=a'b%2F#x y")),
            // Elsewhere: as written (flagged by `leaves_origin`).
            ("https://evil.example.net/v2/steal", AsWritten),
            ("//evil.example.net/v2/steal", AsWritten),
            ("http://api.vendor.example/v2/a", AsWritten),
            ("https://api.vendor.example:8443/v2/a", AsWritten),
            // Relative to the request's own URL, inside the integration: as written.
            ("charges/ch_2", AsWritten),
            ("?page=2", AsWritten),
            ("../x", AsWritten),
            ("../../x", AsWritten),
            ("./../../x?y", AsWritten),
            ("%2e%2e/x", AsWritten),
            // On Postern's origin outside the integration, as a caller resolves it: removed.
            ("../../../payroll/v1/transfers", Dropped),
            ("../../../../../payroll", Dropped),
            ("a/../../../../payroll", Dropped),
            ("%2e%2e/%2e%2e/%2e%2e/payroll", Dropped),
            (".%2E/.%2e/%2E./payroll", Dropped),
            // A segment `..;` is no dot segment to a caller's client: it asks Postern for
            // `/pay/..;/payroll`, on the integration still.
            ("../../..;/payroll", AsWritten),
            ("/v1/charges", Dropped),
            ("/v2x/charges", Dropped),
            ("/payroll/v1/transfers", Dropped),
            ("/payroll/v1/transfers#x", Dropped),
            ("/v2/../payroll", Dropped),
            ("http:/payroll/v1/t", Dropped),
            ("https:/payroll/v1/t", Dropped),
            // Relative to the request to a caller on plain HTTP (WHATWG, urljoin): inside.
            ("http:payroll", AsWritten),
            ("/payroll/v1/transfers#\\", Dropped),
            ("/v2/a\tb", Dropped),
            ("https://api.vendor.example\\@evil.example/x", Dropped),
            // An empty authority: a host to WHATWG parsers, the caller's own to `urljoin`.
            ("///payroll/v1/transfers", Dropped),
            ("http:///payroll/v1/t", Dropped),
            ("https:///payroll", Dropped),
            ("//", Dropped),
            // The vendor's origin outside the prefix, as a full URL: past Postern, flagged.
            ("https://api.vendor.example/v1/charges", OutOfReach),
            ("https://api.vendor.example/", OutOfReach),
        ];
        for (location, expected) in cases {
            assert_eq!(
                through_postern(&upstream, "/v2", "pay", location, template, None),
                expected,
                "{location}"
            );
        }
        let root = url::Url::parse("https://api.vendor.example").unwrap();
        assert_eq!(
            through_postern(&root, "", "pay", "/v1/x", Some("/x"), None),
            through("/pay/v1/x")
        );
        // A request at the top (`/pay/x`): no `..` stays inside.
        assert_eq!(
            through_postern(&root, "", "pay", "../x", Some("/x"), None),
            Dropped
        );
        assert_eq!(
            through_postern(&root, "", "pay", "y", Some("/x"), None),
            AsWritten
        );
        // The integration's root (`/pay` reaches it as well as `/pay/`): only a query or a
        // fragment stays on it.
        for (location, expected) in [("?page=2", AsWritten), ("y", Dropped), (".", Dropped)] {
            assert_eq!(
                through_postern(&root, "", "pay", location, Some("/"), None),
                expected,
                "{location}"
            );
        }
    }

    /// A full URL naming the address the caller reached Postern by is a place on Postern's
    /// origin: kept inside the integration, removed outside it; on loopback, any loopback name
    /// with the same port is Postern's.
    #[test]
    fn a_redirect_naming_posterns_own_address_outside_the_integration_is_removed() {
        use super::Redirect::{AsWritten, Dropped};
        let upstream = url::Url::parse("https://api.vendor.example/v2").unwrap();
        let template = Some("/v1/charges/{id}");
        let cases = [
            (
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/payroll/v1/transfers",
                Dropped,
            ),
            ("127.0.0.1:8080", "http://localhost:8080/payroll", Dropped),
            ("127.0.0.1:8080", "https://LOCALHOST:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://127.1:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://0x7f.1:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://[::1]:8080/payroll", Dropped),
            (
                "127.0.0.1:8080",
                "http://app.localhost:8080/payroll",
                Dropped,
            ),
            (
                "127.0.0.1:8080",
                "http://user:pw@127.0.0.1:8080/payroll",
                Dropped,
            ),
            ("127.0.0.1:8080", "//127.0.0.1:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/", Dropped),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/payx/v1", Dropped),
            (
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/pay/../payroll",
                Dropped,
            ),
            ("127.0.0.1:8080", "http://localhost.:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://0.0.0.0:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://0:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://[::]:8080/payroll", Dropped),
            (
                "127.0.0.1:8080",
                "http://[::ffff:127.0.0.1]:8080/payroll",
                Dropped,
            ),
            ("127.0.0.1:8080", "http://127.0.0.1.:8080/payroll", Dropped),
            ("127.0.0.1:8080", "http://127.0.0.1:08080/payroll", Dropped),
            (
                "127.0.0.1:8080",
                "http://%6c%6fcalhost:8080/payroll",
                Dropped,
            ),
            (
                "postern.internal:8080",
                "http://postern.internal.:8080/payroll",
                Dropped,
            ),
            (
                "postern.internal.:8080",
                "http://postern.internal:8080/payroll",
                Dropped,
            ),
            // Inside the integration: as written.
            (
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/pay/v1/charges/ch_2",
                AsWritten,
            ),
            ("127.0.0.1:8080", "http://localhost:8080/pay", AsWritten),
            // Another port or host: not Postern's.
            ("127.0.0.1:8080", "http://127.0.0.1:9090/payroll", AsWritten),
            (
                "127.0.0.1:8080",
                "http://evil.example:8080/payroll",
                AsWritten,
            ),
            ("127.0.0.1:8080", "http://127.0.0.1/payroll", AsWritten),
            (
                "postern.internal:8080",
                "http://POSTERN.internal:8080/payroll",
                Dropped,
            ),
            (
                "postern.internal:8080",
                "http://localhost:8080/payroll",
                AsWritten,
            ),
            (
                "postern.internal:8080",
                "http://other.internal:8080/payroll",
                AsWritten,
            ),
            // A `Host` without a port: the default one of the `Location`'s scheme.
            (
                "postern.internal",
                "https://postern.internal/payroll",
                Dropped,
            ),
            (
                "postern.internal",
                "http://postern.internal:80/payroll",
                Dropped,
            ),
            (
                "postern.internal",
                "http://postern.internal:8080/payroll",
                AsWritten,
            ),
        ];
        for (reached, location, expected) in cases {
            assert_eq!(
                through_postern(&upstream, "/v2", "pay", location, template, Some(reached)),
                expected,
                "{reached} {location}"
            );
        }
        // Without a `Host` nothing names Postern: as before.
        assert_eq!(
            through_postern(
                &upstream,
                "/v2",
                "pay",
                "http://127.0.0.1:8080/payroll",
                template,
                None
            ),
            AsWritten
        );
    }

    #[test]
    fn a_redirect_leaves_the_origin_when_scheme_host_or_port_differ() {
        let upstream = url::Url::parse("https://api.vendor.example").unwrap();
        let cases = [
            ("/v1/other", false),
            ("other", false),
            ("https://API.Vendor.Example/v2", false),
            ("https://api.vendor.example:443/v2", false),
            ("http://api.vendor.example/v1", true),
            ("https://api.vendor.example:8443/v1", true),
            ("https://evil.example/v1", true),
            ("//evil.example/v1", true),
            ("https://api.vendor.example.evil.example/", true),
            ("https://[::1", true),
            // Read as the vendor by `url` (WHATWG: `\` is `/`), as `evil.example` by curl and
            // Python's urllib (user information before the `@`).
            ("https://api.vendor.example\\@evil.example/x", true),
            ("/v1/\\evil.example", true),
            ("https://api.vendor.example/v1/x\ty", true),
        ];
        for (location, leaves) in cases {
            assert_eq!(leaves_origin(&upstream, location), leaves, "{location}");
        }
    }

    #[test]
    fn a_header_echoes_the_secret_in_its_name_in_any_case_or_split_by_tabs() {
        let needles = [zeroize::Zeroizing::new(b"sk_live_Key_0123456789".to_vec())];
        let echoes = |name: &str, value: &[u8]| {
            echoes_secret(
                &HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value,
                &needles,
            )
        };
        assert!(echoes("x-sk_live_key_0123456789", b"1"));
        assert!(echoes("sk_live_key_0123456789", b""));
        assert!(echoes("x-sk_live%5Fkey_0123456789", b"1"));
        assert!(echoes("x-kept", b"next?k=sk_live_Key\t_0123456789"));
        assert!(echoes("x-kept", b"sk_live_Key_0123456789"));
        assert!(!echoes("x-sk_live_key_012345678", b"1"));
        assert!(
            !echoes("x-kept", b"sk_live_key_0123456789"),
            "a value keeps its case"
        );
        assert!(!echoes("x-kept", b"fine"));
    }

    #[test]
    fn connection_names_beside_a_byte_that_is_not_utf8_are_still_read() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-one, \xff\xfe ,X-Two").unwrap(),
        );
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        // What says what the body is stays (BODY_FIELDS), whoever names it.
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("Content-Encoding, content-type,content-length"),
        );
        let named = super::connection_named(&headers);
        assert_eq!(
            named,
            ["x-one", "x-two", "keep-alive"].map(HeaderName::from_static),
            "the byte that names no header is skipped"
        );
    }

    #[test]
    fn path_parameters_are_left_out_of_the_routed_path() {
        for (path, routed) in [
            ("/v1/items/search;x", "/v1/items/search"),
            ("/v1/items;v=1/it_1;a;b/", "/v1/items/it_1/"),
            ("/v1/items/it_1", "/v1/items/it_1"),
        ] {
            assert_eq!(strip_path_parameters(path), routed, "{path}");
        }
    }

    #[test]
    fn a_query_name_is_compared_decoded() {
        for pair in [
            "api_key=1",
            "api_key",
            "api%5Fkey=1",
            "%61pi_key=",
            "api%5fkey",
            // Case, PHP's readings of `.`, a space and arrays.
            "API_KEY=1",
            "Api_Key",
            "api.key=1",
            "api+key=1",
            "api%20key=1",
            "+api_key=1",
            "api_key[]=1",
            "api_key[0]=1",
            "api.key[x]=1",
            "api_key[0]x=1",
            "api[key=1",
            // As PHP and Rack 2 read a name: up to a NUL, brackets before it and after it
            // dropped, a hash under it its own.
            "[api_key]=1",
            "[api_key=1",
            "%5Bapi_key%5D=1",
            "api_key%00=1",
            "api_key%00x=1",
            "api_key]]=1",
            "api_key]x=1",
            "%09api_key=1",
        ] {
            assert!(query_name_is(pair, "api_key"), "{pair}");
        }
        for pair in [
            "api_keys=1",
            "x=api_key",
            "api%5Gkey=1",
            "=api_key",
            "api_key_=1",
            "[]=1",
            "api_key[=1",
            "apikey=1",
            "%00api_key=1",
            "x%00api_key=1",
        ] {
            assert!(!query_name_is(pair, "api_key"), "{pair}");
        }
        assert!(query_name_is("api+key=1", "api key"));
        assert!(query_name_is("api%20key=1", "api key"));
        // A configured name with brackets of its own.
        for pair in [
            "auth[key]=1",
            "AUTH[KEY]=1",
            "auth%5Bkey%5D=1",
            "auth[]=1",
            "auth=1",
        ] {
            assert!(query_name_is(pair, "auth[key]"), "{pair}");
        }
        assert!(!query_name_is("author[key]=1", "auth[key]"));
        assert!(query_name_is("key=1", "key[]"));
    }

    #[test]
    fn a_query_credential_is_stripped_after_a_semicolon_too() {
        let strip = |query: &str| {
            let mut pairs: Vec<Cow<'_, str>> = query.split('&').map(Cow::Borrowed).collect();
            strip_query_credential(&mut pairs, "api_key");
            pairs.join("&")
        };
        assert_eq!(strip("a=1&api_key=x&b=2"), "a=1&b=2");
        assert_eq!(strip("a=1;api_key=x&b=2"), "a=1&b=2");
        assert_eq!(strip("api_key=x;a=1"), "a=1");
        assert_eq!(strip("api_key=x;API_KEY=y"), "");
        assert_eq!(strip("filter=a;b&c=d"), "filter=a;b&c=d");
        assert_eq!(strip("q=a%3Bapi_key%3Dx"), "q=a%3Bapi_key%3Dx");
        // The pairs PHP and Rack 2 would read as the parameter, however long the padding.
        let long = format!("a=1&api_key{}=x&b=2", "]".repeat(5000));
        assert_eq!(strip(&long), "a=1&b=2");
        assert_eq!(strip("[api_key]=x&api_key%00=y&api_key]]=z&b=2"), "b=2");
    }

    #[test]
    fn path_problem_names_the_first_kind_of_problem() {
        use super::{DOUBLY_ENCODED as DOUBLY, OVERLONG};
        let cases: &[(&str, Option<&str>)] = &[
            ("/stripe/v1/charges/ch_1", None),
            ("/", None),
            ("/stripe/v1/charges/", None),
            ("/a/.b/c..", None),
            ("/a/%7e%20%C3%A9", None),
            (
                "/a/%41",
                Some("it contains an encoded letter, digit, '-' or '_'"),
            ),
            (
                "/v1/charges/%73earch",
                Some("it contains an encoded letter, digit, '-' or '_'"),
            ),
            (
                "/a/%5f%2D%30",
                Some("it contains an encoded letter, digit, '-' or '_'"),
            ),
            ("stripe/v1", Some("it does not start with '/'")),
            ("", Some("it does not start with '/'")),
            ("/a/b\x01", Some("it contains a control character")),
            ("/a/b\x7f", Some("it contains a control character")),
            ("/a\\b", Some("it contains a backslash")),
            ("/a/%", Some("it contains a malformed percent-escape")),
            ("/a/%4", Some("it contains a malformed percent-escape")),
            ("/a/%zz", Some("it contains a malformed percent-escape")),
            ("/a/%2e%2e/b", Some("it contains an encoded '.' (%2e)")),
            ("/a/%2E", Some("it contains an encoded '.' (%2e)")),
            ("/a%2fb", Some("it contains an encoded '/' (%2f)")),
            ("/a%5Cb", Some("it contains an encoded '\\' (%5c)")),
            ("/a%0d%0a", Some("it contains an encoded control character")),
            // A percent sign is data (`100%25`), but not the start of an escape a vendor that
            // decodes twice reads as path structure.
            ("/a/100%25/b%2520c", None),
            ("/a/%25", None),
            ("/a/%252e%252e/b", Some(DOUBLY)),
            ("/v1/charges/%2573earch", Some(DOUBLY)),
            ("/a/%2541%252D", Some(DOUBLY)),
            ("/a/%25c0%25ae", Some(DOUBLY)),
            ("/a/%c0%ae%c0%ae/b", Some(OVERLONG)),
            ("/a%c0%afb", Some(OVERLONG)),
            ("/a%C1%9Cb", Some(OVERLONG)),
            ("/a%e0%80%afb", Some(OVERLONG)),
            ("/a%f0%80%80%afb", Some(OVERLONG)),
            ("/a%f8%80%80%80%afb", Some(OVERLONG)),
            ("/a%FC%80%80%80%80%afb", Some(OVERLONG)),
            ("/a%25e0%2580%25afb", Some(DOUBLY)),
            ("/a%25f0%2580%2580%25afb", Some(DOUBLY)),
            ("/a%25fc%2580%2580%2580%2580%25afb", Some(DOUBLY)),
            ("/a%25fcb", None),
            // U+0800 encoded twice is data.
            ("/a/%25e0%25a0%2580", None),
            ("/a%25e0%80%afb", Some(DOUBLY)),
            ("/a%25c0%aeb", Some(DOUBLY)),
            // Latin-1, not UTF-8: no continuation byte follows (`München`, `50%fa…` as text).
            ("/search/m%fcnchen/%c0x/%f8", None),
            ("/a/50%25fat", None),
            // Well-formed UTF-8, once or twice encoded.
            ("/a/%e2%82%ac/%f0%9f%98%80/%c3%a9", None),
            ("/a/%25e2%2582%25ac/%25f0%259f%2598%2580/%25c3%25a9", None),
            // Well-formed UTF-8 with those lead bytes is data: U+0800 and U+10000.
            ("/a/%e0%a0%80/%f0%90%80%80", None),
            ("/a/%e0", None),
            ("/a%252Fb", Some(DOUBLY)),
            ("/a%255cb", Some(DOUBLY)),
            ("/a%2500", Some(DOUBLY)),
            ("/a/../b", Some("it contains a '.' or '..' segment")),
            ("/a/./b", Some("it contains a '.' or '..' segment")),
            ("/..", Some("it contains a '.' or '..' segment")),
            ("/a/.", Some("it contains a '.' or '..' segment")),
            ("/a//b", Some("it contains an empty segment ('//')")),
            ("//", Some("it contains an empty segment ('//')")),
            // Path parameters: a segment's name ends at its first ';'.
            ("/a/b;v=1/c;x", None),
            ("/a/..;/b", Some("it contains a '.' or '..' segment")),
            ("/a/.;x/b", Some("it contains a '.' or '..' segment")),
            ("/a/..;x.json", Some("it contains a '.' or '..' segment")),
            ("/a/..;x;y", Some("it contains a '.' or '..' segment")),
            ("/a/;x/b", Some("it contains an empty segment ('//')")),
            ("/a/;x", Some("it contains an empty segment ('//')")),
            ("/;", Some("it contains an empty segment ('//')")),
            // A segment problem anywhere loses to a character problem anywhere, and an empty
            // segment to a dot segment.
            ("/a//../b\\", Some("it contains a backslash")),
            ("/a//b/../c", Some("it contains a '.' or '..' segment")),
        ];
        for (path, expected) in cases {
            assert_eq!(path_problem(path), *expected, "{path:?}");
        }
    }

    /// The header section is counted alike however the request came: an HTTP/1.1 request with
    /// its `Host` field and an h2 one with `:authority` instead take the same bytes (target,
    /// then name, value and 4 per field), allowed at the limit and refused one byte past it.
    #[test]
    fn header_bytes_count_host_and_authority_alike() {
        let target = http::uri::PathAndQuery::from_static("/v1/charges/ch_1");
        let http1 = Request::builder()
            .uri("/v1/charges/ch_1")
            .header(header::HOST, "api.vendor.test")
            .header("x-filler", "abc")
            .body(CallerBody::empty())
            .unwrap();
        let h2 = Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://api.vendor.test/v1/charges/ch_1")
            .header("x-filler", "abc")
            .body(CallerBody::empty())
            .unwrap();
        // "/v1/charges/ch_1" 16, "host" + "api.vendor.test" + 4 = 23, "x-filler" + "abc" + 4 = 15.
        let size = 16 + 23 + 15;
        for request in [&http1, &h2] {
            assert!(check_header_bytes(request, &target, size).is_ok());
            let refused = check_header_bytes(request, &target, size - 1).unwrap_err();
            assert_eq!(refused.code, "request_headers_too_large");
        }
    }

    #[test]
    fn check_request_reads_the_declared_length_once_and_refuses_conflicting_framing() {
        let request = |headers: &[(&str, &str)]| {
            let mut builder = http::Request::builder()
                .method("POST")
                .uri("/stripe/v1/charges");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(CallerBody::empty()).unwrap()
        };
        let code = |headers: &[(&str, &str)]| check_request(&request(headers)).unwrap_err().code;
        assert_eq!(check_request(&request(&[])).unwrap(), None);
        assert_eq!(
            check_request(&request(&[("content-length", "42")])).unwrap(),
            Some(42)
        );
        // Not a length: left to the body's own limits, as before.
        assert_eq!(
            check_request(&request(&[("content-length", "4x")])).unwrap(),
            None
        );
        // Transfer-Encoding alone is not a conflict.
        assert_eq!(
            check_request(&request(&[("transfer-encoding", "chunked")])).unwrap(),
            None
        );
        assert_eq!(
            check_request(&request(&[("transfer-encoding", " Chunked ")])).unwrap(),
            None
        );
        // A coding under `chunked`, or none but another, is not undone: 501.
        for codings in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "")],
        ] {
            let refused = check_request(&request(codings)).unwrap_err();
            assert_eq!(refused.code, "unsupported_transfer_coding", "{codings:?}");
            assert_eq!(refused.status, http::StatusCode::NOT_IMPLEMENTED);
        }
        assert_eq!(
            code(&[("content-length", "1"), ("transfer-encoding", "chunked")]),
            "conflicting_framing"
        );
        assert_eq!(
            code(&[("content-length", "1"), ("content-length", "1")]),
            "conflicting_framing"
        );
        // Both problems at once: the Transfer-Encoding conflict is the one named, as before.
        let both = check_request(&request(&[
            ("content-length", "1"),
            ("content-length", "2"),
            ("transfer-encoding", "chunked"),
        ]))
        .unwrap_err();
        assert!(
            both.message.contains("Transfer-Encoding"),
            "{}",
            both.message
        );
        // A framing, body or hop-by-hop header spelled with `_` for `-`: CGI-style servers
        // read it as the header itself (a chunked body Postern read as plain bytes).
        for alias in [
            "transfer_encoding",
            "content_length",
            "content_type",
            "content_encoding",
            "keep_alive",
            "proxy_connection",
            "proxy_authorization",
            "proxy_authenticate",
        ] {
            assert_eq!(
                code(&[(alias, "chunked")]),
                "header_alias_refused",
                "{alias}"
            );
        }
        let lengths = super::ALIASED_BY_UNDERSCORE
            .iter()
            .fold(0u32, |lengths, name| lengths | 1 << name.as_str().len());
        assert_eq!(lengths, super::ALIASED_LENGTHS);
        // Other names with `_` pass.
        for name in [
            "x_request_id",
            "x_api_version",
            "content__length",
            "transfer_encodings",
        ] {
            assert_eq!(
                check_request(&request(&[(name, "1")])).unwrap(),
                None,
                "{name}"
            );
        }
    }

    /// A request asking its vendor to treat it as another method is refused, by header or by
    /// query parameter; one naming its own method, or none, is not.
    #[test]
    fn a_method_override_naming_another_method_is_refused() {
        let request = |uri: &str, headers: &[(&str, &str)]| {
            let mut builder = http::Request::builder().method("GET").uri(uri);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(CallerBody::empty()).unwrap()
        };
        let refused = |uri: &str, headers: &[(&str, &str)]| {
            check_request(&request(uri, headers))
                .err()
                .map(|error| (error.code, error.message))
        };
        for header in [
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
            // As CGI, FastCGI and Rack servers read a name, `_` for `-`.
            "X_HTTP_Method_Override",
            "X-HTTP_Method-Override",
            "X_HTTP_METHOD",
            "x_method_override",
        ] {
            let (code, message) = refused("/acme/v1/x", &[(header, "DELETE")]).unwrap();
            assert_eq!(code, "method_override_refused");
            assert!(message.contains(&header.to_ascii_lowercase()), "{message}");
            assert!(!message.contains("DELETE"), "{message}");
            assert_eq!(refused("/acme/v1/x", &[(header, "get")]), None);
        }
        assert!(refused("/acme/v1/x?a=1&_method=delete", &[]).is_some());
        assert!(refused("/acme/v1/x?_HttpMethod=PATCH", &[]).is_some());
        // Names as a server reads them: percent-decoded, any case; values too.
        for query in [
            "%5Fmethod=DELETE",
            "_m%65thod=DELETE",
            "_METHOD=delete",
            "_method=%44ELETE",
            // As PHP reads a name (Symfony and Laravel take `_method` from the query too).
            "+_method=DELETE",
            ".method=DELETE",
            "_method%00=DELETE",
            "[_method]=DELETE",
            // And as Rack 2 reads one (trailing `]`, a hash under it), after a `;` too.
            "_method]]=DELETE",
            "_HttpMethod[x]=DELETE",
            "a=1;_method=DELETE",
        ] {
            assert!(
                refused(&format!("/acme/v1/x?{query}"), &[]).is_some(),
                "{query}"
            );
        }
        assert_eq!(refused("/acme/v1/x?_method=%47ET", &[]), None);
        assert_eq!(refused("/acme/v1/x?_method=GET&method=delete", &[]), None);
        assert_eq!(
            refused("/acme/v1/x?x-http-method-override=DELETE", &[]),
            None
        );
    }

    #[test]
    fn contains_finds_a_needle_only_where_it_fits() {
        assert!(contains(b"/v1/charges?key=tok_abc", b"tok_abc"));
        assert!(contains(b"tok_abc", b"tok_abc"));
        assert!(!contains(b"tok_ab", b"tok_abc"));
        assert!(!contains(b"/v1/charges", b"tok_abc"));
        // An empty needle is in everything, as memmem says.
        assert!(contains(b"", b""));
        assert!(contains(b"abc", b""));
        // Short and long haystacks, the needle anywhere, its first byte often: as memmem.
        let needle = b"aab";
        for len in [0usize, 1, 2, 3, 4, 7, 100, 511, 512, 513, 2000] {
            for at in [
                None,
                Some(0),
                Some(len / 2),
                len.checked_sub(3),
                len.checked_sub(2),
            ] {
                let mut haystack = vec![b'a'; len];
                if let Some(at) = at.filter(|&at| at + needle.len() <= len) {
                    haystack[at..at + needle.len()].copy_from_slice(needle);
                }
                assert_eq!(
                    contains(&haystack, needle),
                    memchr::memmem::find(&haystack, needle).is_some(),
                    "{len} {at:?}"
                );
            }
        }
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        super::join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(headers.get(header::ACCEPT).unwrap(), "*/*");
    }

    /// Any caller token `postern` made is found in a header's value, whoever's it is: as it
    /// stands, percent-encoded, in a Basic credential; a shorter `pst_` run is not one.
    #[test]
    fn a_header_holding_any_postern_caller_token_is_found() {
        use base64::Engine as _;
        // Any caller's: the call's own token is not given.
        let shaped = |value: &str| {
            holds_a_caller_token(
                &HeaderName::from_static("x-any"),
                &HeaderValue::from_str(value).unwrap(),
                None,
            )
        };
        let token = crate::new_token(crate::CALLER_TOKEN_PREFIX);
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
        for value in [
            token.clone(),
            format!("Bearer {token}"),
            format!("a={token}; b=1"),
            format!("session-{token}"),
            format!("x{token}_2"),
            token.replace('_', "%5F"),
            format!("Basic {encoded}"),
            format!(
                "{{\"arg\":\"{}\"}}",
                String::from_utf8(json_escaped(token.as_bytes())).unwrap()
            ),
        ] {
            assert!(shaped(&value), "{value}");
        }
        let glue = "x".repeat(crate::tokens::GLUE + 1);
        let inside_a_longer_run = format!("{glue}{token}");
        let followed_by_more = format!("{token}{glue}");
        for value in [
            &token[..token.len() - 1],
            "pst_short",
            "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            &inside_a_longer_run,
            &followed_by_more,
        ] {
            assert!(!shaped(value), "{value}");
        }
        assert!(!shaped(&format!("{} pst_", "x".repeat(60))));
    }

    #[test]
    fn a_header_carries_the_token_in_its_value_or_its_lowercased_name() {
        let token = b"pst_AbC123xyz";
        let carries = |name: &str, value: &str| {
            holds_a_caller_token(
                &HeaderName::from_bytes(name.as_bytes()).unwrap(),
                &HeaderValue::from_str(value).unwrap(),
                Some(token),
            )
        };
        assert!(carries("x-note", "see pst_AbC123xyz"));
        assert!(carries("pst_AbC123xyz", "1"));
        assert!(carries("x-pst_abc123xyz-y", "1"));
        assert!(!carries("x-note", "pst_abc123xyz"));
        // Inside a Basic credential, as password or user name, padded or not, any case.
        for credential in ["x:pst_AbC123xyz", "pst_AbC123xyz:", "me:pst_AbC123xyz!"] {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(credential);
            assert!(
                carries("authorization", &format!("Basic {encoded}")),
                "{credential}"
            );
            assert!(carries(
                "x-upstream-auth",
                &format!("basic  {}", encoded.trim_end_matches('='))
            ));
        }
        assert!(!carries("authorization", "Basic eDp5"));
        // Stray low bits in the last character, which a lenient server decodes anyway.
        {
            use base64::Engine as _;
            let mut encoded = base64::engine::general_purpose::STANDARD_NO_PAD
                .encode("x:pst_AbC123xyz!")
                .into_bytes();
            // 16 bytes: the last of 22 characters carries 2 bits and 4 that should be zero.
            let last = encoded.last_mut().unwrap();
            assert_eq!(*last, b'Q');
            *last = b'R';
            let encoded = String::from_utf8(encoded).unwrap();
            assert!(
                carries("authorization", &format!("Basic {encoded}")),
                "{encoded}"
            );
        }
        assert!(!carries("x-note", "1"));
        // A value that is base64 as a whole, standard or URL-safe, padded or not, after a
        // scheme word or not, at any offset of the encoded bytes; not text of other characters.
        {
            use base64::Engine as _;
            for held in [
                "pst_AbC123xyz",
                "{\"key\":\"pst_AbC123xyz\"}",
                "abc pst_AbC123xyz?",
            ] {
                let standard = base64::engine::general_purpose::STANDARD.encode(held);
                let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(held);
                assert!(carries("x-api-key", &standard), "{held}: {standard}");
                assert!(carries("x-api-key", &url_safe), "{held}: {url_safe}");
                assert!(carries("x-auth", &format!("Token {standard}")), "{held}");
            }
            let unrelated =
                base64::engine::general_purpose::STANDARD.encode("pst_AbC123xyQ and more");
            assert!(!carries("x-api-key", &unrelated));
            assert!(!carries("x-api-key", &format!("{unrelated}!")));
        }
        // Percent-encoded once, twice, three times; no further, and a stray `%` ends it.
        let mut layered = token.to_vec();
        for layers in 1..=4 {
            layered = percent_encoded(&layered);
            assert_eq!(
                carries("x-note", std::str::from_utf8(&layered).unwrap()),
                layers <= ESCAPE_LAYERS,
                "{layers} layers"
            );
            assert_eq!(
                url_holds_a_caller_token(&layered, Some(token)),
                layers <= ESCAPE_LAYERS
            );
        }
        // JSON string escapes (a header carrying a JSON document, as Dropbox-API-Arg does), alone
        // or with percent-encoding, either on the other, up to three layers in all.
        let json = json_escaped(token);
        let json_in_json: Vec<u8> = json
            .iter()
            .flat_map(|&byte| match byte {
                b'\\' => vec![b'\\', b'\\'],
                byte => vec![byte],
            })
            .collect();
        for (value, layers) in [
            (json.clone(), 1),
            (json_in_json.clone(), 2),
            (percent_encoded(&json), 2),
            (json_escaped(&percent_encoded(token)), 2),
            (percent_encoded(&json_in_json), 3),
            (percent_encoded(&percent_encoded(&json_in_json)), 4),
        ] {
            let value = String::from_utf8(value).unwrap();
            let document = format!("{{\"path\":\"/a\",\"key\":\"{value}\"}}");
            let read = layers <= ESCAPE_LAYERS;
            assert_eq!(carries("dropbox-api-arg", &document), read, "{document}");
            assert_eq!(
                url_holds_a_caller_token(value.as_bytes(), Some(token)),
                read,
                "{value}"
            );
        }
        // Escapes that undo to no token, and broken ones (left as written), are no token.
        assert!(!carries(
            "dropbox-api-arg",
            "{\"path\":\"/pst_AbC\\u0031\",\"x\":\"\\q\\u12\"}"
        ));
        assert!(carries("x-note", "pst_AbC123xy\\u007a\\u12"));
        // A stray `%` (not followed by two hex digits) does not stop the decoding of the rest.
        let hidden = [&b"%zz"[..], &percent_encoded(&percent_encoded(token))].concat();
        assert!(url_holds_a_caller_token(&hidden, Some(token)));
        // The call's own token base64'd (standard, URL-safe, percent-encoded), at any offset,
        // or in UTF-16, as a body is read for it.
        {
            use base64::Engine as _;
            for (at, padding) in [(0, ""), (1, "x"), (2, "xy")] {
                let framed = [padding.as_bytes(), token, b"!"].concat();
                let standard = base64::engine::general_purpose::STANDARD.encode(&framed);
                let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&framed);
                for encoded in [&standard, &url_safe] {
                    let query = format!("/v1/x?t={encoded}");
                    assert!(
                        url_holds_a_caller_token(query.as_bytes(), Some(token)),
                        "{at}"
                    );
                    let escaped = String::from_utf8(percent_encoded(encoded.as_bytes())).unwrap();
                    let query = format!("/v1/x?t={escaped}");
                    assert!(
                        url_holds_a_caller_token(query.as_bytes(), Some(token)),
                        "{at}"
                    );
                }
            }
            let other = base64::engine::general_purpose::STANDARD.encode(b"pst_not the caller's");
            assert!(!url_holds_a_caller_token(
                format!("/v1/x?t={other}{other}").as_bytes(),
                Some(token)
            ));
        }
        // A token too short to have base64 forms (a caller's mistyped one) is looked for
        // without a panic.
        assert!(!url_holds_a_caller_token(b"/v1/x", Some(b"q")));
        // An empty token (never a caller's) is looked for without a panic.
        holds_a_caller_token(
            &HeaderName::from_static("x-a"),
            &HeaderValue::from_static("b"),
            Some(b""),
        );
    }
}
