//! The PostgreSQL schema and its migrations. `schema_migrations(version)` records
//! the applied steps; all missing steps run in one transaction that first takes a
//! transaction-level advisory lock, so servers starting at once apply each step
//! once. A database whose schema is newer than this binary is refused.

use tokio_postgres::Client;

use super::error::{describe, failure};
use crate::datastore::{DatastoreError, Failure, Result};

/// The advisory lock key that serializes schema migrations ("tessera" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6573_7365_7261;

/// The schema, version 1.
pub(super) const SCHEMA_V1: &str = r#"
CREATE TABLE entries (
    id        TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    identity  TEXT COLLATE "C" NOT NULL,
    revision  BIGINT NOT NULL,
    data      TEXT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (identity);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
CREATE INDEX entries_parent_id ON entries (parent_id);

CREATE TABLE entry_selectors (
    entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    selector TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (entry_id, selector)
);
CREATE INDEX entry_selectors_selector ON entry_selectors (selector, entry_id);

CREATE TABLE entry_events (
    id       BIGINT PRIMARY KEY CHECK (id > 0),
    entry_id TEXT COLLATE "C" NOT NULL,
    deleted  BOOLEAN NOT NULL
);

CREATE TABLE entry_event_counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    last_id  BIGINT NOT NULL CHECK (last_id >= 0)
);
INSERT INTO entry_event_counter (last_id) VALUES (0);

