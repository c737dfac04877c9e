//! The audit log through the gateway: receipts on responses, the public tlog-tiles endpoints,
//! proofs that verify against signed checkpoints, no raw target in the log, fail-closed on
//! write failures (and recovery), best effort. Real sockets, a real gateway, a real vendor.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use postern_tlog::{
    decode_entry_bundle, keyed_hash, leaf_hash, tile_width, verify_consistency, AuditRecord,
    Checkpoint, Hash, NoteVerifier, RecordKind, TlogProof,
};
use support::*;

const ORIGIN: &str = "audit.test.postern.example/log";

/// Two integrations on one plain-HTTP vendor: `acme` (fail closed, the default) and `lenient`
/// (`audit = "best_effort"`), both granted to `checkout`.
fn body(vendor: &TestVendor) -> String {
    let integration = |name: &str, extra: &str| {
        format!(
            r#"
[[integrations]]
name = "{name}"
vendor = "Acme"
owner = "o@example.com"
upstream = "http://127.0.0.1:{port}"
allow_plaintext = true
allow_private_networks = ["127.0.0.1/32"]
{extra}
operations = [ {{ id = "get_thing", method = "GET", path = "/things/{{id}}" }} ]

[[grants]]
caller = "checkout"
integration = "{name}"
operations = ["get_thing"]
"#,
            port = vendor.addr.port()
        )
    };
    format!(
        "{}\n{}",
        integration("acme", ""),
        integration("lenient", "audit = \"best_effort\"")
    )
}

async fn start(vendor: &TestVendor) -> TestGateway {
    TestGateway::start_with_gateway(
        &body(vendor),
        None,
        &format!("audit_origin = \"{ORIGIN}\"\naudit_checkpoint_interval_ms = 20"),
    )
    .await
}

/// `GET path` on the gateway with the checkout token: (status, audit index, body).
async fn call(gw: &TestGateway, path: &str) -> (u16, Option<u64>, String) {
    let response = client()
        .get(format!("{}{path}", gw.base))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let index = response
        .headers()
        .get("postern-audit-index")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (status, index, response.text().await.unwrap())
}

/// `GET path` on the admin listener, with the admin token when `auth`.
async fn admin(gw: &TestGateway, path: &str, auth: bool) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", gw.admin));
    if auth {
        request = request.bearer_auth(&gw.admin_token);
    }
    request.send().await.unwrap()
}

fn verifier(key: &str) -> NoteVerifier {
    NoteVerifier::from_verifier_key(key).unwrap()
}

