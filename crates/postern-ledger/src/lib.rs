//! `postern-ledger`: durable storage for Postern's audit transparency log — the IO side of
//! `postern-tlog`.
//!
//! What it is: a directory holding CRC-framed, append-only segment files, a single sequencer
//! thread doing group commit (a batch of up to N entries, one synchronous write, then each
//! caller learns its entry's index), the stored Merkle hashes, signed C2SP checkpoints with their history,
//! the read API that tlog-tiles serving needs, and an offline verifier.
//!
//! What it is not: the Merkle math, note signing or the record format (those are
//! `postern-tlog`, sans-IO), nor HTTP serving or policy on when to fail closed (the gateway).
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/lock                            held (flock, exclusive) by the one process writing
//! <dir>/signing-key                      PRIVATE+KEY+<origin>+<keyid>+<base64>, mode 0600
//! <dir>/log/segment-<first index, 20 digits>.log
//!                                        records: u32 BE length ‖ u32 BE CRC-32C ‖ bytes,
//!                                        then, while the ledger runs with direct I/O, zeros
//!                                        to the end of the last 4 KiB block (padding)
//! <dir>/tree-hashes.bin                  stored Merkle hashes, 32 bytes each, in the
//!                                        postern-tlog stored-hash order (a cache: rebuilt
//!                                        from the segments when missing or stale)
//! <dir>/checkpoint                       the latest signed checkpoint (C2SP signed note)
//! <dir>/checkpoints.log                  every checkpoint ever signed, CRC-framed, in order
//! ```
//!
//! # Invariants
//!
//! * One writer per directory: [`Ledger::open`] takes an exclusive lock on `<dir>/lock` and
//!   fails with [`LedgerError::Locked`] while another process (or another open `Ledger`) holds
//!   it; [`Ledger::close`] and the end of the process release it. [`verify_dir`] only reads
//!   and takes no lock.
//! * An entry's index is returned only after its bytes are durable; readers never see
//!   an entry before that. Every appended entry is written, except a detached
//!   [`Link::Provisional`] one whose superseding entry joins its batch (it is left out; the
//!   indices stay dense).
//! * Only the sequencer writes segments and stored hashes, always at the committed end; a
//!   failed batch publishes nothing, its bytes are cut off durably (retried before the next
//!   batch, which is not written until that succeeds), and the next batch rewrites from the
//!   same offset.
//! * On open every segment record is read and its CRC checked (of the checkpoint history only
//!   the end, which holds the last note; [`verify_dir`] reads all of it); a torn final record
//!   is truncated and reported (zero padding after the last record is cut off silently) unless
//!   the last signed checkpoint covers it; any other damage refuses to open, naming the
//!   segment, byte offset, entry and reason ([`verify_dir`] draws the same line,
//!   `frame::covered_damage`), and changes no segment nor a stored hash the checkpoint covers.
//!   The tree is recomputed from the entries and must match the last signed checkpoint.
//! * A checkpoint is signed only if it is consistent with the previous one; the history is
//!   written before the current checkpoint is replaced.
//! * Reads check every record they pass, its length (1..=65535 bytes, within the committed
//!   bytes) and its CRC, so damage after open is refused as corruption, never trusted.

mod direct;
mod error;
mod frame;
mod ledger;
mod store;
mod verify;

pub use error::LedgerError;
pub use frame::MAX_RECORD_BYTES;
pub use ledger::{DetachedAppend, Health, Ledger, LedgerOptions, Link, OpenReport, TornTail};
pub use store::stored_origin;
pub use verify::{verify_dir, VerifyError, VerifyReport};
