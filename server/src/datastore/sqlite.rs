//! The SQLite datastore: the embedded default, one database file on the server's disk.
//!
//! # Connections
//!
//! rusqlite connections are blocking, so every operation runs on tokio's blocking
//! pool (`spawn_blocking`) and the runtime's worker threads never wait on SQLite.
//!
//! - **One writer connection** behind an async mutex. SQLite allows one writer at a
//!   time anyway; queueing writers on a fair async lock (instead of letting several
//!   connections fight over the file lock) means a waiting writer costs no thread and
//!   never sees `SQLITE_BUSY` from its own process. The lock is taken *before* the
//!   blocking task is spawned, so only the writer that holds it occupies a thread.
//! - **A small pool of reader connections**. In WAL mode readers never block the
//!   writer nor each other, and each read sees the last committed state, so the
//!   server's hot path (entry sync) scales with cores instead of queueing behind
//!   writes. A semaphore caps concurrent reads at the pool size; idle connections are
//!   kept for reuse (each keeps its prepared-statement cache warm) and a missing one is
//!   opened on demand. Readers set `query_only` so a bug cannot write through them.
//!
//! A caller that is cancelled while its operation runs does not cancel the operation:
//! the blocking task finishes, and a write commits or rolls back as a whole.
//!
//! # Transactions
//!
//! Every write is one `BEGIN IMMEDIATE` transaction (taking the write lock up front,
//! so a transaction never fails halfway for lack of it), committed only when all of
//! it succeeded; on any error the transaction is dropped and rolled back, so nothing
//! is half-written. `create_entries` runs one transaction with a savepoint per entry:
//! an entry refused as a duplicate (or otherwise invalid) rolls back to its savepoint
//! and gets its own error, while a database failure aborts the whole batch.
//!
//! # Schema
//!
//! `PRAGMA user_version` is the schema version; [`MIGRATIONS`] lists the steps, each
//! applied in its own transaction together with the version bump. A database newer
//! than the code is refused rather than guessed at.
//!
//! - `entries`: the entry as JSON (`data`) plus the columns queries need: `id`
//!   (primary key, the pagination order), `spiffe_id`, `parent_id`, `revision`, and
//!   `identity`, unique: SHA-256 of the SPIFFE ID, the parent ID and the sorted,
//!   deduplicated selectors, which is what makes two entries "the same registration".
//! - `entry_selectors(entry_id, selector)`, indexed by selector, for selector filters.
//! - `entry_events`: one row per create/update/delete, written in the same
//!   transaction. `AUTOINCREMENT` keeps event IDs strictly growing even after pruning
//!   (a plain rowid would reuse the highest ID once it is deleted); an entry's
//!   `revision_number` is the ID of its latest event.
//! - `attested_nodes` (one column per field) and `node_selectors` in their order.
//! - `join_tokens(token, expires_at)`.
//! - `bundles`: the JWK Set text plus the JWT authorities' expiry times, which the
//!   JWK Set form does not carry.
//! - `ca_records`: each record as JSON.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a commit appends to the
//! WAL without an fsync, and the WAL is synced at checkpoints. The database can never
//! be corrupted by a crash, and a crash of the server process loses nothing (the data
//! is in the OS page cache); but a power cut or kernel crash may roll back the last
//! transactions committed before it. Losing a just-created entry is recoverable (the
//! operator sees it missing and registers it again). Some writes are not: losing a
//! renewed serial strands a join-token agent that cannot re-attest, losing a ban or an
//! eviction silently undoes it, a lost token redemption lets the token be used again,
//! a lost CA journal record forgets a key already in use, and a lost bundle change
//! brings back an authority that was removed. Those writes (attested nodes, join-token
//! takes, bundles, the CA journal) switch the connection to `synchronous=FULL` for
//! their own commit (see [`Durability`]); they are rare enough that the fsync costs
//! nothing noticeable.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, ffi,
    params, params_from_iter,
};
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use super::codec::{
    Identity, decode_bundle, decode_entry, decode_error, encode_bundle, encode_entry, from_sql_id,
    now_unix, require_found, to_sql_id, token_label,
};
use super::{
    AttestedNode, CaRecord, Datastore, DatastoreError, EntryEvent, EntryFilter, Page, Result,
};

/// How long a statement waits for a lock held by another process before giving up
/// with `Unavailable`. In-process writers queue on the writer mutex instead.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; above the number of distinct statements
/// this module uses, so the hot ones are never re-prepared.
const STATEMENT_CACHE: usize = 64;

/// Page cache of the writer, as SQLite's negative KiB. SQLite's default (2 MiB) is far
/// below the working set of a large batch: entry IDs and identity hashes are random, so
/// every insert lands on a random index page, and a transaction bigger than the cache
/// spills pages to the WAL and reads them back. The cache grows only as it is used.
const WRITER_CACHE_KIB: i64 = -64 * 1024;

/// Page cache of each reader. Smaller than the writer's, as there are several; a miss
/// costs a read from the OS page cache, not the disk.
const READER_CACHE_KIB: i64 = -8 * 1024;

/// The schema, version 1.
const SCHEMA_V1: &str = "
CREATE TABLE entries (
    id        TEXT PRIMARY KEY NOT NULL,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    identity  TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    data      TEXT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (identity);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
CREATE INDEX entries_parent_id ON entries (parent_id);

CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    PRIMARY KEY (entry_id, selector)
) WITHOUT ROWID;
CREATE INDEX entry_selectors_selector ON entry_selectors (selector);

CREATE TABLE entry_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id TEXT NOT NULL,
    deleted  INTEGER NOT NULL CHECK (deleted IN (0, 1))
);

