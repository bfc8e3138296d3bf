//! The tpm (EK) attestor end to end, trusted by certificate or by allow-list.

use tessera_tpm::attestation::tpm_ek::{self, EkAllowList, EkPayload, EkVerifier, ek_pub_hash};
use tessera_tpm::attestation::{AgentState as _, Pending as _, Verifier as _};
use tessera_tpm::verifier::chain::CaPool;
use tessera_tpm::verifier::ek::EkKind;
use tessera_tpm::wire::{HashAlg, hex};
use tessera_tpm::{AgentOptions, AttestError, NodeAttestation, Tpm};

use crate::common::{Sim, Which, via_json};

fn run(
    tpm: &Tpm,
    options: &AgentOptions,
    verifier: &EkVerifier,
    strip_cert: bool,
) -> Result<NodeAttestation, AttestError> {
    let (mut payload, state) = tpm_ek::build_payload(tpm, options)?;
    if strip_cert {
        payload.ek_certificate = None;
    }
    let (challenge, pending) = verifier.start(&via_json(&payload))?;
    let response = state.answer(tpm, &via_json(&challenge))?;
    pending.finish(&via_json(&response))
}

fn ek_attestation_by_certificate_for_every_ek_type() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let verifier = EkVerifier::new(sim.ek_pool(), None);
    for kind in EkKind::ALL {
        let options = AgentOptions {
            ek: Some(kind),
            ..Default::default()
        };
        let result =
            run(&tpm, &options, &verifier, false).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let cert = tpm
            .with(|d| d.nv_read(kind.cert_nv_index()))
            .unwrap()
            .unwrap();
        // The hash is the SHA-256 of the certificate's SubjectPublicKeyInfo DER.
        let spki = tessera_tpm::verifier::chain::spki_of(&cert).unwrap();
        let hash = hex(&HashAlg::Sha256.digest(&[&spki]));
        assert_eq!(result.agent_path, format!("tpm/{hash}"));
        let selectors: Vec<String> = result.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            selectors,
            vec![
                format!("tpm:pub_hash:{hash}"),
                "tpm:manufacturer:id:00001014".to_owned(),
                "tpm:model:swtpm".to_owned(),
                "tpm:version:id:20191023".to_owned(),
            ]
        );
    }
}

fn ek_attestation_by_allow_list_and_its_refusals() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let (tpm_a, tpm_b) = (a.tpm(), b.tpm());
    let ek_a = tpm_a.with(|d| d.ek_public(EkKind::Rsa2048)).unwrap();
    let hash_a = ek_pub_hash(&ek_a).unwrap();
    let ek_b = tpm_b.with(|d| d.ek_public(EkKind::Rsa2048)).unwrap();
    let hash_b = ek_pub_hash(&ek_b).unwrap();

    let lists = tempfile::tempdir().unwrap();
    let file = lists.path().join("trusted-eks");
    std::fs::write(&file, format!("# lab\n{hash_b}\n")).unwrap();
    let verifier = EkVerifier::new(CaPool::default(), Some(EkAllowList::open(&file).unwrap()));
    let options = AgentOptions {
        ek: Some(EkKind::Rsa2048),
        ..Default::default()
    };

    // Not on the list (and no certificate presented).
    let err = run(&tpm_a, &options, &verifier, true).unwrap_err();
    assert!(matches!(err, AttestError::EkNotTrusted { .. }), "{err}");
    assert!(err.to_string().contains("not on the allow-list"), "{err}");
    assert!(err.to_string().contains(&hash_a), "{err}");

    // Listed: the file is re-read on use, no restart needed.
    std::fs::write(&file, format!("# lab\n{hash_b}\n{hash_a} # rack 4\n")).unwrap();
    let result = run(&tpm_a, &options, &verifier, true).unwrap();
    assert_eq!(result.agent_path, format!("tpm/{hash_a}"));
    let selectors: Vec<String> = result.selectors.iter().map(|s| s.to_string()).collect();
    assert_eq!(selectors, vec![format!("tpm:pub_hash:{hash_a}")]);

    // An EK certificate from an untrusted CA is no reason to trust an unlisted EK.
    let by_cert_b = EkVerifier::new(b.ek_pool(), None);
    let err = run(&tpm_a, &options, &by_cert_b, false).unwrap_err();
    assert!(matches!(err, AttestError::EkNotTrusted { .. }), "{err}");
    assert!(
        err.to_string().contains("does not chain to a trusted CA"),
        "{err}"
    );

    // An EK certificate that does not match the EK public key.
    let (mut payload, _state) = tpm_ek::build_payload(&tpm_a, &options).unwrap();
    payload.ek_certificate = tpm_b
        .with(|d| d.nv_read(EkKind::Rsa2048.cert_nv_index()))
        .unwrap();
    let err = EkVerifier::new(b.ek_pool(), None)
        .start(&payload)
        .unwrap_err();
    assert!(matches!(err, AttestError::EkCertificateMismatch), "{err}");

    // An activation answer from another TPM: B answers its own challenge, the
    // answer is sent for A's attempt.
    let both = EkVerifier::new(
        CaPool::default(),
        Some(EkAllowList::from_hashes([&hash_a, &hash_b]).unwrap()),
    );
    let (payload_a, _state_a) = tpm_ek::build_payload(&tpm_a, &options).unwrap();
    let (payload_b, state_b) = tpm_ek::build_payload(&tpm_b, &options).unwrap();
    let (_challenge_a, pending_a) = both.start(&payload_a).unwrap();
    let (challenge_b, _pending_b) = both.start(&payload_b).unwrap();
    let answer_b = state_b.answer(&tpm_b, &challenge_b).unwrap();
    let err = pending_a.finish(&answer_b).unwrap_err();
    assert!(matches!(err, AttestError::ActivationFailed), "{err}");

    // A replayed answer: good for its own attempt only.
    let (payload, state) = tpm_ek::build_payload(&tpm_a, &options).unwrap();
    let (challenge_1, pending_1) = both.start(&payload).unwrap();
    let answer_1 = state.answer(&tpm_a, &challenge_1).unwrap();
    pending_1.finish(&answer_1).unwrap();
    let (_challenge_2, pending_2) = both.start(&payload).unwrap();
    assert!(matches!(
        pending_2.finish(&answer_1).unwrap_err(),
        AttestError::ActivationFailed
    ));

    // Removing an EK from the list revokes it at the next attestation.
    std::fs::write(&file, format!("{hash_b}\n")).unwrap();
    assert!(run(&tpm_a, &options, &verifier, true).is_err());
}

fn malformed_payloads_are_refused_by_field() {
    let verifier = EkVerifier::new(CaPool::default(), None);
    let rsa = tessera_tpm::verifier::ek::EkKind::Rsa2048
        .template()
        .marshal();
    for (ek_public, ak_public, field) in [
        (vec![], vec![], "EK public area"),
        (rsa[..20].to_vec(), vec![], "EK public area"),
        (rsa.clone(), vec![0, 1], "AK public area"),
    ] {
        let payload = EkPayload {
            ek_public,
            ek_certificate: None,
            ak_public,
        };
        let err = verifier.start(&payload).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    // A JSON payload with bad base64 fails to decode, not to panic.
    assert!(
        serde_json::from_str::<EkPayload>(
            r#"{"ek_public":"@@","ek_certificate":null,"ak_public":""}"#
        )
        .is_err()
    );
}

crate::common::per_backend!(
    ek_attestation_by_certificate_for_every_ek_type,
    ek_attestation_by_allow_list_and_its_refusals,
    malformed_payloads_are_refused_by_field,
);
