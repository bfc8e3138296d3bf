//! The SQLite schema and its migrations. `PRAGMA user_version` is the schema
//! version; each step runs in its own transaction together with the version bump, so
//! a failed step leaves the database at the previous version. A database newer than
//! the code is refused rather than guessed at.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::connection::open_error;
use crate::datastore::{DatastoreError, Failure, Result};

/// The schema, version 1.
pub(super) const SCHEMA_V1: &str = "
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

/// Version 3: federation relationships created with the CLI, each as JSON under
/// its trust domain.
const SCHEMA_V3: &str = "
CREATE TABLE federation_relationships (
    trust_domain TEXT PRIMARY KEY NOT NULL,
    data         TEXT NOT NULL
);
";

/// Version 4: what each server has read of the entry change events, so that events
/// are pruned once every server has read them.
const SCHEMA_V4: &str = "
CREATE TABLE entry_event_readers (
    reader     TEXT PRIMARY KEY NOT NULL,
    read_up_to INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);
";

/// Version 5: whether an agent proved its SVID key is in its TPM, the AK its TPM
/// attestation verified (what later proofs are checked with), and its
/// measured-boot status.
const SCHEMA_V5: &str = "
ALTER TABLE attested_nodes ADD COLUMN key_in_tpm INTEGER NOT NULL DEFAULT 0
    CHECK (key_in_tpm IN (0, 1));
ALTER TABLE attested_nodes ADD COLUMN ak_public BLOB NOT NULL DEFAULT x'';
ALTER TABLE attested_nodes ADD COLUMN measured_boot TEXT NOT NULL DEFAULT '';
";

/// Schema migrations, oldest first: step `i` takes the database from version `i` to
/// `i + 1`. A released step is never edited (databases in the field already ran it);
/// a change is a new step appended here.
pub(super) const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

/// Brings the schema from its stored version up to `migrations.len()`, one step per
/// transaction, so that a failed step leaves the database at the previous version.
pub(super) fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
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
            DatastoreError::Backend(Failure::new(format!(
                "{}: invalid database schema version {version}",
                path.display()
            )))
        })?;
        if version > supported {
            return Err(DatastoreError::Backend(Failure::new(format!(
                "{}: database schema version {version} is newer than this server supports \
                 ({supported}); upgrade the server",
                path.display()
            ))));
        }
        let Some(step) = migrations.get(version) else {
            return Ok(());
        };
        let next = version + 1;
        let failed = |e: rusqlite::Error| {
            DatastoreError::Backend(Failure::caused_by(
                format!(
                    "{}: migrating the database schema to version {next} failed: {e}",
                    path.display()
                ),
                e,
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use tessera_core::SpiffeId;

    use super::*;
    use crate::datastore::Datastore;
    use crate::datastore::sqlite::SqliteDatastore;
    use crate::datastore::sqlite::tests::{fresh, sample_entry, table_exists, user_version};

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
    async fn version_4_nodes_start_with_no_tpm_proof() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v4.db");
        drop(SqliteDatastore::open_with_migrations(&path, &MIGRATIONS[..4]).expect("open v4"));
        let conn = Connection::open(&path).expect("raw");
        conn.execute_batch(
            "INSERT INTO attested_nodes VALUES
                ('spiffe://example.org/spire/agent/tpm/ab', 'tpm_ek', 'aa', 100,
                 0, 1, 1, 2, 'bb', 200);",
        )
        .expect("v4 row");
        drop(conn);
        let ds = SqliteDatastore::open(&path).expect("open");
        assert_eq!(user_version(&path), 5);
        let id: SpiffeId = "spiffe://example.org/spire/agent/tpm/ab"
            .parse()
            .expect("id");
        let n = ds.get_attested_node(&id).await.expect("get").expect("node");
        assert_eq!(n.new_cert_serial, "bb");
        assert!(!n.key_in_tpm && n.ak_public.is_empty() && n.measured_boot.is_empty());
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
}
