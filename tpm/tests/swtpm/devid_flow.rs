//! The tpm_devid attestor end to end: the agent half on swtpm, the server half pure,
//! messages through JSON, and every refusal the server must make.

use std::sync::Arc;

use tessera_core::key::KeyType;
use tessera_tpm::attestation::tpm_devid::{
    self, DevIdIdentity, DevIdPayload, DevIdResponse, DevIdVerifier, NONCE_CONTEXT,
};
use tessera_tpm::attestation::{AgentState as _, Pending as _, Verifier as _};
use tessera_tpm::device::{SigningScheme, signing_key_template};
use tessera_tpm::provision::{DevIdRequest, load_devid, provision_devid};
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::ek::EkKind;
use tessera_tpm::wire::hex;
use tessera_tpm::{AgentOptions, AttestError, Tpm};

use crate::common::{Sim, VendorCaFiles, Which, via_json};

fn provision(
    sim: &Sim,
    tpm: &Arc<Tpm>,
    ca: &VendorCaFiles,
    key_type: KeyType,
    cn: &str,
) -> DevIdIdentity {
    let dir = sim.path().join("devid");
    let request = DevIdRequest {
        key_type,
        common_name: cn.into(),
        validity_days: 30,
    };
    let made = provision_devid(tpm, &request, &ca.ca(), &dir).unwrap();
    let loaded = load_devid(&dir).unwrap();
    assert_eq!(loaded.chain, made.chain);
    assert_eq!(loaded.key, made.key);
    loaded
}

fn sha1_hex(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

fn run(
    tpm: &Tpm,
    identity: &DevIdIdentity,
    options: &AgentOptions,
    verifier: &DevIdVerifier,
) -> Result<tessera_tpm::NodeAttestation, AttestError> {
    let (payload, state) = tpm_devid::build_payload(tpm, identity, options)?;
    let (challenge, pending) = verifier.start(&via_json(&payload))?;
    let response = state.answer(tpm, &via_json(&challenge))?;
    pending.finish(&via_json(&response))
}

fn devid_attestation_succeeds_for_rsa_and_ecc_devids_aks_and_eks() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let vendor = VendorCaFiles::new("Tessera Test Vendor CA");
    let verifier = DevIdVerifier::new(vendor.pool(), sim.ek_pool());
    for (devid_type, ak, ek) in [
        (KeyType::EcP256, AkKind::EccP256, None),
        (KeyType::Rsa2048, AkKind::Rsa2048, Some(EkKind::EccP256)),
        (KeyType::EcP384, AkKind::EccP256, Some(EkKind::EccP384)),
    ] {
        let identity = provision(&sim, &tpm, &vendor, devid_type, "device-0001");
        let options = AgentOptions { ek, ak };
        let result = run(&tpm, &identity, &options, &verifier)
            .unwrap_or_else(|e| panic!("{devid_type} / {ak} / {ek:?}: {e}"));
        let leaf = &identity.chain[0];
        assert_eq!(result.agent_path, format!("tpm_devid/{}", sha1_hex(leaf)));
        let selectors: Vec<String> = result.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            selectors,
            vec![
                "tpm_devid:subject:cn:device-0001".to_owned(),
                "tpm_devid:issuer:cn:Tessera Test Vendor CA".to_owned(),
                format!("tpm_devid:ca:fingerprint:{}", sha1_hex(&vendor.cert_der)),
            ]
        );
    }
}

/// A payload, challenge and pending state from TPM `a`, for the refusal tests.
struct Attempt {
    payload: DevIdPayload,
    state: tpm_devid::DevIdAgentState,
}

fn attempt(tpm: &Tpm, identity: &DevIdIdentity) -> Attempt {
    let (payload, state) =
        tpm_devid::build_payload(tpm, identity, &AgentOptions::default()).unwrap();
    Attempt { payload, state }
}

