//! TPM node attestation end to end on swtpm: `tpm_devid` and `tpm_ek` agents whose
//! workloads get SVIDs through py-spiffe, the agent key in the TPM, and every
//! refusal the issue lists, each with its reason in the server log and no agent
//! record written. Hand-made agents (the tessera-tpm agent functions driven from the
//! test, against two simulators) produce the forged evidence.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::sync::Arc;

use tessera_agent::client::{Trust, channel, node_client};
use tessera_core::key::{Key, KeyManager, KeyType, SoftwareKey};
use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_proto::agent as pb;
use tessera_swtpm_tests::{Agent, Server, Swtpm, TestCa, my_uid, py_ok, test_dir};
use tessera_tpm::attestation::AgentState as _;
use tessera_tpm::{AgentOptions, Tpm};

fn uid() -> String {
    format!("unix:uid:{}", my_uid())
}

fn devid_server(dir: &Path, vendor: &TestCa, tpms: &[&Swtpm]) -> Server {
    let roots: Vec<String> = tpms
        .iter()
        .map(|t| format!("{:?}", t.ek_ca_root.display().to_string()))
        .collect();
    let inters: Vec<String> = tpms
        .iter()
        .map(|t| format!("{:?}", t.ek_ca_intermediate.display().to_string()))
        .collect();
    Server::start(
        &dir.join("server"),
        &format!(
            "[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{}]\nek_intermediates = [{}]\n",
            vendor.cert.display().to_string(),
            roots.join(", "),
            inters.join(", ")
        ),
    )
}

fn agents(server: &Server) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    v.as_array().unwrap().len()
}

/// Runs the Attest stream by hand: sends `payload` for `attestor`, then answers the
/// server's challenge with `answer`. Returns the server's verdict.
fn attest_raw(
    server: &Server,
    attestor: &str,
    payload: Vec<u8>,
    answer: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>,
) -> Result<String, tonic::Status> {
    let td = TrustDomain::new("example.org").unwrap();
    let roots =
        tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes()).unwrap();
    let bundle = SharedBundle::new(Bundle::with_x509(td.clone(), roots));
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
    let csr = tessera_core::x509::build_csr(&key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut client = node_client(channel(
            vec![server.address()],
            td.id("/spire/server").unwrap(),
            Trust::Bundle(bundle),
            None,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::AttestRequest {
            step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
                attestor: attestor.into(),
                payload,
                csr,
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut answer = Some(answer);
        loop {
            match inbound.message().await?.and_then(|m| m.step) {
                Some(pb::attest_response::Step::Challenge(c)) => {
                    let f = answer.take().expect("a single challenge");
                    match f(c) {
                        Some(a) => tx
                            .send(pb::AttestRequest {
                                step: Some(pb::attest_request::Step::ChallengeResponse(a)),
                            })
                            .await
                            .unwrap(),
                        // Abandon the attempt.
                        None => return Ok("abandoned".to_string()),
                    }
                }
                Some(pb::attest_response::Step::Result(r)) => return Ok(r.spiffe_id),
                None => panic!("stream ended without a verdict"),
            }
        }
    })
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn open(tpm: &Swtpm) -> Arc<Tpm> {
    Arc::new(Tpm::open(&tpm.tcti.parse().unwrap()).unwrap())
}

#[test]
fn tpm_devid_agent_with_its_key_in_the_tpm() {
    let dir = test_dir("tpm-devid");
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    let other = Swtpm::start(&dir.path().join("tpm-b"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Vendor CA");
    let devid = dir.path().join("devid");
    tpm.provision_devid(&vendor, &devid, "device-0001");
    let info = tpm.info(Some(&devid));
    let agent_path = info["devid"]["agent_path"].as_str().unwrap().to_owned();

    let server = devid_server(dir.path(), &vendor, &[&tpm]);
    server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/devices/vendor",
        "--selector",
        "tpm_devid:subject:cn:device-0001",
    ]);
    server.entry(
        "spiffe://example.org/app",
        "spiffe://example.org/devices/vendor",
        &[&uid()],
        &[],
    );
    let mut agent = Agent::start(
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
    let out = dir.path().join("py");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["spiffe_id"], "spiffe://example.org/app");
    let list = server.cli_ok(&["agent", "list"]);
    assert!(list.contains("tpm_devid:subject:cn:device-0001"), "{list}");
    assert!(list.contains("tpm_devid:issuer:cn:Vendor CA"), "{list}");
    assert!(list.contains("tpm_devid:ca:fingerprint:"), "{list}");
    // And it proved, with a TPM2_Certify by its attested AK, that this key is in
    // the TPM (docs/TPM.md: proof that the agent key is in the TPM).
    assert!(
        list.contains("Agent key         : in TPM (certified by the attested AK)"),
        "{list}"
    );

    // The agent's own key is a TPM key: the SVID carries its public key, and what is
    // on disk is a TPM blob, not a private key.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.dir.join("data/agent.json")).unwrap())
            .unwrap();
    use base64::Engine;
    let leaf = base64::engine::general_purpose::STANDARD
        .decode(state["chain"][0].as_str().unwrap())
        .unwrap();
    let key_id = state["key_id"].as_str().unwrap();
    let blob_path = agent.dir.join("data/keys").join(format!("{key_id}.tpmkey"));
    let blob = std::fs::read(&blob_path).unwrap();
    assert!(
        SoftwareKey::from_pkcs8(&blob).is_err(),
        "the key file is a usable private key"
    );
    let parsed = tessera_tpm::KeyBlob::from_bytes(&blob).unwrap();
    assert_eq!(
        tessera_core::x509::cert_info(&leaf).unwrap().public_key_der,
        parsed.public.spki().unwrap(),
        "the agent SVID is not for the TPM key"
    );
    // The blob is useless in another TPM.
    let foreign =
        tessera_tpm::TpmKeyManager::open(open(&other), &agent.dir.join("data/keys")).unwrap();
    let err = foreign.get_key(key_id).unwrap_err();
    assert!(
        err.to_string().contains("does not belong to this TPM"),
        "{err}"
    );

    // A restart resumes with the same TPM key.
    agent.stop();
    agent.spawn(None);
    agent.wait_healthy();
    assert!(
        agent.log().contains("resumed from the state directory"),
        "{}",
        agent.log()
    );
    py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]);

    // Evicted, a TPM agent attests again by itself.
    server.cli_ok(&["agent", "evict", "--spiffe-id", &agent.spiffe_id()]);
    assert!(
        tessera_swtpm_tests::wait_until(std::time::Duration::from_secs(20), || agents(&server)
            == 1
            && agent.log().matches("node attested").count() >= 1
            && server.log().matches("agent attested").count() >= 2),
        "the agent did not re-attest:\n{}",
        agent.log()
    );
}

