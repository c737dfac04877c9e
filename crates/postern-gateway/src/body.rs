//! Streaming bodies in both directions.
//!
//! [`ForwardBody`] carries the caller's request to the vendor: it counts bytes, enforces
//! `max_request_body_bytes`, and refuses to pass on the caller's own token or what looks like
//! any caller token `postern` made ([`crate::tokens`]; so a token can never reach a vendor in
//! a body). [`ResponseBody`] carries the vendor's answer back: it counts
//! bytes, enforces `max_response_body_bytes`, and records the call event when the body ends
//! (or is dropped early), so `response_bytes` and `duration_ms` are the real ones.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use postern_scan::Coding;

use crate::echo::{Cut, EchoFilter, Filtered};
use crate::escapes::EscapedToken;
use crate::overrides::OverrideScan;
use crate::record::PendingRecord;
use crate::tokens::{Base64Shaped, Needles, Seen, Unwrapped, Utf16Shaped};
use crate::upstream::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What stopped a request body on its way to the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RequestBodyViolation {
    None = 0,
    TooLarge = 1,
    CallerToken = 2,
    /// The caller's body broke off: malformed chunked framing, or the caller stopped sending.
    Broken = 3,
    /// A body's `_method` field (form, multipart or JSON) names another method than the request's.
    MethodOverride = 4,
    /// A compressed body is not valid for its coding (in no reading, for a `deflate` body that
    /// may read two ways): where the
    /// caller's token stands in what a vendor decodes cannot be told.
    Undecodable = 5,
    /// A `br` or `zstd` body arrived while the request bodies being decoded already hold
    /// [`REQUEST_DECODER_BUDGET`] for their decoders' windows.
    DecodersBusy = 6,
    /// A form body to an integration that injects a bearer token has an `access_token` field
    /// (RFC 6750 §2.2): a vendor credential of the caller's own, beside the injected one.
    VendorCredential = 7,
}

/// What the `br` and `zstd` request bodies being decoded at once may hold for their decoders'
/// windows, all callers together: each is counted at the most its coding may take (4 MiB for
/// `br`, 8.5 MiB for `zstd`), from the call's start to its body's end. Past it, the next such
/// body is refused (`503 request_decoders_busy`) rather than let a caller's slow compressed
/// uploads take the gateway's memory. `gzip` and `deflate` (a 32 KiB window) are not counted.
pub const REQUEST_DECODER_BUDGET: usize = 512 << 20;

/// The most of [`REQUEST_DECODER_BUDGET`] one caller's bodies may hold at once (a quarter: 15
/// `zstd` or 32 `br` uploads), so one caller's slow uploads cannot refuse everyone else's.
pub const REQUEST_DECODER_CALLER_SHARE: usize = REQUEST_DECODER_BUDGET / 4;

/// The process's [`DecoderBudget`] for request bodies.
static REQUEST_DECODERS: DecoderBudget =
    DecoderBudget::new(REQUEST_DECODER_BUDGET, REQUEST_DECODER_CALLER_SHARE);

/// Memory set aside for decoders' windows, up to a limit ([`REQUEST_DECODER_BUDGET`]), and up to
/// a part of it for each caller.
pub(crate) struct DecoderBudget {
    limit: usize,
    per_caller: usize,
    /// What the bodies of each caller hold (few at once: a list); bodies no caller is known
    /// for are held under the empty name, which has no part of its own.
    by_caller: std::sync::Mutex<Vec<(Arc<str>, usize)>>,
}

/// A share of a [`DecoderBudget`] (a decoder's window, or what a scan holds), given back when
/// dropped.
pub(crate) struct DecoderPermit<'a> {
    budget: &'a DecoderBudget,
    bytes: usize,
    caller: Option<Arc<str>>,
}

impl DecoderBudget {
    pub(crate) const fn new(limit: usize, per_caller: usize) -> Self {
        DecoderBudget {
            limit,
            per_caller,
            by_caller: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The share a decoder of `coding` for `caller`'s body needs (`None`: one too small to
    /// count), unless the budget, or the caller's part of it, is spent.
    pub(crate) fn take(
        &self,
        coding: Coding,
        caller: Option<&Arc<str>>,
    ) -> Result<Option<DecoderPermit<'_>>, RequestBodyViolation> {
        let bytes = match coding {
            Coding::Brotli => 1 << postern_scan::MAX_BROTLI_WINDOW_BITS,
            // The window, and the decoder's own state and buffers.
            Coding::Zstd => (1 << postern_scan::MAX_ZSTD_WINDOW_LOG) + (512 << 10),
            Coding::Gzip | Coding::Deflate => return Ok(None),
        };
        let mut permit = self.permit(caller);
        match permit.grow(bytes) {
            true => Ok(Some(permit)),
            false => Err(RequestBodyViolation::DecodersBusy),
        }
    }

    /// A share of nothing yet, for `caller`, to [`DecoderPermit::grow`].
    pub(crate) fn permit(&self, caller: Option<&Arc<str>>) -> DecoderPermit<'_> {
        DecoderPermit {
            budget: self,
            bytes: 0,
            caller: caller.cloned(),
        }
    }
}

impl<'a> DecoderPermit<'a> {
    /// Takes `more` bytes of the budget, unless that would pass its limit or, while the caller
    /// holds other shares too, its caller's part of it (bodies no caller is known for have
    /// none of their own).
    pub(crate) fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let budget = self.budget;
        let name = self.caller.clone().unwrap_or_else(|| Arc::from(""));
        let mut by_caller = budget
            .by_caller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let used: usize = by_caller.iter().map(|(_, held)| held).sum();
        let mine = by_caller
            .iter()
            .find(|(held_by, _)| *held_by == name)
            .map_or(0, |(_, held)| *held);
        // A caller's part bounds what its calls hold together: one call alone may take more
        // (up to the whole budget), or a large `scan_max_body_bytes` could never be met.
        let alone = mine == self.bytes;
        if used + more > budget.limit
            || (self.caller.is_some() && !alone && mine + more > budget.per_caller)
        {
            return false;
        }
        match by_caller.iter_mut().find(|(held_by, _)| *held_by == name) {
            Some((_, held)) => *held += more,
            None => by_caller.push((name, more)),
        }
        self.bytes += more;
        true
    }

    /// Gives back what it holds past `bytes` (the bytes it stands for are fewer now).
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        let mut rest = self.split_off(self.bytes - bytes);
        rest.give_back();
    }

    /// `bytes` of what it holds, as a share of their own (for a copy that may outlive this
    /// share's holder), still counted for the same caller.
    pub(crate) fn split_off(&mut self, bytes: usize) -> DecoderPermit<'a> {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        DecoderPermit {
            budget: self.budget,
            bytes,
            caller: self.caller.clone(),
        }
    }

    fn give_back(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let name = self.caller.clone().unwrap_or_else(|| Arc::from(""));
        let mut by_caller = self
            .budget
            .by_caller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(index) = by_caller.iter().position(|(held_by, _)| *held_by == name) {
            by_caller[index].1 -= self.bytes;
            if by_caller[index].1 == 0 {
                by_caller.swap_remove(index);
            }
        }
        self.bytes = 0;
    }
}

impl Drop for DecoderPermit<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Shared between the request body (written while streaming) and the handler (read after).
#[derive(Debug, Default)]
pub struct RequestBodyState {
    pub bytes: AtomicU64,
    violation: AtomicU8,
    /// The last time the vendor side asked for more of the body, the caller had not sent it
    /// yet: the call is waiting on the caller's upload.
    waiting_on_caller: AtomicBool,
    /// Whose body it is, once known: its decoder's share of [`REQUEST_DECODER_BUDGET`] counts
    /// against that caller's part ([`REQUEST_DECODER_CALLER_SHARE`]).
    caller: std::sync::OnceLock<Arc<str>>,
    /// The vendor's answer has ended (over h2): the rest of the body is not sent
    /// ([`RequestBodyState::answered`]).
    answered: AtomicBool,
    /// The task sending the body, woken when the answer ends while it waits for the caller.
    sender: futures_util::task::AtomicWaker,
}

impl RequestBodyState {
    /// Says whose body this is (the first caller said stands), when its `coding` has a decoder
    /// that takes a share of the budget (`br`, `zstd`): the name's count is shared by the
    /// workers, and most calls have no such body.
    pub fn set_caller(&self, caller: &Arc<str>, coding: Option<Coding>) {
        if matches!(coding, Some(Coding::Brotli | Coding::Zstd)) {
            let _ = self.caller.set(caller.clone());
        }
    }

    /// The vendor's answer to this body's request has ended, over h2, where the upload runs in
    /// a task of hyper's apart from the call: the rest of the body is not sent, and the stream
    /// is reset (`BodyError::Answered`). Else the upload went on, after the call and its
    /// vendor stream were counted done, for as long as its caller kept sending. Postern's
    /// HTTP/1.1 client stops an upload so itself once the answer comes.
    pub fn answered(&self) {
        self.answered.store(true, Ordering::Release);
        self.sender.wake();
    }

    /// Whether the call, at this moment, waits on the caller's upload (asked for more of the
    /// body, which has not arrived), not on the vendor.
    pub fn waiting_on_caller(&self) -> bool {
        self.waiting_on_caller.load(Ordering::Relaxed)
    }

    pub fn violation(&self) -> RequestBodyViolation {
        match self.violation.load(Ordering::Acquire) {
            1 => RequestBodyViolation::TooLarge,
            2 => RequestBodyViolation::CallerToken,
            3 => RequestBodyViolation::Broken,
            4 => RequestBodyViolation::MethodOverride,
            5 => RequestBodyViolation::Undecodable,
            6 => RequestBodyViolation::DecodersBusy,
            7 => RequestBodyViolation::VendorCredential,
            _ => RequestBodyViolation::None,
        }
    }

