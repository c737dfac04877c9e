//! Postern's own HTTP/1.1 server for the common call, with hyper behind it for the rest.
//!
//! A caller's connection starts here. Each request head is parsed (httparse) and served here
//! only when it is plainly an ordinary HTTP/1.1 request: origin-form target, no
//! `Transfer-Encoding`, at most one all-digit `Content-Length` no larger than
//! [`MAX_READ_BODY_BYTES`], no `Expect`, `Upgrade`, `TE` or `HTTP2-Settings`, and a `Connection`
//! header (if any) of exactly `keep-alive` or `close`. Anything else — a malformed or oversized
//! head, HTTP/1.0, chunked or large uploads, CONNECT, absolute-form (forward proxy) targets,
//! upgrades, `100-continue`, the h2c preface — is left, with every byte read so far, to hyper,
//! which then serves the connection to its end. So each unusual or hostile input meets hyper's
//! strict and well-tested parser, and Postern's server accepts a subset of what hyper accepts,
//! with the same meaning. One exception: a head with both `Content-Length` and
//! `Transfer-Encoding` (which hyper would frame by the latter) is refused here, whatever handler
//! serves the listener: `400 conflicting_framing`, no body read, and the connection closed after
//! the answer, as where the next request starts cannot be known. The listener's refusal hook
//! (the gateway's records it as a call) makes the answer. The close lingers, as nginx's does:
//! what the caller still sends is read and discarded, for at most 2 s and 1 MiB and never past
//! shutdown (`linger`), so a caller still sending its body reads the answer rather than a TCP
//! reset.
//!
//! Why: hyper's server costs about 0.8 µs of CPU per call here in parsing, dispatch, a boxed
//! service future per request, timers and its response encoder (docs/BENCHMARKS.md §1), on a
//! path that is otherwise a few syscalls.
//!
//! What it does like hyper: keep-alive by default, `Connection: close` honoured both ways, a
//! `date` header added when the response has none, `content-length` from an exact body size or
//! else chunked framing, no body for `HEAD`, 1xx, 204 and 304, pipelined requests answered in
//! order, a head that does not complete within [`HEAD_TIMEOUT`] of its first byte, or a body
//! read here within as long of the head's end, closes the connection, and
//! graceful shutdown: the request in flight is answered (with `connection: close`), a connection
//! waiting for (or in the middle of sending) its next request is closed, and while a call runs
//! or its answer pauses the connection is still read, so a caller that hangs up ends its call. What it does differently:
//! - a request body is read whole before the call starts (it is at most
//!   [`MAX_READ_BODY_BYTES`]; bigger ones stream through hyper);
//! - an answer of known length is written in full before its body is polled for its end, so
//!   the call is recorded after the caller has its answer (a chunked answer's last chunk is
//!   written once the body has ended);
//! - a connection waits for its caller's next request holding no answer buffer, and over plain
//!   TCP no read buffer either (the socket's readiness is awaited, [`ReadReady`]); over TLS it
//!   waits reading;
//! - an idle keep-alive connection lives until the connection's idle limit
//!   (`[gateway] idle_timeout_ms`, 300 s by default, as docs/CONFIG.md states); hyper's
//!   head timer also ran between requests and closed it after 30 s;
//! - at shutdown, a connection whose first request has not arrived is closed at once;
//! - a refusal's close lingers (above); hyper closes at once after the heads it refuses
//!   (400/431/414), with what the caller still sends unread, so a caller still sending may meet
//!   a reset there. A head or body that does not arrive in time is closed unanswered, without
//!   lingering: there is no answer to lose, and the caller is a slow one.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::body::{CallerBody, GatewayBody};
use crate::context::ConnectionInfo;
use crate::listener::{Malformed, OnMalformed};

/// The largest request body read whole here; bigger ones go to hyper, which streams them.
pub const MAX_READ_BODY_BYTES: u64 = 64 * 1024;

/// What the bodies being waited for whole (read before their calls start, so before their
/// callers are known) may hold together, all connections of the process: past it, a request's
/// body streams through hyper instead, as a larger one does. Without it, connections that each
/// send a 64 KiB body but its last byte would hold 64 KiB apiece, unauthenticated, for
/// [`HEAD_TIMEOUT`].
pub const WHOLE_BODY_BUDGET: usize = 32 << 20;

/// The process's [`WholeBodies`].
static WHOLE_BODIES: WholeBodies = WholeBodies::new(WHOLE_BODY_BUDGET);

/// Bytes set aside for bodies being waited for whole, up to a limit.
struct WholeBodies {
    limit: usize,
    held: std::sync::atomic::AtomicUsize,
}

/// One body's share of [`WholeBodies`], given back when dropped (once its body is read, or its
/// wait has ended).
struct WholeBodyShare {
    bodies: &'static WholeBodies,
    bytes: usize,
}

impl WholeBodies {
    const fn new(limit: usize) -> Self {
        WholeBodies {
            limit,
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A share of `bytes`, unless the others hold too much already.
    fn take(&'static self, bytes: usize) -> Option<WholeBodyShare> {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + bytes <= self.limit).then_some(held + bytes)
            })
            .ok()
            .map(|_| WholeBodyShare {
                bodies: self,
                bytes,
            })
    }
}

impl Drop for WholeBodyShare {
    fn drop(&mut self) {
        self.bodies
            .held
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}
/// A request head must be complete within this long of its first byte (the gateway's
/// `header_read_timeout` for hyper).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// The most headers hyper's server takes (set on it: [`crate::listener::connection_builder`];
/// it answers 431 past them): a head with more than [`MAX_HEADERS`] is parsed again with room
/// for these, only to find both framings.
pub(crate) const HYPER_MAX_HEADERS: usize = 100;
/// The smallest read buffer hyper's HTTP/1 server takes (`max_buf_size` panics below it): with
/// a smaller `[gateway] max_header_bytes` hyper still reads heads up to this size, so a head is
/// handed over unseen only past it ([`next_request`]).
pub(crate) const HYPER_MIN_BUF_BYTES: usize = 8192;
/// Room for one read, as the buffer grows: a typical API call's head fits in one (a body is read
/// into room made for its length). An idle keep-alive connection over TLS keeps this much; over
/// plain TCP none ([`idle_read`]).
const READ_SPACE: usize = 2 * 1024;
/// The longest request target hyper's server takes (its `MAX_URI_LEN`; longer: `414`).
const HYPER_MAX_URI_BYTES: usize = (u16::MAX - 1) as usize;
/// How long closing a connection may wait to send its last bytes (TLS `close_notify`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a refused request's connection is read and discarded after its answer, at most
/// ([`linger`]; nginx's `lingering_time`, 30 s there): long enough for a caller still sending
/// its body to finish, or to see the answer and stop, short enough that a caller cannot hold
/// the connection with it.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much [`linger`] discards at most: a caller sending faster than that within
/// [`LINGER_TIME`] is cut off sooner.
const LINGER_BYTES: usize = 1 << 20;
/// Response data up to this size is copied behind the head and sent with it in one write.
const COALESCE_BYTES: usize = 16 * 1024;

/// How a connection left this server.
pub enum Served {
    /// Closed (by either side, or at shutdown, or after an error).
    Closed,
    /// A request this server does not take: hyper gets the connection with `read`, the bytes
    /// read from it and not consumed. `served`: requests were answered here before it (so the
    /// connection is HTTP/1.1 for good, and no h2 preface may follow).
    Handoff { read: BytesMut, served: bool },
}

/// A stream that can tell when a read may find bytes without being lent a buffer to read into,
/// so a connection waiting for its caller's next request holds no read buffer (plain TCP: 2 KiB
/// less per idle keep-alive connection). A stream that cannot tell says so and is read into a
/// buffer as it waits: TLS, whose decrypted bytes may already wait inside it, and test pipes.
pub trait ReadReady {
    /// Whether this stream tells readiness (else [`ReadReady::poll_read_ready`] is not asked).
    const TELLS: bool;
    /// `Ready` once a read may find bytes, the end of the stream or an error (or early: a read
    /// may still find nothing).
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    const TELLS: bool = true;
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(&self, cx)
    }
}

