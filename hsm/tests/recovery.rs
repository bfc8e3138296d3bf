//! The token goes away while the manager is open and comes back: signing must fail
//! with `KeyError::Unavailable` (the server answers gRPC Unavailable), `health()`
//! must say not ready, and once the token is back the same manager and the same key
//! objects must work again, with no restart.
//!
//! SoftHSM2 keeps each token in a directory under its token directory. Moving that
//! directory away makes the loaded token fail (C_GetTokenInfo answers
//! CKR_GENERAL_ERROR, cached object handles go invalid, searches find nothing), and
//! moving it back is not enough: SoftHSM2 only reads its token directory in
//! C_Initialize, so the manager must re-initialise the module to see it again.
//!
//! This runs in a process of its own because re-initialising the module ends every
//! session in the process.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Env, PIN, setup};
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme, verify_signature};
use tessera_hsm::{HsmError, Pkcs11Config, Pkcs11KeyManager};

const TOKEN: &str = "tessera-fault";

fn env() -> &'static Env {
    setup(&[TOKEN])
}

/// The directory SoftHSM2 keeps the token in (the only one in this process's
/// token directory).
fn token_dir(env: &Env) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(env.tokens_dir())
        .expect("token directory")
        .map(|e| e.expect("token directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

fn signs(key: &dyn Key, msg: &[u8]) -> Result<(), KeyError> {
    let sig = key.sign_default(msg)?;
    assert!(verify_signature(
        key.public_key_der(),
        SignatureScheme::EcdsaP256Sha256,
        msg,
        &sig
    ));
    Ok(())
}

/// Signs until it works, for the path where nobody calls `health()` and recovery
/// waits out its backoff (at most a few hundred milliseconds here).
fn signs_again_within(key: &dyn Key, limit: Duration) {
    let start = Instant::now();
    loop {
        match signs(key, b"after recovery") {
            Ok(()) => return,
            Err(KeyError::Unavailable(_)) if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
}

#[test]
fn token_removed_and_restored_while_the_manager_is_open() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, PIN).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = Pkcs11Config {
        pin_file: Some(pin_file.clone()),
        ..env.config(TOKEN)
    };
    let m = Pkcs11KeyManager::open(&cfg).unwrap();
    let key = m.generate_key("ca", KeyType::EcP256).unwrap();
    signs(&*key, b"before").unwrap();
    m.health().unwrap();

    let present = token_dir(env);
    let away = env.dir.join("token-away");

    // 1. The token disappears: signing says Unavailable, health says not ready.
    std::fs::rename(&present, &away).unwrap();
    let err = signs(&*key, b"while gone").unwrap_err();
    assert!(matches!(err, KeyError::Unavailable(_)), "{err}");
    let health = m.health().unwrap_err();
    assert!(
        health.is_unavailable() || matches!(health, HsmError::TokenNotFound { .. }),
        "{health}"
    );
    assert!(health.to_string().contains(TOKEN), "{health}");
    let listed = m.list_keys().unwrap_err();
    assert!(matches!(listed, KeyError::Unavailable(_)), "{listed}");

    // 2. It comes back: the readiness probe recovers, and the key object handed out
    // before signs again.
    std::fs::rename(&away, &present).unwrap();
    m.health().unwrap();
    signs(&*key, b"after health").unwrap();
    assert!(m.list_keys().unwrap().contains(&"ca".to_string()));

    // 3. Again, with nobody calling health(): signing alone brings it back.
    std::fs::rename(&present, &away).unwrap();
    assert!(matches!(
        signs(&*key, b"gone again"),
        Err(KeyError::Unavailable(_))
    ));
    std::fs::rename(&away, &present).unwrap();
    signs_again_within(&*key, Duration::from_secs(10));

    // 4. The PIN changes while we run (another process changes it), and the token
    // goes and comes back, so the manager must log in again: the old PIN is refused
    // (reported as Unavailable, with the cause), and once the PIN file is updated
    // the manager logs in with the new PIN without a restart.
    let new_pin = "8642-rotated";
    let out = std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&env.module)
        .args([
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            PIN,
            "--change-pin",
            "--new-pin",
            new_pin,
        ])
        .output()
        .expect("run pkcs11-tool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&present, &away).unwrap();
    assert!(matches!(
        signs(&*key, b"pin changed"),
        Err(KeyError::Unavailable(_))
    ));
    std::fs::rename(&away, &present).unwrap();
    let refused = m.health().unwrap_err();
    assert!(matches!(refused, HsmError::WrongPin { .. }), "{refused}");
    // A refused PIN is not offered again (a real HSM would lock it after a few).
    let again = m.health().unwrap_err();
    assert!(matches!(again, HsmError::WrongPin { .. }), "{again}");
    assert!(again.to_string().contains("not offered again"), "{again}");
    let err = signs(&*key, b"old pin").unwrap_err();
    assert!(matches!(err, KeyError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("refused the PIN"), "{err}");
    std::fs::write(&pin_file, new_pin).unwrap();
    m.health().unwrap();
    signs(&*key, b"new pin").unwrap();

    // A key fetched after all this is the same key.
    let again = m.get_key("ca").unwrap().unwrap();
    assert_eq!(again.public_key_der(), key.public_key_der());
}
