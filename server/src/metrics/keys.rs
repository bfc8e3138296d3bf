//! A key manager that times every signature of the keys it hands out, labelled with
//! the wrapped key manager's name (`pkcs11` for the HSM).

use std::sync::Arc;
use std::time::Instant;

use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme};

use super::{KeyManagerLabels, ServerMetrics};

/// Wraps a key manager; everything but signing passes straight through.
#[derive(Debug)]
pub struct MeteredKeyManager {
    inner: Arc<dyn KeyManager>,
    metrics: Arc<ServerMetrics>,
}

impl MeteredKeyManager {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn KeyManager>, metrics: Arc<ServerMetrics>) -> Arc<dyn KeyManager> {
        Arc::new(MeteredKeyManager { inner, metrics })
    }

    fn key(&self, key: Arc<dyn Key>) -> Arc<dyn Key> {
        Arc::new(MeteredKey {
            inner: key,
            labels: KeyManagerLabels {
                key_manager: self.inner.name(),
            },
            metrics: self.metrics.clone(),
        })
    }
}

impl KeyManager for MeteredKeyManager {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        self.inner.generate_key(id, key_type).map(|k| self.key(k))
    }

    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        Ok(self.inner.get_key(id)?.map(|k| self.key(k)))
    }

    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        self.inner.list_keys()
    }

    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        self.inner.delete_key(id)
    }
}

#[derive(Debug)]
struct MeteredKey {
    inner: Arc<dyn Key>,
    labels: KeyManagerLabels,
    metrics: Arc<ServerMetrics>,
}

impl Key for MeteredKey {
    fn key_type(&self) -> KeyType {
        self.inner.key_type()
    }

    fn public_key_der(&self) -> &[u8] {
        self.inner.public_key_der()
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let start = Instant::now();
        let r = self.inner.sign(scheme, message);
        match &r {
            Ok(_) => self
                .metrics
                .sign
                .get_or_create(&self.labels)
                .observe(start.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.sign_errors.get_or_create(&self.labels).inc();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::key::MemoryKeyManager;

    #[test]
    fn signatures_are_timed_under_the_wrapped_manager_name() {
        let m = ServerMetrics::new();
        let km = MeteredKeyManager::wrap(Arc::new(MemoryKeyManager::new()), m.clone());
        assert_eq!(km.name(), "memory");
        let k = km.generate_key("ca", KeyType::EcP256).unwrap();
        k.sign_default(b"one").unwrap();
        km.get_key("ca")
            .unwrap()
            .unwrap()
            .sign_default(b"two")
            .unwrap();
        let text = tessera_telemetry::metrics::encode(&m.registry);
        assert!(
            text.contains(
                "tessera_server_key_sign_duration_seconds_count{key_manager=\"memory\"} 2"
            ),
            "{text}"
        );
    }
}
