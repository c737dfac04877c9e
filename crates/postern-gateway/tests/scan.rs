//! Data classification in the gateway: block, redact, report, unscanned, and the data-flow ledger.

mod support;

use postern_scan::testing::{brotli, zstd};
use support::*;

fn body(vendor: &TestVendor, mode: &str, extra: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "crm"
vendor = "CRM"
owner = "sales@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
data_classes = ["pii.email"]
on_unapproved = "{mode}"
{extra}
operations = [ {{ id = "create_contact", method = "POST", path = "/contacts" }} ]

[[grants]]
caller = "checkout"
integration = "crm"
operations = ["*"]
"#,
        port = vendor.addr.port()
    )
}

const WITH_EMAIL: &str = r#"{"name":"Ada","email":"ada@example.com"}"#;
const WITH_CARD: &str = r#"{"name":"Ada","email":"ada@example.com","card":"4242424242424242"}"#;

async fn post(gw: &TestGateway, payload: &str) -> reqwest::Response {
    client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn unapproved_class_is_blocked_and_nothing_reaches_the_vendor() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "block", ""), vendor.ca_pem.as_deref()).await;
    let approved = post(&gw, WITH_EMAIL).await;
    assert_eq!(approved.status(), 200, "an approved class passes");
    approved.bytes().await.unwrap();
    let response = post(&gw, WITH_CARD).await;
    assert_eq!(response.status(), 403);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "data_class_not_approved");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("payment.card"));
    assert!(!error.to_string().contains("4242424242424242"));
    assert_eq!(vendor.seen().len(), 1);
    let events = gw.wait_events(2).await;
    let allowed = events.iter().find(|e| e["status"] == 200).unwrap();
    let blocked = events.iter().find(|e| e["status"] == 403).unwrap();
    assert_eq!(allowed["data_classes"]["pii.email"], 1);
    assert_eq!(blocked["reason"], "data_class_not_approved");
    assert_eq!(blocked["data_classes"]["payment.card"], 1);
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains("ada@example.com"));
    // The data-flow ledger answers what went to the vendor.
    gw.running().shared().flush_dataflow();
    let rows = gw
        .running()
        .shared()
        .vault
        .dataflow(Some("crm"), None)
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.class == "pii.email" && r.caller == "checkout" && r.direction == "request"),
        "{rows:?}"
    );
    gw.stop().await;
}

/// A body of 256 KiB or more is scanned on the blocking pool, not on the worker: the same
/// findings, redacted in place (a card near the end of 600 KB of notes).
#[tokio::test]
async fn a_large_body_is_scanned_off_the_worker_with_the_same_findings() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "redact", ""), vendor.ca_pem.as_deref()).await;
    let notes = "lorem ipsum dolor sit amet ".repeat(600_000 / 27);
    let payload =
        format!(r#"{{"notes":"{notes}","email":"ada@example.com","card":"4242424242424242"}}"#);
    assert!(payload.len() >= 256 * 1024);
    assert_eq!(post(&gw, &payload).await.status(), 200);
    let forwarded = String::from_utf8(vendor.last().body.to_vec()).unwrap();
    assert_eq!(forwarded.len(), payload.len());
    assert!(!forwarded.contains("4242424242424242"));
    assert!(forwarded.contains("ada@example.com"));
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["redacted"], true, "{}", events[0]);
    assert_eq!(
        events[0]["data_classes"]["payment.card"], 1,
        "{}",
        events[0]
    );
    gw.stop().await;
}

#[tokio::test]
async fn unapproved_values_are_redacted_with_lengths_intact() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "redact", ""), vendor.ca_pem.as_deref()).await;
    assert_eq!(post(&gw, WITH_CARD).await.status(), 200);
    let seen = vendor.last();
    let forwarded = String::from_utf8(seen.body.to_vec()).unwrap();
    assert_eq!(forwarded.len(), WITH_CARD.len());
    assert_eq!(
        seen.header("content-length")
            .map(|v| v.parse::<usize>().unwrap())
            .unwrap_or(forwarded.len()),
        WITH_CARD.len()
    );
    assert!(!forwarded.contains("4242424242424242"), "{forwarded}");
    assert!(
        forwarded.contains("ada@example.com"),
        "approved classes are untouched"
    );
    let json: serde_json::Value = serde_json::from_str(&forwarded).expect("still valid JSON");
    assert_eq!(json["name"], "Ada");
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["redacted"], true);
    gw.stop().await;
}

