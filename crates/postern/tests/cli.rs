//! The `postern` binary as a user runs it: exit codes, messages, reload, shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn postern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command
        .env_remove("POSTERN_CONFIG")
        .env("POSTERN_LOG", "info");
    command
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

/// `--help` answers for every command and subcommand, found by walking the "Commands:" lists
/// of the help itself (so a new command is covered without touching this test).
#[test]
fn help_everywhere() {
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
        seen += 1;
        let commands = stdout
            .split_once("Commands:")
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or_default())
            .unwrap_or_default();
        // A command's line is indented two spaces; a wrapped description, more.
        for line in commands.lines() {
            if !line.starts_with("  ") || line.starts_with("   ") {
                continue;
            }
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if name != "help" {
                let mut child = path.clone();
                child.push(name.to_string());
                pending.push(child);
            }
        }
    }
    assert!(seen > 20, "only {seen} commands found");
    let (code, _, stderr) = run(&["no-such-command"]);
    assert_eq!(code, 2, "{stderr}");
}

/// A listener address someone else holds: `serve` exits 1 (runtime failure), naming it.
#[test]
fn serve_exits_1_when_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().port();
    let config = dir.path().join("postern.toml");
    let admin = free_port();
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    // Bounded: a serve that started anyway would not end by itself.
    let mut child = postern()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve started on an address someone else holds");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    // It names the address it could not bind (the gateway's is bound before the admin one).
    assert!(
        stderr.contains(&format!("binding listen address 127.0.0.1:{listen}")),
        "{stderr}"
    );
    // Both addresses are bound before anything is written: no data directory (with a vault
    // key, an admin token, logs) is left behind by a start that failed.
    assert!(
        !dir.path().join("data").exists(),
        "a failed start created the data directory"
    );
    drop(held);
}

