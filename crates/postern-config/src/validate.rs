//! Semantic validation: raw structs in, public types out.
//!
//! Every check records a diagnostic and carries on with a placeholder value,
//! so one run reports all problems. Messages never repeat a value that could
//! be a secret (a token pasted where its hash belongs, a password in a URL).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_spanned::Spanned;

use crate::diagnostic::{diagnostic_at, line_column, ConfigErrors, Diagnostic};
use crate::path_template::check_path_template;
use crate::raw::{
    RawCaller, RawConfig, RawCredential, RawGateway, RawGrant, RawIntegration, RawOperation,
    RawProxy, RawRateLimit,
};
use crate::*;

const MIN_EVENTS_MAX_FILE_BYTES: u64 = 4096;
const MIN_MAX_HEADER_BYTES: usize = 1024;
/// SHA-256 of the empty string.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const MAX_MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Headers the gateway owns; a credential may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut validator = Validator {
        text,
        base_dir: base_dir(path),
        errors: Vec::new(),
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        places: Places::default(),
        intercepted_hosts: Vec::new(),
    };
    let gateway = validator.gateway(raw.gateway.into_inner());
    validator.max_header_bytes = gateway.max_header_bytes;
    let callers = validator.callers(
        raw.callers,
        gateway.admin_token_sha256.as_deref(),
        gateway.client_ca.is_some(),
    );
    let integrations = validator.integrations(raw.integrations);
    let grants = validator.grants(raw.grants, &callers, &integrations);
    let proxy = validator.proxy(raw.proxy.map(Spanned::into_inner));
    if validator.errors.is_empty() {
        Ok(Config {
            gateway,
            callers,
            integrations,
            grants,
            proxy,
            source_path: path.to_path_buf(),
            places: Arc::new(validator.places),
        })
    } else {
        let mut errors = validator.errors;
        errors.sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
        Err(ConfigErrors {
            path: path.to_path_buf(),
            errors,
        })
    }
}

/// The directory relative paths are resolved against: the config file's
/// parent, made absolute against the current directory.
fn base_dir(config_path: &Path) -> PathBuf {
    let parent = config_path.parent().unwrap_or(Path::new(""));
    if parent.is_absolute() {
        return parent.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(current) => without_dot_components(&current.join(parent)),
        Err(_) => parent.to_path_buf(),
    }
}

fn without_dot_components(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect()
}

struct Validator<'t> {
    text: &'t str,
    base_dir: PathBuf,
    errors: Vec<Diagnostic>,
    /// `[gateway] max_header_bytes`, once read: an integration's may not exceed it.
    max_header_bytes: usize,
    /// Kept for [`Config::places`].
    places: Places,
    /// Each intercepted integration's host patterns (pattern, where, integration), for the
    /// check against `[proxy] intercept_ca_names`.
    intercepted_hosts: Vec<(String, Range<usize>, String)>,
}

