//! Opening SQLite connections: the database file and its folder (created private),
//! the writer's and the readers' settings, the integrity check at start-up, and the
//! durability a write asks for.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use super::error::{Ctx, sql_error};
use crate::datastore::{DatastoreError, Failure, Result};

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

/// Whether a write's commit must reach the disk before it returns (see "Durability"
/// in the backend's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Survives a process crash; the last commits may be lost on power loss.
    Normal,
    /// Survives power loss.
    Full,
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
                DatastoreError::Backend(Failure::caused_by(
                    format!(
                        "cannot create the database directory {}: {e}",
                        dir.display()
                    ),
                    e,
                ))
            })?;
    }
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let file_error = |e: io::Error| {
        DatastoreError::Backend(Failure::caused_by(
            format!("cannot create the database file {}: {e}", path.display()),
            e,
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

pub(super) fn open_error(path: &Path, e: rusqlite::Error) -> DatastoreError {
    let what = format!("cannot open the database {}", path.display());
    match sql_error(&what, e) {
        e @ (DatastoreError::Unavailable(_) | DatastoreError::Backend(_)) => e,
        // Nothing is created while opening; keep the kind of failure it says.
        other => DatastoreError::Backend(Failure::new(format!("{what}: {other}"))),
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
        return Err(DatastoreError::Backend(Failure::new(format!(
            "cannot open the database {}: it cannot use WAL mode (journal_mode is {mode}); \
             is it on a file system without shared memory support?",
            path.display()
        ))));
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
        .map_err(|e| DatastoreError::Backend(Failure::caused_by(damaged(path, &e), e)))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(DatastoreError::Backend(Failure::new(damaged(
        path,
        &problems.join("; "),
    ))))
}

fn damaged(path: &Path, detail: &dyn std::fmt::Display) -> String {
    format!(
        "the database {} is damaged (SQLite integrity check: {detail}); stop the server, \
         keep a copy of the damaged file for analysis, and restore the database from a \
         backup",
        path.display()
    )
}

pub(super) fn open_reader(path: &Path) -> Result<Connection> {
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

/// Opens the writer connection: the file (created when missing), its settings, and
/// the integrity check.
pub(super) fn open_writer(path: &Path) -> Result<Connection> {
    prepare_file(path)?;
    let writer = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    configure_writer(&writer, path)?;
    check_integrity(&writer, path)?;
    Ok(writer)
}

/// Starts a write transaction, taking the write lock up front.
pub(super) fn begin(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("write transaction")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::TransactionBehavior;

    use super::*;
    use crate::datastore::Datastore;
    use crate::datastore::sqlite::SqliteDatastore;
    use crate::datastore::sqlite::tests::{fresh, sample_entry};

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