impl<S> ReadReady for tokio_rustls::server::TlsStream<S> {
    const TELLS: bool = false;
    fn poll_read_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves requests on `io` until the connection closes or a request needs hyper. A head this
/// server refuses itself (both framings) is answered by `on_refused` (which the gateway records
/// as a call), or without it with a bare JSON error.
pub async fn serve<S, H, F>(
    io: &mut S,
    info: &Arc<ConnectionInfo>,
    handler: &H,
    shutdown: &mut watch::Receiver<bool>,
    max_header_bytes: usize,
    on_refused: Option<&OnMalformed>,
) -> Served
where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin,
    H: Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> F,
    F: Future<Output = Response<GatewayBody>>,
{
    // Empty until the caller speaks (see `idle_read`), then grown as the head needs.
    let mut buf = BytesMut::new();
    // Given back (to this thread's spares) while the connection waits for its caller.
    let mut out = Vec::new();
    let mut served = false;
    // The call's future (several KiB) lives in a box, made for a request and reused for the
    // next one when that is already here (pipelined, or sent at once). A connection that waits
    // for its caller holds none of it (see `arrived`).
    let mut slot: Option<Pin<Box<F>>> = None;
    'connection: loop {
        // Whether the caller has been found silent since its last answer.
        let mut silent = false;
        if slot.is_some() && buf.is_empty() {
            match arrived(io, &mut buf).await {
                Some(true) => {}
                Some(false) => {
                    silent = true;
                    slot = None;
                    Spares::give(std::mem::take(&mut out));
                }
                None => break 'connection,
            }
        }
        // The request (and the `Next` it came in) live only within this statement: a binding
        // alive across an `.await` takes room in every connection's task, however short its use.
        let next = match next_request(
            io,
            &mut buf,
            shutdown,
            max_header_bytes,
            silent,
            &WHOLE_BODIES,
        )
        .await
        {
            Next::Request(request, close) => {
                served = true;
                let head_only = request.method() == Method::HEAD;
                let future = handler(info.clone(), request);
                match slot.as_mut() {
                    Some(boxed) => boxed.set(future),
                    None => slot = Some(Box::pin(future)),
                }
                Some((close, head_only))
            }
            Next::Closed => break 'connection,
            Next::Handoff => return Served::Handoff { read: buf, served },
            Next::Conflicting => None,
        };
        let Some((close, head_only)) = next else {
            let refusal = Malformed {
                status: StatusCode::BAD_REQUEST,
                reason: "conflicting_framing",
                message: "the request has both Content-Length and Transfer-Encoding; send only one",
            };
            let answer = match on_refused {
                Some(refuse) => refuse(info, refusal),
                None => {
                    crate::error::CallError::new(refusal.status, refusal.reason, refusal.message)
                        .to_response(&crate::context::RequestId::new())
                        .map(GatewayBody::full)
                }
            };
            let in_flight = info.in_flight();
            if respond(io, &mut out, &mut buf, answer, false, true, in_flight)
                .await
                .is_ok()
            {
                // Boxed: a path this rare must not grow the future every connection holds.
                Box::pin(linger(io, &mut buf, shutdown)).await;
                // It shut the connection down itself (or gave up trying): not again below.
                return Served::Closed;
            }
            break 'connection;
        };
        let mut call = slot
            .as_mut()
            .expect("the call's box was just filled")
            .as_mut();
        // While the call runs and nothing else has arrived, the connection is still read (as
        // hyper does): a caller that hangs up (EOF, reset) ends the call. Once a pipelining
        // caller's next bytes are in `buf`, reading stops until they are served, so an EOF
        // behind them waits until their answers are written ([`watch_caller`]). The call
        // waits on its vendor meanwhile, which the connection's idle limit excuses. The request
        // is in hand until its answer is written (never closed for room meanwhile).
        let _answering = info.in_flight().answering();
        let waiting = info.in_flight().wait();
        let response = loop {
            tokio::select! {
                biased;
                response = &mut call => break response,
                more = watch_caller(io, &mut buf), if buf.is_empty() => if !more {
                    break 'connection;
                },
            }
        };
        drop(waiting);
        let close = close || *shutdown.borrow();
        if out.capacity() == 0 {
            out = Spares::take();
        }
        // `Ending::KeepAlive`: neither side asked to close.
        let in_flight = info.in_flight();
        match respond(
            io, &mut out, &mut buf, response, head_only, close, in_flight,
        )
        .await
        {
            Ok(Ending::KeepAlive) => {}
            // The answer itself closes the connection (a refusal on a connection that never
            // identified a caller): the close lingers, as after a refused head, so a caller
            // that sent more (a pipelined request, a body) reads the answer, not a reset.
            Ok(Ending::Linger) => {
                Box::pin(linger(io, &mut buf, shutdown)).await;
                return Served::Closed;
            }
            _ => break 'connection,
        }
        // A connection keeps small buffers, whatever its last call needed.
        out.clear();
        out.shrink_to(4096);
        if buf.is_empty() && buf.capacity() > 2 * READ_SPACE {
            buf = BytesMut::with_capacity(READ_SPACE);
        }
    }
    // A call cut short by the caller's hang-up ends (and is recorded) now, not after the close.
    drop(slot);
    // However the connection ends here (either side closed it, an error, shutdown, an idle
    // deadline), it is shut down, not just dropped: over TLS that sends the `close_notify` alert
    // before the TCP close (RFC 8446 §6.1), so the caller reads a clean end of stream rather than
    // a truncation. Briefly: a caller that does not read must not hold the connection (or
    // graceful shutdown) for the idle deadline.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
    Served::Closed
}

// Made once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request, and whether the caller asked to close after it.
    Request(Request<CallerBody>, bool),
    Closed,
    Handoff,
    /// A head with both framings, which this server refuses.
    Conflicting,
}

/// Reads the next request: its head, and its body when it has one. `silent`: the caller was
/// just found to have sent nothing yet.
async fn next_request<S: AsyncRead + ReadReady + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
    max_header_bytes: usize,
    mut silent: bool,
    bodies: &'static WholeBodies,
) -> Next {
    // The head, and whether its body must still be waited for. In a block: a binding alive
    // across an `.await` takes room in every connection's task, so the head (224 bytes) waits for
    // its body in a box, made only then.
    let (head, head_len, body_len, close, _share) = {
        let mut head_deadline = None;
        // How much of `buf` was parsed and found to end no head yet: parsed again only once a
        // blank line may have come ([`crate::h1::may_end_a_head`]).
        let mut scanned = 0;
        let (head, head_len, body_len, close, share) = loop {
            if !buf.is_empty() {
                let read = buf.len();
                if crate::h1::may_end_a_head(buf, scanned) {
                    match parse(buf, max_header_bytes, bodies) {
                        Parse::Partial => scanned = read,
                        Parse::Handoff => return Next::Handoff,
                        Parse::Conflicting => return Next::Conflicting,
                        Parse::Request(head, body_len, close, share) => {
                            break (head, read - buf.len(), body_len, close, share);
                        }
                    }
                }
                // Still incomplete: past what hyper would read, hyper refuses it (431). Any
                // head hyper could take is first seen whole here, so both framings in it are
                // refused here whatever `max_header_bytes` is.
                if buf.len() >= max_header_bytes.max(HYPER_MIN_BUF_BYTES) {
                    return Next::Handoff;
                }
            }
            if buf.is_empty() {
                // Idle between requests: the connection's own idle deadline applies; shutdown
                // closes it.
                let read = tokio::select! {
                    biased;
                    read = idle_read(io, buf, std::mem::take(&mut silent)) => read,
                    _ = stopping(shutdown) => return Next::Closed,
                };
                if !matches!(read, Ok(read) if read > 0) {
                    return Next::Closed;
                }
            } else {
                make_room(buf);
                if !read_within(io, buf, &mut head_deadline, shutdown).await {
                    return Next::Closed;
                }
            }
        };
        if buf.len() as u64 >= body_len {
            let body = match body_len {
                0 => CallerBody::empty(),
                len => CallerBody::Read(Some(buf.split_to(len as usize).freeze())),
            };
            return request(buf, head, head_len + body_len as usize, body, close);
        }
        (Box::new(head), head_len, body_len, close, share)
    };
    let len = body_len as usize;
    // The body is read before the call starts, so before its caller is known: it must arrive
    // within HEAD_TIMEOUT too (of the head's end), or a trickle of bytes would hold its buffer and
    // a connection slot up to the idle limit at every byte.
    let mut body_deadline = None;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        if !read_within(io, buf, &mut body_deadline, shutdown).await {
            return Next::Closed;
        }
    }
    let body = CallerBody::Read(Some(buf.split_to(len).freeze()));
    request(buf, *head, head_len + len, body, close)
}

/// Reads more of a request into `buf`, within [`HEAD_TIMEOUT`] of the first such read
/// (`deadline`, set then) and until shutdown. `false`: the connection is to close (time ran
/// out, shutdown, the caller's end, an error).
async fn read_within<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    deadline: &mut Option<tokio::time::Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
    tokio::select! {
        biased;
        read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => {
            matches!(read, Ok(Ok(read)) if read > 0)
        }
        _ = stopping(shutdown) => false,
    }
}

/// The request of `head` and `body`, `read` bytes in all taken from `buf`.
fn request(
    buf: &mut BytesMut,
    head: Request<()>,
    read: usize,
    body: CallerBody,
    close: bool,
) -> Next {
    // Room made for a large head or body stays with the request (freed with it): the connection
    // goes on with a buffer of its usual size, holding what followed, if anything (a buffer's
    // capacity does not show what it shares, so it would keep the room, and so would its spares).
    if read > READ_SPACE {
        let rest = std::mem::take(buf);
        buf.extend_from_slice(&rest);
    }
    let (parts, ()) = head.into_parts();
    Next::Request(Request::from_parts(parts, body), close)
}

#[cfg(test)]
thread_local! {
    /// For each wait for a caller made without a buffer on this thread, the read buffer's room
    /// the connection held while it waited.
    static IDLE_WAITS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// How many times [`parse`] ran on this thread.
    static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Room for one more read of a head: [`READ_SPACE`] more when less than 1 KiB is left; a
/// connection without a buffer (given back while it waited) takes a spare first.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = Spares::take();
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SPACE);
    }
}

