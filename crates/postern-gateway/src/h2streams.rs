//! How many streams an h2 connection to a vendor carries, and how many the vendor allows.
//!
//! hyper's h2 client queues a request past the vendor's `SETTINGS_MAX_CONCURRENT_STREAMS` inside
//! the connection until a stream ends, and does not say what the limit is. A call to a vendor
//! that keeps long streams open (a streamed completion, a long poll) would then wait behind
//! them. The pool (`upstream.rs`) instead opens another connection once every connection to the
//! origin is full, as Envoy's pool does; for that it needs both numbers:
//!
//! - [`H2Streams`] counts the calls on a connection: a [`StreamSlot`] is taken with the
//!   connection and lives in the call's response body.
//! - [`SettingsWatch`] wraps the connection's decrypted byte stream and reads the vendor's
//!   SETTINGS frames off the frame headers as they pass to hyper (RFC 9113 §4.1, §6.5): nothing
//!   is changed, only a header split across reads is gathered (9 bytes), and any other frame's
//!   payload, DATA's included, is skipped whole.
//!
//! Postern also bounds the streams it puts on one connection itself
//! ([`H2_STREAMS_PER_CONNECTION`]), and sizes the connection's flow-control windows by that
//! bound ([`H2_STREAM_WINDOW`], [`H2_CONNECTION_WINDOW`]), so that calls whose answers are never
//! read cannot hold up the other calls' answers on the same connection (a caller's own: each
//! caller has its own connections, `upstream.rs`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// The most calls Postern puts on one h2 connection to a vendor, whatever larger limit the
/// vendor announces (or none): past it, another connection is opened, as past the vendor's own.
/// It is what lets [`H2_CONNECTION_WINDOW`] cover every stream's window (see there). 128 is
/// nginx's default `http2_max_concurrent_streams`, a limit many vendors announce anyway, and
/// keeps what one connection's unread answers may hold to [`H2_CONNECTION_WINDOW`].
pub(crate) const H2_STREAMS_PER_CONNECTION: usize = 128;

/// The flow-control window Postern gives each stream of an h2 connection to a vendor
/// (`SETTINGS_INITIAL_WINDOW_SIZE`): how much of an answer the vendor may send before Postern's
/// caller has taken it. hyper gives window back only as the answer's body is read, and
/// `ResponseBody` reads the vendor only when the caller's connection takes more, so a caller
/// that stops reading holds its stream's window full. 512 KiB is of the order of what the
/// kernel's socket buffers hold for a stalled HTTP/1.1 vendor connection. hyper's default is 2 MiB; the price of
/// less is a single answer's speed on a long path: at most one window per round trip to the
/// vendor (512 KiB per 10 ms is about 400 Mbit/s, per 100 ms about 40 Mbit/s).
pub(crate) const H2_STREAM_WINDOW: u32 = 512 << 10;

/// The connection's flow-control window: every stream's window together
/// ([`H2_STREAMS_PER_CONNECTION`] × [`H2_STREAM_WINDOW`], 64 MiB). A DATA frame counts against
/// both its stream's window and the connection's, and hyper gives the connection's back only
/// as bodies are read; with hyper's default (5 MiB for 2 MiB streams), three callers not reading
/// answers larger than 2 MiB held the whole connection window, and every other caller's answer
/// on the connection stopped after its head until their calls ended (up to the idle limits).
/// As large as all its streams' windows, it can never be held by streams that stalled: each
/// holds at most its own window, and one stream that reads always finds room. What unread
/// answers may hold in memory is bounded by the same 64 MiB per connection.
///
/// The bound holds while Postern puts at most [`H2_STREAMS_PER_CONNECTION`] calls on the
/// connection: only past `MAX_H2_PER_ORIGIN` full connections to an origin on one worker
/// (`upstream.rs`, 64 × 128 calls at once) do calls go on the least loaded connection anyway,
/// where a vendor allowing more streams opens them, and streams that stalled could again hold
/// that connection's window.
pub(crate) const H2_CONNECTION_WINDOW: u32 = H2_STREAMS_PER_CONNECTION as u32 * H2_STREAM_WINDOW;

// Every stream's window together, within a window's largest size (2^31 - 1, RFC 9113 §6.9.1).
const _: () = assert!(
    H2_CONNECTION_WINDOW as usize == H2_STREAMS_PER_CONNECTION * H2_STREAM_WINDOW as usize
        && H2_CONNECTION_WINDOW < 1 << 31
);

