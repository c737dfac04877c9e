//! The SSRF guard: Postern decides which upstream addresses it may dial.
//!
//! A gateway that calls third-party APIs on behalf of clients is a
//! server-side request forgery machine unless it refuses to talk to its own
//! network. In the spirit of Stripe's smokescreen, Postern never hands a
//! hostname to a connector that resolves it on its own. It resolves the host
//! here, classifies every address the resolver returned, and the proxy dials
//! only the addresses this crate handed back. Checking a name and then letting
//! something else resolve it again would reopen the gap that DNS rebinding
//! uses, so callers must connect to the returned [`SocketAddr`]s and nothing
//! else.
//!
//! The crate has two layers:
//!
//! * **Classification is pure (sans-IO).** [`classify`] maps an [`IpAddr`] to
//!   an [`AddressClass`], and [`Guard::check`] applies the operator's
//!   `allow_private_networks` to it. Neither touches the network, a clock or a
//!   file, so both are exhaustively table-tested.
//! * **[`Guard::resolve`] is the only IO.** It accepts IP literals (including
//!   the bracketed IPv6 form and the numeric IPv4 shorthands that the system
//!   resolver also accepts, such as `2130706433`, `0x7f.1` or `127.1`) without
//!   DNS, and otherwise asks the system resolver on a blocking thread, at most
//!   [`Lookups`] at once (or the [`Resolve`] it was given), on every
//!   call: an answer is never kept. If *any* address in the answer is denied, the
//!   whole resolution is refused, so a name that answers with one public and
//!   one private address cannot smuggle the private one past the guard.
//!
//! Policy in one sentence: only globally routable unicast addresses pass;
//! everything else passes only if an `allow_private_networks` entry contains
//! it. IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4, Teredo) are denied as their own class whatever address they
//! embed, because the path such a packet takes depends on translators we
//! cannot see.
//!
//! What this crate is not: it does not parse URLs, does not decide which
//! hosts a caller may reach (that is the policy engine's job), does not open
//! connections and does not cache DNS answers.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::IpNet;

/// What kind of address an IP is, as far as dialing it from a gateway goes.
///
/// Only [`AddressClass::Public`] is allowed by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `169.254.0.0/16` (including cloud metadata at `169.254.169.254`) and
    /// `fe80::/10`.
    LinkLocal,
    /// RFC 6598 carrier-grade NAT space, `100.64.0.0/10`.
    SharedCgnat,
    /// `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `255.255.255.255`.
    Broadcast,
    /// `::ffff:0:0/96`, whatever IPv4 address it embeds.
    Ipv4Mapped,
    /// `::/96`, the deprecated IPv4-compatible form (other than `::` and `::1`).
    Ipv4Compatible,
    /// `64:ff9b::/96` and `64:ff9b:1::/48`.
    Nat64,
    /// `2002::/16`.
    SixToFour,
    /// `2001::/32`.
    Teredo,
    /// Anything else that is not globally routable: `0.0.0.0/8`,
    /// `192.0.0.0/24`, the documentation and benchmarking ranges, `240.0.0.0/4`,
    /// `100::/64`, `2001:db8::/32`, the rest of `2001::/23`, site-local
    /// `fec0::/10`, and every IPv6 address outside `2000::/3`.
    Reserved,
}

impl AddressClass {
    /// Stable snake_case name, used in error messages, logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link_local",
            AddressClass::SharedCgnat => "shared_cgnat",
            AddressClass::UniqueLocal => "unique_local",
            AddressClass::Multicast => "multicast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Ipv4Mapped => "ipv4_mapped",
            AddressClass::Ipv4Compatible => "ipv4_compatible",
            AddressClass::Nat64 => "nat64",
            AddressClass::SixToFour => "6to4",
            AddressClass::Teredo => "teredo",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// Classifies an address. Pure: no IO, no configuration.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip == Ipv4Addr::UNSPECIFIED => AddressClass::Unspecified,
        _ if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        // "This network", RFC 1122; dialing it reaches the local host on Linux.
        (0, _, _) => AddressClass::Reserved,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (224..=239, _, _) => AddressClass::Multicast,
        // Class E, RFC 1112.
        (240..=255, _, _) => AddressClass::Reserved,
        // IETF protocol assignments (RFC 6890), TEST-NET-1/2/3 (RFC 5737),
        // benchmarking (RFC 2544), deprecated 6to4 relay anycast (RFC 7526).
        (192, 0, 0)
        | (192, 0, 2)
        | (198, 51, 100)
        | (203, 0, 113)
        | (198, 18..=19, _)
        | (192, 88, 99) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    // True when the first `prefix_len` bits of `ip` equal those of `prefix`.
    let within = |prefix: Ipv6Addr, prefix_len: u32| {
        let shift = 128 - prefix_len;
        bits >> shift == u128::from(prefix) >> shift
    };
    if ip == Ipv6Addr::UNSPECIFIED {
        AddressClass::Unspecified
    } else if ip == Ipv6Addr::LOCALHOST {
        AddressClass::Loopback
    } else if within(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        AddressClass::Ipv4Mapped
    } else if within(Ipv6Addr::UNSPECIFIED, 96) {
        AddressClass::Ipv4Compatible
    } else if within(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || within(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48)
    {
        AddressClass::Nat64
    } else if within(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8) {
        AddressClass::Multicast
    } else if within(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
        AddressClass::LinkLocal
    } else if within(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7) {
        AddressClass::UniqueLocal
    } else if within(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        AddressClass::SixToFour
    } else if within(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        AddressClass::Teredo
    } else if within(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        // IETF protocol assignments (RFC 2928): ORCHID, benchmarking, AMT, ...
        && !within(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23)
        // Documentation, RFC 3849 and RFC 9637.
        && !within(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32)
        && !within(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20)
    {
        AddressClass::Public
    } else {
        // Outside global unicast 2000::/3: discard 100::/64, site-local
        // fec0::/10, IPv4-translated ::ffff:0:0:0/96, SRv6 5f00::/16, and
        // space IANA has not allocated.
        AddressClass::Reserved
    }
}

/// The IPv4 address an IPv4-embedding IPv6 address reaches: the last 32 bits of
/// `::ffff:0:0/96`, `::/96` and the NAT64 well-known prefix `64:ff9b::/96`
/// (RFC 6052), bits 16–48 of 6to4's `2002::/16` (RFC 3056). `None` for every
/// other address (the NAT64 local-use prefix's layout depends on its length).
/// `class` is the address's own ([`classify`]).
fn embedded_ipv4(ip: IpAddr, class: AddressClass) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let bits = u128::from(v6);
    match class {
        AddressClass::Ipv4Mapped | AddressClass::Ipv4Compatible => {
            Some(Ipv4Addr::from(bits as u32))
        }
        AddressClass::Nat64 if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 => {
            Some(Ipv4Addr::from(bits as u32))
        }
        AddressClass::SixToFour => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

/// An address the guard refused to let Postern dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub ip: IpAddr,
    pub class: AddressClass,
    /// Refused because a denied network holds it ([`Guard::with_denied_networks`]), whatever
    /// its class; otherwise for its class.
    pub listed: bool,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.listed {
            write!(f, "address {} is in a denied network", self.ip)
        } else {
            write!(
                f,
                "address {} is {} and not in allow_private_networks",
                self.ip,
                self.class.as_str()
            )
        }
    }
}

impl std::error::Error for Denied {}

/// Why [`Guard::resolve`] produced no addresses to dial.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The host is, or resolved to, an address the guard refuses.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The host is malformed, the resolver failed, or it returned nothing.
    #[error("could not resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    /// The guard's [`Lookups`] are all in flight: the name was not looked up.
    #[error("{limit} name lookups are in flight already; try again shortly")]
    Busy { limit: usize },
    /// The caller's share of the guard's [`Lookups`] is in flight ([`Lookups::per_caller`]):
    /// the name was not looked up.
    #[error(
        "this caller has {limit} name lookups in flight already, its share; try again shortly"
    )]
    CallerBusy { limit: usize },
}

