use std::path::PathBuf;

use postern_tlog::{CheckpointError, NoteError, TreeError};

/// Errors from the ledger. Messages name the file, the offset or entry, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{segment}: corrupt record at byte offset {offset} (entry {entry_index}): {reason}; the ledger refuses to open — inspect with `postern audit verify`, restore the file from a backup")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        entry_index: u64,
        reason: String,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("entry of {0} bytes refused: entries must be 1..=65535 bytes")]
    EntrySize(usize),
    #[error("audit log write failed, the entry is not recorded: {reason}")]
    WriteFailed { reason: String },
    #[error("{path}: the audit log is in use by another postern process (a running `postern serve`, or a `postern audit --offline` command); stop it first, or use the running gateway's admin API (`postern audit` without --offline)")]
    Locked { path: PathBuf },
    #[error("the ledger is closed")]
    Closed,
    #[error("{0}")]
    OutOfRange(String),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Note(#[from] NoteError),
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LedgerError {
    let path = path.into();
    move |source| LedgerError::Io { path, source }
}
