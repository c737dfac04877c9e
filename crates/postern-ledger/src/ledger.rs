//! The ledger: open (recovery), the sequencer (group commit), checkpoints, reads.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use postern_tlog::{
    append_bundle_entry, leaf_hash, stored_hash_count, tile_width, tree_root, verify_consistency,
    Checkpoint, Hash, HashTile, NoteSigner, NoteVerifier, TlogProof, TreeBuilder, HASH_SIZE,
    TILE_HEIGHT, TILE_WIDTH,
};
use tokio::sync::{mpsc, oneshot};

use crate::direct::DirectSegment;
use crate::error::{io_error, LedgerError};
use crate::frame::{
    covered_damage, push_frame, scan_frames, FrameStop, Tail, FRAME_HEADER_BYTES, MAX_RECORD_BYTES,
    MAX_WRITE_BYTES, PAD_BLOCK_BYTES,
};
use crate::store::{
    history_tail_start, list_segments, load_or_create_signer, lock_dir, open_rw, read_file,
    read_range, read_rebuild_marker, remove_rebuild_marker, segment_name, sync_dir,
    write_file_atomically, write_rebuild_marker, HashFile, CHECKPOINT_FILE,
    CHECKPOINT_HISTORY_FILE, HASHES_FILE, LOG_DIR,
};

/// Default [`LedgerOptions::min_commit_interval_us`].
pub const DEFAULT_MIN_COMMIT_INTERVAL_US: u64 = 500;

/// Default [`LedgerOptions::detached_commit_interval_us`].
pub const DEFAULT_DETACHED_COMMIT_INTERVAL_US: u64 = 10_000;

/// How the ledger batches and stores entries.
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// Checkpoint origin and signing key name, e.g. `postern.example.com/audit`.
    pub origin: String,
    /// Most entries written and synced together.
    pub max_batch_entries: usize,
    /// Under concurrent load (the previous batch held more than one entry), a commit starts no
    /// sooner than this long after the previous one started: the entries of calls in flight
    /// join it instead of each paying for its own sync (PostgreSQL's `commit_delay`, but
    /// measured from the last commit). A lone caller never waits for it.
    pub min_commit_interval_us: u64,
    /// When every queued entry is detached (nobody waits for it: [`Ledger::append_detached`]),
    /// the commit starts no sooner than this long after the previous one started, so one
    /// sync covers all the detached entries of that span; an append that waits ends the
    /// hold at once. Bounds how long a detached entry may stay unwritten (and what a crash can
    /// lose of them). 0 commits detached entries like waited ones.
    pub detached_commit_interval_us: u64,
    /// A new segment starts (at a batch boundary) once the current one reaches this size.
    pub max_segment_bytes: u64,
    /// Appends waiting for the sequencer before `append` itself waits.
    pub queue_capacity: usize,
    /// Write batches with direct, synchronous I/O (`O_DIRECT | O_DSYNC`: no page cache, no
    /// separate `fdatasync`), padding the segment's last block with zeros and growing it by
    /// zeros written 1 MiB ahead, until it rolls or closes. Where the filesystem refuses direct
    /// I/O the ledger writes through the page cache and syncs, as with `false`.
    pub direct_io: bool,
}

impl LedgerOptions {
    pub fn new(origin: impl Into<String>) -> LedgerOptions {
        LedgerOptions {
            origin: origin.into(),
            max_batch_entries: 4096,
            min_commit_interval_us: DEFAULT_MIN_COMMIT_INTERVAL_US,
            detached_commit_interval_us: DEFAULT_DETACHED_COMMIT_INTERVAL_US,
            max_segment_bytes: 64 << 20,
            queue_capacity: 65_536,
            direct_io: true,
        }
    }

    /// `max_batch_entries`, at least 1.
    fn batch_limit(&self) -> usize {
        self.max_batch_entries.max(1)
    }
}

/// A torn last record removed when the ledger opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub discarded_bytes: u64,
}

/// What opening found and repaired.
#[derive(Clone, Debug)]
pub struct OpenReport {
    pub entries: u64,
    pub torn_tail: Option<TornTail>,
    /// First stored hash rewritten because the hash file was missing, short or stale.
    pub hashes_rewritten_from: Option<u64>,
    pub latest_checkpoint: Option<Checkpoint>,
}

/// Whether the last write succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy { reason: String },
}

struct Segment {
    path: PathBuf,
    /// Open for the last segment only: a full one is opened again when read (tiles and proofs,
    /// a few at once), so a log of thousands of segments does not hold a descriptor each for
    /// the life of the process (they would crowd out the listener's connections).
    file: Option<Arc<File>>,
    /// Committed bytes (readers never look past this).
    len: u64,
}

impl Segment {
    /// The last segment's file.
    fn open_file(&self) -> &Arc<File> {
        self.file.as_ref().expect("the last segment is open")
    }
}

/// Where an entry's frame starts.
#[derive(Clone, Copy, Debug)]
struct Position {
    segment_slot: usize,
    offset: u64,
}

struct State {
    size: u64,
    segments: Vec<Segment>,
    /// Position of every entry whose index is a multiple of 256 (entry bundle starts).
    bundle_starts: Vec<Position>,
}

struct LatestCheckpoint {
    checkpoint: Checkpoint,
    note: String,
}

struct Shared {
    dir: PathBuf,
    options: LedgerOptions,
    signer: NoteSigner,
    verifier: NoteVerifier,
    state: RwLock<State>,
    hashes: File,
    latest: Mutex<Option<LatestCheckpoint>>,
    health: Mutex<Health>,
    injected_write_failures: AtomicU32,
    injected_failures_after_segment_write: AtomicU32,
    injected_undo_failures: AtomicU32,
    injected_history_failures: AtomicU32,
    /// The checkpoint history's length before an append that failed and could not be cut off
    /// yet: the next checkpoint cuts it first, and appends nothing until it could.
    history_undo: Mutex<Option<u64>>,
    /// The open `<dir>/lock`, holding the exclusive lock until `close` (or drop).
    lock: Mutex<Option<File>>,
}

/// Where a waiting append learns its index (or why it failed).
type Reply = oneshot::Sender<Result<u64, LedgerError>>;

enum Command {
    Append {
        entry: Vec<u8>,
        /// `None` for a detached append: nobody waits for it.
        reply: Option<Reply>,
        link: Link,
    },
    /// Several entries written together, in order; the reply carries the first one's index.
    AppendMany {
        entries: Vec<Vec<u8>>,
        reply: Reply,
    },
    /// Answered once everything queued before it is durable (with the log's size then).
    Flush {
        reply: Reply,
    },
    Shutdown,
}

/// How a detached entry relates to another one (see [`Ledger::append_detached_linked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Written as it is.
    None,
    /// Stands until superseded: left out of its batch when that batch also holds the entry
    /// that supersedes it (the same key), which then says all it would have said.
    Provisional(u128),
    /// Supersedes the provisional entry with this key, if one is still waiting in its batch.
    Supersedes(u128),
}

