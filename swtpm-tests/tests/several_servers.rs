//! Three servers, one trust domain: one SoftHSM2 token holding every server's CA and
//! JWT keys, one PostgreSQL primary with a synchronous streaming-replication standby,
//! twenty agents (join tokens) each with all three server addresses (in a different
//! order, so that each server has agents of its own) and a workload on each holding a
//! FetchX509SVID stream open for the whole test. CA and SVID lifetimes are short, so
//! that every server rotates several times while the test runs.
//!
//! - `kill -9` of one server, later of a second: every workload keeps an SVID that
//!   verifies against the bundle it was given, each new one before the last expired;
//! - the servers still up rotate while the first is down; it catches up when it
//!   comes back, and every server then serves the same bundle, holding every server's
//!   current authorities;
//! - then the PostgreSQL primary is killed and the standby promoted in the middle of
//!   entry writes: every acknowledged write is on the new primary (`psql`), the
//!   servers recover without a restart, a new entry reaches an agent, and every
//!   agent serves SVIDs again;
//! - no agent attests again: each keeps its SPIFFE ID throughout;
//! - `psql` shows each server's own CA records and the shared bundle row.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::faults::{PgHaPair, signal};
use tessera_swtpm_tests::writers::Writers;
use tessera_swtpm_tests::{
    Agent, Server, SoftHsm, X509Update, assert_continuous, my_uid, test_dir, wait_until,
    watch_x509_while,
};

const AGENTS: usize = 20;
const CA_TTL: u64 = 40;

/// The X.509 authorities a server serves (`bundle show`), as PEM blocks.
fn served_roots(server: &Server) -> BTreeSet<String> {
    let pem = server.cli_ok(&["bundle", "show"]);
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .collect()
}