/// One h2 connection's calls and the vendor's stream limit on it.
#[derive(Debug)]
pub(crate) struct H2Streams {
    active: AtomicUsize,
    /// Until the vendor's first SETTINGS frame: what the pool expects (the origin's last
    /// connection's limit), or unlimited (RFC 9113 §5.1.2).
    limit: AtomicUsize,
    /// When the last call on it ended, in nanoseconds from [`EPOCH`] (0: none has).
    idle_since: AtomicU64,
    /// Has a permit once the vendor's first SETTINGS frame has been read, or the connection
    /// has ended without one.
    settled: tokio::sync::Notify,
    /// Streams of it that failed while it stayed open ([`StreamSlot::failed`]).
    failed: AtomicUsize,
}

/// Streams a connection may see fail (reset by Postern — a caller's body refused as it
/// streamed, an answer's body dropped before its end, `UpstreamBody`'s `Drop` — or by the
/// vendor) before the pool stops giving it new calls: a vendor that defends itself against
/// rapid reset (CVE-2023-44487) by counting a client's resets may close the connection, and
/// every call on it would fail with it. Retired, the connection ends once its calls have; the
/// next call dials afresh. (A defence, not a fix: hyper's server, the tests' vendor, counts
/// only streams reset before it accepted them, which a refused body's are not; 60 refused bodies on one connection all stayed 400 with no budget. The 502s once
/// put down to resets were empty DATA frames, which `ForwardBody` no longer sends.)
pub(crate) const FAILED_STREAMS_BUDGET: usize = 10;

/// The origin of [`H2Streams::idle_since`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl H2Streams {
    /// `limit`: the stream limit to assume until the vendor announces its own.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        LazyLock::force(&EPOCH);
        Arc::new(H2Streams {
            active: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            idle_since: AtomicU64::new(0),
            settled: tokio::sync::Notify::new(),
            failed: AtomicUsize::new(0),
        })
    }

    /// Whether one more call fits under [`H2Streams::limit`]. A limit of 0 (a vendor refusing
    /// new streams for now, RFC 9113 §6.5.2) counts as 1: such a connection takes one call,
    /// which waits in it, rather than every call dialling a connection of its own.
    pub(crate) fn has_room(&self) -> bool {
        self.active() < self.limit().max(1)
    }

    /// Whether [`FAILED_STREAMS_BUDGET`] streams of it have failed: it takes no new call.
    pub(crate) fn worn(&self) -> bool {
        self.failed.load(Ordering::Relaxed) >= FAILED_STREAMS_BUDGET
    }

    /// The calls on the connection now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// When the connection's last call ended, if one has and none runs now.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        match self.idle_since.load(Ordering::Relaxed) {
            _ if self.active() > 0 => None,
            0 => None,
            nanos => Some(*EPOCH + Duration::from_nanos(nanos)),
        }
    }

    /// The connection's task has ended: nobody waits for SETTINGS that will not come.
    pub(crate) fn ended(&self) {
        self.settled.notify_one();
    }

    /// The calls Postern puts on the connection at once: the vendor's limit as last announced,
    /// or as assumed until it is, and at most [`H2_STREAMS_PER_CONNECTION`] (also when the
    /// vendor sets none).
    pub(crate) fn limit(&self) -> usize {
        self.limit
            .load(Ordering::Relaxed)
            .min(H2_STREAMS_PER_CONNECTION)
    }

    /// Counts one more call on the connection until the slot is dropped.
    pub(crate) fn reserve(self: &Arc<Self>) -> StreamSlot {
        self.active.fetch_add(1, Ordering::Relaxed);
        StreamSlot(self.clone())
    }

    /// Waits until the vendor's first SETTINGS frame has been read (the connection's task reads
    /// it; a vendor sends it first thing, RFC 9113 §3.4), or the connection has ended.
    pub(crate) async fn settled(&self) {
        self.settled.notified().await;
    }
}

/// A call's place on an h2 connection: counted in [`H2Streams`] until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<H2Streams>);

impl StreamSlot {
    /// The call's stream failed while its connection stayed open ([`H2Streams::worn`]).
    pub(crate) fn failed(&self) {
        self.0.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot while its request waits for the answer's head: a call dropped meanwhile (its
    /// caller reset the stream or hung up) has hyper reset the vendor's stream, which counts
    /// as a failed one ([`Unanswered`]).
    pub(crate) fn unanswered(self) -> Unanswered {
        Unanswered(Some(self))
    }
}

/// A [`StreamSlot`] whose request has not been answered: dropped so, its stream counts as
/// failed; [`Unanswered::answered`] gives the slot back.
pub(crate) struct Unanswered(Option<StreamSlot>);

impl Unanswered {
    pub(crate) fn answered(mut self) -> StreamSlot {
        self.0.take().expect("taken only here")
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.failed();
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // The clock is read only when the connection falls idle, not at every call's end.
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let nanos = u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.0.idle_since.store(nanos.max(1), Ordering::Relaxed);
        }
    }
}

