//! Factory-provisioned IDevIDs end to end, on both TPM backends: swtpm provisioned
//! the way a vendor's line station would with tpm2-tools (the DevID key made in the
//! TPM and made persistent at 0x81020000, its certificate from a test vendor CA and
//! the CA's in NV index 0x01C90000 as DER with padding after them, then owner and
//! endorsement passwords set with tpm2_changeauth); an agent with no DevID folder
//! attests from it, the passwords read from files and from a systemd credential,
//! and a workload gets its SVID. Refused, each with its reason in the agent's log
//! and no agent recorded by the server: an empty handle, an NV index not defined, a
//! certificate for another key, a wrong owner or endorsement password (which leave
//! the TPM's dictionary-attack counter at zero).

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
use tessera_swtpm_tests::{Agent, Server, Swtpm, TestCa, my_uid, run_ok, test_dir, wait_until};

const OWNER_PW: &str = "owner-secret-1";
const ENDORSEMENT_PW: &str = "endorsement-secret-2";

/// tpm2-tools pointed at `tpm`.
fn tool(tpm: &Swtpm, name: &str) -> Command {
    let env = std::fs::read_to_string(tpm.dir.join("env")).unwrap();
    let tcti = env
        .lines()
        .find_map(|l| l.strip_prefix("export TPM2TOOLS_TCTI="))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_owned())
        .expect("TPM2TOOLS_TCTI in the swtpm env file");
    let mut c = Command::new(name);
    c.env("TPM2TOOLS_TCTI", tcti);
    c
}

/// A DevID certificate from `ca` for the public key in `pubkey_pem`, as DER.
fn certify(ca: &TestCa, pubkey_pem: &Path, cn: &str, work: &Path) -> Vec<u8> {
    let ext = work.join("devid.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    // The request only carries the subject: the key is the TPM's (-force_pubkey),
    // as a line station that read the DevID's public key from the TPM would do.
    let csr = work.join(format!("{cn}.csr"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-keyout"])
            .arg(work.join(format!("{cn}.throwaway.key")))
            .args(["-subj", &format!("/CN={cn}"), "-out"])
            .arg(&csr),
    );
    let der = work.join(format!("{cn}.der"));
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-set_serial", "7", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.cert)
            .arg("-CAkey")
            .arg(&ca.key)
            .arg("-force_pubkey")
            .arg(pubkey_pem)
            .arg("-extfile")
            .arg(&ext)
            .args(["-outform", "DER", "-out"])
            .arg(&der),
    );
    std::fs::read(der).unwrap()
}

fn ca_der(ca: &TestCa) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&ca.cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Defines NV `index` (owner read/write) 100 bytes larger than `data` and writes
/// `data` at its start.
fn nv_store(tpm: &Swtpm, index: &str, data: &[u8], work: &Path) {
    let file = work.join(format!("nv-{index}.der"));
    std::fs::write(&file, data).unwrap();
    run_ok(
        tool(tpm, "tpm2_nvdefine")
            .args([index, "-C", "o", "-s", &(data.len() + 100).to_string()])
            .args(["-a", "ownerread|ownerwrite|authread|authwrite"]),
    );
    run_ok(
        tool(tpm, "tpm2_nvwrite")
            .args([index, "-C", "o", "-i"])
            .arg(&file),
    );
}

/// Provisions `tpm` as a factory would; returns the DevID leaf's SHA-1 (hex).
fn provision_factory(tpm: &Swtpm, vendor: &TestCa, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let ctx = |n: &str| work.join(n).display().to_string();
    // swtpm has no resource manager and room for three objects: each tool's
    // leftovers are flushed (saved contexts load again from their files).
    let flush = || run_ok(tool(tpm, "tpm2_flushcontext").arg("-t"));
    flush();
    run_ok(tool(tpm, "tpm2_createprimary").args([
        "-C",
        "o",
        "-G",
        "ecc256",
        "-c",
        &ctx("primary.ctx"),
    ]));
    run_ok(tool(tpm, "tpm2_create").args([
        "-C",
        &ctx("primary.ctx"),
        "-G",
        "ecc256",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign",
        "-u",
        &ctx("devid.pub"),
        "-r",
        &ctx("devid.priv"),
    ]));
    flush();
    run_ok(tool(tpm, "tpm2_load").args([
        "-C",
        &ctx("primary.ctx"),
        "-u",
        &ctx("devid.pub"),
        "-r",
        &ctx("devid.priv"),
        "-c",
        &ctx("devid.ctx"),
    ]));
    run_ok(tool(tpm, "tpm2_evictcontrol").args(["-C", "o", "-c", &ctx("devid.ctx"), "0x81020000"]));
    flush();
    run_ok(tool(tpm, "tpm2_readpublic").args([
        "-c",
        "0x81020000",
        "-f",
        "pem",
        "-o",
        &ctx("devid.pem"),
    ]));

    // The DevID certificate and the vendor CA's, DER, in the TCG index.
    let mut chain = certify(vendor, &work.join("devid.pem"), "SERIAL-4242", work);
    chain.extend_from_slice(&ca_der(vendor));
    nv_store(tpm, "0x01C90000", &chain, work);

    // A certificate for another key (a mixed-up line station), in another index.
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(work.join("other.key")),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(work.join("other.key"))
            .arg("-out")
            .arg(work.join("other.pem")),
    );
    let other = certify(vendor, &work.join("other.pem"), "SERIAL-OTHER", work);
    nv_store(tpm, "0x01C90008", &other, work);

    // Last, as the owner would: the hierarchy passwords.
    run_ok(tool(tpm, "tpm2_changeauth").args(["-c", "owner", OWNER_PW]));
    run_ok(tool(tpm, "tpm2_changeauth").args(["-c", "endorsement", ENDORSEMENT_PW]));
}

