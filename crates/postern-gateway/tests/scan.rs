//! Data classification in the gateway: block, redact, report, unscanned, and the data-flow ledger.

mod support;

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
