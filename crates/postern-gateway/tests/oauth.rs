//! OAuth2 client credentials against a real local token server, and mTLS to the vendor.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use support::*;

/// A token endpoint: counts requests, can be taken down, mints `tok-N` with a set lifetime.
#[derive(Default)]
struct TokenServer {
    requests: AtomicU64,
    /// Requests answered 503 while down.
    refused: AtomicU64,
    down: AtomicBool,
    lifetime_s: AtomicU64,
    last_form: Mutex<String>,
    last_authorization: Mutex<Option<String>>,
}

fn token_handler(state: Arc<TokenServer>) -> Handler {
    Arc::new(move |request: &SeenRequest| {
        if state.down.load(Ordering::SeqCst) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Answer::json(503, serde_json::json!({"error": "temporarily_unavailable"}));
        }
        let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
        *state.last_form.lock().unwrap() = String::from_utf8_lossy(&request.body).to_string();
        *state.last_authorization.lock().unwrap() = request.header("authorization");
        Answer::json(
            200,
            serde_json::json!({
                "access_token": format!("tok-{n}"),
                "token_type": "Bearer",
                "expires_in": state.lifetime_s.load(Ordering::SeqCst),
            }),
        )
    })
}

/// The vendor accepts every `tok-N` except those listed as refused; it answers a request with
/// `x-slow-ms: N` after N ms.
fn vendor_handler(refused: Arc<Mutex<Vec<String>>>) -> Handler {
    Arc::new(move |request: &SeenRequest| {
        if let Some(ms) = request.header("x-slow-ms").and_then(|ms| ms.parse().ok()) {
            let slow = std::time::Duration::from_millis(ms);
            tokio::task::block_in_place(|| std::thread::sleep(slow));
        }
        let auth = request.header("authorization").unwrap_or_default();
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        if !token.starts_with("tok-") || refused.lock().unwrap().iter().any(|t| t == token) {
            return Answer::json(401, serde_json::json!({"error": "invalid_token"}));
        }
        // Echoes of the access token, which may not reach the caller; and of the tokens it
        // refused before (a purged token may come back in an answer to a call made with it).
        let mut answer = TestVendor::echoing_answer(&auth, token);
        answer.body = serde_json::json!({"ok": true, "you_sent": auth})
            .to_string()
            .into();
        let refused = refused.lock().unwrap().join(",");
        if !refused.is_empty() {
            answer.headers.push(("x-echo-refused", refused));
        }
        answer
    })
}

struct Setup {
    gw: TestGateway,
    tokens: Arc<TokenServer>,
    /// The token endpoint (kept running for the test's length).
    token_server: TestVendor,
    vendor: TestVendor,
    refused: Arc<Mutex<Vec<String>>>,
}

async fn setup(lifetime_s: u64, client_auth: &str) -> Setup {
    setup_with(lifetime_s, client_auth, "").await
}

/// [`setup`] with `extra` keys added to the integration.
async fn setup_with(lifetime_s: u64, client_auth: &str, extra: &str) -> Setup {
    let tokens = Arc::new(TokenServer::default());
    tokens.lifetime_s.store(lifetime_s, Ordering::SeqCst);
    let token_server = TestVendor::tls(token_handler(tokens.clone())).await;
    let refused = Arc::new(Mutex::new(Vec::new()));
    let vendor = TestVendor::tls(vendor_handler(refused.clone())).await;
    let cas = format!(
        "{}{}",
        vendor.ca_pem.as_deref().unwrap(),
        token_server.ca_pem.as_deref().unwrap()
    );
    let credential = format!(
        r#"{{ kind = "oauth2", token_url = "https://127.0.0.1:{token_port}/oauth/token", client_id = "postern-client", client_secret = "crm-client-secret", scope = "contacts.read", client_auth = "{client_auth}", params = {{ audience = "https://api.crm.example" }} }}"#,
        token_port = token_server.addr.port(),
    );
    let body = crm_integration(vendor.addr.port(), &credential, extra);
    let gw = TestGateway::start(&body, Some(&cas)).await;
    store_client_secret(&gw, b"s3cret value&=");
    Setup {
        gw,
        tokens,
        token_server,
        vendor,
        refused,
    }
}

