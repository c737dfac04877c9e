//! Accepting connections: plain (HTTP/1.1 and h2c) or TLS (ALPN h2/http1.1, optional client
//! certificates). HTTP/1.1 connections start on Postern's own server ([`crate::h1server`]),
//! which hands a connection to hyper at the first request it does not take; h2 (ALPN) goes to
//! hyper at once. Every connection is watched for graceful shutdown. A request head hyper's
//! parser refuses (and answers itself) is reported to [`Accept::on_malformed`], so the gateway
//! records it as a refused call.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::body::{CallerBody, GatewayBody};
use crate::context::ConnectionInfo;
use crate::deadline::{Deadline, InFlight, Waiting};
use crate::h1server::{self, Prefixed, Served};
use crate::workers::Arrivals;

/// A connection must send its first byte within this long (a bare TCP connection that never
/// speaks would otherwise hold a file descriptor forever).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener (all workers together); beyond it new ones are
/// closed at accept.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Raises this process's soft open-file limit (`RLIMIT_NOFILE`) to its hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: the common default soft limit (1024, systemd's
/// too) is far below [`MAX_CONNECTIONS`], and a process out of descriptors can accept no one,
/// the admin listener included. Returns a warning when even the hard limit is below what the
/// gateway listener's connections and their vendor connections may need.
pub fn raise_open_file_limit() -> Option<String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Some(format!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The hard limit, or where that is refused (an unlimited hard limit, on some systems), a
    // million: more than the connection cap needs.
    for target in [limit.rlim_max, limit.rlim_max.min(1 << 20)] {
        if limit.rlim_cur >= target {
            break;
        }
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = 2 * MAX_CONNECTIONS as u64 + ADMIN_MAX_CONNECTIONS as u64 + 1024;
    (limit.rlim_cur < needed).then(|| {
        format!(
            "the open-file limit is {} (the hard limit {}), below the {needed} that {MAX_CONNECTIONS} caller connections and their vendor connections may need: when it runs out, no caller and no admin request can connect; raise it (`ulimit -n {needed}`, or LimitNOFILE={needed} in a systemd unit)",
            limit.rlim_cur, limit.rlim_max
        )
    })
}

/// Connections the admin listener holds at once (operators, probes and scrapers, not callers).
pub const ADMIN_MAX_CONNECTIONS: usize = 256;
/// The admin listener's idle limit (or the gateway's `idle_timeout_ms`, if shorter).
pub const ADMIN_IDLE: Duration = Duration::from_secs(30);

/// Streams an HTTP/2 caller connection may have open at once (nginx's default): each may hold a
/// vendor connection, so one connection cannot take a thousand descriptors.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Streams an HTTP/2 connection to the admin listener may have open at once: with
/// [`ADMIN_MAX_CONNECTIONS`], and [`H2_SEND_BUFFER_BYTES`] and one
/// [`crate::body::HeldBytes::CHUNK`] a stream, what clients that take none of their public
/// answers can have buffered there is at most 160 MiB (public reads need no token).
pub const ADMIN_MAX_CONCURRENT_STREAMS: u32 = 8;

/// The most of an answer an HTTP/2 caller connection buffers per stream ahead of what its
/// socket takes (hyper's default is 400 KiB). A caller that grants huge flow-control windows
/// and then stops reading otherwise pins 400 KiB a stream, 50 MB a connection of
/// [`MAX_CONCURRENT_STREAMS`]; the stream's source (the vendor) waits instead.
pub const H2_SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Protocol settings shared by the gateway and admin listeners.
pub fn connection_builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_headers(crate::h1server::HYPER_MAX_HEADERS)
        .max_buf_size(max_header_bytes.max(crate::h1server::HYPER_MIN_BUF_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER_BYTES);
    // No keep-alive PINGs: a PING and its answer are bytes, so they would keep an idle HTTP/2
    // connection (or an intercepted tunnel) from ever reaching its idle limit; a silent peer
    // is closed by that limit (`deadline.rs`) as an HTTP/1.1 one is.
    builder
}

/// A request head hyper's HTTP/1.1 parser refused, and the answer hyper sent for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub status: StatusCode,
    /// The call's reason code.
    pub reason: &'static str,
    pub message: &'static str,
}

