//! Tessera's PKCS#11 key store: the server's CA keys generated and used inside an
//! HSM (any PKCS#11 token; SoftHSM2 in CI), through the `cryptoki` crate.
//!
//! [`Pkcs11KeyManager`] implements [`tessera_core::key::KeyManager`] and hands out
//! [`Pkcs11Key`]s that implement [`tessera_core::key::Key`], so they plug into
//! certificate signing (rcgen), JWT signing and rustls like any other key.
//!
//! # Configuration
//!
//! [`Pkcs11Config`] is a TOML section: the module, the token (label, serial, or an
//! RFC 7512 `pkcs11:` URI, see [`Pkcs11Uri`]) and where the PIN comes from (a file,
//! an environment variable or a systemd credential). The PIN is read for each login
//! and wiped right after; it never appears in logs or `Debug` output.
//!
//! # Keys
//!
//! Keys are generated in the token as token objects, private, sensitive, never
//! extractable, and allowed to sign only (decrypt, unwrap, derive and sign-recover
//! are set false explicitly, since SoftHSM2 turns them on otherwise). Key id `x` is
//! CKA_LABEL `<key_label_prefix>x` (default `tessera-x`) with CKA_ID the first 16
//! bytes of SHA-256 of that label ([`object_id_for_label`]); a restarted server
//! finds its keys by both. Only labels with the prefix are listed.
//!
//! Signing hashes in software and signs the digest in the token (CKM_ECDSA,
//! CKM_RSA_PKCS with a DigestInfo, CKM_RSA_PKCS_PSS); ECDSA's raw `r||s` becomes DER
//! in one place. Supported: EC P-256 and P-384, RSA 2048/3072/4096.
//!
//! # Sessions, login and recovery
//!
//! A pool of up to `sessions` sessions does the work, each used by one thread at a
//! time; one more long-lived session holds the login (PKCS#11 logs an application
//! out when its last session closes). When the token becomes unusable (removed,
//! CKR_GENERAL_ERROR, sessions invalid, ...) operations fail with
//! [`tessera_core::key::KeyError::Unavailable`] and the manager recovers by itself
//! once the token is back: it drops its sessions, finds the token again, logs in
//! again and, if the token cannot be found, re-initialises the module
//! (C_Finalize/C_Initialize; SoftHSM2 only rescans its tokens then). Keys keep
//! working across a recovery: they find their object handle again by label and id.
//! [`Pkcs11KeyManager::health`] checks the token actively for readiness probes.
//!
//! One module is loaded once per process and shared by every manager that names it
//! (PKCS#11 initialisation and login are per process).
//!
//! # Threat model
//!
//! The private keys never exist outside the token; this crate only sees public
//! keys, digests and signatures. Whoever holds the PIN (the server's user) can sign
//! with the keys but cannot export them. The PIN sources are files or credentials
//! readable by that user only; a group- or world-readable PIN file is warned about.

#![warn(missing_docs)]
mod config;
mod error;
mod keys;
mod manager;
mod module;
mod pin;
mod session;
mod sign;
mod token;
mod uri;

pub use config::{DEFAULT_KEY_LABEL_PREFIX, DEFAULT_SESSIONS, MAX_SESSIONS, Pkcs11Config};
pub use error::{HsmError, ckr_name};
pub use keys::{KeyProtection, OBJECT_ID_LEN, object_id_for_label};
pub use manager::{Pkcs11Key, Pkcs11KeyManager};
pub use module::STATIC_BUILD;
pub use pin::PinError;
pub use sign::SignRate;
pub use uri::{ObjectType, Pkcs11Uri, UriError, redact as redact_uri};

/// The PKCS#11 return codes carried by [`HsmError::Pkcs11`].
pub use cryptoki::error::RvError;
