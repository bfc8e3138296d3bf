//! `p11-probe MODULE TOKEN_LABEL PIN_FILE KEY_LABEL`: reads a private key's protection
//! attributes with raw PKCS#11 calls (not through Tessera's HSM crate, so the tests
//! have an independent referee) and tries C_GetAttributeValue(CKA_VALUE). Prints JSON.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, module, token, pin_file, label] = args.as_slice() else {
        return Err("usage: p11-probe MODULE TOKEN_LABEL PIN_FILE KEY_LABEL".into());
    };
    let ctx = Pkcs11::new(module)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label() == token)
                .unwrap_or(false)
        })
        .ok_or("token not found")?;
    let session = ctx.open_ro_session(slot)?;
    let pin = std::fs::read_to_string(pin_file)?;
    session.login(
        UserType::User,
        Some(&AuthPin::new(pin.trim().to_owned().into())),
    )?;
    let keys = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    let key = *keys.first().ok_or("key not found")?;
    let attrs = session.get_attributes(
        key,
        &[
            AttributeType::Sensitive,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::Extractable,
            AttributeType::Decrypt,
            AttributeType::Unwrap,
            AttributeType::Sign,
            AttributeType::Token,
        ],
    )?;
    let flag = |want: fn(&Attribute) -> Option<bool>| attrs.iter().find_map(want);
    // C_GetAttributeValue(CKA_VALUE): cryptoki reports the token's answer per
    // attribute (Sensitive = CKR_ATTRIBUTE_SENSITIVE for that attribute).
    let info = session.get_attribute_info(key, &[AttributeType::Value])?;
    let value = session.get_attributes(key, &[AttributeType::Value])?;
    let value_readable = value.iter().any(|a| matches!(a, Attribute::Value(_)));
    let out = serde_json::json!({
        "sensitive": flag(|a| if let Attribute::Sensitive(b) = a { Some(*b) } else { None }),
        "always_sensitive": flag(|a| if let Attribute::AlwaysSensitive(b) = a { Some(*b) } else { None }),
        "never_extractable": flag(|a| if let Attribute::NeverExtractable(b) = a { Some(*b) } else { None }),
        "extractable": flag(|a| if let Attribute::Extractable(b) = a { Some(*b) } else { None }),
        "decrypt": flag(|a| if let Attribute::Decrypt(b) = a { Some(*b) } else { None }),
        "unwrap": flag(|a| if let Attribute::Unwrap(b) = a { Some(*b) } else { None }),
        "sign": flag(|a| if let Attribute::Sign(b) = a { Some(*b) } else { None }),
        "token": flag(|a| if let Attribute::Token(b) = a { Some(*b) } else { None }),
        "value_readable": value_readable,
        "value_info": format!("{info:?}"),
    });
    println!("{out}");
    Ok(())
}