/// Told of each request head refused before any handler saw it, by hyper or by Postern's own
/// HTTP/1.1 server: the gateway records it as a call, and returns its answer (which
/// Postern's server sends; hyper has sent its own).
pub type OnMalformed =
    Arc<dyn Fn(&ConnectionInfo, Malformed) -> Response<GatewayBody> + Send + Sync>;

/// The answer hyper sent for the error a connection ended with, if it was a request head hyper
/// refused. This mirrors hyper 1.x's server (`proto::h1::role::Server::on_error`): `400` for a
/// method, header, target or version it could not parse, `431` for a head larger than its
/// buffer (`[gateway] max_header_bytes`), `414` for a target longer than it takes; any other
/// error (an h2 preface on an HTTP/1.1-only connection, hyper's internal error, I/O, timeouts)
/// was sent no answer and is no call. hyper names the two too-large kinds and its internal error
/// only in its message (a unit test pins each against the hyper in use).
pub fn malformed(error: &(dyn std::error::Error + 'static)) -> Option<Malformed> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
        return None;
    }
    let text = error.to_string();
    if text.starts_with("internal error") {
        return None;
    }
    Some(if !error.is_parse_too_large() {
        Malformed {
            status: StatusCode::BAD_REQUEST,
            reason: "malformed_request",
            message: "the request head is not valid HTTP/1.1 (its method, target, version or a header could not be parsed); hyper answered it and closed the connection",
        }
    } else if text == "URI too long" {
        Malformed {
            status: StatusCode::URI_TOO_LONG,
            reason: "request_uri_too_long",
            message:
                "the request target is longer than the HTTP parser takes (65,534 bytes); shorten it",
        }
    } else {
        Malformed {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: "request_headers_too_large",
            // (A test holds the number to h1server::HYPER_MAX_HEADERS.)
            message: "the request head is larger than [gateway] max_header_bytes, or has more than 100 headers; send fewer or smaller headers, or raise the limit",
        }
    })
}

/// The listener's TLS as it stands when a connection arrives (a reload may have read its files
/// again); `None` refuses the connection.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<crate::tls::ListenerTls>> + Send + Sync>;

/// The parts of a listener every accepting task shares.
#[derive(Clone)]
pub struct Accept {
    pub tls: Option<TlsSource>,
    pub builder: auto::Builder<TokioExecutor>,
    pub graceful: Arc<GracefulShutdown>,
    pub shutdown: watch::Receiver<bool>,
    /// The listener's connection slots, shared by the workers accepting on it: at the limit, a
    /// new connection closes the quietest one ([`crate::slots`]).
    pub slots: Arc<crate::slots::Slots>,
    /// `[gateway] max_connections_per_source` (a cap of 0 on the admin listener: none).
    pub per_source: Arc<crate::sources::SourceLimit>,
    /// `[gateway] max_header_bytes`: heads larger than this are hyper's to refuse.
    pub max_header_bytes: usize,
    /// `[gateway] idle_timeout_ms`: a connection with no byte either way for this long (and,
    /// with `excuse_waits`, no call waiting on its vendor) is closed.
    pub idle: Duration,
    /// Whether a call waiting on its vendor keeps the idle limit from cutting its connection:
    /// the gateway's calls, not the admin API's (which waits on no vendor).
    pub excuse_waits: bool,
    /// Told of each request head hyper refuses (`None`: not recorded, as on the admin listener).
    pub on_malformed: Option<OnMalformed>,
}

/// New connections closed at a limit, warned of at most once a second with their count: a
/// flood of connections would otherwise be a flood of log lines too.
#[derive(Default)]
struct Refusals {
    since_warned: u64,
    warned_at: Option<std::time::Instant>,
}

impl Refusals {
    /// Counts one; the count to warn of, when a warning is due.
    fn count(&mut self) -> Option<u64> {
        self.since_warned += 1;
        if self
            .warned_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.warned_at = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.since_warned))
    }
}