/// A mask (`*`, not a base64url character) can cut a longer run down to what looks like a
/// caller token `postern` made: `pst_`, 43 characters, then an unapproved email address whose
/// local part (64 characters, the most an address is read with) is masked. The masked body,
/// as the vendor would read it, is searched again and refused; plain and compressed.
#[tokio::test]
async fn a_redaction_that_would_leave_a_token_shaped_run_is_refused() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let config = body(&vendor, "redact", "").replace(
        r#"data_classes = ["pii.email"]"#,
        r#"data_classes = ["payment.card"]"#,
    );
    let gw = TestGateway::start(&config, vendor.ca_pem.as_deref()).await;
    let note = |random: usize| {
        format!(
            r#"{{"note":"pst_{}{}@example.com"}}"#,
            "Q".repeat(random),
            "e".repeat(64)
        )
    };
    assert_refused(post(&gw, &note(43)).await, 400, "caller_token_in_body").await;
    let gz = gzip(note(43).as_bytes());
    let response = post_coded(&gw, "/crm/contacts", Some("application/json"), "gzip", gz).await;
    assert_refused(response, 400, "caller_token_in_body").await;
    assert!(vendor.seen().is_empty(), "nothing reached the vendor");
    // One character fewer before the address: the masked run is one short of a token.
    assert_eq!(post(&gw, &note(42)).await.status(), 200);
    assert!(!String::from_utf8_lossy(&vendor.last().body).contains("@example.com"));
    gw.stop().await;
}

/// A compressed body is masked decoded and encoded again in its own coding (gzip, x-gzip, br,
/// zstd), with a `Content-Length` for the new bytes; a `deflate` body, which a vendor may read
/// zlib-wrapped or raw, is refused instead (failing closed), as is nothing else.
#[tokio::test]
async fn a_compressed_body_is_redacted_and_encoded_again() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "redact", ""), vendor.ca_pem.as_deref()).await;
    let zlib = |data: &[u8]| {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    };
    let post = |encoding: &'static str, body: Vec<u8>| {
        client()
            .post(format!("{}/crm/contacts", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            // A digest of the body as sent: dropped once it is masked.
            .header(
                "content-digest",
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            )
            .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
            .body(body)
            .send()
    };
    for encoding in ["gzip", "x-gzip", "br", "zstd"] {
        let sent = match encoding {
            "br" => brotli(WITH_CARD.as_bytes(), 22),
            "zstd" => zstd(WITH_CARD.as_bytes(), 20),
            _ => gzip(WITH_CARD.as_bytes()),
        };
        let response = post(encoding, sent.clone()).await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{encoding}: {text}");
        let seen = vendor.last();
        assert_eq!(seen.header("content-encoding").as_deref(), Some(encoding));
        assert_eq!(seen.header("content-digest"), None, "{encoding}");
        assert_eq!(seen.header("content-md5"), None, "{encoding}");
        assert_ne!(seen.body, sent, "{encoding}: encoded again");
        assert_eq!(
            seen.header("content-length"),
            Some(seen.body.len().to_string()),
            "{encoding}"
        );
        let decoded = postern_scan::decode_for_scan(&seen.body, Some(encoding), 1 << 20).unwrap();
        let forwarded = String::from_utf8(decoded.to_vec()).unwrap();
        assert_eq!(forwarded.len(), WITH_CARD.len(), "{encoding}");
        assert!(!forwarded.contains("4242424242424242"), "{forwarded}");
        assert!(
            forwarded.contains("\"card\":\"****************\""),
            "{forwarded}"
        );
        assert!(forwarded.contains("ada@example.com"), "{forwarded}");
    }
    let seen = vendor.seen().len();
    assert_refused(
        post("deflate", zlib(WITH_CARD.as_bytes())).await.unwrap(),
        403,
        "data_class_not_approved",
    )
    .await;
    // A form whose zstd encoding, made again, would hold `&_method=DELETE&` as sent: `&_met`
    // and `hod=DELETE&` stand apart in it with a run of bytes between them that appeared
    // before. Sent in frames with a 1 KiB window, too short to reach back to the run's first
    // appearance, the run is a literal both times and the body as sent holds no such field;
    // encoded again (a window as large as the body), the second run is a match, and raw
    // literals on either side of it join. Refused, not forwarded.
    let mut seed = 0x9E37_79B9u32;
    let run: Vec<u8> = std::iter::repeat_with(|| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 24) as u8
    })
    .filter(|byte| !b"&=%+;_".contains(byte))
    .take(1500)
    .collect();
    let form = [
        &b"a="[..],
        &run,
        b"&b=1&_met",
        &run,
        b"hod=DELETE&card=4242424242424242",
    ]
    .concat();
    let sent = zstd(&form, 10);
    assert!(memchr::memmem::find(&sent, b"_method").is_none());
    let again = postern_scan::encode(postern_scan::Coding::Zstd, &form).unwrap();
    assert!(memchr::memmem::find(&again, b"&_method=DELETE&").is_some());
    let response = client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "zstd")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_refused(response, 403, "data_class_not_approved").await;
    assert_eq!(vendor.seen().len(), seen, "nothing reached the vendor");
    let events = gw.wait_events(6).await;
    for event in &events[..4] {
        assert_eq!(event["redacted"], true);
        assert_eq!(event["data_classes"]["payment.card"], 1);
    }
    assert_eq!(events[4]["reason"], "data_class_not_approved");
    gw.stop().await;
}

