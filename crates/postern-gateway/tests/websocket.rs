//! End-to-end: WebSocket sessions through Postern (operations with `websocket = true`), with a
//! real WebSocket client and vendor (tokio-tungstenite) over real sockets, the vendor over TLS.

mod support;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;

/// The vendor's answer to a text message: `echo: <text>`; to `what key?`, its own key (as a
/// vendor's error message may quote the key it was sent).
fn echo(text: &str) -> Option<String> {
    match text {
        "what key?" => Some(format!(r#"{{"error":"invalid key {VENDOR_KEY}"}}"#)),
        _ => Some(format!("echo: {text}")),
    }
}

const ANOTHER_TOKEN: &str = "pst_3sFlZhVVxOOZHyr3ed8HsqImRuXcQmBiQ4sHlGyNZcw";
/// The vendor's name through the forward proxy: never resolved, Postern intercepts it.
const VENDOR_HOST: &str = "realtime.vendor.postern.test";
const VENDOR_KEY: &str = "sk_live_realtime_vendor_key_DO_NOT_LEAK_77";

/// A gateway with an OpenAI-like integration: `realtime` takes WebSocket handshakes, `models`
/// does not; both granted to `checkout`. `extra` goes in the integration.
async fn ws_gateway(vendor: &WsVendor, extra: &str) -> (TestGateway, tempfile::TempDir) {
    let (body, keys) = ws_integration(vendor, extra);
    (TestGateway::start(&body, Some(&vendor.ca_pem)).await, keys)
}

/// [`ws_gateway`]'s integration, and the directory holding its vendor key.
fn ws_integration(vendor: &WsVendor, extra: &str) -> (String, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("openai-key");
    std::fs::write(&key_path, VENDOR_KEY).unwrap();
    let body = intercepted_integration(
        "openai",
        vendor.port,
        VENDOR_HOST,
        &key_path,
        r#"
  { id = "realtime", method = "GET", path = "/v1/realtime", websocket = true },
  { id = "models",   method = "GET", path = "/v1/models" },
"#,
        extra,
        r#""realtime", "models""#,
    );
    (body, keys)
}

/// A handshake request to `path` on the gateway, with the caller token `token` (if any).
fn handshake(gw: &TestGateway, path: &str, token: Option<&str>) -> Request {
    let url = format!("{}{path}", gw.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    // Postern never lets an extension be negotiated: it reads every frame as sent.
    request.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    request
}

async fn connect(
    gw: &TestGateway,
    request: Request,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(gw.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio_tungstenite::client_async(request, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// Sends `text` on the session and returns the next message, within 5 s.
async fn echoed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s")
        .expect("the session is open")
        .unwrap()
}

/// Reads `ws` until its session ends (within 5 s, else panics naming `what`): the messages
/// that came meanwhile.
async fn until_closed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, what: &str) -> Vec<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = Vec::new();
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            messages.push(message);
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        panic!("{what} was not closed");
    }
    messages
}

/// A session of `checkout`'s on the realtime operation.
async fn open_session(gw: &TestGateway) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    connect(
        gw,
        handshake(gw, "/openai/v1/realtime", Some(CHECKOUT_TOKEN)),
    )
    .await
    .expect("the handshake is accepted")
}

/// The status and JSON body of a handshake Postern (or the vendor) refused.
fn refused(error: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_websocket_session_is_relayed_with_the_vendor_key_and_recorded() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = connect(
        &gw,
        handshake(&gw, "/openai/v1/realtime?model=gpt", Some(CHECKOUT_TOKEN)),
    )
    .await
    .expect("the handshake is accepted");
    ws.send(Message::text(r#"{"type":"session.update"}"#))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::text(r#"echo: {"type":"session.update"}"#));
    // A large binary message, in many reads.
    let audio = vec![7u8; 200_000];
    ws.send(Message::binary(audio.clone())).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.into_data().len(), audio.len());
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let (target, headers) = vendor.handshakes.lock().unwrap()[0].clone();
    assert_eq!(target, "/v1/realtime?model=gpt");
    assert_eq!(
        headers.get("authorization").unwrap(),
        &format!("Bearer {VENDOR_KEY}")
    );
    assert!(
        headers.get("sec-websocket-extensions").is_none(),
        "no extension is offered to the vendor"
    );
    for (name, value) in &headers {
        assert!(
            !value
                .as_bytes()
                .windows(CHECKOUT_TOKEN.len())
                .any(|w| w == CHECKOUT_TOKEN.as_bytes()),
            "the caller token reached the vendor in {name}"
        );
    }
    let events = gw.wait_events(1).await;
    let event = &events[0];
    assert_eq!(event["status"], 101, "{event}");
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["reason"], "granted");
    assert_eq!(event["operation"], "realtime");
    assert_eq!(event["caller"], "checkout");
    assert!(
        event["request_bytes"].as_u64().unwrap() > 200_000,
        "{event}"
    );
    assert!(
        event["response_bytes"].as_u64().unwrap() > 200_000,
        "{event}"
    );
    let outcome = audit_outcome(&gw, event["request_id"].as_str().unwrap()).await;
    assert_eq!(outcome.status, Some(101));
    gw.stop().await;
}

#[tokio::test]
async fn a_handshake_is_refused_unless_granted_to_an_operation_that_takes_one() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let cases = [
        (
            "/openai/v1/models",
            Some(CHECKOUT_TOKEN),
            403,
            "websocket_not_allowed",
        ),
        (
            "/openai/v1/realtime",
            Some(REPORTING_TOKEN),
            403,
            "not_granted",
        ),
        ("/openai/v1/realtime", None, 401, "unauthenticated"),
        (
            "/openai/v1/other",
            Some(CHECKOUT_TOKEN),
            403,
            "operation_not_allowed",
        ),
    ];
    for (path, token, status, code) in cases {
        let Err(error) = connect(&gw, handshake(&gw, path, token)).await else {
            panic!("{path} was accepted");
        };
        let (got, body) = refused(error);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(code), "{path}: {body}");
    }
    assert!(vendor.handshakes.lock().unwrap().is_empty());
    // The vendor's own refusal reaches the caller as any answer does.
    let denied = handshake(&gw, "/openai/v1/realtime?deny=1", Some(CHECKOUT_TOKEN));
    let Err(error) = connect(&gw, denied).await else {
        panic!("the vendor's refusal was accepted");
    };
    let (status, body) = refused(error);
    assert_eq!(status, 401);
    // (The client reads the body as it came: chunked.)
    assert!(body.contains("no such key"), "{body}");
    gw.stop().await;
}

