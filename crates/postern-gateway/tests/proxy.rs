//! Forward-proxy mode end to end: real clients (reqwest) through `HTTPS_PROXY`-style proxies,
//! real TLS interception with Postern's own CA, real tunnels, and the host policy.

mod support;

use std::time::Duration;

use support::*;

const VENDOR_KEY: &str = "sk_live_vendor_secret_PROXY_4242";
/// The name clients use for the intercepted vendor; it never resolves — Postern terminates the
/// tunnel and re-originates to the integration's upstream.
const VENDOR_HOST: &str = "api.vendor.postern.test";

fn postern_ca(gw: &TestGateway) -> reqwest::Certificate {
    let pem = postern_gateway::intercept::export_ca_pem(&gw.running().data_dir, &[]).unwrap();
    reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()
}

/// A client whose proxy is Postern with `token` as the proxy password.
fn proxied(
    gw: &TestGateway,
    token: Option<&str>,
    roots: &[reqwest::Certificate],
) -> reqwest::Client {
    let mut proxy = reqwest::Proxy::all(&gw.base).unwrap();
    if let Some(token) = token {
        proxy = proxy.basic_auth("ignored-user", token);
    }
    let mut builder = reqwest::Client::builder()
        .proxy(proxy)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build().unwrap()
}

/// A client of `gw`'s forward proxy as `checkout` that trusts Postern's CA and speaks h2 inside
/// its tunnels: it keeps one tunnel open for all its calls.
fn h2_through_tunnels(gw: &TestGateway) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(&gw.base)
                .unwrap()
                .basic_auth("x", CHECKOUT_TOKEN),
        )
        .add_root_certificate(postern_ca(gw))
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// An intercepted integration for `vendor` under [`VENDOR_HOST`], plus `proxy` settings.
async fn intercepting_gateway(
    vendor: &TestVendor,
    integration_extra: &str,
    proxy: &str,
) -> TestGateway {
    intercepting_gateway_tuned(vendor, integration_extra, proxy, "").await
}

/// [`intercepting_gateway`], with `gateway_extra` in its `[gateway]` table.
async fn intercepting_gateway_tuned(
    vendor: &TestVendor,
    integration_extra: &str,
    proxy: &str,
    gateway_extra: &str,
) -> TestGateway {
    let staging = tempfile::tempdir().unwrap();
    let key_path = staging.path().join("vendor-key");
    std::fs::write(&key_path, VENDOR_KEY).unwrap();
    let integration = intercepted_integration(
        "vendor",
        vendor.addr.port(),
        VENDOR_HOST,
        &key_path,
        r#"
  { id = "create_charge", method = "POST", path = "/v1/charges" },
  { id = "get_charge",    method = "GET",  path = "/v1/charges/{id}" },
  { id = "refund_charge", method = "POST", path = "/v1/charges/{id}/refund" },
"#,
        integration_extra,
        r#""create_charge", "get_charge""#,
    );
    let body = format!("{integration}\n{proxy}\n");
    let gw = TestGateway::start_with_gateway(&body, vendor.ca_pem.as_deref(), gateway_extra).await;
    std::mem::forget(staging);
    gw
}

#[tokio::test]
async fn intercepted_calls_get_the_same_decisions_as_path_mode_and_the_vendor_sees_only_its_key() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[postern_ca(&gw)]);

    let granted = client
        .post(format!("https://{VENDOR_HOST}/v1/charges"))
        .header("authorization", "Bearer sk_dummy_the_sdk_sends_this")
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let seen = vendor.last();
    assert_eq!(seen.target, "/v1/charges");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {VENDOR_KEY}")
    );
    let everything = seen.everything();
    assert!(
        !everything.contains(CHECKOUT_TOKEN),
        "the caller token reached the vendor"
    );
    assert!(!everything
        .to_ascii_lowercase()
        .contains("proxy-authorization"));
    assert!(!everything.contains("sk_dummy_the_sdk_sends_this"));

    let not_granted = client
        .post(format!("https://{VENDOR_HOST}/v1/charges/ch_1/refund"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_granted.status(), 403);
    let body: serde_json::Value = not_granted.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_granted");

    let unknown = client
        .delete(format!("https://{VENDOR_HOST}/v1/customers/cus_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 403);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "operation_not_allowed");
    assert_eq!(vendor.seen().len(), 1, "refused calls reached the vendor");

    let events = gw.wait_events(3).await;
    let allowed = events.iter().find(|e| e["status"] == 200).unwrap();
    assert_eq!(allowed["mode"], "intercept");
    assert_eq!(allowed["host"], VENDOR_HOST);
    assert_eq!(allowed["integration"], "vendor");
    assert_eq!(allowed["caller"], "checkout");
    assert_eq!(allowed["operation"], "create_charge");
    assert_eq!(allowed["auth"], "proxy_token");
    // reqwest offers h2 by ALPN inside the tunnel.
    assert_eq!(allowed["protocol"], "HTTP/2");
    assert!(events
        .iter()
        .any(|e| e["reason"] == "not_granted" && e["mode"] == "intercept"));
    gw.stop().await;
}

#[tokio::test]
async fn http1_inside_the_tunnel_works_too() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(&gw.base)
                .unwrap()
                .basic_auth("x", CHECKOUT_TOKEN),
        )
        .add_root_certificate(postern_ca(&gw))
        .http1_only()
        .build()
        .unwrap();
    let response = client
        .get(format!("https://{VENDOR_HOST}/v1/charges/ch_42"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().target, "/v1/charges/ch_42");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["protocol"], "HTTP/1.1");
    assert_eq!(events[0]["operation"], "get_charge");
    gw.stop().await;
}

/// A call inside an intercepted tunnel that waits for its vendor longer than the tunnel's idle
/// limit (`[proxy] idle_timeout_ms`) is not cut, over HTTP/2 and HTTP/1.1 inside the tunnel;
/// once it is answered the limit applies again and closes the idle tunnel.
#[tokio::test]
async fn a_call_waiting_on_its_vendor_outlasts_the_tunnels_idle_limit() {
    // The tunnel's limit, 1 s, also covers the pauses of its TLS handshake on a busy machine.
    let vendor = TestVendor::answering_after(Duration::from_millis(2500)).await;
    let gw = intercepting_gateway(&vendor, "", "[proxy]\nidle_timeout_ms = 1000").await;
    for http1 in [false, true] {
        let mut builder = reqwest::Client::builder()
            .proxy(
                reqwest::Proxy::all(&gw.base)
                    .unwrap()
                    .basic_auth("x", CHECKOUT_TOKEN),
            )
            .add_root_certificate(postern_ca(&gw))
            .timeout(Duration::from_secs(10));
        if http1 {
            builder = builder.http1_only();
        }
        let client = builder.build().unwrap();
        let response = client
            .get(format!("https://{VENDOR_HOST}/v1/charges/ch_42"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "HTTP/1.1 inside the tunnel: {http1}"
        );
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            serde_json::json!({"ok": true})
        );
        eventually("the idle tunnel to close after its call", || async {
            open_gauges(&gw).await.1 == 0
        })
        .await;
    }
    let events = gw.wait_events(2).await;
    let calls: Vec<_> = events
        .iter()
        .filter(|e| e["operation"] == "get_charge")
        .collect();
    assert_eq!(calls.len(), 2, "{events:?}");
    assert!(calls
        .iter()
        .all(|e| e["status"] == 200 && e["reason"] == "granted"));
    gw.stop().await;
}

/// A request head hyper's parser refuses inside an intercepted tunnel is answered `400` and
/// recorded as a refused call of the tunnel's caller and integration (`mode` `intercept`), with
/// no method; its audit outcome carries no target hash, as there was no target.
#[tokio::test]
async fn a_malformed_request_inside_a_tunnel_is_recorded_for_the_tunnels_caller() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let mut tcp = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    tcp.write_all(
        format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nProxy-Authorization: Basic {credentials}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = answer_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    let pem = postern_gateway::intercept::export_ca_pem(&gw.running().data_dir, &[]).unwrap();
    let mut tls = tls_http1_client(tcp, &pem, VENDOR_HOST).await;
    tls.write_all(b"GET /v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\nx-evil: a\rb\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(vendor.seen().is_empty());
    let events = gw.wait_events(1).await;
    let event = &events[0];
    assert_eq!(event["reason"], "malformed_request", "{event}");
    assert_eq!(event["decision"], "deny");
    assert_eq!(event["mode"], "intercept");
    assert_eq!(event["caller"], "checkout");
    assert_eq!(event["integration"], "vendor");
    assert_eq!(event["host"], VENDOR_HOST);
    assert_eq!(event["method"], "");
    let outcome = audit_outcome(&gw, event["request_id"].as_str().unwrap()).await;
    assert_eq!(outcome.reason.as_deref(), Some("malformed_request"));
    assert_eq!(outcome.method, "");
    assert!(outcome.hmacs.is_empty(), "{:?}", outcome.hmacs);
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_proxy_credentials_get_407_and_nothing_is_forwarded() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let addr = gw.running().listen_addr;
    let answer = raw_request(
        addr,
        format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"postern\""),
        "{answer}"
    );
    assert!(answer.contains("proxy_auth_required"));

    use base64::Engine as _;
    let wrong = base64::engine::general_purpose::STANDARD.encode("x:pst_not_a_real_token");
    let answer = raw_request(
        addr,
        format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nProxy-Authorization: Basic {wrong}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");

    // A plain-HTTP proxy request without credentials: 407 as well.
    let answer = raw_request(
        addr,
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");

    // A real client with a wrong token fails the same way.
    let client = proxied(&gw, Some("pst_wrong"), &[postern_ca(&gw)]);
    assert!(client
        .get(format!("https://{VENDOR_HOST}/v1/charges/ch_1"))
        .send()
        .await
        .is_err());
    assert!(vendor.seen().is_empty());
    let events = gw.wait_events(3).await;
    assert!(events
        .iter()
        .all(|e| e["reason"] == "proxy_auth_required" && e["status"] == 407));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_refuses_the_interception_certificate_gets_a_clear_error_and_nothing_is_forwarded(
) {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    // No Postern CA in the client's roots.
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[]);
    let error = client
        .get(format!("https://{VENDOR_HOST}/v1/charges/ch_1"))
        .send()
        .await
        .unwrap_err();
    let chain = format!("{error:?}").to_ascii_lowercase();
    assert!(
        chain.contains("certificate") || chain.contains("unknownissuer"),
        "{chain}"
    );
    assert!(vendor.seen().is_empty());
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "interception_refused");
    assert_eq!(events[0]["status"], 495);
    assert_eq!(events[0]["decision"], "deny");
    assert_eq!(events[0]["host"], VENDOR_HOST);
    assert_eq!(events[0]["caller"], "checkout");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_silent_inside_an_intercepted_tunnel_is_recorded_as_a_handshake_timeout() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let mut client = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    client
        .write_all(format!("CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\nProxy-Authorization: Basic {credentials}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 64];
    let read = client.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..read])
    );
    // Then nothing: no ClientHello. The tunnel gives up after its 10 s.
    let mut events = Vec::new();
    for _ in 0..200 {
        events = gw.events().await;
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), 1, "the silent tunnel is recorded within 20 s");
    assert_eq!(
        events[0]["reason"], "interception_handshake_timeout",
        "{:?}",
        events[0]
    );
    assert_eq!(events[0]["status"], 495);
    assert_eq!(events[0]["host"], VENDOR_HOST);
    assert!(vendor.seen().is_empty());
    drop(client);
    gw.stop().await;
}

