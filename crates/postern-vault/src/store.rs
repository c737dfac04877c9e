//! The SQLite store: schema, secret versions, history, usage and caller tokens.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{
    derive_key, mac, mac_matches, open, seal, seal_with_nonce, MasterKey, MasterKeyOrigin,
};

pub const VAULT_FILE: &str = "vault.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const MASTER_KEY_ENV: &str = "POSTERN_MASTER_KEY";

/// 1: the first schema. 2: caller-token rows carry a MAC (`caller_tokens.mac`).
const SCHEMA_VERSION: i64 = 2;
const KEY_CHECK_PLAINTEXT: &[u8] = b"postern-vault key check v1";
/// Derives the key caller-token rows are MACed under ([`TokenFields::message`]).
const CALLER_TOKEN_MAC_LABEL: &[u8] = b"postern-vault caller_tokens mac key v1";
/// Derives the nonce of the key check of a vault whose caller-token rows carry MACs
/// ([`marked_key_check`]).
const KEY_CHECK_NONCE_LABEL: &[u8] = b"postern-vault key_check nonce, caller_tokens mac v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "{vault} exists but no master key was given: set {MASTER_KEY_ENV} to the key used when the \
         vault was created, or restore {key_file}; nothing was changed"
    )]
    MissingKey { vault: PathBuf, key_file: PathBuf },
    #[error(
        "the master key ({origin}) does not open {vault}: use the key the vault was created with \
         ({MASTER_KEY_ENV} or {MASTER_KEY_FILE}); nothing was changed"
    )]
    WrongKey { vault: PathBuf, origin: String },
    #[error(
        "{vault} exists but is empty (0 bytes): it is not a vault; restore it from a backup, or \
         delete it to start a new, empty vault — nothing was changed"
    )]
    EmptyFile { vault: PathBuf },
    #[error("{MASTER_KEY_ENV} is set but is not a 32-byte key: give 64 hex digits or base64 of 32 bytes (e.g. `openssl rand -base64 32`)")]
    MalformedEnvKey,
    #[error("{path} is not a valid master key file (expected base64 of 32 bytes on one line); fix or restore it — nothing was changed")]
    MalformedKeyFile { path: PathBuf },
    #[error(
        "{reason}; the master key must be readable by postern's user alone: `chown` it to that \
         user and `chmod 600` it, or give the key in {MASTER_KEY_ENV} — nothing was changed"
    )]
    KeyFileNotPrivate { reason: String },
    #[error("no credential named {0:?}; create it with `postern creds set {0}`")]
    NotFound(String),
    #[error(
        "credential {0:?} already exists; use `postern creds rotate {0}` to replace its value"
    )]
    AlreadyExists(String),
    #[error("credential {0:?} is revoked; give it a new value with `postern creds set {0}`")]
    Revoked(String),
    #[error("credential {0:?} has no previous version inside its rollback window")]
    NothingToRollBack(String),
    #[error("credential {name:?} is at version {current}, not {expected}: it was changed since you read it (a retried rotation, or another operator); read it again and decide")]
    VersionMismatch {
        name: String,
        expected: u32,
        current: u32,
    },
    #[error(
        "credential name {0:?} is invalid: use letters, digits, '.', '-' and '_', with at least \
         one letter or digit (at most 128)"
    )]
    InvalidName(String),
    #[error(
        "credential kind {0:?} is invalid: use 1 to 64 letters, digits, '.', '-' and '_' (e.g. \
         static)"
    )]
    InvalidKind(String),
    #[error("the credential value is empty")]
    EmptyValue,
    #[error("a stored value of {0:?} failed to decrypt: the vault file was altered or damaged")]
    Corrupt(String),
    #[error(
        "{path} is {found}, not a regular file: Postern keeps the vault in a file of its own and \
         follows no link there (it would narrow the mode of, and open, whatever the link names); \
         move the real file there (`mv TARGET {path}`), or point data_dir at the directory that \
         holds it; removing {path} loses what it holds (a -wal file: the writes not yet in \
         vault.db) — nothing was changed"
    )]
    NotRegularFile { path: PathBuf, found: &'static str },
    #[error("vault storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("vault file system: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A decrypted secret. Zeroed on drop; `Debug` never shows it; no `Display`.
pub struct SecretValue {
    pub version: u32,
    value: Zeroizing<Vec<u8>>,
}

impl SecretValue {
    pub fn expose(&self) -> &[u8] {
        &self.value
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(v{}, <redacted>)", self.version)
    }
}

/// The state of a credential as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    Active,
    Revoked,
}

/// Metadata only — what `creds list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SecretMeta {
    pub name: String,
    pub kind: String,
    pub state: SecretState,
    pub current_version: u32,
    pub created_ms: i64,
    pub last_rotated_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    /// A previous version still usable by `rollback` until this time.
    pub rollback_until_ms: Option<i64>,
}

impl SecretMeta {
    /// Age of the current value (since set or last rotation), in whole days.
    pub fn age_days(&self, now_ms: i64) -> i64 {
        let since = self.last_rotated_ms.unwrap_or(self.created_ms);
        (now_ms - since).max(0) / 86_400_000
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub time_ms: i64,
    pub action: String,
    pub version: Option<u32>,
    pub detail: Option<String>,
}

/// Data-flow ledger row: how many values of a data class went to (`request`) or came from
/// (`response`) a vendor, from one caller, on one UTC day (`YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataflowRow {
    pub integration: String,
    pub caller: String,
    pub class: String,
    pub direction: String,
    pub day: String,
    pub count: u64,
}

/// A caller token known to the store (a row whose MAC holds: see [`Vault::caller_tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerTokenState {
    pub token_sha256: [u8; 32],
    pub caller: String,
    pub revoked: bool,
}

/// The caller-token rows, as [`Vault::caller_tokens_checked`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerTokens {
    /// The rows whose MAC holds: issued, imported or revoked by postern with the master key.
    pub tokens: Vec<CallerTokenState>,
    /// The rows whose MAC is missing or wrong: none of them is a token, active or revoked.
    pub refused: Vec<RefusedCallerToken>,
}

