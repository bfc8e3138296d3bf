//! TPM-held keys: signatures checked by OpenSSL and ring, blobs that survive a
//! restart, blobs that another TPM refuses, `tpm info`, and an open context that
//! reconnects by itself when the simulator restarts or goes away and comes back.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme, verify_signature};
use tessera_tpm::provision::{DevIdRequest, info, provision_devid};
use tessera_tpm::{TpmKey, TpmKeyManager};

use crate::common::{Sim, VendorCaFiles, Which};

/// Verifies with the openssl command line tool.
fn openssl_verifies(spki: &[u8], scheme: SignatureScheme, message: &[u8], sig: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (k, m, s) = (
        dir.path().join("pub.pem"),
        dir.path().join("msg"),
        dir.path().join("sig"),
    );
    std::fs::write(&k, tessera_core::pem::encode("PUBLIC KEY", spki)).unwrap();
    std::fs::write(&m, message).unwrap();
    std::fs::write(&s, sig).unwrap();
    let digest = match scheme.hash() {
        tessera_core::key::HashAlgorithm::Sha256 => "-sha256",
        tessera_core::key::HashAlgorithm::Sha384 => "-sha384",
        tessera_core::key::HashAlgorithm::Sha512 => "-sha512",
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", digest, "-verify"])
        .arg(&k)
        .arg("-signature")
        .arg(&s);
    if scheme.is_pss() {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
        ]);
    }
    let out = cmd
        .arg(&m)
        .output()
        .expect("openssl must be installed for this test");
    out.status.success()
}

fn tpm_keys_sign_and_openssl_and_ring_verify() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    for (kt, schemes) in [
        (KeyType::EcP256, vec![SignatureScheme::EcdsaP256Sha256]),
        (KeyType::EcP384, vec![SignatureScheme::EcdsaP384Sha384]),
        (
            KeyType::Rsa2048,
            vec![
                SignatureScheme::RsaPkcs1Sha256,
                SignatureScheme::RsaPkcs1Sha384,
                SignatureScheme::RsaPssSha256,
            ],
        ),
    ] {
        let key = TpmKey::generate(tpm.clone(), kt).unwrap();
        assert_eq!(key.key_type(), kt);
        assert_eq!(
            tessera_core::key::key_type_of_spki(key.public_key_der()),
            Some(kt)
        );
        for scheme in schemes {
            let sig = key.sign(scheme, b"signed in the TPM").unwrap();
            assert!(
                openssl_verifies(key.public_key_der(), scheme, b"signed in the TPM", &sig),
                "openssl refused {scheme:?}"
            );
            // ring (what rustls and webpki use) too; for PSS this checks the TPM's
            // salt is as long as the digest, which TLS 1.3 requires.
            assert!(
                verify_signature(key.public_key_der(), scheme, b"signed in the TPM", &sig),
                "ring refused {scheme:?}"
            );
            assert!(!verify_signature(
                key.public_key_der(),
                scheme,
                b"something else",
                &sig
            ));
        }
        // A scheme of another key type is refused before the TPM is asked.
        let foreign = if kt == KeyType::EcP256 {
            SignatureScheme::EcdsaP384Sha384
        } else {
            SignatureScheme::EcdsaP256Sha256
        };
        assert!(matches!(
            key.sign(foreign, b"x"),
            Err(KeyError::UnsupportedScheme { .. })
        ));
    }
    // A self-signed certificate made by rcgen through the TPM key.
    let key: Arc<dyn Key> = Arc::new(TpmKey::generate(tpm.clone(), KeyType::EcP256).unwrap());
    let signer = tessera_core::key::RcgenKey::new(key.clone()).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tpm.test".to_owned()])
        .unwrap()
        .self_signed(&signer)
        .unwrap();
    let (_, parsed) =
        <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(
            cert.der(),
        )
        .unwrap();
    parsed.verify_signature(None).unwrap();
}

