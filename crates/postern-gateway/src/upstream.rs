//! Forwarding to the vendor: Postern's connection pool ([`UpstreamClient`]), whose connections are
//! made by [`dial`]: it resolves the vendor host itself, checks every address with the SSRF
//! guard, and dials only the address it checked.
//!
//! Resolution happens for each new connection (pooled connections are reused until idle), so a
//! DNS answer that later turns private is refused the next time a connection is made. TLS is
//! rustls with the webpki roots plus an optional per-integration `ca_file`; ALPN offers h2 and
//! http/1.1.
//!
//! Each data-plane worker has its own pool (see `workers.rs`): a pooled connection's task lives on
//! the worker that opened it, so a call only ever reuses connections of its own thread and
//! forwarding never wakes another thread (the audit sequencer and the event writer are woken
//! in batches, elsewhere).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::Uri;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_netguard::{Denied, Guard, GuardError};
use tokio::net::TcpStream;

use crate::body::{BodyError, ForwardBody};
use crate::h2streams::{
    H2Streams, SettingsWatch, StreamSlot, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW,
};

/// Why a connection to the vendor could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("could not resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the host resolved to no address")]
    NoAddress,
    /// The address answered is one of Postern's own listening sockets
    /// ([`Guard::reaches_self`]).
    #[error("{addr} is one of Postern's own listening sockets")]
    ReachesPostern { addr: SocketAddr },
    /// All the lookups the guard may have in flight are ([`postern_netguard::Lookups`]).
    #[error("{limit} name lookups are in flight already")]
    ResolverBusy { limit: usize },
    /// The caller's share of those lookups is in flight ([`postern_netguard::Lookups::per_caller`]).
    #[error("this caller has {limit} name lookups in flight already, its share")]
    CallerResolverBusy { limit: usize },
    #[error("{host} is not a valid TLS server name")]
    ServerName { host: String },
}

/// Resolves `host` (within `connect_timeout`: a name server that never answers does not hold
/// the call), refuses the answer if the guard refuses any address in it, and connects to the
/// address that answers first ([`connect_first`]). The one way Postern dials out.
///
/// `caller`: whose call this is, when known; its lookup is counted in the caller's share of
/// the guard's lookups when they have shares (the forward proxy's do: [`Guard::resolve_for`]).
pub async fn dial(
    guard: &Guard,
    host: &str,
    port: u16,
    connect_timeout: Duration,
    caller: Option<&str>,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let resolved = tokio::time::timeout(connect_timeout, guard.resolve_for(host, port, caller))
        .await
        .map_err(|_| ConnectError::Resolve {
            // Escaped as the guard's own resolve errors are: a hostile name cannot forge log lines.
            host: host.escape_debug().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer from the resolver within connect_timeout_ms ({} ms)",
                    connect_timeout.as_millis()
                ),
            ),
        })?;
    let addrs = resolved.map_err(|e| match e {
        GuardError::Denied(denied) => ConnectError::Denied(denied),
        GuardError::Resolve { host, source } => ConnectError::Resolve { host, source },
        GuardError::Busy { limit } => ConnectError::ResolverBusy { limit },
        GuardError::CallerBusy { limit } => ConnectError::CallerResolverBusy { limit },
    })?;
    let (stream, addr) = connect_first(addrs, connect_timeout).await?;
    // Which local address the connection has is known only once it is made.
    if stream
        .local_addr()
        .is_ok_and(|local| guard.reaches_self(local, addr))
    {
        return Err(ConnectError::ReachesPostern { addr });
    }
    let _ = stream.set_nodelay(true);
    Ok((stream, addr))
}

impl ConnectError {
    /// Whether Postern refused the address (the SSRF guard, or Postern's own socket), rather
    /// than failing to reach it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ConnectError::Denied(_) | ConnectError::ReachesPostern { .. }
        )
    }
}

/// The port `authority` names, or its scheme's.
fn port_of(https: bool, authority: &Authority) -> u16 {
    authority.port_u16().unwrap_or(if https { 443 } else { 80 })
}

/// The TLS server name for `host` when `https`: checked before dialling, so a name TLS cannot
/// verify never opens a connection.
fn server_name(
    https: bool,
    host: &str,
) -> Result<Option<rustls::pki_types::ServerName<'static>>, ConnectError> {
    if !https {
        return Ok(None);
    }
    rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
        .map(|name| Some(name.to_owned()))
        .map_err(|_| ConnectError::ServerName {
            host: host.to_string(),
        })
}

/// TLS by `connector` over `stream` to `name` (`host`), its failure told apart: TLS itself
/// (a certificate not trusted, a handshake refused) or the connection under it.
async fn tls_to(
    connector: &tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    stream: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    connector.connect(name, stream).await.map_err(|source| {
        let host = host.to_string();
        if source
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            UpstreamError::Tls { host, source }
        } else {
            UpstreamError::Handshake { host, source }
        }
    })
}

/// How long a connection attempt runs alone before the next address is tried beside it: RFC
/// 8305's "Connection Attempt Delay", at its recommended 250 ms.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Happy Eyeballs (RFC 8305, without its DNS part: the guard has resolved every address
/// already). The addresses are tried in the resolver's order with the two families taking
/// turns, starting with the first address's; each attempt starts [`ATTEMPT_DELAY`] after the one
/// before it, or at once when the one before fails, and may take `connect_timeout`; the first
/// to connect is used and the others are dropped. So an address that swallows SYNs (an IPv6
/// route that goes nowhere) costs a new connection 250 ms, not `connect_timeout`. When every
/// attempt fails, the error is the last one's.
async fn connect_first(
    addrs: Vec<SocketAddr>,
    connect_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    if let [addr] = addrs[..] {
        // Nothing to race (the usual case): no attempt boxed, no timer for a next one.
        return attempt(addr, connect_timeout)
            .await
            .map(|stream| (stream, addr));
    }
    type Attempt = std::pin::Pin<Box<dyn Future<Output = Result<TcpStream, ConnectError>> + Send>>;
    let mut waiting = families_in_turn(addrs).into_iter();
    let mut running: Vec<(SocketAddr, Attempt)> = Vec::new();
    let mut next = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut last_error = None;
    // A failed attempt lets the next one start at once (not at the timer's next tick).
    let mut start_now = false;
    std::future::poll_fn(|cx| loop {
        let start_next = std::mem::take(&mut start_now)
            || running.is_empty()
            || next.as_mut().poll(cx).is_ready();
        if start_next {
            if let Some(addr) = waiting.next() {
                running.push((addr, Box::pin(attempt(addr, connect_timeout))));
                next.as_mut()
                    .reset(tokio::time::Instant::now() + ATTEMPT_DELAY);
                continue;
            }
        }
        let mut failed = false;
        let mut index = 0;
        while index < running.len() {
            let (addr, attempt) = &mut running[index];
            let addr = *addr;
            match attempt.as_mut().poll(cx) {
                std::task::Poll::Pending => {
                    index += 1;
                    continue;
                }
                std::task::Poll::Ready(Ok(stream)) => {
                    return std::task::Poll::Ready(Ok((stream, addr)))
                }
                std::task::Poll::Ready(Err(error)) => last_error = Some(error),
            }
            drop(running.swap_remove(index));
            failed = true;
        }
        if failed {
            start_now = true;
            continue;
        }
        if running.is_empty() {
            return std::task::Poll::Ready(Err(last_error
                .take()
                .unwrap_or(ConnectError::NoAddress)));
        }
        return std::task::Poll::Pending;
    })
    .await
}

/// One TCP connect to `addr`, within `connect_timeout`.
async fn attempt(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectError::Connect { addr, source }),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            timeout_ms: connect_timeout.as_millis() as u64,
        }),
    }
}

/// `addrs` with IPv6 and IPv4 taking turns, each family in the resolver's order, the first
/// address's family first (RFC 8305 section 4, a "First Address Family Count" of 1).
fn families_in_turn(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first_v6) = addrs.first().map(SocketAddr::is_ipv6) else {
        return addrs;
    };
    let mut ordered = Vec::with_capacity(addrs.len());
    let (mut leading, mut other): (VecDeque<_>, VecDeque<_>) = addrs
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first_v6);
    loop {
        match (leading.pop_front(), other.pop_front()) {
            (None, None) => return ordered,
            (one, two) => ordered.extend(one.into_iter().chain(two)),
        }
    }
}

