//! The in-memory inventory: observations in, one [`DiscoveredHost`] per (host, port) out.
//!
//! Bounded: at most [`Limits::max_hosts`] hosts, [`Limits::max_endpoints_per_host`] endpoints
//! and [`Limits::max_callers_per_host`] callers per host, and [`Limits::max_endpoints`]
//! endpoints in all. What does not fit is counted, never dropped silently: `endpoints_truncated`
//! and `callers_truncated` on the host, [`Inventory::dropped_calls`] for calls to hosts that did
//! not fit. When the hosts are full, one that traffic reached replaces the least recently seen
//! one it did not ([`reached`]), as in the store, so probing made-up names cannot crowd real
//! destinations out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::template::infer_template;

/// How many hosts, endpoints and callers an inventory (and the store) keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct (host, port) pairs.
    pub max_hosts: usize,
    /// Distinct (method, template) pairs per host.
    pub max_endpoints_per_host: usize,
    /// Distinct callers per host.
    pub max_callers_per_host: usize,
    /// Distinct (host, port, method, template) in all. Without it the per-host caps would
    /// allow 25 million endpoints of up to [`crate::MAX_TEMPLATE_BYTES`] each (about 13 GB),
    /// which one caller could fill with made-up paths to made-up hosts.
    pub max_endpoints: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_hosts: 50_000,
            max_endpoints_per_host: 500,
            max_callers_per_host: 200,
            max_endpoints: 200_000,
        }
    }
}

/// Where an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationSource {
    /// The gateway saw the call (forward proxy to an unregistered destination).
    Proxy,
    /// `postern discover import` read it from an access log or a HAR file.
    Import,
}

/// How a destination was spoken to: seen, not assumed from its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Plain HTTP: an absolute-form `http://` request through the forward proxy, or a log line
    /// or HAR entry whose URL or `scheme` says so.
    Http,
    /// TLS: a `CONNECT` tunnel whose first bytes from the caller were a TLS handshake, or a log
    /// line or HAR entry whose URL, `scheme` or SNI says so.
    Https,
}