impl Validator<'_> {
    /// Keeps where `key`'s value starts, for [`Config::places`].
    fn keep_location(&mut self, key: String, span: Range<usize>) {
        let place = line_column(self.text, span.start);
        self.places.at.insert(key, place);
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>, fix: impl Into<String>) {
        self.errors
            .push(diagnostic_at(self.text, span, message, fix));
    }

    fn line_of(&self, span: Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    fn resolve_path(&mut self, value: &Spanned<String>, key: &str) -> PathBuf {
        if value.get_ref().trim().is_empty() {
            self.error(
                value.span(),
                format!("`{key}` is empty"),
                format!("set `{key}` to a file path, or remove the key"),
            );
            return PathBuf::new();
        }
        let path = Path::new(value.get_ref());
        if path.is_absolute() {
            without_dot_components(path)
        } else {
            without_dot_components(&self.base_dir.join(path))
        }
    }

    fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> SocketAddr {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                let (problem, fix) = socket_addr_problem(value.get_ref());
                self.error(
                    value.span(),
                    format!("`{key}` = \"{}\" {problem}", value.get_ref()),
                    fix,
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }

    /// A SHA-256 digest as 64 hex characters, normalised to lowercase.
    fn sha256_hex(&mut self, value: &Spanned<String>, key: &str) -> String {
        let digest = value.get_ref().trim().to_ascii_lowercase();
        let is_digest = digest.len() == 64 && hex::decode(&digest).is_ok();
        if !is_digest {
            // The value is not echoed: it may be the token itself.
            self.error(
                value.span(),
                format!(
                    "`{key}` must be a SHA-256 digest: 64 hex characters (got {} characters)",
                    value.get_ref().chars().count()
                ),
                "put the hash of the token here, never the token: \
                 `printf %s \"$TOKEN\" | sha256sum`",
            );
        } else if digest == EMPTY_SHA256 {
            // What `printf %s "$UNSET" | sha256sum` prints: a token nobody has to know.
            self.error(
                value.span(),
                format!("`{key}` is the SHA-256 of the empty string, not of a token"),
                "hash the token itself (`postern callers token NAME` prints a new one and its \
                 hash); check that the variable you hashed was set",
            );
        }
        digest
    }

    fn at_least<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        value: &Spanned<T>,
        key: &str,
        minimum: T,
    ) -> T {
        let number = *value.get_ref();
        if number < minimum {
            self.error(
                value.span(),
                format!("`{key}` = {number} is too small; the minimum is {minimum}"),
                format!("set `{key}` to {minimum} or more"),
            );
        }
        number
    }

    fn non_empty_text(&mut self, value: &Spanned<String>, key: &str, what: &str) -> String {
        if value.get_ref().trim().is_empty() {
            self.error(
                value.span(),
                format!("`{key}` is empty"),
                format!("set `{key}` to {what}"),
            );
        }
        value.get_ref().clone()
    }

    fn gateway(&mut self, raw: RawGateway) -> GatewayConfig {
        let files = [
            ("tls_cert", &raw.tls_cert),
            ("tls_key", &raw.tls_key),
            ("client_ca", &raw.client_ca),
            ("client_crl", &raw.client_crl),
            ("policies", &raw.policies),
            ("scan_rules", &raw.scan_rules),
        ];
        for (key, value) in files {
            if let Some(value) = value {
                self.keep_location(gateway_key(key), value.span());
            }
        }
        let listen = self.socket_addr(&raw.listen, "listen");
        let admin_listen = self.socket_addr(&raw.admin_listen, "admin_listen");
        if listen == admin_listen && listen.port() != 0 {
            self.error(
                raw.admin_listen.span(),
                format!("`admin_listen` is the same address as `listen` ({listen})"),
                "give the admin API its own port, e.g. \"127.0.0.1:9090\"",
            );
        }
        let data_dir = self.resolve_path(&raw.data_dir, "data_dir");
        let tls_cert = raw
            .tls_cert
            .as_ref()
            .map(|v| self.resolve_path(v, "tls_cert"));
        let tls_key = raw
            .tls_key
            .as_ref()
            .map(|v| self.resolve_path(v, "tls_key"));
        let client_ca = raw
            .client_ca
            .as_ref()
            .map(|v| self.resolve_path(v, "client_ca"));
        let client_crl = raw
            .client_crl
            .as_ref()
            .map(|v| self.resolve_path(v, "client_crl"));
        match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), None) => self.error(
                cert.span(),
                "`tls_cert` is set but `tls_key` is not",
                "add `tls_key = \"path/to/key.pem\"`, or remove `tls_cert` to listen without TLS",
            ),
            (None, Some(key)) => self.error(
                key.span(),
                "`tls_key` is set but `tls_cert` is not",
                "add `tls_cert = \"path/to/cert.pem\"`, or remove `tls_key` to listen without TLS",
            ),
            _ => {}
        }
        if let (Some(client_ca), None) = (&raw.client_ca, &raw.tls_cert) {
            self.error(
                client_ca.span(),
                "`client_ca` requires TLS, but `tls_cert` is not set",
                "add `tls_cert` and `tls_key`, or remove `client_ca`",
            );
        }
        if let (Some(client_crl), None) = (&raw.client_crl, &raw.client_ca) {
            self.error(
                client_crl.span(),
                "`client_crl` lists revoked client certificates, but `client_ca` is not set, so no client certificate is verified",
                "add `client_ca` (the CA bundle the revocation lists are for), or remove `client_crl`",
            );
        }
        let admin_token_sha256 = raw
            .admin_token_sha256
            .as_ref()
            .map(|v| self.sha256_hex(v, "admin_token_sha256"));
        let policies = raw.policies.as_ref().map(|value| {
            let path = self.resolve_path(value, "policies");
            if !path.as_os_str().is_empty() && !path.is_file() {
                self.error(
                    value.span(),
                    format!("policies file {} does not exist", path.display()),
                    "create the Cedar file, fix the path (relative paths start at the \
                     config file's directory), or remove `policies`",
                );
            }
            path
        });
        let events_max_file_bytes = match &raw.events_max_file_bytes {
            Some(value) => self.at_least(value, "events_max_file_bytes", MIN_EVENTS_MAX_FILE_BYTES),
            None => DEFAULT_EVENTS_MAX_FILE_BYTES,
        };
        let events_max_files = match &raw.events_max_files {
            Some(value) => {
                let files = self.at_least(value, "events_max_files", 1);
                // Each rotation renames the kept files one by one (and looks for each).
                if files > MAX_EVENTS_MAX_FILES {
                    self.error(
                        value.span(),
                        format!(
                            "`events_max_files` = {files} is too large; the maximum is \
                             {MAX_EVENTS_MAX_FILES}"
                        ),
                        format!(
                            "set `events_max_files` to {MAX_EVENTS_MAX_FILES} or less (raise \
                             `events_max_file_bytes` to keep more history)"
                        ),
                    );
                }
                files
            }
            None => DEFAULT_EVENTS_MAX_FILES,
        };
        let max_header_bytes = match &raw.max_header_bytes {
            Some(value) => {
                let bytes = *value.get_ref();
                if !(MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&bytes) {
                    self.error(
                        value.span(),
                        format!(
                            "`max_header_bytes` = {bytes} is out of range \
                             {MIN_MAX_HEADER_BYTES}..={MAX_MAX_HEADER_BYTES}"
                        ),
                        format!(
                            "use a value from {MIN_MAX_HEADER_BYTES} to {MAX_MAX_HEADER_BYTES}, \
                             or remove the key for the default {DEFAULT_MAX_HEADER_BYTES}"
                        ),
                    );
                }
                bytes
            }
            None => DEFAULT_MAX_HEADER_BYTES,
        };
        let workers = match &raw.workers {
            Some(value) => {
                let workers = *value.get_ref();
                if workers > MAX_WORKERS {
                    self.error(
                        value.span(),
                        format!("`workers` = {workers} is more than {MAX_WORKERS}"),
                        format!("use 1 to {MAX_WORKERS}, or 0 (or no key) for one worker per CPU"),
                    );
                }
                workers
            }
            None => 0,
        };
        GatewayConfig {
            listen,
            admin_listen,
            data_dir,
            tls_cert,
            tls_key,
            client_ca,
            client_crl,
            admin_token_sha256,
            policies,
            events_max_file_bytes,
            events_max_files,
            max_header_bytes,
            shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
            idle_timeout_ms: self.timeout(
                &raw.idle_timeout_ms,
                "idle_timeout_ms",
                DEFAULT_CALLER_IDLE_TIMEOUT_MS,
            ),
            workers,
            detect: raw.detect.unwrap_or(true),
            scan_rules: raw
                .scan_rules
                .as_ref()
                .map(|path| self.resolve_path(path, "scan_rules")),
            audit_origin: raw.audit_origin.as_ref().map(|origin| {
                let text = origin.get_ref();
                if text.is_empty() || text.contains(['\n', '\r']) || text.contains("://") {
                    self.error(
                        origin.span(),
                        "`audit_origin` must be a non-empty single line without a URL scheme",
                        "name the log like `postern.example.com/audit` (C2SP tlog-checkpoint origin)",
                    );
                } else if text.contains('+') || text.chars().any(char::is_whitespace) {
                    // The origin is also the name of the log's signing key (C2SP signed-note),
                    // which may hold neither: the gateway could not open the log.
                    self.error(
                        origin.span(),
                        format!(
                            "`audit_origin` {text:?} holds a space or a '+': it also names the log's signing key, and a signed-note key name may hold neither"
                        ),
                        "name the log without spaces or '+', like `postern.example.com/audit`",
                    );
                }
                text.clone()
            }),
            audit_checkpoint_interval_ms: self.at_least_or(
                &raw.audit_checkpoint_interval_ms,
                10,
                1000,
                "`audit_checkpoint_interval_ms` must be at least 10",
                "use e.g. 1000 (one signed checkpoint per second when the log grew)",
            ),
            audit_timeout_ms: self.at_least_or(
                &raw.audit_timeout_ms,
                1,
                2000,
                "`audit_timeout_ms` must be at least 1",
                "use e.g. 2000: how long a call waits for its audit entry to be durable",
            ),
            max_connections_per_source: raw.max_connections_per_source.unwrap_or(0),
            credential_max_age_days: self.at_least_or(
                &raw.credential_max_age_days,
                1,
                DEFAULT_CREDENTIAL_MAX_AGE_DAYS,
                "`credential_max_age_days` must be at least 1",
                "give the age in days after which a credential is flagged, e.g. 90",
            ),
        }
    }

    /// `admin_token_sha256`: the admin token's hash, which no caller's may be; `client_ca`:
    /// whether the listener verifies client certificates, without which no `spiffe_id` matches.
    fn callers(
        &mut self,
        raw_callers: Vec<Spanned<RawCaller>>,
        admin_token_sha256: Option<&str>,
        client_ca: bool,
    ) -> Vec<CallerConfig> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut tokens: HashMap<String, String> = HashMap::new();
        let mut spiffe_ids: HashMap<String, String> = HashMap::new();
        let mut callers = Vec::with_capacity(raw_callers.len());
        for raw in raw_callers {
            let raw = raw.into_inner();
            let name = raw.name.get_ref().clone();
            if !is_identifier(&name) {
                self.error(
                    raw.name.span(),
                    format!("caller name `{name}` is not a valid name"),
                    "use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
                );
            }
            if let Some(first_line) = names.get(&name) {
                self.error(
                    raw.name.span(),
                    format!("caller `{name}` is defined twice (first on line {first_line})"),
                    "rename one of the callers or merge them",
                );
            } else {
                names.insert(name.clone(), self.line_of(raw.name.span()));
            }
            if raw.token_sha256.is_none()
                && raw.spiffe_id.is_none()
                && !raw.token_store.unwrap_or(false)
            {
                self.error(
                    raw.name.span(),
                    format!("caller `{name}` has no way to authenticate"),
                    "add `token_sha256 = \"<sha256 of the token>\"`, \
                     `spiffe_id = \"spiffe://trust-domain/workload\"`, or `token_store = true` \
                     (tokens kept in the vault: `postern callers rotate` / `callers import`)",
                );
            }
            let token_sha256 = raw.token_sha256.as_ref().map(|value| {
                let digest = self.sha256_hex(value, "token_sha256");
                if let Some(other) = tokens.get(&digest) {
                    self.error(
                        value.span(),
                        format!("caller `{name}` has the same token_sha256 as caller `{other}`"),
                        "give every caller its own token",
                    );
                } else if admin_token_sha256.is_some_and(|admin| admin == digest) {
                    self.error(
                        value.span(),
                        format!("caller `{name}` has the admin token's hash (`admin_token_sha256`)"),
                        "give the admin API a token of its own (`postern callers token admin` makes one): \
                         a caller's token must never open the admin API",
                    );
                } else {
                    tokens.insert(digest.clone(), name.clone());
                }
                digest
            });
            let spiffe_id = raw.spiffe_id.as_ref().map(|value| {
                let id = value.get_ref().clone();
                if let Err((message, fix)) = check_spiffe_id(&id) {
                    self.error(value.span(), message, fix);
                } else if !client_ca {
                    self.error(
                        value.span(),
                        format!(
                            "caller `{name}` has a spiffe_id, but `[gateway] client_ca` is not set: \
                             no client certificate is verified, so it can never match"
                        ),
                        "set `client_ca` (with `tls_cert` and `tls_key`) in [gateway], or identify the \
                         caller with `token_sha256` or `token_store = true` instead",
                    );
                }
                if let Some(other) = spiffe_ids.get(&id) {
                    self.error(
                        value.span(),
                        format!("caller `{name}` has the same spiffe_id as caller `{other}`"),
                        "give every caller its own SPIFFE ID",
                    );
                } else {
                    spiffe_ids.insert(id.clone(), name.clone());
                }
                id
            });
            let proxy_mode = raw.proxy_mode.as_ref().map(|mode| self.proxy_mode(mode));
            let allow_hosts = self.proxy_host_patterns(&raw.allow_hosts, "allow_hosts");
            callers.push(CallerConfig {
                name,
                token_sha256,
                spiffe_id,
                token_store: raw.token_store.unwrap_or(false),
                proxy_mode,
                allow_hosts,
            });
        }
        callers
    }

    fn integrations(
        &mut self,
        raw_integrations: Vec<Spanned<RawIntegration>>,
    ) -> Vec<IntegrationConfig> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut hosts: HashMap<String, String> = HashMap::new();
        let mut integrations = Vec::with_capacity(raw_integrations.len());
        for raw in raw_integrations {
            let raw = raw.into_inner();
            for host in &raw.hosts {
                let pattern = host.get_ref().trim().to_ascii_lowercase();
                if let Some(other) = hosts.get(&pattern) {
                    self.error(
                        host.span(),
                        format!(
                            "host `{}` is already claimed by integration `{other}`",
                            without_credentials(&pattern)
                        ),
                        "list each host under one integration only",
                    );
                } else {
                    hosts.insert(pattern, raw.name.get_ref().clone());
                }
            }
            let name = raw.name.get_ref().clone();
            if !is_integration_name(&name) {
                self.error(
                    raw.name.span(),
                    format!("integration name `{name}` is not valid"),
                    "use 1 to 63 lowercase letters, digits, '_' or '-', starting with a letter \
                     or digit: the name is the first path segment of calls",
                );
            }
            if let Some(first_line) = names.get(&name) {
                self.error(
                    raw.name.span(),
                    format!("integration `{name}` is defined twice (first on line {first_line})"),
                    "rename one of the integrations or merge them",
                );
            } else {
                names.insert(name.clone(), self.line_of(raw.name.span()));
            }
            integrations.push(self.integration(name, raw));
        }
        integrations
    }

    fn integration(&mut self, name: String, raw: RawIntegration) -> IntegrationConfig {
        let spans = [
            ("upstream", Some(raw.upstream.span())),
            ("credential", raw.credential.as_ref().map(Spanned::span)),
            ("operations", Some(raw.operations.span())),
            ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            (
                "client_certificate",
                raw.client_certificate.as_ref().map(Spanned::span),
            ),
        ];
        for (key, span) in spans {
            if let Some(span) = span {
                self.keep_location(integration_key(&name, key), span);
            }
        }
        let vendor = self.non_empty_text(&raw.vendor, "vendor", "the company behind the API");
        let owner = self.non_empty_text(&raw.owner, "owner", "the team or person responsible");
        let docs_url = raw.docs_url.as_ref().map(|value| {
            // Not echoed: a URL may carry a token (in its query, or as a user name or
            // password), and a value that is not a URL may be a secret pasted in the wrong
            // place.
            let problem = match url::Url::parse(value.get_ref()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => None,
                // Named when it is a scheme people use; `user:password` parses as scheme `user`.
                Ok(url) => Some(match url.scheme() {
                    scheme @ ("ftp" | "file" | "mailto" | "ws" | "wss" | "ssh" | "git") => {
                        format!("has scheme `{scheme}`")
                    }
                    _ => "has a scheme other than http or https".to_string(),
                }),
                Err(error) => Some(format!(
                    "({} characters) is not an absolute URL: {error}",
                    value.get_ref().chars().count()
                )),
            };
            if let Some(problem) = problem {
                self.error(
                    value.span(),
                    format!("`docs_url` {problem}; only an http(s) URL is a docs link"),
                    "write a full URL such as \"https://docs.example.com/api\"",
                );
            }
            value.get_ref().clone()
        });
        let allow_plaintext = raw.allow_plaintext.unwrap_or(false);
        let upstream = self.upstream(&raw.upstream, allow_plaintext);
        let credential = raw
            .credential
            .as_ref()
            .map(|credential| self.credential(credential, allow_plaintext));
        let client_certificate = self.client_certificate(&raw.client_certificate);
        let data_classes = raw.data_classes.as_ref().map(|classes| {
            classes
                .iter()
                .map(|class| {
                    let text = class.get_ref();
                    let valid = text.split('.').count() == 2
                        && text
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
                    if !valid {
                        self.error(
                            class.span(),
                            format!("`{text}` is not a data class id"),
                            "use ids like \"pii.email\", \"payment.card\", \"secret.stripe_key\" (see docs/DATA.md)",
                        );
                    }
                    text.clone()
                })
                .collect::<Vec<_>>()
        });
        let on_unapproved = match raw
            .on_unapproved
            .as_ref()
            .map(|o| (o, o.get_ref().as_str()))
        {
            None | Some((_, "block")) => OnUnapproved::Block,
            Some((_, "redact")) => OnUnapproved::Redact,
            Some((_, "report")) => OnUnapproved::Report,
            Some((value, other)) => {
                self.error(
                    value.span(),
                    format!("`on_unapproved` = \"{other}\" is not known"),
                    "use \"block\", \"redact\" or \"report\"",
                );
                OnUnapproved::Block
            }
        };
        let audit = match raw.audit.as_ref().map(|a| (a, a.get_ref().as_str())) {
            None | Some((_, "required")) => AuditMode::Required,
            Some((_, "best_effort")) => AuditMode::BestEffort,
            Some((value, other)) => {
                self.error(
                    value.span(),
                    format!("`audit` = \"{other}\" is not known"),
                    "use \"required\" (no call leaves unless its audit entry is durable) or \"best_effort\"",
                );
                AuditMode::Required
            }
        };
        let rate_limit = raw.rate_limit.as_ref().map(|limit| self.rate_limit(limit));
        let max_concurrent_calls = raw
            .max_concurrent_calls
            .as_ref()
            .map(|limit| self.at_least(limit, "max_concurrent_calls", 1));
        let max_concurrent_calls_per_caller = raw
            .max_concurrent_calls_per_caller
            .as_ref()
            .map(|limit| self.at_least(limit, "max_concurrent_calls_per_caller", 1));
        let operations = self.operations(&name, &raw.operations);
        // A WebSocket session's messages are not scanned: with `data_classes` its calls would be
        // recorded as scanned and clean while anything went through them.
        if raw.data_classes.is_some() {
            let sessions = raw.operations.get_ref().iter().filter_map(|operation| {
                operation
                    .websocket
                    .as_ref()
                    .filter(|flag| *flag.get_ref())
                    .map(|flag| (operation.id.get_ref(), flag.span()))
            });
            for (id, span) in sessions.collect::<Vec<_>>() {
                self.error(
                    span,
                    format!(
                        "operation `{id}` has websocket = true in integration `{name}`, which has data_classes: WebSocket messages are not scanned, so the session's data would pass unchecked"
                    ),
                    "put the WebSocket operation in an integration of its own without data_classes (same upstream), or remove websocket = true",
                );
            }
        }
        let hosts = self.host_patterns(&raw.hosts, "hosts");
        let intercept = raw.intercept.as_ref().is_none_or(|i| *i.get_ref());
        if intercept {
            for host in &raw.hosts {
                let pattern = host.get_ref().trim().to_ascii_lowercase();
                if check_host_pattern(&pattern).is_ok() {
                    self.intercepted_hosts
                        .push((pattern, host.span(), name.clone()));
                }
            }
        }
        if let Some(intercept) = &raw.intercept {
            if raw.hosts.is_empty() {
                self.error(
                    intercept.span(),
                    "`intercept` is set but the integration lists no `hosts`",
                    "add `hosts = [\"api.vendor.com\"]` (the names clients reach through the proxy), or remove `intercept`",
                );
            }
        }
        let allow_private_networks = raw
            .allow_private_networks
            .iter()
            .filter_map(|value| self.ip_network(value))
            .collect();
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|v| self.resolve_path(v, "ca_file"));
        let connect_timeout_ms = self.timeout(
            &raw.connect_timeout_ms,
            "connect_timeout_ms",
            DEFAULT_CONNECT_TIMEOUT_MS,
        );
        let request_timeout_ms = self.timeout(
            &raw.request_timeout_ms,
            "request_timeout_ms",
            DEFAULT_REQUEST_TIMEOUT_MS,
        );
        let idle_timeout_ms = self.timeout(
            &raw.idle_timeout_ms,
            "idle_timeout_ms",
            DEFAULT_IDLE_TIMEOUT_MS,
        );
        IntegrationConfig {
            name,
            vendor,
            owner,
            purpose: raw.purpose,
            docs_url,
            upstream,
            credential,
            rate_limit,
            max_concurrent_calls,
            max_concurrent_calls_per_caller,
            operations,
            hosts,
            intercept,
            allow_private_networks,
            allow_plaintext,
            ca_file,
            client_certificate,
            audit,
            data_classes,
            on_unapproved,
            scan_max_body_bytes: match &raw.scan_max_body_bytes {
                Some(value) if *value.get_ref() > MAX_SCAN_MAX_BODY_BYTES => {
                    self.error(
                        value.span(),
                        format!(
                            "`scan_max_body_bytes` is {}; at most {MAX_SCAN_MAX_BODY_BYTES} (64 MiB) is read into memory to be scanned",
                            value.get_ref()
                        ),
                        "lower it: a body larger than it is forwarded unscanned and marked so (a scanned body, its decoded reading and its copy count against the gateway's 256 MiB scan budget)",
                    );
                    DEFAULT_SCAN_MAX_BODY_BYTES
                }
                Some(value) => *value.get_ref(),
                None => DEFAULT_SCAN_MAX_BODY_BYTES,
            },
            connect_timeout_ms,
            request_timeout_ms,
            idle_timeout_ms,
            response_idle_timeout_ms: raw
                .response_idle_timeout_ms
                .unwrap_or(DEFAULT_RESPONSE_IDLE_TIMEOUT_MS),
            total_timeout_ms: raw.total_timeout_ms.unwrap_or(DEFAULT_TOTAL_TIMEOUT_MS),
            max_request_body_bytes: raw
                .max_request_body_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES),
            max_response_body_bytes: raw
                .max_response_body_bytes
                .unwrap_or(DEFAULT_MAX_RESPONSE_BODY_BYTES),
            max_header_bytes: raw
                .max_header_bytes
                .as_ref()
                .map(|value| self.integration_header_bytes(value)),
        }
    }

    /// An integration's `max_header_bytes`: from the smallest the gateway takes up to the
    /// gateway's own.
    fn integration_header_bytes(&mut self, value: &Spanned<u64>) -> usize {
        let bytes = usize::try_from(*value.get_ref()).unwrap_or(usize::MAX);
        let most = self.max_header_bytes;
        if bytes < MIN_MAX_HEADER_BYTES {
            self.error(
                value.span(),
                format!("`max_header_bytes` = {bytes} is too small; the minimum is {MIN_MAX_HEADER_BYTES}"),
                format!("use a value from {MIN_MAX_HEADER_BYTES} to {most}, or remove the key for the gateway's limit"),
            );
        } else if bytes > most {
            self.error(
                value.span(),
                format!("`max_header_bytes` = {bytes} is more than the gateway's ({most}), which every request meets first"),
                format!("use a value up to {most}, or raise `max_header_bytes` in [gateway]"),
            );
        }
        bytes
    }

    fn proxy(&mut self, raw: Option<RawProxy>) -> ProxyConfig {
        let Some(raw) = raw else {
            return ProxyConfig::default();
        };
        let defaults = ProxyConfig::default();
        let allowed_ports = match &raw.allowed_ports {
            None => defaults.allowed_ports,
            Some(ports) => ports
                .iter()
                .filter_map(|port| match u16::try_from(*port.get_ref()) {
                    Ok(value) if value > 0 => Some(value),
                    _ => {
                        self.error(
                            port.span(),
                            format!("port {} is not a TCP port", port.get_ref()),
                            "use a number from 1 to 65535, such as 443",
                        );
                        None
                    }
                })
                .collect(),
        };
        // `deny_hosts` may name networks too; they, and its addresses, are refused wherever a
        // destination resolves.
        let (networks, names): (Vec<_>, Vec<_>) = raw
            .deny_hosts
            .iter()
            .cloned()
            .partition(|value| value.get_ref().contains('/'));
        let deny_hosts = self.proxy_host_patterns(&names, "deny_hosts");
        let mut deny_networks: Vec<ipnet::IpNet> = networks
            .iter()
            .filter_map(|value| self.ip_network(value))
            .map(ipv4_mapped_as_ipv4)
            .collect();
        deny_networks.extend(
            deny_hosts
                .iter()
                // (An IPv4-mapped address is already written as its IPv4 address here.)
                .filter_map(|host| host.parse::<std::net::IpAddr>().ok())
                .map(ipnet::IpNet::from),
        );
        ProxyConfig {
            enabled: raw.enabled.unwrap_or(true),
            mode: raw
                .mode
                .as_ref()
                .map_or(ProxyMode::Enforce, |mode| self.proxy_mode(mode)),
            allow_hosts: self.proxy_host_patterns(&raw.allow_hosts, "allow_hosts"),
            deny_hosts,
            deny_networks,
            allowed_ports,
            allow_private_networks: raw
                .allow_private_networks
                .iter()
                .filter_map(|value| self.ip_network(value))
                .collect(),
            connect_timeout_ms: self.timeout(
                &raw.connect_timeout_ms,
                "connect_timeout_ms",
                DEFAULT_CONNECT_TIMEOUT_MS,
            ),
            idle_timeout_ms: self.timeout(
                &raw.idle_timeout_ms,
                "idle_timeout_ms",
                DEFAULT_IDLE_TIMEOUT_MS,
            ),
            response_idle_timeout_ms: raw
                .response_idle_timeout_ms
                .unwrap_or(DEFAULT_RESPONSE_IDLE_TIMEOUT_MS),
            max_tunnels_per_caller: self.at_least_or(
                &raw.max_tunnels_per_caller,
                1,
                DEFAULT_MAX_TUNNELS_PER_CALLER,
                "`max_tunnels_per_caller` is 0, so no caller could open a tunnel",
                format!("set it to 1 or more, or remove it for the default {DEFAULT_MAX_TUNNELS_PER_CALLER}; to turn the forward proxy off, set `enabled = false`"),
            ),
            intercept_ca_names: self.intercept_ca_names(&raw.intercept_ca_names),
        }
    }

    /// `[proxy] intercept_ca_names`: DNS names (each covering every name below it, as RFC
    /// 5280's name constraints do), and every intercepted integration's hosts inside them.
    fn intercept_ca_names(&mut self, values: &[Spanned<String>]) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(values.len());
        let mut refused = false;
        for value in values {
            let name = value.get_ref().trim().to_ascii_lowercase();
            let problem = if let Err(problem) = check_host_pattern(&name) {
                Some(problem)
            } else if name.starts_with("*.") {
                Some("a name already covers every name below it, so it takes no wildcard")
            } else if name.parse::<std::net::Ipv4Addr>().is_ok() {
                Some("it is an address; the CA is constrained to names and vouches for no address")
            } else {
                None
            };
            refused |= problem.is_some();
            if let Some(problem) = problem {
                self.error(
                    value.span(),
                    format!(
                        "`intercept_ca_names` entry \"{}\" is not a DNS name: {problem}",
                        without_credentials(&name)
                    ),
                    "write a name such as \"stripe.com\" (it covers api.stripe.com and every other name below it)",
                );
            } else if names.contains(&name) {
                self.error(
                    value.span(),
                    format!("`intercept_ca_names` lists \"{name}\" twice"),
                    "list each name once",
                );
            } else {
                names.push(name);
            }
        }
        // Hosts are judged against the whole list only: against part of it they would draw
        // errors that fixing the list's own does away with.
        if names.is_empty() || refused {
            return names;
        }
        for (pattern, span, integration) in std::mem::take(&mut self.intercepted_hosts) {
            let base = pattern.strip_prefix("*.").unwrap_or(&pattern);
            if base.parse::<std::net::Ipv4Addr>().is_ok() {
                self.error(
                    span,
                    format!("integration `{integration}` intercepts the address {pattern}, and a CA constrained by `[proxy] intercept_ca_names` vouches for names only"),
                    "reach the vendor by name, or set `intercept = false` on the integration",
                );
            } else if !names.iter().any(|name| within_name(base, name)) {
                self.error(
                    span,
                    format!("integration `{integration}` intercepts {pattern}, which is outside `[proxy] intercept_ca_names` ({}): clients would refuse its certificate", names.join(", ")),
                    "add the vendor's domain to `intercept_ca_names` (an existing CA must then be replaced: move <data_dir>/ca away and have clients trust the new one), or set `intercept = false` on the integration",
                );
            }
        }
        names.sort();
        names
    }

    fn proxy_mode(&mut self, value: &Spanned<String>) -> ProxyMode {
        match value.get_ref().as_str() {
            "enforce" => ProxyMode::Enforce,
            "report" => ProxyMode::Report,
            "open" => ProxyMode::Open,
            other => {
                self.error(
                    value.span(),
                    format!("proxy mode \"{other}\" is not known"),
                    "use \"enforce\" (only allowed hosts pass), \"report\" (all pass, the rest reported) or \"open\"",
                );
                ProxyMode::Enforce
            }
        }
    }

    /// [`Self::host_patterns`], or an IPv6 address (brackets optional), which the forward
    /// proxy's lists may hold: kept in the one form the proxy matches, compressed, and an
    /// IPv4-mapped address (`::ffff:127.0.0.1`) as the IPv4 address it dials.
    fn proxy_host_patterns(&mut self, values: &[Spanned<String>], key: &str) -> Vec<String> {
        let mut patterns = Vec::new();
        let mut names = Vec::new();
        for value in values {
            match ipv6_literal(value.get_ref()) {
                Some(address) => patterns.push(match address.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => address.to_string(),
                }),
                None => names.push(value.clone()),
            }
        }
        patterns.extend(self.host_patterns(&names, key));
        patterns
    }

    /// Lowercased host patterns: a DNS name, optionally `*.` + a name (one-level wildcard).
    fn host_patterns(&mut self, values: &[Spanned<String>], key: &str) -> Vec<String> {
        values
            .iter()
            .filter_map(|value| {
                let pattern = value.get_ref().trim().to_ascii_lowercase();
                match check_host_pattern(&pattern) {
                    Ok(()) => Some(pattern),
                    Err(problem) => {
                        self.error(
                            value.span(),
                            format!(
                                "`{key}` entry \"{}\" is not a host pattern: {problem}",
                                without_credentials(&pattern)
                            ),
                            "write a host name such as \"api.stripe.com\" or a one-level wildcard such as \"*.example.com\" (no scheme, port or path)",
                        );
                        None
                    }
                }
            })
            .collect()
    }

    fn timeout(&mut self, value: &Option<Spanned<u64>>, key: &str, default: u64) -> u64 {
        self.at_least_or(
            value,
            1,
            default,
            format!("`{key}` is 0; a timeout must be greater than zero"),
            format!(
                "set `{key}` to a number of milliseconds, or remove it for the default {default}"
            ),
        )
    }

    /// The value set, or `default` when unset. Below `min` it is an error at the value (the
    /// `default` then stands in, so the rest of the file is still checked).
    fn at_least_or<T: PartialOrd + Copy>(
        &mut self,
        value: &Option<Spanned<T>>,
        min: T,
        default: T,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> T {
        match value {
            Some(value) if *value.get_ref() < min => {
                self.error(value.span(), message, fix);
                default
            }
            Some(value) => *value.get_ref(),
            None => default,
        }
    }

    /// Never echoes the URL: it may carry a password.
    fn upstream(&mut self, value: &Spanned<String>, allow_plaintext: bool) -> url::Url {
        let placeholder = || url::Url::parse("https://invalid.invalid/").expect("valid URL");
        let mut upstream = match url::Url::parse(value.get_ref()) {
            Ok(upstream) => upstream,
            Err(error) => {
                self.error(
                    value.span(),
                    format!("`upstream` is not a valid absolute URL: {error}"),
                    "write it as \"https://api.example.com\" (a path prefix is allowed)",
                );
                return placeholder();
            }
        };
        let span = value.span();
        match upstream.scheme() {
            "https" => {}
            "http" if allow_plaintext => {}
            "http" => self.error(
                span.clone(),
                "`upstream` uses plain http, which sends the credential unencrypted",
                "use https, or set `allow_plaintext = true` if the upstream really only speaks HTTP",
            ),
            scheme => self.error(
                span.clone(),
                format!("`upstream` has scheme `{scheme}`; only https (and http) are supported"),
                "write it as \"https://api.example.com\"",
            ),
        }
        if upstream.host_str().is_none_or(str::is_empty) {
            self.error(
                span.clone(),
                "`upstream` has no host",
                "write it as \"https://api.example.com\"",
            );
        }
        if !upstream.username().is_empty() || upstream.password().is_some() {
            self.error(
                span.clone(),
                "`upstream` contains a user name or password",
                "remove `user:password@` from the URL and configure `credential` instead",
            );
        }
        if upstream.query().is_some() {
            self.error(
                span.clone(),
                "`upstream` has a query string",
                "remove `?...`; use `credential = { kind = \"query\", ... }` for API keys in the query",
            );
        }
        if upstream.fragment().is_some() {
            self.error(
                span.clone(),
                "`upstream` has a fragment",
                "remove `#...` from the URL",
            );
        }
        // A key in the path would be shown by the admin API and in messages: refused unshown.
        if path_holds_a_key(upstream.path()) {
            self.error(
                span,
                "`upstream`'s path holds a piece that reads as a secret value (not shown)",
                "give the vendor's origin and path prefix only; Postern injects the credential (`credential = { kind = ... }`)",
            );
        }
        let trimmed = upstream.path().trim_end_matches('/').to_string();
        upstream.set_path(if trimmed.is_empty() { "/" } else { &trimmed });
        upstream
    }

    fn credential(
        &mut self,
        table: &Spanned<RawCredential>,
        allow_plaintext: bool,
    ) -> CredentialConfig {
        let raw = table.get_ref();
        let kind = match raw.kind.get_ref().as_str() {
            "bearer" => Some(CredentialKind::Bearer),
            "basic" => Some(CredentialKind::Basic),
            "header" => Some(CredentialKind::Header),
            "query" => Some(CredentialKind::Query),
            "oauth2" => Some(CredentialKind::OAuth2),
            other => {
                self.error(
                    raw.kind.span(),
                    format!("credential kind `{other}` is not known"),
                    "use one of: \"bearer\", \"basic\", \"header\" (with `name`), \"query\" (with `param`), \"oauth2\" (with `token_url`, `client_id`, `client_secret`)",
                );
                None
            }
        };
        let given = [
            raw.from_env.is_some(),
            raw.from_file.is_some(),
            raw.secret.is_some(),
            raw.client_secret.is_some(),
        ]
        .iter()
        .filter(|given| **given)
        .count();
        let source = if given > 1 {
            self.error(
                table.span(),
                "credential names more than one of `secret`, `from_env` and `from_file`",
                "keep exactly one: `secret = \"NAME\"` (the vault), `from_env` or `from_file`",
            );
            SecretSource::Env(String::new())
        } else if let Some(variable) = &raw.from_env {
            let name = variable.get_ref();
            if name.is_empty() || name.contains(['=', '\0']) || name.contains(char::is_whitespace) {
                self.error(
                    variable.span(),
                    "`from_env` is not a valid environment variable name",
                    "name the variable that holds the secret, e.g. `from_env = \"STRIPE_KEY\"`",
                );
            } else if reads_as_a_secret(name) {
                // Refused here, and never echoed: the name is repeated by `check`, the logs
                // and `/readyz` when the variable is missing.
                self.error(
                    variable.span(),
                    "`from_env` reads as a secret value, not the name of a variable",
                    "put the value in an environment variable and name it here, e.g. `from_env = \"STRIPE_KEY\"`; rotate the value if this file was shared",
                );
            }
            SecretSource::Env(name.clone())
        } else if let Some(file) = &raw.from_file {
            SecretSource::File(self.resolve_path(file, "from_file"))
        } else if let Some(name) = raw.secret.as_ref().or(raw.client_secret.as_ref()) {
            if raw.client_secret.is_some() && kind.is_some() && kind != Some(CredentialKind::OAuth2)
            {
                self.error(
                    name.span(),
                    "`client_secret` is only used with kind = \"oauth2\"",
                    "use `secret = \"NAME\"` for other kinds",
                );
            }
            let text = name.get_ref();
            if text.len() > 128
                || !text.contains(|c: char| c.is_ascii_alphanumeric())
                || !text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                self.error(
                    name.span(),
                    "`secret` is not a valid vault credential name",
                    "use letters, digits, '.', '-' and '_', with at least one letter or digit, as given \
                     to `postern creds set NAME`",
                );
            } else if reads_as_a_secret(text) {
                let key = match raw.client_secret.is_some() {
                    true => "client_secret",
                    false => "secret",
                };
                self.error(
                    name.span(),
                    format!("`{key}` reads as a secret value, not the name of a vault credential"),
                    format!("store the value with `postern creds set NAME` (it asks for it) and write `{key} = \"NAME\"`; rotate the value if this file was shared"),
                );
            }
            SecretSource::Vault(text.clone())
        } else {
            self.error(
                table.span(),
                "credential does not say where its secret comes from",
                "add `secret = \"NAME\"` (stored with `postern creds set NAME`), `from_env = \"VARIABLE\"` or `from_file = \"path/to/secret\"`",
            );
            SecretSource::Env(String::new())
        };
        let header_name = self.kind_specific(
            kind,
            CredentialKind::Header,
            &raw.name,
            &raw.kind,
            "name",
            "the header name, e.g. `name = \"X-Api-Key\"`",
        );
        if let Some(header) = &raw.name {
            if kind == Some(CredentialKind::Header) {
                self.check_header_name(header);
            }
        }
        let query_param = self.kind_specific(
            kind,
            CredentialKind::Query,
            &raw.param,
            &raw.kind,
            "param",
            "the query parameter name, e.g. `param = \"api_key\"`",
        );
        if let Some(param) = &raw.param {
            let valid = !param.get_ref().is_empty()
                && param
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~[]".contains(c));
            if kind == Some(CredentialKind::Query) && !valid {
                // Not echoed: `api_key=sk_live_…` puts the secret itself here.
                let (message, fix) = name_problem(
                    "param",
                    param.get_ref(),
                    |c| c.is_ascii_alphanumeric() || "-._~[]".contains(c),
                    ('=', "query parameter"),
                    "use letters, digits and '-', '.', '_', '~', '[', ']' only, e.g. \"api_key\"",
                );
                self.error(param.span(), message, fix);
            }
        }
        let username = raw.username.as_ref().map(|username| {
            if kind.is_some() && kind != Some(CredentialKind::Basic) {
                self.error(
                    username.span(),
                    "`username` is only used with kind = \"basic\"",
                    "remove `username`, or set kind = \"basic\"",
                );
            } else if username.get_ref().is_empty() || username.get_ref().contains(':') {
                self.error(
                    username.span(),
                    "`username` is empty or contains ':'",
                    "use the user name alone; the secret is then the password",
                );
            }
            username.get_ref().clone()
        });
        let oauth2 = self.oauth2(kind, raw, allow_plaintext);
        CredentialConfig {
            kind: kind.unwrap_or(CredentialKind::Bearer),
            source,
            header_name,
            query_param,
            username,
            oauth2,
        }
    }

    fn oauth2(
        &mut self,
        kind: Option<CredentialKind>,
        raw: &RawCredential,
        allow_plaintext: bool,
    ) -> Option<OAuth2Config> {
        let token_url = self.kind_specific(
            kind,
            CredentialKind::OAuth2,
            &raw.token_url,
            &raw.kind,
            "token_url",
            "the token endpoint, e.g. `token_url = \"https://auth.example.com/oauth/token\"`",
        );
        let client_id = self.kind_specific(
            kind,
            CredentialKind::OAuth2,
            &raw.client_id,
            &raw.kind,
            "client_id",
            "the OAuth2 client id, e.g. `client_id = \"postern-prod\"`",
        );
        let optional = [
            ("scope", raw.scope.as_ref().map(|s| s.span())),
            ("client_auth", raw.client_auth.as_ref().map(|s| s.span())),
            ("params", raw.params.as_ref().map(|s| s.span())),
        ];
        if kind.is_some() && kind != Some(CredentialKind::OAuth2) {
            for (key, span) in optional {
                if let Some(span) = span {
                    self.error(
                        span,
                        format!("`{key}` is only used with kind = \"oauth2\""),
                        format!("remove `{key}`, or set kind = \"oauth2\""),
                    );
                }
            }
            return None;
        }
        let (token_url_text, client_id) = (token_url?, client_id?);
        let span = raw.token_url.as_ref().map(|t| t.span()).unwrap_or_default();
        let token_url = match url::Url::parse(&token_url_text) {
            Ok(url)
                if !url.username().is_empty()
                    || url.password().is_some()
                    || url.fragment().is_some() =>
            {
                self.error(
                    span,
                    "`token_url` holds a user name, password or fragment, which are not sent",
                    "write the endpoint alone; the client's id and secret go in `client_id` and \
                     `client_secret`",
                );
                return None;
            }
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && allow_plaintext) => {
                url
            }
            Ok(_) => {
                self.error(
                    span,
                    "`token_url` must use https (http only with `allow_plaintext = true`)",
                    "write it as \"https://auth.example.com/oauth/token\"",
                );
                return None;
            }
            Err(error) => {
                self.error(
                    span,
                    format!("`token_url` is not a valid absolute URL: {error}"),
                    "write it as \"https://auth.example.com/oauth/token\"",
                );
                return None;
            }
        };
        let client_auth = match raw.client_auth.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("basic") => OAuth2ClientAuth::Basic,
            Some("body") => OAuth2ClientAuth::Body,
            Some(other) => {
                self.error(
                    raw.client_auth
                        .as_ref()
                        .map(|c| c.span())
                        .unwrap_or_default(),
                    format!("`client_auth` = \"{other}\" is not known"),
                    "use \"basic\" (HTTP Basic, the default) or \"body\" (form fields)",
                );
                OAuth2ClientAuth::Basic
            }
        };
        let params = raw
            .params
            .as_ref()
            .map(|p| {
                self.oauth2_params(p);
                p.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Some(OAuth2Config {
            token_url,
            client_id,
            scope: raw.scope.as_ref().map(|s| s.get_ref().clone()),
            client_auth,
            params,
        })
    }

    /// An OAuth2 credential's extra token-request `params`: none Postern sends itself, none that
    /// carries a secret (which belongs in the vault, not the config file), and no value that
    /// reads as one (refused without being echoed).
    fn oauth2_params(&mut self, params: &Spanned<std::collections::BTreeMap<String, String>>) {
        const SENT_BY_POSTERN: &[&str] = &["grant_type", "client_id", "client_secret", "scope"];
        const SECRETS: &[&str] = &[
            "password",
            "refresh_token",
            "client_assertion",
            "assertion",
            "code",
            "code_verifier",
            "subject_token",
            "actor_token",
        ];
        for (key, value) in params.get_ref() {
            if SENT_BY_POSTERN.contains(&key.as_str()) {
                self.error(
                    params.span(),
                    format!("`params` sets `{key}`, which Postern sends itself"),
                    "remove it: set client_id, scope and client_secret (a vault credential's name) as keys of the credential; the grant is client_credentials",
                );
            } else if SECRETS.contains(&key.as_str()) {
                self.error(
                    params.span(),
                    format!("`params` sets `{key}`, which carries a secret in the config file"),
                    "remove it: Postern requests tokens with client_credentials, its client secret kept in the vault (client_secret = \"VAULT-NAME\")",
                );
            } else if reads_as_a_secret(value) {
                self.error(
                    params.span(),
                    format!("`params.{key}` reads as a secret value (not shown)"),
                    "a token request's extra parameters are not secret (an audience, a resource); keep secrets in the vault",
                );
            }
        }
    }

    fn client_certificate(
        &mut self,
        raw: &Option<Spanned<crate::raw::RawClientCertificate>>,
    ) -> Option<ClientCertificateConfig> {
        let raw = raw.as_ref()?.get_ref();
        for name in [&raw.cert, &raw.key] {
            let text = name.get_ref();
            if text.is_empty()
                || !text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                self.error(
                    name.span(),
                    "client certificate names must be vault credential names",
                    "store the PEM with `postern creds set NAME --kind tls_client_cert --from-file cert.pem` and name it here",
                );
            }
        }
        Some(ClientCertificateConfig {
            cert_secret: raw.cert.get_ref().clone(),
            key_secret: raw.key.get_ref().clone(),
        })
    }

    /// A credential key that is required for one kind and refused for the others.
    fn kind_specific(
        &mut self,
        kind: Option<CredentialKind>,
        owning_kind: CredentialKind,
        value: &Option<Spanned<String>>,
        kind_value: &Spanned<String>,
        key: &str,
        what: &str,
    ) -> Option<String> {
        let Some(kind) = kind else {
            return value.as_ref().map(|value| value.get_ref().clone());
        };
        let owning_name = format!("{owning_kind:?}").to_ascii_lowercase();
        match value {
            Some(value) if kind != owning_kind => {
                self.error(
                    value.span(),
                    format!("`{key}` is only used with kind = \"{owning_name}\""),
                    format!("remove `{key}`, or set kind = \"{owning_name}\""),
                );
                None
            }
            Some(value) => Some(value.get_ref().clone()),
            None if kind == owning_kind => {
                self.error(
                    kind_value.span(),
                    format!("credential kind \"{owning_name}\" needs `{key}`"),
                    format!("add {what}"),
                );
                None
            }
            None => None,
        }
    }

    fn check_header_name(&mut self, header: &Spanned<String>) {
        let name = header.get_ref();
        let is_token = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !is_token {
            // Not echoed: `Authorization: Bearer sk_live_…` puts the secret itself here.
            let (message, fix) = name_problem(
                "name",
                name,
                |c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c),
                (':', "HTTP header"),
                "use letters, digits and '-' only, e.g. \"X-Api-Key\"",
            );
            self.error(header.span(), message, fix);
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            self.error(
                header.span(),
                format!("header `{name}` is managed by the gateway and cannot carry a credential"),
                "use the header the vendor documents for API keys, e.g. \"X-Api-Key\"",
            );
        }
    }

    fn rate_limit(&mut self, raw: &RawRateLimit) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: self.at_least(&raw.requests_per_second, "requests_per_second", 1),
            burst: self.at_least(&raw.burst, "burst", 1),
        }
    }

    fn operations(
        &mut self,
        integration: &str,
        raw: &Spanned<Vec<RawOperation>>,
    ) -> Vec<OperationConfig> {
        if raw.get_ref().is_empty() {
            self.error(
                raw.span(),
                format!("integration `{integration}` has no operations"),
                "list at least one: `operations = [{ id = \"get_thing\", method = \"GET\", \
                 path = \"/v1/things/{id}\" }]`",
            );
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut shapes: HashMap<(String, String), (String, usize)> = HashMap::new();
        let mut operations = Vec::with_capacity(raw.get_ref().len());
        for operation in raw.get_ref() {
            let id = operation.id.get_ref().clone();
            if id == ALL_OPERATIONS || !is_identifier(&id) {
                self.error(
                    operation.id.span(),
                    format!("operation id `{id}` is not valid"),
                    "use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
                );
            }
            if let Some(first_line) = ids.get(&id) {
                self.error(
                    operation.id.span(),
                    format!(
                        "operation id `{id}` is used twice in integration `{integration}` \
                         (first on line {first_line})"
                    ),
                    "give each operation of an integration its own id",
                );
            } else {
                ids.insert(id.clone(), self.line_of(operation.id.span()));
            }
            let method = operation.method.get_ref().to_ascii_uppercase();
            let method_is_valid = ALLOWED_METHODS.contains(&method.as_str());
            if !method_is_valid {
                self.error(
                    operation.method.span(),
                    format!("method `{}` is not supported", operation.method.get_ref()),
                    format!("use one of: {}", ALLOWED_METHODS.join(", ")),
                );
            }
            let path = operation.path.get_ref().clone();
            // A key pasted into a template (a full URL copied in, `?api_key=sk_live_…`) would be
            // shown in every message about it, and recorded in every event and audit entry of
            // its calls: refused without being shown. (Only what certainly is a key: a literal
            // that merely looks random, an account id, is a path a grant may pin.)
            if path_holds_a_key(&path) {
                self.error(
                    operation.path.span(),
                    format!("operation `{id}`'s path holds a piece that reads as a secret value (not shown)"),
                    "write the vendor's path template (\"/v1/charges/{id}\"), with no key in it: Postern injects the vendor credential",
                );
                continue;
            }
            match check_path_template(&path) {
                Err(error) => self.error(operation.path.span(), error.message, error.fix),
                Ok(_) if !method_is_valid => {}
                Ok(shape) => {
                    let key = (method.clone(), shape);
                    if let Some((first_id, first_line)) = shapes.get(&key) {
                        self.error(
                            operation.path.span(),
                            format!(
                                "operation `{id}` ({method} {path}) matches the same requests as \
                                 operation `{first_id}` on line {first_line}"
                            ),
                            "remove one of them; a method and path may appear once per integration",
                        );
                    } else {
                        let line = self.line_of(operation.path.span());
                        shapes.insert(key, (id.clone(), line));
                    }
                }
            }
            let websocket = operation.websocket.as_ref().is_some_and(|w| *w.get_ref());
            if let Some(flag) = operation.websocket.as_ref().filter(|_| websocket) {
                if method_is_valid && method != "GET" {
                    self.error(
                        flag.span(),
                        format!(
                            "operation `{id}` is {method} with websocket = true, but a WebSocket \
                             handshake is a GET"
                        ),
                        "set method = \"GET\" on this operation, or remove websocket = true",
                    );
                }
            }
            operations.push(OperationConfig {
                id,
                method,
                path,
                websocket,
            });
        }
        operations
    }

    fn ip_network(&mut self, value: &Spanned<String>) -> Option<ipnet::IpNet> {
        let text = value.get_ref().trim();
        if let Ok(network) = text.parse::<ipnet::IpNet>() {
            // `10.0.0.1/8` parses, and would allow all of 10/8: whoever wrote it meant either
            // that network or the one address, and a guard must not guess wider.
            if network.addr() != network.network() {
                let (whole, one) = (network.trunc(), ipnet::IpNet::from(network.addr()));
                self.error(
                    value.span(),
                    format!("\"{text}\" has host bits set: it names {whole}, not one address"),
                    format!(
                        "write \"{whole}\" for the whole network or \"{one}\" for the one address"
                    ),
                );
                return None;
            }
            return Some(network);
        }
        if let Ok(address) = text.parse::<std::net::IpAddr>() {
            return Some(ipnet::IpNet::from(address));
        }
        self.error(
            value.span(),
            format!("\"{text}\" is not an IP network or address"),
            "write a CIDR network such as \"10.0.0.0/8\" or a single address such as \"127.0.0.1\"",
        );
        None
    }

    fn grants(
        &mut self,
        raw_grants: Vec<Spanned<RawGrant>>,
        callers: &[CallerConfig],
        integrations: &[IntegrationConfig],
    ) -> Vec<GrantConfig> {
        let mut grants = Vec::with_capacity(raw_grants.len());
        for raw in raw_grants {
            let raw = raw.into_inner();
            let caller = raw.caller.get_ref().clone();
            if !callers.iter().any(|known| known.name == caller) {
                let known: Vec<&str> = callers.iter().map(|c| c.name.as_str()).collect();
                self.error(
                    raw.caller.span(),
                    format!("grant names caller `{caller}`, which is not defined"),
                    known_names_fix("callers", "[[callers]]", &known),
                );
            }
            let integration_name = raw.integration.get_ref().clone();
            let integration = integrations.iter().find(|i| i.name == integration_name);
            if integration.is_none() {
                let known: Vec<&str> = integrations.iter().map(|i| i.name.as_str()).collect();
                self.error(
                    raw.integration.span(),
                    format!("grant names integration `{integration_name}`, which is not defined"),
                    known_names_fix("integrations", "[[integrations]]", &known),
                );
            }
            let listed = raw.operations.get_ref();
            if listed.is_empty() {
                self.error(
                    raw.operations.span(),
                    "grant allows no operations",
                    "list operation ids, or `[\"*\"]` for every operation of the integration",
                );
            }
            let has_wildcard = listed.iter().any(|op| op.get_ref() == ALL_OPERATIONS);
            if has_wildcard && listed.len() > 1 {
                self.error(
                    raw.operations.span(),
                    "grant lists \"*\" together with other operations",
                    "use `[\"*\"]` alone for every operation, or list the ids without \"*\"",
                );
            }
            if let Some(integration) = integration {
                for operation in listed {
                    let id = operation.get_ref();
                    let exists = id == ALL_OPERATIONS
                        || integration.operations.iter().any(|known| &known.id == id);
                    if !exists {
                        // Each id once, though the integration may define one twice (an error
                        // of its own).
                        let mut known: Vec<&str> = Vec::new();
                        for known_id in integration.operations.iter().map(|o| o.id.as_str()) {
                            if !known.contains(&known_id) {
                                known.push(known_id);
                            }
                        }
                        self.error(
                            operation.span(),
                            format!("integration `{}` has no operation `{id}`", integration.name),
                            format!(
                                "use one of its operations: {}, or \"*\" for all",
                                known.join(", ")
                            ),
                        );
                    }
                }
            }
            grants.push(GrantConfig {
                caller,
                integration: integration_name,
                operations: listed.iter().map(|op| op.get_ref().clone()).collect(),
            });
        }
        grants
    }
}

