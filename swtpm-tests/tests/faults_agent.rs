//! The agent's part of the fault matrix, end to end: the server away while SVIDs are
//! due (retries thin out, logs do not flood, recovery is automatic), signing down
//! while an entry is deleted (the deletion still reaches workloads), the TPM restarted
//! and away under a running agent (renewal resumes by itself), SIGTERM with watching
//! workloads (streams end, the agent exits), a restart while the server is away (the
//! identity survives, no re-attestation), an outage longer than the SVID lifetime, and
//! answers that are lost or slow (a proxy the test steers sits in front of the server).
//! Each case checks what workloads see throughout, what the logs say, and what the
//! state directory holds.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::faults_agent::{
    FaultProxy, ProxyMode, Watcher, fetch_x509, point_agent_at, sigterm, swtpm,
};
use tessera_swtpm_tests::{Agent, Server, SoftHsm, Swtpm, my_uid, test_dir, wait_until};

const WORKLOAD: &str = "spiffe://example.org/workload";
const NODE: &str = "spiffe://example.org/node";

/// A server whose agent SVIDs live an hour (so that only the workload SVIDs come due
/// during a test), with `extra` configuration.
fn server(dir: &Path, extra: &str) -> Server {
    Server::start(
        &dir.join("server"),
        &format!("agent_svid_ttl = \"1h\"\n{extra}"),
    )
}

/// A join token for `NODE` and an entry for this process under it.
fn token_and_entry(server: &Server) -> String {
    let token = server.token(Some(NODE), None);
    server.entry(WORKLOAD, NODE, &[&format!("unix:uid:{}", my_uid())], &[]);
    token
}

/// An agent reaching its server through `proxy`.
fn agent_via(dir: &Path, server: &Server, proxy: &FaultProxy, token: &str, extra: &str) -> Agent {
    let mut agent = Agent::configure(&dir.join("agent"), server, extra);
    point_agent_at(&agent, &proxy.address());
    agent.spawn(Some(token));
    agent.wait_healthy();
    agent
}