/// Polls `/log/checkpoint` (bounded) until a checkpoint covers `size` entries; returns it
/// opened with `key`, and its note.
async fn checkpoint_covering(gw: &TestGateway, key: &str, size: u64) -> (Checkpoint, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = admin(gw, "/log/checkpoint", false).await;
        if response.status() == 200 {
            assert_eq!(
                response.headers()["content-type"],
                "text/plain; charset=utf-8"
            );
            let note = response.text().await.unwrap();
            let checkpoint = Checkpoint::open(&note, &[verifier(key)], ORIGIN)
                .unwrap_or_else(|e| panic!("checkpoint does not verify: {e}\n{note}"));
            if checkpoint.size >= size {
                return (checkpoint, note);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covering {size} entries"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn readyz(gw: &TestGateway) -> (u16, serde_json::Value) {
    let response = admin(gw, "/readyz", true).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn receipts_proofs_and_tiles_verify_against_signed_checkpoints() {
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = start(&vendor).await;
    let ledger = gw.running().shared().audit.ledger.clone();

    // Granted calls carry a receipt: the index of their durable intent entry.
    let secret_target = "/acme/things/42?card=4111111111111111";
    let (status, first, _) = call(&gw, secret_target).await;
    assert_eq!(status, 200);
    let first = first.expect("a granted call returns Postern-Audit-Index");
    let mut receipts = vec![first];
    for i in 0..4 {
        let (status, index, _) = call(&gw, &format!("/acme/things/{i}")).await;
        assert_eq!(status, 200);
        receipts.push(index.unwrap());
    }
    let mut unique = receipts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), receipts.len(), "receipts are distinct");
    // A refused call is recorded too, but was never forwarded: no intent receipt.
    let (status, index, _) = call(&gw, "/acme/nope").await;
    assert_eq!(status, 403);
    assert_eq!(index, None);

    // The verifier key, from the admin API (public, as the tiles are).
    assert_eq!(admin(&gw, "/v1/audit/key", false).await.status(), 200);
    let key = admin(&gw, "/v1/audit/key", true)
        .await
        .text()
        .await
        .unwrap();
    let key = key.trim().to_string();
    assert_eq!(key, ledger.verifier_key());
    assert!(key.starts_with(&format!("{ORIGIN}+")), "{key}");

    // /log/checkpoint is public and verifies with that key. Outcome entries land after the
    // responses: wait until the log stops growing, so "nothing beyond the checkpoint" holds.
    let last = *receipts.iter().max().unwrap();
    let (mut checkpoint, _) = checkpoint_covering(&gw, &key, last + 1).await;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (latest, _) = checkpoint_covering(&gw, &key, checkpoint.size).await;
        if latest.size == checkpoint.size {
            break;
        }
        checkpoint = latest;
    }

    // The entry bundle holding the first receipt (public), its entry and hash tile.
    let width = tile_width(0, 0, checkpoint.size).unwrap();
    assert!(width < 256, "fewer than 256 entries so far");
    let response = admin(&gw, &format!("/log/tile/entries/000.p/{width}"), false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let bundle = response.bytes().await.unwrap();
    let entries = decode_entry_bundle(&bundle).unwrap();
    assert_eq!(entries.len(), usize::from(width));
    let tile = admin(&gw, &format!("/log/tile/0/000.p/{width}"), false)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(tile.len(), 32 * usize::from(width));
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(&tile[i * 32..(i + 1) * 32], &leaf_hash(entry).0, "leaf {i}");
    }
    // Nothing beyond the latest checkpoint, and no non-canonical paths.
    for path in [
        "/log/tile/0/001".to_string(),
        "/log/tile/entries/000".to_string(),
        format!("/log/tile/0/000.p/{}", width + 1),
        "/log/tile/0/0".to_string(),
        "/log/tile/0/000.p/0".to_string(),
        "/log/nothing".to_string(),
    ] {
        assert_eq!(admin(&gw, &path, false).await.status(), 404, "{path}");
    }
    // Anyone may read tiles, a few at once: with every place taken, a read waits, then gets
    // 503 and Retry-After rather than a blocking thread of its own.
    let places = gw
        .running()
        .shared()
        .log_reads
        .clone()
        .acquire_many_owned(postern_gateway::admin::LOG_READERS as u32)
        .await
        .unwrap();
    let busy = admin(&gw, &format!("/log/tile/0/000.p/{width}"), false).await;
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    drop(places);
    let tile_again = admin(&gw, &format!("/log/tile/0/000.p/{width}"), false).await;
    assert_eq!(tile_again.status(), 200);
    assert_eq!(tile_again.bytes().await.unwrap(), tile);

    // The inclusion proof for the first receipt verifies for the entry's bytes.
    let entry = entries[first as usize];
    let response = admin(&gw, &format!("/v1/audit/proof/{first}"), true).await;
    assert_eq!(response.status(), 200);
    let proof = TlogProof::parse(&response.text().await.unwrap()).unwrap();
    assert_eq!(proof.index, first);
    let proved = proof.verify(entry, &[verifier(&key)], ORIGIN).unwrap();
    assert!(proved.size > first);
    // A proof for another entry's bytes does not.
    assert!(proof
        .verify(entries[receipts[1] as usize], &[verifier(&key)], ORIGIN)
        .is_err());

    // The entry: decoded record, leaf hash, and no raw path or query — the HMAC stands in.
    let response = admin(&gw, &format!("/v1/audit/entries/{first}"), true).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for raw in ["4111111111111111", "card=", "/things/42", "?"] {
        assert!(!text.contains(raw), "{raw:?} in {text}");
    }
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["index"], first);
    assert_eq!(json["leaf_hash"], leaf_hash(entry).to_hex());
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(json["entry_base64"].as_str().unwrap())
            .unwrap(),
        entry
    );
    assert_eq!(json["covered_by_checkpoint"], true);
    let record = &json["record"];
    assert_eq!(record["kind"], "intent");
    assert_eq!(record["caller"], "checkout");
    assert_eq!(record["integration"], "acme");
    assert_eq!(record["operation"], "get_thing");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path_template"], "/things/{id}");
    assert_eq!(record["decision"], "allow");
    let hmac_key = std::fs::read(gw.running().data_dir.join("audit-hmac.key")).unwrap();
    assert_eq!(
        record["hmacs"]["target"],
        keyed_hash(&hmac_key, "target", secret_target.as_bytes())
    );
    let decoded = AuditRecord::decode(entry).unwrap();
    assert_eq!(decoded.kind, RecordKind::Intent);

    // Errors: an entry beyond the log, a malformed index.
    let beyond = ledger.size() + 1000;
    assert_eq!(
        admin(&gw, &format!("/v1/audit/entries/{beyond}"), true)
            .await
            .status(),
        404
    );
    assert_eq!(admin(&gw, "/v1/audit/proof/01", true).await.status(), 400);
    // Without the token: proofs and covered entries are public (their bytes are in the public
    // tiles); an entry no checkpoint covers is the admin's.
    let public_proof = admin(&gw, &format!("/v1/audit/proof/{first}"), false).await;
    assert_eq!(public_proof.status(), 200);
    assert_eq!(
        TlogProof::parse(&public_proof.text().await.unwrap())
            .unwrap()
            .index,
        first
    );
    let public_entry = admin(&gw, &format!("/v1/audit/entries/{first}"), false).await;
    assert_eq!(public_entry.status(), 200);
    let public_entry: serde_json::Value = public_entry.json().await.unwrap();
    assert_eq!(public_entry["entry_base64"], json["entry_base64"]);
    let uncovered = admin(&gw, &format!("/v1/audit/entries/{beyond}"), false).await;
    assert_eq!(uncovered.status(), 401);
    assert!(uncovered
        .text()
        .await
        .unwrap()
        .contains("not covered by a signed checkpoint"));

    // Consistency between two signed checkpoints.
    let (old, _) = checkpoint_covering(&gw, &key, 1).await;
    for i in 0..3 {
        assert_eq!(call(&gw, &format!("/acme/things/c{i}")).await.0, 200);
    }
    let (new, _) = checkpoint_covering(&gw, &key, old.size + 3).await;
    let response = admin(
        &gw,
        &format!("/v1/audit/consistency?old={}&new={}", old.size, new.size),
        true,
    )
    .await;
    assert_eq!(response.status(), 200);
    let proof: Vec<Hash> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| Hash::from_base64(line).unwrap())
        .collect();
    verify_consistency(old.size, new.size, &old.root_hash, &new.root_hash, &proof).unwrap();
    assert_eq!(
        admin(
            &gw,
            &format!("/v1/audit/consistency?old=1&new={}", ledger.size() + 10),
            true
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        admin(&gw, "/v1/audit/consistency?old=0&new=1", true)
            .await
            .status(),
        400
    );

    // One writer per log: the running gateway holds it.
    let error = postern_ledger::Ledger::open(
        gw.running().data_dir.join("audit"),
        postern_ledger::LedgerOptions::new(ORIGIN),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("in use by another postern process"),
        "{error}"
    );
    gw.stop().await;
}

