//! Keys as files: the disk key manager, PKCS#8 files written atomically in one
//! directory. It is the key manager both binaries can use without hardware, and it
//! lives beside the atomic writes it relies on, keeping file I/O out of core.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SoftwareKey};

use crate::fs;

fn poisoned() -> KeyError {
    KeyError::Backend("key store lock poisoned by an earlier panic".into())
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
        fs::ensure_dir(dir, 0o700).map_err(|source| KeyError::Io {
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
        fs::write_atomic(&path, key.pkcs8_der(), 0o600).map_err(|source| KeyError::Io {
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
