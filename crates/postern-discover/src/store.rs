//! The persistent inventory: `<data_dir>/discovery.db` (SQLite, WAL).
//!
//! Deltas are merged in one `BEGIN IMMEDIATE` transaction (counts added, earliest first seen,
//! latest last seen, callers and endpoints united under the same [`Limits`] as memory), so two
//! writers — a running gateway and `postern discover import` — can share the file; the second
//! waits (`busy_timeout`, 10 s) rather than failing.
//!
//! The endpoints in all are bounded too ([`Limits::max_endpoints`]). Their number is kept in
//! `meta` by triggers, not counted per merge: a full store's endpoints table is up to about a
//! hundred megabytes, and the triggers keep the number right whoever writes (an older postern
//! too).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::inventory::{merge_endpoint, normalize_host, reached, sort_by_calls};
use crate::{DiscoveredHost, EndpointStats, Inventory, Limits, ObservationSource, Scheme};

/// The file name inside `data_dir`.
pub const DISCOVERY_FILE: &str = "discovery.db";

/// The schema this code writes. A file with a newer version is refused. The version counts only
/// changes an older reader cannot live with: columns added with a default ([`ADDED_COLUMNS`])
/// leave it as it is, so an older postern still opens the file (a rolled-back gateway starts).
pub const SCHEMA_VERSION: i64 = 1;
/// How long a write waits for another writer (SQLite's busy timeout), and how long opening
/// keeps trying while another process sets the same new file up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("discovery store {path} could not be made private: {source}")]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("discovery store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "discovery store {path} has schema version {found}, newer than this postern understands \
         ({SCHEMA_VERSION}); upgrade postern or move the file away"
    )]
    NewerSchema { path: PathBuf, found: i64 },
}

/// The discovery store. `Send + Sync`: one connection behind a mutex; calls block (use a
/// blocking thread from async code).
pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
    limits: Limits,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    blocked_calls INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    callers_truncated INTEGER NOT NULL,
    endpoints_truncated INTEGER NOT NULL,
    seen_by_proxy INTEGER NOT NULL,
    seen_by_import INTEGER NOT NULL,
    seen_http INTEGER NOT NULL DEFAULT 0,
    seen_https INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port)
);
CREATE TABLE IF NOT EXISTS callers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    caller TEXT NOT NULL,
    PRIMARY KEY (host, port, caller)
);
CREATE TABLE IF NOT EXISTS endpoints (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    method TEXT NOT NULL,
    template TEXT NOT NULL,
    calls INTEGER NOT NULL,
    blocked_calls INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_status INTEGER,
    PRIMARY KEY (host, port, method, template)
);
";

/// The number of endpoint rows, `meta`'s `endpoint_count`, kept by the database itself so that
/// every writer (this version, an older one, a later one) keeps it right. An upsert that updates
/// a row fires no insert trigger. Created by [`set_up`] with the count of the rows already there.
const ENDPOINT_COUNT_TRIGGERS: &str = "
CREATE TRIGGER IF NOT EXISTS endpoint_count_up AFTER INSERT ON endpoints BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'endpoint_count';
END;
CREATE TRIGGER IF NOT EXISTS endpoint_count_down AFTER DELETE ON endpoints BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'endpoint_count';
END;
";

/// Columns added since a table was first written, each with a default: a file without one gets
/// it when opened (what it recorded before is then unknown: the default). Older readers name
/// their columns and never see these; their inserts take the default.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    // How each host was spoken to (`DiscoveredHost::schemes`).
    ("hosts", "seen_http", "INTEGER NOT NULL DEFAULT 0"),
    ("hosts", "seen_https", "INTEGER NOT NULL DEFAULT 0"),
];

fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    /// Opens (creating on first use) `<data_dir>/discovery.db` with the default [`Limits`].
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with_limits(data_dir, Limits::default())
    }

    /// Like [`Store::open`], with other limits (tests, small deployments).
    pub fn open_with_limits(data_dir: &Path, limits: Limits) -> Result<Store, StoreError> {
        // Two processes opening a new file at once can see SQLITE_BUSY from the switch to WAL
        // or the schema, where SQLite does not call the busy handler: try the whole open again
        // until the busy timeout has passed (a try's own statements may wait in the busy
        // handler too, so the worst case is about twice that).
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_once(data_dir, limits) {
                Err(StoreError::Sqlite {
                    source: rusqlite::Error::SqliteFailure(failure, _),
                    ..
                }) if failure.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    fn open_once(data_dir: &Path, limits: Limits) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DISCOVERY_FILE);
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // Who called which outside host is operational data: owner-only from its creation, and
        // never where a link leads, like the vault.
        postern_keyfile::create_private_db(&path).map_err(|source| StoreError::Private {
            path: path.clone(),
            source,
        })?;
        let connection = Connection::open(&path).map_err(sqlite)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        let mut connection = connection;
        set_up(&mut connection).map_err(sqlite)?;
        let found = schema_version(&connection).map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path, found });
        }
        Ok(Store {
            path,
            connection: Mutex::new(connection),
            limits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction behind (rusqlite
        // rolls back on drop), so the connection is still usable.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a delta (usually [`Inventory::drain`]) in one transaction.
    pub fn merge_delta(&self, delta: &Inventory) -> Result<(), StoreError> {
        if delta.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sqlite())?;
        merge_in(&transaction, delta, &self.limits).map_err(self.sqlite())?;
        transaction.commit().map_err(self.sqlite())
    }

    /// Every host, by calls (most first), then host and port.
    pub fn list(&self) -> Result<Vec<DiscoveredHost>, StoreError> {
        let connection = self.connection();
        load(&connection, Selection::All).map_err(self.sqlite())
    }

    /// The `limit` most-called hosts, in [`Store::list`]'s order: what a listing shows without
    /// reading (and answering with) the whole store. Only those hosts' callers and endpoints are
    /// read. [`Store::host_count`] says how many there are in all.
    pub fn list_top(&self, limit: usize) -> Result<Vec<DiscoveredHost>, StoreError> {
        let connection = self.connection();
        load(&connection, Selection::Top(limit)).map_err(self.sqlite())
    }

    /// How many (host, port) entries the store holds.
    pub fn host_count(&self) -> Result<u64, StoreError> {
        let connection = self.connection();
        connection
            .query_row("SELECT count(*) FROM hosts", [], |row| row.get::<_, i64>(0))
            .map(from_sql)
            .map_err(self.sqlite())
    }

    /// The entries for `host` (every port, or only `port`), by calls (most first).
    pub fn get(&self, host: &str, port: Option<u16>) -> Result<Vec<DiscoveredHost>, StoreError> {
        let connection = self.connection();
        let host = normalize_host(host);
        let mut hosts = load(&connection, Selection::Host(&host)).map_err(self.sqlite())?;
        hosts.retain(|entry| port.is_none_or(|port| entry.port == port));
        Ok(hosts)
    }

    /// Calls never recorded because the store (or the inventory that fed it) was full.
    pub fn dropped_calls(&self) -> Result<u64, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'dropped_calls'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|value| value.map_or(0, from_sql))
            .map_err(self.sqlite())
    }
}

/// Creates the tables of a new file, or of one a crash left half set up, and adds to an older
/// file the columns it lacks ([`ADDED_COLUMNS`]) and the endpoint count
/// ([`ENDPOINT_COUNT_TRIGGERS`]), in one immediate transaction: two processes opening the same
/// file take turns, and the second finds the work done. Only the first version written stays
/// (`INSERT OR IGNORE`).
fn set_up(connection: &mut Connection) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    transaction.execute_batch(SCHEMA)?;
    transaction.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION],
    )?;
    for (table, column, definition) in ADDED_COLUMNS {
        let present: bool = transaction.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |row| row.get(0),
        )?;
        if !present {
            transaction.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    // Counted once, when the file first gets the triggers (in the same transaction, so no
    // write comes between): from then on they keep the number.
    let counted: bool = transaction.query_row(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'endpoint_count')",
        [],
        |row| row.get(0),
    )?;
    if !counted {
        transaction.execute(
            "INSERT INTO meta (key, value) SELECT 'endpoint_count', count(*) FROM endpoints",
            [],
        )?;
    }
    transaction.execute_batch(ENDPOINT_COUNT_TRIGGERS)?;
    transaction.commit()
}

fn schema_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |row| row.get(0),
    )
}

/// What a reached host needs a refused-only one's place for.
#[derive(Clone, Copy)]
enum Need {
    /// A host entry: any refused-only host will do.
    Host,
    /// Room for an endpoint: only a refused-only host that holds one frees any.
    Endpoint,
}

/// Removes the least recently seen host that traffic never reached ([`reached`]: every call
/// refused, or seen by the proxy with no byte and no answer), other than `except` (the host
/// being merged: the store does not yet know what reached it); its calls are counted as
/// dropped. The number of endpoints removed with it, or `None` when there is none.
fn evict_refused_only(
    connection: &Connection,
    need: Need,
    except: (&str, u16),
) -> rusqlite::Result<Option<usize>> {
    let holding_endpoints = match need {
        Need::Host => "",
        Need::Endpoint => {
            "AND EXISTS (SELECT 1 FROM endpoints
                WHERE endpoints.host = hosts.host AND endpoints.port = hosts.port)"
        }
    };
    let victim = connection
        .query_row(
            &format!(
                "SELECT host, port, calls FROM hosts
                 WHERE (calls = blocked_calls
                    OR (seen_by_import = 0 AND bytes_out = 0 AND bytes_in = 0
                        AND NOT EXISTS (SELECT 1 FROM endpoints
                            WHERE endpoints.host = hosts.host AND endpoints.port = hosts.port
                              AND endpoints.last_status IS NOT NULL)))
                   AND NOT (host = ?1 AND port = ?2) {holding_endpoints}
                 ORDER BY last_seen_ms ASC, host ASC LIMIT 1"
            ),
            params![except.0, except.1],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((host, port, calls)) = victim else {
        return Ok(None);
    };
    for table in ["hosts", "callers"] {
        connection.execute(
            &format!("DELETE FROM {table} WHERE host = ?1 AND port = ?2"),
            params![host, port],
        )?;
    }
    let endpoints = connection.execute(
        "DELETE FROM endpoints WHERE host = ?1 AND port = ?2",
        params![host, port],
    )?;
    add_dropped_calls(connection, from_sql(calls))?;
    Ok(Some(endpoints))
}