/// Raw CONNECT with the checkout token; returns the status line.
async fn connect_status(gw: &TestGateway, target: &str) -> String {
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let answer = raw_request(
        gw.running().listen_addr,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    answer.lines().next().unwrap_or_default().to_string() + "\n" + &answer
}

#[tokio::test]
async fn connect_refuses_internal_targets_and_closed_ports() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    // Open mode and ports 22/80 allowed, so only the SSRF guard stands between the caller and
    // the internal targets.
    let gw = intercepting_gateway(
        &vendor,
        "",
        "[proxy]\nmode = \"open\"\nallowed_ports = [22, 80, 443]",
    )
    .await;
    for target in [
        "127.0.0.1:22",
        "169.254.169.254:80",
        "localhost:443",
        "[::1]:443",
        "10.0.0.1:443",
        "[::ffff:127.0.0.1]:443",
    ] {
        let answer = connect_status(&gw, target).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{target}: {answer}");
        assert!(
            answer.contains("upstream_address_denied"),
            "{target}: {answer}"
        );
    }
    // A refused address is a denial in the events (alerts keyed on deny see SSRF probes).
    let events = gw.wait_events(6).await;
    assert!(events
        .iter()
        .all(|e| e["decision"] == "deny" && e["reason"] == "upstream_address_denied"));
    gw.stop().await;

    // Default ports: only 443.
    let gw = intercepting_gateway(&vendor, "", "[proxy]\nmode = \"open\"").await;
    for target in ["127.0.0.1:22", "169.254.169.254:80", "example.com:25"] {
        let answer = connect_status(&gw, target).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{target}: {answer}");
        assert!(answer.contains("port_not_allowed"), "{target}: {answer}");
    }
    gw.stop().await;
}

/// Discovery tells the gateway's refusals from hosts that failed on their own: a tunnel the
/// SSRF guard refused is `blocked`; one to a host that is down was let go, and is not.
#[tokio::test]
async fn discovery_counts_only_the_gateways_refusals_as_blocked() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    // Bound but not listening: connects are refused, and no other test can take the port
    // meanwhile (a listener dropped at once gave its port back to be reused).
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    let gw = intercepting_gateway(
        &vendor,
        "",
        &format!("[proxy]\nmode = \"open\"\nallowed_ports = [443, {closed_port}]\nallow_private_networks = [\"127.0.0.1/32\"]"),
    )
    .await;
    let down = connect_status(&gw, &format!("127.0.0.1:{closed_port}")).await;
    assert!(down.starts_with("HTTP/1.1 502"), "{down}");
    let refused = connect_status(&gw, "169.254.169.254:443").await;
    assert!(refused.contains("upstream_address_denied"), "{refused}");
    let discovered = discovered(&gw).await;
    let host = |name: &str| {
        discovered
            .iter()
            .find(|h| h["host"] == name)
            .unwrap_or_else(|| panic!("{name} in {discovered:#?}"))
            .clone()
    };
    assert_eq!(host("127.0.0.1")["calls"], 1);
    assert_eq!(host("127.0.0.1")["blocked_calls"], 0);
    assert_eq!(host("169.254.169.254")["blocked_calls"], 1);
    gw.stop().await;
}