CREATE TABLE attested_nodes (
    spiffe_id           TEXT PRIMARY KEY NOT NULL,
    attestation_type    TEXT NOT NULL,
    cert_serial         TEXT NOT NULL,
    cert_not_after      INTEGER NOT NULL,
    prev_cert_serial    TEXT NOT NULL,
    prev_cert_not_after INTEGER NOT NULL,
    banned              INTEGER NOT NULL CHECK (banned IN (0, 1)),
    can_reattest        INTEGER NOT NULL CHECK (can_reattest IN (0, 1)),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

CREATE TABLE node_selectors (
    node_id  TEXT NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    selector TEXT NOT NULL,
    PRIMARY KEY (node_id, position)
) WITHOUT ROWID;
CREATE INDEX node_selectors_selector ON node_selectors (selector);

CREATE TABLE join_tokens (
    token      TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain TEXT PRIMARY KEY NOT NULL,
    jwks         TEXT NOT NULL,
    jwt_expiries TEXT NOT NULL
);

CREATE TABLE ca_records (
    id         TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    data       TEXT NOT NULL
);
";

/// Version 2: a renewed agent SVID is pending (`new_cert_*`) until the agent uses it,
/// instead of replacing the current serial at once (`prev_cert_*`). A node renewed
/// under version 1 may hold either SVID: its previous serial becomes the proven one
/// and its current serial the pending one, so both stay accepted until the agent
/// shows which it has.
const SCHEMA_V2: &str = "
ALTER TABLE attested_nodes ADD COLUMN new_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE attested_nodes ADD COLUMN new_cert_not_after INTEGER NOT NULL DEFAULT 0;
UPDATE attested_nodes
   SET new_cert_serial = cert_serial, new_cert_not_after = cert_not_after,
       cert_serial = prev_cert_serial, cert_not_after = prev_cert_not_after
 WHERE prev_cert_serial <> '' AND banned = 0;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_serial;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_not_after;
";

/// Schema migrations, oldest first: step `i` takes the database from version `i` to
/// `i + 1`. A released step is never edited (databases in the field already ran it);
/// a change is a new step appended here.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// Whether a write's commit must reach the disk before it returns (see the module
/// documentation on durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Survives a process crash; the last commits may be lost on power loss.
    Normal,
    /// Survives power loss.
    Full,
}

/// The SQLite implementation of [`Datastore`]. Cloning shares the same connections.
#[derive(Clone)]
pub struct SqliteDatastore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Arc<AsyncMutex<Connection>>,
    idle_readers: StdMutex<Vec<Connection>>,
    read_slots: Arc<Semaphore>,
}

impl fmt::Debug for SqliteDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDatastore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteDatastore {
    /// Opens (creating it if missing, mode 0600, with its parent directory) the
    /// database at `path` and brings its schema up to date.
    ///
    /// This blocks (file I/O, migrations): call it at start-up, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_migrations(path, MIGRATIONS)
    }

    fn open_with_migrations(path: &Path, migrations: &[&str]) -> Result<Self> {
        prepare_file(path)?;
        let mut writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        configure_writer(&writer, path)?;
        check_integrity(&writer, path)?;
        migrate(&mut writer, path, migrations)?;
        // Open one reader now so that a problem with read connections shows at start-up
        // rather than on the first request.
        let first_reader = open_reader(path)?;
        let slots = reader_slots();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Arc::new(AsyncMutex::new(writer)),
                idle_readers: StdMutex::new(vec![first_reader]),
                read_slots: Arc::new(Semaphore::new(slots)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DatastoreError::Unavailable("the datastore is closed".into()))?;
        let inner = self.inner.clone();
        run_blocking(move || {
            let _permit = permit;
            let mut conn = inner.checkout_reader()?;
            let out = f(&mut conn);
            inner.checkin_reader(conn);
            out
        })
        .await
    }

    /// Runs `f` on the writer connection on the blocking pool, once the writer is free.
    async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let mut conn = self.inner.writer.clone().lock_owned().await;
        run_blocking(move || {
            if durability == Durability::Full {
                conn.pragma_update(None, "synchronous", "FULL")
                    .ctx("switching to synchronous=FULL")?;
            }
            let out = f(&mut conn);
            if durability == Durability::Full
                && let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL")
            {
                // Staying at FULL is only slower, never less safe.
                tracing::warn!(error = %e, "sqlite: could not restore synchronous=NORMAL");
            }
            out
        })
        .await
    }
}

impl Inner {
    fn checkout_reader(&self) -> Result<Connection> {
        let idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn checkin_reader(&self, conn: Connection) {
        self.idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// How many reads may run at once. Reads are mostly CPU work on cached pages; a few
/// more connections than cores lets a short read pass a long one (`all_entries`).
fn reader_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DatastoreError::Backend(format!("sqlite task failed: {e}")))?
}

/// Creates the parent directory (0700) and the database file (0600) when missing.
/// SQLite gives the `-wal` and `-shm` files the mode of the database file, so they are
/// 0600 too; creating the file ourselves is what keeps SQLite's default (0644 less the
/// umask) away from it.
fn prepare_file(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                DatastoreError::Backend(format!(
                    "cannot create the database directory {}: {e}",
                    dir.display()
                ))
            })?;
    }
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let file_error = |e: io::Error| {
        DatastoreError::Backend(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))
    };
    match created {
        // The umask could have taken bits away (even the owner's); set exactly 0600.
        Ok(file) => file
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(file_error),
        // An existing database keeps whatever mode its operator gave it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(file_error(e)),
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> DatastoreError {
    let what = format!("cannot open the database {}", path.display());
    match sql_error(&what, e) {
        DatastoreError::Unavailable(m) => DatastoreError::Unavailable(m),
        other => DatastoreError::Backend(match other {
            DatastoreError::Backend(m) => m,
            m => format!("{what}: {m}"),
        }),
    }
}

fn configure_writer(conn: &Connection, path: &Path) -> Result<()> {
    let err = |e| open_error(path, e);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // The first statement that reads the file: a file that is not a SQLite database
    // fails here. WAL is a property of the file and stays set.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Concurrent readers depend on WAL; refuse rather than run without it.
        return Err(DatastoreError::Backend(format!(
            "cannot open the database {}: it cannot use WAL mode (journal_mode is {mode}); \
             is it on a file system without shared memory support?",
            path.display()
        )));
    }
    // See the module documentation on durability.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// How many problems `PRAGMA quick_check` reports at most.
const INTEGRITY_REPORT: i64 = 5;

/// Runs SQLite's `quick_check` (every page and record well formed, without the
/// slower index cross-checks of `integrity_check`) and refuses a damaged database:
/// serving from it could hand out entries that are half there, and writing to it
/// could spread the damage. A backup is the way back; the message says so.
fn check_integrity(conn: &Connection, path: &Path) -> Result<()> {
    let problems: Vec<String> = conn
        .prepare(&format!("PRAGMA quick_check({INTEGRITY_REPORT})"))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| corrupt(path, &e.to_string()))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(corrupt(path, &problems.join("; ")))
}

