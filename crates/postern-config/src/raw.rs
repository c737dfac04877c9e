//! The file as written: serde structs that mirror the TOML exactly.
//!
//! Every struct denies unknown fields. Values that semantic validation may
//! complain about are wrapped in [`Spanned`] so the complaint can point at
//! the offending value. Nothing here has defaults applied or is checked
//! beyond its TOML type; `validate` turns these into the public types.

use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub gateway: Spanned<RawGateway>,
    #[serde(default)]
    pub callers: Vec<Spanned<RawCaller>>,
    #[serde(default)]
    pub integrations: Vec<Spanned<RawIntegration>>,
    #[serde(default)]
    pub grants: Vec<Spanned<RawGrant>>,
    /// Forward-proxy mode (`HTTP(S)_PROXY`, CONNECT) and its host policy.
    #[serde(default)]
    pub proxy: Option<Spanned<RawProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `enforce` (default), `report` or `open`: for callers without their own `proxy_mode`.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub allowed_ports: Option<Vec<Spanned<i64>>>,
    #[serde(default)]
    pub allow_private_networks: Vec<Spanned<String>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub idle_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub response_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_tunnels_per_caller: Option<Spanned<u32>>,
    /// DNS names a new interception CA is constrained to (RFC 5280 name constraints).
    #[serde(default)]
    pub intercept_ca_names: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub listen: Spanned<String>,
    pub admin_listen: Spanned<String>,
    pub data_dir: Spanned<String>,
    #[serde(default)]
    pub tls_cert: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_key: Option<Spanned<String>>,
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub client_crl: Option<Spanned<String>>,
    #[serde(default)]
    pub admin_token_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub policies: Option<Spanned<String>>,
    #[serde(default)]
    pub events_max_file_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub events_max_files: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_header_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    pub shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    pub idle_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    #[serde(default)]
    pub max_connections_per_source: Option<usize>,
    #[serde(default)]
    pub credential_max_age_days: Option<Spanned<u64>>,
    #[serde(default)]
    pub audit_origin: Option<Spanned<String>>,
    #[serde(default)]
    pub detect: Option<bool>,
    /// A TOML rule file extending or overriding the built-in scanner rules.
    #[serde(default)]
    pub scan_rules: Option<Spanned<String>>,
    #[serde(default)]
    pub audit_checkpoint_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub audit_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCaller {
    pub name: Spanned<String>,
    #[serde(default)]
    pub token_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub spiffe_id: Option<Spanned<String>>,
    /// The caller's tokens live in the vault (`postern callers rotate|import`).
    #[serde(default)]
    pub token_store: Option<bool>,
    /// Forward-proxy host policy for this caller: `enforce`, `report` or `open`.
    #[serde(default)]
    pub proxy_mode: Option<Spanned<String>>,
    /// Hosts this caller may reach through the forward proxy (beyond registered integrations).
    #[serde(default)]
    pub allow_hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntegration {
    pub name: Spanned<String>,
    pub vendor: Spanned<String>,
    pub owner: Spanned<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub docs_url: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub credential: Option<Spanned<RawCredential>>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub max_concurrent_calls: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_concurrent_calls_per_caller: Option<Spanned<u32>>,
    pub operations: Spanned<Vec<RawOperation>>,
    /// Host names that route forward-proxy traffic (CONNECT / absolute-form) to this integration.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Terminate TLS inside CONNECT tunnels to `hosts` and apply the full L7 pipeline.
    #[serde(default)]
    pub intercept: Option<Spanned<bool>>,
    #[serde(default)]
    pub allow_private_networks: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_plaintext: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub client_certificate: Option<Spanned<RawClientCertificate>>,
    /// `required` (default) or `best_effort`.
    #[serde(default)]
    pub audit: Option<Spanned<String>>,
    /// Data classes approved for this vendor; setting it turns payload scanning on.
    #[serde(default)]
    pub data_classes: Option<Vec<Spanned<String>>>,
    /// `block` (default), `redact` or `report`.
    #[serde(default)]
    pub on_unapproved: Option<Spanned<String>>,
    #[serde(default)]
    pub scan_max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub request_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub idle_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub response_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub total_timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    #[serde(default)]
    pub max_response_body_bytes: Option<u64>,
    #[serde(default)]
    pub max_header_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub kind: Spanned<String>,
    #[serde(default)]
    pub from_env: Option<Spanned<String>>,
    #[serde(default)]
    pub from_file: Option<Spanned<String>>,
    /// Name of a credential in the vault (`postern creds set NAME`).
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    /// Header name, for `kind = "header"`.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Query parameter name, for `kind = "query"`.
    #[serde(default)]
    pub param: Option<Spanned<String>>,
    /// Fixed user name, for `kind = "basic"`.
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    /// OAuth2 client credentials (`kind = "oauth2"`): the token endpoint.
    #[serde(default)]
    pub token_url: Option<Spanned<String>>,
    #[serde(default)]
    pub client_id: Option<Spanned<String>>,
    /// Vault name of the client secret (alternative to `secret`).
    #[serde(default)]
    pub client_secret: Option<Spanned<String>>,
    #[serde(default)]
    pub scope: Option<Spanned<String>>,
    /// `basic` (default) or `body`.
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    /// Extra form parameters for the token request (`audience`, `resource`, ...).
    #[serde(default)]
    pub params: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientCertificate {
    /// Vault name of the PEM certificate chain.
    pub cert: Spanned<String>,
    /// Vault name of the PEM private key.
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests_per_second: Spanned<u32>,
    pub burst: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOperation {
    pub id: Spanned<String>,
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(default)]
    pub websocket: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrant {
    pub caller: Spanned<String>,
    pub integration: Spanned<String>,
    pub operations: Spanned<Vec<Spanned<String>>>,
}