    fn set(&self, violation: RequestBodyViolation) {
        self.violation.store(violation as u8, Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds max_request_body_bytes ({0} bytes)")]
    RequestTooLarge(u64),
    #[error("request body contains the caller's Postern token; refusing to forward it")]
    CallerTokenInBody,
    #[error("the body's _method field names another method than the request's")]
    MethodOverride,
    #[error("the form body has an access_token field; Postern injects the vendor's credential")]
    VendorCredentialInBody,
    #[error("the compressed request body is not valid for its coding")]
    RequestUndecodable,
    #[error("response body exceeds max_response_body_bytes ({0} bytes)")]
    ResponseTooLarge(u64),
    #[error("the vendor's compressed answer carried the injected credential; it was cut")]
    SecretEchoed,
    #[error("the vendor's compressed answer is not valid for its coding; it was cut")]
    ResponseUndecodable,
    #[error("the vendor sent no body data for {0:?} (response_idle_timeout_ms)")]
    UpstreamIdle(std::time::Duration),
    #[error("the vendor's answer did not end within {0:?} of the call's start (total_timeout_ms)")]
    UpstreamTotal(std::time::Duration),
    #[error(
        "the caller took none of its answer for the idle limit (idle_timeout_ms); the call was cut"
    )]
    CallerStalled,
    #[error("the vendor's answer ended before the request body; the rest of it is not sent")]
    Answered,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Vendor(#[from] crate::h1::Error),
}

/// The caller's request body as the listener hands it over: hyper's stream (HTTP/2, and any
/// HTTP/1.1 request [`crate::h1server`] leaves to hyper), or a body Postern's own HTTP/1.1
/// server has already read whole (`Content-Length` framed and small).
#[derive(Debug)]
pub enum CallerBody {
    Hyper(Incoming),
    /// Read whole; `None` once its one frame has been taken.
    Read(Option<Bytes>),
    /// Frames as a caller's stream would bring them (tests).
    #[cfg(test)]
    Frames(std::collections::VecDeque<Bytes>),
    /// Frames as a test sends them, when it sends them; the end when the sender is dropped.
    #[cfg(test)]
    Channel(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

impl CallerBody {
    pub fn empty() -> Self {
        CallerBody::Read(None)
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            CallerBody::Hyper(incoming) => Pin::new(incoming).poll_frame(cx),
            CallerBody::Read(bytes) => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
            }
            #[cfg(test)]
            CallerBody::Frames(frames) => {
                Poll::Ready(frames.pop_front().map(|bytes| Ok(Frame::data(bytes))))
            }
            #[cfg(test)]
            CallerBody::Channel(frames) => frames
                .poll_recv(cx)
                .map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Hyper(incoming) => incoming.is_end_stream(),
            CallerBody::Read(bytes) => bytes.is_none(),
            #[cfg(test)]
            CallerBody::Frames(frames) => frames.is_empty(),
            #[cfg(test)]
            CallerBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallerBody::Hyper(incoming) => incoming.size_hint(),
            CallerBody::Read(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            #[cfg(test)]
            CallerBody::Frames(frames) => {
                SizeHint::with_exact(frames.iter().map(|b| b.len() as u64).sum())
            }
            #[cfg(test)]
            CallerBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// The request body forwarded upstream.
pub struct ForwardBody {
    inner: Option<CallerBody>,
    /// A body already read into memory (replayable requests, token requests).
    buffered: Option<Bytes>,
    limit: u64,
    state: Arc<RequestBodyState>,
    /// What the body is searched for as it streams, and its searches: as sent, and decoded.
    /// Boxed: with its escaped readings it is a few hundred bytes, and most requests (no body)
    /// have none; every move of the request would otherwise copy them.
    search: Option<Box<BodySearch>>,
    /// What was read and not sent yet: the last bytes that could start a token
    /// ([`ForwardBody::held_back`]), so not even the start of a token is sent before the bytes
    /// after it show it is none (and every frame while a reading that is not as sent may be
    /// completing one).
    carry: Vec<u8>,
    /// For a POST body its server may read a `_method` from, or a form body to an integration
    /// that injects a bearer token (its `access_token` field): read as it streams
    /// ([`OverrideScan`]).
    overrides: Option<Box<OverrideScan>>,
    /// The last byte released so far, held while `overrides` has not seen the body's end: a
    /// vendor acts on a body only once it has all of it, so the refusal of a `_method` in the
    /// last field still comes before the vendor could. Not for a JSON body, whose `_method` is
    /// decided inside it (at its value's closing quote).
    held: Option<u8>,
    /// A scanned body's share of [`crate::scan::SCAN_BUDGET`], held until its bytes read ahead
    /// are handed to the writer.
    scanned: Option<Box<DecoderPermit<'static>>>,
}

/// A streaming body's searches for what [`Needles`] looks for, made once for the body and
/// shared by every reading: as sent, and, for a body with a coding, in its decoding.
struct BodySearch {
    needles: Needles,
    /// The search as sent.
    as_sent: TokenReading,
    /// A compressed body's one decoding, read for the caller token and a `_method` field as a
    /// vendor that undoes the coding reads the body ([`ForwardBody::reading`]). Boxed: most
    /// bodies have no coding.
    decoded: Option<Box<Decoding>>,
}

impl BodySearch {
    /// Feeds `data` (or, at `end`, nothing) to the decoded reading, if any
    /// ([`Decoding::check`]).
    fn check_decoded(&mut self, data: &[u8], end: bool) -> Result<(), RequestBodyViolation> {
        match self.decoded.as_deref_mut() {
            Some(decoding) => decoding.check(&self.needles, data, end),
            None => Ok(()),
        }
    }

    /// [`ForwardBody::token_in_progress`].
    fn token_in_progress(&self) -> bool {
        self.decoded
            .as_ref()
            .is_some_and(|decoding| decoding.token_in_progress(&self.needles))
            || self.as_sent.escaped_in_progress(&self.needles)
    }

    /// [`ForwardBody::held_back`].
    fn held_back(&self) -> usize {
        match self.decoded {
            None => self.as_sent.seen.pending(&self.needles),
            Some(_) => self.needles.keep(),
        }
    }
}

/// A compressed body's one decoding (its `Content-Encoding` undone as it streams), and what
/// reads the decoded bytes as a vendor that undoes the coding reads them: the caller's token,
/// and a POST body's `_method` field. A `deflate` body that may read two ways is decoded both
/// ways ([`postern_scan::READINGS`]), each reading read on its own.
pub(crate) struct Decoding {
    decoder: postern_scan::StreamDecoder,
    readers: [Readers; postern_scan::READINGS],
    /// Its share of the request decoders' memory ([`REQUEST_DECODER_BUDGET`]).
    _permit: Option<DecoderPermit<'static>>,
}

/// What reads one reading of a decoded body (`Default`: nothing, for a reading there is not).
#[derive(Default)]
struct Readers {
    token: Option<TokenReading>,
    overrides: Option<OverrideScan>,
    /// For a body read whole to be scanned: its decoded bytes, up to a cap
    /// ([`Decoding::new`]).
    kept: Option<Kept>,
    /// The reading handed on any bytes (the second one exists only for a body that reads two
    /// ways).
    fed: bool,
}

/// A caller token looked for in one reading of a body (as sent, or a decoding of it): as it
/// reads, and with its escapes undone, for what the body's [`Needles`] look for.
pub(crate) struct TokenReading {
    /// The search as the reading reads (its last bytes: a token split across pieces is still
    /// found).
    seen: Seen,
    /// The reading read with its percent-encoding and JSON escapes undone ([`EscapedToken`]),
    /// and with its line breaks left out ([`Unwrapped`]); not for a body as sent that has a
    /// coding (what a vendor undoing escapes reads is its decoding, read so in [`Decoding`]).
    /// And decoded where a `postern`-made token's prefix stands base64'd ([`Base64Shaped`]) or
    /// in UTF-16 ([`Utf16Shaped`]).
    escaped: Option<(EscapedToken, Unwrapped, Base64Shaped, Utf16Shaped)>,
}

impl TokenReading {
    pub(crate) fn new(escaped: bool) -> Self {
        TokenReading {
            seen: Seen::default(),
            escaped: escaped.then(|| {
                (
                    EscapedToken::new(),
                    Unwrapped::default(),
                    Base64Shaped::default(),
                    Utf16Shaped::default(),
                )
            }),
        }
    }

    /// Reads the next `piece`: whether a token now stands in what was read.
    pub(crate) fn read(&mut self, needles: &Needles, piece: &[u8]) -> bool {
        self.seen.read(needles, piece)
            || self
                .escaped
                .as_mut()
                .is_some_and(|(escaped, unwrapped, shaped, utf16)| {
                    escaped.read(needles, piece, shaped)
                        || unwrapped.read(needles, piece)
                        || shaped.read(piece)
                        || utf16.read(piece)
                })
    }

    /// Whether more could complete a token in what was read with its escapes undone, its
    /// line breaks left out, base64 decoded, or read as UTF-16.
    fn escaped_in_progress(&self, needles: &Needles) -> bool {
        self.escaped
            .as_ref()
            .is_some_and(|(escaped, unwrapped, shaped, utf16)| {
                escaped.in_progress(needles)
                    || unwrapped.in_progress(needles)
                    || shaped.in_progress()
                    || utf16.in_progress()
            })
    }

    /// Whether more could complete a token in what was read, as it reads, with its escapes
    /// undone or with its line breaks left out.
    pub(crate) fn in_progress(&self, needles: &Needles) -> bool {
        self.seen.in_progress(needles) || self.escaped_in_progress(needles)
    }

    /// How many of the last bytes read could begin a token that more completes: as the
    /// reading reads, exactly ([`Seen::pending`]); `usize::MAX` while a reading with escapes
    /// undone, line breaks left out, base64 decoded or UTF-16 read back may be completing one
    /// (it cannot tell from where, as sent: a token's start may be written in many more bytes
    /// than its own length).
    pub(crate) fn pending(&self, needles: &Needles) -> usize {
        match self.escaped_in_progress(needles) {
            true => usize::MAX,
            false => self.seen.pending(needles),
        }
    }

    /// Whether the reading, ending here, ends with a token.
    pub(crate) fn ends_in_token(&self, needles: &Needles) -> bool {
        self.seen.ends_in_token(needles)
            || self
                .escaped
                .as_ref()
                .is_some_and(|(escaped, _, shaped, utf16)| {
                    escaped.ends_in_token(needles)
                        || shaped.ends_in_token()
                        || utf16.ends_in_token()
                })
    }
}

/// Whether `bytes`, a whole body as sent, hold a token `needles` looks for, as they stand or,
/// with `escapes`, with their percent-encoding or JSON escapes undone or their line breaks left
/// out (for a body without a coding: one with a coding is read so in its decoding,
/// [`Decoding`]).
pub(crate) fn whole_holds_a_token(needles: &Needles, bytes: &[u8], escapes: bool) -> bool {
    needles.in_whole(bytes)
        || escapes && {
            let mut escaped = EscapedToken::new();
            escaped.read(needles, bytes, &Base64Shaped::default())
                || escaped.ends_in_token(needles)
                || Unwrapped::in_whole(needles, bytes)
                || Base64Shaped::in_whole(bytes)
                || Utf16Shaped::in_whole(bytes)
        }
}

impl Readers {
    /// Reads `piece`: the caller's token is `CallerToken`, a `_method` field `MethodOverride`,
    /// an `access_token` field `VendorCredential`.
    fn read(&mut self, needles: &Needles, piece: &[u8]) -> RequestBodyViolation {
        self.fed = true;
        if let Some(kept) = &mut self.kept {
            kept.take(piece);
        }
        if self
            .token
            .as_mut()
            .is_some_and(|token| token.read(needles, piece))
        {
            return RequestBodyViolation::CallerToken;
        }
        self.overrides
            .as_mut()
            .and_then(|scan| scan.feed(piece))
            .unwrap_or(RequestBodyViolation::None)
    }

    /// Whether what was decoded so far ends with the start of a token.
    fn token_in_progress(&self, needles: &Needles) -> bool {
        self.token
            .as_ref()
            .is_some_and(|token| token.in_progress(needles))
    }
}

/// Decoded bytes kept, up to `cap`; past it, none (`over`).
struct Kept {
    bytes: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Kept {
    fn take(&mut self, piece: &[u8]) {
        if self.over || self.bytes.len() + piece.len() > self.cap {
            self.over = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(piece);
        }
    }
}

impl Decoding {
    /// The decoding of a body in `coding`, to at most `max_decoded` bytes, for the caller token
    /// (what the body's [`Needles`], given to [`Decoding::check`], look for) and `overrides` (a
    /// scan that has read nothing yet); with `keep`, keeping its decoded bytes up to that many
    /// in each reading ([`Decoding::kept`]): for a body read whole to be scanned.
    pub(crate) fn new(
        coding: Coding,
        max_decoded: u64,
        overrides: Option<OverrideScan>,
        keep: Option<usize>,
    ) -> Self {
        let max = usize::try_from(max_decoded).unwrap_or(usize::MAX);
        let decoder = postern_scan::StreamDecoder::new(coding, max);
        let readers = |overrides| Readers {
            token: Some(TokenReading::new(true)),
            overrides,
            kept: keep.map(|cap| Kept {
                bytes: Vec::new(),
                cap,
                over: false,
            }),
            fed: false,
        };
        // Only a `deflate` body may read two ways: another has nothing to read its second.
        let second = match coding {
            Coding::Deflate => readers(overrides.clone()),
            Coding::Gzip | Coding::Brotli | Coding::Zstd => Readers::default(),
        };
        Decoding {
            decoder,
            readers: [readers(overrides), second],
            _permit: None,
        }
    }

    /// [`Decoding::new`] for a request body, with its share of [`REQUEST_DECODER_BUDGET`].
    pub(crate) fn for_request(
        coding: Coding,
        max_decoded: u64,
        overrides: Option<OverrideScan>,
        keep: Option<usize>,
        caller: Option<&Arc<str>>,
    ) -> Result<Self, RequestBodyViolation> {
        let permit = REQUEST_DECODERS.take(coding, caller)?;
        Ok(Decoding {
            _permit: permit,
            ..Decoding::new(coding, max_decoded, overrides, keep)
        })
    }

    /// Whether what was decoded so far, in a reading still decoding, ends with the start of a
    /// token (one that more of the body could complete).
    fn token_in_progress(&self, needles: &Needles) -> bool {
        let alive = self.decoder.readings();
        self.readers
            .iter()
            .zip(alive)
            .any(|(readers, alive)| alive && readers.token_in_progress(needles))
    }

    /// The decoded bytes kept ([`Decoding::new`]), each reading's (the second only for a
    /// body that reads two ways), to be scanned as bodies of their own: `None` when they passed
    /// the cap (or none were asked for).
    pub(crate) fn kept(self) -> Option<Vec<Vec<u8>>> {
        let mut readings = Vec::new();
        for (reading, readers) in self.readers.into_iter().enumerate() {
            if reading > 0 && !readers.fed {
                continue;
            }
            let kept = readers.kept?;
            if kept.over {
                return None;
            }
            readings.push(kept.bytes);
        }
        Some(readings)
    }

    /// Feeds `data` (or, at `end`, finishes the stream) and reads what it decodes, in every
    /// reading, for what `needles` (the body's) look for. The caller's token is `CallerToken`,
    /// a `_method` field `MethodOverride`, an `access_token` field `VendorCredential`; decoding
    /// past the limit is `TooLarge`; data that no reading decodes (not valid for its coding,
    /// cut short) `Undecodable` (vendors' decoders
    /// differ in what they forgive, so one may read on past where Postern stopped). A reading
    /// that fails while another goes on has been read up to where it failed, as a lenient
    /// vendor would.
    pub(crate) fn check(
        &mut self,
        needles: &Needles,
        data: &[u8],
        end: bool,
    ) -> Result<(), RequestBodyViolation> {
        let Decoding {
            decoder, readers, ..
        } = self;
        let mut found = RequestBodyViolation::None;
        let mut read = |reading: usize, piece: &[u8]| {
            if found == RequestBodyViolation::None {
                found = readers[reading].read(needles, piece);
            }
        };
        let decoded = match end {
            false => decoder.feed(data, &mut read),
            true => decoder.finish(&mut read),
        };
        if found != RequestBodyViolation::None {
            return Err(found);
        }
        // A token-shaped run is decided by the byte after it, or by the end: of the body, or of
        // a reading whose stream ended before the body does (one of a `deflate` body's two, in
        // this feed or an earlier one: what it read no longer changes), so that a token its
        // end decides is refused before the frames held for it are released.
        let alive = decoder.readings();
        if readers.iter().zip(alive).any(|(readers, alive)| {
            (end || !alive)
                && readers.fed
                && readers
                    .token
                    .as_ref()
                    .is_some_and(|token| token.ends_in_token(needles))
        }) {
            return Err(RequestBodyViolation::CallerToken);
        }
        decoded.map_err(|unscanned| match unscanned.reason {
            postern_scan::UnscannedReason::TooLarge { .. } => RequestBodyViolation::TooLarge,
            _ => RequestBodyViolation::Undecodable,
        })?;
        // The first reading's last field is read even with nothing decoded (an empty body), as
        // before; a second one's only where there is a second reading.
        if end
            && readers
                .iter_mut()
                .enumerate()
                .filter(|(reading, readers)| *reading == 0 || readers.fed)
                .any(|(_, readers)| readers.overrides.as_mut().is_some_and(OverrideScan::finish))
        {
            return Err(RequestBodyViolation::MethodOverride);
        }
        Ok(())
    }
}

impl ForwardBody {
    /// What the call knows of this body as it is sent.
    pub(crate) fn state(&self) -> &Arc<RequestBodyState> {
        &self.state
    }

    /// The caller's body, to be forwarded once [`ForwardBody::reading`] says how it is read:
    /// without that call, nothing in it is looked for, not even the caller's token.
    pub fn new(inner: CallerBody, limit: u64, state: Arc<RequestBodyState>) -> Self {
        // A body read whole (within the limit) is read ahead: [`ForwardBody::reading`] checks
        // all of it before anything is sent, so its refusal opens no request to the vendor (nor
        // an h2 stream to reset, which a vendor counts against the connection all calls share).
        if let CallerBody::Read(Some(bytes)) = &inner {
            if bytes.len() as u64 <= limit {
                return Self::with_prefix(bytes.clone(), CallerBody::empty(), limit, state);
            }
        }
        Self::streaming(inner, limit, state)
    }

    /// [`ForwardBody::new`], `inner` read as it streams whatever it is.
    fn streaming(inner: CallerBody, limit: u64, state: Arc<RequestBodyState>) -> Self {
        let inner = if inner.is_end_stream() {
            None
        } else {
            Some(inner)
        };
        ForwardBody {
            inner,
            buffered: None,
            limit,
            state,
            search: None,
            carry: Vec::new(),
            overrides: None,
            held: None,
            scanned: None,
        }
    }

    /// Reads this body as it streams, as its vendor would: for `token` (the caller's; ignored
    /// when empty) and what looks like any caller token `postern` made ([`crate::tokens`]) as
    /// sent and with its escapes undone, with `overrides` for a POST body's `_method` field and
    /// a bearer integration's form `access_token` field ([`OverrideScan`]), and, with a
    /// `coding` (its `Content-Encoding`, [`crate::proxy::body_encoding`]), decoded as well
    /// (once, for all its readers, to at most the body's limit) for the tokens and those
    /// fields. A frame whose reading finds any of them is refused before it is sent; data not
    /// valid for its coding, or decoding past the limit, refuses the body. `Err` if what was
    /// read ahead ([`ForwardBody::with_prefix`]; all of the body, when its stream has ended)
    /// already does: nothing of it is sent.
    pub fn reading(
        mut self,
        coding: Option<Coding>,
        token: Option<&[u8]>,
        overrides: Option<OverrideScan>,
    ) -> Result<Self, RequestBodyViolation> {
        if self.inner.is_none() && self.buffered.is_none() {
            return Ok(self);
        }
        // Made once for the body: what was read ahead and, while it streams, every frame, as
        // sent and in each reading of its decoding, is searched with these needles. Read with
        // its escapes undone as sent only when it has no coding: one that has is read so in its
        // decoding (`Decoding`), which is what a vendor undoing escapes reads.
        let decoded = match coding {
            Some(coding) => {
                let caller = self.state.caller.get();
                match Decoding::for_request(coding, self.limit, overrides.clone(), None, caller) {
                    Ok(decoding) => Some(Box::new(decoding)),
                    Err(violation) => return Err(self.refused_for(violation)),
                }
            }
            None => None,
        };
        let search = self.search.insert(Box::new(BodySearch {
            needles: Needles::new(token),
            as_sent: TokenReading::new(coding.is_none()),
            decoded,
        }));
        // What was read ahead is the body's start: read now, as sent and decoded; with no
        // stream after it, the whole body, read to its end now (nothing polls the body past its
        // last frame).
        let ahead = self.buffered.take().unwrap_or_default();
        let BodySearch {
            needles, as_sent, ..
        } = &mut **search;
        let found = as_sent.read(needles, &ahead)
            || (self.inner.is_none() && as_sent.ends_in_token(needles));
        let mut checked = match found {
            true => Err(RequestBodyViolation::CallerToken),
            false => Ok(()),
        };
        if let Some(mut scan) = overrides.map(Box::new) {
            if let (Ok(()), Some(found)) = (&checked, scan.feed(&ahead)) {
                checked = Err(found);
            }
            self.overrides = Some(scan);
        }
        checked = checked.and_then(|()| self.decoded_check(&ahead, false));
        if checked.is_ok() && self.inner.is_none() {
            checked = self.decoded_check(&[], true);
            self.search = None;
            // All of it read: its last field too, so no byte is held back for it (the body
            // goes as one frame, not a last byte after the rest in a packet of its own).
            if checked.is_ok() && self.overrides.take().is_some_and(|mut scan| scan.finish()) {
                checked = Err(RequestBodyViolation::MethodOverride);
            }
        }
        if let Err(violation) = checked {
            return Err(self.refused_for(violation));
        }
        // Only a body still streaming is searched as it comes (what was read ahead, just now;
        // the search of a body that does not stream was ended above).
        if self.inner.is_none() {
            self.buffered = Some(self.hold_last(ahead)).filter(|b| !b.is_empty());
            return Ok(self);
        }
        if self.token_in_progress() {
            // What was read ahead is held back whole, as a frame is.
            self.carry = ahead.to_vec();
            return Ok(self);
        }
        // Its tail may start a token: held back, as any frame's tail is.
        let split = ahead.len().saturating_sub(self.held_back());
        self.carry = ahead[split..].to_vec();
        self.buffered = Some(self.hold_last(ahead.slice(..split))).filter(|b| !b.is_empty());
        Ok(self)
    }

    /// Stops this body for `violation` found before anything of it was sent.
    fn refused_for(mut self, violation: RequestBodyViolation) -> RequestBodyViolation {
        self.stop(violation);
        violation
    }

    /// Feeds `data` (or, at `end`, nothing) to the decoded reading, if any.
    fn decoded_check(&mut self, data: &[u8], end: bool) -> Result<(), RequestBodyViolation> {
        match self.search.as_deref_mut() {
            Some(search) => search.check_decoded(data, end),
            None => Ok(()),
        }
    }

    /// Stops the body for `violation` (or a broken caller side): nothing more is read, held or
    /// sent.
    fn stop(&mut self, violation: RequestBodyViolation) {
        self.state.set(violation);
        self.inner = None;
        self.carry.clear();
        self.search = None;
        self.held = None;
        self.overrides = None;
    }

    /// With `overrides` whose field the body's end may decide (a form's or a multipart body's
    /// last field: [`OverrideScan::decided_at_the_end`]), `send` less its last byte, after the
    /// byte held before (see `held`).
    fn hold_last(&mut self, send: Bytes) -> Bytes {
        let at_the_end = self
            .overrides
            .as_ref()
            .is_some_and(|scan| scan.decided_at_the_end());
        if !at_the_end || (send.is_empty() && self.held.is_none()) {
            return send;
        }
        let mut out = Vec::with_capacity(send.len() + 1);
        out.extend(self.held.take());
        out.extend_from_slice(&send);
        self.held = out.pop();
        Bytes::from(out)
    }

    pub fn empty(state: Arc<RequestBodyState>) -> Self {
        Self::full(Bytes::new(), state)
    }

    /// A prefix already read, then the rest of the stream; the prefix is read (for the token
    /// and the rest) by [`ForwardBody::reading`] as the body's first bytes (which, as for
    /// [`ForwardBody::new`], must be called).
    pub fn with_prefix(
        prefix: Bytes,
        rest: CallerBody,
        limit: u64,
        state: Arc<RequestBodyState>,
    ) -> Self {
        let mut body = Self::streaming(rest, limit, state);
        body.state
            .bytes
            .fetch_add(prefix.len() as u64, std::sync::atomic::Ordering::Relaxed);
        body.buffered = Some(prefix).filter(|b| !b.is_empty());
        body
    }

    /// Puts `bytes`, the frame last taken from this body (already read and released), back in
    /// front of the rest: a request that no byte of went out goes on another connection whole.
    pub(crate) fn give_back(&mut self, bytes: Bytes) {
        debug_assert!(
            self.buffered.is_none(),
            "only the frame last taken goes back"
        );
        self.buffered = Some(bytes).filter(|b| !b.is_empty());
    }

    /// A body already in memory (already checked; sent as is).
    pub fn full(bytes: Bytes, state: Arc<RequestBodyState>) -> Self {
        ForwardBody {
            inner: None,
            buffered: if bytes.is_empty() { None } else { Some(bytes) },
            limit: u64::MAX,
            state,
            search: None,
            carry: Vec::new(),
            overrides: None,
            held: None,
            scanned: None,
        }
    }

    /// Holds `scanned`, a scanned body's share of the scan budget, for the bytes read ahead
    /// until they are handed to the writer.
    pub(crate) fn holding(mut self, mut scanned: DecoderPermit<'static>) -> Self {
        // (What a streamed body's reading holds back of them, too.)
        scanned.shrink_to(self.buffered.as_ref().map_or(0, Bytes::len) + self.carry.len());
        self.scanned = Some(Box::new(scanned));
        self
    }

    /// Its share of the scan budget, taken out (to hold while the body is read whole).
    pub(crate) fn take_scanned(&mut self) -> Option<Box<DecoderPermit<'static>>> {
        self.scanned.take()
    }

    /// Whether what the body decodes to so far ends with the start of a token
    /// ([`Decoding::token_in_progress`]), or what it reads as with its escapes undone does
    /// ([`EscapedToken::in_progress`]), or with its line breaks left out
    /// ([`Unwrapped::in_progress`]): which bytes as sent hold that start cannot be told (a
    /// compressed body) or it may be written in many more bytes than its own length (escapes,
    /// breaks), so every frame since it may have begun is held back.
    fn token_in_progress(&self) -> bool {
        self.search
            .as_deref()
            .is_some_and(BodySearch::token_in_progress)
    }

    /// How many of the last bytes read, as sent, wait for more of the body: those that could
    /// start a token ([`Seen::pending`]: none when the body read so far ends elsewhere), or, for
    /// a body read decoded as well, the last [`Needles::keep`] (which compressed bytes stand for
    /// what the decoding has not yet given cannot be told).
    fn held_back(&self) -> usize {
        self.search.as_deref().map_or(0, BodySearch::held_back)
    }

    /// Scans `data` (after what was held back) for a token. Returns the bytes that may be sent
    /// now; those at the end that could start a token ([`ForwardBody::held_back`]) are held back
    /// until more data or the end of the body shows they do not, so not even a prefix of one
    /// is sent ahead of the refusal. A body read decoded holds back every frame since what it
    /// decodes to began to end with a token's start ([`ForwardBody::token_in_progress`]): the
    /// vendor never has even a compressed prefix of a token (a body that keeps ending frames
    /// with a token's start is held up to its `max_request_body_bytes`).
    fn release(&mut self, data: &Bytes) -> Result<Bytes, ()> {
        let Some(search) = self.search.as_deref_mut() else {
            return Ok(data.clone());
        };
        if search.as_sent.read(&search.needles, data) {
            return Err(());
        }
        self.carry.extend_from_slice(data);
        if self.token_in_progress() {
            return Ok(Bytes::new());
        }
        let split = self.carry.len().saturating_sub(self.held_back());
        let tail = self.carry.split_off(split);
        Ok(Bytes::from(std::mem::replace(&mut self.carry, tail)))
    }
}

impl ForwardBody {
    /// Counts, limits and token-checks one frame from the caller's body.
    fn forward_frame(
        this: &mut Self,
        polled: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(Self::drain_carry(this))
            }
            Poll::Ready(Some(Err(error))) => {
                // The caller's side failed, not the vendor's: the call is answered as such.
                this.stop(RequestBodyViolation::Broken);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .state
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    let refused = |this: &mut Self, violation| {
                        Poll::Ready(Some(Err(Self::refuse(this, violation))))
                    };
                    if total > this.limit {
                        return refused(this, RequestBodyViolation::TooLarge);
                    }
                    let data = data.clone();
                    if let Some(found) = this.overrides.as_mut().and_then(|scan| scan.feed(&data)) {
                        return refused(this, found);
                    }
                    if let Err(violation) = this.decoded_check(&data, false) {
                        return refused(this, violation);
                    }
                    return match this.release(&data) {
                        Ok(send) => Poll::Ready(Some(Ok(Frame::data(this.hold_last(send))))),
                        Err(()) => refused(this, RequestBodyViolation::CallerToken),
                    };
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    /// Stops the body for `violation`, and the error that ends it.
    fn refuse(this: &mut Self, violation: RequestBodyViolation) -> BodyError {
        this.stop(violation);
        match violation {
            RequestBodyViolation::TooLarge => BodyError::RequestTooLarge(this.limit),
            RequestBodyViolation::Undecodable => BodyError::RequestUndecodable,
            RequestBodyViolation::MethodOverride => BodyError::MethodOverride,
            RequestBodyViolation::VendorCredential => BodyError::VendorCredentialInBody,
            RequestBodyViolation::CallerToken => BodyError::CallerTokenInBody,
            // Never given here: not refusals (the caller's side broke, or nothing did), or made
            // only before the body is read (`DecodersBusy`, when its reading starts); ended all
            // the same, as the strictest of them.
            RequestBodyViolation::Broken
            | RequestBodyViolation::None
            | RequestBodyViolation::DecodersBusy => BodyError::CallerTokenInBody,
        }
    }

    /// At the end of the body, what was held back is safe to send, unless the last form field
    /// overrides the method.
    fn drain_carry(this: &mut Self) -> Option<Result<Frame<Bytes>, BodyError>> {
        if let Some(mut scan) = this.overrides.take() {
            // Every byte was read as it came (the carry's too): only the last field is left.
            if scan.finish() {
                return Some(Err(Self::refuse(
                    this,
                    RequestBodyViolation::MethodOverride,
                )));
            }
        }
        if let Err(violation) = this.decoded_check(&[], true) {
            return Some(Err(Self::refuse(this, violation)));
        }
        // A token-shaped run held back is decided by the end (once: the search ends here).
        if this
            .search
            .take()
            .is_some_and(|search| search.as_sent.ends_in_token(&search.needles))
        {
            return Some(Err(Self::refuse(this, RequestBodyViolation::CallerToken)));
        }
        let mut rest: Vec<u8> = this.held.take().into_iter().collect();
        rest.append(&mut this.carry);
        (!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest))))
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(bytes) = this.buffered.take() {
            // Handed to the writer: their share of the scan budget goes back.
            this.scanned = None;
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(Self::drain_carry(this));
            };
            // Registered before the flag is read, so an answer ending in between still wakes it.
            this.state.sender.register(cx.waker());
            if this.state.answered.load(Ordering::Acquire) {
                this.inner = None;
                return Poll::Ready(Some(Err(BodyError::Answered)));
            }
            let polled = Pin::new(inner).poll_frame(cx);
            this.state
                .waiting_on_caller
                .store(polled.is_pending(), Ordering::Relaxed);
            // A caller's trailers are never forwarded: they are not scanned for its token.
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                if frame.is_trailers() {
                    continue;
                }
            }
            match Self::forward_frame(this, polled) {
                // Nothing to send yet (all of it held back, or an empty frame): the next frame
                // is read instead. An empty DATA frame is no part of the body, and a vendor
                // defending itself against a flood of them (CVE-2019-9518) closes an h2
                // connection that carries many, with every call on it.
                Poll::Ready(Some(Ok(frame)))
                    if frame.data_ref().is_some_and(|data| data.is_empty()) =>
                {
                    continue
                }
                forwarded => return forwarded,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // The body ends when the inner one has ended and nothing is held back (what was held
        // is released at the latest when the inner body ends).
        self.buffered.is_none()
            && self.carry.is_empty()
            && self.held.is_none()
            && self.overrides.is_none()
            && self
                .inner
                .as_ref()
                .is_none_or(|inner| inner.is_end_stream())
            && self.search.as_ref().is_none_or(|_| self.inner.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        // What is in memory (a prefix already read, the tail held back), then the stream.
        let held = self.carry.len() as u64
            + self.buffered.as_ref().map_or(0, |b| b.len() as u64)
            + u64::from(self.held.is_some());
        match &self.inner {
            Some(inner) => {
                let inner = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + held);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
            None => SizeHint::with_exact(held),
        }
    }
}

/// The audit outcome entry still owed for a forwarded call.
pub struct PendingAudit {
    pub audit: Arc<crate::audit::Audit>,
    pub intent_index: Option<u64>,
}

/// How long a vendor's body may send nothing (`response_idle_timeout_ms`; 0 is no limit), and
/// when the call must be over (`total_timeout_ms`, from its start; 0 is no limit), for
/// [`ResponseBody`] and for payload scanning's read. The timer is made the first time the body
/// has to wait (a body that arrives with its head, the usual case, never makes one) and moved
/// on after each frame that arrived since, never past the call's end.
pub struct Stall {
    idle: Option<std::time::Duration>,
    /// When the call must be over, and the limit that says so.
    total: Option<(tokio::time::Instant, std::time::Duration)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

/// The limit a vendor's body went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// No body data for `response_idle_timeout_ms`.
    Idle(std::time::Duration),
    /// The call lasted `total_timeout_ms`.
    Total(std::time::Duration),
}

impl Overdue {
    /// The event's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Overdue::Idle(_) => "upstream_idle_timeout",
            Overdue::Total(_) => "upstream_total_timeout",
        }
    }

    fn error(self) -> BodyError {
        match self {
            Overdue::Idle(idle) => BodyError::UpstreamIdle(idle),
            Overdue::Total(total) => BodyError::UpstreamTotal(total),
        }
    }
}

impl Stall {
    pub fn new(response_idle_timeout_ms: u64) -> Self {
        Stall {
            idle: (response_idle_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(response_idle_timeout_ms)),
            total: None,
            sleep: None,
            progressed: false,
        }
    }

