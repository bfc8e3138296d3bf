//! End to end with join tokens and software keys: a real server and agent, SVIDs
//! fetched by py-spiffe and by the `spiffe` crate, checked by OpenSSL, JWT-SVIDs
//! cross-validated, callers without an entry denied (as py-spiffe, go-spiffe and
//! java-spiffe see it), and the agent restarted from its state directory.
//! go-spiffe and java-spiffe themselves are exercised in `spiffe_libs.rs`.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::Duration;

use tessera_swtpm_tests::spiffe_libs::Lib;
use tessera_swtpm_tests::{Agent, Server, my_uid, openssl_verify, py_ok, test_dir};

fn uid_selector() -> String {
    format!("unix:uid:{}", my_uid())
}

/// A server and an agent attested with a join token whose alias is `node`, and an
/// entry `workload` under it for this test process's UID.
fn setup(dir: &Path, server_extra: &str, agent_extra: &str) -> (Server, Agent) {
    let server = Server::start(&dir.join("server"), server_extra);
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&uid_selector()],
        &["--dns-name", "workload.example.org"],
    );
    let agent = Agent::start(&dir.join("agent"), &server, Some(&token), agent_extra);
    (server, agent)
}

/// Waits until the agent serves an X509-SVID to this process.
fn wait_for_svid(agent: &Agent) {
    let ok = tessera_swtpm_tests::wait_until(Duration::from_secs(20), || {
        agent.cli(&["api", "fetch", "x509"]).status.success()
    });
    assert!(ok, "no SVID served:\n{}", agent.log());
}

#[test]
fn stock_clients_get_valid_svids_and_cross_validate_jwts() {
    let dir = test_dir("clients");
    let (_server, agent) = setup(dir.path(), "", "");
    wait_for_svid(&agent);

    // py-spiffe: the X509-SVID, written out and verified by OpenSSL.
    let out = dir.path().join("py-x509");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["spiffe_id"], "spiffe://example.org/workload");
    assert_eq!(facts["trust_domain"], "example.org");
    let v = openssl_verify(&out.join("bundle.pem"), &out.join("chain.pem"));
    assert!(
        v.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(out.join("chain.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:spiffe://example.org/workload"), "{text}");
    assert!(text.contains("DNS:workload.example.org"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    // The `spiffe` crate sees the same identity and a bundle that verifies it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (rust_id, rust_token, jwt_bundles) = rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
            .await
            .unwrap();
        let svid = client.fetch_x509_svid().await.unwrap();
        let bundles = client.fetch_x509_bundles().await.unwrap();
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let bundle = bundles.get(&td).expect("bundle for example.org");
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let roots: Vec<Vec<u8>> = bundle
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let core_bundle = tessera_core::Bundle::with_x509(
            tessera_core::TrustDomain::new("example.org").unwrap(),
            roots,
        );
        tessera_core::x509::verify_svid_chain(&chain, &core_bundle, std::time::SystemTime::now())
            .unwrap();
        let token = client
            .fetch_jwt_token(["rust-audience"], None)
            .await
            .unwrap();
        let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
        (svid.spiffe_id().to_string(), token, jwt_bundles)
    });
    assert_eq!(rust_id, "spiffe://example.org/workload");

    // A JWT-SVID fetched by py-spiffe, validated by the `spiffe` crate and the agent.
    let py_token = py_ok(&agent, "workload.py", &["jwt", "py-audience"])
        .trim()
        .to_owned();
    let parsed =
        spiffe::JwtSvid::parse_and_validate(&py_token, &jwt_bundles, &["py-audience"]).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/workload"
    );
    assert!(
        spiffe::JwtSvid::parse_and_validate(&py_token, &jwt_bundles, &["someone-else"]).is_err()
    );
    let validated = agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "py-audience",
        "--svid",
        &py_token,
    ]);
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(String::from_utf8_lossy(&validated.stdout).contains("spiffe://example.org/workload"));

    // And the reverse: the crate's token validated by py-spiffe (locally and via the agent).
    let out = py_ok(
        &agent,
        "workload.py",
        &["validate", &rust_token, "rust-audience"],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["local"], "spiffe://example.org/workload");
    assert_eq!(v["agent"], "spiffe://example.org/workload");
}

