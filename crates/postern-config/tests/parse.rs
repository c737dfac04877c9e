//! Feature tests for `postern_config::parse`: one line per case.
//!
//! `check(body, expect)` parses `body` (followed by a valid `[gateway]`
//! table unless the body has its own, so line numbers are the body's) and
//! compares the outcome with `expect`: `"ok"`, or one `line:column: message`
//! per error.

use std::path::{Path, PathBuf};

use postern_config::{parse, Config, CredentialKind, SecretSource};

const TOKEN: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const GATEWAY: &str = "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"./postern-data\"\n";
const CONFIG_PATH: &str = "/etc/postern/postern.toml";

const EXAMPLE: &str = r#"[gateway]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
data_dir = "./postern-data"

[[callers]]
name = "checkout"
token_sha256 = "<64 hex>"
# spiffe_id = "spiffe://example.org/checkout"

[[integrations]]
name = "stripe"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://api.stripe.com"
credential = { kind = "bearer", from_env = "STRIPE_KEY" }   # kinds: bearer, basic, header (+ name), query (+ param); from_env or from_file
rate_limit = { requests_per_second = 50, burst = 100 }
operations = [
  { id = "create_charge", method = "POST", path = "/v1/charges" },
  { id = "get_charge",    method = "GET",  path = "/v1/charges/{id}" },
]
# allow_private_networks = ["127.0.0.1/32"]

[[grants]]
caller = "checkout"
integration = "stripe"
operations = ["create_charge", "get_charge"]
"#;

/// A valid integration table to build cases on; `{extra}` adds keys.
fn integration(extra: &str) -> String {
    format!(
        "[[integrations]]\nname = \"stripe\"\nvendor = \"Stripe\"\nowner = \"payments@example.com\"\n\
         upstream = \"https://api.stripe.com\"\n\
         operations = [{{ id = \"get_charge\", method = \"GET\", path = \"/v1/charges/{{id}}\" }}]\n{extra}"
    )
}

fn parse_body(body: &str) -> Result<Config, postern_config::ConfigErrors> {
    let body = body.replace("<64 hex>", TOKEN);
    let text = if body.contains("[gateway]") {
        body
    } else {
        format!("{body}\n{GATEWAY}")
    };
    parse(&text, Path::new(CONFIG_PATH))
}

