//! Test support: a real in-process vendor (TLS from a throwaway rcgen CA, or plain HTTP) that
//! records what it receives, and a real gateway started from a TOML config on loopback ports.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_gateway::RunningGateway;
use tokio::net::TcpListener;

/// What the vendor saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailer fields after the body, if any came.
    pub trailers: Option<HeaderMap>,
    pub version: http::Version,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
    }

    /// Every header value, the target and the body, as one string to search for leaks.
    pub fn everything(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.target);
        for (name, value) in &self.headers {
            text.push_str(&format!(
                "{}: {}\n",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text.push_str(&String::from_utf8_lossy(&self.body));
        for (name, value) in self.trailers.iter().flatten() {
            text.push_str(&format!(
                "\n{}: {}",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text
    }
}

/// The vendor's answer for one request.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Answer {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: Bytes::from(body.to_string()),
        }
    }
}

pub type Handler = Arc<dyn Fn(&SeenRequest) -> Answer + Send + Sync>;

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_params: rcgen::CertificateParams,
    pub ca_key: rcgen::KeyPair,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Postern test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let server_cert = params.signed_by(&server_key, &issuer).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_params,
            ca_key,
        }
    }

    /// The server certificate chain and its key, parsed.
    fn server_identity(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let certs = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .unwrap()
            .unwrap();
        (certs, key)
    }

    /// A TLS acceptor with the server certificate, offering `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let (certs, key) = self.server_identity();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A client certificate with a SPIFFE URI SAN, signed by this CA: (cert PEM, key PEM).
    pub fn client_cert(&self, spiffe_id: &str) -> (String, String) {
        self.client_cert_with(spiffe_id, |_| {})
    }

    /// [`TestPki::client_cert`], its parameters (serial number, validity) set by `adjust`.
    pub fn client_cert_with(
        &self,
        spiffe_id: &str,
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        adjust(&mut params);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `spiffe_id` valid from a minute ago until `lifetime` from now: a
    /// short-lived SVID.
    pub fn short_lived_client_cert(
        &self,
        spiffe_id: &str,
        lifetime: std::time::Duration,
    ) -> (String, String) {
        self.client_cert_with(spiffe_id, |params| {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::minutes(1);
            params.not_after = now + lifetime;
        })
    }

    /// A rustls client config trusting this CA and presenting `cert` with its `key` (PEM),
    /// for tests that must see the TLS connection itself.
    pub fn rustls_client(&self, cert: &str, key: &str) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    }

    /// A certificate revocation list of this CA (PEM), valid for an hour, naming the
    /// certificates with `serials` as revoked.
    pub fn revocation_list(&self, serials: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::hours(1),
            crl_number: rcgen::SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        params.signed_by(&issuer).unwrap().pem().unwrap()
    }

    /// The `[gateway]` lines of a TLS listener with this PKI's server certificate that asks
    /// callers for certificates this CA signed (mTLS); its files are written into `dir`.
    pub fn mtls_listener(&self, dir: &std::path::Path) -> String {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
            write("listener.pem", &self.server_cert_pem),
            write("listener-key.pem", &self.server_key_pem),
            write("client-ca.pem", &self.ca_pem),
        )
    }

    /// A client for an [`TestPki::mtls_listener`] at `addr` (as `localhost`) presenting a
    /// certificate for `spiffe_id`.
    pub fn mtls_client(&self, spiffe_id: &str, addr: std::net::SocketAddr) -> reqwest::Client {
        let (cert, key) = self.client_cert(spiffe_id);
        self.mtls_client_presenting(&cert, &key, addr)
    }

    /// A client for an [`TestPki::mtls_listener`] at `addr` (as `localhost`) presenting `cert`
    /// with its `key` (PEM).
    pub fn mtls_client_presenting(
        &self,
        cert: &str,
        key: &str,
        addr: std::net::SocketAddr,
    ) -> reqwest::Client {
        self.mtls_client_builder(cert, key, addr).build().unwrap()
    }

    /// [`TestPki::mtls_client_presenting`], speaking HTTP/1.1 only.
    pub fn mtls_h1_client(
        &self,
        cert: &str,
        key: &str,
        addr: std::net::SocketAddr,
    ) -> reqwest::Client {
        self.mtls_client_builder(cert, key, addr)
            .http1_only()
            .build()
            .unwrap()
    }

    fn mtls_client_builder(
        &self,
        cert: &str,
        key: &str,
        addr: std::net::SocketAddr,
    ) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
            .resolve("localhost", addr)
    }
}