#[test]
fn the_documented_example_config_is_valid() {
    let example = repo_root().join("examples/postern.toml");
    let (code, stdout, stderr) = run(&["check", "--config", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok (1 caller, 1 integration, 1 grant)"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "check",
        "--json",
        "--show-policies",
        "--config",
        example.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert!(json["cedar"].as_str().unwrap().contains("permit"));
}

#[test]
fn invalid_config_exits_3_naming_line_column_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let example = std::fs::read_to_string(repo_root().join("examples/postern.toml")).unwrap();
    // An unknown key on line 8.
    let bad = example.replacen("data_dir = ", "data_dri = ", 1);
    std::fs::write(&path, &bad).unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("bad.toml:8:1"), "{stderr}");
    assert!(stderr.contains("fix:"), "{stderr}");
    // A grant of an operation that does not exist: semantic error with its position.
    let bad = example.replace(
        r#"operations = ["create_charge", "get_charge"]"#,
        r#"operations = ["create_charge", "refund"]"#,
    );
    std::fs::write(&path, &bad).unwrap();
    let (code, stdout, _) = run(&["check", "--json", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["errors"][0]["line"], 31);
    assert!(json["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("refund"));
    // serve refuses it the same way.
    let (code, _, stderr) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
}

/// A custom policy that reads the request's size in a way that cannot be probed is valid, and
/// A credential `check` cannot load is a warning (the gateway starts, and answers its calls
/// 503), placed at the integration's `credential`.
#[test]
fn check_places_a_warning_at_its_key() {
    let example = repo_root().join("examples/postern.toml");
    let output = postern()
        .env_remove("STRIPE_KEY")
        .args(["check", "--config", example.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let line = std::fs::read_to_string(&example)
        .unwrap()
        .lines()
        .position(|line| line.starts_with("credential = "))
        .unwrap()
        + 1;
    assert!(
        stdout.contains(&format!(
            "postern.toml:{line}:14: warning: integration stripe: "
        )) && stdout.contains("STRIPE_KEY"),
        "{stdout}"
    );
}

/// A `from_file` credential other users may read is a warning at the integration's
/// `credential` (the file is read whatever its mode: an operator's own), naming the mode and the
/// fix; at 0600, none.
#[test]
fn check_warns_of_a_credential_file_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("stripe.key");
    std::fs::write(&key, "sk_test_123\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/postern.toml")).unwrap();
    let config = example.replace(
        r#"from_env = "STRIPE_KEY""#,
        &format!(r#"from_file = "{}""#, key.display()),
    );
    let path = dir.path().join("postern.toml");
    std::fs::write(&path, config).unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("postern.toml:20:14: warning: integration stripe: the credential file")
            && stdout.contains("has mode 644")
            && stdout.contains("chmod 600"),
        "{stdout}"
    );
    assert!(!stdout.contains("sk_test_123"), "{stdout}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stdout, _) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// `check` says what it means for requests of unknown size (a warning; exit 0).
#[test]
fn check_warns_of_a_size_read_that_cannot_be_probed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaled.toml");
    std::fs::write(
        dir.path().join("rules.cedar"),
        "@id(\"scaled\")\nforbid(principal, action, resource) when { context.request_bytes * 2 > 3000 };\n",
    )
    .unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/postern.toml")).unwrap();
    std::fs::write(
        &path,
        example.replacen("data_dir = ", "policies = \"rules.cedar\"\ndata_dir = ", 1),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // At the line and column of `policies` (the example's line 8 before `data_dir`).
    assert!(
        stdout.contains(":8:12: warning: policy scaled reads context.request_bytes")
            && stdout.contains("411 length_required"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["check", "--json", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let warnings = json["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .starts_with("policy scaled reads")
            && w["line"] == 8
            && w["column"] == 12),
        "{json}"
    );
}

/// What only using the config shows (a `ca_file` that is not PEM, Cedar policies that do not
/// compile) is reported like a parse error: at the key's line and column, with a fix.
#[test]
fn problems_found_compiling_the_config_name_the_key_line_column_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.path().join("rules.cedar"),
        "forbid(principal, action, resource) when { context.hourr < 6 };\n",
    )
    .unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/postern.toml")).unwrap();
    // (the text, the key's line and column as the error must give them)
    let line_of = |text: &str, needle: &str| {
        1 + text
            .lines()
            .position(|line| line.starts_with(needle))
            .unwrap()
    };
    let with_ca = example.replacen(
        "upstream = \"https://api.stripe.com\"\n",
        "upstream = \"https://api.stripe.com\"\nca_file = \"ca.pem\"\n",
        1,
    );
    let with_policies =
        example.replacen("data_dir = ", "policies = \"rules.cedar\"\ndata_dir = ", 1);
    // The listener's TLS files: each is placed at its own key. A real certificate (the
    // interception CA's, exported) with a file that holds no key puts the problem at tls_key.
    let (code, cert, stderr) = run(&[
        "ca",
        "export",
        "--data-dir",
        dir.path().join("ca-data").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    let with_tls = |cert: &str| {
        example.replacen(
            "data_dir = ",
            &format!("tls_cert = \"{cert}\"\ntls_key = \"ca.pem\"\ndata_dir = "),
            1,
        )
    };
    let (with_bad_cert, with_bad_key) = (with_tls("ca.pem"), with_tls("cert.pem"));
    for (text, key, column, words) in [
        (&with_bad_cert, "tls_cert = ", 12, "ca.pem"),
        (&with_bad_key, "tls_key = ", 11, "private key"),
        (&with_ca, "ca_file = ", 11, "ca_file"),
        (&with_policies, "policies = ", 12, "hourr"),
    ] {
        std::fs::write(&path, text).unwrap();
        let line = line_of(text, key);
        let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains(&format!("bad.toml:{line}:{column}: error: ")),
            "{stderr}"
        );
        assert!(stderr.contains(words), "{stderr}");
        assert!(stderr.contains("\n  fix: "), "{stderr}");
        let (code, stdout, _) = run(&["check", "--json", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 3);
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let error = &json["errors"][0];
        assert_eq!(error["line"], line, "{json}");
        assert_eq!(error["column"], column, "{json}");
        assert!(!error["fix"].as_str().unwrap().is_empty(), "{json}");
        // serve refuses it the same way, before it binds anything.
        let (code, _, stderr) = run(&["serve", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains(&format!("bad.toml:{line}:{column}: error: ")),
            "{stderr}"
        );
    }
}

#[test]
fn callers_token_prints_a_token_once_with_its_hash() {
    let (code, stdout, _) = run(&["callers", "token", "checkout", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let token = json["token"].as_str().unwrap();
    assert!(token.starts_with("pst_") && token.len() > 40);
    use sha2::Digest as _;
    assert_eq!(
        json["token_sha256"],
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    );
    // Redirected, as here, stdout is TOML only (it may be appended to the config), and the
    // token is on stderr.
    let (_, text, shown) = run(&["callers", "token", "checkout"]);
    assert!(text.contains("[[callers]]") && text.contains("token_sha256 = \""));
    assert!(!text.contains("pst_"), "{text}");
    // Appended to the documented example, the config still checks, with one more caller.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let example = std::fs::read_to_string(repo_root().join("examples/postern.toml")).unwrap();
    std::fs::write(
        &config,
        format!("{example}\n{}", text.replace("checkout", "app3")),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok (2 callers"), "{stdout}");
    let token = shown
        .trim()
        .strip_prefix("token: ")
        .expect("the token on stderr");
    assert!(
        token.starts_with("pst_")
            && text.contains(&hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                token.as_bytes()
            )))
    );
    let (_, again, _) = run(&["callers", "token", "checkout", "--json"]);
    assert_ne!(again, stdout, "every token is new");
}

#[test]
fn demo_self_check_passes() {
    // A port found free can be taken before the demo binds it (by any process's outgoing
    // connection, from the same ephemeral range): then, and only then, again on new ports.
    let mut attempts = 0;
    let (code, stdout, stderr) = loop {
        attempts += 1;
        let dir = tempfile::tempdir().unwrap();
        let listen = free_port();
        let admin = free_port();
        let (code, stdout, stderr) = run(&[
            "demo",
            "--check",
            "--dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ]);
        if code == 0 || attempts == 3 || !stderr.contains("Address already in use") {
            break (code, stdout, stderr);
        }
    };
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("-> 200"), "{stdout}");
    assert!(stdout.contains("-> 403 not_granted"), "{stdout}");
    assert!(stdout.contains("-> 401 caller_unauthenticated"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// A served config with a local plain-HTTP "vendor" stand-in: we only need to see decisions
/// change, so the integration's upstream is a closed port (granted calls get 502, refused 403).
fn served_config(dir: &Path, listen: u16, admin: u16, granted: &str) -> String {
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
upstream = "http://127.0.0.1:9"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
operations = [
  {{ id = "a", method = "GET", path = "/a" }},
  {{ id = "b", method = "GET", path = "/b" }},
]

[[grants]]
caller = "checkout"
integration = "acme"
operations = [{granted}]
"#,
        data = dir.join("data").display(),
        hash = sha256_hex(TOKEN),
    )
}

const TOKEN: &str = "pst_cli_test_token_abcdefghijklmnopqrstuvwxyz";

/// Status code of `GET path` on the gateway, or None if it does not answer.
fn status(port: u16, path: &str) -> Option<u16> {
    get(port, path, TOKEN)?.get(9..12)?.parse().ok()
}

/// The admin listener's `/metrics`, with the admin token `serve` generated in `data_dir`.
fn metrics(admin: u16, data_dir: &Path) -> String {
    let token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap();
    get(admin, "/metrics", token.trim()).expect("the admin listener answers /metrics")
}

/// The whole answer to `GET path` on `127.0.0.1:port` with `token` as the bearer token, over
/// one HTTP/1.1 connection the server closes; `None` if it cannot be connected to or read.
fn get(port: u16, path: &str, token: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// `postern [global] serve --config CONFIG`, stdout dropped, stderr to `stderr`; killed when
/// dropped.
fn serve(global: &[&str], config: &Path, stderr: Stdio) -> Server {
    serve_with(postern(), global, config, stderr)
}

/// [`serve`] with `command` (a `postern()` with its environment set).
fn serve_with(mut command: Command, global: &[&str], config: &Path, stderr: Stdio) -> Server {
    let child = command
        .args(global)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Server(child)
}

/// Everything `server` (started with its stderr piped) wrote on stderr, once its gateway on
/// `listen` answered and it was stopped with SIGTERM.
fn stderr_once_serving(mut server: Server, listen: u16) -> String {
    eventually("the gateway answers", || {
        status(listen, "/acme/a").is_some()
    });
    terminate(&mut server);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.0.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

/// Sends SIGTERM and waits (at most 15 s) for the exit: its code.
fn terminate(server: &mut Server) -> Option<i32> {
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "postern did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_reloads_on_file_change_and_sighup_keeps_old_config_on_error_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    let mut server = serve(&[], &config, Stdio::piped());
    let stderr = server.0.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log_writer = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log_writer.lock().unwrap().push_str(&line);
            log_writer.lock().unwrap().push('\n');
        }
    });
    eventually("the gateway answers", || {
        status(listen, "/acme/a").is_some()
    });
    assert_eq!(
        status(listen, "/acme/a"),
        Some(502),
        "granted: forwarded (to a closed port)"
    );
    assert_eq!(status(listen, "/acme/b"), Some(403));

    // 1. File change: grant b.
    std::fs::write(
        &config,
        served_config(dir.path(), listen, admin, r#""a", "b""#),
    )
    .unwrap();
    eventually("b is granted after the file changed", || {
        status(listen, "/acme/b") == Some(502)
    });
    let logged = |what: &str, trigger: &str| {
        let log = log.lock().unwrap();
        log.lines()
            .filter(|line| line.contains(what) && line.contains(trigger))
            .count()
    };
    eventually("the reload is logged", || {
        logged("configuration reloaded", "file change") >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let reloads = logged("configuration reloaded", "file change");

    // 1b. A file written in place in two steps, 200 ms apart, is loaded once, whole: its first
    // part (valid on its own: no grants at all) is never applied.
    let text = served_config(dir.path(), listen, admin, r#""a", "b""#);
    let (first, rest) = text.split_at(text.find("[[grants]]").unwrap());
    std::fs::write(&config, first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap()
        .write_all(rest.as_bytes())
        .unwrap();
    eventually("the two-step write is reloaded", || {
        logged("configuration reloaded", "file change") > reloads
    });
    for _ in 0..10 {
        assert_eq!(status(listen, "/acme/a"), Some(502), "a stays granted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        logged("configuration reloaded", "file change"),
        reloads + 1,
        "one reload, of the whole file"
    );

    // 2. An invalid file is rejected; the running config stays.
    std::fs::write(&config, "[gateway]\nlisten = \n").unwrap();
    eventually("the rejection is logged", || {
        log.lock().unwrap().contains("configuration rejected")
    });
    assert_eq!(status(listen, "/acme/b"), Some(502));
    // A file that does not parse is counted as a rejected reload.
    let counted = metrics(admin, &dir.path().join("data"));
    let rejected = counted
        .lines()
        .find_map(|line| line.strip_prefix("postern_config_reloads_total{result=\"rejected\"} "))
        .and_then(|count| count.trim().parse::<u64>().ok());
    assert!(rejected.is_some_and(|count| count >= 1), "{counted}");

    // 3. SIGHUP with a valid file that revokes b. (The write alone reloads too: the log must
    // show the reload SIGHUP caused.)
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    eventually("b is refused after SIGHUP", || {
        status(listen, "/acme/b") == Some(403)
    });
    eventually("the reload on SIGHUP is logged", || {
        logged("configuration reloaded", "SIGHUP") == 1
    });

    // SIGHUP with an invalid file: rejected, the running config stays.
    std::fs::write(&config, "[gateway]\nlisten = \n").unwrap();
    eventually("the changed file is rejected", || {
        logged("configuration rejected", "file change") >= 2
    });
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    eventually("the file is rejected on SIGHUP", || {
        logged("configuration rejected", "SIGHUP") == 1
    });
    assert_eq!(status(listen, "/acme/a"), Some(502));
    assert_eq!(status(listen, "/acme/b"), Some(403));

    // 4. SIGTERM: graceful exit 0, events flushed.
    assert_eq!(terminate(&mut server), Some(0));
    let events = std::fs::read_to_string(dir.path().join("data/events.jsonl")).unwrap();
    assert!(events.lines().count() >= 5, "{events}");
    assert!(!events.contains(TOKEN));
    let log = log.lock().unwrap().clone();
    assert!(!log.contains(TOKEN), "{log}");
    // stderr is not a terminal here: no colour codes in what a file or collector receives.
    assert!(!log.contains('\x1b'), "{log}");
}

/// A config mounted as a Kubernetes ConfigMap is a link to `..data/postern.toml`, and an
/// update swaps the `..data` link to a new directory: no event names `postern.toml`, yet the
/// change is seen and applied.
#[test]
fn serve_reloads_a_config_whose_link_is_swapped() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = two_free_ports();
    let version = |name: &str, granted: &str| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        let text = served_config(dir.path(), listen, admin, granted);
        std::fs::write(dir.path().join(name).join("postern.toml"), text).unwrap();
    };
    version("v1", r#""a""#);
    symlink("v1", dir.path().join("..data")).unwrap();
    symlink("..data/postern.toml", dir.path().join("postern.toml")).unwrap();
    let mut server = serve(&[], &dir.path().join("postern.toml"), Stdio::null());
    eventually("the gateway answers", || {
        status(listen, "/acme/a").is_some()
    });
    assert_eq!(status(listen, "/acme/b"), Some(403));
    version("v2", r#""a", "b""#);
    symlink("v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    eventually("b is granted after the link swap", || {
        status(listen, "/acme/b") == Some(502)
    });
    assert_eq!(terminate(&mut server), Some(0));
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1: a listener's identity.
struct ListenerIdentity {
    ca: rustls::pki_types::CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl ListenerIdentity {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        ListenerIdentity {
            ca: ca.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Whether a TLS handshake with the listener on `port`, trusting only this CA, succeeds.
    /// Writes the key, then the certificate, in place (as a rotation does).
    fn write_to(&self, cert: &Path, key: &Path) {
        std::fs::write(key, &self.key_pem).unwrap();
        std::fs::write(cert, &self.cert_pem).unwrap();
    }

    fn served_on(&self, port: u16) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while client.is_handshaking() {
            if client.complete_io(&mut tcp).is_err() {
                return false;
            }
        }
        true
    }
}

/// What `server` writes to its standard error from now on, gathered as it comes.
fn logged(server: &mut Server) -> std::sync::Arc<std::sync::Mutex<String>> {
    let stderr = server.0.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log_writer = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log_writer.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    log
}

/// [`served_config`] on a TLS listener with the certificate and key at `cert` and `key`.
fn tls_config(dir: &Path, listen: u16, admin: u16, cert: &Path, key: &Path) -> String {
    let tls = format!(
        "[gateway]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    served_config(dir, listen, admin, r#""a""#).replacen("[gateway]\n", &tls, 1)
}

/// A `serve` on a TLS listener in `dir`, serving its first certificate: the server, its log,
/// its listen port, the certificate and key paths, the first identity and the config path.
struct TlsServer {
    server: Server,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    listen: u16,
    cert: PathBuf,
    key: PathBuf,
    first: ListenerIdentity,
    config: PathBuf,
}

fn tls_server(dir: &Path) -> TlsServer {
    let (listen, admin) = two_free_ports();
    let (cert, key) = (dir.join("gw.pem"), dir.join("gw-key.pem"));
    let first = ListenerIdentity::new();
    first.write_to(&cert, &key);
    let config = dir.join("postern.toml");
    std::fs::write(&config, tls_config(dir, listen, admin, &cert, &key)).unwrap();
    let mut server = serve(&[], &config, Stdio::piped());
    let log = logged(&mut server);
    eventually("the first certificate is served", || {
        first.served_on(listen)
    });
    TlsServer {
        server,
        log,
        listen,
        cert,
        key,
        first,
        config,
    }
}

/// A listener certificate rotated in place (as cert-manager, SPIRE or certbot do) is served
/// from the next handshake on, without a signal: `serve` watches the TLS files the config
/// names, and reads them again when one changes.
#[test]
fn serve_serves_a_listener_certificate_rotated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let TlsServer {
        mut server,
        log,
        listen,
        cert,
        key,
        first,
        ..
    } = tls_server(dir.path());
    let second = ListenerIdentity::new();
    second.write_to(&cert, &key);
    let rotated = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        second.served_on(listen)
    });
    assert!(
        rotated,
        "the rotated certificate is not served: {}",
        log.lock().unwrap()
    );
    assert!(
        !first.served_on(listen),
        "the old certificate is still served"
    );
    assert_eq!(terminate(&mut server), Some(0));
    let log = log.lock().unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("listener TLS files reloaded")
                && line.contains("TLS file change")),
        "{log}"
    );
}

/// SIGHUP on a TLS listener whose config file holds an edit a reload refuses still reads the
/// listener's TLS files again, with the running config: a rotated certificate must not wait on
/// an unrelated edit being mended. The log says SIGHUP asked for it.
#[test]
fn sighup_with_a_refused_config_still_reads_the_listener_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let TlsServer {
        mut server,
        log,
        listen,
        first,
        config,
        ..
    } = tls_server(dir.path());
    let count = |what: &str, trigger: &str| {
        log.lock()
            .unwrap()
            .lines()
            .filter(|line| line.contains(what) && line.contains(trigger))
            .count()
    };
    // An edit the reload refuses (its change is seen and refused first).
    std::fs::write(&config, "[gateway]\nlisten = \n").unwrap();
    eventually("the edit is refused", || {
        count("configuration rejected", "file change") >= 1
    });
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    eventually("SIGHUP's reload is refused", || {
        count("configuration rejected", "SIGHUP") == 1
    });
    eventually("SIGHUP reads the TLS files again", || {
        count("listener TLS files reloaded", "SIGHUP") == 1
    });
    assert!(first.served_on(listen), "the running certificate stays");
    assert_eq!(terminate(&mut server), Some(0));
}

/// A reload that names other TLS files serves them, watches them from then on (a certificate
/// rotated in place there is served), and reloads once more by itself as soon as they are
/// watched: a file changed between the reload's reading and the watch is not missed.
#[test]
fn serve_watches_the_tls_files_a_reload_names() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = two_free_ports();
    let place = |name: &str| {
        let at = dir.path().join(name);
        std::fs::create_dir_all(&at).unwrap();
        (at.join("gw.pem"), at.join("gw-key.pem"))
    };
    let write = |(cert, key): &(PathBuf, PathBuf), identity: &ListenerIdentity| {
        identity.write_to(cert, key)
    };
    let (old, new) = (place("old"), place("new"));
    let config = dir.path().join("postern.toml");
    let config_for =
        |(cert, key): &(PathBuf, PathBuf)| tls_config(dir.path(), listen, admin, cert, key);
    let first = ListenerIdentity::new();
    write(&old, &first);
    std::fs::write(&config, config_for(&old)).unwrap();
    let mut server = serve(&[], &config, Stdio::piped());
    let log = logged(&mut server);
    let reloads_by_tls = || {
        log.lock()
            .unwrap()
            .lines()
            .filter(|line| {
                line.contains("listener TLS files reloaded") && line.contains("TLS file change")
            })
            .count()
    };
    eventually("the first certificate is served", || {
        first.served_on(listen)
    });
    assert_eq!(reloads_by_tls(), 0);

    let second = ListenerIdentity::new();
    write(&new, &second);
    std::fs::write(&config, config_for(&new)).unwrap();
    eventually("the certificate the reload names is served", || {
        second.served_on(listen)
    });
    // No TLS file changed since: the reload that follows is the catch-up.
    eventually("one catch-up reload once the new files are watched", || {
        reloads_by_tls() == 1
    });

    let third = ListenerIdentity::new();
    write(&new, &third);
    eventually(
        "a certificate rotated in place where the reload pointed",
        || third.served_on(listen),
    );
    assert_eq!(terminate(&mut server), Some(0));
}

/// A certificate rotated in place is served while the config file holds an edit that a
/// reload refuses: a change to a TLS file reads the TLS files the running config names, not
/// the whole file again. Once the file is mended it reloads as ever.
#[test]
fn a_rotated_certificate_is_served_while_the_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = two_free_ports();
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw-key.pem"));
    let write = |identity: &ListenerIdentity| identity.write_to(&cert, &key);
    let config = dir.path().join("postern.toml");
    let text = tls_config(dir.path(), listen, admin, &cert, &key);
    let first = ListenerIdentity::new();
    write(&first);
    std::fs::write(&config, &text).unwrap();
    let mut server = serve(&[], &config, Stdio::piped());
    let log = logged(&mut server);
    let logged_lines = |what: &str| {
        log.lock()
            .unwrap()
            .lines()
            .filter(|line| line.contains(what))
            .count()
    };
    eventually("the first certificate is served", || {
        first.served_on(listen)
    });

    std::fs::write(&config, format!("{text}\n[[integrations]]\nname = 7\n")).unwrap();
    eventually("the edit is refused", || {
        logged_lines("configuration rejected") == 1
    });
    let second = ListenerIdentity::new();
    write(&second);
    eventually("the rotated certificate is served", || {
        second.served_on(listen)
    });
    // Logged once the new TLS is in use: a handshake may come first.
    eventually("the TLS files' reading is logged", || {
        logged_lines("listener TLS files reloaded") == 1
    });
    assert_eq!(logged_lines("configuration reloaded"), 0);

    std::fs::write(&config, &text).unwrap();
    eventually("the mended file reloads", || {
        logged_lines("configuration reloaded") == 1
    });
    assert!(second.served_on(listen));
    assert_eq!(terminate(&mut server), Some(0));
}

/// A client revocation list past its `nextUpdate` is a warning at `client_crl` (it still
/// revokes what it names: refusing it would let every revoked certificate in); exit 0.
#[test]
fn check_warns_of_a_client_revocation_list_past_its_next_update() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = two_free_ports();
    let identity = ListenerIdentity::new();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2020, 2, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&rcgen::Issuer::from_params(&ca_params, &ca_key))
    .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let tls = format!(
        "[gateway]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\nclient_crl = \"{}\"\n",
        write("gw.pem", &identity.cert_pem),
        write("gw-key.pem", &identity.key_pem),
        write("ca.pem", &ca.pem()),
        write("stale.crl", &crl.pem().unwrap()),
    );
    let text = served_config(dir.path(), listen, admin, r#""a""#).replacen("[gateway]\n", &tls, 1);
    let path = dir.path().join("postern.toml");
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("postern.toml:5:14: warning: the revocation list of")
            && stdout.contains("2020-02-01")
            && stdout.contains("publish a current one"),
        "{stdout}"
    );
}

/// With `--log-format json`, everything `serve` writes on stderr is a JSON line (no banner).
#[test]
fn json_logs_are_json_lines_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    let server = serve(&["--log-format", "json"], &config, Stdio::piped());
    let stderr = stderr_once_serving(server, listen);
    assert!(stderr.contains("postern is serving"), "{stderr}");
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

/// `serve` warns when its allocator would keep what it frees: not for this repository's build
/// (`.cargo/config.toml` turns mimalloc's eager arena commit off), and so when a variable
/// turns it on again, as a build without the define has it.
#[test]
fn serve_warns_when_the_allocator_keeps_freed_memory() {
    const WARNING: &str = "allocator keeps the memory it frees";
    for (eager, expected) in [(None, false), (Some("1"), true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("postern.toml");
        let (listen, admin) = two_free_ports();
        std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
        let mut command = postern();
        // The variable, and the older name mimalloc still reads for it.
        command.env_remove("MIMALLOC_ARENA_EAGER_COMMIT");
        command.env_remove("MIMALLOC_EAGER_REGION_COMMIT");
        if let Some(value) = eager {
            command.env("MIMALLOC_ARENA_EAGER_COMMIT", value);
        }
        let server = serve_with(command, &[], &config, Stdio::piped());
        let stderr = stderr_once_serving(server, listen);
        assert_eq!(
            stderr.contains(WARNING),
            expected,
            "MIMALLOC_ARENA_EAGER_COMMIT={eager:?} (unset: the build's own default; a CFLAGS \
             of your own without -DMI_DEFAULT_ARENA_EAGER_COMMIT=0 drops it):\n{stderr}"
        );
    }
}

/// `serve` raises its soft open-file limit to the hard one (a soft 1024 is far below its
/// connection cap, and a process out of descriptors can accept no one), and warns when the hard
/// limit itself is too low.
#[test]
fn serve_raises_the_open_file_limit_and_warns_when_it_cannot_be_enough() {
    use std::os::unix::process::CommandExt as _;
    const WARNING: &str = "below the";
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed to it.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) },
        0
    );
    for (soft, hard) in [(256, current.rlim_max), (4096, 4096.min(current.rlim_max))] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("postern.toml");
        let (listen, admin) = two_free_ports();
        std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
        let mut command = postern();
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let server = serve_with(command, &[], &config, Stdio::piped());
        let pid = server.0.id();
        eventually("the gateway answers", || {
            status(listen, "/acme/a").is_some()
        });
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap();
        let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{line}");
        let stderr = stderr_once_serving(server, listen);
        assert_eq!(
            stderr.contains(WARNING),
            hard < 2 * 16_384 + 1024,
            "soft {soft}, hard {hard}:\n{stderr}"
        );
    }
}

/// Names the config would refuse are refused by `callers token` too (exit 2, nothing printed),
/// rather than printing a stanza the config then refuses.
#[test]
fn callers_token_refuses_names_the_config_would() {
    for name in ["_x", "-x", &"a".repeat(65)] {
        let (code, stdout, stderr) = run(&["callers", "token", "--", name]);
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains("1 to 64"), "{stderr}");
    }
}

/// `callers import` of a token already revoked in the vault says so, and does not advise
/// `token_store = true` (which would leave the caller with no working token).
#[test]
fn importing_a_revoked_token_says_it_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    let config = config.to_str().unwrap();
    let (code, _, stderr) = run(&["callers", "import", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&["callers", "revoke", "checkout", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&["callers", "import", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    assert!(stdout.contains("callers rotate checkout"), "{stdout}");
    assert!(!stdout.contains("You can now replace"), "{stdout}");
}

/// Commands that only read or change what is stored say so where nothing is (exit 1), and
/// make nothing: a mistyped --data-dir must not look like every credential gone.
#[test]
fn read_only_commands_make_nothing_where_nothing_is() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let data = missing.to_str().unwrap();
    for args in [
        vec!["creds", "list", "--data-dir", data],
        vec!["creds", "history", "x", "--data-dir", data],
        vec!["creds", "revoke", "x", "--data-dir", data],
    ] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("no vault"), "{stderr}");
    }
    assert!(!missing.exists(), "nothing is made");
    let (code, stdout, _) = run(&["audit", "verify", "--data-dir", data, "--json"]);
    assert_eq!(code, 1);
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["ok"], false);
}

/// Not a bad command line but a failure (exit 1): an empty credential value, a caller the
/// config does not have. And `creds list` keeps its columns under a kind longer than the
/// header's.
#[test]
fn failures_exit_1_and_the_credential_list_keeps_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let empty = postern()
        .args(["creds", "set", "stripe-live", "--data-dir", data])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(1));
    // A file that goes on (`/dev/zero`) is refused after 64 KiB, not read to its end.
    let endless = postern()
        .args([
            "creds",
            "set",
            "zeros",
            "--from-file",
            "/dev/zero",
            "--data-dir",
            data,
        ])
        .output()
        .unwrap();
    assert_eq!(endless.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&endless.stderr).contains("over 64 KiB"),
        "{}",
        String::from_utf8_lossy(&endless.stderr)
    );
    let long_kind = "oauth2_client_secret";
    let set = postern()
        .args([
            "creds",
            "set",
            "crm",
            "--kind",
            long_kind,
            "--data-dir",
            data,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(b"value\n")?;
            child.wait()
        })
        .unwrap();
    assert_eq!(set.code(), Some(0));
    let (code, stdout, _) = run(&["creds", "list", "--data-dir", data]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    let column = |line: &str, word: &str| line.find(word).unwrap();
    assert_eq!(
        column(lines[0], "STATE"),
        column(lines[1], "active"),
        "{stdout}"
    );
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    std::fs::write(&config, served_config(dir.path(), listen, admin, r#""a""#)).unwrap();
    let config = config.to_str().unwrap();
    let (code, _, stderr) = run(&["callers", "rotate", "nobody", "--config", config]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no caller"), "{stderr}");
}

/// `creds set` and `creds rotate` with a config refuse a value that an integration injecting
/// that credential could not use (a line break in a header credential), naming the integration
/// and never the value, and store nothing (exit 1), as the admin API's `422
/// credential_unusable` does; a usable value is stored.
#[test]
fn creds_refuses_a_value_an_integration_could_not_inject() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    let text = served_config(dir.path(), listen, admin, r#""a""#).replace(
        "allow_plaintext = true\n",
        "allow_plaintext = true\ncredential = { kind = \"header\", name = \"x-api-key\", secret = \"acme-key\" }\n",
    );
    assert!(text.contains("acme-key"));
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let creds = |args: &[&str], value: &[u8]| {
        let mut child = postern()
            .args(["creds"])
            .args(args)
            .args(["--config", config])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            // A child that ends before reading (a refusal that needs no value) closes the
            // pipe: its exit code and message below say why.
            let written = child.stdin.take().unwrap().write_all(value);
            if let Err(error) = written {
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
            }
        }
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let unusable = b"sk_live_first\r\nx-injected: yes";
    for command in ["set", "rotate"] {
        let (code, stderr) = creds(&[command, "acme-key"], unusable);
        assert_eq!(code, Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("integration acme could not use"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("sk_live_first"),
            "the value is never shown: {stderr}"
        );
    }
    // A name or kind the vault would refuse is refused before the value is read.
    for args in [
        &["set", ".."][..],
        &["set", "acme-key", "--kind", "a kind"][..],
    ] {
        let (code, stderr) = creds(args, b"sk_live_usable\n");
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is invalid"), "{stderr}");
    }
    // Nothing was stored: the value is checked before the vault is opened, so none was made.
    let (code, _, stderr) = run(&["creds", "list", "--config", config, "--json"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("there is no vault"), "{stderr}");
    let (code, stderr) = creds(&["set", "acme-key"], b"sk_live_usable\n");
    assert_eq!(code, Some(0), "{stderr}");
    // Rotating a stored credential to an unusable value is refused too, and leaves it as it was.
    let (code, stderr) = creds(&["rotate", "acme-key"], unusable);
    assert_eq!(code, Some(1), "{stderr}");
    let (code, stdout, stderr) = run(&["creds", "list", "--config", config, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let acme = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == "acme-key")
        .expect("acme-key listed");
    assert_eq!(acme["version"], 1, "{stdout}");
    // Another credential's name is not checked against acme's injection.
    let (code, stderr) = creds(&["set", "other"], unusable);
    assert_eq!(code, Some(0), "{stderr}");
}

/// `ca export` on a data_dir that does not exist yet makes it private, as `serve` does.
#[test]
fn ca_export_makes_a_private_data_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new-data");
    let (code, stdout, stderr) = run(&["ca", "export", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("BEGIN CERTIFICATE"));
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn caller_token_hashes_move_into_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let (listen, admin) = two_free_ports();
    let text = served_config(dir.path(), listen, admin, r#""a""#);
    std::fs::write(&config, &text).unwrap();
    let (code, stdout, stderr) = run(&[
        "callers",
        "import",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["callers"][0]["caller"], "checkout");
    assert_eq!(json["callers"][0]["imported"], true);
    assert_eq!(json["callers"][0]["revoked"], false);
    // The config no longer holds the hash: the caller's tokens live in the vault.
    let hash_line = format!("token_sha256 = \"{}\"", sha256_hex(TOKEN));
    std::fs::write(&config, text.replace(&hash_line, "token_store = true")).unwrap();
    let (code, _, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let _server = serve(&[], &config, Stdio::null());
    eventually("the gateway answers", || {
        status(listen, "/acme/a").is_some()
    });
    assert_eq!(
        status(listen, "/acme/a"),
        Some(502),
        "authenticated by the stored hash"
    );
    // The config names a new token again (a suspected leak): the token moved into the vault no
    // longer counts, though the vault never revoked it; the new one does.
    let fresh = "pst_a_fresh_token_for_checkout_after_a_suspected_leak";
    let renamed = text.replace(
        &hash_line,
        &format!("token_sha256 = \"{}\"", sha256_hex(fresh)),
    );
    std::fs::write(&config, renamed).unwrap();
    eventually("the old token refused after the reload", || {
        get(listen, "/acme/a", TOKEN)
            .and_then(|answer| answer.get(9..12).map(str::to_owned))
            .as_deref()
            == Some("401")
    });
    let answer = get(listen, "/acme/a", fresh).unwrap();
    assert_eq!(answer.get(9..12), Some("502"), "{answer}");
}

/// An integration whose upstream is an address the SSRF guard refuses (the cloud metadata
/// address here) passes `check` — the config is valid — with a warning saying every call would
/// be refused and what to list if the vendor is meant to be there; listed, no warning.
#[test]
fn check_warns_of_an_upstream_address_the_guard_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"./data\"\n\n\
                 [[integrations]]\nname = \"meta\"\nvendor = \"V\"\nowner = \"a@example.com\"\n\
                 upstream = \"https://169.254.169.254\"\noperations = [{{ id = \"get\", method = \"GET\", path = \"/x\" }}]\n{extra}"
            ),
        )
        .unwrap();
    };
    write("");
    let (code, stdout, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "warning: integration meta: its upstream 169.254.169.254 is a link_local address"
        ) && stdout.contains("502 upstream_address_denied")
            && stdout.contains("\"169.254.169.254/32\""),
        "{stdout}"
    );
    write("allow_private_networks = [\"169.254.169.254/32\"]\n");
    let (code, stdout, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// `check` reads the interception CA already in data_dir (it makes none) and warns when its
/// names are not the config's `[proxy] intercept_ca_names`: `serve` would start with
/// interception off. `ca export --config` makes a CA with the config's names.
#[test]
fn check_warns_when_the_existing_ca_has_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let write = |names: &str| {
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"./data\"\n\n\
                 [proxy]\nintercept_ca_names = [{names}]\n"
            ),
        )
        .unwrap();
    };
    let check = || run(&["check", "--config", config.to_str().unwrap()]);
    write("\"stripe.com\"");
    let (code, stdout, stderr) = check();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("warning"), "no CA yet: {stdout}");
    assert!(!dir.path().join("data").exists(), "check made nothing");
    let (code, pem, stderr) = run(&["ca", "export", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(pem.contains("BEGIN CERTIFICATE"));
    let (code, stdout, _) = check();
    assert_eq!(code, 0);
    assert!(!stdout.contains("warning"), "{stdout}");
    write("\"stripe.com\", \"openai.com\"");
    let (code, stdout, stderr) = check();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("warning: the interception CA in")
            && stdout.contains("has the names stripe.com")
            && stdout.contains("interception off"),
        "{stdout}"
    );
}

/// At a terminal a credential value is one line, typed unseen. One pasted over several lines
/// (a PEM key, a JSON document) is refused, nothing stored, and the lines after the first are
/// discarded: left in the terminal, the shell would read them once postern exits — show them,
/// run them, keep them in its history.
#[test]
fn a_value_pasted_over_several_lines_at_the_terminal_is_refused_and_not_left_for_the_shell() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&str, &[u8], i32); 2] = [("typed", b"one-line\r", 0), ("pasted", b"l1\rl2\r", 1)];
    for (name, typed, expected) in cases {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors, owned from here on.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut command = postern();
        command
            .args(["creds", "set", name, "--data-dir", data])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec. The terminal becomes the
        // child's own (its /dev/tty), as a login shell's is.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        // (Its copies of the terminal closed, so reads of the other end end with the child.)
        drop(command);
        let mut terminal = std::fs::File::from(master);
        terminal.write_all(typed).unwrap();
        // What the child writes is drained, so it never waits on a full terminal.
        let shown = std::thread::spawn({
            let mut terminal = terminal.try_clone().unwrap();
            move || {
                let mut shown = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(read @ 1..) = terminal.read(&mut chunk) {
                    shown.extend_from_slice(&chunk[..read]);
                }
                String::from_utf8_lossy(&shown).to_string()
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{name}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Left for whatever reads the terminal next (a shell).
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut queued) },
            0
        );
        drop(slave);
        let shown = shown.join().unwrap();
        assert_eq!(status.code(), Some(expected), "{name}: {shown}");
        assert_eq!(queued, 0, "{name}: {queued} bytes left for the shell");
        if expected == 1 {
            assert!(shown.contains("more than one line"), "{shown}");
        }
    }
    let (code, stdout, stderr) = run(&["creds", "list", "--json", "--data-dir", data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("\"typed\"") && !stdout.contains("pasted"),
        "{stdout}"
    );
}

/// A `POSTERN_MASTER_KEY` that is set but not UTF-8 (raw key bytes) is refused as malformed,
/// not taken for unset: a key file would be made beside the vault, which the variable is there
/// to avoid.
#[test]
fn a_master_key_variable_that_is_not_text_is_refused_not_ignored() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = postern()
        .args(["creds", "set", "x", "--data-dir", data.to_str().unwrap()])
        .env(
            "POSTERN_MASTER_KEY",
            std::ffi::OsStr::from_bytes(&[0xff; 32]),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"value\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("POSTERN_MASTER_KEY is set but is not a 32-byte key"),
        "{stderr}"
    );
    assert!(!data.join("master.key").exists());
}
