//! HTTP/1.1 to vendors, written by hand on the pool's connections (`upstream.rs`); h2 stays on
//! hyper.
//!
//! hyper's connection-level client runs every connection as a task of its own and passes each
//! request and response through channels to it. Here the call's own task writes the request and
//! reads the answer's head, and the response body reads the rest and hands the connection back
//! to the pool when it ends. In the `minproxy` measuring stick that is 1.4–1.5 µs less CPU per
//! call in user space (docs/BENCHMARKS.md, `minproxy conn` against `minproxy rawclient`).
//!
//! What a vendor may send is read strictly (RFC 9112), failing closed:
//! - a head larger than [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] headers, or one
//!   httparse rejects, is malformed;
//! - `Transfer-Encoding` together with `Content-Length`, differing `Content-Length` values, or
//!   one that is not a number, is malformed (§6.3: a sign of response splitting), and so is any
//!   transfer coding but `chunked` alone (Postern offers none, and the scanner would see it
//!   still encoded);
//! - chunk-size lines are 1–16 hex digits, optional extensions of visible characters, then CRLF
//!   (no bare LF, no empty size: hyper's rules); trailer fields must parse, and are dropped;
//! - interim answers (1xx) are skipped, except `101 Switching Protocols`, which Postern never
//!   asks for;
//! - a body ends at its length, at the last chunk, or, with neither, when the vendor closes
//!   (that connection is not reused);
//! - a connection goes back to the pool only after a complete body, for HTTP/1.1 answers without
//!   `Connection: close`, and with no byte after the body; an idle one that received anything is
//!   dropped when it is next taken.
//!
//! A request goes again on another connection only when nothing of it reached the vendor (the
//! pooled connection was found closed before the write), or, once and on a new connection, when
//! it is safe (`GET`, `HEAD`, `OPTIONS`, `TRACE`), bodiless, and the pooled connection closed
//! before a byte of an answer (RFC 9112 §9.3.1.1).
//!
//! A request body goes out while what the vendor sends meanwhile is read ([`upload`]). A vendor
//! may answer before the body has ended, on the head alone (a `401`, a `413`):
//! - an error (`4xx`, `5xx`) or an answer that closes the connection says the vendor wants no
//!   more of the body (RFC 9112 §9.5): nothing more is sent, the answer is the call's at once,
//!   and the connection ends with it — whether the vendor then reads on, stops reading, or
//!   closes (a write that fails then is not the call's failure);
//! - any other final answer (a `2xx` from a vendor that answers as it reads) is kept, the rest
//!   of the body sent, and the answer relayed once the body has gone, its connection not
//!   reused (what the vendor made of the rest is not known; Envoy does the same with a
//!   response complete before its request): an exchange that needs each part of the answer
//!   before the caller sends more (full duplex) works over h2 vendors only;
//! - a write that fails once the vendor has answered (it closed) leaves that answer the call's.
//!
//! An answer is heard early while the upload waits (for the socket, the TLS layer or the
//! caller) and once more, without waiting, when the body has gone: a body the socket's buffers
//! take whole may be answered after its last write, and is then taken as answered in time
//! (a race Envoy has too).
//!
//! A connection the pool's sweep closes for idling is shut down in order (TLS `close_notify`,
//! then FIN: [`Connection::close`]); one that ends otherwise (found idle too long when taken,
//! beyond what the pool keeps, dropped with its pool, closed by the vendor, failed) is dropped.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ForwardBody;
use crate::upstream::Checkin;

/// The largest response head read (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers a response head may carry.
pub const MAX_HEADERS: usize = 128;
/// The largest chunk-size line (extensions included) or trailer section of a chunked body.
const MAX_CHUNK_META_BYTES: usize = 16 * 1024;
/// Free space made in the read buffer before each read.
const READ_SPACE: usize = 16 * 1024;
/// A request body's first frame up to this size goes out in the head's write.
const COALESCE_BYTES: usize = 16 * 1024;

/// The byte stream under one connection.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to a vendor and what was read from it but not yet used.
pub(crate) struct Connection {
    io: Io,
    buf: BytesMut,
}