/// Why [`Ledger::append_detached`] did not queue an entry.
#[derive(Debug)]
pub enum DetachedAppend {
    /// The queue is full: here is the entry back, append it with [`Ledger::append`].
    Full(Vec<u8>),
    Refused(LedgerError),
}

/// A durable, append-only transparency log in a directory. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    /// Resolves when the sequencer thread has ended; taken by `close`.
    sequencer: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    /// The sequencer thread, unparked by what must not sit out its detached hold (an append
    /// that waits, a flush, the shutdown, a full queue). Detached appends do not unpark it, so
    /// they cost it no wake-up each; an unpark costs no syscall unless it is parked.
    sequencer_thread: std::thread::Thread,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.shared.dir)
            .field("size", &self.size())
            .finish()
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`: loads or generates the signing key, checks
    /// every record, truncates a torn tail, recomputes the tree and checks it against the last
    /// signed checkpoint, then starts the sequencer task. Must run inside a Tokio runtime.
    pub async fn open(
        dir: impl Into<PathBuf>,
        options: LedgerOptions,
    ) -> Result<(Ledger, OpenReport), LedgerError> {
        let dir = dir.into();
        let (shared, writer, report) =
            tokio::task::spawn_blocking(move || open_blocking(dir, options))
                .await
                .expect("ledger open task panicked")?;
        let shared = Arc::new(shared);
        let (commands, receiver) = mpsc::channel(shared.options.queue_capacity.max(1));
        let (ended, sequencer_ended) = oneshot::channel();
        let thread_shared = shared.clone();
        let sequencer_thread = std::thread::Builder::new()
            .name("postern-audit-log".to_string())
            .spawn(move || {
                run_sequencer(&thread_shared, writer, receiver);
                let _ = ended.send(());
            })
            .map_err(|error| LedgerError::WriteFailed {
                reason: format!("cannot start the sequencer thread: {error}"),
            })?
            .thread()
            .clone();
        Ok((
            Ledger {
                shared,
                commands,
                sequencer: Arc::new(Mutex::new(Some(sequencer_ended))),
                sequencer_thread,
            },
            report,
        ))
    }

    /// Appends one entry; resolves with its index once it is durably written (after the
    /// batch's synchronous write). Fails promptly if the write fails.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, LedgerError> {
        if entry.is_empty() || entry.len() > MAX_RECORD_BYTES {
            return Err(LedgerError::EntrySize(entry.len()));
        }
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Append {
                entry,
                reply: Some(reply),
                link: Link::None,
            })
            .await
            .map_err(|_| LedgerError::Closed)?;
        self.sequencer_thread.unpark();
        response.await.map_err(|_| LedgerError::Closed)?
    }

    /// Appends several entries as one contiguous run; resolves with the first one's index once
    /// all are durable (the rest follow it in order). One round trip to the sequencer for the
    /// whole run: what a data-plane worker uses for the intents its calls are waiting on.
    pub async fn append_many(&self, entries: Vec<Vec<u8>>) -> Result<u64, LedgerError> {
        if let Some(bad) = entries
            .iter()
            .find(|entry| entry.is_empty() || entry.len() > MAX_RECORD_BYTES)
        {
            return Err(LedgerError::EntrySize(bad.len()));
        }
        if entries.is_empty() {
            return Ok(self.size());
        }
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::AppendMany { entries, reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        self.sequencer_thread.unpark();
        response.await.map_err(|_| LedgerError::Closed)?
    }

    /// Queues an entry without waiting for it to become durable: it is written with the next
    /// group commit. For entries nobody waits on (outcomes, refusals). When the queue is full the
    /// entry is handed back so the caller can wait with [`Ledger::append`] instead (back-pressure,
    /// never a silent drop).
    pub fn append_detached(&self, entry: Vec<u8>) -> Result<(), DetachedAppend> {
        self.append_detached_linked(entry, Link::None)
    }

    /// [`Ledger::append_detached`], for an entry that is [`Link::Provisional`] or
    /// [`Link::Supersedes`] another. A provisional entry whose superseding entry arrives before
    /// its batch is written is left out: the batch holds the superseding one, which says all
    /// it would have said. Neither was acknowledged, and both would have gone out in the same
    /// write (a crash during it could have kept the first and torn the second; now it keeps
    /// neither). A provisional entry still alone when its batch is written is written, and
    /// stays.
    pub fn append_detached_linked(&self, entry: Vec<u8>, link: Link) -> Result<(), DetachedAppend> {
        if entry.is_empty() || entry.len() > MAX_RECORD_BYTES {
            return Err(DetachedAppend::Refused(LedgerError::EntrySize(entry.len())));
        }
        match self.commands.try_send(Command::Append {
            entry,
            reply: None,
            link,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Command::Append { entry, .. })) => {
                // A full queue must not sit out the detached hold.
                self.sequencer_thread.unpark();
                Err(DetachedAppend::Full(entry))
            }
            Err(_) => Err(DetachedAppend::Refused(LedgerError::Closed)),
        }
    }

    /// Resolves once every entry queued before it (detached ones included) is durable, with the
    /// log's size then: what to call before a final checkpoint, so it covers them.
    pub async fn flush(&self) -> Result<u64, LedgerError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Flush { reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        self.sequencer_thread.unpark();
        response.await.map_err(|_| LedgerError::Closed)?
    }

    /// Stops the sequencer after the queued appends; later appends fail with `Closed`. Then
    /// releases the directory lock, so another process may open the log (reads through this
    /// handle keep working on what was committed).
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        self.sequencer_thread.unpark();
        let ended = self.sequencer.lock().expect("sequencer lock").take();
        if let Some(ended) = ended {
            let _ = ended.await;
        }
        drop(self.shared.lock.lock().expect("lock file lock").take());
    }

    /// Most entries one commit takes ([`LedgerOptions::max_batch_entries`]).
    pub fn max_batch_entries(&self) -> usize {
        self.shared.options.batch_limit()
    }

    /// Number of durable entries.
    pub fn size(&self) -> u64 {
        self.shared.state.read().expect("state lock").size
    }

    pub fn health(&self) -> Health {
        self.shared.health.lock().expect("health lock").clone()
    }

    /// `<name>+<hex key id>+<base64 key>`, for `postern audit key` and verifiers.
    pub fn verifier_key(&self) -> String {
        self.shared.verifier.verifier_key()
    }

    pub fn origin(&self) -> &str {
        &self.shared.options.origin
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Signs and stores a new checkpoint if the tree grew since the last one; returns it, or
    /// `None` when nothing changed. The empty tree is never signed: a signed checkpoint of size
    /// 0 kept alone would vouch for nothing, yet pass for a log's signed history. Refuses to
    /// write a checkpoint inconsistent with the previous one. Blocking (file writes and syncs).
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, LedgerError> {
        let shared = &self.shared;
        let mut latest = shared.latest.lock().expect("checkpoint lock");
        let size = self.size();
        if size == 0 || latest.as_ref().map(|l| l.checkpoint.size) == Some(size) {
            return Ok(None);
        }
        let hashes_path = shared.dir.join(HASHES_FILE);
        shared.hashes.sync_data().map_err(io_error(&hashes_path))?;
        let reader = HashFile {
            file: &shared.hashes,
            count: stored_hash_count(size),
        };
        let root_hash = tree_root(size, &reader)?;
        if let Some(previous) = latest.as_ref() {
            let old = &previous.checkpoint;
            if old.size > size {
                return Err(LedgerError::Inconsistent(format!(
                    "the log has {size} entries but the last checkpoint covers {}",
                    old.size
                )));
            }
            if old.size > 0 {
                let proof = postern_tlog::consistency_proof(old.size, size, &reader)?;
                verify_consistency(old.size, size, &old.root_hash, &root_hash, &proof).map_err(
                    |e| {
                        LedgerError::Inconsistent(format!(
                            "refusing to sign size {size}: not consistent with the checkpoint at size {} ({e})",
                            old.size
                        ))
                    },
                )?;
            }
        }
        let checkpoint = Checkpoint {
            origin: shared.options.origin.clone(),
            size,
            root_hash,
        };
        let note = checkpoint
            .sign(&shared.signer)
            .map_err(|source| LedgerError::Checkpoint {
                path: shared.dir.join(CHECKPOINT_FILE),
                source,
            })?;
        // History first, then the current checkpoint: a crash in between leaves the newer
        // one in the history, where open finds it.
        let history_path = shared.dir.join(CHECKPOINT_HISTORY_FILE);
        let mut framed = Vec::new();
        push_frame(&mut framed, note.as_bytes());
        let history = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&history_path)
            .map_err(io_error(&history_path))?;
        // What a failed append left (a part of its frame, on a full disk) is cut off before
        // anything more is appended: a complete note after it would turn it into damage that
        // refuses the next open.
        let mut undo = shared.history_undo.lock().expect("history undo lock");
        if let Some(length) = *undo {
            cut_to(&history, length).map_err(io_error(&history_path))?;
            *undo = None;
        }
        let before = history.metadata().map_err(io_error(&history_path))?.len();
        let appended = if take_injected(&shared.injected_history_failures) {
            // A short write, then the error a full disk gives.
            (&history)
                .write_all(&framed[..framed.len() / 2])
                .and_then(|()| {
                    Err(std::io::Error::other(
                        "injected failure to append a checkpoint (test)",
                    ))
                })
        } else {
            (&history)
                .write_all(&framed)
                .and_then(|()| history.sync_data())
        };
        if let Err(error) = appended {
            if cut_to(&history, before).is_err() {
                *undo = Some(before);
            }
            return Err(io_error(&history_path)(error));
        }
        drop(undo);
        write_file_atomically(&shared.dir, CHECKPOINT_FILE, note.as_bytes())?;
        *latest = Some(LatestCheckpoint {
            checkpoint: checkpoint.clone(),
            note,
        });
        Ok(Some(checkpoint))
    }

    /// The latest signed checkpoint note (served at `/log/checkpoint`).
    pub fn checkpoint_text(&self) -> Option<String> {
        let latest = self.shared.latest.lock().expect("checkpoint lock");
        latest.as_ref().map(|l| l.note.clone())
    }

    pub fn latest_checkpoint(&self) -> Option<Checkpoint> {
        let latest = self.shared.latest.lock().expect("checkpoint lock");
        latest.as_ref().map(|l| l.checkpoint.clone())
    }

    fn hash_reader_for(&self, size: u64) -> Result<HashFile<'_>, LedgerError> {
        let current = self.size();
        if size > current {
            return Err(LedgerError::OutOfRange(format!(
                "tree size {size} is larger than the log ({current} entries)"
            )));
        }
        Ok(HashFile {
            file: &self.shared.hashes,
            count: stored_hash_count(size),
        })
    }

    /// The root hash of the tree at any size up to the current one.
    pub fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        Ok(tree_root(size, &self.hash_reader_for(size)?)?)
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        Ok(postern_tlog::inclusion_proof(
            index,
            size,
            &self.hash_reader_for(size)?,
        )?)
    }

    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, LedgerError> {
        Ok(postern_tlog::consistency_proof(
            old_size,
            new_size,
            &self.hash_reader_for(new_size)?,
        )?)
    }

    /// A C2SP tlog-proof@v1 for entry `index` against the latest checkpoint.
    pub fn tlog_proof(&self, index: u64) -> Result<TlogProof, LedgerError> {
        let (checkpoint, note) = {
            let latest = self.shared.latest.lock().expect("checkpoint lock");
            let latest = latest.as_ref().ok_or_else(|| {
                LedgerError::OutOfRange("no checkpoint has been signed yet".into())
            })?;
            (latest.checkpoint.clone(), latest.note.clone())
        };
        if index >= checkpoint.size {
            return Err(LedgerError::OutOfRange(format!(
                "entry {index} is not covered by the latest checkpoint (size {}); retry after the next checkpoint",
                checkpoint.size
            )));
        }
        Ok(TlogProof {
            extra: None,
            index,
            inclusion_proof: self.inclusion_proof(index, checkpoint.size)?,
            checkpoint_note: note,
        })
    }

    /// Hash tile `tile/<level>/<n>[.p/<width>]` (concatenated hashes).
    pub fn read_tile(&self, level: u8, n: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        let size = self.size();
        let available = tile_width(level, n, size).unwrap_or(0);
        if width == 0 || u64::from(width) > TILE_WIDTH || width > available {
            return Err(LedgerError::OutOfRange(format!(
                "tile {level}/{n} of width {width} does not exist at tree size {size}"
            )));
        }
        let reader = self.hash_reader_for(size)?;
        debug_assert!(u32::from(level) * u32::from(TILE_HEIGHT) < 64);
        Ok(HashTile { level, n, width }.read(&reader)?)
    }

    /// Entry bundle `tile/entries/<n>[.p/<width>]`.
    pub fn read_entries(&self, n: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        let size = self.size();
        let available = tile_width(0, n, size).unwrap_or(0);
        if width == 0 || width > available {
            return Err(LedgerError::OutOfRange(format!(
                "entry bundle {n} of width {width} does not exist at tree size {size}"
            )));
        }
        let mut bundle = Vec::new();
        self.for_each_entry(n * TILE_WIDTH, u64::from(width), |_, entry| {
            append_bundle_entry(&mut bundle, entry).expect("entries are at most 65535 bytes");
        })?;
        Ok(bundle)
    }

    /// One entry's bytes.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let mut out = Vec::new();
        self.for_each_entry(index, 1, |_, entry| out = entry.to_vec())?;
        Ok(out)
    }

    /// Reads `count` entries from `first`, checking each record's CRC.
    fn for_each_entry(
        &self,
        first: u64,
        count: u64,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<(), LedgerError> {
        // What the read needs, copied under the lock and read after it is let go: the
        // sequencer takes it to publish every commit, and a reader holding it through disk
        // reads (anyone may fetch `/log/` tiles) would hold up every call waiting on one. The
        // bytes below a segment's committed length never change, so reading them unlocked is
        // safe.
        let (start, segments) = {
            let state = self.shared.state.read().expect("state lock");
            if first.checked_add(count).is_none_or(|end| end > state.size) {
                return Err(LedgerError::OutOfRange(format!(
                    "entries {first}..{} are beyond the log ({} entries)",
                    first.saturating_add(count),
                    state.size
                )));
            }
            let start = state.bundle_starts[(first / TILE_WIDTH) as usize];
            // A bundle's entries (at most TILE_WIDTH of them before `first`, and `count`) lie in
            // at most that many non-empty segments from the bundle's start.
            let reach = usize::try_from(count.saturating_add(TILE_WIDTH + 1)).unwrap_or(usize::MAX);
            let segments: Vec<Segment> = state.segments[start.segment_slot..]
                .iter()
                .take(reach)
                .map(|segment| Segment {
                    path: segment.path.clone(),
                    file: segment.file.clone(),
                    len: segment.len,
                })
                .collect();
            (start, segments)
        };
        let (mut slot, mut offset) = (0, start.offset);
        let mut index = (first / TILE_WIDTH) * TILE_WIDTH;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let mut payload = Vec::new();
        let mut segments = segments;
        while index < first + count {
            while offset >= segments[slot].len {
                slot += 1;
                offset = 0;
                if slot == segments.len() {
                    return Err(LedgerError::Inconsistent(format!(
                        "entry {index} is past the committed segments"
                    )));
                }
            }
            if segments[slot].file.is_none() {
                let path = &segments[slot].path;
                let file = File::open(path).map_err(io_error(path))?;
                segments[slot].file = Some(Arc::new(file));
            }
            let segment = &segments[slot];
            segment
                .open_file()
                .read_exact_at(&mut header, offset)
                .map_err(io_error(&segment.path))?;
            let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
            // The length is read from the disk, which may have been damaged since open checked
            // it: it must neither size the buffer (anyone may ask for an entry bundle, and a
            // damaged length would have the gateway allocate up to 4 GiB) nor move the read to
            // where no record starts. Every record open accepted holds 1..=MAX_RECORD_BYTES
            // bytes and ends within its segment's committed bytes; anything else is damage.
            let record_end = offset + (FRAME_HEADER_BYTES + len) as u64;
            if len == 0 || len > MAX_RECORD_BYTES || record_end > segment.len {
                return Err(LedgerError::Corrupt {
                    segment: segment.path.clone(),
                    offset,
                    entry_index: index,
                    reason: format!(
                        "record length {len} is invalid on read (must be 1..={MAX_RECORD_BYTES} and end within the segment's {} committed bytes)",
                        segment.len
                    ),
                });
            }
            if index >= first {
                payload.resize(len, 0);
                segment
                    .open_file()
                    .read_exact_at(&mut payload, offset + FRAME_HEADER_BYTES as u64)
                    .map_err(io_error(&segment.path))?;
                if crc32c::crc32c(&payload) != crc {
                    return Err(LedgerError::Corrupt {
                        segment: segment.path.clone(),
                        offset,
                        entry_index: index,
                        reason: "CRC-32C mismatch on read".into(),
                    });
                }
                visit(index, &payload);
            }
            offset += (FRAME_HEADER_BYTES + len) as u64;
            index += 1;
        }
        Ok(())
    }

    /// Makes the next `count` batch writes fail as if the disk returned an error (for tests
    /// of the fail-closed path; the failures are real error returns through the real code).
    #[doc(hidden)]
    pub fn inject_write_failures(&self, count: u32) {
        self.shared
            .injected_write_failures
            .store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` attempts to cut a failed batch's bytes off the segment fail (as
    /// when the disk is gone); combine with [`Ledger::inject_failures_after_segment_write`].
    #[doc(hidden)]
    pub fn inject_undo_failures(&self, count: u32) {
        self.shared
            .injected_undo_failures
            .store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` checkpoint appends to the history fail part-way (half the frame
    /// written, then an error), as on a full disk.
    #[doc(hidden)]
    pub fn inject_history_failures(&self, count: u32) {
        self.shared
            .injected_history_failures
            .store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` batches fail after their segment write (durable with direct
    /// I/O) and before the stored hashes are written: the failure a full disk gives there.
    #[doc(hidden)]
    pub fn inject_failures_after_segment_write(&self, count: u32) {
        self.shared
            .injected_failures_after_segment_write
            .store(count, Ordering::SeqCst);
    }
}

/// The sequencer's private state: the only writer.
struct Writer {
    builder: TreeBuilder,
    hashes_committed: u64,
    pending_hashes: Vec<Hash>,
    frames: Vec<u8>,
    /// The active segment opened for direct I/O; `None` writes through the page cache and
    /// syncs ([`LedgerOptions::direct_io`] off, or refused by the filesystem).
    direct: Option<DirectSegment>,
    /// A failed batch whose bytes could not be cut off again (the segment, and the length to
    /// cut it to): no batch is written until they are, so no caller is told an index while
    /// entries it was told had failed could come back after a crash.
    undo: Option<(Arc<File>, PathBuf, u64)>,
}

fn open_blocking(
    dir: PathBuf,
    options: LedgerOptions,
) -> Result<(Shared, Writer, OpenReport), LedgerError> {
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    // Before anything is read or repaired: a second writer must not touch the files.
    let lock = lock_dir(&dir)?;
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir).map_err(io_error(&log_dir))?;
    let signer = load_or_create_signer(&dir, &options.origin)?;
    let verifier = signer.verifier();
    let latest = load_latest_checkpoint(&dir, &verifier, &options.origin)?;

    let mut segment_paths = list_segments(&log_dir)?;
    if segment_paths.is_empty() {
        let path = log_dir.join(segment_name(0));
        open_rw(&path)?;
        sync_dir(&log_dir)?;
        segment_paths.push((0, path));
    }

    let hashes_path = dir.join(HASHES_FILE);
    let hashes = open_rw(&hashes_path)?;
    let hashes_on_disk =
        hashes.metadata().map_err(io_error(&hashes_path))?.len() / HASH_SIZE as u64;
    let checkpoint_size = latest.as_ref().map(|l| l.checkpoint.size);
    let mut sync = HashFileSync::new(
        &hashes,
        &hashes_path,
        &dir,
        hashes_on_disk,
        stored_hash_count(checkpoint_size.unwrap_or(0)),
    )?;

    let mut builder = TreeBuilder::new();
    let mut new_hashes = Vec::new();
    let mut segments = Vec::new();
    let mut bundle_starts = Vec::new();
    let mut torn_tail = None;
    let mut root_at_checkpoint = None;
    if checkpoint_size == Some(0) {
        root_at_checkpoint = Some(builder.root());
    }
    let last_slot = segment_paths.len() - 1;
    // The active segment's bytes after its last block boundary (for direct I/O).
    let mut last_tail = Vec::new();
    for (slot, (first_index, path)) in segment_paths.into_iter().enumerate() {
        if first_index != builder.size() {
            return Err(LedgerError::Corrupt {
                segment: path,
                offset: 0,
                entry_index: builder.size(),
                reason: format!(
                    "segment starts at entry {first_index} but the previous segments end at entry {}: a segment is missing or misnamed",
                    builder.size()
                ),
            });
        }
        let data = read_file(&path)?;
        let stop = scan_frames(&data, Tail::of_segment(slot == last_slot), |frame| {
            let index = builder.size();
            if index.is_multiple_of(TILE_WIDTH) {
                bundle_starts.push(Position {
                    segment_slot: slot,
                    offset: frame.offset,
                });
            }
            new_hashes.clear();
            builder.append(leaf_hash(frame.payload), &mut new_hashes);
            if Some(builder.size()) == checkpoint_size {
                root_at_checkpoint = Some(builder.root());
            }
            sync.push(&new_hashes, || {
                format!(
                    "entry {index} ({} at byte offset {})",
                    path.display(),
                    frame.offset
                )
            })
        })?;
        let mut valid_len = data.len() as u64;
        let file = open_rw(&path)?;
        match stop {
            None => {}
            Some(FrameStop::Corrupt { offset, reason }) => {
                return Err(LedgerError::Corrupt {
                    segment: path,
                    offset,
                    entry_index: builder.size(),
                    reason,
                });
            }
            Some(FrameStop::Padding { offset }) => {
                // A direct write's zeros after the last record (the ledger stopped without
                // closing): nothing to report. Cut off durably: the ledger may now write through
                // the page cache (direct I/O off, or refused), and after a crash start-up must
                // find the segment ending where those writes ended, not at the old padding's
                // end, to tell a torn last write from damage (`frame.rs`).
                valid_len = offset;
                trim_to(&file, offset).map_err(io_error(&path))?;
            }
            Some(FrameStop::TornTail { offset, reason }) => {
                // Entries a signed checkpoint covers were durable before it was signed: a crash
                // cannot tear them. Damage there is refused before anything is truncated, so
                // the bytes stay for `postern audit verify` (which applies the same rule,
                // `covered_damage`) and for whoever investigates.
                if let Some(reason) = covered_damage(checkpoint_size, builder.size(), &reason) {
                    return Err(LedgerError::Corrupt {
                        segment: path,
                        offset,
                        entry_index: builder.size(),
                        reason: format!("{reason}; the file is left as it is"),
                    });
                }
                valid_len = offset;
                trim_to(&file, offset).map_err(io_error(&path))?;
                tracing::warn!(segment = %path.display(), offset, discarded_bytes = data.len() as u64 - offset, "audit log: truncated a torn last record");
                torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset,
                    discarded_bytes: data.len() as u64 - offset,
                });
            }
        }
        if slot == last_slot {
            let len = valid_len as usize;
            last_tail = data[len - len % PAD_BLOCK_BYTES..len].to_vec();
        }
        segments.push(Segment {
            path,
            file: (slot == last_slot).then(|| Arc::new(file)),
            len: valid_len,
        });
    }
    if let Some(latest) = &latest {
        let checkpoint = &latest.checkpoint;
        match root_at_checkpoint {
            None => {
                return Err(LedgerError::Inconsistent(format!(
                    "the log has {} entries but the last signed checkpoint covers {}: entries were lost; the ledger refuses to open",
                    builder.size(),
                    checkpoint.size
                )))
            }
            Some(root) if root != checkpoint.root_hash => {
                return Err(LedgerError::Inconsistent(format!(
                    "the root recomputed from the entries at size {} differs from the last signed checkpoint: entries were altered; the ledger refuses to open — run `postern audit verify` to find the entry",
                    checkpoint.size
                )))
            }
            Some(_) => {}
        }
    }
    // Only now, the log being consistent with the last checkpoint, may the stored hashes be cut
    // to the log's size (when entries were lost, the hashes past them are what is left of them).
    let hashes_rewritten_from = sync.finish(stored_hash_count(builder.size()))?;

    let report = OpenReport {
        entries: builder.size(),
        torn_tail,
        hashes_rewritten_from,
        latest_checkpoint: latest.as_ref().map(|l| l.checkpoint.clone()),
    };
    let direct = match options.direct_io {
        true => open_direct(
            &segments.last().expect("at least one segment").path,
            &last_tail,
        )?,
        false => None,
    };
    let writer = Writer {
        hashes_committed: stored_hash_count(builder.size()),
        builder,
        pending_hashes: Vec::new(),
        frames: Vec::new(),
        direct,
        undo: None,
    };
    let shared = Shared {
        state: RwLock::new(State {
            size: writer.builder.size(),
            segments,
            bundle_starts,
        }),
        hashes,
        latest: Mutex::new(latest),
        health: Mutex::new(Health::Healthy),
        injected_write_failures: AtomicU32::new(0),
        injected_failures_after_segment_write: AtomicU32::new(0),
        injected_undo_failures: AtomicU32::new(0),
        injected_history_failures: AtomicU32::new(0),
        history_undo: Mutex::new(None),
        lock: Mutex::new(Some(lock)),
        signer,
        verifier,
        dir,
        options,
    };
    Ok((shared, writer, report))
}