/// A vendor's own `Postern-Audit-Index` never reaches the caller: a durable call gets its real
/// receipt in its place, a `best_effort` one (no durable intent) none.
#[tokio::test]
async fn a_receipt_forged_by_the_vendor_is_replaced_or_removed() {
    let vendor = TestVendor::plain(TestVendor::forged_receipt_handler()).await;
    let gw = start(&vendor).await;
    let ledger = gw.running().shared().audit.ledger.clone();
    let (status, index, _) = call(&gw, "/acme/things/1").await;
    assert_eq!(status, 200);
    let index = index.expect("a durable call's receipt");
    assert_ne!(index, 999999);
    let record = AuditRecord::decode(&ledger.entry(index).unwrap()).unwrap();
    assert_eq!(record.kind, RecordKind::Intent);
    let (status, index, _) = call(&gw, "/lenient/things/1").await;
    assert_eq!(status, 200);
    assert_eq!(index, None, "best_effort gives no receipt, forged or not");
    gw.stop().await;
}

/// A public entry bundle (larger than what an HTTP/2 stream buffers) its client takes none of
/// (its stream has no window) gives its share of the public answers' budget back within two
/// idle limits, even while the client keeps its connection busy with other requests
/// (`/healthz` every 100 ms, their streams given a window): it is cut as a stalled vendor
/// answer is. Bounded: 5 s.
#[tokio::test]
async fn a_public_answer_its_client_takes_none_of_gives_its_share_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = TestGateway::start_with_gateway(
        &body(&vendor),
        None,
        &format!(
            "audit_origin = \"{ORIGIN}\"\naudit_checkpoint_interval_ms = 20\nidle_timeout_ms = 300"
        ),
    )
    .await;
    let key = gw.running().shared().audit.ledger.verifier_key();
    for _ in 0..260 {
        assert_eq!(call(&gw, "/acme/refused").await.0, 403);
    }
    checkpoint_covering(&gw, &key, 256).await;
    let frame = h2_frame;
    // GET <path> (HPACK: :method GET, :scheme http, :path literal, :authority x).
    let get = |stream: u32, path: &str| {
        let mut head = vec![0x82, 0x86, 0x04, path.len() as u8];
        head.extend(path.as_bytes());
        head.extend([0x41, 0x01, b'x']);
        frame(1, 0x5, stream, &head)
    };
    let budget = gw.running().shared().public_answers.clone();
    let full = budget.available_permits();
    let mut stream = tokio::net::TcpStream::connect(gw.running().admin_addr)
        .await
        .unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream's answer moves until given a window.
    opening.extend(frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    opening.extend(get(1, "/log/tile/entries/000"));
    stream.write_all(&opening).await.unwrap();
    let started = std::time::Instant::now();
    let mut held = false;
    let mut next = 3u32;
    let mut buf = [0u8; 4096];
    let given_back = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the share was not given back within 5 s (held: {held})"
        );
        held |= budget.available_permits() < full;
        if held && budget.available_permits() == full {
            break started.elapsed();
        }
        // A request that moves, its stream given a window.
        let mut busy = get(next, "/healthz");
        busy.extend(frame(8, 0, next, &65_535u32.to_be_bytes()));
        next += 2;
        stream.write_all(&busy).await.unwrap();
        let round = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(read) = tokio::time::timeout_at(round, stream.read(&mut buf)).await {
            if let Ok(0) | Err(_) = read {
                panic!(
                    "the connection closed after {:?}; it was kept busy",
                    started.elapsed()
                );
            }
        }
    };
    assert!(held, "the answer never held a share");
    assert!(
        given_back < Duration::from_millis(1500),
        "given back after {given_back:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn full_tiles_are_served_and_cacheable() {
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = start(&vendor).await;
    let key = gw.running().shared().audit.ledger.verifier_key();
    // Refusals are cheap entries (one outcome each): 260 of them fill the first tile.
    for _ in 0..260 {
        assert_eq!(call(&gw, "/acme/refused").await.0, 403);
    }
    let (checkpoint, _) = checkpoint_covering(&gw, &key, 256).await;
    let response = admin(&gw, "/log/tile/0/000", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let tile = response.bytes().await.unwrap();
    assert_eq!(tile.len(), 256 * 32);
    let bundle = admin(&gw, "/log/tile/entries/000", false)
        .await
        .bytes()
        .await
        .unwrap();
    let entries = decode_entry_bundle(&bundle).unwrap();
    assert_eq!(entries.len(), 256);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(&tile[i * 32..(i + 1) * 32], &leaf_hash(entry).0);
        let record = AuditRecord::decode(entry).unwrap();
        assert_eq!(record.reason.as_deref(), Some("operation_not_allowed"));
    }
    // The level-1 tile's first hash is the root of the first 256 entries.
    let level1 = admin(&gw, "/log/tile/1/000.p/1", false)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &level1[..],
        &gw.running().shared().audit.ledger.root(256).unwrap().0
    );
    assert!(checkpoint.size >= 256);
    gw.stop().await;
}

