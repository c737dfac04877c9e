//! The data plane's workers: `[gateway] workers` threads (default one per CPU), each with its own
//! single-threaded tokio runtime, its own listening socket on the gateway address
//! (`SO_REUSEPORT`: the kernel spreads new connections across the sockets) and its own upstream
//! pools (`upstream.rs`). A connection and every call on it are served start to finish on one
//! thread, as nginx's worker processes do: no work stealing, no cross-thread wake-up per call.
//!
//! The kernel picks a socket by a hash of the connection, so a few long-lived connections split
//! like coin tosses (64 callers as 37 and 27), and the busier worker's calls wait longer. So a
//! worker that accepts a connection while it serves at least two more than another hands it to
//! the worker serving the fewest ([`Arrivals`]): one cross-thread hand-off per connection that
//! needs one, none per call.
//!
//! What is shared stays shared (`Shared`: the config snapshot, rate limiters, the audit log, the
//! event writer); it is reached through atomics and channels, never by moving a call between
//! threads. The admin listener, the audit sequencer and the background jobs run on the main
//! runtime.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Pending connections each worker's socket queues before the kernel refuses more.
const LISTEN_BACKLOG: u32 = 1024;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The data-plane worker running on this thread, if it is one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// A value per data-plane worker, made on that worker's first use (so anything it spawns lands
/// on the worker's own runtime), and one more shared by every thread outside the data plane.
pub struct PerWorker<T> {
    /// Index `w` for worker `w`; the last for threads outside the data plane. A slot for every
    /// possible worker (the count may differ in a reloaded config), each a pointer until used:
    /// a few KiB per value whatever `T` is (every integration has its own upstream clients).
    slots: Box<[std::sync::OnceLock<Box<T>>]>,
}

