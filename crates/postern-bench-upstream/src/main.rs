//! `postern-bench-upstream`: the upstream for `bench/run.sh`. An HTTP server that answers
//! every request `200` with the same ~100-byte JSON body and keeps connections alive, so the
//! benchmark measures the proxy in front of it, not the upstream.
//!
//! Usage: `postern-bench-upstream --listen 127.0.0.1:PORT [--threads N] [--tls-dir DIR [--h2]]`.
//! The request body is read and dropped. Prints `listening on ADDR` once bound. With `--tls-dir` it
//! speaks HTTPS (HTTP/1.1 by ALPN, as vendors' HTTP/1.1 endpoints do) with a certificate for
//! `localhost` and `127.0.0.1` from a throwaway CA made at start-up, whose certificate it writes
//! to `DIR/ca.pem` for the proxies in front of it to trust. With `--h2` as well, it offers HTTP/2
//! first by ALPN and falls back to HTTP/1.1, as many vendors' API hosts do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The fixed answer: about 100 bytes of JSON, like a small vendor response.
/// Also a valid OAuth2 token response, so the same server is the token endpoint when the
/// benchmark runs with an OAuth2 credential.
const BODY: &[u8] = br#"{"id":"ch_3MmlLrLkdIwHu7ix0snN0B15","object":"charge","amount":500,"access_token":"tok","expires_in":3600}"#;

const USAGE: &str =
    "usage: postern-bench-upstream --listen ADDR [--threads N] [--tls-dir DIR [--h2]]\n\
Answers every request 200 with a fixed ~100-byte JSON body (keep-alive).\n\
--tls-dir DIR  serve HTTPS with a certificate from a throwaway CA, written to DIR/ca.pem\n\
--h2           with --tls-dir: offer HTTP/2 first by ALPN (HTTP/1.1 still served)";

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut threads: usize = 1;
    let mut tls_dir: Option<PathBuf> = None;
    let mut h2 = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--tls-dir" => match args.next() {
                Some(dir) => tls_dir = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("--tls-dir needs a directory\n{USAGE}");
                    std::process::exit(2);
                }
            },
            "--h2" => h2 = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let (Some(listen), true) = (listen, threads > 0) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    if h2 && tls_dir.is_none() {
        eprintln!("--h2 needs --tls-dir (HTTP/2 is offered by ALPN)\n{USAGE}");
        std::process::exit(2);
    }
    let tls = match tls_dir
        .as_deref()
        .map(|dir| tls_acceptor(dir, h2))
        .transpose()
    {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("postern-bench-upstream: {error}");
            std::process::exit(1);
        }
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    if let Err(error) = runtime.block_on(serve(listen, tls)) {
        eprintln!("postern-bench-upstream: {error}");
        std::process::exit(1);
    }
}

/// A TLS acceptor with a fresh CA and a server certificate it signed (for `localhost` and
/// `127.0.0.1`); the CA's certificate goes to `dir/ca.pem`. ALPN offers `h2` first when `h2`.
fn tls_acceptor(dir: &Path, h2: bool) -> Result<TlsAcceptor, String> {
    let fail = |what: &str, error: &dyn std::fmt::Display| format!("TLS set-up: {what}: {error}");
    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail("CA key", &e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", &e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "postern-bench-upstream CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| fail("CA certificate", &e))?;
    let key = rcgen::KeyPair::generate().map_err(|e| fail("server key", &e))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| fail("server certificate", &e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| fail("server certificate", &e))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())
        .map_err(|e| fail(&ca_path.display().to_string(), &e))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| fail("certificate", &e))?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listen: SocketAddr, tls: Option<TlsAcceptor>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and friends: back off briefly rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .clone();
            let service = hyper::service::service_fn(answer);
            let _ = match tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                    Err(_) => return,
                },
            };
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body so the connection can be reused.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