/// Why a call to the vendor failed. Never carries the request URI (its query may hold an injected
/// credential).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("TLS to {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed during the TLS handshake for a reason other than TLS itself
    /// (reset, closed, not a TLS server).
    #[error("the connection to {host} broke during the TLS handshake: {source}")]
    Handshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plaintext http:// to {0} is refused (set allow_plaintext on the integration)")]
    Plaintext(String),
    #[error("the upstream URI is not absolute http(s)")]
    NotAbsolute,
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// An HTTP/1.1 exchange with the vendor at `addr` failed.
    #[error("the exchange with the vendor at {addr} failed")]
    H1 {
        #[source]
        error: crate::h1::Error,
        addr: SocketAddr,
    },
    /// An HTTP/2 stream to the vendor at `addr` failed.
    #[error("the HTTP/2 stream to the vendor at {addr} failed")]
    H2 {
        #[source]
        error: hyper::Error,
        addr: SocketAddr,
    },
    /// A WebSocket handshake with the vendor at `addr` failed ([`UpstreamClient::handshake`]).
    #[error("the WebSocket handshake with the vendor at {addr} failed")]
    WebSocket {
        #[source]
        error: hyper::Error,
        addr: SocketAddr,
    },
}

impl UpstreamError {
    /// The vendor address the failed exchange was with, once a connection was made (the call's
    /// event records it as `upstream_addr`).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            UpstreamError::H1 { addr, .. }
            | UpstreamError::H2 { addr, .. }
            | UpstreamError::WebSocket { addr, .. } => Some(*addr),
            _ => None,
        }
    }
}

/// One integration's upstream connections (or the forward proxy's, per destination): a pool per
/// data-plane worker, made on the worker's first call, and one shared by every other thread
/// (admin, token refresh, tests). Clones share them.
///
/// The pool is Postern's own: a worker's idle connections to one origin are a stack taken from
/// and returned to under an uncontended lock, and the call's task uses the connection directly.
/// HTTP/1.1 is spoken by Postern's own client (`h1.rs`: the call writes the request and reads
/// the answer itself, no connection task); h2 by hyper's connection-level client
/// (`hyper::client::conn::http2`). (hyper-util's pooled `Client` does the same job through a
/// keyed, shared pool and a task per connection: docs/BENCHMARKS.md has what each step saved.)
///
/// - HTTP/1.1 connections carry one call at a time; a connection goes back on the stack when its
///   response body has ended cleanly (`h1::ResponseBody`), and is closed otherwise. An
///   integration's calls keep them to their caller ([`UpstreamClient::send`]): per origin,
///   caller and worker.
/// - An idle HTTP/1.1 connection is probed when it is taken and again just before the write
///   (`h1::Connection::is_usable`: closed, reset, or sent something while idle, it is dropped).
///   A request a pooled connection could not take moves on to the next pooled connection, and
///   at last to a new one, whose failure is final; a bodiless safe one a pooled connection
///   dropped unanswered goes once more, on a new connection.
/// - Idle connections close after `idle_timeout` (within about 2 × max(`idle_timeout`, 1 s)):
///   checked when a call takes one, and by a sweep task on the worker every `idle_timeout` (at
///   least 1 s). An HTTP/1.1 connection's idle time starts when its response body ends, so a
///   long body never counts as idle. An h2 connection is idle only while no call runs on it,
///   from the later of its last call's end and the last take.
/// - An h2 connection (ALPN) carries every call of one caller on the worker to its origin (each
///   caller has its own, as for HTTP/1.1: [`UpstreamClient::send`]), up to the
///   vendor's stream limit (`SETTINGS_MAX_CONCURRENT_STREAMS`, read off the connection:
///   `h2streams.rs`) and at most `H2_STREAMS_PER_CONNECTION` (128), the bound its flow-control
///   windows are sized by (`h2_handshake`). A call that finds every connection to the origin full opens another, as
///   Envoy's pool does, rather than wait in one behind long streams; a connection opened so is
///   kept beside the others. Once an origin has answered with h2, calls that find no connection
///   with room while another call opens one wait for that one, as many as its limit (the
///   origin's, as its pooled connections last heard it) leaves room for; the first calls to an origin not yet known
///   dial at once, and those extra connections serve their own call only unless every other
///   is full. A new h2 connection is used once the vendor's SETTINGS have been read (within
///   `connect_timeout`): a stream past the limit sent before would be refused.
///   A caller's first calls to an origin another caller found to speak h2 wait so too
///   (`Pool::h2_anywhere`).
///   At most `MAX_H2_PER_ORIGIN` connections, pooled or being opened, per origin, caller and
///   worker:
///   past that, a call waits for one being opened, or for a stream in the least loaded one (a
///   vendor announcing a limit of 0 gets one call per connection, waiting in it). The first
///   calls to an origin not yet known as h2 are not counted: each dials, as for HTTP/1.1.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    guard: Guard,
    tls: tokio_rustls::TlsConnector,
    /// The same TLS set-up offering only http/1.1: for a WebSocket handshake (RFC 6455 is an
    /// HTTP/1.1 upgrade), on a connection of its own.
    tls_h1: tokio_rustls::TlsConnector,
    allow_plaintext: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pools: crate::workers::PerWorker<Arc<Mutex<Pool>>>,
}

/// At most this many connections are pooled per origin (and partition: a caller's HTTP/1.1
/// ones) and worker, idle or finishing a response body (more are closed).
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// At most this many connections are pooled per worker by one client (an integration's, or the
/// forward proxy's), all origins and partitions together: past it a connection is closed after
/// its call instead (but an h2 one other calls wait for), so callers naming host after host
/// through the forward proxy cannot have it keep a descriptor open for each until the idle
/// limit.
const MAX_POOLED_PER_WORKER: usize = if cfg!(test) { 8 } else { 4096 };
/// At most this many h2 connections are opened per origin and worker because the others were at
/// the vendor's stream limit; past it, calls wait for a stream in the least loaded one.
const MAX_H2_PER_ORIGIN: usize = 64;
/// Origins remembered as speaking h2, per worker, before the ones with no connection are
/// forgotten (the forward proxy's client meets arbitrary hosts).
const MAX_KNOWN_H2_ORIGINS: usize = 1024;

/// An origin as the pool knows it: scheme and authority, and their hash, computed once per call
/// (`OriginKey::new`) rather than at each of the call's lookups: `Authority`'s own `Hash` feeds
/// the hasher one lower-cased byte at a time, ~800 instructions a lookup.
#[derive(Clone)]
struct OriginKey {
    https: bool,
    authority: Authority,
    /// Whose connections these are, when a call's connections are not everyone's
    /// ([`UpstreamClient::request_for`]).
    /// Its pool's number for the partition's name ([`Pool::partition`]): a number, not the
    /// name, so keys are copied with no shared count to change.
    partition: Option<usize>,
    hash: u64,
}

/// Seeded once per process at random: the forward proxy's origins are chosen by callers, so
/// not a fixed-seed hash.
static ORIGIN_HASHER: std::sync::LazyLock<foldhash::quality::RandomState> =
    std::sync::LazyLock::new(Default::default);

