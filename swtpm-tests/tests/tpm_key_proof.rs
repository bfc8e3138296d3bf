//! The agent-key proof end to end on swtpm: real `tpm_ek` agents on both TPM
//! backends prove their SVID key is in the TPM at attestation and at every
//! renewal (`agent list` and `agent show` say so), and a hand-made agent's forged
//! proofs, at attestation and at renewal, are refused with `require_agent_key_in_tpm`
//! set, each with its reason and nothing issued: no proof, a software key imported
//! into the TPM, a certify by another TPM's AK, a certify of another key than the
//! one sent, a key that is not the CSR's, and replayed certifies.

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
use std::time::Duration;

use tessera_core::key::{Key, KeyType};
use tessera_swtpm_tests::{Agent, Server, Swtpm, test_dir, tpm_agent, wait_until};
use tessera_tpm::attestation::key_proof::certify_key;
use tessera_tpm::device::signing_key_template;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::key_proof::{
    KeyCertify, attestation_qualifying_data, renewal_qualifying_data,
};
use tessera_tpm::{Backend, KeyBlob, Tpm, TpmKey};

fn server(dir: &Path, tpm: &Swtpm, extra: &str) -> Server {
    Server::start(
        dir,
        &format!(
            "{extra}[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\nrequire_agent_key_in_tpm = true\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string()
        ),
    )
}

fn agents(server: &Server) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn agents_prove_their_key_at_attestation_and_at_each_renewal_on_both_backends() {
    let dir = test_dir("tpm-key-proof");
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    // Agent SVIDs of 20 s: renewed at about half-life.
    let server = server(
        &dir.path().join("server"),
        &tpm,
        "agent_svid_ttl = \"20s\"\n",
    );
    for backend in ["esapi", "native"] {
        let mut agent = Agent::start(
            &dir.path().join(format!("agent-{backend}")),
            &server,
            None,
            &format!(
                "tpm_backend = \"{backend}\"\n[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_ek]\ntcti = \"{}\"\nek = \"rsa-2048\"\n",
                tpm.tcti
            ),
        );
        let id = agent.spiffe_id();
        let show = server.cli_ok(&["agent", "show", "--spiffe-id", &id]);
        assert!(
            show.contains("Agent key         : in TPM (certified by the attested AK)"),
            "{backend}: {show}"
        );
        assert!(agent.dir.join("data/agent-ak.tpmkey").exists());
        let first = agents(&server)[0]["x509_svid_serial"]
            .as_str()
            .unwrap()
            .to_owned();
        // The renewal carries a certify by the kept AK: the server accepts it (it
        // would refuse a renewal without one) and the agent uses the new SVID.
        let renewed = wait_until(Duration::from_secs(45), || {
            let a = &agents(&server)[0];
            a["x509_svid_serial"].as_str() != Some(first.as_str()) && a["key_proof"] == "tpm"
        });
        assert!(
            renewed,
            "{backend}: no renewal proven\nagent log:\n{}\nserver log:\n{}",
            agent.log(),
            server.log()
        );
        assert!(
            agent.log().contains("agent SVID renewed"),
            "{}",
            agent.log()
        );
        assert!(
            !server.log().contains("not proven"),
            "{backend}: {}",
            server.log()
        );
        // One agent per simulator at a time (no resource manager).
        agent.stop();
    }
}

/// What a forger has when it answers the challenge: this attempt's AK, the
/// server's key nonce, and the qualifying data they make with the CSR.
struct Attempt {
    ak: KeyBlob,
    nonce: Vec<u8>,
    qualifying: Vec<u8>,
}