/// The same two attestations with the agent on the pure-Rust backend
/// (`tpm_backend = "native"`): the DevID, provisioned by the CLI through tss-esapi,
/// is used by the native agent, whose own key blob in turn loads through tss-esapi;
/// the server accepts both attestations as it does the esapi agent's.
#[test]
fn tpm_devid_and_tpm_ek_agents_on_the_native_backend() {
    let dir = test_dir("tpm-native");
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Vendor CA");
    let devid = dir.path().join("devid");
    tpm.provision_devid(&vendor, &devid, "device-0002");
    let info = tpm.info(Some(&devid));
    let agent_path = info["devid"]["agent_path"].as_str().unwrap().to_owned();
    let hash = info["endorsement_keys"][0]["pub_hash"]
        .as_str()
        .unwrap()
        .to_owned();

    let server = devid_server(dir.path(), &vendor, &[&tpm]);
    server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/devices/native",
        "--selector",
        "tpm_devid:subject:cn:device-0002",
    ]);
    server.entry(
        "spiffe://example.org/app",
        "spiffe://example.org/devices/native",
        &[&uid()],
        &[],
    );
    let mut agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        None,
        &format!(
            "tpm_backend = \"native\"\n[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_devid]\ntcti = \"{}\"\ndevid_dir = \"{}\"\n",
            tpm.tcti,
            devid.display()
        ),
    );
    assert_eq!(
        agent.spiffe_id(),
        format!("spiffe://example.org/spire/agent/{agent_path}")
    );
    let out = dir.path().join("py");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["spiffe_id"], "spiffe://example.org/app");
    agent.stop();
    // The native agent's key blob signs through tss-esapi.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.dir.join("data/agent.json")).unwrap())
            .unwrap();
    let key_id = state["key_id"].as_str().unwrap();
    let esapi =
        Arc::new(Tpm::open_with(tessera_tpm::Backend::Esapi, &tpm.tcti.parse().unwrap()).unwrap());
    let keys =
        tessera_tpm::TpmKeyManager::open(esapi.clone(), &agent.dir.join("data/keys")).unwrap();
    let key = keys.get_key(key_id).unwrap().unwrap();
    let sig = key.sign_default(b"made by the native agent").unwrap();
    assert!(!sig.is_empty());
    drop((key, keys, esapi));

    // tpm_ek, by certificate chain, with the native backend.
    let by_cert = Server::start(
        &dir.path().join("s-ek"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string()
        ),
    );
    let ek_agent = Agent::start(
        &dir.path().join("agent-ek"),
        &by_cert,
        None,
        &format!(
            "tpm_backend = \"native\"\n[node_attestor.tpm_ek]\ntcti = \"{}\"\nek = \"rsa-2048\"\n",
            tpm.tcti
        ),
    );
    assert_eq!(
        ek_agent.spiffe_id(),
        format!("spiffe://example.org/spire/agent/tpm/{hash}")
    );
    let list = by_cert.cli_ok(&["agent", "list"]);
    assert!(list.contains("tpm:model:swtpm"), "{list}");
}

