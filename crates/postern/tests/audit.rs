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
        vec!["audit", "checkpoint", "--help"],
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

/// A stand-in for the gateway's admin API that answers canned bodies by path (a gateway that
/// lies), on `port` (0: any free one), until the test ends; returns its port.
fn lying_admin(port: u16, answers: Vec<(String, String)>) -> u16 {
    stub_admin(port, answers, ("404 Not Found", String::new())).0
}

/// Every request a [`stub_admin`] was sent: its path, and whether it carried an Authorization
/// header.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

/// [`lying_admin`] answering `otherwise` (status line, body) to the paths it has no answer
/// for; returns its port and the requests it was sent.
fn stub_admin(
    port: u16,
    answers: Vec<(String, String)>,
    otherwise: (&'static str, String),
) -> (u16, Seen) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let recorded = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut authorization = false;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                authorization |= line.to_ascii_lowercase().starts_with("authorization:");
                line.clear();
            }
            let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
            recorded.lock().unwrap().push((path.clone(), authorization));
            let (status, body) = answers
                .iter()
                .find(|(p, _)| *p == path)
                .map_or((otherwise.0, otherwise.1.as_str()), |(_, body)| {
                    ("200 OK", body.as_str())
                });
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// A checkpoint of size 0 with `root_hash`, signed by `signer` (older versions signed one of
/// the empty tree at first start).
fn empty_checkpoint(signer: &postern_tlog::NoteSigner, root_hash: postern_tlog::Hash) -> String {
    postern_tlog::Checkpoint {
        origin: ORIGIN.to_string(),
        size: 0,
        root_hash,
    }
    .sign(signer)
    .unwrap()
}

/// `postern audit ARGS --admin-url http://127.0.0.1:PORT`, with no config.
fn at_admin(port: u16, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://127.0.0.1:{port}");
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.extend(["--admin-url", &url, "--config", "/nonexistent/postern.toml"]);
    run(&all)
}

/// A log of `size` entries, another view of the gateway's: entry `index` is the gateway's
/// (`leaf`), every other one made up. Its checkpoint signed with the log's own key (what a key
/// holder can do), the tlog-proof of entry `index` in it, and its consistency proof from
/// `old` (when smaller), as the admin API would serve them.
fn forked_log(
    signer: &postern_tlog::NoteSigner,
    size: u64,
    index: u64,
    leaf: postern_tlog::Hash,
    old: u64,
) -> (String, String) {
    let mut tree = postern_tlog::TreeBuilder::new();
    let mut stored = Vec::new();
    for i in 0..size {
        let made_up = postern_tlog::leaf_hash(format!("forked entry {i}").as_bytes());
        tree.append(if i == index { leaf } else { made_up }, &mut stored);
    }
    let note = postern_tlog::Checkpoint {
        origin: ORIGIN.to_string(),
        size,
        root_hash: tree.root(),
    }
    .sign(signer)
    .unwrap();
    let proof = postern_tlog::TlogProof {
        extra: None,
        index,
        inclusion_proof: postern_tlog::inclusion_proof(index, size, &stored).unwrap(),
        checkpoint_note: note,
    }
    .encode();
    let consistency = if old < size {
        postern_tlog::consistency_proof(old, size, &stored)
            .unwrap()
            .iter()
            .map(|hash| hash.to_base64() + "\n")
            .collect()
    } else {
        String::new()
    };
    (proof, consistency)
}