/// Why an exchange failed. Never carries the request (its target or headers may hold an
/// injected credential).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request to the vendor failed")]
    Write(#[source] io::Error),
    #[error("reading the vendor's answer failed")]
    Read(#[source] io::Error),
    #[error("the vendor closed the connection before it answered")]
    Closed,
    #[error("the vendor's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request body broke off")]
    RequestBody(#[source] Box<crate::body::BodyError>),
    #[error("the request body's length differs from its Content-Length")]
    RequestLength,
}

/// How `send` failed: with nothing written on a pooled connection (the request comes back, to
/// try on another), dropped unanswered (see [`SendError::Dropped`]), or for good.
pub(crate) enum SendError {
    Unsent(Box<http::Request<ForwardBody>>),
    /// A safe request without a body that a pooled connection dropped before a byte of an
    /// answer: it may go once more, on a new connection (RFC 9112 §9.3.1.1).
    Dropped(Box<http::Request<ForwardBody>>),
    Failed(Error),
}

impl Connection {
    pub(crate) fn new(io: Io) -> Connection {
        Connection {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: not if the vendor closed it, reset it,
    /// or sent anything while it was idle. Costs no system call when the runtime has seen no
    /// event on the socket since the last read (it polls with a no-op waker: nothing waits on an
    /// idle connection).
    pub(crate) fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut byte = ReadBuf::uninit(&mut byte);
        // Outside tokio's co-operative budget: a task that has spent it would see `Pending`
        // without the socket being asked.
        let probe = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_read(cx, &mut byte));
        let mut probe = std::pin::pin!(tokio::task::unconstrained(probe));
        matches!(probe.as_mut().poll(&mut cx), Poll::Pending)
    }

    /// Shuts the connection down in order: over TLS a `close_notify` alert, then the socket's
    /// write side (FIN), so the vendor sees a close, not a truncation. Errors are the vendor's
    /// concern: the connection is gone either way.
    pub(crate) async fn close(mut self) {
        if let Err(error) = self.io.shutdown().await {
            tracing::debug!(%error, "closing an idle vendor connection");
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SPACE);
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        read.poll(cx)
    }
}

/// How the request's body is framed on the wire.
#[derive(Clone, Copy)]
enum Outgoing {
    None,
    Length(u64),
    Chunked,
}

/// Sends `request` (origin form, `Host` set) on `conn` and reads the answer's head; the
/// response's body holds the connection and gives it to `checkin` when it ends. `reused`: the
/// connection came from the pool, so a request it could not take at all is handed back.
///
/// Not an `async fn`: the head is serialized before the future is made (it goes out after the
/// yield below), and the future (an
/// `async move` block) keeps the request's parts once, not also the request they came from.
pub(crate) fn send(
    mut conn: Connection,
    request: http::Request<ForwardBody>,
    checkin: Checkin,
    reused: bool,
) -> impl Future<Output = Result<http::Response<ResponseBody>, SendError>> + Send {
    let (parts, mut body) = request.into_parts();
    let outgoing = if body.is_end_stream() {
        Outgoing::None
    } else if let Some(length) = body.size_hint().exact() {
        Outgoing::Length(length)
    } else if let Some(length) = content_length(&parts.headers) {
        Outgoing::Length(length)
    } else {
        Outgoing::Chunked
    };
    // A body where the method has none by usage (a GET with a search body, say) is sent, and
    // the connection closed after it: a vendor that ignored the body (`Content-Length` on a GET
    // is not read by every server) would take it for a next request, the caller's, unchecked,
    // on the connection Postern's other calls share.
    let last = !matches!(outgoing, Outgoing::None) && usually_bodiless(&parts.method);
    let mut head = Vec::with_capacity(512);
    write_head(&mut head, &parts, outgoing, last);
    async move {
        // The write waits for the worker's other ready calls (and the I/O events it has not yet
        // read), as it did when a connection task wrote it: under load the vendor then gets the
        // requests of a pass together. Writing at once cost the p99 (4.5 against 2.6 ms in the
        // bench, docs/BENCHMARKS.md) for no throughput.
        tokio::task::yield_now().await;
        // The vendor may have closed a pooled connection meanwhile; nothing is written yet.
        if reused && !conn.is_usable() {
            return Err(SendError::Unsent(Box::new(http::Request::from_parts(
                parts, body,
            ))));
        }
        let uploaded = match outgoing {
            Outgoing::None => match write_all(&mut conn.io, &head).await {
                Err((0, _)) if reused => {
                    return Err(SendError::Unsent(Box::new(http::Request::from_parts(
                        parts, body,
                    ))))
                }
                Err((_, error)) => Err(Error::Write(error)),
                Ok(()) => conn
                    .io
                    .flush()
                    .await
                    .map(|()| Uploaded::Whole {
                        head: None,
                        early: false,
                    })
                    .map_err(Error::Write),
            },
            // Boxed: the calls without a body, most of them, do not carry its room.
            Outgoing::Length(length) => {
                Box::pin(upload(
                    &mut conn,
                    head,
                    &mut body,
                    &parts.method,
                    Some(length),
                    reused,
                ))
                .await
            }
            Outgoing::Chunked => {
                Box::pin(upload(
                    &mut conn,
                    head,
                    &mut body,
                    &parts.method,
                    None,
                    reused,
                ))
                .await
            }
        };
        let (early, answered_early) = match uploaded {
            Ok(Uploaded::Whole { head, early }) => (head, early),
            // The vendor refused the rest of the body: its answer is the call's, and the
            // connection, with the request unfinished on it, is not reused.
            Ok(Uploaded::Refused((head, framing, _))) => {
                return Ok(refused(conn, head, framing));
            }
            // Nothing went out: the request, its first bytes given back, tries the next
            // connection.
            Ok(Uploaded::Stale(first)) => {
                if let Some(first) = first {
                    body.give_back(first);
                }
                return Err(SendError::Unsent(Box::new(http::Request::from_parts(
                    parts, body,
                ))));
            }
            // A vendor may answer (413, 401…) and close before it has read the whole body: the
            // answer it sent first is the call's (on a connection not reused).
            Err(error) => {
                return match (&error, early_answer(&mut conn, &parts.method)) {
                    (Error::Write(_), Some((head, framing, _))) => Ok(refused(conn, head, framing)),
                    _ => Err(SendError::Failed(error)),
                };
            }
        };
        let mut heard = false;
        let read = match early {
            Some(head) => Ok(head),
            None => read_head(&mut conn, &parts.method, &mut heard).await,
        };
        let (head, framing, keep_alive) = match read {
            Ok(head) => head,
            // A pooled connection the vendor closed as the request went out, before a byte of an
            // answer: a safe request without a body may go once more (RFC 9112 §9.3.1.1).
            Err(error)
                if reused
                    && !heard
                    && matches!(outgoing, Outgoing::None)
                    && parts.method.is_safe()
                    && dropped(&error) =>
            {
                return Err(SendError::Dropped(Box::new(http::Request::from_parts(
                    parts, body,
                ))))
            }
            Err(error) => return Err(SendError::Failed(error)),
        };
        let mut body = ResponseBody {
            conn: Some(conn),
            framing,
            keep_alive: keep_alive && !last && !answered_early,
            checkin: Some(checkin),
        };
        body.end_if_done();
        Ok(http::Response::from_parts(head, body))
    }
}

/// The answer to a request whose body the vendor did not take whole: its connection ends with
/// the answer.
fn refused(
    conn: Connection,
    head: http::response::Parts,
    framing: Framing,
) -> http::Response<ResponseBody> {
    let body = ResponseBody {
        conn: Some(conn),
        framing,
        keep_alive: false,
        checkin: None,
    };
    http::Response::from_parts(head, body)
}

/// A complete answer head among what the vendor has already sent (read without waiting), after
/// a write to it failed.
fn early_answer(conn: &mut Connection, method: &Method) -> Option<Head> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Outside tokio's co-operative budget, which the writes may have spent.
    let drain = std::future::poll_fn(|cx| {
        while conn.buf.len() < MAX_HEAD_BYTES {
            match conn.poll_read_more(cx) {
                Poll::Ready(Ok(0)) | Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(_)) => {}
            }
        }
        Poll::Ready(true)
    });
    let clean = match std::pin::pin!(tokio::task::unconstrained(drain))
        .as_mut()
        .poll(&mut cx)
    {
        Poll::Ready(clean) => clean,
        Poll::Pending => false,
    };
    let head = parse_head(conn, method).ok().flatten()?;
    // After a reset, a read sees the end: an answer that ends at the close would pass for
    // complete. Only one with its own length (or chunks) is taken then.
    (clean || head.1 != Framing::Close).then_some(head)
}