/// Brings the stored-hash file in line with the recomputed hashes: compares while they agree,
/// rewrites from the first difference — except among the hashes the last signed checkpoint
/// covers, where a difference is evidence (an entry changed, or the file damaged) and opening
/// is refused with the file as it was, for `postern audit verify` to name the entry.
struct HashFileSync<'a> {
    path: &'a Path,
    file: &'a File,
    /// The ledger's directory, where the rewrite marker (`tree-hashes.rebuild`) is.
    dir: &'a Path,
    /// A rewrite that a crash cut short started here: the stored hashes from here on are no
    /// evidence, whatever they hold.
    interrupted_from: Option<u64>,
    /// The marker is on disk (found, or written for this rewrite): removed at the end.
    marker_present: bool,
    reader: Option<BufReader<&'a File>>,
    writer: Option<BufWriter<&'a File>>,
    position: u64,
    on_disk: u64,
    /// Stored hashes below this position are covered by the last signed checkpoint.
    covered: u64,
    rewritten_from: Option<u64>,
}

impl Drop for HashFileSync<'_> {
    /// Left unfinished (opening failed after a rewrite began, say the entries do not match the
    /// signed checkpoint): what is still buffered is not written.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.into_parts();
        }
    }
}

impl<'a> HashFileSync<'a> {
    fn new(
        file: &'a File,
        path: &'a Path,
        dir: &'a Path,
        on_disk: u64,
        covered: u64,
    ) -> Result<Self, LedgerError> {
        let (marker_present, interrupted_from) = read_rebuild_marker(dir)?;
        if let Some(from) = interrupted_from {
            tracing::warn!(hash_file = %path.display(), from, "audit log: the stored hashes' rewrite was cut short; rewriting them from there");
        }
        Ok(HashFileSync {
            path,
            file,
            dir,
            interrupted_from,
            marker_present,
            reader: Some(BufReader::with_capacity(1 << 20, file)),
            writer: None,
            position: 0,
            on_disk,
            covered,
            rewritten_from: None,
        })
    }