fn render(body: &str) -> String {
    match parse_body(body) {
        Ok(_) => "ok".to_string(),
        Err(errors) => errors
            .errors
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[track_caller]
fn check(body: &str, expect: &str) {
    assert_eq!(render(body), expect, "\nbody:\n{body}");
}

#[track_caller]
fn parse_ok(body: &str) -> Config {
    match parse_body(body) {
        Ok(config) => config,
        Err(errors) => panic!("expected ok, got:\n{errors}"),
    }
}

#[track_caller]
fn fix_of_first_error(body: &str) -> String {
    parse_body(body).expect_err("expected errors").errors[0]
        .fix
        .clone()
}

#[test]
fn the_documented_example_parses() {
    let config = parse_ok(EXAMPLE);
    assert_eq!(config.gateway.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.gateway.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(
        config.gateway.data_dir,
        PathBuf::from("/etc/postern/postern-data")
    );
    assert_eq!(config.gateway.events_max_file_bytes, 64 * 1024 * 1024);
    assert_eq!(config.gateway.events_max_files, 5);
    assert_eq!(config.gateway.max_header_bytes, 16384);
    assert_eq!(config.gateway.shutdown_grace_ms, 10_000);
    assert_eq!(config.gateway.idle_timeout_ms, 300_000);
    assert_eq!(config.gateway.workers, 0, "default: one worker per CPU");
    assert_eq!(config.source_path, PathBuf::from(CONFIG_PATH));

    assert_eq!(config.callers[0].name, "checkout");
    assert_eq!(config.callers[0].token_sha256.as_deref(), Some(TOKEN));

    let stripe = config.integration("stripe").expect("stripe");
    assert_eq!(stripe.upstream.as_str(), "https://api.stripe.com/");
    let credential = stripe.credential.as_ref().expect("credential");
    assert_eq!(credential.kind, CredentialKind::Bearer);
    assert_eq!(credential.source, SecretSource::Env("STRIPE_KEY".into()));
    let rate_limit = stripe.rate_limit.expect("rate limit");
    assert_eq!(
        (rate_limit.requests_per_second, rate_limit.burst),
        (50, 100)
    );
    let operations: Vec<_> = stripe
        .operations
        .iter()
        .map(|o| format!("{} {} {}", o.id, o.method, o.path))
        .collect();
    assert_eq!(
        operations,
        [
            "create_charge POST /v1/charges",
            "get_charge GET /v1/charges/{id}"
        ]
    );
    assert!(!stripe.allow_plaintext);
    assert_eq!(
        (
            stripe.connect_timeout_ms,
            stripe.request_timeout_ms,
            stripe.idle_timeout_ms,
            stripe.response_idle_timeout_ms
        ),
        (5000, 30_000, 90_000, 300_000)
    );
    assert_eq!(config.proxy.response_idle_timeout_ms, 300_000);
    assert_eq!(stripe.max_request_body_bytes, 10 * 1024 * 1024);
    assert_eq!(stripe.max_response_body_bytes, 64 * 1024 * 1024);

    assert_eq!(config.grants[0].caller, "checkout");
    assert!(config.grants[0].allows_operation("get_charge"));
    assert!(config.integration("twilio").is_none());
}

#[test]
#[rustfmt::skip]
fn toml_syntax_type_and_unknown_key_errors() {
    check("[gateway]\nlistenn = \"127.0.0.1:8080\"\n", "2:1: unknown field `listenn`, expected one of `listen`, `admin_listen`, `data_dir`, `tls_cert`, `tls_key`, `client_ca`, `client_crl`, `admin_token_sha256`, `policies`, `events_max_file_bytes`, `events_max_files`, `max_header_bytes`, `shutdown_grace_ms`, `idle_timeout_ms`, `workers`, `max_connections_per_source`, `credential_max_age_days`, `audit_origin`, `detect`, `scan_rules`, `audit_checkpoint_interval_ms`, `audit_timeout_ms`");
    check("[gatway]\n", "1:2: unknown field `gatway`, expected one of `gateway`, `callers`, `integrations`, `grants`, `proxy`");
    check(&integration("credential = { kind = \"bearer\", from_envv = \"K\" }\n"), "7:33: unknown field `from_envv`, expected one of `kind`, `from_env`, `from_file`, `secret`, `name`, `param`, `username`, `token_url`, `client_id`, `client_secret`, `scope`, `client_auth`, `params`");
    check("[[callers]]\nname = 1\n", "2:8: expected a string, found a whole number");
    check("[[callers]]\nname = \"a\n", "2:10: invalid basic string");
    check("[[callers]]\nname = \"a\"\ntoken_sha256 = \"<64 hex>\"\n[gateway]\n", "4:1: missing field `listen`");
    check(&integration("").replace("owner = \"payments@example.com\"\n", ""), "1:1: missing field `owner`");
    check("# no [gateway] table\n", "1:1: missing field `gateway`");
    check(&integration("connect_timeout_ms = -1\n"), "7:22: the number -1 is out of range: expected a whole number, 0 or more");
    check(&integration("scan_max_body_bytes = 67108865\n"), "7:23: `scan_max_body_bytes` is 67108865; at most 67108864 (64 MiB) is read into memory to be scanned");
}

/// Every table refuses a key it does not know, at the key, with a fix: not only the top level,
/// `[gateway]` and `credential` above.
#[test]
fn every_table_refuses_unknown_keys() {
    let cases = [
        (
            "[[callers]]\nname = \"a\"\ntoken_sha256 = \"<64 hex>\"\nspiffe = \"x\"\n".to_string(),
            "4:1",
            "spiffe",
        ),
        (integration("ownr = \"x\"\n"), "7:1", "ownr"),
        (
            integration("").replace(
                "path = \"/v1/charges/{id}\" }",
                "path = \"/v1/charges/{id}\", verb = \"GET\" }",
            ),
            "6:79",
            "verb",
        ),
        (
            integration("rate_limit = { requests_per_second = 1, burts = 2 }\n"),
            "7:41",
            "burts",
        ),
        (
            integration("client_certificate = { cert = \"c\", key = \"k\", chain = \"x\" }\n"),
            "7:47",
            "chain",
        ),
        (
            "[[grants]]\ncaller = \"a\"\nintegration = \"b\"\noperations = []\nops = []\n"
                .to_string(),
            "5:1",
            "ops",
        ),
        (format!("{GATEWAY}[proxy]\nmod = \"open\"\n"), "6:1", "mod"),
    ];
    for (body, at, key) in cases {
        let errors = parse_body(&body)
            .expect_err("an unknown key is an error")
            .errors;
        let first = &errors[0];
        assert_eq!(
            format!("{}:{}", first.line, first.column),
            at,
            "{key}: {}\n{body}",
            first.message
        );
        assert!(
            first
                .message
                .starts_with(&format!("unknown field `{key}`, expected")),
            "{}",
            first.message
        );
        assert!(
            first.fix.starts_with("remove the key, or rename it")
                || first.fix.starts_with("rename the key to `"),
            "{key}: {}",
            first.fix
        );
    }
}

#[test]
fn toml_errors_carry_a_fix() {
    let fix = fix_of_first_error("[gateway]\nlistenn = \"127.0.0.1:8080\"\n");
    assert_eq!(fix, "rename the key to `listen`, or remove it");
    // The accepted keys are named once, in the message, not again in the fix.
    let fix = fix_of_first_error("[gateway]\nzzzzzzzz = 1\n");
    assert_eq!(
        fix,
        "remove the key, or rename it to one of those accepted here"
    );
    let fix = fix_of_first_error("[gateway]\nlisten = \"127.0.0.1:8080\"\n");
    assert_eq!(
        fix,
        "add `admin_listen = ...` to this table; it is required"
    );
    let fix = fix_of_first_error("# no [gateway] table\n");
    assert_eq!(
        fix,
        "add a [gateway] table with `listen`, `admin_listen` and `data_dir`"
    );
}

#[test]
#[rustfmt::skip]
fn gateway_values() {
    check("[gateway]\nlisten = \"localhost:80\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n", "2:10: `listen` = \"localhost:80\" is not an IP address and port");
    check("[gateway]\nlisten = \"127.0.0.1:99999\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n", "2:10: `listen` = \"127.0.0.1:99999\" has a port that is not a number from 0 to 65535");
    check("[gateway]\nlisten = \"127.0.0.1\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n", "2:10: `listen` = \"127.0.0.1\" has no port");
    check("[gateway]\nlisten = \"[::1]\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n", "2:10: `listen` = \"[::1]\" has no port");
    check("[gateway]\nlisten = \"[::1]:http\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n", "2:10: `listen` = \"[::1]:http\" has a port that is not a number from 0 to 65535");
    assert_eq!(fix_of_first_error("[gateway]\nlisten = \"127.0.0.1\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n"), "add the port after the address: \"127.0.0.1:8080\", or \"[::1]:8080\" for IPv6");
    check("[gateway]\nlisten = \"127.0.0.1:80\"\nadmin_listen = \"127.0.0.1:80\"\ndata_dir = \"d\"\n", "3:16: `admin_listen` is the same address as `listen` (127.0.0.1:80)");
    check(&format!("{GATEWAY}tls_cert = \"c.pem\"\n"), "5:12: `tls_cert` is set but `tls_key` is not");
    check(&format!("{GATEWAY}tls_key = \"k.pem\"\n"), "5:11: `tls_key` is set but `tls_cert` is not");
    check(&format!("{GATEWAY}client_ca = \"ca.pem\"\n"), "5:13: `client_ca` requires TLS, but `tls_cert` is not set");
    check(&format!("{GATEWAY}client_crl = \"revoked.crl\"\n"), "5:14: `client_crl` lists revoked client certificates, but `client_ca` is not set, so no client certificate is verified");
    check(&format!("{GATEWAY}admin_token_sha256 = \"hunter2\"\n"), "5:22: `admin_token_sha256` must be a SHA-256 digest: 64 hex characters (got 7 characters)");
    // `printf %s "$UNSET" | sha256sum`: a token nobody has to know.
    check(&format!("{GATEWAY}admin_token_sha256 = \"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\"\n"), "5:22: `admin_token_sha256` is the SHA-256 of the empty string, not of a token");
    check(&format!("{GATEWAY}policies = \"missing.cedar\"\n"), "5:12: policies file /etc/postern/missing.cedar does not exist");
    check(&format!("{GATEWAY}events_max_file_bytes = 100\n"), "5:25: `events_max_file_bytes` = 100 is too small; the minimum is 4096");
    check(&format!("{GATEWAY}events_max_files = 0\n"), "5:20: `events_max_files` = 0 is too small; the minimum is 1");
    check(&format!("{GATEWAY}idle_timeout_ms = 0\n"), "5:19: `idle_timeout_ms` is 0; a timeout must be greater than zero");
    assert_eq!(parse_ok(&format!("{GATEWAY}idle_timeout_ms = 60000\n")).gateway.idle_timeout_ms, 60_000);
    // Lower bounds: the value below is an error at its own column; the bound itself is accepted.
    check(&format!("{GATEWAY}audit_checkpoint_interval_ms = 9\n"), "5:32: `audit_checkpoint_interval_ms` must be at least 10");
    assert_eq!(parse_ok(&format!("{GATEWAY}audit_checkpoint_interval_ms = 10\n")).gateway.audit_checkpoint_interval_ms, 10);
    check(&format!("{GATEWAY}audit_timeout_ms = 0\n"), "5:20: `audit_timeout_ms` must be at least 1");
    check(&format!("{GATEWAY}credential_max_age_days = 0\n"), "5:27: `credential_max_age_days` must be at least 1");
    assert_eq!(parse_ok(&format!("{GATEWAY}credential_max_age_days = 1\n")).gateway.credential_max_age_days, 1);
    check(&format!("{GATEWAY}events_max_files = 4000000000\n"), "5:20: `events_max_files` = 4000000000 is too large; the maximum is 1000");
    // An origin is a name, not a URL: `httpd.` is a host name; `ftp://` a scheme.
    check(&format!("{GATEWAY}audit_origin = \"httpd.example.com/audit\"\n"), "ok");
    check(&format!("{GATEWAY}audit_origin = \"ftp://x.example.com\"\n"), "5:16: `audit_origin` must be a non-empty single line without a URL scheme");
    check(&format!("{GATEWAY}max_header_bytes = 512\n"), "5:20: `max_header_bytes` = 512 is out of range 1024..=1048576");
    check(&format!("{GATEWAY}workers = 1000\n"), "5:11: `workers` = 1000 is more than 256");
    check(&format!("{GATEWAY}data_dir = \"x\"\n"), "5:1: duplicate key `data_dir` in table `gateway`");
}

/// No caller may hold the admin token: its token would open the admin API.
#[test]
fn a_caller_with_the_admin_tokens_hash_is_refused() {
    let body = format!(
        "{GATEWAY}admin_token_sha256 = \"{}\"\n[[callers]]\nname = \"checkout\"\ntoken_sha256 = \"<64 hex>\"\n",
        TOKEN.to_uppercase()
    );
    check(
        &body,
        "8:16: caller `checkout` has the admin token's hash (`admin_token_sha256`)",
    );
}

/// A token endpoint with a user name, password or fragment is refused: they are not sent, and
/// a secret would sit in the URL.
#[test]
fn a_token_url_with_credentials_is_refused() {
    let body = integration(
        "credential = { kind = \"oauth2\", token_url = \"https://id:secret@auth.example.com/token\", client_id = \"c\", client_secret = \"s\" }\n",
    );
    let rendered = render(&body);
    assert!(
        rendered.contains("`token_url` holds a user name, password or fragment"),
        "{rendered}"
    );
    let body = integration(
        "credential = { kind = \"oauth2\", token_url = \"https://auth.example.com/token?tenant=a\", client_id = \"c\", client_secret = \"s\" }\n",
    );
    assert_eq!(render(&body), "ok");
}

/// An OAuth2 credential's extra `params` may not set what Postern sends itself, nor carry a
/// secret (by name or by the look of its value, which is not echoed): secrets live in the vault.
#[test]
fn oauth2_params_carry_no_secret_and_nothing_postern_sends() {
    let with = |params: &str| {
        integration(&format!(
            "credential = {{ kind = \"oauth2\", token_url = \"https://auth.example.com/token\", client_id = \"c\", client_secret = \"s\", params = {params} }}\n"
        ))
    };
    assert_eq!(
        render(&with(
            "{ audience = \"https://api.example.com\", resource = \"crm\" }"
        )),
        "ok"
    );
    for (params, expected) in [
        (
            "{ grant_type = \"password\" }",
            "`params` sets `grant_type`, which Postern sends itself",
        ),
        (
            "{ client_secret = \"s2\" }",
            "`params` sets `client_secret`, which Postern sends itself",
        ),
        (
            "{ password = \"hunter2\" }",
            "`params` sets `password`, which carries a secret in the config file",
        ),
        (
            "{ refresh_token = \"r\" }",
            "`params` sets `refresh_token`, which carries a secret in the config file",
        ),
    ] {
        let rendered = render(&with(params));
        assert!(rendered.contains(expected), "{params}: {rendered}");
        assert!(!rendered.contains("hunter2"), "{rendered}");
    }
    // A GUID (an Azure AD `resource`, an Auth0 `audience`) is no key.
    assert_eq!(
        render(&with(
            "{ resource = \"6f1a2b3c-9d8e-4f70-a1b2-c3d4e5f60718\", audience = \"api://0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\" }"
        )),
        "ok"
    );
    let key = "sk_live_q8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS";
    let body = with(&format!("{{ api_token = \"{key}\" }}"));
    let errors = parse_body(&body).expect_err("a secret-looking value");
    let shown = format!("{errors}");
    assert!(
        shown.contains("`params.api_token` reads as a secret value (not shown)"),
        "{shown}"
    );
    assert!(!shown.contains(key), "{shown}");
}

/// A key pasted into an operation's path is refused without being shown: it would be in every
/// message about the template, and in every event and audit entry of its calls.
#[test]
fn a_key_in_an_operation_path_is_refused_unshown() {
    let key = "sk_live_51HqLyjWDarjtT1zdp7dcQ8";
    // Tokens vendors take in the path: Telegram's bot token, Slack's and Discord's webhooks'.
    let telegram = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
    let slack = "XXXXXXXXXXXXXXXXXXXXXXXX";
    let discord = "Xl0aWjq3WfEbNSZvm8Mj_2a7hJkLmNoPqRsTuVwXyZ-0123456789abcdef";
    for (path, secret) in [
        (format!("/v1/x?api_key={key}"), key),
        (format!("/v1/{key}/charges"), key),
        (format!("/bot123456789:{telegram}/sendMessage"), telegram),
        (format!("/bot123456789%3A{telegram}/getMe"), telegram),
        (format!("/services/T000001/B000001/{slack}"), slack),
        (format!("/triggers/T0000000/1234567890/{slack}"), slack),
        (format!("/services/T00000000/B00000000/{slack}"), slack),
        (
            format!("/api/webhooks/123456789012345678/{discord}"),
            discord,
        ),
    ] {
        let body = integration("").replace("/v1/charges/{id}", &path);
        let errors = parse_body(&body).expect_err("a key in a path");
        let shown = format!("{errors}");
        assert!(
            shown.contains("path holds a piece that reads as a secret value (not shown)"),
            "{path}: {shown}"
        );
        assert!(!shown.contains(secret), "{shown}");
    }
    // Their templates pass.
    for path in [
        "/bot{token}/sendMessage",
        "/services/{team}/{channel}/{secret}",
        "/triggers/{team}/{id}/{secret}",
        "/api/webhooks/{id}/{token}",
    ] {
        let body = integration("").replace("/v1/charges/{id}", path);
        assert_eq!(render(&body), "ok", "{path}");
    }
    let body = integration("").replace(
        "https://api.stripe.com",
        &format!("https://api.stripe.com/{key}"),
    );
    let shown = format!("{}", parse_body(&body).expect_err("a key in the upstream"));
    assert!(
        shown.contains("`upstream`'s path holds a piece that reads as a secret value (not shown)"),
        "{shown}"
    );
    assert!(!shown.contains(key), "{shown}");
    // An id that merely looks random may be pinned.
    let body = integration("").replace(
        "/v1/charges/{id}",
        "/2010-04-01/Accounts/AC0a1b2c3d4e5f60718293a4b5c6d7e8f9/Messages.json",
    );
    assert_eq!(render(&body), "ok");
}

#[test]
fn gateway_paths_resolve_against_the_config_directory() {
    let config = parse_ok(&format!(
        "{GATEWAY}tls_cert = \"tls/cert.pem\"\ntls_key = \"/abs/key.pem\"\nclient_ca = \"../ca.pem\"\nadmin_token_sha256 = \"{}\"\n",
        TOKEN.to_uppercase()
    ));
    assert_eq!(
        config.gateway.data_dir,
        PathBuf::from("/etc/postern/postern-data")
    );
    assert_eq!(
        config.gateway.tls_cert,
        Some(PathBuf::from("/etc/postern/tls/cert.pem"))
    );
    assert_eq!(config.gateway.tls_key, Some(PathBuf::from("/abs/key.pem")));
    assert_eq!(
        config.gateway.client_ca,
        Some(PathBuf::from("/etc/postern/../ca.pem"))
    );
    assert_eq!(config.gateway.admin_token_sha256.as_deref(), Some(TOKEN));
}

#[test]
fn relative_config_path_resolves_against_the_current_directory() {
    let text = GATEWAY.to_string();
    let config = parse(&text, Path::new("conf/postern.toml")).expect("valid");
    let expected = std::env::current_dir()
        .unwrap()
        .join("conf")
        .join("postern-data");
    assert_eq!(config.gateway.data_dir, expected);
    assert!(config.gateway.data_dir.is_absolute());
}

#[test]
fn policies_file_that_exists_is_accepted() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("extra.cedar"), "").unwrap();
    let config_path = directory.path().join("postern.toml");
    let text = format!("{GATEWAY}policies = \"extra.cedar\"\n");
    std::fs::write(&config_path, &text).unwrap();
    let config = postern_config::load(&config_path).expect("valid");
    assert_eq!(
        config.gateway.policies,
        Some(directory.path().join("extra.cedar"))
    );
}

/// A file that cannot be read is reported at line 0 (the file as a whole), which the printed
/// form leaves out: `FILE: error: …`, not `FILE:0:0:`.
#[test]
fn load_reports_an_unreadable_file_at_line_zero() {
    let errors = postern_config::load(Path::new("/nonexistent/postern.toml")).unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    assert_eq!((errors.errors[0].line, errors.errors[0].column), (0, 0));
    assert!(errors
        .to_string()
        .starts_with("/nonexistent/postern.toml: error: cannot read config file"));
}

/// [`GATEWAY`] verifying client certificates, which a caller's `spiffe_id` needs.
const MTLS: &str = "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"./postern-data\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"\n";

#[test]
#[rustfmt::skip]
fn callers() {
    check(&format!("[[callers]]\nname = \"a\"\ntoken_sha256 = \"<64 hex>\"\n[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a\"\n{MTLS}"), "5:8: caller `a` is defined twice (first on line 2)");
    check("[[callers]]\nname = \"a\"\n", "2:8: caller `a` has no way to authenticate");
    check("[[callers]]\nname = \"a b\"\ntoken_sha256 = \"<64 hex>\"\n", "2:8: caller name `a b` is not a valid name");
    check("[[callers]]\nname = \"a\"\ntoken_sha256 = \"abc\"\n", "3:16: `token_sha256` must be a SHA-256 digest: 64 hex characters (got 3 characters)");
    check("[[callers]]\nname = \"a\"\ntoken_sha256 = \"<64 hex>\"\n[[callers]]\nname = \"b\"\ntoken_sha256 = \"<64 hex>\"\n", "6:16: caller `b` has the same token_sha256 as caller `a`");
    check("[[callers]]\nname = \"a\"\nspiffe_id = \"https://example.org/a\"\n", "3:13: spiffe_id `https://example.org/a` does not start with \"spiffe://\"");
    check("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe:///a\"\n", "3:13: spiffe_id `spiffe:///a` has no trust domain");
    check("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://Example.org\"\n", "3:13: spiffe_id `spiffe://Example.org` has an invalid trust domain `Example.org`");
    check("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a/\"\n", "3:13: spiffe_id `spiffe://example.org/a/` has an invalid path");
    check(&format!("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a\"\n[[callers]]\nname = \"b\"\nspiffe_id = \"spiffe://example.org/a\"\n{MTLS}"), "6:13: caller `b` has the same spiffe_id as caller `a`");
    // Without client certificates a spiffe_id can never match: said, not left to fail quietly.
    check("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a\"\n", "3:13: caller `a` has a spiffe_id, but `[gateway] client_ca` is not set: no client certificate is verified, so it can never match");
    check(&format!("[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a\"\n{MTLS}"), "ok");

    let config = parse_ok(&format!(
        "[[callers]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nspiffe_id = \"spiffe://example.org\"\n{MTLS}",
        TOKEN.to_uppercase()
    ));
    assert_eq!(config.callers[0].token_sha256.as_deref(), Some(TOKEN));
    assert_eq!(
        config.callers[0].spiffe_id.as_deref(),
        Some("spiffe://example.org")
    );
}

#[test]
#[rustfmt::skip]
fn integration_names_and_fields() {
    check(&integration(""), "ok");
    check(&format!("{}{}", integration(""), integration("")), "8:8: integration `stripe` is defined twice (first on line 2)");
    check(&integration("").replace("\"stripe\"", "\"Stripe\""), "2:8: integration name `Stripe` is not valid");
    check(&integration("").replace("\"stripe\"", "\"-x\""), "2:8: integration name `-x` is not valid");
    check(&integration("").replace("\"Stripe\"", "\" \""), "3:10: `vendor` is empty");
    check(&integration("docs_url = \"not a url\"\n"), "7:12: `docs_url` (9 characters) is not an absolute URL: relative URL without a base; only an http(s) URL is a docs link");
    check(&integration("docs_url = \"ftp://docs.stripe.com\"\n"), "7:12: `docs_url` has scheme `ftp`; only an http(s) URL is a docs link");
    check(&integration("connect_timeout_ms = 0\nrequest_timeout_ms = 0\nidle_timeout_ms = 0\n"), "7:22: `connect_timeout_ms` is 0; a timeout must be greater than zero\n8:22: `request_timeout_ms` is 0; a timeout must be greater than zero\n9:19: `idle_timeout_ms` is 0; a timeout must be greater than zero");
    check(&integration("rate_limit = { requests_per_second = 0, burst = 0 }\n"), "7:38: `requests_per_second` = 0 is too small; the minimum is 1\n7:49: `burst` = 0 is too small; the minimum is 1");
    check(&integration("max_concurrent_calls = 0\nmax_concurrent_calls_per_caller = 0\n"), "7:24: `max_concurrent_calls` = 0 is too small; the minimum is 1\n8:35: `max_concurrent_calls_per_caller` = 0 is too small; the minimum is 1");
    let limited = parse_ok(&integration("max_concurrent_calls = 64\nmax_concurrent_calls_per_caller = 8\n"));
    assert_eq!(limited.integrations[0].max_concurrent_calls, Some(64));
    assert_eq!(limited.integrations[0].max_concurrent_calls_per_caller, Some(8));
    check(&integration("max_header_bytes = 512\n"), "7:20: `max_header_bytes` = 512 is too small; the minimum is 1024");
    check(&integration("max_header_bytes = 16385\n"), "7:20: `max_header_bytes` = 16385 is more than the gateway's (16384), which every request meets first");
    check(&format!("{}{GATEWAY}max_header_bytes = 32768\n", integration("max_header_bytes = 16385\n")), "ok");
    assert_eq!(parse_ok(&integration("max_header_bytes = 4096\n")).integrations[0].max_header_bytes, Some(4096));
    assert_eq!(parse_ok(&integration("")).integrations[0].max_header_bytes, None);
    let stripe = parse_ok(&integration("total_timeout_ms = 0\n"));
    assert_eq!(stripe.integrations[0].total_timeout_ms, 0, "0: no limit");
    assert_eq!(parse_ok(&integration("")).integrations[0].total_timeout_ms, 600_000);
    check(&integration("").replace(
            "operations = [{ id = \"get_charge\", method = \"GET\", path = \"/v1/charges/{id}\" }]", "operations = []",
        ),
        "6:14: integration `stripe` has no operations");

    let config = parse_ok(&integration("purpose = \"charge cards\"\ndocs_url = \"https://docs.stripe.com\"\nconnect_timeout_ms = 1\nmax_request_body_bytes = 0\n"));
    let stripe = config.integration("stripe").unwrap();
    assert_eq!(stripe.purpose.as_deref(), Some("charge cards"));
    assert_eq!(stripe.connect_timeout_ms, 1);
    assert_eq!(stripe.max_request_body_bytes, 0);
}

#[test]
#[rustfmt::skip]
fn upstream_urls() {
    let with_upstream = |url: &str| integration("").replace("https://api.stripe.com", url);
    check(&with_upstream("http://api.stripe.com"), "5:12: `upstream` uses plain http, which sends the credential unencrypted");
    check(&with_upstream("ftp://api.stripe.com"), "5:12: `upstream` has scheme `ftp`; only https (and http) are supported");
    check(&with_upstream("api.stripe.com"), "5:12: `upstream` is not a valid absolute URL: relative URL without a base");
    check(&with_upstream("https://user:secret@api.stripe.com"), "5:12: `upstream` contains a user name or password");
    check(&with_upstream("https://api.stripe.com/?key=1"), "5:12: `upstream` has a query string");
    check(&with_upstream("https://api.stripe.com/#x"), "5:12: `upstream` has a fragment");
    check(&format!("{}allow_plaintext = true\n", with_upstream("http://127.0.0.1:9000")), "ok");

    let upstream_of = |url: &str| {
        parse_ok(&with_upstream(url)).integrations[0]
            .upstream
            .to_string()
    };
    assert_eq!(
        upstream_of("https://api.example.com/v2/"),
        "https://api.example.com/v2"
    );
    assert_eq!(
        upstream_of("https://api.example.com/v2"),
        "https://api.example.com/v2"
    );
    assert_eq!(
        upstream_of("https://api.example.com:8443"),
        "https://api.example.com:8443/"
    );
    // The password is never echoed back.
    let errors = parse_body(&with_upstream("https://user:hunter2@api.stripe.com"))
        .unwrap_err()
        .to_string();
    assert!(!errors.contains("hunter2"), "{errors}");
}

#[test]
#[rustfmt::skip]
fn credentials() {
    let with = |credential: &str| integration(&format!("credential = {credential}\n"));
    check(&with("{ kind = \"oauth\", from_env = \"K\" }"), "7:23: credential kind `oauth` is not known");
    check(&with("{ kind = \"bearer\", from_env = \"\" }"), "7:44: `from_env` is not a valid environment variable name");
    check(&with("{ kind = \"bearer\" }"), "7:14: credential does not say where its secret comes from");
    check(&with("{ kind = \"bearer\", from_env = \"K\", from_file = \"k\" }"), "7:14: credential names more than one of `secret`, `from_env` and `from_file`");
    check(&with("{ kind = \"bearer\", secret = \"K\", from_env = \"k\" }"), "7:14: credential names more than one of `secret`, `from_env` and `from_file`");
    check(&with("{ kind = \"bearer\", secret = \"bad name\" }"), "7:42: `secret` is not a valid vault credential name");
    check(&with("{ kind = \"bearer\", secret = \"stripe-live\" }"), "ok");
    check(&with("{ kind = \"header\", from_env = \"K\" }"), "7:23: credential kind \"header\" needs `name`");
    check(&with("{ kind = \"query\", from_env = \"K\" }"), "7:23: credential kind \"query\" needs `param`");
    check(&with("{ kind = \"bearer\", from_env = \"K\", name = \"X-Key\" }"), "7:56: `name` is only used with kind = \"header\"");
    check(&with("{ kind = \"header\", from_env = \"K\", name = \"X Key\" }"), "7:56: `name` (5 characters, holding ' ') is not a valid HTTP header name");
    check(&with("{ kind = \"header\", from_env = \"K\", name = \"Host\" }"), "7:56: header `Host` is managed by the gateway and cannot carry a credential");
    check(&with("{ kind = \"query\", from_env = \"K\", param = \"a&b\" }"), "7:56: `param` (3 characters, holding '&') is not a valid query parameter name");
    check(&with("{ kind = \"bearer\", from_env = \"K\", username = \"u\" }"), "7:60: `username` is only used with kind = \"basic\"");
    check(&with("{ kind = \"basic\", from_env = \"K\", username = \"a:b\" }"), "7:59: `username` is empty or contains ':'");

    let credential_of = |credential: &str| {
        parse_ok(&with(credential)).integrations[0]
            .credential
            .clone()
            .unwrap()
    };
    let header = credential_of("{ kind = \"header\", from_env = \"K\", name = \"X-Api-Key\" }");
    assert_eq!(
        (header.kind, header.header_name.as_deref()),
        (CredentialKind::Header, Some("X-Api-Key"))
    );
    let query =
        credential_of("{ kind = \"query\", from_file = \"secrets/key\", param = \"api_key\" }");
    assert_eq!(
        (query.kind, query.query_param.as_deref()),
        (CredentialKind::Query, Some("api_key"))
    );
    assert_eq!(
        query.source,
        SecretSource::File(PathBuf::from("/etc/postern/secrets/key"))
    );
    let basic = credential_of("{ kind = \"basic\", from_env = \"K\", username = \"AC123\" }");
    assert_eq!(
        (basic.kind, basic.username.as_deref()),
        (CredentialKind::Basic, Some("AC123"))
    );
}

#[test]
#[rustfmt::skip]
fn operations_and_path_templates() {
    let with_operations = |operations: &str| {
        integration("").replace(
            "[{ id = \"get_charge\", method = \"GET\", path = \"/v1/charges/{id}\" }]",
            operations,
        )
    };
    check(&with_operations("[{ id = \"a\", method = \"get\", path = \"/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json\" }]"), "ok");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"v1\" }]"), "6:50: path `v1` does not start with '/'");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1/{a}{b}\" }]"), "6:50: path `/v1/{a}{b}` has two placeholders in one segment");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1/{a\" }]"), "6:50: path `/v1/{a` has a '{' without a matching '}'");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1/{}\" }]"), "6:50: path `/v1/{}` has an invalid placeholder `{}`");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1?x=1\" }]"), "6:50: path `/v1?x=1` contains '?'");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1#x\" }]"), "6:50: path `/v1#x` contains '#'");
    check(&with_operations("[{ id = \"a\", method = \"FETCH\", path = \"/v1\" }]"), "6:36: method `FETCH` is not supported");
    check(&with_operations("[{ id = \"*\", method = \"GET\", path = \"/v1\" }]"), "6:22: operation id `*` is not valid");
    check(&with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1\", websocket = true }]"), "ok");
    check(&with_operations("[{ id = \"a\", method = \"POST\", path = \"/v1\", websocket = true }]"), "6:70: operation `a` is POST with websocket = true, but a WebSocket handshake is a GET");
    check(&with_operations("[{ id = \"a\", method = \"POST\", path = \"/v1\", websocket = false }]"), "ok");
    // A WebSocket session's messages are not scanned: not in an integration that scans.
    check(&format!("{}data_classes = [\"pii.email\"]\n", with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1\", websocket = true }]")), "6:69: operation `a` has websocket = true in integration `stripe`, which has data_classes: WebSocket messages are not scanned, so the session's data would pass unchecked");
    check(&format!("{}data_classes = [\"pii.email\"]\n", with_operations("[{ id = \"a\", method = \"GET\", path = \"/v1\", websocket = false }]")), "ok");
    check(&with_operations("[\n  { id = \"a\", method = \"GET\", path = \"/v1\" },\n  { id = \"a\", method = \"POST\", path = \"/v1\" },\n]"), "8:10: operation id `a` is used twice in integration `stripe` (first on line 7)");
    check(&with_operations("[\n  { id = \"a\", method = \"GET\", path = \"/v1/{x}\" },\n  { id = \"b\", method = \"get\", path = \"/v1/{y}\" },\n]"), "8:38: operation `b` (GET /v1/{y}) matches the same requests as operation `a` on line 7");
    check(&with_operations("[\n  { id = \"a\", method = \"GET\", path = \"/v1\" },\n  { id = \"b\", method = \"POST\", path = \"/v1\" },\n]"), "ok");
    assert_eq!(
        parse_ok(&with_operations(
            "[{ id = \"a\", method = \"patch\", path = \"/v1\" }]"
        ))
        .integrations[0]
            .operations[0]
            .method,
        "PATCH"
    );
}