/// A policy bounding the size of the caller's requests to the WebSocket operation refuses the
/// handshake (its messages are not decided one by one, as an opaque tunnel's requests are
/// not); a size rule on another operation leaves it open.
#[tokio::test]
async fn a_handshake_is_refused_where_a_size_rule_bounds_the_operation() {
    let vendor = WsVendor::start(None, echo).await;
    let (body, keys) = ws_integration(&vendor, "");
    for (operation, refused_here) in [("realtime", true), ("models", false)] {
        let policies = keys.path().join(format!("{operation}.cedar"));
        std::fs::write(
            &policies,
            format!(
                "@id(\"small-{operation}\")\nforbid(principal, action, resource == Postern::Operation::\"openai/{operation}\") when {{ context.request_bytes > 1000 }};\n"
            ),
        )
        .unwrap();
        let gw = TestGateway::start_with_gateway(
            &body,
            Some(&vendor.ca_pem),
            &format!("policies = \"{}\"", policies.display()),
        )
        .await;
        let result = connect(
            &gw,
            handshake(&gw, "/openai/v1/realtime", Some(CHECKOUT_TOKEN)),
        )
        .await;
        match (result, refused_here) {
            (Err(error), true) => {
                let (status, body) = refused(error);
                assert_eq!(status, 403, "{body}");
                assert!(body.contains("policy_forbid"), "{body}");
                assert!(body.contains("WebSocket"), "{body}");
                let events = gw.wait_events(1).await;
                assert_eq!(events[0]["policy"], "small-realtime", "{}", events[0]);
            }
            (Ok(mut ws), false) => {
                ws.send(Message::text("hello")).await.unwrap();
                let reply = ws.next().await.unwrap().unwrap();
                assert_eq!(reply.into_text().unwrap().as_str(), "echo: hello");
            }
            (Ok(_), true) => panic!("the handshake passed a size rule on its operation"),
            (Err(error), false) => panic!("refused by a rule on another operation: {error}"),
        }
        gw.stop().await;
    }
    assert_eq!(vendor.handshakes.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_caller_token_in_a_message_ends_the_session_before_it_reaches_the_vendor() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let escaped: String = CHECKOUT_TOKEN
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let messages = [
        format!(r#"{{"api_key":"{CHECKOUT_TOKEN}"}}"#),
        // Any token `postern` makes (`pst_` and 43 base64url characters), another caller's too.
        format!(r#"{{"api_key":"{ANOTHER_TOKEN}"}}"#),
        format!(r#"{{"api_key":"{escaped}"}}"#),
    ];
    for (n, message) in messages.iter().enumerate() {
        let mut ws = open_session(&gw).await;
        ws.send(Message::text("hello")).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert_eq!(answer, Message::text("echo: hello"));
        let _ = ws.send(Message::text(message.clone())).await;
        // The session ends: the caller reads the connection's end, and no echo of it.
        let after = until_closed(&mut ws, "the session").await;
        assert!(
            !after.iter().any(Message::is_text),
            "the vendor answered: {after:?}"
        );
        let events = gw.wait_events(n + 1).await;
        let event = &events[n];
        assert_eq!(event["status"], 101, "{event}");
        assert_eq!(event["reason"], "caller_token_in_body", "{event}");
    }
    let heard = vendor.messages.lock().unwrap().clone();
    assert_eq!(heard.len(), messages.len(), "{heard:?}");
    assert!(
        heard.iter().all(|m| *m == Message::text("hello")),
        "{heard:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_session_is_closed_at_the_integrations_idle_limit() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "response_idle_timeout_ms = 300").await;
    let mut ws = open_session(&gw).await;
    let started = std::time::Instant::now();
    until_closed(&mut ws, "the idle session").await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    let events = gw.wait_events(1).await;
    assert_eq!(
        events[0]["reason"], "upstream_idle_timeout",
        "{}",
        events[0]
    );
    gw.stop().await;
}

/// A session to the realtime operation through the forward proxy, as a client with
/// `HTTPS_PROXY=http://x:<caller token>@postern` opens one for `wss://`: CONNECT, then the
/// handshake inside the tunnel Postern intercepts.
async fn session_through_the_proxy(
    gw: &TestGateway,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let mut tcp = TcpStream::connect(gw.running().listen_addr).await.unwrap();
    tcp.write_all(
        format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nProxy-Authorization: Basic {credentials}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let pem = postern_gateway::intercept::export_ca_pem(&gw.running().data_dir, &[]).unwrap();
    let tls = tls_http1_client(tcp, &pem, VENDOR_HOST).await;
    let request = format!("wss://{VENDOR_HOST}/v1/realtime?model=gpt")
        .into_client_request()
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("the handshake is accepted inside the tunnel");
    ws
}

#[tokio::test]
async fn a_websocket_session_through_the_forward_proxy_is_intercepted_and_relayed() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = session_through_the_proxy(&gw).await;
    assert_eq!(echoed(&mut ws, "hello").await, Message::text("echo: hello"));
    ws.send(Message::text(format!("key {ANOTHER_TOKEN}")))
        .await
        .unwrap();
    let after = until_closed(&mut ws, "the session").await;
    assert!(
        !after.iter().any(Message::is_text),
        "the vendor answered: {after:?}"
    );
    let (target, headers) = vendor.handshakes.lock().unwrap()[0].clone();
    assert_eq!(target, "/v1/realtime?model=gpt");
    assert_eq!(
        headers.get("authorization").unwrap(),
        &format!("Bearer {VENDOR_KEY}")
    );
    assert_eq!(
        vendor.messages.lock().unwrap().clone(),
        vec![Message::text("hello")]
    );
    let events = gw.wait_events(1).await;
    let event = events
        .iter()
        .find(|event| event["status"] == 101)
        .unwrap_or_else(|| panic!("no session event in {events:?}"));
    assert_eq!(event["operation"], "realtime", "{event}");
    assert_eq!(event["reason"], "caller_token_in_body", "{event}");
    gw.stop().await;
}

/// A session opened inside an intercepted tunnel holds the tunnel's place while it lasts,
/// though hyper hands its socket over and ends the tunnel's connection task: it counts among
/// the open tunnels and under the caller's `max_tunnels_per_caller` (before, it gave both back
/// at once, and its caller could open sessions past the cap, uncounted), until it ends.
#[tokio::test]
async fn a_session_in_a_tunnel_holds_the_tunnels_place_until_it_ends() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let vendor = WsVendor::start(None, echo).await;
    let (body, _keys) = ws_integration(&vendor, "");
    let body = format!("{body}\n[proxy]\nmax_tunnels_per_caller = 1\n");
    let gw = TestGateway::start(&body, Some(&vendor.ca_pem)).await;
    let tunnels_open = |text: String| {
        text.lines()
            .find_map(|line| line.strip_prefix("postern_tunnels_open "))
            .unwrap_or_else(|| panic!("no postern_tunnels_open in {text}"))
            .parse::<i64>()
            .unwrap()
    };
    let mut ws = session_through_the_proxy(&gw).await;
    assert_eq!(echoed(&mut ws, "hello").await, Message::text("echo: hello"));
    assert_eq!(tunnels_open(gw.metrics().await), 1);
    // The caller's one place is taken: a second tunnel is refused.
    let connect = |token: &str| {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
        format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nProxy-Authorization: Basic {credentials}\r\n\r\n")
    };
    let mut second = TcpStream::connect(gw.running().listen_addr).await.unwrap();
    second
        .write_all(connect(CHECKOUT_TOKEN).as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    second.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 429", "{}", String::from_utf8_lossy(&head));
    // Still open and relaying; once it ends, the place is free again.
    assert_eq!(echoed(&mut ws, "again").await, Message::text("echo: again"));
    ws.close(None).await.unwrap();
    until_closed(&mut ws, "the session").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tunnels_open(gw.metrics().await) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel is still counted open after its session ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = session_through_the_proxy(&gw).await;
    assert_eq!(echoed(&mut third, "hi").await, Message::text("echo: hi"));
    gw.stop().await;
}

/// A session opened inside an intercepted tunnel ends when a reload takes what the tunnel's
/// next request would be refused for: interception of its host turned off, its host given
/// elsewhere, or forward-proxy mode turned off (`websocket_revoked`).
#[tokio::test]
async fn a_session_in_a_tunnel_ends_when_the_tunnel_would_be_refused() {
    let hosts = format!("hosts = [\"{VENDOR_HOST}\"]");
    for (change, from, to) in [
        (
            "interception off",
            hosts.clone(),
            format!("{hosts}\nintercept = false"),
        ),
        (
            "host moved",
            hosts.clone(),
            "hosts = [\"elsewhere.postern.test\"]".into(),
        ),
        // (Appended: the config has no [proxy] table.)
        (
            "forward proxy off",
            String::new(),
            "\n[proxy]\nenabled = false\n".into(),
        ),
    ] {
        let vendor = WsVendor::start(None, echo).await;
        let (gw, _keys) = ws_gateway(&vendor, "").await;
        let mut ws = session_through_the_proxy(&gw).await;
        assert_eq!(
            echoed(&mut ws, "hello").await,
            Message::text("echo: hello"),
            "{change}"
        );
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let changed = changed_config(&text, &from, &to);
        let config = postern_config::parse(&changed, &gw.config_path).unwrap();
        gw.running().reload(config).unwrap();
        until_closed(&mut ws, change).await;
        let events = gw.wait_events(1).await;
        assert_eq!(
            events[0]["reason"], "websocket_revoked",
            "{change}: {events:#?}"
        );
        gw.stop().await;
    }
}

/// An open session is decided again at each reload, as an opaque tunnel is: one that still
/// allows it leaves it open; one that withdraws the grant closes it (`websocket_revoked`).
#[tokio::test]
async fn an_open_session_is_decided_again_at_each_reload() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = open_session(&gw).await;
    let open = |metrics: String| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("postern_websocket_sessions_open "))
            .map(str::to_owned)
    };
    assert_eq!(open(gw.metrics().await).as_deref(), Some("1"));
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let config = postern_config::parse(&text, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    assert_eq!(
        echoed(&mut ws, "still here").await,
        Message::text("echo: still here")
    );
    assert!(gw.events().await.is_empty(), "the session is still open");
    // The grant of the realtime operation withdrawn: the open session is closed.
    let narrowed = text.replace(
        r#"operations = ["realtime", "models"]"#,
        r#"operations = ["models"]"#,
    );
    assert_ne!(narrowed, text);
    let config = postern_config::parse(&narrowed, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    until_closed(&mut ws, "the session").await;
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "websocket_revoked", "{events:#?}");
    assert_eq!(events[0]["status"], 101);
    eventually("postern_websocket_sessions_open back to 0", || async {
        open(gw.metrics().await).as_deref() == Some("0")
    })
    .await;
    gw.stop().await;
}

/// Shutdown closes an open session, and the session's record is written (`gateway_shutdown`).
/// (That shutdown waits for it, `Shared::websocket_sessions`, this test does not tell: here the
/// session's record is written before shutdown's own end either way.)
#[tokio::test]
async fn shutdown_closes_an_open_session_and_records_it() {
    let vendor = WsVendor::start(None, echo).await;
    let (mut gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = open_session(&gw).await;
    ws.send(Message::text("hello")).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert_eq!(answer, Message::text("echo: hello"));
    let events = tokio::time::timeout(Duration::from_secs(10), gw.shut_down_for_events())
        .await
        .expect("shutdown does not wait for the session's own end");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "gateway_shutdown", "{events:#?}");
    assert!(events[0]["request_bytes"].as_u64().unwrap() > 0);
    until_closed(&mut ws, "the caller's connection").await;
}

/// A session is closed when the vendor credential it injects goes, or its vendor's address is
/// no longer allowed: what a new handshake would be refused for.
#[tokio::test]
async fn an_open_session_closes_when_its_credential_or_its_vendors_address_goes() {
    let vendor = WsVendor::start(None, echo).await;
    for change in ["credential", "guard"] {
        let (gw, keys) = ws_gateway(&vendor, "").await;
        let mut ws = open_session(&gw).await;
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let changed = match change {
            "credential" => {
                std::fs::remove_file(keys.path().join("openai-key")).unwrap();
                text.clone()
            }
            _ => text.replace(r#"allow_private_networks = ["127.0.0.1/32"]"#, ""),
        };
        let config = postern_config::parse(&changed, &gw.config_path).unwrap();
        let _ = gw.running().reload(config);
        until_closed(&mut ws, &format!("{change}: the session")).await;
        let events = gw.wait_events(1).await;
        assert_eq!(
            events[0]["reason"], "websocket_revoked",
            "{change}: {events:#?}"
        );
        gw.stop().await;
    }
}

/// A session whose caller's connection breaks (a reset, not a close) is recorded as the caller's
/// hang-up, not as a session that ended well.
#[tokio::test]
async fn a_session_whose_caller_resets_its_connection_is_recorded_so() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = open_session(&gw).await;
    ws.send(Message::text("hello")).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert_eq!(answer, Message::text("echo: hello"));
    // Closed with a zero linger: the socket sends a reset.
    socket2::SockRef::from(ws.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(ws);
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "caller_closed", "{events:#?}");
    assert_eq!(events[0]["status"], 101);
    gw.stop().await;
}

/// A reload that moves the session's operation to another path closes the session opened on
/// the old one: its path is matched again, not only the operation's id.
#[tokio::test]
async fn an_open_session_closes_when_its_operation_moves_to_another_path() {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = open_session(&gw).await;
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let moved = text.replace(
        r#"path = "/v1/realtime", websocket = true"#,
        r#"path = "/v2/realtime", websocket = true"#,
    );
    assert_ne!(moved, text);
    let config = postern_config::parse(&moved, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    until_closed(&mut ws, "the session").await;
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "websocket_revoked", "{events:#?}");
    gw.stop().await;
}

/// A vendor message that quotes the injected credential never reaches the caller: the session
/// ends before it (`secret_echoed`).
#[tokio::test]
async fn a_vendor_message_echoing_the_injected_credential_ends_the_session_before_the_caller_sees_it(
) {
    let vendor = WsVendor::start(None, echo).await;
    let (gw, _keys) = ws_gateway(&vendor, "").await;
    let mut ws = open_session(&gw).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: hello")
    );
    ws.send(Message::text("what key?")).await.unwrap();
    let after = until_closed(&mut ws, "the session").await;
    assert!(
        !after.iter().any(|m| m.to_string().contains(VENDOR_KEY)),
        "the caller saw the vendor key: {after:?}"
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "secret_echoed", "{events:#?}");
    gw.stop().await;
}
