//! The compiled configuration: everything the data plane needs, built once per config version
//! and swapped atomically on reload. In-flight calls keep the version they started with.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderName, HeaderValue};
use postern_config::{
    Config, CredentialConfig, CredentialKind, IntegrationConfig, KeyProblem, SecretSource,
};
use postern_policy::{GrantSpec, IntegrationOps, LookupMap, OperationTable, PolicyEngine};
use postern_vault::{Vault, VaultError};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::oauth::TokenSource;
use crate::upstream::{build_client, CaFileError, UpstreamClient, UpstreamOptions};

pub type CallerLimiter = DefaultKeyedRateLimiter<Arc<str>>;

/// (requests_per_second, burst) an integration's limiter was built with.
type QuotaKey = (u32, u32);

fn quota_key(limit: &postern_config::RateLimitConfig) -> QuotaKey {
    (limit.requests_per_second, limit.burst)
}

/// Rate-limit state survives reloads when an integration's quota is unchanged. Kept by
/// integration and quota, so a build that fails after making a limiter for a new quota does
/// not take the place of the one the running config uses; [`LimiterCache::retain`] drops what
/// a committed config no longer uses.
#[derive(Default)]
pub struct LimiterCache {
    limiters: Mutex<HashMap<(String, QuotaKey), Arc<CallerLimiter>>>,
}

impl LimiterCache {
    /// Keeps only the limiters `committed` (the runtime swapped in) uses, by integration name
    /// and quota.
    pub fn retain_used(&self, committed: &Runtime) {
        self.retain(|name, quota| {
            let limit = committed
                .integrations
                .get(name)
                .and_then(|integration| integration.config.rate_limit);
            limit.as_ref().map(quota_key) == Some(quota)
        });
    }

    fn retain(&self, in_use: impl Fn(&str, QuotaKey) -> bool) {
        let mut limiters = self.limiters.lock().expect("limiter cache lock");
        limiters.retain(|(name, quota), _| in_use(name, *quota));
    }

    fn get(
        &self,
        integration: &str,
        limit: &postern_config::RateLimitConfig,
    ) -> Arc<CallerLimiter> {
        let (rps, burst) = quota_key(limit);
        let mut limiters = self.limiters.lock().expect("limiter cache lock");
        limiters
            .entry((integration.to_string(), (rps, burst)))
            .or_insert_with(|| {
                let quota = Quota::per_second(NonZeroU32::new(rps.max(1)).expect("nonzero"))
                    .allow_burst(NonZeroU32::new(burst.max(1)).expect("nonzero"));
                Arc::new(RateLimiter::keyed(quota))
            })
            .clone()
    }
}

/// An integration's cached client: (its network settings, the SHA-256 of the `ca_file` contents
/// it was built from, the client).
type CachedClient = (String, Option<[u8; 32]>, UpstreamClient);

/// Upstream pools survive reloads (and vault refreshes) when an integration's network settings
/// are unchanged, so a rotation does not drop warm connections. The cache also holds the
/// resolver every vendor dial uses (the system's by default), fixed for the gateway's life.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<String, CachedClient>>,
    resolver: Option<Arc<dyn postern_netguard::Resolve>>,
    /// The system resolver's lookups in flight for integrations' vendors, whose names the
    /// operator wrote ([`VENDOR_LOOKUPS`]), and for the forward proxy's hosts, which callers
    /// name ([`PROXY_LOOKUPS`], at most [`PROXY_LOOKUPS_PER_CALLER`] of them one caller's):
    /// apart, so that callers naming hosts whose name servers never answer cannot hold up the
    /// lookups of the integrations' vendors, and one such caller not the other callers'.
    lookups: LookupSlots,
    /// Postern's own listening sockets, which no dial may reach.
    own_listeners: Arc<[std::net::SocketAddr]>,
}

/// System-resolver lookups in flight at once for integrations' vendors (a quarter of tokio's
/// 512 blocking threads).
pub const VENDOR_LOOKUPS: usize = 128;
/// System-resolver lookups in flight at once for the forward proxy's hosts.
pub const PROXY_LOOKUPS: usize = 64;
/// Of those, in flight at once for one caller's proxy calls (a quarter): a caller naming hosts
/// whose name servers never answer fills its own share only, so it takes four such callers to
/// fill the pool; a caller whose names do answer (in milliseconds) cannot come near it.
pub const PROXY_LOOKUPS_PER_CALLER: usize = PROXY_LOOKUPS / 4;

struct LookupSlots {
    vendors: postern_netguard::Lookups,
    proxy: postern_netguard::Lookups,
}

impl Default for LookupSlots {
    fn default() -> Self {
        LookupSlots {
            vendors: postern_netguard::Lookups::new(VENDOR_LOOKUPS),
            proxy: postern_netguard::Lookups::new(PROXY_LOOKUPS)
                .per_caller(PROXY_LOOKUPS_PER_CALLER),
        }
    }
}

impl ClientCache {
    /// A cache whose clients (and the forward proxy's dials) look vendor hosts up with
    /// `resolver` (`None`: the system resolver).
    pub fn new(resolver: Option<Arc<dyn postern_netguard::Resolve>>) -> Self {
        ClientCache {
            resolver,
            ..ClientCache::default()
        }
    }

    /// The same cache, its guards refusing dials that reach `listeners` (the gateway's own).
    pub fn with_own_listeners(mut self, listeners: Vec<std::net::SocketAddr>) -> Self {
        self.own_listeners = Arc::from(listeners);
        self
    }

    /// An SSRF guard for an integration's `allow_private_networks`, resolving with this
    /// cache's resolver.
    pub fn guard(&self, allow_private_networks: Vec<ipnet::IpNet>) -> postern_netguard::Guard {
        postern_netguard::Guard::new(allow_private_networks)
            .with_resolver(self.resolver.clone())
            .with_lookups(self.lookups.vendors.clone())
            .with_own_listeners(self.own_listeners.clone())
    }

    /// The forward proxy's SSRF guard: [`ClientCache::guard`] with the proxy's own lookups,
    /// each caller bounded to its share of them (dials name their caller: [`crate::upstream::dial`]).
    pub fn proxy_guard(
        &self,
        allow_private_networks: Vec<ipnet::IpNet>,
    ) -> postern_netguard::Guard {
        self.guard(allow_private_networks)
            .with_lookups(self.lookups.proxy.clone())
    }
    /// Forgets the integrations a reload removed: their pools, and the idle vendor connections
    /// in them, are dropped.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut clients = self.clients.lock().expect("client cache lock");
        clients.retain(|name, _| keep(name));
    }

    /// What the cache holds now, to put back with [`ClientCache::restore`] if a build that
    /// adds to it is refused: a rejected reload must leave nothing behind (a client trusting
    /// its `ca_file`'s new contents would otherwise be taken by the next vault refresh).
    pub(crate) fn snapshot(&self) -> HashMap<String, CachedClient> {
        self.clients.lock().expect("client cache lock").clone()
    }

    pub(crate) fn restore(&self, entries: HashMap<String, CachedClient>) {
        *self.clients.lock().expect("client cache lock") = entries;
    }

    /// The integration's client: the cached one while its settings are unchanged, else a new
    /// one. `reread_ca`: a reload, which reads `ca_file` again and keeps the cached client only
    /// if its contents are unchanged (a root removed, or a damaged file, which the rebuild then
    /// refuses); a vault refresh does not (a file being rewritten must not hold up a revocation).
    fn get(
        &self,
        integration: &IntegrationConfig,
        client_auth: Option<ClientAuth>,
        reread_ca: bool,
    ) -> anyhow::Result<UpstreamClient> {
        let key = format!(
            "{:?}|{}|{:?}|{}|{}|{:?}",
            integration.allow_private_networks,
            integration.allow_plaintext,
            integration.ca_file,
            integration.connect_timeout_ms,
            integration.idle_timeout_ms,
            client_auth.as_ref().map(|auth| &auth.fingerprint)
        );
        let mut clients = self.clients.lock().expect("client cache lock");
        let cached = clients
            .get(&integration.name)
            .filter(|(cached_key, _, _)| *cached_key == key);
        if let (Some((_, _, client)), false) = (cached, reread_ca) {
            return Ok(client.clone());
        }
        // The file is read once: its hash is of the bytes a new client would trust.
        let ca_file = match &integration.ca_file {
            Some(path) => Some((
                path.as_path(),
                crate::tls::read_file(path).map_err(CaFileError)?,
            )),
            None => None,
        };
        let ca_hash = ca_file
            .as_ref()
            .map(|(_, contents)| <[u8; 32]>::from(Sha256::digest(contents)));
        if let Some((_, cached_ca, client)) = cached {
            if ca_hash == *cached_ca {
                return Ok(client.clone());
            }
        }
        let client = build_client(UpstreamOptions {
            guard: self.guard(integration.allow_private_networks.clone()),
            allow_plaintext: integration.allow_plaintext,
            ca_file: ca_file
                .as_ref()
                .map(|(path, contents)| (*path, contents.as_slice())),
            connect_timeout: Duration::from_millis(integration.connect_timeout_ms),
            idle_timeout: Duration::from_millis(integration.idle_timeout_ms),
            client_auth: client_auth.map(|auth| (auth.chain, auth.key)),
        })?;
        clients.insert(integration.name.clone(), (key, ca_hash, client.clone()));
        Ok(client)
    }
}