#[test]
#[rustfmt::skip]
fn allow_private_networks() {
    let config = parse_ok(&integration(
        "allow_private_networks = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n",
    ));
    let networks: Vec<String> = config.integrations[0]
        .allow_private_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(networks, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    check(&integration("allow_private_networks = [\"10.0.0.0/33\", \"localhost\"]\n"), "7:27: \"10.0.0.0/33\" is not an IP network or address\n7:42: \"localhost\" is not an IP network or address");
    // Host bits set: refused, not widened to the whole network.
    check(&integration("allow_private_networks = [\"10.0.0.1/8\", \"fd00::1/8\"]\n"), "7:27: \"10.0.0.1/8\" has host bits set: it names 10.0.0.0/8, not one address\n7:41: \"fd00::1/8\" has host bits set: it names fd00::/8, not one address");
    assert_eq!(
        fix_of_first_error(&integration("allow_private_networks = [\"10.0.0.1/8\"]\n")),
        "write \"10.0.0.0/8\" for the whole network or \"10.0.0.1/32\" for the one address"
    );
    let ca = parse_ok(&integration("ca_file = \"ca/internal.pem\"\n")).integrations[0]
        .ca_file
        .clone();
    assert_eq!(ca, Some(PathBuf::from("/etc/postern/ca/internal.pem")));
}

#[test]
#[rustfmt::skip]
fn grants() {
    let callers = "[[callers]]\nname = \"checkout\"\ntoken_sha256 = \"<64 hex>\"\n";
    let with_grant = |grant: &str| format!("{callers}{}[[grants]]\n{grant}", integration(""));
    check(&with_grant("caller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"*\"]\n"), "ok");
    check(&with_grant("caller = \"billing\"\nintegration = \"stripe\"\noperations = [\"*\"]\n"), "11:10: grant names caller `billing`, which is not defined");
    check(&with_grant("caller = \"checkout\"\nintegration = \"twilio\"\noperations = [\"send\"]\n"), "12:15: grant names integration `twilio`, which is not defined");
    check(&with_grant("caller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"get_charge\", \"refund\"]\n"), "13:29: integration `stripe` has no operation `refund`");
    check(&with_grant("caller = \"checkout\"\nintegration = \"stripe\"\noperations = []\n"), "13:14: grant allows no operations");
    check(&with_grant("caller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"*\", \"get_charge\"]\n"), "13:14: grant lists \"*\" together with other operations");

    let fix = fix_of_first_error(&with_grant(
        "caller = \"billing\"\nintegration = \"stripe\"\noperations = [\"*\"]\n",
    ));
    assert_eq!(fix, "use one of the defined callers: checkout");
    // A caller defined twice (an error of its own) is named once in the fix.
    let twice = with_grant("caller = \"billing\"\nintegration = \"stripe\"\noperations = [\"*\"]\n")
        .replacen(callers, &format!("{callers}{callers}"), 1);
    let errors = parse_body(&twice).expect_err("expected errors").errors;
    let grant = errors.iter().find(|error| error.message.contains("billing")).expect("the grant's error");
    assert_eq!(grant.fix, "use one of the defined callers: checkout");
    let fix = fix_of_first_error(&with_grant(
        "caller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"refund\"]\n",
    ));
    assert_eq!(
        fix,
        "use one of its operations: get_charge, or \"*\" for all"
    );
    // An id defined twice (an error of its own) is offered once.
    let twice = format!(
        "{callers}{}[[grants]]\ncaller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"refund\"]\n",
        integration("").replace("}]", "}, { id = \"get_charge\", method = \"POST\", path = \"/v1/charges\" }]")
    );
    let errors = parse_body(&twice).expect_err("expected errors").errors;
    let refund = errors.iter().find(|e| e.message.contains("`refund`")).expect("the grant's error");
    assert_eq!(refund.fix, "use one of its operations: get_charge, or \"*\" for all");
    let fix = fix_of_first_error("[[grants]]\ncaller = \"a\"\nintegration = \"b\"\noperations = [\"*\"]\n");
    assert_eq!(
        fix,
        "no callers are defined; add a [[callers]] table with this name"
    );

    let config = parse_ok(&with_grant(
        "caller = \"checkout\"\nintegration = \"stripe\"\noperations = [\"*\"]\n",
    ));
    assert!(config.grants[0].allows_operation("anything"));
}

#[test]
#[rustfmt::skip]
fn all_semantic_errors_are_reported_in_file_order() {
    let body = "[[grants]]\ncaller = \"ghost\"\nintegration = \"none\"\noperations = [\"*\"]\n[[callers]]\nname = \"a\"\n";
    check(body, "2:10: grant names caller `ghost`, which is not defined\n3:15: grant names integration `none`, which is not defined\n6:8: caller `a` has no way to authenticate");
}

#[test]
fn display_prints_path_location_message_and_fix() {
    let text = format!("{GATEWAY}events_max_files = 0\n");
    let errors = parse(&text, Path::new("postern.toml")).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "postern.toml:5:20: error: `events_max_files` = 0 is too small; the minimum is 1\n  fix: set `events_max_files` to 1 or more"
    );
    let _: &dyn std::error::Error = &errors;
}

