//! Benchmark: a WebSocket session's round trips through Postern against the same vendor
//! directly, side by side in one run (messages of 64 B to 256 KiB; the caller's frames read for
//! caller tokens, the vendor's for the injected key). Everything on loopback in one process:
//! an echo vendor (tokio-tungstenite, plain `ws://`: the relay's cost, not TLS's), a gateway
//! (`allow_plaintext`), and one client doing round trips one after another.
//! Run: `cargo bench -p postern-gateway --bench websocket`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CALLER_TOKEN: &str = "pst_bench_caller_token_0123456789abcdefghijklmn";
/// How long each size is measured for, on each path.
const MEASURE: Duration = Duration::from_secs(2);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let vendor = echo_vendor().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "sk_live_bench_vendor_key_0123").unwrap();
    let text = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "{data}"

[[callers]]
name = "app"
token_sha256 = "{hash}"

[[integrations]]
name = "realtime"
vendor = "Bench"
owner = "bench@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
audit = "best_effort"
credential = {{ kind = "bearer", from_file = "{key}" }}
total_timeout_ms = 0
operations = [{{ id = "session", method = "GET", path = "/v1/realtime", websocket = true }}]

[[grants]]
caller = "app"
integration = "realtime"
operations = ["session"]
"#,
        data = dir.path().join("data").display(),
        hash = postern_gateway::token_sha256_hex(CALLER_TOKEN),
        port = vendor,
        key = dir.path().join("key").display(),
    );
    let path = dir.path().join("postern.toml");
    let config = postern_config::parse(&text, &path).unwrap();
    let gateway = postern_gateway::RunningGateway::start(config)
        .await
        .unwrap();
    let direct = format!("ws://127.0.0.1:{vendor}/v1/realtime");
    let through = format!("ws://{}/realtime/v1/realtime", gateway.listen_addr);

    println!(
        "| message | direct round trips/s | through Postern | ratio | added µs per round trip |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for size in [64usize, 1024, 16 * 1024, 256 * 1024] {
        let direct_rate = round_trips(&direct, size).await;
        let postern_rate = round_trips(&through, size).await;
        let added = 1e6 / postern_rate - 1e6 / direct_rate;
        println!(
            "| {size} B | {direct_rate:.0} | {postern_rate:.0} | {:.2}× | {added:.1} |",
            postern_rate / direct_rate
        );
    }
    gateway.shutdown().await;
}

/// Round trips per second of `size`-byte text messages on one session to `url`.
async fn round_trips(url: &str, size: usize) -> f64 {
    let mut ws = connect(url).await;
    // JSON-like text, as realtime APIs send (base64 audio inside a JSON event).
    let body = format!(
        r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
        "UklGRiQAAABXQVZFZm10IBAAAAABAAEA".repeat(size / 32 + 1)
    );
    let message = Message::text(&body[..size.max(64)]);
    for _ in 0..20 {
        round_trip(&mut ws, &message).await;
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < MEASURE {
        round_trip(&mut ws, &message).await;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    rate
}

async fn round_trip(ws: &mut WebSocketStream<TcpStream>, message: &Message) {
    ws.send(message.clone()).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert_eq!(answer.len(), message.len());
}

async fn connect(url: &str) -> WebSocketStream<TcpStream> {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {CALLER_TOKEN}").parse().unwrap(),
    );
    let host = request.uri().authority().unwrap().as_str().to_string();
    let tcp = TcpStream::connect(host).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    ws
}

/// A plain `ws://` vendor echoing every message: its port.
async fn echo_vendor() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                tcp.set_nodelay(true).unwrap();
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        break;
                    }
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}
