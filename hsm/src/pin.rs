//! Where the token PIN comes from: a file, an environment variable, a systemd
//! credential (`$CREDENTIALS_DIRECTORY/<name>`), or (discouraged) the URI's
//! `pin-value`.
//!
//! The PIN is read afresh for every login and wiped as soon as the login call
//! returns, so it does not sit in memory while the server runs, and an operator who
//! changes the PIN and its file lets the manager log in again without a restart. It
//! is never logged: errors name the source, never the contents.

use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::types::RawAuthPin;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use tessera_process::secret::{SecretError, SecretSource};
use zeroize::Zeroizing;

/// A PIN file larger than this is surely the wrong file.
const MAX_PIN_FILE: u64 = 4096;

/// Why the PIN could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The file, variable or credential holding the PIN cannot be read.
    #[error("PIN: {0}; check pin_file, pin_env, pin_credential or the URI's pin-source")]
    Read(#[from] SecretError),
    /// The source holds nothing but a line break.
    #[error("the PIN from {0} is empty")]
    Empty(String),
    /// The URI names a way of getting the PIN that Tessera does not offer.
    #[error(
        "pin-source {0:?} is not supported: use a file: URI or an absolute path (running commands for a PIN is not supported)"
    )]
    UnsupportedSource(String),
}

/// Where to read the PIN.
#[derive(Clone)]
pub(crate) enum PinSource {
    /// A file, an environment variable or a systemd credential.
    Stored(SecretSource),
    /// The URI's `pin-value` (discouraged: the PIN is in the configuration).
    Value(SecretString),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PinSource {
    /// A PIN source from an RFC 7512 `pin-source` value: a `file:` URI or an absolute path.
    pub(crate) fn from_uri_source(value: &str) -> Result<Self, PinError> {
        let path = if let Some(rest) = value.strip_prefix("file://") {
            // file:///abs and file://localhost/abs; any other host is not ours to read.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(PinError::UnsupportedSource(value.to_owned()));
            }
            path
        } else if let Some(rest) = value.strip_prefix("file:") {
            rest
        } else {
            value
        };
        if !Path::new(path).is_absolute() {
            return Err(PinError::UnsupportedSource(value.to_owned()));
        }
        Ok(Self::file(PathBuf::from(path)))
    }

    /// A PIN file.
    pub(crate) fn file(path: PathBuf) -> Self {
        PinSource::Stored(SecretSource::File(path))
    }

    /// A PIN in an environment variable.
    pub(crate) fn env(name: String) -> Self {
        PinSource::Stored(SecretSource::Env(name))
    }

    /// A credential source; the name is checked now so that a typo fails at start-up.
    pub(crate) fn credential(name: &str) -> Result<Self, PinError> {
        Ok(PinSource::Stored(SecretSource::credential(name)?))
    }

    /// Says where the PIN comes from, for messages (never the PIN itself).
    pub(crate) fn describe(&self) -> String {
        match self {
            PinSource::Stored(s) => s.describe(),
            PinSource::Value(_) => "pin-value in the URI".to_owned(),
        }
    }

    /// Reads the PIN. The buffer is wiped when the returned secret is dropped.
    pub(crate) fn read(&self) -> Result<RawAuthPin, PinError> {
        let mut bytes = match self {
            PinSource::Stored(s) => s.read_bytes(MAX_PIN_FILE)?,
            PinSource::Value(secret) => Zeroizing::new(secret.expose_secret().as_bytes().to_vec()),
        };
        // Files written with `echo` end in a newline that is not part of the PIN.
        let len = bytes.len();
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(len - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(len - 1);
        }
        if bytes.is_empty() {
            return Err(PinError::Empty(self.describe()));
        }
        let owned = std::mem::take(&mut *bytes);
        Ok(SecretBox::new(Box::new(owned)))
    }
}

