//! The floor for a hyper-based proxy on this machine: a reverse proxy that does nothing but strip
//! the `/bench` prefix and the `Authorization` header and forward over a pooled hyper-util client.
//! No policy, no events, no audit: what Postern's own per-call work is measured against
//! (docs/BENCHMARKS.md).
//!
//! Three more modes are measuring sticks for the HTTP layer itself, not proxies to deploy:
//! `conn` forwards over hyper's connection-level client with a per-thread stack of idle
//! connections (the shape of Postern's pool before its own HTTP/1.1 client), `rawclient` keeps
//! hyper's server and writes the upstream side by hand (the shape of Postern's pool now,
//! `postern-gateway/src/h1.rs`), and `raw` parses both sides by hand with httparse (GET without
//! a body, `content-length` answers only): what a hand-written HTTP/1.1 path would cost on this
//! machine.
//!
//! ```text
//! cargo run --release -p postern-bench-upstream --example minproxy -- MODE LISTEN UPSTREAM [THREADS]
//!   MODE      mt   (one multi-threaded tokio runtime, one shared hyper-util pool)
//!             tpc  (one single-threaded runtime, SO_REUSEPORT socket and hyper-util pool per thread)
//!             conn (like tpc, over hyper::client::conn with a per-thread connection stack)
//!             rawclient (like conn, the upstream side written by hand)
//!             raw  (like tpc, HTTP/1.1 parsed and written by hand on both sides)
//!   LISTEN    e.g. 127.0.0.1:18004
//!   UPSTREAM  e.g. http://127.0.0.1:18001
//!   THREADS   default 2
//! ```

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Pool = Client<HttpConnector, Incoming>;

async fn serve(listener: tokio::net::TcpListener, client: Pool, upstream: &'static str) {
    accept_each(listener, move |stream| {
        let client = client.clone();
        async move {
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
        }
    })
    .await
}

thread_local! {
    /// `conn` mode: this thread's connections to the upstream (idle, or reading a body).
    static SENDERS: RefCell<Vec<hyper::client::conn::http1::SendRequest<Incoming>>> =
        const { RefCell::new(Vec::new()) };
    /// `raw` mode: this thread's idle upstream connections with their read buffers.
    static RAW: RefCell<Vec<(tokio::net::TcpStream, bytes::BytesMut)>> =
        const { RefCell::new(Vec::new()) };
}