/// `text` as an IPv6 address, with or without brackets.
fn ipv6_literal(text: &str) -> Option<std::net::Ipv6Addr> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// An IPv4-mapped IPv6 network (`::ffff:203.0.113.0/120`) as the IPv4 network it maps
/// (`203.0.113.0/24`), so it covers the addresses a name resolves to in either family.
fn ipv4_mapped_as_ipv4(network: ipnet::IpNet) -> ipnet::IpNet {
    match network {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(network),
            None => network,
        },
        other => other,
    }
}

/// Whether the DNS name `host` is `name` or below it (RFC 5280 §4.2.1.10: labels added on the
/// left). Both lowercase, without a leading or trailing dot, as validated names and canonical
/// hosts are.
pub fn within_name(host: &str, name: &str) -> bool {
    host == name
        || host
            .strip_suffix(name)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// Whether `pattern` may stand in a `hosts`, `allow_hosts` or `deny_hosts` list as a name (a
/// lowercase DNS name, optionally `*.` + a name): `Err` says why not. The forward proxy's two
/// lists also take IPv6 addresses, checked before this (`proxy_host_patterns`).
pub fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() || name.len() > 253 {
        return Err("the name is empty or too long");
    }
    if name.contains('*') {
        return Err("only one leading `*.` wildcard label is allowed");
    }
    if name.contains(':') || name.contains('/') {
        return Err("it contains a scheme, port or path");
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(
                "a label is empty, too long, or has characters other than letters, digits, '-' and '_'",
            );
        }
    }
    if pattern.starts_with("*.") && !name.contains('.') {
        return Err("a wildcard must cover a name with at least two labels, such as *.example.com");
    }
    // Every label a number: an IPv4 address, which a request names (and Postern compares) as
    // the dotted quad a resolver reads it as (`2130706433` and `0x7f.1` are 127.0.0.1,
    // `010.0.0.1` is 8.0.0.1): in any other form the entry would never match.
    let numeric = |label: &str| match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    };
    // (`Ipv4Addr`'s parser takes only the dotted quad, without leading zeros.)
    if name.split('.').all(numeric)
        && (pattern.starts_with("*.") || name.parse::<std::net::Ipv4Addr>().is_err())
    {
        return Err(
            "it is an IPv4 address in a shorthand form (a request for it is matched as a dotted quad such as 127.0.0.1, without leading zeros), or a wildcard over numbers",
        );
    }
    Ok(())
}

