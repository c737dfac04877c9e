//! Caller-token rows are authenticated under the master key: someone who can write vault.db
//! but lacks the key cannot add a token, undo a revocation or move a token to another caller,
//! and a vault from before the MACs keeps its tokens through the upgrade.

use postern_vault::{CallerTokenRowProblem, CallerTokenState, Vault, VAULT_FILE};
use sha2::Digest as _;

/// 64 hex digits: the master key given as `POSTERN_MASTER_KEY` would give it.
const KEY: &str = "4f1c2a9e8d7b6a5c4e3f2d1c0b9a8f7e6d5c4b3a29180f1e2d3c4b5a69788796";

fn now() -> i64 {
    1_800_000_000_000
}

fn sha256(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn open(dir: &std::path::Path) -> Vault {
    Vault::open_with(dir, Some(KEY)).unwrap()
}

/// A connection to the vault file of its own, as someone with the file but not the key has.
fn raw(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(VAULT_FILE)).unwrap()
}

fn token<'a>(tokens: &'a [CallerTokenState], token: &str) -> Option<&'a CallerTokenState> {
    tokens.iter().find(|t| t.token_sha256 == sha256(token))
}

#[test]
fn a_token_row_inserted_without_the_master_key_is_not_a_token() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .add_caller_token("checkout", "pst_issued", now())
        .unwrap();
    let db = raw(dir.path());
    // A made-up hash for an existing caller, with no MAC…
    db.execute(
        "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms)
         VALUES (?1, 'checkout', ?2, NULL)",
        rusqlite::params![sha256("pst_forged").to_vec(), now()],
    )
    .unwrap();
    // …and one with the MAC of the real row copied in.
    db.execute(
        "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms, mac)
         SELECT ?1, caller, created_ms, revoked_ms, mac FROM caller_tokens WHERE token_sha256 = ?2",
        rusqlite::params![
            sha256("pst_forged_copy").to_vec(),
            sha256("pst_issued").to_vec()
        ],
    )
    .unwrap();
    drop(db);

    let vault = open(dir.path());
    let tokens = vault.caller_tokens().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(!token(&tokens, "pst_issued").unwrap().revoked);
    assert!(token(&tokens, "pst_forged").is_none());
    assert!(token(&tokens, "pst_forged_copy").is_none());

    let checked = vault.caller_tokens_checked().unwrap();
    assert_eq!(checked.tokens, tokens);
    let mut refused: Vec<_> = checked
        .refused
        .iter()
        .map(|row| (row.token_sha256, row.caller.as_str(), row.problem))
        .collect();
    refused.sort_by_key(|row| row.2.as_str());
    assert_eq!(
        refused,
        [
            (
                Some(sha256("pst_forged")),
                "checkout",
                CallerTokenRowProblem::MissingMac
            ),
            (
                Some(sha256("pst_forged_copy")),
                "checkout",
                CallerTokenRowProblem::WrongMac
            ),
        ]
    );
    assert!(checked.refused.iter().all(|row| row.hash_prefix.len() == 8
        && row
            .token_sha256
            .is_some_and(|hash| hex::encode(hash).starts_with(&row.hash_prefix))));
}

#[test]
fn a_revoked_token_made_active_again_without_the_master_key_is_not_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config_hash = sha256("pst_from_config");
    {
        let vault = open(dir.path());
        vault
            .add_caller_token("checkout", "pst_issued", now())
            .unwrap();
        assert_eq!(
            vault
                .revoke_caller("checkout", &[config_hash], now() + 1)
                .unwrap(),
            2
        );
        let tokens = vault.caller_tokens().unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.iter().all(|t| t.revoked), "{tokens:?}");
    }
    raw(dir.path())
        .execute("UPDATE caller_tokens SET revoked_ms = NULL", [])
        .unwrap();

    let vault = open(dir.path());
    let tokens = vault.caller_tokens().unwrap();
    assert!(
        tokens.iter().all(|t| t.revoked),
        "a token whose revocation was undone in the file is active: {tokens:?}"
    );
    assert!(token(&tokens, "pst_issued").is_none());
    let refused = vault.caller_tokens_checked().unwrap().refused;
    assert_eq!(refused.len(), 2);
    assert!(refused
        .iter()
        .all(|row| row.problem == CallerTokenRowProblem::WrongMac));

    // Revoking the caller again removes its rows that fail their MAC and revokes the config
    // hash in a row of its own, MACed: nothing is left to warn about.
    vault
        .rotate_caller("checkout", &[config_hash], "pst_rotated", now() + 2)
        .unwrap();
    let checked = vault.caller_tokens_checked().unwrap();
    assert!(checked.refused.is_empty(), "{:?}", checked.refused);
    assert_eq!(checked.tokens.len(), 2, "{:?}", checked.tokens);
    assert!(checked
        .tokens
        .iter()
        .any(|t| t.token_sha256 == config_hash && t.revoked));
    assert!(!token(&checked.tokens, "pst_rotated").unwrap().revoked);
    let history = vault.history("caller:checkout").unwrap();
    let revoked = history
        .iter()
        .rev()
        .find(|entry| entry.action == "tokens_revoked")
        .unwrap();
    assert_eq!(
        revoked.detail.as_deref(),
        Some("1 token(s); 2 row(s) that failed their integrity check removed")
    );
}

