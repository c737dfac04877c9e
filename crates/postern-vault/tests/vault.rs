//! The vault as the CLI and gateway use it: real SQLite files in a temp dir.

use postern_vault::{SecretState, Vault, VaultError};

const CANARY: &[u8] = b"sk_live_CANARY_vault_plaintext_7f3a";

fn now() -> i64 {
    1_800_000_000_000
}

#[test]
fn set_get_rotate_rollback_revoke_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    assert_eq!(
        vault.set("stripe-live", "static", CANARY, now()).unwrap(),
        1
    );
    assert!(matches!(
        vault.set("stripe-live", "static", b"x", now()),
        Err(VaultError::AlreadyExists(_))
    ));
    assert_eq!(
        vault.current("stripe-live").unwrap().unwrap().expose(),
        CANARY
    );
    let generation = vault.generation().unwrap();

    assert_eq!(
        vault
            .rotate("stripe-live", b"new-value", 3_600_000, now() + 10)
            .unwrap(),
        2
    );
    assert!(vault.generation().unwrap() > generation);
    assert_eq!(
        vault.current("stripe-live").unwrap().unwrap().expose(),
        b"new-value"
    );
    let meta = &vault.list().unwrap()[0];
    assert_eq!(meta.current_version, 2);
    assert_eq!(meta.rollback_until_ms, Some(now() + 10 + 3_600_000));
    // The replaced value, while its window lasts (a gateway looks for it in answers).
    assert_eq!(
        vault
            .previous("stripe-live", now() + 20)
            .unwrap()
            .unwrap()
            .expose(),
        CANARY
    );
    assert!(vault
        .previous("stripe-live", now() + 20 + 3_600_000)
        .unwrap()
        .is_none());

    // Rollback inside the window restores v1; outside it there is nothing to roll back to.
    assert_eq!(vault.rollback("stripe-live", now() + 20).unwrap(), 1);
    assert_eq!(
        vault.current("stripe-live").unwrap().unwrap().expose(),
        CANARY
    );
    vault
        .rotate("stripe-live", b"v3", 1_000, now() + 30)
        .unwrap();
    assert!(matches!(
        vault.rollback("stripe-live", now() + 5_000),
        Err(VaultError::NothingToRollBack(_))
    ));

    assert!(vault.previous("stripe-live", now() + 35).unwrap().is_some());
    // Inside its window nothing is erased; past it, the previous version's material is.
    // An erasure is a change (a gateway builds again without the erased version); none is not.
    let generation = vault.generation().unwrap();
    assert_eq!(vault.erase_expired(now() + 35).unwrap(), 0);
    assert_eq!(vault.generation().unwrap(), generation);
    assert_eq!(vault.erase_expired(now() + 2_000).unwrap(), 1);
    assert_eq!(vault.generation().unwrap(), generation + 1);
    assert!(vault.previous("stripe-live", now() + 35).unwrap().is_none());
    assert_eq!(vault.erase_expired(now() + 3_000).unwrap(), 0);
    vault.revoke("stripe-live", now() + 40).unwrap();
    assert!(vault.current("stripe-live").unwrap().is_none());
    assert!(vault.previous("stripe-live", now() + 41).unwrap().is_none());
    assert_eq!(vault.list().unwrap()[0].state, SecretState::Revoked);
    let actions: Vec<String> = vault
        .history("stripe-live")
        .unwrap()
        .into_iter()
        .map(|h| h.action)
        .collect();
    assert_eq!(
        actions,
        ["set", "rotate", "rollback", "rotate", "expire", "revoke"]
    );
    // A revoked name can be given a new value.
    assert_eq!(
        vault
            .set("stripe-live", "static", b"fresh", now() + 50)
            .unwrap(),
        4
    );
    assert_eq!(
        vault.current("stripe-live").unwrap().unwrap().expose(),
        b"fresh"
    );
}