#[tokio::test]
async fn form_encoded_values_are_found_and_redacted_over_their_encoding() {
    // A form writes the card's spaces as `+` and `%20`, the phone's `+` as `%2B`, and the key's
    // `&` as `%26`: each is found, and masked where it stands, the form still a form.
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "redact", ""), vendor.ca_pem.as_deref()).await;
    let form = "email=ada%40example.com&card=4111+1111%201111+1111&phone=%2B1+415+555+2671&client_secret=Xk9%26mQ2vL7pZ";
    let response = client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = String::from_utf8(vendor.last().body.to_vec()).unwrap();
    let mask = |value: &str| "*".repeat(value.len());
    assert_eq!(
        forwarded,
        format!(
            "email=ada%40example.com&card={}&phone={}&client_secret={}",
            mask("4111+1111%201111+1111"),
            mask("%2B1+415+555+2671"),
            mask("Xk9%26mQ2vL7pZ")
        )
    );
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["redacted"], true);
    for class in ["payment.card", "pii.phone", "secret.generic", "pii.email"] {
        assert_eq!(
            events[0]["data_classes"][class], 1,
            "{class}: {}",
            events[0]
        );
    }
    // A scanned form body is read for a method override as well: refused whole.
    let seen = vendor.seen().len();
    let response = client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=ada&_method=DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_override_refused");
    assert_eq!(vendor.seen().len(), seen);
    // And read decoded when it is compressed, for `_method` as for the caller's token (read
    // whole here).
    for (content_type, body, code) in [
        (
            "application/x-www-form-urlencoded",
            "name=ada&_method=DELETE".to_string(),
            "method_override_refused",
        ),
        (
            "application/json",
            format!("{{\"note\":\"{}\"}}", gw.token),
            "caller_token_in_body",
        ),
    ] {
        let body = gzip(body.as_bytes());
        let response = post_coded(&gw, "/crm/contacts", Some(content_type), "gzip", body).await;
        assert_refused(response, 400, code).await;
        assert_eq!(vendor.seen().len(), seen);
    }
    gw.stop().await;
}