/// Kills a server with SIGKILL and reaps it.
fn kill(server: &mut Server) {
    signal(server.pid().unwrap(), "KILL");
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn three_servers_share_a_trust_domain_through_server_kills_rotations_and_a_database_failover() {
    let dir = test_dir("several-servers");
    // Reachable by the postgres user when the tests run as root.
    let pgdir = std::env::temp_dir().join(format!("tessera-3srv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pgdir);
    let pair = PgHaPair::start(&pgdir);
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let conn = format!(
        "host=localhost,localhost port={},{} user=tessera dbname=tessera \
         target_session_attrs=read-write connect_timeout=3 sslmode=verify-full sslrootcert={}",
        pair.primary.port,
        pair.standby.port,
        pair.ca_file.display()
    );
    // Agents sync every second; a new authority is published for 1 s + 1 s before it
    // signs; the next CA is prepared after 20 s and takes over after 33 s.
    let config = format!(
        "ca_ttl = \"{CA_TTL}s\"\nx509_svid_ttl = \"10s\"\njwt_svid_ttl = \"10s\"\n\
         bundle_refresh_hint = \"1s\"\nagent_sync_interval = \"1s\"\n\
         [datastore]\ntype = \"postgres\"\nconnection_string = \"{conn}\"\n\
         [key_manager]\ntype = \"pkcs11\"\n{}",
        hsm.section()
    );
    // Each server started as systemd starts a Type=notify unit: what it tells
    // systemd is read from its notification socket.
    let notify: Vec<(std::path::PathBuf, UnixDatagram)> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("notify{i}.sock"));
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_nonblocking(true).unwrap();
            (path, sock)
        })
        .collect();
    let notified = |i: usize| -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = notify[i].1.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    };
    let start = |i: usize| {
        let mut env = hsm.env();
        env.push(("NOTIFY_SOCKET".into(), notify[i].0.display().to_string()));
        Server::start_with_env(&dir.path().join(format!("server{i}")), &config, &env)
    };
    let mut servers = vec![start(0)];
    // The others join a trust domain where the first signs: each waits for its first
    // authorities to be known before it serves, and asks systemd for more time.
    servers.push(start(1));
    servers.push(start(2));
    let log = servers[1].log();
    assert!(
        log.contains("it signs once every agent can have learnt them"),
        "server 1 did not wait for its first CA to be known:\n{log}"
    );
    for i in 0..3 {
        let said = notified(i);
        let extended = said
            .iter()
            .position(|m| m.contains("EXTEND_TIMEOUT_USEC=30000000"));
        let ready = said.iter().position(|m| m.contains("READY=1"));
        assert!(ready.is_some(), "server {i} told systemd: {said:?}");
        if i == 0 {
            assert!(
                extended.is_none(),
                "server 0 had nothing to wait for: {said:?}"
            );
        } else {
            assert!(
                extended < ready && extended.is_some(),
                "server {i}: {said:?}"
            );
        }
    }
    // Each server made its own CA and JWT key; all in the shared bundle.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            std::fs::read_to_string(servers[i].dir.join("data").join("server_id"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "{ids:?}");
    assert!(wait_until(Duration::from_secs(10), || {
        let r = served_roots(&servers[0]);
        r.len() >= 3 && servers.iter().all(|s| served_roots(s) == r)
    }));

    // Twenty agents, each knowing all three servers, starting with a different one.
    let uid = format!("unix:uid:{}", my_uid());
    let addresses: Vec<String> = servers.iter().map(Server::address).collect();
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let first = a % 3;
        let node = format!("spiffe://example.org/node/{a}");
        let token = servers[first].token(Some(&node), None);
        servers[(a + 1) % 3].entry(
            &format!("spiffe://example.org/workload/{a}"),
            &node,
            &[&uid],
            &[],
        );
        let others: Vec<String> = (1..3)
            .map(|k| format!("\"{}\"", addresses[(first + k) % 3]))
            .collect();
        agents.push(Agent::start(
            &dir.path().join(format!("agent{a}")),
            &servers[first],
            Some(&token),
            &format!(
                "sync_interval = \"1s\"\nserver_addresses = [{}]\n",
                others.join(", ")
            ),
        ));
    }
    let agent_ids: Vec<String> = agents.iter().map(Agent::spiffe_id).collect();

    let stop = AtomicBool::new(false);
    let seen: Vec<Vec<X509Update>> = std::thread::scope(|scope| {
        let watchers: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(|| watch_x509_while(agent, || !stop.load(Ordering::SeqCst))))
            .collect();
        let mut phases = || -> Result<(), String> {
            std::thread::sleep(Duration::from_secs(8));

            // kill -9 the first server; the others rotate while it is down (longer
            // than a CA's life, so its own CA has expired when it returns).
            kill(&mut servers[0]);
            let down = Instant::now();
            let before = served_roots(&servers[1]);
            std::thread::sleep(Duration::from_secs(CA_TTL + 5));
            let during = served_roots(&servers[1]);
            if during.is_subset(&before) {
                return Err("no server rotated while the first was down".into());
            }
            servers[0].start_again();
            println!("server 0 back after {:.1} s", down.elapsed().as_secs_f64());
            // It catches up: every server serves the same bundle again, with its new
            // CA and every current authority of the others.
            if !wait_until(Duration::from_secs(10), || {
                let r = served_roots(&servers[0]);
                servers.iter().all(|s| served_roots(s) == r) && !r.is_subset(&during)
            }) {
                return Err(format!(
                    "the servers do not agree on the bundle after the first came back:\n{}",
                    servers[0].log()
                ));
            }
            std::thread::sleep(Duration::from_secs(5));

            // kill -9 a second server.
            kill(&mut servers[1]);
            std::thread::sleep(Duration::from_secs(15));
            Ok(())
        };
        let outcome = phases();
        stop.store(true, Ordering::SeqCst);
        let seen = watchers.into_iter().map(|w| w.join().unwrap()).collect();
        if let Err(e) = outcome {
            panic!("{e}");
        }
        seen
    });

    // Every workload held a valid SVID throughout, and saw rotations.
    for (a, updates) in seen.iter().enumerate() {
        assert!(
            updates.len() >= 5,
            "agent {a}: only {} updates",
            updates.len()
        );
        assert_continuous(updates);
        let issuers: BTreeSet<&str> = updates.iter().map(|u| u.issuer.as_str()).collect();
        assert!(
            issuers.len() >= 2,
            "agent {a}: one issuer all along: {issuers:?}"
        );
    }
    let issuers: BTreeSet<&str> = seen.iter().flatten().map(|u| u.issuer.as_str()).collect();
    println!(
        "{} workload updates from {} CAs over the test",
        seen.iter().map(Vec::len).sum::<usize>(),
        issuers.len()
    );
    // With the workloads' streams closed: the database fails over (its primary
    // killed, the standby promoted) while entries are written through server 2. An
    // SVID may expire during the outage here (ten seconds is shorter than the gap
    // plus the agents' backoff); what must hold is that no acknowledged write is
    // lost, that the servers recover by themselves, and that every agent is served
    // again.
    // The database fails over while entries are written through server 2.
    let writers = Writers::start(&servers[2], 2, "pgfail", "spiffe://example.org/node/0");
    if !wait_until(Duration::from_secs(60), || writers.acked() >= 20) {
        panic!("writes do not get through:\n{}", servers[2].log());
    }
    pair.primary.crash();
    std::thread::sleep(Duration::from_secs(2));
    pair.promote_standby();
    let promoted = Instant::now();
    if !wait_until(Duration::from_secs(60), || {
        writers.acked_after(promoted) >= 10
    }) {
        panic!("writes did not resume:\n{}", servers[2].log());
    }
    let attempts = writers.finish();
    let acked: BTreeSet<String> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok().cloned())
        .collect();
    let in_db: BTreeSet<String> = pair
        .standby
        .psql("tessera", "SELECT id FROM entries")
        .lines()
        .map(str::to_owned)
        .collect();
    let lost: Vec<&String> = acked.difference(&in_db).collect();
    if !lost.is_empty() {
        panic!("{} acknowledged writes lost: {lost:?}", lost.len());
    }
    println!(
        "{} entries written through the failover, none lost",
        acked.len()
    );

    // A new entry, written through a server that never restarted, reaches an
    // agent that started on another server.
    servers[0].entry(
        "spiffe://example.org/after-failover",
        "spiffe://example.org/node/4",
        &[&uid],
        &[],
    );
    let served = || {
        let o = agents[4].cli(&["api", "fetch", "x509"]);
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).contains("spiffe://example.org/after-failover")
    };
    if !wait_until(Duration::from_secs(30), served) {
        panic!(
            "no SVID for the entry made after the failover:\n{}",
            agents[4].log()
        );
    }
    for (a, agent) in agents.iter().enumerate() {
        let ok = wait_until(Duration::from_secs(30), || {
            agent.cli(&["api", "fetch", "x509"]).status.success()
        });
        assert!(
            ok,
            "agent {a} serves no SVID after the failover:\n{}",
            agent.log()
        );
    }

    // No agent attested again.
    for (a, agent) in agents.iter().enumerate() {
        assert_eq!(
            agent.spiffe_id(),
            agent_ids[a],
            "agent {a} changed identity"
        );
    }

    // The rows, read without any server: every server's own CA records, and the one
    // shared bundle row.
    let owners = pair.standby.psql(
        "tessera",
        "SELECT count(DISTINCT data::json->>'server_id') FROM ca_records",
    );
    assert_eq!(owners, "3");
    assert_eq!(
        pair.standby.psql(
            "tessera",
            "SELECT count(*) FROM bundles WHERE trust_domain = 'example.org'"
        ),
        "1"
    );

    drop(agents);
    for mut s in servers {
        s.stop();
    }
    drop(pair);
    let _ = std::fs::remove_dir_all(&pgdir);
}