CREATE TABLE attested_nodes (
    spiffe_id           TEXT COLLATE "C" PRIMARY KEY,
    attestation_type    TEXT NOT NULL,
    cert_serial         TEXT NOT NULL,
    cert_not_after      BIGINT NOT NULL,
    prev_cert_serial    TEXT NOT NULL,
    prev_cert_not_after BIGINT NOT NULL,
    banned              BOOLEAN NOT NULL,
    can_reattest        BOOLEAN NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE node_selectors (
    node_id  TEXT COLLATE "C" NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    selector TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (node_id, position)
);
CREATE INDEX node_selectors_selector ON node_selectors (selector);

CREATE TABLE join_tokens (
    token      TEXT COLLATE "C" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain TEXT COLLATE "C" PRIMARY KEY,
    jwks         TEXT NOT NULL,
    jwt_expiries TEXT NOT NULL
);

CREATE TABLE ca_records (
    id         TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL,
    data       TEXT NOT NULL
);
"#;

/// Version 2: a renewed agent SVID is pending (`new_cert_*`) until the agent uses it,
/// instead of replacing the current serial at once (`prev_cert_*`). A node renewed
/// under version 1 may hold either SVID: its previous serial becomes the proven one
/// and its current serial the pending one, so both stay accepted until the agent
/// shows which it has.
const SCHEMA_V2: &str = r#"
ALTER TABLE attested_nodes ADD COLUMN new_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE attested_nodes ADD COLUMN new_cert_not_after BIGINT NOT NULL DEFAULT 0;
UPDATE attested_nodes
   SET new_cert_serial = cert_serial, new_cert_not_after = cert_not_after,
       cert_serial = prev_cert_serial, cert_not_after = prev_cert_not_after
 WHERE prev_cert_serial <> '' AND NOT banned;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_serial;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_not_after;
"#;

/// Version 3: federation relationships created with the CLI, each as JSON under
/// its trust domain.
const SCHEMA_V3: &str = r#"
CREATE TABLE federation_relationships (
    trust_domain TEXT PRIMARY KEY,
    data         TEXT NOT NULL
);
"#;

/// Version 4: what each server has read of the entry change events, so that events
/// are pruned once every server has read them.
const SCHEMA_V4: &str = r#"
CREATE TABLE entry_event_readers (
    reader     TEXT PRIMARY KEY,
    read_up_to BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
"#;

/// Version 5: whether an agent proved its SVID key is in its TPM, the AK its TPM
/// attestation verified (what later proofs are checked with), and its
/// measured-boot status.
const SCHEMA_V5: &str = r#"
ALTER TABLE attested_nodes ADD COLUMN key_in_tpm BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE attested_nodes ADD COLUMN ak_public BYTEA NOT NULL DEFAULT '';
ALTER TABLE attested_nodes ADD COLUMN measured_boot TEXT NOT NULL DEFAULT '';
"#;

/// Schema migrations, oldest first: step `i` takes the database from version `i` to
/// `i + 1`. A released step is never edited; a change is a new step appended here.
pub(super) const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

/// Brings the schema up to `migrations.len()` in one transaction, under an advisory
/// lock so that servers starting together do not both run a step.
pub(super) async fn migrate(client: &mut Client, target: &str, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len();
    let failed = |e| {
        failure(
            format_args!("{target}: migrating the database schema failed"),
            e,
        )
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(failed)?;
    let version: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(failed)?;
    let version = usize::try_from(version).map_err(|_| {
        DatastoreError::Backend(Failure::new(format!(
            "{target}: invalid database schema version {version}"
        )))
    })?;
    if version > supported {
        return Err(DatastoreError::Backend(Failure::new(format!(
            "{target}: database schema version {version} is newer than this server supports \
             ({supported}); upgrade the server"
        ))));
    }
    for (i, step) in migrations.iter().enumerate().skip(version) {
        let next = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let step_failed = |e: tokio_postgres::Error| {
            DatastoreError::Backend(Failure::caused_by(
                format!(
                    "{target}: migrating the database schema to version {next} failed: {}",
                    describe(&e)
                ),
                e,
            ))
        };
        tx.batch_execute(step).await.map_err(step_failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&next],
        )
        .await
        .map_err(step_failed)?;
    }
    tx.commit().await.map_err(failed)?;
    if version < supported {
        tracing::info!(target = %target, from = version, to = supported, "postgres: schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tessera_core::SpiffeId;
    use tokio_postgres::Client;

    use super::*;
    use crate::datastore::Datastore;
    use crate::datastore::postgres::PostgresDatastore;
    use crate::datastore::postgres::tests::{TestDb, sample_entry};

    async fn schema_versions(client: &Client) -> Vec<i32> {
        client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("schema_migrations")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn all_versions() -> Vec<i32> {
        (1..=i32::try_from(MIGRATIONS.len()).expect("small")).collect()
    }

    /// A node renewed under schema version 1 (current and previous serial) keeps both
    /// accepted after the upgrade: the previous as proven, the current as pending.
    #[tokio::test]
    async fn version_1_nodes_keep_both_serials_accepted() {
        let db = TestDb::new().await;
        drop(
            PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1])
                .await
                .expect("open v1"),
        );
        let raw = db.raw().await;
        raw.batch_execute(
            "INSERT INTO attested_nodes VALUES
                ('spiffe://example.org/spire/agent/join_token/a', 'join_token', 'bb', 200,
                 'aa', 100, FALSE, FALSE, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/b', 'join_token', 'cc', 300,
                 '', 0, FALSE, FALSE, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/c', 'join_token', '', 0,
                 '', 0, TRUE, FALSE, 1, 2)",
        )
        .await
        .expect("v1 rows");
        let ds = db.open().await;
        let get = |name: &'static str| {
            let ds = ds.clone();
            async move {
                let id: SpiffeId = format!("spiffe://example.org/spire/agent/join_token/{name}")
                    .parse()
                    .expect("id");
                ds.get_attested_node(&id).await.expect("get").expect("node")
            }
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
        drop((ds, raw));
        db.finish().await;
    }

    #[tokio::test]
    async fn opening_twice_is_idempotent() {
        let db = TestDb::new().await;
        let ds = db.open().await;
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        let latest = ds.latest_entry_event().await.expect("latest");
        drop(ds);
        let ds = db.open().await;
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        assert_eq!(ds.latest_entry_event().await.expect("latest"), latest);
        let raw = db.raw().await;
        assert_eq!(schema_versions(&raw).await, all_versions());
        drop((ds, raw));
        db.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn servers_starting_together_migrate_once() {
        let db = TestDb::new().await;
        let url = db.tcp();
        let opens = (0..6).map(|_| PostgresDatastore::connect(&url));
        let stores: Vec<_> = futures::future::join_all(opens)
            .await
            .into_iter()
            .map(|r| r.expect("concurrent open"))
            .collect();
        assert_eq!(schema_versions(&db.raw().await).await, all_versions());
        drop(stores);
        db.finish().await;
    }

    #[tokio::test]
    async fn later_migration_steps_apply_once() {
        let db = TestDb::new().await;
        let ds = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1])
            .await
            .expect("open v1");
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        drop(ds);
        let v2 = "CREATE TABLE v2_marker (x INTEGER NOT NULL); INSERT INTO v2_marker VALUES (2);";
        let ds = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2])
            .await
            .expect("open v2");
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        drop(ds);
        PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2])
            .await
            .expect("open again");
        let raw = db.raw().await;
        assert_eq!(schema_versions(&raw).await, vec![1, 2]);
        let n: i64 = raw
            .query_one("SELECT count(*) FROM v2_marker", &[])
            .await
            .expect("marker")
            .get(0);
        assert_eq!(n, 1, "the step ran once");

        let broken = "CREATE TABLE half_done (x INTEGER); SELECT * FROM no_such_table;";
        let err = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2, broken])
            .await
            .expect_err("broken step must fail");
        assert!(
            err.to_string()
                .contains("migrating the database schema to version 3"),
            "{err}"
        );
        assert_eq!(schema_versions(&raw).await, vec![1, 2]);
        drop(raw);
        db.finish().await;
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let db = TestDb::new().await;
        drop(db.open().await);
        let too_new = i32::try_from(MIGRATIONS.len() + 1).expect("small");
        let raw = db.raw().await;
        raw.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&too_new],
        )
        .await
        .expect("pretend a newer server ran");
        let err = PostgresDatastore::connect(&db.tcp())
            .await
            .expect_err("newer schema must be refused");
        let want = format!(
            "database schema version {too_new} is newer than this server supports ({}); \
             upgrade the server",
            MIGRATIONS.len()
        );
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains(&want), "{err}");
        assert!(err.to_string().contains(&db.name), "{err}");
        drop(raw);
        db.finish().await;
    }
}