/// Where the scan of the vendor's frames stands.
#[derive(Debug, Default)]
struct FrameScan {
    /// The frame header being read, and how much of it has come.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come (0: a header is next).
    payload_left: usize,
    /// The current frame is a SETTINGS frame (not an acknowledgement): its payload is read.
    settings: bool,
    /// A setting (2-byte identifier, 4-byte value) split across reads.
    entry: [u8; 6],
    entry_len: usize,
    /// The first SETTINGS frame has been read whole.
    settled: bool,
}

const FRAME_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

impl FrameScan {
    /// Reads `data`, the next bytes the vendor sent, into `streams`.
    fn feed(&mut self, mut data: &[u8], streams: &H2Streams) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                // A whole header in `data` is read in place; one split across reads is
                // gathered first.
                let header = match (self.header_len, data.first_chunk::<9>()) {
                    (0, Some(header)) => {
                        data = &data[9..];
                        *header
                    }
                    _ => {
                        let take = (9 - self.header_len).min(data.len());
                        self.header[self.header_len..self.header_len + take]
                            .copy_from_slice(&data[..take]);
                        self.header_len += take;
                        data = &data[take..];
                        if self.header_len < 9 {
                            return;
                        }
                        self.header_len = 0;
                        self.header
                    }
                };
                let [l0, l1, l2, kind, flags, ..] = header;
                self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                self.settings = kind == FRAME_SETTINGS && flags & FLAG_ACK == 0;
                self.entry_len = 0;
                if self.payload_left == 0 {
                    self.frame_ended(streams);
                }
                continue;
            }
            let take = self.payload_left.min(data.len());
            if self.settings {
                for &byte in &data[..take] {
                    self.entry[self.entry_len] = byte;
                    self.entry_len += 1;
                    if self.entry_len == 6 {
                        self.entry_len = 0;
                        let [i0, i1, v0, v1, v2, v3] = self.entry;
                        if u16::from_be_bytes([i0, i1]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                            let value = u32::from_be_bytes([v0, v1, v2, v3]);
                            let value = usize::try_from(value).unwrap_or(usize::MAX);
                            streams.limit.store(value, Ordering::Relaxed);
                        }
                    }
                }
            }
            self.payload_left -= take;
            data = &data[take..];
            if self.payload_left == 0 {
                self.frame_ended(streams);
            }
        }
    }

    fn frame_ended(&mut self, streams: &H2Streams) {
        if self.settings && !self.settled {
            self.settled = true;
            streams.settled.notify_one();
        }
        self.settings = false;
    }
}

/// An h2 connection's byte stream, its reads scanned for the vendor's SETTINGS (module docs).
/// Writes pass through untouched, vectored ones included.
pub(crate) struct SettingsWatch<T> {
    io: T,
    scan: FrameScan,
    streams: Arc<H2Streams>,
}

impl<T> SettingsWatch<T> {
    pub(crate) fn new(io: T, streams: Arc<H2Streams>) -> Self {
        SettingsWatch {
            io,
            scan: FrameScan::default(),
            streams,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.scan.feed(&buf.filled()[before..], &this.streams);
        }
        poll
    }
}