/// A caller-token row that fails its MAC. Its fields are what the file holds, authenticated by
/// nothing: for saying which row it is, and never for granting anything (the gateway uses its
/// hash only to deny: a config token such a row names is not accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCallerToken {
    /// The caller the row names (anything may be there: show it with `{:?}`).
    pub caller: String,
    /// The row's token hash, when it is 32 bytes.
    pub token_sha256: Option<[u8; 32]>,
    /// The first 4 bytes of the row's token hash in hex: enough to find the row, not to use it.
    pub hash_prefix: String,
    pub problem: CallerTokenRowProblem,
}

impl RefusedCallerToken {
    /// Logs the row as refused (its caller and hash prefix, never more), with what to do.
    pub fn warn(&self) {
        tracing::warn!(
            caller = ?self.caller,
            token_sha256_prefix = %self.hash_prefix,
            problem = self.problem.as_str(),
            "a caller-token row in the vault fails its integrity check (a MAC under the master key) and is ignored: it was not written by postern with this vault's master key (the vault file was altered, or an older postern wrote it); `postern callers rotate|revoke CALLER` removes the caller's such rows"
        );
    }
}

/// Why a caller-token row is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerTokenRowProblem {
    /// The row has no MAC: written without the master key (or by a postern older than the
    /// vault's upgrade, see [`Vault::open_with`]).
    MissingMac,
    /// The MAC does not match the row: a value was changed (the caller, a revocation undone…),
    /// or the row was made up or copied with another row's MAC.
    WrongMac,
}

impl CallerTokenRowProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerTokenRowProblem::MissingMac => "missing_mac",
            CallerTokenRowProblem::WrongMac => "wrong_mac",
        }
    }
}

pub struct Vault {
    conn: Mutex<Connection>,
    master: MasterKey,
    /// Derived from the master key ([`CALLER_TOKEN_MAC_LABEL`]): the caller-token rows' MACs.
    token_mac_key: Zeroizing<[u8; 32]>,
    path: PathBuf,
    origin: MasterKeyOrigin,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).finish()
    }
}

/// Whether `name` can name a credential: at most 128 letters, digits, '.', '-' and '_', with at
/// least one letter or digit (so never `.` or `..`, which would read as a path step in an
/// admin API URL).
pub fn valid_name(name: &str) -> bool {
    name.len() <= 128
        && name.contains(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(is_label_char)
}

/// Whether `kind` can be a credential's kind (a label: `static` unless told): 1 to 64 letters,
/// digits, '.', '-' and '_'.
pub fn valid_kind(kind: &str) -> bool {
    (1..=64).contains(&kind.len()) && kind.chars().all(is_label_char)
}

/// A letter, digit, '.', '-' or '_'.
fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
    let context = context.into();
    move |source| VaultError::Io { context, source }
}