/// Accepts until `shutdown` turns true. Each connection runs in its own task, registered with
/// `watcher` so shutdown can wait for in-flight calls.
pub async fn accept_loop<H, F>(mut arrivals: Arrivals, accept: Accept, handler: H)
where
    H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let Accept {
        tls,
        builder,
        graceful,
        mut shutdown,
        slots,
        per_source,
        max_header_bytes,
        idle,
        excuse_waits,
        on_malformed,
    } = accept;
    // Shared by the loop's connections: hyper's settings (a few hundred bytes) are needed only
    // by a connection hyper serves, and copied for it then.
    let builder = Arc::new(Hyper { builder, idle });
    // This loop's connections watch a shutdown channel of its own (on a worker, one that only
    // that worker's thread touches): an idle keep-alive connection registers with the channel's
    // waiters before each request and leaves them when the request comes, and the gateway's
    // channel is shared by every worker thread. The loop passes the gateway's shutdown on when
    // it stops (and nothing if the gateway's sender was dropped, as `stopping` expects).
    let (local_stop, local_shutdown) = watch::channel(*shutdown.borrow());
    let mut stopping = false;
    // New connections closed at the connection limit since the last warning, and when that was.
    let mut at_limit = Refusals::default();
    // And those closed because their source held `max_connections_per_source`.
    let mut at_source_cap = Refusals::default();
    loop {
        let accepted = match stopping {
            // Connections another worker handed over before this one stopped accepting were
            // accepted before the shutdown: served as the rest (they see it at once).
            true => match arrivals.handed() {
                Some(handed) => Ok(handed),
                None => break,
            },
            false => tokio::select! {
                accepted = arrivals.accept() => accepted,
                _ = shutdown.changed() => {
                    arrivals.close();
                    stopping = true;
                    continue;
                }
            },
        };
        // Counted as this worker's connection (`live`) while its facts are held: by its task,
        // and by a CONNECT tunnel opened on it.
        let (stream, peer, live) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = match per_source.admit(peer.ip()) {
            Ok(hold) => hold,
            Err(crate::sources::AtCap) => {
                if let Some(closed) = at_source_cap.count() {
                    tracing::warn!(%peer, closed, "a client address holds [gateway] max_connections_per_source connections; closing its new ones");
                }
                continue;
            }
        };
        // The connection's calls (hyper's or Postern's own HTTP/1.1 server's, counted through
        // `ConnectionInfo::in_flight`) excuse its idle limit while any waits on its vendor, and
        // keep it from being closed for room.
        let in_flight = InFlight::default();
        let Some((slot, presence)) = slots.take(&in_flight).await else {
            if let Some(closed) = at_limit.count() {
                tracing::warn!(%peer, limit = slots.limit(), closed, "too many connections, none of them quiet; closing new ones");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = Deadline::new(stream, FIRST_BYTE_TIMEOUT, idle).present(presence);
        let stream = match excuse_waits {
            true => stream.excusing(in_flight.clone()),
            false => stream,
        };
        // The TLS of the moment, taken here: the connection is served under it throughout.
        let tls = match &tls {
            Some(source) => match source() {
                Some(current) => Some(current),
                None => {
                    // Not seen: a listener started with TLS keeps it across reloads.
                    tracing::error!(%peer, "the TLS listener has no TLS config; closing the connection");
                    continue;
                }
            },
            None => None,
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let shutdown = local_shutdown.clone();
        let connection = Connection {
            builder,
            watcher,
            shutdown,
            max_header_bytes,
            on_malformed: on_malformed.clone(),
        };
        // Two task shapes: a task is as large as its largest state, and a plain connection
        // should not carry room for a TLS one's.
        match tls {
            None => {
                tokio::spawn(async move {
                    let info = ConnectionInfo::new(peer, None, false, in_flight)
                        .holding(slot, live, source);
                    let info = Arc::new(info);
                    connection.serve_h1_first(stream, info, handler).await;
                });
            }
            Some(current) => {
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(current.server.clone());
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificate = crate::tls::ClientCertificate::presented(
                        stream.get_ref().1,
                        current.clients.as_ref(),
                    )
                    .map(Arc::new);
                    drop(current);
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let info = ConnectionInfo::new(peer, certificate, true, in_flight);
                    let info = Arc::new(info.holding(slot, live, source));
                    match h2 {
                        true => {
                            // The client chose h2: it speaks nothing else here.
                            let stream = H2Only::new(stream);
                            let Connection {
                                builder,
                                watcher,
                                shutdown,
                                ..
                            } = connection;
                            // hyper's h2 server resets a malformed stream itself (no
                            // connection error): nothing to record here. Boxed, as at the
                            // HTTP/1.1 hand-over: a TLS connection's task has no room for it.
                            Box::pin(serve(
                                TokioIo::new(stream),
                                info,
                                builder.builder.clone(),
                                (watcher, shutdown, builder.idle),
                                None,
                                handler,
                            ))
                            .await
                        }
                        false => connection.serve_h1_first(stream, info, handler).await,
                    }
                });
            }
        }
    }
    // A value sent before the sender is dropped is still seen: `stopping` ends.
    if *shutdown.borrow() {
        let _ = local_stop.send(true);
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which hyper's server looks for.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `read`, what a connection sends after the first `matched` bytes of the h2 preface,
/// goes on with the preface (as far as either goes).
fn continues_h2_preface(matched: usize, read: &[u8]) -> bool {
    let rest = &H2_PREFACE[matched.min(H2_PREFACE.len())..];
    let shared = read.len().min(rest.len());
    read[..shared] == rest[..shared]
}

/// Whether `read`, the start of what a connection sends next, is or may become the h2 preface.
fn may_begin_h2_preface(read: &[u8]) -> bool {
    !read.is_empty() && continues_h2_preface(0, read)
}

/// A TLS connection whose client chose `h2` by ALPN, read through a check of its first bytes:
/// anything but the h2 preface ends it. hyper's server would otherwise serve it HTTP/1.1, which
/// the client agreed not to speak and which would bypass Postern's own HTTP/1.1 server (and
/// the records it makes of malformed heads).
struct H2Only<S> {
    inner: S,
    /// How many bytes of the preface have been read.
    matched: usize,
}

impl<S> H2Only<S> {
    fn new(inner: S) -> Self {
        H2Only { inner, matched: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Only<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.matched < H2_PREFACE.len() {
            let read = &buf.filled()[before..];
            if !continues_h2_preface(this.matched, read) {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the client chose h2 by ALPN but did not send the HTTP/2 preface",
                )));
            }
            this.matched = (this.matched + read.len()).min(H2_PREFACE.len());
        }
        std::task::Poll::Ready(Ok(()))
    }
}