fn lockout_counter(tpm: &Swtpm) -> String {
    let out = run_ok(tool(tpm, "tpm2_getcap").arg("properties-variable"));
    out.lines()
        .find(|l| l.contains("TPM2_PT_LOCKOUT_COUNTER"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| panic!("no TPM2_PT_LOCKOUT_COUNTER in:\n{out}"))
}

fn agents(server: &Server) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    v.as_array().unwrap().len()
}

// Fields drop in this order: the server and swtpm stop before their folder goes
// (swtpm is stopped through the pid file in it).
struct Setup {
    server: Server,
    tpm: Swtpm,
    dir: tessera_swtpm_tests::TestDir,
}

fn setup(name: &str) -> Setup {
    let dir = test_dir(name);
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Factory Vendor CA");
    provision_factory(&tpm, &vendor, &dir.path().join("factory"));
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            vendor.cert.display().to_string(),
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string(),
        ),
    );
    std::fs::write(dir.path().join("owner.pw"), format!("{OWNER_PW}\n")).unwrap();
    std::fs::write(dir.path().join("endorsement.pw"), ENDORSEMENT_PW).unwrap();
    std::fs::write(dir.path().join("wrong.pw"), "not-the-password\n").unwrap();
    Setup { server, tpm, dir }
}

impl Setup {
    fn config(&self, backend: &str, devid: &str, owner: &str, endorsement: &str) -> String {
        format!(
            "tpm_backend = \"{backend}\"\n[tpm]\n{owner}\n{endorsement}\n[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_devid]\ntcti = \"{}\"\nek = \"rsa-2048\"\n{devid}\n",
            self.tpm.tcti
        )
    }

