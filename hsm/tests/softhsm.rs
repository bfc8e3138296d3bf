//! The PKCS#11 key store against a real SoftHSM2 token: generation, signing checked
//! by ring and by OpenSSL, restarts, concurrency, listing, replacing and deleting,
//! configuration through URIs and PIN sources, and the error cases an operator
//! meets. Key protection as pkcs11-tool sees it is in tools.rs.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

mod common;

use std::sync::Arc;

use common::{Env, PIN, openssl_verify, setup};
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme, verify_signature};
use tessera_hsm::{HsmError, Pkcs11Config, Pkcs11KeyManager, object_id_for_label};

const MAIN: &str = "tessera-main";
/// Only ever given wrong PINs, so that no successful login elsewhere in this
/// process hides the failure (login state is per process).
const WRONG_PIN: &str = "tessera-pin";

fn env() -> &'static Env {
    setup(&[MAIN, WRONG_PIN])
}

fn manager() -> Pkcs11KeyManager {
    Pkcs11KeyManager::open(&env().config(MAIN)).expect("open the test token")
}

fn check_signature(key: &dyn Key, scheme: SignatureScheme, msg: &[u8]) {
    let sig = key.sign(scheme, msg).expect("the token signs");
    assert!(
        verify_signature(key.public_key_der(), scheme, msg, &sig),
        "ring rejects the {scheme:?} signature"
    );
    assert!(
        openssl_verify(key.public_key_der(), scheme, msg, &sig),
        "openssl rejects the {scheme:?} signature"
    );
    let mut tampered = msg.to_vec();
    tampered.push(b'!');
    assert!(!verify_signature(
        key.public_key_der(),
        scheme,
        &tampered,
        &sig
    ));
    assert!(!openssl_verify(
        key.public_key_der(),
        scheme,
        &tampered,
        &sig
    ));
}

#[test]
fn ec_keys_sign_and_verify_with_ring_and_openssl() {
    let m = manager();
    for (id, kt) in [
        ("sign-p256", KeyType::EcP256),
        ("sign-p384", KeyType::EcP384),
    ] {
        let key = m.generate_key(id, kt).unwrap();
        assert_eq!(key.key_type(), kt);
        assert_eq!(
            tessera_core::key::key_type_of_spki(key.public_key_der()),
            Some(kt)
        );
        check_signature(&*key, kt.default_scheme(), b"to be signed by the token");
        // Messages of any length are hashed in software first.
        check_signature(&*key, kt.default_scheme(), &[0xa5; 10_000]);
        assert!(matches!(
            key.sign(SignatureScheme::RsaPkcs1Sha256, b"x"),
            Err(KeyError::UnsupportedScheme { .. })
        ));
    }
}

#[test]
fn rsa_keys_sign_pkcs1_and_pss() {
    let m = manager();
    let key = m.generate_key("sign-rsa2048", KeyType::Rsa2048).unwrap();
    assert_eq!(key.key_type(), KeyType::Rsa2048);
    for scheme in [
        SignatureScheme::RsaPkcs1Sha256,
        SignatureScheme::RsaPkcs1Sha384,
        SignatureScheme::RsaPkcs1Sha512,
        SignatureScheme::RsaPssSha256,
        SignatureScheme::RsaPssSha384,
        SignatureScheme::RsaPssSha512,
    ] {
        check_signature(&*key, scheme, b"rsa in the token");
    }
}

#[test]
fn keys_are_found_again_after_a_restart() {
    let (spki, kt) = {
        let m = manager();
        let key = m.generate_key("restart-ca", KeyType::EcP384).unwrap();
        (key.public_key_der().to_vec(), key.key_type())
    };
    let m = manager();
    let key = m.get_key("restart-ca").unwrap().expect("key after restart");
    assert_eq!(key.public_key_der(), spki.as_slice());
    assert_eq!(key.key_type(), kt);
    check_signature(&*key, kt.default_scheme(), b"after restart");
    assert!(m.list_keys().unwrap().contains(&"restart-ca".to_string()));
    // Found by both label and the derived CKA_ID.
    let k = m.find_key("restart-ca").unwrap().unwrap();
    assert_eq!(k.label(), Some("tessera-restart-ca"));
    assert_eq!(
        k.object_id(),
        Some(object_id_for_label("tessera-restart-ca").as_slice())
    );
}

