//! Time limits on a connection's bytes: the first byte must arrive within `first_byte`
//! (a connection that never speaks is closed — hyper's protocol sniffing has no timeout of its
//! own), and afterwards a connection with no byte in either direction for `idle` is closed —
//! also when it is the peer that stops taking bytes (a write, flush or shutdown that stays
//! blocked fails the same way), so a caller that stops reading cannot hold a connection.
//! A connection whose calls are counted in an [`InFlight`] is not cut while a read waits and a
//! call waits on its vendor (for its answer's head, or the next piece of its body): the caller is
//! not idle then, and the call's own timeouts bound the wait. A call whose answer is ready but not
//! taken (an HTTP/2 caller that grants no flow-control window) does not count.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// A stream whose reads, writes, flushes and shutdown fail with `TimedOut` once its
    /// deadline passes.
    pub struct Deadline<S> {
        #[pin]
        inner: S,
        sleep: Pin<Box<Sleep>>,
        started: Instant,
        last_activity: Option<Instant>,
        // Since when a write, flush or shutdown has waited on the peer with no byte taken: it
        // fails an idle period from then, whatever the peer sends meanwhile.
        write_stalled_since: Option<Instant>,
        first_byte: Duration,
        idle: Duration,
        in_flight: Option<InFlight>,
        // Reads wait until at least this instant: set when a call in flight excused the limit.
        reads_excused_until: Instant,
        // The listener's view of the connection: told of moved bytes, and telling it to close
        // for room ([`crate::slots`]).
        presence: Option<Arc<crate::slots::Presence>>,
    }
}

/// The waits on vendors of one connection's calls, counted by the service answering its
/// requests and read by its [`Deadline`] when a read waits; and how those calls move
/// ([`InFlight::progressed`]), read by [`InFlight::request_idle`].
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Waits>);

#[derive(Debug)]
struct Waits {
    waiting: AtomicUsize,
    /// Requests in hand, from their head until their answer is handed on whole
    /// ([`InFlight::answering`]): a connection with any is never closed for room.
    answering: AtomicUsize,
    /// Requests begun and pieces of answers handed to the protocol so far
    /// ([`InFlight::progressed`]): [`InFlight::request_idle`] tells by it whether the
    /// connection's calls moved in an idle period.
    progress: AtomicU64,
    /// When the last wait ended, in milliseconds since `base`, plus one (0: none yet): the answer
    /// it waited for may still be on its way out (handed to the protocol, not yet written), so
    /// reads get a whole idle period from then.
    last_ended: AtomicU64,
    base: Instant,
    /// Whether the connection was closed at its idle limit ([`InFlight::idled_out`]).
    idled_out: AtomicBool,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight(Arc::new(Waits {
            waiting: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            last_ended: AtomicU64::new(0),
            base: Instant::now(),
            idled_out: AtomicBool::new(false),
        }))
    }
}

/// One wait on a vendor, counted in its [`InFlight`] until dropped.
#[derive(Debug)]
pub struct Waiting(Arc<Waits>);

/// One request in hand, counted in its [`InFlight`] until dropped.
#[derive(Debug)]
pub struct Answering(Arc<Waits>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Release);
    }
}

impl InFlight {
    /// The connection's calls moved: a request began, or a piece of an answer was handed to
    /// the protocol.
    pub fn progressed(&self) {
        self.0.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends once a whole `idle` period has passed in which no request began, no piece of an
    /// answer was handed to the protocol and no call waited on its vendor (checked every
    /// `idle`, so it ends between one and two periods after the last move). Bytes that move no
    /// call do not count, however many the connection exchanges: keep-alive PINGs, a request
    /// head trickled in frames, or PINGs beside answers the caller grants no window for (they
    /// would otherwise hold the connection, and the calls' places under concurrency limits,
    /// for good).
    pub async fn request_idle(&self, idle: Duration) {
        let mut seen = self.0.progress.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = self.0.progress.load(Ordering::Relaxed);
            let waiting = self.0.waiting.load(Ordering::Relaxed) > 0;
            if now == seen && !waiting {
                self.idle_out();
                return;
            }
            seen = now;
        }
    }

