//! Real vendor SDKs from PyPI — `openai` (its Realtime client too, over `websockets`), `stripe`,
//! `twilio`, `sentry-sdk`, pinned in
//! `tests/python-requirements.txt` — call their vendors through Postern, changed only in the
//! way an app would change them: the base URL points at Postern and the API key is the caller
//! token. The vendor is a real TLS server on loopback that records what it receives.
//!
//! Each test runs one script from `tests/sdk/` with the interpreter named by
//! `POSTERN_TEST_PYTHON` (`scripts/test.sh` creates `.venv` and sets it). Without it the tests
//! skip, unless `POSTERN_REQUIRE_SDK_TESTS` is set (CI), when they fail.
//!
//! The scripts run with a cleared environment: no retries, a bounded timeout, and every proxy
//! variable pointed at a closed loopback port with only loopback exempt, so an SDK that tried
//! to reach the internet would fail instead.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::{Answer, Handler, SeenRequest, TestGateway, TestPki, TestVendor, CHECKOUT_TOKEN};

/// Upper bound for one script, interpreter start-up and SDK import included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

const OPENAI_VENDOR_KEY: &str = "sk-test-openai-vendor-key-4f9c2a";
const STRIPE_VENDOR_KEY: &str = "sk_test_51StripeVendorKeyForPosternTests";
const TWILIO_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_VENDOR_AUTH_TOKEN: &str = "twilio-vendor-auth-token-7d1e";
const SENTRY_VENDOR_AUTH: &str =
    "Sentry sentry_version=7, sentry_key=0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// The interpreter with the SDKs installed; `None` means skip this test.
fn sdk_python() -> Option<PathBuf> {
    match std::env::var_os("POSTERN_TEST_PYTHON") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("POSTERN_REQUIRE_SDK_TESTS").is_some() => panic!(
            "POSTERN_REQUIRE_SDK_TESTS is set but POSTERN_TEST_PYTHON is not: \
             run ./scripts/test.sh, which installs the vendor SDKs into .venv and sets it"
        ),
        _ => {
            eprintln!(
                "SKIP: vendor SDK test needs a Python with the SDKs; \
                 set POSTERN_TEST_PYTHON (scripts/test.sh does)"
            );
            None
        }
    }
}