impl OriginKey {
    /// The origin of an absolute `uri`, without the authority's user information
    /// (`user:password@`), which is never sent (RFC 9110 §4.2.4) and names no other origin.
    fn of(uri: &Uri) -> Result<Self, UpstreamError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamError::NotAbsolute),
        };
        let authority = uri.authority().ok_or(UpstreamError::NotAbsolute)?;
        let authority = match authority.as_str().rsplit_once('@') {
            None => authority.clone(),
            Some((_, host)) => host.parse().map_err(|_| UpstreamError::NotAbsolute)?,
        };
        Ok(OriginKey::new(https, authority))
    }

    fn new(https: bool, authority: Authority) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // Case-insensitive, as `Authority`'s equality is: lower-cased eight bytes at a time
        // (an authority holds no NUL, so the zero padding of the last word cannot collide
        // with a longer authority's bytes).
        let mut hasher = ORIGIN_HASHER.build_hasher();
        hasher.write_u8(u8::from(https));
        for chunk in authority.as_str().as_bytes().chunks(8) {
            let mut word = [0; 8];
            for (to, from) in word.iter_mut().zip(chunk) {
                *to = from.to_ascii_lowercase();
            }
            hasher.write_u64(u64::from_le_bytes(word));
        }
        let hash = hasher.finish();
        OriginKey {
            https,
            authority,
            partition: None,
            hash,
        }
    }

    /// This origin's connections kept to `partition`.
    /// This origin's key for no partition (its own, when it has none).
    fn without_partition(&self) -> Self {
        OriginKey::new(self.https, self.authority.clone())
    }

    fn in_partition(self, partition: usize) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = ORIGIN_HASHER.build_hasher();
        hasher.write_u64(self.hash);
        hasher.write_usize(partition);
        OriginKey {
            hash: hasher.finish(),
            partition: Some(partition),
            ..self
        }
    }
}

impl PartialEq for OriginKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.https == other.https
            && self.authority == other.authority
            && self.partition == other.partition
    }
}

impl Eq for OriginKey {}

impl std::hash::Hash for OriginKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands `OriginKey`'s precomputed hash to the map as it is.
#[derive(Default)]
struct PrecomputedHash(u64);

impl std::hash::Hasher for PrecomputedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached (`OriginKey` hashes as one u64); folds the bytes rather than panic.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

type OriginMap<V> = HashMap<OriginKey, V, std::hash::BuildHasherDefault<PrecomputedHash>>;

#[derive(Default)]
struct Pool {
    origins: OriginMap<Vec<Pooled>>,
    /// The connections in `origins`, all together (at most [`MAX_POOLED_PER_WORKER`]).
    pooled: usize,
    /// Origins that have answered with h2, per partition (one small entry per origin and
    /// caller; past `MAX_KNOWN_H2_ORIGINS` the ones with no connection are forgotten).
    h2_origins: OriginMap<H2Origin>,
    /// Origins that have answered with h2 to any partition, and the stream limit they last
    /// told (keyed without partition): a caller's first calls to such an origin wait for the
    /// one connection being opened for it, as its later calls do, rather than each dial.
    /// Forgotten whole past `MAX_KNOWN_H2_ORIGINS` (a hint only).
    h2_anywhere: OriginMap<usize>,
    sweeping: bool,
    /// The partitions' names (callers') and their numbers, never reused.
    partitions: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
}

/// What the pool remembers of an origin that speaks h2.
struct H2Origin {
    /// The vendor's stream limit as the last connection opened read it, refreshed from the
    /// pooled connections (whose SETTINGS keep theirs current) each time another is opened.
    limit: usize,
    /// While a call opens a connection to it: how to wait for that connection, and how many
    /// more calls may (the calls that find no connection with room meanwhile share that one
    /// instead of each dialling).
    opening: Option<(tokio::sync::watch::Receiver<()>, usize)>,
    /// Connections being opened to it now (each call's `Opening`), counted against
    /// `MAX_H2_PER_ORIGIN` with the pooled ones, so a burst cannot dial past it.
    dialling: usize,
}

struct Pooled {
    sender: Sender,
    addr: SocketAddr,
    /// When it was last in use: handed back (HTTP/1.1, when its response body ended) or taken.
    /// Idle time counts from here.
    since: Instant,
}

enum Sender {
    H1(crate::h1::Connection),
    H2(H2Conn),
}

/// An h2 connection: hyper's sender, and the calls on it against the vendor's limit.
#[derive(Clone)]
struct H2Conn {
    tx: hyper::client::conn::http2::SendRequest<ForwardBody>,
    streams: Arc<H2Streams>,
}

impl H2Conn {
    /// A stream of it for one call, counted until the call's response body is dropped.
    fn lease(&self) -> Leased {
        Leased::H2(self.tx.clone(), self.streams.reserve())
    }
}

/// A connection as a call takes it: an HTTP/1.1 one whole, or a stream of an h2 one.
enum Leased {
    H1(crate::h1::Connection),
    H2(
        hyper::client::conn::http2::SendRequest<ForwardBody>,
        StreamSlot,
    ),
}

impl Sender {
    /// Not closed by the vendor (an idle HTTP/1.1 connection is probed, see
    /// `h1::Connection::is_usable`).
    fn is_open(&mut self) -> bool {
        match self {
            Sender::H1(conn) => conn.is_usable(),
            Sender::H2(conn) => !conn.tx.is_closed(),
        }
    }

    /// The connection for one call: an HTTP/1.1 one itself, an h2 one with a stream counted.
    fn lease(self) -> Leased {
        match self {
            Sender::H1(conn) => Leased::H1(conn),
            Sender::H2(conn) => conn.lease(),
        }
    }
}

#[derive(PartialEq)]
enum State {
    /// Closed, or idle for longer than `idle_timeout`: to be dropped.
    Spent,
    /// An h2 connection at the vendor's stream limit: kept, but not taken.
    Full,
    Ready,
}

impl Pooled {
    /// Where the connection stands at `now`. An h2 connection is idle only while no call runs
    /// on it, from the later of its last call's end and the last take.
    fn state(&mut self, now: Instant, idle_timeout: Duration) -> State {
        if !self.sender.is_open() {
            return State::Spent;
        }
        // Retired: it ends once the calls on it have (they hold senders of their own).
        if matches!(&self.sender, Sender::H2(conn) if conn.streams.worn()) {
            return State::Spent;
        }
        let idle_since = match &self.sender {
            Sender::H1(_) => Some(self.since),
            Sender::H2(conn) if conn.streams.active() > 0 => None,
            Sender::H2(conn) => Some(
                conn.streams
                    .idle_since()
                    .map_or(self.since, |ended| ended.max(self.since)),
            ),
        };
        if idle_since.is_some_and(|since| now.saturating_duration_since(since) > idle_timeout) {
            return State::Spent;
        }
        match &self.sender {
            Sender::H2(conn) if !conn.streams.has_room() => State::Full,
            _ => State::Ready,
        }
    }
}

impl Pool {
    /// Remembers `key` as speaking h2 with the stream limit `limit`; past
    /// `MAX_KNOWN_H2_ORIGINS`, the origins with no connection and no call opening one are
    /// forgotten first.
    fn know_h2(&mut self, key: &OriginKey, limit: usize) {
        if let Some(origin) = self.h2_origins.get_mut(key) {
            origin.limit = limit;
            return;
        }
        if self.h2_origins.len() >= MAX_KNOWN_H2_ORIGINS {
            let Pool {
                origins,
                h2_origins,
                ..
            } = self;
            h2_origins.retain(|key, origin| {
                origin.opening.is_some() || origin.dialling > 0 || origins.contains_key(key)
            });
        }
        self.h2_origins.insert(
            key.clone(),
            H2Origin {
                limit,
                opening: None,
                dialling: 0,
            },
        );
    }

    /// The number of the partition named `name`.
    fn partition(&mut self, name: &str) -> usize {
        if let Some(&number) = self.partitions.get(name) {
            return number;
        }
        let number = self.partitions.len();
        self.partitions.insert(name.into(), number);
        number
    }