#[test]
fn tpm_ek_by_certificate_and_by_allow_list() {
    let dir = test_dir("tpm-ek");
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    let other = Swtpm::start(&dir.path().join("tpm-b"));
    let hash_a = tpm.info(None)["endorsement_keys"][0]["pub_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash_b = other.info(None)["endorsement_keys"][0]["pub_hash"]
        .as_str()
        .unwrap()
        .to_owned();

    // By certificate chain to the manufacturer (the local CA).
    let by_cert = Server::start(
        &dir.path().join("s1"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string()
        ),
    );
    by_cert.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/swtpms",
        "--selector",
        "tpm:model:swtpm",
    ]);
    by_cert.entry(
        "spiffe://example.org/app",
        "spiffe://example.org/swtpms",
        &[&uid()],
        &[],
    );
    let agent_cfg = |t: &Swtpm| {
        format!(
            "[node_attestor.tpm_ek]\ntcti = \"{}\"\nek = \"rsa-2048\"\n",
            t.tcti
        )
    };
    let mut agent = Agent::start(&dir.path().join("a1"), &by_cert, None, &agent_cfg(&tpm));
    assert_eq!(
        agent.spiffe_id(),
        format!("spiffe://example.org/spire/agent/tpm/{hash_a}")
    );
    let out = dir.path().join("py");
    let facts: serde_json::Value =
        serde_json::from_str(py_ok(&agent, "workload.py", &["x509", out.to_str().unwrap()]).trim())
            .unwrap();
    assert_eq!(facts["spiffe_id"], "spiffe://example.org/app");
    let list = by_cert.cli_ok(&["agent", "list"]);
    for s in [
        format!("tpm:pub_hash:{hash_a}"),
        "tpm:model:swtpm".into(),
        "tpm:manufacturer:id:00001014".into(),
    ] {
        assert!(list.contains(&s), "{s} missing:\n{list}");
    }
    // Its SVID key is a file (the default key manager): not proven to be in the
    // TPM, said in the list, and served (require_agent_key_in_tpm is off).
    assert!(
        list.contains("Agent key         : NOT proven to be in the TPM"),
        "{list}"
    );
    assert!(
        by_cert
            .log()
            .contains("agent SVID key not proven to be in its TPM: the agent sent no TPM2_Certify"),
        "{}",
        by_cert.log()
    );

    // A simulator has no resource manager (a device's /dev/tpmrm0 does): one agent
    // per TPM at a time.
    agent.stop();

    // By allow-list only; the list is re-read when it changes.
    let allow = dir.path().join("allow.txt");
    std::fs::write(&allow, format!("# factory batch 1\n{hash_a}\n")).unwrap();
    let by_hash = Server::start(
        &dir.path().join("s2"),
        &format!(
            "[node_attestors.tpm_ek]\nek_hash_allow_list = {:?}\n",
            allow.display().to_string()
        ),
    );
    by_hash.entry(
        "spiffe://example.org/a",
        &format!("spiffe://example.org/spire/agent/tpm/{hash_a}"),
        &[&uid()],
        &[],
    );
    let a = Agent::start(&dir.path().join("a2"), &by_hash, None, &agent_cfg(&tpm));
    assert!(a.cli(&["healthcheck"]).status.success());
    let mut b = Agent::configure(&dir.path().join("a3"), &by_hash, &agent_cfg(&other));
    b.spawn(None);
    let status = b
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the second TPM's agent should be refused");
    assert!(!status.success());
    assert!(
        by_hash
            .log()
            .contains(&format!("EK {hash_b} is not trusted")),
        "{}",
        by_hash.log()
    );
    std::fs::write(&allow, format!("{hash_a}\n{hash_b}\n")).unwrap();
    b.spawn(None);
    b.wait_healthy();
    assert_eq!(agents(&by_hash), 2);
}