    /// The limits of a call to `integration` that started at `started`: its
    /// `response_idle_timeout_ms`, and its end, `total_timeout_ms` after `started` (0: none).
    pub fn for_call(
        integration: &postern_config::IntegrationConfig,
        started: std::time::Instant,
    ) -> Self {
        Stall {
            total: call_end(started, integration.total_timeout_ms),
            ..Stall::new(integration.response_idle_timeout_ms)
        }
    }

    /// No idle limit, only an end: `end` (its instant and the limit that set it; `None`: none).
    pub fn until(end: Option<(tokio::time::Instant, std::time::Duration)>) -> Self {
        Stall {
            total: end,
            ..Stall::new(0)
        }
    }

    /// A frame arrived: the next wait starts the clock again.
    pub fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The body has to wait for the vendor: the limit it has waited past, if it has.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Option<Overdue> {
        if self.idle.is_none() && self.total.is_none() {
            return None;
        }
        let progressed = std::mem::take(&mut self.progressed);
        let (idle, total) = (self.idle, self.total);
        // The timer is set when first made, and moved after progress when there is an idle
        // limit (without one it stays at the call's end): at the sooner of the two limits.
        if self.sleep.is_none() || (progressed && idle.is_some()) {
            let at = idle
                .map(|idle| tokio::time::Instant::now() + idle)
                .into_iter()
                .chain(total.map(|(end, _)| end))
                .min()
                .expect("a limit is set (checked above)");
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let sleep = self.sleep.as_mut().expect("set above");
        if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
            return None;
        }
        // The timer fired: at the call's end, or (before it) after the idle limit; without an
        // idle limit it was set at the call's end.
        self.past_total()
            .or(idle.map(Overdue::Idle))
            .or(total.map(|(_, total)| Overdue::Total(total)))
    }