#[test]
fn values_are_encrypted_at_rest_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vault = Vault::open_with(dir.path(), None).unwrap();
        vault.set("canary", "static", CANARY, now()).unwrap();
        vault
            .rotate("canary", b"sk_live_CANARY_second_value_91b2", 60_000, now())
            .unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for canary in [CANARY, b"sk_live_CANARY_second_value_91b2".as_slice()] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary),
                "plaintext secret found on disk"
            );
        }
    }
    let vault = Vault::open_with(dir.path(), None).unwrap();
    assert_eq!(
        vault.current("canary").unwrap().unwrap().expose(),
        b"sk_live_CANARY_second_value_91b2"
    );
    assert!(!format!("{:?}", vault.current("canary").unwrap()).contains("CANARY"));
}

#[test]
fn master_key_file_is_private_and_wrong_or_missing_key_refuses_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vault = Vault::open_with(dir.path(), None).unwrap();
        vault.set("a", "static", b"value-a", now()).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(dir.path().join("vault.db")).unwrap();

    let wrong = "0".repeat(64);
    let error = Vault::open_with(dir.path(), Some(&wrong)).unwrap_err();
    assert!(matches!(error, VaultError::WrongKey { .. }), "{error}");
    assert!(error.to_string().contains("POSTERN_MASTER_KEY"));

    let error = Vault::open_with(dir.path(), Some("not a key")).unwrap_err();
    assert!(matches!(error, VaultError::MalformedEnvKey));

    let key = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    std::fs::rename(
        dir.path().join("master.key"),
        dir.path().join("master.key.bak"),
    )
    .unwrap();
    let error = Vault::open_with(dir.path(), None).unwrap_err();
    assert!(matches!(error, VaultError::MissingKey { .. }), "{error}");
    assert!(
        !dir.path().join("master.key").exists(),
        "no new key was generated over the vault"
    );
    assert_eq!(
        std::fs::read(dir.path().join("vault.db")).unwrap(),
        before,
        "nothing changed"
    );

    // The same key through the environment opens it.
    let vault = Vault::open_with(dir.path(), Some(key.trim())).unwrap();
    assert_eq!(vault.current("a").unwrap().unwrap().expose(), b"value-a");
}

/// An empty vault.db is not an absent vault: opening it, with any key, changes nothing and says
/// what to do.
#[test]
fn an_empty_vault_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault.db"), b"").unwrap();
    for key in [None, Some("0".repeat(64))] {
        let error = Vault::open_with(dir.path(), key.as_deref()).unwrap_err();
        assert!(matches!(error, VaultError::EmptyFile { .. }), "{error}");
        assert!(error.to_string().contains("restore it"), "{error}");
    }
    assert_eq!(std::fs::read(dir.path().join("vault.db")).unwrap(), b"");
    assert!(!dir.path().join("master.key").exists());
}

/// Writers in several threads, each with its own connection as separate processes have, wait
/// for each other instead of failing with "database is locked".
#[test]
fn concurrent_writers_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    drop(Vault::open_with(dir.path(), None).unwrap());
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let vault = Vault::open_with(&dir, None).unwrap();
                for round in 0..5 {
                    let name = format!("w{writer}");
                    let version = match round {
                        0 => vault.set(&name, "static", b"first", now()),
                        _ => vault.rotate(&name, b"next", 60_000, now()),
                    };
                    assert_eq!(version.unwrap(), round + 1);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let vault = Vault::open_with(dir.path(), None).unwrap();
    for writer in 0..8 {
        let name = format!("w{writer}");
        assert_eq!(vault.current(&name).unwrap().unwrap().version, 5);
    }
}

#[test]
fn tampered_ciphertext_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    vault.set("a", "static", b"value-a", now()).unwrap();
    vault.set("b", "static", b"value-b", now()).unwrap();
    drop(vault);
    // Move b's sealed value onto a: the associated data binds it to its name.
    let conn = rusqlite::Connection::open(dir.path().join("vault.db")).unwrap();
    conn.execute(
        "UPDATE secret_versions SET wrapped_key = (SELECT wrapped_key FROM secret_versions WHERE name='b'),
                                    sealed_value = (SELECT sealed_value FROM secret_versions WHERE name='b')
         WHERE name = 'a'",
        [],
    )
    .unwrap();
    drop(conn);
    let vault = Vault::open_with(dir.path(), None).unwrap();
    assert!(matches!(vault.current("a"), Err(VaultError::Corrupt(_))));
}