/// Reads the next bytes into the empty `buf` of a connection between requests. On a stream
/// that tells readiness ([`ReadReady`]), a caller that has sent nothing yet is waited for with
/// the buffer given back, and the read gets room for a whole typical head at once; readiness
/// may be told when a read then finds nothing (a freshly accepted socket was, here; or a read
/// that filled its room left it set), so such a read gives the buffer back and waits again. A
/// stream that cannot tell is read into `buf` as it waits (a connection that has not spoken keeps 64 bytes, `read_buf`'s
/// first room, at the price of a second read for a first head longer than that). `silent`: a
/// read has just found nothing (readiness is not asked again before waiting).
async fn idle_read<S: AsyncRead + ReadReady + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    mut silent: bool,
) -> io::Result<usize> {
    if !S::TELLS {
        // An empty buffer gets `read_buf`'s first room, 64 bytes, as it waits.
        if buf.capacity() > 0 {
            make_room(buf);
        }
        return io.read_buf(buf).await;
    }
    loop {
        let mut readable = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read_ready(cx));
        let polled = match std::mem::take(&mut silent) {
            true => Poll::Pending,
            false => now(&mut readable).await,
        };
        match polled {
            Poll::Ready(ready) => ready?,
            Poll::Pending => {
                Spares::give(std::mem::take(buf));
                #[cfg(test)]
                IDLE_WAITS.with(|waits| waits.borrow_mut().push(buf.capacity()));
                readable.await?;
            }
        }
        make_room(buf);
        if let Poll::Ready(read) = now(io.read_buf(buf)).await {
            return read;
        }
    }
}

/// Buffers given back by this thread's connections while they wait for their callers, for the
/// next connection with a request to read or an answer to write: on a busy worker they go round
/// instead of being freed and allocated again per call (which cost ~7 % of the throughput here,
/// a cost gone with mimalloc's purging of freed pages turned off, docs/BENCHMARKS.md §1). At
/// most [`SPARES`] of each kind are kept, and none larger than a connection keeps after a call.
struct Spares {
    reads: Vec<BytesMut>,
    answers: Vec<Vec<u8>>,
}

/// The most spare buffers of each kind a thread keeps.
const SPARES: usize = 64;

thread_local! {
    static SPARE: RefCell<Spares> = const {
        RefCell::new(Spares {
            reads: Vec::new(),
            answers: Vec::new(),
        })
    };
}

/// A buffer kind [`Spares`] keeps: where, and how large at most.
trait Spare: Default {
    /// The largest capacity kept; a larger buffer is freed.
    const MAX: usize;
    fn capacity(&self) -> usize;
    fn clear(&mut self);
    fn list(spares: &mut Spares) -> &mut Vec<Self>;
}

impl Spare for BytesMut {
    const MAX: usize = 2 * READ_SPACE;
    fn capacity(&self) -> usize {
        BytesMut::capacity(self)
    }
    fn clear(&mut self) {
        BytesMut::clear(self);
    }
    fn list(spares: &mut Spares) -> &mut Vec<Self> {
        &mut spares.reads
    }
}

impl Spare for Vec<u8> {
    const MAX: usize = 4096;
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn list(spares: &mut Spares) -> &mut Vec<Self> {
        &mut spares.answers
    }
}

impl Spares {
    fn give<T: Spare>(mut buffer: T) {
        if buffer.capacity() == 0 || buffer.capacity() > T::MAX {
            return;
        }
        buffer.clear();
        Self::with(|spares| {
            let list = T::list(spares);
            if list.len() < SPARES {
                list.push(buffer);
            }
        });
    }

    /// A spare buffer, or a new empty one.
    fn take<T: Spare>() -> T {
        Self::with(|spares| T::list(spares).pop())
            .flatten()
            .unwrap_or_default()
    }

    /// `None` while the thread's locals are torn down (or re-entered): nothing is kept then.
    fn with<R>(f: impl FnOnce(&mut Spares) -> R) -> Option<R> {
        SPARE
            .try_with(|cell| cell.try_borrow_mut().ok().map(|mut spares| f(&mut spares)))
            .ok()
            .flatten()
    }
}

/// Polls `future` once: its output, or `Pending` (its waker registered).
async fn now<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Reads what the caller has sent already, without waiting: `Some(true)` when bytes came,
/// `Some(false)` when there are none yet (the connection will wait for its caller), `None`
/// when the caller closed it. Usually no system call when nothing came: tokio cleared the
/// socket's readiness after the last read, which did not fill the buffer (one that filled it,
/// or a call answered before the connection was read again, costs one `recvfrom` here). A
/// `Pending` from tokio's cooperative budget with bytes waiting only costs the box.
async fn arrived<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> Option<bool> {
    make_room(buf);
    match now(io.read_buf(buf)).await {
        Poll::Ready(Ok(0) | Err(_)) => None,
        Poll::Ready(Ok(_)) => Some(true),
        Poll::Pending => Some(false),
    }
}

/// Reads the caller while its call runs or its answer pauses: `true` once bytes arrive (a
/// pipelined request, left in `buf`), `false` once the caller hung up (EOF, reset) or the
/// connection's idle limit cut it (which a call waiting on its vendor excuses: see
/// [`crate::deadline::InFlight`]).
async fn watch_caller<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> bool {
    matches!(io.read_buf(buf).await, Ok(read) if read > 0)
}

/// Closes the sending side after a refusal's answer, then reads and discards what the caller
/// still sends, until it closes too, [`LINGER_TIME`] has passed, [`LINGER_BYTES`] have come,
/// or shutdown begins (nginx's lingering close). A refused head's body is never read, and a
/// socket closed with unread bytes, or sent more once closed, answers with a TCP reset: a
/// caller still sending its body then fails on the reset (Linux tells its next write "broken
/// pipe"; some stacks drop the received answer too) instead of reading the answer. The
/// connection's read buffer is what the discarded bytes go through.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
) {
    // The caller is told the answer is all (a TCP FIN, over TLS after `close_notify`); one that
    // does not take it in time is not waited for.
    if !matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    buf.clear();
    buf.reserve(16 * 1024);
    while discarded < LINGER_BYTES {
        buf.clear();
        // Shutdown first: a caller sending fast always has bytes ready.
        let read = tokio::select! {
            biased;
            _ = stopping(shutdown) => return,
            read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => read,
        };
        match read {
            Ok(Ok(read)) if read > 0 => discarded += read,
            _ => return,
        }
    }
}

/// Resolves once shutdown has begun (never, if the gateway's shutdown sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[allow(clippy::large_enum_variant)]
enum Parse {
    Partial,
    Handoff,
    /// The head (taken from the buffer), the body's length, `Connection: close`, and the share
    /// of [`WHOLE_BODY_BUDGET`] its body holds while it is waited for.
    Request(Request<()>, u64, bool, Option<WholeBodyShare>),
    /// Both `Content-Length` and `Transfer-Encoding`: refused, and the connection closed.
    Conflicting,
}

/// Parses a request head at the start of `buf`; takes it from `buf` only when this server will
/// serve the request.
fn parse(buf: &mut BytesMut, max_header_bytes: usize, bodies: &'static WholeBodies) -> Parse {
    #[cfg(test)]
    PARSES.with(|parses| parses.set(parses.get() + 1));
    match parse_with::<MAX_HEADERS>(buf, max_header_bytes, false, bodies) {
        // More headers than are parsed here: hyper's, unless the head has both framings (which
        // hyper would forward, framed by Transfer-Encoding).
        None => parse_with::<HYPER_MAX_HEADERS>(buf, max_header_bytes, true, bodies)
            .unwrap_or(Parse::Handoff),
        Some(parsed) => parsed,
    }
}

/// [`parse`] with room for `N` headers: `None` if the head has more. `only_conflicting`: serve
/// nothing but a head with both framings (hand every other one to hyper).
fn parse_with<const N: usize>(
    buf: &mut BytesMut,
    max_header_bytes: usize,
    only_conflicting: bool,
    bodies: &'static WholeBodies,
) -> Option<Parse> {
    // Left uninitialized: httparse writes the slots it fills (2 KiB not zeroed per request).
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Some(Parse::Partial),
        Err(httparse::Error::TooManyHeaders) => return None,
        Err(_) => return Some(Parse::Handoff),
    };
    let mut body_len = None;
    let mut close = false;
    // Read through the whole head (not left at the first header that sends it to hyper): a
    // request with both Content-Length and Transfer-Encoding is refused here whatever else it
    // has (`conflicting_framing`), its length and version included.
    let (mut length, mut chunked, mut handoff) = (false, false, false);
    for found in parsed.headers.iter() {
        let name = found.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = true;
            match (body_len, crate::h1::parse_length(found.value)) {
                (None, Some(length)) if length <= MAX_READ_BODY_BYTES => body_len = Some(length),
                _ => handoff = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if found.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !found.value.eq_ignore_ascii_case(b"keep-alive") {
                handoff = true;
            }
        } else if [&b"expect"[..], b"upgrade", b"te", b"http2-settings"]
            .iter()
            .any(|special| name.eq_ignore_ascii_case(special))
        {
            handoff = true;
        }
    }
    // Both framings (a request-smuggling shape): refused, with no body read (which length would
    // it be?), and the connection closed after the answer, as its next byte cannot be found.
    if length && chunked {
        return Some(Parse::Conflicting);
    }
    // Checked only now: a head hyper would take (too long for here, HTTP/1.0, CONNECT, an
    // absolute-form target) is refused above all the same if it has both framings.
    if head_len > max_header_bytes || parsed.version != Some(1) {
        return Some(Parse::Handoff);
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Some(Parse::Handoff);
    };
    // A target longer than hyper takes is hyper's to refuse (414), whatever `max_header_bytes`.
    if method == "CONNECT" || !path.starts_with('/') || path.len() > HYPER_MAX_URI_BYTES {
        return Some(Parse::Handoff);
    }
    if handoff || chunked || only_conflicting {
        return Some(Parse::Handoff);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Some(Parse::Handoff);
    };
    // Where each part sits in the buffer, so the head's parts can share its bytes.
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let path = span(path.as_bytes());
    let count = parsed.headers.len();
    let mut spans = [const { (0..0, 0..0) }; N];
    for (slot, found) in spans.iter_mut().zip(parsed.headers.iter()) {
        *slot = (span(found.name.as_bytes()), span(found.value));
    }
    // A body still to come is waited for within a budget every connection shares: past it,
    // hyper streams it (nothing is taken from `buf` yet, so every byte goes with the head).
    let length = body_len.unwrap_or(0) as usize;
    let share = match head_len + length > buf.len() {
        true => match bodies.take(length) {
            Some(share) => Some(share),
            None => return Some(Parse::Handoff),
        },
        false => None,
    };
    let head = buf.split_to(head_len).freeze();
    let build = || -> Option<Request<()>> {
        let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
        let mut headers = HeaderMap::with_capacity(count);
        // Borrowed, not moved into the closure: the array is 32 bytes a slot (2 KiB for N = 64).
        for (name, value) in spans[..count].iter().cloned() {
            let name = HeaderName::from_bytes(&head[name]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(value)).ok()?;
            headers.append(name, value);
        }
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    };
    Some(match build() {
        Some(request) => Parse::Request(request, body_len.unwrap_or(0), close, share),
        None => {
            // Not something hyper would take either, but hyper says so: put the head back.
            let mut restored = BytesMut::with_capacity(head.len() + buf.len());
            restored.extend_from_slice(&head);
            restored.extend_from_slice(buf);
            *buf = restored;
            Parse::Handoff
        }
    })
}

