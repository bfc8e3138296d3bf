//! Many operations, failures in the middle, several threads, damaged key blobs.

use std::process::Command;

use tessera_tpm::ek::EkKind;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::credential::make_credential;

use super::*;

/// The transient objects loaded in the simulator, read with tpm2-tools (the
/// backend's own connection must be closed: swtpm serves one at a time).
fn transient_handles(sim: &Sim) -> usize {
    let out = Command::new("tpm2_getcap")
        .args(["-T", &sim.env["TPM_TCTI"], "handles-transient"])
        .output()
        .expect("tpm2-tools must be installed (apt-get install tpm2-tools)");
    assert!(
        out.status.success(),
        "tpm2_getcap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("0x80"))
        .count()
}

#[test]
fn two_hundred_operations_and_failures_leave_no_object_loaded() {
    let sim = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let foreign = b
        .tpm_with(tessera_tpm::Backend::Native)
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    drop(b);
    let tcti = sim.tcti();
    guarded("200 operations", move || {
        let tpm = Tpm::new(Box::new(NativeDevice::open(&tcti).unwrap()));
        let ak = tpm
            .with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap();
        let other_ak = tpm
            .with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap();
        let key = tpm
            .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
            .unwrap();
        let ek = tpm.with(|d| d.ek_public(EkKind::EccP256)).unwrap();
        for i in 0..200 {
            let what = format!("operation {i}");
            match i % 5 {
                0 => sign_checked(&tpm, &key, what.as_bytes()).unwrap(),
                1 => {
                    tpm.with(|d| d.certify(&key, &ak, b"nonce")).unwrap();
                }
                2 if i % 20 == 2 => {
                    let blob = make_credential(&ek, &ak.public.name(), b"secret").unwrap();
                    let s = tpm
                        .with(|d| d.activate_credential(&ak, EkKind::EccP256, &blob))
                        .unwrap();
                    assert_eq!(s.as_slice(), b"secret");
                }
                2 => {
                    // A credential for another AK: refused by the TPM.
                    let blob = make_credential(&ek, &other_ak.public.name(), b"x").unwrap();
                    let e = tpm
                        .with(|d| d.activate_credential(&ak, EkKind::EccP256, &blob))
                        .unwrap_err();
                    assert!(message(&e).contains("TPM2_ActivateCredential"), "{e}");
                }
                3 => {
                    let e = tpm
                        .with(|d| {
                            d.sign(
                                &foreign,
                                &digest(b"x"),
                                SigningScheme::Ecdsa(HashAlg::Sha256),
                            )
                        })
                        .unwrap_err();
                    assert!(matches!(e, DeviceError::ForeignKey(_)), "{what}: {e}");
                }
                _ => {
                    let e = tpm
                        .with(|d| d.certify(&ak, &foreign, b"nonce"))
                        .unwrap_err();
                    assert!(matches!(e, DeviceError::ForeignKey(_)), "{what}: {e}");
                }
            }
        }
    });
    assert_eq!(transient_handles(&sim), 0, "objects left loaded");
}

#[test]
fn four_threads_sign_through_one_tpm() {
    let sim = Sim::start(Which::A);
    let tpm = Arc::new(Tpm::new(Box::new(NativeDevice::open(&sim.tcti()).unwrap())));
    let key = tpm
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    guarded("4 threads x 50 signs", move || {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (tpm, key) = (tpm.clone(), key.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        sign_checked(&tpm, &key, format!("thread {t} sign {i}").as_bytes())
                            .unwrap_or_else(|e| panic!("thread {t} sign {i}: {e}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a signing thread panicked");
        }
    });
}

#[test]
fn damaged_key_blobs_are_refused_clearly() {
    let sim = Sim::start(Which::A);
    let tpm = Arc::new(Tpm::new(Box::new(NativeDevice::open(&sim.tcti()).unwrap())));
    let (a, b) = tpm
        .with(|d| {
            let t = signing_key_template(KeyType::EcP256);
            Ok((d.create_key(&t)?, d.create_key(&t)?))
        })
        .unwrap();
    let bytes = a.to_bytes();
    for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
        let e = KeyBlob::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(e.to_string().contains("key blob"), "cut at {cut}: {e}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let e = KeyBlob::from_bytes(&longer).unwrap_err();
    assert!(e.to_string().contains("key blob"), "trailing byte: {e}");
    // a's public area with b's private part: the TPM's integrity check refuses it.
    let swapped = KeyBlob {
        public: a.public.clone(),
        private: b.private.clone(),
    };
    let t = tpm.clone();
    let e = guarded("load a swapped blob", move || {
        t.with(|d| {
            d.sign(
                &swapped,
                &digest(b"x"),
                SigningScheme::Ecdsa(HashAlg::Sha256),
            )
        })
    })
    .unwrap_err();
    assert!(
        matches!(e, DeviceError::ForeignKey(_)),
        "swapped private: {e}"
    );
    // One bit of the private part flipped: the same.
    let mut flipped = a.clone();
    let n = flipped.private.len();
    flipped.private[n - 1] ^= 1;
    let e = guarded("load a damaged blob", move || {
        tpm.with(|d| d.check_key(&flipped))
    })
    .unwrap_err();
    assert!(
        matches!(e, DeviceError::ForeignKey(_)),
        "flipped private: {e}"
    );
}
