//! The server's part of the fault matrix: each case breaks something the way an
//! operator's bad day would (answers lost on the network, kill -9, a CA key deleted,
//! the HSM token gone, PostgreSQL stopped or crashed, a full disk, a damaged database
//! page, a second server on the same data directory, SIGTERM with streams open, a
//! badly made upstream root) and asserts what workloads and agents see, what the logs
//! say, and what the datastore holds afterwards (read with sqlite3 or psql, not only
//! through the server).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tessera_core::key::{Key, KeyManager};
use tessera_core::{Bundle, TrustDomain};
use tessera_process::DiskKeyManager;
use tessera_swtpm_tests::faults::{
    self, FaultProxy, Mode, PgCluster, SmallDisk, attest_with_join_token, renew_agent, sync_as,
};
use tessera_swtpm_tests::{Agent, Server, SoftHsm, my_uid, run_ok, test_dir, wait_until};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// The server's SQLite file.
fn db_path(server: &Server) -> PathBuf {
    server.dir.join("data").join("datastore.sqlite3")
}

/// Runs a query with the sqlite3 shell, independently of the server.
fn sqlite(db: &Path, query: &str) -> String {
    run_ok(Command::new("sqlite3").arg(db).arg(query))
        .trim()
        .to_owned()
}

/// The X.509 roots of the server's bundle, DER.
fn roots(server: &Server) -> Vec<Vec<u8>> {
    tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes()).unwrap()
}

fn serial_of(chain: &[Vec<u8>]) -> String {
    tessera_core::x509::cert_info(&chain[0]).unwrap().serial_hex
}

/// The agent's current SVID chain and key, read from its state directory.
fn agent_identity(agent: &Agent) -> (Vec<Vec<u8>>, Arc<dyn Key>) {
    use base64::Engine;
    let text = std::fs::read_to_string(agent.dir.join("data").join("agent.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let chain: Vec<Vec<u8>> = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    let km = DiskKeyManager::open(&agent.dir.join("data").join("keys")).unwrap();
    let key = km.get_key(v["key_id"].as_str().unwrap()).unwrap().unwrap();
    (chain, key)
}

/// The serials the server accepts for `agent_id`: (proven, pending), from the file.
fn node_serials(db: &Path, agent_id: &str) -> (String, String) {
    let row = sqlite(
        db,
        &format!(
            "SELECT cert_serial || '|' || new_cert_serial FROM attested_nodes WHERE spiffe_id = '{agent_id}'"
        ),
    );
    let (a, b) = row
        .split_once('|')
        .unwrap_or_else(|| panic!("no node row: {row:?}"));
    (a.to_owned(), b.to_owned())
}

/// A workload entry under a join-token alias, for the test process's UID.
fn workload_token(server: &Server, name: &str) -> String {
    let node = format!("spiffe://example.org/node-{name}");
    let token = server.token(Some(&node), None);
    server.entry(
        &format!("spiffe://example.org/{name}"),
        &node,
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    token
}

/// What a workload gets from the agent's Workload API right now: the default SVID's
/// chain and the bundle that came with it.
fn fetch_x509(agent: &Agent) -> Option<(Vec<Vec<u8>>, Bundle)> {
    use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    rt().block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.ok()?;
        let mut client =
            SpiffeWorkloadApiClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                Ok(r)
            });
        let mut stream = client
            .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
            .await
            .ok()?
            .into_inner();
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .ok()?
            .ok()??;
        let svid = msg.svids.first()?;
        let chain = tessera_core::x509::split_concatenated(&svid.x509_svid).ok()?;
        let roots = tessera_core::x509::split_concatenated(&svid.bundle).ok()?;
        Some((chain, Bundle::with_x509(td(), roots)))
    })
}

/// Asserts the workload is served an SVID that verifies against the bundle it came
/// with (never an expired one: verification checks the time), and returns its issuer.
fn assert_served(agent: &Agent) -> String {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), || {
        last = fetch_x509(agent);
        last.as_ref().is_some_and(|(chain, bundle)| {
            tessera_core::x509::verify_svid_chain(chain, bundle, SystemTime::now()).is_ok()
        })
    });
    assert!(
        ok,
        "the workload is not served a valid SVID:\n{}",
        agent.log()
    );
    let (chain, _) = last.unwrap();
    tessera_core::x509::cert_info(&chain[0]).unwrap().issuer
}

// ---- lost renewal answers ----

