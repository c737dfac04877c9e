//! The importers on realistic files (tests/fixtures/), and the drafted stanzas checked by the
//! config crate itself.

use std::path::{Path, PathBuf};

use postern_discover::import::{import, ImportOptions, ImportReport, LogFormat};
use postern_discover::{draft_integration, Inventory};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Imports a fixture; returns the report (malformed as `line N: reason`) and the inventory.
fn check_import(format: LogFormat, name: &str) -> (ImportReport, Vec<String>, Inventory) {
    let file = std::fs::File::open(fixture(name)).unwrap();
    let total = file.metadata().unwrap().len();
    let mut inventory = Inventory::new();
    let mut last_progress = 0;
    let report = import(
        format,
        std::io::BufReader::new(file),
        &ImportOptions::default(),
        |observation| inventory.record(&observation),
        |bytes| last_progress = bytes,
    )
    .unwrap();
    assert_eq!(last_progress, total, "progress ends at the file size");
    assert_eq!(report.bytes_read, total);
    let malformed = report
        .malformed_examples
        .iter()
        .map(|m| format!("{}: {}", m.location, m.reason))
        .collect();
    (report, malformed, inventory)
}

/// `(host:port, calls, endpoints as "METHOD template")` sorted by calls.
fn summary(inventory: Inventory) -> Vec<(String, u64, Vec<String>)> {
    inventory
        .into_hosts()
        .into_iter()
        .map(|host| {
            let endpoints = host
                .endpoints
                .iter()
                .map(|e| format!("{} {}", e.method, e.template))
                .collect();
            (host.authority(), host.calls, endpoints)
        })
        .collect()
}

#[test]
fn nginx_combined() {
    let (report, malformed, inventory) = check_import(LogFormat::Nginx, "nginx_combined.log");
    assert_eq!(
        (report.records_read, report.observations, report.malformed),
        (10, 8, 2)
    );
    assert!(
        malformed[0].starts_with("line 8: not an nginx combined/common line"),
        "{malformed:?}"
    );
    assert!(malformed[1].starts_with("line 9: request"), "{malformed:?}");
    let stripe = inventory.get("api.stripe.com", 443).unwrap();
    assert_eq!(stripe.callers.len(), 2);
    assert_eq!(stripe.bytes_in, 1532 + 1420 + 1801 + 640);
    assert_eq!(
        summary(inventory),
        [
            (
                "api.stripe.com:443".to_owned(),
                4,
                vec![
                    "GET /v1/charges/{id}".to_owned(),
                    "GET /v1/customers/{id}/sources/{id}".to_owned(),
                    "POST /v1/charges".to_owned(),
                ]
            ),
            (
                "api.twilio.com:443".to_owned(),
                2,
                vec![
                    "GET /2010-04-01/Accounts/{id}/Messages/{id}.json".to_owned(),
                    "POST /2010-04-01/Accounts/{id}/Messages.json".to_owned(),
                ]
            ),
            (
                "api.github.com:443".to_owned(),
                1,
                vec!["GET /repos/octocat/Hello-World/issues/{id}".to_owned()]
            ),
            ("api.openai.com:443".to_owned(), 1, vec![]),
        ]
    );
}

#[test]
fn nginx_json() {
    let (report, malformed, inventory) = check_import(LogFormat::NginxJson, "nginx_json.log");
    assert_eq!(
        (report.records_read, report.observations, report.malformed),
        (6, 5, 1)
    );
    assert!(
        malformed[0].starts_with("line 6: not JSON"),
        "{malformed:?}"
    );
    let openai = inventory.get("api.openai.com", 443).unwrap();
    assert_eq!((openai.calls, openai.bytes_out), (3, 812 + 790 + 230));
    let completions = openai.endpoint("POST", "/v1/chat/completions").unwrap();
    assert_eq!((completions.calls, completions.last_status), (2, Some(429)));
    assert!(openai.endpoint("GET", "/v1/files/{id}/content").is_some());
    let hooks = inventory.get("hooks.slack.com", 443).unwrap();
    assert!(hooks.endpoint("POST", "/services/{id}/{id}/{id}").is_some());
    assert!(hooks.callers.contains("svc-alerts"));
    let slack = inventory.get("slack.com", 443).unwrap();
    assert!(slack.endpoint("POST", "/api/chat.postMessage").is_some());
}