#[tokio::test]
async fn write_failures_fail_closed_with_readiness_and_recover_by_themselves() {
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = start(&vendor).await;
    assert_eq!(call(&gw, "/acme/things/warm").await.0, 200);
    assert_eq!(readyz(&gw).await.0, 200);
    let forwarded = vendor.seen().len();
    let ledger = gw.running().shared().audit.ledger.clone();

    // The next three batch writes fail (the call's intent, its refusal's outcome, the next
    // call's intent): the call is refused before anything reaches the vendor.
    ledger.inject_write_failures(3);
    let (status, index, body) = call(&gw, "/acme/things/1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(index, None);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "audit_unavailable");
    assert_eq!(vendor.seen().len(), forwarded, "nothing was forwarded");
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert!(
        ready["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("audit log")),
        "{ready}"
    );

    // No operator action: as soon as writing works again, calls go through and it is ready.
    let mut recovered = None;
    for attempt in 0..50 {
        let (status, index, body) = call(&gw, &format!("/acme/things/r{attempt}")).await;
        match status {
            503 => assert!(body.contains("audit_unavailable"), "{body}"),
            200 => {
                recovered = Some(index.expect("a receipt"));
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(recovered.is_some(), "calls did not recover");
    assert_eq!(vendor.seen().len(), forwarded + 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&gw).await.0 != 200 {
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn best_effort_integrations_still_forward_when_the_log_fails() {
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let gw = start(&vendor).await;
    // Best effort never waits for the disk, so there is no receipt; required calls get one.
    let (status, receipt, _) = call(&gw, "/lenient/things/0").await;
    assert_eq!((status, receipt), (200, None));
    let (status, receipt, _) = call(&gw, "/acme/things/0").await;
    assert_eq!(status, 200);
    assert!(receipt.is_some());
    let ledger = gw.running().shared().audit.ledger.clone();
    ledger.inject_write_failures(1000);
    let (status, _, body) = call(&gw, "/lenient/things/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vendor.seen().len(), 3);
    assert_eq!(vendor.last().target, "/things/1");
    // The fail-closed integration on the same gateway refuses meanwhile.
    let (status, _, body) = call(&gw, "/acme/things/1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(vendor.seen().len(), 3);
    ledger.inject_write_failures(0);
    gw.stop().await;
}

/// Unmounts the test's tmpfs even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real full disk: the data_dir lives on a 4 MiB tmpfs that a filler file then fills. Calls
/// fail closed (503 `audit_unavailable`, nothing forwarded), `/readyz` says why, and once space
/// is freed the gateway recovers by itself. Needs permission to mount a tmpfs (root here and in
/// CI); elsewhere it says SKIP, unless POSTERN_REQUIRE_DISK_FULL_TEST is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_closed_then_recovers() {
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mount.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        assert!(
            std::env::var_os("POSTERN_REQUIRE_DISK_FULL_TEST").is_none(),
            "cannot mount a tmpfs for the disk-full test"
        );
        eprintln!(
            "SKIP disk_full_fails_closed_then_recovers: cannot mount a tmpfs here (needs root)"
        );
        return;
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let config_dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "{data}"
detect = false

[[callers]]
name = "checkout"
token_sha256 = "{hash}"

{body}"#,
        data = mount.path().join("data").display(),
        hash = sha256_hex(CHECKOUT_TOKEN),
        body = body(&vendor)
    );
    let path = config_dir.path().join("postern.toml");
    std::fs::write(&path, &text).unwrap();
    let gateway = postern_gateway::RunningGateway::start(postern_config::load(&path).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", gateway.listen_addr);
    let admin = format!("http://{}", gateway.admin_addr);
    let get = |n: u32| {
        client()
            .get(format!("{base}/acme/things/{n}"))
            .bearer_auth(CHECKOUT_TOKEN)
            .send()
    };
    assert_eq!(get(0).await.unwrap().status(), 200);

    // Fill the file system.
    let filler = mount.path().join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..128 {
            if file.write_all(&chunk).and_then(|_| file.flush()).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
    }
    // Within a bounded number of calls the log cannot grow any more: fail closed.
    let mut refused = None;
    for n in 1..400 {
        let response = get(n).await.unwrap();
        if response.status() == 503 {
            let body: serde_json::Value = response.json().await.unwrap();
            refused = Some((n, body));
            break;
        }
    }
    let (n, body) = refused.expect("calls kept succeeding on a full disk");
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert!(
        !vendor
            .seen()
            .iter()
            .any(|s| s.target == format!("/things/{n}")),
        "a call without a durable audit entry reached the vendor"
    );
    let admin_token =
        std::fs::read_to_string(mount.path().join("data").join("admin-token")).unwrap();
    let ready = client()
        .get(format!("{admin}/readyz"))
        .bearer_auth(admin_token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("audit"));

    // Free the space: the next calls succeed again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(1000).await.unwrap().status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not recover after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await;
}

/// The log's records, in order, once everything queued is written.
async fn records(gw: &TestGateway) -> Vec<AuditRecord> {
    let ledger = gw.running().shared().audit.ledger.clone();
    let size = ledger.flush().await.unwrap();
    (0..size)
        .map(|i| AuditRecord::decode(&ledger.entry(i).unwrap()).unwrap())
        .collect()
}

/// A `best_effort` intent is provisional: a call that ends before its intent's group commit is
/// written leaves its outcome entry alone (which says all the intent did); a call still running
/// when that commit is written keeps its intent, before its outcome.
#[tokio::test]
async fn best_effort_intents_give_way_to_outcomes_written_with_them() {
    let vendor = TestVendor::plain(TestVendor::ok_handler()).await;
    let (silent_port, _hold, _accepts) = silent_vendor().await;
    let slow = slow_integration(silent_port, 300, r#"audit = "best_effort""#);
    let gw = TestGateway::start_with_gateway(
        &format!("{}\n{slow}", body(&vendor)),
        None,
        &format!("audit_origin = \"{ORIGIN}\""),
    )
    .await;
    let calls = 40;
    for i in 0..calls {
        let (status, receipt, body) = call(&gw, &format!("/lenient/things/{i}")).await;
        assert_eq!((status, receipt), (200, None), "{body}");
    }
    let log = records(&gw).await;
    let outcomes: Vec<&AuditRecord> = log
        .iter()
        .filter(|r| r.kind == RecordKind::Outcome)
        .collect();
    assert_eq!(outcomes.len(), calls, "every call has its outcome entry");
    assert!(outcomes.iter().all(|r| r.status == Some(200)));
    let intents = log.len() - calls;
    assert!(
        intents < calls,
        "calls that ended within their intent's commit left no intent ({intents} intents for {calls} calls)"
    );
    for (at, intent) in log.iter().enumerate() {
        if intent.kind == RecordKind::Intent {
            assert!(
                log[at + 1..]
                    .iter()
                    .any(|r| r.kind == RecordKind::Outcome && r.request_id == intent.request_id),
                "an intent kept is followed by its call's outcome"
            );
        }
    }
    // Outliving its intent's commit (the vendor never answers; the call times out after
    // 300 ms, the commit is held at most ~10 ms): the intent stays, then the outcome.
    let (status, _, body) = call(&gw, "/slow/x").await;
    assert_eq!(status, 504, "{body}");
    let log = records(&gw).await;
    let slow: Vec<&AuditRecord> = log.iter().filter(|r| r.integration == "slow").collect();
    assert_eq!(slow.len(), 2, "{slow:?}");
    assert_eq!(slow[0].kind, RecordKind::Intent);
    assert_eq!(slow[1].kind, RecordKind::Outcome);
    assert_eq!(slow[1].status, Some(504));
    assert_eq!(slow[0].request_id, slow[1].request_id);
    gw.stop().await;
}
