//! The canary test (issue 3): a full scenario through the real binary with unmistakable secret
//! values — vault credentials set, rotated, rolled back and revoked from the CLI and the admin
//! API, env and file credentials, caller tokens used, refused and rotated, calls allowed and
//! denied, an upstream failure, a reload, a shutdown — and then every byte Postern wrote is
//! searched for every canary, raw and encoded. None may appear anywhere except where it must:
//! the vendor stand-in receives the vendor credentials (so a broken injection fails the test), and
//! `postern callers rotate` prints the new caller token once, on its own stdout.
//!
//! Searched: stdout and stderr of every command, every data-plane answer, every admin-API answer,
//! every file under the test directory that the test did not write itself — which covers
//! `data_dir` (event files, rotated ones included) — except the vault's own files (`vault.db`,
//! `-wal`, `-shm`) and the key files (`master.key`, `admin-token`). The vault files (as left at
//! exit, and a copy taken while the gateway runs, WAL included) are searched too: they must not
//! hold any canary in plaintext either.
//!
//! Forms searched for each canary: raw; its first 28 and last 20 characters; base64 and base64url (padded,
//! and at every 3-byte alignment, so it is found inside a longer encoded string such as
//! `base64(user:password)`); percent-encoded (upper- and lowercase escapes); hex.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// The canaries.

/// The vendor key stored with `creds set` (stdin).
const VENDOR_KEY_1: &str = "CANARY_VENDOR_KEY_7d1e4b2a9f0c3e58a6b1d2f4c8e0a7b3";
/// The value `creds rotate` puts in its place (stdin).
const VENDOR_KEY_2: &str = "CANARY_VENDOR_KEY_ROTATED_5c9a1e7f3b2d8046e1a9c7b5d3f2e0a8";
/// The caller token whose hash the config holds.
const CALLER_TOKEN: &str = "pst_CANARY_CALLER_TOKEN_3f8b2c1d9e7a6054b3c2d1e0f9a8b7c6";
/// A wrong caller token (401) that looks like a real one.
const WRONG_TOKEN: &str = "pst_CANARY_WRONG_TOKEN_a1b2c3d4e5f60718293a4b5c6d7e8f90";
const BASIC_USER: &str = "canary-user";
/// The basic-auth password in the vault, and its replacement (rotated via the admin API).
const BASIC_PASSWORD: &str = "CANARY_BASIC_PASSWORD_e4d3c2b1a0f9e8d7c6b5a4938271605f";
const BASIC_PASSWORD_2: &str = "CANARY_BASIC_PASSWORD_ROTATED_0b1c2d3e4f5a69788796a5b4c3d2e1f0";
/// `from_env` credential.
const ENV_KEY: &str = "CANARY_ENV_KEY_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
const ENV_VAR: &str = "POSTERN_CANARY_ENV_KEY";
/// `from_file` credential (a header credential).
const FILE_KEY: &str = "CANARY_FILE_KEY_1a2b3c4d5e6f708192a3b4c5d6e7f809";
/// A query-parameter credential with characters that are percent-encoded when injected
/// (`creds set --from-file`).
const QUERY_KEY: &str = "CANARY_QUERY_KEY+9b8a/7c6d=5e4f3a2b1c0d9e8f7a6b";
/// Set through the admin API (`POST /v1/credentials/NAME?kind=`).
const ADMIN_SET_KEY: &str = "CANARY_ADMIN_SET_KEY_f0e1d2c3b4a5968778695a4b3c2d1e0f";

/// A marker header the vendor stand-in uses to tell the calls apart (passed through).
const STEP_HEADER: &str = "x-canary-step";

// ---------------------------------------------------------------------------------------------
// Encoded forms and the search.

fn percent_encode(bytes: &[u8], lower: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else if lower {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Every form a canary is searched in: (description, needle).
fn forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = vec![("raw".to_string(), secret.to_vec())];
    if secret.len() >= 32 {
        out.push(("first 28 bytes".to_string(), secret[..28].to_vec()));
        out.push((
            "last 20 bytes".to_string(),
            secret[secret.len() - 20..].to_vec(),
        ));
    }
    for (name, padded, unpadded) in [
        ("base64", &STANDARD, &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE, &URL_SAFE_NO_PAD),
    ] {
        out.push((name.to_string(), padded.encode(secret).into_bytes()));
        // The same bytes inside a longer encoded string: each alignment, whole groups only.
        for shift in 0..3 {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(secret);
            let text = unpadded.encode(&shifted).into_bytes();
            let start = if shift == 0 { 0 } else { 4 };
            let end = shifted.len() / 3 * 4;
            if end >= start + 16 {
                out.push((
                    format!("{name} at byte offset {shift}"),
                    text[start..end].to_vec(),
                ));
            }
        }
    }
    out.push(("percent-encoded".to_string(), percent_encode(secret, false)));
    out.push((
        "percent-encoded (lowercase)".to_string(),
        percent_encode(secret, true),
    ));
    out.push(("hex".to_string(), hex::encode(secret).into_bytes()));
    out.push((
        "hex (uppercase)".to_string(),
        hex::encode_upper(secret).into_bytes(),
    ));
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, needle)| seen.insert(needle.clone()));
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (0..=haystack.len() - needle.len())
        .find(|&i| haystack[i] == first && &haystack[i..i + needle.len()] == needle)
}

