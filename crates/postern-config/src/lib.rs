//! Postern's configuration: the schema of the one TOML file, its defaults,
//! and the validation that turns text into a [`Config`] the gateway can trust.
//!
//! # What this crate is
//!
//! One function, [`parse`], takes the text of the file and either returns a
//! fully checked [`Config`] or *every* problem it found as [`ConfigErrors`].
//! [`load`] reads the file first. Each [`Diagnostic`] names a 1-based line and
//! column and says how to fix the problem, so `postern check` can print them
//! the way a compiler would:
//!
//! ```text
//! postern.toml:15:12: error: `upstream` uses plain http, which sends the credential unencrypted
//!   fix: use https, or set `allow_plaintext = true` if the upstream really only speaks HTTP
//! ```
//!
//! Parsing happens in two passes. First the text is deserialized into raw
//! structs (`raw.rs`) that mirror the file exactly: unknown keys are errors
//! everywhere, and the values that can be semantically wrong are kept with
//! their byte span. TOML syntax, type and unknown-key errors stop here (toml
//! reports one at a time). Then `validate.rs` checks meaning -- names unique,
//! grants pointing at things that exist, path templates well formed, URLs
//! safe -- collecting all errors, applying defaults and normalising values
//! (hex to lowercase, methods to uppercase, relative paths made absolute
//! against the config file's directory).
//!
//! After `parse` succeeds, downstream crates may rely on the invariants
//! documented on each field; they do not re-validate.
//!
//! # What this crate is not
//!
//! - It does no network IO: it checks that an upstream URL is well formed,
//!   never that it resolves or answers. Private-address policy lives in
//!   `postern-netguard`.
//! - It does not read secrets. A credential names where its secret comes
//!   from ([`SecretSource`]); this crate checks that the name is well formed
//!   and never opens the file or reads the environment variable. No secret
//!   value can therefore appear in a config error.
//! - It does not evaluate policy. Grants are data here; `postern-policy`
//!   decides requests. The optional Cedar `policies` file is only checked to
//!   exist, not parsed.
//! - The only file-system access in [`parse`] is that existence check and
//!   resolving a relative config path against the current directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod diagnostic;
mod path_template;
mod raw;
mod validate;

pub use diagnostic::{ConfigErrors, Diagnostic};
pub use path_template::segment_name;
pub use validate::{
    check_host_pattern, is_identifier, may_be_a_secret, reads_as_a_secret, within_name,
    CREDENTIAL_PREFIXES,
};

/// Default for [`GatewayConfig::events_max_file_bytes`]: 64 MiB.
pub const DEFAULT_EVENTS_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`GatewayConfig::events_max_files`].
pub const DEFAULT_EVENTS_MAX_FILES: u32 = 5;
/// The most rotated event (and alert) files kept.
pub const MAX_EVENTS_MAX_FILES: u32 = 1000;
/// Default for [`GatewayConfig::max_header_bytes`].
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default for [`GatewayConfig::credential_max_age_days`].
pub const DEFAULT_CREDENTIAL_MAX_AGE_DAYS: u64 = 90;
/// Most data-plane workers [`GatewayConfig::workers`] accepts.
pub const MAX_WORKERS: usize = 256;
/// Default for [`GatewayConfig::shutdown_grace_ms`].
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default for [`GatewayConfig::idle_timeout_ms`].
pub const DEFAULT_CALLER_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default for [`IntegrationConfig::connect_timeout_ms`].
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default for [`IntegrationConfig::request_timeout_ms`].
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default for [`IntegrationConfig::response_idle_timeout_ms`] and
/// [`ProxyConfig::response_idle_timeout_ms`]: the same as the default of
/// [`GatewayConfig::idle_timeout_ms`] (a fixed value: setting that key does not change it).
pub const DEFAULT_RESPONSE_IDLE_TIMEOUT_MS: u64 = DEFAULT_CALLER_IDLE_TIMEOUT_MS;
/// Default for [`IntegrationConfig::total_timeout_ms`]: ten minutes.
pub const DEFAULT_TOTAL_TIMEOUT_MS: u64 = 600_000;
/// Default for [`IntegrationConfig::idle_timeout_ms`].
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Default for [`IntegrationConfig::max_request_body_bytes`]: 10 MiB.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default for [`IntegrationConfig::max_response_body_bytes`]: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// The HTTP methods an operation may declare.
pub const ALLOWED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The grant operation that stands for every operation of the integration.
pub const ALL_OPERATIONS: &str = "*";

