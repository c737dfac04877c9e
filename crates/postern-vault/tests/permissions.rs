//! File modes of the vault and its directory under a permissive umask. A test binary of its own:
//! the umask is the process's, and no other test should run under 0o000.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use postern_vault::Vault;

#[cfg(any(target_os = "linux", target_os = "android"))]
type ModeT = u32;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
type ModeT = u16;

extern "C" {
    fn umask(mask: ModeT) -> ModeT;
}

/// Every file created from here on gets exactly the mode it is created with.
fn umask_zero() {
    // SAFETY: umask(2) only sets the process's file mode creation mask; it cannot fail.
    unsafe { umask(0) };
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_os_string();
    path.push(suffix);
    PathBuf::from(path)
}

fn assert_mode(path: &Path, expected: u32) {
    assert_eq!(
        mode(path),
        expected,
        "{} is {:04o}, expected {expected:04o}",
        path.display(),
        mode(path)
    );
}

/// A new vault under umask 0: the data directory (and each parent created with it) 0700, the
/// database and the WAL side files SQLite creates next to it 0600.
#[test]
fn a_new_vault_is_private_under_a_permissive_umask() {
    umask_zero();
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("srv");
    let data_dir = parent.join("postern-data");
    let vault = Vault::open_with(&data_dir, None).unwrap();
    vault.set("stripe-live", "static", b"sk_live_x", 1).unwrap();
    assert_mode(&parent, 0o700);
    assert_mode(&data_dir, 0o700);
    let db = data_dir.join("vault.db");
    assert_mode(&db, 0o600);
    assert_mode(&data_dir.join("master.key"), 0o600);
    // journal_mode=WAL: -wal and -shm exist while the vault is open; the rollback -journal
    // (0600 too) lives only while the first open switches to WAL.
    for suffix in ["-wal", "-shm"] {
        assert_mode(&side(&db, suffix), 0o600);
    }
    assert!(!side(&db, "-journal").exists());
    // Every file in the directory, whatever SQLite named it.
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        assert_mode(&entry.unwrap().path(), 0o600);
    }
}

/// A vault left readable by others (by an older version, or files copied in with a loose mode)
/// is narrowed when opened: the database and the side files already beside it (a vault still
/// open elsewhere, or left by a crash), not only the database.
#[test]
fn an_existing_vault_and_its_side_files_are_narrowed_on_open() {
    umask_zero();
    let dir = tempfile::tempdir().unwrap();
    let first = Vault::open_with(dir.path(), None).unwrap();
    first.set("stripe-live", "static", b"sk_live_x", 1).unwrap();
    let db = dir.path().join("vault.db");
    let files = [db.clone(), side(&db, "-wal"), side(&db, "-shm")];
    for file in &files {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let second = Vault::open_with(dir.path(), None).unwrap();
    assert_eq!(
        second.current("stripe-live").unwrap().unwrap().expose(),
        b"sk_live_x"
    );
    for file in &files {
        assert_mode(file, 0o600);
    }
    drop(first);
}

/// Why the vault in `data_dir` was not opened.
fn refusal(data_dir: &Path) -> String {
    match Vault::open_with(data_dir, None) {
        Ok(_) => panic!("{} opened", data_dir.display()),
        Err(error) => error.to_string(),
    }
}

/// A vault file that is a symbolic link (even to a file of the same owner), or a directory, is
/// refused by name with the fix, not followed: the link's target is neither chmodded nor opened
/// as the vault, and nothing is created (no master key, no file at a dangling link's target).
/// The side files SQLite opens beside it alike.
#[test]
fn a_vault_file_that_is_a_symbolic_link_is_refused_not_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"someone else's data").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let db = data_dir.join("vault.db");
    let refused = |expected: &str| {
        let error = refusal(&data_dir);
        assert!(
            error.contains(&format!(
                "{} is {expected}, not a regular file",
                db.display()
            )),
            "{error}"
        );
        assert!(
            error.contains(&format!("mv TARGET {}", db.display())),
            "{error}"
        );
        error
    };

    symlink(&elsewhere, &db).unwrap();
    refused("a symbolic link");
    assert_mode(&elsewhere, 0o644);
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"someone else's data");
    assert!(!data_dir.join("master.key").exists(), "nothing was created");

    // A dangling link: its target is not created either.
    let nowhere = dir.path().join("nowhere.db");
    std::fs::remove_file(&db).unwrap();
    symlink(&nowhere, &db).unwrap();
    refused("a symbolic link");
    assert!(!nowhere.exists());

    std::fs::remove_file(&db).unwrap();
    std::fs::create_dir(&db).unwrap();
    refused("a directory");
    std::fs::remove_dir(&db).unwrap();

    // A side file that is a link, beside a real vault.
    let vault = Vault::open_with(&data_dir, None).unwrap();
    vault.set("stripe-live", "static", b"sk_live_x", 1).unwrap();
    drop(vault);
    let wal = side(&db, "-wal");
    let _ = std::fs::remove_file(&wal);
    symlink(&elsewhere, &wal).unwrap();
    let error = refusal(&data_dir);
    assert!(
        error.contains(&format!("{} is a symbolic link", wal.display())),
        "{error}"
    );
    assert_mode(&elsewhere, 0o644);
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"someone else's data");
    std::fs::remove_file(&wal).unwrap();
    let vault = Vault::open_with(&data_dir, None).unwrap();
    assert_eq!(
        vault.current("stripe-live").unwrap().unwrap().expose(),
        b"sk_live_x"
    );
}