    fn switch_to_writing(&mut self) -> Result<(), LedgerError> {
        self.reader = None;
        self.rewritten_from = Some(self.position);
        // Durable before the first byte changes (a marker of an earlier rewrite that started
        // sooner stays, its range not yet rewritten whole).
        if self
            .interrupted_from
            .is_none_or(|from| from > self.position)
        {
            write_rebuild_marker(self.dir, self.position)?;
            self.marker_present = true;
        }
        self.file
            .set_len(self.position * HASH_SIZE as u64)
            .map_err(io_error(self.path))?;
        let mut writer = BufWriter::with_capacity(1 << 20, self.file);
        std::io::Seek::seek(
            &mut writer,
            std::io::SeekFrom::Start(self.position * HASH_SIZE as u64),
        )
        .map_err(io_error(self.path))?;
        self.writer = Some(writer);
        Ok(())
    }

    /// The hashes one entry added to the tree; `entry` describes that entry for an error.
    fn push(&mut self, hashes: &[Hash], entry: impl Fn() -> String) -> Result<(), LedgerError> {
        for hash in hashes {
            if let Some(reader) = self.reader.as_mut() {
                let mut buf = [0u8; HASH_SIZE];
                let stored = self.position < self.on_disk && reader.read_exact(&mut buf).is_ok();
                if stored && buf == hash.0 {
                    self.position += 1;
                    continue;
                }
                // Past where a rewrite cut short by a crash started, anything may be stored
                // (the file is synced only at the end); so may all zeros anywhere, no hash, a
                // hole such a rewrite left before the marker existed: filled again.
                let rewriting = self
                    .interrupted_from
                    .is_some_and(|from| self.position >= from);
                if stored && self.position < self.covered && !rewriting && buf != [0u8; HASH_SIZE] {
                    return Err(LedgerError::Inconsistent(format!(
                        "{} does not match the stored Merkle tree ({}), which the last signed checkpoint covers: an entry at or before it was changed, removed or reordered, or that file was damaged; the ledger refuses to open and changes no file — run `postern audit verify`, then again with that file moved aside: if the entries then match the signed checkpoints, only the file was damaged, and the next start rebuilds it",
                        entry(),
                        self.path.display()
                    )));
                }
                self.switch_to_writing()?;
            }
            let writer = self.writer.as_mut().expect("writing after a difference");
            writer.write_all(&hash.0).map_err(io_error(self.path))?;
            self.position += 1;
        }
        Ok(())
    }

