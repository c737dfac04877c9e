//! OAuth2 client credentials (RFC 6749 §4.4): mint, cache, refresh and purge vendor access tokens.
//!
//! One [`TokenSource`] per integration. A call takes the cached token without waiting; when the
//! token has passed 80 % of its lifetime the call also starts one background refresh (the old
//! token keeps serving until it expires). When there is no valid token, the first caller fetches
//! one while every other caller waits for that same fetch (single flight: one token request
//! however many calls wait, and when it fails they all get its failure; for a second after,
//! calls fail without asking again). An `expires_in` is taken up to a day. A vendor 401 purges the token that was used so the next fetch
//! re-mints. Token requests go through the integration's guarded pool, so the SSRF guard and TLS
//! rules apply to the token endpoint too. A token or client secret is never logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::BodyExt as _;
use postern_config::{OAuth2ClientAuth, OAuth2Config};
use zeroize::Zeroizing;

use crate::body::{ForwardBody, RequestBodyState};
use crate::upstream::UpstreamClient;

/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime taken from an `expires_in` (a larger one is refreshed after this long).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest lifetime taken from an `expires_in`: a token said to expire at once (`0`) would be
/// fetched again by every waiting call, one after another. Used that long, a token the vendor
/// refuses (401) is dropped and a new one fetched, as any refused token is.
const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// How many tokens' needles a response is checked for: the last installed and those before
/// it, since a call injected with an older one may be answered after refreshes or a 401 purge.
const ECHOED_TOKENS: usize = 4;
/// After a failed fetch with no valid token, calls get that failure without a new token
/// request for this long: a failing or refusing endpoint is not asked once per waiting call.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A token a vendor refused (401) is dropped at most this often per source: a caller that can
/// make the vendor answer 401 for reasons of its own (an account header, a scope) cannot have
/// a token minted for every call it makes, nor push the tokens in flight out of the echo
/// filter ([`ECHOED_TOKENS`]).
const PURGE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint answered {status}")]
    Refused { status: u16 },
    #[error("the token endpoint's answer has no usable access_token")]
    Malformed,
    #[error("the token endpoint did not answer within {0} ms")]
    Timeout(u64),
}

struct CachedToken {
    minted: Minted,
    refresh_at: Instant,
    expires_at: Instant,
}

/// An access token as a call injects it, and the forms a vendor could echo it back in.
#[derive(Clone)]
pub struct Minted {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// The access token raw and percent-encoded ([`crate::runtime::echo_needles`]): the call
    /// that injected it reads its answer for them whatever tokens were minted since.
    pub needles: crate::echo::Needles,
}

/// The last fetch made for want of a valid token, when it failed.
struct FailedFetch {
    error: TokenError,
    retry_at: Instant,
}

pub struct TokenSource {
    integration: String,
    config: OAuth2Config,
    client_secret: Zeroizing<String>,
    client: UpstreamClient,
    timeout: Duration,
    current: ArcSwapOption<CachedToken>,
    /// What a response must not carry: the needles of the last [`ECHOED_TOKENS`] tokens
    /// installed (a call injected with an older one may be answered after refreshes, or after
    /// a 401 purged it).
    echoes: ArcSwap<Vec<Zeroizing<Vec<u8>>>>,
    /// The needles of the last [`ECHOED_TOKENS`] tokens installed, newest first (kept when
    /// [`TokenSource::purge`] drops one).
    installed: std::sync::Mutex<std::collections::VecDeque<crate::echo::Needles>>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Fetches made for want of a valid token that have ended, whatever their result: a call
    /// that waited for the lock while one ended takes that one's answer.
    fetches: AtomicU64,
    failed: ArcSwapOption<FailedFetch>,
    refreshing: AtomicBool,
    /// When [`TokenSource::purge`] last dropped a token ([`PURGE_INTERVAL`]).
    last_purge: std::sync::Mutex<Option<Instant>>,
    /// Token requests made (for tests and metrics).
    pub token_requests: AtomicU64,
}

