//! [`Pkcs11KeyManager`] and [`Pkcs11Key`]: the `KeyManager` and `Key` seams of
//! tessera-core over a PKCS#11 token. These types only delegate: `session` owns the
//! connection and recovery, `keys` the objects, `sign` the signing.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cryptoki::object::ObjectHandle;
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme};

use crate::config::Pkcs11Config;
use crate::error::HsmError;
use crate::keys::{self, KeyProtection, KeyRef};
use crate::session::Hsm;
use crate::sign::{self, SignRate};

/// Longest key id accepted; labels stay readable in `pkcs11-tool` listings.
const MAX_ID_LEN: usize = 128;

/// Named signing keys kept in a PKCS#11 token.
pub struct Pkcs11KeyManager {
    hsm: Arc<Hsm>,
    prefix: String,
    uri_object: Option<KeyRef>,
}

impl fmt::Debug for Pkcs11KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11KeyManager")
            .field("module", &self.hsm.module().path())
            .field("token", &self.hsm.token_name())
            .field("sessions", &self.hsm.max_sessions())
            .field("key_label_prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A key whose private half lives in the token.
pub struct Pkcs11Key {
    pub(crate) hsm: Arc<Hsm>,
    pub(crate) id: String,
    pub(crate) key_ref: KeyRef,
    pub(crate) key_type: KeyType,
    pub(crate) spki: Vec<u8>,
    /// The private object's handle and the module generation it is valid in.
    pub(crate) handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("id", &self.id)
            .field("label", &self.key_ref.label)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

fn check_id(id: &str) -> Result<(), HsmError> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(HsmError::Config(format!(
            "key id {id:?} must be 1 to {MAX_ID_LEN} letters, digits, '.', '-' or '_', not starting with '.'"
        )));
    }
    Ok(())
}

impl Pkcs11KeyManager {
    /// Loads the module, finds the token and logs in.
    ///
    /// Fails with a specific error (module not found, token not found, wrong PIN,
    /// PIN locked, ...) when the token cannot be used: at start-up those need the
    /// operator. Later outages are recovered from by the manager itself.
    pub fn open(config: &Pkcs11Config) -> Result<Self, HsmError> {
        let plan = config.plan()?;
        let hsm = Hsm::open(&plan)?;
        tracing::info!(
            module = %plan.module.display(),
            token = %hsm.token_name(),
            sessions = plan.sessions,
            "PKCS#11 token ready"
        );
        Ok(Self {
            hsm,
            prefix: plan.prefix,
            uri_object: plan.uri_object.map(|(label, id)| KeyRef { label, id }),
        })
    }

    /// Checks that the token answers and the login holds, recovering first if it
    /// was lost. For readiness probes: an error means "not ready", with the reason.
    pub fn health(&self) -> Result<(), HsmError> {
        self.hsm.health()
    }

    /// The token in use, as `"label" (serial ..., slot ...)`.
    pub fn token(&self) -> String {
        self.hsm.token_name()
    }

    /// The PKCS#11 module in use.
    pub fn module_path(&self) -> &Path {
        self.hsm.module().path()
    }