/// SQL setting `column` to `column + addend`, saturating at SQLite's largest integer: past it
/// SQLite would store a REAL, which `load` cannot read back as a count.
fn saturating_add(column: &str, addend: &str) -> String {
    format!(
        "{column} = CASE WHEN {column} > 9223372036854775807 - {addend} \
         THEN 9223372036854775807 ELSE {column} + {addend} END"
    )
}

fn add_dropped_calls(connection: &Connection, calls: u64) -> rusqlite::Result<()> {
    if calls > 0 {
        let add = saturating_add("value", "excluded.value");
        connection.execute(
            &format!(
                "INSERT INTO meta (key, value) VALUES ('dropped_calls', ?1)
                 ON CONFLICT (key) DO UPDATE SET {add}"
            ),
            [to_sql(calls)],
        )?;
    }
    Ok(())
}

fn merge_in(connection: &Connection, delta: &Inventory, limits: &Limits) -> rusqlite::Result<()> {
    add_dropped_calls(connection, delta.dropped_calls())?;
    let mut host_count: usize = connection
        .query_row("SELECT count(*) FROM hosts", [], |row| row.get::<_, i64>(0))?
        as usize;
    // Kept by triggers ([`ENDPOINT_COUNT_TRIGGERS`]); counted if someone removed it.
    let endpoint_total: Option<i64> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'endpoint_count'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let endpoint_total = match endpoint_total {
        Some(total) => total,
        None => connection.query_row("SELECT count(*) FROM endpoints", [], |row| row.get(0))?,
    };
    let mut endpoint_total = usize::try_from(endpoint_total).unwrap_or(0);
    let mut exists =
        connection.prepare_cached("SELECT 1 FROM hosts WHERE host = ?1 AND port = ?2")?;
    let mut insert_host = connection.prepare_cached(
        "INSERT INTO hosts (host, port, first_seen_ms, last_seen_ms, calls, blocked_calls,
            bytes_out, bytes_in, callers_truncated, endpoints_truncated, seen_by_proxy, seen_by_import,
            seen_http, seen_https)
         VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
    )?;
    // Totals saturate ([`saturating_add`]).
    let totals = [
        ("calls", "?5"),
        ("blocked_calls", "?6"),
        ("bytes_out", "?7"),
        ("bytes_in", "?8"),
        ("callers_truncated", "?9"),
        ("endpoints_truncated", "?10"),
    ]
    .map(|(column, addend)| saturating_add(column, addend))
    .join(", ");
    let mut update_host = connection.prepare_cached(&format!(
        "UPDATE hosts SET
            first_seen_ms = min(first_seen_ms, ?3), last_seen_ms = max(last_seen_ms, ?4), {totals},
            seen_by_proxy = max(seen_by_proxy, ?11), seen_by_import = max(seen_by_import, ?12),
            seen_http = max(seen_http, ?13), seen_https = max(seen_https, ?14)
         WHERE host = ?1 AND port = ?2"
    ))?;
    let mut count_callers =
        connection.prepare_cached("SELECT count(*) FROM callers WHERE host = ?1 AND port = ?2")?;
    let mut insert_caller = connection
        .prepare_cached("INSERT OR IGNORE INTO callers (host, port, caller) VALUES (?1, ?2, ?3)")?;
    let mut caller_exists = connection
        .prepare_cached("SELECT 1 FROM callers WHERE host = ?1 AND port = ?2 AND caller = ?3")?;
    let mut count_endpoints = connection
        .prepare_cached("SELECT count(*) FROM endpoints WHERE host = ?1 AND port = ?2")?;
    let mut select_endpoint = connection.prepare_cached(
        "SELECT calls, blocked_calls, first_seen_ms, last_seen_ms, last_status FROM endpoints
         WHERE host = ?1 AND port = ?2 AND method = ?3 AND template = ?4",
    )?;
    let mut upsert_endpoint = connection.prepare_cached(
        "INSERT INTO endpoints (host, port, method, template, calls, blocked_calls, first_seen_ms,
            last_seen_ms, last_status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (host, port, method, template) DO UPDATE SET
            calls = excluded.calls, blocked_calls = excluded.blocked_calls,
            first_seen_ms = excluded.first_seen_ms, last_seen_ms = excluded.last_seen_ms,
            last_status = excluded.last_status",
    )?;

    for host in delta.hosts() {
        let key = params![host.host, host.port];
        if !exists.exists(key)? {
            // Full: a destination that traffic actually reached takes the place of one that
            // none did (least recently seen): only ever refused, or seen by the proxy with no
            // byte either way (a made-up name that resolves nowhere, a closed port), so a
            // caller probing random names cannot crowd real rogue APIs out. Newcomers that
            // traffic did not reach are counted, not kept.
            if host_count >= limits.max_hosts {
                let evicted = if reached(host) {
                    evict_refused_only(connection, Need::Host, (&host.host, host.port))?
                } else {
                    None
                };
                let Some(endpoints) = evicted else {
                    add_dropped_calls(connection, host.calls)?;
                    continue;
                };
                host_count -= 1;
                endpoint_total = endpoint_total.saturating_sub(endpoints);
            }
            insert_host.execute(params![
                host.host,
                host.port,
                host.first_seen_ms,
                host.last_seen_ms
            ])?;
            host_count += 1;
        }
        let mut callers_truncated = host.callers_truncated;
        let mut caller_count = count_callers.query_row(key, |row| row.get::<_, i64>(0))? as usize;
        for caller in &host.callers {
            if caller_count < limits.max_callers_per_host {
                caller_count += insert_caller.execute(params![host.host, host.port, caller])?;
            } else if !caller_exists.exists(params![host.host, host.port, caller])? {
                callers_truncated += 1;
            }
        }
        let mut endpoints_truncated = host.endpoints_truncated;
        let mut endpoint_count =
            count_endpoints.query_row(key, |row| row.get::<_, i64>(0))? as usize;
        for endpoint in &host.endpoints {
            let stored = select_endpoint
                .query_row(
                    params![host.host, host.port, endpoint.method, endpoint.template],
                    |row| {
                        Ok(EndpointStats {
                            method: endpoint.method.clone(),
                            template: endpoint.template.clone(),
                            calls: from_sql(row.get(0)?),
                            blocked_calls: from_sql(row.get(1)?),
                            first_seen_ms: row.get(2)?,
                            last_seen_ms: row.get(3)?,
                            last_status: row.get(4)?,
                        })
                    },
                )
                .optional()?;
            let merged = match stored {
                Some(mut stored) => {
                    merge_endpoint(&mut stored, endpoint);
                    stored
                }
                None if endpoint_count >= limits.max_endpoints_per_host => {
                    endpoints_truncated += endpoint.calls;
                    continue;
                }
                None => {
                    // Full in all: as for hosts, a destination traffic reached takes the room
                    // of one it did not (one that holds endpoints), so endpoints made up for
                    // refused calls cannot keep real ones out.
                    if endpoint_total >= limits.max_endpoints {
                        let evicted = if reached(host) {
                            evict_refused_only(connection, Need::Endpoint, (&host.host, host.port))?
                        } else {
                            None
                        };
                        let Some(endpoints) = evicted else {
                            endpoints_truncated += endpoint.calls;
                            continue;
                        };
                        host_count -= 1;
                        endpoint_total = endpoint_total.saturating_sub(endpoints);
                    }
                    endpoint_count += 1;
                    endpoint_total += 1;
                    endpoint.clone()
                }
            };
            upsert_endpoint.execute(params![
                host.host,
                host.port,
                merged.method,
                merged.template,
                to_sql(merged.calls),
                to_sql(merged.blocked_calls),
                merged.first_seen_ms,
                merged.last_seen_ms,
                merged.last_status,
            ])?;
        }
        update_host.execute(params![
            host.host,
            host.port,
            host.first_seen_ms,
            host.last_seen_ms,
            to_sql(host.calls),
            to_sql(host.blocked_calls),
            to_sql(host.bytes_out),
            to_sql(host.bytes_in),
            to_sql(callers_truncated),
            to_sql(endpoints_truncated),
            host.sources.contains(&ObservationSource::Proxy),
            host.sources.contains(&ObservationSource::Import),
            host.schemes.contains(&Scheme::Http),
            host.schemes.contains(&Scheme::Https),
        ])?;
    }
    Ok(())
}