/// The error for `key`, a name (an HTTP header's, a query parameter's) that may hold a
/// secret, and its fix, without the name itself: its length and its first character not
/// `allowed`. A name holding `separator` (`:` for a header, `=` for a parameter) was most likely
/// written with its value, the credential: the fix says so.
fn name_problem(
    key: &str,
    name: &str,
    allowed: impl Fn(char) -> bool,
    (separator, what): (char, &str),
    fix: &str,
) -> (String, String) {
    let Some(bad) = name.chars().find(|&c| !allowed(c)) else {
        return (
            format!("`{key}` is empty: give the {what} name"),
            fix.to_string(),
        );
    };
    let message = format!(
        "`{key}` ({} characters, holding {bad:?}) is not a valid {what} name",
        name.chars().count()
    );
    if name.contains(separator) {
        let fix = format!(
            "write the {what} name alone, without '{separator}' and a value: the value is the credential, which comes from `secret`, `from_env` or `from_file` ({})",
            fix.trim_start_matches("use ")
        );
        return (message, fix);
    }
    (message, fix.to_string())
}

/// The prefixes of well-known API keys and tokens (Stripe, GitHub, GitLab, Slack, Hugging Face,
/// OpenAI, Anthropic, AWS, Google, SendGrid, Postern's own caller tokens): what config checks
/// names against ([`reads_as_a_secret`]) and discovery keeps out of path templates.
pub const CREDENTIAL_PREFIXES: &[&str] = &[
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "pk_live_",
    "pk_test_",
    "whsec_",
    "pst_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "xapp-",
    "hf_",
    "sk-",
    "AKIA",
    "ASIA",
    "AIza",
    "ya29.",
    "SG.",
];