    /// The connection is being closed at its idle limit: no call moved or waited on its
    /// vendor for a whole period, so an answer still streaming is one its caller stopped taking.
    pub fn idle_out(&self) {
        self.0.idled_out.store(true, Ordering::Relaxed);
    }

    /// Whether [`InFlight::idle_out`] was called: by [`InFlight::request_idle`] when it ended,
    /// or by the connection's [`Deadline`] when it cut a read or write at the idle limit.
    pub fn idled_out(&self) -> bool {
        self.0.idled_out.load(Ordering::Relaxed)
    }

    /// A request is in hand until the guard is dropped: from its head until its answer is handed
    /// on whole.
    pub fn answering(&self) -> Answering {
        self.0.answering.fetch_add(1, Ordering::Relaxed);
        Answering(self.0.clone())
    }

    /// Whether a request is in hand ([`InFlight::answering`]) or a wait counted (a call waiting
    /// on its vendor, a tunnel or WebSocket session open).
    pub fn busy(&self) -> bool {
        self.waits() || self.0.answering.load(Ordering::Acquire) > 0
    }

    fn waits(&self) -> bool {
        self.0.waiting.load(Ordering::Acquire) > 0
    }

    pub fn wait(&self) -> Waiting {
        self.0.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self.0.clone())
    }

    /// Until when a read that found the limit passed may still wait: an idle period from now
    /// while a call waits on its vendor, or from the last wait's end if that is later than now.
    /// (`waiting` is read first: a wait that ended on another thread since has set
    /// `last_ended`.)
    fn excused_until(&self, idle: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.waits() {
            return Some(now + idle);
        }
        self.last_ended()
            .map(|ended| ended + idle)
            .filter(|until| *until > now)
    }

    fn last_ended(&self) -> Option<Instant> {
        match self.0.last_ended.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.0.base + Duration::from_millis(ms - 1)),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let ms = self.0.base.elapsed().as_millis() as u64 + 1;
        self.0.last_ended.fetch_max(ms, Ordering::Relaxed);
        self.0.waiting.fetch_sub(1, Ordering::Release);
    }
}

impl<S> Deadline<S> {
    pub fn new(inner: S, first_byte: Duration, idle: Duration) -> Self {
        let started = Instant::now();
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(started + first_byte)),
            started,
            last_activity: None,
            write_stalled_since: None,
            first_byte,
            idle,
            in_flight: None,
            reads_excused_until: started,
            presence: None,
        }
    }

    /// The same limits, the connection's bytes told to `presence`, and its waits for bytes
    /// failing once `presence` is told to close for room.
    pub fn present(self, presence: Arc<crate::slots::Presence>) -> Self {
        Deadline {
            presence: Some(presence),
            ..self
        }
    }

    /// The same limits, except that a read is not cut while one of `in_flight`'s calls waits on
    /// its vendor, nor within an idle period of such a wait's end (a write the peer does not take
    /// still is).
    pub fn excusing(self, in_flight: InFlight) -> Self {
        Deadline {
            in_flight: Some(in_flight),
            ..self
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.as_mut().project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    // Bytes that reach a connection told to close for room with no request in
                    // hand (the next request of a kept connection, racing the close) are not
                    // taken: the client sees its kept connection closed, as by any server.
                    if this.presence.as_ref().is_some_and(|p| p.closing_for_room()) {
                        return Poll::Ready(Err(closed_for_room()));
                    }
                    touch(this.last_activity, this.presence.as_deref(), Instant::now());
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        self.expired(cx, true)
    }
}

/// Readiness waits as reads do: past the deadline, `TimedOut`.
impl<S: crate::h1server::ReadReady> crate::h1server::ReadReady for Deadline<S> {
    const TELLS: bool = S::TELLS;
    fn poll_read_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().project().inner.poll_read_ready(cx) {
            Poll::Pending => self.expired(cx, true),
            ready => ready,
        }
    }
}

