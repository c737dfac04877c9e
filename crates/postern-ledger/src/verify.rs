//! Offline verification of a ledger directory (read-only).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use postern_tlog::{leaf_hash, Checkpoint, Hash, NoteSigner, NoteVerifier, TreeBuilder, HASH_SIZE};

use crate::error::io_error;
use crate::frame::{covered_damage, scan_frames, AppendedFrames, FrameStop, Step, Tail};
use crate::store::{
    history_tail_start, list_segments, read_rebuild_marker, CHECKPOINT_FILE,
    CHECKPOINT_HISTORY_FILE, HASHES_FILE, KEY_FILE, LOG_DIR,
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

/// How much of the checkpoint history is read at a time.
const HISTORY_CHUNK_BYTES: usize = 1 << 20;

/// What a checkpoint is opened with.
struct Keys {
    verifier: NoteVerifier,
    origin: String,
    verifier_key: String,
}

/// Checks a ledger directory offline: every record's framing and CRC, the tree recomputed
/// from the entries (against the stored hashes), every stored checkpoint's signature, and that
/// every checkpoint's root matches the recomputed tree at its size (hence they are mutually
/// consistent). `progress(bytes_done, bytes_total)` is called as segments are read (every 8192
/// entries and at the end of each segment).
///
/// The checkpoint history is never held whole: it grows by a note per checkpoint (some 6 GB a
/// year at one a second). Its notes are read a chunk of the file at a time and compared with
/// the tree as it reaches their sizes, one note held at a time; errors are still named in the
/// order of a verify that read the whole history first (see [`History`]).
pub fn verify_dir(
    dir: &Path,
    verifier_key: Option<&str>,
    progress: impl FnMut(u64, u64),
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
    let keys = Keys {
        verifier_key: verifier.verifier_key(),
        origin: verifier.name().to_string(),
        verifier,
    };
    let mut history = History::open(dir, &keys)?;
    match verify_with_history(dir, &keys, pinned, &mut history, progress) {
        Ok(report) => Ok(report),
        // Whatever is wrong in the history is named first, as when it was all read before
        // anything else: the rest of it is read before this error is reported.
        Err(error) => {
            history.finish()?;
            Err(error)
        }
    }
}

fn verify_with_history(
    dir: &Path,
    keys: &Keys,
    pinned: bool,
    history: &mut History<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VerifyError> {
    let verifier_key = keys.verifier_key.clone();
    let current_path = dir.join(CHECKPOINT_FILE);
    // Absent, it is not checked; present, it must be read (open refuses a log whose
    // checkpoint cannot be, and verify must not pass what open refuses).
    let current = match std::fs::read(&current_path) {
        Ok(note) => Some(note),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io(&current_path)(error)),
    };
    let current = match current {
        Some(note) => {
            let which = current_path.display().to_string();
            // A signed note is text: bytes that are not UTF-8 were changed, not merely
            // unreadable.
            let note = String::from_utf8(note).map_err(|e| VerifyError::CheckpointSignature {
                which: which.clone(),
                verifier_key: verifier_key.clone(),
                reason: format!(
                    "the note is not UTF-8 text (byte offset {})",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            Some(open_checkpoint(&which, &note, keys)?)
        }
        None => None,
    };
    // The latest checkpoint decides how far stored hashes are compared and what damage in a
    // segment can be a tear, before the entries are read; the history's last note stands for
    // the history (the reading of it all confirms that it is the latest there).
    let latest_checkpoint = match (history.tail_latest.clone(), current.as_ref()) {
        (Some(last), Some(current)) if last.size > current.checkpoint.size => Some(last),
        (last, current) => current.map(|c| c.checkpoint.clone()).or(last),
    };
    let checkpoints_verified_beside_history = usize::from(current.is_some());
    let mut checks = RootChecks {
        history,
        next: None,
        current,
    };

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
    checks.check(&builder)?;
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
            checks.check(&builder)
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
    // The notes beyond the entries are still checked (signature, order) before one is named.
    checks.history.finish()?;
    if let Some(c) = checks.first_unreached() {
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
    let signed_size = latest_checkpoint.as_ref().map_or(0, |c| c.size);
    if pinned && signed_size == 0 && builder.size() > 0 {
        return Err(VerifyError::Unsigned {
            entries: builder.size(),
        });
    }
    Ok(VerifyReport {
        entries: builder.size(),
        segments: segments.len(),
        root_hash: builder.root(),
        checkpoints_verified: checks.history.opened + checkpoints_verified_beside_history,
        latest_checkpoint,
        verifier_key,
        torn_tail: torn_tail.or(checks.history.torn.clone()),
        stored_hashes_checked,
    })
}

/// The checkpoints to compare with the tree as it is rebuilt, smallest size first (for equal
/// sizes, the history's before the current file's, the order verify has always named them in):
/// the history's notes as they are read, which come in that order (reading returns no note
/// after a size that goes backwards, only that error), and the current checkpoint once the
/// history's notes of its size are done.
struct RootChecks<'h, 'k> {
    history: &'h mut History<'k>,
    /// The history's next note, read and not yet reached by the tree.
    next: Option<CheckpointToCheck>,
    /// The current checkpoint, until the tree reaches it.
    current: Option<CheckpointToCheck>,
}

impl RootChecks<'_, '_> {
    /// Compares the checkpoints of the tree's size with its root. Called at every size from 0
    /// up, so no checkpoint of a smaller size is left.
    fn check(&mut self, builder: &TreeBuilder) -> Result<(), VerifyError> {
        let size = builder.size();
        loop {
            if self.next.is_none() {
                self.next = self.history.next_note()?;
            }
            let Some(note) = self.next.as_ref().filter(|n| n.checkpoint.size == size) else {
                break;
            };
            check_root(note, builder)?;
            self.next = None;
        }
        if let Some(current) = self.current.as_ref().filter(|c| c.checkpoint.size == size) {
            check_root(current, builder)?;
            self.current = None;
        }
        Ok(())
    }

    /// The first checkpoint, in the order above, that the tree did not reach.
    fn first_unreached(&self) -> Option<&CheckpointToCheck> {
        match (&self.next, &self.current) {
            (Some(next), Some(current)) if current.checkpoint.size < next.checkpoint.size => {
                Some(current)
            }
            (next, current) => next.as_ref().or(current.as_ref()),
        }
    }
}

fn check_root(c: &CheckpointToCheck, builder: &TreeBuilder) -> Result<(), VerifyError> {
    if c.checkpoint.root_hash != builder.root() {
        return Err(VerifyError::CheckpointRootMismatch {
            which: c.which.clone(),
            size: c.checkpoint.size,
        });
    }
    Ok(())
}

/// The checkpoint history (`checkpoints.log`), read a note at a time, a chunk of the file at a
/// time: what is held is a chunk, one record and one note, whatever the file's length. Verify
/// used to read it all, check every note's signature, then that sizes never go backwards,
/// before anything else; so a note that fails a check is remembered and the file read on, and
/// what is reported is what that order named first: damage to a record anywhere in the file,
/// else the first note that does not verify, else the first size that goes backwards.
struct History<'k> {
    path: PathBuf,
    keys: &'k Keys,
    /// `None` when there is no history.
    frames: Option<AppendedFrames<FileRange>>,
    /// The last note read from the end of the file before the entries, when it verifies: the
    /// latest checkpoint of a history whose sizes never go backwards.
    tail_latest: Option<Checkpoint>,
    /// Notes read so far, whatever they hold: the next one's number.
    read: u64,
    /// Notes whose signature verified.
    opened: usize,
    previous_size: Option<u64>,
    /// The last of the notes of the largest size read so far.
    latest: Option<Checkpoint>,
    bad_signature: Option<VerifyError>,
    rollback: Option<VerifyError>,
    /// A torn last note, which the next open cuts off.
    torn: Option<(PathBuf, u64)>,
    /// Whether reading it has returned an error.
    failed: bool,
}

impl<'k> History<'k> {
    /// Opens the history in `dir`, if there is one, and reads its last note from its end (as
    /// opening the ledger does).
    fn open(dir: &Path, keys: &'k Keys) -> Result<History<'k>, VerifyError> {
        let path = dir.join(CHECKPOINT_HISTORY_FILE);
        let mut history = History {
            path,
            keys,
            frames: None,
            tail_latest: None,
            read: 0,
            opened: 0,
            previous_size: None,
            latest: None,
            bad_signature: None,
            rollback: None,
            torn: None,
            failed: false,
        };
        if !history.path.exists() {
            return Ok(history);
        }
        let unreadable = |e| VerifyError::Unreadable(io_error(&history.path)(e).to_string());
        let file = File::open(&history.path).map_err(unreadable)?;
        // The notes the gateway appends while verify runs are left to the next run: both reads
        // stop at the length the file has now.
        // The tail is the one opening reads, but streamed: when no boundary is found it is the
        // whole file, which verify never holds at once.
        let (from, len) = history_tail_start(&file).map_err(unreadable)?;
        let tail = FileRange {
            file: file.try_clone().map_err(unreadable)?,
            offset: from,
            end: len,
        };
        let mut tail = AppendedFrames::new(tail, from, HISTORY_CHUNK_BYTES);
        let mut last = Vec::new();
        // Damage here is left to the reading from the start, which names it.
        while let Step::Frame(frame) = tail.next_frame().map_err(unreadable)? {
            last.clear();
            last.extend_from_slice(frame.payload);
        }
        if !last.is_empty() {
            let note = String::from_utf8_lossy(&last);
            history.tail_latest =
                Checkpoint::open(&note, std::slice::from_ref(&keys.verifier), &keys.origin).ok();
        }
        let whole = FileRange {
            file,
            offset: 0,
            end: len,
        };
        history.frames = Some(AppendedFrames::new(whole, 0, HISTORY_CHUNK_BYTES));
        Ok(history)
    }

    /// The next note, in file order, while every note so far passed its checks; `None` at the
    /// end. Once one fails, the rest of the file is read (the framing of every record, and the
    /// signatures until one fails) and the error reported is the one named first (above).
    fn next_note(&mut self) -> Result<Option<CheckpointToCheck>, VerifyError> {
        let note = self.read_note();
        self.failed |= note.is_err();
        note
    }

    fn read_note(&mut self) -> Result<Option<CheckpointToCheck>, VerifyError> {
        // With no history, or after its end (where the frames end again, with no stop), the
        // loop stops at once.
        while let Some(frames) = self.frames.as_mut() {
            let step = frames
                .next_frame()
                .map_err(|e| VerifyError::Unreadable(io_error(&self.path)(e).to_string()))?;
            let frame = match step {
                Step::Frame(frame) => frame,
                Step::End(stop) => {
                    match stop {
                        Some(FrameStop::Corrupt { offset, reason }) => {
                            return Err(VerifyError::BadRecord {
                                segment: self.path.clone(),
                                offset,
                                entry_index: self.read,
                                reason,
                            });
                        }
                        // A damaged last note that the next open will cut off: reported, as a
                        // segment's torn tail is (the gateway's next start truncates it).
                        Some(FrameStop::TornTail { offset, .. }) => {
                            self.torn = Some((self.path.clone(), offset));
                        }
                        _ => {}
                    }
                    break;
                }
            };
            let number = self.read;
            self.read += 1;
            // After a note that does not verify, only the framing of the rest is checked.
            if self.bad_signature.is_some() {
                continue;
            }
            let which = format!(
                "checkpoint #{number} in {} (byte offset {})",
                self.path.display(),
                frame.offset
            );
            let note = String::from_utf8_lossy(frame.payload);
            let opened = match open_checkpoint(&which, &note, self.keys) {
                Ok(opened) => opened,
                Err(error) => {
                    self.bad_signature = Some(error);
                    continue;
                }
            };
            self.opened += 1;
            let size = opened.checkpoint.size;
            if let Some(previous) = self.previous_size.filter(|&previous| size < previous) {
                self.rollback
                    .get_or_insert(VerifyError::CheckpointRollback {
                        which: opened.which.clone(),
                        size,
                        previous,
                    });
            }
            self.previous_size = Some(size);
            if self.latest.as_ref().is_none_or(|l| size >= l.size) {
                self.latest = Some(opened.checkpoint.clone());
            }
            if self.rollback.is_none() {
                return Ok(Some(opened));
            }
        }
        match self.bad_signature.take().or(self.rollback.take()) {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// Reads the rest of the history: the first error it holds (above), else whether the last
    /// note read from the end, which stood for the latest checkpoint, was the latest indeed.
    fn finish(&mut self) -> Result<(), VerifyError> {
        // An error already named is the history's first: the rest was read to find it.
        if self.failed {
            return Ok(());
        }
        while self.next_note()?.is_some() {}
        // Only a boundary found by chance inside a note (its bytes reading as an intact record)
        // or the file rewritten meanwhile tells them apart.
        if self.latest != self.tail_latest {
            return Err(VerifyError::Unreadable(format!(
                "{}: the last note read back from its end is not the latest of those read from its start (the file changed while it was read?); verify again",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Reads `file` from `offset` to `end`, by offset (so two readers can share one open file).
struct FileRange {
    file: File,
    offset: u64,
    end: u64,
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.file.read_at(&mut buf[..want], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

fn open_checkpoint(which: &str, note: &str, keys: &Keys) -> Result<CheckpointToCheck, VerifyError> {
    let checkpoint = Checkpoint::open(note, std::slice::from_ref(&keys.verifier), &keys.origin)
        .map_err(|e| VerifyError::CheckpointSignature {
            which: which.to_string(),
            verifier_key: keys.verifier_key.clone(),
            reason: e.to_string(),
        })?;
    Ok(CheckpointToCheck {
        which: which.to_string(),
        checkpoint,
    })
}
