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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::admin::CreateEntryRequest;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_swtpm_tests::faults::PgHaPair;
use tessera_swtpm_tests::{Agent, Server, my_uid, test_dir, wait_until};

/// One write through the admin API: when it was sent, when it was answered and how
/// it ended (the entry's ID, or the status code and message).
#[derive(Debug)]
struct Attempt {
    sent: Instant,
    done: Instant,
    outcome: Result<String, (tonic::Code, String)>,
}

/// Writers that create entries through the admin socket until told to stop, each
/// recording every attempt.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writers {
    fn start(server: &Server, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let admin = server.admin.clone();
        let (s, a, log) = (stop.clone(), acked.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for w in 0..count {
                    let (admin, stop, acked, log) =
                        (admin.clone(), s.clone(), a.clone(), log.clone());
                    tasks.push(tokio::spawn(async move {
                        let ch = tessera_proto::unix_channel(&admin).await.unwrap();
                        let mut client = AdminClient::new(ch);
                        let mut i = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            i += 1;
                            let entry = tessera_proto::types::Entry {
                                spiffe_id: format!("spiffe://example.org/failover/{w}/{i}"),
                                parent_id: "spiffe://example.org/node".into(),
                                selectors: vec![format!("unix:uid:{}", 20_000 + i)],
                                ..Default::default()
                            };
                            let sent = Instant::now();
                            let outcome = client
                                .create_entry(CreateEntryRequest { entry: Some(entry) })
                                .await
                                .map(|r| r.into_inner().id)
                                .map_err(|s| (s.code(), s.message().to_owned()));
                            let failed = outcome.is_err();
                            if !failed {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            log.lock().unwrap().push(Attempt {
                                sent,
                                done: Instant::now(),
                                outcome,
                            });
                            if failed {
                                // A failing database answers at once: do not spin.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
        });
        Self {
            stop,
            acked,
            attempts,
            thread,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Successful writes sent after `t`.
    fn acked_after(&self, t: Instant) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.sent > t && a.outcome.is_ok())
            .count()
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.attempts)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

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

    let writers = Writers::start(&server, 3);
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