/// OAuth2 token sources survive rebuilds while their settings, client secret and network
/// settings are unchanged, so a vault refresh or config reload does not discard a valid token.
#[derive(Default)]
pub struct TokenSourceCache {
    sources: Mutex<HashMap<String, (String, Arc<TokenSource>)>>,
}

impl TokenSourceCache {
    /// Forgets the integrations a reload removed, with the vendor access tokens they cached.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut sources = self.sources.lock().expect("token source cache lock");
        sources.retain(|name, _| keep(name));
    }

    /// As [`ClientCache::snapshot`]: a refused build's new sources are not kept.
    pub(crate) fn snapshot(&self) -> HashMap<String, (String, Arc<TokenSource>)> {
        self.sources
            .lock()
            .expect("token source cache lock")
            .clone()
    }

    pub(crate) fn restore(&self, entries: HashMap<String, (String, Arc<TokenSource>)>) {
        *self.sources.lock().expect("token source cache lock") = entries;
    }

    fn get(
        &self,
        integration: &IntegrationConfig,
        oauth2: &postern_config::OAuth2Config,
        client_secret: Zeroizing<String>,
        client: &UpstreamClient,
    ) -> Arc<TokenSource> {
        let key = format!(
            "{oauth2:?}|{}|{}",
            hex::encode(Sha256::digest(client_secret.as_bytes())),
            integration.request_timeout_ms
        );
        let mut sources = self.sources.lock().expect("token source lock");
        // The same settings and secret, and the same network settings (guard, CA, client
        // certificate: the integration's client is rebuilt when they change).
        if let Some((cached_key, source)) = sources.get(&integration.name) {
            if *cached_key == key && source.uses(client) {
                return source.clone();
            }
        }
        let source = Arc::new(TokenSource::new(
            &integration.name,
            oauth2.clone(),
            client_secret,
            client.clone(),
            Duration::from_millis(integration.request_timeout_ms),
        ));
        if let Some((_, older)) = sources.get(&integration.name) {
            source.inherit_echoes(older);
        }
        sources.insert(integration.name.clone(), (key, source.clone()));
        source
    }
}

/// Everything a build reuses or reads besides the config.
pub struct BuildInputs<'a> {
    pub admin_token_sha256: [u8; 32],
    pub limiters: &'a LimiterCache,
    pub clients: &'a ClientCache,
    pub token_sources: &'a TokenSourceCache,
    /// The credential vault; `None` only where no vault is opened (`postern check`).
    pub vault: Option<&'a Vault>,
    /// The running runtime, when only the vault changed (the config is its own): its compiled
    /// policies and scan rules are kept, not read from their files again, which change only
    /// at a reload: a vault change neither picks up nor fails on a half-edited policies or
    /// scan_rules file.
    pub reuse: Option<&'a Runtime>,
    /// The listener's TLS, read by whoever builds ([`crate::tls::listener_config`]): before
    /// anything is written at start, from the new config at a reload, the running one's for a
    /// vault change, from the running config's files when one of them changed.
    pub listener_tls: Option<Arc<crate::tls::ListenerTls>>,
}

/// Why an integration's credential cannot be injected. Never holds the value.
#[derive(Debug, Clone)]
pub struct CredentialProblem {
    /// `credential_revoked` or `credential_unavailable`: the refusal's reason code.
    pub code: &'static str,
    pub why: String,
}

/// How a vendor credential is put on the request.
#[derive(Clone)]
pub enum Injector {
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        param: String,
        encoded_value: Zeroizing<String>,
    },
    /// `Authorization: Bearer <token>` from an OAuth2 token source.
    OAuth2(Arc<TokenSource>),
}

/// A note when an integration's upstream is an address (not a name) that the SSRF guard
/// refuses as it is configured: every call would be answered `502 upstream_address_denied`.
fn refused_upstream_address(
    integration: &postern_config::IntegrationConfig,
    runtime: &IntegrationRuntime,
) -> Option<String> {
    let ip: std::net::IpAddr = match integration.upstream.host()? {
        url::Host::Ipv4(ip) => ip.into(),
        url::Host::Ipv6(ip) => ip.into(),
        url::Host::Domain(_) => return None,
    };
    let denied = runtime.client.guard().check(ip).err()?;
    Some(format!(
        "integration {}: its upstream {ip} is a {} address, which the SSRF guard refuses: every call would be answered 502 upstream_address_denied; if the vendor is meant to be there, list it in the integration's allow_private_networks (\"{ip}/{}\")",
        integration.name,
        denied.class.as_str(),
        if ip.is_ipv4() { 32 } else { 128 }
    ))
}

/// The upstream's fixed parts.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix of the upstream URL without trailing '/', often empty.
    pub path_prefix: String,
    /// `scheme://host:port`, for comparing redirect targets.
    pub origin: String,
    /// The `Host` header every call to it carries: host, and port when not the scheme's default.
    pub host_header: http::HeaderValue,
}

impl IntegrationRuntime {
    /// An OAuth2 client's current access tokens, in the forms a vendor may echo them; `None`
    /// for another kind of credential.
    pub fn oauth_echoes(&self) -> Option<arc_swap::Guard<crate::echo::Needles>> {
        match &self.credential {
            Ok(Some(Injector::OAuth2(source))) => Some(source.echoes()),
            _ => None,
        }
    }

    /// The upstream's port (explicit, or the scheme's default).
    pub fn upstream_port(&self) -> u16 {
        self.upstream.authority.port_u16().unwrap_or(
            if self.upstream.scheme == http::uri::Scheme::HTTP {
                80
            } else {
                443
            },
        )
    }
}

pub struct IntegrationRuntime {
    pub name: Arc<str>,
    pub config: IntegrationConfig,
    pub operations: OperationTable,
    /// `Err` holds why the credential cannot be injected (never the value).
    pub credential: Result<Option<Injector>, CredentialProblem>,
    /// The injected secret as it could appear in a vendor's echo (raw and percent-encoded, and
    /// a Basic pair's base64 as sent): response headers containing it are dropped before they
    /// reach the caller, and bodies redacted or cut ([`crate::echo`]). An OAuth2 token's are
    /// its source's ([`TokenSource::echoes`]).
    pub secret_needles: Arc<Vec<Zeroizing<Vec<u8>>>>,
    /// The vault credential this integration injects, if any, and when it was last used.
    pub vault_secret: Option<String>,
    pub last_used_ms: AtomicI64,
    pub limiter: Option<Arc<CallerLimiter>>,
    pub client: UpstreamClient,
    pub upstream: UpstreamTarget,
    /// Headers removed from every forwarded request, lowercase.
    pub stripped_headers: Vec<HeaderName>,
    /// Why the client certificate in use is not the vault's current pair (one half of it
    /// rotated, the other not yet): said at each rebuild until the other half follows.
    pub client_certificate_note: Option<String>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    callers_by_token: LookupMap<[u8; 32], Arc<str>>,
    callers_by_spiffe: LookupMap<String, Arc<str>>,
    /// The vault generation this runtime was built from.
    pub vault_generation: i64,
    pub integrations: LookupMap<String, Arc<IntegrationRuntime>>,
    pub policy: Arc<PolicyEngine>,
    pub admin_token_sha256: [u8; 32],
    /// The payload scanner (built-in rules, extended by `scan_rules`).
    pub scanner: Arc<postern_scan::Scanner>,
    /// Readiness problems, e.g. a credential that could not be loaded.
    pub problems: Vec<String>,
    /// Forward-proxy mode: host policy, registered hosts, the guard for unregistered targets.
    pub proxy: ProxyRuntime,
    /// The listener's TLS (`tls_cert`, `tls_key`, `client_ca`, `client_crl`), read at start and
    /// again at each reload; `None` on a plain listener.
    pub listener_tls: Option<Arc<crate::tls::ListenerTls>>,
}

/// What a connection's client certificate says of its caller ([`Runtime::caller_by_certificate`]).
pub enum ByCertificate {
    /// A registered caller's SPIFFE ID, the certificate valid and trusted.
    Caller(Arc<str>),
    /// The certificate has expired, or the listener's trust no longer verifies it: the
    /// connection is to close, and the client to reconnect with its current one.
    Lapsed,
    /// A valid, trusted certificate whose SPIFFE ID names no caller in the config (none was
    /// added, or a reload removed it): the connection carries no identity but a caller token.
    Unregistered,
    /// No certificate.
    None,
}

/// The compiled `[proxy]` section and the `hosts` of integrations.
pub struct ProxyRuntime {
    pub config: postern_config::ProxyConfig,
    pub policy: postern_policy::HostPolicy,
    /// Registered hosts: exact names first, then wildcards, each in config order; the first
    /// matching pattern wins.
    hosts: Vec<(postern_policy::HostPattern, Arc<IntegrationRuntime>)>,
    /// Pool for plain-HTTP requests to unregistered hosts (absolute-form); its guard
    /// (`[proxy] allow_private_networks`) also guards their CONNECT tunnels.
    pub plain_client: UpstreamClient,
}

impl ProxyRuntime {
    /// The integration whose `hosts` match `host`.
    pub fn integration_for_host(&self, host: &str) -> Option<&Arc<IntegrationRuntime>> {
        let host = postern_policy::normalize_host(host);
        self.hosts
            .iter()
            .find(|(pattern, _)| pattern.matches(&host))
            .map(|(_, integration)| integration)
    }
}

