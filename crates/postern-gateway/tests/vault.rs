//! Credentials from the vault: injection, rotation under load, rollback, revocation, changes
//! made by another process, caller token revocation.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::*;

fn integration(vendor: &TestVendor) -> String {
    format!(
        r#"
[[integrations]]
name = "stripe"
vendor = "Stripe"
owner = "payments@example.com"
upstream = "https://127.0.0.1:{port}"
ca_file = "{{ca}}"
allow_private_networks = ["127.0.0.1/32"]
credential = {{ kind = "bearer", secret = "stripe-live" }}
operations = [ {{ id = "get_charge", method = "GET", path = "/v1/charges/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "stripe"
operations = ["*"]
"#,
        port = vendor.addr.port()
    )
}

async fn admin_post(gw: &TestGateway, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = client()
        .post(format!("{}{path}", gw.admin))
        .bearer_auth(&gw.admin_token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn call(gw: &TestGateway, marker: &str) -> (u16, serde_json::Value) {
    let response = client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(&gw.token)
        .header("x-marker", marker)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_credential_set_rotate_under_load_rollback_revoke() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;

    // Not in the vault yet: fail closed.
    let (status, body) = call(&gw, "before").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "credential_unavailable");
    assert!(vendor.seen().is_empty());

    let (status, answer) =
        admin_post(&gw, "/v1/credentials/stripe-live", "sk_live_first_value_A1").await;
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.to_string().contains("sk_live_first_value_A1"));
    assert_eq!(call(&gw, "after-set").await.0, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_first_value_A1"
    );

    // Rotation under load: calls keep running; none fails; every call that starts after the
    // rotation answer carries the new value.
    let rotated = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (base, token) = (gw.base.clone(), gw.token.clone());
        let (rotated, stop) = (rotated.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) && statuses.len() < 2000 {
                let marker = if rotated.load(Ordering::SeqCst) {
                    "after"
                } else {
                    "during"
                };
                let response = client
                    .get(format!("{base}/stripe/v1/charges/ch_1"))
                    .bearer_auth(&token)
                    .header("x-marker", marker)
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (status, answer) = admin_post(
        &gw,
        "/v1/credentials/stripe-live/rotate?rollback_window_seconds=600",
        "sk_live_second_value_B2\n",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    rotated.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a call failed during rotation: {statuses:?}"
        );
    }
    assert!(total > 20, "the load ran ({total} calls)");
    let seen = vendor.seen();
    let after: Vec<_> = seen
        .iter()
        .filter(|s| s.header("x-marker").as_deref() == Some("after"))
        .collect();
    assert!(!after.is_empty());
    assert!(after
        .iter()
        .all(|s| s.header("authorization").as_deref() == Some("Bearer sk_live_second_value_B2")));
    assert!(seen
        .iter()
        .all(|s| s.header("authorization").as_deref() != Some("Bearer sk_live_second_value_B2\n")));

    // A rollback window that is not 0 ..= a year is refused, and rotates nothing (the history
    // below has one rotation).
    for window in ["-1", "31536001", "9223372036854775807", "soon"] {
        let (status, body) = admin_post(
            &gw,
            &format!("/v1/credentials/stripe-live/rotate?rollback_window_seconds={window}"),
            "sk_live_third_value_C3\n",
        )
        .await;
        assert_eq!(status, 400, "{window}: {body}");
        assert_eq!(body["error"]["code"], "invalid_rollback_window");
    }

    // A kind that is not a short label (percent-encoded text, a long run) is refused and
    // stores nothing.
    let long = "k".repeat(65);
    for kind in ["a%20b", long.as_str(), ""] {
        let (status, body) = admin_post(
            &gw,
            &format!("/v1/credentials/other-key?kind={kind}"),
            "sk_live_other_value_D4\n",
        )
        .await;
        assert_eq!(status, 400, "{kind}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("credential kind"),
            "{body}"
        );
    }

    // Rollback restores the first value.
    let (status, _) = admin_post(&gw, "/v1/credentials/stripe-live/rollback", "").await;
    assert_eq!(status, 200);
    call(&gw, "rolled-back").await;
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_first_value_A1"
    );

    // HEAD reads, never changes: a HEAD to an action is not the action. A change takes POST
    // alone (405 names it), a read GET and HEAD.
    let head = client()
        .head(format!("{}/v1/credentials/stripe-live/revoke", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 405);
    assert_eq!(head.headers()["allow"], "POST");
    for (method, route, allow) in [
        (reqwest::Method::GET, "/v1/credentials/stripe-live", "POST"),
        (
            reqwest::Method::GET,
            "/v1/credentials/stripe-live/rotate",
            "POST",
        ),
        (
            reqwest::Method::POST,
            "/v1/credentials/stripe-live/history",
            "GET, HEAD",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/credentials/stripe-live/history",
            "GET, HEAD",
        ),
        (reqwest::Method::POST, "/v1/credentials", "GET, HEAD"),
    ] {
        let answer = client()
            .request(method.clone(), format!("{}{route}", gw.admin))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{method} {route}");
        assert_eq!(answer.headers()["allow"], allow, "{method} {route}");
    }
    let (status, _) = call(&gw, "after-head").await;
    assert_eq!(status, 200, "a HEAD revoked the credential");

    // A value the integration cannot inject (a line break inside a header value) is refused
    // before anything is stored: calls go on with the value in use.
    let (status, body) = admin_post(
        &gw,
        "/v1/credentials/stripe-live/rotate?rollback_window_seconds=600",
        "sk_live_bad\r\nX-Evil: 1\n",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "credential_unusable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nothing was stored"), "{message}");
    assert!(!message.contains("X-Evil"), "{message}");
    let (status, _) = call(&gw, "after-unusable").await;
    assert_eq!(status, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_first_value_A1"
    );

    // Revocation: injection stops at once.
    let before = vendor.seen().len();
    let (status, _) = admin_post(&gw, "/v1/credentials/stripe-live/revoke", "").await;
    assert_eq!(status, 200);
    let (status, body) = call(&gw, "revoked").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "credential_revoked");
    assert_eq!(vendor.seen().len(), before);

    // Listing and history: metadata only.
    let list: serde_json::Value = client()
        .get(format!("{}/v1/credentials", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["credentials"][0]["name"], "stripe-live");
    assert_eq!(list["credentials"][0]["state"], "revoked");
    let history: serde_json::Value = client()
        .get(format!("{}/v1/credentials/stripe-live/history", gw.admin))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    // The refused rotation left nothing in the history.
    assert_eq!(actions, ["set", "rotate", "rollback", "revoke"]);
    let text = format!("{list}{history}");
    assert!(!text.contains("sk_live_"));
    // The credential endpoints need the admin token.
    let denied = client()
        .post(format!("{}/v1/credentials/x", gw.admin))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    gw.stop().await;
}

/// A credential change applies the running config's compiled Cedar policies and vendor
/// clients, not the files as they now are on disk (which wait for a reload): a policies file or
/// `ca_file` left half-done there does not block the change, and a valid policy written there
/// does not slip in with it.
#[tokio::test]
async fn a_credential_change_applies_with_the_compiled_policies() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("extra.cedar");
    std::fs::write(
        &policies,
        "@id(\"no-large-bodies\")\nforbid(principal, action, resource) when { context.request_bytes > 1000000 };\n",
    )
    .unwrap();
    let gateway_extra = format!("policies = \"{}\"", policies.display());
    let gw = TestGateway::start_with_gateway(
        &integration(&vendor),
        vendor.ca_pem.as_deref(),
        &gateway_extra,
    )
    .await;
    let (status, answer) = admin_post(&gw, "/v1/credentials/stripe-live", "sk_live_one_A1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(call(&gw, "one").await.0, 200);
    // Both files broken on disk, then a rotation: it answers 200 and applies at once.
    let ca_file = gw.vendor_ca_path();
    std::fs::write(&ca_file, "being rewritten").unwrap();
    std::fs::write(
        &policies,
        "forbid(principal, action, resource) when { context.hourr };",
    )
    .unwrap();
    let (status, answer) =
        admin_post(&gw, "/v1/credentials/stripe-live/rotate", "sk_live_two_B2").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(call(&gw, "two").await.0, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_two_B2"
    );
    // A valid policy forbidding every call, on disk only: the next change leaves it there.
    std::fs::write(
        &policies,
        "@id(\"deny-all\")\nforbid(principal, action, resource);\n",
    )
    .unwrap();
    let (status, answer) = admin_post(
        &gw,
        "/v1/credentials/stripe-live/rotate",
        "sk_live_three_C3",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(call(&gw, "three").await.0, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_three_C3"
    );
    gw.stop().await;
}

/// A change the vault stored but the gateway could not apply (here the vault's caller tokens
/// cannot be read while the runtime is rebuilt) answers 500 `credential_change_not_applied`,
/// and calls go on with the previous value; once the vault reads again, the poller applies the
/// stored change with no further request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_change_that_cannot_be_applied_says_so_and_applies_later() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    let (status, answer) = admin_post(&gw, "/v1/credentials/stripe-live", "sk_live_first_A1").await;
    assert_eq!(status, 200, "{answer}");
    // Another connection to the vault file hides the table a rebuild reads caller tokens from.
    let vault_file = gw.running().data_dir.join(postern_vault::VAULT_FILE);
    let db = rusqlite::Connection::open(vault_file).unwrap();
    db.execute_batch("ALTER TABLE caller_tokens RENAME TO caller_tokens_hidden")
        .unwrap();
    let (status, answer) = admin_post(
        &gw,
        "/v1/credentials/stripe-live/rotate",
        "sk_live_second_B2",
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "credential_change_not_applied");
    assert!(!answer.to_string().contains("sk_live_second_B2"));
    assert_eq!(call(&gw, "meanwhile").await.0, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_first_A1",
        "calls go on with the value in use"
    );
    db.execute_batch("ALTER TABLE caller_tokens_hidden RENAME TO caller_tokens")
        .unwrap();
    eventually("the poller applies the stored change", || async {
        call(&gw, "after").await.0 == 200
            && vendor.last().header("authorization").as_deref() == Some("Bearer sk_live_second_B2")
    })
    .await;
    gw.stop().await;
}

/// The status of `GET /stripe/v1/charges/ch_1` with `token` as the caller token.
async fn status_as(gw: &TestGateway, token: &str) -> reqwest::StatusCode {
    client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_by_another_process_take_effect_without_restart() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    // A second handle on the same vault file, as `postern creds` would open it.
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    vault
        .set("stripe-live", "static", b"sk_from_cli_1", 1)
        .unwrap();
    eventually("the gateway picks up the new credential", || async {
        call(&gw, "x").await.0 == 200
    })
    .await;
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_from_cli_1"
    );

    // Caller revocation from another process: the caller's config token stops working.
    use sha2::Digest as _;
    let hash: [u8; 32] = sha2::Sha256::digest(CHECKOUT_TOKEN.as_bytes()).into();
    vault.revoke_caller("checkout", &[hash], 2).unwrap();
    eventually("the revoked caller is refused", || async {
        call(&gw, "y").await.0 == 401
    })
    .await;

    // A token issued at run time for the same caller works.
    vault
        .add_caller_token("checkout", "pst_rotated_token_for_checkout_0001", 3)
        .unwrap();
    eventually("the new caller token is accepted", || async {
        client()
            .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
            .bearer_auth("pst_rotated_token_for_checkout_0001")
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;

    // A caller token with the admin token's hash, put into the vault by another process, is
    // skipped when the vault is read: the admin token stays no caller's, and the rest of the
    // vault (the rotated token above) still applies.
    vault
        .add_caller_token("checkout", &gw.admin_token, 4)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    let as_caller = client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(as_caller.status(), 401);
    gw.stop().await;
}

/// A revocation cannot be undone by altering the vault file without the master key: the
/// revoked config token's row, made active again by SQL (`revoked_ms` set back to NULL), fails
/// its MAC, grants nothing, and still keeps the config token out. A row forged for a new token
/// is no token either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_undone_in_the_vault_file_keeps_the_token_out() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    let status_as = |token: &'static str| status_as(&gw, token);
    // Identified (its vendor credential is not in the vault: 503, not 401).
    assert_eq!(status_as(CHECKOUT_TOKEN).await, 503);
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    use sha2::Digest as _;
    let hash: [u8; 32] = sha2::Sha256::digest(CHECKOUT_TOKEN.as_bytes()).into();
    vault.revoke_caller("checkout", &[hash], 2).unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(status_as(CHECKOUT_TOKEN).await, 401, "revoked");
    // Someone with the file but not the key undoes the revocation and adds a token of theirs.
    let forged = "pst_forged_token_for_checkout_0001";
    let forged_hash: [u8; 32] = sha2::Sha256::digest(forged.as_bytes()).into();
    let db = rusqlite::Connection::open(gw.running().data_dir.join("vault.db")).unwrap();
    db.execute(
        "UPDATE caller_tokens SET revoked_ms = NULL WHERE token_sha256 = ?1",
        [hash.to_vec()],
    )
    .unwrap();
    db.execute(
        "INSERT INTO caller_tokens (token_sha256, caller, created_ms) VALUES (?1, 'checkout', 1)",
        [forged_hash.to_vec()],
    )
    .unwrap();
    drop(db);
    // The next change made with the key (any) has the gateway read the vault again.
    vault
        .set("unrelated", "static", b"sk_unrelated", 3)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(
        status_as(CHECKOUT_TOKEN).await,
        401,
        "the revocation stands"
    );
    assert_eq!(status_as(forged).await, 401, "a forged row is no token");
    gw.stop().await;
}

/// A credential change that waits on the vault (another process holds its write lock, as
/// `postern creds` does while it writes, for up to the vault's 5 s busy timeout) holds up no
/// other admin answer: the vault's SQLite and the runtime's rebuild run off the async threads
/// (on one, here, as a small machine has few).
#[tokio::test(flavor = "current_thread")]
async fn a_credential_change_waiting_on_the_vault_holds_up_no_other_admin_answer() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    let db = rusqlite::Connection::open(gw.running().data_dir.join("vault.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let change = tokio::spawn({
        let admin = gw.admin.clone();
        let token = gw.admin_token.clone();
        async move {
            client()
                .post(format!("{admin}/v1/credentials/stripe-live"))
                .bearer_auth(token)
                .body("sk_live_waited_for_A1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    // The change is waiting on the lock by now (on one thread, a change that blocks it would
    // hold up this sleep too).
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let health = client()
        .get(format!("{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "/healthz waited {:?} on a credential change",
        started.elapsed()
    );
    assert!(!change.is_finished(), "the change did not wait on the lock");
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(change.await.unwrap(), 200);
    let (status, _) = call(&gw, "after-wait").await;
    assert_eq!(status, 200);
    gw.stop().await;
}

/// A vault token row for one caller that holds the token the config gives another caller (an
/// old `callers import` of a hash since handed to someone else) does not take it over: the
/// token still names the config's caller (before, the row quietly took it, and the other
/// caller's calls ran under the row's caller's grants). The rest of the vault change applies:
/// a conflict must not hold up a revocation made with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_token_cannot_take_over_another_callers_config_token() {
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    let status_as = |token: &'static str| status_as(&gw, token);
    assert_eq!(status_as(REPORTING_TOKEN).await, 403, "no grant on stripe");
    // Identified (its vendor credential is not in the vault: 503, not 401).
    assert_eq!(status_as(CHECKOUT_TOKEN).await, 503);
    // checkout's tokens now live in the vault (its config token revoked there), and a row
    // gives it reporting's token.
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    use sha2::Digest as _;
    let hash: [u8; 32] = sha2::Sha256::digest(CHECKOUT_TOKEN.as_bytes()).into();
    vault.revoke_caller("checkout", &[hash], 2).unwrap();
    vault
        .add_caller_token("checkout", REPORTING_TOKEN, 3)
        .unwrap();
    gw.running().shared().refresh_from_vault().unwrap();
    assert_eq!(
        status_as(REPORTING_TOKEN).await,
        403,
        "reporting's token still names reporting, not checkout"
    );
    assert_eq!(
        status_as(CHECKOUT_TOKEN).await,
        401,
        "the revocation applied"
    );
    gw.stop().await;
}

/// A credential change and a config reload that run at once both take effect: the runtime left
/// in place has the reload's config and the vault's latest value, whichever built first (a
/// refresh that rebuilt from the config it found before the reload swapped, or a reload that
/// read the vault before the change, would leave one of them out). Each round runs the two at
/// once on two threads, then looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_changes_racing_reloads_leave_both_applied() {
    const ROUNDS: usize = 40;
    let vendor = TestVendor::tls(TestVendor::ok_handler()).await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    // Two configs: as started (one grant), and with a second grant, for `reporting`.
    let started = std::fs::read_to_string(&gw.config_path).unwrap();
    let granted = gw.config_path.with_file_name("granted.toml");
    std::fs::write(
        &granted,
        format!("{started}\n[[grants]]\ncaller = \"reporting\"\nintegration = \"stripe\"\noperations = [\"get_charge\"]\n"),
    )
    .unwrap();
    let configs = [gw.config_path.clone(), granted];
    // A second handle on the vault, as `postern creds` or the admin API would change it.
    let vault = postern_vault::Vault::open_with(&gw.running().data_dir, None).unwrap();
    let running = gw.running();
    let shared = running.shared();
    tokio::task::block_in_place(|| {
        for round in 0..ROUNDS {
            let config = postern_config::load(&configs[round % 2]).unwrap();
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    start.wait();
                    running.reload(config).unwrap();
                });
                scope.spawn(|| {
                    let value = format!("sk_live_race_{round}");
                    let now = round as i64 + 1;
                    start.wait();
                    match round {
                        0 => vault.set("stripe-live", "static", value.as_bytes(), now),
                        _ => vault.rotate("stripe-live", value.as_bytes(), 0, now),
                    }
                    .unwrap();
                    shared.refresh_from_vault().unwrap();
                });
            });
            let runtime = shared.runtime.load();
            assert_eq!(
                runtime.config.grants.len(),
                1 + round % 2,
                "round {round}: the reload was undone"
            );
            assert_eq!(
                runtime.vault_generation,
                vault.generation().unwrap(),
                "round {round}: the credential change was undone"
            );
        }
    });
    // The last round's config (with the grant) and value are the ones in use.
    assert_eq!(call(&gw, "after").await.0, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        format!("Bearer sk_live_race_{}", ROUNDS - 1)
    );
    let reporting = client()
        .get(format!("{}/stripe/v1/charges/ch_1", gw.base))
        .bearer_auth(REPORTING_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reporting.status(), 200, "the last reload's grant applies");
    gw.stop().await;
}