/// The caller's token as sent in a scanned body is refused whether the body is read whole
/// (within the scan cap) or only its start (past it, the token in what was read ahead), and a
/// body past its limit while it is read ahead is refused too: nothing reaches the vendor, and
/// each event counts the bytes Postern read.
#[tokio::test]
async fn the_callers_token_in_a_scanned_body_is_refused_within_and_past_the_cap() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(
        &body(&vendor, "report", "scan_max_body_bytes = 1024"),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let small = format!(r#"{{"note":"{}"}}"#, gw.token);
    let large = format!(r#"{{"note":"{}","blob":"{}"}}"#, gw.token, "x".repeat(8000));
    for payload in [&small, &large] {
        assert_refused(post(&gw, payload).await, 400, "caller_token_in_body").await;
    }
    // Read whole for the scan, the body is read with its escapes undone too, and for what
    // looks like any caller token `postern` made.
    let json = json_escaped(&gw.token);
    let other = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    for payload in [
        format!(r#"{{"note":"{json}"}}"#),
        format!(r#"{{"note":"{other}"}}"#),
    ] {
        assert_refused(post(&gw, &payload).await, 400, "caller_token_in_body").await;
    }
    assert!(vendor.seen().is_empty(), "nothing reached the vendor");
    let events = gw.wait_events(2).await;
    assert_eq!(events[0]["request_bytes"], small.len());
    let read = events[1]["request_bytes"].as_u64().unwrap();
    assert!(
        (1024..=large.len() as u64).contains(&read),
        "what was read ahead: {read}"
    );
    gw.stop().await;
    // A streamed body past max_request_body_bytes while it is read ahead for the scan: 413,
    // and the event counts what was read.
    let gw = TestGateway::start(
        &body(
            &vendor,
            "report",
            "scan_max_body_bytes = 4096\nmax_request_body_bytes = 1000",
        ),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let streamed = reqwest::Body::wrap_stream(futures_stream(vec![vec![b'a'; 600]; 5]));
    let response = client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "text/plain")
        .body(streamed)
        .send()
        .await
        .unwrap();
    assert_refused(response, 413, "request_too_large").await;
    assert!(vendor.seen().is_empty(), "nothing reached the vendor");
    let events = gw.wait_events(1).await;
    let read = events[0]["request_bytes"].as_u64().unwrap();
    assert!((1001..=3000).contains(&read), "what was read: {read}");
    gw.stop().await;
}

/// A compressed body larger than the scan cap, read ahead whole or in part, is still read
/// decoded for the caller's token: refused, and the vendor never has it whole.
#[tokio::test]
async fn a_large_compressed_body_is_read_decoded_for_the_token() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(
        &body(&vendor, "report", "scan_max_body_bytes = 1024"),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let text = |token: &str| -> Vec<u8> {
        let mut text: Vec<u8> = (0..4000u32)
            .flat_map(|n| format!("{n},").into_bytes())
            .collect();
        text.extend_from_slice(token.as_bytes());
        text.extend((4000..8000u32).flat_map(|n| format!("{n},").into_bytes()));
        text
    };
    let with_token = gzip(&text(&gw.token));
    assert!(with_token.len() > 1024, "past the scan cap");
    assert!(
        !with_token
            .windows(gw.token.len())
            .any(|w| w == gw.token.as_bytes()),
        "the token is not in the compressed bytes as sent"
    );
    // Whole with its length (read ahead to its end), and streamed in pieces.
    for pieces in [None, Some(300)] {
        let body = match pieces {
            None => reqwest::Body::from(with_token.clone()),
            Some(pieces) => reqwest::Body::wrap_stream(futures_stream(
                with_token.chunks(pieces).map(<[u8]>::to_vec).collect(),
            )),
        };
        let seen = vendor.seen().len();
        let response = post_coded(&gw, "/crm/contacts", Some("text/plain"), "gzip", body).await;
        assert_refused(response, 400, "caller_token_in_body").await;
        assert!(never_whole(&vendor, seen, with_token.len()));
    }
    let harmless = gzip(&text("no token here"));
    let response = post_coded(
        &gw,
        "/crm/contacts",
        Some("text/plain"),
        "gzip",
        harmless.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().body, harmless);
    gw.stop().await;
}

#[tokio::test]
async fn report_mode_forwards_and_records_and_large_bodies_are_marked_unscanned() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(
        &body(&vendor, "report", "scan_max_body_bytes = 2048"),
        vendor.ca_pem.as_deref(),
    )
    .await;
    assert_eq!(post(&gw, WITH_CARD).await.status(), 200);
    assert_eq!(vendor.last().body, WITH_CARD);
    let large = format!(
        r#"{{"blob":"{}","card":"4242424242424242"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(post(&gw, &large).await.status(), 200);
    assert_eq!(vendor.last().body.len(), large.len(), "streamed in full");
    let events = gw.wait_events(2).await;
    assert_eq!(events[0]["data_classes"]["payment.card"], 1);
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(
        events[1]["unscanned"],
        "body larger than scan_max_body_bytes"
    );
    assert_eq!(events[1]["request_bytes"], large.len());
    gw.stop().await;
}

/// A vendor whose answers carry an email (approved) and a card number and an SSN (not approved).
fn leaky_vendor() -> Handler {
    std::sync::Arc::new(|_request: &SeenRequest| {
        Answer::json(
            200,
            serde_json::json!({
                "id": "cus_1",
                "email": "ada@example.com",
                "card": "4242424242424242",
                "ssn": "123-45-6789"
            }),
        )
    })
}

#[tokio::test]
async fn responses_are_scanned_and_unapproved_values_redacted_blocked_or_reported() {
    // redact: the caller gets the body with the card and SSN masked, same length.
    let vendor = TestVendor::tls(leaky_vendor()).await;
    let gw = TestGateway::start(&body(&vendor, "redact", ""), vendor.ca_pem.as_deref()).await;
    let response = post(&gw, WITH_EMAIL).await;
    assert_eq!(response.status(), 200);
    let length = response.content_length();
    let text = response.text().await.unwrap();
    assert_eq!(
        length,
        Some(text.len() as u64),
        "Content-Length stays right"
    );
    assert!(
        text.contains("ada@example.com"),
        "approved class passes: {text}"
    );
    assert!(!text.contains("4242424242424242"), "{text}");
    assert!(!text.contains("123-45-6789"), "{text}");
    let original = serde_json::json!({"id": "cus_1", "email": "ada@example.com", "card": "4242424242424242", "ssn": "123-45-6789"}).to_string();
    assert_eq!(text.len(), original.len());
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["response_data_classes"]["payment.card"], 1);
    assert_eq!(events[0]["response_data_classes"]["pii.email"], 1);
    assert_eq!(events[0]["response_redacted"], true);
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains("4242424242424242"));
    gw.running().shared().flush_dataflow();
    let rows = gw
        .running()
        .shared()
        .vault
        .dataflow(Some("crm"), None)
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.class == "payment.card" && r.direction == "response"),
        "{rows:?}"
    );
    gw.stop().await;

    // block: the caller never sees the response.
    let gw = TestGateway::start(&body(&vendor, "block", ""), vendor.ca_pem.as_deref()).await;
    let response = post(&gw, WITH_EMAIL).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("response_data_class_not_approved"), "{text}");
    assert!(!text.contains("4242424242424242"));
    let events = gw.wait_events(1).await;
    assert_eq!(events[0]["reason"], "response_data_class_not_approved");
    assert_eq!(events[0]["decision"], "allow");
    gw.stop().await;

    // report: passed unchanged, counted.
    let gw = TestGateway::start(&body(&vendor, "report", ""), vendor.ca_pem.as_deref()).await;
    let text = post(&gw, WITH_EMAIL).await.text().await.unwrap();
    assert!(text.contains("4242424242424242"));
    let events = gw.wait_events(1).await;
    assert_eq!(
        events[0]["response_data_classes"]["pii.us_ssn"], 1,
        "{}",
        events[0]
    );
    assert!(events[0].get("response_redacted").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_response_larger_than_the_scan_cap_streams_and_is_marked_unscanned() {
    let big = "x".repeat(4096);
    let vendor = TestVendor::tls(std::sync::Arc::new(move |_request: &SeenRequest| {
        Answer::json(
            200,
            serde_json::json!({ "blob": big, "card": "4242424242424242" }),
        )
    }))
    .await;
    let gw = TestGateway::start(
        &body(&vendor, "redact", "scan_max_body_bytes = 1024"),
        vendor.ca_pem.as_deref(),
    )
    .await;
    // The request itself is small enough to scan.
    let text = post(&gw, WITH_EMAIL).await.text().await.unwrap();
    assert!(text.len() > 4096);
    let events = gw.wait_events(1).await;
    assert_eq!(
        events[0]["response_unscanned"],
        "body larger than scan_max_body_bytes"
    );
    assert_eq!(
        events[0]["response_bytes"].as_u64(),
        Some(text.len() as u64)
    );
    gw.stop().await;
}

/// A vendor's answer in `zstd` (as a CDN sends to a client that accepts it) is decoded for
/// scanning like one in gzip: a card in it is found and the answer withheld, whatever window
/// its frame declares (decoded whole, in one pass, within the cap, as clients' decoders take
/// windows up to 128 MiB); one cut short is scanned as sent and marked unscanned.
#[tokio::test]
async fn a_zstd_response_is_decoded_for_scanning() {
    let vendor = TestVendor::tls(std::sync::Arc::new(|request: &SeenRequest| {
        let body = match request.target.rsplit_once('?').map(|(_, query)| query) {
            Some("window=wide") => zstd(WITH_CARD.as_bytes(), 27),
            Some("cut") => {
                let whole = zstd(WITH_CARD.as_bytes(), 20);
                whole[..whole.len() - 2].to_vec()
            }
            _ => zstd(WITH_CARD.as_bytes(), 20),
        };
        Answer {
            status: 200,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("content-encoding", "zstd".to_string()),
            ],
            body: body.into(),
        }
    }))
    .await;
    let gw = TestGateway::start(&body(&vendor, "block", ""), vendor.ca_pem.as_deref()).await;
    let ask = |path: &'static str| {
        client()
            .post(format!("{}/crm/contacts{path}", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", "application/json")
            .header("accept-encoding", "zstd")
            .body(WITH_EMAIL)
            .send()
    };
    for path in ["", "?window=wide"] {
        let response = ask(path).await.unwrap();
        assert_eq!(response.status(), 502, "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains("response_data_class_not_approved"), "{text}");
    }
    let response = ask("?cut").await.unwrap();
    assert_eq!(response.status(), 200, "scanned as sent: nothing found");
    let events = gw.wait_events(3).await;
    for event in &events[..2] {
        assert_eq!(event["response_data_classes"]["payment.card"], 1);
    }
    assert_eq!(
        events[2]["response_unscanned"],
        "body could not be decoded for scanning"
    );
    gw.stop().await;
}

/// With `redact`, the vendor is asked for `identity` only: a vendor that compresses whenever the
/// caller accepts it answers plain, and the card in its answer is masked, where a compressed
/// answer would be withheld (`block` asks for gzip, gets it, and withholds the answer).
#[tokio::test]
async fn a_redacting_integration_is_answered_in_a_body_it_can_mask() {
    let vendor = TestVendor::tls(std::sync::Arc::new(|request: &SeenRequest| {
        let json = WITH_CARD.as_bytes();
        let compress = request
            .header("accept-encoding")
            .is_some_and(|accepted| accepted.contains("gzip"));
        let mut headers = vec![("content-type", "application/json".to_string())];
        let body = match compress {
            true => {
                headers.push(("content-encoding", "gzip".to_string()));
                gzip(json)
            }
            false => json.to_vec(),
        };
        Answer {
            status: 200,
            headers,
            body: body.into(),
        }
    }))
    .await;
    for (mode, status) in [("redact", 200), ("block", 502)] {
        let gw = TestGateway::start(&body(&vendor, mode, ""), vendor.ca_pem.as_deref()).await;
        let response = client()
            .post(format!("{}/crm/contacts", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", "application/json")
            .header("accept-encoding", "gzip, deflate, br, zstd")
            .body(WITH_EMAIL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{mode}");
        let offered = vendor.last().header("accept-encoding");
        let expected = if mode == "redact" {
            "identity"
        } else {
            "gzip, deflate, br, zstd"
        };
        assert_eq!(offered.as_deref(), Some(expected), "{mode}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("4242424242424242"), "{mode}: {text}");
        if mode == "redact" {
            assert!(text.contains("\"card\":\"****************\""), "{text}");
            assert!(text.contains("ada@example.com"), "{text}");
        }
        gw.stop().await;
    }
}

/// For an integration whose answers are scanned, the codings the caller accepts are narrowed to
/// those Postern decodes, each written as every server reads it, so the vendor cannot answer in
/// one that could only be scanned as sent; a list left empty, or no field, asks for
/// `identity`; a list of known codings in that form goes as it came. An integration that does
/// not scan forwards the field untouched.
#[tokio::test]
async fn accept_encoding_is_narrowed_to_the_codings_postern_decodes() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let scanned = body(&vendor, "block", "");
    let plain = scanned.replace(
        "data_classes = [\"pii.email\"]\non_unapproved = \"block\"\n",
        "",
    );
    assert_ne!(plain, scanned);
    let redacting = body(&vendor, "redact", "");
    for (config, scans) in [(scanned, true), (plain, false), (redacting, true)] {
        let redacts = config.contains("\"redact\"");
        let gw = TestGateway::start(&config, vendor.ca_pem.as_deref()).await;
        // A call with these `Accept-Encoding` lines; the lines the vendor got.
        let ask = |lines: &[&str]| {
            let mut request = client()
                .post(format!("{}/crm/contacts", gw.base))
                .bearer_auth(&gw.token)
                .header("content-type", "application/json");
            for line in lines {
                request = request.header("accept-encoding", *line);
            }
            let (vendor, label) = (&vendor, format!("{lines:?}"));
            async move {
                let response = request.body(WITH_EMAIL).send().await.unwrap();
                assert_eq!(response.status(), 200, "{label}");
                let seen: Vec<String> = vendor
                    .last()
                    .headers
                    .get_all("accept-encoding")
                    .iter()
                    .map(|value| value.to_str().unwrap().to_string())
                    .collect();
                seen
            }
        };
        for (sent, narrowed) in [
            ("gzip, deflate, br, zstd", "gzip, deflate, br, zstd"),
            ("gzip;q=1.0, identity;q=0", "gzip;q=1.0, identity;q=0"),
            (
                "gzip, deflate, br, zstd, dcb, dcz",
                "gzip, deflate, br, zstd",
            ),
            ("compress;q=0.5, ZSTD;Q=1, *;q=0.1", "zstd;q=1"),
            ("dcz, *;q=0, x-gzip", "x-gzip"),
            // Weights some servers read otherwise: out of RFC 9110's shape, two of them,
            // another parameter; spaces around the `;` are allowed.
            (
                "gzip;q=1e-46, br;q=0.000, zstd;q=0;q=1, deflate;level=9, identity ; q=0.5",
                "br;q=0.000, identity;q=0.5",
            ),
            (
                "gzip;q=0.5 , br\t;\tq=1\t, zstd",
                "gzip;q=0.5, br;q=1, zstd",
            ),
            ("gzip;q=0.5000, br;q=1.5, zstd;q=, deflate;q= 1", "identity"),
            ("compress", "identity"),
            ("*", "identity"),
        ] {
            // Redacting, only `identity`: a compressed answer cannot be masked in place.
            let expected = match (scans, redacts) {
                (true, true) => "identity",
                (true, false) => narrowed,
                (false, _) => sent,
            };
            assert_eq!(ask(&[sent]).await, [expected], "{sent}, scanned: {scans}");
        }
        // Two lines are one list: narrowed to one line when a coding goes.
        let lines = ask(&["gzip", "dcz"]).await;
        match (scans, redacts) {
            (true, true) => assert_eq!(lines, ["identity"]),
            (true, false) => assert_eq!(lines, ["gzip"]),
            (false, _) => assert_eq!(lines, ["gzip", "dcz"]),
        }
        // No field (a server may then use any coding): `identity` is asked for.
        let expected: &[&str] = if scans { &["identity"] } else { &[] };
        assert_eq!(ask(&[]).await, expected);
        gw.stop().await;
    }
}

/// Several `Content-Encoding` lines are one list (RFC 9110 §5.3), as a vendor may read them: a
/// gzip body announced on a second line is decoded and scanned like one announced on the first.
#[tokio::test]
async fn a_coding_on_a_second_content_encoding_line_is_decoded_for_scanning() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "block", ""), vendor.ca_pem.as_deref()).await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, WITH_CARD.as_bytes()).unwrap();
    let compressed = gzip.finish().unwrap();
    let response = client()
        .post(format!("{}/crm/contacts", gw.base))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .header("content-encoding", "gzip")
        .body(compressed)
        .send()
        .await
        .unwrap();
    assert_refused(response, 403, "data_class_not_approved").await;
    assert!(vendor.seen().is_empty());
    gw.stop().await;
}

/// A request body Postern cannot decode is refused: one in a coding it does not know before it
/// is read (`415`), one not valid for its coding (`gzip` on plain bytes) once read (`400`: where
/// the caller's token stands in what a vendor decodes cannot be told). And a form sent with no
/// `Content-Type`, which Rack reads as a form, is scanned decoded as one.
#[tokio::test]
async fn undecodable_bodies_are_refused_and_untyped_ones_scanned_as_forms() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&body(&vendor, "block", ""), vendor.ca_pem.as_deref()).await;
    for (coding, status, code) in [
        ("x-identity", 415, "unsupported_content_encoding"),
        ("compress", 415, "unsupported_content_encoding"),
        // Not gzip: where the caller's token stands in what a vendor decodes cannot be told.
        ("gzip", 400, "request_body_undecodable"),
    ] {
        let response = client()
            .post(format!("{}/crm/contacts", gw.base))
            .bearer_auth(&gw.token)
            // (Text: a POST of JSON in gzip that is not gzip is refused whole, since what a
            // server that undoes the coding reads for `_method` cannot be told.)
            .header("content-type", "text/plain")
            .header("content-encoding", coding)
            .body(WITH_CARD)
            .send()
            .await
            .unwrap();
        assert_refused(response, status, code).await;
    }
    for form in ["c=4111+1111+1111+1111", "c=%34111111111111111"] {
        let response = client()
            .post(format!("{}/crm/contacts", gw.base))
            .bearer_auth(&gw.token)
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{form}");
    }
    assert!(vendor.seen().is_empty());
    let events = gw.wait_events(5).await;
    assert_eq!(events[2]["reason"], "request_body_undecodable");
    gw.stop().await;
}