/// Whether `text`, written where a name belongs (a vault credential's, an environment
/// variable's), certainly is a secret value instead: an AWS access key id (`AKIA` or `ASIA` and
/// 16 capitals or digits), or a well-known key prefix followed by 16 or more letters and digits
/// that read as random ([`reads_as_random`], or 40 or more of them: `xoxb-` tokens are mostly
/// digits) rather than as words (`whsec_stripe_webhook_secret`, `sk-openai-production-key`,
/// `ASIA_SOUTHEAST_1_KEY` are names). Refused without being echoed.
pub fn reads_as_a_secret(text: &str) -> bool {
    // Base32 (capitals and 2 to 7), with a digit: `ASIAPACIFICSTRIPEKEY` is a name.
    let aws = text.len() == 20
        && (text.starts_with("AKIA") || text.starts_with("ASIA"))
        && text[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        && text[4..].bytes().any(|b| b.is_ascii_digit());
    aws || CREDENTIAL_PREFIXES.iter().any(|prefix| {
        text.strip_prefix(prefix).is_some_and(|rest| {
            let length = rest.bytes().filter(u8::is_ascii_alphanumeric).count();
            // Words after the prefix (`pst_svc1_eu2_token`) make a name, unless the rest is as
            // long as keys are (base64url keys hold `-` and `_` at random).
            let words = rest.contains(['_', '-', '.']);
            length >= 40 || (length >= 16 && !words && reads_as_random(rest, true))
        })
    })
}

/// Whether a URL path (an operation's template, an upstream's path, with any query) holds a
/// key: a piece that [`reads_as_a_secret`], or a vendor's token where its API takes it in the
/// path — a Telegram bot token (`/bot123456789:AAH…`, the colon also as `%3A`), a Slack
/// webhook's secret (`/services/T…/B…/<secret>`, `/workflows/T…/…`, `/triggers/T…/…`), a
/// Discord webhook's (`/webhooks/<id>/<token>`). Only what is certainly a key: an account id a
/// grant pins stays allowed.
pub fn path_holds_a_key(path: &str) -> bool {
    let pieces = |separators: &[char]| path.split(separators).collect::<Vec<_>>();
    let alphanumeric_or = |text: &str, others: &[u8]| {
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || others.contains(&b))
    };
    let id = |text: &str, first: u8| {
        text.len() >= 7
            && text.as_bytes()[0] == first
            && alphanumeric_or(text, b"")
            && !text.bytes().any(|b| b.is_ascii_lowercase())
    };
    let telegram = |segment: &str| {
        let colon = segment
            .find(':')
            .map(|at| (at, 1))
            .or_else(|| segment.to_ascii_lowercase().find("%3a").map(|at| (at, 3)));
        let Some((bot, token)) = colon.map(|(at, len)| (&segment[..at], &segment[at + len..]))
        else {
            return false;
        };
        bot.strip_prefix("bot").is_some_and(|digits| {
            (5..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }) && token.len() >= 30
            && alphanumeric_or(token, b"-_")
    };
    let segments = pieces(&['/', '?', '&', '=', ';']);
    let secret = |text: &str| text.len() >= 20 && alphanumeric_or(text, b"");
    let slack = segments
        .windows(3)
        .any(|three| id(three[0], b'T') && id(three[1], b'B') && secret(three[2]))
        || segments.iter().enumerate().any(|(at, segment)| {
            // Workflow and trigger webhooks: the team id, then the secret last.
            matches!(*segment, "workflows" | "triggers")
                && segments.get(at + 1).is_some_and(|team| id(team, b'T'))
                && segments[at + 2..].last().is_some_and(|last| secret(last))
        });
    let discord = segments.windows(3).any(|three| {
        three[0].eq_ignore_ascii_case("webhooks")
            && three[1].len() >= 15
            && three[1].bytes().all(|b| b.is_ascii_digit())
            && three[2].len() >= 50
            && alphanumeric_or(three[2], b"-_")
    });
    pieces(&['/', '?', '&', '=', ':', ';'])
        .into_iter()
        .any(reads_as_a_secret)
        || segments.iter().any(|segment| telegram(segment))
        || slack
        || discord
}

/// Whether `text`, written where a name belongs, may be a secret value ([`reads_as_a_secret`],
/// or 24 or more letters and digits that [`reads_as_random`]): such a name is not echoed where
/// the gateway says a credential is missing, nor kept as a caller discovered in a log.
pub fn may_be_a_secret(text: &str) -> bool {
    reads_as_a_secret(text)
        || (text.bytes().filter(u8::is_ascii_alphanumeric).count() >= 24
            && reads_as_random(text, false))
}

/// Whether the letters and digits of `text`, taken together, read as a random key's: both
/// letters and digits (or, with `letters_alone`, capitals and small letters), and the kind of
/// character (capital, small letter, digit) changing at two steps in five or more, as it does in
/// random keys, where a name's words change it at their starts only
/// (`SalesforceProductionClientSecret2024`: one step in four).
fn reads_as_random(text: &str, letters_alone: bool) -> bool {
    let kind = |byte: u8| match byte {
        b'0'..=b'9' => 0u8,
        b'A'..=b'Z' => 1,
        _ => 2,
    };
    let (mut length, mut kinds, mut changes, mut last) = (0usize, 0u8, 0usize, None);
    for byte in text.bytes().filter(u8::is_ascii_alphanumeric) {
        length += 1;
        kinds |= 1 << kind(byte);
        if last.is_some_and(|last| last != kind(byte)) {
            changes += 1;
        }
        last = Some(kind(byte));
    }
    let mixed = match letters_alone {
        // Digits and letters, or capitals and small letters.
        true => kinds.count_ones() >= 2,
        false => kinds & 1 != 0 && kinds & 0b110 != 0,
    };
    length >= 2 && mixed && changes * 5 >= (length - 1) * 2
}

/// `text` (a host pattern, a name, that may have been written as a URL) without what could be
/// a credential: a user name and password before `@`, a query or a fragment, each shown as `…`.
fn without_credentials(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(at) => text.split_at(at + 3),
        None => ("", text),
    };
    let (before, after) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    let (authority, path) = before.split_at(before.find('/').unwrap_or(before.len()));
    let mut out = scheme.to_string();
    let host = match authority.rfind('@') {
        Some(at) => {
            out.push_str("…@");
            &authority[at + 1..]
        }
        None => authority,
    };
    // A host is echoed; anything else (a secret pasted into a host list) is described.
    let host_like = host.len() <= 260
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-*:[]".contains(&b));
    if host_like {
        out.push_str(host);
    } else {
        out.push_str(&format!("({} characters)", host.chars().count()));
    }
    // A path may hold a token (`hooks.slack.com/services/…`, `api.telegram.org/bot<token>`).
    if !path.is_empty() {
        out.push_str("/…");
    }
    if let Some(mark) = after.chars().next() {
        out.push(mark);
        out.push('…');
    }
    out
}