#[test]
fn forged_evidence_is_refused_with_a_reason_and_no_record() {
    let dir = test_dir("tpm-negatives");
    let a = Swtpm::start(&dir.path().join("tpm-a"));
    let b = Swtpm::start(&dir.path().join("tpm-b"));
    let vendor = TestCa::new(&dir.path().join("ca"), "Vendor CA");
    let rogue = TestCa::new(&dir.path().join("ca"), "Rogue CA");
    let (devid_a, devid_b, devid_rogue) = (
        dir.path().join("devid-a"),
        dir.path().join("devid-b"),
        dir.path().join("devid-r"),
    );
    a.provision_devid(&vendor, &devid_a, "device-a");
    b.provision_devid(&vendor, &devid_b, "device-b");
    a.provision_devid(&rogue, &devid_rogue, "device-rogue");
    // Trusts the vendor and both simulators' manufacturer CAs for devid; for tpm_ek,
    // only A's manufacturer and an allow-list naming nobody.
    let allow = dir.path().join("allow.txt");
    std::fs::write(&allow, "# nobody\n").unwrap();
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{:?}, {:?}]\nek_intermediates = [{:?}, {:?}]\n\
             [node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\nek_hash_allow_list = {:?}\n",
            vendor.cert.display().to_string(),
            a.ek_ca_root.display().to_string(),
            b.ek_ca_root.display().to_string(),
            a.ek_ca_intermediate.display().to_string(),
            b.ek_ca_intermediate.display().to_string(),
            a.ek_ca_root.display().to_string(),
            a.ek_ca_intermediate.display().to_string(),
            allow.display().to_string(),
        ),
    );
    let (ta, tb) = (open(&a), open(&b));
    let opts = AgentOptions::default();
    let load = |d: &Path| tessera_tpm::provision::load_devid(d).unwrap();

    let refused = |name: &str, result: Result<String, tonic::Status>, reason: &str| {
        let status = result.expect_err(&format!("{name}: accepted"));
        assert!(
            status.message().contains(reason),
            "{name}: refused for another reason: {}",
            status.message()
        );
        assert!(
            server.log().contains(reason),
            "{name}: the reason is not in the server log:\n{}",
            server.log()
        );
        assert_eq!(agents(&server), 0, "{name}: an agent record was written");
    };

    // 1. A DevID from an untrusted CA.
    let (p, _) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_rogue), &opts)
            .unwrap();
    refused(
        "untrusted DevID CA",
        attest_raw(&server, "tpm_devid", json(&p), |_| None),
        "DevID certificate rejected",
    );

    // 2. An EK certificate from an untrusted CA (B's manufacturer is unknown to tpm_ek).
    let (p, _) = tessera_tpm::attestation::tpm_ek::build_payload(&tb, &opts).unwrap();
    refused(
        "untrusted EK CA",
        attest_raw(&server, "tpm_ek", json(&p), |_| None),
        "is not trusted",
    );

    // 3. An EK hash not on the allow-list (and no certificate to fall back on).
    let (mut p, _) = tessera_tpm::attestation::tpm_ek::build_payload(&tb, &opts).unwrap();
    p.ek_certificate = None;
    refused(
        "EK hash not allow-listed",
        attest_raw(&server, "tpm_ek", json(&p), |_| None),
        "is not trusted",
    );

    // 4. An EK certificate that is not for the EK presented (B's certificate, A's EK).
    let (mut p, _) = tessera_tpm::attestation::tpm_ek::build_payload(&ta, &opts).unwrap();
    let (pb_, _) = tessera_tpm::attestation::tpm_ek::build_payload(&tb, &opts).unwrap();
    p.ek_certificate = pb_.ek_certificate.clone();
    refused(
        "EK certificate mismatch",
        attest_raw(&server, "tpm_ek", json(&p), |_| None),
        "does not match the EK public key",
    );

    // 5. A Certify produced in a second TPM.
    let (mut p, _) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    let (from_b, _) =
        tessera_tpm::attestation::tpm_devid::build_payload(&tb, &load(&devid_b), &opts).unwrap();
    p.certify_info = from_b.certify_info;
    p.certify_signature = from_b.certify_signature;
    refused(
        "Certify from another TPM",
        attest_raw(&server, "tpm_devid", json(&p), |_| None),
        "DevID certification by the AK rejected",
    );

    // 6. A credential-activation answer from another TPM: B cannot open A's credential,
    // so all it can send is something else.
    let (p, state) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    let (ta2, tb2) = (ta.clone(), tb.clone());
    let devid_b2 = devid_b.clone();
    let res = attest_raw(&server, "tpm_devid", json(&p), move |c| {
        let challenge: tessera_tpm::attestation::tpm_devid::DevIdChallenge =
            serde_json::from_slice(&c).unwrap();
        // B's TPM refuses the credential outright.
        let id_b = tessera_tpm::provision::load_devid(&devid_b2).unwrap();
        let (_, state_b) = tessera_tpm::attestation::tpm_devid::build_payload(
            &tb2,
            &id_b,
            &AgentOptions::default(),
        )
        .unwrap();
        assert!(
            state_b.answer(&tb2, &challenge).is_err(),
            "another TPM activated the credential"
        );
        let mut answer = state.answer(&ta2, &challenge).unwrap();
        answer.activated_secret = vec![0x42; answer.activated_secret.len()];
        Some(serde_json::to_vec(&answer).unwrap())
    });
    refused(
        "activation answer from another TPM",
        res,
        "credential activation failed",
    );

    // 7. A replayed challenge response: a correct answer to an abandoned attempt.
    let (p1, s1) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    let mut old_answer = None;
    let _ = attest_raw(&server, "tpm_devid", json(&p1), |c| {
        let ch: tessera_tpm::attestation::tpm_devid::DevIdChallenge =
            serde_json::from_slice(&c).unwrap();
        old_answer = Some(serde_json::to_vec(&s1.answer(&ta, &ch).unwrap()).unwrap());
        None
    });
    let replay = old_answer.unwrap();
    let (p2, _) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    refused(
        "replayed response",
        attest_raw(&server, "tpm_devid", json(&p2), |_| Some(replay)),
        "replayed answer",
    );

    // 8. A nonce signed by the wrong key (B's DevID), with an otherwise correct answer.
    let (p, state) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    let res = attest_raw(&server, "tpm_devid", json(&p), |c| {
        let ch: tessera_tpm::attestation::tpm_devid::DevIdChallenge =
            serde_json::from_slice(&c).unwrap();
        let mut answer = state.answer(&ta, &ch).unwrap();
        let id_b = tessera_tpm::provision::load_devid(&devid_b).unwrap();
        let scheme = tessera_tpm::device::SigningScheme::default_for(id_b.key.public());
        let digest = scheme.hash().digest(&[
            tessera_tpm::attestation::tpm_devid::NONCE_CONTEXT,
            &ch.nonce,
        ]);
        let sig = tb.with(|dev| id_b.key.sign(dev, &digest, scheme)).unwrap();
        answer.nonce_signature = sig.marshal();
        Some(serde_json::to_vec(&answer).unwrap())
    });
    refused(
        "nonce signed by the wrong key",
        res,
        "nonce signature does not verify",
    );

    // And the genuine article still passes, so the refusals above were for cause.
    let (p, state) =
        tessera_tpm::attestation::tpm_devid::build_payload(&ta, &load(&devid_a), &opts).unwrap();
    let id = attest_raw(&server, "tpm_devid", json(&p), |c| {
        let ch: tessera_tpm::attestation::tpm_devid::DevIdChallenge =
            serde_json::from_slice(&c).unwrap();
        Some(serde_json::to_vec(&state.answer(&ta, &ch).unwrap()).unwrap())
    })
    .unwrap();
    assert!(
        id.starts_with("spiffe://example.org/spire/agent/tpm_devid/"),
        "{id}"
    );
    assert_eq!(agents(&server), 1);
}