/// A validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub callers: Vec<CallerConfig>,
    pub integrations: Vec<IntegrationConfig>,
    pub grants: Vec<GrantConfig>,
    /// `[proxy]`: forward-proxy mode and its host policy.
    pub proxy: ProxyConfig,
    /// The path the config was loaded from, as given to [`load`] / [`parse`].
    pub source_path: PathBuf,
    /// Where the keys that name files or compile later sit in the text, for [`KeyProblem`]s.
    places: std::sync::Arc<Places>,
}

/// A problem with a config value that only using it shows: a file it names cannot be read or
/// parsed, the Cedar policies do not compile. `key` says which value (made by
/// [`KeyProblem::gateway`] or [`KeyProblem::integration`]); [`Places::diagnostic`] places it in
/// the file. Displays as its message.
#[derive(Debug)]
pub struct KeyProblem {
    key: String,
    pub message: String,
    pub fix: String,
}

impl KeyProblem {
    /// A problem with `[gateway] <key>`.
    pub fn gateway(key: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        KeyProblem {
            key: gateway_key(key),
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// A problem with `<key>` of the integration called `integration`.
    pub fn integration(
        integration: &str,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        KeyProblem {
            key: integration_key(integration, key),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// How a [`KeyProblem`] and [`Places`] name `[gateway] <key>`.
fn gateway_key(key: &str) -> String {
    format!("gateway.{key}")
}

/// How a [`KeyProblem`] and [`Places`] name an integration's `<key>`.
fn integration_key(integration: &str, key: &str) -> String {
    format!("integrations.{integration}.{key}")
}

/// Where a config's values that only using them can fault sit in its file: `tls_cert`,
/// `tls_key`, `client_ca`, `client_crl`, `policies` and `scan_rules` in `[gateway]`; `upstream`, `credential`,
/// `operations`, `ca_file` and `client_certificate` in an integration. Shared, not copied, by
/// [`Config::places`], so a caller that hands the config on can still place what starting it
/// finds.
#[derive(Debug, Default)]
pub struct Places {
    at: std::collections::HashMap<String, (usize, usize)>,
}

impl Places {
    /// The line and column (1-based) where `problem`'s value starts, if its place is kept.
    pub fn locate(&self, problem: &KeyProblem) -> Option<(usize, usize)> {
        self.at.get(&problem.key).copied()
    }

    /// `problem` as a diagnostic placed at its key (`0:0` if its place is not kept).
    pub fn diagnostic(&self, problem: &KeyProblem) -> Diagnostic {
        let (line, column) = self.locate(problem).unwrap_or((0, 0));
        Diagnostic {
            line,
            column,
            message: problem.message.clone(),
            fix: problem.fix.clone(),
        }
    }

    /// `problem` as the one error of the config file at `path`, placed at its key.
    pub fn errors(&self, path: &Path, problem: &KeyProblem) -> ConfigErrors {
        ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![self.diagnostic(problem)],
        }
    }
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyProblem {}

impl Config {
    /// The integration called `name`, if any.
    pub fn integration(&self, name: &str) -> Option<&IntegrationConfig> {
        self.integrations
            .iter()
            .find(|integration| integration.name == name)
    }

    /// The caller called `name`, if any.
    pub fn caller(&self, name: &str) -> Option<&CallerConfig> {
        self.callers.iter().find(|caller| caller.name == name)
    }

    /// Where the values that only using them can fault sit in the file.
    pub fn places(&self) -> std::sync::Arc<Places> {
        self.places.clone()
    }
}

/// `[gateway]`: how the gateway itself listens and stores data.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Data-plane listener (callers connect here).
    pub listen: SocketAddr,
    /// Admin API listener; differs from `listen`.
    pub admin_listen: SocketAddr,
    /// Absolute: relative paths are resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// TLS certificate chain (PEM) for `listen`. Set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `listen`. Set together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA bundle for verifying client certificates (mTLS). Requires `tls_cert`.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM, or one DER list) for the `client_ca` chains.
    /// Requires `client_ca`.
    pub client_crl: Option<PathBuf>,
    /// SHA-256 of the admin API bearer token: 64 lowercase hex characters.
    pub admin_token_sha256: Option<String>,
    /// Optional Cedar file with extra conditions. Absolute; known to exist at parse time.
    pub policies: Option<PathBuf>,
    /// Rotate the event log after this many bytes. At least 4096.
    pub events_max_file_bytes: u64,
    /// Rotated event-log files kept. At least 1.
    pub events_max_files: u32,
    /// Largest accepted request head. 1024 ..= 1 MiB.
    pub max_header_bytes: usize,
    /// How long in-flight calls may finish after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// A caller connection (gateway or admin listener) with no byte either way for this long
    /// is closed, unless (gateway listener only) one of its calls waits on its vendor.
    pub idle_timeout_ms: u64,
    /// Data-plane worker threads, each with its own event loop, listening socket
    /// (`SO_REUSEPORT`) and upstream connection pools. `0` (the default): one per CPU.
    pub workers: usize,
    /// Connections one client address (an IPv6 client's /64) may hold on `listen` at once;
    /// `0` (the default): no cap beyond the listener's own.
    pub max_connections_per_source: usize,
    /// Credentials whose current value is older than this are flagged (`creds list`, `/metrics`).
    pub credential_max_age_days: u64,
    /// Origin line of the audit log's checkpoints (C2SP tlog-checkpoint), e.g.
    /// `postern.example.com/audit`. Default `postern/<hostname>`.
    pub audit_origin: Option<String>,
    /// A new signed checkpoint at most this often, when the log grew. Default 1000.
    pub audit_checkpoint_interval_ms: u64,
    /// How long a call waits for its audit entry to be durable before it fails closed
    /// (503 `audit_unavailable`). Default 2000.
    pub audit_timeout_ms: u64,
    /// Live anomaly detection over every call (alerts.jsonl, /v1/alerts). Default true.
    pub detect: bool,
    /// TOML rules extending or overriding the built-in payload scanner rules (resolved path).
    pub scan_rules: Option<PathBuf>,
}

/// `[[callers]]`: a workload that may call integrations.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Unique among callers.
    pub name: String,
    /// SHA-256 of the caller's bearer token: 64 lowercase hex characters.
    /// Unique among callers.
    pub token_sha256: Option<String>,
    /// `spiffe://trust-domain/path`, matched against the client certificate.
    /// Unique among callers. At least one of `token_sha256`, `spiffe_id` and `token_store`.
    pub spiffe_id: Option<String>,
    /// The caller authenticates with tokens kept in the vault (issued by
    /// `postern callers rotate`, or moved there by `postern callers import`).
    pub token_store: bool,
    /// Forward-proxy host policy mode for this caller; `None` uses `[proxy] mode`.
    pub proxy_mode: Option<ProxyMode>,
    /// Host patterns (see [`ProxyConfig::allow_hosts`]) this caller may reach through the proxy.
    pub allow_hosts: Vec<String>,
}

/// Default for [`ProxyConfig::allowed_ports`].
pub const DEFAULT_PROXY_PORTS: &[u16] = &[443];
/// Default for [`ProxyConfig::max_tunnels_per_caller`].
pub const DEFAULT_MAX_TUNNELS_PER_CALLER: u32 = 1024;

/// `[proxy]`: the gateway listener also serves as an HTTP forward proxy (`HTTP_PROXY` /
/// `HTTPS_PROXY`, CONNECT). Host patterns are lowercase names, optionally with one leading
/// one-level wildcard label (`*.example.com` matches `a.example.com`, not `a.b.example.com`
/// nor `example.com`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Default true: CONNECT and absolute-form requests are served (deny by default still holds:
    /// the default mode is `enforce` with empty allow lists).
    pub enabled: bool,
    /// Mode for callers without their own `proxy_mode`.
    pub mode: ProxyMode,
    /// Hosts every caller may reach.
    pub allow_hosts: Vec<String>,
    /// Hosts nobody may reach, whatever the mode (checked first).
    pub deny_hosts: Vec<String>,
    /// The addresses (`/32`, `/128`) and networks (`"203.0.113.0/24"`) among `deny_hosts`: a
    /// destination that resolves into one is refused as a listed host is.
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Destination ports allowed for unregistered hosts. Default `[443]`.
    pub allowed_ports: Vec<u16>,
    /// Private networks a proxied destination may resolve to (the SSRF guard refuses the rest).
    pub allow_private_networks: Vec<ipnet::IpNet>,
    pub connect_timeout_ms: u64,
    /// A tunnel with no traffic either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// A plain-HTTP answer's body with no data for this long is cut; 0: never.
    pub response_idle_timeout_ms: u64,
    /// CONNECT tunnels (opaque or intercepted) one caller may hold open at once; past it a new
    /// CONNECT is refused (`429 too_many_tunnels`).
    pub max_tunnels_per_caller: u32,
    /// The DNS names (each with every name below it) the interception CA may vouch for: a CA
    /// made while this is set carries them as critical name constraints, and one already made
    /// must carry exactly these. Empty: a CA without constraints (the default).
    pub intercept_ca_names: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: true,
            mode: ProxyMode::Enforce,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            deny_networks: Vec::new(),
            allowed_ports: DEFAULT_PROXY_PORTS.to_vec(),
            allow_private_networks: Vec::new(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            response_idle_timeout_ms: DEFAULT_RESPONSE_IDLE_TIMEOUT_MS,
            max_tunnels_per_caller: DEFAULT_MAX_TUNNELS_PER_CALLER,
            intercept_ca_names: Vec::new(),
        }
    }
}

/// Forward-proxy host policy modes, as in Stripe's smokescreen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Only allowed hosts pass.
    Enforce,
    /// Every host passes (except `deny_hosts`); those not allowed are reported in events.
    Report,
    /// Every host passes except `deny_hosts`.
    Open,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Enforce => "enforce",
            ProxyMode::Report => "report",
            ProxyMode::Open => "open",
        }
    }
}

