//! End-to-end: real sockets, real TLS, a real gateway, a real (in-process) vendor.
//! Each test states what a user would see.

mod support;

use std::sync::Arc;
use std::time::Duration;

use postern_scan::testing::{brotli, zstd};
use support::*;

/// A Stripe-like integration against `vendor`, granted to `checkout` for create/get charge.
fn stripe_like(vendor: &TestVendor, extra: &str) -> String {
    stripe_like_at(vendor.addr.port(), extra)
}

/// [`stripe_like`], against a vendor on `port` of 127.0.0.1.
fn stripe_like_at(port: u16, extra: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "stripe"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "bearer", from_file = "{{dir}}/stripe-key" }}
operations = [
  {{ id = "create_charge", method = "POST", path = "/v1/charges" }},
  {{ id = "get_charge",    method = "GET",  path = "/v1/charges/{{id}}" }},
  {{ id = "refund_charge", method = "POST", path = "/v1/charges/{{id}}/refund" }},
]
{extra}

[[grants]]
caller = "checkout"
integration = "stripe"
operations = ["create_charge", "get_charge"]
"#
    )
}

const VENDOR_KEY: &str = "sk_live_vendor_secret_DO_NOT_LEAK_4242";

async fn stripe_gateway(vendor: &TestVendor, extra: &str) -> TestGateway {
    stripe_gateway_with(vendor, extra, "").await
}

/// A Stripe-like gateway for `vendor`, `extra` in its integration and `gateway_extra` in its
/// `[gateway]` table.
async fn stripe_gateway_tuned(
    vendor: &TestVendor,
    extra: &str,
    gateway_extra: &str,
) -> TestGateway {
    start_with_key(
        &stripe_like(vendor, extra),
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        gateway_extra,
    )
    .await
}

async fn stripe_gateway_with(vendor: &TestVendor, extra: &str, more: &str) -> TestGateway {
    // The key file must exist before start: write it into a dir we then hand to the gateway.
    let body = format!("{}\n{more}", stripe_like(vendor, extra));
    start_with_key(
        &body,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        "",
    )
    .await
}

async fn start_with_key(
    body: &str,
    ca: Option<&str>,
    key_file: &str,
    key: &str,
    gateway_extra: &str,
) -> TestGateway {
    start_with_key_and_resolver(body, ca, key_file, key, gateway_extra, None).await
}

/// [`start_with_key`], vendor hosts looked up by `resolver`.
async fn start_with_key_and_resolver(
    body: &str,
    ca: Option<&str>,
    key_file: &str,
    key: &str,
    gateway_extra: &str,
    resolver: Option<Arc<dyn postern_netguard::Resolve>>,
) -> TestGateway {
    let staging = tempfile::tempdir().unwrap();
    let key_path = staging.path().join(key_file);
    std::fs::write(&key_path, key).unwrap();
    // As an operator keeps it: readable by others, it is a warning on every reload.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let body = body.replace(
        &format!("{{dir}}/{key_file}"),
        &key_path.display().to_string(),
    );
    let gateway = TestGateway::start_with_resolver(&body, ca, gateway_extra, resolver).await;
    // Keep the staging dir alive for the test's duration.
    std::mem::forget(staging);
    gateway
}

#[tokio::test]
async fn granted_call_is_forwarded_with_the_vendor_key_and_recorded() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let started = std::time::Instant::now();
    let response = client()
        .post(format!("{}/stripe/v1/charges?expand=customer", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=500&currency=usd")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["postern-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    let took = started.elapsed().as_secs_f64() * 1000.0;

    let seen = vendor.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/charges?expand=customer");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {VENDOR_KEY}")
    );
    assert_eq!(seen.body, "amount=500&currency=usd");
    assert!(
        !seen.everything().contains(&gw.token),
        "caller token reached the vendor"
    );

    let events = gw.wait_events(1).await;
    let event = &events[0];
    assert_eq!(event["request_id"], request_id);
    assert_eq!(event["integration"], "stripe");
    assert_eq!(event["caller"], "checkout");
    assert_eq!(event["operation"], "create_charge");
    assert_eq!(event["method"], "POST");
    assert_eq!(event["path"], "/v1/charges");
    assert_eq!(event["status"], 200);
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["reason"], "granted");
    assert_eq!(event["request_bytes"], 23);
    assert_eq!(event["response_bytes"], 11);
    assert_eq!(event["upstream_addr"], vendor.addr.to_string());
    assert_eq!(event["source_ip"], "127.0.0.1");
    // Within the call as the test saw it (a lower bound: the total-timeout test's event).
    let duration = event["duration_ms"].as_f64().unwrap();
    assert!((0.0..=took).contains(&duration), "{duration} of {took} ms");
    let time = event["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == 24,
        "time {time} is RFC 3339 UTC with ms"
    );
    gw.stop().await;
}

#[tokio::test]
async fn each_caller_identity_form_is_accepted_and_never_forwarded() {
    use base64::Engine as _;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let url = format!("{}/stripe/v1/charges/ch_1", gw.base);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ACxyz:{}", gw.token));
    let basic_user_only =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", gw.token));
    let forms: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {}", gw.token)),
        ("authorization", format!("bearer {}", gw.token)),
        ("authorization", format!("Basic {basic}")),
        ("authorization", format!("Basic {basic_user_only}")),
        ("postern-caller-token", gw.token.clone()),
    ];
    for (name, value) in &forms {
        let response = client()
            .get(&url)
            .header(*name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}: {value}");
    }
    // Lower-case header name on the wire, as some SDKs send it.
    let raw = raw_request(
        gw.running().listen_addr,
        format!("GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n", gw.token).as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    for seen in vendor.seen() {
        assert!(!seen.everything().contains(&gw.token));
        assert!(!seen.headers.contains_key("postern-caller-token"));
        assert_eq!(
            seen.header("authorization").unwrap(),
            format!("Bearer {VENDOR_KEY}")
        );
    }
    assert_eq!(vendor.seen().len(), forms.len() + 1);
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_unknown_caller_gets_401_json_and_nothing_is_forwarded() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let url = format!("{}/stripe/v1/charges/ch_1", gw.base);
    for request in [
        client().get(&url),
        client().get(&url).bearer_auth("pst_not_a_registered_token"),
        client().get(&url).header("authorization", "Digest abc"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "caller_unauthenticated");
        assert!(body["error"]["message"].as_str().unwrap().contains("token"));
        assert!(!body.to_string().contains("pst_not_a_registered_token"));
    }
    assert!(vendor.seen().is_empty());
    let events = gw.wait_events(3).await;
    assert!(events
        .iter()
        .all(|e| e["decision"] == "deny" && e["status"] == 401));
    gw.stop().await;
}

#[tokio::test]
async fn operations_match_templates_and_ungranted_ones_are_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let twilio = format!(
        r#"
[[integrations]]
name = "twilio"
vendor = "Twilio"
owner = "comms@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
operations = [
  {{ id = "send_message", method = "POST", path = "/2010-04-01/Accounts/{{AccountSid}}/Messages.json" }},
  {{ id = "get_message",  method = "GET",  path = "/2010-04-01/Accounts/{{AccountSid}}/Messages/{{Sid}}.json" }},
]

[[grants]]
caller = "checkout"
integration = "twilio"
operations = ["send_message", "get_message"]
"#,
        port = vendor.addr.port()
    );
    let gw = stripe_gateway_with(&vendor, "", &twilio).await;
    let call = |method: reqwest::Method, path: &str, token: &str| {
        client()
            .request(method, format!("{}{path}", gw.base))
            .bearer_auth(token)
            .send()
    };
    use reqwest::Method;
    let cases: Vec<(Method, &str, &str, u16, &str)> = vec![
        (
            Method::POST,
            "/twilio/2010-04-01/Accounts/AC123/Messages.json",
            CHECKOUT_TOKEN,
            200,
            "granted",
        ),
        (
            Method::GET,
            "/twilio/2010-04-01/Accounts/AC123/Messages/SM456.json",
            CHECKOUT_TOKEN,
            200,
            "granted",
        ),
        (
            Method::GET,
            "/twilio/2010-04-01/Accounts/AC123/Messages/SM456.xml",
            CHECKOUT_TOKEN,
            403,
            "operation_not_allowed",
        ),
        (
            Method::DELETE,
            "/twilio/2010-04-01/Accounts/AC123/Messages/SM456.json",
            CHECKOUT_TOKEN,
            403,
            "operation_not_allowed",
        ),
        (
            Method::POST,
            "/stripe/v1/charges/ch_1/refund",
            CHECKOUT_TOKEN,
            403,
            "not_granted",
        ),
        (
            Method::POST,
            "/stripe/v1/charges",
            REPORTING_TOKEN,
            403,
            "not_granted",
        ),
        (
            Method::GET,
            "/stripe/v1/customers",
            CHECKOUT_TOKEN,
            403,
            "operation_not_allowed",
        ),
        (
            Method::GET,
            "/nosuch/v1/x",
            CHECKOUT_TOKEN,
            404,
            "unknown_integration",
        ),
    ];
    for (method, path, token, status, reason) in &cases {
        let response = call(method.clone(), path, token).await.unwrap();
        assert_eq!(response.status().as_u16(), *status, "{method} {path}");
        if *status != 200 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], *reason, "{method} {path}");
        }
    }
    assert_eq!(
        vendor.seen().len(),
        2,
        "only granted calls reach the vendor"
    );
    let events = gw.wait_events(cases.len()).await;
    for (event, (_, path, _, status, reason)) in events.iter().zip(&cases) {
        assert_eq!(event["status"], *status, "{path}");
        assert_eq!(event["reason"], *reason, "{path}");
    }
    assert_eq!(
        events[1]["path"],
        "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"
    );
    gw.stop().await;
}

#[tokio::test]
async fn custom_cedar_policy_adds_conditions() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("extra.cedar");
    std::fs::write(
        &policies,
        r#"@id("small-charges-only")
forbid(principal, action, resource == Postern::Operation::"stripe/create_charge")
when { context.request_bytes > 100 };
"#,
    )
    .unwrap();
    let gw = stripe_gateway_tuned(
        &vendor,
        "",
        &format!("policies = \"{}\"", policies.display()),
    )
    .await;
    let small = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .body("amount=1")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    let large = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .body("x".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 403);
    let body: serde_json::Value = large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_forbid");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("small-charges-only"));
    let events = gw.wait_events(2).await;
    assert_eq!(events[0]["policy"], "grant-0");
    assert_eq!(events[1]["policy"], "small-charges-only");
    assert_eq!(vendor.seen().len(), 1);

    // A body that declares no size (chunked over HTTP/1.1, no content-length over h2), on an
    // operation the size rule bounds: refused, not decided as 0 bytes and let through.
    let unsized_call =
        |caller: &reqwest::Client, method: reqwest::Method, path: &str, token: &str| {
            let chunks = futures_stream(vec![vec![b'x'; 300], vec![b'y'; 300]]);
            caller
                .request(method, format!("{}/stripe{path}", gw.base))
                .bearer_auth(token)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
        };
    for caller in [client(), h2c_client()] {
        let refused = unsized_call(&caller, reqwest::Method::POST, "/v1/charges", &gw.token)
            .await
            .unwrap();
        assert_refused(refused, 411, "length_required").await;
    }
    let events = gw.wait_events(4).await;
    assert!(events[2..].iter().all(|e| e["reason"] == "length_required"
        && e["decision"] == "deny"
        && e["policy"] == "small-charges-only"));
    // Where the size changes nothing, none is asked for: an operation no size rule bounds, and
    // a caller refused anyway (403, as with any size).
    let other = unsized_call(
        &client(),
        reqwest::Method::GET,
        "/v1/charges/ch_1",
        &gw.token,
    );
    assert_eq!(other.await.unwrap().status(), 200);
    let ungranted = unsized_call(
        &client(),
        reqwest::Method::POST,
        "/v1/charges",
        REPORTING_TOKEN,
    );
    assert_eq!(ungranted.await.unwrap().status(), 403);
    // A bodiless request needs no length.
    let get = get_charge(&client(), &gw).await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(vendor.seen().len(), 3);
    // A compressed body under the size rule: 60 bytes of gzip that inflate to 5,000. Its
    // declared length is not what the vendor reads: refused, not decided at 60 bytes.
    let compressed = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("content-encoding", "gzip")
        .body(gzip(&vec![b'a'; 5_000]))
        .send()
        .await
        .unwrap();
    assert_refused(compressed, 403, "policy_forbid").await;
    assert_eq!(vendor.seen().len(), 3);
    gw.stop().await;
}

async fn injected(kind: &str) -> (TestVendor, SeenRequest) {
    let (vendor, seen, _) = injected_with(kind, TestVendor::ok_handler()).await;
    (vendor, seen)
}

/// A gateway with one integration `v` at `vendor`, its credential of `kind` (the inline
/// table's other keys) read from a file holding [`VENDOR_KEY`], and a GET operation for each
/// of `paths`, named after it (`/gzip-clean` is `gzip_clean`), all granted to `checkout`.
async fn v_gateway(vendor: &TestVendor, kind: &str, paths: &[&str]) -> TestGateway {
    let operations: Vec<String> = paths
        .iter()
        .map(|path| {
            let id = path.trim_start_matches('/').replace('-', "_");
            format!(r#"{{ id = "{id}", method = "GET", path = "{path}" }}"#)
        })
        .collect();
    let body = format!(
        r#"
[[integrations]]
name = "v"
vendor = "Vendor"
owner = "o@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ {kind}, from_file = "{{dir}}/key" }}
operations = [ {operations} ]

[[grants]]
caller = "checkout"
integration = "v"
operations = ["*"]
"#,
        port = vendor.addr.port(),
        operations = operations.join(", "),
    );
    start_with_key(&body, vendor.ca_pem.as_deref(), "key", VENDOR_KEY, "").await
}

/// A call through an integration with credential `kind`, to a vendor answering with `handler`:
/// what the vendor saw, and the headers the caller got.
async fn injected_with(kind: &str, handler: Handler) -> (TestVendor, SeenRequest, http::HeaderMap) {
    let vendor = TestVendor::tls(handler).await;
    let gw = v_gateway(&vendor, kind, &["/items"]).await;
    let response = client()
        .get(format!(
            "{}/v/items?page=2&api_key=caller-supplied&x-api-key=1&api%5Fkey=encoded&%61pi_key=too",
            gw.base
        ))
        .bearer_auth(&gw.token)
        .header("x-api-key", "caller-supplied-header")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    gw.stop().await;
    let seen = vendor.last();
    (vendor, seen, headers)
}

/// A vendor that echoes the credential it received in its answer's headers: as sent, and with
/// every byte of it percent-encoded (as no encoder of Postern's writes it).
fn echoing_vendor() -> Handler {
    Arc::new(|request: &SeenRequest| {
        let sent = request
            .header("authorization")
            .or_else(|| request.header("x-api-key"))
            .unwrap_or_default()
            .to_string();
        let credential = sent.rsplit(' ').next().unwrap_or_default();
        let mut answer = TestVendor::echoing_answer(&sent, credential);
        // And in a header's name (a name reaches the caller in lower case).
        let name = format!("x-echo-{}", credential.to_ascii_lowercase());
        if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
            answer
                .headers
                .push((Box::leak(name.into_boxed_str()), "1".into()));
        }
        answer
    })
}

#[tokio::test]
async fn a_vendor_echoing_the_injected_credential_in_a_header_never_shows_it_to_the_caller() {
    for kind in [
        r#"kind = "bearer""#,
        r#"kind = "basic", username = "AC42""#,
        r#"kind = "header", name = "x-api-key""#,
    ] {
        let (_, seen, headers) = injected_with(kind, echoing_vendor()).await;
        assert!(
            seen.header("authorization")
                .or(seen.header("x-api-key"))
                .is_some(),
            "{kind}"
        );
        assert_eq!(headers.get("x-kept").unwrap(), "fine", "{kind}");
        for name in ["x-echo-as-sent", "x-echo-encoded"] {
            assert!(
                headers.get(name).is_none(),
                "{kind}: {name} reached the caller"
            );
        }
        let named = headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-echo-"))
            .collect::<Vec<_>>();
        assert!(named.is_empty(), "{kind}: {named:?} reached the caller");
    }
}