/// The precise case, with a client that plays the agent: two renewals committed by
/// the server whose answers the agent never gets, then recovery.
#[test]
fn renewals_whose_answers_are_lost_never_lock_the_agent_out() {
    let dir = test_dir("lost-renewal-client");
    let server = Server::start(&dir.path().join("server"), "");
    let token = server.token(None, None);
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let addr = server.address();
    let db = db_path(&server);
    let r = roots(&server);
    rt().block_on(async {
        let s0 = attest_with_join_token(&addr, r.clone(), &token)
            .await
            .unwrap();
        // Two renewals the server commits; the answers are lost (dropped here).
        let s1 = renew_agent(&addr, r.clone(), s0.clone()).await.unwrap();
        let s2 = renew_agent(&addr, r.clone(), s0.clone()).await.unwrap();
        assert_eq!(
            node_serials(&db, &agent_id),
            (serial_of(&s0.0), serial_of(&s2.0)),
            "the proven SVID and the last renewal are accepted, nothing else"
        );
        // The agent still holds s0 only: it must still be accepted.
        sync_as(&addr, r.clone(), s0.clone())
            .await
            .expect("the SVID the agent holds is refused after two lost renewal answers");
        let refused = sync_as(&addr, r.clone(), s1.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        // The third renewal gets through; the agent uses the new SVID.
        let s3 = renew_agent(&addr, r.clone(), s0.clone()).await.unwrap();
        sync_as(&addr, r.clone(), s3.clone()).await.unwrap();
        assert_eq!(
            node_serials(&db, &agent_id),
            (serial_of(&s3.0), String::new()),
            "using the new SVID makes it the only one accepted"
        );
        // Every older SVID, including the one the agent proved it replaced, is refused.
        for (name, old) in [("s0", &s0), ("s1", &s1), ("s2", &s2)] {
            let e = sync_as(&addr, r.clone(), old.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{name}: {e}");
            assert!(e.message().contains("no longer"), "{name}: {e}");
            let e = renew_agent(&addr, r.clone(), old.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{name}: {e}");
        }
        // And the current one renews normally.
        let s4 = renew_agent(&addr, r.clone(), s3.clone()).await.unwrap();
        sync_as(&addr, r.clone(), s4).await.unwrap();
    });
    assert!(
        server.log().contains("agent uses its renewed SVID"),
        "{}",
        server.log()
    );
}

/// The real agent behind a proxy that drops the server's renewal answer twice: the
/// agent recovers by itself, and the SVID it proved it replaced is refused.
#[test]
fn the_agent_recovers_by_itself_when_two_renewal_answers_are_lost() {
    let dir = test_dir("lost-renewal-agent");
    let server = Server::start(&dir.path().join("server"), "agent_svid_ttl = \"16s\"");
    let proxy = FaultProxy::start(&server.address());
    let token = workload_token(&server, "renewal");
    let mut agent = Agent::configure(&dir.path().join("agent"), &server, "");
    // The agent dials the proxy.
    let cfg = std::fs::read_to_string(&agent.config).unwrap().replace(
        &format!("server_address = \"{}\"", server.address()),
        &format!("server_address = \"{}\"", proxy.address()),
    );
    std::fs::write(&agent.config, cfg).unwrap();
    agent.spawn(Some(&token));
    agent.wait_healthy();
    assert_served(&agent);
    let agent_id = agent.spiffe_id();
    let db = db_path(&server);
    let first = agent_identity(&agent);
    let first_serial = serial_of(&first.0);

    // Renewal answers carry a certificate (hundreds of bytes); the agent's other
    // traffic here is small (it syncs, its entries do not change). Drop two.
    proxy.set_mode(Mode::DropReplies {
        min_len: 400,
        count: 2,
    });
    assert!(
        wait_until(Duration::from_secs(60), || proxy.dropped() == 2),
        "no renewal answers to drop:\n{}",
        agent.log()
    );
    // The server committed a renewal the agent never saw (the pending serial); the
    // agent's own SVID is still accepted (its proven serial stayed).
    let (proven, pending) = node_serials(&db, &agent_id);
    assert_eq!(proven, first_serial);
    assert!(
        !pending.is_empty(),
        "the dropped answer was not a committed renewal"
    );
    assert_eq!(serial_of(&agent_identity(&agent).0), first_serial);
    assert!(
        wait_until(Duration::from_secs(60), || {
            serial_of(&agent_identity(&agent).0) != first_serial
                && node_serials(&db, &agent_id)
                    == (serial_of(&agent_identity(&agent).0), String::new())
        }),
        "the agent did not recover: node {:?}\n{}\n{}",
        node_serials(&db, &agent_id),
        agent.log(),
        server.log()
    );
    assert!(agent.exited().is_none(), "{}", agent.log());
    agent.wait_healthy();
    assert_served(&agent);
    // The SVID it replaced (and proved it did, by using the new one) is refused.
    let e = rt()
        .block_on(sync_as(&server.address(), roots(&server), first))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
}

// ---- shutdown and the data directory lock ----

/// SIGTERM with an attestation stream held open by a client and idle agent
/// connections: the server exits 0 within seconds and removes its admin socket.
#[test]
fn sigterm_with_open_streams_exits_promptly_and_cleanly() {
    let dir = test_dir("sigterm");
    let mut server = Server::start(&dir.path().join("server"), "");
    let token = workload_token(&server, "sigterm");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);
    let rt = rt();
    let addr = server.address();
    let r = roots(&server);
    // An attestation stream that never sends its first message: the server waits for
    // it (up to its challenge timeout, 30 s).
    let (_hold, held) = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<tessera_proto::agent::AttestRequest>(1);
        let mut client = faults::node_client(&addr, r, None);
        let call = tokio::spawn(async move {
            client
                .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        (tx, call)
    });
    let pid = server.pid().unwrap();
    let started = Instant::now();
    faults::signal(pid, "TERM");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", server.log()));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(
        !server.admin.exists(),
        "the admin socket {} was left behind",
        server.admin.display()
    );
    let log = server.log();
    assert!(log.contains("Tessera server stopped"), "{log}");
    eprintln!("the server exited {took:?} after SIGTERM");
    // The client's stream ended (with an error or without a result), not hung.
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), held).await });
    assert!(ended.is_ok(), "the held stream did not end");
    // The agent noticed, and serves what it holds meanwhile.
    assert!(fetch_x509(&agent).is_some(), "{}", agent.log());
}