/// The config's Cedar policies (grants and the `policies` file) and its scan rules, compiled.
fn compile_rules(
    config: &Config,
) -> anyhow::Result<(Arc<PolicyEngine>, Arc<postern_scan::Scanner>)> {
    let custom_policies = match &config.gateway.policies {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
            KeyProblem::gateway(
                "policies",
                format!("reading policies file {}: {error}", path.display()),
                "make the file readable by postern, or remove `policies`",
            )
        })?),
        None => None,
    };
    let callers: Vec<String> = config.callers.iter().map(|c| c.name.clone()).collect();
    let integration_ops: Vec<IntegrationOps> = config
        .integrations
        .iter()
        .map(|i| IntegrationOps {
            integration: i.name.clone(),
            operations: i.operations.iter().map(|o| o.id.clone()).collect(),
        })
        .collect();
    let grants: Vec<GrantSpec> = config
        .grants
        .iter()
        .map(|g| GrantSpec {
            caller: g.caller.clone(),
            integration: g.integration.clone(),
            operations: g.operations.clone(),
        })
        .collect();
    let policy = PolicyEngine::compile(
        &callers,
        &integration_ops,
        &grants,
        custom_policies.as_deref(),
    )
    .map_err(|error| match config.gateway.policies {
        Some(_) => anyhow::Error::new(KeyProblem::gateway(
            "policies",
            format!("policies: {error}"),
            "correct the Cedar policy where the message says (`postern check --show-policies` prints what the grants compile to)",
        )),
        None => anyhow::anyhow!("policies: {error}"),
    })?;

    let scanner = match &config.gateway.scan_rules {
        None => Arc::new(postern_scan::Scanner::default()),
        Some(path) => {
            let problem =
                |message: String, fix: &str| KeyProblem::gateway("scan_rules", message, fix);
            let text = std::fs::read_to_string(path).map_err(|error| {
                problem(
                    format!("reading scan_rules {}: {error}", path.display()),
                    "make the file readable by postern, or remove `scan_rules`",
                )
            })?;
            Arc::new(
                postern_scan::Scanner::with_rule_file(&text).map_err(|error| {
                    problem(
                        format!("scan_rules {}: {error}", path.display()),
                        "correct the rule file (its format: docs/DATA.md)",
                    )
                })?,
            )
        }
    };
    Ok((Arc::new(policy), scanner))
}

impl Runtime {
    /// What an operator should be told of this runtime: each integration's readiness problem,
    /// refused upstream address and credential file other users may read, the listener's key
    /// file if others may read it, then the custom policies' notes.
    pub fn warnings(&self) -> Vec<String> {
        self.placed_warnings()
            .into_iter()
            .map(|(message, _)| message)
            .collect()
    }

    /// [`Runtime::warnings`], each with the key it is about (an integration's `credential` or
    /// `upstream`, `[gateway] policies`), which `Config::places` can place at a line and column:
    /// what `postern check` prints.
    pub fn placed_warnings(&self) -> Vec<(String, KeyProblem)> {
        let mut placed = Vec::new();
        for integration in &self.config.integrations {
            let Some(runtime) = self.integrations.get(integration.name.as_str()) else {
                continue;
            };
            if let Err(problem) = &runtime.credential {
                let message = format!("integration {}: {}", integration.name, problem.why);
                let key = KeyProblem::integration(&integration.name, "credential", &message, "");
                placed.push((message, key));
            }
            if let Some(message) = refused_upstream_address(integration, runtime) {
                let key = KeyProblem::integration(&integration.name, "upstream", &message, "");
                placed.push((message, key));
            }
            if let Some(message) = &runtime.client_certificate_note {
                let key =
                    KeyProblem::integration(&integration.name, "client_certificate", message, "");
                placed.push((message.clone(), key));
            }
            let file = integration
                .credential
                .as_ref()
                .and_then(|c| match &c.source {
                    SecretSource::File(path) => Some(path),
                    _ => None,
                });
            if let Some(problem) = file.and_then(|path| postern_keyfile::readable_by_others(path)) {
                let message = format!(
                    "integration {}: the credential file {problem}",
                    integration.name
                );
                let key = KeyProblem::integration(&integration.name, "credential", &message, "");
                placed.push((message, key));
            }
        }
        let tls_key = self.config.gateway.tls_key.as_deref();
        if let Some(problem) = tls_key.and_then(postern_keyfile::readable_by_others) {
            let message = format!("the listener's private key {problem}");
            let key = KeyProblem::gateway("tls_key", &message, "");
            placed.push((message, key));
        }
        for message in self.policy.notes() {
            let key = KeyProblem::gateway("policies", &message, "");
            placed.push((message, key));
        }
        for message in self.listener_tls.iter().flat_map(|tls| &tls.crl_notes) {
            let key = KeyProblem::gateway("client_crl", message, "");
            placed.push((message.clone(), key));
        }
        placed
    }