#[test]
#[rustfmt::skip]
fn forward_proxy_section_and_host_keys() {
    // Defaults: on, enforce, port 443, nothing allowed.
    let config = parse_ok(&integration(""));
    assert!(config.proxy.enabled);
    assert_eq!(config.proxy.mode, postern_config::ProxyMode::Enforce);
    assert_eq!(config.proxy.allowed_ports, [443]);
    assert_eq!(config.proxy.max_tunnels_per_caller, 1024);
    assert!(config.integrations[0].hosts.is_empty());
    let config = parse_ok(&format!("{}\n[proxy]\nmax_tunnels_per_caller = 8\n", integration("")));
    assert_eq!(config.proxy.max_tunnels_per_caller, 8);
    check(&format!("{}\n[proxy]\nmax_tunnels_per_caller = 0\n", integration("")), "9:26: `max_tunnels_per_caller` is 0, so no caller could open a tunnel");

    let config = parse_ok(&format!(
        "{}\n[proxy]\nmode = \"report\"\nallow_hosts = [\"*.Example.com\"]\ndeny_hosts = [\"pastebin.com\"]\nallowed_ports = [443, 8443]\nallow_private_networks = [\"10.1.0.0/16\"]\n",
        integration("hosts = [\"api.stripe.com\"]\nintercept = false\n")
    ));
    assert_eq!(config.proxy.mode, postern_config::ProxyMode::Report);
    assert_eq!(config.proxy.allow_hosts, ["*.example.com"]);
    assert_eq!(config.proxy.allowed_ports, [443, 8443]);
    assert_eq!(config.integrations[0].hosts, ["api.stripe.com"]);
    assert!(!config.integrations[0].intercept);
    // The proxy's lists take IPv6 addresses, kept in the form the proxy matches; an
    // integration's `hosts` does not.
    let config = parse_ok(&format!(
        "{}\n[proxy]\ndeny_hosts = [\"[::1]\", \"0:0:0:0:0:0:0:1\", \"::FFFF:127.0.0.1\", \"x.example\"]\n",
        integration("")
    ));
    assert_eq!(config.proxy.deny_hosts, ["::1", "::1", "127.0.0.1", "x.example"]);
    // Its addresses, and the networks it may hold, are also refused where a name resolves.
    let networks = |config: &postern_config::Config| -> Vec<String> {
        config.proxy.deny_networks.iter().map(ToString::to_string).collect()
    };
    assert_eq!(networks(&config), ["::1/128", "::1/128", "127.0.0.1/32"]);
    let config = parse_ok(&format!(
        "{}\n[proxy]\ndeny_hosts = [\"203.0.113.0/24\", \"2001:db8::/32\", \"pastebin.com\", \"::ffff:198.51.100.0/120\"]\n",
        integration("")
    ));
    assert_eq!(config.proxy.deny_hosts, ["pastebin.com"]);
    assert_eq!(
        networks(&config),
        ["203.0.113.0/24", "2001:db8::/32", "198.51.100.0/24"]
    );
    check(
        &format!("{}\n[proxy]\ndeny_hosts = [\"203.0.113.7/24\", \"x/y\"]\n", integration("")),
        "9:15: \"203.0.113.7/24\" has host bits set: it names 203.0.113.0/24, not one address\n9:33: \"x/y\" is not an IP network or address",
    );
    // An IPv4 address in a shorthand form would never match: a request for it is compared as
    // the dotted quad it dials as.
    for shorthand in ["2130706433", "010.0.0.1", "0x7f.1", "127.1", "*.0.1"] {
        let text = render(&format!("{}\n[proxy]\ndeny_hosts = [\"{shorthand}\"]\n", integration("")));
        assert!(text.contains("is an IPv4 address in a shorthand form"), "{shorthand}: {text}");
    }
    assert!(render(&integration("hosts = [\"2130706433\"]\n")).contains("shorthand form"));
    let quad = parse_ok(&format!("{}\n[proxy]\ndeny_hosts = [\"127.0.0.1\"]\n", integration("")));
    assert_eq!(quad.proxy.deny_hosts, ["127.0.0.1"]);
    // Only `deny_hosts` takes networks.
    assert!(render(&format!("{}\n[proxy]\nallow_hosts = [\"203.0.113.0/24\"]\n", integration(""))).contains("is not a host pattern"));
    assert!(render(&integration("hosts = [\"::1\"]\n")).contains("is not a host pattern"));
    // intercept defaults to true when hosts are listed.
    assert!(parse_ok(&integration("hosts = [\"api.stripe.com\"]\n")).integrations[0].intercept);

    check(
        &format!("{}\n[proxy]\nmode = \"strict\"\nallow_hosts = [\"*.*.example.com\", \"https://x.com\", \"*.com\"]\nallowed_ports = [0, 70000]\n", integration("")),
        "9:8: proxy mode \"strict\" is not known\n10:16: `allow_hosts` entry \"*.*.example.com\" is not a host pattern: only one leading `*.` wildcard label is allowed\n10:35: `allow_hosts` entry \"https://x.com\" is not a host pattern: it contains a scheme, port or path\n10:52: `allow_hosts` entry \"*.com\" is not a host pattern: a wildcard must cover a name with at least two labels, such as *.example.com\n11:18: port 0 is not a TCP port\n11:21: port 70000 is not a TCP port",
    );
    check(&integration("intercept = true\n"), "7:13: `intercept` is set but the integration lists no `hosts`");
    let twice = format!("{}\n{}", integration("hosts = [\"api.stripe.com\"]\n"), integration("hosts = [\"API.stripe.com\"]\n").replace("name = \"stripe\"", "name = \"stripe2\""));
    assert!(render(&twice).contains("host `api.stripe.com` is already claimed by integration `stripe`"), "{}", render(&twice));
    check(&format!("{}\n[[callers]]\nname = \"ci\"\ntoken_sha256 = \"<64 hex>\"\nproxy_mode = \"open\"\nallow_hosts = [\"api.github.com\"]\n", integration("")), "ok");
    let config = parse_ok(&format!("{}\n[[callers]]\nname = \"ci\"\ntoken_sha256 = \"<64 hex>\"\nproxy_mode = \"open\"\nallow_hosts = [\"api.github.com\"]\n", integration("")));
    let ci = config.caller("ci").unwrap();
    assert_eq!(ci.proxy_mode, Some(postern_config::ProxyMode::Open));
    assert_eq!(ci.allow_hosts, ["api.github.com"]);
}