/// Waits for the workload to hold a verifying SVID (other than `not_serial`).
fn wait_for_svid(agent: &Agent, within: Duration, not_serial: Option<&str>) -> String {
    let mut last = String::new();
    let ok = wait_until(within, || match fetch_x509(agent, Duration::from_secs(5)) {
        Ok(f) if f.verified.is_ok() && Some(f.serial.as_str()) != not_serial => {
            last = f.serial;
            true
        }
        Ok(f) => {
            last = format!("{f:?}");
            false
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    assert!(ok, "no fresh, valid SVID: {last}\n{}", agent.log());
    last
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn with_the_server_away_retries_thin_out_and_recovery_is_automatic() {
    let dir = test_dir("fault-storm");
    let mut server = server(dir.path(), "x509_svid_ttl = \"10s\"");
    let token = token_and_entry(&server);
    let proxy = FaultProxy::start(&server.address());
    let mut agent = agent_via(dir.path(), &server, &proxy, &token, "");
    let before = wait_for_svid(&agent, Duration::from_secs(20), None);

    // The server goes away while the SVID comes due (half of 10 s) and stays away
    // for 30 s: without backoff the agent asked every 200 ms (150 tries).
    server.stop();
    let mark = proxy.connections();
    let log_mark = agent.log().lines().count();
    std::thread::sleep(Duration::from_secs(30));
    let attempts = proxy.connections() - mark;
    let log = agent.log();
    let outage_log: Vec<&str> = log.lines().skip(log_mark).collect();
    let failure_lines = outage_log
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    assert!(
        (2..=20).contains(&attempts),
        "{attempts} connection attempts in 30 s:\n{log}"
    );
    assert!(
        failure_lines <= 4,
        "the same failure logged {failure_lines} times in 30 s:\n{}",
        outage_log.join("\n")
    );
    assert!(
        outage_log
            .iter()
            .any(|l| l.contains("sync failed (will retry)")),
        "the outage went unreported:\n{log}"
    );
    // Only the sync knocks while the server is away.
    assert!(
        !outage_log.iter().any(|l| l.contains("could not be signed")),
        "signing was tried without a server:\n{log}"
    );
    assert!(agent.exited().is_none(), "the agent exited:\n{log}");

    // Workloads asking for JWT-SVIDs meanwhile get UNAVAILABLE at once, and twenty
    // requests in a row do not each reach for the server.
    let mark = proxy.connections();
    let mut last = String::new();
    for _ in 0..20 {
        let o = agent.cli(&["api", "fetch", "jwt", "--audience", "svc"]);
        assert!(!o.status.success());
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(last.contains("Unavailable"), "{last}");
    }
    let jwt_attempts = proxy.connections() - mark;
    assert!(
        jwt_attempts <= 6,
        "{jwt_attempts} connections for 20 JWT-SVID requests:\n{}",
        agent.log()
    );
    eprintln!("{jwt_attempts} connections for 20 JWT-SVID requests; the last answer: {last}");

    // Back on the same address: the agent recovers by itself, within its backoff
    // ceiling (12 sync intervals = 6 s) and a sync.
    server.start_again();
    let t = Instant::now();
    let after = wait_for_svid(&agent, Duration::from_secs(30), Some(&before));
    assert_ne!(after, before);
    eprintln!(
        "{attempts} connection attempts in 30 s of outage; fresh SVID {:?} after the server returned",
        t.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("sync works again after")),
        "{}",
        agent.log()
    );
    assert!(
        agent.cli(&["healthcheck"]).status.success(),
        "{}",
        agent.log()
    );
}

#[test]
fn a_deleted_entry_stops_being_served_while_signing_is_down() {
    let dir = test_dir("fault-delete");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let server = Server::start_with_env(
        &dir.path().join("server"),
        &format!(
            "agent_svid_ttl = \"1h\"\nx509_svid_ttl = \"40s\"\n[key_manager]\ntype = \"pkcs11\"\n{}",
            hsm.section()
        ),
        &hsm.env(),
    );
    let token = token_and_entry(&server);
    let doomed_id = "spiffe://example.org/doomed";
    let doomed = server.entry(doomed_id, NODE, &[&format!("unix:uid:{}", my_uid())], &[]);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(wait_until(Duration::from_secs(20), || {
        fetch_x509(&agent, Duration::from_secs(5)).is_ok_and(|f| f.spiffe_ids.len() == 2)
    }));
    let held = fetch_x509(&agent, Duration::from_secs(5)).unwrap();
    let held_not_after = held.not_after;
    let held = held.serial_of(WORKLOAD).unwrap().to_owned();

    // The HSM token disappears; the SVIDs come due (at 40% to 60% of their 40 s)
    // and cannot be signed.
    let away = hsm.dir.join("tokens.away");
    std::fs::rename(hsm.tokens_dir(), &away).unwrap();
    let all_due = held_not_after - 40 + 25;
    while tessera_core::x509::unix_seconds(std::time::SystemTime::now()) < all_due {
        std::thread::sleep(Duration::from_millis(200));
    }

    // An entry deleted now is gone for the workload within a sync or two, while the
    // other SVID, still valid, keeps being served.
    server.cli_ok(&["entry", "delete", "--entry-id", &doomed]);
    let t = Instant::now();
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            seen = Some(fetch_x509(&agent, Duration::from_secs(5)));
            matches!(&seen, Some(Ok(f)) if f.spiffe_ids == [WORKLOAD])
        }),
        "the deleted entry is still served: {seen:?}\n{}",
        agent.log()
    );
    let f = fetch_x509(&agent, Duration::from_secs(5)).unwrap();
    assert!(f.verified.is_ok(), "{:?}", f.verified);
    assert_eq!(f.serial, held, "signed during the outage?");
    eprintln!(
        "deletion reached the workload {:?} after it was made",
        t.elapsed()
    );
    // The signing failure is reported, once per kind, not once per entry and try.
    assert!(
        agent.log().contains("could not be signed"),
        "signing never failed:\n{}",
        agent.log()
    );
    // (The server words this outage in two ways, depending on how far it got.)
    let lines = count(&agent.log(), "could not be signed");
    assert!(lines <= 3, "{lines} lines:\n{}", agent.log());

    // The token returns: the remaining entry is signed again, the deleted one is not.
    std::fs::rename(&away, hsm.tokens_dir()).unwrap();
    let t = Instant::now();
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = Some(fetch_x509(&agent, Duration::from_secs(5)));
            matches!(&last, Some(Ok(f)) if f.serial != held && f.spiffe_ids == [WORKLOAD] && f.verified.is_ok())
        }),
        "signing did not resume: {last:?}\n{}",
        agent.log()
    );
    eprintln!("signing resumed {:?} after the token returned", t.elapsed());
}

