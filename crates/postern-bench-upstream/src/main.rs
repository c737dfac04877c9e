//! `postern-bench-upstream`: the upstream for `bench/run.sh`. An HTTP/1.1 server that answers
//! every request `200` with the same ~100-byte JSON body and keeps connections alive, so the
//! benchmark measures the proxy in front of it, not the upstream.
//!
//! Usage: `postern-bench-upstream --listen 127.0.0.1:PORT [--threads N]`. The request body is
//! read and dropped. Prints `listening on ADDR` once bound.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The fixed answer: about 100 bytes of JSON, like a small vendor response.
/// Also a valid OAuth2 token response, so the same server is the token endpoint when the
/// benchmark runs with an OAuth2 credential.
const BODY: &[u8] = br#"{"id":"ch_3MmlLrLkdIwHu7ix0snN0B15","object":"charge","amount":500,"access_token":"tok","expires_in":3600}"#;

const USAGE: &str = "usage: postern-bench-upstream --listen ADDR [--threads N]\n\
Answers every HTTP/1.1 request 200 with a fixed ~100-byte JSON body (keep-alive).";

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut threads: usize = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
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
    if let Err(error) = runtime.block_on(serve(listen)) {
        eprintln!("postern-bench-upstream: {error}");
        std::process::exit(1);
    }
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
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
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
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