/// `[[integrations]]`: one third-party API and what may be called on it.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// `[a-z0-9][a-z0-9_-]{0,62}`: the first path segment of calls. Unique.
    pub name: String,
    pub vendor: String,
    pub owner: String,
    pub purpose: Option<String>,
    /// An http(s) URL when set.
    pub docs_url: Option<String>,
    /// https (or http with `allow_plaintext`), with a host, without query,
    /// fragment or userinfo. `path()` is `/` or a prefix without trailing `/`.
    pub upstream: url::Url,
    pub credential: Option<CredentialConfig>,
    pub rate_limit: Option<RateLimitConfig>,
    /// Calls to this integration open at once, all callers together (Envoy's circuit breaker
    /// `max_requests`): past it, `503 concurrency_limited`. `None`: no limit.
    pub max_concurrent_calls: Option<u32>,
    /// Calls to this integration one caller may have open at once: past it, `429
    /// too_many_concurrent_calls`. `None`: no limit.
    pub max_concurrent_calls_per_caller: Option<u32>,
    /// At least one; ids unique; (method, path shape) pairs unique.
    pub operations: Vec<OperationConfig>,
    /// Host patterns whose forward-proxy traffic belongs to this integration. Unique across
    /// integrations.
    pub hosts: Vec<String>,
    /// Terminate TLS in CONNECT tunnels to `hosts` with a leaf from Postern's CA and apply the
    /// L7 pipeline (default true). False: host-level policy, byte counts and timing only.
    pub intercept: bool,
    /// Private networks this upstream may resolve to. A bare address is a host network.
    pub allow_private_networks: Vec<ipnet::IpNet>,
    pub allow_plaintext: bool,
    /// Extra CA bundle (PEM) for the upstream. Absolute.
    pub ca_file: Option<PathBuf>,
    /// Client certificate presented to the vendor (mTLS), from the vault.
    pub client_certificate: Option<ClientCertificateConfig>,
    /// Whether a call waits for its audit entry to be durable before it is forwarded.
    pub audit: AuditMode,
    /// Payload scanning: `Some` (from `data_classes`) turns it on; the classes listed are the
    /// ones approved for this vendor.
    pub data_classes: Option<Vec<String>>,
    /// What happens to a request carrying a class that is not approved.
    pub on_unapproved: OnUnapproved,
    /// Bodies up to this size are scanned (decoded if gzip/br); larger ones are forwarded and
    /// marked unscanned in the event. Default 1 MiB.
    pub scan_max_body_bytes: u64,
    /// Greater than zero.
    pub connect_timeout_ms: u64,
    /// Until response headers. Greater than zero.
    pub request_timeout_ms: u64,
    /// How long a pooled upstream connection may sit idle. Greater than zero.
    pub idle_timeout_ms: u64,
    /// How long the vendor may send no body data while a call streams its answer; 0: never.
    pub response_idle_timeout_ms: u64,
    /// The longest a call may last, from its arrival until the vendor's answer has ended; 0:
    /// no limit.
    pub total_timeout_ms: u64,
    pub max_request_body_bytes: u64,
    pub max_response_body_bytes: u64,
    /// The largest header section this integration's requests may have (each field's name and
    /// value plus 4 bytes, and the request target); `None`: only `[gateway] max_header_bytes`,
    /// which every request already meets.
    pub max_header_bytes: Option<usize>,
}