    /// Whether the call is past its end (`total_timeout_ms`): checked after each frame that
    /// does not end the body, for a body that never has to wait.
    pub fn past_total(&self) -> Option<Overdue> {
        let (end, total) = self.total?;
        (tokio::time::Instant::now() >= end).then_some(Overdue::Total(total))
    }
}

/// When a call that started at `started` must be over, by `total_timeout_ms` (0: never), and
/// that limit.
pub fn call_end(
    started: std::time::Instant,
    total_timeout_ms: u64,
) -> Option<(tokio::time::Instant, std::time::Duration)> {
    let total = std::time::Duration::from_millis(total_timeout_ms);
    (total_timeout_ms > 0).then(|| (tokio::time::Instant::from_std(started) + total, total))
}

/// The vendor's response body on its way back to the caller.
pub struct ResponseBody {
    inner: UpstreamBody,
    /// Bytes already read from `inner` (a scanned response), sent before the rest of `inner`.
    prefix: Option<Bytes>,
    limit: u64,
    /// Bytes read from the vendor, against `limit`.
    seen: u64,
    /// Bytes passed on to the caller (what the event's `response_bytes` says): less than `seen`
    /// where the echo filter holds some back or cuts the answer, or a frame goes over `limit`.
    passed: u64,
    /// A vendor that stalls mid-body ends the call rather than holding it.
    stall: Stall,
    /// The last poll of `inner` was pending: the answer waited on its vendor then (over HTTP/2,
    /// not its caller's fault if the connection is closed meanwhile).
    waiting: bool,
    record: Option<PendingRecord>,
    audit: Option<PendingAudit>,
    /// Reads the body for the injected credential ([`crate::echo`]).
    echo: Option<Box<EchoFilter>>,
    /// A frame to send next: trailers that came while the echo filter held bytes back, sent
    /// after them.
    next: Option<Frame<Bytes>>,
    /// The answer has ended (its last bytes, held back by the echo filter, sent on their own).
    ended: bool,
    /// A scanned answer's share of [`crate::scan::SCAN_BUDGET`], held until its bytes read
    /// ahead are passed on.
    scanned: Option<Box<DecoderPermit<'static>>>,
}

impl ResponseBody {
    pub fn new(
        inner: UpstreamBody,
        limit: u64,
        stall: Stall,
        record: PendingRecord,
        audit: Option<PendingAudit>,
    ) -> Self {
        ResponseBody {
            inner,
            prefix: None,
            limit,
            seen: 0,
            passed: 0,
            stall,
            waiting: false,
            record: Some(record),
            audit,
            echo: None,
            next: None,
            ended: false,
            scanned: None,
        }
    }

    /// Holds `scanned`, a scanned answer's share of the scan budget, for the bytes read ahead
    /// until they are passed on.
    pub(crate) fn holding(mut self, mut scanned: Option<Box<DecoderPermit<'static>>>) -> Self {
        if let Some(scanned) = scanned.as_mut() {
            scanned.shrink_to(self.prefix.as_ref().map_or(0, Bytes::len));
        }
        self.scanned = scanned;
        self
    }

    /// Reads the body for the injected credential with `echo`, if any.
    pub fn with_echo(mut self, echo: Option<Box<EchoFilter>>) -> Self {
        self.echo = echo;
        self
    }

    /// Passes `data` (`last`: the answer's last bytes) through the echo filter: what to send,
    /// `None` to read on (all of it held back), or the error that ends the answer.
    fn unechoed(&mut self, data: Bytes, last: bool) -> Option<Result<Frame<Bytes>, BodyError>> {
        let Some(echo) = &mut self.echo else {
            return Some(Ok(Frame::data(data)));
        };
        match echo.filter(data, last) {
            Filtered::Pass(data, redacted) => {
                if redacted {
                    self.echoed();
                }
                Some(Ok(Frame::data(data)))
            }
            Filtered::Held => None,
            Filtered::Cut(cut) => {
                if cut == Cut::SecretEchoed {
                    self.echoed();
                }
                self.finish(true, Some(cut.reason()));
                // Nothing after a cut is read or passed on, should the body be polled again.
                self.ended = true;
                Some(Err(match cut {
                    Cut::SecretEchoed => BodyError::SecretEchoed,
                    Cut::TooLarge => BodyError::ResponseTooLarge(self.limit),
                    Cut::Undecodable => BodyError::ResponseUndecodable,
                }))
            }
        }
    }

    fn echoed(&mut self) {
        if let Some(record) = &mut self.record {
            if !record.context.secret_echoed {
                tracing::warn!(integration = record.context.integration.as_deref().unwrap_or(""), request_id = %record.context.request_id, "vendor response body carried the injected credential");
            }
            record.context.secret_echoed = true;
        }
    }

    /// Sends `prefix` (already read from the vendor, possibly redacted) before the rest.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = Some(prefix).filter(|p| !p.is_empty());
        self
    }