forward_async_write!(H2Only<S>, inner);

/// What a connection needs once hyper serves it: hyper's settings, and the idle limit its
/// requests must keep to ([`serve`]). Shared by a listener's connections.
struct Hyper {
    builder: auto::Builder<TokioExecutor>,
    idle: Duration,
}

/// What a connection task needs besides its stream and handler.
struct Connection {
    builder: Arc<Hyper>,
    /// Held for the connection's life, so graceful shutdown waits for it.
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    max_header_bytes: usize,
    on_malformed: Option<OnMalformed>,
}

impl Connection {
    /// Postern's own HTTP/1.1 server first; hyper from the first request it leaves.
    async fn serve_h1_first<S, H, F>(self, mut stream: S, info: Arc<ConnectionInfo>, handler: H)
    where
        S: AsyncRead + AsyncWrite + h1server::ReadReady + Unpin + Send + 'static,
        H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<GatewayBody>> + Send + 'static,
    {
        let Connection {
            builder,
            watcher,
            mut shutdown,
            max_header_bytes,
            on_malformed,
        } = self;
        let served = h1server::serve(
            &mut stream,
            &info,
            &handler,
            &mut shutdown,
            max_header_bytes,
            on_malformed.as_ref(),
        )
        .await;
        if let Served::Handoff { read, served } = served {
            // After an HTTP/1.1 exchange, the connection stays HTTP/1.1: an h2 preface now is
            // no request (hyper's server would switch to h2 on it whatever it is told: it
            // looks for the preface on every connection it serves with upgrades). What is
            // handed over is at least a request line that HTTP/1.1 parsing refused, so a
            // preface would show.
            if served && may_begin_h2_preface(&read) {
                tracing::debug!(peer = %info.peer, "an HTTP/2 preface after an HTTP/1.1 exchange: closing");
                return;
            }
            let idle = builder.idle;
            let builder = builder.builder.clone();
            let io = TokioIo::new(Prefixed::new(read, stream));
            // Boxed, made only when a request is left to hyper: hyper's connection state is
            // kilobytes, and inline it would be part of every connection's task, idle or not.
            let watch = (watcher, shutdown, idle);
            Box::pin(serve(io, info, builder, watch, on_malformed, handler)).await;
        }
    }
}

