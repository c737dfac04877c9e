//! The call event: one JSON object per call, allowed or denied, appended to
//! `<data_dir>/events.jsonl` and kept in a bounded in-memory ring for the admin API.
//!
//! The schema is documented in `docs/EVENTS.md`; fields are only ever added. Events never hold a
//! secret, a raw path or a body: the path is the operation's template.
//!
//! Writing is off the request path, and cheap on it: the data plane serializes the event into a
//! reusable thread-local buffer (no per-field allocation, no serde: [`CallEventRef::write_json`]
//! writes the JSON straight from the call's context, byte for byte what the derived `Serialize`
//! gives) and appends the bytes to one shared buffer under an uncontended lock — no channel, no
//! per-event wake-up. A single writer thread wakes when a batch is due (every
//! [`WRITER_LINGER`], when the buffer passes [`WAKE_THRESHOLD_BYTES`], on `flush()`, or on the
//! first event after it went idle), swaps the buffer out and appends it with one `write()` per
//! file, rotating at line boundaries.
//!
//! Guarantees (docs/EVENTS.md): a buffer past [`MAX_BUFFERED_BYTES`] makes the producer wait for
//! the writer (back-pressure, counted in [`EventStats::backpressure_waits`]) — events are never
//! dropped silently; an I/O failure is counted and logged, and writing resumes when the disk
//! recovers; `flush()` returns once everything recorded before it is written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use postern_tlog::json::{push_opt_str, push_str, push_u64};
use serde::{Serialize, Serializer};
use tokio::sync::oneshot;

/// Version of the event schema; bumped only for incompatible changes.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// The longest method an event records as it is (registered methods are at most 17 bytes):
/// a longer one, a caller's free text up to the header limit, is recorded as `OTHER`, so no
/// call, refused or not, makes its event (and the recent events the admin API holds) kilobytes
/// long.
pub const EVENT_METHOD_MAX: usize = 32;

/// The method as an event records it ([`EVENT_METHOD_MAX`]).
pub fn event_method(method: &http::Method) -> &str {
    let text = method.as_str();
    if text.len() <= EVENT_METHOD_MAX {
        text
    } else {
        "OTHER"
    }
}

/// How many recent events the admin API can return.
pub const RECENT_EVENTS_CAPACITY: usize = 10_000;

/// How long the writer lets events accumulate before writing a batch.
pub const WRITER_LINGER: Duration = Duration::from_millis(20);

/// Buffered bytes past which a producer wakes the writer early.
pub const WAKE_THRESHOLD_BYTES: usize = 256 * 1024;

/// Buffered bytes past which producers wait for the writer (back-pressure). About 16k events.
pub const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;

/// One call, as recorded (owned form; the data plane serializes [`CallEventRef`] directly).
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub schema_version: u32,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub request_id: String,
    pub integration: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<String>,
    /// Empty when the request was refused before its method could be read.
    pub method: String,
    /// The operation's path template, never the raw path.
    pub path: Option<String>,
    pub status: u16,
    pub decision: Decision,
    pub reason: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    pub upstream_addr: Option<String>,
    pub source_ip: String,
    /// How the caller was identified: `token`, `mtls` or absent.
    pub auth: Option<&'static str>,
    /// Downstream protocol: `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The Cedar policy that decided (`grant-N`, or a custom policy's id); absent when no
    /// policy applied (not granted) or the call was refused before authorization.
    pub policy: Option<String>,
    /// Set when the vendor answered with a redirect whose Location leaves the upstream origin.
    pub redirect_off_origin: bool,
    /// Set when the vendor's answer carried the injected credential: a header that held it was
    /// dropped, a body redacted in place or cut (`reason` `secret_echoed`).
    pub secret_echoed: bool,
    /// Set when the response body stopped early (client went away, limit hit, upstream reset).
    pub incomplete: bool,
    /// Data classes found in the request body (class → count), for scanned integrations.
    pub data_classes: Option<std::collections::BTreeMap<String, usize>>,
    /// Why a scanned integration's request body was not scanned.
    pub unscanned: Option<&'static str>,
    /// Whether unapproved values were masked before forwarding.
    pub redacted: bool,
    /// Data classes found in the vendor's response body, for scanned integrations.
    pub response_data_classes: Option<std::collections::BTreeMap<String, usize>>,
    /// Why a scanned integration's response body was not scanned.
    pub response_unscanned: Option<&'static str>,
    /// Whether unapproved values in the response were masked before it reached the caller.
    pub response_redacted: bool,
    /// How the call reached Postern, when not path mode: `proxy` (absolute-form plain HTTP),
    /// `tunnel` (CONNECT, not intercepted: host policy, bytes and timing only) or `intercept`
    /// (CONNECT with TLS interception: the full pipeline).
    pub mode: Option<&'static str>,
    /// The destination host of a forward-proxy call.
    pub host: Option<String>,
}

impl CallEvent {
    /// The borrowed view that defines the serialized form.
    pub fn as_ref(&self) -> CallEventRef<'_> {
        CallEventRef {
            schema_version: self.schema_version,
            time: EventText::Str(&self.time),
            request_id: &self.request_id,
            integration: self.integration.as_deref(),
            caller: self.caller.as_deref(),
            operation: self.operation.as_deref(),
            method: &self.method,
            path: self.path.as_deref(),
            status: self.status,
            decision: self.decision,
            reason: &self.reason,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            duration_ms: self.duration_ms,
            upstream_addr: self.upstream_addr.as_deref().map(EventText::Str),
            source_ip: EventText::Str(&self.source_ip),
            auth: self.auth,
            protocol: self.protocol,
            policy: self.policy.as_deref(),
            redirect_off_origin: self.redirect_off_origin,
            secret_echoed: self.secret_echoed,
            incomplete: self.incomplete,
            data_classes: self.data_classes.as_ref(),
            unscanned: self.unscanned,
            redacted: self.redacted,
            response_data_classes: self.response_data_classes.as_ref(),
            response_unscanned: self.response_unscanned,
            response_redacted: self.response_redacted,
            mode: self.mode,
            host: self.host.as_deref(),
        }
    }
}

impl Serialize for CallEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(serializer)
    }
}

/// One call, borrowed from wherever its facts live. This struct *is* the schema: field names and
/// order of the JSON object (docs/EVENTS.md). The derived `Serialize` is the reference;
/// [`CallEventRef::write_json`] writes the same bytes without serde and is what the data plane
/// uses — a field added here must be added there too (a test compares the two).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CallEventRef<'a> {
    pub schema_version: u32,
    pub time: EventText<'a>,
    pub request_id: &'a str,
    pub integration: Option<&'a str>,
    pub caller: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub method: &'a str,
    pub path: Option<&'a str>,
    pub status: u16,
    pub decision: Decision,
    pub reason: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    pub upstream_addr: Option<EventText<'a>>,
    pub source_ip: EventText<'a>,
    pub auth: Option<&'static str>,
    pub protocol: &'static str,
    pub policy: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redirect_off_origin: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret_echoed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// Classes and counts found in the request body (scanned integrations only). Never values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_classes: Option<&'a std::collections::BTreeMap<String, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unscanned: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_data_classes: Option<&'a std::collections::BTreeMap<String, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_unscanned: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub response_redacted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
}

