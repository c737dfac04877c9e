//! The compiled configuration: everything the data plane needs, built once per config version
//! and swapped atomically on reload. In-flight calls keep the version they started with.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderName, HeaderValue};
use postern_config::{Config, CredentialConfig, CredentialKind, IntegrationConfig, SecretSource};
use postern_policy::{GrantSpec, IntegrationOps, OperationTable, PolicyEngine};
use sha2::{Digest, Sha256};

use crate::upstream::{build_client, UpstreamClient, UpstreamOptions};

pub type CallerLimiter = DefaultKeyedRateLimiter<Arc<str>>;

/// (requests_per_second, burst) an integration's limiter was built with.
type QuotaKey = (u32, u32);

/// Rate-limit state survives reloads when an integration's quota is unchanged.
#[derive(Default)]
pub struct LimiterCache {
    limiters: Mutex<HashMap<String, (QuotaKey, Arc<CallerLimiter>)>>,
}

impl LimiterCache {
    fn get(&self, integration: &str, rps: u32, burst: u32) -> Arc<CallerLimiter> {
        let mut limiters = self.limiters.lock().expect("limiter cache lock");
        if let Some((quota, limiter)) = limiters.get(integration) {
            if *quota == (rps, burst) {
                return limiter.clone();
            }
        }
        let quota = Quota::per_second(NonZeroU32::new(rps.max(1)).expect("nonzero"))
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("nonzero"));
        let limiter = Arc::new(RateLimiter::keyed(quota));
        limiters.insert(integration.to_string(), ((rps, burst), limiter.clone()));
        limiter
    }
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
        encoded_value: String,
    },
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
}

pub struct IntegrationRuntime {
    pub name: Arc<str>,
    pub config: IntegrationConfig,
    pub operations: OperationTable,
    /// `Err` holds why the credential is unavailable (never the value).
    pub credential: Result<Option<Injector>, String>,
    pub limiter: Option<Arc<CallerLimiter>>,
    pub client: UpstreamClient,
    pub upstream: UpstreamTarget,
    /// Headers removed from every forwarded request, lowercase.
    pub stripped_headers: Vec<HeaderName>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    callers_by_token: HashMap<[u8; 32], Arc<str>>,
    callers_by_spiffe: HashMap<String, Arc<str>>,
    pub integrations: HashMap<String, Arc<IntegrationRuntime>>,
    pub policy: PolicyEngine,
    pub admin_token_sha256: [u8; 32],
    /// Readiness problems, e.g. a credential that could not be loaded.
    pub problems: Vec<String>,
}