/// How the gateway authenticates to the upstream. Names the secret; never holds it.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub kind: CredentialKind,
    pub source: SecretSource,
    /// TOML key `name`: set exactly when `kind` is `Header`; a valid HTTP header name.
    pub header_name: Option<String>,
    /// TOML key `param`: set exactly when `kind` is `Query`.
    pub query_param: Option<String>,
    /// Only for `Basic`. When set the secret is the password; otherwise the
    /// secret is `user:password`. Contains no ':'.
    pub username: Option<String>,
    /// Set exactly when `kind` is `OAuth2`; the secret is then the client secret.
    pub oauth2: Option<OAuth2Config>,
}

/// OAuth2 client-credentials grant (RFC 6749 §4.4).
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    /// The token endpoint: https, or http only when the integration has `allow_plaintext`.
    pub token_url: url::Url,
    pub client_id: String,
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint.
    pub client_auth: OAuth2ClientAuth,
    /// Extra form parameters, in key order.
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuth2ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1, the default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// What to do with a payload carrying a data class not approved for the integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnapproved {
    /// 403 `data_class_not_approved`; nothing reaches the vendor.
    Block,
    /// The values are masked in the forwarded body (same length).
    Redact,
    /// Forwarded unchanged; the event and the data-flow ledger record it.
    Report,
}