/// A vendor that quotes the key it was sent in its answer's body, as an error message or an
/// echo endpoint does: plain, gzip'd, gzip'd without the key, and in a coding Postern cannot
/// undo.
fn body_echoing_vendor() -> Handler {
    Arc::new(|request: &SeenRequest| {
        let key = request
            .header("authorization")
            .and_then(|sent| sent.strip_prefix("Bearer ").map(str::to_string))
            .unwrap_or_default();
        let quoted = format!(
            r#"{{"error":{{"message":"Invalid API key provided: {key}","type":"invalid_request_error"}},"headers":{{"authorization":"Bearer {key}"}}}}"#
        );
        let mut answer = Answer::json(200, serde_json::json!({}));
        answer.body = match request.target.as_str() {
            "/plain" => quoted.into(),
            "/gzip" => gzip(format!("{}{quoted}", " ".repeat(20_000)).as_bytes()).into(),
            "/gzip-clean" => {
                gzip(br#"{"id":"ch_1","note":"sk_live_ is a prefix, not a key"}"#).into()
            }
            // The request's head, base64'd, as an event envelope carries it.
            "/base64" => {
                use base64::Engine as _;
                let head = format!("GET /base64 HTTP/1.1\r\nauthorization: Bearer {key}\r\n");
                let encoded = base64::engine::general_purpose::STANDARD.encode(head);
                format!(r#"{{"isBase64Encoded":true,"head":"{encoded}"}}"#).into()
            }
            _ => quoted.into(),
        };
        match request.target.as_str() {
            "/gzip" | "/gzip-clean" => answer.headers.push(("content-encoding", "gzip".into())),
            "/compress" => answer.headers.push(("content-encoding", "compress".into())),
            _ => {}
        }
        answer
    })
}

/// In path mode, where every integration shares Postern's origin, a vendor's origin-wide answer
/// headers (`Alt-Svc`, `Clear-Site-Data`, `Strict-Transport-Security`, `NEL`, `Report-To`,
/// `Accept-CH`) are not passed on; its other headers are.
#[tokio::test]
async fn origin_wide_answer_headers_do_not_pass_in_path_mode() {
    let handler: Handler = Arc::new(|_: &SeenRequest| {
        let mut answer = Answer::json(200, serde_json::json!({"id": "ch_1"}));
        answer.headers.extend([
            ("alt-svc", "h2=\"elsewhere.example:443\"".to_string()),
            ("clear-site-data", "\"cookies\"".to_string()),
            ("strict-transport-security", "max-age=31536000".to_string()),
            (
                "nel",
                r#"{"report_to":"vendor","max_age":31536000,"include_subdomains":true}"#
                    .to_string(),
            ),
            (
                "report-to",
                r#"{"group":"vendor","max_age":31536000,"endpoints":[{"url":"https://collector.example/r"}]}"#
                    .to_string(),
            ),
            ("accept-ch", "Sec-CH-UA-Platform-Version".to_string()),
            ("x-request-id", "req_1".to_string()),
        ]);
        answer
    });
    let vendor = TestVendor::tls(handler).await;
    let gw = v_gateway(&vendor, r#"kind = "bearer""#, &["/origin"]).await;
    let response = client()
        .get(format!("{}/v/origin", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for name in [
        "alt-svc",
        "clear-site-data",
        "strict-transport-security",
        "nel",
        "report-to",
        "accept-ch",
    ] {
        assert!(response.headers().get(name).is_none(), "{name} passed");
    }
    assert_eq!(response.headers()["x-request-id"], "req_1");
    gw.stop().await;
}

/// A vendor's `Connection` header naming `Content-Encoding` does not take the coding off: the
/// answer is read decoded for the injected credential, and cut where it holds it (taken off,
/// the gzip'd answer was read as plain, found clean, and passed on with the key inside).
#[tokio::test]
async fn a_vendors_connection_header_does_not_hide_the_answers_coding() {
    let handler: Handler = Arc::new(|request: &SeenRequest| {
        let key = request.header("authorization").unwrap_or_default();
        let mut answer = Answer::json(200, serde_json::json!({}));
        answer.body = gzip(format!(r#"{{"echo":"{key}"}}"#).as_bytes()).into();
        answer.headers.extend([
            ("content-encoding", "gzip".to_string()),
            ("connection", "content-encoding".to_string()),
        ]);
        answer
    });
    // HTTP/1.1: h2 carries no `Connection` header.
    let vendor = TestVendor::tls_http1(handler).await;
    let gw = v_gateway(&vendor, r#"kind = "bearer""#, &["/named"]).await;
    let mut response = client()
        .get(format!("{}/v/named", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let mut received = Vec::new();
    let cut = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut, "the answer holding the key was passed whole");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "secret_echoed", "{events:#?}");
    gw.stop().await;
}

/// A caller's `Connection` header naming `Content-Type` (which RFC 9110 §7.6.1 forbids a
/// sender) does not take the type off: the body was judged by it (a `text/plain` body is not
/// read for `_method` or `access_token`), and a vendor given none would read a POST as a form.
#[tokio::test]
async fn a_connection_header_does_not_take_off_the_bodys_type() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "text/plain")
        .header("connection", "content-type, content-length")
        .body("access_token=evil&_method=DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = vendor.last();
    assert_eq!(seen.header("content-type").as_deref(), Some("text/plain"));
    gw.stop().await;
}

#[tokio::test]
async fn a_vendor_echoing_the_injected_credential_in_its_body_never_shows_it_to_the_caller() {
    let vendor = TestVendor::tls(body_echoing_vendor()).await;
    let paths = ["/plain", "/gzip", "/gzip-clean", "/compress", "/base64"];
    let gw = v_gateway(&vendor, r#"kind = "bearer""#, &paths).await;
    let get = |path: &str| {
        client()
            .get(format!("{}/v{path}", gw.base))
            .bearer_auth(&gw.token)
            .send()
    };

    // Plain: every occurrence overwritten in place; the length and the JSON stay whole.
    let plain = get("/plain").await.unwrap();
    assert_eq!(plain.status(), 200);
    let length = plain.content_length();
    let text = plain.text().await.unwrap();
    assert!(!text.contains(VENDOR_KEY), "{text}");
    assert_eq!(length, Some(text.len() as u64));
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let masked = "*".repeat(VENDOR_KEY.len());
    assert_eq!(
        answer["error"]["message"],
        format!("Invalid API key provided: {masked}")
    );
    assert_eq!(
        answer["headers"]["authorization"],
        format!("Bearer {masked}")
    );

    // Base64'd: overwritten there too, so that it no longer decodes to the key.
    let encoded = get("/base64").await.unwrap();
    assert_eq!(encoded.status(), 200);
    let answer: serde_json::Value = encoded.json().await.unwrap();
    let head = answer["head"].as_str().unwrap();
    assert!(head.contains("****************"), "{head}");
    {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(head);
        assert!(decoded.is_err(), "the overwritten base64 still decodes");
        // Whatever decodes around the stars holds no part of the key past a few bytes.
        let before = head.split('*').next().unwrap();
        let readable = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&before[..before.len() / 4 * 4])
            .unwrap();
        assert!(!String::from_utf8_lossy(&readable).contains(&VENDOR_KEY[..8]));
    }

    // Gzip'd: it cannot be rewritten, so it is cut before the bytes that would hold the key.
    let mut coded = get("/gzip").await.unwrap();
    assert_eq!(coded.status(), 200);
    let mut received = 0;
    let cut = loop {
        match coded.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut, "a cut answer ended as if whole");
    // A clean gzip'd answer passes as the vendor sent it.
    let clean = get("/gzip-clean").await.unwrap();
    assert_eq!(clean.status(), 200);
    let expected = gzip(br#"{"id":"ch_1","note":"sk_live_ is a prefix, not a key"}"#);
    assert_eq!(clean.bytes().await.unwrap(), expected);
    // A coding Postern cannot read is not handed over unread.
    assert_refused(get("/compress").await.unwrap(), 502, "response_undecodable").await;

    let events = gw.wait_events(5).await;
    let by_op = |op: &str| {
        events
            .iter()
            .find(|e| e["operation"] == op)
            .unwrap_or_else(|| panic!("no {op} event in {events:#?}"))
    };
    assert_eq!(by_op("plain")["secret_echoed"], true);
    assert_eq!(by_op("plain")["reason"], "granted");
    assert_eq!(by_op("base64")["secret_echoed"], true);
    assert_eq!(by_op("gzip")["secret_echoed"], true);
    assert_eq!(by_op("gzip")["reason"], "secret_echoed");
    assert_eq!(by_op("gzip")["incomplete"], true);
    // What the caller got of it, not what the vendor sent.
    assert_eq!(by_op("gzip")["response_bytes"], received, "{events:#?}");
    assert!(by_op("gzip_clean").get("secret_echoed").is_none());
    assert_eq!(by_op("compress")["reason"], "response_undecodable");
    // The key is in no event.
    assert!(!serde_json::to_string(&events).unwrap().contains(VENDOR_KEY));
    gw.stop().await;
}

/// An echo endpoint (it answers with ~100 KiB of what it was sent, then the request's headers,
/// the injected `Authorization` among them) that compresses in zstd when it is offered zstd, and
/// at `/zstd-unasked` whatever it is offered. libzstd decodes a compressed block only once all of
/// it has come, so the frames carrying the key would pass before decoding showed it: the vendor
/// is not offered zstd, and a zstd answer sent anyway is refused before any of its body reaches
/// the caller.
#[tokio::test]
async fn a_credential_is_never_echoed_to_the_caller_in_a_zstd_answer() {
    let vendor = TestVendor::tls(Arc::new(|request: &SeenRequest| {
        // Text no coding shrinks much, so the block holds the key as it is.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut echoed: String = (0..100 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .collect();
        for (name, value) in request.headers.iter() {
            echoed.push_str(&format!("\n{name}: {}", value.to_str().unwrap_or("?")));
        }
        let offered = request.header("accept-encoding").unwrap_or_default();
        let mut answer = Answer::json(200, serde_json::json!({}));
        answer.headers = vec![("content-type", "text/plain".into())];
        match request.target == "/zstd-unasked" || offered.contains("zstd") {
            true => {
                answer.body = zstd(echoed.as_bytes(), 20).into();
                answer.headers.push(("content-encoding", "zstd".into()));
            }
            false => answer.body = echoed.into(),
        }
        answer
    }))
    .await;
    let gw = v_gateway(&vendor, r#"kind = "bearer""#, &["/echo", "/zstd-unasked"]).await;
    let get = |path: &str, accept: &str| {
        client()
            .get(format!("{}/v{path}", gw.base))
            .bearer_auth(&gw.token)
            .header("accept-encoding", accept)
            .send()
    };

    // Asked for zstd: the vendor is offered what else the caller takes, and its plain answer
    // has the key overwritten in place.
    for (accept, offered) in [("zstd", "identity"), ("zstd, gzip;q=0.5", "gzip;q=0.5")] {
        let response = get("/echo", accept).await.unwrap();
        assert_eq!(
            vendor.last().header("accept-encoding").as_deref(),
            Some(offered),
            "{accept}"
        );
        assert_eq!(response.status(), 200, "{accept}");
        assert!(response.headers().get("content-encoding").is_none());
        let text = response.text().await.unwrap();
        assert!(!text.contains(VENDOR_KEY), "{accept}");
        assert!(text.contains(&"*".repeat(VENDOR_KEY.len())), "{accept}");
    }
    // Answered in zstd anyway: refused before the answer's head, none of its body sent.
    let response = get("/zstd-unasked", "zstd").await.unwrap();
    assert!(response.headers().get("content-encoding").is_none());
    let bytes = response.content_length();
    assert_refused(response, 502, "response_undecodable").await;
    assert!(bytes.is_some_and(|length| length < 4096), "{bytes:?}");

    let events = gw.wait_events(3).await;
    let refused = events
        .iter()
        .find(|e| e["operation"] == "zstd_unasked")
        .unwrap_or_else(|| panic!("no zstd_unasked event in {events:#?}"));
    assert_eq!(refused["reason"], "response_undecodable");
    assert!(!serde_json::to_string(&events).unwrap().contains(VENDOR_KEY));
    gw.stop().await;
}

/// A Basic pair's base64 holding `+`, `/` and `=`, echoed in a JSON body as PHP (`\/`), .NET's
/// System.Text.Json (`\u002B`) and Gson (`\u003d`) write it, is overwritten in each.
#[tokio::test]
async fn a_basic_pair_echoed_as_json_encoders_escape_it_never_shows_it_to_the_caller() {
    let vendor = TestVendor::tls(Arc::new(|request: &SeenRequest| {
        let sent = request.header("authorization").unwrap_or_default();
        let php = sent.replace('/', "\\/");
        let dotnet = sent.replace('+', "\\u002B");
        let gson = sent.replace('=', "\\u003d");
        let mut answer = Answer::json(200, serde_json::json!({}));
        answer.body = format!(r#"{{"php":"{php}","dotnet":"{dotnet}","gson":"{gson}"}}"#).into();
        answer
    }))
    .await;
    // As base64, `AB>CD?x:` + the key is `QUI+Q0Q/eDpz…Mg==`.
    let gw = v_gateway(
        &vendor,
        r#"kind = "basic", username = "AB>CD?x""#,
        &["/items"],
    )
    .await;
    let response = client()
        .get(format!("{}/v/items", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    for encoder in ["php", "dotnet", "gson"] {
        let sent = answer[encoder].as_str().unwrap();
        assert!(sent.starts_with("Basic ***"), "{encoder}: {sent}");
        assert!(
            sent["Basic ".len()..].bytes().all(|b| b == b'*'),
            "{encoder}: {sent}"
        );
    }
    let sent = vendor.last().header("authorization").unwrap();
    assert!(sent.contains('/') && sent.contains('+') && sent.ends_with('='));
    gw.stop().await;
}

#[tokio::test]
async fn credentials_are_injected_in_each_form_and_caller_supplied_ones_stripped() {
    use base64::Engine as _;
    let (_, seen) = injected(r#"kind = "bearer""#).await;
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {VENDOR_KEY}")
    );

    let (_, seen) = injected(r#"kind = "basic", username = "AC42""#).await;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("AC42:{VENDOR_KEY}"));
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Basic {expected}")
    );

    let (_, seen) = injected(r#"kind = "header", name = "x-api-key""#).await;
    assert_eq!(seen.header("x-api-key").unwrap(), VENDOR_KEY);
    assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1);
    assert!(seen.header("authorization").is_none());

    let (_, seen) = injected(r#"kind = "query", param = "api_key""#).await;
    assert_eq!(
        seen.target,
        format!("/items?page=2&x-api-key=1&api_key={VENDOR_KEY}")
    );
    assert!(seen.header("authorization").is_none());
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    // A second granted caller on `stripe`, and a second integration (`twin`, the same limit)
    // granted to `checkout`: each (caller, integration) has its own bucket.
    let more = format!(
        r#"
[[grants]]
caller = "reporting"
integration = "stripe"
operations = ["get_charge"]

[[integrations]]
name = "twin"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
rate_limit = {{ requests_per_second = 1, burst = 2 }}
operations = [ {{ id = "get_charge", method = "GET", path = "/v1/charges/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "twin"
operations = ["get_charge"]
"#,
        port = vendor.addr.port()
    );
    let gw = stripe_gateway_with(
        &vendor,
        "rate_limit = { requests_per_second = 1, burst = 2 }",
        &more,
    )
    .await;
    let url = format!("{}/stripe/v1/charges/ch_1", gw.base);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client()
            .get(&url)
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry_after));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    // `checkout`'s bucket on `stripe` is empty (the 429 above); the other two are full.
    let status = |token: String, integration: &str| {
        let url = format!("{}/{integration}/v1/charges/ch_1", gw.base);
        async move {
            let response = client().get(url).bearer_auth(token).send().await.unwrap();
            response.status().as_u16()
        }
    };
    assert_eq!(status(REPORTING_TOKEN.to_string(), "stripe").await, 200);
    assert_eq!(status(gw.token.clone(), "twin").await, 200);
    assert_eq!(vendor.seen().len(), 4);
    gw.stop().await;
}

/// Concurrency limits: with `max_concurrent_calls_per_caller = 2`, `max_concurrent_calls = 3`
/// and a vendor answering 2 s after each request, `checkout`'s third call at once is refused
/// `429 too_many_concurrent_calls` while its two run; `reporting`'s first takes the third
/// place and its second is refused `503 concurrency_limited`; both with `Retry-After: 1`. The
/// open calls show in `/metrics`, and once the calls are answered their places are free again.
#[tokio::test]
async fn calls_past_a_callers_share_or_the_integrations_concurrency_limit_are_refused() {
    let vendor = TestVendor::answering_after(Duration::from_millis(2000)).await;
    let more = r#"
[[grants]]
caller = "reporting"
integration = "stripe"
operations = ["get_charge"]
"#;
    let gw = stripe_gateway_with(
        &vendor,
        "max_concurrent_calls = 3\nmax_concurrent_calls_per_caller = 2",
        more,
    )
    .await;
    let call = |token: &str| {
        let request = client()
            .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
            .bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, retry_after, body["error"]["code"].clone())
        }
    };
    // Waits (bounded: 1.5 s, well inside the vendor's delay) until `/metrics` shows `wanted`.
    let until_metrics_show = |wanted: &'static str| {
        let gw = &gw;
        async move {
            for _ in 0..30 {
                if gw.metrics().await.contains(wanted) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("/metrics never showed {wanted}:\n{}", gw.metrics().await);
        }
    };
    let checkout = [tokio::spawn(call(&gw.token)), tokio::spawn(call(&gw.token))];
    until_metrics_show(r#"postern_caller_calls_open{integration="stripe",caller="checkout"} 2"#)
        .await;
    let refused = call(&gw.token).await;
    assert_eq!(
        refused,
        (429, Some("1".into()), "too_many_concurrent_calls".into())
    );
    let reporting = tokio::spawn(call(REPORTING_TOKEN));
    until_metrics_show(r#"postern_calls_open{integration="stripe"} 3"#).await;
    let refused = call(REPORTING_TOKEN).await;
    assert_eq!(
        refused,
        (503, Some("1".into()), "concurrency_limited".into())
    );
    for running in checkout.into_iter().chain([reporting]) {
        assert_eq!(running.await.unwrap().0, 200);
    }
    // Every place is back.
    let (again, other) = tokio::join!(call(&gw.token), call(REPORTING_TOKEN));
    assert_eq!((again.0, other.0), (200, 200));
    until_metrics_show(r#"postern_calls_open{integration="stripe"} 0"#).await;
    let events = gw.wait_events(7).await;
    let reasons: Vec<_> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "too_many_concurrent_calls")
            .count(),
        1
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "concurrency_limited")
            .count(),
        1
    );
    assert_eq!(vendor.seen().len(), 5);
    gw.stop().await;
}

/// Every address class the SSRF guard must refuse, as the upstream host.
#[tokio::test]
async fn ssrf_guard_refuses_every_internal_address_class() {
    let hosts = [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("100.64.0.1", "shared_cgnat"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("[::1]", "loopback"),
        ("[fc00::1]", "unique_local"),
        ("[fd12:3456::1]", "unique_local"),
        ("[fe80::1]", "link_local"),
        ("[::ffff:127.0.0.1]", "ipv4_mapped"),
        ("[::ffff:169.254.169.254]", "ipv4_mapped"),
        ("[64:ff9b::7f00:1]", "nat64"),
        ("[2002:7f00:1::1]", "6to4"),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "teredo"),
        ("[ff02::1]", "multicast"),
        ("[::]", "unspecified"),
        ("2130706433", "loopback"),
        ("0x7f.1", "loopback"),
    ];
    let mut body = String::new();
    for (index, (host, _)) in hosts.iter().enumerate() {
        body.push_str(&format!(
            r#"
[[integrations]]
name = "target{index}"
vendor = "V"
owner = "o@example.com"
upstream = "https://{host}"
operations = [ {{ id = "op", method = "GET", path = "/x" }} ]

[[grants]]
caller = "checkout"
integration = "target{index}"
operations = ["*"]
"#
        ));
    }
    let gw = TestGateway::start(&body, None).await;
    for (index, (host, class)) in hosts.iter().enumerate() {
        let response = client()
            .get(format!("{}/target{index}/x", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{host}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_address_denied", "{host}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(class),
            "{host}: {body}"
        );
    }
    let events = gw.wait_events(hosts.len()).await;
    assert!(events
        .iter()
        .all(|e| e["reason"] == "upstream_address_denied" && e["upstream_addr"].is_null()));
    gw.stop().await;
}

/// An upstream that is Postern itself (its admin listener here; a reload points the
/// integration there, the port being known only once bound) is refused once connected, though
/// `allow_private_networks` lets its address through: `502 upstream_is_postern`, recorded.
#[tokio::test]
async fn an_upstream_that_is_postern_itself_is_refused() {
    let body = r#"
[[integrations]]
name = "loop"
vendor = "V"
owner = "o@example.com"
upstream = "http://127.0.0.1:9"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
operations = [ { id = "health", method = "GET", path = "/healthz" } ]

[[grants]]
caller = "checkout"
integration = "loop"
operations = ["*"]
"#;
    let gw = TestGateway::start(body, None).await;
    let mut upstream = "http://127.0.0.1:9".to_string();
    for own in [gw.running().admin_addr, gw.running().listen_addr] {
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let next = format!("http://{own}");
        std::fs::write(&gw.config_path, text.replace(&upstream, &next)).unwrap();
        upstream = next;
        let config = postern_config::load(&gw.config_path).unwrap();
        gw.running().reload(config).unwrap();
        let response = client()
            .get(format!("{}/loop/healthz", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        assert_refused(response, 502, "upstream_is_postern").await;
    }
    let events = gw.wait_events(2).await;
    assert!(
        events.iter().all(|e| e["reason"] == "upstream_is_postern"),
        "{events:#?}"
    );
    gw.stop().await;
}

/// Answers each lookup with the next of its addresses (the last again once they run out) and
/// keeps the names it was asked for: a vendor name that rebinds.
#[derive(Debug)]
struct Rebinding {
    answers: Vec<std::net::IpAddr>,
    lookups: std::sync::Mutex<Vec<String>>,
}

impl postern_netguard::Resolve for Rebinding {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> postern_netguard::Lookup<'a> {
        let mut lookups = self.lookups.lock().unwrap();
        lookups.push(host.to_string());
        let ip = self.answers[(lookups.len() - 1).min(self.answers.len() - 1)];
        Box::pin(async move { Ok(vec![std::net::SocketAddr::new(ip, port)]) })
    }
}

/// A Stripe-like gateway (`extra` in its integration, `gateway_extra` in `[gateway]`) whose
/// vendor is reached by the name `LocalHost`, looked up by `resolver`.
async fn by_name_gateway(
    vendor: &TestVendor,
    extra: &str,
    gateway_extra: &str,
    resolver: Arc<dyn postern_netguard::Resolve>,
) -> TestGateway {
    let body = stripe_like(vendor, extra).replace(
        &format!("https://127.0.0.1:{}", vendor.addr.port()),
        &format!("https://LocalHost:{}", vendor.addr.port()),
    );
    start_with_key_and_resolver(
        &body,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        gateway_extra,
        Some(resolver),
    )
    .await
}

/// Answers every lookup with the same addresses (the port asked for is dialled, whatever
/// port an answer holds).
#[derive(Debug)]
struct Fixed(Vec<std::net::SocketAddr>);

impl postern_netguard::Resolve for Fixed {
    fn lookup<'a>(&'a self, _host: &'a str, _port: u16) -> postern_netguard::Lookup<'a> {
        let addrs = self.0.clone();
        Box::pin(async move { Ok(addrs) })
    }
}

/// The vendor's name resolves to two addresses, the first dropping every connect (its accept
/// queue full; 127.0.0.2, on the vendor's port): Postern races them (Happy Eyeballs), so the
/// call goes through the second after the 250 ms attempt delay, not after the first's
/// `connect_timeout_ms` (10 s here).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_vendor_address_that_drops_connects_costs_the_attempt_delay_not_the_timeout() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let silent = std::net::SocketAddr::from(([127, 0, 0, 2], vendor.addr.port()));
    let (_, _listener, _queued) = full_listener_at(silent).await;
    let resolver = Arc::new(Fixed(vec![silent, vendor.addr]));
    let body = stripe_like(&vendor, "connect_timeout_ms = 10000")
        .replace(
            &format!("https://127.0.0.1:{}", vendor.addr.port()),
            &format!("https://LocalHost:{}", vendor.addr.port()),
        )
        .replace("[\"127.0.0.1/32\"]", "[\"127.0.0.0/30\"]");
    let gw = start_with_key_and_resolver(
        &body,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        "",
        Some(resolver),
    )
    .await;
    let started = std::time::Instant::now();
    let response = get_charge(&client(), &gw).await.unwrap();
    assert_eq!(response.status(), 200);
    // The first address was tried first, and waited for its attempt delay.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["upstream_addr"], vendor.addr.to_string());
    gw.stop().await;
}

/// A name server that never answers.
#[derive(Debug)]
struct Silent;

impl postern_netguard::Resolve for Silent {
    fn lookup<'a>(&'a self, _host: &'a str, _port: u16) -> postern_netguard::Lookup<'a> {
        Box::pin(std::future::pending())
    }
}

/// A vendor name whose lookup never ends does not hold the call: the lookup is bounded by
/// `connect_timeout_ms`, and the call gets `502 upstream_unresolvable`.
#[tokio::test]
async fn a_lookup_that_never_ends_is_bounded_by_the_connect_timeout() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = by_name_gateway(&vendor, "connect_timeout_ms = 300", "", Arc::new(Silent)).await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        get_charge(&client(), &gw),
    )
    .await
    .expect("answered, not held by the lookup")
    .unwrap();
    assert_eq!(answer.status(), 502);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unresolvable", "{body}");
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// Postern resolves the vendor's host itself for each new connection, never from an earlier
/// answer (issue 2's "resolution is done for each new connection"): a name that first answers
/// with the vendor's address and then with an internal one (DNS rebinding) has its next
/// connection refused, `502 upstream_address_denied`, and nothing dialled; a pooled connection
/// is reused without a lookup, and the name's next good answer is dialled again.
#[tokio::test]
async fn the_vendor_host_is_resolved_again_for_each_new_connection() {
    // The vendor closes its connection after answering `/v1/charges/close`.
    let vendor = TestVendor::tls_http1(Arc::new(|request: &SeenRequest| {
        let mut answer = Answer::json(200, serde_json::json!({"ok": true}));
        if request.target.ends_with("/close") {
            answer.headers.push(("connection", "close".to_string()));
        }
        answer
    }))
    .await;
    let rebinding = Arc::new(Rebinding {
        answers: ["127.0.0.1", "10.0.0.7", "127.0.0.1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect(),
        lookups: Default::default(),
    });
    // One worker: every call shares one pool, whichever connection it comes on.
    let gw = by_name_gateway(&vendor, "", "workers = 1", rebinding.clone()).await;
    let lookups = || rebinding.lookups.lock().unwrap().len();
    let caller = client();
    let get = |id: &str| {
        caller
            .get(format!("{}/stripe/v1/charges/{id}", gw.base))
            .bearer_auth(&gw.token)
            .send()
    };
    let status = |id: &'static str| async move {
        let response = get(id).await.unwrap();
        let status = response.status();
        response.bytes().await.unwrap();
        status
    };
    assert_eq!(status("ch_1").await, 200);
    assert_eq!(lookups(), 1);
    // The pooled connection: no lookup.
    assert_eq!(status("ch_2").await, 200);
    assert_eq!(status("close").await, 200);
    assert_eq!(lookups(), 1);
    // A new connection: the name now answers with an internal address.
    let refused = get("ch_3").await.unwrap();
    assert_eq!(refused.status(), 502);
    let answer: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "upstream_address_denied");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private"),
        "{answer}"
    );
    assert_eq!(lookups(), 2);
    // Nothing is remembered either way: the next answer is the vendor's again.
    assert_eq!(status("ch_4").await, 200);
    assert_eq!(lookups(), 3);
    assert_eq!(*rebinding.lookups.lock().unwrap(), ["localhost"; 3]);
    let targets: Vec<String> = vendor.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/charges/ch_1",
            "/v1/charges/ch_2",
            "/v1/charges/close",
            "/v1/charges/ch_4"
        ]
    );
    assert_eq!(vendor.connections(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn untrusted_vendor_certificate_is_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    // No ca_file: the throwaway CA is not in the webpki roots.
    let body = stripe_like(&vendor, "").replace("ca_file = \"{ca}\"\n", "");
    let gw = start_with_key(&body, None, "stripe-key", VENDOR_KEY, "").await;
    let response = get_charge(&client(), &gw).await.unwrap();
    assert_refused(response, 502, "upstream_tls_error").await;
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// A redirect is passed back, not followed; one to another origin is flagged in the event and
/// left as written, one to the vendor's own origin (a path from its root, or its own absolute
/// URL) is rewritten to go through Postern, and a relative one is left to resolve against the
/// URL the caller called, unless it climbs out of the integration (`../../../payroll/…`, which
/// would have the caller's client call another integration on its grants): that one is removed
/// and flagged.
#[tokio::test]
async fn redirects_are_not_followed_and_off_origin_ones_are_flagged() {
    // The vendor's own port, known once it listens (h2 carries no `Host` to read it from).
    let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let own = port.clone();
    // Postern's own port, as a caller on this machine reaches it.
    let gateway_port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let postern = gateway_port.clone();
    let handler: Handler = Arc::new(move |request: &SeenRequest| {
        let postern = postern.load(std::sync::atomic::Ordering::Relaxed);
        let location = match request.target.rsplit('/').next().unwrap_or("") {
            "ch_away" => "https://evil.example.net/steal".to_string(),
            // Postern's own address, by another loopback name than the caller's: a client
            // following it would call another integration with the caller's token.
            "ch_postern" => format!("http://localhost:{postern}/payroll/v1/transfers"),
            "ch_postern_in" => format!("http://127.0.0.1:{postern}/stripe/v1/charges/ch_9"),
            "ch_climb" => "../../../payroll/v1/transfers".to_string(),
            "ch_same" | "ch_two" => "/v1/charges/ch_other".to_string(),
            // Read apart by URL parsers; the fragment is never sent.
            "ch_apart" => "/payroll/v1/transfers#\\".to_string(),
            "ch_home" => "/v1/charges/ch_other".to_string(),
            "ch_own" => format!(
                "https://127.0.0.1:{}/v1/charges/ch_x?expand=a",
                own.load(std::sync::atomic::Ordering::Relaxed)
            ),
            _ => "ch_next".to_string(),
        };
        let mut headers = vec![("location", location.clone())];
        match request.target.rsplit('/').next().unwrap_or("") {
            // The same line twice is one; two different ones are removed.
            "ch_same" => headers.push(("location", location)),
            "ch_two" => headers.push(("location", "/payroll/v1/transfers".to_string())),
            _ => {}
        }
        Answer {
            status: 308,
            headers,
            body: bytes::Bytes::new(),
        }
    });
    let vendor = TestVendor::tls(handler).await;
    port.store(vendor.addr.port(), std::sync::atomic::Ordering::Relaxed);
    let gw = stripe_gateway(&vendor, "").await;
    let gateway = url::Url::parse(&gw.base).unwrap().port().unwrap();
    gateway_port.store(gateway, std::sync::atomic::Ordering::Relaxed);
    let inside = format!("http://127.0.0.1:{gateway}/stripe/v1/charges/ch_9");
    let cases = [
        ("ch_away", "https://evil.example.net/steal"),
        ("ch_home", "/stripe/v1/charges/ch_other"),
        ("ch_own", "/stripe/v1/charges/ch_x?expand=a"),
        ("ch_rel", "ch_next"),
        ("ch_climb", ""),
        ("ch_apart", ""),
        ("ch_same", "/stripe/v1/charges/ch_other"),
        ("ch_two", ""),
        ("ch_postern", ""),
        ("ch_postern_in", inside.as_str()),
    ];
    for (id, location) in cases {
        let response = client()
            .get(format!("{}/stripe/v1/charges/{id}", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            308,
            "the redirect is passed back, not followed"
        );
        let sent = response.headers().get("location");
        assert_eq!(
            sent.map_or("", |value| value.to_str().unwrap()),
            location,
            "{id}"
        );
    }
    assert_eq!(vendor.seen().len(), cases.len());
    let events = gw.wait_events(cases.len()).await;
    let flagged = |event: &serde_json::Value| event.get("redirect_off_origin").is_some();
    assert_eq!(events[0]["redirect_off_origin"], true);
    for event in &events[1..4] {
        assert!(!flagged(event), "{event}");
    }
    assert_eq!(events[4]["redirect_off_origin"], true, "the climb out");
    assert_eq!(events[5]["redirect_off_origin"], true, "read apart");
    assert!(!flagged(&events[6]), "{}", events[6]);
    assert_eq!(events[7]["redirect_off_origin"], true, "two Locations");
    assert_eq!(
        events[8]["redirect_off_origin"], true,
        "Postern's own address"
    );
    assert_eq!(
        events[9]["redirect_off_origin"], true,
        "off the vendor's origin"
    );
    gw.stop().await;
}

/// Every integration shares Postern's origin: a vendor's cookie comes back kept to its
/// integration's paths (`Path` mapped, `Domain` dropped, a cookie without a `Path` given the
/// integration's), so a caller's cookie jar never hands it to another vendor.
#[tokio::test]
async fn vendor_cookies_are_kept_to_their_integrations_paths() {
    let handler: Handler = Arc::new(|_: &SeenRequest| Answer {
        status: 200,
        headers: vec![
            (
                "set-cookie",
                "sid=s3cr3t; Path=/; Domain=127.0.0.1; HttpOnly".to_string(),
            ),
            ("set-cookie", "cart=2; Path=/v1/charges".to_string()),
            ("set-cookie", "pref=1".to_string()),
        ],
        body: bytes::Bytes::from_static(b"{}"),
    });
    let vendor = TestVendor::tls(handler).await;
    let gw = stripe_gateway(&vendor, "").await;
    let response = client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "sid=s3cr3t; HttpOnly; Path=/stripe",
            "cart=2; Path=/stripe/v1/charges",
            "pref=1; Path=/stripe"
        ]
    );
    gw.stop().await;
}

/// A client speaking h2c with prior knowledge: its calls share one connection to the gateway,
/// so one worker serves them all.
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// `GET /stripe/v1/charges/ch_1` as `checkout`, on `client`.
fn get_charge(
    client: &reqwest::Client,
    gw: &TestGateway,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    get_charge_id(client, gw, "ch_1")
}

/// `GET /stripe/v1/charges/<id>` as `checkout`, on `client`.
fn get_charge_id(
    client: &reqwest::Client,
    gw: &TestGateway,
    id: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    client
        .get(format!("{}/stripe/v1/charges/{id}", gw.base))
        .bearer_auth(&gw.token)
        .send()
}

/// A Stripe-like gateway for `vendor` whose caller connections idle out after 300 ms.
async fn short_idle_gateway(vendor: &TestVendor) -> TestGateway {
    stripe_gateway_tuned(vendor, "", "idle_timeout_ms = 300").await
}

/// `[gateway] idle_timeout_ms` closes an idle caller connection, but not one whose call waits
/// for its vendor longer than that: over h2c (hyper's server) and over HTTP/1.1 with a chunked
/// upload (handed to hyper) as on Postern's own HTTP/1.1 server, a call answered after three
/// idle periods gets its answer. An idle connection is then closed.
#[tokio::test]
async fn the_caller_idle_limit_spares_a_call_waiting_on_its_vendor() {
    use tokio::io::AsyncReadExt;
    let vendor = TestVendor::answering_after(Duration::from_millis(900)).await;
    let gw = short_idle_gateway(&vendor).await;
    let response = get_charge(&h2c_client(), &gw).await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let chunks = futures_stream(vec![b"amount=".to_vec(), b"100".to_vec()]);
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut own_server = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    get_charge_kept_alive(&mut own_server, &gw.token).await;
    // Idle now: closed after the limit (bounded: 5 s).
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), own_server.read(&mut byte))
        .await
        .expect("the idle connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let events = gw.wait_events(3).await;
    assert!(events.iter().all(|e| e["status"] == 200), "{events:#?}");
    gw.stop().await;
}

/// An HTTP/2 caller whose bytes move no call — PINGs alone, or PINGs beside a request whose
/// answer it grants no flow-control window for (`SETTINGS_INITIAL_WINDOW_SIZE` 0), one every
/// 100 ms — does not hold its connection past the idle limit (300 ms here): it is closed
/// within two idle periods, where before it stayed open as long as PINGs came. (A head
/// trickled in CONTINUATION frames is cut by the h2 library itself after a few frames.)
/// Bounded: 5 s of PINGs.
#[tokio::test]
async fn an_http2_connection_whose_bytes_move_no_call_is_closed_at_the_idle_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = short_idle_gateway(&vendor).await;
    let frame = h2_frame;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    let ping = frame(PING, 0, 0, &[7; 8]);
    // `GET /` (HPACK: :method GET, :path /, :scheme http, :authority x): answered 401 with a
    // body the caller takes none of.
    let stalled = frame(
        HEADERS,
        END_STREAM_AND_HEADERS,
        1,
        &[0x82, 0x84, 0x86, 0x41, 0x01, b'x'],
    );
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    let no_window = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
    for (what, settings, first) in [
        ("PINGs", frame(SETTINGS, 0, 0, &[]), ping.clone()),
        ("PINGs beside a stalled answer", no_window, stalled),
    ] {
        let next = ping.clone();
        let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap();
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        opening.extend(settings);
        opening.extend(first);
        stream.write_all(&opening).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        let closed_after = loop {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: the connection was still open after 5 s"
            );
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break started.elapsed(),
                // SETTINGS, their acknowledgement, PING answers.
                Ok(Ok(_)) => continue,
                Err(_) => {
                    if stream.write_all(&next).await.is_err() {
                        break started.elapsed();
                    }
                }
            }
        };
        assert!(
            closed_after < Duration::from_millis(2000),
            "{what}: closed after {closed_after:?}"
        );
    }
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// An HTTP/2 caller that stops taking its answer (it grants no more flow-control window) waits
/// on nobody but itself: the idle limit still closes its connection, and the call is recorded
/// as cut short by its caller (`caller_stalled`).
#[tokio::test]
async fn an_http2_caller_that_stops_reading_is_still_closed_at_the_idle_limit() {
    let vendor = TestVendor::tls(big_or_ok(4 * 1024 * 1024)).await;
    let gw = short_idle_gateway(&vendor).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build()
        .unwrap();
    let response = get_charge_id(&h2c, &gw, "ch_big").await.unwrap();
    assert_eq!(response.status(), 200);
    // The answer is left unread: the caller's window fills and Postern has nothing to send.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the body ended (bounded: 10 s)");
    assert!(
        body.is_err(),
        "the whole body arrived: the connection was not closed"
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["incomplete"], true, "{events:#?}");
    // Whichever check finds it first — the answer's own or the connection's — names the caller.
    assert_eq!(events[0]["reason"], "caller_stalled", "{events:#?}");
    gw.stop().await;
}

/// An HTTP/1.1 caller that stops reading a large answer is cut at the idle limit, on
/// Postern's own server (a plain GET) and on hyper's (a GET with a chunked empty body, which
/// Postern's server hands over), and the call is recorded `incomplete` with reason
/// `caller_stalled`. Bounded: 5 s per connection.
#[tokio::test]
async fn an_http1_caller_that_stops_reading_is_cut_and_recorded_as_stalled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(big_or_ok(8 * 1024 * 1024)).await;
    let gw = short_idle_gateway(&vendor).await;
    let token = &gw.token;
    for (done, (server, extra)) in [
        ("Postern's", ""),
        ("hyper's", "transfer-encoding: chunked\r\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap();
        let body = if extra.is_empty() { "" } else { "0\r\n\r\n" };
        let request = format!(
            "GET /stripe/v1/charges/ch_big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n{extra}\r\n{body}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // The head comes; then nothing more is read until the connection has been cut.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "{server}");
        let events = gw.wait_events(done + 1).await;
        let event = &events[done];
        assert_eq!(event["reason"], "caller_stalled", "{server}: {events:#?}");
        assert_eq!(event["incomplete"], true, "{server}");
        assert_eq!(event["status"], 200, "{server}");
        // And the connection was closed.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(
            matches!(read.await, Ok(Ok(_) | Err(_))),
            "{server}: still open"
        );
        assert!(
            rest.len() < 8 * 1024 * 1024,
            "{server}: the whole body came"
        );
    }
    gw.stop().await;
}

/// A streamed answer that pauses between its pieces (an event stream, a model's tokens), to
/// an HTTP/1.1 caller that stops reading: the write that blocks comes after a pause, while the
/// answer last waited on its vendor, and the call is still recorded `caller_stalled` (the
/// caller's fault, not the vendor's). Bounded: the vendor trickles 10,000 chunks at most.
#[tokio::test]
async fn an_http1_caller_that_stops_reading_a_paused_stream_is_recorded_as_stalled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, vendor) = trickling(10_000, 4096, Duration::from_millis(1), false).await;
    let gw = TestGateway::start_with_gateway(
        &slow_integration(port, 20_000, ""),
        None,
        "idle_timeout_ms = 300",
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.running().listen_addr).await.unwrap();
    let request = format!(
        "GET /slow/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        gw.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let event = gw.wait_events(1).await.remove(0);
    assert_eq!(event["reason"], "caller_stalled", "{event:#}");
    assert_eq!(event["incomplete"], true);
    vendor.abort();
    gw.stop().await;
}

/// An HTTP/2 caller that stops taking one answer while its other streams keep moving (so its
/// connection never goes idle) does not hold that call: within two idle periods (300 ms here)
/// the stalled answer is cut, recorded `incomplete` with reason `caller_stalled`, and its place
/// under `max_concurrent_calls_per_caller = 1` given back, so the next call on the same
/// connection is served; the stalled stream is reset. Bounded: 5 s of calls.
#[tokio::test]
async fn an_http2_answer_its_caller_stops_taking_is_cut_while_other_streams_move() {
    let vendor = TestVendor::tls(big_or_ok(4 * 1024 * 1024)).await;
    let gw = stripe_gateway_tuned(
        &vendor,
        "max_concurrent_calls_per_caller = 1",
        "idle_timeout_ms = 300",
    )
    .await;
    // The stream's window is small, the connection's large: the stalled answer fills its own
    // window only, and the other streams still get theirs.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(16 * 1024 * 1024)
        .build()
        .unwrap();
    let stalled = get_charge_id(&h2c, &gw, "ch_big").await.unwrap();
    assert_eq!(stalled.status(), 200);
    // The place is held: the next call is refused until the stalled one is cut.
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never served after 5 s: {statuses:?}"
        );
        let status = get_charge(&h2c, &gw).await.unwrap().status().as_u16();
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses[0], 429, "the stalled call held its place at first");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "cut after {:?}",
        started.elapsed()
    );
    let body = tokio::time::timeout(Duration::from_secs(5), stalled.bytes())
        .await
        .expect("the stalled body ended (bounded: 5 s)");
    assert!(body.is_err(), "the stalled stream was reset");
    let events = gw.wait_events(statuses.len() + 1).await;
    let cut: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "caller_stalled")
        .collect();
    assert_eq!(cut.len(), 1, "{events:#?}");
    assert_eq!(cut[0]["incomplete"], true);
    assert_eq!(cut[0]["status"], 200);
    gw.stop().await;
}

#[tokio::test]
async fn http2_on_both_sides() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let h2c = h2c_client();
    let response = get_charge(&h2c, &gw).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        vendor.last().version,
        http::Version::HTTP_2,
        "ALPN h2 to the vendor"
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["protocol"], "HTTP/2");
    // More calls on the same client connection (so the same worker), one after another and
    // then four at once: all of them share the worker's one h2 connection to the vendor (its
    // stream limit, hyper's default of 200, leaves room).
    let call = || get_charge(&h2c, &gw);
    for _ in 0..3 {
        assert_eq!(call().await.unwrap().status(), 200);
    }
    let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
    for response in [a, b, c, d] {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(vendor.seen().len(), 8);
    assert_eq!(
        vendor.connections(),
        1,
        "one pooled h2 connection carried every call"
    );
    gw.stop().await;
}

/// A vendor answering `GET …/ch_big` with `big` bytes of `z`, and anything else with
/// `{"ok": true, "bytes": <request body length>}`.
fn big_or_ok(big: usize) -> Handler {
    Arc::new(move |request: &SeenRequest| {
        if request.target.ends_with("ch_big") {
            Answer {
                status: 200,
                headers: vec![],
                body: bytes::Bytes::from(vec![b'z'; big]),
            }
        } else {
            Answer::json(
                200,
                serde_json::json!({"ok": true, "bytes": request.body.len()}),
            )
        }
    })
}

/// Over TLS to a vendor that speaks only HTTP/1.1, Postern's own client carries the calls: one
/// connection for sequential calls, a chunked upload arrives whole and chunked, a sized one
/// with its length, and a large answer streams back intact.
#[tokio::test]
async fn an_http1_vendor_over_tls_gets_whole_requests_on_one_connection() {
    let vendor = TestVendor::tls_http1(big_or_ok(300_000)).await;
    let gw = stripe_gateway(&vendor, "max_response_body_bytes = 1000000").await;
    let url = format!("{}/stripe/v1/charges", gw.base);
    // One client connection, so every call is served by the same worker (and its pool).
    let caller = client();
    for _ in 0..3 {
        let response = get_charge(&caller, &gw).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["bytes"], 0);
    }
    let chunks = futures_stream(vec![vec![b'a'; 300], vec![b'b'; 300], vec![b'c'; 5]]);
    let response = caller
        .post(&url)
        .bearer_auth(&gw.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["bytes"], 605);
    let chunked = vendor.last();
    assert_eq!(chunked.version, http::Version::HTTP_11);
    assert_eq!(
        chunked.header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(chunked.header("content-length"), None);
    let mut expected = vec![b'a'; 300];
    expected.extend_from_slice(&[b'b'; 300]);
    expected.extend_from_slice(&[b'c'; 5]);
    assert_eq!(&chunked.body[..], &expected[..]);
    assert_eq!(
        chunked.header("authorization").as_deref(),
        Some(format!("Bearer {VENDOR_KEY}").as_str())
    );

    let response = caller
        .post(&url)
        .bearer_auth(&gw.token)
        .body("amount=500&currency=eur")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["bytes"], 23);
    let sized = vendor.last();
    assert_eq!(sized.header("content-length").as_deref(), Some("23"));
    assert_eq!(&sized.body[..], b"amount=500&currency=eur");

    let response = get_charge_id(&caller, &gw, "ch_big").await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().all(|b| *b == b'z'));
    assert_eq!(
        vendor.connections(),
        1,
        "every call took the one pooled connection"
    );
    gw.stop().await;
}