    fn finish(mut self, total: u64) -> Result<Option<u64>, LedgerError> {
        debug_assert_eq!(self.position, total);
        if let Some(mut writer) = self.writer.take() {
            writer.flush().map_err(io_error(self.path))?;
        } else if self.on_disk > total {
            self.rewritten_from = Some(total);
            self.file
                .set_len(total * HASH_SIZE as u64)
                .map_err(io_error(self.path))?;
        }
        self.file.sync_data().map_err(io_error(self.path))?;
        if self.marker_present {
            remove_rebuild_marker(self.dir)?;
        }
        Ok(self.rewritten_from)
    }
}

fn load_latest_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Option<LatestCheckpoint>, LedgerError> {
    let mut candidates = Vec::new();
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(note) => candidates.push((path.clone(), note)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    let history_path = dir.join(CHECKPOINT_HISTORY_FILE);
    if history_path.exists() {
        // Opening needs only the last note: the records before the tail are left to
        // `postern audit verify`, which reads all of them.
        let (from, data) = File::open(&history_path)
            .and_then(|file| {
                let (from, len) = history_tail_start(&file)?;
                Ok((from, read_range(&file, from, len)?))
            })
            .map_err(io_error(&history_path))?;
        let mut last = None;
        let stop = scan_frames::<()>(&data, Tail::Appended, |frame| {
            last = Some(String::from_utf8_lossy(frame.payload).into_owned());
            Ok(())
        })
        .expect("infallible");
        match stop {
            Some(FrameStop::Corrupt { offset, reason }) => {
                return Err(LedgerError::Corrupt {
                    segment: history_path,
                    offset: from + offset,
                    entry_index: 0,
                    reason,
                })
            }
            // The history is appended through the page cache: never padded (`Tail::Appended`).
            Some(FrameStop::TornTail { offset, .. } | FrameStop::Padding { offset }) => {
                let file = open_rw(&history_path)?;
                trim_to(&file, from + offset).map_err(io_error(&history_path))?;
            }
            None => {}
        }
        if let Some(note) = last {
            candidates.push((history_path, note));
        }
    }
    let mut latest: Option<LatestCheckpoint> = None;
    for (path, note) in candidates {
        let checkpoint = Checkpoint::open(&note, std::slice::from_ref(verifier), origin)
            .map_err(|source| LedgerError::Checkpoint { path, source })?;
        if latest
            .as_ref()
            .is_none_or(|l| checkpoint.size > l.checkpoint.size)
        {
            latest = Some(LatestCheckpoint { checkpoint, note });
        }
    }
    Ok(latest)
}

/// Hashes a [`Link`] key by folding its halves: keys are random (a request id's 128 bits), so
/// they need no SipHash, which would cost the sequencer more than the lookup.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, _: &[u8]) {
        unreachable!("Link keys are u128s, hashed by write_u128");
    }

    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key as u64) ^ ((key >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What one commit takes from the queue.
#[derive(Default)]
struct Gathered {
    /// In order. A provisional entry superseded within the batch is left empty here (a real
    /// entry never is) and is not written.
    entries: Vec<(Vec<u8>, Option<Reply>)>,
    /// Where the batch's provisional entries are in `entries`, by key.
    provisional: HashMap<u128, usize, BuildHasherDefault<KeyHasher>>,
    flushes: Vec<Reply>,
    /// Someone waits for this commit: an append with a reply, or a flush.
    waited: bool,
    shutdown: bool,
}

impl Gathered {
    fn take(&mut self, command: Command) {
        match command {
            Command::Append { entry, reply, link } => {
                self.waited |= reply.is_some();
                match link {
                    Link::None => {}
                    Link::Provisional(key) => {
                        self.provisional.insert(key, self.entries.len());
                    }
                    Link::Supersedes(key) => {
                        if let Some(at) = self.provisional.remove(&key) {
                            self.entries[at].0 = Vec::new();
                        }
                    }
                }
                self.entries.push((entry, reply));
            }
            Command::AppendMany { entries, reply } => {
                self.waited = true;
                let mut reply = Some(reply);
                for entry in entries {
                    self.entries.push((entry, reply.take()));
                }
            }
            Command::Flush { reply } => {
                self.waited = true;
                self.flushes.push(reply);
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    /// Takes what is queued now, up to `max` entries, stopping at a shutdown.
    fn drain(&mut self, commands: &mut mpsc::Receiver<Command>, max: usize) {
        while self.can_wait(max) {
            match commands.try_recv() {
                Ok(command) => self.take(command),
                Err(_) => break,
            }
        }
    }

    /// Whether the commit may wait for more: not shutting down and room left.
    fn can_wait(&self, max: usize) -> bool {
        !self.shutdown && self.entries.len() < max
    }
}

/// The sequencer: a thread of its own (the batch's synchronous write blocks). Takes what is
/// queued; while every queued entry is detached, holds the commit for
/// [`LedgerOptions::detached_commit_interval_us`] (until the thread is unparked); waits out
/// [`LedgerOptions::min_commit_interval_us`] under load; writes and syncs the batch, then answers
/// every waiting append and flush.
fn run_sequencer(shared: &Shared, mut writer: Writer, mut commands: mpsc::Receiver<Command>) {
    let max_batch = shared.options.batch_limit();
    let interval = Duration::from_micros(shared.options.min_commit_interval_us);
    let detached_interval = Duration::from_micros(shared.options.detached_commit_interval_us);
    let mut last_commit: Option<(std::time::Instant, usize)> = None;
    // Kept from batch to batch, emptied: its room is allocated once.
    let mut provisional = HashMap::default();
    while let Some(first) = commands.blocking_recv() {
        let mut gathered = Gathered {
            provisional: std::mem::take(&mut provisional),
            ..Gathered::default()
        };
        gathered.take(first);
        gathered.drain(&mut commands, max_batch);
        // Nobody waits for any of these: let them gather for one sync, until someone waits.
        if let Some((started, _)) = last_commit.filter(|_| !detached_interval.is_zero()) {
            let until = started + detached_interval;
            while gathered.can_wait(max_batch) && !gathered.waited {
                let now = std::time::Instant::now();
                if now >= until {
                    break;
                }
                // Returns when unparked (or spuriously): take what came, look again.
                std::thread::park_timeout(until - now);
                gathered.drain(&mut commands, max_batch);
            }
        }
        // Under load, hold the commit until `interval` after the previous one started.
        let hold_until = last_commit
            .filter(|&(_, entries)| entries > 1 || gathered.entries.len() > 1)
            .map(|(started, _)| started + interval);
        if let Some(until) = hold_until {
            let now = std::time::Instant::now();
            if gathered.can_wait(max_batch) && until > now {
                std::thread::sleep(until - now);
                gathered.drain(&mut commands, max_batch);
            }
        }
        let shutdown = gathered.shutdown;
        provisional = std::mem::take(&mut gathered.provisional);
        provisional.clear();
        if gathered.entries.is_empty() {
            let size = shared.state.read().expect("state lock").size;
            for flush in gathered.flushes {
                let _ = flush.send(Ok(size));
            }
        } else {
            last_commit = Some((std::time::Instant::now(), gathered.entries.len()));
            if !commit(shared, &mut writer, gathered) {
                // The writer's state is unknown: stop (later appends fail with `Closed`).
                return;
            }
        }
        if shutdown {
            break;
        }
    }
    // A failed batch whose bytes could not be cut off yet: one more try, or its entries (whose
    // callers were told they failed) would be read back after the acknowledged ones.
    if let Some((file, path, len)) = writer.undo.take() {
        if let Err(error) = undo_failed_batch(shared, &file, len) {
            tracing::error!(segment = %path.display(), %error, "audit log: the bytes of a failed batch could not be cut off before stopping; the next start reads its entries back after the acknowledged ones");
        }
    }
    trim_padding(shared);
    commands.close();
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Append {
                reply: Some(reply), ..
            }
            | Command::AppendMany { reply, .. }
            | Command::Flush { reply } => {
                let _ = reply.send(Err(LedgerError::Closed));
            }
            _ => {}
        }
    }
}

/// Opens `path` for direct writes, or says why not: `None` (logged) where the filesystem
/// refuses direct I/O.
fn open_direct(path: &Path, tail: &[u8]) -> Result<Option<DirectSegment>, LedgerError> {
    let direct = DirectSegment::open(path, tail)?;
    if direct.is_none() {
        tracing::info!(segment = %path.display(), "audit log: the filesystem has no direct I/O; batches are written through the page cache and synced");
    }
    Ok(direct)
}

/// On a clean stop: cuts the active segment back to its records (the last direct write padded
/// its block with zeros). Best effort: padding left behind is recognised on open.
fn trim_padding(shared: &Shared) {
    let state = shared.state.read().expect("state lock");
    let last = state.segments.last().expect("at least one segment");
    if let Err(error) = trim_to(last.open_file(), last.len) {
        tracing::warn!(segment = %last.path.display(), %error, "audit log: could not trim the last segment's padding (it is skipped on open)");
    }
}

/// Cuts `file` to `len` and syncs it, if it is longer (a direct write's padding, a torn last
/// record).
fn trim_to(file: &File, len: u64) -> std::io::Result<()> {
    if file.metadata()?.len() > len {
        file.set_len(len)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Cuts `file` back to `length`, durably.
fn cut_to(file: &File, length: u64) -> std::io::Result<()> {
    file.set_len(length)?;
    file.sync_data()
}

/// Whether a failure injected by a test (`Ledger::inject_*`) is due now: takes one if any.
fn take_injected(count: &AtomicU32) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Cuts a failed batch's bytes off the segment, durably.
fn undo_failed_batch(shared: &Shared, file: &File, len: u64) -> std::io::Result<()> {
    if take_injected(&shared.injected_undo_failures) {
        return Err(std::io::Error::other(
            "injected failure to cut off a failed batch (test)",
        ));
    }
    file.set_len(len)?;
    file.sync_all()
}

/// Writes and syncs the gathered entries, records the health, and answers each waiting append
/// (its index) and flush (the size after the batch). False when the write panicked.
fn commit(shared: &Shared, writer: &mut Writer, gathered: Gathered) -> bool {
    let mut entries = Vec::with_capacity(gathered.entries.len());
    let mut replies = Vec::with_capacity(gathered.entries.len());
    // Superseded provisional entries were left empty: not written, and not counted.
    for (entry, reply) in gathered.entries {
        if !entry.is_empty() {
            entries.push(entry);
            replies.push(reply);
        }
    }
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_batch(shared, writer, &entries)
    }));
    let panicked = written.is_err();
    let result =
        written.unwrap_or_else(|_| Err("the sequencer's batch write panicked".to_string()));
    *shared.health.lock().expect("health lock") = match &result {
        Ok(_) => Health::Healthy,
        Err(reason) => {
            tracing::error!(error = %reason, "audit log: batch write failed");
            Health::Unhealthy {
                reason: reason.clone(),
            }
        }
    };
    let answer = |offset: u64| {
        result
            .as_ref()
            .map(|first| first + offset)
            .map_err(|reason| LedgerError::WriteFailed {
                reason: reason.clone(),
            })
    };
    for (i, reply) in replies.into_iter().enumerate() {
        if let Some(reply) = reply {
            let _ = reply.send(answer(i as u64));
        }
    }
    for flush in gathered.flushes {
        let _ = flush.send(answer(entries.len() as u64));
    }
    !panicked
}

/// Writes one batch: frames to the current segment (durable on return with direct I/O, else
/// written through the page cache in pieces, each synced with `fdatasync` before the next and
/// the last after the hashes), stored hashes to the hash file. Publishes the new
/// size only once the frames are durable. On failure nothing is published and the next batch
/// rewrites from the same offsets.
fn write_batch(shared: &Shared, writer: &mut Writer, entries: &[Vec<u8>]) -> Result<u64, String> {
    if take_injected(&shared.injected_write_failures) {
        return Err("injected write failure (test)".into());
    }
    if let Some((file, path, len)) = &writer.undo {
        undo_failed_batch(shared, file, *len).map_err(|e| {
            format!(
                "{}: the bytes of a failed batch could not be cut off, and nothing is written until they are: {e}",
                path.display()
            )
        })?;
        writer.undo = None;
    }
    let first_index = writer.builder.size();
    let (mut slot, segment_file, segment_path, segment_len, new_segment) = {
        let state = shared.state.read().expect("state lock");
        let last = state.segments.last().expect("at least one segment");
        (
            state.segments.len() - 1,
            last.open_file().clone(),
            last.path.clone(),
            last.len,
            last.len >= shared.options.max_segment_bytes,
        )
    };
    let (segment_file, segment_path, base_offset) = if new_segment {
        // The full segment keeps its records only, not a direct write's padding, durably: only
        // the last segment may end in padding (start-up refuses zeros anywhere else).
        trim_to(&segment_file, segment_len)
            .map_err(|e| format!("{}: {e}", segment_path.display()))?;
        let path = shared.dir.join(LOG_DIR).join(segment_name(first_index));
        let file = open_rw(&path).map_err(|e| e.to_string())?;
        file.set_len(0)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        sync_dir(&shared.dir.join(LOG_DIR)).map_err(|e| e.to_string())?;
        if writer.direct.is_some() {
            writer.direct = open_direct(&path, &[]).map_err(|e| e.to_string())?;
        }
        slot += 1;
        (Arc::new(file), path, 0)
    } else {
        (segment_file, segment_path, segment_len)
    };

    let mut builder = writer.builder.clone();
    writer.frames.clear();
    writer.pending_hashes.clear();
    let mut new_bundle_starts = Vec::new();
    for entry in entries {
        if builder.size().is_multiple_of(TILE_WIDTH) {
            new_bundle_starts.push(Position {
                segment_slot: slot,
                offset: base_offset + writer.frames.len() as u64,
            });
        }
        push_frame(&mut writer.frames, entry);
        builder.append(leaf_hash(entry), &mut writer.pending_hashes);
    }
    let hash_bytes: Vec<u8> = writer.pending_hashes.iter().flat_map(|h| h.0).collect();
    let hashes_path = shared.dir.join(HASHES_FILE);
    let mut write = || -> std::io::Result<()> {
        // Direct: durable when the write returns. Otherwise written now, synced below.
        let direct = match writer.direct.as_mut() {
            Some(direct) => match direct.write(&writer.frames, base_offset) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(segment = %segment_path.display(), error = %e, "audit log: the filesystem refused a direct write; writing through the page cache from now on");
                    writer.direct = None;
                    // Buffered writes append again, past the durable size: the zeros grown
                    // ahead go, durably, so that after a crash the segment ends where the last
                    // write through the page cache ended, which is what start-up measures a
                    // tear from (`frame.rs`).
                    trim_to(&segment_file, base_offset)?;
                    false
                }
                Err(e) => return Err(e),
            },
            None => false,
        };
        if !direct {
            // Until it is synced, writeback may have stored any of a write's pages and not the
            // others (a later one kept, an earlier one lost, reading as zeros), so a crash can
            // damage it anywhere, not only at its end. As direct writes do, the frames go out
            // in pieces of at most `MAX_WRITE_BYTES`, each synced before the next is written
            // (the last one below, after the hashes): a crash damages only the last piece,
            // which start-up forgives as a torn tail (`frame.rs`), and nothing before it.
            let mut at = base_offset;
            let mut pieces = writer.frames.chunks(MAX_WRITE_BYTES).peekable();
            while let Some(piece) = pieces.next() {
                segment_file.write_all_at(piece, at)?;
                at += piece.len() as u64;
                if pieces.peek().is_some() {
                    segment_file.sync_data()?;
                }
            }
        }
        if take_injected(&shared.injected_failures_after_segment_write) {
            return Err(std::io::Error::other(
                "injected failure after the segment write (test)",
            ));
        }
        shared
            .hashes
            .write_all_at(&hash_bytes, writer.hashes_committed * HASH_SIZE as u64)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", hashes_path.display()))
            })?;
        if !direct {
            segment_file.sync_data()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        // Drop what was written, durably (a direct write is already on disk, and its entries
        // must not come back after a crash: their callers were told it failed). The next batch
        // writes at the same offset, but may be shorter: when this fails too, the next batch
        // tries again first and is not written until it succeeds.
        if undo_failed_batch(shared, &segment_file, base_offset).is_err() {
            writer.undo = Some((segment_file.clone(), segment_path.clone(), base_offset));
        }
        if let Some(direct) = writer.direct.as_mut() {
            direct.truncated(base_offset);
        }
        return Err(format!("{}: {e}", segment_path.display()));
    }
    if let Some(direct) = writer.direct.as_mut() {
        direct.commit();
    }
    writer.hashes_committed += writer.pending_hashes.len() as u64;
    writer.builder = builder;
    let mut state = shared.state.write().expect("state lock");
    if new_segment {
        // The full segment is closed (its readers hold their own handles while they read).
        if let Some(full) = state.segments.last_mut() {
            full.file = None;
        }
        state.segments.push(Segment {
            path: segment_path,
            file: Some(segment_file),
            len: writer.frames.len() as u64,
        });
    } else {
        state.segments[slot].len = base_offset + writer.frames.len() as u64;
    }
    state.bundle_starts.extend(new_bundle_starts);
    state.size = writer.builder.size();
    Ok(first_index)
}
