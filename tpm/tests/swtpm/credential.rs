//! Software MakeCredential against swtpm's TPM2_ActivateCredential, for every EK
//! type swtpm can hold, and the cases where activation must fail.

use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::credential::make_credential;
use tessera_tpm::verifier::ek::{EkKind, EkTemplate, check_ek_public};

use crate::common::{Sim, Which};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn software_credential_activates_in_swtpm_for_every_ek_type() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let mut dev = tpm.lock().unwrap();
    let ak = dev.create_key(&AkKind::EccP256.template()).unwrap();
    for (kind, template) in [
        (EkKind::Rsa2048, EkTemplate::L1),
        (EkKind::EccP256, EkTemplate::L2),
        (EkKind::EccP384, EkTemplate::H3),
    ] {
        let ek = dev.ek_public(kind).unwrap();
        assert_eq!(check_ek_public(&ek).unwrap(), template, "{kind}");
        let blob = make_credential(&ek, &ak.public.name(), SECRET).unwrap();
        let opened = dev
            .activate_credential(&ak, kind, &blob)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(opened.as_slice(), SECRET, "{kind}");
        // Each credential is fresh: the same secret seals differently every time.
        let again = make_credential(&ek, &ak.public.name(), SECRET).unwrap();
        assert_ne!(again, blob);
    }
}

fn credential_is_bound_to_the_ak_name() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let mut dev = tpm.lock().unwrap();
    let ak1 = dev.create_key(&AkKind::EccP256.template()).unwrap();
    let ak2 = dev.create_key(&AkKind::EccP256.template()).unwrap();
    let ek = dev.ek_public(EkKind::EccP256).unwrap();
    let blob = make_credential(&ek, &ak1.public.name(), SECRET).unwrap();
    let err = dev
        .activate_credential(&ak2, EkKind::EccP256, &blob)
        .unwrap_err();
    assert!(err.to_string().contains("TPM2_ActivateCredential"), "{err}");
}

fn credential_for_one_tpm_does_not_activate_in_another() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let tpm_a = a.tpm();
    let tpm_b = b.tpm();
    for kind in [EkKind::Rsa2048, EkKind::EccP256, EkKind::EccP384] {
        let ek_a = tpm_a.with(|d| d.ek_public(kind)).unwrap();
        let ek_b = tpm_b.with(|d| d.ek_public(kind)).unwrap();
        assert_ne!(ek_a, ek_b, "two provisioned TPMs must have different EKs");
        // An attacker with an AK in TPM B claims TPM A's EK: the credential is made
        // for A's EK and B's AK, and B cannot open it.
        let ak_b = tpm_b
            .with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap();
        let blob = make_credential(&ek_a, &ak_b.public.name(), SECRET).unwrap();
        let err = tpm_b
            .with(|d| d.activate_credential(&ak_b, kind, &blob))
            .unwrap_err();
        assert!(
            err.to_string().contains("ActivateCredential"),
            "{kind}: {err}"
        );
    }
}

crate::common::per_backend!(
    software_credential_activates_in_swtpm_for_every_ek_type,
    credential_is_bound_to_the_ak_name,
    credential_for_one_tpm_does_not_activate_in_another,
);
