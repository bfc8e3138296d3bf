//! What other tools see of the keys: the protection attributes as raw cryptoki
//! calls and OpenSC's pkcs11-tool (another process) report them, and that
//! replacing and deleting leave exactly the objects they should.
//!
//! pkcs11-tool logs in, and SoftHSM2 rewrites its token file on every login; a
//! process using the token in other threads at that moment may see transient
//! errors. So these tests take turns and never overlap with each other.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{Env, listed_objects, pkcs11_tool, setup};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use tessera_core::key::{KeyManager, KeyType};
use tessera_hsm::{Pkcs11KeyManager, object_id_for_label};

const MAIN: &str = "tessera-tools";

fn env() -> &'static Env {
    setup(&[MAIN])
}

fn manager() -> Pkcs11KeyManager {
    Pkcs11KeyManager::open(&env().config(MAIN)).expect("open the test token")
}

fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn private_keys_are_sensitive_non_extractable_and_sign_only() {
    let _turn = turn();
    let env = env();
    let m = manager();
    let key = m.create_key("protected", KeyType::EcP256).unwrap();
    let rsa = m.create_key("protected-rsa", KeyType::Rsa2048).unwrap();

    // As the manager reads them.
    for k in [&key, &rsa] {
        let p = k.protection().unwrap();
        assert!(p.is_hardware_bound(), "{p:?}");
        assert!(p.is_sign_only(), "{p:?}");
        assert!(p.private && p.local, "{p:?}");
    }

    // As raw cryptoki reads them, beside the manager (same process: the module is
    // already initialised, and the manager's login covers this session too).
    let ctx = Pkcs11::new(&env.module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == MAIN)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let label = b"tessera-protected".to_vec();
    let privs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.clone()),
        ])
        .unwrap();
    assert_eq!(privs.len(), 1);
    let attrs = session
        .get_attributes(
            privs[0],
            &[
                AttributeType::Sensitive,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Extractable,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Derive,
                AttributeType::Sign,
                AttributeType::Token,
                AttributeType::Id,
            ],
        )
        .unwrap();
    for want in [
        Attribute::Sensitive(true),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Sign(true),
        Attribute::Token(true),
        Attribute::Id(object_id_for_label("tessera-protected")),
    ] {
        assert!(attrs.contains(&want), "{want:?} not in {attrs:?}");
    }
    // Reading the secret scalar is refused with CKR_ATTRIBUTE_SENSITIVE.
    let value = session
        .get_attribute_info(privs[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(value.as_slice(), [AttributeInfo::Sensitive]),
        "{value:?}"
    );
    let pubs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label),
        ])
        .unwrap();
    assert_eq!(pubs.len(), 1);
    let attrs = session
        .get_attributes(
            pubs[0],
            &[
                AttributeType::Encrypt,
                AttributeType::Wrap,
                AttributeType::Verify,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        vec![
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Verify(true)
        ]
    );
    drop(session);

    // As pkcs11-tool (OpenSC, another process) reports them.
    let listing = pkcs11_tool(env, MAIN, &["--list-objects"]);
    let objects = listed_objects(&listing, "tessera-protected");
    let id_hex: String = object_id_for_label("tessera-protected")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(objects.len(), 2, "{listing}");
    for o in &objects {
        assert_eq!(o.field("ID"), Some(id_hex.as_str()), "{o:?}");
        if o.heading.starts_with("Private Key Object") {
            let access = o.list("Access");
            for want in [
                "sensitive",
                "always sensitive",
                "never extractable",
                "local",
            ] {
                assert!(access.iter().any(|a| a == want), "{want} not in {access:?}");
            }
            assert!(!access.iter().any(|a| a == "extractable"), "{access:?}");
            assert_eq!(o.list("Usage"), vec!["sign".to_string()], "{o:?}");
        } else {
            assert!(o.heading.starts_with("Public Key Object"), "{o:?}");
            assert_eq!(o.list("Usage"), vec!["verify".to_string()], "{o:?}");
        }
    }
    drop(m);
}

#[test]
fn pkcs11_tool_sees_replacement_and_deletion() {
    let _turn = turn();
    let env = env();
    let m = manager();
    let first = m.generate_key("replace-me", KeyType::EcP256).unwrap();
    let second = m.generate_key("replace-me", KeyType::EcP256).unwrap();
    assert_ne!(first.public_key_der(), second.public_key_der());
    let listing = pkcs11_tool(env, MAIN, &["--list-objects"]);
    let objects = listed_objects(&listing, "tessera-replace-me");
    let headings: Vec<&str> = objects.iter().map(|o| o.heading.as_str()).collect();
    assert_eq!(objects.len(), 2, "{headings:?}");
    assert!(
        headings.iter().any(|h| h.starts_with("Private Key Object")),
        "{headings:?}"
    );
    assert!(
        headings.iter().any(|h| h.starts_with("Public Key Object")),
        "{headings:?}"
    );
    // The public object is the new key's.
    let point = objects
        .iter()
        .find_map(|o| o.field("EC_POINT"))
        .expect("EC_POINT listed");
    let spki_hex: String = second
        .public_key_der()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(spki_hex.ends_with(&point[4..]), "{point} vs {spki_hex}");

    m.delete_key("replace-me").unwrap();
    let listing = pkcs11_tool(env, MAIN, &["--list-objects"]);
    assert!(
        listed_objects(&listing, "tessera-replace-me").is_empty(),
        "{listing}"
    );
}