impl CallEventRef<'_> {
    /// Appends the event as one compact JSON object (no newline): byte for byte what
    /// `serde_json::to_writer` writes for the derived `Serialize` — same keys and order, the same
    /// fields skipped, `null` for an absent value that is not skipped — but straight into `out`,
    /// without serde's per-field machinery or `fmt` for the time and IPv4 addresses.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"schema_version\":");
        push_u64(out, u64::from(self.schema_version));
        out.extend_from_slice(b",\"time\":");
        self.time.write_json(out);
        out.extend_from_slice(b",\"request_id\":");
        push_str(out, self.request_id);
        out.extend_from_slice(b",\"integration\":");
        push_opt_str(out, self.integration);
        out.extend_from_slice(b",\"caller\":");
        push_opt_str(out, self.caller);
        out.extend_from_slice(b",\"operation\":");
        push_opt_str(out, self.operation);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_opt_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"decision\":");
        push_str(out, self.decision.as_str());
        out.extend_from_slice(b",\"reason\":");
        push_str(out, self.reason);
        out.extend_from_slice(b",\"request_bytes\":");
        push_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        push_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"duration_ms\":");
        push_f64(out, self.duration_ms);
        out.extend_from_slice(b",\"upstream_addr\":");
        match &self.upstream_addr {
            Some(addr) => addr.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"source_ip\":");
        self.source_ip.write_json(out);
        out.extend_from_slice(b",\"auth\":");
        push_opt_str(out, self.auth);
        out.extend_from_slice(b",\"protocol\":");
        push_str(out, self.protocol);
        out.extend_from_slice(b",\"policy\":");
        push_opt_str(out, self.policy);
        if self.redirect_off_origin {
            out.extend_from_slice(b",\"redirect_off_origin\":true");
        }
        if self.secret_echoed {
            out.extend_from_slice(b",\"secret_echoed\":true");
        }
        if self.incomplete {
            out.extend_from_slice(b",\"incomplete\":true");
        }
        if let Some(classes) = self.data_classes {
            out.extend_from_slice(b",\"data_classes\":");
            push_class_counts(out, classes);
        }
        if let Some(reason) = self.unscanned {
            out.extend_from_slice(b",\"unscanned\":");
            push_str(out, reason);
        }
        if self.redacted {
            out.extend_from_slice(b",\"redacted\":true");
        }
        if let Some(classes) = self.response_data_classes {
            out.extend_from_slice(b",\"response_data_classes\":");
            push_class_counts(out, classes);
        }
        if let Some(reason) = self.response_unscanned {
            out.extend_from_slice(b",\"response_unscanned\":");
            push_str(out, reason);
        }
        if self.response_redacted {
            out.extend_from_slice(b",\"response_redacted\":true");
        }
        if let Some(mode) = self.mode {
            out.extend_from_slice(b",\"mode\":");
            push_str(out, mode);
        }
        if let Some(host) = self.host {
            out.extend_from_slice(b",\"host\":");
            push_str(out, host);
        }
        out.push(b'}');
    }
}

/// A float exactly as serde_json writes it: its own formatter (shortest round-trip digits; the
/// algorithm is serde_json's choice — `zmij` in current versions, which writes `1e+21` where
/// `ryu` would write `1e21`), `null` for NaN and infinities. Serializing one `f64` this way
/// involves none of the per-struct machinery.
#[inline]
fn push_f64(out: &mut Vec<u8>, value: f64) {
    // Writing into a `Vec` cannot fail, and serde_json serializes any `f64`.
    if serde_json::to_writer(&mut *out, &value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A class → count map as a JSON object, in the map's (sorted) order.
fn push_class_counts(out: &mut Vec<u8>, classes: &std::collections::BTreeMap<String, usize>) {
    out.push(b'{');
    for (index, (class, count)) in classes.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_str(out, class);
        out.push(b':');
        push_u64(out, *count as u64);
    }
    out.push(b'}');
}

/// An IPv4 address in dotted-decimal form, as its `Display` writes it (no padding or precision
/// is ever requested here).
#[inline]
fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.extend_from_slice(&text[..len]);
}

/// `value`'s `Display` text as a JSON string, for text that never needs escaping (IPv6
/// addresses: hex digits, `:`, `.`, `[`, `]`, `%`).
#[cold]
fn push_display_unescaped(out: &mut Vec<u8>, value: &dyn fmt::Display) {
    out.push(b'"');
    // Writing into a `Vec` cannot fail, and std's address `Display` never returns an error.
    let _ = write!(out, "{value}");
    out.push(b'"');
}

/// A string field formatted straight into the JSON output (no intermediate `String`).
#[derive(Debug, Clone, Copy)]
pub enum EventText<'a> {
    Str(&'a str),
    /// RFC 3339 UTC with milliseconds.
    Time(SystemTime),
    Addr(SocketAddr),
}

impl fmt::Display for EventText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventText::Str(text) => f.write_str(text),
            EventText::Time(at) => match format_rfc3339_millis(*at) {
                Some(bytes) => f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?),
                None => f.write_str(&rfc3339_millis_slow(*at)),
            },
            EventText::Addr(addr) => fmt::Display::fmt(addr, f),
        }
    }
}

impl EventText<'_> {
    /// Appends the text as a JSON string: what its `Serialize` writes, without `fmt` for the
    /// time and IPv4 socket addresses (the hot cases).
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            EventText::Str(text) => push_str(out, text),
            EventText::Time(at) => match format_rfc3339_millis(*at) {
                Some(bytes) => {
                    // Digits and `-:.TZ`: nothing to escape.
                    out.push(b'"');
                    out.extend_from_slice(&bytes);
                    out.push(b'"');
                }
                None => push_str(out, &rfc3339_millis_slow(*at)),
            },
            EventText::Addr(SocketAddr::V4(addr)) => {
                out.push(b'"');
                push_ipv4(out, *addr.ip());
                out.push(b':');
                push_u64(out, u64::from(addr.port()));
                out.push(b'"');
            }
            EventText::Addr(addr @ SocketAddr::V6(_)) => push_display_unescaped(out, addr),
        }
    }
}

impl Serialize for EventText<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EventText::Str(text) => serializer.serialize_str(text),
            other => serializer.collect_str(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Counters the writer keeps; exported to `/metrics`.
#[derive(Debug, Default)]
pub struct EventStats {
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
    pub rotation_failures: AtomicU64,
    /// Times a producer had to wait because the writer was [`MAX_BUFFERED_BYTES`] behind.
    pub backpressure_waits: AtomicU64,
}

/// Handle used by the data plane to record events.
#[derive(Clone)]
pub struct EventSink {
    handle: Arc<SinkHandle>,
    pub stats: Arc<EventStats>,
}

/// Dropped with the last `EventSink` clone: tells the writer to drain and stop.
struct SinkHandle {
    shared: Arc<Shared>,
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.wake_writer.notify_one();
    }
}