impl Scheme {
    /// A URL scheme or a log's `scheme` field, in any case: `http` and `ws`, `https` and `wss`.
    pub fn parse(name: &str) -> Option<Scheme> {
        match name.to_ascii_lowercase().as_str() {
            "http" | "ws" => Some(Scheme::Http),
            "https" | "wss" => Some(Scheme::Https),
            _ => None,
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One call to a destination that matched no registered integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The destination host name or IP address (case and a trailing `.` do not matter;
    /// IPv6 with or without brackets).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// How the call spoke to the destination, when that was seen (`None`: an opaque tunnel
    /// that carried no bytes or no TLS, a log line that does not say).
    pub scheme: Option<Scheme>,
    /// Who made the call: a caller name, a user, or a client address.
    pub caller: Option<String>,
    /// The HTTP method, when visible (not for an opaque `CONNECT` tunnel).
    pub method: Option<String>,
    /// The raw request path (query allowed, it is ignored); the endpoint template is inferred
    /// from it ([`crate::infer_template`]). `None` when not visible.
    pub path: Option<String>,
    /// The response status, when there was one.
    pub status: Option<u16>,
    /// Bytes sent toward the destination (request).
    pub bytes_out: u64,
    /// Bytes received from the destination (response).
    pub bytes_in: u64,
    /// When the call started, in Unix milliseconds.
    pub time_ms: i64,
    /// Whether the gateway refused to pass the call (always `false` for imports).
    pub blocked: bool,
    /// Where the observation came from.
    pub source: ObservationSource,
}

/// One endpoint (method + template) of a discovered host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Upper-case HTTP method.
    pub method: String,
    /// The inferred template, e.g. `/v1/charges/{id}`.
    pub template: String,
    pub calls: u64,
    pub blocked_calls: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The status of the latest call that had one.
    pub last_status: Option<u16>,
}

/// Everything known about one unregistered destination. This is the stable JSON shape of
/// `postern discover list --json` and of the admin endpoint `GET /v1/discovered`
/// (see docs/DISCOVERY.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredHost {
    /// Lower-case host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Every call, passed or blocked.
    pub calls: u64,
    /// Calls the gateway refused.
    pub blocked_calls: u64,
    /// Bytes sent toward the host.
    pub bytes_out: u64,
    /// Bytes received from the host.
    pub bytes_in: u64,
    /// Distinct callers (at most `max_callers_per_host`), sorted.
    pub callers: BTreeSet<String>,
    /// A lower bound on the calls whose caller is missing from `callers` because of the cap.
    pub callers_truncated: u64,
    /// Endpoints sorted by (method, template), at most `max_endpoints_per_host`.
    pub endpoints: Vec<EndpointStats>,
    /// Calls whose endpoint is missing from `endpoints` because of the cap.
    pub endpoints_truncated: u64,
    /// Where the calls were seen: `proxy`, `import`.
    pub sources: BTreeSet<ObservationSource>,
    /// How the host was spoken to, where that was seen: `http`, `https` (empty: never seen;
    /// `postern discover promote` then assumes from the port and says so).
    #[serde(default)]
    pub schemes: BTreeSet<Scheme>,
}

impl DiscoveredHost {
    /// An empty entry for `host:port` (counts zero, times from `time_ms`).
    pub fn new(host: &str, port: u16, time_ms: i64) -> Self {
        DiscoveredHost {
            host: normalize_host(host),
            port,
            first_seen_ms: time_ms,
            last_seen_ms: time_ms,
            calls: 0,
            blocked_calls: 0,
            bytes_out: 0,
            bytes_in: 0,
            callers: BTreeSet::new(),
            callers_truncated: 0,
            endpoints: Vec::new(),
            endpoints_truncated: 0,
            sources: BTreeSet::new(),
            schemes: BTreeSet::new(),
        }
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The endpoint `method template`, if known.
    pub fn endpoint(&self, method: &str, template: &str) -> Option<&EndpointStats> {
        self.endpoints
            .binary_search_by(|e| (e.method.as_str(), e.template.as_str()).cmp(&(method, template)))
            .ok()
            .map(|index| &self.endpoints[index])
    }

    /// Adds one call; `room` is how many endpoints may still be added in all, and is lowered
    /// by those added.
    fn record(&mut self, observation: &Observation, limits: &Limits, room: &mut usize) {
        self.calls += 1;
        self.blocked_calls += u64::from(observation.blocked);
        self.bytes_out = self.bytes_out.saturating_add(observation.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(observation.bytes_in);
        self.first_seen_ms = self.first_seen_ms.min(observation.time_ms);
        self.last_seen_ms = self.last_seen_ms.max(observation.time_ms);
        self.sources.insert(observation.source);
        self.schemes.extend(observation.scheme);
        if let Some(caller) = observation.caller.as_deref().filter(|c| !c.is_empty()) {
            self.add_caller(caller, 1, limits);
        }
        if let (Some(method), Some(path)) = (&observation.method, &observation.path) {
            let endpoint = EndpointStats {
                method: recorded_method(method),
                template: infer_template(path),
                calls: 1,
                blocked_calls: u64::from(observation.blocked),
                first_seen_ms: observation.time_ms,
                last_seen_ms: observation.time_ms,
                last_status: observation.status,
            };
            self.add_endpoint(endpoint, limits, room);
        }
    }

    /// Adds `other`'s counts, times, callers and endpoints (same host and port assumed).
    /// Bounded per host only: [`Limits::max_endpoints`] is a bound on an inventory or a store.
    pub fn merge(&mut self, other: DiscoveredHost, limits: &Limits) {
        let mut room = usize::MAX;
        self.merge_within(other, limits, &mut room);
    }

    /// [`DiscoveredHost::merge`], adding at most `room` new endpoints (lowered by those added).
    fn merge_within(&mut self, other: DiscoveredHost, limits: &Limits, room: &mut usize) {
        self.calls += other.calls;
        self.blocked_calls += other.blocked_calls;
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.callers_truncated += other.callers_truncated;
        self.endpoints_truncated += other.endpoints_truncated;
        self.sources.extend(other.sources);
        self.schemes.extend(other.schemes);
        for caller in other.callers {
            self.add_caller(&caller, 1, limits);
        }
        for endpoint in other.endpoints {
            self.add_endpoint(endpoint, limits, room);
        }
    }

    fn add_caller(&mut self, caller: &str, calls: u64, limits: &Limits) {
        let caller = recorded_caller(caller);
        if self.callers.contains(&*caller) {
            return;
        }
        if self.callers.len() < limits.max_callers_per_host {
            self.callers.insert(caller.into_owned());
        } else {
            self.callers_truncated += calls;
        }
    }

    fn add_endpoint(&mut self, endpoint: EndpointStats, limits: &Limits, room: &mut usize) {
        let key = (endpoint.method.as_str(), endpoint.template.as_str());
        match self
            .endpoints
            .binary_search_by(|e| (e.method.as_str(), e.template.as_str()).cmp(&key))
        {
            Ok(index) => merge_endpoint(&mut self.endpoints[index], &endpoint),
            Err(_) if self.endpoints.len() >= limits.max_endpoints_per_host || *room == 0 => {
                self.endpoints_truncated += endpoint.calls;
            }
            Err(index) => {
                self.endpoints.insert(index, endpoint);
                *room -= 1;
            }
        }
    }
}

/// Whether traffic reached `host`: a call the gateway passed, with bytes sent or received or an
/// answer's status (a `204` to a `GET` has no body either way); an import's hosts count as
/// reached (many logs give no sizes). Once reached, a host stays so: counts only grow, and an
/// endpoint's status is only ever replaced by another.
pub(crate) fn reached(host: &DiscoveredHost) -> bool {
    host.calls > host.blocked_calls
        && (host.bytes_out > 0
            || host.bytes_in > 0
            || host.endpoints.iter().any(|e| e.last_status.is_some())
            || host.sources.contains(&ObservationSource::Import))
}

/// The longest method recorded as it is (registered ones are at most 17 bytes).
const MAX_METHOD_BYTES: usize = 32;
/// The longest caller name recorded whole, in characters.
const MAX_CALLER_CHARS: usize = 128;

/// A method as the inventory records it: upper case, or `OTHER` when it is longer than
/// [`MAX_METHOD_BYTES`] or not an HTTP token (an access log or HAR file is anyone's text: a
/// method with a line break in it would print a made-up endpoint row in `discover show`).
pub(crate) fn recorded_method(method: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if (1..=MAX_METHOD_BYTES).contains(&method.len()) && method.bytes().all(token) {
        method.to_ascii_uppercase()
    } else {
        "OTHER".to_owned()
    }
}

/// Whether `c`, in anyone's text, would act on a terminal or hide what is printed rather than
/// show: a control character (an escape, a line break), a bidirectional override or isolate
/// (U+202A–U+202E, U+2066–U+2069, which reorder what follows), or a zero-width one.
pub(crate) fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A caller name as the inventory records it: characters that act on a terminal or hide text
/// ([`hides_text`]) as `?`, and at most [`MAX_CALLER_CHARS`] characters, `…` ending a longer
/// one.
pub(crate) fn recorded_caller(caller: &str) -> std::borrow::Cow<'_, str> {
    if caller.len() <= MAX_CALLER_CHARS && !caller.chars().any(hides_text) {
        return std::borrow::Cow::Borrowed(caller);
    }
    let mut recorded: String = caller
        .chars()
        .take(MAX_CALLER_CHARS)
        .map(|c| if hides_text(c) { '?' } else { c })
        .collect();
    if caller.chars().nth(MAX_CALLER_CHARS).is_some() {
        recorded.push('…');
    }
    std::borrow::Cow::Owned(recorded)
}

/// Adds `other` into `into`: counts summed, earliest first seen, latest last seen, and the
/// status of whichever saw the later call.
pub(crate) fn merge_endpoint(into: &mut EndpointStats, other: &EndpointStats) {
    into.calls += other.calls;
    into.blocked_calls += other.blocked_calls;
    into.first_seen_ms = into.first_seen_ms.min(other.first_seen_ms);
    if other.last_status.is_some() && other.last_seen_ms >= into.last_seen_ms {
        into.last_status = other.last_status;
    }
    into.last_seen_ms = into.last_seen_ms.max(other.last_seen_ms);
}

/// Lower case, no trailing `.`, no IPv6 brackets.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Observations aggregated per (host, port), bounded by [`Limits`].
///
/// The gateway keeps one (behind a mutex), calls [`Inventory::record`] per call, and every few
/// seconds hands [`Inventory::drain`] to [`crate::Store::merge_delta`] on a blocking thread.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    hosts: BTreeMap<(String, u16), DiscoveredHost>,
    /// The hosts traffic has not reached ([`reached`]) by (last seen, host, port): the first is
    /// the one a reached newcomer replaces when the inventory is full, found without a scan.
    unreached: BTreeSet<(i64, String, u16)>,
    /// Endpoints kept, over all hosts (bounded by [`Limits::max_endpoints`]).
    endpoints: usize,
    limits: Limits,
    dropped_calls: u64,
}

impl Inventory {
    /// An empty inventory with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty inventory with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        Inventory {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Adds one call. An observation without a host is counted in [`Inventory::dropped_calls`].
    pub fn record(&mut self, observation: &Observation) {
        let host = normalize_host(&observation.host);
        if host.is_empty() {
            self.dropped_calls += 1;
            return;
        }
        self.add(
            (host, observation.port),
            observation.time_ms,
            |entry, limits, room| entry.record(observation, limits, room),
        );
    }