    /// A ready connection to `key`: an HTTP/1.1 one leaves the stack, an h2 one with room is
    /// shared (a stream of it counted for the call). Closed connections and ones idle longer
    /// than `idle_timeout` are dropped on the way.
    fn take(&mut self, key: &OriginKey, idle_timeout: Duration) -> Option<(Leased, SocketAddr)> {
        let conns = self.origins.get_mut(key)?;
        let now = Instant::now();
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            match conns[i].state(now, idle_timeout) {
                State::Spent => {
                    conns.swap_remove(i);
                    self.pooled -= 1;
                    continue;
                }
                State::Full => continue,
                State::Ready => conns[i].since = now,
            }
            return Some(match &conns[i].sender {
                Sender::H2(conn) => (conn.lease(), conns[i].addr),
                Sender::H1(_) => {
                    let pooled = conns.swap_remove(i);
                    self.pooled -= 1;
                    (pooled.sender.lease(), pooled.addr)
                }
            });
        }
        // Every h2 connection is full. Up to `MAX_H2_PER_ORIGIN` of them, those being opened
        // counted, the call opens another; past it, it waits for a stream in the least loaded.
        let h2 = || {
            conns.iter().filter_map(|pooled| match &pooled.sender {
                Sender::H2(conn) => Some((conn, pooled.addr)),
                Sender::H1(_) => None,
            })
        };
        let dialling = self.h2_origins.get(key).map_or(0, |origin| origin.dialling);
        if h2().count() + dialling < MAX_H2_PER_ORIGIN {
            return None;
        }
        let (conn, addr) = h2().min_by_key(|(conn, _)| conn.streams.active())?;
        Some((conn.lease(), addr))
    }

    /// Pools `sender`. An h2 connection is kept beside the others when calls waited for it
    /// (`waited_for`), or when none of them has room: when calls to an origin not yet known as
    /// h2 dialled at once, the first is kept and the others end with their calls.
    fn put(&mut self, key: &OriginKey, sender: Sender, addr: SocketAddr, waited_for: bool) {
        // (An h2 connection calls wait for is pooled all the same: they were told it would be.)
        if self.pooled >= MAX_POOLED_PER_WORKER && !(waited_for && matches!(sender, Sender::H2(_)))
        {
            return;
        }
        let conns = match self.origins.get_mut(key) {
            Some(conns) => conns,
            None => self.origins.entry(key.clone()).or_default(),
        };
        let shared_h2 = !waited_for
            && matches!(sender, Sender::H2(_))
            && conns.iter().any(|pooled| {
                matches!(&pooled.sender, Sender::H2(conn)
                    if !conn.tx.is_closed() && conn.streams.has_room() && !conn.streams.worn())
            });
        if conns.len() < MAX_IDLE_PER_ORIGIN && !shared_h2 {
            conns.push(Pooled {
                sender,
                addr,
                since: Instant::now(),
            });
            self.pooled += 1;
        } else if conns.is_empty() {
            // (An entry made for nothing.)
            self.origins.remove(key);
        }
    }

    /// Drops the connections that closed or idled out; answers the HTTP/1.1 ones among them, to
    /// be closed in order outside the lock (an h2 connection's task closes it once its sender is
    /// dropped: GOAWAY, then the same shutdown).
    fn sweep(&mut self, idle_timeout: Duration) -> Vec<crate::h1::Connection> {
        let now = Instant::now();
        let mut spent = Vec::new();
        let mut removed = 0;
        self.origins.retain(|_, conns| {
            let gone = conns.extract_if(.., |conn| conn.state(now, idle_timeout) == State::Spent);
            spent.extend(gone.filter_map(|pooled| {
                removed += 1;
                match pooled.sender {
                    Sender::H1(conn) => Some(conn),
                    Sender::H2(_) => None,
                }
            }));
            !conns.is_empty()
        });
        self.pooled -= removed;
        spent
    }
}

impl UpstreamClient {
    /// Whether both are one client (clones of it), with one guard, TLS setup and pool.
    pub fn same(&self, other: &UpstreamClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl UpstreamClient {
    /// The SSRF guard every dial of this client resolves and checks with.
    pub fn guard(&self) -> &Guard {
        &self.inner.guard
    }

    /// Sends `request` (absolute URI) on this thread's pool; answers the response and the
    /// address it came from (returned beside it, not in its extensions: that would allocate).
    pub fn request(
        &self,
        request: http::Request<ForwardBody>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, SocketAddr), UpstreamError>>
           + Send
           + '_ {
        self.send(request, None)
    }

    /// [`UpstreamClient::request`] on connections kept to `partition` (a caller's name): none is
    /// shared with a call of another partition ([`UpstreamClient::send`]).
    pub async fn request_for(
        &self,
        request: http::Request<ForwardBody>,
        partition: Arc<str>,
    ) -> Result<(http::Response<UpstreamBody>, SocketAddr), UpstreamError> {
        self.send(request, Some(&partition)).await
    }

    /// Sends a WebSocket handshake (`request`: absolute URI, its upgrade headers set) on a
    /// connection of its own, never pooled: dialled through the SSRF guard like any other, TLS
    /// offering only http/1.1. Answers the vendor's response, which on `101` carries the
    /// connection ([`hyper::upgrade::on`]), and the address it came from.
    pub async fn handshake(
        &self,
        request: http::Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Result<(http::Response<Incoming>, SocketAddr), UpstreamError> {
        let OriginKey {
            https, authority, ..
        } = OriginKey::of(request.uri())?;
        if !https && !self.inner.allow_plaintext {
            return Err(UpstreamError::Plaintext(authority.host().to_string()));
        }
        let (host, port) = (authority.host(), port_of(https, &authority));
        let name = server_name(https, host)?;
        let (stream, addr) = dial(
            &self.inner.guard,
            host,
            port,
            self.inner.connect_timeout,
            None,
        )
        .await?;
        let io = match name {
            Some(name) => {
                let tls = tls_to(&self.inner.tls_h1, name, stream, host).await?;
                crate::h1::Io::Tls(Box::new(tls))
            }
            None => crate::h1::Io::Plain(stream),
        };
        let failed = |error| UpstreamError::WebSocket { error, addr };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(failed)?;
        // Driven until the vendor's answer ends, or its connection is handed over on `101`.
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        // Origin-form on the wire: the connection is the vendor's own.
        let (mut parts, body) = request.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |target| Uri::from(target.clone()));
        let response = sender
            .send_request(http::Request::from_parts(parts, body))
            .await
            .map_err(failed)?;
        Ok((response, addr))
    }

    /// [`UpstreamClient::request`] (`partition` `None`: Postern's own requests) or
    /// [`UpstreamClient::request_for`]: a caller's calls go on connections kept to it
    /// (`partition`, its name), HTTP/1.1 and h2 alike, none shared with another caller's.
    /// - HTTP/1.1: a vendor's stray answer puts a connection one answer behind, and a host may
    ///   tie state to a connection (NTLM or Negotiate authentication does), which would let the
    ///   next caller on it act as the first.
    /// - h2: a connection's fate is shared by its streams. A caller that stops reading an answer
    ///   sent in many small DATA frames leaves them buffered in the h2 crate, whose budget for
    ///   such frames (half the connection window) then ends the connection with a GOAWAY,
    ///   failing every call on it; a vendor's GOAWAY for one caller's requests ends the others'.
    ///
    /// Not an `async fn` but an `async move` block, which keeps the request once in its future
    /// (an `async fn` keeps each argument twice).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send<'a>(
        &'a self,
        mut request: http::Request<ForwardBody>,
        partition: Option<&'a str>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, SocketAddr), UpstreamError>>
           + Send
           + 'a {
        async move {
            let key = OriginKey::of(request.uri())?;
            let pool = self.pool();
            let key = match partition {
                None => key,
                Some(name) => {
                    let partition = lock(pool).partition(name);
                    key.in_partition(partition)
                }
            };
            // Set once an attempt this call waited for failed: it then dials itself, at once, like
            // every other call that waited (a down vendor must not make them fail one by one).
            let mut dial_now = false;
            // Set once a request a pooled connection dropped unanswered goes again: on a new
            // connection, and only once.
            let mut resent = false;
            loop {
                let (pooled, opening) = {
                    let mut locked = lock(pool);
                    let taken = match resent {
                        true => None,
                        false => locked.take(&key, self.inner.idle_timeout),
                    };
                    match taken {
                        Some(pooled) => (Some(pooled), None),
                        None if dial_now || resent => (None, None),
                        None => match locked.h2_origins.get_mut(&key) {
                            // Room is left on the connection being opened, or the origin's
                            // connections are at `MAX_H2_PER_ORIGIN`: wait for it, then take
                            // one (past the cap, the least loaded).
                            Some(H2Origin {
                                opening: Some((wait, room)),
                                dialling,
                                ..
                            }) if *room > 0 || *dialling >= MAX_H2_PER_ORIGIN => {
                                let took = *room > 0;
                                *room = room.saturating_sub(1);
                                let claim = RoomClaim {
                                    pool,
                                    key: &key,
                                    wait: wait.clone(),
                                    took,
                                };
                                (None, Some(claim))
                            }
                            _ => (None, None),
                        },
                    }
                };
                if let Some(claim) = opening {
                    // Another call is opening this h2 origin's connection: take it once it is up
                    // (the value changes); if that attempt failed (the sender is gone), dial.
                    dial_now = claim.settled().await.is_err();
                    continue;
                }
                let fresh = pooled.is_none();
                let (sender, addr) = match pooled {
                    Some(pooled) => pooled,
                    // Boxed: the TLS and h2 handshakes would otherwise make every call's future
                    // (and each move of it) kilobytes larger.
                    None => Box::pin(self.connect(&key, pool, partition)).await?,
                };
                let sent = match sender {
                    Leased::H1(conn) => {
                        to_origin_form(&mut request, &key)?;
                        let checkin = Checkin {
                            pool: pool.clone(),
                            key: key.clone(),
                            addr,
                        };
                        match crate::h1::send(conn, request, checkin, !fresh).await {
                            Ok(response) => return Ok((response.map(UpstreamBody::H1), addr)),
                            // The pooled connection took nothing: once more, on the next one.
                            Err(crate::h1::SendError::Unsent(unsent)) => {
                                request = *unsent;
                                continue;
                            }
                            // Only a reused connection drops a request so; the resend dials.
                            Err(crate::h1::SendError::Dropped(dropped)) => {
                                request = *dropped;
                                resent = true;
                                continue;
                            }
                            Err(crate::h1::SendError::Failed(error)) => {
                                return Err(UpstreamError::H1 { error, addr })
                            }
                        }
                    }
                    Leased::H2(mut tx, slot) => {
                        to_absolute_form(&mut request, &key)?;
                        length_from_body(&mut request);
                        let unanswered = slot.unanswered();
                        let upload = request.body().state().clone();
                        let sent = tx.try_send_request(request).await;
                        let slot = unanswered.answered();
                        // A stream of a connection still open failed: reset by Postern (the
                        // caller's body refused as it streamed) or by the vendor.
                        if sent.is_err() && !tx.is_closed() {
                            slot.failed();
                        }
                        sent.map(|response| {
                            response.map(|body| UpstreamBody::H2(body, slot, upload))
                        })
                    }
                };
                match sent {
                    Ok(response) => return Ok((response, addr)),
                    // Refused before a byte was written: the pooled connection had closed. Once more,
                    // on the next one (a new connection's refusal is final).
                    Err(mut refused) => match refused.take_message() {
                        Some(unsent) if !fresh => request = unsent,
                        _ => {
                            return Err(UpstreamError::H2 {
                                error: refused.into_error(),
                                addr,
                            })
                        }
                    },
                }
            }
        }
    }

