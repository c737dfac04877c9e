//! Micro-benchmark: the per-call cost of getting the credential to inject — a static bearer
//! header versus a cached OAuth2 access token (`TokenSource::authorization` on a token minted
//! once from a real local token endpoint). Run: `cargo bench -p postern-gateway --bench inject`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use postern_gateway::oauth::TokenSource;
use postern_gateway::upstream::{build_client, UpstreamOptions};

fn main() {
    divan::main();
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    source: Arc<TokenSource>,
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            br#"{"access_token":"tok-bench","token_type":"Bearer","expires_in":3600}"#,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let client = build_client(UpstreamOptions {
            guard: postern_netguard::Guard::new(vec!["127.0.0.1/32".parse().unwrap()]),
            allow_plaintext: true,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            client_auth: None,
        })
        .unwrap();
        let config = postern_config::OAuth2Config {
            token_url: format!("http://{addr}/token").parse().unwrap(),
            client_id: "bench".to_string(),
            scope: None,
            client_auth: postern_config::OAuth2ClientAuth::Basic,
            params: Vec::new(),
        };
        let source = Arc::new(TokenSource::new(
            "bench",
            config,
            zeroize::Zeroizing::new("secret".to_string()),
            client,
            Duration::from_secs(5),
        ));
        source.authorization().await.unwrap();
        source
    });
    Fixture { runtime, source }
}

#[divan::bench]
fn static_bearer_header(bencher: divan::Bencher) {
    let mut value = HeaderValue::from_static("Bearer sk_live_static_key_for_the_benchmark");
    value.set_sensitive(true);
    bencher.bench(|| divan::black_box(value.clone()));
}

#[divan::bench]
fn cached_oauth2_token(bencher: divan::Bencher) {
    let fixture = fixture();
    bencher.bench(|| {
        fixture
            .runtime
            .block_on(divan::black_box(&fixture.source).authorization())
            .unwrap()
    });
}

#[divan::bench]
fn empty_block_on_baseline(bencher: divan::Bencher) {
    let fixture = fixture();
    bencher.bench(|| fixture.runtime.block_on(async { divan::black_box(1) }));
}