#[test]
fn caller_tokens_issue_and_revoke() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    vault
        .add_caller_token("checkout", "pst_new", now())
        .unwrap();
    let config_hash: [u8; 32] = sha2::Sha256::digest(b"pst_from_config").into();
    let count = vault
        .revoke_caller("checkout", &[config_hash], now())
        .unwrap();
    assert_eq!(count, 2);
    let tokens = vault.caller_tokens().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.revoked && t.caller == "checkout"));
}

#[test]
fn a_rotation_revokes_and_issues_in_one_change() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    vault
        .add_caller_token("checkout", "pst_old", now())
        .unwrap();
    let before = vault.generation().unwrap();
    let count = vault
        .rotate_caller("checkout", &[], "pst_rotated", now())
        .unwrap();
    assert_eq!(count, 1);
    // One generation step: a gateway polling the vault sees both changes or neither.
    assert_eq!(vault.generation().unwrap(), before + 1);
    let rotated: [u8; 32] = sha2::Sha256::digest(b"pst_rotated").into();
    let tokens = vault.caller_tokens().unwrap();
    assert_eq!(tokens.len(), 2);
    for token in &tokens {
        assert_eq!(token.revoked, token.token_sha256 != rotated, "{token:?}");
    }
}

#[test]
fn list_reports_age_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    vault.set("old", "static", b"v", now()).unwrap();
    vault.touch(&[("old".to_string(), now() + 5)]).unwrap();
    let meta = &vault.list().unwrap()[0];
    assert_eq!(meta.last_used_ms, Some(now() + 5));
    assert_eq!(meta.age_days(now() + 91 * 86_400_000), 91);
}

#[test]
fn dataflow_counts_accumulate_per_day_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    let row = |integration: &str, class: &str, day: &str, count: u64| postern_vault::DataflowRow {
        integration: integration.to_string(),
        caller: "checkout".to_string(),
        class: class.to_string(),
        direction: "request".to_string(),
        day: day.to_string(),
        count,
    };
    vault
        .add_dataflow(&[
            row("stripe", "pii.email", "2026-11-27", 2),
            row("openai", "pii.phone", "2026-11-28", 1),
        ])
        .unwrap();
    vault
        .add_dataflow(&[row("stripe", "pii.email", "2026-11-27", 3)])
        .unwrap();
    let all = vault.dataflow(None, None).unwrap();
    assert_eq!(all.len(), 2);
    let stripe = vault.dataflow(Some("stripe"), None).unwrap();
    assert_eq!(stripe, vec![row("stripe", "pii.email", "2026-11-27", 5)]);
    assert_eq!(vault.dataflow(None, Some("2026-11-28")).unwrap().len(), 1);
}