    pub fn build(config: Config, inputs: &BuildInputs<'_>) -> anyhow::Result<Runtime> {
        // Read the vault's generation first: a change made while building triggers another build.
        let vault_generation = match inputs.vault {
            Some(vault) => vault.generation().unwrap_or(-1),
            None => 0,
        };
        // A caller's token never opens the admin API: the config's callers, here; the vault's
        // tokens, below.
        crate::refuse_admin_token_for_callers(&config, &inputs.admin_token_sha256)?;
        let (store_tokens, refused_rows) = match inputs.vault {
            Some(vault) => {
                let checked = vault.caller_tokens_checked().map_err(|error| {
                    anyhow::anyhow!("reading caller tokens from the vault: {error}")
                })?;
                checked.refused.iter().for_each(|row| row.warn());
                (checked.tokens, checked.refused)
            }
            None => (Vec::new(), Vec::new()),
        };
        // Rows whose MAC fails grant nothing, but may still deny: a config token named by one
        // (a revocation whose row was altered, `revoked_ms` set back to NULL, or one an older
        // `postern` wrote without a MAC) is not accepted, so altering the file cannot bring a
        // revoked token back.
        let distrusted: HashSet<[u8; 32]> = refused_rows
            .iter()
            .filter_map(|row| row.token_sha256)
            .collect();
        let revoked: HashSet<[u8; 32]> = store_tokens
            .iter()
            .filter(|t| t.revoked)
            .map(|t| t.token_sha256)
            .collect();
        let mut callers_by_token = LookupMap::default();
        let mut callers_by_spiffe = LookupMap::default();
        // The callers whose tokens live in the vault: `token_store = true`, or a caller whose
        // config token `postern callers rotate|revoke` revoked (the vault took its tokens over
        // without the config being edited). Another caller's vault tokens do not count: its
        // config says how it authenticates (a new `token_sha256`, a SPIFFE ID alone), and a
        // token imported or issued before that, or for an earlier caller of the same name,
        // must not outlive it.
        let mut vault_callers: HashSet<&str> = HashSet::new();
        for caller in &config.callers {
            let name: Arc<str> = Arc::from(caller.name.as_str());
            if caller.token_store {
                vault_callers.insert(&caller.name);
            }
            if let Some(hash) = &caller.token_sha256 {
                let mut key = [0u8; 32];
                hex::decode_to_slice(hash, &mut key).map_err(|_| {
                    anyhow::anyhow!("caller {}: token_sha256 is not 64 hex digits", caller.name)
                })?;
                if revoked.contains(&key) {
                    vault_callers.insert(&caller.name);
                } else if distrusted.contains(&key) {
                    tracing::warn!(
                        caller = %caller.name,
                        "the caller's token_sha256 is named by a caller-token row of the vault whose MAC fails (altered without the master key, or written by an older postern); the token is not accepted: give the caller a new token (`postern callers rotate {}`)",
                        caller.name
                    );
                } else {
                    callers_by_token.insert(key, name.clone());
                }
            }
            if let Some(spiffe_id) = &caller.spiffe_id {
                callers_by_spiffe.insert(spiffe_id.clone(), name.clone());
            }
        }

        // Tokens issued at run time (`postern callers rotate`) or imported, for those callers.
        let mut ignored: Vec<&str> = Vec::new();
        for token in store_tokens.iter().filter(|t| !t.revoked) {
            // The admin token names no caller: such a row is skipped and said, not refused, so
            // the rest of the vault change (a revocation, say) still applies.
            if token.token_sha256 == inputs.admin_token_sha256 {
                tracing::warn!(
                    caller = %token.caller,
                    "a caller token in the vault has the admin token's hash; it is not accepted as the caller's: issue the caller another (`postern callers rotate {}`, which revokes it)",
                    token.caller
                );
                continue;
            }
            if let Some(caller) = vault_callers.get(token.caller.as_str()) {
                // One token, one caller: a vault row must not take over the token the config
                // gives another caller (an earlier `callers import` of a hash that has since
                // been given to someone else), or that caller's calls would run under the row's
                // caller's grants. The config's caller keeps it, and the row is said, not
                // refused: failing the build would hold up every later vault change and reload,
                // revocations among them.
                match callers_by_token.entry(token.token_sha256) {
                    std::collections::hash_map::Entry::Occupied(held)
                        if **held.get() != **caller =>
                    {
                        tracing::warn!(
                            vault_caller = %token.caller,
                            config_caller = %held.get(),
                            "a caller token in the vault is also another caller's token_sha256 in the config; it names the config's caller, not the vault's: give one of them another token (`postern callers rotate {}` revokes the vault one)",
                            token.caller
                        );
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {}
                    std::collections::hash_map::Entry::Vacant(place) => {
                        place.insert(Arc::from(*caller));
                    }
                }
            } else if config.caller(&token.caller).is_some_and(|caller| {
                // Not the config's own token, copied by `callers import` before the switch.
                caller.token_sha256.as_deref() != Some(hex::encode(token.token_sha256).as_str())
            }) && !ignored.contains(&token.caller.as_str())
            {
                ignored.push(&token.caller);
            }
        }
        // Said, not silent: a caller may have been given such a token before this rule (a
        // `callers rotate` of a caller known by its certificate alone).
        if !ignored.is_empty() {
            tracing::warn!(callers = ?ignored, "the vault holds active tokens for these callers, which are not accepted: the config names no vault tokens for them (`token_store = true`, or a token_sha256 that `postern callers rotate|revoke` revoked); add token_store = true to use them, or `postern callers revoke NAME` to retire them");
        }

        let (policy, scanner) = match inputs.reuse {
            Some(running) => (running.policy.clone(), running.scanner.clone()),
            None => compile_rules(&config)?,
        };
        let mut integrations = LookupMap::default();
        let mut problems = Vec::new();
        for integration in &config.integrations {
            let runtime = build_integration(integration, inputs)?;
            if let Err(problem) = &runtime.credential {
                problems.push(format!("integration {}: {}", integration.name, problem.why));
            }
            integrations.insert(integration.name.clone(), Arc::new(runtime));
        }
        let proxy = build_proxy(&config, &integrations, inputs.clients)?;
        Ok(Runtime {
            config: Arc::new(config),
            callers_by_token,
            callers_by_spiffe,
            vault_generation,
            integrations,
            policy,
            admin_token_sha256: inputs.admin_token_sha256,
            scanner,
            problems,
            proxy,
            listener_tls: inputs.listener_tls.clone(),
        })
    }

    /// The caller a connection's client certificate names as of `at` (path mode and the
    /// forward proxy alike).
    pub fn caller_by_certificate(
        &self,
        certificate: Option<&crate::tls::ClientCertificate>,
        at: std::time::SystemTime,
    ) -> ByCertificate {
        let Some(certificate) = certificate else {
            return ByCertificate::None;
        };
        match self.certified(Some(certificate), at) {
            Some(spiffe_id) => match self.caller_by_spiffe(spiffe_id) {
                Some(caller) => ByCertificate::Caller(caller),
                None => ByCertificate::Unregistered,
            },
            None => ByCertificate::Lapsed,
        }
    }

    /// The SPIFFE ID a connection's client certificate stands for as of `at`: none without
    /// one, once it has expired, or when the listener's trust as this runtime holds it
    /// (`client_ca`, `client_crl`) no longer verifies it.
    fn certified<'c>(
        &self,
        certificate: Option<&'c crate::tls::ClientCertificate>,
        at: std::time::SystemTime,
    ) -> Option<&'c str> {
        let trust = self.listener_tls.as_ref()?.clients.as_ref();
        certificate?.identity(trust, at)
    }

    /// The caller whose token hashes to this value.
    pub fn caller_by_token(&self, token: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.callers_by_token.get(&digest).cloned()
    }

    pub fn caller_by_spiffe(&self, spiffe_id: &str) -> Option<Arc<str>> {
        self.callers_by_spiffe.get(spiffe_id).cloned()
    }

    /// Whether the credential a tunnel or WebSocket session was opened with (for `Mtls`, the
    /// SPIFFE ID its client certificate still stands for: a token sent
    /// beside it does not keep it open past the certificate; else the caller token) still
    /// names `caller`: asked of every request inside an intercepted tunnel, and of an opaque
    /// tunnel or a session at each new runtime, each new hour and its certificate's expiry.
    pub fn still_names(
        &self,
        caller: &str,
        auth: crate::context::AuthMethod,
        certificate: Option<&crate::tls::ClientCertificate>,
        token: Option<&[u8]>,
        at: std::time::SystemTime,
    ) -> bool {
        let current = match (auth, token) {
            (crate::context::AuthMethod::Mtls, _) => self
                .certified(certificate, at)
                .and_then(|spiffe_id| self.caller_by_spiffe(spiffe_id)),
            (_, Some(token)) => self.caller_by_token(token),
            _ => None,
        };
        current.as_deref() == Some(caller)
    }

    pub fn is_admin_token(&self, token: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        crate::tokens::same(&digest, &self.admin_token_sha256)
    }
}

fn build_proxy(
    config: &Config,
    integrations: &LookupMap<String, Arc<IntegrationRuntime>>,
    clients: &ClientCache,
) -> anyhow::Result<ProxyRuntime> {
    use postern_policy::{HostMode, HostPattern, HostPolicy};
    let mode = |mode: postern_config::ProxyMode| match mode {
        postern_config::ProxyMode::Enforce => HostMode::Enforce,
        postern_config::ProxyMode::Report => HostMode::Report,
        postern_config::ProxyMode::Open => HostMode::Open,
    };
    let proxy = &config.proxy;
    let mut policy = HostPolicy::new(
        mode(proxy.mode),
        &proxy.allow_hosts,
        &proxy.deny_hosts,
        &proxy.allowed_ports,
    );
    for caller in &config.callers {
        policy.caller(
            &caller.name,
            caller.proxy_mode.map(mode),
            &caller.allow_hosts,
        );
    }
    let mut hosts: Vec<(HostPattern, Arc<IntegrationRuntime>)> = config
        .integrations
        .iter()
        .flat_map(|i| {
            i.hosts
                .iter()
                .filter_map(|h| Some((HostPattern::new(h), integrations.get(&i.name)?.clone())))
        })
        .collect();
    // Exact names before wildcards: `api.stripe.com` on one integration wins over
    // `*.stripe.com` on another, whatever their order in the file.
    hosts.sort_by_key(|(pattern, _)| matches!(pattern, HostPattern::OneLevel(_)));
    let plain_client = crate::upstream::build_client(crate::upstream::UpstreamOptions {
        guard: clients
            .proxy_guard(proxy.allow_private_networks.clone())
            .with_denied_networks(proxy.deny_networks.clone()),
        allow_plaintext: true,
        ca_file: None,
        connect_timeout: std::time::Duration::from_millis(proxy.connect_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(proxy.idle_timeout_ms),
        client_auth: None,
    })?;
    Ok(ProxyRuntime {
        config: proxy.clone(),
        policy,
        hosts,
        plain_client,
    })
}

/// The vault's client certificate for `integration` cannot be used.
/// A client certificate for the vendor (mTLS) from the vault, parsed, with a fingerprint of its
/// PEM for the client cache's key.
struct ClientAuth {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    fingerprint: String,
}

/// A client certificate's chain as stored: every PEM block a certificate, at least one.
fn pem_chain(cert: &[u8]) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &cert[..])
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|chain| !chain.is_empty())
}

/// A client certificate's private key as stored: a PEM private key.
fn pem_key(key: &[u8]) -> Option<rustls::pki_types::PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &key[..]).ok().flatten()
}

impl ClientAuth {
    /// Whether its certificate is within its validity at `unix_seconds` (one that cannot be
    /// read is taken as not).
    fn valid_at(&self, unix_seconds: i64) -> bool {
        self.chain.first().is_some_and(|leaf| {
            x509_parser::parse_x509_certificate(leaf.as_ref()).is_ok_and(|(_, parsed)| {
                let validity = parsed.validity();
                validity.not_before.timestamp() <= unix_seconds
                    && unix_seconds <= validity.not_after.timestamp()
            })
        })
    }

    /// What [`ClientAuth::parse`] says of a key that is not its certificate's.
    const MISMATCHED: &'static str = "the key is not the certificate's key";

    /// What is wrong with it, if the vault's PEM is not a certificate chain and a private key.
    fn parse(cert: &[u8], key: &[u8]) -> Result<ClientAuth, &'static str> {
        let chain = pem_chain(cert).ok_or("the certificate is not PEM")?;
        let private_key = pem_key(key).ok_or("the key is not a PEM private key")?;
        // What the TLS client will refuse is found here, so that the integration fails closed
        // alone rather than every rebuild of the runtime (a cert rotated before its key would
        // otherwise hold up every vault change, revocations included, until the key follows).
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            private_key.clone_key(),
            &crate::tls::crypto_provider(),
        )
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => Self::MISMATCHED,
            rustls::Error::General(_) => "the key is of a type TLS cannot sign with",
            _ => "the certificate or the key cannot be used for TLS",
        })?;
        let mut hasher = Sha256::new();
        hasher.update(cert);
        hasher.update(key);
        Ok(ClientAuth {
            chain,
            key: private_key,
            fingerprint: hex::encode(hasher.finalize()),
        })
    }
}