impl Vault {
    /// Opens (creating on first use) `<data_dir>/vault.db` with the master key from
    /// `POSTERN_MASTER_KEY` or `<data_dir>/master.key`.
    pub fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        // Set but not UTF-8 (raw key bytes, say) is a malformed key, never an absent one: taken
        // for absent, the key file beside the vault would be used, or made.
        let env = match std::env::var_os(MASTER_KEY_ENV) {
            None => None,
            Some(value) => Some(Zeroizing::new(
                value
                    .into_string()
                    .map_err(|_| VaultError::MalformedEnvKey)?,
            )),
        };
        Self::open_with(data_dir, env.as_ref().map(|key| key.as_str()))
    }

    /// Like [`Vault::open`], with the environment's key passed in (tests, embedding).
    ///
    /// A vault written before caller-token rows carried MACs is upgraded here, once the key has
    /// opened it: its rows, trusted until then, get their MACs (`authenticate_caller_tokens`
    /// says why that is sound); from then on a row written without the key is refused.
    pub fn open_with(data_dir: &Path, env_key: Option<&str>) -> Result<Vault, VaultError> {
        postern_keyfile::create_private_dir(data_dir)
            .map_err(io(format!("creating {}", data_dir.display())))?;
        let path = data_dir.join(VAULT_FILE);
        let key_file = data_dir.join(MASTER_KEY_FILE);
        // The file itself, never where a link leads (nor a directory, a FIFO…).
        let vault_exists = regular_file(&path)?.is_some();
        // An empty file is not an absent vault: taking it for one would seal a new vault under
        // whatever key was given, and the key the lost vault had would no longer open the file.
        // (Another process opening a new vault at this moment leaves it empty for a few
        // milliseconds, until its first write: given a second to grow first.)
        if vault_exists {
            let size = || {
                std::fs::metadata(&path)
                    .map(|metadata| metadata.len())
                    .map_err(io(format!("reading {}", path.display())))
            };
            let mut waited = 0;
            while size()? == 0 {
                if waited == 20 {
                    return Err(VaultError::EmptyFile { vault: path });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                waited += 1;
            }
        }
        let read_key_file = || -> Result<(MasterKey, MasterKeyOrigin), VaultError> {
            let bytes = postern_keyfile::read_private_file(&key_file).map_err(|error| {
                if postern_keyfile::is_not_private(&error) {
                    VaultError::KeyFileNotPrivate {
                        reason: error.to_string(),
                    }
                } else {
                    io(format!("reading {}", key_file.display()))(error)
                }
            })?;
            let text = std::str::from_utf8(&bytes).unwrap_or_default();
            let key = MasterKey::parse(text).ok_or_else(|| VaultError::MalformedKeyFile {
                path: key_file.clone(),
            })?;
            Ok((key, MasterKeyOrigin::File(key_file.clone())))
        };
        let (master, origin) = match env_key {
            Some(text) => (
                MasterKey::parse(text).ok_or(VaultError::MalformedEnvKey)?,
                MasterKeyOrigin::Environment,
            ),
            None if key_file.exists() => read_key_file()?,
            None if vault_exists => {
                return Err(VaultError::MissingKey {
                    vault: path,
                    key_file,
                })
            }
            None => {
                let key = MasterKey::generate();
                // The file appears whole (linked into place) or not at all: one made by another
                // process opening the new vault at the same moment is the key to use.
                match postern_keyfile::create_private_file(&key_file, key.to_file_text().as_bytes())
                {
                    Ok(()) => (key, MasterKeyOrigin::Generated(key_file.clone())),
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        read_key_file()?
                    }
                    Err(error) => {
                        return Err(io(format!("creating {}", key_file.display()))(error))
                    }
                }
            }
        };
        create_private_db(&path)?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        wal_mode(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Erased material (retired and revoked versions) is overwritten, not just unlinked.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let wrong_key = || VaultError::WrongKey {
            vault: path.clone(),
            origin: match &origin {
                MasterKeyOrigin::Environment => MASTER_KEY_ENV.to_string(),
                MasterKeyOrigin::File(p) | MasterKeyOrigin::Generated(p) => p.display().to_string(),
            },
        };
        let opens = |sealed: &[u8]| {
            open(master.bytes(), b"key_check", sealed)
                .as_deref()
                .map(|v| v.as_slice())
                == Some(KEY_CHECK_PLAINTEXT)
        };
        match stored_key_check(&conn)? {
            // A vault with its key check opens without a write (the schema's statements make
            // only tables a later Postern added), so a busy writer does not keep it closed.
            Some(sealed) => {
                if !opens(&sealed) {
                    return Err(wrong_key());
                }
                conn.execute_batch(SCHEMA)?;
            }
            // A new vault's schema and key check in one write transaction: processes opening it
            // at once (a `creds set` beside `serve`, replicas) each find either no vault or a
            // whole one with its key check, never both write the check.
            None => {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(SCHEMA)?;
                match stored_key_check(&tx)? {
                    Some(sealed) if !opens(&sealed) => return Err(wrong_key()),
                    Some(_) => {}
                    None => {
                        // A new vault's rows carry MACs from the start: its key check says so.
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('key_check', ?1), ('schema_version', ?2), ('generation', ?3)",
                            params![marked_key_check(&master), SCHEMA_VERSION.to_be_bytes().to_vec(), 0i64.to_be_bytes().to_vec()],
                        )?;
                    }
                }
                tx.commit()?;
            }
        }
        let token_mac_key = derive_key(&master, CALLER_TOKEN_MAC_LABEL);
        authenticate_caller_tokens(&mut conn, &master, &token_mac_key)?;
        Ok(Vault {
            conn: Mutex::new(conn),
            master,
            token_mac_key,
            path,
            origin,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_origin(&self) -> &MasterKeyOrigin {
        &self.origin
    }

    /// Changes with every mutation (from any process sharing the file).
    pub fn generation(&self) -> Result<i64, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let bytes: Vec<u8> =
            conn.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })?;
        Ok(i64::from_be_bytes(bytes.try_into().unwrap_or([0; 8])))
    }

    fn bump(tx: &rusqlite::Transaction<'_>) -> Result<(), VaultError> {
        let bytes: Vec<u8> =
            tx.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })?;
        let next = i64::from_be_bytes(bytes.try_into().unwrap_or([0; 8])) + 1;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            params![next.to_be_bytes().to_vec()],
        )?;
        Ok(())
    }

    fn seal_version(&self, name: &str, version: u32, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let data_key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let value_aad = format!("value|{name}|{version}");
        let key_aad = format!("dek|{name}|{version}");
        let sealed_value = seal(&data_key, value_aad.as_bytes(), value);
        let wrapped_key = seal(self.master.bytes(), key_aad.as_bytes(), data_key.as_ref());
        (wrapped_key, sealed_value)
    }

    fn open_version(
        &self,
        name: &str,
        version: u32,
        wrapped_key: &[u8],
        sealed_value: &[u8],
    ) -> Result<SecretValue, VaultError> {
        let key_aad = format!("dek|{name}|{version}");
        let data_key = open(self.master.bytes(), key_aad.as_bytes(), wrapped_key)
            .ok_or_else(|| VaultError::Corrupt(name.to_string()))?;
        let data_key: [u8; 32] = data_key
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Corrupt(name.to_string()))?;
        let data_key = Zeroizing::new(data_key);
        let value_aad = format!("value|{name}|{version}");
        let value = open(&data_key, value_aad.as_bytes(), sealed_value)
            .ok_or_else(|| VaultError::Corrupt(name.to_string()))?;
        Ok(SecretValue { version, value })
    }

    /// Creates a credential (or gives a revoked one a new value).
    pub fn set(
        &self,
        name: &str,
        kind: &str,
        value: &[u8],
        now_ms: i64,
    ) -> Result<u32, VaultError> {
        if !valid_name(name) {
            return Err(VaultError::InvalidName(name.to_string()));
        }
        if !valid_kind(kind) {
            return Err(VaultError::InvalidKind(kind.to_string()));
        }
        if value.is_empty() {
            return Err(VaultError::EmptyValue);
        }
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<(String, u32)> = tx
            .query_row(
                "SELECT state, current_version FROM secrets WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let version = match existing {
            Some((state, _)) if state == "active" => {
                return Err(VaultError::AlreadyExists(name.to_string()))
            }
            Some(_) => next_version(&tx, name)?,
            None => 1,
        };
        let (wrapped, sealed) = self.seal_version(name, version, value);
        tx.execute(
            "INSERT INTO secret_versions (name, version, wrapped_key, sealed_value, created_ms, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 'current')",
            params![name, version, wrapped, sealed, now_ms],
        )?;
        tx.execute(
            "INSERT INTO secrets (name, kind, state, current_version, created_ms, last_rotated_ms)
             VALUES (?1, ?2, 'active', ?3, ?4, NULL)
             ON CONFLICT(name) DO UPDATE SET kind = ?2, state = 'active', current_version = ?3,
                created_ms = ?4, last_rotated_ms = NULL",
            params![name, kind, version, now_ms],
        )?;
        history(&tx, name, now_ms, "set", Some(version), None)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(version)
    }

    /// Replaces the value; the previous one stays usable for `rollback` for `rollback_window_ms`.
    pub fn rotate(
        &self,
        name: &str,
        value: &[u8],
        rollback_window_ms: i64,
        now_ms: i64,
    ) -> Result<u32, VaultError> {
        self.rotate_from(name, None, value, rollback_window_ms, now_ms)
    }

    /// [`Vault::rotate`], only if the current version is `expected` (when given), checked in
    /// the same transaction: a rotation retried after an answer that was lost, or raced by
    /// another operator, is refused ([`VaultError::VersionMismatch`]) rather than rotate again
    /// and erase the version a rollback would restore.
    pub fn rotate_from(
        &self,
        name: &str,
        expected: Option<u32>,
        value: &[u8],
        rollback_window_ms: i64,
        now_ms: i64,
    ) -> Result<u32, VaultError> {
        if value.is_empty() {
            return Err(VaultError::EmptyValue);
        }
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = active_version(&tx, name)?;
        if let Some(expected) = expected.filter(|&expected| expected != current) {
            return Err(VaultError::VersionMismatch {
                name: name.to_string(),
                expected,
                current,
            });
        }
        // Older previous versions are retired now: their material is erased.
        tx.execute(
            "UPDATE secret_versions SET status = 'retired', wrapped_key = NULL, sealed_value = NULL
             WHERE name = ?1 AND status = 'previous'",
            params![name],
        )?;
        tx.execute(
            "UPDATE secret_versions SET status = 'previous', rollback_until_ms = ?3
             WHERE name = ?1 AND version = ?2",
            params![name, current, now_ms + rollback_window_ms.max(0)],
        )?;
        let version = next_version(&tx, name)?;
        let (wrapped, sealed) = self.seal_version(name, version, value);
        tx.execute(
            "INSERT INTO secret_versions (name, version, wrapped_key, sealed_value, created_ms, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 'current')",
            params![name, version, wrapped, sealed, now_ms],
        )?;
        tx.execute(
            "UPDATE secrets SET current_version = ?2, last_rotated_ms = ?3 WHERE name = ?1",
            params![name, version, now_ms],
        )?;
        history(
            &tx,
            name,
            now_ms,
            "rotate",
            Some(version),
            Some(format!(
                "previous version {current} kept for rollback for {} s",
                rollback_window_ms / 1000
            )),
        )?;
        Self::bump(&tx)?;
        tx.commit()?;
        // The version retired here had its material erased: out of the WAL too.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(version)
    }

    /// Makes the previous version current again, if still inside its rollback window.
    pub fn rollback(&self, name: &str, now_ms: i64) -> Result<u32, VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = active_version(&tx, name)?;
        let previous: u32 = tx
            .query_row(
                "SELECT version FROM secret_versions WHERE name = ?1 AND status = 'previous'
                 AND rollback_until_ms >= ?2 AND sealed_value IS NOT NULL",
                params![name, now_ms],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| VaultError::NothingToRollBack(name.to_string()))?;
        tx.execute(
            "UPDATE secret_versions SET status = 'retired', wrapped_key = NULL, sealed_value = NULL
             WHERE name = ?1 AND version = ?2",
            params![name, current],
        )?;
        tx.execute(
            "UPDATE secret_versions SET status = 'current', rollback_until_ms = NULL
             WHERE name = ?1 AND version = ?2",
            params![name, previous],
        )?;
        // The restored value keeps its own age: a rollback must not make an old key look new.
        tx.execute(
            "UPDATE secrets SET current_version = ?2,
                last_rotated_ms = (SELECT created_ms FROM secret_versions WHERE name = ?1 AND version = ?2)
             WHERE name = ?1",
            params![name, previous],
        )?;
        history(
            &tx,
            name,
            now_ms,
            "rollback",
            Some(previous),
            Some(format!("version {current} retired")),
        )?;
        Self::bump(&tx)?;
        tx.commit()?;
        // The retired version (perhaps compromised) had its material erased: out of the WAL too.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(previous)
    }

    /// Ends the credential: every version's material is erased; injection stops.
    pub fn revoke(&self, name: &str, now_ms: i64) -> Result<(), VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE secrets SET state = 'revoked' WHERE name = ?1 AND state = 'active'",
            params![name],
        )?;
        if changed == 0 {
            let exists: Option<String> = tx
                .query_row(
                    "SELECT state FROM secrets WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            return match exists {
                Some(_) => Ok(()),
                None => Err(VaultError::NotFound(name.to_string())),
            };
        }
        tx.execute(
            "UPDATE secret_versions SET status = 'revoked', wrapped_key = NULL, sealed_value = NULL
             WHERE name = ?1",
            params![name],
        )?;
        history(&tx, name, now_ms, "revoke", None, None)?;
        Self::bump(&tx)?;
        tx.commit()?;
        // Move the overwritten pages out of the WAL into the main file, then truncate the WAL.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(())
    }

    /// The current value, or `Ok(None)` when the credential is revoked.
    pub fn current(&self, name: &str) -> Result<Option<SecretValue>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        // One statement, so one snapshot: another process's rollback between two reads would
        // leave the version read first erased.
        type Row = (String, u32, Option<Vec<u8>>, Option<Vec<u8>>);
        let row: Option<Row> = conn
            .query_row(
                "SELECT s.state, s.current_version, v.wrapped_key, v.sealed_value
                 FROM secrets s LEFT JOIN secret_versions v
                   ON v.name = s.name AND v.version = s.current_version
                 WHERE s.name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        drop(conn);
        let Some((state, version, wrapped, sealed)) = row else {
            return Err(VaultError::NotFound(name.to_string()));
        };
        if state != "active" {
            return Ok(None);
        }
        let (Some(wrapped), Some(sealed)) = (wrapped, sealed) else {
            return Err(VaultError::Corrupt(name.to_string()));
        };
        self.open_version(name, version, &wrapped, &sealed)
            .map(Some)
    }

    /// Erases the material of every `previous` version whose rollback window has ended (it
    /// becomes `retired`, as a later rotation would make it), so an old key does not stay
    /// recoverable from `data_dir` until the next rotation; the vault's generation moves when
    /// any was. Returns how many were erased.
    pub fn erase_expired(&self, now_ms: i64) -> Result<usize, VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        // Asked without the write lock first: a `postern creds` command holding it must not
        // hold up the poller's refresh when nothing is due.
        let due: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM secret_versions WHERE status = 'previous' AND rollback_until_ms < ?1 LIMIT 1",
                params![now_ms],
                |r| r.get(0),
            )
            .optional()?;
        if due.is_none() {
            return Ok(0);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let expired: Vec<(String, u32)> = {
            let mut statement = tx.prepare(
                "SELECT name, version FROM secret_versions
                 WHERE status = 'previous' AND rollback_until_ms < ?1",
            )?;
            let rows = statement.query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, version) in &expired {
            tx.execute(
                "UPDATE secret_versions SET status = 'retired', wrapped_key = NULL, sealed_value = NULL,
                    rollback_until_ms = NULL
                 WHERE name = ?1 AND version = ?2",
                params![name, version],
            )?;
            history(
                &tx,
                name,
                now_ms,
                "expire",
                Some(*version),
                Some("its rollback window ended; erased".to_string()),
            )?;
        }
        // A change like any other: a gateway using an erased version (the matching half of a
        // client certificate rotated alone) builds again without it.
        if !expired.is_empty() {
            Self::bump(&tx)?;
        }
        tx.commit()?;
        if !expired.is_empty() {
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(expired.len())
    }

    /// The version a rotation replaced, while its rollback window lasts (`Ok(None)` when there
    /// is none, the window has passed, or the credential is revoked): still valid at the vendor
    /// until the operator retires it there, so a gateway still looks for it in answers.
    pub fn previous(&self, name: &str, now_ms: i64) -> Result<Option<SecretValue>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let row: Option<(u32, Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT v.version, v.wrapped_key, v.sealed_value
                 FROM secret_versions v JOIN secrets s ON s.name = v.name
                 WHERE v.name = ?1 AND v.status = 'previous' AND s.state = 'active'
                   AND v.rollback_until_ms >= ?2 AND v.sealed_value IS NOT NULL",
                params![name, now_ms],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        drop(conn);
        let Some((version, wrapped, sealed)) = row else {
            return Ok(None);
        };
        self.open_version(name, version, &wrapped, &sealed)
            .map(Some)
    }

    pub fn list(&self) -> Result<Vec<SecretMeta>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let mut statement = conn.prepare(
            "SELECT s.name, s.kind, s.state, s.current_version, s.created_ms, s.last_rotated_ms,
                    u.last_used_ms,
                    (SELECT MAX(rollback_until_ms) FROM secret_versions v
                      WHERE v.name = s.name AND v.status = 'previous')
             FROM secrets s LEFT JOIN usage u ON u.name = s.name ORDER BY s.name",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(SecretMeta {
                name: r.get(0)?,
                kind: r.get(1)?,
                state: if r.get::<_, String>(2)? == "active" {
                    SecretState::Active
                } else {
                    SecretState::Revoked
                },
                current_version: r.get(3)?,
                created_ms: r.get(4)?,
                last_rotated_ms: r.get(5)?,
                last_used_ms: r.get(6)?,
                rollback_until_ms: r.get(7)?,
            })
        })?;
        let rows: Vec<SecretMeta> = rows.collect::<Result<_, _>>()?;
        // Every Postern wrote names of label characters only (later ones also need a letter or
        // digit): a row with others was put in the file by something else, and its name is not
        // passed on (it is a metric label and a table cell). Kinds went unchecked before, and
        // are shown escaped instead.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        Ok(rows
            .into_iter()
            .filter(|meta| {
                let written = (1..=128).contains(&meta.name.len())
                    && meta.name.chars().all(is_label_char);
                if !written && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        vault = %self.path.display(),
                        "a credential row whose name holds characters Postern never writes is left out: vault.db was written by something other than Postern"
                    );
                }
                written
            })
            .collect())
    }

    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let mut statement = conn.prepare(
            "SELECT time_ms, action, version, detail FROM history WHERE name = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map(params![name], |r| {
            Ok(HistoryEntry {
                time_ms: r.get(0)?,
                action: r.get(1)?,
                version: r.get(2)?,
                detail: r.get(3)?,
            })
        })?;
        let entries: Vec<HistoryEntry> = rows.collect::<Result<_, _>>()?;
        if entries.is_empty() {
            return Err(VaultError::NotFound(name.to_string()));
        }
        Ok(entries)
    }

    /// Records that credentials were used (batched by the gateway; not a mutation: no bump).
    pub fn touch(&self, names: &[(String, i64)]) -> Result<(), VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (name, at) in names {
            tx.execute(
                "INSERT INTO usage (name, last_used_ms) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET last_used_ms = MAX(last_used_ms, ?2)",
                params![name, at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds counts to the data-flow ledger (not a mutation of credentials: no generation bump).
    pub fn add_dataflow(&self, rows: &[DataflowRow]) -> Result<(), VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for row in rows {
            tx.execute(
                "INSERT INTO dataflow (integration, caller, class, direction, day, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(integration, caller, class, direction, day) DO UPDATE SET count = count + ?6",
                params![row.integration, row.caller, row.class, row.direction, row.day, row.count as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Data-flow rows, optionally for one integration and from a day on (inclusive), newest first.
    pub fn dataflow(
        &self,
        integration: Option<&str>,
        since_day: Option<&str>,
    ) -> Result<Vec<DataflowRow>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let mut statement = conn.prepare(
            "SELECT integration, caller, class, direction, day, count FROM dataflow
             WHERE (?1 IS NULL OR integration = ?1) AND (?2 IS NULL OR day >= ?2)
             ORDER BY day DESC, integration, caller, class, direction",
        )?;
        let rows = statement.query_map(params![integration, since_day], |r| {
            Ok(DataflowRow {
                integration: r.get(0)?,
                caller: r.get(1)?,
                class: r.get(2)?,
                direction: r.get(3)?,
                day: r.get(4)?,
                count: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Registers a new caller token (by hash) issued at run time.
    pub fn add_caller_token(
        &self,
        caller: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.issue_in(&tx, caller, token, now_ms)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn issue_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        caller: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), VaultError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        insert_token_row(tx, &self.token_mac_key, &digest, caller, now_ms, None)?;
        history(
            tx,
            &format!("caller:{caller}"),
            now_ms,
            "token_issued",
            None,
            None,
        )
    }

    /// Copies a caller token hash (e.g. from the config) into the store, active, unless the store
    /// already knows it (a revoked hash stays revoked). Returns whether it was added.
    pub fn import_caller_token_hash(
        &self,
        caller: &str,
        token_sha256: &[u8; 32],
        now_ms: i64,
    ) -> Result<bool, VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = TokenFields {
            token_sha256,
            caller,
            created_ms: now_ms,
            revoked_ms: None,
        };
        // A row already there for the hash, even one that fails its MAC, stays as it is: an
        // import never makes a token active that the vault holds otherwise.
        let added = tx.execute(
            "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms, mac)
             VALUES (?1, ?2, ?3, NULL, ?4)
             ON CONFLICT(token_sha256) DO NOTHING",
            params![
                token_sha256.to_vec(),
                caller,
                now_ms,
                row.mac(&self.token_mac_key).to_vec()
            ],
        )?;
        if added > 0 {
            history(
                &tx,
                &format!("caller:{caller}"),
                now_ms,
                "token_imported",
                None,
                None,
            )?;
            Self::bump(&tx)?;
        }
        tx.commit()?;
        Ok(added > 0)
    }

    /// Revokes every token of `caller`: those issued by the store and the given config hashes.
    pub fn revoke_caller(
        &self,
        caller: &str,
        config_hashes: &[[u8; 32]],
        now_ms: i64,
    ) -> Result<usize, VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count = self.revoke_in(&tx, caller, config_hashes, now_ms)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(count)
    }

    /// Revokes every token of `caller` (as [`Vault::revoke_caller`]) and registers `token` in
    /// the same transaction, so a running gateway never sees the caller with no valid token.
    pub fn rotate_caller(
        &self,
        caller: &str,
        config_hashes: &[[u8; 32]],
        token: &str,
        now_ms: i64,
    ) -> Result<usize, VaultError> {
        let mut conn = self.conn.lock().expect("vault lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count = self.revoke_in(&tx, caller, config_hashes, now_ms)?;
        self.issue_in(&tx, caller, token, now_ms)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(count)
    }

    /// Revokes the caller's active tokens and the config hashes (whoever's row holds them),
    /// each revoked row MACed again with its revocation time. The caller's rows that fail their
    /// MAC were never its tokens: they are removed (so they are not reported at every reload
    /// again); a config hash held by such a row gets a new, revoked row.
    fn revoke_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        caller: &str,
        config_hashes: &[[u8; 32]],
        now_ms: i64,
    ) -> Result<usize, VaultError> {
        let key = &self.token_mac_key;
        let mut count = 0;
        let mut removed = 0;
        for row in token_rows(tx, "WHERE caller = ?1", params![caller])? {
            match row.fields() {
                Some(fields) if row.authentic(key) => {
                    if fields.revoked_ms.is_none() {
                        revoke_token_row(tx, key, row.rowid, fields, now_ms)?;
                        count += 1;
                    }
                }
                _ => {
                    remove_token_row(tx, row.rowid)?;
                    removed += 1;
                }
            }
        }
        for hash in config_hashes {
            let held = token_rows(tx, "WHERE token_sha256 = ?1", params![hash.to_vec()])?;
            match held.first() {
                Some(row) if row.authentic(key) => {
                    let fields = row.fields().expect("an authentic row is well formed");
                    if fields.revoked_ms.is_none() {
                        revoke_token_row(tx, key, row.rowid, fields, now_ms)?;
                        count += 1;
                    }
                }
                held => {
                    if let Some(row) = held {
                        remove_token_row(tx, row.rowid)?;
                        removed += 1;
                    }
                    insert_token_row(tx, key, hash, caller, now_ms, Some(now_ms))?;
                    count += 1;
                }
            }
        }
        let mut detail = format!("{count} token(s)");
        if removed > 0 {
            detail.push_str(&format!(
                "; {removed} row(s) that failed their integrity check removed"
            ));
        }
        history(
            tx,
            &format!("caller:{caller}"),
            now_ms,
            "tokens_revoked",
            None,
            Some(detail),
        )?;
        Ok(count)
    }

    /// The caller tokens, active and revoked: only rows whose MAC holds (see
    /// [`Vault::caller_tokens_checked`]). Each row that fails its MAC is left out and said in
    /// a warning naming its caller and the first 8 hex digits of its hash.
    pub fn caller_tokens(&self) -> Result<Vec<CallerTokenState>, VaultError> {
        let CallerTokens { tokens, refused } = self.caller_tokens_checked()?;
        refused.iter().for_each(RefusedCallerToken::warn);
        Ok(tokens)
    }

    /// Every caller-token row, split by its MAC (HMAC-SHA256 under a key derived from the
    /// master key, over the token hash, the caller, the creation time and the revocation time
    /// or its absence): a row someone wrote into the file without the master key — a made-up
    /// hash, a revocation undone, another caller's name — is in `refused`, never in `tokens`.
    /// A value of the wrong type (the file altered) refuses the row, not the read.
    pub fn caller_tokens_checked(&self) -> Result<CallerTokens, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let mut read = CallerTokens::default();
        for row in token_rows(&conn, "", [])? {
            match row.fields() {
                Some(fields) if row.authentic(&self.token_mac_key) => {
                    read.tokens.push(CallerTokenState {
                        token_sha256: *fields.token_sha256,
                        caller: fields.caller.to_string(),
                        revoked: fields.revoked_ms.is_some(),
                    })
                }
                _ => read.refused.push(row.refused()),
            }
        }
        Ok(read)
    }
}

/// A caller-token row's values, each of the type the schema gives it: what its MAC covers.
#[derive(Clone, Copy)]
struct TokenFields<'a> {
    token_sha256: &'a [u8; 32],
    caller: &'a str,
    created_ms: i64,
    revoked_ms: Option<i64>,
}

impl TokenFields<'_> {
    /// An unambiguous encoding of the row: a label; the 32-byte hash; the caller's length in
    /// bytes (u64, big-endian) and its UTF-8; the creation time (i64, big-endian); `0` when the
    /// row is not revoked, else `1` and the revocation time (i64, big-endian).
    fn message(&self) -> Vec<u8> {
        const LABEL: &[u8] = b"postern-vault caller_tokens row v1\0";
        let mut message = Vec::with_capacity(LABEL.len() + 32 + 8 + self.caller.len() + 17);
        message.extend_from_slice(LABEL);
        message.extend_from_slice(self.token_sha256);
        message.extend_from_slice(&(self.caller.len() as u64).to_be_bytes());
        message.extend_from_slice(self.caller.as_bytes());
        message.extend_from_slice(&self.created_ms.to_be_bytes());
        match self.revoked_ms {
            None => message.push(0),
            Some(revoked_ms) => {
                message.push(1);
                message.extend_from_slice(&revoked_ms.to_be_bytes());
            }
        }
        message
    }

    fn mac(&self, key: &[u8; 32]) -> [u8; 32] {
        mac(key, &self.message())
    }
}

/// A caller-token row as the file holds it, whatever the types of its values.
struct TokenRow {
    rowid: i64,
    token_sha256: Vec<u8>,
    caller: Option<String>,
    created_ms: Option<i64>,
    /// `Err` when the value is neither NULL nor an integer.
    revoked_ms: Result<Option<i64>, ()>,
    mac: Option<Vec<u8>>,
}

impl TokenRow {
    fn fields(&self) -> Option<TokenFields<'_>> {
        Some(TokenFields {
            token_sha256: self.token_sha256.as_slice().try_into().ok()?,
            caller: self.caller.as_deref()?,
            created_ms: self.created_ms?,
            revoked_ms: self.revoked_ms.ok()?,
        })
    }

    /// Whether the row's MAC is there and matches its values.
    fn authentic(&self, key: &[u8; 32]) -> bool {
        match (self.fields(), &self.mac) {
            (Some(fields), Some(tag)) => mac_matches(key, &fields.message(), tag),
            _ => false,
        }
    }

    fn refused(&self) -> RefusedCallerToken {
        RefusedCallerToken {
            caller: self.caller.clone().unwrap_or_default(),
            token_sha256: self.token_sha256.as_slice().try_into().ok(),
            hash_prefix: hex::encode(&self.token_sha256[..self.token_sha256.len().min(4)]),
            problem: if self.mac.is_some() {
                CallerTokenRowProblem::WrongMac
            } else {
                CallerTokenRowProblem::MissingMac
            },
        }
    }
}

/// The caller-token rows `filter` (a `WHERE` clause, or nothing) selects, read value by value,
/// so that one a changed file gives a value of another type is read, to be refused.
fn token_rows(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<TokenRow>, VaultError> {
    use rusqlite::types::ValueRef;
    let mut statement = conn.prepare(&format!(
        "SELECT rowid, token_sha256, caller, created_ms, revoked_ms, mac FROM caller_tokens {filter}"
    ))?;
    let rows = statement.query_map(params, |r| {
        let bytes = |value: ValueRef<'_>| match value {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Some(bytes.to_vec()),
            _ => None,
        };
        let integer = |value: ValueRef<'_>| match value {
            ValueRef::Integer(value) => Some(value),
            _ => None,
        };
        Ok(TokenRow {
            rowid: r.get(0)?,
            token_sha256: bytes(r.get_ref(1)?).unwrap_or_default(),
            caller: match r.get_ref(2)? {
                ValueRef::Text(text) => std::str::from_utf8(text).ok().map(str::to_string),
                _ => None,
            },
            created_ms: integer(r.get_ref(3)?),
            revoked_ms: match r.get_ref(4)? {
                ValueRef::Null => Ok(None),
                ValueRef::Integer(value) => Ok(Some(value)),
                _ => Err(()),
            },
            mac: match r.get_ref(5)? {
                ValueRef::Blob(tag) => Some(tag.to_vec()),
                ValueRef::Null => None,
                // Something is there, of the wrong type: a wrong MAC, not a missing one.
                _ => Some(Vec::new()),
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn insert_token_row(
    tx: &rusqlite::Transaction<'_>,
    key: &[u8; 32],
    token_sha256: &[u8; 32],
    caller: &str,
    created_ms: i64,
    revoked_ms: Option<i64>,
) -> Result<(), VaultError> {
    let fields = TokenFields {
        token_sha256,
        caller,
        created_ms,
        revoked_ms,
    };
    tx.execute(
        "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms, mac)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            token_sha256.to_vec(),
            caller,
            created_ms,
            revoked_ms,
            fields.mac(key).to_vec()
        ],
    )?;
    Ok(())
}

/// Revokes an authentic row at `now_ms`, with the MAC of the row as it becomes.
fn revoke_token_row(
    tx: &rusqlite::Transaction<'_>,
    key: &[u8; 32],
    rowid: i64,
    fields: TokenFields<'_>,
    now_ms: i64,
) -> Result<(), VaultError> {
    let revoked = TokenFields {
        revoked_ms: Some(now_ms),
        ..fields
    };
    tx.execute(
        "UPDATE caller_tokens SET revoked_ms = ?2, mac = ?3 WHERE rowid = ?1",
        params![rowid, now_ms, revoked.mac(key).to_vec()],
    )?;
    Ok(())
}

fn remove_token_row(tx: &rusqlite::Transaction<'_>, rowid: i64) -> Result<(), VaultError> {
    tx.execute("DELETE FROM caller_tokens WHERE rowid = ?1", params![rowid])?;
    Ok(())
}

/// The key check of a vault whose caller-token rows carry MACs: the same plaintext under the
/// same associated data as any key check (so every postern opens it, older ones too), sealed
/// with a nonce derived from the master key instead of a random one. Only the key's holder can
/// make it; a key check with a random nonce is a vault from before the MACs.
fn marked_key_check(master: &MasterKey) -> Vec<u8> {
    let derived = derive_key(master, KEY_CHECK_NONCE_LABEL);
    let nonce: [u8; 24] = derived[..24].try_into().expect("24 of 32 bytes");
    seal_with_nonce(master.bytes(), &nonce, b"key_check", KEY_CHECK_PLAINTEXT)
}

/// Upgrades a vault written before caller-token rows carried MACs (schema 1) to schema 2, in one
/// immediate transaction (another process opening the file at the same time waits, then finds
/// the work done): the `mac` column is added where it is missing, every row without a MAC gets
/// one, and the key check is replaced by the [`marked_key_check`].
///
/// Rows are MACed as they are found, which is acceptable: this runs only after the master key
/// has opened the vault, and the rows are the ones the vault trusted without a MAC until now, so
/// the upgrade keeps what the key's holder already accepted, no more. From then on a row must
/// carry a MAC only the key's holder can make: one written into the file later without the key
/// — a made-up hash, a revocation undone, a caller renamed — is refused. Such a writer cannot
/// have the upgrade run again over rows of theirs either: what says "upgraded" is the marked
/// key check, which cannot be made without the key, not `schema_version` or the column, which
/// they could change or remove. (Putting back the key check of a copy of the file made before
/// the upgrade would do it, and the rows without a MAC written since would be authenticated at
/// the next open: so each row the upgrade authenticates is logged, caller and hash prefix, with
/// what to do if postern was not just upgraded. No per-row MAC stops a rollback to an older
/// file, nor a row's removal.)
fn authenticate_caller_tokens(
    conn: &mut Connection,
    master: &MasterKey,
    key: &[u8; 32],
) -> Result<(), VaultError> {
    let marked = marked_key_check(master);
    let upgraded = |conn: &Connection| -> Result<bool, VaultError> {
        let has_mac: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('caller_tokens') WHERE name = 'mac')",
            [],
            |r| r.get(0),
        )?;
        let check: Vec<u8> =
            conn.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })?;
        Ok(has_mac && check == marked)
    };
    // Asked without the write lock first: the usual answer.
    if upgraded(conn)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if upgraded(&tx)? {
        return Ok(());
    }
    let has_mac: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('caller_tokens') WHERE name = 'mac')",
        [],
        |r| r.get(0),
    )?;
    if !has_mac {
        // Rows without a MAC: in a vault marked upgraded, they stay refused.
        tx.execute_batch("ALTER TABLE caller_tokens ADD COLUMN mac BLOB")?;
    }
    let check: Vec<u8> =
        tx.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })?;
    if check != marked {
        for row in token_rows(&tx, "WHERE mac IS NULL", [])? {
            // A row of the wrong shape cannot have a MAC: it stays refused.
            if let Some(fields) = row.fields() {
                // Said, row by row: after an upgrade of postern these are the vault's own rows;
                // otherwise (a vault whose key check someone put back from an older copy) a row
                // here may have been written without the key.
                tracing::warn!(
                    caller = ?fields.caller,
                    hash_prefix = %hex::encode(&fields.token_sha256[..4]),
                    "a caller-token row from before token rows were authenticated is now authenticated; if postern was not just upgraded, revoke it (`postern callers rotate`)"
                );
                tx.execute(
                    "UPDATE caller_tokens SET mac = ?2 WHERE rowid = ?1",
                    params![row.rowid, fields.mac(key).to_vec()],
                )?;
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'key_check'",
            params![marked],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![SCHEMA_VERSION.to_be_bytes().to_vec()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The current version of an active credential; a clear error when it is revoked or unknown.
fn active_version(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<u32, VaultError> {
    let row: Option<(String, u32)> = tx
        .query_row(
            "SELECT state, current_version FROM secrets WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        Some((state, version)) if state == "active" => Ok(version),
        Some(_) => Err(VaultError::Revoked(name.to_string())),
        None => Err(VaultError::NotFound(name.to_string())),
    }
}

fn next_version(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<u32, VaultError> {
    let max: Option<u32> = tx.query_row(
        "SELECT MAX(version) FROM secret_versions WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    Ok(max.unwrap_or(0) + 1)
}

fn history(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    time_ms: i64,
    action: &str,
    version: Option<u32>,
    detail: Option<String>,
) -> Result<(), VaultError> {
    tx.execute(
        "INSERT INTO history (name, time_ms, action, version, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, time_ms, action, version, detail],
    )?;
    Ok(())
}

/// The vault's tables (`IF NOT EXISTS`: an open makes those a newer Postern added).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS secrets (
                name TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                state TEXT NOT NULL,
                current_version INTEGER NOT NULL,
                created_ms INTEGER NOT NULL,
                last_rotated_ms INTEGER
             );
             CREATE TABLE IF NOT EXISTS secret_versions (
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                wrapped_key BLOB,
                sealed_value BLOB,
                created_ms INTEGER NOT NULL,
                status TEXT NOT NULL,
                rollback_until_ms INTEGER,
                PRIMARY KEY (name, version)
             );
             CREATE TABLE IF NOT EXISTS usage (name TEXT PRIMARY KEY, last_used_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS history (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                time_ms INTEGER NOT NULL,
                action TEXT NOT NULL,
                version INTEGER,
                detail TEXT
             );
             CREATE TABLE IF NOT EXISTS dataflow (
                integration TEXT NOT NULL,
                caller TEXT NOT NULL,
                class TEXT NOT NULL,
                direction TEXT NOT NULL,
                day TEXT NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (integration, caller, class, direction, day)
             );
             CREATE TABLE IF NOT EXISTS caller_tokens (
                token_sha256 BLOB PRIMARY KEY,
                caller TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                revoked_ms INTEGER,
                mac BLOB
             );";

/// The sealed key check of the vault `conn` opened; `None` for a new one (no `meta` table yet,
/// or no check in it).
fn stored_key_check(conn: &Connection) -> Result<Option<Vec<u8>>, VaultError> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Puts the vault in WAL mode (kept in the file: once done, every later open finds it so).
/// Turning it on takes the file's exclusive lock without SQLite's busy handler, so processes
/// opening a new vault at once find it busy: tried again for up to the busy timeout.
fn wal_mode(conn: &Connection) -> Result<(), VaultError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return Ok(result?),
        }
    }
}

/// [`postern_keyfile::create_private_db`] for the vault file: what is not a regular file there
/// is [`VaultError::NotRegularFile`].
fn create_private_db(path: &Path) -> Result<(), VaultError> {
    postern_keyfile::create_private_db(path).map_err(|error| refused(path, error))
}

/// Whether the vault file is there ([`postern_keyfile::regular_file`]: never where a link
/// leads).
fn regular_file(path: &Path) -> Result<Option<std::fs::Metadata>, VaultError> {
    postern_keyfile::regular_file(path).map_err(|error| refused(path, error))
}

/// `error` from postern_keyfile about `path` as the vault says it.
fn refused(path: &Path, error: std::io::Error) -> VaultError {
    match postern_keyfile::not_regular(&error) {
        // The file it was about: the vault's, or a side file beside it.
        Some((path, found)) => VaultError::NotRegularFile {
            path: path.to_path_buf(),
            found,
        },
        None => io(format!("preparing {}", path.display()))(error),
    }
}