    /// The CKA_LABEL of key `id`.
    pub fn key_label(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn key_ref(&self, id: &str) -> Result<KeyRef, HsmError> {
        check_id(id)?;
        Ok(KeyRef::managed(self.key_label(id)))
    }

    fn key(
        &self,
        id: String,
        key_ref: KeyRef,
        found: keys::Found,
        generation: u64,
    ) -> Arc<Pkcs11Key> {
        Arc::new(Pkcs11Key {
            hsm: self.hsm.clone(),
            id,
            key_ref,
            key_type: found.key_type,
            spki: found.spki,
            handle: Mutex::new(Some((generation, found.private))),
        })
    }

    /// Generates key `id` inside the token, replacing any key already under that id
    /// (the old objects are destroyed once the new pair exists).
    pub fn create_key(&self, id: &str, key_type: KeyType) -> Result<Arc<Pkcs11Key>, HsmError> {
        let r = self.key_ref(id)?;
        // Exclusive: no search sees a key and its replacement at once.
        let (found, generation) = self.hsm.run_exclusive(|op| {
            let old = keys::find(op, None, &r)?;
            let new = keys::generate(op, &r, key_type)?;
            keys::destroy(op, &old)?;
            Ok((new, op.generation))
        })?;
        tracing::info!(id, %key_type, token = %self.hsm.token_name(), "generated key in the token");
        Ok(self.key(id.to_owned(), r, found, generation))
    }

    /// Finds key `id`.
    pub fn find_key(&self, id: &str) -> Result<Option<Arc<Pkcs11Key>>, HsmError> {
        let r = self.key_ref(id)?;
        let found = self
            .hsm
            .run_exclusive(|op| Ok(keys::load(op, &r)?.map(|f| (f, op.generation))))?;
        Ok(found.map(|(f, generation)| self.key(id.to_owned(), r, f, generation)))
    }

    /// The ids of the keys whose label carries our prefix, sorted.
    pub fn key_ids(&self) -> Result<Vec<String>, HsmError> {
        let labels = self.hsm.run_exclusive(keys::private_key_labels)?;
        let mut ids: Vec<String> = labels
            .iter()
            .filter_map(|l| l.strip_prefix(&self.prefix))
            .filter(|id| check_id(id).is_ok())
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Destroys the private and public objects (and anything else) of key `id`.
    pub fn destroy_key(&self, id: &str) -> Result<(), HsmError> {
        let r = self.key_ref(id)?;
        let n = self.hsm.run_exclusive(|op| keys::destroy_all(op, &r))?;
        if n > 0 {
            tracing::info!(id, objects = n, token = %self.hsm.token_name(), "destroyed key in the token");
        }
        Ok(())
    }

    /// The key the configured URI names with `object=` and/or `id=` (a key the
    /// operator provisioned, e.g. with pkcs11-tool), found by exactly that label and
    /// id, without the prefix. `None` when the URI names no object.
    pub fn uri_key(&self) -> Result<Option<Arc<Pkcs11Key>>, HsmError> {
        let Some(r) = self.uri_object.clone() else {
            return Ok(None);
        };
        let found = self
            .hsm
            .run_exclusive(|op| Ok(keys::load(op, &r)?.map(|f| (f, op.generation))))?;
        match found {
            Some((f, generation)) => Ok(Some(self.key(r.describe(), r, f, generation))),
            None => Err(HsmError::KeyMissing {
                label: r.describe(),
                token: self.hsm.token_name(),
            }),
        }
    }

    /// Measures raw C_Sign throughput on key `id`: `threads` threads, each on a
    /// session of its own (outside the pool), each signing `per_thread` times. For
    /// benchmarks that compare issuance with what the token can do.
    pub fn raw_sign_rate(
        &self,
        id: &str,
        threads: usize,
        per_thread: usize,
    ) -> Result<SignRate, HsmError> {
        let key = self.find_key(id)?.ok_or_else(|| HsmError::KeyMissing {
            label: self.key_label(id),
            token: self.hsm.token_name(),
        })?;
        sign::raw_sign_rate(&key, threads, per_thread)
    }
}

impl Pkcs11Key {
    /// The key id (for keys named by the URI: their label, or their CKA_ID in hex).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CKA_LABEL of its objects.
    pub fn label(&self) -> Option<&str> {
        self.key_ref.label.as_deref()
    }

    /// The CKA_ID of its objects.
    pub fn object_id(&self) -> Option<&[u8]> {
        self.key_ref.id.as_deref()
    }

    /// Signs like [`Key::sign`], with the PKCS#11 error kept.
    pub fn sign_with(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        sign::sign(self, scheme, message)
    }

    /// Reads the protection attributes of the private key from the token.
    pub fn protection(&self) -> Result<KeyProtection, HsmError> {
        let key_type = self.key_type;
        self.hsm.run_exclusive(|op| {
            let Some(h) = keys::find_private(op, &self.key_ref)? else {
                return Err(HsmError::KeyMissing {
                    label: self.key_ref.describe(),
                    token: op.token.to_owned(),
                });
            };
            keys::protection(op, h, key_type)
        })
    }
}

impl Key for Pkcs11Key {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.key_type.supports(scheme) {
            return Err(KeyError::UnsupportedScheme {
                key_type: self.key_type,
                scheme,
            });
        }
        Ok(self.sign_with(scheme, message)?)
    }
}

impl KeyManager for Pkcs11KeyManager {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        Ok(self.create_key(id, key_type)?)
    }

    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        Ok(self.find_key(id)?.map(|k| k as Arc<dyn Key>))
    }

    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        Ok(self.key_ids()?)
    }

    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        Ok(self.destroy_key(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_checked() {
        for ok in ["x509-ca-1", "jwt.signer_2", "A"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ключ", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
