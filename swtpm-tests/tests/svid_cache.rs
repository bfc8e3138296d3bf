//! The persisted SVID cache end to end: an agent gets a workload SVID from a real
//! server; the server is stopped and the agent restarted: the workload gets the same
//! SVID at once, from the cache (the cache key sealed to the TPM, on each backend;
//! or, without a TPM, in a key file). The state directory copied to a machine with
//! another TPM yields nothing from the cache (the key does not open there: logged,
//! discarded) and the agent goes on with the server once it is back.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::faults_agent::{Fetched, fetch_x509};
use tessera_swtpm_tests::{Agent, Server, Swtpm, my_uid, test_dir, wait_until};

const ID: &str = "spiffe://example.org/cached-app";

/// The first answer the agent gives with an SVID, within `timeout`.
fn fetch(agent: &Agent, timeout: Duration) -> Fetched {
    let mut last = None;
    let ok = wait_until(timeout, || {
        match fetch_x509(agent, Duration::from_secs(2)) {
            Ok(f) => {
                last = Some(Ok(f));
                true
            }
            Err(e) => {
                last = Some(Err(e));
                false
            }
        }
    });
    match last {
        Some(Ok(f)) if ok => f,
        other => panic!(
            "no SVID in {timeout:?}: {other:?}\nagent log:\n{}",
            agent.log()
        ),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Gets an SVID, stops the server, restarts the agent: the same SVID is served at
/// once. Returns the server (stopped) and the agent (stopped).
fn served_from_cache_after_an_offline_restart(
    dir: &Path,
    server_extra: &str,
    agent_extra: &str,
    token: bool,
) -> (Server, Agent, Fetched) {
    let mut server = Server::start(&dir.join("server"), server_extra);
    let token = token.then(|| server.token(None, None));
    let mut agent = Agent::start(&dir.join("agent"), &server, token.as_deref(), agent_extra);
    server.entry(
        ID,
        &agent.spiffe_id(),
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let first = fetch(&agent, Duration::from_secs(30));
    assert_eq!(first.spiffe_ids, vec![ID.to_string()]);
    let cache = agent.dir.join("data/svids.cache");
    assert!(
        wait_until(Duration::from_secs(10), || cache.exists()),
        "no SVID cache written"
    );
    let on_disk = std::fs::read(&cache).unwrap();
    assert!(on_disk.starts_with(b"TSVC"), "not the cache envelope");
    assert!(
        !on_disk.windows(ID.len()).any(|w| w == ID.as_bytes()),
        "the cache is not encrypted"
    );

    agent.stop();
    server.stop();
    agent.spawn(None);
    let start = Instant::now();
    let again = fetch(&agent, Duration::from_secs(20));
    let took = start.elapsed();
    assert_eq!(again.spiffe_ids, vec![ID.to_string()]);
    assert_eq!(again.serial, first.serial, "not the cached SVID");
    assert!(again.verified.is_ok(), "{:?}", again.verified);
    let log = agent.log();
    assert!(
        log.contains("restored workload SVIDs from the SVID cache"),
        "{log}"
    );
    // Served with the server away: nothing was signed in this run.
    assert!(!log.contains("works again"), "{log}");
    eprintln!("offline restart to first SVID: {took:?}");
    agent.stop();
    (server, agent, first)
}

fn tpm_ek_server(dir: &Path, tpms: &[&Swtpm]) -> String {
    let roots: Vec<String> = tpms
        .iter()
        .map(|t| format!("{:?}", t.ek_ca_root.display().to_string()))
        .collect();
    let inters: Vec<String> = tpms
        .iter()
        .map(|t| format!("{:?}", t.ek_ca_intermediate.display().to_string()))
        .collect();
    let _ = dir;
    format!(
        "[node_attestors.tpm_ek]\nek_ca_bundle = [{}]\nek_intermediates = [{}]\n",
        roots.join(", "),
        inters.join(", ")
    )
}

fn sealed_cache(backend: &str) {
    let dir = test_dir(&format!("svid-cache-{backend}"));
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    let other = Swtpm::start(&dir.path().join("tpm-b"));
    let agent_extra = |t: &Swtpm| {
        format!(
            "tpm_backend = \"{backend}\"\n[node_attestor.tpm_ek]\ntcti = \"{}\"\n",
            t.tcti
        )
    };
    let (mut server, agent, first) = served_from_cache_after_an_offline_restart(
        dir.path(),
        &tpm_ek_server(dir.path(), &[&tpm, &other]),
        &agent_extra(&tpm),
        false,
    );
    assert!(agent.dir.join("data/svids.key.tpm").exists());
    assert!(!agent.dir.join("data/svids.key").exists());

    // The state directory on another machine (another TPM), the server still away.
    let copy_dir_path = dir.path().join("copy");
    copy_dir(&agent.dir.join("data"), &copy_dir_path.join("data"));
    // (The test harness asks the server for its bundle to write the configuration.)
    server.start_again();
    let mut copy = Agent::configure(&copy_dir_path, &server, &agent_extra(&other));
    server.stop();
    copy.spawn(None);
    let refused = wait_until(Duration::from_secs(20), || {
        copy.log().contains("does not open on this TPM")
    });
    assert!(refused, "{}", copy.log());
    assert!(
        fetch_x509(&copy, Duration::from_secs(3)).is_err(),
        "an SVID was served from a cache made on another TPM"
    );
    assert!(copy.exited().is_none(), "{}", copy.log());
    assert!(!copy.log().contains("restored workload SVIDs"));

    // With the server back, the copy gets its SVIDs from it.
    server.start_again();
    let fetched = fetch(&copy, Duration::from_secs(40));
    assert_eq!(fetched.spiffe_ids, vec![ID.to_string()]);
    assert_ne!(fetched.serial, first.serial, "the cached SVID was served");
}

#[test]
fn sealed_cache_esapi() {
    sealed_cache("esapi");
}

#[test]
fn sealed_cache_native() {
    sealed_cache("native");
}

#[test]
fn key_file_cache_without_a_tpm() {
    let dir = test_dir("svid-cache-keyfile");
    let (_server, agent, _) = served_from_cache_after_an_offline_restart(dir.path(), "", "", true);
    use std::os::unix::fs::PermissionsExt;
    let key = agent.dir.join("data/svids.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert!(!agent.dir.join("data/svids.key.tpm").exists());

    // Garbage in the cache: the agent starts, says so, and serves nothing from it.
    std::fs::write(agent.dir.join("data/svids.cache"), b"TSVC\x01\x02garbage").unwrap();
    let mut agent = agent;
    agent.spawn(None);
    let logged = wait_until(Duration::from_secs(20), || {
        agent.log().contains("is unusable")
    });
    assert!(logged, "{}", agent.log());
    assert!(fetch_x509(&agent, Duration::from_secs(3)).is_err());
    assert!(agent.exited().is_none(), "{}", agent.log());
}
