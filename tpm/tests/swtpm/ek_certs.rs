//! EK certificates as swtpm_setup and scripts/swtpm.sh leave them in NV.

use tessera_tpm::attestation::public_matches_spki;
use tessera_tpm::verifier::chain::{CaPool, ChainError, LeafProfile, spki_of, verify_chain};
use tessera_tpm::verifier::ek::{EkKind, tpm_identity};

use crate::common::{Sim, Which};

fn ek_certificates_match_their_keys_and_chain_to_the_local_ca_root() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let pool = sim.ek_pool();
    for kind in EkKind::ALL {
        let (cert, public) = tpm
            .with(|d| Ok((d.nv_read(kind.cert_nv_index())?, d.ek_public(kind)?)))
            .unwrap();
        let cert = cert.unwrap_or_else(|| panic!("no {kind} EK certificate in NV"));
        assert!(
            public_matches_spki(&public, &spki_of(&cert).unwrap()),
            "{kind}: certificate key differs from the EK"
        );
        // Byte for byte the same SubjectPublicKeyInfo, so the tpm_ek hash of the
        // public area is the hash of the certificate's key.
        assert_eq!(public.spki().unwrap(), spki_of(&cert).unwrap(), "{kind}");
        let chain = verify_chain(&cert, &[], &pool, LeafProfile::EndorsementKey)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(chain.cas, vec![sim.ek_intermediate(), sim.ek_root()]);
        let id = tpm_identity(&cert).unwrap();
        assert_eq!(id.manufacturer.as_deref(), Some("id:00001014"));
        assert_eq!(id.model.as_deref(), Some("swtpm"));
        assert_eq!(id.version.as_deref(), Some("id:20191023"));
    }
    // Only the root is an anchor: without the intermediate there is no path.
    let root_only = CaPool::new(vec![sim.ek_root()]).unwrap();
    let cert = tpm
        .with(|d| d.nv_read(EkKind::Rsa2048.cert_nv_index()))
        .unwrap()
        .unwrap();
    assert!(matches!(
        verify_chain(&cert, &[], &root_only, LeafProfile::EndorsementKey),
        Err(ChainError::Untrusted { .. })
    ));
}

fn another_simulators_local_ca_is_not_trusted() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let cert_b = b
        .tpm()
        .with(|d| d.nv_read(EkKind::EccP384.cert_nv_index()))
        .unwrap()
        .unwrap();
    let err = verify_chain(&cert_b, &[], &a.ek_pool(), LeafProfile::EndorsementKey).unwrap_err();
    assert!(matches!(err, ChainError::Untrusted { .. }), "{err}");
}

crate::common::per_backend!(
    ek_certificates_match_their_keys_and_chain_to_the_local_ca_root,
    another_simulators_local_ca_is_not_trusted,
);
