//! The PostgreSQL backend's test cluster and its conformance tests (one test per
//! behaviour on a fresh database, and the whole suite twice on one).
//!
//! These tests run against a real PostgreSQL: one cluster in
//! `<temporary folder>/tessera-pg-<uid>`, started by `scripts/postgres.sh start`
//! (which is cheap and waits on a lock when the cluster already runs, so every test
//! process may call it) and left running; each test makes its own database in it and
//! drops it when it passes. The cluster has TLS on (a test CA, a certificate for
//! `localhost`, a role that may connect over TLS only) for the TLS tests. If
//! PostgreSQL cannot start, the tests fail with the script's message: they are never
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tessera_core::RegistrationEntry;
use tokio_postgres::{Client, NoTls};

use super::PostgresDatastore;
use crate::datastore::{Datastore, conformance};

pub(super) struct Cluster {
    pub(super) socket_dir: String,
    pub(super) port: u16,
    /// The test CA that signed the server's certificate (for `localhost`).
    pub(super) ca_file: String,
    url: String,
}

pub(super) fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // Under the temporary folder, not target/: when the tests run as root the
        // cluster runs as the postgres user, which must reach its folder, and a
        // checkout under a private home folder is out of its reach.
        let uid = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc/self"),
        );
        let dir: PathBuf = std::env::temp_dir().join(format!("tessera-pg-{uid}"));
        let out = Command::new("bash")
            .arg(root.join("scripts/postgres.sh"))
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("{name} missing from the script's output:\n{stdout}"))
        };
        let cluster = Cluster {
            socket_dir: var("PGHOST"),
            port: var("PGPORT").parse().expect("PGPORT is a port"),
            ca_file: var("TESSERA_PG_SSLROOTCERT"),
            url: var("TESSERA_PG_URL"),
        };
        // Shown with --nocapture: these tests ran against a real cluster.
        eprintln!(
            "PostgreSQL tests run against the cluster in {} (socket {}, port {})",
            dir.display(),
            cluster.socket_dir,
            cluster.port
        );
        cluster
    })
}

pub(super) async fn admin() -> Client {
    let (client, connection) = tokio_postgres::connect(&cluster().url, NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    client
}

/// A fresh, empty database in the test cluster.
pub(super) struct TestDb {
    pub(super) name: String,
}

impl TestDb {
    pub(super) async fn new() -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        Self { name }
    }

    pub(super) fn tcp(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=tessera dbname={}",
            cluster().port,
            self.name
        )
    }

    pub(super) fn unix(&self) -> String {
        format!(
            "host={} port={} user=tessera dbname={}",
            cluster().socket_dir,
            cluster().port,
            self.name
        )
    }

    pub(super) async fn open(&self) -> PostgresDatastore {
        PostgresDatastore::connect(&self.tcp())
            .await
            .expect("connect")
    }

    pub(super) async fn raw(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.tcp(), NoTls)
            .await
            .expect("raw connect");
        tokio::spawn(connection);
        client
    }

    /// Drops the database (left behind when a test fails, to look at).
    pub(super) async fn finish(self) {
        admin()
            .await
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .expect("drop the test database");
    }
}

/// One test per behaviour of the conformance suite, each on a fresh database.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = TestDb::new().await;
                let ds = db.open().await;
                conformance::$name(&ds).await;
                drop(ds);
                db.finish().await;
            }
        )*
    };
}

conformance::each_behaviour!(conformance_tests);

/// The whole suite twice on one database: the behaviours must not depend on
/// starting from an empty store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_run_all_on_one_database() {
    let db = TestDb::new().await;
    let ds = db.open().await;
    conformance::run_all(&ds).await;
    conformance::run_all(&ds).await;
    assert_eq!(ds.name(), "postgres");
    drop(ds);
    db.finish().await;
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

/// Two servers' entry caches on one database stay correct as change events are pruned
/// (the same steps as on SQLite).
#[tokio::test]
async fn entry_caches_of_two_servers_stay_correct_across_pruning() {
    let db = TestDb::new().await;
    crate::entries::tests::two_servers_prune_and_reload(
        std::sync::Arc::new(db.open().await),
        std::sync::Arc::new(db.open().await),
    )
    .await;
    db.finish().await;
}