/// The CRM integration on the vendor at `vendor_port`, with `credential` (an oauth2 table) and
/// `extra` keys, granted whole to `checkout`.
fn crm_integration(vendor_port: u16, credential: &str, extra: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "crm"
vendor = "CRM"
owner = "sales@example.com"
upstream = "https://127.0.0.1:{vendor_port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {credential}
operations = [
  {{ id = "list_contacts", method = "GET", path = "/contacts" }},
  {{ id = "create_contact", method = "POST", path = "/contacts" }},
]
{extra}

[[grants]]
caller = "checkout"
integration = "crm"
operations = ["*"]
"#
    )
}

/// Stores the OAuth2 client secret `crm-client-secret` in the gateway's vault and applies it.
fn store_client_secret(gw: &TestGateway, value: &[u8]) {
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    vault
        .set("crm-client-secret", "oauth2_client_secret", value, 1)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
}

async fn call(gw: &TestGateway) -> u16 {
    get_contacts(gw).await.status().as_u16()
}

/// `GET /crm/contacts` as `checkout`.
async fn get_contacts(gw: &TestGateway) -> reqwest::Response {
    client()
        .get(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap()
}

/// `count` calls to `/crm/contacts` at once, as `checkout`: their statuses.
async fn concurrent_calls(gw: &TestGateway, count: usize) -> Vec<u16> {
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let (base, token) = (gw.base.clone(), gw.token.clone());
            tokio::spawn(async move {
                client()
                    .get(format!("{base}/crm/contacts"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn a_vendor_echoing_the_access_token_in_a_header_or_its_body_never_shows_it_to_the_caller() {
    let s = setup(3600, "basic").await;
    for _ in 0..2 {
        let response = get_contacts(&s.gw).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers.get("x-kept").unwrap(), "fine");
        assert!(headers.get("x-echo-as-sent").is_none(), "{headers:?}");
        assert!(headers.get("x-echo-encoded").is_none(), "{headers:?}");
        // And in the body: overwritten where it stood.
        let answer: serde_json::Value = response.json().await.unwrap();
        let sent = answer["you_sent"].as_str().unwrap();
        assert!(
            sent.starts_with("Bearer ***")
                && sent
                    .trim_start_matches("Bearer ")
                    .bytes()
                    .all(|b| b == b'*'),
            "{answer}"
        );
    }
    assert_eq!(s.vendor.seen().len(), 2);
    let events = s.gw.wait_events(2).await;
    assert!(
        events.iter().all(|e| e["secret_echoed"] == true),
        "{events:#?}"
    );
}

/// A call's answer is read for the token its request carried, though the tokens minted while
/// the vendor took its time (one a second here) pushed it out of the last four, which every
/// answer is read for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_answer_is_read_for_its_own_token_after_newer_ones() {
    let s = setup(1, "basic").await;
    let (base, token) = (s.gw.base.clone(), s.gw.token.clone());
    let slow = tokio::spawn(async move {
        client()
            .get(format!("{base}/crm/contacts"))
            .bearer_auth(token)
            .header("x-slow-ms", "6000")
            .send()
            .await
            .unwrap()
    });
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(5500) {
        assert_eq!(call(&s.gw).await, 200);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let minted = s.tokens.requests.load(Ordering::SeqCst);
    assert!(
        minted >= 6,
        "tokens minted while the answer was slow: {minted}"
    );
    let response = slow.await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert!(headers.get("x-echo-as-sent").is_none(), "{headers:?}");
    assert!(headers.get("x-echo-encoded").is_none(), "{headers:?}");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["you_sent"], "Bearer *****", "{answer}");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_mint_exactly_one_token() {
    let s = setup(3600, "basic").await;
    assert_eq!(concurrent_calls(&s.gw, 32).await, [200; 32]);
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1, "single flight");
    assert!(s
        .vendor
        .seen()
        .iter()
        .all(|r| r.header("authorization").as_deref() == Some("Bearer tok-1")));
    // The token request: client credentials grant, scope, extra params, Basic client auth with
    // form-encoded id and secret (RFC 6749 §2.3.1).
    let form = s.tokens.last_form.lock().unwrap().clone();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=contacts.read"), "{form}");
    assert!(
        form.contains("audience=https%3A%2F%2Fapi.crm.example"),
        "{form}"
    );
    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode("postern-client:s3cret%20value%26%3D");
    assert_eq!(
        s.tokens.last_authorization.lock().unwrap().clone().unwrap(),
        format!("Basic {expected}")
    );
    s.gw.stop().await;
}

/// The OAuth2 path reads a request body into memory (to replay it once if the vendor refuses
/// the token): a body over `max_request_body_bytes` is refused with 413 there too, whether it
/// declares its length or streams, and none of it reaches the vendor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_on_the_oauth2_path_and_never_reach_the_vendor() {
    let s = setup_with(3600, "basic", "max_request_body_bytes = 64").await;
    let url = format!("{}/crm/contacts", s.gw.base);
    let streamed = reqwest::Body::wrap_stream(futures_stream(vec![vec![b'a'; 50], vec![b'b'; 50]]));
    for body in [reqwest::Body::from(vec![b'c'; 100]), streamed] {
        let response = client()
            .post(&url)
            .bearer_auth(&s.gw.token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "request_too_large", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_request_body_bytes (64)"),
            "{answer}"
        );
    }
    // Within the limit, the same call goes through with the minted token.
    let response = client()
        .post(&url)
        .bearer_auth(&s.gw.token)
        .body(vec![b'd'; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = s.vendor.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the call within the limit reached the vendor"
    );
    assert_eq!(&seen[0].body[..], &[b'd'; 64][..]);
    s.gw.stop().await;
}

/// The OAuth2 path's bodies, read whole, count in a memory budget whose caller share is 64 MiB:
/// uploads that would hold more are refused `503 request_bodies_busy`, nothing of them reaching
/// the vendor, rather than let one caller's large bodies take the gateway's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_read_whole_on_the_oauth2_path_count_in_a_memory_budget() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = setup_with(
        3600,
        "basic",
        "max_request_body_bytes = 33554432\nrequest_timeout_ms = 60000",
    )
    .await;
    let addr = s.gw.base.trim_start_matches("http://").to_string();
    // 12 MiB sent of each 32 MiB body: six hold 72 MiB.
    const SENT_MIB: usize = 12;
    let mut uploads = Vec::new();
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /crm/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            s.gw.token,
            32 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        uploads.push(stream);
    }
    // Written at once; a refused upload's connection may stop taking bytes.
    let answers =
        futures_util::future::join_all(uploads.into_iter().map(|mut stream| async move {
            let chunk = vec![b'a'; 1 << 20];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                for _ in 0..SENT_MIB {
                    if stream.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            })
            .await;
            let mut answer = vec![0u8; 4096];
            match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
                .await
            {
                Ok(Ok(read)) => String::from_utf8_lossy(&answer[..read]).to_string(),
                _ => String::new(),
            }
        }))
        .await;
    let refused = answers
        .iter()
        .filter(|answer| {
            answer.starts_with("HTTP/1.1 503") && answer.contains("request_bodies_busy")
        })
        .count();
    assert!(refused >= 1, "{answers:#?}");
    assert!(s.vendor.seen().is_empty());
    s.gw.stop().await;
}