/// The system resolver's lookups a set of [`Guard`]s may have in flight at once.
///
/// `getaddrinfo` blocks, so each lookup holds one of tokio's blocking threads until the name
/// server answers or glibc gives up (up to half a minute), and it runs to its end even when
/// the call that asked has gone: a caller that makes Postern look up names whose server never
/// answers (its own zone, a new name each time) would otherwise fill the blocking pool and
/// queue every other lookup, and every body scan, behind them. A lookup takes a slot before it
/// starts and gives it back only when `getaddrinfo` returns; with none free, the guard answers
/// [`GuardError::Busy`] at once. A custom [`Resolve`] is not counted (it is async).
///
/// With [`Lookups::per_caller`], each caller named to [`Guard::resolve_for`] also has a share
/// of the slots, held as long: one caller that fills its share is answered
/// [`GuardError::CallerBusy`] while the others still look names up.
#[derive(Clone)]
pub struct Lookups {
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
    blocking: BlockingLookup,
    /// `None`: callers are not bounded apart (nothing is counted per caller).
    shares: Option<Arc<Shares>>,
}

/// Each caller's share of a [`Lookups`]' slots.
struct Shares {
    limit: usize,
    /// Lookups in flight by caller. Each of them holds a slot of the pool too, so there are
    /// never more entries than the pool has slots.
    held: PerCaller,
}

/// Places held by key, each given back when its [`Place`] is dropped: a lookup in flight
/// here by caller, a tunnel open in the gateway's forward proxy by caller, a connection open
/// on its listener by client address. A key holding none has no entry, so the map is never
/// larger than the places held.
pub struct PerKey<K>(Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>);

/// Places held by caller name.
pub type PerCaller = PerKey<Arc<str>>;

/// One place among its caller's in a [`PerCaller`].
pub type CallerPlace = Place<Arc<str>>;

/// One place among its key's in a [`PerKey`], given back when dropped.
pub struct Place<K: std::hash::Hash + Eq> {
    counts: PerKey<K>,
    key: K,
}

impl<K> Clone for PerKey<K> {
    fn clone(&self) -> Self {
        PerKey(self.0.clone())
    }
}

impl<K> Default for PerKey<K> {
    fn default() -> Self {
        PerKey(Arc::default())
    }
}

impl<K> fmt::Debug for PerKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerKey")
            .field("keys", &self.lock().len())
            .finish()
    }
}

impl<K: std::hash::Hash + Eq> fmt::Debug for Place<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Place")
    }
}

impl<K> PerKey<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, usize>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no key holds any place (and so no entry is left).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl<K: std::hash::Hash + Eq + Clone> PerKey<K> {
    /// A place for one more of `key`'s, unless it holds `limit` already. The key is made
    /// (`to_owned`) only when it holds no place yet.
    pub fn take<Q>(&self, key: &Q, limit: usize) -> Option<Place<K>>
    where
        K: std::borrow::Borrow<Q> + From<Q::Owned>,
        Q: std::hash::Hash + Eq + ToOwned + ?Sized,
    {
        let mut held = self.lock();
        let key = match held.get_key_value(key) {
            Some((_, &count)) if count >= limit => return None,
            Some((key, _)) => key.clone(),
            None if limit == 0 => return None,
            None => K::from(key.to_owned()),
        };
        *held.entry(key.clone()).or_default() += 1;
        Some(Place {
            counts: self.clone(),
            key,
        })
    }

    /// The places `key` holds now.
    pub fn held<Q>(&self, key: &Q) -> usize
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.counts.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A blocking lookup of `host` (lower-cased, never an IP literal) with `port`.
pub type BlockingLookup = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups")
            .field("limit", &self.limit)
            .field("in_flight", &self.in_flight())
            .field(
                "per_caller",
                &self.shares.as_ref().map(|shares| shares.limit),
            )
            .finish()
    }
}

impl Lookups {
    /// At most `limit` lookups at once, with the system resolver.
    pub fn new(limit: usize) -> Self {
        Lookups {
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            blocking: |host, port| {
                use std::net::ToSocketAddrs as _;
                (host, port).to_socket_addrs().map(Iterator::collect)
            },
            shares: None,
        }
    }

    /// The same bound, and at most `share` of its lookups for any one caller named to
    /// [`Guard::resolve_for`] (lookups for no caller take a slot of the pool only).
    pub fn per_caller(mut self, share: usize) -> Self {
        self.shares = Some(Arc::new(Shares {
            limit: share,
            held: PerCaller::default(),
        }));
        self
    }

