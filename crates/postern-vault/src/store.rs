//! The SQLite store: schema, secret versions, history, usage and caller tokens.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{open, seal, MasterKey, MasterKeyOrigin};

pub const VAULT_FILE: &str = "vault.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const MASTER_KEY_ENV: &str = "POSTERN_MASTER_KEY";

const SCHEMA_VERSION: i64 = 1;
const KEY_CHECK_PLAINTEXT: &[u8] = b"postern-vault key check v1";

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

/// A caller token known to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerTokenState {
    pub token_sha256: [u8; 32],
    pub caller: String,
    pub revoked: bool,
}

pub struct Vault {
    conn: Mutex<Connection>,
    master: MasterKey,
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
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Whether `kind` can be a credential's kind (a label: `static` unless told): 1 to 64 letters,
/// digits, '.', '-' and '_'.
pub fn valid_kind(kind: &str) -> bool {
    (1..=64).contains(&kind.len())
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
    let context = context.into();
    move |source| VaultError::Io { context, source }
}

impl Vault {
    /// Opens (creating on first use) `<data_dir>/vault.db` with the master key from
    /// `POSTERN_MASTER_KEY` or `<data_dir>/master.key`.
    pub fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        let env = std::env::var(MASTER_KEY_ENV).ok();
        Self::open_with(data_dir, env.as_deref())
    }

    /// Like [`Vault::open`], with the environment's key passed in (tests, embedding).
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
        let (master, origin) = match env_key {
            Some(text) => (
                MasterKey::parse(text).ok_or(VaultError::MalformedEnvKey)?,
                MasterKeyOrigin::Environment,
            ),
            None if key_file.exists() => {
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
                (key, MasterKeyOrigin::File(key_file.clone()))
            }
            None if vault_exists => {
                return Err(VaultError::MissingKey {
                    vault: path,
                    key_file,
                })
            }
            None => {
                let key = MasterKey::generate();
                write_private(&key_file, key.to_file_text().as_bytes())?;
                (key, MasterKeyOrigin::Generated(key_file.clone()))
            }
        };
        create_private_db(&path)?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Erased material (retired and revoked versions) is overwritten, not just unlinked.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
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
                revoked_ms INTEGER
             );",
        )?;
        let check: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match check {
            Some(sealed) => {
                if open(master.bytes(), b"key_check", &sealed)
                    .as_deref()
                    .map(|v| v.as_slice())
                    != Some(KEY_CHECK_PLAINTEXT)
                {
                    return Err(VaultError::WrongKey {
                        vault: path,
                        origin: match &origin {
                            MasterKeyOrigin::Environment => MASTER_KEY_ENV.to_string(),
                            MasterKeyOrigin::File(p) | MasterKeyOrigin::Generated(p) => {
                                p.display().to_string()
                            }
                        },
                    });
                }
            }
            None => {
                let sealed = seal(master.bytes(), b"key_check", KEY_CHECK_PLAINTEXT);
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1), ('schema_version', ?2), ('generation', ?3)",
                    params![sealed, SCHEMA_VERSION.to_be_bytes().to_vec(), 0i64.to_be_bytes().to_vec()],
                )?;
            }
        }
        Ok(Vault {
            conn: Mutex::new(conn),
            master,
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
        let row: Option<(String, u32)> = conn
            .query_row(
                "SELECT state, current_version FROM secrets WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, version)) = row else {
            return Err(VaultError::NotFound(name.to_string()));
        };
        if state != "active" {
            return Ok(None);
        }
        let (wrapped, sealed): (Vec<u8>, Vec<u8>) = conn.query_row(
            "SELECT wrapped_key, sealed_value FROM secret_versions WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        drop(conn);
        self.open_version(name, version, &wrapped, &sealed)
            .map(Some)
    }

    /// Erases the material of every `previous` version whose rollback window has ended (it
    /// becomes `retired`, as a later rotation would make it), so an old key does not stay
    /// recoverable from `data_dir` until the next rotation. Returns how many were erased.
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
        Ok(rows.collect::<Result<_, _>>()?)
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
        Self::issue_in(&tx, caller, token, now_ms)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn issue_in(
        tx: &rusqlite::Transaction<'_>,
        caller: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), VaultError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        tx.execute(
            "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms) VALUES (?1, ?2, ?3, NULL)",
            params![digest.to_vec(), caller, now_ms],
        )?;
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
        let added = tx.execute(
            "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms) VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT(token_sha256) DO NOTHING",
            params![token_sha256.to_vec(), caller, now_ms],
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
        let count = Self::revoke_in(&tx, caller, config_hashes, now_ms)?;
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
        let count = Self::revoke_in(&tx, caller, config_hashes, now_ms)?;
        Self::issue_in(&tx, caller, token, now_ms)?;
        Self::bump(&tx)?;
        tx.commit()?;
        Ok(count)
    }

    fn revoke_in(
        tx: &rusqlite::Transaction<'_>,
        caller: &str,
        config_hashes: &[[u8; 32]],
        now_ms: i64,
    ) -> Result<usize, VaultError> {
        let mut count = tx.execute(
            "UPDATE caller_tokens SET revoked_ms = ?2 WHERE caller = ?1 AND revoked_ms IS NULL",
            params![caller, now_ms],
        )?;
        for hash in config_hashes {
            count += tx.execute(
                "INSERT INTO caller_tokens (token_sha256, caller, created_ms, revoked_ms) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(token_sha256) DO UPDATE SET revoked_ms = ?3 WHERE revoked_ms IS NULL",
                params![hash.to_vec(), caller, now_ms],
            )?;
        }
        history(
            tx,
            &format!("caller:{caller}"),
            now_ms,
            "tokens_revoked",
            None,
            Some(format!("{count} token(s)")),
        )?;
        Ok(count)
    }

    pub fn caller_tokens(&self) -> Result<Vec<CallerTokenState>, VaultError> {
        let conn = self.conn.lock().expect("vault lock");
        let mut statement =
            conn.prepare("SELECT token_sha256, caller, revoked_ms FROM caller_tokens")?;
        let rows = statement.query_map([], |r| {
            let hash: Vec<u8> = r.get(0)?;
            Ok(CallerTokenState {
                token_sha256: hash.try_into().unwrap_or([0; 32]),
                caller: r.get(1)?,
                revoked: r.get::<_, Option<i64>>(2)?.is_some(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
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

/// Creates a key file whole with mode 0600 ([`postern_keyfile::create_private_file`]).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), VaultError> {
    postern_keyfile::create_private_file(path, contents)
        .map_err(io(format!("creating {}", path.display())))
}