/// The vendor sees its own host in `Host`, never the caller's: over HTTP/1.1 as the header
/// (with the port, which is not the scheme's default), over h2 as `:authority` alone.
#[tokio::test]
async fn the_vendor_sees_its_own_host_never_the_callers() {
    let plain = TestVendor::plain(TestVendor::ok_handler()).await;
    let body = format!(
        r#"
[[integrations]]
name = "plain"
vendor = "Plain"
owner = "o@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
operations = [ {{ id = "op", method = "GET", path = "/x" }} ]

[[grants]]
caller = "checkout"
integration = "plain"
operations = ["*"]
"#,
        port = plain.addr.port()
    );
    let gw = TestGateway::start(&body, None).await;
    let response = client()
        .get(format!("{}/plain/x", gw.base))
        .bearer_auth(&gw.token)
        .header("host", "caller.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = plain.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.header("host").as_deref(),
        Some(format!("127.0.0.1:{}", plain.addr.port()).as_str())
    );
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    gw.stop().await;

    let tls = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&tls, "").await;
    assert_eq!(get_charge(&h2c_client(), &gw).await.unwrap().status(), 200);
    let seen = tls.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.header("host"), None, "h2 carries :authority only");
    gw.stop().await;
}

/// Each caller has its own h2 vendor connections, as it has its own HTTP/1.1 ones
/// (`a_stray_vendor_answer_never_reaches_another_caller`): an h2 connection fails all its
/// streams at once, so one caller must not be able to fail another's calls through it
/// (`a_caller_not_reading_an_answer_in_small_frames_fails_no_other_callers_call`). Two callers
/// over one client connection, so one worker: the second's first eight calls at once share the
/// one connection opened for them, since the first found the vendor speaks h2 (they made nine
/// before `Pool::h2_anywhere`), and later calls reuse each caller's own.
#[tokio::test]
async fn each_caller_has_its_own_h2_vendor_connection() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let reporting = "[[grants]]\ncaller = \"reporting\"\nintegration = \"stripe\"\noperations = [\"get_charge\"]\n";
    let gw = stripe_gateway_with(&vendor, "", reporting).await;
    let h2c = h2c_client();
    let call = |token: &'static str| {
        h2c.get(format!("{}/stripe/v1/charges/ch_1", gw.base))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(call(REPORTING_TOKEN).await.unwrap().status(), 200);
    assert_eq!(vendor.connections(), 1);
    let burst = futures_util::future::join_all((0..8).map(|_| call(CHECKOUT_TOKEN))).await;
    for response in burst {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(vendor.connections(), 2);
    for token in [REPORTING_TOKEN, CHECKOUT_TOKEN] {
        assert_eq!(call(token).await.unwrap().status(), 200);
    }
    assert_eq!(vendor.last().version, http::Version::HTTP_2);
    assert_eq!(vendor.connections(), 2);
    gw.stop().await;
}

/// A gateway whose worker serving `h2c` (one client connection, so one worker) knows `vendor`
/// speaks h2 but holds no connection to it: one call made the connection, and the pool's sweep
/// (every second with `idle_timeout_ms = 1000`) closed it, ~2 s in.
async fn known_h2_vendor_no_connection(
    vendor: &TestVendor,
    extra: &str,
    h2c: &reqwest::Client,
) -> TestGateway {
    let gw = stripe_gateway(vendor, &format!("idle_timeout_ms = 1000\n{extra}")).await;
    assert_eq!(get_charge(h2c, &gw).await.unwrap().status(), 200);
    assert_eq!(vendor.connections(), 1);
    until_closed(vendor, 1).await;
    gw
}

/// Waits (up to 15 s) until `vendor` has seen `count` connections closed.
async fn until_closed(vendor: &TestVendor, count: usize) {
    for _ in 0..150 {
        if vendor.closed() == count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(vendor.closed(), count, "the idle connections were closed");
}

/// `get_charge`'s status, once its body has been read whole (so the call has ended on
/// Postern's side, its vendor stream released).
fn answered_status(
    h2c: &reqwest::Client,
    gw: &TestGateway,
) -> impl std::future::Future<Output = u16> + Send + 'static {
    let call = get_charge(h2c, gw);
    async move {
        let response = call.await.unwrap();
        let status = response.status().as_u16();
        response.bytes().await.unwrap();
        status
    }
}

/// `calls` `get_charge` calls at once on `h2c`'s one connection (so on one worker): their
/// statuses, once all are answered, bodies read (within 60 s).
async fn burst(gw: &TestGateway, h2c: &reqwest::Client, calls: usize) -> Vec<u16> {
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..calls {
        burst.spawn(answered_status(h2c, gw));
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), burst.join_all())
        .await
        .expect("the burst is answered")
}

#[tokio::test]
async fn a_burst_to_a_known_h2_vendor_with_no_open_connection_opens_one() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let h2c = h2c_client();
    let gw = known_h2_vendor_no_connection(&vendor, "", &h2c).await;
    // One of the eight dials, the others wait for its connection instead of opening seven more.
    assert_eq!(burst(&gw, &h2c, 8).await, [200; 8]);
    assert_eq!(vendor.seen().len(), 9);
    assert_eq!(vendor.connections(), 2, "one new connection for the burst");
    gw.stop().await;
}

/// A vendor whose h2 connections take one stream at a time, each answer 300 ms after its
/// request: a call that finds every connection at the vendor's limit opens another instead of
/// waiting in one for a stream (a burst of eight is answered in about one answer's time, well
/// under the eight it takes one after another), and the connections opened so are kept for
/// the next bursts.
#[tokio::test]
async fn calls_past_an_h2_vendors_stream_limit_open_another_connection() {
    let answer_after = std::time::Duration::from_millis(300);
    let vendor = TestVendor::tls_with_stream_limit(TestVendor::ok_handler(), 1, answer_after).await;
    let h2c = h2c_client();
    let gw = stripe_gateway(&vendor, "").await;
    // One call first: the worker then holds a connection to an origin it knows speaks h2, with
    // a limit of one stream.
    assert_eq!(get_charge(&h2c, &gw).await.unwrap().status(), 200);
    for round in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(burst(&gw, &h2c, 8).await, [200; 8]);
        assert!(
            started.elapsed() < answer_after * 7,
            "burst {round} took {:?}: its calls waited for streams one after another",
            started.elapsed()
        );
        assert_eq!(vendor.connections(), 8, "after burst {round}");
    }
    assert_eq!(vendor.seen().len(), 25);
    assert!(vendor
        .seen()
        .iter()
        .all(|seen| seen.version == http::Version::HTTP_2));
    gw.stop().await;
}

/// A worker opens at most 64 connections to an h2 origin for room, those being opened counted:
/// with a vendor allowing one stream per connection, 70 calls at once open 63 beside the one it
/// holds, and the 6 past the cap wait for a stream in one of them (the burst takes two answers'
/// time, not one). Once all are closed as idle, the next 70 calls find none pooled: 64 dial and
/// the 6 past the cap wait for one being opened.
#[tokio::test]
async fn past_64_connections_to_an_h2_vendor_calls_wait_for_a_stream() {
    let answer_after = std::time::Duration::from_millis(1000);
    let vendor = TestVendor::tls_with_stream_limit(TestVendor::ok_handler(), 1, answer_after).await;
    let h2c = h2c_client();
    let gw = stripe_gateway(&vendor, "idle_timeout_ms = 1000").await;
    assert_eq!(get_charge(&h2c, &gw).await.unwrap().status(), 200);
    let burst_of_seventy = || async {
        let started = std::time::Instant::now();
        assert_eq!(burst(&gw, &h2c, 70).await, [200; 70]);
        assert!(
            started.elapsed() >= answer_after * 2,
            "the burst took {:?}: no call waited for a stream",
            started.elapsed()
        );
    };
    burst_of_seventy().await;
    assert_eq!(vendor.connections(), 64);
    until_closed(&vendor, 64).await;
    burst_of_seventy().await;
    assert_eq!(vendor.connections(), 128);
    gw.stop().await;
}

/// An h2 connection is idle only while no call runs on it: two connections kept busy (a limit
/// of one stream, answers after 1.5 s) past `idle_timeout_ms` (1 s) are still pooled when their
/// calls end, and the next two calls take them rather than dial.
#[tokio::test]
async fn an_h2_connection_busy_past_idle_timeout_is_not_idle() {
    let answer_after = std::time::Duration::from_millis(1500);
    let vendor = TestVendor::tls_with_stream_limit(TestVendor::ok_handler(), 1, answer_after).await;
    let h2c = h2c_client();
    let gw = stripe_gateway(&vendor, "idle_timeout_ms = 1000").await;
    let call = || answered_status(&h2c, &gw);
    let later = || async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        call().await
    };
    // The first call dials; the second, finding it full, opens another.
    assert_eq!(tokio::join!(call(), later()), (200, 200));
    assert_eq!(vendor.connections(), 2);
    assert_eq!(tokio::join!(call(), call()), (200, 200));
    assert_eq!(vendor.connections(), 2, "the busy connections were kept");
    gw.stop().await;
}

/// A vendor allowing four streams per connection, with no connection open: of a burst of eight,
/// four share the connection the first opens (it waits for its SETTINGS, so the limit is
/// known), the fifth finds no room there and opens one for the other three.
#[tokio::test]
async fn calls_wait_for_a_connection_being_opened_only_as_far_as_its_limit_leaves_room() {
    let answer_after = std::time::Duration::from_millis(300);
    let vendor = TestVendor::tls_with_stream_limit(TestVendor::ok_handler(), 4, answer_after).await;
    let h2c = h2c_client();
    let gw = known_h2_vendor_no_connection(&vendor, "", &h2c).await;
    assert_eq!(burst(&gw, &h2c, 8).await, [200; 8]);
    assert_eq!(vendor.seen().len(), 9);
    assert_eq!(vendor.connections(), 3, "two new connections for the burst");
    gw.stop().await;
}

/// Postern closes an HTTP/1.1 vendor connection that idled out in order: over TLS a
/// `close_notify` before the end, so the vendor sees a close rather than a truncation. (An h2
/// one is closed by hyper, GOAWAY first; a vendor may then end the connection before it reads
/// the rest, so there is nothing steady to check there.)
#[tokio::test]
async fn idle_vendor_connections_are_closed_with_close_notify() {
    let vendor = TestVendor::tls_http1(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "idle_timeout_ms = 1000").await;
    assert_eq!(answered_status(&client(), &gw).await, 200);
    until_closed(&vendor, 1).await;
    assert_eq!(vendor.clean_closes(), 1, "no close_notify before the end");
    gw.stop().await;
}