#[test]
fn a_token_moved_to_another_caller_without_the_master_key_is_not_a_token() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .add_caller_token("reporting", "pst_reporting", now())
        .unwrap();
    raw(dir.path())
        .execute(
            "UPDATE caller_tokens SET caller = 'payments' WHERE caller = 'reporting'",
            [],
        )
        .unwrap();

    let vault = open(dir.path());
    let tokens = vault.caller_tokens().unwrap();
    assert!(tokens.is_empty(), "{tokens:?}");
    let refused = vault.caller_tokens_checked().unwrap().refused;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].caller, "payments");
    assert_eq!(refused[0].problem, CallerTokenRowProblem::WrongMac);
}

/// The schema before caller-token rows carried MACs, as that postern created it.
const SCHEMA_1: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE secrets (
       name TEXT PRIMARY KEY,
       kind TEXT NOT NULL,
       state TEXT NOT NULL,
       current_version INTEGER NOT NULL,
       created_ms INTEGER NOT NULL,
       last_rotated_ms INTEGER
    );
    CREATE TABLE secret_versions (
       name TEXT NOT NULL,
       version INTEGER NOT NULL,
       wrapped_key BLOB,
       sealed_value BLOB,
       created_ms INTEGER NOT NULL,
       status TEXT NOT NULL,
       rollback_until_ms INTEGER,
       PRIMARY KEY (name, version)
    );
    CREATE TABLE usage (name TEXT PRIMARY KEY, last_used_ms INTEGER NOT NULL);
    CREATE TABLE history (
       id INTEGER PRIMARY KEY AUTOINCREMENT,
       name TEXT NOT NULL,
       time_ms INTEGER NOT NULL,
       action TEXT NOT NULL,
       version INTEGER,
       detail TEXT
    );
    CREATE TABLE dataflow (
       integration TEXT NOT NULL,
       caller TEXT NOT NULL,
       class TEXT NOT NULL,
       direction TEXT NOT NULL,
       day TEXT NOT NULL,
       count INTEGER NOT NULL,
       PRIMARY KEY (integration, caller, class, direction, day)
    );
    CREATE TABLE caller_tokens (
       token_sha256 BLOB PRIMARY KEY,
       caller TEXT NOT NULL,
       created_ms INTEGER NOT NULL,
       revoked_ms INTEGER
    );";

const KEY_CHECK_PLAINTEXT: &[u8] = b"postern-vault key check v1";

/// The key check a vault has always held: sealed under the master key with a random nonce,
/// `nonce ‖ ciphertext+tag`.
fn sealed_key_check() -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let key = hex::decode(KEY).unwrap();
    let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).unwrap();
    let nonce: [u8; 24] = rand::random();
    let sealed = cipher
        .encrypt(
            chacha20poly1305::XNonce::from_slice(&nonce),
            Payload {
                msg: KEY_CHECK_PLAINTEXT,
                aad: b"key_check",
            },
        )
        .unwrap();
    [nonce.as_slice(), &sealed].concat()
}

/// Whether the master key opens `sealed` as a key check, as every postern checks it.
fn opens_as_key_check(sealed: &[u8]) -> bool {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let key = hex::decode(KEY).unwrap();
    let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).unwrap();
    let (nonce, body) = sealed.split_at(24);
    cipher
        .decrypt(
            chacha20poly1305::XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: b"key_check",
            },
        )
        .is_ok_and(|plaintext| plaintext == KEY_CHECK_PLAINTEXT)
}

/// A schema-1 vault: an active token and a revoked config hash for `checkout`.
fn old_vault(dir: &std::path::Path) -> Vec<u8> {
    let db = raw(dir);
    db.execute_batch(SCHEMA_1).unwrap();
    let key_check = sealed_key_check();
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('key_check', ?1), ('schema_version', ?2), ('generation', ?3)",
        rusqlite::params![key_check, 1i64.to_be_bytes().to_vec(), 7i64.to_be_bytes().to_vec()],
    )
    .unwrap();
    db.execute(
        "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms)
         VALUES (?1, 'checkout', ?3, NULL), (?2, 'checkout', ?3, ?3)",
        rusqlite::params![
            sha256("pst_old_active").to_vec(),
            sha256("pst_old_config").to_vec(),
            now()
        ],
    )
    .unwrap();
    key_check
}