/// Two servers on one data directory: the second refuses, naming the first's PID;
/// after kill -9 of the first no stale lock remains.
#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = test_dir("datadir-lock");
    let server = Server::start(&dir.path().join("server"), "");
    let first_pid = server.pid().unwrap();
    let second = dir.path().join("second.toml");
    let port = tessera_swtpm_tests::free_port();
    std::fs::write(
        &second,
        format!(
            "trust_domain = \"example.org\"\nbind_address = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nadmin_socket = \"{}\"\n",
            server.dir.join("data").display(),
            dir.path().join("second.sock").display()
        ),
    )
    .unwrap();
    let run_second = || {
        let mut child = Command::new(tessera_swtpm_tests::bin("tessera-server"))
            .arg("run")
            .arg("--config")
            .arg(&second)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        wait_until(Duration::from_secs(20), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        (child, status)
    };
    let (child, status) = run_second();
    let status = status.expect("the second server kept running on a locked data directory");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "is in use by another tessera-server (PID {first_pid})"
        )),
        "{err}"
    );
    // The first is untouched.
    server.cli_ok(&["healthcheck"]);

    // A crash releases the lock: the second may start now.
    faults::signal(first_pid, "KILL");
    std::thread::sleep(Duration::from_millis(300));
    let (mut child, status) = {
        let mut child = Command::new(tessera_swtpm_tests::bin("tessera-server"))
            .arg("run")
            .arg("--config")
            .arg(&second)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sock = dir.path().join("second.sock");
        let up = wait_until(Duration::from_secs(30), || {
            Command::new(tessera_swtpm_tests::bin("tessera-server"))
                .arg("--socket-path")
                .arg(&sock)
                .arg("healthcheck")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let status = child.try_wait().unwrap();
        assert!(up, "the second server did not start after the first died");
        (child, status)
    };
    assert!(status.is_none());
    faults::signal(child.id(), "TERM");
    let _ = child.wait();
}

// ---- CA keys gone, and HSM tokens gone ----

/// The journal's records as (id, status), read from the file.
fn journal(db: &Path) -> Vec<(String, String)> {
    sqlite(
        db,
        "SELECT id || '|' || json_extract(data, '$.status') FROM ca_records ORDER BY id",
    )
    .lines()
    .map(|l| {
        let (a, b) = l.split_once('|').unwrap();
        (a.to_owned(), b.to_owned())
    })
    .collect()
}

/// Mints an X509-SVID through the CLI and checks it with OpenSSL against the bundle
/// the server hands out now; returns its issuer.
fn mint_and_verify(server: &Server, out: &Path) -> String {
    let _ = std::fs::remove_dir_all(out);
    server.cli_ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/minted",
        "--write",
        out.to_str().unwrap(),
    ]);
    let bundle = server.bundle_pem();
    // svid.pem holds the chain: the intermediate (if any) is untrusted input.
    let v = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&bundle)
        .arg("-untrusted")
        .arg(out.join("svid.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "a minted SVID does not verify against the bundle: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let der = tessera_core::x509::pem_certs(&std::fs::read(out.join("svid.pem")).unwrap()).unwrap();
    tessera_core::x509::cert_info(&der[0]).unwrap().issuer
}

/// A JWT-SVID minted now validates against the server's bundle.
fn jwt_validates(server: &Server) {
    let token = server
        .cli_ok(&[
            "jwt",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/minted",
            "--audience",
            "db",
        ])
        .trim()
        .to_owned();
    let jwks = server.cli_ok(&["bundle", "show", "--format", "jwks"]);
    let bundle = Bundle::from_jwks(td(), jwks.as_bytes()).unwrap();
    tessera_core::jwt::validate_jwt_svid(
        &token,
        |_| Some(&bundle),
        &["db".to_owned()],
        tessera_core::x509::unix_seconds(SystemTime::now()),
    )
    .unwrap_or_else(|e| panic!("a minted JWT-SVID does not validate against the bundle: {e}"));
}

/// With the memory key manager every restart loses the keys: the server retires the
/// keyless authorities, signs with new ones at once (itself included), and keeps the
/// old ones in the bundle.
#[test]
fn a_restart_with_the_memory_key_manager_signs_again_at_once() {
    let dir = test_dir("memory-restart");
    let mut server = Server::start(
        &dir.path().join("server"),
        "[key_manager]\ntype = \"memory\"",
    );
    let db = db_path(&server);
    let before = mint_and_verify(&server, &dir.path().join("before"));
    let old_bundle = roots(&server);
    let old_journal = journal(&db);
    assert_eq!(old_journal.len(), 2, "{old_journal:?}");

    server.restart();
    server.cli_ok(&["healthcheck"]);
    let after = mint_and_verify(&server, &dir.path().join("after"));
    assert_ne!(
        after, before,
        "signed by the CA whose key died with the process"
    );
    jwt_validates(&server);
    let bundle = roots(&server);
    for old in &old_bundle {
        assert!(bundle.contains(old), "the retired CA left the bundle");
    }
    assert_eq!(bundle.len(), 2);
    let j = journal(&db);
    for (id, _) in &old_journal {
        assert!(
            j.contains(&(id.clone(), "retired".to_owned())),
            "{id} is not marked retired: {j:?}"
        );
    }
    assert_eq!(j.iter().filter(|(_, s)| s == "active").count(), 2, "{j:?}");
    let log = server.log();
    for (id, _) in &old_journal {
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("LOST ITS KEY")
                && l.contains(id.as_str())),
            "no error naming {id}:\n{log}"
        );
    }
    let health = server.cli_ok(&["healthcheck", "--verbose"]);
    assert!(health.contains("is retired"), "{health}");

    // An agent bootstrapped with the bundle the server hands out now is served
    // SVIDs that verify.
    let token = workload_token(&server, "after-restart");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);
}

