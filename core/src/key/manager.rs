//! Key managers: create, find, list and destroy named keys. The trait and the
//! in-memory manager live here; the managers that keep keys somewhere (files:
//! `tessera-process`; PKCS#11: `tessera-hsm`; TPM: `tessera-tpm`) live in their own
//! crates and implement the same trait.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::{Key, KeyError, KeyType, SoftwareKey};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