/// A denied address stays denied however the caller spells it: as an IPv4-mapped IPv6 address
/// (which the guard lets through when `allow_private_networks` opens its IPv4 range), or, for
/// an IPv6 entry, uncompressed.
#[tokio::test]
async fn a_denied_address_is_denied_in_every_spelling() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let port = vendor.addr.port();
    let gw = intercepting_gateway(
        &vendor,
        "",
        &format!("[proxy]\nmode = \"open\"\nallowed_ports = [{port}]\nallow_private_networks = [\"127.0.0.1/32\", \"::1/128\"]\ndeny_hosts = [\"127.0.0.1\", \"[::1]\"]"),
    )
    .await;
    for target in [
        format!("127.0.0.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
        format!("[0:0:0:0:0:0:0:1]:{port}"),
    ] {
        let answer = connect_status(&gw, &target).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{target}: {answer}");
        assert!(answer.contains("host_denied"), "{target}: {answer}");
    }
    // With a zone id the address matches no host pattern, though a resolver dials it: refused
    // as a target.
    let answer = connect_status(&gw, &format!("[::1%25lo]:{port}")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_connect_target"), "{answer}");
    // A name longer than DNS allows (a label over 63 bytes, a name over 253) is no target: an
    // unauthenticated CONNECT cannot make its refusal's event line kilobytes long.
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = format!("{}example", "abcdefgh.".repeat(28));
    for host in [&long_label, &long_name] {
        let answer = connect_status(&gw, &format!("{host}:{port}")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{host}: {answer}");
        assert!(answer.contains("invalid_connect_target"), "{answer}");
    }
    // Four refused hosts, then the three targets refused before their host was recorded.
    let events = gw.wait_events(7).await;
    let invalid: Vec<_> = events
        .iter()
        .filter(|event| event["reason"] == "invalid_connect_target")
        .collect();
    assert_eq!(invalid.len(), 3, "{events:#?}");
    assert!(
        invalid.iter().all(|event| event["host"].is_null()),
        "{invalid:#?}"
    );
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// An absolute-form `https://` request to an unregistered host is sent over TLS, so discovery
/// records `https` for it (here the host's certificate is not one Postern trusts: 502).
#[tokio::test]
async fn an_absolute_form_https_request_is_discovered_as_https() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let port = other.addr.port();
    let gw = intercepting_gateway(&vendor, "", &open_proxy_to(port, "")).await;
    let mut stream = send_proxy_head(
        &gw,
        &format!("GET https://127.0.0.1:{port}/v1/items/42 HTTP/1.1"),
        port,
    )
    .await;
    let head = answer_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let discovered = discovered(&gw).await;
    let host = discovered
        .iter()
        .find(|h| h["host"] == "127.0.0.1" && h["port"] == port)
        .unwrap_or_else(|| panic!("{discovered:#?}"));
    assert_eq!(host["schemes"], serde_json::json!(["https"]));
    gw.stop().await;
}

/// A TLS vendor reached through an opaque tunnel (not intercepted): the client verifies the
/// vendor's own certificate, Postern sees bytes only.
async fn tunnel_client(gw: &TestGateway, token: &str, vendor: &TestVendor) -> reqwest::Client {
    let vendor_ca =
        reqwest::Certificate::from_pem(vendor.ca_pem.as_ref().unwrap().as_bytes()).unwrap();
    proxied(gw, Some(token), &[vendor_ca])
}

/// `postern_connections_open` and `postern_tunnels_open` from `/metrics`.
async fn open_gauges(gw: &TestGateway) -> (i64, i64) {
    let text = gw.metrics().await;
    let gauge = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse::<i64>()
            .unwrap()
    };
    (
        gauge("postern_connections_open"),
        gauge("postern_tunnels_open"),
    )
}

fn host_policy_proxy(vendor: &TestVendor, mode: &str, extra: &str) -> String {
    format!(
        "[proxy]\nmode = \"{mode}\"\nallowed_ports = [443, {port}]\nallow_private_networks = [\"127.0.0.1/32\", \"::1/128\"]\n{extra}",
        port = vendor.addr.port()
    )
}

#[tokio::test]
async fn enforce_mode_refuses_unlisted_hosts_and_records_them_in_discovery() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", &host_policy_proxy(&other, "enforce", "")).await;
    let client = tunnel_client(&gw, CHECKOUT_TOKEN, &other).await;
    let url = format!("https://localhost:{}/v1/things/123", other.addr.port());
    let error = client.get(&url).send().await.unwrap_err();
    assert!(
        format!("{error:?}").contains("403") || error.is_connect(),
        "{error:?}"
    );
    assert!(other.seen().is_empty());
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "host_not_allowed");
    assert_eq!(events[0]["mode"], "tunnel");
    assert_eq!(events[0]["host"], "localhost");

    let discovered = discovered(&gw).await;
    let host = discovered
        .iter()
        .find(|h| h["host"] == "localhost")
        .expect("localhost discovered");
    assert_eq!(host["blocked_calls"], 1);
    assert_eq!(host["port"], other.addr.port());
    // Refused before the tunnel opened: nothing showed how the host is spoken to.
    assert_eq!(host["schemes"], serde_json::json!([]));
    assert!(host["callers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "checkout"));
    gw.stop().await;
}

async fn discovered(gw: &TestGateway) -> Vec<serde_json::Value> {
    let answer: serde_json::Value = client()
        .get(format!("{}/v1/discovered", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hosts = answer["discovered"].as_array().cloned().unwrap_or_default();
    // Fewer than the default limit of 100 in these tests: the answer holds them all.
    assert_eq!(
        answer["total"].as_u64(),
        Some(hosts.len() as u64),
        "{answer}"
    );
    hosts
}

#[tokio::test]
async fn report_mode_passes_unlisted_hosts_through_a_tunnel_and_reports_them() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", &host_policy_proxy(&other, "report", "")).await;
    let client = tunnel_client(&gw, CHECKOUT_TOKEN, &other).await;
    let url = format!("https://localhost:{}/v1/things/123", other.addr.port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The tunnel is opaque: the vendor saw the client's own request, untouched.
    assert_eq!(other.last().target, "/v1/things/123");
    // The open tunnel holds its connection's slot on the listener, though hyper's task for
    // that connection ended when it handed the socket over.
    assert_eq!(open_gauges(&gw).await, (1, 1));
    // And it counts as its worker's connection (workers hand new ones to the least busy).
    assert_eq!(gw.worker_connections().await.iter().sum::<i64>(), 1);
    // Closing the client's connection closes the tunnel, which writes its event.
    drop(response);
    drop(client);
    let events = gw.wait_events(1).await;
    // The tunnel's task ends just after its event: both gauges fall back (bounded wait).
    eventually("both gauges to fall back to 0", || async {
        open_gauges(&gw).await == (0, 0) && gw.worker_connections().await.iter().sum::<i64>() == 0
    })
    .await;
    let tunnel = &events[0];
    assert_eq!(tunnel["mode"], "tunnel");
    assert_eq!(tunnel["reason"], "host_not_allowed_reported");
    assert_eq!(tunnel["decision"], "allow");
    assert!(tunnel["request_bytes"].as_u64().unwrap() > 100, "{tunnel}");
    assert!(tunnel["response_bytes"].as_u64().unwrap() > 100, "{tunnel}");
    assert!(tunnel["operation"].is_null());

    let discovered = discovered(&gw).await;
    let host = discovered
        .iter()
        .find(|h| h["host"] == "localhost")
        .unwrap();
    assert_eq!(host["calls"], 1);
    assert_eq!(host["blocked_calls"], 0);
    assert!(host["bytes_out"].as_u64().unwrap() > 100);
    // The caller's first bytes in the tunnel were a TLS handshake.
    assert_eq!(host["schemes"], serde_json::json!(["https"]));
    gw.stop().await;
}

#[tokio::test]
async fn allow_lists_wildcards_and_the_deny_list() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(
        &vendor,
        "",
        "[proxy]\nmode = \"enforce\"\nallow_hosts = [\"*.allowed.test\"]\ndeny_hosts = [\"*.evil.test\", \"pastebin.com\"]",
    )
    .await;
    // Allowed by wildcard: passes the host policy, then fails to resolve (no DNS here) — 502,
    // not 403.
    let answer = connect_status(&gw, "api.allowed.test:443").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("upstream_unresolvable"), "{answer}");
    // One level only.
    let answer = connect_status(&gw, "a.b.allowed.test:443").await;
    assert!(answer.contains("host_not_allowed"), "{answer}");
    let answer = connect_status(&gw, "x.evil.test:443").await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("host_denied"),
        "{answer}"
    );
    // The name that resolved nowhere is in the inventory as let go (the gateway did not refuse
    // it) with no byte either way: what the store reads as not reached, so that thousands of
    // made-up names are not kept over destinations traffic reached.
    let mut unresolved = None;
    for _ in 0..50 {
        unresolved = discovered(&gw)
            .await
            .into_iter()
            .find(|host| host["host"] == "api.allowed.test");
        if unresolved.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unresolved = unresolved.expect("the unresolvable name is discovered");
    assert_eq!(unresolved["calls"], 1, "{unresolved}");
    assert_eq!(unresolved["blocked_calls"], 0, "{unresolved}");
    assert_eq!(unresolved["bytes_out"], 0, "{unresolved}");
    assert_eq!(unresolved["bytes_in"], 0, "{unresolved}");
    gw.stop().await;

    // The deny list wins even in open mode.
    let gw = intercepting_gateway(
        &vendor,
        "",
        "[proxy]\nmode = \"open\"\ndeny_hosts = [\"pastebin.com\", \"93.184.216.34\"]",
    )
    .await;
    let answer = connect_status(&gw, "pastebin.com:443").await;
    assert!(answer.contains("host_denied"), "{answer}");
    // A denied address is denied in each form a resolver reads as that address.
    for form in [
        "93.184.216.34",
        "1572395042",
        "0x5db8d822",
        "93.184.216.042",
        "93.184.55330",
    ] {
        let answer = connect_status(&gw, &format!("{form}:443")).await;
        assert!(answer.contains("host_denied"), "{form}: {answer}");
    }
    gw.stop().await;
}

/// A `deny_hosts` address or network refuses the names that resolve into it (`localhost` is
/// 127.0.0.1 here), on CONNECT and on absolute-form requests alike, not only its literal; the
/// same gateway without the entry lets the name through.
#[tokio::test]
async fn a_denied_address_or_network_refuses_names_that_resolve_into_it() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let port = other.addr.port();
    let target = format!("localhost:{port}");
    let gw = intercepting_gateway(&vendor, "", &host_policy_proxy(&other, "open", "")).await;
    let answer = connect_status(&gw, &target).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gw.stop().await;
    for deny in [
        r#"deny_hosts = ["127.0.0.1", "::1"]"#,
        r#"deny_hosts = ["127.0.0.0/8", "::1/128"]"#,
    ] {
        let gw = intercepting_gateway(&vendor, "", &host_policy_proxy(&other, "open", deny)).await;
        let answer = connect_status(&gw, &target).await;
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("host_denied"),
            "{deny}: {answer}"
        );
        assert!(answer.contains("deny_hosts"), "{answer}");
        let mut stream = send_proxy_head(
            &gw,
            &format!("GET http://localhost:{port}/v1/items/42 HTTP/1.1"),
            port,
        )
        .await;
        let head = answer_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{deny}: {head}");
        let events = gw.events().await;
        assert!(
            events.iter().all(|e| e["reason"] == "host_denied"),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
        gw.stop().await;
    }
    assert!(other.seen().is_empty());
}