/// The body the OAuth2 path reads whole must arrive within `request_timeout_ms`, as a streamed
/// one must: a caller that stalls its upload gets `408 request_body_timeout`, not a call held
/// open for good, and the vendor gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_on_the_oauth2_path_times_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = setup_with(3600, "basic", "request_timeout_ms = 300").await;
    let mut stream = tokio::net::TcpStream::connect(s.gw.running().listen_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /crm/contacts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100000\r\n\r\n",
        s.gw.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'a'; 10_000]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(answer.contains("10000 of 100000 bytes"), "{answer}");
    assert!(s.vendor.seen().is_empty());
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_in_body_when_asked() {
    let s = setup(3600, "body").await;
    assert_eq!(call(&s.gw).await, 200);
    let form = s.tokens.last_form.lock().unwrap().clone();
    assert!(form.contains("client_id=postern-client"), "{form}");
    assert!(
        form.contains("client_secret=s3cret%20value%26%3D"),
        "{form}"
    );
    assert!(s.tokens.last_authorization.lock().unwrap().is_none());
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_refreshed_before_expiry_without_a_failed_call() {
    // 2 s lifetime: refreshed in the background from 1.6 s on, while calls keep succeeding.
    let s = setup(2, "basic").await;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < std::time::Duration::from_millis(3000) {
        statuses.push(call(&s.gw).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let minted = s.tokens.requests.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&minted),
        "refreshed ahead of expiry: {minted} tokens"
    );
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_401_purges_and_re_mints_once() {
    let s = setup(3600, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    // The vendor revokes tok-1: the next call gets 401, Postern re-mints once, replays, succeeds.
    s.refused.lock().unwrap().push("tok-1".to_string());
    let response = client()
        .post(format!("{}/crm/contacts", s.gw.base))
        .bearer_auth(&s.gw.token)
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The purged token stays among those filtered from the answers' headers.
    assert!(
        response.headers().get("x-echo-refused").is_none(),
        "{:?}",
        response.headers()
    );
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 2);
    let seen = s.vendor.seen();
    let posts: Vec<_> = seen.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 2, "the call was replayed once");
    assert_eq!(posts[0].header("authorization").unwrap(), "Bearer tok-1");
    assert_eq!(posts[1].header("authorization").unwrap(), "Bearer tok-2");
    assert_eq!(
        posts[1].body, r#"{"name":"Ada"}"#,
        "the body was replayed intact"
    );

    // A vendor that refuses every token: exactly one re-mint, then the 401 is returned. (A
    // token is dropped at most once a second per source: past that second.)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.refused.lock().unwrap().push("tok-2".to_string());
    s.refused.lock().unwrap().push("tok-3".to_string());
    assert_eq!(call(&s.gw).await, 401);
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 3);
    s.gw.stop().await;
}