fn build_integration(
    integration: &IntegrationConfig,
    inputs: &BuildInputs<'_>,
) -> anyhow::Result<IntegrationRuntime> {
    let operations = OperationTable::new(
        integration
            .operations
            .iter()
            .map(|o| (o.id.as_str(), o.method.as_str(), o.path.as_str())),
    )
    .map_err(|error| {
        KeyProblem::integration(
            &integration.name,
            "operations",
            format!("integration {}: {error}", integration.name),
            "give each operation a method and path template that no other operation of the integration matches",
        )
    })?;
    // A client certificate for the vendor (mTLS) comes from the vault; if it cannot be read or
    // used the integration fails closed like a missing credential (the config is not at fault).
    let mut client_pem_problem = None;
    let mut client_certificate_note = None;
    let client_auth = match (&integration.client_certificate, inputs.vault) {
        (Some(names), Some(vault)) => {
            match (
                vault.current(&names.cert_secret),
                vault.current(&names.key_secret),
            ) {
                (Ok(Some(cert)), Ok(Some(key))) => {
                    let parsed =
                        ClientAuth::parse(cert.expose(), key.expose()).or_else(|what| match what {
                            ClientAuth::MISMATCHED => half_rotated(vault, names, &cert, &key)
                                .map(|(auth, note)| {
                                    client_certificate_note =
                                        Some(format!("integration {}: {note}", integration.name));
                                    auth
                                })
                                .ok_or(what),
                            _ => Err(what),
                        });
                    match parsed {
                        Ok(auth) => Some(auth),
                        Err(what) => {
                            client_pem_problem = Some(CredentialProblem {
                                code: "credential_unavailable",
                                why: format!(
                                    "client certificate unusable: vault credentials {} and {}: {what} (fix: `postern creds set NAME --from-file FILE.pem`)",
                                    shown_name(&names.cert_secret),
                                    shown_name(&names.key_secret)
                                ),
                            });
                            None
                        }
                    }
                }
                _ => {
                    client_pem_problem = Some(CredentialProblem {
                        code: "credential_unavailable",
                        why: format!(
                            "client certificate unavailable: vault credentials {} and {} must both exist and be active (fix: `postern creds set NAME --from-file FILE.pem`)",
                            shown_name(&names.cert_secret),
                            shown_name(&names.key_secret)
                        ),
                    });
                    None
                }
            }
        }
        (Some(_), None) => {
            client_pem_problem = Some(CredentialProblem {
                code: "credential_unavailable",
                why: "client certificate lives in the vault, which is opened by `postern serve`"
                    .to_string(),
            });
            None
        }
        _ => None,
    };
    let client = inputs
        .clients
        .get(integration, client_auth, inputs.reuse.is_none())
        .map_err(|error| match &integration.ca_file {
            _ if error.is::<KeyProblem>() => error,
            Some(ca_file) if error.is::<CaFileError>() => {
                anyhow::Error::new(KeyProblem::integration(
                    &integration.name,
                    "ca_file",
                    format!("integration {}: {error:#}", integration.name),
                    format!(
                        "point `ca_file` at a readable PEM file of CA certificates (-----BEGIN CERTIFICATE-----); it is now {}",
                        ca_file.display()
                    ),
                ))
            }
            _ => anyhow::anyhow!("integration {}: {error:#}", integration.name),
        })?;
    let mut secret_needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let credential = match (&integration.credential, client_pem_problem) {
        (_, Some(problem)) => Err(problem),
        (None, None) => Ok(None),
        (Some(credential), None) => match (&credential.oauth2, credential.kind) {
            (Some(oauth2), CredentialKind::OAuth2) => {
                read_secret(credential, inputs.vault).map(|secret| {
                    Some(Injector::OAuth2(inputs.token_sources.get(
                        integration,
                        oauth2,
                        secret,
                        &client,
                    )))
                })
            }
            _ => read_secret(credential, inputs.vault).and_then(|secret| {
                let (injector, needles) = injector_and_needles(credential, secret)?;
                secret_needles = needles;
                // The value a rotation replaced is still valid at the vendor until the operator
                // retires it there: while its rollback window lasts, an answer echoing it (a
                // stored webhook that kept the headers it was sent) is filtered as well.
                if let (SecretSource::Vault(name), Some(vault)) = (&credential.source, inputs.vault)
                {
                    if let Ok(Some(previous)) = vault.previous(name, crate::now_ms()) {
                        if let Ok(text) = std::str::from_utf8(previous.expose()) {
                            let previous = Zeroizing::new(text.to_string());
                            if let Ok((_, needles)) = injector_and_needles(credential, previous) {
                                add_new(&mut secret_needles, needles);
                            }
                        }
                    }
                }
                Ok(Some(injector))
            }),
        },
    };
    let vault_secret = match &integration.credential {
        Some(CredentialConfig {
            source: SecretSource::Vault(name),
            ..
        }) => Some(name.clone()),
        _ => None,
    };
    let limiter = integration
        .rate_limit
        .map(|limit| inputs.limiters.get(&integration.name, &limit));
    let upstream = upstream_target(&integration.upstream)
        .map_err(|error| anyhow::anyhow!("integration {}: {error}", integration.name))?;
    let mut stripped_headers = vec![
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        crate::CALLER_TOKEN,
    ];
    if let Ok(Some(Injector::Header { name, .. })) = &credential {
        if !stripped_headers.contains(name) {
            stripped_headers.push(name.clone());
        }
    }
    Ok(IntegrationRuntime {
        name: Arc::from(integration.name.as_str()),
        config: integration.clone(),
        operations,
        credential,
        secret_needles: Arc::new(secret_needles),
        vault_secret,
        last_used_ms: AtomicI64::new(0),
        limiter,
        client,
        upstream,
        stripped_headers,
        client_certificate_note,
    })
}

/// A client certificate pair rotated one half at a time (through the admin API, which changes
/// one credential a request, or `postern creds`): while the current certificate and key do
/// not match, the previous version of one of them (kept for rollback) that matches the other's
/// current one is used, with a note saying so. So calls go on with the pair in use until the
/// other half lands, rather than failing closed in between. Only pairs the operator stored,
/// and that match, are ever used.
fn half_rotated(
    vault: &Vault,
    names: &postern_config::ClientCertificateConfig,
    cert: &postern_vault::SecretValue,
    key: &postern_vault::SecretValue,
) -> Option<(ClientAuth, String)> {
    let now = crate::now_ms();
    let (cert_name, key_name) = (
        shown_name(&names.cert_secret),
        shown_name(&names.key_secret),
    );
    if let Ok(Some(previous)) = vault.previous(&names.cert_secret, now) {
        // One past its notAfter would only be refused by the vendor (502): fail closed here.
        let in_date = |auth: &ClientAuth| auth.valid_at(now / 1000);
        if let Some(auth) = ClientAuth::parse(previous.expose(), key.expose())
            .ok()
            .filter(in_date)
        {
            return Some((auth, format!(
                "the client certificate {cert_name} was rotated, but not its key {key_name}: the previous certificate stays in use until the key is rotated to the new certificate's (`postern creds rotate`), or the certificate rolled back"
            )));
        }
    }
    if let Ok(Some(previous)) = vault.previous(&names.key_secret, now) {
        if let Ok(auth) = ClientAuth::parse(cert.expose(), previous.expose()) {
            return Some((auth, format!(
                "the client certificate's key {key_name} was rotated, but not its certificate {cert_name}: the previous key stays in use until the certificate is rotated to the new key's (`postern creds rotate`), or the key rolled back"
            )));
        }
    }
    None
}

fn upstream_target(url: &url::Url) -> anyhow::Result<UpstreamTarget> {
    let scheme: http::uri::Scheme = url
        .scheme()
        .parse()
        .map_err(|_| anyhow::anyhow!("upstream scheme {} is not http or https", url.scheme()))?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("upstream {url} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let authority_text = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let authority: http::uri::Authority = authority_text
        .parse()
        .map_err(|_| anyhow::anyhow!("upstream {url} has an invalid host"))?;
    let path_prefix = url.path().trim_end_matches('/').to_string();
    let host_header = crate::upstream::host_header(scheme == http::uri::Scheme::HTTPS, &authority)
        .ok_or_else(|| anyhow::anyhow!("upstream {url} has an invalid host"))?;
    Ok(UpstreamTarget {
        origin: format!("{}://{}:{}", url.scheme(), host.to_ascii_lowercase(), port),
        scheme,
        authority,
        path_prefix,
        host_header,
    })
}

fn unavailable(why: String) -> CredentialProblem {
    CredentialProblem {
        code: "credential_unavailable",
        why,
    }
}

/// The most a `from_file` credential's file may hold: more is no credential (a client
/// certificate's chain and key take a few KiB).
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a `from_file` credential: a regular file (through links, as Kubernetes mounts its
/// secrets) of at most [`MAX_SECRET_FILE_BYTES`]. A FIFO is not waited on, nor is a device or a
/// file that goes on read whole: the read runs under the runtime's rebuild, which every reload
/// and vault change (revocations among them) waits for. Errors name the problem, never the
/// contents.
fn read_secret_file(path: &std::path::Path) -> std::io::Result<Zeroizing<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file (a FIFO, a device or a directory)",
        ));
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(
        metadata.len().min(MAX_SECRET_FILE_BYTES) as usize,
    ));
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it holds more than {} KiB, more than any credential",
                MAX_SECRET_FILE_BYTES / 1024
            ),
        ));
    }
    // The buffer moves into the text, not copied; refused, it is zeroized as it was read.
    match String::from_utf8(std::mem::take(&mut *contents)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(error) => {
            drop(Zeroizing::new(error.into_bytes()));
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ))
        }
    }
}