/// An integration `opaque` at `https://{host}:{port}`, reached through the proxy by that host
/// and not intercepted (an opaque tunnel), loopback allowed, every operation granted to
/// `checkout`; `extra` adds keys to the integration.
fn opaque_integration(host: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "opaque"
vendor = "Opaque"
owner = "team@example.com"
upstream = "https://{host}:{port}"
allow_private_networks = ["127.0.0.1/32", "::1/128"]
hosts = ["{host}"]
intercept = false
{extra}
operations = [ {{ id = "any", method = "GET", path = "/v1/things/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "opaque"
operations = ["*"]
"#
    )
}

#[tokio::test]
async fn a_registered_host_without_interception_is_a_tunnel_for_granted_callers_only() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let body = opaque_integration("localhost", vendor.addr.port(), "");
    let gw = TestGateway::start(&body, None).await;
    let url = format!("https://localhost:{}/v1/things/1", vendor.addr.port());
    let granted = tunnel_client(&gw, CHECKOUT_TOKEN, &vendor).await;
    assert_eq!(granted.get(&url).send().await.unwrap().status(), 200);
    drop(granted);
    let refused = tunnel_client(&gw, REPORTING_TOKEN, &vendor).await;
    assert!(refused.get(&url).send().await.is_err());
    assert_eq!(vendor.seen().len(), 1);
    let events = gw.wait_events(2).await;
    let tunnel = events.iter().find(|e| e["decision"] == "allow").unwrap();
    assert_eq!(tunnel["mode"], "tunnel");
    assert_eq!(tunnel["integration"], "opaque");
    assert_eq!(tunnel["reason"], "tunnel");
    let denied = events.iter().find(|e| e["decision"] == "deny").unwrap();
    assert_eq!(denied["reason"], "not_granted");
    assert_eq!(denied["caller"], "reporting");
    // Registered hosts are not "discovered".
    assert!(discovered(&gw).await.is_empty());
    gw.stop().await;
}

/// An opaque tunnel's requests are never seen, so each reload or vault change decides it again:
/// one that still allows it leaves it open; one that revokes its caller closes it, recorded
/// `tunnel_revoked`.
#[tokio::test]
async fn open_opaque_tunnels_are_decided_again_at_each_reload() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let body = opaque_integration("localhost", vendor.addr.port(), "");
    let gw = TestGateway::start(&body, None).await;
    let url = format!("https://localhost:{}/v1/things/1", vendor.addr.port());
    let client = tunnel_client(&gw, CHECKOUT_TOKEN, &vendor).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    // A reload that changes nothing the tunnel rests on: it stays open for the next call.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let config = postern_config::parse(&text, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(vendor.connections(), 1, "one tunnel carried both calls");
    assert!(gw.events().await.is_empty(), "the tunnel is still open");
    // The caller's token revoked: the open tunnel is closed.
    let revoked = text.replace(&sha256_hex(CHECKOUT_TOKEN), &"0".repeat(64));
    let config = postern_config::parse(&revoked, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "tunnel_revoked", "{events:#?}");
    assert_eq!(events[0]["mode"], "tunnel");
    assert_eq!(events[0]["caller"], "checkout");
    let after = client.get(&url).send().await;
    assert!(after.is_err(), "a new tunnel is refused: {after:?}");
    assert_eq!(vendor.seen().len(), 2);
    gw.stop().await;

    // An unregistered destination: a reload that puts its host on the deny list closes it, as
    // does one that denies the network it resolved into.
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    for deny in [r#"["localhost"]"#, r#"["127.0.0.0/8", "::1"]"#] {
        let gw = intercepting_gateway(&vendor, "", &host_policy_proxy(&other, "report", "")).await;
        let client = tunnel_client(&gw, CHECKOUT_TOKEN, &other).await;
        let url = format!("https://localhost:{}/v1/things/1", other.addr.port());
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let denied = text.replace(
            "mode = \"report\"",
            &format!("mode = \"report\"\ndeny_hosts = {deny}"),
        );
        assert_ne!(denied, text);
        let config = postern_config::parse(&denied, &gw.config_path).unwrap();
        gw.running().reload(config).unwrap();
        let events = gw.wait_events(1).await;
        assert_eq!(events[0]["reason"], "tunnel_revoked", "{deny}: {events:#?}");
        gw.stop().await;
    }

    // A registered destination: a reload that takes the network it dialled out of the
    // integration's `allow_private_networks` closes it (the call stays granted).
    let gw = TestGateway::start(
        &opaque_integration("localhost", vendor.addr.port(), ""),
        None,
    )
    .await;
    let client = tunnel_client(&gw, CHECKOUT_TOKEN, &vendor).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let narrowed = text.replace(
        r#"allow_private_networks = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow_private_networks = ["::1/128"]"#,
    );
    assert_ne!(narrowed, text);
    let config = postern_config::parse(&narrowed, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "tunnel_revoked", "{events:#?}");
    assert_eq!(events[0]["mode"], "tunnel");
    gw.stop().await;
}

/// Cedar rules read the hour, so an open opaque tunnel is decided again at each new hour: one
/// opened in a permitted hour stays open while the hour permits it and closes, recorded
/// `tunnel_revoked`, in the first hour a rule forbids.
#[tokio::test]
async fn open_opaque_tunnels_are_decided_again_each_hour() {
    use std::time::SystemTime;
    let hour =
        |at: SystemTime| at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 3600 % 24;
    let now = SystemTime::now();
    let closed_hour = (hour(now) + 2) % 24;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("hours.cedar");
    std::fs::write(
        &policies,
        format!("@id(\"closed-hour\")\nforbid(principal, action, resource) when {{ context.hour == {closed_hour} }};\n"),
    )
    .unwrap();
    let body = opaque_integration("localhost", vendor.addr.port(), "");
    let gateway_extra = format!("policies = \"{}\"", policies.display());
    let gw = TestGateway::start_with_gateway(&body, None, &gateway_extra).await;
    let url = format!("https://localhost:{}/v1/things/1", vendor.addr.port());
    let client = tunnel_client(&gw, CHECKOUT_TOKEN, &vendor).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    // The next hour is not forbidden: the tunnel stays open for the next call.
    let shared = gw.running().shared().clone();
    shared.decide_tunnels_again(now + Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(vendor.connections(), 1, "one tunnel carried both calls");
    assert!(gw.events().await.is_empty(), "the tunnel is still open");
    // The hour after is: the tunnel closes.
    shared.decide_tunnels_again(now + Duration::from_secs(2 * 3600));
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "tunnel_revoked", "{events:#?}");
    assert_eq!(events[0]["policy"], "closed-hour");
    assert_eq!(events[0]["caller"], "checkout");
    gw.stop().await;
}

/// An opaque tunnel's requests are not seen, sizes included: where a Cedar rule bounds
/// `request_bytes` for the integration, the tunnel is refused (it could carry any size), and
/// says to intercept; without such a rule the same tunnel opens.
#[tokio::test]
async fn an_opaque_tunnel_is_refused_where_a_size_rule_applies() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("size.cedar");
    let gateway_extra = format!("policies = \"{}\"", policies.display());
    let url = format!("https://localhost:{}/v1/things/1", vendor.addr.port());
    // The gateway with `body` and the Cedar `rule`: the checkout caller's tunnel is refused,
    // nothing reaches the vendor, and the refusal's event is returned.
    let refused = |body: String, rule: &'static str| {
        let (policies, gateway_extra, url, vendor) = (&policies, &gateway_extra, &url, &vendor);
        async move {
            std::fs::write(policies, rule).unwrap();
            let gw = TestGateway::start_with_gateway(&body, None, gateway_extra).await;
            let client = tunnel_client(&gw, CHECKOUT_TOKEN, vendor).await;
            assert!(client.get(url).send().await.is_err());
            let event = gw.wait_events(1).await.remove(0);
            assert_eq!(event["decision"], "deny", "{event}");
            assert_eq!(event["reason"], "policy_forbid", "{event}");
            assert!(vendor.seen().is_empty());
            gw.stop().await;
            event
        }
    };
    let body = opaque_integration("localhost", vendor.addr.port(), "");
    refused(
        body.clone(),
        "forbid(principal, action, resource in Postern::Integration::\"opaque\") when { context.request_bytes > 1000 };\n",
    )
    .await;

    // A rule on one operation of two bounds the tunnel too: it would carry that operation's
    // uploads unseen.
    let two_operations = body.replace(
        r#"operations = [ { id = "any", method = "GET", path = "/v1/things/{id}" } ]"#,
        r#"operations = [ { id = "any", method = "GET", path = "/v1/things/{id}" }, { id = "upload", method = "POST", path = "/v1/uploads" } ]"#,
    );
    assert_ne!(two_operations, body);
    let event = refused(
        two_operations.clone(),
        "@id(\"small-uploads\")\nforbid(principal, action, resource == Postern::Operation::\"opaque/upload\") when { context.request_bytes > 1000 };\n",
    )
    .await;
    assert_eq!(event["policy"], "small-uploads", "{event}");

    let gw = TestGateway::start(&two_operations, None).await;
    let unbounded = tunnel_client(&gw, CHECKOUT_TOKEN, &vendor).await;
    assert_eq!(unbounded.get(&url).send().await.unwrap().status(), 200);
    gw.stop().await;
}