/// An answer's body, counted among the connection's waits on vendors while it waits for the
/// vendor's next piece (a poll that is pending), not while hyper does not poll it (an HTTP/2
/// caller that grants no window waits on nobody but itself).
struct Answer {
    body: AnswerBody,
    waiting: Option<Waiting>,
    in_flight: InFlight,
    _answering: crate::deadline::Answering,
}

enum AnswerBody {
    /// Bytes in memory (an error, a refusal): nothing of a vendor's is held.
    Full(GatewayBody),
    /// A vendor's answer, which the connection's [`Answers`] cut if the caller stops taking it.
    Watched(Arc<Watched>),
}

/// A vendor's answer on its way to the caller, as its connection's [`Answers`] see it.
struct Watched {
    /// `None` once cut ([`Answers::cut_stalled`]).
    body: std::sync::Mutex<Option<GatewayBody>>,
    /// Pieces handed to the protocol so far.
    moves: AtomicU64,
    /// Whether its last poll waits on the vendor (the vendor's own limits cover that wait).
    waiting: AtomicBool,
}

impl Watched {
    fn body(&self) -> std::sync::MutexGuard<'_, Option<GatewayBody>> {
        // A poll that panicked leaves the body as it was: still the call's.
        self.body
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The vendors' answers a connection served by hyper is streaming. On HTTP/2 a caller can stop
/// taking one answer (it grants its stream no window) while its other streams move: the
/// connection then never goes idle ([`InFlight::request_idle`]), and the stalled call would hold
/// its vendor connection and its places under concurrency limits for as long as the caller
/// stays. Checked every idle period, an answer that neither moved nor waited on its vendor
/// for a whole period is cut: the call is recorded `incomplete` (`caller_stalled`) and let go,
/// and its stream is reset when the caller next asks for it.
#[derive(Clone, Default)]
struct Answers(Arc<std::sync::Mutex<Vec<Seen>>>);

/// An answer, and its moves at the last check (`u64::MAX`: not checked yet).
type Seen = (std::sync::Weak<Watched>, u64);

impl Answers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `body` to answer with: watched if it streams a vendor's answer, or holds a share of a
    /// budget until it is taken ([`GatewayBody::Held`]: cut, it gives its share back).
    fn watch(&self, body: GatewayBody) -> AnswerBody {
        if matches!(body, GatewayBody::Full(_)) {
            return AnswerBody::Full(body);
        }
        let watched = Arc::new(Watched {
            body: std::sync::Mutex::new(Some(body)),
            moves: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
        });
        let mut answers = self.lock();
        if answers.len() == answers.capacity() {
            // Forget the answers that ended before growing: a busy connection would otherwise
            // keep every answer of a whole idle period until the next check.
            answers.retain(|(answer, _)| answer.strong_count() > 0);
        }
        // Not yet seen by a check: the first one only notes its moves.
        answers.push((Arc::downgrade(&watched), u64::MAX));
        drop(answers);
        AnswerBody::Watched(watched)
    }