    fn pool(&self) -> &Arc<Mutex<Pool>> {
        self.inner.pools.get_or_init(Default::default)
    }

    /// Dials `key` through the SSRF guard, negotiates TLS (ALPN h2 or http/1.1) and starts the
    /// connection's task on this thread's runtime.
    /// `partition`: the caller's name the call was sent for, whose share of the guard's lookups
    /// the dial's takes ([`dial`]).
    async fn connect(
        &self,
        key: &OriginKey,
        pool: &Arc<Mutex<Pool>>,
        partition: Option<&str>,
    ) -> Result<(Leased, SocketAddr), UpstreamError> {
        let OriginKey {
            https, authority, ..
        } = key;
        if !https && !self.inner.allow_plaintext {
            return Err(UpstreamError::Plaintext(authority.host().to_string()));
        }
        // An origin known to speak h2: the calls that come meanwhile wait for this connection.
        // (Declared before `locked` below, so it is dropped after the lock is released.)
        let opening = {
            let mut locked = lock(pool);
            // Known as h2 through another partition: known for this one too.
            if key.partition.is_some() && !locked.h2_origins.contains_key(key) {
                if let Some(&limit) = locked.h2_anywhere.get(&key.without_partition()) {
                    locked.know_h2(key, limit);
                }
            }
            let Pool {
                origins,
                h2_origins,
                ..
            } = &mut *locked;
            h2_origins.get_mut(key).map(|origin| {
                // The vendor's limit as its newest pooled connection last heard it.
                let pooled = origins.get(key).into_iter().flatten().rev();
                if let Some(limit) = pooled
                    .filter_map(|pooled| match &pooled.sender {
                        Sender::H2(conn) => Some(conn.streams.limit()),
                        Sender::H1(_) => None,
                    })
                    .next()
                {
                    origin.limit = limit;
                }
                let (done, wait) = tokio::sync::watch::channel(());
                // This call takes one stream of it; the rest is room for others to wait for.
                let room = origin.limit.max(1) - 1;
                origin.opening = Some((wait.clone(), room));
                origin.dialling += 1;
                Opening {
                    pool: pool.clone(),
                    key: key.clone(),
                    done,
                    wait,
                    room,
                    limit: origin.limit,
                }
            })
        };
        let host = authority.host();
        let port = port_of(*https, authority);
        let name = server_name(*https, host)?;
        let (stream, addr) = dial(
            &self.inner.guard,
            host,
            port,
            self.inner.connect_timeout,
            partition,
        )
        .await?;
        let sender = if let Some(name) = name {
            let tls = tls_to(&self.inner.tls, name, stream, host).await?;
            match tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                // Used once the vendor's SETTINGS are read: a stream past its limit sent before
                // that would be refused (REFUSED_STREAM), and hyper does not send it again.
                true => {
                    let assumed = opening.as_ref().map_or(usize::MAX, |opening| opening.limit);
                    h2_handshake(tls, assumed, self.inner.connect_timeout).await?
                }
                false => Sender::H1(crate::h1::Connection::new(crate::h1::Io::Tls(Box::new(
                    tls,
                )))),
            }
        } else {
            Sender::H1(crate::h1::Connection::new(crate::h1::Io::Plain(stream)))
        };
        let mut locked = lock(pool);
        if !locked.sweeping {
            locked.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(pool), self.inner.idle_timeout));
        }
        match &sender {
            Sender::H2(conn) => {
                let limit = conn.streams.limit();
                locked.know_h2(key, limit);
                if locked.h2_anywhere.len() >= MAX_KNOWN_H2_ORIGINS {
                    locked.h2_anywhere.clear();
                }
                locked.h2_anywhere.insert(key.without_partition(), limit);
                // Calls waited for it if they took room from its opening (which another opening
                // replaces only once its room has run out, or after a failed one).
                let waited_for = opening.as_ref().is_some_and(|mine| {
                    match locked.h2_origins.get(key).and_then(|o| o.opening.as_ref()) {
                        Some((wait, room)) if wait.same_channel(&mine.wait) => *room < mine.room,
                        _ => mine.room > 0,
                    }
                });
                locked.put(key, Sender::H2(conn.clone()), addr, waited_for);
                if let Some(opening) = &opening {
                    opening.done.send_replace(());
                }
            }
            Sender::H1(_) => {
                // No longer h2, unless other calls are opening connections to it still (their
                // `Opening`s count down `dialling` in this entry).
                let ours = usize::from(opening.is_some());
                if locked
                    .h2_origins
                    .get(key)
                    .is_some_and(|origin| origin.dialling <= ours)
                {
                    locked.h2_origins.remove(key);
                }
            }
        }
        Ok((sender.lease(), addr))
    }
}

/// A connection being opened to a known h2 origin. Dropped when the attempt ends (the connection
/// is in the pool by then, or the attempt failed or was cancelled): the waiting calls wake.
struct Opening {
    pool: Arc<Mutex<Pool>>,
    key: OriginKey,
    /// Changed when the connection is in the pool; dropped (waiters see an error) otherwise.
    done: tokio::sync::watch::Sender<()>,
    /// This attempt's receiver, to clear the origin's slot only if it is still this attempt's.
    wait: tokio::sync::watch::Receiver<()>,
    /// The room it offered others to wait for, and the stream limit it was offered for.
    room: usize,
    limit: usize,
}