/// Calls waiting for a connection being opened give their place back when they are cancelled:
/// while one call opens a connection to a vendor allowing four streams, three calls wait for
/// it and their callers give up; three more calls that come after them wait for the same
/// connection too, rather than each dialling one (as they did when the cancelled calls' places
/// stayed taken).
#[tokio::test]
async fn calls_cancelled_while_waiting_for_a_connection_give_their_place_back() {
    let no_wait = std::time::Duration::ZERO;
    let vendor = TestVendor::tls_with_stream_limit(TestVendor::ok_handler(), 4, no_wait).await;
    let h2c = h2c_client();
    let gw = known_h2_vendor_no_connection(&vendor, "", &h2c).await;
    vendor.stall_new_connections(std::time::Duration::from_millis(1500));
    let pause = |millis| tokio::time::sleep(std::time::Duration::from_millis(millis));
    let opener = tokio::spawn(answered_status(&h2c, &gw));
    // Its connection is accepted (and stalled) before any other call comes.
    for _ in 0..100 {
        if vendor.connections() == 2 {
            break;
        }
        pause(20).await;
    }
    assert_eq!(vendor.connections(), 2, "the first call dialled");
    // On the same client connection as the others, so on the same worker and its pool.
    let mut cancelled = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let impatient = h2c
            .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
            .bearer_auth(&gw.token)
            .timeout(std::time::Duration::from_millis(300));
        cancelled.spawn(impatient.send());
    }
    for gave_up in cancelled.join_all().await {
        assert!(gave_up.unwrap_err().is_timeout());
    }
    pause(100).await;
    let later = burst(&gw, &h2c, 3);
    assert_eq!(later.await, [200; 3]);
    assert_eq!(opener.await.unwrap(), 200);
    assert_eq!(
        vendor.connections(),
        2,
        "the later calls shared the connection being opened"
    );
    gw.stop().await;
}

/// The other side of the burst above: the call that dials a known h2 vendor fails, and the
/// calls waiting for its connection are woken at once and dial for themselves (each failing
/// on its own) instead of waiting out `request_timeout_ms`.
#[tokio::test]
async fn calls_waiting_on_a_failed_h2_dial_dial_for_themselves() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let h2c = h2c_client();
    let gw = known_h2_vendor_no_connection(&vendor, "request_timeout_ms = 60000", &h2c).await;
    vendor.refuse_new_connections();
    let started = std::time::Instant::now();
    assert_eq!(burst(&gw, &h2c, 8).await, [502; 8]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "answered in {:?}, not at once",
        started.elapsed()
    );
    // The first connection, then one dial per call: the one that opened for the others and
    // seven that dialled for themselves once it failed.
    assert_eq!(vendor.connections(), 9);
    gw.stop().await;
}

/// `[gateway] max_connections_per_source`: a client address holds at most that many
/// connections; one more is closed at once (and counted in `/metrics`), and a place comes back
/// when one of its connections closes. A reload changes the cap (`0`: none).
#[tokio::test]
async fn a_client_address_holds_at_most_max_connections_per_source() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway_tuned(&vendor, "", "max_connections_per_source = 2").await;
    let url = format!("{}/stripe/v1/charges/ch_1", gw.base);
    // Each client its own pool: one connection, kept open between its calls.
    let call = |client: &reqwest::Client| {
        let request = client.get(&url).bearer_auth(&gw.token).send();
        async move { request.await.map(|answer| answer.status().as_u16()) }
    };
    let (first, second, third) = (client(), client(), client());
    assert_eq!(call(&first).await.unwrap(), 200);
    assert_eq!(call(&second).await.unwrap(), 200);
    assert!(call(&third).await.is_err(), "a third connection was served");
    assert!(
        gw.metrics()
            .await
            .contains("postern_connections_refused_per_source_total 1"),
        "{}",
        gw.metrics().await
    );
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        if call(&client()).await.is_ok_and(|status| status == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the closed connection's place did not come back");
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let uncapped = text.replace(
        "max_connections_per_source = 2",
        "max_connections_per_source = 0",
    );
    assert_ne!(text, uncapped);
    std::fs::write(&gw.config_path, uncapped).unwrap();
    let notes = gw
        .running()
        .reload(postern_config::load(&gw.config_path).unwrap())
        .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let more: Vec<reqwest::Client> = (0..3).map(|_| client()).collect();
    for client in &more {
        assert_eq!(call(client).await.unwrap(), 200);
    }
    assert_eq!(call(&second).await.unwrap(), 200);
    gw.stop().await;
}

/// A caller `billing` known by its SPIFFE ID (no token), granted `get_charge` on `stripe`.
const SPIFFE_BILLING: &str = r#"
[[callers]]
name = "billing"
spiffe_id = "spiffe://example.org/billing"

[[grants]]
caller = "billing"
integration = "stripe"
operations = ["get_charge"]
"#;

/// A Stripe-like gateway for `vendor` with [`SPIFFE_BILLING`], its listener asking for
/// certificates `pki` signed (files in `staging`).
async fn billing_over_mtls(
    vendor: &TestVendor,
    pki: &TestPki,
    staging: &std::path::Path,
) -> TestGateway {
    let body = format!("{}\n{SPIFFE_BILLING}", stripe_like(vendor, ""));
    let listener = pki.mtls_listener(staging);
    start_with_key(
        &body,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        &listener,
    )
    .await
}

/// Where client certificates identify callers, no TLS session is resumed: a resumed session
/// carries the certificate of the handshake it resumes, not verified again, so a caller could
/// go on being its SPIFFE ID past the certificate's expiry. Each connection makes a full
/// handshake, and one presenting an expired certificate is refused.
#[tokio::test]
async fn an_mtls_identity_ends_with_its_certificate_not_resumed_past_it() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let gw = billing_over_mtls(&vendor, &pki, staging.path()).await;
    // A short-lived SVID. Long enough for two handshakes on a loaded machine, short for a test.
    let lifetime = Duration::from_secs(6);
    let (cert, key) = pki.short_lived_client_cert("spiffe://example.org/billing", lifetime);
    let mut config = pki.rustls_client(&cert, &key);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One client, one session cache: what a resuming client keeps between connections.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = gw.running().listen_addr;
    let call = || async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(
            b"GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>((kind, String::from_utf8_lossy(&answer).into_owned()))
    };
    let (first, answer) = call().await.unwrap();
    assert_eq!(first, Some(rustls::HandshakeKind::Full));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (second, answer) = call().await.unwrap();
    assert_eq!(
        second,
        Some(rustls::HandshakeKind::Full),
        "the second connection resumed the first's session"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::sleep(lifetime + Duration::from_secs(1)).await;
    // TLS 1.3: the client may finish its side before the server refuses the certificate,
    // so the refusal shows as an alert on the read or as no answer.
    if let Ok((kind, answer)) = call().await {
        assert!(
            !answer.starts_with("HTTP/1.1 200"),
            "an expired certificate was served ({kind:?}): {answer}"
        );
    }
    gw.stop().await;
}

/// An mTLS identity ends with its certificate on a connection kept open too: the handshake
/// verified the certificate, yet a request after its `notAfter` is refused (401, naming why)
/// and the connection closed (HTTP/1.1 by `connection: close`, h2 by a GOAWAY), so the client
/// reconnects with its current certificate.
#[tokio::test]
async fn an_mtls_identity_ends_with_its_certificate_on_a_connection_kept_open() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let gw = billing_over_mtls(&vendor, &pki, staging.path()).await;
    // Long enough for the first calls on a loaded machine, short for a test.
    let lifetime = Duration::from_secs(6);
    let (cert, key) = pki.short_lived_client_cert("spiffe://example.org/billing", lifetime);
    let addr = gw.running().listen_addr;
    let (h1, h2) = (
        pki.mtls_h1_client(&cert, &key, addr),
        pki.mtls_client_presenting(&cert, &key, addr),
    );
    let url = format!("https://localhost:{}/stripe/v1/charges/ch_1", addr.port());
    let first = h2.get(&url).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), first.version()),
        (200, http::Version::HTTP_2)
    );
    let first = h1.get(&url).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), first.version()),
        (200, http::Version::HTTP_11)
    );
    tokio::time::sleep(lifetime + Duration::from_secs(2)).await;
    // On the connections the first calls opened (a new one could not be made: the handshake
    // refuses an expired certificate).
    for client in [&h1, &h2] {
        let answer = client.get(&url).send().await.unwrap();
        assert_eq!(answer.status(), 401);
        if answer.version() == http::Version::HTTP_11 {
            assert_eq!(answer.headers()["connection"], "close");
        }
        let text = answer.text().await.unwrap();
        assert!(
            text.contains("has expired, or is no longer trusted"),
            "{text}"
        );
    }
    // HTTP/1.1's connection is closed: its next call needs a handshake, which is refused.
    assert!(
        h1.get(&url).send().await.is_err(),
        "a new connection with the expired certificate was served"
    );
    gw.stop().await;
}

/// A reload that takes a certificate's SPIFFE ID from the callers ends the identity of the
/// connections it opened: their next request without a caller token is refused, saying so,
/// and the connection closed, rather than refused on every request of a kept connection.
#[tokio::test]
async fn a_reload_that_unregisters_a_spiffe_id_closes_its_connections() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let gw = billing_over_mtls(&vendor, &pki, staging.path()).await;
    let (cert, key) = pki.client_cert("spiffe://example.org/billing");
    let addr = gw.running().listen_addr;
    let h1 = pki.mtls_h1_client(&cert, &key, addr);
    let url = format!("https://localhost:{}/stripe/v1/charges/ch_1", addr.port());
    assert_eq!(h1.get(&url).send().await.unwrap().status(), 200);
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let moved = config.replace(
        "spiffe_id = \"spiffe://example.org/billing\"",
        "spiffe_id = \"spiffe://example.org/billing-v2\"",
    );
    assert_ne!(config, moved);
    std::fs::write(&gw.config_path, moved).unwrap();
    gw.running()
        .reload(postern_config::load(&gw.config_path).unwrap())
        .unwrap();
    let answer = h1.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["connection"], "close");
    let text = answer.text().await.unwrap();
    assert!(text.contains("no caller's `spiffe_id`"), "{text}");
    // A connection whose calls identified a caller by token goes on after that refusal, as
    // after any refusal of a request of its.
    let with_tokens = pki.mtls_h1_client(&cert, &key, addr);
    let by_token = with_tokens.get(&url).bearer_auth(&gw.token).send().await;
    assert_eq!(by_token.unwrap().status(), 200);
    let answer = with_tokens.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(answer.headers().get("connection").is_none());
    gw.stop().await;
}

/// The listener's trust is read again at each reload, and asked of open connections at their
/// next request: a certificate `client_crl` now lists is refused on the connection it opened
/// (and at the next handshake), one it does not list goes on; a `client_ca` that no longer
/// holds their CA ends the others' identity too.
#[tokio::test]
async fn a_reload_that_revokes_a_client_certificate_ends_its_open_connections() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let crl_path = staging.path().join("client.crl");
    std::fs::write(&crl_path, pki.revocation_list(&[])).unwrap();
    let listener = format!(
        "{}\nclient_crl = \"{}\"",
        pki.mtls_listener(staging.path()),
        crl_path.display()
    );
    let body = format!("{}\n{SPIFFE_BILLING}", stripe_like(&vendor, ""));
    let gw = start_with_key(
        &body,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        &listener,
    )
    .await;
    let addr = gw.running().listen_addr;
    let serial = |serial: u64| {
        move |params: &mut rcgen::CertificateParams| {
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
        }
    };
    let (cert_a, key_a) = pki.client_cert_with("spiffe://example.org/billing", serial(1001));
    let (cert_b, key_b) = pki.client_cert_with("spiffe://example.org/billing", serial(1002));
    let (a, b) = (
        pki.mtls_client_presenting(&cert_a, &key_a, addr),
        pki.mtls_client_presenting(&cert_b, &key_b, addr),
    );
    let url = format!("https://localhost:{}/stripe/v1/charges/ch_1", addr.port());
    let status = |client: &reqwest::Client| {
        let request = client.get(&url).send();
        async move { request.await.map(|answer| answer.status().as_u16()) }
    };
    assert_eq!(status(&a).await.unwrap(), 200);
    assert_eq!(status(&b).await.unwrap(), 200);
    let reload = || {
        let config = postern_config::load(&gw.config_path).unwrap();
        gw.running().reload(config)
    };

    std::fs::write(&crl_path, pki.revocation_list(&[1001])).unwrap();
    reload().unwrap();
    assert_eq!(
        status(&a).await.unwrap(),
        401,
        "a revoked certificate's open connection"
    );
    // (A new client: `a`'s h2 connection, told to close, may still take a stream or two.)
    let fresh_a = pki.mtls_client_presenting(&cert_a, &key_a, addr);
    assert!(
        status(&fresh_a).await.is_err(),
        "a handshake with a revoked certificate was accepted"
    );
    assert_eq!(
        status(&b).await.unwrap(),
        200,
        "a certificate the list does not name"
    );
    let fresh_b = pki.mtls_client_presenting(&cert_b, &key_b, addr);
    assert_eq!(status(&fresh_b).await.unwrap(), 200);

    // Another CA (with its own list): b's connection, opened under the old one, is refused.
    let other = TestPki::new();
    std::fs::write(staging.path().join("client-ca.pem"), &other.ca_pem).unwrap();
    std::fs::write(&crl_path, other.revocation_list(&[])).unwrap();
    reload().unwrap();
    assert_eq!(
        status(&b).await.unwrap(),
        401,
        "b's connection under a CA no longer trusted"
    );
    gw.stop().await;
}

/// A reload reads the listener's certificate and key again: new connections get the rotated
/// certificate, connections already open keep theirs, and a certificate that does not match
/// its key is refused at its key's place, the running one kept.
#[tokio::test]
async fn a_reload_rotates_the_listener_certificate_for_new_connections() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let (old, new) = (TestPki::new(), TestPki::new());
    let staging = tempfile::tempdir().unwrap();
    let (cert, key) = (
        staging.path().join("gw.pem"),
        staging.path().join("gw-key.pem"),
    );
    std::fs::write(&cert, &old.server_cert_pem).unwrap();
    std::fs::write(&key, &old.server_key_pem).unwrap();
    let listener = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let gw = start_with_key(
        &stripe_like(&vendor, ""),
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        &listener,
    )
    .await;
    let addr = gw.running().listen_addr;
    let trusting = |pki: &TestPki| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", addr)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/stripe/v1/charges/ch_1", addr.port());
    let status = |client: &reqwest::Client| {
        let request = client.get(&url).bearer_auth(&gw.token).send();
        async move { request.await.map(|answer| answer.status().as_u16()) }
    };
    let before = trusting(&old);
    assert_eq!(status(&before).await.unwrap(), 200);
    let reload = || {
        let config = postern_config::load(&gw.config_path).unwrap();
        gw.running().reload(config)
    };

    std::fs::write(&cert, &new.server_cert_pem).unwrap();
    std::fs::write(&key, &new.server_key_pem).unwrap();
    reload().unwrap();
    assert_eq!(
        status(&before).await.unwrap(),
        200,
        "the open connection goes on"
    );
    assert!(
        status(&trusting(&old)).await.is_err(),
        "a new connection was served the old certificate"
    );
    assert_eq!(status(&trusting(&new)).await.unwrap(), 200);

    // Half a rotation: the old key beside the new certificate. The rest of the reload applies;
    // the running certificate stays, and the notes say why.
    std::fs::write(&key, &old.server_key_pem).unwrap();
    let notes = reload().unwrap();
    assert!(
        notes
            .iter()
            .any(|note| note.contains("do not match") && note.contains("point `tls_key` at")),
        "{notes:?}"
    );
    assert_eq!(
        status(&trusting(&new)).await.unwrap(),
        200,
        "the running certificate stays"
    );
    // What a change to a TLS file does: the files alone, read again, refused alike.
    let refused = gw.running().reload_listener_tls().unwrap_err().to_string();
    assert!(
        refused.contains("do not match") && refused.contains("point `tls_key` at"),
        "{refused}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("postern_listener_tls_stale 1"),
        "{metrics}"
    );
    // The served certificate's notAfter, for alerts on a rotation that did not happen.
    let expiry: i64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("postern_listener_certificate_expiry_seconds "))
        .and_then(|value| value.trim().parse().ok())
        .expect("postern_listener_certificate_expiry_seconds");
    assert!(
        expiry > time::OffsetDateTime::now_utc().unix_timestamp(),
        "{metrics}"
    );
    std::fs::write(&key, &new.server_key_pem).unwrap();
    gw.running().reload_listener_tls().unwrap();
    assert!(gw.metrics().await.contains("postern_listener_tls_stale 0"));
    let notes = reload().unwrap();
    assert!(
        !notes.iter().any(|note| note.contains("could not be used")),
        "{notes:?}"
    );
    assert!(gw.metrics().await.contains("postern_listener_tls_stale 0"));
    gw.stop().await;
}