/// The connection moved a byte at `now`.
fn touch(
    last_activity: &mut Option<Instant>,
    presence: Option<&crate::slots::Presence>,
    now: Instant,
) {
    *last_activity = Some(now);
    if let Some(presence) = presence {
        presence.moved(now);
    }
}

fn closed_for_room() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed to make room for a new connection at the listener's connection limit",
    )
}

impl<S> Deadline<S> {
    /// Called when the stream is not ready: `TimedOut` once the connection has been silent
    /// past its deadline, else `Pending` with the deadline's timer armed. `reading`: a read is
    /// waiting, which a call in flight excuses.
    fn expired<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        reading: bool,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        if let Some(presence) = this.presence {
            if presence.closing_for_room_or_wake(cx) {
                return Poll::Ready(Err(closed_for_room()));
            }
        }
        let mut deadline = match *this.last_activity {
            None => *this.started + *this.first_byte,
            Some(last) => last + *this.idle,
        };
        // A peer that sends but takes nothing (an h2 caller sending frames that move nothing
        // while the answers it opened fill the buffers) keeps `last_activity` moving: a waiting
        // write's own deadline runs from when it began to wait.
        let stalled_write = match (reading, *this.write_stalled_since) {
            (false, Some(since)) if since + *this.idle < deadline => {
                deadline = since + *this.idle;
                true
            }
            _ => false,
        };
        // A wait that ended since is found when the timer fires (`excused_until`).
        if reading {
            deadline = deadline.max(*this.reads_excused_until);
        }
        // The timer is only moved earlier here, never later: activity moves the deadline later
        // on nearly every call, and moving the timer each time was measured to come with tokio
        // unparking its own driver (an eventfd write every ~5 calls, docs/BENCHMARKS.md §1),
        // gone since. A timer left at an earlier instant fires early once and is re-armed then
        // (below), so a busy connection re-arms once per idle period instead of once per read.
        if deadline < this.sleep.deadline() {
            this.sleep.as_mut().reset(deadline);
        }
        loop {
            match this.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if this.sleep.deadline() < deadline => {
                    // Fired for a deadline that activity has since moved: wait for the real one.
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(()) => {
                    let excused = match reading {
                        true => this
                            .in_flight
                            .as_ref()
                            .and_then(|in_flight| in_flight.excused_until(*this.idle)),
                        false => None,
                    };
                    let Some(until) = excused else {
                        if let (Some(in_flight), true) =
                            (this.in_flight.as_ref(), this.last_activity.is_some())
                        {
                            in_flight.idle_out();
                        }
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            if this.last_activity.is_none() {
                                "no request within the first-byte timeout"
                            } else if stalled_write {
                                "the peer took no bytes within the idle limit"
                            } else {
                                "connection idle"
                            },
                        )));
                    };
                    // The caller waits for an answer (or has just been given one): reads wait
                    // on. Writes keep the deadline activity set, so a write the peer stops
                    // taking is still cut: the timer is one for both, and a write polled in the
                    // same wake-up (hyper's connections and `splice` poll both halves from one
                    // task) moves it back to the earlier deadline.
                    deadline = until;
                    *this.reads_excused_until = until;
                    this.sleep.as_mut().reset(until);
                }
            }
        }
    }
}

impl<S: AsyncWrite> Deadline<S> {
    /// One write: bytes taken count as activity; a write the peer does not take times out an
    /// idle period after it began to wait, whatever the peer sends meanwhile.
    fn write_with(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        match write(this.inner, cx) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    *this.write_stalled_since = None;
                    if this.last_activity.is_some() {
                        touch(this.last_activity, this.presence.as_deref(), Instant::now());
                    }
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.write_waits(cx),
        }
    }

    /// A write, flush or shutdown waits on the peer: noted when it began to, then as
    /// [`Deadline::expired`].
    fn write_waits<T>(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let stalled = self.as_mut().project().write_stalled_since;
        stalled.get_or_insert_with(Instant::now);
        self.expired(cx, false)
    }
}

