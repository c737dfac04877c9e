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