impl<T> PerWorker<T> {
    pub fn new() -> Self {
        PerWorker {
            slots: (0..=postern_config::MAX_WORKERS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    /// This thread's value: its worker's, or the shared one off the data plane.
    pub fn get_or_init(&self, init: impl FnOnce() -> T) -> &T {
        let last = self.slots.len() - 1;
        let slot = current().map_or(last, |worker| worker.min(last - 1));
        self.slots[slot].get_or_init(|| Box::new(init()))
    }

    /// This worker's value, or `None` off the data plane.
    pub fn on_worker(&self, init: impl FnOnce() -> T) -> Option<&T> {
        current().map(|_| self.get_or_init(init))
    }
}

impl<T> Default for PerWorker<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks the calling thread, until the guard is dropped, as background work the request path
/// does not wait on except under back-pressure (the event writer, the detector): Linux's
/// `SCHED_BATCH`, which does not preempt a running thread on wake-up, so on busy CPUs it waits
/// for a data-plane worker's time slice to end instead of cutting it (docs/BENCHMARKS.md §1).
/// Only a thread on the usual policy is changed: one the operator put elsewhere (`chrt`,
/// systemd's `CPUSchedulingPolicy`) is left as it is. A no-op off Linux, or if the system
/// refuses it. A thread spawned from it would inherit the policy for good: these spawn none.
#[must_use = "the thread is background work only while the guard lives"]
pub fn background_thread() -> Background {
    #[cfg(target_os = "linux")]
    let changed = {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        unsafe {
            libc::sched_getscheduler(0) == libc::SCHED_OTHER
                && libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0
        }
    };
    #[cfg(not(target_os = "linux"))]
    let changed = false;
    Background {
        changed,
        _this_thread: std::marker::PhantomData,
    }
}

/// See [`background_thread`]: dropped, the thread is back on the usual policy if the guard
/// moved it (a blocking-pool thread goes back to the pool). Not `Send`: it restores the thread
/// it was made on.
pub struct Background {
    changed: bool,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Background {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.changed {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread, the one the guard was made on (not `Send`).
            let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = self.changed;
    }
}

/// Where a listener's connections come from: its own socket and, on a data-plane worker, the
/// connections other workers hand over so that each serves about as many as the rest.
pub struct Arrivals {
    listener: TcpListener,
    balance: Option<Balance>,
}

/// A worker's part in spreading connections evenly.
struct Balance {
    worker: usize,
    counts: Arc<Counts>,
    /// Every worker's inbox, this one's included (never sent to).
    inboxes: Arc<[mpsc::UnboundedSender<Handed>]>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A connection on its way to another worker's runtime (deregistered from this one's).
type Handed = (std::net::TcpStream, SocketAddr, Live);

/// A connection for this worker to serve, and its place in the worker's count (`None` off the
/// data plane).
pub type Arrival = (TcpStream, SocketAddr, Option<Live>);

/// The connections each worker serves, and how many were handed from one worker to another.
struct Counts {
    serving: Box<[AtomicUsize]>,
    handed_over: AtomicU64,
}

/// The workers' connections as the admin API's `/metrics` reads them.
#[derive(Clone)]
pub struct Load(Arc<Counts>);

impl Load {
    /// The connections each worker serves now (its index is the worker's).
    pub fn per_worker(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .serving
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
    }

    /// Connections a worker accepted and handed to another, since start.
    pub fn handed_over(&self) -> u64 {
        self.0.handed_over.load(Ordering::Relaxed)
    }
}

/// A connection counted as served by one worker, until dropped.
pub struct Live {
    counts: Arc<Counts>,
    worker: usize,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("worker", &self.worker)
            .finish()
    }
}

impl Live {
    fn new(counts: &Arc<Counts>, worker: usize) -> Live {
        counts.serving[worker].fetch_add(1, Ordering::Relaxed);
        Live {
            counts: counts.clone(),
            worker,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.counts.serving[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Arrivals {
    /// A listener's own connections only (the admin API's, a test's).
    pub fn single(listener: TcpListener) -> Arrivals {
        Arrivals {
            listener,
            balance: None,
        }
    }

    /// The next connection this worker is to serve: one it accepted, or one handed to it.
    /// Counted as this worker's for as long as the [`Live`] is kept (`None` off the data plane).
    pub async fn accept(&mut self) -> std::io::Result<Arrival> {
        let Some(balance) = &mut self.balance else {
            let (stream, peer) = self.listener.accept().await?;
            return Ok((stream, peer, None));
        };
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                Some(handed) = balance.inbox.recv() => match take(handed) {
                    Some(taken) => return Ok(taken),
                    None => continue,
                },
                accepted = self.listener.accept() => accepted?,
            };
            let to = balance.fewest();
            if to == balance.worker {
                return Ok((stream, peer, Some(Live::new(&balance.counts, to))));
            }
            if let Some(kept) = balance.hand_over(to, stream, peer) {
                return Ok(kept);
            }
        }
    }

    /// Takes no more hand-overs: other workers serve what they accept from now on.
    pub fn close(&mut self) {
        if let Some(balance) = &mut self.balance {
            balance.inbox.close();
        }
    }

    /// A connection handed over and not yet taken, without waiting (after [`Arrivals::close`],
    /// until it answers `None`).
    pub fn handed(&mut self) -> Option<Arrival> {
        let balance = self.balance.as_mut()?;
        while let Ok(handed) = balance.inbox.try_recv() {
            if let Some(taken) = take(handed) {
                return Some(taken);
            }
        }
        None
    }
}

/// A connection handed over, registered with this worker's runtime.
fn take((stream, peer, live): Handed) -> Option<Arrival> {
    match TcpStream::from_std(stream) {
        Ok(stream) => Some((stream, peer, Some(live))),
        Err(error) => {
            tracing::warn!(%peer, %error, "cannot take a connection another worker handed over");
            None
        }
    }
}

impl Balance {
    /// Sends a connection this worker accepted to worker `to`'s inbox, counted as `to`'s. If
    /// that worker has stopped accepting since it was chosen, the connection is this worker's
    /// to serve after all (returned); `None` when it was handed over (or lost, logged).
    fn hand_over(&self, to: usize, stream: TcpStream, peer: SocketAddr) -> Option<Arrival> {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot hand a connection to another worker");
                return None;
            }
        };
        match self.inboxes[to].send((stream, peer, Live::new(&self.counts, to))) {
            Ok(()) => {
                self.counts.handed_over.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(mpsc::error::SendError((stream, peer, _theirs))) => {
                take((stream, peer, Live::new(&self.counts, self.worker)))
            }
        }
    }

    /// This worker, unless another still accepting serves at least two fewer connections: then
    /// the one serving the fewest. (Within one, a hand-off would only move the imbalance.)
    fn fewest(&self) -> usize {
        let count = |worker: usize| self.counts.serving[worker].load(Ordering::Relaxed);
        let mine = count(self.worker);
        let (mut best, mut fewest) = (self.worker, mine);
        for (worker, inbox) in self.inboxes.iter().enumerate() {
            let theirs = count(worker);
            if theirs < fewest && !inbox.is_closed() {
                (best, fewest) = (worker, theirs);
            }
        }
        match fewest + 2 <= mine {
            true => best,
            false => self.worker,
        }
    }
}

/// `[gateway] workers` resolved: `0` means one per CPU.
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(postern_config::MAX_WORKERS)
}

/// The running workers. Dropping this without [`Workers::finish`] lets the threads end on their
/// own (their in-flight calls are cut), as a dropped runtime would.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stopped_accepting: mpsc::Receiver<()>,
    finished: watch::Sender<bool>,
}

/// The workers' sockets, bound to the gateway address and listening (so the address is taken:
/// on Linux a socket that is only bound does not keep off another one with `SO_REUSEADDR`), each
/// to be served by a worker of its own. Start-up makes them before it writes anything, so an
/// address in use fails it cleanly; connections that arrive meanwhile wait in the backlog until
/// the workers run (readiness is the admin API's `/readyz`, not a connection that succeeds).
pub struct Bound {
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl Bound {
    /// The address bound (its port chosen by the system if `0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connections the workers started on these sockets will serve.
    pub fn load(&self) -> Load {
        Load(self.counts.clone())
    }
}

/// Binds `count` sockets (at least one) to `addr`, one per worker, and makes them listen.
pub fn bind(addr: SocketAddr, count: usize) -> anyhow::Result<Bound> {
    bind_sockets(addr, count.max(1)).with_context(|| format!("binding listen address {addr}"))
}

impl Workers {
    /// Starts one worker on each socket of `bound`. `serve` runs on the worker's runtime with
    /// its arrivals (its socket, and connections handed over by other workers) and returns when
    /// the worker should stop accepting; the worker's connections keep being served until
    /// [`Workers::finish`].
    pub async fn start<S, F>(bound: Bound, serve: S) -> anyhow::Result<(Workers, SocketAddr)>
    where
        S: Fn(Arrivals) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        let Bound {
            listeners,
            addr: bound,
            counts,
        } = bound;
        let (finished, _) = watch::channel(false);
        let (accepting_done, stopped_accepting) = mpsc::channel::<()>(1);
        let mut threads = Vec::with_capacity(listeners.len());
        let mut ready = Vec::with_capacity(listeners.len());
        let (inboxes, inbox_ends): (Vec<_>, Vec<_>) = listeners
            .iter()
            .map(|_| mpsc::unbounded_channel::<Handed>())
            .unzip();
        let inboxes: Arc<[_]> = inboxes.into();
        for (index, (listener, inbox)) in listeners.into_iter().zip(inbox_ends).enumerate() {
            let balance = Balance {
                worker: index,
                counts: counts.clone(),
                inboxes: inboxes.clone(),
                inbox,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker's runtime")?;
            let serve = serve.clone();
            let mut finished = finished.subscribe();
            let accepting_done = accepting_done.clone();
            let (listening, listened) = oneshot::channel();
            ready.push(listened);
            let thread = std::thread::Builder::new()
                .name(format!("postern-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(Some(index)));
                    runtime.block_on(async move {
                        // Registered with this worker's own runtime.
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(error) => {
                                let _ = listening.send(Err(error));
                                return;
                            }
                        };
                        let _ = listening.send(Ok(()));
                        let accepting = serve(Arrivals {
                            listener,
                            balance: Some(balance),
                        });
                        // Nothing `serve` captured may outlive accepting: the gateway's graceful
                        // shutdown waits for the last handle on its connection watcher.
                        drop(serve);
                        accepting.await;
                        // Stopped accepting. A panic in `serve` drops the sender as well, so
                        // `stopped_accepting` never waits for a dead worker.
                        drop(accepting_done);
                        // Serve what is in flight until told to stop (or the gateway is dropped).
                        let _ = finished.wait_for(|finished| *finished).await;
                    });
                })
                .context("starting a worker thread")?;
            threads.push(thread);
        }
        for listened in ready {
            match listened.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(error)
                        .with_context(|| format!("registering a worker's listener on {bound}"));
                }
                Err(_) => anyhow::bail!("a worker thread ended before it was listening"),
            }
        }
        Ok((
            Workers {
                threads,
                stopped_accepting,
                finished,
            },
            bound,
        ))
    }