    /// The same bound with `blocking` for the system resolver (tests: a name server that
    /// takes its time).
    pub fn with_blocking_lookup(mut self, blocking: BlockingLookup) -> Self {
        self.blocking = blocking;
        self
    }

    /// Lookups running now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// `caller`'s lookups running now (none when callers are not bounded apart).
    pub fn in_flight_for(&self, caller: &str) -> usize {
        self.shares
            .as_ref()
            .map_or(0, |shares| shares.held.held(caller))
    }

    async fn lookup(
        &self,
        host: &str,
        port: u16,
        caller: Option<&str>,
    ) -> Result<io::Result<Vec<SocketAddr>>, GuardError> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| GuardError::Busy { limit: self.limit })?;
        // Taken after the pool's slot (and dropped with it when refused): a caller's entry
        // exists only while its lookups hold slots, so the entries are bounded by the pool.
        let place = match (&self.shares, caller) {
            (Some(shares), Some(caller)) => Some(shares.held.take(caller, shares.limit).ok_or(
                GuardError::CallerBusy {
                    limit: shares.limit,
                },
            )?),
            _ => None,
        };
        let (host, blocking) = (host.to_string(), self.blocking);
        let lookup = tokio::task::spawn_blocking(move || {
            // Given back when the lookup ends, not when its caller stops waiting.
            // The caller's place first: its next lookup must not find the slot free and its share not.
            let _held = (place, slot);
            blocking(&host, port)
        });
        Ok(lookup
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the lookup task failed"))))
    }
}

/// The slots of guards made without [`Guard::with_lookups`].
fn default_lookups() -> &'static Lookups {
    static DEFAULT: std::sync::OnceLock<Lookups> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| Lookups::new(DEFAULT_LOOKUPS))
}

/// Lookups in flight at once for guards given no [`Lookups`] of their own: a quarter of
/// tokio's blocking threads.
pub const DEFAULT_LOOKUPS: usize = 128;

/// A lookup in progress: every address the name has, each with the port asked for.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Looks host names up for a [`Guard`]: the system resolver
/// (`getaddrinfo`, bounded by [`Lookups`]) unless [`Guard::with_resolver`] gives another
/// (a DNS client of the deployment's own; in tests, one whose answer changes
/// between lookups, as a rebinding name's does). Whatever it answers is
/// checked like the system resolver's answer.
pub trait Resolve: Send + Sync + fmt::Debug {
    /// Resolves `host` (lower-cased, without a trailing dot, never an IP literal).
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a>;
}

/// The SSRF guard: public addresses pass, everything else must be inside one
/// of the operator's `allow_private_networks`.
///
/// `Guard::default()` allows public addresses only.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow_private_networks: Vec<IpNet>,
    /// Networks refused whatever their class (the forward proxy's `deny_hosts` addresses).
    denied_networks: Vec<IpNet>,
    /// `None`: the system resolver.
    resolver: Option<Arc<dyn Resolve>>,
    /// The system resolver's slots (`None`: [`DEFAULT_LOOKUPS`] shared by all such guards).
    lookups: Option<Lookups>,
    /// Postern's own listening sockets ([`Guard::reaches_self`]).
    own_listeners: Arc<[SocketAddr]>,
}

impl Guard {
    pub fn new(allow_private_networks: Vec<IpNet>) -> Self {
        Guard {
            allow_private_networks,
            denied_networks: Vec::new(),
            resolver: None,
            lookups: None,
            own_listeners: Arc::new([]),
        }
    }

    /// The same guard, refusing connections to `listeners` (Postern's own sockets): a caller
    /// must not reach Postern again through itself, where its calls would come from Postern's
    /// own address ([`Guard::reaches_self`]).
    pub fn with_own_listeners(mut self, listeners: Arc<[SocketAddr]>) -> Self {
        self.own_listeners = listeners;
        self
    }

    /// Whether a connection from `local` to `peer` reaches one of the guard's own listeners:
    /// the same port, and the listener's address, or any address of this host when the
    /// listener is bound to all of them: the peer is then this host when it is a loopback
    /// address or the connection's own local address (a global IPv6 address of this host
    /// passes every address check). `0.0.0.0` takes IPv4 peers only (another program may
    /// listen on the port over IPv6); `[::]` both, as a dual-stack socket does.
    ///
    /// Seen after address translation only: a published container port, a Kubernetes
    /// Service address or the host's public address through hairpin NAT reach Postern under
    /// another address and port (PROXY.md: `deny_hosts`).
    pub fn reaches_self(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        let (local_ip, peer_ip) = (local.ip().to_canonical(), peer.ip().to_canonical());
        self.own_listeners.iter().any(|own| {
            let family = match own.ip() {
                IpAddr::V4(_) => peer_ip.is_ipv4(),
                IpAddr::V6(_) => true,
            };
            own.port() == peer.port()
                && (own.ip().to_canonical() == peer_ip
                    || (own.ip().is_unspecified()
                        && family
                        && (peer_ip == local_ip || peer_ip.is_loopback())))
        })
    }

    /// The same guard, its system-resolver lookups counted in `lookups` (shared with the other
    /// guards given the same).
    pub fn with_lookups(mut self, lookups: Lookups) -> Self {
        self.lookups = Some(lookups);
        self
    }

    /// The same guard, refusing every address inside `networks` as well, public ones too, and
    /// an IPv6 address whose embedded IPv4 address one of them holds (`::ffff:a.b.c.d`, NAT64,
    /// 6to4): a host name that resolves there is refused as its address would be.
    pub fn with_denied_networks(mut self, networks: Vec<IpNet>) -> Self {
        self.denied_networks = networks;
        self
    }

