//! Files of the ledger directory: layout, the signing key, segments, stored hashes.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use postern_tlog::{Hash, HashReader, NoteSigner, TreeError, HASH_SIZE};
use rand::RngCore;

use crate::error::{io_error, LedgerError};
use crate::frame::boundary_near_end;

pub(crate) const LOG_DIR: &str = "log";
pub(crate) const HASHES_FILE: &str = "tree-hashes.bin";
/// Present while the stored hashes are rewritten on open: the position the rewrite starts at.
/// Written and synced before the first rewritten byte and removed once the rewrite is synced,
/// so a crash part-way is told apart from a damaged file (whatever the cut-short rewrite left
/// past that position, zeros or stale bytes, is rewritten again rather than taken as evidence).
pub(crate) const HASHES_REBUILD_FILE: &str = "tree-hashes.rebuild";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
pub(crate) const CHECKPOINT_HISTORY_FILE: &str = "checkpoints.log";
/// How much of the checkpoint history is read back from its end at a time.
const HISTORY_STEP_BYTES: u64 = 64 * 1024;
pub(crate) const KEY_FILE: &str = "signing-key";
pub(crate) const LOCK_FILE: &str = "lock";

/// Where the tail of the checkpoint history starts, a record boundary near its end, and the
/// file's length now (notes appended later are left out). Opening the ledger and verify both
/// learn the latest checkpoint from the last note there: the history grows by a note per
/// checkpoint (some 6 GB a year at one a second), so it is read back from the end a step at a
/// time until a step holds the start of an intact record (the last step does, unless a torn
/// end, damage or one long note fills it); the start of the file when none does.
pub(crate) fn history_tail_start(file: &File) -> std::io::Result<(u64, u64)> {
    let len = file.metadata()?.len();
    let from = boundary_near_end(len, HISTORY_STEP_BYTES, |from, to| {
        read_range(file, from, to)
    })?;
    Ok((from, len))
}

/// The bytes of `file` from offset `from` to `to`.
pub(crate) fn read_range(file: &File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0; (to - from) as usize];
    file.read_exact_at(&mut data, from)?;
    Ok(data)
}

pub(crate) fn segment_name(first_index: u64) -> String {
    format!("segment-{first_index:020}.log")
}

/// Segment files in index order, with the first entry index from each name.
pub(crate) fn list_segments(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, LedgerError> {
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io_error(log_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(log_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(first) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// The rewrite marker in `dir` ([`HASHES_REBUILD_FILE`]): whether it is there, and the position
/// it names (`None` when it names none: a marker is only ever renamed into place whole, so that
/// is a file put there by hand).
pub(crate) fn read_rebuild_marker(dir: &Path) -> Result<(bool, Option<u64>), LedgerError> {
    let path = dir.join(HASHES_REBUILD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((true, text.trim().parse::<u64>().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((false, None)),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Puts a marker naming `position` in `dir`, durably: written to a temporary file and synced,
/// renamed over any marker there, and the directory synced (so a crash leaves the old marker or
/// the new one, never an empty one).
pub(crate) fn write_rebuild_marker(dir: &Path, position: u64) -> Result<(), LedgerError> {
    write_file_atomically(dir, HASHES_REBUILD_FILE, format!("{position}\n").as_bytes())
}

/// Writes `bytes` as `dir/name` whole or not at all: written aside, synced, renamed over it, and
/// the directory synced.
pub(crate) fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), LedgerError> {
    let path = dir.join(name);
    postern_keyfile::replace_file(&path, bytes).map_err(io_error(&path))
}

/// Removes the marker in `dir` (if there) once the rewrite it stood for is synced, durably.
pub(crate) fn remove_rebuild_marker(dir: &Path) -> Result<(), LedgerError> {
    let path = dir.join(HASHES_REBUILD_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&path)(e)),
        _ => {}
    }
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Takes the exclusive lock on `<dir>/lock` (an advisory `flock`, released when the file is
/// closed, including when the process dies): one writer per log directory.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, LedgerError> {
    let path = dir.join(LOCK_FILE);
    let file = open_rw(&path)?;
    // `File::try_lock` is stable since Rust 1.89 (the toolchain here is newer than the
    // workspace's declared rust-version).
    let locked = file.try_lock();
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LedgerError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(LedgerError::Io { path, source }),
    }
}

/// The origin (key name) of the log in `dir`, from its signing key file; `None` when the
/// directory has no key yet. Lets tools open an existing log without knowing its origin.
pub fn stored_origin(dir: &Path) -> Result<Option<String>, LedgerError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => NoteSigner::from_signer_key(text.trim())
            .map(|signer| Some(signer.name().to_string()))
            .map_err(|e| LedgerError::Key {
                path,
                reason: format!("not a signer key ({e})"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Loads `<dir>/signing-key`, or creates it (mode 0600) with a fresh key named `origin`.
pub(crate) fn load_or_create_signer(dir: &Path, origin: &str) -> Result<NoteSigner, LedgerError> {
    let path = dir.join(KEY_FILE);
    let key_error = |reason: String| LedgerError::Key {
        path: path.clone(),
        reason,
    };
    match postern_keyfile::read_private_file(&path) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| key_error("not a signer key (not UTF-8 text)".into()))?;
            let signer = NoteSigner::from_signer_key(text.trim())
                .map_err(|e| key_error(format!("not a signer key ({e})")))?;
            if signer.name() != origin {
                return Err(key_error(format!(
                    "the key is named {:?} but the configured origin is {origin:?}; use the origin the log was created with",
                    signer.name()
                )));
            }
            Ok(signer)
        }
        // Another user's key, or one others may read: they could sign checkpoints as this log.
        Err(e) if postern_keyfile::is_not_private(&e) => Err(key_error(format!(
            "{e}; it must be readable by postern's user alone: `chown` it to that user and `chmod 600` it"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let signer = NoteSigner::from_seed(origin, seed)
                .map_err(|e| key_error(format!("cannot create a key for this origin: {e}")))?;
            postern_keyfile::create_private_file(&path, format!("{}\n", signer.signer_key()).as_bytes())
                .map_err(io_error(&path))?;
            Ok(signer)
        }
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// The stored-hash file: 32 bytes per stored hash, in stored-hash order.
pub(crate) struct HashFile<'a> {
    pub file: &'a File,
    /// Number of hashes that may be read.
    pub count: u64,
}

impl HashReader for HashFile<'_> {
    fn read_hash(&self, index: u64) -> Result<Hash, TreeError> {
        if index >= self.count {
            return Err(TreeError::HashUnavailable {
                index,
                reason: format!("only {} hashes are committed", self.count),
            });
        }
        let mut buf = [0u8; HASH_SIZE];
        self.file
            .read_exact_at(&mut buf, index * HASH_SIZE as u64)
            .map_err(|e| TreeError::HashUnavailable {
                index,
                reason: e.to_string(),
            })?;
        Ok(Hash(buf))
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, LedgerError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_error(path))?;
    Ok(data)
}

pub(crate) fn open_rw(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error(path))
}
