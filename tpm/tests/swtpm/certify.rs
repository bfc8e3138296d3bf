//! TPM2_Certify made by swtpm, checked by the verifier half.

use tessera_core::key::KeyType;
use tessera_tpm::device::signing_key_template;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::certify::{CertifyError, verify_certify};

use crate::common::{Sim, Which};

fn certify_from_swtpm_verifies_for_rsa_and_ecc_aks() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let mut dev = tpm.lock().unwrap();
    let devid = dev
        .create_key(&signing_key_template(KeyType::EcP256))
        .unwrap();
    for ak_kind in [AkKind::EccP256, AkKind::Rsa2048] {
        let ak = dev.create_key(&ak_kind.template()).unwrap();
        let out = dev.certify(&devid, &ak, b"qualifying").unwrap();
        let attest = verify_certify(
            &ak.public,
            &out.attest,
            &out.signature,
            &devid.public.name(),
            b"qualifying",
        )
        .unwrap_or_else(|e| panic!("{ak_kind}: {e}"));
        assert_eq!(attest.extra_data, b"qualifying");
        // The wrong expectations are each refused.
        assert_eq!(
            verify_certify(
                &ak.public,
                &out.attest,
                &out.signature,
                &ak.public.name(),
                b"qualifying"
            ),
            Err(CertifyError::WrongObject)
        );
        assert_eq!(
            verify_certify(
                &ak.public,
                &out.attest,
                &out.signature,
                &devid.public.name(),
                b"other"
            ),
            Err(CertifyError::WrongQualifyingData)
        );
        let mut tampered = out.attest.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            verify_certify(
                &ak.public,
                &tampered,
                &out.signature,
                &devid.public.name(),
                b"qualifying"
            ),
            Err(CertifyError::Signature(_))
        ));
        // An unrestricted signing key is not an AK, whatever it signed.
        assert!(matches!(
            verify_certify(
                &devid.public,
                &out.attest,
                &out.signature,
                &devid.public.name(),
                b"qualifying"
            ),
            Err(CertifyError::Ak(_))
        ));
    }
}

fn certify_from_a_second_swtpm_fails_against_the_first_ak() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let (tpm_a, tpm_b) = (a.tpm(), b.tpm());
    let ak_a = tpm_a
        .with(|d| d.create_key(&AkKind::EccP256.template()))
        .unwrap();
    let (devid_b, out_b) = tpm_b
        .with(|d| {
            let devid = d.create_key(&signing_key_template(KeyType::EcP256))?;
            let ak = d.create_key(&AkKind::EccP256.template())?;
            let out = d.certify(&devid, &ak, &[])?;
            Ok((devid, out))
        })
        .unwrap();
    let err = verify_certify(
        &ak_a.public,
        &out_b.attest,
        &out_b.signature,
        &devid_b.public.name(),
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, CertifyError::Signature(_)), "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

crate::common::per_backend!(
    certify_from_swtpm_verifies_for_rsa_and_ecc_aks,
    certify_from_a_second_swtpm_fails_against_the_first_ak,
);