/// A vendor on loopback that records every request.
pub struct TestVendor {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    /// PEM of the CA that signed its certificate (TLS vendors).
    pub ca_pem: Option<String>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    /// Set: new connections are accepted and dropped at once (their handshake fails).
    refusing: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds a new connection waits, once accepted, before its handshake is answered.
    stalling: Arc<std::sync::atomic::AtomicU64>,
    /// TLS connections whose client closed them in order (`close_notify` before the end).
    clean_closes: Arc<std::sync::atomic::AtomicUsize>,
}

impl TestVendor {
    /// TLS vendor (h2 and http/1.1 by ALPN) answering with `handler`.
    pub async fn tls(handler: Handler) -> Self {
        Self::tls_with(handler, &[b"h2", b"http/1.1"], None).await
    }

    /// TLS vendor that speaks only HTTP/1.1 (ALPN `http/1.1`).
    pub async fn tls_http1(handler: Handler) -> Self {
        Self::tls_with(handler, &[b"http/1.1"], None).await
    }

    /// TLS vendor (h2 and http/1.1 by ALPN) whose h2 connections take at most `streams`
    /// concurrent streams (`SETTINGS_MAX_CONCURRENT_STREAMS`), and which answers each request
    /// `answer_after` it has read it (so a stream stays open that long).
    pub async fn tls_with_stream_limit(
        handler: Handler,
        streams: u32,
        answer_after: std::time::Duration,
    ) -> Self {
        Self::tls_with(
            handler,
            &[b"h2", b"http/1.1"],
            Some((streams, answer_after)),
        )
        .await
    }

    /// A TLS vendor ([`TestVendor::ok_handler`]) that answers each request `answer_after` it
    /// has read it, over HTTP/1.1 or h2 (a stream limit no test reaches): a call that waits on
    /// its vendor.
    pub async fn answering_after(answer_after: std::time::Duration) -> Self {
        Self::tls_with_stream_limit(Self::ok_handler(), 100, answer_after).await
    }

    /// TLS vendor offering `alpn`; `limit`: the h2 stream limit and each answer's delay
    /// (`tls_with_stream_limit`).
    async fn tls_with(
        handler: Handler,
        alpn: &[&[u8]],
        limit: Option<(u32, std::time::Duration)>,
    ) -> Self {
        let pki = TestPki::new();
        let acceptor = pki.acceptor(alpn);
        Self::start(Some(acceptor), handler, Some(pki.ca_pem), limit).await
    }

    /// TLS vendor that requires a client certificate signed by `client_ca_pem` (mTLS).
    pub async fn mtls(handler: Handler, client_ca_pem: &str) -> Self {
        let pki = TestPki::new();
        let (certs, key) = pki.server_identity();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut client_ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start(Some(acceptor), handler, Some(pki.ca_pem), None).await
    }

    /// Plain-HTTP vendor (needs `allow_plaintext = true`).
    pub async fn plain(handler: Handler) -> Self {
        Self::start(None, handler, None, None).await
    }

