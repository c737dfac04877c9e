//! The memory budgets every call of the process shares — of `br` and `zstd` request-body
//! decoders, and of bodies read whole to be scanned: in a test binary of their own, so that
//! filling one does not refuse other tests' bodies.

mod support;

use std::time::Duration;

use support::*;

/// Looks once at each upload still waiting: one answered is a refusal (`503` naming `code`,
/// with `Retry-After: 1`), taken out of `waiting`. Returns how many were.
async fn take_refusals(waiting: &mut [Option<tokio::net::TcpStream>], code: &str) -> usize {
    use tokio::io::AsyncReadExt;
    let mut refused = 0;
    for slot in waiting.iter_mut() {
        let Some(stream) = slot.as_mut() else {
            continue;
        };
        let mut answer = vec![0u8; 4096];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut answer)).await
        {
            let answer = String::from_utf8_lossy(&answer[..read]).to_string();
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(answer.contains(code), "{answer}");
            assert!(
                answer.to_ascii_lowercase().contains("retry-after: 1"),
                "{answer}"
            );
            refused += 1;
            *slot = None;
        }
    }
    refused
}

/// A gateway whose `stripe` integration (with `extra` lines) takes POST /v1/charges from
/// `checkout` and `reporting`.
async fn two_callers_gateway(vendor: &TestVendor, extra: &str) -> TestGateway {
    let body = format!(
        r#"
[[integrations]]
name = "stripe"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
{extra}
operations = [ {{ id = "create_charge", method = "POST", path = "/v1/charges" }} ]

[[grants]]
caller = "checkout"
integration = "stripe"
operations = ["*"]

[[grants]]
caller = "reporting"
integration = "stripe"
operations = ["*"]
"#,
        port = vendor.addr.port()
    );
    TestGateway::start(&body, vendor.ca_pem.as_deref()).await
}

/// The `br` and `zstd` request bodies being decoded at once hold at most
/// `REQUEST_DECODER_BUDGET` for their decoders' windows, and one caller's at most a quarter of
/// it: a caller's slow compressed uploads are refused (`503 request_decoders_busy`,
/// `Retry-After`) once its part is spent, rather than take the gateway's memory, while another
/// caller's still go through; the share of each comes back when its call ends.
#[tokio::test]
async fn slow_compressed_uploads_hold_at_most_the_decoder_budget() {
    use tokio::io::AsyncWriteExt;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = two_callers_gateway(&vendor, "").await;
    // 8.5 MiB each: one caller's part holds 15. Streamed (a small body framed by its length is
    // read whole before the call starts), and never sent.
    let part = postern_gateway::body::REQUEST_DECODER_CALLER_SHARE;
    let fit = part / ((8 << 20) + (512 << 10));
    let head = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Encoding: zstd\r\nTransfer-Encoding: chunked\r\n\r\n",
        gw.token
    );
    let mut streams = Vec::new();
    for _ in 0..fit + 10 {
        let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    // A refusal comes at once; a body being waited for, never. Read until ten refusals came
    // (or 20 s passed: a slow machine), then once more: no other stream is answered.
    let mut waiting: Vec<Option<tokio::net::TcpStream>> = streams.into_iter().map(Some).collect();
    let mut refused = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last_look = false;
    loop {
        refused += take_refusals(&mut waiting, "request_decoders_busy").await;
        if last_look || std::time::Instant::now() > deadline {
            break;
        }
        if refused >= 10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            last_look = true;
        }
    }
    let held: Vec<tokio::net::TcpStream> = waiting.into_iter().flatten().collect();
    assert_eq!(refused, 10, "refused {refused} of {}", fit + 10);
    assert_eq!(held.len(), fit);
    // Another caller's compressed body goes through meanwhile.
    let body = postern_scan::testing::zstd(b"amount=100", 20);
    let other = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(REPORTING_TOKEN)
        .header("content-type", "text/plain")
        .header("content-encoding", "zstd")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // The uploads end (their callers hang up): their shares come back.
    drop(held);
    let mut accepted = false;
    for _ in 0..50 {
        let response = post_coded(
            &gw,
            "/stripe/v1/charges",
            Some("text/plain"),
            "zstd",
            body.clone(),
        )
        .await;
        if response.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the hung-up uploads' shares were not given back");
    gw.stop().await;
}

/// Bodies read whole to be scanned hold at most `SCAN_BUDGET`, and one caller's at most a
/// quarter of it: slow uploads to a scanned integration are refused (`503 scanners_busy`,
/// `Retry-After`) once the caller's part is spent, rather than take the gateway's memory, and
/// reach no vendor; another caller's go through meanwhile, and the shares come back when the
/// calls end.
#[tokio::test]
async fn bodies_read_to_be_scanned_hold_at_most_the_scan_budget() {
    use tokio::io::AsyncWriteExt;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = two_callers_gateway(&vendor, "data_classes = [\"pii.email\"]").await;
    // A million bytes of a declared two million each, within the scan's cap (1 MiB): each
    // upload holds its million while the rest is waited for. One caller's part holds 67.
    const SENT: usize = 1_000_000;
    let part = postern_gateway::scan::SCAN_CALLER_SHARE;
    let fit = part / SENT;
    let head = format!(
        "POST /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        gw.token,
        2 * SENT
    );
    let body = vec![b'a'; SENT];
    let mut waiting = Vec::new();
    for _ in 0..fit + 8 {
        let mut stream = tokio::net::TcpStream::connect(gw.running().listen_addr)
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        waiting.push(Some(stream));
    }
    // Refusals come once the part is spent; a body being waited for is never answered.
    let mut refused = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while refused < 5 && std::time::Instant::now() < deadline {
        refused += take_refusals(&mut waiting, "scanners_busy").await;
    }
    assert!(refused >= 5, "refused {refused} of {}", fit + 8);
    assert!(refused <= 9, "refused {refused} of {}", fit + 8);
    assert!(vendor.seen().is_empty(), "a vendor was sent a body");
    // Another caller's scanned body goes through meanwhile.
    let other = client()
        .post(format!("{}/stripe/v1/charges", gw.base))
        .bearer_auth(REPORTING_TOKEN)
        .header("content-type", "text/plain")
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // The uploads end (their callers hang up): their shares come back.
    drop(waiting);
    let mut accepted = false;
    for _ in 0..50 {
        let response = client()
            .post(format!("{}/stripe/v1/charges", gw.base))
            .bearer_auth(&gw.token)
            .header("content-type", "text/plain")
            .body(vec![b'a'; SENT])
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the hung-up uploads' shares were not given back");
    gw.stop().await;
}