struct Canary {
    name: String,
    forms: Vec<(String, Vec<u8>)>,
    /// Files (by path) where this canary is expected.
    allowed_in: Vec<PathBuf>,
}

impl Canary {
    fn new(name: &str, secret: &[u8]) -> Canary {
        Canary {
            name: name.to_string(),
            forms: forms(secret),
            allowed_in: Vec::new(),
        }
    }
}

/// Every (canary, form) found in `bytes`, as report lines.
fn hits(canaries: &[Canary], what: &str, path: Option<&Path>, bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for canary in canaries {
        if path.is_some_and(|p| canary.allowed_in.iter().any(|a| a == p)) {
            continue;
        }
        for (form, needle) in &canary.forms {
            if let Some(at) = find(bytes, needle) {
                let from = at.saturating_sub(80);
                let to = (at + needle.len() + 80).min(bytes.len());
                found.push(format!(
                    "{} ({form}) in {what} at byte {at}: …{}…",
                    canary.name,
                    String::from_utf8_lossy(&bytes[from..to])
                ));
            }
        }
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The vendor stand-in: plain HTTP/1.1, records every byte it receives, answers 200.

#[derive(Clone, Default)]
struct Vendor {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Vendor {
    fn start() -> (Vendor, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let vendor = Vendor::default();
        let received = vendor.received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let received = received.clone();
                std::thread::spawn(move || vendor_connection(stream, received));
            }
        });
        (vendor, port)
    }

    /// Everything received, concatenated.
    fn all(&self) -> Vec<u8> {
        self.received.lock().unwrap().concat()
    }

    /// The requests that carried `x-canary-step: step`.
    fn step(&self, step: &str) -> Vec<String> {
        let marker = format!("{STEP_HEADER}: {step}\r\n");
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).to_string())
            .filter(|r| r.to_ascii_lowercase().contains(&marker))
            .collect()
    }
}

/// Serves one connection: records every byte as it arrives (so a request cut off midway is
/// recorded too), answers 200 to a complete request, then closes.
fn vendor_connection(mut stream: TcpStream, received: Arc<Mutex<Vec<Vec<u8>>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let index = {
        let mut received = received.lock().unwrap();
        received.push(Vec::new());
        received.len() - 1
    };
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut read_more = |stream: &mut TcpStream, buffer: &mut Vec<u8>| match stream.read(&mut chunk)
    {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            received.lock().unwrap()[index].extend_from_slice(&chunk[..n]);
            true
        }
    };
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if !read_more(&mut stream, &mut buffer) {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let content_length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let complete = match content_length {
        Some(length) => loop {
            if buffer.len() >= head_end + length {
                break true;
            }
            if !read_more(&mut stream, &mut buffer) {
                break false;
            }
        },
        None if head.contains("transfer-encoding: chunked") => loop {
            if buffer.ends_with(b"0\r\n\r\n") {
                break true;
            }
            if !read_more(&mut stream, &mut buffer) {
                break false;
            }
        },
        None => true,
    };
    if complete {
        let body = r#"{"id":"ch_canary","object":"charge","ok":true}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running postern, saving everything it says.

/// Saves every output of the scenario under `<dir>/out/NN-label`.
struct Outputs {
    dir: PathBuf,
    count: AtomicUsize,
}

impl Outputs {
    fn save(&self, label: &str, bytes: &[u8]) -> PathBuf {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n:03}-{label}"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn file(&self, label: &str) -> File {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        File::create(self.dir.join(format!("{n:03}-{label}"))).unwrap()
    }
}

fn postern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command
        .env_remove("POSTERN_CONFIG")
        .env_remove("POSTERN_MASTER_KEY")
        .env_remove(ENV_VAR)
        .env("POSTERN_LOG", "debug");
    command
}

/// What a CLI command printed.
struct Printed {
    stdout: String,
    stdout_path: PathBuf,
}

/// Runs a postern CLI command with `stdin`, saves its stdout and stderr, asserts exit 0.
fn cli(outputs: &Outputs, label: &str, args: &[&str], stdin: &[u8]) -> Printed {
    let mut child = postern()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout_path = outputs.save(&format!("{label}.stdout"), &output.stdout);
    outputs.save(&format!("{label}.stderr"), &output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "postern {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Printed {
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stdout_path,
    }
}

struct Answer {
    status: u16,
    text: String,
}

