//! The CA manager's calls to the key manager, each on a blocking thread (a token may
//! take its time), and the one rule that tells a lost key from a key store that
//! cannot answer.

use std::sync::Arc;

use tessera_core::key::{Key, KeyError, KeyType};
use tessera_core::x509;

use super::{CaError, CaManager};
use crate::datastore::{CaKind, CaRecord};

/// What the key manager says about an authority's key.
pub(super) enum KeyLookup {
    Found(Arc<dyn Key>),
    /// The key is gone, and why.
    Gone(String),
}

impl CaManager {
    /// Finds the key of a journal record again. A key that is gone (or is not the
    /// one the authority was made with) is `Gone`; a key store that cannot answer is
    /// an error, so that an outage never makes the server replace an authority.
    pub(super) async fn look_up_key(&self, record: &CaRecord) -> Result<KeyLookup, CaError> {
        if record.key_manager != self.km.name() {
            return Ok(KeyLookup::Gone(format!(
                "it was made with key manager {:?} and the server now uses {:?}",
                record.key_manager,
                self.km.name()
            )));
        }
        let km = self.km.clone();
        let id = record.key_id.clone();
        let key = match tokio::task::spawn_blocking(move || km.get_key(&id)).await? {
            Ok(Some(k)) => k,
            Ok(None) | Err(KeyError::NotFound(_)) => {
                return Ok(KeyLookup::Gone(format!(
                    "key manager {} no longer holds it",
                    self.km.name()
                )));
            }
            Err(KeyError::Corrupt { reason, .. }) => {
                return Ok(KeyLookup::Gone(format!(
                    "its key material is unreadable: {reason}"
                )));
            }
            Err(e) => return Err(CaError::Key(e)),
        };
        // A key under the same name may be another key (made again after a loss).
        let expected = match record.kind {
            CaKind::X509 => {
                x509::cert_info(&record.cert_der)
                    .map_err(|source| CaError::Record {
                        authority: record.id.clone(),
                        source: Box::new(source),
                    })?
                    .public_key_der
            }
            CaKind::Jwt => record.public_key_der.clone(),
        };
        if key.public_key_der() != expected {
            return Ok(KeyLookup::Gone(
                "the key now under its name is another key".to_owned(),
            ));
        }
        Ok(KeyLookup::Found(key))
    }

    pub(super) async fn generate_key(
        &self,
        key_id: String,
        kt: KeyType,
    ) -> Result<Arc<dyn Key>, CaError> {
        let km = self.km.clone();
        Ok(tokio::task::spawn_blocking(move || km.generate_key(&key_id, kt)).await??)
    }

    /// Destroys a key.
    pub(super) async fn destroy_key(&self, key_id: &str) -> Result<(), CaError> {
        let km = self.km.clone();
        let id = key_id.to_owned();
        Ok(tokio::task::spawn_blocking(move || km.delete_key(&id)).await??)
    }

    /// Destroys a key made for an authority that was never stored.
    pub(super) async fn discard_key(&self, key_id: &str) {
        if let Err(e) = self.destroy_key(key_id).await {
            tracing::warn!(key = %key_id, error = %e, "cannot destroy the unused key");
        }
    }
}