/// A credential's name (an environment variable's, a vault entry's) as a message may show it:
/// not at all when it may be a secret pasted where its name belongs.
fn shown_name(name: &str) -> std::borrow::Cow<'_, str> {
    match postern_config::may_be_a_secret(name) {
        true => "(whose name reads as a secret value, not shown: put the value in the vault or the environment and name it in the config)".into(),
        false => name.into(),
    }
}

/// Reads a credential's secret from its source. Errors never contain the value, nor a name
/// that may be one ([`shown_name`]).
fn read_secret(
    credential: &CredentialConfig,
    vault: Option<&Vault>,
) -> Result<Zeroizing<String>, CredentialProblem> {
    let secret: Zeroizing<String> = match &credential.source {
        SecretSource::Env(variable) => Zeroizing::new(std::env::var(variable).map_err(|_| {
            let name = shown_name(variable);
            unavailable(format!(
                "credential unavailable: environment variable {name} is not set \
                 (fix: export {name} before starting postern, or use from_file or a vault `secret`)"
            ))
        })?),
        SecretSource::File(path) => {
            // Trimmed in place: the text as read is the one zeroized.
            let mut secret = read_secret_file(path).map_err(|error| {
                unavailable(format!(
                    "credential unavailable: cannot read {}: {} (fix: check the path and its permissions)",
                    path.display(),
                    error
                ))
            })?;
            let kept = secret.trim_end_matches(['\r', '\n']).len();
            secret.truncate(kept);
            secret
        }
        SecretSource::Vault(vault_name) => {
            let name = shown_name(vault_name);
            let Some(vault) = vault else {
                return Err(unavailable(format!(
                    "credential {name} lives in the vault, which is opened by `postern serve`"
                )));
            };
            match vault.current(vault_name) {
                Ok(Some(value)) => match std::str::from_utf8(value.expose()) {
                    Ok(text) => Zeroizing::new(text.to_string()),
                    Err(_) => {
                        return Err(unavailable(format!(
                            "credential unusable: vault credential {name} is not UTF-8 text"
                        )))
                    }
                },
                Ok(None) => {
                    return Err(CredentialProblem {
                        code: "credential_revoked",
                        why: format!(
                            "credential {name} is revoked (fix: `postern creds set {name}` with a new value)"
                        ),
                    })
                }
                Err(VaultError::NotFound(_)) => {
                    return Err(unavailable(format!(
                        "credential unavailable: no credential {name} in the vault (fix: `postern creds set {name}`)"
                    )))
                }
                Err(_) if name.as_ref() != vault_name.as_str() => {
                    return Err(unavailable(format!(
                        "credential unavailable: the vault could not give credential {name}"
                    )))
                }
                Err(error) => return Err(unavailable(format!("credential unavailable: {error}"))),
            }
        }
    };
    if secret.is_empty() {
        return Err(unavailable(
            "credential unavailable: the secret is empty".to_string(),
        ));
    }
    Ok(secret)
}

/// Why `integration` could not inject `value` as its vault credential `name` (never the value),
/// or `None` when it could or does not inject `name`: the checks loading it would make, run on a
/// candidate before it is stored (by the admin API, and by `postern creds set` / `rotate`
/// against the config). An OAuth2 client secret is sent form-encoded: any text does.
pub fn unusable_value(integration: &IntegrationConfig, name: &str, value: &[u8]) -> Option<String> {
    // A client certificate's halves are each checked for what they must be (whether the two
    // match is known only once both are stored: a pair is rotated one half at a time).
    if let Some(names) = &integration.client_certificate {
        if names.cert_secret == name && pem_chain(value).is_none() {
            return Some(
                "the client certificate is not a PEM certificate chain (-----BEGIN CERTIFICATE-----)"
                    .to_string(),
            );
        }
        if names.key_secret == name && pem_key(value).is_none() {
            return Some(
                "the client certificate's key is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
                    .to_string(),
            );
        }
    }
    let credential = integration.credential.as_ref()?;
    if !matches!(&credential.source, SecretSource::Vault(vault_name) if vault_name == name) {
        return None;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Some("the value is not UTF-8 text".to_string());
    };
    let text = Zeroizing::new(text.to_string());
    if credential.kind == CredentialKind::OAuth2 || text.is_empty() {
        return None;
    }
    load_injector(credential, text)
        .err()
        .map(|problem| problem.why)
}

/// The forms in which a vendor could echo the secret back: those of any text ([`text_forms`]),
/// and inside base64 text ([`crate::tokens::base64_forms`], for a secret of 12 bytes or more),
/// a base64 form holding `/` or `+` also as the JSON encoders write it (`\/`, `\u002B`). A
/// header value is also matched percent-decoded ([`crate::proxy::echoes_secret`]). A form that
/// equals another is made once, so a secret of letters, digits, `-` and `_` (most API keys) has
/// its raw and base64 forms only.
pub(crate) fn echo_needles(secret: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut needles = Vec::new();
    add_new(&mut needles, text_forms(secret));
    // Inside base64 text too (a vendor echoing the request it got, base64'd, as an event
    // envelope carries a body): overwritten there, it no longer decodes to the secret.
    let base64 = crate::tokens::base64_forms(secret.as_bytes());
    let escaped: Vec<Zeroizing<Vec<u8>>> = base64
        .iter()
        .filter(|form| form.iter().any(|&c| c == b'/' || c == b'+'))
        .flat_map(|form| json_forms(&String::from_utf8_lossy(form)))
        .collect();
    add_new(&mut needles, base64.into_iter().chain(escaped));
    needles
}

/// The forms a vendor echoes a text in: as it is, percent-encoded (hex in either case: some
/// encoders write `%2b`), and as the common JSON encoders write it in a string
/// ([`json_forms`]).
fn text_forms(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let encoded = Zeroizing::new(percent_encoded(text).as_bytes().to_vec());
    let lower = lower_hex_escapes(&encoded, b'%');
    let mut forms = vec![Zeroizing::new(text.as_bytes().to_vec())];
    add_new(
        &mut forms,
        [encoded, lower].into_iter().chain(json_forms(text)),
    );
    forms
}

/// Appends each of `forms` that `needles` does not hold yet.
fn add_new(
    needles: &mut Vec<Zeroizing<Vec<u8>>>,
    forms: impl IntoIterator<Item = Zeroizing<Vec<u8>>>,
) {
    for form in forms {
        if !needles.contains(&form) {
            needles.push(form);
        }
    }
}

/// How one family of JSON encoders writes a string: which printable characters it writes as
/// `\u00XX`, with its hex in which case, and whether `/` is `\/`. All of them write `"` and
/// `\` escaped (`\"` unless `"` is in `unicode`) and control characters as the short escapes
/// or `\u00XX`.
struct JsonStyle {
    unicode: &'static [u8],
    upper: bool,
    slash: bool,
}

/// The JSON encoders whose strings differ for a secret of printable ASCII, as API keys are (a
/// character outside it, which .NET and Python write as `\uXXXX`, is not given forms).
const JSON_STYLES: [JsonStyle; 7] = [
    // serde_json, Jackson, Newtonsoft.Json, JavaScript's JSON.stringify.
    JsonStyle {
        unicode: b"",
        upper: false,
        slash: false,
    },
    // Python's json: DEL as `\u007f` too.
    JsonStyle {
        unicode: b"\x7f",
        upper: false,
        slash: false,
    },
    // PHP's json_encode: `/` as `\/` (an AWS secret key holds slashes).
    JsonStyle {
        unicode: b"",
        upper: false,
        slash: true,
    },
    // .NET's System.Text.Json with its default encoder: `\u002B` for `+` (a base64 key holds
    // some), upper-case hex.
    JsonStyle {
        unicode: b"\"&'+<>`\x7f",
        upper: true,
        slash: false,
    },
    // The previews of .NET Core 3.0 wrote lower-case hex, and `/` as `\u002f` too.
    JsonStyle {
        unicode: b"\"&'+/<>`\x7f",
        upper: false,
        slash: false,
    },
    // Gson, HTML-safe by default: `\u003d` for `=` (base64 padding).
    JsonStyle {
        unicode: b"<>&='",
        upper: false,
        slash: false,
    },
    // Go's encoding/json and Rails' to_json.
    JsonStyle {
        unicode: b"<>&",
        upper: false,
        slash: false,
    },
];
/// `text` as each of [`JSON_STYLES`] writes it inside a JSON string (without the quotes),
/// the forms that equal an earlier one left out.
fn json_forms(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = Vec::new();
    add_new(
        &mut forms,
        JSON_STYLES.iter().map(|style| json_escaped(text, style)),
    );
    forms
}

/// `text` as a JSON string of `style` holds it (without the quotes).
fn json_escaped(text: &str, style: &JsonStyle) -> Zeroizing<Vec<u8>> {
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let hex = match style.upper {
        true => UPPER,
        false => LOWER,
    };
    // Room for the longest escape of every byte: never reallocated, so no copy is left
    // behind unzeroized.
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 6));
    for &byte in text.as_bytes() {
        match byte {
            _ if style.unicode.contains(&byte)
                || (byte < 0x20 && !b"\n\r\t\x08\x0c".contains(&byte)) =>
            {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[hex[usize::from(byte >> 4)], hex[usize::from(byte & 15)]]);
            }
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
            b'/' if style.slash => out.extend_from_slice(b"\\/"),
            // The short forms every encoder writes.
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.push(byte),
        }
    }
    out
}

