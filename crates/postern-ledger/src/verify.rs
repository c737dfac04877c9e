//! Offline verification of a ledger directory (read-only).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use postern_tlog::{leaf_hash, Checkpoint, Hash, NoteSigner, NoteVerifier, TreeBuilder, HASH_SIZE};

use crate::frame::{covered_damage, scan_frames, FrameStop, Tail};
use crate::store::{
    list_segments, read_file, read_rebuild_marker, CHECKPOINT_FILE, CHECKPOINT_HISTORY_FILE,
    HASHES_FILE, KEY_FILE, LOG_DIR,
};

/// What a successful verification checked.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub entries: u64,
    pub segments: usize,
    pub root_hash: Hash,
    /// Checkpoints whose signature and root were checked (history plus the current file).
    pub checkpoints_verified: usize,
    pub latest_checkpoint: Option<Checkpoint>,
    /// The verifier key used (given, or derived from the directory's key file).
    pub verifier_key: String,
    /// A torn last record that the next open will truncate (not an error).
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Stored hashes compared with the recomputed tree.
    pub stored_hashes_checked: u64,
}

/// Why verification failed; each names the first bad thing and where it is.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unreadable(String),
    #[error("the log holds {entries} entries and no checkpoint signed by the given key covers any of them: its checkpoint files are missing or hold only the empty tree's (or the gateway stopped before signing its first entry), so nothing shows the entries were not rewritten; restore checkpoint and checkpoints.log from a backup or a witness")]
    Unsigned { entries: u64 },
    #[error("no verifier key: pass one, or keep {0} in the directory")]
    NoKey(PathBuf),
    #[error("verifier key is invalid: {0}")]
    BadKey(String),
    #[error("{segment}: bad record at byte offset {offset} (entry {entry_index}): {reason}")]
    BadRecord {
        segment: PathBuf,
        offset: u64,
        entry_index: u64,
        reason: String,
    },
    #[error("{segment}: segment starts at entry {found} but entry {expected} was expected: a segment is missing or misnamed")]
    SegmentGap {
        segment: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("entry {entry_index} (in {segment} at byte offset {offset}) does not match the stored Merkle tree ({hashes_file}): entries were changed, removed or reordered at or before this entry")]
    EntryMismatch {
        entry_index: u64,
        segment: PathBuf,
        offset: u64,
        hashes_file: PathBuf,
    },
    #[error("{which}: signature does not verify with {verifier_key}: {reason}")]
    CheckpointSignature {
        which: String,
        verifier_key: String,
        reason: String,
    },
    #[error(
        "{which}: signed root for size {size} differs from the root recomputed from the entries"
    )]
    CheckpointRootMismatch { which: String, size: u64 },
    #[error(
        "{which}: signed size {size} is beyond the log ({entries} entries): entries are missing"
    )]
    CheckpointBeyondLog {
        which: String,
        size: u64,
        entries: u64,
    },
    #[error("{which}: size {size} is smaller than the checkpoint before it ({previous}): the history went backwards")]
    CheckpointRollback {
        which: String,
        size: u64,
        previous: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct CheckpointToCheck {
    which: String,
    checkpoint: Checkpoint,
}

/// Checks a ledger directory offline: every record's framing and CRC, the tree recomputed
/// from the entries (against the stored hashes), every stored checkpoint's signature, and that
/// every checkpoint's root matches the recomputed tree at its size (hence they are mutually
/// consistent). `progress(bytes_done, bytes_total)` is called as segments are read (every 8192
/// entries and at the end of each segment).
pub fn verify_dir(
    dir: &Path,
    verifier_key: Option<&str>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VerifyError> {
    let verifier = match verifier_key {
        Some(key) => {
            NoteVerifier::from_verifier_key(key).map_err(|e| VerifyError::BadKey(e.to_string()))?
        }
        None => {
            let key_path = dir.join(KEY_FILE);
            let text = std::fs::read_to_string(&key_path)
                .map_err(|_| VerifyError::NoKey(key_path.clone()))?;
            NoteSigner::from_signer_key(text.trim())
                .map_err(|e| VerifyError::BadKey(format!("{}: {e}", key_path.display())))?
                .verifier()
        }
    };
    let pinned = verifier_key.is_some();
    let verifier_key = verifier.verifier_key();
    let origin = verifier.name().to_string();

    // Checkpoints: the history in order, then the current file.
    let mut checkpoints = Vec::new();
    let history_path = dir.join(CHECKPOINT_HISTORY_FILE);
    if history_path.exists() {
        let data = read_file(&history_path).map_err(|e| VerifyError::Unreadable(e.to_string()))?;
        let mut notes = Vec::new();
        let stop = scan_frames::<()>(&data, Tail::Appended, |frame| {
            notes.push((
                frame.offset,
                String::from_utf8_lossy(frame.payload).into_owned(),
            ));
            Ok(())
        })
        .expect("infallible");
        if let Some(FrameStop::Corrupt { offset, reason }) = stop {
            return Err(VerifyError::BadRecord {
                segment: history_path,
                offset,
                entry_index: notes.len() as u64,
                reason,
            });
        }
        for (i, (offset, note)) in notes.into_iter().enumerate() {
            let which = format!(
                "checkpoint #{i} in {} (byte offset {offset})",
                history_path.display()
            );
            checkpoints.push(open_checkpoint(
                &which,
                &note,
                &verifier,
                &origin,
                &verifier_key,
            )?);
        }
    }
    for pair in checkpoints.windows(2) {
        if pair[1].checkpoint.size < pair[0].checkpoint.size {
            return Err(VerifyError::CheckpointRollback {
                which: pair[1].which.clone(),
                size: pair[1].checkpoint.size,
                previous: pair[0].checkpoint.size,
            });
        }
    }
    let current_path = dir.join(CHECKPOINT_FILE);
    // Absent, it is not checked; present, it must be read (open refuses a log whose
    // checkpoint cannot be, and verify must not pass what open refuses).
    let current = match std::fs::read(&current_path) {
        Ok(note) => Some(note),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io(&current_path)(error)),
    };
    if let Some(note) = current {
        let which = current_path.display().to_string();
        // A signed note is text: bytes that are not UTF-8 were changed, not merely unreadable.
        let note = String::from_utf8(note).map_err(|e| VerifyError::CheckpointSignature {
            which: which.clone(),
            verifier_key: verifier_key.clone(),
            reason: format!(
                "the note is not UTF-8 text (byte offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        checkpoints.push(open_checkpoint(
            &which,
            &note,
            &verifier,
            &origin,
            &verifier_key,
        )?);
    }
    let latest_checkpoint = checkpoints
        .iter()
        .map(|c| c.checkpoint.clone())
        .max_by_key(|c| c.size);
    let mut by_size: Vec<&CheckpointToCheck> = checkpoints.iter().collect();
    by_size.sort_by_key(|c| c.checkpoint.size);

    // Entries.
    let log_dir = dir.join(LOG_DIR);
    let segments = list_segments(&log_dir).map_err(|e| VerifyError::Unreadable(e.to_string()))?;
    let mut total_bytes = 0;
    for (_, path) in &segments {
        total_bytes += std::fs::metadata(path).map_err(io(path))?.len();
    }
    let hashes_path = dir.join(HASHES_FILE);
    let mut stored = match File::open(&hashes_path) {
        Ok(file) => {
            let len = file.metadata().map_err(io(&hashes_path))?.len() / HASH_SIZE as u64;
            Some((BufReader::with_capacity(1 << 20, file), len))
        }
        Err(_) => None,
    };
    // Stored hashes are only trusted (and so only compared) up to the latest checkpoint:
    // beyond it, open rewrites them; so it does from where a rewrite cut short by a crash
    // began (its marker).
    let (_, interrupted_from) =
        read_rebuild_marker(dir).map_err(|error| VerifyError::Unreadable(error.to_string()))?;
    let compare_limit = latest_checkpoint
        .as_ref()
        .map(|c| postern_tlog::stored_hash_count(c.size))
        .unwrap_or(0)
        .min(interrupted_from.unwrap_or(u64::MAX));
    let mut stored_hashes_checked = 0u64;
    let mut builder = TreeBuilder::new();
    let mut new_hashes = Vec::new();
    let mut next_checkpoint = 0;
    let mut check_checkpoints = |builder: &TreeBuilder| -> Result<(), VerifyError> {
        while let Some(c) = by_size.get(next_checkpoint) {
            if c.checkpoint.size != builder.size() {
                break;
            }
            if c.checkpoint.root_hash != builder.root() {
                return Err(VerifyError::CheckpointRootMismatch {
                    which: c.which.clone(),
                    size: c.checkpoint.size,
                });
            }
            next_checkpoint += 1;
        }
        Ok(())
    };
    check_checkpoints(&builder)?;
    let mut done_bytes = 0;
    let mut torn_tail = None;
    let last_slot = segments.len().saturating_sub(1);
    for (slot, (first_index, path)) in segments.iter().enumerate() {
        if *first_index != builder.size() {
            return Err(VerifyError::SegmentGap {
                segment: path.clone(),
                expected: builder.size(),
                found: *first_index,
            });
        }
        let data = std::fs::read(path).map_err(io(path))?;
        let stop = scan_frames(&data, Tail::of_segment(slot == last_slot), |frame| {
            let index = builder.size();
            if index.is_multiple_of(8192) {
                progress(done_bytes + frame.offset, total_bytes);
            }
            new_hashes.clear();
            builder.append(leaf_hash(frame.payload), &mut new_hashes);
            if let Some((reader, len)) = stored.as_mut() {
                let first_position = postern_tlog::stored_hash_count(index);
                for (position, hash) in (first_position..).zip(new_hashes.iter()) {
                    if position >= compare_limit.min(*len) {
                        break;
                    }
                    let mut buf = [0u8; HASH_SIZE];
                    reader.read_exact(&mut buf).map_err(io(&hashes_path))?;
                    // All zeros: a hole a cut-short rewrite left, as open takes it.
                    if buf != hash.0 && buf != [0u8; HASH_SIZE] {
                        return Err(VerifyError::EntryMismatch {
                            entry_index: index,
                            segment: path.clone(),
                            offset: frame.offset,
                            hashes_file: hashes_path.clone(),
                        });
                    }
                    stored_hashes_checked += 1;
                }
            }
            check_checkpoints(&builder)
        })?;
        match stop {
            None => {}
            Some(FrameStop::TornTail { offset, reason }) => {
                // As open decides: damage to an entry a signed checkpoint covers is a bad record
                // (named here, with the scan's reason), not a torn write; only what no
                // checkpoint covers can be a crash's tear.
                let entry_index = builder.size();
                let covered_by = latest_checkpoint.as_ref().map(|c| c.size);
                if let Some(reason) = covered_damage(covered_by, entry_index, &reason) {
                    return Err(VerifyError::BadRecord {
                        segment: path.clone(),
                        offset,
                        entry_index,
                        reason,
                    });
                }
                torn_tail = Some((path.clone(), offset));
            }
            Some(FrameStop::Padding { .. }) => {}
            Some(FrameStop::Corrupt { offset, reason }) => {
                return Err(VerifyError::BadRecord {
                    segment: path.clone(),
                    offset,
                    entry_index: builder.size(),
                    reason,
                })
            }
        }
        done_bytes += data.len() as u64;
        progress(done_bytes, total_bytes);
    }
    if let Some(c) = by_size.get(next_checkpoint) {
        return Err(VerifyError::CheckpointBeyondLog {
            which: c.which.clone(),
            size: c.checkpoint.size,
            entries: builder.size(),
        });
    }
    // A key given by the verifier (not read from the directory) pins what must have signed the
    // log: entries no checkpoint covers at all are not verified (deleting the checkpoint files,
    // or keeping only a signed checkpoint of the empty tree, would otherwise pass a rewritten
    // log, and the next checkpoint would sign it).
    let signed_size = checkpoints
        .iter()
        .map(|c| c.checkpoint.size)
        .max()
        .unwrap_or(0);
    if pinned && signed_size == 0 && builder.size() > 0 {
        return Err(VerifyError::Unsigned {
            entries: builder.size(),
        });
    }
    Ok(VerifyReport {
        entries: builder.size(),
        segments: segments.len(),
        root_hash: builder.root(),
        checkpoints_verified: checkpoints.len(),
        latest_checkpoint,
        verifier_key,
        torn_tail,
        stored_hashes_checked,
    })
}

fn open_checkpoint(
    which: &str,
    note: &str,
    verifier: &NoteVerifier,
    origin: &str,
    verifier_key: &str,
) -> Result<CheckpointToCheck, VerifyError> {
    let checkpoint =
        Checkpoint::open(note, std::slice::from_ref(verifier), origin).map_err(|e| {
            VerifyError::CheckpointSignature {
                which: which.to_string(),
                verifier_key: verifier_key.to_string(),
                reason: e.to_string(),
            }
        })?;
    Ok(CheckpointToCheck {
        which: which.to_string(),
        checkpoint,
    })
}