fn known_names_fix(plural: &str, table: &str, known: &[&str]) -> String {
    if known.is_empty() {
        format!("no {plural} are defined; add a {table} table with this name")
    } else {
        // Each name once, in the order first defined (a name defined twice is an error of its
        // own).
        let mut names: Vec<&str> = Vec::with_capacity(known.len());
        for name in known {
            if !names.contains(name) {
                names.push(name);
            }
        }
        format!("use one of the defined {plural}: {}", names.join(", "))
    }
}

/// What is wrong with a listen address that is not `IP:port`, and the fix: a port out of range
/// or missing, or a host name.
fn socket_addr_problem(text: &str) -> (&'static str, &'static str) {
    const EXAMPLE: &str =
        "write it as \"127.0.0.1:8080\" or \"[::1]:8080\"; host names are not accepted";
    if text.parse::<std::net::IpAddr>().is_ok()
        || text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return (
            "has no port",
            "add the port after the address: \"127.0.0.1:8080\", or \"[::1]:8080\" for IPv6",
        );
    }
    if let Some((ip, port)) = text.rsplit_once(':') {
        let ip = ip
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(ip);
        if ip.parse::<std::net::IpAddr>().is_ok() && port.parse::<u16>().is_err() {
            return (
                "has a port that is not a number from 0 to 65535",
                "use a port from 1 to 65535 (0: any free port)",
            );
        }
    }
    ("is not an IP address and port", EXAMPLE)
}