struct Shared {
    state: Mutex<State>,
    /// The writer sleeps on this.
    wake_writer: Condvar,
    /// Producers held back by a full buffer sleep on this.
    space: Condvar,
    recent: Mutex<RecentRing>,
    stats: Arc<EventStats>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, RecentRing> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct State {
    /// Serialized events, one line each, not yet taken by the writer.
    buffer: Vec<u8>,
    /// `flush()` calls waiting for everything in `buffer` (and before) to be written.
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// The writer sleeps without a deadline (nothing buffered): the next event must wake it.
    writer_idle: bool,
    /// The writer was told to write now (threshold passed, producers waiting); not yet served.
    urgent: bool,
    /// Every `EventSink` is gone: drain and stop.
    closed: bool,
    /// The writer thread has ended (or panicked): nothing will be written any more.
    writer_gone: bool,
}

/// Where and how events are written.
#[derive(Debug, Clone)]
pub struct EventFileOptions {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: u32,
}

thread_local! {
    /// Each worker thread's serialization buffer, reused across events (sized on first use).
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

enum Append {
    Done,
    Full,
    WriterGone,
}

impl EventSink {
    /// Opens (creating) the event file and starts the writer thread. The returned join handle
    /// ends after every sink clone is dropped and everything buffered is written.
    pub fn start(
        options: EventFileOptions,
    ) -> std::io::Result<(EventSink, tokio::task::JoinHandle<()>)> {
        // Before the writer opens the file, which may end a torn last line.
        let recent = RecentRing::refilled(&options.path);
        let writer = RotatingWriter::open(options)?;
        let stats = Arc::new(EventStats::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: Vec::with_capacity(WAKE_THRESHOLD_BYTES),
                ..State::default()
            }),
            wake_writer: Condvar::new(),
            space: Condvar::new(),
            recent: Mutex::new(recent),
            stats: stats.clone(),
        });
        let task = tokio::task::spawn_blocking({
            let shared = shared.clone();
            move || {
                let _background = crate::workers::background_thread();
                writer_loop(writer, shared)
            }
        });
        Ok((
            EventSink {
                handle: Arc::new(SinkHandle { shared }),
                stats,
            },
            task,
        ))
    }

    /// Records an event. Waits (asynchronously) when the writer is behind: back-pressure, never
    /// a silent drop.
    pub async fn record(&self, event: CallEvent) {
        let mut waited = false;
        loop {
            match Self::serialize_and(&event.as_ref(), |line| self.try_append(line)) {
                Append::Full => {
                    if !waited {
                        waited = true;
                        self.stats
                            .backpressure_waits
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Append::WriterGone => return self.writer_gone(),
                Append::Done => return,
            }
        }
    }

    /// Records an event from synchronous code (a body's `Drop`). Waits only if the writer is
    /// [`MAX_BUFFERED_BYTES`] behind.
    pub fn record_now(&self, event: CallEvent) {
        self.record_ref(&event.as_ref());
    }

    /// Records an event borrowed from the call's context: serialized on this thread into a
    /// reusable buffer, then appended to the writer's buffer. Waits only if the writer is
    /// [`MAX_BUFFERED_BYTES`] behind (back-pressure, counted).
    pub fn record_ref(&self, event: &CallEventRef<'_>) {
        Self::serialize_and(event, |line| self.append_blocking(line));
    }

    /// Serializes `event` as one line into this thread's reusable buffer and hands it to
    /// `then` (called exactly once). Infallible: no allocation once the buffer has grown, no
    /// error path.
    #[inline]
    fn serialize_and<R>(event: &CallEventRef<'_>, mut then: impl FnMut(&[u8]) -> R) -> R {
        fn fill(line: &mut Vec<u8>, event: &CallEventRef<'_>) {
            line.clear();
            line.reserve(1024);
            event.write_json(line);
            line.push(b'\n');
        }
        // The thread-local buffer is unavailable only during thread teardown (or re-entrancy).
        let done = LINE.try_with(|cell| {
            let mut line = cell.try_borrow_mut().ok()?;
            fill(&mut line, event);
            Some(then(&line))
        });
        match done {
            Ok(Some(result)) => result,
            _ => {
                let mut line = Vec::with_capacity(1024);
                fill(&mut line, event);
                then(&line)
            }
        }
    }

    fn try_append(&self, line: &[u8]) -> Append {
        let shared = &self.handle.shared;
        let mut state = shared.state();
        if state.writer_gone {
            return Append::WriterGone;
        }
        if state.buffer.len() >= MAX_BUFFERED_BYTES {
            let notify = !state.urgent;
            state.urgent = true;
            drop(state);
            if notify {
                shared.wake_writer.notify_one();
            }
            return Append::Full;
        }
        Self::push_locked(shared, state, line);
        Append::Done
    }

    fn append_blocking(&self, line: &[u8]) {
        let shared = &self.handle.shared;
        let mut state = shared.state();
        if state.buffer.len() >= MAX_BUFFERED_BYTES && !state.writer_gone {
            self.stats
                .backpressure_waits
                .fetch_add(1, Ordering::Relaxed);
            while state.buffer.len() >= MAX_BUFFERED_BYTES && !state.writer_gone {
                if !state.urgent {
                    state.urgent = true;
                    shared.wake_writer.notify_one();
                }
                state = shared
                    .space
                    .wait_timeout(state, Duration::from_millis(100))
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
        }
        if state.writer_gone {
            drop(state);
            return self.writer_gone();
        }
        Self::push_locked(shared, state, line);
    }

    fn push_locked(shared: &Shared, mut state: MutexGuard<'_, State>, line: &[u8]) {
        state.buffer.extend_from_slice(line);
        let mut notify = false;
        if state.writer_idle {
            // First event after a quiet period: the writer sleeps without a deadline.
            state.writer_idle = false;
            notify = true;
        }
        if !state.urgent && state.buffer.len() >= WAKE_THRESHOLD_BYTES {
            state.urgent = true;
            notify = true;
        }
        drop(state);
        if notify {
            shared.wake_writer.notify_one();
        }
    }

    fn writer_gone(&self) {
        tracing::error!("event writer has stopped; event not recorded");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until every event recorded before this call is written.
    pub async fn flush(&self) {
        let shared = &self.handle.shared;
        let (done, wait) = oneshot::channel();
        {
            let mut state = shared.state();
            if state.writer_gone {
                return;
            }
            state.flush_waiters.push(done);
        }
        shared.wake_writer.notify_one();
        let _ = wait.await;
    }

    /// The most recent events, oldest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Arc<str>> {
        self.handle.shared.recent().last(limit)
    }
}

/// The last written batches, holding at least the last [`RECENT_EVENTS_CAPACITY`] lines.
#[derive(Default)]
struct RecentRing {
    batches: VecDeque<Batch>,
    lines: usize,
}

/// One writer batch: the bytes as written and where each line ends (at its `\n`).
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Batch {
    fn line(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize + 1
        };
        &self.bytes[start..self.ends[index] as usize]
    }
}

impl RecentRing {
    /// The ring as the last run left it: the last [`RECENT_EVENTS_CAPACITY`] events of `path`
    /// and, before them, of its last rotation (`path.1`), read back at start so the admin API
    /// still shows the calls made before a restart. Only whole lines that are JSON objects
    /// come back (a line torn by a crash does not).
    fn refilled(path: &Path) -> RecentRing {
        let mut ring = RecentRing::default();
        let current = last_lines(path);
        // The rotated file only when the current one holds too few.
        if current
            .as_ref()
            .is_none_or(|batch| batch.ends.len() < RECENT_EVENTS_CAPACITY)
        {
            if let Some(batch) = last_lines(&rotated_name(path, 1)) {
                ring.push(batch);
            }
        }
        if let Some(batch) = current {
            ring.push(batch);
        }
        ring
    }

    fn push(&mut self, batch: Batch) {
        self.lines += batch.ends.len();
        self.batches.push_back(batch);
        while let Some(front) = self.batches.front() {
            if self.lines - front.ends.len() < RECENT_EVENTS_CAPACITY {
                break;
            }
            self.lines -= front.ends.len();
            self.batches.pop_front();
        }
    }

    fn last(&self, limit: usize) -> Vec<Arc<str>> {
        let mut wanted = limit.min(self.lines).min(RECENT_EVENTS_CAPACITY);
        let mut out = Vec::with_capacity(wanted);
        for batch in self.batches.iter().rev() {
            if wanted == 0 {
                break;
            }
            let take = wanted.min(batch.ends.len());
            for index in (batch.ends.len() - take..batch.ends.len()).rev() {
                out.push(Arc::from(
                    String::from_utf8_lossy(batch.line(index)).as_ref(),
                ));
            }
            wanted -= take;
        }
        out.reverse();
        out
    }
}

/// The last `keep` lines (at most [`RECENT_EVENTS_CAPACITY`]) of a JSON-lines log, read back
/// as [`RecentRing::refilled`] reads them, oldest first: for the alerts' list.
pub(crate) fn read_back(path: &Path, keep: usize) -> Vec<String> {
    RecentRing::refilled(path)
        .last(keep)
        .iter()
        .map(|line| line.to_string())
        .collect()
}

/// Bytes read back from the end of an event file at start: room for
/// [`RECENT_EVENTS_CAPACITY`] events of a typical size (about 400 bytes) twice over.
const REFILL_BYTES: u64 = 8 * 1024 * 1024;

/// The whole lines in the last [`REFILL_BYTES`] of `file` that are JSON objects, as a batch;
/// `None` when there are none or the file cannot be read (then the ring starts without them).
fn last_lines(file: &Path) -> Option<Batch> {
    use std::io::{Read, Seek, SeekFrom};
    // Only a regular file: opening a FIFO or a terminal to read would wait on its writer.
    if !std::fs::metadata(file).is_ok_and(|metadata| metadata.is_file()) {
        return None;
    }
    let mut reader = File::open(file).ok()?;
    let len = reader.metadata().ok()?.len();
    let start = len.saturating_sub(REFILL_BYTES);
    reader.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    reader.read_to_end(&mut tail).ok()?;
    // Read from inside a line: it begins after the first newline.
    let mut from = match start {
        0 => 0,
        _ => memchr::memchr(b'\n', &tail)? + 1,
    };
    let mut batch = Batch {
        bytes: Vec::with_capacity(tail.len() - from),
        ends: Vec::new(),
    };
    let first = from;
    for end in memchr::memchr_iter(b'\n', &tail[first..]).map(|at| first + at) {
        let line = &tail[from..end];
        from = end + 1;
        // UTF-8 checked first (the admin API serves the lines as they are), then the JSON.
        let object = line.first() == Some(&b'{')
            && std::str::from_utf8(line)
                .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
        if object {
            batch.bytes.extend_from_slice(line);
            batch.ends.push(batch.bytes.len() as u32);
            batch.bytes.push(b'\n');
        }
    }
    (!batch.ends.is_empty()).then_some(batch)
}

/// Marks the writer gone however it ends (a panic included), so producers and `flush()` never
/// wait for it forever.
struct WriterGoneGuard(Arc<Shared>);

impl Drop for WriterGoneGuard {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.0.state();
            state.writer_gone = true;
            std::mem::take(&mut state.flush_waiters)
        };
        drop(waiters);
        self.0.space.notify_all();
    }
}