    /// Answers every request with 200 and a small JSON body.
    /// [`TestVendor::ok_handler`]'s answer, echoing `sent` (a credential header as received) and
    /// `credential` with every byte percent-encoded, as no encoder of Postern's writes it; and a
    /// harmless `x-kept` header beside them. Neither echo may reach the caller.
    pub fn echoing_answer(sent: &str, credential: &str) -> Answer {
        let encoded = percent_encoded(credential);
        let mut answer = Answer::json(200, serde_json::json!({"ok": true}));
        answer.headers.push(("x-echo-as-sent", sent.to_string()));
        answer
            .headers
            .push(("x-echo-encoded", format!("next?k={encoded}")));
        answer.headers.push(("x-kept", "fine".to_string()));
        answer
    }

    pub fn ok_handler() -> Handler {
        Arc::new(|_request: &SeenRequest| Answer::json(200, serde_json::json!({"ok": true})))
    }

    /// [`TestVendor::ok_handler`]'s answer with a forged `Postern-Audit-Index: 999999`, which
    /// must never reach the caller.
    pub fn forged_receipt_handler() -> Handler {
        Arc::new(|_request: &SeenRequest| {
            let mut answer = Answer::json(200, serde_json::json!({"ok": true}));
            answer
                .headers
                .push(("postern-audit-index", "999999".to_string()));
            answer
        })
    }