#[tokio::test]
async fn tls_listener_with_mtls_spiffe_identity() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let gw = billing_over_mtls(&vendor, &pki, staging.path()).await;
    let base = format!("https://localhost:{}", gw.running().listen_addr.port());
    let root = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();

    // Token over TLS, no client certificate.
    let plain_tls = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .resolve("localhost", gw.running().listen_addr)
        .build()
        .unwrap();
    let response = plain_tls
        .get(format!("{base}/stripe/v1/charges/ch_1"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Client certificate with a registered SPIFFE ID, no token.
    let (client_cert, client_key) = pki.client_cert("spiffe://example.org/billing");
    let identity =
        reqwest::Identity::from_pem(format!("{client_cert}{client_key}").as_bytes()).unwrap();
    let with_identity = |builder: reqwest::ClientBuilder| {
        builder
            .add_root_certificate(root.clone())
            .identity(identity.clone())
            .resolve("localhost", gw.running().listen_addr)
            .build()
            .unwrap()
    };
    let mtls = with_identity(reqwest::Client::builder());
    let response = mtls
        .get(format!("{base}/stripe/v1/charges/ch_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = mtls
        .post(format!("{base}/stripe/v1/charges"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "billing is granted get_charge only");
    // A placeholder key an SDK insists on sending, or an empty caller-token header, is not a
    // caller token: nothing carrying its text is refused or stripped for it.
    let response = mtls
        .get(format!("{base}/stripe/v1/charges/ch_x?expand=x"))
        .header("authorization", "Bearer x")
        .header("postern-caller-token", "")
        .header("x-kind", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        vendor.last().header("x-kind").as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // The same identity over HTTP/1.1 (ALPN http/1.1: Postern's own HTTP/1.1 server; the
    // calls above negotiated h2, which hyper serves).
    let mtls_h1 = with_identity(reqwest::Client::builder().http1_only());
    for _ in 0..2 {
        let response = mtls_h1
            .get(format!("{base}/stripe/v1/charges/ch_1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        assert!(!response.bytes().await.unwrap().is_empty());
    }

    // A certificate with an unregistered SPIFFE ID is not a caller.
    let (other_cert, other_key) = pki.client_cert("spiffe://example.org/unknown");
    let stranger = reqwest::Client::builder()
        .add_root_certificate(root)
        .identity(
            reqwest::Identity::from_pem(format!("{other_cert}{other_key}").as_bytes()).unwrap(),
        )
        .resolve("localhost", gw.running().listen_addr)
        .build()
        .unwrap();
    let response = stranger
        .get(format!("{base}/stripe/v1/charges/ch_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // A caller without a token of its own still cannot hand the vendor one: its body is read
    // for what looks like any caller token `postern` made (another service's, here), plain or
    // escaped, and refused with none of the token forwarded (over h2 the body streams: the
    // vendor may have seen the request begin).
    let forwarded = vendor.seen().len();
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let percent = percent_encoded(&other).to_ascii_lowercase();
    for body in [
        format!("{{\"note\": \"{other}\"}}"),
        format!("note={percent}"),
        format!("{{\"session\": \"session-{other}\"}}"),
    ] {
        let response = mtls
            .get(format!("{base}/stripe/v1/charges/ch_1"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_refused(response, 400, "caller_token_in_body").await;
    }
    assert!(vendor.seen()[forwarded..].iter().all(|request| {
        let everything = request.everything();
        !everything.contains(&other[..8]) && !everything.contains(&percent[..24])
    }));

    let events = gw.wait_events(7).await;
    assert_eq!(events[1]["caller"], "billing");
    assert_eq!(events[1]["auth"], "mtls");
    for event in &events[4..6] {
        assert_eq!(event["caller"], "billing");
        assert_eq!(event["auth"], "mtls");
        assert_eq!(event["protocol"], "HTTP/1.1");
    }
    assert_eq!(forwarded, 5);
    gw.stop().await;
}

/// Sends one keep-alive `GET /stripe/v1/charges/ch_1` on `stream` and checks its answer starts
/// with a 200 (the rest of it may still be unread).
async fn get_charge_kept_alive<S>(stream: &mut S, token: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: postern\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
}

/// A connection speaks one protocol: after an HTTP/1.1 exchange an h2 preface is no request
/// (the connection ends, nothing of HTTP/2 sent), and a TLS client that chose h2 by ALPN and
/// sends HTTP/1.1 is not answered.
#[tokio::test]
async fn a_connection_keeps_the_protocol_it_began_with() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// All the connection sends until it closes (bounded: 5 s).
    async fn to_the_end<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the connection was closed");
        answer
    }
    // An empty SETTINGS frame.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    get_charge_kept_alive(&mut stream, &gw.token).await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(SETTINGS).await.unwrap();
    let after = to_the_end(&mut stream).await;
    assert!(
        after.is_empty(),
        "answered an h2 preface after HTTP/1.1: {after:?}"
    );
    gw.stop().await;

    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let gw = billing_over_mtls(&vendor, &pki, staging.path()).await;
    let (cert, key) = pki.client_cert("spiffe://example.org/billing");
    for (alpn, answered) in [(&b"h2"[..], false), (&b"http/1.1"[..], true)] {
        let mut config = pki.rustls_client(&cert, &key);
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(
            b"GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = String::from_utf8_lossy(&to_the_end(&mut tls).await).into_owned();
        assert_eq!(
            answer.starts_with("HTTP/1.1 200"),
            answered,
            "ALPN {}: {answer}",
            String::from_utf8_lossy(alpn)
        );
    }
    gw.stop().await;
}

/// A connection on which no request has identified a caller is closed after a refusal (`401`,
/// or a `400` or the forward proxy's refusal before a caller is known; HTTP/1.1:
/// `connection: close`, then the end, lingering; h2: a GOAWAY, then the end), so a peer without
/// a caller token cannot hold one of the listener's connection places by sending a request
/// each idle period. A connection that has identified a caller is kept after a `401` (a token
/// revoked or mistyped in one of its requests).
#[tokio::test]
async fn a_connection_that_identified_no_caller_closes_after_a_refusal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let addr = gw.running().listen_addr;
    let unidentified = b"GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: postern\r\nauthorization: Bearer pst_wrong\r\n\r\n";
    /// All the connection sends until it closes (bounded: 5 s).
    async fn to_the_end(stream: &mut tokio::net::TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the connection was closed")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    // HTTP/1.1, Postern's own server: the 401 says `connection: close`, and the connection
    // ends, the pipelined request behind it unanswered.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut pipelined = unidentified.to_vec();
    pipelined.extend_from_slice(unidentified);
    stream.write_all(&pipelined).await.unwrap();
    let answer = to_the_end(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 401").count(), 1, "{answer}");

    // Other refusals before a caller is known: a malformed path (400), an absolute-form
    // request without proxy credentials (the forward proxy's refusal), and a 401 after the
    // hand-over to hyper (a chunked upload, which Postern's own server leaves to it).
    for (request, status) in [
        (
            &b"GET /stripe/../x HTTP/1.1\r\nhost: postern\r\n\r\n"[..],
            "HTTP/1.1 400",
        ),
        (
            &b"GET http://api.example.test/x HTTP/1.1\r\nhost: api.example.test\r\n\r\n"[..],
            "HTTP/1.1 4",
        ),
        (
            &b"POST /stripe/v1/charges HTTP/1.1\r\nhost: postern\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"[..],
            "HTTP/1.1 401",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pipelined = request.to_vec();
        pipelined.extend_from_slice(unidentified);
        stream.write_all(&pipelined).await.unwrap();
        let answer = to_the_end(&mut stream).await;
        assert!(answer.starts_with(status), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }

    // Identified first: a later 401 on the same connection keeps it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_charge_kept_alive(&mut stream, &gw.token).await;
    stream.write_all(unidentified).await.unwrap();
    let mut answer = [0u8; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    get_charge_kept_alive(&mut stream, &gw.token).await;

    // h2 (prior knowledge, served by hyper): a GOAWAY after the 401, and the connection ends.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let ended = tokio::spawn(connection);
    let request = |token: &str| {
        http::Request::get(format!("http://{addr}/stripe/v1/charges/ch_1"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let response = send.send_request(request("pst_wrong")).await.unwrap();
    assert_eq!(response.status(), 401);
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the h2 connection ended after its 401")
        .unwrap()
        .unwrap();

    // h2, identified first: the connection stays after a 401 and serves the next call.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let ended = tokio::spawn(connection);
    assert_eq!(
        send.send_request(request(&gw.token))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send.send_request(request("pst_wrong"))
            .await
            .unwrap()
            .status(),
        401
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !ended.is_finished(),
        "the identified h2 connection was closed"
    );
    assert_eq!(
        send.send_request(request(&gw.token))
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

/// An idle keep-alive connection is closed as soon as the gateway stops, not at the end of
/// `shutdown_grace_ms`: each worker's connections hear of the shutdown through their own
/// channel, passed on by the worker's accept loop.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::AsyncReadExt;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let mut gw = stripe_gateway(&vendor, "").await;
    let addr = gw.running().listen_addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_charge_kept_alive(&mut stream, &gw.token).await;
    // The connection is now idle, kept alive; the default grace is 10 s.
    let started = std::time::Instant::now();
    gw.shut_down_for_events().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited {:?} for an idle connection",
        started.elapsed()
    );
    // Whatever of the answer was still unread, then the end of the stream.
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("the idle connection was closed")
    .ok();
}

/// A TLS caller's connection that Postern closes (here an idle keep-alive connection, at
/// shutdown) ends with a TLS `close_notify` alert before the TCP close (RFC 8446 §6.1): rustls
/// reads that as a clean end of stream, and a bare TCP close as an `UnexpectedEof` error.
#[tokio::test]
async fn postern_closes_a_tls_caller_connection_with_close_notify() {
    use tokio::io::AsyncReadExt;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let cert = staging.path().join("listener.pem");
    let key = staging.path().join("listener-key.pem");
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    let mut gw = stripe_gateway_tuned(
        &vendor,
        "",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    // Postern's own HTTP/1.1 server, not hyper's h2.
    let mut stream = tls_http1_client(tcp, &pki.ca_pem, "localhost").await;
    get_charge_kept_alive(&mut stream, &gw.token).await;
    gw.shut_down_for_events().await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("the idle connection was closed");
    assert!(
        end.is_ok(),
        "the connection ended without close_notify: {end:?}"
    );
}

#[tokio::test]
async fn slow_vendor_times_out_with_504() {
    let (port, hold, _accepts) = silent_vendor().await;
    let gw = TestGateway::start(&slow_integration(port, 300, ""), None).await;
    let started = std::time::Instant::now();
    let response = get_slow_x(&gw).await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    hold.abort();
    gw.stop().await;
}

/// An integration's own `max_header_bytes`, below the gateway's: a larger header section is
/// refused (`431 request_headers_too_large`, recorded as a denial) and not forwarded, from an
/// HTTP/1.1 caller and an h2 one alike; a smaller one passes.
#[tokio::test]
async fn an_integrations_header_limit_refuses_larger_requests_on_both_protocols() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "max_header_bytes = 1024").await;
    let h2c = h2c_client();
    for caller in [client(), h2c] {
        let call = |filler: usize| {
            caller
                .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
                .bearer_auth(&gw.token)
                .header("x-filler", "f".repeat(filler))
                .send()
        };
        assert_eq!(call(100).await.unwrap().status(), 200);
        let refused = call(1100).await.unwrap();
        assert_refused(refused, 431, "request_headers_too_large").await;
    }
    assert_eq!(
        vendor.seen().len(),
        2,
        "only the small requests were forwarded"
    );
    let events = gw.wait_events(4).await;
    let refused: Vec<_> = events.iter().filter(|e| e["status"] == 431).collect();
    assert_eq!(refused.len(), 2);
    assert!(refused
        .iter()
        .all(|e| e["decision"] == "deny" && e["reason"] == "request_headers_too_large"));
    gw.stop().await;
}

#[tokio::test]
async fn body_and_header_limits() {
    let vendor = TestVendor::tls(big_or_ok(5000)).await;
    let gw = stripe_gateway(
        &vendor,
        "max_request_body_bytes = 1000\nmax_response_body_bytes = 4000",
    )
    .await;
    let url = format!("{}/stripe/v1/charges", gw.base);

    // Declared too large: refused before anything is sent.
    let response = client()
        .post(&url)
        .bearer_auth(&gw.token)
        .body(vec![b'a'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(vendor.seen().is_empty());

    // Chunked (no Content-Length) and too large: refused while streaming. The vendor may have
    // seen the request begin, but never its whole body: the request is cut off (h2: reset)
    // before the byte past the limit.
    let chunks = futures_stream(vec![vec![b'a'; 600], vec![b'b'; 600]]);
    let response = client()
        .post(&url)
        .bearer_auth(&gw.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Whatever began to reach the vendor was cut off, never ended as a shorter body: the
    // vendor records a body it could not read whole as empty. (A moment for it to record.)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        vendor.seen().iter().all(|seen| seen.body.is_empty()),
        "part of the oversized body reached the vendor as a whole request: {:?}",
        vendor
            .seen()
            .iter()
            .map(|seen| seen.body.len())
            .collect::<Vec<_>>()
    );

    // Response declared larger than the cap.
    let response = get_charge_id(&client(), &gw, "ch_big").await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "response_too_large");
    // The same resource's HEAD: its length describes a body that is not sent, so nothing is
    // over the cap and the length reaches the caller.
    let head = raw_request(
        gw.running().listen_addr,
        format!(
            "HEAD /stripe/v1/charges/ch_big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
            gw.token
        )
        .as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 5000\r\n"), "{head}");

    // Oversized header block.
    let raw = raw_request(
        gw.running().listen_addr,
        format!(
            "GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nx-filler: {}\r\n\r\n",
            gw.token,
            "f".repeat(64 * 1024)
        )
        .as_bytes(),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 431"),
        "{}",
        &raw[..raw.len().min(200)]
    );
    // hyper's parser refused the head as it read it: recorded all the same, with no method.
    let events = gw.wait_events(5).await;
    let oversized = events.last().unwrap();
    assert_eq!(oversized["status"], 431, "{events:#?}");
    assert_eq!(oversized["reason"], "request_headers_too_large");
    assert_eq!(oversized["decision"], "deny");
    assert_eq!(oversized["method"], "");
    gw.stop().await;
}

/// A segment's path parameters (`;x`) are left out when the operation is found, as servers that
/// read them route it: `search;x` is the ungranted `search`, not an `{id}` of the granted one;
/// the path is forwarded as sent.
#[tokio::test]
async fn path_parameters_do_not_change_which_operation_a_path_is() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let acme = r#"
[[integrations]]
name = "acme"
vendor = "Acme"
owner = "o@example.com"
upstream = "https://127.0.0.1:PORT"
ca_file = "{ca}"
allow_private_networks = ["127.0.0.1/32"]
operations = [
  { id = "get_item", method = "GET", path = "/v1/items/{id}" },
  { id = "search_items", method = "GET", path = "/v1/items/search" },
]

[[grants]]
caller = "checkout"
integration = "acme"
operations = ["get_item"]
"#
    .replace("PORT", &vendor.addr.port().to_string());
    let gw = stripe_gateway_with(&vendor, "", &acme).await;
    let get = |path: &str| {
        client()
            .get(format!("{}/acme{path}", gw.base))
            .bearer_auth(&gw.token)
            .send()
    };
    assert_eq!(get("/v1/items/it_1;v=2").await.unwrap().status(), 200);
    assert_eq!(vendor.last().target, "/v1/items/it_1;v=2");
    let refused = get("/v1/items/search;x").await.unwrap();
    assert_refused(refused, 403, "not_granted").await;
    assert_eq!(vendor.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_and_never_reaches_the_vendor() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let addr = gw.running().listen_addr;
    let auth = format!("authorization: Bearer {}\r\n", gw.token);
    let cases: Vec<(String, &str)> = vec![
        ("GARBAGE\r\n\r\n".to_string(), "400"),
        (format!("GET /stripe/../stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/%2e%2e/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/%2E%2E HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/a%2fb HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/a%5cb HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1//charges HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        // `..;` climbs on servers that drop path parameters (Tomcat, Jetty): `{id}` would take it.
        (format!("GET /stripe/v1/charges/..;/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        // An encoded letter: a vendor decoding it first would route a literal the placeholder took.
        (format!("GET /stripe/v1/charges/%63h_1 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}x-evil: a\rb\r\nconnection: close\r\n\r\n"), "400"),
        (format!("GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}x-evil: a\nb\r\nconnection: close\r\n\r\n"), "400"),
        (format!("POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}content-length: 4\r\ncontent-length: 5\r\nconnection: close\r\n\r\nabcd"), "400"),
        // A transfer coding the framing does not undo: the body would reach the vendor coded.
        (format!("POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"), "501"),
        // Overlong UTF-8 for `..`: a lenient decoder behind the vendor climbs.
        (format!("GET /stripe/v1/charges/%c0%ae%c0%ae/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "400"),
        (format!("GET /nosuch/v1/x HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"), "404"),
    ];
    for (request, status) in &cases {
        let answer = raw_request(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "request {request:?} got {:?}",
            &answer[..answer.len().min(120)]
        );
    }
    assert!(
        vendor.seen().is_empty(),
        "bad input reached the vendor: {:?}",
        vendor.seen()
    );
    // Each is a recorded call, denied: those hyper's parser answered itself too (the garbage
    // line, CR and LF inside a header value, differing Content-Lengths), with nothing of the
    // request but its connection (no method, no target).
    let events = gw.wait_events(cases.len()).await;
    assert_eq!(events.len(), cases.len(), "{events:#?}");
    assert!(
        events.iter().all(|e| e["decision"] == "deny"),
        "{events:#?}"
    );
    let parser_refused: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "malformed_request")
        .collect();
    assert_eq!(parser_refused.len(), 4, "{events:#?}");
    for event in &parser_refused {
        assert_eq!(event["status"], 400, "{event}");
        assert_eq!(event["method"], "", "{event}");
        assert_eq!(event["integration"], serde_json::Value::Null, "{event}");
        assert_eq!(event["caller"], serde_json::Value::Null, "{event}");
        assert_eq!(event["path"], serde_json::Value::Null, "{event}");
        assert_eq!(event["source_ip"], "127.0.0.1", "{event}");
        assert_eq!(event["protocol"], "HTTP/1.1", "{event}");
    }

    // Content-Length together with Transfer-Encoding (a request-smuggling shape): refused,
    // nothing forwarded, and the connection closed after the answer, so nothing behind it (the
    // smuggled request here) is read as a request.
    let smuggle = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET /stripe/v1/charges/smuggled HTTP/1.1\r\nhost: x\r\n{auth}\r\n"
    );
    let answer = raw_request(addr, smuggle.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("conflicting_framing"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {answer}"
    );
    assert!(vendor.seen().is_empty(), "{:?}", vendor.seen());
    let mut refused = None;
    for _ in 0..200 {
        let events = gw.events().await;
        refused = events
            .into_iter()
            .find(|e| e["reason"] == "conflicting_framing");
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = refused.expect("the refusal is recorded");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["status"], 400);

    // `Transfer_Encoding: chunked` beside a Content-Length: Postern frames by the length and
    // would pass the underscore name on, which a CGI-style vendor (Unicorn) reads as
    // Transfer-Encoding, de-chunking the body into a request of its own: refused, nothing sent.
    let aliased = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}Transfer_Encoding: chunked\r\ncontent-length: 46\r\n\r\n0\r\n\r\nDELETE /v1/charges/ch_1 HTTP/1.1\r\nX-Ignore: x"
    );
    let answer = raw_request(addr, aliased.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("header_alias_refused"), "{answer}");
    assert!(vendor.seen().is_empty(), "{:?}", vendor.seen());

    // The admin listener shares the HTTP/1.1 server: there too the head is refused before any
    // handler runs, and the connection closed.
    let admin = raw_request(
        gw.running().admin_addr,
        format!(
            "GET /v1/integrations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET /v1/integrations HTTP/1.1\r\nhost: x\r\n\r\n",
            gw.admin_token
        )
        .as_bytes(),
    )
    .await;
    assert!(admin.starts_with("HTTP/1.1 400 "), "{admin}");
    assert!(admin.contains("conflicting_framing"), "{admin}");
    assert_eq!(admin.matches("HTTP/1.1 ").count(), 1, "{admin}");

    // The same behind a chunked upload on one connection (from which hyper's parser serves the
    // connection): hyper drops the Content-Length and frames by Transfer-Encoding, as RFC 9112
    // §6.3 has an intermediary do, and closes the connection after the answer, so here too no
    // request can be smuggled behind it.
    let behind_chunked = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{smuggle}"
    );
    let answer = raw_request(addr, behind_chunked.as_bytes()).await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        2,
        "two answers, then close: {answer}"
    );
    let seen = vendor.seen();
    let bodies: Vec<&[u8]> = seen.iter().map(|s| &s.body[..]).collect();
    assert_eq!(bodies, [&b"ok"[..], b"abcd"]);
    assert!(seen.iter().all(|s| !s.target.contains("smuggled")));
    gw.stop().await;
}

/// One connection carries ordinary requests (served by Postern's own HTTP/1.1 server) and then
/// requests that server leaves to hyper (a chunked upload, `Expect: 100-continue`, HTTP/1.0):
/// pipelined back to back, every one is answered in order, with the right body reaching the
/// vendor, and nothing is lost or repeated at the hand-over.
#[tokio::test]
async fn ordinary_and_unusual_requests_share_one_connection() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let addr = gw.running().listen_addr;
    let auth = format!("authorization: Bearer {}\r\n", gw.token);
    let pipelined = format!(
        "GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\n{auth}\r\n\
         POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}content-length: 5\r\nconnection: keep-alive\r\n\r\nfirst\
         HEAD /stripe/v1/charges/ch_2 HTTP/1.1\r\nhost: x\r\n{auth}\r\n\
         POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n\
         POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}content-length: 5\r\n\r\nthird\
         GET /stripe/v1/charges/ch_3 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"
    );
    let answer = raw_request(addr, pipelined.as_bytes()).await;
    assert_eq!(
        answer.matches("HTTP/1.1 200 OK\r\n").count(),
        6,
        "six answers in order: {answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let seen = vendor.seen();
    let got: Vec<(&str, &str, &[u8])> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str(), &s.body[..]))
        .collect();
    assert_eq!(
        got,
        vec![
            ("GET", "/v1/charges/ch_1", &b""[..]),
            ("POST", "/v1/charges", b"first"),
            ("HEAD", "/v1/charges/ch_2", b""),
            ("POST", "/v1/charges", b"second"),
            ("POST", "/v1/charges", b"third"),
            ("GET", "/v1/charges/ch_3", b""),
        ]
    );
    // The HEAD answer had no body: the next answer's status line follows its head directly.
    let head_answer = answer.split("HTTP/1.1 ").nth(3).unwrap();
    assert!(head_answer.ends_with("\r\n\r\n"), "{head_answer:?}");

    // Requests hyper takes from the first byte: HTTP/1.0, and a 100-continue upload.
    let http10 = format!("GET /stripe/v1/charges/ch_4 HTTP/1.0\r\nhost: x\r\n{auth}\r\n");
    let answer = raw_request(addr, http10.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    let expect = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\n{auth}content-length: 6\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nfourth"
    );
    let answer = raw_request(addr, expect.as_bytes()).await;
    assert!(answer.contains("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(&vendor.last().body[..], b"fourth");
    // Answered here; the vendor gets the whole body at once and no `Expect` to wait on.
    assert!(vendor.last().header("expect").is_none());
    gw.stop().await;
}

/// An answer with no body (to `HEAD`, a 204, a `content-length: 0`) is a whole call: recorded
/// complete, its audit outcome `granted`, whether the vendor speaks h2 or HTTP/1.1 and the
/// caller HTTP/1.1 or h2c.
#[tokio::test]
async fn answers_without_a_body_are_recorded_complete() {
    let handler: Handler = std::sync::Arc::new(|seen: &SeenRequest| Answer {
        status: if seen.target.ends_with("/gone") {
            204
        } else {
            200
        },
        headers: vec![],
        body: bytes::Bytes::new(),
    });
    for vendor in [
        TestVendor::tls(handler.clone()).await,
        TestVendor::tls_http1(handler.clone()).await,
    ] {
        let gw = stripe_gateway(&vendor, "").await;
        let head = format!(
            "HEAD /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
            gw.token
        );
        let answer = raw_request(gw.running().listen_addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for client in [client(), h2c_client()] {
            for (path, status) in [("gone", 204), ("empty", 200)] {
                let response = client
                    .get(format!("{}/stripe/v1/charges/{path}", gw.base))
                    .bearer_auth(&gw.token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), status);
                assert!(response.bytes().await.unwrap().is_empty());
            }
        }
        let events = gw.wait_events(5).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        for event in &events {
            assert_eq!(event["decision"], "allow", "{event}");
            assert!(event.get("incomplete").is_none(), "{event}");
            let outcome = audit_outcome(&gw, event["request_id"].as_str().unwrap()).await;
            assert_eq!(outcome.reason.as_deref(), Some("granted"), "{event}");
        }
        gw.stop().await;
    }
}

/// A caller that gives up while its call waits for the vendor — it closes its HTTP/1.1
/// connection, or resets its h2 stream — ends the call, and the call is still recorded:
/// `499 caller_closed`.
#[tokio::test]
async fn a_call_whose_caller_hangs_up_is_recorded_as_caller_closed() {
    let (port, hold, mut accepts) = silent_vendor().await;
    let gw = slow_gateway(port, "").await;

    // HTTP/1.1: the caller closes its connection.
    {
        let stream = call_slow_x(&gw).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), accepts.recv())
            .await
            .expect("the call reached the vendor");
        drop(stream);
    }
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["status"], 499, "{}", events[0]);
    assert_eq!(events[0]["reason"], "caller_closed");
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["protocol"], "HTTP/1.1");

    // h2 (prior knowledge): the caller gives up on the request, which resets its stream.
    let gave_up = h2c_client()
        .get(format!("{}/slow/x", gw.base))
        .bearer_auth(&gw.token)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err());
    let events = gw.wait_events(2).await;
    assert_eq!(events[1]["status"], 499, "{}", events[1]);
    assert_eq!(events[1]["reason"], "caller_closed");
    assert_eq!(events[1]["protocol"], "HTTP/2");
    hold.abort();
    gw.stop().await;
}

/// Sends `GET /slow/x` as `checkout` on a new HTTP/1.1 connection, and returns the connection.
async fn call_slow_x(gw: &TestGateway) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    let request = format!(
        "GET /slow/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        gw.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// `GET /slow/x` through the gateway with the caller's token, by an HTTP client.
async fn get_slow_x(gw: &TestGateway) -> reqwest::Response {
    client()
        .get(format!("{}/slow/x", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap()
}

/// A streamed answer (server-sent events, a model's tokens) that pauses while the vendor
/// thinks: a caller that hangs up during the pause ends the call at once — Postern closes its
/// vendor connection and records the call as `incomplete`, it does not wait for the vendor's
/// next chunk.
#[tokio::test]
async fn a_caller_that_leaves_a_paused_stream_ends_it() {
    use tokio::io::AsyncReadExt;
    // A chunked head and one chunk, then a pause.
    let (port, vendor, closed) = one_answer_vendor(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n",
    )
    .await;
    let gw = slow_gateway(port, "").await;
    let mut stream = call_slow_x(&gw).await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: 1") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the first chunk arrives")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("transfer-encoding: chunked"));
    drop(stream);
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("Postern closed its vendor connection when the caller left")
        .unwrap();
    assert_eq!(read, 0);
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["status"], 200);
    assert_eq!(events[0]["incomplete"], true, "{}", events[0]);
    vendor.abort();
    gw.stop().await;
}

/// A vendor that stops sending in the middle of its body, with the caller still waiting: after
/// the integration's `response_idle_timeout_ms` the body is cut, both connections close and the
/// call is recorded `incomplete` (`upstream_idle_timeout`), rather than holding the caller
/// until its connection's own idle limit.
#[tokio::test]
async fn a_vendor_that_stalls_mid_body_is_cut_after_idle_timeout() {
    let (port, vendor, closed) = stalling_vendor().await;
    let gw = slow_gateway(port, "response_idle_timeout_ms = 400").await;
    let started = std::time::Instant::now();
    let stream = call_slow_x(&gw).await;
    assert_cut_after_stall(
        stream,
        started,
        std::time::Duration::from_millis(400),
        closed,
    )
    .await;
    let event = stalled_call_event(gw, vendor).await;
    assert_eq!(event["status"], 200);
    assert_eq!(event["incomplete"], true, "{event}");
}

/// The one call's event, checked for `upstream_idle_timeout`, once the gateway has stopped.
async fn stalled_call_event(
    gw: TestGateway,
    vendor: tokio::task::JoinHandle<()>,
) -> serde_json::Value {
    let event = gw.wait_events(1).await.remove(0);
    assert_eq!(event["reason"], "upstream_idle_timeout", "{event}");
    vendor.abort();
    gw.stop().await;
    event
}

/// The same stall while a scanned integration reads the answer for scanning (nothing has gone
/// to the caller yet): the caller gets `504 upstream_idle_timeout`.
#[tokio::test]
async fn a_vendor_that_stalls_while_its_answer_is_scanned_gets_504() {
    let (port, vendor, closed) = one_answer_vendor(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n",
    )
    .await;
    let extra = "response_idle_timeout_ms = 400\ndata_classes = [\"pii.email\"]";
    let gw = slow_gateway(port, extra).await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), get_slow_x(&gw))
        .await
        .expect("answered well before 10 s");
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "upstream_idle_timeout", "{answer}");
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("Postern closed its vendor connection")
        .unwrap();
    assert_eq!(read, 0);
    assert_eq!(stalled_call_event(gw, vendor).await["status"], 504);
}

/// A plain-HTTP vendor that answers one request with a chunked body, `chunks` chunks of two
/// bytes (`0;`, `1;`, … `9;`, then again) 200 ms apart, then (`end`) the last chunk; it stops
/// early if the connection goes.
async fn trickling_vendor(chunks: usize, end: bool) -> (u16, tokio::task::JoinHandle<()>) {
    trickling(chunks, 1, Duration::from_millis(200), end).await
}

/// [`trickling_vendor`], each chunk its two bytes `repeat` times, `gap` apart.
async fn trickling(
    chunks: usize,
    repeat: usize,
    gap: Duration,
    end: bool,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let vendor = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = stream.read(&mut request).await.unwrap();
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head).await.unwrap();
        for i in 0..chunks {
            tokio::time::sleep(gap).await;
            let chunk = format!(
                "{:x}\r\n{}\r\n",
                2 * repeat,
                format!("{};", i % 10).repeat(repeat)
            );
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        if end {
            stream.write_all(b"0\r\n\r\n").await.unwrap();
            let _ = stream.read(&mut request).await;
        }
    });
    (port, vendor)
}

/// A slow stream is not a stalled one: each chunk restarts the clock, so six chunks 200 ms
/// apart (1.2 s in all) pass a 1 s `response_idle_timeout_ms` whole.
#[tokio::test]
async fn a_slow_but_steady_stream_is_not_cut() {
    let (port, vendor) = trickling_vendor(6, true).await;
    let extra = "response_idle_timeout_ms = 1000";
    let gw = slow_gateway(port, extra).await;
    let response = get_slow_x(&gw).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "0;1;2;3;4;5;");
    let event = gw.wait_events(1).await.remove(0);
    assert_eq!(event["reason"], "granted", "{event}");
    assert!(
        event.get("incomplete").is_none_or(|v| v == false),
        "{event}"
    );
    vendor.abort();
    gw.stop().await;
}

/// `total_timeout_ms` bounds the whole call whatever its pace: a vendor that trickles a chunk
/// every 200 ms (well inside `response_idle_timeout_ms`) has its body cut once the call has
/// lasted 1 s, recorded `incomplete` with `upstream_total_timeout`.
#[tokio::test]
async fn a_call_past_total_timeout_is_cut_however_steady_the_stream() {
    // 10 s of chunks at most; the test needs about 1.
    let (port, vendor) = trickling_vendor(50, false).await;
    let extra = "response_idle_timeout_ms = 1000\ntotal_timeout_ms = 1000";
    let gw = slow_gateway(port, extra).await;
    let started = std::time::Instant::now();
    let response = get_slow_x(&gw).await;
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(std::time::Duration::from_secs(8), response.bytes())
        .await
        .expect("the body ended well before the vendor stopped");
    assert!(body.is_err(), "the body was cut, not ended: {body:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(1000),
        "cut after {elapsed:?}"
    );
    let event = gw.wait_events(1).await.remove(0);
    assert_eq!(event["reason"], "upstream_total_timeout", "{event}");
    assert_eq!(event["incomplete"], true, "{event}");
    assert!(event["duration_ms"].as_f64().unwrap() >= 1000.0, "{event}");
    vendor.abort();
    gw.stop().await;
}

/// A vendor that has not answered when the call reaches `total_timeout_ms` (here sooner than
/// `request_timeout_ms`): `504 upstream_total_timeout`, at the total limit.
#[tokio::test]
async fn a_vendor_silent_past_total_timeout_gets_504() {
    let (port, hold, _accepts) = silent_vendor().await;
    let gw = slow_gateway(port, "total_timeout_ms = 500").await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), get_slow_x(&gw))
        .await
        .expect("answered well before request_timeout_ms");
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["error"]["code"], "upstream_total_timeout",
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("total_timeout_ms (500 ms)"),
        "{answer}"
    );
    hold.abort();
    gw.stop().await;
}

/// A caller whose upload has not arrived when `request_timeout_ms` runs out is told so (`408
/// request_body_timeout`): the vendor was not the one keeping the call waiting.
#[tokio::test]
async fn a_slow_upload_is_the_callers_timeout_not_the_vendors() {
    stalled_upload_is_refused("").await;
}

/// The same stalled upload to an integration whose bodies are scanned (read whole before
/// anything goes to the vendor): bound by the same limits, not held for good, and nothing
/// reaches the vendor.
#[tokio::test]
async fn a_slow_upload_to_a_scanned_integration_is_the_callers_timeout() {
    let accepted = stalled_upload_is_refused("data_classes = [\"pii.email\"]").await;
    assert_eq!(accepted, 0, "nothing reached the vendor");
}

/// A POST to a silent vendor's integration (with `extra` keys, 300 ms `request_timeout_ms`)
/// declaring 100 kB (streamed through hyper, past what Postern's server reads whole) and
/// sending 10 kB: `408 request_body_timeout`, recorded so. Returns the connections the vendor
/// accepted.
async fn stalled_upload_is_refused(extra: &str) -> usize {
    let (port, hold, mut accepts) = silent_vendor().await;
    // 300 ms: well inside the 2 s `raw_request` waits for the answer, on a busy machine too.
    let body = slow_integration(port, 300, extra).replace("method = \"GET\"", "method = \"POST\"");
    let gw = TestGateway::start(&body, None).await;
    let mut request = format!(
        "POST /slow/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100000\r\n\r\n",
        gw.token
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'a', 10_000));
    let answer = raw_request(gw.running().listen_addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(answer.contains("10000 of 100000 bytes"), "{answer}");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "request_body_timeout");
    assert_eq!(events[0]["request_bytes"], 10_000);
    let mut accepted = 0;
    while accepts.try_recv().is_ok() {
        accepted += 1;
    }
    hold.abort();
    gw.stop().await;
    accepted
}

/// A vendor that refuses a call on its head (`401`) while the caller is still uploading, and
/// then reads no more: the caller has the refusal at once, not when its upload ends (or
/// `request_timeout_ms`, here 20 s, runs out), and the event records the vendor's answer.
#[tokio::test]
async fn a_vendors_refusal_before_the_upload_ends_reaches_the_caller_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let vendor = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\nno key")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    });
    let body = slow_integration(port, 20_000, "").replace("method = \"GET\"", "method = \"POST\"");
    let gw = TestGateway::start(&body, None).await;
    // 100 kB declared (streamed, past what Postern's server reads whole), 10 kB sent.
    let mut request = format!(
        "POST /slow/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100000\r\n\r\n",
        gw.token
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'a', 10_000));
    let answer = raw_request(gw.running().listen_addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("no key"), "{answer}");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["status"], 401, "{}", events[0]);
    assert_eq!(events[0]["decision"], "allow", "{}", events[0]);
    vendor.abort();
    gw.stop().await;
}

/// A vendor that sends an answer nobody asked for (here a second one, 150 ms after the first on
/// each connection) puts an HTTP/1.1 connection one answer behind its requests. Another
/// caller's call never goes on that connection, so it never gets that answer: each caller has
/// its own vendor connections. (Both calls come over one caller connection, so one worker and
/// its one pool serve them.)
#[tokio::test]
async fn a_stray_vendor_answer_never_reaches_another_caller() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let vendor = tokio::spawn(async move {
        for conn in 1..=4 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                for call in 1..=4 {
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    head.clear();
                    let body = format!("conn{conn}-call{call}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if call == 1 {
                        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                        let stray = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray";
                        if stream.write_all(stray).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let body = format!(
        "{}\n[[grants]]\ncaller = \"reporting\"\nintegration = \"slow\"\noperations = [\"*\"]\n",
        slow_integration(port, 20_000, "")
    );
    let gw = TestGateway::start(&body, None).await;
    let http = client();
    let call = |token: &'static str| {
        http.get(format!("{}/slow/x", gw.base))
            .bearer_auth(token)
            .send()
    };
    let first = call(CHECKOUT_TOKEN).await.unwrap();
    assert_eq!(first.text().await.unwrap(), "conn1-call1");
    // At once, before the stray answer: on a shared connection it would be this call's.
    let other = call(REPORTING_TOKEN).await.unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(other.text().await.unwrap(), "conn2-call1");
    vendor.abort();
    gw.stop().await;
}

/// An integration removed by a reload takes its pooled vendor connections with it: the idle
/// connection closes at the reload, not `idle_timeout_ms` (here 90 s) later.
#[tokio::test]
async fn a_reload_that_removes_an_integration_closes_its_vendor_connections() {
    // A keep-alive answer; the connection then sits in the pool.
    let (port, vendor, closed) =
        one_answer_vendor(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let gw = slow_gateway(port, "").await;
    let response = get_slow_x(&gw).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");

    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let without = &text[..text.find("[[integrations]]").unwrap()];
    std::fs::write(&gw.config_path, without).unwrap();
    let config = postern_config::load(&gw.config_path).unwrap();
    gw.running().reload(config).unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("the removed integration's pooled connection closed at the reload")
        .unwrap();
    assert_eq!(read, 0);
    vendor.abort();
    gw.stop().await;
}

/// A call still waiting for its vendor when shutdown's grace runs out is cut, and recorded as
/// such: `503 gateway_shutdown`, not as a caller that left.
#[tokio::test]
async fn a_call_cut_by_shutdown_is_recorded_as_gateway_shutdown() {
    let (port, hold, mut accepts) = silent_vendor().await;
    let mut gw = TestGateway::start_with_gateway(
        &slow_integration(port, 20_000, ""),
        None,
        "shutdown_grace_ms = 200",
    )
    .await;
    let call = tokio::spawn({
        let url = format!("{}/slow/x", gw.base);
        let token = gw.token.clone();
        async move { client().get(url).bearer_auth(token).send().await }
    });
    tokio::time::timeout(std::time::Duration::from_secs(5), accepts.recv())
        .await
        .expect("the call reached the vendor");
    let events = gw.shut_down_for_events().await;
    assert!(call.await.unwrap().is_err(), "the cut call got no answer");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], 503);
    assert_eq!(events[0]["reason"], "gateway_shutdown");
    hold.abort();
}

/// The caller's token written with escapes a vendor undoes — percent-encoded in a form, `\u`
/// escapes in JSON, XML character references in a SOAP envelope, inside a gzip body too — is
/// refused, whole or streamed in 7-byte pieces;
/// the vendor never has the body, nor any piece of the token. (A gateway of its own: each
/// refusal resets an h2 stream, and a vendor counts the resets of a connection.)
#[tokio::test]
async fn a_caller_token_written_with_escapes_in_a_body_is_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let percent = percent_encoded(&gw.token);
    let json = json_escaped(&gw.token);
    // A JSON document percent-encoded in a form field, the token in it JSON-escaped.
    let document = percent_encoded(&format!("{{\"key\": \"{json}\"}}"));
    // JSON in a JSON string (a payload the vendor parses again).
    let payload = format!("{{\\\"key\\\": \\\"{}\\\"}}", json.replace('\\', "\\\\"));
    // Each character as an XML character reference, decimal and hex by turns.
    let xml: String = gw
        .token
        .bytes()
        .enumerate()
        .map(|(i, byte)| match i % 2 {
            0 => format!("&#{byte};"),
            _ => format!("&#x{byte:x};"),
        })
        .collect();
    let envelope = format!(
        "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><Charge><Amount>100</Amount><ApiKey>{xml}</ApiKey></Charge></soap:Body></soap:Envelope>"
    );
    let escaped = [
        ("identity", envelope.clone()),
        ("gzip", envelope),
        ("identity", format!("amount=100&key={percent}&currency=usd")),
        ("identity", format!("amount=100&metadata={document}")),
        ("identity", format!("{{\"payload\": \"{payload}\"}}")),
        (
            "identity",
            format!("{{\"amount\": 100, \"key\": \"{json}\"}}"),
        ),
        ("gzip", format!("amount=100&key={percent}&currency=usd")),
    ];
    for (encoding, text) in escaped {
        let body = match encoding {
            "gzip" => gzip(text.as_bytes()),
            _ => text.clone().into_bytes(),
        };
        let seen = vendor.seen().len();
        refused_whole_and_in_pieces(&gw, &vendor, encoding, &body).await;
        assert!(vendor.seen()[seen..].iter().all(|request| !request
            .everything()
            .contains(&percent[..9])
            && !request.everything().contains(&json[..18])
            && !request.everything().contains(&xml[..20])));
    }
    gw.stop().await;
}

/// The caller's token inside base64 text in a body — a `Basic` credential in a JSON document,
/// a document base64'd whole (URL-safe), inside a gzip body — or in a UTF-16 body, and another
/// caller's `postern`-made token base64'd (in a `Basic` credential, or alone, the base64 text
/// percent-encoded too) or in UTF-16
/// (either byte order, gzip'd too), are refused, whole or streamed in 7-byte pieces; the vendor
/// never has the body.
#[tokio::test]
async fn a_caller_token_base64d_or_in_utf16_in_a_body_is_refused() {
    use base64::Engine as _;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let standard = base64::engine::general_purpose::STANDARD;
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let basic = standard.encode(format!("AC42:{}", gw.token));
    let document = url_safe.encode(format!("{{\"api_key\": \"{}\"}}", gw.token));
    // Another caller's token, which no form of this caller's finds.
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let others = standard.encode(format!("AC42:{other}"));
    // The same with every character of the base64 text percent-encoded, in a form field.
    let others_escaped: String = others.bytes().map(|b| format!("%{b:02X}")).collect();
    let bodies = [
        (
            "identity",
            format!("amount=100&auth=Basic%20{others_escaped}"),
        ),
        (
            "identity",
            format!("{{\"webhook\": {{\"authorization\": \"Basic {others}\"}}}}"),
        ),
        ("gzip", format!("key={}", url_safe.encode(&other))),
        (
            "identity",
            format!("{{\"webhook\": {{\"headers\": {{\"authorization\": \"Basic {basic}\"}}}}}}"),
        ),
        ("identity", format!("amount=100&state={document}&x=1")),
        ("gzip", format!("amount=100&state={document}&x=1")),
    ];
    for (encoding, text) in bodies {
        let body = match encoding {
            "gzip" => gzip(text.as_bytes()),
            _ => text.into_bytes(),
        };
        refused_whole_and_in_pieces(&gw, &vendor, encoding, &body).await;
    }
    // A JSON body in UTF-16, as a parser that detects it (Jackson) reads it.
    let utf16: Vec<u8> = format!("{{\"api_key\": \"{}\"}}", gw.token)
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    refused_whole_and_in_pieces(&gw, &vendor, "identity", &utf16).await;
    // Another caller's token in UTF-16, either byte order, as sent and gzip'd.
    let text = format!("{{\"webhook\": {{\"token\": \"{other}\"}}}}");
    let big: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let little: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    refused_whole_and_in_pieces(&gw, &vendor, "identity", &big).await;
    refused_whole_and_in_pieces(&gw, &vendor, "identity", &little).await;
    refused_whole_and_in_pieces(&gw, &vendor, "gzip", &gzip(&big)).await;
    // Base64 text that holds no token goes through.
    let clean = format!("amount=100&state={}", url_safe.encode("{\"n\": 1}"));
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(clean)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gw.stop().await;
}

/// The caller's token in base64 wrapped into lines — a raw MIME message whose part is base64 in
/// 76-character CRLF lines, the same lines in a JSON string (`\r\n` escapes) and in a form
/// field (`%0D%0A`) — is refused, whole or streamed in 7-byte pieces: a vendor's decoder skips
/// the breaks (RFC 2045 §6.8). The token's characters here straddle a break.
#[tokio::test]
async fn a_caller_token_in_base64_wrapped_into_lines_is_refused() {
    use base64::Engine as _;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let standard = base64::engine::general_purpose::STANDARD;
    // 45 bytes before the token put its characters at columns 60 to 122: the first break cuts
    // them.
    let notes = format!(
        "notes for all the billing jobs\nPOSTERN_TOKEN={}\n",
        gw.token
    );
    assert_eq!(notes.find("pst_"), Some(45));
    let wrap = |notes: &str, brk: &str| {
        let text = standard.encode(notes);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(76)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect();
        lines.join(brk)
    };
    let text = standard.encode(&notes);
    assert!(
        !wrap(&notes, "\r\n").contains(&text[70..90]),
        "a break cuts the token"
    );
    let bodies = [
        format!(
            "From: a@example.com\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            wrap(&notes, "\r\n")
        ),
        format!(
            "{{\"attachments\": [{{\"content\": \"{}\", \"filename\": \"notes.txt\"}}]}}",
            wrap(&notes, "\\r\\n")
        ),
        format!(
            "to=a@example.com&attachment={}&x=1",
            wrap(&notes, "%0D%0A")
        ),
    ];
    for body in bodies {
        refused_whole_and_in_pieces(&gw, &vendor, "identity", body.as_bytes()).await;
    }
    // Wrapped base64 that holds no token goes through.
    let clean = notes.replace(&gw.token, "(ask the vault)");
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("attachment={}", wrap(&clean, "%0D%0A")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gw.stop().await;
}

/// Each streamed body refused mid-way resets its stream on the worker's h2 connection to the
/// vendor, and a vendor defending itself against rapid reset by counting resets may close a
/// connection with too many (the test vendor does not: this shows the retirement): after
/// `FAILED_STREAMS_BUDGET` (10) failed streams the connection is retired, the next call dials
/// afresh, and every refusal stays a 400.
#[tokio::test]
async fn an_h2_connection_whose_streams_keep_failing_is_retired() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway_tuned(&vendor, "", "workers = 1").await;
    let text = format!("amount=100&description=lorem&key={}&x=1", gw.token);
    for _ in 0..12 {
        let chunks: Vec<Vec<u8>> = text.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
        let stream = reqwest::Body::wrap_stream(futures_stream(chunks));
        let response = post_coded(&gw, "/stripe/v1/charges", None, "identity", stream).await;
        assert_refused(response, 400, "caller_token_in_body").await;
    }
    assert_eq!(get_charge(&client(), &gw).await.unwrap().status(), 200);
    assert_eq!(
        vendor.connections(),
        2,
        "the first connection retired after 10 failed streams, the next dialled"
    );
    gw.stop().await;
}

/// A stream Postern resets after the answer's head counts against the budget too: here the
/// caller takes each answer's head and hangs up (reqwest drops the connection with the body
/// unread), so Postern drops the vendor's stream, 4 MiB still to come, and hyper resets it.
/// After `FAILED_STREAMS_BUDGET` (10) such calls the next call dials afresh.
#[tokio::test]
async fn streams_reset_after_their_head_wear_an_h2_connection_too() {
    let big: Handler = Arc::new(|_request: &SeenRequest| Answer {
        status: 200,
        headers: vec![("content-type", "application/octet-stream".to_string())],
        body: bytes::Bytes::from(vec![b'x'; 4 << 20]),
    });
    let vendor = TestVendor::tls(big).await;
    let gw = stripe_gateway_tuned(&vendor, "", "workers = 1").await;
    // Answers read to their end do not count, however many.
    for _ in 0..12 {
        let response = get_charge(&client(), &gw).await.unwrap();
        assert_eq!(response.bytes().await.unwrap().len(), 4 << 20);
    }
    assert_eq!(vendor.connections(), 1);
    for _ in 0..10 {
        let response = get_charge(&client(), &gw).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
    }
    // Each hang-up reaches the worker's connection to the vendor in its own time.
    let mut dialled = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let response = get_charge(&client(), &gw).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        if vendor.connections() >= 2 {
            dialled = true;
            break;
        }
    }
    assert!(
        dialled,
        "the first connection retired after 10 streams reset mid-body"
    );
    gw.stop().await;
}