/// `text` with the two hex digits after each `escape` byte in lower case.
fn lower_hex_escapes(text: &[u8], escape: u8) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(text.to_vec());
    let mut at = 0;
    while let Some(found) = memchr::memchr(escape, &out[at..]) {
        let start = at + found + 1;
        let end = (start + 2).min(out.len());
        out[start..end].make_ascii_lowercase();
        at = end;
    }
    out
}

/// `parts` joined in one allocation of their exact length: a `format!` grows its `String` as it
/// writes, and each buffer it outgrows would be freed holding the secret, unzeroized.
fn joined(parts: &[&str]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for part in parts {
        out.push_str(part);
    }
    out
}

/// `secret` percent-encoded as an injected query value is, in a buffer sized for its longest
/// encoding: never reallocated, so no copy is left behind unzeroized.
fn percent_encoded(secret: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(secret.len() * 3));
    out.extend(percent_encoding::utf8_percent_encode(
        secret,
        crate::proxy::QUERY_VALUE,
    ));
    out
}

/// The byte strings an answer echoing a secret would hold (each zeroized when dropped).
type SecretForms = Vec<Zeroizing<Vec<u8>>>;

/// The shortest part of a credential looked for on its own in answers ([`injector_and_needles`]).
const MIN_ECHOED_PART: usize = 8;