#[test]
#[rustfmt::skip]
fn intercept_ca_names_constrain_the_intercepted_hosts() {
    // Unset: no constraint, any intercepted host.
    let config = parse_ok(&integration("hosts = [\"api.stripe.com\"]\n"));
    assert!(config.proxy.intercept_ca_names.is_empty());
    // A name covers itself and every name below it; names are kept lowercased and sorted.
    let config = parse_ok(&format!(
        "{}\n[proxy]\nintercept_ca_names = [\"Stripe.com\", \"example.org\"]\n",
        integration("hosts = [\"api.stripe.com\", \"*.files.stripe.com\", \"stripe.com\"]\n")
    ));
    assert_eq!(config.proxy.intercept_ca_names, ["example.org", "stripe.com"]);
    // A host outside the names, a suffix that is not a label boundary, an address: refused
    // where the host is written. Not intercepted: not the CA's business.
    check(
        &format!("{}\n[proxy]\nintercept_ca_names = [\"stripe.com\"]\n",
            integration("hosts = [\"api.openai.com\", \"notstripe.com\", \"203.0.113.7\"]\n")),
        "7:10: integration `stripe` intercepts api.openai.com, which is outside `[proxy] intercept_ca_names` (stripe.com): clients would refuse its certificate\n\
         7:28: integration `stripe` intercepts notstripe.com, which is outside `[proxy] intercept_ca_names` (stripe.com): clients would refuse its certificate\n\
         7:45: integration `stripe` intercepts the address 203.0.113.7, and a CA constrained by `[proxy] intercept_ca_names` vouches for names only",
    );
    check(
        &format!("{}\n[proxy]\nintercept_ca_names = [\"stripe.com\"]\n",
            integration("hosts = [\"api.openai.com\"]\nintercept = false\n")),
        "ok",
    );
    // A list with a refused entry is not held against the hosts: only its own error shows.
    check(
        &format!("{}\n[proxy]\nintercept_ca_names = [\"openai.com\", \"*.stripe.com\"]\n",
            integration("hosts = [\"api.stripe.com\"]\n")),
        "10:37: `intercept_ca_names` entry \"*.stripe.com\" is not a DNS name: a name already covers every name below it, so it takes no wildcard",
    );
    // The names themselves: DNS names, once each.
    check(
        &format!("{}\n[proxy]\nintercept_ca_names = [\"*.stripe.com\", \"203.0.113.7\", \"https://x.com\", \"a.com\", \"A.com\"]\n", integration("")),
        "9:23: `intercept_ca_names` entry \"*.stripe.com\" is not a DNS name: a name already covers every name below it, so it takes no wildcard\n\
         9:39: `intercept_ca_names` entry \"203.0.113.7\" is not a DNS name: it is an address; the CA is constrained to names and vouches for no address\n\
         9:54: `intercept_ca_names` entry \"https://x.com\" is not a DNS name: it contains a scheme, port or path\n\
         9:80: `intercept_ca_names` lists \"a.com\" twice",
    );
}