/// A caller that hangs up while its call waits for the token does not cancel the fetch: the
/// calls waiting with it take its answer, on the one connection it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hanging_up_does_not_cancel_the_token_fetch() {
    let s = setup(3600, "basic").await;
    // The token endpoint starts serving a new connection 400 ms after it accepted it.
    s.token_server
        .stall_new_connections(std::time::Duration::from_millis(400));
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(format!("{}/crm/contacts", s.gw.base))
        .bearer_auth(&s.gw.token)
        .send()
        .await;
    assert!(gave_up.is_err(), "the first caller hung up");
    assert_eq!(call(&s.gw).await, 200);
    assert_eq!(
        s.token_server.connections(),
        1,
        "one fetch, not one per caller"
    );
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1);
    s.gw.stop().await;
}

/// A caller that can make the vendor answer 401 whatever the token has a token dropped and
/// minted again at most once a second, not once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_401s_drop_the_token_at_most_once_a_second() {
    let s = setup(3600, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    for token in ["tok-1", "tok-2", "tok-3", "tok-4", "tok-5"] {
        s.refused.lock().unwrap().push(token.to_string());
    }
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(call(&s.gw).await, 401);
    }
    // One re-mint for the first refusal; the next ones, within its second, keep the token
    // (one more for each further second the calls took, on a slow machine).
    let seconds = started.elapsed().as_secs();
    let requests = s.tokens.requests.load(Ordering::SeqCst) as u64;
    assert!(
        (2..=2 + seconds).contains(&requests),
        "{requests} tokens minted in {seconds} s"
    );
    s.gw.stop().await;
}

/// A background refresh that fails is tried again after a second, not at every call while
/// the current token serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_is_not_tried_at_every_call() {
    // 10 s tokens: refreshed from 8 s on, the calls below well before the token expires.
    let s = setup(10, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    s.tokens.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(8050)).await;
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < std::time::Duration::from_millis(400) {
        assert_eq!(call(&s.gw).await, 200, "the unexpired token keeps serving");
        calls += 1;
    }
    assert!(calls >= 3, "{calls} calls");
    // One refresh, refused, within the second (maybe a second one if the calls straddled its
    // end): never one per call.
    let refused = s.tokens.refused.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&refused),
        "{refused} refreshes refused for {calls} calls"
    );
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_serves_cached_token_then_fails_closed_after_expiry() {
    let s = setup(1, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    s.tokens.down.store(true, Ordering::SeqCst);
    assert_eq!(call(&s.gw).await, 200, "the unexpired token keeps serving");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = get_contacts(&s.gw).await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "credential_unavailable");
    let events = s.gw.wait_events(3).await;
    assert_eq!(events.last().unwrap()["reason"], "credential_unavailable");
    // Back up: once the failure's second has passed, the next call mints again.
    s.tokens.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(call(&s.gw).await, 200);
    s.gw.stop().await;
}