/// What is read of an answer for scanning is its start, and `max_response_body_bytes` holds for
/// it: an answer with no declared length that passes the limit within the scan cap is refused,
/// not passed on whole.
#[tokio::test]
async fn a_scanned_answer_is_held_to_the_response_limit() {
    let mut answer =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        answer.extend_from_slice(b"3e8\r\n");
        answer.extend_from_slice(&[b'z'; 1000]);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    let (port, _vendor, _closed) = one_answer_vendor(Box::leak(answer.into_boxed_slice())).await;
    let config = format!(
        r#"
[[integrations]]
name = "crm"
vendor = "CRM"
owner = "sales@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
data_classes = ["pii.email"]
on_unapproved = "report"
max_response_body_bytes = 2000
operations = [ {{ id = "export", method = "GET", path = "/export" }} ]

[[grants]]
caller = "checkout"
integration = "crm"
operations = ["*"]
"#
    );
    let gw = TestGateway::start(&config, None).await;
    let response = client()
        .get(format!("{}/crm/export", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_refused(response, 502, "response_too_large").await;
    gw.stop().await;
}

/// A compressed body on a scanned integration is decoded once, strictly, whoever the caller is:
/// a caller identified by certificate (no token to look for, and a body no `_method` reading
/// covers) has its gzip body scanned decoded, and one that is not valid for its coding is
/// refused (`400`), not scanned as sent and forwarded: a vendor whose decoder forgives more
/// would read in it what was never scanned. A `deflate` body that reads two ways (zlib and raw
/// DEFLATE) is scanned both ways.
#[tokio::test]
async fn a_certificate_callers_compressed_body_is_decoded_strictly_for_scanning() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let pki = TestPki::new();
    let staging = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[callers]]\nname = \"billing\"\nspiffe_id = \"spiffe://example.org/billing\"\n\n[[grants]]\ncaller = \"billing\"\nintegration = \"crm\"\noperations = [\"*\"]\n",
        body(&vendor, "block", "")
    );
    let gw = TestGateway::start_with_gateway(
        &config,
        vendor.ca_pem.as_deref(),
        &pki.mtls_listener(staging.path()),
    )
    .await;
    let mtls = pki.mtls_client("spiffe://example.org/billing", gw.running().listen_addr);
    let url = format!(
        "https://localhost:{}/crm/contacts",
        gw.running().listen_addr.port()
    );
    let post = |encoding: &'static str, body: Vec<u8>| {
        mtls.post(&url)
            .header("content-type", "text/plain")
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let harmless = gzip(br#"{"name":"Ada"}"#);
    let response = post("gzip", harmless.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().body, harmless, "forwarded as sent");
    let response = post("gzip", gzip(WITH_EMAIL.as_bytes())).await.unwrap();
    assert_eq!(response.status(), 200, "pii.email is approved");
    for (encoding, body) in [
        ("gzip", gzip(WITH_CARD.as_bytes())),
        ("br", brotli(WITH_CARD.as_bytes(), 22)),
        ("zstd", zstd(WITH_CARD.as_bytes(), 20)),
    ] {
        assert_refused(
            post(encoding, body).await.unwrap(),
            403,
            "data_class_not_approved",
        )
        .await;
    }
    let harmless = brotli(WITH_EMAIL.as_bytes(), 22);
    let response = post("br", harmless.clone()).await.unwrap();
    assert_eq!(response.status(), 200, "pii.email is approved, in br too");
    assert_eq!(vendor.last().body, harmless, "forwarded as sent");
    let harmless = zstd(WITH_EMAIL.as_bytes(), 20);
    let response = post("zstd", harmless.clone()).await.unwrap();
    assert_eq!(response.status(), 200, "pii.email is approved, in zstd too");
    assert_eq!(vendor.last().body, harmless, "forwarded as sent");
    // A card in gzip with a byte after the stream's end: a lenient decoder reads the card, a
    // strict one refuses the body; scanned as sent, nothing would be found.
    let mut trailing = gzip(WITH_CARD.as_bytes());
    trailing.push(0);
    // A `deflate` body valid as zlib that starts as a raw DEFLATE stored block too is read
    // both ways: harmless both ways, it goes; a card in its raw reading only is found there.
    let two_ways = postern_scan::testing::two_way_deflate(b"&note=fine&");
    let response = post("deflate", two_ways.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vendor.last().body, two_ways, "forwarded as sent");
    let card = format!("&card={}&", "4242424242424242");
    assert_refused(
        post(
            "deflate",
            postern_scan::testing::two_way_deflate(card.as_bytes()),
        )
        .await
        .unwrap(),
        403,
        "data_class_not_approved",
    )
    .await;
    let neither = [0x78, 0x01, 0x00, 0xfe, 0xff, b'a', b'b', b'c'].to_vec();
    for (encoding, body) in [
        ("gzip", WITH_CARD.as_bytes().to_vec()),
        ("gzip", trailing),
        ("deflate", neither),
    ] {
        assert_refused(
            post(encoding, body).await.unwrap(),
            400,
            "request_body_undecodable",
        )
        .await;
    }
    assert_eq!(vendor.seen().len(), 5, "only the five approved bodies");
    gw.stop().await;
}