    /// The same guard, looking names up with `resolver` (`None`: the system resolver).
    pub fn with_resolver(mut self, resolver: Option<Arc<dyn Resolve>>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Decides whether Postern may dial `ip`. Pure.
    ///
    /// [`AddressClass::Public`] always passes. Any other address passes only
    /// if an `allow_private_networks` entry contains it.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is, on a dual-stack
    /// socket, a connection to `a.b.c.d`, so it is also allowed when an IPv4
    /// entry contains the embedded address: `127.0.0.1/32` allows both
    /// `127.0.0.1` and `::ffff:127.0.0.1`. Without a matching entry it stays
    /// denied as `ipv4_mapped`, even when the embedded address is public.
    /// No other IPv4-embedding form gets this treatment.
    ///
    /// The other way round, an IPv6 entry over an IPv4-embedding prefix
    /// (`::ffff:0:0/96`, `::/96`, the NAT64 `64:ff9b::/96` a DNS64 network
    /// needs, `2002::/16`) allows only addresses whose embedded IPv4 address
    /// is public or itself allowed: `64:ff9b::a9fe:a9fe` reaches
    /// 169.254.169.254 through the translator, so the NAT64 entry alone does
    /// not let it pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let class = classify(ip);
        if !self.denied_networks.is_empty() {
            let embedded = embedded_ipv4(ip, class).map(IpAddr::V4);
            let listed =
                |address: IpAddr| self.denied_networks.iter().any(|n| n.contains(&address));
            if listed(ip) || embedded.is_some_and(listed) {
                return Err(Denied {
                    ip,
                    class,
                    listed: true,
                });
            }
        }
        if class == AddressClass::Public {
            return Ok(());
        }
        if self.is_allowed_private(ip) {
            let reaches = embedded_ipv4(ip, class).map(IpAddr::V4);
            return match reaches {
                Some(v4)
                    if classify(v4) != AddressClass::Public && !self.is_allowed_private(v4) =>
                {
                    Err(Denied {
                        ip,
                        class,
                        listed: false,
                    })
                }
                _ => Ok(()),
            };
        }
        if class == AddressClass::Ipv4Mapped {
            let mapped = embedded_ipv4(ip, class).map(IpAddr::V4);
            if mapped.is_some_and(|v4| self.is_allowed_private(v4)) {
                return Ok(());
            }
        }
        Err(Denied {
            ip,
            class,
            listed: false,
        })
    }

    /// Resolves `host` and returns the addresses Postern may dial, in
    /// resolver order, each paired with `port`.
    ///
    /// The host is lowercased and one trailing dot is stripped. IP literals
    /// (`10.0.0.1`, `::1`, `[::1]`) and numeric IPv4 shorthands the system
    /// resolver would also accept (`2130706433`, `0x7f.1`, `0177.0.0.1`,
    /// `127.1`) are checked directly without DNS. Anything else goes to
    /// the system resolver (or the guard's [`Resolve`]), afresh on every
    /// call; if any address in the answer is denied, the whole answer is
    /// refused with [`GuardError::Denied`]. An empty answer is
    /// [`GuardError::Resolve`]; all the guard's [`Lookups`] in flight,
    /// [`GuardError::Busy`].
    ///
    /// Dial only the returned addresses; resolving the host again elsewhere
    /// would undo the check.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        self.resolve_for(host, port, None).await
    }

    /// [`Guard::resolve`] for `caller`: a system-resolver lookup also takes a place in the
    /// caller's share of the guard's [`Lookups`] when they have shares ([`Lookups::per_caller`];
    /// [`GuardError::CallerBusy`] when it is full).
    pub async fn resolve_for(
        &self,
        host: &str,
        port: u16,
        caller: Option<&str>,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        let resolve_error = |kind: io::ErrorKind, message: &str| GuardError::Resolve {
            // Escaped so a hostile host name cannot forge log lines.
            host: host.escape_debug().to_string(),
            source: io::Error::new(kind, message.to_string()),
        };
        let normalized = normalize_host(host)
            .map_err(|message| resolve_error(io::ErrorKind::InvalidInput, message))?;
        if let Some(ip) = parse_ip_literal(&normalized)
            .map_err(|message| resolve_error(io::ErrorKind::InvalidInput, message))?
        {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut answer = match &self.resolver {
            Some(resolver) => resolver.lookup(&normalized, port).await,
            None => {
                self.lookups
                    .as_ref()
                    .unwrap_or_else(|| default_lookups())
                    .lookup(&normalized, port, caller)
                    .await?
            }
        }
        .map_err(|source| GuardError::Resolve {
            host: host.escape_debug().to_string(),
            source,
        })?;
        if answer.is_empty() {
            return Err(resolve_error(
                io::ErrorKind::NotFound,
                "the resolver returned no addresses",
            ));
        }
        self.check_all(&answer)?;
        // The port asked for, whatever a resolver answered: the port is the caller's policy's
        // to decide (`allowed_ports`, an integration's own), never the resolver's.
        for addr in &mut answer {
            addr.set_port(port);
        }
        Ok(answer)
    }

    /// Refuses the whole answer if any address in it is denied (naming a listed one first:
    /// the deny list is the operator's own word on that host).
    fn check_all(&self, answer: &[SocketAddr]) -> Result<(), Denied> {
        let mut first = None;
        for addr in answer {
            if let Err(denied) = self.check(addr.ip()) {
                if denied.listed {
                    return Err(denied);
                }
                first.get_or_insert(denied);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether an `allow_private_networks` entry holds `ip`; a cloud metadata address
    /// ([`is_cloud_metadata`]) only by an entry that is that address alone, so a wide entry
    /// (`0.0.0.0/0` meant as "our internal networks", all of link-local, a ULA `fd00::/8`) does
    /// not hand out the instance's credentials.
    fn is_allowed_private(&self, ip: IpAddr) -> bool {
        let metadata = is_cloud_metadata(ip);
        self.allow_private_networks
            .iter()
            .any(|net| net.contains(&ip) && (!metadata || net.prefix_len() == net.max_prefix_len()))
    }
}

/// Cloud instance metadata endpoints, which hand out the instance's credentials: AWS, GCP and
/// Azure's `169.254.169.254`, AWS ECS task credentials (`169.254.170.2`), EKS Pod Identity
/// (`169.254.170.23`), AWS over IPv6 (`fd00:ec2::254`, `fd00:ec2::23`) and GCP over IPv6
/// (`fd20:ce::254`). (Alibaba's `100.100.100.200` is not among them: it lies in the CGNAT range
/// that overlay networks such as Tailscale allow whole, and is an endpoint on that cloud only.)
/// Reached through an IPv4-embedding IPv6 address, the embedded address is checked as itself.
fn is_cloud_metadata(ip: IpAddr) -> bool {
    const V4: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(169, 254, 170, 23),
    ];
    const V6: [Ipv6Addr; 3] = [
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
        Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
    ];
    match ip {
        IpAddr::V4(v4) => V4.contains(&v4),
        IpAddr::V6(v6) => V6.contains(&v6),
    }
}

/// Lowercases the host and strips one trailing dot.
fn normalize_host(host: &str) -> Result<String, &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err("the host contains whitespace, control characters or '/'");
    }
    Ok(host.to_ascii_lowercase())
}