#[test]
fn many_threads_sign_at_once() {
    let m = Arc::new(manager());
    let key = m.generate_key("concurrent", KeyType::EcP256).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let key = key.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let msg = format!("thread {t} message {i}");
                    let sig = key.sign_default(msg.as_bytes()).unwrap();
                    assert!(
                        verify_signature(
                            key.public_key_der(),
                            SignatureScheme::EcdsaP256Sha256,
                            msg.as_bytes(),
                            &sig
                        ),
                        "bad signature from thread {t}, message {i}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn listing_replacing_and_deleting() {
    let env = env();
    let m = manager();
    let a = m.generate_key("list-a", KeyType::EcP256).unwrap();
    m.generate_key("list-b", KeyType::EcP256).unwrap();
    // A key outside our prefix is not ours to list.
    let mut other_cfg = env.config(MAIN);
    other_cfg.key_label_prefix = "other-".into();
    let other = Pkcs11KeyManager::open(&other_cfg).unwrap();
    other.generate_key("list-c", KeyType::EcP256).unwrap();
    let ids = m.list_keys().unwrap();
    assert!(
        ids.contains(&"list-a".into()) && ids.contains(&"list-b".into()),
        "{ids:?}"
    );
    assert!(!ids.iter().any(|i| i.contains("list-c")), "{ids:?}");
    assert_eq!(other.list_keys().unwrap(), vec!["list-c".to_string()]);

    // Replacing: the old handle no longer signs, the new key does, one key remains.
    let replaced = m.generate_key("list-a", KeyType::EcP256).unwrap();
    assert_ne!(replaced.public_key_der(), a.public_key_der());
    let err = a.sign_default(b"old").unwrap_err();
    assert!(matches!(err, KeyError::NotFound(_)), "{err}");
    check_signature(&*replaced, SignatureScheme::EcdsaP256Sha256, b"new");

    m.delete_key("list-a").unwrap();
    assert!(m.get_key("list-a").unwrap().is_none());
    assert!(!m.list_keys().unwrap().contains(&"list-a".into()));
    // Deleting what is not there is fine; signing with a deleted key says so.
    m.delete_key("list-a").unwrap();
    let err = replaced.sign_default(b"gone").unwrap_err();
    assert!(matches!(err, KeyError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("tessera-list-a"), "{err}");
    other.delete_key("list-c").unwrap();
    assert!(other.list_keys().unwrap().is_empty());

    assert!(matches!(
        m.generate_key("../escape", KeyType::EcP256),
        Err(KeyError::Config(_))
    ));
}

#[test]
fn managers_share_the_login() {
    let a = manager();
    let b = manager();
    let key = b.generate_key("shared-login", KeyType::EcP256).unwrap();
    // Closing a's sessions must not log b out.
    drop(a);
    check_signature(&*key, SignatureScheme::EcdsaP256Sha256, b"still logged in");
    b.health().unwrap();
}

#[test]
fn tokens_by_serial_uri_and_pin_sources() {
    let env = env();
    let module = env.module.display().to_string();
    let serial = env.serial(MAIN).to_owned();

    // By serial, PIN from an environment variable.
    let cfg = Pkcs11Config {
        module: Some(env.module.clone()),
        token_serial: Some(serial.clone()),
        pin_env: Some("TESSERA_TEST_HSM_PIN".into()),
        sessions: 2,
        ..Pkcs11Config::default()
    };
    let m = Pkcs11KeyManager::open(&cfg).unwrap();
    assert!(m.token().contains(&serial), "{}", m.token());
    m.health().unwrap();

    // A systemd credential.
    let cfg = Pkcs11Config {
        module: Some(env.module.clone()),
        token_label: Some(MAIN.into()),
        pin_credential: Some("hsm-pin".into()),
        ..Pkcs11Config::default()
    };
    Pkcs11KeyManager::open(&cfg).unwrap().health().unwrap();

    // Everything in one RFC 7512 URI, from TOML, naming a key the operator made.
    let ops = Pkcs11KeyManager::open(&Pkcs11Config {
        key_label_prefix: String::new(),
        ..env.config(MAIN)
    })
    .unwrap();
    let provisioned = ops.create_key("ops-root", KeyType::EcP256).unwrap();
    let id: String = object_id_for_label("ops-root")
        .iter()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let toml = format!(
        "uri = \"pkcs11:token={MAIN};serial={serial};object=ops-root;id={id};type=private?module-path={module}&pin-source=file:{}\"\nsessions = 3\n",
        env.pin_file.display()
    );
    let cfg: Pkcs11Config = toml::from_str(&toml).unwrap();
    let m = Pkcs11KeyManager::open(&cfg).unwrap();
    let key = m.uri_key().unwrap().expect("the URI names a key");
    assert_eq!(key.public_key_der(), provisioned.public_key_der());
    check_signature(&*key, SignatureScheme::EcdsaP256Sha256, b"provisioned key");

    // A URI naming a key that is not there.
    let toml = format!(
        "uri = \"pkcs11:token={MAIN};object=no-such-key?module-path={module}&pin-source={}\"\n",
        env.pin_file.display()
    );
    let m = Pkcs11KeyManager::open(&toml::from_str(&toml).unwrap()).unwrap();
    let err = m.uri_key().unwrap_err();
    assert!(matches!(err, HsmError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("no-such-key"), "{err}");
    ops.destroy_key("ops-root").unwrap();
}

#[test]
fn missing_module_is_named() {
    let cfg = Pkcs11Config {
        module: Some("/nonexistent/libno-such-pkcs11.so".into()),
        ..env().config(MAIN)
    };
    let err = Pkcs11KeyManager::open(&cfg).unwrap_err();
    assert!(matches!(err, HsmError::ModuleNotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/libno-such-pkcs11.so"),
        "{err}"
    );

    // A file that is not a loadable PKCS#11 module.
    let not_a_module = std::env::current_exe().unwrap();
    let cfg = Pkcs11Config {
        module: Some(not_a_module),
        ..env().config(MAIN)
    };
    let err = Pkcs11KeyManager::open(&cfg).unwrap_err();
    assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err}");
}

#[test]
fn missing_token_lists_the_tokens_present() {
    let err = Pkcs11KeyManager::open(&env().config("no-such-token")).unwrap_err();
    assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-token") && msg.contains(MAIN), "{msg}");
}

#[test]
fn wrong_pin_is_reported_and_softhsm_never_locks() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-pin");
    std::fs::write(&bad, "0000-wrong\n").unwrap();
    let cfg = Pkcs11Config {
        pin_file: Some(bad),
        ..env.config(WRONG_PIN)
    };
    // SoftHSM2 counts failures (CKF_USER_PIN_COUNT_LOW) but never locks the user
    // PIN, so CKR_PIN_LOCKED cannot be produced here; its mapping is unit-tested.
    for _ in 0..4 {
        let err = Pkcs11KeyManager::open(&cfg).unwrap_err();
        assert!(matches!(err, HsmError::WrongPin { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("CKR_PIN_INCORRECT") && msg.contains(WRONG_PIN),
            "{msg}"
        );
        assert!(!msg.contains("0000-wrong"), "{msg}");
    }
    // No PIN at all for a token that needs one.
    let cfg = Pkcs11Config {
        pin_file: None,
        ..env.config(WRONG_PIN)
    };
    let err = Pkcs11KeyManager::open(&cfg).unwrap_err();
    assert!(matches!(err, HsmError::PinMissing { .. }), "{err}");
    // An unreadable PIN file names the file.
    let cfg = Pkcs11Config {
        pin_file: Some(dir.path().join("absent")),
        ..env.config(WRONG_PIN)
    };
    let err = Pkcs11KeyManager::open(&cfg).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn missing_keys() {
    let m = manager();
    assert!(m.get_key("never-made").unwrap().is_none());
    let err = m.raw_sign_rate("never-made", 1, 1).unwrap_err();
    assert!(matches!(err, HsmError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("tessera-never-made"), "{err}");
    let key_err: KeyError = err.into();
    assert!(matches!(key_err, KeyError::NotFound(_)));
}

#[test]
fn raw_sign_rate_and_health() {
    let m = manager();
    m.health().unwrap();
    m.create_key("rate", KeyType::EcP256).unwrap();
    let rate = m.raw_sign_rate("rate", 2, 20).unwrap();
    assert_eq!(rate.signatures, 40);
    assert_eq!(rate.threads, 2);
    assert!(rate.per_second() > 0.0);
}

#[test]
fn debug_output_holds_no_pin_or_handle() {
    let env = env();
    let m = manager();
    let key = m.create_key("debug", KeyType::EcP256).unwrap();
    let cfg: Pkcs11Config = toml::from_str(&format!(
        "uri = \"pkcs11:token={MAIN}?module-path={}&pin-value={PIN}\"",
        env.module.display()
    ))
    .unwrap();
    let via_value = Pkcs11KeyManager::open(&cfg).unwrap();
    for text in [
        format!("{m:?}"),
        format!("{key:?}"),
        format!("{cfg:?}"),
        format!("{via_value:?}"),
    ] {
        assert!(!text.contains(PIN), "{text}");
        assert!(!text.to_lowercase().contains("handle"), "{text}");
    }
}
