//! `postern-vault`: where vendor credentials live — encrypted at rest, versioned, rotated and
//! revoked — and where caller tokens issued or revoked at run time are kept.
//!
//! # Storage
//! One SQLite file, `<data_dir>/vault.db` (WAL mode, so `postern creds …` and a running
//! `postern serve` can share it). Every mutation bumps a `generation` counter; a running gateway
//! polls it and reloads what changed, so a rotation or revocation made by the CLI takes effect
//! without a restart.
//!
//! # Encryption (envelope)
//! Each secret version has its own random 256-bit data key. The value is sealed with
//! XChaCha20-Poly1305 under that data key (associated data: `value|<name>|<version>`), and the
//! data key is sealed under the master key (associated data: `dek|<name>|<version>`), so a
//! ciphertext cannot be moved to another name or version undetected.
//!
//! Caller-token rows (a token's SHA-256, its caller, when it was issued and revoked) are not
//! secret but decide who a caller is: each carries an HMAC-SHA256 under a key derived from the
//! master key, and a row whose MAC is missing or wrong counts as no token at all
//! ([`Vault::caller_tokens_checked`]), so writing to the file without the key issues, renames
//! or un-revokes no token.
//!
//! The master key is 32 bytes from `POSTERN_MASTER_KEY` (64 hex digits or base64), else from
//! `<data_dir>/master.key` (created on first run with mode 0600). A known value sealed under the
//! master key at creation (`key_check`) detects a wrong key at open: the vault then refuses to
//! open and nothing is changed.
//!
//! # What this crate is not
//! It does not know HTTP or how a secret is injected (the gateway decides that from the config),
//! and it never formats a secret value: [`SecretValue`] has a redacting `Debug` and no `Display`,
//! and no error message contains one.

mod crypto;
mod store;

pub use crypto::{MasterKey, MasterKeyOrigin};

/// The longest rollback window a rotation may keep (a year), in seconds.
pub const MAX_ROLLBACK_WINDOW_SECONDS: i64 = 365 * 24 * 3600;
pub use store::{
    valid_kind, valid_name, CallerTokenRowProblem, CallerTokenState, CallerTokens, DataflowRow,
    HistoryEntry, RefusedCallerToken, SecretMeta, SecretState, SecretValue, Vault, VaultError,
    MASTER_KEY_ENV, MASTER_KEY_FILE, VAULT_FILE,
};