fn hsm_server(dir: &Path, hsm: &SoftHsm, extra: &str) -> Server {
    Server::start_with_env(
        &dir.join("server"),
        &format!(
            "{extra}\n[key_manager]\ntype = \"pkcs11\"\n{}",
            hsm.section()
        ),
        &hsm.env(),
    )
}

/// The labels of the private keys in the token with `prefix`.
fn token_keys(hsm: &SoftHsm, prefix: &str) -> BTreeSet<String> {
    let o = hsm.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:").map(|v| v.trim().to_owned()))
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// Deletes a key's objects (private and public) from the token, as an operator's
/// mistake or a token clean-up would.
fn delete_key(hsm: &SoftHsm, label: &str) {
    for kind in ["privkey", "pubkey"] {
        let o = hsm.pkcs11_tool(&["--delete-object", "--type", kind, "--label", label]);
        assert!(
            o.status.success(),
            "deleting {kind} {label}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The CA and JWT keys are deleted from the token while the server runs: the first
/// signature that finds them gone gets its answer from a replacement, the event is
/// logged, the old authorities stay in the bundle, and the agent's workloads move to
/// SVIDs of the new CA that verify against the bundle the agent gets.
#[test]
fn ca_keys_deleted_from_the_token_while_running_are_replaced_at_once() {
    let dir = test_dir("hsm-key-gone");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let server = hsm_server(dir.path(), &hsm, "x509_svid_ttl = \"10s\"");
    let db = db_path(&server);
    let token = workload_token(&server, "hsm-key-gone");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let first_issuer = assert_served(&agent);
    let ca = token_keys(&hsm, "tessera-x509-ca-");
    let jwt = token_keys(&hsm, "tessera-jwt-key-");
    assert_eq!((ca.len(), jwt.len()), (1, 1));
    let ca_label = ca.into_iter().next().unwrap();
    let jwt_label = jwt.into_iter().next().unwrap();

    delete_key(&hsm, &ca_label);
    delete_key(&hsm, &jwt_label);
    // The very next signatures succeed, from new authorities.
    let issuer = mint_and_verify(&server, &dir.path().join("minted"));
    assert_ne!(issuer, first_issuer);
    jwt_validates(&server);
    let ca_id = ca_label.trim_start_matches("tessera-");
    let jwt_id = jwt_label.trim_start_matches("tessera-");
    let j = journal(&db);
    for id in [ca_id, jwt_id] {
        assert!(
            j.contains(&(id.to_owned(), "retired".to_owned())),
            "{id} not retired: {j:?}"
        );
    }
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("LOST ITS KEY") && l.contains(ca_id)),
        "{log}"
    );
    assert_eq!(
        token_keys(&hsm, "tessera-x509-ca-").len(),
        1,
        "one new CA key"
    );
    server.cli_ok(&["healthcheck"]);

    // The workload moves to the new CA, always with an SVID that verifies against
    // the bundle it is given.
    assert!(
        wait_until(Duration::from_secs(30), || assert_served(&agent)
            != first_issuer),
        "the workload never got an SVID of the new CA:\n{}",
        agent.log()
    );
    assert!(
        agent.cli(&["healthcheck"]).status.success(),
        "{}",
        agent.log()
    );
}

/// The CA key is deleted while the server is stopped: it starts, retires the
/// authority, logs it, and signs with a new CA; an agent bootstrapped with the
/// bundle it hands out is served.
#[test]
fn a_ca_key_deleted_while_stopped_is_replaced_at_start() {
    let dir = test_dir("hsm-key-gone-stopped");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let mut server = hsm_server(dir.path(), &hsm, "");
    let db = db_path(&server);
    let before = mint_and_verify(&server, &dir.path().join("before"));
    let ca_label = token_keys(&hsm, "tessera-x509-ca-")
        .into_iter()
        .next()
        .unwrap();
    server.stop();
    delete_key(&hsm, &ca_label);
    server.start_again();
    let after = mint_and_verify(&server, &dir.path().join("after"));
    assert_ne!(after, before);
    let ca_id = ca_label.trim_start_matches("tessera-");
    assert!(journal(&db).contains(&(ca_id.to_owned(), "retired".to_owned())));
    assert!(server.log().contains("LOST ITS KEY"), "{}", server.log());
    // The JWT key was not touched: it is still the active one.
    let j = journal(&db);
    assert_eq!(
        j.iter()
            .filter(|(id, s)| id.starts_with("jwt-key-") && s == "active")
            .count(),
        1,
        "{j:?}"
    );
    assert!(
        !j.iter()
            .any(|(id, s)| id.starts_with("jwt-key-") && s == "retired")
    );
    let token = workload_token(&server, "after-start");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);
}

/// With an upstream root the CA is an intermediate: a CA key lost while the server is
/// stopped costs agents nothing, because the replacement chains to the same root.
#[test]
fn with_an_upstream_root_a_lost_ca_key_is_invisible_to_agents() {
    let dir = test_dir("hsm-key-gone-upstream");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let root = make_root(
        dir.path(),
        "root",
        &["pathlen:1"],
        "keyCertSign,cRLSign",
        30,
    );
    let extra = format!(
        "x509_svid_ttl = \"10s\"\n[upstream_authority]\ntype = \"disk\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        root.0.display(),
        root.1.display()
    );
    let mut server = hsm_server(dir.path(), &hsm, &extra);
    let token = workload_token(&server, "upstream");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let first_issuer = assert_served(&agent);
    let bundle_before = roots(&server);
    let ca_label = token_keys(&hsm, "tessera-x509-ca-")
        .into_iter()
        .next()
        .unwrap();
    server.stop();
    delete_key(&hsm, &ca_label);
    server.start_again();
    assert_eq!(
        roots(&server),
        bundle_before,
        "the bundle is the root alone, unchanged"
    );
    assert!(server.log().contains("LOST ITS KEY"), "{}", server.log());
    mint_and_verify(&server, &dir.path().join("minted"));
    // The running agent reconnects (the server's new TLS certificate chains to the
    // same root) and its workload gets SVIDs of the new intermediate.
    assert!(
        wait_until(Duration::from_secs(60), || assert_served(&agent)
            != first_issuer),
        "the workload never got an SVID of the new CA:\n{}",
        agent.log()
    );
}

/// The HSM token goes away (its directory moved) while the server runs, and while it
/// is stopped: signing is Unavailable, nothing is retired or replaced, and the same
/// CA signs again once the token is back.
#[test]
fn an_unavailable_token_never_replaces_the_ca() {
    let dir = test_dir("hsm-outage");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    // A short CA lifetime makes rotation steps run every second during the outage.
    let mut server = hsm_server(
        dir.path(),
        &hsm,
        "ca_ttl = \"120s\"\nbundle_refresh_hint = \"5s\"",
    );
    let db = db_path(&server);
    let token = workload_token(&server, "outage");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);
    let issuer = mint_and_verify(&server, &dir.path().join("before"));
    let journal_before = journal(&db);
    let keys_before = token_keys(&hsm, "tessera-");

    let away = hsm.dir.join("tokens.away");
    std::fs::rename(hsm.tokens_dir(), &away).unwrap();
    let m = server.cli(&["x509", "mint", "--spiffe-id", "spiffe://example.org/x"]);
    assert!(!m.status.success());
    let err = String::from_utf8_lossy(&m.stderr);
    assert!(err.contains("Unavailable"), "{err}");
    let j = server.cli(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/x",
        "--audience",
        "a",
    ]);
    assert!(String::from_utf8_lossy(&j.stderr).contains("Unavailable"));
    // Several rotation steps pass during the outage.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        journal(&db),
        journal_before,
        "the outage changed the CA journal"
    );
    assert!(!server.log().contains("LOST ITS KEY"), "{}", server.log());
    // The workload keeps what it has meanwhile.
    assert_served(&agent);

    std::fs::rename(&away, hsm.tokens_dir()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || server
            .cli(&["healthcheck"])
            .status
            .success()),
        "{}",
        server.log()
    );
    assert_eq!(mint_and_verify(&server, &dir.path().join("after")), issuer);
    assert_eq!(token_keys(&hsm, "tessera-"), keys_before);

    // Gone at start: the server refuses to start, and changes nothing.
    server.stop();
    std::fs::rename(hsm.tokens_dir(), &away).unwrap();
    let status = server
        .try_start(Duration::from_secs(20))
        .expect("the server ran without its token");
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains("token") && log.contains("key manager"),
        "{log}"
    );
    assert_eq!(journal(&db), journal_before);
    std::fs::rename(&away, hsm.tokens_dir()).unwrap();
    server.stop();
    server.start_again();
    assert_eq!(mint_and_verify(&server, &dir.path().join("again")), issuer);
    assert_eq!(journal(&db), journal_before);
    assert!(!server.log().contains("LOST ITS KEY"), "{}", server.log());
}