/// How a connection goes on after an answer.
#[derive(Debug, PartialEq)]
enum Ending {
    /// It may carry another request.
    KeepAlive,
    /// It closes: the caller asked, shutdown began, the caller hung up, or the answer failed.
    Close,
    /// It closes because the answer said `connection: close` (Postern's own refusal), and
    /// lingers ([`linger`]).
    Linger,
}

/// Writes `response`, and says how the connection goes on ([`Ending`]). The head is
/// written into `out` before the future is made: what the future keeps across its waits is the
/// body and its framing, not the response's head (room in every connection's task).
fn respond<'a, S: AsyncRead + AsyncWrite + Unpin>(
    io: &'a mut S,
    out: &'a mut Vec<u8>,
    buf: &'a mut BytesMut,
    response: Response<GatewayBody>,
    head_only: bool,
    close: bool,
    in_flight: &'a crate::deadline::InFlight,
) -> impl Future<Output = io::Result<Ending>> + 'a {
    let (parts, body) = response.into_parts();
    let framing = write_head(out, &parts, &body, head_only, close);
    drop(parts);
    write_answer(io, out, buf, body, framing, in_flight)
}

/// How an answer's body goes out, as its head said.
struct Framing {
    /// How the connection goes on once the answer is written whole.
    ending: Ending,
    /// No body is written (`HEAD`, 204, 304).
    bodiless: bool,
    /// The body's length, or `None` for chunked.
    length: Option<u64>,
}

/// Writes the answer's head into `out` (cleared first).
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &GatewayBody,
    head_only: bool,
    close: bool,
) -> Framing {
    let status = parts.status;
    // Never a 1xx here: the vendor client passes on final answers only.
    let no_content = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let answer_closes = !close
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| crate::h1::has_token(value.as_bytes(), b"close"));
    let ending = match (close, answer_closes) {
        (true, _) => Ending::Close,
        (false, true) => Ending::Linger,
        (false, false) => Ending::KeepAlive,
    };
    let close = ending != Ending::KeepAlive;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Framing is written below, once: the length the response declares when it declares one
    // (several that differ declare none), else the body's exact size, else chunked.
    let declared = crate::h1::content_length(&parts.headers);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        // When the connection closes after this answer, the caller is told so, whatever the
        // response said.
        if name == header::TRANSFER_ENCODING || (close && name == header::CONNECTION) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if head_only || no_content {
        // A `HEAD` answer states the length a `GET` would have had; 204 and 304 none.
        let length = declared.or(body.size_hint().exact().filter(|&n| n > 0));
        if let (Some(length), false) = (length, no_content) {
            push_length(out, length);
        }
        out.extend_from_slice(b"\r\n");
        return Framing {
            ending,
            bodiless: true,
            length: None,
        };
    }
    let length = declared.or(body.size_hint().exact());
    match length {
        Some(length) => push_length(out, length),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    Framing {
        ending,
        bodiless: false,
        length,
    }
}

/// Writes the head in `out` and then `body` as `framing` says, and says how the connection goes
/// on ([`Ending`]).
async fn write_answer<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    buf: &mut BytesMut,
    mut body: GatewayBody,
    framing: Framing,
    in_flight: &crate::deadline::InFlight,
) -> io::Result<Ending> {
    let Framing {
        ending,
        bodiless,
        length,
    } = framing;
    if bodiless {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(ending);
    }
    let body = &mut body;
    // `out` holds what is still to be written; it is written when the body has nothing ready
    // (so a streamed answer reaches the caller as it comes) and at the end.
    let mut remaining = length;
    loop {
        let frame = match poll_once(body).await {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                // While the answer pauses (a stream waiting on the vendor), a caller that
                // hangs up ends it, as during the call ([`watch_caller`]; the pause itself is
                // `response_idle_timeout_ms`'s to bound, not the connection's idle limit).
                let _waiting = in_flight.wait();
                loop {
                    tokio::select! {
                        biased;
                        frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)) => break frame,
                        more = watch_caller(io, buf), if buf.is_empty() => if !more {
                            return Ok(Ending::Close);
                        },
                    }
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed; closing the connection");
                let _ = io.write_all(out).await;
                return Ok(Ending::Close);
            }
            // Trailers are not sent, as hyper does for a caller without `TE: trailers`.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        match remaining.as_mut() {
            Some(left) => {
                if data.len() as u64 > *left {
                    tracing::debug!("response body longer than its length; closing");
                    out.extend_from_slice(&data[..*left as usize]);
                    let _ = io.write_all(out).await;
                    return Ok(Ending::Close);
                }
                *left -= data.len() as u64;
                push_data(io, out, &data).await?;
                if *left == 0 {
                    // The whole answer: the caller gets it before the body is polled for its
                    // end (which records the call).
                    io.write_all(out).await?;
                    out.clear();
                    io.flush().await?;
                }
            }
            None => {
                let _ = write!(out, "{:x}\r\n", data.len());
                push_data(io, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    match remaining {
        Some(0) => {}
        Some(_) => {
            tracing::debug!("response body shorter than its length; closing");
            let _ = io.write_all(out).await;
            return Ok(Ending::Close);
        }
        None => out.extend_from_slice(b"0\r\n\r\n"),
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        io.flush().await?;
    }
    Ok(ending)
}

/// One poll of the body's next frame: `None` when it is not ready yet.
async fn poll_once(
    body: &mut GatewayBody,
) -> Option<Option<Result<Frame<Bytes>, crate::body::BodyError>>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
    .await
}

/// Adds `data` behind what `out` holds, or, when together they pass [`COALESCE_BYTES`], writes
/// both out (no copy of a large frame).
async fn push_data<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE_BYTES {
        out.extend_from_slice(data);
        return Ok(());
    }
    io.write_all(out).await?;
    out.clear();
    io.write_all(data).await
}

fn push_length(out: &mut Vec<u8>, length: u64) {
    let _ = write!(out, "content-length: {length}\r\n");
}

/// The current `date` value (IMF-fixdate), formatted once per second per thread.
fn with_date(write: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *cached = second;
            } else {
                return write(formatted.as_bytes());
            }
        }
        write(&text[..])
    })
}