/// One HTTP/1.1 exchange on a fresh connection; the whole answer is saved.
fn http(
    outputs: &Outputs,
    label: &str,
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut request = format!("{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("connection: close\r\n\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    outputs.save(&format!("{label}.http"), &answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, text }
}

struct Ports {
    listen: u16,
    admin: u16,
    vendor: u16,
    closed: u16,
}

fn config(dir: &Path, ports: &Ports, grant_delete: bool) -> String {
    let vendor = format!(
        "upstream = \"http://127.0.0.1:{}\"\nallow_plaintext = true\nallow_private_networks = [\"127.0.0.1/32\"]",
        ports.vendor
    );
    let acme_grant = if grant_delete {
        r#"["list_charges", "create_charge", "delete_charge"]"#
    } else {
        r#"["list_charges", "create_charge"]"#
    };
    format!(
        r#"[gateway]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
data_dir = "{data}"
credential_max_age_days = 30
events_max_file_bytes = 4096
events_max_files = 50

[[callers]]
name = "checkout"
token_sha256 = "{caller_hash}"

[[integrations]]
name = "acme"
vendor = "Acme"
owner = "payments@example.com"
{vendor}
credential = {{ kind = "bearer", secret = "acme-key" }}
operations = [
  {{ id = "list_charges", method = "GET", path = "/v1/charges" }},
  {{ id = "create_charge", method = "POST", path = "/v1/charges" }},
  {{ id = "delete_charge", method = "DELETE", path = "/v1/charges/{{id}}" }},
]

[[integrations]]
name = "basicco"
vendor = "Basic Co"
owner = "o@example.com"
{vendor}
credential = {{ kind = "basic", username = "{BASIC_USER}", secret = "basic-pass" }}
operations = [ {{ id = "accounts", method = "GET", path = "/v1/accounts" }} ]

[[integrations]]
name = "envco"
vendor = "Env Co"
owner = "o@example.com"
{vendor}
credential = {{ kind = "bearer", from_env = "{ENV_VAR}" }}
operations = [ {{ id = "models", method = "GET", path = "/v1/models" }} ]

[[integrations]]
name = "fileco"
vendor = "File Co"
owner = "o@example.com"
{vendor}
credential = {{ kind = "header", name = "X-Api-Key", from_file = "{file_secret}" }}
operations = [ {{ id = "items", method = "GET", path = "/v1/items" }} ]

[[integrations]]
name = "queryco"
vendor = "Query Co"
owner = "o@example.com"
{vendor}
credential = {{ kind = "query", param = "api_key", secret = "query-key" }}
operations = [ {{ id = "search", method = "GET", path = "/v1/search" }} ]

[[integrations]]
name = "adminco"
vendor = "Admin Co"
owner = "o@example.com"
{vendor}
credential = {{ kind = "bearer", secret = "admin-set-key" }}
operations = [ {{ id = "ping", method = "GET", path = "/v1/ping" }} ]

[[integrations]]
name = "downco"
vendor = "Down Co"
owner = "o@example.com"
upstream = "http://127.0.0.1:{closed}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "query", param = "api_key", secret = "query-key" }}
operations = [ {{ id = "search", method = "GET", path = "/v1/search" }} ]

[[grants]]
caller = "checkout"
integration = "acme"
operations = {acme_grant}

{other_grants}"#,
        listen = ports.listen,
        admin = ports.admin,
        closed = ports.closed,
        data = dir.join("data").display(),
        caller_hash = sha256_hex(CALLER_TOKEN),
        file_secret = dir.join("secrets/file-key").display(),
        other_grants = ["basicco", "envco", "fileco", "queryco", "adminco", "downco"]
            .iter()
            .map(|i| format!(
                "[[grants]]\ncaller = \"checkout\"\nintegration = \"{i}\"\noperations = [\"*\"]\n"
            ))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn step(name: &str) -> (&'static str, String) {
    (STEP_HEADER, name.to_string())
}

fn error_code(answer: &Answer) -> String {
    let body = answer.text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn json_body(answer: &Answer) -> serde_json::Value {
    let body = answer.text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", answer.text))
}

#[test]
fn no_secret_appears_in_anything_postern_writes() {
    let started = Instant::now();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let outputs = Outputs {
        dir: out_dir,
        count: AtomicUsize::new(0),
    };
    // Files the test writes itself (never searched): the config and the secret source files.
    let config_path = dir.join("postern.toml");
    let file_secret = dir.join("secrets/file-key");
    let query_secret = dir.join("secrets/query-key");
    std::fs::write(&file_secret, format!("{FILE_KEY}\n")).unwrap();
    std::fs::write(&query_secret, format!("{QUERY_KEY}\n")).unwrap();
    let test_written = [
        config_path.clone(),
        file_secret.clone(),
        query_secret.clone(),
    ];

    let (vendor, vendor_port) = Vendor::start();
    let ports = Ports {
        listen: free_port(),
        admin: free_port(),
        vendor: vendor_port,
        closed: free_port(),
    };
    std::fs::write(&config_path, config(dir, &ports, false)).unwrap();
    let cfg = config_path.to_str().unwrap();

    // 1. Credentials into the vault before the gateway starts: stdin and --from-file.
    cli(
        &outputs,
        "creds-set-acme",
        &["creds", "set", "acme-key", "--config", cfg],
        format!("{VENDOR_KEY_1}\n").as_bytes(),
    );
    cli(
        &outputs,
        "creds-set-basic",
        &["creds", "set", "basic-pass", "--config", cfg],
        BASIC_PASSWORD.as_bytes(),
    );
    cli(
        &outputs,
        "creds-set-query",
        &[
            "creds",
            "set",
            "query-key",
            "--from-file",
            query_secret.to_str().unwrap(),
            "--kind",
            "api_key",
            "--config",
            cfg,
        ],
        b"",
    );
    let check = {
        let output = postern()
            .env(ENV_VAR, ENV_KEY)
            .args(["check", "--json", "--config", cfg])
            .output()
            .unwrap();
        outputs.save("check.stdout", &output.stdout);
        outputs.save("check.stderr", &output.stderr);
        output
    };
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // 2. serve, JSON logs at debug level, stdout and stderr to files.
    let serve_stdout = outputs.file("serve.stdout");
    let serve_stderr = outputs.file("serve.stderr");
    let mut server = Server(
        postern()
            .env(ENV_VAR, ENV_KEY)
            .args(["--log-format", "json", "serve", "--config", cfg])
            .stdin(Stdio::null())
            .stdout(serve_stdout)
            .stderr(serve_stderr)
            .spawn()
            .unwrap(),
    );
    let (gw, admin) = (ports.listen, ports.admin);
    eventually("the admin listener answers /healthz", || {
        TcpStream::connect(("127.0.0.1", admin)).is_ok()
            && http(&outputs, "healthz", admin, "GET", "/healthz", &[], b"").status == 200
    });
    let admin_token = std::fs::read_to_string(dir.join("data/admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let master_key = STANDARD
        .decode(
            std::fs::read_to_string(dir.join("data/master.key"))
                .unwrap()
                .trim(),
        )
        .unwrap();
    assert_eq!(master_key.len(), 32);
    let admin_auth = || bearer(&admin_token);
    let readyz = http(&outputs, "readyz-start", admin, "GET", "/readyz", &[], b"");
    assert_eq!(
        readyz.status, 503,
        "admin-set-key is not in the vault yet: {}",
        readyz.text
    );

    // 3. Allowed calls, each credential kind and source, each way of sending the caller token.
    let call = |label: &str, method: &str, target: &str, token: &str, body: &[u8]| {
        http(
            &outputs,
            label,
            gw,
            method,
            target,
            &[bearer(token), step(label)],
            body,
        )
    };
    let answer = call("acme-bearer", "GET", "/acme/v1/charges", CALLER_TOKEN, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);
    let seen = vendor.step("acme-bearer");
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].contains(&format!("Bearer {VENDOR_KEY_1}\r\n")),
        "{}",
        seen[0]
    );
    let basic_caller = STANDARD.encode(format!("ACcanary:{CALLER_TOKEN}"));
    let answer = http(
        &outputs,
        "acme-basic-caller",
        gw,
        "POST",
        "/acme/v1/charges",
        &[
            ("authorization", format!("Basic {basic_caller}")),
            step("acme-basic-caller"),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        b"amount=100&currency=eur",
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let answer = http(
        &outputs,
        "acme-header-caller",
        gw,
        "GET",
        "/acme/v1/charges?limit=3",
        &[
            ("postern-caller-token", CALLER_TOKEN.into()),
            step("acme-header-caller"),
        ],
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(vendor.step("acme-header-caller")[0].contains(VENDOR_KEY_1));

    let answer = call("basicco", "GET", "/basicco/v1/accounts", CALLER_TOKEN, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);
    let basic_vendor = STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    assert!(
        vendor.step("basicco")[0].contains(&format!("Basic {basic_vendor}\r\n")),
        "{:?}",
        vendor.step("basicco")
    );
    let answer = call("envco", "GET", "/envco/v1/models", CALLER_TOKEN, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(vendor.step("envco")[0].contains(&format!("Bearer {ENV_KEY}\r\n")));
    let answer = call("fileco", "GET", "/fileco/v1/items", CALLER_TOKEN, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        vendor.step("fileco")[0]
            .to_ascii_lowercase()
            .contains(&format!("x-api-key: {}\r\n", FILE_KEY.to_ascii_lowercase())),
        "{:?}",
        vendor.step("fileco")
    );
    let answer = call(
        "queryco",
        "GET",
        "/queryco/v1/search?q=x&api_key=caller-supplied",
        CALLER_TOKEN,
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let encoded_query = String::from_utf8(percent_encode(QUERY_KEY.as_bytes(), false)).unwrap();
    let seen = vendor.step("queryco");
    assert!(
        seen[0].starts_with(&format!(
            "GET /v1/search?q=x&api_key={encoded_query} HTTP/1.1"
        )),
        "{}",
        seen[0]
    );
    let answer = call(
        "adminco-missing",
        "GET",
        "/adminco/v1/ping",
        CALLER_TOKEN,
        b"",
    );
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(error_code(&answer), "credential_unavailable");

    // 4. Denied calls: nothing reaches the vendor.
    let before = vendor.received.lock().unwrap().len();
    let denied = [
        (
            call("wrong-token", "GET", "/acme/v1/charges", WRONG_TOKEN, b""),
            401,
            "caller_unauthenticated",
        ),
        (
            http(
                &outputs,
                "no-token",
                gw,
                "GET",
                "/acme/v1/charges",
                &[step("no-token")],
                b"",
            ),
            401,
            "caller_unauthenticated",
        ),
        (
            call(
                "not-granted",
                "DELETE",
                "/acme/v1/charges/ch_1",
                CALLER_TOKEN,
                b"",
            ),
            403,
            "not_granted",
        ),
        (
            call(
                "unknown-operation",
                "GET",
                "/acme/v1/customers",
                CALLER_TOKEN,
                b"",
            ),
            403,
            "operation_not_allowed",
        ),
        (
            call(
                "unknown-integration",
                "GET",
                "/nope/v1/x",
                CALLER_TOKEN,
                b"",
            ),
            404,
            "unknown_integration",
        ),
        (
            call(
                "traversal",
                "GET",
                "/acme/v1/../../etc/passwd",
                CALLER_TOKEN,
                b"",
            ),
            400,
            "invalid_path",
        ),
        (
            call(
                "encoded-traversal",
                "GET",
                "/acme/v1/%2e%2e/charges",
                CALLER_TOKEN,
                b"",
            ),
            400,
            "invalid_path",
        ),
        (
            call(
                "token-in-url",
                "GET",
                &format!("/acme/v1/charges?leak={CALLER_TOKEN}"),
                CALLER_TOKEN,
                b"",
            ),
            400,
            "caller_token_in_url",
        ),
        (
            call(
                "token-in-url-encoded",
                "GET",
                &format!(
                    "/acme/v1/charges?leak=%{:02X}{}",
                    CALLER_TOKEN.as_bytes()[0],
                    &CALLER_TOKEN[1..]
                ),
                CALLER_TOKEN,
                b"",
            ),
            400,
            "caller_token_in_url",
        ),
    ];
    for (answer, status, code) in &denied {
        assert_eq!(answer.status, *status, "{}", answer.text);
        assert_eq!(error_code(answer), *code, "{}", answer.text);
    }
    assert_eq!(
        vendor.received.lock().unwrap().len(),
        before,
        "a refused call reached the vendor"
    );
    // The caller token in a body is refused while streaming (the head may already be sent).
    let answer = call(
        "token-in-body",
        "POST",
        "/acme/v1/charges",
        CALLER_TOKEN,
        format!("amount=1&note={CALLER_TOKEN}").as_bytes(),
    );
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(error_code(&answer), "caller_token_in_body");

    // 5. An upstream failure (closed port) with a query credential in the URL.
    let answer = call(
        "upstream-down",
        "GET",
        "/downco/v1/search?q=1",
        CALLER_TOKEN,
        b"",
    );
    assert_eq!(answer.status, 502, "{}", answer.text);
    assert_eq!(error_code(&answer), "upstream_unreachable");

    // 6. Rotation from the CLI (stdin); rollback; rotate again. A running gateway picks each up.
    let acme_now_carries = |key: &str, label: &str| {
        let n = AtomicUsize::new(0);
        eventually(&format!("acme calls carry {label}"), || {
            let tag = format!("{label}-{}", n.fetch_add(1, Ordering::Relaxed));
            let answer = call(&tag, "GET", "/acme/v1/charges", CALLER_TOKEN, b"");
            answer.status == 200
                && vendor
                    .step(&tag)
                    .first()
                    .is_some_and(|r| r.contains(&format!("Bearer {key}\r\n")))
        });
    };
    cli(
        &outputs,
        "creds-rotate-acme",
        &[
            "creds",
            "rotate",
            "acme-key",
            "--rollback-window-seconds",
            "3600",
            "--config",
            cfg,
        ],
        format!("{VENDOR_KEY_2}\n").as_bytes(),
    );
    acme_now_carries(VENDOR_KEY_2, "after-rotate");
    cli(
        &outputs,
        "creds-rollback-acme",
        &["creds", "rollback", "acme-key", "--config", cfg],
        b"",
    );
    acme_now_carries(VENDOR_KEY_1, "after-rollback");
    cli(
        &outputs,
        "creds-rotate-acme-again",
        &["creds", "rotate", "acme-key", "--config", cfg],
        VENDOR_KEY_2.as_bytes(),
    );
    acme_now_carries(VENDOR_KEY_2, "after-rotate-again");

    let list = cli(
        &outputs,
        "creds-list-json",
        &["creds", "list", "--json", "--config", cfg],
        b"",
    );
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list["max_age_days"], 30);
    let acme = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "acme-key")
        .unwrap()
        .clone();
    assert_eq!(acme["state"], "active");
    assert_eq!(
        acme["version"], 3,
        "set v1, rotate v2, rollback to v1, rotate v3: {acme}"
    );
    assert_eq!(acme["used_by"], serde_json::json!(["acme"]));
    cli(
        &outputs,
        "creds-list",
        &["creds", "list", "--config", cfg],
        b"",
    );
    let history = cli(
        &outputs,
        "creds-history-json",
        &["creds", "history", "acme-key", "--json", "--config", cfg],
        b"",
    );
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let actions: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["set", "rotate", "rollback", "rotate"]);
    cli(
        &outputs,
        "creds-history",
        &["creds", "history", "acme-key", "--config", cfg],
        b"",
    );

    // 7. The admin API: set and rotate take effect for the next call, no polling.
    let answer = http(
        &outputs,
        "admin-set",
        admin,
        "POST",
        "/v1/credentials/admin-set-key?kind=api_key",
        &[admin_auth()],
        format!("{ADMIN_SET_KEY}\n").as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let answer = call("adminco", "GET", "/adminco/v1/ping", CALLER_TOKEN, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(vendor.step("adminco")[0].contains(&format!("Bearer {ADMIN_SET_KEY}\r\n")));
    let answer = http(
        &outputs,
        "admin-rotate",
        admin,
        "POST",
        "/v1/credentials/basic-pass/rotate?rollback_window_seconds=60",
        &[admin_auth()],
        BASIC_PASSWORD_2.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(json_body(&answer)["rollback_window_seconds"], 60);
    let answer = call(
        "basicco-rotated",
        "GET",
        "/basicco/v1/accounts",
        CALLER_TOKEN,
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let basic_vendor_2 = STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD_2}"));
    assert!(vendor.step("basicco-rotated")[0].contains(&format!("Basic {basic_vendor_2}\r\n")));
    let answer = http(
        &outputs,
        "admin-wrong-token",
        admin,
        "GET",
        "/v1/credentials",
        &[bearer(CALLER_TOKEN)],
        b"",
    );
    assert_eq!(answer.status, 401, "a caller token is never an admin token");
    let readyz = http(&outputs, "readyz-ready", admin, "GET", "/readyz", &[], b"");
    assert_eq!(readyz.status, 200, "{}", readyz.text);

    // 8. Caller token rotation: the new token is printed once; the old one stops working.
    let rotated = cli(
        &outputs,
        "callers-rotate",
        &["callers", "rotate", "checkout", "--config", cfg],
        b"",
    );
    let new_token = rotated
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in: {}", rotated.stdout))
        .trim()
        .to_string();
    assert!(new_token.starts_with("pst_") && new_token.len() > 40);
    let n = AtomicUsize::new(0);
    eventually("the old caller token is refused", || {
        let tag = format!("old-token-{}", n.fetch_add(1, Ordering::Relaxed));
        call(&tag, "GET", "/acme/v1/charges", CALLER_TOKEN, b"").status == 401
    });
    let answer = call("new-token", "GET", "/acme/v1/charges", &new_token, b"");
    assert_eq!(answer.status, 200, "{}", answer.text);

    // 9. Reload: grant delete_charge, SIGHUP.
    std::fs::write(&config_path, config(dir, &ports, true)).unwrap();
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let n = AtomicUsize::new(0);
    eventually("delete_charge is granted after the reload", || {
        let tag = format!("after-reload-{}", n.fetch_add(1, Ordering::Relaxed));
        call(&tag, "DELETE", "/acme/v1/charges/ch_1", &new_token, b"").status == 200
    });
    assert!(
        vendor.step(&format!("after-reload-{}", n.load(Ordering::Relaxed) - 1))[0]
            .contains(&format!("Bearer {VENDOR_KEY_2}\r\n"))
    );

    // 10. Revocation from the CLI: 503 credential_revoked, nothing reaches the vendor.
    cli(
        &outputs,
        "creds-revoke-acme",
        &["creds", "revoke", "acme-key", "--config", cfg],
        b"",
    );
    let n = AtomicUsize::new(0);
    eventually("acme answers 503 credential_revoked", || {
        let tag = format!("after-revoke-{}", n.fetch_add(1, Ordering::Relaxed));
        let answer = call(&tag, "GET", "/acme/v1/charges", &new_token, b"");
        answer.status == 503 && error_code(&answer) == "credential_revoked"
    });
    let before = vendor.received.lock().unwrap().len();
    let answer = call("revoked", "GET", "/acme/v1/charges", &new_token, b"");
    assert_eq!(answer.status, 503);
    assert_eq!(vendor.received.lock().unwrap().len(), before);

    // The vault files as they are while the gateway runs (the WAL is folded in at exit).
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join("data").join(name)) {
            outputs.save(&format!("running-{name}"), &bytes);
        }
    }

    // 11. Everything the admin API says, saved.
    for (label, route) in [
        ("admin-metrics", "/metrics"),
        ("admin-integrations", "/v1/integrations"),
        ("admin-events", "/v1/events?limit=10000"),
        ("admin-credentials", "/v1/credentials"),
        ("admin-history", "/v1/credentials/acme-key/history"),
        ("admin-history-basic", "/v1/credentials/basic-pass/history"),
        (
            "admin-history-caller",
            "/v1/credentials/caller:checkout/history",
        ),
    ] {
        let answer = http(&outputs, label, admin, "GET", route, &[admin_auth()], b"");
        assert_eq!(answer.status, 200, "{route}: {}", answer.text);
    }
    let metrics = http(
        &outputs,
        "admin-metrics-2",
        admin,
        "GET",
        "/metrics",
        &[admin_auth()],
        b"",
    );
    assert!(
        metrics
            .text
            .contains("postern_credential_age_days{credential=\"acme-key\"} 0"),
        "{}",
        metrics.text
    );
    assert!(metrics
        .text
        .contains("postern_credential_over_max_age{credential=\"acme-key\"} 0"));
    let credentials = json_body(&http(
        &outputs,
        "admin-credentials-2",
        admin,
        "GET",
        "/v1/credentials",
        &[admin_auth()],
        b"",
    ));
    assert_eq!(credentials["max_age_days"], 30);
    let readyz = http(
        &outputs,
        "readyz-revoked",
        admin,
        "GET",
        "/readyz",
        &[admin_auth()],
        b"",
    );
    assert_eq!(readyz.status, 503, "{}", readyz.text);
    assert!(readyz.text.contains("revoked"), "{}", readyz.text);

    // 12. Revoke the caller: its new token is refused too.
    cli(
        &outputs,
        "callers-revoke",
        &["callers", "revoke", "checkout", "--config", cfg],
        b"",
    );
    let n = AtomicUsize::new(0);
    eventually(
        "the new caller token is refused after callers revoke",
        || {
            let tag = format!("revoked-caller-{}", n.fetch_add(1, Ordering::Relaxed));
            call(&tag, "GET", "/envco/v1/models", &new_token, b"").status == 401
        },
    );

    // 13. SIGTERM: a clean exit.
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "postern did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    cli(
        &outputs,
        "creds-list-json-after",
        &["creds", "list", "--json", "--config", cfg],
        b"",
    );
    cli(
        &outputs,
        "creds-history-after",
        &["creds", "history", "acme-key", "--config", cfg],
        b"",
    );

    // 14. The vendor got the vendor credentials and never a caller or admin token.
    let received = vendor.all();
    for (name, secret) in [
        ("VENDOR_KEY_1", VENDOR_KEY_1.to_string()),
        ("VENDOR_KEY_2", VENDOR_KEY_2.to_string()),
        ("ENV_KEY", ENV_KEY.to_string()),
        ("FILE_KEY", FILE_KEY.to_string()),
        ("ADMIN_SET_KEY", ADMIN_SET_KEY.to_string()),
        ("QUERY_KEY", QUERY_KEY.to_string()),
        (
            "basic user:password",
            format!("{BASIC_USER}:{BASIC_PASSWORD}"),
        ),
        (
            "basic user:password (rotated)",
            format!("{BASIC_USER}:{BASIC_PASSWORD_2}"),
        ),
    ] {
        assert!(
            !hits(
                &[Canary::new(name, secret.as_bytes())],
                "vendor",
                None,
                &received
            )
            .is_empty(),
            "the search finds {name} where it was injected"
        );
    }
    let mut never_to_vendor = vec![
        Canary::new("CALLER_TOKEN", CALLER_TOKEN.as_bytes()),
        Canary::new("WRONG_TOKEN", WRONG_TOKEN.as_bytes()),
        Canary::new("rotated caller token", new_token.as_bytes()),
        Canary::new("admin token", admin_token.as_bytes()),
        Canary::new("master key", &master_key),
    ];
    let vendor_hits = hits(
        &never_to_vendor,
        "what the vendor received",
        None,
        &received,
    );
    assert!(vendor_hits.is_empty(), "{}", vendor_hits.join("\n"));

    // 15. Every byte Postern wrote.
    let mut canaries = vec![
        Canary::new("VENDOR_KEY_1", VENDOR_KEY_1.as_bytes()),
        Canary::new("VENDOR_KEY_2", VENDOR_KEY_2.as_bytes()),
        Canary::new("BASIC_PASSWORD", BASIC_PASSWORD.as_bytes()),
        Canary::new("BASIC_PASSWORD_2", BASIC_PASSWORD_2.as_bytes()),
        Canary::new(
            "basic user:password",
            format!("{BASIC_USER}:{BASIC_PASSWORD}").as_bytes(),
        ),
        Canary::new(
            "basic user:password (rotated)",
            format!("{BASIC_USER}:{BASIC_PASSWORD_2}").as_bytes(),
        ),
        Canary::new("ENV_KEY", ENV_KEY.as_bytes()),
        Canary::new("FILE_KEY", FILE_KEY.as_bytes()),
        Canary::new("QUERY_KEY", QUERY_KEY.as_bytes()),
        Canary::new("ADMIN_SET_KEY", ADMIN_SET_KEY.as_bytes()),
    ];
    never_to_vendor[2]
        .allowed_in
        .push(rotated.stdout_path.clone());
    canaries.append(&mut never_to_vendor);

    let vault_files = ["vault.db", "vault.db-wal", "vault.db-shm"];
    let key_files = ["master.key", "admin-token"];
    let data_dir = dir.join("data");
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.sort();
    let mut leaks = Vec::new();
    let mut searched = BTreeMap::new();
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        if test_written.contains(path) {
            continue;
        }
        let in_data_dir = path.parent() == Some(data_dir.as_path());
        if in_data_dir && key_files.contains(&name) {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        searched.insert(
            path.strip_prefix(dir).unwrap().display().to_string(),
            bytes.len(),
        );
        let what = path.strip_prefix(dir).unwrap().display().to_string();
        let what = if in_data_dir && vault_files.contains(&name) {
            format!("{what} (vault file: no plaintext allowed)")
        } else {
            what
        };
        leaks.extend(hits(&canaries, &what, Some(path), &bytes));
    }
    // The search was not vacuous.
    assert!(
        searched.contains_key("data/vault.db"),
        "searched: {searched:?}"
    );
    assert!(
        searched.keys().any(|k| k.ends_with("running-vault.db-wal")),
        "the vault's WAL, copied while serving: {searched:?}"
    );
    assert!(
        searched
            .keys()
            .filter(|k| k.starts_with("data/events"))
            .count()
            >= 2,
        "event files (rotated too): {searched:?}"
    );
    let serve_log = searched
        .iter()
        .find(|(k, _)| k.ends_with("serve.stderr"))
        .map(|(_, len)| *len)
        .unwrap();
    assert!(serve_log > 1000, "the serve log is almost empty");
    let events: String = files
        .iter()
        .filter(|p| p.parent() == Some(data_dir.as_path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for reason in [
        "granted",
        "credential_revoked",
        "credential_unavailable",
        "caller_unauthenticated",
        "not_granted",
        "upstream_unreachable",
        "caller_token_in_body",
    ] {
        assert!(
            events.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason}: {events}"
        );
    }
    assert!(
        leaks.is_empty(),
        "canaries found in what Postern wrote:\n{}\n\nsearched: {searched:#?}",
        leaks.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the scenario took {:?}",
        started.elapsed()
    );
}

/// The caller token split across two request-body chunks must not reach the vendor either, not
/// even as a prefix: `ForwardBody` holds back the last (token length - 1) bytes of each chunk
/// until the next chunk shows they do not start the token.
#[test]
fn caller_token_split_across_body_chunks_never_reaches_the_vendor() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let (vendor, vendor_port) = Vendor::start();
    let listen = free_port();
    let config_path = dir.join("postern.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[gateway]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
data_dir = "{data}"

[[callers]]
name = "checkout"
token_sha256 = "{hash}"

[[integrations]]
name = "acme"
vendor = "Acme"
owner = "o@example.com"
upstream = "http://127.0.0.1:{vendor_port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
operations = [ {{ id = "create_charge", method = "POST", path = "/v1/charges" }} ]

[[grants]]
caller = "checkout"
integration = "acme"
operations = ["*"]
"#,
            admin = free_port(),
            data = dir.join("data").display(),
            hash = sha256_hex(CALLER_TOKEN),
        ),
    )
    .unwrap();
    let _server = Server(
        postern()
            .args(["serve", "--config", config_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Answering, not only listening: the gateway's socket listens from the start of start-up,
    // and the split below must reach a gateway that serves.
    eventually("the gateway answers", || {
        let Ok(mut probe) = TcpStream::connect(("127.0.0.1", listen)) else {
            return false;
        };
        let _ = probe.set_read_timeout(Some(Duration::from_secs(1)));
        let mut status = [0u8; 8];
        probe
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .is_ok()
            && probe.read_exact(&mut status).is_ok()
            && status.starts_with(b"HTTP/1.")
    });
    let cut = CALLER_TOKEN.len() - 1;
    let first = format!("note={}", &CALLER_TOKEN[..cut]);
    let second = format!("{}&end=1", &CALLER_TOKEN[cut..]);
    let mut stream = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /acme/v1/charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CALLER_TOKEN}\r\n{STEP_HEADER}: split\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}",
        first.len() + second.len()
    )
    .unwrap();
    // Let the first chunk travel alone: wait (bounded, no failure) until the vendor has what
    // comes before the token, which a gateway holding back a possible token prefix still sends.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && !vendor
            .step("split")
            .first()
            .is_some_and(|r| r.contains("\r\n\r\nnote="))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.write_all(second.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("caller_token_in_body"), "{answer}");
    let leaks = hits(
        &[Canary::new("CALLER_TOKEN", CALLER_TOKEN.as_bytes())],
        "what the vendor received",
        None,
        &vendor.all(),
    );
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}
