//! A PostgreSQL failover under a running server: a primary and a synchronous
//! streaming-replication standby (`scripts/postgres.sh start-ha`), the server
//! connected to both with one multi-host connection string
//! (`target_session_attrs=read-write`, TLS with `verify-full`), entries written
//! continuously through the admin API while the primary is killed (`kill -9`) and
//! the standby promoted. Every acknowledged write is on the new primary (checked
//! with `psql`), writes fail with `Unavailable` during the gap and succeed again
//! without a restart of the server, and an agent is served an SVID for an entry
//! made after the failover. The recovery time is printed.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::faults::PgHaPair;
use tessera_swtpm_tests::writers::Writers;
use tessera_swtpm_tests::{Agent, Server, my_uid, test_dir, wait_until};

#[test]
fn server_follows_a_postgres_failover_and_loses_no_acknowledged_write() {
    let dir = test_dir("pg-failover");
    // Reachable by the postgres user when the tests run as root (a private temporary
    // directory is not).
    let pgdir = std::env::temp_dir().join(format!("tessera-pgha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pgdir);
    let pair = PgHaPair::start(&pgdir);
    let (primary, standby) = (&pair.primary, &pair.standby);

    // Commits wait for the standby: that is what keeps an acknowledged write.
    assert_eq!(primary.psql("postgres", "SHOW synchronous_commit"), "on");
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
        ),
        "sync"
    );
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");

    // The standby is listed first: every connection the server opens before the
    // failover skips it (read-only) and goes on to the primary.
    let conn = format!(
        "host=localhost,localhost port={},{} user=tessera dbname=tessera \
         target_session_attrs=read-write connect_timeout=3 sslmode=verify-full sslrootcert={}",
        standby.port,
        primary.port,
        pair.ca_file.display()
    );
    let mut server = Server::start(
        &dir.path().join("server"),
        &format!("[datastore]\ntype = \"postgres\"\nconnection_string = \"{conn}\"\n"),
    );
    let server_pid = server.pid().unwrap();
    let health = server.cli_ok(&["healthcheck", "--verbose"]);
    assert!(health.contains("datastore (postgres): ok"), "{health}");
    // Over TLS, to the primary.
    assert_ne!(
        primary.psql(
            "tessera",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'tessera-server' AND s.ssl"
        ),
        "0"
    );

    let token = server.token(Some("spiffe://example.org/node"), None);
    let uid = format!("unix:uid:{}", my_uid());
    server.entry(
        "spiffe://example.org/before-failover",
        "spiffe://example.org/node",
        &[&uid],
        &[],
    );
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let served = |id: &str| {
        let o = agent.cli(&["api", "fetch", "x509"]);
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(id)
    };
    assert!(
        wait_until(Duration::from_secs(30), || served(
            "spiffe://example.org/before-failover"
        )),
        "no SVID before the failover:\n{}",
        agent.log()
    );

    let writers = Writers::start(&server, 3, "failover", "spiffe://example.org/node");
    assert!(
        wait_until(Duration::from_secs(60), || writers.acked() >= 30),
        "the writers do not get through:\n{}",
        server.log()
    );
    // Still synchronous under load, right before the kill.
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
        ),
        "sync"
    );
    primary.crash();
    // From here (the postmaster and its backends are gone) no write can succeed
    // until the promotion; writes sent earlier may have been committed just before.
    let killed = Instant::now();
    // A failover manager takes a moment to decide; writes meanwhile have nowhere to go.
    std::thread::sleep(Duration::from_secs(2));
    let promoting = Instant::now();
    pair.promote_standby();
    let promoted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || writers.acked_after(promoted)
            >= 10),
        "writes did not resume after the promotion:\n{}",
        server.log()
    );
    let attempts = writers.finish();

    // The same server process all along.
    assert_eq!(server.pid(), Some(server_pid));
    assert!(
        server.wait_exit(Duration::ZERO).is_none(),
        "the server exited"
    );

    let acked: BTreeSet<&str> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok().map(String::as_str))
        .collect();
    let failed: Vec<&(tonic::Code, String)> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().err())
        .collect();
    let acked_before_kill = attempts
        .iter()
        .filter(|a| a.sent < killed && a.outcome.is_ok())
        .count();
    // Writes failed while there was no primary, each clearly.
    assert!(!failed.is_empty(), "no write failed without a primary");
    for (code, message) in &failed {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("datastore unavailable"), "{message}");
    }
    // The first write sent after the kill that succeeded, when it was answered.
    let first_after_kill = attempts
        .iter()
        .filter(|a| a.sent > killed && a.outcome.is_ok())
        .map(|a| a.done)
        .min()
        .unwrap();

    // Every acknowledged write is on the new primary, read without the server.
    let in_db: BTreeSet<String> = standby
        .psql("tessera", "SELECT id FROM entries")
        .lines()
        .map(str::to_owned)
        .collect();
    let lost: Vec<&&str> = acked.iter().filter(|id| !in_db.contains(**id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");

    // New entries reach agents through the new primary.
    server.entry(
        "spiffe://example.org/after-failover",
        "spiffe://example.org/node",
        &[&uid],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(30), || served(
            "spiffe://example.org/after-failover"
        )),
        "no SVID for an entry made after the failover:\n{}",
        agent.log()
    );

    assert!(
        first_after_kill > promoting,
        "a write sent after the kill succeeded before the promotion"
    );
    let recovery = first_after_kill.duration_since(killed);
    println!(
        "PostgreSQL failover: {} writes acknowledged ({acked_before_kill} before the kill), \
         {} failed with Unavailable in the gap, none lost; kill -9 of the primary to the \
         first successful write: {:.2} s (the standby promoted {:.2} s after the kill, \
         pg_ctl promote took {:.2} s; from the start of the promotion to the first \
         successful write: {:.2} s)",
        acked.len(),
        failed.len(),
        recovery.as_secs_f64(),
        promoting.duration_since(killed).as_secs_f64(),
        promoted.duration_since(promoting).as_secs_f64(),
        first_after_kill
            .saturating_duration_since(promoting)
            .as_secs_f64(),
    );

    drop(agent);
    server.stop();
    drop(pair);
    let _ = std::fs::remove_dir_all(&pgdir);
}