/// `postern audit proof|show --key` check the gateway's proofs, and `postern audit checkpoint
/// --key --state` its checkpoints over time, rather than trusting its answers: a gateway that
/// lies, a forked or rolled-back log, and a wrong key are each exit 4.
#[test]
fn online_commands_check_the_gateway_against_the_key() {
    let mut s = setup();
    let mut server = s.start();
    let config = s.config.to_str().unwrap().to_string();
    let index = get(s.listen, "/acme/things/a").unwrap().1.unwrap();
    eventually("a checkpoint to cover the call", || {
        show_json(&s.config, index, false)["covered_by_checkpoint"] == true
    });
    let (code, key, _) = run(&["audit", "key", "--config", &config]);
    assert_eq!(code, 0);
    let key = key.trim().to_string();
    let other = postern_tlog::NoteSigner::from_seed(ORIGIN, [7; 32])
        .unwrap()
        .verifier()
        .verifier_key();
    let index = index.to_string();

    let (code, stdout, stderr) =
        run(&["audit", "show", &index, "--key", &key, "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verified        yes"), "{stdout}");
    let (code, proof_text, stderr) =
        run(&["audit", "proof", &index, "--key", &key, "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("verified: entry"), "{stderr}");
    let (code, _, stderr) = run(&[
        "audit", "proof", &index, "--key", &other, "--config", &config,
    ]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("does not verify against"), "{stderr}");
    let (code, _, stderr) = run(&[
        "audit",
        "proof",
        &index,
        "--key",
        "not-a-key",
        "--config",
        &config,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("postern audit key"), "{stderr}");

    // A checkpoint watched over time: saved on the first run, found consistent on the next.
    let state = s.dir.path().join("watched.checkpoint");
    let state_arg = state.to_str().unwrap();
    let watch = |key: &str| {
        run(&[
            "audit",
            "checkpoint",
            "--key",
            key,
            "--state",
            state_arg,
            "--config",
            &config,
        ])
    };
    let (code, note, stderr) = watch(&key);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), note);
    let first_size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    for i in 0..5 {
        get(s.listen, &format!("/acme/things/b{i}")).unwrap();
    }
    eventually("a larger checkpoint", || {
        let (_, note, _) = run(&["audit", "checkpoint", "--config", &config]);
        note.lines().nth(1).and_then(|n| n.parse::<u64>().ok()) > Some(first_size)
    });
    let (code, _, stderr) = watch(&key);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "consistent with the saved checkpoint of size {first_size}"
        )),
        "{stderr}"
    );
    // A monitor on another machine: the admin API's address, no config and no admin token
    // (the key, checkpoints and proofs are public; an entry's record is not).
    let url = format!("http://127.0.0.1:{}", s.admin);
    let nowhere = s.dir.path().join("no-such-config.toml");
    let remote = |args: &[&str]| {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.extend(["--admin-url", &url, "--config", nowhere.to_str().unwrap()]);
        run(&all)
    };
    let (code, _, stderr) = remote(&["checkpoint", "--key", &key, "--state", state_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("consistent with the saved checkpoint"),
        "{stderr}"
    );
    let (code, _, stderr) = remote(&["proof", &index, "--key", &key]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = remote(&["show", &index, "--key", &key]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verified        yes"), "{stdout}");
    let (code, stdout, stderr) = remote(&["key"]);
    assert_eq!((code, stdout.trim()), (0, key.as_str()), "{stderr}");
    let (code, stdout, _) = run(&[
        "audit",
        "checkpoint",
        "--key",
        &key,
        "--json",
        "--config",
        &config,
    ]);
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["verified"], true);
    assert_eq!(answer["origin"], ORIGIN);
    let (code, stdout, _) = run(&["audit", "checkpoint", "--json", "--config", &config]);
    assert_eq!(code, 0);
    let unverified: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(unverified["verified"], false);
    assert_eq!(unverified["origin"], ORIGIN);
    assert!(
        unverified["size"].as_u64().unwrap() > first_size,
        "{unverified}"
    );

    // A saved checkpoint of another view of the log, signed by the log's own key: a fork.
    let signer_key = std::fs::read_to_string(s.data.join("audit/signing-key")).unwrap();
    let signer = postern_tlog::NoteSigner::from_signer_key(signer_key.trim()).unwrap();
    let forked = |size: u64| postern_tlog::Checkpoint {
        origin: ORIGIN.to_string(),
        size,
        root_hash: postern_tlog::leaf_hash(b"another history"),
    };
    std::fs::write(&state, forked(1).sign(&signer).unwrap()).unwrap();
    let (code, _, stderr) = watch(&key);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("rewritten or forked"), "{stderr}");
    // One past the log's size: the log went backwards.
    std::fs::write(&state, forked(1 << 40).sign(&signer).unwrap()).unwrap();
    let (code, _, stderr) = watch(&key);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("went backwards"), "{stderr}");
    // A state file the key did not sign is refused as a state, not taken as the log's fault.
    let (code, _, stderr) = watch(&other);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("move the file away"), "{stderr}");
    // A saved checkpoint of the empty tree (older versions signed one at first start): every
    // tree extends it, with no consistency proof to ask for (the gateway refuses size 0), if
    // its root is the empty tree's.
    let empty = |root_hash| empty_checkpoint(&signer, root_hash);
    std::fs::write(&state, empty(postern_tlog::leaf_hash(b""))).unwrap();
    let (code, _, stderr) = watch(&key);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("not the empty tree's"), "{stderr}");
    std::fs::write(&state, empty(postern_tlog::empty_root())).unwrap();
    let (code, note, stderr) = watch(&key);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("consistent with the saved checkpoint of size 0"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), note);

    // `proof` and `show` with the monitor's state: the checkpoint the entry is proved in must
    // be one view with the saved one. The state must exist (else the proof's checkpoint would
    // be taken on trust), and is read with the key.
    let (code, saved_note, _) = run(&["audit", "checkpoint", "--config", &config]);
    assert_eq!(code, 0);
    std::fs::write(&state, &saved_note).unwrap();
    let saved_size: u64 = saved_note.lines().nth(1).unwrap().parse().unwrap();
    let (code, stdout, stderr) = run(&[
        "audit", "proof", &index, "--key", &key, "--state", state_arg, "--config", &config,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("c2sp.org/tlog-proof@v1\n"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "consistent with the saved checkpoint of size {saved_size}"
        )),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&[
        "audit", "show", &index, "--key", &key, "--state", state_arg, "--config", &config,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("consistent with the saved checkpoint of size"),
        "{stdout}"
    );
    let missing = s.dir.path().join("no-such-state");
    let (code, _, stderr) = run(&[
        "audit",
        "proof",
        &index,
        "--key",
        &key,
        "--state",
        missing.to_str().unwrap(),
        "--config",
        &config,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("run that first"), "{stderr}");
    assert!(!missing.exists(), "not created: there was nothing to check");
    let (code, _, stderr) = run(&["audit", "show", &index, "--state", state_arg]);
    assert_eq!(code, 2, "--state needs --key: {stderr}");
    // The saved checkpoint (signed with the log's key) is larger than the gateway's latest, the
    // one the entry is proved in: the gateway has no consistency proof up to the saved tree (its
    // 404 not_checkpointed). The log went backwards: exit 4, as for `checkpoint --state`.
    let ahead = 1u64 << 40;
    std::fs::write(&state, forked(ahead).sign(&signer).unwrap()).unwrap();
    for command in ["proof", "show"] {
        let (code, stdout, stderr) = run(&[
            "audit", command, &index, "--key", &key, "--state", state_arg, "--config", &config,
        ]);
        assert_eq!(code, 4, "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the gateway no longer has the checkpoint of size {ahead} saved in the state file"
            )) && stderr.contains("the log went backwards"),
            "{command}: {stderr}"
        );
        assert!(stdout.is_empty(), "{command}: {stdout}");
    }
    std::fs::write(&state, &saved_note).unwrap();
    // The proof fetched first is in a smaller checkpoint than the saved one: consistent with
    // it through the gateway's proof (kept for the stand-in below).
    let proved_size: u64 = postern_tlog::TlogProof::parse(&proof_text)
        .unwrap()
        .checkpoint_note
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(proved_size < saved_size);
    let (old_size, new_size) = (proved_size.to_string(), saved_size.to_string());
    let (code, genuine_consistency, _) = run(&[
        "audit",
        "consistency",
        &old_size,
        &new_size,
        "--config",
        &config,
    ]);
    assert_eq!(code, 0);

    // A gateway whose proof was altered: its answers served with one proof hash changed.
    let (code, entry, _) = run(&["audit", "show", &index, "--json", "--config", &config]);
    assert_eq!(code, 0);
    server.terminate();
    let mut lines: Vec<String> = proof_text.lines().map(str::to_string).collect();
    let hash_line = lines
        .iter()
        .position(|l| l.len() == 44 && l.ends_with('='))
        .expect("the proof holds a hash");
    lines[hash_line] = postern_tlog::leaf_hash(b"x").to_base64();
    let altered = lines.join("\n") + "\n";
    lying_admin(
        s.admin,
        vec![
            (format!("/v1/audit/proof/{index}"), altered.clone()),
            (format!("/v1/audit/entries/{index}"), entry.clone()),
        ],
    );
    let (code, stdout, _) = run(&["audit", "proof", &index, "--config", &config]);
    assert_eq!(code, 0, "without --key the proof is passed on as answered");
    assert_eq!(stdout, altered);
    let (code, stdout, stderr) =
        run(&["audit", "proof", &index, "--key", &key, "--config", &config]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stdout.is_empty(),
        "a proof that does not verify is not written"
    );
    assert!(stderr.contains("does not verify against"), "{stderr}");
    let (code, _, stderr) = run(&["audit", "show", &index, "--key", &key, "--config", &config]);
    assert_eq!(code, 4, "{stderr}");

    // A key holder showing a receipt's checker another view of the log (a split view): a tree
    // holding the entry, signed with the log's key, its proof and even its own consistency
    // proofs served. The key alone cannot tell (the limit of `--key`); the monitor's state can,
    // whether the fork is as large as the saved checkpoint or larger. The state is left as is.
    let entry_json: serde_json::Value = serde_json::from_str(&entry).unwrap();
    let leaf = postern_tlog::Hash::from_hex(entry_json["leaf_hash"].as_str().unwrap()).unwrap();
    let index_n: u64 = index.parse().unwrap();
    for fork_size in [saved_size, saved_size + 1] {
        let (fork_proof, fork_consistency) =
            forked_log(&signer, fork_size, index_n, leaf, saved_size);
        let fork = lying_admin(
            0,
            vec![
                (format!("/v1/audit/proof/{index}"), fork_proof.clone()),
                (format!("/v1/audit/entries/{index}"), entry.clone()),
                (
                    format!("/v1/audit/consistency?old={saved_size}&new={fork_size}"),
                    fork_consistency,
                ),
            ],
        );
        let (code, stdout, stderr) = at_admin(fork, &["proof", &index, "--key", &key]);
        assert_eq!(code, 0, "the key alone takes the fork: {stderr}");
        assert_eq!(stdout, fork_proof);
        for command in ["proof", "show"] {
            let (code, stdout, stderr) = at_admin(
                fork,
                &[command, &index, "--key", &key, "--state", state_arg],
            );
            assert_eq!(code, 4, "{command} of a fork of size {fork_size}: {stderr}");
            assert!(stderr.contains("rewritten or forked"), "{stderr}");
            assert!(stdout.is_empty(), "{stdout}");
        }
        assert_eq!(std::fs::read_to_string(&state).unwrap(), saved_note);
    }
    // The genuine proof in a checkpoint smaller than the saved one passes (the saved tree
    // extends it), and leaves the state as it is; a larger genuine one would replace it.
    let stale = lying_admin(
        0,
        vec![
            (format!("/v1/audit/proof/{index}"), proof_text.clone()),
            (format!("/v1/audit/entries/{index}"), entry.clone()),
            (
                format!("/v1/audit/consistency?old={proved_size}&new={saved_size}"),
                genuine_consistency,
            ),
        ],
    );
    let (code, stdout, stderr) = at_admin(
        stale,
        &["proof", &index, "--key", &key, "--state", state_arg],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, proof_text);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), saved_note);
}

