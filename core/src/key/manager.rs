//! Key managers: create, find, list and destroy named keys. Software managers live
//! here because the server and the agent both use them; hardware managers (PKCS#11,
//! TPM) live in their own crates and implement the same trait.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Key, KeyError, KeyType, SoftwareKey};
use crate::fsutil;

/// A store of named signing keys.
///
/// Calls may block (a token or a TPM answers slowly): async callers run them on a
/// blocking thread.
pub trait KeyManager: Send + Sync + fmt::Debug {
    /// A short name for logs and configuration (`memory`, `disk`, `pkcs11`, `tpm`).
    fn name(&self) -> &'static str;

    /// Creates a key under `id`, replacing any key already there.
    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError>;

    /// Finds the key stored under `id`.
    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError>;

    /// The IDs of every key held.
    fn list_keys(&self) -> Result<Vec<String>, KeyError>;

    /// Destroys the key under `id`; destroying a missing key is not an error.
    fn delete_key(&self, id: &str) -> Result<(), KeyError>;
}

/// Keys in memory only: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: Mutex<BTreeMap<String, Arc<SoftwareKey>>>,
}

impl MemoryKeyManager {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> KeyError {
    KeyError::Backend("key store lock poisoned by an earlier panic".into())
}

impl KeyManager for MemoryKeyManager {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        let key = Arc::new(SoftwareKey::generate(key_type)?);
        self.keys
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }

    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        Ok(self
            .keys
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .map(|k| k.clone() as Arc<dyn Key>))
    }

    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        Ok(self
            .keys
            .lock()
            .map_err(|_| poisoned())?
            .keys()
            .cloned()
            .collect())
    }

    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        self.keys.lock().map_err(|_| poisoned())?.remove(id);
        Ok(())
    }
}

/// Keys as PKCS#8 files (mode 0600, written atomically) in one directory (mode 0700).
#[derive(Debug)]
pub struct DiskKeyManager {
    dir: PathBuf,
    cache: Mutex<BTreeMap<String, Arc<SoftwareKey>>>,
}

const SUFFIX: &str = ".key";

impl DiskKeyManager {
    /// Opens (creating if needed) the key directory.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        fsutil::ensure_dir(dir, 0o700).map_err(|source| KeyError::Io {
            context: format!("cannot create key directory {}", dir.display()),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, KeyError> {
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(KeyError::Config(format!(
                "key id {id:?} may hold only letters, digits, '.', '-' and '_' and must not start with '.'"
            )));
        }
        Ok(self.dir.join(format!("{id}{SUFFIX}")))
    }
}

impl KeyManager for DiskKeyManager {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        let path = self.path(id)?;
        let key = Arc::new(SoftwareKey::generate(key_type)?);
        fsutil::write_atomic(&path, key.pkcs8_der(), 0o600).map_err(|source| KeyError::Io {
            context: format!("cannot write key file {}", path.display()),
            source,
        })?;
        self.cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }

    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        if let Some(k) = self.cache.lock().map_err(|_| poisoned())?.get(id) {
            return Ok(Some(k.clone()));
        }
        let path = self.path(id)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => zeroize::Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    context: format!("cannot read key file {}", path.display()),
                    source,
                });
            }
        };
        let key = Arc::new(
            SoftwareKey::from_pkcs8(&bytes).map_err(|e| KeyError::Corrupt {
                id: id.to_owned(),
                reason: format!("{}: {e}", path.display()),
            })?,
        );
        self.cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), key.clone());
        Ok(Some(key))
    }

    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| KeyError::Io {
            context: format!("cannot list key directory {}", self.dir.display()),
            source,
        })?;
        let mut ids = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            if let Some(id) = name.strip_suffix(SUFFIX) {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        let path = self.path(id)?;
        self.cache.lock().map_err(|_| poisoned())?.remove(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyError::Io {
                context: format!("cannot delete key file {}", path.display()),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn memory_manager() {
        let m = MemoryKeyManager::new();
        assert!(m.get_key("a").unwrap().is_none());
        let k = m.generate_key("a", KeyType::EcP256).unwrap();
        let again = m.get_key("a").unwrap().unwrap();
        assert_eq!(k.public_key_der(), again.public_key_der());
        assert_eq!(m.list_keys().unwrap(), vec!["a".to_string()]);
        m.delete_key("a").unwrap();
        assert!(m.get_key("a").unwrap().is_none());
    }

    #[test]
    fn disk_manager_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("keys");
        let pubkey = {
            let m = DiskKeyManager::open(&kdir).unwrap();
            let k = m.generate_key("x509-ca-1", KeyType::EcP384).unwrap();
            k.public_key_der().to_vec()
        };
        let meta = std::fs::metadata(kdir.join("x509-ca-1.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&kdir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let m = DiskKeyManager::open(&kdir).unwrap();
        let k = m.get_key("x509-ca-1").unwrap().unwrap();
        assert_eq!(k.public_key_der(), pubkey.as_slice());
        assert_eq!(k.key_type(), KeyType::EcP384);
        assert_eq!(m.list_keys().unwrap(), vec!["x509-ca-1".to_string()]);
        m.delete_key("x509-ca-1").unwrap();
        assert!(m.get_key("x509-ca-1").unwrap().is_none());
        m.delete_key("x509-ca-1").unwrap();
    }

    #[test]
    fn disk_manager_rejects_bad_ids_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = DiskKeyManager::open(dir.path()).unwrap();
        assert!(matches!(
            m.generate_key("../evil", KeyType::EcP256),
            Err(KeyError::Config(_))
        ));
        std::fs::write(dir.path().join("bad.key"), b"garbage").unwrap();
        let err = m.get_key("bad").unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("bad.key"));
    }
}