/// Calls whose answers are never read hold no other call's answer on the worker's h2
/// connection to the vendor: three calls (one caller's, so on one connection) each take a
/// 16 MiB answer and read none of it (a small receive buffer, so most of each answer stays
/// with the vendor), then a fourth call's 16 MiB answer on the same connection comes whole
/// within 10 s. With hyper's default
/// windows (2 MiB per stream, 5 MiB per connection) the three stalled streams held the whole
/// connection window and the fourth answer stopped after its head; Postern's windows
/// (`H2_STREAM_WINDOW` per stream, the connection's as large as all its streams' together)
/// leave a stalled stream only its own window.
#[tokio::test]
async fn calls_not_reading_their_answers_hold_up_no_other_call_on_their_h2_connection() {
    use tokio::io::AsyncWriteExt;
    const LEN: usize = 16 << 20;
    let body = bytes::Bytes::from(vec![b'x'; LEN]);
    let big: Handler = Arc::new(move |_request: &SeenRequest| Answer {
        status: 200,
        headers: vec![("content-type", "application/octet-stream".to_string())],
        body: body.clone(),
    });
    let vendor = TestVendor::tls(big).await;
    let gw = stripe_gateway_tuned(&vendor, "", "workers = 1").await;
    // The first call makes the origin known as h2: the calls after it share its connection.
    let response = get_charge(&client(), &gw).await.unwrap();
    assert_eq!(response.bytes().await.unwrap().len(), LEN);
    let mut stalled = Vec::new();
    for n in 1..=3 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(gw.running().listen_addr).await.unwrap();
        let request = format!(
            "GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
            gw.token
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stalled.push(stream);
        eventually("the vendor has the stalled call", || async {
            vendor.seen().len() > n
        })
        .await;
    }
    // The vendor sends each stalled answer as far as the windows let it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let whole = tokio::time::timeout(Duration::from_secs(10), async {
        let response = get_charge(&client(), &gw).await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap().len()
    })
    .await;
    assert_eq!(
        whole.ok(),
        Some(LEN),
        "another caller's answer came whole while three callers read none of theirs"
    );
    assert_eq!(
        vendor.connections(),
        1,
        "every call shared one h2 connection"
    );
    drop(stalled);
    gw.stop().await;
}

/// A caller that stops reading an answer its h2 vendor sends in one-byte DATA frames fails no
/// other caller's call: the frames it leaves unread exhaust the h2 crate's budget for small
/// frames and the vendor connection ends with a GOAWAY, but that connection is its caller's
/// alone. (On a connection shared by callers the other caller's call failed with it.)
#[tokio::test]
async fn a_caller_not_reading_an_answer_in_small_frames_fails_no_other_callers_call() {
    const FRAMES: usize = 400_000;
    const SLOW_LEN: usize = 1 << 20;
    /// Told when the small frames' answer is done with, sent whole or cut off.
    struct Done(Arc<tokio::sync::watch::Sender<bool>>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.send_replace(true);
        }
    }
    let done = Arc::new(tokio::sync::watch::channel(false).0);
    let (port, ca_pem) = h2_vendor(hyper::service::service_fn(
        move |request: http::Request<hyper::body::Incoming>| {
            let done = done.clone();
            async move {
                let body = if request.uri().path().ends_with("/ch_tiny") {
                    // One DATA frame per body frame: one byte each.
                    let guard = Done(done);
                    let frames = futures_util::stream::iter((0..FRAMES).map(move |_| {
                        // A use, so the closure holds the guard (`let _ = &guard` is none).
                        let _ = guard.0.is_closed();
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                            bytes::Bytes::from_static(b"x"),
                        ))
                    }));
                    http_body_util::combinators::BoxBody::new(http_body_util::StreamBody::new(
                        frames,
                    ))
                } else if request.uri().path().ends_with("/ch_warm") {
                    http_body_util::combinators::BoxBody::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"{}"),
                    ))
                } else {
                    // Answered once the small frames' answer is done with (or in 20 s).
                    let mut told = done.subscribe();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(20), told.wait_for(|done| *done))
                            .await;
                    http_body_util::combinators::BoxBody::new(http_body_util::Full::new(
                        bytes::Bytes::from(vec![b'y'; SLOW_LEN]),
                    ))
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        },
    ))
    .await;
    let reporting = "[[grants]]\ncaller = \"reporting\"\nintegration = \"stripe\"\noperations = [\"get_charge\"]\n";
    let gw = start_with_key(
        &format!("{}\n{reporting}", stripe_like_at(port, "")),
        Some(&ca_pem),
        "stripe-key",
        VENDOR_KEY,
        "workers = 1",
    )
    .await;
    // A first call makes the vendor known as h2 (else each call to come would dial its own).
    let warm = client()
        .get(format!("{}/stripe/v1/charges/ch_warm", gw.base))
        .bearer_auth(REPORTING_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    // The other caller's call is on its way (its answer waits for the stall's end) when the
    // stall begins.
    let other = {
        let url = format!("{}/stripe/v1/charges/ch_1", gw.base);
        tokio::spawn(async move {
            let response = client()
                .get(url)
                .bearer_auth(REPORTING_TOKEN)
                .send()
                .await?;
            let status = response.status();
            response.bytes().await.map(|body| (status, body.len()))
        })
    };
    // Over h2c with a 1 KiB stream window, never read: Postern holds at most 64 KiB of the
    // answer ahead of it, and stops reading the vendor's frames, which the h2 crate then keeps.
    let tcp = tokio::net::TcpStream::connect(gw.running().listen_addr)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1024)
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("{}/stripe/v1/charges/ch_tiny", gw.base))
        .header("authorization", format!("Bearer {}", gw.token))
        .body(http_body_util::Empty::new())
        .unwrap();
    let stalled = sender.send_request(request).await.unwrap();
    assert_eq!(stalled.status(), 200);
    let answered = tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .expect("the other caller's call ended")
        .unwrap();
    let (status, len) = answered.expect("the other caller's answer came whole");
    assert_eq!((status.as_u16(), len), (200, SLOW_LEN));
    drop(stalled);
    gw.stop().await;
}

/// POSTs `body` in `encoding` through `gw`, whole and then streamed in 7-byte pieces: each
/// refused `caller_token_in_body`, the vendor never having the whole body.
async fn refused_whole_and_in_pieces(
    gw: &TestGateway,
    vendor: &TestVendor,
    encoding: &str,
    body: &[u8],
) {
    for pieces in [body.len(), 7] {
        let seen = vendor.seen().len();
        let chunks: Vec<Vec<u8>> = body.chunks(pieces).map(<[u8]>::to_vec).collect();
        let stream = reqwest::Body::wrap_stream(futures_stream(chunks));
        let response = post_coded(gw, "/stripe/v1/charges", None, encoding, stream).await;
        assert_refused(response, 400, "caller_token_in_body").await;
        assert!(
            never_whole(vendor, seen, body.len()),
            "the vendor got the whole {encoding} body in pieces of {pieces}"
        );
    }
}