impl<S: AsyncWrite> AsyncWrite for Deadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.as_mut().project();
        match this.inner.poll_flush(cx) {
            Poll::Pending => self.write_waits(cx),
            Poll::Ready(Ok(())) => {
                *this.write_stalled_since = None;
                Poll::Ready(Ok(()))
            }
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().project().inner.poll_shutdown(cx) {
            Poll::Pending => self.write_waits(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Deadline::new(server, Duration::from_secs(10), Duration::from_secs(60));
        let mut buf = [0u8; 8];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Deadline::new(server, Duration::from_secs(10), Duration::from_secs(60));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        // Idle for less than the idle limit, then more bytes: still fine.
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b" /").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 2);
        // Then silence past the idle limit.
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// A connection whose peer sends one byte at each of `arrivals` (offsets from the start,
    /// each reaching a read already waiting, its timer armed), then falls silent: when it timed
    /// out, from the start.
    async fn times_out_after(
        first_byte: Duration,
        idle: Duration,
        arrivals: &[Duration],
    ) -> Duration {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Deadline::new(server, first_byte, idle);
        let mut buf = [0u8; 8];
        let start = Instant::now();
        for &at in arrivals {
            let waiting = server.read(&mut buf);
            tokio::pin!(waiting);
            // Polled once: waiting, its timer armed.
            assert!(tokio::time::timeout(Duration::ZERO, waiting.as_mut())
                .await
                .is_err());
            tokio::time::sleep_until(start + at).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(waiting.await.unwrap(), 1);
        }
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        start.elapsed()
    }

    /// Bytes at 0 s and 40 s: the deadline moves to `idle` (60 s) after the last, so the
    /// connection times out at 100 s, not at 60 s.
    #[tokio::test(start_paused = true)]
    async fn bytes_reaching_a_waiting_read_move_its_idle_deadline() {
        let secs = Duration::from_secs;
        assert_eq!(
            times_out_after(secs(10), secs(60), &[secs(0), secs(40)]).await,
            secs(100)
        );
    }

    /// The timer is armed for the first-byte limit (10 s); the first byte at 1 s makes the
    /// idle limit (2 s) the earlier deadline, so the timer must move earlier: timed out at 3 s.
    /// And a timer left early by activity (armed for 2 s, bytes at 1.5 s) fires, re-arms for
    /// the moved deadline, and times out there (3.5 s), not at its first instant.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_re_arms_and_one_moved_later_waits_for_it() {
        let (secs, ms) = (Duration::from_secs, Duration::from_millis);
        assert_eq!(
            times_out_after(secs(10), secs(2), &[secs(1)]).await,
            secs(3)
        );
        assert_eq!(
            times_out_after(secs(10), secs(2), &[secs(0), ms(1500)]).await,
            ms(3500)
        );
    }

    /// A readiness wait (a connection waiting for its caller with no read buffer) is bounded
    /// as a read is: ready once bytes come, `TimedOut` at the first-byte limit when none do.
    #[tokio::test(start_paused = true)]
    async fn a_readiness_wait_times_out_as_a_read_does() {
        use crate::h1server::ReadReady;
        async fn ready(stream: &mut Deadline<tokio::net::TcpStream>) -> io::Result<()> {
            std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read_ready(cx)).await
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secs = Duration::from_secs;

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = Deadline::new(server, secs(10), secs(60));
        client.write_all(b"GET").await.unwrap();
        // The bytes are seen (no timer armed), so the paused clock cannot run past the limit.
        server.get_ref().readable().await.unwrap();
        ready(&mut server).await.unwrap();

        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = Deadline::new(server, secs(10), secs(60));
        let start = Instant::now();
        // Readiness may be told before a read finds nothing (a fresh socket was, here): read.
        let nothing = tokio::time::timeout(Duration::ZERO, server.read(&mut [0u8; 8])).await;
        assert!(nothing.is_err(), "{nothing:?}");
        let error = tokio::time::timeout(secs(11), ready(&mut server))
            .await
            .expect("the wait ends at the first-byte limit")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out_a_write() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut server = Deadline::new(server, Duration::from_secs(10), Duration::from_secs(60));
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        // The client never reads: the pipe fills, and the write waits until the idle limit.
        let error = server.write_all(&[b'x'; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    /// A peer that goes on sending (a byte every 30 s, under the 60 s idle limit) but takes
    /// nothing: the write waiting on it fails an idle period after it began to wait, not never
    /// (the bytes read kept the connection's activity moving, and the write's deadline with it).
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_but_stops_reading_still_times_out_a_write() {
        let secs = Duration::from_secs;
        let (mut client, server) = tokio::io::duplex(16);
        let server = Deadline::new(server, secs(10), secs(60));
        let (mut reader, mut writer) = tokio::io::split(server);
        client.write_all(b"GET").await.unwrap();
        assert_eq!(reader.read(&mut [0u8; 8]).await.unwrap(), 3);
        let start = Instant::now();
        let reads = async {
            let mut buf = [0u8; 8];
            loop {
                assert_eq!(reader.read(&mut buf).await.unwrap(), 1);
            }
        };
        let sends = async {
            for _ in 0..10 {
                tokio::time::sleep(secs(30)).await;
                client.write_all(b"x").await.unwrap();
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            biased;
            () = reads => unreachable!(),
            () = sends => unreachable!(),
            written = writer.write_all(&[b'x'; 64]) => {
                let error = written.unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                assert_eq!(error.to_string(), "the peer took no bytes within the idle limit");
            }
        }
        // 16 bytes went into the pipe at once; the rest waited from then.
        assert_eq!(start.elapsed(), secs(60));
    }

    /// A connection whose reads `in_flight` excuses (first byte within 10 s, then idle for at
    /// most 60 s), once its peer's first bytes are read: (the peer, the connection).
    async fn spoken_to(
        in_flight: &InFlight,
    ) -> (tokio::io::DuplexStream, Deadline<tokio::io::DuplexStream>) {
        let secs = Duration::from_secs;
        let (mut client, server) = tokio::io::duplex(16);
        let mut server = Deadline::new(server, secs(10), secs(60)).excusing(in_flight.clone());
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 3);
        (client, server)
    }

    /// While a call waits on its vendor a waiting read is not cut, however long; once the wait
    /// ends the idle limit applies again, an idle period after the end (its answer may still be
    /// on its way out); and a write the peer does not take is cut even while a call waits.
    #[tokio::test(start_paused = true)]
    async fn a_call_in_flight_excuses_a_waiting_read_but_not_a_stalled_write() {
        let secs = Duration::from_secs;
        let in_flight = InFlight::default();
        let (client, mut server) = spoken_to(&in_flight).await;
        let mut buf = [0u8; 8];
        let start = Instant::now();
        let call = in_flight.wait();
        let waiting = server.read(&mut buf);
        tokio::pin!(waiting);
        // Five and a half idle periods pass with the read waiting: not cut.
        assert!(tokio::time::timeout(secs(330), waiting.as_mut())
            .await
            .is_err());
        drop(call);
        let error = waiting.await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), secs(390));
        drop(client);

        let (client, mut server) = spoken_to(&in_flight).await;
        let _call = in_flight.wait();
        let start = Instant::now();
        let error = server.write_all(&[b'x'; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), secs(60));
        drop(client);
    }

    /// A read and a write pending at once from one task, as hyper polls them, while a call
    /// waits: the read, polled first at each wake-up, moves the shared timer later, and the
    /// write still times out at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn an_excused_read_does_not_delay_a_stalled_write_beside_it() {
        let secs = Duration::from_secs;
        let in_flight = InFlight::default();
        let (client, server) = spoken_to(&in_flight).await;
        let (mut reader, mut writer) = tokio::io::split(server);
        let mut buf = [0u8; 8];
        let _call = in_flight.wait();
        let start = Instant::now();
        tokio::select! {
            biased;
            read = reader.read(&mut buf) => panic!("the read ended: {read:?}"),
            written = writer.write_all(&[b'x'; 64]) => {
                assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
            }
        }
        assert_eq!(start.elapsed(), secs(60));
        drop(client);
    }
}