/// The injector for `secret`, and what an answer echoing it would hold: the secret's forms
/// ([`echo_needles`]), and a Basic pair's as sent, base64-encoded, in each form a text is
/// echoed in (`\/`, `\u002B`, `%2B`…).
fn injector_and_needles(
    credential: &CredentialConfig,
    secret: Zeroizing<String>,
) -> Result<(Injector, SecretForms), CredentialProblem> {
    let mut needles = echo_needles(&secret);
    // The part a vendor quotes on its own: a Basic pair's password (`user:password` stored
    // whole) and a header value's token after its scheme word (`Token abc…`), long enough not
    // to be found by chance.
    let part = match credential.kind {
        CredentialKind::Basic if credential.username.is_none() => {
            secret.split_once(':').map(|(_, password)| password)
        }
        CredentialKind::Header => secret
            .split_once(' ')
            .filter(|(word, _)| !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(|(_, token)| token.trim_start())
            .filter(|token| !token.contains(' ')),
        _ => None,
    };
    if let Some(part) = part.filter(|part| part.len() >= MIN_ECHOED_PART) {
        let part = Zeroizing::new(part.to_string());
        add_new(&mut needles, echo_needles(&part));
    }
    let injector = load_injector(credential, secret)?;
    if let Injector::Header { value, .. } = &injector {
        if let Some(sent) = value.as_bytes().strip_prefix(b"Basic ") {
            // Base64 text is ASCII.
            let sent = Zeroizing::new(String::from_utf8_lossy(sent).into_owned());
            add_new(&mut needles, text_forms(&sent));
        }
    }
    Ok((injector, needles))
}

/// Prepares a secret's header or query form. Errors never contain the value.
fn load_injector(
    credential: &CredentialConfig,
    secret: Zeroizing<String>,
) -> Result<Injector, CredentialProblem> {
    let sensitive = |text: Zeroizing<String>| -> Result<HeaderValue, CredentialProblem> {
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            unavailable(
                "credential unusable: the secret holds characters not allowed in an HTTP header"
                    .to_string(),
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    };
    match credential.kind {
        CredentialKind::Bearer => Ok(Injector::Header {
            name: http::header::AUTHORIZATION,
            value: sensitive(joined(&["Bearer ", &secret]))?,
        }),
        CredentialKind::Basic => {
            let pair = match &credential.username {
                Some(user) => joined(&[user, ":", &secret]),
                None => secret,
            };
            let encoded =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            Ok(Injector::Header {
                name: http::header::AUTHORIZATION,
                value: sensitive(joined(&["Basic ", &encoded]))?,
            })
        }
        CredentialKind::Header => {
            let name = credential
                .header_name
                .as_deref()
                .ok_or_else(|| unavailable("credential kind header needs `name`".to_string()))?;
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                unavailable(format!(
                    "credential header name {name:?} is not a valid header name"
                ))
            })?;
            Ok(Injector::Header {
                name,
                value: sensitive(secret)?,
            })
        }
        CredentialKind::OAuth2 => Err(unavailable(
            "credential kind oauth2 needs token_url and client_id".to_string(),
        )),
        CredentialKind::Query => {
            let param = credential
                .query_param
                .clone()
                .ok_or_else(|| unavailable("credential kind query needs `param`".to_string()))?;
            let encoded_value = percent_encoded(&secret);
            Ok(Injector::Query {
                param,
                encoded_value,
            })
        }
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::LimiterCache;
    use postern_config::RateLimitConfig;
    use std::sync::Arc;

    fn quota(per_second: u32) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: per_second,
            burst: per_second,
        }
    }

    /// A build that fails after making a limiter for a new quota does not take the place of
    /// the one the running config uses: going back to that quota finds its state; `retain`
    /// drops what the committed config does not use.
    #[test]
    fn a_limiter_survives_a_build_that_did_not_commit() {
        let cache = LimiterCache::default();
        let running = cache.get("stripe", &quota(1));
        let caller: Arc<str> = Arc::from("checkout");
        assert!(running.check_key(&caller).is_ok());
        let failed_build = cache.get("stripe", &quota(5));
        let again = cache.get("stripe", &quota(1));
        assert!(Arc::ptr_eq(&running, &again));
        assert!(
            again.check_key(&caller).is_err(),
            "its burst is still spent"
        );
        cache.retain(|name, quota| name == "stripe" && quota == (1, 1));
        assert!(!Arc::ptr_eq(&cache.get("stripe", &quota(5)), &failed_build));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `from_file` credential is read through a link (Kubernetes mounts secrets so), with its
    /// line end trimmed; a FIFO is refused at once rather than waited on (the read holds every
    /// reload and vault change), and so are a device and a file larger than any credential,
    /// each with an error naming the problem and not the contents.
    #[test]
    fn a_credential_file_is_read_only_when_it_is_a_file_of_credential_size() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "sk_live_file\r\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let credential = |path: &std::path::Path| CredentialConfig {
            kind: postern_config::CredentialKind::Bearer,
            source: SecretSource::File(path.to_path_buf()),
            header_name: None,
            query_param: None,
            username: None,
            oauth2: None,
        };
        let secret = read_secret(&credential(&link), None).unwrap();
        assert_eq!(secret.as_str(), "sk_live_file");

        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (done, finished) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(read_secret_file(&path).map(|_| ()));
        });
        let refused = finished
            .recv_timeout(Duration::from_secs(5))
            .expect("a FIFO was waited on");
        let error = refused.unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");

        let error = read_secret_file(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");

        let large = dir.path().join("large");
        let mut contents = vec![b'k'; MAX_SECRET_FILE_BYTES as usize];
        std::fs::write(&large, &contents).unwrap();
        assert_eq!(read_secret_file(&large).unwrap().len(), contents.len());
        contents.push(b'k');
        std::fs::write(&large, &contents).unwrap();
        let message = read_secret(&credential(&large), None).err().unwrap().why;
        assert!(message.contains("more than 1024 KiB"), "{message}");
        assert!(!message.contains("kkkk"), "{message}");
    }

    /// A credential's missing source is named in the problem (for `check`, the logs and
    /// `/readyz`), unless its name reads as a secret pasted where the name belongs.
    #[test]
    fn a_missing_credential_is_named_unless_its_name_may_be_a_secret() {
        let credential = |source| CredentialConfig {
            kind: postern_config::CredentialKind::Bearer,
            source,
            header_name: None,
            query_param: None,
            username: None,
            oauth2: None,
        };
        let why = |source| read_secret(&credential(source), None).err().unwrap().why;
        let named = why(SecretSource::Env("POSTERN_TEST_UNSET_STRIPE_KEY".into()));
        assert!(named.contains("POSTERN_TEST_UNSET_STRIPE_KEY"), "{named}");
        for pasted in [
            SecretSource::Env("q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS".into()),
            SecretSource::Vault("q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS".into()),
        ] {
            let withheld = why(pasted);
            assert!(!withheld.contains("q8TzL0vN"), "{withheld}");
            assert!(withheld.contains("reads as a secret"), "{withheld}");
        }
    }

    /// The forward proxy's lookups and the vendors' are counted apart: with every proxy place
    /// taken by a name server that does not answer, a proxy host is refused at once
    /// (`503 resolver_busy`, `Retry-After: 1`) while a vendor's name is still looked up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proxy_lookups_cannot_take_the_vendors_places() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static ANSWER: AtomicBool = AtomicBool::new(false);
        fn slow(_: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            for _ in 0..1000 {
                if ANSWER.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(vec![std::net::SocketAddr::from(([93, 184, 215, 14], port))])
        }
        let cache = ClientCache {
            lookups: LookupSlots {
                vendors: postern_netguard::Lookups::new(2).with_blocking_lookup(slow),
                proxy: postern_netguard::Lookups::new(1).with_blocking_lookup(slow),
            },
            ..ClientCache::default()
        };
        let proxy = cache.proxy_guard(Vec::new());
        let held = tokio::time::timeout(Duration::from_millis(20), proxy.resolve("a.slow", 443));
        assert!(
            held.await.is_err(),
            "the first proxy lookup waits on its name server"
        );
        let refused = proxy.resolve("b.slow", 443).await.unwrap_err();
        assert!(
            matches!(refused, postern_netguard::GuardError::Busy { limit: 1 }),
            "{refused:?}"
        );
        let error = crate::proxy::connect_error(
            "b.slow",
            &crate::upstream::ConnectError::ResolverBusy { limit: 1 },
        );
        assert_eq!(
            (error.status.as_u16(), error.code, error.retry_after_seconds),
            (503, "resolver_busy", Some(1))
        );
        let vendor = cache.guard(Vec::new());
        let looking = tokio::spawn(async move { vendor.resolve("api.vendor", 443).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ANSWER.store(true, Ordering::SeqCst);
        assert!(
            looking.await.unwrap().is_ok(),
            "the vendor's name was looked up"
        );
    }

    /// Each forward-proxy caller has a share of the proxy's lookups (a quarter): caller `a`,
    /// whose hosts' name server does not answer, fills its share with tunnels' dials and a
    /// plain-HTTP call (each giving up at once, its lookup holding its places), and its next
    /// dial is refused at once (`503 resolver_busy`, `Retry-After: 1`), while caller `b`'s host
    /// is still looked up and dialled (a real socket); `a`'s places come back when the name
    /// server answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_proxy_caller_cannot_take_the_other_callers_lookups() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static ANSWER: AtomicBool = AtomicBool::new(false);
        /// `*.slow` waits for the test to answer (10 s at most); any other name is 127.0.0.1.
        fn slow(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            for _ in 0..1000 {
                if !host.ends_with(".slow") || ANSWER.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))])
        }
        let mut lookups = LookupSlots::default();
        lookups.proxy = lookups.proxy.with_blocking_lookup(slow);
        let cache = ClientCache {
            lookups,
            ..ClientCache::default()
        };
        let proxy = cache.proxy_guard(vec!["127.0.0.0/8".parse().unwrap()]);
        let vendor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = vendor.local_addr().unwrap().port();
        let dial = |host: String, caller: &'static str| {
            let proxy = proxy.clone();
            async move {
                let timeout = Duration::from_secs(5);
                crate::upstream::dial(&proxy, &host, port, timeout, Some(caller)).await
            }
        };
        let gives_up = Duration::from_millis(20);
        for n in 1..PROXY_LOOKUPS_PER_CALLER {
            let dialled = tokio::time::timeout(gives_up, dial(format!("a{n}.slow"), "a"));
            assert!(dialled.await.is_err(), "waits on its name server");
        }
        // The plain-HTTP path's dials count in the caller's share too (its partition).
        let plain = crate::upstream::build_client(crate::upstream::UpstreamOptions {
            guard: proxy.clone(),
            allow_plaintext: true,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            client_auth: None,
        })
        .unwrap();
        let body = crate::body::ForwardBody::full(bytes::Bytes::new(), Default::default());
        let mut request = http::Request::new(body);
        *request.uri_mut() = format!("http://plain.slow:{port}/").parse().unwrap();
        let sent = tokio::time::timeout(gives_up, plain.request_for(request, "a".into()));
        assert!(sent.await.is_err(), "waits on its name server");
        assert_eq!(
            (
                cache.lookups.proxy.in_flight(),
                cache.lookups.proxy.in_flight_for("a")
            ),
            (PROXY_LOOKUPS_PER_CALLER, PROXY_LOOKUPS_PER_CALLER)
        );
        let refused = dial("a.more.slow".into(), "a").await.unwrap_err();
        assert!(
            matches!(
                refused,
                crate::upstream::ConnectError::CallerResolverBusy { limit } if limit == PROXY_LOOKUPS_PER_CALLER
            ),
            "{refused:?}"
        );
        let error = crate::proxy::connect_error("a.more.slow", &refused);
        assert_eq!(
            (error.status.as_u16(), error.code, error.retry_after_seconds),
            (503, "resolver_busy", Some(1))
        );
        assert_eq!(cache.lookups.proxy.in_flight(), PROXY_LOOKUPS_PER_CALLER);
        let (_stream, addr) = dial("api.b.example".into(), "b").await.unwrap();
        assert_eq!(
            addr,
            vendor.local_addr().unwrap(),
            "b's host was looked up and dialled"
        );
        ANSWER.store(true, Ordering::SeqCst);
        for _ in 0..500 {
            if cache.lookups.proxy.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.lookups.proxy.in_flight_for("a"), 0);
        assert_eq!(cache.lookups.proxy.in_flight(), 0);
        assert!(dial("a.again.slow".into(), "a").await.is_ok());
    }

    /// A Basic pair stored whole (`user:password`) is looked for by its password alone too,
    /// and a header value with a scheme word (`Token abc…`) by its token: what a vendor quotes
    /// back ("invalid token: abc…"); a short part is not (it could be found by chance).
    #[test]
    fn the_part_a_vendor_quotes_is_a_needle_of_its_own() {
        let needles = |kind: CredentialKind, header: Option<&str>, secret: &str| -> Vec<String> {
            let credential = CredentialConfig {
                kind,
                source: SecretSource::Env("UNUSED".into()),
                header_name: header.map(str::to_string),
                query_param: None,
                username: None,
                oauth2: None,
            };
            let (_, needles) =
                injector_and_needles(&credential, Zeroizing::new(secret.to_string())).unwrap();
            needles
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()
        };
        let basic = needles(CredentialKind::Basic, None, "AC42:pass_w0rd_long");
        assert!(basic.iter().any(|n| n == "pass_w0rd_long"), "{basic:?}");
        assert!(
            basic.iter().any(|n| n == "AC42:pass_w0rd_long"),
            "{basic:?}"
        );
        let short = needles(CredentialKind::Basic, None, "AC42:pw");
        assert!(!short.iter().any(|n| n == "pw"), "{short:?}");
        let header = needles(
            CredentialKind::Header,
            Some("authorization"),
            "Token abcdef123456",
        );
        assert!(header.iter().any(|n| n == "abcdef123456"), "{header:?}");
        let plain = needles(CredentialKind::Header, Some("x-api-key"), "key with spaces");
        assert!(!plain.iter().any(|n| n == "with spaces"), "{plain:?}");
    }

    #[test]
    fn a_secret_is_echoed_raw_percent_encoded_and_as_json_writes_it() {
        let forms = |secret: &str| -> Vec<String> {
            echo_needles(secret)
                .iter()
                .map(|form| String::from_utf8(form.to_vec()).unwrap())
                .collect()
        };
        // Nothing to escape: as it is, and inside base64 wherever it stood.
        assert_eq!(
            forms("sk_live_abc1"),
            [
                "sk_live_abc1",
                "c2tfbGl2ZV9hYmMx",
                "NrX2xpdmVfYWJjM",
                "za19saXZlX2FiYz"
            ]
        );
        // Too short to be told from chance in base64: as it is only.
        assert_eq!(forms("sk_live_abc"), ["sk_live_abc"]);
        // An AWS-style key: percent-encoded (either case of hex), and as JSON encoders write
        // it: PHP with `\/`, .NET with `\u002B` (upper-case hex; lower-case, and `/` escaped
        // too, in the previews of .NET Core 3.0).
        assert_eq!(
            forms("wJalr/K7+MDENGabc")[..6],
            [
                "wJalr/K7+MDENGabc",
                "wJalr%2FK7%2BMDENGabc",
                "wJalr%2fK7%2bMDENGabc",
                "wJalr\\/K7+MDENGabc",
                "wJalr/K7\\u002BMDENGabc",
                "wJalr\\u002fK7\\u002bMDENGabc",
            ]
        );
        // DEL as Python and .NET write it.
        let del = forms("sk\x7f1");
        assert!(del.iter().any(|form| form == "sk\\u007f1"), "{del:?}");
        assert!(del.iter().any(|form| form == "sk\\u007F1"), "{del:?}");
        // Inside base64 text, with its `/` and `+` as JSON encoders write them.
        let base64 = crate::tokens::base64_forms(b"k3y>>>abc???defg");
        let slashed = base64.iter().find(|form| form.contains(&b'/')).unwrap();
        let php = String::from_utf8(slashed.to_vec())
            .unwrap()
            .replace('/', "\\/");
        assert!(forms("k3y>>>abc???defg").contains(&php), "{php}");
        let plussed = base64.iter().find(|form| form.contains(&b'+')).unwrap();
        let dotnet = String::from_utf8(plussed.to_vec())
            .unwrap()
            .replace('+', "\\u002B");
        assert!(forms("k3y>>>abc???defg").contains(&dotnet), "{dotnet}");
        // Base64 padding as Gson writes it; `<>&` as Go and Rails do.
        let padded = forms("a2V5OmtleQ==");
        assert!(padded.iter().any(|form| form == "a2V5OmtleQ\\u003d\\u003d"));
        let html = forms("k<e>y&1");
        assert!(html.iter().any(|form| form == "k\\u003ce\\u003ey\\u00261"));
        assert!(html.iter().any(|form| form == "k\\u003Ce\\u003Ey\\u00261"));
        // Each JSON form is what serde_json writes (without the quotes).
        for secret in ["a\"b\\c", "tab\there\nline\u{1}\u{8}\u{c}"] {
            let json = serde_json::to_string(secret).unwrap();
            let forms = forms(secret);
            assert!(
                forms.iter().any(|form| *form == json[1..json.len() - 1]),
                "{forms:?} lacks {json}"
            );
        }
    }
}
