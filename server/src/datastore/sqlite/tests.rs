//! The SQLite backend's tests that span its files: the conformance suite (one test
//! per behaviour on a fresh database, and the whole suite twice on one), and what
//! survives reopening. Helpers for the other files' tests live here too.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use tessera_core::{Bundle, RegistrationEntry, TrustDomain};

use super::SqliteDatastore;
use crate::datastore::{Datastore, DatastoreError, conformance};

pub(super) fn fresh() -> (tempfile::TempDir, SqliteDatastore) {
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

pub(super) fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("raw open");
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version")
}

pub(super) fn table_exists(path: &Path, name: &str) -> bool {
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

pub(super) fn sample_entry(name: &str) -> RegistrationEntry {
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
        workload_key: Default::default(),
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