    /// Waits until every worker has stopped accepting (after the shutdown signal).
    pub async fn stopped_accepting(&mut self) {
        // Nothing is ever sent: the channel closes when the last worker drops its sender.
        let _ = self.stopped_accepting.recv().await;
    }

    /// Ends every worker (what is still in flight is closed) and waits for the threads.
    pub async fn finish(self) {
        let _ = self.finished.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// `count` sockets bound to one address with `SO_REUSEPORT` and listening; a port of 0 is chosen
/// by the first bind and shared by the rest.
///
/// A plain bind first: if anything already holds the address (another Postern included, whose
/// sockets would otherwise share it and split the traffic silently), start fails with "address
/// in use" as it would without `SO_REUSEPORT`; and, as each socket listens at once, a plain bind
/// by anyone later fails too (with `SO_REUSEADDR` on both sides, Linux lets a second socket bind
/// an address whose holder is not listening).
fn bind_sockets(addr: SocketAddr, count: usize) -> std::io::Result<Bound> {
    if addr.port() != 0 {
        let probe = new_socket(addr)?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = new_socket(addr)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        socket.listen(LISTEN_BACKLOG as i32)?;
        bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("the bound address is not an IP address"))?;
        listeners.push(socket.into());
    }
    Ok(Bound {
        counts: Arc::new(Counts {
            serving: listeners.iter().map(|_| AtomicUsize::new(0)).collect(),
            handed_over: AtomicU64::new(0),
        }),
        listeners,
        addr: bound,
    })
}

/// A non-blocking TCP socket for `addr`'s family (close-on-exec, as socket2 makes them).
fn new_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's accept loop for these tests: each connection to `each` until `stopped`.
    async fn accept_until_stopped(
        mut arrivals: Arrivals,
        mut stopped: watch::Receiver<bool>,
        mut each: impl FnMut(TcpStream, Option<Live>),
    ) {
        loop {
            tokio::select! {
                accepted = arrivals.accept() => {
                    if let Ok((stream, _, live)) = accepted {
                        each(stream, live);
                    }
                }
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    #[tokio::test]
    async fn every_worker_serves_on_its_own_thread_and_shares_one_port() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let (mut workers, addr) =
            Workers::start(bind("127.0.0.1:0".parse().unwrap(), 3).unwrap(), {
                move |arrivals: Arrivals| {
                    let tx = tx.clone();
                    accept_until_stopped(arrivals, stopped.clone(), move |_, _| {
                        let _ = tx.send(current());
                    })
                }
            })
            .await
            .unwrap();
        // The kernel spreads connections to the one address over the workers (SO_REUSEPORT):
        // 48 all landing on one of three would be a 3^-47 chance.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..48 {
            let _connection = tokio::net::TcpStream::connect(addr).await.unwrap();
            seen.insert(
                rx.recv()
                    .await
                    .unwrap()
                    .expect("accepted on a worker thread"),
            );
        }
        assert!(
            seen.len() >= 2,
            "every connection went to one worker: {seen:?}"
        );
        assert!(seen.iter().all(|&worker| worker < 3), "{seen:?}");
        assert_eq!(current(), None, "not a worker thread");
        let _ = stop.send(true);
        workers.stopped_accepting().await;
        workers.finish().await;
    }

    /// Connections are spread by how many each worker serves, not by the kernel's hash: after a
    /// worker's connections all close, the next ones go to it (without the hand-over, six in a
    /// row landing on one of three workers would be a 3^-6 chance).
    #[tokio::test]
    async fn a_worker_serving_fewer_connections_is_handed_new_ones() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let bound = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let load = bound.load();
        let (mut workers, addr) = Workers::start(bound, {
            move |arrivals: Arrivals| {
                let tx = tx.clone();
                accept_until_stopped(arrivals, stopped.clone(), move |stream, live| {
                    let _ = tx.send((current().unwrap(), stream, live.unwrap()));
                })
            }
        })
        .await
        .unwrap();
        let mut clients = Vec::new();
        let mut served = Vec::new();
        let mut connect = async |clients: &mut Vec<_>| {
            clients.push(TcpStream::connect(addr).await.unwrap());
            rx.recv().await.unwrap()
        };
        for _ in 0..30 {
            served.push(connect(&mut clients).await);
        }
        let per_worker = |served: &[(usize, TcpStream, Live)]| {
            let mut counts = [0; 3];
            for (worker, _, _) in served {
                counts[*worker] += 1;
            }
            counts
        };
        let counts = per_worker(&served);
        assert!(
            counts.iter().all(|&n| (8..=12).contains(&n)),
            "30 connections spread within two of each other: {counts:?}"
        );
        assert_eq!(
            load.per_worker().collect::<Vec<_>>(),
            counts,
            "as /metrics reads them"
        );
        let handed = load.handed_over();
        // Worker 1's connections close (server side: they stop counting). The others serve at
        // least 8 each, so worker 1 stays two below them for the next 6.
        served.retain(|(worker, _, _)| *worker != 1);
        for _ in 0..6 {
            let (worker, stream, live) = connect(&mut clients).await;
            assert_eq!(worker, 1, "handed to the worker serving the fewest");
            served.push((worker, stream, live));
        }
        assert_eq!(
            load.per_worker().collect::<Vec<_>>(),
            per_worker(&served),
            "as /metrics reads them"
        );
        // Of the six, those the kernel gave to another worker's socket were handed over: at
        // most six more hand-overs (none counted twice, none that failed).
        assert!(load.handed_over() <= handed + 6);
        let _ = stop.send(true);
        workers.stopped_accepting().await;
        workers.finish().await;
    }