    fn pw(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// An agent that must fail with `expected` in its log, having recorded nothing.
    fn refused(&self, name: &str, config: &str, expected: &str) {
        let mut agent = Agent::configure(&self.dir.path().join(name), &self.server, config);
        agent.spawn(None);
        let seen = wait_until(Duration::from_secs(30), || agent.log().contains(expected));
        agent.stop();
        assert!(
            seen,
            "{name}: expected {expected:?} in the agent log:\n{}\nserver log:\n{}",
            agent.log(),
            self.server.log()
        );
        assert_eq!(agents(&self.server), 0, "{name}: an agent was recorded");
    }
}

fn factory_idevid_attests(backend: &str) {
    let s = setup(&format!("tpm-idevid-{backend}"));
    let owner = format!("owner_auth_file = {:?}", s.pw("owner.pw"));
    let endorsement = format!("endorsement_auth_file = {:?}", s.pw("endorsement.pw"));

    // The refusals first: none may leave an agent behind.
    s.refused(
        "empty-handle",
        &s.config(
            backend,
            "devid_key_handle = \"0x81020001\"",
            &owner,
            &endorsement,
        ),
        "no key at persistent handle 0x81020001",
    );
    s.refused(
        "no-index",
        &s.config(
            backend,
            "devid_cert_nv_index = \"0x01C90010\"",
            &owner,
            &endorsement,
        ),
        "NV index 0x01c90010 is not defined",
    );
    s.refused(
        "other-key",
        &s.config(
            backend,
            "devid_cert_nv_index = \"0x01C90008\"",
            &owner,
            &endorsement,
        ),
        "the certificate in NV index 0x01c90008 is not for the key at persistent handle 0x81020000",
    );
    s.refused(
        "wrong-owner",
        &s.config(
            backend,
            "",
            &format!("owner_auth_file = {:?}", s.pw("wrong.pw")),
            &endorsement,
        ),
        "refused the owner hierarchy password (the configured password is wrong)",
    );
    s.refused(
        "no-owner",
        &s.config(backend, "", "", &endorsement),
        "refused the owner hierarchy password (none is configured",
    );
    s.refused(
        "wrong-endorsement",
        &s.config(
            backend,
            "",
            &owner,
            &format!("endorsement_auth_file = {:?}", s.pw("wrong.pw")),
        ),
        "refused the endorsement hierarchy password (the configured password is wrong)",
    );
    // Hierarchy passwords are outside dictionary-attack protection, and the agent
    // tried each once: the TPM's failure counter has not moved.
    assert_eq!(lockout_counter(&s.tpm), "0x0");

    s.server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/factory-fleet",
        "--selector",
        "tpm_devid:subject:cn:SERIAL-4242",
    ]);
    s.server.entry(
        "spiffe://example.org/factory-app",
        "spiffe://example.org/factory-fleet",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    // The factory DevID with the defaults; the endorsement password as a systemd
    // credential.
    let creds = s.dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("tpm-endorsement"), ENDORSEMENT_PW).unwrap();
    let mut agent = Agent::configure(
        &s.dir.path().join("agent"),
        &s.server,
        &s.config(
            backend,
            "",
            &owner,
            "endorsement_auth_credential = \"tpm-endorsement\"",
        ),
    );
    agent.spawn_in(
        None,
        &[
            "env".to_owned(),
            format!("CREDENTIALS_DIRECTORY={}", creds.display()),
        ],
    );
    agent.wait_healthy();
    let id = agent.spiffe_id();
    assert!(
        id.starts_with("spiffe://example.org/spire/agent/tpm_devid/"),
        "{id}"
    );
    let fetched = fetch_x509(&agent, Duration::from_secs(30)).unwrap();
    assert_eq!(
        fetched.spiffe_ids,
        vec!["spiffe://example.org/factory-app".to_string()]
    );
    let list = s.server.cli_ok(&["agent", "list"]);
    assert!(
        list.contains("tpm_devid:issuer:cn:Factory Vendor CA"),
        "{list}"
    );
    assert_eq!(agents(&s.server), 1);
    assert!(
        agent.log().contains("key at persistent handle 0x81020000"),
        "{}",
        agent.log()
    );
    agent.stop();

    // `tpm info` shows the factory DevID with the owner password, and says what is
    // wrong without it.
    let info = |auth: bool| {
        let mut c = Command::new(tessera_swtpm_tests::bin("tessera-agent"));
        c.args(["tpm", "info", "--factory-devid", "--output", "json"])
            .args(["--tpm-backend", backend, "--tcti", &s.tpm.tcti]);
        if auth {
            c.arg("--owner-auth-file").arg(s.pw("owner.pw"));
        }
        c.output().unwrap()
    };
    let shown: serde_json::Value =
        serde_json::from_slice(&info(true).stdout).expect("tpm info JSON");
    assert_eq!(
        format!(
            "spiffe://example.org/spire/agent/{}",
            shown["devid"]["agent_path"].as_str().unwrap()
        ),
        id
    );
    let refused = info(false);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("refused the owner hierarchy password"),
        "{err}"
    );
}

#[test]
fn factory_idevid_esapi() {
    factory_idevid_attests("esapi");
}

#[test]
fn factory_idevid_native() {
    factory_idevid_attests("native");
}