fn corrupt(path: &Path, detail: &str) -> DatastoreError {
    DatastoreError::Backend(format!(
        "the database {} is damaged (SQLite integrity check: {detail}); stop the server, \
         keep a copy of the damaged file for analysis, and restore the database from a \
         backup",
        path.display()
    ))
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    // Opened read-write (a read-only connection cannot recover the WAL index after a
    // crash) but barred from writing.
    let configure = || -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", "ON")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(())
    };
    configure().map_err(|e| open_error(path, e))?;
    Ok(conn)
}

/// Brings the schema from its stored version up to `migrations.len()`, one step per
/// transaction, so that a failed step leaves the database at the previous version.
fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len();
    loop {
        // IMMEDIATE: two servers starting on the same file must not both run a step.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| open_error(path, e))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| open_error(path, e))?;
        let version = usize::try_from(version).map_err(|_| {
            DatastoreError::Backend(format!(
                "{}: invalid database schema version {version}",
                path.display()
            ))
        })?;
        if version > supported {
            return Err(DatastoreError::Backend(format!(
                "{}: database schema version {version} is newer than this server supports \
                 ({supported}); upgrade the server",
                path.display()
            )));
        }
        let Some(step) = migrations.get(version) else {
            return Ok(());
        };
        let next = version + 1;
        let failed = |e: rusqlite::Error| {
            DatastoreError::Backend(format!(
                "{}: migrating the database schema to version {next} failed: {e}",
                path.display()
            ))
        };
        tx.execute_batch(step).map_err(failed)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(next).unwrap_or(i64::MAX),
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(path = %path.display(), version = next, "sqlite: schema migrated");
    }
}

// ---- errors ----

/// Maps a SQLite error met on the record described by `what` (a noun: "entry X").
fn sql_error(what: impl fmt::Display, e: rusqlite::Error) -> DatastoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &e {
        match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return DatastoreError::Unavailable(format!("{what}: {e}"));
            }
            // The disk is full (or the file may not grow): retrying once space is
            // freed works, and nothing was written.
            ErrorCode::DiskFull => {
                return DatastoreError::Unavailable(format!(
                    "{what}: {e}: the disk holding the database is full; free space on it"
                ));
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                tracing::error!("{what}: {e}: the database file is damaged");
                return DatastoreError::Backend(format!(
                    "{what}: {e}: the database file is damaged; restore it from a backup"
                ));
            }
            // Only uniqueness means "already exists"; a foreign-key, CHECK or NOT NULL
            // violation is a bug here and is reported as such.
            ErrorCode::ConstraintViolation
                if matches!(
                    failure.extended_code,
                    ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE
                ) =>
            {
                return DatastoreError::AlreadyExists(what.to_string());
            }
            _ => {}
        }
    }
    DatastoreError::Backend(format!("{what}: {e}"))
}

trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| sql_error(what, e))
    }
}

fn begin(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("write transaction")
}

// ---- entries ----

fn load_entry(conn: &Connection, id: &str) -> Result<Option<RegistrationEntry>> {
    let data: Option<String> = conn
        .prepare_cached("SELECT data FROM entries WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .ctx(format_args!("entry {id}"))?;
    data.map(|d| decode_entry(id, &d)).transpose()
}

/// The entry (other than `except`) that holds this identity.
fn identity_owner(conn: &Connection, identity: &Identity, except: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT id FROM entries WHERE identity = ?1 AND id <> ?2")
        .and_then(|mut s| {
            s.query_row(params![identity.hash, except], |r| r.get(0))
                .optional()
        })
        .ctx("entry identity")
}

fn record_event(conn: &Connection, entry_id: &str, deleted: bool) -> Result<u64> {
    conn.prepare_cached("INSERT INTO entry_events (entry_id, deleted) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![entry_id, deleted]))
        .ctx(format_args!("change event of entry {entry_id}"))?;
    from_sql_id(conn.last_insert_rowid())
}

fn insert_selectors(conn: &Connection, entry_id: &str, selectors: &[String]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO entry_selectors (entry_id, selector) VALUES (?1, ?2)")
        .ctx(format_args!("selectors of entry {entry_id}"))?;
    for s in selectors {
        stmt.execute(params![entry_id, s])
            .ctx(format_args!("selectors of entry {entry_id}"))?;
    }
    Ok(())
}

fn insert_entry(
    conn: &Connection,
    mut entry: RegistrationEntry,
    now: i64,
) -> Result<RegistrationEntry> {
    if entry.id.is_empty() {
        entry.id = uuid::Uuid::new_v4().to_string();
    }
    if entry.created_at == 0 {
        entry.created_at = now;
    }
    // Checked before writing anything, to name the conflicting entry in the error;
    // the unique indexes stay as the last line of defence.
    let id_taken = conn
        .prepare_cached("SELECT 1 FROM entries WHERE id = ?1")
        .and_then(|mut s| s.exists([&entry.id]))
        .ctx(format_args!("entry {}", entry.id))?;
    if id_taken {
        return Err(DatastoreError::AlreadyExists(format!(
            "entry with id {}",
            entry.id
        )));
    }
    let identity = Identity::of(&entry);
    if let Some(existing) = identity_owner(conn, &identity, &entry.id)? {
        return Err(identity.duplicate_of(&existing));
    }
    entry.revision_number = record_event(conn, &entry.id, false)?;
    let data = encode_entry(&entry)?;
    conn.prepare_cached(
        "INSERT INTO entries (id, spiffe_id, parent_id, identity, revision, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.id,
            identity.spiffe_id,
            identity.parent_id,
            identity.hash,
            to_sql_id(entry.revision_number),
            data
        ])
    })
    .ctx(format_args!("entry with id {}", entry.id))?;
    insert_selectors(conn, &entry.id, &identity.selectors)?;
    Ok(entry)
}

