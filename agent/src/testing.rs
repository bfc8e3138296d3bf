//! Helpers for the agent's unit tests: a CA for `example.org`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::x509::{self, Issuer, SvidTemplate};
use tessera_core::{Bundle, SpiffeId, TrustDomain};

pub(crate) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub(crate) fn id(path: &str) -> SpiffeId {
    td().id(path).unwrap()
}

/// A root CA for `example.org`, valid for ten years from `now`.
#[derive(Debug)]
pub(crate) struct TestPki {
    issuer: Issuer,
    bundle: Bundle,
}

impl TestPki {
    pub(crate) fn new(now: SystemTime) -> Self {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let year = Duration::from_secs(365 * 86400);
        let root =
            x509::self_signed_ca(&td(), "test root", &key, now - year, now + 10 * year).unwrap();
        let mut bundle = Bundle::with_x509(td(), vec![root.clone()]);
        bundle.set_sequence(1);
        Self {
            issuer: Issuer::new(root, key).unwrap(),
            bundle,
        }
    }

    pub(crate) fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// An X509-SVID for `id` over the public key `spki`, issued at `now`.
    pub(crate) fn leaf(
        &self,
        id: &SpiffeId,
        spki: &[u8],
        now: SystemTime,
        ttl: Duration,
    ) -> Vec<u8> {
        x509::sign_x509_svid(
            &SvidTemplate {
                spiffe_id: id,
                public_key_der: spki,
                dns_names: &[],
                ttl,
                now,
            },
            &self.issuer,
        )
        .unwrap()
    }
}
