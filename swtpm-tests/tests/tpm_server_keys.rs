//! The server's CA and JWT keys in a TPM (`[key_manager] type = "tpm"`), end to end
//! on swtpm: SVIDs and JWT-SVIDs signed through the TPM verify with the bundle, the
//! key blobs load again after a server restart and after the TPM restarts, a TPM that
//! is away stops signing (and the start) without replacing the CA, a blob from
//! another TPM is a lost key (retired, with a log line, and replaced), and rotation
//! destroys an expired authority's blob.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{
    Agent, Server, Swtpm, assert_continuous, my_uid, repo_root, test_dir, wait_until, watch_x509,
};

const WORKLOAD: &str = "spiffe://example.org/workload";

fn tpm_section(tpm: &Swtpm) -> String {
    format!("[key_manager]\ntype = \"tpm\"\ntcti = \"{}\"\n", tpm.tcti)
}

fn workload(server: &Server) -> String {
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        WORKLOAD,
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    token
}

/// The key files in the server's key directory.
fn key_files(server: &Server) -> BTreeSet<String> {
    std::fs::read_dir(server.dir.join("data").join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn swtpm(tpm: &Swtpm, verb: &str) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join("swtpm.sh"))
        .arg(verb)
        .arg(&tpm.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swtpm.sh {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bundle(server: &Server) -> tessera_core::Bundle {
    let roots =
        tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes()).unwrap();
    tessera_core::Bundle::with_x509(
        tessera_core::TrustDomain::new("example.org").unwrap(),
        roots,
    )
}

/// `x509 mint` through the admin API; the chain it wrote, or the CLI's error.
fn mint(server: &Server, out: &Path, name: &str) -> Result<Vec<Vec<u8>>, String> {
    let id = format!("spiffe://example.org/{name}");
    let dir = out.join(name);
    let o = server.cli(&[
        "x509",
        "mint",
        "--spiffe-id",
        &id,
        "--write",
        dir.to_str().unwrap(),
    ]);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(tessera_core::x509::pem_certs(&std::fs::read(dir.join("svid.pem")).unwrap()).unwrap())
}

fn verifies(chain: &[Vec<u8>], bundle: &tessera_core::Bundle, name: &str) {
    let id = tessera_core::x509::verify_svid_chain(chain, bundle, std::time::SystemTime::now())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(id.to_string(), format!("spiffe://example.org/{name}"));
}

#[test]
fn ca_keys_in_the_tpm_sign_svids_and_survive_server_and_tpm_restarts() {
    let dir = test_dir("tpm-server-keys");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let mut server = Server::start(&dir.path().join("server"), &tpm_section(&tpm));
    let token = workload(&server);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");

    // Only TPM blobs on disk: one for the CA, one for the JWT key.
    let files = key_files(&server);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".tpmkey")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("x509-ca-")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("jwt-key-")), "{files:?}");

    // An X509-SVID and a JWT-SVID signed in the TPM, verified by the spiffe crate
    // with the bundles the agent serves, and the chain with the server's bundle.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (chain, jwt, jwt_bundles) = rt.block_on(async {
        let c = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
            .await
            .unwrap();
        let svid = c.fetch_x509_svid().await.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), WORKLOAD);
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let jwt = c.fetch_jwt_token(&["db"], None).await.unwrap();
        (chain, jwt, c.fetch_jwt_bundles().await.unwrap())
    });
    let first_bundle = bundle(&server);
    tessera_core::x509::verify_svid_chain(&chain, &first_bundle, std::time::SystemTime::now())
        .unwrap();
    let parsed = spiffe::JwtSvid::parse_and_validate(&jwt, &jwt_bundles, &["db"]).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), WORKLOAD);

    // The server restarts: the blobs load again, the same CA and JWT key sign.
    let jwks_before = server.cli_ok(&["bundle", "show", "--format", "jwks"]);
    server.restart();
    assert_eq!(key_files(&server), files, "a restart made or lost keys");
    assert_eq!(
        server.cli_ok(&["bundle", "show", "--format", "jwks"]),
        jwks_before,
        "the bundle changed across a restart:\n{}",
        server.log()
    );
    assert!(!server.log().contains("LOST ITS KEY"), "{}", server.log());
    let out = dir.path().join("minted");
    verifies(
        &mint(&server, &out, "after-restart").unwrap(),
        &first_bundle,
        "after-restart",
    );

    // The TPM restarts under the running server (its loaded objects are gone): the
    // next signature reconnects and loads the blob again.
    swtpm(&tpm, "restart");
    let mut last = Err(String::new());
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = mint(&server, &out, "after-tpm-restart");
            last.is_ok()
        }),
        "no signature after the TPM restarted: {last:?}\n{}",
        server.log()
    );
    verifies(&last.unwrap(), &first_bundle, "after-tpm-restart");

    // The TPM away: signatures fail, the CA is not replaced; back: it signs again.
    swtpm(&tpm, "stop");
    let refused = mint(&server, &out, "tpm-away").unwrap_err();
    assert!(!refused.is_empty());
    let h = server.cli(&["healthcheck"]);
    assert!(!h.status.success(), "healthy without its TPM");
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("unavailable"),
        "{}",
        String::from_utf8_lossy(&h.stderr)
    );
    swtpm(&tpm, "start");
    assert!(
        wait_until(Duration::from_secs(30), || mint(&server, &out, "tpm-back")
            .is_ok()),
        "no signature after the TPM came back:\n{}",
        server.log()
    );
    assert_eq!(key_files(&server), files, "the outage made or lost keys");
    assert_eq!(
        server.cli_ok(&["bundle", "show", "--format", "jwks"]),
        jwks_before,
        "the outage replaced an authority:\n{}",
        server.log()
    );

    // A server that cannot reach its TPM does not start, and replaces nothing.
    server.stop();
    swtpm(&tpm, "stop");
    let status = server.try_start(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if !s.success()),
        "the server started without its TPM: {status:?}\n{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("key manager tpm: cannot open the TPM at"),
        "{}",
        server.log()
    );
    swtpm(&tpm, "start");
    server.start_again();
    assert_eq!(key_files(&server), files);
    assert_eq!(
        server.cli_ok(&["bundle", "show", "--format", "jwks"]),
        jwks_before
    );
}