fn update_entry_tx(conn: &Connection, mut entry: RegistrationEntry) -> Result<RegistrationEntry> {
    let old = load_entry(conn, &entry.id)?
        .ok_or_else(|| DatastoreError::NotFound(format!("entry {:?}", entry.id)))?;
    entry.created_at = old.created_at;
    let identity = Identity::of(&entry);
    if let Some(existing) = identity_owner(conn, &identity, &entry.id)? {
        return Err(identity.duplicate_of(&existing));
    }
    entry.revision_number = record_event(conn, &entry.id, false)?;
    let data = encode_entry(&entry)?;
    conn.prepare_cached(
        "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, identity = ?4, revision = ?5,
         data = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.id,
            identity.spiffe_id,
            identity.parent_id,
            identity.hash,
            to_sql_id(entry.revision_number),
            data
        ])
    })
    .ctx(format_args!("entry {}", entry.id))?;
    conn.prepare_cached("DELETE FROM entry_selectors WHERE entry_id = ?1")
        .and_then(|mut s| s.execute([&entry.id]))
        .ctx(format_args!("selectors of entry {}", entry.id))?;
    insert_selectors(conn, &entry.id, &identity.selectors)?;
    Ok(entry)
}

fn delete_entry_tx(conn: &Connection, id: &str) -> Result<RegistrationEntry> {
    let old =
        load_entry(conn, id)?.ok_or_else(|| DatastoreError::NotFound(format!("entry {id:?}")))?;
    // The foreign key cascades too; deleting explicitly does not depend on it being on.
    conn.prepare_cached("DELETE FROM entry_selectors WHERE entry_id = ?1")
        .and_then(|mut s| s.execute([id]))
        .ctx(format_args!("selectors of entry {id}"))?;
    conn.prepare_cached("DELETE FROM entries WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .ctx(format_args!("entry {id}"))?;
    record_event(conn, id, true)?;
    Ok(old)
}

/// Errors that belong to one entry of a batch; anything else aborts the batch.
fn is_per_entry(e: &DatastoreError) -> bool {
    matches!(
        e,
        DatastoreError::AlreadyExists(_) | DatastoreError::Invalid(_) | DatastoreError::NotFound(_)
    )
}

/// Orders selectors from the rarest to the commonest, counting each up to a cap so that
/// a selector every entry holds costs no more than a rare one.
fn rarest_first(conn: &Connection, selectors: Vec<String>) -> Result<Vec<String>> {
    if selectors.len() < 2 {
        return Ok(selectors);
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT count(*) FROM \
             (SELECT 1 FROM entry_selectors WHERE selector = ?1 LIMIT 1000)",
        )
        .ctx("entry selectors")?;
    let mut counted = Vec::with_capacity(selectors.len());
    for s in selectors {
        let n: i64 = stmt.query_row([&s], |r| r.get(0)).ctx("entry selectors")?;
        counted.push((n, s));
    }
    counted.sort();
    Ok(counted.into_iter().map(|(_, s)| s).collect())
}

fn query_entries(
    conn: &Connection,
    sql: &str,
    args: Vec<SqlValue>,
) -> Result<Vec<RegistrationEntry>> {
    let mut stmt = conn.prepare_cached(sql).ctx("entries")?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .ctx("entries")?;
    let mut out = Vec::new();
    for row in rows {
        let (id, data) = row.ctx("entries")?;
        out.push(decode_entry(&id, &data)?);
    }
    Ok(out)
}

// ---- attested nodes ----

const NODE_COLUMNS: &str = "spiffe_id, attestation_type, cert_serial, cert_not_after, \
     new_cert_serial, new_cert_not_after, banned, can_reattest, created_at, updated_at";

/// A node row before its ID is parsed and its selectors attached.
struct NodeRow {
    id: String,
    attestation_type: String,
    cert_serial: String,
    cert_not_after: i64,
    new_cert_serial: String,
    new_cert_not_after: i64,
    banned: bool,
    can_reattest: bool,
    created_at: i64,
    updated_at: i64,
}

impl NodeRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            attestation_type: r.get(1)?,
            cert_serial: r.get(2)?,
            cert_not_after: r.get(3)?,
            new_cert_serial: r.get(4)?,
            new_cert_not_after: r.get(5)?,
            banned: r.get(6)?,
            can_reattest: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
        })
    }

    fn into_node(self, selectors: Vec<String>) -> Result<AttestedNode> {
        let what = format_args!("attested node {}", self.id);
        let spiffe_id = SpiffeId::new(&self.id).map_err(|e| decode_error(what, e))?;
        let selectors = selectors
            .iter()
            .map(|s| s.parse::<Selector>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| decode_error(what, e))?;
        Ok(AttestedNode {
            spiffe_id,
            attestation_type: self.attestation_type,
            cert_serial: self.cert_serial,
            cert_not_after: self.cert_not_after,
            new_cert_serial: self.new_cert_serial,
            new_cert_not_after: self.new_cert_not_after,
            banned: self.banned,
            can_reattest: self.can_reattest,
            selectors,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn node_selectors(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT selector FROM node_selectors WHERE node_id = ?1 ORDER BY position")
        .ctx(format_args!("selectors of attested node {id}"))?;
    stmt.query_map([id], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .ctx(format_args!("selectors of attested node {id}"))
}

/// The node `id` with its selectors, read in the caller's transaction.
fn load_node(conn: &Connection, id: &str) -> Result<Option<AttestedNode>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM attested_nodes WHERE spiffe_id = ?1"
        ))
        .and_then(|mut s| s.query_row([id], NodeRow::from_row).optional())
        .ctx(format_args!("attested node {id}"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let selectors = node_selectors(conn, id)?;
    row.into_node(selectors).map(Some)
}

/// Writes a node's serials (as a renewal or an activation planned them).
fn store_node_svids(conn: &Connection, id: &str, node: &AttestedNode) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attested_nodes SET
            cert_serial = ?2, cert_not_after = ?3,
            new_cert_serial = ?4, new_cert_not_after = ?5, updated_at = ?6
         WHERE spiffe_id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            node.cert_serial,
            node.cert_not_after,
            node.new_cert_serial,
            node.new_cert_not_after,
            node.updated_at
        ])
    })
    .ctx(format_args!("attested node {id}"))?;
    Ok(())
}

// ---- bundles ----