/// Which hosts [`load`] reads.
#[derive(Clone, Copy)]
enum Selection<'a> {
    All,
    /// Every port of one host.
    Host(&'a str),
    /// The most-called ones.
    Top(usize),
}

fn load(connection: &Connection, selection: Selection) -> rusqlite::Result<Vec<DiscoveredHost>> {
    let (filter, parameter): (&str, Option<Box<dyn rusqlite::ToSql>>) = match selection {
        Selection::All => ("", None),
        Selection::Host(host) => ("WHERE host = ?1", Some(Box::new(host.to_owned()))),
        Selection::Top(limit) => (
            "ORDER BY calls DESC, host, port LIMIT ?1",
            Some(Box::new(i64::try_from(limit).unwrap_or(i64::MAX))),
        ),
    };
    let mut hosts = Vec::new();
    let mut statement = connection.prepare(&format!(
        "SELECT host, port, first_seen_ms, last_seen_ms, calls, blocked_calls, bytes_out,
            bytes_in, callers_truncated, endpoints_truncated, seen_by_proxy, seen_by_import,
            seen_http, seen_https
         FROM hosts {filter}"
    ))?;
    let mut rows = statement.query(rusqlite::params_from_iter(parameter.iter()))?;
    while let Some(row) = rows.next()? {
        let mut sources = BTreeSet::new();
        if row.get::<_, bool>(10)? {
            sources.insert(ObservationSource::Proxy);
        }
        if row.get::<_, bool>(11)? {
            sources.insert(ObservationSource::Import);
        }
        let mut schemes = BTreeSet::new();
        if row.get::<_, bool>(12)? {
            schemes.insert(Scheme::Http);
        }
        if row.get::<_, bool>(13)? {
            schemes.insert(Scheme::Https);
        }
        hosts.push(DiscoveredHost {
            host: row.get(0)?,
            port: row.get(1)?,
            first_seen_ms: row.get(2)?,
            last_seen_ms: row.get(3)?,
            calls: from_sql(row.get(4)?),
            blocked_calls: from_sql(row.get(5)?),
            bytes_out: from_sql(row.get(6)?),
            bytes_in: from_sql(row.get(7)?),
            callers: BTreeSet::new(),
            callers_truncated: from_sql(row.get(8)?),
            endpoints: Vec::new(),
            endpoints_truncated: from_sql(row.get(9)?),
            sources,
            schemes,
        });
    }
    match selection {
        // Every host: each table read once.
        Selection::All => load_details(connection, &mut hosts, "", &[])?,
        // A few hosts: each one's rows found through the primary key.
        Selection::Host(_) | Selection::Top(_) => {
            for at in 0..hosts.len() {
                let (host, port) = (hosts[at].host.clone(), hosts[at].port);
                load_details(
                    connection,
                    &mut hosts[at..=at],
                    "WHERE host = ?1 AND port = ?2",
                    params![host, port],
                )?;
            }
        }
    }
    sort_by_calls(&mut hosts);
    Ok(hosts)
}