impl Drop for Opening {
    fn drop(&mut self) {
        let mut locked = lock(&self.pool);
        if let Some(origin) = locked.h2_origins.get_mut(&self.key) {
            origin.dialling = origin.dialling.saturating_sub(1);
            if origin
                .opening
                .as_ref()
                .is_some_and(|(wait, _)| wait.same_channel(&self.wait))
            {
                origin.opening = None;
            }
        }
    }
}

/// A call's place among those waiting for a connection being opened (the room it took from the
/// opening, if any). A call cancelled while it waits (its caller gone, its deadline passed) gives
/// that room back, so the calls that come after it wait for the connection instead of each
/// dialling one.
struct RoomClaim<'a> {
    pool: &'a Mutex<Pool>,
    key: &'a OriginKey,
    wait: tokio::sync::watch::Receiver<()>,
    /// Room was taken (past `MAX_H2_PER_ORIGIN`, calls wait without taking any).
    took: bool,
}

impl RoomClaim<'_> {
    /// Waits for the opening's end: `Ok` once its connection is in the pool, `Err` if it failed.
    /// The room is spent either way.
    async fn settled(mut self) -> Result<(), tokio::sync::watch::error::RecvError> {
        let settled = self.wait.changed().await;
        self.took = false;
        settled
    }
}

impl Drop for RoomClaim<'_> {
    fn drop(&mut self) {
        if !self.took {
            return;
        }
        if let Some(H2Origin {
            opening: Some((wait, room)),
            ..
        }) = lock(self.pool).h2_origins.get_mut(self.key)
        {
            if wait.same_channel(&self.wait) {
                *room += 1;
            }
        }
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    // A panic while holding the lock leaves the pool consistent (every step is a push or a
    // remove), so a poisoned lock is taken as is.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn sweep(pool: std::sync::Weak<Mutex<Pool>>, idle_timeout: Duration) {
    // If this task is dropped (its runtime shut down), the next connection starts another.
    struct Sweeping(std::sync::Weak<Mutex<Pool>>);
    impl Drop for Sweeping {
        fn drop(&mut self) {
            if let Some(pool) = self.0.upgrade() {
                lock(&pool).sweeping = false;
            }
        }
    }
    let _sweeping = Sweeping(pool.clone());
    loop {
        tokio::time::sleep(idle_timeout.max(Duration::from_secs(1))).await;
        let spent = match pool.upgrade() {
            Some(pool) => lock(&pool).sweep(idle_timeout),
            None => return,
        };
        for conn in spent {
            // Over TLS, `close_notify` goes into the socket's send buffer: it does not wait on
            // the vendor, and the bound is only against a full buffer.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        }
    }
}

/// Starts an h2 connection over `io`; its task runs on this thread's runtime until every sender
/// is gone or the vendor closes it. Answers once the vendor's SETTINGS have been read (or the
/// connection ended), or after `settle` without them, the stream limit then assumed to be
/// `limit`. Its flow-control windows are `H2_STREAM_WINDOW` per stream and
/// `H2_CONNECTION_WINDOW` for the connection (`h2streams.rs` says why): streams whose callers
/// do not read them cannot hold the connection's window.
async fn h2_handshake<T>(io: T, limit: usize, settle: Duration) -> Result<Sender, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let streams = H2Streams::new(limit);
    let io = TokioIo::new(SettingsWatch::new(io, streams.clone()));
    let (tx, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake(io)
        .await?;
    let ended = streams.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream h2 connection ended");
        }
        ended.ended();
    });
    // The vendor sends its SETTINGS first; the connection's task reads them. A vendor that
    // does not is left to hyper, which fails the connection (the limit stays as assumed).
    let _ = tokio::time::timeout(settle, streams.settled()).await;
    Ok(Sender::H2(H2Conn { tx, streams }))
}

/// Where an HTTP/1.1 connection goes back when its response body has ended cleanly.
pub(crate) struct Checkin {
    pool: Arc<Mutex<Pool>>,
    key: OriginKey,
    addr: SocketAddr,
}

impl Checkin {
    pub(crate) fn put(self, conn: crate::h1::Connection) {
        lock(&self.pool).put(&self.key, Sender::H1(conn), self.addr, false);
    }
}

/// A vendor's response body: read by Postern's HTTP/1.1 client, or hyper's h2 stream.
pub enum UpstreamBody {
    H1(crate::h1::ResponseBody),
    /// The stream's slot is counted on its connection until the body is dropped; a stream that
    /// fails, or is dropped before its end (hyper then resets it: the caller left, the answer
    /// passed its limit), counts as failed ([`StreamSlot::failed`]), as one that fails before
    /// its head does. Dropped, it stops what is left of its request's upload
    /// ([`crate::body::RequestBodyState::answered`]).
    H2(Incoming, StreamSlot, Arc<crate::body::RequestBodyState>),
    /// The answer to a WebSocket handshake other than `101`, on the handshake's own connection
    /// ([`UpstreamClient::handshake`]).
    Handshake(Incoming),
    /// No body: what an answer that has none (to `HEAD`, a `204`, a `304`) is given in place of
    /// any DATA or trailers an HTTP/2 vendor sent with it anyway.
    Empty,
}

impl UpstreamBody {
    /// An answer that can have no content ([`crate::body::bodiless`]) passes on none: Postern's
    /// HTTP/1.1 client reads none for it, but the h2 crate takes DATA on a `204` or `304` and
    /// trailers after any of them, which no echo filter reads (there is no body to filter).
    pub(crate) fn without_content(self) -> UpstreamBody {
        if matches!(self, UpstreamBody::H1(_)) {
            self
        } else {
            // Dropped here: an HTTP/2 stream with DATA unread counts as failed, and is reset.
            UpstreamBody::Empty
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let UpstreamBody::H2(body, slot, upload) = self {
            upload.answered();
            // Read to its declared length, an answer has ended whatever frame brings the
            // stream's end (hyper's HTTP/1.1 server drops a body at its last byte): not a reset.
            if !http_body::Body::is_end_stream(body)
                && http_body::Body::size_hint(body).exact() != Some(0)
            {
                slot.failed();
            }
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::H1(_) => "UpstreamBody::H1",
            UpstreamBody::H2(..) => "UpstreamBody::H2",
            UpstreamBody::Handshake(_) => "UpstreamBody::Handshake",
            UpstreamBody::Empty => "UpstreamBody::Empty",
        })
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::Vendor),
            UpstreamBody::H2(body, ..) | UpstreamBody::Handshake(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::Hyper),
            UpstreamBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::H2(body, ..) | UpstreamBody::Handshake(body) => body.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::H2(body, ..) | UpstreamBody::Handshake(body) => body.size_hint(),
            UpstreamBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// The `Host` header for `authority` (one without user information: [`OriginKey::of`] and the
/// runtime's upstream targets make none): host, and port when not the scheme's default.
pub(crate) fn host_header(https: bool, authority: &Authority) -> Option<http::HeaderValue> {
    let default_port = if https { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => http::HeaderValue::from_str(authority.as_str()),
        _ => http::HeaderValue::from_str(authority.host()),
    }
    .ok()
}

/// HTTP/1.1 sends the path and query, and the origin in `Host` (without a default port).
fn to_origin_form(
    request: &mut http::Request<ForwardBody>,
    OriginKey {
        https, authority, ..
    }: &OriginKey,
) -> Result<(), UpstreamError> {
    if !request.headers().contains_key(http::header::HOST) {
        let value = host_header(*https, authority).ok_or(UpstreamError::NotAbsolute)?;
        request.headers_mut().insert(http::header::HOST, value);
    }
    if request.uri().scheme().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
    Ok(())
}

/// The `content-length` an h2 request goes with: the body's own length where it is known, as
/// HTTP/1.1's head is framed from the body (`h1::write_head`). h2 sends the field as it stands,
/// and a body that is not what the caller declared (masked and encoded again) would be reset
/// by the vendor for it.
fn length_from_body(request: &mut http::Request<ForwardBody>) {
    use http_body::Body as _;
    let Some(exact) = request.body().size_hint().exact() else {
        return;
    };
    if crate::h1::content_length(request.headers()).is_some_and(|declared| declared != exact) {
        request
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(exact));
    }
}