/// A master key file other users may read (or one planted by another user) is refused with
/// the fix, before anything is opened or written.
#[cfg(unix)]
#[test]
fn a_master_key_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let vault = Vault::open_with(dir.path(), None).unwrap();
        vault.set("a", "static", b"value-a", now()).unwrap();
    }
    let key_file = dir.path().join("master.key");
    let before = std::fs::read(dir.path().join("vault.db")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Vault::open_with(dir.path(), None).unwrap_err();
    assert!(
        matches!(error, VaultError::KeyFileNotPrivate { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("mode 644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
    assert!(message.contains("POSTERN_MASTER_KEY"), "{message}");
    assert_eq!(std::fs::read(dir.path().join("vault.db")).unwrap(), before);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    assert_eq!(vault.current("a").unwrap().unwrap().expose(), b"value-a");
}

/// Names that would read as path steps (`.`, `..`) or hold no letter or digit, and kinds that
/// are empty, long or hold anything but a label's characters, are refused.
#[test]
fn names_and_kinds_are_labels() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    for name in [".", "..", "...", "_", "-", "", "a/b", "a b"] {
        let error = vault.set(name, "static", b"v", now()).unwrap_err();
        assert!(
            matches!(error, VaultError::InvalidName(_)),
            "{name:?}: {error}"
        );
    }
    let long = "k".repeat(65);
    for kind in ["", long.as_str(), "a%20b", "x\u{1b}[2J", "oauth 2"] {
        let error = vault.set("a", kind, b"v", now()).unwrap_err();
        assert!(
            matches!(error, VaultError::InvalidKind(_)),
            "{kind:?}: {error}"
        );
    }
    assert!(vault.list().unwrap().is_empty(), "nothing was stored");
    vault
        .set("9.stripe_live-key", "oauth2.client", b"v", now())
        .unwrap();
    vault.set("_legacy", "static", b"v", now()).unwrap();
}

/// Processes opening a new vault at the same moment (a `creds set` beside `serve`, replicas)
/// all open it, with one key between them: the schema and key check are written in one
/// transaction, and a key file another made first is the one used.
#[test]
fn a_new_vault_opened_by_many_at_once_opens_for_each() {
    for env_key in [Some("0".repeat(64)), None] {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|opener| {
                    let (dir, start) = (dir.path().to_path_buf(), start.clone());
                    let env_key = env_key.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        let vault = Vault::open_with(&dir, env_key.as_deref())
                            .unwrap_or_else(|error| panic!("opener {opener}: {error} {error:?}"));
                        vault
                            .set(&format!("c{opener}"), "static", b"v", now())
                            .unwrap();
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap();
            }
            let vault = Vault::open_with(dir.path(), env_key.as_deref()).unwrap();
            assert_eq!(vault.list().unwrap().len(), 8);
        }
    }
}

/// A credential's value is read in one snapshot: another process's rotations and rollbacks
/// (which erase the version rolled back from) never make a read fail.
#[test]
fn reading_a_credential_while_another_process_rolls_it_back_never_fails() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let dir = tempfile::tempdir().unwrap();
    let writer = Vault::open_with(dir.path(), None).unwrap();
    writer.set("k", "static", b"v1", now()).unwrap();
    let (stop, reads) = (
        std::sync::Arc::new(AtomicBool::new(false)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let reader = {
        let (dir, stop, reads) = (dir.path().to_path_buf(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            let vault = Vault::open_with(&dir, None).unwrap();
            while !stop.load(Relaxed) {
                let value = vault.current("k").unwrap_or_else(|error| {
                    panic!("read {} failed: {error}", reads.load(Relaxed));
                });
                assert!(value.is_some());
                reads.fetch_add(1, Relaxed);
            }
        })
    };
    // Changes until the reader has read through many of them (bounded in time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut changes = 0;
    while (reads.load(Relaxed) < 2_000 || changes < 200) && std::time::Instant::now() < deadline {
        writer.rotate("k", b"v2", 60_000, now()).unwrap();
        writer.rollback("k", now()).unwrap();
        changes += 1;
    }
    stop.store(true, Relaxed);
    reader.join().unwrap();
    assert!(
        reads.load(Relaxed) >= 2_000,
        "{} reads",
        reads.load(Relaxed)
    );
}

/// A row put in vault.db by something other than Postern, with a name Postern never writes (a
/// metric label, a table cell), is left out of the list; a kind, which older versions did not
/// check, is listed as it is (and shown escaped).
#[test]
fn rows_with_names_postern_never_writes_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_with(dir.path(), None).unwrap();
    vault.set("good", "static", b"v", now()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("vault.db")).unwrap();
    for (name, kind) in [("a\"} 1\nx{", "static"), ("fine", "static\u{1b}[2J")] {
        conn.execute(
            "INSERT INTO secrets (name, kind, state, current_version, created_ms) VALUES (?1, ?2, 'active', 1, 0)",
            rusqlite::params![name, kind],
        )
        .unwrap();
    }
    let names: Vec<String> = vault.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["fine", "good"]);
}