    /// Adds everything `other` holds (hosts, counts, overflow counters).
    pub fn merge(&mut self, other: Inventory) {
        self.dropped_calls += other.dropped_calls;
        for (key, host) in other.hosts {
            self.add(key, host.first_seen_ms, |entry, limits, room| {
                entry.merge_within(host, limits, room)
            });
        }
    }

    /// Applies `change` to the host `key`, a new entry first seen at `first_seen_ms` if there is
    /// none, and keeps the endpoint total and the unreached hosts up to date. A new host that
    /// does not fit under `max_hosts` takes the place of the least recently seen unreached one
    /// if traffic reached it, as the store does; otherwise its calls are dropped (counted).
    fn add(
        &mut self,
        key: (String, u16),
        first_seen_ms: i64,
        change: impl FnOnce(&mut DiscoveredHost, &Limits, &mut usize),
    ) {
        let mut room = self.limits.max_endpoints.saturating_sub(self.endpoints);
        if let Some(entry) = self.hosts.get_mut(&key) {
            let endpoints_before = entry.endpoints.len();
            let unreached_since = (!reached(entry)).then_some(entry.last_seen_ms);
            change(entry, &self.limits, &mut room);
            self.endpoints += entry.endpoints.len() - endpoints_before;
            if let Some(last_seen_ms) = unreached_since {
                let still_unreached = !reached(entry);
                if !still_unreached || entry.last_seen_ms != last_seen_ms {
                    let (host, port) = key;
                    self.unreached.remove(&(last_seen_ms, host.clone(), port));
                    if still_unreached {
                        self.unreached.insert((entry.last_seen_ms, host, port));
                    }
                }
            }
            return;
        }
        let mut entry = DiscoveredHost::new(&key.0, key.1, first_seen_ms);
        change(&mut entry, &self.limits, &mut room);
        let is_reached = reached(&entry);
        if self.hosts.len() >= self.limits.max_hosts && !(is_reached && self.evict_unreached()) {
            self.dropped_calls += entry.calls;
            return;
        }
        self.endpoints += entry.endpoints.len();
        if !is_reached {
            self.unreached
                .insert((entry.last_seen_ms, key.0.clone(), key.1));
        }
        self.hosts.insert(key, entry);
    }