/// The admin token goes only to the one route that can need it (an entry no checkpoint covers
/// yet): a server at --admin-url answering 401 to the public routes (`/log/checkpoint`, the
/// key, proofs, consistency proofs) is not sent the token.
#[test]
fn the_admin_token_goes_only_where_it_can_be_needed() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "the-admin-token\n").unwrap();
    let unauthorized = (
        "401 Unauthorized",
        r#"{"error":{"code":"admin_unauthenticated","message":"send the token"}}"#.to_string(),
    );
    let (port, seen) = stub_admin(0, Vec::new(), unauthorized.clone());
    let key = postern_tlog::NoteSigner::from_seed(ORIGIN, [7; 32])
        .unwrap()
        .verifier()
        .verifier_key();
    let token = token_file.to_str().unwrap();
    for args in [
        &["checkpoint"][..],
        &["checkpoint", "--key", key.as_str()],
        &["key"],
        &["proof", "0"],
        &["proof", "0", "--key", key.as_str()],
        &["consistency", "1", "2"],
    ] {
        let (code, _, stderr) =
            at_admin(port, &[args, &["--admin-token-file", token][..]].concat());
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("401"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("the admin token is not sent"),
            "{args:?}: {stderr}"
        );
    }
    let public = std::mem::take(&mut *seen.lock().unwrap());
    let paths: Vec<&str> = public.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/log/checkpoint",
            "/log/checkpoint",
            "/v1/audit/key",
            "/v1/audit/proof/0",
            "/v1/audit/proof/0",
            "/v1/audit/consistency?old=1&new=2"
        ],
        "each asked once"
    );
    assert!(
        public.iter().all(|(_, authorization)| !authorization),
        "the token was sent to a public route: {public:?}"
    );
    // An entry's record is the one thing the token is for: asked again with it after a 401.
    let (code, _, stderr) = at_admin(port, &["show", "0", "--admin-token-file", token]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("/v1/audit/entries/0".to_string(), false),
            ("/v1/audit/entries/0".to_string(), true)
        ]
    );

    // With --key, an entry whose proof's checkpoint, signed with the key, covers it is one
    // Postern serves to anyone: a 401 for it does not get the token either.
    let signer = postern_tlog::NoteSigner::from_seed(ORIGIN, [7; 32]).unwrap();
    let leaf = postern_tlog::leaf_hash(b"an entry");
    let (covering, _) = forked_log(&signer, 2, 0, leaf, 2);
    let (port, seen) = stub_admin(
        0,
        vec![("/v1/audit/proof/0".to_string(), covering)],
        unauthorized,
    );
    for command in ["proof", "show"] {
        let (code, _, stderr) = at_admin(
            port,
            &[command, "0", "--key", &key, "--admin-token-file", token],
        );
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(
            stderr.contains("the admin token is not sent"),
            "{command}: {stderr}"
        );
        assert_eq!(
            std::mem::take(&mut *seen.lock().unwrap()),
            [
                ("/v1/audit/proof/0".to_string(), false),
                ("/v1/audit/entries/0".to_string(), false)
            ],
            "{command}"
        );
    }

    // What answers is printed without control characters, and only so much of it.
    let noise = format!("\x1b[2J\x1b]0;owned\x07{}\r\nend", "A".repeat(10_000));
    let (port, _) = stub_admin(0, Vec::new(), ("500 Internal Server Error", noise));
    let (code, _, stderr) = at_admin(port, &["checkpoint"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("500 Internal Server Error from"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(['\x1b', '\x07', '\r']),
        "control characters printed: {stderr:?}"
    );
    assert!(stderr.contains("bytes more"), "{stderr}");
    assert!(stderr.len() < 3000, "{} bytes printed", stderr.len());
}

/// `proof --state` and `show --state` save the checkpoint the entry was proved in when it is
/// larger than the saved one, once the result is out; a state file that cannot be written
/// then is a warning, not a failure of the verification (exit 0, the proof printed). A saved
/// checkpoint of size 0 and a latest one of size 0 both need the empty tree's root.
#[test]
fn the_state_is_saved_after_the_result_and_a_failed_save_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let signer = postern_tlog::NoteSigner::from_seed(ORIGIN, [9; 32]).unwrap();
    let key = signer.verifier().verifier_key();
    let entry = b"an entry".to_vec();
    let leaf = postern_tlog::leaf_hash(&entry);
    let (proof_in_8, consistency_4_8) = forked_log(&signer, 8, 2, leaf, 4);
    let (proof_in_4, _) = forked_log(&signer, 4, 2, leaf, 4);
    let note_of = |proof: &str| {
        postern_tlog::TlogProof::parse(proof)
            .unwrap()
            .checkpoint_note
    };
    let (note_4, note_8) = (note_of(&proof_in_4), note_of(&proof_in_8));
    use base64::Engine as _;
    let entry_json = serde_json::json!({
        "index": 2,
        "entry_base64": base64::engine::general_purpose::STANDARD.encode(&entry),
        "leaf_hash": leaf.to_hex(),
        "checkpoint_size": 8,
    })
    .to_string();
    let port = lying_admin(
        0,
        vec![
            ("/v1/audit/proof/2".to_string(), proof_in_8.clone()),
            ("/v1/audit/entries/2".to_string(), entry_json),
            (
                "/v1/audit/consistency?old=4&new=8".to_string(),
                consistency_4_8,
            ),
        ],
    );

    // A name its temporary sibling cannot have (too long): the state is read, never replaced.
    let unwritable = dir.path().join("s".repeat(240));
    for command in ["proof", "show"] {
        std::fs::write(&unwritable, &note_4).unwrap();
        let state = unwritable.to_str().unwrap();
        let (code, stdout, stderr) =
            at_admin(port, &[command, "2", "--key", &key, "--state", state]);
        assert_eq!(code, 0, "{command}: {stderr}");
        if command == "proof" {
            assert_eq!(stdout, proof_in_8);
            assert!(stderr.contains("verified: entry 2"), "{stderr}");
        } else {
            assert!(stdout.contains("verified        yes"), "{stdout}");
        }
        assert!(
            stderr.contains("warning: the checkpoint of size 8 was verified but not saved"),
            "{command}: {stderr}"
        );
        assert_eq!(std::fs::read_to_string(&unwritable).unwrap(), note_4);
    }
    // Saved when larger; then left as it is.
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    for command in ["proof", "show"] {
        std::fs::write(&state, &note_4).unwrap();
        let (code, _, stderr) =
            at_admin(port, &[command, "2", "--key", &key, "--state", state_arg]);
        assert_eq!(code, 0, "{command}: {stderr}");
        assert!(!stderr.contains("warning"), "{command}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            note_8,
            "{command}"
        );
    }
    let (code, _, stderr) = at_admin(port, &["proof", "2", "--key", &key, "--state", state_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), note_8);

    // Size 0 on both sides: the latest's root is checked too, not only the saved one's.
    let empty = |root_hash| empty_checkpoint(&signer, root_hash);
    let good = empty(postern_tlog::empty_root());
    for (latest, expected) in [(empty(postern_tlog::leaf_hash(b"")), 4), (good.clone(), 0)] {
        std::fs::write(&state, &good).unwrap();
        let port = lying_admin(0, vec![("/log/checkpoint".to_string(), latest)]);
        let (code, _, stderr) =
            at_admin(port, &["checkpoint", "--key", &key, "--state", state_arg]);
        assert_eq!(code, expected, "{stderr}");
        if expected == 4 {
            assert!(stderr.contains("not the empty tree's"), "{stderr}");
        }
        assert_eq!(std::fs::read_to_string(&state).unwrap(), good);
    }
}