fn key_blobs_reload_after_restart_and_nowhere_else() {
    let mut a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let keys_dir = a.path().join("keys");
    let (id, spki) = {
        let tpm = a.tpm();
        let manager = TpmKeyManager::open(tpm, &keys_dir).unwrap();
        assert_eq!(manager.name(), "tpm");
        let key = manager.generate_key("agent-svid", KeyType::EcP256).unwrap();
        ("agent-svid", key.public_key_der().to_vec())
    };
    let blob_path = keys_dir.join("agent-svid.tpmkey");
    let mode = std::fs::metadata(&blob_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&keys_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A reboot: the simulator restarts on its state, the agent opens a new context.
    a.restart();
    let manager = TpmKeyManager::open(a.tpm(), &keys_dir).unwrap();
    assert_eq!(manager.list_keys().unwrap(), vec![id.to_owned()]);
    let key = manager
        .get_key(id)
        .unwrap()
        .expect("key survives the restart");
    assert_eq!(key.public_key_der(), spki.as_slice());
    let sig = key.sign_default(b"after restart").unwrap();
    assert!(verify_signature(
        &spki,
        SignatureScheme::EcdsaP256Sha256,
        b"after restart",
        &sig
    ));

    // The same blob copied next to another TPM is refused, by name.
    let other_dir = b.path().join("keys");
    std::fs::create_dir_all(&other_dir).unwrap();
    std::fs::copy(&blob_path, other_dir.join("agent-svid.tpmkey")).unwrap();
    let other = TpmKeyManager::open(b.tpm(), &other_dir).unwrap();
    let err = other.get_key(id).unwrap_err();
    assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("does not belong to this TPM"),
        "{err}"
    );

    // Corrupt and missing blobs, deletion.
    std::fs::write(other_dir.join("junk.tpmkey"), b"junk").unwrap();
    assert!(matches!(
        other.get_key("junk"),
        Err(KeyError::Corrupt { .. })
    ));
    assert!(other.get_key("missing").unwrap().is_none());
    assert!(matches!(other.get_key("../x"), Err(KeyError::Config(_))));
    manager.delete_key(id).unwrap();
    assert!(manager.get_key(id).unwrap().is_none());
    manager.delete_key(id).unwrap();
}

fn info_reports_what_an_operator_allow_lists() {
    let sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let vendor = VendorCaFiles::new("Info Vendor CA");
    let dir = sim.path().join("devid");
    provision_devid(&tpm, &DevIdRequest::new("serial-42"), &vendor.ca(), &dir).unwrap();
    let report = info(&tpm, Some(&dir)).unwrap();
    assert_eq!(report.endorsement_keys.len(), 3);
    for ek in &report.endorsement_keys {
        let hash = ek
            .pub_hash
            .as_ref()
            .unwrap_or_else(|| panic!("{:?}", ek.error));
        assert_eq!(
            ek.agent_path.as_deref(),
            Some(format!("tpm/{hash}").as_str())
        );
        let cert = ek.certificate.as_ref().unwrap();
        assert_eq!(cert.issuer, "CN=swtpm-localca");
        assert_eq!(ek.tpm.as_ref().unwrap().model.as_deref(), Some("swtpm"));
    }
    let devid = report.devid.unwrap();
    assert_eq!(devid.subject_cn.as_deref(), Some("serial-42"));
    assert_eq!(devid.certificate.issuer, "CN=Info Vendor CA");
    assert!(devid.agent_path.starts_with("tpm_devid/"));
    // The report is what the CLI prints as JSON.
    serde_json::to_string_pretty(&info(&tpm, None).unwrap()).unwrap();
}

/// Set in the child process of [`key_blob_loads_in_a_new_process_after_restart`].
const CHILD_KEYS: &str = "TESSERA_TPM_TEST_CHILD_KEYS";
const CHILD_TCTI: &str = "TESSERA_TPM_TEST_CHILD_TCTI";
const CHILD_BACKEND: &str = "TESSERA_TPM_TEST_CHILD_BACKEND";