/// Default for [`IntegrationConfig::scan_max_body_bytes`]: 1 MiB.
pub const DEFAULT_SCAN_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The most [`IntegrationConfig::scan_max_body_bytes`] may be: 64 MiB (a body, its decoded
/// reading and the copy scanned off the worker fit the gateway's 256 MiB scan budget).
pub const MAX_SCAN_MAX_BODY_BYTES: u64 = 64 << 20;

/// Per-integration audit durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// No call is forwarded unless its intent entry is durably sequenced (the default).
    Required,
    /// Calls are forwarded even when the audit log cannot be written (entries still attempted).
    BestEffort,
}

/// A client certificate Postern presents to the vendor (mTLS), both halves in the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificateConfig {
    /// Vault name of the PEM certificate chain.
    pub cert_secret: String,
    /// Vault name of the PEM private key.
    pub key_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `Authorization: Bearer <secret>`
    Bearer,
    /// `Authorization: Basic base64(<user:password>)`
    Basic,
    /// `<name>: <secret>`
    Header,
    /// `?<param>=<secret>`
    Query,
    /// `Authorization: Bearer <access token>` minted by OAuth2 client credentials.
    OAuth2,
}

/// Where a secret is read from at runtime (by the gateway, not this crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// TOML key `from_env`: an environment variable name.
    Env(String),
    /// TOML key `from_file`: an absolute path (resolved like other paths).
    File(PathBuf),
    /// TOML key `secret`: a credential name in the vault (`postern creds set NAME`).
    Vault(String),
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// At least 1.
    pub requests_per_second: u32,
    /// At least 1.
    pub burst: u32,
}

/// One allowed call shape on an integration.
#[derive(Debug, Clone)]
pub struct OperationConfig {
    /// Unique within the integration; never `*`.
    pub id: String,
    /// Uppercase; one of [`ALLOWED_METHODS`].
    pub method: String,
    /// A path template such as `/v1/charges/{id}`.
    pub path: String,
    /// TOML key `websocket`: a WebSocket handshake (RFC 6455) to this operation opens a
    /// session relayed both ways; only for `GET`. Without it, a handshake is refused.
    pub websocket: bool,
}

/// `[[grants]]`: a caller may call these operations of an integration.
#[derive(Debug, Clone)]
pub struct GrantConfig {
    /// Names an existing caller.
    pub caller: String,
    /// Names an existing integration.
    pub integration: String,
    /// Existing operation ids of the integration, or exactly `["*"]` for all.
    pub operations: Vec<String>,
}

impl GrantConfig {
    /// Whether this grant covers operation `id`.
    pub fn allows_operation(&self, id: &str) -> bool {
        self.operations
            .iter()
            .any(|operation| operation == ALL_OPERATIONS || operation == id)
    }
}

/// Reads and parses the config file at `path`.
///
/// A read failure is reported as a single diagnostic at line 0, column 0.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(error) => Err(ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                message: format!("cannot read config file {}: {error}", path.display()),
                fix: "check that the path is right and the file is readable".to_string(),
            }],
        }),
    }
}

/// Parses and validates config `text`.
///
/// `path` names the file in messages; its parent directory is the base for
/// relative paths in the config (itself resolved against the current
/// directory if relative).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            return Err(ConfigErrors {
                path: path.to_path_buf(),
                errors: vec![diagnostic::from_toml_error(text, &error)],
            })
        }
    };
    validate::validate(raw, text, path)
}
