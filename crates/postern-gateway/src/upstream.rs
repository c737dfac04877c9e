//! Forwarding to the vendor: a connection pool whose connector resolves the vendor host itself,
//! checks every address with the SSRF guard, and dials only the address it checked.
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

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_netguard::{Denied, Guard, GuardError};
use tokio::net::TcpStream;

use crate::body::ForwardBody;

/// The address a response came from; the connector attaches it to every response.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAddr(pub SocketAddr);

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
    #[error("the upstream URI has no host")]
    NoHost,
}

/// A `tower::Service<Uri>` that resolves, guards and dials.
#[derive(Clone)]
pub struct GuardedConnector {
    guard: Arc<Guard>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub fn new(guard: Guard, connect_timeout: Duration) -> Self {
        GuardedConnector {
            guard: Arc::new(guard),
            connect_timeout,
        }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = GuardedStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<GuardedStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let guard = self.guard.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?.to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("http") {
                    80
                } else {
                    443
                });
            let (stream, addr) = dial(&guard, &host, port, connect_timeout).await?;
            Ok(GuardedStream {
                inner: TokioIo::new(stream),
                addr,
            })
        })
    }
}

/// Resolves `host`, refuses the answer if the guard refuses any address in it, and connects to
/// the first address that answers within `connect_timeout`. The one way Postern dials out.
pub async fn dial(
    guard: &Guard,
    host: &str,
    port: u16,
    connect_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs = guard.resolve(host, port).await.map_err(|e| match e {
        GuardError::Denied(denied) => ConnectError::Denied(denied),
        GuardError::Resolve { host, source } => ConnectError::Resolve { host, source },
    })?;
    let mut last_error = None;
    for addr in addrs {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(source)) => last_error = Some(ConnectError::Connect { addr, source }),
            Err(_) => {
                last_error = Some(ConnectError::Timeout {
                    addr,
                    timeout_ms: connect_timeout.as_millis() as u64,
                })
            }
        }
    }
    Err(last_error.unwrap_or(ConnectError::NoHost))
}

/// A TCP stream to a checked address; reports that address to the pool.
pub struct GuardedStream {
    inner: TokioIo<TcpStream>,
    addr: SocketAddr,
}

impl Connection for GuardedStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(UpstreamAddr(self.addr))
    }
}

impl hyper::rt::Read for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

type HyperClient = Client<HttpsConnector<GuardedConnector>, ForwardBody>;

/// One integration's upstream pools: one per data-plane worker, made on the worker's first
/// call, and one shared by every other thread (admin, token refresh, tests). Clones share them.
#[derive(Clone)]
pub struct UpstreamClient {
    pools: Arc<Pools>,
}

struct Pools {
    builder: hyper_util::client::legacy::Builder,
    connector: HttpsConnector<GuardedConnector>,
    clients: crate::workers::PerWorker<HyperClient>,
}

impl UpstreamClient {
    /// Sends `request` on this thread's pool.
    pub fn request(
        &self,
        request: http::Request<ForwardBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let pools = &*self.pools;
        pools
            .clients
            .get_or_init(|| pools.builder.build(pools.connector.clone()))
            .request(request)
    }
}

/// Settings for one integration's pool.
pub struct UpstreamOptions<'a> {
    pub allow_private_networks: Vec<ipnet::IpNet>,
    pub allow_plaintext: bool,
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Client certificate chain and key presented to the vendor (mTLS).
    pub client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
}

/// Builds the pool for one integration.
pub fn build_client(options: UpstreamOptions<'_>) -> anyhow::Result<UpstreamClient> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca_file) = options.ca_file {
        for cert in crate::tls::read_certificates(ca_file)? {
            roots
                .add(cert)
                .map_err(|error| anyhow::anyhow!("ca_file {}: {error}", ca_file.display()))?;
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
    let guarded = GuardedConnector::new(
        Guard::new(options.allow_private_networks),
        options.connect_timeout,
    );
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let connector = if options.allow_plaintext {
        builder
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(guarded)
    } else {
        builder
            .https_only()
            .enable_all_versions()
            .wrap_connector(guarded)
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(options.idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new());
    Ok(UpstreamClient {
        pools: Arc::new(Pools {
            builder,
            connector,
            clients: crate::workers::PerWorker::new(),
        }),
    })
}

/// Finds the cause of a client error in its source chain.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}