#[test]
fn renewal_resumes_by_itself_after_the_tpm_restarts_or_goes_away() {
    let dir = test_dir("fault-tpm");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    // Agent SVIDs of 20 s: renewed about every 10 s, each time with a new TPM key.
    let server = Server::start(
        &dir.path().join("server"),
        "agent_svid_ttl = \"20s\"\nx509_svid_ttl = \"1h\"",
    );
    let token = token_and_entry(&server);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        &format!("[key_manager]\ntype = \"tpm\"\ntcti = \"{}\"\n", tpm.tcti),
    );
    let pid = agent.pid();
    let renewals = || count(&agent.log(), "agent SVID renewed");
    assert!(
        wait_until(Duration::from_secs(30), || renewals() >= 1),
        "no renewal with the TPM key:\n{}",
        agent.log()
    );

    // swtpm restarts on the same state under the running agent.
    swtpm(&tpm, "restart");
    let n = renewals();
    assert!(
        wait_until(Duration::from_secs(40), || renewals() >= n + 2),
        "renewal did not resume after the TPM restarted:\n{}",
        agent.log()
    );

    // swtpm is away from just after a renewal (so that the agent SVID outlives the
    // outage: an expired one would need a new join token) until the agent has said
    // so, then back.
    let n = renewals();
    assert!(
        wait_until(Duration::from_secs(30), || renewals() > n),
        "{}",
        agent.log()
    );
    swtpm(&tpm, "stop");
    // The agent says why it is stuck (its TLS key is in the TPM, so even the sync
    // cannot sign in to the server) and keeps running. (Waited for rather than
    // slept on: on a loaded machine the next sync can come late, and every second
    // of outage is taken from the agent SVID's remaining life.)
    assert!(
        wait_until(Duration::from_secs(12), || agent
            .log()
            .contains("TPM unavailable")),
        "{}",
        agent.log()
    );
    assert_eq!(agent.pid(), pid, "the agent ended with the TPM away");
    swtpm(&tpm, "start");
    let n = renewals();
    assert!(
        wait_until(Duration::from_secs(50), || renewals() >= n + 2),
        "renewal did not resume after the TPM came back:\n{}",
        agent.log()
    );
    assert_eq!(agent.pid(), pid, "the agent was restarted");
    wait_for_svid(&agent, Duration::from_secs(10), None);
    assert!(
        agent.cli(&["healthcheck"]).status.success(),
        "{}",
        agent.log()
    );
    // The saved identity is the latest: its key is a TPM blob in the state folder.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.dir.join("data/agent.json")).unwrap())
            .unwrap();
    let key_id = state["key_id"].as_str().unwrap();
    assert!(
        agent
            .dir
            .join(format!("data/keys/{key_id}.tpmkey"))
            .exists()
    );
}