/// An opaque tunnel counts under its integration's limits as one call: its opening takes a
/// token of the caller's rate limit, and it holds a place under the concurrency limits until
/// it closes (its requests inside are not seen, so not counted one by one).
#[tokio::test]
async fn an_opaque_tunnel_counts_under_the_integrations_limits() {
    use base64::Engine as _;
    use tokio::io::AsyncWriteExt as _;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let target = format!("localhost:{}", vendor.addr.port());
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    // A CONNECT held open: the connection and the head of Postern's answer.
    let open = |gw: std::net::SocketAddr| {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\n");
        async move {
            let mut tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut answer = answer_head(&mut tcp).await;
            // A refusal's JSON body (its length declared), for its code.
            let length = answer
                .to_ascii_lowercase()
                .lines()
                .find_map(|line| line.strip_prefix("content-length:")?.trim().parse().ok())
                .unwrap_or(0);
            if !answer.starts_with("HTTP/1.1 200") {
                use tokio::io::AsyncReadExt as _;
                let mut body = vec![0; length];
                tcp.read_exact(&mut body).await.unwrap();
                answer.push_str(&String::from_utf8_lossy(&body));
            }
            (tcp, answer)
        }
    };

    let body = opaque_integration(
        "localhost",
        vendor.addr.port(),
        "max_concurrent_calls_per_caller = 1",
    );
    let gw = TestGateway::start(&body, None).await;
    let listen = gw.running().listen_addr;
    let (first, head) = open(listen).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, head) = open(listen).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("too_many_concurrent_calls"), "{head}");
    // The place is given back when the first tunnel closes.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let (tcp, head) = open(listen).await;
        if head.starts_with("HTTP/1.1 200") {
            reopened = Some(tcp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "the closed tunnel's place was not given back"
    );
    drop(reopened);
    gw.stop().await;

    let body = opaque_integration(
        "localhost",
        vendor.addr.port(),
        "rate_limit = { requests_per_second = 1, burst = 1 }",
    );
    let gw = TestGateway::start(&body, None).await;
    let listen = gw.running().listen_addr;
    let (_first, head) = open(listen).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The next openings within the second are refused (a few tries: one second is long).
    let mut limited = None;
    for _ in 0..5 {
        let (_, head) = open(listen).await;
        if head.starts_with("HTTP/1.1 429") {
            limited = Some(head);
            break;
        }
    }
    let head = limited.expect("tunnels opened past the rate limit");
    assert!(head.contains("rate_limited"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    assert!(
        vendor.seen().is_empty(),
        "no request was sent in the tunnels"
    );
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_proxy_requests_to_unregistered_hosts_are_forwarded_and_their_endpoints_discovered(
) {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    // The host forges a receipt: the caller must get Postern's own (its intent's index).
    let plain = TestVendor::plain(TestVendor::forged_receipt_handler()).await;
    let gw = intercepting_gateway(&vendor, "", &open_proxy_to(plain.addr.port(), "")).await;
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[]);
    for id in ["1001", "1002", "1003"] {
        let response = client
            .get(format!(
                "http://127.0.0.1:{}/v2/orders/{id}",
                plain.addr.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "{\"ok\":true}");
    }
    let seen = plain.last();
    assert_eq!(seen.target, "/v2/orders/1003");
    assert!(!seen.everything().contains(CHECKOUT_TOKEN));
    assert_eq!(
        seen.header("host").unwrap(),
        format!("127.0.0.1:{}", plain.addr.port())
    );

    // A Host header naming another site is replaced by the host the policy checked.
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let answer = raw_request(
        gw.running().listen_addr,
        format!(
            "GET http://127.0.0.1:{port}/v2/orders/1004 HTTP/1.1\r\nHost: internal.admin.example\r\nProxy-Authorization: Basic {credentials}\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n",
            port = plain.addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        plain.last().header("host").unwrap(),
        format!("127.0.0.1:{}", plain.addr.port())
    );
    assert!(!plain.last().everything().contains("internal.admin.example"));
    // A client that sends its Basic credential (the token as password) to every host, as
    // `curl -u` does, does not hand the token to this one.
    assert!(plain.last().header("authorization").is_none());
    assert!(!plain.last().everything().contains(&credentials));
    // Its audit entries (intent and outcome) carry the keyed hash of the absolute target.
    let key = std::fs::read(gw.running().data_dir.join("audit-hmac.key")).unwrap();
    let target = format!("http://127.0.0.1:{}/v2/orders/1004", plain.addr.port());
    let expected = postern_tlog::keyed_hash(&key, "target", target.as_bytes());
    let (mut kinds, mut intent) = (Vec::new(), None);
    for index in 0..100u64 {
        let response = support::client()
            .get(format!("{}/v1/audit/entries/{index}", gw.admin))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            break;
        }
        let entry: serde_json::Value = response.json().await.unwrap();
        if entry["record"]["hmacs"]["target"] == expected {
            let kind = entry["record"]["kind"].as_str().unwrap().to_string();
            if kind == "intent" {
                intent = Some(index);
            }
            kinds.push(kind);
        }
    }
    assert!(kinds.iter().any(|k| k == "intent"), "{kinds:?}");
    let receipt = answer
        .lines()
        .find_map(|line| line.strip_prefix("postern-audit-index: "))
        .map(|value| value.trim().parse::<u64>().unwrap());
    assert_eq!(receipt, intent, "{answer}");
    let events = gw.wait_events(4).await;
    assert!(events
        .iter()
        .all(|e| e["mode"] == "proxy" && e["reason"] == "open_mode"));
    // The signed log says why the host was let through, as the event does.
    for event in &events {
        let outcome = audit_outcome(&gw, event["request_id"].as_str().unwrap()).await;
        assert_eq!(outcome.reason.as_deref(), Some("open_mode"));
        assert_eq!(outcome.method, "GET");
    }
    let discovered = discovered(&gw).await;
    let host = discovered
        .iter()
        .find(|h| h["host"] == "127.0.0.1")
        .unwrap();
    assert_eq!(host["calls"], 4);
    assert_eq!(host["schemes"], serde_json::json!(["http"]));
    let endpoints = host["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["template"], "/v2/orders/{id}");
    assert_eq!(endpoints[0]["method"], "GET");
    gw.stop().await;
}

/// An absolute-form request is dialled, resolved and named by the host the policy checked, as
/// a CONNECT is: `[::ffff:127.0.0.1]` and `2130706433` are `127.0.0.1` (before, the spelling
/// as sent was dialled, and the guard refused the mapped form as `ipv4_mapped`).
#[tokio::test]
async fn an_absolute_form_target_is_dialled_as_the_policy_read_it() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let port = plain.addr.port();
    let gw = intercepting_gateway(&vendor, "", &open_proxy_to(port, "")).await;
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    for spelled in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "2130706433"] {
        let answer = raw_request(
            gw.running().listen_addr,
            format!(
                "GET http://{spelled}:{port}/v2/orders/1 HTTP/1.1\r\nHost: {spelled}:{port}\r\nProxy-Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{spelled}: {answer}");
        assert_eq!(
            plain.last().header("host").unwrap(),
            format!("127.0.0.1:{port}"),
            "{spelled}"
        );
    }
    gw.stop().await;
}

/// The plain-HTTP path keeps each caller's connections to a host apart: what a caller sends
/// there is its own, credentials included, and a host may tie them to the connection (NTLM or
/// Negotiate authentication), which would let the next caller on it act as the first. One
/// caller's calls share its connections; another caller's get their own.
#[tokio::test]
async fn plain_http_proxy_connections_are_kept_to_their_caller() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    // One worker: every call meets the same pool.
    let gw = intercepting_gateway_tuned(
        &vendor,
        "",
        &open_proxy_to(plain.addr.port(), ""),
        "workers = 1",
    )
    .await;
    let url = format!("http://127.0.0.1:{}/v2/orders/1", plain.addr.port());
    for (token, connections) in [
        (CHECKOUT_TOKEN, 1),
        (CHECKOUT_TOKEN, 1),
        (REPORTING_TOKEN, 2),
        (CHECKOUT_TOKEN, 2),
        (REPORTING_TOKEN, 2),
    ] {
        // A new client each time: a new connection to Postern, whose pool outlives it.
        let response = proxied(&gw, Some(token), &[])
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        assert_eq!(plain.connections(), connections);
    }
    assert_eq!(plain.seen().len(), 5);
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_to_a_registered_host_runs_the_pipeline_and_is_re_originated_over_tls() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[]);
    let response = client
        .get(format!("http://{VENDOR_HOST}/v1/charges/ch_9"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        format!("Bearer {VENDOR_KEY}")
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["mode"], "proxy");
    assert_eq!(events[0]["operation"], "get_charge");
    // The caller token in the URL's user info is refused as in its path or query: nothing
    // more reaches the vendor.
    let mut stream = send_proxy_head(
        &gw,
        &format!("GET http://user:{CHECKOUT_TOKEN}@{VENDOR_HOST}/v1/charges/ch_9 HTTP/1.1"),
        80,
    )
    .await;
    let head = answer_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(vendor.seen().len(), 1);
    gw.stop().await;
}

/// `HTTPS_PROXY=https://…`: the TLS listener is the proxy (TLS to Postern, then CONNECT inside),
/// and a client certificate with a registered SPIFFE ID identifies the caller without a token.
/// Driven by curl (Debian's), which speaks HTTPS proxies; skipped when curl is missing.
#[tokio::test]
async fn https_proxy_listener_with_a_client_certificate_identity() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("POSTERN_REQUIRE_SDK_TESTS").is_none(),
            "curl is required"
        );
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = staging.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let write_bytes = |bytes: &[u8]| {
        let path = staging.path().join("body.gz");
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let listener_cert = write("listener.pem", &pki.server_cert_pem);
    let listener_key = write("listener-key.pem", &pki.server_key_pem);
    let listener_ca = write("listener-ca.pem", &pki.ca_pem);
    let (client_cert, client_key) = pki.client_cert("spiffe://example.org/billing");
    let client_cert = write("client.pem", &client_cert);
    let client_key = write("client-key.pem", &client_key);
    let key_path = write("vendor-key", VENDOR_KEY);
    let body = format!(
        r#"
[[callers]]
name = "billing"
spiffe_id = "spiffe://example.org/billing"

[[integrations]]
name = "vendor"
vendor = "Vendor"
owner = "team@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
hosts = ["{VENDOR_HOST}"]
credential = {{ kind = "bearer", from_file = "{key_path}" }}
operations = [ {{ id = "get_charge", method = "GET", path = "/v1/charges/{{id}}" }} ]

[[grants]]
caller = "billing"
integration = "vendor"
operations = ["get_charge"]

[proxy]
mode = "open"
allowed_ports = [443, {plain_port}]
allow_private_networks = ["127.0.0.1/32"]
"#,
        port = vendor.addr.port(),
        plain_port = plain.addr.port()
    );
    let gw = TestGateway::start_with_gateway(
        &body,
        vendor.ca_pem.as_deref(),
        &format!("tls_cert = \"{listener_cert}\"\ntls_key = \"{listener_key}\"\nclient_ca = \"{listener_ca}\""),
    )
    .await;
    let postern_ca = write(
        "postern-ca.pem",
        &postern_gateway::intercept::export_ca_pem(&gw.running().data_dir, &[]).unwrap(),
    );
    let proxy = format!("https://localhost:{}", gw.running().listen_addr.port());
    let curl = move |args: Vec<String>| {
        let (proxy, listener_ca) = (proxy.clone(), listener_ca.clone());
        let (client_cert, client_key) = (client_cert.clone(), client_key.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .env_clear()
                .args(["-sS", "--max-time", "20", "--proxy", &proxy])
                .args(["--proxy-cacert", &listener_ca])
                .args(["--proxy-cert", &client_cert, "--proxy-key", &client_key])
                .args(["-w", "\n%{http_code}"])
                .args(args)
                .output()
                .unwrap()
        })
    };
    let output = curl(vec![
        "--cacert".into(),
        postern_ca,
        format!("https://{VENDOR_HOST}/v1/charges/ch_7"),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.ends_with("\n200"), "{stdout}");
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        format!("Bearer {VENDOR_KEY}")
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["caller"], "billing");
    assert_eq!(events[0]["auth"], "mtls");
    assert_eq!(events[0]["mode"], "intercept");
    // The caller has no token of its own, yet its compressed body to an unregistered host is
    // read decoded for what looks like any caller token `postern` made: refused, none of it
    // sent.
    let gz = gzip_form_with_another_callers_token();
    assert!(!String::from_utf8_lossy(&gz).contains("pst_"));
    let compressed = write_bytes(&gz);
    let output = curl(vec![
        "-H".into(),
        "content-encoding: gzip".into(),
        "--data-binary".into(),
        format!("@{compressed}"),
        format!("http://127.0.0.1:{}/callback", plain.addr.port()),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(stdout.ends_with("\n400"), "{stdout}");
    assert!(stdout.contains("caller_token_in_body"), "{stdout}");
    assert!(plain.seen().is_empty(), "nothing reached the host");
    gw.stop().await;
}

/// A gzip-compressed form holding another caller's token (a new one `postern` could have made),
/// padded so that gzip codes the token rather than storing it as it stands.
fn gzip_form_with_another_callers_token() -> Vec<u8> {
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    gzip(format!("note={other}&pad={}", "a".repeat(2000)).as_bytes())
}

#[tokio::test]
async fn the_caller_token_in_a_url_to_an_unregistered_host_is_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", &open_proxy_to(plain.addr.port(), "")).await;
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[]);
    let response = client
        .get(format!(
            "http://127.0.0.1:{}/callback?key={CHECKOUT_TOKEN}",
            plain.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "caller_token_in_url");
    // Percent-encoded too.
    let encoded = percent_encoded(CHECKOUT_TOKEN).to_ascii_lowercase();
    let response = client
        .get(format!(
            "http://127.0.0.1:{}/callback?key={encoded}",
            plain.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(plain.seen().is_empty());
    // What looks like any other caller token `postern` made, in a compressed body: read
    // decoded, refused, none of it sent.
    let response = client
        .post(format!("http://127.0.0.1:{}/callback", plain.addr.port()))
        .header("content-encoding", "gzip")
        .body(gzip_form_with_another_callers_token())
        .send()
        .await
        .unwrap();
    assert_refused(response, 400, "caller_token_in_body").await;
    assert!(plain.seen().is_empty(), "nothing reached the host");
    let seen = plain.seen().len();
    // In the URL's user info too (written by hand: a client would move it to a header).
    let port = plain.addr.port();
    let mut stream = send_proxy_head(
        &gw,
        &format!("GET http://user:{CHECKOUT_TOKEN}@127.0.0.1:{port}/callback HTTP/1.1"),
        port,
    )
    .await;
    let head = answer_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // A scheme the proxy does not speak is refused, not sent on as http.
    for scheme in ["ftp", "gopher", "file"] {
        let mut stream = send_proxy_head(
            &gw,
            &format!("GET {scheme}://127.0.0.1:{port}/callback HTTP/1.1"),
            port,
        )
        .await;
        let head = answer_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{scheme}: {head}");
    }
    assert_eq!(plain.seen().len(), seen);
    gw.stop().await;
}

#[tokio::test]
async fn an_exact_host_wins_over_another_integrations_wildcard_and_the_host_is_canonical() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(
        &vendor,
        "",
        &format!(
            r#"
[[integrations]]
name = "wide"
vendor = "Wide"
owner = "team@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
hosts = ["*.vendor.postern.test"]
operations = [ {{ id = "anything", method = "GET", path = "/v1/charges/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "wide"
operations = ["*"]
"#,
            port = vendor.addr.port()
        ),
    )
    .await;
    let client = proxied(&gw, Some(CHECKOUT_TOKEN), &[postern_ca(&gw)]);
    // The wildcard integration is declared after the exact one here; order must not matter,
    // and a trailing dot or capitals name the same host.
    for url in [
        format!("https://{VENDOR_HOST}/v1/charges/ch_1"),
        format!(
            "https://{}./v1/charges/ch_2",
            VENDOR_HOST.to_ascii_uppercase()
        ),
    ] {
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    assert_eq!(
        client
            .get("https://other.vendor.postern.test/v1/charges/ch_3")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let events = gw.wait_events(3).await;
    let count = |name: &str| events.iter().filter(|e| e["integration"] == name).count();
    assert_eq!((count("vendor"), count("wide")), (2, 1), "{events:?}");
    assert!(events
        .iter()
        .filter(|e| e["integration"] == "vendor")
        .all(|e| e["host"] == VENDOR_HOST));
    gw.stop().await;
}

#[tokio::test]
async fn an_open_tunnel_stops_working_when_its_caller_is_revoked() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let client = h2_through_tunnels(&gw);
    let url = format!("https://{VENDOR_HOST}/v1/charges/ch_1");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    // The config no longer knows checkout's token: the tunnel already open refuses.
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace(&sha256_hex(CHECKOUT_TOKEN), &"0".repeat(64));
    let config = postern_config::parse(&text, &gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(vendor.seen().len(), 1);
    gw.stop().await;
}

/// A reload that takes the host from the integration an intercepted tunnel was opened for, or
/// turns its interception off, closes what the old config opened: the open connection's next
/// request is `403 host_changed` and reaches no vendor (before, it went on being intercepted
/// and sent with the old integration's credential for as long as the connection lived).
#[tokio::test]
async fn an_open_intercepted_tunnel_stops_when_its_host_or_interception_changes() {
    for (change, from, to) in [
        (
            "host moved",
            format!("hosts = [\"{VENDOR_HOST}\"]"),
            "hosts = [\"elsewhere.postern.test\"]".to_string(),
        ),
        (
            "interception off",
            format!("hosts = [\"{VENDOR_HOST}\"]"),
            format!("hosts = [\"{VENDOR_HOST}\"]\nintercept = false"),
        ),
        // (Appended: the config has no [proxy] table.)
        (
            "forward proxy off",
            String::new(),
            "\n[proxy]\nenabled = false\n".to_string(),
        ),
    ] {
        let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
        let gw = intercepting_gateway(&vendor, "", "").await;
        let client = h2_through_tunnels(&gw);
        let url = format!("https://{VENDOR_HOST}/v1/charges/ch_1");
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            200,
            "{change}"
        );
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let changed = changed_config(&text, &from, &to);
        let config = postern_config::parse(&changed, &gw.config_path).unwrap();
        gw.running().reload(config).unwrap();
        let response = client.get(&url).send().await.unwrap();
        let (status, code) = match from.is_empty() {
            true => (405, "proxy_disabled"),
            false => (403, "host_changed"),
        };
        assert_eq!(response.status(), status, "{change}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{change}: {body}");
        // The tunnel closes after that answer (h2: a GOAWAY, which a request the client sends
        // at once may cross): soon a request opens another tunnel, which the new config decides
        // (refused, or opaque and so not trusted by this client), instead of meeting the
        // refusal again on a kept connection.
        let mut closed = false;
        for _ in 0..40 {
            match client.get(&url).send().await {
                Ok(response) => {
                    let body = response.text().await.unwrap_or_default();
                    if !body.contains(code) {
                        closed = true;
                        break;
                    }
                }
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(closed, "{change}: the tunnel stayed open");
        assert_eq!(vendor.seen().len(), 1, "{change}");
        gw.stop().await;
    }
}

/// An open forward proxy that may reach 127.0.0.1:`port`, with `extra` proxy settings.
fn open_proxy_to(port: u16, extra: &str) -> String {
    format!(
        "[proxy]\nmode = \"open\"\nallowed_ports = [{port}]\nallow_private_networks = [\"127.0.0.1/32\"]\n{extra}"
    )
}

/// Opens a connection to the gateway and sends a request head for 127.0.0.1:`port` as
/// `checkout` (proxy credentials), and nothing after it; returns the connection.
async fn send_proxy_head(gw: &TestGateway, request_line: &str, port: u16) -> tokio::net::TcpStream {
    use base64::Engine as _;
    use tokio::io::AsyncWriteExt;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    let head = format!(
        "{request_line}\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Basic {credentials}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The head of the answer to a request sent with [`send_proxy_head`] (read until its blank
/// line, bounded: 5 s).
async fn answer_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(read, 1, "closed before the answer's head ended: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// One caller holds at most `[proxy] max_tunnels_per_caller` tunnels: the next CONNECT gets
/// `429 too_many_tunnels` (and is recorded), and a tunnel that closes gives its place back.
#[tokio::test]
async fn a_caller_holds_at_most_max_tunnels_per_caller() {
    let destination = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = destination.local_addr().unwrap().port();
    // Each connection is held until its client's side ends, then closed.
    let _accepting = tokio::spawn(async move {
        while let Ok((mut stream, _)) = destination.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    let gw = TestGateway::start(&open_proxy_to(port, "max_tunnels_per_caller = 2"), None).await;
    let connect = format!("CONNECT 127.0.0.1:{port} HTTP/1.1");
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut tunnel = send_proxy_head(&gw, &connect, port).await;
        let head = answer_head(&mut tunnel).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tunnels.push(tunnel);
    }
    let mut third = send_proxy_head(&gw, &connect, port).await;
    let head = answer_head(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    drop(third);
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "too_many_tunnels", "{events:?}");
    assert_eq!(events[0]["caller"], "checkout");
    // A plain-HTTP call to an unregistered host holds a connection to it as a tunnel does,
    // and takes a place among the same (before, such calls were not counted: one caller's
    // slow answers could take every connection slot of the listener).
    let mut plain = send_proxy_head(
        &gw,
        &format!("GET http://127.0.0.1:{port}/x HTTP/1.1"),
        port,
    )
    .await;
    let head = answer_head(&mut plain).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    drop(plain);

    // One tunnel closes: its place is given back once Postern sees it end.
    drop(tunnels.pop());
    let mut opened = false;
    for _ in 0..50 {
        let mut again = send_proxy_head(&gw, &connect, port).await;
        if answer_head(&mut again).await.starts_with("HTTP/1.1 200") {
            opened = true;
            tunnels.push(again);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "the closed tunnel's place was not given back");
    gw.stop().await;
}

/// A plain HTTP/2 CONNECT (RFC 9113 §8.5, here over h2c) opens a tunnel as HTTP/1.1's does:
/// bytes go through both ways, and it counts against `max_tunnels_per_caller`.
#[tokio::test]
async fn an_http2_connect_opens_a_tunnel_counted_as_the_caller_s() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let destination = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = destination.local_addr().unwrap().port();
    // Echoes what it reads until its client's side ends.
    let _accepting = tokio::spawn(async move {
        while let Ok((mut stream, _)) = destination.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = TestGateway::start(&open_proxy_to(port, "max_tunnels_per_caller = 1"), None).await;
    let mut sender = h2c_sender(gw.running().listen_addr).await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let connect = || {
        http::Request::connect(format!("127.0.0.1:{port}"))
            .header("proxy-authorization", format!("Basic {credentials}"))
            .body(http_body_util::Empty::new())
            .unwrap()
    };
    let response = sender.send_request(connect()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    tunnel.write_all(b"through h2").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut echoed))
        .await
        .expect("the echo within 5 s")
        .unwrap();
    assert_eq!(&echoed, b"through h2");
    // A second stream's tunnel is the caller's second: refused.
    let second = sender.send_request(connect()).await.unwrap();
    assert_eq!(second.status(), 429);
    drop(tunnel);
    gw.stop().await;
}

/// A CONNECT refused over h2 before the connection identified any caller (no credentials)
/// ends the connection with a GOAWAY, as any such refusal does: a peer without a caller token
/// cannot hold a listener slot by sending a refused CONNECT every idle period.
#[tokio::test]
async fn an_unauthenticated_http2_connect_closes_its_connection() {
    let gw = TestGateway::start(&open_proxy_to(9, ""), None).await;
    let io = hyper_util::rt::TokioIo::new(
        tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap(),
    );
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let ended = tokio::spawn(connection);
    let connect = http::Request::connect("127.0.0.1:9")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(connect).await.unwrap();
    assert_eq!(response.status(), 407);
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the h2 connection ended after its 407")
        .unwrap()
        .unwrap();
    gw.stop().await;
}

/// Waits for the one event of a call whose caller hung up (`499 caller_closed`, by caller
/// `checkout` to 127.0.0.1, with `decision` and `mode`) and returns its audit outcome, which
/// says the same.
async fn hang_up_recorded(
    gw: &TestGateway,
    decision: &str,
    mode: &str,
) -> postern_tlog::AuditRecord {
    let events = gw.wait_events(1).await;
    let event = &events[0];
    assert_eq!(event["status"], 499, "{event}");
    assert_eq!(event["reason"], "caller_closed");
    assert_eq!(event["decision"], decision);
    assert_eq!(event["mode"], mode);
    assert_eq!(event["host"], "127.0.0.1");
    assert_eq!(event["caller"], "checkout");
    let outcome = audit_outcome(gw, event["request_id"].as_str().unwrap()).await;
    assert_eq!(outcome.status, Some(499));
    assert_eq!(outcome.reason.as_deref(), Some("caller_closed"));
    outcome
}

/// Sends a plain-HTTP `GET` for the silent host on `port` through the proxy and waits until
/// the host has accepted Postern's connection: the call is then waiting for its answer.
async fn proxied_get_reaching(
    gw: &TestGateway,
    port: u16,
    accepts: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> tokio::net::TcpStream {
    let stream = send_proxy_head(
        gw,
        &format!("GET http://127.0.0.1:{port}/v1/slow HTTP/1.1"),
        port,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), accepts.recv())
        .await
        .expect("the request reached the host");
    stream
}

/// A caller that hangs up while an unregistered host has yet to answer its plain-HTTP request
/// ends the call, and the call is still recorded: event and audit outcome with
/// `499 caller_closed`, the outcome linked to the intent written before the request left.
#[tokio::test]
async fn a_proxied_call_whose_caller_hangs_up_before_the_host_answers_is_recorded() {
    let (port, hold, mut accepts) = silent_vendor().await;
    let mut gw = TestGateway::start(&open_proxy_to(port, ""), None).await;
    let stream = proxied_get_reaching(&gw, port, &mut accepts).await;
    drop(stream);

    let outcome = hang_up_recorded(&gw, "allow", "proxy").await;
    assert_eq!(outcome.decision, postern_tlog::Decision::Allow);
    let ledger = &gw.running().shared().audit.ledger;
    let intent = outcome.intent_index.expect("the outcome names its intent");
    let intent = postern_tlog::AuditRecord::decode(&ledger.entry(intent).unwrap()).unwrap();
    assert_eq!(intent.kind, postern_tlog::RecordKind::Intent);
    assert_eq!(intent.request_id, outcome.request_id);
    let events = gw.shut_down_for_events().await;
    assert_eq!(events.len(), 1, "the call was recorded twice: {events:?}");
    hold.abort();
}

/// An unregistered host that stops sending in the middle of its plain-HTTP answer: after
/// `[proxy] response_idle_timeout_ms` the body is cut, the caller's and the host's connections
/// close, and the call is recorded `incomplete` with `upstream_idle_timeout`.
#[tokio::test]
async fn a_proxied_answer_that_stalls_mid_body_is_cut_after_the_proxys_idle_timeout() {
    let (port, vendor, closed) = stalling_vendor().await;
    let gw = TestGateway::start(&open_proxy_to(port, "response_idle_timeout_ms = 400"), None).await;
    let started = std::time::Instant::now();
    let stream = send_proxy_head(
        &gw,
        &format!("GET http://127.0.0.1:{port}/v1/stream HTTP/1.1"),
        port,
    )
    .await;
    assert_cut_after_stall(stream, started, Duration::from_millis(400), closed).await;
    let event = gw.wait_events(1).await.remove(0);
    assert_eq!(event["mode"], "proxy", "{event}");
    assert_eq!(event["reason"], "upstream_idle_timeout", "{event}");
    assert_eq!(event["incomplete"], true, "{event}");
    vendor.abort();
    gw.stop().await;
}

/// The same call still waiting when shutdown's grace runs out is recorded as cut by the
/// shutdown: `503 gateway_shutdown`.
#[tokio::test]
async fn a_proxied_call_cut_by_shutdown_is_recorded_as_gateway_shutdown() {
    let (port, hold, mut accepts) = silent_vendor().await;
    let mut gw =
        TestGateway::start_with_gateway(&open_proxy_to(port, ""), None, "shutdown_grace_ms = 200")
            .await;
    let _stream = proxied_get_reaching(&gw, port, &mut accepts).await;
    let events = gw.shut_down_for_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], 503);
    assert_eq!(events[0]["reason"], "gateway_shutdown");
    assert_eq!(events[0]["mode"], "proxy");
    hold.abort();
}

/// Whether a socket on this host is connecting to 127.0.0.1:`port`, its SYN unanswered
/// (`/proc/net/tcp` state 02, SYN_SENT; addresses in the host's byte order).
#[cfg(target_os = "linux")]
fn dialling(port: u16) -> bool {
    let remote = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02")
        })
}

/// Sends `CONNECT 127.0.0.1:port` as `checkout`, waits (up to 5 s) until Postern dials it, and
/// hangs up.
#[cfg(target_os = "linux")]
async fn connect_and_hang_up_while_dialled(gw: &TestGateway, port: u16) {
    let stream = send_proxy_head(gw, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1"), port).await;
    let mut waited = 0;
    while !dialling(port) {
        assert!(waited < 500, "Postern never dialled the destination");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    drop(stream);
}

/// A caller that hangs up on its CONNECT while Postern still dials the destination leaves the
/// call recorded: `499 caller_closed`, a denial (as for a refused address, a host no
/// integration registers is authorized only once the dial returns), with an audit outcome and
/// no intent.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_connect_whose_caller_hangs_up_while_the_host_is_dialled_is_recorded() {
    let (port, _listener, _queued) = full_listener().await;
    let mut gw = TestGateway::start(&open_proxy_to(port, "connect_timeout_ms = 30000"), None).await;
    assert!(
        !dialling(port),
        "a connect to the full listener is still pending"
    );
    connect_and_hang_up_while_dialled(&gw, port).await;

    let outcome = hang_up_recorded(&gw, "deny", "tunnel").await;
    assert_eq!(outcome.intent_index, None);
    let events = gw.shut_down_for_events().await;
    assert_eq!(events.len(), 1, "the call was recorded twice: {events:?}");
}

/// The same hang-up on a CONNECT to a registered integration's host (a tunnel): the caller's
/// grant was checked before the dial, so the call is recorded as allowed, as a path-mode call
/// whose caller leaves while the vendor is dialled.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_granted_tunnel_whose_caller_hangs_up_while_the_vendor_is_dialled_is_allowed() {
    let (port, _listener, _queued) = full_listener().await;
    let body = opaque_integration("127.0.0.1", port, "connect_timeout_ms = 30000");
    let mut gw = TestGateway::start(&body, None).await;
    connect_and_hang_up_while_dialled(&gw, port).await;

    let outcome = hang_up_recorded(&gw, "allow", "tunnel").await;
    assert_eq!(outcome.intent_index, None);
    let events = gw.shut_down_for_events().await;
    assert_eq!(events[0]["integration"], "opaque");
    assert_eq!(events.len(), 1, "the call was recorded twice: {events:?}");
}

/// `[proxy] intercept_ca_names`: the CA Postern makes carries them as name constraints, a real
/// client that trusts it takes the leaf of a host inside them, and a reload that asks for other
/// names is refused (the running config stays) — a CA's names cannot change.
#[tokio::test]
async fn a_name_constrained_ca_intercepts_its_hosts_and_keeps_its_names() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(
        &vendor,
        "",
        "[proxy]\nintercept_ca_names = [\"postern.test\"]",
    )
    .await;
    let names = ["postern.test".to_string()];
    let pem = postern_gateway::intercept::export_ca_pem(&gw.running().data_dir, &names).unwrap();
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&der.contents).unwrap();
    let constraints = ca.name_constraints().unwrap().expect("name constraints");
    assert!(constraints.critical);
    let client = proxied(
        &gw,
        Some(CHECKOUT_TOKEN),
        &[reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()],
    );
    let response = client
        .get(format!("https://{VENDOR_HOST}/v1/charges/ch_7"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().target, "/v1/charges/ch_7");

    // Exporting with other names does not hand out a CA that does not carry them.
    let error = postern_gateway::intercept::export_ca_pem(
        &gw.running().data_dir,
        &["example.org".to_string()],
    )
    .unwrap_err();
    assert!(format!("{error:#}").contains("cannot change"), "{error:#}");

    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let wider = text.replace(
        "intercept_ca_names = [\"postern.test\"]",
        "intercept_ca_names = [\"postern.test\", \"example.org\"]",
    );
    assert_ne!(wider, text);
    std::fs::write(&gw.config_path, &wider).unwrap();
    let error = gw
        .running()
        .reload(postern_config::load(&gw.config_path).unwrap())
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("has the names postern.test")
            && error.contains("move the ca/ directory away"),
        "{error}"
    );
    // Without the key the CA is taken as it is; it still vouches only for its names.
    std::fs::write(
        &gw.config_path,
        text.replace("intercept_ca_names = [\"postern.test\"]", ""),
    )
    .unwrap();
    gw.running()
        .reload(postern_config::load(&gw.config_path).unwrap())
        .unwrap();
    let response = client
        .get(format!("https://{VENDOR_HOST}/v1/charges/ch_8"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A host outside the CA's names gets no leaf: the CONNECT is refused, nothing is dialled.
    std::fs::write(
        &gw.config_path,
        text.replace("intercept_ca_names = [\"postern.test\"]", "")
            .replace(
                &format!("hosts = [\"{VENDOR_HOST}\"]"),
                "hosts = [\"api.vendor.example\"]",
            ),
    )
    .unwrap();
    gw.running()
        .reload(postern_config::load(&gw.config_path).unwrap())
        .unwrap();
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let answer = raw_request(
        gw.running().listen_addr,
        format!("CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: api.vendor.example:443\r\nProxy-Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("interception_name_not_permitted"),
        "{answer}"
    );
    assert_eq!(vendor.seen().len(), 2);
    gw.stop().await;
}

/// A caller token in a forward-proxy request's method or target host — the caller's own, or
/// any `postern` made — is refused before anything is dialled, looked up or recorded: the
/// event carries neither the method nor the host, and discovery has no such host.
#[tokio::test]
async fn a_caller_token_in_a_proxy_method_or_target_host_is_refused_and_not_recorded() {
    use base64::Engine as _;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let port = plain.addr.port();
    let gw = intercepting_gateway(
        &vendor,
        "",
        &format!(
            "[proxy]\nmode = \"open\"\nallowed_ports = [443, {port}]\nallow_private_networks = [\"127.0.0.1/32\"]"
        ),
    )
    .await;
    let addr = gw.running().listen_addr;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{CHECKOUT_TOKEN}"));
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let lowered = other.to_ascii_lowercase();
    let cases = [
        (format!("X-{CHECKOUT_TOKEN} http://127.0.0.1:{port}/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}"), "caller_token_in_method"),
        (format!("{other} http://127.0.0.1:{port}/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}"), "caller_token_in_method"),
        (format!("CONNECT {other}.example.com:443 HTTP/1.1\r\nHost: {other}.example.com:443"), "caller_token_in_url"),
        (format!("CONNECT {CHECKOUT_TOKEN}.example.com:443 HTTP/1.1\r\nHost: x"), "caller_token_in_url"),
        (format!("GET http://{other}.example.com/x HTTP/1.1\r\nHost: {other}.example.com"), "caller_token_in_url"),
        (format!("GET http://{CHECKOUT_TOKEN}.example.com/x HTTP/1.1\r\nHost: x"), "caller_token_in_url"),
        // The own token in any case (a host name is case-insensitive), and before a bad path.
        (format!("CONNECT {}.example.com:443 HTTP/1.1\r\nHost: x", CHECKOUT_TOKEN.to_ascii_uppercase()), "caller_token_in_url"),
        (format!("GET http://{CHECKOUT_TOKEN}.example.com/a/../b HTTP/1.1\r\nHost: x"), "caller_token_in_url"),
    ];
    for (head, code) in &cases {
        let answer = raw_request(
            addr,
            format!("{head}\r\nProxy-Authorization: Basic {auth}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head}: {answer}");
        assert!(answer.contains(code), "{head}: {answer}");
        assert!(
            !answer.contains(CHECKOUT_TOKEN) && !answer.contains(&other),
            "{answer}"
        );
    }
    assert!(plain.seen().is_empty(), "nothing reached the host");
    let events = gw.wait_events(cases.len()).await;
    for (event, (head, code)) in events.iter().zip(&cases) {
        assert_eq!(event["reason"], *code, "{event}");
        assert_eq!(event["decision"], "deny", "{event}");
        // Any caller's token is refused before the caller is identified; its own, after.
        let own = head.to_ascii_lowercase().contains(CHECKOUT_TOKEN);
        assert_eq!(event["caller"] == "checkout", own, "{event}");
        if *code == "caller_token_in_url" {
            assert!(event["host"].is_null(), "{event}");
        }
    }
    let everything = std::fs::read_to_string(gw.running().data_dir.join("events.jsonl")).unwrap();
    for token in [
        CHECKOUT_TOKEN,
        &other,
        &lowered,
        &CHECKOUT_TOKEN.to_ascii_lowercase(),
    ] {
        assert!(
            !everything.contains(token),
            "a token in the events: {everything}"
        );
    }
    let discovered = serde_json::to_string(&discovered(&gw).await).unwrap();
    assert!(
        !discovered.contains(&lowered) && !discovered.contains("pst_"),
        "{discovered}"
    );
    gw.stop().await;
}

/// A refused CONNECT closes the connection: what the client sent after it for the tunnel (here
/// a request it meant for the vendor) is not read as a request to Postern.
#[tokio::test]
async fn a_refused_connect_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = intercepting_gateway(&vendor, "", "").await;
    let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "CONNECT {VENDOR_HOST}:443 HTTP/1.1\r\nHost: {VENDOR_HOST}:443\r\n\r\n\
                 GET /vendor/v1/charges/ch_1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CHECKOUT_TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("Postern closed the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// An opaque tunnel opened by a caller its client certificate identified ends when that
/// certificate expires: its bytes are never seen, so no request on it could be refused, and
/// Postern closes it at the certificate's `notAfter` instead.
#[tokio::test]
async fn a_tunnel_opened_with_a_client_certificate_closes_when_it_expires() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
[[callers]]
name = "billing"
spiffe_id = "spiffe://example.org/billing"

[proxy]
mode = "open"
allowed_ports = [{port}]
allow_private_networks = ["127.0.0.1/32"]
"#,
        port = plain.addr.port()
    );
    let gw = TestGateway::start_with_gateway(&body, None, &pki.mtls_listener(staging.path())).await;
    // Long enough to open the tunnel on a loaded machine, short for a test.
    let lifetime = Duration::from_secs(6);
    let (cert, key) = pki.short_lived_client_cert("spiffe://example.org/billing", lifetime);
    let config = pki.rustls_client(&cert, &key);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tunnel = connector.connect(name, tcp).await.unwrap();
    let target = format!("127.0.0.1:{}", plain.addr.port());
    tunnel
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tunnel.read(&mut byte).await.unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut byte = [0u8; 1];
    // Open while the certificate is valid...
    assert!(
        tokio::time::timeout(Duration::from_secs(1), tunnel.read(&mut byte))
            .await
            .is_err(),
        "the tunnel closed while its certificate was valid"
    );
    // ...and closed once it has expired.
    let closed = tokio::time::timeout(lifetime + Duration::from_secs(5), tunnel.read(&mut byte))
        .await
        .expect("the tunnel outlived its caller's certificate");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["caller"], "billing");
    assert_eq!(events[0]["reason"], "tunnel_revoked");
    gw.stop().await;
}
