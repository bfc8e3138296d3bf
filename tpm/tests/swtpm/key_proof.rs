//! The agent-key proof on swtpm: a key the TPM made, certified by the TPM's AK,
//! passes `verify_key_proof`; a software key imported into the TPM, a certify by
//! another TPM's AK, a certify of another key than the one sent, a key that is not
//! the CSR's, and a certify made for another request are each refused with their
//! own reason.

use tessera_core::key::KeyType;
use tessera_tpm::device::signing_key_template;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::key_proof::{
    KeyCertify, KeyProofError, attestation_qualifying_data, renewal_qualifying_data,
    verify_key_proof,
};
use tessera_tpm::wire::PublicArea;
use tessera_tpm::{KeyBlob, Tpm};

use crate::common::{Sim, Which};

fn certify(tpm: &Tpm, key: &KeyBlob, ak: &KeyBlob, qualifying: &[u8]) -> KeyCertify {
    tessera_tpm::attestation::key_proof::certify_key(tpm, key, ak, qualifying).unwrap()
}

fn imported_software_key(tpm: &Tpm) -> KeyBlob {
    tessera_tpm::device::import::import_software_p256(tpm).unwrap()
}

fn spki(public: &PublicArea) -> Vec<u8> {
    public.spki().unwrap()
}

fn tpm_born_keys_pass_and_every_forgery_is_refused_with_its_reason() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let (tpm, other) = (a.tpm(), b.tpm());
    let (ak, key, key2) = tpm
        .with(|d| {
            Ok((
                d.create_key(&AkKind::EccP256.template())?,
                d.create_key(&signing_key_template(KeyType::EcP256))?,
                d.create_key(&signing_key_template(KeyType::EcP256))?,
            ))
        })
        .unwrap();
    let csr = b"the CSR";
    let q = attestation_qualifying_data(b"server nonce", csr);

    // A key the TPM made: proven.
    let good = certify(&tpm, &key, &ak, &q);
    verify_key_proof(&ak.public, &good, &q, &spki(&key.public)).unwrap();
    // At renewal too, bound to the serial the agent authenticates with.
    let r = renewal_qualifying_data("0a1b", csr);
    let renewal = certify(&tpm, &key, &ak, &r);
    verify_key_proof(&ak.public, &renewal, &r, &spki(&key.public)).unwrap();

    // A software key imported into the TPM: the TPM certifies it, and its
    // attributes say it was not born there.
    let soft = imported_software_key(&tpm);
    tpm.with(|d| d.check_key(&soft)).unwrap();
    let proof = certify(&tpm, &soft, &ak, &q);
    let err = verify_key_proof(&ak.public, &proof, &q, &spki(&soft.public)).unwrap_err();
    assert_eq!(
        err,
        KeyProofError::NotResident("fixedTPM, fixedParent, sensitiveDataOrigin".into())
    );
    assert!(err.to_string().contains("not TPM-resident"), "{err}");

    // A certify by another TPM's AK (of that TPM's key).
    let (ak_b, key_b) = other
        .with(|d| {
            Ok((
                d.create_key(&AkKind::EccP256.template())?,
                d.create_key(&signing_key_template(KeyType::EcP256))?,
            ))
        })
        .unwrap();
    let foreign = certify(&other, &key_b, &ak_b, &q);
    let err = verify_key_proof(&ak.public, &foreign, &q, &spki(&key_b.public)).unwrap_err();
    assert!(matches!(err, KeyProofError::Signature(_)), "{err}");
    // Another TPM cannot even load this TPM's key to certify it with its own AK.
    assert!(other.with(|d| d.certify(&key, &ak_b, &q)).is_err());

    // The certify of one key sent with another key's public area.
    let swapped = KeyCertify {
        public: key2.public.marshal(),
        ..good.clone()
    };
    assert_eq!(
        verify_key_proof(&ak.public, &swapped, &q, &spki(&key2.public)),
        Err(KeyProofError::NameMismatch)
    );

    // A TPM key, properly certified, that is not the CSR's key.
    assert_eq!(
        verify_key_proof(&ak.public, &good, &q, &spki(&key2.public)),
        Err(KeyProofError::KeyMismatch)
    );

    // A certify made for another request: another nonce, another CSR, the
    // attestation's certify replayed at a renewal, a renewal's at another renewal.
    for other_q in [
        attestation_qualifying_data(b"another nonce", csr),
        attestation_qualifying_data(b"server nonce", b"another CSR"),
        renewal_qualifying_data("0a1b", csr),
    ] {
        assert_eq!(
            verify_key_proof(&ak.public, &good, &other_q, &spki(&key.public)),
            Err(KeyProofError::Replayed)
        );
    }
    assert_eq!(
        verify_key_proof(
            &ak.public,
            &renewal,
            &renewal_qualifying_data("0c3d", csr),
            &spki(&key.public)
        ),
        Err(KeyProofError::Replayed)
    );
}

crate::common::per_backend!(tpm_born_keys_pass_and_every_forgery_is_refused_with_its_reason);