/// A scanned bearer integration's form body (read whole for scanning, as sent and decoded) with
/// the caller's own `access_token` field is refused before anything reaches the vendor; one
/// whose fields merely hold the word is scanned and forwarded.
#[tokio::test]
async fn a_scanned_form_body_with_an_access_token_field_is_refused_whole() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("crm-key");
    std::fs::write(&key, "crm-vendor-key").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let credential = format!(
        r#"credential = {{ kind = "bearer", from_file = "{}" }}"#,
        key.display()
    );
    let gw = TestGateway::start(
        &body(&vendor, "block", &credential),
        vendor.ca_pem.as_deref(),
    )
    .await;
    const FORM: &str = "application/x-www-form-urlencoded";
    let post_form = |body: String| {
        client()
            .post(format!("{}/crm/contacts", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", FORM)
            .body(body)
            .send()
    };
    let response = post_form("name=ada&access%5Ftoken=callers-own".to_string())
        .await
        .unwrap();
    assert_refused(response, 400, "vendor_credential_in_body").await;
    let coded = gzip(b"name=ada&access_token=callers-own");
    let response = post_coded(&gw, "/crm/contacts", Some(FORM), "gzip", coded).await;
    assert_refused(response, 400, "vendor_credential_in_body").await;
    assert!(vendor.seen().is_empty(), "nothing reached the vendor");
    let fine = post_form("name=ada&note=access_token".to_string())
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert_eq!(vendor.last().body, "name=ada&note=access_token".as_bytes());
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer crm-vendor-key"
    );
    gw.stop().await;
}
