//! Errors of the PKCS#11 key store, and the one place where they are sorted into
//! "the token cannot be used right now" (the server answers Unavailable and the
//! manager recovers by itself) and everything else.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};
use tessera_core::failure::Failure;
use tessera_core::key::{KeyError, KeyType};

use crate::pin::PinError;
use crate::uri::UriError;

/// Why the PKCS#11 key store failed. Each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The configuration is incomplete or contradicts itself.
    #[error("pkcs11 configuration: {0}")]
    Config(String),
    /// The `uri` setting is not a valid RFC 7512 PKCS#11 URI.
    #[error("pkcs11 uri: {0}")]
    Uri(#[from] UriError),
    /// The module file does not exist.
    #[error(
        "PKCS#11 module {} does not exist; install the token's PKCS#11 library or fix `module` (or module-path in the URI)",
        path.display()
    )]
    ModuleNotFound {
        /// The module path.
        path: PathBuf,
    },
    /// This binary is a static build (musl, `crt-static`): it has no dynamic loader, so
    /// it cannot load any PKCS#11 module.
    #[error(
        "cannot load PKCS#11 module {}: this is a static build of Tessera, which cannot load shared libraries; PKCS#11 needs the dynamic (glibc) build, or choose another key manager (memory, disk, tpm)",
        path.display()
    )]
    StaticBuild {
        /// The module path.
        path: PathBuf,
    },
    /// The module exists but could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {}: {reason}", path.display())]
    ModuleLoad {
        /// The module path.
        path: PathBuf,
        /// What the loader or C_Initialize said.
        reason: String,
    },
    /// No initialised token matches the selection.
    #[error(
        "no token matches {wanted} (tokens present: {available}); fix token_label, token_serial or the URI, or initialise the token"
    )]
    TokenNotFound {
        /// The selection (label, serial or URI).
        wanted: String,
        /// The tokens present, for the message.
        available: String,
    },
    /// Several tokens match the selection.
    #[error("several tokens match {wanted}: {matches}; select one by serial")]
    TokenAmbiguous {
        /// The selection.
        wanted: String,
        /// The tokens that match it.
        matches: String,
    },
    /// The PIN source could not be read.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The token needs a login and no PIN source is configured.
    #[error(
        "token {token} needs a PIN and none is configured; set pin_file, pin_env or pin_credential, or pin-source in the URI"
    )]
    PinMissing {
        /// The token's label.
        token: String,
    },
    /// The token refused the PIN.
    #[error(
        "token {token} refused the PIN ({ckr}); check the PIN source (file, environment variable or credential); repeated failures may lock the PIN"
    )]
    WrongPin {
        /// The token's label.
        token: String,
        /// The PKCS#11 return value's name.
        ckr: String,
    },
    /// The user PIN is locked after too many failures.
    #[error(
        "the user PIN of token {token} is locked (CKR_PIN_LOCKED); the security officer must reset it (C_InitPIN, e.g. pkcs11-tool --init-pin --login --login-type so)"
    )]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// The user PIN must be changed before it can be used.
    #[error(
        "the user PIN of token {token} has expired (CKR_PIN_EXPIRED); change it (e.g. pkcs11-tool --change-pin) and update the PIN source"
    )]
    PinExpired {
        /// The token's label.
        token: String,
    },
    /// The token lacks a mechanism the key type needs.
    #[error("token {token} does not support {mechanism}; choose a key type the token supports")]
    MechanismNotSupported {
        /// The token's label.
        token: String,
        /// The mechanism missing.
        mechanism: String,
    },
    /// No key with that label (and id) is on the token.
    #[error(
        "no private key labelled {label:?} on token {token}; generate it first or fix the key id"
    )]
    KeyMissing {
        /// The key's label.
        label: String,
        /// The token's label.
        token: String,
    },
    /// The objects found under a key's label are not what a Tessera key should be.
    #[error("key {label:?} is unusable: {reason}")]
    KeyInvalid {
        /// The key's label.
        label: String,
        /// What is wrong with the objects.
        reason: String,
    },
    /// The key type is not one this key store can create or use.
    #[error("key type {0} is not supported by the PKCS#11 key store")]
    UnsupportedKeyType(KeyType),
    /// The module or token cannot be used right now; the manager keeps trying to recover.
    #[error(
        "token {token} is unavailable: {reason}; Tessera recovers by itself once the device and its token are back"
    )]
    Unavailable {
        /// The token's label.
        token: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A PKCS#11 call failed for a reason not covered above.
    #[error("{call} returned {}", ckr_name(*rv))]
    Pkcs11 {
        /// The PKCS#11 function.
        call: String,
        /// What it returned.
        rv: RvError,
    },
    /// The cryptoki layer failed outside any PKCS#11 call.
    #[error("PKCS#11 binding error: {0}")]
    Binding(String),
    /// A lock was poisoned by a panic in another thread.
    #[error("PKCS#11 key store state poisoned by an earlier panic; restart the server")]
    Poisoned,
}