/// Writes a vendor secret into `dir` and returns its path for `from_file`.
fn secret_file(dir: &tempfile::TempDir, name: &str, secret: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

/// A script's process, killed (and reaped) if the test gives up on it or panics.
struct ScriptProcess(std::process::Child);

impl Drop for ScriptProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a child's pipe to the end on a blocking thread.
fn read_pipe(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Runs `tests/sdk/<script> <scenario>` against `gateway` and returns the JSON object the
/// script printed. Panics with the script's output if it fails, or kills it and panics if it
/// has not closed its output within [`SCRIPT_TIMEOUT`].
///
/// (`std::process` with the pipes read on blocking threads: this crate's tokio is built
/// without the `process` feature.)
async fn run_sdk_script(
    python: &Path,
    gateway: &TestGateway,
    script: &str,
    scenario: &str,
    extra_env: &[(&str, &str)],
) -> Value {
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let dead_proxy = "http://127.0.0.1:9";
    let mut command = std::process::Command::new(python);
    command
        .arg(&script_path)
        .arg(scenario)
        .env_clear()
        .env("HOME", gateway.dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env("HTTP_PROXY", dead_proxy)
        .env("HTTPS_PROXY", dead_proxy)
        .env("ALL_PROXY", dead_proxy)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("POSTERN_BASE_URL", &gateway.base)
        .env("POSTERN_CALLER_TOKEN", &gateway.token)
        .envs(extra_env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut process = ScriptProcess(command.spawn().unwrap_or_else(|error| {
        panic!(
            "cannot run {} {}: {error}",
            python.display(),
            script_path.display()
        )
    }));
    let stdout = read_pipe(process.0.stdout.take());
    let stderr = read_pipe(process.0.stderr.take());
    let Ok((stdout, stderr)) =
        tokio::time::timeout(SCRIPT_TIMEOUT, async { (stdout.await, stderr.await) }).await
    else {
        drop(process);
        panic!(
            "{script} {scenario} did not finish within {} s and was killed",
            SCRIPT_TIMEOUT.as_secs()
        );
    };
    let status = process.0.wait().unwrap();
    let stdout = String::from_utf8_lossy(&stdout.unwrap()).to_string();
    let stderr = String::from_utf8_lossy(&stderr.unwrap()).to_string();
    assert!(
        status.success(),
        "{script} {scenario} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let last_line = stdout.lines().rev().find(|line| !line.trim().is_empty());
    last_line
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!("{script} {scenario} printed no JSON result:\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        })
}

/// The vendor saw the caller token nowhere: not in the target, a header or the body, neither
/// raw nor in any of `encoded_forms` (e.g. the caller's own Basic credential).
fn assert_caller_token_absent(seen: &[SeenRequest], encoded_forms: &[String]) {
    for request in seen {
        let everything = request.everything();
        for form in std::iter::once(CHECKOUT_TOKEN).chain(encoded_forms.iter().map(String::as_str))
        {
            assert!(
                !everything.contains(form),
                "the vendor saw the caller's credential in {} {}",
                request.method,
                request.target
            );
        }
    }
}

/// Every request carried exactly one `Authorization`, and it is `expected`.
fn assert_vendor_authorization(seen: &[SeenRequest], expected: &str) {
    for request in seen {
        let values: Vec<_> = request.headers.get_all("authorization").iter().collect();
        assert_eq!(
            values,
            vec![expected],
            "Authorization the vendor saw on {} {}",
            request.method,
            request.target
        );
    }
}

/// `(operation, decision, status, reason)` of each event, in order, for one-line comparisons;
/// every one of them a call of `checkout`.
async fn event_summary(gateway: &TestGateway, count: usize) -> Vec<(String, String, u64, String)> {
    callers_event_summary(gateway, "checkout", count).await
}

/// [`event_summary`] for the calls of `caller`.
async fn callers_event_summary(
    gateway: &TestGateway,
    caller: &str,
    count: usize,
) -> Vec<(String, String, u64, String)> {
    gateway
        .wait_events(count)
        .await
        .iter()
        .map(|event| {
            assert_eq!(event["caller"], caller, "event caller: {event}");
            (
                event["operation"].as_str().unwrap_or_default().to_string(),
                event["decision"].as_str().unwrap_or_default().to_string(),
                event["status"].as_u64().unwrap_or_default(),
                event["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn summary(
    operation: &str,
    decision: &str,
    status: u64,
    reason: &str,
) -> (String, String, u64, String) {
    (
        operation.to_string(),
        decision.to_string(),
        status,
        reason.to_string(),
    )
}

fn targets(seen: &[SeenRequest]) -> Vec<String> {
    seen.iter()
        .map(|request| format!("{} {}", request.method, request.target))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// OpenAI

/// Answers like api.openai.com for chat completions, models and embeddings.
fn openai_vendor() -> Handler {
    Arc::new(
        |request: &SeenRequest| match (request.method.as_str(), request.target.as_str()) {
            ("POST", "/v1/chat/completions") if streamed_chat(request) => openai_chat_stream(),
            ("POST", "/v1/chat/completions") => Answer::json(
                200,
                json!({
                    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                    "object": "chat.completion",
                    "created": 1_741_569_952,
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "Hello from the vendor, through Postern.",
                            "refusal": null,
                            "annotations": []
                        },
                        "logprobs": null,
                        "finish_reason": "stop"
                    }],
                    "usage": {
                        "prompt_tokens": 19,
                        "completion_tokens": 10,
                        "total_tokens": 29,
                        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                        "completion_tokens_details": {
                            "reasoning_tokens": 0,
                            "audio_tokens": 0,
                            "accepted_prediction_tokens": 0,
                            "rejected_prediction_tokens": 0
                        }
                    },
                    "service_tier": "default",
                    "system_fingerprint": "fp_06737a9306"
                }),
            ),
            ("GET", "/v1/models") => Answer::json(
                200,
                json!({
                    "object": "list",
                    "data": [
                        {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system"},
                        {"id": "text-embedding-3-small", "object": "model", "created": 1_705_948_997, "owned_by": "system"}
                    ]
                }),
            ),
            ("POST", "/v1/embeddings") => Answer::json(
                200,
                json!({
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": "AAAAAA=="}],
                    "model": "text-embedding-3-small",
                    "usage": {"prompt_tokens": 1, "total_tokens": 1}
                }),
            ),
            _ => Answer::json(
                404,
                json!({"error": {"message": "Unknown request URL", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}),
            ),
        },
    )
}

fn streamed_chat(request: &SeenRequest) -> bool {
    serde_json::from_slice::<Value>(&request.body).is_ok_and(|body| body["stream"] == true)
}

/// A chat completion as server-sent events, the way `stream=True` receives it.
fn openai_chat_stream() -> Answer {
    let chunk = |delta: Value, finish_reason: Value| {
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_06737a9306",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
        })
    };
    let events = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Streamed "}), Value::Null),
        chunk(json!({"content": "through Postern."}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    let mut body: String = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    body.push_str("data: [DONE]\n\n");
    Answer {
        status: 200,
        headers: vec![(
            "content-type",
            "text/event-stream; charset=utf-8".to_string(),
        )],
        body: body.into(),
    }
}

/// Postern config for the OpenAI integration; `chat` and `models` granted, `embeddings` not.
fn openai_config(vendor: &TestVendor, key_path: &str) -> String {
    openai_integration(
        vendor.addr.port(),
        key_path,
        r#"
  { id = "chat", method = "POST", path = "/v1/chat/completions" },
  { id = "models", method = "GET", path = "/v1/models" },
  { id = "embeddings", method = "POST", path = "/v1/embeddings" },
"#,
        r#""chat", "models""#,
    )
}

/// Postern config for an OpenAI integration on the TLS vendor at `port`, with `operations`
/// (TOML inline tables) and `granted` (their ids, quoted) granted to `checkout`.
fn openai_integration(port: u16, key_path: &str, operations: &str, granted: &str) -> String {
    format!(
        r#"
[[integrations]]
name = "openai"
vendor = "OpenAI"
owner = "ml-platform@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "bearer", from_file = "{key_path}" }}
operations = [{operations}]

[[grants]]
caller = "checkout"
integration = "openai"
operations = [{granted}]
"#
    )
}

#[tokio::test]
async fn openai_sdk_chat_and_models_through_postern() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let vendor = TestVendor::tls(openai_vendor()).await;
    let gateway =
        TestGateway::start(&openai_config(&vendor, &key_path), vendor.ca_pem.as_deref()).await;

    let result = run_sdk_script(&python, &gateway, "openai_calls.py", "chat_and_models", &[]).await;

    assert_eq!(
        result,
        json!({
            "completion_id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "completion": "Hello from the vendor, through Postern.",
            "total_tokens": 29,
            "streamed": "Streamed through Postern.",
            "models": ["gpt-4o-mini", "text-embedding-3-small"],
        })
    );
    let seen = vendor.seen();
    assert_eq!(
        targets(&seen),
        [
            "POST /v1/chat/completions",
            "POST /v1/chat/completions",
            "GET /v1/models"
        ]
    );
    assert_vendor_authorization(&seen, &format!("Bearer {OPENAI_VENDOR_KEY}"));
    assert_caller_token_absent(&seen, &[]);
    let chat_body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        chat_body["model"], "gpt-4o-mini",
        "the request body reaches the vendor unchanged"
    );
    assert_eq!(
        seen[0].header("user-agent").as_deref(),
        Some(format!("OpenAI/Python {}", pinned_version("openai")).as_str()),
        "the SDK's own headers reach the vendor"
    );
    assert_eq!(
        event_summary(&gateway, 3).await,
        [
            summary("chat", "allow", 200, "granted"),
            summary("chat", "allow", 200, "granted"),
            summary("models", "allow", 200, "granted"),
        ]
    );
    gateway.stop().await;
}

/// The Realtime vendor's answer to a client event: `<type>d` (`session.update` →
/// `session.updated`) with the event's session.
fn realtime_answer(text: &str) -> Option<String> {
    let event: Value = serde_json::from_str(text).ok()?;
    Some(
        json!({
            "type": format!("{}d", event["type"].as_str()?),
            "event_id": "event_B2",
            "session": event["session"],
        })
        .to_string(),
    )
}

#[tokio::test]
async fn openai_sdk_realtime_session_through_postern() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let created = json!({
        "type": "session.created",
        "event_id": "event_B1",
        "session": {"type": "realtime", "object": "realtime.session", "model": "gpt-realtime"},
    });
    let vendor = support::WsVendor::start(Some(created.to_string()), realtime_answer).await;
    let config = openai_integration(
        vendor.port,
        &key_path,
        r#"{ id = "realtime", method = "GET", path = "/v1/realtime", websocket = true }"#,
        r#""realtime""#,
    );
    let gateway = TestGateway::start(&config, Some(&vendor.ca_pem)).await;

    let result = run_sdk_script(&python, &gateway, "openai_calls.py", "realtime", &[]).await;

    assert_eq!(
        result,
        json!({
            "created": "session.created",
            "model": "gpt-realtime",
            "updated": "session.updated",
            "instructions": "Answer through Postern.",
        })
    );
    let (target, headers) = vendor.handshakes.lock().unwrap()[0].clone();
    assert_eq!(target, "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        headers.get("authorization").unwrap(),
        &format!("Bearer {OPENAI_VENDOR_KEY}")
    );
    for (name, value) in &headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(CHECKOUT_TOKEN),
            "the caller token reached the vendor in {name}"
        );
    }
    let heard = vendor.messages.lock().unwrap().clone();
    let update: Value = serde_json::from_str(heard[0].to_text().unwrap()).unwrap();
    assert_eq!(update["type"], "session.update");
    assert_eq!(
        event_summary(&gateway, 1).await,
        [summary("realtime", "allow", 101, "granted")]
    );
    gateway.stop().await;
}

#[tokio::test]
async fn openai_sdk_ungranted_operation_raises_permission_denied_and_never_reaches_the_vendor() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let vendor = TestVendor::tls(openai_vendor()).await;
    let gateway =
        TestGateway::start(&openai_config(&vendor, &key_path), vendor.ca_pem.as_deref()).await;

    let result = run_sdk_script(
        &python,
        &gateway,
        "openai_calls.py",
        "ungranted_embeddings",
        &[],
    )
    .await;

    assert_eq!(
        result,
        json!({"error": "PermissionDeniedError", "status": 403, "code": "not_granted"})
    );
    assert_eq!(
        targets(&vendor.seen()),
        Vec::<String>::new(),
        "the vendor saw the refused call"
    );
    assert_eq!(
        event_summary(&gateway, 1).await,
        [summary("embeddings", "deny", 403, "not_granted")]
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Stripe

/// Answers like api.stripe.com for creating a customer.
fn stripe_vendor() -> Handler {
    Arc::new(
        |request: &SeenRequest| match (request.method.as_str(), request.target.as_str()) {
            ("POST", "/v1/customers") => Answer::json(
                200,
                json!({
                    "id": "cus_NffrFeUfNV2Hib",
                    "object": "customer",
                    "address": null,
                    "balance": 0,
                    "created": 1_680_893_993,
                    "currency": null,
                    "default_source": null,
                    "delinquent": false,
                    "description": null,
                    "email": "jenny.rosen@example.com",
                    "invoice_prefix": "0759376C",
                    "invoice_settings": {
                        "custom_fields": null,
                        "default_payment_method": null,
                        "footer": null,
                        "rendering_options": null
                    },
                    "livemode": false,
                    "metadata": {"order_id": "6735"},
                    "name": "Jenny Rosen",
                    "next_invoice_sequence": 1,
                    "phone": null,
                    "preferred_locales": [],
                    "shipping": null,
                    "tax_exempt": "none",
                    "test_clock": null
                }),
            ),
            _ => Answer::json(
                404,
                json!({"error": {"message": "Unrecognized request URL.", "type": "invalid_request_error"}}),
            ),
        },
    )
}

#[tokio::test]
async fn stripe_sdk_creates_a_customer_through_postern() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "stripe-key", STRIPE_VENDOR_KEY);
    let vendor = TestVendor::tls(stripe_vendor()).await;
    let config = format!(
        r#"
[[integrations]]
name = "stripe"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "bearer", from_file = "{key_path}" }}
operations = [
  {{ id = "create_customer", method = "POST", path = "/v1/customers" }},
]

[[grants]]
caller = "checkout"
integration = "stripe"
operations = ["create_customer"]
"#,
        port = vendor.addr.port(),
    );
    let gateway = TestGateway::start(&config, vendor.ca_pem.as_deref()).await;

    let result = run_sdk_script(&python, &gateway, "stripe_calls.py", "create_customer", &[]).await;

    assert_eq!(
        result,
        json!({
            "id": "cus_NffrFeUfNV2Hib",
            "object": "customer",
            "email": "jenny.rosen@example.com",
            "order_id": "6735",
        })
    );
    let seen = vendor.seen();
    assert_eq!(targets(&seen), ["POST /v1/customers"]);
    assert_vendor_authorization(&seen, &format!("Bearer {STRIPE_VENDOR_KEY}"));
    assert_caller_token_absent(&seen, &[]);
    let form = String::from_utf8_lossy(&seen[0].body).to_string();
    assert!(
        form.contains("email=jenny.rosen%40example.com")
            && form.contains("metadata[order_id]=6735"),
        "the form body reaches the vendor unchanged: {form}"
    );
    assert!(
        seen[0].header("idempotency-key").is_some() && seen[0].header("stripe-version").is_some(),
        "the SDK's Idempotency-Key and Stripe-Version reach the vendor"
    );
    assert_eq!(
        event_summary(&gateway, 1).await,
        [summary("create_customer", "allow", 200, "granted")]
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Sentry

/// Answers like Sentry's ingestion for an envelope.
fn sentry_vendor() -> Handler {
    Arc::new(|request: &SeenRequest| {
        if request.method == "POST" && request.target == "/api/42/envelope/" {
            Answer::json(200, json!({"id": "fc6d8c0c43fc4630ad850ee518f1b9d0"}))
        } else {
            Answer::json(404, json!({"detail": "not found"}))
        }
    })
}

/// The `sentry-sdk`, with `brotli` installed, sends its envelopes in `br`: Postern decodes them
/// to scan them (an event carrying a card number is refused, one carrying an approved email
/// goes), knows the caller by its client certificate, and injects the project's real
/// `X-Sentry-Auth` in place of the DSN's placeholder key; the vendor gets the envelope as the
/// SDK compressed it.
#[tokio::test]
async fn sentry_sdk_sends_brotli_envelopes_through_postern_over_mtls() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let auth_path = secret_file(&secrets, "sentry-auth", SENTRY_VENDOR_AUTH);
    let vendor = TestVendor::tls(sentry_vendor()).await;
    let pki = TestPki::new();
    let config = format!(
        r#"
[[callers]]
name = "worker"
spiffe_id = "spiffe://example.org/worker"

[[integrations]]
name = "sentry"
vendor = "Sentry"
owner = "sre@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "header", name = "x-sentry-auth", from_file = "{auth_path}" }}
data_classes = ["pii.email"]
on_unapproved = "block"
operations = [
  {{ id = "send_envelope", method = "POST", path = "/api/{{project}}/envelope/" }},
]

[[grants]]
caller = "worker"
integration = "sentry"
operations = ["send_envelope"]
"#,
        port = vendor.addr.port(),
    );
    let gateway = TestGateway::start_with_gateway(
        &config,
        vendor.ca_pem.as_deref(),
        &pki.mtls_listener(secrets.path()),
    )
    .await;
    let (cert, key) = pki.client_cert("spiffe://example.org/worker");
    let dsn = format!(
        "https://placeholder@localhost:{}/sentry/42",
        gateway.running().listen_addr.port()
    );
    let env = [
        ("POSTERN_SENTRY_DSN", dsn),
        (
            "POSTERN_CA_FILE",
            secret_file(&secrets, "ca.pem", &pki.ca_pem),
        ),
        (
            "POSTERN_CLIENT_CERT",
            secret_file(&secrets, "client.pem", &cert),
        ),
        (
            "POSTERN_CLIENT_KEY",
            secret_file(&secrets, "client-key.pem", &key),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let result = run_sdk_script(
        &python,
        &gateway,
        "sentry_calls.py",
        "capture_messages",
        &env,
    )
    .await;

    assert_eq!(result, json!({"compression": "br"}));
    assert_eq!(
        callers_event_summary(&gateway, "worker", 2).await,
        [
            summary("send_envelope", "allow", 200, "granted"),
            summary("send_envelope", "allow", 403, "data_class_not_approved"),
        ]
    );
    let seen = vendor.seen();
    assert_eq!(
        targets(&seen),
        ["POST /api/42/envelope/"],
        "only the approved event"
    );
    assert_eq!(seen[0].header("content-encoding").as_deref(), Some("br"));
    let auth: Vec<_> = seen[0].headers.get_all("x-sentry-auth").iter().collect();
    assert_eq!(auth, [SENTRY_VENDOR_AUTH], "the project's key, injected");
    // (The SDK also writes the DSN, its placeholder key included, into the envelope's header,
    // inside the body: that is the app's data, not a credential in use.)
    assert!(
        seen[0]
            .headers
            .iter()
            .all(|(_, value)| !String::from_utf8_lossy(value.as_bytes()).contains("placeholder")),
        "the DSN's placeholder key reached the vendor in a header"
    );
    let envelope = postern_scan::decode_for_scan(&seen[0].body, Some("br"), 1 << 20).unwrap();
    let envelope = String::from_utf8_lossy(&envelope);
    assert!(
        envelope.contains("checkout finished for ada@example.com"),
        "{envelope}"
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Twilio

/// Answers like api.twilio.com for sending a message.
fn twilio_vendor() -> Handler {
    Arc::new(|request: &SeenRequest| {
        let messages = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json");
        if request.method == "POST" && request.target == messages {
            let sid = "SM1f0e8ae6ade43cb3c0ce4525424e404f";
            Answer::json(
                201,
                json!({
                    "account_sid": TWILIO_ACCOUNT_SID,
                    "api_version": "2010-04-01",
                    "body": "Your order has shipped.",
                    "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
                    "date_sent": null,
                    "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
                    "direction": "outbound-api",
                    "error_code": null,
                    "error_message": null,
                    "from": "+15017122661",
                    "num_media": "0",
                    "num_segments": "1",
                    "price": null,
                    "price_unit": "USD",
                    "messaging_service_sid": null,
                    "sid": sid,
                    "status": "queued",
                    "subresource_uris": {
                        "media": format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages/{sid}/Media.json")
                    },
                    "to": "+15558675310",
                    "uri": format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages/{sid}.json")
                }),
            )
        } else {
            Answer::json(
                404,
                json!({"code": 20404, "message": "The requested resource was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}),
            )
        }
    })
}

#[tokio::test]
async fn twilio_sdk_sends_a_message_through_postern_with_basic_auth() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let token_path = secret_file(&secrets, "twilio-auth-token", TWILIO_VENDOR_AUTH_TOKEN);
    let vendor = TestVendor::tls(twilio_vendor()).await;
    let config = format!(
        r#"
[[integrations]]
name = "twilio"
vendor = "Twilio"
owner = "notifications@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "basic", username = "{TWILIO_ACCOUNT_SID}", from_file = "{token_path}" }}
operations = [
  {{ id = "create_message", method = "POST", path = "/2010-04-01/Accounts/{{AccountSid}}/Messages.json" }},
]

[[grants]]
caller = "checkout"
integration = "twilio"
operations = ["create_message"]
"#,
        port = vendor.addr.port(),
    );
    let gateway = TestGateway::start(&config, vendor.ca_pem.as_deref()).await;

    let result = run_sdk_script(
        &python,
        &gateway,
        "twilio_calls.py",
        "send_message",
        &[("TWILIO_ACCOUNT_SID", TWILIO_ACCOUNT_SID)],
    )
    .await;

    assert_eq!(
        result,
        json!({
            "sid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
            "status": "queued",
            "to": "+15558675310",
            "body": "Your order has shipped.",
        })
    );
    let seen = vendor.seen();
    assert_eq!(
        targets(&seen),
        [format!(
            "POST /2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"
        )]
    );
    let basic = |password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_ACCOUNT_SID}:{password}"))
    };
    assert_vendor_authorization(&seen, &format!("Basic {}", basic(TWILIO_VENDOR_AUTH_TOKEN)));
    assert_caller_token_absent(&seen, &[basic(CHECKOUT_TOKEN)]);
    let form = String::from_utf8_lossy(&seen[0].body).to_string();
    assert!(
        form.contains("To=%2B15558675310") && form.contains("Body=Your+order+has+shipped."),
        "the form body reaches the vendor unchanged: {form}"
    );
    assert_eq!(
        event_summary(&gateway, 1).await,
        [summary("create_message", "allow", 201, "granted")]
    );
    gateway.stop().await;
}

/// The version pinned for `package` in `tests/python-requirements.txt`.
fn pinned_version(package: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python-requirements.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix(&format!("{package}=="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{package} is not pinned in {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Forward proxy: unchanged clients through HTTPS_PROXY, with Postern's CA trusted

/// The OpenAI integration claiming api.openai.com for the forward proxy (intercepted). The
/// clients ask for api.openai.com; Postern re-originates to the local vendor.
fn openai_proxy_config(vendor: &TestVendor, key_path: &str) -> String {
    openai_config(vendor, key_path).replace(
        "allow_private_networks = [\"127.0.0.1/32\"]",
        "allow_private_networks = [\"127.0.0.1/32\"]\nhosts = [\"api.openai.com\"]",
    )
}

/// `HTTPS_PROXY` with the caller token as the proxy password, and the path of Postern's CA.
fn proxy_env(gateway: &TestGateway) -> (String, String) {
    let proxy = gateway
        .base
        .replace("http://", &format!("http://app:{CHECKOUT_TOKEN}@"));
    let ca = gateway.dir.path().join("postern-ca.pem");
    let pem = postern_gateway::intercept::export_ca_pem(&gateway.running().data_dir, &[]).unwrap();
    std::fs::write(&ca, pem).unwrap();
    (proxy, ca.display().to_string())
}

#[tokio::test]
async fn openai_sdk_through_https_proxy_gets_path_mode_decisions() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let vendor = TestVendor::tls(openai_vendor()).await;
    let gateway = TestGateway::start(
        &openai_proxy_config(&vendor, &key_path),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let (proxy, ca) = proxy_env(&gateway);
    let env = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("HTTP_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("NO_PROXY", ""),
        ("POSTERN_CA_FILE", ca.as_str()),
    ];
    let result = run_sdk_script(
        &python,
        &gateway,
        "openai_calls.py",
        "via_https_proxy",
        &env,
    )
    .await;
    assert_eq!(
        result,
        json!({
            "completion": "Hello from the vendor, through Postern.",
            "models": ["gpt-4o-mini", "text-embedding-3-small"],
            "embeddings": {"status": 403, "code": "not_granted"},
        })
    );
    let seen = vendor.seen();
    assert_eq!(
        targets(&seen),
        ["POST /v1/chat/completions", "GET /v1/models"]
    );
    assert_vendor_authorization(&seen, &format!("Bearer {OPENAI_VENDOR_KEY}"));
    assert_caller_token_absent(&seen, &[]);
    for request in &seen {
        assert!(!request.everything().contains("sk-placeholder"));
    }
    let events = gateway.wait_events(3).await;
    assert!(events
        .iter()
        .all(|e| e["mode"] == "intercept" && e["host"] == "api.openai.com"));
    assert_eq!(
        event_summary(&gateway, 3).await,
        [
            summary("chat", "allow", 200, "granted"),
            summary("models", "allow", 200, "granted"),
            summary("embeddings", "deny", 403, "not_granted"),
        ]
    );
    gateway.stop().await;
}

#[tokio::test]
async fn python_requests_through_https_proxy() {
    let Some(python) = sdk_python() else { return };
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let vendor = TestVendor::tls(openai_vendor()).await;
    let gateway = TestGateway::start(
        &openai_proxy_config(&vendor, &key_path),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let (proxy, ca) = proxy_env(&gateway);
    let env = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", ""),
        ("POSTERN_CA_FILE", ca.as_str()),
    ];
    let result = run_sdk_script(&python, &gateway, "requests_proxy.py", "main", &env).await;
    assert_eq!(
        result,
        json!({
            "models_status": 200,
            "models": ["gpt-4o-mini", "text-embedding-3-small"],
            "refused_status": 403,
            "refused_code": "not_granted",
        })
    );
    let seen = vendor.seen();
    assert_eq!(targets(&seen), ["GET /v1/models"]);
    assert_vendor_authorization(&seen, &format!("Bearer {OPENAI_VENDOR_KEY}"));
    assert_caller_token_absent(&seen, &[]);
    gateway.stop().await;
}

/// curl is a system tool here (Debian's), like the Python interpreter: the test needs it and
/// says so when it is missing, unless CI requires it.
#[tokio::test]
async fn curl_through_https_proxy_and_a_curl_that_does_not_trust_the_ca() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    if curl.is_err() {
        assert!(
            std::env::var_os("POSTERN_REQUIRE_SDK_TESTS").is_none(),
            "curl is required (POSTERN_REQUIRE_SDK_TESTS is set) but not installed"
        );
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secret_file(&secrets, "openai-key", OPENAI_VENDOR_KEY);
    let vendor = TestVendor::tls(openai_vendor()).await;
    let gateway = TestGateway::start(
        &openai_proxy_config(&vendor, &key_path),
        vendor.ca_pem.as_deref(),
    )
    .await;
    let (_, ca) = proxy_env(&gateway);
    let trusted = curl_via_proxy(&gateway.base, Some(&ca)).await;
    let stdout = String::from_utf8_lossy(&trusted.stdout).to_string();
    assert!(
        trusted.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(stdout.ends_with("\n200"), "{stdout}");
    assert!(stdout.contains("gpt-4o-mini"));
    assert_eq!(targets(&vendor.seen()), ["GET /v1/models"]);

    // Without the CA, curl refuses Postern's certificate (exit 60) and nothing is forwarded.
    let untrusting = curl_via_proxy(&gateway.base, None).await;
    assert_eq!(
        untrusting.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&untrusting.stderr)
    );
    assert!(String::from_utf8_lossy(&untrusting.stderr).contains("certificate"));
    assert_eq!(
        vendor.seen().len(),
        1,
        "the refused handshake forwarded something"
    );
    let events = gateway.wait_events(2).await;
    assert!(events.iter().any(|e| e["reason"] == "interception_refused"));
    gateway.stop().await;
}

/// `curl https://api.openai.com/v1/models` through `proxy` with the caller token as the proxy
/// password, trusting `ca` when given; prints the body then the status code.
async fn curl_via_proxy(proxy: &str, ca: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new("curl");
    command
        .env_clear()
        .args(["-sS", "--max-time", "20", "--proxy", proxy])
        .args(["--proxy-user", &format!("app:{CHECKOUT_TOKEN}")]);
    if let Some(ca) = ca {
        command.args(["--cacert", ca]);
    }
    command.args(["-w", "\n%{http_code}", "https://api.openai.com/v1/models"]);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}