/// With no token, a failing token endpoint is asked once, not once per waiting call: the calls
/// that waited for that fetch, and those that come within a second of it, get its failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_token_endpoint_is_asked_once_for_all_waiting_calls() {
    let s = setup(3600, "basic").await;
    s.tokens.down.store(true, Ordering::SeqCst);
    assert_eq!(concurrent_calls(&s.gw, 16).await, [503; 16]);
    assert_eq!(
        s.tokens.refused.load(Ordering::SeqCst),
        1,
        "one token request"
    );
    s.tokens.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(call(&s.gw).await, 200);
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1);
    s.gw.stop().await;
}

/// A token said to expire at once (`expires_in: 0`) is used for a second: the calls that
/// waited for it take it, rather than each asking the endpoint again, one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_that_expires_at_once_is_fetched_once_for_the_waiting_calls() {
    let s = setup(0, "basic").await;
    assert_eq!(concurrent_calls(&s.gw, 16).await, [200; 16]);
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1, "single flight");
    s.gw.stop().await;
}

/// A token endpoint that sends its answer's head and then stalls is given up on at the
/// integration's `request_timeout_ms`, the body included: the call fails closed (503), it does
/// not wait forever, and the next call asks again once the failure's second has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_stalling_mid_answer_times_out() {
    let (gw, vendor, held) = stalling_token_endpoint("request_timeout_ms = 500").await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), get_contacts(&gw))
        .await
        .expect("the call was answered, not held by the stalled token request");
    assert_eq!(response.status(), 503);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "credential_unavailable");
    assert!(answer.to_string().contains("500 ms"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(vendor.seen().is_empty());
    // The fetch lock was let go: a call after the failure's second asks again (and fails
    // the same way), rather than waiting on the first.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), get_contacts(&gw))
        .await
        .expect("answered");
    assert_eq!(again.status(), 503);
    assert_eq!(held.lock().unwrap().len(), 2, "two token requests");
    gw.stop().await;
}

/// A gateway whose CRM integration (with `extra` keys) mints its tokens at an endpoint that
/// sends its answer's head and stalls; the streams it holds (one per token request).
async fn stalling_token_endpoint(
    extra: &str,
) -> (
    TestGateway,
    TestVendor,
    Arc<Mutex<Vec<tokio::net::TcpStream>>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
                .await;
            holder.lock().unwrap().push(stream);
        }
    });
    let vendor = TestVendor::tls(vendor_handler(Arc::new(Mutex::new(Vec::new())))).await;
    let credential = format!(
        r#"{{ kind = "oauth2", token_url = "http://127.0.0.1:{token_port}/oauth/token", client_id = "postern-client", client_secret = "crm-client-secret" }}"#
    );
    let extra = format!("allow_plaintext = true\n{extra}");
    let body = crm_integration(vendor.addr.port(), &credential, &extra);
    let gw = TestGateway::start(&body, vendor.ca_pem.as_deref()).await;
    store_client_secret(&gw, b"secret");
    (gw, vendor, held)
}

/// The wait for a token ends with the call's `total_timeout_ms`, though the token request
/// may take `request_timeout_ms` (5 s here): 504, as a vendor that is slow to answer gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_token_ends_with_the_calls_total_timeout() {
    let (gw, vendor, held) =
        stalling_token_endpoint("request_timeout_ms = 5000\ntotal_timeout_ms = 400").await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), get_contacts(&gw))
        .await
        .expect("answered");
    let waited = started.elapsed();
    assert_eq!(response.status(), 504);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "upstream_total_timeout");
    assert!(answer.to_string().contains("400 ms"), "{answer}");
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
    assert!(vendor.seen().is_empty());
    assert_eq!(held.lock().unwrap().len(), 1, "one token request");
    gw.stop().await;
}