#[test]
fn envoy() {
    let (report, malformed, inventory) = check_import(LogFormat::Envoy, "envoy.log");
    assert_eq!(
        (report.records_read, report.observations, report.malformed),
        (5, 3, 2)
    );
    assert!(
        malformed[0].starts_with("line 4: no destination"),
        "{malformed:?}"
    );
    assert!(
        malformed[1].starts_with("line 5: not JSON"),
        "{malformed:?}"
    );
    let stripe = inventory.get("api.stripe.com", 443).unwrap();
    assert_eq!((stripe.bytes_out, stripe.bytes_in), (310, 2750));
    assert!(stripe
        .endpoint("POST", "/v1/payment_intents/{id}/confirm")
        .is_some_and(|e| e.last_status == Some(402)));
    let twilio = inventory.get("api.twilio.com", 443).unwrap();
    assert!(twilio.endpoints.is_empty());
    assert_eq!(twilio.callers.iter().collect::<Vec<_>>(), ["10.20.0.32"]);
}

#[test]
fn har() {
    let (report, malformed, inventory) = check_import(LogFormat::Har, "sample.har");
    assert_eq!(
        (report.records_read, report.observations, report.malformed),
        (3, 2, 1)
    );
    assert!(malformed[0].starts_with("entry 3: "), "{malformed:?}");
    let github = inventory.get("api.github.com", 443).unwrap();
    assert_eq!(github.bytes_out, 412 + 520 + 24);
    assert_eq!(github.bytes_in, 980 + 2304 + 4800);
    assert_eq!(
        github
            .endpoints
            .iter()
            .map(|e| format!("{} {}", e.method, e.template))
            .collect::<Vec<_>>(),
        [
            "GET /repos/octocat/Hello-World/commits/{id}",
            "POST /repos/octocat/Hello-World/issues",
        ]
    );
}

/// The example config's `[gateway]` plus the drafted stanza: it must validate as is.
fn validate_draft(stanza: &str) -> Result<postern_config::Config, String> {
    let base = "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\n\
                data_dir = \"./postern-data\"\n\n";
    postern_config::parse(&format!("{base}{stanza}"), Path::new("/tmp/draft.toml"))
        .map_err(|errors| errors.to_string())
}

#[test]
fn drafts_validate_with_the_config_crate() {
    let mut inventory = Inventory::new();
    for (format, name) in [
        (LogFormat::Nginx, "nginx_combined.log"),
        (LogFormat::NginxJson, "nginx_json.log"),
        (LogFormat::Envoy, "envoy.log"),
        (LogFormat::Har, "sample.har"),
    ] {
        inventory.merge(check_import(format, name).2);
    }
    let stripe = inventory.get("api.stripe.com", 443).unwrap();
    let draft = draft_integration(stripe);
    for expected in [
        "name = \"stripe\"",
        "upstream = \"https://api.stripe.com\"",
        "hosts = [\"api.stripe.com\"]",
        "intercept = true",
        "credential = { kind = \"bearer\", secret = \"STRIPE_KEY\" }",
        "{ id = \"get_v1_customers_id_sources_id2\", method = \"GET\", path = \"/v1/customers/{id}/sources/{id2}\" },",
        "{ id = \"post_v1_payment_intents_id_confirm\", method = \"POST\", path = \"/v1/payment_intents/{id}/confirm\" },",
        "# 1 call (0 blocked), last status 402, last seen 2024-03-05T10:11:13.001Z",
    ] {
        assert!(draft.contains(expected), "{expected}\n---\n{draft}");
    }
    let config = validate_draft(&draft).unwrap_or_else(|e| panic!("{e}\n---\n{draft}"));
    let stripe = config.integration("stripe").unwrap();
    assert_eq!(stripe.operations.len(), 5);

    let twilio = draft_integration(inventory.get("api.twilio.com", 443).unwrap());
    let config = validate_draft(&twilio).unwrap_or_else(|e| panic!("{e}\n---\n{twilio}"));
    let paths: Vec<&str> = config
        .integration("twilio")
        .unwrap()
        .operations
        .iter()
        .map(|o| o.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/2010-04-01/Accounts/{id}/Messages.json",
            "/2010-04-01/Accounts/{id}/Messages/{id2}.json"
        ]
    );
    for host in inventory.hosts().filter(|h| !h.endpoints.is_empty()) {
        let draft = draft_integration(host);
        validate_draft(&draft).unwrap_or_else(|e| panic!("{}: {e}\n---\n{draft}", host.host));
    }

    // No endpoint visible: the draft says what to do, and the config refuses it until done.
    let openai_tunnel = draft_integration(&postern_discover::DiscoveredHost::new(
        "api.openai.com",
        443,
        0,
    ));
    assert!(openai_tunnel.contains("TODO: no endpoint was visible"));
    assert!(validate_draft(&openai_tunnel)
        .unwrap_err()
        .contains("no operations"));
}