fn devid_refusals() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let (tpm_a, tpm_b) = (a.tpm(), b.tpm());
    let vendor = VendorCaFiles::new("Vendor CA");
    let other_vendor = VendorCaFiles::new("Vendor CA");
    let id_a = provision(&a, &tpm_a, &vendor, KeyType::EcP256, "device-a");
    let id_b = provision(&b, &tpm_b, &vendor, KeyType::EcP256, "device-b");
    let verifier = DevIdVerifier::new(vendor.pool(), a.ek_pool());

    // DevID from an untrusted CA.
    let untrusting = DevIdVerifier::new(other_vendor.pool(), a.ek_pool());
    let at = attempt(&tpm_a, &id_a);
    let err = untrusting.start(&at.payload).unwrap_err();
    assert!(matches!(err, AttestError::DevIdCertificate(_)), "{err}");
    assert!(
        err.to_string().contains("does not chain to a trusted CA"),
        "{err}"
    );

    // EK certificate from an untrusted CA (B's local CA is not A's manufacturer).
    let err = DevIdVerifier::new(vendor.pool(), b.ek_pool())
        .start(&at.payload)
        .unwrap_err();
    assert!(matches!(err, AttestError::EkCertificate(_)), "{err}");

    // An EK certificate that does not match the EK public key (B's certificate,
    // presented with A's EK; trusted CA, wrong key).
    let at_b = attempt(&tpm_b, &id_b);
    let mut swapped = at.payload.clone();
    swapped.ek_certificate = at_b.payload.ek_certificate.clone();
    let both = tessera_tpm::verifier::chain::CaPool::new(vec![a.ek_root(), b.ek_root()])
        .unwrap()
        .with_intermediates(vec![a.ek_intermediate(), b.ek_intermediate()])
        .unwrap();
    let err = DevIdVerifier::new(vendor.pool(), both)
        .start(&swapped)
        .unwrap_err();
    assert!(matches!(err, AttestError::EkCertificateMismatch), "{err}");

    // A Certify from a second swtpm, presented with the first TPM's AK.
    let mut foreign_certify = at.payload.clone();
    foreign_certify.certify_info = at_b.payload.certify_info.clone();
    foreign_certify.certify_signature = at_b.payload.certify_signature.clone();
    let err = verifier.start(&foreign_certify).unwrap_err();
    assert!(matches!(err, AttestError::Certify(_)), "{err}");
    assert!(
        err.to_string().contains("does not verify with the AK"),
        "{err}"
    );

    // The DevID of one TPM certified by another TPM's AK: B's AK certifies only B's
    // keys, so A's DevID with B's AK and Certify names the wrong object.
    let mut borrowed_ak = at.payload.clone();
    borrowed_ak.ak_public = at_b.payload.ak_public.clone();
    borrowed_ak.certify_info = at_b.payload.certify_info.clone();
    borrowed_ak.certify_signature = at_b.payload.certify_signature.clone();
    let err = verifier.start(&borrowed_ak).unwrap_err();
    assert!(err.to_string().contains("certified object name"), "{err}");

    // An activation answer from another TPM: B answers its own challenge, and that
    // answer is sent for A's attempt.
    let (_challenge_a, pending_a) = verifier.start(&at.payload).unwrap();
    let verifier_b = DevIdVerifier::new(vendor.pool(), b.ek_pool());
    let (challenge_b, _pending_b) = verifier_b.start(&at_b.payload).unwrap();
    let response_b = at_b.state.answer(&tpm_b, &challenge_b).unwrap();
    let err = pending_a.finish(&response_b).unwrap_err();
    assert!(matches!(err, AttestError::ActivationFailed), "{err}");

    // A replayed response: attempt 1 succeeds; its response, sent for attempt 2 of
    // the same agent, fails (attempt 1's pending state is gone with its success).
    let (challenge_1, pending_1) = verifier.start(&at.payload).unwrap();
    let response_1 = at.state.answer(&tpm_a, &challenge_1).unwrap();
    pending_1.finish(&response_1).unwrap();
    let again = attempt(&tpm_a, &id_a);
    let (_challenge_2, pending_2) = verifier.start(&again.payload).unwrap();
    let err = pending_2.finish(&response_1).unwrap_err();
    assert!(matches!(err, AttestError::ActivationFailed), "{err}");

    // A nonce signed by the wrong key (another key in the same TPM), with the right
    // activation answer.
    let (challenge_3, pending_3) = verifier.start(&again.payload).unwrap();
    let honest = again.state.answer(&tpm_a, &challenge_3).unwrap();
    let impostor = tpm_a
        .with(|d| {
            let key = d.create_key(&signing_key_template(KeyType::EcP256))?;
            let scheme = SigningScheme::default_for(&key.public);
            let digest = scheme.hash().digest(&[NONCE_CONTEXT, &challenge_3.nonce]);
            d.sign(&key, &digest, scheme)
        })
        .unwrap();
    let forged = DevIdResponse {
        nonce_signature: impostor.marshal(),
        activated_secret: honest.activated_secret.clone(),
    };
    let err = pending_3.finish(&forged).unwrap_err();
    assert!(matches!(err, AttestError::NonceSignature(_)), "{err}");

    // A DevID certificate for one key presented with another key's public area.
    let mut wrong_key = again.payload.clone();
    wrong_key.devid_public = at_b.payload.devid_public.clone();
    assert!(matches!(
        verifier.start(&wrong_key).unwrap_err(),
        AttestError::DevIdKeyMismatch
    ));

    // Garbage in any field is refused with the field's name, never a panic.
    let mut garbage = again.payload.clone();
    garbage.ak_public.truncate(10);
    let err = verifier.start(&garbage).unwrap_err();
    assert!(err.to_string().contains("AK public area"), "{err}");
}

crate::common::per_backend!(
    devid_attestation_succeeds_for_rsa_and_ecc_devids_aks_and_eks,
    devid_refusals,
);