/// Whether `error` says the vendor closed or reset the connection: over TLS, a close without
/// `close_notify` (many servers end idle connections so) reads as an unexpected end.
fn dropped(error: &Error) -> bool {
    match error {
        Error::Closed => true,
        Error::Read(error) => matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Methods whose requests have no body by usage (RFC 9110 gives GET, HEAD, DELETE and OPTIONS
/// content no meaning; TRACE may not have any).
fn usually_bodiless(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The request line and headers, with the framing header Postern chose in place of the caller's;
/// `last`: the connection closes after this request (`Connection: close`).
fn write_head(out: &mut Vec<u8>, parts: &http::request::Parts, outgoing: Outgoing, last: bool) {
    use std::io::Write as _;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match outgoing {
        Outgoing::Length(length) => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        Outgoing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // An empty body is announced where the method usually has one, or the caller did.
        Outgoing::None
            if parts.headers.contains_key(header::CONTENT_LENGTH)
                || !usually_bodiless(&parts.method) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Outgoing::None => {}
    }
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How an upload ended: written whole, or cut short by the vendor's answer.
enum Uploaded {
    /// The whole body went out; the answer's head, if the vendor sent it while the body was
    /// going out and did not refuse the rest (a `2xx` before the end, from a vendor that
    /// answers as it reads: `early`, and its connection is not reused, since what the vendor
    /// made of the rest of the body is not known).
    Whole { head: Option<Head>, early: bool },
    /// The vendor answered with an error (`4xx`, `5xx`) or `Connection: close` before the body
    /// ended: it does not want the rest (RFC 9112 §9.5), and the rest is not sent.
    Refused(Head),
    /// A pooled connection the vendor closed (or wrote on) while the upload waited for the
    /// caller's first bytes: nothing was written; the frame read (if any) is given back.
    Stale(Option<Bytes>),
}

/// Writes the head and the body, framed by `length` (checked) or chunked, while it reads what
/// the vendor sends meanwhile: a vendor may answer before the body has ended (a `413`, a `401`
/// decided on the head) and keep the connection open without reading further, and an upload
/// that waited for its own end would wait for nothing (or for `request_timeout_ms`). A small
/// first frame shares the head's write; what stays in the TLS layer is flushed before the next
/// frame is awaited.
async fn upload(
    conn: &mut Connection,
    head: Vec<u8>,
    body: &mut ForwardBody,
    method: &Method,
    length: Option<u64>,
    reused: bool,
) -> Result<Uploaded, Error> {
    let mut upload = Upload {
        queue: std::collections::VecDeque::from([Bytes::from(head)]),
        length,
        sent: 0,
        reused,
        waited: false,
        started: false,
        ended: false,
        watching: true,
        answered: None,
        early: false,
        gone: false,
    };
    std::future::poll_fn(|cx| upload.poll(cx, conn, body, method)).await
}

/// An upload in progress ([`upload`]).
struct Upload {
    /// What is to be written, in order (the head, chunk framing, the frames' data).
    queue: std::collections::VecDeque<Bytes>,
    length: Option<u64>,
    sent: u64,
    /// The connection came from the pool.
    reused: bool,
    /// The caller's first frame was not there at once: a pooled connection is checked again
    /// before the head goes (a vendor may close an idle connection while a slow caller starts).
    waited: bool,
    /// The body's first frame, or its end, was read: the head may go.
    started: bool,
    /// The body's end was read (its last bytes are queued).
    ended: bool,
    /// Whether the vendor is still read from (not once it closed its side, failed, or sent a
    /// final head).
    watching: bool,
    /// A final head that does not stop the upload.
    answered: Option<Head>,
    /// [`Upload::answered`] came before the whole body had gone out.
    early: bool,
    /// The whole body has gone out (flushed).
    gone: bool,
}

impl Upload {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        body: &mut ForwardBody,
        method: &Method,
    ) -> Poll<Result<Uploaded, Error>> {
        use std::io::Write as _;
        loop {
            // The head waits for the body's first frame (or its end): a body refused at once
            // leaves the vendor with nothing, not with a head.
            while let Some(bytes) = self.queue.front_mut().filter(|_| self.started) {
                match Pin::new(&mut conn.io).poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) => {
                        return self.write_failed(io::ErrorKind::WriteZero.into())
                    }
                    Poll::Ready(Ok(n)) => {
                        bytes.advance(n);
                        if bytes.is_empty() {
                            self.queue.pop_front();
                        }
                    }
                    Poll::Ready(Err(error)) => return self.write_failed(error),
                    Poll::Pending => return self.watch(cx, conn, method),
                }
            }
            if self.ended {
                return match Pin::new(&mut conn.io).poll_flush(cx) {
                    // What the vendor sent while the body went out (a body the socket's
                    // buffers took whole never waited), read without waiting: a refusal ends
                    // the connection with the call, as one heard while the upload waited does.
                    Poll::Ready(Ok(())) => {
                        self.gone = true;
                        match self.watch(cx, conn, method) {
                            Poll::Ready(refused) => Poll::Ready(refused),
                            Poll::Pending => Poll::Ready(Ok(Uploaded::Whole {
                                head: self.answered.take(),
                                early: self.early,
                            })),
                        }
                    }
                    Poll::Ready(Err(error)) => self.write_failed(error),
                    Poll::Pending => self.watch(cx, conn, method),
                };
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                // Nothing sent yet: nothing to hear.
                Poll::Pending if !self.started => {
                    self.waited = true;
                    return Poll::Pending;
                }
                Poll::Pending => {
                    // The caller is slow: what the TLS layer holds goes out meanwhile.
                    if let Poll::Ready(Err(error)) = Pin::new(&mut conn.io).poll_flush(cx) {
                        return self.write_failed(error);
                    }
                    return self.watch(cx, conn, method);
                }
            };
            let data = match frame {
                None => None,
                Some(Err(error)) => return Poll::Ready(Err(Error::RequestBody(Box::new(error)))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Some(data),
                    // Trailers (`ForwardBody` drops the caller's already) are not forwarded.
                    Err(_) => continue,
                },
            };
            if !self.started && self.waited && self.reused && !conn.is_usable() {
                return Poll::Ready(Ok(Uploaded::Stale(data)));
            }
            self.started = true;
            let chunked = self.length.is_none();
            match data {
                Some(data) => {
                    self.sent += data.len() as u64;
                    if self.length.is_some_and(|length| self.sent > length) {
                        return Poll::Ready(Err(Error::RequestLength));
                    }
                    let mut size = Vec::new();
                    if chunked {
                        let _ = write!(size, "{:x}\r\n", data.len());
                    }
                    let end: &[u8] = if chunked { b"\r\n" } else { b"" };
                    if data.len() <= COALESCE_BYTES {
                        self.queue_small(&[&size, &data, end]);
                    } else {
                        if chunked {
                            self.queue_small(&[&size]);
                        }
                        self.queue.push_back(data);
                        if chunked {
                            self.queue.push_back(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                None => {
                    if self.length.is_some_and(|length| self.sent != length) {
                        return Poll::Ready(Err(Error::RequestLength));
                    }
                    if chunked {
                        self.queue_small(&[b"0\r\n\r\n"]);
                    }
                    self.ended = true;
                }
            }
        }
    }

    /// Queues `parts`, small, joined to what is queued last (the head, before the first
    /// frame): they go out in one write.
    fn queue_small(&mut self, parts: &[&[u8]]) {
        let before = self.queue.pop_back();
        let before = before.as_deref().unwrap_or_default();
        let mut joined =
            Vec::with_capacity(before.len() + parts.iter().map(|part| part.len()).sum::<usize>());
        joined.extend_from_slice(before);
        for part in parts {
            joined.extend_from_slice(part);
        }
        self.queue.push_back(Bytes::from(joined));
    }

    /// A write to the vendor failed: the call's failure, unless the vendor had answered
    /// already (its answer is the call's, as when it refused the rest).
    fn write_failed(&mut self, error: io::Error) -> Poll<Result<Uploaded, Error>> {
        Poll::Ready(match self.answered.take() {
            Some(head) => Ok(Uploaded::Refused(head)),
            None => Err(Error::Write(error)),
        })
    }

    /// While the upload waits (for the socket or for the caller): reads what the vendor sent
    /// meanwhile. `Ready` with the vendor's refusal; otherwise `Pending` (the task is woken by
    /// whichever comes first).
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        method: &Method,
    ) -> Poll<Result<Uploaded, Error>> {
        while self.watching {
            if conn.buf.len() >= MAX_HEAD_BYTES {
                return Poll::Ready(Err(Error::Malformed(
                    "the response head is larger than 64 KiB",
                )));
            }
            match conn.poll_read_more(cx) {
                Poll::Pending => break,
                // The vendor closed its side, or the socket failed: what it sent (if anything)
                // is read once the upload ends or its write fails.
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.watching = false,
                Poll::Ready(Ok(_)) => match parse_head(conn, method) {
                    Ok(None) => {}
                    Ok(Some(head)) => {
                        self.watching = false;
                        let (parts, _, keep_alive) = &head;
                        if !keep_alive
                            || parts.status.is_client_error()
                            || parts.status.is_server_error()
                        {
                            return Poll::Ready(Ok(Uploaded::Refused(head)));
                        }
                        self.answered = Some(head);
                        self.early = !self.gone;
                    }
                    Err(error) => return Poll::Ready(Err(error)),
                },
            }
        }
        Poll::Pending
    }
}

/// Writes all of `bytes`; on failure, how many were written before it.
async fn write_all(io: &mut Io, mut bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    let total = bytes.len();
    while !bytes.is_empty() {
        match io.write(bytes).await {
            Ok(0) => {
                return Err((
                    total - bytes.len(),
                    io::Error::from(io::ErrorKind::WriteZero),
                ))
            }
            Ok(n) => bytes = &bytes[n..],
            Err(error) => return Err((total - bytes.len(), error)),
        }
    }
    Ok(())
}

/// A message's `Content-Length`, when it has exactly one valid value (digits only).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_length(value.as_bytes())
}

pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the vendor closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Reads the answer's head (skipping interim 1xx answers): its parts, how its body ends, and
/// whether the connection may carry another request after it.
/// `heard`: set once any byte of an answer (an interim one too) has been read.
async fn read_head(
    conn: &mut Connection,
    method: &Method,
    heard: &mut bool,
) -> Result<Head, Error> {
    // How much of the buffer was parsed and found to end no head yet.
    let mut scanned = 0;
    loop {
        if may_end_a_head(&conn.buf, scanned) {
            if let Some(parsed) = parse_head(conn, method)? {
                return Ok(parsed);
            }
            scanned = conn.buf.len();
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(Error::Malformed("the response head is larger than 64 KiB"));
        }
        match conn.read_more().await {
            Ok(0) if conn.buf.is_empty() => return Err(Error::Closed),
            Ok(0) => return Err(Error::Malformed("the connection closed inside the head")),
            Ok(_) => *heard = true,
            Err(error) => return Err(Error::Read(error)),
        }
    }
}

/// Whether `buf`, whose first `scanned` bytes were parsed and found to end no head (`0`: none
/// parsed yet), may now hold a head's end: a blank line (`\n\n` or `\n\r\n`) among the bytes
/// read since and the three before them. hyper's check, so that a head trickled a byte at a
/// time is not parsed again whole at every byte (quadratic in its length, for a caller
/// unauthenticated until its head ends).
pub(crate) fn may_end_a_head(buf: &[u8], scanned: usize) -> bool {
    if scanned == 0 {
        return true;
    }
    let tail = &buf[scanned.saturating_sub(3).min(buf.len())..];
    tail.iter().enumerate().any(|(at, &byte)| {
        byte == b'\n' && matches!(tail.get(at + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..]))
    })
}

/// A final head: its parts, how its body ends, and whether the connection may be reused.
type Head = (http::response::Parts, Framing, bool);

/// What one parse of the buffer found.
enum Parsed {
    Partial,
    /// An interim (1xx) answer, consumed.
    Interim,
    TooManyHeaders,
    Final(Head),
}

/// A complete final head from the buffer, if it holds one (interim answers are consumed). Most
/// answers carry few headers: the buffer is parsed with room for 32 first, and only a head with
/// more is parsed again with room for [`MAX_HEADERS`].
fn parse_head(conn: &mut Connection, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        if conn.buf.is_empty() {
            return Ok(None);
        }
        let parsed = match parse_with::<32>(conn, method)? {
            Parsed::TooManyHeaders => parse_with::<MAX_HEADERS>(conn, method)?,
            parsed => parsed,
        };
        match parsed {
            Parsed::Partial => return Ok(None),
            Parsed::Interim => continue,
            Parsed::Final(head) => return Ok(Some(head)),
            Parsed::TooManyHeaders => {
                return Err(Error::Malformed("the response has more than 128 headers"))
            }
        }
    }
}

/// One parse of the buffer with room for `N` headers.
fn parse_with<const N: usize>(conn: &mut Connection, method: &Method) -> Result<Parsed, Error> {
    // Left uninitialized: httparse writes the slots it fills.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        &conn.buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Ok(Parsed::TooManyHeaders),
        Err(_) => return Err(Error::Malformed("the response head is not HTTP/1.1")),
    };
    let code = response.code.unwrap_or(0);
    if code == 101 {
        return Err(Error::Malformed("the vendor switched protocols unasked"));
    }
    if (100..200).contains(&code) {
        conn.buf.advance(head_len);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::Malformed("the response status is not a valid code"))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each name and value sits in the buffer, so the values can share its bytes.
    let base = conn.buf.as_ptr() as usize;
    let offset = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let count = response.headers.len();
    let mut spans = [const { (0..0, 0..0) }; N];
    for (span, found) in spans.iter_mut().zip(response.headers.iter()) {
        *span = (offset(found.name.as_bytes()), offset(found.value));
    }
    let head = conn.buf.split_to(head_len).freeze();
    // Room for the two headers the gateway adds to every answer (its request id and audit
    // index): a map sized for the vendor's headers alone can be full (3 vendor headers fill
    // the 4-slot table `with_capacity(3)` makes) and would grow, and allocate, on the first.
    let mut headers = HeaderMap::with_capacity(count + 2);
    for (name, value) in spans[..count].iter().cloned() {
        let name = HeaderName::from_bytes(&head[name])
            .map_err(|_| Error::Malformed("a response header name is invalid"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| Error::Malformed("a response header value is invalid"))?;
        headers.append(name, value);
    }
    let framing = framing(&headers, method, status)?;
    // Downstream sees at most one `content-length`, whatever repetition or list the vendor
    // sent, so every reader (`content_length`, the caller-facing server) takes it as is: values
    // that agree become one; values that differ (an answer with a body has failed in `framing`
    // already, so only a HEAD, 204 or 304 answer gets here with them) are dropped. The usual
    // single plain value is left alone, not parsed again.
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let repeated = match (lengths.next(), lengths.next()) {
        (Some(only), None) => only.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        (None, _) => false,
    };
    if repeated {
        match agreed_length(&headers) {
            Ok(Some(length)) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
    let keep_alive = version == Version::HTTP_11
        && framing != Framing::Close
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), b"close"));
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Final((parts, framing, keep_alive)))
}