impl HsmError {
    /// The PKCS#11 return value behind the error, if it came from a PKCS#11 call.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 { rv, .. } => Some(*rv),
            _ => None,
        }
    }

    /// Whether the error means the module or token cannot be used right now (as opposed
    /// to a wrong request or a wrong configuration). Such failures make the manager
    /// drop its sessions and recover.
    pub fn is_unavailable(&self) -> bool {
        match self {
            HsmError::Unavailable { .. } => true,
            HsmError::Pkcs11 { rv, .. } => rv_means_unavailable(*rv),
            _ => false,
        }
    }
}

/// Return values after which the token (or our sessions on it) must be considered gone.
pub(crate) fn rv_means_unavailable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::SessionCount
            | RvError::SlotIdInvalid
            | RvError::GeneralError
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::UserPinNotInitialized
            | RvError::CantLock
            | RvError::MutexBad
    )
}

/// Return values that mean a cached object handle no longer names an object.
pub(crate) fn rv_means_stale_handle(rv: RvError) -> bool {
    matches!(rv, RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
}

/// The specification's name of a return value (`CKR_PIN_INCORRECT`), which is what
/// operators search for; cryptoki only offers a long English description.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, function) => HsmError::Pkcs11 {
                call: format!("C_{function:?}"),
                rv,
            },
            other => HsmError::Binding(other.to_string()),
        }
    }
}

impl From<HsmError> for KeyError {
    fn from(e: HsmError) -> Self {
        match e {
            // After start-up these only happen while recovering: the token went away or
            // came back in a state we cannot use yet. The server answers Unavailable.
            HsmError::Unavailable { .. }
            | HsmError::TokenNotFound { .. }
            | HsmError::TokenAmbiguous { .. }
            | HsmError::ModuleLoad { .. }
            | HsmError::ModuleNotFound { .. }
            | HsmError::WrongPin { .. }
            | HsmError::PinLocked { .. }
            | HsmError::PinExpired { .. }
            | HsmError::PinMissing { .. }
            | HsmError::Pin(_) => KeyError::Unavailable(Failure::caused_by(e.to_string(), e)),
            HsmError::Pkcs11 { rv, .. } if rv_means_unavailable(rv) => {
                KeyError::Unavailable(Failure::caused_by(e.to_string(), e))
            }
            HsmError::KeyMissing { label, .. } => KeyError::NotFound(label),
            HsmError::KeyInvalid { label, reason } => KeyError::Corrupt { id: label, reason },
            HsmError::UnsupportedKeyType(kt) => KeyError::UnsupportedKeyType(kt),
            HsmError::Config(_) | HsmError::Uri(_) => KeyError::Config(e.to_string()),
            other => KeyError::Backend(Failure::caused_by(other.to_string(), other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_specification() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::PinLocked), "CKR_PIN_LOCKED");
        assert_eq!(
            ckr_name(RvError::SessionReadWriteSoExists),
            "CKR_SESSION_READ_WRITE_SO_EXISTS"
        );
        assert_eq!(ckr_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
    }

    #[test]
    fn unusable_tokens_map_to_unavailable() {
        let gone: KeyError = HsmError::Pkcs11 {
            call: "C_Sign".into(),
            rv: RvError::DeviceRemoved,
        }
        .into();
        assert!(matches!(gone, KeyError::Unavailable(_)), "{gone}");
        assert!(gone.to_string().contains("CKR_DEVICE_REMOVED"));

        let locked: KeyError = HsmError::PinLocked {
            token: "\"ca\"".into(),
        }
        .into();
        assert!(matches!(locked, KeyError::Unavailable(_)), "{locked}");
        assert!(locked.to_string().contains("CKR_PIN_LOCKED"));

        let bad: KeyError = HsmError::Pkcs11 {
            call: "C_Sign".into(),
            rv: RvError::DataLenRange,
        }
        .into();
        assert!(matches!(bad, KeyError::Backend(_)), "{bad}");

        let missing: KeyError = HsmError::KeyMissing {
            label: "tessera-x".into(),
            token: "\"ca\"".into(),
        }
        .into();
        assert!(matches!(missing, KeyError::NotFound(_)), "{missing}");
    }
}
