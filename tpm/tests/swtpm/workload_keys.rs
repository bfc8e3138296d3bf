//! Workload keys (`workload_key = tpm`): created with their own authorization
//! value, signing only with it, written as a TSS2 key file that reloads on the
//! same TPM (through either backend) and nowhere else.

use tessera_core::key::{Key, KeyError, KeyType, SignatureScheme, verify_signature};
use tessera_tpm::device::SigningScheme;
use tessera_tpm::tss2::Tss2Key;
use tessera_tpm::{Backend, TpmWorkloadKey};
use zeroize::Zeroizing;

use crate::common::{Sim, Which, backend};

fn other_backend() -> Backend {
    if backend() == Backend::Esapi {
        Backend::Native
    } else {
        Backend::Esapi
    }
}

fn workload_keys_sign_only_with_their_auth_value() {
    let a = Sim::start(Which::A);
    let tpm = a.tpm();
    for (kt, scheme) in [
        (KeyType::EcP256, SignatureScheme::EcdsaP256Sha256),
        (KeyType::Rsa2048, SignatureScheme::RsaPssSha256),
    ] {
        let key = TpmWorkloadKey::generate(tpm.clone(), kt).unwrap();
        assert_eq!(key.auth().len(), 32);
        let sig = key.sign(scheme, b"workload").unwrap();
        assert!(verify_signature(
            key.public_key_der(),
            scheme,
            b"workload",
            &sig
        ));

        // The blob alone (what another process that opens the TPM could hold):
        // the TPM refuses to sign without the value, and with a wrong one.
        let digest = scheme.hash().digest(b"workload");
        let tpm_scheme = if kt == KeyType::EcP256 {
            SigningScheme::Ecdsa(tessera_tpm::wire::HashAlg::Sha256)
        } else {
            SigningScheme::RsaPss(tessera_tpm::wire::HashAlg::Sha256)
        };
        for wrong in [&b""[..], b"wrong-password", &key.auth()[..31]] {
            let err = tpm
                .with(|dev| dev.sign_with_auth(key.blob(), wrong, &digest, tpm_scheme))
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("TPM2_Sign") && text.to_lowercase().contains("auth"),
                "{text}"
            );
        }
        // The agent's own path (no auth) is refused too.
        assert!(
            tpm.with(|dev| dev.sign(key.blob(), &digest, tpm_scheme))
                .is_err()
        );
        // And the right value still works afterwards (no lockout: noDA).
        key.sign(scheme, b"again").unwrap();
    }
}

fn tss2_files_reload_through_both_backends_and_not_on_another_tpm() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    // One connection to a simulator at a time: the key (and its context) is
    // dropped before another backend connects.
    let (pem, auth, spki) = {
        let key = TpmWorkloadKey::generate(a.tpm(), KeyType::EcP256).unwrap();
        (
            key.tss2_pem(),
            Zeroizing::new(key.auth().to_vec()),
            key.public_key_der().to_vec(),
        )
    };
    let parsed = Tss2Key::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(parsed.empty_auth, Some(false));
    assert_eq!(parsed.parent, 0x4000_0001);

    for which in [backend(), other_backend()] {
        let again =
            TpmWorkloadKey::from_tss2_pem(a.tpm_with(which), pem.as_bytes(), auth.clone()).unwrap();
        assert_eq!(again.public_key_der(), spki.as_slice());
        let sig = again.sign_default(b"reloaded").unwrap();
        assert!(verify_signature(
            &spki,
            SignatureScheme::EcdsaP256Sha256,
            b"reloaded",
            &sig
        ));
    }

    // The same file and value on another TPM: refused, by name.
    let foreign = TpmWorkloadKey::from_tss2_pem(b.tpm(), pem.as_bytes(), auth).unwrap();
    let err = foreign.sign_default(b"elsewhere").unwrap_err();
    assert!(matches!(err, KeyError::Backend(_)), "{err}");
    assert!(
        err.to_string().contains("does not belong to this TPM"),
        "{err}"
    );
}

fn bad_auth_values_are_refused_before_the_tpm() {
    let a = Sim::start(Which::A);
    let tpm = a.tpm();
    let template = tessera_tpm::device::signing_key_template(KeyType::EcP256);
    for bad in [&b""[..], &[7u8; 33][..], b"ends-in-zero\0"] {
        let err = tpm
            .with(|dev| dev.create_key_with_auth(&template, bad))
            .unwrap_err();
        assert!(err.to_string().contains("authorization value"), "{err}");
    }
}

crate::common::per_backend!(
    workload_keys_sign_only_with_their_auth_value,
    tss2_files_reload_through_both_backends_and_not_on_another_tpm,
    bad_auth_values_are_refused_before_the_tpm,
);