/// The length every `Content-Length` value agrees on (repeated lines and `5, 5` lists allowed,
/// RFC 9110 §8.6), or `None` without one.
fn agreed_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let parsed = parse_length(part.trim_ascii())
                .ok_or(Error::Malformed("the response's Content-Length is invalid"))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(Error::Malformed(
                    "the response has differing Content-Length values",
                ));
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether the `Transfer-Encoding` lines of `headers`, read as one list, name `chunked` alone.
pub(crate) fn chunked_alone(headers: &HeaderMap) -> bool {
    let mut parts = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','));
    matches!(
        (parts.next(), parts.next()),
        (Some(only), None) if only.trim_ascii().eq_ignore_ascii_case(b"chunked")
    )
}

/// How the body of an answer with these headers, to `method`, with `status`, ends.
fn framing(headers: &HeaderMap, method: &Method, status: StatusCode) -> Result<Framing, Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if lengths.iter().next().is_some() {
            return Err(Error::Malformed(
                "the response has both Transfer-Encoding and Content-Length",
            ));
        }
        // Postern never offers a transfer coding (no `TE`), so `chunked` is the only one a
        // vendor may use (RFC 9110 §10.1.4): any other would reach the scanner still encoded.
        return match chunked_alone(headers) {
            true => Ok(Framing::Chunked(Chunk::Size)),
            false => Err(Error::Malformed(
                "the response's Transfer-Encoding is not chunked alone",
            )),
        };
    }
    Ok(match agreed_length(headers)? {
        Some(0) => Framing::Done,
        Some(length) => Framing::Length(length),
        None => Framing::Close,
    })
}

pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// A vendor's response body read from its connection; the connection goes back to the pool
/// when the body ends cleanly (see the module notes), and is closed otherwise (also when the
/// body is dropped unread).
pub struct ResponseBody {
    conn: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    checkin: Option<Checkin>,
}