    /// Removes the least recently seen host traffic did not reach, counting its calls as
    /// dropped. False when there is none.
    fn evict_unreached(&mut self) -> bool {
        let Some((_, host, port)) = self.unreached.pop_first() else {
            return false;
        };
        if let Some(victim) = self.hosts.remove(&(host, port)) {
            self.endpoints -= victim.endpoints.len();
            self.dropped_calls += victim.calls;
        }
        true
    }

    /// Takes everything recorded so far (the delta to persist), leaving this inventory empty
    /// with the same limits.
    pub fn drain(&mut self) -> Inventory {
        Inventory {
            hosts: std::mem::take(&mut self.hosts),
            unreached: std::mem::take(&mut self.unreached),
            endpoints: std::mem::take(&mut self.endpoints),
            limits: self.limits,
            dropped_calls: std::mem::take(&mut self.dropped_calls),
        }
    }

    /// Calls not recorded because their host did not fit under `max_hosts` (or had no host),
    /// and those of unreached hosts a reached one replaced.
    pub fn dropped_calls(&self) -> u64 {
        self.dropped_calls
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.dropped_calls == 0
    }

    /// Number of distinct (host, port) pairs.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The hosts, sorted by (host, port).
    pub fn hosts(&self) -> impl Iterator<Item = &DiscoveredHost> {
        self.hosts.values()
    }