#[test]
fn a_blob_from_another_tpm_is_a_lost_key_and_is_replaced() {
    let dir = test_dir("tpm-server-foreign");
    let tpm_a = Swtpm::start(&dir.path().join("tpm-a"));
    let tpm_b = Swtpm::start(&dir.path().join("tpm-b"));
    let mut server = Server::start(&dir.path().join("server"), &tpm_section(&tpm_a));
    let out = dir.path().join("minted");
    let old_bundle = bundle(&server);
    let before = mint(&server, &out, "before").unwrap();
    let files = key_files(&server);
    server.stop();

    // The same data directory, another TPM: A's blobs do not load in B.
    let config = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(&server.config, config.replace(&tpm_a.tcti, &tpm_b.tcti)).unwrap();
    server.start_again();
    let log = server.log();
    let lost: Vec<&str> = log.lines().filter(|l| l.contains("LOST ITS KEY")).collect();
    assert_eq!(lost.len(), 2, "the CA and the JWT key must be lost:\n{log}");
    assert!(
        lost.iter()
            .all(|l| l.contains("key blob does not belong to this TPM")),
        "{log}"
    );
    // New keys in B beside A's blobs (kept until their authorities expire).
    let now = key_files(&server);
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(files.is_subset(&now), "{files:?} {now:?}");
    // The old root stays published (what it signed stays valid); the new one signs.
    let new_bundle = bundle(&server);
    assert_eq!(new_bundle.x509_authorities().len(), 2);
    verifies(&before, &new_bundle, "before");
    let after = mint(&server, &out, "after").unwrap();
    verifies(&after, &new_bundle, "after");
    assert!(
        tessera_core::x509::verify_svid_chain(&after, &old_bundle, std::time::SystemTime::now())
            .is_err(),
        "the replacement is signed by the lost CA"
    );
}

#[test]
fn rotation_in_the_tpm_keeps_workloads_valid_and_removes_the_expired_blob() {
    let dir = test_dir("tpm-server-rotation");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let start = Instant::now();
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "ca_ttl = \"36s\"\nbundle_refresh_hint = \"1s\"\nx509_svid_ttl = \"4s\"\njwt_svid_ttl = \"4s\"\n{}",
            tpm_section(&tpm)
        ),
    );
    let token = workload(&server);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "sync_interval = \"300ms\"",
    );
    let ca_blobs = || -> BTreeSet<String> {
        key_files(&server)
            .into_iter()
            .filter(|f| f.starts_with("x509-ca-"))
            .collect()
    };
    let first = ca_blobs();
    assert_eq!(first.len(), 1, "{first:?}");
    let until = (start + Duration::from_secs(35)).saturating_duration_since(Instant::now());
    let updates = watch_x509(&agent, until);
    assert_continuous(&updates);
    let issuers: BTreeSet<&str> = updates.iter().map(|u| u.issuer.as_str()).collect();
    assert!(
        issuers.len() >= 2,
        "no rotation seen: {issuers:?}\n{}",
        server.log()
    );
    let first: PathBuf = first.into_iter().next().unwrap().into();
    assert!(
        wait_until(Duration::from_secs(15), || !ca_blobs()
            .contains(first.to_str().unwrap())),
        "the expired CA's blob was never removed:\n{}",
        server.log()
    );
    assert_continuous(&watch_x509(&agent, Duration::from_secs(4)));
}
