//! The server on PostgreSQL, as a process: a private cluster started by
//! `scripts/postgres.sh`, a fresh database, the server configured with
//! `[datastore] type = "postgres"`, an agent attested through it and served an
//! SVID, and everything still there after the server restarts. `psql` checks the
//! rows independently.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tessera_swtpm_tests::{Agent, Server, my_uid, repo_root, run_ok, test_dir, wait_until};

/// The test cluster (shared with the server crate's datastore tests) and a fresh
/// database in it: (libpq connection string, psql URL of the database, psql URL of
/// the cluster, the database's name).
fn fresh_database() -> (String, String, String, String) {
    let dir: PathBuf = std::env::temp_dir().join(format!("tessera-pg-{}", my_uid()));
    let env = run_ok(
        Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(&dir),
    );
    let port = env
        .lines()
        .find_map(|l| l.strip_prefix("export PGPORT="))
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("no PGPORT from scripts/postgres.sh:\n{env}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("e2e_{}_{nanos}", std::process::id());
    let admin = format!("postgres://tessera@127.0.0.1:{port}/postgres?sslmode=disable");
    run_ok(
        Command::new("psql")
            .arg(&admin)
            .args(["-q", "-c", &format!("CREATE DATABASE {name}")]),
    );
    (
        format!("host=127.0.0.1 port={port} user=tessera dbname={name}"),
        format!("postgres://tessera@127.0.0.1:{port}/{name}?sslmode=disable"),
        admin,
        name,
    )
}

fn psql_value(url: &str, query: &str) -> String {
    run_ok(Command::new("psql").arg(url).args(["-Atq", "-c", query]))
        .trim()
        .to_owned()
}

#[test]
fn server_on_postgres_issues_svids_and_keeps_its_state_across_a_restart() {
    let dir = test_dir("postgres");
    let (conn, url, admin, name) = fresh_database();
    // The connection string from a file, as an operator keeps a password out of the
    // configuration.
    let conn_file = dir.path().join("datastore.conn");
    std::fs::write(&conn_file, format!("{conn}\n")).unwrap();
    let mut server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[datastore]\ntype = \"postgres\"\nconnection_string_file = \"{}\"\n",
            conn_file.display()
        ),
    );
    let health = server.cli_ok(&["healthcheck", "--verbose"]);
    assert!(health.contains("datastore (postgres): ok"), "{health}");

    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        "spiffe://example.org/pg-workload",
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let fetch = || agent.cli(&["api", "fetch", "x509"]);
    assert!(
        wait_until(Duration::from_secs(20), || fetch().status.success()),
        "no SVID served:\n{}",
        agent.log()
    );
    assert!(String::from_utf8_lossy(&fetch().stdout).contains("spiffe://example.org/pg-workload"));

    // What the server stored is in PostgreSQL (the alias entry from the token, and
    // the workload's), and the join token is used up.
    assert_eq!(psql_value(&url, "SELECT count(*) FROM entries"), "2");
    assert_eq!(psql_value(&url, "SELECT count(*) FROM attested_nodes"), "1");
    assert_eq!(psql_value(&url, "SELECT count(*) FROM join_tokens"), "0");
    assert_ne!(psql_value(&url, "SELECT count(*) FROM ca_records"), "0");

    // A restarted server finds the same entries, agent and CA in the database: the
    // agent keeps its identity and the workload keeps being served.
    let agents_before = server.cli_ok(&["agent", "list"]);
    let bundle_before = server.cli_ok(&["bundle", "show"]);
    server.restart();
    assert_eq!(server.cli_ok(&["agent", "list"]), agents_before);
    assert_eq!(server.cli_ok(&["bundle", "show"]), bundle_before);
    let shown = server.cli_ok(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/pg-workload",
    ]);
    assert!(
        shown.contains("spiffe://example.org/pg-workload"),
        "{shown}"
    );
    assert!(fetch().status.success(), "{}", agent.log());

    // Passed: the database goes (a failure leaves it to look at).
    drop(agent);
    server.stop();
    run_ok(Command::new("psql").arg(&admin).args([
        "-q",
        "-c",
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    ]));
}