/// An `expires_in` too large for the clock is taken as a day, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_lifetime_is_capped() {
    let s = setup(u64::MAX, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    assert_eq!(call(&s.gw).await, 200);
    assert_eq!(
        s.tokens.requests.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    s.gw.stop().await;
}

/// Token requests follow the integration's network settings across a reload: with a `ca_file`
/// that no longer trusts the token endpoint, the next token request fails, rather than going
/// on through the client built for the old settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_use_the_reloaded_network_settings() {
    let s = setup(3600, "basic").await;
    assert_eq!(call(&s.gw).await, 200);
    let text = std::fs::read_to_string(&s.gw.config_path).unwrap();
    let vendor_only = s.gw.config_path.with_file_name("vendor-only-ca.pem");
    std::fs::write(&vendor_only, s.vendor.ca_pem.as_deref().unwrap()).unwrap();
    let old_ca = s.gw.config_path.with_file_name("vendor-ca.pem");
    let reloaded = text.replace(
        &old_ca.display().to_string(),
        &vendor_only.display().to_string(),
    );
    assert_ne!(reloaded, text);
    std::fs::write(&s.gw.config_path, reloaded).unwrap();
    let config = postern_config::load(&s.gw.config_path).unwrap();
    s.gw.running().reload(config).unwrap();
    assert_eq!(
        call(&s.gw).await,
        503,
        "the token endpoint is no longer trusted"
    );
    assert_eq!(s.tokens.requests.load(Ordering::SeqCst), 1);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_goes_through_the_ssrf_guard() {
    let body = r#"
[[integrations]]
name = "crm"
vendor = "CRM"
owner = "sales@example.com"
upstream = "https://api.crm.example"
credential = { kind = "oauth2", token_url = "https://169.254.169.254/latest/token", client_id = "c", client_secret = "crm-client-secret" }
operations = [ { id = "list_contacts", method = "GET", path = "/contacts" } ]

[[grants]]
caller = "checkout"
integration = "crm"
operations = ["*"]
"#;
    let gw = TestGateway::start(body, None).await;
    store_client_secret(&gw, b"x");
    let response = client()
        .get(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("link_local"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_the_vault_is_presented_to_the_vendor() {
    let client_pki = TestPki::new();
    let vendor = TestVendor::mtls(TestVendor::ok_handler(), &client_pki.ca_pem).await;
    let body = format!(
        r#"
[[integrations]]
name = "bank"
vendor = "Bank"
owner = "treasury@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
client_certificate = {{ cert = "bank-cert", key = "bank-key" }}
operations = [ {{ id = "balance", method = "GET", path = "/balance" }} ]

[[grants]]
caller = "checkout"
integration = "bank"
operations = ["*"]
"#,
        port = vendor.addr.port()
    );
    let gw = TestGateway::start(&body, vendor.ca_pem.as_deref()).await;
    let get = || {
        client()
            .get(format!("{}/bank/balance", gw.base))
            .bearer_auth(&gw.token)
            .send()
    };
    // Not in the vault yet: fail closed, nothing sent.
    assert_eq!(get().await.unwrap().status(), 503);
    // Through the admin API, a half that is not what it must be is refused before it is
    // stored.
    for (name, value) in [
        ("bank-cert", "not a certificate"),
        ("bank-key", "nor a key"),
    ] {
        let answer = client()
            .post(format!("{}/v1/credentials/{name}", gw.admin))
            .bearer_auth(&gw.admin_token)
            .body(value)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422, "{name}");
        let answer: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "credential_unusable", "{answer}");
    }
    let (cert, key) = client_pki.client_cert("spiffe://postern.example/gateway");
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    // In the vault but not PEM: the vault's refresh is taken (the config is not at fault) and
    // this integration fails closed, as without a certificate.
    vault
        .set("bank-cert", "tls_client_cert", b"not a certificate", 1)
        .unwrap();
    vault
        .set("bank-key", "tls_client_key", b"nor a key", 1)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    let unusable = get().await.unwrap();
    assert_eq!(unusable.status(), 503);
    let answer: serde_json::Value = unusable.json().await.unwrap();
    assert_eq!(
        answer["error"]["code"], "credential_unavailable",
        "{answer}"
    );
    assert!(vendor.seen().is_empty());
    vault.rotate("bank-cert", cert.as_bytes(), 0, 2).unwrap();
    vault.rotate("bank-key", key.as_bytes(), 0, 2).unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(vendor.seen().len(), 1);
    // The certificate rotated before its key: the pair does not match, which the TLS client
    // would refuse. That integration fails closed alone; the vault's refresh still applies
    // (before, it failed whole, holding up every other change, revocations included).
    let (new_cert, new_key) = client_pki.client_cert("spiffe://postern.example/gateway-2");
    vault
        .rotate("bank-cert", new_cert.as_bytes(), 0, 3)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    let mismatched = get().await.unwrap();
    assert_eq!(mismatched.status(), 503);
    let answer: serde_json::Value = mismatched.json().await.unwrap();
    assert_eq!(
        answer["error"]["code"], "credential_unavailable",
        "{answer}"
    );
    assert_eq!(vendor.seen().len(), 1);
    vault.rotate("bank-key", new_key.as_bytes(), 0, 3).unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(vendor.seen().len(), 2);

    // Rotated one half at a time with a rollback window (as the admin API, one credential a
    // request, does by default): the previous half that matches the other's current one stays
    // in use, with a note, until the other half lands; calls go on throughout.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let notes = || gw.running().shared().runtime.load().warnings().join("\n");
    // A rotation that keeps the previous version for rollback for an hour.
    let rotate = |name: &str, value: &str| {
        vault
            .rotate(name, value.as_bytes(), 3_600_000, now())
            .unwrap()
    };
    for (first, second) in [("bank-cert", "bank-key"), ("bank-key", "bank-cert")] {
        let (cert, key) = client_pki.client_cert("spiffe://postern.example/gateway-3");
        let value = |name: &str| {
            if name == "bank-cert" {
                cert.clone()
            } else {
                key.clone()
            }
        };
        rotate(first, &value(first));
        gw.running().shared().refresh_from_vault().unwrap();
        assert_eq!(get().await.unwrap().status(), 200, "{first} rotated alone");
        assert!(
            notes().contains("was rotated, but not its") && notes().contains("stays in use"),
            "{}",
            notes()
        );
        rotate(second, &value(second));
        gw.running().shared().refresh_from_vault().unwrap();
        assert_eq!(get().await.unwrap().status(), 200, "both rotated");
        assert!(!notes().contains("was rotated, but not its"), "{}", notes());
    }
    // Once the rollback window has ended, the previous half is erased and no longer used.
    let (cert, _) = client_pki.client_cert("spiffe://postern.example/gateway-4");
    vault
        .rotate("bank-cert", cert.as_bytes(), 5_000, now())
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 200, "inside the window");
    assert_eq!(vault.erase_expired(now() + 10_000).unwrap(), 1);
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 503, "past the window");
    // Each half's previous version pairs with no current one: fail closed.
    let (stray, _) = client_pki.client_cert("spiffe://postern.example/stray");
    rotate("bank-cert", &stray);
    let (_, stray_key) = client_pki.client_cert("spiffe://postern.example/stray-2");
    rotate("bank-key", &stray_key);
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 503);
    // A previous certificate past its notAfter is not used (the vendor would refuse it: 502).
    let (expired, expired_key) =
        client_pki.client_cert_with("spiffe://postern.example/expired", |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 2, 1);
        });
    rotate("bank-cert", &expired);
    rotate("bank-key", &expired_key);
    let (fresh, _) = client_pki.client_cert("spiffe://postern.example/fresh");
    rotate("bank-cert", &fresh);
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(get().await.unwrap().status(), 503, "not the expired one");
    gw.stop().await;

    // The same vendor refuses a gateway without the certificate.
    let body = body.replace(
        "client_certificate = { cert = \"bank-cert\", key = \"bank-key\" }\n",
        "",
    );
    let gw = TestGateway::start(&body, vendor.ca_pem.as_deref()).await;
    let response = client()
        .get(format!("{}/bank/balance", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        vendor.seen().len(),
        7,
        "nothing reached it without the certificate"
    );
    gw.stop().await;
}