    async fn start(
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        handler: Handler,
        ca_pem: Option<String>,
        limit: Option<(u32, std::time::Duration)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ended = closed.clone();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse = refusing.clone();
        let stalling = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall = stalling.clone();
        let clean_closes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clean = clean_closes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(stream);
                    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let recorded = recorded.clone();
                let ended = ended.clone();
                let clean = clean.clone();
                let stall = stall.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            let recorded = recorded.clone();
                            async move {
                                if let Some((_, delay)) = limit {
                                    tokio::time::sleep(delay).await;
                                }
                                let (parts, body) = request.into_parts();
                                // What arrived before the body broke off is kept: a test
                                // can tell a body cut short from one never sent.
                                let (mut body, mut received, mut trailers) =
                                    (body, Vec::new(), None);
                                while let Some(Ok(frame)) = body.frame().await {
                                    match frame.into_data() {
                                        Ok(data) => received.extend_from_slice(&data),
                                        Err(frame) => trailers = frame.into_trailers().ok(),
                                    }
                                }
                                let body = Bytes::from(received);
                                let seen = SeenRequest {
                                    method: parts.method.to_string(),
                                    target: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                    trailers,
                                    version: parts.version,
                                };
                                let answer = handler(&seen);
                                recorded.lock().unwrap().push(seen);
                                let mut response = Response::new(Full::new(answer.body));
                                *response.status_mut() =
                                    StatusCode::from_u16(answer.status).unwrap();
                                for (name, value) in answer.headers {
                                    response.headers_mut().append(name, value.parse().unwrap());
                                }
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some((streams, _)) = limit {
                        builder.http2().max_concurrent_streams(streams);
                    }
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let stream = EofWatch {
                                    inner: stream,
                                    clean,
                                    seen: false,
                                };
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        TestVendor {
            addr,
            seen,
            ca_pem,
            connections,
            closed,
            refusing,
            stalling,
            clean_closes,
        }
    }

    /// From now on, new connections are dropped as soon as they are accepted (a vendor whose
    /// listener is up but broken); open ones carry on.
    pub fn refuse_new_connections(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, new connections wait `stall` once accepted before their handshake is
    /// answered (a vendor slow to open a connection).
    pub fn stall_new_connections(&self, stall: std::time::Duration) {
        let millis = u64::try_from(stall.as_millis()).unwrap();
        self.stalling
            .store(millis, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// TLS connections the client has closed in order so far: a `close_notify` before the end
    /// of the stream (without one, rustls reads the end as a truncation, an error).
    pub fn clean_closes(&self) -> usize {
        self.clean_closes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> SeenRequest {
        self.seen()
            .last()
            .cloned()
            .expect("the vendor saw no request")
    }
}

/// Reads through to `inner`, counting in `clean` the first end of stream read as such.
struct EofWatch<S> {
    inner: S,
    clean: Arc<std::sync::atomic::AtomicUsize>,
    seen: bool,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofWatch<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let ended = matches!(read, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0;
        if ended && !self.seen {
            self.seen = true;
            self.clean.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        read
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EofWatch<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An integration `name` on the TLS vendor at `port` (its CA the gateway's `{ca}`), also
/// intercepted for `host`, with a bearer key read from `key_path`, `operations` (TOML inline
/// tables), `extra` lines in it, and `granted` (operation ids, quoted) granted to `checkout`.
pub fn intercepted_integration(
    name: &str,
    port: u16,
    host: &str,
    key_path: &std::path::Path,
    operations: &str,
    extra: &str,
    granted: &str,
) -> String {
    let key = key_path.display();
    format!(
        r#"
[[integrations]]
name = "{name}"
vendor = "Vendor"
owner = "team@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
hosts = ["{host}"]
credential = {{ kind = "bearer", from_file = "{key}" }}
operations = [{operations}]
{extra}

[[grants]]
caller = "checkout"
integration = "{name}"
operations = [{granted}]
"#
    )
}

/// An integration `slow` on a plain-HTTP vendor at `port` (e.g. a [`silent_vendor`]) with
/// `request_timeout_ms`, one operation `GET /x` granted to `checkout`, and `extra` TOML lines.
/// A gateway with [`slow_integration`] at `port`, its `request_timeout_ms` 20 s (longer than
/// any limit a test sets in `extra`).
pub async fn slow_gateway(port: u16, extra: &str) -> TestGateway {
    TestGateway::start(&slow_integration(port, 20_000, extra), None).await
}

pub fn slow_integration(port: u16, request_timeout_ms: u64, extra: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "slow"
vendor = "Slow"
owner = "o@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
request_timeout_ms = {request_timeout_ms}
{extra}
operations = [ {{ id = "op", method = "GET", path = "/x" }} ]

[[grants]]
caller = "checkout"
integration = "slow"
operations = ["*"]
"#
    )
}

/// A vendor that accepts connections and never answers: its port, the task holding the
/// connections, and a channel that reports each connection accepted.
pub async fn silent_vendor() -> (
    u16,
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, accepts) = tokio::sync::mpsc::unbounded_channel();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
            let _ = accepted.send(());
        }
    });
    (port, hold, accepts)
}

/// A vendor that takes one connection, reads one request, writes `answer` and then waits:
/// the channel reports what its next read got when Postern closes the connection (0).
pub async fn one_answer_vendor(
    answer: &'static [u8],
) -> (
    u16,
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<usize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let vendor = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = stream.read(&mut request).await.unwrap();
        stream.write_all(answer).await.unwrap();
        // Only Postern closing the connection ends this read (bounded by the test's timeout).
        let n = stream.read(&mut request).await.unwrap_or(0);
        let _ = closed_tx.send(n);
    });
    (port, vendor, closed)
}

/// A vendor (`one_answer_vendor`) that answers an event stream's head and first chunk
/// (`data: 1`), then sends nothing more.
pub async fn stalling_vendor() -> (
    u16,
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<usize>,
) {
    one_answer_vendor(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n",
    )
    .await
}

/// Reads the caller's connection `stream` to a [`stalling_vendor`] until Postern closes it
/// (bounded: 10 s) and checks the body was cut after the stall: its first chunk forwarded, not
/// ended as if complete, no sooner than `idle` after `started`; then that Postern closed its
/// vendor connection too (`closed`, bounded: 5 s).
pub async fn assert_cut_after_stall(
    mut stream: tokio::net::TcpStream,
    started: std::time::Instant,
    idle: std::time::Duration,
    closed: tokio::sync::oneshot::Receiver<usize>,
) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("Postern cut the stalled body well before 10 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    let elapsed = started.elapsed();
    let seen = String::from_utf8_lossy(&seen).to_string();
    assert!(
        seen.contains("data: 1"),
        "the first chunk was forwarded: {seen}"
    );
    assert!(
        !seen.ends_with("0\r\n\r\n"),
        "the cut body is not ended as if complete: {seen}"
    );
    assert!(elapsed >= idle, "cut after {elapsed:?}, before {idle:?}");
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("Postern closed its vendor connection")
        .unwrap();
    assert_eq!(read, 0);
}

/// The events in `data_dir`'s events file (none when it is not there yet).
fn read_events(data_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join(postern_gateway::EVENTS_FILE))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The file, beside the config, holding the vendor CA a test gateway starts with (`{ca}`).
const VENDOR_CA_FILE: &str = "vendor-ca.pem";

/// A running gateway with one caller `checkout` whose token is `token`.
pub struct TestGateway {
    pub gateway: Option<RunningGateway>,
    pub base: String,
    pub admin: String,
    pub token: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// The caller token every test config registers for `checkout`.
pub const CHECKOUT_TOKEN: &str = "pst_test_checkout_token_0123456789abcdefghijkl";
/// A second caller, `reporting`, with no grants unless a test adds them.
pub const REPORTING_TOKEN: &str = "pst_test_reporting_token_0123456789abcdefghij";

/// Waits (bounded) for the audit outcome entry of the call `request_id`.
pub async fn audit_outcome(gw: &TestGateway, request_id: &str) -> postern_tlog::AuditRecord {
    let ledger = gw.running().shared().audit.ledger.clone();
    let mut next = 0;
    for _ in 0..300 {
        // Entries only ever append: each round reads only the new ones.
        while next < ledger.size() {
            let record = postern_tlog::AuditRecord::decode(&ledger.entry(next).unwrap()).unwrap();
            next += 1;
            if record.request_id == request_id && record.kind == postern_tlog::RecordKind::Outcome {
                return record;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no audit outcome for request {request_id}");
}

/// Waits until `probe` answers true, looking every 50 ms; panics naming `what` after 5 s.
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if probe().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn sha256_hex(text: &str) -> String {
    postern_gateway::token_sha256_hex(text)
}

impl TestGateway {
    /// `body` is everything after the [gateway] table and the two callers: integrations,
    /// grants, more callers. `{dir}` in it is replaced by the temp dir path, `{ca}` by the path
    /// of a file holding `ca_pem` (when given).
    pub async fn start(body: &str, ca_pem: Option<&str>) -> Self {
        Self::start_with_gateway(body, ca_pem, "").await
    }

    pub async fn start_with_gateway(body: &str, ca_pem: Option<&str>, gateway_extra: &str) -> Self {
        Self::start_with_resolver(body, ca_pem, gateway_extra, None).await
    }

    /// [`TestGateway::start_with_gateway`], with vendor hosts looked up by `resolver`.
    pub async fn start_with_resolver(
        body: &str,
        ca_pem: Option<&str>,
        gateway_extra: &str,
        resolver: Option<std::sync::Arc<dyn postern_netguard::Resolve>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join(VENDOR_CA_FILE);
        if let Some(pem) = ca_pem {
            std::fs::write(&ca_path, pem).unwrap();
        }
        let body = body
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{ca}", &ca_path.display().to_string());
        let text = format!(
            r#"[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
{gateway_extra}

[[callers]]
name = "checkout"
token_sha256 = "{checkout}"

[[callers]]
name = "reporting"
token_sha256 = "{reporting}"

{body}
"#,
            checkout = sha256_hex(CHECKOUT_TOKEN),
            reporting = sha256_hex(REPORTING_TOKEN),
        );
        let config_path = dir.path().join("postern.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = postern_config::load(&config_path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let gateway = RunningGateway::start_with_resolver(config, resolver)
            .await
            .unwrap();
        let admin_token =
            std::fs::read_to_string(gateway.data_dir.join(postern_gateway::ADMIN_TOKEN_FILE))
                .unwrap()
                .trim()
                .to_string();
        TestGateway {
            base: format!("http://{}", gateway.listen_addr),
            admin: format!("http://{}", gateway.admin_addr),
            gateway: Some(gateway),
            token: CHECKOUT_TOKEN.to_string(),
            admin_token,
            config_path,
            dir,
        }
    }

    pub fn running(&self) -> &RunningGateway {
        self.gateway.as_ref().unwrap()
    }

    /// The vendor CA file the config's `{ca}` names (written when the gateway started with one).
    pub fn vendor_ca_path(&self) -> PathBuf {
        self.config_path.parent().unwrap().join(VENDOR_CA_FILE)
    }

    /// Events written so far (flushes first).
    pub async fn events(&self) -> Vec<serde_json::Value> {
        self.running().shared().recorder.events.flush().await;
        read_events(&self.running().data_dir)
    }

    /// Shuts the gateway down (its shutdown grace, then calls still in flight are cut) and
    /// returns every event it wrote.
    pub async fn shut_down_for_events(&mut self) -> Vec<serde_json::Value> {
        let running = self.gateway.take().expect("the gateway is running");
        let data_dir = running.data_dir.clone();
        running.shutdown().await;
        read_events(&data_dir)
    }

    /// The admin listener's `/metrics` text.
    /// `postern_worker_connections` from `/metrics`, by worker.
    pub async fn worker_connections(&self) -> Vec<i64> {
        let text = self.metrics().await;
        text.lines()
            .filter_map(|line| line.strip_prefix("postern_worker_connections{worker=\""))
            .map(|rest| rest.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .collect()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) until at least `count` events are written, then returns them.
    pub async fn wait_events(&self, count: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let events = self.events().await;
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("fewer than {count} events were written");
    }

    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

/// A plain HTTP client (the gateway listener is plain unless a test configures TLS).
/// An HTTP/2 frame written by hand (for clients no library would be): length, type, flags,
/// stream id, payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A TLS client connection over `io` to `server_name`, trusting the CAs in `ca_pem` and
/// offering only HTTP/1.1 by ALPN.
pub async fn tls_http1_client<S>(
    io: S,
    ca_pem: &str,
    server_name: &str,
) -> tokio_rustls::client::TlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap(),
            io,
        )
        .await
        .unwrap()
}

/// Sends raw bytes on a new connection and returns everything the server answered
/// (until it closes or 2 s pass).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).to_string()
}

/// A body stream of fixed chunks (no Content-Length, so it goes chunked).
pub fn futures_stream(chunks: Vec<Vec<u8>>) -> ChunkStream {
    ChunkStream(chunks.into_iter())
}

pub struct ChunkStream(std::vec::IntoIter<Vec<u8>>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(Ok))
    }
}

/// A body stream of the chunks sent on the returned sender, as they are sent (no
/// Content-Length); it ends when the sender is dropped.
pub fn channel_stream() -> (tokio::sync::mpsc::Sender<Vec<u8>>, ChannelStream) {
    let (send, receive) = tokio::sync::mpsc::channel(4);
    (send, ChannelStream(receive))
}

pub struct ChannelStream(tokio::sync::mpsc::Receiver<Vec<u8>>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// A loopback listener whose accept queue is full (the kernel drops new SYNs, so a connect to
/// it hangs until its timeout), its port, and the connection that fills the queue. Linux: a
/// backlog of 0 still queues one connection.
#[cfg(target_os = "linux")]
pub async fn full_listener() -> (u16, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    full_listener_at("127.0.0.1:0".parse().unwrap()).await
}

/// [`full_listener`] bound to `addr` (a port of 0: one the system picks).
pub async fn full_listener_at(
    addr: std::net::SocketAddr,
) -> (u16, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut queued = Vec::new();
    while let Ok(connected) = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        tokio::net::TcpStream::connect((addr.ip(), port)),
    )
    .await
    {
        queued.push(connected.unwrap());
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    (port, listener, queued)
}

/// `text` with every byte percent-encoded, `%HH` in upper-case hex (`.to_ascii_lowercase()` of
/// it for lower case): as no encoder writes it, to hide a token from a search as sent.
pub fn percent_encoded(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// `text` with every byte written as JSON's `\u00hh`, in lower-case hex.
pub fn json_escaped(text: &str) -> String {
    text.bytes().map(|b| format!("\\u{b:04x}")).collect()
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Whether none of the requests `vendor` received after its first `seen` carried a body of
/// `len` bytes or more: the vendor never had the whole of a refused body.
pub fn never_whole(vendor: &TestVendor, seen: usize, len: usize) -> bool {
    vendor
        .seen()
        .iter()
        .skip(seen)
        .all(|request| request.body.len() < len)
}

/// `POST path` through `gw` with its caller token, `body` in `encoding` (and `content_type`).
pub async fn post_coded(
    gw: &TestGateway,
    path: &str,
    content_type: Option<&str>,
    encoding: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}{path}", gw.base))
        .bearer_auth(&gw.token)
        .header("content-encoding", encoding);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body).send().await.unwrap()
}

/// Asserts `response` is a refusal: `status`, and the JSON error `code`.
pub async fn assert_refused(response: reqwest::Response, status: u16, code: &str) {
    let got = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "{code}: {text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["error"]["code"], code, "{answer}");
}

/// A WebSocket vendor over TLS (http/1.1 by ALPN, tokio-tungstenite): records each handshake's
/// target and headers and each message it is sent; sends `greeting` first (if any), answers a
/// text message with what `answer` makes of it (if anything) and a binary one with itself, and
/// refuses (401) a handshake whose query holds `deny`.
pub struct WsVendor {
    pub port: u16,
    pub ca_pem: String,
    pub handshakes: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    pub messages: Arc<Mutex<Vec<tokio_tungstenite::tungstenite::Message>>>,
}

impl WsVendor {
    pub async fn start(greeting: Option<String>, answer: fn(&str) -> Option<String>) -> Self {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::handshake::server::{self, ErrorResponse};
        use tokio_tungstenite::tungstenite::Message;
        let pki = TestPki::new();
        let acceptor = pki.acceptor(&[b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (seen, heard) = (handshakes.clone(), messages.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, heard) = (acceptor.clone(), seen.clone(), heard.clone());
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // The refusal's type is tungstenite's.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &server::Request, response: server::Response| {
                        seen.lock()
                            .unwrap()
                            .push((request.uri().to_string(), request.headers().clone()));
                        if request.uri().query().is_some_and(|q| q.contains("deny")) {
                            let mut refusal = ErrorResponse::new(Some("no such key".to_string()));
                            *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                            return Err(refusal);
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await
                    else {
                        return;
                    };
                    if let Some(greeting) = greeting {
                        if ws.send(Message::text(greeting)).await.is_err() {
                            return;
                        }
                    }
                    while let Some(Ok(message)) = ws.next().await {
                        heard.lock().unwrap().push(message.clone());
                        let reply = match message {
                            Message::Text(text) => match answer(&text) {
                                Some(reply) => Message::text(reply),
                                None => continue,
                            },
                            Message::Binary(data) => Message::binary(data),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
        });
        WsVendor {
            port,
            ca_pem: pki.ca_pem,
            handshakes,
            messages,
        }
    }
}

/// An HTTP/2 connection to `addr` over cleartext (h2c, prior knowledge), for requests without a
/// body; its driver runs on a task of its own.
pub async fn h2c_sender(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<Bytes>,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// `text` (a config) with `from` replaced by `to`, or, `from` empty, with `to` appended (a
/// table the config does not have).
pub fn changed_config(text: &str, from: &str, to: &str) -> String {
    match from.is_empty() {
        true => format!("{text}{to}"),
        false => {
            assert!(text.contains(from), "{from} is not in {text}");
            text.replace(from, to)
        }
    }
}