/// h2 sends the scheme and authority as pseudo-headers: the URI must be absolute, and `Host`
/// goes (`:authority` carries it; RFC 9113 §8.3.1 forbids a different one, and user
/// information in it: the key's authority has none).
fn to_absolute_form(
    request: &mut http::Request<ForwardBody>,
    OriginKey {
        https, authority, ..
    }: &OriginKey,
) -> Result<(), UpstreamError> {
    request.headers_mut().remove(http::header::HOST);
    let uri = request.uri();
    if uri.scheme().is_none() || uri.authority().map(Authority::as_str) != Some(authority.as_str())
    {
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(if *https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(authority.clone());
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpstreamError::NotAbsolute)?;
    }
    Ok(())
}

/// Settings for one integration's pool.
pub struct UpstreamOptions<'a> {
    /// The SSRF guard every dial resolves and checks with.
    pub guard: Guard,
    pub allow_plaintext: bool,
    /// `ca_file`'s path (for messages) and the contents read from it.
    pub ca_file: Option<(&'a Path, &'a [u8])>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Client certificate chain and key presented to the vendor (mTLS).
    pub client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
}

/// The integration's `ca_file` cannot be used (unreadable, not PEM, not a CA certificate):
/// told apart from the pool's other set-up errors so the config check can point at the key.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct CaFileError(pub anyhow::Error);