forward_async_write!(SettingsWatch<T>, io);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = entries
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        frame(FRAME_SETTINGS, 0, &payload)
    }

    /// What a vendor sends: its SETTINGS (initial window size, then the stream limit), a
    /// WINDOW_UPDATE, the acknowledgement of ours, HEADERS and a DATA frame whose payload looks
    /// like a SETTINGS frame, then a SETTINGS frame that lowers the limit.
    fn vendor_bytes() -> Vec<u8> {
        let mut bytes = settings(&[(0x4, 65_535), (0x3, 100)]);
        bytes.extend(frame(0x8, 0, &[0, 0, 0x10, 0]));
        bytes.extend(frame(FRAME_SETTINGS, FLAG_ACK, &[]));
        bytes.extend(frame(0x1, 0x4, &[0x88]));
        bytes.extend(frame(0x0, 0x1, &settings(&[(0x3, 1)])));
        bytes.extend(settings(&[(0x3, 7)]));
        bytes
    }

    #[test]
    fn the_vendors_stream_limit_is_read_however_the_bytes_are_split() {
        let bytes = vendor_bytes();
        for piece in 1..=bytes.len() {
            let streams = H2Streams::new(usize::MAX);
            let mut scan = FrameScan::default();
            let mut limits = vec![streams.limit()];
            for chunk in bytes.chunks(piece) {
                scan.feed(chunk, &streams);
                if limits.last() != Some(&streams.limit()) {
                    limits.push(streams.limit());
                }
            }
            // Unlimited (Postern's own bound), then the first SETTINGS' 100 (unless the same
            // read brought the last frame too), then 7; never the 1 inside the DATA frame.
            let none = H2_STREAMS_PER_CONNECTION;
            assert!(
                limits == [none, 100, 7] || limits == [none, 7],
                "reads of {piece} bytes: limits {limits:?}"
            );
            assert!(scan.settled);
            assert_eq!((scan.header_len, scan.payload_left), (0, 0));
        }
    }

    #[test]
    fn settled_once_the_first_settings_frame_is_whole() {
        let first = settings(&[(0x3, 100)]);
        let streams = H2Streams::new(usize::MAX);
        let mut scan = FrameScan::default();
        scan.feed(&first[..first.len() - 1], &streams);
        assert!(!scan.settled);
        scan.feed(&first[first.len() - 1..], &streams);
        assert!(scan.settled);
        assert_eq!(streams.limit(), 100);
        // An empty SETTINGS frame settles too (the vendor keeps every default).
        let (streams, mut scan) = (H2Streams::new(usize::MAX), FrameScan::default());
        scan.feed(&settings(&[]), &streams);
        assert!(scan.settled);
        assert_eq!(streams.limit(), H2_STREAMS_PER_CONNECTION);
    }

    #[test]
    fn slots_count_the_calls_on_a_connection() {
        let streams = H2Streams::new(usize::MAX);
        let mut scan = FrameScan::default();
        scan.feed(&settings(&[(0x3, 2)]), &streams);
        let one = streams.reserve();
        assert!(streams.has_room());
        let two = streams.reserve();
        assert!(!streams.has_room());
        drop(one);
        assert!(streams.has_room());
        assert_eq!(streams.idle_since(), None, "a call still runs");
        drop(two);
        assert_eq!(streams.active(), 0);
        assert!(streams
            .idle_since()
            .is_some_and(|since| since.elapsed() < Duration::from_secs(5)));
    }

    #[test]
    fn a_connection_whose_streams_keep_failing_is_worn() {
        let streams = H2Streams::new(usize::MAX);
        for _ in 1..FAILED_STREAMS_BUDGET {
            streams.reserve().failed();
        }
        assert!(!streams.worn());
        // Calls that end well do not count.
        drop(streams.reserve());
        assert!(!streams.worn());
        streams.reserve().failed();
        assert!(streams.worn());
    }

    #[test]
    fn a_call_dropped_before_its_answer_counts_as_a_failed_stream() {
        let streams = H2Streams::new(usize::MAX);
        // Answered: not counted.
        drop(streams.reserve().unanswered().answered());
        for _ in 0..FAILED_STREAMS_BUDGET {
            assert!(!streams.worn());
            drop(streams.reserve().unanswered());
        }
        assert!(streams.worn());
        assert_eq!(streams.active(), 0);
    }

    #[test]
    fn a_limit_of_zero_takes_one_call_per_connection() {
        let streams = H2Streams::new(usize::MAX);
        FrameScan::default().feed(&settings(&[(0x3, 0)]), &streams);
        assert_eq!(streams.limit(), 0);
        assert!(streams.has_room());
        let _one = streams.reserve();
        assert!(!streams.has_room());
    }

    #[test]
    fn the_assumed_limit_holds_until_the_vendor_says_its_own() {
        let streams = H2Streams::new(4);
        assert_eq!(streams.limit(), 4);
        FrameScan::default().feed(&settings(&[(0x4, 1 << 20)]), &streams);
        assert_eq!(
            streams.limit(),
            4,
            "a SETTINGS frame without the limit keeps it"
        );
        FrameScan::default().feed(&settings(&[(0x3, 100)]), &streams);
        assert_eq!(streams.limit(), 100);
    }

    /// A vendor allowing more streams than [`H2_STREAMS_PER_CONNECTION`], or setting no limit,
    /// gets that many calls on a connection, no more: its flow-control window
    /// ([`H2_CONNECTION_WINDOW`]) is every stream's window together only so.
    #[test]
    fn postern_puts_at_most_its_own_bound_of_calls_on_a_connection() {
        for announced in [None, Some(1_000), Some(u32::MAX)] {
            let streams = H2Streams::new(usize::MAX);
            if let Some(limit) = announced {
                FrameScan::default().feed(&settings(&[(0x3, limit)]), &streams);
            }
            assert_eq!(streams.limit(), H2_STREAMS_PER_CONNECTION, "{announced:?}");
            let slots: Vec<_> = (0..H2_STREAMS_PER_CONNECTION)
                .map(|_| {
                    assert!(streams.has_room(), "{announced:?}");
                    streams.reserve()
                })
                .collect();
            assert!(!streams.has_room(), "{announced:?}");
            drop(slots);
            assert!(streams.has_room());
        }
        // A vendor's lower limit still counts.
        let streams = H2Streams::new(usize::MAX);
        FrameScan::default().feed(&settings(&[(0x3, 3)]), &streams);
        assert_eq!(streams.limit(), 3);
    }
}