/// `[a-z0-9][a-z0-9_-]{0,62}`
fn is_integration_name(name: &str) -> bool {
    let mut characters = name.chars();
    matches!(characters.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && characters.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: caller names and operation ids.
pub fn is_identifier(name: &str) -> bool {
    let mut characters = name.chars();
    matches!(characters.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && characters.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn check_spiffe_id(id: &str) -> Result<(), (String, String)> {
    let fix =
        "write it as \"spiffe://trust-domain/workload\", e.g. \"spiffe://example.org/checkout\"";
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err((
            format!("spiffe_id `{id}` does not start with \"spiffe://\""),
            fix.into(),
        ));
    };
    let (trust_domain, path) = match rest.split_once('/') {
        Some((trust_domain, path)) => (trust_domain, Some(path)),
        None => (rest, None),
    };
    if trust_domain.is_empty() {
        return Err((format!("spiffe_id `{id}` has no trust domain"), fix.into()));
    }
    let domain_is_valid = trust_domain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if !domain_is_valid {
        return Err((
            format!("spiffe_id `{id}` has an invalid trust domain `{trust_domain}`"),
            "use lowercase letters, digits, '.', '-' and '_' in the trust domain".into(),
        ));
    }
    if let Some(path) = path {
        let path_is_valid = path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        });
        if !path_is_valid {
            return Err((
                format!("spiffe_id `{id}` has an invalid path"),
                "use non-empty segments of letters, digits, '.', '-' and '_', without a trailing '/'"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn names_are_told_from_secret_values() {
        // Names, some with ids and dates in them: neither refused nor withheld.
        for name in [
            "STRIPE_KEY",
            "OPENAI_API_KEY_PRODUCTION_EU_WEST_1",
            "SalesforceProductionClientSecret2024",
            "salesforce-production-client-secret-2024",
            "stripe.prod.v2",
            "svc-billing",
            "alice@example.com",
            "sk-prod",
            "AKIA_KEY",
            "twilio_auth_token_2024_11_28",
            "ASIA_SOUTHEAST_1_OPENAI_KEY",
            "ASIA_PAC_STRIPE_SECRET",
            "sk-openai-production-key",
            "sk-anthropic-prod-eu",
            "whsec_stripe_webhook_secret",
            "xoxb-slack-alerts-bot-token",
            "github_pat_ci_release_bot_2024",
            "pst_caller_token_checkout",
            "GCP_PROJECT_123456789012_API_KEY_PROD",
            "AWS_ACCOUNT_123456789012_SECRET_KEY_ID",
            "OPENAI_KEY_20241128T103000Z_ROTATED",
            "hf_inference_api_token",
            "ASIAPACIFICSTRIPEKEY",
            "AKIAROTATEDKEY202411",
            "pst_svc1_eu2_us3_v4_token",
            "xoxb-bot-v2-ch1-ch2-ch3-alerts",
            "whsec_v2_eu1_us2_ap3_webhook",
            "hf_gpt2_m3_l4_r5_x6_token",
            "hf_llama2_7b_chat_v1_token",
        ] {
            assert!(!super::reads_as_a_secret(name), "{name}");
            assert!(!super::may_be_a_secret(name), "{name}");
        }
        // Names with an id that reads as random: not refused, but withheld where echoed.
        for name in [
            "tenant-7c9e6679-7425-40de-944b-e07fc1f90ae7-stripe",
            "stripe-acct_1MqR2xLkdIwHu7ix-secret",
        ] {
            assert!(!super::reads_as_a_secret(name), "{name}");
        }
        // Keys: refused.
        for secret in [
            "sk_live_51HqLyjWDarjtT1zdp7dc",
            "pst_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd",
            "AKIAIOSFODNN7EXAMPLE",
            "sk-proj-q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pSx4Lm7Qw2Er5Ty8Ui0Op",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh",
            "whsec_q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS",
        ] {
            assert!(super::reads_as_a_secret(secret), "{secret}");
        }
        // Random keys without a known prefix: withheld where echoed (base62, hexadecimal,
        // base64url).
        for secret in [
            "q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS",
            "3f9a0c7e5b1d2e8f4a6b0c9d1e3f5a7b9c0d2e4f",
            "Zx9-aB3cD4_eF5gH6iJ7kL8mN9oP0qR1sT2uV3wX4y",
        ] {
            assert!(super::may_be_a_secret(secret), "{secret}");
        }
    }

    /// `line:column: message` of each error in a config whose `[gateway]` ends with `extra`,
    /// or "ok" (as `tests/parse.rs` renders them).
    fn render(extra: &str) -> String {
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"./data\"\n{extra}"
        );
        match crate::parse(&text, Path::new("/etc/postern/postern.toml")) {
            Ok(_) => "ok".to_string(),
            Err(errors) => errors
                .errors
                .iter()
                .map(|d| format!("{}:{}: {} (fix: {})", d.line, d.column, d.message, d.fix))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The origin names the signing key too: what a signed-note key name cannot hold is a
    /// config error at its value, not a gateway that fails to open its log.
    #[test]
    fn audit_origin_follows_the_signed_note_key_name_rules() {
        let refused = |origin: &str| {
            format!("5:16: `audit_origin` {origin:?} holds a space or a '+': it also names the log's signing key, and a signed-note key name may hold neither (fix: name the log without spaces or '+', like `postern.example.com/audit`)")
        };
        let check = |value: &str, expect: &str| {
            assert_eq!(
                render(&format!("audit_origin = {value}\n")),
                expect,
                "{value}"
            );
        };
        check("\"postern.example.com/audit\"", "ok");
        check("\"my log\"", &refused("my log"));
        check("\"a+b/audit\"", &refused("a+b/audit"));
        check("\"tab\\tlog\"", &refused("tab\tlog"));
        check("\"nbsp\u{a0}log\"", &refused("nbsp\u{a0}log"));
        check("\"\u{2003}log\"", &refused("\u{2003}log"));
        assert!(render("audit_origin = \"\"\n").contains("must be a non-empty single line"));
    }
}
