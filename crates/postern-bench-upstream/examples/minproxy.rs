//! The floor for a hyper-based proxy on this machine: a reverse proxy that does nothing but strip
//! the `/bench` prefix and the `Authorization` header and forward over a pooled hyper-util client.
//! No policy, no events, no audit: what Postern's own per-call work is measured against
//! (docs/BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p postern-bench-upstream --example minproxy -- MODE LISTEN UPSTREAM [THREADS]
//!   MODE      mt  (one multi-threaded tokio runtime, one shared pool)
//!             tpc (one single-threaded runtime, SO_REUSEPORT socket and pool per thread)
//!   LISTEN    e.g. 127.0.0.1:18004
//!   UPSTREAM  e.g. http://127.0.0.1:18001
//!   THREADS   default 2
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Pool = Client<HttpConnector, Incoming>;

async fn serve(listener: tokio::net::TcpListener, client: Pool, upstream: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (mut parts, body) = request.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let path = path.strip_prefix("/bench").unwrap_or(path);
                    parts.uri = Uri::try_from(format!("{upstream}{path}")).expect("valid URI");
                    parts.headers.remove(hyper::header::AUTHORIZATION);
                    let response = client
                        .request(Request::from_parts(parts, body))
                        .await
                        .expect("the upstream answers");
                    Ok::<_, Infallible>(response.map(BoxBody::new))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn listener(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    socket.listen(1024).expect("listen")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: minproxy mt|tpc LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[2].parse().expect("LISTEN is host:port");
    let upstream: &'static str = Box::leak(args[3].clone().into_boxed_str());
    let threads: usize = args.get(4).map_or(2, |t| t.parse().expect("THREADS"));
    let runtime =
        |builder: &mut tokio::runtime::Builder| builder.enable_all().build().expect("runtime");
    match args[1].as_str() {
        "mt" => runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(threads))
            .block_on(async {
                let client: Pool = Client::builder(TokioExecutor::new()).build_http();
                serve(listener(addr), client, upstream).await
            }),
        "tpc" => {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::spawn(move || {
                        runtime(&mut tokio::runtime::Builder::new_current_thread()).block_on(
                            async {
                                let client: Pool =
                                    Client::builder(TokioExecutor::new()).build_http();
                                serve(listener(addr), client, upstream).await
                            },
                        )
                    })
                })
                .collect();
            for handle in handles {
                let _ = handle.join();
            }
        }
        other => {
            eprintln!("unknown mode {other}: use mt or tpc");
            std::process::exit(2);
        }
    }
}
