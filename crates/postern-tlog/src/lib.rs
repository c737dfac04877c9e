//! `postern-tlog`: the sans-IO core of Postern's audit transparency log.
//!
//! What it is: pure functions and small types for an RFC 6962 / RFC 9162 Merkle log —
//! hashing, an incremental tree builder, roots at any past size, inclusion and consistency
//! proofs (generation from stored hashes, and verification), C2SP tlog-tiles coordinates and
//! paths, C2SP signed notes with Ed25519, C2SP tlog-checkpoint bodies, C2SP tlog-proof@v1
//! files, and the canonical audit record codec.
//!
//! What it is not: storage. It opens no file, reads no clock and draws no randomness — the
//! caller passes hashes through a [`HashReader`], times inside records, and key seeds.
//! `postern-ledger` is the IO side.
//!
//! # Tree
//!
//! Leaf hash `SHA-256(0x00 ‖ entry)`, node hash `SHA-256(0x01 ‖ left ‖ right)`, a tree of `n`
//! leaves splits at the largest power of two below `n`; the empty tree's root is `SHA-256("")`.
//! Stored hashes (one per full subtree) live in one append-only sequence; see [`tree`] for the
//! indexing. [`TreeBuilder::append`] yields the stored hashes each new leaf produces, and every
//! root or proof reads O(log n) of them.
//!
//! # Audit record encoding (version 1)
//!
//! One log entry is one [`AuditRecord`] encoded as compact JSON (RFC 8259) with:
//!
//! * exactly these keys, always present, in this order:
//!   `version` (1), `kind` (`"intent"` | `"outcome"`), `time_unix_ms`, `request_id`, `caller`,
//!   `integration`, `operation`, `method`, `path_template`, `decision` (`"allow"` | `"deny"`),
//!   `reason` (string or `null`), `status` (integer or `null`), `request_bytes` (integer or
//!   `null`), `response_bytes` (integer or `null`), `data_classes` (array of strings, sorted
//!   by byte value, unique), `intent_index` (integer or `null`; an outcome's intent entry),
//!   `hmacs` (object, keys sorted by byte value, values 64 lower-case hex characters);
//! * no whitespace; integers in shortest decimal form; strings as UTF-8 with only `"`, `\`
//!   and control characters escaped (control characters as `\n`, `\t`… or `\u00XX`);
//! * at most 65,535 bytes (the tlog-tiles entry bundle limit).
//!
//! Equal records therefore have identical bytes, and [`AuditRecord::decode`] refuses any
//! input that does not re-encode to itself. No secret and no raw body is ever a field: bodies
//! and sensitive values appear only as [`keyed_hash`] values under a per-deployment key kept
//! outside the log. A new field means a new version number.

pub mod checkpoint;
pub mod hash;
pub mod json;
pub mod note;
pub mod record;
pub mod tile;
pub mod tree;

pub use checkpoint::{Checkpoint, CheckpointError, TlogProof, TLOG_PROOF_HEADER};
pub use hash::{empty_root, leaf_hash, node_hash, Hash, HASH_SIZE};
pub use note::{ed25519_key_id, open_note, NoteError, NoteSigner, NoteVerifier, OpenedNote};
pub use record::{
    keyed_hash, AuditRecord, AuditRecordRef, Decision, KeyedHasher, RecordError, RecordKind,
    RECORD_VERSION,
};
pub use tile::{
    append_bundle_entry, decode_entry_bundle, encode_entry_bundle, encode_tile_index,
    parse_tile_path, tile_width, EntryBundle, HashTile, TileError, TileResource, MAX_ENTRY_BYTES,
    TILE_HEIGHT, TILE_WIDTH,
};
pub use tree::{
    consistency_proof, inclusion_proof, stored_hash_count, stored_hash_index, tree_root,
    verify_consistency, verify_inclusion, HashReader, ProofError, TreeBuilder, TreeError,
};