    /// Cuts the answers that have not moved, nor waited on their vendor, since the last check;
    /// forgets the ones that ended.
    fn cut_stalled(&self) {
        let mut stalled = Vec::new();
        let mut answers = self.lock();
        answers.retain_mut(|(answer, seen)| {
            let Some(answer) = answer.upgrade() else {
                return false;
            };
            let moves = answer.moves.load(Ordering::Relaxed);
            if moves == *seen && !answer.waiting.load(Ordering::Relaxed) {
                stalled.push((answer, moves));
                return false;
            }
            *seen = moves;
            true
        });
        if answers.capacity() > 4 * answers.len().max(4) {
            answers.shrink_to_fit();
        }
        drop(answers);
        for (answer, seen) in stalled {
            // Checked again under the body's own lock, which every poll holds: a poll since the
            // check above either moved it or left hyper waiting on the vendor's waker, and
            // neither may be cut.
            let body = {
                let mut body = answer.body();
                if answer.moves.load(Ordering::Relaxed) != seen
                    || answer.waiting.load(Ordering::Relaxed)
                {
                    continue;
                }
                body.take()
            };
            // Ended outside the lock (ending records the call).
            if let Some(body) = body {
                tracing::debug!("cutting an answer its caller took none of for the idle limit");
                body.abandon("caller_stalled");
            }
        }
    }

    /// Cuts stalled answers every `idle` ([`Answers::cut_stalled`]); never ends.
    async fn cut_stalled_every(&self, idle: Duration) -> Infallible {
        loop {
            tokio::time::sleep(idle).await;
            self.cut_stalled();
        }
    }
}

impl http_body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let polled = match &mut this.body {
            AnswerBody::Full(body) => std::pin::Pin::new(body).poll_frame(cx),
            AnswerBody::Watched(watched) => {
                let mut body = watched.body();
                let Some(body) = body.as_mut() else {
                    // Cut while the caller took none of it: its stream is reset.
                    return Poll::Ready(Some(Err(crate::body::BodyError::CallerStalled)));
                };
                let polled = std::pin::Pin::new(body).poll_frame(cx);
                watched
                    .waiting
                    .store(polled.is_pending(), Ordering::Relaxed);
                if polled.is_ready() {
                    watched.moves.fetch_add(1, Ordering::Relaxed);
                }
                polled
            }
        };
        match polled {
            Poll::Pending if this.waiting.is_none() => {
                this.waiting = Some(this.in_flight.wait());
            }
            Poll::Pending => {}
            Poll::Ready(_) => {
                this.waiting = None;
                // A piece handed on: the call moves ([`InFlight::request_idle`]).
                this.in_flight.progressed();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            AnswerBody::Full(body) => body.is_end_stream(),
            AnswerBody::Watched(watched) => watched
                .body()
                .as_ref()
                .is_some_and(|body| body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            AnswerBody::Full(body) => body.size_hint(),
            AnswerBody::Watched(watched) => watched
                .body()
                .as_ref()
                .map_or_else(http_body::SizeHint::default, |body| body.size_hint()),
        }
    }
}

/// A hyper service answering every request of one connection with `handler`, each call counted
/// among the connection's waits on vendors ([`ConnectionInfo::in_flight`]) until its answer's
/// head is ready, then while its body waits ([`Answer`]).
fn service<H, F>(
    info: Arc<ConnectionInfo>,
    answers: Answers,
    handler: H,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Answer>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static
where
    H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    hyper::service::service_fn(move |request: Request<Incoming>| {
        // Boxed: hyper keeps a slot the size of the service's future in every connection,
        // idle or not, and moves the future per call.
        let in_flight = info.in_flight().clone();
        in_flight.progressed();
        // In hand until hyper drops the answer's body, after its end.
        let answering = in_flight.answering();
        let waiting = in_flight.wait();
        let response = Box::pin(handler(info.clone(), request.map(CallerBody::Hyper)));
        let answers = answers.clone();
        async move {
            let response = response.await;
            // The answer's head is ready: the call moved, even if its body is empty.
            in_flight.progressed();
            drop(waiting);
            Ok::<_, Infallible>(response.map(|body| Answer {
                body: answers.watch(body),
                waiting: None,
                in_flight,
                _answering: answering,
            }))
        }
    })
}

/// Serves a connection with hyper ([`serve_hyper`]), holding `watcher` until it ends so the
/// listener's graceful shutdown waits for it.
async fn serve<I, H, F>(
    io: I,
    info: Arc<ConnectionInfo>,
    builder: auto::Builder<TokioExecutor>,
    (watcher, shutdown, idle): (Watcher, watch::Receiver<bool>, Duration),
    on_malformed: Option<OnMalformed>,
    handler: H,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let _watcher = watcher;
    serve_hyper(io, info, builder, (shutdown, idle), on_malformed, handler).await;
}