impl Runtime {
    pub fn build(
        config: Config,
        admin_token_sha256: [u8; 32],
        limiters: &LimiterCache,
    ) -> anyhow::Result<Runtime> {
        let mut callers_by_token = HashMap::new();
        let mut callers_by_spiffe = HashMap::new();
        for caller in &config.callers {
            let name: Arc<str> = Arc::from(caller.name.as_str());
            if let Some(hash) = &caller.token_sha256 {
                let mut key = [0u8; 32];
                hex::decode_to_slice(hash, &mut key).map_err(|_| {
                    anyhow::anyhow!("caller {}: token_sha256 is not 64 hex digits", caller.name)
                })?;
                callers_by_token.insert(key, name.clone());
            }
            if let Some(spiffe_id) = &caller.spiffe_id {
                callers_by_spiffe.insert(spiffe_id.clone(), name.clone());
            }
        }

        let custom_policies = match &config.gateway.policies {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!("reading policies file {}: {error}", path.display())
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
        .map_err(|error| anyhow::anyhow!("policies: {error}"))?;

        let mut integrations = HashMap::new();
        let mut problems = Vec::new();
        for integration in &config.integrations {
            let runtime = build_integration(integration, limiters)?;
            if let Err(why) = &runtime.credential {
                problems.push(format!("integration {}: {why}", integration.name));
            }
            integrations.insert(integration.name.clone(), Arc::new(runtime));
        }
        Ok(Runtime {
            config: Arc::new(config),
            callers_by_token,
            callers_by_spiffe,
            integrations,
            policy,
            admin_token_sha256,
            problems,
        })
    }

    /// The caller whose token hashes to this value.
    pub fn caller_by_token(&self, token: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.callers_by_token.get(&digest).cloned()
    }

    pub fn caller_by_spiffe(&self, spiffe_id: &str) -> Option<Arc<str>> {
        self.callers_by_spiffe.get(spiffe_id).cloned()
    }

    pub fn is_admin_token(&self, token: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        constant_time_eq(&digest, &self.admin_token_sha256)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn build_integration(
    integration: &IntegrationConfig,
    limiters: &LimiterCache,
) -> anyhow::Result<IntegrationRuntime> {
    let operations = OperationTable::new(
        integration
            .operations
            .iter()
            .map(|o| (o.id.as_str(), o.method.as_str(), o.path.as_str())),
    )
    .map_err(|error| anyhow::anyhow!("integration {}: {error}", integration.name))?;
    let credential = match &integration.credential {
        None => Ok(None),
        Some(credential) => load_injector(credential).map(Some),
    };
    let limiter = integration
        .rate_limit
        .map(|r| limiters.get(&integration.name, r.requests_per_second, r.burst));
    let client = build_client(UpstreamOptions {
        allow_private_networks: integration.allow_private_networks.clone(),
        allow_plaintext: integration.allow_plaintext,
        ca_file: integration.ca_file.as_deref(),
        connect_timeout: Duration::from_millis(integration.connect_timeout_ms),
        idle_timeout: Duration::from_millis(integration.idle_timeout_ms),
    })
    .map_err(|error| anyhow::anyhow!("integration {}: {error}", integration.name))?;
    let upstream = upstream_target(&integration.upstream)
        .map_err(|error| anyhow::anyhow!("integration {}: {error}", integration.name))?;
    let mut stripped_headers = vec![
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        HeaderName::from_static(crate::CALLER_TOKEN_HEADER),
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
        limiter,
        client,
        upstream,
        stripped_headers,
    })
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
    Ok(UpstreamTarget {
        origin: format!("{}://{}:{}", url.scheme(), host.to_ascii_lowercase(), port),
        scheme,
        authority,
        path_prefix,
    })
}

/// Reads the secret and prepares its header or query form. Errors never contain the value.
fn load_injector(credential: &CredentialConfig) -> Result<Injector, String> {
    let secret = match &credential.source {
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            format!(
                "credential unavailable: environment variable {name} is not set \
                 (fix: export {name} before starting postern, or use from_file)"
            )
        })?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|error| {
                format!(
                    "credential unavailable: cannot read {}: {} (fix: check the path and its permissions)",
                    path.display(),
                    error.kind()
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    };
    if secret.is_empty() {
        return Err("credential unavailable: the secret is empty".to_string());
    }
    let sensitive = |text: String| -> Result<HeaderValue, String> {
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            "credential unusable: the secret holds characters not allowed in an HTTP header"
                .to_string()
        })?;
        value.set_sensitive(true);
        Ok(value)
    };
    match credential.kind {
        CredentialKind::Bearer => Ok(Injector::Header {
            name: http::header::AUTHORIZATION,
            value: sensitive(format!("Bearer {secret}"))?,
        }),
        CredentialKind::Basic => {
            let pair = match &credential.username {
                Some(user) => format!("{user}:{secret}"),
                None => secret,
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            Ok(Injector::Header {
                name: http::header::AUTHORIZATION,
                value: sensitive(format!("Basic {encoded}"))?,
            })
        }
        CredentialKind::Header => {
            let name = credential
                .header_name
                .as_deref()
                .ok_or("credential kind header needs `name`")?;
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("credential header name {name:?} is not a valid header name")
            })?;
            Ok(Injector::Header {
                name,
                value: sensitive(secret)?,
            })
        }
        CredentialKind::Query => {
            let param = credential
                .query_param
                .clone()
                .ok_or("credential kind query needs `param`")?;
            let encoded_value =
                percent_encoding::utf8_percent_encode(&secret, crate::proxy::QUERY_VALUE)
                    .to_string();
            Ok(Injector::Query {
                param,
                encoded_value,
            })
        }
    }
}