    pub fn get(&self, host: &str, port: u16) -> Option<&DiscoveredHost> {
        self.hosts.get(&(normalize_host(host), port))
    }

    /// The hosts, by calls (most first), then host and port.
    pub fn into_hosts(self) -> Vec<DiscoveredHost> {
        let mut hosts: Vec<DiscoveredHost> = self.hosts.into_values().collect();
        sort_by_calls(&mut hosts);
        hosts
    }
}

pub(crate) fn sort_by_calls(hosts: &mut [DiscoveredHost]) {
    hosts.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.port.cmp(&b.port))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an access log or HAR file says is anyone's text: a method that is not an HTTP token
    /// or is longer than any real one is `OTHER`, and a caller's control characters are `?`
    /// and its length bounded, so `discover show` prints no escape and no made-up row.
    #[test]
    fn methods_and_callers_from_anyones_text_are_recorded_harmless() {
        let mut inventory = Inventory::new();
        let forged = "GET\n  POST     /v1/fake-admin-endpoint   999\n  GET";
        for (caller, method) in [
            ("ci\u{1b}[2Jbot\n[[grants]]", forged),
            ("admin\u{202E}toor\u{200B}", "GET"),
            (&*"c".repeat(300), &*"M".repeat(33)),
            ("ok", "propfind"),
        ] {
            inventory.record(&call("api.example.com", caller, method, "/v1/x", 1));
        }
        let host = inventory.hosts().next().unwrap();
        let methods: Vec<&str> = host.endpoints.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(methods, ["GET", "OTHER", "PROPFIND"]);
        let callers: Vec<&String> = host.callers.iter().collect();
        assert!(
            callers.contains(&&"ci?[2Jbot?[[grants]]".to_string()),
            "{callers:?}"
        );
        assert!(
            callers.contains(&&format!("{}…", "c".repeat(128))),
            "{callers:?}"
        );
        assert!(callers.contains(&&"ok".to_string()), "{callers:?}");
        assert!(callers.contains(&&"admin?toor?".to_string()), "{callers:?}");
    }

    fn call(host: &str, caller: &str, method: &str, path: &str, time_ms: i64) -> Observation {
        Observation {
            host: host.into(),
            port: 443,
            scheme: None,
            caller: Some(caller.into()),
            method: Some(method.into()),
            path: Some(path.into()),
            status: Some(200),
            bytes_out: 100,
            bytes_in: 1000,
            time_ms,
            blocked: false,
            source: ObservationSource::Proxy,
        }
    }

