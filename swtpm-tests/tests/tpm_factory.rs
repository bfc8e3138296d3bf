//! The factory flow docs/TPM.md gives vendors, on swtpm: the DevID key and its
//! request made in the TPM (`tessera-agent tpm create-key`), the request certified
//! by the vendor's CA elsewhere (here `openssl x509 -req`, standing in for a
//! signing service), the chain put beside the key blob as a DevID folder; an agent
//! attests with it (`tpm_devid`) and a workload gets its SVID. A folder whose
//! certificate is for another key (two devices' requests mixed up) is refused by
//! the agent, saying so, and the server records no agent.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera_swtpm_tests::faults_agent::fetch_x509;
use tessera_swtpm_tests::{Agent, Server, Swtpm, TestCa, bin, my_uid, run_ok, test_dir};

/// `tpm create-key` into DIR/devid.key and DIR/devid.csr.
fn create_key(tpm: &Swtpm, dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new(bin("tessera-agent"))
            .args([
                "tpm",
                "create-key",
                "--tcti",
                &tpm.tcti,
                "--common-name",
                cn,
            ])
            .arg("--out")
            .arg(dir.join("devid.key"))
            .arg("--csr")
            .arg(dir.join("devid.csr")),
    );
}

/// The vendor CA certifies `csr` (its signature checked, as a signing service
/// would); returns the certificate (PEM).
fn sign(ca: &TestCa, csr: &Path, work: &Path) -> String {
    let ext = work.join("devid.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let leaf = work.join("leaf.pem");
    run_ok(
        Command::new("openssl")
            .args(["req", "-verify", "-noout", "-in"])
            .arg(csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "3650", "-set_serial", "42", "-in"])
            .arg(csr)
            .arg("-CA")
            .arg(&ca.cert)
            .arg("-CAkey")
            .arg(&ca.key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&leaf),
    );
    std::fs::read_to_string(&leaf).unwrap()
}

#[test]
fn devid_from_create_key_and_a_vendor_signing_service_attests() {
    let dir = test_dir("tpm-factory");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Factory Vendor CA");
    let devid = dir.path().join("devid");
    create_key(&tpm, &devid, "SERIAL-0042");
    let leaf = sign(&vendor, &devid.join("devid.csr"), dir.path());
    let ca_pem = std::fs::read_to_string(&vendor.cert).unwrap();
    std::fs::write(devid.join("devid.crt"), format!("{leaf}{ca_pem}")).unwrap();
    let info = tpm.info(Some(&devid));
    let agent_path = info["devid"]["agent_path"].as_str().unwrap().to_owned();
    assert!(agent_path.starts_with("tpm_devid/"), "{info}");

    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            vendor.cert.display().to_string(),
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string(),
        ),
    );
    server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/fleet",
        "--selector",
        "tpm_devid:issuer:cn:Factory Vendor CA",
    ]);
    server.entry(
        "spiffe://example.org/app",
        "spiffe://example.org/fleet",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        None,
        &format!(
            "[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_devid]\ntcti = \"{}\"\ndevid_dir = \"{}\"\n",
            tpm.tcti,
            devid.display()
        ),
    );
    assert_eq!(
        agent.spiffe_id(),
        format!("spiffe://example.org/spire/agent/{agent_path}")
    );
    let fetched = fetch_x509(&agent, Duration::from_secs(20)).unwrap();
    assert_eq!(
        fetched.spiffe_ids,
        vec!["spiffe://example.org/app".to_string()]
    );
    let list = server.cli_ok(&["agent", "list"]);
    assert!(list.contains("tpm_devid:subject:cn:SERIAL-0042"), "{list}");
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let dir = test_dir("tpm-factory-mixup");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Factory Vendor CA");
    // Two keys; the folder gets the first key's blob with the second's certificate
    // (a line station that mixed up two devices' requests).
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    create_key(&tpm, &first, "SERIAL-0001");
    create_key(&tpm, &second, "SERIAL-0002");
    let leaf = sign(&vendor, &second.join("devid.csr"), dir.path());
    let ca_pem = std::fs::read_to_string(&vendor.cert).unwrap();
    std::fs::write(first.join("devid.crt"), format!("{leaf}{ca_pem}")).unwrap();

    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            vendor.cert.display().to_string(),
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string(),
        ),
    );
    let mut agent = Agent::configure(
        &dir.path().join("agent"),
        &server,
        &format!(
            "[node_attestor.tpm_devid]\ntcti = \"{}\"\ndevid_dir = \"{}\"\n",
            tpm.tcti,
            first.display()
        ),
    );
    agent.spawn(None);
    // The agent sees it before it asks the server anything.
    let refused = tessera_swtpm_tests::wait_until(Duration::from_secs(20), || {
        agent
            .log()
            .contains("devid.key is not the key of the first certificate in devid.crt")
    });
    let records: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    assert!(
        refused,
        "agent log:\n{}\nserver log:\n{}",
        agent.log(),
        server.log()
    );
    assert_eq!(records.as_array().unwrap().len(), 0, "{records}");
}