#[test]
fn sigterm_ends_watching_streams_and_the_agent_exits_promptly() {
    let dir = test_dir("fault-sigterm");
    let server = server(dir.path(), "");
    let token = token_and_entry(&server);
    let mut agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let mut watchers: Vec<Watcher> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("watch{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Watcher::start(&agent, &d)
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || watchers
            .iter()
            .all(|w| w.output().contains("SPIFFE ID:"))),
        "the watchers got no SVID:\n{}",
        agent.log()
    );

    let t = Instant::now();
    sigterm(agent.pid().unwrap());
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent did not exit within 10 s:\n{}", agent.log()));
    let took = t.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    assert!(!agent.socket.exists(), "the socket file was left behind");
    for w in &mut watchers {
        assert!(
            wait_until(Duration::from_secs(10), || w.exited().is_some()),
            "a watcher's stream did not end"
        );
        assert!(
            w.output().contains("shutting down"),
            "the watcher was not told why ({:?}): {}",
            w.exited(),
            w.output()
        );
    }
    eprintln!("the agent exited {took:?} after SIGTERM");
}

#[test]
fn restarted_while_the_server_is_away_the_agent_keeps_its_identity_and_comes_back() {
    let dir = test_dir("fault-restart");
    let mut server = server(dir.path(), "x509_svid_ttl = \"1m\"");
    let token = token_and_entry(&server);
    let mut agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    wait_for_svid(&agent, Duration::from_secs(20), None);
    let state_file = agent.dir.join("data/agent.json");
    let saved = std::fs::read(&state_file).unwrap();

    // The server goes away, then the agent restarts (with its join token still on
    // the command line, as a unit file would give it).
    server.stop();
    agent.stop();
    agent.spawn(Some(&token));
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        agent.exited().is_none(),
        "the agent exited:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("resumed from the state directory"), "{log}");
    assert!(!log.contains("node attested"), "{log}");
    assert_eq!(
        std::fs::read(&state_file).unwrap(),
        saved,
        "the state file changed while the server was away"
    );
    // Workloads get the SVID they had meanwhile, from the persisted cache (it is
    // still valid: a minute's lifetime); swtpm-tests/tests/svid_cache.rs has more.
    let cached = fetch_x509(&agent, Duration::from_secs(5)).unwrap();
    assert_eq!(cached.spiffe_ids.len(), 1, "{:?}", cached.spiffe_ids);
    assert!(log.contains("restored workload SVIDs"), "{log}");
    let pid = agent.pid();

    // The server returns: the agent reconnects by itself with the identity it had.
    server.start_again();
    wait_for_svid(&agent, Duration::from_secs(30), None);
    assert_eq!(agent.pid(), pid);
    assert!(!agent.log().contains("node attested"), "{}", agent.log());
    assert!(
        !server.log().contains("agent attested"),
        "the agent attested again:\n{}",
        server.log()
    );
    let list = server.cli_ok(&["agent", "list", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn an_agent_started_before_its_server_waits_for_it_and_attests_when_it_comes() {
    let dir = test_dir("fault-early");
    let mut server = server(dir.path(), "");
    let token = token_and_entry(&server);
    let mut agent = Agent::configure(&dir.path().join("agent"), &server, "");
    server.stop();

    // No state, no server: the agent waits (serving UNAVAILABLE) instead of exiting.
    agent.spawn(Some(&token));
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        agent.exited().is_none(),
        "the agent gave up:\n{}",
        agent.log()
    );
    let err = fetch_x509(&agent, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let h = agent.cli(&["healthcheck"]);
    assert!(!h.status.success());
    assert!(
        agent
            .log()
            .contains("cannot get the agent's identity yet (will retry)"),
        "{}",
        agent.log()
    );
    assert!(!agent.dir.join("data/agent.json").exists());

    // The server comes: the agent attests with its token and serves.
    server.start_again();
    wait_for_svid(&agent, Duration::from_secs(30), None);
    assert!(agent.log().contains("node attested"), "{}", agent.log());
    assert!(
        agent.cli(&["healthcheck"]).status.success(),
        "{}",
        agent.log()
    );
}

#[test]
fn a_join_token_agent_whose_own_svid_expired_says_what_to_do_and_a_new_token_brings_it_back() {
    let dir = test_dir("fault-expired");
    let mut server = Server::start(
        &dir.path().join("server"),
        "agent_svid_ttl = \"6s\"\nx509_svid_ttl = \"1h\"",
    );
    let token = token_and_entry(&server);
    let mut agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    wait_for_svid(&agent, Duration::from_secs(20), None);

    // The outage outlives the agent SVID: the server refuses it in the handshake.
    server.stop();
    std::thread::sleep(Duration::from_secs(10));
    server.start_again();
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("give it a new join token")),
        "the agent did not say what to do:\n{}",
        agent.log()
    );
    assert!(agent.exited().is_none(), "{}", agent.log());
    let h = agent.cli(&["healthcheck", "--verbose"]);
    assert!(!h.status.success());
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&h.stderr)
    );

    // A new token and a restart: it attests again and serves.
    let fresh = server.token(Some(NODE), None);
    agent.stop();
    agent.spawn(Some(&fresh));
    agent.wait_healthy();
    assert!(agent.log().contains("node attested"), "{}", agent.log());
    wait_for_svid(&agent, Duration::from_secs(20), None);
}