// ---- upstream roots ----

/// Makes a root with OpenSSL: (certificate, key) files. `bc` are extra
/// basicConstraints terms, `ku` the key usages; valid for `days`.
fn make_root(dir: &Path, name: &str, bc: &[&str], ku: &str, days: u32) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let mut basic = vec!["critical", "CA:TRUE"];
    basic.extend(bc);
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", &days.to_string()])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-addext", &format!("basicConstraints={}", basic.join(","))])
            .args(["-addext", &format!("keyUsage=critical,{ku}")])
            .args(["-addext", "subjectAltName=URI:spiffe://example.org"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

/// Starts a server with a disk upstream root; returns it with its exit status if it
/// stopped within 20 s (it refused).
fn with_upstream(
    dir: &Path,
    name: &str,
    root: &(PathBuf, PathBuf),
    extra: &str,
) -> (Server, Option<std::process::ExitStatus>) {
    let mut server = Server::configure(
        &dir.join(name),
        &format!(
            "{extra}\n[upstream_authority]\ntype = \"disk\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            root.0.display(),
            root.1.display()
        ),
    );
    let status = server.try_start(Duration::from_secs(20));
    (server, status)
}

/// Upstream roots that cannot serve are refused at start, each with a message that
/// says what is wrong; nothing is written to the journal. A good root serves chains
/// that OpenSSL verifies; a short-lived one is accepted with an error in the log and
/// a line in the health check.
#[test]
fn upstream_roots_that_cannot_serve_are_refused_at_start() {
    let dir = test_dir("upstream-checks");
    let d = dir.path();
    let good = make_root(d, "good", &[], "keyCertSign,cRLSign", 30);
    let other = make_root(d, "other", &[], "keyCertSign,cRLSign", 30);
    let expired = {
        // OpenSSL 3.0 cannot backdate; rcgen can.
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org".try_into().unwrap(),
        )];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = p.self_signed(&kp).unwrap();
        let c = d.join("expired.pem");
        let k = d.join("expired.key");
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, kp.serialize_pem()).unwrap();
        (c, k)
    };
    let cases = [
        (
            "pathlen0",
            make_root(d, "pathlen0", &["pathlen:0"], "keyCertSign,cRLSign", 30),
            "has pathLenConstraint 0: it cannot sign an intermediate CA",
        ),
        (
            "no-certsign",
            make_root(d, "nocertsign", &[], "digitalSignature,cRLSign", 30),
            "has no keyCertSign key usage",
        ),
        ("expired", expired, "expired on"),
        (
            "mismatch",
            (good.0.clone(), other.1.clone()),
            "the upstream root key does not match the upstream root certificate",
        ),
    ];
    for (name, root, want) in cases {
        let (server, status) = with_upstream(d, name, &root, "");
        let status =
            status.unwrap_or_else(|| panic!("{name}: the server started:\n{}", server.log()));
        assert!(!status.success(), "{name}");
        let log = server.log();
        assert!(log.contains(want), "{name}: expected {want:?} in:\n{log}");
        assert!(
            log.contains(&root.0.display().to_string()),
            "{name}: root not named:\n{log}"
        );
        let db = d.join(name).join("data").join("datastore.sqlite3");
        if db.exists() {
            assert_eq!(
                sqlite(&db, "SELECT count(*) FROM ca_records"),
                "0",
                "{name}"
            );
        }
    }

    // A good root: chains verify with OpenSSL.
    let (server, status) = with_upstream(d, "good", &good, "");
    assert!(status.is_none(), "{}", server.log());
    assert!(wait_until(Duration::from_secs(20), || server
        .cli(&["healthcheck"])
        .status
        .success()));
    mint_and_verify(&server, &d.join("good-mint"));
    drop(server);

    // A root valid for less than ca_ttl: accepted, said loudly.
    let short = make_root(d, "short", &[], "keyCertSign,cRLSign", 1);
    let (server, status) = with_upstream(
        d,
        "short",
        &short,
        "ca_ttl = \"48h\"\nx509_svid_ttl = \"1h\"",
    );
    assert!(status.is_none(), "{}", server.log());
    assert!(wait_until(Duration::from_secs(20), || server
        .cli(&["healthcheck"])
        .status
        .success()));
    let log = server.log();
    assert!(log.contains("sooner than a full CA lifetime"), "{log}");
    let health = server.cli_ok(&["healthcheck", "--verbose"]);
    assert!(health.contains("upstream root expires"), "{health}");
    mint_and_verify(&server, &d.join("short-mint"));
}