impl TokenSource {
    pub fn new(
        integration: &str,
        config: OAuth2Config,
        client_secret: Zeroizing<String>,
        client: UpstreamClient,
        timeout: Duration,
    ) -> Self {
        TokenSource {
            integration: integration.to_string(),
            config,
            client_secret,
            client,
            timeout,
            current: ArcSwapOption::empty(),
            echoes: ArcSwap::from_pointee(Vec::new()),
            installed: std::sync::Mutex::new(std::collections::VecDeque::new()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failed: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            last_purge: std::sync::Mutex::new(None),
            token_requests: AtomicU64::new(0),
        }
    }

    /// The `Authorization` value to inject: the cached token, or one fetched now. Calls that
    /// wait while a fetch is made take its answer, a failure included; and for
    /// [`RETRY_AFTER_FAILURE`] after a failure, calls get it without a new request.
    ///
    /// The wait and the fetch run in a task of their own: a call whose caller hangs up while
    /// it waits drops only its own wait, never the fetch the other waiting calls take the
    /// answer of (they would each start it again, one after another).
    pub async fn authorization(self: &Arc<Self>) -> Result<Minted, TokenError> {
        if let Some(token) = self.valid_token() {
            return Ok(token);
        }
        let ended_before = self.fetches.load(Ordering::Acquire);
        let source = self.clone();
        match tokio::spawn(async move { source.fetch_once(ended_before).await }).await {
            Ok(answer) => answer,
            // The task panicked (a bug): no token, as a failed fetch.
            Err(_) => Err(TokenError::Unreachable(
                "the token fetch task failed".to_string(),
            )),
        }
    }

    /// [`TokenSource::authorization`]'s wait for the single flight, and the fetch when no other
    /// answered meanwhile (`ended_before`: the fetches that had ended when the call began to
    /// wait).
    async fn fetch_once(self: Arc<Self>, ended_before: u64) -> Result<Minted, TokenError> {
        let _single_flight = self.fetch_lock.lock().await;
        if let Some(token) = self.valid_token() {
            return Ok(token);
        }
        if let Some(failed) = self.failed.load_full() {
            let shared = self.fetches.load(Ordering::Acquire) != ended_before;
            if shared || Instant::now() < failed.retry_at {
                return Err(failed.error.clone());
            }
        }
        let fetched = self.fetch().await;
        self.fetches.fetch_add(1, Ordering::Release);
        match fetched {
            Ok(token) => {
                let minted = token.minted.clone();
                self.install(token);
                self.failed.store(None);
                Ok(minted)
            }
            Err(error) => {
                self.failed.store(Some(Arc::new(FailedFetch {
                    error: error.clone(),
                    retry_at: Instant::now() + RETRY_AFTER_FAILURE,
                })));
                Err(error)
            }
        }
    }

    /// Whether this source makes its token requests with `client` (a rebuilt integration whose
    /// network settings changed has another).
    pub(crate) fn uses(&self, client: &UpstreamClient) -> bool {
        self.client.same(client)
    }

    fn valid_token(self: &Arc<Self>) -> Option<Minted> {
        let token = self.current.load_full()?;
        let now = Instant::now();
        if now >= token.expires_at {
            return None;
        }
        // A refresh that failed is tried again only after RETRY_AFTER_FAILURE: a failing
        // endpoint is not asked once per call while the current token still serves.
        if now >= token.refresh_at
            && self
                .failed
                .load()
                .as_ref()
                .is_none_or(|failed| now >= failed.retry_at)
            && !self.refreshing.swap(true, Ordering::AcqRel)
        {
            let source = self.clone();
            tokio::spawn(async move { source.refresh_in_background().await });
        }
        Some(token.minted.clone())
    }

    async fn refresh_in_background(self: Arc<Self>) {
        {
            let _single_flight = self.fetch_lock.lock().await;
            match self.fetch().await {
                Ok(token) => {
                    self.install(token);
                    self.failed.store(None);
                }
                Err(error) => {
                    tracing::warn!(
                        integration = %self.integration,
                        %error,
                        "OAuth2 token refresh failed; the current token serves until it expires"
                    );
                    self.failed.store(Some(Arc::new(FailedFetch {
                        error,
                        retry_at: Instant::now() + RETRY_AFTER_FAILURE,
                    })));
                }
            }
        }
        self.refreshing.store(false, Ordering::Release);
    }

    /// `token` becomes the one injected; its needles and those of the tokens installed before
    /// it (purged or not, [`ECHOED_TOKENS`] in all) are what responses are checked for.
    fn install(&self, token: CachedToken) {
        let mut installed = self.installed.lock().expect("installed tokens lock");
        installed.push_front(token.minted.needles.clone());
        self.publish_echoes(&mut installed);
        self.current.store(Some(Arc::new(token)));
    }

    /// Keeps the last [`ECHOED_TOKENS`] of `installed` (newest first), and makes their needles
    /// what responses are checked for.
    fn publish_echoes(&self, installed: &mut std::collections::VecDeque<crate::echo::Needles>) {
        installed.truncate(ECHOED_TOKENS);
        let echoes: Vec<Zeroizing<Vec<u8>>> =
            installed.iter().flat_map(|n| n.iter()).cloned().collect();
        self.echoes.store(Arc::new(echoes));
    }

    /// Takes on the tokens `older` installed, as tokens this source installed before its own:
    /// a new client secret or changed settings make a new source, and the tokens the old one
    /// minted stay valid at the vendor until they expire (an answer echoing one is filtered).
    pub fn inherit_echoes(&self, older: &TokenSource) {
        let inherited = older
            .installed
            .lock()
            .expect("installed tokens lock")
            .clone();
        let mut installed = self.installed.lock().expect("installed tokens lock");
        installed.extend(inherited);
        self.publish_echoes(&mut installed);
    }

    /// The last [`ECHOED_TOKENS`] tokens installed, as a vendor could echo them: a response
    /// header holding one is dropped before it reaches the caller.
    pub fn echoes(&self) -> arc_swap::Guard<Arc<Vec<Zeroizing<Vec<u8>>>>> {
        self.echoes.load()
    }

    /// Drops the token that a vendor refused (401), unless a newer one already replaced it, or
    /// one was dropped less than [`PURGE_INTERVAL`] ago.
    pub fn purge(&self, refused: &HeaderValue) {
        let current = self.current.load_full();
        if current.as_ref().is_none_or(|t| t.minted.header != *refused) {
            return;
        }
        let now = Instant::now();
        let mut last = self.last_purge.lock().expect("last purge lock");
        if last.is_some_and(|at| now.duration_since(at) < PURGE_INTERVAL) {
            return;
        }
        *last = Some(now);
        self.current.store(None);
    }

    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let mut form = form_urlencoded(&[("grant_type", "client_credentials")]);
        if let Some(scope) = &self.config.scope {
            form.push('&');
            form.push_str(&form_urlencoded(&[("scope", scope)]));
        }
        for (key, value) in &self.config.params {
            form.push('&');
            form.push_str(&form_urlencoded(&[(key, value)]));
        }
        let mut request = Request::post(self.config.token_url.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        match self.config.client_auth {
            OAuth2ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-encode id and secret, then Basic.
                // Each text holding the secret is zeroized when dropped.
                let secret = Zeroizing::new(form_value(&self.client_secret));
                let pair = Zeroizing::new(format!(
                    "{}:{}",
                    form_value(&self.config.client_id),
                    secret.as_str()
                ));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                );
                let text = Zeroizing::new(format!("Basic {}", encoded.as_str()));
                let mut value = HeaderValue::from_str(&text).map_err(|_| TokenError::Malformed)?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            OAuth2ClientAuth::Body => {
                form.push('&');
                form.push_str(&form_urlencoded(&[
                    ("client_id", &self.config.client_id),
                    ("client_secret", &self.client_secret),
                ]));
            }
        }
        let body = ForwardBody::full(Bytes::from(form), Arc::new(RequestBodyState::default()));
        let request = request.body(body).map_err(|_| TokenError::Malformed)?;
        // The whole exchange within the timeout, the answer's body too: an endpoint that sends
        // a head and then stalls must not hold the fetch (and every call waiting on it) forever.
        let exchange = async {
            let (response, _) = self.client.request(request).await.map_err(|error| {
                // The caller is told what kind of failure, not the endpoint's address.
                tracing::warn!(integration = %self.integration, error = %error, "the token endpoint could not be reached");
                TokenError::Unreachable(unreachable_kind(&error))
            })?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(TokenError::Refused { status });
            }
            Ok(
                http_body_util::Limited::new(response.into_body(), MAX_TOKEN_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|_| TokenError::Malformed)?
                    .to_bytes(),
            )
        };
        let body = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => return Err(TokenError::Timeout(self.timeout.as_millis() as u64)),
            Ok(answer) => answer?,
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        let access_token = parsed
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Malformed)?;
        let lifetime = parsed
            .get("expires_in")
            .and_then(|e| {
                e.as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
            })
            .map(|seconds| Duration::from_secs(seconds).clamp(MIN_LIFETIME, MAX_LIFETIME))
            .unwrap_or(DEFAULT_LIFETIME);
        let text = Zeroizing::new(format!("Bearer {access_token}"));
        let mut header = HeaderValue::from_str(&text).map_err(|_| TokenError::Malformed)?;
        header.set_sensitive(true);
        let now = Instant::now();
        Ok(CachedToken {
            minted: Minted {
                header,
                needles: Arc::new(crate::runtime::echo_needles(access_token)),
            },
            refresh_at: now + lifetime.mul_f64(0.8),
            expires_at: now + lifetime,
        })
    }
}

/// What kind of failure kept the token endpoint from answering, without its address (which
/// the log has): the caller is told this.
fn unreachable_kind(error: &crate::upstream::UpstreamError) -> String {
    use crate::upstream::{ConnectError, UpstreamError};
    match error {
        UpstreamError::Connect(ConnectError::Denied(denied)) => format!(
            "it resolves to a {} address, which the SSRF guard refuses (list it in the integration's allow_private_networks if intended)",
            denied.class.as_str()
        ),
        UpstreamError::Connect(ConnectError::Resolve { .. }) => "its name did not resolve".into(),
        UpstreamError::Connect(_) => "the connection failed".into(),
        UpstreamError::Tls { .. } | UpstreamError::Handshake { .. } => {
            "the TLS handshake failed".into()
        }
        _ => "the exchange failed".into(),
    }
}

fn form_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, crate::proxy::QUERY_VALUE).to_string()
}

fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_value(k), form_value(v)))
        .collect::<Vec<_>>()
        .join("&")
}