fn bundle_from_row(td: &str, jwks: &str, expiries: &str) -> Result<Bundle> {
    let what = format_args!("bundle of {td}");
    let td = TrustDomain::new(td).map_err(|e| decode_error(what, e))?;
    let expiries: Vec<i64> = serde_json::from_str(expiries).map_err(|e| decode_error(what, e))?;
    decode_bundle(&td, jwks, &expiries)
}

#[async_trait]
impl Datastore for SqliteDatastore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).ctx("ping"))
            .await
    }

    // ---- registration entries ----

    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        let now = now_unix();
        self.write(Durability::Normal, move |conn| {
            let tx = begin(conn)?;
            let entry = insert_entry(&tx, entry, now)?;
            tx.commit().ctx(format_args!("entry {}", entry.id))?;
            Ok(entry)
        })
        .await
    }

    async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<RegistrationEntry>>> {
        let now = now_unix();
        self.write(Durability::Normal, move |conn| {
            let mut tx = begin(conn)?;
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                let sp = tx.savepoint().ctx("entry batch")?;
                match insert_entry(&sp, entry, now) {
                    Ok(stored) => {
                        sp.commit().ctx("entry batch")?;
                        results.push(Ok(stored));
                    }
                    // Dropping the savepoint rolls this entry back; the batch goes on.
                    Err(e) if is_per_entry(&e) => results.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            tx.commit().ctx("entry batch")?;
            Ok(results)
        })
        .await
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>> {
        let id = id.to_owned();
        self.read(move |conn| load_entry(conn, &id)).await
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        let token = page.token.clone();
        let spiffe_id = filter.by_spiffe_id.as_ref().map(SpiffeId::to_string);
        let parent_id = filter.by_parent_id.as_ref().map(SpiffeId::to_string);
        let selectors: Vec<String> = filter
            .by_selectors
            .iter()
            .map(Selector::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // One row more than the page tells whether another page follows, so the last
        // page never comes with a token that leads to an empty one.
        let size = usize::try_from(page.size).unwrap_or(usize::MAX);
        let limit = if size == 0 {
            -1
        } else {
            i64::from(page.size) + 1
        };
        let mut entries = self
            .read(move |conn| {
                let selectors = rarest_first(conn, selectors)?;
                let mut sql = String::from("SELECT e.id, e.data FROM entries e WHERE 1 = 1");
                let mut args = Vec::new();
                if !token.is_empty() {
                    sql.push_str(" AND e.id > ?");
                    args.push(SqlValue::Text(token));
                }
                if let Some(id) = spiffe_id {
                    sql.push_str(" AND e.spiffe_id = ?");
                    args.push(SqlValue::Text(id));
                }
                if let Some(id) = parent_id {
                    sql.push_str(" AND e.parent_id = ?");
                    args.push(SqlValue::Text(id));
                }
                if let Some((first, rest)) = selectors.split_first() {
                    // Walk the rarest selector's index range and probe the others by
                    // primary key: the cost follows the rarest selector, not the
                    // commonest (an INTERSECT would build the set of every one).
                    sql.push_str(
                        " AND e.id IN (SELECT s0.entry_id FROM entry_selectors s0 \
                         WHERE s0.selector = ?",
                    );
                    args.push(SqlValue::Text(first.clone()));
                    for s in rest {
                        sql.push_str(
                            " AND EXISTS (SELECT 1 FROM entry_selectors s \
                             WHERE s.entry_id = s0.entry_id AND s.selector = ?)",
                        );
                        args.push(SqlValue::Text(s.clone()));
                    }
                    sql.push(')');
                }
                sql.push_str(" ORDER BY e.id LIMIT ?");
                args.push(SqlValue::Integer(limit));
                query_entries(conn, &sql, args)
            })
            .await?;
        let mut next = String::new();
        if size > 0 && entries.len() > size {
            entries.truncate(size);
            next = entries.last().map(|e| e.id.clone()).unwrap_or_default();
        }
        Ok((entries, next))
    }

    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>> {
        self.read(|conn| {
            // Storage (rowid) order reads the table front to back; ORDER BY id would
            // visit it in index order, one random page after another. Sorting here
            // costs far less.
            let mut entries = query_entries(conn, "SELECT id, data FROM entries", Vec::new())?;
            entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            Ok(entries)
        })
        .await
    }

    async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        self.write(Durability::Normal, move |conn| {
            let tx = begin(conn)?;
            let entry = update_entry_tx(&tx, entry)?;
            tx.commit().ctx(format_args!("entry {}", entry.id))?;
            Ok(entry)
        })
        .await
    }

    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry> {
        let id = id.to_owned();
        self.write(Durability::Normal, move |conn| {
            let tx = begin(conn)?;
            let old = delete_entry_tx(&tx, &id)?;
            tx.commit().ctx(format_args!("entry {id}"))?;
            Ok(old)
        })
        .await
    }

    async fn entry_events_since(&self, after: u64) -> Result<Vec<EntryEvent>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, entry_id, deleted FROM entry_events WHERE id > ?1 ORDER BY id",
                )
                .ctx("entry events")?;
            let rows = stmt
                .query_map([to_sql_id(after)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))
                })
                .ctx("entry events")?;
            let mut events = Vec::new();
            for row in rows {
                let (event_id, entry_id, deleted) = row.ctx("entry events")?;
                events.push(EntryEvent {
                    event_id: from_sql_id(event_id)?,
                    entry_id,
                    deleted,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn latest_entry_event(&self) -> Result<u64> {
        self.read(|conn| {
            // sqlite_sequence keeps AUTOINCREMENT's high-water mark, which pruning
            // does not lower (MAX(id) would drop to 0 once every event is pruned).
            let seq: Option<i64> = conn
                .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'entry_events'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .ctx("entry events")?;
            from_sql_id(seq.unwrap_or(0))
        })
        .await
    }

    async fn prune_entry_events(&self, up_to: u64) -> Result<u64> {
        self.write(Durability::Normal, move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM entry_events WHERE id <= ?1")
                .and_then(|mut s| s.execute([to_sql_id(up_to)]))
                .ctx("entry events")?;
            Ok(n as u64)
        })
        .await
    }

    // ---- attested nodes ----

    async fn upsert_attested_node(&self, node: AttestedNode) -> Result<()> {
        self.write(Durability::Full, move |conn| {
            let id = node.spiffe_id.to_string();
            let what = format!("attested node {id}");
            let tx = begin(conn)?;
            tx.prepare_cached(&format!(
                "INSERT INTO attested_nodes ({NODE_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (spiffe_id) DO UPDATE SET
                    attestation_type = excluded.attestation_type,
                    cert_serial = excluded.cert_serial,
                    cert_not_after = excluded.cert_not_after,
                    new_cert_serial = excluded.new_cert_serial,
                    new_cert_not_after = excluded.new_cert_not_after,
                    banned = excluded.banned,
                    can_reattest = excluded.can_reattest,
                    created_at = excluded.created_at,
                    updated_at = excluded.updated_at"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    node.attestation_type,
                    node.cert_serial,
                    node.cert_not_after,
                    node.new_cert_serial,
                    node.new_cert_not_after,
                    node.banned,
                    node.can_reattest,
                    node.created_at,
                    node.updated_at
                ])
            })
            .ctx(&what)?;
            tx.prepare_cached("DELETE FROM node_selectors WHERE node_id = ?1")
                .and_then(|mut s| s.execute([&id]))
                .ctx(&what)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO node_selectors (node_id, position, selector)
                         VALUES (?1, ?2, ?3)",
                    )
                    .ctx(&what)?;
                for (position, s) in node.selectors.iter().enumerate() {
                    stmt.execute(params![id, position as i64, s.to_string()])
                        .ctx(&what)?;
                }
            }
            tx.commit().ctx(&what)
        })
        .await
    }

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>> {
        let id = id.to_string();
        self.read(move |conn| {
            // One transaction: the node and its selectors from the same snapshot.
            let tx = conn.transaction().ctx("read transaction")?;
            load_node(&tx, &id)
        })
        .await
    }

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>> {
        self.read(|conn| {
            // One transaction: nodes and selectors from the same snapshot.
            let tx = conn.transaction().ctx("read transaction")?;
            let rows: Vec<NodeRow> = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLUMNS} FROM attested_nodes ORDER BY spiffe_id"
                ))
                .and_then(|mut s| s.query_map([], NodeRow::from_row)?.collect())
                .ctx("attested nodes")?;
            let mut selectors: HashMap<String, Vec<String>> = HashMap::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT node_id, selector FROM node_selectors ORDER BY node_id, position",
                    )
                    .ctx("attested node selectors")?;
                let pairs = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .ctx("attested node selectors")?;
                for pair in pairs {
                    let (node, selector) = pair.ctx("attested node selectors")?;
                    selectors.entry(node).or_default().push(selector);
                }
            }
            rows.into_iter()
                .map(|row| {
                    let s = selectors.remove(&row.id).unwrap_or_default();
                    row.into_node(s)
                })
                .collect()
        })
        .await
    }

    async fn renew_node_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<AttestedNode> {
        let id = id.to_string();
        let presented = presented.to_owned();
        let serial = serial.to_owned();
        let now = now_unix();
        self.write(Durability::Full, move |conn| {
            let what = format!("attested node {id}");
            let tx = begin(conn)?;
            let node =
                load_node(&tx, &id)?.ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
            let plan = super::codec::plan_renewal(&node, &presented, &serial, not_after, now)?;
            store_node_svids(&tx, &id, &plan)?;
            tx.commit().ctx(&what)?;
            Ok(plan)
        })
        .await
    }

    async fn activate_node_svid(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode> {
        let id = id.to_string();
        let serial = serial.to_owned();
        let now = now_unix();
        self.write(Durability::Full, move |conn| {
            let what = format!("attested node {id}");
            let tx = begin(conn)?;
            let node =
                load_node(&tx, &id)?.ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
            let Some(activated) = super::codec::plan_activation(&node, &serial, now)? else {
                return Ok(node);
            };
            store_node_svids(&tx, &id, &activated)?;
            tx.commit().ctx(&what)?;
            Ok(activated)
        })
        .await
    }

    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<()> {
        let id = id.to_string();
        self.write(Durability::Full, move |conn| {
            let what = format!("attested node {id}");
            let tx = begin(conn)?;
            tx.prepare_cached("DELETE FROM node_selectors WHERE node_id = ?1")
                .and_then(|mut s| s.execute([&id]))
                .ctx(&what)?;
            let n = tx
                .prepare_cached("DELETE FROM attested_nodes WHERE spiffe_id = ?1")
                .and_then(|mut s| s.execute([&id]))
                .ctx(&what)?;
            require_found(n != 0, &what)?;
            tx.commit().ctx(&what)
        })
        .await
    }

    async fn ban_attested_node(&self, id: &SpiffeId) -> Result<()> {
        let id = id.to_string();
        let now = now_unix();
        self.write(Durability::Full, move |conn| {
            let what = format!("attested node {id}");
            let n = conn
                .prepare_cached(
                    "UPDATE attested_nodes SET banned = 1,
                        cert_serial = '', cert_not_after = 0,
                        new_cert_serial = '', new_cert_not_after = 0,
                        updated_at = ?2
                     WHERE spiffe_id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, now]))
                .ctx(&what)?;
            require_found(n != 0, &what)
        })
        .await
    }

    // ---- join tokens ----

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        let token = token.to_owned();
        self.write(Durability::Normal, move |conn| {
            conn.prepare_cached("INSERT INTO join_tokens (token, expires_at) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![token, expires_at]))
                .ctx(token_label(&token))?;
            Ok(())
        })
        .await
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<i64>> {
        let token = token.to_owned();
        self.write(Durability::Full, move |conn| {
            // One statement, so finding and deleting cannot be split by another taker
            // (even one in another process).
            conn.prepare_cached("DELETE FROM join_tokens WHERE token = ?1 RETURNING expires_at")
                .and_then(|mut s| s.query_row([&token], |r| r.get(0)).optional())
                .ctx(token_label(&token))
        })
        .await
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        self.write(Durability::Normal, move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM join_tokens WHERE expires_at < ?1")
                .and_then(|mut s| s.execute([now]))
                .ctx("join tokens")?;
            Ok(n as u64)
        })
        .await
    }

    // ---- bundles ----

    async fn set_bundle(&self, bundle: &Bundle) -> Result<()> {
        let td = bundle.trust_domain().name().to_owned();
        let (jwks, expiries) = encode_bundle(bundle)?;
        self.write(Durability::Full, move |conn| {
            conn.prepare_cached(
                "INSERT INTO bundles (trust_domain, jwks, jwt_expiries) VALUES (?1, ?2, ?3)
                 ON CONFLICT (trust_domain) DO UPDATE SET
                    jwks = excluded.jwks, jwt_expiries = excluded.jwt_expiries",
            )
            .and_then(|mut s| s.execute(params![td, jwks, expiries]))
            .ctx(format_args!("bundle of {td}"))?;
            Ok(())
        })
        .await
    }

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        let td = td.name().to_owned();
        self.read(move |conn| {
            let row: Option<(String, String)> = conn
                .prepare_cached("SELECT jwks, jwt_expiries FROM bundles WHERE trust_domain = ?1")
                .and_then(|mut s| {
                    s.query_row([&td], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .ctx(format_args!("bundle of {td}"))?;
            row.map(|(jwks, expiries)| bundle_from_row(&td, &jwks, &expiries))
                .transpose()
        })
        .await
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT trust_domain, jwks, jwt_expiries FROM bundles ORDER BY trust_domain",
                )
                .ctx("bundles")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .ctx("bundles")?;
            let mut bundles = Vec::new();
            for row in rows {
                let (td, jwks, expiries) = row.ctx("bundles")?;
                bundles.push(bundle_from_row(&td, &jwks, &expiries)?);
            }
            Ok(bundles)
        })
        .await
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        let td = td.name().to_owned();
        self.write(Durability::Full, move |conn| {
            let what = format!("bundle of {td}");
            let n = conn
                .prepare_cached("DELETE FROM bundles WHERE trust_domain = ?1")
                .and_then(|mut s| s.execute([&td]))
                .ctx(&what)?;
            require_found(n != 0, &what)
        })
        .await
    }

    // ---- CA journal ----

    async fn put_ca_record(&self, record: &CaRecord) -> Result<()> {
        let id = record.id.clone();
        let created_at = record.created_at;
        let data = serde_json::to_string(record).map_err(|e| {
            DatastoreError::Invalid(format!("CA record {id} cannot be encoded: {e}"))
        })?;
        self.write(Durability::Full, move |conn| {
            conn.prepare_cached(
                "INSERT INTO ca_records (id, created_at, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET
                    created_at = excluded.created_at, data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![id, created_at, data]))
            .ctx(format_args!("CA record {id}"))?;
            Ok(())
        })
        .await
    }

    async fn list_ca_records(&self) -> Result<Vec<CaRecord>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, data FROM ca_records ORDER BY created_at, id")
                .ctx("CA records")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .ctx("CA records")?;
            let mut records = Vec::new();
            for row in rows {
                let (id, data) = row.ctx("CA records")?;
                records.push(
                    serde_json::from_str(&data)
                        .map_err(|e| decode_error(format_args!("CA record {id}"), e))?,
                );
            }
            Ok(records)
        })
        .await
    }

    async fn delete_ca_record(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write(Durability::Full, move |conn| {
            let what = format!("CA record {id}");
            let n = conn
                .prepare_cached("DELETE FROM ca_records WHERE id = ?1")
                .and_then(|mut s| s.execute([&id]))
                .ctx(&what)?;
            require_found(n != 0, &what)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::conformance;

    fn fresh() -> (tempfile::TempDir, SqliteDatastore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = SqliteDatastore::open(&dir.path().join("datastore.sqlite3")).expect("open");
        (dir, ds)
    }

    /// One test per behaviour of the conformance suite, each on a fresh database.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, ds) = fresh();
                    conformance::$name(&ds).await;
                }
            )*
        };
    }

    conformance::each_behaviour!(conformance_tests);

    /// The whole suite on one database, as other backends run it: the behaviours must
    /// not depend on starting from an empty store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_run_all_on_one_database() {
        let (_dir, ds) = fresh();
        conformance::run_all(&ds).await;
        conformance::run_all(&ds).await;
    }

    fn user_version(path: &Path) -> i64 {
        let conn = Connection::open(path).expect("raw open");
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    fn table_exists(path: &Path, name: &str) -> bool {
        let conn = Connection::open(path).expect("raw open");
        conn.query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()
        .expect("sqlite_schema")
        .is_some()
    }

    fn sample_entry(name: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: String::new(),
            spiffe_id: format!("spiffe://example.org/{name}").parse().expect("id"),
            parent_id: "spiffe://example.org/spire/agent/a".parse().expect("id"),
            selectors: vec!["unix:uid:1000".parse().expect("selector")],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![],
            hint: String::new(),
            expires_at: 0,
            revision_number: 0,
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ds.sqlite3");
        let ds = SqliteDatastore::open(&path).expect("open");
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        ds.create_join_token("tok-1", 4_000_000_000)
            .await
            .expect("token");
        let bundle = Bundle::new(TrustDomain::new("example.org").expect("td"));
        ds.set_bundle(&bundle).await.expect("bundle");
        let latest = ds.latest_entry_event().await.expect("latest");
        drop(ds);

        let ds = SqliteDatastore::open(&path).expect("reopen");
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        assert_eq!(ds.latest_entry_event().await.expect("latest"), latest);
        assert_eq!(
            ds.get_bundle(bundle.trust_domain()).await.expect("bundle"),
            Some(bundle)
        );
        assert_eq!(
            ds.take_join_token("tok-1").await.expect("take"),
            Some(4_000_000_000)
        );
    }

    #[tokio::test]
    async fn creates_parent_directory_and_private_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/nested/ds.sqlite3");
        let ds = SqliteDatastore::open(&path).expect("open");
        // Make sure the WAL and shared-memory files exist.
        ds.create_entry(sample_entry("web")).await.expect("create");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            assert_eq!(mode(Path::new(&side)), 0o600, "{suffix}");
        }
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(ds.path(), path);
    }

    #[tokio::test]
    async fn fresh_database_gets_the_current_schema() {
        let (dir, _ds) = fresh();
        let path = dir.path().join("datastore.sqlite3");
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
        let conn = Connection::open(&path).expect("raw open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_damaged_database_is_refused_at_start_saying_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ds.sqlite3");
        let ds = SqliteDatastore::open(&path).expect("open");
        for i in 0..200 {
            ds.create_entry(sample_entry(&format!("w{i}")))
                .await
                .expect("create");
        }
        drop(ds);
        // Closing the last connection checkpointed the WAL into the file. Scribble
        // over a page in the middle of it, as a failing disk would.
        let mut bytes = std::fs::read(&path).expect("read");
        let page = 4096;
        assert!(bytes.len() > 4 * page, "{} bytes", bytes.len());
        let start = bytes.len() / page / 2 * page;
        for b in &mut bytes[start + 8..start + page] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).expect("write");
        let err = SqliteDatastore::open(&path).expect_err("a damaged file must be refused");
        let msg = err.to_string();
        assert!(msg.contains("is damaged"), "{msg}");
        assert!(msg.contains("restore the database from a backup"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn version_1_nodes_keep_both_serials_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.db");
        drop(SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1]).expect("open v1"));
        let conn = Connection::open(&path).expect("raw");
        conn.execute_batch(
            "INSERT INTO attested_nodes VALUES
                ('spiffe://example.org/spire/agent/join_token/a', 'join_token', 'bb', 200,
                 'aa', 100, 0, 0, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/b', 'join_token', 'cc', 300,
                 '', 0, 0, 0, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/c', 'join_token', '', 0,
                 '', 0, 1, 0, 1, 2);",
        )
        .expect("v1 rows");
        drop(conn);
        let ds = SqliteDatastore::open(&path).expect("open");
        let get = |name: &str| {
            let id: SpiffeId = format!("spiffe://example.org/spire/agent/join_token/{name}")
                .parse()
                .expect("id");
            let ds = ds.clone();
            async move { ds.get_attested_node(&id).await.expect("get").expect("node") }
        };
        let a = get("a").await;
        assert_eq!((a.cert_serial.as_str(), a.cert_not_after), ("aa", 100));
        assert_eq!(
            (a.new_cert_serial.as_str(), a.new_cert_not_after),
            ("bb", 200)
        );
        let b = get("b").await;
        assert_eq!(
            (b.cert_serial.as_str(), b.new_cert_serial.as_str()),
            ("cc", "")
        );
        let c = get("c").await;
        assert!(c.banned && c.cert_serial.is_empty() && c.new_cert_serial.is_empty());
    }

    #[tokio::test]
    async fn v1_database_is_migrated_to_a_later_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ds.sqlite3");
        let ds = SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1]).expect("open v1");
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        drop(ds);
        assert_eq!(user_version(&path), 1);

        let v2 = "CREATE TABLE v2_marker (x INTEGER NOT NULL); INSERT INTO v2_marker VALUES (2);";
        let ds = SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1, v2]).expect("open v2");
        assert_eq!(user_version(&path), 2);
        assert!(table_exists(&path, "v2_marker"));
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        drop(ds);
        // Opening again runs nothing twice.
        SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1, v2]).expect("open again");
        assert_eq!(user_version(&path), 2);
    }

    #[tokio::test]
    async fn failed_migration_step_leaves_the_previous_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ds.sqlite3");
        drop(SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1]).expect("open v1"));
        let broken = "CREATE TABLE half_done (x INTEGER); SELECT * FROM no_such_table;";
        let err = SqliteDatastore::open_with_migrations(&path, &[SCHEMA_V1, broken])
            .expect_err("broken step must fail");
        assert!(
            err.to_string()
                .contains("migrating the database schema to version 2"),
            "{err}"
        );
        assert_eq!(user_version(&path), 1);
        assert!(!table_exists(&path, "half_done"));
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let (dir, ds) = fresh();
        drop(ds);
        let path = dir.path().join("datastore.sqlite3");
        let too_new = MIGRATIONS.len() as i64 + 1;
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", too_new))
            .expect("set user_version");
        let err = SqliteDatastore::open(&path).expect_err("newer schema must be refused");
        let want = format!(
            "database schema version {too_new} is newer than this server supports ({}); \
             upgrade the server",
            MIGRATIONS.len()
        );
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains(&want), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(user_version(&path), too_new);
    }

    #[test]
    fn corrupt_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not-a-database.sqlite3");
        fs::write(&path, "this is a text file, not a database\n".repeat(100)).expect("write");
        let err = SqliteDatastore::open(&path).expect_err("text file must be refused");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a database"), "{msg}");
    }

    #[tokio::test]
    async fn undecodable_record_is_a_backend_error_naming_it() {
        let (dir, ds) = fresh();
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        Connection::open(dir.path().join("datastore.sqlite3"))
            .and_then(|c| {
                c.execute(
                    "UPDATE entries SET data = '{\"broken\": true}' WHERE id = ?1",
                    [&entry.id],
                )
            })
            .expect("corrupt the row");
        let err = ds.get_entry(&entry.id).await.expect_err("must not decode");
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains(&entry.id), "{err}");
        let err = ds.all_entries().await.expect_err("must not decode");
        assert!(err.to_string().contains(&entry.id), "{err}");
    }

    #[test]
    fn sqlite_errors_map_to_datastore_errors() {
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_BUSY)),
            DatastoreError::Unavailable(_)
        ));
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_LOCKED)),
            DatastoreError::Unavailable(_)
        ));
        assert_eq!(
            sql_error("entry x", failure(ffi::SQLITE_CONSTRAINT_UNIQUE)),
            DatastoreError::AlreadyExists("entry x".into())
        );
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)),
            DatastoreError::Backend(_)
        ));
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_CORRUPT)),
            DatastoreError::Backend(_)
        ));
    }

    #[tokio::test]
    async fn locked_database_is_unavailable_not_a_failure() {
        let (dir, ds) = fresh();
        // Another process holding the write lock longer than the busy timeout.
        let mut other = Connection::open(dir.path().join("datastore.sqlite3")).expect("open");
        let tx = other
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .expect("lock");
        // This waits out the real busy timeout (a few seconds).
        let err = ds
            .create_join_token("tok", 1)
            .await
            .expect_err("must time out");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        drop(tx);
        ds.create_join_token("tok", 1).await.expect("lock released");
    }
}