/// serde's type errors are said in the config's words (a table, an array, a whole number),
/// never a Rust type's name, each with a fix for its case.
#[test]
#[rustfmt::skip]
fn type_errors_name_what_was_expected_and_how_to_write_it() {
    let fixes = |text: &str| {
        let errors = parse(text, Path::new("postern.toml")).unwrap_err();
        errors.errors.iter().map(|d| format!("{}:{}: {} | {}", d.line, d.column, d.message, d.fix)).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(
        fixes(&GATEWAY.replace("[gateway]", "[[gateway]]")),
        "1:1: `gateway` is one table, and `[[gateway]]` makes a list of tables | write the header as `[gateway]`, once"
    );
    assert_eq!(
        fixes(&format!("{GATEWAY}\n[callers]\nname = \"x\"\n")),
        "6:1: `callers` is a list of tables, and `[callers]` makes a single table | write `[[callers]]` before each entry"
    );
    assert_eq!(
        fixes(&format!("{}credential = \"KEY\"\n\n{GATEWAY}", integration(""))),
        "7:14: expected a table, found a string (3 characters) | write a table here: `key = { name = value, ... }` inline, or a `[section]` of its own (see docs/CONFIG.md for this key)"
    );
    assert_eq!(
        fixes(&format!("{}rate_limit = {{ requests_per_second = 5, burst = \"100\" }}\n\n{GATEWAY}", integration(""))),
        "7:49: expected a whole number from 0 to 4294967295, found a string (3 characters) | write the number without quotes"
    );
    assert_eq!(
        fixes(&format!("{GATEWAY}events_max_files = -1\n")),
        "5:20: the number -1 is out of range: expected a whole number from 0 to 4294967295 | write a whole number from 0 to 4294967295"
    );
    assert_eq!(
        fixes(&format!("{GATEWAY}\n[proxy]\nenabled = \"yes\"\n")),
        "7:11: expected a boolean, found a string (3 characters) | write `true` or `false`, without quotes"
    );
    // An inline value that is an array of arrays is no table header.
    assert_eq!(
        fixes(&format!("{GATEWAY}\n[proxy]\nallowed_ports = [[443]]\n")),
        "7:18: expected a whole number, found an array | write a whole number"
    );
    for text in [
        fixes(&GATEWAY.replace("[gateway]", "[[gateway]]")),
        fixes("gateway = \"x\"\n"),
        fixes(&format!("{GATEWAY}\n[callers]\nname = \"x\"\n")),
    ] {
        assert!(!text.contains("Raw") && !text.contains("map") && !text.contains("sequence"), "{text}");
    }
}

/// A value of the wrong type may be a secret typed where a table belongs: the diagnostic
/// (`check`, `check --json`, serve start, reload log) never carries its text, only its kind and
/// length, and still names the place, what was expected and a fix.
#[test]
fn type_errors_never_echo_the_value_written() {
    let text = format!(
        "{}credential = \"CANARY_X_123\"\n\n{GATEWAY}",
        integration("")
    );
    let errors = parse(&text, Path::new("postern.toml")).unwrap_err();
    let rendered = errors.to_string();
    assert!(!rendered.contains("CANARY_X_123"), "{rendered}");
    assert!(
        !format!("{errors:?}").contains("CANARY_X_123"),
        "{errors:?}"
    );
    assert_eq!(errors.errors.len(), 1, "{rendered}");
    let error = &errors.errors[0];
    // What `check --json` prints: line, column, message and fix of each diagnostic.
    for field in [&error.message, &error.fix] {
        assert!(!field.contains("CANARY_X_123"), "{field}");
    }
    assert_eq!((error.line, error.column), (7, 14));
    assert_eq!(
        error.message,
        "expected a table, found a string (12 characters)"
    );
    assert!(error.fix.starts_with("write a table here"), "{}", error.fix);
    assert!(
        rendered.starts_with("postern.toml:7:14: error: expected a table, found a string (12 characters)\n  fix: write a table here"),
        "{rendered}"
    );

    // The length counts the value's characters, escapes and all; no part of the text shows.
    let text = format!(
        "{}credential = \"CANARY\\\"\\u00e9\\n\\u0001\"\n\n{GATEWAY}",
        integration("")
    );
    let error = &parse(&text, Path::new("postern.toml")).unwrap_err().errors[0];
    assert_eq!(
        error.message,
        "expected a table, found a string (10 characters)"
    );

    // Numbers and booleans in a type error are named by kind only (the place points at them);
    // a number is echoed only when out of range for a key that takes a number.
    let cases = [
        (
            format!("[[callers]]\nname = \"a\"\ntoken_sha256 = 424242424242\n\n{GATEWAY}"),
            "expected a string, found a whole number",
        ),
        (
            format!("{}credential = 4242.4242\n\n{GATEWAY}", integration("")),
            "expected a table, found a number",
        ),
        (
            format!("{}credential = true\n\n{GATEWAY}", integration("")),
            "expected a table, found a boolean",
        ),
    ];
    for (text, message) in cases {
        let errors = parse(&text, Path::new("postern.toml")).unwrap_err();
        let rendered = errors.to_string();
        assert!(
            !rendered.contains("4242") && !rendered.contains("true"),
            "{rendered}"
        );
        assert_eq!(errors.errors[0].message, message, "{rendered}");
    }
}

/// A header name, a query parameter name or a URL may hold the credential itself (`name =
/// "Authorization: Bearer sk_live_…"`, `param = "api_key=sk_…"`, a token in a URL's query or
/// user part): an error about one says what is wrong (its length, the first character not
/// allowed, the URL's scheme) and never echoes it. Names that are names by design (callers',
/// integrations', operations') are still echoed.
#[test]
fn errors_about_values_that_may_hold_a_secret_never_echo_it() {
    let with = |extra: &str| integration(extra);
    let cases = [
        (
            with("credential = { kind = \"header\", from_env = \"K\", name = \"Authorization: Bearer sk_live_CANARY\" }\n"),
            "`name` (36 characters, holding ':') is not a valid HTTP header name",
            Some("write the HTTP header name alone, without ':' and a value: the value is the credential"),
        ),
        (
            with("credential = { kind = \"query\", from_env = \"K\", param = \"api_key=sk_CANARY\" }\n"),
            "`param` (17 characters, holding '=') is not a valid query parameter name",
            Some("write the query parameter name alone, without '=' and a value"),
        ),
        (
            with("credential = { kind = \"header\", from_env = \"K\", name = \"\" }\n"),
            "`name` is empty: give the HTTP header name",
            None,
        ),
        (
            with("docs_url = \"ftp://user:CANARY@docs.example.com/?token=CANARY\"\n"),
            "`docs_url` has scheme `ftp`; only an http(s) URL is a docs link",
            None,
        ),
        (
            with("docs_url = \"docs.example.com/?token=CANARY\"\n"),
            "`docs_url` (30 characters) is not an absolute URL: relative URL without a base; only an http(s) URL is a docs link",
            None,
        ),
        (
            with("hosts = [\"https://user:CANARY@api.example.com/v1?key=CANARY\"]\n"),
            "`hosts` entry \"https://…@api.example.com/…?…\" is not a host pattern: it contains a scheme, port or path",
            None,
        ),
        // A webhook URL's path is its secret; a secret pasted alone is no host.
        (
            with("hosts = [\"hooks.slack.com/services/T0/B0/CANARY\"]\n"),
            "`hosts` entry \"hooks.slack.com/…\" is not a host pattern: it contains a scheme, port or path",
            None,
        ),
        // A secret pasted where its name belongs (the runtime repeats the name when the
        // credential is missing: `check`, the logs, `/readyz`).
        (
            with("credential = { kind = \"oauth2\", token_url = \"https://auth.example.com/token\", client_id = \"c\", client_secret = \"whsec_CANARYq8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pSx\" }\n"),
            "`client_secret` reads as a secret value, not the name of a vault credential",
            Some("store the value with `postern creds set NAME`"),
        ),
        (
            with("credential = { kind = \"bearer\", secret = \"sk_live_51CANARYq8TzL0vNw3YbR5kXe2JmC7uHa9DgF1pS\" }\n"),
            "`secret` reads as a secret value, not the name of a vault credential",
            None,
        ),
        (
            with("credential = { kind = \"bearer\", from_env = \"AKIACANARY2345672345\" }\n"),
            "`from_env` reads as a secret value, not the name of a variable",
            Some("put the value in an environment variable"),
        ),
    ];
    for (body, message, fix) in cases {
        let errors = parse_body(&body).expect_err("refused");
        let rendered = format!("{errors}\n{errors:?}");
        assert!(!rendered.to_lowercase().contains("canary"), "{rendered}");
        assert_eq!(errors.errors.len(), 1, "{rendered}");
        assert_eq!(errors.errors[0].message, message, "{rendered}");
        if let Some(fix) = fix {
            assert!(
                errors.errors[0].fix.starts_with(fix),
                "{}",
                errors.errors[0].fix
            );
        }
    }
    // Names by design are echoed: they are how the error says which one.
    assert!(render(&integration("").replace("\"stripe\"", "\"Stripe\""))
        .contains("integration name `Stripe`"));
}