#[test]
fn workload_without_entry_is_denied_and_header_is_required() {
    let dir = test_dir("denied");
    let server = Server::start(&dir.path().join("server"), "");
    let token = server.token(None, None);
    // An entry for some other UID only.
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    server.entry(
        "spiffe://example.org/other",
        &agent_id,
        &["unix:uid:4242424"],
        &[],
    );
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");

    let out = py_ok(&agent, "workload.py", &["expect-denied"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"], "PERMISSION_DENIED", "{out}");
    // go-spiffe and java-spiffe see the gRPC PermissionDenied status itself.
    for lib in [Lib::Go, Lib::Java] {
        let out = lib.run_ok(&agent.endpoint(), None, &["expect-denied"]);
        assert!(
            !out.value("denied").is_empty(),
            "{}: {}",
            lib.name(),
            out.stdout
        );
    }
    let cli = agent.cli(&["api", "fetch", "x509"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("no identity issued"));

    // A call without the security header is InvalidArgument.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        let mut c =
            tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
        let err = c
            .fetch_jwtsvid(tessera_proto::workload::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("security header"),
            "{}",
            err.message()
        );
        let err = c
            .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    });
}

#[test]
fn join_tokens_are_single_use_and_expire() {
    let dir = test_dir("tokens");
    let server = Server::start(&dir.path().join("server"), "");
    let token = server.token(None, None);
    let _first = Agent::start(&dir.path().join("a1"), &server, Some(&token), "");

    // The same token again: refused, the agent exits non-zero with the reason.
    let mut second = Agent::configure(&dir.path().join("a2"), &server, "");
    second.spawn(Some(&token));
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("second agent should exit");
    assert!(!status.success());
    assert!(
        second
            .log()
            .contains("join token does not exist or has already been used"),
        "{}",
        second.log()
    );
    assert!(
        server.log().contains("attestation failed"),
        "{}",
        server.log()
    );

    // An expired token.
    let short = server.token(None, Some("1s"));
    std::thread::sleep(Duration::from_millis(2100));
    let mut third = Agent::configure(&dir.path().join("a3"), &server, "");
    third.spawn(Some(&short));
    let status = third
        .wait_exit(Duration::from_secs(20))
        .expect("third agent should exit");
    assert!(!status.success());
    assert!(
        third.log().contains("join token expired"),
        "{}",
        third.log()
    );

    // No agent record was written for the refused attempts.
    let list = server.cli_ok(&["agent", "list", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn agent_restart_resumes_without_a_new_token() {
    let dir = test_dir("restart");
    let (server, mut agent) = setup(dir.path(), "", "");
    wait_for_svid(&agent);
    let id_before = agent.spiffe_id();
    agent.stop();
    // No token this time: the state directory is enough.
    agent.spawn(None);
    agent.wait_healthy();
    assert!(
        agent.log().contains("resumed from the state directory"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.spiffe_id(), id_before);
    wait_for_svid(&agent);
    let list = server.cli_ok(&["agent", "list", "--output", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn malformed_config_files_fail_with_file_and_line() {
    let dir = test_dir("config");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "trust_domain = \"example.org\"\nbind_adress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(tessera_swtpm_tests::bin("tessera-server"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", cfg.display())), "{err}");
    assert!(err.contains("bind_adress"), "{err}");

    std::fs::write(
        &cfg,
        "trust_domain = \"example.org\"\nserver_address = \"x\"\nsync_interval = [1\n",
    )
    .unwrap();
    let out = std::process::Command::new(tessera_swtpm_tests::bin("tessera-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", cfg.display())), "{err}");

    let out = std::process::Command::new(tessera_swtpm_tests::bin("tessera-agent"))
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
