//! Finding the token (by label, serial or the other RFC 7512 attributes) and logging
//! in to it.
//!
//! Login state belongs to the application, not the session: every session on the
//! token shares it, and closing the last session logs out. So "already logged in" is
//! success, and we never call C_Logout (it would log out every other manager on the
//! same token in this process).

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};

use crate::error::{HsmError, ckr_name};
use crate::pin::{PinSource, RefusedPin};
use secrecy::ExposeSecret;

/// Which token to use. Absent fields match anything.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSelector {
    pub(crate) label: Option<String>,
    pub(crate) serial: Option<String>,
    pub(crate) manufacturer: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) slot_id: Option<u64>,
    pub(crate) slot_description: Option<String>,
    pub(crate) slot_manufacturer: Option<String>,
    pub(crate) library_manufacturer: Option<String>,
    pub(crate) library_description: Option<String>,
    pub(crate) library_version: Option<(u8, u8)>,
}

impl TokenSelector {
    /// The selection in words, for messages.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s:?}"));
        }
        if let Some(m) = &self.manufacturer {
            parts.push(format!("manufacturer {m:?}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model {m:?}"));
        }
        if let Some(s) = self.slot_id {
            parts.push(format!("slot-id {s}"));
        }
        if let Some(s) = &self.slot_description {
            parts.push(format!("slot-description {s:?}"));
        }
        if let Some(s) = &self.slot_manufacturer {
            parts.push(format!("slot-manufacturer {s:?}"));
        }
        if parts.is_empty() {
            "any token".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Checks the library attributes of the URI against the loaded module.
    pub(crate) fn check_library(&self, ctx: &Pkcs11) -> Result<(), String> {
        if self.library_manufacturer.is_none()
            && self.library_description.is_none()
            && self.library_version.is_none()
        {
            return Ok(());
        }
        let info = ctx
            .get_library_info()
            .map_err(|e| format!("C_GetInfo failed: {}", HsmError::from(e)))?;
        let mismatch = |what: &str, want: &str, have: &str| {
            format!("the URI asks for {what} {want:?} but the module says {have:?}")
        };
        if let Some(m) = &self.library_manufacturer
            && m != info.manufacturer_id()
        {
            return Err(mismatch("library-manufacturer", m, info.manufacturer_id()));
        }
        if let Some(d) = &self.library_description
            && d != info.library_description()
        {
            return Err(mismatch(
                "library-description",
                d,
                info.library_description(),
            ));
        }
        if let Some((major, minor)) = self.library_version {
            let v = info.library_version();
            if (v.major(), v.minor()) != (major, minor) {
                return Err(mismatch(
                    "library-version",
                    &format!("{major}.{minor}"),
                    &format!("{}.{}", v.major(), v.minor()),
                ));
            }
        }
        Ok(())
    }
}

/// A token found in a slot.
pub(crate) struct Found {
    pub(crate) slot: Slot,
    pub(crate) info: TokenInfo,
    /// How to name the token in messages: label, serial and slot.
    pub(crate) name: String,
}

fn token_name(info: &TokenInfo, slot: Slot) -> String {
    format!(
        "{:?} (serial {}, slot {})",
        info.label(),
        info.serial_number(),
        slot.id()
    )
}

/// C_GetTokenInfo, asked again after a CKR_GENERAL_ERROR: SoftHSM2 answers that
/// while another process (pkcs11-tool logging in, say) rewrites its token file.
fn token_info(ctx: &Pkcs11, slot: Slot) -> Result<TokenInfo, CkError> {
    let mut tries = 0;
    loop {
        match ctx.get_token_info(slot) {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if tries < 2 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Finds the one initialised token the selector matches.
pub(crate) fn find(ctx: &Pkcs11, sel: &TokenSelector) -> Result<Found, HsmError> {
    let slots = ctx.get_slots_with_token()?;
    let mut matches = Vec::new();
    let mut seen = Vec::new();
    for slot in slots {
        if sel.slot_id.is_some_and(|id| id != slot.id()) {
            seen.push(format!("slot {}", slot.id()));
            continue;
        }
        let info = match token_info(ctx, slot) {
            Ok(info) => info,
            Err(e) => {
                // A token that cannot describe itself cannot be the one we want; say
                // so in the message, since it is often the one that was meant.
                seen.push(format!("slot {}: {}", slot.id(), HsmError::from(e)));
                continue;
            }
        };
        if !info.token_initialized() {
            continue;
        }
        seen.push(token_name(&info, slot));
        let text_ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !(text_ok(&sel.label, info.label())
            && text_ok(&sel.serial, info.serial_number())
            && text_ok(&sel.manufacturer, info.manufacturer_id())
            && text_ok(&sel.model, info.model()))
        {
            continue;
        }
        if sel.slot_description.is_some() || sel.slot_manufacturer.is_some() {
            let slot_info = ctx.get_slot_info(slot)?;
            if !(text_ok(&sel.slot_description, slot_info.slot_description())
                && text_ok(&sel.slot_manufacturer, slot_info.manufacturer_id()))
            {
                continue;
            }
        }
        let name = token_name(&info, slot);
        matches.push(Found { slot, info, name });
    }
    match matches.len() {
        0 => Err(HsmError::TokenNotFound {
            wanted: sel.describe(),
            available: if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join("; ")
            },
        }),
        1 => Ok(matches.remove(0)),
        _ => Err(HsmError::TokenAmbiguous {
            wanted: sel.describe(),
            matches: matches
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Logs the user in on `session` if the token wants a login.
///
/// A PIN the token refused once is not offered again until the PIN source holds a
/// different one (see [`RefusedPin`]).
pub(crate) fn login(
    session: &Session,
    found: &Found,
    pin: Option<&PinSource>,
    refused: &RefusedPin,
) -> Result<(), HsmError> {
    let info = &found.info;
    if !info.login_required() {
        return Ok(());
    }
    if info.user_pin_locked() {
        return Err(HsmError::PinLocked {
            token: found.name.clone(),
        });
    }
    if info.user_pin_final_try() {
        tracing::warn!(token = %found.name, "one wrong PIN more locks this token's user PIN");
    } else if info.user_pin_count_low() {
        tracing::warn!(token = %found.name, "this token has seen wrong PINs (CKF_USER_PIN_COUNT_LOW)");
    }
    let mut fingerprint = None;
    let result = match pin {
        Some(source) => {
            let secret = source.read()?;
            let fp = refused.fingerprint(secret.expose_secret());
            if refused.was_refused(fp) {
                return Err(HsmError::WrongPin {
                    token: found.name.clone(),
                    ckr:
                        "CKR_PIN_INCORRECT earlier; not offered again until the PIN source changes"
                            .into(),
                });
            }
            fingerprint = Some(fp);
            // The secret is wiped when `secret` drops at the end of this arm.
            session.login_with_raw(UserType::User, &secret)
        }
        None if info.protected_authentication_path() => session.login(UserType::User, None),
        None => {
            return Err(HsmError::PinMissing {
                token: found.name.clone(),
            });
        }
    };
    match result {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            refused.set(None);
            Ok(())
        }
        Err(CkError::Pkcs11(
            rv @ (RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange),
            _,
        )) => {
            refused.set(fingerprint);
            Err(HsmError::WrongPin {
                token: found.name.clone(),
                ckr: ckr_name(rv),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
            token: found.name.clone(),
        }),
        Err(CkError::Pkcs11(RvError::PinExpired, _)) => Err(HsmError::PinExpired {
            token: found.name.clone(),
        }),
        Err(e) => Err(e.into()),
    }
}