#[test]
fn after_an_outage_longer_than_the_svid_lifetime_the_agent_serves_fresh_svids() {
    let dir = test_dir("fault-long");
    let mut server = server(dir.path(), "x509_svid_ttl = \"6s\"");
    let token = token_and_entry(&server);
    let mut agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let before = wait_for_svid(&agent, Duration::from_secs(20), None);

    // Away for 15 s: the SVID the agent holds expires meanwhile. (What the Workload
    // API answers during that time is the Workload API's own tests' business.)
    server.stop();
    std::thread::sleep(Duration::from_secs(15));
    assert!(agent.exited().is_none(), "{}", agent.log());
    server.start_again();
    let t = Instant::now();
    let after = wait_for_svid(&agent, Duration::from_secs(30), Some(&before));
    let f = fetch_x509(&agent, Duration::from_secs(5)).unwrap();
    assert!(f.verified.is_ok(), "{:?}", f.verified);
    assert!(
        f.not_after > tessera_core::x509::unix_seconds(std::time::SystemTime::now()),
        "expired"
    );
    eprintln!(
        "fresh SVID {after} {:?} after the server returned",
        t.elapsed()
    );
    // It keeps rotating normally afterwards.
    wait_for_svid(&agent, Duration::from_secs(20), Some(&after));
}

#[test]
fn lost_and_slow_answers_do_not_wedge_the_agent() {
    let dir = test_dir("fault-answers");
    let server = server(dir.path(), "x509_svid_ttl = \"30s\"");
    let token = token_and_entry(&server);
    let proxy = FaultProxy::start(&server.address());
    let agent = agent_via(dir.path(), &server, &proxy, &token, "");
    let first = wait_for_svid(&agent, Duration::from_secs(20), None);

    // Every answer of the server is lost for 15 s, across the SVID's rotation time
    // (half of 30 s). The open connection stays: the next call on it (a sync every
    // 500 ms) reaches the server, which does the work, and its answer is dropped;
    // reconnecting then fails too, as the server's side of each handshake is lost.
    proxy.set(ProxyMode::LoseAnswers);
    let mark = proxy.connections();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        // The workload keeps a valid SVID throughout.
        let f = fetch_x509(&agent, Duration::from_secs(5)).unwrap();
        assert!(f.verified.is_ok(), "{:?}\n{}", f.verified, agent.log());
        std::thread::sleep(Duration::from_secs(1));
    }
    let attempts = proxy.connections() - mark;
    assert!(proxy.lost_answers() > 0, "no answer was lost");
    assert!(
        attempts <= 15,
        "{attempts} connections in 15 s of lost answers:\n{}",
        agent.log()
    );

    // Answers flow again: a fresh SVID before the held one expires.
    proxy.set(ProxyMode::Forward);
    let second = wait_for_svid(&agent, Duration::from_secs(20), Some(&first));

    // A slow server (each piece of every answer held 300 ms) still gets the work
    // done: the next rotation happens.
    proxy.set(ProxyMode::DelayAnswers(Duration::from_millis(300)));
    proxy.cut();
    wait_for_svid(&agent, Duration::from_secs(40), Some(&second));
    proxy.set(ProxyMode::Forward);
    eprintln!("{attempts} connections during 15 s of lost answers");
}