    /// A worker that stops accepting closes its inbox and still gets what was handed to it;
    /// from then on the others serve what they accept themselves.
    #[tokio::test]
    async fn a_stopping_worker_takes_what_was_handed_to_it_and_no_more() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (go, going) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let bound = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let load = bound.load();
        let (mut workers, addr) = Workers::start(bound, {
            move |mut arrivals: Arrivals| {
                let (tx, mut going, stopped) = (tx.clone(), going.clone(), stopped.clone());
                async move {
                    if current() == Some(1) {
                        return accept_until_stopped(arrivals, stopped, move |stream, live| {
                            let _ = tx.send((1, vec![(stream, live)]));
                        })
                        .await;
                    }
                    // Worker 0 never accepts from its own socket, and stops at `go`.
                    let _ = going.wait_for(|go| *go).await;
                    arrivals.close();
                    let mut taken = Vec::new();
                    while let Some((stream, _, live)) = arrivals.handed() {
                        taken.push((stream, live));
                    }
                    let _ = tx.send((0, taken));
                }
            }
        })
        .await
        .unwrap();
        // Of 40 connections, worker 1's socket gets 3 or more but with a chance under 10^-9:
        // from its third it serves two more than worker 0 (none) and hands some over.
        let mut clients = Vec::new();
        for _ in 0..40 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while load.handed_over() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("worker 1 hands connections to worker 0");
        let _ = go.send(true);
        let mut served = Vec::new();
        let taken = loop {
            match rx.recv().await.unwrap() {
                (0, taken) => break taken,
                (_, connections) => served.extend(connections),
            }
        };
        // Every hand-over before the close is taken; any after it failed and is not counted.
        let handed = load.handed_over();
        assert!(!taken.is_empty());
        assert_eq!(taken.len() as u64, handed, "what was handed over is taken");
        // Closed: worker 1 keeps what it accepts now, however many more it serves.
        for _ in 0..10 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            load.handed_over(),
            handed,
            "nothing handed to a stopped worker"
        );
        assert_eq!(load.per_worker().next(), Some(taken.len()));
        drop(taken);
        assert_eq!(load.per_worker().next(), Some(0));
        let _ = stop.send(true);
        workers.stopped_accepting().await;
        workers.finish().await;
    }

    #[tokio::test]
    async fn an_address_in_use_is_refused_even_by_a_second_worker_group() {
        let serve = |mut arrivals: Arrivals| async move {
            let _ = arrivals.accept().await;
        };
        let (first, addr) = Workers::start(bind("127.0.0.1:0".parse().unwrap(), 2).unwrap(), serve)
            .await
            .unwrap();
        let error = bind(addr, 2).err().expect("the address is taken");
        assert!(format!("{error:#}").contains("in use"), "{error:#}");
        // Bound and not started yet: the address is taken all the same (start-up binds before
        // it does anything else, and may take a while before its workers run).
        let waiting = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let error = bind(waiting.addr(), 2)
            .err()
            .expect("the address is taken before the workers start");
        assert!(format!("{error:#}").contains("in use"), "{error:#}");
        let plain = std::net::TcpListener::bind(addr);
        assert!(plain.is_err(), "a plain bind must not join the group");
        drop(first);
    }

    #[tokio::test]
    async fn per_worker_values_are_kept_apart_and_one_is_shared_off_the_data_plane() {
        let values = std::sync::Arc::new(PerWorker::<Option<usize>>::new());
        assert_eq!(*values.get_or_init(current), None, "the shared value");
        assert!(values.on_worker(current).is_none(), "not a worker thread");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut workers, _) = Workers::start(bind("127.0.0.1:0".parse().unwrap(), 2).unwrap(), {
            let values = values.clone();
            move |_arrivals: Arrivals| {
                let (tx, values) = (tx.clone(), values.clone());
                async move {
                    let made = values.on_worker(current).copied();
                    let again = *values.get_or_init(|| Some(usize::MAX));
                    let _ = tx.send((current(), made, again));
                }
            }
        })
        .await
        .unwrap();
        for _ in 0..2 {
            let (worker, made, again) = rx.recv().await.unwrap();
            assert_eq!(made, Some(worker), "made on and for its own worker");
            assert_eq!(again, worker, "later calls get the same value");
        }
        assert_eq!(
            *values.get_or_init(|| Some(7)),
            None,
            "still the shared one"
        );
        workers.stopped_accepting().await;
        workers.finish().await;
    }

    #[tokio::test]
    async fn a_worker_whose_accept_loop_panics_still_counts_as_stopped() {
        let (mut workers, _) = Workers::start(bind("127.0.0.1:0".parse().unwrap(), 2).unwrap(), {
            |_arrivals: Arrivals| async move {
                if current() == Some(0) {
                    panic!("worker 0's accept loop fails (test)");
                }
            }
        })
        .await
        .unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            workers.stopped_accepting(),
        )
        .await
        .expect("stopped_accepting returns although worker 0 panicked");
        workers.finish().await;
    }

    /// The background guard makes its thread `SCHED_BATCH` (allowed without privileges) and
    /// gives it back the usual policy when dropped.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_background_thread_is_batch_scheduled_while_its_guard_lives() {
        std::thread::spawn(|| {
            // SAFETY: reads the calling thread's policy.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let before = policy();
            let background = background_thread();
            if before == libc::SCHED_OTHER {
                assert_eq!(policy(), libc::SCHED_BATCH);
            } else {
                // Run under a policy of the operator's (`chrt`): left as it is.
                assert_eq!(policy(), before);
            }
            drop(background);
            assert_eq!(policy(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn zero_means_one_per_cpu_and_the_count_is_capped() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(count(0), cpus.min(postern_config::MAX_WORKERS));
        assert_eq!(count(3), 3);
        assert_eq!(count(10_000), postern_config::MAX_WORKERS);
    }
}