// ---- kill -9 of the server ----

/// The entry IDs the server lists, through the CLI.
fn cli_entry_ids(server: &Server) -> BTreeSet<String> {
    let out = server.cli_ok(&["entry", "show", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Creates entries from several concurrent admin clients and kills the server with
/// SIGKILL while they run; returns the IDs of the entries whose creation was
/// acknowledged (answered with the stored entry) before the kill.
fn write_storm_then_kill(server: &Server, label: &str) -> BTreeSet<String> {
    let admin = server.admin.clone();
    let pid = server.pid().unwrap();
    let label = label.to_owned();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acked = rt().block_on(async move {
        let mut tasks = Vec::new();
        for t in 0..6 {
            let admin = admin.clone();
            let label = label.clone();
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(ch) = tessera_proto::unix_channel(&admin).await else {
                    return acked;
                };
                let mut c = tessera_proto::admin::admin_client::AdminClient::new(ch);
                for i in 0.. {
                    let entry = tessera_proto::types::Entry {
                        spiffe_id: format!("spiffe://example.org/{label}/{t}/{i}"),
                        parent_id: "spiffe://example.org/node".into(),
                        selectors: vec![format!("unix:uid:{}", 10_000 + i)],
                        ..Default::default()
                    };
                    match c
                        .create_entry(tessera_proto::admin::CreateEntryRequest {
                            entry: Some(entry),
                        })
                        .await
                    {
                        Ok(r) => {
                            acked.push(r.into_inner().id);
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => return acked,
                    }
                }
                acked
            }));
        }
        // Kill once the writers are well under way, however fast the machine is.
        let start = Instant::now();
        while count.load(std::sync::atomic::Ordering::SeqCst) < 200
            && start.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        faults::signal(pid, "KILL");
        let mut all = BTreeSet::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert!(!acked.is_empty(), "nothing was written before the kill");
    acked
}

/// kill -9 in the middle of entry writes on SQLite: every acknowledged write is there
/// after the restart (through the CLI and in the file), and the file is consistent.
#[test]
fn kill_9_during_entry_writes_loses_no_acknowledged_entry_on_sqlite() {
    let dir = test_dir("kill9-writes");
    let mut server = Server::start(&dir.path().join("server"), "");
    let acked = write_storm_then_kill(&server, "w");
    server.stop();
    server.start_again();
    let listed = cli_entry_ids(&server);
    let db = db_path(&server);
    let in_file: BTreeSet<String> = sqlite(&db, "SELECT id FROM entries")
        .lines()
        .map(str::to_owned)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !listed.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged entries lost: {lost:?}");
    assert!(acked.is_subset(&in_file));
    assert_eq!(listed, in_file, "the server and the file disagree");
    // Nothing half-written: every entry has its selector and its change event.
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM entries e WHERE NOT EXISTS \
             (SELECT 1 FROM entry_selectors s WHERE s.entry_id = e.id) \
             OR NOT EXISTS (SELECT 1 FROM entry_events v WHERE v.id = e.revision)"
        ),
        "0"
    );
    eprintln!(
        "{} entries acknowledged before the kill, {} stored",
        acked.len(),
        in_file.len()
    );
}

/// kill -9 while agents renew their SVIDs (every few seconds here), three times: each
/// agent recovers by itself, holds an SVID the server accepts, and keeps renewing.
#[test]
fn kill_9_during_renewals_agents_recover_by_themselves() {
    let dir = test_dir("kill9-renewals");
    let mut server = Server::start(
        &dir.path().join("server"),
        "agent_svid_ttl = \"6s\"\nx509_svid_ttl = \"8s\"",
    );
    let agents: Vec<Agent> = (0..3)
        .map(|i| {
            let token = workload_token(&server, &format!("renew{i}"));
            Agent::start(
                &dir.path().join(format!("agent{i}")),
                &server,
                Some(&token),
                "",
            )
        })
        .collect();
    let db = db_path(&server);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500 + 700 * round));
        faults::signal(server.pid().unwrap(), "KILL");
        server.stop();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again();
    }
    for a in &agents {
        let before = serial_of(&agent_identity(a).0);
        // It renews again after the last crash, and the server accepts what it holds.
        assert!(
            wait_until(Duration::from_secs(30), || serial_of(&agent_identity(a).0)
                != before),
            "agent {} stopped renewing:\n{}",
            a.spiffe_id(),
            a.log()
        );
        assert!(a.cli(&["healthcheck"]).status.success(), "{}", a.log());
        assert_served(a);
        let held = serial_of(&agent_identity(a).0);
        let (proven, pending) = node_serials(&db, &a.spiffe_id());
        assert!(
            held == proven || held == pending,
            "the agent holds {held}, the server accepts {proven} and {pending:?}"
        );
        rt().block_on(sync_as(
            &server.address(),
            roots(&server),
            agent_identity(a),
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", a.spiffe_id()));
    }
}

/// kill -9 while agents attest: every attestation the server answered survives the
/// crash; an attestation that failed either finds its token unused (and succeeds on
/// retry) or was answered into the void after the token was used: a one-time join
/// token cannot be used twice, and the refusal says so.
#[test]
fn kill_9_during_attestations_keeps_every_answered_attestation() {
    let dir = test_dir("kill9-attest");
    let mut server = Server::start(&dir.path().join("server"), "");
    let tokens: Vec<String> = (0..60).map(|_| server.token(None, None)).collect();
    let addr = server.address();
    let r = roots(&server);
    let pid = server.pid().unwrap();
    let answered_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = rt().block_on(async {
        let mut tasks = Vec::new();
        for (i, t) in tokens.iter().cloned().enumerate() {
            let (addr, r) = (addr.clone(), r.clone());
            let answered = answered_so_far.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                let result = attest_with_join_token(&addr, r, &t).await;
                if result.is_ok() {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (t.clone(), result)
            }));
        }
        // Kill once a good part of the attestations are through, with more in flight.
        let start = Instant::now();
        while answered_so_far.load(std::sync::atomic::Ordering::SeqCst) < 15
            && start.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        faults::signal(pid, "KILL");
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    server.stop();
    server.start_again();
    let db = db_path(&server);
    let (mut answered, mut retried, mut spent) = (0, 0, 0);
    for (token, result) in results {
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        match result {
            Ok(identity) => {
                answered += 1;
                assert_eq!(node_serials(&db, &agent_id).0, serial_of(&identity.0));
                rt().block_on(sync_as(&server.address(), roots(&server), identity))
                    .unwrap_or_else(|e| panic!("an answered attestation was lost: {e}"));
            }
            Err(_) => {
                let unused = sqlite(
                    &db,
                    &format!("SELECT count(*) FROM join_tokens WHERE token = '{token}'"),
                ) == "1";
                let again = rt().block_on(attest_with_join_token(
                    &server.address(),
                    roots(&server),
                    &token,
                ));
                if unused {
                    retried += 1;
                    again.unwrap_or_else(|e| panic!("an unused token was refused: {e}"));
                } else {
                    spent += 1;
                    let e = again.unwrap_err();
                    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
                    assert!(e.message().contains("already been used"), "{e}");
                }
            }
        }
    }
    eprintln!(
        "{answered} attestations answered before the kill, {retried} retried with their unused token, {spent} lost with their token used"
    );
    assert!(
        answered > 0 && answered < 60,
        "the kill did not land during the attestations"
    );
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
}

// ---- PostgreSQL ----

/// The server on a private PostgreSQL cluster: kill -9 of the server during writes,
/// then the database stopped and crashed under the running server. While the
/// database is away, calls that need it fail with a clear Unavailable and the
/// workload keeps its SVID; once it is back the server recovers by itself, and every
/// acknowledged write is in the database.
#[test]
fn postgres_stopped_and_crashed_under_the_server() {
    let dir = test_dir("pg-faults");
    // The cluster's directory must be reachable by the postgres user when the tests
    // run as root, which a private temporary directory is not.
    let pgdir = std::env::temp_dir().join(format!("tessera-pgfault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pgdir);
    let cluster = PgCluster::start(&pgdir);
    cluster.create_db("faults");
    let mut server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[datastore]\ntype = \"postgres\"\nconnection_string = \"{}\"\n",
            cluster.connection_string("faults")
        ),
    );
    let token = workload_token(&server, "pg");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);

    // kill -9 of the server in the middle of writes.
    let acked = write_storm_then_kill(&server, "pg");
    server.stop();
    server.start_again();
    let in_db: BTreeSet<String> = cluster
        .psql("faults", "SELECT id FROM entries")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        acked.is_subset(&in_db),
        "acknowledged entries lost on PostgreSQL"
    );
    assert_eq!(cli_entry_ids(&server), in_db);

    let create = |name: &str| {
        server.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/{name}"),
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:4242",
        ])
    };
    for (fault, break_it) in [
        (
            "stopped",
            Box::new(|c: &PgCluster| c.stop()) as Box<dyn Fn(&PgCluster)>,
        ),
        ("crashed", Box::new(|c: &PgCluster| c.crash())),
    ] {
        break_it(&cluster);
        let o = create(&format!("during-{fault}"));
        assert!(
            !o.status.success(),
            "{fault}: a write succeeded without the database"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("Unavailable") && err.contains("datastore unavailable"),
            "{fault}: {err}"
        );
        let h = server.cli(&["healthcheck", "--verbose"]);
        assert!(!h.status.success(), "{fault}: healthy without its database");
        // The workload keeps a valid SVID meanwhile.
        assert_served(&agent);
        cluster.restart();
        assert!(
            wait_until(Duration::from_secs(30), || server
                .cli(&["healthcheck"])
                .status
                .success()),
            "{fault}: the server did not recover by itself:\n{}",
            server.log()
        );
        let o = create(&format!("after-{fault}"));
        assert!(
            o.status.success(),
            "{fault}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            cluster.psql(
                "faults",
                &format!(
                    "SELECT count(*) FROM entries WHERE spiffe_id = 'spiffe://example.org/after-{fault}'"
                )
            ),
            "1"
        );
        assert_eq!(
            cluster.psql(
                "faults",
                &format!(
                    "SELECT count(*) FROM entries WHERE spiffe_id = 'spiffe://example.org/during-{fault}'"
                )
            ),
            "0",
            "{fault}: a refused write is in the database"
        );
    }
    // The agent's syncs failed while the database was away; it catches up by itself
    // (after its back-off).
    assert!(
        wait_until(Duration::from_secs(90), || agent
            .cli(&["healthcheck"])
            .status
            .success()),
        "{}",
        agent.log()
    );
    assert_served(&agent);
    drop(agent);
    drop(server);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&pgdir);
}