    #[test]
    fn aggregates_per_host_and_endpoint() {
        let mut inventory = Inventory::new();
        inventory.record(&call(
            "API.Stripe.com.",
            "checkout",
            "post",
            "/v1/charges",
            2_000,
        ));
        inventory.record(&call(
            "api.stripe.com",
            "billing",
            "GET",
            "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15",
            1_000,
        ));
        let mut blocked = call(
            "api.stripe.com",
            "checkout",
            "GET",
            "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B16?expand=x",
            3_000,
        );
        blocked.blocked = true;
        blocked.status = None;
        inventory.record(&blocked);
        inventory.record(&call(
            "api.openai.com",
            "bot",
            "POST",
            "/v1/chat/completions",
            5_000,
        ));

        assert_eq!(inventory.len(), 2);
        let stripe = inventory.get("api.stripe.com", 443).unwrap();
        assert_eq!((stripe.calls, stripe.blocked_calls), (3, 1));
        assert_eq!((stripe.first_seen_ms, stripe.last_seen_ms), (1_000, 3_000));
        assert_eq!((stripe.bytes_out, stripe.bytes_in), (300, 3000));
        assert_eq!(
            stripe.callers.iter().collect::<Vec<_>>(),
            ["billing", "checkout"]
        );
        let get = stripe.endpoint("GET", "/v1/charges/{id}").unwrap();
        assert_eq!(
            (get.calls, get.blocked_calls, get.last_status),
            (2, 1, Some(200))
        );
        assert_eq!(stripe.endpoint("POST", "/v1/charges").unwrap().calls, 1);
        let hosts = inventory.into_hosts();
        assert_eq!(hosts[0].host, "api.stripe.com");
        assert_eq!(hosts[1].host, "api.openai.com");
    }

    #[test]
    fn caps_count_what_did_not_fit() {
        let mut inventory = Inventory::with_limits(Limits {
            max_hosts: 2,
            max_endpoints_per_host: 3,
            max_callers_per_host: 2,
            max_endpoints: 4,
        });
        for index in 0..10 {
            inventory.record(&call(
                "api.x.com",
                &format!("caller-{index}"),
                "GET",
                &format!("/v1/things/{index}/part{}", index % 5),
                index,
            ));
        }
        // The second host's second endpoint is one too many in all.
        inventory.record(&call("b.example.com", "c", "GET", "/", 1));
        inventory.record(&call("b.example.com", "c", "GET", "/b", 1));
        inventory.record(&call("b.example.com", "c", "GET", "/", 2));
        inventory.record(&call("c.example.com", "c", "GET", "/", 1));
        inventory.record(&call("c.example.com", "c", "GET", "/", 2));
        let host = inventory.get("api.x.com", 443).unwrap();
        assert_eq!(host.calls, 10);
        assert_eq!(host.callers.len(), 2);
        assert_eq!(host.callers_truncated, 8);
        assert_eq!(host.endpoints.len(), 3);
        let kept: u64 = host.endpoints.iter().map(|e| e.calls).sum();
        assert_eq!(kept + host.endpoints_truncated, 10);
        let b = inventory.get("b.example.com", 443).unwrap();
        assert_eq!(b.endpoints.len(), 1);
        assert_eq!(
            (b.endpoint("GET", "/").unwrap().calls, b.endpoints_truncated),
            (2, 1)
        );
        assert_eq!(inventory.len(), 2);
        assert_eq!(inventory.dropped_calls(), 2);
        // Drained, the inventory has room for endpoints again.
        let mut inventory = Inventory::with_limits(*inventory.limits());
        for index in 0..5 {
            inventory.record(&call(
                "d.example.com",
                "c",
                "GET",
                &format!("/{index}/a"),
                1,
            ));
            inventory.record(&call(
                "d.example.com",
                "c",
                "GET",
                &format!("/{index}/b"),
                1,
            ));
            let delta = inventory.drain();
            assert_eq!(delta.get("d.example.com", 443).unwrap().endpoints.len(), 2);
        }
    }