fn key_blob_loads_in_a_new_process_after_restart() {
    if let (Ok(keys), Ok(tcti)) = (std::env::var(CHILD_KEYS), std::env::var(CHILD_TCTI)) {
        // The child: a fresh process that only has the blob folder and the TCTI.
        let backend = std::env::var(CHILD_BACKEND).unwrap().parse().unwrap();
        let tpm = Arc::new(tessera_tpm::Tpm::open_with(backend, &tcti.parse().unwrap()).unwrap());
        let manager = TpmKeyManager::open(tpm, std::path::Path::new(&keys)).unwrap();
        let key = manager.get_key("svid").unwrap().unwrap();
        let sig = key.sign_default(b"from the child").unwrap();
        println!(
            "CHILD-SPKI:{}",
            tessera_tpm::wire::hex(key.public_key_der())
        );
        println!("CHILD-SIG:{}", tessera_tpm::wire::hex(&sig));
        return;
    }
    let mut sim = Sim::start(Which::A);
    let keys_dir = sim.path().join("keys");
    let spki = {
        let manager = TpmKeyManager::open(sim.tpm(), &keys_dir).unwrap();
        let key = manager.generate_key("svid", KeyType::EcP384).unwrap();
        key.public_key_der().to_vec()
    };
    sim.restart();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!(
                "keys::key_blob_loads_in_a_new_process_after_restart::{}",
                sim.backend
            ),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_KEYS, &keys_dir)
        .env(CHILD_TCTI, &sim.env["TPM_TCTI"])
        .env(CHILD_BACKEND, sim.backend.as_str())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        let line = stdout
            .lines()
            .find_map(|l| l.split_once(name).map(|(_, value)| value))
            .unwrap_or_else(|| panic!("child printed no {name}:\n{stdout}"));
        (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    assert_eq!(field("CHILD-SPKI:"), spki);
    assert!(verify_signature(
        &spki,
        SignatureScheme::EcdsaP384Sha384,
        b"from the child",
        &field("CHILD-SIG:")
    ));
}

fn an_open_context_survives_a_simulator_restart_and_outage() {
    let mut sim = Sim::start(Which::A);
    let tpm = sim.tpm();
    let keys_dir = sim.path().join("keys");
    let manager = TpmKeyManager::open(tpm.clone(), &keys_dir).unwrap();
    let key = manager.generate_key("agent-svid", KeyType::EcP256).unwrap();
    let spki = key.public_key_der().to_vec();
    let check = |key: &Arc<dyn Key>, msg: &[u8]| {
        let sig = key.sign_default(msg).unwrap();
        assert!(verify_signature(
            &spki,
            SignatureScheme::EcdsaP256Sha256,
            msg,
            &sig
        ));
    };
    check(&key, b"before");

    // The simulator restarts under the open context (same state, same port): the
    // next operation reconnects, makes the SRK again and reloads the key's blob.
    let tcti = sim.env["TPM_TCTI"].clone();
    sim.restart();
    assert_eq!(
        sim.env["TPM_TCTI"], tcti,
        "the simulator came back on another port"
    );
    check(&key, b"after a restart");
    check(&key, b"and again");

    // The simulator is away: a clear error, not a wedged context.
    sim.stop();
    let err = key.sign_default(b"while away").unwrap_err();
    assert!(matches!(err, KeyError::Unavailable(_)), "{err}");
    let err2 = key.sign_default(b"still away").unwrap_err();
    assert!(matches!(err2, KeyError::Unavailable(_)), "{err2}");
    // Back: signing resumes by itself, and new keys can be made.
    sim.start_again();
    assert_eq!(
        sim.env["TPM_TCTI"], tcti,
        "the simulator came back on another port"
    );
    check(&key, b"after the outage");
    let other = manager.generate_key("other", KeyType::EcP256).unwrap();
    other.sign_default(b"new key").unwrap();
}

crate::common::per_backend!(
    tpm_keys_sign_and_openssl_and_ring_verify,
    key_blobs_reload_after_restart_and_nowhere_else,
    info_reports_what_an_operator_allow_lists,
    key_blob_loads_in_a_new_process_after_restart,
    an_open_context_survives_a_simulator_restart_and_outage,
);
