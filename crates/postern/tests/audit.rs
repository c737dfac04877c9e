//! `postern audit …` as an operator runs it against a real `postern serve`: kill -9 under load
//! loses no acknowledged entry and the log still verifies; a flipped byte is found and named;
//! the offline mode respects the running gateway's lock; proofs from the CLI verify.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{eventually, two_free_ports};

const TOKEN: &str = "pst_audit_cli_test_token_abcdefghijklmnopqrstu";
const ORIGIN: &str = "cli.test.postern.example/audit";

fn postern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command
        .env_remove("POSTERN_CONFIG")
        .env("POSTERN_LOG", "warn");
    command
}

/// Runs postern with `args`; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let output = postern().args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// A plain-HTTP vendor on loopback answering 200 to everything, one thread per connection.
fn start_vendor() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve_vendor_connection(stream));
        }
    });
    port
}

fn serve_vendor_connection(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        // Request line and headers.
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some(value) = line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
            {
                content_length = value.parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn config_text(dir: &Path, listen: u16, admin: u16, vendor: u16) -> String {
    use sha2::Digest as _;
    format!(
        r#"[gateway]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
data_dir = "{data}"
audit_origin = "{ORIGIN}"
audit_checkpoint_interval_ms = 50

[[callers]]
name = "checkout"
token_sha256 = "{hash}"

[[integrations]]
name = "acme"
vendor = "Acme"
owner = "o@example.com"
upstream = "http://127.0.0.1:{vendor}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
operations = [ {{ id = "get_thing", method = "GET", path = "/things/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "acme"
operations = ["get_thing"]
"#,
        data = dir.join("data").display(),
        hash = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes())),
    )
}

/// `GET path` (with the caller token): (status, Postern-Audit-Index), or None without an answer.
fn get(port: u16, path: &str) -> Option<(u16, Option<u64>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let head = answer.split("\r\n\r\n").next()?;
    let index = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("postern-audit-index")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    Some((status, index))
}

struct Server(Child);

impl Server {
    fn start(config: &Path, admin: u16) -> Server {
        Server::try_start(config, admin).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts `postern serve` and waits until it is ready; if it exits first, says how (with
    /// its stderr).
    fn try_start(config: &Path, admin: u16) -> Result<Server, String> {
        let stderr_path = config.with_extension("serve.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = postern()
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut server = Server(child);
        let mut exited = None;
        eventually("the gateway to be ready", || {
            if let Ok(Some(status)) = server.0.try_wait() {
                exited = Some(status);
                return true;
            }
            get(admin, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        match exited {
            None => Ok(server),
            Some(status) => Err(format!(
                "postern serve exited with {status}: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )),
        }
    }

    fn kill_9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    listen: u16,
    admin: u16,
    vendor: u16,
}

impl Setup {
    /// Starts `postern serve` on this setup. The ports were free when picked, but a parallel
    /// test's connection can take one before the server binds it: if the server exits at
    /// start-up because a port is in use, new ports are picked and the start tried again (three
    /// times at most). Any other start-up failure fails the test at once.
    fn start(&mut self) -> Server {
        for attempt in 1..=3 {
            match Server::try_start(&self.config, self.admin) {
                Ok(server) => return server,
                Err(why) if attempt < 3 && why.contains("Address already in use") => {
                    eprintln!("postern serve did not start ({why}); new ports");
                    (self.listen, self.admin) = two_free_ports();
                    let text = config_text(self.dir.path(), self.listen, self.admin, self.vendor);
                    std::fs::write(&self.config, text).unwrap();
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!()
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let vendor = start_vendor();
    let (listen, admin) = two_free_ports();
    let config = dir.path().join("postern.toml");
    std::fs::write(&config, config_text(dir.path(), listen, admin, vendor)).unwrap();
    Setup {
        data: dir.path().join("data"),
        config,
        dir,
        listen,
        admin,
        vendor,
    }
}

/// Calls from `threads` threads until `stop`; every index a 200 answer acknowledged.
fn load(
    listen: u16,
    threads: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    i += 1;
                    if let Some((200, Some(index))) = get(listen, &format!("/acme/things/{t}-{i}"))
                    {
                        acked.lock().unwrap().push(index);
                    }
                }
            })
        })
        .collect()
}

fn show_json(config: &Path, index: u64, offline: bool) -> serde_json::Value {
    let index = index.to_string();
    let mut args = vec![
        "audit",
        "show",
        &index,
        "--json",
        "--config",
        config.to_str().unwrap(),
    ];
    if offline {
        args.push("--offline");
    }
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "audit show {index}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_entry_and_the_log_verifies() {
    let mut s = setup();
    let mut server = s.start();
    let data = s.data.to_str().unwrap().to_string();
    let config = s.config.to_str().unwrap().to_string();
    let mut all_acked: Vec<u64> = Vec::new();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = load(s.listen, 4, stop.clone(), acked.clone());
        eventually("calls to be acknowledged", || {
            acked.lock().unwrap().len() >= 60
        });
        // Crash in the middle of the load.
        server.kill_9();
        stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 60, "round {round}");

        // The crashed log verifies offline (a torn, unacknowledged tail is allowed).
        let (code, stdout, stderr) = run(&["audit", "verify", "--data-dir", &data]);
        assert_eq!(code, 0, "round {round}: {stdout}{stderr}");
        assert!(stdout.starts_with("ok: "), "{stdout}");

        // Restart: every acknowledged call has its intent entry.
        server = Server::start(&s.config, s.admin);
        for &index in &acked {
            let entry = show_json(&s.config, index, false);
            assert_eq!(entry["index"], index);
            let record = &entry["record"];
            assert_eq!(record["kind"], "intent", "entry {index}: {entry}");
            assert_eq!(record["integration"], "acme");
            assert_eq!(record["operation"], "get_thing");
            assert_eq!(record["decision"], "allow");
        }
        all_acked.extend(acked);
    }
    let mut unique = all_acked.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all_acked.len(), "no index acknowledged twice");

    // While the gateway runs, --offline is refused: it holds the log.
    let (code, _, stderr) = run(&["audit", "show", "0", "--offline", "--config", &config]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("in use by another postern process"),
        "{stderr}"
    );

    // The verifier key, from the running gateway; then a graceful stop signs a final checkpoint.
    let (code, key, stderr) = run(&["audit", "key", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    let key = key.trim().to_string();
    assert!(key.starts_with(&format!("{ORIGIN}+")), "{key}");
    server.terminate();

    let (code, stdout, stderr) = run(&[
        "audit",
        "verify",
        "--data-dir",
        &data,
        "--key",
        &key,
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["verifier_key"], key.as_str());
    assert_eq!(
        report["latest_checkpoint_size"], report["entries"],
        "the shutdown checkpoint covers everything"
    );
    assert!(report["checkpoints_verified"].as_u64().unwrap() >= 2);

    // Offline: a proof file for an acknowledged entry verifies against the signed checkpoint.
    let index = all_acked[all_acked.len() / 2];
    let proof_path = s.data.join("entry.tlog-proof");
    let (code, _, stderr) = run(&[
        "audit",
        "proof",
        &index.to_string(),
        "--offline",
        "--config",
        &config,
        "--out",
        proof_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let proof =
        postern_tlog::TlogProof::parse(&std::fs::read_to_string(&proof_path).unwrap()).unwrap();
    let entry = show_json(&s.config, index, true);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry["entry_base64"].as_str().unwrap())
        .unwrap();
    let verifier = postern_tlog::NoteVerifier::from_verifier_key(&key).unwrap();
    proof.verify(&bytes, &[verifier], ORIGIN).unwrap();

    // Offline consistency between two sizes, and a wrong key is refused.
    let (code, stdout, stderr) = run(&[
        "audit",
        "consistency",
        "1",
        "2",
        "--offline",
        "--config",
        &config,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().count() >= 1);
    let other = postern_tlog::NoteSigner::from_seed(ORIGIN, [7; 32])
        .unwrap()
        .verifier()
        .verifier_key();
    let (code, _, stderr) = run(&["audit", "verify", "--data-dir", &data, "--key", &other]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("signature"), "{stderr}");
}

#[test]
fn a_flipped_byte_is_found_and_named() {
    let mut s = setup();
    let mut server = s.start();
    let data = s.data.to_str().unwrap().to_string();
    for i in 0..10 {
        assert_eq!(
            get(s.listen, &format!("/acme/things/{i}")).map(|a| a.0),
            Some(200)
        );
    }
    server.terminate();
    let (code, stdout, stderr) = run(&["audit", "verify", "--data-dir", &data]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Flip one byte inside entry 5's payload.
    let segment = std::fs::read_dir(s.data.join("audit/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut offset = 0usize;
    for _ in 0..5 {
        let len = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    bytes[offset + 8 + 10] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let (code, _, stderr) = run(&["audit", "verify", "--data-dir", &data]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("corrupt or was tampered with"), "{stderr}");
    assert!(stderr.contains("(entry 5)"), "{stderr}");
    assert!(
        stderr.contains(&format!("byte offset {offset}")),
        "{stderr}"
    );
    assert!(stderr.contains(segment.to_str().unwrap()), "{stderr}");
    let (code, stdout, _) = run(&["audit", "verify", "--data-dir", &data, "--json"]);
    assert_eq!(code, 4);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["corrupt"], true);

    // The gateway refuses to start on it, naming the same place.
    let output = postern()
        .args(["serve", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("byte offset {offset}")),
        "{stderr}"
    );

    // A missing log is a failure to check (1), not tampering.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&[
        "audit",
        "verify",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn audit_help_everywhere_and_config_errors_exit_3() {
    for args in [
        vec!["audit", "--help"],
        vec!["audit", "key", "--help"],
        vec!["audit", "proof", "--help"],
        vec!["audit", "consistency", "--help"],
        vec!["audit", "show", "--help"],
        vec!["audit", "verify", "--help"],
    ] {
        let (code, stdout, _) = run(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gateway]\nlisten = \n").unwrap();
    for args in [
        vec!["audit", "key", "--config", bad.to_str().unwrap()],
        vec!["audit", "show", "0", "--config", bad.to_str().unwrap()],
        vec!["audit", "verify", "--config", bad.to_str().unwrap()],
    ] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        // As every command prints config errors: `file:line:column: error: …`, once.
        assert!(
            stderr.starts_with(bad.to_str().unwrap()),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.matches("error:").count(), 1, "{args:?}: {stderr}");
    }
    // No gateway running: a clear failure pointing at --offline, which then works.
    let mut s = setup();
    let mut server = s.start();
    let config = s.config.to_str().unwrap();
    let (code, online, stderr) = run(&["audit", "key", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    server.terminate();
    let (code, _, stderr) = run(&["audit", "key", "--config", config]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--offline"), "{stderr}");
    let (code, offline, stderr) = run(&["audit", "key", "--offline", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(offline, online);
    let (code, json, _) = run(&["audit", "key", "--json", "--offline", "--config", config]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["origin"], ORIGIN);
    assert_eq!(json["verifier_key"], online.trim());
}