/// Reads the callers and endpoints (rows matching `filter`) of `hosts`.
fn load_details(
    connection: &Connection,
    hosts: &mut [DiscoveredHost],
    filter: &str,
    parameters: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    let index: HashMap<(String, u16), usize> = hosts
        .iter()
        .enumerate()
        .map(|(at, host)| ((host.host.clone(), host.port), at))
        .collect();
    let mut statement =
        connection.prepare_cached(&format!("SELECT host, port, caller FROM callers {filter}"))?;
    let mut rows = statement.query(parameters)?;
    while let Some(row) = rows.next()? {
        if let Some(&at) = index.get(&(row.get(0)?, row.get(1)?)) {
            hosts[at].callers.insert(row.get(2)?);
        }
    }
    let mut statement = connection.prepare_cached(&format!(
        "SELECT host, port, method, template, calls, blocked_calls, first_seen_ms, last_seen_ms,
            last_status
         FROM endpoints {filter} ORDER BY host, port, method, template"
    ))?;
    let mut rows = statement.query(parameters)?;
    while let Some(row) = rows.next()? {
        if let Some(&at) = index.get(&(row.get(0)?, row.get(1)?)) {
            hosts[at].endpoints.push(EndpointStats {
                method: row.get(2)?,
                template: row.get(3)?,
                calls: from_sql(row.get(4)?),
                blocked_calls: from_sql(row.get(5)?),
                first_seen_ms: row.get(6)?,
                last_seen_ms: row.get(7)?,
                last_status: row.get(8)?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Observation;

    fn call(host: &str, caller: &str, path: &str, time_ms: i64) -> Observation {
        Observation {
            host: host.into(),
            port: 443,
            scheme: None,
            caller: Some(caller.into()),
            method: Some("GET".into()),
            path: Some(path.into()),
            status: Some(200),
            bytes_out: 10,
            bytes_in: 20,
            time_ms,
            blocked: false,
            source: ObservationSource::Proxy,
        }
    }

    /// The store is owner-only (0600) however loose the file it finds, and a link in its place
    /// is refused, not followed, as the vault's is.
    #[test]
    fn the_store_is_private_and_never_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        let path = data_dir.join(DISCOVERY_FILE);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&data_dir).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere.db");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let Err(refused) = Store::open(&data_dir) else {
            panic!("a link opened as the store");
        };
        assert!(
            refused
                .to_string()
                .contains("is a symbolic link, not a regular file"),
            "{refused}"
        );
        assert!(!elsewhere.exists());
    }

    #[test]
    fn persists_across_reopen_and_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        {
            let store = Store::open(&data_dir).unwrap();
            let mut inventory = Inventory::new();
            inventory.record(&call("api.x.com", "a", "/v1/things/1", 100));
            inventory.record(&call("api.y.com", "a", "/v1/other", 100));
            inventory.record(&call("api.y.com", "a", "/v1/other", 100));
            store.merge_delta(&inventory.drain()).unwrap();
            let mut status_less = call("api.x.com", "b", "/v1/things/2", 50);
            status_less.status = None;
            status_less.blocked = true;
            inventory.record(&status_less);
            let mut plain = call("api.x.com", "b", "/v1/new", 300);
            plain.scheme = Some(Scheme::Http);
            inventory.record(&plain);
            store.merge_delta(&inventory.drain()).unwrap();
        }
        let store = Store::open(&data_dir).unwrap();
        assert!(data_dir.join(DISCOVERY_FILE).exists());
        let hosts = store.list().unwrap();
        assert_eq!(hosts.len(), 2);
        let x = &store.get("API.x.com", None).unwrap()[0];
        assert_eq!(hosts[0], *x);
        assert_eq!(
            (x.calls, x.blocked_calls, x.bytes_out, x.bytes_in),
            (3, 1, 30, 60)
        );
        assert_eq!((x.first_seen_ms, x.last_seen_ms), (50, 300));
        assert_eq!(x.callers.iter().collect::<Vec<_>>(), ["a", "b"]);
        let things = x.endpoint("GET", "/v1/things/{id}").unwrap();
        assert_eq!((things.calls, things.blocked_calls), (2, 1));
        assert_eq!((things.first_seen_ms, things.last_seen_ms), (50, 100));
        assert_eq!(things.last_status, Some(200));
        assert_eq!(x.endpoints.len(), 2);
        assert!(store.get("api.x.com", Some(80)).unwrap().is_empty());
        assert_eq!(store.get("api.y.com", Some(443)).unwrap()[0].calls, 2);
        assert_eq!(x.sources, BTreeSet::from([ObservationSource::Proxy]));
        assert_eq!(x.schemes, BTreeSet::from([Scheme::Http]));
        assert!(store.get("api.y.com", None).unwrap()[0].schemes.is_empty());
    }

    /// A file written before schemes were kept gets their columns when opened: its hosts stay,
    /// with no scheme known, schemes seen from then on are kept, and the version stays 1 (an
    /// older postern still opens it). Opening it again changes nothing.
    #[test]
    fn a_file_from_before_schemes_gets_their_columns_and_keeps_its_hosts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(DISCOVERY_FILE)).unwrap();
            old.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', 1);
                 CREATE TABLE hosts (host TEXT NOT NULL, port INTEGER NOT NULL,
                    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
                    calls INTEGER NOT NULL, blocked_calls INTEGER NOT NULL,
                    bytes_out INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
                    callers_truncated INTEGER NOT NULL, endpoints_truncated INTEGER NOT NULL,
                    seen_by_proxy INTEGER NOT NULL, seen_by_import INTEGER NOT NULL,
                    PRIMARY KEY (host, port));
                 CREATE TABLE callers (host TEXT NOT NULL, port INTEGER NOT NULL,
                    caller TEXT NOT NULL, PRIMARY KEY (host, port, caller));
                 CREATE TABLE endpoints (host TEXT NOT NULL, port INTEGER NOT NULL,
                    method TEXT NOT NULL, template TEXT NOT NULL, calls INTEGER NOT NULL,
                    blocked_calls INTEGER NOT NULL, first_seen_ms INTEGER NOT NULL,
                    last_seen_ms INTEGER NOT NULL, last_status INTEGER,
                    PRIMARY KEY (host, port, method, template));
                 INSERT INTO hosts VALUES ('api.old.com', 443, 1, 2, 7, 0, 10, 20, 0, 0, 1, 0);
                 INSERT INTO endpoints VALUES ('api.old.com', 443, 'GET', '/v0', 7, 0, 1, 2, 200);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let version = schema_version(&store.connection()).unwrap();
        assert_eq!(version, 1);
        // Its endpoints are counted when it first gets the triggers that keep the count.
        assert_eq!(endpoint_count(&store), (1, 1));
        let old = &store.get("api.old.com", None).unwrap()[0];
        assert_eq!((old.calls, old.bytes_in), (7, 20));
        assert!(old.schemes.is_empty());
        let mut inventory = Inventory::new();
        let mut seen = call("api.old.com", "a", "/v1/x", 3);
        seen.scheme = Some(Scheme::Https);
        inventory.record(&seen);
        store.merge_delta(&inventory).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let old = &store.get("api.old.com", None).unwrap()[0];
        assert_eq!(old.calls, 8);
        assert_eq!(old.schemes, BTreeSet::from([Scheme::Https]));
        assert_eq!(endpoint_count(&store), (2, 2));
        drop(store);
        // What an older postern writes (its columns only) still goes in.
        Connection::open(dir.path().join(DISCOVERY_FILE))
            .unwrap()
            .execute(
                "INSERT INTO hosts (host, port, first_seen_ms, last_seen_ms, calls, blocked_calls,
                    bytes_out, bytes_in, callers_truncated, endpoints_truncated, seen_by_proxy,
                    seen_by_import)
                 VALUES ('api.older.com', 443, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0)",
                [],
            )
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.get("api.older.com", None).unwrap()[0]
            .schemes
            .is_empty());
    }

    /// A file a crash left with its `meta` table and nothing else is set up when next opened.
    #[test]
    fn a_half_set_up_file_is_finished_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(DISCOVERY_FILE))
            .unwrap()
            .execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema_version(&store.connection()).unwrap(), SCHEMA_VERSION);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_newer_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        Connection::open(dir.path().join(DISCOVERY_FILE))
            .unwrap()
            .execute(
                "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let error = Store::open(dir.path()).err().unwrap();
        assert!(
            matches!(error, StoreError::NewerSchema { found: 99, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("upgrade postern"), "{error}");
    }

    /// Totals past SQLite's largest integer stay at it: an import of an absurd size, merged
    /// twice, leaves a store that still loads.
    #[test]
    fn totals_saturate_and_the_store_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..2 {
            let mut delta = Inventory::new();
            let mut huge = call("api.x.com", "a", "/v1/a", 1);
            huge.bytes_out = u64::MAX;
            delta.record(&huge);
            store.merge_delta(&delta).unwrap();
        }
        let hosts = store.list().unwrap();
        assert_eq!(hosts[0].bytes_out, i64::MAX as u64);
        assert_eq!(hosts[0].calls, 2);
    }

    #[test]
    fn caps_apply_to_the_store_too() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_hosts: 1,
            max_endpoints_per_host: 1,
            max_callers_per_host: 1,
            ..Limits::default()
        };
        let store = Store::open_with_limits(dir.path(), limits).unwrap();
        let mut first = Inventory::new();
        first.record(&call("api.x.com", "a", "/v1/a", 1));
        store.merge_delta(&first).unwrap();
        let mut second = Inventory::new();
        second.record(&call("api.x.com", "b", "/v1/b", 2));
        second.record(&call("api.x.com", "b", "/v1/b", 2));
        second.record(&call("api.y.com", "b", "/v1/b", 2));
        store.merge_delta(&second).unwrap();
        let hosts = store.list().unwrap();
        assert_eq!(hosts.len(), 1);
        let x = &hosts[0];
        assert_eq!(x.calls, 3);
        assert_eq!(x.callers.len(), 1);
        assert_eq!(x.callers_truncated, 1);
        assert_eq!(x.endpoints_truncated, 2);
        assert_eq!(store.dropped_calls().unwrap(), 1);
    }

    #[test]
    fn when_full_a_reached_host_replaces_a_refused_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_hosts: 2,
            ..Limits::default()
        };
        let store = Store::open_with_limits(dir.path(), limits).unwrap();
        let refused = |host: &str, time: i64| {
            let mut observation = call(host, "prober", "/", time);
            observation.blocked = true;
            observation
        };
        let mut probes = Inventory::new();
        probes.record(&refused("junk-1.example", 1));
        probes.record(&refused("junk-2.example", 2));
        store.merge_delta(&probes).unwrap();
        // Another refused-only newcomer does not displace anything.
        let mut more = Inventory::new();
        more.record(&refused("junk-3.example", 3));
        store.merge_delta(&more).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|h| h.host).collect();
        assert!(names.contains(&"junk-1.example".to_string()), "{names:?}");
        // A destination traffic reached takes the oldest refused-only slot.
        let mut real = Inventory::new();
        real.record(&call("api.rogue.example", "app", "/v1/upload", 4));
        store.merge_delta(&real).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|h| h.host).collect();
        assert_eq!(names.len(), 2);
        assert!(
            names.contains(&"api.rogue.example".to_string()),
            "{names:?}"
        );
        assert!(!names.contains(&"junk-1.example".to_string()), "{names:?}");
        assert_eq!(store.dropped_calls().unwrap(), 2);

        // A name the proxy let go that nothing reached (no byte either way: it resolves
        // nowhere) is not kept over reached ones either, and is what a reached one replaces.
        let unreached = |host: &str, time: i64| {
            let mut observation = call(host, "prober", "/", time);
            (
                observation.bytes_out,
                observation.bytes_in,
                observation.status,
            ) = (0, 0, None);
            observation
        };
        let mut made_up = Inventory::new();
        made_up.record(&unreached("nowhere-1.example", 5));
        store.merge_delta(&made_up).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|h| h.host).collect();
        assert!(
            !names.contains(&"nowhere-1.example".to_string()),
            "{names:?}"
        );
        assert_eq!(store.dropped_calls().unwrap(), 3);
        // One that answered with no body either way (a `204` to a `GET`) was reached: it takes
        // the remaining refused-only slot.
        let mut beacon = Inventory::new();
        let mut answered = unreached("beacon.example", 6);
        answered.status = Some(204);
        beacon.record(&answered);
        store.merge_delta(&beacon).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|h| h.host).collect();
        assert!(names.contains(&"beacon.example".to_string()), "{names:?}");
        assert!(!names.contains(&"junk-2.example".to_string()), "{names:?}");
    }

    fn endpoint_count(store: &Store) -> (i64, i64) {
        let connection = store.connection();
        let count = |sql: &str| connection.query_row(sql, [], |row| row.get(0)).unwrap();
        (
            count("SELECT value FROM meta WHERE key = 'endpoint_count'"),
            count("SELECT count(*) FROM endpoints"),
        )
    }

    /// The endpoints in all are capped, what did not fit counted on its host; a destination
    /// traffic reached takes the room of a refused-only one holding endpoints (never its own);
    /// the kept count stays the number of rows.
    #[test]
    fn endpoints_in_all_are_capped_and_a_reached_host_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_endpoints: 3,
            ..Limits::default()
        };
        let store = Store::open_with_limits(dir.path(), limits).unwrap();
        let refused = |host: &str, path: &str, time: i64| {
            let mut observation = call(host, "prober", path, time);
            observation.blocked = true;
            observation
        };
        let merge = |observations: &[Observation]| {
            let mut delta = Inventory::new();
            for observation in observations {
                delta.record(observation);
            }
            store.merge_delta(&delta).unwrap();
        };
        merge(&[
            refused("junk-1.invalid", "/a", 1),
            refused("junk-1.invalid", "/b", 1),
            refused("junk-1.invalid", "/c", 1),
        ]);
        merge(&[refused("junk-2.invalid", "/a", 2)]);
        let junk = &store.get("junk-2.invalid", None).unwrap()[0];
        assert_eq!((junk.endpoints.len(), junk.endpoints_truncated), (0, 1));
        assert_eq!(endpoint_count(&store), (3, 3));

        merge(&[
            call("api.rogue.example", "app", "/v1/upload", 3),
            call("api.rogue.example", "app", "/v1/files", 3),
        ]);
        assert!(store.get("junk-1.invalid", None).unwrap().is_empty());
        assert_eq!(
            store.get("api.rogue.example", None).unwrap()[0]
                .endpoints
                .len(),
            2
        );
        assert_eq!(store.dropped_calls().unwrap(), 3);
        assert_eq!(endpoint_count(&store), (2, 2));

        // junk-3, reached at last, is not its own victim, and junk-2 holds no endpoint.
        merge(&[refused("junk-3.invalid", "/x", 4)]);
        merge(&[call("junk-3.invalid", "app", "/y", 5)]);
        let junk = &store.get("junk-3.invalid", None).unwrap()[0];
        assert_eq!((junk.endpoints.len(), junk.endpoints_truncated), (1, 1));
        assert_eq!(store.list().unwrap().len(), 3);
        assert_eq!(endpoint_count(&store), (3, 3));
        drop(store);
        let store = Store::open_with_limits(dir.path(), limits).unwrap();
        assert_eq!(endpoint_count(&store), (3, 3));
    }

    /// `list_top` is the head of `list`, callers and endpoints included.
    #[test]
    fn list_top_is_the_head_of_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut delta = Inventory::new();
        for (host, calls) in [("a.example", 1), ("b.example", 3), ("c.example", 2)] {
            for index in 0..calls {
                delta.record(&call(host, &format!("c{index}"), &format!("/v{index}"), 1));
            }
        }
        let mut other_port = call("b.example", "z", "/v9", 1);
        other_port.port = 8443;
        delta.record(&other_port);
        store.merge_delta(&delta).unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(store.host_count().unwrap(), 4);
        assert_eq!(store.list_top(2).unwrap(), all[..2]);
        assert_eq!(store.list_top(10).unwrap(), all);
        assert!(store.list_top(0).unwrap().is_empty());
        assert_eq!(all[0].endpoints.len(), 3);
        assert_eq!(all[0].callers.len(), 3);
    }

    #[test]
    fn concurrent_writers_share_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let data_dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let store = Store::open(&data_dir).unwrap();
                    for round in 0..50 {
                        let mut inventory = Inventory::new();
                        inventory.record(&call(
                            "api.shared.com",
                            &format!("w{writer}"),
                            "/v1/x",
                            round,
                        ));
                        inventory.record(&call(&format!("api.w{writer}.com"), "c", "/v1/y", round));
                        store.merge_delta(&inventory).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let hosts = store.list().unwrap();
        assert_eq!(hosts[0].host, "api.shared.com");
        assert_eq!(hosts[0].calls, 100);
        assert_eq!(hosts[0].endpoint("GET", "/v1/x").unwrap().calls, 100);
        assert_eq!(hosts[0].callers.len(), 2);
        assert_eq!(hosts.iter().map(|h| h.calls).sum::<u64>(), 200);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
        assert_send_sync::<Inventory>();
    }
}