impl ResponseBody {
    /// At the body's end: the connection back to the pool, if it can carry another request.
    fn end_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let (Some(conn), Some(checkin)) = (self.conn.take(), self.checkin.take()) {
            if self.keep_alive && conn.buf.is_empty() {
                checkin.put(conn);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// The next piece of the body from the buffer, reading when it is empty.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => {
                    self.end_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let data = conn.buf.split_to(take).freeze();
                    self.framing = match left - take as u64 {
                        0 => Framing::Done,
                        left => Framing::Length(left),
                    };
                    self.end_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) if !conn.buf.is_empty() => {
                    match chunk_step(&mut conn.buf, state) {
                        Ok(Step::Data(data, next)) => {
                            self.framing = Framing::Chunked(next);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Step::Next(next)) => {
                            self.framing = next;
                            continue;
                        }
                        Ok(Step::NeedMore) => {}
                        Err(error) => return self.fail(error),
                    }
                }
                _ => {}
            }
            let conn = self.conn.as_mut().expect("checked above");
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) if self.framing == Framing::Close => {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(Error::Malformed(
                        "the vendor closed the connection before the body ended",
                    ))
                }
                Ok(_) => {}
                Err(error) => return self.fail(Error::Read(error)),
            }
        }
    }
}

/// What one step of chunked decoding made of the buffer.
enum Step {
    Data(Bytes, Chunk),
    Next(Framing),
    NeedMore,
}

fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, Error> {
    Ok(match state {
        Chunk::Size => match chunk_size_line(buf)? {
            Some((used, 0)) => {
                buf.advance(used);
                Step::Next(Framing::Chunked(Chunk::Trailers))
            }
            Some((used, size)) => {
                buf.advance(used);
                Step::Next(Framing::Chunked(Chunk::Data(size)))
            }
            None => Step::NeedMore,
        },
        Chunk::Data(left) => {
            let take = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(take).freeze();
            let next = match left - take as u64 {
                0 => Chunk::DataEnd,
                left => Chunk::Data(left),
            };
            Step::Data(data, next)
        }
        Chunk::DataEnd if buf.len() < 2 => Step::NeedMore,
        Chunk::DataEnd if buf.starts_with(b"\r\n") => {
            buf.advance(2);
            Step::Next(Framing::Chunked(Chunk::Size))
        }
        Chunk::DataEnd => return Err(Error::Malformed("a chunk does not end with CRLF")),
        Chunk::Trailers => {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            match httparse::parse_headers(buf, &mut fields) {
                // Trailer fields are read, checked and dropped.
                Ok(httparse::Status::Complete((used, _))) => {
                    buf.advance(used);
                    Step::Next(Framing::Done)
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_META_BYTES => {
                    return Err(Error::Malformed("the trailer section is too long"))
                }
                Ok(httparse::Status::Partial) => Step::NeedMore,
                Err(_) => return Err(Error::Malformed("the trailer section is invalid")),
            }
        }
    })
}

/// A chunk-size line (RFC 9112 §7.1), strictly: 1 to 16 hex digits, then optional extensions
/// (`;` after optional blanks, then visible characters, blanks and obs-text only), then CRLF.
/// The line's length and the size, or `None` while the line is incomplete.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return match buf.len() > MAX_CHUNK_META_BYTES {
            true => Err(Error::Malformed("a chunk-size line is too long")),
            false => Ok(None),
        };
    };
    if end > MAX_CHUNK_META_BYTES {
        return Err(Error::Malformed("a chunk-size line is too long"));
    }
    let Some(line) = buf[..end].strip_suffix(b"\r") else {
        return Err(Error::Malformed("a chunk-size line does not end with CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Malformed("a chunk size is invalid"));
    }
    let size = line[..digits].iter().fold(0u64, |size, digit| {
        (size << 4) | u64::from(hex_value(*digit))
    });
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let rest = &line[digits..];
    let extensions = &rest[rest.iter().take_while(|b| blank(b)).count()..];
    let allowed = |b: &u8| blank(b) || (b'!'..=b'~').contains(b) || *b >= 0x80;
    if !extensions.is_empty() && (extensions[0] != b';' || !extensions.iter().all(allowed)) {
        return Err(Error::Malformed("a chunk extension is invalid"));
    }
    Ok(Some((end + 1, size)))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::RequestBodyState;
    use crate::fuzz::Fuzz;
    use crate::upstream::{build_client, UpstreamClient, UpstreamError, UpstreamOptions};
    use http_body_util::BodyExt as _;

    /// One scripted answer: its bytes, and whether the vendor closes the connection after it.
    /// Empty bytes and `true`: the vendor reads the request and closes without a word.
    struct Answer(&'static [u8], bool);

    const PAUSE: &[u8] = b"<pause>";

    /// A loopback vendor that reads each request (head, then a `content-length` or chunked
    /// body), keeps its bytes, and writes the next scripted answer; it closes a connection after
    /// an answer marked so, and when the script is done.
    struct Vendor {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
        /// The accept loop: stopped when the vendor is dropped, so a test that makes many
        /// vendors does not hold a listening socket for each.
        accepting: tokio::task::JoinHandle<()>,
    }

    impl Drop for Vendor {
        fn drop(&mut self) {
            self.accepting.abort();
        }
    }

    async fn vendor(script: Vec<Answer>) -> Vendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let (count, seen) = (accepted.clone(), requests.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (script.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(request) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        seen.lock().unwrap().push(request);
                        let next = script.lock().unwrap().next();
                        let Some(Answer(bytes, close)) = next else {
                            return;
                        };
                        // `<pause>` in an answer: the rest follows 100 ms later.
                        let (first, later) = match memchr::memmem::find(bytes, PAUSE) {
                            Some(at) => (&bytes[..at], Some(&bytes[at + PAUSE.len()..])),
                            None => (bytes, None),
                        };
                        if stream.write_all(first).await.is_err() {
                            return;
                        }
                        if let Some(later) = later {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if stream.write_all(later).await.is_err() {
                                return;
                            }
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        Vendor {
            addr,
            accepted,
            requests,
            accepting,
        }
    }

    /// One whole request from `stream` (bytes past it stay in `buf`); `None` at the end.
    async fn read_request(
        stream: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map(|n| n.trim().parse::<usize>().unwrap());
                let chunked = head.contains("transfer-encoding: chunked");
                let total = match (length, chunked) {
                    (Some(length), _) => Some(end + 4 + length),
                    (None, true) => buf[end + 4..]
                        .windows(5)
                        .position(|w| w == b"0\r\n\r\n")
                        .map(|at| end + 4 + at + 5),
                    (None, false) => Some(end + 4),
                };
                if let Some(total) = total.filter(|total| buf.len() >= *total) {
                    return Some(buf.drain(..total).collect());
                }
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn client() -> UpstreamClient {
        build_client(UpstreamOptions {
            guard: postern_netguard::Guard::new(vec!["127.0.0.1/32".parse().unwrap()]),
            allow_plaintext: true,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            client_auth: None,
        })
        .unwrap()
    }

    fn request(
        method: Method,
        addr: SocketAddr,
        body: &'static [u8],
    ) -> http::Request<ForwardBody> {
        let body = ForwardBody::full(
            Bytes::from_static(body),
            Arc::new(RequestBodyState::default()),
        );
        let mut request = http::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = format!("http://{addr}/v1/x?q=1").parse().unwrap();
        request
    }

    /// Status and whole body of one call, or the error of the head or of the body.
    async fn call(
        client: &UpstreamClient,
        request: http::Request<ForwardBody>,
    ) -> Result<(u16, Vec<u8>), String> {
        let (response, _) = client.request(request).await.map_err(|e| error_text(&e))?;
        status_and_body(response).await
    }

    /// The status and whole body of `response`, or the error its body ends with.
    async fn status_and_body<B>(response: http::Response<B>) -> Result<(u16, Vec<u8>), String>
    where
        B: Body,
        B::Error: std::error::Error + 'static,
    {
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| error_text(&e))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }

    fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            text = format!("{text}: {inner}");
            source = inner.source();
        }
        text
    }

    async fn get(client: &UpstreamClient, vendor: &Vendor) -> Result<(u16, Vec<u8>), String> {
        call(client, request(Method::GET, vendor.addr, b"")).await
    }

    /// A vendor's answer from pieces that are valid, nearly valid and hostile: status lines,
    /// interim answers, `Content-Length` and `Transfer-Encoding` in agreeing and conflicting
    /// forms, chunked bodies with extensions, trailers and broken framing, bodies shorter or
    /// longer than declared, and now and then a few bytes mutated.
    fn fuzzed_answer(fuzz: &mut Fuzz) -> Vec<u8> {
        let plain = fuzz.below(2) == 0;
        let status = if plain {
            fuzz.pick(&["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 201 "])
        } else {
            fuzz.pick(&[
                "HTTP/1.1 200 OK",
                "HTTP/1.0 200 OK",
                "HTTP/1.1 204 No Content",
                "HTTP/1.1 304",
                "HTTP/1.1 999 Odd",
                "HTTP/1.1 20 OK",
                "HTTP/2 200",
                "http/1.1 200 OK",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
                "HTTP/1.1 200 OK ",
                "HTTP/1.1 1000",
            ])
        };
        let body = fuzz.pick(&["", "hello", "hello world", "{\"ok\":true}"]);
        let eol = if !plain && fuzz.below(8) == 0 {
            "\n"
        } else {
            "\r\n"
        };
        let mut head = format!("{status}{eol}");
        let chunked = fuzz.below(3) == 0;
        let framing = if chunked {
            if plain {
                vec!["transfer-encoding: chunked".to_string()]
            } else {
                let coding = fuzz.pick(&[
                    "chunked",
                    "Chunked",
                    " chunked",
                    "gzip, chunked",
                    "chunked, chunked",
                    "chunked;q=1",
                    "identity",
                    "",
                ]);
                let mut lines = vec![format!("transfer-encoding: {coding}")];
                if fuzz.below(4) == 0 {
                    lines.push(format!("content-length: {}", body.len()));
                }
                lines
            }
        } else if plain || fuzz.below(4) != 0 {
            let length = body.len();
            let value = if plain {
                length.to_string()
            } else {
                match fuzz.below(8) {
                    0 => format!("{length}, {length}"),
                    1 => format!("{length}, {}", length + 1),
                    2 => format!("+{length}"),
                    3 => format!("{}", length + 2),
                    4 => format!("{}", length.saturating_sub(2)),
                    5 => "x".to_string(),
                    6 => format!("0{length}"),
                    _ => length.to_string(),
                }
            };
            let mut lines = vec![format!("content-length: {value}")];
            if !plain && fuzz.below(6) == 0 {
                lines.push(format!("Content-Length: {length}"));
            }
            lines
        } else {
            vec![]
        };
        let mut others = vec![];
        for _ in 0..fuzz.below(4) {
            let (name, value) = match plain {
                true => (
                    fuzz.pick(&["content-type", "x-request-id", "cache-control"]),
                    fuzz.pick(&["application/json", "abc", "no-store"]),
                ),
                false => (
                    fuzz.pick(&[
                        "connection",
                        "x-odd",
                        "bad name",
                        "",
                        "keep-alive",
                        "upgrade",
                    ]),
                    fuzz.pick(&["close", "keep-alive", "a\rb", "\u{e9}", "\tv", "h2c", ""]),
                ),
            };
            others.push(format!("{name}: {value}"));
        }
        for line in framing.iter().chain(&others) {
            head.push_str(line);
            head.push_str(eol);
        }
        head.push_str(eol);
        let mut bytes = head.into_bytes();
        if chunked {
            let mut size_line = |size: usize| match (plain, fuzz.below(10)) {
                (false, 0) => format!("{size:x};ext=\"v\"\r\n"),
                (false, 1) => format!("{size:X} \r\n"),
                (false, 2) => format!("{size:x}\n"),
                (false, 3) => format!("0000{size:x}\r\n"),
                (false, 4) => format!("{size:x}g\r\n"),
                _ => format!("{size:x}\r\n"),
            };
            if !body.is_empty() {
                bytes.extend(size_line(body.len()).into_bytes());
                bytes.extend(body.as_bytes());
                bytes.extend(b"\r\n");
            }
            bytes.extend(size_line(0).into_bytes());
            if !plain && fuzz.below(3) == 0 {
                bytes.extend(
                    fuzz.pick(&["x-trailer: v\r\n", "bad trailer\r\n"])
                        .as_bytes(),
                );
            }
            bytes.extend(b"\r\n");
        } else {
            bytes.extend(body.as_bytes());
        }
        if !plain {
            fuzz.mutate(&mut bytes, b"\r\n: \t0;");
        }
        bytes
    }

    /// What hyper's HTTP/1.1 client makes of `answer` to a GET: the status and whole body, or
    /// an error.
    async fn hyper_reads(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let answer = answer.to_vec();
        let vendor = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if server.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = server.write_all(&answer).await;
            let _ = server.shutdown().await;
            // Held open (half-closed) until the client is done.
            let _ = server.read_to_end(&mut Vec::new()).await;
        });
        let read = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                    .await
                    .map_err(|e| error_text(&e))?;
            tokio::spawn(conn);
            let request = http::Request::get("/v1/x?q=1")
                .header(header::HOST, "vendor.test")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| error_text(&e))?;
            status_and_body(response).await
        };
        let result = tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        vendor.abort();
        result
    }

    /// Postern's own HTTP/1.1 client reads vendors' answers at least as strictly as hyper's,
    /// with the same meaning: over a thousand generated answers (valid, nearly valid, hostile,
    /// byte-mutated), every one it accepts, hyper's client reads as the same status and the same
    /// body bytes.
    #[tokio::test]
    async fn the_clients_parser_agrees_with_hyper_on_fuzzed_answers() {
        let seed = 0x00c1_1e47_f022;
        let mut fuzz = Fuzz(seed);
        let client = client();
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..1500 {
            let bytes = fuzzed_answer(&mut fuzz);
            let shown = crate::fuzz::shown(seed, case, &bytes);
            let script: &'static [u8] = Box::leak(bytes.clone().into_boxed_slice());
            let vendor = vendor(vec![Answer(script, true)]).await;
            let ours = tokio::time::timeout(Duration::from_secs(2), get(&client, &vendor))
                .await
                .unwrap_or_else(|_| Err("timed out".to_string()));
            match ours {
                Ok(read) => {
                    accepted += 1;
                    assert_eq!(hyper_reads(&bytes).await, Ok(read), "{shown}");
                }
                Err(_) => refused += 1,
            }
        }
        // The generator reaches both sides.
        assert!(
            accepted > 500 && refused > 200,
            "accepted {accepted}, refused {refused}"
        );
    }

    #[tokio::test]
    async fn chunked_and_length_bodies_are_read_and_the_connection_reused() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n", false),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain", false),
            Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        ])
        .await;
        let client = client();
        assert_eq!(
            get(&client, &vendor).await.unwrap(),
            (200, b"hello world".to_vec())
        );
        assert_eq!(
            get(&client, &vendor).await.unwrap(),
            (200, b"again".to_vec())
        );
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn answers_with_up_to_128_headers_are_read() {
        let head = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
                (0..MAX_HEADERS - 1)
                    .map(|n| format!("x-h{n}: v{n}\r\n"))
                    .collect::<String>()
            )
            .into_boxed_str(),
        );
        let vendor = vendor(vec![Answer(head.as_bytes(), false)]).await;
        let (response, _) = client()
            .request(request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        assert_eq!(response.headers().len(), MAX_HEADERS);
        assert_eq!(response.headers()["x-h100"], "v100");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let vendor = vendor(vec![Answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
        )])
        .await;
        assert_eq!(
            get(&client(), &vendor).await.unwrap(),
            (201, b"ok".to_vec())
        );
    }

    #[tokio::test]
    async fn heads_without_a_body_leave_the_connection_ready() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", false),
            Answer(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Answer(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
                false,
            ),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        ])
        .await;
        let client = client();
        let head = call(&client, request(Method::HEAD, vendor.addr, b"")).await;
        assert_eq!(head.unwrap(), (200, vec![]));
        assert_eq!(get(&client, &vendor).await.unwrap(), (204, vec![]));
        assert_eq!(get(&client, &vendor).await.unwrap(), (304, vec![]));
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, vec![]));
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_that_cannot_carry_another_request_are_not_reused() {
        let vendor = vendor(vec![
            // Delimited by the close: read to the end, then a new connection.
            Answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
            Answer(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                false,
            ),
            // Bytes past the body: the connection is out of step.
            Answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
                false,
            ),
            Answer(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast", false),
        ])
        .await;
        let client = client();
        assert_eq!(
            get(&client, &vendor).await.unwrap(),
            (200, b"until the end".to_vec())
        );
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(
            get(&client, &vendor).await.unwrap(),
            (200, b"last".to_vec())
        );
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_bodiless_safe_request_the_vendor_dropped_unanswered_goes_again() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none", false),
            Answer(b"", true),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", false),
        ])
        .await;
        let client = client();
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"one".to_vec()));
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"two".to_vec()));
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(vendor.requests.lock().unwrap().len(), 3);
    }

    /// A vendor's close reads as dropped however it shows: a plain end, a reset, or (TLS
    /// without `close_notify`) an unexpected end; other read errors do not.
    #[test]
    fn what_counts_as_a_dropped_connection() {
        let read = |kind: io::ErrorKind| Error::Read(io::Error::from(kind));
        assert!(super::dropped(&Error::Closed));
        assert!(super::dropped(&read(io::ErrorKind::ConnectionReset)));
        assert!(super::dropped(&read(io::ErrorKind::UnexpectedEof)));
        assert!(!super::dropped(&read(io::ErrorKind::TimedOut)));
        assert!(!super::dropped(&read(io::ErrorKind::InvalidData)));
    }

    #[tokio::test]
    async fn a_dropped_request_goes_again_once_only_and_on_a_new_connection() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none", false),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", false),
            Answer(b"", true),
            Answer(b"", true),
        ])
        .await;
        let client = client();
        // Two connections in the pool, both idle.
        let (first, second) = tokio::join!(get(&client, &vendor), get(&client, &vendor));
        assert_eq!(first.unwrap().0, 200);
        assert_eq!(second.unwrap().0, 200);
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
        // Dropped on a pooled connection, then again on the new one: that failure is final,
        // and the other pooled connection is not tried.
        let error = get(&client, &vendor).await.unwrap_err();
        assert!(
            error.contains("closed the connection before it answered"),
            "{error}"
        );
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(vendor.requests.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_post_the_vendor_dropped_unanswered_is_not_sent_again() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none", false),
            Answer(b"", true),
        ])
        .await;
        let client = client();
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"one".to_vec()));
        let error = call(&client, request(Method::POST, vendor.addr, b"a=1"))
            .await
            .unwrap_err();
        assert!(
            error.contains("closed the connection before it answered"),
            "{error}"
        );
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(vendor.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_while_a_slow_caller_starts_its_body_is_not_used() {
        // The vendor closes the connection 100 ms after its first answer: after the upload
        // below took it from the pool, before the caller's first bytes come.
        let vendor = vendor(vec![
            Answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none<pause>",
                true,
            ),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", false),
        ])
        .await;
        let client = client();
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"one".to_vec()));
        let (frames, rest) = tokio::sync::mpsc::unbounded_channel();
        let body = ForwardBody::new(
            crate::body::CallerBody::Channel(rest),
            1 << 20,
            Arc::new(RequestBodyState::default()),
        );
        let mut upload = http::Request::new(body);
        *upload.method_mut() = Method::POST;
        *upload.uri_mut() = format!("http://{}/v1/files", vendor.addr).parse().unwrap();
        let caller = async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            frames.send(Bytes::from_static(b"first,")).unwrap();
            frames.send(Bytes::from_static(b"second")).unwrap();
        };
        let (called, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), call(&client, upload)),
            caller
        );
        assert_eq!(
            called.expect("the call ended").unwrap(),
            (200, b"two".to_vec())
        );
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
        let requests = vendor.requests.lock().unwrap();
        let posted = String::from_utf8_lossy(&requests[1]);
        assert!(
            posted.starts_with("POST /v1/files HTTP/1.1\r\n"),
            "{posted}"
        );
        assert!(
            posted.ends_with("\r\n\r\n6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n"),
            "{posted}"
        );
    }

    #[tokio::test]
    async fn bytes_a_vendor_sends_on_an_idle_connection_retire_it() {
        // After its answer the vendor sends a 408 on the idle connection: never the next
        // call's answer.
        let vendor = vendor(vec![
            Answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none<pause>HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", false),
        ])
        .await;
        let client = client();
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"one".to_vec()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"two".to_vec()));
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
    }

    /// A vendor that reads one request's head and writes `answer`; then, with `hold`, neither
    /// reads nor closes (until the test ends), else closes at once, the rest unread (a reset).
    async fn answering_vendor(answer: &'static [u8], hold: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(answer).await;
            if hold {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        addr
    }

    fn upload_to(addr: SocketAddr, bytes: usize) -> http::Request<ForwardBody> {
        let body = ForwardBody::full(
            Bytes::from(vec![b'u'; bytes]),
            Arc::new(RequestBodyState::default()),
        );
        let mut upload = http::Request::new(body);
        *upload.method_mut() = Method::POST;
        *upload.uri_mut() = format!("http://{addr}/v1/files").parse().unwrap();
        upload
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_upload_ended_is_the_calls_answer() {
        // The vendor reads the head, answers 413 and closes with the body unread (a reset).
        let addr = answering_vendor(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
            false,
        )
        .await;
        assert_eq!(
            call(&client(), upload_to(addr, 32 * 1024 * 1024))
                .await
                .unwrap(),
            (413, b"too big!".to_vec())
        );
    }

    #[tokio::test]
    async fn a_refusal_sent_while_the_vendor_stops_reading_ends_the_upload() {
        // 32 MiB fill the sockets' buffers many times over: the upload's writes wait, and only
        // the answer read meanwhile ends the call.
        for answer in [
            &b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!"[..],
            // A success that says the connection closes: the vendor takes no more either.
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nenough!!",
            // After an interim answer.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 Unauthorized\r\ncontent-length: 8\r\n\r\nwho are?",
        ] {
            let addr = answering_vendor(answer, true).await;
            let called = tokio::time::timeout(
                Duration::from_secs(10),
                call(&client(), upload_to(addr, 32 * 1024 * 1024)),
            )
            .await
            .expect("the answer ended the upload");
            let (status, body) = called.unwrap();
            let expected = String::from_utf8_lossy(answer);
            assert!(expected.ends_with(std::str::from_utf8(&body).unwrap()), "{expected}");
            assert!(
                expected.contains(&format!("HTTP/1.1 {status} ")) && status != 100,
                "{status} for {expected}"
            );
        }
    }

    #[tokio::test]
    async fn a_success_sent_before_the_body_ended_leaves_the_upload_going() {
        // The vendor answers an upload's head at once, reads the whole body, then sends the body
        // of its answer (the length it read); it answers other requests `ok`.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let length = 4 * 1024 * 1024;
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            let mut chunk = [0u8; 8192];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        if !head.contains(&format!("content-length: {length}")) {
                            buf.drain(..end);
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                            continue;
                        }
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
                            .await
                            .unwrap();
                        while buf.len() < end + length {
                            let mut chunk = [0u8; 65536];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let read = buf.len() - end;
                        stream
                            .write_all(format!("{read:08}").as_bytes())
                            .await
                            .unwrap();
                        buf.drain(..end + length);
                    }
                });
            }
        });
        let client = client();
        let called = tokio::time::timeout(
            Duration::from_secs(20),
            call(&client, upload_to(addr, length)),
        )
        .await
        .expect("the call ended");
        assert_eq!(called.unwrap(), (200, b"04194304".to_vec()));
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            call(&client, request(Method::GET, addr, b"")),
        )
        .await
        .expect("the second call ended");
        assert_eq!(next.unwrap(), (200, b"ok".to_vec()));
        // What a vendor answering early made of the rest is not known: its connection is not
        // reused (as Envoy does with a response complete before its request).
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_success_sent_before_the_vendor_closed_mid_upload_is_the_calls_answer() {
        let addr = answering_vendor(
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\naccepted",
            false,
        )
        .await;
        let called = tokio::time::timeout(
            Duration::from_secs(10),
            call(&client(), upload_to(addr, 32 * 1024 * 1024)),
        )
        .await
        .expect("the call ended");
        assert_eq!(called.unwrap(), (200, b"accepted".to_vec()));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let vendor = vendor(vec![
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.", false),
            Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        ])
        .await;
        let client = client();
        let (response, _) = client
            .request(request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"half.");
        drop(body);
        assert_eq!(get(&client, &vendor).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn agreeing_content_lengths_reach_the_caller_as_one() {
        let vendor = vendor(vec![Answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2, 2\r\n\r\nok",
            true,
        )])
        .await;
        let (response, _) = client()
            .request(request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        let lengths: Vec<_> = response
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert_eq!(lengths, [HeaderValue::from(2u64)]);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    /// A bodiless answer's differing lengths are not framing (`framing` never reads them), so
    /// they do not fail the call; they are dropped rather than passed on to the caller.
    #[tokio::test]
    async fn differing_content_lengths_on_a_head_answer_are_dropped() {
        let vendor = vendor(vec![Answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            true,
        )])
        .await;
        let (response, _) = client()
            .request(request(Method::HEAD, vendor.addr, b""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[tokio::test]
    async fn malformed_answers_fail_closed() {
        let big = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                "a".repeat(MAX_HEAD_BYTES)
            )
            .into_boxed_str(),
        );
        let many = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\n{}\r\n",
                "x-h: 1\r\n".repeat(MAX_HEADERS + 1)
            )
            .into_boxed_str(),
        );
        let cases: &[(&'static [u8], &str)] = &[
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
                "both Transfer-Encoding and Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                "differing Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
                "differing Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
                "Content-Length is invalid",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                "switched protocols",
            ),
            (b"SMTP ready\r\n\r\n", "not HTTP/1.1"),
            (big.as_bytes(), "larger than 64 KiB"),
            (many.as_bytes(), "more than 128 headers"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size is invalid",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX",
                "does not end with CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
                "closed the connection before the body ended",
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", "not chunked alone"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", "not chunked alone"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nbytes", "not chunked alone"),
            // A stray empty line is no last chunk.
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nZ\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "chunk size is invalid"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\nhello\r\n0\r\n\r\n", "does not end with CRLF"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\x01\r\nhello\r\n0\r\n\r\n", "chunk extension is invalid"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n", "chunk extension is invalid"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n", "chunk size is invalid"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nbad trailer\r\n\r\n", "trailer section is invalid"),
        ];
        for &(answer, expected) in cases {
            let vendor = vendor(vec![Answer(answer, true)]).await;
            let error = get(&client(), &vendor).await.expect_err(expected);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        // A vendor that closes without a word.
        let vendor = vendor(vec![]).await;
        let error = client()
            .request(request(Method::GET, vendor.addr, b""))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                UpstreamError::H1 {
                    error: Error::Closed,
                    addr,
                } if addr == vendor.addr
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_request_is_framed_by_postern() {
        let vendor = vendor(
            (0..4)
                .map(|_| Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false))
                .collect(),
        )
        .await;
        let client = client();
        call(&client, request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        call(&client, request(Method::POST, vendor.addr, b""))
            .await
            .unwrap();
        call(&client, request(Method::POST, vendor.addr, b"a=1&b=2"))
            .await
            .unwrap();
        // The caller's own framing headers never reach the vendor: the body's length does.
        let mut lying = request(Method::PUT, vendor.addr, b"abc");
        lying
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        lying
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("api.example"));
        call(&client, lying).await.unwrap();
        let seen = vendor.requests.lock().unwrap().clone();
        let text: Vec<String> = seen
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        let host = format!("host: {}", vendor.addr);
        assert_eq!(text[0], format!("GET /v1/x?q=1 HTTP/1.1\r\n{host}\r\n\r\n"));
        assert_eq!(
            text[1],
            format!("POST /v1/x?q=1 HTTP/1.1\r\n{host}\r\ncontent-length: 0\r\n\r\n")
        );
        assert_eq!(
            text[2],
            format!("POST /v1/x?q=1 HTTP/1.1\r\n{host}\r\ncontent-length: 7\r\n\r\na=1&b=2")
        );
        assert_eq!(
            text[3],
            "PUT /v1/x?q=1 HTTP/1.1\r\nhost: api.example\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
    }
    /// A body on a GET (a search body, say) goes out with `Connection: close` and its connection
    /// is not pooled: a vendor that ignored it would read the bytes as a next request, which
    /// must not be one Postern never checked on a connection its next calls share.
    #[tokio::test]
    async fn a_body_on_a_get_closes_its_connection() {
        let vendor = vendor(
            (0..3)
                .map(|_| Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false))
                .collect(),
        )
        .await;
        let client = client();
        let smuggled = b"GET /v1/admin HTTP/1.1\r\nhost: vendor\r\n\r\n";
        call(&client, request(Method::GET, vendor.addr, smuggled))
            .await
            .unwrap();
        call(&client, request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        call(&client, request(Method::GET, vendor.addr, b""))
            .await
            .unwrap();
        let seen = vendor.requests.lock().unwrap().clone();
        let first = String::from_utf8_lossy(&seen[0]).into_owned();
        assert!(
            first.contains("content-length: 40\r\nconnection: close\r\n\r\n"),
            "{first}"
        );
        assert!(!String::from_utf8_lossy(&seen[1]).contains("connection"));
        // The GET with a body had a connection of its own; the two bodiless ones shared one.
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
    }
}