/// Recognizes every spelling of an IP address: `Ok(None)` means "a name, ask
/// DNS"; `Err` means a bracketed literal that is not IPv6.
fn parse_ip_literal(host: &str) -> Result<Option<IpAddr>, &'static str> {
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(v6)) => Ok(Some(IpAddr::V6(v6))),
            _ => Err("a bracketed host must be an IPv6 address, like [2001:db8::1]"),
        };
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(ip));
    }
    Ok(parse_ipv4_shorthand(host).map(IpAddr::V4))
}

/// `host` as the IPv4 address a resolver would read it as, when it is one in any of
/// `inet_aton`'s forms (`93.184.216.34`, `1572395042`, `0x5db8d822`, `93.184.216.042`, `127.1`):
/// a name policy compares the dotted quad this gives, as the guard dials it.
pub fn ipv4_literal(host: &str) -> Option<Ipv4Addr> {
    parse_ipv4_shorthand(host)
}

/// Parses IPv4 the way `inet_aton` does: one to four parts separated by dots,
/// each decimal, octal (leading `0`) or hexadecimal (leading `0x`), the last
/// part filling all remaining bytes (`127.1` is `127.0.0.1`, `2130706433` is
/// `127.0.0.1`). Returns `None` for anything that is not such a number.
fn parse_ipv4_shorthand(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = host
        .split('.')
        .map(parse_ipv4_shorthand_part)
        .collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&part| part > 0xff) {
        return None;
    }
    let last_part_bits = 32 - 8 * leading.len() as u32;
    if last_part_bits < 32 && *last >> last_part_bits != 0 {
        return None;
    }
    let high = leading
        .iter()
        .fold(0u32, |acc, &part| (acc << 8) | part)
        .checked_shl(last_part_bits)
        .unwrap_or(0);
    Some(Ipv4Addr::from(high | last))
}

