//! Reading secrets (join tokens, token PINs, database connection strings) from where
//! an operator may keep them: a file, an environment variable, or a systemd
//! credential (`$CREDENTIALS_DIRECTORY/<name>`, from `LoadCredential=`). The command
//! line is not among them: every local user can read it.
//!
//! Secrets are read into buffers that are wiped when dropped, and errors name the
//! source, never the contents.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A secret file larger than this is surely the wrong file.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a secret could not be read. Messages name where it was looked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file (or the systemd credential, which is a file) cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        /// "secret file" or "systemd credential".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than a secret can be.
    #[error("{} is larger than {max} bytes; is it the right file?", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The most a secret of this kind may take.
        max: u64,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// A systemd credential is named, but the process does not run with credentials.
    #[error(
        "systemd credential {0:?} asked for, but $CREDENTIALS_DIRECTORY is not set (use LoadCredential= or LoadCredentialEncrypted= in the unit)"
    )]
    NoCredentialsDirectory(String),
    /// A credential name must name a file in the credentials directory, nothing else.
    #[error("credential name {0:?} must be a plain file name (no '/', not '.' or '..')")]
    CredentialName(String),
    /// A secret that must be text is not UTF-8.
    #[error("the secret from {0} is not UTF-8 text")]
    NotText(String),
}

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (readable by the service's user only: group or other access is warned about).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential: a file of this name in `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl SecretSource {
    /// A credential source; the name is checked now so that a typo fails at start-up.
    pub fn credential(name: &str) -> Result<Self, SecretError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(SecretError::CredentialName(name.to_owned()));
        }
        Ok(SecretSource::Credential(name.to_owned()))
    }

    /// The first source given, in the order file, variable, credential.
    pub fn first_of(
        file: Option<&Path>,
        env: Option<&str>,
        credential: Option<&str>,
    ) -> Result<Option<Self>, SecretError> {
        Ok(match (file, env, credential) {
            (Some(f), _, _) => Some(SecretSource::File(f.to_owned())),
            (None, Some(v), _) => Some(SecretSource::Env(v.to_owned())),
            (None, None, Some(c)) => Some(Self::credential(c)?),
            (None, None, None) => None,
        })
    }

    /// Says where the secret comes from, for messages (never the secret itself).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Env(name) => format!("environment variable {name}"),
            SecretSource::Credential(name) => format!("systemd credential {name}"),
        }
    }

    /// The secret's bytes as stored, a file at most `max_file` bytes long.
    pub fn read_bytes(&self, max_file: u64) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        match self {
            SecretSource::File(path) => {
                warn_if_shared(path);
                read_file("secret file", path, max_file)
            }
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                read_file("systemd credential", &Path::new(&dir).join(name), max_file)
            }
            SecretSource::Env(name) => {
                use std::os::unix::ffi::OsStringExt;
                let value =
                    std::env::var_os(name).ok_or_else(|| SecretError::EnvUnset(name.clone()))?;
                Ok(Zeroizing::new(value.into_vec()))
            }
        }
    }

    /// The secret as text. From a file or a credential, trailing line breaks are not
    /// part of it (files written with `echo` end in one); a variable is taken as is.
    pub fn read_text(&self) -> Result<Zeroizing<String>, SecretError> {
        let mut bytes = self.read_bytes(MAX_SECRET_FILE)?;
        if !matches!(self, SecretSource::Env(_)) {
            let keep = bytes
                .iter()
                .rposition(|b| !matches!(b, b'\n' | b'\r'))
                .map_or(0, |i| i + 1);
            bytes.truncate(keep);
        }
        let bytes = std::mem::take(&mut *bytes);
        String::from_utf8(bytes).map(Zeroizing::new).map_err(|e| {
            // The rejected bytes are the secret: wipe them too.
            drop(Zeroizing::new(e.into_bytes()));
            SecretError::NotText(self.describe())
        })
    }
}

/// Reads a secret from the first source given (a file, an environment variable, or a
/// systemd credential) as text; `None` when no source is given.
pub fn read_secret(
    file: Option<&Path>,
    env: Option<&str>,
    credential: Option<&str>,
) -> Result<Option<Zeroizing<String>>, SecretError> {
    SecretSource::first_of(file, env, credential)?
        .map(|s| s.read_text())
        .transpose()
}

fn read_file(what: &'static str, path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let io = |source| SecretError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(SecretError::FileTooLarge {
            path: path.to_owned(),
            max,
        });
    }
    // Sized up front so that reading never reallocates and leaves copies behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.by_ref()
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > max {
        // It grew while being read.
        return Err(SecretError::FileTooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(buf)
}

/// Warns when a file holding a secret may be read by users other than its owner
/// (group or other permission bits): anyone who can read it can use the secret.
pub fn warn_if_shared(path: &Path) {
    if let Some(mode) = shared_mode(path) {
        tracing::warn!(
            "secret file {} has mode {mode:04o}: users other than its owner can read it; \
             make it 0600 (or 0400)",
            path.display()
        );
    }
}

/// The permission bits of `path` when group or others have any access to it.
fn shared_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn secrets_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s", b"hunter2\n");
        let s = read_secret(Some(&p), None, None).unwrap().unwrap();
        assert_eq!(s.as_str(), "hunter2");
        let p = write(dir.path(), "crlf", b"hunter2\r\n\n");
        let s = read_secret(Some(&p), None, None).unwrap().unwrap();
        assert_eq!(s.as_str(), "hunter2");
        let missing = dir.path().join("none");
        let err = read_secret(Some(&missing), None, None).unwrap_err();
        assert!(matches!(err, SecretError::File { .. }), "{err}");
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        assert!(matches!(
            read_secret(None, Some("TESSERA_SURELY_UNSET_VAR"), None),
            Err(SecretError::EnvUnset(_))
        ));
        assert!(read_secret(None, None, None).unwrap().is_none());
        let p = write(dir.path(), "bin", b"\xff\xfe\n");
        assert!(matches!(
            read_secret(Some(&p), None, None),
            Err(SecretError::NotText(_))
        ));
    }

    #[test]
    fn a_file_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "big", &[b'1'; 5000]);
        let src = SecretSource::File(p);
        assert!(matches!(
            src.read_bytes(4096),
            Err(SecretError::FileTooLarge { max: 4096, .. })
        ));
        assert_eq!(src.read_bytes(5000).unwrap().len(), 5000);
    }

    #[test]
    fn the_first_source_given_is_used_and_credential_names_are_plain() {
        let f = Path::new("/run/secret");
        assert_eq!(
            SecretSource::first_of(Some(f), Some("V"), Some("c")).unwrap(),
            Some(SecretSource::File(f.to_owned()))
        );
        assert_eq!(
            SecretSource::first_of(None, Some("V"), Some("c")).unwrap(),
            Some(SecretSource::Env("V".into()))
        );
        assert_eq!(
            SecretSource::first_of(None, None, Some("c")).unwrap(),
            Some(SecretSource::Credential("c".into()))
        );
        assert!(SecretSource::credential("hsm-pin").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs"] {
            assert!(
                matches!(
                    SecretSource::credential(bad),
                    Err(SecretError::CredentialName(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_files_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(shared_mode(&p), Some(0o644));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(shared_mode(&p), None);
    }
}