/// A request method holding the caller's own token or any `postern`-made one (an extension
/// method, which a vendor would see in its request line) is refused before the operation match,
/// whose refusal echoes the method, and the event records no method.
#[tokio::test]
async fn a_caller_token_in_the_method_is_refused_and_not_recorded() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let addr = gw.running().listen_addr;
    let methods = [
        format!("X-{}", gw.token),
        other.clone(),
        other.replace('_', "%5F"),
        format!("X-{other}"),
    ];
    for method in &methods {
        let answer = raw_request(
            addr,
            format!(
                "{method} /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                gw.token
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{method}: {answer}");
        assert!(answer.contains("caller_token_in_method"), "{answer}");
        assert!(
            !answer.contains(&gw.token) && !answer.contains(&other),
            "{answer}"
        );
    }
    assert!(vendor.seen().is_empty(), "nothing reached the vendor");
    let events = gw.wait_events(methods.len()).await;
    for event in &events {
        assert_eq!(event["reason"], "caller_token_in_method", "{event}");
        assert_eq!(event["method"], "", "{event}");
    }
    assert_eq!(events[0]["caller"], "checkout");
    // With a malformed path too: a Postern-made token is refused for the method first; any
    // extension method refused with a malformed request is not recorded (it may hold a token of
    // another shape, not known before the caller is).
    for (method, code) in [
        (other.as_str(), "caller_token_in_method"),
        (&*format!("X-{}", gw.token), "invalid_path"),
    ] {
        let answer = raw_request(
            addr,
            format!(
                "{method} /stripe/v1/../charges HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains(code),
            "{method}: {answer}"
        );
    }
    let events = gw.wait_events(methods.len() + 2).await;
    for event in &events[methods.len()..] {
        assert_eq!(event["method"], "", "{event}");
    }
    // An extension method without a token is no business of this check: the operation match
    // refuses it, naming it.
    let answer = raw_request(
        addr,
        format!(
            "PROPFIND /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            gw.token
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("operation_not_allowed"), "{answer}");
    // Its event names it; a method longer than 32 bytes (free text up to the header limit,
    // sent without a token) is recorded as `OTHER`, so no call makes its event kilobytes long.
    let long = "M".repeat(8 * 1024);
    let answer = raw_request(
        addr,
        format!("{long} /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let events = gw.wait_events(methods.len() + 4).await;
    assert_eq!(events[methods.len() + 2]["method"], "PROPFIND");
    assert_eq!(events[methods.len() + 3]["method"], "OTHER");
    let everything = std::fs::read_to_string(gw.running().data_dir.join("events.jsonl")).unwrap();
    assert!(!everything.contains(&long[..64]), "{everything}");
    assert!(
        !everything.contains(&gw.token) && !everything.contains(&other),
        "{everything}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn caller_token_is_never_forwarded_in_url_headers_or_body() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    // In another header: that header is dropped, the call proceeds.
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("x-debug", format!("token={}", gw.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(vendor.last().header("x-debug").is_none());
    // Another caller's token (any `postern callers token` makes) is dropped with its header
    // too, as it stands and in a Basic credential; other headers go.
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("svc:{other}"))
    };
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("x-forwarded-token", other.as_str())
        // With a name glued to it, as a program keys a session by it.
        .header("x-session", format!("session-{other}"))
        .header("x-upstream-auth", format!("Basic {basic}"))
        .header("x-encoded-key", {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{{\"key\":\"{}\"}}", gw.token))
        })
        .header("x-kept", "pst_notatoken")
        // A JSON document in a header (as Dropbox-API-Arg carries one), its string escaped.
        .header("dropbox-api-arg", {
            let escaped = json_escaped(&gw.token);
            format!("{{\"path\":\"/a\",\"key\":\"{escaped}\"}}")
        })
        .header("x-json-arg", "{\"path\":\"/\\u0070st_\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = vendor.last();
    assert!(seen.header("x-forwarded-token").is_none());
    assert!(seen.header("x-session").is_none());
    assert!(seen.header("x-upstream-auth").is_none());
    assert!(seen.header("x-encoded-key").is_none());
    assert!(seen.header("dropbox-api-arg").is_none());
    assert_eq!(
        seen.header("x-json-arg").as_deref(),
        Some("{\"path\":\"/\\u0070st_\"}")
    );
    assert_eq!(seen.header("x-kept").as_deref(), Some("pst_notatoken"));
    assert!(!seen.everything().contains(&other));
    // In the query: refused.
    let response = client()
        .get(format!("{}/stripe/v1/charges/ch_1?t={}", gw.base, gw.token))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // So is another caller's token there (a caller identified by its certificate has no token
    // of its own to look for), as it stands or percent-encoded; nothing reaches the vendor.
    let seen = vendor.seen().len();
    let json_in_query = percent_encoded(&json_escaped(&other));
    for key in [
        other.clone(),
        other.replace('_', "%5F"),
        json_in_query,
        format!("x{other}_2"),
    ] {
        let response = client()
            .get(format!("{}/stripe/v1/charges/ch_1?key={key}", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        assert_refused(response, 400, "caller_token_in_url").await;
    }
    assert_eq!(vendor.seen().len(), seen);
    // In the body: refused.
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .body(format!("description=oops {}", gw.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "caller_token_in_body");
    // In a compressed body (a vendor that undoes the coding would read it): refused, whether
    // sent whole or streamed in pieces that split the compressed bytes anywhere; the vendor never
    // has the whole body. A coding Postern cannot undo is refused before anything is sent.
    let compressed = |encoding: &str, data: &[u8]| -> Vec<u8> {
        use std::io::Write as _;
        match encoding {
            "gzip" => gzip(data),
            "br" => brotli(data, 22),
            "zstd" => zstd(data, 20),
            _ => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        }
    };
    let padding = "amount=100&description=".to_string() + &"lorem ipsum ".repeat(2000);
    for encoding in ["gzip", "deflate", "br", "zstd"] {
        let body = compressed(encoding, format!("{padding}{}&x=1", gw.token).as_bytes());
        refused_whole_and_in_pieces(&gw, &vendor, encoding, &body).await;
    }
    // Whatever a lenient decoder forgives — bytes after the stream's end, a trailer cut off —
    // the token before it is found; a `deflate` body that starts both as zlib and as raw
    // DEFLATE but is valid neither way is refused whole, since where the token stands in it
    // cannot be told.
    let token_body = compressed("gzip", format!("{padding}{}&x=1", gw.token).as_bytes());
    let mut trailing = token_body.clone();
    trailing.push(0);
    let cut = token_body[..token_body.len() - 8].to_vec();
    let neither = [0x78, 0x01, 0x00, 0xfe, 0xff, b'a', b'b', b'c'].to_vec();
    // A `br` body whose window (16 MiB) is past what Postern decodes (4 MiB), or a `zstd` one
    // past RFC 9659's 8 MiB, is refused as undecodable, before anything of it is decoded or
    // sent.
    let wide = brotli(padding.as_bytes(), 24);
    let wide_zstd = zstd(padding.as_bytes(), 24);
    for (encoding, body, code) in [
        ("gzip", trailing, "caller_token_in_body"),
        ("gzip", cut, "caller_token_in_body"),
        ("deflate", neither, "request_body_undecodable"),
        ("br", wide, "request_body_undecodable"),
        ("zstd", wide_zstd, "request_body_undecodable"),
    ] {
        let seen = vendor.seen().len();
        let response = post_coded(
            &gw,
            "/stripe/v1/charges",
            Some("text/plain"),
            encoding,
            body.clone(),
        )
        .await;
        assert_refused(response, 400, code).await;
        assert!(never_whole(&vendor, seen, body.len()), "{code}");
    }
    for encoding in ["gzip", "br", "zstd"] {
        let harmless = compressed(encoding, padding.as_bytes());
        let response =
            post_coded(&gw, "/stripe/v1/charges", None, encoding, harmless.clone()).await;
        assert_eq!(response.status(), 200, "{encoding}");
        assert_eq!(vendor.last().body, harmless, "{encoding} forwarded as sent");
    }
    let seen = vendor.seen().len();
    let response = post_coded(&gw, "/stripe/v1/charges", None, "gzip, zstd", "anything").await;
    assert_refused(response, 415, "unsupported_content_encoding").await;
    assert_eq!(vendor.seen().len(), seen, "nothing reached the vendor");
    // In a trailer of a chunked upload: the body goes (to an h2 vendor), the trailers never.
    let raw = raw_request(
        gw.running().listen_addr,
        format!(
            "POST /stripe/v1/charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\ntransfer-encoding: chunked\r\ntrailer: x-sneak\r\n\r\n3\r\nabc\r\n0\r\nx-sneak: {token}\r\n\r\n",
            token = gw.token
        )
        .as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let trailed = vendor.last();
    assert_eq!(&trailed.body[..], b"abc");
    assert_eq!(trailed.trailers, None);
    for seen in vendor.seen() {
        assert!(!seen.everything().contains(&gw.token));
    }
    gw.stop().await;
}

/// The admin API's edges: the `Bearer` scheme in any case, a `limit` that is not a number
/// refused on every route that takes one, and a 405 that names the methods allowed.
#[tokio::test]
async fn admin_api_scheme_limits_and_methods() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let get = |path: &str, authorization: String| {
        client()
            .get(format!("{}{path}", gw.admin))
            .header("authorization", authorization)
            .send()
    };
    let upper = format!("BEARER {}", gw.admin_token);
    assert_eq!(
        get("/v1/events", upper.clone()).await.unwrap().status(),
        200
    );
    for route in ["/v1/events", "/v1/alerts"] {
        let answer = get(&format!("{route}?limit=abc"), upper.clone())
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{route}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_limit", "{route}");
        let answer = get(&format!("{route}?limit=5"), upper.clone())
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{route}");
    }
    let delete = client()
        .delete(format!("{}/v1/events", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 405);
    assert_eq!(delete.headers()["allow"], "GET, HEAD");
    // Without the token, a route's methods are not told: 401, as for a route that does not
    // exist. The public routes still answer 405.
    for route in ["/v1/events", "/v1/credentials/x", "/no/such/route"] {
        let put = client()
            .put(format!("{}{route}", gw.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 401, "{route}");
        assert!(put.headers().get("allow").is_none(), "{route}");
    }
    let put = client()
        .put(format!("{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    // A credential change whose body never comes is answered, not waited for (a body of up to
    // 64 KiB is read before the handler runs, within the server's head timeout; a larger one
    // streams to the handler, which waits 10 s for it).
    let started = std::time::Instant::now();
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(gw.running().admin_addr)
            .await
            .unwrap();
        stream
            .write_all(
                format!(
                    "POST /v1/credentials/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 70000\r\n\r\n",
                    gw.admin_token
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("body_timeout") {
            match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await {
                Ok(Ok(read)) if read > 0 => answer.extend_from_slice(&chunk[..read]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&answer).to_string()
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30));
    gw.stop().await;
}

/// The admin listener holds at most `ADMIN_MAX_CONNECTIONS` connections of its own (not the
/// data plane's 16,384). Past them a new connection closes the one quiet longest (no byte either
/// way for `MIN_QUIET`, no request in hand), as nginx reuses idle keep-alive connections; while
/// every one has moved a byte within `MIN_QUIET`, a new one is closed at once.
#[tokio::test]
async fn the_admin_listener_holds_a_few_connections_of_its_own() {
    use postern_gateway::slots::MIN_QUIET;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// One keep-alive request on `stream`, its answer read whole; `false` if the connection was
    /// closed instead.
    async fn keep_alive_health(stream: &mut tokio::net::TcpStream) -> bool {
        if stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let read = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => read,
            };
            answer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("a length")
                .trim()
                .parse()
                .unwrap();
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{text}");
                return true;
            }
        }
    }
    /// A request answered on each of `held` at once; one closed for room is opened again.
    async fn refresh(held: &mut [tokio::net::TcpStream], admin: std::net::SocketAddr) {
        futures_util::future::join_all(held.iter_mut().map(|stream| async move {
            if !keep_alive_health(stream).await {
                *stream = tokio::net::TcpStream::connect(admin).await.unwrap();
                assert!(
                    keep_alive_health(stream).await,
                    "a reopened connection was closed"
                );
            }
        }))
        .await;
    }
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let admin = gw.running().admin_addr;
    let probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..postern_gateway::listener::ADMIN_MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }

    // Each held connection answered a request just before the probe: none is quiet, so the
    // probe is closed unserved. (A try whose requests took MIN_QUIET or more proves nothing:
    // its probe may close one of them, which the next try opens again.)
    let mut refused = 0;
    for _ in 0..5 {
        let began = tokio::time::Instant::now();
        refresh(&mut held, admin).await;
        let answer = raw_request(admin, probe).await;
        if began.elapsed() < MIN_QUIET {
            assert!(
                answer.is_empty(),
                "a connection past the limit was served: {answer}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "every try took longer than {MIN_QUIET:?}");

    // Once all are quiet, a probe is served, and one of them (the quietest) is closed for it.
    tokio::time::sleep(MIN_QUIET + Duration::from_millis(200)).await;
    let answer = raw_request(admin, probe).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = futures_util::future::join_all(held.iter_mut().map(|stream| async move {
        let mut chunk = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    }))
    .await;
    assert_eq!(closed.iter().filter(|closed| **closed).count(), 1);
    // (The probe's place is free again: the metrics request takes it.)
    let text = gw.metrics().await;
    let closed: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("postern_admin_connections_closed_for_room_total "))
        .unwrap_or_else(|| panic!("no postern_admin_connections_closed_for_room_total in {text}"))
        .parse()
        .unwrap();
    assert!(closed >= 1, "{closed}");

    drop(held);
    gw.stop().await;
}

/// Callers' connections are spread over the workers by how many each serves, and `/metrics`
/// shows each worker's share.
#[tokio::test]
async fn each_workers_connections_are_in_the_metrics_and_kept_even() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway_tuned(&vendor, "", "workers = 3").await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    // One at a time, each counted before the next. A hand-over happens when a connection
    // arrives at a worker already two ahead; with the socket picked at random for each, none
    // happening in a row of N was simulated at 3·10^-3 for N = 30, 2.5·10^-6 for 60 and never
    // in 400,000 runs for 90, so some must have been handed over (without the hand-over code
    // the count stays 0).
    let mut connections = Vec::new();
    for n in 1..=90 {
        connections.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        eventually("each connection counted", || async {
            gw.worker_connections().await.iter().sum::<i64>() == n
        })
        .await;
    }
    let counts = gw.worker_connections().await;
    assert_eq!(counts.len(), 3, "one series per worker: {counts:?}");
    let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(most - least <= 2, "within two of each other: {counts:?}");
    let text = gw.metrics().await;
    let handed: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("postern_connections_handed_over_total "))
        .unwrap_or_else(|| panic!("no postern_connections_handed_over_total in {text}"))
        .parse()
        .unwrap();
    assert!(handed >= 1, "no connection was handed over: {counts:?}");
    drop(connections);
    eventually("closed connections no longer counted", || async {
        gw.worker_connections().await.iter().sum::<i64>() == 0
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn admin_api_health_metrics_integrations_events() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    for _ in 0..3 {
        get_charge(&client(), &gw).await.unwrap();
    }
    client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .send()
        .await
        .unwrap();

    let health = client()
        .get(format!("{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = client()
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    for path in ["/metrics", "/v1/integrations", "/v1/events"] {
        let response = client()
            .get(format!("{}{path}", gw.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path} needs the admin token");
        let response = client()
            .get(format!("{}{path}", gw.admin))
            .bearer_auth(&gw.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            401,
            "{path}: a caller token is not an admin token"
        );
    }
    let admin = |path: &str| {
        client()
            .get(format!("{}{path}", gw.admin))
            .bearer_auth(&gw.admin_token)
            .send()
    };
    gw.wait_events(4).await;
    let metrics = admin("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"postern_calls_total{integration="stripe",caller="checkout",decision="allow",status="200"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"decision="deny",status="401"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("postern_call_duration_seconds_bucket"),
        "{metrics}"
    );
    let integrations: serde_json::Value = admin("/v1/integrations")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stripe = &integrations["integrations"][0];
    assert_eq!(stripe["name"], "stripe");
    assert_eq!(stripe["credential"]["kind"], "bearer");
    assert_eq!(stripe["credential"]["status"], "loaded");
    assert_eq!(stripe["operations"].as_array().unwrap().len(), 3);
    let events: serde_json::Value = admin("/v1/events?limit=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["status"], 401);
    let all = format!("{metrics}{integrations}");
    assert!(!all.contains(VENDOR_KEY) && !all.contains(&gw.token));
    // Live detection: alerts are served (the baseline is still warming up here) and the
    // engine's baselines are snapshotted at shutdown so a restart keeps them.
    let alerts: serde_json::Value = admin("/v1/alerts?limit=10")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(alerts["alerts"].is_array(), "{alerts}");
    let data_dir = gw.running().data_dir.clone();
    let TestGateway { gateway, dir, .. } = gw;
    gateway.unwrap().shutdown().await;
    assert!(data_dir.join("detector-snapshot.json").exists());
    assert!(data_dir.join("alerts.jsonl").exists());
    drop(dir);
}

#[tokio::test]
async fn missing_credential_answers_503_and_readyz_says_why() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let body = stripe_like(&vendor, "").replace(
        "from_file = \"{dir}/stripe-key\"",
        "from_env = \"POSTERN_TEST_UNSET_VARIABLE_FOR_STRIPE\"",
    );
    let gw = TestGateway::start(&body, vendor.ca_pem.as_deref()).await;
    let response = get_charge(&client(), &gw).await.unwrap();
    assert_refused(response, 503, "credential_unavailable").await;
    // Without the admin token, a probe learns only that Postern is not ready.
    let probe = client()
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 503);
    let probe = probe.text().await.unwrap();
    assert!(!probe.contains("POSTERN_TEST_UNSET"), "{probe}");
    let probe: serde_json::Value = serde_json::from_str(&probe).unwrap();
    assert_eq!(probe["ready"], false);
    assert_eq!(probe["problem_count"], 1);
    let ready = client()
        .get(format!("{}/readyz", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(ready["problems"][0]
        .as_str()
        .unwrap()
        .contains("POSTERN_TEST_UNSET_VARIABLE_FOR_STRIPE"));
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// A vendor that answers `…/ch_slow` after 1 s (sleeping on its runtime's thread) and
/// everything else at once. It runs on a runtime of its own, on a thread of its own that lives
/// as long as the test process: its sleeping handlers must not hold the test runtime's threads
/// (the tests check a slow call is still in flight 100–200 ms after it started, and on the
/// test's own runtime a loaded machine once let that check run after the call had finished).
async fn slow_vendor() -> TestVendor {
    let handler: Handler = Arc::new(|request: &SeenRequest| {
        if request.target.ends_with("ch_slow") {
            std::thread::sleep(std::time::Duration::from_millis(1000));
        }
        Answer::json(200, serde_json::json!({"ok": true}))
    });
    let (started, vendor) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let _ = started.send(TestVendor::tls(handler).await);
            std::future::pending::<()>().await
        });
    });
    vendor.await.unwrap()
}

/// A reload reads `ca_file` again: a CA taken out of the file stops being trusted, and a file
/// that no longer holds a certificate rejects the reload, as `postern check` would.
#[tokio::test]
async fn a_reload_reads_the_ca_file_again() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let charge = || get_charge(&client(), &gw);
    assert_eq!(charge().await.unwrap().status(), 200);
    let ca_path = gw.vendor_ca_path();
    let reload = || {
        let config = postern_config::load(&gw.config_path).unwrap();
        gw.running().reload(config)
    };
    std::fs::write(&ca_path, other.ca_pem.as_deref().unwrap()).unwrap();
    reload().unwrap();
    let answer = charge().await.unwrap();
    assert_refused(answer, 502, "upstream_tls_error").await;
    std::fs::write(&ca_path, "not a certificate").unwrap();
    assert!(
        reload().is_err(),
        "a ca_file without a certificate rejects the reload"
    );
    std::fs::write(&ca_path, vendor.ca_pem.as_deref().unwrap()).unwrap();
    reload().unwrap();
    assert_eq!(charge().await.unwrap().status(), 200);
    gw.stop().await;
}

/// A reload refused for one integration leaves nothing of itself behind for the others: the
/// client it built for a changed `ca_file` is not what the next vault change then takes (the
/// vault's rebuild does not read `ca_file` again).
#[tokio::test]
async fn a_refused_reload_leaves_no_client_behind() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let other = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let charge = || get_charge(&client(), &gw);
    assert_eq!(charge().await.unwrap().status(), 200);
    // The stripe integration's CA file now holds another CA, and a second integration, built
    // after it, has a CA file with no certificate: the reload is refused.
    std::fs::write(gw.vendor_ca_path(), other.ca_pem.as_deref().unwrap()).unwrap();
    let broken_ca = gw.config_path.with_file_name("broken-ca.pem");
    std::fs::write(&broken_ca, "not a certificate").unwrap();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let broken = format!(
        "{text}\n[[integrations]]\nname = \"broken\"\nvendor = \"B\"\nowner = \"o@example.com\"\nupstream = \"https://127.0.0.1:9\"\nca_file = \"{}\"\noperations = [ {{ id = \"x\", method = \"GET\", path = \"/x\" }} ]\n",
        broken_ca.display()
    );
    let config = postern_config::parse(&broken, &gw.config_path).unwrap();
    assert!(gw.running().reload(config).is_err());
    // A vault change rebuilds the running config: its stripe client still trusts the vendor.
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    vault.set("unrelated", "static", b"value", 1).unwrap();
    // (The gateway's own poller may get to it first.)
    gw.running().shared().refresh_from_vault().unwrap();
    let generation = vault.generation().unwrap();
    assert_eq!(
        gw.running().shared().runtime.load().vault_generation,
        generation
    );
    assert_eq!(charge().await.unwrap().status(), 200);
    gw.stop().await;
}

/// The generated admin token rotates with a reload: the file deleted, the reload makes a new
/// one and the old token is refused; a configured `admin_token_sha256` taken out of the config
/// stops working with the reload too (before, the token in use stayed valid until a restart).
#[tokio::test]
async fn a_reload_rotates_the_admin_token() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let admin = |token: String| {
        let url = format!("{}/v1/integrations", gw.admin);
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let token_file = gw
        .running()
        .data_dir
        .join(postern_gateway::ADMIN_TOKEN_FILE);
    let reload = |text: &str| {
        let config = postern_config::parse(text, &gw.config_path).unwrap();
        gw.running().reload(config).unwrap();
    };
    assert_eq!(admin(gw.admin_token.clone()).await, 200);
    std::fs::remove_file(&token_file).unwrap();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    reload(&text);
    let rotated = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(rotated, gw.admin_token);
    assert_eq!(admin(gw.admin_token.clone()).await, 401, "the old token");
    assert_eq!(admin(rotated.clone()).await, 200, "the new one");

    // A configured token, then taken out again: the file's token is the admin token.
    let configured = "pat_configured_admin_token_for_this_test_0123";
    let with_hash = text.replacen(
        "[gateway]\n",
        &format!(
            "[gateway]\nadmin_token_sha256 = \"{}\"\n",
            sha256_hex(configured)
        ),
        1,
    );
    assert_ne!(with_hash, text, "the config has a [gateway] table");
    reload(&with_hash);
    assert_eq!(admin(configured.to_string()).await, 200);
    assert_eq!(admin(rotated.clone()).await, 401);
    reload(&text);
    assert_eq!(admin(configured.to_string()).await, 401, "taken out");
    assert_eq!(admin(rotated.clone()).await, 200);

    // A file others may read: the file's token in use stays, and the rest of the reload
    // applies, with a note; but a configured token taken out with it is refused, not kept.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = postern_config::parse(&text, &gw.config_path).unwrap();
    let notes = gw.running().reload(config).unwrap();
    assert!(
        notes
            .iter()
            .any(|note| note.contains("admin token in use stays")),
        "{notes:?}"
    );
    assert_eq!(admin(rotated.clone()).await, 200);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    reload(&with_hash);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = postern_config::parse(&text, &gw.config_path).unwrap();
    assert!(
        gw.running().reload(config).is_err(),
        "the configured token is not kept"
    );
    assert_eq!(
        admin(configured.to_string()).await,
        200,
        "the running config stays"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_swaps_config_atomically_and_in_flight_calls_finish() {
    let vendor = slow_vendor().await;
    let gw = stripe_gateway(&vendor, "").await;
    let refund = || {
        client()
            .post(format!("{}/stripe/v1/charges/ch_1/refund", gw.base))
            .bearer_auth(&gw.token)
            .send()
    };
    assert_eq!(refund().await.unwrap().status(), 403);
    let slow = tokio::spawn({
        let url = format!("{}/stripe/v1/charges/ch_slow", gw.base);
        let token = gw.token.clone();
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // Grant refund_charge and reload.
    let text = std::fs::read_to_string(&gw.config_path).unwrap().replace(
        r#"operations = ["create_charge", "get_charge"]"#,
        r#"operations = ["create_charge", "get_charge", "refund_charge"]"#,
    );
    std::fs::write(&gw.config_path, &text).unwrap();
    let config = postern_config::load(&gw.config_path).unwrap();
    assert!(gw.running().reload(config).unwrap().is_empty());
    assert_eq!(refund().await.unwrap().status(), 200);
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the in-flight call finished across the reload"
    );

    // Keys read only at start: the reload names each in one note, and applies the rest.
    let start_only = text.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ndetect = false\naudit_origin = \"other.example/log\"\naudit_timeout_ms = 2500\naudit_checkpoint_interval_ms = 999",
    );
    std::fs::write(&gw.config_path, &start_only).unwrap();
    let config = postern_config::load(&gw.config_path).unwrap();
    let notes = gw.running().reload(config).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    for key in [
        "detect",
        "audit_origin",
        "audit_timeout_ms",
        "audit_checkpoint_interval_ms",
    ] {
        assert!(notes[0].contains(key), "{key} in {notes:?}");
    }
    assert_eq!(refund().await.unwrap().status(), 200);
    // Compared with the values the gateway started with, not the last reload's: the same file
    // again still needs a restart, and the running config keeps the start values.
    let config = postern_config::load(&gw.config_path).unwrap();
    let notes = gw.running().reload(config).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let running = gw.running().shared().runtime.load_full();
    assert_eq!(running.config.gateway.audit_timeout_ms, 2000);
    assert_eq!(running.config.gateway.audit_origin, None);

    // A config that fails to compile (grant of an unknown operation caught by config; a broken
    // Cedar file caught at build) leaves the running one in place.
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("bad.cedar");
    std::fs::write(
        &bad_policy,
        "forbid(principal, action, resource) when { context.hourr > 1 };",
    )
    .unwrap();
    let broken = text.replace(
        "data_dir = \"data\"",
        &format!(
            "data_dir = \"data\"\ncredential_max_age_days = 1\npolicies = \"{}\"",
            bad_policy.display()
        ),
    );
    std::fs::write(&gw.config_path, broken).unwrap();
    let config = postern_config::load(&gw.config_path).unwrap();
    let error = gw.running().reload(config).unwrap_err();
    assert!(format!("{error:#}").contains("hourr"), "{error:#}");
    // Nothing of a rejected reload applies, its credential age limit included.
    let max_age = &gw.running().shared().credential_max_age_days;
    assert_eq!(max_age.load(std::sync::atomic::Ordering::Relaxed), 90);
    assert_eq!(
        refund().await.unwrap().status(),
        200,
        "the previous config still serves"
    );
    gw.stop().await;
}

#[tokio::test]
async fn events_file_rotates_by_size() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway_tuned(
        &vendor,
        "",
        "events_max_file_bytes = 4096\nevents_max_files = 2",
    )
    .await;
    for _ in 0..30 {
        client()
            .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
            .send()
            .await
            .unwrap();
    }
    gw.running().shared().recorder.events.flush().await;
    let dir = gw.running().data_dir.clone();
    let current = std::fs::metadata(dir.join("events.jsonl")).unwrap().len();
    assert!(current <= 4096);
    assert!(dir.join("events.jsonl.1").exists());
    assert!(dir.join("events.jsonl.2").exists());
    assert!(
        !dir.join("events.jsonl.3").exists(),
        "only events_max_files rotated files are kept"
    );
    gw.stop().await;
}

#[tokio::test]
async fn vendor_that_does_not_accept_hits_the_connect_timeout() {
    // A listener with a backlog of 1 that never accepts: once its queue is full, new SYNs are
    // dropped and connects hang — a black-holed vendor, on loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let body = format!(
        r#"
[[integrations]]
name = "blackhole"
vendor = "V"
owner = "o@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
connect_timeout_ms = 300
operations = [ {{ id = "op", method = "GET", path = "/x" }} ]

[[grants]]
caller = "checkout"
integration = "blackhole"
operations = ["*"]
"#
    );
    let gw = TestGateway::start(&body, None).await;
    let started = std::time::Instant::now();
    let response = client()
        .get(format!("{}/blackhole/x", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_refused(response, 504, "upstream_connect_timeout").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(listener);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_in_flight_calls_finish() {
    // The vendor sleeps on its own runtime's threads (see `slow_vendor`).
    let vendor = slow_vendor().await;
    let gw = stripe_gateway(&vendor, "").await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("{}/stripe/v1/charges/ch_slow", gw.base);
            let token = gw.token.clone();
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|response| response.status())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        slow.iter().all(|call| !call.is_finished()),
        "the slow calls are in flight when shutdown starts"
    );
    let base = gw.base.clone();
    gw.stop().await;
    for call in slow {
        let status = call
            .await
            .unwrap()
            .expect("the in-flight call was answered");
        assert_eq!(
            status, 200,
            "in-flight calls finish during the grace period"
        );
    }
    assert!(
        client()
            .get(format!("{base}/stripe/v1/charges/ch_1"))
            .send()
            .await
            .is_err(),
        "nothing accepts after shutdown"
    );
}

/// A chunked body that breaks off with malformed framing is the caller's fault: `400
/// request_body_error`, not a vendor error (which would count against the vendor in the events
/// and the anomaly detector).
#[tokio::test]
async fn a_malformed_chunked_body_is_the_callers_fault_not_the_vendors() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let answer = raw_request(
        gw.running().listen_addr,
        format!(
            "POST /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nZZ\r\nxx\r\n0\r\n\r\n",
            gw.token
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request_body_error"), "{answer}");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "request_body_error", "{}", events[0]);
    gw.stop().await;
}

/// An HTTP/2 caller sends each cookie as a field of its own; the HTTP/1.1 vendor gets them as
/// one `Cookie` field, joined by "; " (RFC 9113 §8.2.3).
#[tokio::test]
async fn cookies_from_an_http2_caller_reach_an_http1_vendor_as_one_field() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let response = h2c_client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(&gw.token)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen = vendor.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    gw.stop().await;
}

/// A POST whose body has a `_method` field naming another method (Rails and Laravel run it as
/// that method) is refused before the vendor has the whole body, in a form, a multipart part or
/// a JSON body's top level; one with ordinary fields (`payment_method`, `_method=POST`, the
/// words inside a value or a nested object) goes through untouched.
#[tokio::test]
async fn a_form_body_overriding_the_method_is_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let post = |body: &'static str| {
        client()
            .post(format!("{}/stripe/v1/charges", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let fine = post("amount=100&payment_method=pm_card_visa&_method=POST")
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert_eq!(
        vendor.last().body,
        "amount=100&payment_method=pm_card_visa&_method=POST".as_bytes()
    );
    let seen = vendor.seen().len();
    let refused = post("amount=100&_method=DELETE").await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_override_refused");
    assert!(
        vendor
            .seen()
            .iter()
            .skip(seen)
            .all(|request| !request.body.ends_with(b"_method=DELETE")),
        "the vendor got the whole body"
    );
    let events = gw.wait_events(2).await;
    assert_eq!(events[1]["reason"], "method_override_refused");

    // The same field in a multipart part and as a JSON body's top-level key (Laravel reads a
    // JSON body as its input); the same words anywhere else pass.
    let post_as = |content_type: &'static str, body: &'static str| {
        client()
            .post(format!("{}/stripe/v1/charges", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let multipart = "multipart/form-data; boundary=b0und";
    for (content_type, body) in [
        (
            multipart,
            "--b0und\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n100\r\n--b0und\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b0und--\r\n",
        ),
        ("application/json", r#"{"amount":100,"_method":"DELETE"}"#),
    ] {
        let seen = vendor.seen().len();
        let refused = post_as(content_type, body).await.unwrap();
        assert_refused(refused, 400, "method_override_refused").await;
        assert!(
            never_whole(&vendor, seen, body.len()),
            "the vendor got the whole {content_type} body"
        );
    }
    for (content_type, body) in [
        (
            multipart,
            "--b0und\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n_method=DELETE\r\n--b0und--\r\n",
        ),
        ("application/json", r#"{"metadata":{"_method":"DELETE"}}"#),
    ] {
        let fine = post_as(content_type, body).await.unwrap();
        assert_eq!(fine.status(), 200, "{content_type}");
        assert_eq!(vendor.last().body, body.as_bytes());
    }

    // A gzip-compressed body is read decoded too (a vendor may undo the coding before reading
    // `_method`), and is forwarded as sent when it holds none; one in a coding Postern cannot
    // undo is refused.
    let post_encoded = |encoding: &'static str, body: Vec<u8>| {
        post_coded(
            &gw,
            "/stripe/v1/charges",
            Some("application/x-www-form-urlencoded"),
            encoding,
            body,
        )
    };
    let harmless = gzip(b"amount=100&currency=usd");
    let fine = post_encoded("gzip", harmless.clone()).await;
    assert_eq!(fine.status(), 200);
    assert_eq!(vendor.last().body, harmless, "forwarded as sent");
    for (encoding, body, status, code) in [
        (
            "gzip",
            gzip(b"amount=100&_method=DELETE"),
            400,
            "method_override_refused",
        ),
        (
            "compress",
            harmless.clone(),
            415,
            "unsupported_content_encoding",
        ),
    ] {
        let seen = vendor.seen().len();
        let refused = post_encoded(encoding, body.clone()).await;
        assert_refused(refused, status, code).await;
        assert!(
            never_whole(&vendor, seen, body.len()),
            "the vendor got the whole {encoding} body"
        );
    }
    gw.stop().await;
}

/// A form body carrying its own `access_token` (RFC 6750 §2.2) to a bearer integration is
/// refused `vendor_credential_in_body` — read whole or streamed in pieces, its name as sent or
/// percent-encoded, compressed or not — and the vendor never has the whole body, nor the
/// caller's token; the refusal and its event name the field, never its value. Fields that merely
/// hold the word pass untouched, and the same body to a `header`-kind integration (whose vendor
/// reads no bearer token) goes as sent.
#[tokio::test]
async fn a_callers_access_token_in_a_form_body_is_refused_for_a_bearer_integration() {
    const CALLERS_OWN: &str = "callers-own-vendor-token-77";
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    const FORM: &str = "application/x-www-form-urlencoded";
    let post = |body: reqwest::Body, encoding: Option<&'static str>| {
        let mut request = client()
            .post(format!("{}/stripe/v1/charges", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", FORM);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        request.body(body).send()
    };
    let never_the_token = |vendor: &TestVendor| {
        vendor
            .seen()
            .iter()
            .all(|request| !String::from_utf8_lossy(&request.body).contains(CALLERS_OWN))
    };
    let plain = format!("amount=100&access_token={CALLERS_OWN}&currency=usd");
    let encoded_name = format!("amount=100&access%5Ftoken={CALLERS_OWN}");
    let mut events = 0;
    for body in [plain.as_str(), encoded_name.as_str()] {
        // Whole (Content-Length: the listener reads it before anything goes), then chunked in
        // pieces of 7 bytes (the name split across them) and of 1.
        for pieces in [body.len(), 7, 1] {
            let seen = vendor.seen().len();
            let chunks: Vec<Vec<u8>> = body.as_bytes().chunks(pieces).map(<[u8]>::to_vec).collect();
            let sent = match pieces == body.len() {
                true => reqwest::Body::from(body.to_string()),
                false => reqwest::Body::wrap_stream(futures_stream(chunks)),
            };
            let response = post(sent, None).await.unwrap();
            let text = response.text().await.unwrap();
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                answer["error"]["code"], "vendor_credential_in_body",
                "{answer}"
            );
            assert!(
                !text.contains(CALLERS_OWN),
                "the refusal holds the token: {text}"
            );
            assert!(
                text.contains("remove access_token from the form body"),
                "{text}"
            );
            assert!(
                never_whole(&vendor, seen, body.len()),
                "the vendor got the whole body in pieces of {pieces}"
            );
            events += 1;
        }
    }
    let coded = gzip(plain.as_bytes());
    let response = post(coded.clone().into(), Some("gzip")).await.unwrap();
    assert_refused(response, 400, "vendor_credential_in_body").await;
    events += 1;
    assert!(
        never_the_token(&vendor),
        "the vendor got the caller's token"
    );
    let recorded = gw.wait_events(events).await;
    for event in &recorded {
        assert_eq!(event["reason"], "vendor_credential_in_body", "{event}");
        assert_eq!(event["status"], 400, "{event}");
        assert!(!event.to_string().contains(CALLERS_OWN), "{event}");
    }

    // The word in other names and in values passes, forwarded as sent.
    let harmless = "amount=100&x_access_token=1&note=my+access_token+here&memo=access_token";
    let fine = post(harmless.into(), None).await.unwrap();
    assert_eq!(fine.status(), 200);
    assert_eq!(vendor.last().body, harmless.as_bytes());

    // The query's `access_token`, as PHP and Rack 2 read names, is stripped, not forwarded.
    let query = "a=1&[access_token]=q1&access_token%00=q2&access_token]]=q3&Access_Token[x]=q4&b=2";
    let response = client()
        .post(format!("{}/stripe/v1/charges?{query}", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", FORM)
        .body("amount=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().target, "/v1/charges?a=1&b=2");
    gw.stop().await;

    // A `header`-kind integration's vendor reads its key from a header: the caller's form field
    // is its own business there, and goes as sent.
    let config = stripe_like(&vendor, "").replace(
        r#"kind = "bearer""#,
        r#"kind = "header", name = "x-api-key""#,
    );
    let gw = start_with_key(
        &config,
        vendor.ca_pem.as_deref(),
        "stripe-key",
        VENDOR_KEY,
        "",
    )
    .await;
    let response = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", FORM)
        .body(plain.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = vendor.last();
    assert_eq!(seen.body, plain.as_bytes());
    assert_eq!(seen.header("x-api-key").unwrap(), VENDOR_KEY);
    gw.stop().await;
}

/// Refusals of calls with no caller are audited at a bounded rate (anyone who can reach the
/// listener can send them, and the log keeps all it is given): a flood of unauthenticated
/// requests is answered and evented call by call, but past the burst its audit entries are
/// counted instead of written. (Each request takes a connection of its own: one that
/// identified no caller is closed after its `401`.)
#[tokio::test]
async fn a_flood_of_unauthenticated_requests_is_audited_at_a_bounded_rate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = stripe_gateway(&vendor, "").await;
    let burst = postern_gateway::ANONYMOUS_AUDIT_BURST as usize;
    let calls = burst * 3;
    let addr = gw.running().listen_addr;
    // 32 connections at a time, each one request until the gateway closes it.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let floods = (0..32).map(|_| {
        let next = next.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < calls + 1 {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(b"GET /stripe/v1/charges/ch_1 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.unwrap();
                answered += usize::from(answer.starts_with(b"HTTP/1.1 401"));
            }
            answered
        })
    });
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(floods),
    )
    .await
    .expect("the flood is answered within 60 s")
    .into_iter()
    .map(Result::unwrap)
    .sum::<usize>();
    assert_eq!(answered, calls + 1, "every request is answered 401");
    let metric = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("postern_audit_anonymous_unrecorded_total "))
            .map(|value| value.trim().parse::<f64>().unwrap() as usize)
            .unwrap()
    };
    let metrics = gw.metrics().await;
    let unrecorded = metric(&metrics);
    assert!(unrecorded > 0, "none over the rate:\n{metrics}");
    assert!(unrecorded < calls + 1 - burst, "{unrecorded}");
    // Every call has its event; the audit log has exactly the others' entries.
    assert_eq!(gw.wait_events(calls + 1).await.len(), calls + 1);
    let written = calls + 1 - unrecorded;
    let entry = |index: usize| {
        client()
            .get(format!("{}/v1/audit/entries/{index}", gw.admin))
            .bearer_auth(&gw.admin_token)
            .send()
    };
    let mut found = false;
    for _ in 0..100 {
        if entry(written - 1).await.unwrap().status() == 200 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "entry {} was not written", written - 1);
    assert_eq!(entry(written).await.unwrap().status(), 404);
    gw.stop().await;
}

/// An h2 vendor over TLS (a throwaway CA: its port and CA) answering with `service`.
async fn h2_vendor<S, B>(service: S) -> (u16, String)
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let pki = TestPki::new();
    let acceptor = pki.acceptor(&[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    (port, pki.ca_pem)
}

/// An h2 vendor that streams each request's body back as it arrives: its answer's head goes at
/// once, and each frame it reads is echoed.
async fn echoing_h2_vendor() -> (u16, String) {
    h2_vendor(hyper::service::service_fn(
        |request: http::Request<hyper::body::Incoming>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(request.into_body()))
        },
    ))
    .await
}

/// An h2 vendor whose every answer ends with trailers: one quoting the `authorization` it was
/// sent, one not.
async fn trailing_h2_vendor() -> (u16, String) {
    use http_body_util::BodyExt as _;
    h2_vendor(hyper::service::service_fn(
        |request: http::Request<hyper::body::Incoming>| async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-debug-auth", request.headers()["authorization"].clone());
            trailers.insert("x-kept-trailer", "fine".parse().unwrap());
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"ok\":true}"))
                .with_trailers(async move { Some(Ok(trailers)) });
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        },
    ))
    .await
}

/// A Stripe-like gateway for the h2 vendor at `port`, and its answer to a charge's `GET` sent
/// over h2c with the caller token.
async fn charge_over_h2(
    port: u16,
    ca_pem: &str,
) -> (TestGateway, http::Response<hyper::body::Incoming>) {
    let gw = start_with_key(
        &stripe_like_at(port, ""),
        Some(ca_pem),
        "stripe-key",
        VENDOR_KEY,
        "",
    )
    .await;
    let mut sender = h2c_sender(gw.running().listen_addr).await;
    let request = http::Request::get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .header("authorization", format!("Bearer {}", gw.token))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (gw, response)
}

/// A vendor's trailer that quotes the injected credential never reaches the caller; its other
/// trailers do.
#[tokio::test]
async fn a_vendor_echoing_the_injected_credential_in_a_trailer_never_shows_it_to_the_caller() {
    use http_body_util::BodyExt as _;
    let (port, ca_pem) = trailing_h2_vendor().await;
    let (gw, response) = charge_over_h2(port, &ca_pem).await;
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the trailers came");
    assert_eq!(trailers.get("x-kept-trailer").unwrap(), "fine");
    assert!(trailers.get("x-debug-auth").is_none(), "{trailers:?}");
    assert_eq!(&collected.to_bytes()[..], b"{\"ok\":true}");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["secret_echoed"], true, "{events:#?}");
    gw.stop().await;
}

/// An answer that can have no content (a `204` here) passes on none of what an h2 vendor sends
/// with it anyway: the h2 crate takes DATA and trailers after it, and no echo filter reads an
/// answer that has no body, so a trailer quoting the injected credential would reach an h2
/// caller unread.
#[tokio::test]
async fn a_bodiless_answer_passes_on_no_data_or_trailers() {
    use http_body_util::BodyExt as _;
    let (port, ca_pem) = h2_vendor(hyper::service::service_fn(
        |request: http::Request<hyper::body::Incoming>| async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-debug-auth", request.headers()["authorization"].clone());
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"quoted"))
                .with_trailers(async move { Some(Ok(trailers)) });
            let mut response = http::Response::new(body);
            *response.status_mut() = http::StatusCode::NO_CONTENT;
            Ok::<_, std::convert::Infallible>(response)
        },
    ))
    .await;
    let (gw, response) = charge_over_h2(port, &ca_pem).await;
    assert_eq!(response.status(), 204);
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_none(), "{:?}", collected.trailers());
    assert!(collected.to_bytes().is_empty());
    gw.stop().await;
}

/// An h2 vendor's answer that ends before the request body stops the upload: the vendor's
/// stream is reset, as Postern's HTTP/1.1 client stops an upload once the answer comes. Before,
/// the upload went on in hyper's task, after the call and its vendor stream were counted done,
/// for as long as its caller kept sending (over HTTP/1.1 and h2c alike).
#[tokio::test]
async fn an_early_h2_answer_ends_the_upload() {
    use http_body_util::BodyExt as _;
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (port, ca_pem) = h2_vendor(hyper::service::service_fn(
        move |request: http::Request<hyper::body::Incoming>| {
            let ended_tx = ended_tx.clone();
            async move {
                // The body is read on, apart from the answer, which ends at once.
                let mut body = request.into_body();
                tokio::spawn(async move {
                    let how = loop {
                        match body.frame().await {
                            Some(Ok(_)) => continue,
                            Some(Err(_)) => break "reset",
                            None => break "ended",
                        }
                    };
                    let _ = ended_tx.send(how);
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"{\"id\":\"ch_early\"}"),
                )))
            }
        },
    ))
    .await;
    let gw = start_with_key(
        &stripe_like_at(port, ""),
        Some(&ca_pem),
        "stripe-key",
        VENDOR_KEY,
        "",
    )
    .await;
    for caller in [client(), h2c_client()] {
        let (messages, body) = channel_stream();
        messages.send(b"amount=1&".to_vec()).await.unwrap();
        let response = caller
            .post(format!("{}/stripe/v1/charges", gw.base))
            .bearer_auth(&gw.token)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            &response.bytes().await.unwrap()[..],
            b"{\"id\":\"ch_early\"}"
        );
        // The caller keeps its upload open; the vendor's side of it ends all the same.
        let how = tokio::time::timeout(Duration::from_secs(5), ended.recv())
            .await
            .expect("the upload went on after the answer ended");
        assert_eq!(how, Some("reset"));
        drop(messages);
    }
    gw.stop().await;
}

/// A full-duplex exchange inside one call: a caller streams small messages and waits for the
/// vendor's answer to each before it sends the next, and the vendor (over h2) answers each as
/// it reads it; over h2c and over HTTP/1.1 (a chunked upload) to Postern, and typed as JSON
/// (read for a `_method` key too). Nothing at a message's end could start a token, and a JSON
/// body's `_method` is decided inside it, so nothing of it is held back (a body used to keep its
/// last 48 bytes until more came, and a JSON one its last byte: such an exchange stalled).
#[tokio::test]
async fn a_full_duplex_exchange_is_not_stalled() {
    let (port, ca_pem) = echoing_h2_vendor().await;
    let gw = start_with_key(
        &stripe_like_at(port, ""),
        Some(&ca_pem),
        "stripe-key",
        VENDOR_KEY,
        "",
    )
    .await;
    // A POST typed as JSON is read for a `_method` key as well, decided inside the body.
    for (caller, version, content_type) in [
        (
            h2c_client(),
            reqwest::Version::HTTP_2,
            "application/x-ndjson",
        ),
        (client(), reqwest::Version::HTTP_11, "application/x-ndjson"),
        (h2c_client(), reqwest::Version::HTTP_2, "application/json"),
    ] {
        let (messages, body) = channel_stream();
        messages.send(b"{\"n\": 1}\n".to_vec()).await.unwrap();
        let mut response = tokio::time::timeout(
            Duration::from_secs(10),
            caller
                .post(format!("{}/stripe/v1/charges", gw.base))
                .bearer_auth(&gw.token)
                .header("content-type", content_type)
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        )
        .await
        .expect("the vendor's answer head came while the request streamed")
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        for n in 1..=4 {
            let message = format!("{{\"n\": {n}}}\n");
            if n > 1 {
                messages.send(message.clone().into_bytes()).await.unwrap();
            }
            let mut echoed = Vec::new();
            while echoed.len() < message.len() {
                let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{version:?}, {content_type}: message {n} was not answered: it was held back")
                    })
                    .unwrap()
                    .expect("the answer went on");
                echoed.extend_from_slice(&chunk);
            }
            assert_eq!(String::from_utf8_lossy(&echoed), message);
        }
        drop(messages);
        let rest = tokio::time::timeout(Duration::from_secs(5), response.bytes())
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    let events = gw.wait_events(3).await;
    for event in &events {
        assert_eq!(event["status"], 200, "{events:#?}");
        assert_eq!(event["decision"], "allow");
    }
    gw.stop().await;
}

/// A vendor answer Postern refuses to read (here both `Content-Length` and `Transfer-Encoding`,
/// a response-splitting shape) is answered `502 upstream_error` naming what was wrong with it,
/// and nothing of it reaches the caller.
#[tokio::test]
async fn a_malformed_vendor_answer_is_refused_naming_the_problem() {
    let (port, _vendor, _closed) = one_answer_vendor(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nsmug!\r\n0\r\n\r\n",
    )
    .await;
    let gw = slow_gateway(port, "").await;
    let response = get_slow_x(&gw).await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Transfer-Encoding") && message.contains("Content-Length"),
        "{message}"
    );
    assert!(!message.contains("smug"), "{message}");
    // The event names the vendor the answer came from, as for any answer.
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "upstream_error", "{}", events[0]);
    assert_eq!(
        events[0]["upstream_addr"],
        format!("127.0.0.1:{port}"),
        "{}",
        events[0]
    );
    gw.stop().await;
}