    fn finish(&mut self, incomplete: bool, reason: Option<&'static str>) {
        if let Some(record) = self.record.take() {
            if let Some(pending) = self.audit.take() {
                let outcome = crate::audit::Outcome {
                    decision: postern_tlog::Decision::Allow,
                    // A whole answer's reason is the event's: `granted` for an integration's
                    // call, the host policy's for a plain-HTTP proxy call.
                    reason: match (reason, incomplete) {
                        (Some(reason), _) => reason,
                        (None, true) => "incomplete",
                        (None, false) => record.reason,
                    },
                    status: record.status,
                    response_bytes: self.passed,
                    intent_index: pending.intent_index,
                };
                let entry = pending.audit.record(
                    postern_tlog::RecordKind::Outcome,
                    &record.context,
                    Some(&outcome),
                );
                pending
                    .audit
                    .append_later(entry, &record.context.request_id);
            }
            record.finish(self.passed, incomplete, reason);
        }
    }
}

impl Drop for ResponseBody {
    /// A body dropped before its end is a call cut short; one that has no content (the answer
    /// to `HEAD`, a 204 or 304) or is already at its end (`content-length: 0`) is a whole one:
    /// servers drop these without polling them. Cut short with its connection, closed at its
    /// idle limit ([`crate::deadline::InFlight::idled_out`]), it is one its caller stopped
    /// taking: `caller_stalled`, as one the listener cuts on its own is (whichever server wrote
    /// it: Postern's HTTP/1.1 one, or hyper's) — unless, over HTTP/2, it was waiting on its
    /// vendor: that connection may have been closed for another stream's stalled write. (Over
    /// HTTP/1.1 the one answer's wait on its vendor excuses the idle limit, so a write its
    /// caller stopped taking, made in a pause of the answer, is the caller's.)
    fn drop(&mut self) {
        let Some(record) = &self.record else {
            return; // finished already, as most bodies are by their last frame
        };
        let whole = bodiless(record.context.method.as_ref(), record.status) || self.is_end_stream();
        let vendors_wait = self.waiting && record.context.protocol == "HTTP/2";
        let stalled = !whole
            && !vendors_wait
            && record
                .context
                .in_flight
                .as_ref()
                .is_some_and(crate::deadline::InFlight::idled_out);
        self.finish(!whole, stalled.then_some("caller_stalled"));
    }
}

/// Whether an answer with `status` to a request with `method` has no content whatever its
/// headers say (RFC 9110 §6.4.1): its `Content-Length`, if any, describes another answer.
pub fn bodiless(method: Option<&http::Method>, status: u16) -> bool {
    method == Some(&http::Method::HEAD) || status == 204 || status == 304
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(frame) = this.next.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(prefix) = this.prefix.take() {
            this.scanned = None;
            this.seen += prefix.len() as u64;
            let last = this.inner.is_end_stream();
            let sent = this.unechoed(prefix, last);
            this.count(&sent);
            if last {
                this.finish(false, None);
                this.ended = true;
            }
            match sent {
                Some(sent) => return Poll::Ready(Some(sent)),
                None if last => return Poll::Ready(None),
                None => {}
            }
        }
        loop {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            this.waiting = polled.is_pending();
            return match polled {
                Poll::Pending => match this.stall.poll_stalled(cx) {
                    Some(overdue) => {
                        this.finish(true, Some(overdue.reason()));
                        Poll::Ready(Some(Err(overdue.error())))
                    }
                    None => Poll::Pending,
                },
                Poll::Ready(None) => {
                    // What the echo filter held back goes now: nothing more can complete a
                    // secret.
                    let held = this.held_back().map(Ok);
                    this.count(&held);
                    this.finish(false, None);
                    this.ended = true;
                    Poll::Ready(held)
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finish(true, Some("upstream_body_error"));
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.stall.progressed();
                    let last = this.inner.is_end_stream();
                    if !last {
                        // A body that never has to wait (a fast vendor, a slow caller) still
                        // ends: this frame is not passed on (nor counted).
                        if let Some(overdue) = this.stall.past_total() {
                            this.finish(true, Some(overdue.reason()));
                            return Poll::Ready(Some(Err(overdue.error())));
                        }
                    }
                    if let Some(data) = frame.data_ref() {
                        this.seen += data.len() as u64;
                        if this.seen > this.limit {
                            this.finish(true, Some("response_too_large"));
                            return Poll::Ready(Some(Err(BodyError::ResponseTooLarge(this.limit))));
                        }
                    }
                    let sent = match frame.into_data() {
                        Ok(data) => this.unechoed(data, last),
                        // Trailers: read for the secret as header fields are, and sent after
                        // what the echo filter held back, if anything.
                        Err(frame) => {
                            let frame = this.trailers_unechoed(frame);
                            Some(Ok(match this.held_back() {
                                Some(held) => {
                                    this.next = Some(frame);
                                    held
                                }
                                None => frame,
                            }))
                        }
                    };
                    this.count(&sent);
                    // (After the filter: a cut is recorded as such, a redaction noted.)
                    if last {
                        this.finish(false, None);
                        this.ended = true;
                    }
                    match sent {
                        Some(sent) => Poll::Ready(Some(sent)),
                        None if last => Poll::Ready(None),
                        None => continue,
                    }
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
            && (self.ended
                || self.prefix.is_none() && self.held() == 0 && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64) + self.held() as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + prefix);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

impl ResponseBody {
    /// Counts the data of a frame about to be passed on.
    fn count(&mut self, sent: &Option<Result<Frame<Bytes>, BodyError>>) {
        if let Some(Ok(frame)) = sent {
            self.passed += frame.data_ref().map_or(0, |data| data.len() as u64);
        }
    }

    /// Bytes the echo filter holds back.
    fn held(&self) -> usize {
        self.echo.as_ref().map_or(0, |echo| echo.held())
    }

    /// Trailers without the fields that hold the injected credential (a vendor's debug or
    /// `grpc-message` trailer quoting it).
    fn trailers_unechoed(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        let Some(echo) = &self.echo else {
            return frame;
        };
        match frame.into_trailers() {
            Ok(mut trailers) => {
                if echo.trailers(&mut trailers) {
                    self.echoed();
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }
    }

    /// What the echo filter held back, as a frame, at the answer's end.
    fn held_back(&mut self) -> Option<Frame<Bytes>> {
        self.echo.as_mut()?.end().map(Frame::data)
    }
}

/// Every body the gateway answers with: a small in-memory one (errors, admin), one in memory
/// that holds a share of a budget until it is sent, or a vendor stream.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Held(Box<HeldBytes>),
    Stream(Box<ResponseBody>),
}

/// An answer in memory that holds its share of a budget (the public audit log's reads:
/// [`crate::admin::PUBLIC_ANSWER_KIB`]) until it has been handed on whole, or dropped: a
/// client that asks for many answers and then reads none cannot make the gateway hold more
/// than the budget. Handed on in copies of [`HeldBytes::CHUNK`] bytes, so that what the
/// connection still buffers once the body is done holds none of the answer's memory.
pub struct HeldBytes {
    rest: Bytes,
    _share: tokio::sync::OwnedSemaphorePermit,
}

impl HeldBytes {
    /// The most handed on at once: an HTTP/2 stream buffers up to its send buffer
    /// ([`crate::listener::H2_SEND_BUFFER_BYTES`]) and one more piece, whatever its window.
    pub const CHUNK: usize = 16 * 1024;

    fn next(&mut self) -> Option<Bytes> {
        if self.rest.is_empty() {
            return None;
        }
        let length = self.rest.len().min(Self::CHUNK);
        let chunk = Bytes::copy_from_slice(&self.rest[..length]);
        bytes::Buf::advance(&mut self.rest, length);
        Some(chunk)
    }
}

impl GatewayBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        GatewayBody::Full(if bytes.is_empty() { None } else { Some(bytes) })
    }

    /// `bytes`, holding `share` until they have been handed on ([`HeldBytes`]).
    pub fn held(bytes: Bytes, share: tokio::sync::OwnedSemaphorePermit) -> Self {
        GatewayBody::Held(Box::new(HeldBytes {
            rest: bytes,
            _share: share,
        }))
    }

    /// Whether it streams a vendor's answer (and holds the call: its vendor connection, its
    /// places under concurrency limits), rather than bytes in memory.
    pub fn is_stream(&self) -> bool {
        matches!(self, GatewayBody::Stream(_))
    }

    /// Ends the call now, before its answer was taken whole: recorded `incomplete` with
    /// `reason`, its vendor connection closed and its places given back.
    pub fn abandon(self, reason: &'static str) {
        if let GatewayBody::Stream(mut body) = self {
            body.finish(true, Some(reason));
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match this {
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Held(held) => {
                let chunk = held.next();
                if held.rest.is_empty() {
                    // Done: the share goes back now, not when hyper drops the body.
                    *this = GatewayBody::Full(None);
                }
                Poll::Ready(chunk.map(|b| Ok(Frame::data(b))))
            }
            GatewayBody::Stream(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(bytes) => bytes.is_none(),
            GatewayBody::Held(held) => held.rest.is_empty(),
            GatewayBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            GatewayBody::Held(held) => SizeHint::with_exact(held.rest.len() as u64),
            GatewayBody::Stream(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escapes::every_byte::{self, json_escaped, percent_encoded, xml_escaped};

    /// Each `br` or `zstd` decoder takes its coding's most from the budget, until it is spent;
    /// a share comes back when its permit is dropped; `gzip` and `deflate` take none.
    #[test]
    fn decoders_take_their_share_of_the_budget_until_it_is_spent() {
        let budget = DecoderBudget::new(20 << 20, 20 << 20);
        assert!(budget.take(Coding::Gzip, None).unwrap().is_none());
        assert!(budget.take(Coding::Deflate, None).unwrap().is_none());
        let first = budget.take(Coding::Zstd, None).unwrap().unwrap();
        let _second = budget.take(Coding::Zstd, None).unwrap().unwrap();
        assert_eq!(
            budget.take(Coding::Zstd, None).err(),
            Some(RequestBodyViolation::DecodersBusy)
        );
        assert_eq!(
            budget.take(Coding::Brotli, None).err(),
            Some(RequestBodyViolation::DecodersBusy)
        );
        drop(first);
        let _brotli = budget.take(Coding::Brotli, None).unwrap().unwrap();
        let _another = budget.take(Coding::Brotli, None).unwrap().unwrap();
        assert!(budget.take(Coding::Zstd, None).is_err());
    }

    /// A share grows while the budget has room; one caller's shares together stay within its
    /// part, but a share alone may pass it (one call scanning a large body), and whatever a
    /// share held comes back when it is dropped.
    #[test]
    fn a_share_grows_alone_past_its_callers_part_but_not_beside_others() {
        let budget = DecoderBudget::new(40 << 20, 10 << 20);
        let mallory: Arc<str> = Arc::from("mallory");
        let mut alone = budget.permit(Some(&mallory));
        assert!(alone.grow(0));
        assert!(
            alone.grow(30 << 20),
            "one share alone passes its caller's part"
        );
        assert!(!alone.grow(11 << 20), "but not the budget");
        let mut beside = budget.permit(Some(&mallory));
        assert!(
            !beside.grow(1),
            "a second share of the same caller is past its part"
        );
        let mut other = budget.permit(None);
        assert!(other.grow(10 << 20));
        assert!(!other.grow(1));
        drop(alone);
        assert!(beside.grow(10 << 20), "alone once the other went");
        let mut third = budget.permit(Some(&mallory));
        assert!(!third.grow(1), "beside another share, the part holds");
        drop((beside, third, other));

        // A share split off (a copy scanned off the worker) counts until it goes; a share
        // shrunk gives back the rest; nothing is left held once all are dropped.
        let mut call = budget.permit(Some(&mallory));
        assert!(call.grow(20 << 20));
        assert!(
            call.grow(20 << 20),
            "the call's copy, counted in its own share"
        );
        let copy = call.split_off(20 << 20);
        assert!(!budget.permit(None).grow(1), "40 of 40 MiB held");
        drop(copy);
        call.shrink_to(5 << 20);
        assert!(budget.permit(None).grow(35 << 20));
        drop(call);
        assert!(budget.permit(None).grow(40 << 20), "everything came back");
    }

    /// One caller's bodies hold at most its part of the budget: past it that caller is refused
    /// while another still has room; a caller's part comes back with its permits.
    #[test]
    fn one_caller_holds_at_most_its_part_of_the_decoder_budget() {
        let budget = DecoderBudget::new(40 << 20, 10 << 20);
        let (mallory, alice): (Arc<str>, Arc<str>) = (Arc::from("mallory"), Arc::from("alice"));
        let first = budget
            .take(Coding::Brotli, Some(&mallory))
            .unwrap()
            .unwrap();
        let _second = budget
            .take(Coding::Brotli, Some(&mallory))
            .unwrap()
            .unwrap();
        // 8 of mallory's 10 MiB held: a third 4 MiB body is refused, alice's is not.
        assert_eq!(
            budget.take(Coding::Brotli, Some(&mallory)).err(),
            Some(RequestBodyViolation::DecodersBusy)
        );
        let _alice = budget.take(Coding::Zstd, Some(&alice)).unwrap().unwrap();
        drop(first);
        let _third = budget
            .take(Coding::Brotli, Some(&mallory))
            .unwrap()
            .unwrap();
        // Bodies no caller is known for count against the whole budget only.
        let unknown: Vec<_> = (0..3)
            .map(|_| budget.take(Coding::Brotli, None).unwrap().unwrap())
            .collect();
        assert_eq!(unknown.len(), 3);
        // 28.5 MiB held in all: one more zstd body fits (37), a second does not.
        let _more = budget.take(Coding::Zstd, None).unwrap().unwrap();
        assert!(
            budget.take(Coding::Zstd, None).is_err(),
            "37 of 40 MiB held"
        );
    }
    use crate::tokens::GLUE;
    use http_body_util::BodyExt as _;
    use memchr::memmem;

    fn state() -> Arc<RequestBodyState> {
        Arc::new(RequestBodyState::default())
    }

    /// `data` in gzip, at `level`.
    fn gzip_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    use postern_scan::testing::gzip;

    /// The body's frames, checking at each step that its exact size hint is what is left to
    /// send (the length an HTTP/1.1 vendor is told), and that no frame is empty (an h2 vendor
    /// closes a connection that carries many, with every call on it).
    async fn forwarded(body: ForwardBody) -> (Result<Vec<u8>, BodyError>, Vec<u8>) {
        let mut sent = Vec::new();
        let mut body = body;
        let announced = body.size_hint().exact();
        loop {
            match body.frame().await {
                None => {
                    if let Some(announced) = announced {
                        assert_eq!(announced, sent.len() as u64, "size hint");
                    }
                    return (Ok(sent.clone()), sent);
                }
                Some(Ok(frame)) => {
                    let data = frame.data_ref().unwrap();
                    assert!(!data.is_empty(), "an empty frame");
                    sent.extend_from_slice(data);
                    if let (Some(announced), Some(left)) = (announced, body.size_hint().exact()) {
                        assert_eq!(announced, sent.len() as u64 + left, "size hint");
                    }
                }
                Some(Err(error)) => return (Err(error), sent),
            }
        }
    }

    /// A streamed body goes frame by frame as it comes: only bytes at a frame's end that could
    /// start a token wait for the next frame (a `p`, `ps` or `pst` with at most 16 base64url
    /// characters before it, `pst_` and base64url characters, a whole run until the byte after
    /// it; the start of the caller's own token), so a caller that waits for the vendor's answer
    /// to each small message before it sends the next is not stalled.
    #[tokio::test]
    async fn a_streamed_body_waits_only_where_a_token_could_start() {
        let run = format!("pst_{}", "A".repeat(43));
        // A prefix with more glued before it than a token may have, and a run with more glued
        // after it: neither can be a token.
        let glued_short = format!("{}pst_AB", "x".repeat(GLUE + 1));
        let too_long = format!("{}\n", "A".repeat(GLUE + 1));
        let without_token: (Option<&[u8]>, Vec<String>, Vec<String>) = (
            None,
            [
                "{\"n\": 1}\n",
                "{\"n\": 2, \"k\": \"p",
                "s\"}\n",
                "tail pst_AAAA",
                "Z!\n",
                &glued_short,
                " k=",
                &run,
                &too_long,
            ]
            .map(String::from)
            .to_vec(),
            [
                "{\"n\": 1}\n",
                "{\"n\": 2, \"k\": \"",
                "ps\"}\n",
                "tail ",
                "pst_AAAAZ!\n",
                &glued_short,
                " k=",
                &format!("{run}{too_long}"),
            ]
            .map(String::from)
            .to_vec(),
        );
        let own: (Option<&[u8]>, Vec<String>, Vec<String>) = (
            Some(b"vendor-style-secret-0123456789"),
            // (An alphanumeric may start one of the token's base64 forms: one before a frame's
            // last `&` waits with it, as a character reference after it, `&#65;`, could
            // continue the form in the XML reading.)
            ["a=1&t=vendor-sty", "le-secrex&b=2&", "c=3"]
                .map(String::from)
                .to_vec(),
            ["a=1&t=", "vendor-style-secrex&b=2&c=3"]
                .map(String::from)
                .to_vec(),
        );
        for (token, frames, expected) in [without_token, own] {
            let frames = frames.into_iter().map(Bytes::from).collect();
            let mut body = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, state())
                .reading(None, token, None)
                .unwrap();
            for expected in expected {
                let frame = body.frame().await.unwrap().unwrap();
                assert_eq!(
                    String::from_utf8_lossy(frame.data_ref().unwrap()),
                    expected,
                    "{token:?}"
                );
            }
            assert!(body.frame().await.is_none());
        }
    }

    /// Random bodies split into random frames (`crate::fuzz`): one holding a token-shaped run,
    /// or the caller's own token (one that starts with `pst_` but is no run, or another), written
    /// plainly or with escapes (each character of it escaped or not, by one kind, or `%`
    /// written twice), is refused with nothing of the token sent; the same body with the token
    /// one character short goes whole, in order. Text around the token is drawn from the bytes
    /// that start tokens and escapes; half the bodies come with their first frame read ahead
    /// (`ForwardBody::with_prefix`).
    #[tokio::test]
    async fn random_bodies_and_splits_send_nothing_of_a_token() {
        let seed = 0x5eed_f00d_u64;
        let mut fuzz = crate::fuzz::Fuzz(seed);
        let alphabet = b"pst_A9%\\u07\" =&{}:\n";
        for case in 0..3_000 {
            let text = |fuzz: &mut crate::fuzz::Fuzz| -> Vec<u8> {
                (0..fuzz.below(60))
                    .map(|_| alphabet[fuzz.below(alphabet.len())])
                    .collect()
            };
            let random: Vec<u8> = (0..43).map(|_| b"AbZ09-_q"[fuzz.below(8)]).collect();
            let write = |fuzz: &mut crate::fuzz::Fuzz, run: &[u8]| -> Vec<u8> {
                let form = fuzz.below(5);
                run.iter()
                    .flat_map(|&byte| match (form, fuzz.below(3)) {
                        (1, 0) => format!("%{byte:02x}").into_bytes(),
                        (2, 0) => format!("\\u{byte:04x}").into_bytes(),
                        (3, 0) => format!("%25{byte:02X}").into_bytes(),
                        (4, 0) => format!("&#{byte};").into_bytes(),
                        _ => vec![byte],
                    })
                    .collect()
            };
            let before = [text(&mut fuzz), b" ".to_vec()].concat();
            let after = [b" ".to_vec(), text(&mut fuzz)].concat();
            let (token, own) = match case % 3 {
                0 => ([&b"pst_"[..], &random].concat(), None),
                1 => {
                    let own = [&b"pst_"[..], &random[..30]].concat();
                    (own.clone(), Some(own))
                }
                _ => {
                    let own = [&b"sk_caller_"[..], &random[..25]].concat();
                    (own.clone(), Some(own))
                }
            };
            let written = write(&mut fuzz, &token);
            let short = write(&mut fuzz, &token[..token.len() - 1]);
            for (body, is_token) in [
                ([&before[..], &written, &after].concat(), true),
                ([&before[..], &short, &after].concat(), false),
            ] {
                let mut cuts: Vec<usize> = (0..fuzz.below(6))
                    .map(|_| fuzz.below(body.len() + 1))
                    .collect();
                cuts.extend([0, body.len()]);
                cuts.sort_unstable();
                let mut frames: std::collections::VecDeque<Bytes> = cuts
                    .windows(2)
                    .map(|cut| Bytes::copy_from_slice(&body[cut[0]..cut[1]]))
                    .collect();
                let shown = crate::fuzz::shown(seed, case, &body);
                let forward = match fuzz.below(2) {
                    0 => ForwardBody::new(CallerBody::Frames(frames), 1 << 20, state()),
                    _ => {
                        let first = frames.pop_front().unwrap_or_default();
                        let rest = CallerBody::Frames(frames);
                        ForwardBody::with_prefix(first, rest, 1 << 20, state())
                    }
                };
                let (result, sent) = match forward.reading(None, own.as_deref(), None) {
                    Ok(forward) => forwarded(forward).await,
                    Err(violation) => {
                        assert_eq!(violation, RequestBodyViolation::CallerToken, "{shown}");
                        (Err(BodyError::CallerTokenInBody), Vec::new())
                    }
                };
                assert!(body.starts_with(&sent), "{shown}");
                if is_token {
                    assert!(
                        matches!(result, Err(BodyError::CallerTokenInBody)),
                        "{shown} at {cuts:?}"
                    );
                    // Nothing of the token: at most the `&` or `&#` that begin a character
                    // reference, which tell nothing of the character.
                    assert!(
                        sent.len() <= before.len() || matches!(&sent[before.len()..], b"&" | b"&#"),
                        "{shown} at {cuts:?}"
                    );
                } else if whole_holds_a_token(&Needles::new(own.as_deref()), &body, true) {
                    // The text around it holds a token of its own making: refused all the same.
                    assert!(
                        matches!(result, Err(BodyError::CallerTokenInBody)),
                        "{shown} at {cuts:?}"
                    );
                } else {
                    assert_eq!(sent, body, "{shown} at {cuts:?}");
                }
            }
        }
    }

    /// A caller without a token of its own (identified by its certificate) still cannot hand
    /// the vendor a token `postern` made: plain, percent-encoded or JSON-escaped, split between
    /// three frames anywhere, or at the body's very end, it is refused with none of it sent. A
    /// run one character longer or shorter is no token: the body goes whole, in order.
    #[tokio::test]
    async fn a_token_shaped_run_is_refused_for_a_caller_without_a_token() {
        let token = [
            b"pst_".as_slice(),
            b"AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde",
        ]
        .concat();
        let cases = [
            (&b"amount=1&key="[..], token.clone(), &b"&x=1"[..]),
            (&b"amount=1&key="[..], token.clone(), &b""[..]),
            (
                &b"amount=1&key="[..],
                percent_encoded(&token).to_ascii_lowercase(),
                &b""[..],
            ),
            (
                &b"{\"key\": \""[..],
                every_byte::escaped(&token, |b| format!("\\u{b:04X}")),
                &b"\"}"[..],
            ),
        ];
        let sent_through = |text: &[u8], first: usize, second: usize| {
            let frames = std::collections::VecDeque::from([
                Bytes::copy_from_slice(&text[..first]),
                Bytes::copy_from_slice(&text[first..second]),
                Bytes::copy_from_slice(&text[second..]),
            ]);
            let shared = state();
            let body = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, shared.clone())
                .reading(None, None, None)
                .unwrap();
            (body, shared)
        };
        for (start, written, end) in cases {
            let text = [start, &written, end].concat();
            for first in 0..=text.len() {
                for second in (first..=text.len()).step_by(5) {
                    let (body, shared) = sent_through(&text, first, second);
                    let (result, sent) = forwarded(body).await;
                    assert!(
                        matches!(result, Err(BodyError::CallerTokenInBody)),
                        "{} split at {first}, {second}: {result:?}",
                        String::from_utf8_lossy(&text)
                    );
                    assert!(sent.len() <= start.len(), "split at {first}, {second}");
                    assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
                }
            }
            let read =
                ForwardBody::new(CallerBody::Read(Some(Bytes::from(text))), 1 << 20, state())
                    .reading(None, None, None);
            assert_eq!(read.err(), Some(RequestBodyViolation::CallerToken));
        }
        for near in [
            [&b"k="[..], &token[..], &[b'Z'; GLUE + 1], b"&x=1"].concat(),
            [b"k=", &token[..token.len() - 1]].concat(),
            [&b"k="[..], &[b'Z'; GLUE + 1], &token[..]].concat(),
        ] {
            for first in 0..=near.len() {
                let (body, _) = sent_through(&near, first, near.len());
                assert_eq!(forwarded(body).await.0.unwrap(), near, "split at {first}");
            }
        }
    }

    /// The caller's token percent-encoded (as in a form) or written with JSON's `\u` escapes,
    /// in one frame or split between two anywhere: refused, with nothing sent from where its
    /// escaped form begins; and, read ahead whole, refused before anything is sent. A body
    /// whose escapes spell no token goes whole, in order.
    #[tokio::test]
    async fn an_escaped_token_is_found_and_none_of_it_is_sent() {
        let token: &[u8] = b"pst_0123456789abcdefghij";
        let cases = [
            (&b"amount=1&key="[..], percent_encoded(token), &b"&x=1"[..]),
            (&b"{\"key\": \""[..], json_escaped(token), &b"\"}"[..]),
            (
                &b"<auth><key>"[..],
                xml_escaped(token),
                &b"</key></auth>"[..],
            ),
        ];
        for (start, escaped, end) in cases {
            let text = [start, &escaped, end].concat();
            for at in 0..=text.len() {
                let shared = state();
                let frames = std::collections::VecDeque::from([
                    Bytes::copy_from_slice(&text[..at]),
                    Bytes::copy_from_slice(&text[at..]),
                ]);
                let body = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, shared.clone())
                    .reading(None, Some(token), None)
                    .unwrap();
                let (result, sent) = forwarded(body).await;
                assert!(
                    matches!(result, Err(BodyError::CallerTokenInBody)),
                    "split at {at}: {result:?}"
                );
                // Nothing of the token: at most the `&` or `&#` that begin a character reference.
                assert!(
                    sent.len() <= start.len() || matches!(&sent[start.len()..], b"&" | b"&#"),
                    "split at {at}: sent {}",
                    String::from_utf8_lossy(&sent)
                );
                assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
            }
            let shared = state();
            let whole = ForwardBody::with_prefix(
                Bytes::from(text),
                CallerBody::empty(),
                1 << 20,
                shared.clone(),
            )
            .reading(None, Some(token), None);
            assert_eq!(whole.err(), Some(RequestBodyViolation::CallerToken));
            // A body the server read whole is read ahead the same way: refused before anything
            // is sent, no request opened to the vendor.
            let shared = state();
            let read = ForwardBody::new(
                CallerBody::Read(Some(Bytes::from([start, &escaped, end].concat()))),
                1 << 20,
                shared.clone(),
            )
            .reading(None, Some(token), None);
            assert_eq!(read.err(), Some(RequestBodyViolation::CallerToken));
            assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
        }
        let clean = br#"{"name": "caf\u00e9 %41", "key": "pst_0123", "path": "a\/b"}"#;
        for at in 0..=clean.len() {
            let frames = std::collections::VecDeque::from([
                Bytes::from_static(&clean[..at]),
                Bytes::from_static(&clean[at..]),
            ]);
            let body = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, state())
                .reading(None, Some(token), None)
                .unwrap();
            let (result, sent) = forwarded(body).await;
            assert_eq!(result.unwrap(), clean, "split at {at}");
            assert_eq!(sent, clean);
        }
    }

    /// A compressed body is read decoded for the caller token: found however the compressed
    /// bytes fall between what was read ahead and the stream, and refused at the frame that
    /// completes it (the vendor never has the whole body); a body without it passes as sent;
    /// one that decodes past the limit is refused as too large.
    #[tokio::test]
    async fn a_compressed_body_is_read_decoded_for_the_caller_token() {
        let token: &[u8] = b"pst_0123456789abcdefghij";
        let mut text = b"a=".to_vec();
        text.extend((0..3000u32).flat_map(|n| n.to_string().into_bytes()));
        let harmless = gzip(&text);
        text.extend_from_slice(token);
        text.extend_from_slice(b"&b=1");
        let compressed = gzip(&text);
        let mut found_ahead = 0;
        for split in [1, compressed.len() / 2, compressed.len() - 1] {
            let ahead = Bytes::copy_from_slice(&compressed[..split]);
            let rest = CallerBody::Read(Some(Bytes::copy_from_slice(&compressed[split..])));
            let shared = state();
            let body = ForwardBody::with_prefix(ahead, rest, 1 << 20, shared.clone()).reading(
                Some(Coding::Gzip),
                Some(token),
                None,
            );
            let body = match body {
                Ok(body) => body,
                Err(violation) => {
                    assert_eq!(
                        violation,
                        RequestBodyViolation::CallerToken,
                        "split at {split}"
                    );
                    assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
                    found_ahead += 1;
                    continue;
                }
            };
            let (result, sent) = forwarded(body).await;
            assert!(
                matches!(result, Err(BodyError::CallerTokenInBody)),
                "split at {split}: {result:?}"
            );
            assert!(sent.len() < compressed.len(), "the whole body was sent");
            assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
        }
        assert_eq!(
            found_ahead, 1,
            "only the split past the token finds it ahead"
        );
        let clean = ForwardBody::new(
            CallerBody::Read(Some(Bytes::from(harmless.clone()))),
            1 << 20,
            state(),
        )
        .reading(Some(Coding::Gzip), Some(token), None)
        .unwrap();
        let (result, _) = forwarded(clean).await;
        assert_eq!(result.unwrap(), harmless);
        let shared = state();
        // Read whole, it is refused before anything is sent; streamed, at the frame that
        // decodes past the limit.
        let bomb = ForwardBody::new(
            CallerBody::Read(Some(Bytes::from(gzip(&vec![b'a'; 200_000])))),
            100_000,
            shared.clone(),
        )
        .reading(Some(Coding::Gzip), Some(token), None);
        assert_eq!(bomb.err(), Some(RequestBodyViolation::TooLarge));
        assert_eq!(shared.violation(), RequestBodyViolation::TooLarge);
        let shared = state();
        let frames = std::collections::VecDeque::from([Bytes::from(gzip(&vec![b'a'; 200_000]))]);
        let bomb = ForwardBody::new(CallerBody::Frames(frames), 100_000, shared.clone())
            .reading(Some(Coding::Gzip), Some(token), None)
            .unwrap();
        let (result, _) = forwarded(bomb).await;
        assert!(
            matches!(result, Err(BodyError::RequestTooLarge(_))),
            "{result:?}"
        );
        assert_eq!(shared.violation(), RequestBodyViolation::TooLarge);
    }

    /// What was read ahead is searched for the caller's token as sent: in it, the body is
    /// refused before anything is sent; split between it and the stream, no byte of the token
    /// is sent; a body without it goes whole, in order.
    #[tokio::test]
    async fn a_token_in_what_was_read_ahead_is_found() {
        let token: &[u8] = b"pst_0123456789abcdefghij";
        let text = [&b"amount=1&key="[..], token, b"&currency=usd"].concat();
        let ahead = |at: usize, shared: &Arc<RequestBodyState>| {
            ForwardBody::with_prefix(
                Bytes::copy_from_slice(&text[..at]),
                CallerBody::Read(Some(Bytes::copy_from_slice(&text[at..]))),
                1 << 20,
                shared.clone(),
            )
            .reading(None, Some(token), None)
        };
        for at in [text.len() - 5, text.len()] {
            let shared = state();
            assert_eq!(
                ahead(at, &shared).err(),
                Some(RequestBodyViolation::CallerToken)
            );
            assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
        }
        // Read ahead whole, no stream after it.
        let shared = state();
        let whole = ForwardBody::with_prefix(
            Bytes::copy_from_slice(&text),
            CallerBody::empty(),
            1 << 20,
            shared.clone(),
        )
        .reading(None, Some(token), None);
        assert_eq!(whole.err(), Some(RequestBodyViolation::CallerToken));
        assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
        for at in [14, 20, 13 + token.len() - 1] {
            let shared = state();
            let (result, sent) = forwarded(ahead(at, &shared).unwrap()).await;
            assert!(matches!(result, Err(BodyError::CallerTokenInBody)), "{at}");
            // "amount=1&key=" is 13 bytes: nothing after it left.
            assert!(sent.len() <= 13, "{at}: {} bytes sent", sent.len());
            assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
        }
        let clean = b"amount=1&key=pst_0123&currency=usd";
        let body = ForwardBody::with_prefix(
            Bytes::from_static(&clean[..20]),
            CallerBody::Read(Some(Bytes::from_static(&clean[20..]))),
            1 << 20,
            state(),
        )
        .reading(None, Some(token), None)
        .unwrap();
        assert_eq!(forwarded(body).await.0.unwrap(), clean);
    }

    /// A streamed body goes as it comes, but its last byte waits for the end of the body: a
    /// field that overrides the method is refused before the vendor has the whole body. A body
    /// read whole is read to its end at once: clean, it goes in one frame (not its last byte in
    /// a packet of its own); overriding, nothing of it is sent.
    #[tokio::test]
    async fn a_form_body_is_held_one_byte_short_until_its_end_clears_it() {
        let body = |text: &'static str| CallerBody::Read(Some(Bytes::from_static(text.as_bytes())));
        let streamed = |text: &'static str| {
            let (head, last) = text.as_bytes().split_at(text.len() - 3);
            CallerBody::Frames(
                [Bytes::from_static(head), Bytes::from_static(last)]
                    .into_iter()
                    .collect(),
            )
        };
        let mut clean = ForwardBody::new(body("amount=1&_method=post"), 1 << 20, state())
            .reading(None, None, Some(OverrideScan::form(http::Method::POST)))
            .unwrap();
        let frame = clean.frame().await.unwrap().unwrap();
        assert_eq!(
            frame.data_ref().unwrap(),
            "amount=1&_method=post",
            "one frame"
        );
        assert!(clean.frame().await.is_none());

        // (Its first fields go before the last one is read.)
        const OVERRIDING: &str = "description=a-description-of-the-charge&amount=1&_method=DELETE";
        let shared = state();
        let refused = ForwardBody::new(streamed(OVERRIDING), 1 << 20, shared.clone())
            .reading(None, None, Some(OverrideScan::form(http::Method::POST)))
            .unwrap();
        let (result, sent) = forwarded(refused).await;
        assert!(matches!(result, Err(BodyError::MethodOverride)));
        assert!(!sent.is_empty() && OVERRIDING.as_bytes().starts_with(&sent));
        assert!(sent.len() < OVERRIDING.len(), "the last byte never left");
        assert_eq!(shared.violation(), RequestBodyViolation::MethodOverride);
        let harmless = OVERRIDING.replace("DELETE", "post");
        let harmless: &'static str = Box::leak(harmless.into_boxed_str());
        let (result, _) = forwarded(
            ForwardBody::new(streamed(harmless), 1 << 20, state())
                .reading(None, None, Some(OverrideScan::form(http::Method::POST)))
                .unwrap(),
        )
        .await;
        assert_eq!(result.unwrap(), harmless.as_bytes());

        let shared = state();
        let whole = ForwardBody::new(body("amount=1&_method=DELETE"), 1 << 20, shared.clone())
            .reading(None, None, Some(OverrideScan::form(http::Method::POST)));
        assert_eq!(whole.err(), Some(RequestBodyViolation::MethodOverride));
        assert_eq!(shared.violation(), RequestBodyViolation::MethodOverride);

        // Read ahead (`with_prefix`), the field split between the prefix and the stream, with
        // a caller token held back as well.
        let prefixed = |ahead: &'static [u8], rest: CallerBody, token: Option<&[u8]>| {
            ForwardBody::with_prefix(Bytes::from_static(ahead), rest, 1 << 20, state()).reading(
                None,
                token,
                Some(OverrideScan::form(http::Method::POST)),
            )
        };
        let (result, sent) =
            forwarded(prefixed(b"amount=1&_me", body("thod=PATCH"), Some(b"pst_token")).unwrap())
                .await;
        assert!(matches!(result, Err(BodyError::MethodOverride)));
        assert!(!sent.ends_with(b"PATCH"));
        let (result, _) = forwarded(
            prefixed(b"amount=1&_me", body("thod=POST&b=2"), Some(b"pst_token")).unwrap(),
        )
        .await;
        assert_eq!(result.unwrap(), b"amount=1&_method=POST&b=2");
        // Wholly read ahead and overriding: refused before anything is sent.
        let shared = state();
        let ahead = ForwardBody::with_prefix(
            Bytes::from_static(b"_method=DELETE&x=1"),
            CallerBody::empty(),
            1 << 20,
            shared.clone(),
        )
        .reading(None, None, Some(OverrideScan::form(http::Method::POST)));
        assert_eq!(ahead.err(), Some(RequestBodyViolation::MethodOverride));
        assert_eq!(shared.violation(), RequestBodyViolation::MethodOverride);
    }

    /// A compressed body is decoded once for all its readers: a `_method` field is found in
    /// it as in the caller's token, however the pieces fall, the last byte held until the end
    /// clears it; the caller's token still comes first; a body that is not valid for its coding
    /// is refused as undecodable, whoever reads it.
    #[tokio::test]
    async fn a_compressed_body_is_decoded_once_for_the_token_and_the_method_field() {
        let token: &[u8] = b"pst_0123456789abcdefghij";
        let post = || Some(OverrideScan::form(http::Method::POST));
        // The compressed body split at `at` between what was read ahead and the stream.
        let split = |gz: &[u8], at: usize, shared: &Arc<RequestBodyState>| {
            ForwardBody::with_prefix(
                Bytes::copy_from_slice(&gz[..at]),
                CallerBody::Read(Some(Bytes::copy_from_slice(&gz[at..]))),
                1 << 20,
                shared.clone(),
            )
        };
        let mut overriding = b"amount=1&description=".to_vec();
        overriding.extend((0..2000u32).flat_map(|n| n.to_string().into_bytes()));
        let mut harmless = overriding.clone();
        overriding.extend_from_slice(b"&_method=DELETE");
        harmless.extend_from_slice(b"&_method=post");
        let (overriding, harmless) = (gzip(&overriding), gzip(&harmless));
        for at in [1, overriding.len() / 2, overriding.len() - 1] {
            let shared = state();
            let body = split(&overriding, at, &shared)
                .reading(Some(Coding::Gzip), Some(token), post())
                .unwrap();
            let (result, sent) = forwarded(body).await;
            assert!(matches!(result, Err(BodyError::MethodOverride)), "{at}");
            assert!(sent.len() < overriding.len(), "{at}: the vendor had it all");
            assert_eq!(shared.violation(), RequestBodyViolation::MethodOverride);

            let body = split(&harmless, at.min(harmless.len() - 1), &state())
                .reading(Some(Coding::Gzip), Some(token), post())
                .unwrap();
            assert_eq!(forwarded(body).await.0.unwrap(), harmless, "{at}");
        }
        // Both in one decoded piece, the `_method` field first: the caller's token is the
        // refusal.
        let mut both = b"_method=DELETE&a=".to_vec();
        both.extend_from_slice(token);
        let both = gzip(&both);
        let body = split(&both, 1, &state())
            .reading(Some(Coding::Gzip), Some(token), post())
            .unwrap();
        assert!(matches!(
            forwarded(body).await.0,
            Err(BodyError::CallerTokenInBody)
        ));
        // Read ahead whole, its `_method` the last field (found only at the decoding's end):
        // refused before anything is sent.
        let shared = state();
        let whole = gzip(b"amount=1&_method=DELETE");
        let ahead = ForwardBody::with_prefix(
            Bytes::from(whole),
            CallerBody::empty(),
            1 << 20,
            shared.clone(),
        )
        .reading(Some(Coding::Gzip), Some(token), post());
        assert_eq!(ahead.err(), Some(RequestBodyViolation::MethodOverride));
        assert_eq!(shared.violation(), RequestBodyViolation::MethodOverride);
        // Read for a `_method` field only (no token), a corrupt body is undecodable.
        let shared = state();
        // (Read whole, before anything is sent.)
        let corrupt = ForwardBody::new(
            CallerBody::Read(Some(Bytes::from_static(b"amount=1 is not gzip"))),
            1 << 20,
            shared.clone(),
        )
        .reading(Some(Coding::Gzip), None, post());
        assert_eq!(corrupt.err(), Some(RequestBodyViolation::Undecodable));
        assert_eq!(shared.violation(), RequestBodyViolation::Undecodable);
        // A caller without a token (a certificate caller's PUT) has its body decoded all the
        // same, for what looks like any caller token: corrupt, it is undecodable too.
        let not_gzip = ForwardBody::new(
            CallerBody::Read(Some(Bytes::from_static(b"not gzip"))),
            1 << 20,
            state(),
        )
        .reading(Some(Coding::Gzip), None, None);
        assert_eq!(not_gzip.err(), Some(RequestBodyViolation::Undecodable));
        let shaped = [b"k=".as_slice(), b"pst_", &[b'X'; 43]].concat();
        let body = split(&gzip(&shaped), 2, &state())
            .reading(Some(Coding::Gzip), None, None)
            .unwrap();
        assert!(matches!(
            forwarded(body).await.0,
            Err(BodyError::CallerTokenInBody)
        ));
    }

    /// A `deflate` body read two ways whose raw reading ends early, in a token-shaped run its
    /// end decides (the zlib reading, and the body as sent, read the run as part of a longer
    /// one): refused as that reading ends, with nothing sent from the token's start on (until
    /// the review that found it, the frames held for that reading were released as it ended,
    /// and the refusal came only at the body's end).
    #[tokio::test]
    async fn a_reading_that_ends_in_a_token_before_the_body_ends_is_refused_then() {
        let token = [&b"pst_"[..], &[b'A'; 43][..]].concat();
        // The zlib reading: one stored block of `stored` (65,534 bytes). Read as raw DEFLATE,
        // the same bytes are a stored block of 10 spaces, then a final stored block holding the
        // token, after which the raw reading ends; the rest pads the zlib block with `A`s.
        let mut stored = Vec::new();
        stored.extend_from_slice(&10u16.to_le_bytes());
        stored.extend_from_slice(&(!10u16).to_le_bytes());
        stored.extend_from_slice(&[b' '; 10]);
        stored.push(0x01);
        let length = token.len() as u16;
        stored.extend_from_slice(&length.to_le_bytes());
        stored.extend_from_slice(&(!length).to_le_bytes());
        let token_at = 7 + stored.len();
        stored.extend_from_slice(&token);
        stored.resize(0xFFFE, b'A');
        let mut body = vec![0x78, 0x01, 0x00, 0xFE, 0xFF, 0x01, 0x00];
        body.extend_from_slice(&stored);
        body.extend_from_slice(&[0x01, 0x00, 0x00, 0xFF, 0xFF]);
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &stored {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        body.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut zlib = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&body[..]), &mut zlib)
            .unwrap();
        assert_eq!(zlib, stored, "the zlib reading holds no token");
        let frames = body.chunks(1000).map(Bytes::copy_from_slice).collect();
        let shared = state();
        let forward = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, shared.clone())
            .reading(Some(Coding::Deflate), None, None)
            .unwrap();
        let (result, sent) = forwarded(forward).await;
        assert!(
            matches!(result, Err(BodyError::CallerTokenInBody)),
            "{result:?}"
        );
        assert!(
            sent.len() <= token_at,
            "{} bytes sent, the token starts at {token_at}",
            sent.len()
        );
        assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
    }

