//! The CA key in an HSM, end to end on SoftHSM2: keys made inside the token and never
//! extractable, SVIDs and JWT-SVIDs signed through it and accepted by stock clients,
//! an upstream root in the token, restart, rotation with key destruction, and token
//! faults with recovery without a restart.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{
    Agent, Server, SoftHsm, assert_continuous, my_uid, openssl_verify, py_ok, test_dir, wait_until,
    watch_x509,
};

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

fn workload(server: &Server) -> String {
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    token
}

/// The labels of the private keys in the token.
fn private_key_labels(hsm: &SoftHsm) -> BTreeSet<String> {
    let o = hsm.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:").map(|v| v.trim().to_owned()))
        .collect()
}

#[test]
fn ca_keys_live_in_the_hsm_and_what_they_sign_verifies() {
    let dir = test_dir("hsm-basic");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let server = hsm_server(dir.path(), &hsm, "");
    let token = workload(&server);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");

    // The CA and JWT keys are in the token, sensitive and never extractable.
    let listing = hsm.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    let labels = private_key_labels(&hsm);
    let ca_label = labels
        .iter()
        .find(|l| l.starts_with("tessera-x509-ca-"))
        .cloned()
        .unwrap_or_else(|| panic!("no CA key:\n{text}"));
    assert!(
        labels.iter().any(|l| l.starts_with("tessera-jwt-key-")),
        "{text}"
    );
    for block in text.split("Private Key Object").skip(1) {
        assert!(
            block.contains("sensitive, always sensitive, never extractable"),
            "a key is not protected:\n{block}"
        );
        assert!(
            !block.contains("decrypt") && !block.contains("unwrap"),
            "{block}"
        );
    }
    // Raw PKCS#11 agrees, and C_GetAttributeValue(CKA_VALUE) is refused.
    for label in labels.iter().filter(|l| l.starts_with("tessera-")) {
        let probe = std::process::Command::new(tessera_swtpm_tests::bin("p11-probe"))
            .arg(&hsm.module)
            .arg(&hsm.label)
            .arg(&hsm.pin_file)
            .arg(label)
            .env("SOFTHSM2_CONF", &hsm.conf)
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let p: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
        for (k, want) in [
            ("sensitive", true),
            ("always_sensitive", true),
            ("never_extractable", true),
            ("extractable", false),
            ("decrypt", false),
            ("unwrap", false),
            ("sign", true),
            ("token", true),
            ("value_readable", false),
        ] {
            assert_eq!(p[k], want, "{label}: {k} in {p}");
        }
        assert!(
            p["value_info"].as_str().unwrap_or("").contains("Sensitive"),
            "{label}: {p}"
        );
    }
    let _ = &ca_label;

    // SVIDs signed through the HSM: py-spiffe, OpenSSL and the spiffe crate accept them.
    let out = dir.path().join("py");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["spiffe_id"], "spiffe://example.org/workload");
    let v = openssl_verify(&out.join("bundle.pem"), &out.join("chain.pem"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bundles = rt.block_on(async {
        let c = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
            .await
            .unwrap();
        let svid = c.fetch_x509_svid().await.unwrap();
        assert_eq!(
            svid.spiffe_id().to_string(),
            "spiffe://example.org/workload"
        );
        c.fetch_jwt_bundles().await.unwrap()
    });
    // A JWT-SVID signed in the token validates in the spiffe crate and in the agent.
    let token = py_ok(&agent, "workload.py", &["jwt", "db"])
        .trim()
        .to_owned();
    let jwt = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["db"]).unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/workload");
    let validated = agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "db",
        "--svid",
        &token,
    ]);
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // Many concurrent signatures through the token: every one valid.
    let bundle_pem = server.bundle_pem();
    let roots = tessera_core::x509::pem_certs(&std::fs::read(&bundle_pem).unwrap()).unwrap();
    let bundle = tessera_core::Bundle::with_x509(
        tessera_core::TrustDomain::new("example.org").unwrap(),
        roots,
    );
    let admin = server.admin.clone();
    let chains = rt.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..48 {
            let admin = admin.clone();
            tasks.push(tokio::spawn(async move {
                let ch = tessera_proto::unix_channel(&admin).await.unwrap();
                let mut c = tessera_proto::admin::admin_client::AdminClient::new(ch);
                let key: std::sync::Arc<dyn tessera_core::key::Key> = std::sync::Arc::new(
                    tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256)
                        .unwrap(),
                );
                let csr = tessera_core::x509::build_csr(&key).unwrap();
                c.mint_x509_svid(tessera_proto::admin::MintX509SvidRequest {
                    spiffe_id: format!("spiffe://example.org/parallel/{i}"),
                    csr,
                    ttl_seconds: 60,
                    dns_names: vec![],
                })
                .await
                .unwrap()
                .into_inner()
                .cert_chain
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(chains.len(), 48);
    for (i, chain) in chains.iter().enumerate() {
        let id =
            tessera_core::x509::verify_svid_chain(chain, &bundle, std::time::SystemTime::now())
                .unwrap();
        assert_eq!(id.to_string(), format!("spiffe://example.org/parallel/{i}"));
    }
}

#[test]
fn upstream_root_in_the_hsm_signs_the_intermediate_and_restart_keeps_everything() {
    let dir = test_dir("hsm-upstream");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let section = hsm.section();
    let extra =
        format!("[upstream_authority]\ntype = \"pkcs11\"\n[upstream_authority.pkcs11]\n{section}");
    // `ca init` before the first start makes the root key in the token.
    let config = dir.path().join("init.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\n{extra}\n",
            dir.path().join("server").join("data").display()
        ),
    )
    .unwrap();
    let init = std::process::Command::new(tessera_swtpm_tests::bin("tessera-server"))
        .args(["ca", "init", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // A second init refuses to replace the root.
    let again = std::process::Command::new(tessera_swtpm_tests::bin("tessera-server"))
        .args(["ca", "init", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"));
    assert!(private_key_labels(&hsm).contains("tessera-upstream-root"));

    let mut server = hsm_server(dir.path(), &hsm, &extra);
    let token = workload(&server);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");

    // The bundle holds the root; the SVID chain carries the intermediate.
    let bundle_pem = std::fs::read_to_string(server.bundle_pem()).unwrap();
    let roots = tessera_core::x509::pem_certs(bundle_pem.as_bytes()).unwrap();
    assert_eq!(roots.len(), 1);
    assert!(
        tessera_core::x509::cert_info(&roots[0])
            .unwrap()
            .subject
            .contains("Tessera root CA")
    );
    let out = dir.path().join("py");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["chain_len"], 2, "{facts}");
    let chain = std::fs::read_to_string(out.join("chain.pem")).unwrap();
    let inter_start = chain.match_indices("-----BEGIN").nth(1).unwrap().0;
    std::fs::write(out.join("inter.pem"), &chain[inter_start..]).unwrap();
    let v = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("bundle.pem"))
        .arg("-untrusted")
        .arg(out.join("inter.pem"))
        .arg(out.join("chain.pem"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // Restart: the same keys, the same CA, the same bundle; the agent keeps going.
    let keys_before = private_key_labels(&hsm);
    let jwks_before = server.cli_ok(&["bundle", "show", "--format", "jwks"]);
    server.restart();
    assert_eq!(
        private_key_labels(&hsm),
        keys_before,
        "a restart made or lost keys"
    );
    assert_eq!(
        server.cli_ok(&["bundle", "show", "--format", "jwks"]),
        jwks_before,
        "the bundle changed across a restart"
    );
    assert!(
        !server.log().contains("X.509 CA created"),
        "{}",
        server.log()
    );
    let out2 = dir.path().join("after");
    let m = server.cli(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/after-restart",
        "--write",
        out2.to_str().unwrap(),
    ]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    // The agent, with the bundle it had, verifies SVIDs from the restarted server.
    let v = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("bundle.pem"))
        .arg("-untrusted")
        .arg(out2.join("svid.pem"))
        .arg(out2.join("svid.pem"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(
        agent.cli(&["api", "fetch", "x509"]).status.success(),
        "{}",
        agent.log()
    );
}

#[test]
fn token_faults_make_the_server_unready_and_it_recovers_by_itself() {
    let dir = test_dir("hsm-fault");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let server = hsm_server(dir.path(), &hsm, "");
    let token = workload(&server);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(wait_until(Duration::from_secs(20), || agent
        .cli(&["api", "fetch", "x509"])
        .status
        .success()));

    // The token disappears.
    let away = hsm.dir.join("tokens.away");
    std::fs::rename(hsm.tokens_dir(), &away).unwrap();
    let h = server.cli(&["healthcheck"]);
    assert!(!h.status.success(), "healthy without its token");
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("unavailable"),
        "{}",
        String::from_utf8_lossy(&h.stderr)
    );
    // What needs no signature keeps working.
    server.cli_ok(&["entry", "show"]);
    server.entry(
        "spiffe://example.org/during-outage",
        "spiffe://example.org/node",
        &["unix:uid:4242"],
        &[],
    );
    server.cli_ok(&["bundle", "show"]);
    // Signing answers Unavailable, and the cause is in the log.
    let m = server.cli(&["x509", "mint", "--spiffe-id", "spiffe://example.org/x"]);
    assert!(!m.status.success());
    let err = String::from_utf8_lossy(&m.stderr);
    assert!(err.contains("Unavailable"), "{err}");
    assert!(
        server.log().contains("signing unavailable"),
        "{}",
        server.log()
    );
    // The agent keeps serving what it holds.
    assert!(agent.cli(&["api", "fetch", "x509"]).status.success());

    // The token comes back: the server recovers without a restart.
    std::fs::rename(&away, hsm.tokens_dir()).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || server
            .cli(&["healthcheck"])
            .status
            .success()),
        "the server did not recover:\n{}",
        server.log()
    );
    let out = dir.path().join("after");
    server.cli_ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/x",
        "--write",
        out.to_str().unwrap(),
    ]);
    let v = openssl_verify(&out.join("bundle.pem"), &out.join("svid.pem"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn rotation_in_the_hsm_keeps_workloads_valid_and_destroys_keys_only_once_unused() {
    let dir = test_dir("hsm-rotation");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    // The first CA is made after this instant, so it expires after `start + 36 s`.
    let start = Instant::now();
    let server = hsm_server(
        dir.path(),
        &hsm,
        "ca_ttl = \"36s\"\nbundle_refresh_hint = \"1s\"\nx509_svid_ttl = \"4s\"\njwt_svid_ttl = \"4s\"",
    );
    let token = workload(&server);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "sync_interval = \"300ms\"",
    );
    let first: BTreeSet<String> = private_key_labels(&hsm)
        .into_iter()
        .filter(|l| l.starts_with("tessera-x509-ca-"))
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");
    let first_ca = first.iter().next().unwrap().clone();

    // Watch a workload through a rotation (prepare at 18 s, activate at 30 s, the
    // workload's next SVID at most 2.4 s later), until a second before the first CA
    // can have expired: however long the start took, the watch ends while it is alive.
    let until = (start + Duration::from_secs(35)).saturating_duration_since(Instant::now());
    let updates = watch_x509(&agent, until);
    assert_continuous(&updates);
    let issuers: BTreeSet<&str> = updates.iter().map(|u| u.issuer.as_str()).collect();
    assert!(
        issuers.len() >= 2,
        "no rotation seen: {issuers:?}\n{}",
        server.log()
    );
    // Rotated, not expired: the old key is still in the token (SVIDs it signed live).
    assert!(
        private_key_labels(&hsm).contains(&first_ca),
        "the old CA key was destroyed while in use"
    );

    // Once the first CA has expired (36 s after it was made), its key goes.
    assert!(
        wait_until(Duration::from_secs(15), || !private_key_labels(&hsm)
            .contains(&first_ca)),
        "the expired CA key was never destroyed:\n{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("expired authority removed and its key destroyed")
    );
    // And the workload kept a valid SVID throughout the second half as well.
    let later = watch_x509(&agent, Duration::from_secs(4));
    assert_continuous(&later);
}
