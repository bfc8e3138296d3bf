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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::types::RawAuthPin;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

/// A PIN file larger than this is surely the wrong file.
const MAX_PIN_FILE: u64 = 4096;

/// Why the PIN could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error("cannot read the PIN file {}: {source}; check pin_file / pin-source and its permissions", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the PIN file {} is larger than {MAX_PIN_FILE} bytes; is it the right file?", path.display())]
    FileTooLarge { path: PathBuf },
    #[error("environment variable {0} (pin_env) is not set; export it or use pin_file")]
    EnvUnset(String),
    #[error(
        "pin_credential is {0:?} but $CREDENTIALS_DIRECTORY is not set; run the server under systemd with LoadCredential= or LoadCredentialEncrypted=, or use pin_file"
    )]
    NoCredentialsDirectory(String),
    #[error("credential name {0:?} must be a plain file name (no '/', not '.' or '..')")]
    CredentialName(String),
    #[error("the PIN from {0} is empty")]
    Empty(String),
    #[error(
        "pin-source {0:?} is not supported: use a file: URI or an absolute path (running commands for a PIN is not supported)"
    )]
    UnsupportedSource(String),
}

/// Where to read the PIN.
#[derive(Clone)]
pub(crate) enum PinSource {
    File(PathBuf),
    Env(String),
    Credential(String),
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
        Ok(PinSource::File(PathBuf::from(path)))
    }

    /// A credential source; the name is checked now so that a typo fails at start-up.
    pub(crate) fn credential(name: &str) -> Result<Self, PinError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(PinError::CredentialName(name.to_owned()));
        }
        Ok(PinSource::Credential(name.to_owned()))
    }

    /// Says where the PIN comes from, for messages (never the PIN itself).
    pub(crate) fn describe(&self) -> String {
        match self {
            PinSource::File(p) => format!("file {}", p.display()),
            PinSource::Env(name) => format!("environment variable {name}"),
            PinSource::Credential(name) => format!("systemd credential {name}"),
            PinSource::Value(_) => "pin-value in the URI".to_owned(),
        }
    }

    /// Reads the PIN. The buffer is wiped when the returned secret is dropped.
    pub(crate) fn read(&self) -> Result<RawAuthPin, PinError> {
        let mut bytes = match self {
            PinSource::File(path) => {
                tessera_core::config::warn_if_shared(path);
                read_file(path)?
            }
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| PinError::NoCredentialsDirectory(name.clone()))?;
                read_file(&Path::new(&dir).join(name))?
            }
            PinSource::Env(name) => {
                use std::os::unix::ffi::OsStringExt;
                let value =
                    std::env::var_os(name).ok_or_else(|| PinError::EnvUnset(name.clone()))?;
                Zeroizing::new(value.into_vec())
            }
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

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PinError> {
    let io = |source| PinError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.len() > MAX_PIN_FILE {
        return Err(PinError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the PIN file is readable by group or others; chmod 600 it"
            );
        }
    }
    // Sized up front so that reading never reallocates and leaves copies behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.by_ref()
        .take(MAX_PIN_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(buf)
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
            let pin = PinSource::File(p).read().unwrap();
            assert_eq!(pin.expose_secret().as_slice(), want);
        }
    }

    #[test]
    fn file_errors_name_the_file_not_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = PinSource::File(missing.clone()).read().unwrap_err();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        let empty = write_pin(dir.path(), "empty", b"\n");
        assert!(matches!(
            PinSource::File(empty).read(),
            Err(PinError::Empty(_))
        ));
        let big = write_pin(dir.path(), "big", &[b'1'; 5000]);
        assert!(matches!(
            PinSource::File(big).read(),
            Err(PinError::FileTooLarge { .. })
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
                PinSource::File(p) => assert_eq!(p, Path::new(want)),
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
        let err = PinSource::Env("TESSERA_HSM_TEST_SURELY_UNSET_VAR".into())
            .read()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("TESSERA_HSM_TEST_SURELY_UNSET_VAR")
        );
    }
}