    /// Kept for a scan, the decoded bytes come back whole up to the cap, and not at all past
    /// it; the body is read for the token all the same.
    #[test]
    fn a_decoding_keeps_what_it_decodes_up_to_its_cap() {
        let gz = gzip(b"amount=100&currency=usd");
        let read = |cap: usize, token: Option<&[u8]>| {
            let needles = Needles::new(token);
            let mut decoding = Decoding::new(Coding::Gzip, 1 << 20, None, Some(cap));
            for piece in gz.chunks(3) {
                decoding.check(&needles, piece, false)?;
            }
            decoding.check(&needles, &[], true)?;
            Ok::<_, RequestBodyViolation>(decoding.kept())
        };
        assert_eq!(
            read(23, None).unwrap().unwrap(),
            [b"amount=100&currency=usd"]
        );
        assert_eq!(read(22, None).unwrap(), None);
        assert_eq!(
            read(22, Some(b"currency")).err(),
            Some(RequestBodyViolation::CallerToken)
        );
    }

    /// A token the decoding completes in a later frame: the earlier frames, whose compressed
    /// bytes decode to the token's start, are held back whole, so the vendor never has even a
    /// compressed prefix of it; a clean body still goes whole, in order.
    #[tokio::test]
    async fn a_token_split_across_compressed_frames_sends_no_part_of_it() {
        use std::io::Write as _;
        let token: &[u8] = b"pst_0123456789abcdefghijklmnop";
        let mut text = b"a=".to_vec();
        text.extend((0..3000u32).flat_map(|n| n.to_string().into_bytes()));
        text.extend_from_slice(token);
        text.extend_from_slice(b"&b=1");
        let gz = gzip_at(&text, flate2::Compression::best());
        // What a lenient decoder makes of compressed bytes (of the first `at`).
        let lenient_of = |bytes: &[u8]| {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            let _ = d.write_all(bytes).and_then(|()| d.flush());
            d.get_ref().clone()
        };
        let lenient = |at: usize| lenient_of(&gz[..at]);
        let half = &token[..token.len() / 2];
        let has = |hay: &[u8], needle: &[u8]| memmem::find(hay, needle).is_some();
        let at = (1..gz.len())
            .find(|&at| has(&lenient(at), half))
            .expect("a split that decodes to the token's first half");
        assert!(!has(&lenient(at), token));
        // Streamed in three frames, a block boundary inside the token (a sync flush, then a new
        // block whose header is longer than the token): the first frame decodes to the token's
        // first half, the second to more of it; neither goes before the third completes it,
        // though the second is long enough that holding back the token's length of compressed
        // bytes would have let the first go.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&text[..text.len() - token.len() / 2 - 4])
            .unwrap();
        e.flush().unwrap();
        let one = e.get_ref().len();
        e.write_all(&text[text.len() - token.len() / 2 - 4..])
            .unwrap();
        // Varied text after it, so the new block is one with its own code tables, ahead of it.
        let varied: Vec<u8> = (0..20_000u32)
            .map(|n| {
                b"etaoinshrdlucmfwypvbgkqjxz"[(n.wrapping_mul(2_654_435_761) >> 27) as usize % 26]
            })
            .collect();
        e.write_all(&varied).unwrap();
        let flushed = e.finish().unwrap();
        let lenient = |at: usize| lenient_of(&flushed[..at]);
        assert!(has(&lenient(one), &token[..token.len() / 2]));
        let two = (one..flushed.len())
            .find(|&at| has(&lenient(at), &token[..token.len() * 3 / 4]))
            .unwrap();
        assert!(!has(&lenient(two), token));
        assert!(
            two - one > token.len(),
            "the second frame is {} bytes",
            two - one
        );
        let frames = [&flushed[..one], &flushed[one..two], &flushed[two..]]
            .map(Bytes::copy_from_slice)
            .into_iter()
            .collect();
        // What goes before a body read for `token`, which must be refused for it, is sent.
        let sent_before_the_token = |body: ForwardBody, shared: Arc<RequestBodyState>| async move {
            let body = body.reading(Some(Coding::Gzip), Some(token), None).unwrap();
            let (result, sent) = forwarded(body).await;
            assert!(
                matches!(result, Err(BodyError::CallerTokenInBody)),
                "{result:?}"
            );
            assert_eq!(shared.violation(), RequestBodyViolation::CallerToken);
            sent
        };
        let shared = state();
        let streamed = ForwardBody::new(CallerBody::Frames(frames), 1 << 20, shared.clone());
        let sent = sent_before_the_token(streamed, shared).await;
        assert!(
            !has(&lenient_of(&sent), &token[..3]),
            "the token's start was sent: {} bytes",
            sent.len()
        );
        let shared = state();
        let ahead = ForwardBody::with_prefix(
            Bytes::copy_from_slice(&gz[..at]),
            CallerBody::Read(Some(Bytes::copy_from_slice(&gz[at..]))),
            1 << 20,
            shared.clone(),
        );
        let sent = sent_before_the_token(ahead, shared).await;
        assert!(sent.is_empty(), "{} compressed bytes sent", sent.len());

        let clean = gzip_at(
            &text[..text.len() - token.len() - 4],
            flate2::Compression::best(),
        );
        let body = ForwardBody::with_prefix(
            Bytes::copy_from_slice(&clean[..100]),
            CallerBody::Read(Some(Bytes::copy_from_slice(&clean[100..]))),
            1 << 20,
            state(),
        )
        .reading(Some(Coding::Gzip), Some(token), None)
        .unwrap();
        assert_eq!(forwarded(body).await.0.unwrap(), clean);
    }