async fn serve_conn(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    accept_each(listener, move |stream| async move {
        let service = hyper::service::service_fn(move |request: Request<Incoming>| async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let path = path.strip_prefix("/bench").unwrap_or(path);
            parts.uri = Uri::try_from(path).expect("valid path");
            parts.headers.remove(hyper::header::AUTHORIZATION);
            parts.headers.insert(
                hyper::header::HOST,
                hyper::header::HeaderValue::from_static("127.0.0.1"),
            );
            let ready = SENDERS.with(|senders| {
                let mut senders = senders.borrow_mut();
                senders.retain(|sender| !sender.is_closed());
                let i = senders.iter().rposition(|sender| sender.is_ready())?;
                Some(senders.swap_remove(i))
            });
            let mut sender = match ready {
                Some(sender) => sender,
                None => {
                    let stream = connect_upstream(upstream).await;
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::spawn(connection);
                    sender.ready().await.expect("a new connection is ready");
                    sender
                }
            };
            let response = sender
                .send_request(Request::from_parts(parts, body))
                .await
                .expect("the upstream answers");
            SENDERS.with(|senders| senders.borrow_mut().push(sender));
            Ok::<_, Infallible>(response.map(BoxBody::new))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A new connection to the upstream, Nagle off (as Postern's).
async fn connect_upstream(upstream: SocketAddr) -> tokio::net::TcpStream {
    let stream = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("the upstream accepts");
    let _ = stream.set_nodelay(true);
    stream
}

/// Forwards one parsed request head (GET, no body) and returns the upstream's whole answer
/// (`content-length` bodies only), its connection back on this thread's stack.
async fn raw_exchange(upstream: SocketAddr, head: &[u8]) -> bytes::Bytes {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, mut buf) = match RAW.with(|raw| raw.borrow_mut().pop()) {
        Some(idle) => idle,
        None => (
            connect_upstream(upstream).await,
            bytes::BytesMut::with_capacity(8192),
        ),
    };
    stream.write_all(head).await.expect("write to the upstream");
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            response.parse(&buf).expect("a valid response")
        {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("a content-length answer");
            while buf.len() < head_len + length {
                buf.reserve(4096);
                assert!(stream.read_buf(&mut buf).await.expect("read") > 0);
            }
            let answer = buf.split_to(head_len + length).freeze();
            RAW.with(|raw| raw.borrow_mut().push((stream, buf)));
            return answer;
        }
        buf.reserve(4096);
        assert!(stream.read_buf(&mut buf).await.expect("read") > 0);
    }
}

async fn serve_raw(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    accept_each(listener, move |mut stream| async move {
        let mut buf = bytes::BytesMut::with_capacity(8192);
        let mut head = Vec::with_capacity(1024);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(head_len)) = request.parse(&buf) else {
                buf.reserve(4096);
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            };
            let path = request.path.unwrap_or("/");
            head.clear();
            head.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
            head.push(b' ');
            head.extend_from_slice(path.strip_prefix("/bench").unwrap_or(path).as_bytes());
            head.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\n");
            for header in request.headers.iter().filter(|h| {
                !h.name.eq_ignore_ascii_case("authorization")
                    && !h.name.eq_ignore_ascii_case("host")
            }) {
                head.extend_from_slice(header.name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(header.value);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            let _ = buf.split_to(head_len);
            let answer = raw_exchange(upstream, &head).await;
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// `rawclient` mode: hyper's server, the upstream side written by hand (request head serialized
/// from the parsed request, the answer's head parsed with httparse into a `Response`).
async fn serve_rawclient(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    accept_each(listener, move |stream| async move {
        let service = hyper::service::service_fn(move |request: Request<Incoming>| async move {
            let mut head = Vec::with_capacity(512);
            head.extend_from_slice(request.method().as_str().as_bytes());
            head.push(b' ');
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            head.extend_from_slice(path.strip_prefix("/bench").unwrap_or(path).as_bytes());
            head.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\n");
            for (name, value) in request.headers() {
                if name != hyper::header::AUTHORIZATION && name != hyper::header::HOST {
                    head.extend_from_slice(name.as_str().as_bytes());
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(value.as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
            }
            head.extend_from_slice(b"\r\n");
            let answer = raw_exchange(upstream, &head).await;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head_len) =
                parsed.parse(&answer).expect("a valid answer")
            else {
                unreachable!("raw_exchange returns whole answers")
            };
            let mut response = hyper::Response::builder().status(parsed.code.unwrap_or(200));
            for header in parsed.headers.iter() {
                response = response.header(header.name, header.value);
            }
            let body = http_body_util::Full::new(answer.slice(head_len..));
            Ok::<_, Infallible>(response.body(body).expect("a valid response"))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// Accepts forever, serving each connection (no delay on small writes) in a task of its own.
async fn accept_each<F, S>(listener: tokio::net::TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> S,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
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
        eprintln!("usage: minproxy mt|tpc|conn|rawclient|raw LISTEN UPSTREAM [THREADS]");
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
        mode @ ("tpc" | "conn" | "raw" | "rawclient") => {
            let mode: &'static str = match mode {
                "conn" => "conn",
                "raw" => "raw",
                "rawclient" => "rawclient",
                _ => "tpc",
            };
            let upstream_addr: SocketAddr = upstream
                .trim_start_matches("http://")
                .parse()
                .expect("UPSTREAM is http://IP:PORT");
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::spawn(move || {
                        runtime(&mut tokio::runtime::Builder::new_current_thread()).block_on(
                            async {
                                match mode {
                                    "conn" => serve_conn(listener(addr), upstream_addr).await,
                                    "raw" => serve_raw(listener(addr), upstream_addr).await,
                                    "rawclient" => {
                                        serve_rawclient(listener(addr), upstream_addr).await
                                    }
                                    _ => {
                                        let client: Pool =
                                            Client::builder(TokioExecutor::new()).build_http();
                                        serve(listener(addr), client, upstream).await
                                    }
                                }
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
            eprintln!("unknown mode {other}: use mt, tpc, conn, rawclient or raw");
            std::process::exit(2);
        }
    }
}