/// Builds the pool for one integration.
pub fn build_client(options: UpstreamOptions<'_>) -> anyhow::Result<UpstreamClient> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((ca_file, contents)) = options.ca_file {
        let certificates = crate::tls::certificates_in(ca_file, contents).map_err(CaFileError)?;
        for cert in certificates {
            roots.add(cert).map_err(|error| {
                CaFileError(anyhow::anyhow!("ca_file {}: {error}", ca_file.display()))
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| anyhow::anyhow!("TLS setup: {error}"))?
        .with_root_certificates(roots);
    let tls = match options.client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| anyhow::anyhow!("client_certificate: {error}"))?,
        None => builder.with_no_client_auth(),
    };
    let mut tls = tls;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls_h1 = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(UpstreamClient {
        inner: Arc::new(ClientInner {
            guard: options.guard,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            tls_h1,
            allow_plaintext: options.allow_plaintext,
            connect_timeout: options.connect_timeout,
            idle_timeout: options.idle_timeout,
            pools: crate::workers::PerWorker::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::RequestBodyState;

    /// A dial that reaches one of Postern's own sockets is refused once connected, though the
    /// guard let its address through: by the listener's own address, and for a listener bound
    /// to every address, by a loopback one. Another port of the same host is dialled.
    #[tokio::test]
    async fn a_dial_reaching_postern_itself_is_refused() {
        let own = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let everywhere = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let own_addr = own.local_addr().unwrap();
        let everywhere_port = everywhere.local_addr().unwrap().port();
        let guard = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]).with_own_listeners(
            std::sync::Arc::from(vec![own_addr, everywhere.local_addr().unwrap()]),
        );
        let timeout = Duration::from_secs(5);
        for (host, port) in [
            ("127.0.0.1", own_addr.port()),
            ("127.0.0.1", everywhere_port),
            ("127.0.0.2", everywhere_port),
        ] {
            match dial(&guard, host, port, timeout, None).await {
                Err(ConnectError::ReachesPostern { addr }) => assert_eq!(addr.port(), port),
                other => panic!("{host}:{port}: {other:?}"),
            }
        }
        let port = other.local_addr().unwrap().port();
        assert!(dial(&guard, "127.0.0.1", port, timeout, None).await.is_ok());
    }

    #[test]
    fn the_two_families_take_turns_starting_with_the_first_address_s() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let (v6a, v6b, v4a, v4b) = (
            addr("[2001:db8::1]:443"),
            addr("[2001:db8::2]:443"),
            addr("192.0.2.1:443"),
            addr("192.0.2.2:443"),
        );
        assert_eq!(
            families_in_turn(vec![v6a, v6b, v4a, v4b]),
            [v6a, v4a, v6b, v4b]
        );
        assert_eq!(families_in_turn(vec![v4a, v6a, v6b]), [v4a, v6a, v6b]);
        assert_eq!(families_in_turn(vec![v4a, v4b]), [v4a, v4b]);
        assert!(families_in_turn(Vec::new()).is_empty());
    }

    /// A loopback address whose connects hang (its listener's accept queue is full, so the
    /// kernel drops new SYNs), and what keeps it so.
    async fn swallowing_syns() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(connected) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            queued.push(connected.unwrap());
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        (addr, listener, queued)
    }

    /// Happy Eyeballs: an address that swallows SYNs holds a new connection for the attempt
    /// delay (250 ms), not for `connect_timeout`; one that refuses lets the next start at once;
    /// when every attempt fails, the error is the last one's (here a timeout).
    #[tokio::test]
    async fn the_first_address_to_connect_wins_and_a_silent_one_costs_the_attempt_delay() {
        let (silent, _listener, _queued) = swallowing_syns().await;
        let answering = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = answering.local_addr().unwrap();
        let refusing = {
            let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
            closed.local_addr().unwrap()
        };
        let ten_seconds = Duration::from_secs(10);

        let started = Instant::now();
        let (_stream, used) = connect_first(vec![silent, good], ten_seconds)
            .await
            .unwrap();
        assert_eq!(used, good);
        let took = started.elapsed();
        assert!(took >= ATTEMPT_DELAY, "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");

        let started = Instant::now();
        let (_stream, used) = connect_first(vec![refusing, good], ten_seconds)
            .await
            .unwrap();
        assert_eq!(used, good);
        assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());

        let error = connect_first(vec![refusing, silent], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::Timeout { addr, timeout_ms: 300 } if addr == silent),
            "{error:?}"
        );
        assert!(matches!(
            connect_first(Vec::new(), ten_seconds).await.unwrap_err(),
            ConnectError::NoAddress
        ));
    }

    #[test]
    fn origin_keys_are_one_origin_whatever_the_case() {
        let key = |https, authority: &str| OriginKey::new(https, authority.parse().unwrap());
        let mut map: OriginMap<u32> = OriginMap::default();
        map.insert(key(true, "API.Example.com:8443"), 1);
        map.insert(key(false, "api.example.com:8443"), 2);
        map.insert(key(true, "api.example.com:8444"), 3);
        // Longer than one eight-byte word, differing only past the first.
        map.insert(key(true, "api.example.org:8443"), 4);
        assert_eq!(map.get(&key(true, "api.example.COM:8443")), Some(&1));
        assert_eq!(map.get(&key(false, "Api.Example.Com:8443")), Some(&2));
        assert_eq!(map.get(&key(true, "api.example.com:8444")), Some(&3));
        assert_eq!(map.get(&key(true, "api.example.org:8443")), Some(&4));
        assert_eq!(map.get(&key(true, "api.example.com")), None);
        assert_eq!(map.len(), 4);
    }

    /// A plain HTTP/1.1 vendor on loopback that answers `per_connection` requests on each
    /// connection (keep-alive, no `Connection: close`) and then closes it. Counts connections;
    /// `closed` counts connections the client closed first.
    struct Vendor {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed_by_client: Arc<AtomicUsize>,
    }

    async fn vendor(per_connection: usize) -> Vendor {
        slow_vendor(per_connection, Duration::ZERO).await
    }

    /// Like `vendor`, but each body's second half follows its first after `pause`.
    async fn slow_vendor(per_connection: usize, pause: Duration) -> Vendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (count, closed) = (accepted.clone(), closed_by_client.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    while answered < per_connection {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let body = format!("{{\"n\":{answered}}}");
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            stream.write_all(head.as_bytes()).await.unwrap();
                            let (first, second) = body.split_at(body.len() / 2);
                            stream.write_all(first.as_bytes()).await.unwrap();
                            if !pause.is_zero() {
                                tokio::time::sleep(pause).await;
                            }
                            stream.write_all(second.as_bytes()).await.unwrap();
                            answered += 1;
                        }
                    }
                });
            }
        });
        Vendor {
            addr,
            accepted,
            closed_by_client,
        }
    }

    fn client(idle_timeout: Duration) -> UpstreamClient {
        client_with(idle_timeout, true)
    }

    fn client_with(idle_timeout: Duration, allow_plaintext: bool) -> UpstreamClient {
        build_client(UpstreamOptions {
            guard: postern_netguard::Guard::new(vec!["127.0.0.1/32".parse().unwrap()]),
            allow_plaintext,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            idle_timeout,
            client_auth: None,
        })
        .unwrap()
    }

    /// A bodiless request for `uri`.
    fn request(uri: &str) -> http::Request<ForwardBody> {
        let body = ForwardBody::full(Bytes::new(), Arc::new(RequestBodyState::default()));
        let mut request = http::Request::new(body);
        *request.uri_mut() = uri.parse().unwrap();
        request
    }

    async fn call(client: &UpstreamClient, addr: SocketAddr) -> String {
        let (response, from) = client
            .request(request(&format!("http://{addr}/v1/charges")))
            .await
            .expect("the vendor answers");
        assert_eq!(response.status(), 200);
        assert_eq!(from, addr);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Waits (bounded) until `counter` reaches `want`.
    async fn reaches(counter: &AtomicUsize, want: usize) -> bool {
        for _ in 0..500 {
            if counter.load(Ordering::SeqCst) >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn sequential_calls_share_one_connection() {
        let vendor = vendor(usize::MAX).await;
        let client = client(Duration::from_secs(60));
        for n in 0..5 {
            assert_eq!(call(&client, vendor.addr).await, format!("{{\"n\":{n}}}"));
        }
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
    }

    /// A caller's call takes no connection of Postern's own requests (an OAuth2 token
    /// request's, whose late answer must not reach a caller) nor of another caller's; its own
    /// it reuses.
    #[tokio::test]
    async fn a_callers_call_takes_only_its_own_connections() {
        let vendor = vendor(usize::MAX).await;
        let client = client(Duration::from_secs(60));
        let url = format!("http://{}/v1/charges", vendor.addr);
        for (partition, accepted) in [(None, 1), (Some("a"), 2), (Some("b"), 3), (Some("a"), 3)] {
            // Let the last connection's task see its body end (it is ready again then).
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (response, _) = client.send(request(&url), partition).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
            assert_eq!(
                vendor.accepted.load(Ordering::SeqCst),
                accepted,
                "{partition:?}"
            );
        }
    }

    /// Past `MAX_POOLED_PER_WORKER` (8 in unit tests) a connection is closed after its call
    /// instead of pooled: of twelve at once, eight are reused by the next twelve.
    #[tokio::test]
    async fn a_worker_pools_at_most_its_cap_of_connections() {
        let vendor = vendor(usize::MAX).await;
        let client = client(Duration::from_secs(60));
        for round in 1..=2 {
            let mut calls = tokio::task::JoinSet::new();
            let barrier = Arc::new(tokio::sync::Barrier::new(12));
            for _ in 0..12 {
                let (client, addr, barrier) = (client.clone(), vendor.addr, barrier.clone());
                calls.spawn(async move {
                    let (response, _) = client
                        .request(request(&format!("http://{addr}/v1/charges")))
                        .await
                        .unwrap();
                    // Every call holds its connection until all have one.
                    barrier.wait().await;
                    response.into_body().collect().await.unwrap();
                });
            }
            calls.join_all().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(lock(client.pool()).pooled, 8, "round {round}");
        }
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 12 + 4);
    }

    #[tokio::test]
    async fn concurrent_calls_open_a_connection_each_and_reuse_them() {
        let vendor = vendor(usize::MAX).await;
        let client = client(Duration::from_secs(60));
        for _ in 0..3 {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let (client, addr) = (client.clone(), vendor.addr);
                calls.spawn(async move { call(&client, addr).await });
            }
            assert_eq!(calls.join_all().await.len(), 4);
            // Let the connections' tasks see their bodies end (they are ready again then).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Four at once need four connections; the later rounds reuse them.
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_vendor_closed_is_not_reused() {
        let vendor = vendor(1).await;
        let client = client(Duration::from_secs(60));
        for n in 1..=3 {
            assert_eq!(call(&client, vendor.addr).await, "{\"n\":0}");
            assert_eq!(vendor.accepted.load(Ordering::SeqCst), n);
            // The vendor closes after its one answer; the client must notice, not fail.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_idle_timeout() {
        let vendor = vendor(usize::MAX).await;
        let client = client(Duration::from_millis(100));
        call(&client, vendor.addr).await;
        // The sweep runs every max(idle_timeout, 1 s); its first pass, ~1 s in, finds the
        // connection idle since its body ended and closes it.
        assert!(
            reaches(&vendor.closed_by_client, 1).await,
            "the idle connection was not closed"
        );
        // A later call dials afresh.
        call(&client, vendor.addr).await;
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_longer_than_idle_timeout_does_not_retire_its_connection() {
        // Each body takes 400 ms, longer than the 250 ms idle limit: the connection was busy,
        // not idle, so the next call reuses it.
        let vendor = slow_vendor(usize::MAX, Duration::from_millis(400)).await;
        let client = client(Duration::from_millis(250));
        call(&client, vendor.addr).await;
        call(&client, vendor.addr).await;
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn host_is_host_and_port_without_user_information() {
        let host = |uri: &str| {
            let mut request = request(uri);
            let key = OriginKey::of(request.uri()).unwrap();
            to_origin_form(&mut request, &key).unwrap();
            assert_eq!(request.uri().to_string(), "/token?a=1");
            request.headers()[http::header::HOST]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            host("https://id:secret@auth.example.com:8443/token?a=1"),
            "auth.example.com:8443"
        );
        assert_eq!(
            host("https://id:secret@auth.example.com:443/token?a=1"),
            "auth.example.com"
        );
        assert_eq!(host("http://127.0.0.1:80/token?a=1"), "127.0.0.1");
        assert_eq!(host("http://[::1]:8080/token?a=1"), "[::1]:8080");
    }

    /// Over h2 the URI's authority is sent as `:authority`: never with user information, and
    /// the pool keyed by the origin alone.
    #[test]
    fn h2_authority_is_the_origin_without_user_information() {
        let absolute = |uri: &str| {
            let mut request = request(uri);
            let key = OriginKey::of(request.uri()).unwrap();
            to_absolute_form(&mut request, &key).unwrap();
            request.uri().to_string()
        };
        assert_eq!(
            absolute("https://evil.example@api.example.com/v1/x?a=1"),
            "https://api.example.com/v1/x?a=1"
        );
        assert_eq!(
            absolute("https://id:secret@api.example.com:8443/v1/x"),
            "https://api.example.com:8443/v1/x"
        );
        assert_eq!(
            absolute("https://api.example.com/v1/x"),
            "https://api.example.com/v1/x"
        );
        let key = |uri: &str| OriginKey::of(&uri.parse().unwrap()).unwrap();
        assert!(key("https://a@api.example.com/") == key("https://api.example.com/"));
        assert!(key("http://api.example.com/") != key("https://api.example.com/"));
    }

    #[tokio::test]
    async fn a_broken_handshake_is_not_called_a_tls_error() {
        // A server that accepts and closes at once: the handshake fails, but not on TLS itself.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let error = client(Duration::from_secs(60))
            .request(request(&format!("https://{addr}/")))
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
    }

    #[tokio::test]
    async fn plaintext_is_refused_unless_allowed() {
        let vendor = vendor(usize::MAX).await;
        let error = client_with(Duration::from_secs(60), false)
            .request(request(&format!("http://{}/", vendor.addr)))
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Plaintext(_)), "{error}");
        assert_eq!(vendor.accepted.load(Ordering::SeqCst), 0);
        call(&client(Duration::from_secs(60)), vendor.addr).await;
    }
}