fn writer_loop(mut writer: RotatingWriter, shared: Arc<Shared>) {
    let _guard = WriterGoneGuard(shared.clone());
    let stats = shared.stats.clone();
    let mut spare: Vec<u8> = Vec::with_capacity(WAKE_THRESHOLD_BYTES);
    loop {
        let mut state = shared.state();
        let mut deadline: Option<Instant> = None;
        loop {
            if state.closed || state.urgent || !state.flush_waiters.is_empty() {
                break;
            }
            if state.buffer.is_empty() {
                deadline = None;
                state.writer_idle = true;
                state = shared
                    .wake_writer
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                state.writer_idle = false;
                continue;
            }
            let now = Instant::now();
            let until = *deadline.get_or_insert(now + WRITER_LINGER);
            if now >= until {
                break;
            }
            state = shared
                .wake_writer
                .wait_timeout(state, until - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        std::mem::swap(&mut state.buffer, &mut spare);
        let waiters = std::mem::take(&mut state.flush_waiters);
        let held_back = state.urgent;
        state.urgent = false;
        let closing = state.closed;
        drop(state);
        if held_back {
            shared.space.notify_all();
        }

        if !spare.is_empty() {
            let batch_bytes = std::mem::take(&mut spare);
            let batch = writer.write_batch(batch_bytes, &stats);
            // Reuse a buffer of the size this batch needed, for the next swap.
            spare = Vec::with_capacity(batch.bytes.len().max(4096));
            shared.recent().push(batch);
        }
        for done in waiters {
            let _ = done.send(());
        }
        if closing && shared.state().buffer.is_empty() {
            break;
        }
    }
}

/// Appends to `events.jsonl`; past `max_file_bytes` it shifts `events.jsonl.N` up by one
/// (dropping the oldest beyond `max_files`) and starts a new file.
struct RotatingWriter {
    max_file_bytes: u64,
    rotation: Rotation,
    file: File,
    /// The same file opened for reading (see [`reader_of`]), to tell whether it ends a line.
    reader: Option<File>,
    size: u64,
    /// Whether the file may end in part of a line: a failed write landed some of its bytes and
    /// they could not be cut off. The next write starts a line of its own first.
    torn: bool,
    /// Writes a test makes fail half-way (as on a full disk).
    #[cfg(test)]
    failing_writes: u32,
    /// Cuts of a failed write's bytes a test makes fail (an append-only file, an I/O error).
    #[cfg(test)]
    failing_cuts: u32,
}

/// How long after a failed rotation the next one is tried.
const ROTATION_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The rotation of an append-only log (`events.jsonl`, `alerts.jsonl`): the file moves to
/// `.1` (the kept ones shifting up, see [`rotate_file`]) and a new one is opened. After a failed
/// rotation the writer appends to the file it has, and the next is not tried for
/// [`ROTATION_RETRY`].
pub(crate) struct Rotation {
    path: PathBuf,
    max_files: u32,
    retry_at: Option<std::time::Instant>,
    /// Opens of a new file a test makes fail (say, for want of file descriptors).
    #[cfg(test)]
    pub(crate) failing_opens: u32,
}

impl Rotation {
    pub(crate) fn new(path: PathBuf, max_files: u32) -> Self {
        Rotation {
            path,
            max_files,
            retry_at: None,
            #[cfg(test)]
            failing_opens: 0,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a rotation may be tried now (none failed within [`ROTATION_RETRY`]).
    pub(crate) fn due(&self) -> bool {
        self.retry_at
            .is_none_or(|at| std::time::Instant::now() >= at)
    }

    /// Rotates, and returns the new file.
    pub(crate) fn rotate(&mut self) -> std::io::Result<File> {
        let rotated = rotate_file(
            &self.path,
            self.max_files,
            #[cfg(test)]
            &mut self.failing_opens,
        );
        self.retry_at = match rotated {
            Ok(_) => None,
            Err(_) => Some(std::time::Instant::now() + ROTATION_RETRY),
        };
        rotated
    }

    /// Makes the next rotation due at once (a test's way past the retry interval).
    #[cfg(test)]
    pub(crate) fn retry_now(&mut self) {
        self.retry_at = Some(std::time::Instant::now());
    }
}

impl RotatingWriter {
    fn open(options: EventFileOptions) -> std::io::Result<Self> {
        if let Some(parent) = options.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let (file, size, reader) = open_log(&options.path)?;
        Ok(RotatingWriter {
            max_file_bytes: options.max_file_bytes,
            reader,
            rotation: Rotation::new(options.path, options.max_files),
            file,
            size,
            torn: false,
            #[cfg(test)]
            failing_writes: 0,
            #[cfg(test)]
            failing_cuts: 0,
        })
    }

    /// Writes a batch of whole lines: one `write()` per file it lands in, rotating before a line
    /// that would take the file past `max_file_bytes`.
    fn write_batch(&mut self, bytes: Vec<u8>, stats: &EventStats) -> Batch {
        let mut ends = Vec::with_capacity(bytes.len() / 400 + 1);
        ends.extend(memchr::memchr_iter(b'\n', &bytes).map(|end| end as u32));
        let max = self.max_file_bytes;
        let mut chunk_start = 0usize;
        let mut chunk_lines = 0u64;
        let mut line_start = 0usize;
        for &end in &ends {
            let line_len = (end as usize + 1 - line_start) as u64;
            let pending = (line_start - chunk_start) as u64;
            let full = self.size + pending > 0 && self.size + pending + line_len > max;
            if full && self.rotation.due() {
                self.write_chunk(&bytes[chunk_start..line_start], chunk_lines, stats);
                chunk_start = line_start;
                chunk_lines = 0;
                match self.rotate() {
                    Ok(()) => {
                        stats.rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        // The lines go on into the file open now, past its size for a while:
                        // none is dropped, and rotating is tried again after ROTATION_RETRY.
                        stats.rotation_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "could not rotate the event file; appending to it until a rotation succeeds");
                    }
                }
            }
            chunk_lines += 1;
            line_start = end as usize + 1;
        }
        self.write_chunk(&bytes[chunk_start..line_start], chunk_lines, stats);
        Batch { bytes, ends }
    }

    fn write_chunk(&mut self, chunk: &[u8], lines: u64, stats: &EventStats) {
        if chunk.is_empty() {
            return;
        }
        // The broken line ends before the chunk (in the same write, so the chunk never goes
        // without it), unparsable on its own; the chunk's first line is whole.
        let mended;
        let mended_prefix = usize::from(self.torn);
        let chunk = match self.torn {
            true => {
                mended = [b"\n", chunk].concat();
                &mended[..]
            }
            false => chunk,
        };
        #[cfg(test)]
        let written = if self.failing_writes > 0 {
            self.failing_writes -= 1;
            self.file
                .write_all(&chunk[..chunk.len() / 2])
                .and_then(|()| Err(std::io::Error::other("a write made to fail by a test")))
        } else {
            self.file.write_all(chunk)
        };
        #[cfg(not(test))]
        let written = self.file.write_all(chunk);
        match written {
            Ok(()) => {
                self.size += chunk.len() as u64;
                self.torn = false;
                stats.written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(error) => {
                // Part of the chunk may have landed (a full disk): it is cut off, so the next
                // line does not start in the middle of a broken one. Failing that, the size is
                // re-read so rotation stays right, and the next write begins a line of its own.
                #[cfg(test)]
                let cut = match self.failing_cuts {
                    0 => self.file.set_len(self.size),
                    _ => {
                        self.failing_cuts -= 1;
                        Err(std::io::Error::other("a cut made to fail by a test"))
                    }
                };
                #[cfg(not(test))]
                let cut = self.file.set_len(self.size);
                let mut landed_lines = 0;
                if cut.is_err() {
                    if let Ok(metadata) = self.file.metadata() {
                        // Torn unless the file, as it now stands, ends a line (read back through
                        // the file written, which a failed rotation left under another name:
                        // what landed is not known for sure, nor who else wrote).
                        let before = self.size;
                        self.size = metadata.len();
                        self.torn = self.size > 0
                            && self
                                .reader
                                .as_ref()
                                .and_then(|reader| last_byte(reader, self.size))
                                != Some(b'\n');
                        landed_lines = whole_lines_landed(
                            &chunk[mended_prefix..],
                            self.size.saturating_sub(before + mended_prefix as u64),
                        )
                        .min(lines);
                    }
                }
                stats.written.fetch_add(landed_lines, Ordering::Relaxed);
                stats
                    .write_errors
                    .fetch_add(lines - landed_lines, Ordering::Relaxed);
                tracing::error!(%error, events = lines - landed_lines, "could not append to the event file");
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file = self.rotation.rotate()?;
        self.reader = reader_of(self.rotation.path(), &self.file);
        self.size = 0;
        self.torn = false;
        Ok(())
    }
}

/// Moves `path` away as rotation does ([`shift_rotated`]) and opens a new file there: the
/// rotation of `events.jsonl` and `alerts.jsonl`. A rotation that failed after moving the file
/// away only has its open left to do: shifting again would push the kept files out, one per
/// retry. `failing_opens`: opens a test makes fail (say, for want of file descriptors).
fn rotate_file(
    path: &Path,
    max_files: u32,
    #[cfg(test)] failing_opens: &mut u32,
) -> std::io::Result<File> {
    if path.exists() {
        shift_rotated(path, max_files)?;
    }
    #[cfg(test)]
    if *failing_opens > 0 {
        *failing_opens -= 1;
        return Err(std::io::Error::other("an open made to fail by a test"));
    }
    open_append(path)
}

/// Renames `path` to `path.1`, shifting `path.N` to `path.N+1` and dropping what would pass
/// `max_files` (at least one kept): the rotation of `events.jsonl` and `alerts.jsonl`.
/// Only the files before the first free slot move (the oldest is dropped only when there is
/// none): a rotation that failed halfway (a rename refused) and is tried again fills the gap it
/// left rather than dropping one more kept file at each try.
pub(crate) fn shift_rotated(path: &Path, max_files: u32) -> std::io::Result<()> {
    let keep = max_files.max(1);
    let free = (1..=keep).find(|&index| !rotated_name(path, index).exists());
    let top = match free {
        Some(index) => index,
        None => {
            let _ = std::fs::remove_file(rotated_name(path, keep));
            keep
        }
    };
    for index in (1..top).rev() {
        std::fs::rename(rotated_name(path, index), rotated_name(path, index + 1))?;
    }
    std::fs::rename(path, rotated_name(path, 1))
}

/// `path.N`: the N-th rotated file.
pub(crate) fn rotated_name(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// Opens a JSON-lines log (`events.jsonl`, `alerts.jsonl`) for appending, and its size. A last
/// line a crash tore is ended first, so the next line written is one of its own.
/// Also the file opened for reading ([`reader_of`]).
pub(crate) fn open_log(path: &Path) -> std::io::Result<(File, u64, Option<File>)> {
    let mut file = open_append(path)?;
    let mut size = file.metadata()?.len();
    let reader = reader_of(path, &file);
    // Best effort: a file that can be appended to but not read (or that is no regular file)
    // is appended to as before.
    let torn = |reader: &File| last_byte(reader, size).is_some_and(|last| last != b'\n');
    if size > 0 && reader.as_ref().is_some_and(torn) {
        match file.write_all(b"\n") {
            Ok(()) => size += 1,
            // As a failed write later would be: logged, and the file appended to as it is.
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "could not end the log's torn last line")
            }
        }
    }
    Ok((file, size, reader))
}

/// The last of the `size` bytes of `file`, if it can be read.
fn last_byte(file: &File, size: u64) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, size.checked_sub(1)?).ok()?;
    Some(last[0])
}

/// `appending`, the log file at `path`, opened again for reading: a regular file only (a FIFO
/// is never waited on), and only if `path` still names that file. The handle follows the file
/// when it is renamed, as the appending one does (a failed rotation leaves both on `.1`).
fn reader_of(path: &Path, appending: &File) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let written = appending.metadata().ok()?;
    if !written.is_file() {
        return None;
    }
    let reader = File::open(path).ok()?;
    let read = reader.metadata().ok()?;
    (read.dev() == written.dev() && read.ino() == written.ino()).then_some(reader)
}

/// How many whole lines of `chunk` the first `landed` bytes hold: what a failed write left in
/// the file that it could not cut off. None when more landed than the chunk has (another
/// writer's bytes: what is ours is not known).
fn whole_lines_landed(chunk: &[u8], landed: u64) -> u64 {
    match usize::try_from(landed) {
        Ok(landed) if landed <= chunk.len() => {
            memchr::memchr_iter(b'\n', &chunk[..landed]).count() as u64
        }
        _ => 0,
    }
}

/// Opens a log file for appending (created with mode 0640).
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T09:12:03.123Z`.
pub fn rfc3339_millis(at: SystemTime) -> String {
    match format_rfc3339_millis(at) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => rfc3339_millis_slow(at),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` without allocating, for times from 1970 to 9999; `None` outside.
fn format_rfc3339_millis(at: SystemTime) -> Option<[u8; 24]> {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = postern_detect::timestamp::civil_from_days(days as i64);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for index in (at..at + width).rev() {
            out[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(since.subsec_millis()));
    Some(out)
}

/// The general path (before 1970, after 9999): the `time` crate. A time it cannot represent
/// (beyond ±9999 years) falls back to the epoch, as a formatting error does, instead of
/// panicking in `OffsetDateTime::from`.
fn rfc3339_millis_slow(at: SystemTime) -> String {
    let epoch = time::OffsetDateTime::UNIX_EPOCH;
    let at = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after
            .try_into()
            .ok()
            .and_then(|after| epoch.checked_add(after)),
        Err(before) => {
            let before = before.duration();
            before
                .try_into()
                .ok()
                .and_then(|before| epoch.checked_sub(before))
        }
    };
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn fast_time_format_matches_the_time_crate() {
        let mut secs: u64 = 0;
        while secs < 253_402_300_799 {
            for millis in [0u64, 1, 266, 999] {
                let at = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(secs)
                    + Duration::from_micros(millis * 1000 + 123);
                let fast = format_rfc3339_millis(at).expect("in range");
                assert_eq!(std::str::from_utf8(&fast).unwrap(), rfc3339_millis_slow(at));
            }
            secs = secs * 3 / 2 + 86_399 + secs % 7919;
        }
        for day in 0..(366 * 4 + 10) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(day * 86_400 + 951_782_400);
            assert_eq!(rfc3339_millis(at), rfc3339_millis_slow(at));
        }
    }

    fn sample() -> CallEvent {
        CallEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            time: "2026-11-28T09:15:23.266Z".into(),
            request_id: "1bfe16b2916ae24326296f2641d65eb0".into(),
            integration: Some("acme".into()),
            caller: Some("check\"out".into()),
            operation: None,
            method: "DELETE".into(),
            path: Some("/v1/charges/{id}".into()),
            status: 403,
            decision: Decision::Deny,
            reason: "not_granted".into(),
            request_bytes: 0,
            response_bytes: 7,
            duration_ms: 0.03,
            upstream_addr: Some("[::1]:443".into()),
            source_ip: "127.0.0.1".into(),
            auth: Some("token"),
            protocol: "HTTP/1.1",
            policy: None,
            redirect_off_origin: false,
            secret_echoed: false,
            incomplete: true,
            data_classes: None,
            unscanned: None,
            redacted: false,
            response_data_classes: None,
            response_unscanned: None,
            response_redacted: false,
            mode: Some("intercept"),
            host: Some("api.acme.test".into()),
        }
    }

    #[test]
    fn schema_field_order_is_stable() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            text,
            r#"{"schema_version":1,"time":"2026-11-28T09:15:23.266Z","request_id":"1bfe16b2916ae24326296f2641d65eb0","integration":"acme","caller":"check\"out","operation":null,"method":"DELETE","path":"/v1/charges/{id}","status":403,"decision":"deny","reason":"not_granted","request_bytes":0,"response_bytes":7,"duration_ms":0.03,"upstream_addr":"[::1]:443","source_ip":"127.0.0.1","auth":"token","protocol":"HTTP/1.1","policy":null,"incomplete":true,"mode":"intercept","host":"api.acme.test"}"#
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_857_323_266);
        let owned = sample();
        let mut view = owned.as_ref();
        view.time = EventText::Time(at);
        view.upstream_addr = Some(EventText::Addr("[::1]:443".parse().unwrap()));
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            serde_json::to_string(&owned.as_ref())
                .unwrap()
                .replace("2026-11-28T09:15:23.266Z", &rfc3339_millis(at))
        );
    }

    /// xorshift64*: a fixed, seeded sequence (the test must be reproducible).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }

        /// One of `edges`, or a random value, evenly.
        fn edge_or<T: Copy>(&mut self, edges: &[T], random: impl FnOnce(&mut Self) -> T) -> T {
            if self.coin() {
                self.pick(edges)
            } else {
                random(self)
            }
        }
    }

    const STATIC_TEXTS: &[&str] = &[
        "",
        "token",
        "mtls",
        "HTTP/1.1",
        "HTTP/2",
        "intercept",
        "too_large",
        "quo\"te \\ back\\slash",
        "ctl \u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1b}\u{1f}\u{7f}",
        "ünïcödé ✓ 𝄞 \u{2028}\u{2029}",
    ];

    fn random_text(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            "/v1/charges/{id}",
            " ",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{8}",
            "\u{c}",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "é",
            "✓",
            "𝄞",
            "\u{2028}",
            "</script>",
            "'",
        ];
        (0..rng.below(12)).map(|_| rng.pick(PIECES)).collect()
    }

    fn random_v4(rng: &mut Rng) -> std::net::Ipv4Addr {
        // Bias octets towards the 1-, 2- and 3-digit boundaries.
        let mut octet = || match rng.below(4) {
            0 => [0u8, 9, 10, 99, 100, 255][rng.below(6)],
            _ => rng.next() as u8,
        };
        std::net::Ipv4Addr::new(octet(), octet(), octet(), octet())
    }

    fn random_v6(rng: &mut Rng) -> std::net::Ipv6Addr {
        // Zero runs of every length and position, and some v4-mapped / v4-compatible forms.
        let mut segments = [0u16; 8];
        for segment in &mut segments {
            *segment = match rng.below(3) {
                0 => 0,
                1 => rng.next() as u16,
                _ => rng.next() as u16 & 0xf,
            };
        }
        match rng.below(6) {
            0 => std::net::Ipv4Addr::from(rng.next() as u32).to_ipv6_mapped(),
            1 => std::net::Ipv4Addr::from(rng.next() as u32).to_ipv6_compatible(),
            _ => std::net::Ipv6Addr::from(segments),
        }
    }

    fn random_port(rng: &mut Rng) -> u16 {
        rng.edge_or(&[0, 1, 9, 10, 80, 443, 65_535], |rng| rng.next() as u16)
    }

    fn random_ip(rng: &mut Rng) -> IpAddr {
        let v4_edges = [
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
            "10.0.0.1",
            "1.2.3.4",
        ];
        let v6_edges = [
            "::",
            "::1",
            "::ffff:1.2.3.4",
            "::ffff:0.0.0.0",
            "::1.2.3.4",
            "2001:db8::1",
            "2001:db8:0:0:1:0:0:1",
            "fe80::1:0:0:0",
            "1:0:0:2:0:0:0:3",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "64:ff9b::102:304",
        ];
        match rng.below(4) {
            0 => rng.pick(&v4_edges).parse().unwrap(),
            1 => rng.pick(&v6_edges).parse().unwrap(),
            2 => IpAddr::V4(random_v4(rng)),
            _ => IpAddr::V6(random_v6(rng)),
        }
    }

    fn random_socket_addr(rng: &mut Rng) -> SocketAddr {
        match random_ip(rng) {
            IpAddr::V4(ip) => SocketAddr::from((ip, random_port(rng))),
            IpAddr::V6(ip) => {
                let flow = if rng.coin() { 0 } else { rng.next() as u32 };
                let scope = rng.edge_or(&[0, 1, 3, u32::MAX], |rng| rng.next() as u32);
                SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    random_port(rng),
                    flow,
                    scope,
                ))
            }
        }
    }

    fn random_time(rng: &mut Rng) -> SystemTime {
        let epoch = SystemTime::UNIX_EPOCH;
        // Years 1970..=9999 take the fast path; the rest (before 1970, years 0 and below,
        // past 9999 and past what `time` represents) the slow one.
        let edges = [
            0i64,
            -1,
            86_399,
            951_782_400,           // 2000-02-29
            1_795_857_323,         // 2026
            -62_135_596_800,       // 0001-01-01
            -62_167_219_200,       // 0000-01-01
            -62_167_219_201,       // year -1
            253_402_300_799,       // 9999-12-31T23:59:59
            253_402_300_800,       // 10000-01-01
            -377_705_203_200,      // -9999-01-01, the earliest `time` represents
            -377_705_203_201,      // before it
            1_000_000_000_000_000, // far beyond it
        ];
        let secs = rng.edge_or(&edges, |rng| match rng.below(3) {
            0 => (rng.next() % 253_402_300_800) as i64,
            1 => -((rng.next() % 377_705_116_800) as i64),
            _ => (rng.next() >> 20) as i64 - (1 << 43),
        });
        let nanos = rng.edge_or(&[0, 1, 999_999, 1_000_000, 999_999_999], |rng| {
            (rng.next() % 1_000_000_000) as u32
        });
        let whole = Duration::from_secs(secs.unsigned_abs());
        let at = if secs >= 0 {
            epoch + whole
        } else {
            epoch - whole
        };
        at + Duration::from_nanos(u64::from(nanos))
    }

    fn random_duration_ms(rng: &mut Rng) -> f64 {
        let edges = [
            0.0,
            -0.0,
            1.0,
            12.5,
            0.03,
            0.1,
            1e-7,
            1e-5,
            1e-4,
            1e15,
            1e16,
            1e17,
            1e21,
            1e22,
            1e300,
            123_456_789.012,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        rng.edge_or(&edges, |rng| match rng.below(4) {
            0 => f64::from_bits(rng.next()),
            1 => (rng.next() % 10_000_000) as f64 / 1000.0,
            2 => rng.next() as f64 / (rng.next() | 1) as f64,
            _ => Duration::from_nanos(rng.next() % 100_000_000_000).as_secs_f64() * 1000.0,
        })
    }

    fn random_text_field<'a>(rng: &mut Rng, texts: &'a [String]) -> EventText<'a> {
        match rng.below(3) {
            0 => EventText::Str(&texts[rng.below(texts.len())]),
            1 => EventText::Time(random_time(rng)),
            _ => EventText::Addr(random_socket_addr(rng)),
        }
    }

    #[test]
    fn write_json_matches_serde_json_byte_for_byte() {
        let mut rng = Rng(0x5eed_0f90_57e4);
        let texts: Vec<String> = STATIC_TEXTS
            .iter()
            .map(|text| text.to_string())
            .chain((0..200).map(|_| random_text(&mut rng)))
            .collect();
        let maps: Vec<std::collections::BTreeMap<String, usize>> = (0..40)
            .map(|index| {
                (0..index % 5)
                    .map(|_| {
                        let count = rng.edge_or(&[0, 1, usize::MAX], |rng| rng.below(1 << 20));
                        (texts[rng.below(texts.len())].clone(), count)
                    })
                    .collect()
            })
            .collect();
        let text = |rng: &mut Rng| texts[rng.below(texts.len())].as_str();
        let opt_text = |rng: &mut Rng| rng.coin().then(|| text(rng));
        let opt_static = |rng: &mut Rng| rng.coin().then(|| rng.pick(STATIC_TEXTS));
        let opt_map = |rng: &mut Rng| rng.coin().then(|| &maps[rng.below(maps.len())]);

        let mut coverage = Coverage::default();
        let mut ours = Vec::new();
        for round in 0..5_000 {
            let event = CallEventRef {
                schema_version: rng.edge_or(&[0, 1, u32::MAX], |rng| rng.next() as u32),
                time: random_text_field(&mut rng, &texts),
                request_id: text(&mut rng),
                integration: opt_text(&mut rng),
                caller: opt_text(&mut rng),
                operation: opt_text(&mut rng),
                method: text(&mut rng),
                path: opt_text(&mut rng),
                status: rng.edge_or(&[0, 200, 403, u16::MAX], |rng| rng.next() as u16),
                decision: if rng.coin() {
                    Decision::Allow
                } else {
                    Decision::Deny
                },
                reason: text(&mut rng),
                request_bytes: rng.edge_or(&[0, 9, 10, u64::MAX], Rng::next),
                response_bytes: rng.edge_or(&[0, 99, 100, u64::MAX], |rng| rng.next() >> 30),
                duration_ms: random_duration_ms(&mut rng),
                upstream_addr: rng.coin().then(|| random_text_field(&mut rng, &texts)),
                source_ip: random_text_field(&mut rng, &texts),
                auth: opt_static(&mut rng),
                protocol: rng.pick(STATIC_TEXTS),
                policy: opt_text(&mut rng),
                redirect_off_origin: rng.coin(),
                secret_echoed: rng.coin(),
                incomplete: rng.coin(),
                data_classes: opt_map(&mut rng),
                unscanned: opt_static(&mut rng),
                redacted: rng.coin(),
                response_data_classes: opt_map(&mut rng),
                response_unscanned: opt_static(&mut rng),
                response_redacted: rng.coin(),
                mode: opt_static(&mut rng),
                host: opt_text(&mut rng),
            };
            let reference = serde_json::to_vec(&event).unwrap();
            ours.clear();
            event.write_json(&mut ours);
            assert!(
                ours == reference,
                "round {round}: {event:?}\nserde: {}\nours:  {}",
                String::from_utf8_lossy(&reference),
                String::from_utf8_lossy(&ours),
            );
            // The data plane's line is the same bytes and a newline.
            let line = EventSink::serialize_and(&event, <[u8]>::to_vec);
            assert_eq!(line[..line.len() - 1], reference[..], "round {round}");
            assert_eq!(line.last(), Some(&b'\n'));
            coverage.note(&event, &reference);
        }
        coverage.assert_complete();
    }

    /// Which hard cases the random events reached: the test is only as good as its inputs.
    #[derive(Default)]
    struct Coverage {
        seen: std::collections::BTreeSet<&'static str>,
    }

    impl Coverage {
        const ALL: &'static [&'static str] = &[
            "time fast",
            "time before 1970",
            "time after 9999",
            "time beyond the time crate",
            "addr v4",
            "addr v6",
            "addr v6 scoped",
            "str",
            "float null",
            "float e+",
            "float e-",
            "float .0",
            "negative zero",
            "escaped control",
            "escaped quote",
            "non-ascii",
            "optional null",
            "every skipped field present",
            "every skipped field absent",
            "empty map",
            "upstream null",
        ];

        fn note(&mut self, event: &CallEventRef<'_>, reference: &[u8]) {
            let text = String::from_utf8_lossy(reference);
            let mut see = |case: &'static str, when: bool| {
                if when {
                    self.seen.insert(case);
                }
            };
            for field in [Some(event.time), event.upstream_addr, Some(event.source_ip)]
                .into_iter()
                .flatten()
            {
                match field {
                    EventText::Str(_) => see("str", true),
                    EventText::Time(at) => {
                        let fast = format_rfc3339_millis(at).is_some();
                        see("time fast", fast);
                        see("time before 1970", at < SystemTime::UNIX_EPOCH);
                        let future = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
                        see("time after 9999", at >= future);
                        see(
                            "time beyond the time crate",
                            !fast && rfc3339_millis_slow(at) == "1970-01-01T00:00:00.000Z",
                        );
                    }
                    EventText::Addr(SocketAddr::V4(_)) => see("addr v4", true),
                    EventText::Addr(SocketAddr::V6(addr)) => {
                        see("addr v6", true);
                        see("addr v6 scoped", addr.scope_id() != 0);
                    }
                }
            }
            let duration = serde_json::to_string(&event.duration_ms).unwrap();
            see("float null", duration == "null");
            see("float e+", duration.contains("e+"));
            see("float e-", duration.contains("e-"));
            see("float .0", duration.ends_with(".0"));
            see("negative zero", duration == "-0.0");
            see("escaped control", text.contains("\\u00"));
            see("escaped quote", text.contains("\\\""));
            see("non-ascii", !text.is_ascii());
            see("optional null", text.contains(":null"));
            see("upstream null", event.upstream_addr.is_none());
            let skipped = [
                event.redirect_off_origin,
                event.secret_echoed,
                event.incomplete,
                event.data_classes.is_some(),
                event.unscanned.is_some(),
                event.redacted,
                event.response_data_classes.is_some(),
                event.response_unscanned.is_some(),
                event.response_redacted,
                event.mode.is_some(),
                event.host.is_some(),
            ];
            see(
                "every skipped field present",
                skipped.iter().all(|&set| set),
            );
            see(
                "every skipped field absent",
                skipped.iter().all(|&set| !set),
            );
            see("empty map", text.contains("classes\":{}"));
        }

        fn assert_complete(&self) {
            let missing: Vec<_> = Self::ALL
                .iter()
                .filter(|case| !self.seen.contains(*case))
                .collect();
            assert!(missing.is_empty(), "cases never generated: {missing:?}");
        }
    }

    #[test]
    fn slow_time_path_matches_the_time_crate_and_never_panics() {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // `OffsetDateTime::from(SystemTime)` (the former slow path) panics out of range, and
        // also just inside it (-9999-01-01T00:00:00.001); compare with it away from the edges.
        let interior = -377_705_116_800i128 * 1_000_000_000..253_402_214_400i128 * 1_000_000_000;
        let mut rng = Rng(42);
        let mut compared = 0;
        for _ in 0..5_000 {
            let at = random_time(&mut rng);
            let nanos = match at.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(after) => after.as_nanos() as i128,
                Err(before) => -(before.duration().as_nanos() as i128),
            };
            let expected = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .ok()
                .and_then(|at| at.format(&format).ok())
                .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into());
            assert_eq!(rfc3339_millis_slow(at), expected, "{at:?}");
            if interior.contains(&nanos) {
                let former = time::OffsetDateTime::from(at).format(&format).unwrap();
                assert_eq!(expected, former, "{at:?}");
                compared += 1;
            }
        }
        assert!(compared > 1_000);
    }

    fn options(dir: &Path, max_file_bytes: u64) -> EventFileOptions {
        EventFileOptions {
            path: dir.join("events.jsonl"),
            max_file_bytes,
            max_files: 3,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_is_written_once_flushed_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, task) = EventSink::start(options(dir.path(), 200_000)).unwrap();
        let mut handles = Vec::new();
        for worker in 0..4 {
            let sink = sink.clone();
            handles.push(tokio::spawn(async move {
                for index in 0..5_000u64 {
                    let mut event = sample();
                    event.response_bytes = worker * 1_000_000 + index;
                    if index % 2 == 0 {
                        sink.record_now(event);
                    } else {
                        sink.record(event).await;
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        sink.flush().await;
        assert_eq!(sink.stats.written.load(Ordering::Relaxed), 20_000);
        assert_eq!(sink.stats.write_errors.load(Ordering::Relaxed), 0);
        assert!(sink.stats.rotations.load(Ordering::Relaxed) >= 1);
        let recent = sink.recent(usize::MAX);
        assert_eq!(recent.len(), RECENT_EVENTS_CAPACITY);
        for line in &recent {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["reason"], "not_granted");
        }
        assert_eq!(sink.recent(3).len(), 3);
        assert_eq!(&sink.recent(1)[0], recent.last().unwrap());
        drop(sink);
        task.await.unwrap();
        // Every file holds whole lines, none past the cap.
        let mut total = 0;
        for name in [
            "events.jsonl",
            "events.jsonl.1",
            "events.jsonl.2",
            "events.jsonl.3",
        ] {
            if let Ok(text) = std::fs::read_to_string(dir.path().join(name)) {
                assert!(text.len() as u64 <= 200_000);
                assert!(text.is_empty() || text.ends_with('\n'));
                total += text.lines().count();
            }
        }
        assert!(
            total > 0 && total < 20_000,
            "older rotations were dropped: {total}"
        );
    }

    /// A rotation that fails loses no line and no kept file: the lines go on into the file open
    /// now, and the retry, a second later, only opens the new file (it does not shift the kept
    /// ones again, which would drop one per retry).
    #[test]
    fn a_failed_rotation_keeps_every_line_and_every_kept_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path(), 100);
        let path = options.path.clone();
        std::fs::write(rotated_name(&path, 2), "kept\n").unwrap();
        let mut writer = RotatingWriter::open(options).unwrap();
        writer.rotation.failing_opens = 1;
        let stats = EventStats::default();
        let line = |n: usize| format!("{{\"line\":{n:03},\"pad\":\"{}\"}}\n", "p".repeat(40));
        let lines = |from: usize, count: usize| {
            (from..from + count)
                .map(line)
                .collect::<String>()
                .into_bytes()
        };
        let count = |index: u32| {
            std::fs::read_to_string(rotated_name(&path, index)).map(|text| text.lines().count())
        };
        // The second line's rotation moves the file to `.1` and fails to open a new one: the
        // second and third lines still land, in the moved file.
        writer.write_batch(lines(0, 3), &stats);
        assert_eq!(stats.written.load(Ordering::Relaxed), 3);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 0);
        assert_eq!(stats.rotations.load(Ordering::Relaxed), 0);
        assert_eq!(stats.rotation_failures.load(Ordering::Relaxed), 1);
        assert_eq!(count(1).unwrap(), 3);
        // `.1` was free: nothing else moved.
        assert_eq!(
            std::fs::read_to_string(rotated_name(&path, 2)).unwrap(),
            "kept\n"
        );
        assert!(!path.exists());
        // Past the retry: the new file is opened, and nothing shifts again.
        writer.rotation.retry_now();
        writer.write_batch(lines(3, 1), &stats);
        assert_eq!(stats.written.load(Ordering::Relaxed), 4);
        assert_eq!(stats.rotations.load(Ordering::Relaxed), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(count(1).unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(rotated_name(&path, 2)).unwrap(),
            "kept\n"
        );
    }

    /// A rotation fills the first free slot and moves only the files before it, so one that a
    /// failed rename left halfway drops no further kept file when it is tried again; with no
    /// free slot the oldest goes.
    #[test]
    fn a_rotation_fills_the_first_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let write = |index: u32, text: &str| match index {
            0 => std::fs::write(&path, text).unwrap(),
            index => std::fs::write(rotated_name(&path, index), text).unwrap(),
        };
        let read = |index: u32| std::fs::read_to_string(rotated_name(&path, index)).ok();
        // `.2` missing: the rename from `.2` to `.3` had gone, the one from `.1` to `.2` not.
        write(0, "newest");
        write(1, "newer");
        write(3, "oldest");
        shift_rotated(&path, 3).unwrap();
        assert_eq!(
            [read(1), read(2), read(3)],
            [
                Some("newest".into()),
                Some("newer".into()),
                Some("oldest".into())
            ]
        );
        // Full: the oldest is dropped.
        write(0, "now");
        shift_rotated(&path, 3).unwrap();
        assert_eq!(
            [read(1), read(2), read(3)],
            [
                Some("now".into()),
                Some("newest".into()),
                Some("newer".into())
            ]
        );
        assert!(!path.exists());
    }

    /// A writer of an event file in `dir` (no size limit) that holds `{"n":1}`, its path, and
    /// its stats.
    fn one_line_written(dir: &Path) -> (RotatingWriter, PathBuf, EventStats) {
        let options = options(dir, u64::MAX);
        let path = options.path.clone();
        let mut writer = RotatingWriter::open(options).unwrap();
        let stats = EventStats::default();
        writer.write_batch(b"{\"n\":1}\n".to_vec(), &stats);
        (writer, path, stats)
    }

    /// A write that fails part-way (a full disk) leaves no half line: what landed is cut off,
    /// and the next batch starts on a line of its own.
    #[test]
    fn a_failed_write_leaves_no_half_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, path, stats) = one_line_written(dir.path());
        writer.failing_writes = 1;
        writer.write_batch(b"{\"n\":2}\n{\"n\":3}\n".to_vec(), &stats);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 2);
        writer.write_batch(b"{\"n\":4}\n".to_vec(), &stats);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":4}\n"
        );
        assert_eq!(stats.written.load(Ordering::Relaxed), 2);
    }

    /// The lines of `text` that parse as JSON: the events a reader gets.
    fn json_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
            .collect()
    }

    /// When a failed write's bytes cannot be cut off, the next write begins a line of its own:
    /// the broken line stays alone (and unparsable), every later one whole.
    #[test]
    fn a_failed_write_that_cannot_be_cut_off_breaks_no_later_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, path, stats) = one_line_written(dir.path());
        writer.failing_writes = 1;
        writer.failing_cuts = 1;
        writer.write_batch(b"{\"n\":2}\n{\"n\":3}\n{\"n\":33}\n".to_vec(), &stats);
        writer.write_batch(b"{\"n\":4}\n{\"n\":5}\n".to_vec(), &stats);
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = json_lines(&text);
        // Half the failed chunk landed: its first line whole, the second broken.
        assert_eq!(
            parsed,
            ["{\"n\":1}", "{\"n\":2}", "{\"n\":4}", "{\"n\":5}"],
            "{text}"
        );
        assert_eq!(text.lines().count(), 5, "{text}");
        // The line that landed whole counts as written, the two that did not as errors.
        assert_eq!(stats.written.load(Ordering::Relaxed), 4);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 2);
    }

    /// A failed write after a torn one, which begins with the newline that ends the broken
    /// line: only the whole lines of the chunk itself count as written.
    #[test]
    fn a_failed_write_after_a_torn_one_counts_only_its_own_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, path, stats) = one_line_written(dir.path());
        writer.failing_writes = 2;
        writer.failing_cuts = 2;
        // Half lands: `{"n":2}` whole, then a broken line.
        writer.write_batch(b"{\"n\":2}\n{\"n\":3}\n{\"n\":33}\n".to_vec(), &stats);
        // Half of the newline and the chunk lands: the newline, then `{"n":4}` whole.
        writer.write_batch(b"{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n".to_vec(), &stats);
        assert_eq!(stats.written.load(Ordering::Relaxed), 3);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 4);
        writer.write_batch(b"{\"n\":7}\n".to_vec(), &stats);
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = json_lines(&text);
        assert_eq!(
            parsed,
            ["{\"n\":1}", "{\"n\":2}", "{\"n\":4}", "{\"n\":7}"],
            "{text}"
        );
        assert_eq!(stats.written.load(Ordering::Relaxed), 4);
    }

    /// After a failed rotation the writer appends to the moved file (`.1`); a failed write
    /// that cannot be cut off is read back there, not at the configured path. Here what landed
    /// ends a line, so the next write adds no empty line.
    #[test]
    fn a_failed_write_after_a_failed_rotation_is_read_back_in_the_moved_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path(), 20);
        let path = options.path.clone();
        let mut writer = RotatingWriter::open(options).unwrap();
        writer.rotation.failing_opens = 1;
        let stats = EventStats::default();
        // The second line's rotation moves the file to `.1` and fails to open a new one.
        writer.write_batch(b"{\"n\":1,\"pad\":\"pppp\"}\n{\"n\":2}\n".to_vec(), &stats);
        assert_eq!(stats.rotation_failures.load(Ordering::Relaxed), 1);
        assert!(!path.exists());
        // Half of two equal lines lands: the first whole, and it cannot be cut off.
        writer.failing_writes = 1;
        writer.failing_cuts = 1;
        writer.write_batch(b"{\"n\":3}\n{\"n\":4}\n".to_vec(), &stats);
        writer.write_batch(b"{\"n\":5}\n".to_vec(), &stats);
        let text = std::fs::read_to_string(rotated_name(&path, 1)).unwrap();
        assert_eq!(
            text,
            "{\"n\":1,\"pad\":\"pppp\"}\n{\"n\":2}\n{\"n\":3}\n{\"n\":5}\n"
        );
        assert_eq!(stats.written.load(Ordering::Relaxed), 4);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_waits_for_earlier_events_and_the_writer_drains_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, task) = EventSink::start(options(dir.path(), u64::MAX)).unwrap();
        sink.record_now(sample());
        sink.flush().await;
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(sink.recent(10).len(), 1);
        for _ in 0..10 {
            sink.record_now(sample());
        }
        drop(sink);
        task.await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 11);
    }

    /// A restart keeps what the admin API shows: the events of the last run come back from the
    /// file and its last rotation, oldest first, then the new run's. A line a crash tore (no
    /// newline) and a line that is not a JSON object are left out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_events_are_read_back_from_the_files_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(rotated_name(&path, 1), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        std::fs::write(rotated_name(&path, 2), "{\"n\":0}\n").unwrap();
        std::fs::write(&path, "{\"n\":3}\nnot json\n{\"n\":4}\n{\"n\":5,\"torn").unwrap();
        let (sink, task) = EventSink::start(options(dir.path(), u64::MAX)).unwrap();
        let n =
            |line: &Arc<str>| serde_json::from_str::<serde_json::Value>(line).unwrap()["n"].clone();
        let recent = sink.recent(10);
        assert_eq!(recent.iter().map(n).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(sink.recent(2).iter().map(n).collect::<Vec<_>>(), [3, 4]);
        sink.record_now(sample());
        sink.flush().await;
        let recent = sink.recent(10);
        assert_eq!(recent.len(), 5);
        assert_eq!(n(&recent[3]), 4);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&recent[4]).unwrap()["reason"],
            "not_granted"
        );
        drop(sink);
        task.await.unwrap();
        // The torn line was ended before the new event, which is a whole line of its own.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[3], "{\"n\":5,\"torn");
        serde_json::from_str::<serde_json::Value>(lines[4]).unwrap();
    }

    /// From a file holding more events than the ring, the last [`RECENT_EVENTS_CAPACITY`]
    /// come back; from one of longer lines, every whole line in the bytes read back. Oldest
    /// first, up to the file's last event.
    #[test]
    fn a_long_event_file_gives_back_its_last_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        for pad in [300, 1000] {
            let padding = "x".repeat(pad);
            let mut text = String::new();
            let total = REFILL_BYTES as usize / pad + 100;
            for index in 0..total {
                text.push_str(&format!("{{\"n\":{index},\"pad\":\"{padding}\"}}\n"));
            }
            std::fs::write(&path, &text).unwrap();
            let lines = RecentRing::refilled(&path).last(usize::MAX);
            // Whole lines in the bytes read, at least (all lines are about the longest's length).
            let longest = text.lines().map(|line| line.len() + 1).max().unwrap() as u64;
            let fit = (REFILL_BYTES / longest) as usize - 1;
            if fit >= RECENT_EVENTS_CAPACITY {
                assert_eq!(lines.len(), RECENT_EVENTS_CAPACITY, "{pad}-byte padding");
            } else {
                assert!(
                    lines.len() >= fit && lines.len() < total,
                    "{pad}-byte padding: {} back",
                    lines.len()
                );
            }
            let first = total - lines.len();
            for (offset, line) in lines.iter().enumerate() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["n"], first + offset);
            }
        }
    }

    /// A log that is not a regular file (a FIFO no one writes to) is neither read back nor
    /// waited on.
    #[cfg(unix)]
    #[test]
    fn a_fifo_as_the_event_file_is_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(RecentRing::refilled(&path).lines, 0);
    }
}
