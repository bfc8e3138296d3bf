//! A secret sealed to the TPM (ECDH with a TPM-held key): the same TPM recomputes
//! it, after the simulator restarts too; another TPM refuses the key blob; a damaged
//! stored form is refused.

use tessera_tpm::DeviceError;
use tessera_tpm::device::sealing::SealedSecret;

use crate::common::{Sim, Which};

fn a_sealed_secret_opens_only_on_its_tpm() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let (sealed, secret) = SealedSecret::create(&tpm).unwrap();
    let (other_sealed, other_secret) = SealedSecret::create(&tpm).unwrap();
    assert_ne!(*secret, *other_secret, "two sealings gave one secret");
    let stored = sealed.to_bytes();
    let back = SealedSecret::from_bytes(&stored).unwrap();
    assert_eq!(back, sealed);
    assert_eq!(*back.unseal(&tpm).unwrap(), *secret);
    assert_eq!(*other_sealed.unseal(&tpm).unwrap(), *other_secret);
    // Another point (another sealing's) gives another secret with the same key.
    let mixed = SealedSecret {
        key: sealed.key.clone(),
        point: other_sealed.point.clone(),
    };
    assert_ne!(*mixed.unseal(&tpm).unwrap(), *secret);

    // A second TPM: the blob does not load.
    let b = Sim::start(Which::B);
    match back.unseal(&b.tpm()) {
        Err(DeviceError::ForeignKey(_)) => {}
        other => panic!("another TPM unsealed, or failed otherwise: {other:?}"),
    }

    // Damaged stored forms.
    for cut in [0, 10, stored.len() - 1] {
        assert!(SealedSecret::from_bytes(&stored[..cut]).is_err());
    }
    let mut long = stored.clone();
    long.push(0);
    assert!(SealedSecret::from_bytes(&long).is_err());
    // A point off the curve (one bit of its y flipped): refused as damaged when
    // read (so the agent seals a new key), not handed to the TPM, whose refusal
    // would read as a TPM that cannot unseal now, run after run.
    let mut off_curve = stored.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    let e = SealedSecret::from_bytes(&off_curve)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a point on P-256"), "{e}");
    let damaged = SealedSecret {
        key: sealed.key.clone(),
        point: off_curve[off_curve.len() - 65..].to_vec(),
    };
    match damaged.unseal(&tpm) {
        Err(DeviceError::ForeignKey(_) | DeviceError::Malformed(_)) => {}
        other => panic!("an off-curve point was not refused as damaged: {other:?}"),
    }
}

crate::common::per_backend!(a_sealed_secret_opens_only_on_its_tpm);

/// Every single-bit flip of the stored form (key blob and point): refused when
/// read, refused by the TPM as a key that is not its own (so the agent seals a new
/// key), or opening to another secret (so the cache does not decrypt); never an
/// error that would read as a TPM failing for now, which left the cache off at
/// every start.
fn every_flipped_bit_reads_as_damaged_not_as_a_failing_tpm() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let (sealed, secret) = SealedSecret::create(&tpm).unwrap();
    let stored = sealed.to_bytes();
    let mut transient = Vec::new();
    for i in 0..stored.len() {
        let mut bad = stored.clone();
        bad[i] ^= 0x01;
        let Ok(parsed) = SealedSecret::from_bytes(&bad) else {
            continue;
        };
        match parsed.unseal(&tpm) {
            Ok(other) => assert_ne!(*other, *secret, "byte {i} flipped still opens"),
            Err(DeviceError::ForeignKey(_) | DeviceError::Malformed(_)) => {}
            Err(e) => transient.push(format!("byte {i}: {e}")),
        }
    }
    assert!(transient.is_empty(), "{transient:#?}");
}

crate::common::per_backend!(every_flipped_bit_reads_as_damaged_not_as_a_failing_tpm);