fn parse_ipv4_shorthand_part(part: &str) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        // `inet_aton` reads a bare "0x" as zero.
        if hex.is_empty() {
            return Some(0);
        }
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn check_classes(cases: &[(&str, AddressClass)]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|&(ip, expected)| {
                let actual = classify(ip.parse().expect(ip));
                (actual != expected).then(|| format!("{ip}: expected {expected:?}, got {actual:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    }

    #[test]
    fn classify_ipv4() {
        check_classes(&[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("172.15.255.255", Public),
            ("172.32.0.1", Public),
            ("100.63.255.255", Public),
            ("100.128.0.1", Public),
            ("223.255.255.255", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("0.0.0.0", Unspecified),
            ("255.255.255.255", Broadcast),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("0.1.2.3", Reserved),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("192.88.99.1", Reserved),
        ]);
    }

    #[test]
    fn classify_ipv6() {
        check_classes(&[
            ("2606:4700::1111", Public),
            ("2a00:1450:4001:80b::200e", Public),
            ("2001:4860:4860::8888", Public),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fc00::1", UniqueLocal),
            ("fd12::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("::ffff:127.0.0.1", Ipv4Mapped),
            ("::ffff:8.8.8.8", Ipv4Mapped),
            ("::127.0.0.1", Ipv4Compatible),
            ("::8.8.8.8", Ipv4Compatible),
            ("64:ff9b::808:808", Nat64),
            ("64:ff9b::7f00:1", Nat64),
            ("64:ff9b:1::1", Nat64),
            ("2002:7f00:1::", SixToFour),
            ("2002:808:808::1", SixToFour),
            ("2001:0:4136:e378::1", Teredo),
            ("2001:db8::1", Reserved),
            ("2001:10::1", Reserved),
            ("2001:2::1", Reserved),
            ("3fff::1", Reserved),
            ("100::1", Reserved),
            ("fec0::1", Reserved),
            ("::ffff:0:7f00:1", Reserved),
            ("5f00::1", Reserved),
            ("4000::1", Reserved),
        ]);
    }

    #[test]
    fn class_names_are_the_documented_strings() {
        let names: Vec<&str> = [
            Public,
            Loopback,
            Private,
            LinkLocal,
            SharedCgnat,
            UniqueLocal,
            Multicast,
            Unspecified,
            Broadcast,
            Ipv4Mapped,
            Ipv4Compatible,
            Nat64,
            SixToFour,
            Teredo,
            Reserved,
        ]
        .iter()
        .map(AddressClass::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "public",
                "loopback",
                "private",
                "link_local",
                "shared_cgnat",
                "unique_local",
                "multicast",
                "unspecified",
                "broadcast",
                "ipv4_mapped",
                "ipv4_compatible",
                "nat64",
                "6to4",
                "teredo",
                "reserved"
            ]
        );
    }

    fn nets(nets: &[&str]) -> Vec<IpNet> {
        nets.iter().map(|net| net.parse().expect(net)).collect()
    }

    /// One line per case: (allow nets, address, allowed?).
    fn check_guard(cases: &[(&[&str], &str, bool)]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|&(allow, ip, expected)| {
                let actual = Guard::new(nets(allow)).check(ip.parse().expect(ip));
                (actual.is_ok() != expected).then(|| {
                    format!("allow {allow:?}, {ip}: expected allowed={expected}, got {actual:?}")
                })
            })
            .collect();
        assert!(wrong.is_empty(), "wrong decisions:\n{}", wrong.join("\n"));
    }

    #[test]
    fn guard_allows_public_and_listed_private_networks_only() {
        check_guard(&[
            (&[], "8.8.8.8", true),
            (&[], "2606:4700::1111", true),
            (&[], "127.0.0.1", false),
            (&[], "169.254.169.254", false),
            (&[], "::ffff:8.8.8.8", false),
            (&["127.0.0.1/32"], "127.0.0.1", true),
            (&["127.0.0.1/32"], "127.0.0.2", false),
            (&["127.0.0.1/32"], "::ffff:127.0.0.1", true),
            (&["127.0.0.1/32"], "::1", false),
            (&["127.0.0.1/32"], "::127.0.0.1", false),
            (&["127.0.0.1/32"], "64:ff9b::7f00:1", false),
            (&["::1/128"], "::1", true),
            (&["::1/128"], "127.0.0.1", false),
            (&["10.0.0.0/8", "fd00::/8"], "10.20.30.40", true),
            (&["10.0.0.0/8", "fd00::/8"], "fd12::1", true),
            (&["10.0.0.0/8", "fd00::/8"], "fc00::1", false),
            (&["10.0.0.0/8", "fd00::/8"], "192.168.1.1", false),
            (&["::ffff:0:0/96"], "::ffff:8.8.8.8", true),
            // An entry over an IPv4-embedding prefix passes only what the embedded IPv4
            // address would pass: public, or allowed by an IPv4 entry.
            (&["::ffff:0:0/96"], "::ffff:127.0.0.1", false),
            (&["::ffff:0:0/96", "127.0.0.1/32"], "::ffff:127.0.0.1", true),
            (&["64:ff9b::/96"], "64:ff9b::808:808", true),
            (&["64:ff9b::/96"], "64:ff9b::a9fe:a9fe", false),
            (&["64:ff9b::/96"], "64:ff9b::a00:5", false),
            (&["64:ff9b::/96", "10.0.0.0/8"], "64:ff9b::a00:5", true),
            (&["::/96"], "::10.0.0.5", false),
            (&["2002::/16"], "2002:808:808::1", true),
            (&["2002::/16"], "2002:a9fe:a9fe::1", false),
            (&["64:ff9b:1::/48"], "64:ff9b:1::a00:5", true),
            // Cloud metadata endpoints pass only an entry of the address alone, however wide
            // the entries that hold them.
            (&["0.0.0.0/0"], "169.254.169.254", false),
            (&["0.0.0.0/0"], "169.254.1.1", true),
            (&["169.254.0.0/16"], "169.254.170.2", false),
            (&["169.254.0.0/16"], "169.254.170.23", false),
            (&["169.254.169.254/32"], "169.254.169.254", true),
            (&["169.254.169.254/32"], "::ffff:169.254.169.254", true),
            (
                &["::ffff:0:0/96", "169.254.0.0/16"],
                "::ffff:169.254.169.254",
                false,
            ),
            (
                &["64:ff9b::/96", "169.254.0.0/16"],
                "64:ff9b::a9fe:a9fe",
                false,
            ),
            (&["fd00::/8"], "fd00:ec2::254", false),
            (&["fd00::/8"], "fd00:ec2::23", false),
            (&["fd00::/8"], "fd00:ec2::1", true),
            (&["::/0"], "fd20:ce::254", false),
            (&["fd00:ec2::254/128"], "fd00:ec2::254", true),
            (&["100.64.0.0/10"], "100.100.100.200", true),
        ]);
    }

    #[test]
    fn denied_names_the_address_class_and_the_setting() {
        let denied = Guard::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(denied.class, LinkLocal);
        assert_eq!(
            denied.to_string(),
            "address 169.254.169.254 is link_local and not in allow_private_networks"
        );
    }

    #[test]
    fn ipv4_shorthand_is_parsed_like_inet_aton() {
        let cases: &[(&str, Option<&str>)] = &[
            ("2130706433", Some("127.0.0.1")),
            ("0x7f000001", Some("127.0.0.1")),
            ("0x7f.1", Some("127.0.0.1")),
            ("0177.0.0.1", Some("127.0.0.1")),
            ("127.1", Some("127.0.0.1")),
            ("127.0.1", Some("127.0.0.1")),
            ("10.0x10203", Some("10.1.2.3")),
            ("0xA9.0376.0xa9fe", Some("169.254.169.254")),
            ("0", Some("0.0.0.0")),
            ("0x", Some("0.0.0.0")),
            ("4294967295", Some("255.255.255.255")),
            ("4294967296", None),
            ("256.1.1.1", None),
            ("1.256.1.1", None),
            ("1.2.65536", None),
            ("1.2.3.4.5", None),
            ("08", None),
            ("1..1", None),
            ("+1", None),
            ("0x+1", None),
            ("example.com", None),
            ("1e100.net", None),
            ("0xdeadbeef.com", None),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|&(host, expected)| {
                let expected = expected.map(|ip| ip.parse::<Ipv4Addr>().unwrap());
                let actual = parse_ipv4_shorthand(host);
                (actual != expected)
                    .then(|| format!("{host}: expected {expected:?}, got {actual:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "misparsed:\n{}", wrong.join("\n"));
    }

    #[test]
    fn one_denied_address_refuses_the_whole_answer() {
        let guard = Guard::default();
        let public = SocketAddr::from(([8, 8, 8, 8], 443));
        let private = SocketAddr::from(([10, 0, 0, 1], 443));
        assert_eq!(guard.check_all(&[public]), Ok(()));
        assert_eq!(
            guard.check_all(&[public, private]),
            Err(Denied {
                ip: private.ip(),
                class: Private,
                listed: false,
            })
        );
    }

    /// A denied network refuses its addresses whatever their class, in every IPv6 form that
    /// reaches them, and is named before any other refusal in the same answer.
    #[tokio::test]
    async fn a_denied_network_refuses_public_and_allowed_addresses_and_names_resolving_there() {
        let guard = Guard::new(vec!["10.1.0.0/16".parse().unwrap()]).with_denied_networks(vec![
            "93.184.216.34/32".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        for ip in [
            "93.184.216.34",
            "10.1.2.3",
            "2001:db8::1",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let denied = guard.check(ip).unwrap_err();
            assert!(denied.listed, "{ip}");
            assert!(denied.to_string().contains("denied network"), "{denied}");
        }
        assert_eq!(guard.check("93.184.216.35".parse().unwrap()), Ok(()));
        assert_eq!(guard.check("10.1.3.1".parse().unwrap()), Ok(()));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 443));
        let listed = SocketAddr::from(([93, 184, 216, 34], 443));
        assert!(guard.check_all(&[loopback, listed]).unwrap_err().listed);
        let resolver = Rebinding {
            answers: vec![vec!["8.8.8.8".parse().unwrap(), listed.ip()]],
            lookups: std::sync::Mutex::new(Vec::new()),
        };
        let guard = guard.with_resolver(Some(Arc::new(resolver)));
        let denied = resolve_denied(&guard, "any.example.com").await;
        assert_eq!((denied.ip, denied.listed), (listed.ip(), true));
    }

    async fn resolve_denied(guard: &Guard, host: &str) -> Denied {
        match guard.resolve(host, 443).await {
            Err(GuardError::Denied(denied)) => denied,
            other => panic!("{host}: expected Denied, got {other:?}"),
        }
    }

    /// Answers each lookup with the next of its answers (the last one again once they run out),
    /// counting lookups: a name that rebinds.
    #[derive(Debug)]
    struct Rebinding {
        answers: Vec<Vec<IpAddr>>,
        lookups: std::sync::Mutex<Vec<String>>,
    }

    impl Resolve for Rebinding {
        fn lookup<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
            let mut lookups = self.lookups.lock().unwrap();
            lookups.push(host.to_string());
            let answer = &self.answers[(lookups.len() - 1).min(self.answers.len() - 1)];
            let answer = answer.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
            Box::pin(async move { Ok(answer) })
        }
    }

    /// Every resolution asks the resolver again and checks its new answer: a name that first
    /// answers with a public address and then with an internal one is refused the second time.
    #[tokio::test]
    async fn every_resolution_asks_again_and_checks_the_new_answer() {
        let rebinding = Arc::new(Rebinding {
            answers: vec![
                vec!["93.184.216.34".parse().unwrap()],
                vec!["169.254.169.254".parse().unwrap()],
                vec![
                    "93.184.216.34".parse().unwrap(),
                    "10.1.2.3".parse().unwrap(),
                ],
            ],
            lookups: Default::default(),
        });
        let guard = Guard::default().with_resolver(Some(rebinding.clone()));
        assert_eq!(
            guard.resolve("API.Vendor.example.", 443).await.unwrap(),
            [SocketAddr::from(([93, 184, 216, 34], 443))]
        );
        assert_eq!(
            resolve_denied(&guard, "api.vendor.example").await.class,
            LinkLocal
        );
        assert_eq!(
            resolve_denied(&guard, "api.vendor.example").await.class,
            Private
        );
        // IP literals never reach the resolver; names reach it normalized.
        resolve_denied(&guard, "127.0.0.1").await;
        assert_eq!(
            *rebinding.lookups.lock().unwrap(),
            ["api.vendor.example"; 3]
        );
    }

    /// A resolver's answer gives the addresses, never the port: the one asked for is dialled.
    #[tokio::test]
    async fn the_port_asked_for_is_kept_whatever_the_resolver_answers() {
        #[derive(Debug)]
        struct OtherPort;
        impl Resolve for OtherPort {
            fn lookup<'a>(&'a self, _: &'a str, _: u16) -> Lookup<'a> {
                Box::pin(async { Ok(vec![SocketAddr::from(([93, 184, 216, 34], 1))]) })
            }
        }
        let guard = Guard::default().with_resolver(Some(Arc::new(OtherPort)));
        assert_eq!(
            guard.resolve("api.vendor.example", 443).await.unwrap(),
            [SocketAddr::from(([93, 184, 216, 34], 443))]
        );
    }

    #[tokio::test]
    async fn resolve_refuses_localhost() {
        let denied = resolve_denied(&Guard::default(), "localhost").await;
        assert_eq!(denied.class, Loopback);
        let denied = resolve_denied(&Guard::default(), "LocalHost.").await;
        assert_eq!(denied.class, Loopback);
    }

    #[tokio::test]
    async fn resolve_checks_ip_literals_in_every_notation_without_dns() {
        let guard = Guard::default();
        let cases: &[(&str, &str, AddressClass)] = &[
            ("2130706433", "127.0.0.1", Loopback),
            ("0x7f000001", "127.0.0.1", Loopback),
            ("0X7F000001", "127.0.0.1", Loopback),
            ("127.1", "127.0.0.1", Loopback),
            ("0x7f.1", "127.0.0.1", Loopback),
            ("0177.0.0.1", "127.0.0.1", Loopback),
            ("127.0.0.1.", "127.0.0.1", Loopback),
            ("0xa9fea9fe", "169.254.169.254", LinkLocal),
            ("[::1]", "::1", Loopback),
            ("::1", "::1", Loopback),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", Ipv4Mapped),
            ("[FE80::1]", "fe80::1", LinkLocal),
        ];
        for &(host, ip, class) in cases {
            let expected = Denied {
                ip: ip.parse().unwrap(),
                class,
                listed: false,
            };
            assert_eq!(resolve_denied(&guard, host).await, expected, "{host}");
        }
    }

    #[tokio::test]
    async fn resolve_returns_checked_literals_with_the_port() {
        let guard = Guard::new(nets(&["127.0.0.0/8"]));
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1", "127.0.0.1:8080"),
            ("127.1", "127.0.0.1:8080"),
            ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]:8080"),
            ("8.8.8.8", "8.8.8.8:8080"),
            ("[2606:4700::1111]", "[2606:4700::1111]:8080"),
        ];
        for &(host, expected) in cases {
            let resolved = guard.resolve(host, 8080).await.expect(host);
            assert_eq!(
                resolved,
                [expected.parse::<SocketAddr>().unwrap()],
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn resolve_with_allowed_loopback_passes_localhost() {
        let guard = Guard::new(nets(&["127.0.0.0/8", "::1/128"]));
        let resolved = guard.resolve("localhost", 8080).await.unwrap();
        assert!(!resolved.is_empty());
        assert!(
            resolved
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() == 8080),
            "{resolved:?}"
        );
    }

    #[tokio::test]
    async fn resolve_rejects_malformed_hosts_before_dns() {
        for host in [
            "",
            ".",
            "[127.0.0.1]",
            "[::1",
            "exa mple.com",
            "evil.com\n",
            "a/b",
        ] {
            match Guard::default().resolve(host, 443).await {
                Err(GuardError::Resolve { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::InvalidInput, "{host:?}")
                }
                other => panic!("{host:?}: expected Resolve error, got {other:?}"),
            }
        }
    }

    /// A lookup holds its slot until the resolver returns, not until its caller stops waiting:
    /// callers that give up at once still cannot have more than the limit in flight, the next
    /// is refused at once (`Busy`), and the slots come back when the slow lookups end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_in_flight_are_bounded_after_their_callers_give_up() {
        use std::sync::atomic::AtomicBool;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        // The name server answers when the test says so (or after 10 s: bounded).
        static ANSWER: AtomicBool = AtomicBool::new(false);
        let lookups = Lookups::new(3).with_blocking_lookup(|_, port| {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            for _ in 0..1000 {
                if ANSWER.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            Ok(vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14)),
                port,
            )])
        });
        let guard = Guard::default().with_lookups(lookups.clone());
        let (mut started, mut busy) = (0, 0);
        for n in 0..20 {
            let host = format!("n{n}.slow.example");
            match tokio::time::timeout(
                std::time::Duration::from_millis(5),
                guard.resolve(&host, 443),
            )
            .await
            {
                Err(_) => started += 1,
                Ok(Err(GuardError::Busy { limit })) => {
                    assert_eq!(limit, 3);
                    busy += 1;
                }
                Ok(other) => panic!("{other:?}"),
            }
        }
        assert_eq!((started, busy), (3, 17));
        assert_eq!(lookups.in_flight(), 3);
        // Another guard with the same slots is bounded with them.
        let other = Guard::default().with_lookups(lookups.clone());
        assert!(matches!(
            other.resolve("one.more.example", 443).await,
            Err(GuardError::Busy { .. })
        ));
        // IP literals need no lookup.
        assert!(other.resolve("93.184.215.14", 443).await.is_ok());
        ANSWER.store(true, Ordering::SeqCst);
        for _ in 0..500 {
            if lookups.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(lookups.in_flight(), 0);
        assert!(PEAK.load(Ordering::SeqCst) <= 3);
        let answer = guard.resolve("after.example", 443).await.unwrap();
        assert_eq!(answer[0].port(), 443);
    }

    /// With shares, one caller's lookups waiting on a name server take its share only: its next
    /// is refused at once (`CallerBusy`, holding no slot), another caller's still gets a slot,
    /// a lookup for no caller is bounded by the pool alone, and every place comes back (the
    /// share's entry gone) when the name server answers, not when the callers give up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_caller_cannot_take_more_than_its_share_of_the_lookups() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static ANSWER: AtomicBool = AtomicBool::new(false);
        let lookups = Lookups::new(4)
            .per_caller(2)
            .with_blocking_lookup(|_, port| {
                for _ in 0..1000 {
                    if ANSWER.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(vec![SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14)),
                    port,
                )])
            });
        let guard = Guard::default().with_lookups(lookups.clone());
        let gives_up = |host: &'static str, caller: Option<&'static str>| {
            let guard = guard.clone();
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_millis(20),
                    guard.resolve_for(host, 443, caller),
                )
                .await
            }
        };
        for host in ["a1.slow.example", "a2.slow.example"] {
            assert!(
                gives_up(host, Some("a")).await.is_err(),
                "waits on its server"
            );
        }
        assert_eq!((lookups.in_flight(), lookups.in_flight_for("a")), (2, 2));
        for _ in 0..5 {
            match guard.resolve_for("a3.slow.example", 443, Some("a")).await {
                Err(GuardError::CallerBusy { limit: 2 }) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lookups.in_flight(), 2, "a refused lookup holds no slot");
        assert!(gives_up("b1.slow.example", Some("b")).await.is_err());
        assert!(gives_up("none.slow.example", None).await.is_err());
        assert_eq!((lookups.in_flight(), lookups.in_flight_for("b")), (4, 1));
        // The pool is full: `b` is refused by it, not by its share.
        match guard.resolve_for("b2.slow.example", 443, Some("b")).await {
            Err(GuardError::Busy { limit: 4 }) => {}
            other => panic!("{other:?}"),
        }
        ANSWER.store(true, Ordering::SeqCst);
        for _ in 0..500 {
            if lookups.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(lookups.in_flight(), 0);
        assert_eq!(lookups.in_flight_for("a") + lookups.in_flight_for("b"), 0);
        let shares = lookups.shares.as_ref().unwrap();
        assert!(shares.held.is_empty(), "no entry left behind");
        assert!(guard
            .resolve_for("a4.example", 443, Some("a"))
            .await
            .is_ok());
    }

    /// Postern's own sockets are refused whatever address reaches them: the listener's own,
    /// and for one bound to every address, a loopback address or the host's own (the local
    /// address of the connection), IPv4-mapped forms too; another host's same port is not.
    #[test]
    fn own_listeners_are_reached_by_any_address_of_this_host() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let guard = Guard::default().with_own_listeners(Arc::from(vec![
            addr("0.0.0.0:8080"),
            addr("[::]:8443"),
            addr("10.0.0.5:9090"),
        ]));
        let local = addr("192.0.2.7:50000");
        let local6 = addr("[2001:db8::7]:50000");
        for (peer, from, reached) in [
            ("127.0.0.1:8080", local, true),
            ("127.0.0.2:8080", local, true),
            ("192.0.2.7:8080", local, true),
            ("[::ffff:192.0.2.7]:8080", local, true),
            ("192.0.2.8:8080", local, false),
            ("127.0.0.1:8081", local, false),
            ("[2001:db8::7]:8443", local6, true),
            ("[::1]:8443", local6, true),
            ("[2001:db8::8]:8443", local6, false),
            ("10.0.0.5:9090", local, true),
            ("127.0.0.1:9090", local, false),
            // `0.0.0.0` is IPv4 alone: the port over IPv6 may be another program's.
            ("[::1]:8080", local6, false),
            ("[2001:db8::7]:8080", local6, false),
            // `[::]` is dual-stack.
            ("127.0.0.1:8443", local, true),
        ] {
            assert_eq!(guard.reaches_self(from, addr(peer)), reached, "{peer}");
        }
        assert!(!Guard::default().reaches_self(local, addr("127.0.0.1:8080")));
    }
}