fn meta(dir: &std::path::Path, key: &str) -> Vec<u8> {
    raw(dir)
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_vault_from_before_the_macs_is_upgraded_and_keeps_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let old_key_check = old_vault(dir.path());

    let expect_old_tokens = |vault: &Vault| {
        let checked = vault.caller_tokens_checked().unwrap();
        assert!(checked.refused.is_empty(), "{:?}", checked.refused);
        assert_eq!(checked.tokens.len(), 2);
        assert!(!token(&checked.tokens, "pst_old_active").unwrap().revoked);
        assert!(token(&checked.tokens, "pst_old_config").unwrap().revoked);
        assert!(checked.tokens.iter().all(|t| t.caller == "checkout"));
    };
    {
        let vault = open(dir.path());
        expect_old_tokens(&vault);
        // The upgrade is no change to credentials or tokens: no reload for a running gateway.
        assert_eq!(vault.generation().unwrap(), 7);
    }
    assert_eq!(meta(dir.path(), "schema_version"), 2i64.to_be_bytes());
    let unmaced: i64 = raw(dir.path())
        .query_row(
            "SELECT count(*) FROM caller_tokens WHERE mac IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unmaced, 0);
    // The key check is marked, and still opens as one (an older postern opens the vault too).
    let key_check = meta(dir.path(), "key_check");
    assert_ne!(key_check, old_key_check);
    assert!(opens_as_key_check(&key_check));

    // Opened again: nothing to upgrade, the same tokens; and they work as before.
    let vault = open(dir.path());
    expect_old_tokens(&vault);
    assert_eq!(meta(dir.path(), "key_check"), key_check);
    vault
        .rotate_caller("checkout", &[], "pst_new", now() + 1)
        .unwrap();
    let tokens = vault.caller_tokens().unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(token(&tokens, "pst_old_active").unwrap().revoked);
    assert!(!token(&tokens, "pst_new").unwrap().revoked);
}

#[test]
fn a_wrong_key_does_not_upgrade_an_old_vault() {
    let dir = tempfile::tempdir().unwrap();
    let old_key_check = old_vault(dir.path());
    let wrong = "00".repeat(32);
    assert!(Vault::open_with(dir.path(), Some(&wrong)).is_err());
    assert_eq!(meta(dir.path(), "key_check"), old_key_check);
    assert_eq!(meta(dir.path(), "schema_version"), 1i64.to_be_bytes());
}

/// What says a vault was upgraded cannot be undone without the key: a row forged after the
/// upgrade, in a file made to look like an old one (schema version back to 1, the MAC column
/// gone), is not MACed by the next open.
#[test]
fn a_vault_made_to_look_old_again_does_not_take_in_forged_rows() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .add_caller_token("checkout", "pst_issued", now())
        .unwrap();
    raw(dir.path())
        .execute_batch(&format!(
            "UPDATE meta SET value = X'{}' WHERE key = 'schema_version';
             ALTER TABLE caller_tokens DROP COLUMN mac;
             INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms)
                VALUES (X'{}', 'checkout', {}, NULL);",
            hex::encode(1i64.to_be_bytes()),
            hex::encode(sha256("pst_forged")),
            now()
        ))
        .unwrap();

    let vault = open(dir.path());
    let checked = vault.caller_tokens_checked().unwrap();
    assert!(
        token(&checked.tokens, "pst_forged").is_none(),
        "{:?}",
        checked.tokens
    );
    // The genuine row lost its MAC with the column: refused too, never taken in again.
    assert!(checked.tokens.is_empty(), "{:?}", checked.tokens);
    assert_eq!(checked.refused.len(), 2);
    assert!(checked
        .refused
        .iter()
        .all(|row| row.problem == CallerTokenRowProblem::MissingMac));
}

#[test]
fn an_imported_hash_is_maced_and_a_forged_row_for_it_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path());
    assert!(vault
        .import_caller_token_hash("checkout", &sha256("pst_config"), now())
        .unwrap());
    raw(dir.path())
        .execute(
            "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms)
             VALUES (?1, 'reporting', ?2, NULL)",
            rusqlite::params![sha256("pst_reporting").to_vec(), now()],
        )
        .unwrap();
    // The import finds the forged row there and adds nothing: it stays refused.
    assert!(!vault
        .import_caller_token_hash("reporting", &sha256("pst_reporting"), now())
        .unwrap());
    let checked = vault.caller_tokens_checked().unwrap();
    assert_eq!(checked.tokens.len(), 1);
    assert!(!token(&checked.tokens, "pst_config").unwrap().revoked);
    assert_eq!(checked.refused.len(), 1);
    assert_eq!(checked.refused[0].caller, "reporting");
}
