//! SCRATCH: the floor of a hyper-based proxy on this machine.
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type C = Client<HttpConnector, Incoming>;

async fn serve(listener: tokio::net::TcpListener, client: C, upstream: &'static str) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().unwrap().as_str();
                    let path = path.strip_prefix("/bench").unwrap_or(path);
                    parts.uri = Uri::try_from(format!("{upstream}{path}")).unwrap();
                    parts.headers.remove(hyper::header::AUTHORIZATION);
                    let resp = client.request(Request::from_parts(parts, body)).await.unwrap();
                    Ok::<_, Infallible>(resp.map(|b| BoxBody::new(b)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn listener(addr: SocketAddr) -> tokio::net::TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_reuseport(true).unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s.listen(1024).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args[1].clone();
    let addr: SocketAddr = args[2].parse().unwrap();
    let upstream: &'static str = Box::leak(args[3].clone().into_boxed_str());
    let threads: usize = args.get(4).map_or(2, |t| t.parse().unwrap());
    let _: Option<Bytes> = None;
    if mode == "mt" {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
        rt.block_on(async {
            let client: C = Client::builder(TokioExecutor::new()).build_http();
            serve(listener(addr), client, upstream).await
        });
    } else {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let client: C = Client::builder(TokioExecutor::new()).build_http();
                        serve(listener(addr), client, upstream).await
                    });
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