/// A hand-made `tpm_ek` agent on `tpm` whose SVID key is `svid_key`; `forge`
/// picks the key certify it sends. Returns the SVID chain the server issued.
fn attest(
    server: &Server,
    tpm: &Arc<Tpm>,
    svid_key: &KeyBlob,
    forge: impl FnOnce(&Attempt) -> Option<KeyCertify>,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    tpm_agent::attest(server, tpm, svid_key, |at| {
        let attempt = Attempt {
            ak: at.ak.clone().expect("the attempt's AK"),
            qualifying: attestation_qualifying_data(&at.nonce, &at.csr),
            nonce: at.nonce.clone(),
        };
        tpm_agent::Proofs {
            key_certify: forge(&attempt),
            pcr_quote: None,
        }
    })
}

/// Renews with the SVID `chain` (key `key`) for the new key `new_key`, sending
/// the certify `forge` makes from the qualifying data of this renewal.
fn renew(
    server: &Server,
    tpm: &Arc<Tpm>,
    chain: &[Vec<u8>],
    key: &KeyBlob,
    new_key: &KeyBlob,
    forge: impl FnOnce(&[u8]) -> Option<KeyCertify>,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    tpm_agent::renew(server, tpm, chain, key, new_key, |at| tpm_agent::Proofs {
        key_certify: forge(&renewal_qualifying_data(&at.serial, &at.csr)),
        pcr_quote: None,
    })
}

fn refused<T: std::fmt::Debug>(case: &str, result: Result<T, tonic::Status>, reason: &str) {
    let status = result.expect_err(&format!("{case}: accepted"));
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{case}: {status:?}"
    );
    assert!(
        status.message().contains(reason) && status.message().contains("no SVID issued"),
        "{case}: refused for another reason: {}",
        status.message()
    );
}