/// A stream whose first reads return bytes already read from it: how hyper gets a connection
/// this server handed off.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed {
            prefix: prefix.freeze(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() && buf.remaining() > 0 {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Let the read buffer go: hyper has its own.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

forward_async_write!(Prefixed<S>, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::Fuzz;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A pipe cannot tell readiness: it is read into a buffer as it waits.
    impl ReadReady for tokio::io::DuplexStream {
        const TELLS: bool = false;
        fn poll_read_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn parsed(bytes: &[u8]) -> &'static str {
        let mut buf = BytesMut::from(bytes);
        match parse(&mut buf, 8192, &WHOLE_BODIES) {
            Parse::Partial => "partial",
            Parse::Handoff => {
                assert_eq!(&buf[..], bytes, "a hand-off keeps every byte");
                "hyper"
            }
            Parse::Conflicting => {
                assert_eq!(&buf[..], bytes, "a refused head is not taken");
                "refused here"
            }
            Parse::Request(request, ..) => {
                assert!(!both_framings(&request), "both framings are never served");
                "here"
            }
        }
    }

    fn both_framings(request: &Request<()>) -> bool {
        let headers = request.headers();
        headers.contains_key(header::CONTENT_LENGTH)
            && headers.contains_key(header::TRANSFER_ENCODING)
    }

    #[test]
    fn only_plainly_ordinary_requests_are_served_here() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", "here"),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\nhello",
                "here",
            ),
            (b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\n", "here"),
            (b"GET /a HTTP/1.1\r\nhost: x\r\n", "partial"),
            (b"GET /a HTTP/1.0\r\n\r\n", "hyper"),
            // Both framings, on heads hyper would otherwise take: refused here too.
            (
                b"POST /a HTTP/1.0\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "refused here",
            ),
            (
                b"POST http://api.example.com/a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "refused here",
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "hyper"),
            (b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n", "hyper"),
            (b"GET http://api.example.com/a HTTP/1.1\r\n\r\n", "hyper"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", "hyper"),
            (
                b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                "hyper",
            ),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "refused here",
            ),
            (
                b"POST /a HTTP/1.1\r\nexpect: 100-continue\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
                "refused here",
            ),
            (
                b"POST /a HTTP/1.1\r\ncontent-length: 4\r\nContent-Length: 4\r\n\r\n",
                "hyper",
            ),
            (b"POST /a HTTP/1.1\r\ncontent-length: +4\r\n\r\n", "hyper"),
            (b"POST /a HTTP/1.1\r\ncontent-length: 4, 4\r\n\r\n", "hyper"),
            (b"POST /a HTTP/1.1\r\ncontent-length: \r\n\r\n", "hyper"),
            (
                b"POST /a HTTP/1.1\r\ncontent-length: 65537\r\n\r\n",
                "hyper",
            ),
            (b"POST /a HTTP/1.1\r\nexpect: 100-continue\r\n\r\n", "hyper"),
            (
                b"GET /a HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                "hyper",
            ),
            (
                b"GET /a HTTP/1.1\r\nconnection: keep-alive, te\r\n\r\n",
                "hyper",
            ),
            (b"GET /a HTTP/1.1\r\nte: trailers\r\n\r\n", "hyper"),
            (b"GET /a HTTP/1.1\r\nx-evil: a\rb\r\n\r\n", "hyper"),
            (b"GET /a HTTP/1.1\r\nx-evil: a\nb\r\n\r\n", "hyper"),
            (b"GET /a HTTP/1.1\r\nx-fold: a\r\n b\r\n\r\n", "hyper"),
            (b"GET /a HTTP/1.1\r\nbad name: a\r\n\r\n", "hyper"),
            (b"GARBAGE\r\n\r\n", "hyper"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                parsed(bytes),
                *expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A head longer than the listener's limit (which hyper, with its 8 KiB floor, would
        // take) with both framings: refused here.
        let mut long = BytesMut::from(
            format!(
                "POST /a HTTP/1.1\r\nx-pad: {}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
                "a".repeat(2000)
            )
            .as_bytes(),
        );
        assert!(matches!(
            parse(&mut long, 1024, &WHOLE_BODIES),
            Parse::Conflicting
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parsed(format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()),
            "hyper"
        );
        // Both framings among more headers than are parsed here (as many as hyper takes): still
        // refused here, not left to hyper to forward framed by Transfer-Encoding.
        let framed = "content-length: 4\r\ntransfer-encoding: chunked\r\n";
        let many: String = (0..HYPER_MAX_HEADERS - 2)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parsed(format!("POST /a HTTP/1.1\r\n{many}{framed}\r\n").as_bytes()),
            "refused here"
        );
        let too_many: String = (0..HYPER_MAX_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parsed(format!("POST /a HTTP/1.1\r\n{too_many}{framed}\r\n").as_bytes()),
            "hyper",
            "past hyper's limit too: hyper answers 431"
        );
        let big = "a".repeat(9000);
        assert_eq!(
            parsed(format!("GET /a HTTP/1.1\r\nx: {big}\r\n\r\n").as_bytes()),
            "hyper"
        );
    }

    /// A request head from pieces that are valid, nearly valid and hostile, sometimes with a
    /// few bytes mutated, and a body as long as its first Content-Length says (when small).
    fn fuzzed_request(fuzz: &mut Fuzz) -> Vec<u8> {
        // Half the cases stay near the valid shapes, so the server's own path is well covered.
        let plain = fuzz.below(2) == 0;
        let method = if plain {
            fuzz.pick(&[
                "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get", "M-SEARCH",
            ])
        } else {
            fuzz.pick(&[
                "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "get",
                "G ET", "", "GET\t", "M-SEARCH", "GE\u{0}T",
            ])
        };
        let target = if plain {
            fuzz.pick(&[
                "/a",
                "/a?b=c&d",
                "/v1/charges/ch_1",
                "/%2e%2e/x",
                "//x",
                "/a%00",
                "/a?\"<>",
                "/a?",
                "/~user/$x'(y)*+,;=:@",
            ])
        } else {
            fuzz.pick(&[
                "/a",
                "/a?b=c&d",
                "*",
                "http://x.test/a",
                "/a b",
                "/a\u{7f}",
                "/\u{e9}",
                "",
                "/a#frag",
                "api.test:443",
                "/a\tb",
                "/a|b{c}",
            ])
        };
        let version = if plain {
            "HTTP/1.1"
        } else {
            fuzz.pick(&[
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.0",
                "HTTP/2.0",
                "http/1.1",
                "HTTP/1.1 ",
                "HTTP/1.2",
                "HTTP/11",
            ])
        };
        let eol = if fuzz.below(8) == 0 { "\n" } else { "\r\n" };
        let mut head = format!("{method} {target} {version}{eol}");
        let names = [
            "host",
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "connection",
            "expect",
            "te",
            "upgrade",
            "x-custom",
            "authorization",
            "bad name",
            "x:y",
            "",
            "\u{ff}",
            "x-\u{0}",
            "http2-settings",
            "CONTENT-LENGTH",
        ];
        let values = [
            "x",
            "5",
            "05",
            "+5",
            "5,5",
            " 5 ",
            "",
            "-1",
            "99999999999999999999",
            "0",
            "65537",
            "chunked",
            "gzip, chunked",
            " chunked",
            "close",
            "keep-alive",
            "Close",
            "close, te",
            "upgrade",
            "100-continue",
            "trailers",
            "websocket",
            "a\rb",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}b",
            "\tv\t",
            "Bearer t",
            "\u{e9}",
        ];
        let plain_names = [
            "host",
            "content-length",
            "connection",
            "x-custom",
            "authorization",
        ];
        let plain_values = [
            "x",
            "5",
            "0",
            "05",
            "12",
            "close",
            "keep-alive",
            "Close",
            "Bearer t",
            "\tv\t",
            "a b",
            "\u{e9}",
        ];
        for _ in 0..fuzz.below(7) {
            let (name, value) = match plain {
                true => (fuzz.pick(&plain_names), fuzz.pick(&plain_values)),
                false => (fuzz.pick(&names), fuzz.pick(&values)),
            };
            head.push_str(&format!("{name}: {value}{eol}"));
            if !plain && fuzz.below(20) == 0 {
                head.push_str(&format!(" folded{eol}"));
            }
        }
        head.push_str(eol);
        let mut bytes = head.into_bytes();
        if !plain {
            fuzz.mutate(&mut bytes, b"\r\n: \t\0/");
        }
        // A body as long as the head's first well-formed Content-Length says, when small.
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        let declared = text
            .split(['\r', '\n'])
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|&length| length <= 64);
        bytes.extend(std::iter::repeat_n(b'b', declared.unwrap_or(0)));
        bytes
    }

    /// What hyper's HTTP/1.1 server (as the listener configures it) makes of `bytes`: the first
    /// request's method, target, headers and body, or `None` if it takes no request.
    async fn hyper_reads(bytes: &[u8]) -> Option<(Method, Uri, HeaderMap, Bytes)> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (seen, mut got) = tokio::sync::mpsc::unbounded_channel();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let _ = seen.send((parts.method, parts.uri, parts.headers, body));
                Ok::<_, std::convert::Infallible>(Response::new(
                    http_body_util::Empty::<Bytes>::new(),
                ))
            }
        });
        let serving = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .max_headers(HYPER_MAX_HEADERS)
                .max_buf_size(8192)
                // The input ends with a half-close: the request before it is still served.
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service),
        );
        let (mut read, mut write) = tokio::io::split(client);
        let _ = write.write_all(bytes).await;
        let _ = write.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer)).await;
        serving.abort();
        got.try_recv().ok()
    }

    /// Postern's server takes a subset of what hyper takes, with the same meaning: over several
    /// thousand generated heads (valid, nearly valid, hostile, mutated), every one it serves
    /// itself hyper reads as the same method, target, headers and body; every one it leaves to
    /// hyper keeps all its bytes; and the one shape hyper would reframe (both Content-Length and
    /// Transfer-Encoding) is refused, never served.
    /// However large `max_header_bytes` is, a request target longer than hyper takes is
    /// hyper's (which answers 414): this server serves only what hyper would.
    #[test]
    fn a_target_longer_than_hyper_takes_is_handed_to_hyper() {
        let head = |length: usize| {
            let head = format!(
                "GET /{} HTTP/1.1\r\nhost: x\r\n\r\n",
                "a".repeat(length - 1)
            );
            BytesMut::from(head.as_bytes())
        };
        let mut longest = head(HYPER_MAX_URI_BYTES);
        assert!(matches!(
            parse(&mut longest, 1 << 20, &WHOLE_BODIES),
            Parse::Request(..)
        ));
        let mut longer = head(HYPER_MAX_URI_BYTES + 1);
        assert!(matches!(
            parse(&mut longer, 1 << 20, &WHOLE_BODIES),
            Parse::Handoff
        ));
    }

    /// A head trickled in pieces is parsed again only once a blank line may have come, and no
    /// complete head (nor one with both framings) is ever left unparsed for it: at every piece
    /// of fuzzed heads where the parse is skipped, parsing would have found it incomplete, or
    /// malformed (which the head's end or the size limit hands to hyper all the same).
    #[test]
    fn a_trickled_head_is_parsed_again_only_when_it_may_have_ended() {
        let seed = 0x7e1c_4ead;
        let mut fuzz = Fuzz(seed);
        for case in 0..3000 {
            let bytes = fuzzed_request(&mut fuzz);
            let shown = crate::fuzz::shown(seed, case, &bytes);
            let (mut at, mut scanned) = (0, 0);
            while at < bytes.len() {
                at = (at + 1 + fuzz.below(8)).min(bytes.len());
                let parsed = parsed(&bytes[..at]);
                if crate::h1::may_end_a_head(&bytes[..at], scanned) {
                    match parsed {
                        "partial" => scanned = at,
                        _ => break,
                    }
                } else {
                    assert!(
                        matches!(parsed, "partial" | "hyper"),
                        "a {parsed} head was not parsed at {at}; {shown}"
                    );
                }
            }
        }
        // A 12 KiB head a byte at a time: parsed twice (its first byte, its end), not 12,000
        // times.
        let mut head = b"GET /stripe/v1/charges HTTP/1.1\r\nhost: postern\r\n".to_vec();
        while head.len() < 12 * 1024 {
            head.extend_from_slice(b"x-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let (mut scanned, mut parses) = (0, 0);
        for at in 1..=head.len() {
            if crate::h1::may_end_a_head(&head[..at], scanned) {
                parses += 1;
                scanned = at;
            }
        }
        assert_eq!(parses, 2);
    }

    #[tokio::test]
    async fn the_servers_parser_agrees_with_hyper_on_fuzzed_heads() {
        let seed = 0x005e_ed0f_b00c;
        let mut fuzz = Fuzz(seed);
        let (mut served, mut handed_off) = (0, 0);
        for case in 0..8000 {
            let bytes = fuzzed_request(&mut fuzz);
            let shown = crate::fuzz::shown(seed, case, &bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            match parse(&mut buf, 8192, &WHOLE_BODIES) {
                Parse::Partial => {}
                Parse::Handoff => {
                    assert_eq!(&buf[..], &bytes[..], "a hand-off keeps every byte; {shown}");
                    handed_off += 1;
                }
                Parse::Conflicting => {
                    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
                    assert!(
                        head.contains("content-length") && head.contains("transfer-encoding"),
                        "{shown}"
                    );
                }
                Parse::Request(request, body_len, close, _) => {
                    assert!(
                        !both_framings(&request),
                        "both framings are never served; {shown}"
                    );
                    served += 1;
                    let head_len = bytes.len() - buf.len();
                    let body = &bytes[head_len..head_len + body_len as usize];
                    let Some((method, uri, hyper_headers, hyper_body)) = hyper_reads(&bytes).await
                    else {
                        panic!("served here, but hyper takes no request; {shown}");
                    };
                    assert_eq!(request.method(), method, "{shown}");
                    assert_eq!(request.uri(), &uri, "{shown}");
                    assert_eq!(request.headers(), &hyper_headers, "{shown}");
                    assert_eq!(&hyper_body[..], body, "{shown}");
                    if !close {
                        let closing = hyper_headers
                            .get_all(header::CONNECTION)
                            .iter()
                            .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
                        assert!(!closing, "{shown}");
                    }
                }
            }
        }
        // The generator reaches both sides.
        assert!(
            served > 1200 && handed_off > 2000,
            "served {served}, handed off {handed_off}"
        );
    }

    fn info() -> Arc<ConnectionInfo> {
        let in_flight = crate::deadline::InFlight::default();
        Arc::new(ConnectionInfo::new(
            ([127, 0, 0, 1], 1).into(),
            None,
            false,
            in_flight,
        ))
    }

    /// Answers with the method, target and body it got.
    async fn echo(_: Arc<ConnectionInfo>, request: Request<CallerBody>) -> Response<GatewayBody> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        );
        Response::new(GatewayBody::full(text))
    }

    /// The server parses a head trickled a byte per read again only once a blank line may
    /// have come: a 6 KiB head, its bytes read one by one, is parsed a few times, not thousands.
    #[tokio::test]
    async fn a_head_read_a_byte_at_a_time_is_parsed_a_few_times() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let mut head = b"GET /trickled HTTP/1.1\r\nconnection: close\r\n".to_vec();
        // (Twelve long headers: within the headers this server takes.)
        while head.len() < 6 * 1024 {
            head.extend_from_slice(format!("x-padding: {}\r\n", "a".repeat(500)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let reads = head.len();
        let writing = tokio::spawn(async move {
            for byte in head {
                client.write_all(&[byte]).await.unwrap();
                // The server reads it before the next is written (one thread: it runs now).
                tokio::task::yield_now().await;
            }
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            answer
        });
        let before = PARSES.with(std::cell::Cell::get);
        let served = serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
        let parses = PARSES.with(std::cell::Cell::get) - before;
        assert!(matches!(served, Served::Closed));
        drop(server);
        let answer = writing.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            parses <= 4,
            "{parses} parses of a head read in up to {reads} reads"
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_then_closed() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        client
            .write_all(
                b"GET /one HTTP/1.1\r\n\r\nPOST /two HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcHEAD /three HTTP/1.1\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let served = serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
        assert!(matches!(served, Served::Closed));
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        let answers: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(answers.len(), 3, "{answer}");
        assert!(
            answers[0].contains("content-length: 9\r\n")
                && answers[0].ends_with("\r\n\r\nGET /one ")
        );
        assert!(
            answers[1].ends_with("\r\n\r\nPOST /two abc"),
            "{}",
            answers[1]
        );
        // HEAD: the length a GET would have had, no body, and the close announced.
        assert!(
            answers[2].contains("content-length: 12\r\n"),
            "{}",
            answers[2]
        );
        assert!(
            answers[2].contains("connection: close\r\n"),
            "{}",
            answers[2]
        );
        assert!(answers[2].ends_with("\r\n\r\n"), "{}", answers[2]);
        assert!(answers.iter().all(|a| a.contains("date: ")));
    }

    /// An answer's framing is the length it declares when it declares one; lengths that
    /// differ declare none, and the body's own size frames it.
    #[tokio::test]
    async fn an_answer_with_differing_lengths_is_framed_by_its_body() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let differing = |_: Arc<ConnectionInfo>, _: Request<CallerBody>| async {
            let mut response = Response::new(GatewayBody::full("hello"));
            let headers = response.headers_mut();
            headers.append(header::CONTENT_LENGTH, HeaderValue::from(3u64));
            headers.append(header::CONTENT_LENGTH, HeaderValue::from(9u64));
            response
        };
        client
            .write_all(b"GET /one HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        serve(&mut server, &info(), &differing, &mut shutdown, 8192, None).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.matches("content-length").count(), 1, "{answer}");
        assert!(answer.contains("content-length: 5\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
    }

    /// As hyper (without `allow_half_close`): an EOF is a hang-up, noticed while a call runs
    /// with nothing else read. Here it is read during the second call: the first, whose call
    /// ran while the second waited in the buffer, is answered; the second is dropped.
    #[tokio::test]
    async fn a_half_close_is_noticed_once_no_pipelined_bytes_wait() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let slow = |info: Arc<ConnectionInfo>, request: Request<CallerBody>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            echo(info, request).await
        };
        client
            .write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        serve(&mut server, &info(), &slow, &mut shutdown, 8192, None).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 1, "{answer}");
        assert!(answer.ends_with("GET /one "), "{answer}");
    }

    #[tokio::test]
    async fn a_request_left_to_hyper_hands_over_every_unread_byte() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let rest =
            b"POST /two HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /x";
        let mut sent = b"GET /one HTTP/1.1\r\n\r\n".to_vec();
        sent.extend_from_slice(rest);
        client.write_all(&sent).await.unwrap();
        match serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await {
            Served::Handoff { read, served } => {
                assert!(served);
                assert_eq!(&read[..], &rest[..]);
            }
            Served::Closed => panic!("expected a hand-off"),
        }
    }

    /// With `max_header_bytes` under hyper's 8 KiB floor, a head longer than the limit that
    /// arrives in pieces (the first read takes 2 KiB) is still read whole here before anything
    /// goes to hyper, which would read it all the same: both framings in it are refused, not
    /// left to hyper to forward framed by Transfer-Encoding.
    #[tokio::test]
    async fn both_framings_in_a_head_past_a_small_limit_are_refused_here() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let sent = format!(
            "POST /a HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "a".repeat(3000)
        );
        client.write_all(sent.as_bytes()).await.unwrap();
        // The caller's end: the refusal's lingering read ends there.
        client.shutdown().await.unwrap();
        let served = serve(&mut server, &info(), &echo, &mut shutdown, 1024, None).await;
        assert!(matches!(served, Served::Closed), "handed to hyper");
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("conflicting_framing"), "{answer}");
        // A head hyper would refuse for its size (past its 8 KiB floor) is still its to refuse.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let long = format!("GET /a HTTP/1.1\r\nx-pad: {}\r\n", "a".repeat(9000));
        client.write_all(long.as_bytes()).await.unwrap();
        let served = serve(&mut server, &info(), &echo, &mut shutdown, 1024, None).await;
        assert!(matches!(served, Served::Handoff { served: false, .. }));
    }

    /// A call's answer, boxed (the test handlers' future type).
    type Answer = Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send>>;

    /// A handler whose calls never answer, and a flag set once a call it started is dropped.
    fn never_answers() -> (
        impl Fn(Arc<ConnectionInfo>, Request<CallerBody>) -> Answer + Send + 'static,
        Arc<AtomicBool>,
    ) {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let never = move |_: Arc<ConnectionInfo>, _: Request<CallerBody>| {
            let guard = Flag(flag.clone());
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<Response<GatewayBody>>().await
            }) as Answer
        };
        (never, dropped)
    }

    /// Reads `client` into `answers` until `done` holds (each read bounded: 5 s).
    async fn read_until<R: AsyncRead + Unpin>(
        client: &mut R,
        answers: &mut Vec<u8>,
        done: impl Fn(&[u8]) -> bool,
    ) {
        let mut chunk = [0u8; 1024];
        while !done(answers) {
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                .await
                .expect("answered")
                .unwrap();
            assert!(read > 0, "the connection closed");
            answers.extend_from_slice(&chunk[..read]);
        }
    }

    /// Every connection's task holds this future for its whole life, idle or not: what it keeps
    /// across its waits (the request, the answer's head, a head waiting for its body) is kept
    /// out of it. 704 bytes, in this test's build as in the release build (1448 before that).
    #[test]
    fn a_connection_future_stays_small() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (_stop, mut shutdown) = watch::channel(false);
        let info = info();
        let serving = serve(&mut server, &info, &echo, &mut shutdown, 8192, None);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 768, "h1server::serve's future is {size} bytes");
    }

    /// Over TCP, which tells readiness, a connection waits for its caller's next request with
    /// its read buffer given back, and serves the request when it comes; over a pipe, which
    /// cannot tell, it waits reading into its buffer.
    #[tokio::test]
    async fn a_connection_waiting_for_its_caller_over_tcp_holds_no_read_buffer() {
        // How many waits without a buffer, after checking that none held one.
        let waits = || {
            IDLE_WAITS.with(|waits| {
                let waits = waits.borrow();
                assert!(
                    waits.iter().all(|&held| held == 0),
                    "held while waiting: {waits:?}"
                );
                waits.len()
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_stop, mut shutdown) = watch::channel(false);
        // On this test's thread (a current-thread runtime): its count is this test's.
        let serving = tokio::spawn(async move {
            serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
        });
        let mut answers = Vec::new();
        for path in ["/one", "/two", "/three"] {
            let sent = waits();
            let request = format!("POST {path} HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody");
            client.write_all(request.as_bytes()).await.unwrap();
            let expected = format!("POST {path} body");
            read_until(&mut client, &mut answers, |answers| {
                String::from_utf8_lossy(answers).contains(&expected)
            })
            .await;
            // Answered; the caller is silent now, and the connection waits for it without its
            // buffer (looked for a while: the answer is written before the connection waits).
            for _ in 0..500 {
                if waits() > sent {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(waits() > sent, "after {path}: no wait without the buffer");
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the connection ended with its caller")
            .unwrap();

        // A pipe: the same exchange, never a wait without the buffer.
        let before = waits();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let serving = tokio::spawn(async move {
            serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
        });
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("answered")
            .unwrap();
        assert!(String::from_utf8_lossy(&chunk[..read]).contains("GET /a"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the connection ended with its caller")
            .unwrap();
        assert_eq!(waits(), before);
    }

    /// A connection waiting for its caller's next request holds no call future (several KiB
    /// each in the gateway), while one whose next request is already there reuses the box.
    #[tokio::test]
    async fn a_connection_waiting_for_its_caller_holds_no_call() {
        /// A call's future that answers at once and keeps its guard until it is dropped (an
        /// `async` block would drop its locals on finishing).
        struct Answered(#[allow(dead_code)] Live);
        struct Live(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Live {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        impl Future for Answered {
            type Output = Response<GatewayBody>;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
                // Where the call's future lives: the box, for a pipelined request the one its
                // predecessor had.
                let at = &*self as *const Self as usize;
                Poll::Ready(Response::new(GatewayBody::full(format!("{at:x};ok"))))
            }
        }
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // One allocation the size of the call's box per call, kept to the end: a box freed and
        // made again would not get its old address back (the allocator hands that to this).
        let kept = Arc::new(std::sync::Mutex::new(Vec::with_capacity(8)));
        let handler = {
            let (live, kept) = (live.clone(), kept.clone());
            move |_: Arc<ConnectionInfo>, _: Request<CallerBody>| {
                kept.lock().unwrap().push(Box::new(0usize));
                live.fetch_add(1, Ordering::SeqCst);
                Answered(Live(live.clone()))
            }
        };
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let serving = tokio::spawn(async move {
            serve(&mut server, &info(), &handler, &mut shutdown, 8192, None).await;
        });
        let mut answers = Vec::new();
        let mut read_answers = async |client: &mut tokio::io::DuplexStream, count: usize| {
            read_until(client, &mut answers, |answers| {
                answers.windows(2).filter(|w| w == b"ok").count() >= count
            })
            .await;
        };
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        read_answers(&mut client, 1).await;
        // Answered, and the connection waits for its caller: the call's box is gone.
        // The answer is written before the connection goes back to wait: looked for a while.
        let all_dropped = async || {
            for _ in 0..500 {
                if live.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            live.load(Ordering::SeqCst)
        };
        assert_eq!(
            all_dropped().await,
            0,
            "an idle connection kept its last call"
        );
        assert!(!serving.is_finished(), "the connection is still open");
        // Two requests sent at once: the second finds the first's box and reuses it.
        client
            .write_all(b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        read_answers(&mut client, 3).await;
        let text = String::from_utf8_lossy(&answers).into_owned();
        let places: Vec<&str> = text
            .split("\r\n\r\n")
            .filter_map(|part| part.split_once(";ok").map(|(at, _)| at))
            .collect();
        assert_eq!(places.len(), 3, "{text}");
        assert_eq!(
            places[1], places[2],
            "the pipelined request reused its predecessor's box"
        );
        assert_eq!(all_dropped().await, 0);
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the connection ends when the caller hangs up")
            .unwrap();
    }

    /// A request with a large head leaves the connection a buffer of its own for what follows,
    /// not a slice of the room made for the head (which would keep that room, unseen, for the
    /// connection's life or in the thread's spares).
    #[tokio::test]
    async fn a_large_head_leaves_no_room_behind() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let pad = "p".repeat(5000);
        let request = format!(
            "POST /big HTTP/1.1\r\nx-pad: {pad}\r\ncontent-length: 4\r\n\r\nbodyGET /next HTTP/1.1\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        // Bytes lost would end the connection (`Closed`), not wait for more.
        drop(client);
        let mut buf = BytesMut::new();
        let next = next_request(
            &mut server,
            &mut buf,
            &mut shutdown,
            8192,
            false,
            &WHOLE_BODIES,
        )
        .await;
        let Next::Request(request, _) = next else {
            panic!("no request");
        };
        assert_eq!(
            request.into_body().collect().await.unwrap().to_bytes(),
            "body"
        );
        // Made for what was left (the next request's bytes read with the head), not the rest of
        // the head's room (over 3 KiB here).
        assert!(
            buf.capacity() < READ_SPACE,
            "the buffer left ({} bytes) has {} of room: the head's",
            buf.len(),
            buf.capacity()
        );
        let next = next_request(
            &mut server,
            &mut buf,
            &mut shutdown,
            8192,
            false,
            &WHOLE_BODIES,
        )
        .await;
        let Next::Request(request, _) = next else {
            panic!("no second request");
        };
        assert_eq!(request.uri(), "/next");
    }

    /// A body waited for whole takes a share of a budget every connection shares: past it, the
    /// request goes to hyper with every byte read so far, head included, to stream; a share
    /// comes back once its body is read.
    #[tokio::test]
    async fn bodies_waited_for_whole_share_a_budget() {
        static BODIES: WholeBodies = WholeBodies::new(1500);
        let (_stop, mut shutdown) = watch::channel(false);
        let head = "POST /a HTTP/1.1\r\ncontent-length: 1000\r\n\r\n";
        // One body waited for (its bytes not all there yet) holds 1,000 of the 1,500.
        let (mut first_client, mut first_server) = tokio::io::duplex(64 * 1024);
        first_client.write_all(head.as_bytes()).await.unwrap();
        first_client.write_all(&[b'x'; 10]).await.unwrap();
        let mut first_buf = BytesMut::new();
        let (_stop1, mut shutdown1) = watch::channel(false);
        let waiting = next_request(
            &mut first_server,
            &mut first_buf,
            &mut shutdown1,
            8192,
            false,
            &BODIES,
        );
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "the first body is waited for"
        );
        // A second, meanwhile, does not fit: handed to hyper with every byte read.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(b"xy").await.unwrap();
        let mut buf = BytesMut::new();
        let next = next_request(&mut server, &mut buf, &mut shutdown, 8192, false, &BODIES).await;
        assert!(matches!(next, Next::Handoff));
        assert_eq!(&buf[..], format!("{head}xy").as_bytes());
        // A body already whole needs no share (600 bytes would not fit beside the 1,000 held):
        // served here.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"POST /b HTTP/1.1\r\ncontent-length: 600\r\n\r\n")
            .await
            .unwrap();
        client.write_all(&[b'y'; 600]).await.unwrap();
        // Room for all of it in one read (an empty buffer on a duplex stream reads 64 bytes).
        let mut buf = BytesMut::with_capacity(READ_SPACE);
        let next = next_request(&mut server, &mut buf, &mut shutdown, 8192, false, &BODIES).await;
        assert!(matches!(next, Next::Request(..)));
        // The first body arrives: read, and its share given back.
        first_client.write_all(&[b'x'; 990]).await.unwrap();
        let Next::Request(request, _) = waiting.await else {
            panic!("no request");
        };
        assert_eq!(
            request
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len(),
            1000
        );
        assert!(BODIES.take(1500).is_some());
    }

    /// `arrived` reads what is there without waiting: nothing yet, bytes (kept in the buffer), or
    /// the caller's end.
    #[tokio::test]
    async fn arrived_tells_nothing_yet_from_bytes_from_a_close() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut buf = BytesMut::new();
        // It never waits: each answer comes at the first poll.
        let at_once = Duration::from_secs(5);
        let nothing = tokio::time::timeout(at_once, arrived(&mut server, &mut buf)).await;
        assert_eq!(nothing.expect("no wait"), Some(false));
        assert!(buf.is_empty());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let bytes = tokio::time::timeout(at_once, arrived(&mut server, &mut buf)).await;
        assert_eq!(bytes.expect("no wait"), Some(true));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        drop(client);
        let mut rest = BytesMut::new();
        let closed = tokio::time::timeout(at_once, arrived(&mut server, &mut rest)).await;
        assert_eq!(closed.expect("no wait"), None);
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_ends_its_call() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let (never, dropped) = never_answers();
        client
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let serving = tokio::spawn(async move {
            matches!(
                serve(&mut server, &info(), &never, &mut shutdown, 8192, None).await,
                Served::Closed
            )
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(client);
        let closed = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the connection ends when the caller hangs up")
            .unwrap();
        assert!(closed);
        assert!(dropped.load(Ordering::SeqCst), "the call was dropped");
    }

    /// A caller's end and the server's, the server's under a 60 s idle limit that calls
    /// waiting on their vendor excuse (as the gateway's listener puts every connection), and the
    /// connection's facts, counting those calls.
    fn with_idle_limit() -> (
        tokio::io::DuplexStream,
        crate::deadline::Deadline<tokio::io::DuplexStream>,
        Arc<ConnectionInfo>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let in_flight = crate::deadline::InFlight::default();
        let server = crate::deadline::Deadline::new(
            server,
            Duration::from_secs(10),
            Duration::from_secs(60),
        )
        .excusing(in_flight.clone());
        let info = ConnectionInfo::new(([127, 0, 0, 1], 1).into(), None, false, in_flight);
        (client, server, Arc::new(info))
    }

    /// The connection's idle limit passing while a call waits on its vendor is not a hang-up:
    /// the answer, when it comes, is written.
    #[tokio::test(start_paused = true)]
    async fn the_idle_limit_does_not_cut_a_call_in_flight() {
        let (mut client, mut server, info) = with_idle_limit();
        let (_stop, mut shutdown) = watch::channel(false);
        let slow = |_: Arc<ConnectionInfo>, _: Request<CallerBody>| async {
            tokio::time::sleep(Duration::from_secs(200)).await;
            Response::new(GatewayBody::full("late"))
        };
        client
            .write_all(b"GET /slow HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let serving = tokio::spawn(async move {
            serve(&mut server, &info, &slow, &mut shutdown, 8192, None).await;
        });
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        serving.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nlate"), "{answer}");
    }

    /// Past the idle limit a call in flight is not cut, but the caller is still read: one that
    /// hangs up then ends the call at once (bounded here by a second).
    #[tokio::test(start_paused = true)]
    async fn a_hang_up_past_the_idle_limit_still_ends_the_call() {
        let (mut client, mut server, info) = with_idle_limit();
        let (_stop, mut shutdown) = watch::channel(false);
        let (never, dropped) = never_answers();
        client
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let serving = tokio::spawn(async move {
            serve(&mut server, &info, &never, &mut shutdown, 8192, None).await;
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!dropped.load(Ordering::SeqCst), "not cut at the idle limit");
        drop(client);
        let hung_up = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the hang-up is seen")
            .unwrap();
        assert!(hung_up.elapsed() <= Duration::from_secs(1) + Duration::from_millis(10));
        assert!(dropped.load(Ordering::SeqCst), "the call was dropped");
    }

    /// A body read before its call starts must arrive within HEAD_TIMEOUT of its head: a
    /// trickle is closed unanswered, and no handler runs.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_closes_the_connection() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_stop, mut shutdown) = watch::channel(false);
        let served = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
            started.elapsed()
        });
        client
            .write_all(b"POST /one HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(HEAD_TIMEOUT - Duration::from_secs(1)).await;
        client.write_all(b"d").await.unwrap();
        let took = tokio::time::timeout(HEAD_TIMEOUT * 2, served)
            .await
            .expect("the connection is closed")
            .unwrap();
        assert!(
            took >= HEAD_TIMEOUT && took < HEAD_TIMEOUT + Duration::from_secs(1),
            "{took:?}"
        );
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn shutdown_closes_an_idle_connection() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (stop, mut shutdown) = watch::channel(false);
        let serving = tokio::spawn(async move {
            serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
        });
        client
            .write_all(b"GET /one HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 512];
        let n = client.read(&mut first).await.unwrap();
        assert!(!String::from_utf8_lossy(&first[..n]).contains("connection: close"));
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("an idle connection closes at shutdown")
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// A caller connected to a server over real sockets, served in a task: the client, and the
    /// task (its time from the first byte served to its end).
    async fn served_over_tcp() -> (
        tokio::net::TcpStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Duration>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (stop, mut shutdown) = watch::channel(false);
        let serving = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            serve(&mut server, &info(), &echo, &mut shutdown, 8192, None).await;
            started.elapsed()
        });
        (client, stop, serving)
    }

    /// The head of a request with both framings and a body of `length` bytes.
    fn conflicting_head(length: usize) -> String {
        format!(
            "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: {length}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
    }

    /// A caller whose body is still arriving when its head is refused sends it whole, then
    /// reads the whole answer and a clean end. Closing at once, with the body unread in the
    /// socket, resets the connection (TCP RST): here (Linux, loopback) the caller's next write
    /// failed with "broken pipe", so a caller that sends its request before reading the answer
    /// never read it (other stacks may drop the received answer too).
    #[tokio::test]
    async fn a_refusal_lets_the_caller_finish_sending_and_read_the_answer() {
        let (mut client, _stop, serving) = served_over_tcp().await;
        const BODY: usize = 256 * 1024;
        let mut first = conflicting_head(BODY).into_bytes();
        first.extend_from_slice(&[b'a'; 32 * 1024]);
        client.write_all(&first).await.unwrap();
        // The rest comes after the server has answered (and, without lingering, closed).
        let mut sent = 32 * 1024;
        while sent < BODY {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let chunk = (BODY - sent).min(16 * 1024);
            if let Err(error) = client.write_all(&vec![b'a'; chunk]).await {
                panic!("the body's write failed after {sent} bytes: {error}");
            }
            sent += chunk;
        }
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .expect("the answer ends")
            .expect("the answer is read to a clean end, not a reset");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("conflicting_framing"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        drop(client);
        let took = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the connection ends with its caller")
            .unwrap();
        assert!(took < LINGER_TIME, "{took:?}");
    }

    /// A caller that goes on sending after its refusal's answer is cut off: at
    /// [`LINGER_BYTES`] when it sends fast, at [`LINGER_TIME`] when it trickles, and at once
    /// when shutdown begins.
    #[tokio::test]
    async fn a_caller_that_keeps_sending_after_a_refusal_is_cut_off() {
        /// Sends `chunk` every `pause` until a write fails (within 10 s): the bytes sent.
        async fn send_until_cut(
            client: &mut tokio::net::TcpStream,
            chunk: usize,
            pause: Duration,
        ) -> usize {
            let chunk = vec![b'a'; chunk];
            let mut sent = 0;
            tokio::time::timeout(Duration::from_secs(10), async {
                while client.write_all(&chunk).await.is_ok() {
                    sent += chunk.len();
                    tokio::time::sleep(pause).await;
                }
            })
            .await
            .expect("the caller is cut off");
            sent
        }

        // Fast: cut off once a MiB is discarded, well before the time is up.
        let (mut client, _stop, serving) = served_over_tcp().await;
        client
            .write_all(conflicting_head(1 << 30).as_bytes())
            .await
            .unwrap();
        let sent = send_until_cut(&mut client, 64 * 1024, Duration::ZERO).await;
        assert!(sent >= LINGER_BYTES, "{sent}");
        let took = serving.await.unwrap();
        assert!(took < LINGER_TIME, "{took:?}");

        // A trickle: cut off when the time is up.
        let (mut client, _stop, serving) = served_over_tcp().await;
        client
            .write_all(conflicting_head(1 << 30).as_bytes())
            .await
            .unwrap();
        send_until_cut(&mut client, 1024, Duration::from_millis(20)).await;
        let took = serving.await.unwrap();
        assert!(
            took >= LINGER_TIME && took < LINGER_TIME + Duration::from_secs(1),
            "{took:?}"
        );

        // Shutdown: cut off at once.
        let (mut client, stop, serving) = served_over_tcp().await;
        client
            .write_all(conflicting_head(1 << 30).as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        read_until(&mut client, &mut answer, |answer| {
            String::from_utf8_lossy(answer).contains("conflicting_framing")
        })
        .await;
        client.write_all(&[b'a'; 1024]).await.unwrap();
        let stopped = tokio::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_millis(500), serving)
            .await
            .expect("shutdown ends the lingering at once")
            .unwrap();
        assert!(stopped.elapsed() < Duration::from_millis(500));
    }
}