/// A vendor that stores the headers of the first request it gets and quotes them in every
/// later answer, as a webhook "test request" or request log does: after a rotation it shows the
/// previous key, still valid at the vendor. While the rollback window lasts, the gateway reads
/// answers for that value too, and it never reaches a caller.
#[tokio::test]
async fn an_answer_quoting_the_rotated_out_key_never_shows_it_to_the_caller() {
    let stored: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let kept = stored.clone();
    let vendor = TestVendor::tls(Arc::new(move |request: &SeenRequest| {
        let sent = request
            .header("authorization")
            .unwrap_or_default()
            .to_string();
        let quoted = kept.lock().unwrap().get_or_insert(sent).clone();
        Answer::json(
            200,
            serde_json::json!({ "stored_request": { "authorization": quoted } }),
        )
    }))
    .await;
    let gw = TestGateway::start(&integration(&vendor), vendor.ca_pem.as_deref()).await;
    let old_key = "sk_live_rotated_out_C3";
    let (status, answer) = admin_post(&gw, "/v1/credentials/stripe-live", old_key).await;
    assert_eq!(status, 200, "{answer}");
    let (status, first) = call(&gw, "first").await;
    assert_eq!(status, 200);
    assert!(
        first.to_string().contains("***"),
        "the current key is filtered: {first}"
    );
    // Rotated once with `expected_version`: a retry of the same request (its answer lost) is
    // refused, so the key a rollback would restore is not erased by a second rotation.
    let rotate =
        "/v1/credentials/stripe-live/rotate?rollback_window_seconds=600&expected_version=1";
    let (status, answer) = admin_post(&gw, rotate, "sk_live_current_D4").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], 2);
    let (status, answer) = admin_post(&gw, rotate, "sk_live_current_D4").await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at version 2, not 1"),
        "{answer}"
    );
    let (status, answer) = admin_post(
        &gw,
        "/v1/credentials/stripe-live/rotate?expected_version=two",
        "x",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, later) = call(&gw, "later").await;
    assert_eq!(status, 200);
    assert_eq!(
        vendor.last().header("authorization").unwrap(),
        "Bearer sk_live_current_D4"
    );
    assert!(!later.to_string().contains(old_key), "{later}");
    let events = gw.wait_events(2).await;
    assert_eq!(events[1]["secret_echoed"], true, "{events:#?}");
    gw.stop().await;
}