/// Remembers which PIN the token refused, so that recovery does not try it again
/// and again: most HSMs lock the user PIN after a few failures, and a server
/// retrying in the background would lock its own CA key away. Only a keyed hash
/// (random key per process) is kept, never the PIN.
#[derive(Default)]
pub(crate) struct RefusedPin {
    hasher: std::collections::hash_map::RandomState,
    refused: Mutex<Option<u64>>,
}

impl fmt::Debug for RefusedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusedPin")
    }
}

impl RefusedPin {
    pub(crate) fn fingerprint(&self, pin: &[u8]) -> u64 {
        self.hasher.hash_one(pin)
    }

    /// Whether the token already refused the PIN with this fingerprint.
    pub(crate) fn was_refused(&self, fingerprint: u64) -> bool {
        self.refused
            .lock()
            .map(|r| *r == Some(fingerprint))
            .unwrap_or(false)
    }

    pub(crate) fn set(&self, fingerprint: Option<u64>) {
        if let Ok(mut r) = self.refused.lock() {
            *r = fingerprint;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_pin(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn file_pins_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, want) in [
            (&b"1234"[..], &b"1234"[..]),
            (b"1234\n", b"1234"),
            (b"1234\r\n", b"1234"),
            (b"12 34\n\n", b"12 34\n"),
        ] {
            let p = write_pin(dir.path(), "pin", contents);
            let pin = PinSource::file(p).read().unwrap();
            assert_eq!(pin.expose_secret().as_slice(), want);
        }
    }

    #[test]
    fn file_errors_name_the_file_not_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = PinSource::file(missing.clone()).read().unwrap_err();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        let empty = write_pin(dir.path(), "empty", b"\n");
        assert!(matches!(
            PinSource::file(empty).read(),
            Err(PinError::Empty(_))
        ));
        let big = write_pin(dir.path(), "big", &[b'1'; 5000]);
        assert!(matches!(
            PinSource::file(big).read(),
            Err(PinError::Read(SecretError::FileTooLarge {
                max: MAX_PIN_FILE,
                ..
            }))
        ));
    }

    #[test]
    fn uri_pin_sources() {
        for (src, want) in [
            ("file:/run/pin", "/run/pin"),
            ("file:///run/pin", "/run/pin"),
            ("file://localhost/run/pin", "/run/pin"),
            ("/run/pin", "/run/pin"),
        ] {
            match PinSource::from_uri_source(src).unwrap() {
                PinSource::Stored(SecretSource::File(p)) => assert_eq!(p, Path::new(want)),
                other => panic!("{other:?}"),
            }
        }
        for src in [
            "|/bin/get-pin",
            "file://host/run/pin",
            "pin.txt",
            "file:pin",
        ] {
            assert!(
                matches!(
                    PinSource::from_uri_source(src),
                    Err(PinError::UnsupportedSource(_))
                ),
                "{src}"
            );
        }
    }

    #[test]
    fn credential_names_are_plain() {
        assert!(PinSource::credential("hsm-pin").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs"] {
            assert!(PinSource::credential(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_pins_are_remembered_by_fingerprint_only() {
        let memory = RefusedPin::default();
        let a = memory.fingerprint(b"1234");
        assert_eq!(a, memory.fingerprint(b"1234"));
        assert_ne!(a, memory.fingerprint(b"1235"));
        assert!(!memory.was_refused(a));
        memory.set(Some(a));
        assert!(memory.was_refused(a));
        assert!(!memory.was_refused(memory.fingerprint(b"5678")));
        memory.set(None);
        assert!(!memory.was_refused(a));
    }

    #[test]
    fn values_and_descriptions() {
        let src = PinSource::Value(SecretString::from("9876".to_string()));
        assert_eq!(src.read().unwrap().expose_secret().as_slice(), b"9876");
        assert!(!format!("{src:?}").contains("9876"));
        // An unset variable names the variable.
        let err = PinSource::env("TESSERA_HSM_TEST_SURELY_UNSET_VAR".into())
            .read()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("TESSERA_HSM_TEST_SURELY_UNSET_VAR")
        );
    }
}