    /// A burst of refused calls to made-up names fills the hosts; a destination traffic reached
    /// then takes the least recently seen one's place (its calls counted as dropped), as in the
    /// store. A newcomer traffic did not reach is dropped; a host that became reached is no
    /// longer replaced.
    #[test]
    fn when_full_a_reached_host_replaces_an_unreached_one() {
        let mut inventory = Inventory::with_limits(Limits {
            max_hosts: 3,
            ..Limits::default()
        });
        let refused = |host: &str, time: i64| {
            let mut observation = call(host, "prober", "GET", "/", time);
            observation.blocked = true;
            observation
        };
        inventory.record(&refused("r1.invalid", 1));
        inventory.record(&refused("r2.invalid", 2));
        inventory.record(&refused("r3.invalid", 3));
        // r1 seen again, later: r2 is now the least recently seen.
        inventory.record(&refused("r1.invalid", 4));
        inventory.record(&refused("r4.invalid", 5));
        assert_eq!(inventory.dropped_calls(), 1);
        inventory.record(&call("api.rogue.example", "app", "POST", "/v1/upload", 6));
        assert!(inventory.get("api.rogue.example", 443).is_some());
        assert!(inventory.get("r2.invalid", 443).is_none());
        assert_eq!(inventory.dropped_calls(), 2);
        // r3 is reached now (the gateway passed a call and it answered): r1 goes instead.
        inventory.record(&call("r3.invalid", "app", "GET", "/", 7));
        inventory.record(&call("api.other.example", "app", "GET", "/v1/x", 8));
        let names: Vec<&str> = inventory.hosts().map(|h| h.host.as_str()).collect();
        assert_eq!(
            names,
            ["api.other.example", "api.rogue.example", "r3.invalid"]
        );
        assert_eq!(inventory.dropped_calls(), 4);
        // Nothing left to replace: a reached newcomer is counted, not kept.
        inventory.record(&call("api.third.example", "app", "GET", "/v1/x", 9));
        assert_eq!(inventory.len(), 3);
        assert_eq!(inventory.dropped_calls(), 5);
        // Merging applies the same rule.
        let mut full = Inventory::with_limits(*inventory.limits());
        for host in ["r5.invalid", "r6.invalid", "r7.invalid"] {
            full.record(&refused(host, 1));
        }
        full.merge(inventory.drain());
        assert_eq!(full.len(), 3);
        assert!(full.get("r5.invalid", 443).is_none());
        assert!(full.get("api.rogue.example", 443).is_some());
        // Its 5 dropped calls, and r5, r6 and r7's.
        assert_eq!(full.dropped_calls(), 5 + 3);
    }

    #[test]
    fn drain_and_merge() {
        let mut live = Inventory::new();
        live.record(&call("api.x.com", "a", "GET", "/v1/a", 10));
        let first = live.drain();
        assert!(live.is_empty());
        live.record(&call("api.x.com", "b", "GET", "/v1/a", 5));
        live.record(&call("api.y.com", "b", "GET", "/v1/b", 20));
        let mut total = first;
        total.merge(live.drain());
        let x = total.get("api.x.com", 443).unwrap();
        assert_eq!((x.calls, x.first_seen_ms, x.last_seen_ms), (2, 5, 10));
        assert_eq!(x.callers.len(), 2);
        assert_eq!(x.endpoint("GET", "/v1/a").unwrap().calls, 2);
        assert_eq!(total.len(), 2);
    }

    #[test]
    fn tunnels_and_anonymous_calls_count_on_the_host_only() {
        let mut inventory = Inventory::new();
        inventory.record(&Observation {
            host: "[2001:db8::1]".into(),
            port: 8443,
            scheme: None,
            caller: None,
            method: Some("CONNECT".into()),
            path: None,
            status: None,
            bytes_out: 0,
            bytes_in: 0,
            time_ms: 1,
            blocked: true,
            source: ObservationSource::Import,
        });
        let host = inventory.get("2001:db8::1", 8443).unwrap();
        assert_eq!(host.authority(), "[2001:db8::1]:8443");
        assert!(host.endpoints.is_empty() && host.callers.is_empty());
        assert_eq!(host.blocked_calls, 1);
    }

    #[test]
    fn json_shape_is_stable() {
        let mut inventory = Inventory::new();
        let mut seen = call("api.x.com", "a", "GET", "/v1/a/123", 10);
        seen.scheme = Some(Scheme::Https);
        inventory.record(&seen);
        let json = serde_json::to_value(inventory.into_hosts()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "host": "api.x.com", "port": 443,
                "first_seen_ms": 10, "last_seen_ms": 10,
                "calls": 1, "blocked_calls": 0, "bytes_out": 100, "bytes_in": 1000,
                "callers": ["a"], "callers_truncated": 0,
                "endpoints": [{
                    "method": "GET", "template": "/v1/a/{id}", "calls": 1, "blocked_calls": 0,
                    "first_seen_ms": 10, "last_seen_ms": 10, "last_status": 200
                }],
                "endpoints_truncated": 0,
                "sources": ["proxy"],
                "schemes": ["https"]
            }])
        );
    }
}