/// A connection hyper served ended with `error`: a refused request head is reported.
fn ended_with(
    info: &ConnectionInfo,
    error: &(dyn std::error::Error + Send + Sync + 'static),
    on_malformed: Option<&OnMalformed>,
) {
    tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    if let (Some(refused), Some(on_malformed)) = (malformed(error), on_malformed) {
        // hyper has answered already.
        drop(on_malformed(info, refused));
    }
}

/// Serves a connection, or HTTP inside an intercepted tunnel (already TLS-terminated), with
/// hyper until it ends; until its calls
/// have not moved for the idle limit ([`InFlight::request_idle`]: bytes that move no call —
/// PINGs, a head trickled in frames, PINGs beside an answer the caller grants no window for —
/// do not hold it open); or, gracefully (the answers in hand go out first, h2 with a GOAWAY),
/// once the gateway shuts down or the connection is told to close
/// ([`ConnectionInfo::close`]: a tunnel a reload no longer allows, a connection that refused a
/// request without ever identifying a caller).
pub async fn serve_hyper<I, H, F>(
    io: I,
    info: Arc<ConnectionInfo>,
    builder: auto::Builder<TokioExecutor>,
    (mut shutdown, idle): (watch::Receiver<bool>, Duration),
    on_malformed: Option<OnMalformed>,
    handler: H,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let answers = Answers::default();
    let service = service(info.clone(), answers.clone(), handler);
    // With upgrades: a CONNECT request hands the connection over to the forward proxy, a
    // WebSocket handshake to its session.
    let connection = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {}
                () = info.closing() => {}
            }
        } => {
            connection.as_mut().graceful_shutdown();
            // Draining is bounded by the shutdown grace; a stalled answer is still cut, and a
            // connection told to close whose calls stop moving is closed as before.
            tokio::select! {
                result = connection => result,
                never = answers.cut_stalled_every(idle) => match never {},
                () = info.in_flight().request_idle(idle) => return,
            }
        }
        never = answers.cut_stalled_every(idle) => match never {},
        () = info.in_flight().request_idle(idle) => {
            tracing::debug!(peer = %info.peer, tunnel = info.tunnel.is_some(), "closing a connection that began no request within the idle limit");
            return;
        }
    };
    if let Err(error) = result {
        ended_with(&info, &*error, on_malformed.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/2 caller that grants the largest windows and then stops reading has at most
    /// [`H2_SEND_BUFFER_BYTES`] (and one chunk) of each answer taken from its source.
    #[tokio::test]
    async fn an_http2_caller_that_stops_reading_pins_little_of_each_answer() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        const CHUNK: usize = 16 * 1024;
        const STREAMS: usize = 32;
        /// A client stream whose reads stop once `paused` is set (and are never woken).
        struct Pausable<S> {
            inner: S,
            paused: Arc<AtomicBool>,
        }
        impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Pausable<S> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if self.paused.load(SeqCst) {
                    return std::task::Poll::Pending;
                }
                std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
            }
        }
        forward_async_write!(Pausable<S>, inner);

        let (client, server) = tokio::io::duplex(CHUNK);
        let polled = Arc::new(AtomicUsize::new(0));
        let counted = polled.clone();
        let service = hyper::service::service_fn(move |_: Request<Incoming>| {
            let counted = counted.clone();
            async move {
                // An answer without end, counting what is taken of it.
                let chunks = futures_util::stream::repeat_with(move || {
                    counted.fetch_add(CHUNK, SeqCst);
                    Ok::<_, Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
                        &[b'x'; CHUNK],
                    )))
                });
                Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(chunks)))
            }
        });
        let serving = tokio::spawn(async move {
            let builder = connection_builder(8192);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(server), service)
                .await;
        });
        let paused = Arc::new(AtomicBool::new(false));
        let io = Pausable {
            inner: client,
            paused: paused.clone(),
        };
        let largest = (1u32 << 31) - 1;
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(largest)
                .initial_connection_window_size(largest)
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(io))
                .await
                .unwrap();
        // Nothing the gateway sends is read from here on: its SETTINGS need no answer for it
        // to take the windows granted.
        paused.store(true, SeqCst);
        let driving = tokio::spawn(connection);
        let mut waiting = Vec::new();
        for _ in 0..STREAMS {
            let request = Request::get("http://postern/big")
                .body(http_body_util::Empty::new())
                .unwrap();
            sender.ready().await.unwrap();
            waiting.push(tokio::spawn(sender.send_request(request)));
        }
        // Until the taking stops (bounded: 5 s).
        let mut last = usize::MAX;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = polled.load(SeqCst);
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
        let taken = polled.load(SeqCst);
        let bound = STREAMS * (H2_SEND_BUFFER_BYTES + 2 * CHUNK) + CHUNK;
        assert!(
            taken > 0 && taken <= bound,
            "{taken} bytes taken of {STREAMS} answers nobody reads (at most {bound})"
        );
        serving.abort();
        driving.abort();
        for request in waiting {
            request.abort();
        }
    }

    /// Serves `request` with hyper's HTTP/1.1 server (its head buffer `max_buf_size`, at most
    /// [`h1server::HYPER_MAX_HEADERS`] headers, as the listener sets it) and returns what
    /// `malformed` makes of the error it ends with, and the status line hyper sent.
    async fn refused(request: &[u8], max_buf_size: usize) -> (Option<Malformed>, String) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let service = hyper::service::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        });
        let serving = tokio::spawn(async move {
            hyper::server::conn::http1::Builder::new()
                .max_headers(h1server::HYPER_MAX_HEADERS)
                .max_buf_size(max_buf_size)
                .serve_connection(TokioIo::new(server), service)
                .await
        });
        let (mut read, mut write) = tokio::io::split(client);
        let _ = write.write_all(request).await;
        let mut answer = Vec::new();
        let _ = read.read_to_end(&mut answer).await;
        let error = serving.await.unwrap().expect_err("hyper refuses the head");
        let status_line = String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        (malformed(&error), status_line)
    }

    /// Each kind of head hyper refuses maps to the answer hyper really sent; an h2 preface on an
    /// HTTP/1.1-only connection, which hyper answers with nothing, is no call.
    #[tokio::test]
    async fn a_refused_head_maps_to_the_answer_hyper_sent() {
        let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
        let many_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            (0..120)
                .map(|i| format!("x-{i}: y\r\n"))
                .collect::<String>()
        );
        let cases: [(&[u8], usize, u16, &str); 6] = [
            (b"GARBAGE\r\n\r\n", 16 * 1024, 400, "malformed_request"),
            (
                b"GET / HTTP/1.1\r\nx-evil: a\rb\r\n\r\n",
                16 * 1024,
                400,
                "malformed_request",
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
                16 * 1024,
                400,
                "malformed_request",
            ),
            (
                many_headers.as_bytes(),
                16 * 1024,
                431,
                "request_headers_too_large",
            ),
            (
                long_target.as_bytes(),
                16 * 1024,
                431,
                "request_headers_too_large",
            ),
            (
                long_target.as_bytes(),
                128 * 1024,
                414,
                "request_uri_too_long",
            ),
        ];
        for (request, max_buf_size, status, reason) in cases {
            let (refusal, status_line) = refused(request, max_buf_size).await;
            let shown = String::from_utf8_lossy(&request[..request.len().min(40)]).to_string();
            if status == 431 {
                let message = refusal.unwrap().message;
                let limit = format!("more than {} headers", h1server::HYPER_MAX_HEADERS);
                assert!(message.contains(&limit), "{message}");
            }
            let got = refusal.map(|r| (r.status.as_u16(), r.reason));
            assert_eq!(got, Some((status, reason)), "{shown:?}");
            assert!(
                status_line.starts_with(&format!("HTTP/1.1 {status} ")),
                "{shown:?}: hyper sent {status_line:?}"
            );
        }
        let (refusal, status_line) = refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 16 * 1024).await;
        assert_eq!(refusal, None);
        assert_eq!(status_line, "");
    }
}
