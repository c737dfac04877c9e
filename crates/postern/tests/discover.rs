//! `postern discover` as a user runs it: import each log format, list, show, promote, and the
//! exit codes when something is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn postern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command
        .env_remove("POSTERN_CONFIG")
        .env("POSTERN_LOG", "info");
    command
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../postern-discover/tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
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

/// `postern discover <args> --data-dir <dir>`, expecting `code`; returns stdout.
fn discover(dir: &Path, args: &[&str], code: i32) -> String {
    let mut all = vec!["discover"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", dir.to_str().unwrap()]);
    let (actual, stdout, stderr) = run(&all);
    assert_eq!(actual, code, "{all:?}\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn import_json(dir: &Path, format: &str, file: &str) -> serde_json::Value {
    let stdout = discover(
        dir,
        &["import", &fixture(file), "--format", format, "--json"],
        0,
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn help_everywhere() {
    for args in [
        vec!["discover", "--help"],
        vec!["discover", "list", "--help"],
        vec!["discover", "show", "--help"],
        vec!["discover", "promote", "--help"],
        vec!["discover", "import", "--help"],
    ] {
        let (code, stdout, _) = run(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let (code, _, stderr) = run(&["discover", "import", "x.log", "--format", "apache"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn import_every_format_then_list_show_and_promote() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Nothing recorded yet: an empty list, and no file created just to read it.
    assert_eq!(discover(&data, &["list", "--json"], 0).trim(), "[]");
    assert!(!data.join("discovery.db").exists());

    let nginx = import_json(&data, "nginx", "nginx_combined.log");
    assert_eq!(nginx["records_read"], 10);
    assert_eq!(nginx["observations"], 8);
    assert_eq!(nginx["malformed"], 2);
    assert_eq!(nginx["malformed_examples"][0]["line"], 8);
    assert_eq!(nginx["malformed_examples"][1]["line"], 9);
    assert_eq!(nginx["hosts_touched"], 4);
    assert_eq!(nginx["stored"], true);

    let nginx_json = import_json(&data, "nginx-json", "nginx_json.log");
    assert_eq!(
        (&nginx_json["observations"], &nginx_json["malformed"]),
        (&5.into(), &1.into())
    );
    let envoy = import_json(&data, "envoy", "envoy.log");
    assert_eq!(
        (&envoy["observations"], &envoy["malformed"]),
        (&3.into(), &2.into())
    );
    let har = import_json(&data, "har", "sample.har");
    assert_eq!(
        (&har["observations"], &har["malformed"]),
        (&2.into(), &1.into())
    );
    assert_eq!(har["malformed_examples"][0]["entry"], 3);

    let list: Vec<serde_json::Value> =
        serde_json::from_str(&discover(&data, &["list", "--json"], 0)).unwrap();
    let hosts: Vec<(String, u64)> = list
        .iter()
        .map(|h| {
            (
                format!("{}:{}", h["host"].as_str().unwrap(), h["port"]),
                h["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            ("api.stripe.com:443".to_owned(), 6),
            ("api.openai.com:443".to_owned(), 4),
            ("api.github.com:443".to_owned(), 3),
            ("api.twilio.com:443".to_owned(), 3),
            ("hooks.slack.com:443".to_owned(), 1),
            ("slack.com:443".to_owned(), 1),
        ]
    );
    let stripe = &list[0];
    assert_eq!(stripe["sources"], serde_json::json!(["import"]));
    // The nginx log's absolute-form https:// lines showed https (the Envoy lines, with an
    // authority and neither SNI nor scheme, showed none). The nginx-json line for slack.com
    // names a host and no scheme: none seen.
    assert_eq!(stripe["schemes"], serde_json::json!(["https"]));
    let slack = list.iter().find(|h| h["host"] == "slack.com").unwrap();
    assert_eq!(slack["schemes"], serde_json::json!([]));
    let show = discover(&data, &["show", "slack.com"], 0);
    assert!(show.contains("schemes      (none seen)"), "{show}");
    assert!(stripe["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["method"] == "GET" && e["template"] == "/v1/charges/{id}" && e["calls"] == 2));

    let table = discover(&data, &["list"], 0);
    assert!(table.starts_with("HOST"), "{table}");
    assert!(table.contains("api.stripe.com"), "{table}");

    let show = discover(&data, &["show", "api.twilio.com"], 0);
    assert!(
        show.contains("/2010-04-01/Accounts/{id}/Messages/{id}.json"),
        "{show}"
    );
    assert!(show.contains("svc-notify"), "{show}");
    let show: serde_json::Value = serde_json::from_str(&discover(
        &data,
        &["show", "api.twilio.com:443", "--json"],
        0,
    ))
    .unwrap();
    assert_eq!(show["calls"], 3);

    let draft = discover(&data, &["promote", "api.stripe.com"], 0);
    for expected in [
        "[[integrations]]",
        "name = \"stripe\"",
        "owner = \"TODO@example.com\"",
        "upstream = \"https://api.stripe.com\"",
        "hosts = [\"api.stripe.com\"]",
        "intercept = true",
        "{ id = \"post_v1_charges\", method = \"POST\", path = \"/v1/charges\" },",
        "{ id = \"get_v1_charges_id\", method = \"GET\", path = \"/v1/charges/{id}\" },",
        "{ id = \"get_v1_customers_id_sources_id2\", method = \"GET\", path = \"/v1/customers/{id}/sources/{id2}\" },",
        "{ id = \"post_v1_payment_intents_id_confirm\", method = \"POST\", path = \"/v1/payment_intents/{id}/confirm\" },",
    ] {
        assert!(draft.contains(expected), "{expected}\n---\n{draft}");
    }
    let draft = discover(&data, &["promote", "api.twilio.com"], 0);
    assert!(
        draft.contains("path = \"/2010-04-01/Accounts/{id}/Messages/{id2}.json\""),
        "{draft}"
    );

    // Importing again adds up.
    import_json(&data, "har", "sample.har");
    let show: serde_json::Value =
        serde_json::from_str(&discover(&data, &["show", "api.github.com", "--json"], 0)).unwrap();
    assert_eq!(show["calls"], 5);
}

#[test]
fn unknown_hosts_and_unreadable_files_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    import_json(&data, "envoy", "envoy.log");

    let (code, _, stderr) = run(&[
        "discover",
        "promote",
        "api.unknown.example",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("postern discover list"), "{stderr}");

    let (code, _, stderr) = run(&[
        "discover",
        "import",
        dir.path().join("missing.log").to_str().unwrap(),
        "--format",
        "nginx",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read"), "{stderr}");

    // The wrong format: every line malformed, nothing stored, exit 1 naming --format.
    let before = discover(&data, &["list", "--json"], 0);
    let (code, stdout, stderr) = run(&[
        "discover",
        "import",
        &fixture("envoy.log"),
        "--format",
        "nginx",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("5 malformed"), "{stdout}");
    assert!(stdout.contains("line 1: "), "{stdout}");
    assert!(stderr.contains("--format"), "{stderr}");
    assert_eq!(discover(&data, &["list", "--json"], 0), before);

    // Origin-form nginx lines need --host.
    let log = dir.path().join("origin.log");
    std::fs::write(
        &log,
        "10.0.0.1 - - [05/Mar/2024:10:11:12 +0000] \"GET /v1/things/42 HTTP/1.1\" 200 10 \"-\" \"curl/8\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&[
        "discover",
        "import",
        log.to_str().unwrap(),
        "--format",
        "nginx",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    discover(
        &data,
        &[
            "import",
            log.to_str().unwrap(),
            "--format",
            "nginx",
            "--host",
            "internal.example.com:8443",
        ],
        0,
    );
    let show = discover(&data, &["show", "internal.example.com"], 0);
    assert!(show.contains("internal.example.com:8443"), "{show}");
    assert!(show.contains("/v1/things/{id}"), "{show}");
}

#[test]
fn the_data_dir_comes_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/postern.toml"),
    )
    .unwrap();
    std::fs::write(&config, example).unwrap();
    let (code, stdout, stderr) = run(&[
        "discover",
        "import",
        &fixture("sample.har"),
        "--format",
        "har",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("3 entries read as har"), "{stdout}");
    let data_dir: PathBuf = dir.path().join("postern-data");
    assert!(data_dir.join("discovery.db").exists());

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[gateway\n").unwrap();
    let (code, _, stderr) = run(&["discover", "list", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

#[test]
fn ca_export_creates_the_interception_ca_once_and_prints_only_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, first, stderr) = run(&["ca", "export", "--data-dir", data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"), "{first}");
    assert!(!first.contains("PRIVATE KEY"));
    let (code, again, _) = run(&["ca", "export", "--data-dir", data]);
    assert_eq!(code, 0);
    assert_eq!(first, again, "the CA is generated once and kept");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A key others can read is refused, naming it and the fix, and kept as it is.
        let key = dir.path().join("ca/ca-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, refused, stderr) = run(&["ca", "export", "--data-dir", data]);
        assert_ne!(code, 0, "{stderr}");
        assert!(refused.is_empty(), "{refused}");
        assert!(
            stderr.contains("mode 644") && stderr.contains("chmod 600"),
            "{stderr}"
        );
        assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (code, kept, stderr) = run(&["ca", "export", "--data-dir", data]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(kept, first);
    }
    let (code, _, _) = run(&["ca", "--help"]);
    assert_eq!(code, 0);
}

#[test]
fn a_reader_that_leaves_early_ends_the_listing_quietly() {
    // `postern discover list | head -1`: the pipe closes before postern writes. It ends as Unix
    // tools do (SIGPIPE), not with a panic and exit 101.
    let dir = tempfile::tempdir().unwrap();
    let mut child = postern()
        .args(["discover", "list", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}