    /// A `deflate` body that reads two ways (a valid zlib stream that starts as a raw DEFLATE
    /// stored block too) is read both ways: a `_method` field or the caller's token in its raw
    /// reading only is found there, streamed or read whole; harmless both ways, it goes whole,
    /// and both readings are kept for a scan.
    #[tokio::test]
    async fn a_deflate_body_that_reads_two_ways_is_read_both_ways() {
        let token: &[u8] = b"pst_0123456789abcdefghij";
        let post = || Some(OverrideScan::form(http::Method::POST));
        let mut with_token = b"&t=".to_vec();
        with_token.extend_from_slice(token);
        with_token.push(b'&');
        for (hidden, violation) in [
            (
                &b"&_method=DELETE&"[..],
                RequestBodyViolation::MethodOverride,
            ),
            (&with_token[..], RequestBodyViolation::CallerToken),
        ] {
            let body = postern_scan::testing::two_way_deflate(hidden);
            let mut zlib = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&body[..]), &mut zlib)
                .unwrap();
            assert!(
                memmem::find(&zlib, hidden).is_none(),
                "only the raw reading has it"
            );
            let whole = ForwardBody::with_prefix(
                Bytes::from(body.clone()),
                CallerBody::empty(),
                1 << 20,
                state(),
            )
            .reading(Some(Coding::Deflate), Some(token), post());
            assert_eq!(whole.err(), Some(violation));
            let shared = state();
            let streamed = ForwardBody::with_prefix(
                Bytes::copy_from_slice(&body[..100]),
                CallerBody::Read(Some(Bytes::copy_from_slice(&body[100..]))),
                1 << 20,
                shared.clone(),
            )
            .reading(Some(Coding::Deflate), Some(token), post())
            .unwrap();
            let (result, sent) = forwarded(streamed).await;
            assert!(result.is_err(), "{result:?}");
            assert!(sent.len() < body.len(), "the vendor had it all");
            assert_eq!(shared.violation(), violation);
        }
        let harmless = postern_scan::testing::two_way_deflate(b"&note=fine&");
        let body = ForwardBody::with_prefix(
            Bytes::copy_from_slice(&harmless[..100]),
            CallerBody::Read(Some(Bytes::copy_from_slice(&harmless[100..]))),
            1 << 20,
            state(),
        )
        .reading(Some(Coding::Deflate), Some(token), post())
        .unwrap();
        assert_eq!(forwarded(body).await.0.unwrap(), harmless);
        let needles = Needles::new(None);
        let mut decoding = Decoding::new(Coding::Deflate, 1 << 20, None, Some(1 << 20));
        decoding.check(&needles, &harmless, false).unwrap();
        decoding.check(&needles, &[], true).unwrap();
        let kept = decoding.kept().unwrap();
        assert_eq!(kept.len(), 2, "two readings");
        assert_eq!(kept[0].len(), 0xfefe, "the zlib one");
        assert!(kept[1].ends_with(b"&note=fine&"), "the raw one");
    }
}