// ---- the disk ----

/// The data directory on a small tmpfs that fills up: writes fail with a clear
/// Unavailable saying the disk is full, the server and its workloads carry on, and
/// once space is freed writes work again with nothing lost or half-written.
#[test]
fn a_full_disk_fails_writes_clearly_and_recovers() {
    if !faults::can_mount() {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root (CAP_SYS_ADMIN); the disk-full case did not run"
        );
        return;
    }
    let dir = test_dir("disk-full");
    let server_dir = dir.path().join("server");
    let disk = SmallDisk::mount(&server_dir.join("data"), "4m");
    let server = Server::start(&server_dir, "");
    let token = workload_token(&server, "disk");
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert_served(&agent);
    let create = |name: &str| {
        server.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/{name}"),
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:4242",
        ])
    };
    assert!(create("before").status.success());
    let ballast = disk.fill();
    let mut refused = None;
    // The WAL may have room for a few small commits left; the disk fills for good.
    for i in 0..200 {
        let o = create(&format!("full-{i}"));
        if !o.status.success() {
            refused = Some(String::from_utf8_lossy(&o.stderr).into_owned());
            break;
        }
    }
    let err = refused.expect("writes kept succeeding on a full disk");
    assert!(err.contains("Unavailable") && err.contains("full"), "{err}");
    // Reads, signing and workloads carry on.
    server.cli_ok(&["entry", "show"]);
    server.cli_ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/while-full",
    ]);
    assert_served(&agent);

    std::fs::remove_file(&ballast).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || create("after").status.success()),
        "writes did not resume after space was freed:\n{}",
        server.log()
    );
    let ids = server.cli_ok(&["entry", "show", "--output", "json"]);
    assert!(ids.contains("spiffe://example.org/before"));
    assert!(ids.contains("spiffe://example.org/after"));
    let db = db_path(&server);
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    drop(agent);
    drop(server);
    drop(disk);
}

/// A page of the database damaged while the server was stopped: the server refuses
/// to start and says what is wrong and what to do; the backup copy starts fine.
#[test]
fn a_damaged_database_page_is_refused_at_start() {
    let dir = test_dir("corrupt-page");
    let mut server = Server::start(&dir.path().join("server"), "");
    for i in 0..300 {
        server.entry(
            &format!("spiffe://example.org/c{i}"),
            "spiffe://example.org/node",
            &[&format!("unix:uid:{i}")],
            &[],
        );
    }
    server.stop();
    let db = db_path(&server);
    let backup = dir.path().join("backup.sqlite3");
    std::fs::copy(&db, &backup).unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    let middle = bytes.len() / page / 2 * page;
    for b in &mut bytes[middle + 8..middle + page] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let status = server
        .try_start(Duration::from_secs(20))
        .expect("the server started on a damaged database");
    assert!(!status.success());
    let log = server.log();
    assert!(log.contains("is damaged"), "{log}");
    assert!(log.contains("restore the database from a backup"), "{log}");
    std::fs::copy(&backup, &db).unwrap();
    server.stop();
    server.start_again();
    assert_eq!(cli_entry_ids(&server).len(), 300);
}