fn forged_key_proofs_are_refused(backend: Backend) {
    let dir = test_dir(&format!("tpm-key-forgery-{backend}"));
    let a = Swtpm::start(&dir.path().join("tpm-a"));
    let b = Swtpm::start(&dir.path().join("tpm-b"));
    let server = server(&dir.path().join("server"), &a, "");
    let ta = Arc::new(Tpm::open_with(backend, &a.tcti.parse().unwrap()).unwrap());
    let tb = Arc::new(Tpm::open_with(backend, &b.tcti.parse().unwrap()).unwrap());
    let new_key = |t: &Tpm| {
        t.with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
            .unwrap()
    };
    let (key, key2) = (new_key(&ta), new_key(&ta));
    let soft = tessera_tpm::device::import::import_software_p256(&ta).unwrap();
    let certify = |t: &Tpm, k: &KeyBlob, ak: &KeyBlob, q: &[u8]| certify_key(t, k, ak, q).unwrap();

    refused(
        "no certify",
        attest(&server, &ta, &key, |_| None),
        "the agent sent no TPM2_Certify of its SVID key",
    );
    refused(
        "software key imported into the TPM",
        attest(&server, &ta, &soft, |at| {
            Some(certify(&ta, &soft, &at.ak, &at.qualifying))
        }),
        "the SVID key is not TPM-resident: its attributes lack fixedTPM, fixedParent, sensitiveDataOrigin",
    );
    refused(
        "certified by another TPM's AK",
        attest(&server, &ta, &key, |at| {
            let ak_b = tb
                .with(|d| d.create_key(&AkKind::EccP256.template()))
                .unwrap();
            let key_b = new_key(&tb);
            let mut c = certify(&tb, &key_b, &ak_b, &at.qualifying);
            // Even claiming to be the CSR's key, the signature is another AK's.
            c.public = key.public.marshal();
            Some(c)
        }),
        "the certify is not signed by this agent's attested AK",
    );
    refused(
        "certify of another key than the one sent",
        attest(&server, &ta, &key2, |at| {
            let mut c = certify(&ta, &key, &at.ak, &at.qualifying);
            c.public = key2.public.marshal();
            Some(c)
        }),
        "the certified object's name is not the name of the SVID key's public area",
    );
    refused(
        "a TPM key that is not the CSR's",
        attest(&server, &ta, &key2, |at| {
            Some(certify(&ta, &key, &at.ak, &at.qualifying))
        }),
        "the certified key is not the key in the CSR",
    );
    refused(
        "certify over another nonce",
        attest(&server, &ta, &key, |at| {
            let mut other = at.nonce.clone();
            other[0] ^= 1;
            let csr_bound = attestation_qualifying_data(&other, b"");
            Some(certify(&ta, &key, &at.ak, &csr_bound))
        }),
        "replayed, or made for another request",
    );
    assert!(agents(&server).is_empty(), "a refused agent was recorded");
    let log = server.log();
    assert!(log.contains("require_agent_key_in_tpm is set"), "{log}");

    // The genuine agent: its proof holds, the fact is recorded.
    let mut kept = None;
    let chain = attest(&server, &ta, &key, |at| {
        let c = certify(&ta, &key, &at.ak, &at.qualifying);
        kept = Some((c.clone(), at.ak.clone()));
        Some(c)
    })
    .expect("the genuine agent attests");
    let (attest_certify, ak) = kept.unwrap();
    let listed = agents(&server);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key_proof"], "tpm");
    let serial = listed[0]["x509_svid_serial"].as_str().unwrap().to_owned();

    // A replay of that attestation's certify in a new attempt: refused (each
    // attempt has a fresh AK, so the old certify is by another AK than this
    // attempt's), the record untouched.
    refused(
        "replayed attestation certify",
        attest(&server, &ta, &key, |_| Some(attest_certify.clone())),
        "the certify is not signed by this agent's attested AK",
    );

    // Renewals.
    let key3 = new_key(&ta);
    refused(
        "renewal without a certify",
        renew(&server, &ta, &chain, &key, &key3, |_| None),
        "the agent sent no TPM2_Certify of its SVID key",
    );
    refused(
        "renewal with the attestation's certify replayed",
        renew(&server, &ta, &chain, &key, &key3, |_| {
            Some(attest_certify.clone())
        }),
        "replayed, or made for another request",
    );
    refused(
        "renewal certify made for another SVID's renewal",
        renew(&server, &ta, &chain, &key, &key3, |_| {
            let stale = renewal_qualifying_data("00", b"another CSR");
            Some(certify(&ta, &key3, &ak, &stale))
        }),
        "replayed, or made for another request",
    );
    let soft2 = tessera_tpm::device::import::import_software_p256(&ta).unwrap();
    refused(
        "renewal to a software key",
        renew(&server, &ta, &chain, &key, &soft2, |q| {
            Some(certify(&ta, &soft2, &ak, q))
        }),
        "not TPM-resident",
    );
    refused(
        "renewal certified by another TPM's AK",
        renew(&server, &ta, &chain, &key, &key3, |q| {
            let ak_b = tb
                .with(|d| d.create_key(&AkKind::EccP256.template()))
                .unwrap();
            let mut c = certify(&tb, &new_key(&tb), &ak_b, q);
            c.public = key3.public.marshal();
            Some(c)
        }),
        "not signed by this agent's attested AK",
    );
    let listed = agents(&server);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["x509_svid_serial"].as_str(),
        Some(serial.as_str()),
        "a refused renewal changed the agent's SVID"
    );

    // The genuine renewal.
    let renewed = renew(&server, &ta, &chain, &key, &key3, |q| {
        Some(certify(&ta, &key3, &ak, q))
    })
    .expect("a renewal with a proper certify");
    let info = tessera_core::x509::cert_info(&renewed[0]).unwrap();
    assert_eq!(
        info.public_key_der,
        TpmKey::from_blob(ta.clone(), key3.clone())
            .unwrap()
            .public_key_der()
    );
    assert_eq!(agents(&server)[0]["key_proof"], "tpm");
}

#[test]
fn forged_key_proofs_are_refused_with_a_reason_and_nothing_issued_esapi() {
    forged_key_proofs_are_refused(Backend::Esapi);
}

#[test]
fn forged_key_proofs_are_refused_with_a_reason_and_nothing_issued_native() {
    forged_key_proofs_are_refused(Backend::Native);
}
